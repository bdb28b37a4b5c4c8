--- Field tables of 支付有礼 (pay-gift activity) requests, in the protocol's key order, with
-- the cross-field rules the official field tables state. Where sources disagree the looser
-- rule is kept (docs/paygift.md, "What the official pages leave open").
--
-- The create call sends `award_send_rule` flat (`transaction_amount_minimum`, …); the
-- detail and list answers wrap it (`award_send_rule.full_send_rule.…`). Only the request
-- shape is described here: answers are returned as sent.
-- @module wxpay.api.paygift_schema

local f = require("wxpay.api.fields")
local errors = require("wxpay.errors")

local M = {}

local invalid = errors.invalid_argument
local DAY = 86400
-- "活动有效期最长90天"; "最长可以配置1年内的活动" (366 days: a leap year is never refused).
M.MAX_WINDOW_DAYS = 90
M.MAX_AHEAD_DAYS = 366

M.ACTIVITY_STATUSES = { "ACT_STATUS_UNKNOWN", "CREATE_ACT_STATUS", "ONGOING_ACT_STATUS",
  "TERMINATE_ACT_STATUS", "STOP_ACT_STATUS", "OVER_TIME_ACT_STATUS", "CREATE_ACT_FAILED" }
M.AWARD_TYPES = { "BUSIFAVOR" }
M.SEND_CONTENTS = { "SINGLE_COUPON", "GIFT_PACKAGE" }
-- sic: "SEVICE" is the protocol's spelling.
M.MERCHANT_OPTIONS = { "IN_SEVICE_COUPON_MERCHANT", "MANUAL_INPUT_MERCHANT" }
M.DELIVERY_PURPOSES = { "OFF_LINE_PAY", "JUMP_MINI_APP" }

local MCHID = f.digits(8, 15)
--- A merchant list of G1, G7 and G8: 1-500 ids of 8-15 digits.
M.MERCHANT_ID_LIST = f.array(MCHID, 1, 500)

local day_time = f.digits(6, 6) -- HHMMSS, "000000"-"235959"

-- The old wiki makes both lists required once `available_periods` is sent; wechatpay-go
-- marks both optional: the looser reading (either list alone) is taken.
local available_periods = f.object{
  { "available_time", f.array(f.object{
    { "begin_time", f.time(), true },
    { "end_time", f.time(), true },
  }, 1) },
  { "available_day_time", f.array(f.object{
    { "begin_day_time", day_time, true },
    { "end_day_time", day_time, true },
  }, 1) },
}

local activity_base_info = f.object{
  { "activity_name", f.text(1, 10), true },
  { "activity_second_title", f.text(1, 9), true },
  { "merchant_logo_url", f.url(128), true },
  -- Color010…Color100 on the new pages, COLOR010 in older samples: passed through.
  { "background_color", f.id(1, 8) },
  { "begin_time", f.time(), true },
  { "end_time", f.time(), true },
  { "available_periods", available_periods },
  { "out_request_no", f.request_no(128), true },
  { "delivery_purpose", f.enum(M.DELIVERY_PURPOSES), true },
  { "mini_programs_appid", f.id(1, 32) },
  { "mini_programs_path", f.id(1, 128) },
}

local award = f.object{
  { "stock_id", f.id(1, 20), true },
  { "original_image_url", f.url(128), true },
  { "thumbnail_url", f.url(128) },
}

-- Flat on create (the detail answer wraps it in `full_send_rule`).
local award_send_rule = f.object{
  { "transaction_amount_minimum", f.fen(0), true },
  { "send_content", f.enum(M.SEND_CONTENTS), true },
  { "award_type", f.enum(M.AWARD_TYPES), true },
  { "award_list", f.array(award, 1, 5), true },
  { "merchant_option", f.enum(M.MERCHANT_OPTIONS), true },
  { "merchant_id_list", M.MERCHANT_ID_LIST },
}

local payment_method_information = f.object{
  { "payment_method", f.enum{ "CFT", "SPECIFIC_BANK_CARD" }, true },
  { "bank_abbreviation", f.id(1) }, -- no length is documented
}

