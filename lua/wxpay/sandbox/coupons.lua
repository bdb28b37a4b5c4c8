--- The coupon products' APIv3 routes, for wxpay.sandbox.api: their paths carry
-- parameters (`/v3/marketing/busifavor/stocks/{stock_id}`), so they are matched by pattern.
local common = require("wxpay.sandbox.coupons_common")

local M = {}

-- { pattern, METHOD = handler(state, req, auth, captures) } lists, one per product.
local ROUTES = { require("wxpay.sandbox.coupons_busifavor").routes,
                 require("wxpay.sandbox.coupons_favor").routes,
                 require("wxpay.sandbox.paygift").routes,
                 require("wxpay.sandbox.coupons_codes").routes,
                 require("wxpay.sandbox.coupons_subsidy").routes,
                 require("wxpay.sandbox.coupons_flows").routes }

--- The route for a request path, and the path parameters it captured.
-- @tparam string path
-- @treturn[1] table route, with a handler per method
-- @treturn[1] table captures
-- @treturn[2] nil when no coupon route matches
function M.route(path)
  for _, routes in ipairs(ROUTES) do
    for _, route in ipairs(routes) do
      local captures = { path:match(route[1]) }
      if captures[1] then return route, captures end
    end
  end
  return nil
end

M.unknown_stock = common.unknown_stock

return M
