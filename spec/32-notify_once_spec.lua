-- client.notify.handle: a callback's handler runs once per notification id for everything
-- sharing the client's store. In this process (memory store, a fake clock for the lease and
-- the keep period) and across two clients on a real redis-server (two hosts of a fleet).
-- The real-nginx case (4 workers, 20 concurrent deliveries) is spec/33.
local wxpay = require("wxpay")
local core = require("wxpay.core")
local cjson = require("cjson").new()
local fake = require("spec.support.fake")

-- A callback signed with the WeChat Pay public key of the fake keys, resource encrypted
-- with the fake APIv3 key.
local function callback(id, resource)
  local k = fake.keys()
  local nonce = core.nonce(12)
  local body = cjson.encode{ id = id, create_time = "2026-01-01T00:00:00+08:00", event_type = "COUPON.SEND",
    resource_type = "encrypt-resource", summary = "spec", resource = { original_type = "coupon",
      algorithm = "AEAD_AES_256_GCM", nonce = nonce, associated_data = "coupon",
      ciphertext = assert(core.aes_gcm_encrypt(fake.APIV3, nonce, "coupon",
        cjson.encode(resource or { coupon_code = "C1" }))) } }
  local ts, n = tostring(core.time()), core.nonce(32)
  local sig = k.signers[k.pub_key_id]:sign(ts .. "\n" .. n .. "\n" .. body .. "\n")
  return { ["Wechatpay-Timestamp"] = ts, ["Wechatpay-Nonce"] = n, ["Wechatpay-Signature"] = sig,
    ["Wechatpay-Serial"] = k.pub_key_id }, body
end

local function clock()
  local now = 1000
  return { monotonic = function() return now end, advance = function(s) now = now + s end }
end

local function new_client(overrides)
  local transport = fake.transport(function() error("no request expected") end)
  return assert(wxpay.new(fake.config(transport, overrides)))
end

