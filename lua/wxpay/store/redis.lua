--- The Redis backend: `wxpay.store.open("redis://HOST:PORT[/DB]")` or the table form
-- `{ host, port, db, password, timeout, pool_size, keepalive }`.
--
-- * Under OpenResty (`ngx` present): `resty.redis` (Debian's `lua-nginx-redis` installs it as
--   `nginx.redis`; both names are tried) on cosockets. Each operation takes a connection
--   from nginx's pool (one pool per host, port, db and password), and gives it back with
--   `set_keepalive(keepalive * 1000, pool_size)`; AUTH and SELECT run on new connections.
-- * In plain Lua: `lua-redis` (module `redis`, on LuaSocket). Debian installs it for Lua
--   5.1-5.3 only; on 5.4 the same file is loaded from Debian's 5.3 directory. One connection,
--   dropped on any network error and opened again by the next operation.
--
-- `timeout` (seconds, default 1) bounds each operation in total (connect, AUTH, SELECT, the
-- command, a script load; `wxpay.store.bounded` gives every read only what is left, and
-- refuses a reply over `MAX_REPLY` bytes), so a server that is down or trickles answers
-- `nil, err` within it; `get` and `eval` take a shorter `limit` from a caller with less.
-- `pool_size` defaults to 32, `keepalive` (idle seconds in the pool) to 60. TTLs are sent
-- as PX (milliseconds, at least 1). The password never appears in errors. Scripts run with
-- EVALSHA (loaded once per server with SCRIPT LOAD; again after NOSCRIPT, i.e. a restart).
-- This is the backend table `wxpay.store` wraps; use the store's methods, not these.
-- @module wxpay.store.redis

local bounded = require("wxpay.store.bounded")

local M = {}

local ngx = rawget(_G, "ngx")

local Redis = {}
Redis.__index = Redis

local DEFAULTS = { port = 6379, db = 0, timeout = 1, pool_size = 32, keepalive = 60 }

-- INCRBYFLOAT (floats and integers alike), with the TTL given only to a key that has none.
local INCR_SCRIPT = [[
local v = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
if ARGV[2] ~= '' and redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return v
]]

local function config_error(field, message)
  return require("wxpay.store").config_error(field, message)
end

local function positive(cfg, field, integer)
  local v = cfg[field]
  if v == nil then return true end
  if type(v) ~= "number" or v ~= v or v <= 0 or v == math.huge or (integer and math.floor(v) ~= v) then
    return config_error("store." .. field, "store." .. field .. " must be a positive " ..
      (integer and "integer" or "number"))
  end
  return true
end

-- Checks the table form and fills the defaults (a copy; the password is kept, never shown).
local function check(cfg)
  if type(cfg.host) ~= "string" or not cfg.host:match("^[%w%.%-:]+$") then
    return config_error("store.host", "store.host must be a host name or an IP address")
  end
  for _, f in ipairs({ "timeout", "keepalive" }) do
    local ok, err = positive(cfg, f)
    if not ok then return nil, err end
  end
  for _, f in ipairs({ "port", "pool_size" }) do
    local ok, err = positive(cfg, f, true)
    if not ok then return nil, err end
  end
  if cfg.port and cfg.port > 65535 then return config_error("store.port", "store.port must be 1..65535") end
  if cfg.db ~= nil and (type(cfg.db) ~= "number" or cfg.db < 0 or math.floor(cfg.db) ~= cfg.db) then
    return config_error("store.db", "store.db must be an integer >= 0")
  end
  if cfg.password ~= nil and (type(cfg.password) ~= "string" or cfg.password == "") then
    return config_error("store.password", "store.password must be a non-empty string")
  end
  local out = {}
  for k, v in pairs(DEFAULTS) do out[k] = v end
  for _, k in ipairs({ "host", "port", "db", "password", "timeout", "pool_size", "keepalive" }) do
    if cfg[k] ~= nil then out[k] = cfg[k] end
  end
  return out
end

local function px(ttl)
  if not ttl or ttl <= 0 then return nil end
  return tostring(math.max(1, math.floor(ttl * 1000 + 0.5)))
end

-- Seconds on this host's clock (deadlines); the scripts use Redis TIME instead.
local function clock()
  if ngx and ngx.now then
    if ngx.update_time then ngx.update_time() end
    return ngx.now()
  end
  local ok, socket = pcall(require, "socket")
  return ok and socket.gettime() or os.time()
end

local function where(self)
  return "redis " .. self.cfg.host .. ":" .. self.cfg.port
end

---------------------------------------------------------------------------------------------
-- Plain Lua: lua-redis on LuaSocket
---------------------------------------------------------------------------------------------

