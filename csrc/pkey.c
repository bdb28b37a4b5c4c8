/* Keys and certificates: parsed once into EVP_PKEY / X509 and kept in userdata that behave
 * like Lua file handles (one idempotent close shared by __gc, __close and :close()). */
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "wxpay.h"

#define MIN_RSA_BITS 2048
#define MAX_PEM_LEN (1024 * 1024)

/* A private or public key. The sign / verify contexts are set up once per key so each
 * operation is a digest plus one EVP_PKEY_sign / EVP_PKEY_verify, as `openssl speed` does. */
struct wx_key {
  EVP_PKEY *pkey;
  EVP_PKEY_CTX *ctx; /* sign ctx for private keys, verify ctx for public keys */
};

typedef struct {
  X509 *x509;
} wx_cert;

/* Never prompt for a passphrase: an encrypted key is an error, not a terminal read. */
static int no_password(char *buf, int size, int rwflag, void *u) {
  (void)buf; (void)size; (void)rwflag; (void)u;
  return -1;
}

static void key_free(wx_key *k) {
  if (k->ctx) { EVP_PKEY_CTX_free(k->ctx); k->ctx = NULL; }
  if (k->pkey) { EVP_PKEY_free(k->pkey); k->pkey = NULL; }
}

static wx_key *key_new(lua_State *L, const char *tname) {
  wx_key *k = (wx_key *)lua_newuserdata(L, sizeof *k);
  k->pkey = NULL; /* created closed, filled afterwards */
  k->ctx = NULL;
  luaL_getmetatable(L, tname);
  lua_setmetatable(L, -2);
  return k;
}

static wx_key *check_open_key(lua_State *L, int i, const char *tname) {
  wx_key *k = (wx_key *)luaL_checkudata(L, i, tname);
  if (k->pkey == NULL) luaL_error(L, "wxpay.core: attempt to use a closed %s", tname + 6);
  return k;
}

static int check_rsa(lua_State *L, EVP_PKEY *pkey, const char *fn) {
  if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA) return wx_fail(L, fn, "not an RSA key");
  if (EVP_PKEY_get_bits(pkey) < MIN_RSA_BITS) return wx_fail(L, fn, "RSA key shorter than 2048 bits");
  return 0;
}

static BIO *pem_bio(lua_State *L, int i, const char *fn, int *failed) {
  size_t len;
  const char *pem = luaL_checklstring(L, i, &len);
  BIO *bio;
  *failed = 0;
  if (len == 0 || len > MAX_PEM_LEN) { *failed = wx_fail(L, fn, len ? "PEM too large" : "empty PEM"); return NULL; }
  bio = BIO_new_mem_buf(pem, (int)len);
  if (bio == NULL) *failed = wx_fail(L, fn, "out of memory");
  return bio;
}

/* Sets up the key's sign (private) or verify (public) context: PKCS#1 v1.5, SHA-256.
 * Returns 1 with the key on top, or frees the key and pushes nil, err (returns 2). */
static int key_setup(lua_State *L, wx_key *k, int sign, const char *fn) {
  k->ctx = EVP_PKEY_CTX_new(k->pkey, NULL);
  if (k->ctx == NULL || (sign ? EVP_PKEY_sign_init(k->ctx) : EVP_PKEY_verify_init(k->ctx)) <= 0 ||
      EVP_PKEY_CTX_set_rsa_padding(k->ctx, RSA_PKCS1_PADDING) <= 0 ||
      EVP_PKEY_CTX_set_signature_md(k->ctx, EVP_sha256()) <= 0) {
    key_free(k);
    return wx_fail(L, fn, sign ? "cannot set up signing" : "cannot set up verification");
  }
  return 1;
}

/* Fills the closed key k from the PEM at index 1 (a private key if `private`, else a
 * SubjectPublicKeyInfo). k is already on the stack, so whatever raises later (a memory
 * error) leaves the parsed key to its __gc. Returns 1, or pushes nil, err and returns 2. */
