/* The HTTP session: one libcurl easy handle per client, so connections are kept alive and
 * reused. The transfer itself (options, request, response) is in xfer.c. */
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

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
    {"request", l_http_request}, {"stats", l_http_stats}, {"close", l_http_close}, {NULL, NULL}};
  wx_new_class(L, WX_HTTP, methods, l_http_close, l_http_tostring);
  lua_pushcfunction(L, l_http_session);
  lua_setfield(L, -2, "http_session");
}
