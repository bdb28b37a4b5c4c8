--- Benchmark: the client against the sandbox over real HTTPS with keep-alive.
-- Prints CPU per signed + verified request next to one RSA-2048 signature, the TCP
-- connections 1,000 sequential requests use, the memory growth of iterating 10,000
-- relations against 100, and (where Node is available) the same requests through the Node
-- SDK wechatpay-axios-plugin. Asserts nothing; prints figures.
local wxpay = require("wxpay")
local core = require("wxpay.core")
local sandbox = require("wxpay.sandbox.process")

local M = {}

local function vm_hwm_kb()
  local f = io.open("/proc/self/status")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return tonumber(s:match("VmHWM:%s*(%d+)"))
end

local function sign_seconds(shared)
  if shared and shared["bench.core"] then return shared["bench.core"].sign_seconds end
  local p = io.popen("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 2>/dev/null")
  local key = assert(core.load_private_key(p:read("*a")))
  p:close()
  local n, t0 = 0, os.clock()
  repeat key:sign("x"); n = n + 1 until os.clock() - t0 > 2
  return (os.clock() - t0) / n
end

local function iterate(client, stock)
  local n, lua_peak = 0, 0
  collectgarbage("collect")
  local base = collectgarbage("count")
  for _ in client.partnerships.list{ authorized_data = { business_type = "BUSIFAVOR_STOCK", stock_id = stock },
                                     limit = 50 } do
    n = n + 1
    local c = collectgarbage("count")
    if c > lua_peak then lua_peak = c end
  end
  return n, (lua_peak - base) / 1024
end

--- Runs the client benchmark; returns its figures.
function M.run(opts)
  opts = opts or {}
  local requests = tonumber(os.getenv("BENCH_REQUESTS")) or 1000
  local sig = sign_seconds(opts.shared)
  local sb = sandbox.start{ mode = "certificate" }
  local r = {}
  local ok, err = pcall(function()
    local client = assert(wxpay.new(sb.config))
    sb:control("POST", "/seed", { count = 10000, business_type = "BUSIFAVOR_STOCK", stock_id = "BENCH10K",
                                  prefix = "wxbench" })
    sb:control("POST", "/seed", { count = 100, business_type = "BUSIFAVOR_STOCK", stock_id = "BENCH100",
                                  prefix = "wxsmall" })
    local q = { authorized_data = { business_type = "BUSIFAVOR_STOCK", stock_id = "BENCH100" }, limit = 1, offset = 0 }
    for _ = 1, 50 do assert(client.partnerships.page(q)) end -- warm-up: connection, JIT, caches
    local t0, w0 = os.clock(), core.monotonic()
    for _ = 1, requests do
      local page, perr = client.partnerships.page(q)
      if not page then error(tostring(perr)) end
    end
    local cpu, wall = os.clock() - t0, core.monotonic() - w0
    r.cpu_per_request = cpu / requests
    r.ratio = r.cpu_per_request / sig
    r.connections = sb:stats().api_connections -- fresh sandbox: warm-up and measured requests
    print(("== client against the sandbox (Lua %s, certificate mode, keep-alive) =="):format(
      jit and jit.version or _VERSION))
    print(("one RSA-2048 signature:            %8.3f ms CPU"):format(sig * 1000))
    print(("one signed + verified request:     %8.3f ms CPU  = %.2f x a signature (target <= 1.7)"):format(
      r.cpu_per_request * 1000, r.ratio))
    print(("%d sequential requests:          %8.2f s wall; TCP connections used in all: %d (target 1)"):format(
      requests, wall, r.connections))

    -- Memory: iterating 10,000 relations against iterating 100, in the same process.
    local n_small, lua_small = iterate(client, "BENCH100")
    local hwm_small = vm_hwm_kb()
    local n_big, lua_big = iterate(client, "BENCH10K")
    local hwm_big = vm_hwm_kb()
    r.rss_growth_mb = hwm_small and (hwm_big - hwm_small) / 1024
    print(("iterating %d vs %d relations:   peak RSS grows %.2f MB (target < 5), Lua heap peak %.2f vs %.2f MB")
      :format(n_big, n_small, r.rss_growth_mb or -1, lua_big, lua_small))
    client.close()

    local okn, node = pcall(require, "bench.node")
    if okn and node.run then
      local nr, why = node.run{ config = sb.config, requests = math.min(requests, 500) }
      if nr then
        r.node_cpu_per_request = nr.cpu_per_request_ms / 1000
        print(("Node %s, %s: %8.3f ms CPU per request = %.1f x ours (target >= 4)"):format(nr.node or "?",
          nr.sdk or "wechatpay-axios-plugin", nr.cpu_per_request_ms, r.node_cpu_per_request / r.cpu_per_request))
      else
        print("Node SDK comparison skipped: " .. tostring(why))
      end
    end
  end)
  sb:stop()
  if not ok then print("client benchmark failed: " .. tostring(err)) end
  return r
end

return M
