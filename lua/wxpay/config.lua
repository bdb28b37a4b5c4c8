--- Configuration: every key `wxpay.new` accepts, its check and its default, and the
-- User-Agent. `build` turns a config table into the client's private state, loading each
-- key once; the checks are exported one by one so `wxpay doctor` can reuse them. The keys
-- are described in docs/config.md.
-- @module wxpay.config

local core = require("wxpay.core")
local errors = require("wxpay.errors")
local serial_key = require("wxpay.keyring").serial_key
local normalise = require("wxpay.config_normalise")

local M = {}

local DEFAULT_BASE = "https://api.mch.weixin.qq.com"
local DEFAULT_BACKUP = "https://api2.mch.weixin.qq.com"
local MAX_SECONDS = 86400 -- upper bound of every configured or per-call time
M.MAX_SECONDS = MAX_SECONDS

-- Every accepted configuration key; anything else is a typo and is refused.
local CONFIG_KEYS = {
  mchid = true, serial_no = true, private_key = true, private_key_file = true,
  merchant_certificate = true, merchant_certificate_file = true, apiv3_key = true,
  wechatpay_public_key = true, wechatpay_public_key_file = true, wechatpay_public_key_id = true,
  platform_certificates = true, platform_certificate_files = true,
  base_url = true, backup_url = true, timeout = true, connect_timeout = true,
  max_retries = true, deadline = true, ca_file = true, proxy = true, user_agent = true,
  transport = true, logger = true, clock_skew = true, offset_mode = true,
  failover_cooldown = true, retry_base_delay = true, retry_max_delay = true,
  retry_after_max = true, sleep = true, now = true, monotonic = true,
  certificate_refresh_interval = true, store = true, qps = true,
  pool_size = true,
  on_request = true,
  wechatpay_public_keys = true, wechatpay_public_key_files = true, apiv3_key_previous = true,
  apiv3_key_previous_until = true,
  fallback_qps = true,
}
CONFIG_KEYS.apiv2_key = true -- the 发券 signatures (wxpay.api.issue)
M.KEYS = CONFIG_KEYS

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("*a")
  f:close()
  if not s then return nil, "cannot read " .. path end
  return s
end

-- Read `name` (a PEM string) or `name_file` (a path) and load it with `loader`.
local function load_pem(config, name, loader)
  local pem, file = config[name], config[name .. "_file"]
  if pem ~= nil and file ~= nil then
    return nil, errors.config(name, "give either " .. name .. " or " .. name .. "_file, not both")
  end
  local field = name
  if file ~= nil then
    field = name .. "_file"
    if type(file) ~= "string" then return nil, errors.config(field, "must be a path string") end
    local err
    pem, err = read_file(file)
    if not pem then return nil, errors.config(field, "unreadable: " .. tostring(err)) end
  elseif pem == nil then
    return false
  elseif type(pem) ~= "string" then
    return nil, errors.config(field, "must be a PEM string")
  end
  local obj, err = loader(pem)
  if not obj then return nil, errors.config(field, "cannot load: " .. tostring(err)) end
  return obj
end

local function check_base_url(field, v)
  if type(v) ~= "string" then return nil, errors.config(field, "must be a string") end
  local rest = v:match("^https://(.*)$")
  if not rest then return nil, errors.config(field, "must be an https:// URL") end
  rest = rest:gsub("/$", "") -- one trailing slash is harmless
  if rest:find("[/?#@%s]") then
    return nil, errors.config(field, "must be https://host[:port] only (no path, query, fragment or userinfo)")
  end
  local host, port = rest:match("^(%[[%x:.]+%])(.*)$")
  if not host then host, port = rest:match("^([%w.-]+)(.*)$") end
  if not host or host == "" or host:find("^[.-]") then
    return nil, errors.config(field, "has no valid host")
  end
  if port ~= "" then
    local p = port:match("^:(%d+)$")
    if not p or tonumber(p) < 1 or tonumber(p) > 65535 then
      return nil, errors.config(field, "has an invalid port")
    end
  end
  return "https://" .. rest
end

local function check_number(config, field, default, opts)
  local v = config[field]
  if v == nil then return default end
  if type(v) ~= "number" or v ~= v or v == math.huge or v == -math.huge then
    return nil, errors.config(field, "must be a finite number")
  end
  if opts.integer and math.floor(v) ~= v then return nil, errors.config(field, "must be an integer") end
  if opts.positive and v <= 0 then return nil, errors.config(field, "must be > 0") end
  if v < 0 then return nil, errors.config(field, "must be >= 0") end
  if opts.max and v > opts.max then return nil, errors.config(field, "must be <= " .. opts.max) end
  return v
end

