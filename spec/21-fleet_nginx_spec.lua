-- One merchant, many workers and hosts in real nginx (Debian's nginx + libnginx-mod-http-lua,
-- LuaJIT): 4 workers with `store = "ngx:NAME"`, and two nginx instances ("hosts") sharing
-- one private redis-server, against the sandbox in download mode (only apiv3_key). Counts
-- `/v3/certificates` downloads and measures request starts from the sandbox's request log.
-- The clients are made in the master (init_by_lua: it reads the keys), one per variant.
local nginx = require("spec.support.nginx")
local redis_server = require("spec.support.redis")
local sandbox = require("spec.support.sandbox")
local helpers = require("spec.helpers")
local fleet_nginx = require("spec.support.fleet_nginx")

local ROOT = fleet_nginx.ROOT

-- After fleet_nginx's `init` (clients[variant], LIST).
local HANDLERS = [=[
-- One call (what=once) or calls as fast as they go for `secs` (what=drive).
function M.run()
  local args = ngx.req.get_uri_args()
  local c = clients[args.variant]
  local calls, until_t = 0, ngx.now() + (tonumber(args.secs) or 0)
  repeat
    local page, err = c.partnerships.page(LIST)
    if not page then ngx.status = 500; ngx.say(tostring(err)); return end
    calls = calls + 1
    ngx.update_time()
  until ngx.now() >= until_t
  ngx.say(calls, " ", ngx.worker.pid())
end
]=]

local HOST = { module = "fleet_t", workers = 4, events = "worker_connections 512; multi_accept on;",
  http = { "lua_shared_dict certs 1m;", "lua_shared_dict budget 1m;" }, locations = { { "/t", "run" } } }

-- `urls`, at most `parallel` at once, through curl: the answers' lines (calls, worker pid).
local function fetch_all(urls, parallel)
  local quoted = {}
  for i, u in ipairs(urls) do quoted[i] = helpers.q(u .. "&i=" .. i) end
  local p = assert(io.popen(nginx.CLEAN_ENV .. "curl -s -m 60 --parallel --parallel-immediate"
    .. " --parallel-max " .. parallel .. " " .. table.concat(quoted, " ") .. " 2>/dev/null"))
  local out = p:read("*a")
  p:close()
  local calls, workers, nworkers, bad = 0, {}, 0, {}
  for line in out:gmatch("[^\n]+") do
    local n, pid = line:match("^(%d+) (%d+)$")
    if n then
      calls = calls + tonumber(n)
      if not workers[pid] then workers[pid], nworkers = true, nworkers + 1 end
    else
      bad[#bad + 1] = line
    end
  end
  return calls, nworkers, bad
end

local function repeated(urls_of, n)
  local urls = {}
  for i = 1, n do urls[i] = urls_of(i) end
  return urls
end

local downloads, start_times, busiest_second = fleet_nginx.downloads, fleet_nginx.starts, fleet_nginx.busiest_second

-- Starts a second over the middle of the run (the first and last half second left out:
-- workers start and stop at different moments).
local function middle_rate(t)
  local from, to = t[1] + 0.5, t[#t] - 0.5
  local n = 0
  for _, x in ipairs(t) do
    if x >= from and x <= to then n = n + 1 end
  end
  return n / (to - from)
end

describe("a fleet in nginx: 4 workers, and two hosts over Redis", function()
  local sb, srv, dir, hosts = nil, nil, nil, {}

  setup(function()
    assert(io.open(nginx.NGINX), "nginx is not installed (make deps)")
    assert(io.open(nginx.LUA_MODULE), "libnginx-mod-http-lua is not installed (make deps)")
    if not io.open(ROOT .. "/build-luajit/wxpay/core.so") then os.execute("make -s luajit >/dev/null 2>&1") end
    sb = sandbox.start{ mode = "certificate", empty_list = 200 }
    srv = redis_server.start()
    dir = helpers.tmpdir()
    local redis = "redis://127.0.0.1:" .. srv.port
    fleet_nginx.write(dir, HOST.module, HANDLERS, fleet_nginx.config(sb.config), {
      dict_certs = { store = "ngx:certs" },
      dict_qps = { store = "ngx:budget", qps = 20 },
      redis_certs = { store = redis .. "/1" },
      redis_qps = { store = redis .. "/2", qps = 20 },
    })
    HOST.dir, HOST.ca_file = dir, sb.config.ca_file
    local conf = fleet_nginx.conf(HOST)
    for i = 1, 2 do hosts[i] = fleet_nginx.start(conf, dir) end
  end)

  teardown(function()
    local logs = {}
    for _, h in ipairs(hosts) do logs[#logs + 1] = h:log(); h:stop() end
    if srv then srv:stop() end
    if sb then sb:stop() end
    helpers.cleanup()
    for _, log in ipairs(logs) do assert.same({}, nginx.bad_log_lines(log)) end
  end)

  before_each(function() sb:control("DELETE", "/requests") end)

  local function url(host, variant, secs)
    return host.url .. "/t?variant=" .. variant .. "&secs=" .. (secs or 0)
  end

  it("ngx: 200 requests over 4 workers, one /v3/certificates download", function()
    local calls, nworkers, bad = fetch_all(repeated(function() return url(hosts[1], "dict_certs") end, 200), 16)
    assert.same({}, bad)
    assert.equal(200, calls)
    assert.is_true(nworkers >= 2, "served by " .. nworkers .. " worker(s)")
    assert.equal(1, downloads(sb:requests()))
  end)

  it("redis: 200 requests over two nginx hosts, one /v3/certificates download in all", function()
    local calls, nworkers, bad = fetch_all(repeated(function(i)
      return url(hosts[i % 2 + 1], "redis_certs")
    end, 200), 16)
    assert.same({}, bad)
    assert.equal(200, calls)
    assert.is_true(nworkers >= 3, "served by " .. nworkers .. " worker(s)")
    assert.equal(1, downloads(sb:requests()))
  end)

  for _, case in ipairs({ { "ngx", "dict_qps", 1 }, { "redis", "redis_qps", 2 } }) do
    it(case[1] .. ": qps = 20 for " .. (4 * case[3]) .. " workers driven flat out for 3 s: "
       .. "no second over 20 starts, 90 %+ of the budget used", function()
      local calls, _, bad = fetch_all(repeated(function(i)
        return url(hosts[(i - 1) % case[3] + 1], case[2], 3)
      end, 8 * case[3]), 8 * case[3])
      assert.same({}, bad)
      local t = start_times(sb:requests())
      assert.is_true(#t >= calls) -- every call started once at least (the first ones downloaded too)
      local most, rate = busiest_second(t), middle_rate(t)
      print(("\n%s: %d starts, busiest second %d, %.2f starts/s in the middle of the run"):format(
        case[1], #t, most, rate))
      assert.is_true(most <= 20, "busiest second: " .. most)
      assert.is_true(rate >= 0.9 * 20, ("%.2f starts/s"):format(rate))
    end)
  end
end)
