--- Call priorities on the shared rate budget: ordinary calls are `high`; the tasks of a
-- `client.concurrent` batch (and so the `wxpay campaign` runner) are `low` unless the batch
-- says `priority = "high"`. A low call takes a start only when one is free now (else it
-- looks again when the next one is): it never queues ahead, so a high call waits at most
-- about one spacing (`1/qps`) behind low ones, and low calls get what high ones leave. Every
-- start is still spaced by the one budget, so the fleet never exceeds `qps`.
-- @module wxpay.fleet.priority

local M = {}

local marked = setmetatable({}, { __mode = "k" }) -- coroutine -> "low" | "high"

--- Wrap a batch's tasks so that the calls each makes carry `priority`.
-- @tparam table tasks array of functions
-- @tparam string priority `"low"` or `"high"`
-- @treturn table the wrapped tasks
function M.wrap(tasks, priority)
  local out = {}
  for i = 1, #tasks do
    local task = tasks[i]
    out[i] = function(...)
      local co = coroutine.running()
      if co then marked[co] = priority end
      return task(...)
    end
  end
  return out
end

--- Whether the call running now is low priority.
-- @treturn boolean
function M.low()
  local co = coroutine.running()
  return co ~= nil and marked[co] == "low"
end

--- Check a batch's `priority` option.
-- @return the priority (`"low"` by default)
function M.check(p)
  if p == nil then return "low" end
  if p ~= "low" and p ~= "high" then
    error("bad argument #2 to 'concurrent' (priority must be \"low\" or \"high\")", 4)
  end
  return p
end

return M
