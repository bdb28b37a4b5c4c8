#!/bin/sh
# Rewrites the Lua module list of wxpay-scm-1.rockspec from the files under lua/.
set -eu
cd "$(dirname "$0")/.."
tmp=$(mktemp)
find lua -name '*.lua' | LC_ALL=C sort | while read -r f; do
  mod=$(printf '%s' "$f" | sed -e 's|^lua/||' -e 's|\.lua$||' -e 's|/init$||' -e 's|/|.|g')
  printf '    ["%s"] = "%s",\n' "$mod" "$f"
done > "$tmp"
awk -v list="$tmp" '
  /-- BEGIN LUA MODULES/ { print; while ((getline l < list) > 0) print l; skip = 1; next }
  /-- END LUA MODULES/ { skip = 0 }
  !skip { print }' wxpay-scm-1.rockspec > wxpay-scm-1.rockspec.new
mv wxpay-scm-1.rockspec.new wxpay-scm-1.rockspec
rm -f "$tmp"
