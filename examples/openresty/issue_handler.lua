--- 发券 for examples/openresty/nginx.conf: the endpoint a mini program calls to get the signed
-- attributes of `<send-coupon>` for the logged-in user, and the check of every COUPON.SEND.
--
--   POST /coupons/send-params   {"session":…, "stock_ids":[…]} -> {send_coupon_params, send_coupon_merchant, sign}
--   POST /admin/sessions        {"session":…, "openid":…}   (127.0.0.1 only: stands in for the login)
--
-- The signature covers out_request_no and the stocks, not the user: WeChat takes a captured
-- `sign` from another user too, once per user (docs/issuing.md, the replay warning). So the
-- numbers are made here, never taken from the front end, and each is bound to the user it was
-- made for: the same user asking again gets the same number (a second tap answers
-- DUPREQUEST, never a second coupon), and when COUPON.SEND reports a coupon that went to
-- another user than its number's, that coupon is deactivated at once.
-- @module issue_handler

local ngx = ngx
local cjson = require("cjson.safe").new()

local M = {}

local TTL = 7 * 86400 -- how long a binding is kept (longer than the campaign's taps)
-- Bindings per user: without a bound, one logged-in user asking for made-up stocks could fill
-- the shared dict and push out other users' bindings (a new number is a second coupon).
local MAX_STOCKS_PER_USER = 50
local settings = { miniapp_appid = nil }

local function reply(status, value)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.print(cjson.encode(value))
  return ngx.exit(status)
end

local function json_body()
  ngx.req.read_body()
  local obj = cjson.decode(ngx.req.get_body_data() or "")
  return type(obj) == "table" and obj or nil
end

--- Settings (init_by_lua): `miniapp_appid`, the mini program whose users take the coupons.
function M.configure(opts)
  settings.miniapp_appid = opts.miniapp_appid
end

-- The user of a session: the app's own login (wx.login → code2Session → a session token)
-- put it in the shared dict; not shown here beyond /admin/sessions.
local function current_user(session)
  if type(session) ~= "string" or session == "" then return nil end
  return ngx.shared.wxpay_sessions:get("s:" .. session)
end

--- POST /admin/sessions {session, openid}: what the login would store (for the demo and specs).
function M.login()
  local obj = json_body()
  if not obj or type(obj.session) ~= "string" or type(obj.openid) ~= "string" then
    return reply(400, { error = "need session and openid" })
  end
  ngx.shared.wxpay_sessions:set("s:" .. obj.session, obj.openid, TTL)
  return reply(200, { ok = true })
end

-- The request number of (user, stock): the one made before, or a new one bound to the user;
-- or nil, an HTTP status and the reason.
local function request_no(openid, stock_id)
  local bindings = ngx.shared.wxpay_issue
  local mine = "u:" .. openid .. ":" .. stock_id
  local no = bindings:get(mine)
  if no then return no end
  local count = "c:" .. openid
  bindings:add(count, 0, TTL)
  if (bindings:get(count) or 0) >= MAX_STOCKS_PER_USER then
    return nil, 429, "at most " .. MAX_STOCKS_PER_USER .. " stocks per user"
  end
  no = require("wxpay.core").nonce(32)
  if not no then return nil, 500, "no random source" end
  -- add, not set: two taps at once bind one number; the loser takes the winner's.
  local ok = bindings:add(mine, no, TTL)
  if not ok then
    no = bindings:get(mine)
    if not no then return nil, 503, "no room to bind a request number" end
    return no
  end
  bindings:incr(count, 1, 0)
  bindings:set("n:" .. no, openid, TTL)
  return no
end

--- POST /coupons/send-params: the signed attributes for the logged-in user.
function M.plugin_params(client)
  local obj = json_body()
  if not obj then return reply(400, { error = "need a JSON body" }) end
  local openid = current_user(obj.session)
  if not openid then return reply(401, { error = "not logged in" }) end
  if type(obj.stock_ids) ~= "table" or #obj.stock_ids < 1 or #obj.stock_ids > 10 then
    return reply(400, { error = "stock_ids: 1 to 10 stocks" })
  end
  local items = {}
  for i, stock_id in ipairs(obj.stock_ids) do
    -- checked before anything is bound for it (client.issue checks again)
    if type(stock_id) ~= "string" or #stock_id > 20 or not stock_id:match("^%w+$") then
      return reply(400, { error = "stock_ids: strings of 1-20 letters or digits", field = "stock_id" })
    end
    local no, status, why = request_no(openid, stock_id)
    if not no then return reply(status, { error = why }) end
    items[i] = { stock_id = stock_id, out_request_no = no }
  end
  local attrs, err = client.issue.plugin_params{ send_coupon_params = items }
  if not attrs then
    -- errors never hold the APIv2 key; a config error means the config has no apiv2_key
    return reply(err.kind == "invalid_argument" and 400 or 500, { error = err.message, field = err.field })
  end
  return reply(200, attrs)
end

-- A coupon that went to another user than its request number's is deactivated.
local function check_send(client, resource)
  local coupon, err = client.busifavor.coupons.get(resource.openid, resource.coupon_code, settings.miniapp_appid)
  if not coupon then
    ngx.log(ngx.WARN, "COUPON.SEND check: ", tostring(err))
    return
  end
  local owner = ngx.shared.wxpay_issue:get("n:" .. tostring(coupon.send_request_no))
  if owner == nil or owner == resource.openid then return end
  local ok, derr = client.busifavor.coupons.deactivate{ coupon_code = resource.coupon_code,
    stock_id = resource.stock_id, deactivate_reason = "claimed with another user's signature" }
  if ok then
    ngx.log(ngx.WARN, "coupon ", resource.coupon_code, " claimed by another user than ", owner, ": deactivated")
  else
    ngx.log(ngx.ERR, "coupon ", resource.coupon_code, " claimed by another user: deactivate failed: ", tostring(derr))
  end
end

--- Called by the callback handler for every verified COUPON.SEND: the check runs in a timer,
-- so the callback is answered at once (WeChat Pay waits 5 s at most).
function M.on_coupon_send(client, notification)
  local resource = client.busifavor.send_event(notification)
  if not resource or not resource.openid or resource.openid == "" then return end -- needs notify_appid
  local ok, err = ngx.timer.at(0, function(premature)
    if not premature then check_send(client, resource) end
  end)
  if not ok then ngx.log(ngx.ERR, "COUPON.SEND check timer: ", err) end
end

return M
