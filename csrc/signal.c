/* core.trap_signal("TERM"): a SIGTERM stops the running Lua code the way the standalone
 * interpreter stops it on Ctrl-C (lua.c's laction/lstop). The handler only arms a hook;
 * the hook raises "terminated!" at the next Lua call, return or instruction count, so the
 * program's pcall-based cleanup runs (the campaign runner records what was in flight and
 * exits 143). The handler then falls back to the default action, so a second SIGTERM
 * ends the process at once.
 *
 * That error is raised once, wherever the hook fires: a pcall there (a library's own
 * guarded call) swallows it. So the handler also sets a flag that stays set, which
 * core.signal_pending() reads: the program checks it between tasks and at the end.
 *
 * The state the handler arms and the flag are the mutable globals of the core: a signal
 * handler can reach nothing else. Only the main program (the `wxpay` command) calls this,
 * once. A sentinel in the registry forgets the state when it closes (os.exit(status,
 * true)), so a late SIGTERM never touches freed memory. */
#include <signal.h>
#include <string.h>

#include "wxpay.h"

static lua_State *volatile trapped; /* the state the next SIGTERM interrupts */
static volatile sig_atomic_t pending; /* a trapped SIGTERM arrived */

static const char SENTINEL_KEY[] = "wxpay.core.signal_sentinel";

static void on_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  luaL_error(L, "terminated!");
}

static void default_action(int sig) {
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigaction(sig, &dfl, NULL);
}

static void on_signal(int sig) {
  pending = 1;
  default_action(sig);
  if (trapped) lua_sethook(trapped, on_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

/* The state is closing: the default action first, so no handler runs with a stale state. */
static int sentinel_gc(lua_State *L) {
  (void)L;
  default_action(SIGTERM);
  trapped = NULL;
  return 0;
}

static void keep_sentinel(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, SENTINEL_KEY);
  if (!lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  lua_newuserdata(L, 1);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, sentinel_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, SENTINEL_KEY);
}

static int l_trap_signal(lua_State *L) {
  struct sigaction sa;
  const char *name = luaL_checkstring(L, 1);
  luaL_argcheck(L, strcmp(name, "TERM") == 0, 1, "only \"TERM\" can be trapped");
  keep_sentinel(L); /* before the handler: a memory error here leaves nothing armed */
  trapped = L;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGTERM, &sa, NULL) != 0) return wx_fail(L, "trap_signal", "sigaction failed");
  lua_pushboolean(L, 1);
  return 1;
}

static int l_signal_pending(lua_State *L) {
  lua_pushboolean(L, pending != 0);
  return 1;
}

void wx_open_signal(lua_State *L) {
  lua_pushcfunction(L, l_trap_signal);
  lua_setfield(L, -2, "trap_signal");
  lua_pushcfunction(L, l_signal_pending);
  lua_setfield(L, -2, "signal_pending");
}
