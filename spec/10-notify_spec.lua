-- Callbacks (docs/protocol.md#callbacks): client.notify.parse over the official V3 vector and the test-vector
-- callback with a pinned clock, every refusal with its recommended answer, and real
-- callbacks that the sandbox signs, encrypts and POSTs (with retries) to a listener this
-- spec runs on 127.0.0.1 (LuaSocket), answering with what parse recommends.

local sandbox = require("spec.support.sandbox")
local helpers = require("spec.helpers")
local core = require("wxpay.core")
local wxpay = require("wxpay")
local cjson = require("cjson").new()
local socket = require("socket")

local V = helpers.VECTORS
local read = helpers.read

local function merchant()
  local dir = helpers.tmpdir()
  local kp = helpers.openssl_keypair(dir, "merchant")
  return kp
end

local MERCHANT -- one merchant key for the in-process clients
local function client_with(overrides)
  MERCHANT = MERCHANT or merchant()
  local cfg = { mchid = "1900000001", serial_no = MERCHANT.serial, private_key = MERCHANT.key_pem,
    apiv3_key = "WECHATPAY_TEST_APIV3_KEY_32BYTES",
    platform_certificates = { read(V .. "go_test_platform_certificate.pem") },
    base_url = "https://127.0.0.1:1", backup_url = false }
  for k, v in pairs(overrides or {}) do
    if v == false then cfg[k] = nil else cfg[k] = v end
  end
  return assert(wxpay.new(cfg))
end

local function expect_refusal(n, err, kind, status)
  assert.is_nil(n)
  assert.equal(kind, err.kind)
  assert.equal(status or 400, err.answer.status)
  local answer = cjson.decode(err.answer.body)
  assert.equal("FAIL", answer.code)
  assert.equal("string", type(answer.message))
  return err
end

describe("notify.parse with the official V3 vector (clock pinned)", function()
  local vectors = helpers.vectors()
  local v3 = vectors.by_id["V3"]
  local body = read(V .. v3.inputs.body_file)

  it("verifies the V3 signature, then refuses its 16-byte-key (AES-128) resource", function()
    local c = client_with{ now = function() return v3.clock_unix end }
    local n, err = c.notify.parse(v3.inputs.headers, body)
    -- Past the signature: only decryption fails, because upstream used a 16-byte key.
    expect_refusal(n, err, "signature")
    assert.equal("decrypt", err.check)
    -- and a client cannot be configured with that key at all
    local bad, cerr = wxpay.new{ mchid = "1900000001", serial_no = MERCHANT.serial,
      private_key = MERCHANT.key_pem, apiv3_key = v3.inputs.api_v3_key,
      platform_certificates = { read(V .. "go_test_platform_certificate.pem") } }
    assert.is_nil(bad)
    assert.equal("apiv3_key", cerr.field)
  end)

  it("refuses V3-neg-tampered-body and V3 outside the 300 s window", function()
    local c = client_with{ now = function() return v3.clock_unix end }
    local err = select(2, c.notify.parse(v3.inputs.headers, body .. "\n"))
    expect_refusal(nil, err, "signature")
    assert.equal("signature", err.check)
    local late = client_with{ now = function() return v3.clock_unix + 300 end }
    err = select(2, late.notify.parse(v3.inputs.headers, body))
    expect_refusal(nil, err, "signature")
    assert.equal("timestamp", err.check)
    local unpinned = client_with()
    err = select(2, unpinned.notify.parse(v3.inputs.headers, body))
    assert.equal("timestamp", err.check)
  end)
end)

describe("notify.parse with the test-vector callback", function()
  -- The compact 429-byte body of the test vector, signed here with the Go test key that pairs
  -- with go_test_platform_certificate.pem (serial D7CE59D1F522D701).
  local BODY = '{"id":"EV-2018022511223320873","create_time":"2015-05-20T13:29:35+08:00",'
    .. '"resource_type":"encrypt-resource","event_type":"TRANSACTION.SUCCESS","summary":"支付成功",'
    .. '"resource":{"original_type":"transaction","algorithm":"AEAD_AES_256_GCM","ciphertext":'
    .. '"Xo+gUJ0eO8KDY9/QsnIjPgZ5YbuBFQPcv4okwzyUaTlw6Q0uGl1yjG/B2ouDgOUci42QdjbHUDpxJsegcYH9m4'
    .. '+kTIZFsW5omFZ96S1jLbhq7GGqxQ==","associated_data":"transaction","nonce":"5K8264ILTKCH"}}'
  local TS, NONCE = "1554209980", "c5ac7061fccab6bf3e254dcf98995b8c"
  local signer = assert(core.load_private_key(read(V .. "go_test_private_key.pem")))

  local function headers(overrides)
    local msg = TS .. "\n" .. NONCE .. "\n" .. BODY .. "\n"
    local h = { ["Wechatpay-Timestamp"] = TS, ["Wechatpay-Nonce"] = NONCE,
      ["Wechatpay-Serial"] = "D7CE59D1F522D701", ["Wechatpay-Signature"] = signer:sign(msg),
      ["Wechatpay-Signature-Type"] = "WECHATPAY2-SHA256-RSA2048", ["Request-ID"] = "cb-1" }
    for k, v in pairs(overrides or {}) do h[k] = v or nil end
    return h
  end
  local pinned = { now = function() return tonumber(TS) end }

  it("is the documented body and string to verify", function()
    assert.equal(429, #BODY)
    local msg = TS .. "\n" .. NONCE .. "\n" .. BODY .. "\n"
    assert.equal(474, #msg)
    assert.equal("8de8633632dba30c65496e683d88c2217952a4a075838cf9b2657fcd6a035e3b", core.sha256_hex(msg))
  end)

  it("verifies, decrypts and decodes it", function()
    local c = client_with(pinned)
    local n, err, meta = c.notify.parse(headers(), BODY)
    assert.is_nil(err)
    assert.equal("EV-2018022511223320873", n.id)
    assert.equal("TRANSACTION.SUCCESS", n.event_type)
    assert.equal("支付成功", n.summary)
    assert.same({ mchid = "1900000001", out_trade_no = "T0001", trade_state = "SUCCESS" }, n.resource_data)
    assert.equal("D7CE59D1F522D701", meta.verified_by)
    assert.equal("cb-1", meta.request_id)
    assert.equal(204, meta.answer.status)
  end)

  it("matches header names case-insensitively and takes one-element lists", function()
    local c = client_with(pinned)
    local lower, upper, listed = {}, {}, {}
    for k, v in pairs(headers()) do
      lower[k:lower()] = v
      upper[k:upper()] = v
      listed[k] = { v }
    end
    for _, h in ipairs{ lower, upper, listed } do
      local n, err = c.notify.parse(h, BODY)
      assert.is_nil(err)
      assert.equal("SUCCESS", n.resource_data.trade_state)
    end
    local twice = headers()
    twice["Wechatpay-Signature"] = { twice["Wechatpay-Signature"], twice["Wechatpay-Signature"] }
    local n2, err2 = c.notify.parse(twice, BODY)
    expect_refusal(n2, err2, "signature")
    local dup = headers()
    dup["wechatpay-serial"] = "D7CE59D1F522D701" -- the same header under two spellings
    assert.equal("headers", select(2, c.notify.parse(dup, BODY)).check)
  end)

  it("refuses a probe, a missing header, a foreign serial and a wrong signature type", function()
    local c = client_with(pinned)
    local probe = "WECHATPAY/SIGNTEST/" .. core.base64_encode(string.rep("\7", 256))
    local _, err = c.notify.parse(headers{ ["Wechatpay-Signature"] = probe }, BODY)
    expect_refusal(nil, err, "signature")
    assert.is_true(err.probe)
    _, err = c.notify.parse(headers{ ["Wechatpay-Nonce"] = false }, BODY)
    expect_refusal(nil, err, "signature")
    assert.equal("headers", err.check)
    _, err = c.notify.parse(headers{ ["Wechatpay-Serial"] = "PUB_KEY_ID_0000" }, BODY)
    -- an unknown serial may be a certificate not fetched yet: answer 5xx so WeChat Pay retries
    expect_refusal(nil, err, "signature", 500)
    assert.equal("serial", err.check)
    _, err = c.notify.parse(headers{ ["Wechatpay-Signature-Type"] = "WECHATPAY2-SM2-WITH-SM3" }, BODY)
    assert.equal("signature_type", err.check)
  end)

  it("refuses bad input with invalid_argument, and a missing apiv3_key with config (500)", function()
    local c = client_with(pinned)
    expect_refusal(nil, select(2, c.notify.parse(headers(), "")), "invalid_argument")
    expect_refusal(nil, select(2, c.notify.parse(headers(), nil)), "invalid_argument")
    -- signed but not the expected shape
    local function signed(body)
      local h = headers()
      h["Wechatpay-Signature"] = signer:sign(TS .. "\n" .. NONCE .. "\n" .. body .. "\n")
      return h, body
    end
    local err = select(2, c.notify.parse(signed("not json")))
    expect_refusal(nil, err, "invalid_argument")
    err = select(2, c.notify.parse(signed('{"id":"x"}')))
    assert.equal("resource", err.field)
    err = select(2, c.notify.parse(signed(BODY:gsub("AEAD_AES_256_GCM", "AEAD_SM4_GCM"))))
    assert.equal("resource.algorithm", err.field)
    local no_key = client_with{ now = pinned.now, apiv3_key = false }
    expect_refusal(nil, select(2, no_key.notify.parse(headers(), BODY)), "config", 500)
    assert.has_error(function() c.notify.parse("headers", BODY) end)
    assert.has_error(function() c.notify.parse({}, 42) end)
  end)

  it("never puts the decrypted resource in an error", function()
    local c = client_with(pinned)
    local plaintext_json = 'secret-13800138000 (not JSON)'
    local nonce = "abcdefghijkl"
    local ct = core.aes_gcm_encrypt("WECHATPAY_TEST_APIV3_KEY_32BYTES", nonce, "transaction", plaintext_json)
    local body = BODY:gsub('"ciphertext":"[^"]*"', '"ciphertext":"' .. ct .. '"'):gsub("5K8264ILTKCH", nonce)
    local h = headers()
    h["Wechatpay-Signature"] = signer:sign(TS .. "\n" .. NONCE .. "\n" .. body .. "\n")
    local n, err = c.notify.parse(h, body)
    expect_refusal(n, err, "invalid_argument")
    assert.equal("resource", err.field)
    assert.is_nil(tostring(err):find("13800138000", 1, true))
    assert.is_nil(err.answer.body:find("13800138000", 1, true))
  end)
end)

-- A one-request-at-a-time HTTP listener in this process.
local function listen()
  local srv = assert(socket.bind("127.0.0.1", 0))
  srv:settimeout(10)
  local _, port = srv:getsockname()
  return srv, port
end

-- Accept one POST, answer it with handler(headers, body) -> status, body. With `tls`
-- (a LuaSec server context) the connection is HTTPS.
local function serve_one(srv, handler, tls)
  local conn = assert(srv:accept())
  conn:settimeout(5)
  if tls then
    conn = assert(require("ssl").wrap(conn, tls))
    assert(conn:dohandshake())
  end
  local line = assert(conn:receive("*l"))
  local headers, length = {}, 0
  while true do
    local h = assert(conn:receive("*l"))
    if h == "" then break end
    local name, value = h:match("^([^:]+):%s*(.-)%s*$")
    headers[name] = value
    if name:lower() == "content-length" then length = tonumber(value) end
  end
  local body = length > 0 and assert(conn:receive(length)) or ""
  local status, answer = handler(headers, body)
  conn:send(string.format("HTTP/1.1 %d X\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
    status, #answer, answer))
  conn:close()
  return { line = line, headers = headers, body = body }
end

local function wait_for(sb, id, state)
  for _ = 1, 100 do
    local cb = sb:control("GET", "/callbacks").callbacks[id]
    if cb.state == state then return cb end
    socket.sleep(0.05)
  end
  error("callback " .. id .. " never became " .. state)
end

describe("callbacks delivered by the sandbox", function()
  local sb, srv, port, client, last
  setup(function()
    sb = sandbox.start{ mode = "combined" }
    srv, port = listen()
    client = assert(wxpay.new(sb.config))
  end)
  teardown(function()
    srv:close()
    sb:stop()
  end)

  -- The app under test: parse, remember, answer as recommended.
  local function app(headers, body)
    local n, err, meta = client.notify.parse(headers, body)
    last = { n = n, err = err }
    if not n then return err.answer.status, err.answer.body end
    return meta.answer.status, meta.answer.body
  end

  local function send(spec)
    spec.url = spec.url or ("http://127.0.0.1:" .. port .. "/wxpay/notify")
    local res, status = sb:control("POST", "/callbacks", spec)
    assert.equal(200, status)
    return res
  end

  it("verifies and decrypts a coupon callback and the sandbox sees it accepted", function()
    local cb = send{ event_type = "COUPON.USE", original_type = "coupon",
      resource = { stock_id = "9856000", coupon_id = "98674556", status = "USED" } }
    local req = serve_one(srv, app)
    assert.equal("POST /wxpay/notify HTTP/1.1", req.line)
    assert.is_nil(last.err)
    assert.equal("COUPON.USE", last.n.event_type)
    assert.equal("coupon", last.n.resource.original_type)
    assert.same({ stock_id = "9856000", coupon_id = "98674556", status = "USED" }, last.n.resource_data)
    local rec = wait_for(sb, cb.id, "accepted")
    assert.equal(1, #rec.attempts)
    assert.equal(204, rec.attempts[1].status)
    assert.equal(req.body, rec.body) -- the raw bytes were verified, not a re-encoding
  end)

  it("is retried on the (scaled) WeChat Pay schedule until the app accepts", function()
    local cb = send{ resource = { out_trade_no = "T42" }, retry_scale = 0.01 }
    serve_one(srv, function() return 500, '{"code":"FAIL","message":"busy"}' end)
    local t0 = socket.gettime()
    serve_one(srv, function() return 503, "" end)
    local second = socket.gettime()
    serve_one(srv, app)
    assert.is_nil(last.err)
    assert.equal("T42", last.n.resource_data.out_trade_no)
    local rec = wait_for(sb, cb.id, "accepted")
    assert.same({ 500, 503, 204 }, { rec.attempts[1].status, rec.attempts[2].status, rec.attempts[3].status })
    -- 15 s and 15 s scaled by 0.01; the sandbox waits between attempts
    assert.truthy(second - t0 >= 0.1)
    assert.equal('{"code":"FAIL","message":"busy"}', rec.attempts[1].body)
  end)

  for _, case in ipairs{ { "probe", "probe" }, { "tamper", "signature" }, { "stale", "timestamp" } } do
    it("answers a " .. case[1] .. " callback with a 4xx FAIL, which the sandbox records", function()
      local cb = send{ resource = { out_trade_no = "T1" }, [case[1]] = true }
      serve_one(srv, app)
      assert.is_nil(last.n)
      assert.equal("signature", last.err.kind)
      assert.equal(case[2], last.err.check)
      local rec = wait_for(sb, cb.id, "rejected")
      assert.equal(1, #rec.attempts)
      assert.equal(400, rec.attempts[1].status)
      assert.equal("FAIL", cjson.decode(rec.attempts[1].body).code)
    end)
  end

  it("accepts callbacks signed by the platform certificate during migration (public key + apiv3_key only)", function()
    local cfg = {}
    for k, v in pairs(sb.config) do cfg[k] = v end
    cfg.platform_certificate_files = nil
    local migrating = assert(wxpay.new(cfg))
    local info = sb:control("GET", "/info")
    for _, signer in ipairs{ "primary", "public_key" } do
      local cb = send{ resource = { n = signer }, signer = signer }
      local got
      serve_one(srv, function(h, b)
        local n, err, meta = migrating.notify.parse(h, b)
        got = { n = n, err = err, meta = meta }
        if not n then return err.answer.status, err.answer.body end
        return 204, ""
      end)
      assert.is_nil(got.err)
      assert.equal(signer, got.n.resource_data.n)
      assert.equal(signer == "primary" and info.platform_serial_no or info.wechatpay_public_key_id,
        got.meta.verified_by)
      wait_for(sb, cb.id, "accepted")
    end
    -- the certificate-signed callback made the client download the certificates, once
    local downloads = 0
    for _, r in ipairs(sb:requests()) do
      if r.target:find("^/v3/certificates") then downloads = downloads + 1 end
    end
    assert.equal(1, downloads)
  end)

  it("delivers over HTTPS, checking the listener's certificate against the sandbox CA", function()
    local tls = assert(require("ssl").newcontext{ mode = "server", protocol = "any",
      key = sb.dir .. "/server_key.pem", certificate = sb.dir .. "/server_cert.pem" })
    local cb = send{ url = "https://127.0.0.1:" .. port .. "/notify", resource = { out_trade_no = "TLS1" } }
    serve_one(srv, app, tls)
    assert.is_nil(last.err)
    assert.equal("TLS1", last.n.resource_data.out_trade_no)
    assert.equal(204, wait_for(sb, cb.id, "accepted").attempts[1].status)
  end)

  it("refuses bad callback requests", function()
    local _, status = sb:control("POST", "/callbacks", { url = "http://example.com/notify" })
    assert.equal(400, status)
    _, status = sb:control("POST", "/callbacks", { url = "http://127.0.0.1:1/x", max_attempts = 99 })
    assert.equal(400, status)
  end)
end)

describe("examples/notify_handler.lua", function()
  it("runs and asserts what it shows", function()
    local lua = "lua5.4"
    local out, ok = helpers.sh(lua .. " examples/notify_handler.lua")
    assert.is_true(ok, out)
    assert.truthy(out:find("accepted", 1, true))
  end)
end)
