#!/bin/sh
# Builds the libFuzzer targets with clang and runs each for FUZZ_SECONDS (default 30).
# The seed corpus in fuzz/corpus/ is read, never written; any crash fails the run.
set -eu
cd "$(dirname "$0")/.."
SECONDS_EACH=${FUZZ_SECONDS:-30}
cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DWXPAY_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j 2 --target fuzz_base64 fuzz_pem fuzz_headers fuzz_aes_gcm fuzz_oaep fuzz_verify
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in base64 pem headers aes_gcm oaep verify; do
  mkdir -p "$work/$t"
  printf 'fuzz_%s: %ss ... ' "$t" "$SECONDS_EACH"
  if ! ./build-fuzz/fuzz_$t -max_total_time="$SECONDS_EACH" -max_len=8192 -print_final_stats=1 \
       -artifact_prefix="$work/" "$work/$t" "fuzz/corpus/$t" > "$work/$t.log" 2>&1; then
    echo "CRASH"
    tail -40 "$work/$t.log"
    mkdir -p build-fuzz/artifacts && cp "$work"/crash-* "$work"/leak-* "$work"/timeout-* build-fuzz/artifacts/ 2>/dev/null || true
    exit 1
  fi
  grep -E 'stat::number_of_executed_units' "$work/$t.log" | awk '{print $2 " runs, no crash"}'
done
