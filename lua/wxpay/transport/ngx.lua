--- The OpenResty transport: HTTP/1.1 over `ngx.socket.tcp` cosockets, so a request waits
-- without blocking the nginx worker (the C core still does all the crypto).
--
-- * TLS is always verified: `sslhandshake` with the URL's host as server name and
--   `verify = true`, against nginx's `lua_ssl_trusted_certificate` (set it; WeChat Pay's
--   chain also needs `lua_ssl_verify_depth 3` or more). nginx checks names with
--   `X509_check_host`, which never matches an IP address, so an IP `base_url` cannot verify.
-- * Cosockets resolve names with nginx's `resolver` directive, not `/etc/hosts`. The host
--   `localhost` is the exception: it connects to 127.0.0.1 without DNS and still verifies
--   the name `localhost`.
-- * After a fully read body the connection goes back to nginx's keep-alive pool, named by
--   `host:port`. A kept-alive connection the server closed meanwhile is detected before
--   any answer byte arrives and the request is sent once more on a new connection, as
--   libcurl does.
-- * `timeout` bounds the whole exchange, `connect_timeout` the TCP connect plus the TLS
-- * `timeout` bounds the whole exchange, `connect_timeout` the TCP connect plus the TLS
--   handshake. Errors are error objects of kind "network" or "timeout" with `connected`,
--   which becomes true once the TLS handshake is done (as with the libcurl transport, a
--   failure before that is safe to send to the backup host).
-- * Response header names are lower-cased; repeated headers are joined with ", ".
--
-- `M.auto` wraps a libcurl transport for clients created without `transport`: each request
-- uses cosockets when the current phase has them and libcurl (with a logged warning) when
-- it does not (init, init_worker, ...). `M.sleep` is the default backoff sleep. The wire
-- format (request head, response reader and its limits) is in `wxpay.transport.http1`.
-- @module wxpay.transport.ngx

local http1 = require("wxpay.transport.http1")
local transport = require("wxpay.transport")

local ngx = rawget(_G, "ngx") -- nil outside OpenResty: the module still loads (for `auto`)
local ngx_socket_tcp = ngx and ngx.socket and ngx.socket.tcp
local ngx_get_phase = ngx and ngx.get_phase
local ngx_sleep = ngx and ngx.sleep
local ngx_now = ngx and ngx.now
local ngx_update_time = ngx and ngx.update_time
local ngx_log = ngx and ngx.log
local ngx_WARN = ngx and ngx.WARN


local M = {}

local KEEPALIVE_IDLE_MS = 60000
-- Kept-alive connections per host:port and worker: a burst of a few hundred concurrent calls
-- finds its connections again in the next burst instead of opening (and handshaking) anew.
local DEFAULT_POOL_SIZE = 512

-- Phases where cosockets (and ngx.sleep) work, per the lua-nginx-module documentation.
local COSOCKET_PHASES = { rewrite = true, access = true, content = true, timer = true,
  ssl_cert = true, ssl_session_fetch = true, ssl_client_hello = true }

--- Whether the running code may use cosockets (OpenResty, in a phase that has them).
-- @treturn boolean
-- @treturn string|nil the phase name under OpenResty
function M.cosockets_available()
  if not ngx_get_phase then return false end
  local phase = ngx_get_phase()
  return COSOCKET_PHASES[phase] == true, phase
end

--- Sleep without blocking the worker where possible: `ngx.sleep` in cosocket phases, the
-- C core's (blocking) sleep elsewhere (plain Lua, or nginx's init phases).
-- @tparam number seconds
function M.sleep(seconds)
  if M.cosockets_available() then return ngx_sleep(seconds) end
  return require("wxpay.core").sleep(seconds)
end

-- Pacing. A request signs with RSA-2048 (~1 ms of CPU) before it first yields, so a burst of
-- requests arriving together would sign in one event-loop turn and hold every other
-- connection of the worker for that long. At most SIGNS_PER_TURN signatures run per turn;
-- the others sleep 1 ms and try again. A zero-delay timer marks the start of the next
-- turn. This is per-worker scheduling state, hence module level.
local SIGNS_PER_TURN = 2
local turn_signs = 0
local ngx_timer_at = ngx and ngx.timer and ngx.timer.at

local function new_turn(premature)
  if not premature then turn_signs = 0 end
end

--- Wait, if need be, until this event-loop turn may run one more signature. Called by the
-- client before it signs; does nothing outside cosocket phases.
function M.pace()
  if not ngx_timer_at or not M.cosockets_available() then return end
  while true do
    if turn_signs == 0 then
      if not ngx_timer_at(0, new_turn) then return end -- no timer: do not pace at all
    end
    if turn_signs < SIGNS_PER_TURN then
      turn_signs = turn_signs + 1
      return
    end
    ngx_sleep(0.001)
  end
