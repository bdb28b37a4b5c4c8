-- wxpay.metrics: counters and histograms from on_request events, the Prometheus text format
-- (checked with Debian's `promtool check metrics` when installed), a client against the
-- sandbox with retries and 429s, and the CLI campaign's figures line.
local wxpay = require("wxpay")
local metrics = require("wxpay.metrics")
local h = require("spec.helpers")
local sandbox = require("spec.support.sandbox")

local PROMTOOL = "/usr/bin/promtool"
local function have_promtool()
  local f = io.open(PROMTOOL)
  if f then f:close() end
  return f ~= nil
end

-- `promtool check metrics` on `text`: exit status and output.
local function promtool(text)
  local path = os.tmpname()
  h.write(path, text)
  local p = assert(io.popen(PROMTOOL .. " check metrics < " .. h.q(path) .. " 2>&1; echo rc=$?"))
  local out = p:read("*a")
  p:close()
  os.remove(path)
  return tonumber(out:match("rc=(%d+)%s*$")), out
end

-- Series of the text: "name{labels}" -> value.
local function parse(text)
  local out = {}
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, 1) ~= "#" then
      local series, value = line:match("^(%S+) (%S+)$")
      assert(series, "bad line: " .. line)
      out[series] = tonumber(value)
    end
  end
  return out
end

local function ev(t)
  local e = { mchid = "1900000001", method = "GET", route = "/v3/marketing/busifavor/stocks/{stock_id}",
    host = "primary", budget_wait = 0, signing = 0.001, transfer = 0.02, verification = 0.0005 }
  for k, v in pairs(t) do e[k] = v end
  return e
end

local L = 'mchid="1900000001",method="GET",route="/v3/marketing/busifavor/stocks/{stock_id}"'

