--- 商家券 (BUSIFAVOR_STOCK) in the sandbox: create, query and modify stocks, change their
-- budget by compare-and-set, use / return / deactivate coupons, list a user's coupons,
-- the callback URL, and a user's claim (control API) with its COUPON.SEND callback.
-- Stocks start RUNNING; there is no pause API for this product.
local common = require("wxpay.sandbox.coupons_common")
local util = require("wxpay.sandbox.util")

local M = {}

local err, param_error = common.error, common.param_error

local STOCK_TYPES = { NORMAL = "fixed_normal_coupon", DISCOUNT = "discount_coupon",
                      EXCHANGE = "exchange_coupon" }
local CODE_MODES = { WECHATPAY_MODE = true, MERCHANT_API = true, MERCHANT_UPLOAD = true }
local USE_METHODS = { OFF_LINE = true, MINI_PROGRAMS = true, PAYMENT_CODE = true, SELF_CONSUME = true }
local COUPON_STATES = { SENDED = true, USED = true, EXPIRED = true, DELETED = true, DEACTIVATED = true }
local YEAR = 366 * 86400

local function product(state)
  return common.state(state.store).busifavor
end

local function not_found(what)
  return err(404, "RESOURCE_NOT_EXISTS", what or "批次不存在")
end

-- The caller's stock `id`, or nil and the answer.
local function own_stock(state, auth, id)
  local stock = product(state).stocks[util.percent_decode(id)]
  if not stock then return nil, not_found() end
  if stock.creator ~= auth.mchid then return nil, err(403, "NOAUTH", "无权限") end
  return stock
end

-- coupon_use_rule.coupon_available_time; returns begin, end.
local function check_available_time(c)
  local t = c:object("coupon_available_time", true)
  if not t then return nil end
  local begin, finish = t:time("available_begin_time", true), t:time("available_end_time", true)
  t:int("available_day_after_receive", 1, 365)
  if t.t.wait_days_after_receive ~= nil and t.t.available_day_after_receive == nil then
    t:fail("wait_days_after_receive", "needs available_day_after_receive")
  end
  t:int("wait_days_after_receive", 0, 30)
  if begin and finish and (finish <= begin or finish - begin > YEAR) then
    t:fail("available_end_time", "must be after available_begin_time, at most 1 year later")
  end
  return begin, finish
end

-- coupon_use_rule: the window, then exactly the rule object that matches stock_type.
local function check_use_rule(body, c)
  local rule = c:object("coupon_use_rule", true)
  if not rule then return nil end
  local begin, finish = check_available_time(rule)
  local wanted = STOCK_TYPES[body.stock_type]
  for _, name in ipairs{ "fixed_normal_coupon", "discount_coupon", "exchange_coupon" } do
    local o = rule:object(name, name == wanted)
    if o and name ~= wanted then rule:fail(name, "does not match stock_type") end
    if o and name == "fixed_normal_coupon" then o:int("discount_amount", 1, 10000000, true) end
    if o and name == "discount_coupon" then o:int("discount_percent", 1, 100, true) end
    if o and name == "exchange_coupon" then o:int("exchange_price", 0, 10000000, true) end
    if o then o:int("transaction_minimum", 1, 10000000, true) end
  end
  rule:enum("use_method", USE_METHODS, true)
  -- "选填 … 核销方式为线上小程序核销才有效": optional even with MINI_PROGRAMS.
  rule:string("mini_programs_appid", 1, 32, false)
  rule:string("mini_programs_path", 1, 128, false)
  return begin, finish
end

local function check_send_rule(c)
  local rule = c:object("stock_send_rule", true)
  if not rule then return end
  -- No per-user <= total rule: it is stated for 代金券 only.
  rule:int("max_coupons", 1, 1000000000, true)
  rule:int("max_coupons_per_user", 1, 100, true)
  rule:int("max_coupons_by_day", 1, 1000000000)
  for _, name in ipairs{ "natural_person_limit", "prevent_api_abuse", "transferable", "shareable" } do
    rule:bool(name)
  end
end

