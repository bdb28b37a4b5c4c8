--- Control endpoints of the coupon products, for what a user (not the merchant) does:
-- claim a 商家券 (the stock creator's notify URL gets COUPON.SEND) and use a 代金券 (it
-- gets COUPON.USE); plus the merchant balance a 预充值 代金券 start draws on.
local common = require("wxpay.sandbox.coupons_common")
local codes = require("wxpay.sandbox.coupons_codes")
local favor = require("wxpay.sandbox.coupons_favor")
local json = require("wxpay.sandbox.json")
local util = require("wxpay.sandbox.util")

local M = {}

local DAY = 86400

local function reply(status, value)
  return { status = status, body = json.encode(value) }
end

-- `code` is the result code of the 小程序发券插件 for the same refusal.
local function refuse(message, code)
  return reply(400, { error = message, code = code })
end

-- Sends `event` when the creator set a notify URL; returns the record or the error, as JSON.
local function notify(server, url, event, spec)
  if not url then return nil end
  local view, e = common.notify(server, url, event, spec)
  if not view then return json.encode{ error = e } end
  return view
end

-- A 200 answer with the callback record spliced in as its own JSON (decoded and encoded
-- again, its empty `attempts` array would become {}).
local function reply_with(value, callback)
  local body = json.encode(value)
  if callback then body = body:sub(1, -2) .. ',"callback":' .. callback .. "}" end
  return { status = 200, body = body }
end

