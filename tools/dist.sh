#!/bin/sh
# `make dist`: the source archive of version V (wxpay._VERSION) that the three versioned
# rockspecs name, then an offline `luarocks build` of each from that archive into a private
# tree and a run of the installed commands from outside the checkout.
# The archive is made from the tag vV when it exists; otherwise (a checkout without the tag)
# from HEAD, and it says so.
# Usage: sh tools/dist.sh   (writes build/dist/, installs into build/disttree)
set -eu
cd "$(dirname "$0")/.."
src=$(pwd)
V=$(sed -n 's/^ *_VERSION = "\([^"]*\)".*/\1/p' lua/wxpay/init.lua)
[ -n "$V" ] || { echo "dist: no _VERSION in lua/wxpay/init.lua" >&2; exit 1; }
ref="v$V"
if git rev-parse -q --verify "refs/tags/$ref" >/dev/null; then
  # A tag on the wrong commit would archive another version under this one's name.
  tagged=$(git show "$ref:lua/wxpay/init.lua" | sed -n 's/^ *_VERSION = "\([^"]*\)".*/\1/p')
  [ "$tagged" = "$V" ] || { echo "dist: tag $ref holds version '$tagged', not $V" >&2; exit 1; }
  echo "dist: archiving tag $ref"
else
  echo "dist: no tag $ref here; archiving HEAD as $V"
  ref=HEAD
fi
out="$src/build/dist"
tree="$src/build/disttree"
rm -rf "$out" "$tree"
mkdir -p "$out"
git archive --format=tar.gz --prefix="wxpay-$V/" -o "$out/wxpay-$V.tar.gz" "$ref"
for rock in wxpay wxpay-cli wxpay-sandbox; do
  cp "$rock-$V-1.rockspec" "$out/"
done
echo "dist: $out/wxpay-$V.tar.gz"

# Offline: the rockspecs' source.url is the archive's file name, found next to them.
away=$(mktemp -d)
trap 'rm -rf "$away"' EXIT
rocks() { luarocks --lua-version=5.4 --tree "$tree" "$@"; }
for rock in wxpay wxpay-cli wxpay-sandbox; do
  (cd "$out" && rocks build --deps-mode=none "$rock-$V-1.rockspec" >/dev/null)
done
for cmd in wxpay wxpay-sandbox; do
  got=$(cd "$away" && eval "$(rocks path)" && "$cmd" --version)
  case $got in
    *"$V"*) echo "dist: $cmd --version: $got" ;;
    *) echo "dist: installed $cmd --version printed '$got', not $V" >&2; exit 1 ;;
  esac
done
