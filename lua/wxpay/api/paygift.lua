--- 支付有礼 (pay-gift activities: a payment over a threshold at the listed merchants gives
-- the user a 商家券 or a pack of 3-5): `client.paygift`.
--
--     local act, err, meta = client.paygift.create(params)        -- meta.out_request_no
--     local a = client.paygift.get(act.activity_id)
--     for a in client.paygift.list{ activity_status = "ONGOING_ACT_STATUS" } do … end
--     for m in client.paygift.merchants(act.activity_id) do … end
--     local res = client.paygift.add_merchants(act.activity_id, { merchant_id_list = { … } })
--     -- res.invalid_merchant_id_list: the merchants refused (a 200 with partial success)
--     client.paygift.terminate(act.activity_id)
--
-- Every function is dot-called and bound to the client. Inputs are checked before anything
-- is sent (`nil, err` with `kind = "invalid_argument"` and `field`); a non-table `params`,
-- `filters` or `opts` raises. The writes carry their request number
-- (`activity_base_info.out_request_no`, `add_request_no`, `delete_request_no`): taken from
-- the params when given, generated otherwise, reused on every automatic retry, and returned
-- as `meta.<name>` (and `err.<name>` on failure). Terminate has no request number and no
-- body; it is made safe to repeat by reading the activity when the server refuses it.
-- Call options (`opts`): `timeout`, `connect_timeout`, `deadline`, `max_retries`,
-- `wechatpay_serial`. Fields, states and open questions: docs/paygift.md.
-- @module wxpay.api.paygift

local f = require("wxpay.api.fields")
local calls = require("wxpay.api.coupon_calls")
local schema = require("wxpay.api.paygift_schema")

local M = {}

local BASE = "/v3/marketing/paygiftactivity"
local ACTIVITY_ID = f.id(1, 20)

--- Every endpoint, declared once: method, path template, request-number field, request
-- schema. The functions below, docs/paygift.md and the sandbox's routes follow it.
M.ENDPOINTS = {
  create = { "POST", BASE .. "/unique-threshold-activity", "out_request_no", schema.create },
  get = { "GET", BASE .. "/activities/{activity_id}" },
  list = { "GET", BASE .. "/activities" },
  merchants = { "GET", BASE .. "/activities/{activity_id}/merchants" },
  goods = { "GET", BASE .. "/activities/{activity_id}/goods" },
  terminate = { "POST", BASE .. "/activities/{activity_id}/terminate" },
  add_merchants = { "POST", BASE .. "/activities/{activity_id}/merchants/add", "add_request_no",
    schema.add_merchants },
  delete_merchants = { "POST", BASE .. "/activities/{activity_id}/merchants/delete", "delete_request_no",
    schema.delete_merchants },
}

-- The endpoint's path with `activity_id` checked and percent-encoded, or nil and an error.
local function target(api, name, activity_id)
  local path = M.ENDPOINTS[name][2]
  if not path:find("{activity_id}", 1, true) then return path end
  local id, err = f.segment(activity_id, "activity_id", ACTIVITY_ID, api)
  if not id then return nil, err end
  return (path:gsub("{activity_id}", (id:gsub("%%", "%%%%"))))
end

-- The path and checked options of the call `name` on one activity (nil, err when either is bad).
local function target_options(api, name, activity_id, opts)
  local path, err = target(api, name, activity_id)
  if not path then return nil, err end
  local o
  o, err = calls.options(api, opts)
  if not o then return nil, err end
  return path, o
end

-- A copy of `t` (one level).
local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

