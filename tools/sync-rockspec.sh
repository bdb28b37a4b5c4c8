#!/bin/sh
# Rewrites the Lua module list of every rockspec from the files under lua/: wxpay-cli gets
# lua/wxpay/cli/, wxpay-sandbox lua/wxpay/sandbox/, the wxpay library everything else.
set -eu
cd "$(dirname "$0")/.."
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
for spec in *.rockspec; do
  rock=$(sed -n 's/^package *= *"\(.*\)"/\1/p' "$spec")
  find lua -name '*.lua' | LC_ALL=C sort | while read -r f; do
    case "$rock:$f" in
      wxpay-cli:lua/wxpay/cli/* | wxpay-sandbox:lua/wxpay/sandbox/*) ;;
      wxpay:lua/wxpay/cli/* | wxpay:lua/wxpay/sandbox/* | wxpay-cli:* | wxpay-sandbox:*) continue ;;
      wxpay:*) ;;
      *) echo "$spec: unknown package $rock" >&2; exit 1 ;;
    esac
    mod=$(printf '%s' "$f" | sed -e 's|^lua/||' -e 's|\.lua$||' -e 's|/init$||' -e 's|/|.|g')
    printf '      ["%s"] = "%s",\n' "$mod" "$f"
  done > "$tmp"
  awk -v list="$tmp" '
      /-- BEGIN LUA MODULES/ { print; while ((getline l < list) > 0) print l; skip = 1; next }
    /-- END LUA MODULES/ { skip = 0 }
    !skip { print }' "$spec" > "$spec.new"
  mv "$spec.new" "$spec"
done
