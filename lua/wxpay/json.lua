--- JSON for the wire: a deterministic encoder (what is signed must be reproducible byte for
-- byte) and a private lua-cjson decoder. Used by the client, notify and the CLI; the
-- encoding rules are in docs/protocol.md#body-line.
-- @module wxpay.json

local cjson = require("cjson")

local M = {}

local json = cjson.new() -- private instance: global cjson switches stay untouched

-- The escapes, built once for gsub to look up: the quote, the backslash and the ASCII control
-- bytes (`%c`: 0-31 and 127). A byte >= 128 that a non-C locale calls a control byte has no
-- entry and is kept as is (it is part of a UTF-8 character).
local JSON_ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }
for b = 0, 127 do
  local c = string.char(b)
  if c:find("%c") and not JSON_ESCAPES[c] then JSON_ESCAPES[c] = string.format("\\u%04x", b) end
end

local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', JSON_ESCAPES) .. '"'
end

local function json_value(v, depth, out)
  if depth > 64 then error("nested too deeply", 0) end
  local t = type(v)
  if t == "string" then
    out[#out + 1] = json_string(v)
  elseif t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then error("cannot encode NaN or infinity", 0) end
    if (math.type and math.type(v) == "integer") or (math.floor(v) == v and math.abs(v) < 2 ^ 53) then
      out[#out + 1] = string.format("%d", v)
    else
      out[#out + 1] = string.format("%.17g", v)
    end
  elseif t == "boolean" then
    out[#out + 1] = tostring(v)
  elseif t == "table" then
    local mt = getmetatable(v)
    local n, count = #v, 0
    for _ in pairs(v) do count = count + 1 end
    if (count == n and n > 0) or (mt and mt.__jsontype == "array") then
      out[#out + 1] = "["
      for i = 1, n do
        if i > 1 then out[#out + 1] = "," end
        json_value(v[i], depth + 1, out)
      end
      out[#out + 1] = "]"
      return
    end
    -- Objects: keys named in __jsonorder first (protocol order), then the rest sorted, so
    -- equal tables always encode to equal bytes (idempotent replays need that).
    local keys, seen = {}, {}
    for _, k in ipairs(mt and mt.__jsonorder or {}) do
      if v[k] ~= nil then keys[#keys + 1] = k; seen[k] = true end
    end
    local rest = {}
    for k in pairs(v) do
      if type(k) ~= "string" then error("object keys must be strings (mixed table?)", 0) end
      if not seen[k] then rest[#rest + 1] = k end
    end
    table.sort(rest)
    for _, k in ipairs(rest) do keys[#keys + 1] = k end
    out[#out + 1] = "{"
    for i, k in ipairs(keys) do
      if i > 1 then out[#out + 1] = "," end
      out[#out + 1] = json_string(k)
      out[#out + 1] = ":"
      json_value(v[k], depth + 1, out)
    end
    out[#out + 1] = "}"
  else
    -- includes cjson.null: WeChat Pay forbids null, absent fields are omitted instead
    error("cannot encode a " .. t .. " value (omit absent fields instead of null)", 0)
  end
end

--- Encode a Lua value as compact JSON, deterministically.
-- Object keys listed in the metatable field `__jsonorder` come first in that order, the
-- others follow sorted; `/` is not escaped; a table whose metatable has
-- `__jsontype = "array"` encodes as an array even when empty. Raises on values JSON
-- cannot hold (functions, NaN, null).
-- @param v
-- @treturn string
function M.encode(v)
  local out = {}
  json_value(v, 0, out)
  return table.concat(out)
end

-- lua-cjson reads every number as a float; where the interpreter has integers (5.3+),
-- integral ones below 2^53 in magnitude become integers (`total_count` is 66, not 66.0).
-- From 2^53 on a double no longer holds every integer (9007199254740993 arrives as ...992):
-- such a number stays a float rather than pass for an exact integer. LuaJIT and 5.1 have
-- one number type: nothing to do.
local math_tointeger = math.tointeger
local EXACT = 2 ^ 53
local tointeger = math_tointeger and function(x)
  if x > -EXACT and x < EXACT then return math_tointeger(x) end
end

local function integers(v)
  for k, x in pairs(v) do
    if type(x) == "number" then
      local i = tointeger(x)
      if i then v[k] = i end
    elseif type(x) == "table" then
      integers(x)
    end
  end
  return v
end

--- Decode JSON with the module's private lua-cjson instance. On Lua 5.3+ integral numbers
-- below 2^53 in magnitude are Lua integers (larger ones, whose digits a double may have
-- lost, stay floats).
-- @treturn any value, or `nil` and a reason
function M.decode(s)
  local ok, v = pcall(json.decode, s)
  if not ok then return nil, tostring(v) end
  if tointeger then
    if type(v) == "table" then return integers(v) end
    if type(v) == "number" then return tointeger(v) or v end
  end
  return v
end

return M
