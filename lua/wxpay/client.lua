--- The wxpay client: configuration, the signed request pipeline, response verification,
-- retries and failover. Created by `wxpay.new(config)`; ARCHITECTURE.md holds the public
-- contract. Service functions (`client.request`, `client.partnerships.*`,
-- `client.certificates.*`) are dot-called closures bound to the client.
--
-- Configuration keys beyond the contract's (all optional; unknown keys are refused):
--
-- * Every time below, and `timeout`, `connect_timeout` and `deadline`, is at most 86400 s.
-- * `clock_skew` (300): responses with `|now - Wechatpay-Timestamp| >= clock_skew` fail.
-- * `offset_mode` ("page"): default for `partnerships.list`.
-- * `failover_cooldown` (60 s): how long the backup stays preferred after a failover.
-- * `retry_base_delay` (0.2 s), `retry_max_delay` (5 s): backoff `min(max, base * 2^(n-1))`,
--   then "equal jitter" (a random point in its upper half). `retry_after_max` (60 s) caps a
--   server's `Retry-After` (seconds form), which replaces the backoff when present.
-- * `certificate_refresh_interval` (3600 s, at most 12 h): download period when verifying
--   with downloaded platform certificates.
-- * `sleep(seconds)`, `now()` (unix seconds), `monotonic()` (seconds): clock hooks, for
--   OpenResty (`ngx.sleep`, …) and for specs; default to the C core's, except that under
--   OpenResty `sleep` defaults to `ngx.sleep` in the phases where it works.
-- * `user_agent`: appended to the library's own User-Agent, which stays first.
--
-- Decisions:
--
-- * Base URLs must be `https://host[:port]` (one trailing `/` tolerated): no http, path,
--   query, fragment or userinfo. The default backup host is used only with the default
--   base URL.
-- * `serial_no` is compared with the merchant certificate's serial case-insensitively and
--   ignoring leading zeros (Java renders serials without them).
-- * Verifying keys (one ring keyed by serial): with `platform_certificates` or a public key
--   the client uses those; with neither, `apiv3_key` makes it download `/v3/certificates`
--   before the first request and every `certificate_refresh_interval`; with a public key and
--   `apiv3_key` but no configured certificates (combined mode) it downloads only on an
--   unknown serial, then keeps what it downloaded fresh on the same period; a 404 there
--   means "no certificates", so pure public-key merchants never download. An unknown serial
--   refreshes at most once a minute (the very first download aside), one download shared by
--   concurrent callers, then verification is retried once. Expired certificates leave the
--   ring (`certificates.list()` no longer shows them).
-- * `client.notify` (wxpay.notify), `client.encrypt`/`decrypt` (wxpay.sensitive) and
--   `client.media` (wxpay.api.media) use the same ring through closures that hold no keys.
-- * `attempts` counts logical tries (1 + retries). A connect failure answered by the other
--   host is part of the same attempt: not a retry, and `meta.base_url` tells who answered.
-- * A transport failure after the connection was established is retried only when the
--   request is safe to repeat: GET/PUT/DELETE, or any request carrying an Idempotency-Key.
--   429, 5xx and `SYSTEM_ERROR`/`SERVICE_UNAVAILABLE` answers are retried whatever the method
--   (WeChat Pay asks for identical re-sends). A response failing verification is never
--   retried: the operation may have happened.
-- * 202 means "accepted, not yet processed: repeat the same request" in WeChat Pay's status
--   table. It is never returned as data: it is repeated like a 5xx (same body and
--   Idempotency-Key, backoff, counted in `attempts`), also for a POST without a key, since
--   repeating is what the server asks for. When the retries are spent the result is an
--   `api` error with `status = 202` and `retryable = true`.
-- * When a `deadline` is set, no attempt starts (and no backoff sleep begins) that would end
--   after it; the returned error then has `deadline_exceeded = true`.
-- * Any other 2xx is a success; an empty 2xx body (204) decodes to `{}`.
-- @module wxpay.client

local core = require("wxpay.core")
local cjson = require("cjson")
local errors = require("wxpay.errors")

local M = {}

local json = cjson.new() -- private instance: global cjson switches stay untouched

local DEFAULT_BASE = "https://api.mch.weixin.qq.com"
local DEFAULT_BACKUP = "https://api2.mch.weixin.qq.com"
local SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
local PROBE_PREFIX = "WECHATPAY/SIGNTEST/"
local MAX_SECONDS = 86400 -- upper bound of every configured or per-call time

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
  certificate_refresh_interval = true,
}

---------------------------------------------------------------------------------------------
-- Encoding helpers (exported for the API modules)
---------------------------------------------------------------------------------------------

--- Percent-encode every byte outside RFC 3986 unreserved, with upper-case hex.
-- @tparam string s
-- @treturn string
function M.percent_encode(s)
  return (s:gsub("[^A-Za-z0-9%-._~]", function(c)
    return string.format("%%%02X", c:byte())
  end))
end

--- Check that `s` is UTF-8 made of 1-3 byte characters (the API refuses 4-byte ones).
-- @tparam string s
-- @return `true`, or `nil` and a reason
function M.check_utf8(s)
  local i, n = 1, #s
  local byte = string.byte
  while i <= n do
    local c = byte(s, i)
    if c < 0x80 then
      i = i + 1
    else
      local len, lo, hi
      if c >= 0xC2 and c <= 0xDF then len = 2
      elseif c == 0xE0 then len, lo = 3, 0xA0
      elseif c == 0xED then len, hi = 3, 0x9F -- no UTF-16 surrogates
      elseif c >= 0xE1 and c <= 0xEF then len = 3
      elseif c >= 0xF0 and c <= 0xF4 then
        return nil, "4-byte UTF-8 characters (such as emoji) are not accepted by WeChat Pay"
      else
        return nil, "not valid UTF-8 (byte " .. i .. ")"
      end
      for k = 1, len - 1 do
        local d = byte(s, i + k)
        local dlo, dhi = 0x80, 0xBF
        if k == 1 then dlo, dhi = lo or dlo, hi or dhi end
        if not d or d < dlo or d > dhi then return nil, "not valid UTF-8 (byte " .. i .. ")" end
      end
      i = i + len
    end
  end
  return true
end

local JSON_ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return JSON_ESCAPES[c] or string.format("\\u%04x", c:byte())
  end) .. '"'
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
function M.encode_json(v)
  local out = {}
  json_value(v, 0, out)
  return table.concat(out)
