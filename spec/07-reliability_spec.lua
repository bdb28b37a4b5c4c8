-- Reliability against the real sandbox over real HTTPS and real libcurl: retries (500, 429,
-- dropped connections), failover to the backup host, per-attempt timeouts and the overall
-- deadline, and responses that fail verification. Faults come from the sandbox's switches;
-- what the server saw comes from its request log. (The same policy is unit-tested with a
-- fake transport in 03.) Also the sandbox's random fault rates.
local wxpay = require("wxpay")
local core = require("wxpay.core")
local sandbox = require("spec.support.sandbox")

local BUILD = "/v3/marketing/partnerships/build"
local CERTS = "/v3/certificates"

-- Valgrind and ASan slow the client down; timing bounds stretch with them.
local SLOW = require("spec.helpers").slowdown(4)

local sb
setup(function() sb = sandbox.start{ mode = "combined" } end)
teardown(function() if sb then sb:stop() end end)
before_each(function() sb:reset() end)

local function copy(t)
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  return out
end

local NONE = {} -- an override that removes a config key

-- A client for `s` (default: the shared sandbox) whose backoffs cost no time: short, and a
-- `sleep` hook that returns at once (nothing here depends on the client waiting).
local function client(overrides, s)
  local cfg = copy((s or sb).config)
  cfg.retry_base_delay = 0.01
  cfg.retry_max_delay = 0.05
  cfg.sleep = function() end
  for k, v in pairs(overrides or {}) do
    if v == NONE then cfg[k] = nil else cfg[k] = v end
  end
  return assert(wxpay.new(cfg))
end

local function params(appid)
  return { partner = { type = "APPID", appid = appid },
           authorized_data = { business_type = "BUSIFAVOR_STOCK", stock_id = "2433405" } }
end

local function nonce_of(e)
  return e.headers.authorization:match('nonce_str="([^"]+)"')
end

local function distinct(list, f)
  local seen, n = {}, 0
  for _, e in ipairs(list) do
    local v = f(e)
    if v ~= nil and not seen[v] then seen[v] = true; n = n + 1 end
  end
  return n
end

local function relations_for(s, appid)
  local n = 0
  for _, rel in ipairs(s:control("GET", "/relations").relations) do
    if rel.partner.appid == appid then n = n + 1 end
  end
  return n
end

