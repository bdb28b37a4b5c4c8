/* One libcurl transfer, shared by the session (http.c) and the multi (multi.c): its
 * options, the request read from Lua, the response buffers and the header parser.
 * Callbacks only append to C buffers; Lua sees the response after the transfer. */
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "wxpay.h"

static size_t buf_append(wx_buf *b, const char *p, size_t n) {
  if (n > b->limit - b->len) { b->overflow = 1; return 0; }
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    char *d;
    while (cap < b->len + n) cap *= 2;
    if ((d = (char *)realloc(b->data, cap)) == NULL) { b->overflow = 1; return 0; }
    b->data = d;
    b->cap = cap;
  }
  memcpy(b->data + b->len, p, n);
  b->len += n;
  return n;
}

static void buf_free(wx_buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

/* Body and header callbacks: append only (no Lua runs inside libcurl). */
static size_t on_data(char *p, size_t size, size_t n, void *ud) {
  wx_buf *b = (wx_buf *)ud;
  return buf_append(b, p, size * n) == size * n ? size * n : 0;
}

size_t wx_buf_append(wx_buf *b, const char *p, size_t n) {
  return buf_append(b, p, n);
}

/* Back to collecting the body in x->body (after a download streamed it elsewhere). */
void wx_xfer_sink_reset(wx_xfer *x) {
  curl_easy_setopt(x->easy, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(x->easy, CURLOPT_WRITEDATA, &x->body);
  curl_easy_setopt(x->easy, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)x->body.limit);
}

/* ---- header block parsing (pure C, fuzzed on its own) ---- */

static int is_tchar(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

int wx_parse_headers(const char *buf, size_t len, wx_header_cb cb, void *ud) {
  size_t pos = 0, start = 0, count = 0;
  /* Only the last response counts (after 100 Continue or a proxy's 200): find its status line. */
  while (pos < len) {
    const char *nl = (const char *)memchr(buf + pos, '\n', len - pos);
    size_t end = nl ? (size_t)(nl - buf) : len;
    if (end - pos >= 5 && memcmp(buf + pos, "HTTP/", 5) == 0) start = end + (nl != NULL);
    pos = end + (nl != NULL);
  }
  pos = start;
  while (pos < len) {
    const char *line = buf + pos, *colon, *v;
    const char *nl = (const char *)memchr(line, '\n', len - pos);
    size_t llen = nl ? (size_t)(nl - line) : len - pos, nlen, vlen, i;
    pos += llen + (nl != NULL);
    if (llen > 0 && line[llen - 1] == '\r') llen--;
    if (llen == 0 || line[0] == ' ' || line[0] == '\t') continue; /* blank or obsolete fold */
    colon = (const char *)memchr(line, ':', llen);
    if (colon == NULL || colon == line) continue;
    nlen = (size_t)(colon - line);
    for (i = 0; i < nlen && is_tchar((unsigned char)line[i]); i++) {}
    if (i != nlen) continue;
    v = colon + 1;
    vlen = llen - nlen - 1;
    while (vlen > 0 && (*v == ' ' || *v == '\t')) { v++; vlen--; }
    while (vlen > 0 && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t')) vlen--;
    cb(ud, line, nlen, v, vlen);
    count++;
  }
  return (int)count;
}

static void push_header(void *ud, const char *name, size_t nlen, const char *value, size_t vlen) {
  lua_State *L = (lua_State *)ud;
  size_t i;
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (i = 0; i < nlen; i++) {
    char c = name[i];
    luaL_addchar(&b, (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c);
  }
  luaL_pushresult(&b);        /* t name */
  lua_pushvalue(L, -1);
  lua_rawget(L, -3);          /* t name old */
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_pushlstring(L, value, vlen);
  } else {                    /* repeated header: join as HTTP allows */
    lua_pushliteral(L, ", ");
    lua_pushlstring(L, value, vlen);
    lua_concat(L, 3);
  }
  lua_rawset(L, -3);
}

/* ---- one transfer: options, request, response ---- */

int wx_xfer_init(wx_xfer *x, long max_body, const char *ca_file, const char *proxy) {
  CURL *e;
  memset(x, 0, sizeof *x);
  x->body.limit = (size_t)max_body;
  x->headers.limit = WX_MAX_HEADER_BYTES;
  if ((e = x->easy = curl_easy_init()) == NULL) return 0;
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &x->body);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_data);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, &x->headers);
  curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)max_body);
  /* TLS verification is never optional for payment traffic. */
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
#if LIBCURL_VERSION_NUM >= 0x075500
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https");
#else
  curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)CURLPROTO_HTTPS);
