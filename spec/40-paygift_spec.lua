-- Unit specs of client.paygift (支付有礼) over a fake transport: the string-to-sign vectors
-- of the protocol notes (a Chinese list filter, the empty-body terminate, add merchants),
-- the bytes of every call, request numbers generated, returned and kept across a retry,
-- refusals before sending (field named, nothing sent), terminate's safe repeat and the
-- partial success of add merchants.

local F = require("spec.support.fake")
local core = require("wxpay.core")
local wxpay = require("wxpay")
local cjson = require("cjson").new()

local TS, NONCE = "1554208460", "593BEC0C930BF1AFEB40B4A08C8FB242"
local BASE = "/v3/marketing/paygiftactivity"

local function new_client(handler)
  local t = F.transport(handler or function() return F.response(200, '{"activity_id":"10028001"}') end)
  local c = assert(wxpay.new(F.config(t)))
  return c.paygift, t, c
end

-- The string to sign of a recorded request under the vectors' fixed timestamp and nonce.
local function message(rec)
  return table.concat({ rec.method, rec.target, TS, NONCE, rec.body or "" }, "\n") .. "\n"
end

local function rfc3339(t)
  return os.date("!%Y-%m-%dT%H:%M:%S+08:00", t + 8 * 3600)
end

local NOW = os.time()

local function params()
  return {
    activity_base_info = { activity_name = "五月回馈", activity_second_title = "满100送券",
      merchant_logo_url = "https://wxpaylogo.qpic.cn/wxpaylogo/xxx/0", begin_time = rfc3339(NOW + 86400),
      end_time = rfc3339(NOW + 31 * 86400), out_request_no = "1900000001_20260520_0001",
      delivery_purpose = "OFF_LINE_PAY" },
    award_send_rule = { transaction_amount_minimum = 10000, send_content = "SINGLE_COUPON",
      award_list = { { stock_id = "1286950000000039",
                       original_image_url = "https://wxpaylogo.qpic.cn/wxpaylogo/yyy/0" } } },
  }
end