-- The create params with their defaults: out_request_no (generated), award_type BUSIFAVOR
-- (the only one), merchant_option MANUAL_INPUT_MERCHANT ("商家券只支持手动输入") and
-- merchant_id_list = { the client's mchid } under that option.
local function create_params(api, params)
  local p = copy(params)
  if type(p.activity_base_info) ~= "table" then return p, nil end
  local base = copy(p.activity_base_info)
  local no, err = calls.request_no(api, base, "out_request_no", 128)
  if not no then return nil, err end
  base.out_request_no, p.activity_base_info = no, base
  if type(p.award_send_rule) == "table" then
    local rule = copy(p.award_send_rule)
    rule.award_type = rule.award_type or "BUSIFAVOR"
    rule.merchant_option = rule.merchant_option or "MANUAL_INPUT_MERCHANT"
    if rule.merchant_option == "MANUAL_INPUT_MERCHANT" and rule.merchant_id_list == nil and api.mchid then
      rule.merchant_id_list = { api.mchid }
    end
    p.award_send_rule = rule
  end
  return p, no
end

--- G1: create a 全场满额送 activity (`POST /v3/marketing/paygiftactivity/unique-threshold-activity`).
-- @tparam table params `activity_base_info` (with `out_request_no`, generated when absent),
--   `award_send_rule` (flat: `transaction_amount_minimum`, `send_content`, `award_list`,
--   `merchant_id_list`; `award_type` and `merchant_option` have defaults), `advanced_setting?`
-- @tparam[opt] table opts call options
-- @treturn table|nil `{ activity_id, create_time }`
-- @treturn table|nil err (with `out_request_no` once one is known)
-- @treturn table|nil meta (with `out_request_no`)
function M.create(api, params, opts)
  calls.argcheck("create", 1, params, "table")
  calls.argcheck("create", 2, opts, "table?")
  local e = M.ENDPOINTS.create
  local p, no = create_params(api, params)
  if not p then return nil, no end
  local o, err = calls.options(api, opts)
  local body
  if o then body, err = f.check(p, e[4], api.check_utf8) end
  if body then
    local ok
    ok, err = schema.check_create(body)
    if not ok then body = nil end
  end
  if not body then
    err.out_request_no = no
    return nil, err
  end
  local data, werr, meta = calls.write(api, e[1], e[2], body, o, { [e[3]] = no })
  if not data then return nil, werr, meta end
  local ok, derr = calls.expect(data, { "activity_id" }, meta)
  if not ok then derr.out_request_no = no; return nil, derr end
  return data, nil, meta
end

--- G2: one activity (`GET …/activities/{activity_id}`). `award_send_rule` comes wrapped
-- (`full_send_rule`, or `step_send_rule` / `specific_send_rule` for activities made in
-- the merchant platform) and is returned as sent.
-- @treturn table|nil the activity (`activity_status`, `activity_base_info`, …)
function M.get(api, activity_id, opts)
  calls.argcheck("get", 2, opts, "table?")
  local path, o = target_options(api, "get", activity_id, opts)
  if not path then return nil, o end
  return calls.read_one(api, path, o, { "activity_id" })
end

local LIST_FILTERS = {
  { "activity_name", f.text(1, 10) },
  { "activity_status", f.enum(schema.ACTIVITY_STATUSES) },
  { "award_type", f.enum(schema.AWARD_TYPES) },
  { "offset", f.int(0) },
  { "limit", f.int(1) },
  { "offset_mode", f.enum{ "page", "item" } },
}

-- G3 filters -> a target builder and the paging values. The Chinese `activity_name` is
-- percent-encoded (UTF-8 bytes) and signed exactly as sent.
local function list_query(api, filters)
  local q, err = f.check(filters, LIST_FILTERS, api.check_utf8)
  if not q then return nil, err end
  local limit, offset, mode = calls.paging(api, q, 10, 100) -- "最大取值为100，最小为1"
  if not limit then return nil, offset end
  return function(l, o)
    return calls.target(api, M.ENDPOINTS.list[2], { { "offset", o }, { "limit", l },
      { "activity_name", q.activity_name }, { "activity_status", q.activity_status },
      { "award_type", q.award_type } })
  end, limit, offset, mode
end

local SUB_FILTERS = { { "offset", f.int(0) }, { "limit", f.int(1) }, { "offset_mode", f.enum{ "page", "item" } } }

-- G4/G5: an activity's merchants or goods; no maximum `limit` is documented.
local function sub_query(name)
  return function(api, activity_id, filters)
    local path, err = target(api, name, activity_id)
    if not path then return nil, err end
    local q
    q, err = f.check(filters, SUB_FILTERS, api.check_utf8)
    if not q then return nil, err end
    local limit, offset, mode = calls.paging(api, q, 20, 2147483647)
    if not limit then return nil, offset end
    return function(l, o) return calls.target(api, path, { { "offset", o }, { "limit", l } }) end,
      limit, offset, mode
  end
end

-- The filters argument may be left out (`merchants(id)`).
local function optional_filters(fn)
  return function(api, activity_id, filters) return fn(api, activity_id, filters or {}) end
end

local list_page, list_iter = calls.pager(list_query, 1)
local merchants_page, merchants_iter = calls.pager(sub_query("merchants"), 2)
local goods_page, goods_iter = calls.pager(sub_query("goods"), 2)

--- G3: one page of activities (`GET /v3/marketing/paygiftactivity/activities`).
-- @tparam table filters `activity_name?` (fuzzy, up to 10 characters), `activity_status?`,
--   `award_type?`, `limit?` (10, at most 100), `offset?` (0, a page index)
-- @treturn table|nil `{ data = {…}, offset, limit, total_count }`
M.page = function(api, filters) return list_page(api, filters or {}) end

--- G3 as a lazy iterator over every activity, one page in memory. Bad filters raise at the
-- call; a failure while paging raises the structured error inside the loop.
M.list = function(api, filters) return list_iter(api, filters or {}) end

--- G4: one page of an activity's 发券商户号 (`GET …/activities/{activity_id}/merchants`).
-- @treturn table|nil `{ data = { { mchid, merchant_name, create_time, update_time }, … }, … }`
M.merchants_page = optional_filters(merchants_page)
--- G4 as a lazy iterator (`limit?` 20, `offset?` 0).
M.merchants = optional_filters(merchants_iter)
--- G5: one page of an activity's goods (`GET …/activities/{activity_id}/goods`; empty for
-- activities made by `create`, which name no goods).
M.goods_page = optional_filters(goods_page)
--- G5 as a lazy iterator over `{ goods_id, create_time, update_time }`.
M.goods = optional_filters(goods_iter)

