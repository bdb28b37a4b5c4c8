--- 支付有礼 (pay-gift activities) in the sandbox: create 全场满额送 activities over the
-- sandbox's own 商家券 stocks, read and list them, list their merchants and goods,
-- terminate them, add and remove merchants. The routes come from the client's endpoint
-- declarations (`wxpay.api.paygift.ENDPOINTS`). What a payment does is in
-- wxpay.sandbox.paygift_control.
--
-- States [SIM]: CREATE_ACT_STATUS until begin_time, ONGOING_ACT_STATUS until end_time,
-- then OVER_TIME_ACT_STATUS; terminate gives TERMINATE_ACT_STATUS (a second terminate is
-- `400 INVALID_REQUEST`); the control API can force STOP_ACT_STATUS or CREATE_ACT_FAILED.
local common = require("wxpay.sandbox.coupons_common")
local json = require("wxpay.sandbox.json")
local util = require("wxpay.sandbox.util")

local M = {}

local err = common.error

local DAY = 86400
local PURPOSES = { OFF_LINE_PAY = true, JUMP_MINI_APP = true }
local CONTENTS = { SINGLE_COUPON = true, GIFT_PACKAGE = true }
local OPTIONS = { IN_SEVICE_COUPON_MERCHANT = true, MANUAL_INPUT_MERCHANT = true }
local STATUSES = { ACT_STATUS_UNKNOWN = true, CREATE_ACT_STATUS = true, ONGOING_ACT_STATUS = true,
  TERMINATE_ACT_STATUS = true, STOP_ACT_STATUS = true, OVER_TIME_ACT_STATUS = true, CREATE_ACT_FAILED = true }
local NOT_RULE = "商家券信息不满足活动规则,请核实券有效期或code"
local NOT_SAME = "传入的多张商户券的信息不一致"
local NOT_BRAND = "商户与活动创建方不具备父子关系"

--- The 支付有礼 state of the sandbox store (dropped with the coupons on reset).
-- @treturn table `{ acts = id -> activity, order = { id, … }, brands = mchid -> true }`
function M.product(state)
  local cs = common.state(state.store)
  if not cs.paygift then cs.paygift = { acts = {}, order = {}, brands = {} } end
  return cs.paygift, cs
end

--- The status of an activity at `now`.
function M.status(act, now)
  if act.terminate_time then return "TERMINATE_ACT_STATUS" end
  if act.forced then return act.forced end
  if now < act.begin then return "CREATE_ACT_STATUS" end
  if now < act.finish then return "ONGOING_ACT_STATUS" end
  return "OVER_TIME_ACT_STATUS"
end

--- The merchant ids of an activity, in order.
function M.merchant_ids(act)
  local out = {}
  for i, m in ipairs(act.merchants) do out[i] = m.mchid end
  return out
end

local function not_found()
  return err(404, "RESOURCE_NOT_EXISTS", "资源不存在或无可用")
end

-- The caller's activity, or nil and the answer.
local function own(state, auth, captured)
  local act = M.product(state).acts[util.percent_decode(captured)]
  if not act or act.creator ~= auth.mchid then return nil, not_found() end
  return act
end

local function check_merchants(c, required)
  local list = c:strings("merchant_id_list", 500, 15, required)
  if list and #list == 0 and required then c:fail("merchant_id_list", "merchant_id_list must not be empty") end
  for i, id in ipairs(list or {}) do
    if not id:match("^%d+$") or #id < 8 then c:fail("merchant_id_list/" .. (i - 1), "must be 8-15 digits") end
  end
  return list
end

local function check_periods(base)
  local p = base:object("available_periods")
  if not p then return end
  for _, name in ipairs{ "available_time", "available_day_time" } do
    local list = p:get(name) -- either list may come alone (wechatpay-go: both optional)
    if list ~= nil and (type(list) ~= "table" or list[1] == nil) then
      p:fail(name, name .. " must be a non-empty array")
    end
  end
end

