--- Sensitive fields (docs/protocol.md#sensitive-fields): `client.encrypt(plaintext)` and `client.decrypt(ciphertext)`.
--
--     local ct, serial = client.encrypt("13800138000")
--     client.request{ method = "POST", path = "/v3/…", body = { mobile = ct },
--                     wechatpay_serial = serial }
--
-- `encrypt` uses RSA-OAEP (SHA-1, MGF1-SHA-1) with the key the request's default
-- `Wechatpay-Serial` names: the WeChat Pay public key when one is configured, else the
-- newest platform certificate (downloading certificates first when the client works from
-- the `apiv3_key` alone). It returns that serial too; passing it as `wechatpay_serial` keeps
-- the request right even if a certificate rotation happens in between. `decrypt` undoes what
-- WeChat Pay encrypted to the merchant certificate, with the merchant private key.
--
-- A non-string argument raises. A plaintext longer than the key allows (214 bytes for
-- RSA-2048) or a ciphertext that does not decrypt is `nil, err` of kind
-- `"invalid_argument"`; neither error shows the data.
-- @module wxpay.sensitive

local errors = require("wxpay.errors")

local M = {}

--- Bind to a client's key ring (done by `wxpay.client`).
-- @tparam table keyring `encryption_key()`, `decrypt_oaep(ciphertext)`
-- @treturn table `{ encrypt = function(plaintext), decrypt = function(ciphertext) }`
function M.new(keyring)
  local s = {}

  --- Encrypt a sensitive field for WeChat Pay.
  -- @tparam string plaintext
  -- @treturn string|nil base64 ciphertext
  -- @treturn string|table the serial (public key id or certificate serial) to send as
  --   `Wechatpay-Serial`, or the error
  function s.encrypt(plaintext)
    if type(plaintext) ~= "string" then
      error("bad argument #1 to 'encrypt' (string expected, got " .. type(plaintext) .. ")", 2)
    end
    local key, serial = keyring.encryption_key()
    if not key then return nil, serial end
    local max = math.floor(key:bits() / 8) - 42 -- OAEP with SHA-1: k - 2*20 - 2
    if #plaintext > max then
      return nil, errors.invalid_argument("plaintext", "longer than " .. max .. " bytes")
    end
    local ct, err = key:encrypt_oaep(plaintext)
    if not ct then return nil, errors.invalid_argument("plaintext", tostring(err)) end
    return ct, serial
  end

  --- Decrypt a field WeChat Pay encrypted with the merchant certificate.
  -- @tparam string ciphertext base64
  -- @treturn string|nil plaintext
  -- @treturn table|nil err
  function s.decrypt(ciphertext)
    if type(ciphertext) ~= "string" then
      error("bad argument #1 to 'decrypt' (string expected, got " .. type(ciphertext) .. ")", 2)
    end
    local pt = keyring.decrypt_oaep(ciphertext)
    if not pt then
      return nil, errors.invalid_argument("ciphertext", "does not decrypt with the merchant private key")
    end
    return pt
  end

  return s
end

return M
