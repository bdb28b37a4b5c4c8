--- Field checks shared by the coupon products (`wxpay.api.busifavor`, `wxpay.api.favor`).
-- A field is described by a node (`fields.text(1, 21)`, `fields.fen(1)`, …) and an object by
-- a schema: an array of `{ name, node, required }` in the protocol's key order. `check`
-- walks a caller's table against a schema and returns a copy ready for `encode_json` (keys
-- in protocol order, arrays marked as arrays), or `nil` and an `invalid_argument` error
-- whose `field` is the dotted path (`stock_use_rule.max_coupons`, `goods_tag[2]`).
--
-- Rules every node keeps: strings are UTF-8 without 4-byte characters and lengths count
-- Unicode code points (the docs count 字: one Chinese character = one letter); identifiers
-- hold no control characters; numbers are integers (money in fen); times are RFC 3339 with
-- a UTC offset (`Z` or `+08:00`) and optional fractional seconds; unknown fields are
-- refused, so a typo is reported instead of silently dropped.
-- @module wxpay.api.fields

local errors = require("wxpay.errors")

local M = {}

local invalid = errors.invalid_argument
local ARRAY_MT = { __jsontype = "array" }
-- Larger integers are not exact in a double (and in LuaJIT).
local MAX_INTEGER = 2 ^ 53 - 1

--- Count the code points of a UTF-8 string (continuation bytes are not counted).
-- @tparam string s
-- @treturn number
function M.utf8_len(s)
  local n = 0
  for i = 1, #s do
    local c = s:byte(i)
    if c < 0x80 or c >= 0xC0 then n = n + 1 end
  end
  return n
end

-- Node constructors: each returns a description `check_node` understands.

--- An identifier: no control characters, `min`..`max` code points.
function M.id(min, max) return { kind = "id", min = min, max = max } end
--- Display text: like `id`, but line breaks (LF, CR, tab) are allowed.
function M.text(min, max) return { kind = "text", min = min, max = max } end
--- A merchant id: ASCII digits only, `min`..`max` of them.
function M.digits(min, max) return { kind = "digits", min = min, max = max } end
--- An integer count in `min`..`max` (`max` optional).
function M.int(min, max) return { kind = "int", min = min, max = max } end
--- An amount of money in integer fen (分), `min`..`max`.
function M.fen(min, max) return { kind = "int", min = min, max = max, unit = "fen" } end
--- A JSON boolean (never the string "false").
function M.bool() return { kind = "bool" } end
--- One of the strings in `values` (an array, kept for the message).
function M.enum(values)
  local set = {}
  for _, v in ipairs(values) do set[v] = true end
  return { kind = "enum", set = set, text = table.concat(values, ", ") }
end
--- An RFC 3339 time with an offset.
function M.time() return { kind = "time" } end
--- An `https://` URL of at most `max` characters, without spaces or control characters.
function M.url(max) return { kind = "url", max = max } end
--- A request number whose page states the charset `A-Z a-z 0-9 | _ * -`, 1..`max` characters.
function M.request_no(max) return { kind = "request_no", max = max } end
--- A request number whose page states no charset: 1..`max` characters, no control
-- characters (`POS.20240520.0001`, `ORD:123`, `2024/05/20-0001` are accepted).
function M.request_number(max) return { kind = "id", min = 1, max = max } end
--- A nested object described by `schema`.
function M.object(schema) return { kind = "object", schema = schema } end
--- An array of `item` nodes, `min`..`max` items.
function M.array(item, min, max) return { kind = "array", item = item, min = min, max = max } end

