--- Counters and latency histograms from the `on_request` events, rendered in the Prometheus
-- text format (version 0.0.4). Kept in a `lua_shared_dict` (every nginx worker adds to the
-- same figures) or in the process's memory.
--
--     local metrics = require("wxpay.metrics").new{ dict = "wxpay_metrics" }  -- or new()
--     local client = wxpay.new{ …, on_request = metrics.on_request }
--     ngx.print(metrics.render())                                        -- location /metrics
--
-- Labels are the event's `mchid`, `method`, `route` (a template, never an id or a query),
-- `status`, `error` (kind) and `host`. docs/observability.md lists the series.
-- @module wxpay.metrics

local M = {}

-- The default histogram buckets (seconds), upper bounds in increasing order.
M.BUCKETS = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10 }

local STAGES = { "budget_wait", "signing", "transfer", "verification" }

-- family -> { type, help }, in the order they are rendered.
local FAMILIES = {
  { "wxpay_requests_total", "counter", "Calls to WeChat Pay, by outcome (status, error kind)." },
  { "wxpay_attempts_total", "counter", "Attempts (one per transmission), by outcome and host." },
  { "wxpay_retries_total", "counter", "Attempts after the first, summed over calls." },
  { "wxpay_request_duration_seconds", "histogram", "Duration of whole calls (all attempts and backoff)." },
  { "wxpay_stage_seconds_total", "counter",
    "Seconds spent per stage of the attempts: budget_wait, signing, transfer, verification." },
}

