--- Response verification: the Wechatpay-* headers of an answer (or a callback) checked
-- against the key ring and the clock (docs/protocol.md#response-verification).
-- @module wxpay.verify

local core = require("wxpay.core")
local errors = require("wxpay.errors")

local M = {}

local SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
local PROBE_PREFIX = "WECHATPAY/SIGNTEST/"

--- A copy of `h` with every string name lower-cased (transports differ in case).
local function lower_headers(h)
  local out = {}
  for k, v in pairs(h or {}) do
    if type(k) == "string" then out[k:lower()] = v end
  end
  return out
end

--- A serial in the form used to compare two: upper case without leading zero nibbles
-- (Java renders serials without them, Go with them).
-- @tparam string s
-- @treturn string
local function serial_key(s)
  return (s:upper():gsub("^0+(.)", "%1"))
end

-- The key for serial `want` (upper case): the public key by id, else a platform
-- certificate by serial. Nil and a reason for an expired one; nil alone when unknown.
local function find_key(st, want, certificates)
  if st.public_key and st.public_key.id:upper() == want then return st.public_key.key end
  if st.public_keys and st.public_keys[want] then return st.public_keys[want] end -- during a rotation
  local now, wanted = st.now(), serial_key(want)
  for _, c in ipairs(certificates or st.certificates) do
    if serial_key(c.serial) == wanted then
      if c.not_after < now then return nil, "platform certificate " .. want .. " has expired" end
      return c.key
    end
  end
  if st.expired[wanted] then return nil, "platform certificate " .. want .. " has expired" end
end

--- Verify a response (docs/protocol.md#response-verification).
-- `resp.what` names the message in errors ("response" unless a callback says otherwise).
-- @tparam table st the client state (key ring, clock, `clock_skew`)
-- @tparam table resp `{ status, headers (lower-cased), body }`
-- @tparam[opt] table certificates the ring to use instead of `st.certificates`
-- @return the key id used, or nil and a `signature` error
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
  local want = serial:upper()
  local key, why = find_key(st, want, certificates)
  if not key then return fail("serial", why or ("unknown Wechatpay-Serial " .. serial)) end
  local raw = core.base64_decode(sig)
  if not raw or #raw * 8 ~= key:bits() then
    return fail("signature", "Wechatpay-Signature is not a well-formed signature")
  end
  if not key:verify(ts .. "\n" .. nonce .. "\n" .. (resp.body or "") .. "\n", sig) then
    return fail("signature", "bad signature")
  end
  return want
end
M.lower_headers, M.response, M.serial_key = lower_headers, verify_response, serial_key

return M
