--- One merchant, many workers and hosts: the client's side of the shared store (the config
-- keys `store` and `qps`, docs/fleet.md). Three things are shared, under the merchant's
-- scope (`wxpay:<mchid>:`):
--
-- * the platform certificates (`wxpay.fleet.certs`: one download for everyone);
-- * the rate budget: before each transmission a start is reserved from `qps:<pattern>`
--   (`wxpay.store.budget`) and a 429 halves that shared rate;
-- * the failover preference: `prefer_backup` holds the end of the backup's cool-down.
--
-- A store that fails is skipped for a second (so a dead Redis costs one refused connect a
-- second, not one a request) and the client works alone meanwhile: its own download, a local
-- `concurrent.new_limiter`, its own failover. One warning per outage.
-- @module wxpay.fleet

local budget = require("wxpay.store.budget")
local members = require("wxpay.fleet.members")
local priority = require("wxpay.fleet.priority")
local errors = require("wxpay.errors")
local redact = require("wxpay.redact")
local store_mod = require("wxpay.store")

local M = {}

local RETRY_STORE = 1   -- seconds a failed store is left alone
local PREFER_CACHE = 1  -- seconds a read of the failover preference is reused

local function config_error(field, message)
  return nil, errors.config(field, message)
end

local function positive(v)
  return type(v) == "number" and v == v and v > 0 and v ~= math.huge
end

