/* Primitives: base64, SHA-256, nonces (from a per-thread buffer of random bytes), AES-256-GCM,
 * the V2 (发券) HMAC signature. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "wxpay.h"

#define GCM_TAG_LEN 16
#define GCM_NONCE_LEN 12
#define AES256_KEY_LEN 32

/* ---- base64 ---- */

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t wx_b64_encoded_len(size_t n) { return 4 * ((n + 2) / 3); }

void wx_b64_encode(const unsigned char *in, size_t n, char *out) {
  size_t i;
  for (i = 0; i + 2 < n; i += 3) {
    unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
    *out++ = B64[v >> 18]; *out++ = B64[(v >> 12) & 63];
    *out++ = B64[(v >> 6) & 63]; *out++ = B64[v & 63];
  }
  if (i < n) {
    unsigned v = (unsigned)in[i] << 16 | (i + 1 < n ? (unsigned)in[i + 1] << 8 : 0);
    *out++ = B64[v >> 18]; *out++ = B64[(v >> 12) & 63];
    *out++ = i + 1 < n ? B64[(v >> 6) & 63] : '=';
    *out++ = '=';
  }
}

static int b64_value(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

size_t wx_b64_decode(const char *in, size_t n, unsigned char *out) {
  size_t i, o = 0;
  if (n % 4 != 0) return (size_t)-1;
  for (i = 0; i < n; i += 4) {
    int a = b64_value((unsigned char)in[i]), b = b64_value((unsigned char)in[i + 1]);
    int c, d, last = i + 4 == n;
    if (a < 0 || b < 0) return (size_t)-1;
    if (last && in[i + 2] == '=' && in[i + 3] == '=') {
      if (b & 15) return (size_t)-1; /* non-zero pad bits: not canonical */
      out[o++] = (unsigned char)(a << 2 | b >> 4);
      break;
    }
    c = b64_value((unsigned char)in[i + 2]);
    if (c < 0) return (size_t)-1;
    if (last && in[i + 3] == '=') {
      if (c & 3) return (size_t)-1;
      out[o++] = (unsigned char)(a << 2 | b >> 4);
      out[o++] = (unsigned char)((b & 15) << 4 | c >> 2);
      break;
    }
    d = b64_value((unsigned char)in[i + 3]);
    if (d < 0) return (size_t)-1;
    out[o++] = (unsigned char)(a << 2 | b >> 4);
    out[o++] = (unsigned char)((b & 15) << 4 | c >> 2);
    out[o++] = (unsigned char)((c & 3) << 6 | d);
  }
  return o;
}

void wx_push_b64(lua_State *L, const unsigned char *in, size_t n) {
  size_t len = wx_b64_encoded_len(n);
  char *out = (char *)wx_scratch(L, len);
  wx_b64_encode(in, n, out);
  lua_pushlstring(L, out, len);
  lua_remove(L, -2);
}

static int l_base64_encode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  wx_push_b64(L, (const unsigned char *)s, n);
  return 1;
}

static int l_base64_decode(lua_State *L) {
  size_t n, m;
  const char *s = luaL_checklstring(L, 1, &n);
  unsigned char *out = wx_scratch(L, 3 * (n / 4));
  m = wx_b64_decode(s, n, out);
  if (m == (size_t)-1) return wx_fail(L, "base64_decode", "invalid base64");
  lua_pushlstring(L, (const char *)out, m);
  return 1;
}

/* ---- digests and randomness ---- */

static int l_sha256_hex(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  unsigned char d[SHA256_DIGEST_LENGTH];
  char out[2 * SHA256_DIGEST_LENGTH];
  SHA256((const unsigned char *)s, n, d);
  wx_hex_encode(d, sizeof d, out, 0);
  lua_pushlstring(L, out, sizeof out);
  return 1;
}

#ifdef WXPAY_TEST_HOOKS
/* Test builds only (make asan): lets a spec make the random source fail. */
static int fail_random;
static int l_test_fail_random(lua_State *L) {
  fail_random = lua_toboolean(L, 1);
  return 0;
}
#  define RANDOM_FAILS() fail_random
#else
#  define RANDOM_FAILS() 0
#endif