local function check_base(base, now)
  base:string("activity_name", 1, 10, true)
  base:string("activity_second_title", 1, 9, true)
  base:string("merchant_logo_url", 10, 128, true)
  base:string("background_color", 1, 8)
  local b, e = base:time("begin_time", true), base:time("end_time", true)
  base:request_no("out_request_no", 128)
  local purpose = base:enum("delivery_purpose", PURPOSES, true)
  base:string("mini_programs_appid", 1, 32, purpose == "JUMP_MINI_APP")
  base:string("mini_programs_path", 1, 128)
  check_periods(base)
  if b and e and (e <= b or e - b > 90 * DAY) then
    base:fail("end_time", "活动有效期最长90天")
  elseif b and b > now + 366 * DAY then
    base:fail("begin_time", "最长可以配置1年内的活动")
  end
  return b, e
end

local function check_rule(rule)
  rule:int("transaction_amount_minimum", 0, 100000000000, true)
  rule:enum("send_content", CONTENTS, true)
  rule:enum("award_type", { BUSIFAVOR = true }, true)
  local option = rule:enum("merchant_option", OPTIONS, true)
  check_merchants(rule, option == "MANUAL_INPUT_MERCHANT")
  local list = rule:get("award_list", true)
  if list == nil then return end
  if type(list) ~= "table" or #list < 1 or #list > 5 then return rule:fail("award_list", "1-5 awards") end
  for i, a in ipairs(list) do
    local c = common.checker(type(a) == "table" and a or {}, rule.prefix .. "/award_list/" .. (i - 1),
                             "body", rule.box)
    c:string("stock_id", 1, 20, true)
    c:string("original_image_url", 10, 128, true)
    c:string("thumbnail_url", 10, 128, #list > 1)
  end
end

-- Every G1 field rule; returns begin, end (the error is in c).
local function check_create(c, now)
  local base, rule = c:object("activity_base_info", true), c:object("award_send_rule", true)
  if not base or not rule then return end
  local b, e = check_base(base, now)
  check_rule(rule)
  local adv = c:object("advanced_setting")
  if adv then
    local who = adv:enum("delivery_user_category", { DELIVERY_ALL_PERSON = true, DELIVERY_MEMBER_PERSON = true })
    adv:string("merchant_member_appid", 1, 32, who == "DELIVERY_MEMBER_PERSON")
    adv:strings("goods_tags", 500, 64)
  end
  return b, e
end

-- The prize stocks against the sandbox's 商家券 store: nil when they fit, else the answer.
local function check_stocks(state, auth, body, b, e)
  local rule = body.award_send_rule
  if rule.merchant_option ~= "MANUAL_INPUT_MERCHANT" then
    return err(400, "INVALID_REQUEST", "商家券只支持手动输入发券商户号")
  end
  local n = #rule.award_list
  local single = rule.send_content == "SINGLE_COUPON"
  if (single and n ~= 1) or (not single and (n < 3 or n > 5)) then
    return err(400, "INVALID_REQUEST", "奖品数量与发放内容不符")
  end
  local stocks = common.state(state.store).busifavor.stocks
  local first
  for _, a in ipairs(rule.award_list) do
    local s = stocks[a.stock_id]
    if not s or s.creator ~= auth.mchid then return not_found() end
    if s.state ~= "RUNNING" or s.begin > b or s.finish < e then return err(400, "INVALID_REQUEST", NOT_RULE) end
    first = first or s
    if s.fields.stock_send_rule.max_coupons_per_user ~= first.fields.stock_send_rule.max_coupons_per_user
      or common.canonical(s.fields.coupon_use_rule.coupon_available_time)
        ~= common.canonical(first.fields.coupon_use_rule.coupon_available_time) then
      return err(400, "INVALID_REQUEST", NOT_SAME)
    end
  end
  return nil, first
end

--- G1 `POST …/unique-threshold-activity`.
function M.create(state, req, auth)
  local body, e = common.body(req)
  if not body then return e end
  local now = util.now()
  local c = common.checker(body)
  local b, finish = check_create(c, now)
  if c:error() then return c:error() end
  local p, cs = M.product(state)
  local answer, handle = common.replay(cs, { auth.mchid, "paygift.create", body.activity_base_info.out_request_no },
                                       body, "活动已存在")
  if answer then return answer end
  local refusal, stock = check_stocks(state, auth, body, b, finish)
  if refusal then return refusal end
  local id = common.new_id(8, p.acts)
  local t = common.time(now)
  local act = { id = id, creator = auth.mchid, belong = stock.fields.belong_merchant, body = body, begin = b,
                finish = finish, create_time = t, update_time = t, merchants = {} }
  for _, m in ipairs(body.award_send_rule.merchant_id_list) do
    act.merchants[#act.merchants + 1] = { mchid = m, create_time = t, update_time = t }
  end
  p.acts[id], p.order[#p.order + 1] = act, id
  return common.remember(cs, handle, common.ok{ activity_id = id, create_time = t })
end

--- An activity as G2 and G3 answer it: `award_send_rule` wrapped in `full_send_rule`.
function M.view(act, now)
  local rule = {}
  for k, v in pairs(act.body.award_send_rule) do rule[k] = v end
  rule.merchant_id_list = M.merchant_ids(act)
  return {
    activity_id = act.id, activity_type = "FULL_SEND_ACT_TYPE", activity_base_info = act.body.activity_base_info,
    award_send_rule = { full_send_rule = rule }, advanced_setting = act.body.advanced_setting,
    activity_status = M.status(act, now), creator_merchant_id = act.creator, belong_merchant_id = act.belong,
    create_time = act.create_time, update_time = act.update_time,
  }
end

--- G2 `GET …/activities/{activity_id}`.
function M.get(state, _, auth, captures)
  local act, e = own(state, auth, captures[1])
  if not act then return e end
  return common.ok(M.view(act, util.now()))
end

--- G3 `GET …/activities`: the caller's activities, filtered; no `data` when empty.
function M.list(state, req, auth)
  local _, params = util.parse_target(req.target)
  local c = common.checker(params, "", "query")
  local name = c:string("activity_name", 1, 10)
  local status = c:enum("activity_status", STATUSES)
  c:enum("award_type", { BUSIFAVOR = true })
  if c:error() then return c:error() end
  local offset, limit, e = common.paging(params, 10, 100)
  if e then return e end
  local p, now, out = M.product(state), util.now(), {}
  for _, id in ipairs(p.order) do
    local act = p.acts[id]
    if act.creator == auth.mchid and (not status or M.status(act, now) == status)
      and (not name or act.body.activity_base_info.activity_name:find(name, 1, true)) then
      out[#out + 1] = act
    end
  end
  return common.page_body(out, offset, limit, function(act) return M.view(act, now) end)
end

-- G4/G5 answers: every top-level field, `data` always an array.
local function sub_page(state, req, auth, captures, items_of)
  local act, e = own(state, auth, captures[1])
  if not act then return e end
  local _, params = util.parse_target(req.target)
  local offset, limit, perr = common.paging(params, 20, 100)
  if perr then return perr end
  local items, out = items_of(act), {}
  for i = offset * limit + 1, math.min((offset + 1) * limit, #items) do out[#out + 1] = json.encode(items[i]) end
  return { status = 200, body = string.format('{"activity_id":%s,"total_count":%d,"offset":%d,"limit":%d,"data":[%s]}',
    json.encode(act.id), #items, offset, limit, table.concat(out, ",")) }
end

--- G4 `GET …/activities/{activity_id}/merchants`.
function M.merchants(state, req, auth, captures)
  return sub_page(state, req, auth, captures, function(act) return act.merchants end)
end

--- G5 `GET …/activities/{activity_id}/goods`: a 全场满额送 activity names no goods.
function M.goods(state, req, auth, captures)
  return sub_page(state, req, auth, captures, function() return {} end)
end

--- G6 `POST …/activities/{activity_id}/terminate`: an empty body (official) or `{}`.
function M.terminate(state, req, auth, captures)
  local act, e = own(state, auth, captures[1])
  if not act then return e end
  if req.body ~= "" and not req.body:match("^%s*{%s*}%s*$") then
    return common.param_error("/", "terminate takes no body")
  end
  local now = util.now()
  local status = M.status(act, now)
  if status == "TERMINATE_ACT_STATUS" then return err(400, "INVALID_REQUEST", "活动已终止") end
  if status == "OVER_TIME_ACT_STATUS" or status == "CREATE_ACT_FAILED" then
    return err(400, "INVALID_REQUEST", "活动已结束")
  end
  act.terminate_time = common.time(now)
  act.update_time = act.terminate_time
  return common.ok{ activity_id = act.id, terminate_time = act.terminate_time }
end

-- G7/G8: the checked body, replay state and the activity, or nil and the answer.
local function merchants_write(state, req, auth, captures, op, number)
  local act, e = own(state, auth, captures[1])
  local body, cs, handle
  act, body, cs, handle = common.keyed_write(state, req, auth, act, e, function(c)
    check_merchants(c, true)
    -- delete_request_no has the request-number charset; add_request_no has no stated charset.
    if number == "add_request_no" then c:string(number, 1, 128, true) else c:request_no(number, 128) end
  end, { op = op, number = number, reused = "请求单号已使用" })
  if not act then return nil, body end
  local status = M.status(act, util.now())
  if status == "TERMINATE_ACT_STATUS" or status == "OVER_TIME_ACT_STATUS" then
    return nil, err(400, "INVALID_REQUEST", "活动已结束")
  end
  return act, body, cs, handle
end

--- G7 `POST …/merchants/add`: a partial success lists the merchants it refused.
function M.add(state, req, auth, captures)
  local act, body, cs, handle = merchants_write(state, req, auth, captures, "paygift.add", "add_request_no")
  if not act then return body end
  local brands, t, invalid = M.product(state).brands, common.time(util.now()), {}
  local present = {}
  for _, id in ipairs(M.merchant_ids(act)) do present[id] = true end
  for _, id in ipairs(body.merchant_id_list) do
    if id ~= act.creator and id ~= act.belong and not brands[id] then
      invalid[#invalid + 1] = { mchid = id, invalid_reason = NOT_BRAND }
    elseif not present[id] then
      present[id] = true
      act.merchants[#act.merchants + 1] = { mchid = id, create_time = t, update_time = t }
    end
  end
  act.update_time = t
  local answer = { activity_id = act.id, add_time = t }
  if #invalid > 0 then answer.invalid_merchant_id_list = invalid end
  return common.remember(cs, handle, common.ok(answer))
end

--- G8 `POST …/merchants/delete`.
function M.delete(state, req, auth, captures)
  local act, body, cs, handle = merchants_write(state, req, auth, captures, "paygift.delete", "delete_request_no")
  if not act then return body end
  local gone = {}
  for _, id in ipairs(body.merchant_id_list) do gone[id] = true end
  local kept = {}
  for _, m in ipairs(act.merchants) do if not gone[m.mchid] then kept[#kept + 1] = m end end
  act.merchants, act.update_time = kept, common.time(util.now())
  return common.remember(cs, handle, common.ok{ activity_id = act.id, delete_time = act.update_time })
end

local HANDLERS = { create = M.create, get = M.get, list = M.list, merchants = M.merchants, goods = M.goods,
  terminate = M.terminate, add_merchants = M.add, delete_merchants = M.delete }

-- `{ pattern, METHOD = handler }` per endpoint, from the client's declarations.
M.routes = {}
for name, e in pairs(require("wxpay.api.paygift").ENDPOINTS) do
  local pattern = "^" .. e[2]:gsub("%-", "%%-"):gsub("{activity_id}", "([^/]+)") .. "$"
  M.routes[#M.routes + 1] = { pattern, [e[1]] = HANDLERS[name] }
end

return M
