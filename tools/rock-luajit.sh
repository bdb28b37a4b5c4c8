#!/bin/sh
# `make rock-luajit`: installs the wxpay and wxpay-cli rocks for LuaJIT (the Lua 5.1 ABI, built
# against LuaJIT's headers, as on an OpenResty host) into a fresh private tree, checks that the
# installed `wxpay` runs on LuaJIT from outside the checkout, then runs the nginx spec with
# nginx loading wxpay from that tree only (WXPAY_NGINX_TREE), not from the checkout.
# Usage: sh tools/rock-luajit.sh [TREE]   (default build/rocktree-luajit)
set -eu
cd "$(dirname "$0")/.."
src=$(pwd)
tree="$src/${1:-build/rocktree-luajit}"
away=$(mktemp -d)
. "$src/tools/rock-cleanup.sh"
fail() { echo "rock-luajit: $*" >&2; exit 1; }

# Debian's luarocks knows Lua 5.1 as lua5.1: this config makes LuaJIT the tree's interpreter
# (the scripts' wrappers run it) and its headers the ones the core compiles against.
luajit=$(command -v luajit) || fail "no luajit (Debian: apt-get install luajit2 libluajit2-5.1-dev)"
inc=$(pkg-config --variable=includedir luajit 2>/dev/null || echo /usr/include/luajit-2.1)
[ -f "$inc/luajit.h" ] || fail "no LuaJIT headers in $inc"
cat > "$away/config.lua" <<CONF
lua_interpreter = "luajit"
variables = { LUA_DIR = "$(dirname "$(dirname "$luajit")")", LUA_BINDIR = "$(dirname "$luajit")",
              LUA = "$luajit", LUA_INCDIR = "$inc" }
CONF
rocks() { LUAROCKS_CONFIG="$away/config.lua" luarocks --lua-version=5.1 --tree "$tree" "$@"; }
outside() { (cd "$away" && eval "$(rocks path)" && "$@"); }

rm -rf "$tree"
rocks make --deps-mode=none wxpay-scm-1.rockspec >/dev/null
rocks make --deps-mode=none wxpay-cli-scm-1.rockspec >/dev/null
[ -f "$tree/lib/lua/5.1/wxpay/core.so" ] || fail "no $tree/lib/lua/5.1/wxpay/core.so"
grep -q "'$luajit'" "$tree/bin/wxpay" || fail "$tree/bin/wxpay does not run $luajit"
outside wxpay --version >/dev/null || fail "the installed wxpay --version failed on LuaJIT"
[ -z "$(git status --porcelain --ignored csrc lua bin wxpay)" ] || fail "luarocks left files in the checkout"
echo "rock-luajit: wxpay and wxpay-cli installed for LuaJIT in $tree"
