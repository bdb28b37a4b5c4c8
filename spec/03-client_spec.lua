-- Unit specs for the client layer: configuration, the signed pipeline, response
-- verification, retries/failover/deadline and secret hygiene, over a fake transport.

local F = require("spec.support.fake")
local core = require("wxpay.core")
local wxpay = require("wxpay")

local function ok_handler(body)
  return function() return F.response(200, body or '{"ok":true}') end
end

local function new_client(handler, overrides)
  local t = F.transport(handler or ok_handler())
  local c, err = wxpay.new(F.config(t, overrides))
  assert(c, tostring(err))
  return c, t
end

describe("wxpay module", function()
  it("has a semantic version (spec/00 checks the rockspecs carry it)", function()
    assert.matches("^%d+%.%d+%.%d+$", wxpay._VERSION)
  end)

  it("errors.is tells the module's errors from tables that look like them", function()
    local _, err = wxpay.new(F.config(F.transport(ok_handler()), { mchid = F.NIL }))
    assert.is_true(wxpay.errors.is(err))
    assert.is_false(wxpay.errors.is({ kind = err.kind, message = err.message, field = err.field }))
    assert.is_false(wxpay.errors.is("config"))
    assert.is_false(wxpay.errors.is(nil))
  end)

  it("module-level functions need configure first", function()
    local data, err = wxpay.request{ method = "GET", path = "/v3/x" }
    assert.is_nil(data)
    assert.equal("config", err.kind)
    local rel, err2 = wxpay.partnerships.build({})
    assert.is_nil(rel)
    assert.equal("config", err2.kind)
    local ok, raised = pcall(wxpay.partnerships.list, {})
    assert.is_false(ok)
    assert.equal("config", raised.kind)
  end)

  it("configure makes a default client the module functions use", function()
    local t = F.transport(ok_handler('{"n":1}'))
    local bad, berr = wxpay.configure(F.config(t, { mchid = F.NIL }))
    assert.is_nil(bad)
    assert.equal("mchid", berr.field)
    assert.truthy(wxpay.configure(F.config(t)))
    local data, err = wxpay.request{ method = "GET", path = "/v3/x" }
    assert.is_nil(err)
    assert.equal(1, data.n)
    assert.equal(1, #t.calls)
  end)
end)

describe("config validation", function()
  local k = F.keys()
  local missing = "/nonexistent/dir/key.pem"
  local cases = {
    { "missing mchid", { mchid = F.NIL }, "mchid" },
    { "numeric mchid", { mchid = 1900000001 }, "mchid" },
    { "non-digit mchid", { mchid = "19000x" }, "mchid" },
    { "missing serial_no", { serial_no = F.NIL }, "serial_no" },
    { "serial_no not hex", { serial_no = "XYZ" }, "serial_no" },
    { "serial_no not the certificate's", { serial_no = "0123456789ABCDEF" }, "serial_no" },
    { "no private key", { private_key = F.NIL }, "private_key" },
    { "both key forms", { private_key_file = "apiclient_key.pem" }, "private_key" },
    { "unreadable key file", { private_key = F.NIL, private_key_file = missing }, "private_key_file" },
    { "garbage key", { private_key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n" },
      "private_key" },
    { "certificate of another key", { merchant_certificate = k.platform_new_cert }, "merchant_certificate" },
    { "unreadable certificate file", { merchant_certificate = F.NIL, merchant_certificate_file = missing },
      "merchant_certificate_file" },
    { "apiv3_key 31 bytes", { apiv3_key = string.rep("a", 31) }, "apiv3_key" },
    { "apiv3_key 33 bytes", { apiv3_key = string.rep("a", 33) }, "apiv3_key" },
    { "apiv3_key not a string", { apiv3_key = 12 }, "apiv3_key" },
    { "http base_url", { base_url = "http://api.example.test" }, "base_url" },
    { "base_url with path", { base_url = "https://api.example.test/v3" }, "base_url" },
    { "base_url with query", { base_url = "https://api.example.test?a=1" }, "base_url" },
    { "base_url with fragment", { base_url = "https://api.example.test#x" }, "base_url" },
    { "base_url with userinfo", { base_url = "https://u:p@api.example.test" }, "base_url" },
    { "base_url bad port", { base_url = "https://api.example.test:99999" }, "base_url" },
    { "base_url no host", { base_url = "https://" }, "base_url" },
    { "base_url not a string", { base_url = true }, "base_url" },
    { "malformed backup_url", { backup_url = "ftp://x" }, "backup_url" },
    { "timeout zero", { timeout = 0 }, "timeout" },
    { "timeout string", { timeout = "10" }, "timeout" },
    { "connect_timeout negative", { connect_timeout = -1 }, "connect_timeout" },
    { "deadline infinite", { deadline = math.huge }, "deadline" },
    { "max_retries negative", { max_retries = -1 }, "max_retries" },
    { "max_retries fractional", { max_retries = 1.5 }, "max_retries" },
    { "clock_skew zero", { clock_skew = 0 }, "clock_skew" },
    { "public key without id", { wechatpay_public_key_id = F.NIL }, "wechatpay_public_key_id" },
    { "public key id malformed", { wechatpay_public_key_id = "PUB KEY" }, "wechatpay_public_key_id" },
    { "id without public key", { wechatpay_public_key = F.NIL }, "wechatpay_public_key" },
    { "unreadable public key file", { wechatpay_public_key = F.NIL, wechatpay_public_key_file = missing },
      "wechatpay_public_key_file" },
    { "garbage public key", { wechatpay_public_key = "nope" }, "wechatpay_public_key" },
    { "platform certificate garbage", { platform_certificates = { k.platform_new_cert, "x" } },
      "platform_certificates[2]" },
    { "platform certificates not a list", { platform_certificates = "pem" }, "platform_certificates" },
    { "unreadable platform certificate file", { platform_certificate_files = { missing } },
      "platform_certificate_files[1]" },
    { "no way to verify responses", { wechatpay_public_key = F.NIL, wechatpay_public_key_id = F.NIL,
      platform_certificates = F.NIL, apiv3_key = F.NIL }, "wechatpay_public_key" },
    { "refresh interval over 12 h", { certificate_refresh_interval = 43201 }, "certificate_refresh_interval" },
    -- the docs say "less than 12 hours"
    { "refresh interval of exactly 12 h", { certificate_refresh_interval = 43200 }, "certificate_refresh_interval" },
    { "unknown key (typo)", { mch_id = "1900000001" }, "mch_id" },
    { "unknown key (case)", { Timeout = 3 }, "Timeout" },
    { "bad transport", { transport = "carrier-pigeon" }, "transport" },
    { "transport without request", { transport = {} }, "transport" },
    { "logger not a function", { logger = "stdout" }, "logger" },
    { "offset_mode", { offset_mode = "pages" }, "offset_mode" },
    { "unreadable ca_file", { ca_file = missing }, "ca_file" },
  }
  for _, case in ipairs(cases) do
    it("refuses " .. case[1], function()
      local t = F.transport(ok_handler())
      local overrides = case[2]
      if overrides.transport == nil then overrides.transport = t end
      local c, err = wxpay.new(F.config(t, overrides))
      assert.is_nil(c)
      assert.equal("config", err.kind)
      assert.equal(case[3], err.field)
      assert.truthy(tostring(err):find(case[3], 1, true), tostring(err))
      assert.equal(0, #t.calls)
    end)
  end

  it("accepts file forms, a lower-case serial and a trailing slash", function()
    local t = F.transport(ok_handler())
    local files = { F.temp_file(k.merchant_key), F.temp_file(k.merchant_cert), F.temp_file(k.wechatpay_pub),
                    F.temp_file(k.platform_new_cert) }
    finally(function() for _, f in ipairs(files) do os.remove(f) end end)
    local c, err = wxpay.new(F.config(t, {
      private_key = F.NIL, private_key_file = files[1],
      merchant_certificate = F.NIL, merchant_certificate_file = files[2],
      serial_no = k.merchant_serial:lower(),
      wechatpay_public_key = F.NIL, wechatpay_public_key_file = files[3],
      platform_certificates = F.NIL, platform_certificate_files = { files[4] },
      base_url = "https://api.example.test:8443/",
    }))
    assert.is_nil(err)
    assert.truthy(c.request{ method = "GET", path = "/v3/x" })
    assert.equal("https://api.example.test:8443/v3/x", t.calls[1].url)
  end)

  it("raises when config is not a table", function()
    assert.has_error(function() wxpay.new("mchid=1") end)
    assert.has_error(function() wxpay.new() end)
  end)

  it("tostring(client) names the merchant and host only", function()
    local c = new_client()
    assert.equal("wxpay.client (mchid 1900000001, base_url https://api.example.test)", tostring(c))
  end)
end)

describe("request pipeline", function()
  local k = F.keys()

  -- Under the ASan build only (core._test_fail_random is compiled in there): a request that
  -- cannot be signed is never sent, and the caller gets a local, non-retried error.
  it("sends nothing when signing fails (a failing random source)", function()
    if not core._test_fail_random then
      pending("core._test_fail_random is built only with WXPAY_TEST_HOOKS (make asan)")
      return
    end
    local c, t = new_client()
    core._test_fail_random(true)
    local ok, data, err = pcall(c.request, { method = "POST", path = "/v3/x", body = { a = 1 },
      idempotency_key = "k1" })
    local ok2, rel, berr = pcall(c.partnerships.build, { partner = { type = "APPID", appid = "wx1" },
      authorized_data = { business_type = "FAVOR_STOCK", stock_id = "1" } })
    core._test_fail_random(false)
    assert.is_true(ok, tostring(data))
    assert.is_nil(data)
    assert.same({ "network", "SIGN_FAILED", false, false, 1 },
      { err.kind, err.code, err.connected, err.retryable, err.attempts })
    assert.is_true(ok2, tostring(rel))
    assert.is_nil(rel)
    assert.equal("RANDOM_FAILED", berr.code)
    assert.equal(0, #t.calls)
  end)

  it("signs exactly the bytes it sends (GET with query)", function()
    local c, t = new_client()
    local data, err, meta = c.request{ method = "get", path = "/v3/things",
      query = { { "b", "x y/{}\"" }, { "a", 5 }, { "j", { k = "v/w" } }, { "u", "-._~" } } }
    assert.is_nil(err)
    assert.is_true(data.ok)
    local rec = t.calls[1]
    assert.equal("GET", rec.method)
    assert.equal("/v3/things?b=x%20y%2F%7B%7D%22&a=5&j=%7B%22k%22%3A%22v%2Fw%22%7D&u=-._~", rec.target)
    local fields = assert(F.check_signature(rec))
    assert.equal("1900000001", fields.mchid)
    assert.equal(k.merchant_serial, fields.serial_no)
    assert.equal("mchid,nonce_str,timestamp,serial_no,signature", fields.order)
    assert.is_nil(rec.body)
    assert.is_nil(rec.headers["Content-Type"])
    assert.equal(200, meta.status)
    assert.equal(1, meta.attempts)
  end)

  it("sorts a query map by name", function()
    local c, t = new_client()
    assert.truthy(c.request{ method = "GET", path = "/v3/q", query = { z = "1", a = "2", m = "é" } })
    assert.equal("/v3/q?a=2&m=%C3%A9&z=1", t.calls[1].target)
  end)

  it("encodes a table body once, compact, sorted, slashes unescaped, and signs it", function()
    local c, t = new_client()
    assert.truthy(c.request{ method = "POST", path = "/v3/p",
      body = { url = "https://x/y", name = "张三", n = 3, list = { 1, 2 } } })
    local rec = t.calls[1]
    assert.equal('{"list":[1,2],"n":3,"name":"张三","url":"https://x/y"}', rec.body)
    assert.equal("application/json", rec.headers["Content-Type"])
    assert.truthy(F.check_signature(rec))
  end)

  it("sends a string body byte for byte", function()
    local c, t = new_client()
    local body = '{"b":1,  "a":"\\/"}\n'
    assert.truthy(c.request{ method = "POST", path = "/v3/p", body = body })
    assert.equal(body, t.calls[1].body)
    assert.truthy(F.check_signature(t.calls[1]))
  end)

  it("sends Accept, a descriptive User-Agent and the Wechatpay-Serial", function()
    local c, t = new_client()
    assert.truthy(c.request{ method = "GET", path = "/v3/x" })
    local h = t.calls[1].headers
    assert.equal("application/json", h.Accept)
    local v = core.versions()
    local ua = h["User-Agent"]
    assert.matches("^wxpay/" .. wxpay._VERSION:gsub("%.", "%%.") .. " %(%S+/%S+%) Lua/%d+%.%d+", ua)
    assert.truthy(ua:find(" libcurl/" .. v.libcurl:match("[%d.]+"), 1, true), ua)
    assert.truthy(ua:find(" OpenSSL/" .. v.openssl:match("%d+%.%d+[%d.]*"), 1, true), ua)
    if rawget(_G, "jit") then assert.matches("LuaJIT/2", ua) end
    assert.equal(k.pub_key_id, h["Wechatpay-Serial"])
    assert.is_nil(h["Idempotency-Key"])
  end)

  it("advertises the newest platform certificate without a public key", function()
    local c, t = new_client(function()
      return F.response(200, "{}", { serial = k.platform_new_serial })
    end, { wechatpay_public_key = F.NIL, wechatpay_public_key_id = F.NIL,
           platform_certificates = { k.platform_new_cert, k.platform_old_cert } })
    assert.truthy(c.request{ method = "GET", path = "/v3/x" })
    assert.equal(k.platform_new_serial, t.calls[1].headers["Wechatpay-Serial"])
  end)

  it("lets a call override Wechatpay-Serial and add an Idempotency-Key and headers", function()
    local c, t = new_client()
    assert.truthy(c.request{ method = "POST", path = "/v3/x", body = {}, wechatpay_serial = "ABC",
      idempotency_key = "k-1|2_*", headers = { ["Accept-Language"] = "en" } })
    local h = t.calls[1].headers
    assert.equal("ABC", h["Wechatpay-Serial"])
    assert.equal("k-1|2_*", h["Idempotency-Key"])
    assert.equal("en", h["Accept-Language"])
    assert.equal("{}", t.calls[1].body)
  end)

  local bad_requests = {
    { "unknown field", { method = "GET", path = "/v3/x", qeury = {} }, "qeury" },
    { "bad method", { method = "FETCH", path = "/v3/x" }, "method" },
    { "path with query", { method = "GET", path = "/v3/x?a=1" }, "path" },
    { "path with space", { method = "GET", path = "/v3/a b" }, "path" },
    { "relative path", { method = "GET", path = "v3/x" }, "path" },
    { "bad percent escape", { method = "GET", path = "/v3/%zz" }, "path" },
    { "GET with body", { method = "GET", path = "/v3/x", body = {} }, "body" },
    { "emoji in body", { method = "POST", path = "/v3/x", body = { s = "\240\159\152\128" } }, "body" },
    { "invalid UTF-8 in query", { method = "GET", path = "/v3/x", query = { a = "\255" } }, "query.a" },
    { "fractional query number", { method = "GET", path = "/v3/x", query = { a = 1.5 } }, "query.a" },
    { "function in body", { method = "POST", path = "/v3/x", body = { f = print } }, "body" },
    { "bad idempotency key", { method = "POST", path = "/v3/x", body = {}, idempotency_key = "a b" },
      "idempotency_key" },
    { "idempotency key with a tab", { method = "POST", path = "/v3/x", body = {}, idempotency_key = "a\tb" },
      "idempotency_key" },
    { "idempotency key with DEL", { method = "POST", path = "/v3/x", body = {}, idempotency_key = "a\127" },
      "idempotency_key" },
    { "idempotency key non-ASCII", { method = "POST", path = "/v3/x", body = {}, idempotency_key = "键" },
      "idempotency_key" },
    { "empty idempotency key", { method = "POST", path = "/v3/x", body = {}, idempotency_key = "" },
      "idempotency_key" },
    { "idempotency key of 129", { method = "POST", path = "/v3/x", body = {},
      idempotency_key = string.rep("k", 129) }, "idempotency_key" },
    { "reserved header", { method = "GET", path = "/v3/x", headers = { authorization = "x" } },
      "headers.authorization" },
    { "header injection", { method = "GET", path = "/v3/x", headers = { ["X-A"] = "1\r\nX-B: 2" } },
      "headers.X-A" },
    { "bad timeout", { method = "GET", path = "/v3/x", timeout = -1 }, "timeout" },
  }
  for _, case in ipairs(bad_requests) do
    it("refuses a request with " .. case[1] .. " before sending", function()
      local c, t = new_client()
      local data, err = c.request(case[2])
      assert.is_nil(data)
      assert.equal("invalid_argument", err.kind)
      assert.equal("INVALID_ARGUMENT", err.code)
      assert.equal(case[3], err.field)
      assert.equal(0, #t.calls)
    end)
  end

  it("accepts any visible ASCII Idempotency-Key up to 128 characters on other endpoints", function()
    local c, t = new_client()
    for i, key in ipairs({ "order.2024:01/7", "a=b~c", string.rep("k", 128), "k#" .. string.rep("9", 60) }) do
      local data, err, meta = c.request{ method = "POST", path = "/v3/x", body = {}, idempotency_key = key }
      assert.is_nil(err)
      assert.truthy(data)
      assert.equal(key, meta.idempotency_key)
      assert.equal(key, t.calls[i].headers["Idempotency-Key"])
    end
    -- partnerships keeps the documented class
    local rel, err = c.partnerships.build({ partner = { type = "APPID", appid = "wx1" },
      authorized_data = { business_type = "FAVOR_STOCK", stock_id = "1" } }, { idempotency_key = "order.1" })
    assert.is_nil(rel)
    assert.equal("opts.idempotency_key", err.field)
    assert.equal(4, #t.calls)
  end)

  it("raises when the request spec is not a table, and tolerates a method call", function()
    local c, t = new_client()
    assert.has_error(function() c.request("GET /v3/x") end)
    assert.truthy(c:request{ method = "GET", path = "/v3/x" })
    assert.equal(1, #t.calls)
  end)
end)

describe("api error answers", function()
  local function answer(status, code, message)
    local c = new_client(function() return F.error_response(status, code, message) end, { max_retries = 0 })
    local data, err = c.request{ method = "POST", path = "/v3/marketing/partnerships/build", body = {},
      idempotency_key = "k1" }
    assert.is_nil(data)
    assert.equal("api", err.kind)
    return err
  end

  it("marks an answer that says the object already exists", function()
    assert.is_true(answer(400, "RESOURCE_ALREADY_EXISTS", "资源已存在").already_exists)
    assert.is_true(answer(400, "RESOURCE_ALREADY_EXISTS", "").already_exists)
    assert.is_true(answer(400, "INVALID_REQUEST", "合作关系已存在").already_exists)
    assert.is_true(answer(400, "INVALID_REQUEST", "The partnership already exists").already_exists)
    assert.is_true(answer(400, "INVALID_REQUEST", "Partnership Already Existed").already_exists)
  end)

  it("does not mark other business-rule errors, nor the phrase under another code", function()
    assert.is_nil(answer(400, "INVALID_REQUEST", "批次状态不正确").already_exists)
    assert.is_nil(answer(400, "INVALID_REQUEST", "").already_exists)
    assert.is_nil(answer(400, "PARAM_ERROR", "商户号已存在").already_exists)
    assert.is_nil(answer(500, "SYSTEM_ERROR", "already exists").already_exists)
  end)

  it("hints that mchid, serial_no and the key are checked together on a 401 SIGN_ERROR", function()
    local err = answer(401, "SIGN_ERROR", "商户证书序列号有误")
    assert.is_string(err.hint)
    for _, word in ipairs({ "mchid", "serial_no", "private key", "wxpay doctor" }) do
      assert.truthy(err.hint:find(word, 1, true), err.hint)
    end
    assert.truthy(tostring(err):find(err.hint, 1, true), tostring(err))
    assert.equal("商户证书序列号有误", err.message)
    assert.is_string(answer(401, "INVALID_REQUEST", "证书序列号不匹配").hint)
    assert.is_nil(answer(400, "PARAM_ERROR", "mchid 有误").hint)
    assert.is_nil(answer(401, "INVALID_REQUEST", "请求过期").hint)
  end)
end)

describe("response verification", function()
  local k = F.keys()

  local function call_with(resp_or_fn, overrides)
    local handler = type(resp_or_fn) == "function" and resp_or_fn or function() return resp_or_fn end
    local c, t = new_client(handler, overrides)
    local data, err, meta = c.request{ method = "GET", path = "/v3/x" }
    return data, err, meta, t
  end

  local function expect_signature_error(resp, check, overrides)
    local data, err, _, t = call_with(resp, overrides)
    assert.is_nil(data)
    assert.equal("signature", err.kind)
    assert.equal(check, err.check, tostring(err))
    assert.is_false(err.retryable)
    assert.equal(1, #t.calls) -- never retried
    return err
  end

  it("accepts a response signed with the public key", function()
    local data, err, meta = call_with(F.response(200, '{"v":"中文"}', { request_id = "R1" }))
    assert.is_nil(err)
    assert.equal("中文", data.v)
    assert.equal("R1", meta.request_id)
    assert.equal(k.pub_key_id, meta.verified_by)
  end)

  it("accepts responses signed by either configured platform certificate", function()
    for _, serial in ipairs({ k.platform_new_serial, k.platform_old_serial }) do
      local data, err = call_with(F.response(200, '{"a":1}', { serial = serial }))
      assert.is_nil(err)
      assert.equal(1, data.a)
    end
  end)

  it("matches the serial case-insensitively and accepts a missing Signature-Type", function()
    local data, err = call_with(F.response(200, "{}", { serial = k.platform_new_serial,
      headers = { ["Wechatpay-Serial"] = k.platform_new_serial:lower(), ["Wechatpay-Signature-Type"] = false } }))
    assert.is_nil(err)
    assert.same({}, data)
  end)

  it("rejects a tampered body and never returns its data", function()
    local resp = F.response(200, '{"amount":1}', { request_id = "R-T" })
    resp.body = '{"amount":100}'
    local err = expect_signature_error(resp, "signature")
    assert.equal("R-T", err.request_id)
    assert.equal(k.pub_key_id, err.serial)
    assert.equal(200, err.status)
    assert.truthy(tostring(err):find("R-T", 1, true))
  end)

  it("rejects an unsigned 2xx", function()
    local err = expect_signature_error({ status = 200, headers = { ["Request-ID"] = "R2" }, body = "{}" }, "headers")
    assert.truthy(err.message:find("Wechatpay-Timestamp", 1, true))
    assert.equal("R2", err.request_id)
  end)

  for _, name in ipairs({ "Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Signature", "Wechatpay-Serial" }) do
    it("rejects a 2xx missing " .. name, function()
      local err = expect_signature_error(F.response(200, "{}", { headers = { [name] = false } }), "headers")
      assert.truthy(err.message:find(name, 1, true), err.message)
    end)
  end

  it("rejects a stale or future timestamp (|now - ts| >= 300) and accepts 299 s", function()
    -- The client's clock is pinned: a second may pass between signing and verifying (valgrind).
    local now = core.time()
    local pinned = { now = function() return now end }
    expect_signature_error(F.response(200, "{}", { timestamp = now - 300 }), "timestamp", pinned)
    expect_signature_error(F.response(200, "{}", { timestamp = now + 300 }), "timestamp", pinned)
    expect_signature_error(F.response(200, "{}", { headers = { ["Wechatpay-Timestamp"] = "12abc" } }), "timestamp")
    for _, ts in ipairs({ now - 299, now + 299 }) do
      local data, err = call_with(F.response(200, "{}", { timestamp = ts }), pinned)
      assert.is_nil(err)
      assert.truthy(data)
    end
  end)

  it("honours clock_skew and an injected clock", function()
    local now = core.time()
    expect_signature_error(F.response(200, "{}", { timestamp = now - 100 }), "timestamp", { clock_skew = 60 })
    local fixed = 1700000000
    local data, err = call_with(F.response(200, "{}", { timestamp = fixed - 10 }),
      { now = function() return fixed end })
    assert.is_nil(err)
    assert.truthy(data)
  end)

  it("rejects an unknown serial, and a known key under the wrong serial", function()
    local err = expect_signature_error(F.response(200, "{}", { serial = "DEADBEEF", signer = k.pub_key_id }), "serial")
    assert.equal("DEADBEEF", err.serial)
    assert.truthy(err.message:find("DEADBEEF", 1, true))
    -- signed by the new platform key but labelled as the old one
    expect_signature_error(F.response(200, "{}", { serial = k.platform_old_serial,
      signer = k.platform_new_serial }), "signature")
  end)

  it("drops expired platform certificates (vector cert, expired 2025) unless the clock says otherwise", function()
    local cert = F.slurp("spec/vectors/java_wechat_pay_certificate.pem")
    local signer = core.load_private_key(F.slurp("spec/vectors/java_wechat_pay_private_key.pem"))
    local serial = core.load_certificate(cert):serial()
    local function resp(ts)
      local nonce, body = "n1", '{"x":1}'
      return { status = 200, body = body, headers = { ["Wechatpay-Timestamp"] = tostring(ts),
        ["Wechatpay-Nonce"] = nonce, ["Wechatpay-Serial"] = serial,
        ["Wechatpay-Signature"] = signer:sign(ts .. "\n" .. nonce .. "\n" .. body .. "\n") } }
    end
    local err = expect_signature_error(resp(core.time()), "serial", { platform_certificates = { cert } })
    assert.truthy(err.message:find("expired", 1, true))
    local pinned = 1700000000 -- inside the certificate's validity
    local data, derr = call_with(resp(pinned), { platform_certificates = { cert },
      now = function() return pinned end })
    assert.is_nil(derr)
    assert.equal(1, data.x)
  end)

  it("rejects the WECHATPAY/SIGNTEST/ probe with probe = true", function()
    local probe = "WECHATPAY/SIGNTEST/" .. core.base64_encode(string.rep("\1", 256))
    local err = expect_signature_error(F.response(200, "{}",
      { headers = { ["Wechatpay-Signature"] = probe } }), "probe")
    assert.is_true(err.probe)
    assert.truthy(tostring(err):find("probe=true", 1, true))
  end)

  it("rejects an unsupported Signature-Type", function()
    expect_signature_error(F.response(200, "{}",
      { headers = { ["Wechatpay-Signature-Type"] = "WECHATPAY2-SM2-WITH-SM3" } }), "signature_type")
  end)

  it("rejects malformed signatures without crashing", function()
    for _, sig in ipairs({ "not base64!!", "", "QUJD", string.rep("A", 344) }) do
      local r = F.response(200, "{}", { headers = { ["Wechatpay-Signature"] = sig } })
      local data, err = call_with(r)
      assert.is_nil(data)
      assert.equal("signature", err.kind)
    end
  end)

  it("verifies a 204 over an empty body and returns an empty table", function()
    local data, err, meta = call_with(F.response(204, ""))
    assert.is_nil(err)
    assert.same({}, data)
    assert.equal(204, meta.status)
    expect_signature_error({ status = 204, headers = {}, body = "" }, "headers")
  end)

  it("turns an unsigned 4xx into an api error with the server's fields", function()
    local resp = { status = 400, headers = { ["Request-ID"] = "R400" },
      body = '{"code":"PARAM_ERROR","message":"参数错误","detail":{"field":"/partner/appid","location":"body"}}' }
    local data, err, _, t = call_with(resp)
    assert.is_nil(data)
    assert.equal("api", err.kind)
    assert.equal(400, err.status)
    assert.equal("PARAM_ERROR", err.code)
    assert.equal("参数错误", err.message)
    assert.equal("/partner/appid", err.detail.field)
    assert.equal("R400", err.request_id)
    assert.is_false(err.retryable)
    assert.equal(1, #t.calls)
    assert.equal("wxpay: api error 400 PARAM_ERROR: 参数错误 (request_id=R400, attempts=1)", tostring(err))
  end)

  it("handles non-JSON and empty error bodies", function()
    local _, err = call_with({ status = 404, headers = {}, body = "<html>Not Found</html>" })
    assert.equal("api", err.kind)
    assert.equal(404, err.status)
    assert.is_nil(err.code)
    assert.equal("<html>Not Found</html>", err.message)
    local _, err2 = call_with({ status = 405, headers = {}, body = "" })
    assert.equal("HTTP 405", err2.message)
  end)

  it("records (but does not require) a signature on error answers", function()
    local _, err = call_with(F.response(403, '{"code":"NO_AUTH","message":"no"}'))
    assert.equal("NO_AUTH", err.code)
    assert.is_true(err.signature_verified)
    local bad = F.response(403, '{"code":"NO_AUTH","message":"no"}')
    bad.body = '{"code":"NO_AUTH","message":"changed"}'
    local _, err2 = call_with(bad)
    assert.equal("api", err2.kind)
    assert.is_false(err2.signature_verified)
  end)

  it("reports a verified 2xx that is not JSON as a decode error", function()
    local data, err = call_with(F.response(200, "not json"))
    assert.is_nil(data)
    assert.equal("decode", err.kind)
  end)

  it("skips verification only when the call asks (verify = false)", function()
    local c = new_client(function() return { status = 200, headers = {}, body = '{"a":1}' } end)
    local data, err = c.request{ method = "GET", path = "/v3/billdownload/file", verify = false }
    assert.is_nil(err)
    assert.equal(1, data.a)
  end)
end)

describe("platform certificate download", function()
  local k = F.keys()
  local only_apiv3 = F.ONLY_APIV3
  local certificates_response = F.certificates_response

  local old = { k.platform_old_cert, k.platform_old_serial }
  local new = { k.platform_new_cert, k.platform_new_serial }

  it("downloads and verifies certificates before the first request", function()
    local c, t = new_client(function(_, n, rec)
      if rec.target == "/v3/certificates?algorithm_type=RSA" then
        return certificates_response({ old, new }, k.platform_new_serial)
      end
      return F.response(200, '{"n":' .. n .. '}', { serial = k.platform_new_serial })
    end, only_apiv3)
    local data, err = c.request{ method = "GET", path = "/v3/x" }
    assert.is_nil(err)
    assert.equal(2, data.n)
    assert.equal("/v3/certificates?algorithm_type=RSA", t.calls[1].target)
    assert.truthy(F.check_signature(t.calls[1]))
    assert.equal(k.platform_new_serial, t.calls[2].headers["Wechatpay-Serial"])
    local list = c.certificates.list()
    assert.equal(2, #list)
    for _, e in ipairs(list) do assert.equal("downloaded", e.source) end
    assert.truthy(c.request{ method = "GET", path = "/v3/y" })
    assert.equal(3, #t.calls) -- no second download within the refresh interval
  end)

  local rejects = {
    { "signed by an unknown key", function() return certificates_response({ new }, "ABCDEF") end },
    { "whose signature does not match", function()
        local r = certificates_response({ new }, k.platform_new_serial); r.body = r.body .. " "; return r end },
    { "that does not decrypt", function()
        return certificates_response({ new }, k.platform_new_serial, function(e)
          e.encrypt_certificate.associated_data = "other" end) end },
    { "whose serial_no is not the certificate's", function()
        return certificates_response({ new }, k.platform_new_serial, function(e) e.serial_no = "0A0B" end) end },
  }
  for _, case in ipairs(rejects) do
    it("rejects a certificate answer " .. case[1] .. " and sends nothing else", function()
      local c, t = new_client(function(_, _, rec)
        if rec.target:find("^/v3/certificates") then return case[2]() end
        return F.response(200, "{}", { serial = k.platform_new_serial })
      end, only_apiv3)
      local data, err = c.request{ method = "GET", path = "/v3/x" }
      assert.is_nil(data)
      assert.equal("signature", err.kind)
      assert.equal(1, #t.calls)
      assert.equal(0, #c.certificates.list())
    end)
  end

  it("redacts a rejected download's echo of the request signature from the error and the log", function()
    local logged, sigs = {}, {}
    local c = new_client(function(req, _, rec)
      local sig = req.headers.Authorization:match('signature="([^"]+)"')
      sigs[#sigs + 1] = sig
      if rec.target:find("^/v3/certificates") then return certificates_response({ new }, sig) end
      return F.response(200, "{}", { serial = k.platform_new_serial })
    end, { wechatpay_public_key = F.NIL, wechatpay_public_key_id = F.NIL, platform_certificates = F.NIL,
           logger = function(_, message, fields) logged[#logged + 1] = { message, fields } end })
    local ok, err = c.certificates.refresh()
    assert.is_nil(ok)
    assert.equal("signature", err.kind)
    assert.equal("serial", err.check)
    local seen, strings = {}, {}
    local function add(v)
      strings[#strings + 1] = tostring(v)
      if type(v) == "table" and not seen[v] then
        seen[v] = true
        for key, x in pairs(v) do add(key); add(x) end
      end
    end
    add({ err.message, tostring(err), err, logged })
    local text = table.concat(strings, "\0")
    assert.equal(1, #sigs)
    assert.is_nil(text:find(sigs[1]:sub(1, 40), 1, true), text)
    assert.truthy(text:find("unknown Wechatpay-Serial [REDACTED]", 1, true), text)
  end)

  it("refreshes once on an unknown serial (rotation), at most once a minute", function()
    local mono = 0
    local served = { old }
    local c, t = new_client(function(_, _, rec)
      if rec.target:find("^/v3/certificates") then return certificates_response(served, k.platform_old_serial) end
      return F.response(200, "{}", { serial = k.platform_new_serial })
    end, { wechatpay_public_key = F.NIL, wechatpay_public_key_id = F.NIL, platform_certificates = F.NIL,
           monotonic = function() return mono end })
    local _, err = c.request{ method = "GET", path = "/v3/a" } -- download (old only), answer by new
    assert.equal("signature", err.kind)
    assert.equal("serial", err.check)
    assert.equal(3, #t.calls) -- download, request, refresh on the unknown serial
    served = { old, new }
    local data, err2 = c.request{ method = "GET", path = "/v3/b" }
    assert.is_nil(data) -- within a minute of the last refresh: no new download
    assert.equal("serial", err2.check)
    assert.equal(4, #t.calls)
    mono = 61
    local data3, err3 = c.request{ method = "GET", path = "/v3/c" }
    assert.is_nil(err3)
    assert.truthy(data3)
    assert.equal(6, #t.calls)
    assert.equal("/v3/certificates?algorithm_type=RSA", t.calls[6].target)
  end)

  it("treats a 404 from /v3/certificates as none when a public key is configured", function()
    local c, t = new_client(function(_, _, rec)
      if rec.target:find("^/v3/certificates") then
        return F.error_response(404, "RESOURCE_NOT_EXISTS", "无可用的平台证书")
      end
      return F.response(200, "{}", { serial = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1" })
    end, { platform_certificates = F.NIL })
    local _, err = c.request{ method = "GET", path = "/v3/x" }
    assert.equal("serial", err.check)
    assert.equal(2, #t.calls)
    assert.equal(1, #c.certificates.list())
    assert.equal("public_key", c.certificates.list()[1].source)
  end)
end)

describe("retries", function()
  local function sequence(list)
    return function(_, n)
      local item = list[math.min(n, #list)]
      if type(item) == "function" then return item() end
      return item
    end
  end
  local function e500() return F.error_response(500, "SYSTEM_ERROR", "系统错误") end
  local function reset() return nil, { kind = "network", message = "reset", connected = true } end

  local function sleeper()
    local sleeps = {}
    return function(s) sleeps[#sleeps + 1] = s end, sleeps
  end

  it("retries 5xx with the same body and key and a fresh signature", function()
    local sleep, sleeps = sleeper()
    local c, t = new_client(sequence({ e500, e500, function() return F.response(200, '{"done":true}') end }),
      { sleep = sleep })
    local rel, err, meta = c.partnerships.build({
      partner = { type = "APPID", appid = "wx4e1916a585d1f4e9" },
      authorized_data = { business_type = "BUSIFAVOR_STOCK", stock_id = "2433405" } })
    assert.is_nil(err)
    assert.is_true(rel.done)
    assert.equal(3, meta.attempts)
    assert.equal(3, #t.calls)
    local nonces = {}
    for i = 1, 3 do
      local rec = t.calls[i]
      assert.equal(t.calls[1].body, rec.body)
      assert.equal(meta.idempotency_key, rec.headers["Idempotency-Key"])
      local f = assert(F.check_signature(rec))
      assert.is_nil(nonces[f.nonce_str])
      nonces[f.nonce_str] = true
    end
    assert.equal(2, #sleeps)
    assert.truthy(sleeps[1] >= 0.1 and sleeps[1] <= 0.2, sleeps[1])
    assert.truthy(sleeps[2] >= 0.2 and sleeps[2] <= 0.4, sleeps[2])
  end)

  it("gives up after max_retries with a retryable api error", function()
    local logger, lines = F.logger()
    local c, t = new_client(sequence({ e500 }), { max_retries = 2, logger = logger })
    local data, err = c.request{ method = "GET", path = "/v3/x" }
    local count = { debug = 0, warn = 0 }
    for _, l in ipairs(lines) do
      if l:find("^debug wxpay request") then count.debug = count.debug + 1 end
      if l:find("^warn wxpay retry") then count.warn = count.warn + 1 end
    end
    assert.same({ debug = 3, warn = 2 }, count)
    assert.is_nil(data)
    assert.equal("api", err.kind)
    assert.is_true(err.retryable)
    assert.equal(3, err.attempts)
    assert.equal(3, #t.calls)
    assert.equal("wxpay: api error 500 SYSTEM_ERROR: 系统错误 (request_id=req-err, attempts=3)", tostring(err))
  end)

  it("honours Retry-After on 429", function()
    local sleep, sleeps = sleeper()
    local c, t = new_client(sequence({ F.error_response(429, "FREQUENCY_LIMITED", "slow", { ["Retry-After"] = "7" }),
      function() return F.response(200, "{}") end }), { sleep = sleep })
    local data, err, meta = c.request{ method = "GET", path = "/v3/x" }
    assert.is_nil(err)
    assert.truthy(data)
    assert.equal(2, meta.attempts)
    assert.equal(2, #t.calls)
    assert.same({ 7 }, sleeps)
  end)

  it("caps the exponential backoff", function()
    local sleep, sleeps = sleeper()
    local c = new_client(sequence({ e500 }), { sleep = sleep, max_retries = 6,
      retry_base_delay = 1, retry_max_delay = 3 })
    c.request{ method = "GET", path = "/v3/x" }
    assert.equal(6, #sleeps)
    for i, s in ipairs(sleeps) do
      local d = math.min(3, 2 ^ (i - 1))
      assert.truthy(s >= d / 2 and s <= d, i .. ": " .. s)
    end
  end)

  it("retries a SYSTEM_ERROR code whatever the status, but not other 4xx", function()
    local c, t = new_client(sequence({ F.error_response(400, "SYSTEM_ERROR", "x"),
      function() return F.response(200, "{}") end }))
    assert.truthy(c.request{ method = "GET", path = "/v3/x" })
    assert.equal(2, #t.calls)
    for _, status in ipairs({ 400, 401, 403, 404 }) do
      local c2, t2 = new_client(sequence({ F.error_response(status, "PARAM_ERROR", "x") }))
      local _, err = c2.request{ method = "GET", path = "/v3/x" }
      assert.is_false(err.retryable)
      assert.equal(1, #t2.calls)
      assert.equal(1, err.attempts)
    end
  end)

  it("retries network errors and timeouts", function()
    local c, t = new_client(sequence({ reset,
      function() return nil, { kind = "timeout", message = "timed out", connected = true } end,
      function() return F.response(200, "{}") end }))
    local data, err, meta = c.request{ method = "GET", path = "/v3/x" }
    assert.is_nil(err)
    assert.truthy(data)
    assert.equal(3, meta.attempts)
    assert.equal(3, #t.calls)
    local c2 = new_client(sequence({ function()
      return nil, { kind = "timeout", code = 28, message = "timed out" }
    end }), { max_retries = 1 })
    local _, err2 = c2.request{ method = "GET", path = "/v3/x" }
    assert.equal("timeout", err2.kind)
    assert.equal("TIMEOUT", err2.code)
    assert.equal(28, err2.curl_code)
    assert.is_true(err2.retryable)
    assert.equal(2, err2.attempts)
  end)

  it("does not repeat a POST without Idempotency-Key once the connection was made", function()
    local c, t = new_client(sequence({ reset }))
    local _, err = c.request{ method = "POST", path = "/v3/x", body = {} }
    assert.equal("network", err.kind)
    assert.equal(1, #t.calls)
  end)

  it("never retries a signature failure", function()
    local c, t = new_client(sequence({ function()
      local r = F.response(200, '{"a":1}'); r.body = '{"a":2}'; return r
    end }))
    local data, err = c.request{ method = "GET", path = "/v3/x" }
    assert.is_nil(data)
    assert.equal("signature", err.kind)
    assert.equal(1, #t.calls)
  end)

  it("max_retries = 0 makes one attempt", function()
    local c, t = new_client(sequence({ e500 }), { max_retries = 0 })
    local _, err = c.request{ method = "GET", path = "/v3/x" }
    assert.equal(1, err.attempts)
    assert.equal(1, #t.calls)
  end)
end)

describe("failover", function()
  local refused = function() return nil, { kind = "network", message = "Connection refused", connected = false } end

  local function clock()
    local now = 1000
    return function() return now end, function(d) now = now + d end
  end

  -- A certificate that does not name the URL's host (cosocket and libcurl wording): retrying
  -- the same host cannot help, the backup (another name, its own certificate) is tried once.
  for _, msg in ipairs({ "TLS handshake with api.example.test:443 failed: certificate host mismatch",
    "SSL: no alternative certificate subject name matches target host name 'api.example.test'",
    "SSL: certificate subject name 'other' does not match target host name 'api.example.test'" }) do
    it("does not retry a TLS host-name mismatch and hints at the host name: " .. msg:sub(1, 40), function()
      local c, t = new_client(function() return nil, { kind = "network", message = msg, connected = false } end,
        { max_retries = 2 })
      local data, err = c.request{ method = "GET", path = "/v3/x" }
      assert.is_nil(data)
      assert.equal("network", err.kind)
      assert.is_false(err.retryable)
      assert.equal(1, err.attempts)
      assert.equal(2, #t.calls) -- primary, then the backup once
      assert.truthy(err.hint:find("host name", 1, true), err.hint)
      assert.truthy(err.hint:find("backup.example.test", 1, true), err.hint)
      assert.is_nil(err.hint:find("ca_file is the cause", 1, true))
    end)
  end

  it("still retries a TLS failure that is not a host-name mismatch", function()
    local c, t = new_client(function()
      return nil, { kind = "network", message = "SSL connect error", connected = false }
    end, { max_retries = 1, backup_url = false })
    local _, err = c.request{ method = "GET", path = "/v3/x" }
    assert.is_true(err.retryable)
    assert.equal(2, err.attempts)
    assert.equal(2, #t.calls)
    assert.is_nil(err.hint)
  end)

  it("sends the same request to the backup, then prefers it for the cool-down", function()
    local mono, advance = clock()
    local logger, lines = F.logger()
    local c, t = new_client(function(req)
      if req.url:find("^https://api%.example%.test") then return refused() end
      return F.response(200, '{"via":"backup"}')
    end, { monotonic = mono, failover_cooldown = 60, logger = logger })
    local data, err, meta = c.request{ method = "POST", path = "/v3/x", body = { a = 1 }, idempotency_key = "K1" }
    assert.is_nil(err)
    assert.equal("backup", data.via)
    assert.equal(1, meta.attempts) -- the backup leg is not a retry
    assert.equal("https://backup.example.test", meta.base_url)
    assert.equal(2, #t.calls)
    assert.equal(t.calls[1].body, t.calls[2].body)
    assert.equal("K1", t.calls[2].headers["Idempotency-Key"])
    assert.truthy(F.check_signature(t.calls[2]))
    assert.are_not.equal(t.calls[1].headers.Authorization, t.calls[2].headers.Authorization)
    local warned = false
    for _, l in ipairs(lines) do if l:find("^warn wxpay failover") then warned = true end end
    assert.is_true(warned)

    advance(30)
    assert.truthy(c.request{ method = "GET", path = "/v3/y" })
    assert.equal(3, #t.calls)
    assert.equal("https://backup.example.test", t.calls[3].base)

    advance(31)
    assert.truthy(c.request{ method = "GET", path = "/v3/z" })
    assert.equal("https://api.example.test", t.calls[4].base) -- cool-down over: primary again
    assert.equal("https://backup.example.test", t.calls[5].base)
  end)

  it("goes back to the primary when the preferred backup cannot be reached", function()
    local primary_up = false
    local c, t = new_client(function(req)
      local is_primary = req.url:find("^https://api%.example%.test") ~= nil
      if is_primary == primary_up then return F.response(200, "{}") end
      return refused()
    end)
    assert.truthy(c.request{ method = "GET", path = "/v3/a" }) -- primary down: backup
    primary_up = true
    assert.truthy(c.request{ method = "GET", path = "/v3/b" }) -- backup down: primary
    assert.equal("https://backup.example.test", t.calls[3].base)
    assert.equal("https://api.example.test", t.calls[4].base)
    assert.truthy(c.request{ method = "GET", path = "/v3/c" })
    assert.equal("https://api.example.test", t.calls[5].base)
  end)

  it("does not fail over when backup_url = false or the connection was made", function()
    local c, t = new_client(refused, { backup_url = false, max_retries = 1 })
    local _, err = c.request{ method = "GET", path = "/v3/x" }
    assert.equal("network", err.kind)
    assert.is_false(err.connected)
    assert.equal(2, #t.calls)
    for _, rec in ipairs(t.calls) do assert.equal("https://api.example.test", rec.base) end

    local c2, t2 = new_client(function()
      return nil, { kind = "timeout", message = "read timeout", connected = true }
    end,
      { max_retries = 0 })
    local _, err2 = c2.request{ method = "GET", path = "/v3/x" }
    assert.equal("timeout", err2.kind)
    assert.equal(1, #t2.calls)
  end)

  it("uses api2.mch.weixin.qq.com as backup only for the default base_url", function()
    local c, t = new_client(refused, { base_url = F.NIL, backup_url = F.NIL, max_retries = 0 })
    c.request{ method = "GET", path = "/v3/x" }
    assert.equal("https://api.mch.weixin.qq.com", t.calls[1].base)
    assert.equal("https://api2.mch.weixin.qq.com", t.calls[2].base)
    local c2, t2 = new_client(refused, { backup_url = F.NIL, max_retries = 0 })
    c2.request{ method = "GET", path = "/v3/x" }
    assert.equal(1, #t2.calls)
  end)
end)

describe("deadline", function()
  it("clips each attempt's timeout and starts no attempt after the deadline", function()
    local now = 0
    local c, t = new_client(function()
      now = now + 1 -- every attempt takes a second
      return F.error_response(503, "SERVICE_UNAVAILABLE", "busy")
    end, { monotonic = function() return now end, sleep = function(d) now = now + d end,
           deadline = 3.5, timeout = 10, connect_timeout = 5, max_retries = 10,
           retry_base_delay = 0.5, retry_max_delay = 0.5 })
    local _, err = c.request{ method = "GET", path = "/v3/x" }
    assert.equal("api", err.kind)
    assert.is_true(err.deadline_exceeded)
    assert.truthy(now < 3.5 + 0.5, now)
    assert.equal(err.attempts, #t.calls)
    assert.truthy(#t.calls >= 2 and #t.calls <= 3, #t.calls)
    assert.equal(3.5, t.calls[1].timeout)
    assert.equal(3.5, t.calls[1].connect_timeout)
    for i = 2, #t.calls do
      assert.truthy(t.calls[i].timeout < t.calls[i - 1].timeout)
    end
  end)

  it("per-call deadline overrides the client's", function()
    local now = 0
    local c, t = new_client(function() now = now + 1; return F.error_response(500, "SYSTEM_ERROR", "x") end,
      { monotonic = function() return now end, sleep = function(d) now = now + d end, max_retries = 10 })
    c.request{ method = "GET", path = "/v3/x", deadline = 1.1 }
    assert.equal(1, #t.calls)
  end)
end)

describe("secret hygiene", function()
  local k = F.keys()
  local apiv3 = "0123456789abcdef0123456789ABCDEF"

  local function assert_clean(s)
    s = tostring(s)
    assert.is_nil(s:find(apiv3, 1, true), "APIv3 key leaked: " .. s)
    assert.is_nil(s:find("PRIVATE KEY", 1, true), "private key leaked: " .. s)
    for line in k.merchant_key:gmatch("[^\n]+") do
      if not line:find("-----", 1, true) then
        assert.is_nil(s:find(line, 1, true), "private key material leaked: " .. s)
      end
    end
    assert.is_nil(s:find("signature=\"", 1, true), "Authorization leaked: " .. s)
    assert.is_nil(s:find('nonce_str="', 1, true), "Authorization leaked: " .. s)
  end

  it("keeps keys, the APIv3 key and Authorization out of errors, logs and tostring", function()
    local logger, lines = F.logger()
    local n = 0
    local c, t = new_client(function(req)
      n = n + 1
      if n == 1 then -- a hostile transport echoing the request
        return nil, { kind = "network", connected = false,
          message = "failed: " .. req.headers.Authorization .. " " .. apiv3 .. " " .. k.merchant_key }
      elseif n == 2 then
        return F.error_response(500, "SYSTEM_ERROR", "boom")
      end
      local r = F.response(200, '{"a":1}'); r.body = "{}"; return r
    end, { logger = logger, backup_url = false })
    local strings = { tostring(c) }
    local _, err = c.request{ method = "POST", path = "/v3/x", body = { a = 1 }, idempotency_key = "K" }
    strings[#strings + 1] = tostring(err)
    strings[#strings + 1] = err.message
    local _, e2 = c.partnerships.build({ partner = { type = "APPID", appid = "wx1" },
      authorized_data = { business_type = "X" } })
    strings[#strings + 1] = tostring(e2)
    local _, e3 = wxpay.new(F.config(t, { apiv3_key = apiv3 .. "x" }))
    strings[#strings + 1] = tostring(e3)
    local _, e4 = wxpay.new(F.config(t, { private_key = k.merchant_key:sub(1, 200) }))
    strings[#strings + 1] = tostring(e4)
    for _, l in ipairs(lines) do strings[#strings + 1] = l end
    assert.truthy(#lines >= 3)
    assert.truthy(#t.calls >= 3)
    for _, s in ipairs(strings) do assert_clean(s) end
  end)
end)

describe("hostile input (issue 10)", function()
  local function refused(c, t, spec, field)
    local data, err = c.request(spec)
    assert.is_nil(data)
    assert.equal("invalid_argument", err.kind, tostring(err))
    assert.equal(field, err.field)
    assert.equal(0, #t.calls)
    return err
  end

  describe("dot segments and the target's length", function()
    local dotted = {
      "/v3/marketing/partnerships/../../h/ok", "/v3/../_sandbox/info", "/v3/./x", "/v3/x/..",
      "/v3/x/.", "/v3/%2e%2e/x", "/v3/%2E%2E/x", "/v3/.%2e/x", "/v3/%2E./x", "/v3/%2e/x",
      "/v3//../x",
    }
    for _, path in ipairs(dotted) do
      it("refuses " .. path .. " before sending", function()
        local c, t = new_client()
        local err = refused(c, t, { method = "GET", path = path }, "path")
        assert.truthy(err.message:find("segment", 1, true), err.message)
      end)
    end

    it("sends segments that only contain dots among other characters", function()
      local c, t = new_client()
      for _, path in ipairs({ "/v3/..foo/a.b", "/v3/x.../.y", "/v3/%2e%2e%2e", "/v3/a%2eb" }) do
        local data, err = c.request{ method = "GET", path = path }
        assert.is_nil(err)
        assert.truthy(data)
      end
      assert.equal(4, #t.calls)
    end)

    it("refuses a target (path plus query) over 8192 bytes, and sends one of 8192", function()
      local c, t = new_client()
      local err = refused(c, t, { method = "GET", path = "/v3/" .. string.rep("a", 8189) }, "path")
      assert.truthy(err.message:find("8192", 1, true), err.message)
      assert.is_false(err.retryable)
      refused(c, t, { method = "GET", path = "/v3/x", query = { q = string.rep("b", 8190) } }, "query")
      local path = "/v3/" .. string.rep("a", 8188)
      assert.equal(8192, #path)
      assert.truthy(c.request{ method = "GET", path = path })
      assert.equal(1, #t.calls)
    end)
  end)

  describe("202 accepted, not yet processed", function()
    local function sequence(list)
      return function(_, n) return list[math.min(n, #list)]() end
    end
    local function accepted() return F.response(202, "") end
    local function established() return F.response(200, '{"state":"ESTABLISHED"}') end
    local params = { partner = { type = "APPID", appid = "wx4e1916a585d1f4e9" },
      authorized_data = { business_type = "BUSIFAVOR_STOCK", stock_id = "2433405" } }

    it("repeats the request with the same Idempotency-Key, counted in attempts", function()
      local sleeps = {}
      local c, t = new_client(sequence({ accepted, accepted, established }),
        { sleep = function(s) sleeps[#sleeps + 1] = s end })
      local rel, err, meta = c.partnerships.build(params, { idempotency_key = "k202" })
      assert.is_nil(err)
      assert.equal("ESTABLISHED", rel.state)
      assert.equal(3, meta.attempts)
      assert.equal(3, #t.calls)
      for _, rec in ipairs(t.calls) do
        assert.equal("k202", rec.headers["Idempotency-Key"])
        assert.equal(t.calls[1].body, rec.body)
      end
      assert.equal(2, #sleeps)
      assert.truthy(sleeps[1] >= 0.1 and sleeps[1] <= 0.2, sleeps[1])
    end)

    it("returns a retryable api error with status 202 when the retries are spent, never data", function()
      local c, t = new_client(sequence({ accepted }), { max_retries = 2 })
      local rel, err = c.partnerships.build(params, { idempotency_key = "k202" })
      assert.is_nil(rel)
      assert.equal("api", err.kind)
      assert.equal(202, err.status)
      assert.is_true(err.retryable)
      assert.equal(3, err.attempts)
      assert.equal("k202", err.idempotency_key)
      assert.equal(3, #t.calls)
      assert.truthy(err.message:find("accepted", 1, true), err.message)
      assert.truthy(err.message:find("idempotency_key", 1, true), err.message)
    end)

    it("repeats a POST without a key through client.request too, as WeChat Pay asks", function()
      local c, t = new_client(sequence({ accepted, established }))
      local data, err, meta = c.request{ method = "POST", path = "/v3/x", body = { a = 1 } }
      assert.is_nil(err)
      assert.equal("ESTABLISHED", data.state)
      assert.equal(2, meta.attempts)
      assert.equal(2, #t.calls)
    end)
  end)

  describe("an echoed Authorization", function()
    -- Every string reachable from v (keys, values, tostring), recursively.
    local function strings_of(v, out, seen)
      out, seen = out or {}, seen or {}
      out[#out + 1] = tostring(v)
      if type(v) == "table" and not seen[v] then
        seen[v] = true
        for key, x in pairs(v) do strings_of(key, out, seen); strings_of(x, out, seen) end
      end
      return out
    end

    local function assert_no_auth(strings, auths)
      assert.truthy(#auths > 0)
      local text = table.concat(strings, "\0")
      for _, a in ipairs(auths) do
        assert.is_nil(text:find(a, 1, true), "Authorization leaked: " .. text)
        local sig = a:match('signature="([^"]+)"')
        assert.is_nil(text:find(sig, 1, true), "signature leaked: " .. text)
        assert.is_nil(text:find(sig:sub(1, 40), 1, true), "part of a signature leaked: " .. text)
      end
    end

    local echoes = {
      { "a JSON 500 message", function(a)
        return { status = 500, headers = {}, body = require("wxpay.client").encode_json{
          code = "SYSTEM_ERROR", message = "bad header " .. a, detail = { header = a, list = { a } } } }
      end },
      { "an HTML 500 with only the signature part", function(a)
        return { status = 500, headers = {}, body = "<html><body>" .. a:match('signature="[^"]+"') .. "</body></html>" }
      end },
      { "an HTML 400 with the bare value", function(a)
        return { status = 400, headers = {}, body = "<html><p>" .. a:gsub("^%S+ ", "") .. "</p></html>" }
      end },
      { "an HTML 400 with the base64 signature alone", function(a)
        return { status = 400, headers = {}, body = "<p>sig " .. a:match('signature="([^"]+)"') .. "</p>" }
      end },
      { "a cut-short JSON-escaped echo (signature=\\\"Ab...)", function(a)
        return { status = 500, headers = {}, body = '<pre>{\\"h\\": \\"x,signature=\\"'
          .. a:match('signature="([^"]+)"'):sub(1, 60) .. "</pre>" }
      end },
      { "a cut-short unquoted echo (signature=Ab...)", function(a)
        return { status = 400, headers = {}, body = "<p>signature=" .. a:match('signature="([^"]+)"'):sub(1, 60) }
      end },
    }
    for _, case in ipairs(echoes) do
      it("keeps it out of err.message, tostring(err), detail and every logged field: " .. case[1], function()
        local logged = {}
        local auths = {}
        local c = new_client(function(req)
          auths[#auths + 1] = req.headers.Authorization
          return case[2](req.headers.Authorization)
        end, { max_retries = 1, logger = function(level, message, fields)
          logged[#logged + 1] = { level, message, fields }
        end })
        local data, err = c.request{ method = "GET", path = "/v3/x" }
        assert.is_nil(data)
        assert.equal("api", err.kind)
        assert.truthy(#logged >= 2)
        assert_no_auth(strings_of({ err.message, tostring(err), err, logged }), auths)
      end)
    end

    it("redacts a URL-encoded echo of the signature", function()
      local function url_encoded(v)
        return (v:gsub("[+/=]", function(ch) return string.format("%%%02X", ch:byte()) end))
      end
      local sigs, logged = {}, {}
      local c = new_client(function(req)
        local sig = req.headers.Authorization:match('signature="([^"]+)"')
        sigs[#sigs + 1] = sig
        return { status = 400, headers = {}, body = "<a href='/retry?sig=" .. url_encoded(sig) .. "'>retry</a>" }
      end, { max_retries = 0, logger = function(_, message, fields) logged[#logged + 1] = { message, fields } end })
      local _, err = c.request{ method = "GET", path = "/v3/x" }
      assert.equal("api", err.kind)
      local text = table.concat(strings_of({ err.message, tostring(err), err, logged }), "\0")
      assert.equal(1, #sigs)
      assert.is_nil(text:find(url_encoded(sigs[1]), 1, true), text)
      assert.is_nil(text:find(url_encoded(sigs[1]):lower(), 1, true), text)
      assert.truthy(text:find("retry?sig=[REDACTED]", 1, true), text)
    end)

    it("redacts a transport error echoing it from every logged field", function()
      local logged = {}
      local c = new_client(function(req)
        return nil, { kind = "network", connected = false, message = "echo " .. req.headers.Authorization }
      end, { max_retries = 1, backup_url = false, logger = function(_, _, fields) logged[#logged + 1] = fields end })
      local _, err = c.request{ method = "GET", path = "/v3/x" }
      assert.equal("network", err.kind)
      for _, f in ipairs(logged) do
        for _, v in pairs(f) do
          if type(v) == "string" then assert.is_nil(v:find('signature="', 1, true), v) end
        end
      end
    end)
  end)

  describe("Idempotency-Key given twice", function()
    it("refuses a header that conflicts with idempotency_key, sending nothing", function()
      local c, t = new_client()
      refused(c, t, { method = "POST", path = "/v3/x", body = {}, idempotency_key = "B",
        headers = { ["Idempotency-Key"] = "A" } }, "headers.Idempotency-Key")
      refused(c, t, { method = "POST", path = "/v3/x", body = {}, idempotency_key = "B",
        headers = { ["idempotency-key"] = "A" } }, "headers.idempotency-key")
    end)

    it("refuses two case variants of one header name, naming the header and sending nothing", function()
      local c, t = new_client()
      local err = refused(c, t, { method = "POST", path = "/v3/x", body = {},
        headers = { ["Idempotency-Key"] = "a", ["idempotency-key"] = "b" } }, "headers.Idempotency-Key")
      assert.truthy(err.message:find("idempotency-key", 1, true), err.message)
      refused(c, t, { method = "GET", path = "/v3/x", headers = { ["X-Trace"] = "1", ["x-trace"] = "1" } },
        "headers.X-Trace")
    end)

    it("checks a key given as a header like the option", function()
      local c, t = new_client()
      refused(c, t, { method = "POST", path = "/v3/x", body = {}, headers = { ["Idempotency-Key"] = "a b" } },
        "headers.Idempotency-Key")
      refused(c, t, { method = "POST", path = "/v3/x", body = {},
        headers = { ["IDEMPOTENCY-KEY"] = string.rep("k", 129) } }, "headers.IDEMPOTENCY-KEY")
    end)

    it("reports a header key in meta and treats the request as keyed", function()
      local n = 0
      local c, t = new_client(function()
        n = n + 1
        if n == 1 then return nil, { kind = "network", message = "reset", connected = true } end
        return F.response(200, "{}")
      end)
      local data, err, meta = c.request{ method = "POST", path = "/v3/x", body = {},
        headers = { ["idempotency-key"] = "A" } }
      assert.is_nil(err)
      assert.truthy(data)
      assert.equal("A", meta.idempotency_key)
      assert.equal(2, meta.attempts)
      for _, rec in ipairs(t.calls) do
        local sent = {}
        for name, v in pairs(rec.headers) do
          if name:lower() == "idempotency-key" then sent[#sent + 1] = v end
        end
        assert.same({ "A" }, sent)
      end
      -- the same key twice is no conflict
      assert.truthy(c.request{ method = "POST", path = "/v3/x", body = {}, idempotency_key = "A",
        headers = { ["Idempotency-Key"] = "A" } })
    end)
  end)

  describe("time limits above a day", function()
    for _, name in ipairs({ "timeout", "connect_timeout", "deadline", "failover_cooldown", "clock_skew",
                            "retry_base_delay", "retry_max_delay", "retry_after_max" }) do
      it("refuses " .. name .. " over 86400 s in the config and accepts 86400", function()
        for _, v in ipairs({ 86401, 1e300 }) do
          local t = F.transport(ok_handler())
          local c, err = wxpay.new(F.config(t, { [name] = v }))
          assert.is_nil(c)
          assert.equal("config", err.kind)
          assert.equal(name, err.field)
          assert.truthy(err.message:find("86400", 1, true), err.message)
        end
        assert.truthy(wxpay.new(F.config(F.transport(ok_handler()), { [name] = 86400 })))
      end)
    end

    it("refuses per-call timeouts over 86400 s as invalid_argument", function()
      local c, t = new_client()
      for _, name in ipairs({ "timeout", "connect_timeout", "deadline" }) do
        refused(c, t, { method = "GET", path = "/v3/x", [name] = 86401 }, name)
        refused(c, t, { method = "GET", path = "/v3/x", [name] = 1e300 }, name)
      end
      assert.truthy(c.request{ method = "GET", path = "/v3/x", timeout = 86400 })
    end)

    it("reports a fractional clock_skew without raising", function()
      local c = new_client(function()
        return F.response(200, "{}", { timestamp = core.time() - 100 })
      end, { clock_skew = 10.5 })
      local data, err = c.request{ method = "GET", path = "/v3/x" }
      assert.is_nil(data)
      assert.equal("timestamp", err.check)
    end)
  end)

  it("refuses the framing headers Transfer-Encoding and Connection", function()
    local c, t = new_client()
    refused(c, t, { method = "POST", path = "/v3/x", body = {}, headers = { ["Transfer-Encoding"] = "chunked" } },
      "headers.Transfer-Encoding")
    refused(c, t, { method = "GET", path = "/v3/x", headers = { connection = "close" } }, "headers.connection")
  end)
end)

describe("usability (issue 21)", function()
  it("a mistyped configuration key gets a did-you-mean", function()
    for typo, meant in pairs{ mch_id = "mchid", apiv3key = "apiv3_key", timout = "timeout",
                              ["Base-URL"] = "base_url", privat_key_file = "private_key_file" } do
      local _, err = wxpay.new(F.config(F.transport(ok_handler()), { [typo] = "x" }))
      assert.equal("config", err.kind, typo)
      assert.equal(typo, err.field)
      assert.truthy(tostring(err):find("did you mean " .. meant .. "?", 1, true), tostring(err))
    end
    local _, err = wxpay.new(F.config(F.transport(ok_handler()), { zzzzzz = 1 }))
    assert.falsy(tostring(err):find("did you mean", 1, true), tostring(err))
  end)

  it("decodes integral JSON numbers as integers where Lua has them", function()
    local c = new_client(ok_handler('{"total_count":66,"max_coupons":2000,"rate":1.5,"big":1e300,"n":[3,-0]}'))
    local data = assert(c.request{ method = "GET", path = "/v3/x" })
    assert.equal("66", tostring(data.total_count))
    assert.equal("2000", tostring(data.max_coupons))
    assert.equal(1.5, data.rate)
    assert.equal(1e300, data.big)
    if math.type then
      assert.equal("integer", math.type(data.total_count))
      assert.equal("integer", math.type(data.n[1]))
      assert.equal("float", math.type(data.rate))
    end
  end)

  it("never makes an exact-looking integer of a number beyond 2^53 (its digits were lost on the way in)", function()
    -- lua-cjson reads numbers as doubles: 9007199254740993 arrives as ...992. Ids come as
    -- strings and stay strings, digit for digit.
    local c = new_client(ok_handler('{"big":9007199254740993,"edge":9007199254740992,'
      .. '"id":"9007199254740993","neg":-9007199254740993,"ok":9007199254740991}'))
    local data = assert(c.request{ method = "GET", path = "/v3/x" })
    assert.equal("9007199254740993", data.id)
    if math.type then
      assert.equal("float", math.type(data.big))
      assert.equal("float", math.type(data.neg))
      assert.equal("float", math.type(data.edge)) -- 2^53: also what ...993 becomes
      assert.equal("integer", math.type(data.ok))
      assert.equal(9007199254740991, data.ok)
    end
  end)

  it("encodes strings byte for byte: short escapes, \\u00xx for the other control bytes, the rest as is", function()
    local encode = require("wxpay.client").encode_json
    assert.equal('{"s":"a\\"b\\\\c\\b\\f\\n\\r\\t"}', encode{ s = 'a"b\\c\b\f\n\r\t' })
    assert.equal('{"s":"\\u0000\\u0001\\u001f\\u007f /~"}', encode{ s = "\0\1\31\127 /~" })
    local utf8 = "\228\184\173\230\150\135 caf\195\169" -- 中文 café
    assert.equal('{"s":"' .. utf8 .. '"}', encode{ s = utf8 })
    -- Every byte below 128 round-trips through a JSON decoder.
    local all = {}
    for b = 0, 127 do all[#all + 1] = string.char(b) end
    all = table.concat(all)
    assert.equal(all, require("cjson").decode(encode{ s = all }).s)
  end)
end)
