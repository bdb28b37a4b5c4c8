--- `client.concurrent` without a scheduler (OpenResty outside cosocket phases, e.g.
-- init_worker): one task after another, still within `qps`, sleeping with the client's own
-- (non-blocking there) sleep. Internal to wxpay.concurrent.
-- @module wxpay.concurrent_sequential

local core = require("wxpay.core")

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
    if on_send then on_send(i) end
    results[i] = scheduler.run_task(tasks[i])
    if on_progress then on_progress(i, n, summary()) end
  end
  return results, summary()
end

return M
