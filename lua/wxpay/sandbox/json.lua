--- Private lua-cjson instance for the sandbox.
-- Global cjson switches are never flipped (STYLE.md); slashes are left unescaped so
-- paths and URLs in output stay readable.
local cjson = require("cjson")

local json = cjson.new()
local M = {}

local unescape_slash = true
if json.encode_escape_forward_slash then
  json.encode_escape_forward_slash(false)
  unescape_slash = false
end

--- Encode a Lua value as compact JSON.
-- @param value table|string|number|boolean
-- @treturn string
function M.encode(value)
  local s = json.encode(value)
  if unescape_slash then
    -- Upstream cjson always writes "/" as "\/"; the backslash right before a "/" is
    -- therefore always that escape, so this substitution is exact.
    s = s:gsub("\\/", "/")
  end
  return s
end

--- Decode JSON text.
-- @tparam string text
-- @return the value, or nil and an error message
function M.decode(text)
  local ok, value = pcall(json.decode, text)
  if not ok then return nil, value end
  return value
end

--- Encode a Lua array as a JSON array, also when it is empty (cjson would write `{}`).
-- @tparam table list
-- @treturn string
function M.array(list)
  local parts = {}
  for i, v in ipairs(list) do parts[i] = M.encode(v) end
  return "[" .. table.concat(parts, ",") .. "]"
end

--- The JSON null sentinel.
M.null = json.null

return M