#endif
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  /* The caller signed the path it gave us: send it byte for byte, without libcurl's
   * resolving of "." and ".." segments (the session and the multi both start here). */
  curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  if (ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, ca_file);
  if (proxy) curl_easy_setopt(e, CURLOPT_PROXY, proxy);
  return 1;
}

void wx_xfer_finish(wx_xfer *x) {
  if (x->easy) {
    curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(x->easy, CURLOPT_POSTFIELDS, NULL); /* frees libcurl's body copy */
  }
  curl_slist_free_all(x->hdrs);
  x->hdrs = NULL;
}

void wx_xfer_free(wx_xfer *x) {
  wx_xfer_finish(x);
  if (x->easy) { curl_easy_cleanup(x->easy); x->easy = NULL; }
  buf_free(&x->body);
  buf_free(&x->headers);
}

static long opt_ms(lua_State *L, int t, const char *k, long dflt, const char *fn) {
  lua_Number n;
  lua_getfield(L, t, k);
  if (lua_isnil(L, -1)) { lua_pop(L, 1); return dflt; }
  if (lua_type(L, -1) != LUA_TNUMBER) luaL_error(L, "%s: '%s' must be a number", fn, k);
  n = lua_tonumber(L, -1);
  lua_pop(L, 1);
  if (!(n > 0) || n > 86400) luaL_error(L, "%s: '%s' must be 0 < seconds <= 86400", fn, k);
  n *= 1000;
  return n < 1 ? 1 : (long)n;
}

/* The method goes to CURLOPT_CUSTOMREQUEST verbatim, into the request line: only an
 * upper-case token (RFC 9110 tchars A-Z, 0-9, '-', '_'; 1..20 of them) may pass, so no CR,
 * LF, NUL or space can split the request or add a header. Misuse by the caller: raises. */
static const char *check_method(lua_State *L, int t, const char *fn) {
  const char *m;
  size_t len, i;
  lua_getfield(L, t, "method");
  if (lua_type(L, -1) != LUA_TSTRING) {
    if (lua_isnil(L, -1)) luaL_error(L, "%s: 'method' and 'url' are required", fn);
    luaL_error(L, "%s: 'method' must be a string", fn);
  }
  m = lua_tolstring(L, -1, &len);
  lua_pop(L, 1); /* still referenced by the table */
  for (i = 0; i < len; i++) {
    char c = m[i];
    if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_')) break;
  }
  if (len == 0 || len > 20 || i != len)
    luaL_error(L, "%s: 'method' must be an upper-case token of 1-20 characters A-Z, 0-9, '-', '_'", fn);
  return m;
}

/* The request's header list from t.headers, plus "Expect:". Refuses CR, LF and NUL so no
 * caller can inject a header or a request; raises holding nothing. */
static struct curl_slist *read_headers(lua_State *L, int idx, const char *fn) {
  struct curl_slist *hdrs = NULL, *tmp;
  size_t nh, i;
  lua_getfield(L, idx, "headers");
  if (!lua_isnil(L, -1)) {
    if (!lua_istable(L, -1)) luaL_error(L, "%s: 'headers' must be a table", fn);
    nh = wx_rawlen(L, -1);
    for (i = 1; i <= nh; i++) {
      const char *line;
      size_t llen;
      lua_rawgeti(L, -1, (int)i);
      line = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &llen) : NULL;
      if (line == NULL || memchr(line, '\r', llen) || memchr(line, '\n', llen) || strlen(line) != llen) {
        curl_slist_free_all(hdrs);
        luaL_error(L, "%s: header %d must be a string without CR, LF or NUL", fn, (int)i);
      }
      tmp = curl_slist_append(hdrs, line);
      lua_pop(L, 1);
      if (tmp == NULL) { curl_slist_free_all(hdrs); luaL_error(L, "%s: out of memory", fn); }
      hdrs = tmp;
    }
  }
  lua_pop(L, 1);
  /* No 100-continue round trip: bodies are small and the server answers at once. */
  if ((tmp = curl_slist_append(hdrs, "Expect:")) == NULL) {
    curl_slist_free_all(hdrs);
    luaL_error(L, "%s: out of memory", fn);
  }
  hdrs = tmp;
  return hdrs;
}

