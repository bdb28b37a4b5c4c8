-- wxpay.store in a real nginx (Debian's nginx + libnginx-mod-http-lua, LuaJIT) with 4 workers:
-- the lua_shared_dict backend's operations, the rate budget shared by the workers (requests
-- from curl hammering `reserve`), and resty.redis (lua-nginx-redis) against a private
-- redis-server. The handlers run inside nginx and answer one line per step; this file drives.
local socket = require("socket")
local nginx = require("spec.support.nginx")
local redis_server = require("spec.support.redis")
local helpers = require("spec.helpers")

local ROOT = io.popen("pwd"):read("*l")

-- The handlers nginx runs: GET /t?what=ops|reserve|keepalive|down&backend=ngx|redis&...
local HANDLERS = [=[
local store = require("wxpay.store")
local budget = require("wxpay.store.budget")

local M = {}
local opened = {}

local function open(args)
  local key = args.backend .. ":" .. (args.port or "")
  if not opened[key] then
    local spec = "ngx:wxpay"
    if args.backend == "redis" then spec = { host = "127.0.0.1", port = tonumber(args.port), timeout = 1 } end
    opened[key] = assert(store.open(spec))
  end
  return assert(opened[key]:scope(args.mchid or "1900000001"))
end

-- Results as text: errors by code and field, everything else by tostring.
local function show(...)
  local out = {}
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if type(v) == "table" then v = tostring(v.code) .. ":" .. tostring(v.field) end
    out[i] = tostring(v)
  end
  return table.concat(out, ",")
end

function M.ops(args)
  local s = open(args)
  local lines = {}
  local function step(name, ...) lines[#lines + 1] = name .. "=" .. show(...) end
  step("get_absent", s:get("a"))
  step("set", s:set("a", "one"))
  step("get", s:get("a"))
  step("add_present", s:add("a", "two"))
  step("add_absent", s:add("b", "two", 0.5))
  step("incr_new", s:incr("n", 2, 30))
  step("incr", s:incr("n", 0.5))
  step("delete", s:delete("a"))
  step("get_deleted", s:get("a"))
  step("bad_key", s:get(""))
  local tok = store.lock(s, "certs:lock", 5)
  step("lock", type(tok))
  step("lock_held", store.lock(s, "certs:lock", 5))
  step("unlock_other", store.unlock(s, "certs:lock", "someone"))
  step("unlock", store.unlock(s, "certs:lock", tok))
  local w1, s1 = budget.reserve(s, "qps", 10)
  local w2 = budget.reserve(s, "qps", 10)
  -- The second start waits one spacing (1.02 / rate = 0.102 s), less the time that passed
  -- between the two calls (a millisecond or so under a sanitizer).
  step("reserve", w1, (w2 > 0.082 and w2 <= 0.102) and "one spacing" or string.format("%.3f", w2))
  step("throttle", budget.throttle(s, "qps", s1))
  step("throttle_again", budget.throttle(s, "qps", s1))
  step("short_ttl_set", s:set("short", "v", 0.05))
  ngx.sleep(0.2)
  step("short_ttl_get", s:get("short"))
  step("missing_dict", store.open("ngx:nope"))
  ngx.say(table.concat(lines, "\n"))
end

function M.reserve(args)
  local wait, start = budget.reserve(open(args), args.key, tonumber(args.rate))
  if not wait then
    ngx.status = 500
    ngx.say(tostring(start))
    return
  end
  ngx.sleep(wait)
  ngx.say(string.format("%.6f %d", start, ngx.worker.pid()))
end

function M.keepalive(args)
  local s = open(args)
  for i = 1, 30 do assert(s:set("k" .. i, "v")) end
  ngx.say("ok")
end

function M.down(args)
  local s = assert(store.open({ host = "127.0.0.1", port = tonumber(args.port), timeout = 0.3 }))
  ngx.update_time()
  local t0 = ngx.now()
  local v, err = s:get("k")
  local w, berr = budget.reserve(s, "qps", 5)
  ngx.update_time()
  ngx.say(show(v, err), "\n", show(w, berr), "\n", string.format("%.3f", ngx.now() - t0))
end

-- CPU per reserve on the shared dict next to one RSA-2048 signature, in this worker.
function M.cpu(args)
  local core = require("wxpay.core")
  local f = assert(io.open(args.dir .. "/k.pem"))
  local key = assert(core.load_private_key(f:read("*a")))
  f:close()
  local s = open(args)
  local function per_call(fn, n)
    local t0 = os.clock()
    for _ = 1, n do fn() end
    return (os.clock() - t0) / n
  end
  local sign = per_call(function() key:sign("POST\n/v3/pay/transactions/jsapi\n1554208460\nNONCE\n{}\n") end, 200)
  local reserve = per_call(function() assert(budget.reserve(s, "cpu", 1e6)) end, 5000)
  ngx.say(string.format("%.9f %.9f", sign, reserve))
end

function M.run()
  local args = ngx.req.get_uri_args()
  M[args.what](args)
end

return M
]=]

local CONF = [[
load_module /usr/share/nginx/modules/ndk_http_module.so;
load_module /usr/share/nginx/modules/ngx_http_lua_module.so;
worker_processes 4;
pid logs/nginx.pid;
error_log logs/error.log warn;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path tmp/body; proxy_temp_path tmp/proxy; fastcgi_temp_path tmp/fastcgi;
  uwsgi_temp_path tmp/uwsgi; scgi_temp_path tmp/scgi;
  lua_package_path "{{dir}}/?.lua;{{root}}/lua/?.lua;{{root}}/lua/?/init.lua;;";
  lua_package_cpath "{{root}}/build-luajit/?.so;;";
  lua_shared_dict wxpay 1m;
  server {
    listen {{listen}} reuseport;
    location = /up { return 200 "up"; }
    location /t { content_by_lua_block { require("store_t").run() } }
  }
}
]]

