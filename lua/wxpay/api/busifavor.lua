--- 商家券 (BUSIFAVOR_STOCK, merchant-exclusive coupons): `client.busifavor`.
--
--     local stock, err, meta = client.busifavor.stocks.create(params)   -- meta.out_request_no
--     local s = client.busifavor.stocks.get(stock.stock_id)
--     client.busifavor.stocks.update_budget(stock.stock_id, { target_max_coupons = 200,
--       current_max_coupons = s.stock_send_rule.max_coupons })
--     for c in client.busifavor.coupons.list(openid, { appid = appid }) do … end
--
-- Every function is dot-called and bound to the client. Inputs are checked before anything
-- is sent (`nil, err` with `kind = "invalid_argument"` and `field`); a non-table `params`
-- or `opts` raises. Every write carries its request number (`out_request_no`,
-- `modify_budget_request_no`, `use_request_no`, `return_request_no`,
-- `deactivate_request_no`): taken from `params` when given (checked: 1-128 characters
-- without control characters; the pages state no charset), generated otherwise (then of
-- `A-Z a-z 0-9 | _ * -`), sent in the body, reused on every automatic
-- retry, and returned as `meta.<name>` on success and `err.<name>` on failure, so a later
-- call can repeat the same request. `belong_merchant`, `mchid` and `creator_merchant`
-- default to the client's `mchid`. Call options (`opts`): `timeout`, `connect_timeout`,
-- `deadline`, `max_retries`, `wechatpay_serial`. Field rules: docs/coupons.md.
-- @module wxpay.api.busifavor

local f = require("wxpay.api.fields")
local calls = require("wxpay.api.coupon_calls")
local schema = require("wxpay.api.busifavor_schema")
local errors = require("wxpay.errors")

local M = {}

local BASE = "/v3/marketing/busifavor"
local STOCK_ID = f.id(1, 20)
local OPENID = f.id(1, 128)
local APPID = f.id(1, 32)
local CODE = schema.CODE

local function stock_target(api, stock_id, suffix)
  local id, err = f.segment(stock_id, "stock_id", STOCK_ID, api)
  if not id then return nil, err end
  return BASE .. "/stocks/" .. id .. (suffix or "")
end

--- B1: create a stock (`POST /v3/marketing/busifavor/stocks`).
-- @tparam table params the protocol's fields (`stock_name`, `goods_name`, `stock_type`,
--   `coupon_use_rule`, `stock_send_rule`, `coupon_code_mode`, …); `belong_merchant`
--   defaults to the client's mchid, `out_request_no` is generated when absent
-- @tparam[opt] table opts call options
-- @treturn table|nil `{ stock_id, create_time }`
-- @treturn table|nil err (with `out_request_no`)
-- @treturn table|nil meta (with `out_request_no`)
function M.create_stock(api, params, opts)
  calls.argcheck("create", 1, params, "table")
  calls.argcheck("create", 2, opts, "table?")
  local p = params
  if params.belong_merchant == nil and api.mchid ~= nil then
    p = {}
    for k, v in pairs(params) do p[k] = v end
    p.belong_merchant = api.mchid
  end
  local data, err, meta = calls.keyed_write(api, "POST", BASE .. "/stocks", p, opts,
    schema.create, "out_request_no", schema.check_create)
  if not data then return nil, err, meta end
  local ok, derr = calls.expect(data, { "stock_id" }, meta)
  if not ok then derr.out_request_no = meta.out_request_no; return nil, derr end
  return data, nil, meta
end

--- B2: query a stock (`GET /v3/marketing/busifavor/stocks/{stock_id}`).
-- @treturn table|nil the stock (`stock_state`, `stock_send_rule`, `send_count_information`, …)
function M.get_stock(api, stock_id, opts)
  calls.argcheck("get", 2, opts, "table?")
  local target, err = stock_target(api, stock_id)
  if not target then return nil, err end
  local o
  o, err = calls.options(api, opts)
  if not o then return nil, err end
  return calls.read_one(api, target, o, { "stock_id" })
end

--- B3: modify a stock's information (`PATCH …/stocks/{stock_id}`, answers 204).
-- @tparam string stock_id
-- @tparam table params fields to change, plus `out_request_no` (generated when absent)
-- @treturn true|nil
function M.update_stock(api, stock_id, params, opts)
  calls.argcheck("update", 2, params, "table")
  calls.argcheck("update", 3, opts, "table?")
  local target, err = stock_target(api, stock_id)
  if not target then return nil, err end
  local changes = 0
  for k in pairs(params) do if k ~= "out_request_no" then changes = changes + 1 end end
  if changes == 0 then return nil, errors.invalid_argument("params", "names no field to change") end
  local data, werr, meta = calls.keyed_write(api, "PATCH", target, params, opts, schema.update,
    "out_request_no")
  if not data then return nil, werr, meta end
  return true, nil, meta
end

