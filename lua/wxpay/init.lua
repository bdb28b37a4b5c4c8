--- wxpay: WeChat Pay APIv3 for merchants, a Lua layer over a C core (OpenSSL, libcurl).
--
--     local wxpay = require("wxpay")
--     local client, err = wxpay.new{ mchid = "1900000001", serial_no = "…",
--       private_key_file = "apiclient_key.pem",
--       wechatpay_public_key_file = "pub_key.pem", wechatpay_public_key_id = "PUB_KEY_ID_…" }
--     local rel, err, meta = client.partnerships.build{ … }
--
-- For scripts there is one optional module-level default client: `wxpay.configure(config)`,
-- then `wxpay.partnerships.build(…)`, `wxpay.request(…)` and so on.
-- @module wxpay

local errors = require("wxpay.errors")

local wxpay = {
  _VERSION = "0.3.0",
  errors = errors,
}

local default_client -- the only module-level state

--- Create a client. Loads and checks every key once.
-- @tparam table config see ARCHITECTURE.md; unknown keys are refused as typos
-- @return client, or `nil` and an error of kind `"config"` naming the field
function wxpay.new(config)
  return require("wxpay.client").new(config, wxpay._VERSION)
end

--- Create the module-level default client used by `wxpay.partnerships.*` and
-- `wxpay.request`. A failed configure keeps the previous default.
-- @tparam table config as for `new`
-- @return the client, or `nil` and a `"config"` error
function wxpay.configure(config)
  local client, err = wxpay.new(config)
  if not client then return nil, err end
  if default_client then default_client.close() end
  default_client = client
  return client
end

local function not_configured()
  return errors.new("config", "no default client: call wxpay.configure(config) first",
    { field = "configure" })
end

-- Forward to the default client; functions that return errors return this one too.
local function forward(get)
  return function(...)
    if not default_client then return nil, not_configured() end
    return get(default_client)(...)
  end
end

--- `client.request` of the default client.
wxpay.request = forward(function(c) return c.request end)

--- The partnerships functions of the default client (`list` raises when not configured,
-- as iterators report failures by raising).
wxpay.partnerships = {
  build = forward(function(c) return c.partnerships.build end),
  terminate = forward(function(c) return c.partnerships.terminate end),
  page = forward(function(c) return c.partnerships.page end),
  check = forward(function(c) return c.partnerships.check end),
  list = function(...)
    if not default_client then error(not_configured(), 2) end
    return default_client.partnerships.list(...)
  end,
}

--- The rest of the default client's surface, forwarded the same way: `wxpay.encrypt`,
-- `wxpay.decrypt`, `wxpay.notify.parse`, `wxpay.media.upload`, `wxpay.certificates.list`
-- and `.refresh`, and `wxpay.concurrent` (which raises when not configured, as it runs
-- the caller's tasks).
wxpay.encrypt = forward(function(c) return c.encrypt end)
wxpay.decrypt = forward(function(c) return c.decrypt end)
wxpay.notify = { parse = forward(function(c) return c.notify.parse end) }
wxpay.media = { upload = forward(function(c) return c.media.upload end) }
wxpay.certificates = {
  list = forward(function(c) return c.certificates.list end),
  refresh = forward(function(c) return c.certificates.refresh end),
}
--- The APIv2 signature of the 发券 flows, without a client: the upper-case hex
-- HMAC-SHA256 of the V2 string of `params` (every non-empty parameter but `sign`, sorted by
-- name, raw values, then `&key=` + key), computed in the C core. docs/issuing.md.
-- @tparam table params name → string or integer
-- @tparam string key the merchant's APIv2 key
-- @treturn string|nil 64 upper-case hex digits
-- @treturn table|nil an `invalid_argument` error (a table, boolean, fraction, control
--   character or invalid UTF-8 among the values; nothing to sign)
function wxpay.sign_v2(params, key)
  local sign, err = require("wxpay.v2sign").sign(params, key)
  return sign, err
end

function wxpay.concurrent(...)
  if not default_client then error(not_configured(), 2) end
  return default_client.concurrent(...)
end

return wxpay