-- A map with the three methods of an ngx.shared dict that are used here.
local function memory_dict()
  local t = {}
  return {
    incr = function(_, key, value) t[key] = (t[key] or 0) + value; return t[key] end,
    get = function(_, key) return t[key] end,
    get_keys = function()
      local keys = {}
      for k in pairs(t) do keys[#keys + 1] = k end
      return keys
    end,
    flush_all = function() t = {} end,
  }
end

-- A label value as the text format wants it: `\`, `"` and newline escaped; other control
-- characters (a TAB would also split the dict key) and the bytes of invalid UTF-8 (promtool
-- refuses them) become `?`.
local function escape(v)
  v = tostring(v)
  if v:find('[%c\128-\255\\"]') then
    if v:find("[\128-\255]") and not require("wxpay.request").check_utf8(v) then
      v = v:gsub("[\128-\255]", "?")
    end
    v = v:gsub("\\", "\\\\"):gsub('"', '\\"'):gsub("\n", "\\n"):gsub("%c", "?")
  end
  return v
end

-- The key of a series in the dict: family, TAB, labels, TAB, extra (a bucket index,
-- `sum`, `count` or a stage name).
local function key(family, ls, extra)
  return family .. "\t" .. ls .. "\t" .. (extra or "")
end

-- Keys are built once per label set and kept (an event then costs table lookups, not
-- string building): `m.series[mchid][method][route]` holds the call's keys and, under
-- `outcome[status][error]` / `attempt[status][error][host]`, the others. A collector takes
-- at most MAX_SERIES label sets (mchid, method, route); past that (a `client.request` path
-- full of ids) a new route is counted as `route="other"`, so the series stay bounded.
M.MAX_SERIES = 2000
local OTHER = "other"

local function call_keys(m, ls)
  local h = "wxpay_request_duration_seconds"
  local k = { ls = ls, retries = key("wxpay_retries_total", ls), sum = key(h, ls, "sum"),
    count = key(h, ls, "count"), buckets = {}, stages = {}, outcome = {}, attempt = {} }
  for i = 1, #m.buckets + 1 do k.buckets[i] = key(h, ls, i) end
  for _, stage in ipairs(STAGES) do k.stages[stage] = key("wxpay_stage_seconds_total", ls, stage) end
  return k
end

local function lookup(t, name, n)
  local v = t[name]
  if v == nil then v = {}; t[name] = v; n.count = n.count + 1 end
  return v
end

-- The keys of the label set (mchid, method, route).
local function cached(m, mchid, method, route)
  local by_mchid = m.series[mchid]
  local by_method = by_mchid and by_mchid[method]
  return by_method and by_method[route]
end

local function keys_for(m, ev)
  local mchid, method, route = ev.mchid or "", ev.method or "", ev.route or ""
  local k = cached(m, mchid, method, route)
  if k then return k end
  if m.sets >= M.MAX_SERIES then
    route = OTHER
    k = cached(m, mchid, method, route)
    if k then return k end
  end
  m.sets = m.sets + 1
  k = call_keys(m, 'mchid="' .. escape(mchid) .. '",method="' .. escape(method) .. '",route="'
    .. escape(route) .. '"')
  lookup(lookup(m.series, mchid, m.n), method, m.n)[route] = k
  return k
end

local function outcome_key(m, k, status, err)
  local by_status = lookup(k.outcome, status, m.n)
  local v = by_status[err]
  if not v then
    v = key("wxpay_requests_total", k.ls .. ',status="' .. escape(status) .. '",error="' .. escape(err) .. '"')
    by_status[err] = v
  end
  return v
end

local function attempt_key(m, k, status, err, host)
  local by_err = lookup(lookup(k.attempt, status, m.n), err, m.n)
  local v = by_err[host]
  if not v then
    v = key("wxpay_attempts_total", k.ls .. ',status="' .. escape(status) .. '",error="' .. escape(err)
      .. '",host="' .. escape(host) .. '"')
    by_err[host] = v
  end
  return v
end

local function bucket_index(buckets, v)
  for i = 1, #buckets do
    if v <= buckets[i] then return i end
  end
  return #buckets + 1 -- +Inf only
end

-- Record one event. `ev.error` is the kind (or "none"), `ev.status` "none" without an answer.
local function observe(m, ev)
  local dict, k = m.dict, keys_for(m, ev)
  local status, err = ev.status or "none", ev.error_kind or "none"
  if ev.phase == "attempt" then
    dict:incr(attempt_key(m, k, status, err, ev.host or "none"), 1, 0)
    return
  end
  dict:incr(outcome_key(m, k, status, err), 1, 0)
  if (ev.retries or 0) > 0 then dict:incr(k.retries, ev.retries, 0) end
  local d = ev.duration or 0
  dict:incr(k.buckets[bucket_index(m.buckets, d)], 1, 0)
  dict:incr(k.sum, d, 0)
  dict:incr(k.count, 1, 0)
  for i = 1, #STAGES do
    local stage = STAGES[i]
    local v = ev[stage]
    if v and v > 0 then dict:incr(k.stages[stage], v, 0) end
  end
end

local function number(v)
  if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return string.format("%d", v) end
  return string.format("%.10g", v)
end

-- The stored series grouped: family -> labels -> extra -> value.
local function collect(dict)
  local by = {}
  for _, k in ipairs(dict:get_keys(0)) do
    local family, ls, extra = k:match("^([^\t]+)\t([^\t]*)\t(.*)$")
    local v = family and dict:get(k)
    if v then
      by[family] = by[family] or {}
      by[family][ls] = by[family][ls] or {}
      by[family][ls][extra] = v
    end
  end
  return by
end

local function sorted_keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  table.sort(out)
  return out
end

local function render_histogram(out, name, series, buckets)
  for _, ls in ipairs(sorted_keys(series)) do
    local s, acc = series[ls], 0
    local sep = ls == "" and "" or ","
    for i, le in ipairs(buckets) do
      acc = acc + (s[tostring(i)] or 0)
      out[#out + 1] = string.format('%s_bucket{%s%sle="%s"} %s', name, ls, sep, number(le), number(acc))
    end
    out[#out + 1] = string.format('%s_bucket{%s%sle="+Inf"} %s', name, ls, sep, number(s.count or 0))
    out[#out + 1] = string.format("%s_sum{%s} %s", name, ls, number(s.sum or 0))
    out[#out + 1] = string.format("%s_count{%s} %s", name, ls, number(s.count or 0))
  end
end

local function render(m)
  local by, out = collect(m.dict), {}
  for _, f in ipairs(FAMILIES) do
    local name, kind, help = f[1], f[2], f[3]
    local series = by[name]
    if series then
      out[#out + 1] = "# HELP " .. name .. " " .. help
      out[#out + 1] = "# TYPE " .. name .. " " .. kind
      if kind == "histogram" then
        render_histogram(out, name, series, m.buckets)
      else
        for _, ls in ipairs(sorted_keys(series)) do
          for _, extra in ipairs(sorted_keys(series[ls])) do
            local all = extra == "" and ls or (ls .. ',stage="' .. extra .. '"')
            out[#out + 1] = string.format("%s{%s} %s", name, all, number(series[ls][extra]))
          end
        end
      end
    end
  end
  return #out == 0 and "" or table.concat(out, "\n") .. "\n"
end

local function check_buckets(buckets)
  if type(buckets) ~= "table" or #buckets == 0 then return nil end
  for i, b in ipairs(buckets) do
    if type(b) ~= "number" or b ~= b or b <= 0 or b == math.huge or (i > 1 and b <= buckets[i - 1]) then
      return nil
    end
  end
  return true
end

--- A recorder of one run's figures in memory, for a summary line (the CLI's campaign run):
-- every call's duration, the retries and the attempts answered 429.
-- @return `on_request(event)` and `summary()` → `{ calls, p50, p99, retries, status_429 }`
--   (p50/p99 in seconds, nil without calls)
function M.recorder()
  local durations, retries, n429 = {}, 0, 0
  local function on_request(ev)
    if ev.phase == "attempt" then
      if ev.status == 429 then n429 = n429 + 1 end
      return
    end
    durations[#durations + 1] = ev.duration or 0
    retries = retries + (ev.retries or 0)
  end
  local function summary()
    local d = {}
    for i, v in ipairs(durations) do d[i] = v end
    table.sort(d)
    -- nearest rank: the smallest value with at least p of the calls at or below it
    local function rank(p) return d[math.max(1, math.ceil(p * #d))] end
    return { calls = #d, p50 = d[1] and rank(0.5), p99 = d[1] and rank(0.99), retries = retries,
      status_429 = n429 }
  end
  return { on_request = on_request, summary = summary }
end

--- Create a metrics collector.
-- @tparam[opt] table opts `dict` (the name of a `lua_shared_dict`, or a dict object; without
--   it the figures live in this process's memory), `buckets` (increasing upper bounds in
--   seconds; default `wxpay.metrics.BUCKETS`)
-- @return the collector: `on_request(event)` (the hook to give as `on_request`),
--   `render()` (the Prometheus text) and `reset()`; or nil and an `invalid_argument` error
function M.new(opts)
  opts = opts or {}
  local errors = require("wxpay.errors")
  local dict = opts.dict
  if type(dict) == "string" then
    local ngx = rawget(_G, "ngx")
    local shared = ngx and ngx.shared and ngx.shared[dict]
    if not shared then
      return nil, errors.invalid_argument("dict", "no lua_shared_dict named " .. dict)
    end
    dict = shared
  elseif dict == nil then
    dict = memory_dict()
  elseif type(dict) ~= "table" and type(dict) ~= "userdata" then
    return nil, errors.invalid_argument("dict", "must be a lua_shared_dict name or object")
  end
  local buckets = opts.buckets or M.BUCKETS
  if not check_buckets(buckets) then
    return nil, errors.invalid_argument("buckets", "must be increasing positive finite numbers")
  end
  local m = { dict = dict, buckets = buckets, series = {}, n = { count = 0 }, sets = 0 }
  return {
    on_request = function(ev) return observe(m, ev) end,
    render = function() return render(m) end,
    reset = function() dict:flush_all(); m.series, m.sets = {}, 0 end,
  }
end

return M
