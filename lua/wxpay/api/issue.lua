--- Issuing coupons to users (发券): `client.issue`. WeChat Pay has no server API that puts a
-- 商家券 into a user's 卡包; the user takes it through the mini-program 发券插件, the H5发券
-- page or JSAPI `wx.addCard`, and the merchant's server signs their parameters with the
-- APIv2 key (V2 rule, HMAC-SHA256, wxpay.v2sign). Nothing here talks to WeChat Pay.
--
--     local attrs, err, meta = client.issue.plugin_params{ send_coupon_params = {
--       { stock_id = "1286950000000039", out_request_no = "1900000001|20240520*0001" } } }
--     -- attrs = { send_coupon_params = {…}, send_coupon_merchant = "1900000001", sign = "…" }
--     local url, err, meta = client.issue.h5_url{ stock_id = …, open_id = … }
--     local cards, err, meta = client.issue.jsapi_cards{ { stock_id = … }, … }
--
-- Every function checks its input before it signs (`invalid_argument` naming the field),
-- generates each missing `out_request_no` and returns them (`meta.out_request_no` for H5,
-- `meta.out_request_nos` in item order for the other two), defaults `send_coupon_merchant`
-- to the client's `mchid`, and refuses with a `config` error naming `apiv2_key` when the
-- client has none. Rules and sources: docs/issuing.md.
-- @module wxpay.api.issue

local errors = require("wxpay.errors")
local parse_time = require("wxpay.time").parse_rfc3339

local M = {}

M.MAX_COUPONS = 10
M.H5_URL = "https://action.weixin.qq.com/busifavor/getcouponinfo"
M.H5_FRAGMENT = "#wechat_pay&wechat_redirect"

local REQUEST_NO = "^[A-Za-z0-9|_*%-]+$" -- plugin and JSAPI: letters, digits, | _ * -
local H5_REQUEST_NO = "^[A-Za-z0-9]+$"   -- the H5 page: letters and digits only

-- The fields an item of send_coupon_params (or a JSAPI card) may have, with their checks.
-- (An integer is taken as its decimal digits: stock ids and merchant numbers often are.)
local function text(min, max, pattern)
  return function(v, field)
    if type(v) == "number" and v == math.floor(v) and v >= 0 and v < 2 ^ 53 then v = string.format("%d", v) end
    if type(v) ~= "string" then return nil, errors.invalid_argument(field, "must be a string") end
    if #v < min or #v > max then
      return nil, errors.invalid_argument(field, string.format("must be %d-%d characters", min, max))
    end
    if v:find("%c") or (pattern and not v:match(pattern)) then
      return nil, errors.invalid_argument(field, "has characters not allowed")
    end
    return v
  end
end

local function rfc3339(v, field)
  local s, err = text(1, 32)(v, field)
  if not s then return nil, err end
  if not parse_time(s) then return nil, errors.invalid_argument(field, "must be an RFC 3339 time") end
  return s
end

local FIELDS = {
  stock_id = text(1, 20, "^[%w]+$"),
  out_request_no = text(1, 128, REQUEST_NO),
  coupon_code = text(1, 128),
  create_coupon_merchant = text(1, 32, "^%d+$"),
  customize_send_time = rfc3339,
}
local MERCHANT = text(1, 32, "^%d+$")
-- Fields that may be left out, so given as "" are left out (the V2 rule skips empty values).
-- Not out_request_no: an empty one generated afresh at each call would issue again.
local OPTIONAL = { coupon_code = true, create_coupon_merchant = true, customize_send_time = true }

local function argcheck(fname, n, v, want)
  if type(v) ~= want and not (want == "table?" and v == nil) then
    error(string.format("bad argument #%d to '%s' (%s expected, got %s)", n, fname,
      want:gsub("%?$", ""), type(v)), 3)
  end
end

-- The name of field `name` of the item called `field` ("" for the top level).
local function sub(field, name)
  return field == "" and name or field .. "." .. name
end

