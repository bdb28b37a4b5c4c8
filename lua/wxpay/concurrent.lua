--- `client.concurrent(tasks, opts)`: many client calls at once, in one thread.
--
--     local results, summary = client.concurrent(tasks, { concurrency = 16, qps = 50 })
--
-- Each task is a function making ordinary client calls. In plain Lua every task runs as a
-- coroutine; when its call reaches a transport with `multi` (libcurl's) the coroutine yields
-- the request to the scheduler here, which drives that multi handle (`core.http_multi`, waiting
-- in poll(2), never spinning) and resumes the task with the answer. Backoff sleeps between
-- retries yield the same way, so one task's retry does not hold up the others.
--
-- * `results[i]` holds task i's return values as `table.pack` would; a task that raised
--   gives `{ n = 2, nil, err }`. Results are in the order of `tasks`.
-- * `concurrency` (default 16): at most that many tasks run at once, so at most that many
--   requests are in flight. `priority` ("low" by default, or "high"): on a shared budget
--   (config `qps` with a `store`) the tasks' calls yield to ordinary ones (wxpay.fleet.priority).
-- * `qps` (default none): requests start evenly spaced, never more than `qps` in any
--   one-second window (so in any calendar second): a bucket with no burst, spaced 1 % wider
--   than 1/qps so that jitter between our clock and the server's cannot push a 101st start
--   into a second.
-- * A 429 anywhere in the batch halves the rate for the whole batch (without `qps`: half the
--   rate of the last second); the rate then climbs back by a tenth of the limit each second
--   without a 429 (additive increase, multiplicative decrease, as TCP does). A 429 on a
--   request that started before the last cut does not cut again.
-- * A task's calls on another client, or from a coroutine of its own, run blocking.
--   Batches do not nest: `client.concurrent` inside a task raises, and so does
--   `client.close()` (the batch still uses the connections): that task gets the error, the
--   others their results.
-- * A batch that raises from outside its tasks (an interrupt, a memory error) cancels its
--   transfers first, so later batches on the same client never see them.
-- * Under OpenResty the same call runs the tasks on light threads
--   (`wxpay.transport.ngx_threads`) where cosockets work, with the same result shape and the
--   same qps rules (`M.new_limiter`); elsewhere (init_worker, ...) one after another.
--
-- * `on_progress(done, total, summary)` (optional) is called after each task ends (an error
--   too), with the tasks ended so far, `#tasks` and the summary so far: cheap enough to call
--   every time; an error it raises ends the batch.
-- * `on_send(i)` (optional) is called just before a request of task i leaves, after its `qps`
--   slot (each attempt); under OpenResty when task i starts, after its slot. `false` from
--   it holds the request (or the task) back: see `transport.not_sent`.
--
-- The second result, `summary`, is `{ elapsed, requests, throttled, rate_cuts, min_rate,
-- max_in_flight }` (seconds; requests started through the multi interface; 429 answers;
-- times the rate was cut; the lowest rate used, nil when never limited).
-- @module wxpay.concurrent

local core = require("wxpay.core")
local transport = require("wxpay.transport")

local M = {}

local unpack = table.unpack or unpack -- luacheck: ignore 143
local TOKEN = {} -- marks the scheduler's own yields, so a task's plain yield stays its own
local GUARD = 0.02      -- starts are spaced (1 + GUARD) / rate apart
local TOLERANCE = 0.005 -- a start may come this early, to catch up after a late one
local MIN_RATE = 0.5    -- a cut never goes below one start every two seconds

local function pack(...) return { n = select("#", ...), ... } end

-- Rate limiter: a generic cell rate algorithm (GCRA) with AIMD on 429

local Limiter = {}
Limiter.__index = Limiter

--- A start-rate limiter.
-- With spacing T = (1 + GUARD) / rate and tolerance τ < GUARD seconds, any one-second window
-- holds at most floor((1 + τ) / T) + 1 <= rate starts.
-- @tparam number|nil qps nil: unlimited until a 429
-- @treturn table limiter with `wait(now)`, `start(now)`, `throttle(now, started_at)`
function M.new_limiter(qps)
  return setmetatable({ ceiling = qps, rate = qps, min_rate = qps, recent = {}, rfirst = 1,
                        throttled = 0, cuts = 0 }, Limiter)
end

-- Climb back towards the target by a tenth of it per second since the last step.
function Limiter:recover(now)
  if not self.target then return end
  while self.rate < self.target and now - self.last_step >= 1 do
    self.rate = math.min(self.target, self.rate + self.target / 10)
    self.last_step = self.last_step + 1
  end
  if self.rate >= self.target then
    self.target = nil
    if not self.ceiling then self.rate, self.tat = nil, nil end -- unlimited again
  end
end

--- Seconds until the next request may start (0: now).
function Limiter:wait(now)
  self:recover(now)
  if not self.rate or not self.tat then return 0 end
  local d = self.tat - TOLERANCE - now
  return d > 0 and d or 0
end

--- Record a start at `now`.
function Limiter:start(now)
  if self.rate then
    local tat = self.tat or now
    self.tat = (tat > now and tat or now) + (1 + GUARD) / self.rate
  end
  local recent = self.recent
  recent[#recent + 1] = now
  while recent[self.rfirst] and now - recent[self.rfirst] > 1 do
    recent[self.rfirst] = nil
    self.rfirst = self.rfirst + 1
  end
end

--- A 429 arrived for a request started at `started_at`: halve the rate (once per cut).
-- @treturn boolean whether the rate was cut
function Limiter:throttle(now, started_at)
  self.throttled = self.throttled + 1
  if self.cut_at and started_at < self.cut_at then return false end
  local current = self.rate
  if not current then
    current = 0
    for i = self.rfirst, #self.recent do
      if now - self.recent[i] <= 1 then current = current + 1 end
    end
    current = math.max(current, 1)
  end
  self.target = self.target or self.ceiling or current
  self.rate = math.max(math.min(MIN_RATE, self.target), current / 2)
  self.min_rate = math.min(self.min_rate or self.rate, self.rate)
  self.cut_at, self.last_step = now, now
  self.cuts = self.cuts + 1
  return true
end

-- Arguments

--- Check `tasks` and `opts` (raises on misuse, like a wrong argument type).
-- @return n, concurrency, qps
function M.check_args(tasks, opts)
  if type(tasks) ~= "table" then
    error("bad argument #1 to 'concurrent' (table of functions expected, got " .. type(tasks) .. ")", 3)
  end
  local n = #tasks
  for i = 1, n do
    if type(tasks[i]) ~= "function" then
      error("bad argument #1 to 'concurrent' (tasks[" .. i .. "] is a " .. type(tasks[i]) .. ", not a function)", 3)
    end
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #2 to 'concurrent' (table expected, got " .. type(opts) .. ")", 3)
  end
  opts = opts or {}
  local c, qps = opts.concurrency or 16, opts.qps
  if type(c) ~= "number" or c < 1 or math.floor(c) ~= c or c > 10000 then
    error("bad argument #2 to 'concurrent' (concurrency must be an integer 1..10000)", 3)
  end
  if qps ~= nil and (type(qps) ~= "number" or qps ~= qps or qps <= 0 or qps == math.huge) then
    error("bad argument #2 to 'concurrent' (qps must be a positive number)", 3)
  end
  for _, name in ipairs{ "on_progress", "on_send" } do
    if opts[name] ~= nil and type(opts[name]) ~= "function" then
      error("bad argument #2 to 'concurrent' (" .. name .. " must be a function)", 3)
    end
  end
  return n, c, qps, opts.on_progress, opts.on_send
end

-- The scheduler (plain Lua: coroutines over the multi interface)

local Scheduler = {}
Scheduler.__index = Scheduler

--- Called by the transport inside a task: yield the request, get `resp` or `nil, err`.
function Scheduler.http(_, req)
  return coroutine.yield(TOKEN, "http", req)
end

--- Called by the client's sleep inside a task: yield for `seconds`.
function Scheduler.sleep(_, seconds)
  return coroutine.yield(TOKEN, "sleep", seconds)
end

local function queue() return { first = 1, last = 0 } end -- a FIFO queue
local function push(q, v)
  q.last = q.last + 1
  q[q.last] = v
end
local function shift(q)
  if q.first > q.last then return nil end
  local v = q[q.first]
  q[q.first] = nil
  q.first = q.first + 1
  return v
end
local function peek(q) return q[q.first] end

-- One batch: its tasks, queues, transfers in flight and counters. `ctx` is the client's:
-- `owner` (weak map coroutine -> scheduler), `transport` (with `multi(n)`).
local Batch = {}
Batch.__index = Batch

local function new_batch(ctx, tasks, n, concurrency, qps, on_progress, on_send)
  return setmetatable({ ctx = ctx, tasks = tasks, n = n, concurrency = concurrency, on_progress = on_progress,
    on_send = on_send,
    t0 = core.monotonic(), ended = 0,
    limiter = M.new_limiter(qps), sched = setmetatable({}, Scheduler), results = {},
    runnable = queue(), waiting = queue(), sleepers = {}, inflight = {}, ninflight = 0,
    max_in_flight = 0, started = 0, next_task = 1, alive = 0 }, Batch)
end

-- Resume a task and file it by what it yielded: an answer to wait for, a sleep, its end.
function Batch:resume(task, args)
  local r = pack(coroutine.resume(task.co, unpack(args or {}, 1, args and args.n or 0)))
  if coroutine.status(task.co) == "dead" then
    self.ctx.owner[task.co] = nil
    self.alive = self.alive - 1
    if r[1] then
      local out = { n = r.n - 1 }
      for k = 2, r.n do out[k - 1] = r[k] end
      self.results[task.i] = out
    else
      self.results[task.i] = { n = 2, nil, r[2] }
    end
    self.ended = self.ended + 1
    if self.on_progress then self.on_progress(self.ended, self.n, self:summary()) end
  elseif r[2] == TOKEN and r[3] == "http" then
    push(self.waiting, { task = task, req = r[4] })
  elseif r[2] == TOKEN and r[3] == "sleep" then
    self.sleepers[#self.sleepers + 1] = { wake = core.monotonic() + (tonumber(r[4]) or 0), task = task }
  else
    push(self.runnable, { task = task }) -- a yield of the task's own: let the others run first
  end
end

-- New tasks up to the concurrency limit.
function Batch:spawn()
  while self.alive < self.concurrency and self.next_task <= self.n do
    local co = coroutine.create(self.tasks[self.next_task])
    self.ctx.owner[co] = self.sched
    push(self.runnable, { task = { i = self.next_task, co = co } })
    self.next_task, self.alive = self.next_task + 1, self.alive + 1
  end
end

-- libcurl's multi interface itself failed (`multi:perform` returned nil, err): no transfer
-- in flight can complete, so each ends with that error and the handle is emptied.
function Batch:fail_inflight(perr)
  local err = transport.from_core(perr)
  pcall(self.multi.cancel_all, self.multi)
  for id, f in pairs(self.inflight) do
    self.inflight[id] = nil
    push(self.runnable, { task = f.task, args = pack(nil, err) })
  end
  self.ninflight = 0
end

-- Completed transfers: their tasks become runnable with the answer. A transfer this batch
-- did not start (one left by a batch that died mid-way) has no task: its answer is dropped.
function Batch:finished(done, perr)
  if not done then return self:fail_inflight(perr) end
  for _, d in ipairs(done) do
    local f = self.inflight[d.id]
    if f then
      self.inflight[d.id] = nil
      self.ninflight = self.ninflight - 1
      if d.resp and d.resp.status == 429 then self.limiter:throttle(core.monotonic(), f.started) end
      local err = d.err and transport.from_core(d.err)
      push(self.runnable, { task = f.task, args = pack(d.resp, err) })
    end
  end
end

-- Start what the limiter allows at once, so the server works while we sign the next
-- requests (otherwise client and server would take turns).
function Batch:start_waiting(now)
  if not (peek(self.waiting) and self.limiter:wait(now) <= 0) then return end
  while peek(self.waiting) and self.limiter:wait(now) <= 0 do
    local w = shift(self.waiting)
    self.multi = self.multi or self.ctx.transport.multi(self.concurrency)
    local held = self.on_send and self.on_send(w.task.i) == false
    local ok, id, aerr = true, nil, nil
    if not held then ok, id, aerr = pcall(self.multi.add, self.multi, w.req) end
    if ok and id then
      self.inflight[id] = { task = w.task, started = now }
      self.ninflight, self.started = self.ninflight + 1, self.started + 1
      if self.ninflight > self.max_in_flight then self.max_in_flight = self.ninflight end
      self.limiter:start(now)
    else
      push(self.runnable, { task = w.task, args = pack(nil, held and transport.not_sent()
        or transport.error("network", tostring(ok and aerr or id), false)) })
    end
  end
  if self.ninflight > 0 then self:finished(self.multi:perform(0)) end
end

-- Nothing runnable: wait for a transfer, a sleeper's wake-up or the limiter, whichever
-- comes first, then wake the sleepers that are due.
function Batch:idle(now)
  local wait = math.huge
  for _, s in ipairs(self.sleepers) do
    if s.wake - now < wait then wait = s.wake - now end
  end
  if peek(self.waiting) then wait = math.min(wait, self.limiter:wait(now)) end
  if wait < 0 then wait = 0 end
  if self.ninflight > 0 then
    self:finished(self.multi:perform(math.min(wait, 1)))
  elseif wait < math.huge then
    core.sleep(wait)
  else
    error("wxpay.concurrent: no task can make progress (scheduler bug)")
  end
  now = core.monotonic()
  local keep = {}
  for _, s in ipairs(self.sleepers) do
    if s.wake <= now then push(self.runnable, { task = s.task }) else keep[#keep + 1] = s end
  end
  self.sleepers = keep
end

function Batch:run()
  while true do
    self:spawn()
    local item = shift(self.runnable)
    if item then self:resume(item.task, item.args) end
    local now = core.monotonic()
    self:start_waiting(now)
    if not item and not peek(self.runnable) then
      if self.alive == 0 and self.next_task > self.n then return end
      self:idle(now)
    end
  end
end

-- The summary so far (the second result of `client.concurrent`).
function Batch:summary()
  local limiter = self.limiter
  return { elapsed = core.monotonic() - self.t0, requests = self.started, throttled = limiter.throttled,
    rate_cuts = limiter.cuts, min_rate = limiter.min_rate, max_in_flight = self.max_in_flight }
end

-- Run the batch. However the loop ends (an error from outside the tasks too: an interrupt,
-- a memory error), this batch's transfers leave the multi handle the next batches share.
local function schedule(ctx, tasks, n, concurrency, qps, on_progress, on_send)
  local b = new_batch(ctx, tasks, n, concurrency, qps, on_progress, on_send)
  local ok, err = pcall(b.run, b)
  if b.multi then pcall(b.multi.cancel_all, b.multi) end
  if not ok then error(err, 0) end
  return b.results, b:summary()
end

--- Run one task to completion: its results packed as `table.pack` would, or
-- `{ n = 2, nil, err }` when it raised. The result contract of every scheduler.
function M.run_task(task)
  local r = pack(pcall(task))
  if not r[1] then return { n = 2, nil, r[2] } end
  local out = { n = r.n - 1 }
  for k = 2, r.n do out[k - 1] = r[k] end
  return out
end

-- Light threads give their summary only at the end: each task reports the count and time.
local function counted(tasks, n, on_progress, on_send)
  if not (on_progress or on_send) then return tasks end
  local t0, ended, out = core.monotonic(), 0, {}
  for i = 1, n do
    out[i] = function()
      local r = (on_send and on_send(i) == false) and { n = 2, nil, transport.not_sent() } or M.run_task(tasks[i])
      ended = ended + 1
      if on_progress then on_progress(ended, n, { elapsed = core.monotonic() - t0 }) end
      if r[1] == nil and r.n == 2 then error(r[2], 0) end
      return unpack(r, 1, r.n)
    end
  end
  return out
end

-- Under OpenResty: light threads where cosockets work, else one task after another.
local function openresty(ctx, tasks, n, concurrency, qps, on_progress, on_send)
  if require("wxpay.transport.ngx").cosockets_available() then
    return require("wxpay.transport.ngx_threads").run(counted(tasks, n, on_progress, on_send),
      { concurrency = concurrency, qps = qps })
  end
  return require("wxpay.concurrent_sequential").run(M, ctx, tasks, n, qps, on_progress, on_send)
end

--- Hook `client.concurrent` into a client. Called once by `wxpay.client.new`.
-- A transport with `multi(n)` is wrapped so requests made by tasks go through the
-- scheduler; under OpenResty the transport is wrapped so light-thread batches see their
-- answers. The default sleep is wrapped so backoff inside a task yields; a `sleep` given in
-- the config is left alone (it is the caller's to make non-blocking).
-- @tparam table st the client's private state (`transport`, `sleep`)
-- @tparam table config the client's configuration
-- @treturn function `concurrent(tasks, opts)`
function M.attach(st, config)
  local ctx = { owner = setmetatable({}, { __mode = "k" }) }
  local function current()
    local co = coroutine.running()
    return co and ctx.owner[co] or nil
  end
  if st.transport.multi then
    ctx.transport = require("wxpay.transport.multi").new{ base = st.transport, current = current,
      busy = function() return ctx.busy end }
    st.transport = ctx.transport
  end
  if rawget(_G, "ngx") then st.transport = require("wxpay.transport.ngx_threads").observe(st.transport) end
  local base_sleep = st.sleep
  ctx.sleep = base_sleep
  if config.sleep == nil then
    st.sleep = function(seconds)
      local sched = current()
      if sched then return sched:sleep(seconds) end
      return base_sleep(seconds)
    end
  end

  --- Run `tasks` (functions making client calls) concurrently; see the module doc.
  -- @tparam table tasks array of functions
  -- @tparam[opt] table opts `concurrency` (16), `qps` (none), `on_progress`, `on_send`
  -- @treturn table results, `results[i]` packed like `table.pack`
  -- @treturn table summary
  return function(tasks, opts)
    local n, concurrency, qps, on_progress, on_send = M.check_args(tasks, opts)
    local priority = require("wxpay.fleet.priority")
    tasks = priority.wrap(tasks, priority.check(opts and opts.priority))
    if current() or ctx.busy then error("client.concurrent: batches do not nest", 2) end
    if rawget(_G, "ngx") then return openresty(ctx, tasks, n, concurrency, qps, on_progress, on_send) end
    if not ctx.transport then
      -- A transport without multi answers synchronously: coroutines still give ordering and sleeps.
      ctx.transport = { multi = function() error("wxpay.concurrent: the client's transport has no multi") end }
    end
    ctx.busy = true
    local ok, results, summary = pcall(schedule, ctx, tasks, n, concurrency, qps, on_progress, on_send)
    ctx.busy = false
    if not ok then error(results, 0) end
    return results, summary
  end
end

return M
