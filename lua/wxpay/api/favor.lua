--- 代金券 (FAVOR_STOCK, cash coupons): `client.favor`.
--
--     local stock, err, meta = client.favor.stocks.create(params)        -- meta.out_request_no
--     client.favor.stocks.start(stock.stock_id)
--     local coupon, err, meta = client.favor.coupons.send(openid, { stock_id = stock.stock_id,
--       appid = appid })                                                  -- meta.out_request_no
--     for s in client.favor.stocks.list{ status = "running" } do … end
--
-- Every function is dot-called and bound to the client. Inputs are checked before anything
-- is sent (`nil, err` with `kind = "invalid_argument"` and `field`); a non-table `params`,
-- `filters` or `opts` raises. Create and send carry `out_request_no`: taken from `params`
-- when given (1-128 of `A-Z a-z 0-9 | _ * -`), generated otherwise, sent in the body,
-- reused on every automatic retry and returned as `meta.out_request_no` and
-- `err.out_request_no`. Start, pause, restart and setting the callback URL have no request
-- number; the API documents them as safe to repeat ("支持幂等重入"), so they are retried
-- like keyed writes. `stock_creator_mchid`, `belong_merchant`, `mchid` and `creator_mchid`
-- default to the client's `mchid`. Call options (`opts`): `timeout`, `connect_timeout`,
-- `deadline`, `max_retries`, `wechatpay_serial`. Field rules: docs/coupons.md.
-- @module wxpay.api.favor

local f = require("wxpay.api.fields")
local calls = require("wxpay.api.coupon_calls")
local schema = require("wxpay.api.favor_schema")
local errors = require("wxpay.errors")

local M = {}

local BASE = "/v3/marketing/favor"
local STOCK_ID = f.id(1, 20)
local OPENID = f.id(1, 128)
local APPID = f.id(1, 128)
local CREATOR = { stock_creator_mchid = true }

-- A copy of `t` with `name` set to the client's mchid when absent.
local function default_mchid(api, t, name)
  if t[name] ~= nil or api.mchid == nil then return t end
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  c[name] = api.mchid
  return c
end

--- F1: create a stock (`POST /v3/marketing/favor/coupon-stocks`).
-- @tparam table params the protocol's fields (`stock_name`, `available_begin_time`,
--   `available_end_time`, `stock_use_rule`, `coupon_use_rule`, `no_cash`, `stock_type`, …);
--   `belong_merchant` defaults to the client's mchid, `out_request_no` is generated when absent
-- @tparam[opt] table opts call options
-- @treturn table|nil `{ stock_id, create_time }`
-- @treturn table|nil err (with `out_request_no`)
-- @treturn table|nil meta (with `out_request_no`)
function M.create_stock(api, params, opts)
  calls.argcheck("create", 1, params, "table")
  calls.argcheck("create", 2, opts, "table?")
  local p = default_mchid(api, params, "belong_merchant")
  local data, err, meta = calls.keyed_write(api, "POST", BASE .. "/coupon-stocks", p, opts,
    schema.create, "out_request_no", schema.check_create)
  if not data then return nil, err, meta end
  local ok, derr = calls.expect(data, { "stock_id" }, meta)
  if not ok then derr.out_request_no = meta.out_request_no; return nil, derr end
  return data, nil, meta
end

