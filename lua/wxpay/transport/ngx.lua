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
-- the Host header and lose them for connect(). A target with a space or a control
-- character is refused, as libcurl refuses such URLs: it would split the request line.
local function parse_url(url)
  local host, port, target = url:match("^https://(%[[%x:.]+%]):?(%d*)(/.*)$")
  if not host then host, port, target = url:match("^https://([%w.-]+):?(%d*)(/.*)$") end
  if not host or target:find("[%c ]") then return nil end
  port = tonumber(port) or 443
  return host, port, target
end

local function has_line_break(s)
  return s:find("\r", 1, true) or s:find("\n", 1, true) or s:find("\0", 1, true)
end

-- Refuses what would end a header early, like the libcurl path: the caller's bug, so it
-- raises (naming the header, never showing its value) and nothing is sent.
local function check_header(name, value)
  if type(name) ~= "string" or name == "" or has_line_break(name) then
    error("wxpay.transport.ngx: header name " .. string.format("%q", tostring(name))
      .. " must be a non-empty string without CR, LF or NUL", 3)
  end
  if type(value) ~= "string" and type(value) ~= "number" or has_line_break(tostring(value)) then
    error("wxpay.transport.ngx: header " .. name .. " must be a string without CR, LF or NUL", 3)
  end
end

