-- Store operations are bounded in time and size (plain Lua, LuaSocket driver), against a
-- misbehaving server a real redis-server cannot imitate (spec/support/bad_redis.lua): a
-- reply trickled one byte at a time ends within the store's `timeout` in total, and within
-- what the caller has left; a 300 MB reply is refused before it is read.
local bad_redis = require("spec.support.bad_redis")
local core = require("wxpay.core")
local helpers = require("spec.helpers")
local store = require("wxpay.store")

describe("store time and size bounds (plain Lua)", function()
  local trickle, huge
  local slow = helpers.slowdown(10)

  setup(function()
    trickle = bad_redis.start("trickle")
    huge = bad_redis.start("huge")
  end)
  teardown(function()
    if trickle then trickle:stop() end
    if huge then huge:stop() end
  end)

  local function timed(fn)
    local t0 = core.monotonic()
    local a, b = fn()
    return core.monotonic() - t0, a, b
  end

  it("a trickled reply ends within the store's timeout in total", function()
    local s = assert(store.open({ host = "127.0.0.1", port = trickle.port, timeout = 0.5 }, { driver = "socket" }))
    local secs, v, err = timed(function() return s:get("k") end)
    assert.is_nil(v)
    assert.equal("STORE_UNAVAILABLE", err.code)
    -- the server trickles for two minutes; each byte would re-arm a per-read timeout
    assert.is_true(secs < 0.5 + 2 * slow, "get took " .. secs .. " s")
  end)

  it("and within what the caller has left", function()
    local s = assert(store.open({ host = "127.0.0.1", port = trickle.port, timeout = 30 }, { driver = "socket" }))
    local secs, v, err = timed(function() return s:get("k", 0.3) end)
    assert.is_nil(v)
    assert.truthy(err)
    assert.is_true(secs < 0.3 + 2 * slow, "get took " .. secs .. " s with 0.3 s left")
  end)

  it("a 300 MB reply is refused before it is read", function()
    local s = assert(store.open({ host = "127.0.0.1", port = huge.port, timeout = 5 }, { driver = "socket" }))
    local v, err = s:get("k")
    assert.is_nil(v)
    assert.equal("STORE_UNAVAILABLE", err.code)
    assert.truthy(tostring(err):find("too large", 1, true), tostring(err))
  end)
end)