describe("paygift string-to-sign vectors", function()
  it("G3 with a Chinese activity_name filter", function()
    local pg, t = new_client(function() return F.response(200, '{"total_count":0,"offset":0,"limit":10}') end)
    local page = assert(pg.page{ limit = 10, activity_name = "良品铺子", activity_status = "ONGOING_ACT_STATUS" })
    assert.same({}, page.data)
    local rec = t.calls[1]
    assert.equal(BASE .. "/activities?offset=0&limit=10&activity_name=%E8%89%AF%E5%93%81%E9%93%BA%E5%AD%90"
      .. "&activity_status=ONGOING_ACT_STATUS", rec.target)
    assert.truthy(F.check_signature(rec))
    local msg = message(rec)
    assert.equal(194, #msg)
    assert.equal("cf97797f55738357d1fb50b16ad1be45d1b5df65e7a608ca6a96964bec9c49dd", core.sha256_hex(msg))
  end)

  it("G6 terminate: no body, an empty last line, no Content-Type", function()
    local pg, t = new_client(function()
      return F.response(200, '{"activity_id":"10028001","terminate_time":"2026-05-20T13:29:35+08:00"}')
    end)
    local res, err, meta = pg.terminate("10028001")
    assert.is_nil(err)
    assert.equal("2026-05-20T13:29:35+08:00", res.terminate_time)
    assert.equal(200, meta.status)
    local rec = t.calls[1]
    assert.equal("POST", rec.method)
    assert.equal(BASE .. "/activities/10028001/terminate", rec.target)
    assert.is_nil(rec.body)
    assert.is_nil(rec.headers["Content-Type"])
    assert.truthy(F.check_signature(rec))
    local msg = message(rec)
    assert.equal(110, #msg)
    assert.equal("c43f068d843eabd6eaae2b38df8fb64780e972c6c2549a6e6080e83ac689eb0d", core.sha256_hex(msg))
    -- what SKIT's "{}" body would have signed instead
    local skit = table.concat({ "POST", rec.target, TS, NONCE, "{}" }, "\n") .. "\n"
    assert.equal("bcf6680b914453c66e23543d1f920496fd8bd2a8f4aa51c7b27f623640318dca", core.sha256_hex(skit))
  end)

  it("G7 add merchants", function()
    local pg, t = new_client(function() return F.response(200, '{"activity_id":"10028001"}') end)
    local res, err, meta = pg.add_merchants("10028001", { merchant_id_list = { "10000022", "10000023" },
      add_request_no = "1900000001_20240520_add1" })
    assert.is_nil(err)
    assert.same({}, res.invalid_merchant_id_list)
    assert.equal("1900000001_20240520_add1", meta.add_request_no)
    local rec = t.calls[1]
    assert.equal('{"merchant_id_list":["10000022","10000023"],"add_request_no":"1900000001_20240520_add1"}', rec.body)
    local msg = message(rec)
    assert.equal(202, #msg)
    assert.equal("7e1efb718c3d5f31800c641ef9313e4f605d0d4e7a3be6529b4e90c28d93e4da", core.sha256_hex(msg))
  end)
end)

describe("client.paygift requests", function()
  it("create sends the flat rule in protocol order, with the defaults", function()
    local pg, t = new_client(function() return F.response(200, '{"activity_id":"10028001","create_time":"x"}') end)
    local act, err, meta = pg.create(params())
    assert.is_nil(err)
    assert.equal("10028001", act.activity_id)
    assert.equal("1900000001_20260520_0001", meta.out_request_no)
    local rec = t.calls[1]
    assert.equal(BASE .. "/unique-threshold-activity", rec.target)
    assert.matches('^{"activity_base_info":{"activity_name":"五月回馈","activity_second_title":"满100送券",', rec.body)
    assert.matches('"award_send_rule":{"transaction_amount_minimum":10000,"send_content":"SINGLE_COUPON",'
      .. '"award_type":"BUSIFAVOR","award_list":%[{"stock_id":"1286950000000039","original_image_url":'
      .. '"https://wxpaylogo.qpic.cn/wxpaylogo/yyy/0"}%],"merchant_option":"MANUAL_INPUT_MERCHANT",'
      .. '"merchant_id_list":%["1900000001"%]}}$', rec.body)
  end)

  it("create generates out_request_no and keeps it across a retry", function()
    local pg, t = new_client(function(_, n)
      if n == 1 then return F.error_response(500, "SYSTEM_ERROR", "busy") end
      return F.response(200, '{"activity_id":"10028001"}')
    end)
    local p = params()
    p.activity_base_info.out_request_no = nil
    local act, err, meta = pg.create(p)
    assert.is_nil(err)
    assert.truthy(act)
    assert.equal(2, #t.calls)
    assert.equal(t.calls[1].body, t.calls[2].body)
    assert.equal(32, #meta.out_request_no)
    assert.truthy(t.calls[1].body:find('"out_request_no":"' .. meta.out_request_no .. '"', 1, true))
    assert.is_nil(p.activity_base_info.out_request_no)
  end)

  it("a failed create reports its out_request_no", function()
    local pg = new_client(function() return F.error_response(400, "INVALID_REQUEST", "商家券信息不满足活动规则") end)
    local act, err = pg.create(params())
    assert.is_nil(act)
    assert.equal("1900000001_20260520_0001", err.out_request_no)
  end)

  -- Each case: a change to the params, and the field the refusal names.
  local CASES = {
    { function(p) p.activity_base_info.activity_name = "一二三四五六七八九十一" end, "activity_base_info.activity_name" },
    { function(p) p.activity_base_info.activity_second_title = "一二三四五六七八九十" end,
      "activity_base_info.activity_second_title" },
    { function(p) p.activity_base_info.begin_time = "2026-05-20 00:00:00" end, "activity_base_info.begin_time" },
    { function(p) p.activity_base_info.end_time = rfc3339(NOW + 92 * 86400) end, "activity_base_info.end_time" },
    { function(p) p.activity_base_info.end_time = rfc3339(NOW) end, "activity_base_info.end_time" },
    { function(p)
        p.activity_base_info.begin_time = rfc3339(NOW + 400 * 86400)
        p.activity_base_info.end_time = rfc3339(NOW + 401 * 86400)
      end, "activity_base_info.begin_time" },
    { function(p) p.activity_base_info.delivery_purpose = "JUMP_MINI_APP" end,
      "activity_base_info.mini_programs_appid" },
    { function(p) p.activity_base_info.delivery_purpose = "ONLINE" end, "activity_base_info.delivery_purpose" },
    { function(p) p.activity_base_info.out_request_no = "no spaces" end, "out_request_no" },
    { function(p) p.activity_base_info.merchant_logo_url = "http://x/y" end, "activity_base_info.merchant_logo_url" },
    { function(p) p.award_send_rule.send_content = "GIFT_PACKAGE" end, "award_send_rule.award_list" },
    { function(p) p.award_send_rule.award_type = "FAVOR" end, "award_send_rule.award_type" },
    { function(p) p.award_send_rule.transaction_amount_minimum = 10.5 end,
      "award_send_rule.transaction_amount_minimum" },
    { function(p) p.award_send_rule.award_list[2] = p.award_send_rule.award_list[1] end,
      "award_send_rule.award_list[1].thumbnail_url" },
    { function(p) p.award_send_rule.merchant_id_list = { "1234567" } end, "award_send_rule.merchant_id_list[1]" },
    { function(p) p.award_send_rule.award_list = {} end, "award_send_rule.award_list" },
    { function(p) p.advanced_setting = { delivery_user_category = "DELIVERY_MEMBER_PERSON" } end,
      "advanced_setting.merchant_member_appid" },
    { function(p) p.advanced_setting = { goods_tag = { "a" } } end, "advanced_setting.goods_tag" },
    { function(p) p.activity_base_info.available_periods = { available_time = {} } end,
      "activity_base_info.available_periods.available_time" },
  }
  it("create refuses bad params before sending, naming the field", function()
    local pg, t = new_client()
    for i, case in ipairs(CASES) do
      local p = params()
      case[1](p)
      local act, err = pg.create(p)
      assert.is_nil(act, "case " .. i)
      assert.equal("invalid_argument", err.kind)
      assert.equal(case[2], err.field, "case " .. i .. ": " .. tostring(err))
    end
    assert.equal(0, #t.calls)
  end)

  it("create accepts what the official pages allow", function()
    local pg, t = new_client()
    local p = params()
    p.activity_base_info.end_time = rfc3339(NOW + 86400 + 90 * 86400) -- exactly 90 days
    p.activity_base_info.delivery_purpose = "JUMP_MINI_APP"
    p.activity_base_info.mini_programs_appid = "wxd678efh567hg6787" -- the path is optional (old wiki)
    p.activity_base_info.background_color = "COLOR010"
    p.activity_base_info.available_periods = {
      available_time = { { begin_time = rfc3339(NOW + 86400), end_time = rfc3339(NOW + 2 * 86400) } },
      available_day_time = { { begin_day_time = "000000", end_day_time = "235959" } } }
    p.award_send_rule.send_content = "GIFT_PACKAGE"
    local a = { stock_id = "1286950000000039", original_image_url = "https://a.example/big",
                thumbnail_url = "https://a.example/small" }
    p.award_send_rule.award_list = { a, a, a, a, a }
    p.advanced_setting = { delivery_user_category = "DELIVERY_ALL_PERSON", goods_tags = { "tag1" },
      -- no length is documented for bank_abbreviation
      payment_method_information = { payment_method = "SPECIFIC_BANK_CARD", bank_abbreviation = string.rep("B", 40) } }
    local act, err = pg.create(p)
    assert.is_nil(err)
    assert.truthy(act)
    assert.equal(1, #t.calls)
  end)

  it("available_periods may carry either list alone (wechatpay-go marks both optional)", function()
    local pg, t = new_client()
    local p = params()
    p.activity_base_info.available_periods = {
      available_day_time = { { begin_day_time = "110000", end_day_time = "135959" } } }
    assert.truthy(pg.create(p))
    assert.truthy(t.calls[1].body:find('"available_periods":{"available_day_time":[{"begin_day_time":"110000",'
      .. '"end_day_time":"135959"}]}', 1, true))
    p = params()
    p.activity_base_info.available_periods = {
      available_time = { { begin_time = rfc3339(NOW + 86400), end_time = rfc3339(NOW + 2 * 86400) } } }
    assert.truthy(pg.create(p))
    assert.equal(2, #t.calls)
  end)

  it("get, merchants and goods build their paths; bad ids are refused", function()
    local pg, t = new_client(function(req)
      if req.url:find("/merchants", 1, true) then
        return F.response(200, '{"activity_id":"1","total_count":1,"offset":0,"limit":20,'
          .. '"data":[{"mchid":"1900000001"}]}')
      end
      return F.response(200, '{"activity_id":"1","activity_status":"ONGOING_ACT_STATUS"}')
    end)
    assert.equal("ONGOING_ACT_STATUS", assert(pg.get("1")).activity_status)
    local ids = {}
    for m in pg.merchants("1") do ids[#ids + 1] = m.mchid end
    assert.same({ "1900000001" }, ids)
    assert.equal(BASE .. "/activities/1", t.calls[1].target)
    assert.equal(BASE .. "/activities/1/merchants?offset=0&limit=20", t.calls[2].target)
    local n = #t.calls
    local a, err = pg.get("..")
    assert.is_nil(a)
    assert.equal("activity_id", err.field)
    assert.has_error(function() pg.goods("1", { limit = 0 }) end)
    assert.has_error(function() pg.list{ limit = 101 } end)
    assert.equal(n, #t.calls)
  end)

  it("terminate is safe to repeat: a refusal of a terminated activity is success", function()
    local status = "TERMINATE_ACT_STATUS"
    local pg, t = new_client(function(req)
      if req.method == "POST" then return F.error_response(400, "INVALID_REQUEST", "活动已终止") end
      return F.response(200, '{"activity_id":"7","activity_status":"' .. status .. '","update_time":"T"}')
    end)
    local res, err = pg.terminate("7")
    assert.is_nil(err)
    assert.is_true(res.already_terminated)
    assert.equal("T", res.terminate_time)
    assert.equal(2, #t.calls)
    status = "OVER_TIME_ACT_STATUS"
    res, err = pg.terminate("7")
    assert.is_nil(res)
    assert.equal("INVALID_REQUEST", err.code)
  end)

  it("add_merchants returns the refused merchants as data; delete carries its number", function()
    local pg, t = new_client(function(req)
      if req.url:find("/add", 1, true) then
        return F.response(200, '{"activity_id":"7","invalid_merchant_id_list":[{"mchid":"10000023",'
          .. '"invalid_reason":"商户与活动创建方不具备父子关系"}],"add_time":"T"}')
      end
      return F.response(200, '{"activity_id":"7","delete_time":"T"}')
    end)
    local res, err = pg.add_merchants("7", { merchant_id_list = { "10000022", "10000023" } })
    assert.is_nil(err)
    assert.equal("10000023", res.invalid_merchant_id_list[1].mchid)
    local del, derr, meta = pg.delete_merchants("7", { merchant_id_list = { "10000022" } })
    assert.is_nil(derr)
    assert.equal("T", del.delete_time)
    assert.equal(32, #meta.delete_request_no)
    assert.equal('{"merchant_id_list":["10000022"],"delete_request_no":"' .. meta.delete_request_no .. '"}',
      t.calls[2].body)
    local bad
    bad, err = pg.delete_merchants("7", { merchant_id_list = {} })
    assert.is_nil(bad)
    assert.equal("merchant_id_list", err.field)
    assert.truthy(err.delete_request_no)
    assert.has_error(function() pg.add_merchants("7", "10000022") end)
    assert.equal(2, #t.calls)
  end)

  it("add_request_no takes any 1-128 characters (no charset is stated for it); delete's keeps its charset", function()
    local pg, t = new_client(function() return F.response(200, '{"activity_id":"7"}') end)
    local res, err, meta = pg.add_merchants("7", { merchant_id_list = { "10000022" },
      add_request_no = "POS/2026.05.20:0001" })
    assert.is_nil(err)
    assert.truthy(res)
    assert.equal("POS/2026.05.20:0001", meta.add_request_no)
    assert.equal('{"merchant_id_list":["10000022"],"add_request_no":"POS/2026.05.20:0001"}', t.calls[1].body)
    for _, bad in ipairs{ "", string.rep("a", 129), "a\nb", 5 } do
      res, err = pg.add_merchants("7", { merchant_id_list = { "10000022" }, add_request_no = bad })
      assert.is_nil(res)
      assert.equal("add_request_no", err.field)
    end
    res, err = pg.delete_merchants("7", { merchant_id_list = { "10000022" }, delete_request_no = "POS/1" })
    assert.is_nil(res)
    assert.equal("delete_request_no", err.field)
    assert.equal(1, #t.calls)
  end)
end)

describe("client.notify.parse: attach_info of a 支付有礼 COUPON.SEND", function()
  -- A COUPON.SEND callback as WeChat Pay sends it: resource encrypted, body signed.
  local function callback(attach_info)
    local nonce, aad = "abcdefghijkl", "coupon"
    local resource = { event_type = "EVENT_TYPE_BUSICOUPON_SEND", coupon_code = "c1", stock_id = "1286950000000039",
      send_channel = "BUSICOUPON_SEND_CHANNEL_PAYGIFT", send_merchant = "1900000001", attach_info = attach_info }
    local body = cjson.encode({ id = "EV-1", create_time = "2024-05-20T13:29:35+08:00", event_type = "COUPON.SEND",
      resource_type = "encrypt-resource", summary = "通知",
      resource = { original_type = "coupon", algorithm = "AEAD_AES_256_GCM", nonce = nonce, associated_data = aad,
        ciphertext = assert(core.aes_gcm_encrypt(F.APIV3, nonce, aad, cjson.encode(resource))) } })
    local headers = {}
    for k, v in pairs(F.response(200, body).headers) do headers[k:lower()] = v end
    return headers, body
  end

  it("is a table of strings: ids sent as numbers become strings, null and non-ids are left out", function()
    local _, _, c = new_client()
    local n = assert(c.notify.parse(callback({ act_code = 540358695, transaction_id = "4200000001",
      hall_code = cjson.null, card_id = true, code = 1.5, activity_id = { 1 } })))
    assert.same({ act_code = "540358695", transaction_id = "4200000001" }, n.attach_info)
    n = assert(c.notify.parse(callback({ act_code = cjson.null })))
    assert.is_nil(n.attach_info)
    n = assert(c.notify.parse(callback('{"act_code":"7","transaction_id":"42"}')))
    assert.same({ act_code = "7", transaction_id = "42" }, n.attach_info)
  end)
end)

describe("an empty-body POST on the wire", function()
  local transport = require("wxpay.transport")
  local http1 = require("wxpay.transport.http1")
  local HEADERS = { Accept = "application/json", Authorization = "WECHATPAY2-SHA256-RSA2048 x", ["User-Agent"] = "t" }

  it("libcurl: an empty Content-Type line suppresses its form default; other requests are untouched", function()
    local lines = transport.curl_header_lines{ method = "POST", headers = HEADERS }
    assert.equal("Content-Type:", lines[#lines])
    assert.equal(4, #lines)
    assert.equal("Content-Type:", transport.curl_header_lines{ method = "POST", headers = HEADERS, body = "" }[4])
    local json = { Accept = "application/json", ["Content-Type"] = "application/json" }
    assert.same({ "Accept: application/json", "Content-Type: application/json" },
      transport.curl_header_lines{ method = "POST", headers = json, body = "{}" })
    assert.same({ "Accept: application/json", "Content-Type: application/json" },
      transport.curl_header_lines{ method = "POST", headers = json })
    assert.equal(3, #transport.curl_header_lines{ method = "GET", headers = HEADERS })
    assert.equal(3, #transport.curl_header_lines{ method = "DELETE", headers = HEADERS })
  end)

  it("cosockets: Content-Length: 0 and no Content-Type", function()
    local wire = http1.request_wire({ method = "POST", headers = HEADERS }, "api.mch.weixin.qq.com", 443,
      BASE .. "/activities/10028001/terminate")
    assert.equal("POST " .. BASE .. "/activities/10028001/terminate HTTP/1.1\r\nHost: api.mch.weixin.qq.com\r\n"
      .. "Accept: application/json\r\nAuthorization: WECHATPAY2-SHA256-RSA2048 x\r\nUser-Agent: t\r\n"
      .. "Content-Length: 0\r\n\r\n", wire)
  end)
end)
