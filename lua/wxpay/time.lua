--- Calendar arithmetic without `os.time` (which works in local time): the RFC 3339 times
-- WeChat Pay writes (`2015-05-20T13:29:35+08:00`) and HTTP dates, as unix seconds. Shared by
-- the coupon field checks, `wxpay doctor` (the server's `Date`) and the sandbox.
-- @module wxpay.time

local M = {}

local MONTH_DAYS = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }
local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8, Sep = 9,
  Oct = 10, Nov = 11, Dec = 12 }

--- Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
function M.days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function utc_offset(rest)
  if rest == "Z" then return 0 end
  local sign, oh, om = rest:match("^([+-])(%d%d):(%d%d)$")
  if not sign then return nil, "must end with a UTC offset (Z or +08:00)" end
  oh, om = tonumber(oh), tonumber(om)
  if oh > 23 or om > 59 then return nil, "has an invalid UTC offset" end
  return (oh * 60 + om) * 60 * (sign == "-" and -1 or 1)
end

--- Parse an RFC 3339 time with an offset (`2015-05-20T13:29:35+08:00`, `…35.120+08:00`,
-- `…Z`) into seconds since the epoch (UTC); fractions are dropped.
-- @tparam string s
-- @return number, or nil and a reason
function M.parse_rfc3339(s)
  if type(s) ~= "string" or #s > 40 then return nil, "must be an RFC 3339 time string" end
  local y, mo, d, h, mi, sec, rest = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)T(%d%d):(%d%d):(%d%d)(.*)$")
  if not y then return nil, "must be an RFC 3339 time like 2024-05-20T13:29:35+08:00" end
  local offset, why = utc_offset((rest:gsub("^%.%d+", "", 1)))
  if not offset then return nil, why end
  y, mo, d, h, mi, sec = tonumber(y), tonumber(mo), tonumber(d), tonumber(h), tonumber(mi), tonumber(sec)
  local leap = (y % 4 == 0 and y % 100 ~= 0) or y % 400 == 0
  if mo < 1 or mo > 12 or d < 1 or d > MONTH_DAYS[mo] or (mo == 2 and d == 29 and not leap)
     or h > 23 or mi > 59 or sec > 60 then
    return nil, "is not a valid date and time"
  end
  return M.days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + math.min(sec, 59) - offset
end

--- Unix seconds of an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`), or nil.
function M.parse_http_date(s)
  local d, mon, y, h, mi, se = tostring(s):match("^%a+, (%d%d?) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT$")
  if not d or not MONTHS[mon] then return nil end
  return M.days_from_civil(tonumber(y), MONTHS[mon], tonumber(d)) * 86400 + tonumber(h) * 3600
    + tonumber(mi) * 60 + tonumber(se)
end

return M
