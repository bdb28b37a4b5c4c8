--- The APIv2 signature the 发券 flows (小程序发券插件, H5发券, JSAPI发券) carry: the V2 rule
-- with HMAC-SHA256 and the merchant's APIv2 key. This file checks the parameters; the
-- string to sign is built and signed in the C core (`core.sign_v2`), which skips `sign` and
-- empty values, sorts the names by their bytes, appends `&key=` + key and returns the
-- upper-case hex HMAC. See docs/issuing.md.
-- @module wxpay.v2sign

local core = require("wxpay.core")
local errors = require("wxpay.errors")
local check_utf8 = require("wxpay.request").check_utf8

local M = {}

local MAX_PARAMS = 64

-- The well-formed 4-byte UTF-8 sequences (U+10000..U+10FFFF). request.check_utf8 refuses
-- them because WeChat's APIv3 JSON does; the V2 signature signs any UTF-8 bytes, so they
-- are masked (as ASCII) before the rest of the string is checked.
local FOUR_BYTE = { "\240[\144-\191][\128-\191][\128-\191]", "[\241-\243][\128-\191][\128-\191][\128-\191]",
                    "\244[\128-\143][\128-\191][\128-\191]" }

local function check_text(v)
  for _, p in ipairs(FOUR_BYTE) do v = v:gsub(p, "xxxx") end -- byte positions kept
  return check_utf8(v)
end

-- A value as the string that is signed, or nil and the reason.
local function value_string(v)
  local t = type(v)
  if t == "string" then
    if v:find("%c") then return nil, "must not contain control characters" end
    local ok, why = check_text(v)
    if not ok then return nil, why end
    return v
  elseif t == "number" then
    if v ~= v or math.floor(v) ~= v or math.abs(v) >= 2 ^ 53 then
      return nil, "numbers must be integers"
    end
    return string.format("%d", v)
  end
  return nil, "must be a string or an integer, not a " .. t
end

--- Check `params` and turn it into the name → string map the C core signs.
-- @tparam table params name → string or integer
-- @treturn table|nil the map
-- @treturn table|nil an `invalid_argument` error naming the parameter
function M.normalize(params)
  local out, n = {}, 0
  for name, v in pairs(params) do
    if type(name) ~= "string" or not name:match("^[%w_%-.]+$") then
      return nil, errors.invalid_argument(tostring(name),
        "parameter names are letters, digits, _ - and . only")
    end
    n = n + 1
    if n > MAX_PARAMS then return nil, errors.invalid_argument(name, "more than " .. MAX_PARAMS .. " parameters") end
    local s, why = value_string(v)
    if not s then return nil, errors.invalid_argument(name, why) end
    out[name] = s
  end
  return out
end

--- The V2 HMAC-SHA256 signature of `params` with `key`.
-- @tparam table params name → string or integer (a table, a boolean, a fraction or a
--   control character gives `invalid_argument`); `sign` and empty values are left out, and
--   a set of nothing else is `invalid_argument` (field `params`)
-- @tparam string key the APIv2 key
-- @treturn string|nil 64 upper-case hex digits
-- @treturn table|nil an `invalid_argument` error
function M.sign(params, key)
  if type(params) ~= "table" then
    error("bad argument #1 to 'sign_v2' (table expected, got " .. type(params) .. ")", 3)
  end
  if type(key) ~= "string" then
    error("bad argument #2 to 'sign_v2' (string expected, got " .. type(key) .. ")", 3)
  end
  if key == "" or #key > 1024 or key:find("%c") then
    return nil, errors.invalid_argument("key", "must be 1-1024 characters without control characters")
  end
  local map, err = M.normalize(params)
  if not map then return nil, err end
  local signed = false
  for name, v in pairs(map) do
    if name ~= "sign" and v ~= "" then signed = true break end
  end
  if not signed then
    return nil, errors.invalid_argument("params", "nothing to sign: no parameter but sign and empty values")
  end
  local sign, why = core.sign_v2(map, key)
  if not sign then return nil, errors.invalid_argument("params", tostring(why)) end
  return sign
end

return M
