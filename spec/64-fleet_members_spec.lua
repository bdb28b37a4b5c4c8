-- wxpay.fleet.members: how many members a client believes share the rate budget, learned
-- through the store, and so the fair share it paces at while the store is down. Unit spec:
-- a memory store and fake clocks.
local members = require("wxpay.fleet.members")
local store_mod = require("wxpay.store")

describe("wxpay.fleet.members", function()
  local wall, mono, store

  local function member()
    return { fleet = { store = store, qps = {} },
             now = function() return wall end, monotonic = function() return mono end }
  end

  before_each(function()
    wall, mono = 1000 * members.WINDOW + 5, 0
    store = assert(store_mod.open("memory", { clock = function() return wall end }))
  end)

  local function tick(seconds) wall, mono = wall + seconds, mono + seconds end

  it("two members learn of each other within a second, and share qps", function()
    local a, b = member(), member()
    assert.is_nil(members.seen(a))
    assert.is_nil(members.seen(b))
    assert.equal(1, members.count(a)) -- first in: it has not seen b yet
    assert.equal(2, members.count(b))
    tick(1)
    members.seen(a)
    assert.equal(2, members.count(a))
    assert.equal(5, members.fallback_rate(a, 10))
  end)

  it("a new window does not make a member believe it is alone", function()
    -- a is first in a window and never reads it again before the next window begins, where it
    -- is first again: remembering its own counts alone, it would pace at the whole qps
    local a, b = member(), member()
    tick(members.WINDOW - 5 - 0.5) -- 0.5 s before a window ends
    members.seen(a)
    members.seen(b)
    tick(1) -- the next window: a comes first
    members.seen(a)
    assert.equal(2, members.count(a))
    assert.equal(5, members.fallback_rate(a, 10))
    members.seen(b)
    assert.equal(2, members.count(b))
  end)

  it("fallback_qps, when set, is the rate alone", function()
    local a = member()
    a.fleet.fallback_qps = 3
    members.seen(a)
    assert.equal(3, members.fallback_rate(a, 10))
  end)
end)