static int key_load(lua_State *L, wx_key *k, int private, const char *fn) {
  int failed, r;
  BIO *bio = pem_bio(L, 1, fn, &failed);
  if (bio == NULL) return failed;
  ERR_clear_error();
  /* PEM_read_bio_PrivateKey reads PKCS#8 and the traditional PKCS#1 "RSA PRIVATE KEY". */
  k->pkey = private ? PEM_read_bio_PrivateKey(bio, NULL, no_password, NULL)
                    : PEM_read_bio_PUBKEY(bio, NULL, no_password, NULL);
  BIO_free(bio);
  if (k->pkey == NULL)
    return wx_fail(L, fn, private ? "no RSA private key in PEM" : "no SubjectPublicKeyInfo public key in PEM");
  if ((r = check_rsa(L, k->pkey, fn)) != 0) { key_free(k); return r; }
  return key_setup(L, k, private, fn);
}

/*** core.load_private_key(pem) -> key | nil, err */
static int l_load_private_key(lua_State *L) {
  /* Created closed before parsing, then filled (as liolib's newprefile). */
  return key_load(L, key_new(L, WX_PRIVATE_KEY), 1, "load_private_key");
}

/*** core.load_public_key(pem) -> public key | nil, err */
static int l_load_public_key(lua_State *L) {
  return key_load(L, key_new(L, WX_PUBLIC_KEY), 0, "load_public_key");
}

static wx_cert *cert_new(lua_State *L) {
  wx_cert *c = (wx_cert *)lua_newuserdata(L, sizeof *c);
  c->x509 = NULL; /* created closed, filled afterwards */
  luaL_getmetatable(L, WX_CERTIFICATE);
  lua_setmetatable(L, -2);
  return c;
}

static void cert_free(wx_cert *c) {
  if (c->x509) { X509_free(c->x509); c->x509 = NULL; }
}

/*** core.load_certificate(pem) -> certificate | nil, err */
static int l_load_certificate(lua_State *L) {
  static const char fn[] = "load_certificate";
  wx_cert *c = cert_new(L);
  int failed, r;
  BIO *bio = pem_bio(L, 1, fn, &failed);
  EVP_PKEY *pkey;
  if (bio == NULL) return failed;
  ERR_clear_error();
  c->x509 = PEM_read_bio_X509(bio, NULL, no_password, NULL);
  BIO_free(bio);
  if (c->x509 == NULL) return wx_fail(L, fn, "no X.509 certificate in PEM");
  pkey = X509_get0_pubkey(c->x509);
  if (pkey == NULL) { cert_free(c); return wx_fail(L, fn, "certificate has no usable public key"); }
  if ((r = check_rsa(L, pkey, fn)) != 0) { cert_free(c); return r; }
  ERR_clear_error();
  return 1;
}

wx_key *wx_check_private_key(lua_State *L, int i) {
  return check_open_key(L, i, WX_PRIVATE_KEY);
}

int wx_sign_b64(lua_State *L, wx_key *k, const char *msg, size_t len, const char *fn) {
  size_t siglen = (size_t)EVP_PKEY_get_size(k->pkey);
  unsigned char dgst[SHA256_DIGEST_LENGTH], sig[1024];
  char b64[4 * sizeof sig / 3 + 4];
  if (siglen > sizeof sig) return wx_fail(L, fn, "RSA key too large");
  SHA256((const unsigned char *)msg, len, dgst);
  if (EVP_PKEY_sign(k->ctx, sig, &siglen, dgst, sizeof dgst) <= 0)
    return wx_fail(L, fn, "RSA signing failed");
  wx_b64_encode(sig, siglen, b64);
  lua_pushlstring(L, b64, wx_b64_encoded_len(siglen));
  return 1;
}

/*** key:sign(message) -> base64 SHA256withRSA signature */
static int l_sign(lua_State *L) {
  wx_key *k = check_open_key(L, 1, WX_PRIVATE_KEY);
  size_t len;
  const char *msg = luaL_checklstring(L, 2, &len);
  return wx_sign_b64(L, k, msg, len, "sign");
}

