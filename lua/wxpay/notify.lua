--- Callback notifications (docs/protocol.md#callbacks): `client.notify.parse(headers, body)`.
--
--     local n, err, meta = client.notify.parse(headers, raw_body)
--     if not n then return err.answer.status, err.answer.body end
--     -- n.id, n.event_type, n.resource_data (the decrypted resource, decoded) …
--     return meta.answer.status, meta.answer.body
--
-- The signature is checked over the raw body with the client's key ring (public key id or
-- platform certificate serial, an unknown serial refreshing the downloaded certificates
-- like a response does) and the same `clock_skew` window, then `resource` is decrypted with
-- the APIv3 key (AEAD_AES_256_GCM) and decoded.
--
-- Decisions:
--
-- * Header names are matched case-insensitively; a value given as a list (as
--   `ngx.req.get_headers()` does for repeated headers) must hold exactly one string.
-- * `headers` that is not a table, or `body` that is neither a string nor nil, raises (a
--   programming error); everything else is `nil, err`.
-- * Kinds: `"signature"` for missing/invalid signatures, stale timestamps, unknown serials,
--   probes (`err.probe = true`) and a resource that fails to decrypt (`check = "decrypt"`);
--   `"invalid_argument"` for an empty body, non-JSON, a malformed `resource`, an unsupported
--   algorithm or a plaintext that is not JSON (field `resource`); `"config"` when the client
--   has no `apiv3_key`.
-- * Every error carries `err.answer = { status, body }`, what to send back to WeChat Pay:
--   `{"code":"FAIL","message":…}` with 400, or 500 when trying again later may succeed (no
--   `apiv3_key`, or a serial the client could not find: a certificate download may have
--   failed). Success gives `meta.answer = { status = 204, body = "" }`.
-- * The messages in answers are fixed texts, never echoing the request or plaintext.
-- @module wxpay.notify

local errors = require("wxpay.errors")
local json = require("wxpay.json")

local M = {}

local HEADERS = { "wechatpay-timestamp", "wechatpay-nonce", "wechatpay-signature",
  "wechatpay-serial", "wechatpay-signature-type", "request-id" }

local function answer(status, message)
  return { status = status, body = '{"code":"FAIL","message":"' .. message .. '"}' }
end

local function fail(kind, message, fields, status, answer_message)
  local e = errors.new(kind, message, fields)
  e.answer = answer(status or 400, answer_message or "bad request")
  return nil, e
end

-- Lower-cased copies of the headers parse needs; nil and a reason for a repeated one.
local function pick_headers(headers)
  local out = {}
  for name, value in pairs(headers) do
    if type(name) == "string" then
      local lname = name:lower()
      for _, wanted in ipairs(HEADERS) do
        if lname == wanted then
          if type(value) == "table" then
            if #value ~= 1 then return nil, name end
            value = value[1]
          end
          if type(value) ~= "string" or out[lname] then return nil, name end
          out[lname] = value
        end
      end
    end
  end
  return out
end

-- The decoded value, or nil (the reason is not needed: callers answer with a fixed text).
local function decode(s)
  return (json.decode(s))
end

-- `attach_info` of a COUPON.SEND resource (支付有礼, 营销馆 and 会员卡 channels), typed: a
-- table of strings (`act_code`, `transaction_id`, …; a number sent for an id becomes its
-- decimal string; an empty string, null and anything that is not an id are left out), nil
-- when nothing is left. An object sent as a JSON string is decoded.
local function attach_info(v)
  if type(v) == "string" and v:match("^%s*{") then v = decode(v) end
  if type(v) ~= "table" then return nil end
  local out, any = {}, false
  for k, x in pairs(v) do
    if type(x) == "number" and x == math.floor(x) and math.abs(x) < 2 ^ 53 then x = string.format("%d", x) end
    if type(x) == "string" and x ~= "" and type(k) == "string" then out[k], any = x, true end
  end
  return any and out or nil
end

--- Bind the parser to a client's key ring (done by `wxpay.client`).
-- @tparam table keyring `verify(headers, body)`, `decrypt_resource(nonce, aad, ct)`, `has_apiv3_key`
-- @treturn table `{ parse = function(headers, body) }`
function M.new(keyring)
  local notify = {}

  --- Verify, decrypt and decode one callback.
  -- @tparam table headers the request headers (any case; values strings or one-string lists)
  -- @tparam string body the raw request body, exactly as received
  -- @treturn table|nil the notification (`id`, `create_time`, `event_type`, `resource_type`,
  --   `summary`, `resource`) with `resource_data`, the decoded plaintext, and `attach_info`,
  --   the resource's `attach_info` typed (a COUPON.SEND from 支付有礼 carries `act_code`, the
  --   activity id, and `transaction_id`, both strings; nil when the resource has none)
  -- @treturn table|nil err, with `answer = { status, body }`
  -- @treturn table|nil meta `{ verified_by = serial, request_id, mchid (the client's),
  --   answer = { status = 204, body = "" } }`
  function notify.parse(headers, body)
    if type(headers) ~= "table" then
      error("bad argument #1 to 'parse' (table expected, got " .. type(headers) .. ")", 2)
    end
    if body ~= nil and type(body) ~= "string" then
      error("bad argument #2 to 'parse' (string expected, got " .. type(body) .. ")", 2)
    end
    if not keyring.has_apiv3_key then
      return fail("config", "apiv3_key: required to decrypt callbacks", { field = "apiv3_key" }, 500,
        "not configured")
    end
    local h, repeated = pick_headers(headers)
    if not h then
      return fail("signature", "callback verification failed: header " .. repeated .. " is repeated",
        { check = "headers" }, 400, "signature verification failed")
    end
    if body == nil or body == "" then
      return fail("invalid_argument", "body: the callback has no body", { field = "body" })
    end
    local key_id, verr = keyring.verify(h, body)
    if not key_id then
      verr.answer = answer(verr.check == "serial" and 500 or 400, "signature verification failed")
      return nil, verr
    end
    local n = decode(body)
    if type(n) ~= "table" then
      return fail("invalid_argument", "body: not a JSON object", { field = "body" })
    end
    local r = n.resource
    if type(r) ~= "table" or type(r.ciphertext) ~= "string" or type(r.nonce) ~= "string"
       or (r.associated_data ~= nil and type(r.associated_data) ~= "string") then
      return fail("invalid_argument", "resource: missing or malformed", { field = "resource" })
    end
    if r.algorithm ~= "AEAD_AES_256_GCM" then
      return fail("invalid_argument", "resource.algorithm: unsupported " .. tostring(r.algorithm),
        { field = "resource.algorithm" })
    end
    local plaintext = keyring.decrypt_resource(r.nonce, r.associated_data or "", r.ciphertext)
    if not plaintext then
      return fail("signature", "resource: does not decrypt with the apiv3_key", { check = "decrypt",
        field = "resource" }, 400, "decryption failed")
    end
    local data = decode(plaintext)
    if type(data) ~= "table" then
      return fail("invalid_argument", "resource: the decrypted resource is not a JSON object",
        { field = "resource" })
    end
    n.resource_data = data
    n.attach_info = attach_info(data.attach_info)
    return n, nil, { verified_by = key_id, request_id = h["request-id"], mchid = keyring.mchid,
                     answer = { status = 204, body = "" } }
  end

  return notify
end

return M
