-- Every vector in spec/vectors (from the official SDKs' test suites) through the C core.
-- Key selection by serial and clock-dependent checks go through the client's verifier
-- in 03-client_spec.lua; here the clock-pinned facts are asserted on the certificates.
local core = require("wxpay.core")
local h = require("spec.helpers")
local cjson = require("cjson").new()

local V = h.vectors()
local function pem(name) return h.read(h.VECTORS .. name) end
local function utc(s) -- "2025-05-09T01:57:10Z" -> unix seconds
  local y, mo, d, hh, mi, ss = s:match("^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)Z$")
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  local yy = mo <= 2 and y - 1 or y
  local era = math.floor(yy / 400)
  local yoe = yy - era * 400
  local doy = math.floor((153 * (mo + (mo > 2 and -3 or 9)) + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return (era * 146097 + doe - 719468) * 86400 + hh * 3600 + mi * 60 + ss
end

local function verifier(inputs)
  if inputs.public_key then return assert(core.load_public_key(pem(inputs.public_key))) end
  return assert(core.load_certificate(pem(inputs.certificate))):public_key()
end

describe("vectors", function()
  it("cover every kind the README lists", function()
    local kinds = {}
    for _, v in ipairs(V.vectors) do kinds[v.kind] = (kinds[v.kind] or 0) + 1 end
    for _, k in ipairs({ "sign", "verify", "verify_negative", "notification", "aes_gcm_reject_key_length",
                         "oaep_decrypt", "aes_gcm_decrypt", "certificates_decrypt" }) do
      assert.truthy(kinds[k], k)
    end
  end)

  it("key files have the serials and validity vectors.json states", function()
    for _, k in ipairs(V.keys) do
      if k.type == "certificate" then
        local c = assert(core.load_certificate(pem(k.file)))
        assert.equal(k.serial, c:serial())
        assert.equal(utc(k.not_before), c:not_before())
        assert.equal(utc(k.not_after), c:not_after())
      elseif k.type == "private_key" then
        assert.truthy(core.load_private_key(pem(k.file)), k.file)
      else
        assert.truthy(core.load_public_key(pem(k.file)), k.file)
      end
      if k.pairs_with then
        local priv = assert(core.load_private_key(pem(k.pairs_with)))
        local pub = k.type == "certificate" and core.load_certificate(pem(k.file)):public_key()
          or core.load_public_key(pem(k.file))
        assert.equal(priv:public_key():fingerprint(), pub:fingerprint())
      end
    end
  end)

  for _, v in ipairs(V.vectors) do
    local i, e = v.inputs, v.expected
    if v.kind == "sign" then
      it(v.id .. ": signs to the upstream signature", function()
        local key = assert(core.load_private_key(pem(i.private_key)))
        assert.equal(e.signature_base64, key:sign(i.message))
      end)
    elseif v.kind == "verify" then
      it(v.id .. ": verifies", function()
        assert.is_true(verifier(i):verify(i.message, i.signature_base64))
        if v.clock_unix then
          local c = assert(core.load_certificate(pem(i.certificate)))
          assert.equal(i.serial, c:serial())
          assert.truthy(c:not_before() <= v.clock_unix and v.clock_unix < c:not_after())
          assert.equal(utc(e.certificate_not_after), c:not_after())
        end
      end)
    elseif v.kind == "verify_negative" and i.message then
      it(v.id .. ": " .. e.reason, function()
        local ok = verifier(i):verify(i.message, i.signature_base64)
        if i.serial_presented then
          -- the signature is good; the rejection comes from the key id (03-client_spec)
          assert.is_true(ok)
          assert.not_equal(i.public_key_id, i.serial_presented)
        elseif v.clock_unix then
          -- the signature is good; the rejection comes from the certificate's validity
          assert.is_true(ok)
          assert.truthy(v.clock_unix >= assert(core.load_certificate(pem(i.certificate))):not_after())
        else
          assert.is_false(ok)
        end
      end)
    elseif v.kind == "notification" or (v.kind == "verify_negative" and i.body_file) then
      it(v.id .. ": callback signature over timestamp, nonce and raw body", function()
        local body = pem(i.body_file)
        if i.body_mutation then body = body .. "\n" end
        local hd = i.headers
        local msg = hd["Wechatpay-Timestamp"] .. "\n" .. hd["Wechatpay-Nonce"] .. "\n" .. body .. "\n"
        local cert = assert(core.load_certificate(pem(i.certificate)))
        assert.equal(hd["Wechatpay-Serial"], cert:serial())
        assert.truthy(cert:not_before() <= v.clock_unix and v.clock_unix < cert:not_after())
        if v.kind == "notification" then
          assert.equal(i.body_length, #body)
          assert.equal(e.signed_message, msg)
          assert.is_true(cert:public_key():verify(msg, hd["Wechatpay-Signature"]))
          local event = cjson.decode(body)
          for k, val in pairs(e.event) do assert.equal(val, event[k]) end
          -- the upstream key is 16 bytes: an AES-256 client must refuse it (vectors README)
          local pt, err = core.aes_gcm_decrypt(i.api_v3_key, i.resource.nonce, i.resource.associated_data,
            i.resource.ciphertext)
          assert.is_nil(pt)
          assert.matches("32 bytes", err)
        else
          assert.is_false(cert:public_key():verify(msg, hd["Wechatpay-Signature"]))
        end
      end)
    elseif v.kind == "aes_gcm_reject_key_length" then
      it(v.id .. ": refuses a " .. i.api_v3_key_length .. "-byte key", function()
        assert.equal(i.api_v3_key_length, #i.api_v3_key)
        local pt, err = core.aes_gcm_decrypt(i.api_v3_key, i.nonce, i.associated_data, i.ciphertext_base64)
        assert.is_nil(pt)
        assert.matches("32 bytes", err)
      end)
    elseif v.kind == "oaep_decrypt" then
      it(v.id .. ": RSA-OAEP decrypt", function()
        local key = assert(core.load_private_key(pem(i.private_key)))
        local pt, err = key:decrypt_oaep(i.ciphertext_base64)
        if e.error then
          assert.is_nil(pt)
          assert.is_string(err)
        else
          assert.equal(e.plaintext, pt)
        end
      end)
    elseif v.kind == "aes_gcm_decrypt" then
      it(v.id .. ": AES-256-GCM", function()
        local pt, err = core.aes_gcm_decrypt(i.api_v3_key, i.nonce, i.associated_data, i.ciphertext_base64)
        if e.error then
          assert.is_nil(pt)
          assert.matches("authentication failed", err)
        else
          assert.equal(e.plaintext, pt)
          assert.equal(i.ciphertext_base64, core.aes_gcm_encrypt(i.api_v3_key, i.nonce, i.associated_data, pt))
        end
      end)
    elseif v.kind == "certificates_decrypt" then
      it(v.id .. ": /v3/certificates body decrypts to the platform certificate", function()
        local body = pem(i.body_file)
        assert.equal(i.body_length, #body)
        local entry = cjson.decode(body).data[1]
        assert.equal(e.serial_no, entry.serial_no)
        assert.equal(e.effective_time, entry.effective_time)
        assert.equal(e.expire_time, entry.expire_time)
        local enc = entry.encrypt_certificate
        assert.equal(i.encrypt_certificate.nonce, enc.nonce)
        local pt = assert(core.aes_gcm_decrypt(i.api_v3_key, enc.nonce, enc.associated_data, enc.ciphertext))
        assert.equal(e.plaintext_length, #pt)
        assert.equal(e.plaintext_sha256, core.sha256_hex(pt))
        assert.equal(pem(e.plaintext_file), pt)
        local cert = assert(core.load_certificate(pt))
        assert.equal(e.certificate_serial, cert:serial())
        assert.equal(utc(e.certificate_not_after), cert:not_after())
        assert.equal(utc(e.certificate_not_before), cert:not_before())
        assert.truthy(cert:not_before() <= v.clock_unix and v.clock_unix < cert:not_after())
        assert.matches("CN=Tenpay.com sign", cert:subject(), 1, true)
        local broken = enc.ciphertext:sub(1, 20) .. (enc.ciphertext:sub(21, 21) == "A" and "B" or "A")
          .. enc.ciphertext:sub(22)
        assert.is_nil((core.aes_gcm_decrypt(i.api_v3_key, enc.nonce, enc.associated_data, broken)))
      end)
    else
      it(v.id .. ": has a test", function() error("no test for vector kind " .. v.kind) end)
    end
  end
end)
