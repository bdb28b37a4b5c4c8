--- Control endpoints of 支付有礼 in the sandbox: a user's payment (which issues the prize
-- of the first ongoing activity it matches, through the 商家券 store, with a COUPON.SEND
-- callback per coupon), forcing an activity's status, and the merchants of the caller's
-- brand (G7 accepts them).
local coupons = require("wxpay.sandbox.coupons_control")
local json = require("wxpay.sandbox.json")
local paygift = require("wxpay.sandbox.paygift")
local util = require("wxpay.sandbox.util")

local M = {}

local PAYGIFT_CHANNEL = "BUSICOUPON_SEND_CHANNEL_PAYGIFT"
local DEFAULT_APPID = "wxd678efh567hg6787"

local function reply(status, value)
  return { status = status, body = json.encode(value) }
end

local function refuse(message)
  return reply(400, { error = message, code = "PARAM_ERROR" })
end

-- Whether a payment of `spec` at `now` triggers `act`.
local function matches(act, spec, now)
  if paygift.status(act, now) ~= "ONGOING_ACT_STATUS" then return false end
  if spec.amount < act.body.award_send_rule.transaction_amount_minimum then return false end
  local listed = false
  for _, id in ipairs(paygift.merchant_ids(act)) do listed = listed or id == spec.mchid end
  if not listed then return false end
  local tags = act.body.advanced_setting and act.body.advanced_setting.goods_tags
  if type(tags) == "table" and #tags > 0 then
    for _, t in ipairs(tags) do if t == spec.goods_tag then return true end end
    return false
  end
  return true
end

local function check_pay(spec)
  for _, name in ipairs{ "mchid", "openid" } do
    if type(spec[name]) ~= "string" or spec[name] == "" then return refuse(name .. " is required") end
  end
  if math.type(spec.amount) == "float" then spec.amount = math.tointeger(spec.amount) end
  if math.type(spec.amount) ~= "integer" or spec.amount < 1 then
    return refuse("amount (fen) must be a positive integer")
  end
  for _, name in ipairs{ "goods_tag", "appid", "transaction_id" } do
    if spec[name] ~= nil and type(spec[name]) ~= "string" then return refuse(name .. " must be a string") end
  end
  if spec.transaction_id and not spec.transaction_id:match("^[%w]+$") then
    return refuse("transaction_id must be letters and digits")
  end
end

-- Issue every award of `act` to the payer: one claim per stock, each with its callback.
local function issue(server, act, spec, transaction_id)
  local stocks = require("wxpay.sandbox.coupons_common").state(server.state.store).busifavor.stocks
  local issued, refused = {}, {}
  for i, award in ipairs(act.body.award_send_rule.award_list) do
    local stock = stocks[award.stock_id]
    local notify_config = stock and stock.fields.notify_config
    local res = coupons.claim(server, {
      stock_id = award.stock_id, openid = spec.openid,
      appid = spec.appid or (notify_config and notify_config.notify_appid) or DEFAULT_APPID,
      out_request_no = "PAYGIFT" .. transaction_id .. "_" .. i, send_channel = PAYGIFT_CHANNEL,
      send_merchant = spec.mchid, attach_info = { transaction_id = transaction_id, act_code = act.id },
      max_attempts = spec.max_attempts, retry_scale = spec.retry_scale,
    })
    local body = json.decode(res.body)
    if res.status == 200 then
      issued[#issued + 1] = { stock_id = award.stock_id, coupon_code = body.coupon_code, callback = body.callback,
                              replayed = body.code == "DUPREQUEST" or nil }
    else
      refused[#refused + 1] = { stock_id = award.stock_id, error = body.error, code = body.code }
    end
  end
  return issued, refused
end

--- `POST /_sandbox/paygift/pay {mchid, openid, amount, goods_tag?, appid?, transaction_id?,
-- max_attempts?, retry_scale?}`: a user pays `amount` fen at merchant `mchid`. The first
-- ongoing activity (in creation order) that lists the merchant, whose threshold the amount
-- reaches and whose goods tags (if any) include `goods_tag` issues its prize. The same
-- transaction_id again issues nothing new (the claims are keyed by it).
function M.pay(server, spec)
  local bad = check_pay(spec)
  if bad then return bad end
  local p, now = paygift.product(server.state), util.now()
  local transaction_id = spec.transaction_id or ("42" .. util.random_digits(26))
  for _, id in ipairs(p.order) do
    local act = p.acts[id]
    if matches(act, spec, now) then
      local issued, refused = issue(server, act, spec, transaction_id)
      return { status = 200, body = string.format('{"matched":true,"activity_id":%s,"transaction_id":%s,'
        .. '"coupons":%s,"refused":%s}', json.encode(act.id), json.encode(transaction_id), json.array(issued),
        json.array(refused)) }
    end
  end
  return reply(200, { matched = false, transaction_id = transaction_id })
end

local FORCED = { STOP_ACT_STATUS = true, CREATE_ACT_FAILED = true }

--- `POST /_sandbox/paygift/status {activity_id, activity_status}`: force STOP_ACT_STATUS
-- or CREATE_ACT_FAILED (states no API reaches), or `null` to follow the clock again.
function M.force_status(server, spec)
  local act = type(spec.activity_id) == "string" and paygift.product(server.state).acts[spec.activity_id]
  if not act then return reply(404, { error = "no such activity", code = "RESOURCE_NOT_EXISTS" }) end
  local status = spec.activity_status
  if status ~= nil and status ~= json.null and not FORCED[status] then
    return refuse("activity_status must be STOP_ACT_STATUS, CREATE_ACT_FAILED or null")
  end
  act.forced = FORCED[status] and status or nil
  return reply(200, { activity_id = act.id, activity_status = paygift.status(act, util.now()) })
end

--- `GET|POST /_sandbox/paygift/brands {merchants = {…}}`: merchants of the same brand as
-- every creator, which G7 adds (others come back in invalid_merchant_id_list).
function M.brands(server, spec)
  local p = paygift.product(server.state)
  if spec.merchants ~= nil then
    if type(spec.merchants) ~= "table" then return refuse("merchants must be an array") end
    for _, id in ipairs(spec.merchants) do
      if type(id) ~= "string" or not id:match("^%d+$") then return refuse("merchants must be digit strings") end
      p.brands[id] = true
    end
  end
  local out = {}
  for id in pairs(p.brands) do out[#out + 1] = id end
  table.sort(out)
  return { status = 200, body = '{"merchants":' .. json.array(out) .. "}" }
end

return M