--- B4: change `max_coupons` or `max_coupons_by_day` (`PATCH …/stocks/{stock_id}/budget`).
-- A compare-and-set: give the target and the current value it replaces
-- (`target_max_coupons` + `current_max_coupons`, and/or the `_by_day` pair; a `current_*`
-- is needed when its target is above 0 and may be 0 for a stock without a daily cap).
-- @treturn table|nil `{ max_coupons, max_coupons_by_day? }`
-- @treturn table|nil err (with `modify_budget_request_no`)
-- @treturn table|nil meta (with `modify_budget_request_no`)
function M.update_budget(api, stock_id, params, opts)
  calls.argcheck("update_budget", 2, params, "table")
  calls.argcheck("update_budget", 3, opts, "table?")
  local target, err = stock_target(api, stock_id, "/budget")
  if not target then return nil, err end
  local data, werr, meta = calls.keyed_write(api, "PATCH", target, params, opts, schema.budget,
    "modify_budget_request_no", schema.check_budget)
  if not data then return nil, werr, meta end
  if type(data.max_coupons) ~= "number" then
    local derr = calls.decode_error("answer lacks max_coupons", meta)
    derr.modify_budget_request_no = meta.modify_budget_request_no
    return nil, derr
  end
  return data, nil, meta
end

-- B5/B16/B17: a coupon write answering one time field.
local function coupon_write(api, fname, path, params, opts, fields, name, answer)
  calls.argcheck(fname, 1, params, "table")
  calls.argcheck(fname, 2, opts, "table?")
  local data, err, meta = calls.keyed_write(api, "POST", BASE .. path, params, opts, fields, name)
  if not data then return nil, err, meta end
  local ok, derr = calls.expect(data, { answer }, meta)
  if not ok then derr[name] = meta[name]; return nil, derr end
  return data, nil, meta
end

--- B5: redeem a coupon (`POST /v3/marketing/busifavor/coupons/use`).
-- @tparam table params `coupon_code`, `appid`, `use_time` (RFC 3339), `stock_id` (needed
--   for MERCHANT_API / MERCHANT_UPLOAD stocks), `openid?`, `use_request_no?`
-- @treturn table|nil `{ stock_id, openid, wechatpay_use_time }`
function M.use_coupon(api, params, opts)
  return coupon_write(api, "use", "/coupons/use", params, opts, schema.use, "use_request_no", "wechatpay_use_time")
end

--- B16: return a used coupon to the user (`POST …/coupons/return`, 申请退券).
-- @tparam table params `coupon_code`, `stock_id`, `return_request_no?`
-- @treturn table|nil `{ wechatpay_return_time }`
function M.return_coupon(api, params, opts)
  return coupon_write(api, "return_coupon", "/coupons/return", params, opts, schema.return_coupon,
    "return_request_no", "wechatpay_return_time")
end

--- B17: deactivate an unused coupon (`POST …/coupons/deactivate`, 使券失效).
-- @tparam table params `coupon_code`, `stock_id`, `deactivate_reason?`, `deactivate_request_no?`
-- @treturn table|nil `{ wechatpay_deactivate_time }`
function M.deactivate_coupon(api, params, opts)
  return coupon_write(api, "deactivate", "/coupons/deactivate", params, opts, schema.deactivate,
    "deactivate_request_no", "wechatpay_deactivate_time")
end

local LIST_FILTERS = {
  { "appid", APPID, true },
  { "stock_id", STOCK_ID },
  { "coupon_state", f.enum(schema.COUPON_STATES) },
  { "creator_merchant", f.digits(1, 32) },
  { "belong_merchant", f.digits(8, 15) },
  { "sender_merchant", f.digits(1, 32) },
  { "offset", f.int(0) },
  { "limit", f.int(1) },
  { "offset_mode", f.enum{ "page", "item" } },
}

-- B6 filters → a target builder (limit, offset) and the paging values.
local function coupons_query(api, openid, filters)
  local id, err = f.segment(openid, "openid", OPENID, api)
  if not id then return nil, err end
  local q
  q, err = f.check(filters, LIST_FILTERS, api.check_utf8)
  if not q then return nil, err end
  if not (q.creator_merchant or q.belong_merchant or q.sender_merchant) then
    -- One of the three names the caller's role; the creator is the usual one.
    q.creator_merchant = api.mchid
  end
  -- No maximum page size is documented: the server's answer (`limit`) is followed.
  local limit, offset, mode = calls.paging(api, q, 20, 2147483647)
  if not limit then return nil, offset end
  local path = BASE .. "/users/" .. id .. "/coupons"
  return function(l, o)
    return calls.target(api, path, { { "appid", q.appid }, { "stock_id", q.stock_id },
      { "coupon_state", q.coupon_state }, { "creator_merchant", q.creator_merchant },
      { "belong_merchant", q.belong_merchant }, { "sender_merchant", q.sender_merchant },
      { "offset", o }, { "limit", l } })
  end, limit, offset, mode
end

local coupons_page, coupons_list = calls.pager(coupons_query, 2)

