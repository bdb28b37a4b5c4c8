--- The route templates of the endpoints the product modules call (method and path template,
-- `{name}` for a path parameter), and `match`, which names the template a product call's
-- filled path came from. The `on_request` events and `wxpay.metrics` label a call with its
-- template, never with an id or a query. spec/30 checks that each template is one of the
-- sandbox's routes and that every product function's path matches one of them.
-- A new product appends its endpoints here.
-- @module wxpay.api.routes

local M = {}

M.list = {
  -- 合作关系 (partnerships)
  { "POST", "/v3/marketing/partnerships/build" },
  { "POST", "/v3/marketing/partnerships/terminate" },
  { "GET", "/v3/marketing/partnerships" },
  -- certificates and media
  { "GET", "/v3/certificates" },
  { "POST", "/v3/marketing/favor/media/image-upload" },
  { "POST", "/v3/merchant/media/upload" },
  -- 商家券 (busifavor)
  { "POST", "/v3/marketing/busifavor/stocks" },
  { "GET", "/v3/marketing/busifavor/stocks/{stock_id}" },
  { "PATCH", "/v3/marketing/busifavor/stocks/{stock_id}" },
  { "PATCH", "/v3/marketing/busifavor/stocks/{stock_id}/budget" },
  { "POST", "/v3/marketing/busifavor/coupons/use" },
  { "POST", "/v3/marketing/busifavor/coupons/return" },
  { "POST", "/v3/marketing/busifavor/coupons/deactivate" },
  { "GET", "/v3/marketing/busifavor/users/{openid}/coupons" },
  { "GET", "/v3/marketing/busifavor/users/{openid}/coupons/{coupon_code}/appids/{appid}" },
  { "POST", "/v3/marketing/busifavor/callbacks" },
  { "GET", "/v3/marketing/busifavor/callbacks" },
  -- 代金券 (favor)
  { "POST", "/v3/marketing/favor/coupon-stocks" },
  { "GET", "/v3/marketing/favor/stocks" },
  { "GET", "/v3/marketing/favor/stocks/{stock_id}" },
  { "POST", "/v3/marketing/favor/stocks/{stock_id}/start" },
  { "POST", "/v3/marketing/favor/stocks/{stock_id}/pause" },
  { "POST", "/v3/marketing/favor/stocks/{stock_id}/restart" },
  { "POST", "/v3/marketing/favor/users/{openid}/coupons" },
  { "GET", "/v3/marketing/favor/users/{openid}/coupons" },
  { "GET", "/v3/marketing/favor/users/{openid}/coupons/{coupon_id}" },
  { "POST", "/v3/marketing/favor/callbacks" },
  { "GET", "/v3/marketing/favor/callbacks" },
  -- 商家券 pre-stored codes, associate (busifavor codes)
  { "POST", "/v3/marketing/busifavor/stocks/{stock_id}/couponcodes" },
  { "GET", "/v3/marketing/busifavor/stocks/{stock_id}/couponcodes" },
  { "GET", "/v3/marketing/busifavor/stocks/{stock_id}/couponcodes/{coupon_code}" },
  { "DELETE", "/v3/marketing/busifavor/stocks/{stock_id}/couponcodes/{coupon_code}" },
  { "POST", "/v3/marketing/busifavor/coupons/associate" },
  { "POST", "/v3/marketing/busifavor/coupons/disassociate" },
  -- 营销补差 (busifavor subsidy)
  { "POST", "/v3/marketing/busifavor/subsidy/pay-receipts" },
  { "GET", "/v3/marketing/busifavor/subsidy/pay-receipts" },
  { "GET", "/v3/marketing/busifavor/subsidy/pay-receipts/{subsidy_receipt_id}" },
  { "POST", "/v3/marketing/busifavor/subsidy/return-receipts" },
  { "GET", "/v3/marketing/busifavor/subsidy/return-receipts/{subsidy_return_receipt_id}" },
  -- 代金券 flows, merchants and items (favor flows)
  { "GET", "/v3/marketing/favor/stocks/{stock_id}/use-flow" },
  { "GET", "/v3/marketing/favor/stocks/{stock_id}/refund-flow" },
  { "GET", "/v3/marketing/favor/stocks/{stock_id}/use-flow-by-day" },
  { "GET", "/v3/marketing/favor/stocks/{stock_id}/refund-flow-by-day" },
  { "GET", "/v3/marketing/favor/stocks/{stock_id}/merchants" },
  { "GET", "/v3/marketing/favor/stocks/{stock_id}/items" },
}
-- 支付有礼 (paygift): from its endpoint declarations.
for _, e in pairs(require("wxpay.api.paygift").ENDPOINTS) do M.list[#M.list + 1] = { e[1], e[2] } end

--- The Lua pattern a template matches: literal parts escaped, `{name}` one path segment.
-- @tparam string template
-- @treturn string an anchored pattern
function M.pattern(template)
  local out = template:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0")
  return "^" .. out:gsub("{[%w_]+}", "[^/]+") .. "$"
end

-- method -> array of { pattern, template, literal length }, most literal first, so a
-- fixed segment (`coupons/use`) wins over a parameter in the same place.
local by_method

local function compile()
  by_method = {}
  for _, e in ipairs(M.list) do
    local t = by_method[e[1]] or {}
    by_method[e[1]] = t
    t[#t + 1] = { M.pattern(e[2]), e[2], #e[2]:gsub("{[%w_]+}", "") }
  end
  for _, t in pairs(by_method) do
    table.sort(t, function(a, b) if a[3] ~= b[3] then return a[3] > b[3] end return a[2] < b[2] end)
  end
end

--- The template of a product call's request target.
-- @tparam string method upper case
-- @tparam string target path, with or without a query
-- @treturn string|nil the declared template, or nil when none matches
function M.match(method, target)
  if not by_method then compile() end
  local path = target:match("^[^?]*")
  for _, e in ipairs(by_method[method] or {}) do
    if path:find(e[1]) then return e[2] end
  end
  return nil
end

return M