/* Verifies base64 `sig` over `msg`; 1 valid, 0 anything else (malformed included). */
static int verify_b64(lua_State *L, wx_key *k, const char *msg, size_t len, const char *sig,
                      size_t siglen) {
  size_t keylen = (size_t)EVP_PKEY_get_size(k->pkey), n, need;
  unsigned char dgst[SHA256_DIGEST_LENGTH], stackbuf[768];
  unsigned char *raw;
  int ok;
  /* A base64 signature for this key has exactly this many characters; anything else
   * (including WECHATPAY/SIGNTEST/ probes) fails before any decoding work. */
  if (siglen != wx_b64_encoded_len(keylen)) return 0;
  /* Characters of the right count without the '=' padding decode to 3 * siglen / 4 bytes,
   * more than keylen (513 for RSA-4096's 684): size the buffer from the input, never the
   * key. The hot path of every response (RSA-2048 to RSA-6144) stays on the stack; larger
   * keys take scratch memory. */
  need = 3 * (siglen / 4);
  raw = need <= sizeof stackbuf ? stackbuf : wx_scratch(L, need);
  n = wx_b64_decode(sig, siglen, raw);
  if (n == keylen) {
    SHA256((const unsigned char *)msg, len, dgst);
    ok = EVP_PKEY_verify(k->ctx, raw, n, dgst, sizeof dgst) == 1;
    ERR_clear_error();
  } else {
    ok = 0;
  }
  if (raw != stackbuf) lua_pop(L, 1);
  return ok;
}

/*** pub:verify(message, signature_b64) -> boolean */
static int l_verify(lua_State *L) {
  wx_key *k = check_open_key(L, 1, WX_PUBLIC_KEY);
  size_t len, siglen;
  const char *msg = luaL_checklstring(L, 2, &len);
  const char *sig = luaL_checklstring(L, 3, &siglen);
  lua_pushboolean(L, verify_b64(L, k, msg, len, sig, siglen));
  return 1;
}

static EVP_PKEY_CTX *oaep_ctx(EVP_PKEY *pkey, int encrypt) {
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pkey, NULL);
  if (ctx == NULL) return NULL;
  if ((encrypt ? EVP_PKEY_encrypt_init(ctx) : EVP_PKEY_decrypt_init(ctx)) <= 0 ||
      EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
      EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha1()) <= 0 ||
      EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha1()) <= 0) {
    EVP_PKEY_CTX_free(ctx);
    return NULL;
  }
  return ctx;
}

/*** pub:encrypt_oaep(plaintext) -> base64 | nil, err */
static int l_encrypt_oaep(lua_State *L) {
  static const char fn[] = "encrypt_oaep";
  wx_key *k = check_open_key(L, 1, WX_PUBLIC_KEY);
  size_t len, outlen = (size_t)EVP_PKEY_get_size(k->pkey);
  const char *pt = luaL_checklstring(L, 2, &len);
  unsigned char *out;
  EVP_PKEY_CTX *ctx;
  int ok;
  if (len > outlen - 2 * SHA_DIGEST_LENGTH - 2) return wx_fail(L, fn, "plaintext too long for RSA-OAEP");
  out = wx_scratch(L, outlen);
  ERR_clear_error();
  if ((ctx = oaep_ctx(k->pkey, 1)) == NULL) return wx_fail(L, fn, "cannot set up RSA-OAEP");
  ok = EVP_PKEY_encrypt(ctx, out, &outlen, (const unsigned char *)pt, len) > 0;
  EVP_PKEY_CTX_free(ctx);
  if (!ok) return wx_fail(L, fn, "RSA-OAEP encryption failed");
  wx_push_b64(L, out, outlen);
  return 1;
}

/*** key:decrypt_oaep(ciphertext_b64) -> plaintext | nil, err */
static int l_decrypt_oaep(lua_State *L) {
  static const char fn[] = "decrypt_oaep";
  wx_key *k = check_open_key(L, 1, WX_PRIVATE_KEY);
  size_t len, n, keylen = (size_t)EVP_PKEY_get_size(k->pkey), outlen;
  const char *b64 = luaL_checklstring(L, 2, &len);
  unsigned char *raw, *out;
  EVP_PKEY_CTX *ctx;
  int ok;
  if (len != wx_b64_encoded_len(keylen)) return wx_fail(L, fn, "ciphertext has the wrong length for this key");
  raw = wx_scratch(L, 3 * (len / 4));
  if ((n = wx_b64_decode(b64, len, raw)) != keylen) return wx_fail(L, fn, "ciphertext is not valid base64 of the key's size");
  outlen = keylen;
  out = wx_scratch(L, outlen);
  ERR_clear_error();
  if ((ctx = oaep_ctx(k->pkey, 0)) == NULL) return wx_fail(L, fn, "cannot set up RSA-OAEP");
  ok = EVP_PKEY_decrypt(ctx, out, &outlen, raw, n) > 0;
  EVP_PKEY_CTX_free(ctx);
  if (!ok) return wx_fail(L, fn, "RSA-OAEP decryption failed");
  lua_pushlstring(L, (const char *)out, outlen);
  OPENSSL_cleanse(out, keylen); /* the plaintext is sensitive; leave no copy in the scratch */
  return 1;
}

