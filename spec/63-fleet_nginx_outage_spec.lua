-- A store outage does not multiply the rate (real nginx, 2 workers, a private redis-server
-- killed mid-run, the sandbox in download mode): while Redis answers, each worker learns how
-- many members share the budget; when it dies each paces at its fair share (qps / members),
-- after the starts it had already reserved. Starts are read from the sandbox's request log.
local cjson = require("cjson").new()
local socket = require("socket")
local nginx = require("spec.support.nginx")
local redis_server = require("spec.support.redis")
local sandbox = require("spec.support.sandbox")
local helpers = require("spec.helpers")
local fleet_nginx = require("spec.support.fleet_nginx")

local ROOT = fleet_nginx.ROOT

-- After fleet_nginx's `init` (clients[variant], LIST).
local HANDLERS = [=[
-- Calls as fast as they go until the Unix time `until` (an error answer is not a failure
-- here: a refused start still counts as not sent).
function M.run()
  local args = ngx.req.get_uri_args()
  local c, n = clients[args.variant], 0
  repeat
    c.partnerships.page(LIST)
    n = n + 1
    ngx.update_time()
  until ngx.now() >= tonumber(args["until"])
  ngx.say(n, " ", ngx.worker.pid())
end

-- A campaign: `client.concurrent` with 16 tasks calling until `until` (low priority).
function M.campaign()
  local args = ngx.req.get_uri_args()
  local c, tasks, n = clients[args.variant], {}, 0
  for i = 1, 16 do
    tasks[i] = function()
      repeat
        c.partnerships.page(LIST)
        n = n + 1
        ngx.update_time()
      until ngx.now() >= tonumber(args["until"])
    end
  end
  c.concurrent(tasks, { concurrency = 16 })
  ngx.say(n)
end

-- One site call: whether it worked and how long it took.
function M.once()
  local args = ngx.req.get_uri_args()
  ngx.update_time()
  local t0 = ngx.now()
  local page, err = clients[args.variant].partnerships.page(LIST, { deadline = 1.5 })
  ngx.update_time()
  ngx.say(cjson.encode({ ok = page ~= nil, err = err and tostring(err) or nil, secs = ngx.now() - t0 }))
end
]=]

local HOST = { module = "outage_t", workers = 2, http = { "lua_socket_log_errors off;" },
  locations = { { "/t", "run" }, { "/campaign", "campaign" }, { "/once", "once" } } }

local busiest_second = fleet_nginx.busiest_second

