/* The multi interface: many transfers in flight on one thread, driven from Lua.
 * `:add` starts a transfer, `:perform` runs libcurl and waits (poll(2), no busy waiting)
 * until at least one transfer has finished or the timeout passes, then hands the finished
 * ones back. Connections are kept in the multi handle's cache and reused by later
 * transfers; TLS sessions and DNS answers are shared through a share handle. As with the
 * session, callbacks only append to C buffers (xfer.c) and no Lua runs inside libcurl.
 *
 * libcurl is driven with curl_multi_socket_action: it tells us which sockets to watch and
 * when its next timer is due, and we tell it which sockets are ready. (curl_multi_perform
 * would look at every transfer on every call, polling each socket once: with 32 transfers
 * in flight that was ~34 poll(2) calls per request.) */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "wxpay.h"

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
  /* What libcurl asked us to watch (socket callback) and its next timer (timer callback). */
  struct pollfd *fds; /* 2 * capfds entries: the watched ones, then room for drive() */
  size_t nfds, capfds;
  double timer_due; /* monotonic seconds; < 0: no timer */
  int cb_failed;    /* the socket callback could not grow `fds` */
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

/* CURLMOPT_SOCKETFUNCTION: keep `fds` in step with what libcurl wants watched. */
static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
  wx_multi *m = (wx_multi *)userp;
  size_t i;
  short events = 0;
  (void)easy;
  (void)socketp;
  for (i = 0; i < m->nfds; i++) {
    if (m->fds[i].fd == (int)fd) break;
  }
  if (what == CURL_POLL_REMOVE) {
    if (i < m->nfds) m->fds[i] = m->fds[--m->nfds];
    return 0;
  }
  if (what & CURL_POLL_IN) events |= POLLIN;
  if (what & CURL_POLL_OUT) events |= POLLOUT;
  if (i == m->nfds) {
    if (m->nfds == m->capfds) {
      size_t cap = m->capfds ? m->capfds * 2 : 16;
      struct pollfd *grown = (struct pollfd *)malloc(2 * cap * sizeof *grown);
      if (grown == NULL) { m->cb_failed = 1; return -1; }
      if (m->capfds) {
        /* the second half too: drive() may be reading it while libcurl adds a socket */
        memcpy(grown, m->fds, m->nfds * sizeof *grown);
        memcpy(grown + cap, m->fds + m->capfds, m->capfds * sizeof *grown);
      }
      free(m->fds);
      m->fds = grown;
      m->capfds = cap;
    }
    m->fds[m->nfds++].fd = (int)fd;
  }
  m->fds[i].events = events;
  m->fds[i].revents = 0;
  return 0;
}

