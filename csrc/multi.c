/* The multi interface: many transfers in flight on one thread, driven from Lua.
 * `:add` starts a transfer, `:perform` runs libcurl and waits (curl_multi_poll, no busy
 * waiting) until at least one transfer has finished or the timeout passes, then hands the
 * finished ones back. Connections are kept in the multi handle's cache and reused by later
 * transfers; TLS sessions and DNS answers are shared through a share handle. As with the
 * session, callbacks only append to C buffers (http.c) and no Lua runs inside libcurl. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "wxpay.h"

#define DEFAULT_MAX_BODY (16L * 1024 * 1024)
#define DEFAULT_MAX_CONNECTIONS 64

typedef struct wx_mxfer {
  wx_xfer x;
  lua_Integer id;
  CURLcode rc;
  struct wx_mxfer *next;
} wx_mxfer;

typedef struct {
  CURLM *multi;
  CURLSH *share;
  wx_mxfer *active; /* added to the multi handle, running */
  wx_mxfer *done;   /* finished, not yet handed to Lua */
  wx_mxfer *idle;   /* finished and handed over: easy handles kept for reuse */
  char *ca_file, *proxy;
  long max_body;
  lua_Integer next_id, requests, connects, npending;
} wx_multi;

static void list_push(wx_mxfer **head, wx_mxfer *t) {
  t->next = *head;
  *head = t;
}

static int list_remove(wx_mxfer **head, wx_mxfer *t) {
  for (; *head; head = &(*head)->next) {
    if (*head == t) { *head = t->next; t->next = NULL; return 1; }
  }
  return 0;
}

static void free_list(wx_mxfer **head) {
  while (*head) {
    wx_mxfer *t = *head;
    *head = t->next;
    wx_xfer_free(&t->x);
    free(t);
  }
}

static char *dup_opt(const char *s) {
  char *d;
  size_t n;
  if (s == NULL) return NULL;
  n = strlen(s) + 1;
  if ((d = (char *)malloc(n)) != NULL) memcpy(d, s, n);
  return d;
}

/* One idempotent release, used by close, __close and __gc. Easy handles leave the multi
 * handle and die before the share handle they use. */
static void multi_release(wx_multi *m) {
  wx_mxfer *t;
  for (t = m->active; t; t = t->next) {
    if (m->multi) curl_multi_remove_handle(m->multi, t->x.easy);
  }
  free_list(&m->active);
  free_list(&m->done);
  free_list(&m->idle);
  if (m->multi) { curl_multi_cleanup(m->multi); m->multi = NULL; }
  if (m->share) { curl_share_cleanup(m->share); m->share = NULL; }
  free(m->ca_file);
  free(m->proxy);
  m->ca_file = m->proxy = NULL;
  m->npending = 0;
}

static wx_multi *check_multi(lua_State *L) {
  wx_multi *m = (wx_multi *)luaL_checkudata(L, 1, WX_MULTI);
  if (m->multi == NULL) luaL_error(L, "wxpay.core: attempt to use a closed http multi");
  return m;
}

static const char *opt_string(lua_State *L, int t, const char *k) {
  const char *s;
  lua_getfield(L, t, k);
  if (lua_isnil(L, -1)) { lua_pop(L, 1); return NULL; }
  if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "wxpay.core.http_multi: '%s' must be a string", k);
  s = lua_tostring(L, -1);
  lua_pop(L, 1); /* still referenced by the table */
  return s;
}

static lua_Integer opt_int(lua_State *L, int t, const char *k, lua_Integer dflt) {
  lua_Integer v = dflt;
  lua_getfield(L, t, k);
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TNUMBER) luaL_error(L, "wxpay.core.http_multi: '%s' must be a number", k);
    v = lua_tointeger(L, -1);
  }
  lua_pop(L, 1);
  return v;
}