local advanced_setting = f.object{
  { "delivery_user_category", f.enum{ "DELIVERY_ALL_PERSON", "DELIVERY_MEMBER_PERSON" } },
  { "merchant_member_appid", f.id(1, 32) },
  -- "商家券暂不开放" for the two payment fields: passed through, the server decides.
  { "payment_mode", f.object{
    { "payment_scene_list", f.array(f.enum{ "APP_SCENE", "SWING_CARD_SCENE", "NO_SECRET_SCENE",
      "MINIAPP_SCENE", "FACE_PAY_SCENE", "OTHER_SCENE" }) },
    -- One third-party definition nests it here; the official pages put it one level up.
    { "payment_method_information", payment_method_information },
  } },
  { "payment_method_information", payment_method_information },
  { "goods_tags", f.array(f.id(1), 0, 500) },
}

--- G1 create a 全场满额送 activity (`out_request_no` is filled in before the check).
M.create = {
  { "activity_base_info", activity_base_info, true },
  { "award_send_rule", award_send_rule, true },
  { "advanced_setting", advanced_setting },
}

--- G7 add merchants. No page states a charset for `add_request_no` (only "请求业务单据号",
-- string[1,128]): any 1-128 characters without control characters.
M.add_merchants = {
  { "merchant_id_list", M.MERCHANT_ID_LIST, true },
  { "add_request_no", f.id(1, 128), true },
}

--- G8 delete merchants.
M.delete_merchants = {
  { "merchant_id_list", M.MERCHANT_ID_LIST, true },
  { "delete_request_no", f.request_no(128), true },
}

-- The activity window: end after begin, at most 90 days long, beginning within a year.
local function check_window(base, now)
  local p = "activity_base_info."
  local b, e = f.parse_time(base.begin_time), f.parse_time(base.end_time)
  if e <= b then return nil, invalid(p .. "end_time", "must be after begin_time") end
  if e - b > M.MAX_WINDOW_DAYS * DAY then
    return nil, invalid(p .. "end_time", "must be at most " .. M.MAX_WINDOW_DAYS .. " days after begin_time")
  end
  if b > now + M.MAX_AHEAD_DAYS * DAY then
    return nil, invalid(p .. "begin_time", "must be within a year from now")
  end
  for i, w in ipairs(base.available_periods and base.available_periods.available_time or {}) do
    if f.parse_time(w.end_time) <= f.parse_time(w.begin_time) then
      return nil, invalid(p .. "available_periods.available_time[" .. i .. "].end_time", "must be after begin_time")
    end
  end
  return true
end

local function check_awards(rule)
  local p = "award_send_rule."
  local n = #rule.award_list
  if rule.send_content == "GIFT_PACKAGE" and (n < 3 or n > 5) then
    return nil, invalid(p .. "award_list", "must hold 3-5 coupons when send_content is GIFT_PACKAGE, got " .. n)
  end
  if n > 1 then -- "多张券时必填"
    for i, a in ipairs(rule.award_list) do
      if a.thumbnail_url == nil then
        return nil, invalid(p .. "award_list[" .. i .. "].thumbnail_url", "required when there is more than one coupon")
      end
    end
  end
  if rule.merchant_option == "MANUAL_INPUT_MERCHANT" and rule.merchant_id_list == nil then
    return nil, invalid(p .. "merchant_id_list", "required when merchant_option is MANUAL_INPUT_MERCHANT")
  end
  return true
end

--- Cross-field rules of G1 on the checked copy.
-- @tparam table p the checked body
-- @tparam[opt] number now seconds since the epoch (default `os.time()`)
function M.check_create(p, now)
  local base = p.activity_base_info
  local ok, err = check_window(base, now or os.time())
  if not ok then return nil, err end
  if base.delivery_purpose == "JUMP_MINI_APP" and base.mini_programs_appid == nil then
    return nil, invalid("activity_base_info.mini_programs_appid", "required when delivery_purpose is JUMP_MINI_APP")
  end
  ok, err = check_awards(p.award_send_rule)
  if not ok then return nil, err end
  local adv = p.advanced_setting
  if adv and adv.delivery_user_category == "DELIVERY_MEMBER_PERSON" and adv.merchant_member_appid == nil then
    return nil, invalid("advanced_setting.merchant_member_appid",
      "required when delivery_user_category is DELIVERY_MEMBER_PERSON")
  end
  return true
end

return M