describe("wxpay.metrics", function()
  it("counts calls and attempts by outcome, and fills the latency histogram", function()
    local m = assert(metrics.new())
    m.on_request(ev{ phase = "attempt", attempt = 1, status = 429, error_kind = "api", duration = 0.02 })
    m.on_request(ev{ phase = "attempt", attempt = 2, status = 200, duration = 0.03 })
    m.on_request(ev{ phase = "call", status = 200, attempts = 2, retries = 1, duration = 0.07 })
    m.on_request(ev{ phase = "call", status = 200, attempts = 1, retries = 0, duration = 3 })
    local s = parse(m.render())
    assert.equal(2, s["wxpay_requests_total{" .. L .. ',status="200",error="none"}'])
    assert.equal(1, s["wxpay_attempts_total{" .. L .. ',status="429",error="api",host="primary"}'])
    assert.equal(1, s["wxpay_retries_total{" .. L .. "}"])
    assert.equal(0, s["wxpay_request_duration_seconds_bucket{" .. L .. ',le="0.05"}'])
    assert.equal(1, s["wxpay_request_duration_seconds_bucket{" .. L .. ',le="0.1"}'])
    assert.equal(1, s["wxpay_request_duration_seconds_bucket{" .. L .. ',le="2.5"}'])
    assert.equal(2, s["wxpay_request_duration_seconds_bucket{" .. L .. ',le="5"}'])
    assert.equal(2, s["wxpay_request_duration_seconds_bucket{" .. L .. ',le="+Inf"}'])
    assert.equal(2, s["wxpay_request_duration_seconds_count{" .. L .. "}"])
    assert.is_true(math.abs(3.07 - s["wxpay_request_duration_seconds_sum{" .. L .. "}"]) < 1e-9)
    assert.is_true(math.abs(0.04 - s["wxpay_stage_seconds_total{" .. L .. ',stage="transfer"}']) < 1e-9)
    m.reset()
    assert.equal("", m.render())
  end)

  it("escapes label values and a call without an answer", function()
    local m = assert(metrics.new())
    m.on_request(ev{ phase = "call", route = '/v3/a"b\\c', error_kind = "network", attempts = 1, retries = 0,
      duration = 0.001, host = nil })
    local text = m.render()
    assert.truthy(text:find('route="/v3/a\\"b\\\\c"', 1, true), text)
    assert.truthy(text:find('status="none",error="network"', 1, true), text)
  end)

  it("hostile label values (tab, CR, NUL, invalid UTF-8, quotes) keep every series and pass promtool", function()
    local m = assert(metrics.new())
    local hostile = { '/v3/a\tb', '/v3/a\rb\nc', '/v3/a\0b', '/v3/\255\254', '/v3/"\\"' }
    for _, route in ipairs(hostile) do
      m.on_request(ev{ phase = "attempt", route = route, status = 500, error_kind = "api", attempt = 1 })
      m.on_request(ev{ phase = "call", route = route, status = 500, error_kind = "api", attempts = 1,
        retries = 0, duration = 0.01 })
    end
    local text = m.render()
    assert.is_nil(text:find("[%z\r\t]"), text)
    local calls, attempts, counts = 0, 0, 0
    for series, value in pairs(parse(text)) do
      if series:find("^wxpay_requests_total{") then calls = calls + value end
      if series:find("^wxpay_attempts_total{") then attempts = attempts + value end
      if series:find("^wxpay_request_duration_seconds_count{") then counts = counts + value end
    end
    assert.equal(#hostile, calls, text)
    assert.equal(#hostile, attempts, text)
    assert.equal(#hostile, counts, text)
    if not have_promtool() then return end
    local rc, out = promtool(text)
    assert.equal(0, rc, out .. "\n" .. text)
  end)

  it("bounds the label sets: past the limit new routes are counted under route=\"other\"", function()
    local m = assert(metrics.new())
    for i = 1, metrics.MAX_SERIES + 50 do
      m.on_request(ev{ phase = "call", route = "/v3/x/" .. i, status = 200, attempts = 1, retries = 0,
        duration = 0.01 })
    end
    local s, routes, total = parse(m.render()), {}, 0
    for series, value in pairs(s) do
      local route = series:match('^wxpay_requests_total{.-route="([^"]*)"')
      if route then routes[#routes + 1] = route; total = total + value end
    end
    assert.equal(metrics.MAX_SERIES + 50, total)
    assert.is_true(#routes <= metrics.MAX_SERIES + 1, #routes)
    assert.equal(50, s['wxpay_requests_total{mchid="1900000001",method="GET",route="other",status="200",error="none"}'])
  end)

  it("refuses bad options", function()
    local _, err = metrics.new{ buckets = { 1, 0.5 } }
    assert.equal("buckets", err.field)
    _, err = metrics.new{ dict = "no_such_dict" }
    assert.equal("dict", err.field)
  end)

  it("the recorder's summary: nearest-rank p50/p99, retries and 429s", function()
    local r = metrics.recorder()
    for i = 1, 100 do r.on_request({ phase = "call", duration = i / 1000, retries = i == 7 and 2 or 0 }) end
    r.on_request({ phase = "attempt", status = 429 })
    local s = r.summary()
    assert.same({ calls = 100, p50 = 0.05, p99 = 0.099, retries = 2, status_429 = 1 }, s)
    assert.same({ calls = 0, retries = 0, status_429 = 0 }, metrics.recorder().summary())
  end)
end)

describe("wxpay.metrics with a client and the sandbox", function()
  local sb
  setup(function() sb = sandbox.start{ mode = "combined" } end)
  teardown(function()
    if sb then sb:stop() end
    h.cleanup()
  end)

  it("a 429 then success, a 500 twice then success: the text passes promtool", function()
    local m = assert(metrics.new())
    local cfg = {}
    for k, v in pairs(sb.config) do cfg[k] = v end
    cfg.sleep, cfg.retry_base_delay, cfg.retry_max_delay = function() end, 0.01, 0.02
    cfg.on_request = m.on_request
    local c = assert(wxpay.new(cfg))
    local params = { partner = { type = "APPID", appid = "wxmetrics1" },
      authorized_data = { business_type = "BUSIFAVOR_STOCK", stock_id = "2433405" } }
    sb:fault{ fault = "429", count = 1 }
    assert(c.partnerships.build(params, { idempotency_key = "metrics-1" }))
    sb:fault{ fault = "500", count = 2 }
    params.partner.appid = "wxmetrics2"
    assert(c.partnerships.build(params, { idempotency_key = "metrics-2" }))
    local text = m.render()
    local s = parse(text)
    local lb = 'mchid="' .. cfg.mchid .. '",method="POST",route="/v3/marketing/partnerships/build"'
    assert.equal(2, s["wxpay_requests_total{" .. lb .. ',status="200",error="none"}'], text)
    assert.equal(1, s["wxpay_attempts_total{" .. lb .. ',status="429",error="api",host="primary"}'], text)
    assert.equal(2, s["wxpay_attempts_total{" .. lb .. ',status="500",error="api",host="primary"}'], text)
    assert.equal(3, s["wxpay_retries_total{" .. lb .. "}"], text)
    assert.equal(2, s["wxpay_request_duration_seconds_count{" .. lb .. "}"], text)
    if not have_promtool() then
      pending("promtool is not installed (Debian package prometheus; tools/deps.sh installs it)")
      return
    end
    local rc, out = promtool(text)
    assert.equal(0, rc, out .. "\n" .. text)
  end)

  it("wxpay campaign run prints p50/p99 latency, retries and 429s", function()
    local dir = h.tmpdir()
    local config_file = dir .. "/config.json"
    h.write(config_file, require("cjson").encode(sb.config))
    local lines = { "appid,note" }
    for i = 1, 5 do lines[#lines + 1] = string.format("wxfig%012d,row", i) end
    h.write(dir .. "/plan.csv", table.concat(lines, "\n") .. "\n")
    local stock = require("spec.support.stocks").create(sb, "FAVOR_STOCK") -- the run reads it first
    sb:fault{ fault = "429", count = 2, retry_after = 0, path = "/v3/marketing/partnerships/build" }
    local out, err, rc = require("spec.support.cli").run(dir, "--config " .. config_file
      .. " campaign run " .. dir .. "/plan.csv --stock " .. stock .. " --business-type FAVOR_STOCK --journal "
      .. dir .. "/j.db --concurrency 1")
    assert.equal(0, rc, err)
    local p50, p99, retries, n429 =
      out:match("calls 5, latency p50 ([%d.]+) ms, p99 ([%d.]+) ms, (%d+) retries, (%d+) answers 429")
    assert.truthy(p50, out)
    assert.is_true(tonumber(p99) >= tonumber(p50))
    assert.equal("2", retries)
    assert.equal("2", n429)
  end)
end)