/*** key:public_key() -> public key userdata */
static int l_key_public_key(lua_State *L) {
  wx_key *k = check_open_key(L, 1, WX_PRIVATE_KEY);
  wx_key *pub = key_new(L, WX_PUBLIC_KEY);
  unsigned char *der = NULL;
  const unsigned char *p;
  int len;
  /* Round-trip through DER SubjectPublicKeyInfo so the public half carries no private parts. */
  ERR_clear_error();
  len = i2d_PUBKEY(k->pkey, &der);
  if (len <= 0) return wx_fail(L, "public_key", "cannot encode the public key");
  p = der;
  pub->pkey = d2i_PUBKEY(NULL, &p, len);
  OPENSSL_free(der);
  if (pub->pkey == NULL) return wx_fail(L, "public_key", "cannot decode the public key");
  return key_setup(L, pub, 0, "public_key");
}

/*** pub:fingerprint() -> lower-case hex SHA-256 of the DER SubjectPublicKeyInfo */
static int l_fingerprint(lua_State *L) {
  wx_key *k = check_open_key(L, 1, WX_PUBLIC_KEY);
  unsigned char *der = NULL, dgst[SHA256_DIGEST_LENGTH];
  char out[2 * SHA256_DIGEST_LENGTH];
  int len;
  len = i2d_PUBKEY(k->pkey, &der);
  if (len <= 0) return wx_fail(L, "fingerprint", "cannot encode the public key");
  SHA256(der, (size_t)len, dgst);
  OPENSSL_free(der);
  wx_hex_encode(dgst, sizeof dgst, out, 0);
  lua_pushlstring(L, out, sizeof out);
  return 1;
}

static int l_key_bits(lua_State *L) {
  wx_key *k = (wx_key *)lua_touserdata(L, 1);
  if (luaL_testudata(L, 1, WX_PRIVATE_KEY) == NULL) check_open_key(L, 1, WX_PUBLIC_KEY);
  else check_open_key(L, 1, WX_PRIVATE_KEY);
  lua_pushinteger(L, EVP_PKEY_get_bits(k->pkey));
  return 1;
}

static int key_close(lua_State *L, const char *tname) {
  wx_key *k = (wx_key *)luaL_checkudata(L, 1, tname);
  key_free(k);
  return 0;
}
static int l_private_close(lua_State *L) { return key_close(L, WX_PRIVATE_KEY); }
static int l_public_close(lua_State *L) { return key_close(L, WX_PUBLIC_KEY); }

static int key_tostring(lua_State *L, const char *tname) {
  wx_key *k = (wx_key *)luaL_checkudata(L, 1, tname);
  if (k->pkey == NULL) lua_pushfstring(L, "%s (closed)", tname);
  else lua_pushfstring(L, "%s (RSA-%d)", tname, EVP_PKEY_get_bits(k->pkey));
  return 1;
}
static int l_private_tostring(lua_State *L) { return key_tostring(L, WX_PRIVATE_KEY); }
static int l_public_tostring(lua_State *L) { return key_tostring(L, WX_PUBLIC_KEY); }

/* ---- certificates ---- */

static wx_cert *check_cert(lua_State *L) {
  wx_cert *c = (wx_cert *)luaL_checkudata(L, 1, WX_CERTIFICATE);
  if (c->x509 == NULL) luaL_error(L, "wxpay.core: attempt to use a closed certificate");
  return c;
}

