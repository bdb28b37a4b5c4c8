--- Coupon stocks in the sandbox for the campaign specs (13, 24): `campaign run` and
-- `campaign terminate` read the stock before the first grant, so a campaign needs a real one.
-- Not a spec itself.
local M = {}

local clients = setmetatable({}, { __mode = "k" })

local function rfc3339(t)
  return os.date("!%Y-%m-%dT%H:%M:%S+08:00", t + 8 * 3600)
end

local CREATE = {
  BUSIFAVOR_STOCK = function(c, now)
    return c.busifavor.stocks.create{ stock_name = "满100减10元", goods_name = "全场通用", stock_type = "NORMAL",
      coupon_code_mode = "WECHATPAY_MODE", coupon_use_rule = {
        coupon_available_time = { available_begin_time = rfc3339(now - 60),
                                  available_end_time = rfc3339(now + 30 * 86400) },
        fixed_normal_coupon = { discount_amount = 1000, transaction_minimum = 10000 }, use_method = "OFF_LINE" },
      stock_send_rule = { max_coupons = 100, max_coupons_per_user = 2 } }
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
