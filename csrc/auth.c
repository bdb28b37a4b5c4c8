/* core.authorization: the WECHATPAY2-SHA256-RSA2048 Authorization header of a request.
 * Reads the fields, validates them, builds the string to sign, signs it with the private
 * key (pkey.c) and formats the header. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "wxpay.h"

typedef struct {
  const char *s;
  size_t len;
} field;

typedef struct {
  field mchid, serial, method, url, body, ts, nonce;
  wx_key *key;
  char tsbuf[32], noncebuf[32];
} auth_request;

/* A string (or number) field, or s = NULL if nil; raises on any other type. The value stays
 * on the stack until the function returns, which keeps the pointer alive. */
static void opt_field(lua_State *L, const char *name, field *f) {
  f->s = NULL;
  f->len = 0;
  lua_getfield(L, 1, name);
  if (lua_isnil(L, -1)) { lua_pop(L, 1); return; }
  if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
    luaL_error(L, "wxpay.core.authorization: field '%s' must be a string", name);
  f->s = lua_tolstring(L, -1, &f->len);
}

static void req_field(lua_State *L, const char *name, field *f) {
  opt_field(L, name, f);
  if (f->s == NULL) luaL_error(L, "wxpay.core.authorization: field '%s' is required", name);
}

/* Misuse (a missing field, a wrong type, no open private key) raises. */
static void read_fields(lua_State *L, auth_request *a) {
  luaL_checktype(L, 1, LUA_TTABLE);
  req_field(L, "mchid", &a->mchid);
  req_field(L, "serial_no", &a->serial);
  req_field(L, "method", &a->method);
  req_field(L, "url", &a->url);
  opt_field(L, "body", &a->body);
  opt_field(L, "timestamp", &a->ts);
  opt_field(L, "nonce", &a->nonce);
  lua_getfield(L, 1, "key");
  a->key = wx_check_private_key(L, lua_gettop(L));
}

/* Header values go inside double quotes: refuse anything that could break the syntax. */
static int header_safe(const field *f) {
  size_t i;
  if (f->len == 0) return 0;
  for (i = 0; i < f->len; i++) {
    unsigned char c = (unsigned char)f->s[i];
    if (c < 0x21 || c > 0x7e || c == '"' || c == ',' || c == '\\') return 0;
  }
  return 1;
}

static int all_in(const field *f, char lo, char hi) {
  size_t i;
  for (i = 0; i < f->len; i++)
    if (f->s[i] < lo || f->s[i] > hi) return 0;
  return 1;
}

/* The path (and query) as sent: percent-encoded ASCII, no spaces, no fragment. */
static int url_ascii(const field *f) {
  size_t i;
  for (i = 0; i < f->len; i++) {
    unsigned char c = (unsigned char)f->s[i];
    if (c <= 0x20 || c >= 0x7f || c == '#') return 0;
  }
  return 1;
}

/* Returns 0, or pushes nil, err and returns 2. */
static int check_fields(lua_State *L, const auth_request *a) {
  static const char fn[] = "authorization";
  if (!header_safe(&a->mchid)) return wx_fail(L, fn, "mchid is empty or has characters a header cannot carry");
  if (!header_safe(&a->serial)) return wx_fail(L, fn, "serial_no is empty or has characters a header cannot carry");
  if (!all_in(&a->method, 'A', 'Z')) return wx_fail(L, fn, "method must be upper-case letters");
  if (a->method.len == 0) return wx_fail(L, fn, "method is empty");
  if (a->url.len == 0 || a->url.s[0] != '/') return wx_fail(L, fn, "url must be the path (and query) starting with '/'");
  if (!url_ascii(&a->url)) return wx_fail(L, fn, "url must be percent-encoded ASCII without spaces or a fragment");
  if (a->ts.s != NULL && (a->ts.len == 0 || a->ts.len > 20 || !all_in(&a->ts, '0', '9')))
    return wx_fail(L, fn, "timestamp must be decimal seconds");
  if (a->nonce.s != NULL && (!header_safe(&a->nonce) || a->nonce.len > 64))
    return wx_fail(L, fn, "nonce must be 1-64 printable characters without '\"' or ','");
  return 0;
}

/* The current time and a fresh 32-character nonce where the caller gave none. A failing
 * random source is a runtime failure: pushes nil, err and returns 2; else returns 0. */
static int fill_defaults(lua_State *L, auth_request *a) {
  if (a->ts.s == NULL) {
    snprintf(a->tsbuf, sizeof a->tsbuf, "%lld", (long long)time(NULL));
    a->ts.s = a->tsbuf;
    a->ts.len = strlen(a->tsbuf);
  }
  if (a->nonce.s == NULL) {
    if (!wx_nonce(a->noncebuf, 32)) return wx_fail(L, "authorization", "no randomness available");
    a->nonce.s = a->noncebuf;
    a->nonce.len = 32;
  }
  return 0;
}

static void add_line(luaL_Buffer *b, const field *f) {
  if (f->s) luaL_addlstring(b, f->s, f->len);
  luaL_addchar(b, '\n');
}

/* The string to sign: method, url, timestamp, nonce and body, each line ending in \n. */
static void push_message(lua_State *L, const auth_request *a) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  add_line(&b, &a->method);
  add_line(&b, &a->url);
  add_line(&b, &a->ts);
  add_line(&b, &a->nonce);
  add_line(&b, &a->body);
  luaL_pushresult(&b);
}

static void add_param(luaL_Buffer *b, const char *prefix, const char *s, size_t len) {
  luaL_addstring(b, prefix);
  luaL_addlstring(b, s, len);
  luaL_addchar(b, '"');
}

/* The header value, parameters in the order the official SDKs send them. */
static void push_header(lua_State *L, const auth_request *a, const char *sig, size_t siglen) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  add_param(&b, "WECHATPAY2-SHA256-RSA2048 mchid=\"", a->mchid.s, a->mchid.len);
  add_param(&b, ",nonce_str=\"", a->nonce.s, a->nonce.len);
  add_param(&b, ",timestamp=\"", a->ts.s, a->ts.len);
  add_param(&b, ",serial_no=\"", a->serial.s, a->serial.len);
  add_param(&b, ",signature=\"", sig, siglen);
  luaL_pushresult(&b);
}

/*** core.authorization{ mchid, serial_no, key, method, url, body?, timestamp?, nonce? }
 * -> header, timestamp, nonce | nil, err */
static int l_authorization(lua_State *L) {
  auth_request a;
  const char *message, *sig;
  size_t msglen, siglen;
  int r;
  read_fields(L, &a);
  if ((r = check_fields(L, &a)) != 0) return r;
  if ((r = fill_defaults(L, &a)) != 0) return r;
  push_message(L, &a);
  message = lua_tolstring(L, -1, &msglen);
  if (wx_sign_b64(L, a.key, message, msglen, "authorization") != 1) return 2;
  sig = lua_tolstring(L, -1, &siglen);
  push_header(L, &a, sig, siglen);
  lua_pushlstring(L, a.ts.s, a.ts.len);
  lua_pushlstring(L, a.nonce.s, a.nonce.len);
  return 3;
}

void wx_open_auth(lua_State *L) {
  lua_pushcfunction(L, l_authorization);
  lua_setfield(L, -2, "authorization");
}
