--- The sandbox's switches for the three key rotations (docs/rotation.md), under
-- /_sandbox/rotate/…: WeChat Pay signs with another public key, encrypts with another APIv3
-- key, or accepts another merchant API certificate (next to the current one, until the old
-- one is retired). `/_sandbox/reset` undoes them. (Platform certificates rotate with
-- POST /_sandbox/rotate.)
-- @module wxpay.sandbox.rotation

local core = require("wxpay.core")

local M = {}

-- The keys as they were at startup, kept on the first switch.
local function remember(state)
  if state.rotation_start then return end
  state.rotation_start = { public_key = state.crypto.public_key, apiv3_key = state.keys.apiv3_key,
    serial_no = state.keys.serial_no, merchant_public_key = state.crypto.merchant_public_key }
end

--- `{ "id": "PUB_KEY_ID_…", "private_key": PEM }`: sign with this public key from now on.
-- @return the answer value, or nil and a message
function M.public_key(state, spec)
  if type(spec.id) ~= "string" or not spec.id:match("^[%w_%-]+$") then return nil, "id is required" end
  local key = type(spec.private_key) == "string" and core.load_private_key(spec.private_key)
  if not key then return nil, "private_key must be a PEM private key" end
  remember(state)
  state.crypto.public_key = { key = key, serial = spec.id }
  return { wechatpay_public_key_id = spec.id }
end

--- `{ "apiv3_key": "32 bytes" }`: encrypt certificates and callbacks with this key from now on.
function M.apiv3_key(state, spec)
  if type(spec.apiv3_key) ~= "string" or #spec.apiv3_key ~= 32 then return nil, "apiv3_key must be 32 bytes" end
  remember(state)
  state.keys.apiv3_key = spec.apiv3_key
  return { ok = true }
end

--- `{ "certificate": PEM, "retire_old": false }`: accept requests signed with this merchant
-- API certificate's key under its serial, next to the current one; `retire_old: true` then
-- accepts only the new one.
function M.merchant_certificate(state, spec)
  local cert = type(spec.certificate) == "string" and core.load_certificate(spec.certificate)
  if not cert then return nil, "certificate must be a PEM certificate" end
  remember(state)
  local serial = cert:serial():upper()
  state.merchant_keys = state.merchant_keys or { [state.keys.serial_no] = state.crypto.merchant_public_key }
  state.merchant_keys[serial] = cert:public_key()
  if spec.retire_old then
    state.merchant_keys = { [serial] = cert:public_key() }
    state.keys.serial_no, state.crypto.merchant_public_key = serial, cert:public_key()
  end
  local accepted = {}
  for s in pairs(state.merchant_keys) do accepted[#accepted + 1] = s end
  table.sort(accepted)
  return { accepted_serials = accepted }
end

--- Back to the startup keys (for /_sandbox/reset).
function M.restore(state)
  local s = state.rotation_start
  if not s then return end
  state.crypto.public_key, state.keys.apiv3_key = s.public_key, s.apiv3_key
  state.keys.serial_no, state.crypto.merchant_public_key = s.serial_no, s.merchant_public_key
  state.merchant_keys, state.rotation_start = nil, nil
end

return M
