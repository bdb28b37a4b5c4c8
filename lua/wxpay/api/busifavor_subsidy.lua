--- 商家券 营销补差 (subsidy receipts): `client.busifavor.subsidy`. Money moves, so each
-- write carries its request number exactly like a stock create: `out_subsidy_no` (pay) and
-- `out_subsidy_return_no` (return) are taken from `params` when given, generated otherwise,
-- sent in the body, reused on every automatic retry and returned as `meta.<name>` and
-- `err.<name>`; repeating a call with the same number never pays twice.
--
--     local r, err, meta = client.busifavor.subsidy.pay{ stock_id = …, coupon_code = …,
--       transaction_id = …, payer_merchant = …, payee_merchant = …, amount = 100,
--       description = "…" }                                    -- meta.out_subsidy_no
--     client.busifavor.subsidy.pay_receipt(r.subsidy_receipt_id)
--
-- Only merchants granted 营销补差 may call these (the stock's `subsidy` flag). Field rules:
-- docs/coupons.md.
-- @module wxpay.api.busifavor_subsidy

local f = require("wxpay.api.fields")
local calls = require("wxpay.api.coupon_calls")
local schema = require("wxpay.api.busifavor_schema")

local M = {}

local BASE = "/v3/marketing/busifavor/subsidy"
-- No length is stated for the receipt ids WeChat Pay makes: none is invented.
local RECEIPT_ID = f.id(1)

local function keyed(api, fname, path, params, opts, fields, name)
  calls.argcheck(fname, 1, params, "table")
  calls.argcheck(fname, 2, opts, "table?")
  local data, err, meta = calls.keyed_write(api, "POST", BASE .. path, params, opts, fields, name)
  if not data then return nil, err, meta end
  local ok, derr = calls.expect(data, { "status" }, meta)
  if not ok then derr[name] = meta[name]; return nil, derr end
  return data, nil, meta
end

local function read(api, fname, path, name, id, opts)
  calls.argcheck(fname, 2, opts, "table?")
  local seg, err = f.segment(id, name, RECEIPT_ID, api)
  if not seg then return nil, err end
  local o
  o, err = calls.options(api, opts)
  if not o then return nil, err end
  return calls.read(api, BASE .. path .. "/" .. seg, o)
end

--- B22: pay a subsidy (`POST /v3/marketing/busifavor/subsidy/pay-receipts`).
-- @tparam table params `stock_id`, `coupon_code`, `transaction_id`, `payer_merchant`,
--   `payee_merchant`, `amount` (fen), `description`, `out_subsidy_no?`
-- @treturn table|nil the receipt `{ subsidy_receipt_id, status, fail_reason?, … }`
-- @treturn table|nil err (with `out_subsidy_no`)
-- @treturn table|nil meta (with `out_subsidy_no`)
function M.pay(api, params, opts)
  return keyed(api, "pay", "/pay-receipts", params, opts, schema.subsidy_pay, "out_subsidy_no")
end

local PAY_FILTERS = {
  { "stock_id", f.id(1, 20), true },
  { "coupon_code", schema.CODE, true },
  { "out_subsidy_no", f.request_number(128) },
}

--- B23: the pay receipts of one coupon (`GET …/subsidy/pay-receipts?stock_id=&coupon_code=`).
-- @tparam table filters `stock_id`, `coupon_code`, `out_subsidy_no?`
-- @treturn table|nil `{ data = { receipt, … }, total_count }`
function M.pay_receipts(api, filters, opts)
  calls.argcheck("pay_receipts", 1, filters, "table")
  calls.argcheck("pay_receipts", 2, opts, "table?")
  local q, err = f.check(filters, PAY_FILTERS, api.check_utf8)
  if not q then return nil, err end
  local o
  o, err = calls.options(api, opts)
  if not o then return nil, err end
  return calls.read(api, calls.target(api, BASE .. "/pay-receipts", { { "stock_id", q.stock_id },
    { "coupon_code", q.coupon_code }, { "out_subsidy_no", q.out_subsidy_no } }), o)
end

--- B24: one pay receipt (`GET …/subsidy/pay-receipts/{subsidy_receipt_id}`).
function M.pay_receipt(api, subsidy_receipt_id, opts)
  return read(api, "pay_receipt", "/pay-receipts", "subsidy_receipt_id", subsidy_receipt_id, opts)
end

--- B25: return a subsidy (`POST /v3/marketing/busifavor/subsidy/return-receipts`).
-- @tparam table params the pay fields plus `refund_id`, `out_subsidy_return_no?`
-- @treturn table|nil the return receipt `{ subsidy_return_receipt_id, status, … }`
-- @treturn table|nil err (with `out_subsidy_return_no`)
-- @treturn table|nil meta (with `out_subsidy_return_no`)
function M.return_pay(api, params, opts)
  return keyed(api, "return_pay", "/return-receipts", params, opts, schema.subsidy_return,
    "out_subsidy_return_no")
end

--- B26: one return receipt (`GET …/subsidy/return-receipts/{subsidy_return_receipt_id}`).
function M.return_receipt(api, subsidy_return_receipt_id, opts)
  return read(api, "return_receipt", "/return-receipts", "subsidy_return_receipt_id",
    subsidy_return_receipt_id, opts)
end

return M
