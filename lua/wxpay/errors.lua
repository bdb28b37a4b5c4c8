--- Structured errors for wxpay.
-- Every failure the library reports (other than wrong argument types, which raise) is a
-- table made by `errors.new`, with the fields listed in ARCHITECTURE.md "Errors" and a
-- `__tostring` for logs. Constructors never copy request headers or keys into an error, so
-- an error can be logged as is.
-- @module wxpay.errors

local M = {}

local Error = {}
Error.__index = Error

-- Fields shown in the trailing "(…)" of tostring, in this order.
local SUFFIX_FIELDS = { "field", "request_id", "idempotency_key", "serial", "attempts" }

--- Render an error as one log line.
-- e.g. `wxpay: api error 500 SYSTEM_ERROR: 系统错误 (request_id=…, attempts=3)`; a coupon
-- call's request number shows as `out_request_no=…` (any `*_request_no` field).
function Error.__tostring(e)
  local head = { "wxpay: ", tostring(e.kind), " error" }
  if e.status then head[#head + 1] = " " .. tostring(e.status) end
  if e.code then head[#head + 1] = " " .. tostring(e.code) end
  if e.message then head[#head + 1] = ": " .. tostring(e.message) end
  local extra = {}
  for _, k in ipairs(SUFFIX_FIELDS) do
    local v = e[k]
    if v ~= nil then extra[#extra + 1] = k .. "=" .. tostring(v) end
    -- The coupon calls' request numbers (`out_request_no`, `modify_budget_request_no`, …)
    -- are their idempotency keys: shown in the same place, sorted.
    if k == "idempotency_key" then
      local numbers = {}
      for name, no in pairs(e) do
        if type(name) == "string" and name:find("_request_no$") then
          numbers[#numbers + 1] = name .. "=" .. tostring(no)
        end
      end
      table.sort(numbers)
      for _, n in ipairs(numbers) do extra[#extra + 1] = n end
    end
  end
  if e.probe then extra[#extra + 1] = "probe=true" end
  if #extra > 0 then head[#head + 1] = " (" .. table.concat(extra, ", ") .. ")" end
  if e.hint then head[#head + 1] = "; hint: " .. tostring(e.hint) end
  return table.concat(head)
end

-- Default local codes per kind; "api" errors carry the server's code instead.
local DEFAULT_CODE = {
  invalid_argument = "INVALID_ARGUMENT",
  config = "INVALID_CONFIG",
  network = "NETWORK_ERROR",
  timeout = "TIMEOUT",
  signature = "SIGNATURE_INVALID",
  decode = "DECODE_ERROR",
}

-- Which kinds trying again may help with (the caller can override per error).
local DEFAULT_RETRYABLE = {
  invalid_argument = false, config = false, network = true, timeout = true,
  api = false, signature = false, decode = false,
}

--- Make an error object.
-- @tparam string kind one of `invalid_argument`, `config`, `network`, `timeout`, `api`,
--   `signature`, `decode`
-- @tparam string message human-readable reason (never a secret)
-- @tparam[opt] table fields extra fields (`code`, `field`, `status`, `request_id`, …)
-- @treturn table the error, with `__tostring`
function M.new(kind, message, fields)
  local e = {}
  if fields then for k, v in pairs(fields) do e[k] = v end end
  e.kind = kind
  e.message = message
  if e.code == nil then e.code = DEFAULT_CODE[kind] end
  if e.retryable == nil then e.retryable = DEFAULT_RETRYABLE[kind] or false end
  return setmetatable(e, Error)
end

--- An `invalid_argument` error naming the offending field (nothing was sent).
-- @tparam string field path such as `partner.appid`
-- @tparam string reason what is wrong with it
-- `elapsed` is 0: a call refused on its arguments returns at once, before anything is
-- sent (every call's error has an `elapsed`, docs/observability.md).
function M.invalid_argument(field, reason)
  return M.new("invalid_argument", field .. ": " .. reason, { field = field, elapsed = 0 })
end

--- A `config` error naming the offending configuration key.
function M.config(field, reason)
  return M.new("config", field .. ": " .. reason, { field = field })
end

--- True when `x` is an error made by this module.
function M.is(x)
  return getmetatable(x) == Error
end

return M
