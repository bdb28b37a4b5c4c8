--- The sandbox HTTPS server: cqueues, one coroutine per connection, HTTP/1.1 keep-alive.
-- A delayed answer only sleeps its own coroutine, so other connections carry on.
local cqueues = require("cqueues")
local csocket = require("cqueues.socket")
local errno = require("cqueues.errno")
local ssl_context = require("openssl.ssl.context")
local openssl_pkey = require("openssl.pkey")
local openssl_x509 = require("openssl.x509")

local api = require("wxpay.sandbox.api")
local control = require("wxpay.sandbox.control")
local faults_mod = require("wxpay.sandbox.faults")
local http = require("wxpay.sandbox.http")
local json = require("wxpay.sandbox.json")
local store_mod = require("wxpay.sandbox.store")
local util = require("wxpay.sandbox.util")

local M = {}

local IDLE_TIMEOUT = 300
local HANDSHAKE_TIMEOUT = 10
local LOG_CAP = 20000
-- Bodies of up to 8 MB are accepted (http.lua), unauthenticated ones too: the log is bounded
-- in bytes as well, or a few hundred large requests would hold gigabytes.
local LOG_MAX_BYTES = 16 * 1024 * 1024
local ACCEPT_PAUSE, ACCEPT_PAUSE_MAX = 0.05, 1

local Server = {}
Server.__index = Server

local DEFAULTS = {
  mode = "combined", offset_mode = "page", empty_list = "404", state_in_list = true,
  signing_certificate = "primary", latency = 0, clock_offset = 0, unknown_stocks = "auto",
}

local function default_config(opts)
  local config = { advertised_certificates = { "primary" } }
  for k, v in pairs(DEFAULTS) do
    if opts[k] ~= nil then config[k] = opts[k] else config[k] = v end
  end
  return config
end

--- Create a server (not listening yet).
-- @tparam table opts `keys` (from wxpay.sandbox.keys.load), `host`, `port`, `mode`,
--   `offset_mode`, `empty_list`, `state_in_list`, `quiet`, `log` (function(line)),
--   `seed` (number of relations to pre-populate), `fault_seed` (for random fault rates)
-- @treturn table server
function M.new(opts)
  local self = setmetatable({ opts = opts, host = opts.host or "127.0.0.1",
                              port = opts.port or 0, connections = {} }, Server)
  local state = {
    keys = opts.keys,
    crypto = api.load_crypto(opts.keys),
    store = store_mod.new(),
    faults = faults_mod.new(opts.fault_seed),
    config = default_config(opts),
  }
  local request_ids = 0
  local prefix = util.random_hex(8)
  function state.next_request_id()
    request_ids = request_ids + 1
    return string.format("%s%016X", prefix, request_ids)
  end
  self.state = state
  self:wall_time()
  self.connection_ids = 0
  self:clear_log()
  self:reset_counters()
  if (opts.seed or 0) > 0 then assert(self:seed{ count = opts.seed }) end
  return self
end

function Server:reset_counters()
  self.counters = { connections = 0, api_connections = 0, requests = 0 }
end

--- Forget the request log.
function Server:clear_log()
  self.state.log = { items = {}, first = 1, last = 0, bytes = 0 }
end

--- Clear relations, idempotency records, faults, the request log and the counters, and
-- put the run-time configuration back to the startup options.
function Server:reset()
  self.state.store:clear()
  self.state.faults:clear()
  self.state.config = default_config(self.opts)
  self:clear_log()
  self:reset_counters()
end

--- Counters for the control API.
-- @treturn table `{ connections, api_connections, requests, open_connections, log_entries,
--   log_bytes, log_max_bytes }`
function Server:stats()
  local open = 0
  for _ in pairs(self.connections) do open = open + 1 end
  local log = self.state.log
  return { connections = self.counters.connections,
           api_connections = self.counters.api_connections,
           requests = self.counters.requests, open_connections = open,
           log_entries = log.last - log.first + 1, log_bytes = log.bytes, log_max_bytes = LOG_MAX_BYTES }
end

