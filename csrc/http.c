/* The HTTP session: one libcurl easy handle per client, so connections are kept alive and
 * reused. The transfer itself (options, request, response) is in xfer.c. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/evp.h>

#include "wxpay.h"


typedef struct {
  wx_xfer x;
  lua_Integer requests, connects;
} wx_http;

/* ---- the session userdata ---- */

static wx_http *check_http(lua_State *L) {
  wx_http *h = (wx_http *)luaL_checkudata(L, 1, WX_HTTP);
  if (h->x.easy == NULL) luaL_error(L, "wxpay.core: attempt to use a closed http session");
  return h;
}

/*** core.http_session{ ca_file=, proxy=, max_body= } */
static int l_http_session(lua_State *L) {
  const char *ca_file = NULL, *proxy = NULL;
  long max_body = WX_DEFAULT_MAX_BODY;
  wx_http *h;
  if (!lua_isnoneornil(L, 1)) {
    luaL_checktype(L, 1, LUA_TTABLE);
    ca_file = wx_opt_string(L, 1, "ca_file", "wxpay.core.http");
    proxy = wx_opt_string(L, 1, "proxy", "wxpay.core.http");
    lua_getfield(L, 1, "max_body");
    if (!lua_isnil(L, -1)) max_body = (long)luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    luaL_argcheck(L, max_body > 0, 1, "max_body must be positive");
  }
  /* Created closed, then filled: __gc is safe whatever happens below. */
  h = (wx_http *)lua_newuserdata(L, sizeof *h);
  memset(h, 0, sizeof *h);
  luaL_getmetatable(L, WX_HTTP);
  lua_setmetatable(L, -2);
  if (!wx_xfer_init(&h->x, max_body, ca_file, proxy))
    return luaL_error(L, "wxpay.core.http_session: curl_easy_init failed");
  return 1;
}

/*** session:request{ method, url, headers = { "K: v", … }, body?, timeout?, connect_timeout? } */
static int l_http_request(lua_State *L) {
  wx_http *h = check_http(L);
  CURLcode rc;
  wx_xfer_prepare(L, 2, &h->x, "wxpay.core.http");
  rc = curl_easy_perform(h->x.easy);
  h->requests++;
  return wx_xfer_push(L, &h->x, rc, &h->connects);
}

/* ---- a streamed download: the body goes to a file and a digest, never to memory ---- */

typedef struct {
  wx_xfer *x;
  FILE *fp;
  EVP_MD_CTX *md;
  long status;          /* 0 until the first body bytes arrive */
  curl_off_t bytes, max; /* max 0: no limit */
  int write_failed;     /* errno of a failed fwrite, or -1 for a failed digest */
} wx_download;

/* Body callback: a 2xx body is hashed and written to the file; any other (an API error's
 * JSON) is collected in x->body, bounded, for the error. No Lua runs here. */
static size_t on_chunk(char *p, size_t size, size_t n, void *ud) {
  wx_download *d = (wx_download *)ud;
  size_t len = size * n;
  if (d->status == 0) curl_easy_getinfo(d->x->easy, CURLINFO_RESPONSE_CODE, &d->status);
  if (d->status < 200 || d->status > 299)
    return wx_buf_append(&d->x->body, p, len) == len ? len : 0;
  if (d->max > 0 && (curl_off_t)len > d->max - d->bytes) { d->write_failed = -2; return 0; }
  if (EVP_DigestUpdate(d->md, p, len) != 1) { d->write_failed = -1; return 0; }
  if (len > 0 && fwrite(p, 1, len, d->fp) != len) { d->write_failed = errno ? errno : EIO; return 0; }
  d->bytes += (curl_off_t)len;
  return len;
}

/* Creates `path` (it must not exist: O_EXCL, mode 0600) for writing; NULL on failure. */
static FILE *create_file(const char *path) {
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
  FILE *fp;
  if (fd < 0) return NULL;
  if ((fp = fdopen(fd, "wb")) == NULL) { close(fd); unlink(path); }
  return fp;
}

static int download_fail(lua_State *L, const char *kind, const char *message) {
  lua_pushnil(L);
  lua_createtable(L, 0, 3);
  lua_pushstring(L, kind);
  lua_setfield(L, -2, "kind");
  lua_pushstring(L, message);
  lua_setfield(L, -2, "message");
  lua_pushboolean(L, 1);
  lua_setfield(L, -2, "connected");
  return 2;
}

/*** session:download{ method = "GET", url, headers, timeout?, connect_timeout?, path,
 *   hash = "sha1"|"sha256", max_bytes? } -> { status, headers, body (error answers only),
 *   bytes, hash (lower-case hex) } | nil, err. The file at `path` is created (never
 *   replaced) and filled only by a 2xx answer; the caller removes it on any failure. */
