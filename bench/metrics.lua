--- Benchmark: what the `on_request` hook with `wxpay.metrics` costs per call, next to one
-- RSA-2048 signature (the target: under 5 %). Measures the pipeline's event machinery
-- (wxpay.observe: trace, stage clocks, one attempt event and one call event) feeding an
-- in-memory `wxpay.metrics`, the way one successful call does. Prints figures.
local core = require("wxpay.core")
local metrics = require("wxpay.metrics")
local observe = require("wxpay.observe")

local M = {}

local function per_call(fn, seconds)
  local n, t0 = 0, os.clock()
  repeat
    for _ = 1, 200 do fn() end
    n = n + 200
  until os.clock() - t0 >= seconds
  return (os.clock() - t0) / n
end

-- One call's events, as wxpay.pipeline produces them for a product call answered at once.
local function one_call(st, m)
  local r = { method = "GET", target = "/v3/marketing/busifavor/stocks/1286950000000039", product = true,
    on_request = m.on_request, attempt = 1 }
  local t0 = st.monotonic()
  local tr = observe.start(st, r, t0)
  observe.attempt_begin(st, tr)
  for _, stage in ipairs(observe.PHASES) do observe.lap(st, tr, stage, st.monotonic()) end
  local meta = { status = 200, request_id = "0800F2B4E1A70A06D9A9A56E0702E9AB", attempts = 1 }
  observe.attempt_end(st, r, tr, "https://api.mch.weixin.qq.com", meta, nil)
  observe.call_end(st, r, tr, meta, nil, st.monotonic() - t0)
end

--- Runs the benchmark; returns `{ cost, sign_seconds, ratio }` (also printed).
function M.run(opts)
  opts = opts or {}
  local seconds = opts.seconds or 3
  local st = { mchid = "1900000001", monotonic = core.monotonic, base_url = "https://api.mch.weixin.qq.com",
    transport = setmetatable({}, { __tostring = function() return "wxpay.transport.curl" end }) }
  local m = assert(metrics.new())
  local cost = per_call(function() one_call(st, m) end, seconds)
  local render_cost = per_call(function() m.render() end, seconds / 3)
  local sign = opts.shared and opts.shared["bench.core"] and opts.shared["bench.core"].sign_seconds
  if not sign then
    local key = assert(core.load_private_key(assert(io.popen(
      "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 2>/dev/null")):read("*a")))
    sign = per_call(function() key:sign("GET\n/v3/x\n1554208460\nNONCE\n\n") end, 1)
  end
  print("== on_request + wxpay.metrics (in memory), per call: one attempt and one call event ==")
  print(("%-40s %10.1f us"):format("events + metrics per call", cost * 1e6))
  print(("%-40s %10.1f us"):format("one RSA-2048 signature", sign * 1e6))
  print(("%-40s %9.2f %%   (target < 5 %%)"):format("ratio", 100 * cost / sign))
  print(("%-40s %10.1f us"):format("render() with one route", render_cost * 1e6))
  return { cost = cost, sign_seconds = sign, ratio = cost / sign }
end

return M
