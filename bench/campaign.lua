--- Benchmark: campaign throughput through client.concurrent against the sandbox.
-- Builds partnerships at 0 ms and 40 ms sandbox latency with concurrency 1, 8 and 32 and
-- prints partners per second and the client's CPU per request at each. The sandbox runs in
-- its own process on the same machine, so at 0 ms latency both sides' signing (one RSA-2048
-- signature each per request) is what bounds the figure. Asserts nothing; prints figures.
local core = require("wxpay.core")
local wxpay = require("wxpay")
local sandbox = require("wxpay.sandbox.process")

local M = {}

-- Enough builds for a steady figure without making `make bench` slow.
local function count(latency, c)
  if latency == 0 then return c == 1 and 300 or 1000 end
  return c == 1 and 50 or (c == 8 and 300 or 1000)
end

--- Runs the campaign benchmark; returns its figures keyed "latency_ms/concurrency".
function M.run()
  local sb = sandbox.start{ mode = "public_key" }
  local r = {}
  local ok, err = pcall(function()
    local client = assert(wxpay.new(sb.config))
    print(("== campaign throughput (Lua %s): client.concurrent over the multi interface =="):format(
      jit and jit.version or _VERSION))
    print("latency  concurrency  partners   partners/s  client CPU/request  ideal partners/s")
    local stock = 0
    for _, latency in ipairs({ 0, 0.04 }) do
      sb:configure{ latency = latency }
      for _, c in ipairs({ 1, 8, 32 }) do
        stock = stock + 1
        local n = count(latency, c)
        local tasks = {}
        for i = 1, n do
          tasks[i] = function()
            local rel, berr = client.partnerships.build({
              partner = { type = "APPID", appid = string.format("wxbench%011d", i) },
              authorized_data = { business_type = "FAVOR_STOCK", stock_id = tostring(900000 + stock) },
            }, { idempotency_key = string.format("bench%d-%d", stock, i) })
            if not rel then error(tostring(berr), 0) end
          end
        end
        local c0, w0 = os.clock(), core.monotonic()
        local results = client.concurrent(tasks, { concurrency = c })
        local cpu, wall = os.clock() - c0, core.monotonic() - w0
        for i = 1, n do
          if results[i].n ~= 0 then error("build " .. i .. " failed: " .. tostring(results[i][2])) end
        end
        local key = string.format("%d/%d", latency * 1000, c)
        r[key] = { per_second = n / wall, cpu_per_request = cpu / n }
        print(("%4d ms  %11d  %8d  %11.1f  %15.3f ms  %16s"):format(latency * 1000, c, n, n / wall,
          cpu / n * 1000, latency > 0 and string.format("%.0f", c / latency) or "-"))
      end
    end
    client.close()
  end)
  sb:stop()
  if not ok then print("campaign benchmark failed: " .. tostring(err)) end
  return r
end

return M
