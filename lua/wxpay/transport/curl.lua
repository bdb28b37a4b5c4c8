--- The default transport: libcurl through `wxpay.core`'s HTTP session.
-- One session (one libcurl easy handle) per transport, so consecutive requests of a client
-- reuse the kept-alive connection. The URL and body are handed to libcurl unchanged, which
-- is what keeps the signed bytes equal to the sent bytes.
-- @module wxpay.transport.curl

local core = require("wxpay.core")

local M = {}

--- Create a transport.
-- @tparam[opt] table opts `ca_file`, `proxy`
-- @treturn table a transport with `request(req)` and `close()`
function M.new(opts)
  opts = opts or {}
  local session -- created on first use so `wxpay.new` stays cheap

  local t = {}

  --- Send one request.
  -- @tparam table req `method`, `url`, `headers` (map name -> value), `body` (string|nil),
  --   `timeout`, `connect_timeout` (seconds), `fresh_connect` (true: a new connection, for
  --   requests that must reach the server at most once)
  -- @return `resp` (`status`, `headers` with lower-cased names, `body`) or `nil, err`
  --   (`kind` "network"|"timeout", `message`, `code`, `connected`)
  function t.request(req)
    if not session then
      session = core.http_session{ ca_file = opts.ca_file, proxy = opts.proxy }
    end
    -- Sorted so the wire form is deterministic; the core takes "Name: value" lines.
    local names = {}
    for name in pairs(req.headers or {}) do names[#names + 1] = name end
    table.sort(names)
    local lines = {}
    for i, name in ipairs(names) do lines[i] = name .. ": " .. req.headers[name] end
    return session:request{
      method = req.method,
      url = req.url,
      headers = lines,
      body = req.body,
      timeout = req.timeout,
      connect_timeout = req.connect_timeout,
      fresh_connect = req.fresh_connect,
    }
  end

  --- Connection statistics of the underlying session (`requests`, `connects`).
  function t.stats()
    if not session then return { requests = 0, connects = 0 } end
    return session:stats()
  end

  --- Close the session (idempotent); a later request opens a new one.
  function t.close()
    if session then session:close(); session = nil end
  end

  return setmetatable(t, { __tostring = function() return "wxpay.transport.curl" end })
end

return M
