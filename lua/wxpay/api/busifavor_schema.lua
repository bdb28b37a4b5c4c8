--- Field tables of 商家券 (BUSIFAVOR_STOCK) requests, in the protocol's key order, with the
-- cross-field rules the tables state. Lengths follow the official field tables; where
-- sources disagree the looser rule is kept (see docs/coupons.md, "Open questions").
-- @module wxpay.api.busifavor_schema

local f = require("wxpay.api.fields")
local errors = require("wxpay.errors")

local M = {}

local invalid = errors.invalid_argument
local MAX_COUNT = 1000000000
local MAX_FEN = 10000000
-- 商家券 request numbers: the official pages state no charset (see docs/coupons.md).
local NUMBER = f.request_number(128)
-- A coupon code: 1..128 (the 2026 营销补差 pages; the old wiki said 32).
M.CODE = f.id(1, 128)

M.STOCK_TYPES = { "NORMAL", "DISCOUNT", "EXCHANGE" }
M.CODE_MODES = { "WECHATPAY_MODE", "MERCHANT_API", "MERCHANT_UPLOAD" }
-- The 2025 redemption states appear only in a third-party copy; accepted as filters too.
M.COUPON_STATES = { "SENDED", "USED", "EXPIRED", "DELETED", "DEACTIVATED", "PENDING_REDEEM",
  "REDEEM_CONFIRMING", "REDEEM_FAILED", "REDEEM_EXPIRED" }

local period = f.object{
  { "begin_time", f.int(0, 86400), true },
  { "end_time", f.int(0, 86400), true },
}

local coupon_available_time = {
  { "available_begin_time", f.time(), true },
  { "available_end_time", f.time(), true },
  { "available_day_after_receive", f.int(1, 365) },
  { "available_week", f.object{
    { "week_day", f.array(f.int(0, 6), 1, 7) },
    { "available_day_time", f.array(period, 1, 2) },
  } },
  { "irregulary_avaliable_time", f.array(f.object{ -- sic: the protocol's spelling
    { "begin_time", f.time(), true },
    { "end_time", f.time(), true },
  }, 1) },
  { "wait_days_after_receive", f.int(0, 30) },
  { "available_second_after_receive", f.int(1) },
}

-- The mini-program pair is "选填 … 核销方式为线上小程序核销才有效": optional even with
-- MINI_PROGRAMS (the server has the last word).
local function mini_program_rule(required)
  return {
    { "use_method", f.enum{ "OFF_LINE", "MINI_PROGRAMS", "PAYMENT_CODE", "SELF_CONSUME" }, required },
    { "mini_programs_appid", f.id(1, 32) },
    { "mini_programs_path", f.id(1, 128) },
  }
end