/* idx must be a positive (absolute) stack index. */
void wx_xfer_prepare(lua_State *L, int idx, wx_xfer *x, const char *fn) {
  const char *method, *url, *body;
  size_t blen = 0;
  long timeout, ctimeout;
  int fresh;
  struct curl_slist *hdrs;
  CURL *e = x->easy;
  luaL_checktype(L, idx, LUA_TTABLE);
  /* Everything that can raise comes first, while nothing is held but the header list. */
  method = check_method(L, idx, fn);
  url = wx_opt_string(L, idx, "url", fn);
  if (method == NULL || url == NULL) luaL_error(L, "%s: 'method' and 'url' are required", fn);
  lua_getfield(L, idx, "body");
  if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "%s: 'body' must be a string", fn);
  body = lua_isnil(L, -1) ? NULL : lua_tolstring(L, -1, &blen);
  lua_pop(L, 1); /* still referenced by the table */
  timeout = opt_ms(L, idx, "timeout", 10000, fn);
  ctimeout = opt_ms(L, idx, "connect_timeout", 5000, fn);
  /* A request that must reach the server at most once gets a connection of its own: on a
   * reused connection the server closed, libcurl would silently send it a second time. */
  lua_getfield(L, idx, "fresh_connect");
  fresh = lua_toboolean(L, -1);
  lua_pop(L, 1);

  hdrs = read_headers(L, idx, fn);

  /* From here on nothing raises. */
  wx_xfer_finish(x); /* a previous request's leftovers, if any */
  x->hdrs = hdrs;
  x->body.len = x->headers.len = 0;
  x->body.overflow = x->headers.overflow = 0;
  x->errbuf[0] = '\0';
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, ctimeout);
  curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, fresh ? 1L : 0L);
  curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, NULL);
  curl_easy_setopt(e, CURLOPT_HTTPGET, 1L); /* resets any previous POST state */
  if (strcmp(method, "HEAD") == 0) {
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else {
    curl_easy_setopt(e, CURLOPT_NOBODY, 0L);
    if (body != NULL || strcmp(method, "POST") == 0) {
      /* Copied: a multi transfer outlives the Lua call that started it. */
      curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
      curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, body ? body : "");
    }
    if (strcmp(method, "GET") != 0 && strcmp(method, "POST") != 0)
      curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  }
}

static void push_transfer_error(lua_State *L, wx_xfer *x, CURLcode rc) {
  curl_off_t pretransfer = 0;
  int connected;
  curl_easy_getinfo(x->easy, CURLINFO_PRETRANSFER_TIME_T, &pretransfer);
  /* Failures before the request could be sent are safe to send elsewhere (spec 8.4). */
  switch (rc) {
  case CURLE_COULDNT_RESOLVE_HOST: case CURLE_COULDNT_RESOLVE_PROXY:
  case CURLE_COULDNT_CONNECT: case CURLE_SSL_CONNECT_ERROR:
  case CURLE_PEER_FAILED_VERIFICATION: case CURLE_SSL_CACERT_BADFILE:
  case CURLE_UNSUPPORTED_PROTOCOL: case CURLE_URL_MALFORMAT:
    connected = 0; break;
  case CURLE_OPERATION_TIMEDOUT:
    connected = pretransfer > 0; break;
  default:
    connected = 1;
  }
  lua_pushnil(L);
  lua_createtable(L, 0, 4);
  lua_pushstring(L, rc == CURLE_OPERATION_TIMEDOUT ? "timeout" : "network");
  lua_setfield(L, -2, "kind");
  lua_pushinteger(L, (lua_Integer)rc);
  lua_setfield(L, -2, "code");
  if (x->body.overflow || x->headers.overflow) lua_pushliteral(L, "response too large");
  else lua_pushstring(L, x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc));
  lua_setfield(L, -2, "message");
  lua_pushboolean(L, connected);
  lua_setfield(L, -2, "connected");
}

int wx_xfer_push(lua_State *L, wx_xfer *x, CURLcode rc, lua_Integer *connects) {
  long status = 0, nconn = 0;
  double total = 0;
  curl_easy_getinfo(x->easy, CURLINFO_NUM_CONNECTS, &nconn);
  *connects += nconn;
  wx_xfer_finish(x);
  if (rc != CURLE_OK) {
    push_transfer_error(L, x, rc);
    return 2;
  }
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_getinfo(x->easy, CURLINFO_TOTAL_TIME, &total);
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, status);
  lua_setfield(L, -2, "status");
  lua_newtable(L);
  wx_parse_headers(x->headers.data ? x->headers.data : "", x->headers.len, push_header, L);
  lua_setfield(L, -2, "headers");
  lua_pushlstring(L, x->body.data ? x->body.data : "", x->body.len);
  lua_setfield(L, -2, "body");
  lua_pushinteger(L, nconn);
  lua_setfield(L, -2, "connects");
  lua_pushnumber(L, total);
  lua_setfield(L, -2, "time");
  /* Keep big buffers from pinning memory after a large response. */
  if (x->body.cap > 1024 * 1024) buf_free(&x->body);
  return 1;
}
