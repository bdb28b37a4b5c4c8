--- The `lua_shared_dict` backend: `wxpay.store.open("ngx:NAME")`, shared by the workers of
-- one nginx (`lua_shared_dict NAME 1m;` in the http block).
-- Each dict call is atomic across workers; what needs several (the budget, unlock) uses the
-- store's lock (`add` with a TTL). The clock is `ngx.now()` after `ngx.update_time()`
-- (milliseconds). TTLs are the dict's (fractions of a second allowed). `incr` gives its TTL
-- to the key it creates. Writes never evict other keys (`safe_set`, `safe_add`): a full
-- dict makes `set`/`add`/`incr` return `nil, err` ("no memory"), a store error. Give wxpay a
-- dict of its own all the same.
-- This is the backend table `wxpay.store` wraps; use the store's methods, not these.
-- @module wxpay.store.ngx

local M = {}

local Dict = {}
Dict.__index = Dict

local ngx = rawget(_G, "ngx")

--- The backend for `lua_shared_dict name`.
-- @treturn table|nil the backend, or nil, err (kind `config`, field `store`)
function M.new(name)
  local store = require("wxpay.store")
  if type(name) ~= "string" or not name:match("^[%w_]+$") then
    return store.config_error("store", "ngx:NAME needs the name of a lua_shared_dict")
  end
  if not (ngx and ngx.shared) then
    return store.config_error("store", "ngx:" .. name .. " needs OpenResty (ngx.shared)")
  end
  local dict = ngx.shared[name]
  if not dict then
    return store.config_error("store", "ngx:" .. name .. ": no lua_shared_dict " .. name .. " in nginx.conf")
  end
  return setmetatable({ dict = dict, name = name }, Dict)
end

function Dict:get(key)
  local v, err = self.dict:get(key)
  if v == nil and err then return nil, "shared dict " .. self.name .. ": " .. err end
  if v == nil then return nil end
  return tostring(v)
end

-- Writes never evict: `safe_set` / `safe_add` fail with "no memory" where `set` / `add`
-- would push out the least recently used keys (the application's own, in a shared dict);
-- that failure is a store error, like a Redis that cannot answer.
function Dict:set(key, value, ttl)
  local ok, err = self.dict:safe_set(key, value, ttl or 0)
  if not ok then return nil, "shared dict " .. self.name .. ": " .. tostring(err) end
  return true
end

function Dict:add(key, value, ttl)
  local ok, err = self.dict:safe_add(key, value, ttl or 0)
  if ok then return true end
  if err == "exists" then return false end
  return nil, "shared dict " .. self.name .. ": " .. tostring(err)
end

-- `incr` with an initial value may evict: the key is created with `safe_add` first.
function Dict:incr(key, by, ttl)
  local added, aerr = self.dict:safe_add(key, 0, ttl or 0)
  if not added and aerr ~= "exists" then return nil, "shared dict " .. self.name .. ": " .. tostring(aerr) end
  local v, err = self.dict:incr(key, by)
  if not v then return nil, "shared dict " .. self.name .. ": " .. tostring(err) end
  return v
end

function Dict:delete(key)
  self.dict:delete(key)
  return true
end

function Dict.now()
  ngx.update_time()
  return ngx.now()
end

-- ngx.sleep raises in phases that cannot yield; the store turns that into nil, err.
function Dict.sleep(_, s)
  ngx.sleep(s)
  return true
end

return M
