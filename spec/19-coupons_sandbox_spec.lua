-- The sandbox's coupon products, 商家券 (busifavor) and 代金券 (favor), over real HTTPS
-- through the generic signed call client.request: stock state machines, budgets and
-- per-user limits, request-number replay, paging, the COUPON.SEND and COUPON.USE callbacks
-- (received on 127.0.0.1 and checked with client.notify.parse), and the partnerships rule
-- for stocks the sandbox never created.
local sandbox = require("spec.support.sandbox")
local stocks = require("spec.support.stocks")
local h = require("spec.helpers")
local socket = require("socket")

local APPID = "wxd678efh567hg6787"
local OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"

local sb, client
setup(function()
  sb = sandbox.start{ mode = "combined" }
  client = stocks.clients(sb)
end)
teardown(function()
  if sb then sb:stop() end
  h.cleanup()
end)
before_each(function() sb:reset() end)

local function call(method, path, body, query)
  return client.request{ method = method, path = path, body = body, query = query }
end

local rfc3339 = stocks.rfc3339

-- The API error of a failed call.
local function api_error(status, code, data, err)
  assert.is_nil(data)
  assert.equal("api", err.kind)
  assert.equal(status, err.status)
  assert.equal(code, err.code)
  return err
end

local function copy(t)
  if type(t) ~= "table" then return t end
  local out = {}
  for k, v in pairs(t) do out[k] = copy(v) end
  return out
end

-- Callbacks arrive at a plain-HTTP listener on 127.0.0.1 (spec/support/listener.lua).
local listener = require("spec.support.listener")
local function listen() return listener.listen("http") end
local serve_one = listener.serve_one
local function receive(srv) return listener.receive(srv, client) end