end


local function now()
  ngx_update_time() -- ngx.now() is cached per event-loop turn
  return ngx_now()
end

local arm = http1.arm

--- Read one HTTP/1.1 response from a cosocket-like `sock`; `wxpay.transport.http1`'s
-- reader with this module's clock by default. Exposed for the reader's specs.
-- @param sock the socket
-- @tparam number deadline in `opts.now`'s seconds
-- @tparam string method the request's (a HEAD answer has no body)
-- @tparam[opt] table opts `max_body` (default 16 MB), `max_headers` (256 KB), `now` (clock)
-- @return `resp, keepalive` or `nil, err` (a string) and whether any byte arrived
function M._read_response(sock, deadline, method, opts)
  opts = opts or {}
  return http1.read_response(sock, deadline, method, { now = opts.now or now,
    max_body = opts.max_body, max_headers = opts.max_headers })
end

---------------------------------------------------------------------------------------------
-- Connections
---------------------------------------------------------------------------------------------

local function connect_error(host, port, what, err)
  return transport.error(err == "timeout" and "timeout" or "network",
    what .. " " .. host .. ":" .. port .. " failed: " .. tostring(err), false)
end

-- The TLS handshake on a new connection: server name = URL host (SNI and the name
-- checked), verify = true: never chain only. The session of the last handshake with the
-- same host:port (and name) is offered for resumption, and the new one kept in its place:
-- a resumed handshake skips the certificate exchange and its signature (a session the server
-- does not take back just costs a full handshake). Returns true or nil, err.
local function handshake(tr, sock, host, port, name, pool, connect_deadline)
  if not arm(sock, connect_deadline, now) then
    sock:close()
    return nil, connect_error(host, port, "TLS handshake with", "timeout")
  end
  local session, err = sock:sslhandshake(tr.sessions[pool], name, true)
  if session then
    if session ~= true then tr.sessions[pool] = session end
    return true
  end
  tr.sessions[pool] = nil -- whatever failed, the next handshake starts from scratch
  sock:close()
  local e = connect_error(host, port, "TLS handshake with", err)
  -- A host mismatch is the URL's host name, not the CA bundle (the pipeline's hint says so).
  if tostring(err):find("host mismatch", 1, true) then
    e.retryable = false
  elseif tostring(err):find("verify", 1, true) or tostring(err):find("certificate", 1, true) then
    e.message = e.message .. " (is lua_ssl_trusted_certificate set, with lua_ssl_verify_depth >= 3?)"
  end
  return nil, e
end

-- Open (or take from the pool) a TLS connection. `fresh` opens one of its own: its pool is
-- never given connections back (see `release`), so nothing kept alive can be reused.
-- Returns sock, reused or nil, err.
local function open(tr, host, port, connect_deadline, fresh)
  local sock = ngx_socket_tcp()
  if not arm(sock, connect_deadline, now) then
    return nil, transport.error("timeout", "timed out before connecting", false)
  end
  local name = host:gsub("^%[(.*)%]$", "%1")
  local addr = name == "localhost" and "127.0.0.1" or name -- cosockets skip /etc/hosts
  local pool = (fresh and "wxpay-fresh:" or "wxpay:") .. host .. ":" .. port
  local ok, err = sock:connect(addr, port, fresh and { pool = pool }
    or { pool = pool, pool_size = tr.pool_size })
  if not ok then return nil, connect_error(host, port, "connect to", err) end
  local reused = sock:getreusedtimes() or 0
  if reused > 0 then
    tr.counters.reused = tr.counters.reused + 1
    return sock, true
  end
  tr.counters.connects = tr.counters.connects + 1
  local shaken, herr = handshake(tr, sock, host, port, name, "wxpay:" .. host .. ":" .. port, connect_deadline)
  if not shaken then return nil, herr end
  return sock, false
end

-- Back to the pool after a fully read body; a fresh connection is closed instead.
local function release(tr, sock, keepalive, fresh)
  if keepalive and not fresh then
    if sock:setkeepalive(tr.idle_ms, tr.pool_size) then return end
  end
  sock:close()
end

-- One try on one connection. Returns resp, keepalive or nil, err (a string), sent, got.
local function exchange(sock, wire, method, deadline)
  local sent, err = http1.send_all(sock, wire, deadline, now)
  if not sent then return nil, err, false, false end
  local resp, keepalive, got = http1.read_response(sock, deadline, method, { now = now })
  if not resp then return nil, keepalive, true, got end
  return resp, keepalive
end

---------------------------------------------------------------------------------------------
-- Requests
---------------------------------------------------------------------------------------------

-- Why the request cannot be sent at all, or nil.
local function refusal(tr, req)
  if tr.proxy then return "the ngx transport does not support proxy; use the curl transport" end
  if not ngx_socket_tcp then return "the ngx transport needs OpenResty" end
  if not http1.parse_url(req.url or "") then return "unsupported URL " .. tostring(req.url) end