-- Killing Redis mid-run resets the workers' kept-alive connections to it, and nginx itself
-- logs a reset or broken pipe at error level whatever `lua_socket_log_errors` says (when a
-- command left just as Redis died). On a request of the outage case a plain recv() or send()
-- failure can only be that Redis connection: the sandbox speaks TLS (its failures are SSL_*
-- lines). Every other error line still fails the spec.
local function expected_gone(lines)
  local out = {}
  for _, line in ipairs(lines) do
    local redis_gone = line:find("variant=outage", 1, true)
      and (line:find("recv() failed (104: Connection reset by peer)", 1, true)
        or line:find("send() failed (32: Broken pipe)", 1, true)
        or line:find("writev() failed (32: Broken pipe)", 1, true))
    if not redis_gone then out[#out + 1] = line end
  end
  return out
end

describe("fleet in nginx: Redis dies mid-run", function()
  local sb, srv, dir, host

  setup(function()
    assert(io.open(nginx.NGINX), "nginx is not installed (make deps)")
    if not io.open(ROOT .. "/build-luajit/wxpay/core.so") then os.execute("make -s luajit >/dev/null 2>&1") end
    sb = sandbox.start{ mode = "certificate", empty_list = 200 }
    srv = redis_server.start()
    dir = helpers.tmpdir()
    fleet_nginx.write(dir, HOST.module, HANDLERS, fleet_nginx.config(sb.config), {
      outage = { store = { host = "127.0.0.1", port = srv.port, timeout = 0.5 }, qps = 10 },
      prio = { store = "redis://127.0.0.1:" .. srv.port .. "/4", qps = 10 },
    })
    HOST.dir, HOST.ca_file = dir, sb.config.ca_file
    host = fleet_nginx.start(fleet_nginx.conf(HOST), dir)
  end)

  teardown(function()
    local log = host and host:log()
    if host then host:stop() end
    if srv then srv:stop() end
    if sb then sb:stop() end
    helpers.cleanup()
    if log then assert.same({}, expected_gone(nginx.bad_log_lines(log))) end
  end)

  it("a campaign flat out on the same budget: site calls wait about one spacing, the fleet stays at qps", function()
    sb:control("DELETE", "/requests")
    assert.equal(200, (nginx.http("GET", host.url .. "/once?variant=prio"))) -- certificates in hand
    local t_end = socket.gettime() + 5
    local p = assert(io.popen(nginx.CLEAN_ENV .. "curl -s -m 30 " .. helpers.q(host.url
      .. "/campaign?variant=prio&until=" .. string.format("%.3f", t_end)) .. " 2>/dev/null"))
    socket.sleep(1.5) -- the campaign's 16 tasks have the budget to themselves
    local lat = {}
    for i = 1, 10 do
      local status, body = nginx.http("GET", host.url .. "/once?variant=prio")
      assert.equal(200, status)
      local r = cjson.decode(body)
      assert.is_true(r.ok, "site call " .. i .. ": " .. tostring(r.err))
      lat[#lat + 1] = r.secs
      socket.sleep(0.25)
    end
    local campaign_calls = tonumber(p:read("*a"))
    p:close()
    table.sort(lat)
    local t = {}
    for _, r in ipairs(sb:requests()) do
      if r.target:find("^/v3/marketing/partnerships") then t[#t + 1] = r.received_at end
    end
    local most = busiest_second(t)
    print(("\ncampaign at qps = 10: %d campaign calls, site calls median %.3f s, slowest %.3f s; busiest second %d")
      :format(campaign_calls or -1, lat[5], lat[10], most))
    assert.is_true((campaign_calls or 0) >= 20, "the campaign got what the site left")
    -- one spacing (0.102 s) plus the sandbox's answer, with room for a busy machine
    assert.is_true(lat[10] < 0.6, "slowest site call " .. lat[10] .. " s")
    -- qps, plus one for a start the sandbox received late (a busy machine bunches arrivals)
    assert.is_true(most <= 11, "busiest second " .. most)
  end)

  it("qps = 10 over 2 workers: no second over qps + 1 across the switch and after it", function()
    sb:control("DELETE", "/requests")
    local t_end = socket.gettime() + 5
    local urls = {}
    for i = 1, 8 do
      urls[i] = helpers.q(host.url .. "/t?variant=outage&until=" .. string.format("%.3f", t_end) .. "&i=" .. i)
    end
    local p = assert(io.popen(nginx.CLEAN_ENV .. "curl -s -m 30 --parallel --parallel-immediate --parallel-max 8 "
      .. table.concat(urls, " ") .. " 2>/dev/null"))
    socket.sleep(2.5) -- both workers shared the budget and learned of each other
    local killed_at = socket.gettime()
    srv:kill()
    p:read("*a")
    p:close()
    local t, settled = {}, {}
    for _, r in ipairs(sb:requests()) do
      if r.target:find("^/v3/marketing/partnerships") then
        t[#t + 1] = r.received_at
        -- once the starts reserved before the outage are spent (the queue was under 1 s)
        if r.received_at >= killed_at + 1 then settled[#settled + 1] = r.received_at end
      end
    end
    local most, most_settled = busiest_second(t), busiest_second(settled)
    print(("\nstore outage at qps = 10: busiest second %d across the switch, %d after it (%d starts after it)")
      :format(most, most_settled, #settled))
    assert.is_true(#settled >= 10, "the workers went on alone: " .. #settled .. " starts")
    -- qps + one spacing, plus one for a start the sandbox received late (before: 20)
    assert.is_true(most_settled <= 12, "busiest second after the switch: " .. most_settled)
    -- Across the switch, starts reserved before it meet the fair-share pacing of a worker that
    -- switched earlier: a little over qps, never the sum of the workers' full rates.
    assert.is_true(most <= 15, "busiest second across the switch: " .. most)
  end)
end)
