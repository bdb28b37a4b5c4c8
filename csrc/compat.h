/* Lua 5.1 / LuaJIT / 5.2 / 5.3 / 5.4 compatibility: the one place version differences live. */
#ifndef WXPAY_COMPAT_H
#define WXPAY_COMPAT_H

#include <lua.h>
#include <lauxlib.h>
#if defined(__has_include)
#  if __has_include(<luajit.h>)
#    include <luajit.h> /* defines LUAJIT_VERSION */
#  endif
#endif

#if LUA_VERSION_NUM < 502
/* LuaJIT 2.1 provides luaL_setfuncs and luaL_testudata; plain Lua 5.1 does not. */
#  ifndef LUAJIT_VERSION
static inline void luaL_setfuncs(lua_State *L, const luaL_Reg *l, int nup) {
  luaL_checkstack(L, nup + 1, "too many upvalues");
  for (; l->name != NULL; l++) {
    int i;
    for (i = 0; i < nup; i++) lua_pushvalue(L, -nup);
    lua_pushcclosure(L, l->func, nup);
    lua_setfield(L, -(nup + 2), l->name);
  }
  lua_pop(L, nup);
}
static inline void *luaL_testudata(lua_State *L, int i, const char *tname) {
  void *p = lua_touserdata(L, i);
  if (p == NULL || !lua_getmetatable(L, i)) return NULL;
  luaL_getmetatable(L, tname);
  if (!lua_rawequal(L, -1, -2)) p = NULL;
  lua_pop(L, 2);
  return p;
}
#  endif
#  define wx_rawlen(L, i) lua_objlen(L, (i))
#else
#  define wx_rawlen(L, i) lua_rawlen(L, (i))
#endif

#define wx_newlib(L, l) (lua_newtable(L), luaL_setfuncs(L, (l), 0))

#endif
