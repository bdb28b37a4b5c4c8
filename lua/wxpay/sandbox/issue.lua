--- 发券 in the sandbox: control endpoints that act as the mini-program 发券插件, the H5发券
-- page and JSAPI `wx.addCard` for one user. Each verifies the signature with the APIv2 key
-- of `send_coupon_merchant` (wxpay.sandbox.issue_sign names the rule that failed), issues
-- through the 商家券 / 代金券 store with the plugin's result codes, and fires COUPON.SEND
-- with the channel's `send_channel`. Plus the APIv2 key of any merchant, a bare signature
-- check, and the jump-code ciphertext of an issued 商家券.
local core = require("wxpay.core")
local common = require("wxpay.sandbox.coupons_common")
local coupons_control = require("wxpay.sandbox.coupons_control")
local favor = require("wxpay.sandbox.coupons_favor")
local json = require("wxpay.sandbox.json")
local sign_check = require("wxpay.sandbox.issue_sign")
local util = require("wxpay.sandbox.util")

local M = {}

M.MAX_COUPONS = 10
M.CHANNEL = { plugin = "BUSICOUPON_SEND_CHANNEL_MINIAPP", h5 = "BUSICOUPON_SEND_CHANNEL_H5",
              jsapi = "BUSICOUPON_SEND_CHANNEL_JSAPI" }
local H5_PREFIX = "https://action.weixin.qq.com/busifavor/getcouponinfo?"
local H5_FRAGMENTS = { ["wechat_pay&wechat_redirect"] = true, wechat_redirect = true }
local ITEM_FIELDS = { stock_id = true, out_request_no = true, coupon_code = true,
                      create_coupon_merchant = true, customize_send_time = true }

