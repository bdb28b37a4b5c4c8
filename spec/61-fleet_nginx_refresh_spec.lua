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

local ROOT = io.popen("pwd"):read("*l")

local HANDLERS = [=[
local cjson = require("cjson.safe")
local wxpay = require("wxpay")
local M, clients = {}, {}
local LIST = { authorized_data = { business_type = "BUSIFAVOR_STOCK" } }

function M.init(path)
  local f = assert(io.open(path))
  local spec = assert(cjson.decode(f:read("*a")))
  f:close()
  for name, changes in pairs(spec.variants) do
    local cfg = {}
    for k, v in pairs(spec.config) do cfg[k] = v end
    for k, v in pairs(changes) do cfg[k] = v end
    clients[name] = assert(wxpay.new(cfg))
  end
end

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

return M
]=]

local CONF = [[
load_module /usr/share/nginx/modules/ndk_http_module.so;
load_module /usr/share/nginx/modules/ngx_http_lua_module.so;
worker_processes 1;
pid logs/nginx.pid;
error_log logs/error.log warn;
env FLEET_CONFIG;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path tmp/body; proxy_temp_path tmp/proxy; fastcgi_temp_path tmp/fastcgi;
  uwsgi_temp_path tmp/uwsgi; scgi_temp_path tmp/scgi;
  lua_package_path "{{dir}}/?.lua;{{root}}/lua/?.lua;{{root}}/lua/?/init.lua;;";
  lua_package_cpath "{{root}}/build-luajit/?.so;;";
  lua_ssl_trusted_certificate {{ca_file}};
  lua_ssl_verify_depth 3;
  lua_shared_dict small 64k;
  init_by_lua_block { require("refresh_t").init(os.getenv("FLEET_CONFIG")) }
  server {
    listen {{listen}} reuseport;
    location = /up { return 200 "up"; }
    location /t { content_by_lua_block { require("refresh_t").run() } }
    location /store { content_by_lua_block { require("refresh_t").store() } }
  }
}
]]

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
    os.execute("chmod 755 " .. helpers.q(dir)) -- the workers run as nobody
    helpers.write(dir .. "/refresh_t.lua", HANDLERS)
    local base = helpers.config_from(sb, { platform_certificate_files = false,
      wechatpay_public_key_file = false, wechatpay_public_key_id = false })
    base.base_url = base.base_url:gsub("^https://127%.0%.0%.1:", "https://localhost:")
    local url = "redis://127.0.0.1:" .. srv.port .. "/3"
    shared = assert(store.open(url, { driver = "socket" })):scope(base.mchid)
    helpers.write(dir .. "/fleet.json", cjson.encode({ config = base, variants = {
      refresh = { store = url, certificate_refresh_interval = 2 },
      trickle = { store = { host = "127.0.0.1", port = trickle.port, timeout = 1 }, qps = 20, deadline = 2 },
    } }))
    local conf = CONF:gsub("{{root}}", ROOT):gsub("{{dir}}", dir):gsub("{{ca_file}}", sb.config.ca_file)
    for i = 1, 2 do
      hosts[i] = nginx.start(conf, "FLEET_CONFIG=" .. helpers.q(dir .. "/fleet.json"))
      for _ = 1, 100 do
        if nginx.http("GET", hosts[i].url .. "/up") == 200 then break end
        socket.sleep(0.05)
      end
    end
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
