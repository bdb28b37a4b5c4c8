--- Fault injection for APIv3 requests.
-- Faults form a queue. Each API request takes at most one fault from each class, the
-- oldest entry of that class with a count left:
--   "pre"   500, 429, drop: answered instead of processing (a faulted build creates nothing);
--   "delay" delay: the request is processed, then the answer waits `seconds`;
--   "post"  tamper, unsigned, stale, probe: applied to the processed, signed answer.
-- So {500, count 1} then {429, count 1} fail two requests in turn, while {delay} and
-- {tamper} queued together hit the same request. An entry with `path` (and `method`) only
-- matches requests to that path (query ignored), so a fault can target one endpoint.
local M = {}

local CLASS = {
  ["500"] = "pre", ["429"] = "pre", drop = "pre", delay = "delay",
  tamper = "post", unsigned = "post", stale = "post", probe = "post",
}

local Faults = {}
Faults.__index = Faults

--- New empty fault queue.
function M.new()
  return setmetatable({ queue = {} }, Faults)
end

--- Queue a fault.
-- @tparam table spec `{ fault = "500"|"429"|"delay"|"tamper"|"unsigned"|"stale"|"probe"|"drop",
--   count = n (default 1), retry_after = s (429), seconds = s (delay),
--   path = "/v3/…" (optional), method = "POST" (optional) }`
-- @return the queued entry, or nil and an error message
function Faults:add(spec)
  if type(spec) ~= "table" then return nil, "body must be a JSON object" end
  local kind = spec.fault
  -- cjson gives numbers as floats on Lua 5.4: {"fault":500} must still mean "500".
  if type(kind) == "number" then kind = tostring(math.tointeger(kind)) end
  if not CLASS[kind] then return nil, "unknown fault: " .. tostring(spec.fault) end
  local count = spec.count == nil and 1 or math.tointeger(spec.count)
  if not count or count < 1 then return nil, "count must be a positive integer" end
  if spec.path ~= nil and (type(spec.path) ~= "string" or spec.path:sub(1, 1) ~= "/") then
    return nil, "path must start with /"
  end
  if spec.method ~= nil and type(spec.method) ~= "string" then return nil, "method must be a string" end
  local entry = { fault = kind, count = count, class = CLASS[kind], path = spec.path,
                  method = spec.method and spec.method:upper() }
  if kind == "delay" then
    entry.seconds = tonumber(spec.seconds)
    if not entry.seconds or entry.seconds < 0 then return nil, "delay needs seconds >= 0" end
  elseif kind == "429" and spec.retry_after ~= nil then
    entry.retry_after = math.tointeger(spec.retry_after)
    if not entry.retry_after or entry.retry_after < 0 then
      return nil, "retry_after must be a non-negative integer"
    end
  end
  self.queue[#self.queue + 1] = entry
  return entry
end

--- Remove every queued fault.
function Faults:clear()
  self.queue = {}
end

--- Take the faults for one API request.
-- @tparam[opt] string method the request's method
-- @tparam[opt] string target the request-target (path and query)
-- @treturn table `{ pre = entry|nil, delay = entry|nil, post = entry|nil }`
function Faults:take(method, target)
  local taken, keep = {}, {}
  local path = target and target:match("^[^?]*")
  for _, entry in ipairs(self.queue) do
    local matches = (entry.path == nil or entry.path == path) and (entry.method == nil or entry.method == method)
    if matches and not taken[entry.class] then
      taken[entry.class] = entry
      entry.count = entry.count - 1
    end
    if entry.count > 0 then keep[#keep + 1] = entry end
  end
  self.queue = keep
  return taken
end

--- Queued faults, for the control API.
-- @treturn table array of `{ fault, count, seconds?, retry_after? }`
function Faults:list()
  local out = {}
  for i, e in ipairs(self.queue) do
    out[i] = { fault = e.fault, count = e.count, seconds = e.seconds, retry_after = e.retry_after,
               path = e.path, method = e.method }
  end
  return out
end

return M
