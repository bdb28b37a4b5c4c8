--- A callback (notification) handler in plain Lua: give it the request headers and the raw
-- body, it returns the status and body to answer WeChat Pay with.
--
--   lua5.4 examples/notify_handler.lua
--
-- Wire `handle` into any HTTP server. Under OpenResty, for instance:
--
--   ngx.req.read_body()
--   local status, body = handle(ngx.req.get_headers(), ngx.req.get_body_data())
--   ngx.status = status; ngx.print(body)
--
-- Run as a script it borrows the local sandbox's keys (build/sandbox-keys), builds signed and
-- encrypted callbacks the way WeChat Pay does, and asserts how the handler answers them.
local here = (arg and arg[0] or ""):match("^(.*)/examples/[^/]*$") or "."
package.path = here .. "/lua/?.lua;" .. here .. "/lua/?/init.lua;" .. package.path
package.cpath = here .. (rawget(_G, "jit") and "/build-luajit/?.so;" or "/build/?.so;") .. package.cpath

local wxpay = require("wxpay")

--- Make a handler.
-- @param client a wxpay client (its key ring and apiv3_key verify and decrypt)
-- @tparam function on_event called with each verified notification; returns true once the
--   event is safely recorded (false makes WeChat Pay send it again later)
-- @treturn function handle(headers, raw_body) -> status, body
local function new_handler(client, on_event)
  return function(headers, raw_body)
    local n, err, meta = client.notify.parse(headers, raw_body)
    if not n then
      -- Forged, tampered, stale, a WECHATPAY/SIGNTEST/ probe or malformed: refuse. The
      -- error is safe to log; it holds no key and no decrypted data.
      io.stderr:write("notify refused: ", tostring(err), "\n")
      return err.answer.status, err.answer.body
    end
    if not on_event(n) then return 500, '{"code":"FAIL","message":"try again later"}' end
    return meta.answer.status, meta.answer.body
  end
end

-- The demonstration: callbacks signed with the sandbox's WeChat Pay public key.
local core = require("wxpay.core")
local sandbox = require("wxpay.sandbox.process")

local sb = sandbox.start{ root = here }
local config = sb.config
sb:stop() -- only its keys are needed here

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end
local wechatpay_key = assert(core.load_private_key(read(sb.dir .. "/pub_key_private.pem")))

-- What WeChat Pay would send: the resource encrypted with the APIv3 key, the raw body signed.
local function callback(id, resource_json, opts)
  opts = opts or {}
  local nonce = core.nonce(12)
  local body = '{"id":"' .. id .. '","create_time":"2026-01-01T12:00:00+08:00",'
    .. '"resource_type":"encrypt-resource","event_type":"COUPON.USE","summary":"用券",'
    .. '"resource":{"original_type":"coupon","algorithm":"AEAD_AES_256_GCM","ciphertext":"'
    .. assert(core.aes_gcm_encrypt(config.apiv3_key, nonce, "coupon", resource_json))
    .. '","associated_data":"coupon","nonce":"' .. nonce .. '"}}'
  local ts, n = tostring(core.time() - (opts.age or 0)), core.nonce(32)
  local headers = {
    ["Wechatpay-Timestamp"] = ts, ["Wechatpay-Nonce"] = n,
    ["Wechatpay-Serial"] = config.wechatpay_public_key_id,
    ["Wechatpay-Signature"] = opts.probe and ("WECHATPAY/SIGNTEST/" .. core.base64_encode(string.rep("x", 256)))
      or wechatpay_key:sign(ts .. "\n" .. n .. "\n" .. body .. "\n"),
    ["Wechatpay-Signature-Type"] = "WECHATPAY2-SHA256-RSA2048",
  }
  return headers, body
end

local client = assert(wxpay.new(config))
local seen = {}
local handle = new_handler(client, function(n)
  -- De-duplicate by id: WeChat Pay may deliver the same notification more than once.
  if not seen[n.id] then
    seen[n.id] = n.resource_data
    print(("event %s %s: coupon %s is %s"):format(n.id, n.event_type, n.resource_data.coupon_id,
      n.resource_data.status))
  end
  return true
end)

local headers, body = callback("EV-0001", '{"coupon_id":"98674556","status":"USED"}')
local status, answer = handle(headers, body)
assert(status == 204 and answer == "", "a genuine callback is accepted")
assert(handle(headers, body) == 204, "a repeated delivery is accepted again, and ignored")
assert(seen["EV-0001"].coupon_id == "98674556")
print("genuine callback: accepted with " .. status)

-- Header names in any case (some servers lower-case them).
local lower = {}
for k, v in pairs(headers) do lower[k:lower()] = v end
assert(handle(lower, body) == 204)

local refusals = {
  { "tampered body", headers, body:gsub("USE", "USED", 1) },
  { "probe", callback("EV-0002", "{}", { probe = true }) },
  { "stale", callback("EV-0003", "{}", { age = 600 }) },
}
for _, case in ipairs(refusals) do
  local s, b = handle(case[2], case[3])
  assert(s == 400 and b:find('"code":"FAIL"', 1, true), case[1] .. " is refused")
  print(case[1] .. ": refused with " .. s .. " " .. b)
end
print("every callback answered as expected (genuine ones accepted)")
