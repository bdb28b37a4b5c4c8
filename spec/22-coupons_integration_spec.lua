-- The typed coupon API (client.busifavor, client.favor) end to end against the sandbox over
-- HTTPS: typed results, refusals that send nothing, the stock and coupon state machines,
-- replay by request number, retry safety when a create was processed but its answer lost,
-- and both callbacks received on 127.0.0.1 and read with the typed helpers.
local sandbox = require("spec.support.sandbox")
local stocks = require("spec.support.stocks")
local h = require("spec.helpers")

local APPID = "wxd678efh567hg6787"
local OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"

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

local function api_error(status, code, data, err)
  assert.is_nil(data)
  assert.equal("api", err.kind)
  assert.equal(status, err.status)
  assert.equal(code, err.code)
  return err
end

-- Run fn, assert it was refused naming `field` and that the sandbox saw no API request.
local function refused(field, fn)
  local before = sb:stats().requests
  local data, err = fn()
  assert.is_nil(data)
  assert.equal("invalid_argument", err.kind)
  assert.equal(field, err.field)
  assert.equal(before, sb:stats().requests)
  return err
end

-- Callbacks arrive at an HTTPS listener on 127.0.0.1 with the sandbox's own server
-- certificate (the client only takes https:// notify URLs; the sandbox verifies its CA).
local listener = require("spec.support.listener")
local function listen() return listener.listen("https") end
local function receive(srv) return listener.receive(srv, client, listener.tls(sb)) end

-- Run fn(srv, url) and close the listener whatever happens.
local function with_listener(fn)
  local srv, url = listen()
  local ok, err = pcall(fn, srv, url)
  srv:close()
  assert(ok, err)
end

describe("client.busifavor against the sandbox", function()
  local serial = 0
  local function params(over)
    serial = serial + 1
    return stocks.busifavor_params({ out_request_no = "bf22-" .. serial, notify_config = { notify_appid = APPID } },
      over)
  end
  local function create(over)
    local stock, err = client.busifavor.stocks.create(params(over))
    assert.is_nil(err)
    return stock.stock_id
  end
  local function claim(stock_id, openid)
    local res, status = sb:control("POST", "/busifavor/claim",
                                   { stock_id = stock_id, openid = openid or OPENID, appid = APPID })
    assert.equal(200, status)
    return res
  end

  it("B1/B2: creates a stock with the typed result and reads it back", function()
    local p = params()
    local stock, err, meta = client.busifavor.stocks.create(p)
    assert.is_nil(err)
    assert.matches("^%d+$", stock.stock_id)
    assert.equal(p.out_request_no, meta.out_request_no)
    local s = assert(client.busifavor.stocks.get(stock.stock_id))
    assert.equal(stock.stock_id, s.stock_id)
    assert.equal("RUNNING", s.stock_state)
    assert.equal(sb.config.mchid, s.belong_merchant)
    assert.equal(100, s.stock_send_rule.max_coupons)
    api_error(404, "RESOURCE_NOT_EXISTS", client.busifavor.stocks.get("1234567890123456"))
  end)

  it("B1: a generated out_request_no is returned and repeats the same create", function()
    local p = params()
    p.out_request_no = nil
    local stock, _, meta = client.busifavor.stocks.create(p)
    assert.truthy(stock)
    assert.truthy(meta.out_request_no)
    p.out_request_no = meta.out_request_no
    assert.equal(stock.stock_id, assert(client.busifavor.stocks.create(p)).stock_id)
  end)

  it("B1: replays by out_request_no and refuses the same number with other params", function()
    local p = params()
    local first = assert(client.busifavor.stocks.create(p))
    assert.equal(first.stock_id, assert(client.busifavor.stocks.create(p)).stock_id)
    local other = params{ out_request_no = p.out_request_no, goods_name = "另一个" }
    local data, err = client.busifavor.stocks.create(other)
    api_error(400, "RESOURCE_ALREADY_EXISTS", data, err)
    assert.equal(p.out_request_no, err.out_request_no)
  end)

  it("refuses bad input naming the field and sends nothing", function()
    refused("stock_type", function() return client.busifavor.stocks.create(params{ stock_type = "FREE" }) end)
    refused("out_request_no", function()
      return client.busifavor.stocks.create(params{ out_request_no = "bad\nno" }) -- a control character
    end)
    refused("stock_id", function() return client.busifavor.stocks.get(string.rep("1", 21)) end)
    refused("params", function() return client.busifavor.stocks.update("1234567890123456", {}) end)
    refused("target_max_coupons", function()
      return client.busifavor.stocks.update_budget("1234567890123456", { target_max_coupons = "x",
        current_max_coupons = 1 })
    end)
    refused("coupon_code", function()
      return client.busifavor.coupons.use{ coupon_code = false, appid = APPID, use_time = rfc3339(os.time()) }
    end)
    refused("appid", function() return client.busifavor.coupons.page(OPENID, {}) end)
    refused("notify_url", function()
      return client.busifavor.callbacks.set{ notify_url = "http://example.com/notify" }
    end)
  end)

  it("B3: updates stock information (204 → true) and replays its request number", function()
    local id = create()
    local ok, err, meta = client.busifavor.stocks.update(id, { goods_name = "新品", out_request_no = "m22-1" })
    assert.is_nil(err)
    assert.is_true(ok)
    assert.equal("m22-1", meta.out_request_no)
    assert.equal("新品", assert(client.busifavor.stocks.get(id)).goods_name)
    local data, rerr = client.busifavor.stocks.update(id, { goods_name = "别的", out_request_no = "m22-1" })
    api_error(400, "RESOURCE_ALREADY_EXISTS", data, rerr)
    assert.equal("m22-1", rerr.out_request_no)
  end)

  it("B4: raises the budget only on the current value (compare-and-set)", function()
    local id = create()
    local s = assert(client.busifavor.stocks.get(id))
    local cur = s.stock_send_rule.max_coupons
    local data, err = client.busifavor.stocks.update_budget(id, { target_max_coupons = cur + 50,
      current_max_coupons = cur + 1 })
    api_error(400, "INVALID_REQUEST", data, err)
    assert.truthy(err.modify_budget_request_no)
    local res, _, meta = client.busifavor.stocks.update_budget(id, { target_max_coupons = cur + 50,
      current_max_coupons = cur })
    assert.same({ max_coupons = cur + 50 }, res)
    assert.truthy(meta.modify_budget_request_no)
    assert.equal(cur + 50, assert(client.busifavor.stocks.get(id)).stock_send_rule.max_coupons)
  end)

  it("B5/B16/B17/B7/B6: uses, returns and deactivates coupons through the typed calls", function()
    local id = create()
    local code = claim(id).coupon_code
    local second = claim(id).coupon_code
    local c = assert(client.busifavor.coupons.get(OPENID, code, APPID))
    assert.equal("SENDED", c.coupon_state)
    assert.equal(id, c.stock_id)
    local use = { coupon_code = code, stock_id = id, appid = APPID, use_time = rfc3339(os.time()),
      use_request_no = "u22-1" }
    local used, err, meta = client.busifavor.coupons.use(use)
    assert.is_nil(err)
    assert.equal(id, used.stock_id)
    assert.truthy(used.wechatpay_use_time)
    assert.equal("u22-1", meta.use_request_no)
    assert.same(used, assert(client.busifavor.coupons.use(use))) -- same number, same answer
    assert.equal("USED", assert(client.busifavor.coupons.get(OPENID, code, APPID)).coupon_state)
    local back = assert(client.busifavor.coupons.return_coupon{ coupon_code = code, stock_id = id })
    assert.truthy(back.wechatpay_return_time)
    assert.equal("SENDED", assert(client.busifavor.coupons.get(OPENID, code, APPID)).coupon_state)
    assert(client.busifavor.coupons.deactivate{ coupon_code = code, stock_id = id })
    assert.equal("DEACTIVATED", assert(client.busifavor.coupons.get(OPENID, code, APPID)).coupon_state)
    local data, derr = client.busifavor.coupons.deactivate{ coupon_code = code, stock_id = id }
    api_error(400, "INVALID_REQUEST", data, derr)
    assert.truthy(derr.deactivate_request_no)
    local seen = {}
    for coupon in client.busifavor.coupons.list(OPENID, { appid = APPID, stock_id = id, limit = 1 }) do
      seen[#seen + 1] = coupon.coupon_code
    end
    table.sort(seen)
    local want = { code, second }
    table.sort(want)
    assert.same(want, seen)
    local page = assert(client.busifavor.coupons.page(OPENID, { appid = APPID, coupon_state = "SENDED" }))
    assert.equal(1, #page.data)
    assert.equal(second, page.data[1].coupon_code)
  end)

  it("B12/B13/B18: sets the callback URL and reads COUPON.SEND with send_event", function()
    with_listener(function(srv, url)
      local set, err = client.busifavor.callbacks.set{ notify_url = url }
      assert.is_nil(err)
      assert.equal(url, set.notify_url)
      assert.same({ mchid = sb.config.mchid, notify_url = url }, assert(client.busifavor.callbacks.get()))
      local id = create()
      local res = claim(id)
      local n, perr = receive(srv)
      assert.is_nil(perr)
      local ev = assert(client.busifavor.send_event(n))
      assert.equal(res.coupon_code, ev.coupon_code)
      assert.equal(id, ev.stock_id)
      assert.equal(OPENID, ev.openid)
      local none, eerr = client.favor.use_event(n)
      assert.is_nil(none)
      assert.equal("event_type", eerr.field)
    end)
  end)
end)

describe("retry safety of a keyed create", function()
  local STOCKS = "/v3/marketing/busifavor/stocks"
  local function params(no)
    local now = os.time()
    return {
      stock_name = "重试券", goods_name = "全场通用", stock_type = "NORMAL",
      coupon_code_mode = "WECHATPAY_MODE", out_request_no = no,
      coupon_use_rule = {
        coupon_available_time = { available_begin_time = rfc3339(now - 60),
                                  available_end_time = rfc3339(now + 86400) },
        fixed_normal_coupon = { discount_amount = 100, transaction_minimum = 1000 },
        use_method = "OFF_LINE",
      },
      stock_send_rule = { max_coupons = 10, max_coupons_per_user = 1 },
    }
  end
  -- The create requests the sandbox logged, with their out_request_no and status.
  local function creates()
    local out = {}
    for _, r in ipairs(sb:requests()) do
      if r.method == "POST" and r.target == STOCKS then
        out[#out + 1] = { no = r.body:match('"out_request_no":"([^"]*)"'), status = r.status, fault = r.fault }
      end
    end
    return out
  end

  for _, fault in ipairs({ "500", "drop", "500_after", "drop_after" }) do
    it("creates exactly one stock when the first attempt fails (" .. fault .. ")", function()
      sb:fault{ fault = fault, count = 1, path = STOCKS, method = "POST" }
      local p = params("rt-" .. fault) -- once: the times in it must not move between calls
      local stock, err, meta = retrying.busifavor.stocks.create(p)
      assert.is_nil(err)
      -- A dropped reused connection may be re-sent without counting an attempt; the log tells.
      if fault:match("^500") then assert.equal(2, meta.attempts) end
      local log = creates()
      assert.equal(2, #log)
      assert.equal(fault, log[1].fault)
      assert.same({ "rt-" .. fault, "rt-" .. fault }, { log[1].no, log[2].no })
      -- The stored stock, not a second one: the replay answers the id the first attempt made.
      local again = assert(client.busifavor.stocks.create(p))
      assert.equal(stock.stock_id, again.stock_id)
      local other = assert(client.busifavor.stocks.create(params("rt-other-" .. fault)))
      assert.not_equal(stock.stock_id, other.stock_id)
    end)
  end

  it("sends one coupon when the answer to a 代金券 send is dropped after processing", function()
    local now = os.time()
    local stock = assert(client.favor.stocks.create{
      stock_name = "满50减5", available_begin_time = rfc3339(now), available_end_time = rfc3339(now + 86400),
      stock_use_rule = { max_coupons = 5, max_amount = 2500, max_coupons_per_user = 5,
                         natural_person_limit = false, prevent_api_abuse = false },
      coupon_use_rule = { fixed_normal_coupon = { coupon_amount = 500, transaction_minimum = 5000 },
                          available_merchants = { sb.config.mchid } },
      no_cash = false, stock_type = "NORMAL",
    })
    assert(client.favor.stocks.start(stock.stock_id))
    local path = "/v3/marketing/favor/users/" .. OPENID .. "/coupons"
    sb:fault{ fault = "drop_after", count = 1, path = path, method = "POST" }
    local sent, err, meta = retrying.favor.coupons.send(OPENID, { stock_id = stock.stock_id, appid = APPID })
    assert.is_nil(err)
    local sends = 0
    for _, r in ipairs(sb:requests()) do
      if r.method == "POST" and r.target == path then
        sends = sends + 1
        assert.equal(meta.out_request_no, r.body:match('"out_request_no":"([^"]*)"'))
      end
    end
    assert.equal(2, sends)
    assert.equal(1, assert(client.favor.stocks.get(stock.stock_id)).distributed_coupons)
    local ids = {}
    for c in client.favor.coupons.list(OPENID, { appid = APPID, stock_id = stock.stock_id }) do
      ids[#ids + 1] = c.coupon_id
    end
    assert.same({ sent.coupon_id }, ids)
  end)
end)

describe("client.favor against the sandbox", function()
  local serial = 0
  local function params(over)
    serial = serial + 1
    local now = os.time()
    local p = {
      stock_name = "满50减5", out_request_no = "fv22-" .. serial,
      available_begin_time = rfc3339(now), available_end_time = rfc3339(now + 30 * 86400),
      stock_use_rule = { max_coupons = 5, max_amount = 2500, max_coupons_per_user = 2,
                         natural_person_limit = false, prevent_api_abuse = false },
      coupon_use_rule = { fixed_normal_coupon = { coupon_amount = 500, transaction_minimum = 5000 },
                          available_merchants = { sb.config.mchid } },
      no_cash = false, stock_type = "NORMAL",
    }
    for k, v in pairs(over or {}) do p[k] = v end
    return p
  end
  local function create(over)
    local stock, err = client.favor.stocks.create(params(over))
    assert.is_nil(err)
    return stock.stock_id
  end

  it("F1/F7: creates an unactivated stock, replays and refuses a changed replay", function()
    local p = params()
    local stock, err, meta = client.favor.stocks.create(p)
    assert.is_nil(err)
    assert.equal(p.out_request_no, meta.out_request_no)
    assert.equal(stock.stock_id, assert(client.favor.stocks.create(p)).stock_id)
    local data, rerr = client.favor.stocks.create(params{ out_request_no = p.out_request_no, stock_name = "满60减5" })
    api_error(400, "RESOURCE_ALREADY_EXISTS", data, rerr)
    assert.equal(p.out_request_no, rerr.out_request_no)
    local s = assert(client.favor.stocks.get(stock.stock_id))
    assert.equal("unactivated", s.status)
    assert.equal(0, s.distributed_coupons)
  end)

  it("refuses bad input naming the field and sends nothing", function()
    refused("stock_type", function() return client.favor.stocks.create(params{ stock_type = "FREE" }) end)
    refused("stock_id", function() return client.favor.stocks.start("") end)
    refused("coupon_value", function()
      return client.favor.coupons.send(OPENID, { stock_id = "12345678", appid = APPID, coupon_value = 100 })
    end)
    refused("limit", function() return client.favor.stocks.page{ limit = 11 } end)
    refused("appid", function() return client.favor.coupons.page(OPENID, {}) end)
    refused("notify_url", function()
      return client.favor.callbacks.set{ notify_url = "https://example.com/notify?x=1" }
    end)
  end)

  it("F2-F4/F11: starts, pauses and restarts, sending only while running", function()
    local id = create()
    api_error(400, "PARAM_ERROR", client.favor.stocks.pause(id))
    local data, err = client.favor.coupons.send(OPENID, { stock_id = id, appid = APPID })
    api_error(400, "INVALID_REQUEST", data, err)
    assert.truthy(err.out_request_no)
    local started = assert(client.favor.stocks.start(id))
    assert.equal(id, started.stock_id)
    assert.equal("running", assert(client.favor.stocks.get(id)).status)
    assert.truthy(assert(client.favor.stocks.pause(id)).pause_time)
    assert.equal("paused", assert(client.favor.stocks.get(id)).status)
    api_error(400, "INVALID_REQUEST", client.favor.coupons.send(OPENID, { stock_id = id, appid = APPID }))
    assert.truthy(assert(client.favor.stocks.restart(id)).restart_time)
    local sent, serr, meta = client.favor.coupons.send(OPENID, { stock_id = id, appid = APPID,
      out_request_no = "s22-1" })
    assert.is_nil(serr)
    assert.equal("s22-1", meta.out_request_no)
    assert.equal(sent.coupon_id, assert(client.favor.coupons.send(OPENID, { stock_id = id, appid = APPID,
      out_request_no = "s22-1" })).coupon_id)
    assert.equal(1, assert(client.favor.stocks.get(id)).distributed_coupons)
  end)

  it("F6: lists stocks through the iterator, ten at most per page", function()
    local made = {}
    for i = 1, 12 do made[create()] = i end
    local n = 0
    for s in client.favor.stocks.list() do
      assert.truthy(made[s.stock_id])
      n = n + 1
    end
    assert.equal(12, n)
    local page = assert(client.favor.stocks.page{ limit = 10 })
    assert.equal(10, #page.data)
    assert.equal(12, page.total_count)
  end)

  it("F18/F19/F20/F12/F13: COUPON.USE after a redeem, read with use_event; coupons listed", function()
    with_listener(function(srv, url)
      local set, err = client.favor.callbacks.set{ notify_url = url }
      assert.is_nil(err)
      assert.equal(url, set.notify_url)
      assert.same({ mchid = sb.config.mchid, notify_url = url }, assert(client.favor.callbacks.get()))
      local id = create()
      assert(client.favor.stocks.start(id))
      local a = assert(client.favor.coupons.send(OPENID, { stock_id = id, appid = APPID })).coupon_id
      local b = assert(client.favor.coupons.send(OPENID, { stock_id = id, appid = APPID })).coupon_id
      local _, status = sb:control("POST", "/favor/redeem", { coupon_id = a, openid = OPENID,
        transaction_id = "4200000000000000000000000022" })
      assert.equal(200, status)
      local n, perr = receive(srv)
      assert.is_nil(perr)
      local ev = assert(client.favor.use_event(n))
      assert.equal(a, ev.coupon_id)
      assert.equal(id, ev.stock_id)
      assert.equal("USED", ev.status)
      assert.equal("4200000000000000000000000022", ev.consume_information.transaction_id)
      assert.is_nil((client.busifavor.send_event(n)))
      assert.equal("USED", assert(client.favor.coupons.get(OPENID, a, APPID)).status)
      local seen = {}
      for c in client.favor.coupons.list(OPENID, { appid = APPID, limit = 1 }) do seen[#seen + 1] = c.coupon_id end
      assert.same({ a, b }, seen)
      local page = assert(client.favor.coupons.page(OPENID, { appid = APPID, status = "SENDED" }))
      assert.same({ b }, { page.data[1].coupon_id })
    end)
  end)
end)
