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
--   handshake. Errors are `{ kind = "network"|"timeout", message, connected }`, where
--   `connected` becomes true once the TLS handshake is done (as with the libcurl transport,
--   a failure before that is safe to send to the backup host).
-- * Response header names are lower-cased; repeated headers are joined with ", ".
--
-- `M.auto` wraps a libcurl transport for clients created without `transport`: each request
-- uses cosockets when the current phase has them and libcurl (with a logged warning) when
-- it does not (init, init_worker, ...). `M.sleep` is the default backoff sleep.
-- @module wxpay.transport.ngx

local ngx = rawget(_G, "ngx") -- nil outside OpenResty: the module still loads (for `auto`)
local ngx_socket_tcp = ngx and ngx.socket and ngx.socket.tcp
local ngx_get_phase = ngx and ngx.get_phase
local ngx_sleep = ngx and ngx.sleep
local ngx_now = ngx and ngx.now
local ngx_update_time = ngx and ngx.update_time
local ngx_log = ngx and ngx.log
local ngx_WARN = ngx and ngx.WARN

local M = {}

local unpack = table.unpack or unpack -- luacheck: ignore 143

local MAX_BODY = 16 * 1024 * 1024       -- same limits as the C core's session
local MAX_HEADER_BYTES = 256 * 1024
local KEEPALIVE_IDLE_MS = 60000
local DEFAULT_POOL_SIZE = 30

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

local batch_of = setmetatable({}, { __mode = "k" }) -- light thread -> its concurrent batch

local function now()
  ngx_update_time() -- ngx.now() is cached per event-loop turn
  return ngx_now()
end

-- https://host[:port]/target → host, port, target. IPv6 literals keep their brackets in
-- the Host header and lose them for connect().
local function parse_url(url)
  local host, port, target = url:match("^https://(%[[%x:.]+%]):?(%d*)(/.*)$")
  if not host then host, port, target = url:match("^https://([%w.-]+):?(%d*)(/.*)$") end
  if not host then return nil end
  port = tonumber(port) or 443
  return host, port, target
end