local function load_lua_redis()
  local ok, mod = pcall(require, "redis")
  if ok then return mod end
  -- Debian's lua-redis is one pure-Lua file, linked for 5.1-5.3 only; it runs on 5.4 as is.
  local path = package.searchpath and package.searchpath("redis", "/usr/share/lua/5.3/?.lua;/usr/share/lua/5.1/?.lua")
  if not path then return nil, "lua-redis is not installed (the Debian package lua-redis)" end
  local chunk, err = loadfile(path)
  if not chunk then return nil, err end
  mod = chunk("redis")
  package.loaded.redis = mod
  return mod
end

-- lua-redis raises for everything; server error replies start with "redis error: ".
local function server_error(msg)
  return type(msg) == "string" and msg:find("redis error: ", 1, true) ~= nil
end

local Socket = setmetatable({}, { __index = Redis })
Socket.__index = Socket

function Socket:connection(deadline)
  if self.client then
    self.client.network.socket:arm(deadline, self.max_reply)
    return self.client
  end
  local lib, lerr = load_lua_redis()
  if not lib then return nil, lerr end
  local left = deadline - clock()
  if left <= 0 then return nil, where(self) .. ": cannot connect (timeout)" end
  local ok, c = pcall(lib.connect, { host = self.cfg.host, port = self.cfg.port, timeout = left })
  if not ok then return nil, where(self) .. ": cannot connect" end
  c.network.socket = bounded.wrap(c.network.socket, clock)
  c.network.socket:arm(deadline, self.max_reply)
  if self.cfg.password then
    local aok = pcall(c.auth, c, self.cfg.password)
    if not aok then pcall(c.quit, c); return nil, where(self) .. ": AUTH failed" end
  end
  if self.cfg.db ~= 0 then
    local sok, serr = pcall(c.select, c, self.cfg.db)
    if not sok then pcall(c.quit, c); return nil, where(self) .. ": SELECT failed: " .. tostring(serr) end
  end
  self.client = c
  return c
end

function Socket:drop()
  local c = self.client
  self.client = nil
  if c and c.network and c.network.socket then pcall(c.network.socket.close, c.network.socket) end
end

-- Runs command `name` with the arguments, ending by `deadline`; returns the reply, or nil, err.
function Socket:call(deadline, name, ...)
  local c, err = self:connection(deadline)
  if not c then return nil, err end
  local ok, r = pcall(c[name], c, ...)
  if ok then return r end
  if not server_error(r) then
    self:drop()
    return nil, where(self) .. ": " .. name .. " failed (" .. tostring(r):gsub("^.-:%d+: ", "") .. ")"
  end
  return nil, where(self) .. ": " .. tostring(r):gsub("^.-redis error: ", "")
end

-- lua-redis: nil bulk is nil, "+OK" is true.
Socket.NULL = nil

---------------------------------------------------------------------------------------------
-- OpenResty: resty.redis on cosockets
---------------------------------------------------------------------------------------------

local Resty = setmetatable({}, { __index = Redis })
Resty.__index = Resty

local function load_resty_redis()
  local ok, mod = pcall(require, "resty.redis")
  if ok then return mod end
  ok, mod = pcall(require, "nginx.redis")
  if ok then return mod end
  return nil, "resty.redis is not installed (the Debian package lua-nginx-redis)"
end

function Resty:call(deadline, name, ...)
  local lib, lerr = load_resty_redis()
  if not lib then return nil, lerr end
  local red, err = lib:new()
  if not red then return nil, where(self) .. ": " .. tostring(err) end
  local left = deadline - clock()
  if left <= 0 then return nil, where(self) .. ": " .. name .. " failed (timeout)" end
  red:set_timeout(math.max(1, math.floor(left * 1000)))
  -- Every read from here on gets only what is left of the operation (bounded.lua).
  local sock = rawget(red, "_sock")
  local proxy = sock and bounded.wrap(sock, clock)
  if proxy then proxy:arm(deadline, self.max_reply); rawset(red, "_sock", proxy) end
  local cfg = self.cfg
  local ok, cerr = red:connect(cfg.host, cfg.port, { pool = self.pool, pool_size = cfg.pool_size })
  if not ok then return nil, where(self) .. ": cannot connect (" .. tostring(cerr) .. ")" end
  if (red:get_reused_times() or 0) == 0 then
    if cfg.password then
      local aok = red:auth(cfg.password)
      if not aok then red:close(); return nil, where(self) .. ": AUTH failed" end
    end
    if cfg.db ~= 0 then
      local sok, serr = red:select(cfg.db)
      if not sok then red:close(); return nil, where(self) .. ": SELECT failed: " .. tostring(serr) end
    end
  end
  local res, rerr = red[name](red, ...)
  if res == nil then -- a network error: the connection is not reusable
    red:close()
    return nil, where(self) .. ": " .. name .. " failed (" .. tostring(rerr) .. ")"
  end
  if proxy and not proxy:clean() then red:close() else red:set_keepalive(cfg.keepalive * 1000, cfg.pool_size) end
  if res == false then return nil, where(self) .. ": " .. tostring(rerr) end -- an error reply
  if res == ngx.null then return nil end
  return res
