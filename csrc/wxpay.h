/* Internal declarations shared by the C core's files. Only luaopen_wxpay_core is exported. */
#ifndef WXPAY_H
#define WXPAY_H

#include <stddef.h>
#include <curl/curl.h>
#include "compat.h"

#define WX_HIDDEN __attribute__((visibility("hidden")))

#define WX_PRIVATE_KEY "wxpay.private_key"
#define WX_PUBLIC_KEY  "wxpay.public_key"
#define WX_CERTIFICATE "wxpay.certificate"
#define WX_HTTP        "wxpay.http_session"
#define WX_MULTI       "wxpay.http_multi"

/* Response limits shared by the session and the multi (http.c, multi.c, xfer.c). */
#define WX_DEFAULT_MAX_BODY (16L * 1024 * 1024)
#define WX_MAX_HEADER_BYTES (256 * 1024)

/* ---- util.c: helpers every file shares ---- */

/* Pushes nil and "wxpay.core.<fn>: <reason>[: <openssl reason>]", draining OpenSSL's error
 * queue. Returns 2, so callers can `return wx_fail(...)`. */
WX_HIDDEN int wx_fail(lua_State *L, const char *fn, const char *reason);

/* Scratch memory owned by the Lua GC (a userdata left on the stack): freed even if a later
 * call raises, so error paths cannot leak it. */
WX_HIDDEN unsigned char *wx_scratch(lua_State *L, size_t n);

/* Registers a userdata class: methods as __index; `close` as __gc and __close too (it must
 * be idempotent); `tostr` as __tostring; the metatable locked. Leaves the stack as it was. */
WX_HIDDEN void wx_new_class(lua_State *L, const char *tname, const luaL_Reg *methods,
                            lua_CFunction close, lua_CFunction tostr);

/* t[k] as a string, or NULL if nil; raises "<fn>: '<k>' must be a string" otherwise. The
 * string stays referenced by the table. */
WX_HIDDEN const char *wx_opt_string(lua_State *L, int t, const char *k, const char *fn);

/* Writes 2 * n hex digits (no terminator), upper- or lower-case. */
WX_HIDDEN void wx_hex_encode(const unsigned char *in, size_t n, char *out, int upper);

/* CLOCK_MONOTONIC in seconds. */
WX_HIDDEN double wx_monotonic(void);

/* ---- crypto.c ---- */

/* Base64 (RFC 4648, standard alphabet, padded, no line breaks). */
WX_HIDDEN size_t wx_b64_encoded_len(size_t n);
WX_HIDDEN void wx_b64_encode(const unsigned char *in, size_t n, char *out);
/* Strict decode: length multiple of 4, padding only at the end, zero pad bits, no
 * whitespace. Returns the decoded length, or (size_t)-1 on bad input. out needs
 * 3 * (n / 4) bytes. */
WX_HIDDEN size_t wx_b64_decode(const char *in, size_t n, unsigned char *out);
WX_HIDDEN void wx_push_b64(lua_State *L, const unsigned char *in, size_t n);

/* Response header parsing (xfer.c); pure C so it can be fuzzed alone. Calls `cb` for every
 * "Name: value" line of the last response in the raw header block (status lines reset). */
typedef void (*wx_header_cb)(void *ud, const char *name, size_t nlen, const char *value,
                             size_t vlen);
WX_HIDDEN int wx_parse_headers(const char *buf, size_t len, wx_header_cb cb, void *ud);

/* One libcurl transfer and what it collects (xfer.c), shared by the session (http.c) and
 * the multi interface (multi.c). The callbacks only append to these C buffers. */
typedef struct {
  char *data;
  size_t len, cap, limit;
  int overflow;
} wx_buf;

typedef struct {
  CURL *easy;
  struct curl_slist *hdrs; /* the request's header lines, kept until the transfer ends */
  wx_buf body, headers;
  char errbuf[CURL_ERROR_SIZE];
} wx_xfer;

/* Creates the easy handle with the options every transfer shares (TLS verification,
 * https only, callbacks into x's buffers, ca_file, proxy). Returns 0 if libcurl fails. */
WX_HIDDEN int wx_xfer_init(wx_xfer *x, long max_body, const char *ca_file, const char *proxy);
/* Reads the request table at (positive) idx ({ method, url, headers, body, timeout, connect_timeout })
 * and sets it on x->easy; raises on bad types (holding nothing then). The body is copied. */
WX_HIDDEN void wx_xfer_prepare(lua_State *L, int idx, wx_xfer *x, const char *fn);
/* After the transfer: pushes resp (1 result) or nil, err (2 results); returns the count and
 * adds the transfer's new connections to *connects. Then releases the request's memory. */
WX_HIDDEN int wx_xfer_push(lua_State *L, wx_xfer *x, CURLcode rc, lua_Integer *connects);
/* Releases the request's header list and body copy (the handle stays usable). */
WX_HIDDEN void wx_xfer_finish(wx_xfer *x);
WX_HIDDEN void wx_xfer_free(wx_xfer *x); /* idempotent */
/* Appends to a bounded buffer (sets overflow and returns 0 past its limit). */
WX_HIDDEN size_t wx_buf_append(wx_buf *b, const char *p, size_t n);
/* Restores the body callback and size limit a download replaced. */
WX_HIDDEN void wx_xfer_sink_reset(wx_xfer *x);

/* Fills out[0..n) with random [0-9A-Za-z] from the OS CSPRNG (crypto.c); no terminator. */
WX_HIDDEN int wx_nonce(char *out, size_t n); /* 1 on success */

/* ---- pkey.c: what auth.c needs of the private key ---- */
typedef struct wx_key wx_key;
/* The open private key at index i; raises if it is not one, or closed. */
WX_HIDDEN wx_key *wx_check_private_key(lua_State *L, int i);
/* Pushes the base64 SHA256withRSA signature of msg (1 result) or nil, err (2 results). */
WX_HIDDEN int wx_sign_b64(lua_State *L, wx_key *k, const char *msg, size_t len, const char *fn);

WX_HIDDEN void wx_open_pkey(lua_State *L);   /* adds key functions to the table on top */
WX_HIDDEN void wx_open_auth(lua_State *L);
WX_HIDDEN void wx_open_crypto(lua_State *L);
WX_HIDDEN void wx_open_http(lua_State *L);
WX_HIDDEN void wx_open_multi(lua_State *L);
WX_HIDDEN void wx_open_signal(lua_State *L);

/* Library-wide one-time initialisation (OpenSSL, libcurl), behind pthread_once. */
WX_HIDDEN int wx_global_init(void);

#endif
