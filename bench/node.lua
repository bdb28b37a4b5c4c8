--- Benchmark helper: CPU time per request of the Node SDK wechatpay-axios-plugin making the
-- same signed, verified APIv3 request against a running wxpay-sandbox (bench/node/bench.js).
--
--   local figures, why = require("bench.node").run{ config = sb.config, requests = 500 }
--
-- The request is GET /v3/marketing/partnerships?authorized_data={"business_type":
-- "BUSIFAVOR_STOCK","stock_id":"BENCH"}&limit=1&offset=0 (bench.js seeds 10 relations for
-- that stock first), over one kept-alive connection; bench.js proves the plugin verifies
-- responses (tamper/unsigned faults must make it throw) and counts one good verification
-- per measured request. Only bench.js's measured loop is timed (process.cpuUsage()).
--
-- Needs `node`; installs the pinned plugin with npm into bench/node/node_modules on first
-- use. Without node, npm or the registry, run() returns nil and a reason (never raises).
--
-- As a script (from the repository root, after `make`):  lua5.4 bench/node.lua [N]
-- starts a certificate-mode sandbox, runs the benchmark and prints the figures.
-- Runs under Lua 5.1/LuaJIT too: no 5.4-only syntax or library calls.
local M = {}

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local data = f:read("*a")
  f:close()
  return data
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

-- os.execute: 5.1 returns a status number, 5.2+ returns true|nil, "exit", code.
local function execute(cmd)
  local a, _, code = os.execute(cmd)
  if type(a) == "number" then return a == 0 end
  return a == true and (code == nil or code == 0)
end

local function has_command(name)
  return execute("command -v " .. q(name) .. " >/dev/null 2>&1")
end

local function tail(text, n)
  text = (text or ""):gsub("%s+$", "")
  if #text > n then text = "..." .. text:sub(-n) end
  return text
end

-- Directory holding this file ("bench" when loaded as bench/node.lua from the root).
local function here()
  local src = debug.getinfo(1, "S").source
  local dir = src:match("^@(.*)/[^/]*$")
  if dir then return dir end
  if src:match("^@[^/]*$") then return "." end
  return "bench"
end

M.dir = here() .. "/node"

--- Install the pinned wechatpay-axios-plugin into bench/node/node_modules if missing.
-- @tparam[opt] table opts `dir` (default bench/node), `install_timeout` (seconds, default 120)
-- @return true, or nil and a reason
function M.install(opts)
  opts = opts or {}
  local dir = opts.dir or M.dir
  if exists(dir .. "/node_modules/wechatpay-axios-plugin/package.json") then return true end
  if not has_command("npm") then return nil, "npm not found (needed once to install wechatpay-axios-plugin)" end
  local log = os.tmpname()
  -- --no-package-lock: leave no lock file next to the pinned package.json.
  local cmd = string.format("%snpm install --prefix %s --no-audit --no-fund --no-package-lock "
                            .. "--loglevel=error </dev/null >%s 2>&1",
                            has_command("timeout") and ("timeout " .. (opts.install_timeout or 120) .. " ") or "",
                            q(dir), q(log))
  local ok = execute(cmd)
  local out = read_file(log)
  os.remove(log)
  if not ok or not exists(dir .. "/node_modules/wechatpay-axios-plugin/package.json") then
    local code = (out or ""):match("npm %a+ code (%S+)")
    return nil, "npm install failed (registry unreachable?)" .. (code and (": " .. code) or "")
      .. ": " .. tail(out, 300)
  end
  return true
end

--- Run bench.js against a running sandbox.
-- @tparam table opts `config` (the sandbox's config table: mchid, serial_no,
--   private_key_file, platform_certificate_files, base_url, ca_file), `control_url`
--   (optional; default base_url .. "/_sandbox"), `requests` (default 500), `dir`,
--   `install` (false: do not run npm), `install_timeout`, `timeout` (seconds for the run,
--   default 300)
-- @return figures `{ requests, cpu_user_s, cpu_system_s, cpu_per_request_ms, wall_s,
--   verified, new_connections, request, sdk, node }`, or nil and a reason
function M.run(opts)
  opts = opts or {}
  if type(opts.config) ~= "table" then return nil, "opts.config (the sandbox config table) is required" end
  local dir = opts.dir or M.dir
  if not has_command("node") then return nil, "node not found" end
  if opts.install == false then
    if not exists(dir .. "/node_modules/wechatpay-axios-plugin/package.json") then
      return nil, "wechatpay-axios-plugin not installed in " .. dir .. "/node_modules"
    end
  else
    local ok, why = M.install(opts)
    if not ok then return nil, why end
  end

  local okjson, cjson = pcall(require, "cjson")
  if not okjson then return nil, "lua-cjson not available" end
  cjson = cjson.new()
  local config = {}
  for k, v in pairs(opts.config) do config[k] = v end
  if opts.control_url then config.control_url = opts.control_url end
  local encoded_ok, encoded = pcall(cjson.encode, config)
  if not encoded_ok then return nil, "cannot encode config: " .. tostring(encoded) end

  local cfg, err = os.tmpname(), os.tmpname()
  local f = io.open(cfg, "wb")
  if not f then return nil, "cannot write " .. cfg end
  f:write(encoded)
  f:close()

  local n = math.floor(tonumber(opts.requests) or 500)
  local cmd = string.format("%snode %s %s %d </dev/null 2>%s",
                            has_command("timeout") and ("timeout " .. (opts.timeout or 300) .. " ") or "",
                            q(dir .. "/bench.js"), q(cfg), n, q(err))
  local p = io.popen(cmd)
  local out = p and p:read("*a") or ""
  if p then p:close() end
  local errtext = read_file(err)
  os.remove(cfg)
  os.remove(err)

  local line
  for l in out:gmatch("[^\n]+") do
    if l:match("^%s*{") then line = l end
  end
  if not line then
    return nil, "bench.js failed: " .. tail(errtext ~= "" and errtext or out, 600)
  end
  local decoded_ok, figures = pcall(cjson.decode, line)
  if not decoded_ok or type(figures) ~= "table" then return nil, "bench.js printed bad JSON: " .. line end
  return figures
end

--- One line for humans.
function M.format(r)
  return string.format("%s (node %s): %d verified requests, %.3f ms CPU/request "
                       .. "(user %.3f s, sys %.3f s), wall %.3f s",
                       tostring(r.sdk), tostring(r.node), r.requests, r.cpu_per_request_ms,
                       r.cpu_user_s, r.cpu_system_s, r.wall_s)
end

-- Script mode: `lua5.4 bench/node.lua [N]` (require() passes the module name instead).
local first = ...
local is_script = arg and arg[0] and arg[0]:match("node%.lua$")
  and (first == nil or tostring(first):match("^%d+$"))
if is_script then
  package.path = "lua/?.lua;lua/?/init.lua;./?.lua;" .. package.path
  package.cpath = "build/?.so;" .. package.cpath
  local sandbox = require("spec.support.sandbox")
  local sb = sandbox.start{ mode = "certificate" }
  local ok, r, why = pcall(M.run, { config = sb.config, control_url = sb.control_url,
                                    requests = tonumber(first) or 500 })
  sb:stop()
  if not ok then error(r, 0) end
  if not r then
    io.stderr:write("bench/node: skipped: ", why, "\n")
    os.exit(2)
  end
  print(require("cjson").encode(r))
  print(M.format(r))
end

return M
