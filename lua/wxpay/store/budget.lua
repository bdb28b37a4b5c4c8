--- The fleet rate budget: request starts paced for everything that shares a store.
--
--     local budget = require("wxpay.store.budget")
--     local wait, start_at = budget.reserve(s, "qps:POST /v3/pay/transactions/jsapi", 50)
--     if wait == nil then --[[ store down: use a local limiter (concurrent.new_limiter) ]] end
--     sleep(wait) -- then start; on a 429:
--     budget.throttle(s, "qps:POST /v3/pay/transactions/jsapi", start_at)
--
-- The same rules as `client.concurrent`'s limiter (`wxpay.concurrent.new_limiter`), held in
-- the store instead of in one batch: a generic cell rate algorithm (GCRA) with no burst,
-- starts spaced T = (1 + GUARD) / rate apart, so no one-second window holds more than `rate`
-- starts; a 429 halves the rate (not below MIN_RATE, and not again for a request that started
-- before the last cut), which then climbs back by a tenth of the target per second.
--
-- Each call reserves its slot atomically:
--
-- * Redis: one EVAL script per call, on Redis's clock (`TIME`), so hosts whose clocks differ
--   agree; `now` is ignored there and `start_at` is in Redis's time.
-- * memory: plain Lua (nothing runs between the read and the write);
-- * `lua_shared_dict` and custom stores: a read-modify-write under a lock (`add` with a
--   50 ms TTL, spinning 1 ms at a time; under nginx `ngx.sleep`, so not in phases that cannot
--   yield, where the call returns nil, err). A dict without a lock would need a
--   compare-and-set, which the shared dict has not.
--
-- When the store fails the functions return `nil, err` and reserve nothing: the caller
-- falls back to a local limiter and warns once (the client decides). Reservations queue: with
-- more demand than `rate`, waits grow. A caller passes the longest wait it can afford
-- (`max_wait`, at most MAX_WAIT): a later start is refused in the same atomic step and its
-- slot stays free for the next caller. State no working fleet writes (a rate outside
-- [min(MIN_RATE, target), target], a cut rate without `last_step`, a start further ahead
-- than the longest possible queue) is mended in that step too, so one damaged entry cannot
-- stall every request.
-- @module wxpay.store.budget

local errors = require("wxpay.errors")
local unavailable = require("wxpay.store").unavailable

local M = {}

-- Kept equal to lua/wxpay/concurrent.lua's limiter (spec/16 checks the pacing matches).
M.GUARD = 0.02
M.MIN_RATE = 0.5
M.STATE_TTL = 60 -- idle state goes away; a climb back takes 10 s, so nothing is lost
M.MAX_WAIT = 60  -- seconds: the longest wait reserve accepts, whatever the caller asks

-- The algorithm, as source: run here (load) and inside the Redis scripts, so both agree.
-- `st` fields: tat (next free slot), rate (current), target (configured), cut_at, last_step.
local ALGO = [[
local GUARD, MIN_RATE, MAX_WAIT = %s, %s, %s
local LOW_SLACK = 0.005

-- Damaged state (a bad store entry): fall back to what the configuration says.
local function mend(st, target, now)
  local floor = math.min(MIN_RATE, target)
  if st.rate and not (st.rate >= floor and st.rate <= target) then st.rate = target end
  if st.rate and st.rate < target and not st.last_step then st.last_step = now end
  if st.tat and not (st.tat <= now + MAX_WAIT + (1 + GUARD) / floor) then st.tat = nil end
end

local function recover(st, now)
  if st.rate < st.target and st.last_step then
    local steps = math.floor(now - st.last_step)
    if steps > 0 then
      st.rate = math.min(st.target, st.rate + steps * st.target / 10)
      st.last_step = st.last_step + steps
    end
  end
end

local function reserve(st, target, now, max_wait, low)
  if st.target ~= target then
    local cut = st.rate and st.target and st.rate < st.target
    st.rate = cut and math.min(st.rate, target) or target
    st.target = target
  end
  mend(st, target, now)
  recover(st, now)
  local start = now
  if st.tat and st.tat > now then start = st.tat end
  -- Too late for this caller: it will not start, so the slot is not taken.
  if start - now > max_wait then return start - now, start, false end
  -- A low-priority caller takes only a slot that is free now: it never queues ahead of a
  -- high one (it looks again at `start`).
  if low and start - now > LOW_SLACK then return start - now, start, false end
  st.tat = start + (1 + GUARD) / st.rate
  return start - now, start, true
end

local function throttle(st, started_at, now, target)
  -- A start at the cut's own instant counts as before it: ngx.now() has milliseconds, so a
  -- request reserved just before the cut often carries the cut's time.
  if st.cut_at and started_at <= st.cut_at then return false end
  st.target = st.target or target
  if not st.target then return false end
  st.rate = st.rate or st.target
  recover(st, now)
  st.rate = math.max(math.min(MIN_RATE, st.target), st.rate / 2)
  st.cut_at, st.last_step = now, now
  return true
end
]]
ALGO = ALGO:format(M.GUARD, M.MIN_RATE, M.MAX_WAIT)

