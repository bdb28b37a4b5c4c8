--- 代金券 (FAVOR_STOCK) in the sandbox: create stocks, start / pause / restart them, query
-- and list them, send coupons to users within budget and per-user limits, query a user's
-- coupons and the callback URL. A stock is unactivated until started; when the clock
-- passes its available_end_time it is stoped (the API's own spelling).
local common = require("wxpay.sandbox.coupons_common")
local util = require("wxpay.sandbox.util")

local M = {}

local err = common.error

local STATUSES = { unactivated = true, audit = true, running = true, paused = true, stoped = true }
local COUPON_STATUSES = { SENDED = true, USED = true, EXPIRED = true }
local DAY = 86400

local function product(state)
  return common.state(state.store).favor
end

local function not_found(what)
  return err(404, "RESOURCE_NOT_EXISTS", what or "批次不存在")
end

-- A stock whose window has ended is stoped, whatever it was.
local function refresh(stock, now)
  if stock.status ~= "stoped" and now >= stock.finish then
    stock.status, stock.stop_time = "stoped", common.time(stock.finish)
  end
  return stock
end

-- The stock `id` of `creator`, refreshed, or nil and the answer.
local function find_stock(state, id, creator)
  local stock = product(state).stocks[util.percent_decode(id)]
  if not stock or stock.creator ~= creator then return nil, not_found() end
  return refresh(stock, util.now())
end

-- stock_use_rule; the amount per coupon comes from coupon_use_rule.
local function check_stock_rule(c, amount)
  local rule = c:object("stock_use_rule", true)
  if not rule then return end
  local max = rule:int("max_coupons", 5, 10000000, true)
  local total = rule:int("max_amount", 1, 10000000000, true)
  local daily = rule:int("max_amount_by_day", 1, 10000000000)
  local per_user = rule:int("max_coupons_per_user", 1, 60, true)
  rule:bool("natural_person_limit", true)
  rule:bool("prevent_api_abuse", true)
  if rule:error() then return end
  if amount and total ~= amount * max then rule:fail("max_amount", "must equal coupon_amount × max_coupons") end
  if daily and daily > total then rule:fail("max_amount_by_day", "must not exceed max_amount") end
  if per_user > max then rule:fail("max_coupons_per_user", "must not exceed max_coupons") end
end

-- coupon_use_rule; returns the coupon amount.
local function check_coupon_rule(c)
  local rule = c:object("coupon_use_rule", true)
  if not rule then return nil end
  local fixed = rule:object("fixed_normal_coupon", true)
  local amount, minimum
  if fixed then
    amount = fixed:int("coupon_amount", 2, 100000, true)
    minimum = fixed:int("transaction_minimum", 1, 10000000000, true)
    if amount and minimum and minimum <= amount then
      fixed:fail("transaction_minimum", "must be more than coupon_amount")
    end
  end
  rule:strings("goods_tag", 50, 128)
  rule:strings("available_items", 50, 128)
  rule:strings("available_merchants", math.huge, 20) -- no count cap in the official table
  rule:strings("trade_type", 6, 16)
  rule:bool("combine_use")
  return amount
end

-- The window: begin ≥ now (a minute of clock skew allowed), ≤ 365 days ahead, ≤ 90 days long.
local function check_window(c, now)
  local begin, finish = c:time("available_begin_time", true), c:time("available_end_time", true)
  if c:error() then return nil end
  if begin < now - 60 or begin > now + 365 * DAY then
    return c:fail("available_begin_time", "must be from now to 365 days ahead")
  end
  if finish <= begin or finish - begin > 90 * DAY then
    return c:fail("available_end_time", "must be after available_begin_time, at most 90 days later")
  end
  return begin, finish
end

local function check_create(body, c, auth, now)
  local name = c:string("stock_name", 1, 20, true)
  -- At most 9 Chinese characters or 20 letters: a non-ASCII character counts as two.
  local ascii = name and #name:gsub("[\128-\255]", "")
  local wide = name and common.chars(name) - ascii
  if name and (ascii + 2 * wide > 20 or wide > 9 or name:find("[_,;|]")) then
    c:fail("stock_name", "stock_name must be at most 9 Chinese characters or 20 letters, without _ , ; |")
  end
  c:string("comment", 1, 60)
  local belong = c:string("belong_merchant", 1, 20, true)
  if belong and belong ~= auth.mchid then c:fail("belong_merchant", "must be the caller's mchid") end
  local begin, finish = check_window(c, now)
  check_stock_rule(c, check_coupon_rule(c))
  local pattern = c:object("pattern_info")
  if pattern then pattern:string("description", 1, 3000, true) end
  c:bool("no_cash", true)
  if c:string("stock_type", 1, 16, true) and body.stock_type ~= "NORMAL" then
    c:fail("stock_type", "only NORMAL is supported")
  end
  c:request_no("out_request_no", 128)
  c:string("ext_info", 1, 128)
  return begin, finish
end

--- F1 `POST /v3/marketing/favor/coupon-stocks`.
function M.create(state, req, auth)
  local body, e = common.body(req)
  if not body then return e end
  local now = util.now()
  local c = common.checker(body)
  local begin, finish = check_create(body, c, auth, now)
  if c:error() then return c:error() end
  local cs, p = common.state(state.store), product(state)
  local answer, handle = common.replay(cs, { auth.mchid, "favor.create", body.out_request_no }, body,
                                       "创建请求重入，但本次请求与上次请求信息不一致")
  if answer then return answer end
  local id = common.new_id(8, p.stocks)
  p.stocks[id] = { id = id, creator = auth.mchid, fields = body, status = "unactivated",
                   begin = begin, finish = finish, create_time = common.time(now),
                   distributed = 0, spent = 0, spent_by_day = {}, per_user = {} }
  p.order[#p.order + 1] = id
  return common.remember(cs, handle, common.ok{ stock_id = id, create_time = p.stocks[id].create_time })
end

-- F2–F4: `from` is the state the call needs, `to` the one it gives, `again` a state that
-- answers as a repeat (start is idempotent).
local TRANSITIONS = {
  start = { from = "unactivated", to = "running", again = "running", stamp = "start_time" },
  pause = { from = "running", to = "paused", again = nil, stamp = "pause_time" },
  restart = { from = "paused", to = "running", again = nil, stamp = "restart_time" },
}

local function transition(state, req, auth, id, name)
  local body, e = common.body(req)
  if not body then return e end
  local c = common.checker(body)
  local creator = c:string("stock_creator_mchid", 1, 20, true)
  if c:error() then return c:error() end
  if creator ~= auth.mchid then return err(403, "REQUEST_BLOCKED", "调用商户无权限") end
  local stock
  stock, e = find_stock(state, id, creator)
  if not stock then return e end
  local t = TRANSITIONS[name]
  if stock.status == t.again then
    return common.ok{ [t.stamp] = stock[t.stamp], stock_id = stock.id }
  end
  if stock.status ~= t.from then return err(400, "PARAM_ERROR", "非法的批次状态") end
  if name == "start" and not stock.fields.no_cash then
    local p = product(state)
    local amount = stock.fields.stock_use_rule.max_amount
    if p.balance < amount then return err(403, "NOT_ENOUGH", "激活失败:账户余额不足,请充值") end
    p.balance = p.balance - amount
  end
  stock.status, stock[t.stamp] = t.to, common.time(util.now())
  return common.ok{ [t.stamp] = stock[t.stamp], stock_id = stock.id }
end

local function stock_view(stock)
  local f = stock.fields
  local use, rule = f.coupon_use_rule, f.stock_use_rule
  return {
    stock_id = stock.id, stock_creator_mchid = stock.creator, stock_name = f.stock_name,
    status = stock.status, create_time = stock.create_time,
    description = f.pattern_info and f.pattern_info.description or "",
    stock_use_rule = {
      max_coupons = rule.max_coupons, max_amount = rule.max_amount,
      max_amount_by_day = rule.max_amount_by_day, max_coupons_per_user = rule.max_coupons_per_user,
      fixed_normal_coupon = use.fixed_normal_coupon, coupon_type = "NORMAL",
      goods_tag = use.goods_tag, trade_type = use.trade_type, combine_use = use.combine_use,
    },
    available_begin_time = f.available_begin_time, available_end_time = f.available_end_time,
    distributed_coupons = stock.distributed, no_cash = f.no_cash,
    start_time = stock.start_time, stop_time = stock.stop_time,
    singleitem = use.available_items ~= nil, stock_type = "NORMAL",
  }
end

--- F7 `GET /v3/marketing/favor/stocks/{stock_id}?stock_creator_mchid=`.
function M.get(state, req, auth, captures)
  local _, params = util.parse_target(req.target)
  local c = common.checker(params, "", "query")
  c:string("stock_creator_mchid", 1, 20, true)
  if c:error() then return c:error() end
  if params.stock_creator_mchid ~= auth.mchid then return err(403, "REQUEST_BLOCKED", "调用商户无权限") end
  local stock, e = find_stock(state, captures[1], auth.mchid)
  if not stock then return e end
  return common.ok(stock_view(stock))
end

--- F6 `GET /v3/marketing/favor/stocks`: pages of 1..10 stocks, newest last.
function M.list(state, req)
  local _, params = util.parse_target(req.target)
  local c = common.checker(params, "", "query")
  c:string("stock_creator_mchid", 1, 20, true)
  c:get("limit", true)
  local from, to = c:time("create_start_time"), c:time("create_end_time")
  c:enum("status", STATUSES)
  if c:error() then return c:error() end
  local offset, limit, e = common.paging(params, 10, 10)
  if e then return e end
  local p, now, out = product(state), util.now(), {}
  for _, id in ipairs(p.order) do
    local stock = refresh(p.stocks[id], now)
    local created = common.parse_time(stock.create_time)
    if stock.creator == params.stock_creator_mchid and (not params.status or stock.status == params.status)
      and (not from or created >= from) and (not to or created <= to) then
      out[#out + 1] = stock
    end
  end
  return common.page_body(out, offset, limit, stock_view)
end

-- Coupons --------------------------------------------------------------------------------

local function check_send(body, c)
  c:string("stock_id", 1, 20, true)
  c:request_no("out_request_no", 128)
  c:string("appid", 1, 128, true)
  c:string("stock_creator_mchid", 1, 20, true)
  for _, name in ipairs{ "coupon_value", "coupon_minimum" } do
    if body[name] ~= nil then c:fail(name, name .. " 该字段暂未开放") end
  end
end

-- Books one more coupon's amount against the budget and the limits, or answers why not.
local function spend(stock, openid, now)
  local rule = stock.fields.stock_use_rule
  local amount = stock.fields.coupon_use_rule.fixed_normal_coupon.coupon_amount
  if stock.status ~= "running" or now < stock.begin or now >= stock.finish then
    return err(400, "INVALID_REQUEST", "活动已结束或未激活")
  end
  local day = os.date("!%Y-%m-%d", math.floor(now) + 8 * 3600)
  if stock.distributed >= rule.max_coupons or stock.spent + amount > rule.max_amount
    or (rule.max_amount_by_day and (stock.spent_by_day[day] or 0) + amount > rule.max_amount_by_day) then
    return err(403, "NOT_ENOUGH", "批次预算不足")
  end
  if (stock.per_user[openid] or 0) >= rule.max_coupons_per_user then
    return err(403, "REQUEST_BLOCKED", "用户被限领拦截")
  end
  stock.spent_by_day[day] = (stock.spent_by_day[day] or 0) + amount
  stock.spent = stock.spent + amount
  return nil
end

--- F11 `POST /v3/marketing/favor/users/{openid}/coupons`.
function M.send(state, req, auth, captures)
  local openid = util.percent_decode(captures[1])
  local body, e = common.body(req)
  if not body then return e end
  local c = common.checker(body)
  check_send(body, c)
  if c:error() then return c:error() end
  local cs, p = common.state(state.store), product(state)
  local answer, handle = common.replay(cs, { auth.mchid, "favor.send", body.out_request_no, body.stock_id, openid },
                                       body, "发放请求重入，但本次请求与上次请求信息不一致")
  if answer then return answer end
  local stock
  stock, e = find_stock(state, body.stock_id, body.stock_creator_mchid)
  if not stock then return e end
  local now = util.now()
  e = spend(stock, openid, now)
  if e then return e end
  local id = common.new_id(10, p.coupons)
  p.coupons[id] = { id = id, stock = stock, openid = openid, appid = body.appid, status = "SENDED",
                    create_time = common.time(now) }
  stock.distributed = stock.distributed + 1
  stock.per_user[openid] = (stock.per_user[openid] or 0) + 1
  common.add_user_coupon(p, openid, id)
  return common.remember(cs, handle, common.ok{ coupon_id = id })
end

--- The coupon as F12/F13 show it.
function M.coupon_view(coupon)
  local stock = coupon.stock
  local f = stock.fields
  local fixed = f.coupon_use_rule.fixed_normal_coupon
  return {
    stock_creator_mchid = stock.creator, stock_id = stock.id, coupon_id = coupon.id,
    coupon_name = f.stock_name, status = coupon.status,
    description = f.pattern_info and f.pattern_info.description or "",
    create_time = coupon.create_time, coupon_type = "NORMAL", no_cash = f.no_cash,
    available_begin_time = f.available_begin_time, available_end_time = f.available_end_time,
    singleitem = f.coupon_use_rule.available_items ~= nil,
    normal_coupon_information = { coupon_amount = fixed.coupon_amount,
                                  transaction_minimum = fixed.transaction_minimum },
  }
end

-- A coupon whose stock window has ended and that was not used is EXPIRED.
local function coupon_status(coupon, now)
  if coupon.status == "SENDED" and now >= coupon.stock.finish then coupon.status = "EXPIRED" end
  return coupon.status
end

--- F12 `GET /v3/marketing/favor/users/{openid}/coupons/{coupon_id}?appid=`.
function M.get_coupon(state, req, _, captures)
  local _, params = util.parse_target(req.target)
  local c = common.checker(params, "", "query")
  c:string("appid", 1, 128, true)
  if c:error() then return c:error() end
  local coupon = product(state).coupons[util.percent_decode(captures[2])]
  if not coupon or coupon.openid ~= util.percent_decode(captures[1]) then return not_found("券不存在") end
  if coupon.appid ~= params.appid then return err(400, "INVALID_REQUEST", "openid与appid不匹配") end
  coupon_status(coupon, util.now())
  return common.ok(M.coupon_view(coupon))
end

-- Which coupons F13 shows: creator_mchid (with `status` SENDED: usable; USED: usable and
-- used; none: all but expired) wins over available_mchid (usable only).
local function wanted(coupon, params, now)
  local status = coupon_status(coupon, now)
  if params.creator_mchid then
    if coupon.stock.creator ~= params.creator_mchid then return false end
    if params.stock_id and coupon.stock.id ~= params.stock_id then return false end
    if params.status == "SENDED" then return status == "SENDED" end
    if params.status == "USED" then return status == "SENDED" or status == "USED" end
    return status ~= "EXPIRED"
  end
  return status == "SENDED"
end

--- F13 `GET /v3/marketing/favor/users/{openid}/coupons`.
function M.list_coupons(state, req, _, captures)
  local openid = util.percent_decode(captures[1])
  local _, params = util.parse_target(req.target)
  local c = common.checker(params, "", "query")
  c:string("appid", 1, 128, true)
  c:string("stock_id", 1, 20)
  c:enum("status", COUPON_STATUSES)
  for _, name in ipairs{ "creator_mchid", "sender_mchid", "available_mchid" } do c:string(name, 1, 20) end
  if not (params.creator_mchid or params.sender_mchid or params.available_mchid) then
    c:fail("creator_mchid", "one of creator_mchid, sender_mchid, available_mchid is required")
  end
  if c:error() then return c:error() end
  local offset, limit, e = common.paging(params, 20, 50)
  if e then return e end
  local p, now, out = product(state), util.now(), {}
  for _, id in ipairs(p.by_user[openid] or {}) do
    local coupon = p.coupons[id]
    if coupon.appid == params.appid and wanted(coupon, params, now) then out[#out + 1] = coupon end
  end
  return common.page_body(out, offset, limit, M.coupon_view)
end

--- F18 `POST /v3/marketing/favor/callbacks`.
function M.set_callback(state, req, auth)
  local body, e = common.body(req)
  if not body then return e end
  local c = common.checker(body)
  local mchid = c:string("mchid", 1, 20, true)
  local url = c:string("notify_url", 1, 256, true)
  if c:bool("switch") == false then c:fail("switch", "switch=false 暂不支持使用") end
  if c:error() then return c:error() end
  if not common.notify_url_ok(url) or url:find("?", 1, true) then
    return common.param_error("/notify_url", "notify_url must be https, without a query string")
  end
  if mchid ~= auth.mchid then return err(400, "INVALID_REQUEST", "非法的商户号") end
  product(state).notify[mchid] = url
  return common.ok{ update_time = common.time(util.now()), notify_url = url }
end

--- F19 `GET /v3/marketing/favor/callbacks?mchid=`.
function M.get_callback(state, req, auth)
  local _, params = util.parse_target(req.target)
  local c = common.checker(params, "", "query")
  c:string("mchid", 1, 20, true)
  if c:error() then return c:error() end
  if params.mchid ~= auth.mchid then return err(400, "INVALID_REQUEST", "非法的商户号") end
  local url = product(state).notify[params.mchid]
  if not url then return not_found("回调地址未设置") end
  return common.ok{ notify_url = url, mchid = params.mchid }
end

local function transition_route(name)
  return function(state, req, auth, captures) return transition(state, req, auth, captures[1], name) end
end

M.routes = {
  { "^/v3/marketing/favor/coupon%-stocks$", POST = M.create },
  { "^/v3/marketing/favor/stocks$", GET = M.list },
  { "^/v3/marketing/favor/stocks/([^/]+)$", GET = M.get },
  { "^/v3/marketing/favor/stocks/([^/]+)/start$", POST = transition_route("start") },
  { "^/v3/marketing/favor/stocks/([^/]+)/pause$", POST = transition_route("pause") },
  { "^/v3/marketing/favor/stocks/([^/]+)/restart$", POST = transition_route("restart") },
  { "^/v3/marketing/favor/users/([^/]+)/coupons$", POST = M.send, GET = M.list_coupons },
  { "^/v3/marketing/favor/users/([^/]+)/coupons/([^/]+)$", GET = M.get_coupon },
  { "^/v3/marketing/favor/callbacks$", POST = M.set_callback, GET = M.get_callback },
}

M.product, M.coupon_status = product, coupon_status

return M