-- Every B1 rule; returns the window or nil (the error is in c).
local function check_create(body, c)
  c:string("stock_name", 1, 21, true)
  c:string("belong_merchant", 8, 15, true, "^%d+$")
  c:string("comment", 1, 20)
  c:string("goods_name", 1, 15, true)
  c:enum("stock_type", STOCK_TYPES, true)
  c:enum("coupon_code_mode", CODE_MODES, true)
  c:request_number("out_request_no", 128)
  local begin, finish = check_use_rule(body, c)
  check_send_rule(c)
  local notify = c:object("notify_config")
  if notify then notify:string("notify_appid", 1, 32) end
  c:object("custom_entrance")
  c:object("display_pattern_info")
  c:bool("subsidy")
  return begin, finish
end

--- B1 `POST /v3/marketing/busifavor/stocks`.
function M.create(state, req, auth)
  local body, e = common.body(req)
  if not body then return e end
  local c = common.checker(body)
  local begin, finish = check_create(body, c)
  if c:error() then return c:error() end
  local p, cs = product(state), common.state(state.store)
  local answer, handle = common.replay(cs, { auth.mchid, "busifavor.create", body.out_request_no },
                                       body, "批次已存在")
  if answer then return answer end
  local id = common.new_id(16, p.stocks)
  local now = util.now()
  local fields = {}
  for k, v in pairs(body) do if k ~= "out_request_no" then fields[k] = v end end
  p.stocks[id] = { id = id, creator = auth.mchid, fields = fields, state = "RUNNING",
                   begin = begin, finish = finish, create_time = common.time(now),
                   sent = 0, day = nil, sent_today = 0, per_user = {}, requests = {} }
  p.order[#p.order + 1] = id
  return common.remember(cs, handle, common.ok{ stock_id = id, create_time = p.stocks[id].create_time })
end

local function stock_view(stock)
  local v = {}
  for k, x in pairs(stock.fields) do v[k] = x end
  v.stock_id, v.stock_state = stock.id, stock.state
  local rule = stock.fields.coupon_use_rule.fixed_normal_coupon
  local amount = rule and rule.discount_amount
  v.send_count_information = {
    total_send_num = stock.sent, total_send_amount = amount and stock.sent * amount or nil,
    today_send_num = stock.sent_today, today_send_amount = amount and stock.sent_today * amount or nil,
  }
  return v
end

--- B2 `GET /v3/marketing/busifavor/stocks/{stock_id}`.
function M.get(state, _, auth, captures)
  local stock, e = own_stock(state, auth, captures[1])
  if not stock then return e end
  return common.ok(stock_view(stock))
end

-- Which B3 fields may change and how deep.
local MODIFIABLE = {
  custom_entrance = true, comment = true, goods_name = true, display_pattern_info = true,
  notify_config = true, subsidy = true,
  coupon_use_rule = { use_method = true, mini_programs_appid = true, mini_programs_path = true },
  stock_send_rule = { prevent_api_abuse = true },
}

local function check_modify(stock, body, c)
  c:request_number("out_request_no", 128)
  c:string("comment", 1, 20)
  c:string("goods_name", 1, 15)
  c:bool("subsidy")
  for name, allowed in pairs(body) do
    if name ~= "out_request_no" and not MODIFIABLE[name] then c:fail(name, "暂不支持修改") end
    if type(allowed) == "table" and type(MODIFIABLE[name]) == "table" then
      for sub in pairs(allowed) do
        if not MODIFIABLE[name][sub] then c:fail(name .. "/" .. sub, "暂不支持修改") end
      end
    end
  end
  for _, name in ipairs{ "custom_entrance", "display_pattern_info", "notify_config" } do c:object(name) end
  local use = c:object("coupon_use_rule")
  if use then use:enum("use_method", USE_METHODS) end
  local send = c:object("stock_send_rule")
  if send then send:bool("prevent_api_abuse") end
  if body.subsidy == false and stock.fields.subsidy == true then c:fail("subsidy", "can only turn on") end
end

-- The start of a keyed write on one of the caller's stocks: the stock, its checked body
-- (`check(c, stock, body)`) and the replay state of request number `number`. Returns stock,
-- body, cs, handle, or nil and the answer to send (an error, or the stored replay).
local function keyed_write(state, req, auth, captures, check, op, number)
  local stock, e = own_stock(state, auth, captures[1])
  return common.keyed_write(state, req, auth, stock, e, check, { op = op, number = number, reused = "批次已存在" })
end

--- B3 `PATCH /v3/marketing/busifavor/stocks/{stock_id}` (204 on success).
function M.modify(state, req, auth, captures)
  local stock, body, cs, handle = keyed_write(state, req, auth, captures,
    function(c, st, b) check_modify(st, b, c) end, "busifavor.modify", "out_request_no")
  if not stock then return body end
  if stock.finish and util.now() >= stock.finish then return err(400, "INVALID_REQUEST", "批次已过期") end
  for name, v in pairs(body) do
    if type(MODIFIABLE[name]) == "table" then
      for sub, x in pairs(v) do stock.fields[name][sub] = x end
    elseif name ~= "out_request_no" then
      stock.fields[name] = v
    end
  end
  return common.remember(cs, handle, { status = 204, body = "" })
end

-- B4 checks: a target (one or both, as the official example sends), and its current value
-- when the target is positive.
local function check_budget(c)
  c:request_number("modify_budget_request_no", 128)
  local total = c:int("target_max_coupons", 0, 1000000000)
  local daily = c:int("target_max_coupons_by_day", 0, 1000000000)
  if c:error() then return end
  if total == nil and daily == nil then
    return c:fail("target_max_coupons", "give target_max_coupons or target_max_coupons_by_day")
  end
  c:int("current_max_coupons", 0, 1000000000, total ~= nil and total > 0)
  c:int("current_max_coupons_by_day", 0, 1000000000, daily ~= nil and daily > 0)
end

--- B4 `PATCH /v3/marketing/busifavor/stocks/{stock_id}/budget`: compare-and-set.
function M.budget(state, req, auth, captures)
  local stock, body, cs, handle = keyed_write(state, req, auth, captures, check_budget, "busifavor.budget",
    "modify_budget_request_no")
  if not stock then return body end
  local rule = stock.fields.stock_send_rule
  for _, field in ipairs{ "max_coupons", "max_coupons_by_day" } do
    local current = body["current_" .. field]
    if current ~= nil and current ~= (rule[field] or 0) then -- an unset daily cap is 0
      return err(400, "INVALID_REQUEST", "批次库存的当前值错误,请获取批次详情查看最新值")
    end
  end
  local total = body.target_max_coupons
  if total and total < math.max(stock.sent, rule.max_coupons_per_user) then
    return err(400, "INVALID_REQUEST", "批次库存不能低于已发放数量或单用户上限")
  end
  rule.max_coupons = total or rule.max_coupons
  rule.max_coupons_by_day = body.target_max_coupons_by_day or rule.max_coupons_by_day
  return common.remember(cs, handle, common.ok{ max_coupons = rule.max_coupons,
                                                max_coupons_by_day = rule.max_coupons_by_day })
end

-- Coupons --------------------------------------------------------------------------------

-- The coupon with `code` (in `stock_id` when given), or nil and the answer. Codes the
-- merchant chose (MERCHANT_API / MERCHANT_UPLOAD) are only found with their stock_id.
local function find_coupon(state, code, stock_id)
  local p = product(state)
  local coupon = p.coupons[code]
  if not coupon or (stock_id and coupon.stock_id ~= stock_id) then return nil, not_found("券不存在") end
  local stock = p.stocks[coupon.stock_id]
  if not stock_id and stock.fields.coupon_code_mode ~= "WECHATPAY_MODE" then return nil, not_found("券不存在") end
  return coupon, stock
end

local function coupon_view(coupon)
  local f = coupon.stock.fields
  return {
    belong_merchant = f.belong_merchant, stock_name = f.stock_name, comment = f.comment,
    goods_name = f.goods_name, stock_type = f.stock_type, transferable = false, shareable = false,
    coupon_state = coupon.state, display_pattern_info = f.display_pattern_info,
    coupon_use_rule = f.coupon_use_rule, custom_entrance = f.custom_entrance,
    coupon_code = coupon.code, stock_id = coupon.stock_id,
    available_start_time = common.time(coupon.begin), expire_time = common.time(coupon.finish),
    receive_time = common.time(coupon.receive_time), send_request_no = coupon.send_request_no,
    use_request_no = coupon.use_request_no, use_time = coupon.use_time,
    return_request_no = coupon.return_request_no, return_time = coupon.return_time,
    deactivate_request_no = coupon.deactivate_request_no, deactivate_time = coupon.deactivate_time,
    deactivate_reason = coupon.deactivate_reason, associate_out_trade_no = coupon.associate_out_trade_no,
  }
end
M.coupon_view = coupon_view

-- One coupon operation: common field checks, replay, lookup, then `apply`.
local function coupon_op(state, req, auth, op)
  local body, e = common.body(req)
  if not body then return e end
  local c = common.checker(body)
  c:string("coupon_code", 1, 128, true)
  c:string("stock_id", 1, 20, op.stock_required)
  c:request_number(op.request_no, 128)
  if op.check then op.check(c) end
  if c:error() then return c:error() end
  local cs = common.state(state.store)
  local answer, handle = common.replay(cs, { auth.mchid, op.name, body[op.request_no] }, body, "批次已存在")
  if answer then return answer end
  if op.stock_required and not product(state).stocks[body.stock_id] then return not_found() end
  local coupon, stock = find_coupon(state, body.coupon_code, body.stock_id)
  if not coupon then return stock end
  if stock.creator ~= auth.mchid then return err(403, "NOAUTH", "无权限") end
  return common.remember(cs, handle, op.apply(body, coupon, stock, util.now()))
end

local USE = { name = "busifavor.use", request_no = "use_request_no" }
function USE.check(c)
  c:string("appid", 1, 32, true)
  c:time("use_time", true)
  c:string("openid", 1, 128)
end
function USE.apply(body, coupon, _, now)
  if body.openid and body.openid ~= coupon.openid then return err(404, "USER_NOT_EXISTS", "openid不正确") end
  if coupon.state ~= "SENDED" then return err(400, "RESOURCE_ALREADY_EXISTS", "券已被其他订单核销") end
  if now < coupon.begin or now >= coupon.finish then return err(403, "RULELIMIT", "券不在有效期") end
  coupon.state, coupon.use_request_no, coupon.use_time = "USED", body.use_request_no, body.use_time
  return common.ok{ stock_id = coupon.stock_id, openid = coupon.openid,
                    wechatpay_use_time = common.time(now) }
end

local RETURN = { name = "busifavor.return", request_no = "return_request_no", stock_required = true }
function RETURN.apply(body, coupon, _, now)
  if coupon.state ~= "USED" then return err(400, "INVALID_REQUEST", "券不是已核销状态，不能退券") end
  coupon.state, coupon.return_request_no, coupon.return_time = "SENDED", body.return_request_no, common.time(now)
  coupon.use_request_no, coupon.use_time = nil, nil
  return common.ok{ wechatpay_return_time = coupon.return_time }
end

local DEACTIVATE = { name = "busifavor.deactivate", request_no = "deactivate_request_no", stock_required = true }
function DEACTIVATE.check(c) c:string("deactivate_reason", 1, 64) end
function DEACTIVATE.apply(body, coupon, _, now)
  if coupon.state ~= "SENDED" then return err(400, "INVALID_REQUEST", "券的状态不是SENDED，不能使券失效") end
  coupon.state, coupon.deactivate_time = "DEACTIVATED", common.time(now)
  coupon.deactivate_request_no, coupon.deactivate_reason = body.deactivate_request_no, body.deactivate_reason
  return common.ok{ wechatpay_deactivate_time = coupon.deactivate_time }
end

--- B5 `POST /v3/marketing/busifavor/coupons/use`.
function M.use(state, req, auth) return coupon_op(state, req, auth, USE) end
--- B16 `POST /v3/marketing/busifavor/coupons/return`.
function M.give_back(state, req, auth) return coupon_op(state, req, auth, RETURN) end
--- B17 `POST /v3/marketing/busifavor/coupons/deactivate`.
function M.deactivate(state, req, auth) return coupon_op(state, req, auth, DEACTIVATE) end

--- B6 `GET /v3/marketing/busifavor/users/{openid}/coupons`.
function M.list_coupons(state, req, _, captures)
  local openid = util.percent_decode(captures[1])
  local _, params = util.parse_target(req.target)
  local c = common.checker(params, "", "query")
  c:string("appid", 1, 32, true)
  c:string("stock_id", 1, 20)
  c:enum("coupon_state", COUPON_STATES)
  for _, name in ipairs{ "creator_merchant", "belong_merchant", "sender_merchant" } do c:string(name, 1, 32) end
  if not (params.creator_merchant or params.belong_merchant or params.sender_merchant) then
    c:fail("creator_merchant", "one of creator_merchant, belong_merchant, sender_merchant is required")
  end
  if c:error() then return c:error() end
  local offset, limit, e = common.paging(params, 20, 50)
  if e then return e end
  local p, out = product(state), {}
  for _, code in ipairs(p.by_user[openid] or {}) do
    local coupon = p.coupons[code]
    local f = p.stocks[coupon.stock_id].fields
    if coupon.appid == params.appid and (not params.stock_id or coupon.stock_id == params.stock_id)
      and (not params.coupon_state or coupon.state == params.coupon_state)
      and (not params.creator_merchant or p.stocks[coupon.stock_id].creator == params.creator_merchant)
      and (not params.belong_merchant or f.belong_merchant == params.belong_merchant)
      and (not params.sender_merchant or coupon.send_merchant == params.sender_merchant) then
      out[#out + 1] = coupon
    end
  end
  return common.page_body(out, offset, limit, coupon_view)
end

--- B7 `GET /v3/marketing/busifavor/users/{openid}/coupons/{coupon_code}/appids/{appid}`.
function M.get_coupon(state, _, auth, captures)
  local p = product(state)
  local coupon = p.coupons[util.percent_decode(captures[2])]
  if not coupon or coupon.openid ~= util.percent_decode(captures[1])
    or coupon.appid ~= util.percent_decode(captures[3]) then
    return not_found("券不存在")
  end
  if p.stocks[coupon.stock_id].creator ~= auth.mchid then return err(403, "NOAUTH", "无权限") end
  return common.ok(coupon_view(coupon))
end

--- B12 `POST /v3/marketing/busifavor/callbacks`.
function M.set_callback(state, req, auth)
  local body, e = common.body(req)
  if not body then return e end
  local c = common.checker(body)
  local mchid = c:string("mchid", 8, 15) or auth.mchid
  local url = c:string("notify_url", 10, 256, true)
  if c:error() then return c:error() end
  if not common.notify_url_ok(url) then return param_error("/notify_url", "notify_url must be https") end
  if mchid ~= auth.mchid then return err(403, "NOAUTH", "无权限") end
  local t = common.time(util.now())
  product(state).notify[mchid] = url
  return common.ok{ update_time = t, notify_url = url, mchid = mchid }
end

--- B13 `GET /v3/marketing/busifavor/callbacks`.
function M.get_callback(state, req, auth)
  local _, params = util.parse_target(req.target)
  local mchid = params.mchid or auth.mchid
  if mchid ~= auth.mchid then return err(403, "NOAUTH", "无权限") end
  local url = product(state).notify[mchid]
  if not url then return not_found("回调地址未设置") end
  return common.ok{ mchid = mchid, notify_url = url }
end

M.routes = {
  { "^/v3/marketing/busifavor/stocks$", POST = M.create },
  { "^/v3/marketing/busifavor/stocks/([^/]+)$", GET = M.get, PATCH = M.modify },
  { "^/v3/marketing/busifavor/stocks/([^/]+)/budget$", PATCH = M.budget },
  { "^/v3/marketing/busifavor/coupons/use$", POST = M.use },
  { "^/v3/marketing/busifavor/coupons/return$", POST = M.give_back },
  { "^/v3/marketing/busifavor/coupons/deactivate$", POST = M.deactivate },
  { "^/v3/marketing/busifavor/users/([^/]+)/coupons$", GET = M.list_coupons },
  { "^/v3/marketing/busifavor/users/([^/]+)/coupons/([^/]+)/appids/([^/]+)$", GET = M.get_coupon },
  { "^/v3/marketing/busifavor/callbacks$", POST = M.set_callback, GET = M.get_callback },
}

return M