local function coupon_use_rule()
  local s = {
    { "coupon_available_time", f.object(coupon_available_time), true },
    { "fixed_normal_coupon", f.object{
      { "discount_amount", f.fen(1, MAX_FEN), true },
      { "transaction_minimum", f.fen(1, MAX_FEN), true },
    } },
    { "discount_coupon", f.object{
      { "discount_percent", f.int(1, 100), true },
      { "transaction_minimum", f.fen(1, MAX_FEN), true },
    } },
    { "exchange_coupon", f.object{
      { "exchange_price", f.fen(0, MAX_FEN), true }, -- 0 allowed (Go); OA says >= 1
      { "transaction_minimum", f.fen(1, MAX_FEN), true },
    } },
  }
  for _, field in ipairs(mini_program_rule(true)) do s[#s + 1] = field end
  return s
end

local function stock_send_rule()
  return {
    { "max_amount", f.fen(1) },
    { "max_coupons", f.int(1, MAX_COUNT) }, -- required in some sources, optional in others
    { "max_coupons_per_user", f.int(1, 100), true },
    { "max_amount_by_day", f.fen(1) },
    { "max_coupons_by_day", f.int(1, MAX_COUNT) },
    { "natural_person_limit", f.bool() },
    { "prevent_api_abuse", f.bool() },
    { "transferable", f.bool() },
    { "shareable", f.bool() },
  }
end

local function custom_entrance(with_store)
  local s = {
    { "mini_programs_info", f.object{
      { "mini_programs_appid", f.id(1, 32), true },
      { "mini_programs_path", f.id(1, 128), true },
      { "entrance_words", f.text(1, 5), true },
      { "guiding_words", f.text(1, 6) },
    } },
    { "appid", f.id(1, 32) },
    { "hall_id", f.id(1, 64) },
    { "code_display_mode", f.enum{ "NOT_SHOW", "BARCODE", "QRCODE" } },
  }
  if with_store then table.insert(s, 4, { "store_id", f.id(1, 64) }) end
  return f.object(s)
end

local display_pattern_info = f.object{
  { "description", f.text(1, 1000) },
  { "merchant_logo_url", f.url(128) },
  { "merchant_name", f.text(1, 16) },
  -- An open set spelt two ways (Color010 / COLOR010): passed through.
  { "background_color", f.id(1, 16) },
  { "coupon_image_url", f.url(128) },
  -- Each field optional (Go SDK `FinderInfo`), no length stated for the ids.
  { "finder_info", f.object{
    { "finder_id", f.id(1) },
    { "finder_video_id", f.id(1) },
    { "finder_video_cover_image_url", f.url(128) },
  } },
}

local notify_config = f.object{ { "notify_appid", f.id(1, 32) } }

--- B1 create (`out_request_no` and `belong_merchant` are filled in before the check).
M.create = {
  -- 21 字 in the new pages, 24 bytes in older ones: up to 24 here, see `check_create`.
  { "stock_name", f.text(1, 24), true },
  { "belong_merchant", f.digits(8, 15), true },
  { "comment", f.text(1, 20) },
  { "goods_name", f.text(1, 15), true },
  { "stock_type", f.enum(M.STOCK_TYPES), true },
  { "coupon_use_rule", f.object(coupon_use_rule()), true },
  { "stock_send_rule", f.object(stock_send_rule()), true },
  { "out_request_no", NUMBER, true },
  { "custom_entrance", custom_entrance(true) },
  { "display_pattern_info", display_pattern_info },
  { "coupon_code_mode", f.enum(M.CODE_MODES), true },
  { "notify_config", notify_config },
  { "subsidy", f.bool() },
}

--- B3 modify information (answers 204). Fields the docs mark "暂不支持修改" are still
-- passed on: the server has the last word.
M.update = {
  { "out_request_no", NUMBER, true },
  { "custom_entrance", custom_entrance(false) },
  { "stock_name", f.text(1, 24) },
  { "comment", f.text(1, 20) },
  { "goods_name", f.text(1, 15) },
  { "display_pattern_info", display_pattern_info },
  { "coupon_use_rule", f.object(mini_program_rule(false)) },
  { "stock_send_rule", f.object{ { "prevent_api_abuse", f.bool() }, { "natural_person_limit", f.bool() } } },
  { "notify_config", notify_config },
  { "subsidy", f.bool() },
}

--- B4 modify budget (compare-and-set on the current values). 0 is accepted everywhere: the
-- page says "当传入target…大于0时", and a stock created without a daily cap has 0 as its
-- current daily value.
M.budget = {
  { "target_max_coupons", f.int(0, MAX_COUNT) },
  { "current_max_coupons", f.int(0, MAX_COUNT) },
  { "target_max_coupons_by_day", f.int(0, MAX_COUNT) },
  { "current_max_coupons_by_day", f.int(0, MAX_COUNT) },
  { "modify_budget_request_no", NUMBER, true },
}

--- B5 use. `use_request_no` is [1,32] in an old page and 128 in the new one: 128 here.
M.use = {
  { "coupon_code", M.CODE, true },
  { "stock_id", f.id(1, 20) },
  { "appid", f.id(1, 32), true },
  { "use_time", f.time(), true },
  { "use_request_no", NUMBER, true },
  { "openid", f.id(1, 128) },
  { "out_trade_no", f.id(1, 128) },
  { "mch_id", f.digits(1, 32) },
  { "transaction_id", f.id(1, 64) },
}

--- B16 return (申请退券).
M.return_coupon = {
  { "coupon_code", M.CODE, true },
  { "stock_id", f.id(1, 20), true },
  { "return_request_no", NUMBER, true },
}

--- B17 deactivate (使券失效).
M.deactivate = {
  { "coupon_code", M.CODE, true },
  { "stock_id", f.id(1, 20), true },
  { "deactivate_request_no", NUMBER, true },
  { "deactivate_reason", f.text(1, 64) },
}

--- B8 upload pre-stored codes: 1..200 codes of 1..32 characters per call. The page's
-- charset for codes (letters, digits, space, `- _ \ / = |`) is left to the server, which
-- answers each refused code in `fail_codes`; `upload_request_no` states no charset.
M.upload_codes = {
  { "coupon_code_list", f.array(f.id(1, 32), 1, 200), true },
  { "upload_request_no", NUMBER, true },
}

--- B14/B15 associate / disassociate an order (the charset of `out_request_no` is stated:
-- Go `AssociateTradeInfoRequest`).
M.associate = {
  { "stock_id", f.id(1, 20), true },
  { "coupon_code", M.CODE, true },
  { "out_trade_no", f.id(1, 128), true },
  { "out_request_no", f.request_no(128), true },
}

--- B22 营销补差 pay: all required (Go `SubsidyPayRequest`); no lengths are stated beyond
-- the ids, so none are invented. `out_subsidy_no` states no charset.
M.subsidy_pay = {
  { "stock_id", f.id(1, 20), true },
  { "coupon_code", M.CODE, true },
  { "transaction_id", f.id(1), true },
  { "payer_merchant", f.digits(1, 32), true },
  { "payee_merchant", f.digits(1, 32), true },
  { "amount", f.fen(1), true },
  { "description", f.text(1), true },
  { "out_subsidy_no", NUMBER, true },
}

--- B25 营销补差 return: the pay fields plus `refund_id`; `out_subsidy_return_no` is of the
-- stated charset (doc/v3/partner/4017170533).
M.subsidy_return = {
  { "stock_id", f.id(1, 20), true },
  { "coupon_code", M.CODE, true },
  { "transaction_id", f.id(1), true },
  { "refund_id", f.id(1), true },
  { "payer_merchant", f.digits(1, 32), true },
  { "payee_merchant", f.digits(1, 32), true },
  { "amount", f.fen(1), true },
  { "description", f.text(1), true },
  { "out_subsidy_return_no", f.request_no(128), true },
}

--- B12 set the callback URL.
M.callbacks = {
  { "mchid", f.digits(8, 15), true },
  { "notify_url", f.url(256), true },
}

local RULE_FOR_TYPE = { NORMAL = "fixed_normal_coupon", DISCOUNT = "discount_coupon",
  EXCHANGE = "exchange_coupon" }
local RULE_OBJECTS = { "fixed_normal_coupon", "discount_coupon", "exchange_coupon" }

local function check_window(t, prefix, max_days)
  local b = f.parse_time(t.available_begin_time)
  local e = f.parse_time(t.available_end_time)
  if e <= b then return nil, invalid(prefix .. "available_end_time", "must be after available_begin_time") end
  if max_days and e - b > max_days * 86400 then
    return nil, invalid(prefix .. "available_end_time", "must be at most " .. max_days .. " days after the begin time")
  end
  return true
end

local function check_available_time(t)
  local p = "coupon_use_rule.coupon_available_time."
  -- "有效期最长为1年": 366 days so a leap year is never refused.
  local ok, err = check_window(t, p, 366)
  if not ok then return nil, err end
  if t.wait_days_after_receive and not t.available_day_after_receive then
    return nil, invalid(p .. "wait_days_after_receive", "only together with available_day_after_receive")
  end
  local week = t.available_week
  if week and week.available_day_time and not week.week_day then
    return nil, invalid(p .. "available_week.week_day", "required with available_day_time")
  end
  for i, w in ipairs(week and week.available_day_time or {}) do
    if w.end_time <= w.begin_time then
      return nil, invalid(p .. "available_week.available_day_time[" .. i .. "].end_time", "must be after begin_time")
    end
  end
  for i, w in ipairs(t.irregulary_avaliable_time or {}) do
    if f.parse_time(w.end_time) <= f.parse_time(w.begin_time) then
      return nil, invalid(p .. "irregulary_avaliable_time[" .. i .. "].end_time", "must be after begin_time")
    end
  end
  return true
end

--- Cross-field rules of B1 on the checked copy.
function M.check_create(p)
  if #p.stock_name > 24 and f.utf8_len(p.stock_name) > 21 then
    return nil, invalid("stock_name", "must be at most 21 characters (or 24 bytes)")
  end
  local rule = p.coupon_use_rule
  local want = RULE_FOR_TYPE[p.stock_type]
  if rule[want] == nil then
    return nil, invalid("coupon_use_rule." .. want, "required when stock_type is " .. p.stock_type)
  end
  for _, name in ipairs(RULE_OBJECTS) do -- "三选一": only the one matching stock_type
    if name ~= want and rule[name] ~= nil then
      return nil, invalid("coupon_use_rule." .. name, "not allowed when stock_type is " .. p.stock_type)
    end
  end
  return check_available_time(rule.coupon_available_time)
end

--- B4: at least one target, and the current value it replaces when the target is above 0
-- ("当传入target_max_coupons大于0时,current_max_coupons必传"). Both pairs at once (the
-- official example) and a `current_*` of the other pair are passed on: the page's text says
-- one target per call, its example sends both, and the server has the last word.
function M.check_budget(p)
  local a, b = p.target_max_coupons, p.target_max_coupons_by_day
  if a == nil and b == nil then
    return nil, invalid("target_max_coupons", "give target_max_coupons or target_max_coupons_by_day")
  end
  if a and a > 0 and p.current_max_coupons == nil then
    return nil, invalid("current_max_coupons", "required with target_max_coupons (compare-and-set)")
  end
  if b and b > 0 and p.current_max_coupons_by_day == nil then
    return nil, invalid("current_max_coupons_by_day", "required with target_max_coupons_by_day (compare-and-set)")
  end
  return true
end

return M
