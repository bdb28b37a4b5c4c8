--- Keys during a rotation: more WeChat Pay public keys than the one requests name
-- (`wechatpay_public_keys`, `wechatpay_public_key_files`: id → key), and the previous APIv3
-- key, still tried for decryption until `apiv3_key_previous_until` (`apiv3_key_previous`).
-- The merchant's own key and serial are swapped with `client.reload` (wxpay.reload).
-- docs/rotation.md has the steps of each rotation.
-- @module wxpay.rotation

local core = require("wxpay.core")
local errors = require("wxpay.errors")

local M = {}

local function load_map(config, name, read_file, st)
  local map = config[name]
  if map == nil then return true end
  if type(map) ~= "table" then return nil, errors.config(name, "must be a table of PUB_KEY_ID_… = key") end
  for id, v in pairs(map) do
    local field = name .. "." .. tostring(id)
    if type(id) ~= "string" or not id:match("^[%w_%-]+$") then
      return nil, errors.config(name, "keys must be public key ids such as PUB_KEY_ID_…")
    end
    if type(v) ~= "string" then return nil, errors.config(field, "must be a string") end
    local pem, err = v
    if read_file then
      pem, err = read_file(v)
      if not pem then return nil, errors.config(field, "unreadable: " .. tostring(err)) end
    end
    local key
    key, err = core.load_public_key(pem)
    if not key then return nil, errors.config(field, "cannot load: " .. tostring(err)) end
    st.public_keys = st.public_keys or {}
    st.public_keys[id:upper()] = key
  end
  return true
end

--- `wechatpay_public_keys` / `wechatpay_public_key_files` into `st.public_keys` (upper-cased
-- id → key), and `apiv3_key_previous` / `apiv3_key_previous_until` into `st.apiv3_previous`.
-- Run after `load_public_key` and `check_apiv3_key`.
-- @return true, or nil and a `config` error
function M.check(config, st)
  local ok, err = load_map(config, "wechatpay_public_keys", nil, st)
  if not ok then return nil, err end
  ok, err = load_map(config, "wechatpay_public_key_files", require("wxpay.config").read_file, st)
  if not ok then return nil, err end
  if st.public_keys and not st.public_key then
    return nil, errors.config("wechatpay_public_key", "required with more public keys: it names the one "
      .. "requests ask for (Wechatpay-Serial)")
  end
  local prev, untl = config.apiv3_key_previous, config.apiv3_key_previous_until
  if prev ~= nil then
    if type(prev) ~= "string" or #prev ~= 32 then
      return nil, errors.config("apiv3_key_previous", "must be a string of exactly 32 bytes")
    end
    if st.apiv3_key == nil then return nil, errors.config("apiv3_key", "required with apiv3_key_previous") end
    if type(untl) ~= "number" or untl ~= untl or untl <= 0 or untl == math.huge then
      return nil, errors.config("apiv3_key_previous_until", "required with apiv3_key_previous: the Unix time "
        .. "after which the previous key is no longer tried")
    end
    st.apiv3_previous = { key = prev, until_time = untl }
  elseif untl ~= nil then
    return nil, errors.config("apiv3_key_previous", "required with apiv3_key_previous_until")
  end
  return true
end

--- A public key of `st.public_keys` by (upper-case) id.
function M.public_key(st, id)
  return st.public_keys and st.public_keys[id]
end

--- AES-256-GCM decryption with the APIv3 key, then the previous one while it is accepted.
-- @return plaintext and `"apiv3_key"` or `"apiv3_key_previous"`, or nil
function M.decrypt(st, nonce, aad, ciphertext)
  local plain = core.aes_gcm_decrypt(st.apiv3_key, nonce, aad, ciphertext)
  if plain then return plain, "apiv3_key" end
  local p = st.apiv3_previous
  if p and st.now() <= p.until_time then
    plain = core.aes_gcm_decrypt(p.key, nonce, aad, ciphertext)
    if plain then return plain, "apiv3_key_previous" end
  end
  return nil
end

return M
