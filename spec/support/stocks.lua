--- Coupon stocks and clients of the sandbox for the coupon specs. The campaign specs (13, 24):
-- `campaign run` and `campaign terminate` read the stock before the first grant, so a campaign
-- needs a real one. The coupon integration specs (22, 41, 50, 51): their clients, the times
-- and the 商家券 create parameters. Not a spec itself.
local M = {}

local clients = setmetatable({}, { __mode = "k" })

--- The time `t` as the API writes it (RFC 3339, Beijing time).
function M.rfc3339(t)
  return os.date("!%Y-%m-%dT%H:%M:%S+08:00", t + 8 * 3600)
end
local rfc3339 = M.rfc3339

--- Clients of the sandbox `sb`: one that never retries, and one that retries twice without
-- real back-off waits.
-- @treturn table,table `client`, `retrying`
function M.clients(sb)
  local wxpay = require("wxpay")
  local cfg = {}
  for k, v in pairs(sb.config) do cfg[k] = v end
  cfg.max_retries = 0
  local client = assert(wxpay.new(cfg))
  cfg.max_retries = 2
  cfg.sleep = function() end
  return client, assert(wxpay.new(cfg))
end

--- 商家券 create parameters (满100减10元, usable from a minute ago for 30 days, 100 coupons,
-- 2 a user), with the fields of `fields` then of `over` (optional) over them.
function M.busifavor_params(fields, over)
  local now = os.time()
  local p = { stock_name = "满100减10元", goods_name = "全场通用", stock_type = "NORMAL",
    coupon_code_mode = "WECHATPAY_MODE", coupon_use_rule = {
      coupon_available_time = { available_begin_time = rfc3339(now - 60),
                                available_end_time = rfc3339(now + 30 * 86400) },
      fixed_normal_coupon = { discount_amount = 1000, transaction_minimum = 10000 }, use_method = "OFF_LINE" },
    stock_send_rule = { max_coupons = 100, max_coupons_per_user = 2 } }
  for k, v in pairs(fields or {}) do p[k] = v end
  for k, v in pairs(over or {}) do p[k] = v end
  return p
end

local CREATE = {
  BUSIFAVOR_STOCK = function(c)
    return c.busifavor.stocks.create(M.busifavor_params())
  end,
  FAVOR_STOCK = function(c, now)
    return c.favor.stocks.create{ stock_name = "满50减5", available_begin_time = rfc3339(now + 120),
      available_end_time = rfc3339(now + 30 * 86400),
      stock_use_rule = { max_coupons = 5, max_amount = 2500, max_coupons_per_user = 2, natural_person_limit = false,
                         prevent_api_abuse = false },
      coupon_use_rule = { fixed_normal_coupon = { coupon_amount = 500, transaction_minimum = 5000 } },
      no_cash = false, stock_type = "NORMAL", pattern_info = { description = "每人限领两张" } }
  end,
}

--- Create a stock of `business_type` (`FAVOR_STOCK` or `BUSIFAVOR_STOCK`) in the sandbox `sb`.
-- @treturn string its stock id
function M.create(sb, business_type)
  local c = clients[sb]
  if not c then
    c = assert(require("wxpay").new(sb.config))
    clients[sb] = c
  end
  local data, err = CREATE[business_type](c, os.time())
  assert(data, tostring(err))
  return data.stock_id
end

return M
