-- 支付有礼 (client.paygift) end to end against the sandbox over HTTPS: every call (G1-G8),
-- the empty-body terminate and its safe repeat, a create retried after a dropped answer
-- (one activity), a Chinese list filter, partial success of add merchants, the prize
-- checks against the 商家券 store, and a payment over the threshold whose COUPON.SEND
-- reaches client.notify.parse with attach_info.act_code.
local sandbox = require("spec.support.sandbox")
local stocks = require("spec.support.stocks")
local listener = require("spec.support.listener")
local h = require("spec.helpers")

local APPID = "wxd678efh567hg6787"
local ACTS = "/v3/marketing/paygiftactivity/activities"
local CREATE = "/v3/marketing/paygiftactivity/unique-threshold-activity"

local sb, client, retrying
setup(function()
  sb = sandbox.start{ mode = "combined" }
  client, retrying = stocks.clients(sb)
end)
teardown(function()
  if sb then sb:stop() end
  h.cleanup()
end)
before_each(function() sb:reset() end)

local rfc3339 = stocks.rfc3339

local NOW = os.time()
local serial = 0

local function stock(over)
  serial = serial + 1
  local p = {
    stock_name = "满100送10元", goods_name = "全场通用", stock_type = "NORMAL",
    coupon_code_mode = "WECHATPAY_MODE", out_request_no = "pgs-" .. serial,
    coupon_use_rule = {
      coupon_available_time = { available_begin_time = rfc3339(NOW - 3600),
                                available_end_time = rfc3339(NOW + 40 * 86400) },
      fixed_normal_coupon = { discount_amount = 1000, transaction_minimum = 5000 },
      use_method = "OFF_LINE",
    },
    stock_send_rule = { max_coupons = 100, max_coupons_per_user = 5 },
    notify_config = { notify_appid = APPID },
  }
  for k, v in pairs(over or {}) do p[k] = v end
  return assert(client.busifavor.stocks.create(p)).stock_id
end

