--- Redaction and logging: strings from outside code (transports, servers) pass through
-- here before they reach an error or a log line, so no secret of the client leaves it.
-- @module wxpay.redact

local errors = require("wxpay.errors")

local M = {}

-- The metatable of this library's errors: those are built without secrets and kept as is.
local ERROR_MT = getmetatable(errors.new("decode", ""))

local function replace_plain(s, needle, repl)
  if not needle or needle == "" then return s end
  local out, i = {}, 1
  while true do
    local a, b = s:find(needle, i, true)
    if not a then break end
    out[#out + 1] = s:sub(i, a - 1)
    out[#out + 1] = repl
    i = b + 1
  end
  out[#out + 1] = s:sub(i)
  return table.concat(out)
end

-- `v` with the characters base64 has and URLs reserve (+ / =) percent-encoded.
local function url_encoded(v, format)
  return (v:gsub("[+/=]", function(ch) return string.format(format, ch:byte()) end))
end

-- Defence in depth for strings from outside code (transports, servers): remove anything
-- that looks like a secret of this client before it reaches an error or a log line.
-- `sent` lists the Authorization values of the request at hand: a server or proxy may
-- echo one whole, without its scheme, or just the signature.
--- Remove the client's secrets from a string (anything else is turned into one first).
-- @tparam table st the client state (for its APIv3 key)
-- @param s the text
-- @tparam[opt] table sent the Authorization values of the request at hand
-- @treturn string
local function redact(st, s, sent)
  s = tostring(s)
  s = replace_plain(s, st.apiv3_key, "[REDACTED]")
  s = replace_plain(s, st.apiv2_key, "[REDACTED]")
  for _, auth in ipairs(sent or {}) do
    local signature = auth:match('signature="([^"]+)"')
    s = replace_plain(s, auth, "[REDACTED]")
    s = replace_plain(s, auth:match("^%S+ (.*)$"), "[REDACTED]")
    s = replace_plain(s, signature, "[REDACTED]")
    s = replace_plain(s, signature and signature:gsub("/", "\\/"), "[REDACTED]") -- JSON-escaped
    if signature then -- URL-encoded (a query string, a redirect), either case of hex digit
      s = replace_plain(s, url_encoded(signature, "%%%02X"), "[REDACTED]")
      s = replace_plain(s, url_encoded(signature, "%%%02x"), "[REDACTED]")
    end
  end
  s = s:gsub("%-%-%-%-%-BEGIN [%u ]*PRIVATE KEY%-%-%-%-%-.-%-%-%-%-%-END [%u ]*PRIVATE KEY%-%-%-%-%-",
    "[REDACTED KEY]")
  s = s:gsub("%-%-%-%-%-BEGIN [%u ]*PRIVATE KEY%-%-%-%-%-.*$", "[REDACTED KEY]") -- truncated PEM
  s = s:gsub("WECHATPAY2%-SHA256%-RSA2048 [^\r\n]*", "WECHATPAY2-SHA256-RSA2048 [REDACTED]")
  -- An echo cut short (or of another request) has no exact match above: whatever base64
  -- follows `signature=`, quoted, JSON-escaped or bare, goes.
  s = s:gsub('signature=\\"[%w+/=%%]*', 'signature=\\"[REDACTED]')
  s = s:gsub('signature="[^"]*"?', 'signature="[REDACTED]"')
  s = s:gsub("signature=[%w+/%%][%w+/=%%]*", "signature=[REDACTED]")
  return s
end

--- A redacted copy of `v`: strings redacted, tables copied (keys too), other values as is.
local function redact_value(st, v, sent, depth)
  if type(v) == "string" then return redact(st, v, sent) end
  if type(v) ~= "table" or getmetatable(v) == ERROR_MT then return v end
  depth = depth or 0
  if depth > 16 then return "[NESTED TOO DEEPLY]" end
  local out = {}
  for k, x in pairs(v) do
    out[redact_value(st, k, sent, depth + 1)] = redact_value(st, x, sent, depth + 1)
  end
  return out
end

--- Redact an error's texts in place: its message and any string a server put in it
-- (its detail, and fields such as the `serial` an answer named).
local function redact_error(st, e, sent)
  for k, v in pairs(e) do
    if type(v) == "string" then e[k] = redact(st, v, sent) end
  end
  if e.detail ~= nil then e.detail = redact_value(st, e.detail, sent) end
  return e
end

--- Log through the configured logger, if any. Every field is redacted too (copies; the
-- tables given are not changed): an error's text may quote what a server echoed.
local function log(st, level, message, fields, sent)
  if not st.logger then return end
  pcall(st.logger, level, redact(st, message, sent), redact_value(st, fields, sent))
end
M.text, M.value, M.error, M.log = redact, redact_value, redact_error, log

return M
