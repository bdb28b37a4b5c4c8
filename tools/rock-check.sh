#!/bin/sh
# `make rock`: installs the wxpay, wxpay-cli and wxpay-sandbox rocks from this checkout into a
# private tree (library first), then runs their commands from a directory outside the
# checkout with only the paths `luarocks path` gives.
# Usage: sh tools/rock-check.sh [TREE]   (default build/rocktree)
set -eu
cd "$(dirname "$0")/.."
src=$(pwd)
tree="$src/${1:-build/rocktree}"
ver=5.4
away=$(mktemp -d)
. "$src/tools/rock-cleanup.sh"

rocks() { luarocks --lua-version=$ver --tree "$tree" "$@"; }
outside() { (cd "$away" && eval "$(rocks path)" && "$@"); }
fail() { echo "rock-check: $*" >&2; exit 1; }

rm -rf "$tree"
rocks make --deps-mode=none wxpay-scm-1.rockspec
rocks make --deps-mode=none wxpay-cli-scm-1.rockspec

# Without the sandbox rock, `wxpay sandbox` says which rock it needs.
if out=$(outside wxpay sandbox --help 2>&1); then fail "wxpay sandbox ran without wxpay-sandbox"; fi
case $out in
  *"luarocks install wxpay-sandbox"*) ;;
  *) fail "wxpay sandbox without wxpay-sandbox: $out" ;;
esac

rocks make --deps-mode=none wxpay-sandbox-scm-1.rockspec
for cmd in wxpay wxpay-sandbox; do
  # luarocks wraps each script in one that runs the tree's interpreter.
  grep -q "/lua$ver'" "$tree/bin/$cmd" || fail "$tree/bin/$cmd does not run lua$ver"
  [ "$(outside sh -c "command -v $cmd")" = "$tree/bin/$cmd" ] || fail "$cmd is not the tree's"
  outside "$cmd" --help >/dev/null || fail "$cmd --help failed"
done
outside wxpay sandbox --help >/dev/null || fail "wxpay sandbox --help failed"
outside "lua$ver" "$src/tools/rock-check.lua" "$tree"
[ -z "$(git status --porcelain --ignored csrc lua bin wxpay)" ] || fail "luarocks left files in the checkout"
