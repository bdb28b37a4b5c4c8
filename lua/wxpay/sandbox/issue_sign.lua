--- The sandbox's check of a 发券 signature (V2 rule, HMAC-SHA256 with the APIv2 key of
-- `send_coupon_merchant`), written apart from the client's (luaossl's HMAC, the string
-- built here) so it is an independent verifier. When the signature does not match it
-- tries the mistakes people make and names the rule that failed.
local hmac = require("openssl.hmac")
local core = require("wxpay.core")

local M = {}

--- The APIv2 key the sandbox knows for merchant `mchid`: derived from the sandbox's own
-- secret, so every merchant (the sandbox's and any partner merchant) has a stable one.
-- @tparam table keys the sandbox keys (wxpay.sandbox.keys)
-- @tparam string mchid
-- @treturn string 32 characters
function M.apiv2_key(keys, mchid)
  return core.sha256_hex("wxpay-sandbox apiv2 " .. keys.apiv3_key .. " " .. tostring(mchid)):sub(1, 32)
end

local function hex_upper(s)
  return (s:gsub(".", function(c) return string.format("%02X", c:byte()) end))
end

--- The V2 string of `params` (not `sign`, not empty values, names in byte order).
function M.string_to_sign(params, key)
  local names = {}
  for name, v in pairs(params) do
    if name ~= "sign" and v ~= "" then names[#names + 1] = name end
  end
  table.sort(names)
  local parts = {}
  for i, name in ipairs(names) do parts[i] = name .. "=" .. params[name] end
  parts[#parts + 1] = "key=" .. key
  return table.concat(parts, "&")
end

--- The upper-case hex HMAC-SHA256 of the V2 string.
function M.sign(params, key)
  return hex_upper(hmac.new(key, "sha256"):final(M.string_to_sign(params, key)))
end

local function copy(t, changes)
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  for k, v in pairs(changes or {}) do
    if v == false then out[k] = nil else out[k] = v end
  end
  return out
end

-- The values percent-encoded: every byte but `keep` (RFC 3986's unreserved set, or only
-- letters and digits as some encoders do).
local function encoded(params, keep)
  local out = {}
  for k, v in pairs(params) do
    out[k] = v:gsub(keep, function(ch) return string.format("%%%02X", ch:byte()) end)
  end
  return out
end

-- What else the signer may have done: { rule, message, params, key } in the order tried.
local function mistakes(params, ctx)
  local list = {
    { "sign_type", "the signature covers sign_type, which is not a 发券 parameter: leave it out "
      .. "(easywechat#2856)", copy(params, { sign_type = "HMAC-SHA256" }) },
    { "sign_type", "the signature covers sign_type=MD5, which is not a 发券 parameter",
      copy(params, { sign_type = "MD5" }) },
    { "encoding", "the values were percent-encoded before signing: sign the raw values",
      encoded(params, "[^A-Za-z0-9%-._~]") },
    { "encoding", "the values were percent-encoded before signing: sign the raw values",
      encoded(params, "[^A-Za-z0-9]") },
  }
  if ctx.openid then
    list[#list + 1] = { "added", "the signature covers openid, which is not sent",
                        copy(params, { openid = ctx.openid }) }
  end
  for name in pairs(params) do
    if name ~= "send_coupon_merchant" then
      list[#list + 1] = { "missing", name .. " is sent but not signed: sign every parameter sent",
                          copy(params, { [name] = false }) }
    end
  end
  for _, extra in ipairs(ctx.unsent or {}) do
    list[#list + 1] = { "added", "the signature covers " .. extra[1] .. ", which is not sent",
                        copy(params, { [extra[1]] = extra[2] }) }
  end
  return list
end

-- Other keys the signer may have used: { rule, message, key }.
local function wrong_keys(keys, merchant)
  local list = { { "key", "signed with the APIv3 key: the 发券 signature uses the APIv2 key", keys.apiv3_key } }
  if merchant ~= keys.mchid then
    list[#list + 1] = { "key", "signed with the APIv2 key of " .. keys.mchid .. ", not of send_coupon_merchant "
      .. merchant .. " (服务商: the merchant that signs is the one named there)", M.apiv2_key(keys, keys.mchid) }
  end
  return list
end

--- Check `sign` over `params` (the parameters as sent, `sign` not among them).
-- @tparam table keys the sandbox keys
-- @tparam table params name → string
-- @tparam string sign
-- @tparam[opt] table ctx `openid` (the user), `unsent` ({ name, value } pairs the signer
--   might have added)
-- @treturn[1] true
-- @treturn[2] nil
-- @treturn[2] string the rule that failed: `missing_sign`, `sign_type`, `case`, `key`,
--   `encoding`, `added`, `missing`, `mismatch`
-- @treturn[2] string the explanation
function M.verify(keys, params, sign, ctx)
  ctx = ctx or {}
  if type(sign) ~= "string" or sign == "" then return nil, "missing_sign", "sign is required" end
  local merchant = params.send_coupon_merchant
  if type(merchant) ~= "string" or not merchant:match("^%d+$") then
    return nil, "missing", "send_coupon_merchant is required"
  end
  if params.sign_type ~= nil then
    return nil, "sign_type", "sign_type is not a 发券 parameter: send it neither in the parameters nor in the signature"
  end
  local key = M.apiv2_key(keys, merchant)
  local want = M.sign(params, key)
  if sign == want then return true end
  if sign:upper() == want then return nil, "case", "sign must be upper-case hex" end
  for _, m in ipairs(mistakes(params, ctx)) do
    if M.sign(m[3], key) == sign:upper() then return nil, m[1], m[2] end
  end
  for _, w in ipairs(wrong_keys(keys, merchant)) do
    if M.sign(params, w[3]) == sign:upper() then return nil, w[1], w[2] end
  end
  return nil, "mismatch", "sign does not match: a wrong APIv2 key (not the key of send_coupon_merchant "
    .. merchant .. "), or other values than those sent"
end

return M
