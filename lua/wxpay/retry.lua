--- Retry policy: which failures are worth repeating, how long to wait before the next try
-- (backoff with jitter, or the server's Retry-After), and failover to the backup host with
-- its cool-down. The loop that applies it is in wxpay.pipeline; the settings are in
-- docs/config.md.
-- @module wxpay.retry

local core = require("wxpay.core")

local M = {}

-- Methods a server must treat as repeatable; anything else is repeated only with an
-- Idempotency-Key, or when the request is idempotent by a request number in its body
-- (`r.idempotent`, the coupon products' `out_request_no` and the like).
local SAFE_METHODS = { GET = true, PUT = true, DELETE = true }

--- Whether a request may be sent again after the server may have acted on it.
-- @tparam table r the prepared request (`method`, `idempotency_key`, `idempotent`)
-- @treturn boolean
function M.repeatable(r)
  return SAFE_METHODS[r.method] or r.idempotency_key ~= nil or r.idempotent == true
end

--- Whether an error answer asks for the same request again: 429, 5xx, and the codes
-- WeChat Pay documents as "try again" (whatever the method: it asks for identical re-sends).
-- @tparam number status
-- @tparam[opt] string code
-- @treturn boolean
function M.retryable_answer(status, code)
  return status == 429 or status >= 500 or code == "SYSTEM_ERROR" or code == "SERVICE_UNAVAILABLE"
end

local function jitter()
  -- core.nonce is a CSPRNG; using it keeps math.random's global state untouched.
  local n = core.nonce(6)
  if not n then return 0.5 end -- no random source: the middle of the range, no jitter
  local acc = 0
  for i = 1, #n do
    local c = n:byte(i)
    local d = c >= 97 and c - 61 or c >= 65 and c - 55 or c - 48
    acc = acc * 62 + d
  end
  return acc / (62 ^ 6)
end

--- Seconds to wait before the next try: the server's `Retry-After` (seconds form, capped
-- by `retry_after_max`) when present, else `min(retry_max_delay, retry_base_delay *
-- 2^(attempt-1))` with "equal jitter" (a random point in its upper half).
-- @tparam table st the client state
-- @tparam number attempt the try that just failed (1 for the first)
-- @tparam[opt] table resp its answer, if any (lower-cased headers)
-- @treturn number
function M.delay(st, attempt, resp)
  local ra = resp and resp.headers["retry-after"]
  if type(ra) == "string" and ra:match("^%s*%d+%s*$") then
    return math.min(tonumber(ra), st.retry_after_max)
  end
  local d = math.min(st.retry_max_delay, st.retry_base_delay * 2 ^ (attempt - 1))
  return d / 2 + (d / 2) * jitter() -- "equal jitter": at least half the backoff
end

--- The hosts to try, in order: the backup first while a failover's cool-down lasts.
-- @return first, second (nil without a backup)
function M.hosts(st)
  local first, second = st.base_url, st.backup_url
  if second and st.fleet and not st.prefer_backup_until then
    st.prefer_backup_until = require("wxpay.fleet").prefer_backup_until(st) -- another worker's switch
  end
  if second and st.prefer_backup_until then
    if st.monotonic() < st.prefer_backup_until then
      first, second = second, first
    else
      st.prefer_backup_until = nil -- cool-down over: primary again
    end
  end
  return first, second
end

--- Whether a failed transmission should go to the other host: only when the first could
-- not be connected to (so nothing reached a server).
-- @param terr the transport's error
-- @tparam number leg 1 for the first host
-- @param second the other host, if any
-- @treturn boolean
function M.fail_over(terr, leg, second)
  return type(terr) == "table" and terr.connected == false and leg == 1 and second ~= nil
end

--- Note which host answered. Only a switch of host changes the preference; answers from
-- the preferred host do not extend the cool-down.
-- @tparam table st
-- @tparam number leg 2 when the other host answered
-- @tparam string base the host that answered
function M.answered(st, leg, base)
  if leg == 2 then
    st.prefer_backup_until = base ~= st.base_url and st.monotonic() + st.failover_cooldown or nil
    if st.fleet then require("wxpay.fleet").switched(st, base ~= st.base_url) end
  end
end

return M
