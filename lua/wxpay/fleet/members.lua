--- How many fleet members recently shared the rate budget, learned through the store while
-- it answers, so that while it does not each member paces at its fair share
-- (`qps / members`, or the config key `fallback_qps`) instead of the whole `qps`.
--
-- Time is cut in windows of WINDOW seconds (the store's clock for the window's number: hosts'
-- clocks agree to a few seconds, a member counted twice only lowers the share). A member
-- that reserved a start counts itself once per window (`incr` of `members:<window>`) and
-- reads the count at most once a second; its estimate is the larger of the current window's
-- count and the previous window's final count (read once when its window begins). Cost: one
-- store operation a second per busy member, and one more every WINDOW seconds.
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
    -- The previous window's final count, read from the store: what this member last read of
    -- it may be its own early `incr` (1), and the first `incr` of a new window is 1 too, so
    -- remembering alone could leave a member believing it paces alone for a second or two.
    local prev, perr = f.store:get("members:" .. string.format("%d", w - 1))
    if perr then return perr end
    local own = (f.members_window == w - 1) and f.members_cur or nil
    f.members_prev = math.max(tonumber(prev or "") or 0, own or 0)
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
