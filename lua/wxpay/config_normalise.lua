--- Integral numbers of a configuration as integers, before any check reads them.
--
-- On Lua 5.3 and later a JSON decoder may give `6379` as the float `6379.0`, which prints
-- as "6379.0": a Redis port built into an address, a count in a format, a key in a table
-- all go wrong with it. `wxpay.new` (and `wxpay --config FILE.json`) therefore turn every
-- float with an integer value into that integer: at the top level and inside plain data
-- tables (the Redis form of `store`, `qps` patterns, lists of file names). Tables that are
-- not plain data (with a metatable, or holding functions or userdata: a transport, a
-- custom store) are passed through untouched, and the caller's tables are never changed:
-- what changed is a copy. On Lua 5.1 and LuaJIT every number is a double and nothing changes.
-- @module wxpay.config_normalise

local tointeger = math.tointeger
local math_type = math.type

local MAX_DEPTH = 4 -- config tables are shallow; deeper ones are left as they are

local normalise

-- A copy of the plain data table `t` with integral floats as integers, or `t` itself when
-- it is not plain data or nothing in it changes.
local function plain_table(t, depth)
  if depth > MAX_DEPTH or getmetatable(t) ~= nil then return t end
  local copy, changed = {}, false
  for k, v in pairs(t) do
    local kind = type(v)
    if kind == "function" or kind == "userdata" or kind == "thread" then return t end
    local nv = normalise(v, depth + 1)
    if nv ~= v or math_type(nv) ~= math_type(v) then changed = true end
    copy[k] = nv
  end
  return changed and copy or t
end

function normalise(v, depth)
  if type(v) == "number" then
    if math_type(v) == "float" then return tointeger(v) or v end
    return v
  elseif type(v) == "table" then
    return plain_table(v, depth)
  end
  return v
end

--- The configuration with integral floats as integers (a shallow copy when any changed;
-- tables inside are copied only where something in them changed).
-- @tparam table config as given to `wxpay.new`
-- @treturn table the same table, or a copy
return function(config)
  if not tointeger or type(config) ~= "table" then return config end
  local copy, changed = {}, false
  for k, v in pairs(config) do
    local nv = v
    if type(v) == "number" or type(v) == "table" then nv = normalise(v, 1) end
    if nv ~= v or math_type(nv) ~= math_type(v) then changed = true end
    copy[k] = nv
  end
  return changed and setmetatable(copy, getmetatable(config)) or config
end
