--- Benchmark: the CPU one `wxpay.store.budget.reserve` costs, next to one RSA-2048 signature.
-- The memory store and Redis in plain Lua (lua-redis on LuaSocket, a private redis-server on
-- 127.0.0.1, started and stopped here); for Redis both our process's CPU and the server's
-- (INFO cpu) per call. The lua_shared_dict figure needs nginx: spec/17 measures it in a
-- worker and checks it against the target (under 5 % of one signature).
-- Prints figures; asserts nothing. `lua5.4 bench/store.lua` runs it alone.
local alone = arg and arg[0] and arg[0]:match("bench/store%.lua$")
if alone then
  package.path = "lua/?.lua;lua/?/init.lua;./?.lua;" .. package.path
  package.cpath = (jit and "build-luajit/?.so;" or "build/?.so;") .. package.cpath
end

local core = require("wxpay.core")
local store = require("wxpay.store")
local budget = require("wxpay.store.budget")

local M = {}

-- CPU seconds per call of fn, over about `seconds` of CPU.
local function cpu_per_call(fn, seconds)
  local n, t0 = 0, os.clock()
  repeat
    for _ = 1, 20 do fn() end
    n = n + 20
  until os.clock() - t0 >= seconds
  return (os.clock() - t0) / n, n
end

local function sign_seconds(seconds)
  local dir = os.tmpname()
  os.remove(dir)
  os.execute("mkdir -p " .. dir)
  os.execute(("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out %s/k.pem 2>/dev/null"):format(dir))
  local f = assert(io.open(dir .. "/k.pem"))
  local key = assert(core.load_private_key(f:read("*a")))
  f:close()
  os.execute("rm -rf " .. dir)
  local msg = "POST\n/v3/pay/transactions/jsapi\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n{}\n"
  return (cpu_per_call(function() key:sign(msg) end, seconds))
end

-- The Redis server's user + system CPU seconds so far.
local function server_cpu(port)
  local socket = require("socket")
  local c = socket.tcp()
  c:settimeout(2)
  assert(c:connect("127.0.0.1", port))
  c:send("*2\r\n$4\r\nINFO\r\n$3\r\ncpu\r\n")
  local n = tonumber(c:receive("*l"):sub(2))
  local text = c:receive(n + 2)
  c:close()
  return tonumber(text:match("used_cpu_user:([%d.]+)")) + tonumber(text:match("used_cpu_sys:([%d.]+)"))
end

--- Runs the benchmark; returns the figures (seconds per call), also printed.
function M.run(opts)
  opts = opts or {}
  local seconds = math.min(opts.seconds or 3, 2)
  local r = { sign = sign_seconds(seconds) }
  local rate = 1e6 -- far above what the loop reaches: every reserve starts at once

  local mem = assert(store.open("memory")):scope("1900000001")
  r.memory = cpu_per_call(function() assert(budget.reserve(mem, "qps", rate)) end, seconds)

  local ok, redis_server = pcall(require, "spec.support.redis")
  local srv = ok and io.open("/usr/bin/redis-server") and redis_server.start()
  if srv then
    local s = assert(store.open(srv.url, { driver = "socket" })):scope("1900000001")
    assert(budget.reserve(s, "qps", rate)) -- loads the script
    local before = server_cpu(srv.port)
    local n
    r.redis, n = cpu_per_call(function() assert(budget.reserve(s, "qps", rate)) end, seconds)
    r.redis_server = (server_cpu(srv.port) - before) / n
    srv:stop()
  end

  print("== wxpay.store: CPU per budget.reserve, next to one RSA-2048 signature ==")
  print(("%-34s %10s %12s"):format("", "us/call", "% of a sign"))
  local function row(name, v)
    if v then print(("%-34s %10.1f %11.2f%%"):format(name, v * 1e6, 100 * v / r.sign)) end
  end
  row("RSA-2048 sign (core.sign)", r.sign)
  row("reserve, memory store", r.memory)
  row("reserve, Redis: this process", r.redis)
  row("reserve, Redis: the server", r.redis_server)
  if not srv then print("(no redis-server: the Redis rows are missing)") end
  print("(lua_shared_dict: measured in an nginx worker by spec/17-store_nginx_spec.lua)")
  return r
end

if alone then
  M.run({ seconds = tonumber(os.getenv("BENCH_SECONDS")) or 1 })
end

return M