end

---------------------------------------------------------------------------------------------
-- The operations, on either driver
---------------------------------------------------------------------------------------------

local function null(v)
  if v == nil then return true end
  return ngx ~= nil and v == ngx.null
end

-- The deadline of one operation: the store's timeout, or less when the caller has less.
function Redis:deadline(limit)
  local t = self.cfg.timeout
  if type(limit) == "number" and limit == limit and limit < t then t = math.max(0, limit) end
  return clock() + t
end

function Redis:get(key, limit)
  local v, err = self:call(self:deadline(limit), "get", key)
  if v == nil and err then return nil, err end
  if null(v) then return nil end
  return v
end

function Redis:set(key, value, ttl)
  local ms = px(ttl)
  local ok, err
  local d = self:deadline()
  if ms then ok, err = self:call(d, "set", key, value, "PX", ms) else ok, err = self:call(d, "set", key, value) end
  if ok == nil then return nil, err end
  return true
end

function Redis:add(key, value, ttl)
  local ms = px(ttl)
  local ok, err
  if ms then
    ok, err = self:call(self:deadline(), "set", key, value, "PX", ms, "NX")
  else
    ok, err = self:call(self:deadline(), "set", key, value, "NX")
  end
  if ok == nil and err then return nil, err end
  return ok ~= nil and not null(ok)
end

function Redis:incr(key, by, ttl)
  return self:eval(INCR_SCRIPT, { key }, { string.format("%.17g", by), px(ttl) or "" })
end

function Redis:delete(key)
  local ok, err = self:call(self:deadline(), "del", key)
  if ok == nil then return nil, err end
  return true
end

-- Seconds on this host's clock; the scripts use Redis TIME instead.
Redis.now = clock

function Redis.sleep(_, s)
  if ngx then ngx.sleep(s); return true end
  local ok, socket = pcall(require, "socket")
  if not ok then return nil, "no sleep" end
  socket.sleep(s)
  return true
end

--- Run `script` (EVALSHA; SCRIPT LOAD first, and again after NOSCRIPT).
function Redis:eval(script, keys, args, limit)
  local deadline = self:deadline(limit)
  local argv = { #keys }
  for i = 1, #keys do argv[#argv + 1] = keys[i] end
  for i = 1, #args do argv[#argv + 1] = args[i] end
  local unpack = table.unpack or unpack -- luacheck: ignore 143
  for _ = 1, 2 do
    local sha = self.shas[script]
    if not sha then
      local s, err = self:call(deadline, "script", "LOAD", script)
      if not s then return nil, err end
      sha = s
      self.shas[script] = sha
    end
    local r, err = self:call(deadline, "evalsha", sha, unpack(argv))
    if r ~= nil or not (err and err:find("NOSCRIPT", 1, true)) then return r, err end
    self.shas[script] = nil
  end
  return nil, where(self) .. ": script not loaded"
end

-- Connections are authenticated (AUTH) and SELECTed once, so a pool holds one host, port,
-- db and password. The password goes in as a salted hash: a leaked pool name (nginx debug
-- logs) gives nothing to guess it from offline. The salt is per process, as pools are.
local POOL_SALT
local function pool_name(cfg)
  local name = "wxpay:" .. cfg.host .. ":" .. cfg.port .. ":" .. cfg.db
  if not cfg.password then return name end
  local core = require("wxpay.core")
  POOL_SALT = POOL_SALT or core.nonce(32)
  return name .. ":" .. core.sha256_hex(POOL_SALT .. "\0" .. cfg.password):sub(1, 32)
end

--- A Redis backend for the (checked) table form.
-- @tparam table cfg `{ host, port, db, password, timeout, pool_size, keepalive }`
-- @tparam[opt] table opts `driver`: `"resty"` or `"socket"` (default: resty when `ngx` exists)
-- @treturn table|nil the backend, or nil, err (kind `config`)
function M.new(cfg, opts)
  local checked, err = check(cfg)
  if not checked then return nil, err end
  local driver = opts and opts.driver or (ngx and ngx.socket and "resty" or "socket")
  if driver ~= "resty" and driver ~= "socket" then
    return config_error("driver", "store driver must be \"resty\" or \"socket\"")
  end
  return setmetatable({ cfg = checked, shas = {}, pool = pool_name(checked), max_reply = bounded.MAX_REPLY },
    driver == "resty" and Resty or Socket)
end

return M
