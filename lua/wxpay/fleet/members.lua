--- How many fleet members recently shared the rate budget, learned through the store while
-- it answers, so that while it does not each member paces at its fair share
-- (`qps / members`, or the config key `fallback_qps`) instead of the whole `qps`.
--
-- Time is cut in windows of WINDOW seconds (the store's clock for the window's number: hosts'
-- clocks agree to a few seconds, a member counted twice only lowers the share). A member
-- that reserved a start counts itself once per window (`incr` of `members:<window>`) and
-- reads the count at most once a second; its estimate is the larger of the current window's
-- count and the last it read for the previous window. Cost: one store operation a second
-- per busy member.
-- @module wxpay.fleet.members

local M = {}

M.WINDOW = 10   -- seconds
local READ_EVERY = 1

--- After a reservation through the store: count this member, read the others.
-- @tparam table st the client state (`st.fleet`)
-- @return nil, or the store's error (the caller decides what an outage means)
function M.seen(st)
  local f = st.fleet
  local now = st.monotonic()
  if f.members_read_at and now - f.members_read_at < READ_EVERY then return nil end
  f.members_read_at = now
  local w = math.floor(st.now() / M.WINDOW)
  local key = "members:" .. string.format("%d", w)
  local n, err
  if f.members_window ~= w then
    f.members_prev = (f.members_window == w - 1) and f.members_cur or nil
    n, err = f.store:incr(key, 1, 3 * M.WINDOW)
    if n then f.members_window = w end
  else
    local v
    v, err = f.store:get(key)
    n = tonumber(v or "")
  end
  if n then f.members_cur = n end
  return err
end

--- The members this one believes share the budget (1 when it never learned any).
-- @treturn number
function M.count(st)
  local f = st.fleet
  return math.max(1, f.members_cur or 1, f.members_prev or 1)
end

--- The rate this member paces at alone, while the store is down.
-- @tparam table st
-- @tparam number rate the budget's configured rate
-- @treturn number
function M.fallback_rate(st, rate)
  local f = st.fleet
  if f.fallback_qps then return math.min(rate, f.fallback_qps) end
  return rate / M.count(st)
end

return M
