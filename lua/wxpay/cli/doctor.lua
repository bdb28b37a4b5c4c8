--- `wxpay doctor`: check a configuration piece by piece and say what to fix in plain words.
-- Prints field names and public facts (serials, hosts, sizes), never a key or the APIv3 key.
-- @module wxpay.cli.doctor

local core = require("wxpay.core")

local M = {}

--- Unix seconds of an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`), or nil.
M.parse_http_date = require("wxpay.time").parse_http_date

-- The checks are wxpay.config's own (the ones `wxpay.new` runs), so doctor refuses exactly
-- what the library refuses; doctor adds the plain words, the advice and what only it looks
-- at (the certificate's expiry, the APIv3 key decrypting something).
local config_mod = require("wxpay.config")
local serial_key = require("wxpay.keyring").serial_key

local KEY_ADVICE = "Point private_key_file at apiclient_key.pem from the merchant platform's API certificate download."

-- Advice for a private key refused by wxpay.config, from what it said.
local function key_advice(err)
  local m = tostring(err.message)
  if m:find("not both", 1, true) then return "Keep one of private_key and private_key_file: the file is simpler." end
  if m:find("2048", 1, true) then return "WeChat Pay API keys are RSA-2048." end
  if m:find("cannot load", 1, true) then
    return "Use apiclient_key.pem (PEM, '-----BEGIN PRIVATE KEY-----'), not the certificate or a .p12 file."
  end
  return KEY_ADVICE
end

local function is_field(err, name)
  return err ~= nil and (err.field == name or err.field == name .. "_file")
end

--- The merchant identity, through wxpay.config's `check_identity` and `load_merchant_key`:
-- mchid, private key, certificate and serial_no.
function M.check_keys(config, add, now)
  local ok, ierr = config_mod.check_identity(config, {})
  if ok or ierr.field ~= "mchid" then
    add("mchid", "ok", "merchant " .. config.mchid)
  else
    add("mchid", "fail", ierr.message, "Set mchid to your merchant number (商户号), as a string of digits.")
  end
  local serial_err = not ok and ierr.field == "serial_no" and ierr or nil

  -- One run of the library's key check: its first error names the field at fault.
  local st = { serial_no = type(config.serial_no) == "string" and config.serial_no:upper() or "" }
  local kok, kerr = config_mod.load_merchant_key(config, st)
  if is_field(kerr, "private_key") then
    add("private key", "fail", kerr.message, key_advice(kerr))
  else
    add("private key", "ok", "RSA-" .. st.private_key:bits() .. " from "
      .. (config.private_key_file ~= nil and "private_key_file" or "private_key"))
  end
  M.check_certificate(config, add, now, st, kok and nil or kerr, serial_err)
end

-- The merchant certificate: loaded, the key's, serial_no its serial, not expired. `kerr` is
-- load_merchant_key's error (nil when it passed), `serial_err` check_identity's for serial_no.
function M.check_certificate(config, add, now, st, kerr, serial_err)
  local cert, cerr = config_mod.load_pem(config, "merchant_certificate", core.load_certificate)
  if cert == nil then
    add("merchant certificate", "fail", cerr.message, "Fix the path, or use apiclient_cert.pem from the same "
      .. "download as the private key.")
    return
  end
  if cert == false then
    if serial_err then
      add("serial_no", "fail", serial_err.message, "Set serial_no to the API certificate's serial "
        .. "(openssl x509 -noout -serial -in apiclient_cert.pem).")
    else
      add("serial_no", "warn", "not checked: no merchant_certificate_file",
        "Add merchant_certificate_file (apiclient_cert.pem) so key, certificate and serial_no can be checked.")
    end
    return
  end
  local serial = cert:serial()
  if is_field(kerr, "merchant_certificate") then
    add("key matches certificate", "fail", "the private key is not the key of certificate " .. serial,
      "The private key and the certificate come from different downloads: use the apiclient_key.pem "
      .. "that was issued together with apiclient_cert.pem.")
  elseif st.private_key then
    add("key matches certificate", "ok", "certificate " .. serial)
  end
  -- The serial rule of load_merchant_key (which stops at a mismatched key), told in full.
  if serial_err or serial_key(st.serial_no) ~= serial_key(serial) then
    add("serial_no", "fail", serial_err and (serial_err.message .. "; the certificate's serial is " .. serial)
      or ("serial_no " .. config.serial_no .. " is not the certificate's serial " .. serial),
      "Set serial_no to " .. serial .. " (openssl x509 -noout -serial -in apiclient_cert.pem).")
  else
    add("serial_no", "ok", serial)
  end
  if cert:not_after() < now() then
    add("certificate validity", "fail", "the merchant certificate expired",
      "Renew the API certificate in the merchant platform and update key, certificate and serial_no.")
  end
end

--- The APIv3 key and the keys answers are verified with, through wxpay.config's
-- `check_apiv3_key`, `load_public_key` and `load_platform_certificates`.
function M.check_verification(config, add)
  local st = {}
  if not config_mod.check_apiv3_key(config, st) then
    local n = type(config.apiv3_key) == "string" and #config.apiv3_key or 0
    add("apiv3_key", "fail", "apiv3_key is " .. n .. " bytes, not 32",
      "The APIv3 key is exactly 32 characters (merchant platform, API安全 > APIv3密钥). Copy it whole, "
      .. "without spaces or a line break.")
  elseif st.apiv3_key then
    add("apiv3_key", "ok", "32 bytes")
  end
  local ok, err = config_mod.load_public_key(config, st)
  if not ok then
    add("wechatpay_public_key", "fail", err.message, "Give wechatpay_public_key_file (pub_key.pem) together with "
      .. "wechatpay_public_key_id (PUB_KEY_ID_…), both from the merchant platform (API安全 > 微信支付公钥).")
    return
  elseif st.public_key then
    add("wechatpay_public_key", "ok", st.public_key.id)
  end
  ok, err = config_mod.load_platform_certificates(config, st)
  if ok and not st.apiv3_key then
    add("apiv3_key", "warn", "not set", "Callbacks and certificate downloads need the 32-byte APIv3 key.")
  elseif not ok and err.field == "wechatpay_public_key" then
    add("apiv3_key", "fail", "no apiv3_key and nothing else to verify answers with",
      "Configure wechatpay_public_key_file + wechatpay_public_key_id, or apiv3_key to download certificates.")
  elseif not ok then
    add("platform certificates", "fail", err.message, "Fix the path, or leave platform_certificate_files out "
      .. "(with apiv3_key the certificates are downloaded).")
  end
end

--- The APIv2 key (optional: only the 发券 signatures use it), through wxpay.config's
-- `check_apiv2_key`: its shape only, never its value.
function M.check_apiv2_key(config, add)
  local key = config.apiv2_key
  if key == nil then
    add("apiv2_key", "ok", "not set (only needed to sign 发券: plugin, H5, JSAPI)")
    return
  end
  if not config_mod.check_apiv2_key(config, {}) then
    local n = type(key) == "string" and #key or 0
    add("apiv2_key", "fail", "apiv2_key is " .. (type(key) == "string" and (n .. " bytes") or "not a string")
      .. ", not 32 printable ASCII characters",
      "The APIv2 key is the 32-character API密钥 (merchant platform, 账户中心 > API安全 > 设置API密钥). Copy it "
      .. "whole, without spaces or a line break.")
  elseif key == config.apiv3_key then
    add("apiv2_key", "fail", "apiv2_key is the same as apiv3_key",
      "They are two different keys: the APIv2 key (API密钥) signs 发券, the APIv3 key decrypts.")
  else
    add("apiv2_key", "ok", "32 characters (the shape only: only WeChat's side can prove it right; "
      .. "a 签名错误 from the plugin or H5 page means the key or the signed fields are wrong)")
  end
end

--- Run every check.
-- @tparam table config the decoded configuration (keys of `wxpay.new`)
-- @tparam table opts `wxpay` (the module), `now` (function, unix seconds)
-- @treturn table array of `{ check, status = "ok"|"warn"|"fail", detail, advice }`
function M.checks(config, opts)
  local now = opts.now or core.time
  local out = {}
  local function add(check, status, detail, advice)
    out[#out + 1] = { check = check, status = status, detail = detail, advice = advice }
  end
  M.check_keys(config, add, now)
  M.check_verification(config, add)
  M.check_apiv2_key(config, add)
  if M.check_endpoint(config, add, now) then M.check_signed(config, add, opts.wxpay) end
  return out
end


--- Reachability and clock; returns whether the host answered.
function M.check_endpoint(config, add, now)

  -- Reachability and clock, from an unsigned request: any HTTP answer proves the host is there.
  local base = config.base_url or "https://api.mch.weixin.qq.com"
  local ok, resp, terr = pcall(function()
    local session = core.http_session{ ca_file = config.ca_file, proxy = config.proxy }
    local url = tostring(base):gsub("/$", "") .. "/v3/certificates?algorithm_type=RSA"
    local r, e = session:request{ method = "GET", url = url,
      headers = { "Accept: application/json", "User-Agent: wxpay-doctor" }, timeout = 10, connect_timeout = 5 }
    session:close()
    return r, e
  end)
  if not ok then
    add("endpoint reachable", "fail", "base_url, ca_file or proxy is not a string",
      "Give base_url as \"https://host[:port]\" and ca_file/proxy as strings.")
    return false
  end
  if not resp then
    add("endpoint reachable", "fail", base .. ": " .. tostring(terr.message),
      terr.connected and "The host answered but the exchange failed; check proxy settings."
      or "Cannot connect: check the network, firewall, proxy and ca_file (the TLS certificate must verify).")
    return false
  end
  add("endpoint reachable", "ok", base .. " answered HTTP " .. resp.status)
  local date = M.parse_http_date(resp.headers.date)
  if not date then
    add("clock", "warn", "the server sent no Date header", "Make sure this machine's clock is synchronised (NTP).")
  else
    local skew = now() - date
    local text = string.format("local clock is %d s %s the server's", math.abs(skew),
      skew >= 0 and "ahead of" or "behind")
    if math.abs(skew) > 300 then
      add("clock", "fail", text, "WeChat Pay rejects requests timestamped more than 5 minutes off: "
        .. "synchronise this machine's clock (NTP, e.g. chrony or systemd-timesyncd).")
    elseif math.abs(skew) > 60 then
      add("clock", "warn", text, "Synchronise the clock (NTP) before it drifts past WeChat Pay's 5 minutes.")
    else
      add("clock", "ok", text)
    end
  end
  return true
end

-- Whether the APIv3 key decrypts the platform certificates in a /v3/certificates answer.
local function check_apiv3_decrypts(config, data, add)
  if type(config.apiv3_key) ~= "string" or #config.apiv3_key ~= 32 then return end
  local entry = type(data) == "table" and type(data.data) == "table" and data.data[1]
  local ec = type(entry) == "table" and entry.encrypt_certificate
  if type(ec) ~= "table" then
    add("apiv3_key decrypts", "warn", "not checked: no platform certificates to decrypt",
      "The APIv3 key is checked when something is decrypted with it: send yourself a test callback "
      .. "(client.notify.parse decrypts its resource) and see that it decrypts.")
    return
  end
  local function decrypts(key)
    return type(key) == "string" and core.aes_gcm_decrypt(key, tostring(ec.nonce),
      tostring(ec.associated_data or ""), tostring(ec.ciphertext)) ~= nil
  end
  if decrypts(config.apiv3_key) then
    add("apiv3_key decrypts", "ok", "apiv3_key decrypts the platform certificates")
  elseif decrypts(config.apiv3_key_previous) then
    add("apiv3_key decrypts", "warn", "apiv3_key_previous (the previous key) decrypted the platform certificates, "
      .. "not apiv3_key", "WeChat Pay still uses the previous APIv3 key: the new one is not set in the merchant "
      .. "platform yet, or apiv3_key is wrong (docs/rotation.md#apiv3-key).")
  else
    add("apiv3_key decrypts", "fail", "the platform certificates do not decrypt with apiv3_key",
      "This is not the merchant's APIv3 key: copy it again from the merchant platform "
      .. "(API安全 > APIv3密钥), or set a new one there.")
  end
end

--- A signed request, its answer verified, and the APIv3 key tried on it.
function M.check_signed(config, add, wxpay)
  local client, nerr = wxpay.new(config)
  if not client then
    add("configuration", "fail", tostring(nerr.message or nerr) .. (nerr.field and (" (" .. nerr.field .. ")") or ""),
      "Fix the field named; `wxpay.new` refuses this configuration.")
    return
  end

  -- A signed request, and its answer verified.
  local data, err, meta = client.request{ method = "GET", path = "/v3/certificates",
    query = { algorithm_type = "RSA" }, max_retries = 0 }
  if data then
    add("signed request", "ok", "accepted (request_id " .. tostring(meta.request_id) .. ")")
    add("answer verified", "ok", "signature checked with " .. tostring(meta.verified_by))
    check_apiv3_decrypts(config, data, add)
  elseif err.kind == "api" and err.status == 401 then
    add("signed request", "fail", "WeChat Pay refused the signature: " .. tostring(err.code) .. " "
      .. tostring(err.message),
      "The private key or serial_no does not belong to merchant " .. tostring(config.mchid)
      .. "'s API certificate: check serial_no, the key file and mchid together.")
  elseif err.kind == "api" and err.status == 404 then
    add("signed request", "ok", "accepted (no platform certificates: a public-key merchant)")
    check_apiv3_decrypts(config, nil, add)
  elseif err.kind == "signature" then
    add("signed request", "ok", "accepted")
    if err.check == "timestamp" then
      add("answer verified", "fail", tostring(err.message), "Synchronise this machine's clock (NTP).")
    elseif err.check == "decrypt" then
      add("apiv3_key decrypts", "fail", tostring(err.message),
        "The downloaded platform certificates do not decrypt: apiv3_key is not the merchant's APIv3 key "
        .. "(merchant platform, API安全 > APIv3密钥).")
    else
      add("answer verified", "fail", tostring(err.message),
        "Answers are signed by WeChat Pay, not by you: wechatpay_public_key_file/_id must be the platform "
        .. "public key and its ID from the merchant platform, platform certificates WeChat Pay's own.")
    end
  else
    add("signed request", "fail", tostring(err), "Check base_url, the network and the proxy.")
  end
  client.close()
end

--- Print the checks; returns the exit status (1 if any failed). With `format` "json", one
-- object: `{ config, base_url, checks = [{ check, status, detail, advice }], problems }`
-- (`head` gives config and base_url).
function M.report(results, out, format, head)
  if format == "json" then
    local checks, failed = setmetatable({}, { __jsontype = "array" }), 0
    for i, r in ipairs(results) do
      checks[i] = { check = r.check, status = r.status, detail = r.detail,
                    advice = r.status ~= "ok" and r.advice or nil }
      if r.status == "fail" then failed = failed + 1 end
    end
    out:write(require("wxpay.cli.output").json({ config = head and head.config, base_url = head and head.base_url,
      checks = checks, problems = failed }))
    return failed == 0 and 0 or 1
  end
  if head then out:write("checking ", head.config, " against ", head.base_url, "\n") end
  local failed = 0
  for _, r in ipairs(results) do
    local mark = r.status == "ok" and "ok  " or (r.status == "warn" and "WARN" or "FAIL")
    out:write(string.format("%s  %-24s %s\n", mark, r.check, r.detail or ""))
    if r.advice and r.status ~= "ok" then out:write("      -> ", r.advice, "\n") end
    if r.status == "fail" then failed = failed + 1 end
  end
  out:write(failed == 0 and "everything checked is fine\n" or string.format("%d problem%s to fix\n", failed,
    failed == 1 and "" or "s"))
  return failed == 0 and 0 or 1
end

return M
