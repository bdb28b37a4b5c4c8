--- Request preparation: percent-encoding, UTF-8 and header checks, the query builder, the
-- Idempotency-Key rules and the per-call options, and `prepare`, which turns a
-- `client.request` spec into the form the pipeline sends (nothing is sent on bad input).
-- @module wxpay.request

local errors = require("wxpay.errors")
local json = require("wxpay.json")
local MAX_SECONDS = require("wxpay.config").MAX_SECONDS

local M = {}

-- "%XX" for each byte, built once: gsub looks them up instead of formatting each one.
local PERCENT = {}
for b = 0, 255 do PERCENT[string.char(b)] = string.format("%%%02X", b) end

--- Percent-encode every byte outside RFC 3986 unreserved, with upper-case hex.
-- @tparam string s
-- @treturn string
function M.percent_encode(s)
  return (s:gsub("[^A-Za-z0-9%-._~]", PERCENT))
end

--- Check that `s` is UTF-8 made of 1-3 byte characters (the API refuses 4-byte ones).
-- @tparam string s
-- @return `true`, or `nil` and a reason
function M.check_utf8(s)
  local i, n = 1, #s
  local byte = string.byte
  while i <= n do
    local c = byte(s, i)
    if c < 0x80 then
      i = i + 1
    else
      local len, lo, hi
      if c >= 0xC2 and c <= 0xDF then len = 2
      elseif c == 0xE0 then len, lo = 3, 0xA0
      elseif c == 0xED then len, hi = 3, 0x9F -- no UTF-16 surrogates
      elseif c >= 0xE1 and c <= 0xEF then len = 3
      elseif c >= 0xF0 and c <= 0xF4 then
        return nil, "4-byte UTF-8 characters (such as emoji) are not accepted by WeChat Pay"
      else
        return nil, "not valid UTF-8 (byte " .. i .. ")"
      end
      for k = 1, len - 1 do
        local d = byte(s, i + k)
        local dlo, dhi = 0x80, 0xBF
        if k == 1 then dlo, dhi = lo or dlo, hi or dhi end
        if not d or d < dlo or d > dhi then return nil, "not valid UTF-8 (byte " .. i .. ")" end
      end
      i = i + len
    end
  end
  return true
end

local METHODS = { GET = true, POST = true, PUT = true, PATCH = true, DELETE = true }
local REQUEST_KEYS = { method = true, path = true, query = true, body = true, headers = true,
  idempotency_key = true, wechatpay_serial = true, verify = true, timeout = true,
  connect_timeout = true, deadline = true, max_retries = true, on_request = true, route = true }
-- Set by the client, or (Transfer-Encoding, Connection) deciding how the body is framed
-- and the connection kept: a caller's value could desynchronise the transport's framing.
local RESERVED_HEADERS = { authorization = true, host = true, ["content-length"] = true,
  ["content-type"] = true, ["user-agent"] = true, ["transfer-encoding"] = true,
  connection = true }

local function encode_query_value(v, field)
  local t = type(v)
  if t == "string" then
    local ok, why = M.check_utf8(v)
    if not ok then return nil, errors.invalid_argument(field, why) end
    return M.percent_encode(v)
  elseif t == "number" then
    if math.floor(v) ~= v or math.abs(v) >= 2 ^ 53 then
      return nil, errors.invalid_argument(field, "numbers in a query must be integers")
    end
    return string.format("%d", v)
  elseif t == "boolean" then
    return tostring(v)
  elseif t == "table" then
    local ok, s = pcall(json.encode, v)
    if not ok then return nil, errors.invalid_argument(field, s) end
    local u, why = M.check_utf8(s)
    if not u then return nil, errors.invalid_argument(field, why) end
    return M.percent_encode(s)
  end
  return nil, errors.invalid_argument(field, "must be a string, number, boolean or table")
end