/* Random bytes for nonces, drawn from RAND_bytes NONCE_POOL at a time per thread, so a
 * nonce costs neither a DRBG call nor the fork check (a getpid) inside it. A forked child
 * must never reuse its parent's buffered bytes (two processes would send the same nonce): a
 * fork handler empties the buffer of the forking thread, the only thread the child has.
 * Bytes are wiped as they are used. */
#define NONCE_POOL 512
static __thread unsigned char pool_bytes[NONCE_POOL];
static __thread size_t pool_next = NONCE_POOL; /* index of the next unused byte */
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

static void pool_forget(void) {
  OPENSSL_cleanse(pool_bytes, sizeof pool_bytes);
  pool_next = NONCE_POOL;
}

static void pool_register(void) {
  pthread_atfork(NULL, NULL, pool_forget);
}

static int random_byte(unsigned char *out) {
  if (pool_next == NONCE_POOL) {
    pthread_once(&pool_once, pool_register);
    if (RAND_bytes(pool_bytes, (int)sizeof pool_bytes) != 1) { ERR_clear_error(); return 0; }
    pool_next = 0;
  }
  *out = pool_bytes[pool_next];
  pool_bytes[pool_next++] = 0;
  return 1;
}

int wx_nonce(char *out, size_t n) {
  static const char ALNUM[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  size_t i = 0;
  unsigned char r;
  if (RANDOM_FAILS()) return 0;
  while (i < n) {
    if (!random_byte(&r)) return 0;
    /* Rejection sampling: 248 = 4 * 62, so every character is equally likely. */
    if (r < 248) out[i++] = ALNUM[r % 62];
  }
  return 1;
}

static int l_nonce(lua_State *L) {
  lua_Integer n = luaL_optinteger(L, 1, 32);
  char *out;
  luaL_argcheck(L, n >= 1 && n <= 1024, 1, "length must be 1..1024");
  out = (char *)wx_scratch(L, (size_t)n);
  /* A failing random source is a runtime failure, as in core.authorization: nil, err. */
  if (!wx_nonce(out, (size_t)n)) return wx_fail(L, "nonce", "no randomness available");
  lua_pushlstring(L, out, (size_t)n);
  return 1;
}

/* ---- AES-256-GCM ---- */

static int check_gcm_args(lua_State *L, const char *fn, size_t klen, size_t nlen) {
  if (klen != AES256_KEY_LEN) return wx_fail(L, fn, "key must be 32 bytes (the APIv3 key)");
  if (nlen != GCM_NONCE_LEN) return wx_fail(L, fn, "nonce must be 12 bytes");
  return 0;
}

/*** core.aes_gcm_decrypt(key, nonce, aad, ciphertext_b64) -> plaintext | nil, err */
static int l_aes_gcm_decrypt(lua_State *L) {
  static const char fn[] = "aes_gcm_decrypt";
  size_t klen, nlen, alen, blen, n;
  const char *key = luaL_checklstring(L, 1, &klen);
  const char *nonce = luaL_checklstring(L, 2, &nlen);
  const char *aad = luaL_optlstring(L, 3, "", &alen);
  const char *b64 = luaL_checklstring(L, 4, &blen);
  unsigned char *raw, *out;
  EVP_CIPHER_CTX *ctx;
  int len, ok, r;
  if ((r = check_gcm_args(L, fn, klen, nlen)) != 0) return r;
  raw = wx_scratch(L, 3 * (blen / 4));
  n = wx_b64_decode(b64, blen, raw);
  if (n == (size_t)-1) return wx_fail(L, fn, "ciphertext is not valid base64");
  if (n < GCM_TAG_LEN) return wx_fail(L, fn, "ciphertext shorter than the 16-byte tag");
  if (n - GCM_TAG_LEN > (size_t)0x7fffffff || alen > (size_t)0x7fffffff) return wx_fail(L, fn, "input too large");
  out = wx_scratch(L, n);
  ERR_clear_error();
  if ((ctx = EVP_CIPHER_CTX_new()) == NULL) return wx_fail(L, fn, "out of memory");
  ok = EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
       EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, GCM_NONCE_LEN, NULL) == 1 &&
       EVP_DecryptInit_ex(ctx, NULL, NULL, (const unsigned char *)key, (const unsigned char *)nonce) == 1 &&
       (alen == 0 || EVP_DecryptUpdate(ctx, NULL, &len, (const unsigned char *)aad, (int)alen) == 1) &&
       EVP_DecryptUpdate(ctx, out, &len, raw, (int)(n - GCM_TAG_LEN)) == 1 &&
       EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, GCM_TAG_LEN, raw + n - GCM_TAG_LEN) == 1;
  ok = ok && EVP_DecryptFinal_ex(ctx, out + len, &len) == 1;
  EVP_CIPHER_CTX_free(ctx);
  if (!ok) {
    OPENSSL_cleanse(out, n); /* never leave unauthenticated plaintext behind */
    return wx_fail(L, fn, "authentication failed (wrong key, nonce, associated data or tampered ciphertext)");
  }
  lua_pushlstring(L, (const char *)out, n - GCM_TAG_LEN);
  OPENSSL_cleanse(out, n);
  return 1;
}

