/* Helpers every file of the C core shares: errors, scratch memory, class registration,
 * option reading, hex encoding and the monotonic clock (as Lua-cURLv3's lcutils.c). */
#include <time.h>

#include <openssl/err.h>

#include "wxpay.h"

int wx_fail(lua_State *L, const char *fn, const char *reason) {
  unsigned long e = ERR_peek_last_error();
  char buf[256];
  lua_pushnil(L);
  if (e != 0) {
    ERR_error_string_n(e, buf, sizeof buf);
    lua_pushfstring(L, "wxpay.core.%s: %s (%s)", fn, reason, buf);
  } else {
    lua_pushfstring(L, "wxpay.core.%s: %s", fn, reason);
  }
  ERR_clear_error();
  return 2;
}

unsigned char *wx_scratch(lua_State *L, size_t n) {
  return (unsigned char *)lua_newuserdata(L, n ? n : 1);
}

void wx_new_class(lua_State *L, const char *tname, const luaL_Reg *methods,
                  lua_CFunction close, lua_CFunction tostr) {
  luaL_newmetatable(L, tname);
  wx_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, close);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, close);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, tostr);
  lua_setfield(L, -2, "__tostring");
  lua_pushliteral(L, "locked");
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);
}

const char *wx_opt_string(lua_State *L, int t, const char *k, const char *fn) {
  const char *s;
  lua_getfield(L, t, k);
  if (lua_isnil(L, -1)) { lua_pop(L, 1); return NULL; }
  if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "%s: '%s' must be a string", fn, k);
  s = lua_tostring(L, -1);
  lua_pop(L, 1); /* still referenced by the table */
  return s;
}

void wx_hex_encode(const unsigned char *in, size_t n, char *out, int upper) {
  const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
  size_t i;
  for (i = 0; i < n; i++) {
    out[2 * i] = digits[in[i] >> 4];
    out[2 * i + 1] = digits[in[i] & 15];
  }
}

double wx_monotonic(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}
