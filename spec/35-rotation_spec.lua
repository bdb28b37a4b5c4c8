-- Key rotation without a restart (fake transport, committed test keys): more than one
-- WeChat Pay public key, the previous APIv3 key accepted until a set time (callbacks and
-- certificate downloads, and which key decrypted them), and client.reload, which checks a
-- new config first and keeps the old settings when it is refused.
local wxpay = require("wxpay")
local core = require("wxpay.core")
local cjson = require("cjson").new()
local fake = require("spec.support.fake")
local helpers = require("spec.helpers")

local NEW_APIV3 = "fedcba9876543210FEDCBA9876543210"
local ID2 = "PUB_KEY_ID_0114232134912410000000000000000002"

local other -- a second key pair (the rotated-in WeChat Pay public key, or a new merchant key)
setup(function() other = helpers.openssl_keypair(helpers.tmpdir(), "other") end)
teardown(function() helpers.cleanup() end)

-- An answer signed with the `other` key under `serial`.
local function signed_by_other(serial, body)
  local ts, nonce = tostring(core.time()), core.nonce(32)
  local key = assert(core.load_private_key(other.key_pem))
  return { status = 200, body = body, headers = { ["Wechatpay-Timestamp"] = ts, ["Wechatpay-Nonce"] = nonce,
    ["Wechatpay-Serial"] = serial, ["Wechatpay-Signature"] = key:sign(ts .. "\n" .. nonce .. "\n" .. body .. "\n"),
    ["Request-ID"] = "req-rot" } }
end

local function callback(apiv3, id)
  local k = fake.keys()
  local nonce = core.nonce(12)
  local body = cjson.encode{ id = id or "EV-rot", create_time = "2026-01-01T00:00:00+08:00",
    event_type = "COUPON.SEND", resource_type = "encrypt-resource", summary = "spec",
    resource = { original_type = "coupon", algorithm = "AEAD_AES_256_GCM", nonce = nonce, associated_data = "coupon",
      ciphertext = assert(core.aes_gcm_encrypt(apiv3, nonce, "coupon", '{"coupon_code":"C1"}')) } }
  local ts, n = tostring(core.time()), core.nonce(32)
  return { ["Wechatpay-Timestamp"] = ts, ["Wechatpay-Nonce"] = n, ["Wechatpay-Serial"] = k.pub_key_id,
    ["Wechatpay-Signature"] = k.signers[k.pub_key_id]:sign(ts .. "\n" .. n .. "\n" .. body .. "\n") }, body
end

