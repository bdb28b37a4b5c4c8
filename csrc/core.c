/* luaopen_wxpay_core: registers the C core. The rest of the core is in pkey.c (keys,
 * signatures, OAEP), auth.c (the Authorization header), crypto.c (base64, digests, nonces,
 * AES-GCM), http.c (the libcurl session), xfer.c (one libcurl transfer), multi.c
 * (concurrent transfers) and util.c (shared helpers). */
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>

#include <curl/curl.h>
#include <openssl/crypto.h>
#include <openssl/opensslv.h>

#include "wxpay.h"

#define WXPAY_CORE_VERSION "0.1.0"

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int init_ok;

static void global_init(void) {
  init_ok = OPENSSL_init_crypto(0, NULL) == 1 && curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
}

int wx_global_init(void) {
  pthread_once(&init_once, global_init);
  return init_ok;
}

static int l_versions(lua_State *L) {
  curl_version_info_data *cv = curl_version_info(CURLVERSION_NOW);
  lua_createtable(L, 0, 6);
  lua_pushliteral(L, WXPAY_CORE_VERSION);
  lua_setfield(L, -2, "wxpay_core");
#ifdef LUAJIT_VERSION
  lua_pushliteral(L, LUAJIT_VERSION);
#else
  lua_pushliteral(L, LUA_RELEASE);
#endif
  lua_setfield(L, -2, "lua");
  lua_pushliteral(L, OPENSSL_VERSION_TEXT);
  lua_setfield(L, -2, "openssl_build");
  lua_pushstring(L, OpenSSL_version(OPENSSL_VERSION));
  lua_setfield(L, -2, "openssl");
  lua_pushliteral(L, LIBCURL_VERSION);
  lua_setfield(L, -2, "libcurl_build");
  lua_pushstring(L, cv->version);
  lua_setfield(L, -2, "libcurl");
  lua_pushstring(L, cv->ssl_version ? cv->ssl_version : "");
  lua_setfield(L, -2, "libcurl_ssl");
  return 1;
}

static int l_time(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)time(NULL));
  return 1;
}

static int l_monotonic(lua_State *L) {
  lua_pushnumber(L, (lua_Number)wx_monotonic());
  return 1;
}

static int l_sleep(lua_State *L) {
  lua_Number s = luaL_checknumber(L, 1);
  struct timespec ts;
  if (!(s > 0)) return 0;
  if (s > 86400) s = 86400;
  ts.tv_sec = (time_t)s;
  ts.tv_nsec = (long)((s - (lua_Number)ts.tv_sec) * 1e9);
  while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {}
  return 0;
}

static int l_uname(lua_State *L) {
  struct utsname u;
  if (uname(&u) != 0) {
    lua_pushliteral(L, "unknown");
    lua_pushliteral(L, "unknown");
    return 2;
  }
  lua_pushstring(L, u.sysname);
  lua_pushstring(L, u.release);
  return 2;
}

__attribute__((visibility("default"))) int luaopen_wxpay_core(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"versions", l_versions}, {"time", l_time}, {"monotonic", l_monotonic},
    {"sleep", l_sleep}, {"uname", l_uname}, {NULL, NULL}};
  if (!wx_global_init()) return luaL_error(L, "wxpay.core: OpenSSL or libcurl failed to initialise");
  wx_newlib(L, funcs);
  wx_open_crypto(L);
  wx_open_pkey(L);
  wx_open_auth(L);
  wx_open_http(L);
  wx_open_multi(L);
  wx_open_signal(L);
  lua_pushliteral(L, WXPAY_CORE_VERSION);
  lua_setfield(L, -2, "_VERSION");
  return 1;
}
