-- The `on_request` event hook against the sandbox over real HTTPS: one event per attempt and
-- one per call, labelled with the declared route template (never an id or a query), with
-- status, error, attempts, host, transport, request id, request number and the time split
-- into budget wait, signing, transport and verification; `meta.elapsed` / `err.elapsed` on
-- every call. Also the route table (wxpay.api.routes) against the sandbox's own routes.
local wxpay = require("wxpay")
local routes = require("wxpay.api.routes")
local sandbox = require("spec.support.sandbox")

local sb
setup(function() sb = sandbox.start{ mode = "combined" } end)
teardown(function() if sb then sb:stop() end end)
before_each(function() sb:reset() end)

local function client(overrides)
  local cfg = {}
  for k, v in pairs(sb.config) do cfg[k] = v end
  cfg.sleep = function() end -- retries without real back-off waits
  cfg.retry_base_delay, cfg.retry_max_delay = 0.01, 0.02
  for k, v in pairs(overrides or {}) do cfg[k] = v end
  return assert(wxpay.new(cfg))
end

local function recorder()
  local events = {}
  return events, function(ev) events[#events + 1] = ev end
end

local function phases(events, phase)
  local out = {}
  for _, ev in ipairs(events) do if ev.phase == phase then out[#out + 1] = ev end end
  return out
end

local function params(appid)
  return { partner = { type = "APPID", appid = appid },
           authorized_data = { business_type = "BUSIFAVOR_STOCK", stock_id = "2433405" } }
end

local function rfc3339(t) return os.date("!%Y-%m-%dT%H:%M:%S+08:00", t + 8 * 3600) end

local function stock_params(no)
  local now = os.time()
  return { stock_name = "满100减10元", goods_name = "全场通用", stock_type = "NORMAL",
    coupon_code_mode = "WECHATPAY_MODE", out_request_no = no,
    coupon_use_rule = { coupon_available_time = { available_begin_time = rfc3339(now - 60),
        available_end_time = rfc3339(now + 30 * 86400) },
      fixed_normal_coupon = { discount_amount = 1000, transaction_minimum = 10000 }, use_method = "OFF_LINE" },
    stock_send_rule = { max_coupons = 100, max_coupons_per_user = 2 },
    notify_config = { notify_appid = "wxd678efh567hg6787" } }
end

-- Durations are numbers >= 0, and the stages fit in the whole.
local function timed(ev)
  for _, k in ipairs({ "duration", "budget_wait", "signing", "transfer", "verification" }) do
    assert.is_number(ev[k], k)
    assert.is_true(ev[k] >= 0, k)
  end
  assert.is_true(ev.signing + ev.transfer + ev.verification + ev.budget_wait <= ev.duration + 1e-6)
end

describe("on_request", function()
  it("a product call: one attempt and one call event with the declared template and the request number", function()
    local events, hook = recorder()
    local c = client{ on_request = hook }
    local stock, err, meta = c.busifavor.stocks.create(stock_params("obs-create-1"))
    assert.is_nil(err)
    local got = assert(c.busifavor.stocks.get(stock.stock_id))
    assert.equal(stock.stock_id, got.stock_id)
    assert.equal(4, #events)
    local a, call = events[1], events[2]
    assert.equal("attempt", a.phase)
    assert.equal("call", call.phase)
    for _, ev in ipairs({ a, call }) do
      assert.equal("POST", ev.method)
      assert.equal("/v3/marketing/busifavor/stocks", ev.route)
      assert.equal(200, ev.status)
      assert.equal("obs-create-1", ev.request_no)
      assert.equal("out_request_no", ev.request_no_field)
      assert.equal(meta.request_id, ev.request_id)
      assert.equal("primary", ev.host)
      assert.equal("curl", ev.transport)
      assert.equal(sb.config.mchid, ev.mchid)
      assert.is_nil(ev.error_kind)
      timed(ev)
    end
    assert.equal(1, a.attempt)
    assert.equal(1, call.attempts)
    assert.equal(0, call.retries)
    assert.is_true(call.signing > 0 and call.transfer > 0 and call.verification > 0)
    assert.equal(meta.elapsed, call.duration)
    local get_call = events[4]
    assert.equal("GET", get_call.method)
    assert.equal("/v3/marketing/busifavor/stocks/{stock_id}", get_call.route)
    for _, ev in ipairs(events) do
      assert.is_nil(tostring(ev.route):find(stock.stock_id, 1, true))
    end
  end)

  it("a query string never reaches the route", function()
    local events, hook = recorder()
    local c = client{ on_request = hook }
    local page = assert(c.busifavor.coupons.page("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", { appid = "wxd678efh567hg6787" }))
    assert.is_table(page.data)
    assert.equal("/v3/marketing/busifavor/users/{openid}/coupons", events[#events].route)
  end)

  it("retries: an event per attempt with its status, the call event with attempts and retries", function()
    local events, hook = recorder()
    local c = client{ on_request = hook }
    sb:fault{ fault = "500", count = 2 }
    local rel, err, meta = c.partnerships.build(params("wxobs500"), { idempotency_key = "obs-500" })
    assert.is_nil(err)
    assert.truthy(rel)
    local attempts, calls = phases(events, "attempt"), phases(events, "call")
    assert.equal(3, #attempts)
    assert.equal(1, #calls)
    assert.same({ 500, 500, 200 }, { attempts[1].status, attempts[2].status, attempts[3].status })
    assert.same({ 1, 2, 3 }, { attempts[1].attempt, attempts[2].attempt, attempts[3].attempt })
    assert.equal("api", attempts[1].error_kind)
    assert.equal("obs-500", attempts[2].idempotency_key)
    local call = calls[1]
    assert.equal(3, call.attempts)
    assert.equal(2, call.retries)
    assert.equal(200, call.status)
    assert.equal("/v3/marketing/partnerships/build", call.route)
    assert.equal(meta.elapsed, call.duration)
    local sum = 0
    for _, ev in ipairs(attempts) do sum = sum + ev.transfer end
    assert.is_true(math.abs(sum - call.transfer) < 1e-9)
  end)

  it("a failed call: error kind and code, err.elapsed, and no event is lost when the retries are spent", function()
    local events, hook = recorder()
    local c = client{ on_request = hook, max_retries = 1 }
    sb:fault{ fault = "429", count = 2 }
    local rel, err = c.partnerships.build(params("wxobs429"), { idempotency_key = "obs-429" })
    assert.is_nil(rel)
    assert.equal(429, err.status)
    assert.is_number(err.elapsed)
    local call = phases(events, "call")[1]
    assert.equal(2, #phases(events, "attempt"))
    assert.equal("api", call.error_kind)
    assert.equal(err.code, call.error_code)
    assert.equal(429, call.status)
    assert.equal(2, call.attempts)
    assert.equal(err.elapsed, call.duration)
  end)

  it("client.request: the route option, else the path without its query", function()
    local events, hook = recorder()
    local c = client{ on_request = hook }
    -- Nothing matches (a 404): the call is labelled all the same.
    local _, lerr = c.request{ method = "GET", path = "/v3/marketing/partnerships",
      query = { limit = 1, authorized_data = { business_type = "BUSIFAVOR_STOCK" } } }
    assert.equal(404, lerr.status)
    assert.equal("/v3/marketing/partnerships", events[#events].route)
    assert.equal(404, events[#events].status)
    local stock = assert(c.busifavor.stocks.create(stock_params("obs-raw-1")))
    assert(c.request{ method = "GET", path = "/v3/marketing/busifavor/stocks/" .. stock.stock_id,
      route = "/v3/marketing/busifavor/stocks/{stock_id}" })
    assert.equal("/v3/marketing/busifavor/stocks/{stock_id}", events[#events].route)
    local _, err = c.request{ method = "GET", path = "/v3/x", route = "no-slash" }
    assert.equal("route", err.field)
    _, err = c.request{ method = "GET", path = "/v3/x", on_request = "no" }
    assert.equal("on_request", err.field)
  end)

  it("a per-call hook replaces the client's for that call", function()
    local client_events, client_hook = recorder()
    local call_events, call_hook = recorder()
    local c = client{ on_request = client_hook }
    assert(c.partnerships.build(params("wxobspc"), { idempotency_key = "obs-pc", on_request = call_hook }))
    assert.equal(0, #client_events)
    assert.equal(2, #call_events)
    local _, err = c.busifavor.stocks.get("123", { on_request = 1 })
    assert.equal("opts.on_request", err.field)
  end)

  it("a failover: the attempt went to the backup host", function()
    local primary = sandbox.start{ mode = "combined" }
    local primary_url = primary.base_url
    primary:stop() -- its port now refuses connections
    local events, hook = recorder()
    local c = client{ base_url = primary_url, backup_url = sb.base_url, on_request = hook }
    assert(c.partnerships.build(params("wxobsfo"), { idempotency_key = "obs-fo" }))
    assert.equal("backup", events[1].host)
    assert.equal("backup", events[2].host)
  end)

  it("without a hook: meta.elapsed and err.elapsed on every call; a failing hook does not fail the call", function()
    local c = client()
    local _, _, meta = assert(c.request{ method = "GET", path = "/v3/certificates" })
    assert.is_number(meta.elapsed)
    assert.is_true(meta.elapsed > 0)
    local dead = client{ base_url = "https://127.0.0.1:1", backup_url = false, max_retries = 0 }
    local _, err = dead.request{ method = "GET", path = "/v3/certificates", verify = false }
    assert.is_number(err.elapsed)
    local logged = {}
    local bad = client{ on_request = function() error("boom") end,
      logger = function(_, message) logged[#logged + 1] = message end }
    assert(bad.partnerships.build(params("wxobsbad"), { idempotency_key = "obs-bad" }))
    local found = false
    for _, m in ipairs(logged) do if m == "wxpay on_request hook failed" then found = true end end
    assert.is_true(found)
  end)
end)

describe("calls refused before anything is sent", function()
  it("have err.elapsed too (product functions, client.request) and fire no event", function()
    local events = {}
    local fake = require("spec.support.fake")
    local t = fake.transport(function() error("nothing is sent") end)
    local c = assert(wxpay.new(fake.config(t, { on_request = function(ev) events[#events + 1] = ev end })))
    local refused = {
      { c.busifavor.stocks.get("") },
      { c.busifavor.stocks.create({}) },
      { c.favor.stocks.get("x\n") },
      { c.partnerships.build({}) },
      { c.request{ method = "BREW", path = "/v3/x" } },
    }
    for i, r in ipairs(refused) do
      local err = r[2]
      assert.is_nil(r[1], i)
      assert.equal("invalid_argument", err.kind, i)
      assert.is_number(err.elapsed, i)
      assert.is_true(err.elapsed >= 0, i)
    end
    assert.equal(0, #events)
  end)
end)

describe("elapsed after the pipeline", function()
  it("an answer the product refuses (decode) has err.elapsed; an empty partnerships page meta.elapsed", function()
    local fake = require("spec.support.fake")
    local answer = { 200, '{"offset":-1}' }
    local t = fake.transport(function() return fake.response(answer[1], answer[2]) end)
    local c = assert(wxpay.new(fake.config(t, { max_retries = 0 })))
    local _, err = c.favor.stocks.start("9856000", { stock_creator_mchid = "1900000001" })
    assert.equal("decode", err.kind)
    assert.is_number(err.elapsed)
    _, err = c.partnerships.page{ authorized_data = { business_type = "FAVOR_STOCK" } }
    assert.equal("decode", err.kind)
    assert.is_number(err.elapsed)
    answer[1], answer[2] = 404, '{"code":"RESOURCE_NOT_EXISTS","message":"none"}'
    local page, perr, meta = c.partnerships.page{ authorized_data = { business_type = "FAVOR_STOCK" } }
    assert.is_nil(perr)
    assert.same({}, page.data)
    assert.is_true(meta.empty)
    assert.is_number(meta.elapsed)
  end)
end)

describe("client.request's route label", function()
  it("a declared endpoint is labelled with its template, not the ids in its path", function()
    local fake = require("spec.support.fake")
    local events = {}
    local t = fake.transport(function() return fake.response(404, '{"code":"NOT_FOUND","message":"x"}') end)
    local c = assert(wxpay.new(fake.config(t, { max_retries = 0,
      on_request = function(ev) events[#events + 1] = ev end })))
    c.request{ method = "GET", path = "/v3/marketing/busifavor/stocks/1234567890", query = { a = "b" } }
    c.request{ method = "GET", path = "/v3/marketing/favor/stocks/987/use-flow" }
    c.request{ method = "GET", path = "/v3/unknown/42", route = "/v3/unknown/{n}" }
    assert.equal(6, #events)
    assert.equal("/v3/marketing/busifavor/stocks/{stock_id}", events[2].route)
    assert.equal("/v3/marketing/favor/stocks/{stock_id}/use-flow", events[4].route)
    assert.equal("/v3/unknown/{n}", events[6].route)
  end)
end)

describe("wxpay.api.routes", function()
  it("every declared template is one of the sandbox's routes, with its method", function()
    -- Read from the sandbox's source (it runs on Lua 5.4 only): the fixed paths of
    -- wxpay.sandbox.api (`["/v3/…"] = { GET = …`) and the patterns of the coupon products
    -- (`{ "^/v3/…$", GET = …, PATCH = … }`).
    local function source(name) return assert(io.open("lua/wxpay/sandbox/" .. name .. ".lua")):read("*a") end
    local fixed, patterns = {}, {}
    for path, methods in source("api"):gmatch('%["(/v3/[^"]+)"%] = {([^\n]*)') do
      fixed[path] = {}
      for m in methods:gmatch("(%u+) =") do fixed[path][m] = true end
    end
    for _, name in ipairs({ "coupons_busifavor", "coupons_favor", "coupons_codes", "coupons_flows",
        "coupons_subsidy" }) do
      for pattern, methods in source(name):gmatch('{ "(%^/v3/[^"]+%$)",([^\n]*)}') do
        local p = { pattern }
        for m in methods:gmatch("(%u+) =") do p[m] = true end
        patterns[#patterns + 1] = p
      end
    end
    assert.is_true(#patterns >= 15)
    for _, e in pairs(require("wxpay.api.paygift").ENDPOINTS) do -- the sandbox routes paygift from these
      patterns[#patterns + 1] = { routes.pattern(e[2]), [e[1]] = true }
    end
    for _, e in ipairs(routes.list) do
      local method, template = e[1], e[2]
      local filled = template:gsub("{[%w_]+}", "X1")
      local found = fixed[template] and fixed[template][method]
      for _, r in ipairs(patterns) do
        if filled:find(r[1]) and r[method] then found = true end
      end
      assert(found, method .. " " .. template .. " is not a sandbox route")
    end
  end)

  it("every product route of the sandbox has a template (a call is never labelled with its ids)", function()
    local seen = 0
    local function check(method, filled, from)
      seen = seen + 1
      assert(routes.match(method, filled), method .. " " .. filled .. " (" .. from .. ") has no template")
    end
    for _, file in ipairs({ "coupons_busifavor", "coupons_favor", "coupons_codes", "coupons_flows",
        "coupons_subsidy" }) do
      local src = assert(io.open("lua/wxpay/sandbox/" .. file .. ".lua")):read("*a")
      for pattern, methods in src:gmatch('{ "%^(/v3/[^"]+)%$",([^\n]*)}') do
        local filled = pattern:gsub("%(%[%^/%]%+%)", "X1"):gsub("%%%-", "-")
        if not filled:find("^/v3/billdownload/") then -- a download link, fetched unsigned (client.download)
          for m in methods:gmatch("(%u+) =") do check(m, filled, file) end
        end
      end
    end
    for name, e in pairs(require("wxpay.api.paygift").ENDPOINTS) do
      check(e[1], (e[2]:gsub("{[%w_]+}", "X1")), "paygift." .. name)
    end
    assert.is_true(seen >= 40, seen)
  end)

  it("a fixed segment wins over a parameter; an unknown path has no template", function()
    assert.equal("/v3/marketing/busifavor/coupons/use", routes.match("POST", "/v3/marketing/busifavor/coupons/use"))
    assert.equal("/v3/marketing/favor/stocks/{stock_id}/start",
      routes.match("POST", "/v3/marketing/favor/stocks/987/start"))
    assert.equal("/v3/marketing/favor/stocks/{stock_id}",
      routes.match("GET", "/v3/marketing/favor/stocks/987?stock_creator_mchid=1900000001"))
    assert.is_nil(routes.match("GET", "/v3/marketing/favor/stocks/987/unknown"))
    assert.is_nil(routes.match("DELETE", "/v3/marketing/favor/stocks/987"))
  end)

  it("支付有礼's routes come from its ENDPOINTS declaration", function()
    assert.equal("/v3/marketing/paygiftactivity/activities/{activity_id}/merchants/add",
      routes.match("POST", "/v3/marketing/paygiftactivity/activities/10028001/merchants/add"))
    assert.equal("/v3/marketing/paygiftactivity/activities/{activity_id}",
      routes.match("GET", "/v3/marketing/paygiftactivity/activities/10028001"))
    assert.equal("/v3/marketing/paygiftactivity/activities",
      routes.match("GET", "/v3/marketing/paygiftactivity/activities?offset=0&limit=10"))
    local n = 0
    for _, e in ipairs(routes.list) do
      if e[2]:find("/paygiftactivity/", 1, true) then n = n + 1 end
    end
    assert.equal(8, n)
  end)
end)