static int l_http_download(lua_State *L) {
  wx_http *h = check_http(L);
  const char *fn = "wxpay.core.http_download", *path, *hash;
  const EVP_MD *type;
  lua_Integer max = 0;
  wx_download d;
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int dlen = 0;
  char hex[2 * EVP_MAX_MD_SIZE + 1];
  CURLcode rc;
  int n, closed;
  luaL_checktype(L, 2, LUA_TTABLE);
  path = wx_opt_string(L, 2, "path", fn);
  hash = wx_opt_string(L, 2, "hash", fn);
  if (path == NULL) return luaL_error(L, "%s: 'path' is required", fn);
  if (hash == NULL || strcmp(hash, "sha1") == 0) type = EVP_sha1();
  else if (strcmp(hash, "sha256") == 0) type = EVP_sha256();
  else return luaL_error(L, "%s: 'hash' must be \"sha1\" or \"sha256\"", fn);
  lua_getfield(L, 2, "max_bytes");
  if (!lua_isnil(L, -1)) max = luaL_checkinteger(L, -1);
  lua_pop(L, 1);
  wx_xfer_prepare(L, 2, &h->x, fn); /* the last call that may raise */

  memset(&d, 0, sizeof d);
  d.x = &h->x;
  d.max = (curl_off_t)(max > 0 ? max : 0);
  if ((d.md = EVP_MD_CTX_new()) == NULL || EVP_DigestInit_ex(d.md, type, NULL) != 1) {
    EVP_MD_CTX_free(d.md);
    wx_xfer_finish(&h->x);
    return download_fail(L, "network", "download not started: digest unavailable");
  }
  if ((d.fp = create_file(path)) == NULL) {
    char msg[256];
    snprintf(msg, sizeof msg, "download not started: cannot create the file: %s", strerror(errno));
    EVP_MD_CTX_free(d.md);
    wx_xfer_finish(&h->x);
    return download_fail(L, "io", msg);
  }
  curl_easy_setopt(h->x.easy, CURLOPT_WRITEFUNCTION, on_chunk);
  curl_easy_setopt(h->x.easy, CURLOPT_WRITEDATA, &d);
  curl_easy_setopt(h->x.easy, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)(max > 0 ? max : 0));
  rc = curl_easy_perform(h->x.easy);
  h->requests++;
  wx_xfer_sink_reset(&h->x);
  closed = fclose(d.fp) == 0;
  if (EVP_DigestFinal_ex(d.md, digest, &dlen) != 1) d.write_failed = -1;
  EVP_MD_CTX_free(d.md);
  if (d.write_failed || (rc == CURLE_OK && !closed)) {
    wx_xfer_finish(&h->x);
    h->x.body.len = 0;
    if (d.write_failed == -2) return download_fail(L, "network", "response too large");
    return download_fail(L, "io", d.write_failed > 0 ? strerror(d.write_failed)
                                  : "writing the downloaded file failed");
  }
  n = wx_xfer_push(L, &h->x, rc, &h->connects);
  if (n != 1) return n;
  wx_hex_encode(digest, dlen, hex, 0);
  lua_pushlstring(L, hex, 2 * (size_t)dlen);
  lua_setfield(L, -2, "hash");
  lua_pushinteger(L, (lua_Integer)d.bytes);
  lua_setfield(L, -2, "bytes");
  return 1;
}

static int l_http_stats(lua_State *L) {
  wx_http *h = check_http(L);
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, h->requests);
  lua_setfield(L, -2, "requests");
  lua_pushinteger(L, h->connects);
  lua_setfield(L, -2, "connects");
  return 1;
}

static int l_http_close(lua_State *L) {
  wx_http *h = (wx_http *)luaL_checkudata(L, 1, WX_HTTP);
  wx_xfer_free(&h->x);
  return 0;
}

static int l_http_tostring(lua_State *L) {
  wx_http *h = (wx_http *)luaL_checkudata(L, 1, WX_HTTP);
  if (h->x.easy == NULL) lua_pushliteral(L, WX_HTTP " (closed)");
  else lua_pushfstring(L, WX_HTTP " (%d requests)", (int)h->requests);
  return 1;
}

void wx_open_http(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"request", l_http_request}, {"stats", l_http_stats}, {"close", l_http_close},
    {"download", l_http_download}, {NULL, NULL}};
  wx_new_class(L, WX_HTTP, methods, l_http_close, l_http_tostring);
  lua_pushcfunction(L, l_http_session);
  lua_setfield(L, -2, "http_session");
}
