--- 商家券 营销补差 in the sandbox: pay receipts (B22 pay, B23 list, B24 query) and return
-- receipts (B25 return, B26 query). A pay is replayed by `out_subsidy_no` and a return by
-- `out_subsidy_return_no`, like a stock create: the same number with the same body is the
-- stored answer, with another body `400 RESOURCE_ALREADY_EXISTS`; money never moves twice.
local common = require("wxpay.sandbox.coupons_common")
local util = require("wxpay.sandbox.util")

local M = {}

local err = common.error
-- "单张券补差金额不能超过5000元".
local MAX_AMOUNT = 500000

local function book(state)
  local p = common.state(state.store).busifavor
  if not p.subsidy then p.subsidy = { pay = {}, pay_order = {}, returns = {}, returned = {} } end
  return p, p.subsidy
end

-- Check the fields pay and return share; returns the checker.
local function check_common(body, number, charset)
  local c = common.checker(body)
  c:string("stock_id", 1, 20, true)
  c:string("coupon_code", 1, 128, true)
  c:string("transaction_id", 1, 64, true)
  c:string("payer_merchant", 1, 32, true, "^%d+$")
  c:string("payee_merchant", 1, 32, true, "^%d+$")
  c:int("amount", 1, MAX_AMOUNT, true)
  c:string("description", 1, 1000, true)
  if charset then c:request_no(number, 128) else c:request_number(number, 128) end
  return c
end

-- The coupon of the body (in its stock, of a NORMAL or DISCOUNT stock the caller may pay
-- for), or nil and the answer.
local function coupon_of(p, body, auth)
  local coupon = p.coupons[body.coupon_code]
  if not coupon or coupon.stock_id ~= body.stock_id then return nil, err(404, "RESOURCE_NOT_EXISTS", "券不存在") end
  local stock = p.stocks[coupon.stock_id]
  if stock.fields.stock_type == "EXCHANGE" then return nil, err(400, "INVALID_REQUEST", "换购券不支持补差") end
  if auth.mchid ~= body.payer_merchant then return nil, err(403, "NOAUTH", "无权限") end
  return coupon
end

local function receipt(r)
  local t = {}
  for k, v in pairs(r) do t[k] = v end
  return t
end

