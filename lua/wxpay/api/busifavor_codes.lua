--- 商家券 pre-stored codes (MERCHANT_UPLOAD stocks) and linking a coupon to an order:
-- `client.busifavor.coupon_codes` and `client.busifavor.coupons.associate` /
-- `.disassociate`.
--
--     local res, err, meta = client.busifavor.coupon_codes.upload(stock_id,
--       { coupon_code_list = codes })                       -- meta.upload_request_no
--     for c in client.busifavor.coupon_codes.list(stock_id, { status = "AVAILABLE" }) do … end
--     local info = client.busifavor.coupon_codes.get(stock_id, code)
--     client.busifavor.coupon_codes.delete(stock_id, code)  -- meta.delete_request_no
--
-- A MERCHANT_UPLOAD stock issues nothing until its codes are loaded; each issued coupon
-- takes one AVAILABLE code (it becomes DISPATCHED). Request numbers (`upload_request_no`,
-- `delete_request_no`, `out_request_no`) behave as in `wxpay.api.busifavor`: taken from
-- the call when given, generated otherwise, reused on every retry, returned in `meta` and
-- `err`. Field rules: docs/coupons.md.
-- @module wxpay.api.busifavor_codes

local f = require("wxpay.api.fields")
local calls = require("wxpay.api.coupon_calls")
local schema = require("wxpay.api.busifavor_schema")

local M = {}

local BASE = "/v3/marketing/busifavor"
local STOCK_ID = f.id(1, 20)
local APPID = f.id(1, 32)
-- A code in a path (query, delete): up to 128 like every coupon_code the calls take,
-- though an upload takes codes of at most 32.
local UPLOADED = schema.CODE

local function codes_target(api, stock_id, code)
  local id, err = f.segment(stock_id, "stock_id", STOCK_ID, api)
  if not id then return nil, err end
  local path = BASE .. "/stocks/" .. id .. "/couponcodes"
  if code == nil then return path end
  local c
  c, err = f.segment(code, "coupon_code", UPLOADED, api)
  if not c then return nil, err end
  return path .. "/" .. c
end

-- Tag `err` with the request numbers of `meta` (a decode error after a keyed write).
local function expect(data, meta, names, number)
  local ok, derr = calls.expect(data, names, meta)
  if ok then return data, nil, meta end
  derr[number] = meta[number]
  return nil, derr
end

--- B8: upload codes (`POST /v3/marketing/busifavor/stocks/{stock_id}/couponcodes`).
-- @tparam string stock_id a MERCHANT_UPLOAD stock
-- @tparam table params `coupon_code_list` (1..200 codes of 1..32 characters),
--   `upload_request_no?`
-- @tparam[opt] table opts call options
-- @treturn table|nil `{ stock_id, total_count, success_count, success_codes?, success_time,
--   fail_count?, fail_codes? = { { coupon_code, code, message } }, exist_codes?,
--   duplicate_codes? }` (a partial failure is still a success: read `fail_codes`)
-- @treturn table|nil err (with `upload_request_no`)
-- @treturn table|nil meta (with `upload_request_no`)
function M.upload(api, stock_id, params, opts)
  calls.argcheck("upload", 2, params, "table")
  calls.argcheck("upload", 3, opts, "table?")
  local target, err = codes_target(api, stock_id)
  if not target then return nil, err end
  local data, werr, meta = calls.keyed_write(api, "POST", target, params, opts, schema.upload_codes,
    "upload_request_no")
  if not data then return nil, werr, meta end
  return expect(data, meta, { "stock_id" }, "upload_request_no")
end

local LIST_FILTERS = {
  { "appid", APPID },
  { "status", f.enum{ "AVAILABLE", "DISPATCHED" } },
  { "offset", f.int(0) },
  { "limit", f.int(1) },
}