describe("several WeChat Pay public keys", function()
  it("an answer signed with a key of wechatpay_public_keys verifies during the switch", function()
    local t = fake.transport(function() return signed_by_other(ID2, '{"ok":1}') end)
    local c = assert(wxpay.new(fake.config(t, { wechatpay_public_keys = { [ID2] = other.pub_pem } })))
    local data, err, meta = c.request{ method = "GET", path = "/v3/x" }
    assert.is_nil(err)
    assert.equal(1, data.ok)
    assert.equal(ID2, meta.verified_by)
    -- requests still name the main key
    assert.equal(fake.keys().pub_key_id, t.calls[1].headers["Wechatpay-Serial"])
    local ids = {}
    for _, e in ipairs(c.certificates.list()) do if e.source == "public_key" then ids[#ids + 1] = e.serial_no end end
    table.sort(ids)
    assert.same({ fake.keys().pub_key_id, ID2 }, ids)
  end)

  it("the main key listed again in wechatpay_public_keys shows once in certificates.list", function()
    local t = fake.transport(function() return signed_by_other(ID2, '{"ok":1}') end)
    local k = fake.keys()
    local c = assert(wxpay.new(fake.config(t, { wechatpay_public_keys = { [ID2] = other.pub_pem,
      [k.pub_key_id:lower()] = k.wechatpay_pub } })))
    local ids = {}
    for _, e in ipairs(c.certificates.list()) do if e.source == "public_key" then ids[#ids + 1] = e.serial_no end end
    table.sort(ids)
    assert.same({ k.pub_key_id, ID2 }, ids)
  end)

  it("without it the same answer is refused; files and bad entries", function()
    local t = fake.transport(function() return signed_by_other(ID2, '{"ok":1}') end)
    local c = assert(wxpay.new(fake.config(t)))
    local _, err = c.request{ method = "GET", path = "/v3/x" }
    assert.equal("signature", err.kind)
    local c2 = assert(wxpay.new(fake.config(t, { wechatpay_public_key_files = { [ID2] = other.pub } })))
    assert(c2.request{ method = "GET", path = "/v3/x" })
    local _, cerr = wxpay.new(fake.config(t, { wechatpay_public_keys = { [ID2] = "not a key" } }))
    assert.equal("wechatpay_public_keys." .. ID2, cerr.field)
    _, cerr = wxpay.new(fake.config(t, { wechatpay_public_keys = { [ID2] = other.pub_pem },
      wechatpay_public_key = fake.NIL, wechatpay_public_key_id = fake.NIL }))
    assert.equal("wechatpay_public_key", cerr.field)
  end)
end)

describe("the previous APIv3 key", function()
  local function client(now, overrides)
    local cfg = { apiv3_key = NEW_APIV3, apiv3_key_previous = fake.APIV3,
      apiv3_key_previous_until = 2000000000, now = now }
    for k, v in pairs(overrides or {}) do cfg[k] = v end
    return assert(wxpay.new(fake.config(fake.transport(function() error("no request") end), cfg)))
  end

  it("decrypts callbacks encrypted with the old key until apiv3_key_previous_until", function()
    local h, b = callback(fake.APIV3)
    local n, err = client(core.time).notify.parse(h, b)
    assert.is_nil(err)
    assert.equal("C1", n.resource_data.coupon_code)
    local h2, b2 = callback(NEW_APIV3)
    assert(client(core.time).notify.parse(h2, b2))
    -- after the end of the period: refused (WeChat Pay's side has long switched)
    local late = client(core.time, { apiv3_key_previous_until = core.time() - 1 })
    local _, lerr = late.notify.parse(h, b)
    assert.equal("decrypt", lerr.check)
  end)

  it("decrypts downloaded certificates, and says which key did", function()
    local k = fake.keys()
    local t = fake.transport(function()
      return fake.certificates_response({ { k.platform_new_cert, k.platform_new_serial } }, k.platform_new_serial)
    end)
    local cfg = { apiv3_key = NEW_APIV3, apiv3_key_previous = fake.APIV3, apiv3_key_previous_until = 2000000000 }
    for key, v in pairs(fake.ONLY_APIV3) do cfg[key] = v end
    local c = assert(wxpay.new(fake.config(t, cfg)))
    assert(c.certificates.refresh())
    local entry = c.certificates.list()[1]
    assert.same({ "downloaded", "apiv3_key_previous" }, { entry.source, entry.decrypted_with })
    cfg.apiv3_key_previous, cfg.apiv3_key_previous_until = nil, nil
    local _, err = assert(wxpay.new(fake.config(t, cfg))).certificates.refresh()
    assert.equal("decrypt", err.check)
  end)

  it("never appears in an error or a log line, even when a server echoes it", function()
    local echo = "key " .. fake.APIV3 .. " and " .. NEW_APIV3
    local t = fake.transport(function()
      return { status = 400, headers = { ["Request-ID"] = "req-echo" },
        body = cjson.encode{ code = "PARAM_ERROR", message = echo, detail = { value = echo } } }
    end)
    local lines = {}
    local c = assert(wxpay.new(fake.config(t, { apiv3_key = NEW_APIV3, apiv3_key_previous = fake.APIV3,
      apiv3_key_previous_until = 2000000000, max_retries = 0,
      logger = function(_, message, fields) lines[#lines + 1] = message .. " " .. cjson.encode(fields) end })))
    local _, err = c.request{ method = "POST", path = "/v3/x", body = { a = 1 } }
    assert.equal("PARAM_ERROR", err.code)
    local text = tostring(err) .. " " .. tostring(err.message) .. " " .. cjson.encode(err.detail or {})
      .. " " .. table.concat(lines, "\n")
    assert.is_nil(text:find(NEW_APIV3, 1, true), text)
    assert.is_nil(text:find(fake.APIV3, 1, true), text)
  end)

  it("is checked like apiv3_key and needs its end time", function()
    local t = fake.transport(function() end)
    local _, err = wxpay.new(fake.config(t, { apiv3_key_previous = "short", apiv3_key_previous_until = 1 }))
    assert.equal("apiv3_key_previous", err.field)
    _, err = wxpay.new(fake.config(t, { apiv3_key_previous = fake.APIV3 }))
    assert.equal("apiv3_key_previous_until", err.field)
    _, err = wxpay.new(fake.config(t, { apiv3_key_previous_until = 2000000000 }))
    assert.equal("apiv3_key_previous", err.field)
  end)
end)

describe("client.reload", function()
  local function serial_of(rec)
    return rec.headers.Authorization:match('serial_no="([^"]+)"')
  end

  it("swaps the merchant key and serial in place; a refused config changes nothing", function()
    local t = fake.transport(function() return fake.response(200, '{"ok":1}') end)
    local cfg = fake.config(t)
    local c = assert(wxpay.new(cfg))
    assert(c.request{ method = "GET", path = "/v3/x" })
    assert(fake.check_signature(t.calls[1]))
    local old_serial = serial_of(t.calls[1])

    local bad = fake.config(t, { private_key_file = "/nonexistent/key.pem", private_key = fake.NIL })
    local ok, err = c.reload(bad)
    assert.is_nil(ok)
    assert.equal("config", err.kind)
    assert.equal("private_key_file", err.field)
    assert(c.request{ method = "GET", path = "/v3/x" })
    assert.equal(old_serial, serial_of(t.calls[2])) -- the old settings stay
    assert(fake.check_signature(t.calls[2]))

    local new = fake.config(t, { private_key = other.key_pem, serial_no = other.serial,
      merchant_certificate = other.cert_pem, mchid = "1900000009" })
    assert(c.reload(new))
    assert(c.request{ method = "GET", path = "/v3/x" })
    local rec = t.calls[3]
    assert.equal(other.serial, serial_of(rec))
    local fields = {}
    for name, v in rec.headers.Authorization:gmatch('([%w_]+)="([^"]*)"') do fields[name] = v end
    local msg = "GET\n/v3/x\n" .. fields.timestamp .. "\n" .. fields.nonce_str .. "\n\n"
    assert.is_true(assert(core.load_public_key(other.pub_pem)):verify(msg, fields.signature))
    assert.equal("1900000009", fields.mchid)
    assert.truthy(tostring(c):find("1900000009", 1, true))
    assert.has_error(function() c.reload("nope") end)
  end)

  it("keeps the record of handled callbacks in a memory store (store = \"memory\", or qps alone)", function()
    local t = fake.transport(function() error("no request") end)
    for i, extra in ipairs({ { store = "memory" }, { qps = 50 } }) do
      local c = assert(wxpay.new(fake.config(t, extra)))
      local h, b = callback(fake.APIV3, "EV-reload-mem-" .. i)
      assert.equal("handled", select(2, c.notify.handle(h, b, function() return true end)))
      assert(c.reload(fake.config(t, extra)))
      local ran = false
      assert.equal("duplicate", select(2, c.notify.handle(h, b, function() ran = true; return true end)), i)
      assert.is_false(ran)
    end
  end)

  it("keeps the record of handled callbacks and picks up a new APIv3 key", function()
    local t = fake.transport(function() error("no request") end)
    local c = assert(wxpay.new(fake.config(t)))
    local h, b = callback(fake.APIV3, "EV-reload-1")
    assert.equal("handled", select(2, c.notify.handle(h, b, function() return true end)))
    assert(c.reload(fake.config(t, { apiv3_key = NEW_APIV3, apiv3_key_previous = fake.APIV3,
      apiv3_key_previous_until = 2000000000 })))
    assert.equal("duplicate", select(2, c.notify.handle(h, b, function() return true end)))
    local h2, b2 = callback(NEW_APIV3, "EV-reload-2")
    assert.equal("handled", select(2, c.notify.handle(h2, b2, function() return true end)))
  end)
end)