/*** core.http_multi{ ca_file=, proxy=, max_connections=, max_body= } */
static int l_http_multi(lua_State *L) {
  const char *ca_file = NULL, *proxy = NULL;
  lua_Integer max_conn = DEFAULT_MAX_CONNECTIONS, max_body = DEFAULT_MAX_BODY;
  wx_multi *m;
  if (!lua_isnoneornil(L, 1)) {
    luaL_checktype(L, 1, LUA_TTABLE);
    ca_file = opt_string(L, 1, "ca_file");
    proxy = opt_string(L, 1, "proxy");
    max_conn = opt_int(L, 1, "max_connections", max_conn);
    max_body = opt_int(L, 1, "max_body", max_body);
    luaL_argcheck(L, max_conn >= 1 && max_conn <= 10000, 1, "max_connections must be 1..10000");
    luaL_argcheck(L, max_body > 0 && max_body <= LONG_MAX, 1, "max_body must be positive");
  }
  /* Created closed, then filled: __gc is safe whatever fails below. */
  m = (wx_multi *)lua_newuserdata(L, sizeof *m);
  memset(m, 0, sizeof *m);
  luaL_getmetatable(L, WX_MULTI);
  lua_setmetatable(L, -2);
  m->max_body = (long)max_body;
  if ((ca_file && (m->ca_file = dup_opt(ca_file)) == NULL) || (proxy && (m->proxy = dup_opt(proxy)) == NULL))
    goto fail;
  if ((m->share = curl_share_init()) == NULL) goto fail;
  curl_share_setopt(m->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
  curl_share_setopt(m->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
  if ((m->multi = curl_multi_init()) == NULL) goto fail;
  /* Transfers beyond the limit wait inside libcurl for a free connection. */
  curl_multi_setopt(m->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)max_conn);
  curl_multi_setopt(m->multi, CURLMOPT_MAXCONNECTS, (long)max_conn);
  return 1;
fail:
  multi_release(m);
  return luaL_error(L, "wxpay.core.http_multi: out of memory or libcurl failed to initialise");
}

/*** multi:add(req) -> id (req as for session:request) */
static int l_multi_add(lua_State *L) {
  wx_multi *m = check_multi(L);
  wx_mxfer *t = m->idle;
  CURLMcode mc;
  luaL_checktype(L, 2, LUA_TTABLE);
  if (t != NULL) {
    m->idle = t->next;
  } else {
    if ((t = (wx_mxfer *)calloc(1, sizeof *t)) == NULL) return luaL_error(L, "wxpay.core.http_multi: out of memory");
    if (!wx_xfer_init(&t->x, m->max_body, m->ca_file, m->proxy)) {
      free(t);
      return luaL_error(L, "wxpay.core.http_multi: curl_easy_init failed");
    }
    curl_easy_setopt(t->x.easy, CURLOPT_SHARE, m->share);
    curl_easy_setopt(t->x.easy, CURLOPT_PRIVATE, (void *)t);
  }
  t->next = NULL;
  /* Owned by the multi (idle list) while prepare may raise. */
  list_push(&m->idle, t);
  wx_xfer_prepare(L, 2, &t->x, "wxpay.core.http_multi");
  list_remove(&m->idle, t);
  if ((mc = curl_multi_add_handle(m->multi, t->x.easy)) != CURLM_OK) {
    wx_xfer_finish(&t->x);
    list_push(&m->idle, t);
    lua_pushnil(L);
    lua_pushfstring(L, "wxpay.core.http_multi: %s", curl_multi_strerror(mc));
    return 2;
  }
  t->id = ++m->next_id;
  t->rc = CURLE_OK;
  list_push(&m->active, t);
  m->npending++;
  lua_pushinteger(L, t->id);
  return 1;
}

/* Move finished transfers from active to done. Returns how many. */
static int collect(wx_multi *m) {
  CURLMsg *msg;
  int left, n = 0;
  while ((msg = curl_multi_info_read(m->multi, &left)) != NULL) {
    char *priv = NULL;
    wx_mxfer *t;
    if (msg->msg != CURLMSG_DONE) continue;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
    t = (wx_mxfer *)priv;
    if (t == NULL || !list_remove(&m->active, t)) continue;
    t->rc = msg->data.result;
    curl_multi_remove_handle(m->multi, t->x.easy);
    list_push(&m->done, t);
    m->npending--;
    n++;
  }
  return n;
}

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/*** multi:perform(timeout_seconds?) -> { { id =, resp =, err = }, … } */
static int l_multi_perform(lua_State *L) {
  wx_multi *m = check_multi(L);
  lua_Number timeout = luaL_optnumber(L, 2, 0);
  double deadline;
  int running = 0, i = 0;
  CURLMcode mc;
  luaL_argcheck(L, timeout >= 0 && timeout <= 86400, 2, "timeout must be 0..86400 seconds");
  deadline = now_seconds() + timeout;
  for (;;) {
    double left;
    mc = curl_multi_perform(m->multi, &running);
    if (mc != CURLM_OK) return luaL_error(L, "wxpay.core.http_multi: %s", curl_multi_strerror(mc));
    if (collect(m) > 0 || m->done) break;
    left = deadline - now_seconds();
    if (left <= 0) break;
    /* Sleeps in poll(2) until a socket is ready, libcurl's next timer, or the timeout; with
     * no transfers at all it simply waits, which makes this the scheduler's sleep too. */
    mc = curl_multi_poll(m->multi, NULL, 0, left * 1000 > INT_MAX ? INT_MAX : (int)(left * 1000) + 1, NULL);
    if (mc != CURLM_OK) return luaL_error(L, "wxpay.core.http_multi: %s", curl_multi_strerror(mc));
  }
  lua_newtable(L);
  /* Each transfer leaves `done` only once its result is in the Lua table, so a memory
   * error while building results loses nothing the multi does not still own. */
  while (m->done) {
    wx_mxfer *t = m->done;
    int nres;
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, t->id);
    lua_setfield(L, -2, "id");
    nres = wx_xfer_push(L, &t->x, t->rc, &m->connects);
    if (nres == 2) {
      lua_setfield(L, -3, "err");
      lua_pop(L, 1); /* nil */
    } else {
      lua_setfield(L, -2, "resp");
    }
    lua_rawseti(L, -2, ++i);
    m->requests++;
    m->done = t->next;
    t->next = NULL;
    list_push(&m->idle, t);
  }
  return 1;
}

