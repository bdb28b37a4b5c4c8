-- The shapes the coupon API once refused and the official sources allow (issue 19, the
-- coupons audit): each is sent through the typed calls over HTTPS and must reach the
-- sandbox and succeed there. Also the single-coupon calls of both products over HTTPS:
-- 商家券 use, query, return and deactivate of a MERCHANT_API code longer than 32
-- characters, and 代金券 查询单张券.
local sandbox = require("spec.support.sandbox")
local stocks = require("spec.support.stocks")
local h = require("spec.helpers")

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

local rfc3339 = stocks.rfc3339

-- Run fn and assert it succeeded with exactly one request seen by the sandbox.
local function reaches(fn)
  local before = sb:stats().requests
  local data, err, meta = fn()
  assert.is_nil(err, tostring(err))
  assert.truthy(data)
  assert.equal(before + 1, sb:stats().requests)
  return data, meta
end

local serial = 0
local function busi_params(over)
  serial = serial + 1
  return stocks.busifavor_params({ out_request_no = "loose-" .. serial }, over)
end

describe("formerly refused 商家券 shapes reach the sandbox", function()
  it("request numbers of any printable characters (create, update, budget)", function()
    local stock, meta = reaches(function()
      return client.busifavor.stocks.create(busi_params{ out_request_no = "POS.20240520.0001" })
    end)
    assert.equal("POS.20240520.0001", meta.out_request_no)
    local _, umeta = reaches(function()
      return client.busifavor.stocks.update(stock.stock_id, { comment = "新说明", out_request_no = "ORD:123" })
    end)
    assert.equal("ORD:123", umeta.out_request_no)
    local res, bmeta = reaches(function()
      return client.busifavor.stocks.update_budget(stock.stock_id, { target_max_coupons = 150,
        current_max_coupons = 100, modify_budget_request_no = "2024/05/20-0001" })
    end)
    assert.equal(150, res.max_coupons)
    assert.equal("2024/05/20-0001", bmeta.modify_budget_request_no)
  end)

  it("B4: both pairs at once, a current_* of 0 for a stock without a daily cap", function()
    local stock = reaches(function() return client.busifavor.stocks.create(busi_params()) end)
    -- The official page's own example: both pairs in one call.
    local res = reaches(function()
      return client.busifavor.stocks.update_budget(stock.stock_id, { target_max_coupons = 300,
        current_max_coupons = 100, target_max_coupons_by_day = 50, current_max_coupons_by_day = 0 })
    end)
    assert.same({ max_coupons = 300, max_coupons_by_day = 50 }, res)
    -- A current_* of the other pair, alongside one target.
    res = reaches(function()
      return client.busifavor.stocks.update_budget(stock.stock_id, { target_max_coupons_by_day = 60,
        current_max_coupons_by_day = 50, current_max_coupons = 300 })
    end)
    assert.equal(60, res.max_coupons_by_day)
    local s = assert(client.busifavor.stocks.get(stock.stock_id))
    assert.equal(300, s.stock_send_rule.max_coupons)
    assert.equal(60, s.stock_send_rule.max_coupons_by_day)
  end)

  it("finder_info with one field and a long id, MINI_PROGRAMS alone, per-user above total", function()
    local rule = busi_params().coupon_use_rule
    rule.use_method = "MINI_PROGRAMS"
    local stock = reaches(function()
      return client.busifavor.stocks.create(busi_params{
        coupon_use_rule = rule,
        stock_send_rule = { max_coupons = 1, max_coupons_per_user = 2 },
        display_pattern_info = { finder_info = { finder_id = string.rep("f", 140) } },
      })
    end)
    local s = assert(client.busifavor.stocks.get(stock.stock_id))
    assert.equal("MINI_PROGRAMS", s.coupon_use_rule.use_method)
    assert.equal(140, #s.display_pattern_info.finder_info.finder_id)
    assert.equal(2, s.stock_send_rule.max_coupons_per_user)
    reaches(function()
      return client.busifavor.stocks.update(stock.stock_id, { out_request_no = "upd.1",
        display_pattern_info = { finder_info = { finder_video_id = string.rep("v", 200) } } })
    end)
  end)
end)

describe("商家券 single-coupon calls over HTTPS with a MERCHANT_API code of 100 characters", function()
  it("B5 use, B7 query, B16 return, B17 deactivate", function()
    local stock = reaches(function()
      return client.busifavor.stocks.create(busi_params{ coupon_code_mode = "MERCHANT_API" })
    end)
    local id = stock.stock_id
    local code = string.rep("C", 60) .. string.rep("7", 40)
    local res, status = sb:control("POST", "/busifavor/claim", { stock_id = id, openid = OPENID,
      appid = APPID, coupon_code = code })
    assert.equal(200, status, res and res.error)
    local c = reaches(function() return client.busifavor.coupons.get(OPENID, code, APPID) end)
    assert.equal(code, c.coupon_code)
    assert.equal("SENDED", c.coupon_state)
    local used, meta = reaches(function()
      return client.busifavor.coupons.use{ coupon_code = code, stock_id = id, appid = APPID,
        use_time = rfc3339(os.time()), use_request_no = "POS.20240520.0001" }
    end)
    assert.equal(OPENID, used.openid)
    assert.equal("POS.20240520.0001", meta.use_request_no)
    assert.equal("USED", assert(client.busifavor.coupons.get(OPENID, code, APPID)).coupon_state)
    local _, rmeta = reaches(function()
      return client.busifavor.coupons.return_coupon{ coupon_code = code, stock_id = id,
        return_request_no = "ORD:123" }
    end)
    assert.equal("ORD:123", rmeta.return_request_no)
    assert.equal("SENDED", assert(client.busifavor.coupons.get(OPENID, code, APPID)).coupon_state)
    local off = reaches(function()
      return client.busifavor.coupons.deactivate{ coupon_code = code, stock_id = id,
        deactivate_request_no = "2024/05/20-0001", deactivate_reason = "活动下线" }
    end)
    assert.truthy(off.wechatpay_deactivate_time)
    local after = assert(client.busifavor.coupons.get(OPENID, code, APPID))
    assert.equal("DEACTIVATED", after.coupon_state)
    assert.equal("2024/05/20-0001", after.deactivate_request_no)
  end)
end)

describe("代金券 over HTTPS", function()
  local function favor_params(over)
    serial = serial + 1
    local now = os.time()
    local p = {
      stock_name = "满50减5", out_request_no = "fvl-" .. serial,
      available_begin_time = rfc3339(now), available_end_time = rfc3339(now + 30 * 86400),
      stock_use_rule = { max_coupons = 5, max_amount = 2500, max_coupons_per_user = 2,
                         natural_person_limit = false, prevent_api_abuse = false },
      coupon_use_rule = { fixed_normal_coupon = { coupon_amount = 500, transaction_minimum = 5000 } },
      no_cash = false, stock_type = "NORMAL",
    }
    for k, v in pairs(over or {}) do p[k] = v end
    return p
  end

  it("F1 create with 60 available merchants reaches the sandbox", function()
    local p = favor_params()
    local m = { sb.config.mchid }
    for i = 2, 60 do m[i] = "19000000" .. string.format("%02d", i) end
    p.coupon_use_rule.available_merchants = m
    local stock = reaches(function() return client.favor.stocks.create(p) end)
    assert.equal("unactivated", assert(client.favor.stocks.get(stock.stock_id)).status)
  end)

  it("F12 queries one coupon, before and after it is used", function()
    local stock = assert(client.favor.stocks.create(favor_params()))
    assert(client.favor.stocks.start(stock.stock_id))
    local sent = assert(client.favor.coupons.send(OPENID, { stock_id = stock.stock_id, appid = APPID }))
    local c = reaches(function() return client.favor.coupons.get(OPENID, sent.coupon_id, APPID) end)
    assert.equal(sent.coupon_id, c.coupon_id)
    assert.equal(stock.stock_id, c.stock_id)
    assert.equal("SENDED", c.status)
    local _, status = sb:control("POST", "/favor/redeem", { coupon_id = sent.coupon_id, openid = OPENID })
    assert.equal(200, status)
    assert.equal("USED", assert(client.favor.coupons.get(OPENID, sent.coupon_id, APPID)).status)
    local data, err = client.favor.coupons.get(OPENID, "99999999", APPID)
    assert.is_nil(data)
    assert.equal("api", err.kind)
    assert.equal(404, err.status)
  end)
end)
