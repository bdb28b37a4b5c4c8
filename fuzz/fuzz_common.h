/* Shared by the libFuzzer targets: a Lua state with wxpay.core loaded, and a helper that
 * calls core.<fn>(input) and checks only that it returns (no crash, no sanitizer report). */
#include <stddef.h>
#include <stdint.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

int luaopen_wxpay_core(lua_State *L);

static lua_State *fuzz_state(void) {
  static lua_State *L;
  if (L == NULL) {
    L = luaL_newstate();
    luaL_openlibs(L);
    lua_pushcfunction(L, luaopen_wxpay_core);
    lua_call(L, 0, 1);
    lua_setglobal(L, "core");
  }
  return L;
}

/* Runs a Lua snippet with the input as `...`; a Lua error is a finding (the core must
 * return nil, err or false for bad data, never raise). */
static void fuzz_run(const char *code, const uint8_t *data, size_t size) {
  lua_State *L = fuzz_state();
  if (luaL_loadstring(L, code) != 0) __builtin_trap();
  lua_pushlstring(L, (const char *)data, size);
  if (lua_pcall(L, 1, 0, 0) != 0) __builtin_trap();
  lua_gc(L, LUA_GCCOLLECT, 0);
}
