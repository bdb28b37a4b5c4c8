--- Benchmark: a campaign of 1,000 builds (distinct appids, Idempotency-Keys derived from
-- the appid) against a sandbox that answers 20 % of builds with 500 and drops 5 % of the
-- connections, at random from a fixed seed. Prints the retries, libcurl's own re-sends and
-- the total time, and checks the outcome against the sandbox: 1,000 relations, none
-- built twice, no appid sent under two keys. Prints figures; asserts nothing else.
local wxpay = require("wxpay")
local core = require("wxpay.core")
local sandbox = require("wxpay.sandbox.process")

local M = {}

local BUILD = "/v3/marketing/partnerships/build"

--- Runs the reliability benchmark; returns its figures.
function M.run()
  local n = tonumber(os.getenv("BENCH_BUILDS")) or 1000
  local sb = sandbox.start{ mode = "combined", fault_seed = 2026 }
  local r = {}
  local ok, err = pcall(function()
    local cfg = {}
    for k, v in pairs(sb.config) do cfg[k] = v end
    -- 25 % of requests fail: with the default max_retries = 2, about 1.6 % of builds would
    -- exhaust their retries; a campaign raises it (and re-runs what still fails, same key).
    cfg.max_retries = 8
    cfg.retry_base_delay, cfg.retry_max_delay = 0.01, 0.2
    local slept = 0
    cfg.sleep = function(s) slept = slept + s; core.sleep(s) end
    local client = assert(wxpay.new(cfg))
    sb:fault{ { fault = "500", rate = 0.2, path = BUILD }, { fault = "drop", rate = 0.05, path = BUILD } }

    local attempts, reruns, failed = 0, 0, 0
    local t0 = core.monotonic()
    for i = 1, n do
      local appid = ("wxbench%06d"):format(i)
      local params = { partner = { type = "APPID", appid = appid },
                       authorized_data = { business_type = "BUSIFAVOR_STOCK", stock_id = "RELIABLE1" } }
      local rel, berr, meta
      for pass = 1, 3 do
        rel, berr, meta = client.partnerships.build(params, { idempotency_key = "camp-" .. appid })
        if rel then break end
        attempts = attempts + (berr.attempts or 0)
        if pass < 3 then reruns = reruns + 1 end
      end
      if rel then attempts = attempts + meta.attempts else failed = failed + 1 end
    end
    local wall = core.monotonic() - t0
    sb:control("DELETE", "/faults")

    -- What the sandbox holds and saw.
    local relations = sb:control("GET", "/relations").relations
    local per_appid, duplicates = {}, 0
    for _, rel in ipairs(relations) do
      local id = rel.partner.appid
      if per_appid[id] then duplicates = duplicates + 1 end
      per_appid[id] = true
    end
    local keys, multi_key, faults = {}, 0, { ["500"] = 0, drop = 0 }
    local requests = sb:requests()
    for _, e in ipairs(requests) do
      local id = e.body and e.body:match('"appid":"([^"]+)"')
      if id then
        local k = e.headers["idempotency-key"]
        if keys[id] and keys[id] ~= k then multi_key = multi_key + 1 end
        keys[id] = keys[id] or k
      end
      if e.fault and faults[e.fault] then faults[e.fault] = faults[e.fault] + 1 end
    end

    r.builds, r.relations, r.duplicates, r.multi_key = n, #relations, duplicates, multi_key
    r.retries = attempts - (n + reruns) -- attempts beyond the first of each call
    r.resends = #requests - attempts   -- requests libcurl re-sent on its own
    r.seconds = wall
    print(("== reliability: %d builds, 20 %% answered 500 and 5 %% dropped (%s) =="):format(
      n, rawget(_G, "jit") and _G.jit.version or _VERSION))
    print(("faults injected:                   %d x 500, %d dropped connections, in %d requests"):format(
      faults["500"], faults.drop, #requests))
    print(("relations established:             %d of %d, %d built twice, %d appids sent under 2 keys (target %d, 0, 0)")
      :format(r.relations, n, duplicates, multi_key, n))
    print(("retries by the client:             %d (max_retries = %d); libcurl re-sends on reused connections: %d")
      :format(r.retries, cfg.max_retries, r.resends))
    print(("builds failed after retries:       %d, re-run by the campaign with the same key: %d"):format(
      failed, reruns))
    print(("total time:                        %.2f s (%.2f ms per build; %.2f s of it backoff sleep)"):format(
      wall, wall / n * 1000, slept))
    client.close()
  end)
  sb:stop()
  if not ok then print("reliability benchmark failed: " .. tostring(err)) end
  return r
end

return M
