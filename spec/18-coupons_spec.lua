-- Unit specs for the coupon products over a fake transport: client.busifavor (商家券) and
-- client.favor (代金券). Every endpoint's request bytes, request numbers kept across retries
-- (after a 500 and after a dropped connection), refusals before sending (field named,
-- nothing sent), lazy paging, response decoding and the COUPON.SEND / COUPON.USE callbacks.

local F = require("spec.support.fake")
local core = require("wxpay.core")
local wxpay = require("wxpay")
local client_mod = require("wxpay.client")
local cjson = require("cjson").new()

local MCHID = "1900000001"

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- The module as the client wires it, or (until it is wired) over an `api` handle built
-- like client.lua's on top of client.request.
local function attach(c, name)
  if c[name] then return c[name] end
  local api = {
    offset_mode = "page", mchid = MCHID,
    encode_json = client_mod.encode_json, percent_encode = client_mod.percent_encode,
    check_utf8 = client_mod.check_utf8, check_idempotency_key = client_mod.check_idempotency_key,
    check_call_options = client_mod.check_call_options,
    new_idempotency_key = function() return core.nonce(32) end,
    send = function(r)
      local path, q = r.target:match("^([^?]*)%??(.*)$")
      local query = {}
      for k, v in q:gmatch("([^&=]+)=([^&]*)") do query[#query + 1] = { k, unescape(v) } end
      return c.request{ method = r.method, path = path, query = #query > 0 and query or nil,
        body = r.body, timeout = r.timeout, connect_timeout = r.connect_timeout,
        deadline = r.deadline, max_retries = r.max_retries, wechatpay_serial = r.wechatpay_serial }
    end,
  }
  return require("wxpay.api." .. name).new(api)
end

local function new_client(handler)
  local t = F.transport(handler or function() return F.response(200, '{"stock_id":"1"}') end)
  local c = assert(wxpay.new(F.config(t)))
  return attach(c, "busifavor"), attach(c, "favor"), t, c
end

local function ok_json(body) return function() return F.response(200, body) end end
local function reset() return nil, { kind = "network", message = "reset", connected = true } end

local function copy(t)
  if type(t) ~= "table" then return t end
  local c = {}
  for k, v in pairs(t) do c[k] = copy(v) end
  return c
end

-- params from a template with changes at dotted paths; F.NIL removes a field.
local function with(template, changes)
  local p = copy(template)
  for path, v in pairs(changes) do
    local target, key = p, nil
    for part in path:gmatch("[^.]+") do
      if key then
        if type(target[key]) ~= "table" then target[key] = {} end
        target = target[key]
      end
      key = part
    end
    if v == F.NIL then target[key] = nil else target[key] = v end
  end
  return p
end

local BUSI = {
  stock_name = "满100减10", goods_name = "全场通用", stock_type = "NORMAL",
  coupon_code_mode = "WECHATPAY_MODE", out_request_no = "1900000001_20240520_0001",
  coupon_use_rule = {
    coupon_available_time = { available_begin_time = "2024-05-20T00:00:00+08:00",
      available_end_time = "2024-06-20T00:00:00+08:00" },
    fixed_normal_coupon = { discount_amount = 1000, transaction_minimum = 10000 },
    use_method = "OFF_LINE",
  },
  stock_send_rule = { max_coupons = 100, max_coupons_per_user = 1 },
}

local BUSI_BODY = '{"stock_name":"满100减10","belong_merchant":"1900000001","goods_name":"全场通用",'
  .. '"stock_type":"NORMAL","coupon_use_rule":{"coupon_available_time":{"available_begin_time":'
  .. '"2024-05-20T00:00:00+08:00","available_end_time":"2024-06-20T00:00:00+08:00"},'
  .. '"fixed_normal_coupon":{"discount_amount":1000,"transaction_minimum":10000},"use_method":"OFF_LINE"},'
  .. '"stock_send_rule":{"max_coupons":100,"max_coupons_per_user":1},'
  .. '"out_request_no":"1900000001_20240520_0001","coupon_code_mode":"WECHATPAY_MODE"}'

local FAVOR = {
  stock_name = "满100减10元", available_begin_time = "2024-05-20T00:00:00+08:00",
  available_end_time = "2024-06-20T23:59:59.000+08:00", no_cash = false, stock_type = "NORMAL",
  stock_use_rule = { max_coupons = 100, max_amount = 100000, max_coupons_per_user = 2,
    natural_person_limit = false, prevent_api_abuse = false },
  coupon_use_rule = { fixed_normal_coupon = { coupon_amount = 1000, transaction_minimum = 10001 },
    available_merchants = { "1900000001" } },
}

local FAVOR_BODY = '{"stock_name":"满100减10元","belong_merchant":"1900000001",'
  .. '"available_begin_time":"2024-05-20T00:00:00+08:00","available_end_time":"2024-06-20T23:59:59.000+08:00",'
  .. '"stock_use_rule":{"max_coupons":100,"max_amount":100000,"max_coupons_per_user":2,'
  .. '"natural_person_limit":false,"prevent_api_abuse":false},"coupon_use_rule":{"fixed_normal_coupon":'
  .. '{"coupon_amount":1000,"transaction_minimum":10001},"available_merchants":["1900000001"]},'
  .. '"no_cash":false,"stock_type":"NORMAL","out_request_no":"%s"}'

local function expect_refusal(t, res, err, field)
  assert.is_nil(res)
  assert.equal("invalid_argument", err.kind, tostring(err))
  assert.equal(field, err.field, tostring(err))
  assert.truthy(tostring(err):find(field, 1, true))
  assert.equal(0, #t.calls)
end

describe("argument types", function()
  it("a non-table params, filters or opts raises, naming the argument, and sends nothing", function()
    local b, fv, t = new_client()
    local calls = {
      { b.stocks.create, "x" }, { b.stocks.create, {}, "x" }, { b.stocks.update, "1", "x" },
      { b.stocks.update, "1", {}, "x" }, { b.stocks.update_budget, "1", "x" }, { b.stocks.get, "1", "x" },
      { b.coupons.use, "x" }, { b.coupons.return_coupon, {}, "x" }, { b.coupons.deactivate, 1 },
      { b.coupons.list, "o" }, { b.coupons.page, "o", "x" }, { b.coupons.get, "o", "c", "a", "x" },
      { b.callbacks.set, "x" }, { b.callbacks.get, MCHID, "x" },
      { fv.stocks.create, "x" }, { fv.stocks.start, "1", "x" }, { fv.stocks.pause, "1", 1 },
      { fv.stocks.restart, "1", true }, { fv.stocks.get, "1", "x" }, { fv.stocks.list, "x" },
      { fv.stocks.page, "x" }, { fv.coupons.send, "o", "x" }, { fv.coupons.send, "o", {}, "x" },
      { fv.coupons.list, "o", "x" }, { fv.coupons.page, "o" }, { fv.coupons.get, "o", "1", "a", "x" },
      { fv.callbacks.set, {}, "x" }, { fv.callbacks.get, MCHID, 1 },
    }
    for i, call in ipairs(calls) do
      local ok, msg = pcall(call[1], (table.unpack or unpack)(call, 2))
      assert.is_false(ok, "call " .. i)
      assert.equal("string", type(msg), "call " .. i .. " raised a non-string")
      assert.truthy(msg:find("^bad argument #%d to '"), "call " .. i .. ": " .. msg)
    end
    assert.equal(0, #t.calls)
  end)
end)

describe("busifavor stocks", function()
  it("create sends the protocol bytes, the mchid as belong_merchant, and returns the number", function()
    local b, _, t = new_client(ok_json('{"stock_id":"1286950000000039","create_time":"2024-05-20T13:29:35+08:00"}'))
    local stock, err, meta = b.stocks.create(BUSI)
    assert.is_nil(err)
    assert.equal("1286950000000039", stock.stock_id)
    assert.equal("1900000001_20240520_0001", meta.out_request_no)
    assert.equal(1, #t.calls)
    assert.equal("POST", t.calls[1].method)
    assert.equal("/v3/marketing/busifavor/stocks", t.calls[1].target)
    assert.equal(BUSI_BODY, t.calls[1].body)
    assert.is_nil(t.calls[1].headers["Idempotency-Key"])
    assert.truthy(F.check_signature(t.calls[1]))
  end)

  it("tostring of a failed call shows its request number, as partnership errors show their key", function()
    local b = new_client(function() return F.error_response(400, "PARAM_ERROR", "bad") end)
    local _, err = b.stocks.create(BUSI)
    assert.equal("1900000001_20240520_0001", err.out_request_no)
    assert.truthy(tostring(err):find("out_request_no=1900000001_20240520_0001", 1, true), tostring(err))
  end)

  it("create generates out_request_no and keeps it across a 500 and a dropped connection", function()
    local answers = { function() return F.error_response(500, "SYSTEM_ERROR", "busy") end, reset,
      ok_json('{"stock_id":"1286950000000039","create_time":"2024-05-20T13:29:35+08:00"}') }
    local b, _, t = new_client(function(_, n) return answers[n]() end)
    local stock, err, meta = b.stocks.create(with(BUSI, { out_request_no = F.NIL }))
    assert.is_nil(err)
    assert.truthy(stock)
    assert.truthy(meta.out_request_no:match("^%w+$"))
    assert.equal(32, #meta.out_request_no)
    assert.equal(3, #t.calls)
    local sent = cjson.decode(t.calls[1].body)
    assert.equal(meta.out_request_no, sent.out_request_no)
    assert.equal(t.calls[1].body, t.calls[2].body)
    assert.equal(t.calls[1].body, t.calls[3].body)
    assert.equal(3, meta.attempts)
  end)

  it("a dropped connection is repeated (same bytes) only within max_retries", function()
    local b, _, t = new_client(reset)
    local res, err = b.stocks.create(BUSI, { max_retries = 1 })
    assert.is_nil(res)
    assert.equal("network", err.kind)
    assert.equal("1900000001_20240520_0001", err.out_request_no)
    assert.equal(2, #t.calls)
    assert.equal(t.calls[1].body, t.calls[2].body)
  end)

  it("an API error carries the request number", function()
    local b = new_client(function() return F.error_response(400, "RESOURCE_ALREADY_EXISTS", "批次已存在") end)
    local res, err = b.stocks.create(BUSI)
    assert.is_nil(res)
    assert.equal("RESOURCE_ALREADY_EXISTS", err.code)
    assert.equal("1900000001_20240520_0001", err.out_request_no)
  end)

  it("a signed answer without stock_id is a decode error, not data", function()
    local b = new_client(ok_json('{"create_time":"2024-05-20T13:29:35+08:00"}'))
    local res, err, meta = b.stocks.create(BUSI)
    assert.is_nil(res)
    assert.is_nil(meta) -- a failure returns no meta: what it would say is on err
    assert.equal("decode", err.kind)
    assert.equal("1900000001_20240520_0001", err.out_request_no)
    assert.truthy(err.request_id)
  end)

  it("an unsigned answer is refused", function()
    local b = new_client(function()
      return { status = 200, headers = {}, body = '{"stock_id":"1286950000000039"}' }
    end)
    local res, err = b.stocks.create(BUSI)
    assert.is_nil(res)
    assert.equal("signature", err.kind)
    assert.equal("1900000001_20240520_0001", err.out_request_no)
  end)

  local EMOJI = "\240\159\152\128"
  local refusals = {
    { "stock_name of 22 characters and 66 bytes", { stock_name = string.rep("券", 22) }, "stock_name" },
    { "stock_name with emoji", { stock_name = "券" .. EMOJI }, "stock_name" },
    { "missing goods_name", { goods_name = F.NIL }, "goods_name" },
    { "goods_name of 16", { goods_name = string.rep("a", 16) }, "goods_name" },
    { "unknown stock_type", { stock_type = "CASH" }, "stock_type" },
    { "unknown field", { stockname = "x" }, "stockname" },
    { "out_request_no of 129", { out_request_no = string.rep("n", 129) }, "out_request_no" },
    { "out_request_no of 129", { out_request_no = string.rep("a", 129) }, "out_request_no" },
    { "belong_merchant not digits", { belong_merchant = "19000000a1" }, "belong_merchant" },
    { "amount in yuan", { ["coupon_use_rule.fixed_normal_coupon.discount_amount"] = 10.5 },
      "coupon_use_rule.fixed_normal_coupon.discount_amount" },
    { "amount as a string", { ["coupon_use_rule.fixed_normal_coupon.discount_amount"] = "1000" },
      "coupon_use_rule.fixed_normal_coupon.discount_amount" },
    { "zero amount", { ["coupon_use_rule.fixed_normal_coupon.discount_amount"] = 0 },
      "coupon_use_rule.fixed_normal_coupon.discount_amount" },
    { "rule object for another type", { ["coupon_use_rule.discount_coupon"] =
      { discount_percent = 88, transaction_minimum = 1 } }, "coupon_use_rule.discount_coupon" },
    { "DISCOUNT without discount_coupon", { stock_type = "DISCOUNT" }, "coupon_use_rule.discount_coupon" },
    { "time without offset", { ["coupon_use_rule.coupon_available_time.available_begin_time"] =
      "2024-05-20T00:00:00" }, "coupon_use_rule.coupon_available_time.available_begin_time" },
    { "time with a bad date", { ["coupon_use_rule.coupon_available_time.available_begin_time"] =
      "2024-02-30T00:00:00+08:00" }, "coupon_use_rule.coupon_available_time.available_begin_time" },
    { "end before begin", { ["coupon_use_rule.coupon_available_time.available_end_time"] =
      "2024-05-19T23:59:59+08:00" }, "coupon_use_rule.coupon_available_time.available_end_time" },
    { "window over a year", { ["coupon_use_rule.coupon_available_time.available_end_time"] =
      "2025-05-22T00:00:00+08:00" }, "coupon_use_rule.coupon_available_time.available_end_time" },
    { "per-user above max_coupons", { ["stock_send_rule.max_coupons_per_user"] = 101 },
      "stock_send_rule.max_coupons_per_user" },
    { "out_request_no with a control character", { out_request_no = "POS\1" }, "out_request_no" },
    { "finder_id empty", { display_pattern_info = { finder_info = { finder_id = "" } } },
      "display_pattern_info.finder_info.finder_id" },
    { "boolean as a string", { ["stock_send_rule.prevent_api_abuse"] = "false" }, "stock_send_rule.prevent_api_abuse" },
    { "wait days alone", { ["coupon_use_rule.coupon_available_time.wait_days_after_receive"] = 1 },
      "coupon_use_rule.coupon_available_time.wait_days_after_receive" },
    { "logo not https", { ["display_pattern_info.merchant_logo_url"] = "http://x/y.png" },
      "display_pattern_info.merchant_logo_url" },
    { "entrance_words of 6", { ["custom_entrance.mini_programs_info"] = { mini_programs_appid = "wx1",
      mini_programs_path = "/p", entrance_words = "立即使用优惠" } }, "custom_entrance.mini_programs_info.entrance_words" },
    { "comment with a control character", { comment = "a\27b" }, "comment" },
    { "comment with U+009B (CSI)", { comment = "a\194\155b" }, "comment" },
    { "stock_name with U+0085 (NEL)", { stock_name = "券\194\133" }, "stock_name" },
    { "goods_name with U+009F", { goods_name = "x\194\159" }, "goods_name" },
  }
  for _, case in ipairs(refusals) do
    it("create refuses " .. case[1] .. " without sending", function()
      local b, _, t = new_client()
      local res, err = b.stocks.create(with(BUSI, case[2]))
      expect_refusal(t, res, err, case[3])
    end)
  end

  it("create accepts the looser of conflicting rules", function()
    local b, _, t = new_client(ok_json('{"stock_id":"1","create_time":"x"}'))
    for i, p in ipairs({
      with(BUSI, { stock_name = string.rep("券", 21) }),        -- 21 字 (63 bytes)
      with(BUSI, { stock_name = string.rep("a", 24) }),         -- 24 bytes
      with(BUSI, { ["stock_send_rule.max_coupons"] = F.NIL }),  -- optional in the new docs
      with(BUSI, { ["coupon_use_rule.coupon_available_time.available_begin_time"] = "2024-05-20T00:00:00.120Z" }),
      with(BUSI, { stock_type = "EXCHANGE", ["coupon_use_rule.fixed_normal_coupon"] = F.NIL,
        ["coupon_use_rule.exchange_coupon"] = { exchange_price = 0, transaction_minimum = 1 } }),
      with(BUSI, { comment = "café\194\160¡" }),                -- U+00A0 and U+00A1: past C1
    }) do
      local res, err = b.stocks.create(p)
      assert.is_nil(err, "case " .. i .. ": " .. tostring(err))
      assert.truthy(res)
    end
    assert.equal(6, #t.calls)
  end)

  it("get, update (204) and update_budget send the documented requests", function()
    local answers = {
      ok_json('{"stock_id":"1286950000000039","stock_state":"RUNNING","stock_send_rule":{"max_coupons":100}}'),
      function() return F.response(204, "") end,
      ok_json('{"max_coupons":200}'),
    }
    local b, _, t = new_client(function(_, n) return answers[n]() end)
    local s = assert(b.stocks.get("1286950000000039"))
    assert.equal("RUNNING", s.stock_state)
    local ok, err, meta = b.stocks.update("1286950000000039", { comment = "新说明", out_request_no = "upd1" })
    assert.is_true(ok, tostring(err))
    assert.equal("upd1", meta.out_request_no)
    local budget, berr, bmeta = b.stocks.update_budget("1286950000000039",
      { target_max_coupons = 200, current_max_coupons = s.stock_send_rule.max_coupons })
    assert.is_nil(berr)
    assert.equal(200, budget.max_coupons)
    assert.equal(32, #bmeta.modify_budget_request_no)
    assert.equal("GET", t.calls[1].method)
    assert.equal("/v3/marketing/busifavor/stocks/1286950000000039", t.calls[1].target)
    assert.equal("PATCH", t.calls[2].method)
    assert.equal('{"out_request_no":"upd1","comment":"新说明"}', t.calls[2].body)
    assert.equal("PATCH", t.calls[3].method)
    assert.equal("/v3/marketing/busifavor/stocks/1286950000000039/budget", t.calls[3].target)
    assert.equal('{"target_max_coupons":200,"current_max_coupons":100,"modify_budget_request_no":"'
      .. bmeta.modify_budget_request_no .. '"}', t.calls[3].body)
  end)

  it("update_budget keeps modify_budget_request_no across a dropped connection", function()
    local b, _, t = new_client(function(_, n)
      if n == 1 then return reset() end
      return F.response(200, '{"max_coupons":200}')
    end)
    local res, err, meta = b.stocks.update_budget("1", { target_max_coupons_by_day = 20,
      current_max_coupons_by_day = 10, modify_budget_request_no = "budget-1" })
    assert.is_nil(err)
    assert.equal(200, res.max_coupons)
    assert.equal("budget-1", meta.modify_budget_request_no)
    assert.equal(2, #t.calls)
    assert.equal(t.calls[1].body, t.calls[2].body)
  end)

  for _, case in ipairs({
    { "no target", { current_max_coupons = 1 }, "target_max_coupons" },
    { "target without current", { target_max_coupons = 2 }, "current_max_coupons" },
    { "daily target without current", { target_max_coupons_by_day = 2, current_max_coupons = 1 },
      "current_max_coupons_by_day" },
    { "a negative current", { target_max_coupons = 2, current_max_coupons = -1 }, "current_max_coupons" },
    { "a request number with a line break", { target_max_coupons = 2, current_max_coupons = 1,
      modify_budget_request_no = "b\n1" }, "modify_budget_request_no" },
    { "fractional target", { target_max_coupons = 2.5, current_max_coupons = 1 }, "target_max_coupons" },
  }) do
    it("update_budget refuses " .. case[1] .. " without sending", function()
      local b, _, t = new_client()
      local res, err = b.stocks.update_budget("1", case[2])
      expect_refusal(t, res, err, case[3])
      if not case[2].modify_budget_request_no then assert.equal(32, #err.modify_budget_request_no) end
    end)
  end

  it("refuses bad stock ids and empty updates without sending", function()
    local b, _, t = new_client()
    expect_refusal(t, b.stocks.get(".."), select(2, b.stocks.get("..")), "stock_id")
    expect_refusal(t, nil, select(2, b.stocks.get(12345)), "stock_id")
    expect_refusal(t, nil, select(2, b.stocks.get(string.rep("1", 21))), "stock_id")
    expect_refusal(t, nil, select(2, b.stocks.update("1", { out_request_no = "a" })), "params")
    expect_refusal(t, nil, select(2, b.stocks.update("1", { stock_send_rule = { max_coupons = 1 } })),
      "stock_send_rule.max_coupons")
    assert.has_error(function() b.stocks.create("params") end)
    assert.has_error(function() b.stocks.create(BUSI, "opts") end)
  end)
end)

describe("busifavor coupons and callbacks", function()
  local USE = { coupon_code = "sxxe34343434", stock_id = "100088", appid = "wx1234567890abcdef",
    use_time = "2024-05-20T13:29:35+08:00", openid = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" }

  it("use, return_coupon and deactivate carry their request numbers across a 500", function()
    local answers = {
      '{"stock_id":"100088","openid":"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o","wechatpay_use_time":"2024-05-20T13:29:36+08:00"}',
      '{"wechatpay_return_time":"2024-05-21T13:29:35+08:00"}',
      '{"wechatpay_deactivate_time":"2024-05-22T13:29:35+08:00"}',
    }
    local seen = 0
    local b, _, t = new_client(function(_, n)
      if n % 2 == 1 then return F.error_response(500, "SYSTEM_ERROR", "busy") end
      seen = seen + 1
      return F.response(200, answers[seen])
    end)
    local used, err, meta = b.coupons.use(USE)
    assert.is_nil(err)
    assert.equal("100088", used.stock_id)
    local returned, rerr, rmeta = b.coupons.return_coupon({ coupon_code = "sxxe34343434", stock_id = "100088",
      return_request_no = "ret-1" })
    assert.is_nil(rerr)
    assert.truthy(returned.wechatpay_return_time)
    local _, derr, dmeta = b.coupons.deactivate({ coupon_code = "sxxe34343434", stock_id = "100088",
      deactivate_reason = "活动下线" })
    assert.is_nil(derr)
    assert.equal(6, #t.calls)
    local paths = { "/use", "/use", "/return", "/return", "/deactivate", "/deactivate" }
    for i, p in ipairs(paths) do
      assert.equal("POST", t.calls[i].method)
      assert.equal("/v3/marketing/busifavor/coupons" .. p, t.calls[i].target)
    end
    for i = 1, 5, 2 do assert.equal(t.calls[i].body, t.calls[i + 1].body) end
    assert.equal('{"coupon_code":"sxxe34343434","stock_id":"100088","appid":"wx1234567890abcdef",'
      .. '"use_time":"2024-05-20T13:29:35+08:00","use_request_no":"' .. meta.use_request_no
      .. '","openid":"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"}', t.calls[1].body)
    assert.equal("ret-1", rmeta.return_request_no)
    assert.equal('{"coupon_code":"sxxe34343434","stock_id":"100088","deactivate_request_no":"'
      .. dmeta.deactivate_request_no .. '","deactivate_reason":"活动下线"}', t.calls[5].body)
  end)

  for _, case in ipairs({
    { "use without appid", "use", with(USE, { appid = F.NIL }), "appid" },
    { "use without use_time", "use", with(USE, { use_time = F.NIL }), "use_time" },
    { "use with a date-only time", "use", with(USE, { use_time = "2024-05-20" }), "use_time" },
    { "use with coupon_code of 129", "use", with(USE, { coupon_code = string.rep("1", 129) }), "coupon_code" },
    { "use with a bad use_request_no", "use", with(USE, { use_request_no = "a\0b" }), "use_request_no" },
    { "use with a use_request_no of 129", "use", with(USE, { use_request_no = string.rep("u", 129) }),
      "use_request_no" },
    { "return without stock_id", "return_coupon", { coupon_code = "1" }, "stock_id" },
    { "deactivate with reason of 65", "deactivate", { coupon_code = "1", stock_id = "2",
      deactivate_reason = string.rep("因", 65) }, "deactivate_reason" },
  }) do
    it("refuses " .. case[1] .. " without sending", function()
      local b, _, t = new_client()
      local res, err = b.coupons[case[2]](case[3])
      expect_refusal(t, res, err, case[4])
    end)
  end

  it("list pages lazily by page index with the caller as creator_merchant", function()
    local pages = {
      '{"data":[{"coupon_code":"c1"},{"coupon_code":"c2"}],"total_count":5,"offset":0,"limit":2}',
      '{"data":[{"coupon_code":"c3"},{"coupon_code":"c4"}],"total_count":5,"offset":1,"limit":2}',
      '{"data":[{"coupon_code":"c5"}],"total_count":5,"offset":2,"limit":2}',
    }
    local b, _, t = new_client(function(_, n) return F.response(200, pages[n]) end)
    local it_ = b.coupons.list("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", { appid = "wx1234567890abcdef", limit = 2,
      coupon_state = "SENDED" })
    assert.equal(0, #t.calls) -- lazy: nothing before the first step
    local got = {}
    for c in it_ do got[#got + 1] = c.coupon_code end
    assert.same({ "c1", "c2", "c3", "c4", "c5" }, got)
    assert.equal(3, #t.calls)
    assert.equal("/v3/marketing/busifavor/users/oUpF8uMuAJO_M2pxb1Q9zNjWeS6o/coupons?appid=wx1234567890abcdef"
      .. "&coupon_state=SENDED&creator_merchant=1900000001&offset=0&limit=2", t.calls[1].target)
    assert.truthy(t.calls[3].target:find("&offset=2&limit=2", 1, true))
  end)

  it("list raises the structured error inside the loop and stops on an empty page", function()
    local b = new_client(function(_, n)
      if n == 1 then return F.response(200, '{"data":[{"coupon_code":"c1"}],"total_count":3,"offset":0,"limit":1}') end
      return F.error_response(403, "NOAUTH", "无权限")
    end)
    local seen = 0
    local ok, err = pcall(function()
      for _ in b.coupons.list("o1", { appid = "wx1", limit = 1 }) do seen = seen + 1 end
    end)
    assert.is_false(ok)
    assert.equal(1, seen)
    assert.equal("api", err.kind)
    assert.equal("NOAUTH", err.code)
    local e = new_client(ok_json('{"total_count":0,"offset":0,"limit":20}'))
    local n = 0
    for _ in e.coupons.list("o1", { appid = "wx1" }) do n = n + 1 end
    assert.equal(0, n)
    assert.has_error(function() b.coupons.list("o1", {}) end)
    assert.has_error(function() b.coupons.list("o1", { appid = "wx1", coupon_state = "USEd" }) end)
  end)

  it("a page whose numbers are not integers is a decode error", function()
    local b = new_client(ok_json('{"data":[],"total_count":"5","offset":0,"limit":20}'))
    local res, err, meta = b.coupons.page("o1", { appid = "wx1", sender_merchant = "1900000002" })
    assert.is_nil(res)
    assert.is_nil(meta)
    assert.equal("decode", err.kind)
    assert.equal("total_count", err.field)
  end)

  it("get, callbacks.set and callbacks.get send the documented requests", function()
    local b, _, t = new_client(ok_json('{"mchid":"1900000001","notify_url":"https://example.com/cb"}'))
    assert.truthy(b.coupons.get("o/1", "code 1", "wx1"))
    assert.truthy(b.callbacks.set({ notify_url = "https://example.com/cb" }))
    assert.truthy(b.callbacks.get())
    assert.equal("/v3/marketing/busifavor/users/o%2F1/coupons/code%201/appids/wx1", t.calls[1].target)
    assert.equal("/v3/marketing/busifavor/callbacks", t.calls[2].target)
    assert.equal('{"mchid":"1900000001","notify_url":"https://example.com/cb"}', t.calls[2].body)
    assert.equal("/v3/marketing/busifavor/callbacks?mchid=1900000001", t.calls[3].target)
    local _, err = b.callbacks.set({ notify_url = "ftp://example.com/cb" })
    assert.equal("notify_url", err.field)
    assert.equal(3, #t.calls)
  end)
end)

describe("favor stocks", function()
  it("create sends the protocol bytes and keeps out_request_no across a 500 and a dropped connection", function()
    local answers = { function() return F.error_response(500, "SYSTEM_ERROR", "busy") end, reset,
      ok_json('{"stock_id":"9856000","create_time":"2024-05-20T13:29:35+08:00"}') }
    local _, fv, t = new_client(function(_, n) return answers[n]() end)
    local stock, err, meta = fv.stocks.create(FAVOR)
    assert.is_nil(err)
    assert.equal("9856000", stock.stock_id)
    assert.equal(3, #t.calls)
    assert.equal("/v3/marketing/favor/coupon-stocks", t.calls[1].target)
    assert.equal(string.format(FAVOR_BODY, meta.out_request_no), t.calls[1].body)
    assert.equal(t.calls[1].body, t.calls[3].body)
  end)

  local refusals = {
    { "max_amount not amount x count", { ["stock_use_rule.max_amount"] = 99999 }, "stock_use_rule.max_amount" },
    { "threshold not above the amount", { ["coupon_use_rule.fixed_normal_coupon.transaction_minimum"] = 1000 },
      "coupon_use_rule.fixed_normal_coupon.transaction_minimum" },
    { "per-user above total", { ["stock_use_rule.max_coupons_per_user"] = 101 },
      "stock_use_rule.max_coupons_per_user" },
    { "daily budget above total", { ["stock_use_rule.max_amount_by_day"] = 100001 },
      "stock_use_rule.max_amount_by_day" },
    { "window over 90 days", { available_end_time = "2024-08-19T00:00:01+08:00" }, "available_end_time" },
    { "end before begin", { available_end_time = "2024-05-19T00:00:00+08:00" }, "available_end_time" },
    { "stock_name of 21", { stock_name = string.rep("a", 21) }, "stock_name" },
    { "stock_name with a comma", { stock_name = "满100,减10" }, "stock_name" },
    { "no_cash missing", { no_cash = F.NIL }, "no_cash" },
    { "NORMAL without fixed_normal_coupon", { ["coupon_use_rule.fixed_normal_coupon"] = F.NIL },
      "coupon_use_rule.fixed_normal_coupon" },
    { "an empty available_merchants", { ["coupon_use_rule.available_merchants"] = {} },
      "coupon_use_rule.available_merchants" },
    { "trade_type unknown", { ["coupon_use_rule.trade_type"] = { "POS" } }, "coupon_use_rule.trade_type[1]" },
    { "MINI_PROGRAM without path", { pattern_info = { description = "d", jump_target = "MINI_PROGRAM",
      mini_program_appid = "wx1" } }, "pattern_info.mini_program_path" },
    { "time with a bad offset", { available_begin_time = "2024-05-20T00:00:00+0800" }, "available_begin_time" },
  }
  for _, case in ipairs(refusals) do
    it("create refuses " .. case[1] .. " without sending", function()
      local _, fv, t = new_client()
      local res, err = fv.stocks.create(with(FAVOR, case[2]))
      expect_refusal(t, res, err, case[3])
      assert.equal(32, #err.out_request_no)
    end)
  end

  -- max_amount = coupon_amount × max_coupons, with factors whose product is past 2^53 (and
  -- past 2^64, where 5.3+ integers wrap), as integers and as floats; nil, err on every one.
  local function amounts(coupon_amount, max_coupons, max_amount)
    return with(FAVOR, { ["stock_use_rule.max_coupons"] = max_coupons, ["stock_use_rule.max_amount"] = max_amount,
      ["coupon_use_rule.fixed_normal_coupon"] = { coupon_amount = coupon_amount,
        transaction_minimum = coupon_amount + 1 } })
  end
  local overflows = {
    { "a product that wraps to max_amount in 64-bit integers", 4294967296, 4294967297, 4294967296 },
    { "float factors whose product has no integer value", 2 ^ 52, 2 ^ 52, 2 ^ 53 - 1 },
    { "the largest factors", 2 ^ 53 - 2, 2 ^ 53 - 1, 2 ^ 53 - 1 },
    { "a product of exactly 2^53", 2 ^ 26, 2 ^ 27, 2 ^ 53 - 1 },
    { "a product one past the largest amount", 3, 3002399751580330, 9007199254740991 },
  }
  for _, case in ipairs(overflows) do
    it("create refuses " .. case[1] .. " without raising or sending", function()
      local _, fv, t = new_client()
      local ok, res, err = pcall(fv.stocks.create, amounts(case[2], case[3], case[4]))
      assert.is_true(ok, tostring(res))
      expect_refusal(t, res, err, "stock_use_rule.max_amount")
      -- The message shows the exact product, or says it is past 2^53: never garbage.
      local shown = tostring(err):match("max_coupons %((.-)%)")
      local product = (case[2] * 1.0) * case[3] -- in doubles: 5.3+ integers would wrap
      if product < 2 ^ 53 then
        assert.equal(string.format("%.0f", product), shown)
      else
        assert.equal("which is 2^53 or more, past any amount", shown)
      end
    end)
  end

  it("create accepts max_amount = coupon_amount × max_coupons up to 2^53 - 1", function()
    local _, fv, t = new_client(ok_json('{"stock_id":"9856000","create_time":"x"}'))
    assert.truthy(fv.stocks.create(amounts(3, 3002399751580330, 9007199254740990)))
    assert.truthy(fv.stocks.create(amounts(2 ^ 26 * 1.0, 2 ^ 26 - 1, 2 ^ 52 - 2 ^ 26)))
    assert.equal(2, #t.calls)
    assert.truthy(t.calls[1].body:find('"max_amount":9007199254740990', 1, true))
  end)

  it("start, pause, restart and get use the creator mchid and retry a dropped connection", function()
    local _, fv, t = new_client(function(_, n)
      if n == 1 then return reset() end
      return F.response(200, '{"stock_id":"9856000","status":"running"}')
    end)
    assert.truthy(fv.stocks.start("9856000"))
    assert.truthy(fv.stocks.pause("9856000", { stock_creator_mchid = "1900000002" }))
    assert.truthy(fv.stocks.restart("9856000"))
    local s = assert(fv.stocks.get("9856000"))
    assert.equal("running", s.status)
    assert.equal(5, #t.calls)
    local want = { "start", "start", "pause", "restart" }
    for i, verb in ipairs(want) do
      assert.equal("POST", t.calls[i].method)
      assert.equal("/v3/marketing/favor/stocks/9856000/" .. verb, t.calls[i].target)
    end
    assert.equal('{"stock_creator_mchid":"1900000001"}', t.calls[1].body)
    assert.equal(t.calls[1].body, t.calls[2].body)
    assert.equal('{"stock_creator_mchid":"1900000002"}', t.calls[3].body)
    assert.equal("/v3/marketing/favor/stocks/9856000?stock_creator_mchid=1900000001", t.calls[5].target)
    local _, err = fv.stocks.start("9856000", { stock_creator_mchid = "abc" })
    assert.equal("opts.stock_creator_mchid", err.field)
    _, err = fv.stocks.start("9856000", { creator = "1" })
    assert.equal("opts.creator", err.field)
    assert.equal(5, #t.calls)
  end)

  it("list pages by page index at most 10 a page", function()
    local function page(offset, n)
      local items = {}
      for i = 1, n do items[i] = string.format('{"stock_id":"%d"}', offset * 10 + i) end
      return string.format('{"data":[%s],"total_count":23,"offset":%d,"limit":10}', table.concat(items, ","), offset)
    end
    local _, fv, t = new_client(function(_, n) return F.response(200, page(n - 1, n == 3 and 3 or 10)) end)
    local count = 0
    for s in fv.stocks.list{ status = "running", create_start_time = "2024-05-01T00:00:00+08:00" } do
      count = count + 1
      assert.equal(tostring(count), s.stock_id)
    end
    assert.equal(23, count)
    assert.equal(3, #t.calls)
    assert.equal("/v3/marketing/favor/stocks?offset=0&limit=10&stock_creator_mchid=1900000001"
      .. "&create_start_time=2024-05-01T00%3A00%3A00%2B08%3A00&status=running", t.calls[1].target)
    assert.truthy(t.calls[3].target:find("?offset=2&limit=10&", 1, true))
    assert.has_error(function() fv.stocks.list{ limit = 11 } end)
    assert.has_error(function() fv.stocks.list{ status = "RUNNING" } end)
    local res, err = fv.stocks.page{ offset = -1 }
    assert.is_nil(res)
    assert.equal("offset", err.field)
  end)
end)

describe("favor coupons, callbacks and the callback events", function()
  local SEND = { stock_id = "9856000", appid = "wx233544546545989" }

  it("send keeps out_request_no across a 500 and a dropped connection", function()
    local answers = { function() return F.error_response(500, "SYSTEM_ERROR", "busy") end, reset,
      ok_json('{"coupon_id":"9867041"}') }
    local _, fv, t = new_client(function(_, n) return answers[n]() end)
    local coupon, err, meta = fv.coupons.send("2323dfsdf342342", SEND)
    assert.is_nil(err)
    assert.equal("9867041", coupon.coupon_id)
    assert.equal(3, #t.calls)
    assert.equal("/v3/marketing/favor/users/2323dfsdf342342/coupons", t.calls[1].target)
    assert.equal('{"stock_id":"9856000","out_request_no":"' .. meta.out_request_no
      .. '","appid":"wx233544546545989","stock_creator_mchid":"1900000001"}', t.calls[1].body)
    assert.equal(t.calls[1].body, t.calls[2].body)
    assert.equal(t.calls[1].body, t.calls[3].body)
  end)

  it("a send that fails reports the out_request_no to repeat it with", function()
    local _, fv = new_client(function() return F.error_response(403, "NOT_ENOUGH", "批次预算不足") end)
    local res, err = fv.coupons.send("o1", with(SEND, { out_request_no = "send-42" }))
    assert.is_nil(res)
    assert.equal("NOT_ENOUGH", err.code)
    assert.equal("send-42", err.out_request_no)
  end)

  for _, case in ipairs({
    { "coupon_value", with(SEND, { coupon_value = 100 }), "coupon_value" },
    { "a missing appid", with(SEND, { appid = F.NIL }), "appid" },
    { "a numeric stock_id", with(SEND, { stock_id = 9856000 }), "stock_id" },
    { "a bad out_request_no", with(SEND, { out_request_no = "中文" }), "out_request_no" },
    { "a bad option", SEND, "opts.timeout", { timeout = 0 } },
  }) do
    it("send refuses " .. case[1] .. " without sending", function()
      local _, fv, t = new_client()
      local res, err = fv.coupons.send("o1", case[2], case[4])
      expect_refusal(t, res, err, case[3])
    end)
  end

  it("get and list query a user's coupons", function()
    local pages = {
      '{"data":[{"coupon_id":"1","stock_id":"9856000"}],"total_count":2,"offset":0,"limit":1}',
      '{"data":[{"coupon_id":"2","stock_id":"9856000"}],"total_count":2,"offset":1,"limit":1}',
    }
    local _, fv, t = new_client(function(_, n)
      if n == 1 then return F.response(200, '{"coupon_id":"9867041","status":"SENDED"}') end
      return F.response(200, pages[n - 1])
    end)
    local c = assert(fv.coupons.get("o1", "9867041", "wx233544546545989"))
    assert.equal("SENDED", c.status)
    local ids = {}
    for coupon in fv.coupons.list("o1", { appid = "wx233544546545989", stock_id = "9856000", limit = 1 }) do
      ids[#ids + 1] = coupon.coupon_id
    end
    assert.same({ "1", "2" }, ids)
    assert.equal(3, #t.calls)
    assert.equal("/v3/marketing/favor/users/o1/coupons/9867041?appid=wx233544546545989", t.calls[1].target)
    assert.equal("/v3/marketing/favor/users/o1/coupons?appid=wx233544546545989&stock_id=9856000"
      .. "&creator_mchid=1900000001&offset=0&limit=1", t.calls[2].target)
    assert.equal("/v3/marketing/favor/users/o1/coupons?appid=wx233544546545989&stock_id=9856000"
      .. "&creator_mchid=1900000001&offset=1&limit=1", t.calls[3].target)
  end)

  it("callbacks.set refuses a query string; set and get send the documented requests", function()
    local _, fv, t = new_client(ok_json('{"notify_url":"https://example.com/cb","mchid":"1900000001"}'))
    local res, err = fv.callbacks.set({ notify_url = "https://example.com/cb?x=1" })
    expect_refusal(t, res, err, "notify_url")
    assert.truthy(fv.callbacks.set({ notify_url = "https://example.com/cb", switch = true }))
    assert.truthy(fv.callbacks.get("1900000002"))
    assert.equal("/v3/marketing/favor/callbacks", t.calls[1].target)
    assert.equal('{"mchid":"1900000001","notify_url":"https://example.com/cb","switch":true}', t.calls[1].body)
    assert.equal("/v3/marketing/favor/callbacks?mchid=1900000002", t.calls[2].target)
  end)

  -- A callback as WeChat Pay sends it: resource encrypted with the APIv3 key, body signed.
  local function callback(event_type, resource, aad)
    local nonce = "abcdefghijkl"
    local body = cjson.encode({ id = "EV-2018022511223320873", create_time = "2024-05-20T13:29:35+08:00",
      event_type = event_type, resource_type = "encrypt-resource", summary = "通知",
      resource = { original_type = "coupon", algorithm = "AEAD_AES_256_GCM", nonce = nonce,
        associated_data = aad,
        ciphertext = assert(core.aes_gcm_encrypt(F.APIV3, nonce, aad, cjson.encode(resource))) } })
    local resp = F.response(200, body)
    local headers = {}
    for k, v in pairs(resp.headers) do headers[k:lower()] = v end
    return headers, body
  end

  it("COUPON.USE and COUPON.SEND come typed out of client.notify.parse", function()
    local b, fv, _, c = new_client()
    local h, body = callback("COUPON.USE", { stock_creator_mchid = MCHID, stock_id = "9856000",
      coupon_id = "9867041", status = "USED", consume_information = { transaction_id = "4200000" } }, "")
    local n = assert(c.notify.parse(h, body))
    local used = assert(fv.use_event(n))
    assert.equal("9867041", used.coupon_id)
    assert.equal("4200000", used.consume_information.transaction_id)
    local _, err = b.send_event(n)
    assert.equal("event_type", err.field)
    h, body = callback("COUPON.SEND", { event_type = "EVENT_TYPE_BUSICOUPON_SEND", coupon_code = "c1",
      stock_id = "1286950000000039", send_channel = "BUSICOUPON_SEND_CHANNEL_NEW_ONE",
      send_merchant = MCHID }, "coupon")
    local sent = assert(b.send_event(assert(c.notify.parse(h, body))))
    assert.equal("c1", sent.coupon_code)
    assert.equal("BUSICOUPON_SEND_CHANNEL_NEW_ONE", sent.send_channel) -- an open set: passed through
    _, err = fv.use_event({ event_type = "COUPON.USE", resource_data = { stock_id = "1" } })
    assert.equal("resource", err.field)
  end)
end)