-- The steps' answers, by name.
local function steps(text)
  local out = {}
  for name, value in (text or ""):gmatch("([%w_]+)=([^\n]*)") do out[name] = value end
  return out
end

-- n requests to `url`, at most `parallel` at once, through curl: the bodies' lines.
local function hammer(url, n, parallel)
  local urls = {}
  for i = 1, n do urls[#urls + 1] = helpers.q(url .. "&i=" .. i) end
  local p = assert(io.popen(nginx.CLEAN_ENV .. "curl -s -m 30 --parallel --parallel-max " .. parallel .. " "
    .. table.concat(urls, " ") .. " 2>/dev/null"))
  local out = p:read("*a")
  p:close()
  local starts, workers, nworkers, bad = {}, {}, 0, {}
  for line in out:gmatch("[^\n]+") do
    local start, pid = line:match("^(%d+%.%d+) (%d+)$")
    if start then
      starts[#starts + 1] = tonumber(start)
      if not workers[pid] then workers[pid], nworkers = true, nworkers + 1 end
    else
      bad[#bad + 1] = line
    end
  end
  return starts, nworkers, bad
end

local function busiest_second(starts)
  table.sort(starts)
  local most, j = 0, 1
  for i = 1, #starts do
    while starts[i] - starts[j] > 1 do j = j + 1 end
    most = math.max(most, i - j + 1)
  end
  return most
end

local function redis_info(port, field)
  local c = socket.tcp()
  c:settimeout(2)
  assert(c:connect("127.0.0.1", port))
  c:send("*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n")
  local n = tonumber(c:receive("*l"):sub(2))
  local text = c:receive(n + 2)
  c:close()
  return tonumber(text:match(field .. ":(%d+)"))
end

describe("wxpay.store in nginx (4 workers)", function()
  local srv, server, dir

  setup(function()
    assert(io.open(nginx.NGINX), "nginx is not installed (make deps)")
    assert(io.open(nginx.LUA_MODULE), "libnginx-mod-http-lua is not installed (make deps)")
    if not io.open(ROOT .. "/build-luajit/wxpay/core.so") then os.execute("make -s luajit >/dev/null 2>&1") end
    dir = helpers.tmpdir()
    os.execute("chmod 755 " .. helpers.q(dir)) -- the workers run as nobody
    helpers.write(dir .. "/store_t.lua", HANDLERS)
    os.execute("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out " .. helpers.q(dir .. "/k.pem")
      .. " 2>/dev/null && chmod 644 " .. helpers.q(dir .. "/k.pem"))
    srv = redis_server.start()
    server = nginx.start((CONF:gsub("{{root}}", ROOT):gsub("{{dir}}", dir)))
    for _ = 1, 100 do
      local status = nginx.http("GET", server.url .. "/up")
      if status == 200 then break end
      socket.sleep(0.05)
    end
  end)

  teardown(function()
    local log = server and server:log() or ""
    if server then server:stop() end
    if srv then srv:stop() end
    helpers.cleanup()
    -- the down case's refused connects are logged by nginx itself; nothing else may be
    assert.same({}, nginx.bad_log_lines((log:gsub("[^\n]*what=down[^\n]*\n?", ""))))
  end)

  for _, backend in ipairs({ "ngx", "redis" }) do
    it(backend .. ": every operation, the lock and the budget's steps", function()
      local status, body = nginx.http("GET", server.url .. "/t?what=ops&backend=" .. backend
        .. "&port=" .. srv.port .. "&mchid=ops" .. backend)
      assert.equal(200, status, body)
      local r = steps(body)
      assert.same({
        get_absent = "nil", set = "true", get = "one", add_present = "false", add_absent = "true",
        incr_new = "2", incr = "2.5", delete = "true", get_deleted = "nil",
        bad_key = "nil,INVALID_ARGUMENT:key",
        lock = "string", lock_held = "false", unlock_other = "false", unlock = "true",
        reserve = "0,one spacing", throttle = "true,5", throttle_again = "false,5",
        short_ttl_set = "true", short_ttl_get = "nil",
        missing_dict = "nil,INVALID_CONFIG:store",
      }, r)
    end)
  end

  for _, backend in ipairs({ "ngx", "redis" }) do
    it(backend .. ": requests on all workers share one budget: at most rate a second, 90 %+ used", function()
      local rate, n = 20, 60
      local url = server.url .. "/t?what=reserve&backend=" .. backend .. "&port=" .. srv.port
        .. "&rate=" .. rate .. "&key=hammer" .. math.random(1, 1e9)
      local starts, nworkers, bad = hammer(url, n, 16)
      assert.same({}, bad)
      assert.equal(n, #starts)
      assert.is_true(nworkers >= 2, "served by " .. nworkers .. " worker(s)")
      local busiest = busiest_second(starts)
      table.sort(starts)
      local achieved = (#starts - 1) / (starts[#starts] - starts[1])
      print(("\n%s budget, %d workers at %d/s: busiest second %d, %.2f starts/s"):format(
        backend, nworkers, rate, busiest, achieved))
      assert.is_true(busiest <= rate, "busiest second: " .. busiest)
      assert.is_true(achieved >= 0.9 * rate, ("%.2f starts/s of %d"):format(achieved, rate))
    end)
  end

  it("ngx: a reserve costs under 5 % of one RSA-2048 signature's CPU", function()
    local status, body = nginx.http("GET", server.url .. "/t?what=cpu&backend=ngx&dir=" .. dir)
    assert.equal(200, status, body)
    local sign, reserve = body:match("^([%d.]+) ([%d.]+)")
    sign, reserve = tonumber(sign), tonumber(reserve)
    print(("\nngx reserve: %.1f us CPU, %.2f %% of one RSA-2048 signature (%.1f us)"):format(
      reserve * 1e6, 100 * reserve / sign, sign * 1e6))
    assert.is_true(reserve < 0.05 * sign, ("reserve %.1f us, sign %.1f us"):format(reserve * 1e6, sign * 1e6))
  end)

  it("resty.redis keeps connections in nginx's pool", function()
    local before = redis_info(srv.port, "total_connections_received")
    for _ = 1, 3 do
      assert.equal(200, (nginx.http("GET", server.url .. "/t?what=keepalive&backend=redis&port=" .. srv.port)))
    end
    local after = redis_info(srv.port, "total_connections_received")
    -- 90 operations; at most one new connection per worker (plus our INFO connection)
    assert.is_true(after - before <= 5, "new connections: " .. (after - before))
  end)

  it("resty.redis: a server that is down answers nil, err within the timeout", function()
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close() -- nothing listens there now
    local status, body = nginx.http("GET", server.url .. "/t?what=down&port=" .. port)
    assert.equal(200, status, body)
    local get, reserve, took = body:match("^([^\n]*)\n([^\n]*)\n([%d.]+)")
    assert.equal("nil,STORE_UNAVAILABLE:nil", get)
    assert.equal("nil,STORE_UNAVAILABLE:nil", reserve)
    assert.is_true(tonumber(took) < 1, took)
  end)
end)