end

-- A pooled connection closed by the server while idle: nothing was processed, so it may be
-- sent once more on a new connection (libcurl does the same). A request that must reach the
-- server at most once never gets here: it had a fresh connection.
local function stale(reused, got, err)
  return reused and not got and (err == "closed" or err == "connection reset by peer")
end

-- Up to two tries: the second only after a stale pooled connection.
local function send(tr, req, host, port, wire, method)
  local start = now()
  local deadline = start + (req.timeout or 10)
  local connect_deadline = math.min(deadline, start + (req.connect_timeout or 5))
  local fresh = req.fresh_connect and true or false
  for _ = 1, 2 do
    local ok, sock, reused = pcall(open, tr, host, port, connect_deadline, fresh)
    if not ok then -- cosockets raise outside the phases that have them
      return nil, transport.error("network", tostring(sock), false)
    end
    if not sock then return nil, reused end
    local resp, err, sent, got = exchange(sock, wire, method, deadline)
    if resp then
      release(tr, sock, err, fresh)
      return resp
    end
    sock:close()
    if not stale(reused, got, err) then
      return nil, transport.error(err, (sent and "receiving from " or "sending to ") .. host .. ":"
        .. port .. " failed: " .. tostring(err), true)
    end
    fresh = true
  end
  return nil, transport.error("network", "connection to " .. host .. " closed", true)
end

local function request(tr, req)
  tr.counters.requests = tr.counters.requests + 1
  local why = refusal(tr, req)
  if why then return nil, transport.error("network", why, false) end
  local host, port, target = http1.parse_url(req.url)
  local wire, method = http1.request_wire(req, host, port, target)
  return send(tr, req, host, port, wire, method)
end

local function stats(tr)
  local c = tr.counters
  return { requests = c.requests, connects = c.connects, reused = c.reused }
end

--- Create a transport.
-- @tparam[opt] table opts `pool_size` (keep-alive connections per host:port, default 512),
--   `keepalive_timeout` (idle seconds, default 60), `proxy` (not supported: every request
--   fails with a network error saying so). `ca_file` is ignored: trust comes from nginx's
--   `lua_ssl_trusted_certificate`.
-- @treturn table a transport (see `wxpay.transport`) with `request(req)` (`headers` may
--   also be an array of "Name: value" lines; CR, LF or NUL in any of them raises and
--   nothing is sent), `pace()`, `stats()` (`requests`, `connects`: new TLS connections,
--   `reused`: pooled ones) and `close()` (nothing to release: connections belong to nginx's
--   pool)
function M.new(opts)
  opts = opts or {}
  local tr = {
    proxy = opts.proxy,
    pool_size = opts.pool_size or DEFAULT_POOL_SIZE,
    idle_ms = math.floor((opts.keepalive_timeout or KEEPALIVE_IDLE_MS / 1000) * 1000),
    counters = { requests = 0, connects = 0, reused = 0 },
    sessions = {}, -- host:port -> the TLS session of the last handshake there
  }
  return setmetatable({
    request = function(req) return request(tr, req) end,
    pace = M.pace,
    stats = function() return stats(tr) end,
    close = function() end,
  }, { __tostring = function() return "wxpay.transport.ngx" end })
end

--- The transport of a client created without `transport` while `ngx` exists: cosockets in
-- phases that have them, else `fallback` (libcurl, which blocks the worker) with a warning
-- logged once per phase name. The phase is checked on every request because one client
-- serves all phases of a worker.
-- @tparam table fallback the libcurl transport
-- @tparam[opt] table opts as for `new`, plus `logger(level, message, fields)`
-- @treturn table a transport
function M.auto(fallback, opts)
  opts = opts or {}
  local cosocket = M.new(opts)
  local warned = {}
  local t = { pace = M.pace }
  function t.request(req)
    local ok, phase = M.cosockets_available()
    if ok then return cosocket.request(req) end
    if not warned[phase] then
      warned[phase] = true
      local msg = "wxpay: no cosockets in the " .. tostring(phase)
        .. " phase; falling back to libcurl, which blocks this nginx worker"
      if ngx_log then ngx_log(ngx_WARN, msg) end
      if opts.logger then pcall(opts.logger, "warn", msg, { phase = phase }) end
    end
    return fallback.request(req)
  end
  --- Counters of both transports: `{ ngx = {…}, curl = {…} }`.
  function t.stats()
    return { ngx = cosocket.stats(), curl = fallback.stats and fallback.stats() or nil }
  end
  function t.close()
    if fallback.close then fallback.close() end
  end
  return setmetatable(t, { __tostring = function() return "wxpay.transport.ngx (auto)" end })
end

return M
