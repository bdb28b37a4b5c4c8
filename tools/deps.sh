#!/bin/sh
# Installs the Debian packages wxpay needs to build, test and run its demo, if any are missing.
# Runs apt-get as root (or through sudo); prints the command to run otherwise.
set -eu
# prometheus: for its promtool, which checks the text wxpay.metrics renders (spec/31)
PKGS="build-essential gcc cmake pkg-config libssl-dev openssl libcurl4-openssl-dev curl ca-certificates
lua5.4 liblua5.4-dev luajit2 libluajit2-5.1-dev lua-cjson lua-busted lua-check luarocks
lua-cqueues lua-luaossl lua-socket lua-sec lua-sql-sqlite3 valgrind clang libclang-rt-14-dev
nginx libnginx-mod-http-lua lua-resty-core lua-resty-lrucache lua5.1 liblua5.1-0-dev lua5.3 liblua5.3-dev
lua-ldoc redis-server lua-nginx-redis lua-redis
prometheus"
missing=""
for p in $PKGS; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $p"
  fi
done
[ -z "$missing" ] && exit 0
echo "wxpay: installing missing Debian packages:$missing" >&2
if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
  echo "wxpay: run as root: apt-get update && apt-get install -y$missing" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