--- B6: one page of a user's coupons (`GET /v3/marketing/busifavor/users/{openid}/coupons`).
-- @tparam string openid
-- @tparam table filters `appid` (required), `stock_id?`, `coupon_state?`, one of
--   `creator_merchant` (default: the client's mchid) / `belong_merchant` / `sender_merchant`,
--   `limit?` (20), `offset?` (0, a page index)
-- @treturn table|nil `{ data = {…}, offset, limit, total_count }`
M.coupons_page = coupons_page

--- B6 as a lazy iterator over every coupon, one page in memory. Bad filters raise at the
-- call; a failure while paging raises the structured error inside the loop.
-- `offset_mode` ("page" by default, from the client config) says how `offset` advances.
M.coupons_list = coupons_list

--- B7: one coupon (`GET …/users/{openid}/coupons/{coupon_code}/appids/{appid}`).
-- @treturn table|nil the coupon (`coupon_state`, `stock_id`, `coupon_code`, …)
function M.get_coupon(api, openid, coupon_code, appid, opts)
  calls.argcheck("get", 4, opts, "table?")
  local o, err = calls.options(api, opts)
  if not o then return nil, err end
  local parts = {}
  local args = { { openid, "openid", OPENID }, { coupon_code, "coupon_code", CODE }, { appid, "appid", APPID } }
  for i, a in ipairs(args) do
    parts[i], err = f.segment(a[1], a[2], a[3], api)
    if not parts[i] then return nil, err end
  end
  return calls.read(api, string.format("%s/users/%s/coupons/%s/appids/%s", BASE, parts[1], parts[2], parts[3]), o)
end

--- B12: set the callback URL (`POST /v3/marketing/busifavor/callbacks`).
-- @tparam table params `notify_url` (https), `mchid?` (default: the client's)
-- @treturn table|nil `{ update_time, notify_url, mchid }`
function M.set_callback(api, params, opts)
  calls.argcheck("set", 1, params, "table")
  calls.argcheck("set", 2, opts, "table?")
  local o, err = calls.options(api, opts)
  if not o then return nil, err end
  local p = { notify_url = params.notify_url, mchid = params.mchid or api.mchid }
  local ok
  ok, err = f.known(params, { notify_url = true, mchid = true }, "")
  if not ok then return nil, err end
  local body
  body, err = f.check(p, schema.callbacks, api.check_utf8)
  if not body then return nil, err end
  -- Setting the same URL twice has the same effect: safe to repeat.
  return calls.write(api, "POST", BASE .. "/callbacks", body, o, {})
end

--- B13: query the callback URL (`GET /v3/marketing/busifavor/callbacks?mchid=`).
-- @tparam[opt] string mchid default: the client's
-- @treturn table|nil `{ mchid, notify_url }`
function M.get_callback(api, mchid, opts)
  return calls.get_callback(api, BASE, mchid, opts, 8, 15)
end

--- B18: the decrypted resource of a `COUPON.SEND` (领券) callback parsed by
-- `client.notify.parse`: `{ event_type, coupon_code, stock_id, send_time, openid?,
-- unionid?, send_channel, send_merchant, attach_info? }` as WeChat Pay sent it.
-- @tparam table notification what `client.notify.parse` returned
-- @return the resource, or nil and an `invalid_argument` error (another event type)
function M.send_event(notification)
  return calls.event(notification, "COUPON.SEND", { "coupon_code", "stock_id" })
end

--- Bind the 商家券 functions to a client's API handle.
-- @tparam table api the handle `wxpay.client` passes (`send`, encoders, `mchid`)
-- @treturn table `{ stocks = { create, get, update, update_budget }, coupons = { use,
--   return_coupon, deactivate, page, list, get, associate, disassociate }, coupon_codes =
--   { upload, page, list, get, delete }, subsidy = { pay, pay_receipts, pay_receipt,
--   return_pay, return_receipt }, callbacks = { set, get }, send_event }`
function M.new(api)
  local t = calls.bind(api, {
    stocks = { create = M.create_stock, get = M.get_stock, update = M.update_stock,
      update_budget = M.update_budget },
    coupons = { use = M.use_coupon, return_coupon = M.return_coupon, deactivate = M.deactivate_coupon,
      page = M.coupons_page, list = M.coupons_list, get = M.get_coupon },
    callbacks = { set = M.set_callback, get = M.get_callback },
  })
  t.send_event = M.send_event
  local codes = require("wxpay.api.busifavor_codes")
  t.coupon_codes = calls.bind(api, { upload = codes.upload, page = codes.page, list = codes.list,
    get = codes.get, delete = codes.delete })
  t.coupons.associate = function(...) return codes.associate(api, ...) end
  t.coupons.disassociate = function(...) return codes.disassociate(api, ...) end
  local subsidy = require("wxpay.api.busifavor_subsidy")
  t.subsidy = calls.bind(api, { pay = subsidy.pay, pay_receipts = subsidy.pay_receipts,
    pay_receipt = subsidy.pay_receipt, return_pay = subsidy.return_pay,
    return_receipt = subsidy.return_receipt })
  return t
end

return M