/*** core.aes_gcm_encrypt(key, nonce, aad, plaintext) -> base64(ciphertext || tag) */
static int l_aes_gcm_encrypt(lua_State *L) {
  static const char fn[] = "aes_gcm_encrypt";
  size_t klen, nlen, alen, plen;
  const char *key = luaL_checklstring(L, 1, &klen);
  const char *nonce = luaL_checklstring(L, 2, &nlen);
  const char *aad = luaL_optlstring(L, 3, "", &alen);
  const char *pt = luaL_checklstring(L, 4, &plen);
  unsigned char *out;
  EVP_CIPHER_CTX *ctx;
  int len, ok, r;
  if ((r = check_gcm_args(L, fn, klen, nlen)) != 0) return r;
  if (plen > (size_t)0x7fffff00 || alen > (size_t)0x7fffffff) return wx_fail(L, fn, "input too large");
  out = wx_scratch(L, plen + GCM_TAG_LEN);
  ERR_clear_error();
  if ((ctx = EVP_CIPHER_CTX_new()) == NULL) return wx_fail(L, fn, "out of memory");
  ok = EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
       EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, GCM_NONCE_LEN, NULL) == 1 &&
       EVP_EncryptInit_ex(ctx, NULL, NULL, (const unsigned char *)key, (const unsigned char *)nonce) == 1 &&
       (alen == 0 || EVP_EncryptUpdate(ctx, NULL, &len, (const unsigned char *)aad, (int)alen) == 1) &&
       EVP_EncryptUpdate(ctx, out, &len, (const unsigned char *)pt, (int)plen) == 1;
  ok = ok && EVP_EncryptFinal_ex(ctx, out + len, &len) == 1 &&
       EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, GCM_TAG_LEN, out + plen) == 1;
  EVP_CIPHER_CTX_free(ctx);
  if (!ok) return wx_fail(L, fn, "encryption failed");
  wx_push_b64(L, out, plen + GCM_TAG_LEN);
  return 1;
}

/* ---- the APIv2 signature of the 发券 flows (plugin, H5, JSAPI) ---- */

#define V2_MAX_PARAMS 256
#define V2_MAX_BYTES (256 * 1024)

typedef struct {
  const char *name, *value;
  size_t nlen, vlen;
} v2_param;

static int v2_compare(const void *a, const void *b) {
  const v2_param *x = (const v2_param *)a, *y = (const v2_param *)b;
  size_t n = x->nlen < y->nlen ? x->nlen : y->nlen;
  int c = memcmp(x->name, y->name, n);
  if (c != 0) return c;
  return (x->nlen > y->nlen) - (x->nlen < y->nlen);
}

/* The parameters that take part (string names and values; not `sign`, not empty) into
 * p (NULL: count only). Raises on a name or value that is not a string. */