/* Upper-case hex of the serial's magnitude bytes, as WeChat Pay prints it. */
static void push_serial(lua_State *L, X509 *x) {
  const ASN1_INTEGER *s = X509_get0_serialNumber(x);
  int n = ASN1_STRING_length(s);
  char *out = (char *)wx_scratch(L, 2 * (size_t)n);
  wx_hex_encode(ASN1_STRING_get0_data(s), (size_t)n, out, 1);
  lua_pushlstring(L, out, 2 * (size_t)n);
  lua_remove(L, -2);
}

static int l_cert_serial(lua_State *L) {
  push_serial(L, check_cert(L)->x509);
  return 1;
}

static int push_time(lua_State *L, const ASN1_TIME *t) {
  struct tm tm;
  memset(&tm, 0, sizeof tm);
  if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1) return wx_fail(L, "certificate", "unreadable validity time");
  lua_pushinteger(L, (lua_Integer)timegm(&tm));
  return 1;
}
static int l_cert_not_before(lua_State *L) { return push_time(L, X509_get0_notBefore(check_cert(L)->x509)); }
static int l_cert_not_after(lua_State *L) { return push_time(L, X509_get0_notAfter(check_cert(L)->x509)); }

static int l_cert_public_key(lua_State *L) {
  wx_cert *c = check_cert(L);
  wx_key *k = key_new(L, WX_PUBLIC_KEY);
  k->pkey = X509_get_pubkey(c->x509); /* takes a reference */
  if (k->pkey == NULL) return wx_fail(L, "public_key", "certificate has no public key");
  return key_setup(L, k, 0, "public_key");
}

static int push_name(lua_State *L, const X509_NAME *name) {
  BIO *bio = BIO_new(BIO_s_mem());
  char *data;
  long len;
  if (bio == NULL) return wx_fail(L, "certificate", "out of memory");
  X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB);
  len = BIO_get_mem_data(bio, &data);
  lua_pushlstring(L, data, (size_t)len);
  BIO_free(bio);
  return 1;
}
static int l_cert_subject(lua_State *L) { return push_name(L, X509_get_subject_name(check_cert(L)->x509)); }
static int l_cert_issuer(lua_State *L) { return push_name(L, X509_get_issuer_name(check_cert(L)->x509)); }

static int l_cert_close(lua_State *L) {
  cert_free((wx_cert *)luaL_checkudata(L, 1, WX_CERTIFICATE));
  return 0;
}

static int l_cert_tostring(lua_State *L) {
  wx_cert *c = (wx_cert *)luaL_checkudata(L, 1, WX_CERTIFICATE);
  if (c->x509 == NULL) { lua_pushliteral(L, WX_CERTIFICATE " (closed)"); return 1; }
  lua_pushliteral(L, WX_CERTIFICATE " (serial ");
  push_serial(L, c->x509);
  lua_pushliteral(L, ")");
  lua_concat(L, 3);
  return 1;
}

void wx_open_pkey(lua_State *L) {
  static const luaL_Reg private_methods[] = {
    {"sign", l_sign}, {"decrypt_oaep", l_decrypt_oaep}, {"public_key", l_key_public_key},
    {"bits", l_key_bits}, {"close", l_private_close}, {NULL, NULL}};
  static const luaL_Reg public_methods[] = {
    {"verify", l_verify}, {"encrypt_oaep", l_encrypt_oaep}, {"fingerprint", l_fingerprint},
    {"bits", l_key_bits}, {"close", l_public_close}, {NULL, NULL}};
  static const luaL_Reg cert_methods[] = {
    {"serial", l_cert_serial}, {"not_before", l_cert_not_before},
    {"not_after", l_cert_not_after}, {"public_key", l_cert_public_key},
    {"subject", l_cert_subject}, {"issuer", l_cert_issuer}, {"close", l_cert_close},
    {NULL, NULL}};
  static const luaL_Reg funcs[] = {
    {"load_private_key", l_load_private_key}, {"load_public_key", l_load_public_key},
    {"load_certificate", l_load_certificate}, {NULL, NULL}};
  wx_new_class(L, WX_PRIVATE_KEY, private_methods, l_private_close, l_private_tostring);
  wx_new_class(L, WX_PUBLIC_KEY, public_methods, l_public_close, l_public_tostring);
  wx_new_class(L, WX_CERTIFICATE, cert_methods, l_cert_close, l_cert_tostring);
  luaL_setfuncs(L, funcs, 0);
}
