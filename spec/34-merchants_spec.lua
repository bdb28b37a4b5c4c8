-- Several merchants in one process: two sandboxes playing two merchants (1900000001 and
-- 1900000002, each with its own keys), their clients sharing one real redis-server as
-- `store`. Neither sees the other's platform certificates, rate budget or failover state,
-- while two clients of one merchant do share them. And wxpay.router: one callback endpoint
-- for both, by Wechatpay-Serial, falling back to trying each.
local wxpay = require("wxpay")
local core = require("wxpay.core")
local cjson = require("cjson").new()
local socket = require("socket")
local sandbox = require("spec.support.sandbox")
local redis_server = require("spec.support.redis")
local helpers = require("spec.helpers")

local A_ID, B_ID = "1900000001", "1900000002"
local sa, sbb, srv

-- Download mode (only the APIv3 key verifies: certificates come from /v3/certificates).
local function client(s, changes)
  local cfg = {}
  for k, v in pairs(s.config) do cfg[k] = v end
  cfg.platform_certificate_files, cfg.wechatpay_public_key_file, cfg.wechatpay_public_key_id = nil, nil, nil
  cfg.store = srv.url
  cfg.sleep = function() end
  for k, v in pairs(changes or {}) do cfg[k] = v end
  return assert(wxpay.new(cfg))
end