--- Add relations quickly (no HTTP, no signatures).
-- @tparam table spec `{ count, business_type = "BUSIFAVOR_STOCK", stock_id = "SEED_STOCK",
--   partner_type = "APPID", prefix = "wxseed" | "1900", start = 1 }`
-- @return true and the number added, or nil and an error message
function Server:seed(spec)
  local business_type = spec.business_type or "BUSIFAVOR_STOCK"
  local stock_id = spec.stock_id or "SEED_STOCK"
  local partner_type = spec.partner_type or "APPID"
  if business_type ~= "FAVOR_STOCK" and business_type ~= "BUSIFAVOR_STOCK" then
    return nil, "bad business_type"
  end
  if partner_type ~= "APPID" and partner_type ~= "MERCHANT" then return nil, "bad partner_type" end
  if business_type == "FAVOR_STOCK" and partner_type == "MERCHANT" then
    return nil, "FAVOR_STOCK does not support MERCHANT partners"
  end
  local prefix = spec.prefix or (partner_type == "APPID" and "wxseed" or "1900")
  local start = math.tointeger(spec.start or 1) or 1
  local width = math.max(6, #tostring(start + spec.count - 1))
  local mchid = self.state.keys.mchid
  local store = self.state.store
  local authorized_data = { business_type = business_type, stock_id = stock_id }
  local added = 0
  for i = start, start + spec.count - 1 do
    local id = prefix .. string.format("%0" .. width .. "d", i)
    local partner = partner_type == "APPID" and { type = "APPID", appid = id }
                    or { type = "MERCHANT", merchant_id = id }
    if not store:get(mchid, partner, authorized_data) then
      store:insert(mchid, partner, { business_type = business_type, stock_id = stock_id })
      added = added + 1
    end
  end
  return true, added
end

function Server:log(fmt, ...)
  if self.opts.quiet then return end
  local line = string.format(fmt, ...)
  if self.opts.log then self.opts.log(line) else io.stderr:write(line, "\n") end
end

-- Wall-clock seconds with sub-second precision: the epoch read once from date(1) plus the
-- monotonic clock since, so logged requests can be grouped by calendar second.
function Server:wall_time()
  if not self.wall0 then
    local p = io.popen("date +%s.%N")
    local s = p and p:read("l")
    if p then p:close() end
    self.mono0, self.wall0 = cqueues.monotime(), tonumber(s) or os.time()
  end
  return self.wall0 + (cqueues.monotime() - self.mono0)
end

-- The bytes an entry holds: body, target and headers (what a client controls).
local function entry_bytes(req)
  local n = #req.body + #req.target
  for _, h in ipairs(req.header_list or {}) do n = n + #h[1] + #h[2] end
  return n
end

-- Appends to the log, then drops the oldest entries while it holds more than LOG_CAP
-- entries or LOG_MAX_BYTES bytes (the newest entry always stays).
local function log_request(self, conn_id, req)
  local log = self.state.log
  log.last = log.last + 1
  local entry = { seq = log.last, connection = conn_id, method = req.method,
                  target = req.target, headers = req.headers, body = req.body, status = 0,
                  received_at = self:wall_time(), bytes = entry_bytes(req) }
  log.items[log.last] = entry
  log.bytes = log.bytes + entry.bytes
  while log.first < log.last and (log.last - log.first + 1 > LOG_CAP or log.bytes > LOG_MAX_BYTES) do
    log.bytes = log.bytes - log.items[log.first].bytes
    log.items[log.first] = nil
    log.first = log.first + 1
  end
  return entry
end

-- Handle one APIv3 request. Returns false when the connection is to be dropped.
function Server:api_request(con, conn, req)
  local state = self.state
  self.counters.requests = self.counters.requests + 1
  if not conn.api then
    conn.api = true
    self.counters.api_connections = self.counters.api_connections + 1
  end
  local entry = log_request(self, conn.id, req)
  local f = state.faults:take(req.method, req.target)
  local resp
  local extra = {}
  if f.pre then
    entry.fault = f.pre.fault
    if f.pre.fault == "drop" then
      self:log("#%d conn=%d %s %s -> dropped", entry.seq, conn.id, req.method, req.target)
      return false
    elseif f.pre.fault == "500" then
      resp = api.error_response(500, "SYSTEM_ERROR", "系统错误")
    elseif f.pre.fault == "202" then
      resp = { status = 202, body = "" }
    elseif f.pre.fault == "echo" then
      -- the credentials without their scheme, as some gateways quote them
      local credentials = tostring(req.headers.authorization):gsub("^%S+ ", "")
      resp = { status = 500, body = "<html><body><h1>500</h1><p>bad credentials: "
        .. credentials .. "</p></body></html>" }
    else
      resp = api.error_response(429, "FREQUENCY_LIMITED", "频率超限")
      if f.pre.retry_after then extra[1] = { "Retry-After", tostring(f.pre.retry_after) } end
    end
  else
    local ok, res = pcall(api.handle, state, req)
    if ok then
      resp = res
    else
      self:log("internal error: %s", tostring(res))
      resp = api.error_response(500, "SYSTEM_ERROR", "sandbox internal error")
    end
  end
  local post = f.post and f.post.fault
  if post then entry.fault = (entry.fault and entry.fault .. "," or "") .. post end
  -- Processed, then the answer is lost (faults.lua).
  if post == "drop_after" then
    self:log("#%d conn=%d %s %s -> processed (%d), dropped", entry.seq, conn.id, req.method, req.target,
             resp.status)
    entry.status = 0
    return false
  elseif post == "500_after" then
    resp, post = api.error_response(500, "SYSTEM_ERROR", "系统错误"), nil
  end
  local headers, body = api.finish(state, req, resp, post)
  -- Configured round-trip latency for every answer (`latency` in /_sandbox/config), spent
  -- after the answer is signed, as if on the way back: the signing of answers then happens
  -- in the order requests arrive instead of in bursts when many sleeps end together.
  if state.config.latency > 0 then cqueues.sleep(state.config.latency) end
  if f.delay then
    entry.fault = (entry.fault and entry.fault .. "," or "") .. "delay"
    cqueues.sleep(f.delay.seconds)
  end
  for _, h in ipairs(extra) do headers[#headers + 1] = h end
  -- A Date header (shifted by `clock_offset`), which `wxpay doctor` checks clock skew with.
  headers[#headers + 1] = { "Date", os.date("!%a, %d %b %Y %H:%M:%S GMT", os.time() + state.config.clock_offset) }
  entry.status = resp.status
  entry.answered_at = self:wall_time()
  self:log("#%d conn=%d %s %s -> %d%s", entry.seq, conn.id, req.method, req.target,
           resp.status, entry.fault and (" [" .. entry.fault .. "]") or "")
  -- A download cut short (coupons_flows): the full Content-Length, half the bytes, closed.
  if resp.cut_at then
    http.write_response(con, resp.status, headers, body, false, resp.cut_at)
    return false
  end
  return http.write_response(con, resp.status, headers, body, req.keep_alive)
end

-- One control request; a handler that raises is answered 500 (and the connection closed).
function Server:control_request(con, req)
  local ok, resp = pcall(control.handle, self, req)
  if not ok or type(resp) ~= "table" then
    self:log("internal error: %s %s: %s", req.method, req.target, tostring(resp))
    resp, req.keep_alive = { status = 500, body = json.encode{ error = "sandbox internal error" } }, false
  end
  return http.write_response(con, resp.status, { { "Content-Type", "application/json" } },
                             resp.body, req.keep_alive)
end

-- The requests of one connection, until it closes or a request does not keep it alive.
function Server:exchange(con, conn)
  -- Full output buffering, a buffer larger than any API answer, and one flush per
  -- response: otherwise the answer leaves in several TLS records and Nagle plus delayed
  -- ACKs stall each one after the first by ~40 ms.
  con:setmode("b", "bf")
  con:setbufsiz(nil, 1048576)
  local ok = con:starttls(self.tls, HANDSHAKE_TIMEOUT)
  if ok then con:settimeout(IDLE_TIMEOUT) end
  while ok do
    local req, err, status = http.read_request(con)
    if not req then
      if status then
        http.write_response(con, status, { { "Content-Type", "application/json" } },
                            json.encode{ code = "INVALID_REQUEST", message = err }, false)
      end
      break
    end
    local path = req.target:match("^[^?]*")
    if path == "/_sandbox" or path:sub(1, 10) == "/_sandbox/" then
      ok = self:control_request(con, req)
    else
      ok = self:api_request(con, conn, req)
    end
    ok = ok and req.keep_alive
  end
end

-- Serve one connection; whatever happens in it (a raise included), its socket is closed.
function Server:serve(con)
  self.connection_ids = self.connection_ids + 1
  self.counters.connections = self.counters.connections + 1
  local conn = { id = self.connection_ids }
  self.connections[con] = conn
  local ok, err = pcall(self.exchange, self, con, conn)
  if not ok then self:log("connection %d: %s", conn.id, tostring(err)) end
  self.connections[con] = nil
  con:close()
end

--- The startup line: client config, control URL, pid and state directory, as JSON.
-- @treturn string one line of JSON
function Server:startup_line()
  local keys = self.state.keys
  local base_url = string.format("https://%s:%d", self.host, self.port)
  local mode = self.opts.mode or DEFAULTS.mode
  local config = {
    mchid = keys.mchid, serial_no = keys.serial_no,
    private_key_file = keys.files.private_key_file,
    merchant_certificate_file = keys.files.merchant_certificate_file,
    apiv3_key = keys.apiv3_key, base_url = base_url, backup_url = false,
    ca_file = keys.files.ca_file,
  }
  config.apiv2_key = require("wxpay.sandbox.issue_sign").apiv2_key(keys, keys.mchid) -- 发券 signatures
  if mode ~= "public_key" then
    config.platform_certificate_files = { keys.files.platform_certificate_file }
  end
  if mode ~= "certificate" then
    config.wechatpay_public_key_file = keys.files.wechatpay_public_key_file
    config.wechatpay_public_key_id = keys.wechatpay_public_key_id
  end
  return json.encode{ config = config, control_url = base_url .. "/_sandbox",
                      pid = self.opts.pid, dir = keys.dir }
end

--- Bind and listen. Returns the port (useful with port 0).
-- @treturn int port
function Server:listen()
  local files = self.state.keys.files
  local ctx = ssl_context.new("TLS", true)
  ctx:setPrivateKey(openssl_pkey.new(self.state.keys.pem.server_key_file))
  ctx:setCertificate(openssl_x509.new(self.state.keys.pem.server_cert_file))
  self.tls = ctx
  self.files = files
  self.listener = assert(csocket.listen{ host = self.host, port = self.port,
                                         reuseaddr = true, nodelay = true })
  assert(self.listener:listen())
  local _, _, port = self.listener:localname()
  self.port = port
  return port
end

-- Accepting ends only with the server. A failed accept (EMFILE when a burst of connections
-- outruns `ulimit -n`) is logged and tried again after a pause that doubles up to
-- ACCEPT_PAUSE_MAX; meanwhile new connections wait in the listen backlog, and the
-- descriptors come back as the open connections end.
function Server:accept_loop(cq)
  local pause = ACCEPT_PAUSE
  self.listener:onerror(function(_, _, why) return why end) -- errors as values, not raises
  while not self.stopped do
    local con, why = self.listener:accept()
    if con then
      pause = ACCEPT_PAUSE
      cq:wrap(function() self:serve(con) end)
    else
      self:log("accept: %s (trying again in %.2f s)", errno.strerror(why) or tostring(why), pause)
      cqueues.sleep(pause)
      pause = math.min(pause * 2, ACCEPT_PAUSE_MAX)
    end
  end
end

--- Run until `stop()` is called. Extra coroutines (signal and stdin watchers) can be
-- given as functions; they run on the same loop.
-- @tparam[opt] table extra array of functions
function Server:run(extra)
  local cq = cqueues.new()
  self.cq = cq
  cq:wrap(function() self:accept_loop(cq) end)
  for _, fn in ipairs(extra or {}) do cq:wrap(fn) end
  while not self.stopped do
    local ok, err = cq:step(1)
    -- One broken coroutine must not take the whole sandbox down.
    if not ok then self:log("error: %s", tostring(err)) end
  end
  self.listener:close()
  for con in pairs(self.connections) do con:close() end
  self.connections = {}
end

--- Ask `run()` to return after the current step.
function Server:stop()
  self.stopped = true
end

return M
