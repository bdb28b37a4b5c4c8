--- `client.concurrent` under OpenResty: every task on its own light thread
-- (`ngx.thread.spawn`), at most `concurrency` at once, starts spaced by the same limiter as
-- in plain Lua (a 429 answer halves the rate). Same results and summary shape as
-- `wxpay.concurrent`, which picks this runner in phases with cosockets.
-- @module wxpay.transport.ngx_threads

local concurrent = require("wxpay.concurrent")

local M = {}

local unpack = table.unpack or unpack -- luacheck: ignore 143

local batch_of = setmetatable({}, { __mode = "k" }) -- light thread -> its batch

local function now()
  local ngx = rawget(_G, "ngx")
  ngx.update_time() -- ngx.now() is cached per event-loop turn
  return ngx.now()
end

--- Wrap the client's transport so a batch hears of the answers its light threads receive
-- (to count them and to slow down on a 429).
-- @tparam table base the client's transport
-- @treturn table a transport with `base`'s functions
function M.observe(base)
  local function request(req)
    local resp, err = base.request(req)
    local batch = resp and batch_of[coroutine.running()]
    if batch then batch.answered(resp.status) end
    return resp, err
  end
  return setmetatable({ request = request, close = base.close, stats = base.stats,
    multi = base.multi, pace = base.pace }, { __tostring = function() return tostring(base) end })
end

local function new_batch(tasks, opts)
  local batch = { tasks = tasks, n = #tasks, concurrency = opts.concurrency, results = {},
    limiter = concurrent.new_limiter(opts.qps), t0 = now(), requests = 0,
    threads = {}, running = 0, max_in_flight = 0, next_task = 1 }
  function batch.answered(status)
    batch.requests = batch.requests + 1
    if status == 429 then batch.limiter:throttle(now(), batch.t0) end
  end
  return batch
end

local function run_one(batch, i)
  batch_of[coroutine.running()] = batch
  batch.results[i] = concurrent.run_task(batch.tasks[i])
  return i
end

local function start_next(batch)
  local i = batch.next_task
  batch.limiter:start(now())
  batch.threads[i] = rawget(_G, "ngx").thread.spawn(run_one, batch, i)
  batch.running = batch.running + 1
  batch.max_in_flight = math.max(batch.max_in_flight, batch.running)
  batch.next_task = i + 1
end

local function wait_one(batch)
  local list = {}
  for _, th in pairs(batch.threads) do list[#list + 1] = th end
  local ok, i = rawget(_G, "ngx").thread.wait(unpack(list))
  if not ok then error(i, 0) end
  batch.threads[i], batch.running = nil, batch.running - 1
end

--- Run a batch on light threads (call it where cosockets work).
-- @tparam table tasks array of functions
-- @tparam table opts `concurrency`, `qps` (checked by wxpay.concurrent)
-- @treturn table results, `results[i]` packed like `table.pack` (`{ n = 2, nil, err }` when task i raised)
-- @treturn table summary `{ elapsed, requests, throttled, rate_cuts, min_rate, max_in_flight }`;
--   `requests` counts the answers the tasks received
function M.run(tasks, opts)
  local b = new_batch(tasks, opts)
  while b.next_task <= b.n or b.running > 0 do
    local delay = b.next_task <= b.n and b.limiter:wait(now()) or 0
    if b.next_task <= b.n and b.running < b.concurrency and delay == 0 then
      start_next(b)
    elseif b.running > 0 and (b.running >= b.concurrency or b.next_task > b.n) then
      wait_one(b)
    else
      rawget(_G, "ngx").sleep(delay) -- rate-limited; running threads carry on meanwhile
    end
  end
  local limiter = b.limiter
  return b.results, { elapsed = now() - b.t0, requests = b.requests, throttled = limiter.throttled,
    rate_cuts = limiter.cuts, min_rate = limiter.min_rate, max_in_flight = b.max_in_flight }
end

return M
