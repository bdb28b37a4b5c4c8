--- Field tables of 代金券 (FAVOR_STOCK) requests, in the protocol's key order, with the
-- cross-field rules the tables state. Where sources disagree the looser rule is kept (see
-- docs/coupons.md, "Open questions").
-- @module wxpay.api.favor_schema

local f = require("wxpay.api.fields")
local errors = require("wxpay.errors")

local M = {}

local invalid = errors.invalid_argument

-- `NORMAL` is the only type reported to work; the SDKs list the others (`EXCHAHGE` sic).
M.STOCK_TYPES = { "NORMAL", "DISCOUNT", "EXCHAHGE", "RANDOM", "DISCOUNT_CUT" }
M.STOCK_STATUS = { "unactivated", "audit", "running", "stoped", "paused" }
M.TRADE_TYPES = { "MICROAPP", "APPPAY", "PPAY", "CARD", "FACE", "OTHER" }

local stock_use_rule = f.object{
  { "max_coupons", f.int(1), true },
  { "max_amount", f.fen(1), true },
  { "max_amount_by_day", f.fen(1) },
  { "max_coupons_per_user", f.int(1), true },
  { "natural_person_limit", f.bool(), true },
  { "prevent_api_abuse", f.bool(), true },
}

local pattern_info = f.object{
  { "description", f.text(1, 3000), true },
  { "merchant_logo", f.url(128) },
  { "merchant_name", f.text(1, 128) },
  -- COLOR010 (代金券 examples) or Color010: an open set, passed through.
  { "background_color", f.id(1, 15) },
  { "coupon_image", f.url(128) },
  { "jump_target", f.enum{ "PAYMENT_CODE", "MINI_PROGRAM", "DEFAULT_PAGE" } },
  { "mini_program_appid", f.id(1, 32) },
  { "mini_program_path", f.id(1, 128) },
}

local coupon_use_rule = f.object{
  { "coupon_available_time", f.object{
    { "fix_available_time", f.object{
      { "available_week_day", f.array(f.int(0, 6), 1, 7) },
      { "begin_time", f.int(0, 86400) },
      { "end_time", f.int(0, 86400) },
    } },
    { "second_day_available", f.bool() },
    { "available_time_after_receive", f.int(1) },
  } },
  { "fixed_normal_coupon", f.object{
    { "coupon_amount", f.fen(1), true },
    { "transaction_minimum", f.fen(1), true },
  } },
  { "goods_tag", f.array(f.id(1, 128), 1, 50) },
  { "limit_pay", f.array(f.id(1, 32), 1) },
  { "limit_card", f.object{
    { "name", f.text(1, 4) },
    { "bin", f.array(f.digits(6, 9), 1, 10) },
  } },
  { "trade_type", f.array(f.enum(M.TRADE_TYPES), 1) },
  { "combine_use", f.bool() },
  { "available_items", f.array(f.id(1, 128), 1, 50) },
  { "unavailable_items", f.array(f.id(1, 128), 1, 50) },
  -- Required in the old pages, optional in the SDKs: optional here. No count cap: only a
  -- third-party copy states 50; the official table and the SDKs give none.
  { "available_merchants", f.array(f.digits(1, 20), 1) },
}

--- F1 create (`out_request_no` and `belong_merchant` are filled in before the check).
M.create = {
  { "stock_name", f.text(1, 20), true },
  { "comment", f.text(1, 60) },
  { "belong_merchant", f.digits(1, 20), true },
  { "available_begin_time", f.time(), true },
  { "available_end_time", f.time(), true },
  { "stock_use_rule", stock_use_rule, true },
  { "pattern_info", pattern_info },
  { "coupon_use_rule", coupon_use_rule, true },
  { "no_cash", f.bool(), true },
  { "stock_type", f.enum(M.STOCK_TYPES), true },
  { "out_request_no", f.request_no(128), true },
  { "ext_info", f.text(1, 128) },
}

--- F11 send a coupon (`coupon_value` / `coupon_minimum` are "暂未开放" and refused by the
-- server, so they are refused here with that reason).
M.send = {
  { "stock_id", f.id(1, 20), true },
  { "out_request_no", f.request_no(128), true },
  { "appid", f.id(1, 128), true },
  { "stock_creator_mchid", f.digits(1, 20), true },
}

--- F18 set the callback URL.
M.callbacks = {
  { "mchid", f.digits(1, 20), true },
  { "notify_url", f.url(256), true },
  { "switch", f.bool() },
}

-- The window rule of F1: "可用时间范围最长90天".
local MAX_WINDOW_DAYS = 90

--- `max_amount = coupon_amount × max_coupons`, exactly on every interpreter. The three are
-- checked integers in 1..2^53-1 (integers or floats, by interpreter and source). The product
-- is taken in doubles: below 2^53 it is exact; at or above, it is above any `max_amount`
-- (rounding cannot bring it below 2^53). So nothing wraps (5.3+ integers), raises (formatting
-- a float of no integer value) or prints garbage (LuaJIT's %d).
-- @return true, or nil and an `invalid_argument` error for `stock_use_rule.max_amount`
function M.check_max_amount(max_amount, coupon_amount, max_coupons)
  local product = (coupon_amount * 1.0) * max_coupons
  if product >= 2 ^ 53 then
    return nil, invalid("stock_use_rule.max_amount", "must equal coupon_amount * max_coupons "
      .. "(which is 2^53 or more, past any amount)")
  end
  if max_amount ~= product then
    return nil, invalid("stock_use_rule.max_amount", "must equal coupon_amount * max_coupons ("
      .. string.format("%.0f", product) .. ")")
  end
  return true
end

--- Cross-field rules of F1 on the checked copy.
function M.check_create(p)
  if p.stock_name:find("[_,;|]") then
    return nil, invalid("stock_name", "must not contain _ , ; or |")
  end
  local b, e = f.parse_time(p.available_begin_time), f.parse_time(p.available_end_time)
  if e <= b then return nil, invalid("available_end_time", "must be after available_begin_time") end
  if e - b > MAX_WINDOW_DAYS * 86400 then
    return nil, invalid("available_end_time", "must be at most " .. MAX_WINDOW_DAYS .. " days after the begin time")
  end
  local rule, use = p.stock_use_rule, p.coupon_use_rule
  local fixed = use.fixed_normal_coupon
  if p.stock_type == "NORMAL" and not fixed then
    return nil, invalid("coupon_use_rule.fixed_normal_coupon", "required when stock_type is NORMAL")
  end
  if fixed then
    if fixed.transaction_minimum <= fixed.coupon_amount then
      return nil, invalid("coupon_use_rule.fixed_normal_coupon.transaction_minimum", "must exceed coupon_amount")
    end
    local ok, err = M.check_max_amount(rule.max_amount, fixed.coupon_amount, rule.max_coupons)
    if not ok then return nil, err end
  end
  if rule.max_amount_by_day and rule.max_amount_by_day > rule.max_amount then
    return nil, invalid("stock_use_rule.max_amount_by_day", "must not exceed max_amount")
  end
  if rule.max_coupons_per_user > rule.max_coupons then
    return nil, invalid("stock_use_rule.max_coupons_per_user", "must not exceed max_coupons")
  end
  local pat = p.pattern_info
  if pat and pat.jump_target == "MINI_PROGRAM" then
    for _, name in ipairs({ "mini_program_appid", "mini_program_path" }) do
      if pat[name] == nil then
        return nil, invalid("pattern_info." .. name, "required when jump_target is MINI_PROGRAM")
      end
    end
  end
  return true
end

return M
