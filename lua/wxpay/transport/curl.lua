--- The default transport: libcurl through `wxpay.core`'s HTTP session.
-- One session (one libcurl easy handle) per transport, so consecutive requests of a client
-- reuse the kept-alive connection. The URL and body are handed to libcurl unchanged, which
-- is what keeps the signed bytes equal to the sent bytes. The transport also owns a multi
-- handle for `client.concurrent`, kept between batches so its connection cache (and TLS
-- sessions) are reused. The contract is in `wxpay.transport`.
-- @module wxpay.transport.curl

local core = require("wxpay.core")
local transport = require("wxpay.transport")

local M = {}

local DEFAULT_CONNECTIONS = 64

-- `tr`: `{ opts, session, multi, limit }`; the session and the multi handle are created on
-- first use so `wxpay.new` stays cheap.

local function request(tr, req)
  if not tr.session then
    tr.session = core.http_session{ ca_file = tr.opts.ca_file, proxy = tr.opts.proxy }
  end
  local resp, err = tr.session:request{
    method = req.method,
    url = req.url,
    headers = transport.header_lines(req.headers, true),
    body = req.body,
    timeout = req.timeout,
    connect_timeout = req.connect_timeout,
    fresh_connect = req.fresh_connect,
  }
  if not resp then return nil, transport.from_core(err) end
  return resp
end

-- A larger batch replaces a smaller handle.
local function multi(tr, connections)
  connections = connections or 1
  if tr.multi and tr.limit < connections then tr.multi:close(); tr.multi = nil end
  if not tr.multi then
    local want = math.max(connections, DEFAULT_CONNECTIONS)
    tr.multi = core.http_multi{ ca_file = tr.opts.ca_file, proxy = tr.opts.proxy, max_connections = want }
    tr.limit = want
  end
  return tr.multi
end

local function stats(tr)
  local s = tr.session and tr.session:stats() or { requests = 0, connects = 0 }
  local m = tr.multi and tr.multi:stats() or { requests = 0, connects = 0 }
  s.multi_requests, s.multi_connects = m.requests, m.connects
  return s
end

local function close(tr)
  if tr.session then tr.session:close(); tr.session = nil end
  if tr.multi then tr.multi:close(); tr.multi = nil end
end

--- Create a transport.
-- @tparam[opt] table opts `ca_file`, `proxy`
-- @treturn table a transport with `request(req)` (`req` and the answer as in
--   `wxpay.transport`; errors carry libcurl's `curl_code`), `multi(connections)` (the multi
--   handle, with room for at least that many connections), `stats()` (`requests`,
--   `connects` of the session, `multi_requests`, `multi_connects` of the multi handle) and
--   `close()` (idempotent; later requests open new handles)
function M.new(opts)
  local tr = { opts = opts or {} }
  return setmetatable({
    request = function(req) return request(tr, req) end,
    multi = function(connections) return multi(tr, connections) end,
    stats = function() return stats(tr) end,
    close = function() return close(tr) end,
  }, { __tostring = function() return "wxpay.transport.curl" end })
end

return M