local function percent_encode(s)
  return (s:gsub("[^A-Za-z0-9%-._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

local function reply(status, value)
  return { status = status, body = json.encode(value) }
end

-- The plugin's answer to a call refused as a whole.
local function refused(errcode, msg, rule)
  return reply(400, { errcode = errcode, msg = msg, rule = rule })
end

-- Why an item cannot be issued at all (PARAM_ERROR for the whole call), or nil.
local function item_problem(item, i, h5)
  if type(item) ~= "table" then return "item " .. i .. " is not an object" end
  for k, v in pairs(item) do
    if not ITEM_FIELDS[k] then return "item " .. i .. ": unknown field " .. tostring(k) end
    if type(v) ~= "string" then return "item " .. i .. ": " .. k .. " must be a string" end
  end
  local no = item.out_request_no
  if type(item.stock_id) ~= "string" or #item.stock_id > 20 then return "item " .. i .. ": stock_id is required" end
  if type(no) ~= "string" or #no > 128 or not no:match(h5 and "^[A-Za-z0-9]+$" or "^[A-Za-z0-9|_*-]+$") then
    local charset = h5 and "letters and digits" or "letters, digits, | _ * -"
    return "item " .. i .. ": out_request_no is required (" .. charset .. ", at most 128)"
  end
  if item.customize_send_time and not common.parse_time(item.customize_send_time) then
    return "item " .. i .. ": customize_send_time must be an RFC 3339 time"
  end
end

-- One 代金券 through F11, as the plugin reports it.
local function issue_favor(server, stock, item, spec, merchant)
  if item.create_coupon_merchant ~= stock.creator then
    return "FAILED", "create_coupon_merchant must name the 代金券's creator " .. stock.creator
  end
  local body = json.encode{ stock_id = stock.id, out_request_no = item.out_request_no, appid = spec.appid,
                            stock_creator_mchid = stock.creator }
  local resp = favor.send(server.state, { body = body, target = "/" }, { mchid = merchant }, { spec.openid })
  local answer = json.decode(resp.body) or {}
  if resp.status == 200 then return resp.replayed and "DUPREQUEST" or "SUCCESS", "ok", answer.coupon_id end
  local map = { INVALID_REQUEST = "NOTRUNNING", NOT_ENOUGH = "NOTENOUGH", REQUEST_BLOCKED = "MAXQUOTA" }
  return map[answer.code] or "FAILED", answer.message
end

-- The partnership that lets `merchant` issue a stock it did not create, or nil.
local function granted(server, stock, merchant)
  local rel = server.state.store:get(stock.creator, { type = "MERCHANT", merchant_id = merchant },
                                     { business_type = "BUSIFAVOR_STOCK", stock_id = stock.id })
  return rel and rel.state == "ESTABLISHED"
end

-- One 商家券 through the claim path (which fires COUPON.SEND), as the plugin reports it.
local function issue_busifavor(server, stock, item, spec, merchant, channel)
  if merchant ~= stock.creator and not granted(server, stock, merchant) then
    return "FAILED", "批次不支持跨商户发券: no partnership grants stock " .. stock.id .. " to merchant " .. merchant
  end
  local resp = coupons_control.claim(server, {
    stock_id = stock.id, openid = spec.openid, appid = spec.appid, coupon_code = item.coupon_code,
    out_request_no = item.out_request_no, send_channel = channel, send_merchant = merchant,
    max_attempts = spec.max_attempts, retry_scale = spec.retry_scale,
  })
  local answer = json.decode(resp.body) or {}
  if resp.status == 200 then return answer.code, "ok", answer.coupon_code, answer.callback end
  local code = answer.code
  if code == "PARAM_ERROR" or code == nil then code = "FAILED" end
  return code, answer.error
end

-- Issue every item; the plugin's send_coupon_result.
local function issue_all(server, items, merchant, spec, channel)
  local cs = common.state(server.state.store)
  local results = {}
  for i, item in ipairs(items) do
    local r = { stock_id = item.stock_id, out_request_no = item.out_request_no }
    local bstock, fstock = cs.busifavor.stocks[item.stock_id], cs.favor.stocks[item.stock_id]
    local callback
    if bstock then
      r.code, r.message, r.coupon_code, callback = issue_busifavor(server, bstock, item, spec, merchant, channel)
    elseif fstock and channel ~= M.CHANNEL.h5 then
      r.code, r.message, r.coupon_code = issue_favor(server, fstock, item, spec, merchant)
    else
      r.code, r.message = "FAILED", "no such stock"
    end
    r.callback = callback
    results[i] = r
  end
  return results
end

local function check_user(spec)
  for _, name in ipairs{ "openid", "appid" } do
    if type(spec[name]) ~= "string" or spec[name] == "" then
      return refused(name == "openid" and "USER_NOT_EXISTS" or "PARAM_ERROR", name .. " is required")
    end
  end
end

-- Verify and issue a plugin-shaped call: items, merchant, sign.
local function run(server, spec, items, merchant, sign, channel, h5)
  local bad = check_user(spec)
  if bad then return bad end
  if type(items) ~= "table" or #items < 1 or #items > M.MAX_COUPONS then
    return refused("PARAM_ERROR", "send_coupon_params must hold 1-" .. M.MAX_COUPONS .. " coupons")
  end
  for i, item in ipairs(items) do
    local problem = item_problem(item, i, h5)
    if problem then return refused("PARAM_ERROR", problem) end
  end
  local params = { send_coupon_merchant = merchant }
  if h5 then
    for k, v in pairs(items[1]) do params[k] = v end
    params.open_id = spec.openid
  else
    for i, item in ipairs(items) do
      for k, v in pairs(item) do params[k .. (i - 1)] = v end
    end
  end
  for k, v in pairs(spec.extra or {}) do params[k] = v end
  local ok, rule, why = sign_check.verify(server.state.keys, params, sign, { openid = not h5 and spec.openid or nil })
  if not ok then return refused(rule == "missing_sign" and "PARAM_ERROR" or "SIGN_ERROR", why, rule) end
  local results = issue_all(server, items, merchant, spec, channel)
  return reply(200, { errcode = "OK", msg = "ok", send_coupon_result = results })
end

--- `POST /_sandbox/issue/plugin {attributes = {send_coupon_params, send_coupon_merchant,
-- sign, …}, openid, appid, max_attempts?, retry_scale?}`: what the 发券插件 does when the
-- user taps. Attributes other than the three (but `suggest_immediate_use`) are signed too.
function M.plugin(server, spec)
  local a = spec.attributes
  if type(a) ~= "table" then return refused("PARAM_ERROR", "attributes is required") end
  local extra = {}
  for k, v in pairs(a) do
    if k ~= "send_coupon_params" and k ~= "send_coupon_merchant" and k ~= "sign"
      and k ~= "suggest_immediate_use" then
      extra[k] = type(v) == "string" and v or json.encode(v)
    end
  end
  spec.extra = extra
  return run(server, spec, a.send_coupon_params, a.send_coupon_merchant, a.sign, M.CHANNEL.plugin)
end

--- `POST /_sandbox/issue/jsapi {card_list = [{cardId, cardExt}], openid, appid}`: what
-- `wx.addCard` does; the first cardExt carries send_coupon_merchant and sign.
function M.jsapi(server, spec)
  local list = spec.card_list
  if type(list) ~= "table" or not list[1] then return refused("PARAM_ERROR", "card_list is required") end
  local items, merchant, sign = {}, nil, nil
  for i, card in ipairs(list) do
    local ext = type(card) == "table" and type(card.cardExt) == "string" and json.decode(card.cardExt)
    if type(ext) ~= "table" or type(card.cardId) ~= "string" then
      return refused("PARAM_ERROR", "card " .. i .. " needs cardId and a JSON cardExt")
    end
    if i == 1 then merchant, sign = ext.send_coupon_merchant, ext.sign end
    ext.send_coupon_merchant, ext.sign = nil, nil
    ext.stock_id = card.cardId
    items[i] = ext
  end
  return run(server, spec, items, merchant, sign, M.CHANNEL.jsapi)
end

-- The query of an H5 URL, decoded as a browser form decoder would (`+` is a space).
local function h5_query(url)
  if type(url) ~= "string" or url:sub(1, #H5_PREFIX) ~= H5_PREFIX then
    return nil, "url must start with " .. H5_PREFIX
  end
  local query, fragment = url:sub(#H5_PREFIX + 1):match("^([^#]*)#?(.*)$")
  if not H5_FRAGMENTS[fragment] then
    return nil, "the page shows error 268435461: the URL needs the fragment #wechat_pay&wechat_redirect"
  end
  local params = {}
  for pair in query:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]+)=(.*)$")
    if not k then return nil, "bad query parameter " .. pair end
    params[k] = util.percent_decode((v:gsub("%+", " ")))
  end
  return params
end

--- `POST /_sandbox/issue/h5 {url, appid, openid?}`: the H5发券 page opened by the user
-- `openid` (default: the URL's open_id, which must be that user).
function M.h5(server, spec)
  local params, why = h5_query(spec.url)
  if not params then return refused("PARAM_ERROR", why) end
  spec.openid = spec.openid or params.open_id
  if params.open_id ~= spec.openid then
    return refused("USER_NOT_EXISTS", "open_id of the URL is not the user who opened it")
  end
  local sign, merchant = params.sign, params.send_coupon_merchant
  local item, extra = {}, {}
  for k, v in pairs(params) do
    if ITEM_FIELDS[k] then item[k] = v
    elseif k ~= "sign" and k ~= "send_coupon_merchant" and k ~= "open_id" then extra[k] = v end
  end
  spec.extra = extra
  if spec.url:find("+", 1, true) then
    return refused("SIGN_ERROR", "a + in the URL reads as a space: percent-encode the values in the URL",
                   "url_encoding")
  end
  return run(server, spec, { item }, merchant, sign, M.CHANNEL.h5, true)
end

--- `POST /_sandbox/issue/verify {params = {…, sign}, openid?}`: the signature check alone.
function M.verify(server, spec)
  if type(spec.params) ~= "table" then return reply(400, { error = "params is required" }) end
  local params = {}
  for k, v in pairs(spec.params) do
    if k ~= "sign" then params[k] = type(v) == "string" and v or tostring(v) end
  end
  local ok, rule, why = sign_check.verify(server.state.keys, params, spec.params.sign, { openid = spec.openid })
  if ok then return reply(200, { ok = true }) end
  return reply(200, { ok = false, rule = rule, error = why })
end

--- `GET /_sandbox/issue/keys?mchid=…`: the APIv2 key the sandbox knows for a merchant
-- (default: its own merchant).
function M.keys(server, req)
  local _, q = util.parse_target(req.target)
  local mchid = q.mchid or server.state.keys.mchid
  if not mchid:match("^%d+$") then return reply(400, { error = "mchid must be digits" }) end
  return reply(200, { mchid = mchid, apiv2_key = sign_check.apiv2_key(server.state.keys, mchid) })
end

--- `POST /_sandbox/busifavor/jump_code {coupon_code, stock_id?}`: the parameters WeChat
-- appends to the mini-program path when the user taps an issued 商家券 (the coupon_code
-- encrypted with the APIv3 key, AAD COUPON_CODE).
function M.jump_code(server, spec)
  local p = common.state(server.state.store).busifavor
  local coupon = type(spec.coupon_code) == "string" and p.coupons[spec.coupon_code]
  if not coupon or (spec.stock_id and spec.stock_id ~= coupon.stock_id) then
    return reply(404, { error = "no such coupon" })
  end
  local nonce = util.random_alnum(12)
  local ciphertext = assert(core.aes_gcm_encrypt(server.state.keys.apiv3_key, nonce, "COUPON_CODE", coupon.code))
  local query = string.format("stock_id=%s&openid=%s&nonce=%s&associate=COUPON_CODE&ciphertext=%s",
    coupon.stock_id, percent_encode(coupon.openid), nonce, percent_encode(ciphertext))
  local rule = coupon.stock.fields.coupon_use_rule
  local path = rule.mini_programs_path and (rule.mini_programs_path .. "?" .. query) or nil
  return reply(200, { stock_id = coupon.stock_id, openid = coupon.openid, nonce = nonce,
                      associate = "COUPON_CODE", ciphertext = ciphertext, query = query, path = path })
end

return M
