--- Response verification: the Wechatpay-* headers of an answer (or a callback) checked
-- against the key ring and the clock (docs/protocol.md#response-verification).
-- @module wxpay.verify

local core = require("wxpay.core")
local errors = require("wxpay.errors")

local M = {}

local SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
local PROBE_PREFIX = "WECHATPAY/SIGNTEST/"

--- `h` with every string name lower-cased (transports differ in case): `h` itself when its
-- names are all lower-case strings already (the C core and the OpenResty transport lower-case
-- them), else a copy.
local function lower_headers(h)
  if h == nil then return {} end
  for k in pairs(h) do
    if type(k) ~= "string" or k:find("%u") then
      local out = {}
      for name, v in pairs(h) do
        if type(name) == "string" then out[name:lower()] = v end
      end
      return out
    end
  end
  return h
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

-- The `signature` error of a failed check.
local function fail(resp, check, msg, extra)
  local h = resp.headers
  local fields = { check = check, status = resp.status, request_id = h["request-id"],
                   serial = h["wechatpay-serial"], retryable = false }
  if extra then for k, v in pairs(extra) do fields[k] = v end end
  return nil, errors.new("signature", (resp.what or "response") .. " verification failed: " .. msg, fields)
end

local REQUIRED = { { "wechatpay-timestamp", "Wechatpay-Timestamp" }, { "wechatpay-nonce", "Wechatpay-Nonce" },
  { "wechatpay-signature", "Wechatpay-Signature" }, { "wechatpay-serial", "Wechatpay-Serial" } }

local function present(v) return type(v) == "string" and v ~= "" end

-- The names of the required headers `h` lacks, or nil when it has them all.
local function missing_headers(h)
  if present(h["wechatpay-timestamp"]) and present(h["wechatpay-nonce"]) and present(h["wechatpay-signature"])
     and present(h["wechatpay-serial"]) then
    return nil
  end
  local missing = {}
  for _, r in ipairs(REQUIRED) do
    if not present(h[r[1]]) then missing[#missing + 1] = r[2] end
  end
  return table.concat(missing, ", ")
end

--- Verify a response (docs/protocol.md#response-verification).
-- `resp.what` names the message in errors ("response" unless a callback says otherwise).
-- @tparam table st the client state (key ring, clock, `clock_skew`)
-- @tparam table resp `{ status, headers (lower-cased), body }`
-- @tparam[opt] table certificates the ring to use instead of `st.certificates`
-- @return the key id used, or nil and a `signature` error
local function verify_response(st, resp, certificates)
  local h = resp.headers
  local missing = missing_headers(h)
  if missing then return fail(resp, "headers", "headers incomplete, missing " .. missing) end
  local ts, nonce = h["wechatpay-timestamp"], h["wechatpay-nonce"]
  local sig, serial = h["wechatpay-signature"], h["wechatpay-serial"]
  local stype = h["wechatpay-signature-type"]
  if stype ~= nil and stype ~= SIGNATURE_TYPE then
    return fail(resp, "signature_type", "unsupported Wechatpay-Signature-Type " .. tostring(stype))
  end
  if not ts:match("^%d+$") or #ts > 12 then
    return fail(resp, "timestamp", "Wechatpay-Timestamp is not a number")
  end
  local skew = math.abs(st.now() - tonumber(ts))
  if skew >= st.clock_skew then
    return fail(resp, "timestamp", string.format("Wechatpay-Timestamp %s is %d s from local time (limit %g s)",
      ts, math.floor(skew), st.clock_skew))
  end
  if sig:sub(1, #PROBE_PREFIX) == PROBE_PREFIX then
    return fail(resp, "probe", "signature probe (WECHATPAY/SIGNTEST/) rejected", { probe = true })
  end
  local want = serial:upper()
  local key, why = find_key(st, want, certificates)
  if not key then return fail(resp, "serial", why or ("unknown Wechatpay-Serial " .. serial)) end
  -- The C core refuses a malformed signature as it refuses a bad one; only a failure is
  -- looked at again, to say which it was.
  if not key:verify(ts .. "\n" .. nonce .. "\n" .. (resp.body or "") .. "\n", sig) then
    local raw = core.base64_decode(sig)
    if not raw or #raw * 8 ~= key:bits() then
      return fail(resp, "signature", "Wechatpay-Signature is not a well-formed signature")
    end
    return fail(resp, "signature", "bad signature")
  end
  return want
end
M.lower_headers, M.response, M.serial_key = lower_headers, verify_response, serial_key

return M