/*** multi:cancel(id) -> true if the transfer was still pending */
static int l_multi_cancel(lua_State *L) {
  wx_multi *m = check_multi(L);
  lua_Integer id = luaL_checkinteger(L, 2);
  wx_mxfer *t;
  for (t = m->active; t; t = t->next) {
    if (t->id == id) break;
  }
  if (t == NULL) {
    /* finished but not yet handed over: drop its result */
    for (t = m->done; t; t = t->next) {
      if (t->id == id) break;
    }
    if (t == NULL) { lua_pushboolean(L, 0); return 1; }
    list_remove(&m->done, t);
  } else {
    list_remove(&m->active, t);
    curl_multi_remove_handle(m->multi, t->x.easy);
    m->npending--;
  }
  wx_xfer_finish(&t->x);
  list_push(&m->idle, t);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_multi_pending(lua_State *L) {
  wx_multi *m = check_multi(L);
  lua_pushinteger(L, m->npending);
  return 1;
}

static int l_multi_stats(lua_State *L) {
  wx_multi *m = check_multi(L);
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, m->requests);
  lua_setfield(L, -2, "requests");
  lua_pushinteger(L, m->connects);
  lua_setfield(L, -2, "connects");
  lua_pushinteger(L, m->npending);
  lua_setfield(L, -2, "pending");
  return 1;
}

static int l_multi_close(lua_State *L) {
  multi_release((wx_multi *)luaL_checkudata(L, 1, WX_MULTI));
  return 0;
}

static int l_multi_tostring(lua_State *L) {
  wx_multi *m = (wx_multi *)luaL_checkudata(L, 1, WX_MULTI);
  if (m->multi == NULL) lua_pushliteral(L, WX_MULTI " (closed)");
  else lua_pushfstring(L, WX_MULTI " (%d pending, %d requests)", (int)m->npending, (int)m->requests);
  return 1;
}

void wx_open_multi(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"add", l_multi_add}, {"perform", l_multi_perform}, {"cancel", l_multi_cancel},
    {"pending", l_multi_pending}, {"stats", l_multi_stats}, {"close", l_multi_close},
    {NULL, NULL}};
  luaL_newmetatable(L, WX_MULTI);
  wx_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_multi_close);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, l_multi_close);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, l_multi_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushliteral(L, "locked");
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);
  lua_pushcfunction(L, l_http_multi);
  lua_setfield(L, -2, "http_multi");
}
