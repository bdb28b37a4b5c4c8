--- Fault injection for APIv3 requests.
-- Faults form a queue. Each API request takes at most one fault from each class, the
-- oldest entry of that class with a count left:
--   "pre"   500, 429, 202, echo, drop: answered instead of processing (a faulted build
--           creates nothing); 202 is a signed empty "accepted, not yet processed", echo a
--           500 HTML page quoting the request's Authorization credentials (a careless
--           gateway);
--   "delay" delay: the request is processed, then the answer waits `seconds`;
--   "post"  tamper, unsigned, stale, probe: applied to the processed, signed answer;
--           500_after, drop_after: the request is processed (a build or create is stored),
--           then its answer is lost: replaced by a 500 SYSTEM_ERROR, or the connection is
--           closed without an answer. A client that repeats the request must be answered
--           from what was stored, not create a second one.
-- So {500, count 1} then {429, count 1} fail two requests in turn, while {delay} and
-- {tamper} queued together hit the same request. An entry with `path` (and `method`) only
-- matches requests to that path (query ignored), so a fault can target one endpoint.
--
-- An entry with `rate` (0 < rate <= 1) instead of `count` stays until cleared and hits each
-- matching request with that probability. Counted entries are taken first; then one draw
-- per class picks among that class's rate entries, so {500, rate .2} and {drop, rate .05}
-- fail 20 % and drop 5 % of requests. The draws come from a private generator seeded by
-- `--fault-seed` (or a spec's `seed`); clearing the queue re-seeds it, so a run after
-- `reset` sees the same faults again.
local M = {}

local CLASS = {
  ["500"] = "pre", ["429"] = "pre", ["202"] = "pre", echo = "pre", drop = "pre", delay = "delay",
  tamper = "post", unsigned = "post", stale = "post", probe = "post",
  ["500_after"] = "post", drop_after = "post",
}

local Faults = {}
Faults.__index = Faults

-- A 64-bit LCG (Knuth's MMIX constants; integer arithmetic wraps in Lua 5.4): small,
-- deterministic per seed, and independent of math.random's global state.
local function next_random(self)
  self.state = self.state * 6364136223846793005 + 1442695040888963407
  return (self.state >> 11) / 9007199254740992.0 -- top 53 bits, in [0, 1)
end

local function reseed(self, seed)
  self.seed = seed
  self.state = seed
  next_random(self)
end

--- New empty fault queue.
-- @tparam[opt] integer seed for the rate draws (default: from the clock and the address)
function M.new(seed)
  local self = setmetatable({ queue = {} }, Faults)
  reseed(self, seed or (os.time() ~ tonumber(tostring(self):match("0x(%x+)") or "0", 16)))
  return self
end

--- Queue a fault.
-- @tparam table spec `{ fault = "500"|"429"|"202"|"echo"|"delay"|"tamper"|"unsigned"|"stale"|"probe"|"drop"
--   |"500_after"|"drop_after",
--   count = n (default 1) or rate = p (0 < p <= 1, until cleared), retry_after = s (429),
--   seconds = s (delay), path = "/v3/…" (optional), method = "POST" (optional),
--   seed = n (optional: re-seed the rate draws) }`; `{ seed = n }` alone only re-seeds
-- @return the queued entry (or true for a bare seed), or nil and an error message
function Faults:add(spec)
  if type(spec) ~= "table" then return nil, "body must be a JSON object" end
  if spec.seed ~= nil then
    local seed = math.tointeger(spec.seed)
    if not seed then return nil, "seed must be an integer" end
    reseed(self, seed)
    if spec.fault == nil then return true end
  end
  local kind = spec.fault
  -- cjson gives numbers as floats on Lua 5.4: {"fault":500} must still mean "500".
  if type(kind) == "number" then kind = tostring(math.tointeger(kind)) end
  if not CLASS[kind] then return nil, "unknown fault: " .. tostring(spec.fault) end
  local count, rate
  if spec.rate ~= nil then
    rate = tonumber(spec.rate)
    if not rate or not (rate > 0 and rate <= 1) then return nil, "rate must be a number in (0, 1]" end
    if spec.count ~= nil then return nil, "give count or rate, not both" end
  else
    count = spec.count == nil and 1 or math.tointeger(spec.count)
    if not count or count < 1 then return nil, "count must be a positive integer" end
  end
  if spec.path ~= nil and (type(spec.path) ~= "string" or spec.path:sub(1, 1) ~= "/") then
    return nil, "path must start with /"
  end
  if spec.method ~= nil and type(spec.method) ~= "string" then return nil, "method must be a string" end
  local entry = { fault = kind, count = count, rate = rate, class = CLASS[kind], path = spec.path,
                  method = spec.method and spec.method:upper() }
  if kind == "delay" then
    entry.seconds = tonumber(spec.seconds)
    -- Written so that NaN fails too; an answer held a day is as good as lost.
    if not (entry.seconds and entry.seconds >= 0 and entry.seconds <= 86400) then
      return nil, "delay needs seconds 0..86400"
    end
  elseif kind == "429" and spec.retry_after ~= nil then
    entry.retry_after = math.tointeger(spec.retry_after)
    if not entry.retry_after or entry.retry_after < 0 then
      return nil, "retry_after must be a non-negative integer"
    end
  end
  self.queue[#self.queue + 1] = entry
  return entry
end

--- Remove every queued fault and re-seed the rate draws with the current seed.
function Faults:clear()
  self.queue = {}
  reseed(self, self.seed)
end

--- Take the faults for one API request.
-- @tparam[opt] string method the request's method
-- @tparam[opt] string target the request-target (path and query)
-- @treturn table `{ pre = entry|nil, delay = entry|nil, post = entry|nil }`
function Faults:take(method, target)
  local taken, keep, rated = {}, {}, {}
  local path = target and target:match("^[^?]*")
  for _, entry in ipairs(self.queue) do
    local matches = (entry.path == nil or entry.path == path) and (entry.method == nil or entry.method == method)
    if matches and entry.rate then
      local list = rated[entry.class] or {}
      rated[entry.class] = list
      list[#list + 1] = entry
      keep[#keep + 1] = entry
    else
      if matches and not taken[entry.class] then
        taken[entry.class] = entry
        entry.count = entry.count - 1
      end
      if entry.rate or entry.count > 0 then keep[#keep + 1] = entry end
    end
  end
  self.queue = keep
  -- One draw per class (in a fixed order, for reproducibility) picks among the rate entries
  -- by cumulative probability.
  for _, class in ipairs({ "pre", "delay", "post" }) do
    local list = rated[class]
    if list and not taken[class] then
      local u, acc = next_random(self), 0
      for _, entry in ipairs(list) do
        acc = acc + entry.rate
        if u < acc then taken[class] = entry; break end
      end
    end
  end
  return taken
end

--- Queued faults, for the control API.
-- @treturn table array of `{ fault, count | rate, seconds?, retry_after?, path?, method? }`
function Faults:list()
  local out = {}
  for i, e in ipairs(self.queue) do
    out[i] = { fault = e.fault, count = e.count, rate = e.rate, seconds = e.seconds,
               retry_after = e.retry_after, path = e.path, method = e.method }
  end
  return out
end

return M
