--- Benchmark: the timing runs at scale, against the sandbox. 2,000 builds at 40 ms latency
-- and concurrency 32 against the ideal (2,000 x 40 ms / 32) and the machine's CPU floor;
-- the same run at qps = 100 (about 20 s, never more than 100 starts in a second); 10,000
-- relations listed 50 a page. Prints each figure with its bound; asserts nothing.
local core = require("wxpay.core")
local wxpay = require("wxpay")
local sandbox = require("wxpay.sandbox.process")

local M = {}

local function proc_cpu(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return 0 end
  local s = f:read("*a")
  f:close()
  local fields = {}
  for x in s:gsub("^.-%) ", ""):gmatch("%S+") do fields[#fields + 1] = x end
  return (tonumber(fields[12]) + tonumber(fields[13])) / 100 -- utime + stime, in 1/100 s
end

local function cores()
  local p = io.popen("getconf _NPROCESSORS_ONLN 2>/dev/null")
  local n = tonumber(p:read("*a")) or 1
  p:close()
  return n
end

-- Requests started in the busiest calendar second and the busiest sliding one-second window.
local function rate_profile(log)
  local ts = {}
  for _, e in ipairs(log) do
    if e.target:sub(1, 4) == "/v3/" then ts[#ts + 1] = e.received_at end
  end
  table.sort(ts)
  local per_second, max_calendar, max_sliding, j = {}, 0, 0, 1
  for i, t in ipairs(ts) do
    local s = math.floor(t)
    per_second[s] = (per_second[s] or 0) + 1
    if per_second[s] > max_calendar then max_calendar = per_second[s] end
    while t - ts[j] >= 1 do j = j + 1 end
    if i - j + 1 > max_sliding then max_sliding = i - j + 1 end
  end
  return max_calendar, max_sliding
end

-- Builds n partnerships for `stock` through client.concurrent; wall and CPU times.
local function run_builds(sb, client, stock, n, opts)
  local tasks = {}
  for i = 1, n do
    tasks[i] = function()
      local rel, err = client.partnerships.build({
        partner = { type = "APPID", appid = string.format("wx%s%010d", stock, i) },
        authorized_data = { business_type = "FAVOR_STOCK", stock_id = stock },
      }, { idempotency_key = stock .. "-" .. i })
      if not rel then error(tostring(err), 0) end
    end
  end
  local c0, s0, t0 = os.clock(), proc_cpu(sb.pid), core.monotonic()
  local results, summary = client.concurrent(tasks, opts)
  local r = { elapsed = core.monotonic() - t0, cpu = os.clock() - c0, sandbox_cpu = proc_cpu(sb.pid) - s0,
              summary = summary }
  for i = 1, n do
    if results[i].n ~= 0 then error("build " .. i .. " failed: " .. tostring(results[i][2])) end
  end
  return r
end

local function concurrency_figure(sb, client)
  sb:reset()
  sb:configure{ latency = 0.04 }
  local r = run_builds(sb, client, "2000002", 2000, { concurrency = 32 })
  local ideal = 2000 * 0.04 / 32
  -- The ideal assumes free CPU. Client and sandbox each sign every message (RSA-2048) on one
  -- thread each, so no schedule beats the busier one's CPU time, nor both CPU times shared
  -- over the cores. Where that floor is above the ideal (2 cores: ~1.3 ms a build each side),
  -- the bound is 1.3 x the floor; with CPU to spare it is 1.3 x the ideal.
  local n = cores()
  local floor = math.max(r.cpu, r.sandbox_cpu, (r.cpu + r.sandbox_cpu) / n)
  local base = math.max(ideal, floor)
  print(("2,000 builds, concurrency 32, 40 ms latency: %.2f s = %.2f x ideal %.2f s (bound 1.3 x)"):format(
    r.elapsed, r.elapsed / ideal, ideal))
  print(("  client CPU %.2f s, sandbox CPU %.2f s, %d cores: CPU floor %.2f s; %.2f x max(ideal, floor) "
    .. "(bound 1.3 x); %d in flight at most"):format(r.cpu, r.sandbox_cpu, n, floor, r.elapsed / base,
    r.summary.max_in_flight))
  return { seconds = r.elapsed, x_ideal = r.elapsed / ideal, x_bound_base = r.elapsed / base }
end

local function qps_figure(sb, client)
  sb:reset()
  sb:configure{ latency = 0.04 }
  local r = run_builds(sb, client, "2000003", 2000, { concurrency = 32, qps = 100 })
  local calendar, sliding = rate_profile(sb:requests())
  print(("2,000 builds at qps = 100: %.2f s (bound 19.5 to 22 s); busiest calendar second %d "
    .. "(bound 100), busiest sliding second %d"):format(r.elapsed, calendar, sliding))
  return { seconds = r.elapsed, max_calendar = calendar, max_sliding = sliding }
end

-- The spec's old run: 200 hand-signed list requests over one curl connection (`sb:http`).
local function list_figure(sb)
  sb:reset()
  sb:control("POST", "/seed", { count = 10000 })
  local ad = require("cjson").encode{ business_type = "BUSIFAVOR_STOCK" }
  ad = ad:gsub("[^A-Za-z0-9%-._~]", function(c) return string.format("%%%02X", c:byte()) end)
  local reqs = {}
  for page = 0, 199 do
    reqs[#reqs + 1] = { target = "/v3/marketing/partnerships?authorized_data=" .. ad
      .. "&limit=50&offset=" .. page }
  end
  local t0 = core.monotonic()
  local pages = sb:http(reqs)
  local elapsed = core.monotonic() - t0
  local n = 0
  for _, resp in ipairs(pages) do
    if resp.status == 200 then n = n + #require("cjson").decode(resp.body).data end
  end
  print(("10,000 relations, 200 pages of 50: %.2f s (bound 10 s), %d listed"):format(elapsed, n))
  return { seconds = elapsed, listed = n }
end

--- Runs the scale benchmark; returns its figures.
function M.run()
  local sb = sandbox.start{ mode = "public_key" }
  local r = {}
  local ok, err = pcall(function()
    local client = assert(wxpay.new(sb.config))
    print(("== scale (Lua %s): client.concurrent and paging against the sandbox =="):format(
      rawget(_G, "jit") and _G.jit.version or _VERSION))
    r.concurrency = concurrency_figure(sb, client)
    r.qps = qps_figure(sb, client)
    r.list = list_figure(sb)
    client.close()
  end)
  sb:stop()
  if not ok then print("scale benchmark failed: " .. tostring(err)) end
  return r
end

return M
