--- Benchmark: one merchant in nginx with 4 workers sharing `store = "ngx:NAME"`, against the
-- sandbox in download mode. Prints /v3/certificates downloads for 200 requests (one refresh
-- interval), the busiest one-second window of request starts (sandbox request log) with
-- `qps = 20` and the workers driven flat out for 3 s, and the CPU one request spends on the
-- store (the budget reserve and the failover read, through wxpay.fleet) next to one
-- RSA-2048 signature, measured in a worker. Asserts nothing. `lua5.4 bench/fleet.lua` runs
-- it alone; needs nginx + libnginx-mod-http-lua and build-luajit/ (make luajit).
local alone = arg and arg[0] and arg[0]:match("bench/fleet%.lua$")
if alone then
  package.path = "lua/?.lua;lua/?/init.lua;./?.lua;" .. package.path
  package.cpath = (jit and "build-luajit/?.so;" or "build/?.so;") .. package.cpath
end

local cjson = require("cjson")
local nginx = require("spec.support.nginx")
local sandbox = require("wxpay.sandbox.process")
local fleet_nginx = require("spec.support.fleet_nginx")

local M = {}

local ROOT = fleet_nginx.ROOT

local HANDLERS = [=[
local cjson = require("cjson.safe")
local wxpay = require("wxpay")
local M, clients, cfg = {}, {}, nil
local LIST = { authorized_data = { business_type = "BUSIFAVOR_STOCK" } }

function M.init(path)
  local f = assert(io.open(path))
  local spec = assert(cjson.decode(f:read("*a")))
  f:close()
  cfg = spec.config
  -- read here, in the master: the workers run as nobody
  if cfg.private_key_file then
    local kf = assert(io.open(cfg.private_key_file))
    cfg.key_pem = kf:read("*a")
    kf:close()
  end
  for name, changes in pairs(spec.variants) do
    local c = {}
    for k, v in pairs(cfg) do if k ~= "key_pem" then c[k] = v end end
    for k, v in pairs(changes) do c[k] = v end
    clients[name] = assert(wxpay.new(c))
  end
end

function M.run()
  local args = ngx.req.get_uri_args()
  local c = clients[args.variant]
  local calls, until_t = 0, ngx.now() + (tonumber(args.secs) or 0)
  repeat
    assert(c.partnerships.page(LIST))
    calls = calls + 1
    ngx.update_time()
  until ngx.now() >= until_t
  ngx.say(calls)
end

-- CPU of the store per request (reserve + failover read) and of one RSA-2048 signature.
function M.cpu()
  local core = require("wxpay.core")
  local fleet = require("wxpay.fleet")
  local key = assert(core.load_private_key(cfg.key_pem or cfg.private_key))
  local st = { mchid = cfg.mchid, monotonic = ngx.now, now = ngx.now, sleep = ngx.sleep,
               backup_url = "https://backup", failover_cooldown = 60 }
  assert(fleet.check({ store = "ngx:cpu", qps = 1e6 }, st))
  local function per_call(fn, n)
    local t0 = os.clock()
    for _ = 1, n do fn() end
    return (os.clock() - t0) / n
  end
  local sign = per_call(function() key:sign("GET\n/v3/x\n1554208460\nNONCE\n\n") end, 200)
  local r = { method = "GET", target = "/v3/marketing/partnerships?limit=10" }
  local store = per_call(function() fleet.before_send(st, r); fleet.prefer_backup_until(st) end, 5000)
  ngx.say(string.format("%.9f %.9f", sign, store))
end

return M
]=]

local HOST = { module = "fleet_b", workers = 4, events = "worker_connections 512; multi_accept on;",
  http = { "lua_shared_dict certs 1m;", "lua_shared_dict budget 1m;", "lua_shared_dict cpu 1m;" },
  locations = { { "/t", "run" }, { "= /cpu", "cpu" } } }

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

local function curl_all(url, n, parallel)
  local urls = {}
  for i = 1, n do urls[i] = q(url .. "&i=" .. i) end
  local p = assert(io.popen(nginx.CLEAN_ENV .. "curl -s -m 60 --parallel --parallel-immediate"
    .. " --parallel-max " .. parallel .. " " .. table.concat(urls, " ") .. " 2>/dev/null"))
  local out = p:read("*a")
  p:close()
  return out
end

local function busiest_second(sb)
  local t = fleet_nginx.starts(sb:requests())
  return fleet_nginx.busiest_second(t), #t
end

local function downloads(sb) return fleet_nginx.downloads(sb:requests()) end

local function start(sb, dir)
  write(dir .. "/fleet_b.lua", HANDLERS)
  write(dir .. "/fleet.json", cjson.encode({ config = fleet_nginx.config(sb.config), variants = {
    certs = { store = "ngx:certs" }, qps = { store = "ngx:budget", qps = 20 } } }))
  HOST.dir, HOST.ca_file = dir, sb.config.ca_file
  return fleet_nginx.start(fleet_nginx.conf(HOST), dir)
end

function M.run()
  print("== wxpay fleet: 4 nginx workers sharing lua_shared_dict (store = \"ngx:NAME\") ==")
  if not (io.open(nginx.NGINX) and io.open(nginx.LUA_MODULE) and io.open(ROOT .. "/build-luajit/wxpay/core.so")) then
    print("(needs nginx, libnginx-mod-http-lua and make luajit: skipped)")
    return {}
  end
  local sb = sandbox.start{ mode = "certificate", empty_list = 200 }
  local dir = os.tmpname()
  os.remove(dir)
  os.execute("mkdir -p " .. q(dir) .. " && chmod 755 " .. q(dir))
  local n = start(sb, dir)
  local r = {}
  local ok, err = pcall(function()
    sb:control("DELETE", "/requests")
    curl_all(n.url .. "/t?variant=certs", 200, 16)
    r.downloads = downloads(sb)
    sb:control("DELETE", "/requests")
    curl_all(n.url .. "/t?variant=qps&secs=3", 8, 8)
    r.busiest, r.starts = busiest_second(sb)
    local _, body = nginx.http("GET", n.url .. "/cpu")
    local sign, cost = (body or ""):match("^([%d.]+) ([%d.]+)")
    r.sign, r.store = tonumber(sign), tonumber(cost)
  end)
  n:stop()
  sb:stop()
  os.execute("rm -rf " .. q(dir))
  if not ok then print("fleet bench failed: " .. tostring(err)); return r end
  print(("/v3/certificates downloads for 200 requests (one refresh)  %d"):format(r.downloads))
  print(("busiest 1-s window, qps = 20, 3 s flat out               %d starts (%d in all)"):format(
    r.busiest, r.starts))
  if r.sign and r.store then
    print(("store CPU per request (reserve + failover read)          %.1f us = %.2f %% of one "
      .. "RSA-2048 sign (%.1f us); target < 5 %%"):format(r.store * 1e6, 100 * r.store / r.sign, r.sign * 1e6))
  end
  print()
  r.hostile = require("bench.fleet_hostile").run()
  return r
end

if alone then M.run() end

return M
