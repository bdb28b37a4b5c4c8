-- The fleet in real nginx (Debian's nginx + libnginx-mod-http-lua) sharing a private
-- redis-server, against the sandbox in download mode: a refresh holder killed with SIGKILL
-- mid-download stalls no call of the other members, and its lock is taken over once its
-- lease runs out. Two nginx instances ("hosts"), one worker each, so the one to kill is known.
local cjson = require("cjson").new()
local socket = require("socket")
local nginx = require("spec.support.nginx")
local redis_server = require("spec.support.redis")
local sandbox = require("spec.support.sandbox")
local helpers = require("spec.helpers")
local store = require("wxpay.store")
local bad_redis = require("spec.support.bad_redis")
local fleet_nginx = require("spec.support.fleet_nginx")

local ROOT = fleet_nginx.ROOT

-- After fleet_nginx's `init` (clients[variant], LIST).
local HANDLERS = [=[
-- One call: whether it worked, how long it took, which worker.
function M.run()
  local args = ngx.req.get_uri_args()
  ngx.update_time()
  local t0 = ngx.now()
  local page, err = clients[args.variant].partnerships.page(LIST)
  ngx.update_time()
  ngx.say(cjson.encode({ ok = page ~= nil, err = err and tostring(err) or nil,
    secs = ngx.now() - t0, pid = ngx.worker.pid() }))
end

-- One store operation alone (op=get: a Redis on `port`; op=evict: a full shared dict).
function M.store()
  local args = ngx.req.get_uri_args()
  local store = require("wxpay.store")
local bad_redis = require("spec.support.bad_redis")
  if args.op == "evict" then
    local d = ngx.shared.small
    d:flush_all()
    d:flush_expired()
    local n = 0
    while d:safe_set("app:" .. n, string.rep("a", 1000)) do n = n + 1 end
    local s = assert(store.open("ngx:small"))
    local ok, err = s:set("wxpay:x", string.rep("b", 20000), 60)
    local kept = 0
    for i = 0, n - 1 do if d:get("app:" .. i) then kept = kept + 1 end end
    ngx.say(cjson.encode({ ok = ok or false, err = err and tostring(err) or nil, kept = kept, filled = n }))
    return
  end
  local s = assert(store.open({ host = "127.0.0.1", port = tonumber(args.port), timeout = tonumber(args.timeout) }))
  ngx.update_time()
  local t0 = ngx.now()
  local v, err = s:get("k", tonumber(args.limit))
  ngx.update_time()
  ngx.say(cjson.encode({ ok = v ~= nil, err = err and tostring(err) or nil, secs = ngx.now() - t0 }))
end
]=]

local HOST = { module = "refresh_t", http = { "lua_shared_dict small 64k;" },
  locations = { { "/t", "run" }, { "/store", "store" } } }

describe("fleet in nginx: a refresh holder killed mid-download; store bounds", function()
  local sb, srv, dir, hosts, shared = nil, nil, nil, {}, nil
  local trickle, huge

  setup(function()
    assert(io.open(nginx.NGINX), "nginx is not installed (make deps)")
    if not io.open(ROOT .. "/build-luajit/wxpay/core.so") then os.execute("make -s luajit >/dev/null 2>&1") end
    sb = sandbox.start{ mode = "certificate", empty_list = 200 }
    srv = redis_server.start()
    trickle, huge = bad_redis.start("trickle"), bad_redis.start("huge")
    dir = helpers.tmpdir()
    local url = "redis://127.0.0.1:" .. srv.port .. "/3"
    shared = assert(store.open(url, { driver = "socket" })):scope(sb.config.mchid)
    fleet_nginx.write(dir, HOST.module, HANDLERS, fleet_nginx.config(sb.config), {
      refresh = { store = url, certificate_refresh_interval = 2 },
      trickle = { store = { host = "127.0.0.1", port = trickle.port, timeout = 1 }, qps = 20, deadline = 2 },
    })
    HOST.dir, HOST.ca_file = dir, sb.config.ca_file
    local conf = fleet_nginx.conf(HOST)
    for i = 1, 2 do hosts[i] = fleet_nginx.start(conf, dir) end
  end)

  teardown(function()
    local log = hosts[2] and hosts[2]:log()
    for _, h in ipairs(hosts) do h:stop() end
    if srv then srv:stop() end
    if trickle then trickle:stop() end
    if huge then huge:stop() end
    if sb then sb:stop() end
    helpers.cleanup()
    -- The misbehaving stores' timeouts are logged by the cosockets: expected here.
    if log then assert.same({}, nginx.bad_log_lines((log:gsub("[^\n]*lua tcp socket read timed out[^\n]*", "")))) end
  end)

  local function call(host, variant)
    local status, body = nginx.http("GET", host.url .. "/t?variant=" .. (variant or "refresh"))
    assert.equal(200, status, "no answer (a call blocked?): " .. tostring(body))
    return cjson.decode(body)
  end

  it("the other members' calls go on at once; the lock is taken over after the lease", function()
    assert.is_true(call(hosts[1]).ok)
    assert.is_true(call(hosts[2]).ok)
    sb:fault{ fault = "delay", seconds = 20, count = 1, path = "/v3/certificates" }
    socket.sleep(2.2) -- the refresh is due
    local a = call(hosts[1]) -- its timer takes the lock and starts the (slow) download
    assert.is_true(a.ok)
    local held
    for _ = 1, 100 do
      held = shared:get("certs:lock")
      if held then break end
      socket.sleep(0.02)
    end
    assert.truthy(held, "host 1 took no download lock")
    socket.sleep(0.3)
    local killed_at = socket.gettime()
    os.execute("kill -KILL " .. math.floor(a.pid)) -- the holder dies mid-download
    local slowest = 0
    for _ = 1, 8 do
      local b = call(hosts[2])
      assert.is_true(b.ok, b.err)
      slowest = math.max(slowest, b.secs)
      socket.sleep(0.5)
    end
    -- Nothing waited for the download (the sandbox holds it 20 s).
    assert.is_true(slowest < 2, "a call took " .. slowest .. " s")
    -- Host 2 took the lock over and downloaded (the first download since the kill).
    local function taken_over()
      for _, r in ipairs(sb:requests()) do
        if r.target:find("^/v3/certificates") and r.received_at > killed_at then return true end
      end
    end
    for _ = 1, 100 do
      if taken_over() then break end
      socket.sleep(0.1)
    end
    assert.truthy(taken_over(), "no member took the dead holder's lock over")
  end)

  local function store_op(query)
    local status, body = nginx.http("GET", hosts[2].url .. "/store?" .. query)
    assert.equal(200, status, "no answer (a store operation blocked?): " .. tostring(body))
    return cjson.decode(body)
  end

  it("a trickled Redis reply ends within the store's timeout, and within what the caller has left", function()
    local r = store_op("op=get&timeout=1&port=" .. trickle.port)
    assert.is_false(r.ok)
    assert.is_true(r.secs < 1.5, "get took " .. r.secs .. " s with timeout = 1")
    r = store_op("op=get&timeout=30&limit=0.3&port=" .. trickle.port)
    assert.is_false(r.ok)
    assert.is_true(r.secs < 0.8, "get took " .. r.secs .. " s with 0.3 s left")
    -- A whole call (deadline = 2, qps through the trickling store) is not held past it.
    local b = call(hosts[2], "trickle")
    assert.is_true(b.ok, b.err)
    assert.is_true(b.secs < 2.5, "the call took " .. b.secs .. " s with deadline = 2")
  end)

  it("a 300 MB Redis reply is refused before it is read", function()
    local r = store_op("op=get&timeout=5&port=" .. huge.port)
    assert.is_false(r.ok)
    assert.truthy(r.err:find("too large", 1, true), r.err)
  end)

  it("ngx:NAME never evicts the application's keys: a full dict is a store error", function()
    local r = store_op("op=evict")
    assert.is_false(r.ok)
    assert.truthy(r.err:find("no memory", 1, true), r.err)
    assert.equal(r.filled, r.kept)
  end)
end)