local function header_lines(req)
  local h = req.headers or {}
  local lines = {}
  if h[1] ~= nil then -- already "Name: value" lines (the C session's form)
    for i, line in ipairs(h) do lines[i] = line end
  else
    local names = {}
    for name in pairs(h) do names[#names + 1] = name end
    table.sort(names) -- deterministic wire form, like the libcurl transport
    for i, name in ipairs(names) do lines[i] = name .. ": " .. h[name] end
  end
  return lines
end

--- Create a transport.
-- @tparam[opt] table opts `pool_size` (keep-alive connections per host:port, default 30),
--   `keepalive_timeout` (idle seconds, default 60), `proxy` (not supported: every request
--   fails with a network error saying so). `ca_file` is ignored: trust comes from nginx's
--   `lua_ssl_trusted_certificate`.
-- @treturn table a transport with `request(req)`, `stats()` and `close()`
function M.new(opts)
  opts = opts or {}
  local pool_size = opts.pool_size or DEFAULT_POOL_SIZE
  local idle_ms = math.floor((opts.keepalive_timeout or KEEPALIVE_IDLE_MS / 1000) * 1000)
  local counters = { requests = 0, connects = 0, reused = 0 }

  local t = {}

  -- Open (or take from the pool) a TLS connection. Returns sock, reused or nil, err.
  local function open(host, port, deadline, connect_timeout, fresh)
    local sock = ngx_socket_tcp()
    local ms = math.floor(math.min(connect_timeout, deadline - now()) * 1000)
    if ms <= 0 then return nil, { kind = "timeout", message = "timed out before connecting", connected = false } end
    sock:settimeout(ms)
    local name = host:gsub("^%[(.*)%]$", "%1")
    local addr = name == "localhost" and "127.0.0.1" or name -- cosockets skip /etc/hosts
    local pool = "wxpay:" .. host .. ":" .. port
    local ok, err = sock:connect(addr, port, { pool = pool, pool_size = pool_size })
    if not ok then
      return nil, { kind = err == "timeout" and "timeout" or "network", connected = false,
        message = "connect to " .. host .. ":" .. port .. " failed: " .. tostring(err) }
    end
    local reused = sock:getreusedtimes() or 0
    if reused > 0 and fresh then -- a stale pooled connection was just replaced: want a new one
      sock:close()
      return open(host, port, deadline, connect_timeout, false)
    end
    if reused == 0 then
      counters.connects = counters.connects + 1
      -- server name = URL host (SNI and the name checked), verify = true: never chain only.
      ok, err = sock:sslhandshake(false, name, true)
      if not ok then
        sock:close()
        local msg = "TLS handshake with " .. host .. ":" .. port .. " failed: " .. tostring(err)
        if tostring(err):find("verify", 1, true) or tostring(err):find("certificate", 1, true) then
          msg = msg .. " (is lua_ssl_trusted_certificate set, with lua_ssl_verify_depth >= 3?)"
        end
        return nil, { kind = err == "timeout" and "timeout" or "network", message = msg, connected = false }
      end
    else
      counters.reused = counters.reused + 1
    end
    return sock, reused > 0
  end

  -- Arm the socket with what is left of the deadline; false when nothing is left.
  local function arm(sock, deadline)
    local ms = math.floor((deadline - now()) * 1000)
    if ms <= 0 then return false end
    sock:settimeout(ms)
    return true
  end

  -- Read a response from `sock`. Returns resp, keepalive or nil, err, got_bytes.
  local function read_response(sock, deadline, method)
    local status, version, line, err
    local headers
    local header_bytes, got = 0, false
    repeat -- interim 1xx answers are skipped: only the final response counts
      if not arm(sock, deadline) then return nil, "timeout", got end
      line, err = sock:receive("*l")
      if not line then return nil, err, got end
      got = true
      version, status = line:match("^HTTP/(%d%.%d) (%d%d%d)")
      if not status then return nil, "malformed status line", got end
      status = tonumber(status)
      headers = {}
      while true do
        if not arm(sock, deadline) then return nil, "timeout", got end
        line, err = sock:receive("*l")
        if not line then return nil, err, got end
        if line == "" then break end
        header_bytes = header_bytes + #line + 2
        if header_bytes > MAX_HEADER_BYTES then return nil, "response too large", got end
        local name, value = line:match("^([^:%s]+):[ \t]*(.-)[ \t]*$")
        if name then
          name = name:lower()
          local old = headers[name]
          headers[name] = old and (old .. ", " .. value) or value
        end
      end
    until status >= 200 or status == 101

    local conn = (headers["connection"] or ""):lower()
    local keepalive
    if version == "1.0" then keepalive = conn:find("keep-alive", 1, true) ~= nil
    else keepalive = conn:find("close", 1, true) == nil end

    local body = ""
    local te = headers["transfer-encoding"]
    if method == "HEAD" or status == 204 or status == 304 then
      body = ""
    elseif te and te:lower():find("chunked", 1, true) then
      local parts, total = {}, 0
      while true do
        if not arm(sock, deadline) then return nil, "timeout", got end
        line, err = sock:receive("*l")
        if not line then return nil, err, got end
        local size = tonumber(line:match("^%s*(%x+)"), 16)
        if not size then return nil, "malformed chunk size", got end
        if size == 0 then
          repeat -- trailers, up to the empty line
            if not arm(sock, deadline) then return nil, "timeout", got end
            line, err = sock:receive("*l")
            if not line then return nil, err, got end
          until line == ""
          break
        end
        total = total + size
        if total > MAX_BODY then return nil, "response too large", got end
        if not arm(sock, deadline) then return nil, "timeout", got end
        local data
        data, err = sock:receive(size)
        if not data then return nil, err, got end
        parts[#parts + 1] = data
        if not arm(sock, deadline) then return nil, "timeout", got end
        line, err = sock:receive("*l")
        if line ~= "" then return nil, err or "malformed chunk end", got end
      end
      body = table.concat(parts)
    elseif headers["content-length"] then
      local len = tonumber(headers["content-length"]:match("^%s*(%d+)%s*$"))
      if not len then return nil, "malformed Content-Length", got end
      if len > MAX_BODY then return nil, "response too large", got end
      if len > 0 then
        if not arm(sock, deadline) then return nil, "timeout", got end
        body, err = sock:receive(len)
        if not body then return nil, err, got end
      end
    else -- body delimited by the end of the connection
      keepalive = false
      if not arm(sock, deadline) then return nil, "timeout", got end
      local data, rerr, partial = sock:receive("*a")
      if not data then return nil, rerr, got end
      body = data or partial
      if #body > MAX_BODY then return nil, "response too large", got end
    end
    return { status = status, headers = headers, body = body }, keepalive
  end

  --- Send one request.
  -- @tparam table req `method`, `url` (`https://host[:port]/target`, sent as is), `headers`
  --   (map name -> value, or an array of "Name: value" lines), `body` (string|nil),
  --   `timeout`, `connect_timeout` (seconds)
  -- @return `resp` (`status`, `headers` with lower-cased names, `body`) or `nil, err`
  --   (`kind` "network"|"timeout", `message`, `connected`)
  function t.request(req)
    counters.requests = counters.requests + 1
    if opts.proxy then
      return nil, { kind = "network", connected = false,
        message = "the ngx transport does not support proxy; use the curl transport" }
    end
    if not ngx_socket_tcp then
      return nil, { kind = "network", connected = false, message = "the ngx transport needs OpenResty" }
    end
    local host, port, target = parse_url(req.url or "")
    if not host then
      return nil, { kind = "network", connected = false, message = "unsupported URL " .. tostring(req.url) }
    end
    local method = req.method or "GET"
    local body = req.body
    local head = { method .. " " .. target .. " HTTP/1.1",
      "Host: " .. (port == 443 and host or (host .. ":" .. port)) }
    for _, line in ipairs(header_lines(req)) do head[#head + 1] = line end
    if body or method == "POST" or method == "PUT" or method == "PATCH" then
      head[#head + 1] = "Content-Length: " .. #(body or "")
    end
    local wire = table.concat(head, "\r\n") .. "\r\n\r\n" .. (body or "")

    local deadline = now() + (req.timeout or 10)
    local connect_timeout = req.connect_timeout or 5
    local fresh = false
    for _ = 1, 2 do
      local ok, sock, reused, err
      ok, sock, reused = pcall(open, host, port, deadline, connect_timeout, fresh)
      if not ok then -- cosockets raise outside the phases that have them
        return nil, { kind = "network", connected = false, message = tostring(sock) }
      end
      if not sock then return nil, reused end
      local sent
      if arm(sock, deadline) then sent, err = sock:send(wire) else err = "timeout" end
      local resp, keepalive, got
      if sent then
        resp, keepalive, got = read_response(sock, deadline, method)
        if not resp then err = keepalive end
      end
      if resp then
        local batch = batch_of[coroutine.running()]
        if batch then batch.answered(resp.status) end
        if keepalive then
          local kok = sock:setkeepalive(idle_ms, pool_size)
          if not kok then sock:close() end
        else
          sock:close()
        end
        return resp
      end
      sock:close()
      -- A pooled connection closed by the server while idle: nothing was processed, so send
      -- once more on a new connection (libcurl does the same).
      -- (Not for a request that must reach the server at most once: req.fresh_connect.)
      if req.fresh_connect or not (reused and not got and (err == "closed" or err == "connection reset by peer")) then
        return nil, { kind = err == "timeout" and "timeout" or "network", connected = true,
          message = (sent and "receiving from " or "sending to ") .. host .. ":" .. port
            .. " failed: " .. tostring(err) }
      end
      fresh = true
    end
    return nil, { kind = "network", connected = true, message = "connection to " .. host .. " closed" }
  end

  t.pace = M.pace

  --- Counters: `requests`, `connects` (new TLS connections), `reused` (pooled ones).
  function t.stats()
    return { requests = counters.requests, connects = counters.connects, reused = counters.reused }
  end

  --- Nothing to release: connections belong to nginx's pool.
  function t.close() end

  return setmetatable(t, { __tostring = function() return "wxpay.transport.ngx" end })
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

--- `client.concurrent` under OpenResty: every task on its own light thread
-- (`ngx.thread.spawn`), at most `opts.concurrency` at once, starts spaced by the same
-- limiter as in plain Lua (`opts.qps`; a 429 answer halves the rate). Same results and
-- summary shape as `wxpay.concurrent`; `requests` counts answers received over cosockets.
-- Outside cosocket phases (init_worker, ...) the tasks run one after another.
-- @tparam table tasks array of functions
-- @tparam table opts `concurrency`, `qps` (checked by wxpay.concurrent)
-- @treturn table results, `results[i]` packed like `table.pack` (`{ n = 2, nil, err }` when task i raised)
-- @treturn table summary `{ elapsed, requests, throttled, rate_cuts, min_rate, max_in_flight }`
function M.light_threads(tasks, opts)
  local limiter = require("wxpay.concurrent").new_limiter(opts.qps)
  local t0 = now()
  local results, n = {}, #tasks
  local batch = { requests = 0 }
  function batch.answered(status)
    batch.requests = batch.requests + 1
    if status == 429 then limiter:throttle(now(), t0) end
  end
  local function run(i)
    batch_of[coroutine.running()] = batch
    results[i] = require("wxpay.concurrent").run_task(tasks[i])
    return i
  end
  local spawn, wait = ngx.thread.spawn, ngx.thread.wait
  local threads, running, max_in_flight, next_task = {}, 0, 0, 1
  local cosockets = M.cosockets_available()
  while next_task <= n or running > 0 do
    local delay = next_task <= n and limiter:wait(now()) or 0
    if next_task <= n and running < opts.concurrency and delay == 0 then
      limiter:start(now())
      if cosockets then
        threads[next_task] = spawn(run, next_task)
        running = running + 1
        max_in_flight = math.max(max_in_flight, running)
      else
        run(next_task)
        max_in_flight = 1
      end
      next_task = next_task + 1
    elseif running > 0 and (running >= opts.concurrency or next_task > n) then
      local list = {}
      for _, th in pairs(threads) do list[#list + 1] = th end
      local ok, i = wait(unpack(list))
      if not ok then error(i, 0) end
      threads[i], running = nil, running - 1
    else
      M.sleep(delay) -- rate-limited; running threads carry on meanwhile
    end
  end
  return results, { elapsed = now() - t0, requests = batch.requests, throttled = limiter.throttled,
    rate_cuts = limiter.cuts, min_rate = limiter.min_rate, max_in_flight = max_in_flight }
end

-- The seam wxpay.concurrent leaves for OpenResty.
if ngx then require("wxpay.concurrent").light_threads = M.light_threads end

return M
