/* core.trap_signal("TERM"): a SIGTERM stops the running Lua code the way the standalone
 * interpreter stops it on Ctrl-C (lua.c's laction/lstop). The handler only arms a hook;
 * the hook raises "terminated!" at the next Lua call, return or instruction count, so the
 * program's pcall-based cleanup runs (the campaign runner records what was in flight and
 * exits 143). The handler then falls back to the default action, so a second SIGTERM
 * ends the process at once.
 *
 * The state the handler arms is the one mutable global of the core: a signal handler can
 * reach nothing else. Only the main program (the `wxpay` command) calls this, once. */
#include <signal.h>
#include <string.h>

#include "wxpay.h"

static lua_State *volatile trapped; /* the state the next SIGTERM interrupts */

static void on_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  luaL_error(L, "terminated!");
}

static void on_signal(int sig) {
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigaction(sig, &dfl, NULL);
  if (trapped) lua_sethook(trapped, on_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

static int l_trap_signal(lua_State *L) {
  struct sigaction sa;
  const char *name = luaL_checkstring(L, 1);
  luaL_argcheck(L, strcmp(name, "TERM") == 0, 1, "only \"TERM\" can be trapped");
  trapped = L;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGTERM, &sa, NULL) != 0) return wx_fail(L, "trap_signal", "sigaction failed");
  lua_pushboolean(L, 1);
  return 1;
}

void wx_open_signal(lua_State *L) {
  lua_pushcfunction(L, l_trap_signal);
  lua_setfield(L, -2, "trap_signal");
}