-- `qps`: a number (one budget for every request), or a table of `METHOD /path` patterns
-- (exact, or ending in `*`: a prefix) with an optional `default`.
local function check_qps(qps)
  if qps == nil then return true end
  if type(qps) == "number" then
    if not positive(qps) then return config_error("qps", "must be a positive number of starts a second") end
    return { all = qps }
  end
  if type(qps) ~= "table" then return config_error("qps", "must be a number or a table of patterns") end
  local out = { exact = {}, prefixes = {} }
  for k, v in pairs(qps) do
    local field = "qps." .. tostring(k)
    if type(k) ~= "string" then return config_error("qps", "pattern keys must be strings") end
    if not positive(v) then return config_error(field, "must be a positive number of starts a second") end
    if k == "default" then
      out.default = v
    elseif not k:match("^%u+ /%S*$") then
      return config_error(field, 'patterns are "METHOD /path" (a trailing * matches any rest)')
    elseif k:sub(-1) == "*" then
      out.prefixes[#out.prefixes + 1] = { prefix = k:sub(1, -2), rate = v, key = "qps:" .. k }
    else
      out.exact[k] = v
    end
  end
  -- The longest prefix decides, so `GET /v3/a/*` wins over `GET /v3/*`.
  table.sort(out.prefixes, function(a, b) return #a.prefix > #b.prefix end)
  return out
end

--- Check the config keys `store` and `qps` and, when either is given, open the store into
-- `st.fleet`. Without both, nothing changes (`st.fleet` stays nil).
-- @tparam table config
-- @tparam table st the client's state being built (`mchid`, hooks)
-- @return true, or nil and a `config` error naming the field
function M.check(config, st)
  local qps, err = check_qps(config.qps)
  if not qps then return nil, err end
  local fallback = config.fallback_qps
  if fallback ~= nil and not positive(fallback) then
    return config_error("fallback_qps", "must be a positive number of starts a second")
  end
  if config.store == nil and config.qps == nil then return true end
  local s
  s, err = store_mod.open(config.store, {
    clock = function() return st.monotonic() end,
    sleep = function(seconds) return st.sleep(seconds) end,
  })
  if not s then return nil, err end
  local scoped
  scoped, err = s:scope(st.mchid)
  if not scoped then return config_error("mchid", tostring(err)) end
  st.fleet = { store = scoped, kind = s.kind, shared = config.store ~= nil,
    qps = config.qps ~= nil and qps or nil, limiters = {}, fallback_qps = fallback, queued_until = {} }
  return true
end

--- Whether the shared store is to be used now (not down within the last second).
-- @tparam table st
-- @treturn boolean
function M.usable(st)
  local f = st.fleet
  return f ~= nil and not (f.down_until and st.monotonic() < f.down_until)
end

--- A store operation failed: work alone for a second, and warn once per outage.
-- @tparam table st
-- @tparam string what the operation (`certificates`, `budget`, `failover`)
-- @param err the store's error
function M.failed(st, what, err)
  local f = st.fleet
  f.down_until = st.monotonic() + RETRY_STORE
  if f.warned then return end
  f.warned = true
  local message = "wxpay store unavailable: working without it (own certificate download, "
    .. "local rate limit) until it answers again"
  redact.log(st, "warn", message, { store = f.kind, operation = what, error = tostring(err) })
  local ngx = rawget(_G, "ngx")
  if ngx and ngx.log then pcall(ngx.log, ngx.WARN, message, ": ", tostring(err)) end
end

--- A store operation worked: the next outage is warned about again.
function M.worked(st)
  st.fleet.warned, st.fleet.down_until = nil, nil
end

---------------------------------------------------------------------------------------------
-- The rate budget
---------------------------------------------------------------------------------------------

-- The budget's key and rate for a request, or nil when it has none.
local function budget_for(q, method, target)
  if q.all then return "qps", q.all end
  local path = target:match("^[^?]*")
  local name = method .. " " .. path
  local exact = q.exact[name]
  if exact then return "qps:" .. name, exact end
  for _, p in ipairs(q.prefixes) do
    if name:sub(1, #p.prefix) == p.prefix then return p.key, p.rate end
  end
  if q.default then return "qps:default", q.default end
end
M.budget_for = budget_for

-- The error for a start that would come later than the call can wait: nothing was sent.
local function exhausted(wait, max_wait)
  return nil, { kind = "timeout", connected = false, message = string.format(
    "request not sent: the rate budget (qps) is exhausted: the next start is %.3f s away, "
    .. "the call has %.3f s left", wait, max_wait) }
end

-- Pace on this client's own limiter (the store is down) at its fair share of `rate`
-- (`wxpay.fleet.members`). Its first start comes after the starts this client had already
-- reserved from the store (they still happen: not doubled). Loops: another coroutine may
-- take the slot while this one sleeps.
local function local_start(st, key, rate, max_wait)
  local f = st.fleet
  local lim = f.limiters[key]
  local share = st.fleet.qps and members.fallback_rate(st, rate) or rate
  if not lim or lim.ceiling ~= share then
    lim = require("wxpay.concurrent").new_limiter(share)
    f.limiters[key] = lim
    -- Spaced from this client's last start through the store, still queued or not.
    local queued = f.queued_until[key]
    if queued then lim:start(queued) end
  end
  local give_up = st.monotonic() + max_wait
  for _ = 1, 1000 do
    local wait = lim:wait(st.monotonic())
    if wait <= 0 then break end
    local left = give_up - st.monotonic()
    if wait > left then return exhausted(wait, math.max(0, left)) end
    st.sleep(wait)
  end
  local now = st.monotonic()
  lim:start(now)
  return now
end

-- Reserve a start through the store and sleep until it. A low-priority call (a batch task,
-- `wxpay.fleet.priority`) takes only a start that is free now, looking again when the next
-- one is, until it has no time left. Returns true (the call goes on), false, err (it fails:
-- nothing sent), or nothing when the store failed (the caller paces alone).
local function shared_start(st, r, key, rate, max_wait)
  local f = st.fleet
  local low = priority.low()
  local give_up = st.monotonic() + max_wait
  for _ = 1, 100000 do
    local left = math.max(0, give_up - st.monotonic())
    local wait, start, _, taken = budget.reserve(f.store, key, rate, nil, left, low)
    if not wait then M.failed(st, "budget", start); return end
    M.worked(st)
    if wait > left then return false, select(2, exhausted(wait, left)) end
    if taken ~= false then
      f.queued_until[key] = math.max(f.queued_until[key] or 0, st.monotonic() + wait)
      members.seen(st)
      if wait > 0 then st.sleep(wait) end
      r.budget = { key = key, rate = rate, start = start }
      return true
    end
    st.sleep(math.max(wait, 0.001)) -- low: the next start is not free yet
  end
  return false, select(2, exhausted(0, 0))
end

--- Before one transmission: reserve its start from the shared budget and sleep until then
-- (the `sleep` hook: it yields under OpenResty and inside `client.concurrent`). A start
-- further away than `max_wait` is not waited for: the reservation is refused (its slot
-- stays free) and this returns a `timeout` error with `connected = false`. Records
-- `r.budget` for `answered`.
-- @tparam table st
-- @tparam table r the request (`method`, `target`)
-- @tparam number max_wait seconds the call can wait (its deadline's time left, else the
--   attempt's timeout; `wxpay.store.budget.MAX_WAIT` at most)
-- @return true, or nil and the error to report (nothing was sent)
function M.before_send(st, r, max_wait)
  local f = st.fleet
  r.budget = nil
  if not f or not f.qps then return true end
  local key, rate = budget_for(f.qps, r.method, r.target)
  if not key then return true end
  max_wait = math.max(0, math.min(max_wait or budget.MAX_WAIT, budget.MAX_WAIT))
  if M.usable(st) then
    local done, err = shared_start(st, r, key, rate, max_wait)
    if done then return true end
    if done == false then return nil, err end
  end
  local start, err = local_start(st, key, rate, max_wait)
  if not start then return nil, err end
  r.budget = { key = key, rate = rate, start = start, alone = true }
  return true
end

--- After one transmission's answer: a 429 halves the budget it started under, for everyone.
-- @tparam table st
-- @tparam table r the request (its `r.budget` from `before_send`)
-- @tparam table resp the transport's answer
function M.answered(st, r, resp)
  local b = r.budget
  if not b or tonumber(resp.status) ~= 429 then return end
  if b.alone then
    local lim = st.fleet.limiters[b.key]
    if lim then lim:throttle(st.monotonic(), b.start) end
    return
  end
  local cut, err = budget.throttle(st.fleet.store, b.key, b.start, nil, b.rate)
  if cut == nil then M.failed(st, "budget", err) end
end

---------------------------------------------------------------------------------------------
-- Failover
---------------------------------------------------------------------------------------------

--- The end of the shared backup preference as a `monotonic` time, or nil. The store is read
-- at most once a second per client.
-- @tparam table st
-- @treturn number|nil
function M.prefer_backup_until(st)
  local f = st.fleet
  if not f or not f.shared or not st.backup_url then return nil end
  local now = st.monotonic()
  if f.prefer_read_at and now - f.prefer_read_at < PREFER_CACHE then return f.prefer_until end
  f.prefer_read_at, f.prefer_until = now, nil
  if not M.usable(st) then return nil end
  local v, err = f.store:get("prefer_backup")
  if v == nil and err then M.failed(st, "failover", err); return nil end
  local left = tonumber(v or "") and tonumber(v) - st.now()
  if left and left > 0 then f.prefer_until = now + math.min(left, st.failover_cooldown) end
  return f.prefer_until
end

--- This client switched hosts: share it (`to_backup`: prefer the backup for the cool-down;
-- else the primary again).
-- @tparam table st
-- @tparam boolean to_backup
function M.switched(st, to_backup)
  local f = st.fleet
  if not f or not f.shared or not M.usable(st) then return end
  local ok, err
  if to_backup then
    local ttl = st.failover_cooldown
    if ttl <= 0 then return end
    ok, err = f.store:set("prefer_backup", string.format("%.3f", st.now() + ttl), ttl)
    f.prefer_until = st.monotonic() + ttl
  else
    ok, err = f.store:delete("prefer_backup")
    f.prefer_until = nil
  end
  f.prefer_read_at = st.monotonic()
  if not ok then M.failed(st, "failover", err) end
end

return M
