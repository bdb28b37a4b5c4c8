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

-- `v` with the characters base64 has and URLs reserve (+ / =) percent-encoded, with
-- upper- or lower-case hex digits.
local URL_UPPER = { ["+"] = "%2B", ["/"] = "%2F", ["="] = "%3D" }
local URL_LOWER = { ["+"] = "%2b", ["/"] = "%2f", ["="] = "%3d" }
local function url_encoded(v, hex)
  return (v:gsub("[+/=]", hex))
end

-- The literal texts an Authorization value `auth` may be echoed as, appended to `out` in the
-- order they are removed: whole, without its scheme, the signature, JSON-escaped, and
-- URL-encoded (a query string, a redirect) with either case of hex digit.
local function add_needles(out, auth)
  local signature = auth:match('signature="([^"]+)"')
  out[#out + 1] = auth
  out[#out + 1] = auth:match("^%S+ (.*)$")
  out[#out + 1] = signature
  out[#out + 1] = signature and (signature:gsub("/", "\\/")) -- JSON-escaped
  if signature then
    out[#out + 1] = url_encoded(signature, URL_UPPER)
    out[#out + 1] = url_encoded(signature, URL_LOWER)
  end
end

-- The needles of a request are derived once, and only when a text long enough to hold one
-- comes: kept by its `sent` list (weakly), extended when a transmission adds an
-- Authorization value. `min` is a length under which a text cannot hold any needle: each
-- derived one is at least as long as the Authorization value, its part without the scheme,
-- or its signature.
local NEEDLES = setmetatable({}, { __mode = "k" })
local NO_NEEDLES = { seen = 0, count = 0, n = 0, min = math.huge }
-- The shortest text the patterns below can match ("signature=").
local PATTERN_MIN = 10

local function shortest(auth)
  local m = #auth
  local tail, signature = auth:match("^%S+ (.*)$"), auth:match('signature="([^"]+)"')
  if tail and tail ~= "" and #tail < m then m = #tail end
  if signature and #signature < m then m = #signature end
  return m
end

-- The cache of `sent`, its `min` covering every value in it.
local function cache_of(sent)
  if not sent then return NO_NEEDLES end
  local c = NEEDLES[sent]
  if not c then
    c = { seen = 0, count = 0, n = 0, min = math.huge }
    NEEDLES[sent] = c
  end
  while c.seen < #sent do
    c.seen = c.seen + 1
    local m = shortest(sent[c.seen])
    if m > 0 and m < c.min then c.min = m end
  end
  return c
end

-- The needles of every value in `sent`, in order (false for one an echo cannot have).
local function needles_of(c, sent)
  while c.count < c.seen do
    c.count = c.count + 1
    local list = {}
    add_needles(list, sent[c.count])
    for i = 1, 6 do
      local needle = list[i]
      if needle == "" then needle = nil end
      c[c.n + i] = needle or false
    end
    c.n = c.n + 6
  end
  return c
end

local function replace_if_found(s, needle)
  if needle and needle ~= "" and s:find(needle, 1, true) then return replace_plain(s, needle, "[REDACTED]") end
  return s
end

-- The pattern substitutions, each run only where the literal text its pattern starts with
-- (or must contain) is present: what cannot match is not scanned again.
local function redact_patterns(s)
  if s:find("PRIVATE KEY-----", 1, true) then
    s = s:gsub("%-%-%-%-%-BEGIN [%u ]*PRIVATE KEY%-%-%-%-%-.-%-%-%-%-%-END [%u ]*PRIVATE KEY%-%-%-%-%-",
      "[REDACTED KEY]")
    s = s:gsub("%-%-%-%-%-BEGIN [%u ]*PRIVATE KEY%-%-%-%-%-.*$", "[REDACTED KEY]") -- truncated PEM
  end
  if s:find("WECHATPAY2-SHA256-RSA2048 ", 1, true) then
    s = s:gsub("WECHATPAY2%-SHA256%-RSA2048 [^\r\n]*", "WECHATPAY2-SHA256-RSA2048 [REDACTED]")
  end
  -- An echo cut short (or of another request) has no exact match above: whatever base64
  -- follows `signature=`, quoted, JSON-escaped or bare, goes.
  if s:find("signature=", 1, true) then
    s = s:gsub('signature=\\"[%w+/=%%]*', 'signature=\\"[REDACTED]')
    s = s:gsub('signature="[^"]*"?', 'signature="[REDACTED]"')
    s = s:gsub("signature=[%w+/%%][%w+/=%%]*", "signature=[REDACTED]")
  end
  return s
end

-- Defence in depth for strings from outside code (transports, servers): remove anything
-- that looks like a secret of this client before it reaches an error or a log line.
-- `sent` lists the Authorization values of the request at hand: a server or proxy may
-- echo one whole, without its scheme, or just the signature.
--- Remove the client's secrets from a string (anything else is turned into one first).
-- @tparam table st the client state (for its APIv3 keys, current and previous, and APIv2 key)
-- @param s the text
-- @tparam[opt] table sent the Authorization values of the request at hand
-- @treturn string
local function redact(st, s, sent)
  s = tostring(s)
  local c, key, key2 = cache_of(sent), st.apiv3_key, st.apiv2_key
  if key and #s >= #key then s = replace_if_found(s, key) end
  if key2 and #s >= #key2 then s = replace_if_found(s, key2) end
  local prev = st.apiv3_previous and st.apiv3_previous.key -- during an APIv3 key rotation
  if prev and #s >= #prev then s = replace_if_found(s, prev) end
  if #s >= c.min then -- a text that cannot hold one derives no needle
    needles_of(c, sent)
    for i = 1, c.n do
      local needle = c[i]
      if needle then s = replace_if_found(s, needle) end
    end
  end
  if #s < PATTERN_MIN then return s end
  return redact_patterns(s)
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