static size_t v2_collect(lua_State *L, v2_param *p) {
  size_t n = 0;
  lua_pushnil(L);
  while (lua_next(L, 1) != 0) {
    size_t nlen, vlen;
    const char *name, *value;
    if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
      luaL_argerror(L, 1, "names and values must be strings");
    name = lua_tolstring(L, -2, &nlen);
    value = lua_tolstring(L, -1, &vlen);
    lua_pop(L, 1); /* both strings stay referenced by the table */
    if (vlen == 0 || (nlen == 4 && memcmp(name, "sign", 4) == 0)) continue;
    if (p) {
      p[n].name = name; p[n].nlen = nlen;
      p[n].value = value; p[n].vlen = vlen;
    }
    n++;
  }
  return n;
}

/*** core.sign_v2(params, key) -> upper-case hex HMAC-SHA256 | nil, err
 * The V2 rule: every non-empty parameter but `sign`, sorted by name (bytes), as
 * name=value joined by &, then &key=<key>; HMAC-SHA256 keyed with the same key. The
 * string to sign holds the key, so its buffer is cleansed before returning. */
static int l_sign_v2(lua_State *L) {
  static const char fn[] = "sign_v2";
  size_t klen, n, i, total, off = 0;
  const char *key;
  v2_param *params;
  unsigned char *msg, mac[EVP_MAX_MD_SIZE];
  unsigned int maclen = 0;
  char hex[2 * EVP_MAX_MD_SIZE];
  int ok;
  luaL_checktype(L, 1, LUA_TTABLE);
  key = luaL_checklstring(L, 2, &klen);
  lua_settop(L, 2);
  if (klen == 0 || klen > 1024) return wx_fail(L, fn, "key must be 1..1024 bytes");
  n = v2_collect(L, NULL);
  if (n > V2_MAX_PARAMS) return wx_fail(L, fn, "too many parameters");
  params = (v2_param *)wx_scratch(L, n * sizeof *params);
  if (v2_collect(L, params) != n) return wx_fail(L, fn, "parameters changed while signing");
  total = 4 + klen; /* "key=" + key */
  for (i = 0; i < n; i++) {
    if (params[i].nlen > V2_MAX_BYTES || params[i].vlen > V2_MAX_BYTES) return wx_fail(L, fn, "parameters too long");
    total += params[i].nlen + params[i].vlen + 2; /* "=" and "&" */
    if (total > V2_MAX_BYTES) return wx_fail(L, fn, "parameters too long");
  }
  if (n > 1) qsort(params, n, sizeof *params, v2_compare);
  msg = wx_scratch(L, total);
  for (i = 0; i < n; i++) {
    memcpy(msg + off, params[i].name, params[i].nlen); off += params[i].nlen;
    msg[off++] = '=';
    memcpy(msg + off, params[i].value, params[i].vlen); off += params[i].vlen;
    msg[off++] = '&';
  }
  memcpy(msg + off, "key=", 4); off += 4;
  memcpy(msg + off, key, klen); off += klen;
  ERR_clear_error();
  ok = HMAC(EVP_sha256(), key, (int)klen, msg, off, mac, &maclen) != NULL && maclen == 32;
  OPENSSL_cleanse(msg, total);
  if (!ok) return wx_fail(L, fn, "HMAC-SHA256 failed");
  wx_hex_encode(mac, maclen, hex, 1);
  OPENSSL_cleanse(mac, sizeof mac);
  lua_pushlstring(L, hex, 2 * (size_t)maclen);
  return 1;
}

void wx_open_crypto(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"base64_encode", l_base64_encode}, {"base64_decode", l_base64_decode},
    {"sha256_hex", l_sha256_hex}, {"nonce", l_nonce},
    {"aes_gcm_decrypt", l_aes_gcm_decrypt}, {"aes_gcm_encrypt", l_aes_gcm_encrypt},
    {"sign_v2", l_sign_v2},
    {NULL, NULL}};
  luaL_setfuncs(L, funcs, 0);
#ifdef WXPAY_TEST_HOOKS
  lua_pushcfunction(L, l_test_fail_random);
  lua_setfield(L, -2, "_test_fail_random");
#endif
}