describe("client.notify.handle in one process", function()
  it("runs the handler once; a repeat answers 204 without running it", function()
    local c = new_client()
    local runs = 0
    local h, b = callback("EV-once-1")
    local function handler(n) runs = runs + 1; assert.equal("C1", n.resource_data.coupon_code); return true end
    local answer, outcome, n = c.notify.handle(h, b, handler)
    assert.same({ status = 204, body = "" }, answer)
    assert.equal("handled", outcome)
    assert.equal("EV-once-1", n.id)
    for _ = 1, 3 do
      answer, outcome = c.notify.handle(h, b, handler)
      assert.equal(204, answer.status)
      assert.equal("duplicate", outcome)
    end
    -- a new delivery of the same id, signed anew, is the same notification
    local h2, b2 = callback("EV-once-1", { coupon_code = "C1" })
    assert.equal("duplicate", select(2, c.notify.handle(h2, b2, handler)))
    assert.equal(1, runs)
  end)

  it("a failed handler leaves the id unhandled: the next delivery runs it again", function()
    local c = new_client()
    local runs = 0
    local h, b = callback("EV-fail-1")
    local answer, outcome, n, why = c.notify.handle(h, b, function() runs = runs + 1; return nil, "db down" end)
    assert.equal(500, answer.status)
    assert.equal("FAIL", cjson.decode(answer.body).code)
    assert.equal("failed", outcome)
    assert.equal("EV-fail-1", n.id)
    assert.equal("db down", why)
    local _
    answer, outcome, _, why = c.notify.handle(h, b, function() runs = runs + 1; error("boom", 0) end)
    assert.same({ 500, "failed", "boom" }, { answer.status, outcome, why })
    answer, outcome = c.notify.handle(h, b, function() runs = runs + 1; return true end)
    assert.same({ 204, "handled" }, { answer.status, outcome })
    assert.equal(3, runs)
  end)

  it("a delivery while the handler runs answers a retryable failure and does not run it", function()
    local c = new_client()
    local h, b = callback("EV-busy-1")
    local inner_answer, inner_outcome
    local runs = 0
    local answer, outcome = c.notify.handle(h, b, function()
      runs = runs + 1
      -- WeChat Pay delivers the same notification again meanwhile
      inner_answer, inner_outcome = c.notify.handle(h, b, function() runs = runs + 1; return true end)
      return true
    end)
    assert.same({ 204, "handled" }, { answer.status, outcome })
    assert.same({ 500, "in_progress" }, { inner_answer.status, inner_outcome })
    assert.equal(1, runs)
  end)

  it("a lease expires (a holder that died, or outlived it); a handled id is kept for `keep` seconds", function()
    local clk = clock()
    local c = new_client{ monotonic = clk.monotonic }
    local h, b = callback("EV-lease-1")
    local runs, inner = 0, nil
    local outer = select(2, c.notify.handle(h, b, function()
      runs = runs + 1
      assert.equal("in_progress", select(2, c.notify.handle(h, b, function() runs = runs + 10; return true end)))
      clk.advance(61) -- this handler outlives its 60 s lease: a new delivery may run it again
      inner = select(2, c.notify.handle(h, b, function() runs = runs + 1; return true end))
      return true
    end))
    assert.same({ "handled", "handled", 2 }, { outer, inner, runs })
    clk.advance(25 * 3600) -- longer than WeChat Pay's 24 h of repeats: still remembered
    assert.equal("duplicate", select(2, c.notify.handle(h, b, function() return true end)))
    clk.advance(7 * 86400) -- past the default keep: forgotten
    assert.equal("handled", select(2, c.notify.handle(h, b, function() return true end)))
    local _, outcome, _, err = c.notify.handle(h, b, function() return true end, { keep = 3600 })
    assert.equal("refused", outcome)
    assert.equal("opts.keep", err.field)
  end)

  it("a callback that fails verification never reaches the handler", function()
    local c = new_client()
    local h, b = callback("EV-bad-1")
    local answer, outcome, n, err = c.notify.handle(h, b:gsub("spec", "spek"), function() error("ran") end)
    assert.same({ 400, "refused" }, { answer.status, outcome })
    assert.is_nil(n)
    assert.equal("signature", err.kind)
    assert.has_error(function() c.notify.handle(h, b, "not a function") end)
  end)

  it("a store that cannot answer: the handler is not run, the answer is retryable", function()
    local broken = {}
    for _, op in ipairs({ "get", "set", "add", "incr", "delete" }) do
      broken[op] = function() error("connection refused") end
    end
    local c = new_client{ store = broken }
    local h, b = callback("EV-store-1")
    local answer, outcome, _, err = c.notify.handle(h, b, function() error("ran") end)
    assert.same({ 500, "store_unavailable" }, { answer.status, outcome })
    assert.equal("STORE_UNAVAILABLE", err.code)
  end)
end)

