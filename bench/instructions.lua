--- Benchmark: the C floor and the client's configurations counted in instructions (callgrind).
-- CPU time on a shared machine swings by 10-20 % from one minute to the next, more than the
-- differences bench/floor.lua looks for; the number of instructions a request executes does
-- not. Each case (the floor program; the client with no logger, a no-op logger, a logger
-- writing lines, `qps` on the memory store, the `wxpay.metrics` hook) runs twice in its own
-- process under `valgrind --tool=callgrind`, with FEW and then MANY requests after the same
-- warm-up, against one sandbox; the difference divided by the extra requests is what one
-- request costs, start-up and warm-up cancelled out. Prints the instructions per request and
-- the ratios (goals as in bench/floor.lua). Instructions are not time: cache misses and
-- system calls weigh more than their count. Asserts nothing.
-- Slow (about a minute in all), so `make bench` runs it only with BENCH_CALLGRIND=1;
-- `lua5.4 bench/instructions.lua` runs it alone. Needs valgrind and cc.
local alone = arg and arg[0] and arg[0]:match("bench/instructions%.lua$")
if alone then
  package.path = "lua/?.lua;lua/?/init.lua;./?.lua;" .. package.path
  package.cpath = (jit and "build-luajit/?.so;" or "build/?.so;") .. package.cpath
end

local cjson = require("cjson")
local floor = require("bench.floor")
local request = require("wxpay.request")

local M = {}

local FEW, MANY = 50, 250

local CASES = {
  { "no logger", "plain" },
  { "no-op logger", "noop", 1.10 },
  { "logger writing lines", "lines", 1.10 },
  { "qps on the memory store", "qps", 1.05 },
  { "metrics (on_request hook)", "metrics", 1.05 },
}

local q = floor.shell_quote

-- The instructions callgrind counted for a command that succeeded, or nil, its output
-- (valgrind exits with the command's status).
local function count(cmd)
  local p = assert(io.popen("valgrind --tool=callgrind --callgrind-out-file=/dev/null " .. cmd
    .. " 2>&1; echo \"exit=$?\""))
  local out = p:read("*a")
  p:close()
  local n = out:match("Collected : (%d+)")
  if not n or not out:match("\nexit=0\n$") then return nil, out:sub(-800) end
  return tonumber(n)
end

-- Instructions per request of a command built for `n` requests.
local function per_request(command_for)
  local few, err = count(command_for(FEW))
  if not few then return nil, err end
  local many
  many, err = count(command_for(MANY))
  if not many then return nil, err end
  return (many - few) / (MANY - FEW)
end

-- The interpreter running this file (the children use the same one).
local function interpreter()
  local i = -1
  while arg and arg[i - 1] do i = i - 1 end -- arg[-1] is usually it; past any options
  if arg and arg[i] then return q(arg[i]) end
  if jit then return "luajit" end
  return "lua" .. _VERSION:match("%d+%.%d+")
end

-- The child: one client in `case`'s configuration makes 20 warm-up calls and `n` more.
local function child(config_file, case, n)
  local f = assert(io.open(config_file))
  local cfg = cjson.decode(f:read("*a"))
  f:close()
  local devnull = assert(io.open("/dev/null", "w"))
  local client = assert(require("wxpay").new(floor.case_config(cfg, case, devnull)))
  for _ = 1, 20 + n do assert(client.partnerships.page(floor.QUERY)) end
  client.close()
  devnull:close()
end

-- The sandbox's config as JSON (its functions left out) in a temporary file.
local function config_file(cfg)
  local plain = {}
  for k, v in pairs(cfg) do
    if type(v) ~= "function" and type(v) ~= "userdata" then plain[k] = v end
  end
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(cjson.encode(plain))
  f:close()
  return path
end

local function report(r)
  print(("%-34s %12s   %s"):format("", "instructions", "ratio"))
  print(("%-34s %12.0f"):format("C floor (OpenSSL+libcurl)", r.floor))
  print(("%-34s %12.0f   %5.3fx to the floor (goal <= 1.15)"):format("client, no logger", r.plain,
    r.plain / r.floor))
  for i = 2, #CASES do
    local c = CASES[i]
    print(("%-34s %12.0f   %5.3fx to no logger (goal <= %.2f)"):format("client, " .. c[1], r[c[2]],
      r[c[2]] / r.plain, c[3]))
  end
end

--- Runs the benchmark (skipped unless alone or BENCH_CALLGRIND=1); returns the instructions
-- per request of each case.
function M.run()
  if not alone and os.getenv("BENCH_CALLGRIND") ~= "1" then
    print("instructions per request (callgrind): skipped, BENCH_CALLGRIND=1 runs it")
    return {}
  end
  if not os.execute("valgrind --version >/dev/null 2>&1") then
    print("instructions per request: skipped, no valgrind")
    return {}
  end
  local exe, why = floor.build_floor()
  if not exe then print("instructions per request: skipped, " .. why); return {} end
  local sb = require("wxpay.sandbox.process").start{ mode = "certificate" }
  local path
  local r = {}
  local ok, err = pcall(function()
    path = config_file(sb.config)
    sb:control("POST", "/seed", floor.SEED)
    local target = floor.PATH .. "?" .. assert(request.build_query(floor.QUERY))
    print(("== instructions per request under callgrind (%s, certificate mode, keep-alive; %d vs %d "
      .. "requests) =="):format(jit and jit.version or _VERSION, MANY, FEW))
    r.floor = assert(per_request(function(n) return floor.floor_command(exe, sb.config, target, n) end))
    for _, c in ipairs(CASES) do
      r[c[2]] = assert(per_request(function(n)
        return table.concat({ interpreter(), "bench/instructions.lua", "--child", q(path), c[2], n }, " ")
      end))
    end
    report(r)
  end)
  if path then os.remove(path) end
  sb:stop()
  if not ok then print("instructions benchmark failed: " .. tostring(err)); return {} end
  return r
end

if alone and arg[1] == "--child" then
  child(arg[2], arg[3], tonumber(arg[4]))
elseif alone then
  M.run()
end

return M