-- A fake monotonic clock for the `monotonic` hook, moved on by the `sleep` hook (and by
-- `advance`), so waits the client decides on cost no real time.
local function fake_clock()
  local now, slept = 1000, {}
  local function advance(s) now = now + s end
  return { monotonic = function() return now end, slept = slept, advance = advance,
           sleep = function(s) slept[#slept + 1] = s; advance(s) end }
end

local function elapsed(f)
  local t0 = core.monotonic()
  local a, b, c = f()
  return core.monotonic() - t0, a, b, c
end

describe("retries over real sockets", function()
  it("500 twice then success: attempts = 3, three requests, one Idempotency-Key, fresh signatures", function()
    local c = client()
    sb:fault{ fault = "500", count = 2 }
    local rel, err, meta = c.partnerships.build(params("wxretry500"), { idempotency_key = "retry-500" })
    assert.is_nil(err)
    assert.equal("ESTABLISHED", rel.state)
    assert.equal(3, meta.attempts)
    local log = sb:requests()
    assert.equal(3, #log)
    assert.same({ 500, 500, 200 }, { log[1].status, log[2].status, log[3].status })
    assert.equal(1, distinct(log, function(e) return e.headers["idempotency-key"] end))
    assert.equal("retry-500", log[1].headers["idempotency-key"])
    assert.equal(3, distinct(log, nonce_of))
    assert.equal(3, distinct(log, function(e) return e.headers.authorization end))
    assert.equal(1, distinct(log, function(e) return e.body end)) -- identical parameters
    assert.equal(1, relations_for(sb, "wxretry500"))
  end)

  it("202 twice then success: the same request repeated, one relation with a state", function()
    local c = client()
    sb:fault{ fault = "202", count = 2 }
    local rel, err, meta = c.partnerships.build(params("wxretry202"), { idempotency_key = "retry-202" })
    assert.is_nil(err)
    assert.equal("ESTABLISHED", rel.state)
    assert.equal(3, meta.attempts)
    local log = sb:requests()
    assert.same({ 202, 202, 200 }, { log[1].status, log[2].status, log[3].status })
    assert.equal(1, distinct(log, function(e) return e.headers["idempotency-key"] end))
    assert.equal(1, distinct(log, function(e) return e.body end))
    assert.equal(3, distinct(log, nonce_of))
    assert.equal(1, relations_for(sb, "wxretry202"))
  end)

  it("202 until the retries are spent: a retryable api error with status 202, never data", function()
    local c = client{ max_retries = 2 }
    sb:fault{ fault = "202", count = 3 }
    local rel, err, meta = c.partnerships.build(params("wxonly202"), { idempotency_key = "only-202" })
    assert.is_nil(rel)
    assert.is_nil(meta)
    assert.equal("api", err.kind)
    assert.equal(202, err.status)
    assert.is_true(err.retryable)
    assert.equal(3, err.attempts)
    assert.equal("only-202", err.idempotency_key)
    assert.equal(3, #sb:requests())
    assert.equal(0, relations_for(sb, "wxonly202"))
  end)

  it("429 twice without Retry-After then success: attempts = 3 with the backoff's delays", function()
    local slept = {}
    local c = client{ sleep = function(s) slept[#slept + 1] = s end }
    sb:fault{ fault = "429", count = 2 }
    local rel, err, meta = c.partnerships.build(params("wxretry429"), { idempotency_key = "retry-429" })
    assert.is_nil(err)
    assert.truthy(rel)
    assert.equal(3, meta.attempts)
    local log = sb:requests()
    assert.same({ 429, 429, 200 }, { log[1].status, log[2].status, log[3].status })
    assert.equal(1, distinct(log, function(e) return e.headers["idempotency-key"] end))
    assert.equal(3, distinct(log, nonce_of))
    -- Equal jitter: backoff n lies in [d/2, d] with d = min(max, base * 2^(n-1)).
    assert.equal(2, #slept)
    assert.is_true(slept[1] >= 0.005 and slept[1] <= 0.01)
    assert.is_true(slept[2] >= 0.01 and slept[2] <= 0.02)
  end)

  it("429 with Retry-After: 1 waits one second before the retry", function()
    local clock = fake_clock()
    local c = client{ sleep = clock.sleep, monotonic = clock.monotonic }
    sb:fault{ fault = "429", count = 1, retry_after = 1 }
    local rel, err, meta = c.partnerships.build(params("wxretryafter"), { idempotency_key = "retry-after" })
    assert.is_nil(err)
    assert.truthy(rel)
    assert.equal(2, meta.attempts)
    assert.same({ 1 }, clock.slept)
    assert.same({ 429, 200 }, { sb:requests()[1].status, sb:requests()[2].status })
  end)

  it("429 with a Retry-After over retry_after_max waits retry_after_max", function()
    local clock = fake_clock()
    local c = client{ sleep = clock.sleep, monotonic = clock.monotonic, retry_after_max = 3 }
    sb:fault{ fault = "429", count = 1, retry_after = 120 }
    local rel, err, meta = c.partnerships.build(params("wxretrycap"), { idempotency_key = "retry-cap" })
    assert.is_nil(err)
    assert.truthy(rel)
    assert.equal(2, meta.attempts)
    assert.same({ 3 }, clock.slept)
    assert.equal(2, #sb:requests())
  end)

  it("a connection dropped twice (fresh connections) then success: attempts = 3", function()
    local c = client()
    sb:fault{ fault = "drop", count = 2 }
    local rel, err, meta = c.partnerships.build(params("wxdrop"), { idempotency_key = "retry-drop" })
    assert.is_nil(err)
    assert.truthy(rel)
    assert.equal(3, meta.attempts)
    local log = sb:requests()
    assert.equal(3, #log)
    assert.same({ "drop", "drop" }, { log[1].fault, log[2].fault })
    assert.equal(1, distinct(log, function(e) return e.headers["idempotency-key"] end))
    assert.equal(3, distinct(log, nonce_of))
    assert.equal(1, relations_for(sb, "wxdrop"))
  end)

  it("a connection dropped on a reused keep-alive connection: libcurl's re-send plus the client's retries", function()
    local c = client()
    assert(c.request{ method = "GET", path = CERTS }) -- leaves a kept-alive connection
    sb:control("DELETE", "/requests")
    sb:fault{ fault = "drop", count = 2 }
    local rel, err, meta = c.partnerships.build(params("wxdropwarm"), { idempotency_key = "retry-drop-warm" })
    assert.is_nil(err)
    assert.truthy(rel)
    local log = sb:requests()
    -- libcurl transparently re-sends a request once, on a new connection, when a REUSED
    -- connection dies before any response byte (it cannot tell a server that closed an idle
    -- connection from one that dropped the request). That re-send carries the same bytes,
    -- so the same Authorization, and is invisible to the client: the sandbox sees one more
    -- request than `attempts`. Each client attempt signs afresh, so the distinct
    -- Authorization values are exactly the attempts.
    assert.is_true(meta.attempts >= 2)
    assert.is_true(#log > meta.attempts) -- the first drop hit a reused connection
    assert.equal(meta.attempts, distinct(log, function(e) return e.headers.authorization end))
    -- Every request is either a new attempt (a signature not seen before) or libcurl's
    -- re-send of the one just before, on a new connection.
    local seen = {}
    for i, e in ipairs(log) do
      local auth = e.headers.authorization
      if seen[auth] then
        assert.equal(log[i - 1].headers.authorization, auth)
        assert.are_not.equal(log[i - 1].connection, e.connection)
      end
      seen[auth] = true
    end
    assert.equal(1, distinct(log, function(e) return e.headers["idempotency-key"] end))
    assert.equal(200, log[#log].status)
    assert.equal(1, relations_for(sb, "wxdropwarm"))
  end)

  it("a dropped POST without an Idempotency-Key is not retried (the server may have acted)", function()
    local c = client()
    sb:fault{ fault = "drop", count = 1 }
    local data, err = c.request{ method = "POST", path = BUILD, body = params("wxunkeyed") }
    assert.is_nil(data)
    assert.equal("network", err.kind)
    assert.equal("not idempotent", err.retry_skipped)
    assert.equal(1, err.attempts)
    assert.equal(1, #sb:requests())
  end)

  it("a POST without an Idempotency-Key reaches the server at most once, even on a kept-alive connection", function()
    local c = client()
    -- Warm a connection first: on a reused connection the server drops, libcurl would
    -- otherwise re-send the request by itself on a new one.
    assert(c.partnerships.build(params("wxwarmup"), { idempotency_key = "warm-1" }))
    sb:fault{ fault = "drop", count = 2, path = BUILD }
    local data, err = c.request{ method = "POST", path = BUILD, body = params("wxonce") }
    assert.is_nil(data)
    assert.equal("network", err.kind)
    assert.equal("not idempotent", err.retry_skipped)
    local posts = 0
    for _, e in ipairs(sb:requests()) do
      if e.body and e.body:find("wxonce", 1, true) then posts = posts + 1 end
    end
    assert.equal(1, posts)
    -- Keyed requests still use the kept-alive connection.
    sb:control("DELETE", "/faults")
    local before = sb:stats().api_connections
    assert(c.partnerships.build(params("wxafter1"), { idempotency_key = "after-1" }))
    assert(c.partnerships.build(params("wxafter2"), { idempotency_key = "after-2" }))
    assert.is_true(sb:stats().api_connections - before <= 1)
  end)

  it("retries exhausted: an api error with retryable = true after exactly max_retries + 1 requests", function()
    for _, n in ipairs({ 0, 1, 2, 3 }) do
      sb:reset()
      sb:fault{ fault = "500", count = 10 }
      local c = client{ max_retries = n }
      local rel, err = c.partnerships.build(params("wxexhaust" .. n), { idempotency_key = "exhaust-" .. n })
      assert.is_nil(rel)
      assert.equal("api", err.kind)
      assert.equal(500, err.status)
      assert.equal("SYSTEM_ERROR", err.code)
      assert.is_true(err.retryable)
      assert.equal(n + 1, err.attempts)
      assert.equal("exhaust-" .. n, err.idempotency_key)
      assert.equal(n + 1, #sb:requests())
      assert.equal(0, relations_for(sb, "wxexhaust" .. n))
    end
    -- The per-call option wins over the client's.
    sb:reset()
    sb:fault{ fault = "429", count = 10 }
    local _, err = client{ max_retries = 5 }.partnerships.build(params("wxexhaustopt"),
      { idempotency_key = "exhaust-opt", max_retries = 1 })
    assert.same({ "api", 429, true, 2 }, { err.kind, err.status, err.retryable, err.attempts })
    assert.equal(2, #sb:requests())
  end)

  it("a 400 is never retried", function()
    local c = client()
    assert(c.partnerships.build(params("wx400"), { idempotency_key = "first-key" }))
    sb:control("DELETE", "/requests")
    -- The same relation under another key: 400 INVALID_REQUEST.
    local rel, err = c.partnerships.build(params("wx400"), { idempotency_key = "second-key" })
    assert.is_nil(rel)
    assert.same({ "api", 400, false, 1 }, { err.kind, err.status, err.retryable, err.attempts })
    assert.equal("INVALID_REQUEST", err.code)
    -- The same key with a different body: 400 too.
    local _, err2 = c.partnerships.build(params("wx400other"), { idempotency_key = "first-key" })
    assert.same({ "api", 400, false, 1 }, { err2.kind, err2.status, err2.retryable, err2.attempts })
    assert.equal(2, #sb:requests())
    assert.equal(1, relations_for(sb, "wx400"))
    assert.equal(0, relations_for(sb, "wx400other"))
  end)

  it("a build the server processed but whose answer timed out is retried with the same key and replayed", function()
    local c = client{ timeout = 1 }
    sb:fault{ fault = "delay", seconds = 2, count = 1 }
    local rel, err, meta = c.partnerships.build(params("wxreplay"), { idempotency_key = "replay-key" })
    assert.is_nil(err)
    assert.equal("ESTABLISHED", rel.state)
    assert.equal(2, meta.attempts)
    local log = sb:requests()
    assert.equal(2, #log)
    assert.equal("delay", log[1].fault)
    assert.same({ "replay-key", "replay-key" },
                { log[1].headers["idempotency-key"], log[2].headers["idempotency-key"] })
    assert.equal(log[1].body, log[2].body)
    assert.equal(2, distinct(log, nonce_of))
    assert.equal(1, relations_for(sb, "wxreplay"))
    -- The replay is the first answer again: same build_time as the stored relation.
    local stored = sb:control("GET", "/relations").relations[1]
    assert.equal(stored.build_time, rel.build_time)
  end)
end)

describe("failover to the backup host", function()
  -- A sandbox started on `port` shares the keys directory with `sb`, so it signs with the
  -- same keys and serves the same TLS certificate.
  local function start_on(port)
    return sandbox.start{ mode = "combined", args = { "--port", tostring(port) } }
  end

  it("a refused primary: the backup answers, later calls go straight to it until the cool-down ends", function()
    local primary = sandbox.start{ mode = "combined" }
    local primary_url = primary.base_url
    local port = assert(tonumber(primary_url:match(":(%d+)$")))
    primary:stop() -- its port now refuses connections
    local cooldown = 60 -- the default; the fake clock makes it free
    local clock = fake_clock()
    local tried = {}
    local c = client{ base_url = primary_url, backup_url = sb.base_url, failover_cooldown = cooldown,
      sleep = clock.sleep, monotonic = clock.monotonic,
      logger = function(_, message, fields)
        if message == "wxpay request" then tried[#tried + 1] = fields.base_url end
      end }

    local rel, err, meta = c.partnerships.build(params("wxfailover1"), { idempotency_key = "fo-1" })
    assert.is_nil(err)
    assert.truthy(rel)
    assert.equal(1, meta.attempts) -- a connect failure answered by the backup is not a retry
    assert.equal(sb.base_url, meta.base_url)
    assert.same({ primary_url, sb.base_url }, tried)

    -- The primary is back, but the backup stays preferred until the cool-down's last moment.
    primary = start_on(port)
    finally(function() primary:stop() end)
    clock.advance(cooldown - 0.001)
    tried = {}
    local rel2, err2, meta2 = c.partnerships.build(params("wxfailover2"), { idempotency_key = "fo-2" })
    assert.is_nil(err2)
    assert.truthy(rel2)
    assert.equal(sb.base_url, meta2.base_url)
    assert.same({ sb.base_url }, tried)
    assert.same({}, primary:requests())
    assert.equal(2, #sb:requests())

    -- After the cool-down the primary is tried first again, and answers.
    clock.advance(0.002)
    tried = {}
    local rel3, err3, meta3 = c.partnerships.build(params("wxfailover3"), { idempotency_key = "fo-3" })
    assert.is_nil(err3)
    assert.truthy(rel3)
    assert.equal(primary_url, meta3.base_url)
    assert.same({ primary_url }, tried)
    assert.equal(1, #primary:requests())
    assert.equal(2, #sb:requests())
    assert.same({}, clock.slept) -- nothing waited
  end)

  it("with backup_url = false a refused primary is a network error, retried max_retries times", function()
    local gone = sandbox.start{ mode = "combined" }
    local url = gone.base_url
    gone:stop()
    local c = client{ base_url = url, backup_url = false, max_retries = 2 }
    local rel, err = c.partnerships.build(params("wxnobackup"), { idempotency_key = "nb-1" })
    assert.is_nil(rel)
    assert.same({ "network", true, 3, false }, { err.kind, err.retryable, err.attempts, err.connected })
    assert.same({}, sb:requests())
  end)
end)

describe("timeouts and the deadline", function()
  it("a 3 s server delay with timeout = 1 is a timeout error in under 2 s", function()
    local c = client{ timeout = 1, max_retries = 0 }
    sb:fault{ fault = "delay", seconds = 3, count = 1 }
    local t, data, err = elapsed(function() return c.request{ method = "GET", path = CERTS } end)
    assert.is_nil(data)
    assert.same({ "timeout", "TIMEOUT", true, 1 }, { err.kind, err.code, err.retryable, err.attempts })
    assert.is_true(t >= 0.9, "took " .. t)
    assert.is_true(t < 2 * SLOW, "took " .. t)
    -- The session recovers: the next request on the same client succeeds.
    assert.truthy(c.request{ method = "GET", path = CERTS })
  end)

  it("each retried attempt times out on its own, in under 2 s", function()
    local starts = {}
    local c = client{ timeout = 1, max_retries = 2, logger = function(_, message)
      if message == "wxpay request" then starts[#starts + 1] = core.monotonic() end
    end }
    sb:fault{ fault = "delay", seconds = 3, count = 3 }
    local t, data, err = elapsed(function() return c.request{ method = "GET", path = CERTS } end)
    local t_end = core.monotonic()
    assert.is_nil(data)
    assert.same({ "timeout", 3 }, { err.kind, err.attempts })
    assert.equal(3, #starts)
    starts[4] = t_end
    for i = 1, 3 do
      local d = starts[i + 1] - starts[i] -- attempt plus the short backoff after it
      assert.is_true(d >= 0.9 and d < 2 * SLOW, "attempt " .. i .. " took " .. d)
    end
    assert.is_true(t < 3 * 2 * SLOW)
  end)

  it("the deadline bounds all attempts together", function()
    local c = client{ timeout = 1, max_retries = 10, deadline = 2.5 }
    sb:fault{ fault = "delay", seconds = 3, count = 10 }
    local t, data, err = elapsed(function() return c.request{ method = "GET", path = CERTS } end)
    assert.is_nil(data)
    assert.equal("timeout", err.kind)
    assert.is_true(err.deadline_exceeded)
    assert.is_true(err.attempts >= 2 and err.attempts <= 4, "attempts " .. err.attempts)
    assert.is_true(t >= 2.3, "took " .. t)
    assert.is_true(t < 2.5 + 0.5 * SLOW, "took " .. t)
    -- A per-call deadline overrides the client's.
    sb:reset()
    sb:fault{ fault = "delay", seconds = 3, count = 10 }
    local t2, _, err2 = elapsed(function() return c.request{ method = "GET", path = CERTS, deadline = 1.2 } end)
    assert.equal("timeout", err2.kind)
    assert.is_true(t2 < 1.2 + 0.5 * SLOW, "took " .. t2)
  end)
end)

describe("responses failing verification", function()
  local EXPECTED = {
    tamper = { check = "signature", text = "bad signature" },
    unsigned = { check = "headers", text = "missing Wechatpay%-Timestamp" },
    stale = { check = "timestamp", text = "from local time" },
    probe = { check = "probe", text = "WECHATPAY/SIGNTEST/" },
  }
  for _, fault in ipairs({ "tamper", "unsigned", "stale", "probe" }) do
    it(("a %s response is a signature error, never retried into a success, data never returned"):format(fault),
      function()
        local logged = {}
        local c = client{ max_retries = 3, logger = function(level, message, fields)
          logged[#logged + 1] = { level, message, fields }
        end }
        local appid = "wxsig" .. fault
        sb:fault{ fault = fault, count = 1 }
        local rel, err, meta = c.partnerships.build(params(appid), { idempotency_key = "sig-" .. fault })
        assert.is_nil(rel)
        assert.is_nil(meta)
        assert.equal("signature", err.kind)
        assert.is_false(err.retryable)
        assert.equal(1, err.attempts)
        assert.equal(EXPECTED[fault].check, err.check)
        assert.equal(200, err.status)
        assert.is_nil(err.data)
        local s = tostring(err)
        assert.matches(EXPECTED[fault].text, s)
        -- The diagnostic: which check, the Request-ID and the serial seen.
        assert.matches("^%x+$", err.request_id)
        assert.truthy(s:find("request_id=" .. err.request_id, 1, true))
        if fault == "unsigned" then
          assert.is_nil(err.serial)
        else
          assert.equal(sb.config.wechatpay_public_key_id, err.serial)
          assert.truthy(s:find("serial=" .. err.serial, 1, true))
        end
        if fault == "probe" then assert.is_true(err.probe) end
        -- One request only, though max_retries = 3: the build did happen on the server.
        assert.equal(1, #sb:requests())
        assert.equal(1, relations_for(sb, appid))
        local warned = false
        for _, l in ipairs(logged) do
          if l[2] == "wxpay response rejected" then warned = true end
          assert.are_not.equal("wxpay retry", l[2])
        end
        assert.is_true(warned)
        -- The caller may repeat it with the same key: the replay verifies, nothing is built twice.
        local again, aerr = c.partnerships.build(params(appid), { idempotency_key = "sig-" .. fault })
        assert.is_nil(aerr)
        assert.equal("ESTABLISHED", again.state)
        assert.equal(1, relations_for(sb, appid))
      end)
  end

  it("a response signed with an unknown certificate names the serial it saw", function()
    local info = sb:control("GET", "/info")
    -- Only the primary platform certificate, no public key and no apiv3_key (no download).
    local c = client{ wechatpay_public_key_file = NONE, wechatpay_public_key_id = NONE, apiv3_key = NONE }
    sb:configure{ signing_certificate = "secondary" }
    local rel, err = c.partnerships.build(params("wxunknown"), { idempotency_key = "unknown-serial" })
    assert.is_nil(rel)
    assert.same({ "signature", "serial", 1 }, { err.kind, err.check, err.attempts })
    assert.equal(info.platform2_serial_no:upper(), err.serial:upper())
    assert.matches("unknown Wechatpay%-Serial", tostring(err))
    assert.equal(1, #sb:requests())
  end)
end)

describe("sandbox random fault rates", function()
  local function statuses(s, n)
    local reqs = {}
    for i = 1, n do reqs[i] = { target = CERTS } end
    local out = {}
    for i, r in ipairs(s:http(reqs)) do out[i] = r.status end
    return out
  end

  local function count(list, v)
    local n = 0
    for _, x in ipairs(list) do if x == v then n = n + 1 end end
    return n
  end

  it("fails about `rate` of matching requests until cleared, the same way for the same seed", function()
    sb:fault{ seed = 7 }
    sb:fault{ fault = "500", rate = 0.3, path = CERTS }
    local listed = sb:control("GET", "/faults").faults
    assert.same({ { fault = "500", rate = 0.3, path = CERTS } }, listed)
    local first = statuses(sb, 200)
    local fails = count(first, 500)
    assert.equal(200, fails + count(first, 200))
    assert.is_true(fails >= 35 and fails <= 85, "500s: " .. fails) -- 60 expected; ~5 sigma
    -- Other paths are not affected by a fault with a path.
    local other = sb:http{ { target = "/v3/elsewhere" }, { target = "/v3/elsewhere" } }
    assert.same({ 404, 404 }, { other[1].status, other[2].status })
    -- reset re-seeds: the same fault gives the same sequence.
    sb:reset()
    sb:fault{ fault = "500", rate = 0.3, path = CERTS }
    assert.same(first, statuses(sb, 200))
    -- Another seed, another sequence.
    sb:reset()
    sb:fault{ { seed = 8 }, { fault = "500", rate = 0.3, path = CERTS } }
    assert.are_not.same(first, statuses(sb, 200))
    -- Cleared: no more faults.
    sb:control("DELETE", "/faults")
    assert.equal(50, count(statuses(sb, 50), 200))
  end)

  it("--fault-seed makes a fresh sandbox reproduce the same faults", function()
    local other = sandbox.start{ mode = "combined", fault_seed = 42 }
    finally(function() other:stop() end)
    other:fault{ fault = "429", rate = 0.25 }
    sb:fault{ { seed = 42 }, { fault = "429", rate = 0.25 } }
    local a, b = statuses(other, 100), statuses(sb, 100)
    assert.same(a, b)
    assert.is_true(count(a, 429) > 0 and count(a, 200) > 0)
  end)

  it("picks among several rates of one class in proportion, and counted faults go first", function()
    sb:fault{ { seed = 3 }, { fault = "500", rate = 0.5 }, { fault = "429", rate = 0.5 } }
    local s = statuses(sb, 60)
    assert.equal(60, count(s, 500) + count(s, 429)) -- the rates add up to 1: every request fails
    assert.is_true(count(s, 500) > 10 and count(s, 429) > 10)
    sb:reset()
    sb:fault{ { fault = "500", rate = 1 }, { fault = "429", count = 2 } }
    assert.same({ 429, 429, 500 }, statuses(sb, 3))
  end)

  it("refuses bad rates", function()
    for _, spec in ipairs({ { fault = "500", rate = 0 }, { fault = "500", rate = 1.5 },
                            { fault = "500", rate = "x" }, { fault = "500", rate = 0.5, count = 2 },
                            { seed = 1.5 } }) do
      local res, status = sb:control("POST", "/faults", spec)
      assert.equal(400, status)
      assert.truthy(res.error)
    end
    assert.same({}, sb:control("GET", "/faults").faults)
  end)

  it("a client builds through 500s and drops at random with no duplicates", function()
    sb:fault{ { seed = 11 }, { fault = "500", rate = 0.2 }, { fault = "drop", rate = 0.1 } }
    local c = client{ max_retries = 10 }
    local retries = 0
    for i = 1, 30 do
      local appid = ("wxrate%04d"):format(i)
      local rel, err, meta = c.partnerships.build(params(appid), { idempotency_key = "rate-" .. appid })
      assert.is_nil(err)
      assert.equal("ESTABLISHED", rel.state)
      retries = retries + meta.attempts - 1
    end
    assert.is_true(retries > 0)
    local relations = sb:control("GET", "/relations")
    assert.equal(30, relations.count)
    local keys = {}
    for _, e in ipairs(sb:requests()) do
      local appid = e.body:match('"appid":"([^"]+)"')
      keys[appid] = keys[appid] or {}
      keys[appid][e.headers["idempotency-key"]] = true
    end
    for appid, set in pairs(keys) do
      local n = 0
      for _ in pairs(set) do n = n + 1 end
      assert.equal(1, n, appid .. " was sent under several keys")
    end
  end)
end)
