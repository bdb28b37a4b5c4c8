--- The 商家券 jump code: when a user taps a coupon whose entrance is the merchant's mini
-- program, WeChat appends `stock_id`, `openid`, `nonce`, `associate=COUPON_CODE` and
-- `ciphertext` to the page path; the `coupon_code` is the AES-256-GCM decryption of
-- `ciphertext` with the APIv3 key, `nonce` and the associated data `COUPON_CODE`
-- (docs/issuing.md#the-jump-code). `client.busifavor.decrypt_jump_code`.
-- @module wxpay.api.jump_code

local errors = require("wxpay.errors")

local M = {}

local MAX_CIPHERTEXT = 4096

-- A query value as the page received it: percent-decoded when it still is encoded, and
-- the `+` a form decoder turned into a space put back (base64 has `+`, never a space).
local function unquote(v)
  if v:find("%%%x%x") then
    v = v:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
  end
  return (v:gsub(" ", "+"))
end

--- The `decrypt_jump_code` function of a client.
-- @tparam table ring the client's key handle (`has_apiv3_key`, `decrypt_resource`)
-- @treturn function
function M.new(ring)
  --- Decrypt the `coupon_code` of a mini-program jump.
  -- @tparam table params `ciphertext` and `nonce` as the page got them (percent-encoded
  --   or not); `associate` (default `COUPON_CODE`) is the associated data; other jump
  --   parameters (`stock_id`, `openid`) may be passed along and are ignored
  -- @treturn string|nil the coupon_code
  -- @treturn table|nil err: `invalid_argument`, `config` (no `apiv3_key`), or `signature`
  --   (`check = "decrypt"`: wrong key, nonce or a tampered ciphertext)
  return function(params)
    if type(params) ~= "table" then
      error("bad argument #1 to 'decrypt_jump_code' (table expected, got " .. type(params) .. ")", 2)
    end
    for _, name in ipairs{ "ciphertext", "nonce" } do
      local v = params[name]
      if type(v) ~= "string" or v == "" then return nil, errors.invalid_argument(name, "required (a string)") end
    end
    if #params.ciphertext > MAX_CIPHERTEXT then
      return nil, errors.invalid_argument("ciphertext", "longer than " .. MAX_CIPHERTEXT .. " characters")
    end
    local aad = params.associate or "COUPON_CODE"
    if type(aad) ~= "string" or #aad > 64 or not aad:match("^[%w_]+$") then
      return nil, errors.invalid_argument("associate", "must be a name such as COUPON_CODE")
    end
    local nonce, ciphertext = unquote(params.nonce), unquote(params.ciphertext)
    if #nonce ~= 12 then return nil, errors.invalid_argument("nonce", "must be 12 characters") end
    if not ciphertext:match("^[%w+/]+=?=?$") then
      return nil, errors.invalid_argument("ciphertext", "is not base64")
    end
    if not ring.has_apiv3_key then
      return nil, errors.config("apiv3_key", "required to decrypt the jump code")
    end
    local code = ring.decrypt_resource(nonce, aad, ciphertext)
    if not code then
      return nil, errors.new("signature", "ciphertext: does not decrypt with the apiv3_key, this nonce and "
        .. "the associated data " .. aad, { field = "ciphertext", check = "decrypt" })
    end
    return code
  end
end

return M
