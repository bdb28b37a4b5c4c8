# Thin wrapper over CMake, busted and the demo. `make test` and `make demo` install what is
# missing (Debian packages) first, so both work on a fresh machine.
BUSTED   ?= busted
LUA      ?= lua5.4
JOBS     ?= 2
ASAN_LIB := $(shell gcc -print-file-name=libasan.so)
SPECS    ?= spec
VALGRIND ?= valgrind --error-exitcode=3 --leak-check=full --errors-for-leak-kinds=definite \
            --show-leak-kinds=definite --suppressions=tools/valgrind.supp --quiet

.PHONY: all build luajit asan deps lint test test-lua54 test-luajit test-asan test-valgrind \
        fuzz demo bench rock clean

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
	luacheck -q lua spec bench examples bin/wxpay-sandbox

test-lua54: build
	$(BUSTED) --lua=$(LUA) $(SPECS)

test-luajit: luajit
	$(BUSTED) --lua=luajit --run=luajit $(SPECS)

# The module is instrumented; the interpreter is not, so the ASan runtime is preloaded.
# Specs tagged #scale (thousands of requests) run in the plain Lua 5.4 and LuaJIT runs only.
test-asan: asan
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:fast_unwind_on_malloc=0 \
	LSAN_OPTIONS=suppressions=$(CURDIR)/tools/lsan.supp:print_suppressions=0 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	LD_PRELOAD=$(ASAN_LIB) WXPAY_UNDER_SANITIZER=1 $(LUA) /usr/bin/busted --run=asan --exclude-tags=scale $(SPECS)

test-valgrind: build
	WXPAY_UNDER_VALGRIND=1 $(VALGRIND) $(LUA) /usr/bin/busted --exclude-tags=scale $(SPECS)

test: deps build luajit lint rock test-lua54 test-luajit test-asan test-valgrind fuzz

fuzz:
	@sh tools/fuzz.sh

demo: deps build
	$(LUA) examples/demo.lua

bench: deps build
	$(LUA) bench/run.lua

# Builds and installs the rock from the same sources into a private tree, then loads it.
rock:
	luarocks --lua-version=5.4 --tree build/rocktree make --deps-mode=none wxpay-scm-1.rockspec
	$(LUA) -e 'package.cpath = "build/rocktree/lib/lua/5.4/?.so;" .. package.cpath; \
	  package.path = "build/rocktree/share/lua/5.4/?.lua;build/rocktree/share/lua/5.4/?/init.lua;" .. package.path; \
	  local w = require("wxpay"); assert(package.searchpath("wxpay.core", package.cpath):find("rocktree")); \
	  print("rock ok: wxpay " .. w._VERSION)'

clean:
	rm -rf build build-luajit build-asan build-fuzz
