--- `wxpay doctor`: check a configuration piece by piece and say what to fix in plain words.
-- Prints field names and public facts (serials, hosts, sizes), never a key or the APIv3 key.
-- @module wxpay.cli.doctor

local core = require("wxpay.core")

local M = {}

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8, Sep = 9,
  Oct = 10, Nov = 11, Dec = 12 }

-- Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

--- Unix seconds of an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`), or nil.
function M.parse_http_date(s)
  local d, mon, y, h, mi, se = tostring(s):match("^%a+, (%d%d?) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT$")
  if not d or not MONTHS[mon] then return nil end
  return days_from_civil(tonumber(y), MONTHS[mon], tonumber(d)) * 86400 + tonumber(h) * 3600
    + tonumber(mi) * 60 + tonumber(se)
end

local read = require("wxpay.config").read_file
local serial_key = require("wxpay.keyring").serial_key

-- A PEM from `name` or `name_file`: returns pem, where ("field"), or nil, why.
local function pem_of(config, name)
  if config[name .. "_file"] ~= nil then
    local s, err = read(tostring(config[name .. "_file"]))
    if not s then
      return nil, name .. "_file", "cannot read " .. tostring(config[name .. "_file"]) .. ": " .. tostring(err)
    end
    return s, name .. "_file"
  end
  if type(config[name]) == "string" then return config[name], name end
  return nil, nil
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
  M.check_apiv3_length(config, add)
  if M.check_endpoint(config, add, now) then M.check_signed(config, add, opts.wxpay) end
  return out
end

--- The merchant identity: mchid, private key, certificate and serial_no.
function M.check_keys(config, add, now)
  if type(config.mchid) == "string" and config.mchid:match("^%d+$") then
    add("mchid", "ok", "merchant " .. config.mchid)
  else
    add("mchid", "fail", "mchid is missing or not a string of digits",
      "Set mchid to your merchant number (商户号), as a string of digits.")
  end

  -- The merchant key, its certificate and the serial that names it.
  local key
  local kpem, kfield, kerr = pem_of(config, "private_key")
  if not kpem then
    add("private key", "fail", kerr or "no private_key or private_key_file",
      "Point private_key_file at apiclient_key.pem from the merchant platform's API certificate download.")
  else
    local k, lerr = core.load_private_key(kpem)
    if not k then
      add("private key", "fail", kfield .. " does not hold a private key (" .. tostring(lerr):gsub(".*: ", "") .. ")",
        "Use apiclient_key.pem (PEM, '-----BEGIN PRIVATE KEY-----'), not the certificate or a .p12 file.")
    elseif k:bits() < 2048 then
      add("private key", "fail", "an RSA key of " .. k:bits() .. " bits", "WeChat Pay API keys are RSA-2048.")
    else
      key = k
      add("private key", "ok", "RSA-" .. k:bits() .. " from " .. kfield)
    end
  end
  local cpem, cfield, cerr = pem_of(config, "merchant_certificate")
  if cpem then
    local cert, lerr = core.load_certificate(cpem)
    if not cert then
      add("merchant certificate", "fail", cfield .. " is not a certificate (" .. tostring(lerr):gsub(".*: ", "") .. ")",
        "Use apiclient_cert.pem from the same download as the private key.")
    else
      local serial = cert:serial()
      if key and cert:public_key():fingerprint() ~= key:public_key():fingerprint() then
        add("key matches certificate", "fail", "the private key is not the key of certificate " .. serial,
          "The private key and the certificate come from different downloads: use the apiclient_key.pem "
          .. "that was issued together with apiclient_cert.pem.")
      elseif key then
        add("key matches certificate", "ok", "certificate " .. serial)
      end
      if type(config.serial_no) ~= "string" or serial_key(config.serial_no) ~= serial_key(serial) then
        add("serial_no", "fail", "serial_no " .. tostring(config.serial_no) .. " is not the certificate's serial "
          .. serial, "Set serial_no to " .. serial .. " (openssl x509 -noout -serial -in apiclient_cert.pem).")
      else
        add("serial_no", "ok", serial)
      end
      if cert:not_after() < now() then
        add("certificate validity", "fail", "the merchant certificate expired",
          "Renew the API certificate in the merchant platform and update key, certificate and serial_no.")
      end
    end
  elseif cerr then
    add("merchant certificate", "fail", cerr, "Fix the path, or leave merchant_certificate_file out.")
  else
    add("serial_no", "warn", "not checked: no merchant_certificate_file",
      "Add merchant_certificate_file (apiclient_cert.pem) so key, certificate and serial_no can be checked.")
  end
end

--- The APIv3 key's length (whether it is the right key needs an answer to decrypt).
function M.check_apiv3_length(config, add)

  if config.apiv3_key ~= nil then
    local n = type(config.apiv3_key) == "string" and #config.apiv3_key or 0
    if n == 32 then
      add("apiv3_key", "ok", "32 bytes")
    else
      add("apiv3_key", "fail", "apiv3_key is " .. n .. " bytes, not 32",
        "The APIv3 key is exactly 32 characters (merchant platform, API安全 > APIv3密钥). Copy it whole, "
        .. "without spaces or a line break.")
    end
  elseif not config.wechatpay_public_key_file and not config.wechatpay_public_key
         and not config.platform_certificate_files and not config.platform_certificates then
    add("apiv3_key", "fail", "no apiv3_key and nothing else to verify answers with",
      "Configure wechatpay_public_key_file + wechatpay_public_key_id, or apiv3_key to download certificates.")
  else
    add("apiv3_key", "warn", "not set", "Callbacks and certificate downloads need the 32-byte APIv3 key.")
  end
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
  if core.aes_gcm_decrypt(config.apiv3_key, tostring(ec.nonce), tostring(ec.associated_data or ""),
                          tostring(ec.ciphertext)) then
    add("apiv3_key decrypts", "ok", "decrypts the platform certificates")
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

--- Print the checks; returns the exit status (1 if any failed).
function M.report(results, out)
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
