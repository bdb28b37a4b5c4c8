#!/bin/sh
# Rooms stay small: no Lua file under lua/ over 450 lines, no Lua function over 80 lines
# (bin scripts included). Function extents come from the compiler's own listing (luac -l),
# so closures and methods of every shape count.
set -eu
cd "$(dirname "$0")/.."
LUAC=${LUAC:-luac5.4}
status=0
for f in $(find lua -name '*.lua' | LC_ALL=C sort); do
  n=$(wc -l < "$f")
  if [ "$n" -gt 450 ]; then echo "check-sizes: $f has $n lines (limit 450)"; status=1; fi
done
for f in $(find lua -name '*.lua' | LC_ALL=C sort) bin/wxpay bin/wxpay-sandbox; do
  # bin scripts start with a shebang line, which luac refuses: compile the rest.
  out=$(sed '1s/^#!.*//' "$f" | $LUAC -p -l - 2>&1) || { echo "check-sizes: $f: $out"; status=1; continue; }
  long=$(printf '%s\n' "$out" | sed -n 's/^function <[^:]*:\([0-9]*\),\([0-9]*\)>.*/\1 \2/p' |
    awk -v f="$f" '$2 - $1 + 1 > 80 { printf "check-sizes: %s:%d: a function of %d lines (limit 80)\n", f, $1, $2 - $1 + 1 }')
  if [ -n "$long" ]; then printf '%s\n' "$long"; status=1; fi
done
exit $status
