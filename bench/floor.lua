--- Benchmark: the client next to its C floor, in the configurations users run.
-- bench/floor.c (built here with cc, OpenSSL and libcurl) does one call's work with no Lua:
-- nonce, signature, the request over a kept-alive connection, the answer, its verification.
-- The client then makes the same call (certificate mode, keep-alive) without a logger, with a
-- no-op logger, with a logger writing lines, and with a `qps` budget on the memory store.
-- Five alternating rounds in one run (BENCH_ROUNDS); CPU (user + system) per request and the
-- ratios, each round, their median, and each case's best round (not always the same round
-- for two cases): on a shared machine noise only adds time, so the least CPU a case took is
-- the steadiest estimate of its cost, and the goals are read best to best. Prints figures;
-- asserts nothing. `lua5.4 bench/floor.lua` runs it alone.
local alone = arg and arg[0] and arg[0]:match("bench/floor%.lua$")
if alone then
  package.path = "lua/?.lua;lua/?/init.lua;./?.lua;" .. package.path
  package.cpath = (jit and "build-luajit/?.so;" or "build/?.so;") .. package.cpath
end

local wxpay = require("wxpay")
local sandbox = require("wxpay.sandbox.process")
local request = require("wxpay.request")

local M = {}

local PATH = "/v3/marketing/partnerships"
-- The call every case makes: one page of a stock's partnerships (the sandbox seeds three).
local QUERY = { authorized_data = { business_type = "BUSIFAVOR_STOCK", stock_id = "BENCHFLOOR" },
                limit = 1, offset = 0 }
local SEED = { count = 3, business_type = "BUSIFAVOR_STOCK", stock_id = "BENCHFLOOR", prefix = "wxfloor" }
M.PATH, M.SEED = PATH, SEED

--- Build the floor program into build/ (once per source change).
-- @return its path, or nil, why
local function build_floor()
  local exe = "build/bench-floor"
  local cmd = ("cc -O2 -Wall -Wextra -Werror -o %s bench/floor.c $(pkg-config --cflags --libs libcurl openssl)"
    .. " 2>&1"):format(exe)
  local p = io.popen(cmd)
  local out = p:read("*a")
  local ok = p:close()
  if not ok then return nil, "cc failed: " .. out end
  return exe
end

--- `s` quoted for the shell.
local function shell_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

--- The floor program's command line for `n` timed requests of `target` (shell-quoted).
local function floor_command(exe, cfg, target, n)
  local cert = cfg.platform_certificate_files[1]
  local q = shell_quote
  return table.concat({ exe, q(cfg.base_url), q(target), q(cfg.mchid), q(cfg.serial_no),
    q(cfg.private_key_file), q(cert), q(cfg.ca_file), tostring(n) }, " ")
end

local function floor_cpu(exe, cfg, target, n)
  local p = io.popen(floor_command(exe, cfg, target, n) .. " 2>&1")
  local out = p:read("*a")
  p:close()
  local v = tonumber(out:match("cpu_per_request ([%d.]+)"))
  if not v then error("floor program failed: " .. out) end
  return v
end

local function copy(t, extra)
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  for k, v in pairs(extra or {}) do out[k] = v end
  return out
end

--- A logger as an application writes one: a line per event with its fields, to file `f`.
local function line_logger(f)
  return function(level, message, fields)
    local parts = { os.date("!%Y-%m-%dT%H:%M:%SZ"), level, message }
    for k, v in pairs(fields or {}) do parts[#parts + 1] = tostring(k) .. "=" .. tostring(v) end
    f:write(table.concat(parts, " "), "\n")
  end
end

--- The client's config for one case: `plain` (the config as is), `noop` (a logger that does
-- nothing), `lines` (a logger writing lines to file `log`), `qps` (a budget on the memory
-- store that never waits), `metrics` (the `wxpay.metrics` hook).
local function case_config(cfg, case, log)
  if case == "noop" then return copy(cfg, { logger = function() end }) end
  if case == "lines" then return copy(cfg, { logger = line_logger(log) }) end
  if case == "qps" then return copy(cfg, { qps = 1e6 }) end
  if case == "metrics" then return copy(cfg, { on_request = assert(require("wxpay.metrics").new()).on_request }) end
  return cfg
