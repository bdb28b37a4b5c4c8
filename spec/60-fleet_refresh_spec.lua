-- The fleet's certificate refresh never blocks a call that holds a valid key (plain Lua, a
-- private redis-server and the sandbox in download mode): a due refresh while another member
-- holds the download lock, an unknown serial waiting no longer than the call's deadline, a
-- holder that dies mid-download (its lease runs out soon), an empty certificate list, and
-- two merchants on one store. Clocks are hooks: nothing here sleeps for real.
local sandbox = require("spec.support.sandbox")
local redis_server = require("spec.support.redis")
local helpers = require("spec.helpers")
local core = require("wxpay.core")
local json = require("wxpay.json")
local store = require("wxpay.store")
local wxpay = require("wxpay")

local LIST = { authorized_data = { business_type = "BUSIFAVOR_STOCK" } }
local ONLY_APIV3 = { platform_certificate_files = false, wechatpay_public_key_file = false,
                     wechatpay_public_key_id = false }

local function downloads(sb)
  local n = 0
  for _, r in ipairs(sb:requests()) do
    if r.target:find("^/v3/certificates") then n = n + 1 end
  end
  return n
end

-- A custom store over the memory backend on the clock `clock()`, recording the TTLs given
-- to `watch`.
local function recording_store(clock, watch)
  local backend = require("wxpay.store.memory").new({ clock = clock })
  local ttls, custom = {}, {}
  for _, op in ipairs({ "get", "set", "add", "incr", "delete" }) do
    custom[op] = function(_, key, value, ttl)
      if key == watch and (op == "add" or op == "set") then ttls[#ttls + 1] = ttl end
      return backend[op](backend, key, value, ttl)
    end
  end
  return custom, backend, ttls
end

describe("fleet certificate refresh (plain Lua, Redis)", function()
  local sb, srv, mchid, s

  setup(function()
    sb = sandbox.start{ mode = "certificate", empty_list = 200 }
    srv = redis_server.start()
    mchid = sb.config.mchid
    s = assert(store.open(srv.url, { driver = "socket" })):scope(mchid)
  end)
  teardown(function()
    if srv then srv:stop() end
    if sb then sb:stop() end
  end)
  before_each(function()
    sb:reset()
    sb:configure{ signing_certificate = "primary", advertised_certificates = { "primary" } }
    for _, k in ipairs({ "certs", "certs:lock" }) do assert(s:delete(k)) end
  end)

  -- A client on a fake monotonic clock: `sleep` advances it and adds up what was slept.
  local function client(changes)
    local clock = { shift = 0, slept = 0 }
    local cfg = helpers.config_from(sb, ONLY_APIV3)
    cfg.store = srv.url
    cfg.monotonic = function() return core.monotonic() + clock.shift end
    cfg.sleep = function(x) clock.slept = clock.slept + x; clock.shift = clock.shift + x end
    for k, v in pairs(changes or {}) do cfg[k] = v end
    return assert(wxpay.new(cfg)), clock
  end

  it("a due refresh while another member holds the lock: the call goes on at once", function()
    local c, clock = client()
    assert.truthy(c.partnerships.page(LIST))
    assert.equal(1, downloads(sb))
    assert(s:delete("certs"))
    assert(s:set("certs:lock", "a-member-that-died", 600)) -- as a dead holder left it
    clock.shift = clock.shift + 3601 -- the refresh is due
    clock.slept = 0
    for _ = 1, 3 do
      local page, err = c.partnerships.page(LIST)
      assert.is_nil(err)
      assert.truthy(page)
    end
    assert.equal(0, clock.slept) -- no call waited for the lock
    assert.equal(1, downloads(sb)) -- nor downloaded over the holder's head
  end)

  it("an unknown serial waits for the holder, never past the call's deadline", function()
    local c, clock = client{ deadline = 2 }
    assert.truthy(c.partnerships.page(LIST))
    assert(s:set("certs:lock", "a-member-that-died", 600))
    sb:control("POST", "/rotate", { to = "secondary" }) -- answers now name an unknown serial
    clock.slept = 0
    local page, err = c.partnerships.page(LIST)
    assert.is_nil(page)
    assert.equal("signature", err.kind)
    assert.is_true(clock.slept <= 2, "waited " .. clock.slept .. " s with deadline = 2")
    assert.is_true(clock.slept >= 1.5) -- it did wait for the holder meanwhile
  end)

  it("a holder's lock lease covers its next step only, renewed through retries and pauses", function()
    local t = 1000
    local custom, backend, ttls = recording_store(function() return t end, "wxpay:" .. mchid .. ":certs:lock")
    local held = {}
    local c = client{ store = custom, timeout = 2, connect_timeout = 1, max_retries = 2, retry_after_max = 30,
      monotonic = function() return t end,
      sleep = function(x) t = t + x; held[#held + 1] = backend:get("wxpay:" .. mchid .. ":certs:lock") ~= nil end }
    sb:fault{ fault = "429", retry_after = 20, count = 2, path = "/v3/certificates" }
    assert.truthy(c.partnerships.page(LIST))
    assert.same({ true, true }, held) -- kept through both 20 s pauses
    local most = 0
    for _, ttl in ipairs(ttls) do most = math.max(most, ttl) end
    -- one pause plus one leg plus the lease, never the whole download's worst case (71 s)
    assert.is_true(most <= 20 + 2 * 2 + 1 + 3, "a lock TTL of " .. most .. " s")
    assert.is_nil(backend:get("wxpay:" .. mchid .. ":certs:lock"))
  end)

  it("a holder killed mid-download: the next member takes the lock over when its lease ends", function()
    local t = 1000
    local custom = recording_store(function() return t end, "none")
    local base = { store = custom, timeout = 2, connect_timeout = 1, max_retries = 2, retry_after_max = 30,
      retry_base_delay = 0.5, monotonic = function() return t end, sleep = function(x) t = t + x end }
    local dying = {}
    for k, v in pairs(base) do dying[k] = v end
    dying.sleep = function() coroutine.yield() end -- the holder is never resumed: it died
    local holder = client(dying)
    sb:fault{ fault = "500", count = 1, path = "/v3/certificates" }
    local co = coroutine.create(function() return holder.partnerships.page(LIST) end)
    assert(coroutine.resume(co))
    assert.equal("suspended", coroutine.status(co)) -- dead in its retry pause, holding the lock
    local other = client(base)
    local t0 = t
    local page, err = other.partnerships.page(LIST)
    assert.is_nil(err)
    assert.truthy(page)
    -- the dead holder's lease: its pause (at most 5 s) plus one leg (5 s) plus 3 s
    assert.is_true(t - t0 <= 13.5, "waited " .. (t - t0) .. " s for a dead holder")
    assert.equal(2, downloads(sb)) -- the holder's failed one, then the new holder's
  end)

  it("an empty certificate list, stored or downloaded, never replaces a valid set", function()
    local c = client()
    assert.truthy(c.partnerships.page(LIST))
    -- A genuine, signed answer with an empty list (the sandbox lists no SM2 certificate).
    local data, err, meta = c.request{ method = "GET", path = "/v3/certificates", query = { algorithm_type = "SM2" } }
    assert.is_nil(err)
    assert.same({}, data.data)
    local h = {}
    for _, name in ipairs({ "wechatpay-timestamp", "wechatpay-nonce", "wechatpay-signature", "wechatpay-serial" }) do
      h[name] = meta.headers[name]
    end
    local function store_empty(at)
      assert(s:set("certs", json.encode({ status = 200, body = '{"data":[]}', headers = h, fetched_at = at }), 600))
    end
    store_empty(os.time() + 10)
    local other, clock = client()
    assert.truthy(other.partnerships.page(LIST)) -- refused the empty entry, downloaded over it
    store_empty(os.time() + 20)
    clock.shift = clock.shift + 3601
    assert.truthy(other.certificates.refresh()) -- a newer stored entry: refused, downloaded over
    assert.equal(1, #other.certificates.list())
    local page, perr = other.partnerships.page(LIST)
    assert.is_nil(perr)
    assert.truthy(page)
  end)

  it("a store that does not answer: each member paces alone at fallback_qps, not the whole qps", function()
    local down = {}
    for _, op in ipairs({ "get", "set", "add", "incr", "delete" }) do
      down[op] = function() error("connection refused") end
    end
    local c, clock = client{ store = down, qps = 50, fallback_qps = 2, logger = function() end }
    assert.truthy(c.partnerships.page(LIST)) -- the download and one call
    local t0 = core.monotonic() + clock.shift -- the client's clock: real time plus its sleeps
    for _ = 1, 4 do assert.truthy(c.partnerships.page(LIST)) end
    -- 5 starts at 2 a second (1.02 / 2 s apart), not at 50 (on the client's clock: under
    -- valgrind the calls themselves take part of the spacing, and the limiter sleeps less)
    local elapsed = core.monotonic() + clock.shift - t0
    assert.is_true(elapsed >= 4 * 0.5 - 0.05, "4 more starts in " .. elapsed .. " s")
    local bad, err = wxpay.new(helpers.config_from(sb, { store = down, qps = 5, fallback_qps = 0 }))
    assert.is_nil(bad)
    assert.equal("fallback_qps", err.field)
  end)

  it("two merchants on one store never see each other's certificates, budget or failover state", function()
    local other_mchid = "1900000999"
    assert.are_not.equal(mchid, other_mchid)
    local dead = assert(require("socket").bind("127.0.0.1", 0))
    local _, port = dead:getsockname()
    dead:close() -- nothing listens there now
    local primary = "https://127.0.0.1:" .. port
    local function tries(list)
      return function(_, message, fields)
        if message == "wxpay request" then list[#list + 1] = fields.base_url end
      end
    end
    -- Merchant A: downloads certificates, queues ten seconds of its budget, fails over.
    local tried_a = {}
    local a = client{ qps = 1, base_url = primary, backup_url = sb.base_url, failover_cooldown = 60,
      logger = tries(tried_a) }
    assert.truthy(a.partnerships.page(LIST))
    assert.equal(primary, tried_a[1])
    assert.truthy(s:get("certs"))
    assert.truthy(s:get("prefer_backup"))
    for _ = 1, 10 do require("wxpay.store.budget").reserve(s, "qps", 1) end
    -- Merchant B on the same Redis: its own scope for everything.
    local b_store = assert(store.open(srv.url, { driver = "socket" })):scope(other_mchid)
    assert.is_nil(b_store:get("certs"))
    assert.is_nil(b_store:get("prefer_backup"))
    local before = downloads(sb)
    local b_dl = client{ mchid = other_mchid }
    b_dl.certificates.refresh() -- its own download (whatever the sandbox answers), not A's entry
    assert.equal(before + 1, downloads(sb))
    local tried_b = {}
    local b, clock = client{ mchid = other_mchid, qps = 100, base_url = primary, backup_url = sb.base_url,
      failover_cooldown = 60, logger = tries(tried_b),
      platform_certificate_files = sb.config.platform_certificate_files }
    clock.slept = 0
    b.partnerships.page(LIST) -- the sandbox may refuse merchant B: its state is what is checked
    assert.equal(primary, tried_b[1]) -- A's failover preference is not B's
    assert.is_true(clock.slept < 1, "B waited " .. clock.slept .. " s in A's budget queue")
  end)
end)
