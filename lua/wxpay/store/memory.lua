--- The in-process store: `wxpay.store.open("memory", { clock = fn })`.
-- What a client without the config key `store` uses: state for this Lua state only (one
-- process, one nginx worker). Entries expire by `opts.clock` (seconds; default the C core's
-- monotonic clock), which specs replace to drive time. Expired entries are dropped when read
-- and by a sweep every 1,000 writes, so the table does not grow with dead keys.
-- This is the backend table `wxpay.store` wraps; use the store's methods, not these.
-- @module wxpay.store.memory

local M = {}

local Memory = {}
Memory.__index = Memory

local SWEEP_EVERY = 1000

local function default_clock()
  local ok, core = pcall(require, "wxpay.core")
  if ok and core.monotonic then return core.monotonic end
  return os.time
end

--- A new, empty memory backend.
-- @tparam[opt] table opts `clock`: function returning seconds
function M.new(opts)
  return setmetatable({ data = {}, clock = (opts and opts.clock) or default_clock(), writes = 0 }, Memory)
end

function Memory:now()
  return self.clock()
end

-- The live entry under `key`, dropping it when expired.
function Memory:entry(key)
  local e = self.data[key]
  if e and e.expires and e.expires <= self.clock() then
    self.data[key] = nil
    return nil
  end
  return e
end

function Memory:sweep()
  local now = self.clock()
  for k, e in pairs(self.data) do
    if e.expires and e.expires <= now then self.data[k] = nil end
  end
end

function Memory:put(key, value, ttl)
  self.writes = self.writes + 1
  if self.writes % SWEEP_EVERY == 0 then self:sweep() end
  local expires = (ttl and ttl > 0) and self.clock() + ttl or nil
  local e = self.data[key]
  if e then -- rewritten in place: a budget's key is written on every request
    e.value, e.expires = value, expires
  else
    self.data[key] = { value = value, expires = expires }
  end
end

function Memory:get(key)
  local e = self:entry(key)
  return e and e.value or nil
end

function Memory:set(key, value, ttl)
  self:put(key, value, ttl)
  return true
end

function Memory:add(key, value, ttl)
  if self:entry(key) then return false end
  self:put(key, value, ttl)
  return true
end

function Memory:incr(key, by, ttl)
  local e = self:entry(key)
  if not e then
    self:put(key, tostring(by), ttl)
    return by
  end
  local n = tonumber(e.value)
  if not n then return nil, "incr on a non-number" end
  n = n + by
  e.value = tostring(n)
  if not e.expires and ttl and ttl > 0 then e.expires = self.clock() + ttl end
  return n
end

function Memory:delete(key)
  self.data[key] = nil
  return true
end

-- Stores what `update`'s function returned and passes on the rest (no table, no closure).
local function updated(self, key, new, ttl, ...)
  if new ~= nil then self:put(key, new, ttl) end
  return ...
end

-- Nothing else runs between the read and the write: no lock needed.
function Memory:update(key, fn)
  local e = self:entry(key)
  return updated(self, key, fn(e and e.value or nil))
end

-- Compare-and-delete for unlock.
function Memory:cad(key, token)
  local e = self:entry(key)
  if not e or e.value ~= token then return false end
  self.data[key] = nil
  return true
end

-- The memory store serves one Lua state: nothing else can hold a lock while we wait, and a
-- blocking sleep would stall it; waiting is refused.
function Memory.sleep()
  return nil, "the memory store cannot wait"
end

return M
