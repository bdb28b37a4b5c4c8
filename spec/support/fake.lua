-- Shared fixtures for the unit specs (03, 04, 09): the committed test keys and certificates,
-- a fake transport that records what the client sent and answers like WeChat Pay, and a
-- checker for the request signature. Not a spec itself (no _spec suffix).

local core = require("wxpay.core")

local F = {}

local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end
F.slurp = slurp

F.KEYS = "spec/support/keys/"

local keys
--- The committed test keys (spec/support/keys/, see regenerate.sh there): a merchant key +
-- certificate, two platform certificates (an older and a newer one, different keys), a
-- WeChat Pay public key pair, and an unrelated key. Returns a table of PEM strings and
-- serials, loaded once per process.
function F.keys()
  if keys then return keys end
  local function read(name) return slurp(F.KEYS .. name .. ".pem") end
  keys = {
    merchant_key = read("merchant_2048"), merchant_cert = read("merchant_cert"),
    platform_old_key = read("platform_old_2048"), platform_old_cert = read("platform_old_cert"),
    platform_new_key = read("platform_new_2048"), platform_new_cert = read("platform_new_cert"),
    wechatpay_key = read("wechatpay_2048"), wechatpay_pub = read("wechatpay_pub"),
    other_key = read("other_2048"),
    pub_key_id = "PUB_KEY_ID_0114232134912410000000000000000001",
  }
  keys.merchant_serial = core.load_certificate(keys.merchant_cert):serial()
  keys.platform_old_serial = core.load_certificate(keys.platform_old_cert):serial()
  keys.platform_new_serial = core.load_certificate(keys.platform_new_cert):serial()
  -- Key objects for signing fake responses / checking requests.
  keys.merchant_pub = core.load_private_key(keys.merchant_key):public_key()
  keys.signers = {
    [keys.pub_key_id] = core.load_private_key(keys.wechatpay_key),
    [keys.platform_old_serial] = core.load_private_key(keys.platform_old_key),
    [keys.platform_new_serial] = core.load_private_key(keys.platform_new_key),
    other = core.load_private_key(keys.other_key),
  }
  return keys
end

--- Write `content` to a fresh temporary file; returns its path (the caller removes it).
function F.temp_file(content)
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write(content)
  f:close()
  return path
end

F.NIL = {}

--- The APIv3 key every fake client has, and the config overrides that leave a
-- client with only that key to verify with (so it downloads /v3/certificates).
F.APIV3 = "0123456789abcdef0123456789ABCDEF"
F.ONLY_APIV3 = { wechatpay_public_key = F.NIL, wechatpay_public_key_id = F.NIL, platform_certificates = F.NIL }

--- A base config using the generated keys; `overrides` replaces fields (use F.NIL to drop one).
function F.config(transport, overrides)
  local k = F.keys()
  local c = {
    mchid = "1900000001",
    serial_no = k.merchant_serial,
    private_key = k.merchant_key,
    merchant_certificate = k.merchant_cert,
    apiv3_key = F.APIV3,
    wechatpay_public_key = k.wechatpay_pub,
    wechatpay_public_key_id = k.pub_key_id,
    platform_certificates = { k.platform_old_cert, k.platform_new_cert },
    base_url = "https://api.example.test",
    backup_url = "https://backup.example.test",
    transport = transport,
    sleep = function() end,
  }
  for key, v in pairs(overrides or {}) do
    if v == F.NIL then c[key] = nil else c[key] = v end
  end
  return c
end

