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
  init_by_lua_block { require("refresh_t").init(os.getenv("FLEET_CONFIG")) }
  server {
    listen {{listen}} reuseport;
    location = /up { return 200 "up"; }
    location /t { content_by_lua_block { require("refresh_t").run() } }
  }
}
]]

describe("fleet refresh in nginx: a holder killed mid-download", function()
  local sb, srv, dir, hosts, shared = nil, nil, nil, {}, nil

  setup(function()
    assert(io.open(nginx.NGINX), "nginx is not installed (make deps)")
    if not io.open(ROOT .. "/build-luajit/wxpay/core.so") then os.execute("make -s luajit >/dev/null 2>&1") end
    sb = sandbox.start{ mode = "certificate", empty_list = 200 }
    srv = redis_server.start()
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
    if sb then sb:stop() end
    helpers.cleanup()
    if log then assert.same({}, nginx.bad_log_lines(log)) end
  end)

  local function call(host)
    local status, body = nginx.http("GET", host.url .. "/t?variant=refresh")
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
    -- Host 2 took the lock over and stored a fresh answer within a few seconds.
    local stored
    for _ = 1, 200 do
      stored = shared:get("certs")
      if stored then break end
      socket.sleep(0.05)
    end
    assert.truthy(stored, "no member took the dead holder's lock over")
  end)
end)
