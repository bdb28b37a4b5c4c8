-- wxpay.store in plain Lua: open's forms, every operation on the memory store and on a real
-- redis-server (lua-redis), the expiring lock, and the rate budget (wxpay.store.budget):
-- the same pacing as client.concurrent's limiter, several OS processes sharing one Redis
-- budget, halving on 429 and the climb back.
local socket = require("socket")
local store = require("wxpay.store")
local budget = require("wxpay.store.budget")
local concurrent = require("wxpay.concurrent")
local redis_server = require("spec.support.redis")
local helpers = require("spec.helpers")

local MCHID = "1900000001"

-- One RESP exchange on a connection of our own: the commands in `cmds` in turn (e.g. a
-- SELECT first); the last reply (string, number, or nil) and an error reply's text.
local function raw(port, cmds)
  local c = socket.tcp()
  c:settimeout(2)
  assert(c:connect("127.0.0.1", port))
  local value, err
  for _, args in ipairs(cmds) do
    local parts = { "*" .. #args .. "\r\n" }
    for _, a in ipairs(args) do
      a = tostring(a)
      parts[#parts + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n"
    end
    assert(c:send(table.concat(parts)))
    local line = assert(c:receive("*l"))
    local p, rest = line:sub(1, 1), line:sub(2)
    value, err = nil, nil
    if p == "$" then
      local n = tonumber(rest)
      if n >= 0 then value = assert(c:receive(n + 2)):sub(1, -3) end
    elseif p == ":" then
      value = tonumber(rest)
    elseif p == "+" then
      value = rest
    elseif p == "-" then
      err = rest
    end
  end
  c:close()
  return value, err
end

-- The largest number of `starts` (seconds, any order) inside one closed 1-s window.
local function busiest_second(starts)
  table.sort(starts)
  local most, j = 0, 1
  for i = 1, #starts do
    while starts[i] - starts[j] > 1 do j = j + 1 end
    most = math.max(most, i - j + 1)
  end
  return most
end

---------------------------------------------------------------------------------------------
-- open
---------------------------------------------------------------------------------------------

describe("wxpay.store.open", function()
  local function config_error(spec, field, opts)
    local s, err = store.open(spec, opts)
    assert.is_nil(s)
    assert.equal("config", err.kind)
    assert.equal(field, err.field)
    return err
  end

  it("opens the memory store for nil and \"memory\"", function()
    assert.equal("memory", store.open().kind)
    assert.equal("memory", store.open("memory").kind)
  end)

  it("rejects unknown forms, naming store", function()
    config_error("mysql://x", "store")
    config_error(42, "store")
    config_error("redis://localhost", "store")
    config_error("redis://localhost:6379/x", "store")
    config_error("ngx:", "store")
    config_error("ngx:wxpay", "store") -- no ngx.shared in plain Lua
  end)

  it("refuses a password in a redis:// URL without echoing it", function()
    local err = config_error("redis://:hunter2secret@127.0.0.1:6379", "store")
    assert.not_matches("hunter2secret", tostring(err), 1, true)
    assert.matches("table form", tostring(err), 1, true)
  end)

  it("checks the Redis table form field by field", function()
    config_error({ host = "" }, "store.host")
    config_error({ host = "127.0.0.1", port = 70000 }, "store.port")
    config_error({ host = "127.0.0.1", port = 1.5 }, "store.port")
    config_error({ host = "127.0.0.1", db = -1 }, "store.db")
    config_error({ host = "127.0.0.1", timeout = 0 }, "store.timeout")
    config_error({ host = "127.0.0.1", pool_size = 0 }, "store.pool_size")
    config_error({ host = "127.0.0.1", keepalive = "60" }, "store.keepalive")
    config_error({ host = "127.0.0.1", password = 7 }, "store.password")
    assert.equal("redis", store.open({ host = "127.0.0.1", port = 6379, db = 2, password = "x" }).kind)
    assert.equal("redis", store.open("redis://127.0.0.1:6379/2").kind)
  end)

  it("resty.redis pools: one per host, port, db and password (the password never in the name)", function()
    local pools = {}
    local fake = { new = function() return {
      set_timeout = function() end, set_keepalive = function() end,
      get_reused_times = function() return 1 end, -- reused: no AUTH, the pool must be right
      connect = function(_, _, _, o) pools[#pools + 1] = o.pool; return true end,
      get = function() return "v" end,
    } end }
    local saved_ngx, saved_mod = rawget(_G, "ngx"), package.loaded["wxpay.store.redis"]
    finally(function()
      rawset(_G, "ngx", saved_ngx)
      package.loaded["resty.redis"], package.loaded["wxpay.store.redis"] = nil, saved_mod
    end)
    rawset(_G, "ngx", { null = {} })
    package.loaded["resty.redis"], package.loaded["wxpay.store.redis"] = fake, nil
    local redis = require("wxpay.store.redis")
    for _, cfg in ipairs({ { password = "pw-alpha" }, { password = "pw-beta" }, {},
                           { password = "pw-alpha", db = 3 }, { password = "pw-alpha" } }) do
      cfg.host, cfg.port = "127.0.0.1", 6379
      assert.equal("v", assert(redis.new(cfg, { driver = "resty" })):get("k"))
    end
    assert.equal(5, #pools)
    for i = 1, 4 do
      for j = i + 1, 4 do assert.are_not.equal(pools[i], pools[j]) end
      assert.not_matches("pw%-", pools[i])
    end
    assert.equal(pools[1], pools[5])
  end)

  it("names the missing function of a custom store", function()
    local err = config_error({ get = print, set = print, add = print, incr = print }, "store.delete")
    assert.matches("store.delete is a nil", err.message, 1, true)
  end)
end)

---------------------------------------------------------------------------------------------
-- The operations, the same on every backend
---------------------------------------------------------------------------------------------

local function operations(name, open)
  describe(name .. " operations", function()
    local s

    before_each(function()
      s = assert(open()):scope(MCHID .. "-" .. math.random(1, 1e9))
    end)

    it("get, set, add, incr and delete", function()
      assert.is_nil(s:get("a"))
      assert.is_true(s:set("a", "one"))
      assert.equal("one", s:get("a"))
      assert.is_false(s:add("a", "two"))
      assert.equal("one", s:get("a"))
      assert.is_true(s:add("b", "two"))
      assert.equal("two", s:get("b"))
      assert.equal(2, s:incr("n", 2))
      assert.equal(5, s:incr("n", 3))
      assert.equal(4.5, s:incr("n", -0.5))
      assert.is_true(s:delete("a"))
      assert.is_true(s:delete("a")) -- absent is fine
      assert.is_nil(s:get("a"))
      local binary = "\0\1\255 \r\n" .. ("x"):rep(3000)
      assert.is_true(s:set("bin", binary))
      assert.equal(binary, s:get("bin"))
    end)

    it("returns invalid_argument naming the field, and does nothing", function()
      for _, case in ipairs({
        { "key", function() return s:get("") end },
        { "key", function() return s:set(("k"):rep(600), "v") end },
        { "value", function() return s:set("k", 5) end },
        { "ttl", function() return s:set("k", "v", -1) end },
        { "ttl", function() return s:add("k", "v", 0 / 0) end },
        { "by", function() return s:incr("k", "1") end },
        { "mchid", function() return s:scope("a:b") end },
      }) do
        local v, err = case[2]()
        assert.is_nil(v)
        assert.equal("invalid_argument", err.kind)
        assert.equal(case[1], err.field)
      end
      assert.is_nil(s:get("k"))
    end)

    it("keeps scopes apart", function()
      local other = assert(s:scope("1900000002"))
      assert.is_true(s:set("k", "mine"))
      assert.is_nil(other:get("k"))
      assert.is_true(other:set("k", "theirs"))
      assert.equal("mine", s:get("k"))
    end)

    it("lock: one holder; unlock only by the holder", function()
      local a = assert(store.lock(s, "certs:lock", 10))
      assert.is_false(store.lock(s, "certs:lock", 10))
      assert.is_false(store.unlock(s, "certs:lock", "not-the-token"))
      assert.is_false(store.lock(s, "certs:lock", 10))
      assert.is_true(store.unlock(s, "certs:lock", a))
      local b = assert(store.lock(s, "certs:lock", 10))
      assert.not_equal(a, b)
      assert.is_false(store.unlock(s, "certs:lock", a))
      assert.is_true(store.unlock(s, "certs:lock", b))
    end)

    it("reserve paces starts (1 + GUARD) / rate apart and reports the rate", function()
      local first, start1, rate = budget.reserve(s, "qps", 10)
      assert.equal(0, first)
      assert.equal(10, rate)
      local wait2, start2 = budget.reserve(s, "qps", 10)
      assert.is_true(wait2 > 0.09 and wait2 <= 0.102 + 1e-6, tostring(wait2))
      assert.near(1.02 / 10, start2 - start1, 1e-5)
    end)
  end)
end

local function memory_store(clock)
  return store.open("memory", { clock = clock })
end

operations("memory", function() return memory_store() end)

describe("the memory store", function()
  local t, s

  before_each(function()
    t = 1000
    s = assert(memory_store(function() return t end))
  end)

  it("expires by its clock, fractions included", function()
    assert.is_true(s:set("k", "v", 1.5))
    assert.is_true(s:add("l", "v", 0.25))
    assert.equal(1, s:incr("n", 1, 2))
    assert.equal(2, s:incr("n", 1, 100)) -- the TTL belongs to the key's creation
    t = t + 0.2
    assert.equal("v", s:get("l"))
    t = t + 0.1
    assert.is_nil(s:get("l"))
    assert.is_true(s:add("l", "again"))
    t = t + 1.1
    assert.equal("v", s:get("k"))
    assert.equal(2, tonumber(s:get("n")))
    t = t + 0.2
    assert.is_nil(s:get("k"))
    assert.equal(2, tonumber(s:get("n")))
    t = t + 0.5
    assert.is_nil(s:get("n"))
    assert.equal("again", s:get("l")) -- no TTL
  end)

  it("a lock expires, and the old holder's unlock leaves the new one alone", function()
    local a = assert(store.lock(s, "lock", 5))
    t = t + 5
    local b = assert(store.lock(s, "lock", 5))
    assert.is_false(store.unlock(s, "lock", a))
    assert.equal(b, s:get("lock"))
  end)

  it("drops expired keys it is never asked about again", function()
    for i = 1, 1500 do s:set("k" .. i, "v", 1) end
    t = t + 2
    for i = 1, 1000 do s:set("fresh" .. i, "v") end
    local n = 0
    for _ in pairs(s.driver.data) do n = n + 1 end
    assert.is_true(n <= 1100, tostring(n))
  end)
end)

describe("a custom store", function()
  -- A table with the five functions, on a memory backend, counting calls.
  local function custom(opts)
    local m = require("wxpay.store.memory").new(opts)
    local t = { calls = 0 }
    for _, op in ipairs({ "get", "set", "add", "incr", "delete" }) do
      t[op] = function(self, ...)
        self.calls = self.calls + 1
        if self.down then error("backend is down: connection refused") end
        return m[op](m, ...)
      end
    end
    return t
  end

  it("is called with ':' and a raise becomes nil, err", function()
    local t = custom()
    local s = assert(store.open(t))
    assert.is_true(s:set("k", "v"))
    assert.equal("v", s:get("k"))
    assert.is_true(t.calls >= 2)
    t.down = true
    for _, call in ipairs({ function() return s:get("k") end, function() return s:set("k", "v") end,
                            function() return s:add("k", "v") end, function() return s:incr("k", 1) end,
                            function() return s:delete("k") end,
                            function() return budget.reserve(s, "qps", 5, 0) end }) do
      local v, err = call()
      assert.is_nil(v)
      assert.equal("network", err.kind)
      assert.equal("STORE_UNAVAILABLE", err.code)
      assert.matches("connection refused", err.message, 1, true)
    end
  end)

  it("an update that outlives its lock leaves the next holder's lock alone", function()
    local t = 100
    local c = custom({ clock = function() return t end })
    local inner_set = c.set
    c.set = function(self, key, value, ttl)
      if key == "qps" then -- slow: the 50 ms lock runs out, and someone else takes it
        t = t + 0.2
        assert(inner_set(self, "qps:lock", "someone else", 10))
      end
      return inner_set(self, key, value, ttl)
    end
    local s = assert(store.open(c, { sleep = function() end }))
    assert.equal(0, (budget.reserve(s, "qps", 5, 0)))
    assert.equal("someone else", s:get("qps:lock"))
  end)

  it("the budget spins on a held lock, then proceeds; a lock that stays busy is nil, err", function()
    local t = custom()
    local slept, release = 0, true
    local s = assert(store.open(t, { sleep = function()
      slept = slept + 1
      if release and slept == 3 then t:delete("wxpay:" .. MCHID .. ":qps:lock") end
    end })):scope(MCHID)
    assert.is_true(s:add("qps:lock", "someone else", 10))
    local wait = budget.reserve(s, "qps", 5, 0)
    assert.equal(0, wait)
    assert.equal(3, slept)
    assert.is_true(s:add("qps:lock", "someone else", 10))
    slept, release = 0, false
    local w, err = budget.reserve(s, "qps", 5, 0)
    assert.is_nil(w)
    assert.matches("busy", err.message, 1, true)
    assert.equal(200, slept)
    assert.equal("someone else", s:get("qps:lock")) -- a waiter does not take a live lock
  end)
end)

---------------------------------------------------------------------------------------------
-- The budget: the same rules as the batch limiter
---------------------------------------------------------------------------------------------

describe("wxpay.store.budget", function()
  local t, s

  before_each(function()
    t = 5000
    s = assert(memory_store(function() return t end)):scope(MCHID)
  end)

  it("starts at the same times as concurrent.new_limiter, cuts and climbs back the same", function()
    for _, rate in ipairs({ 0.7, 3, 10, 100 }) do
      local lim = concurrent.new_limiter(rate)
      local key = "qps:" .. rate
      local now = t
      for i = 1, 60 do
        now = now + (i % 7 == 0 and 1.3 or 0.001 * (i % 5)) -- bursts and idle gaps
        local start = now
        if lim.tat and lim.tat > now then start = lim.tat end
        lim:wait(now) -- recovery, as the batch does before each start
        local wait, got, cur = budget.reserve(s, key, rate, now)
        assert.near(start, got, 1e-9)
        assert.near(start - now, wait, 1e-9)
        assert.near(lim.rate, cur, 1e-9)
        -- a queue longer than MAX_WAIT is refused, and the limiter then starts nothing either
        if wait <= budget.MAX_WAIT then lim:start(start) end
        if i % 20 == 0 then
          local cut_l = lim:throttle(now, start)
          local cut_b, after = budget.throttle(s, key, got, now)
          assert.equal(cut_l, cut_b)
          assert.near(lim.rate, after, 1e-9)
        end
      end
    end
  end)

  it("halves on a 429, never below MIN_RATE, once per cut, and climbs back a tenth a second", function()
    local _, s0 = budget.reserve(s, "qps", 10, t)
    t = t + 0.5
    assert.same({ true, 5 }, { budget.throttle(s, "qps", s0, t) })
    assert.same({ false, 5 }, { budget.throttle(s, "qps", s0, t + 0.1) }) -- started before the cut
    assert.same({ false, 5 }, { budget.throttle(s, "qps", t, t + 0.1) }) -- at the cut: a ms clock's tie
    local wait, s1, rate = budget.reserve(s, "qps", 10, t + 0.2)
    assert.equal(5, rate)
    assert.is_true(wait >= 0)
    local _, s2 = budget.reserve(s, "qps", 10, t + 0.2)
    assert.near(1.02 / 5, s2 - s1, 1e-9)
    assert.is_true(budget.throttle(s, "qps", s1, t + 0.3))
    local rates = {}
    for _ = 1, 6 do
      local _, r = budget.throttle(s, "qps", t + 1e6, t + 0.3) -- later starts cut again
      rates[#rates + 1] = r
    end
    assert.same({ 1.25, 0.625, 0.5, 0.5, 0.5, 0.5 }, rates)
    local cut_at = t + 0.3
    local seen = {}
    for k = 1, 12 do
      local _, _, r = budget.reserve(s, "qps", 10, cut_at + k + 0.01)
      seen[#seen + 1] = r
    end
    assert.same({ 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 9.5, 10, 10, 10 }, seen)
  end)

  it("a start later than max_wait is refused and keeps no slot", function()
    assert.equal(0, (budget.reserve(s, "qps", 1, t)))
    assert.near(1.02, (budget.reserve(s, "qps", 1, t)), 1e-9)
    local wait = budget.reserve(s, "qps", 1, t, 1.5)
    assert.near(2.04, wait, 1e-9) -- over 1.5: refused, the caller sleeps nothing
    -- the refused slot is still free for the next caller
    assert.near(2.04, (budget.reserve(s, "qps", 1, t, 5)), 1e-9)
    assert.near(3.06, (budget.reserve(s, "qps", 1, t)), 1e-9)
  end)

  it("damaged state (an absurd rate, a start far ahead) falls back to the configured rate", function()
    -- tat, rate, target, cut_at, last_step: a tiny rate without last_step, a year's queue
    assert(s:set("qps", string.format("%.17g,1e-9,5,,", t + 3e7)))
    local wait, _, rate = budget.reserve(s, "qps", 5, t)
    assert.equal(0, wait)
    assert.equal(5, rate)
    -- a cut rate without last_step climbs back instead of staying cut for ever
    assert(s:set("qps2", string.format("%.17g,2.5,5,,", t)))
    local _, _, r1 = budget.reserve(s, "qps2", 5, t)
    assert.equal(2.5, r1)
    local _, _, r2 = budget.reserve(s, "qps2", 5, t + 1.01)
    assert.near(3, r2, 1e-9)
    local w = budget.reserve(s, "qps", 5, t, 1e9)
    assert.is_true(w <= budget.MAX_WAIT)
  end)

  it("throttle without state needs the target; with it, cuts from it", function()
    assert.same({ false }, { budget.throttle(s, "fresh", t, t) })
    assert.same({ true, 4 }, { budget.throttle(s, "fresh2", t, t, 8) })
  end)

  it("rejects a bad rate or start, naming it", function()
    for _, bad in ipairs({ 0, -1, 0 / 0, math.huge, "10" }) do
      local w, err = budget.reserve(s, "qps", bad)
      assert.is_nil(w)
      assert.equal("qps", err.field)
    end
    local c, err = budget.throttle(s, "qps", "soon")
    assert.is_nil(c)
    assert.equal("started_at", err.field)
  end)

  it("coroutines reserving in turn never exceed the rate in any second and use 90 %+ of it", function()
    local rate, starts = 20, {}
    local reservers = {}
    for i = 1, 5 do
      reservers[i] = coroutine.wrap(function()
        while true do
          local wait, start = budget.reserve(s, "qps", rate, t)
          starts[#starts + 1] = start
          coroutine.yield(t + wait)
        end
      end)
    end
    -- An event loop on the injected clock: wake the reserver whose start comes first.
    local wake = {}
    for i = 1, 5 do wake[i] = t end
    local t0 = t
    while t < t0 + 10 do
      local i = 1
      for k = 2, 5 do if wake[k] < wake[i] then i = k end end
      t = wake[i] + 0.0003 * ((i * 7 + #starts) % 5) -- a little lateness
      wake[i] = reservers[i]()
    end
    assert.is_true(busiest_second(starts) <= rate)
    local done = 0
    for _, st in ipairs(starts) do if st <= t0 + 10 then done = done + 1 end end
    assert.is_true(done >= 0.9 * rate * 10, tostring(done))
  end)
end)

---------------------------------------------------------------------------------------------
-- Redis
---------------------------------------------------------------------------------------------

describe("the Redis store (lua-redis)", function()
  local srv

  setup(function()
    srv = redis_server.start()
  end)

  teardown(function()
    if srv then srv:stop() end
  end)

  operations("redis", function() return store.open(srv.url, { driver = "socket" }) end)

  it("namespaces keys as wxpay:<mchid>: and selects the db", function()
    local s = assert(store.open(srv.url .. "/3", { driver = "socket" })):scope(MCHID)
    assert.is_true(s:set("certs", "blob"))
    assert.equal("blob", raw(srv.port, { { "SELECT", 3 }, { "GET", "wxpay:" .. MCHID .. ":certs" } }))
    assert.is_nil(raw(srv.port, { { "GET", "wxpay:" .. MCHID .. ":certs" } }))
  end)

  it("sends TTLs as PX and gives incr's TTL to a new key only", function()
    local s = assert(store.open(srv.url, { driver = "socket" })):scope(MCHID)
    local key = "wxpay:" .. MCHID .. ":"
    assert.is_true(s:set("t1", "v", 1.5))
    local pttl = raw(srv.port, { { "PTTL", key .. "t1" } })
    assert.is_true(pttl > 1000 and pttl <= 1500, tostring(pttl))
    assert.is_true(s:add("t2", "v", 0.25))
    pttl = raw(srv.port, { { "PTTL", key .. "t2" } })
    assert.is_true(pttl > 0 and pttl <= 250, tostring(pttl))
    assert.equal(1, s:incr("t3", 1, 30))
    assert.equal(3, s:incr("t3", 2, 1000))
    pttl = raw(srv.port, { { "PTTL", key .. "t3" } })
    assert.is_true(pttl > 20000 and pttl <= 30000, tostring(pttl))
    assert.is_true(s:set("t4", "v"))
    assert.equal(-1, raw(srv.port, { { "PTTL", key .. "t4" } }))
    -- and a short TTL does expire
    assert.is_true(s:set("t5", "v", 0.02))
    local deadline = socket.gettime() + 5
    while s:get("t5") and socket.gettime() < deadline do socket.sleep(0.01) end
    assert.is_nil(s:get("t5"))
  end)

  it("authenticates with the table form's password and never shows it", function()
    local pw = "s3cret-" .. math.random(1, 1e9)
    assert.equal("OK", raw(srv.port, { { "CONFIG", "SET", "requirepass", pw } }))
    local ok, err = pcall(function()
      local bad = assert(store.open({ host = "127.0.0.1", port = srv.port, password = "wrong-" .. pw },
                                    { driver = "socket" }))
      local v, e = bad:set("k", "v")
      assert.is_nil(v)
      assert.matches("AUTH failed", e.message, 1, true)
      assert.not_matches(pw, tostring(e), 1, true)
      local none = assert(store.open(srv.url, { driver = "socket" }))
      v, e = none:get("k")
      assert.is_nil(v)
      assert.matches("NOAUTH", e.message, 1, true)
      local good = assert(store.open({ host = "127.0.0.1", port = srv.port, password = pw, db = 1 },
                                     { driver = "socket" }))
      assert.is_true(good:set("k", "v"))
      assert.equal("v", good:get("k"))
    end)
    raw(srv.port, { { "AUTH", pw }, { "CONFIG", "SET", "requirepass", "" } })
    assert(ok, err)
  end)

  it("a lock that expires is not deleted by its old holder (compare-and-delete)", function()
    local s = assert(store.open(srv.url, { driver = "socket" })):scope(MCHID)
    local a = assert(store.lock(s, "certs:lock", 0.05))
    local deadline = socket.gettime() + 5
    while s:get("certs:lock") and socket.gettime() < deadline do socket.sleep(0.01) end
    local b = assert(store.lock(s, "certs:lock", 10))
    assert.is_false(store.unlock(s, "certs:lock", a))
    assert.equal(b, s:get("certs:lock"))
    assert.is_true(store.unlock(s, "certs:lock", b))
  end)

  it("down: nil, err within the timeout; up again: works again", function()
    local s = assert(store.open({ host = "127.0.0.1", port = srv.port, timeout = 0.3 }, { driver = "socket" }))
    assert.is_true(s:set("k", "v"))
    srv:kill()
    local ok, err = pcall(function()
      for _, call in ipairs({ function() return s:get("k") end, function() return s:set("k", "v") end,
                              function() return s:add("k", "v") end, function() return s:incr("k", 1) end,
                              function() return s:delete("k") end,
                              function() return budget.reserve(s, "qps", 5) end,
                              function() return store.lock(s, "lock", 1) end }) do
        local t0 = socket.gettime()
        local v, e = call()
        assert.is_nil(v)
        assert.equal("STORE_UNAVAILABLE", e.code)
        assert.is_true(socket.gettime() - t0 < 1, "took " .. (socket.gettime() - t0))
      end
    end)
    srv:start_again()
    assert(ok, err)
    assert.is_true(s:set("k", "back"))
    assert.equal("back", s:get("k"))
    assert.equal(0, (budget.reserve(s, "qps-after", 5))) -- scripts load again after the restart
  end)

  it("a server that accepts but never answers: nil, err bounded by the timeout", function()
    local mute = assert(socket.bind("127.0.0.1", 0))
    local _, port = mute:getsockname()
    local ok, err = pcall(function()
      local s = assert(store.open({ host = "127.0.0.1", port = tonumber(port), timeout = 0.3 }, { driver = "socket" }))
      local t0 = socket.gettime()
      local v, e = s:get("k")
      local took = socket.gettime() - t0
      assert.is_nil(v)
      assert.equal("STORE_UNAVAILABLE", e.code)
      assert.is_true(took >= 0.25 and took < 1.5, "took " .. took)
    end)
    mute:close()
    assert(ok, err)
  end)

  describe("the budget in Redis", function()
    local s, key

    before_each(function()
      s = assert(store.open(srv.url, { driver = "socket" })):scope(MCHID)
      key = "qps:" .. math.random(1, 1e9)
    end)

    local function redis_now()
      local c = socket.tcp()
      c:settimeout(2)
      assert(c:connect("127.0.0.1", srv.port))
      c:send("*1\r\n$4\r\nTIME\r\n")
      c:receive("*l"); c:receive("*l")
      local sec = c:receive("*l")
      c:receive("*l")
      local usec = c:receive("*l")
      c:close()
      return tonumber(sec) + tonumber(usec) / 1e6
    end

    it("reserves on Redis's clock (TIME), whatever the caller's now says", function()
      local before = redis_now()
      local wait, start = budget.reserve(s, key, 10, 12345)
      local after = redis_now()
      assert.equal(0, wait)
      assert.is_true(start >= before and start <= after)
    end)

    it("halves once per cut, cuts again for later starts, and climbs back a tenth a second", function()
      local _, s0 = budget.reserve(s, key, 10)
      assert.same({ true, 5 }, { budget.throttle(s, key, s0) })
      assert.same({ false, 5 }, { budget.throttle(s, key, s0) })
      local _, s1, rate = budget.reserve(s, key, 10)
      assert.equal(5, rate)
      assert.same({ true, 2.5 }, { budget.throttle(s, key, s1) })
      -- three seconds pass since the last step: move it back instead of waiting
      local full = "wxpay:" .. MCHID .. ":" .. key
      local last = tonumber(raw(srv.port, { { "HGET", full, "last_step" } }))
      raw(srv.port, { { "HSET", full, "last_step", string.format("%.6f", last - 3.0001) } })
      local _, _, r = budget.reserve(s, key, 10)
      assert.near(5.5, r, 1e-9)
      assert.is_true(raw(srv.port, { { "PTTL", full } }) > 0) -- idle state expires
    end)

    it("throttle of a fresh key cuts from the given target", function()
      assert.same({ true, 4 }, { budget.throttle(s, key, 0, nil, 8) })
    end)

    it("refuses a start later than max_wait without using the slot; mends damaged state", function()
      local _, s0 = budget.reserve(s, key, 1)
      local w1, s1 = budget.reserve(s, key, 1, nil, 0.5)
      assert.is_true(w1 > 0.5) -- refused
      local _, s2 = budget.reserve(s, key, 1)
      assert.near(s1, s2, 1e-9) -- the refused slot went to the next one
      assert.near(1.02, s2 - s0, 0.05)
      local full = "wxpay:" .. MCHID .. ":" .. key
      raw(srv.port, { { "DEL", full }, { "HSET", full, "tat", string.format("%.6f", redis_now() + 3e7),
        "rate", "1e-9", "target", "5" } })
      local wait, _, rate = budget.reserve(s, key, 5)
      assert.equal(0, wait)
      assert.equal(5, rate)
    end)

    it("4 processes share one budget: at most rate starts in any second, 90 %+ used", function()
      local lua = jit and "luajit" or "lua5.4"
      local cpath = jit and "build-luajit/?.so;" or "build/?.so;"
      local rate, each = 20, 15
      local child = table.concat({
        "package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path",
        "package.cpath = '" .. cpath .. "' .. package.cpath",
        "local socket = require('socket')",
        "local store, budget = require('wxpay.store'), require('wxpay.store.budget')",
        "local s = assert(store.open('" .. srv.url .. "', { driver = 'socket' })):scope('" .. MCHID .. "')",
        "for _ = 1, " .. each .. " do",
        "  local wait, start = budget.reserve(s, '" .. key .. "', " .. rate .. ")",
        "  if not wait then io.stderr:write(tostring(start), '\\n') os.exit(1) end",
        "  print(string.format('%.6f', start))",
        "  if wait > 0 then socket.sleep(wait) end",
        "end",
      }, "\n")
      local dir = helpers.tmpdir()
      local cmd = {}
      for i = 1, 4 do
        cmd[#cmd + 1] = string.format("env -u LD_PRELOAD %s -e %s > %s/out%d 2>&1 &", lua,
          helpers.q(child), dir, i)
      end
      os.execute(table.concat(cmd, " ") .. " wait")
      local starts = {}
      for i = 1, 4 do
        local text = helpers.read(dir .. "/out" .. i)
        for line in text:gmatch("[^\n]+") do
          starts[#starts + 1] = assert(tonumber(line), "child " .. i .. ": " .. text)
        end
      end
      helpers.cleanup()
      assert.equal(4 * each, #starts)
      local busiest = busiest_second(starts)
      assert.is_true(busiest <= rate, "busiest second: " .. busiest)
      table.sort(starts)
      local span = starts[#starts] - starts[1]
      local achieved = (#starts - 1) / span
      print(("\nredis budget, 4 processes at %d/s: busiest second %d, %.2f starts/s"):format(rate, busiest, achieved))
      assert.is_true(achieved >= 0.9 * rate, ("%.2f starts/s of %d"):format(achieved, rate))
    end)
  end)
end)
