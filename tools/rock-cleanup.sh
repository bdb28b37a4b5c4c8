# Sourced by tools/rock-check.sh and tools/rock-luajit.sh once $src (the checkout) and $away (a
# directory outside it) are set. luarocks compiles in the checkout: what it leaves there goes,
# also when a step fails; and $away goes.
cleanup() {
  rm -rf "$away"
  rm -rf "$src/build/rock"
  rm -f "$src"/csrc/*.o "$src/wxpay/core.so"
  if [ -d "$src/wxpay" ]; then rmdir "$src/wxpay"; fi
}
trap cleanup EXIT