local algo = assert((loadstring or load)(ALGO .. "\nreturn reserve, throttle", "=budget")) -- luacheck: ignore 113
local step_reserve, step_throttle = algo()

local function num(x)
  return x and string.format("%.17g", x) or ""
end

-- The state as stored: tat, rate, target, cut_at and last_step, comma-separated, empty for
-- nil. Read with one match, written with one concatenation (the memory store runs this per
-- request).
local function decode(s)
  if not s then return {} end
  if type(s) ~= "string" and type(s) ~= "number" then error("budget state is not a string", 0) end
  local tat, rate, target, cut_at, last_step = tostring(s):match("^([^,]*),?([^,]*),?([^,]*),?([^,]*),?([^,]*)")
  return { tat = tonumber(tat), rate = tonumber(rate), target = tonumber(target),
           cut_at = tonumber(cut_at), last_step = tonumber(last_step) }
end

local function encode(st)
  return num(st.tat) .. "," .. num(st.rate) .. "," .. num(st.target) .. "," .. num(st.cut_at) .. ","
    .. num(st.last_step)
end

local function ttl_for(st, now)
  return M.STATE_TTL + math.max(0, (st.tat or now) - now)
end

-- The Redis scripts: the state is a hash; KEYS[1] its key.
local LOAD = [[
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local h = redis.call('HMGET', KEYS[1], 'tat', 'rate', 'target', 'cut_at', 'last_step')
local st = { tat = tonumber(h[1]), rate = tonumber(h[2]), target = tonumber(h[3]),
             cut_at = tonumber(h[4]), last_step = tonumber(h[5]) }
local function save()
  local args = {}
  for _, f in ipairs({ 'tat', 'rate', 'target', 'cut_at', 'last_step' }) do
    if st[f] then args[#args + 1] = f; args[#args + 1] = string.format('%.17g', st[f]) end
  end
  redis.call('HSET', KEYS[1], unpack(args))
  local ttl = ]] .. M.STATE_TTL .. [[ + math.max(0, (st.tat or now) - now)
  redis.call('PEXPIRE', KEYS[1], math.ceil(ttl * 1000))
end
]]

M.RESERVE_SCRIPT = ALGO .. LOAD .. [[
local wait, start, taken = reserve(st, tonumber(ARGV[1]), now, tonumber(ARGV[2]), ARGV[3] == 'low')
save()
return { string.format('%.17g', wait), string.format('%.17g', start), string.format('%.17g', st.rate),
         taken and 1 or 0 }
]]

M.THROTTLE_SCRIPT = ALGO .. LOAD .. [[
local cut = throttle(st, tonumber(ARGV[1]), now, tonumber(ARGV[2]))
if cut then save() end
return { cut and 1 or 0, string.format('%.17g', st.rate or 0) }
]]

local function check_rate(rate, field)
  if type(rate) ~= "number" or rate ~= rate or rate <= 0 or rate == math.huge then
    return nil, errors.new("invalid_argument", field .. " must be a positive number", { field = field })
  end
  return true
end

--- Reserve the next start for `key` at `rate` starts per second, if it comes within
-- `max_wait` seconds.
-- @tparam table store a `wxpay.store` (usually a scope: `s:scope(mchid)`)
-- @tparam string key the budget's key (e.g. `"qps:POST /v3/refund/domestic/refunds"`)
-- @tparam number rate the configured qps
-- @tparam[opt] number now the caller's clock (default `store:now()`; Redis uses `TIME`)
-- @tparam[opt] number max_wait the longest wait the caller can afford (default and at most
--   `MAX_WAIT`)
-- @tparam[opt] boolean low a low-priority caller: takes the next start only if it is free now
--   (`wxpay.fleet.priority`); else nothing is reserved and the first result says when to look
--   again
-- @treturn number|nil seconds to wait before starting (0: now); more than `max_wait` when
--   refused (nothing reserved: do not start). Or nil, err (store down: nothing reserved,
--   fall back to a local limiter)
-- @treturn number the reserved start, on the store's clock (pass it to `throttle`)
-- @treturn number the shared rate now in force
-- @treturn boolean whether the start was taken (false when refused: too late, or `low` and
--   not free now)
function M.reserve(store, key, rate, now, max_wait, low)
  local ok, err = check_rate(rate, "qps")
  if not ok then return nil, err end
  if type(max_wait) ~= "number" or max_wait ~= max_wait or max_wait > M.MAX_WAIT then
    max_wait = M.MAX_WAIT
  end
  max_wait = math.max(0, max_wait)
  if store:scripted() then
    -- The store's answer is waited for no longer than the call could wait for its start
    -- (but 50 ms at least: a call with nothing left is still answered, not counted an outage).
    local r, e = store:eval(M.RESERVE_SCRIPT, { key },
      { string.format("%.17g", rate), string.format("%.17g", max_wait), low and "low" or "high" },
      math.max(0.05, max_wait))
    if type(r) ~= "table" then return nil, e or unavailable("reserve: bad script answer") end
    return tonumber(r[1]), tonumber(r[2]), tonumber(r[3]), tonumber(r[4]) == 1
  end
  now = now or store:now()
  return store:update(key, function(old)
    local st = decode(old)
    local wait, start, taken = step_reserve(st, rate, now, max_wait, low)
    return encode(st), ttl_for(st, now), wait, start, st.rate, taken
  end)
end

--- A 429 came for a request that started at `started_at`: halve the shared rate, unless the
-- request started before the last cut (its 429 was already answered by that cut).
-- @tparam table store
-- @tparam string key
-- @tparam number started_at the second result of `reserve` for that request
-- @tparam[opt] number now the caller's clock (default `store:now()`; Redis uses `TIME`)
-- @tparam[opt] number rate the target to cut from when the key has no state yet
-- @treturn boolean|nil whether the rate was cut, or nil, err
-- @treturn number the shared rate now in force (nil when the key has no state)
function M.throttle(store, key, started_at, now, rate)
  if type(started_at) ~= "number" then
    return nil, errors.new("invalid_argument", "started_at must be a number", { field = "started_at" })
  end
  if rate ~= nil then
    local ok, err = check_rate(rate, "qps")
    if not ok then return nil, err end
  end
  if store:scripted() then
    local r, e = store:eval(M.THROTTLE_SCRIPT, { key },
      { string.format("%.17g", started_at), rate and string.format("%.17g", rate) or "" })
    if type(r) ~= "table" then return nil, e or unavailable("throttle: bad script answer") end
    return tonumber(r[1]) == 1, tonumber(r[2])
  end
  now = now or store:now()
  return store:update(key, function(old)
    local st = decode(old)
    local cut = step_throttle(st, started_at, now, rate)
    if not cut then return nil, nil, false, st.rate end
    return encode(st), ttl_for(st, now), true, st.rate
  end)
end

return M
