-- The C core's multi interface and client.concurrent, against the real sandbox over HTTPS:
-- result shapes, the concurrency cap and the qps cap as the sandbox saw them, a 429 slowing
-- the whole batch, backoff that yields. The #scale specs run the same at scale (their
-- timing figures are in bench/scale.lua).

local core = require("wxpay.core")
local wxpay = require("wxpay")
local sandbox = require("spec.support.sandbox")

-- Upper time bounds stretch under valgrind and the sanitizers (the client is slower there).
local SLOW = require("spec.helpers").slowdown(8)

local sb
setup(function() sb = sandbox.start{ mode = "public_key" } end)
teardown(function() if sb then sb:stop() end end)
before_each(function() sb:reset() end)

local function config(extra)
  local c = {}
  for k, v in pairs(sb.config) do c[k] = v end
  for k, v in pairs(extra or {}) do c[k] = v end
  return c
end

local function build_task(client, stock, i, results)
  return function()
    local appid = string.format("wx%s%010d", stock, i)
    local rel, err, meta = client.partnerships.build({
      partner = { type = "APPID", appid = appid },
      authorized_data = { business_type = "FAVOR_STOCK", stock_id = stock },
    }, { idempotency_key = stock .. "-" .. i })
    if results then results[#results + 1] = i end
    if not rel then error(err, 0) end
    return rel.partner.appid, meta.attempts
  end
end

local function api_log()
  local out = {}
  for _, e in ipairs(sb:requests()) do
    if e.target:sub(1, 4) == "/v3/" then out[#out + 1] = e end
  end
  return out
end

-- Requests per calendar second and in the busiest sliding one-second window.
local function rate_profile(log)
  local ts = {}
  for _, e in ipairs(log) do ts[#ts + 1] = e.received_at end
  table.sort(ts)
  local per_second, max_calendar, max_sliding, j = {}, 0, 0, 1
  for i, t in ipairs(ts) do
    local s = math.floor(t)
    per_second[s] = (per_second[s] or 0) + 1
    if per_second[s] > max_calendar then max_calendar = per_second[s] end
    while t - ts[j] >= 1 do j = j + 1 end
    if i - j + 1 > max_sliding then max_sliding = i - j + 1 end
  end
  return { max_calendar = max_calendar, max_sliding = max_sliding, first = ts[1], last = ts[#ts],
           per_second = per_second }
end

-- Most requests the sandbox was holding at one time.
local function max_overlap(log)
  local ev = {}
  for _, e in ipairs(log) do
    ev[#ev + 1] = { e.received_at, 1 }
    ev[#ev + 1] = { e.answered_at, -1 }
  end
  table.sort(ev, function(a, b) if a[1] ~= b[1] then return a[1] < b[1] end return a[2] < b[2] end)
  local cur, best = 0, 0
  for _, x in ipairs(ev) do
    cur = cur + x[2]
    if cur > best then best = cur end
  end
  return best
end

describe("core.http_multi", function()
  local function get(path)
    return { method = "GET", url = sb.base_url .. path,
             headers = { "Accept: application/json", "User-Agent: spec" },
             timeout = 5 }
  end

  it("runs transfers concurrently over kept-alive connections and returns session shapes", function()
    sb:configure{ latency = 0.2 }
    local m = core.http_multi{ ca_file = sb.config.ca_file, max_connections = 4 }
    local ids = {}
    local t0 = core.monotonic()
    for i = 1, 8 do ids[i] = m:add(get("/v3/certificates?algorithm_type=RSA&i=" .. i)) end
    assert.equal(8, m:pending())
    local done, seen = {}, {}
    while #done < 8 do
      for _, d in ipairs(m:perform(2)) do
        done[#done + 1] = d
        seen[d.id] = true
      end
    end
    local elapsed = core.monotonic() - t0
    for _, id in ipairs(ids) do assert.is_true(seen[id]) end
    for _, d in ipairs(done) do
      assert.is_nil(d.err)
      -- unsigned requests: the sandbox answers 401 with a JSON body, like the session would see
      assert.equal(401, d.resp.status)
      assert.is_string(d.resp.headers["request-id"])
      assert.truthy(d.resp.body:find("SIGN_ERROR", 1, true))
      assert.is_number(d.resp.time)
    end
    -- 4 connections, two waves of 0.2 s: not 8 x 0.2 s in a row, not one wave
    assert.is_true(elapsed >= 0.4 and elapsed < 1.2 * SLOW, "elapsed " .. elapsed)
    local st = m:stats()
    assert.same({ requests = 8, connects = 4, pending = 0 }, st)
    -- a second round reuses the cached connections
    for i = 1, 4 do m:add(get("/v3/certificates?round=2&i=" .. i)) end
    local n = 0
    while n < 4 do n = n + #m:perform(2) end
    assert.equal(4, m:stats().connects)
    assert.equal(4, sb:stats().api_connections)
    m:close()
    assert.has_error(function() m:pending() end)
    m:close() -- idempotent
    assert.truthy(tostring(m):find("closed", 1, true))
  end)

  it("reports network errors and timeouts per transfer, like the session", function()
    sb:configure{ latency = 2 }
    local m = core.http_multi{ ca_file = sb.config.ca_file }
    local slow = m:add{ method = "GET", url = sb.base_url .. "/v3/slow", headers = {}, timeout = 0.3 }
    local refused = m:add{ method = "GET", url = "https://127.0.0.1:1/v3/x", headers = {}, timeout = 2 }
    local got = {}
    while (got[slow] and got[refused]) == nil do
      for _, d in ipairs(m:perform(3)) do got[d.id] = d end
    end
    assert.is_nil(got[slow].resp)
    assert.equal("timeout", got[slow].err.kind)
    assert.is_true(got[slow].err.connected)
    assert.equal("network", got[refused].err.kind)
    assert.is_false(got[refused].err.connected)
    assert.equal(7, got[refused].err.code) -- CURLE_COULDNT_CONNECT
    m:close()
  end)

  it("cancels a pending transfer and waits without spinning", function()
    sb:configure{ latency = 1 }
    local m = core.http_multi{ ca_file = sb.config.ca_file }
    local id = m:add{ method = "GET", url = sb.base_url .. "/v3/held", headers = {} }
    assert.equal(0, #m:perform(0))
    -- the TLS handshake first (its CPU is not waiting), well before the answer is due
    assert.equal(0, #m:perform(0.2))
    -- in flight, the answer 1 s away: perform sleeps on the socket and libcurl's timer
    local c1, w1 = os.clock(), core.monotonic()
    assert.equal(0, #m:perform(0.3))
    local held_wall, held_cpu = core.monotonic() - w1, os.clock() - c1
    assert.is_true(held_wall >= 0.29, "waited " .. held_wall)
    assert.is_true(held_cpu < 0.05 * SLOW, "spent " .. held_cpu .. " s CPU waiting on a transfer")
    assert.equal(1, m:pending())
    assert.is_true(m:cancel(id))
    assert.is_false(m:cancel(id))
    assert.equal(0, m:pending())
    local c0, w0 = os.clock(), core.monotonic()
    assert.equal(0, #m:perform(0.3))
    local wall, cpu = core.monotonic() - w0, os.clock() - c0
    assert.is_true(wall >= 0.29, "waited " .. wall)
    assert.is_true(cpu < 0.05 * SLOW, "spent " .. cpu .. " s CPU waiting")
    m:close()
  end)

  it("cancel_all drops every transfer, running or finished, and the handle stays usable", function()
    sb:configure{ latency = 0.2 }
    local m = core.http_multi{ ca_file = sb.config.ca_file }
    m:add(get("/v3/fast-enough"))
    m:add(get("/v3/held"))
    assert.equal(0, #m:perform(0))
    assert.equal(2, m:cancel_all())
    assert.equal(0, m:pending())
    assert.equal(0, m:cancel_all())
    -- well past the latency: nothing of theirs comes back
    local waited = core.monotonic()
    assert.same({}, m:perform(0.4))
    assert.is_true(core.monotonic() - waited >= 0.39)
    sb:configure{ latency = 0 }
    local id = m:add(get("/v3/certificates?algorithm_type=RSA&after=1"))
    local done = {}
    while #done == 0 do done = m:perform(2) end
    assert.equal(1, #done)
    assert.equal(id, done[1].id)
    assert.equal(401, done[1].resp.status)
    m:close()
    assert.has_error(function() m:cancel_all() end)
  end)

  -- The client signs the path it hands over; libcurl must not then resolve "." and "..".
  it("sends the path exactly as given, dot segments included, from the session and the multi", function()
    local paths = { "/v3/a/../b/./c?x=1", "/v3/x/%2e%2e/y", "/v3//double" }
    local s = core.http_session{ ca_file = sb.config.ca_file }
    for _, p in ipairs(paths) do assert(s:request(get(p))) end
    s:close()
    local m = core.http_multi{ ca_file = sb.config.ca_file }
    for _, p in ipairs(paths) do m:add(get(p)) end
    local n = 0
    while n < #paths do n = n + #m:perform(2) end
    m:close()
    local targets, expected = {}, {}
    for _, e in ipairs(api_log()) do targets[#targets + 1] = e.target end
    for _ = 1, 2 do
      for _, p in ipairs(paths) do expected[#expected + 1] = p end
    end
    table.sort(targets) -- the multi's three may arrive in any order
    table.sort(expected)
    assert.same(expected, targets)
  end)

  it("refuses bad requests before sending anything", function()
    local m = core.http_multi()
    assert.has_error(function() m:add("GET") end)
    assert.has_error(function() m:add{ method = "GET" } end)
    assert.has_error(function() m:add{ method = "GET", url = "https://x/", headers = { "A: b\r\nC: d" } } end)
    assert.has_error(function() m:add{ method = "GET", url = "https://x/", timeout = -1 } end)
    assert.has_error(function() core.http_multi{ max_connections = 0 } end)
    assert.equal(0, m:pending())
    m:close()
  end)
end)

describe("client.concurrent", function()
  it("returns each task's values packed, in task order, and a raising task as nil, err", function()
    local client = assert(wxpay.new(sb.config))
    sb:configure{ latency = 0.05 }
    local tasks = {}
    for i = 1, 12 do tasks[i] = build_task(client, "1000001", i) end
    tasks[13] = function() return nil, "second", nil end
    tasks[14] = function() error({ code = "MINE" }) end
    tasks[15] = function() error("plain", 0) end
    tasks[16] = function() end
    local results, summary = client.concurrent(tasks, { concurrency = 5 })
    assert.equal(16, #results)
    for i = 1, 12 do
      assert.same({ n = 2, string.format("wx1000001%010d", i), 1 }, results[i])
    end
    assert.same({ n = 3, nil, "second", nil }, results[13])
    assert.equal(2, results[14].n)
    assert.is_nil(results[14][1])
    assert.same({ code = "MINE" }, results[14][2])
    assert.same({ n = 2, nil, "plain" }, results[15])
    assert.same({ n = 0 }, results[16])
    assert.equal(12, summary.requests)
    assert.is_true(summary.max_in_flight <= 5)
    -- the client still works outside a batch (the blocking session)
    local page = assert(client.partnerships.page{ authorized_data = { business_type = "FAVOR_STOCK",
      stock_id = "1000001" }, limit = 20 })
    assert.equal(12, page.total_count or #page.data)
    client.close()
  end)

  it("calls on_progress(done, total, summary) after each task ends, a raising one too", function()
    local client = assert(wxpay.new(sb.config))
    local tasks = {}
    for i = 1, 6 do tasks[i] = build_task(client, "1000009", i) end
    tasks[7] = function() error("mine", 0) end
    local calls, finished = {}, 0
    for _, t in ipairs(tasks) do
      local task = t
      tasks[_] = function() local r = { pcall(task) }; finished = finished + 1
        if not r[1] then error(r[2], 0) end
        return table.unpack and table.unpack(r, 2) or unpack(r, 2) -- luacheck: ignore 143
      end
    end
    local _, summary = client.concurrent(tasks, { concurrency = 3, on_progress = function(done, total, s)
      calls[#calls + 1] = { done = done, total = total, finished = finished, requests = s.requests }
    end })
    assert.equal(7, #calls)
    for i, c in ipairs(calls) do
      assert.equal(i, c.done)
      assert.equal(7, c.total)
      assert.equal(i, c.finished) -- called as each task ends, not afterwards
    end
    assert.equal(summary.requests, calls[7].requests)
    assert.has_error(function() client.concurrent({}, { on_progress = 1 }) end)
    client.close()
  end)

  it("never has more than `concurrency` requests at the sandbox at once", function()
    local client = assert(wxpay.new(sb.config))
    local latency = 0.1 * SLOW -- long enough that every slot fills even where signing is slow
    sb:configure{ latency = latency }
    local tasks = {}
    for i = 1, 24 do tasks[i] = build_task(client, "1000002", i) end
    local t0 = core.monotonic()
    local results = client.concurrent(tasks, { concurrency = 4 })
    local elapsed = core.monotonic() - t0
    for i = 1, 24 do assert.equal(string.format("wx1000002%010d", i), results[i][1]) end
    local log = api_log()
    assert.equal(24, #log)
    assert.equal(4, max_overlap(log))
    assert.is_true(sb:stats().api_connections <= 4)
    -- 24 / 4 = 6 rounds: concurrent, and capped
    assert.is_true(elapsed >= 6 * latency and elapsed < 16 * latency, "elapsed " .. elapsed)
    client.close()
  end)

  it("starts no more than qps requests in any calendar second", function()
    local client = assert(wxpay.new(sb.config))
    sb:configure{ latency = 0.02 }
    local tasks = {}
    for i = 1, 45 do tasks[i] = build_task(client, "1000003", i) end
    local t0 = core.monotonic()
    local results = client.concurrent(tasks, { concurrency = 16, qps = 15 })
    local elapsed = core.monotonic() - t0
    for i = 1, 45 do assert.equal(2, results[i].n) end
    local p = rate_profile(api_log())
    assert.is_true(p.max_calendar <= 15, "a second held " .. p.max_calendar)
    -- spaced evenly (no burst): 45 starts take about 3 s, not 2 (burst of 15 each second)
    assert.is_true(elapsed > 2.85 and elapsed < 4 * SLOW, "elapsed " .. elapsed)
    assert.is_true(p.last - p.first > 2.8)
    client.close()
  end)

  it("halves the rate of the whole batch on a 429 and recovers gradually", function()
    local client = assert(wxpay.new(config{ retry_base_delay = 0.05, retry_max_delay = 0.05 }))
    sb:configure{ latency = 0.02 }
    -- the batch's first request is refused with 429
    sb:fault{ fault = "429", count = 1 }
    local tasks = {}
    for i = 1, 100 do tasks[i] = build_task(client, "1000004", i) end
    local results, summary = client.concurrent(tasks, { concurrency = 8, qps = 40 })
    for i = 1, 100 do assert.equal(2, results[i].n, tostring(results[i][2])) end
    assert.equal(1, summary.throttled)
    assert.equal(1, summary.rate_cuts)
    assert.equal(20, summary.min_rate)
    local log = api_log()
    assert.equal(101, #log) -- one retry
    assert.equal(429, log[1].status)
    local cut = log[1].answered_at
    -- the second after the cut runs at about half the rate; the batch climbs back later
    local after = 0
    for _, e in ipairs(log) do
      if e.received_at > cut + 0.05 and e.received_at <= cut + 1.05 then after = after + 1 end
    end
    assert.is_true(after <= 23, after .. " starts in the second after the 429")
    local p = rate_profile(log)
    local seconds = {}
    for s in pairs(p.per_second) do seconds[#seconds + 1] = s end
    table.sort(seconds)
    local last_full = p.per_second[seconds[#seconds - 1]]
    if SLOW == 1 then -- under valgrind the client itself cannot go much faster than 20/s
      assert.is_true(last_full > after, "recovered to " .. last_full .. " per second")
    end
    assert.is_true(p.max_calendar <= 40)
    client.close()
  end)

  it("cuts an unlimited batch to half its rate on a 429", function()
    local client = assert(wxpay.new(config{ retry_base_delay = 0.05, retry_max_delay = 0.05 }))
    sb:fault{ fault = "429", count = 1 }
    local tasks = {}
    for i = 1, 60 do tasks[i] = build_task(client, "1000005", i) end
    local results, summary = client.concurrent(tasks, { concurrency = 8 })
    for i = 1, 60 do assert.equal(2, results[i].n) end
    assert.equal(1, summary.rate_cuts)
    assert.is_number(summary.min_rate)
    client.close()
  end)

  it("lets other tasks run while one waits out its retry backoff", function()
    local client = assert(wxpay.new(config{ retry_base_delay = 0.6 * SLOW, retry_max_delay = 0.6 * SLOW }))
    -- Task 1 is the only one calling terminate, so the 500 hits it whichever task's
    -- request reaches the sandbox first (they travel on two connections).
    local params = { partner = { type = "APPID", appid = "wx1000006end" },
                     authorized_data = { business_type = "FAVOR_STOCK", stock_id = "1000006" } }
    assert(client.partnerships.build(params))
    sb:fault{ fault = "500", count = 1, path = "/v3/marketing/partnerships/terminate" }
    local order = {}
    local tasks = {
      function()
        local res, err, meta = client.partnerships.terminate(params, { idempotency_key = "1000006-end" })
        order[#order + 1] = 1
        if not res then error(err, 0) end
        return res.terminate_time, meta.attempts
      end,
      function()
        for i = 2, 6 do build_task(client, "1000006", i, order)() end
        return true
      end,
    }
    local t0 = core.monotonic()
    local results = client.concurrent(tasks, { concurrency = 2 })
    local elapsed = core.monotonic() - t0
    assert.equal(2, results[1][2]) -- two attempts
    assert.is_true(results[2][1])
    -- task 2's five calls finished while task 1 slept, so task 1 finished last
    assert.same({ 2, 3, 4, 5, 6, 1 }, order)
    assert.is_true(elapsed >= 0.3 and elapsed < 2 * SLOW, "elapsed " .. elapsed)
    client.close()
  end)

  -- An error from outside the tasks (an interrupt, a memory error) aborts the batch while
  -- its transfers are in flight; a call hook raising on the scheduler's third perform plays
  -- that part. The later batches share the multi handle and must not see those transfers.
  it("leaves nothing behind for later batches when a batch is aborted from outside", function()
    local client = assert(wxpay.new(sb.config))
    sb:configure{ latency = 0.1 }
    local probe = core.http_multi()
    local perform = probe.perform
    probe:close()
    local tasks = {}
    for i = 1, 8 do tasks[i] = build_task(client, "1000020", i) end
    local calls = 0
    debug.sethook(function()
      if debug.getinfo(2, "f").func == perform then
        calls = calls + 1
        if calls == 3 then
          debug.sethook()
          error("interrupted", 0)
        end
      end
    end, "c")
    local ok, err = pcall(client.concurrent, tasks, { concurrency = 4 })
    debug.sethook()
    assert.is_false(ok)
    assert.equal("interrupted", err)
    assert.equal(3, calls)
    -- each later batch outlasts the aborted transfers' latency, so their answers come during it
    for batch = 1, 8 do
      tasks = {}
      for i = 1, 6 do tasks[i] = build_task(client, "1000021", batch * 100 + i) end
      local results = client.concurrent(tasks, { concurrency = 3 })
      for i = 1, 6 do
        assert.same({ n = 2, string.format("wx1000021%010d", batch * 100 + i), 1 }, results[i])
      end
    end
    client.close()
  end)

  it("gives client.close() inside a task an error of its own and the others their results", function()
    local client = assert(wxpay.new(sb.config))
    sb:configure{ latency = 0.05 }
    local tasks = {}
    for i = 1, 6 do tasks[i] = build_task(client, "1000022", i) end
    tasks[7] = function() client.close() return "closed" end
    local results = client.concurrent(tasks, { concurrency = 7 })
    for i = 1, 6 do
      assert.same({ n = 2, string.format("wx1000022%010d", i), 1 }, results[i])
    end
    assert.equal(2, results[7].n)
    assert.is_nil(results[7][1])
    assert.matches("client%.close", tostring(results[7][2]))
    -- the client still works, in a batch and outside one, and closes normally afterwards
    results = client.concurrent({ build_task(client, "1000022", 7) })
    assert.equal("wx10000220000000007", results[1][1])
    assert(client.partnerships.build({ partner = { type = "APPID", appid = "wx10000220000000008" },
      authorized_data = { business_type = "FAVOR_STOCK", stock_id = "1000022" } }))
    client.close()
  end)

  it("raises on misuse and does not nest", function()
    local client = assert(wxpay.new(sb.config))
    assert.has_error(function() client.concurrent("x") end)
    assert.has_error(function() client.concurrent({ 1 }) end)
    assert.has_error(function() client.concurrent({}, { concurrency = 0 }) end)
    assert.has_error(function() client.concurrent({}, { qps = -1 }) end)
    local r = client.concurrent({ function() return client.concurrent({}) end })
    assert.is_nil(r[1][1])
    assert.truthy(tostring(r[1][2]):find("nest", 1, true))
    assert.same({}, (client.concurrent({})))
    client.close()
  end)
end)

describe("the transport contract", function()
  it("drives any transport that has multi(n) through the multi interface, whatever its name", function()
    sb:configure{ latency = 0.1 * SLOW } -- every slot fills even where signing is slow (valgrind)
    local curl = require("wxpay.transport.curl").new{ ca_file = sb.config.ca_file }
    local multis = 0
    local custom = setmetatable({
      request = curl.request, close = curl.close, stats = curl.stats,
      multi = function(n) multis = multis + 1; return curl.multi(n) end,
    }, { __tostring = function() return "my transport" end })
    local client = assert(wxpay.new(config{ transport = custom }))
    local tasks = {}
    for i = 1, 4 do tasks[i] = build_task(client, "1000004", i) end
    local results, summary = client.concurrent(tasks, { concurrency = 4 })
    for i = 1, 4 do assert.equal(string.format("wx1000004%010d", i), results[i][1]) end
    assert.equal(4, summary.requests)
    assert.equal(4, summary.max_in_flight)
    assert.is_true(multis >= 1)
    client.close()
  end)

  it("has the libcurl transport return error objects with connected and curl_code", function()
    local curl = require("wxpay.transport.curl").new{ ca_file = sb.config.ca_file }
    local resp, err = curl.request{ method = "GET", url = "https://127.0.0.1:1/v3/x", headers = {},
      timeout = 2, connect_timeout = 1 }
    assert.is_nil(resp)
    assert.same({ "network", "NETWORK_ERROR", false, 7 }, { err.kind, err.code, err.connected, err.curl_code })
    assert.matches("^wxpay: network error NETWORK_ERROR: ", tostring(err))
    curl.close()
  end)

  it("gives a task the multi interface's failures as error objects too", function()
    local client = assert(wxpay.new(config{ base_url = "https://127.0.0.1:1", max_retries = 0 }))
    local results = client.concurrent({ function()
      return client.request{ method = "GET", path = "/v3/x" }
    end })
    local err = results[1][2]
    assert.same({ "network", "NETWORK_ERROR", false, 7 }, { err.kind, err.code, err.connected, err.curl_code })
    client.close()
  end)

  it("ends every transfer in flight with the error when multi:perform itself fails", function()
    local curl = require("wxpay.transport.curl").new{ ca_file = sb.config.ca_file }
    local cancelled = 0
    local failing = setmetatable({
      request = curl.request, close = curl.close,
      multi = function(n)
        local m = curl.multi(n)
        return { add = function(_, req) return m:add(req) end,
                 cancel_all = function() cancelled = cancelled + 1; return m:cancel_all() end,
                 perform = function() return nil, { kind = "network", code = 2, message = "multi broke",
                                                    connected = true } end }
      end,
    }, { __tostring = function() return "failing multi" end })
    local client = assert(wxpay.new(config{ transport = failing, max_retries = 0 }))
    local tasks = {}
    for i = 1, 3 do tasks[i] = build_task(client, "1000005", i) end
    local results = client.concurrent(tasks, { concurrency = 3 })
    for i = 1, 3 do
      local err = results[i][2]
      assert.is_nil(results[i][1])
      assert.same({ "network", true, 2 }, { err.kind, err.connected, err.curl_code })
      assert.truthy(tostring(err):find("multi broke", 1, true))
    end
    assert.is_true(cancelled >= 1)
    client.close()
  end)

  it("builds the same header lines for every transport, refusing line breaks", function()
    local lines = require("wxpay.transport").header_lines
    assert.same({ "Accept: */*", "B: 2", "a: 1" }, lines{ a = "1", B = 2, Accept = "*/*" })
    assert.same({ "X: y" }, lines{ "X: y" })
    assert.same({}, lines(nil))
    for _, bad in ipairs({ { ["X-A"] = "v\r\nInjected: 1" }, { ["X\nA"] = "v" }, { "X: a\0b" } }) do
      local ok, msg = pcall(lines, bad)
      assert.is_false(ok)
      assert.matches("CR, LF or NUL", msg, 1, true)
      assert.is_nil(msg:find("Injected", 1, true))
    end
  end)
end)

-- The timing runs at this scale (2,000 builds against the ideal, qps = 100 over ~20 s) are
-- in bench/scale.lua; here only what must hold whatever the machine's speed.
describe("client.concurrent at scale #scale", function()
  local function run_builds(client, stock, n, opts)
    local tasks = {}
    for i = 1, n do tasks[i] = build_task(client, stock, i) end
    local results, summary = client.concurrent(tasks, opts)
    for i = 1, n do
      assert.equal(2, results[i].n, tostring(results[i][2]))
      assert.equal(string.format("wx%s%010d", stock, i), results[i][1])
    end
    return summary
  end

  -- Each appid reached the sandbox exactly once (no retries were needed, none duplicated).
  local function each_once(log, n)
    local seen = {}
    for _, e in ipairs(log) do
      local appid = e.body:match('"appid":"([^"]+)"')
      assert.is_nil(seen[appid], appid)
      seen[appid] = true
    end
    assert.equal(n, #log)
  end

  it("500 builds at 40 ms latency and concurrency 32: every result, each sent once, 32 in flight", function()
    local client = assert(wxpay.new(sb.config))
    sb:configure{ latency = 0.04 }
    local summary = run_builds(client, "2000002", 500, { concurrency = 32 })
    local log = api_log()
    each_once(log, 500)
    assert.equal(32, summary.max_in_flight)
    assert.is_true(max_overlap(log) <= 32)
    assert.is_true(sb:stats().api_connections <= 32)
    client.close()
  end)

  it("60 builds at qps = 20: every result, never more than 20 starts in a calendar second", function()
    local client = assert(wxpay.new(sb.config))
    local summary = run_builds(client, "2000003", 60, { concurrency = 32, qps = 20 })
    local log = api_log()
    each_once(log, 60)
    local p = rate_profile(log)
    assert.is_true(p.max_calendar <= 20, "a second held " .. p.max_calendar)
    -- evenly spaced at just under 20 a second: the 60 starts span about 3 s, no burst
    assert.is_true(p.last - p.first > 2.8, "starts spanned " .. (p.last - p.first))
    assert.is_true(summary.max_in_flight < 32)
    client.close()
  end)
end)