describe("商家券 (busifavor)", function()
  local STOCKS = "/v3/marketing/busifavor/stocks"
  local serial = 0
  local function stock_body(over)
    serial = serial + 1
    local now = os.time()
    local b = {
      stock_name = "满100减10元", belong_merchant = sb.config.mchid, goods_name = "全场通用",
      stock_type = "NORMAL", coupon_code_mode = "WECHATPAY_MODE", out_request_no = "bf-" .. serial,
      coupon_use_rule = {
        coupon_available_time = { available_begin_time = rfc3339(now - 60),
                                  available_end_time = rfc3339(now + 30 * 86400) },
        fixed_normal_coupon = { discount_amount = 1000, transaction_minimum = 10000 },
        use_method = "OFF_LINE",
      },
      stock_send_rule = { max_coupons = 100, max_coupons_per_user = 2 },
    }
    for k, v in pairs(over or {}) do b[k] = v end
    return b
  end
  local function create(over)
    local data, err = call("POST", STOCKS, stock_body(over))
    assert.is_nil(err)
    return data.stock_id
  end
  local function claim(stock_id, openid, extra)
    local spec = { stock_id = stock_id, openid = openid or OPENID, appid = APPID }
    for k, v in pairs(extra or {}) do spec[k] = v end
    return sb:control("POST", "/busifavor/claim", spec)
  end

  it("creates a RUNNING stock, queries it and replays its out_request_no", function()
    local body = stock_body()
    local data, err, meta = call("POST", STOCKS, body)
    assert.is_nil(err)
    assert.equal(200, meta.status)
    assert.matches("^%d+$", data.stock_id)
    assert.equal(16, #data.stock_id)
    local again = assert(call("POST", STOCKS, body))
    assert.same(data, again)
    local other = copy(body)
    other.goods_name = "另一个"
    local e = api_error(400, "RESOURCE_ALREADY_EXISTS", call("POST", STOCKS, other))
    assert.equal("批次已存在", e.message)
    local stock = assert(call("GET", STOCKS .. "/" .. data.stock_id))
    assert.equal("RUNNING", stock.stock_state)
    assert.equal("全场通用", stock.goods_name)
    assert.equal(1000, stock.coupon_use_rule.fixed_normal_coupon.discount_amount)
    assert.equal(0, stock.send_count_information.total_send_num)
    api_error(404, "RESOURCE_NOT_EXISTS", call("GET", STOCKS .. "/1234567890123456"))
  end)

  it("refuses invalid stocks naming the field", function()
    local e = api_error(400, "PARAM_ERROR", call("POST", STOCKS, stock_body{ goods_name = false }))
    assert.equal("/goods_name", e.detail.field)
    local rule = stock_body().coupon_use_rule
    rule.fixed_normal_coupon = nil
    rule.discount_coupon = { discount_percent = 88, transaction_minimum = 100 }
    e = api_error(400, "PARAM_ERROR", call("POST", STOCKS, stock_body{ coupon_use_rule = rule }))
    assert.equal("/coupon_use_rule/fixed_normal_coupon", e.detail.field)
    e = api_error(400, "PARAM_ERROR", call("POST", STOCKS, stock_body{ stock_type = "FREE" }))
    assert.equal("/stock_type", e.detail.field)
    e = api_error(400, "PARAM_ERROR", call("POST", STOCKS,
      stock_body{ stock_send_rule = { max_coupons = 1, max_coupons_per_user = 101 } }))
    assert.equal("/stock_send_rule/max_coupons_per_user", e.detail.field)
    e = api_error(400, "PARAM_ERROR", call("POST", STOCKS, stock_body{ out_request_no = "bad\1no" }))
    assert.equal("/out_request_no", e.detail.field)
  end)

  it("modifies stock information with a signed 204 and refuses fields that cannot change", function()
    local id = create()
    local data, err, meta = call("PATCH", STOCKS .. "/" .. id, { out_request_no = "m1", goods_name = "新品" })
    assert.is_nil(err)
    assert.equal(204, meta.status)
    assert.same({}, data)
    assert.equal("新品", assert(call("GET", STOCKS .. "/" .. id)).goods_name)
    local e = api_error(400, "PARAM_ERROR", call("PATCH", STOCKS .. "/" .. id,
                                                 { out_request_no = "m2", stock_name = "改名" }))
    assert.equal("/stock_name", e.detail.field)
    api_error(400, "RESOURCE_ALREADY_EXISTS", call("PATCH", STOCKS .. "/" .. id,
                                                   { out_request_no = "m1", goods_name = "别的" }))
  end)

  it("changes the budget only on the current value (compare-and-set)", function()
    local id = create()
    local path = STOCKS .. "/" .. id .. "/budget"
    local req = { target_max_coupons = 200, current_max_coupons = 100, modify_budget_request_no = "b1" }
    local stale = { target_max_coupons = 300, current_max_coupons = 99, modify_budget_request_no = "b2" }
    api_error(400, "INVALID_REQUEST", call("PATCH", path, stale))
    assert.same({ max_coupons = 200 }, assert(call("PATCH", path, req)))
    -- The same request again is the stored answer, though 100 is no longer current.
    assert.same({ max_coupons = 200 }, assert(call("PATCH", path, req)))
    stale.current_max_coupons = 100
    api_error(400, "INVALID_REQUEST", call("PATCH", path, stale))
    assert.equal(200, assert(call("GET", STOCKS .. "/" .. id)).stock_send_rule.max_coupons)
    local e = api_error(400, "PARAM_ERROR", call("PATCH", path,
      { current_max_coupons = 5, modify_budget_request_no = "b3" }))
    assert.equal("/target_max_coupons", e.detail.field)
  end)

  it("sends a signed, encrypted COUPON.SEND to the callback URL when a user claims", function()
    local srv, url = listen()
    local ok, err = pcall(function()
      api_error(404, "RESOURCE_NOT_EXISTS", call("GET", "/v3/marketing/busifavor/callbacks"))
      local set = assert(call("POST", "/v3/marketing/busifavor/callbacks", { notify_url = url }))
      assert.equal(url, set.notify_url)
      assert.equal(sb.config.mchid, set.mchid)
      assert.same({ mchid = sb.config.mchid, notify_url = url },
                  assert(call("GET", "/v3/marketing/busifavor/callbacks")))
      local id = create{ notify_config = { notify_appid = APPID } }
      local res, status = claim(id)
      assert.equal(200, status)
      assert.equal("SUCCESS", res.code)
      local n, perr = receive(srv)
      assert.is_nil(perr)
      assert.equal("COUPON.SEND", n.event_type)
      assert.equal("coupon", n.resource.associated_data)
      local d = n.resource_data
      assert.equal("EVENT_TYPE_BUSICOUPON_SEND", d.event_type)
      assert.equal(res.coupon_code, d.coupon_code)
      assert.equal(22, #d.coupon_code)
      assert.equal(id, d.stock_id)
      assert.equal(OPENID, d.openid)
      assert.equal(sb.config.mchid, d.send_merchant)
    end)
    srv:close()
    assert(ok, err)
  end)

  it("records the decoded answer of a chunked reply, and `attempts` is always an array", function()
    local srv, url = listen()
    local ok, err = pcall(function()
      assert(call("POST", "/v3/marketing/busifavor/callbacks", { notify_url = url }))
      local res, status, raw = sb:control("POST", "/busifavor/claim", { stock_id = create(), openid = OPENID,
        appid = APPID, max_attempts = 1 })
      assert.equal(200, status, raw)
      assert.truthy(raw:find('"attempts":[]', 1, true), raw) -- not {}
      local answer = '{"code":"FAIL","message":"失败"}'
      serve_one(srv, function() return 500, answer, true end)
      local rec, list
      for _ = 1, 100 do
        list = sb:control("GET", "/callbacks")
        rec = list.callbacks[res.callback.id]
        if rec.state ~= "pending" then break end
        socket.sleep(0.05)
      end
      assert.equal("rejected", rec.state)
      assert.equal(answer, rec.attempts[1].body)
      assert.equal(500, rec.attempts[1].status)
    end)
    srv:close()
    assert(ok, err)
  end)

  it("tries COUPON.SEND 3 times by default and records every answer", function()
    local srv, url = listen()
    local ok, err = pcall(function()
      assert(call("POST", "/v3/marketing/busifavor/callbacks", { notify_url = url }))
      local res = claim(create(), OPENID, { retry_scale = 0.01 })
      for _ = 1, 3 do serve_one(srv, function() return 500, "" end) end
      local rec
      for _ = 1, 100 do
        rec = sb:control("GET", "/callbacks").callbacks[res.callback.id]
        if rec.state ~= "pending" then break end
        socket.sleep(0.05)
      end
      assert.equal("rejected", rec.state)
      assert.equal("COUPON.SEND", rec.event_type)
      assert.same({ 500, 500, 500 }, { rec.attempts[1].status, rec.attempts[2].status, rec.attempts[3].status })
      assert.is_nil(rec.attempts[4])
    end)
    srv:close()
    assert(ok, err)
  end)

  it("refuses a callback URL that is not https", function()
    local e = api_error(400, "PARAM_ERROR", call("POST", "/v3/marketing/busifavor/callbacks",
                                                 { notify_url = "ftp://example.com/notify" }))
    assert.equal("/notify_url", e.detail.field)
  end)

  it("keeps per-user and total limits and answers a repeated claim with the same coupon", function()
    local id = create{ stock_send_rule = { max_coupons = 3, max_coupons_per_user = 2 } }
    local first = claim(id, "u1", { out_request_no = "r1" })
    local dup = claim(id, "u1", { out_request_no = "r1" })
    assert.equal("DUPREQUEST", dup.code)
    assert.equal(first.coupon_code, dup.coupon_code)
    assert.equal("SUCCESS", claim(id, "u1").code)
    local res, status = claim(id, "u1")
    assert.equal(400, status)
    assert.equal("MAXQUOTA", res.code)
    assert.equal("SUCCESS", claim(id, "u2").code)
    assert.equal("NOTENOUGH", claim(id, "u3").code)
    assert.equal(3, assert(call("GET", STOCKS .. "/" .. id)).send_count_information.total_send_num)
    -- The budget cannot go below what was sent.
    api_error(400, "INVALID_REQUEST", call("PATCH", STOCKS .. "/" .. id .. "/budget",
      { target_max_coupons = 2, current_max_coupons = 3, modify_budget_request_no = "b" }))
  end)

  it("answers control requests with wrong types with 400, and keeps serving", function()
    local id = create()
    for _, extra in ipairs{ { send_channel = 5 }, { max_attempts = "many" }, { retry_scale = {} },
                            { send_merchant = false } } do
      local res, status = claim(id, OPENID, extra)
      assert.equal(400, status)
      assert.equal("PARAM_ERROR", res.code)
    end
    local _, status = sb:control("POST", "/favor/balance", { balance = "lots" })
    assert.equal(400, status)
    assert.equal("SUCCESS", claim(id).code)
    local e = api_error(400, "PARAM_ERROR", call("PATCH", STOCKS .. "/" .. id,
                                                 { out_request_no = "m1", notify_config = "wx1" }))
    assert.equal("/notify_config", e.detail.field)
  end)

  it("uses, returns and deactivates coupons along the coupon state machine", function()
    local id = create()
    local code = claim(id).coupon_code
    local use = { coupon_code = code, stock_id = id, appid = APPID, use_time = rfc3339(os.time()),
                  use_request_no = "use1" }
    local data = assert(call("POST", "/v3/marketing/busifavor/coupons/use", use))
    assert.equal(OPENID, data.openid)
    assert.same(data, assert(call("POST", "/v3/marketing/busifavor/coupons/use", use)))
    local second = copy(use)
    second.use_request_no = "use2"
    local e = api_error(400, "RESOURCE_ALREADY_EXISTS", call("POST", "/v3/marketing/busifavor/coupons/use", second))
    assert.equal("券已被其他订单核销", e.message)
    local back = { coupon_code = code, stock_id = id, return_request_no = "ret1" }
    assert.truthy(assert(call("POST", "/v3/marketing/busifavor/coupons/return", back)).wechatpay_return_time)
    back.return_request_no = "ret2"
    api_error(400, "INVALID_REQUEST", call("POST", "/v3/marketing/busifavor/coupons/return", back))
    local wrong = copy(second)
    wrong.openid, wrong.use_request_no = "someone-else", "use3"
    api_error(404, "USER_NOT_EXISTS", call("POST", "/v3/marketing/busifavor/coupons/use", wrong))
    local off = { coupon_code = code, stock_id = id, deactivate_request_no = "d1", deactivate_reason = "测试" }
    assert(call("POST", "/v3/marketing/busifavor/coupons/deactivate", off))
    off.deactivate_request_no = "d2"
    api_error(400, "INVALID_REQUEST", call("POST", "/v3/marketing/busifavor/coupons/deactivate", off))
    second.use_request_no = "use4"
    api_error(400, "RESOURCE_ALREADY_EXISTS", call("POST", "/v3/marketing/busifavor/coupons/use", second))
    local one = assert(call("GET", "/v3/marketing/busifavor/users/" .. OPENID .. "/coupons/" .. code
                                   .. "/appids/" .. APPID))
    assert.equal("DEACTIVATED", one.coupon_state)
    assert.equal("测试", one.deactivate_reason)
    api_error(404, "RESOURCE_NOT_EXISTS", call("POST", "/v3/marketing/busifavor/coupons/use",
      { coupon_code = "0000", appid = APPID, use_time = use.use_time, use_request_no = "use5" }))
  end)

  it("refuses to use a coupon outside its window with RULELIMIT", function()
    local rule = stock_body().coupon_use_rule
    rule.coupon_available_time = { available_begin_time = rfc3339(os.time() + 86400),
                                   available_end_time = rfc3339(os.time() + 2 * 86400) }
    local id = create{ coupon_use_rule = rule }
    local code = claim(id).coupon_code
    api_error(403, "RULELIMIT", call("POST", "/v3/marketing/busifavor/coupons/use",
      { coupon_code = code, appid = APPID, use_time = rfc3339(os.time()), use_request_no = "u" }))
  end)

  it("lists a user's coupons page by page and filters them", function()
    local id = create{ stock_send_rule = { max_coupons = 100, max_coupons_per_user = 10 } }
    local codes = {}
    for i = 1, 5 do codes[i] = claim(id).coupon_code end
    local path = "/v3/marketing/busifavor/users/" .. OPENID .. "/coupons"
    local seen = {}
    for offset, size in ipairs{ 2, 2, 1 } do
      local page = assert(call("GET", path, nil, { appid = APPID, creator_merchant = sb.config.mchid,
                                                   limit = 2, offset = offset - 1 }))
      assert.equal(5, page.total_count)
      assert.equal(size, #page.data)
      for _, c in ipairs(page.data) do seen[#seen + 1] = c.coupon_code end
    end
    assert.same(codes, seen)
    local past = assert(call("GET", path, nil, { appid = APPID, creator_merchant = sb.config.mchid,
                                                 limit = 2, offset = 3 }))
    assert.is_nil(past.data)
    assert.equal(5, past.total_count)
    local none = assert(call("GET", path, nil, { appid = APPID, creator_merchant = sb.config.mchid,
                                                 coupon_state = "USED" }))
    assert.equal(0, none.total_count)
    assert.is_nil(none.data)
    api_error(400, "PARAM_ERROR", call("GET", path, nil, { appid = APPID, creator_merchant = sb.config.mchid,
                                                           limit = 51 }))
    local e = api_error(400, "PARAM_ERROR", call("GET", path, nil, { creator_merchant = sb.config.mchid }))
    assert.equal("/appid", e.detail.field)
  end)
end)

describe("代金券 (favor)", function()
  local STOCKS = "/v3/marketing/favor/stocks"
  local serial = 0
  local function stock_body(over)
    serial = serial + 1
    local now = os.time()
    local b = {
      stock_name = "满50减5", belong_merchant = sb.config.mchid,
      available_begin_time = rfc3339(now), available_end_time = rfc3339(now + 30 * 86400),
      stock_use_rule = { max_coupons = 5, max_amount = 2500, max_coupons_per_user = 2,
                         natural_person_limit = false, prevent_api_abuse = false },
      coupon_use_rule = { fixed_normal_coupon = { coupon_amount = 500, transaction_minimum = 5000 },
                          available_merchants = { sb.config.mchid } },
      no_cash = false, stock_type = "NORMAL", out_request_no = "fv-" .. serial,
      pattern_info = { description = "每人限领两张" },
    }
    for k, v in pairs(over or {}) do b[k] = v end
    return b
  end
  local function create(over)
    local data, err = call("POST", "/v3/marketing/favor/coupon-stocks", stock_body(over))
    assert.is_nil(err)
    return data.stock_id
  end
  local function act(id, action)
    return call("POST", STOCKS .. "/" .. id .. "/" .. action, { stock_creator_mchid = sb.config.mchid })
  end
  local function get(id)
    return assert(call("GET", STOCKS .. "/" .. id, nil, { stock_creator_mchid = sb.config.mchid }))
  end
  local send_no = 0
  local function send(id, openid, over)
    send_no = send_no + 1
    local b = { stock_id = id, out_request_no = "s-" .. send_no, appid = APPID,
                stock_creator_mchid = sb.config.mchid }
    for k, v in pairs(over or {}) do b[k] = v end
    return call("POST", "/v3/marketing/favor/users/" .. (openid or OPENID) .. "/coupons", b)
  end

  it("creates an unactivated stock, checks its budget and replays its out_request_no", function()
    local body = stock_body()
    local data = assert(call("POST", "/v3/marketing/favor/coupon-stocks", body))
    assert.equal(8, #data.stock_id)
    assert.same(data, assert(call("POST", "/v3/marketing/favor/coupon-stocks", body)))
    local other = copy(body)
    other.stock_name = "满60减5"
    local e = api_error(400, "RESOURCE_ALREADY_EXISTS", call("POST", "/v3/marketing/favor/coupon-stocks", other))
    assert.equal("创建请求重入，但本次请求与上次请求信息不一致", e.message)
    local stock = get(data.stock_id)
    assert.equal("unactivated", stock.status)
    assert.equal("每人限领两张", stock.description)
    assert.equal(0, stock.distributed_coupons)
    local rule = copy(body.stock_use_rule)
    rule.max_amount = 2400
    e = api_error(400, "PARAM_ERROR", call("POST", "/v3/marketing/favor/coupon-stocks",
                                           stock_body{ stock_use_rule = rule }))
    assert.equal("/stock_use_rule/max_amount", e.detail.field)
    e = api_error(400, "PARAM_ERROR", call("POST", "/v3/marketing/favor/coupon-stocks",
                                           stock_body{ belong_merchant = "1900000002" }))
    assert.equal("/belong_merchant", e.detail.field)
    e = api_error(400, "PARAM_ERROR", call("POST", "/v3/marketing/favor/coupon-stocks",
                                           stock_body{ stock_name = "一二三四五六七八九十" }))
    assert.equal("/stock_name", e.detail.field)
  end)

  it("starts, pauses and restarts along the stock state machine", function()
    local id = create()
    api_error(400, "PARAM_ERROR", act(id, "pause"))
    api_error(400, "PARAM_ERROR", act(id, "restart"))
    api_error(400, "INVALID_REQUEST", send(id))
    local started = assert(act(id, "start"))
    assert.equal(id, started.stock_id)
    assert.same(started, assert(act(id, "start"))) -- idempotent
    assert.equal("running", get(id).status)
    assert.truthy(assert(act(id, "pause")).pause_time)
    local e = api_error(400, "PARAM_ERROR", act(id, "pause"))
    assert.equal("非法的批次状态", e.message)
    api_error(400, "INVALID_REQUEST", send(id))
    api_error(400, "PARAM_ERROR", act(id, "start"))
    assert.truthy(assert(act(id, "restart")).restart_time)
    api_error(400, "PARAM_ERROR", act(id, "restart"))
    assert.equal("running", get(id).status)
    assert.truthy(assert(send(id)).coupon_id)
    api_error(404, "RESOURCE_NOT_EXISTS", act("12345678", "start"))
  end)

  it("locks a 预充值 budget at start and refuses it without balance", function()
    sb:control("POST", "/favor/balance", { balance = 2000 })
    local id = create()
    api_error(403, "NOT_ENOUGH", act(id, "start"))
    assert(act(create{ no_cash = true }, "start"))
    sb:control("POST", "/favor/balance", { balance = 2500 })
    assert(act(id, "start"))
    assert.equal(0, sb:control("GET", "/favor/balance").balance)
  end)

  it("sends coupons within the per-user limit and the budget, replaying out_request_no", function()
    local id = create()
    assert(act(id, "start"))
    local first = assert(send(id, "u1", { out_request_no = "same" }))
    assert.equal(10, #first.coupon_id)
    assert.same(first, assert(send(id, "u1", { out_request_no = "same" })))
    api_error(400, "RESOURCE_ALREADY_EXISTS", send(id, "u1", { out_request_no = "same", appid = "wx0000000000000001" }))
    assert(send(id, "u1"))
    local e = api_error(403, "REQUEST_BLOCKED", send(id, "u1"))
    assert.equal("用户被限领拦截", e.message)
    assert(send(id, "u2"))
    assert(send(id, "u2"))
    assert(send(id, "u3"))
    api_error(403, "NOT_ENOUGH", send(id, "u4"))
    assert.equal(5, get(id).distributed_coupons)
    e = api_error(400, "PARAM_ERROR", send(id, "u5", { coupon_value = 100 }))
    assert.equal("/coupon_value", e.detail.field)
    api_error(404, "RESOURCE_NOT_EXISTS", send("87654321", "u5"))
  end)

  it("lists stocks ten at most per page, filtered by status", function()
    local ids = { create(), create(), create() }
    assert(act(ids[2], "start"))
    local q = { stock_creator_mchid = sb.config.mchid, limit = 2, offset = 0 }
    local page = assert(call("GET", STOCKS, nil, q))
    assert.equal(3, page.total_count)
    assert.same({ ids[1], ids[2] }, { page.data[1].stock_id, page.data[2].stock_id })
    q.offset = 1
    page = assert(call("GET", STOCKS, nil, q))
    assert.same({ ids[3] }, { page.data[1].stock_id })
    assert.equal(1, #page.data)
    page = assert(call("GET", STOCKS, nil, { stock_creator_mchid = sb.config.mchid, limit = 10,
                                             offset = 0, status = "running" }))
    assert.equal(1, page.total_count)
    assert.equal(ids[2], page.data[1].stock_id)
    local e = api_error(400, "PARAM_ERROR", call("GET", STOCKS, nil,
                                                 { stock_creator_mchid = sb.config.mchid, limit = 11, offset = 0 }))
    assert.equal("页大小超过阈值", e.message)
  end)

  it("sends a signed, encrypted COUPON.USE when a user uses a coupon, and lists coupons", function()
    local srv, url = listen()
    local ok, err = pcall(function()
      api_error(404, "RESOURCE_NOT_EXISTS", call("GET", "/v3/marketing/favor/callbacks", nil,
                                                 { mchid = sb.config.mchid }))
      local set = assert(call("POST", "/v3/marketing/favor/callbacks",
                              { mchid = sb.config.mchid, notify_url = url }))
      assert.equal(url, set.notify_url)
      assert.same({ mchid = sb.config.mchid, notify_url = url },
                  assert(call("GET", "/v3/marketing/favor/callbacks", nil, { mchid = sb.config.mchid })))
      local id = create()
      assert(act(id, "start"))
      local a, b = assert(send(id)).coupon_id, assert(send(id)).coupon_id
      local res, status = sb:control("POST", "/favor/redeem", { coupon_id = a, openid = OPENID,
                                                                transaction_id = "4200000000000000000000000001" })
      assert.equal(200, status)
      assert.equal("USED", res.status)
      local n, perr = receive(srv)
      assert.is_nil(perr)
      assert.equal("COUPON.USE", n.event_type)
      assert.equal("", n.resource.associated_data)
      local d = n.resource_data
      assert.equal(a, d.coupon_id)
      assert.equal(id, d.stock_id)
      assert.equal("USED", d.status)
      assert.equal("4200000000000000000000000001", d.consume_information.transaction_id)
      assert.equal(500, d.normal_coupon_information.coupon_amount)
      local _, again = sb:control("POST", "/favor/redeem", { coupon_id = a, openid = OPENID })
      assert.equal(400, again)
      local path = "/v3/marketing/favor/users/" .. OPENID .. "/coupons"
      assert.equal("USED", assert(call("GET", path .. "/" .. a, nil, { appid = APPID })).status)
      api_error(400, "INVALID_REQUEST", call("GET", path .. "/" .. a, nil, { appid = "wx0000000000000001" }))
      local function ids(q)
        q.appid = APPID
        local page = assert(call("GET", path, nil, q))
        local out = {}
        for i, c in ipairs(page.data or {}) do out[i] = c.coupon_id end
        return out, page.total_count
      end
      assert.same({ b }, ids{ creator_mchid = sb.config.mchid, status = "SENDED" })
      assert.same({ a, b }, ids{ creator_mchid = sb.config.mchid, status = "USED" })
      assert.same({ b }, ids{ available_mchid = sb.config.mchid })
      local one, total = ids{ creator_mchid = sb.config.mchid, limit = 1, offset = 1 }
      assert.same({ b }, one)
      assert.equal(2, total)
    end)
    srv:close()
    assert(ok, err)
  end)
end)

describe("partnerships and coupon stocks", function()
  local function build(business_type, stock_id)
    return client.partnerships.build{ partner = { type = "APPID", appid = APPID },
      authorized_data = { business_type = business_type, stock_id = stock_id } }
  end
  local function busifavor_stock()
    local now = os.time()
    local data = assert(call("POST", "/v3/marketing/busifavor/stocks", {
      stock_name = "合作券", belong_merchant = sb.config.mchid, goods_name = "全场",
      stock_type = "NORMAL", coupon_code_mode = "WECHATPAY_MODE", out_request_no = "p1",
      coupon_use_rule = { coupon_available_time = { available_begin_time = rfc3339(now),
                                                    available_end_time = rfc3339(now + 86400) },
                          fixed_normal_coupon = { discount_amount = 100, transaction_minimum = 200 },
                          use_method = "OFF_LINE" },
      stock_send_rule = { max_coupons = 10, max_coupons_per_user = 1 } }))
    return data.stock_id
  end

  it("builds for unknown stocks until the sandbox knows stocks of that product (default auto)", function()
    assert.equal("auto", sb:control("GET", "/config").unknown_stocks)
    assert(build("BUSIFAVOR_STOCK", "2433405"))
    local id = busifavor_stock()
    local rel = assert(build("BUSIFAVOR_STOCK", id))
    assert.equal(id, rel.authorized_data.stock_id)
    local e = api_error(404, "RESOURCE_NOT_EXISTS", build("BUSIFAVOR_STOCK", "2433406"))
    assert.equal("批次不存在", e.message)
    assert(build("FAVOR_STOCK", "9856000")) -- no 代金券 stock yet
  end)

  it("allows or refuses unknown stocks as the unknown_stocks switch says", function()
    sb:configure{ unknown_stocks = "refuse" }
    api_error(404, "RESOURCE_NOT_EXISTS", build("FAVOR_STOCK", "9856000"))
    local id = busifavor_stock()
    assert(build("BUSIFAVOR_STOCK", id))
    sb:configure{ unknown_stocks = "allow" }
    assert(build("BUSIFAVOR_STOCK", "2433406"))
    local _, status = sb:control("POST", "/config", { unknown_stocks = "sometimes" })
    assert.equal(400, status)
  end)

  it("takes the switch from the command line, and reset goes back to it", function()
    local other = sandbox.start{ args = { "--unknown-stocks", "refuse" } }
    local ok, err = pcall(function()
      assert.equal("refuse", other:control("GET", "/config").unknown_stocks)
      other:configure{ unknown_stocks = "allow" }
      other:reset()
      assert.equal("refuse", other:control("GET", "/config").unknown_stocks)
    end)
    other:stop()
    assert(ok, err)
  end)
end)