local function redis_keys(pattern)
  local p = assert(io.popen("redis-cli -p " .. srv.port .. " --raw keys " .. helpers.q(pattern)))
  local out = {}
  for line in p:read("*a"):gmatch("[^\n]+") do out[#out + 1] = line end
  p:close()
  table.sort(out)
  return out
end

local function downloads(s)
  local n = 0
  for _, r in ipairs(s:requests()) do
    if r.target:find("^/v3/certificates") then n = n + 1 end
  end
  return n
end

local function serials(c)
  local out = {}
  for _, e in ipairs(c.certificates.list()) do out[#out + 1] = e.serial_no end
  table.sort(out)
  return out
end

local function manifest(s)
  return cjson.decode(helpers.read(s.dir .. "/manifest.json"))
end

local LIST = { authorized_data = { business_type = "BUSIFAVOR_STOCK" } }

setup(function()
  srv = redis_server.start()
  sa = sandbox.start{ mode = "certificate", empty_list = 200 }
  sbb = sandbox.start{ mode = "certificate", empty_list = 200, mchid = B_ID, dir = "build/sandbox-keys-" .. B_ID }
end)
teardown(function()
  if sa then sa:stop() end
  if sbb then sbb:stop() end
  if srv then srv:stop() end
  helpers.cleanup()
end)
before_each(function()
  sa:reset()
  sbb:reset()
  os.execute("redis-cli -p " .. srv.port .. " flushall >/dev/null")
end)

describe("two merchants on one store", function()
  it("the sandboxes play two merchants with keys of their own", function()
    assert.equal(A_ID, sa.config.mchid)
    assert.equal(B_ID, sbb.config.mchid)
    assert.are_not.equal(manifest(sa).platform_serial_no, manifest(sbb).platform_serial_no)
    assert.are_not.equal(sa.config.apiv3_key, sbb.config.apiv3_key)
  end)

  it("certificates: each merchant downloads its own, shared only by its own clients", function()
    local a, b = client(sa), client(sbb)
    assert(a.partnerships.page(LIST))
    assert(b.partnerships.page(LIST))
    assert.same({ manifest(sa).platform_serial_no }, serials(a))
    assert.same({ manifest(sbb).platform_serial_no }, serials(b))
    assert.same({ 1, 1 }, { downloads(sa), downloads(sbb) })
    -- a second client of each merchant takes its merchant's certificates from the store
    local a2, b2 = client(sa), client(sbb)
    assert(a2.partnerships.page(LIST))
    assert(b2.partnerships.page(LIST))
    assert.same(serials(a), serials(a2))
    assert.same(serials(b), serials(b2))
    assert.same({ 1, 1 }, { downloads(sa), downloads(sbb) })
    assert.is_true(#redis_keys("wxpay:" .. A_ID .. ":certs*") >= 1)
    assert.is_true(#redis_keys("wxpay:" .. B_ID .. ":certs*") >= 1)
  end)

  it("budget: one merchant's spent starts do not hold the other back", function()
    local waits = {}
    local function hook(ev) if ev.phase == "call" then waits[#waits + 1] = ev.budget_wait end end
    local a, b = client(sa, { qps = 1, on_request = hook }), client(sbb, { qps = 1, on_request = hook })
    assert(a.partnerships.page(LIST)) -- A's only start of this second
    assert(b.partnerships.page(LIST)) -- B's own budget: no wait
    assert.equal(2, #waits)
    assert.is_true(waits[2] < 0.5, "B waited " .. waits[2] .. " s for A's budget")
    local a_keys, b_keys = redis_keys("wxpay:" .. A_ID .. ":qps*"), redis_keys("wxpay:" .. B_ID .. ":qps*")
    assert.is_true(#a_keys >= 1 and #b_keys >= 1)
    for _, k in ipairs(a_keys) do assert.is_nil(k:find(B_ID, 1, true)) end
  end)

  it("failover: one merchant's switch to its backup host leaves the other on its primary", function()
    local probe = assert(socket.bind("127.0.0.1", 0))
    local _, port = probe:getsockname()
    probe:close() -- nothing listens there now: connections are refused
    local hosts = {}
    local function hook(ev) if ev.phase == "call" then hosts[#hosts + 1] = ev.host end end
    local a = client(sa, { base_url = "https://127.0.0.1:" .. port, backup_url = sa.config.base_url,
      on_request = hook })
    -- B's backup is A's sandbox, where B's requests are refused (401): had B taken A's
    -- preference for the backup, its call would fail.
    local b = client(sbb, { backup_url = sa.config.base_url, on_request = hook })
    assert(a.partnerships.page(LIST))
    local page, err = b.partnerships.page(LIST)
    assert.is_nil(err)
    assert.truthy(page)
    assert.same({ "backup", "primary" }, hosts)
    assert.same({ "wxpay:" .. A_ID .. ":prefer_backup" }, redis_keys("wxpay:*prefer_backup*"))
  end)
end)

-- A callback as sandbox `s` (its merchant's WeChat Pay) would send it: signed with its
-- platform key, the resource encrypted with its APIv3 key.
local function callback(s, id)
  local m = manifest(s)
  local key = assert(core.load_private_key(helpers.read(s.dir .. "/platform_key.pem")))
  local nonce = core.nonce(12)
  local body = cjson.encode{ id = id, create_time = "2026-01-01T00:00:00+08:00", event_type = "COUPON.SEND",
    resource_type = "encrypt-resource", summary = "spec", resource = { original_type = "coupon",
      algorithm = "AEAD_AES_256_GCM", nonce = nonce, associated_data = "coupon",
      ciphertext = assert(core.aes_gcm_encrypt(s.config.apiv3_key, nonce, "coupon", '{"n":1}')) } }
  local ts, n = tostring(core.time()), core.nonce(32)
  return { ["Wechatpay-Timestamp"] = ts, ["Wechatpay-Nonce"] = n, ["Wechatpay-Serial"] = m.platform_serial_no,
    ["Wechatpay-Signature"] = key:sign(ts .. "\n" .. n .. "\n" .. body .. "\n") }, body
end

describe("wxpay.router: one callback endpoint for two merchants", function()
  it("routes by Wechatpay-Serial once the certificates are known, and handles once per merchant", function()
    local a, b = client(sa), client(sbb)
    assert(a.certificates.refresh())
    assert(b.certificates.refresh())
    local router = require("wxpay.router").new{ a, b }
    local ha, body_a = callback(sa, "EV-route-a")
    local hb, body_b = callback(sbb, "EV-route-b")
    assert.equal(a, router.client_for(ha))
    assert.equal(b, router.client_for(hb))
    local seen = {}
    local function handler(n, meta) seen[#seen + 1] = meta.mchid .. ":" .. n.id; return true end
    local answer, outcome, n, _, c = router.handle(hb, body_b, handler)
    assert.same({ 204, "handled", "EV-route-b", b }, { answer.status, outcome, n.id, c })
    assert.equal("handled", select(2, router.handle(ha, body_a, handler)))
    assert.equal("duplicate", select(2, router.handle(hb, body_b, handler)))
    assert.same({ B_ID .. ":EV-route-b", A_ID .. ":EV-route-a" }, seen)
  end)

  it("falls back to trying each client when none knows the serial yet", function()
    local a, b = client(sa), client(sbb)
    local router = require("wxpay.router").new{ a, b }
    local hb, body_b = callback(sbb, "EV-fallback-b")
    assert.is_nil(router.client_for(hb)) -- nothing downloaded yet
    local n, err, meta = router.parse(hb, body_b)
    assert.is_nil(err)
    assert.equal("EV-fallback-b", n.id)
    assert.equal(b, meta.client)
    assert.equal(B_ID, meta.mchid)
    -- a callback no merchant signed is refused with an answer for WeChat Pay
    local h, body = callback(sbb, "EV-tampered")
    local answer, outcome = router.handle(h, body:gsub("spec", "spek"), function() error("ran") end)
    assert.equal("refused", outcome)
    assert.is_true(answer.status >= 400)
    assert.has_error(function() require("wxpay.router").new{} end)
  end)
end)