local function header_lines(req)
  local h = req.headers or {}
  local lines = {}
  if h[1] ~= nil then -- already "Name: value" lines (the C session's form)
    for i, line in ipairs(h) do
      if type(line) ~= "string" or has_line_break(line) then
        error("wxpay.transport.ngx: header " .. i .. " must be a string without CR, LF or NUL", 3)
      end
      lines[i] = line
    end
  else
    local names = {}
    for name in pairs(h) do names[#names + 1] = name end
    table.sort(names, function(a, b) return tostring(a) < tostring(b) end) -- deterministic wire form
    for i, name in ipairs(names) do
      check_header(name, h[name])
      lines[i] = name .. ": " .. h[name]
    end
  end
  return lines
end

---------------------------------------------------------------------------------------------
-- The response reader. Like lua-resty-http: status line, headers and one function per body
-- framing, each with its limit. `rd` is the state of one response:
-- `{ sock, deadline, now, buf, got, max_body, max_headers, header_bytes }`.
-- Bytes come through `receiveany` in bounded pieces into `rd.buf`, and every wait gets only
-- the time left until the deadline: a cosocket re-arms its timer whenever data arrives, so
-- one big `receive` from a dripping server would never time out.
---------------------------------------------------------------------------------------------

local READ_PIECE = 64 * 1024
local MAX_CHUNK_LINE = 4096 -- a chunk size with its extensions; libcurl keeps none of them

-- Give the socket what is left of the deadline; false when nothing is left.
local function arm(sock, deadline, clock)
  local ms = math.floor((deadline - clock()) * 1000)
  if ms <= 0 then return false end
  sock:settimeout(ms)
  return true
end

-- Append the next piece the peer sends to rd.buf. Returns true or nil, err.
local function fill(rd)
  if not arm(rd.sock, rd.deadline, rd.now) then return nil, "timeout" end
  local data, err = rd.sock:receiveany(READ_PIECE)
  if not data then return nil, err or "closed" end
  rd.got = true
  rd.buf = rd.buf .. data
  return true
end

-- One line, without its CRLF (a bare LF is accepted), of at most `cap` bytes; a longer
-- one is the error `too_long`.
local function read_line(rd, cap, too_long)
  local from = 1
  while true do
    local lf = rd.buf:find("\n", from, true)
    if lf then
      local line = rd.buf:sub(1, lf - 1):gsub("\r$", "")
      if #line > cap then return nil, too_long end
      rd.buf = rd.buf:sub(lf + 1)
      return line
    end
    if #rd.buf > cap + 1 then return nil, too_long end -- + 1: the CR may be there already
    from = #rd.buf + 1
    local ok, err = fill(rd)
    if not ok then return nil, err end
  end
end

-- Exactly n bytes (n is already within the body limit).
local function read_bytes(rd, n)
  while #rd.buf < n do
    local ok, err = fill(rd)
    if not ok then return nil, err end
  end
  local data = rd.buf:sub(1, n)
  rd.buf = rd.buf:sub(n + 1)
  return data
end

-- A line of the head: the status line, headers, trailers. All of them together stay
-- within max_headers, interim 1xx answers included.
local function read_head_line(rd)
  local too_long = "response headers over " .. rd.max_headers .. " bytes"
  local line, err = read_line(rd, rd.max_headers - rd.header_bytes, too_long)
  if not line then return nil, err end
  rd.header_bytes = rd.header_bytes + #line + 2
  if rd.header_bytes > rd.max_headers then return nil, too_long end
  return line
end

--- Status line: version ("1.1"), status (integer) or nil, err.
local function read_status_line(rd)
  local line, err = read_head_line(rd)
  if not line then return nil, err end
  local version, status = line:match("^HTTP/(%d%.%d) (%d%d%d)")
  if not status then return nil, "malformed status line" end
  return version, tonumber(status)
end

-- Header lines up to the empty one: names lower-cased, repeated ones joined with ", ".
local function read_headers(rd)
  local headers = {}
  while true do
    local line, err = read_head_line(rd)
    if not line then return nil, err end
    if line == "" then return headers end
    local name, value = line:match("^([^:%s]+):[ \t]*(.-)[ \t]*$")
    if name then
      name = name:lower()
      local old = headers[name]
      headers[name] = old and (old .. ", " .. value) or value
    end
  end
end

local function body_over(rd)
  return "response body over " .. rd.max_body .. " bytes"
end

local function read_body_length(rd, value)
  local digits = value:match("^%s*(%d+)%s*$")
  if not digits then return nil, "malformed Content-Length" end
  digits = digits:gsub("^0+(%d)", "%1")
  if #digits > 12 or tonumber(digits) > rd.max_body then return nil, body_over(rd) end
  return read_bytes(rd, tonumber(digits))
end

-- "1a;ext=v" → 26; nil, err when it is not a chunk size or the body would pass the limit.
local function chunk_size(rd, line, total)
  local hex, rest = line:match("^[ \t]*(%x+)[ \t]*(.*)$")
  if not hex or (rest ~= "" and rest:sub(1, 1) ~= ";") then return nil, "malformed chunk size" end
  hex = hex:gsub("^0+(%x)", "%1")
  local size = #hex <= 8 and tonumber(hex, 16) or math.huge
  if size > rd.max_body - total then return nil, body_over(rd) end
  return size
end

local function read_body_chunked(rd)
  local parts, total = {}, 0
  while true do
    local line, err = read_line(rd, MAX_CHUNK_LINE, "chunk size line over " .. MAX_CHUNK_LINE .. " bytes")
    if not line then return nil, err end
    local size
    size, err = chunk_size(rd, line, total)
    if not size then return nil, err end
    if size == 0 then break end
    local data
    data, err = read_bytes(rd, size)
    if not data then return nil, err end
    parts[#parts + 1] = data
    total = total + size
    line, err = read_line(rd, 0, "malformed chunk end")
    if not line then return nil, err end
  end
  repeat -- trailers, up to the empty line; they count as headers
    local line, err = read_head_line(rd)
    if not line then return nil, err end
  until line == ""
  return table.concat(parts)
end

local function read_body_close(rd)
  local parts, total = { rd.buf }, #rd.buf
  rd.buf = ""
  while total <= rd.max_body do
    if not arm(rd.sock, rd.deadline, rd.now) then return nil, "timeout" end
    local data, err = rd.sock:receiveany(READ_PIECE)
    if not data then
      if err == "closed" then return table.concat(parts) end
      return nil, err
    end
    parts[#parts + 1] = data
    total = total + #data
  end
  return nil, body_over(rd)
end

local function keeps_alive(version, headers)
  local conn = (headers["connection"] or ""):lower()
  if version == "1.0" then return conn:find("keep-alive", 1, true) ~= nil end
  return conn:find("close", 1, true) == nil
end

-- Read one response. Returns resp, keepalive or nil, err (a string), got_bytes.
local function read_response(rd, method)
  local version, status, headers, err
  repeat -- interim 1xx answers are skipped: only the final response counts
    version, status = read_status_line(rd)
    if not version then return nil, status, rd.got end
    headers, err = read_headers(rd)
    if not headers then return nil, err, rd.got end
  until status >= 200 or status == 101

  local keepalive = keeps_alive(version, headers)
  local body
  local te = headers["transfer-encoding"]
  if method == "HEAD" or status == 204 or status == 304 or status == 101 then
    body = "" -- no body by definition
  elseif te and te:lower():find("chunked", 1, true) then
    body, err = read_body_chunked(rd)
  elseif headers["content-length"] then
    body, err = read_body_length(rd, headers["content-length"])
  else -- delimited by the end of the connection
    keepalive = false
    body, err = read_body_close(rd)
  end
  if not body then return nil, err, true end
  -- Bytes past the response (an answer nobody asked for): the connection is not reusable.
  if rd.buf ~= "" then keepalive = false end
  return { status = status, headers = headers, body = body }, keepalive
end

--- Read one HTTP/1.1 response from a cosocket-like `sock` (`receiveany`, `settimeout`);
-- exposed for the reader's specs.
-- @param sock the socket
-- @tparam number deadline in `opts.now`'s seconds
-- @tparam string method the request's (a HEAD answer has no body)
-- @tparam[opt] table opts `max_body` (default 16 MB), `max_headers` (256 KB), `now` (clock)
-- @return `resp, keepalive` or `nil, err` (a string) and whether any byte arrived
function M._read_response(sock, deadline, method, opts)
  opts = opts or {}
  local rd = { sock = sock, deadline = deadline, now = opts.now or now, buf = "", got = false,
    max_body = opts.max_body or MAX_BODY, max_headers = opts.max_headers or MAX_HEADER_BYTES,
    header_bytes = 0 }
  return read_response(rd, method)
end

---------------------------------------------------------------------------------------------
-- Connections
---------------------------------------------------------------------------------------------

local function connect_error(host, port, what, err)
  return { kind = err == "timeout" and "timeout" or "network", connected = false,
    message = what .. " " .. host .. ":" .. port .. " failed: " .. tostring(err) }
end

-- Open (or take from the pool) a TLS connection. `fresh` opens one of its own: its pool is
-- never given connections back (see `release`), so nothing kept alive can be reused.
-- Returns sock, reused or nil, err.
local function open(tr, host, port, connect_deadline, fresh)
  local sock = ngx_socket_tcp()
  if not arm(sock, connect_deadline, now) then
    return nil, { kind = "timeout", message = "timed out before connecting", connected = false }
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
  if not arm(sock, connect_deadline, now) then
    sock:close()
    return nil, connect_error(host, port, "TLS handshake with", "timeout")
  end
  -- server name = URL host (SNI and the name checked), verify = true: never chain only.
  ok, err = sock:sslhandshake(false, name, true)
  if not ok then
    sock:close()
    local e = connect_error(host, port, "TLS handshake with", err)
    if tostring(err):find("verify", 1, true) or tostring(err):find("certificate", 1, true) then
      e.message = e.message .. " (is lua_ssl_trusted_certificate set, with lua_ssl_verify_depth >= 3?)"
    end
    return nil, e
  end
  return sock, false
end

-- Send `wire` in pieces, each with the time left. Returns true or nil, err.
local function send_all(sock, wire, deadline)
  for i = 1, #wire, READ_PIECE do
    if not arm(sock, deadline, now) then return nil, "timeout" end
    local ok, err = sock:send(wire:sub(i, i + READ_PIECE - 1))
    if not ok then return nil, err end
  end
  return true
end

-- Back to the pool after a fully read body; a fresh connection is closed instead.
local function release(tr, sock, keepalive, fresh)
  if keepalive and not fresh then
    if sock:setkeepalive(tr.idle_ms, tr.pool_size) then return end
  end
  sock:close()
end

local function request_wire(req, host, port, target)
  local method = req.method or "GET"
  if type(method) ~= "string" or not method:match("^[%w_-]+$") then
    error("wxpay.transport.ngx: method must be a token without CR, LF, NUL or space", 3)
  end
  local body = req.body
  local head = { method .. " " .. target .. " HTTP/1.1",
    "Host: " .. (port == 443 and host or (host .. ":" .. port)) }
  for _, line in ipairs(header_lines(req)) do head[#head + 1] = line end
  if body or method == "POST" or method == "PUT" or method == "PATCH" then
    head[#head + 1] = "Content-Length: " .. #(body or "")
  end
  return table.concat(head, "\r\n") .. "\r\n\r\n" .. (body or ""), method
end

-- One try on one connection. Returns resp or nil, err (a string), sent, got, reused;
-- or nil, err (a table) when no connection was made.
local function exchange(sock, reused, wire, method, deadline)
  local sent, err = send_all(sock, wire, deadline)
  if not sent then return nil, err, false, false, reused end
  local rd = { sock = sock, deadline = deadline, now = now, buf = "", got = false,
    max_body = MAX_BODY, max_headers = MAX_HEADER_BYTES, header_bytes = 0 }
  local resp, keepalive, got = read_response(rd, method)
  if not resp then return nil, keepalive, true, got, reused end
  return resp, keepalive
end

--- Create a transport.
-- @tparam[opt] table opts `pool_size` (keep-alive connections per host:port, default 30),
--   `keepalive_timeout` (idle seconds, default 60), `proxy` (not supported: every request
--   fails with a network error saying so). `ca_file` is ignored: trust comes from nginx's
--   `lua_ssl_trusted_certificate`.
-- @treturn table a transport with `request(req)`, `stats()` and `close()`
function M.new(opts)
  opts = opts or {}
  local tr = {
    pool_size = opts.pool_size or DEFAULT_POOL_SIZE,
    idle_ms = math.floor((opts.keepalive_timeout or KEEPALIVE_IDLE_MS / 1000) * 1000),
    counters = { requests = 0, connects = 0, reused = 0 },
  }
  local counters = tr.counters

  local t = {}

  --- Send one request.
  -- @tparam table req `method`, `url` (`https://host[:port]/target`, sent as is), `headers`
  --   (map name -> value, or an array of "Name: value" lines; CR, LF or NUL in any of them
  --   raises and nothing is sent), `body` (string|nil), `timeout` (seconds, bounds the
  --   whole attempt), `connect_timeout` (seconds, the TCP connect plus the TLS handshake),
  --   `fresh_connect` (true: a connection of its own, never a pooled one, and never sent twice)
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
    local wire, method = request_wire(req, host, port, target)

    local start = now()
    local deadline = start + (req.timeout or 10)
    local connect_deadline = math.min(deadline, start + (req.connect_timeout or 5))
    local fresh = req.fresh_connect and true or false
    for _ = 1, 2 do
      local ok, sock, reused = pcall(open, tr, host, port, connect_deadline, fresh)
      if not ok then -- cosockets raise outside the phases that have them
        return nil, { kind = "network", connected = false, message = tostring(sock) }
      end
      if not sock then return nil, reused end
      local resp, err, sent, got = exchange(sock, reused, wire, method, deadline)
      if resp then
        local batch = batch_of[coroutine.running()]
        if batch then batch.answered(resp.status) end
        release(tr, sock, err, fresh)
        return resp
      end
      sock:close()
      -- A pooled connection closed by the server while idle: nothing was processed, so send
      -- once more on a new connection (libcurl does the same). A request that must reach
      -- the server at most once never came here: it had a fresh connection.
      if not (reused and not got and (err == "closed" or err == "connection reset by peer")) then
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
