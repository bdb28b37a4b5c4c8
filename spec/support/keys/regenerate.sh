#!/bin/sh
# Regenerates the test fixtures in this directory (run from it; not part of any test run).
# The keys are committed so that no spec pays for RSA key generation. The certificates are
# committed too, with fixed dates set by `openssl ca -startdate/-enddate` (OpenSSL 3.0's
# `req -x509` can only start at "now"): platform_new starts one day after platform_old and
# ends a year later, so it is the "newer" certificate and outlives the older one.
# Serials: the first 32 hex digits of sha256(name).
set -e
if [ "$1" = "--keys" ]; then
  for n in merchant platform_old platform_new wechatpay other; do
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "${n}_2048.pem"
  done
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out short_1024.pem
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:4096 -out rsa4096_4096.pem
fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cat > "$T/ca.cnf" <<CNF
[ ca ]
default_ca = test
[ test ]
database = $T/index.txt
serial = $T/serial
new_certs_dir = $T
default_md = sha256
policy = any
unique_subject = no
copy_extensions = none
x509_extensions = ext
[ any ]
commonName = supplied
[ ext ]
basicConstraints = CA:FALSE
CNF
cert() { # name not_before not_after
  : > "$T/index.txt"
  printf '%s' "$1" | sha256sum | cut -c1-32 > "$T/serial"
  openssl req -new -key "$1_2048.pem" -subj "/CN=$1" -out "$T/$1.csr"
  openssl ca -batch -notext -config "$T/ca.cnf" -selfsign -keyfile "$1_2048.pem" -in "$T/$1.csr" \
    -startdate "$2" -enddate "$3" -out "$1_cert.pem" 2>/dev/null
}
cert merchant 20200101000000Z 21200101000000Z
cert platform_old 20200101000000Z 21200101000000Z
cert platform_new 20200102000000Z 21210101000000Z
openssl pkey -in wechatpay_2048.pem -pubout -out wechatpay_pub.pem
