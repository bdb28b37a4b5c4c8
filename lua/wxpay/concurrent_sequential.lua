--- `client.concurrent` without a scheduler (OpenResty outside cosocket phases, e.g.
-- init_worker): one task after another, still within `qps`, sleeping with the client's own
-- (non-blocking there) sleep. Internal to wxpay.concurrent.
-- @module wxpay.concurrent_sequential

local core = require("wxpay.core")
local transport = require("wxpay.transport")

local M = {}

--- Run `tasks` (n of them) in order; `scheduler` is wxpay.concurrent (its limiter and task
-- runner). Returns the results and the summary, as the scheduler does.
function M.run(scheduler, ctx, tasks, n, qps, on_progress, on_send)
  local mono = core.monotonic
  local t0 = mono()
  local limiter = scheduler.new_limiter(qps)
  local results = {}
  local function summary() return { elapsed = mono() - t0, requests = 0, throttled = 0, rate_cuts = 0,
                                     min_rate = limiter.min_rate, max_in_flight = 1 } end
  for i = 1, n do
    local wait = limiter:wait(mono())
    if wait > 0 then ctx.sleep(wait) end
    limiter:start(mono())
    local held = on_send and on_send(i) == false -- the caller stopped: nothing more leaves
    results[i] = held and { n = 2, nil, transport.not_sent() } or scheduler.run_task(tasks[i])
    if on_progress then on_progress(i, n, summary()) end
  end
  return results, summary()
end

return M