-- Why the stock cannot give `openid` one more coupon now, as (message, code), or nil.
local function claim_refusal(stock, spec, now)
  local rule, mode = stock.fields.stock_send_rule, stock.fields.coupon_code_mode
  local day = os.date("!%Y-%m-%d", math.floor(now) + 8 * 3600)
  if stock.day ~= day then stock.day, stock.sent_today = day, 0 end
  if stock.state ~= "RUNNING" or now >= stock.finish then return "the stock is not running", "NOTRUNNING" end
  if stock.sent >= rule.max_coupons or (mode == "MERCHANT_UPLOAD" and not codes.has_available(stock)) then
    return "no coupons left", "NOTENOUGH"
  end
  if rule.max_coupons_by_day and stock.sent_today >= rule.max_coupons_by_day then
    return "the daily limit is reached", "DAYLIMIT"
  end
  if (stock.per_user[spec.openid] or 0) >= rule.max_coupons_per_user then
    return "the user has the most coupons allowed", "MAXQUOTA"
  end
  if mode == "MERCHANT_API" and (type(spec.coupon_code) ~= "string"
      or not spec.coupon_code:match("^[%w _%-\\/=|]+$") or #spec.coupon_code > 128) then
    return "coupon_code (1-128 characters) is required for a MERCHANT_API stock", "PARAM_ERROR"
  end
end

-- The coupon's window: the stock's, or N days from receipt (after the waiting days).
local function window(stock, now)
  local t = stock.fields.coupon_use_rule.coupon_available_time
  local begin, finish = stock.begin, stock.finish
  if t.available_day_after_receive then
    begin = math.max(begin, now + (t.wait_days_after_receive or 0) * DAY)
    finish = math.min(finish, begin + t.available_day_after_receive * DAY)
  end
  return begin, finish
end

local function issue(p, stock, spec, request_no, now)
  local code = spec.coupon_code
  if stock.fields.coupon_code_mode == "WECHATPAY_MODE" then code = common.new_id(22, p.coupons) end
  if stock.fields.coupon_code_mode == "MERCHANT_UPLOAD" then code = codes.take(stock, spec.openid, now) end
  local begin, finish = window(stock, now)
  local coupon = { code = code, stock_id = stock.id, stock = stock, openid = spec.openid,
                   appid = spec.appid, state = "SENDED", receive_time = now, begin = begin,
                   finish = finish, send_request_no = request_no,
                   send_merchant = spec.send_merchant or stock.creator }
  p.coupons[code] = coupon
  stock.sent, stock.sent_today = stock.sent + 1, stock.sent_today + 1
  stock.per_user[spec.openid] = (stock.per_user[spec.openid] or 0) + 1
  stock.requests[spec.openid .. "\0" .. request_no] = code
  common.add_user_coupon(p, spec.openid, code)
  return coupon
end

-- The type of every optional field of a control request, or the refusal.
local OPTIONAL = { coupon_code = "string", out_request_no = "string", send_channel = "string",
                   send_merchant = "string", transaction_id = "string", consume_mchid = "string",
                   goods_detail = "table", attach_info = "table", max_attempts = "number", retry_scale = "number" }

local function check_spec(spec, required)
  for _, name in ipairs(required) do
    if type(spec[name]) ~= "string" or spec[name] == "" then return refuse(name .. " is required", "PARAM_ERROR") end
  end
  for name, kind in pairs(OPTIONAL) do
    if spec[name] ~= nil and type(spec[name]) ~= kind then
      return refuse(name .. " must be a " .. kind, "PARAM_ERROR")
    end
  end
end

--- `POST /_sandbox/busifavor/claim {stock_id, openid, appid, coupon_code?, out_request_no?,
-- send_channel?, send_merchant?, attach_info?, max_attempts?, retry_scale?}`: a user claims a 商家券.
function M.claim(server, spec)
  local bad = check_spec(spec, { "stock_id", "openid", "appid" })
  if bad then return bad end
  local p = common.state(server.state.store).busifavor
  local stock = p.stocks[spec.stock_id]
  if not stock then return reply(404, { error = "no such stock", code = "PARAM_ERROR" }) end
  local request_no = spec.out_request_no or util.random_alnum(24)
  local dup = stock.requests[spec.openid .. "\0" .. request_no]
  if dup then return reply(200, { code = "DUPREQUEST", coupon_code = dup, stock_id = stock.id }) end
  local now = util.now()
  local message, code = claim_refusal(stock, spec, now)
  if message then return refuse(message, code) end
  if stock.fields.coupon_code_mode == "MERCHANT_API" and p.coupons[spec.coupon_code] then
    return refuse("coupon_code is taken", "PARAM_ERROR")
  end
  local coupon = issue(p, stock, spec, request_no, now)
  local notify_config = stock.fields.notify_config
  local shown = notify_config and notify_config.notify_appid and spec.openid or ""
  local callback = notify(server, p.notify[stock.creator], {
    event_type = "COUPON.SEND", summary = "商家券领券通知", associated_data = "coupon",
    resource = { event_type = "EVENT_TYPE_BUSICOUPON_SEND", coupon_code = coupon.code,
                 stock_id = stock.id, send_time = common.time(now), openid = shown, unionid = "",
                 send_channel = spec.send_channel or "BUSICOUPON_SEND_CHANNEL_MINIAPP",
                 send_merchant = coupon.send_merchant, attach_info = spec.attach_info },
  }, spec)
  return reply_with({ code = "SUCCESS", coupon_code = coupon.code, stock_id = stock.id,
                      out_request_no = request_no }, callback)
end

--- `POST /_sandbox/favor/redeem {coupon_id, openid, transaction_id?, consume_mchid?,
-- goods_detail?, max_attempts?, retry_scale?}`: a user pays with a 代金券.
function M.redeem(server, spec)
  local bad = check_spec(spec, { "coupon_id", "openid" })
  if bad then return bad end
  local p = favor.product(server.state)
  local coupon = p.coupons[spec.coupon_id]
  if not coupon or coupon.openid ~= spec.openid then
    return reply(404, { error = "no such coupon for this user", code = "RESOURCE_NOT_EXISTS" })
  end
  local now = util.now()
  local status = favor.coupon_status(coupon, now)
  if status ~= "SENDED" then return refuse("the coupon is " .. status, "INVALID_REQUEST") end
  if now < coupon.stock.begin then return refuse("the coupon is not usable yet", "INVALID_REQUEST") end
  coupon.status = "USED"
  local resource = favor.coupon_view(coupon)
  resource.consume_information = {
    consume_time = common.time(now), consume_mchid = spec.consume_mchid or coupon.stock.creator,
    transaction_id = spec.transaction_id or ("42" .. util.random_digits(26)),
    goods_detail = spec.goods_detail,
  }
  coupon.consume = resource.consume_information -- for the use-flow file
  local callback = notify(server, p.notify[coupon.stock.creator], {
    event_type = "COUPON.USE", summary = "用券成功", associated_data = "", resource = resource,
  }, spec)
  return reply_with({ coupon_id = coupon.id, status = "USED" }, callback)
end

--- `POST /_sandbox/favor/balance {balance}`: the fen a 预充值 start can lock.
function M.balance(server, spec)
  local p = favor.product(server.state)
  if spec.balance ~= nil then
    local n = type(spec.balance) == "number" and math.tointeger(spec.balance)
    if not n or n < 0 then return refuse("balance must be a non-negative integer", "PARAM_ERROR") end
    p.balance = n
  end
  return reply(200, { balance = p.balance })
end

return M