--- Build the query string once: an array of `{name, value}` pairs keeps its order, a map is
-- sorted by name. Table values become compact JSON; everything is percent-encoded.
-- @return string (without `?`), or nil and an `invalid_argument` error
function M.build_query(query)
  if query == nil then return "" end
  if type(query) ~= "table" then return nil, errors.invalid_argument("query", "must be a table") end
  local items = {}
  if #query > 0 then
    for i, pair in ipairs(query) do
      if type(pair) ~= "table" or type(pair[1]) ~= "string" then
        return nil, errors.invalid_argument("query[" .. i .. "]", "must be a {name, value} pair")
      end
      items[#items + 1] = pair
    end
  else
    for k, v in pairs(query) do
      if type(k) ~= "string" then return nil, errors.invalid_argument("query", "names must be strings") end
      items[#items + 1] = { k, v }
    end
    table.sort(items, function(a, b) return a[1] < b[1] end)
  end
  local parts = {}
  for _, pair in ipairs(items) do
    local name, value = pair[1], pair[2]
    if value ~= nil then
      local enc, err = encode_query_value(value, "query." .. name)
      if not enc then return nil, err end
      parts[#parts + 1] = M.percent_encode(name) .. "=" .. enc
    end
  end
  return table.concat(parts, "&")
end

local function check_header_value(field, v)
  if type(v) ~= "string" then return nil, errors.invalid_argument(field, "must be a string") end
  if v:find("[%z\r\n]") then return nil, errors.invalid_argument(field, "must not contain CR, LF or NUL") end
  return true
end

--- Validate a partnerships Idempotency-Key (`^[A-Za-z0-9|_*-]{1,48}$`, as the partnerships
-- pages state: docs/protocol.md#idempotency-key).
-- @return true, or nil and an `invalid_argument` error for `field`
function M.check_idempotency_key(key, field)
  if type(key) ~= "string" then return nil, errors.invalid_argument(field, "must be a string") end
  if #key < 1 or #key > 48 or not key:match("^[A-Za-z0-9|_*%-]+$") then
    return nil, errors.invalid_argument(field, "must be 1-48 characters of A-Z a-z 0-9 | _ * -")
  end
  return true
end

-- Longest Idempotency-Key `client.request` sends: no page gives a limit above 48 and
-- 128 leaves room for composite keys.
local MAX_REQUEST_KEY = 128

--- Validate the Idempotency-Key of a `client.request` call (any endpoint): 1-128 visible
-- ASCII characters. The docs' class ends in "等" (and so on), so only what cannot be a key
-- in a header (spaces, control characters, non-ASCII bytes) is refused here.
-- @return true, or nil and an `invalid_argument` error for `field`
function M.check_request_idempotency_key(key, field)
  if type(key) ~= "string" then return nil, errors.invalid_argument(field, "must be a string") end
  if #key < 1 or #key > MAX_REQUEST_KEY or key:find("[^\33-\126]") then
    return nil, errors.invalid_argument(field, "must be 1-" .. MAX_REQUEST_KEY
      .. " visible ASCII characters (no spaces or control characters)")
  end
  return true
end

--- Validate the per-call options shared by every service function: `timeout`,
-- `connect_timeout`, `deadline` (positive seconds, at most 86400), `max_retries` (integer >= 0),
-- `verify` (boolean), `wechatpay_serial` (string).
-- @tparam table t the table holding them
-- @tparam string prefix prefix for field names in errors (e.g. `"opts."`)
-- @return true, or nil and an `invalid_argument` error
function M.check_call_options(t, prefix)
  for _, name in ipairs({ "timeout", "connect_timeout", "deadline" }) do
    local v = t[name]
    if v ~= nil and (type(v) ~= "number" or v ~= v or v <= 0 or v > MAX_SECONDS) then
      return nil, errors.invalid_argument(prefix .. name, "must be a positive number of seconds, at most "
        .. MAX_SECONDS)
    end
  end
  local mr = t.max_retries
  if mr ~= nil and (type(mr) ~= "number" or mr < 0 or mr > 20 or math.floor(mr) ~= mr) then
    return nil, errors.invalid_argument(prefix .. "max_retries", "must be an integer 0..20")
  end
  if t.verify ~= nil and type(t.verify) ~= "boolean" then
    return nil, errors.invalid_argument(prefix .. "verify", "must be a boolean")
  end
  if t.wechatpay_serial ~= nil then
    local ok, e = check_header_value(prefix .. "wechatpay_serial", t.wechatpay_serial)
    if not ok then return nil, e end
  end
  if t.on_request ~= nil and type(t.on_request) ~= "function" then
    return nil, errors.invalid_argument(prefix .. "on_request", "must be a function")
  end
  return true
end

-- Names a product call's `opts.headers` may not set: the client's own, and those with an
-- option of their own (`idempotency_key`, `wechatpay_serial`).
local OPTION_HEADERS = { ["idempotency-key"] = "idempotency_key", ["wechatpay-serial"] = "wechatpay_serial" }

--- Validate the extra request headers of a product call (`opts.headers`, such as
-- `Accept-Language`): valid names, values without CR, LF or NUL, none of the headers the
-- client sets, and neither Idempotency-Key nor Wechatpay-Serial (options of their own).
-- @tparam table|nil headers map name -> value
-- @tparam string field the field name for errors (e.g. `"opts.headers"`)
-- @return a copy of the map (or nil when none), or nil and an `invalid_argument` error
function M.check_extra_headers(headers, field)
  if headers == nil then return nil end
  if type(headers) ~= "table" then return nil, errors.invalid_argument(field, "must be a table") end
  local out = {}
  for name, value in pairs(headers) do
    local f = field .. "." .. tostring(name)
    if type(name) ~= "string" or not name:match("^[%w!#$%%&'*+.^_`|~%-]+$") then
      return nil, errors.invalid_argument(f, "is not a valid header name")
    end
    if RESERVED_HEADERS[name:lower()] then return nil, errors.invalid_argument(f, "is set by the client") end
    if OPTION_HEADERS[name:lower()] then
      return nil, errors.invalid_argument(f, "give it as the " .. OPTION_HEADERS[name:lower()] .. " option")
    end
    local ok, e = check_header_value(f, value)
    if not ok then return nil, e end
    out[name] = value
  end
  return out
end

-- An Idempotency-Key given as a header is the key of the request: same format as the
-- option, and it must not contradict the option (meta would report the other one).
local function idempotency_header(field, value, option)
  local ok, e = M.check_request_idempotency_key(value, field)
  if not ok then return nil, e end
  if option ~= nil and option ~= value then
    return nil, errors.invalid_argument(field, "conflicts with idempotency_key (give the key once)")
  end
  return true
end

-- Longest request target (path plus query) sent; servers commonly refuse longer ones.
local MAX_TARGET = 8192

-- A `.` or `..` segment (also as `%2e`) would be resolved by libcurl or a proxy after the
-- signature was made over the unresolved path, and could reach another endpoint.
local function check_segments(path)
  for segment in path:gmatch("/([^/]*)") do
    local plain = segment:gsub("%%2[eE]", ".")
    if plain == "." or plain == ".." then
      return nil, "must not contain a \"" .. segment .. "\" segment (dot segments are refused)"
    end
  end
  return true
end


-- Method, path and query checked; returns the method (upper case) and the request target.
local function check_target(spec)
  local method = spec.method
  if type(method) ~= "string" or not METHODS[method:upper()] then
    return nil, errors.invalid_argument("method", "must be GET, POST, PUT, PATCH or DELETE")
  end
  method = method:upper()
  local path = spec.path
  if type(path) ~= "string" or not path:match("^/[A-Za-z0-9%-._~!$&'()*+,;=:@/%%]*$")
     or path:find("%%%X") or path:find("%%.%X") or path:find("%%.?$") then
    return nil, errors.invalid_argument("path", "must start with / and be percent-encoded (no query or fragment)")
  end
  local ok_path, bad_segment = check_segments(path)
  if not ok_path then return nil, errors.invalid_argument("path", bad_segment) end
  if #path > MAX_TARGET then
    return nil, errors.invalid_argument("path", "longer than " .. MAX_TARGET .. " bytes")
  end
  local query, err = M.build_query(spec.query)
  if not query then return nil, err end
  local target = query == "" and path or (path .. "?" .. query)
  if #target > MAX_TARGET then
    return nil, errors.invalid_argument("query", "makes the request target (path plus query) longer than "
      .. MAX_TARGET .. " bytes")
  end
  return method, target
end

-- The body as sent: a table encoded once, a string as is. Returns the body (false for
-- none), or nil and an error.
local function encode_body(spec, method)
  local body = spec.body
  if type(body) == "table" then
    local ok, s = pcall(json.encode, body)
    if not ok then return nil, errors.invalid_argument("body", s) end
    body = s
  elseif body ~= nil and type(body) ~= "string" then
    return nil, errors.invalid_argument("body", "must be a table or a JSON string")
  end
  if body then
    if method == "GET" then return nil, errors.invalid_argument("body", "GET requests carry no body") end
    local ok, why = M.check_utf8(body)
    if not ok then return nil, errors.invalid_argument("body", why) end
  end
  return body or false
end

-- Header names are case-insensitive: two spellings of one name in a table would leave
-- the header sent to `pairs` order. Returns nil, or an error naming one of the two.
local function case_variant(spec_headers)
  local seen = {}
  for name in pairs(spec_headers) do
    if type(name) == "string" then
      local other = seen[name:lower()]
      if other then
        local first, second = other, name
        if second < first then first, second = second, first end
        return errors.invalid_argument("headers." .. first, "is given twice, also as " .. second)
      end
      seen[name:lower()] = name
    end
  end
end

-- Add the caller's `headers` to `headers`, replacing a default of the same name whatever
-- its case. Returns the Idempotency-Key in force, or nil and an error.
local function add_caller_headers(spec, headers, idempotency_key)
  local dup = case_variant(spec.headers)
  if dup then return nil, dup end
  for name, value in pairs(spec.headers) do
    local field = "headers." .. tostring(name)
    if type(name) ~= "string" or not name:match("^[%w!#$%%&'*+.^_`|~%-]+$") then
      return nil, errors.invalid_argument(field, "is not a valid header name")
    end
    if RESERVED_HEADERS[name:lower()] then
      return nil, errors.invalid_argument(field, "is set by the client")
    end
    local ok, e = check_header_value(field, value)
    if not ok then return nil, e end
    if name:lower() == "idempotency-key" then
      ok, e = idempotency_header(field, value, spec.idempotency_key)
      if not ok then return nil, e end
      idempotency_key = value
    end
    for k in pairs(headers) do
      if k:lower() == name:lower() then headers[k] = nil end
    end
    headers[name] = value
  end
  return idempotency_key or false
end

-- The request headers and the Idempotency-Key in force (false for none), or nil and an error.
local function build_headers(spec, body, user_agent)
  local headers = { Accept = "application/json", ["User-Agent"] = user_agent }
  if body then headers["Content-Type"] = "application/json" end
  local idempotency_key = spec.idempotency_key
  if idempotency_key ~= nil then
    local ok, e = M.check_request_idempotency_key(idempotency_key, "idempotency_key")
    if not ok then return nil, e end
    headers["Idempotency-Key"] = idempotency_key
  end
  if spec.headers ~= nil then
    if type(spec.headers) ~= "table" then return nil, errors.invalid_argument("headers", "must be a table") end
    local err
    idempotency_key, err = add_caller_headers(spec, headers, idempotency_key)
    if idempotency_key == nil then return nil, err end
  end
  return headers, idempotency_key or false
end

--- Turn a `client.request` spec into the prepared form the pipeline takes.
-- @tparam table spec the caller's request (see `client.request`)
-- @tparam string user_agent the client's User-Agent
-- @return the prepared request, or nil and an `invalid_argument` error (nothing sent)
function M.prepare(spec, user_agent)
  for k in pairs(spec) do
    if not REQUEST_KEYS[k] then return nil, errors.invalid_argument(tostring(k), "unknown request field") end
  end
  local method, target = check_target(spec)
  if not method then return nil, target end
  local body, berr = encode_body(spec, method)
  if body == nil then return nil, berr end
  body = body or nil
  local headers, idempotency_key = build_headers(spec, body, user_agent)
  if not headers then return nil, idempotency_key end
  local wechatpay_serial = spec.wechatpay_serial
  for k, v in pairs(headers) do -- a Wechatpay-Serial header is the same as the option
    if k:lower() == "wechatpay-serial" then headers[k] = nil; wechatpay_serial = v end
  end
  local ok, oerr = M.check_call_options(spec, "")
  if not ok then return nil, oerr end
  if spec.route ~= nil and (type(spec.route) ~= "string" or not spec.route:match("^/[^?#%c]*$")) then
    return nil, errors.invalid_argument("route", "must be a path template starting with / (no query)")
  end
  return {
    method = method, target = target, body = body, headers = headers,
    idempotency_key = idempotency_key or nil, verify = spec.verify, wechatpay_serial = wechatpay_serial,
    timeout = spec.timeout, connect_timeout = spec.connect_timeout,
    deadline = spec.deadline, max_retries = spec.max_retries,
    on_request = spec.on_request, route = spec.route,
  }
end

return M