local function check_function(config, field, default)
  local v = config[field]
  if v == nil then return default end
  if type(v) ~= "function" then return nil, errors.config(field, "must be a function") end
  return v
end


local function version_token(s)
  return s and tostring(s):match("%d+%.%d+[%w.%-]*") or "unknown"
end

local function build_user_agent(version, extra)
  local sys, rel = core.uname()
  local v = core.versions()
  local lua = "Lua/" .. (_VERSION:match("%d+%.%d+") or "?")
  local jit = rawget(_G, "jit")
  if type(jit) == "table" and jit.version then
    lua = lua .. " LuaJIT/" .. version_token(jit.version)
  end
  local ua = string.format("wxpay/%s (%s/%s) %s libcurl/%s OpenSSL/%s", version,
    tostring(sys), tostring(rel), lua, version_token(v.libcurl), version_token(v.openssl))
  if extra then ua = ua .. " " .. extra end
  return ua
end


--- Refuse any key `wxpay.new` does not know (a typo would otherwise be ignored).
-- @return true, or nil and a `config` error (with "did you mean" when a known key is close)
function M.check_keys(config)
  for k in pairs(config) do
    if type(k) ~= "string" or not CONFIG_KEYS[k] then
      local near = type(k) == "string" and require("wxpay.suggest").closest(k, CONFIG_KEYS)
      return nil, errors.config(tostring(k), "unknown configuration key" .. (near and ("; did you mean " .. near
        .. "?") or ""))
    end
  end
  return true
end

--- `mchid` and `serial_no` into `st` (the serial upper-cased).
-- @return true, or nil and a `config` error
function M.check_identity(config, st)
  if type(config.mchid) ~= "string" or not config.mchid:match("^%d+$") or #config.mchid > 32 then
    return nil, errors.config("mchid", config.mchid == nil and "required" or "must be a string of digits")
  end
  st.mchid = config.mchid
  if type(config.serial_no) ~= "string" or not config.serial_no:match("^%x+$") then
    return nil, errors.config("serial_no", config.serial_no == nil and "required"
      or "must be the merchant certificate serial in hex")
  end
  st.serial_no = config.serial_no:upper()
  return true
end

--- The merchant's private key into `st.private_key`, checked against
-- `merchant_certificate` (and its serial against `serial_no`) when one is given.
-- @return true, or nil and a `config` error
function M.load_merchant_key(config, st)
  local key, err = load_pem(config, "private_key", core.load_private_key)
  if key == nil then return nil, err end
  if key == false then return nil, errors.config("private_key", "required (or private_key_file)") end
  if key:bits() < 2048 then return nil, errors.config("private_key", "must be an RSA key of at least 2048 bits") end
  st.private_key = key

  local mcert
  mcert, err = load_pem(config, "merchant_certificate", core.load_certificate)
  if mcert == nil then return nil, err end
  if mcert then
    if mcert:public_key():fingerprint() ~= key:public_key():fingerprint() then
      -- name the key the caller actually set
      local field = config.merchant_certificate_file ~= nil and "merchant_certificate_file" or "merchant_certificate"
      return nil, errors.config(field, "does not match private_key (different public key)")
    end
    if serial_key(mcert:serial()) ~= serial_key(st.serial_no) then
      return nil, errors.config("serial_no", "does not match merchant_certificate serial " .. mcert:serial())
    end
    mcert:close() -- only needed for the check
  end
  return true
end

--- `apiv3_key` (optional, exactly 32 bytes) into `st`.
-- @return true, or nil and a `config` error
function M.check_apiv3_key(config, st)
  if config.apiv3_key ~= nil then
    if type(config.apiv3_key) ~= "string" or #config.apiv3_key ~= 32 then
      return nil, errors.config("apiv3_key", "must be a string of exactly 32 bytes")
    end
    st.apiv3_key = config.apiv3_key
  end
  return true
end

--- `apiv2_key` (optional: only the 发券 signatures need it; 32 printable ASCII
-- characters) into `st`. The message never shows the value.
-- @return true, or nil and a `config` error
function M.check_apiv2_key(config, st)
  local key = config.apiv2_key
  if key ~= nil then
    if type(key) ~= "string" or #key ~= 32 or not key:match("^[\33-\126]+$") then
      return nil, errors.config("apiv2_key", "must be a string of exactly 32 printable ASCII characters")
    end
    st.apiv2_key = key
  end
  return true
end