-- One checked item (a copy, `out_request_no` generated when absent), or nil and an error.
local function check_item(api, item, field, request_no)
  if type(item) ~= "table" then return nil, errors.invalid_argument(field, "must be a table") end
  local out = {}
  for name, v in pairs(item) do
    local check = FIELDS[name]
    if not check then return nil, errors.invalid_argument(sub(field, tostring(name)), "unknown field") end
    if not (v == "" and OPTIONAL[name]) then -- an empty optional value is not signed: left out
      local s, err = check(v, sub(field, name))
      if not s then return nil, err end
      out[name] = s
    end
  end
  if out.stock_id == nil then return nil, errors.invalid_argument(sub(field, "stock_id"), "required") end
  if out.out_request_no == nil then
    local key, err = api.new_idempotency_key()
    if not key then return nil, err end
    out.out_request_no = key
  elseif request_no and not out.out_request_no:match(request_no) then
    return nil, errors.invalid_argument(sub(field, "out_request_no"), "the H5 page takes letters and digits only")
  end
  return out
end

-- 1..10 checked items from the array `list` named `field`.
local function check_items(api, list, field)
  if type(list) ~= "table" then return nil, errors.invalid_argument(field, "must be an array") end
  local n = #list
  if n < 1 or n > M.MAX_COUPONS then
    return nil, errors.invalid_argument(field, "must hold 1-" .. M.MAX_COUPONS .. " coupons")
  end
  for k in pairs(list) do
    if type(k) ~= "number" or k < 1 or k > n or math.floor(k) ~= k then
      return nil, errors.invalid_argument(field, "must be an array (no other keys)")
    end
  end
  local items = {}
  for i = 1, n do
    local item, err = check_item(api, list[i], field .. "[" .. i .. "]")
    if not item then return nil, err end
    items[i] = item
  end
  return items
end

-- The signed set of the plugin and JSAPI: every field of item n as <name><n> (n from 0),
-- and send_coupon_merchant once.
local function indexed(items, merchant)
  local params = { send_coupon_merchant = merchant }
  for i, item in ipairs(items) do
    for name, v in pairs(item) do params[name .. (i - 1)] = v end
  end
  return params
end

local function request_nos(items)
  local out = {}
  for i, item in ipairs(items) do out[i] = item.out_request_no end
  return out
end

-- What every function starts with: the signer and the merchant, or nil and an error.
local function prepare(signer, api, merchant)
  if not signer.has_key() then
    return nil, errors.config("apiv2_key", "required to sign 发券 parameters (the merchant's APIv2 key, "
      .. "32 characters, 商户平台 → API安全)")
  end
  if merchant == nil then merchant = api.mchid end
  return MERCHANT(merchant, "send_coupon_merchant")
end