end

--- Decode JSON with the module's private lua-cjson instance.
-- @treturn any value, or `nil` and a reason
function M.decode_json(s)
  local ok, v = pcall(json.decode, s)
  if not ok then return nil, tostring(v) end
  return v
end

---------------------------------------------------------------------------------------------
-- Configuration
---------------------------------------------------------------------------------------------

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

-- Strip leading zero nibbles: Java renders serials without them, Go with them.
local function serial_key(s)
  return (s:upper():gsub("^0+(.)", "%1"))
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

-- Validate `config` and load every key once. Returns the private state or nil, err.
local function build_state(config, version)
  for k in pairs(config) do
    if type(k) ~= "string" or not CONFIG_KEYS[k] then
      return nil, errors.config(tostring(k), "unknown configuration key")
    end
  end
  local st = { version = version }
  local err

  if type(config.mchid) ~= "string" or not config.mchid:match("^%d+$") or #config.mchid > 32 then
    return nil, errors.config("mchid", config.mchid == nil and "required" or "must be a string of digits")
  end
  st.mchid = config.mchid
  if type(config.serial_no) ~= "string" or not config.serial_no:match("^%x+$") then
    return nil, errors.config("serial_no", config.serial_no == nil and "required"
      or "must be the merchant certificate serial in hex")
  end
  st.serial_no = config.serial_no:upper()

  local key
  key, err = load_pem(config, "private_key", core.load_private_key)
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

  if config.apiv3_key ~= nil then
    if type(config.apiv3_key) ~= "string" or #config.apiv3_key ~= 32 then
      return nil, errors.config("apiv3_key", "must be a string of exactly 32 bytes")
    end
    st.apiv3_key = config.apiv3_key
  end

  -- Key ring: the public key (by id) and platform certificates (by serial).
  local pub
  pub, err = load_pem(config, "wechatpay_public_key", core.load_public_key)
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

  st.certificates = {}
  st.expired = {} -- serials dropped from the ring because they expired (for error messages)
  for _, name in ipairs({ "platform_certificates", "platform_certificate_files" }) do
    local list = config[name]
    if list ~= nil then
      if type(list) ~= "table" then return nil, errors.config(name, "must be an array") end
      for i, item in ipairs(list) do
        local field = name .. "[" .. i .. "]"
        if type(item) ~= "string" then return nil, errors.config(field, "must be a string") end
        local pem = item
        if name == "platform_certificate_files" then
          pem, err = read_file(item)
          if not pem then return nil, errors.config(field, "unreadable: " .. tostring(err)) end
        end
        local cert, cerr = core.load_certificate(pem)
        if not cert then return nil, errors.config(field, "cannot load: " .. tostring(cerr)) end
        st.certificates[#st.certificates + 1] = {
          serial = cert:serial():upper(), key = cert:public_key(),
          not_before = cert:not_before(), not_after = cert:not_after(), source = "configured",
        }
      end
    end
  end
  -- Without configured certificates, the apiv3_key lets the client download them (§3.3):
  -- before the first request when there is no public key, else only on an unknown serial.
  st.download = st.apiv3_key ~= nil and #st.certificates == 0
  if not st.public_key and #st.certificates == 0 and not st.download then
    return nil, errors.config("wechatpay_public_key",
      "no way to verify responses: configure wechatpay_public_key (+_id), platform_certificates or apiv3_key")
  end

  -- Hosts
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

  -- Numbers
  -- Times are at most a day: larger ones are typos, and the core refuses such timeouts.
  local specs = {
    { "timeout", 10, { positive = true, max = MAX_SECONDS } },
    { "connect_timeout", 5, { positive = true, max = MAX_SECONDS } },
    { "max_retries", 2, { integer = true, max = 20 } },
    { "deadline", nil, { positive = true, max = MAX_SECONDS } },
    { "clock_skew", 300, { positive = true, max = MAX_SECONDS } },
    { "failover_cooldown", 60, { max = MAX_SECONDS } },
    { "retry_base_delay", 0.2, { max = MAX_SECONDS } },
    { "retry_max_delay", 5, { max = MAX_SECONDS } },
    { "retry_after_max", 60, { max = MAX_SECONDS } },
    { "certificate_refresh_interval", 3600, { positive = true, max = 43200 } },
  }
  for _, s in ipairs(specs) do
    local v
    v, err = check_number(config, s[1], s[2], s[3])
    if v == nil and err then return nil, err end
    st[s[1]] = v
  end

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

  -- Under OpenResty the default sleep is ngx.sleep wherever that works (it yields).
  local default_sleep = rawget(_G, "ngx") and require("wxpay.transport.ngx").sleep or core.sleep
  for _, f in ipairs({ { "logger", false }, { "sleep", default_sleep }, { "now", core.time },
                       { "monotonic", core.monotonic } }) do
    local v
    v, err = check_function(config, f[1], f[2])
    if v == nil then return nil, err end
    st[f[1]] = v or nil
  end

  local transport = config.transport
  if transport == nil or transport == "curl" then
    st.transport = require("wxpay.transport.curl").new{ ca_file = config.ca_file, proxy = config.proxy }
    if transport == nil and rawget(_G, "ngx") then
      -- OpenResty: cosockets or libcurl, decided per request by the phase it runs in.
      st.transport = require("wxpay.transport.ngx").auto(st.transport, { logger = st.logger })
    end
  elseif transport == "ngx" then
    local ok, mod = pcall(require, "wxpay.transport.ngx")
    if not ok then return nil, errors.config("transport", '"ngx" transport is not available') end
    st.transport = mod.new{ ca_file = config.ca_file, proxy = config.proxy }
  elseif type(transport) == "table" and type(transport.request) == "function" then
    st.transport = transport
  else
    return nil, errors.config("transport", 'must be "curl", "ngx" or a table with request(req)')
  end

  st.user_agent = build_user_agent(version, config.user_agent)
  return st
end

---------------------------------------------------------------------------------------------
-- Response verification
---------------------------------------------------------------------------------------------

-- The newest usable platform certificate: latest not_before, ties by latest not_after.
local function newest_certificate(st, now)
  local best
  for _, c in ipairs(st.certificates) do
    if c.not_after >= now then
      if not best or c.not_before > best.not_before
         or (c.not_before == best.not_before and c.not_after > best.not_after) then
        best = c
      end
    end
  end
  return best
end

