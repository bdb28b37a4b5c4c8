--- Shared state for every client that uses the same store: `wxpay.store.open(spec, opts)`.
--
--     local store = require("wxpay.store")
--     local s = assert(store.open("ngx:wxpay"))           -- lua_shared_dict wxpay 1m;
--     local s = assert(store.open("redis://10.0.0.5:6379/2"))
--     local s = assert(store.open({ host = "10.0.0.5", port = 6379, password = pw, timeout = 0.5 }))
--     local m = s:scope(mchid)     -- keys become "wxpay:<mchid>:<key>"
--     m:set("certs", blob, 3600); m:get("certs")
--
-- `spec` is the config key `store`:
--
-- * nil or `"memory"`: in this process (`wxpay.store.memory`), what the client does today;
-- * `"ngx:NAME"`: the `lua_shared_dict NAME` of this nginx, shared by its workers;
-- * `"redis://HOST:PORT[/DB]"` or `{ host, port, db, password, timeout, pool_size,
--   keepalive }`: a Redis server (`resty.redis` under OpenResty, `lua-redis` in plain Lua);
-- * a table with the functions `get`, `set`, `add`, `incr`, `delete`, called as methods
--   (`t:get(key)`), with the contract below. A raise in one of them becomes `nil, err`.
--
-- Every store (and every scope of one) has these methods. Keys and values are strings; TTLs
-- are seconds (fractions allowed; nil or 0: no expiry). None raises: a store that cannot
-- answer returns `nil, err` (a wxpay error, kind `network`, code `STORE_UNAVAILABLE`), and
-- bad arguments return `nil, err` of kind `invalid_argument` naming the field.
--
-- * `get(key)` → value, or nil when absent (no second value), or nil, err;
-- * `set(key, value, ttl)` → true | nil, err;
-- * `add(key, value, ttl)` → true if added, false if the key was present | nil, err;
-- * `incr(key, by, ttl)` → the new number (an absent key counts as 0; `ttl` is given to a key
--   that has none, i.e. on creation) | nil, err;
-- * `delete(key)` → true | nil, err;
-- * `now()` → the store's clock in seconds (the memory store's injectable `opts.clock`,
--   `ngx.now()` in nginx; Redis scripts use Redis `TIME`);
-- * `scope(mchid)` → the same store with keys under `wxpay:<mchid>:` (one merchant's state).
--
-- `opts` (all optional): `clock` (memory store: a function returning seconds), `sleep` (a
-- function(seconds) for lock spins in custom stores; default `wxpay.core.sleep`),
-- `driver` (Redis: `"resty"` or `"socket"`, default by whether `ngx` is present).
--
-- For the certificate download, `lock(store, key, ttl)` / `unlock(store, key, token)` give a
-- lock that expires, so a dead holder blocks the rest for `ttl` at most, and
-- `renew(store, key, token, ttl)` lets a live holder keep a short one (a lease); the rate
-- budget is in `wxpay.store.budget`.
--
-- Wiring it into a client: open once per client (`open(config.store)`; an error is a config
-- error as is), keep `s:scope(config.mchid)`, and put everything for that merchant under it:
-- the certificates as the raw `/v3/certificates` answer (body and the signature headers, so a
-- reader verifies and decrypts it with the APIv3 key before use) under e.g. `certs`, taken
-- with `lock(m, "certs:lock", ttl)` while downloading; the budget under `qps:<pattern>`.
-- Any `nil, err` from the store means: do it locally this time (download alone, use
-- `wxpay.concurrent.new_limiter`) and warn once.
-- @module wxpay.store

local errors = require("wxpay.errors")

local M = {}

local Store = {}
Store.__index = Store

local unpack = table.unpack or unpack -- luacheck: ignore 143
local MAX_KEY = 512
local OPS = { "get", "set", "add", "incr", "delete" }

local function bad(field, message)
  return nil, errors.new("invalid_argument", message, { field = field })
end

local function config_error(field, message)
  return nil, errors.new("config", "store: " .. message, { field = field })
end

--- The error a store operation returns when the backend cannot answer.
-- @tparam string message what failed (never a value or a password)
-- @treturn table a wxpay error of kind `network`, code `STORE_UNAVAILABLE`
function M.unavailable(message)
  return errors.new("network", "store: " .. tostring(message), { code = "STORE_UNAVAILABLE" })
end

local function pack(...)
  return { n = select("#", ...), ... }
end

local function check_key(key)
  if type(key) ~= "string" or key == "" or #key > MAX_KEY then
    return bad("key", "store key must be a non-empty string of at most " .. MAX_KEY .. " bytes")
  end
  return true
end

local function check_ttl(ttl)
  if ttl ~= nil and (type(ttl) ~= "number" or ttl ~= ttl or ttl < 0 or ttl == math.huge) then
    return bad("ttl", "store ttl must be a number of seconds >= 0")
  end
  return true
end

local function check_value(value)
  if type(value) ~= "string" then return bad("value", "store value must be a string") end
  return true
end

-- What `guarded` returns for pcall's results, as many as the driver returned (no table: the
-- rate budget runs this per request).
local function settled(ok, ...)
  if not ok then return nil, M.unavailable((...)) end
  local first, e = ...
  if first == nil and e ~= nil and type(e) ~= "table" then return nil, M.unavailable(e) end
  return ...
