/* Internal declarations shared by the C core's files. Only luaopen_wxpay_core is exported. */
#ifndef WXPAY_H
#define WXPAY_H

#include <stddef.h>
#include "compat.h"

#define WX_HIDDEN __attribute__((visibility("hidden")))

#define WX_PRIVATE_KEY "wxpay.private_key"
#define WX_PUBLIC_KEY  "wxpay.public_key"
#define WX_CERTIFICATE "wxpay.certificate"
#define WX_HTTP        "wxpay.http_session"

/* Pushes nil and "wxpay.core.<fn>: <reason>[: <openssl reason>]", draining OpenSSL's error
 * queue. Returns 2, so callers can `return wx_fail(...)`. */
WX_HIDDEN int wx_fail(lua_State *L, const char *fn, const char *reason);

/* Scratch memory owned by the Lua GC (a userdata left on the stack): freed even if a later
 * call raises, so error paths cannot leak it. */
WX_HIDDEN unsigned char *wx_scratch(lua_State *L, size_t n);

/* Base64 (RFC 4648, standard alphabet, padded, no line breaks). */
WX_HIDDEN size_t wx_b64_encoded_len(size_t n);
WX_HIDDEN void wx_b64_encode(const unsigned char *in, size_t n, char *out);
/* Strict decode: length multiple of 4, padding only at the end, zero pad bits, no
 * whitespace. Returns the decoded length, or (size_t)-1 on bad input. out needs
 * 3 * (n / 4) bytes. */
WX_HIDDEN size_t wx_b64_decode(const char *in, size_t n, unsigned char *out);
WX_HIDDEN void wx_push_b64(lua_State *L, const unsigned char *in, size_t n);

/* Response header parsing (http.c); pure C so it can be fuzzed alone. Calls `cb` for every
 * "Name: value" line of the last response in the raw header block (status lines reset). */
typedef void (*wx_header_cb)(void *ud, const char *name, size_t nlen, const char *value,
                             size_t vlen);
WX_HIDDEN int wx_parse_headers(const char *buf, size_t len, wx_header_cb cb, void *ud);

/* Fills out[0..n) with random [0-9A-Za-z] from the OS CSPRNG (crypto.c); no terminator. */
WX_HIDDEN int wx_nonce(char *out, size_t n); /* 1 on success */

WX_HIDDEN void wx_open_pkey(lua_State *L);   /* adds key functions to the table on top */
WX_HIDDEN void wx_open_crypto(lua_State *L);
WX_HIDDEN void wx_open_http(lua_State *L);

/* Library-wide one-time initialisation (OpenSSL, libcurl), behind pthread_once. */
WX_HIDDEN int wx_global_init(void);

#endif