-- B9 filters → a target builder and the paging values; `offset` counts codes ("分页查询的
-- 起始位置"), unlike the page index of the other lists.
local function codes_query(api, stock_id, filters)
  local path, err = codes_target(api, stock_id)
  if not path then return nil, err end
  local q
  q, err = f.check(filters, LIST_FILTERS, api.check_utf8)
  if not q then return nil, err end
  local limit, offset = calls.paging(api, q, 20, 2147483647, "item")
  if not limit then return nil, offset end
  return function(l, o)
    return calls.target(api, path, { { "limit", l }, { "offset", o }, { "appid", q.appid },
      { "status", q.status } })
  end, limit, offset, "item"
end

local codes_page, codes_list = calls.pager(codes_query, 2)

--- B9: one page of a stock's uploaded codes (`GET …/stocks/{stock_id}/couponcodes`).
-- @tparam string stock_id
-- @tparam[opt] table filters `status?` (`AVAILABLE`, `DISPATCHED`), `appid?`, `limit?` (20),
--   `offset?` (0, counted in codes); every one optional, so the table may be left out
-- @treturn table|nil `{ data = { { code, code_status, upload_time, dispatched_time?,
--   openid?, coupon_code? } }, offset, limit, total_count }`
function M.page(api, stock_id, filters)
  calls.argcheck("page", 2, filters, "table?")
  return codes_page(api, stock_id, filters or {})
end

--- B9 as a lazy iterator over every code, one page in memory (raises inside the loop).
function M.list(api, stock_id, filters)
  calls.argcheck("list", 2, filters, "table?")
  return codes_list(api, stock_id, filters or {})
end

--- B10: one uploaded code (`GET …/stocks/{stock_id}/couponcodes/{coupon_code}`).
-- @tparam string stock_id
-- @tparam string coupon_code
-- @tparam[opt] table query `{ appid = … }`
-- @tparam[opt] table opts call options
-- @treturn table|nil `{ code_information = {…}, coupon_information? = {…} }`
function M.get(api, stock_id, coupon_code, query, opts)
  calls.argcheck("get", 3, query, "table?")
  calls.argcheck("get", 4, opts, "table?")
  local target, err = codes_target(api, stock_id, coupon_code)
  if not target then return nil, err end
  local q
  q, err = f.check(query or {}, { { "appid", APPID } }, api.check_utf8)
  if not q then return nil, err end
  local o
  o, err = calls.options(api, opts)
  if not o then return nil, err end
  return calls.read(api, calls.target(api, target, { { "appid", q.appid } }), o)
end

--- B11: delete an AVAILABLE code (`DELETE …/couponcodes/{coupon_code}?delete_request_no=`).
-- @tparam string stock_id
-- @tparam string coupon_code
-- @tparam[opt] table params `{ delete_request_no = … }` (generated when absent)
-- @tparam[opt] table opts call options
-- @treturn table|nil `{ stock_id, delete_time }`
-- @treturn table|nil err (with `delete_request_no`)
-- @treturn table|nil meta (with `delete_request_no`)
function M.delete(api, stock_id, coupon_code, params, opts)
  calls.argcheck("delete", 3, params, "table?")
  calls.argcheck("delete", 4, opts, "table?")
  local target, err = codes_target(api, stock_id, coupon_code)
  if not target then return nil, err end
  local p = params or {}
  local ok
  ok, err = f.known(p, { delete_request_no = true }, "")
  if not ok then return nil, err end
  local no
  no, err = calls.request_no(api, p, "delete_request_no", 128, f.request_number(128))
  if not no then return nil, err end
  local o
  o, err = calls.options(api, opts)
  if not o then err.delete_request_no = no; return nil, err end
  local numbers = { delete_request_no = no }
  local data, werr, meta = calls.write(api, "DELETE",
    calls.target(api, target, { { "delete_request_no", no } }), nil, o, numbers)
  if not data then return nil, werr, meta end
  return expect(data, meta, { "stock_id" }, "delete_request_no")
end

-- B14/B15: a keyed write answering one time field.
local function link(api, fname, verb, params, opts)
  calls.argcheck(fname, 1, params, "table")
  calls.argcheck(fname, 2, opts, "table?")
  local data, err, meta = calls.keyed_write(api, "POST", BASE .. "/coupons/" .. verb, params, opts,
    schema.associate, "out_request_no")
  if not data then return nil, err, meta end
  return expect(data, meta, { "wechatpay_" .. verb .. "_time" }, "out_request_no")
end

--- B14: link a coupon to an order (`POST /v3/marketing/busifavor/coupons/associate`).
-- @tparam table params `stock_id`, `coupon_code`, `out_trade_no`, `out_request_no?`
-- @treturn table|nil `{ wechatpay_associate_time }`
function M.associate(api, params, opts)
  return link(api, "associate", "associate", params, opts)
end

--- B15: undo the link (`POST /v3/marketing/busifavor/coupons/disassociate`).
-- @tparam table params `stock_id`, `coupon_code`, `out_trade_no`, `out_request_no?`
-- @treturn table|nil `{ wechatpay_disassociate_time }`
function M.disassociate(api, params, opts)
  return link(api, "disassociate", "disassociate", params, opts)
end

return M