end

-- Runs a driver function; a raise or a non-wxpay error string becomes nil, err.
local function guarded(fn, ...)
  return settled(pcall(fn, ...))
end

local function new_store(driver, prefix, kind)
  return setmetatable({ driver = driver, prefix = prefix or "", kind = kind }, Store)
end

--- The key as the backend sees it (with this scope's prefix).
function Store:key(key)
  return self.prefix .. key
end

--- Value under `key`, nil when absent. `limit` (optional, seconds): the caller has no more
-- time than this (Redis: the operation ends within it, or within the store's `timeout`).
function Store:get(key, limit)
  local ok, err = check_key(key)
  if not ok then return nil, err end
  return guarded(self.driver.get, self.driver, self.prefix .. key, limit)
end

--- Store `value` under `key` for `ttl` seconds.
function Store:set(key, value, ttl)
  local ok, err = check_key(key)
  if ok then ok, err = check_value(value) end
  if ok then ok, err = check_ttl(ttl) end
  if not ok then return nil, err end
  return guarded(self.driver.set, self.driver, self.prefix .. key, value, ttl)
end

--- Store `value` under `key` only if absent: true if added, false if present.
function Store:add(key, value, ttl)
  local ok, err = check_key(key)
  if ok then ok, err = check_value(value) end
  if ok then ok, err = check_ttl(ttl) end
  if not ok then return nil, err end
  local added, e = guarded(self.driver.add, self.driver, self.prefix .. key, value, ttl)
  if added == nil then return nil, e end
  return added and true or false
end

--- Add `by` to the number under `key` (absent: 0); `ttl` applies to a key without one.
function Store:incr(key, by, ttl)
  local ok, err = check_key(key)
  if ok and (type(by) ~= "number" or by ~= by or by == math.huge or by == -math.huge) then
    ok, err = bad("by", "store incr step must be a finite number")
  end
  if ok then ok, err = check_ttl(ttl) end
  if not ok then return nil, err end
  local v, e = guarded(self.driver.incr, self.driver, self.prefix .. key, by, ttl)
  if v == nil then return nil, e end
  local n = tonumber(v)
  if not n then return nil, M.unavailable("incr answered a non-number") end
  return n
end

--- Remove `key` (absent is fine).
function Store:delete(key)
  local ok, err = check_key(key)
  if not ok then return nil, err end
  local done, e = guarded(self.driver.delete, self.driver, self.prefix .. key)
  if done == nil then return nil, e end
  return true
end

--- The store's clock, in seconds.
function Store:now()
  return self.driver:now()
end

--- The same store, with keys under `wxpay:<mchid>:`.
-- @tparam string mchid the merchant id (letters, digits, `_`, `-`)
-- @treturn table|nil the scoped store, or nil, err (`invalid_argument`, field `mchid`)
function Store:scope(mchid)
  if type(mchid) ~= "string" or not mchid:match("^[%w_%-]+$") or #mchid > 64 then
    return bad("mchid", "mchid must be 1..64 letters, digits, '_' or '-'")
  end
  return new_store(self.driver, self.prefix .. "wxpay:" .. mchid .. ":", self.kind)
end

--- Wait `seconds` (lock spins): the driver's sleep (ngx.sleep under nginx), else opts.sleep.
-- @treturn boolean|nil true, or nil, err when this context cannot wait
function Store:sleep(seconds)
  return guarded(self.driver.sleep, self.driver, seconds)
end

---------------------------------------------------------------------------------------------
-- Atomic read-modify-write, for the budget and the lock
---------------------------------------------------------------------------------------------

local LOCK_TTL = 0.05   -- an update holds the lock for microseconds; a dead holder for 50 ms
local LOCK_SPINS = 200  -- at 1 ms each: give up (nil, err) after about 0.2 s

local function token()
  local ok, core = pcall(require, "wxpay.core")
  if ok and core.nonce then return core.nonce(24) end
  return tostring(math.random(1, 2^30)) .. tostring(math.random(1, 2^30))
end

--- Replace the value under `key` by `fn(old)` atomically for everyone sharing the store.
-- `fn(old)` returns `new, ttl, ...`; `update` returns `...`. Backends with a native atomic
-- form use it (the memory store: plain Lua; Redis does not use this, it runs scripts);
-- others (shared dict, custom) hold `key .. ":lock"` (an `add` with a 50 ms TTL) meanwhile,
-- and release it with `unlock` (only while it still holds their token).
-- `fn` must not yield or fail: it runs inside the lock.
-- @return `fn`'s extra results, or nil, err
function Store:update(key, fn)
  local ok, err = check_key(key)
  if not ok then return nil, err end
  local d, full = self.driver, self.prefix .. key
  if d.update then return guarded(d.update, d, full, fn) end
  local lock, mine = full .. ":lock", token()
  for i = 1, LOCK_SPINS + 1 do
    local added, e = guarded(d.add, d, lock, mine, LOCK_TTL)
    if added == nil then return nil, e end
    if added then break end
    if i > LOCK_SPINS then return nil, M.unavailable("lock " .. key .. " stayed busy") end
    local slept, se = self:sleep(0.001)
    if not slept then return nil, se end
  end
  -- Released by token: an update slower than LOCK_TTL must not delete the next holder's lock.
  local function release() M.unlock(self, key .. ":lock", mine) end
  local old, e = guarded(d.get, d, full)
  if old == nil and e then release(); return nil, e end
  local res = pack(pcall(fn, old))
  if not res[1] then release(); return nil, M.unavailable(res[2]) end
  local stored, se = true, nil
  if res[2] ~= nil then stored, se = guarded(d.set, d, full, res[2], res[3]) end
  release()
  if not stored then return nil, se end
  return unpack(res, 4, res.n)
end

--- Run a Redis script on `keys` (prefixed) with `args`, within `limit` seconds (optional, as
-- for `get`); nil, err when the backend has none.
-- @treturn table|string|number|nil the script's answer, or nil, err
function Store:eval(script, keys, args, limit)
  if not self.driver.eval then return nil, M.unavailable("this store runs no scripts") end
  local full = {}
  for i = 1, #keys do full[i] = self.prefix .. keys[i] end
  return guarded(self.driver.eval, self.driver, script, full, args or {}, limit)
end

--- Whether the store runs Redis scripts (`Store:eval`).
function Store:scripted()
  return self.driver.eval ~= nil
end

---------------------------------------------------------------------------------------------
-- The lock for one download among everything sharing the store
---------------------------------------------------------------------------------------------

-- Deletes KEYS[1] only if it still holds ARGV[1] (the holder's token).
local UNLOCK_SCRIPT = [[
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
]]

--- Take the lock `key` for at most `ttl` seconds.
-- @treturn string|boolean|nil a token for `unlock` when taken, false when someone holds it,
--   or nil, err when the store is down
function M.lock(store, key, ttl)
  if type(ttl) ~= "number" or ttl ~= ttl or ttl <= 0 or ttl == math.huge then
    return bad("ttl", "lock ttl must be a positive number of seconds")
  end
  local mine = token()
  local added, err = store:add(key, mine, ttl)
  if added == nil then return nil, err end
  return added and mine or false
end

--- Release the lock `key` if `token` still holds it (an expired lock taken by another is
-- left alone). In Redis a compare-and-delete script; in the memory store plain Lua; in a
-- shared dict or a custom store a get then a delete (not one step: a lock that expires
-- between the two, microseconds apart, can be deleted).
-- @treturn boolean|nil true if released, false if no longer ours, or nil, err
function M.unlock(store, key, mine)
  if type(mine) ~= "string" then return bad("token", "unlock needs the token lock returned") end
  local ok, err = check_key(key)
  if not ok then return nil, err end
  if store:scripted() then
    local n, e = store:eval(UNLOCK_SCRIPT, { key }, { mine })
    if n == nil then return nil, e end
    return tonumber(n) == 1
  end
  local d = store.driver
  if d.cad then return guarded(d.cad, d, store.prefix .. key, mine) end
  local held, e = store:get(key)
  if held == nil and e then return nil, e end
  if held ~= mine then return false end
  local done, de = store:delete(key)
  if not done then return nil, de end
  return true
end

-- Sets KEYS[1]'s TTL to ARGV[2] ms only if it still holds ARGV[1].
local RENEW_SCRIPT = [[
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
]]

--- Keep the lock `key` for `ttl` more seconds, if `token` still holds it (a holder's
-- heartbeat: a short TTL renewed while it works, so a dead holder's lock goes soon).
-- In Redis a compare-and-expire script; elsewhere a get then a set.
-- @treturn boolean|nil true if renewed, false if no longer ours, or nil, err
function M.renew(store, key, mine, ttl)
  if type(mine) ~= "string" then return bad("token", "renew needs the token lock returned") end
  local ok, err = check_ttl(ttl)
  if ok then ok, err = check_key(key) end
  if not ok then return nil, err end
  if store:scripted() then
    local n, e = store:eval(RENEW_SCRIPT, { key }, { mine, tostring(math.max(1, math.floor(ttl * 1000))) })
    if n == nil then return nil, e end
    return tonumber(n) == 1
  end
  local held, e = store:get(key)
  if held == nil and e then return nil, e end
  if held ~= mine then return false end
  local done, se = store:set(key, mine, ttl)
  if not done then return nil, se end
  return true
end

---------------------------------------------------------------------------------------------
-- open
---------------------------------------------------------------------------------------------

-- A custom table: its five functions called as methods, raises caught by `guarded`.
local function custom_driver(t, opts)
  for _, op in ipairs(OPS) do
    if type(t[op]) ~= "function" then
      return config_error("store." .. op, "a custom store needs the functions " ..
        table.concat(OPS, ", ") .. " (store." .. op .. " is a " .. type(t[op]) .. ")")
    end
  end
  local sleep = opts.sleep
  if not sleep then
    local ok, core = pcall(require, "wxpay.core")
    sleep = ok and core.sleep or nil
  end
  local d = {}
  for _, op in ipairs(OPS) do d[op] = function(_, ...) return t[op](t, ...) end end
  function d.get(_, key) return t:get(key) end -- the contract's one argument, not `limit`
  function d.now()
    if t.now then return t:now() end
    local ok, socket = pcall(require, "socket")
    return ok and socket.gettime() or os.time()
  end
  function d.sleep(_, s)
    if not sleep then return nil, "no sleep function (opts.sleep)" end
    sleep(s)
    return true
  end
  return d
end

local function redis_url(spec)
  local rest = spec:match("^redis://(.*)$")
  if not rest then return nil end
  if rest:find("@", 1, true) then
    return config_error("store", "redis:// URLs take no password; use the table form { host, port, password }")
  end
  local host, port, db = rest:match("^([%w%.%-]+):(%d+)/?(%d*)$")
  if not host then
    host, port, db = rest:match("^%[([%x:]+)%]:(%d+)/?(%d*)$")
  end
  if not host then return config_error("store", "expected redis://HOST:PORT[/DB]") end
  return { host = host, port = tonumber(port), db = db ~= "" and tonumber(db) or nil }
end

--- Open the store the config key `store` names.
-- @param spec nil, `"memory"`, `"ngx:NAME"`, `"redis://HOST:PORT[/DB]"`, a Redis table
--   `{ host, port, db, password, timeout, pool_size, keepalive }`, or a custom table
-- @tparam[opt] table opts `clock`, `sleep`, `driver` (see the module header)
-- @treturn table|nil the store, or nil, err (kind `config`, field `store` or `store.<key>`)
function M.open(spec, opts)
  if opts ~= nil and type(opts) ~= "table" then return bad("opts", "store opts must be a table") end
  opts = opts or {}
  local driver, err, kind
  if spec == nil or spec == "memory" then
    driver, kind = require("wxpay.store.memory").new(opts), "memory"
  elseif type(spec) == "string" and spec:match("^ngx:") then
    driver, err = require("wxpay.store.ngx").new(spec:sub(5))
    kind = "ngx"
  elseif type(spec) == "string" and spec:match("^redis://") then
    local cfg, e = redis_url(spec)
    if not cfg then return nil, e end
    driver, err = require("wxpay.store.redis").new(cfg, opts)
    kind = "redis"
  elseif type(spec) == "table" and spec.host ~= nil then
    driver, err = require("wxpay.store.redis").new(spec, opts)
    kind = "redis"
  elseif type(spec) == "table" then
    driver, err = custom_driver(spec, opts)
    kind = "custom"
  else
    return config_error("store", "expected \"memory\", \"ngx:NAME\", \"redis://HOST:PORT[/DB]\", " ..
      "a Redis table { host, port, ... } or a table with get, set, add, incr, delete")
  end
  if not driver then
    if type(err) == "table" then return nil, err end
    return config_error("store", tostring(err))
  end
  return new_store(driver, "", kind)
end

M.config_error = config_error

return M