describe("client.notify.handle across a fleet (real redis-server)", function()
  local redis_server = require("spec.support.redis")
  local srv
  setup(function() srv = redis_server.start() end)
  teardown(function() if srv then srv:stop() end end)

  it("two hosts sharing a Redis store run the handler once; a failure is retried by the other", function()
    local a, b = new_client{ store = srv.url }, new_client{ store = srv.url }
    local h, body = callback("EV-redis-" .. core.nonce(6))
    local runs = 0
    local function handler() runs = runs + 1; return true end
    assert.equal("handled", select(2, a.notify.handle(h, body, handler)))
    assert.equal("duplicate", select(2, b.notify.handle(h, body, handler)))
    assert.equal(1, runs)
    local h2, body2 = callback("EV-redis-" .. core.nonce(6))
    assert.equal("failed", select(2, a.notify.handle(h2, body2, function() return false end)))
    assert.equal("handled", select(2, b.notify.handle(h2, body2, handler)))
    assert.equal("duplicate", select(2, a.notify.handle(h2, body2, handler)))
    assert.equal(2, runs)
  end)

  it("under OpenResty the lease is renewed while the handler runs (compare-and-pexpire)", function()
    local c = new_client{ store = srv.url }
    local raw = assert(require("wxpay.store").open(srv.url))
    local id = "EV-renew-" .. core.nonce(6)
    local key = "wxpay:1900000001:notify:" .. id
    local h, body = callback(id)
    -- The light threads of ngx, as far as the renewal uses them: ngx.sleep gives the turn
    -- back to the handler, which hands it to the thread with `turn()`.
    local thread, killed
    local fake_ngx = { sleep = function() coroutine.yield() end, thread = {
      spawn = function(f) thread = coroutine.create(f); assert(coroutine.resume(thread)); return thread end,
      kill = function(th) killed = th == thread; return true end } }
    local function turn() assert(coroutine.resume(thread)) end
    local pttl_before, pttl_after
    local function handler()
      assert(raw:eval("return redis.call('PEXPIRE', KEYS[1], 400)", { key }))
      pttl_before = tonumber(raw:eval("return redis.call('PTTL', KEYS[1])", { key }))
      turn() -- the thread's next turn: the lease is ours, so it is extended to `lease` again
      pttl_after = tonumber(raw:eval("return redis.call('PTTL', KEYS[1])", { key }))
      return true
    end
    _G.ngx = fake_ngx
    local ok, answer, outcome = pcall(c.notify.handle, h, body, handler, { lease = 100 })
    _G.ngx = nil
    assert(ok, answer)
    assert.equal("handled", outcome, tostring(answer and answer.body))
    assert.is_true(pttl_before <= 400, tostring(pttl_before))
    assert.is_true(pttl_after > 50000, tostring(pttl_after))
    assert.is_true(killed)
    -- the renewal never overwrote the record
    assert.equal("done", raw:get(key))

    -- a handler that never returns does not hold the id for ever: after MAX_HOLD seconds
    -- the lease is no longer renewed, so a later delivery can run it
    local clk = clock()
    local c2 = new_client{ store = srv.url, monotonic = clk.monotonic }
    local id2 = "EV-renew-cap-" .. core.nonce(6)
    local key2 = "wxpay:1900000001:notify:" .. id2
    local h2, body2 = callback(id2)
    local pttl_capped
    local function hung()
      assert(raw:eval("return redis.call('PEXPIRE', KEYS[1], 400)", { key2 }))
      clk.advance(require("wxpay.notify_once").MAX_HOLD + 1)
      if coroutine.status(thread) == "suspended" then turn() end
      pttl_capped = tonumber(raw:eval("return redis.call('PTTL', KEYS[1])", { key2 }))
      return false
    end
    _G.ngx = fake_ngx
    ok, answer = pcall(c2.notify.handle, h2, body2, hung, { lease = 100 })
    _G.ngx = nil
    assert(ok, answer)
    assert.is_true(pttl_capped <= 400, tostring(pttl_capped))
  end)

  it("a merchant's ids are its own: the same id at another mchid is another notification", function()
    local a = new_client{ store = srv.url }
    local other = new_client{ store = srv.url, mchid = "1900000002" }
    local h, body = callback("EV-shared-" .. core.nonce(6))
    local runs = 0
    local function handler() runs = runs + 1; return true end
    assert.equal("handled", select(2, a.notify.handle(h, body, handler)))
    assert.equal("handled", select(2, other.notify.handle(h, body, handler)))
    assert.equal(2, runs)
  end)
end)

describe("client.notify.handle with opts.store", function()
  it("keeps the ids in the store it names (opened once), not the client's", function()
    local c = new_client()
    local h, b = callback("EV-opts-store-1")
    local runs = 0
    local function handler() runs = runs + 1; return true end
    assert.equal("handled", select(2, c.notify.handle(h, b, handler, { store = "memory" })))
    assert.equal("duplicate", select(2, c.notify.handle(h, b, handler, { store = "memory" })))
    -- the client's own record is another store: it has not seen the id
    assert.equal("handled", select(2, c.notify.handle(h, b, handler)))
    assert.equal(2, runs)
    local _, outcome, _, err = c.notify.handle(h, b, handler, { store = "nope:x" })
    assert.same({ "refused", "store" }, { outcome, err.field })
  end)
end)
