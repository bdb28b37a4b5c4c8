--- The wxpay client: `new` assembles a client from its parts. The pipeline a call goes
-- through reads from the folder: wxpay.config (the keys, checked once), wxpay.request
-- (validate, encode), wxpay.pipeline (sign, send, verify, decode, with wxpay.retry around
-- send), wxpay.keyring and wxpay.verify (the keys answers are checked with), wxpay.redact.
-- Created by `wxpay.new(config)`; docs/config.md lists the configuration keys and
-- ARCHITECTURE.md holds the public contract. Service functions (`client.request`,
-- `client.partnerships.*`, `client.certificates.*`) are dot-called closures bound to the
-- client.
-- @module wxpay.client

local core = require("wxpay.core")
local errors = require("wxpay.errors")
local config_mod = require("wxpay.config")
local json = require("wxpay.json")
local keyring = require("wxpay.keyring")
local pipeline = require("wxpay.pipeline")
local request = require("wxpay.request")

local M = {}

-- The shared encoders and checks, exported for the API modules, the CLI and the specs.
M.percent_encode = request.percent_encode
M.check_utf8 = request.check_utf8
M.encode_json = json.encode
M.decode_json = json.decode
M.build_query = request.build_query
M.check_idempotency_key = request.check_idempotency_key
M.check_call_options = request.check_call_options

-- What the API modules may use: the pipeline and the shared encoders, nothing secret.
local function api_handle(st)
  -- `offset_mode` and `mchid` (the default for stock_creator_mchid, belong_merchant and the
  -- like) are read from `st` each time: client.reload may change them.
  return setmetatable({
    encode_json = json.encode,
    percent_encode = request.percent_encode,
    check_utf8 = request.check_utf8,
    check_idempotency_key = request.check_idempotency_key,
    check_call_options = request.check_call_options,
    check_extra_headers = request.check_extra_headers,
    -- nil and an error (nothing sent) when the random source fails.
    new_idempotency_key = function()
      local key, why = core.nonce(32)
      if key then return key end
      return nil, errors.new("network", "request not sent: no random source for a request number: "
        .. tostring(why), { code = "RANDOM_FAILED", connected = false, retryable = false })
    end,
    send = function(r)
      r.product = true -- labelled with its declared route template (wxpay.api.routes)
      r.headers = { Accept = "application/json", ["User-Agent"] = st.user_agent }
      -- A multipart upload signs its meta JSON (`sign_body`) and sends the whole body.
      if r.body then r.headers["Content-Type"] = r.content_type or "application/json" end
      if r.idempotency_key then r.headers["Idempotency-Key"] = r.idempotency_key end
      -- A product call's checked `opts.headers` (e.g. Accept-Language), replacing a default
      -- of the same name whatever its case.
      for name, value in pairs(r.extra_headers or {}) do
        for k in pairs(r.headers) do
          if k:lower() == name:lower() then r.headers[k] = nil end
        end
        r.headers[name] = value
      end
      return pipeline.run(st, r)
    end,
  }, { __index = function(_, k)
    if k == "mchid" or k == "offset_mode" then return st[k] end
  end })
end

-- What the callback and sensitive-field modules may use: the key ring as closures, never
-- the key material itself.
local function keyring_handle(st)
  -- `has_apiv3_key` and `mchid` (whose callbacks these are) are read from `st` each time:
  -- client.reload may change them.
  local live = { has_apiv3_key = function() return st.apiv3_key ~= nil end,
    mchid = function() return st.mchid end }
  return setmetatable({
    -- Verify a signed message (lower-cased headers, raw body) like a response, with the
    -- same refresh on an unknown serial. Returns the key id, or nil and a signature error.
    verify = function(headers, body)
      keyring.prune_expired(st)
      return keyring.verify(st, { headers = headers, body = body, what = "callback" })
    end,
    -- The APIv3 key, then the previous one while it is accepted (wxpay.rotation).
    decrypt_resource = function(nonce, aad, ciphertext)
      return (require("wxpay.rotation").decrypt(st, nonce, aad, ciphertext))
    end,
    -- The key (and its serial) a request's default Wechatpay-Serial names.
    encryption_key = function()
      local ok, kerr = keyring.ensure(st)
      if not ok then return nil, kerr end
      local key, serial = keyring.encryption_key(st)
      if not key then
        return nil, errors.config("platform_certificates", "no platform certificate or public key to encrypt with")
      end
      return key, serial
    end,
    decrypt_oaep = function(ciphertext) return st.private_key:decrypt_oaep(ciphertext) end,
  }, { __index = function(_, k) return live[k] and live[k]() end })