-- The stock id as a path segment and the creator (opts or the client's mchid).
local function stock_and_creator(api, stock_id, opts)
  local id, err = f.segment(stock_id, "stock_id", STOCK_ID, api)
  if not id then return nil, err end
  local o
  o, err = calls.options(api, opts, CREATOR)
  if not o then return nil, err end
  local creator
  creator, err = calls.mchid(api, o, "stock_creator_mchid")
  if not creator then
    err.field = "opts.stock_creator_mchid"
    return nil, err
  end
  return id, creator, o
end

-- F2-F4: a state change answering `stock_id` and `<answer>`.
local function state_change(api, verb, stock_id, opts)
  calls.argcheck(verb, 2, opts, "table?")
  local id, creator, o = stock_and_creator(api, stock_id, opts)
  if not id then return nil, creator end
  local body = setmetatable({ stock_creator_mchid = creator }, { __jsonorder = { "stock_creator_mchid" } })
  local data, err, meta = calls.write(api, "POST", BASE .. "/stocks/" .. id .. "/" .. verb, body, o, {})
  if not data then return nil, err, meta end
  local ok, derr = calls.expect(data, { "stock_id" }, meta)
  if not ok then return nil, derr end
  return data, nil, meta
end

--- F2: activate a stock (`POST …/stocks/{stock_id}/start`); a 预充值 stock locks its budget.
-- @tparam string stock_id
-- @tparam[opt] table opts call options and `stock_creator_mchid` (default: the client's)
-- @treturn table|nil `{ stock_id, start_time }`
function M.start_stock(api, stock_id, opts) return state_change(api, "start", stock_id, opts) end

--- F3: pause issuing (`POST …/stocks/{stock_id}/pause`). Same arguments as `start`.
-- @treturn table|nil `{ stock_id, pause_time }`
function M.pause_stock(api, stock_id, opts) return state_change(api, "pause", stock_id, opts) end

--- F4: resume a paused stock (`POST …/stocks/{stock_id}/restart`). Same arguments as `start`.
-- @treturn table|nil `{ stock_id, restart_time }`
function M.restart_stock(api, stock_id, opts) return state_change(api, "restart", stock_id, opts) end

--- F7: query a stock (`GET …/stocks/{stock_id}?stock_creator_mchid=`).
-- @tparam[opt] table opts call options and `stock_creator_mchid` (default: the client's)
-- @treturn table|nil the stock (`status`, `distributed_coupons`, `stock_use_rule`, …)
function M.get_stock(api, stock_id, opts)
  calls.argcheck("get", 2, opts, "table?")
  local id, creator, o = stock_and_creator(api, stock_id, opts)
  if not id then return nil, creator end
  local target = calls.target(api, BASE .. "/stocks/" .. id, { { "stock_creator_mchid", creator } })
  return calls.read_one(api, target, o, { "stock_id" })
end

local STOCK_FILTERS = {
  { "offset", f.int(0) },
  { "limit", f.int(1, 10) },
  { "stock_creator_mchid", f.digits(1, 20), true },
  { "create_start_time", f.time() },
  { "create_end_time", f.time() },
  { "status", f.enum(schema.STOCK_STATUS) },
}

-- F6 filters → a target builder and the paging values. `offset` is a page index
-- ("页码从0开始"), `limit` at most 10.
local function stocks_query(api, filters)
  local q, err = f.check(default_mchid(api, filters, "stock_creator_mchid"), STOCK_FILTERS, api.check_utf8)
  if not q then return nil, err end
  local limit, offset = calls.paging(api, q, 10, 10, "page")
  if not limit then return nil, offset end
  return function(l, o)
    return calls.target(api, BASE .. "/stocks", { { "offset", o }, { "limit", l },
      { "stock_creator_mchid", q.stock_creator_mchid }, { "create_start_time", q.create_start_time },
      { "create_end_time", q.create_end_time }, { "status", q.status } })
  end, limit, offset
end

--- F6: one page of stocks (`GET /v3/marketing/favor/stocks`).
-- @tparam[opt] table filters `stock_creator_mchid?` (default: the client's), `status?`,
--   `create_start_time?`, `create_end_time?`, `limit?` (1..10, default 10), `offset?` (page index)
-- @treturn table|nil `{ data = {…}, offset, limit, total_count }`
function M.stocks_page(api, filters)
  filters = filters or {}
  calls.argcheck("page", 1, filters, "table")
  local target_for, limit, offset = stocks_query(api, filters)
  if not target_for then return nil, limit end
  return calls.page(api, target_for, limit, offset)
end

--- F6 as a lazy iterator over every stock (one page in memory). Bad filters raise at the
-- call; a failure while paging raises the structured error inside the loop.
function M.stocks_list(api, filters)
  filters = filters or {}
  calls.argcheck("list", 1, filters, "table")
  local target_for, limit, offset = stocks_query(api, filters)
  if not target_for then error(limit, 2) end
  return calls.iterate(api, target_for, limit, offset, "page")
end

--- F11: send a coupon to a user (`POST /v3/marketing/favor/users/{openid}/coupons`).
-- @tparam string openid the user, under `appid`
-- @tparam table params `stock_id`, `appid`, `stock_creator_mchid?` (default: the client's),
--   `out_request_no?` (generated when absent; repeat it to repeat the send)
-- @treturn table|nil `{ coupon_id }`
-- @treturn table|nil err (with `out_request_no`)
-- @treturn table|nil meta (with `out_request_no`)
function M.send_coupon(api, openid, params, opts)
  calls.argcheck("send", 2, params, "table")
  calls.argcheck("send", 3, opts, "table?")
  local id, err = f.segment(openid, "openid", OPENID, api)
  if not id then return nil, err end
  for _, name in ipairs({ "coupon_value", "coupon_minimum" }) do
    if params[name] ~= nil then return nil, errors.invalid_argument(name, "not open yet (the API refuses it)") end
  end
  local p = default_mchid(api, params, "stock_creator_mchid")
  local data, werr, meta = calls.keyed_write(api, "POST", BASE .. "/users/" .. id .. "/coupons", p, opts,
    schema.send, "out_request_no")
  if not data then return nil, werr, meta end
  local ok, derr = calls.expect(data, { "coupon_id" }, meta)
  if not ok then derr.out_request_no = meta.out_request_no; return nil, derr end
  return data, nil, meta
end

--- F12: one coupon (`GET …/users/{openid}/coupons/{coupon_id}?appid=`).
-- @treturn table|nil the coupon (`status`, `stock_id`, `coupon_id`, …)
function M.get_coupon(api, openid, coupon_id, appid, opts)
  calls.argcheck("get", 4, opts, "table?")
  local o, err = calls.options(api, opts)
  if not o then return nil, err end
  local user, coupon
  user, err = f.segment(openid, "openid", OPENID, api)
  if not user then return nil, err end
  coupon, err = f.segment(coupon_id, "coupon_id", STOCK_ID, api)
  if not coupon then return nil, err end
  local app
  app, err = f.value(appid, "appid", APPID, api.check_utf8)
  if not app then return nil, err end
  return calls.read(api, calls.target(api, BASE .. "/users/" .. user .. "/coupons/" .. coupon,
    { { "appid", app } }), o)
end

local COUPON_FILTERS = {
  { "appid", APPID, true },
  { "stock_id", STOCK_ID },
  { "status", f.enum{ "SENDED", "USED" } },
  { "creator_mchid", f.digits(1, 20) },
  { "sender_mchid", f.digits(1, 20) },
  { "available_mchid", f.digits(1, 20) },
  { "offset", f.int(0) },
  { "limit", f.int(1) },
  { "business_type", f.id(1, 32) },
  { "offset_mode", f.enum{ "page", "item" } },
}

local function coupons_query(api, openid, filters)
  local id, err = f.segment(openid, "openid", OPENID, api)
  if not id then return nil, err end
  local q
  q, err = f.check(filters, COUPON_FILTERS, api.check_utf8)
  if not q then return nil, err end
  if not (q.creator_mchid or q.sender_mchid or q.available_mchid) then q.creator_mchid = api.mchid end
  -- No maximum page size is documented: the server's answer (`limit`) is followed.
  local limit, offset, mode = calls.paging(api, q, 20, 2147483647)
  if not limit then return nil, offset end
  local path = BASE .. "/users/" .. id .. "/coupons"
  return function(l, o)
    return calls.target(api, path, { { "appid", q.appid }, { "stock_id", q.stock_id },
      { "status", q.status }, { "creator_mchid", q.creator_mchid }, { "sender_mchid", q.sender_mchid },
      { "available_mchid", q.available_mchid }, { "offset", o }, { "limit", l },
      { "business_type", q.business_type } })
  end, limit, offset, mode
end

local coupons_page, coupons_list = calls.pager(coupons_query, 2)

--- F13: one page of a user's coupons (`GET /v3/marketing/favor/users/{openid}/coupons`).
-- @tparam table filters `appid` (required), `stock_id?`, `status?` (`SENDED`|`USED`), one of
--   `creator_mchid` (default: the client's) / `sender_mchid` / `available_mchid`,
--   `limit?` (20), `offset?` (0), `business_type?`
-- @treturn table|nil `{ data = {…}, offset, limit, total_count }`
M.coupons_page = coupons_page

--- F13 as a lazy iterator (one page in memory); `offset_mode` ("page" by default, from
-- the client config) says how `offset` advances. Bad filters raise at the call; a failure
-- while paging raises the structured error inside the loop.
M.coupons_list = coupons_list

--- F18: set the 核销 callback URL (`POST /v3/marketing/favor/callbacks`).
-- @tparam table params `notify_url` (https, no query string), `mchid?` (default: the
--   client's; must be the stock creator), `switch?`
-- @treturn table|nil `{ update_time, notify_url }`
function M.set_callback(api, params, opts)
  calls.argcheck("set", 1, params, "table")
  calls.argcheck("set", 2, opts, "table?")
  local o, err = calls.options(api, opts)
  if not o then return nil, err end
  local body
  body, err = f.check(default_mchid(api, params, "mchid"), schema.callbacks, api.check_utf8)
  if not body then return nil, err end
  if body.notify_url:find("?", 1, true) then
    return nil, errors.invalid_argument("notify_url", "must not carry a query string")
  end
  return calls.write(api, "POST", BASE .. "/callbacks", body, o, {})
end

--- F19: query the callback URL (`GET /v3/marketing/favor/callbacks?mchid=`).
-- @tparam[opt] string mchid default: the client's
-- @treturn table|nil `{ mchid, notify_url }`
function M.get_callback(api, mchid, opts)
  return calls.get_callback(api, BASE, mchid, opts)
end

--- F20: the decrypted coupon of a `COUPON.USE` (核销) callback parsed by
-- `client.notify.parse`: `{ stock_creator_mchid, stock_id, coupon_id, status = "USED",
-- consume_information = { consume_time, consume_mchid, transaction_id, goods_detail? }, … }`.
-- @tparam table notification what `client.notify.parse` returned
-- @return the coupon, or nil and an `invalid_argument` error (another event type)
function M.use_event(notification)
  return calls.event(notification, "COUPON.USE", { "coupon_id", "stock_id" })
end

--- Bind the 代金券 functions to a client's API handle.
-- @tparam table api the handle `wxpay.client` passes (`send`, encoders, `mchid`)
-- @treturn table `{ stocks = { create, start, pause, restart, get, page, list, use_flow,
--   refund_flow, use_flow_by_day, refund_flow_by_day, merchants, merchants_page, items,
--   items_page },
--   coupons = { send, get, page, list }, callbacks = { set, get }, use_event }`
function M.new(api)
  local t = calls.bind(api, {
    stocks = { create = M.create_stock, start = M.start_stock, pause = M.pause_stock,
      restart = M.restart_stock, get = M.get_stock, page = M.stocks_page, list = M.stocks_list },
    coupons = { send = M.send_coupon, get = M.get_coupon, page = M.coupons_page, list = M.coupons_list },
    callbacks = { set = M.set_callback, get = M.get_callback },
  })
  t.use_event = M.use_event
  local flows = require("wxpay.api.favor_flows")
  for _, name in ipairs({ "use_flow", "refund_flow", "use_flow_by_day", "refund_flow_by_day",
      "merchants", "merchants_page", "items", "items_page" }) do
    local fn = flows[name]
    t.stocks[name] = function(...) return fn(api, ...) end
  end
  return t
end

return M