--- The attributes of the mini-program `<send-coupon>` component, signed.
-- @tparam table params `send_coupon_params` (1-10 items of `stock_id`, `out_request_no`,
--   `coupon_code`, `create_coupon_merchant`, `customize_send_time`) and optional
--   `send_coupon_merchant` (default the client's mchid)
-- @treturn table|nil `{ send_coupon_params, send_coupon_merchant, sign }`
-- @treturn table|nil err
-- @treturn table|nil meta `{ out_request_nos = {…} }`
function M.plugin_params(api, signer, params)
  argcheck("plugin_params", 1, params, "table")
  for k in pairs(params) do
    if k ~= "send_coupon_params" and k ~= "send_coupon_merchant" then
      return nil, errors.invalid_argument(tostring(k), "unknown field")
    end
  end
  local merchant, err = prepare(signer, api, params.send_coupon_merchant)
  if not merchant then return nil, err end
  local items
  items, err = check_items(api, params.send_coupon_params, "send_coupon_params")
  if not items then return nil, err end
  local sign
  sign, err = signer.sign(indexed(items, merchant))
  if not sign then return nil, err end
  return { send_coupon_params = items, send_coupon_merchant = merchant, sign = sign }, nil,
    { out_request_nos = request_nos(items) }
end

--- The H5发券 URL for one user and one 商家券 stock.
-- @tparam table params `stock_id`, `open_id` (required), `out_request_no` (letters and
--   digits; generated when absent), `coupon_code`, `customize_send_time`,
--   `send_coupon_merchant` (default the client's mchid), `fragment` (default
--   `#wechat_pay&wechat_redirect`)
-- @treturn string|nil the URL: raw values signed, percent-encoded in the query
-- @treturn table|nil err
-- @treturn table|nil meta `{ out_request_no = … }`
function M.h5_url(api, signer, params)
  argcheck("h5_url", 1, params, "table")
  local merchant, err = prepare(signer, api, params.send_coupon_merchant)
  if not merchant then return nil, err end
  local fragment = params.fragment or M.H5_FRAGMENT
  if type(fragment) ~= "string" or not fragment:match("^#?[%w_&=%-]+$") then
    return nil, errors.invalid_argument("fragment", "must be such as #wechat_pay&wechat_redirect")
  end
  if fragment:sub(1, 1) ~= "#" then fragment = "#" .. fragment end
  local item, open_id = {}, nil
  for k, v in pairs(params) do
    if k == "open_id" then
      open_id, err = text(1, 128, "^[%w_%-]+$")(v, "open_id")
      if not open_id then return nil, err end
    elseif k == "create_coupon_merchant" then
      return nil, errors.invalid_argument(k, "not a parameter of the H5 page (商家券 only)")
    elseif k ~= "send_coupon_merchant" and k ~= "fragment" then
      item[k] = v
    end
  end
  if open_id == nil then return nil, errors.invalid_argument("open_id", "required") end
  item, err = check_item(api, item, "", H5_REQUEST_NO)
  if not item then return nil, err end
  item.open_id, item.send_coupon_merchant = open_id, merchant
  local sign
  sign, err = signer.sign(item)
  if not sign then return nil, err end
  local q = {}
  for _, name in ipairs{ "stock_id", "out_request_no", "sign", "send_coupon_merchant", "open_id",
                         "coupon_code", "customize_send_time" } do
    local v = name == "sign" and sign or item[name]
    if v then q[#q + 1] = name .. "=" .. api.percent_encode(v) end
  end
  return M.H5_URL .. "?" .. table.concat(q, "&") .. fragment, nil,
    { out_request_no = item.out_request_no }
end

--- The `cardList` of JSAPI `wx.addCard` (JS-SDK pages and mini programs).
-- @tparam table cards array of 1-10 `{ stock_id, out_request_no, coupon_code,
--   customize_send_time, create_coupon_merchant }`; `send_coupon_merchant` may be set in
--   the same table or in `opts`
-- @tparam[opt] table opts `{ send_coupon_merchant = … }`
-- @treturn table|nil array of `{ cardId = stock_id, cardExt = JSON string }`; the first
--   cardExt carries `send_coupon_merchant` and `sign`
-- @treturn table|nil err
-- @treturn table|nil meta `{ out_request_nos = {…} }`
function M.jsapi_cards(api, signer, cards, opts)
  argcheck("jsapi_cards", 1, cards, "table")
  argcheck("jsapi_cards", 2, opts, "table?")
  local list, n = {}, 0
  for k, c in pairs(cards) do
    if type(k) == "number" then
      n, list[k] = n + 1, c
    elseif k ~= "send_coupon_merchant" then
      return nil, errors.invalid_argument(tostring(k), "unknown field")
    end
  end
  for i = 1, n do -- every card, none dropped: the indexes are 1..n
    if list[i] == nil then return nil, errors.invalid_argument("cards", "must be an array (no holes)") end
  end
  local merchant, err = prepare(signer, api, (opts and opts.send_coupon_merchant) or cards.send_coupon_merchant)
  if not merchant then return nil, err end
  local items
  items, err = check_items(api, list, "cards")
  if not items then return nil, err end
  local sign
  sign, err = signer.sign(indexed(items, merchant))
  if not sign then return nil, err end
  local out = {}
  for i, item in ipairs(items) do
    local ext = {}
    for name, v in pairs(item) do if name ~= "stock_id" then ext[name] = v end end
    if i == 1 then ext.send_coupon_merchant, ext.sign = merchant, sign end
    out[i] = { cardId = item.stock_id, cardExt = api.encode_json(ext) }
  end
  return out, nil, { out_request_nos = request_nos(items) }
end

--- The client's `issue` table: the three functions above bound to a client.
-- @tparam table api the client's API handle (`mchid`, `new_idempotency_key`, `encode_json`,
--   `percent_encode`)
-- @tparam table signer `{ has_key = function() → bool, sign = function(params) → sign | nil, err }`
--   (read at each call, so a client whose settings change signs with the current key)
function M.new(api, signer)
  local issue = {}
  issue.plugin_params = function(params) return M.plugin_params(api, signer, params) end
  issue.h5_url = function(params) return M.h5_url(api, signer, params) end
  issue.jsapi_cards = function(cards, opts) return M.jsapi_cards(api, signer, cards, opts) end
  return issue
end

return M
