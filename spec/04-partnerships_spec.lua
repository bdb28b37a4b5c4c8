-- Unit specs for client.partnerships over a fake transport: input validation (nothing is
-- sent for a bad input), the canonical bytes of the official vectors (docs/protocol.md#test-vectors), Idempotency-Key
-- handling and the lazy list iterator.

local F = require("spec.support.fake")
local core = require("wxpay.core")
local wxpay = require("wxpay")
local cjson = require("cjson").new()

local function new_client(handler, overrides)
  local t = F.transport(handler or function() return F.response(200, '{"state":"ESTABLISHED"}') end)
  local c = assert(wxpay.new(F.config(t, overrides)))
  return c, t
end

local function appid_params()
  return { partner = { type = "APPID", appid = "wx4e1916a585d1f4e9" },
           authorized_data = { business_type = "BUSIFAVOR_STOCK", stock_id = "2433405" } }
end

-- params built from a template with one change; F.NIL removes a field.
local function with(changes)
  local p = appid_params()
  for path, v in pairs(changes) do
    local obj, key = path:match("^(.-)%.(.+)$")
    local target = p
    if obj then
      if type(p[obj]) ~= "table" then p[obj] = {} end
      target = p[obj]
    else
      key = path
    end
    if v == F.NIL then target[key] = nil else target[key] = v end
  end
  return p
end

local long = function(n, ch) return string.rep(ch or "a", n) end
local EMOJI = "\240\159\152\128"

describe("partnerships input validation", function()
  -- { label, function, params, opts, field }
  local cases = {
    { "missing partner", "build", with{ partner = F.NIL }, nil, "partner" },
    { "partner not a table", "build", with{ partner = "APPID" }, nil, "partner" },
    { "missing partner.type", "build", with{ ["partner.type"] = F.NIL }, nil, "partner.type" },
    { "unknown partner.type", "build", with{ ["partner.type"] = "OPENID" }, nil, "partner.type" },
    { "lower-case partner.type", "build", with{ ["partner.type"] = "appid" }, nil, "partner.type" },
    { "partner.type a number", "build", with{ ["partner.type"] = 1 }, nil, "partner.type" },
    { "APPID without appid", "build", with{ ["partner.appid"] = F.NIL }, nil, "partner.appid" },
    { "empty appid", "build", with{ ["partner.appid"] = "" }, nil, "partner.appid" },
    { "appid of 33", "build", with{ ["partner.appid"] = long(33) }, nil, "partner.appid" },
    { "appid a number", "build", with{ ["partner.appid"] = 123 }, nil, "partner.appid" },
    { "appid with emoji", "build", with{ ["partner.appid"] = "wx" .. EMOJI }, nil, "partner.appid" },
    { "appid invalid UTF-8", "build", with{ ["partner.appid"] = "wx\192\128" }, nil, "partner.appid" },
    { "appid with surrogate", "build", with{ ["partner.appid"] = "wx\237\160\128" }, nil, "partner.appid" },
    { "MERCHANT without merchant_id", "build",
      with{ ["partner.type"] = "MERCHANT", ["partner.appid"] = F.NIL }, nil, "partner.merchant_id" },
    { "merchant_id of 7", "build", with{ ["partner.type"] = "MERCHANT", ["partner.merchant_id"] = "1234567" },
      nil, "partner.merchant_id" },
    { "merchant_id of 16", "build", with{ ["partner.type"] = "MERCHANT", ["partner.merchant_id"] = long(16, "1") },
      nil, "partner.merchant_id" },
    { "merchant_id with LF", "build", with{ ["partner.type"] = "MERCHANT", ["partner.merchant_id"] = "1234567\n" },
      nil, "partner.merchant_id" },
    { "merchant_id a number", "build", with{ ["partner.type"] = "MERCHANT", ["partner.merchant_id"] = 12345678 },
      nil, "partner.merchant_id" },
    { "unknown partner field", "build", with{ ["partner.openid"] = "o" }, nil, "partner.openid" },
    { "missing authorized_data", "build", with{ authorized_data = F.NIL }, nil, "authorized_data" },
    { "authorized_data not a table", "build", with{ authorized_data = "FAVOR_STOCK" }, nil, "authorized_data" },
    { "missing business_type", "build", with{ ["authorized_data.business_type"] = F.NIL }, nil,
      "authorized_data.business_type" },
    { "unknown business_type", "build", with{ ["authorized_data.business_type"] = "COUPON" }, nil,
      "authorized_data.business_type" },
    { "missing stock_id", "build", with{ ["authorized_data.stock_id"] = F.NIL }, nil, "authorized_data.stock_id" },
    { "stock_id a number", "build", with{ ["authorized_data.stock_id"] = 2433405 }, nil, "authorized_data.stock_id" },
    { "stock_id of 21", "build", with{ ["authorized_data.stock_id"] = long(21, "1") }, nil,
      "authorized_data.stock_id" },
    { "empty stock_id", "build", with{ ["authorized_data.stock_id"] = "" }, nil, "authorized_data.stock_id" },
    { "stock_id with emoji", "build", with{ ["authorized_data.stock_id"] = EMOJI }, nil, "authorized_data.stock_id" },
    { "unknown authorized_data field", "build", with{ ["authorized_data.stockid"] = "1" }, nil,
      "authorized_data.stockid" },
    { "scenarios not an array", "build", with{ ["authorized_data.scenarios"] = "COUPON_SEND" }, nil,
      "authorized_data.scenarios" },
    { "empty scenarios", "build", with{ ["authorized_data.scenarios"] = {} }, nil, "authorized_data.scenarios" },
    { "empty scenario", "build", with{ ["authorized_data.scenarios"] = { "" } }, nil,
      "authorized_data.scenarios[1]" },
    { "scenario a number", "build", with{ ["authorized_data.scenarios"] = { "COUPON_SEND", 1 } }, nil,
      "authorized_data.scenarios[2]" },
    { "scenario with CR", "build", with{ ["authorized_data.scenarios"] = { "COUPON_SEND\r" } }, nil,
      "authorized_data.scenarios[1]" },
    { "duplicate scenario", "build", with{ ["authorized_data.scenarios"] = { "COUPON_SEND", "COUPON_SEND" } }, nil,
      "authorized_data.scenarios[2]" },
    { "FAVOR_STOCK to a MERCHANT", "build", with{ ["partner.type"] = "MERCHANT", ["partner.appid"] = F.NIL,
      ["partner.merchant_id"] = "12345678", ["authorized_data.business_type"] = "FAVOR_STOCK" }, nil, "partner.type" },
    { "unknown top-level field", "build", with{ limit = 5 }, nil, "limit" },
    { "idempotency key with a space", "build", appid_params(), { idempotency_key = "a b" }, "opts.idempotency_key" },
    { "empty idempotency key", "build", appid_params(), { idempotency_key = "" }, "opts.idempotency_key" },
    { "idempotency key of 49", "build", appid_params(), { idempotency_key = long(49) }, "opts.idempotency_key" },
    { "idempotency key non-ASCII", "build", appid_params(), { idempotency_key = "键" }, "opts.idempotency_key" },
    { "idempotency key a number", "build", appid_params(), { idempotency_key = 42 }, "opts.idempotency_key" },
    { "unknown option", "build", appid_params(), { idempotency = "k" }, "opts.idempotency" },
    { "bad timeout option", "build", appid_params(), { timeout = -1 }, "opts.timeout" },
    { "terminate without stock_id", "terminate", with{ ["authorized_data.stock_id"] = F.NIL }, nil,
      "authorized_data.stock_id" },
    { "terminate bad key", "terminate", appid_params(), { idempotency_key = "a/b" }, "opts.idempotency_key" },
    { "terminate FAVOR_STOCK to MERCHANT", "terminate", with{ ["partner.type"] = "MERCHANT", ["partner.appid"] = F.NIL,
      ["partner.merchant_id"] = "12345678", ["authorized_data.business_type"] = "FAVOR_STOCK" }, nil, "partner.type" },
    { "page without authorized_data", "page", { partner = { type = "APPID" } }, nil, "authorized_data" },
    { "page limit 0", "page", with{ limit = 0 }, nil, "limit" },
    { "page limit 51", "page", with{ limit = 51 }, nil, "limit" },
    { "page limit fractional", "page", with{ limit = 1.5 }, nil, "limit" },
    { "page limit a string", "page", with{ limit = "20" }, nil, "limit" },
    { "page offset -1", "page", with{ offset = -1 }, nil, "offset" },
    { "page offset fractional", "page", with{ offset = 0.5 }, nil, "offset" },
    { "page offset a string", "page", with{ offset = "0" }, nil, "offset" },
    { "page partner filter without type", "page", with{ ["partner.type"] = F.NIL }, nil, "partner.type" },
    { "page partner filter bad appid", "page", with{ ["partner.appid"] = long(40) }, nil, "partner.appid" },
    { "page scenarios filter", "page", with{ ["authorized_data.scenarios"] = { "COUPON_SEND" } }, nil,
      "authorized_data.scenarios" },
    { "page unknown option", "page", appid_params(), { idempotency_key = "k1" }, "opts.idempotency_key" },
    { "page bad timeout option", "page", appid_params(), { timeout = 0 }, "opts.timeout" },
    { "page bad max_retries option", "page", appid_params(), { max_retries = -1 }, "opts.max_retries" },
    { "page headers not a table", "page", appid_params(), { headers = "en" }, "opts.headers" },
    { "page reserved header", "page", appid_params(), { headers = { Authorization = "x" } },
      "opts.headers.Authorization" },
    { "page header with CR LF", "page", appid_params(), { headers = { ["Accept-Language"] = "en\r\nX: 1" } },
      "opts.headers.Accept-Language" },
    { "list unknown option", "list", appid_params(), { verify = false }, "opts.verify" },
    { "list bad deadline option", "list", appid_params(), { deadline = -1 }, "opts.deadline" },
    { "page unknown field", "page", with{ offset_mode = "item" }, nil, "offset_mode" },
    { "list limit 51", "list", with{ limit = 51 }, nil, "limit" },
    { "list offset -1", "list", with{ offset = -1 }, nil, "offset" },
    { "list bad offset_mode", "list", with{ offset_mode = "pages" }, nil, "offset_mode" },
    { "list without business_type", "list", with{ ["authorized_data.business_type"] = F.NIL }, nil,
      "authorized_data.business_type" },
    { "list unknown field", "list", with{ page = 2 }, nil, "page" },
    -- numbers out of the documented range (0 <= offset <= 2^31 - 1, 1 <= limit <= 50)
    { "page offset math.huge", "page", with{ offset = math.huge }, nil, "offset" },
    { "page offset 1e300", "page", with{ offset = 1e300 }, nil, "offset" },
    { "page offset 2^63", "page", with{ offset = 2 ^ 63 }, nil, "offset" },
    { "page offset 2^31", "page", with{ offset = 2 ^ 31 }, nil, "offset" },
    { "page offset NaN", "page", with{ offset = 0 / 0 }, nil, "offset" },
    { "page limit math.huge", "page", with{ limit = math.huge }, nil, "limit" },
    { "page limit -math.huge", "page", with{ limit = -math.huge }, nil, "limit" },
    { "list offset math.huge", "list", with{ offset = math.huge }, nil, "offset" },
    { "list offset 2^63", "list", with{ offset = 2 ^ 63 }, nil, "offset" },
    { "opts.deadline over a day", "build", appid_params(), { deadline = 86401 }, "opts.deadline" },
    { "opts.timeout 1e300", "terminate", appid_params(), { timeout = 1e300 }, "opts.timeout" },
    -- control characters in identifiers
    { "appid with CR LF", "build", with{ ["partner.appid"] = "wx1\r\nX-A: 1" }, nil, "partner.appid" },
    { "appid with NUL", "build", with{ ["partner.appid"] = "wx1\0" }, nil, "partner.appid" },
    { "appid with DEL", "build", with{ ["partner.appid"] = "wx1\127" }, nil, "partner.appid" },
    { "stock_id with LF", "build", with{ ["authorized_data.stock_id"] = "2433405\n" }, nil,
      "authorized_data.stock_id" },
    { "stock_id with TAB", "terminate", with{ ["authorized_data.stock_id"] = "24\t33" }, nil,
      "authorized_data.stock_id" },
    { "page appid filter with ESC", "page", with{ ["partner.appid"] = "wx\27" }, nil, "partner.appid" },
    { "page stock_id filter with CR", "page", with{ ["authorized_data.stock_id"] = "1\r" }, nil,
      "authorized_data.stock_id" },
    -- Unicode's C1 controls (U+0080-U+009F) in UTF-8: NEL and CSI
    { "appid with U+0085 (NEL)", "build", with{ ["partner.appid"] = "wx1\194\133" }, nil, "partner.appid" },
    { "stock_id with U+009B (CSI)", "terminate", with{ ["authorized_data.stock_id"] = "24\194\15533" }, nil,
      "authorized_data.stock_id" },
    { "page appid filter with U+0080", "page", with{ ["partner.appid"] = "\194\128wx" }, nil, "partner.appid" },
  }

  for _, case in ipairs(cases) do
    local label, fname, params, opts, field = case[1], case[2], case[3], case[4], case[5]
    it(fname .. ": refuses " .. label .. " without sending", function()
      local c, t = new_client()
      local err
      if fname == "list" then
        local ok, raised = pcall(c.partnerships.list, params, opts)
        assert.is_false(ok)
        err = raised
      else
        local res
        res, err = c.partnerships[fname](params, opts)
        assert.is_nil(res)
      end
      assert.equal("invalid_argument", err.kind)
      assert.equal("INVALID_ARGUMENT", err.code)
      assert.equal(field, err.field, tostring(err))
      assert.is_false(err.retryable)
      assert.truthy(tostring(err):find(field, 1, true))
      assert.equal(0, #t.calls)
    end)
  end

  it("raises for arguments of the wrong type", function()
    local c, t = new_client()
    for _, fname in ipairs({ "build", "terminate", "page", "list" }) do
      assert.has_error(function() c.partnerships[fname]("params") end)
      assert.has_error(function() c.partnerships[fname]() end)
    end
    assert.has_error(function() c.partnerships.build(appid_params(), "key") end)
    assert.equal(0, #t.calls)
  end)

  it("accepts the boundaries", function()
    local c, t = new_client()
    local ok_cases = {
      with{ ["partner.appid"] = long(32) },
      with{ ["partner.appid"] = "中文应用" }, -- 3-byte characters are fine
      with{ ["authorized_data.stock_id"] = long(20, "9") },
      { partner = { type = "MERCHANT", merchant_id = "12345678" },
        authorized_data = { business_type = "BUSIFAVOR_STOCK", stock_id = "1" } },
      { partner = { type = "MERCHANT", merchant_id = long(15, "1") },
        authorized_data = { business_type = "BUSIFAVOR_STOCK", stock_id = "1" } },
      -- the docs give merchant_id a length only, and document no scenarios values
      { partner = { type = "MERCHANT", merchant_id = "ABC-1234" },
        authorized_data = { business_type = "BUSIFAVOR_STOCK", stock_id = "1" } },
      with{ ["authorized_data.scenarios"] = { "COUPON_SEND", "NEW_SCENARIO" } },
    }
    for i, p in ipairs(ok_cases) do
      local res, err = c.partnerships.build(p, { idempotency_key = "Az09|_*-" .. i })
      assert.is_nil(err)
      assert.truthy(res)
    end
    assert.equal(#ok_cases, #t.calls)
    local res, err = c.partnerships.build(appid_params(), { idempotency_key = long(48, "Z") })
    assert.is_nil(err)
    assert.truthy(res)
  end)
end)

describe("partnerships requests", function()
  local FIXED_TS, FIXED_NONCE = "1554208460", "593BEC0C930BF1AFEB40B4A08C8FB242"

  it("build sends the test-vector body and signs it", function()
    local c, t = new_client()
    local p = appid_params()
    local rel, err, meta = c.partnerships.build(p)
    assert.is_nil(err)
    assert.equal("ESTABLISHED", rel.state)
    local rec = t.calls[1]
    assert.equal("POST", rec.method)
    assert.equal("/v3/marketing/partnerships/build", rec.target)
    assert.equal('{"partner":{"type":"APPID","appid":"wx4e1916a585d1f4e9"},' ..
      '"authorized_data":{"business_type":"BUSIFAVOR_STOCK","stock_id":"2433405"}}', rec.body)
    assert.truthy(F.check_signature(rec))
    -- the same bytes under the vector's fixed timestamp and nonce give the vector's digest
    local msg = table.concat({ rec.method, rec.target, FIXED_TS, FIXED_NONCE, rec.body }, "\n") .. "\n"
    assert.equal(215, #msg)
    assert.equal("96a9b3687c3dac59df940275e599aa3d79b1a90ccc320d05fbcec6defa201cfe", core.sha256_hex(msg))
    -- a generated key: 32 alphanumerics, sent and returned
    assert.matches("^[A-Za-z0-9]+$", meta.idempotency_key)
    assert.equal(32, #meta.idempotency_key)
    assert.equal(meta.idempotency_key, rec.headers["Idempotency-Key"])
    assert.equal("application/json", rec.headers["Content-Type"])
    -- params are not modified
    assert.same(appid_params(), p)
  end)

  it("page builds the test-vector canonical query", function()
    local c, t = new_client(function() return F.response(200, '{"data":[],"limit":20,"offset":0,"total_count":0}') end)
    local page, err = c.partnerships.page{ partner = { type = "APPID", appid = "wx4e1916a585d1f4e9" },
      authorized_data = { business_type = "BUSIFAVOR_STOCK", stock_id = "2433405" }, limit = 20, offset = 0 }
    assert.is_nil(err)
    assert.same({}, page.data)
    local rec = t.calls[1]
    assert.equal("/v3/marketing/partnerships?partner=%7B%22type%22%3A%22APPID%22%2C%22appid%22%3A%22" ..
      "wx4e1916a585d1f4e9%22%7D&authorized_data=%7B%22business_type%22%3A%22BUSIFAVOR_STOCK%22%2C" ..
      "%22stock_id%22%3A%222433405%22%7D&limit=20&offset=0", rec.target)
    assert.is_nil(rec.body)
    assert.is_nil(rec.headers["Content-Type"])
    assert.is_nil(rec.headers["Idempotency-Key"])
    assert.truthy(F.check_signature(rec))
    local msg = table.concat({ "GET", rec.target, FIXED_TS, FIXED_NONCE, "" }, "\n") .. "\n"
    assert.equal(273, #msg)
    assert.equal("fc69260d840f671829020c3204611e80aa6d2ba815cccb96144e923ad96d58a6", core.sha256_hex(msg))
  end)

  it("page omits absent filters, limit and offset", function()
    local c, t = new_client(function() return F.response(200, '{"limit":20,"offset":0}') end)
    local page = assert(c.partnerships.page{ authorized_data = { business_type = "FAVOR_STOCK" } })
    assert.equal("/v3/marketing/partnerships?authorized_data=%7B%22business_type%22%3A%22FAVOR_STOCK%22%7D",
      t.calls[1].target)
    assert.same({}, page.data)
    assert.equal(20, page.limit)
    assert.is_nil(page.total_count)
  end)

  it("page turns any 404 into an empty page and derives a missing state", function()
    for _, code in ipairs({ "RESOURCE_NOT_EXISTS", "NOT_FOUND", "PARAM_ERROR" }) do
      local c = new_client(function() return F.error_response(404, code, "无数据") end)
      local page, err, meta = c.partnerships.page(with{ limit = 5, offset = 2 })
      assert.is_nil(err)
      assert.same({}, page.data)
      assert.equal(0, page.total_count)
      assert.equal(5, page.limit)
      assert.equal(2, page.offset)
      assert.equal(404, meta.status)
    end
    -- other errors stay errors
    local c0 = new_client(function() return F.error_response(400, "PARAM_ERROR", "bad") end)
    local p0, e0 = c0.partnerships.page(with{ limit = 5 })
    assert.is_nil(p0)
    assert.equal(400, e0.status)

    local body = '{"data":[{"partner":{"type":"APPID","appid":"a"},"build_time":"t"},' ..
      '{"partner":{"type":"APPID","appid":"b"},"terminate_time":"t2"},{"state":"ESTABLISHED"}],' ..
      '"limit":5,"offset":0,"total_count":3}'
    local c2 = new_client(function() return F.response(200, body) end)
    local page2 = assert(c2.partnerships.page(with{ limit = 5 }))
    assert.equal(3, #page2.data)
    assert.equal(3, page2.total_count)
    assert.equal("ESTABLISHED", page2.data[1].state)
    assert.is_true(page2.data[1].state_derived)
    assert.equal("TERMINATED", page2.data[2].state)
    assert.is_nil(page2.data[3].state_derived)
  end)

  it("sends merchant_id for MERCHANT, drops the id that does not match type", function()
    local c, t = new_client()
    assert.truthy(c.partnerships.build({ partner = { type = "MERCHANT", merchant_id = "1900000109", appid = "wx" },
      authorized_data = { business_type = "BUSIFAVOR_STOCK", stock_id = "1" } }))
    assert.equal('{"partner":{"type":"MERCHANT","merchant_id":"1900000109"},' ..
      '"authorized_data":{"business_type":"BUSIFAVOR_STOCK","stock_id":"1"}}', t.calls[1].body)
    assert.truthy(c.partnerships.build({ partner = { type = "APPID", appid = "wx1", merchant_id = "bad" },
      authorized_data = { business_type = "FAVOR_STOCK", stock_id = "2" } }))
    assert.equal('{"partner":{"type":"APPID","appid":"wx1"},' ..
      '"authorized_data":{"business_type":"FAVOR_STOCK","stock_id":"2"}}', t.calls[2].body)
  end)

  it("lists FAVOR_STOCK for a MERCHANT partner (only granting it is refused)", function()
    local c, t = new_client(function() return F.response(200, '{"data":[],"limit":50,"offset":0}') end)
    local page, err = c.partnerships.page{ partner = { type = "MERCHANT", merchant_id = "1900000109" },
      authorized_data = { business_type = "FAVOR_STOCK", stock_id = "1" } }
    assert.is_nil(err)
    assert.same({}, page.data)
    assert.equal(1, #t.calls)
    local n = 0
    local q = { partner = { type = "MERCHANT" }, authorized_data = { business_type = "FAVOR_STOCK" } }
    for _ in c.partnerships.list(q) do
      n = n + 1
    end
    assert.equal(0, n)
    assert.equal(2, #t.calls)
  end)

  it("page and list take per-call options: timeout, retries, extra headers", function()
    local calls = 0
    local c, t = new_client(function()
      calls = calls + 1
      if calls == 1 then return F.error_response(500, "SYSTEM_ERROR", "boom") end
      return F.response(200, '{"data":[],"limit":50,"offset":0}')
    end, { max_retries = 0 })
    local page, err, meta = c.partnerships.page(appid_params(), { timeout = 3, connect_timeout = 2,
      max_retries = 1, deadline = 60, headers = { ["Accept-Language"] = "en" } })
    assert.is_nil(err)
    assert.same({}, page.data)
    assert.equal(2, meta.attempts)
    assert.equal(3, t.calls[1].timeout)
    assert.equal(2, t.calls[1].connect_timeout)
    assert.equal("en", t.calls[2].headers["Accept-Language"])
    assert.truthy(F.check_signature(t.calls[2]))
    calls = 0
    for _ in c.partnerships.list(appid_params(), { timeout = 4, max_retries = 1,
      headers = { ["Accept-Language"] = "zh-CN" } }) do end
    assert.equal(4, #t.calls)
    assert.equal(4, t.calls[3].timeout)
    assert.equal("zh-CN", t.calls[4].headers["Accept-Language"])
  end)

  it("passes scenarios through only when given", function()
    local c, t = new_client()
    assert.truthy(c.partnerships.build(with{ ["authorized_data.scenarios"] = { "COUPON_SEND", "STOCK_QUERY" } }))
    assert.equal('{"partner":{"type":"APPID","appid":"wx4e1916a585d1f4e9"},"authorized_data":' ..
      '{"business_type":"BUSIFAVOR_STOCK","stock_id":"2433405","scenarios":["COUPON_SEND","STOCK_QUERY"]}}',
      t.calls[1].body)
    assert.truthy(c.partnerships.build(appid_params()))
    assert.is_nil(t.calls[2].body:find("scenarios", 1, true))
  end)

  it("terminate posts to /terminate with the caller's key, kept in meta and errors", function()
    local c, t = new_client(function(_, n)
      if n == 1 then return F.response(200, '{"terminate_time":"2015-05-20T13:29:35.120+08:00"}') end
      return F.error_response(500, "SYSTEM_ERROR", "x")
    end, { max_retries = 1 })
    local res, err, meta = c.partnerships.terminate(appid_params(), { idempotency_key = "end-wx4e1916a585d1f4e9" })
    assert.is_nil(err)
    assert.equal("2015-05-20T13:29:35.120+08:00", res.terminate_time)
    assert.equal("end-wx4e1916a585d1f4e9", meta.idempotency_key)
    assert.equal("/v3/marketing/partnerships/terminate", t.calls[1].target)
    assert.equal("end-wx4e1916a585d1f4e9", t.calls[1].headers["Idempotency-Key"])
    local _, err2 = c.partnerships.terminate(appid_params())
    assert.equal("api", err2.kind)
    assert.equal(2, err2.attempts)
    assert.equal(32, #err2.idempotency_key)
    assert.equal(err2.idempotency_key, t.calls[2].headers["Idempotency-Key"])
    assert.equal(err2.idempotency_key, t.calls[3].headers["Idempotency-Key"])
    assert.truthy(tostring(err2):find(err2.idempotency_key, 1, true))
  end)

  it("generates a different key per call", function()
    local c = new_client()
    local _, _, m1 = c.partnerships.build(appid_params())
    local _, _, m2 = c.partnerships.build(appid_params())
    assert.are_not.equal(m1.idempotency_key, m2.idempotency_key)
  end)
end)

describe("partnerships.list", function()
  -- A fake list endpoint over n items. opts: mode ("page"|"item"), empty ("404"|"empty"),
  -- total (false: never send total_count), short (serve at most this many per page),
  -- ignore_offset (always answer the first page), fail_at (call number answering 500).
  local function server(n, opts)
    opts = opts or {}
    local mode = opts.mode or "page"
    return function(_, call, rec)
      if opts.fail_at == call then return F.error_response(500, "SYSTEM_ERROR", "boom") end
      local q = {}
      for k, v in rec.target:gmatch("([%w_]+)=([^&]*)") do q[k] = v end
      local limit, offset = tonumber(q.limit) or 20, tonumber(q.offset) or 0
      if opts.ignore_offset then offset = 0 end
      local per = math.min(limit, opts.short or limit)
      local first = mode == "page" and offset * limit or offset
      if n == 0 and opts.empty ~= "empty" then return F.error_response(404, "RESOURCE_NOT_EXISTS", "none") end
      local data = {}
      for i = first + 1, math.min(first + per, n) do
        data[#data + 1] = { partner = { type = "APPID", appid = "wx" .. i },
          authorized_data = { business_type = "BUSIFAVOR_STOCK", stock_id = "1" },
          build_time = "t", create_time = "t", update_time = "t" }
      end
      local body = { limit = limit, offset = offset }
      if #data > 0 then body.data = data end
      if offset == 0 and opts.total ~= false then body.total_count = n end
      return F.response(200, cjson.encode(body))
    end
  end

  local function collect(c, params)
    local got = {}
    for rel in c.partnerships.list(params) do
      got[#got + 1] = rel.partner.appid
      assert(#got <= 10000, "iterator does not stop")
    end
    return got
  end

  local function offsets(t)
    local out = {}
    for _, rec in ipairs(t.calls) do out[#out + 1] = tonumber(rec.target:match("offset=(%d+)")) end
    return out
  end

  for _, mode in ipairs({ "page", "item" }) do
    for _, case in ipairs({ { 0, 1 }, { 1, 1 }, { 50, 1 }, { 51, 2 } }) do
      local n, calls = case[1], case[2]
      it(string.format("yields %d items in %s mode with %d request(s)", n, mode, calls), function()
        local c, t = new_client(server(n, { mode = mode }))
        local got = collect(c, { authorized_data = { business_type = "BUSIFAVOR_STOCK" },
          partner = { type = "APPID" }, offset_mode = mode })
        assert.equal(n, #got)
        for i = 1, n do assert.equal("wx" .. i, got[i]) end
        assert.equal(calls, #t.calls)
        assert.truthy(t.calls[1].target:find("&limit=50&offset=0", 1, true))
        if calls == 2 then assert.same(mode == "page" and { 0, 1 } or { 0, 50 }, offsets(t)) end
      end)
    end

    it("pages by " .. mode .. " without total_count until a short or empty page", function()
      local c, t = new_client(server(100, { mode = mode, total = false }))
      local got = collect(c, { authorized_data = { business_type = "BUSIFAVOR_STOCK" }, offset_mode = mode })
      assert.equal(100, #got)
      assert.equal("wx100", got[100])
      assert.equal(3, #t.calls) -- the third page is empty
    end)
  end

  it("uses the client's offset_mode unless the call says otherwise", function()
    local c, t = new_client(server(120, { mode = "item" }), { offset_mode = "item" })
    local got = collect(c, { authorized_data = { business_type = "BUSIFAVOR_STOCK" } })
    assert.equal(120, #got)
    assert.same({ 0, 50, 100 }, offsets(t))
    local c2, t2 = new_client(server(120, { mode = "page" }), { offset_mode = "item" })
    assert.equal(120, #collect(c2, { authorized_data = { business_type = "BUSIFAVOR_STOCK" }, offset_mode = "page" }))
    assert.same({ 0, 1, 2 }, offsets(t2))
  end)

  it("honours limit and a start offset", function()
    local c, t = new_client(server(25))
    local got = collect(c, { authorized_data = { business_type = "BUSIFAVOR_STOCK" }, limit = 10, offset = 1 })
    assert.equal(15, #got)
    assert.equal("wx11", got[1])
    assert.same({ 1, 2 }, offsets(t))
  end)

  it("gives zero iterations for 404, empty data, missing data and total_count 0", function()
    for _, empty in ipairs({ "404", "empty" }) do
      local c, t = new_client(server(0, { empty = empty }))
      assert.equal(0, #collect(c, { authorized_data = { business_type = "FAVOR_STOCK" } }))
      assert.equal(1, #t.calls)
    end
    local c, t = new_client(function()
      return F.response(200, '{"data":[{"partner":{"appid":"x"}}],"limit":50,"offset":0,"total_count":0}')
    end)
    assert.equal(0, #collect(c, { authorized_data = { business_type = "FAVOR_STOCK" } }))
    assert.equal(1, #t.calls)
  end)

  it("stops on a short page", function()
    local c, t = new_client(server(200, { short = 10, total = false }))
    assert.equal(10, #collect(c, { authorized_data = { business_type = "FAVOR_STOCK" } }))
    assert.equal(1, #t.calls)
  end)

  it("stops when the offset would not advance", function()
    local c, t = new_client(server(500, { ignore_offset = true, total = false }))
    local got = collect(c, { authorized_data = { business_type = "FAVOR_STOCK" } })
    assert.equal(2, #t.calls)
    assert.equal(100, #got)
  end)

  it("raises the structured error mid-loop", function()
    local c, t = new_client(server(120, { fail_at = 2 }), { max_retries = 0 })
    local seen = 0
    local ok, err = pcall(function()
      for _ in c.partnerships.list{ authorized_data = { business_type = "BUSIFAVOR_STOCK" } } do
        seen = seen + 1
      end
    end)
    assert.is_false(ok)
    assert.equal(50, seen)
    assert.equal("api", err.kind)
    assert.equal(500, err.status)
    assert.is_true(err.retryable)
    assert.equal(2, #t.calls)
    -- any 404 from the list endpoint is an empty result (the docs name no code for it)
    local c2, t2 = new_client(function() return F.error_response(404, "NOT_FOUND", "no such data") end)
    assert.equal(0, #collect(c2, { authorized_data = { business_type = "FAVOR_STOCK" } }))
    assert.equal(1, #t2.calls)
  end)

  it("accepts offset 2^31 - 1 and sends it as an integer", function()
    local c, t = new_client(function() return F.response(200, '{"data":[],"offset":2147483647,"limit":50}') end)
    local page, err = c.partnerships.page{ authorized_data = { business_type = "BUSIFAVOR_STOCK" },
      offset = 2 ^ 31 - 1, limit = 50 }
    assert.is_nil(err)
    assert.equal(2147483647, page.offset)
    assert.truthy(t.calls[1].target:find("&offset=2147483647$"), t.calls[1].target)
  end)

  -- signed pages whose numbers are not integers in range
  local bad_pages = {
    { "offset 1.5", '{"data":[],"offset":1.5,"limit":50}', "offset" },
    { "offset 1e300", '{"data":[],"offset":1e300,"limit":50}', "offset" },
    { 'offset "3"', '{"data":[],"offset":"3","limit":50}', "offset" },
    { "offset -1", '{"data":[],"offset":-1,"limit":50}', "offset" },
    { "limit 1.5", '{"data":[],"offset":0,"limit":1.5}', "limit" },
    { "limit 1e300", '{"data":[],"offset":0,"limit":1e300}', "limit" },
    { "total_count 2.5", '{"data":[],"offset":0,"limit":50,"total_count":2.5}', "total_count" },
  }
  for _, case in ipairs(bad_pages) do
    it("page returns a decode error for a signed page with " .. case[1], function()
      local c = new_client(function() return F.response(200, case[2]) end)
      local page, err = c.partnerships.page{ authorized_data = { business_type = "BUSIFAVOR_STOCK" } }
      assert.is_nil(page)
      assert.equal("decode", err.kind)
      assert.equal(case[3], err.field)
      assert.truthy(err.message:find(case[3], 1, true), err.message)
    end)

    it("list raises the structured decode error for a signed page with " .. case[1], function()
      local body = case[2]:gsub('"data":%[%]', '"data":[{"partner":{"type":"APPID","appid":"wx1"}}]')
      local c = new_client(function() return F.response(200, body) end)
      local ok, err = pcall(collect, c, { authorized_data = { business_type = "BUSIFAVOR_STOCK" } })
      assert.is_false(ok)
      assert.equal("table", type(err), tostring(err))
      assert.equal("decode", err.kind)
      assert.equal(case[3], err.field)
    end)
  end

  it("is lazy: requests happen only as the loop advances", function()
    local c, t = new_client(server(120))
    local it = c.partnerships.list{ authorized_data = { business_type = "BUSIFAVOR_STOCK" } }
    assert.equal(0, #t.calls)
    assert.equal("wx1", it().partner.appid)
    assert.equal(1, #t.calls)
    for _ = 2, 50 do it() end
    assert.equal(1, #t.calls)
    assert.equal("wx51", it().partner.appid)
    assert.equal(2, #t.calls)
    local rest = 0
    while it() do rest = rest + 1 end
    assert.equal(69, rest)
    assert.equal(3, #t.calls)
    assert.is_nil(it())
    assert.equal(3, #t.calls)
  end)

  it("works through the module-level default client", function()
    local t = F.transport(server(3))
    assert.truthy(wxpay.configure(F.config(t)))
    local n = 0
    for _ in wxpay.partnerships.list{ authorized_data = { business_type = "BUSIFAVOR_STOCK" } } do n = n + 1 end
    assert.equal(3, n)
    local page = assert(wxpay.partnerships.page{ authorized_data = { business_type = "BUSIFAVOR_STOCK" } })
    assert.equal(3, #page.data)
  end)
end)

describe("examples/campaign.lua: a build refused as already existing", function()
  local campaign = assert(loadfile("examples/campaign.lua"))({})
  local AUTH = { business_type = "BUSIFAVOR_STOCK", stock_id = "2433405" }

  -- build answers `build_answer`; the list answers `listed` (an array of relations) or 404.
  local function run(build_answer, listed)
    local c, t = new_client(function(req)
      if req.method == "POST" then return build_answer end
      if not listed then return F.error_response(404, "RESOURCE_NOT_EXISTS", "无数据") end
      return F.response(200, cjson.encode({ data = listed, limit = 50, offset = 0, total_count = #listed }))
    end)
    local outcome, info = campaign.establish(c, "wxdup", AUTH, "camp-wxdup")
    return outcome, info, t
  end
  local function rel(appid, state)
    return { partner = { type = "APPID", appid = appid }, authorized_data = AUTH, state = state }
  end

  it("counts it as already present only when the listing shows it ESTABLISHED", function()
    local outcome, _, t = run(F.error_response(400, "INVALID_REQUEST", "合作关系已存在"),
      { rel("wxdup", "ESTABLISHED") })
    assert.equal("already", outcome)
    assert.equal(2, #t.calls)
    local q = t.calls[2].target
    assert.truthy(q:find("partner=" .. require("wxpay.client").percent_encode('{"type":"APPID","appid":"wxdup"}'),
      1, true), q)
    assert.equal("already", (run(F.error_response(400, "RESOURCE_ALREADY_EXISTS", "exists"),
      { rel("wxdup", "ESTABLISHED") })))
  end)

  it("counts it failed when the listing does not confirm it", function()
    for _, listed in ipairs({ false, {}, { rel("wxdup", "TERMINATED") }, { rel("wxother", "ESTABLISHED") } }) do
      local outcome, err = run(F.error_response(400, "INVALID_REQUEST", "合作关系已存在"), listed or nil)
      assert.equal("failed", outcome)
      assert.is_true(err.already_exists)
    end
  end)

  it("counts any other INVALID_REQUEST as failed, without listing", function()
    local outcome, err, t = run(F.error_response(400, "INVALID_REQUEST", "批次不可用"), { rel("wxdup", "ESTABLISHED") })
    assert.equal("failed", outcome)
    assert.equal("INVALID_REQUEST", err.code)
    assert.equal(1, #t.calls)
  end)
end)
