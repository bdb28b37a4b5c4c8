# Thin wrapper over CMake, busted and the demo. `make test` and `make demo` install what is
# missing (Debian packages) first, so both work on a fresh machine.
BUSTED   ?= busted
LUA      ?= lua5.4
JOBS     ?= 2
ASAN_LIB := $(shell gcc -print-file-name=libasan.so)
SPECS    ?= spec
VALGRIND ?= valgrind --error-exitcode=3 --leak-check=full --errors-for-leak-kinds=definite \
            --show-leak-kinds=definite --suppressions=tools/valgrind.supp --quiet

.PHONY: all build luajit lua51 lua53 asan deps lint test test-lua54 test-luajit test-lua51 test-lua53 \
        test-asan test-valgrind \
        fuzz demo bench rock rock-luajit dist docs docs-check clean

all: build

build:
	@cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build build -j $(JOBS)

luajit:
	@cmake -S . -B build-luajit -DWXPAY_LUAJIT=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build build-luajit -j $(JOBS)

asan:
	@cmake -S . -B build-asan -DWXPAY_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
	@cmake --build build-asan -j $(JOBS)

deps:
	@sh tools/deps.sh

lint:
	luacheck -q lua spec bench examples tools bin/wxpay-sandbox bin/wxpay
	sh tools/check-sizes.sh

test-lua54: build
	$(BUSTED) --lua=$(LUA) $(SPECS)

test-luajit: luajit
	$(BUSTED) --lua=luajit --run=luajit $(SPECS)

# The unit specs (00-04) on Debian's Lua 5.1 and 5.3 (build-lua51/, build-lua53/).
UNIT_SPECS := spec/00-rockspec_spec.lua spec/01-core_spec.lua spec/02-vectors_spec.lua \
              spec/03-client_spec.lua spec/04-partnerships_spec.lua spec/18-coupons_spec.lua \
              spec/24-issue_spec.lua
UNIT_SPECS += spec/40-paygift_spec.lua
UNIT_SPECS += spec/54-coupon_calls_unit_spec.lua

lua51 lua53:
	@cmake -S . -B build-$@ -DWXPAY_LUA_VERSION=$(subst lua5,5.,$@) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build build-$@ -j $(JOBS)

test-lua51: lua51
	$(BUSTED) --lua=lua5.1 --run=lua51 $(UNIT_SPECS)

test-lua53: lua53
	$(BUSTED) --lua=lua5.3 --run=lua53 $(UNIT_SPECS)

# The module is instrumented; the interpreter is not, so the ASan runtime is preloaded.
# Specs tagged #scale (thousands of requests) run in the plain Lua 5.4 and LuaJIT runs only.
test-asan: asan
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	LSAN_OPTIONS=suppressions=$(CURDIR)/tools/lsan.supp:print_suppressions=0 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	LD_PRELOAD=$(ASAN_LIB) WXPAY_UNDER_SANITIZER=1 $(LUA) /usr/bin/busted --run=asan --exclude-tags=scale $(SPECS)

test-valgrind: build
	WXPAY_UNDER_VALGRIND=1 $(VALGRIND) $(LUA) /usr/bin/busted --exclude-tags=scale $(SPECS)

test: deps build luajit lint docs-check rock rock-luajit dist test-lua54 test-luajit test-lua51 test-lua53 test-asan test-valgrind fuzz

fuzz:
	@sh tools/fuzz.sh

demo: deps build
	$(LUA) examples/demo.lua
	$(LUA) examples/launch.lua --sandbox --logo examples/logo.png \
	  --appids wxd678efh567hg6787,wx1111111111111111,wx2222222222222222

bench: deps build
	$(LUA) bench/run.lua

# Installs the three rocks from the same sources into a private tree and runs them from outside
# the checkout.
rock:
	sh tools/rock-check.sh build/rocktree
	luarocks --lua-version=5.4 test wxpay-scm-1.rockspec >build/luarocks-test.log 2>&1 || \
	  { tail -30 build/luarocks-test.log; exit 1; }
	@grep successes build/luarocks-test.log

# The rocks installed for LuaJIT (as on an OpenResty host) into a fresh tree, then the nginx
# spec with nginx loading wxpay from that tree, not from the checkout.
rock-luajit: luajit
	sh tools/rock-luajit.sh build/rocktree-luajit
	WXPAY_NGINX_TREE=$(CURDIR)/build/rocktree-luajit $(BUSTED) --lua=luajit --run=luajit spec/14-openresty_spec.lua

# The API pages from the code's LDoc comments (build/docs/); docs/*.md is the reference.
docs:
	ldoc -q .

# Every config key, public function and command option is in docs/, and the pages build.
docs-check: docs
	$(LUA) tools/check-docs.lua

# The source archive of this version and an offline `luarocks build` of the three rocks from it.
dist:
	sh tools/dist.sh

clean:
	rm -rf build build-luajit build-asan build-fuzz build-lua51 build-lua53
