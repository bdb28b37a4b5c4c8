--- The transport contract, and what every transport shares.
-- A transport is a table of dot-called functions:
--
-- * `request(req) -> resp | nil, err` (required). `req`: `method`, `url`, `headers` (map
--   name -> value), `body` (string|nil), `timeout`, `connect_timeout` (seconds),
--   `fresh_connect` (true: a new connection, never sent twice). `resp`: `status`, `headers`
--   (lower-cased names), `body`. `err`: an error object (`wxpay.errors`) of kind `network` or
--   `timeout`, with `connected` (false: the request cannot have been sent) and, from libcurl,
--   `curl_code`.
-- * `close()` (optional): release connections; a later request opens new ones.
-- * `stats()` (optional): counters, for diagnostics.
-- * `multi(connections)` (optional): a multi handle (`add`, `perform`, `cancel_all`,
--   `stats`, `close`) with room for `connections` transfers; `client.concurrent` drives its
--   requests through it when the transport has one. Only the libcurl transport has it.
-- * `pace()` (optional): called before each request is signed, so a transport sharing an
--   event loop can spread a burst of signatures (the OpenResty one does).
-- @module wxpay.transport

local errors = require("wxpay.errors")

local M = {}

--- A transport error object.
-- @tparam string kind "timeout", anything else becomes "network"
-- @tparam string message what failed (never a secret)
-- @tparam boolean|nil connected false when the request cannot have been sent
-- @tparam[opt] number curl_code libcurl's CURLcode
-- @treturn table the error (`code` is the local `NETWORK_ERROR` / `TIMEOUT`)
function M.error(kind, message, connected, curl_code)
  return errors.new(kind == "timeout" and "timeout" or "network", message,
    { connected = connected, curl_code = curl_code })
end

--- The error of a request held back before it left (`client.concurrent`'s `on_send` returned
-- false): kind "network", code NOT_SENT, `not_sent = true`, not retryable, no failover.
function M.not_sent()
  return { kind = "network", code = "NOT_SENT", message = "not sent: held back by on_send",
           retryable = false, not_sent = true }
end

--- The error object for a failure the C core reported as `{ kind, message, code, connected }`
-- (`code` being libcurl's number).
function M.from_core(err)
  if type(err) ~= "table" then return M.error("network", tostring(err), nil) end
  local curl_code = err.curl_code or (type(err.code) == "number" and err.code or nil)
  return M.error(err.kind, tostring(err.message or err.kind), err.connected, curl_code)
end

local function has_line_break(s)
  return s:find("\r", 1, true) or s:find("\n", 1, true) or s:find("\0", 1, true)
end

-- What would end a header early is the caller's bug: raise (naming the header, never
-- showing its value) before anything is sent.
local function check_header(name, value)
  if type(name) ~= "string" or name == "" or has_line_break(name) then
    error("wxpay.transport: header name " .. string.format("%q", tostring(name))
      .. " must be a non-empty string without CR, LF or NUL", 4)
  end
  if type(value) ~= "string" and type(value) ~= "number" or has_line_break(tostring(value)) then
    error("wxpay.transport: header " .. name .. " must be a string without CR, LF or NUL", 4)
  end
end

--- Header lines for libcurl: `header_lines`, plus `"Content-Type:"` for a POST without a
-- body (支付有礼 terminate), which stops libcurl from adding its form default
-- (`application/x-www-form-urlencoded`): the request goes out with no Content-Type at all.
-- @tparam table req `method`, `headers`, `body`
-- @treturn table array of strings
function M.curl_header_lines(req)
  local lines = M.header_lines(req.headers, true)
  if req.method == "POST" and (req.body == nil or req.body == "") then
    for _, line in ipairs(lines) do
      if line:lower():match("^content%-type:") then return lines end
    end
    lines[#lines + 1] = "Content-Type:"
  end
  return lines
end

--- `"Name: value"` lines, sorted by name so the wire form is deterministic. Raises on a
-- name or value with CR, LF or NUL.
-- @tparam table|nil headers map name -> value, or already an array of `"Name: value"` lines
-- @tparam[opt] boolean core_checks true when the lines go to the C core, which refuses CR,
--   LF and NUL in them itself (raising, sending nothing): names and values are then only
--   checked for their types here
-- @treturn table array of strings
function M.header_lines(headers, core_checks)
  local h = headers or {}
  local lines = {}
  if h[1] ~= nil then -- already lines (the C session's form)
    for i, line in ipairs(h) do
      if type(line) ~= "string" or has_line_break(line) then
        error("wxpay.transport: header " .. i .. " must be a string without CR, LF or NUL", 3)
      end
      lines[i] = line
    end
    return lines
  end
  local names, n = {}, 0
  for name, value in pairs(h) do
    if type(name) ~= "string" then check_header(name, value) end -- raises: names sort as strings
    n = n + 1
    names[n] = name
  end
  table.sort(names)
  for i = 1, n do
    local name = names[i]
    local value = h[name]
    if not core_checks or (type(value) ~= "string" and type(value) ~= "number") then check_header(name, value) end
    lines[i] = name .. ": " .. value
  end
  return lines
end

return M