--- G6: terminate an activity (`POST …/activities/{activity_id}/terminate`, no body: the
-- string to sign ends with an empty line). Safe to repeat: when the server refuses it
-- (`400`, e.g. after a retry whose first answer was lost) and the activity reads back as
-- `TERMINATE_ACT_STATUS`, the result is success with `already_terminated = true`.
-- @treturn table|nil `{ activity_id, terminate_time }`
function M.terminate(api, activity_id, opts)
  calls.argcheck("terminate", 2, opts, "table?")
  local path, o = target_options(api, "terminate", activity_id, opts)
  if not path then return nil, o end
  local data, werr, meta = calls.write(api, M.ENDPOINTS.terminate[1], path, nil, o, {})
  if data then return data, nil, meta end
  if werr.kind ~= "api" or werr.status ~= 400 then return nil, werr, meta end
  local act = M.get(api, activity_id, o)
  if not act or act.activity_status ~= "TERMINATE_ACT_STATUS" then return nil, werr, meta end
  return { activity_id = act.activity_id, terminate_time = act.update_time, already_terminated = true }, nil, meta
end

-- G7/G8: a keyed merchant-list write on one activity.
local function merchants_write(api, name, activity_id, params, opts)
  calls.argcheck(name, 2, params, "table")
  calls.argcheck(name, 3, opts, "table?")
  local path, err = target(api, name, activity_id)
  if not path then return nil, err end
  local e = M.ENDPOINTS[name]
  return calls.keyed_write(api, e[1], path, params, opts, e[4], e[3])
end

--- G7: add 发券商户号 (`POST …/activities/{activity_id}/merchants/add`). A partial success
-- is data: the merchants refused come back in `invalid_merchant_id_list` (always an array
-- here, empty when all were added), the others are added.
-- @tparam string activity_id
-- @tparam table params `merchant_id_list` (1-500 ids), `add_request_no?`
-- @treturn table|nil `{ activity_id, invalid_merchant_id_list = { { mchid, invalid_reason } }, add_time }`
-- @treturn table|nil err (with `add_request_no`)
-- @treturn table|nil meta (with `add_request_no`)
function M.add_merchants(api, activity_id, params, opts)
  local data, err, meta = merchants_write(api, "add_merchants", activity_id, params, opts)
  if not data then return nil, err, meta end
  if type(data.invalid_merchant_id_list) ~= "table" then
    data.invalid_merchant_id_list = setmetatable({}, { __jsontype = "array" })
  end
  return data, nil, meta
end

--- G8: remove 发券商户号 (`POST …/activities/{activity_id}/merchants/delete`).
-- @tparam table params `merchant_id_list` (1-500 ids), `delete_request_no?`
-- @treturn table|nil `{ activity_id, delete_time }`
function M.delete_merchants(api, activity_id, params, opts)
  return merchants_write(api, "delete_merchants", activity_id, params, opts)
end

--- Bind the 支付有礼 functions to a client's API handle.
-- @treturn table `{ create, get, page, list, merchants, merchants_page, goods, goods_page,
--   terminate, add_merchants, delete_merchants }`
function M.new(api)
  return calls.bind(api, {
    create = M.create, get = M.get, page = M.page, list = M.list, merchants = M.merchants,
    merchants_page = M.merchants_page, goods = M.goods, goods_page = M.goods_page,
    terminate = M.terminate, add_merchants = M.add_merchants, delete_merchants = M.delete_merchants,
  })
end

return M