end

-- `client.certificates`: the ring as the caller sees it.
local function certificates(st)
  local c = {}

  --- The keys responses are verified with.
  -- @treturn table array of `{ serial_no, not_before, not_after, source }`, `source` being
  --   `"public_key"` (the WeChat Pay public key; serial_no is its id, no dates),
  --   `"configured"` or `"downloaded"`
  function c.list()
    return keyring.list(st)
  end

  --- Download `/v3/certificates` now (needs `apiv3_key`), verifying the answer as
  -- docs/protocol.md#trusting-a-download says.
  -- @return true, or nil and an error (the current set is kept)
  function c.refresh()
    if not st.apiv3_key then return nil, errors.config("apiv3_key", "required to download certificates") end
    return keyring.refresh(st)
  end

  return c
end

-- The product tables, the transfer helpers and the callback/cipher helpers, bound to `st`.
local function bind_services(client, st, config)
  local api = api_handle(st)
  client.partnerships = require("wxpay.api.partnerships").new(api)
  client.media = require("wxpay.api.media").new(api)
  client.busifavor = require("wxpay.api.busifavor").new(api)
  client.favor = require("wxpay.api.favor").new(api)
  client.paygift = require("wxpay.api.paygift").new(api)
  -- Many calls at once: wraps st.transport and st.sleep so tasks yield to a scheduler.
  client.concurrent = require("wxpay.concurrent").attach(st, config)

  -- A file whose answer is not signed, trusted by its hash (wxpay.download).
  client.download = require("wxpay.download").bind(st, config)

  local ring = keyring_handle(st)
  client.notify = require("wxpay.notify").new(ring)
  -- 发券: the APIv2 key signs, never leaving this closure; the jump code needs the APIv3 key.
  client.issue = require("wxpay.api.issue").new(api, { has_key = function() return st.apiv2_key ~= nil end,
    sign = function(params) return require("wxpay.v2sign").sign(params, st.apiv2_key) end })
  client.busifavor.decrypt_jump_code = require("wxpay.api.jump_code").new(ring)
  require("wxpay.notify_once").bind(client.notify, st) -- client.notify.handle: once per id
  local sensitive = require("wxpay.sensitive").new(ring)
  client.encrypt, client.decrypt = sensitive.encrypt, sensitive.decrypt
end

--- Create a client. Use `wxpay.new` instead of calling this directly.
-- @tparam table config see docs/config.md; unknown keys are refused
-- @tparam string version the library version (for the User-Agent)
-- @return client, or `nil` and an error of kind `"config"` naming the field
function M.new(config, version)
  if type(config) ~= "table" then
    error("bad argument #1 to 'new' (table expected, got " .. type(config) .. ")", 3)
  end
  local st, err = config_mod.build(config, version or "0.0.0")
  if not st then return nil, err end

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
  function client.request(spec, extra)
    if spec == client then spec = extra end -- tolerate client:request{…}
    if type(spec) ~= "table" then
      error("bad argument #1 to 'request' (table expected, got " .. type(spec) .. ")", 2)
    end
    local r, perr = request.prepare(spec, st.user_agent)
    if not r then return nil, perr end
    return pipeline.run(st, r)
  end

  client.certificates = certificates(st)

  --- Replace the client's settings (keys, serial, limits, hooks) with `config`, checked
  -- and loaded first exactly as `wxpay.new` does; on failure nothing changes. Not from inside
  -- a `client.concurrent` batch. See wxpay.reload and docs/rotation.md.
  -- @tparam table config a complete config
  -- @return true, or nil and a `config` error naming the key (the old settings stay)
  function client.reload(new_config)
    if type(new_config) ~= "table" then
      error("bad argument #1 to 'reload' (table expected, got " .. type(new_config) .. ")", 2)
    end
    local ok, rerr = require("wxpay.reload").apply(st, new_config)
    if not ok then return nil, rerr end
    client.concurrent = require("wxpay.concurrent").attach(st, new_config)
    client.download = require("wxpay.download").bind(st, new_config) -- its ca_file and proxy
    return true
  end

  --- Release the client's HTTP session (keys are freed by the garbage collector).
  function client.close()
    if st.transport.close then st.transport.close() end
  end

  bind_services(client, st, config)

  return setmetatable(client, {
    __metatable = "wxpay.client",
    __tostring = function()
      return string.format("wxpay.client (mchid %s, base_url %s)", st.mchid, st.base_url)
    end,
  })
end

return M