local function activity(stock_ids, over)
  local awards = {}
  for i, id in ipairs(stock_ids) do
    awards[i] = { stock_id = id, original_image_url = "https://wxpaylogo.qpic.cn/wxpaylogo/big/0",
                  thumbnail_url = #stock_ids > 1 and "https://wxpaylogo.qpic.cn/wxpaylogo/small/0" or nil }
  end
  local p = {
    activity_base_info = { activity_name = "五月回馈", activity_second_title = "满100送券",
      merchant_logo_url = "https://wxpaylogo.qpic.cn/wxpaylogo/logo/0", begin_time = rfc3339(NOW - 60),
      end_time = rfc3339(NOW + 30 * 86400), delivery_purpose = "OFF_LINE_PAY" },
    award_send_rule = { transaction_amount_minimum = 10000,
      send_content = #stock_ids > 1 and "GIFT_PACKAGE" or "SINGLE_COUPON", award_list = awards },
  }
  for k, v in pairs(over or {}) do p[k] = v end
  return p
end

local function api_error(status, code, data, err)
  assert.is_nil(data)
  assert.equal("api", err.kind)
  assert.equal(status, err.status)
  assert.equal(code, err.code)
end

-- The signed API requests the sandbox logged for `method path` (query ignored).
local function logged(method, path)
  local out = {}
  for _, r in ipairs(sb:requests()) do
    if r.method == method and r.target:match("^[^?]*") == path then out[#out + 1] = r end
  end
  return out
end

describe("client.paygift against the sandbox", function()
  it("G1/G2: creates an activity and reads it back with the wrapped rule", function()
    local p = activity({ stock() })
    local act, err, meta = client.paygift.create(p)
    assert.is_nil(err)
    assert.matches("^%d+$", act.activity_id)
    assert.truthy(act.create_time)
    assert.equal(32, #meta.out_request_no)
    assert.is_nil(p.activity_base_info.out_request_no) -- the caller's table is not changed
    local a = assert(client.paygift.get(act.activity_id))
    assert.equal("ONGOING_ACT_STATUS", a.activity_status)
    assert.equal("FULL_SEND_ACT_TYPE", a.activity_type)
    assert.equal(10000, a.award_send_rule.full_send_rule.transaction_amount_minimum)
    assert.same({ sb.config.mchid }, a.award_send_rule.full_send_rule.merchant_id_list)
    assert.equal(sb.config.mchid, a.creator_merchant_id)
    assert.equal(meta.out_request_no, a.activity_base_info.out_request_no)
    api_error(404, "RESOURCE_NOT_EXISTS", client.paygift.get("99999999"))
  end)

  it("G1: a create retried after a dropped answer makes one activity", function()
    sb:fault{ fault = "drop_after", count = 1, path = CREATE, method = "POST" }
    local p = activity({ stock() })
    p.activity_base_info.out_request_no = "pg-retry-1"
    local act, err, meta = retrying.paygift.create(p)
    assert.is_nil(err)
    assert.equal("pg-retry-1", meta.out_request_no)
    local log = logged("POST", CREATE)
    assert.equal(2, #log)
    assert.equal("drop_after", log[1].fault)
    assert.equal(log[1].body, log[2].body)
    local n = 0
    for _ in client.paygift.list{} do n = n + 1 end
    assert.equal(1, n)
    -- the same number again answers the same activity; another body under it is refused
    assert.equal(act.activity_id, assert(client.paygift.create(p)).activity_id)
    p.award_send_rule.transaction_amount_minimum = 20000
    api_error(400, "RESOURCE_ALREADY_EXISTS", client.paygift.create(p))
  end)

  it("G1: available_periods may carry either list alone", function()
    local p = activity({ stock() })
    p.activity_base_info.available_periods = {
      available_day_time = { { begin_day_time = "110000", end_day_time = "135959" } } }
    local act = assert(client.paygift.create(p))
    local a = assert(client.paygift.get(act.activity_id))
    assert.equal("110000", a.activity_base_info.available_periods.available_day_time[1].begin_day_time)
  end)

  it("G1: prize stocks are checked against the 商家券 store", function()
    api_error(404, "RESOURCE_NOT_EXISTS", client.paygift.create(activity({ "1234567890123456" })))
    local short = stock{ coupon_use_rule = {
      coupon_available_time = { available_begin_time = rfc3339(NOW - 3600), available_end_time = rfc3339(NOW + 86400) },
      fixed_normal_coupon = { discount_amount = 1000, transaction_minimum = 5000 }, use_method = "OFF_LINE" } }
    local data, err = client.paygift.create(activity({ short }))
    api_error(400, "INVALID_REQUEST", data, err)
    assert.matches("有效期", err.message)
    local a, b = stock(), stock{ stock_send_rule = { max_coupons = 100, max_coupons_per_user = 1 } }
    data, err = client.paygift.create(activity({ a, b, a }))
    api_error(400, "INVALID_REQUEST", data, err)
    assert.matches("不一致", err.message)
    assert.truthy(client.paygift.create(activity({ a, a, a })))
  end)

  it("G3: lists with a Chinese name filter, percent-encoded and signed as sent", function()
    local id = stock()
    local mine = assert(client.paygift.create(activity({ id })))
    local other = activity({ id })
    other.activity_base_info.activity_name = "良品铺子周年"
    local theirs = assert(client.paygift.create(other))
    local seen = {}
    for a in client.paygift.list{ activity_name = "良品铺子", activity_status = "ONGOING_ACT_STATUS" } do
      seen[#seen + 1] = a.activity_id
    end
    assert.same({ theirs.activity_id }, seen)
    local r = logged("GET", ACTS)[1]
    assert.equal(ACTS .. "?offset=0&limit=10&activity_name=%E8%89%AF%E5%93%81%E9%93%BA%E5%AD%90"
      .. "&activity_status=ONGOING_ACT_STATUS", r.target)
    -- every page is read lazily: limit 1 gives two pages and both activities
    local all = {}
    for a in client.paygift.list{ limit = 1 } do all[#all + 1] = a.activity_id end
    assert.same({ mine.activity_id, theirs.activity_id }, all)
    local page = assert(client.paygift.page{ activity_status = "TERMINATE_ACT_STATUS" })
    assert.same({}, page.data)
    assert.equal(0, page.total_count)
  end)

  it("G4/G5/G7/G8: merchants, goods, partial success, removal", function()
    local act = assert(client.paygift.create(activity({ stock() })))
    sb:control("POST", "/paygift/brands", { merchants = { "1900000109" } })
    local res, err, meta = client.paygift.add_merchants(act.activity_id,
      { merchant_id_list = { "1900000109", "1800000001" } })
    assert.is_nil(err)
    assert.equal(32, #meta.add_request_no)
    assert.equal(1, #res.invalid_merchant_id_list)
    assert.equal("1800000001", res.invalid_merchant_id_list[1].mchid)
    assert.equal("商户与活动创建方不具备父子关系", res.invalid_merchant_id_list[1].invalid_reason)
    local ids = {}
    for m in client.paygift.merchants(act.activity_id, { limit = 1 }) do ids[#ids + 1] = m.mchid end
    assert.same({ sb.config.mchid, "1900000109" }, ids)
    local n = 0
    for _ in client.paygift.goods(act.activity_id) do n = n + 1 end
    assert.equal(0, n)
    -- add_request_no has no charset rule: a POS-style number goes through
    res, err, meta = client.paygift.add_merchants(act.activity_id,
      { merchant_id_list = { "1900000109" }, add_request_no = "POS/2026.05.20:0001" })
    assert.is_nil(err)
    assert.same({}, res.invalid_merchant_id_list)
    assert.equal("POS/2026.05.20:0001", meta.add_request_no)
    local del
    del, err, meta = client.paygift.delete_merchants(act.activity_id,
      { merchant_id_list = { "1900000109" }, delete_request_no = "pg-del-1" })
    assert.is_nil(err)
    assert.equal(act.activity_id, del.activity_id)
    assert.equal("pg-del-1", meta.delete_request_no)
    ids = {}
    for m in client.paygift.merchants(act.activity_id) do ids[#ids + 1] = m.mchid end
    assert.same({ sb.config.mchid }, ids)
  end)

  it("G6: terminate sends an empty body, is safe to repeat, and ends the activity", function()
    local act = assert(client.paygift.create(activity({ stock() })))
    local res, err = client.paygift.terminate(act.activity_id)
    assert.is_nil(err)
    assert.equal(act.activity_id, res.activity_id)
    assert.truthy(res.terminate_time)
    local path = ACTS .. "/" .. act.activity_id .. "/terminate"
    local r = logged("POST", path)[1]
    assert.equal("", r.body)
    assert.is_nil(r.headers["content-type"])
    assert.equal(200, r.status)
    local again = assert(client.paygift.terminate(act.activity_id))
    assert.is_true(again.already_terminated)
    assert.equal("TERMINATE_ACT_STATUS", assert(client.paygift.get(act.activity_id)).activity_status)
    -- a terminated activity takes no merchants
    api_error(400, "INVALID_REQUEST", client.paygift.add_merchants(act.activity_id,
      { merchant_id_list = { sb.config.mchid } }))
    -- an activity that never was cannot be terminated
    api_error(404, "RESOURCE_NOT_EXISTS", client.paygift.terminate("99999999"))
  end)

  it("G6: the sandbox also takes SKIT's {} body, and refuses any other", function()
    local a = assert(client.paygift.create(activity({ stock() })))
    local path = ACTS .. "/" .. a.activity_id .. "/terminate"
    api_error(400, "PARAM_ERROR", client.request{ method = "POST", path = path, body = '{"x":1}' })
    local res = assert(client.request{ method = "POST", path = path, body = "{}" })
    assert.equal(a.activity_id, res.activity_id)
    assert.equal("TERMINATE_ACT_STATUS", assert(client.paygift.get(a.activity_id)).activity_status)
  end)

  it("G6: a terminate whose answer is dropped still succeeds on the retry", function()
    local act = assert(client.paygift.create(activity({ stock() })))
    local path = ACTS .. "/" .. act.activity_id .. "/terminate"
    sb:fault{ fault = "drop_after", count = 1, path = path, method = "POST" }
    local res, err = retrying.paygift.terminate(act.activity_id)
    assert.is_nil(err)
    assert.equal(act.activity_id, res.activity_id)
    assert.equal("TERMINATE_ACT_STATUS", assert(client.paygift.get(act.activity_id)).activity_status)
  end)

  it("refuses bad input before sending anything", function()
    local p = activity({ stock() })
    local before = sb:stats().requests
    p.activity_base_info.end_time = rfc3339(NOW + 91 * 86400)
    local data, err = client.paygift.create(p)
    assert.is_nil(data)
    assert.equal("activity_base_info.end_time", err.field)
    local _
    _, err = client.paygift.add_merchants("1", { merchant_id_list = { "12" } })
    assert.equal("merchant_id_list[1]", err.field)
    assert.equal(before, sb:stats().requests)
  end)
end)

describe("a sandbox payment", function()
  local function receive(srv) return listener.receive(srv, client, listener.tls(sb)) end

  it("over the threshold issues the prize; COUPON.SEND carries act_code", function()
    local id = stock()
    local act = assert(client.paygift.create(activity({ id })))
    local srv, url = listener.listen("https")
    local ok, perr = pcall(function()
      assert(client.busifavor.callbacks.set{ notify_url = url })
      -- under the threshold: nothing
      local res, status = sb:control("POST", "/paygift/pay", { mchid = sb.config.mchid, openid = "oPayUser1",
                                                               amount = 9999 })
      assert.equal(200, status)
      assert.is_false(res.matched)
      res, status = sb:control("POST", "/paygift/pay", { mchid = sb.config.mchid, openid = "oPayUser1",
                                                          amount = 10000, transaction_id = "4200000001" })
      assert.equal(200, status)
      assert.is_true(res.matched)
      assert.equal(act.activity_id, res.activity_id)
      assert.equal(1, #res.coupons)
      local n, err = receive(srv)
      assert.is_nil(err)
      assert.equal("COUPON.SEND", n.event_type)
      local sent = assert(client.busifavor.send_event(n))
      assert.equal(id, sent.stock_id)
      assert.equal(res.coupons[1].coupon_code, sent.coupon_code)
      assert.equal("BUSICOUPON_SEND_CHANNEL_PAYGIFT", sent.send_channel)
      assert.equal(act.activity_id, n.attach_info.act_code)
      assert.equal("4200000001", n.attach_info.transaction_id)
      -- the same payment again issues nothing new
      res = sb:control("POST", "/paygift/pay", { mchid = sb.config.mchid, openid = "oPayUser1",
                                                 amount = 10000, transaction_id = "4200000001" })
      assert.is_true(res.coupons[1].replayed)
      local s = assert(client.busifavor.stocks.get(id))
      assert.equal(1, s.send_count_information.total_send_num)
    end)
    srv:close()
    assert(ok, perr)
  end)

  it("a gift pack issues every coupon of the pack, each with its COUPON.SEND", function()
    local id = stock()
    local act = assert(client.paygift.create(activity({ id, id, id })))
    local srv, url = listener.listen("https")
    local ok, perr = pcall(function()
      assert(client.busifavor.callbacks.set{ notify_url = url })
      local res = sb:control("POST", "/paygift/pay", { mchid = sb.config.mchid, openid = "oPack", amount = 20000 })
      assert.equal(3, #res.coupons)
      local codes = {}
      for i = 1, 3 do
        local n = assert(receive(srv))
        assert.equal(act.activity_id, n.attach_info.act_code)
        codes[i] = n.resource_data.coupon_code
      end
      table.sort(codes)
      local want = { res.coupons[1].coupon_code, res.coupons[2].coupon_code, res.coupons[3].coupon_code }
      table.sort(want)
      assert.same(want, codes)
    end)
    srv:close()
    assert(ok, perr)
  end)

  it("client.notify types attach_info: numbers become strings, \"\" is nil", function()
    local id = stock()
    local srv, url = listener.listen("https")
    local ok, perr = pcall(function()
      assert(client.busifavor.callbacks.set{ notify_url = url })
      sb:control("POST", "/busifavor/claim", { stock_id = id, openid = "oA", appid = APPID,
        attach_info = { act_code = 540358695, transaction_id = "", hall_belong_mch_id = 1900000001 } })
      local n = assert(receive(srv))
      assert.same({ act_code = "540358695", hall_belong_mch_id = "1900000001" }, n.attach_info)
      assert.equal(540358695, n.resource_data.attach_info.act_code) -- the resource stays as sent
      sb:control("POST", "/busifavor/claim", { stock_id = id, openid = "oB", appid = APPID })
      n = assert(receive(srv))
      assert.is_nil(n.attach_info)
    end)
    srv:close()
    assert(ok, perr)
  end)

  it("at a merchant not listed, or for a stopped activity, issues nothing", function()
    local act = assert(client.paygift.create(activity({ stock() })))
    local res = sb:control("POST", "/paygift/pay", { mchid = "1800000001", openid = "o2", amount = 50000 })
    assert.is_false(res.matched)
    sb:control("POST", "/paygift/status", { activity_id = act.activity_id, activity_status = "STOP_ACT_STATUS" })
    assert.equal("STOP_ACT_STATUS", assert(client.paygift.get(act.activity_id)).activity_status)
    res = sb:control("POST", "/paygift/pay", { mchid = sb.config.mchid, openid = "o2", amount = 50000 })
    assert.is_false(res.matched)
  end)
end)