end

local function client_cpu(config, q, n)
  local client = assert(wxpay.new(config))
  for _ = 1, 20 do assert(client.partnerships.page(q)) end -- warm-up: connection, JIT, caches
  collectgarbage("collect")
  local t0 = os.clock()
  for _ = 1, n do
    local page, err = client.partnerships.page(q)
    if not page then error(tostring(err)) end
  end
  local cpu = (os.clock() - t0) / n
  client.close()
  return cpu
end

local function median(t)
  local s = {}
  for i, v in ipairs(t) do s[i] = v end
  table.sort(s)
  return s[math.floor((#s + 1) / 2)]
end

local function best(t)
  return math.min((table.unpack or unpack)(t)) -- luacheck: ignore 143
end

local CASES = {
  { "no logger", "plain" },
  { "no-op logger", "noop", "logger" },
  { "logger writing lines", "lines", "logger" },
  { "qps on the memory store", "qps", "fleet" },
}

local function round(exe, sb, target, q, n, devnull)
  local cfg = sb.config
  local r = { floor = floor_cpu(exe, cfg, target, n) }
  for _, c in ipairs(CASES) do r[c[2]] = client_cpu(case_config(cfg, c[2], devnull), q, n) end
  return r
end

local function column(rounds, key)
  local vals = {}
  for i, r in ipairs(rounds) do vals[i] = r[key] end
  return vals
end

local function report(rounds)
  print(("%-26s %s   %s   %s"):format("", "CPU per request (ms), each round", "median", "best"))
  local function row(label, key, base, goal)
    local cells, ratios = {}, {}
    for i, r in ipairs(rounds) do
      cells[i] = ("%7.3f"):format(r[key] * 1000)
      if base then ratios[i] = r[key] / r[base] end
    end
    local vals = column(rounds, key)
    print(("%-26s %s   %7.3f  %7.3f"):format(label, table.concat(cells, " "), median(vals) * 1000,
      best(vals) * 1000))
    if base then
      local rc = {}
      for i, v in ipairs(ratios) do rc[i] = ("%6.2fx"):format(v) end
      print(("  %-24s %s   %6.2fx  %6.2fx (best to best; goal <= %.2f)"):format("ratio to " .. base,
        table.concat(rc, " "), median(ratios), best(vals) / best(column(rounds, base)), goal))
    end
  end
  row("C floor (OpenSSL+libcurl)", "floor")
  row("client, no logger", "plain", "floor", 1.15)
  for _, c in ipairs(CASES) do
    if c[3] == "logger" then row("client, " .. c[1], c[2], "plain", 1.10) end
    if c[3] == "fleet" then row("client, " .. c[1], c[2], "plain", 1.05) end
  end
end

--- Runs the benchmark; returns each case's best round (seconds of CPU per request).
function M.run(opts)
  opts = opts or {}
  local n = tonumber(os.getenv("BENCH_REQUESTS")) or 500
  local exe, why = build_floor()
  if not exe then print("C floor skipped: " .. why); return {} end
  local sb = sandbox.start{ mode = "certificate" }
  local devnull = assert(io.open("/dev/null", "w"))
  local rounds = {}
  local ok, err = pcall(function()
    local q = QUERY
    sb:control("POST", "/seed", SEED)
    local target = PATH .. "?" .. assert(request.build_query(q))
    print(("== client next to its C floor (Lua %s, certificate mode, keep-alive, %d requests each) =="):format(
      jit and jit.version or _VERSION, n))
    for i = 1, opts.rounds or tonumber(os.getenv("BENCH_ROUNDS")) or 5 do
      rounds[i] = round(exe, sb, target, q, n, devnull)
    end
    report(rounds)
  end)
  devnull:close()
  sb:stop()
  if not ok then print("floor benchmark failed: " .. tostring(err)); return {} end
  local r = {}
  for _, k in ipairs({ "floor", "plain", "noop", "lines", "qps" }) do r[k] = best(column(rounds, k)) end
  return r
end

M.build_floor, M.floor_command, M.case_config = build_floor, floor_command, case_config
M.shell_quote = shell_quote
M.QUERY = QUERY

if alone then M.run() end

return M