--- The WeChat Pay public key and its id into `st.public_key` (`{ id, key }`), if given.
-- @return true, or nil and a `config` error
function M.load_public_key(config, st)
  local pub, err = load_pem(config, "wechatpay_public_key", core.load_public_key)
  if pub == nil then return nil, err end
  local pub_id = config.wechatpay_public_key_id
  if pub then
    if type(pub_id) ~= "string" or not pub_id:match("^[%w_%-]+$") then
      return nil, errors.config("wechatpay_public_key_id", pub_id == nil
        and "required with wechatpay_public_key" or "must be a string such as PUB_KEY_ID_…")
    end
    st.public_key = { id = pub_id, key = pub }
  elseif pub_id ~= nil then
    return nil, errors.config("wechatpay_public_key", "required with wechatpay_public_key_id")
  end
  return true
end

-- One configured platform certificate (PEM text) as a ring entry.
local function ring_entry(field, pem)
  local cert, cerr = core.load_certificate(pem)
  if not cert then return nil, errors.config(field, "cannot load: " .. tostring(cerr)) end
  return {
    serial = cert:serial():upper(), key = cert:public_key(),
    not_before = cert:not_before(), not_after = cert:not_after(), source = "configured",
  }
end

--- `platform_certificates` and `platform_certificate_files` into `st.certificates`, and
-- whether the client downloads certificates (`st.download`); refuses a config that has no
-- way to verify responses. Run after `check_apiv3_key` and `load_public_key`.
-- @return true, or nil and a `config` error
function M.load_platform_certificates(config, st)
  st.certificates = {}
  st.expired = {} -- serials dropped from the ring because they expired (for error messages)
  for _, name in ipairs({ "platform_certificates", "platform_certificate_files" }) do
    local list = config[name]
    if list ~= nil then
      if type(list) ~= "table" then return nil, errors.config(name, "must be an array") end
      for i, item in ipairs(list) do
        local field = name .. "[" .. i .. "]"
        if type(item) ~= "string" then return nil, errors.config(field, "must be a string") end
        local pem, err = item
        if name == "platform_certificate_files" then
          pem, err = read_file(item)
          if not pem then return nil, errors.config(field, "unreadable: " .. tostring(err)) end
        end
        local c
        c, err = ring_entry(field, pem)
        if not c then return nil, err end
        st.certificates[#st.certificates + 1] = c
      end
    end
  end
  -- Without configured certificates, the apiv3_key lets the client download them
  -- (docs/protocol.md#trusting-a-download): before the first request when there is no
  -- public key, else only on an unknown serial.
  st.download = st.apiv3_key ~= nil and #st.certificates == 0
  if not st.public_key and #st.certificates == 0 and not st.download then
    return nil, errors.config("wechatpay_public_key",
      "no way to verify responses: configure wechatpay_public_key (+_id), platform_certificates or apiv3_key")
  end
  return true
end

--- `base_url` and `backup_url` into `st` (the default backup only with the default base).
-- @return true, or nil and a `config` error
function M.check_hosts(config, st)
  local err
  if config.base_url == nil then
    st.base_url = DEFAULT_BASE
  else
    st.base_url, err = check_base_url("base_url", config.base_url)
    if not st.base_url then return nil, err end
  end
  if config.backup_url == false then
    st.backup_url = nil
  elseif config.backup_url == nil then
    st.backup_url = st.base_url == DEFAULT_BASE and DEFAULT_BACKUP or nil
  else
    st.backup_url, err = check_base_url("backup_url", config.backup_url)
    if not st.backup_url then return nil, err end
  end
  return true
end

-- Numeric keys: name, default, limits. Times are at most a day: larger ones are typos, and
-- the core refuses such timeouts.
local NUMBERS = {
  { "timeout", 10, { positive = true, max = MAX_SECONDS } },
  { "connect_timeout", 5, { positive = true, max = MAX_SECONDS } },
  { "max_retries", 2, { integer = true, max = 20 } },
  { "deadline", nil, { positive = true, max = MAX_SECONDS } },
  { "clock_skew", 300, { positive = true, max = MAX_SECONDS } },
  { "failover_cooldown", 60, { max = MAX_SECONDS } },
  { "retry_base_delay", 0.2, { max = MAX_SECONDS } },
  { "retry_max_delay", 5, { max = MAX_SECONDS } },
  { "retry_after_max", 60, { max = MAX_SECONDS } },
  -- The docs ask for a refresh "in less than 12 hours".
  { "certificate_refresh_interval", 3600, { positive = true, max = 43199 } },
  -- Kept-alive cosocket connections per host (OpenResty); nil: the transport's default (512).
  { "pool_size", nil, { positive = true, integer = true, max = 100000 } },
}

--- Every numeric key, with its default, into `st`.
-- @return true, or nil and a `config` error
function M.check_numbers(config, st)
  for _, s in ipairs(NUMBERS) do
    local v, err = check_number(config, s[1], s[2], s[3])
    if v == nil and err then return nil, err end
    st[s[1]] = v
  end
  return true
end

--- `ca_file`, `proxy`, `user_agent` (non-empty strings; `ca_file` readable) and
-- `offset_mode` into `st`.
-- @return true, or nil and a `config` error
function M.check_strings(config, st)
  for _, name in ipairs({ "ca_file", "proxy", "user_agent" }) do
    local v = config[name]
    if v ~= nil and (type(v) ~= "string" or v == "" or v:find("[%c]")) then
      return nil, errors.config(name, "must be a non-empty string")
    end
  end
  if config.ca_file then
    local f, ferr = io.open(config.ca_file, "rb")
    if not f then return nil, errors.config("ca_file", "unreadable: " .. tostring(ferr)) end
    f:close()
  end
  st.offset_mode = config.offset_mode or "page"
  if st.offset_mode ~= "page" and st.offset_mode ~= "item" then
    return nil, errors.config("offset_mode", 'must be "page" or "item"')
  end
  return true
end

--- The hooks `logger`, `sleep`, `now` and `monotonic` into `st`, with their defaults.
-- @return true, or nil and a `config` error
function M.check_hooks(config, st)
  -- Under OpenResty the default sleep is ngx.sleep wherever that works (it yields).
  local default_sleep = rawget(_G, "ngx") and require("wxpay.transport.ngx").sleep or core.sleep
  for _, f in ipairs({ { "logger", false }, { "sleep", default_sleep }, { "now", core.time },
                       { "monotonic", core.monotonic }, { "on_request", false } }) do
    local v, err = check_function(config, f[1], f[2])
    if v == nil then return nil, err end
    st[f[1]] = v or nil
  end
  return true
end

--- The transport into `st.transport`: `"curl"` (the default; under OpenResty chosen per
-- request between cosockets and libcurl), `"ngx"`, or a table with `request(req)`.
-- Run after `check_hooks` (it takes the logger).
-- @return true, or nil and a `config` error
function M.choose_transport(config, st)
  local transport = config.transport
  if transport == nil or transport == "curl" then
    st.transport = require("wxpay.transport.curl").new{ ca_file = config.ca_file, proxy = config.proxy }
    if transport == nil and rawget(_G, "ngx") then
      -- OpenResty: cosockets or libcurl, decided per request by the phase it runs in.
      st.transport = require("wxpay.transport.ngx").auto(st.transport, { logger = st.logger,
        pool_size = st.pool_size })
    end
  elseif transport == "ngx" then
    local ok, mod = pcall(require, "wxpay.transport.ngx")
    if not ok then return nil, errors.config("transport", '"ngx" transport is not available') end
    st.transport = mod.new{ ca_file = config.ca_file, proxy = config.proxy, pool_size = st.pool_size }
  elseif type(transport) == "table" and type(transport.request) == "function" then
    st.transport = transport
  else
    return nil, errors.config("transport", 'must be "curl", "ngx" or a table with request(req)')
  end
  return true
end

--- The keys `store` and `qps` (the shared store and rate budget, wxpay.fleet) into `st.fleet`.
-- @return true, or nil and a `config` error
function M.check_fleet(config, st)
  return require("wxpay.fleet").check(config, st)
end

-- The checks in the order `build` runs them (each fills its part of the state). The
-- transport comes last, so a config that fails a check opens no HTTP session.
local STEPS = {
  M.check_keys, M.check_identity, M.load_merchant_key, M.check_apiv3_key, M.load_public_key,
  function(c, s) return require("wxpay.rotation").check(c, s) end, -- more public keys, previous APIv3 key
  M.load_platform_certificates, M.check_hosts, M.check_numbers, M.check_strings, M.check_hooks,
  M.check_fleet,
}
STEPS[#STEPS + 1] = M.check_apiv2_key

local function run_steps(config, st)
  for _, step in ipairs(STEPS) do
    local ok, err = step(config, st)
    if not ok then return nil, err end
  end
  return true
end

--- Validate `config` without building a client: the first problem, as `wxpay.new` would
-- report it (the transport is not created).
-- @tparam table config
-- @return true, or nil and a `config` error naming the key
function M.check(config)
  return run_steps(normalise(config), {})
end

--- Validate `config` and load every key once.
-- @tparam table config
-- @tparam string version the library version (for the User-Agent)
-- @return the client's private state, or nil and a `config` error naming the key
function M.build(config, version)
  config = normalise(config) -- 6379.0 from a JSON decoder is the port 6379
  local st = { version = version }
  local ok, err = run_steps(config, st)
  if not ok then return nil, err end
  ok, err = M.choose_transport(config, st)
  if not ok then return nil, err end
  st.user_agent = build_user_agent(version, config.user_agent)
  return st
end

M.read_file, M.load_pem, M.check_base_url = read_file, load_pem, check_base_url
M.user_agent = build_user_agent
M.normalise = normalise

return M
