--- Benchmark: an OpenResty burst. One nginx worker runs examples/openresty; 500 admin
-- requests arrive at once, each making one call (a partnership build) to a sandbox that
-- answers after 200 ms. Three bursts in a row: the first finds one kept-alive connection,
-- the next ones what the pool kept of the burst before. Prints, per burst, the wall time of
-- the whole burst and the worker's CPU per request (user + system, /proc). Asserts nothing.
-- `luajit bench/openresty.lua` runs it alone; needs nginx + libnginx-mod-http-lua and
-- build-luajit/ (make luajit). BENCH_ROOT runs another checkout's lua/ (for a before/after).
local alone = arg and arg[0] and arg[0]:match("bench/openresty%.lua$")
if alone then
  package.path = "lua/?.lua;lua/?/init.lua;./?.lua;" .. package.path
  package.cpath = (jit and "build-luajit/?.so;" or "build/?.so;") .. package.cpath
end

local cjson = require("cjson")
local nginx = require("spec.support.nginx")
local sandbox = require("wxpay.sandbox.process")

local M = {}

local BURST = tonumber(os.getenv("BENCH_BURST")) or 500
local HZ = 100 -- clock ticks a second in /proc/PID/stat (USER_HZ)

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  return out
end

local function write(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

-- utime + stime of a process, in seconds.
local function cpu_of(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return nil end
  local stat = f:read("*a")
  f:close()
  local rest = stat:match("^%d+ %b() (.*)$")
  local fields = {}
  for v in rest:gmatch("%S+") do fields[#fields + 1] = v end
  return (tonumber(fields[12]) + tonumber(fields[13])) / HZ -- fields 14 and 15 of the line
end

-- A curl config of `n` POSTs (from `first`), all at once (curl runs at most 300 in parallel:
-- the burst is split over two curl processes started together).
local function batch(dir, name, url, first, n)
  local lines = { "parallel", "parallel-immediate", "parallel-max = 300" }
  for i = first, first + n - 1 do
    if i > first then lines[#lines + 1] = "next" end
    lines[#lines + 1] = 'url = "' .. url .. '"'
    lines[#lines + 1] = 'header = "Content-Type: application/json"'
    lines[#lines + 1] = string.format('data = "{\\"appid\\":\\"wxburst%05d\\",\\"stock_id\\":\\"BURST\\"}"', i)
    lines[#lines + 1] = 'output = "/dev/null"'
    lines[#lines + 1] = 'write-out = "%{http_code}\\n"'
  end
  write(dir .. "/" .. name, table.concat(lines, "\n") .. "\n")
end

-- One burst of BURST requests; returns wall seconds, worker CPU seconds, answers 200.
local function burst(dir, url, worker, upstream, k)
  local half = math.floor(BURST / 2)
  batch(dir, "a.conf", url, k * BURST, half)
  batch(dir, "b.conf", url, k * BURST + half, BURST - half)
  local c0, u0 = cpu_of(worker), cpu_of(upstream)
  local out = sh(nginx.CLEAN_ENV .. "sh -c " .. q(table.concat({
    "cd " .. q(dir), "s=$(date +%s%N)",
    "curl -s -K a.conf > a.out 2>/dev/null & curl -s -K b.conf > b.out 2>/dev/null; wait",
    "e=$(date +%s%N)", "times", "echo $(( (e - s) / 1000 ))" }, "\n")))
  local cpu, ucpu = cpu_of(worker) - c0, cpu_of(upstream) - u0
  local cu, cum, cs, csm = out:match("\n(%d+)m([%d.]+)s (%d+)m([%d.]+)s\n%d+%s*$")
  local ccpu = cu and (cu * 60 + cum + cs * 60 + csm) or 0 -- the two curl processes (`times`)
  local ok = 0
  for _, f in ipairs({ "a.out", "b.out" }) do
    for status in (sh("cat " .. q(dir .. "/" .. f))):gmatch("(%d+)") do
      if status == "200" then ok = ok + 1 end
    end
  end
  return tonumber(out:match("(%d+)%s*$")) / 1e6, cpu, ok, ucpu, ccpu
end

local function conf(root, ca_file)
  return (io.open("examples/openresty/nginx.conf"):read("*a"):gsub("{{root}}", root)
    :gsub("{{ca_file}}", ca_file):gsub("worker_connections 1024", "worker_connections 4096"))
end

local function worker_of(master)
  for _ = 1, 100 do
    local pid = sh("ps -o pid= --ppid " .. master):match("(%d+)")
    if pid then return pid end
    sh("sleep 0.05")
  end
end

--- Runs the benchmark; returns `{ { wall, cpu_per_request, ok }, … }` per burst.
function M.run()
  local root = os.getenv("BENCH_ROOT") or sh("pwd"):gsub("%s+$", "")
  if not io.open(root .. "/build-luajit/wxpay/core.so") then sh("make -s luajit >/dev/null 2>&1") end
  local sb = sandbox.start{ mode = "certificate" }
  local dir = os.tmpname()
  os.remove(dir)
  sh("mkdir -p " .. q(dir))
  local cfg = {}
  for k, v in pairs(sb.config) do cfg[k] = v end
  cfg.platform_certificate_files = nil -- downloaded once per worker, as in production
  cfg.base_url = cfg.base_url:gsub("^https://127%.0%.0%.1:", "https://localhost:")
  write(dir .. "/config.json", cjson.encode(cfg))
  local n, results = nil, {}
  local ok, err = pcall(function()
    n = nginx.start(conf(root, cfg.ca_file), "WXPAY_CONFIG=" .. q(dir .. "/config.json"))
    local worker = assert(worker_of(n.pid), "no nginx worker")
    local url = n.url .. "/admin/partnerships"
    for _ = 1, 50 do -- the worker holds its certificates and one connection
      if sh("curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' -d "
        .. q('{"appid":"wxwarm","stock_id":"BURST"}') .. " " .. q(url)) == "200" then break end
      sh("sleep 0.1")
    end
    sb:fault{ fault = "delay", seconds = 0.2, count = 1000000 }
    sh("renice -n 10 -p " .. sb.pid .. " >/dev/null 2>&1") -- the sandbox yields to the worker
    print(("== OpenResty burst: %d concurrent admin requests, one call each, 200 ms upstream, 1 worker =="):format(
      BURST))
    for k = 1, 3 do
      local wall, cpu, good, ucpu, ccpu = burst(dir, url, worker, sb.pid, k)
      results[k] = { wall = wall, cpu_per_request = cpu / BURST, ok = good, upstream_cpu = ucpu, curl_cpu = ccpu }
      print(("burst %d (%s): %6.3f s wall (goal <= 0.9), worker CPU %6.3f s = %5.2f ms per request "
        .. "(goal <= 1.0); %d answered 200; CPU of the sandbox %.2f s, of curl %.2f s"):format(k,
        k == 1 and "one pooled connection" or "pool kept", wall, cpu, cpu / BURST * 1000, good, ucpu, ccpu))
    end
  end)
  if n then n:stop() end
  sb:stop()
  sh("rm -rf " .. q(dir))
  if not ok then print("OpenResty benchmark failed: " .. tostring(err)) end
  return results
end

if alone then M.run() end

return M
