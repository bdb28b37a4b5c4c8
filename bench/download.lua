--- Benchmark: `client.download` of a ~50 MB 代金券 use-flow file from the sandbox over
-- HTTPS: throughput, and this process's resident memory before, after and at its peak
-- (VmHWM), to show the file is streamed to disk rather than held in memory. Then the
-- rows parsed with `wxpay.flow.rows`. Prints figures; asserts nothing.
-- `lua5.4 bench/download.lua` runs it alone.
local alone = arg and arg[0] and arg[0]:match("bench/download%.lua$")
if alone then
  package.path = "lua/?.lua;lua/?/init.lua;./?.lua;" .. package.path
  package.cpath = (jit and "build-luajit/?.so;" or "build/?.so;") .. package.cpath
end

local core = require("wxpay.core")
local wxpay = require("wxpay")

local M = {}

local function status_kib(field)
  local f = io.open("/proc/self/status")
  if not f then return 0 end
  local s = f:read("*a")
  f:close()
  return tonumber(s:match(field .. ":%s*(%d+)")) or 0
end

local function rfc3339(t)
  return os.date("!%Y-%m-%dT%H:%M:%S+08:00", t + 8 * 3600)
end

function M.run(opts)
  local rows = tonumber(os.getenv("BENCH_FLOW_ROWS")) or 450000
  local sb = require("wxpay.sandbox.process").start{ mode = "combined" }
  local ok, err = xpcall(function()
    local client = assert(wxpay.new(sb.config))
    local now = os.time()
    local id = assert(client.favor.stocks.create{
      stock_name = "bench", available_begin_time = rfc3339(now), available_end_time = rfc3339(now + 86400),
      stock_use_rule = { max_coupons = 5, max_amount = 2500, max_coupons_per_user = 5,
                         natural_person_limit = false, prevent_api_abuse = false },
      coupon_use_rule = { fixed_normal_coupon = { coupon_amount = 500, transaction_minimum = 5000 } },
      no_cash = false, stock_type = "NORMAL",
    }).stock_id
    sb:control("POST", "/favor/flow", { filler_rows = rows, ttl = 600 })
    local info = assert(client.favor.stocks.use_flow(id))
    local path = os.tmpname()
    os.remove(path)
    collectgarbage()
    local before = status_kib("VmRSS")
    local t0 = core.monotonic()
    local res = assert(client.download(info, { path = path }))
    local secs = core.monotonic() - t0
    local after, peak = status_kib("VmRSS"), status_kib("VmHWM")
    t0 = core.monotonic()
    local n = 0
    for _ in require("wxpay.flow").rows(path) do n = n + 1 end
    local parse = core.monotonic() - t0
    os.remove(path)
    print(string.format("client.download (%s): %.1f MB in %.2f s = %.1f MB/s, SHA-1 checked", _VERSION,
      res.bytes / 1e6, secs, res.bytes / 1e6 / secs))
    print(string.format("  RSS before %d KiB, after %d KiB (%+d KiB), peak (VmHWM) %d KiB", before, after,
      after - before, peak))
    print(string.format("  wxpay.flow.rows: %d rows in %.2f s", n, parse))
  end, debug.traceback)
  sb:stop()
  if not ok then print("download bench failed: " .. tostring(err)) end
  return opts and opts.shared
end

if alone then M.run() end

return M
