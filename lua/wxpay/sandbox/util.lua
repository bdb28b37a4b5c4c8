--- Small helpers shared by the sandbox modules: clocks, time formats, query strings.
local rand = require("openssl.rand")

local M = {}

local ok_socket, socket = pcall(require, "socket")

--- Wall clock in seconds with a fractional part (milliseconds when LuaSocket is there).
-- @treturn number
function M.now()
  if ok_socket and socket.gettime then return socket.gettime() end
  return os.time()
end

--- RFC 3339 with milliseconds in China Standard Time, as WeChat Pay writes times.
-- @tparam number t unix seconds (fractional part kept as milliseconds)
-- @treturn string e.g. "2015-05-20T13:29:35.120+08:00"
function M.rfc3339(t)
  local sec = math.floor(t)
  local ms = math.floor((t - sec) * 1000)
  return os.date("!%Y-%m-%dT%H:%M:%S", sec + 8 * 3600) .. string.format(".%03d+08:00", ms)
end

local HEX = "0123456789ABCDEF"

--- Random upper-case hex string from the OpenSSL CSPRNG.
-- @tparam int n number of hex digits
-- @treturn string
function M.random_hex(n)
  local bytes = rand.bytes(math.ceil(n / 2))
  local out = {}
  for i = 1, #bytes do
    local b = bytes:byte(i)
    out[#out + 1] = HEX:sub(b // 16 + 1, b // 16 + 1) .. HEX:sub(b % 16 + 1, b % 16 + 1)
  end
  return table.concat(out):sub(1, n)
end

local ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

--- Random alphanumeric string (unbiased: bytes >= 248 are rejected).
-- @tparam int n length
-- @treturn string
function M.random_alnum(n)
  local out = {}
  while #out < n do
    local bytes = rand.bytes(n)
    for i = 1, #bytes do
      local b = bytes:byte(i)
      if b < 248 and #out < n then
        local j = b % 62 + 1
        out[#out + 1] = ALNUM:sub(j, j)
      end
    end
  end
  return table.concat(out)
end

--- Random decimal digits.
-- @tparam int n length
-- @treturn string
function M.random_digits(n)
  local out = {}
  while #out < n do
    local bytes = rand.bytes(n)
    for i = 1, #bytes do
      local b = bytes:byte(i)
      if b < 250 and #out < n then out[#out + 1] = tostring(b % 10) end
    end
  end
  return table.concat(out)
end

--- Percent-decode one query component ("+" is a space, as form decoders treat it).
-- @tparam string s
-- @treturn string
function M.percent_decode(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

--- Split a request-target into path and decoded query parameters.
-- Only call this after the signature over the raw target has been verified.
-- @tparam string target raw request-target
-- @treturn string path
-- @treturn table name -> value (the first occurrence wins)
function M.parse_target(target)
  local path, query = target:match("^([^?]*)%??(.*)$")
  local params = {}
  for pair in query:gmatch("[^&]+") do
    local name, value = pair:match("^([^=]*)=?(.*)$")
    name = M.percent_decode(name)
    if params[name] == nil then params[name] = M.percent_decode(value) end
  end
  return path, params
end

return M