--- Sign a response as WeChat Pay would. opts: serial (default pub key id), signer (a key
-- name in keys.signers), timestamp, nonce, headers (extra/overrides; false removes).
function F.response(status, body, opts)
  local k = F.keys()
  opts = opts or {}
  body = body or ""
  local serial = opts.serial or k.pub_key_id
  local ts = tostring(opts.timestamp or core.time())
  local nonce = opts.nonce or core.nonce(32)
  local signer = k.signers[opts.signer or serial] or k.signers.other
  local headers = {
    ["Request-ID"] = opts.request_id or ("req-" .. core.nonce(8)),
    ["Wechatpay-Timestamp"] = ts,
    ["Wechatpay-Nonce"] = nonce,
    ["Wechatpay-Serial"] = serial,
    ["Wechatpay-Signature"] = signer:sign(ts .. "\n" .. nonce .. "\n" .. body .. "\n"),
    ["Wechatpay-Signature-Type"] = "WECHATPAY2-SHA256-RSA2048",
    ["Content-Type"] = "application/json",
  }
  for name, v in pairs(opts.headers or {}) do
    headers[name] = v or nil
  end
  return { status = status, headers = headers, body = body }
end

--- A /v3/certificates answer carrying `certs` ({pem, serial}, encrypted with F.APIV3),
-- signed by `signer_serial`; `mutate(entry)` may change each entry before encoding.
function F.certificates_response(certs, signer_serial, mutate)
  local entries = {}
  for i, c in ipairs(certs) do
    local nonce = string.format("nonce%07d", i)
    local entry = { serial_no = c[2], effective_time = "2024-01-01T00:00:00+08:00",
      expire_time = "2030-01-01T00:00:00+08:00", encrypt_certificate = { algorithm = "AEAD_AES_256_GCM",
      nonce = nonce, associated_data = "certificate",
      ciphertext = assert(core.aes_gcm_encrypt(F.APIV3, nonce, "certificate", c[1])) } }
    if mutate then mutate(entry) end
    entries[i] = entry
  end
  return F.response(200, require("wxpay.client").encode_json({ data = entries }), { serial = signer_serial })
end

--- An unsigned error answer.
function F.error_response(status, code, message, extra_headers)
  local body = code and string.format('{"code":"%s","message":"%s"}', code, message or "") or (message or "")
  local headers = { ["Request-ID"] = "req-err" }
  for k, v in pairs(extra_headers or {}) do headers[k] = v end
  return { status = status, headers = headers, body = body }
end

--- A fake transport. `handler(req, n)` returns what `request` returns; every request is
-- recorded in `t.calls` (with the request target parsed back out of the URL).
function F.transport(handler)
  local t = { calls = {} }
  function t.request(req)
    local base, target = req.url:match("^(https://[^/]+)(/.*)$")
    local rec = { method = req.method, url = req.url, base = base, target = target,
      headers = req.headers, body = req.body, timeout = req.timeout,
      connect_timeout = req.connect_timeout }
    t.calls[#t.calls + 1] = rec
    return handler(req, #t.calls, rec)
  end
  return t
end

--- Parse and check a recorded request's Authorization against the merchant public key,
-- over the bytes that were actually sent (target from the URL, the body). Returns the
-- parsed fields, or nil and a reason.
function F.check_signature(rec)
  local auth = rec.headers.Authorization
  if not auth then return nil, "no Authorization" end
  local scheme, rest = auth:match("^(%S+) (.*)$")
  if scheme ~= "WECHATPAY2-SHA256-RSA2048" then return nil, "scheme" end
  local fields, order = {}, {}
  for k, v in rest:gmatch('([%w_]+)="([^"]*)"') do fields[k] = v; order[#order + 1] = k end
  local msg = rec.method .. "\n" .. rec.target .. "\n" .. fields.timestamp .. "\n" ..
    fields.nonce_str .. "\n" .. (rec.body or "") .. "\n"
  if not F.keys().merchant_pub:verify(msg, fields.signature) then return nil, "bad signature" end
  fields.order = table.concat(order, ",")
  return fields
end

--- Collects every logger call.
function F.logger()
  local lines = {}
  return function(level, message, fields)
    local parts = { level, message }
    for k, v in pairs(fields or {}) do parts[#parts + 1] = tostring(k) .. "=" .. tostring(v) end
    lines[#lines + 1] = table.concat(parts, " ")
  end, lines
end

return F