--- B22 `POST /v3/marketing/busifavor/subsidy/pay-receipts`.
function M.pay(state, req, auth)
  local body, e = common.body(req)
  if not body then return e end
  local c = check_common(body, "out_subsidy_no", false)
  if c:error() then return c:error() end
  local cs = common.state(state.store)
  local answer, handle = common.replay(cs, { auth.mchid, "busifavor.subsidy_pay", body.out_subsidy_no }, body,
                                       "补差付款单号已存在")
  if answer then return answer end
  local p, b = book(state)
  local _, cerr = coupon_of(p, body, auth)
  if cerr then return cerr end
  local now = common.time(util.now())
  local id = common.new_id(20, b.pay)
  local r = { subsidy_receipt_id = id, stock_id = body.stock_id, coupon_code = body.coupon_code,
              transaction_id = body.transaction_id, payer_merchant = body.payer_merchant,
              payee_merchant = body.payee_merchant, amount = body.amount, description = body.description,
              status = "PAY_RECEIPT_SUCCESS", success_time = now, out_subsidy_no = body.out_subsidy_no,
              create_time = now }
  b.pay[id] = r
  b.pay_order[#b.pay_order + 1] = id
  b.returned[id] = 0
  return common.remember(cs, handle, common.ok(receipt(r)))
end

--- B23 `GET …/subsidy/pay-receipts?stock_id=&coupon_code=[&out_subsidy_no=]`.
function M.list(state, req)
  local _, params = util.parse_target(req.target)
  local c = common.checker(params, "", "query")
  c:string("stock_id", 1, 20, true)
  c:string("coupon_code", 1, 128, true)
  if c:error() then return c:error() end
  local _, b = book(state)
  local data = {}
  for _, id in ipairs(b.pay_order) do
    local r = b.pay[id]
    if r.stock_id == params.stock_id and r.coupon_code == params.coupon_code
      and (not params.out_subsidy_no or r.out_subsidy_no == params.out_subsidy_no) then
      data[#data + 1] = receipt(r)
    end
  end
  return common.ok{ data = #data > 0 and data or nil, total_count = #data }
end

-- The handler that reads one receipt of `b[kind]` by the id in the path; `missing`, the 404 message.
local function getter(kind, missing)
  return function(state, _, auth, captures)
    local _, b = book(state)
    local r = b[kind][util.percent_decode(captures[1])]
    if not r or r.payer_merchant ~= auth.mchid then return err(404, "RESOURCE_NOT_EXISTS", missing) end
    return common.ok(receipt(r))
  end
end

--- B24 `GET …/subsidy/pay-receipts/{subsidy_receipt_id}`.
M.get = getter("pay", "补差付款单不存在")

-- The pay receipt a return refers to: the latest of its coupon (or nil).
local function paid(b, body)
  for i = #b.pay_order, 1, -1 do
    local r = b.pay[b.pay_order[i]]
    if r.stock_id == body.stock_id and r.coupon_code == body.coupon_code
      and r.transaction_id == body.transaction_id then
      return r
    end
  end
end

--- B25 `POST /v3/marketing/busifavor/subsidy/return-receipts`: at most what was paid.
function M.give_back(state, req, auth)
  local body, e = common.body(req)
  if not body then return e end
  local c = check_common(body, "out_subsidy_return_no", true)
  c:string("refund_id", 1, 64, true)
  if c:error() then return c:error() end
  local cs = common.state(state.store)
  local answer, handle = common.replay(cs, { auth.mchid, "busifavor.subsidy_return", body.out_subsidy_return_no },
                                       body, "补差回退单号已存在")
  if answer then return answer end
  local p, b = book(state)
  local _, cerr = coupon_of(p, body, auth)
  if cerr then return cerr end
  local r = paid(b, body)
  if not r then return err(404, "RESOURCE_NOT_EXISTS", "补差付款单不存在") end
  if b.returned[r.subsidy_receipt_id] + body.amount > r.amount then
    return err(400, "INVALID_REQUEST", "回退金额超过补差金额")
  end
  b.returned[r.subsidy_receipt_id] = b.returned[r.subsidy_receipt_id] + body.amount
  r.status = b.returned[r.subsidy_receipt_id] == r.amount and "PAY_RECEIPT_FULL_RETURN" or "PAY_RECEIPT_PARTIAL_RETURN"
  local now = common.time(util.now())
  local id = common.new_id(20, b.returns)
  local back = { subsidy_return_receipt_id = id, stock_id = body.stock_id, coupon_code = body.coupon_code,
                 transaction_id = body.transaction_id, refund_id = body.refund_id,
                 payer_merchant = body.payer_merchant, payee_merchant = body.payee_merchant,
                 amount = body.amount, description = body.description, status = "RETURN_RECEIPT_SUCCESS",
                 return_done_time = now, subsidy_receipt_id = r.subsidy_receipt_id,
                 out_subsidy_return_no = body.out_subsidy_return_no, return_create_time = now }
  b.returns[id] = back
  return common.remember(cs, handle, common.ok(receipt(back)))
end

--- B26 `GET …/subsidy/return-receipts/{subsidy_return_receipt_id}`.
M.get_return = getter("returns", "补差回退单不存在")

M.routes = {
  { "^/v3/marketing/busifavor/subsidy/pay%-receipts$", POST = M.pay, GET = M.list },
  { "^/v3/marketing/busifavor/subsidy/pay%-receipts/([^/]+)$", GET = M.get },
  { "^/v3/marketing/busifavor/subsidy/return%-receipts$", POST = M.give_back },
  { "^/v3/marketing/busifavor/subsidy/return%-receipts/([^/]+)$", GET = M.get_return },
}

return M