--- Unicode's C1 control characters (U+0080-U+009F: NEL, CSI, …) as UTF-8 bytes, a Lua
-- pattern. Wherever ASCII control characters are refused these are too: a terminal obeys
-- U+009B as it obeys ESC [.
M.C1_CONTROL = "\194[\128-\159]"

local function check_string(v, field, node, check_utf8, control)
  if type(v) ~= "string" then return nil, invalid(field, "must be a string, got " .. type(v)) end
  if v:find(control) or v:find(M.C1_CONTROL) then
    return nil, invalid(field, "must not contain control characters")
  end
  local ok, why = check_utf8(v)
  if not ok then return nil, invalid(field, why) end
  local n = M.utf8_len(v)
  if n < (node.min or 1) or (node.max and n > node.max) then
    return nil, invalid(field, string.format("must be %d-%s characters, got %d", node.min or 1,
      tostring(node.max or "n"), n))
  end
  return v
end

--- Check an integer: a Lua number with no fraction, `min`..`max`.
-- @return the number, or nil and an error
function M.integer(v, field, min, max, unit)
  local what = unit and ("an integer amount in " .. unit) or "an integer"
  if type(v) ~= "number" then return nil, invalid(field, "must be " .. what .. ", got " .. type(v)) end
  if v ~= v or math.floor(v) ~= v or v < (min or 0) or v > (max or MAX_INTEGER) then
    return nil, invalid(field, "must be " .. what .. " " .. (min or 0) .. ".." .. (max or "2^53-1"))
  end
  return v
end

--- Parse an RFC 3339 time with an offset (`2015-05-20T13:29:35+08:00`, `…35.120+08:00`,
-- `…Z`) into seconds since the epoch (UTC); fractions are dropped.
-- @tparam string s
-- @return number, or nil and a reason
M.parse_time = require("wxpay.time").parse_rfc3339

local check_object

-- Returns the value to send, or nil and an error.
local function check_node(v, field, node, check_utf8)
  local kind = node.kind
  if kind == "id" then
    return check_string(v, field, node, check_utf8, "[%z\1-\31\127]")
  elseif kind == "text" then
    return check_string(v, field, node, check_utf8, "[%z\1-\8\11\12\14-\31\127]")
  elseif kind == "digits" then
    local s, err = check_string(v, field, node, check_utf8, "[%z\1-\31\127]")
    if s and not s:match("^%d+$") then return nil, invalid(field, "must be digits") end
    return s, err
  elseif kind == "int" then
    return M.integer(v, field, node.min, node.max, node.unit)
  elseif kind == "bool" then
    if type(v) ~= "boolean" then return nil, invalid(field, "must be a boolean, got " .. type(v)) end
    return v
  elseif kind == "enum" then
    if type(v) ~= "string" or not node.set[v] then return nil, invalid(field, "must be one of " .. node.text) end
    return v
  elseif kind == "time" then
    local t, why = M.parse_time(v)
    if not t then return nil, invalid(field, why) end
    return v
  elseif kind == "url" then
    local s, err = check_string(v, field, { min = 1, max = node.max }, check_utf8, "[%z\1-\32\127]")
    if s and not s:match("^https://[^/?#]+") then return nil, invalid(field, "must be an https:// URL") end
    return s, err
  elseif kind == "request_no" then
    if type(v) ~= "string" or #v < 1 or #v > node.max or not v:match("^[A-Za-z0-9|_*%-]+$") then
      return nil, invalid(field, "must be 1-" .. node.max .. " characters of A-Z a-z 0-9 | _ * -")
    end
    return v
  elseif kind == "object" then
    return check_object(v, field .. ".", node.schema, check_utf8)
  elseif kind == "array" then
    if type(v) ~= "table" then return nil, invalid(field, "must be an array, got " .. type(v)) end
    local n, count = #v, 0
    for _ in pairs(v) do count = count + 1 end
    if count ~= n then return nil, invalid(field, "must be an array") end
    if n < (node.min or 0) or (node.max and n > node.max) then
      return nil, invalid(field, string.format("must hold %d-%s items, got %d", node.min or 0,
        tostring(node.max or "n"), n))
    end
    local out = setmetatable({}, ARRAY_MT)
    for i = 1, n do
      local item, err = check_node(v[i], field .. "[" .. i .. "]", node.item, check_utf8)
      if item == nil then return nil, err end
      out[i] = item
    end
    return out
  end
  error("fields: unknown node kind " .. tostring(kind))
end

--- Refuse keys of `t` that are not in `allowed` (a set); `prefix` starts the field name.
-- @return true, or nil and an error
function M.known(t, allowed, prefix)
  for k in pairs(t) do
    if type(k) ~= "string" or not allowed[k] then
      return nil, invalid(prefix .. tostring(k), "unknown field")
    end
  end
  return true
end

-- `prefix` is "" at the top or "name." inside; the copy keeps the schema's key order.
function check_object(t, prefix, schema, check_utf8)
  local field = prefix:sub(1, -2)
  if type(t) ~= "table" then return nil, invalid(field, "must be a table, got " .. type(t)) end
  local allowed, order = {}, {}
  for i, f in ipairs(schema) do allowed[f[1]] = true; order[i] = f[1] end
  local ok, err = M.known(t, allowed, prefix)
  if not ok then return nil, err end
  local out = setmetatable({}, { __jsonorder = order })
  for _, f in ipairs(schema) do
    local name, node, required = f[1], f[2], f[3]
    local v = t[name]
    if v == nil then
      if required then return nil, invalid(prefix .. name, "required") end
    else
      local value
      value, err = check_node(v, prefix .. name, node, check_utf8)
      if value == nil then return nil, err end
      out[name] = value
    end
  end
  return out
end

--- Check `t` against `schema`; returns the copy to send or nil and an error.
-- @tparam table t the caller's table
-- @tparam table schema array of `{ name, node, required }`
-- @tparam function check_utf8 the client's UTF-8 rule (`api.check_utf8`)
-- @tparam[opt] string prefix field prefix, e.g. `"params."`; default none
function M.check(t, schema, check_utf8, prefix)
  return check_object(t, prefix or "", schema, check_utf8)
end

--- Check one value against one node (for positional arguments such as `stock_id`).
-- @return the value, or nil and an error
function M.value(v, field, node, check_utf8)
  if v == nil then return nil, invalid(field, "required") end
  return check_node(v, field, node, check_utf8)
end

--- Check a value that goes into a URL path: as `value`, and not `.` or `..` (a dot segment
-- would be resolved after signing and reach another endpoint). Returns it percent-encoded.
function M.segment(v, field, node, api)
  local s, err = M.value(v, field, node, api.check_utf8)
  if not s then return nil, err end
  if s == "." or s == ".." then return nil, invalid(field, "must not be . or ..") end
  return api.percent_encode(s)
end

return M