/* CURLMOPT_TIMERFUNCTION: remember when libcurl wants to be called back. */
static int on_timer(CURLM *multi, long timeout_ms, void *userp) {
  wx_multi *m = (wx_multi *)userp;
  (void)multi;
  m->timer_due = timeout_ms < 0 ? -1.0 : wx_monotonic() + (double)timeout_ms / 1000.0;
  return 0;
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
  free(m->fds); /* after the cleanup, which may still call on_socket */
  m->fds = NULL;
  m->nfds = m->capfds = 0;
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
  lua_Integer max_conn = DEFAULT_MAX_CONNECTIONS, max_body = WX_DEFAULT_MAX_BODY;
  wx_multi *m;
  if (!lua_isnoneornil(L, 1)) {
    luaL_checktype(L, 1, LUA_TTABLE);
    ca_file = wx_opt_string(L, 1, "ca_file", "wxpay.core.http_multi");
    proxy = wx_opt_string(L, 1, "proxy", "wxpay.core.http_multi");
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
  m->timer_due = -1.0;
  curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(m->multi, CURLMOPT_SOCKETDATA, (void *)m);
  curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, on_timer);
  curl_multi_setopt(m->multi, CURLMOPT_TIMERDATA, (void *)m);
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

static int select_bits(short revents) {
  int ev = 0;
  if (revents & (POLLIN | POLLHUP)) ev |= CURL_CSELECT_IN;
  if (revents & POLLOUT) ev |= CURL_CSELECT_OUT;
  if (revents & (POLLERR | POLLNVAL)) ev |= CURL_CSELECT_ERR;
  return ev;
}

/* Tell libcurl which sockets poll(2) found ready, then whether its timer is due. The ready
 * ones are copied out first, to the second half of `fds`: socket_action changes the watched
 * ones through on_socket, and may grow (move) `fds`, which carries that half along. */
static CURLMcode drive(wx_multi *m) {
  CURLMcode mc = CURLM_OK;
  size_t i, n = 0;
  int running;
  for (i = 0; i < m->nfds; i++) {
    if (m->fds[i].revents == 0) continue;
    m->fds[m->capfds + n++] = m->fds[i];
    m->fds[i].revents = 0;
  }
  for (i = 0; i < n && mc == CURLM_OK; i++) {
    struct pollfd r = m->fds[m->capfds + i]; /* re-read: `fds` may have moved */
    mc = curl_multi_socket_action(m->multi, (curl_socket_t)r.fd, select_bits(r.revents), &running);
  }
  if (mc == CURLM_OK && m->timer_due >= 0 && m->timer_due <= wx_monotonic()) {
    m->timer_due = -1.0; /* libcurl sets the next one during the call */
    mc = curl_multi_socket_action(m->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  }
  return mc;
}

/* A libcurl failure is a runtime failure, as in session:request: nil and an error table.
 * Whether a request in flight reached the server is unknown, so connected is true. The
 * transfers stay pending: the caller cancels them (cancel_all) or performs again. */
static int push_error(lua_State *L, lua_Integer code, const char *reason) {
  lua_pushnil(L);
  lua_createtable(L, 0, 4);
  lua_pushliteral(L, "network");
  lua_setfield(L, -2, "kind");
  lua_pushinteger(L, code);
  lua_setfield(L, -2, "code");
  lua_pushfstring(L, "wxpay.core.http_multi: %s", reason);
  lua_setfield(L, -2, "message");
  lua_pushboolean(L, 1);
  lua_setfield(L, -2, "connected");
  return 2;
}

static int push_multi_error(lua_State *L, CURLMcode mc) {
  return push_error(L, (lua_Integer)mc, curl_multi_strerror(mc));
}

/* poll(2) failing for another reason than a signal (EINVAL past RLIMIT_NOFILE, ENOMEM)
 * fails again at once: looping on it would spin until the deadline. code is
 * CURLM_INTERNAL_ERROR (not libcurl's fault, but outside the caller's control too). */
static int push_poll_error(lua_State *L, int err) {
  char reason[128];
  snprintf(reason, sizeof reason, "poll failed (%s)", strerror(err));
  return push_error(L, (lua_Integer)CURLM_INTERNAL_ERROR, reason);
}

/*** multi:perform(timeout_seconds?) -> { { id =, resp =, err = }, … } | nil, err */
static int l_multi_perform(lua_State *L) {
  wx_multi *m = check_multi(L);
  lua_Number timeout = luaL_optnumber(L, 2, 0);
  double deadline;
  int i = 0, first = 1;
  CURLMcode mc;
  luaL_argcheck(L, timeout >= 0 && timeout <= 86400, 2, "timeout must be 0..86400 seconds");
  deadline = wx_monotonic() + timeout;
  for (;;) {
    double now, wait;
    int ms, nready;
    mc = drive(m);
    if (mc != CURLM_OK) return push_multi_error(L, mc);
    if (m->cb_failed) {
      m->cb_failed = 0;
      return luaL_error(L, "wxpay.core.http_multi: out of memory");
    }
    if (collect(m) > 0 || m->done) break;
    now = wx_monotonic();
    if (now >= deadline && !first) break;
    first = 0;
    /* Sleep in poll(2) until a socket is ready, libcurl's timer is due, or the timeout
     * passes; with nothing to watch it simply waits, which makes this the scheduler's
     * sleep too. A timeout of 0 still looks once at the sockets without waiting. */
    wait = deadline - now;
    if (m->timer_due >= 0 && m->timer_due - now < wait) wait = m->timer_due - now;
    if (wait < 0) wait = 0;
    ms = wait * 1000 > INT_MAX - 1 ? INT_MAX - 1 : (int)(wait * 1000);
    if (wait > 0 && (double)ms < wait * 1000) ms++; /* never wake just before the time */
    nready = poll(m->fds, (nfds_t)m->nfds, ms);
    if (nready < 0) {
      size_t k;
      for (k = 0; k < m->nfds; k++) m->fds[k].revents = 0;
      if (errno == EINTR) break; /* a signal: back to Lua at once (core.trap_signal's hook) */
      return push_poll_error(L, errno);
    }
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

/*** multi:cancel_all() -> how many transfers were dropped (running or finished and not
 * yet handed over). The scheduler calls it as a batch ends, however it ends, so a later
 * batch on the same handle never sees this one's transfers. */
static int l_multi_cancel_all(lua_State *L) {
  wx_multi *m = check_multi(L);
  lua_Integer n = 0;
  wx_mxfer *t;
  while ((t = m->active) != NULL) {
    m->active = t->next;
    curl_multi_remove_handle(m->multi, t->x.easy);
    wx_xfer_finish(&t->x);
    list_push(&m->idle, t);
    n++;
  }
  while ((t = m->done) != NULL) {
    m->done = t->next;
    wx_xfer_finish(&t->x);
    list_push(&m->idle, t);
    n++;
  }
  m->npending = 0;
  lua_pushinteger(L, n);
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
    {"cancel_all", l_multi_cancel_all}, {"pending", l_multi_pending}, {"stats", l_multi_stats}, {"close", l_multi_close},
    {NULL, NULL}};
  wx_new_class(L, WX_MULTI, methods, l_multi_close, l_multi_tostring);
  lua_pushcfunction(L, l_http_multi);
  lua_setfield(L, -2, "http_multi");
}