-- The Wechatpay-Serial sent with requests (selects the response-signing key, spec §4.3).
local function request_serial(st)
  if st.public_key then return st.public_key.id end
  local c = newest_certificate(st, st.now())
  return c and c.serial or nil
end

-- The key sensitive fields are encrypted with: the one request_serial names (spec §6).
local function encryption_key(st)
  if st.public_key then return st.public_key.key, st.public_key.id end
  local c = newest_certificate(st, st.now())
  if c then return c.key, c.serial end
end

-- Drop expired certificates from the ring (spec §3.4), remembering their serials so that a
-- response naming one says "expired" rather than "unknown".
local function prune_expired(st)
  local now, keep = st.now(), {}
  for _, c in ipairs(st.certificates) do
    if c.not_after >= now then keep[#keep + 1] = c else st.expired[c.serial] = true end
  end
  if #keep ~= #st.certificates then st.certificates = keep end
end

local function lower_headers(h)
  local out = {}
  for k, v in pairs(h or {}) do
    if type(k) == "string" then out[k:lower()] = v end
  end
  return out
end

-- Verify a response per spec §2.3. Returns the key id used, or nil and a signature error.
-- `resp.what` names the message in errors ("response" unless a callback says otherwise).
local function verify_response(st, resp, certificates)
  local h = resp.headers
  local ts, nonce = h["wechatpay-timestamp"], h["wechatpay-nonce"]
  local sig, serial = h["wechatpay-signature"], h["wechatpay-serial"]
  local function fail(check, msg, extra)
    local fields = { check = check, status = resp.status, request_id = h["request-id"],
                     serial = serial, retryable = false }
    for k, v in pairs(extra or {}) do fields[k] = v end
    return nil, errors.new("signature", (resp.what or "response") .. " verification failed: " .. msg, fields)
  end
  local missing = {}
  for _, name in ipairs({ "Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Signature",
                          "Wechatpay-Serial" }) do
    local v = h[name:lower()]
    if type(v) ~= "string" or v == "" then missing[#missing + 1] = name end
  end
  if #missing > 0 then
    return fail("headers", "headers incomplete, missing " .. table.concat(missing, ", "))
  end
  local stype = h["wechatpay-signature-type"]
  if stype ~= nil and stype ~= SIGNATURE_TYPE then
    return fail("signature_type", "unsupported Wechatpay-Signature-Type " .. tostring(stype))
  end
  if not ts:match("^%d+$") or #ts > 12 then
    return fail("timestamp", "Wechatpay-Timestamp is not a number")
  end
  local skew = math.abs(st.now() - tonumber(ts))
  if skew >= st.clock_skew then
    return fail("timestamp", string.format("Wechatpay-Timestamp %s is %d s from local time (limit %g s)",
      ts, math.floor(skew), st.clock_skew))
  end
  if sig:sub(1, #PROBE_PREFIX) == PROBE_PREFIX then
    return fail("probe", "signature probe (WECHATPAY/SIGNTEST/) rejected", { probe = true })
  end
  local want, key = serial:upper(), nil
  if st.public_key and st.public_key.id:upper() == want then
    key = st.public_key.key
  else
    local now = st.now()
    for _, c in ipairs(certificates or st.certificates) do
      if c.serial == want then
        if c.not_after < now then return fail("serial", "platform certificate " .. want .. " has expired") end
        key = c.key
        break
      end
    end
  end
  if not key and st.expired[want] then
    return fail("serial", "platform certificate " .. want .. " has expired")
  end
  if not key then return fail("serial", "unknown Wechatpay-Serial " .. serial) end
  local raw = core.base64_decode(sig)
  if not raw or #raw * 8 ~= key:bits() then
    return fail("signature", "Wechatpay-Signature is not a well-formed signature")
  end
  if not key:verify(ts .. "\n" .. nonce .. "\n" .. (resp.body or "") .. "\n", sig) then
    return fail("signature", "bad signature")
  end
  return want
end

---------------------------------------------------------------------------------------------
-- The request pipeline
---------------------------------------------------------------------------------------------

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

-- Defence in depth for strings from outside code (transports, servers): remove anything
-- that looks like a secret of this client before it reaches an error or a log line.
-- `sent` lists the Authorization values of the request at hand: a server or proxy may
-- echo one whole, without its scheme, or just the signature.
local function redact(st, s, sent)
  s = tostring(s)
  s = replace_plain(s, st.apiv3_key, "[REDACTED]")
  for _, auth in ipairs(sent or {}) do
    local signature = auth:match('signature="([^"]+)"')
    s = replace_plain(s, auth, "[REDACTED]")
    s = replace_plain(s, auth:match("^%S+ (.*)$"), "[REDACTED]")
    s = replace_plain(s, signature, "[REDACTED]")
    s = replace_plain(s, signature and signature:gsub("/", "\\/"), "[REDACTED]") -- JSON-escaped
  end
  s = s:gsub("%-%-%-%-%-BEGIN [%u ]*PRIVATE KEY%-%-%-%-%-.-%-%-%-%-%-END [%u ]*PRIVATE KEY%-%-%-%-%-",
    "[REDACTED KEY]")
  s = s:gsub("%-%-%-%-%-BEGIN [%u ]*PRIVATE KEY%-%-%-%-%-.*$", "[REDACTED KEY]") -- truncated PEM
  s = s:gsub("WECHATPAY2%-SHA256%-RSA2048 [^\r\n]*", "WECHATPAY2-SHA256-RSA2048 [REDACTED]")
  s = s:gsub('signature="[^"]*"?', 'signature="[REDACTED]"')
  return s
end

-- A redacted copy of `v`: strings redacted, tables copied (keys too), other values as is.
local function redact_value(st, v, sent, depth)
  if type(v) == "string" then return redact(st, v, sent) end
  if type(v) ~= "table" or errors.is(v) then return v end
  depth = depth or 0
  if depth > 16 then return "[NESTED TOO DEEPLY]" end
  local out = {}
  for k, x in pairs(v) do
    out[redact_value(st, k, sent, depth + 1)] = redact_value(st, x, sent, depth + 1)
  end
  return out
end

-- Redact an error's texts in place: its message and any string a server put in it.
local function redact_error(st, e, sent)
  e.message = redact(st, e.message, sent)
  if e.detail ~= nil then e.detail = redact_value(st, e.detail, sent) end
  return e
end

-- Every field is redacted too (copies; the tables given are not changed): an error's text
-- may quote what a server echoed.
local function log(st, level, message, fields, sent)
  if not st.logger then return end
  pcall(st.logger, level, redact(st, message, sent), redact_value(st, fields, sent))
end

local function jitter()
  -- core.nonce is a CSPRNG; using it keeps math.random's global state untouched.
  local n = core.nonce(6)
  local acc = 0
  for i = 1, #n do
    local c = n:byte(i)
    local d = c >= 97 and c - 61 or c >= 65 and c - 55 or c - 48
    acc = acc * 62 + d
  end
  return acc / (62 ^ 6)
end

local function retry_delay(st, attempt, resp)
  local ra = resp and resp.headers["retry-after"]
  if type(ra) == "string" and ra:match("^%s*%d+%s*$") then
    return math.min(tonumber(ra), st.retry_after_max)
  end
  local d = math.min(st.retry_max_delay, st.retry_base_delay * 2 ^ (attempt - 1))
  return d / 2 + (d / 2) * jitter() -- "equal jitter": at least half the backoff
end

local function transport_error(st, terr, sent)
  if type(terr) ~= "table" then terr = { message = tostring(terr) } end
  local kind = terr.kind == "timeout" and "timeout" or "network"
  -- `code` stays the local one (NETWORK_ERROR / TIMEOUT); libcurl's number goes beside it.
  return errors.new(kind, redact(st, terr.message or kind, sent), {
    curl_code = terr.code, connected = terr.connected, retryable = true,
  })
end

-- An error answer may echo the request (a gateway's HTML page, a message quoting a
-- header): every text taken from it is redacted.
local function api_error(st, resp, sent)
  local body = resp.body or ""
  local code, message, detail
  local obj = body ~= "" and M.decode_json(body) or nil
  if type(obj) == "table" then
    if type(obj.code) == "string" then code = redact(st, obj.code, sent) end
    if type(obj.message) == "string" then message = redact(st, obj.message, sent) end
    if obj.detail ~= nil and obj.detail ~= cjson.null then detail = redact_value(st, obj.detail, sent) end
  end
  if not message then
    -- Redacted before the snippet is cut, so no partial Authorization survives.
    local snippet = redact(st, body, sent):sub(1, 200):gsub("%s+", " ")
    message = snippet ~= "" and snippet or ("HTTP " .. resp.status)
  end
  local status = resp.status
  local retryable = status == 429 or status >= 500
    or code == "SYSTEM_ERROR" or code == "SERVICE_UNAVAILABLE"
  local e = errors.new("api", message, { code = code, detail = detail, status = status,
    request_id = resp.headers["request-id"], retryable = retryable })
  -- Error answers need no signature (spec §2.4); when one is present, record the outcome.
  local h = resp.headers
  if h["wechatpay-signature"] and h["wechatpay-timestamp"] and h["wechatpay-nonce"]
     and h["wechatpay-serial"] then
    e.signature_verified = verify_response(st, resp) ~= nil
  end
  return e
end

-- WeChat Pay answers 202 for "accepted, not yet processed: repeat the same request". It
-- carries no result, so it is never data: it is retried like a 5xx, and this is the error
-- when the retries are spent.
local function accepted_error(resp)
  return errors.new("api", "request accepted but not yet processed: repeat it with the same "
    .. "idempotency_key", { status = 202, request_id = resp.headers["request-id"], retryable = true })
end

-- Send one attempt, trying the other host when the first cannot be connected to.
-- Returns resp, nil, base_url or nil, err, base_url.
-- Methods a server must treat as repeatable; anything else is repeated only with an
-- Idempotency-Key.
local SAFE_METHODS = { GET = true, PUT = true, DELETE = true }

local function send_attempt(st, r, remaining)
  local first, second = st.base_url, st.backup_url
  if second and st.prefer_backup_until then
    if st.monotonic() < st.prefer_backup_until then
      first, second = second, first
    else
      st.prefer_backup_until = nil -- cool-down over: primary again
    end
  end
  local t_start = st.monotonic()
  local resp, terr, base, leg_used
  for leg = 1, second and 2 or 1 do
    leg_used = leg
    base = leg == 1 and first or second
    -- Fresh timestamp and nonce for every transmission (spec §1.4).
    -- A transport may pace the ~1 ms RSA signature (the ngx one spreads bursts over turns).
    if st.transport.pace then st.transport.pace() end
    local auth = core.authorization{ mchid = st.mchid, serial_no = st.serial_no,
      key = st.private_key, method = r.method, url = r.target, body = r.sign_body or r.body or "" }
    local headers = {}
    for k, v in pairs(r.headers) do headers[k] = v end
    headers.Authorization = auth
    -- Remembered so that an echo of it can be redacted from errors and logs.
    r.sent = r.sent or {}
    r.sent[#r.sent + 1] = auth
    local timeout, connect_timeout = r.timeout, r.connect_timeout
    if remaining then
      local left = remaining - (st.monotonic() - t_start)
      if left <= 0 then
        resp, terr = nil, terr or { kind = "timeout", message = "deadline reached before sending" }
        break
      end
      timeout = math.min(timeout, left)
      connect_timeout = math.min(connect_timeout, left)
    end
    log(st, "debug", "wxpay request", { method = r.method, path = r.target, base_url = base,
      attempt = r.attempt, idempotency_key = r.idempotency_key }, r.sent)
    resp, terr = st.transport.request{ method = r.method, url = base .. r.target,
      target = r.target, headers = headers, body = r.body, timeout = timeout,
      connect_timeout = connect_timeout,
      -- Sent at most once: transports must not silently re-send it on a new connection.
      fresh_connect = not SAFE_METHODS[r.method] and not r.idempotency_key or nil }
    if resp then break end
    if type(terr) ~= "table" or terr.connected ~= false or leg == 2 or not second then break end
    log(st, "warn", "wxpay failover: cannot connect, trying the other host",
      { from = base, to = second, path = r.target, error = terr.message }, r.sent)
  end
  -- Only a switch of host changes the preference; answers from the preferred host do not
  -- extend the cool-down.
  if resp and leg_used == 2 then
    st.prefer_backup_until = base ~= st.base_url and st.monotonic() + st.failover_cooldown or nil
  end
  return resp, terr, base
end

local refresh_certificates -- defined below; perform() calls it on an unknown serial

-- An unknown serial may be a certificate issued since the last download: refresh once,
-- at most every 60 s (spec §2.3 step 4, §3.4). The very first download (combined mode
-- meeting its first certificate-signed answer) does not count toward that limit.
local function may_refresh_for_unknown_serial(st)
  if not st.download then return false end
  if not st.download_attempted then return true end
  local now = st.monotonic()
  if st.unknown_serial_refresh and now - st.unknown_serial_refresh < 60 then return false end
  st.unknown_serial_refresh = now
  return true
end

-- Run a prepared request (method, target, body, headers, idempotency_key, …) with
-- retries, failover, deadline and verification. Returns data, nil, meta or nil, err.
local function perform(st, r)
  local t0 = st.monotonic()
  local deadline = r.deadline or st.deadline
  local max_retries = r.max_retries or st.max_retries
  r.timeout = r.timeout or st.timeout
  r.connect_timeout = r.connect_timeout or st.connect_timeout
  local attempt = 0
  while true do
    attempt = attempt + 1
    r.attempt = attempt
    local remaining = deadline and deadline - (st.monotonic() - t0) or nil
    local resp, terr, base = send_attempt(st, r, remaining)
    local err
    if resp then
      resp.headers = lower_headers(resp.headers)
      resp.body = resp.body or ""
      local status = tonumber(resp.status) or 0
      resp.status = status
      local meta = { status = status, request_id = resp.headers["request-id"],
        idempotency_key = r.idempotency_key, attempts = attempt, headers = resp.headers,
        base_url = base }
      log(st, "debug", "wxpay response", { status = status, request_id = meta.request_id,
        attempt = attempt, path = r.target }, r.sent)
      if status == 202 then
        err = accepted_error(resp)
      elseif status >= 200 and status < 300 then
        if r.raw then return resp, nil, meta end -- the caller verifies (certificate download)
        local key_id, verr
        if r.verify ~= false then
          key_id, verr = verify_response(st, resp)
          if not key_id and verr.check == "serial" and may_refresh_for_unknown_serial(st)
             and refresh_certificates(st) then
            key_id, verr = verify_response(st, resp)
          end
          if not key_id then
            verr.attempts, verr.idempotency_key = attempt, r.idempotency_key
            redact_error(st, verr, r.sent)
            log(st, "warn", "wxpay response rejected", { error = tostring(verr) }, r.sent)
            return nil, verr -- never retried: the operation may have happened
          end
          meta.verified_by = key_id
        end
        if resp.body == "" then return {}, nil, meta end
        local data, derr = M.decode_json(resp.body)
        if type(data) ~= "table" then
          return nil, errors.new("decode", "response body is not a JSON object: " .. tostring(derr or type(data)),
            { status = status, request_id = meta.request_id, attempts = attempt,
              idempotency_key = r.idempotency_key })
        end
        return data, nil, meta
      else
        err = api_error(st, resp, r.sent)
      end
    else
      err = transport_error(st, terr, r.sent)
      -- After a connection was made the server may have acted; repeat only when safe.
      if err.connected ~= false and not SAFE_METHODS[r.method] and not r.idempotency_key then
        err.retry_skipped = "not idempotent"
      end
    end
    err.attempts, err.idempotency_key = attempt, r.idempotency_key
    if not err.retryable or err.retry_skipped or attempt > max_retries then return nil, err end
    local delay = retry_delay(st, attempt, resp)
    if deadline and (st.monotonic() - t0) + delay >= deadline then
      err.deadline_exceeded = true
      return nil, err
    end
    log(st, "warn", "wxpay retry", { attempt = attempt, delay = delay, path = r.target,
      error = tostring(err) }, r.sent)
    st.sleep(delay)
  end
end

local CERTIFICATES_TARGET = "/v3/certificates?algorithm_type=RSA"

-- Download /v3/certificates and replace the downloaded set, following spec §3.3: decrypt
-- every entry (any failure rejects the whole answer), check each certificate's serial and
-- validity, verify the answer with the already trusted keys plus the new certificates, and
-- only then swap the set in. Returns true or nil, err; the current set is kept on failure.
local function download_certificates(st)
  local now_mono = st.monotonic()
  st.next_refresh = now_mono + 60 -- a failure is retried at most once a minute
  st.download_attempted = true
  local resp, err = perform(st, { method = "GET", target = CERTIFICATES_TARGET, raw = true,
    headers = { Accept = "application/json", ["User-Agent"] = st.user_agent } })
  if not resp then
    if err.kind == "api" and err.status == 404 and st.public_key then
      -- public-key-only merchants have no platform certificates (spec §3.6)
      st.next_refresh = now_mono + st.certificate_refresh_interval
      return true
    end
    log(st, "warn", "wxpay certificate download failed", { error = tostring(err) })
    return nil, err
  end
  local function bad(kind, msg, extra)
    local fields = { status = resp.status, request_id = resp.headers["request-id"] }
    for k, v in pairs(extra or {}) do fields[k] = v end
    local e = errors.new(kind, "/v3/certificates: " .. msg, fields)
    log(st, "warn", "wxpay certificate download rejected", { error = tostring(e) })
    return nil, e
  end
  local obj = M.decode_json(resp.body)
  if type(obj) ~= "table" or type(obj.data) ~= "table" then return bad("decode", "no data array") end
  local now = st.now()
  local fresh, ring = {}, {}
  for _, c in ipairs(st.certificates) do ring[#ring + 1] = c end
  for i, entry in ipairs(obj.data) do
    local ec = type(entry) == "table" and entry.encrypt_certificate
    if type(ec) ~= "table" or type(entry.serial_no) ~= "string" or type(ec.ciphertext) ~= "string"
       or type(ec.nonce) ~= "string" or ec.algorithm ~= "AEAD_AES_256_GCM" then
      return bad("decode", "entry " .. i .. " is malformed")
    end
    local aad = type(ec.associated_data) == "string" and ec.associated_data or ""
    local pem = core.aes_gcm_decrypt(st.apiv3_key, ec.nonce, aad, ec.ciphertext)
    if not pem then
      return bad("signature", "entry " .. i .. " does not decrypt with the apiv3_key", { check = "decrypt" })
    end
    local cert = core.load_certificate(pem)
    if not cert then return bad("decode", "entry " .. i .. " is not a certificate") end
    if serial_key(cert:serial()) ~= serial_key(entry.serial_no) then
      return bad("signature", "entry " .. i .. " serial_no does not match its certificate",
        { check = "serial", serial = entry.serial_no })
    end
    if cert:not_before() <= now and now <= cert:not_after() then
      local c = { serial = entry.serial_no:upper(), key = cert:public_key(), not_before = cert:not_before(),
        not_after = cert:not_after(), source = "downloaded" }
      fresh[#fresh + 1] = c
      ring[#ring + 1] = c
    end
  end
  resp.what = "/v3/certificates response"
  local verified, verr = verify_response(st, resp, ring)
  if not verified then
    log(st, "warn", "wxpay certificate download rejected", { error = tostring(verr) })
    return nil, verr
  end
  local keep = {}
  for _, c in ipairs(st.certificates) do
    if c.source ~= "downloaded" then keep[#keep + 1] = c end
  end
  for _, c in ipairs(fresh) do keep[#keep + 1] = c end
  st.certificates = keep
  st.has_downloaded = #fresh > 0
  st.next_refresh = now_mono + st.certificate_refresh_interval
  log(st, "debug", "wxpay certificates refreshed", { count = #fresh })
  return true
end

-- One download at a time: a caller arriving while another coroutine (OpenResty, the
-- concurrent transport) is downloading waits for that download's outcome instead of
-- starting a second one. Waiting uses the `sleep` hook, so it yields where that yields.
refresh_certificates = function(st)
  if st.refreshing then
    local limit = st.monotonic() + (st.timeout + st.connect_timeout) * (st.max_retries + 2)
    while st.refreshing and st.monotonic() < limit do st.sleep(0.01) end
    if st.refreshing then
      return nil, errors.new("timeout", "waited too long for a certificate download in progress")
    end
    return st.refresh_ok, st.refresh_err
  end
  st.refreshing = true
  local ok, res, err = pcall(download_certificates, st)
  st.refreshing = false
  if not ok then error(res, 0) end
  st.refresh_ok, st.refresh_err = res, err
  return res, err
end

-- Certificates ready before a call: the first download and the periodic refresh (spec
-- §3.4). With a public key too (combined mode) certificates are only fetched on an unknown
-- serial, and kept fresh periodically once some were downloaded. Returns true or nil, err.
local function ensure_certificates(st)
  prune_expired(st)
  if not st.download or (st.public_key and not st.has_downloaded) then return true end
  -- A download in progress elsewhere is waited for (its certificates may be the first).
  if not st.refreshing and st.next_refresh and st.monotonic() < st.next_refresh then return true end
  local ok, err = refresh_certificates(st)
  if not ok and #st.certificates == 0 and not st.public_key then return nil, err end -- nothing to verify with
  return true
end

-- Everything a call goes through: certificates ready, request serial chosen, then perform.
local function run(st, r)
  local ok, err = ensure_certificates(st)
  if not ok then return nil, err end
  local serial = r.wechatpay_serial or request_serial(st)
  if serial then r.headers["Wechatpay-Serial"] = serial end
  return perform(st, r)
end

---------------------------------------------------------------------------------------------
-- client.request: the generic signed call
---------------------------------------------------------------------------------------------

local METHODS = { GET = true, POST = true, PUT = true, PATCH = true, DELETE = true }
local REQUEST_KEYS = { method = true, path = true, query = true, body = true, headers = true,
  idempotency_key = true, wechatpay_serial = true, verify = true, timeout = true,
  connect_timeout = true, deadline = true, max_retries = true }
-- Set by the client, or (Transfer-Encoding, Connection) deciding how the body is framed
-- and the connection kept: a caller's value could desynchronise the transport's framing.
local RESERVED_HEADERS = { authorization = true, host = true, ["content-length"] = true,
  ["content-type"] = true, ["user-agent"] = true, ["transfer-encoding"] = true,
  connection = true }

local function encode_query_value(v, field)
  local t = type(v)
  if t == "string" then
    local ok, why = M.check_utf8(v)
    if not ok then return nil, errors.invalid_argument(field, why) end
    return M.percent_encode(v)
  elseif t == "number" then
    if math.floor(v) ~= v or math.abs(v) >= 2 ^ 53 then
      return nil, errors.invalid_argument(field, "numbers in a query must be integers")
    end
    return string.format("%d", v)
  elseif t == "boolean" then
    return tostring(v)
  elseif t == "table" then
    local ok, s = pcall(M.encode_json, v)
    if not ok then return nil, errors.invalid_argument(field, s) end
    local u, why = M.check_utf8(s)
    if not u then return nil, errors.invalid_argument(field, why) end
    return M.percent_encode(s)
  end
  return nil, errors.invalid_argument(field, "must be a string, number, boolean or table")
end

--- Build the query string once: an array of `{name, value}` pairs keeps its order, a map is
-- sorted by name. Table values become compact JSON; everything is percent-encoded.
-- @return string (without `?`), or nil and an `invalid_argument` error
function M.build_query(query)
  if query == nil then return "" end
  if type(query) ~= "table" then return nil, errors.invalid_argument("query", "must be a table") end
  local items = {}
  if #query > 0 then
    for i, pair in ipairs(query) do
      if type(pair) ~= "table" or type(pair[1]) ~= "string" then
        return nil, errors.invalid_argument("query[" .. i .. "]", "must be a {name, value} pair")
      end
      items[#items + 1] = pair
    end
  else
    for k, v in pairs(query) do
      if type(k) ~= "string" then return nil, errors.invalid_argument("query", "names must be strings") end
      items[#items + 1] = { k, v }
    end
    table.sort(items, function(a, b) return a[1] < b[1] end)
  end
  local parts = {}
  for _, pair in ipairs(items) do
    local name, value = pair[1], pair[2]
    if value ~= nil then
      local enc, err = encode_query_value(value, "query." .. name)
      if not enc then return nil, err end
      parts[#parts + 1] = M.percent_encode(name) .. "=" .. enc
    end
  end
  return table.concat(parts, "&")
end

local function check_header_value(field, v)
  if type(v) ~= "string" then return nil, errors.invalid_argument(field, "must be a string") end
  if v:find("[%z\r\n]") then return nil, errors.invalid_argument(field, "must not contain CR, LF or NUL") end
  return true
end

--- Validate an Idempotency-Key (`^[A-Za-z0-9|_*-]{1,48}$`, spec §9.3).
-- @return true, or nil and an `invalid_argument` error for `field`
function M.check_idempotency_key(key, field)
  if type(key) ~= "string" then return nil, errors.invalid_argument(field, "must be a string") end
  if #key < 1 or #key > 48 or not key:match("^[A-Za-z0-9|_*%-]+$") then
    return nil, errors.invalid_argument(field, "must be 1-48 characters of A-Z a-z 0-9 | _ * -")
  end
  return true
end

--- Validate the per-call options shared by every service function: `timeout`,
-- `connect_timeout`, `deadline` (positive seconds, at most 86400), `max_retries` (integer >= 0),
-- `verify` (boolean), `wechatpay_serial` (string).
-- @tparam table t the table holding them
-- @tparam string prefix prefix for field names in errors (e.g. `"opts."`)
-- @return true, or nil and an `invalid_argument` error
function M.check_call_options(t, prefix)
  for _, name in ipairs({ "timeout", "connect_timeout", "deadline" }) do
    local v = t[name]
    if v ~= nil and (type(v) ~= "number" or v ~= v or v <= 0 or v > MAX_SECONDS) then
      return nil, errors.invalid_argument(prefix .. name, "must be a positive number of seconds, at most "
        .. MAX_SECONDS)
    end
  end
  local mr = t.max_retries
  if mr ~= nil and (type(mr) ~= "number" or mr < 0 or mr > 20 or math.floor(mr) ~= mr) then
    return nil, errors.invalid_argument(prefix .. "max_retries", "must be an integer 0..20")
  end
  if t.verify ~= nil and type(t.verify) ~= "boolean" then
    return nil, errors.invalid_argument(prefix .. "verify", "must be a boolean")
  end
  if t.wechatpay_serial ~= nil then
    local ok, e = check_header_value(prefix .. "wechatpay_serial", t.wechatpay_serial)
    if not ok then return nil, e end
  end
  return true
end

-- An Idempotency-Key given as a header is the key of the request: same format as the
-- option, and it must not contradict the option (meta would report the other one).
local function idempotency_header(field, value, option)
  local ok, e = M.check_idempotency_key(value, field)
  if not ok then return nil, e end
  if option ~= nil and option ~= value then
    return nil, errors.invalid_argument(field, "conflicts with idempotency_key (give the key once)")
  end
  return true
end

-- Longest request target (path plus query) sent; servers commonly refuse longer ones.
local MAX_TARGET = 8192

-- A `.` or `..` segment (also as `%2e`) would be resolved by libcurl or a proxy after the
-- signature was made over the unresolved path, and could reach another endpoint.
local function check_segments(path)
  for segment in path:gmatch("/([^/]*)") do
    local plain = segment:gsub("%%2[eE]", ".")
    if plain == "." or plain == ".." then
      return nil, "must not contain a \"" .. segment .. "\" segment (dot segments are refused)"
    end
  end
  return true
end

-- Turn a validated request spec into the prepared form perform() takes.
local function prepare(st, spec)
  for k in pairs(spec) do
    if not REQUEST_KEYS[k] then return nil, errors.invalid_argument(tostring(k), "unknown request field") end
  end
  local method = spec.method
  if type(method) ~= "string" or not METHODS[method:upper()] then
    return nil, errors.invalid_argument("method", "must be GET, POST, PUT, PATCH or DELETE")
  end
  method = method:upper()
  local path = spec.path
  if type(path) ~= "string" or not path:match("^/[A-Za-z0-9%-._~!$&'()*+,;=:@/%%]*$")
     or path:find("%%%X") or path:find("%%.%X") or path:find("%%.?$") then
    return nil, errors.invalid_argument("path", "must start with / and be percent-encoded (no query or fragment)")
  end
  local ok_path, bad_segment = check_segments(path)
  if not ok_path then return nil, errors.invalid_argument("path", bad_segment) end
  if #path > MAX_TARGET then
    return nil, errors.invalid_argument("path", "longer than " .. MAX_TARGET .. " bytes")
  end
  local query, err = M.build_query(spec.query)
  if not query then return nil, err end
  local target = query == "" and path or (path .. "?" .. query)
  if #target > MAX_TARGET then
    return nil, errors.invalid_argument("query", "makes the request target (path plus query) longer than "
      .. MAX_TARGET .. " bytes")
  end

  local body = spec.body
  if type(body) == "table" then
    local ok, s = pcall(M.encode_json, body)
    if not ok then return nil, errors.invalid_argument("body", s) end
    body = s
  elseif body ~= nil and type(body) ~= "string" then
    return nil, errors.invalid_argument("body", "must be a table or a JSON string")
  end
  if body then
    if method == "GET" then return nil, errors.invalid_argument("body", "GET requests carry no body") end
    local ok, why = M.check_utf8(body)
    if not ok then return nil, errors.invalid_argument("body", why) end
  end

  local headers = { Accept = "application/json", ["User-Agent"] = st.user_agent }
  if body then headers["Content-Type"] = "application/json" end
  local idempotency_key = spec.idempotency_key
  if idempotency_key ~= nil then
    local ok, e = M.check_idempotency_key(idempotency_key, "idempotency_key")
    if not ok then return nil, e end
    headers["Idempotency-Key"] = idempotency_key
  end
  if spec.headers ~= nil then
    if type(spec.headers) ~= "table" then return nil, errors.invalid_argument("headers", "must be a table") end
    for name, value in pairs(spec.headers) do
      local field = "headers." .. tostring(name)
      if type(name) ~= "string" or not name:match("^[%w!#$%%&'*+.^_`|~%-]+$") then
        return nil, errors.invalid_argument(field, "is not a valid header name")
      end
      if RESERVED_HEADERS[name:lower()] then
        return nil, errors.invalid_argument(field, "is set by the client")
      end
      local ok, e = check_header_value(field, value)
      if not ok then return nil, e end
      if name:lower() == "idempotency-key" then
        ok, e = idempotency_header(field, value, spec.idempotency_key)
        if not ok then return nil, e end
        idempotency_key = value
      end
      for k in pairs(headers) do -- replace a default of the same name, whatever its case
        if k:lower() == name:lower() then headers[k] = nil end
      end
      headers[name] = value
    end
  end
  local wechatpay_serial = spec.wechatpay_serial
  for k, v in pairs(headers) do -- a Wechatpay-Serial header is the same as the option
    if k:lower() == "wechatpay-serial" then headers[k] = nil; wechatpay_serial = v end
  end
  local ok, oerr = M.check_call_options(spec, "")
  if not ok then return nil, oerr end
  return {
    method = method, target = target, body = body, headers = headers,
    idempotency_key = idempotency_key, verify = spec.verify, wechatpay_serial = wechatpay_serial,
    timeout = spec.timeout, connect_timeout = spec.connect_timeout,
    deadline = spec.deadline, max_retries = spec.max_retries,
  }
end

---------------------------------------------------------------------------------------------
-- The client object
---------------------------------------------------------------------------------------------

--- Create a client. Use `wxpay.new` instead of calling this directly.
-- @tparam table config see ARCHITECTURE.md; unknown keys are refused
-- @tparam string version the library version (for the User-Agent)
-- @return client, or `nil` and an error of kind `"config"` naming the field
function M.new(config, version)
  if type(config) ~= "table" then
    error("bad argument #1 to 'new' (table expected, got " .. type(config) .. ")", 3)
  end
  local st, err = build_state(config, version or "0.0.0")
  if not st then return nil, err end

  local label = string.format("wxpay.client (mchid %s, base_url %s)", st.mchid, st.base_url)
  local client = {}

  --- Call any APIv3 endpoint, signed and verified like the product functions.
  -- `spec` fields: `method`, `path` (percent-encoded, no query, no `.` or `..` segment, also
  -- not as `%2e`; path plus query at most 8192 bytes), `query` (map, sorted by name,
  -- or array of `{name, value}` pairs kept in order; table values are sent as JSON),
  -- `body` (table, encoded once as compact JSON, or a JSON string sent as is), `headers`
  -- (not Authorization, Host, Content-Length, Content-Type, User-Agent, Transfer-Encoding or
  -- Connection, which the client and its transport own),
  -- `idempotency_key` (an `Idempotency-Key` header is the same; both only when equal),
  -- `wechatpay_serial` (overrides the default request serial),
  -- `verify = false` (only for documented unsigned endpoints), `timeout`,
  -- `connect_timeout`, `deadline`, `max_retries`.
  -- A spec that is not a table raises; bad fields give `invalid_argument` and send nothing.
  -- A 202 answer (accepted, not yet processed) is repeated within `max_retries`, whatever
  -- the method, as WeChat Pay asks; when they are spent it is an `api` error with
  -- `status = 202`, `retryable = true`, never data.
  -- @treturn table|nil data (the decoded body; `{}` for an empty body)
  -- @treturn table|nil err
  -- @treturn table|nil meta `{ status, request_id, idempotency_key, attempts, headers, base_url }`
  function client.request(spec, extra)
    if spec == client then spec = extra end -- tolerate client:request{…}
    if type(spec) ~= "table" then
      error("bad argument #1 to 'request' (table expected, got " .. type(spec) .. ")", 2)
    end
    local r, perr = prepare(st, spec)
    if not r then return nil, perr end
    return run(st, r)
  end

  client.certificates = {}

  --- The keys responses are verified with.
  -- @treturn table array of `{ serial_no, not_before, not_after, source }`, `source` being
  --   `"public_key"` (the WeChat Pay public key; serial_no is its id, no dates),
  --   `"configured"` or `"downloaded"`
  function client.certificates.list()
    prune_expired(st)
    local out = {}
    if st.public_key then out[1] = { serial_no = st.public_key.id, source = "public_key" } end
    for _, c in ipairs(st.certificates) do
      out[#out + 1] = { serial_no = c.serial, not_before = c.not_before, not_after = c.not_after,
        source = c.source }
    end
    return out
  end

  --- Download `/v3/certificates` now (needs `apiv3_key`), verifying the answer per spec §3.3.
  -- @return true, or nil and an error (the current set is kept)
  function client.certificates.refresh()
    if not st.apiv3_key then return nil, errors.config("apiv3_key", "required to download certificates") end
    return refresh_certificates(st)
  end

  --- Release the client's HTTP session (keys are freed by the garbage collector).
  function client.close()
    if st.transport.close then st.transport.close() end
  end

  -- What the API modules may use: the pipeline and the shared encoders, nothing secret.
  local api = {
    offset_mode = st.offset_mode,
    encode_json = M.encode_json,
    percent_encode = M.percent_encode,
    check_utf8 = M.check_utf8,
    check_idempotency_key = M.check_idempotency_key,
    check_call_options = M.check_call_options,
    new_idempotency_key = function() return core.nonce(32) end,
    send = function(r)
      r.headers = { Accept = "application/json", ["User-Agent"] = st.user_agent }
      -- A multipart upload signs its meta JSON (`sign_body`) and sends the whole body.
      if r.body then r.headers["Content-Type"] = r.content_type or "application/json" end
      if r.idempotency_key then r.headers["Idempotency-Key"] = r.idempotency_key end
      return run(st, r)
    end,
  }
  client.partnerships = require("wxpay.api.partnerships").new(api)
  client.media = require("wxpay.api.media").new(api)
  -- Many calls at once: wraps st.transport and st.sleep so tasks yield to a scheduler.
  client.concurrent = require("wxpay.concurrent").attach(st, config)

  -- What the callback and sensitive-field modules may use: the key ring as closures, never
  -- the key material itself.
  local keyring = {
    has_apiv3_key = st.apiv3_key ~= nil,
    -- Verify a signed message (lower-cased headers, raw body) like a response, with the
    -- same refresh on an unknown serial. Returns the key id, or nil and a signature error.
    verify = function(headers, body)
      prune_expired(st)
      local msg = { headers = headers, body = body, what = "callback" }
      local key_id, verr = verify_response(st, msg)
      if not key_id and verr.check == "serial" and may_refresh_for_unknown_serial(st)
         and refresh_certificates(st) then
        key_id, verr = verify_response(st, msg)
      end
      return key_id, verr
    end,
    decrypt_resource = function(nonce, aad, ciphertext)
      return core.aes_gcm_decrypt(st.apiv3_key, nonce, aad, ciphertext)
    end,
    -- The key (and its serial) a request's default Wechatpay-Serial names.
    encryption_key = function()
      local ok, kerr = ensure_certificates(st)
      if not ok then return nil, kerr end
      local key, serial = encryption_key(st)
      if not key then
        return nil, errors.config("platform_certificates", "no platform certificate or public key to encrypt with")
      end
      return key, serial
    end,
    decrypt_oaep = function(ciphertext) return st.private_key:decrypt_oaep(ciphertext) end,
  }
  client.notify = require("wxpay.notify").new(keyring)
  local sensitive = require("wxpay.sensitive").new(keyring)
  client.encrypt, client.decrypt = sensitive.encrypt, sensitive.decrypt

  return setmetatable(client, {
    __metatable = "wxpay.client",
    __tostring = function() return label end,
  })
end

return M
