--- The `wxpay` command: campaigns, one-off partnership operations, the sandbox, doctor.
-- `require("wxpay.cli").main(arg)` is what `bin/wxpay` runs; it returns the exit status.
-- @module wxpay.cli

local M = {}

M.USAGE = [[
Usage: wxpay [--config FILE] COMMAND ...

Commands:
  campaign run PLAN.csv --stock STOCK_ID --business-type FAVOR_STOCK|BUSIFAVOR_STOCK
               --journal FILE.db [--campaign ID] [--concurrency 16] [--qps N]
               [--progress | --no-progress]
      Authorise the stock to every partner of PLAN.csv (a header row with an `appid` or a
      `merchant_id` column). Every outcome goes to the SQLite journal before the next step,
      so a run killed at any point can simply be run again: it finishes the rest and does
      nothing twice. A campaign is its business type and stock unless --campaign is given.
  campaign status FILE.db [--campaign ID] [--output table|csv|json]
  partnerships list --business-type T [--stock ID] [--partner-type APPID|MERCHANT]
               [--appid X | --merchant-id X] [--limit N] [--output table|csv|json]
  partnerships build|terminate --business-type T --stock ID (--appid X | --merchant-id X)
               [--idempotency-key K] [--output table|csv|json]
  sandbox [sandbox options]      start the local sandbox (see `wxpay sandbox --help`)
  doctor                         check the configuration and say what to fix

Configuration: --config FILE or WXPAY_CONFIG=FILE, a JSON object with the keys of wxpay.new
(the sandbox's startup line, with its "config" member, works as is). Secrets are never printed.

Numbers: --concurrency is an integer from 1 to 1024 (default 16), --qps a number above 0 and
at most 10000 (default: no limit), --limit an integer from 1 to 50 (WeChat Pay's page size).
Anything else is a usage error (exit status 2).
]]

local VALUES = {
  config = true, stock = true, business_type = true, journal = true, campaign = true,
  concurrency = true, qps = true, output = true, partner_type = true, appid = true,
  merchant_id = true, limit = true, idempotency_key = true,
}
local FLAGS = { help = true, progress = true, no_progress = true }

--- Split arguments into positional words and `--name value` / `--name=value` options.
-- @return positional array, options map; or nil and an error
function M.parse(argv)
  local pos, opts = {}, {}
  local i = 1
  while i <= #argv do
    local a = argv[i]
    if a == "--" then
      for j = i + 1, #argv do pos[#pos + 1] = argv[j] end
      break
    end
    local name, inline = a:match("^%-%-([%w-]+)=(.*)$")
    name = name or a:match("^%-%-([%w-]+)$")
    if name then
      local key = name:gsub("-", "_")
      if VALUES[key] then
        local v = inline
        if v == nil then
          i = i + 1
          v = argv[i]
        end
        if v == nil then return nil, "--" .. name .. " needs a value" end
        opts[key] = v
      elseif FLAGS[key] and not inline then
        opts[key] = true
      else
        return nil, "unknown option --" .. name
      end
    elseif a == "-h" then
      opts.help = true
    else
      pos[#pos + 1] = a
    end
    i = i + 1
  end
  return pos, opts
end

--- Load a configuration file (JSON). Never echoes its content.
-- @return config table, or nil and an error
function M.load_config(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, "cannot read config " .. path .. ": " .. tostring(err) end
  local text = f:read("*a")
  f:close()
  local cjson = require("cjson").new()
  local ok, obj = pcall(cjson.decode, text)
  if not ok or type(obj) ~= "table" then
    return nil, "config " .. path .. " is not a JSON object"
  end
  if obj.mchid == nil and type(obj.config) == "table" then obj = obj.config end
  for k, v in pairs(obj) do
    if v == cjson.null then obj[k] = nil end
  end
  return obj
end

-- Ranges for the numeric options. 1024 concurrent requests is far beyond what WeChat Pay's
-- per-merchant rate limits let through, and each one holds a connection and a coroutine.
local NUMBERS = {
  concurrency = { integer = true, min = 1, max = 1024, text = "an integer from 1 to 1024" },
  qps = { min = 0, above_min = true, max = 10000, text = "a number above 0 and at most 10000" },
  limit = { integer = true, min = 1, max = 50, text = "an integer from 1 to 50" },
}

-- Checks one numeric option and converts it in place; returns nil and a message if bad.
local function number_opt(opts, name)
  local v, range = opts[name], NUMBERS[name]
  if v == nil then return true end
  local n
  if range.integer then
    n = v:match("^%d+$") and tonumber(v)
  else
    n = v:match("^%d*%.?%d+$") and tonumber(v) -- plain decimals: no 1e999, inf, nan or hex
  end
  if not n or n < range.min or n > range.max or (range.above_min and n == range.min) then
    return nil, "--" .. name .. " must be " .. range.text
  end
  opts[name] = n
  return true
end

--- Run the command.
-- @tparam table argv arguments
-- @tparam[opt] table io `out`, `err` (files), `env` (function like os.getenv)
-- @treturn int exit status: 0 fine, 1 failed, 2 usage
function M.main(argv, io_)
  io_ = io_ or {}
  local out, err, getenv = io_.out or io.stdout, io_.err or io.stderr, io_.env or os.getenv
  local cmd = argv[1]
  if cmd == "sandbox" then -- everything after it is the sandbox's
    local rest = {}
    for i = 2, #argv do rest[#rest + 1] = argv[i] end
    -- The sandbox is a rock of its own (wxpay-sandbox); the command works without it.
    local ok, sandbox = pcall(require, "wxpay.sandbox")
    if ok then return sandbox.main(rest) end
    if tostring(sandbox):find("module 'wxpay.sandbox' not found", 1, true) then
      err:write("wxpay: `wxpay sandbox` needs the wxpay-sandbox rock: luarocks install wxpay-sandbox\n")
    else
      err:write("wxpay: cannot load the sandbox: ", tostring(sandbox):match("^[^\n]*"), "\n")
    end
    return 1
  end
  local pos, opts = M.parse(argv)
  if not pos then err:write("wxpay: ", opts, "\n", M.USAGE); return 2 end
  cmd = pos[1]
  if opts.help or cmd == nil or cmd == "help" then
    out:write(M.USAGE)
    return (cmd == nil and not opts.help) and 2 or 0
  end
  local format = opts.output or "table"
  if not require("wxpay.cli.output").FORMATS[format] then
    err:write("wxpay: --output must be table, csv or json\n")
    return 2
  end
  for _, name in ipairs{ "concurrency", "qps", "limit" } do
    local ok, nerr = number_opt(opts, name)
    if not ok then err:write("wxpay: ", nerr, "\n"); return 2 end
  end

  if cmd == "campaign" and pos[2] == "status" then
    if not pos[3] then err:write("wxpay: campaign status needs the journal file\n"); return 2 end
    return require("wxpay.cli.campaign").status{ journal = pos[3], campaign = opts.campaign, format = format,
                                                 out = out, err = err }
  end

  local config_path = opts.config or getenv("WXPAY_CONFIG")
  if not config_path then
    err:write("wxpay: no configuration: give --config FILE or set WXPAY_CONFIG\n")
    return 2
  end
  local config, cerr = M.load_config(config_path)
  if not config then err:write("wxpay: ", cerr, "\n"); return 1 end
  local wxpay = require("wxpay")

  if cmd == "doctor" then
    local doctor = require("wxpay.cli.doctor")
    out:write("checking ", config_path, "\n")
    return doctor.report(doctor.checks(config, { wxpay = wxpay }), out)
  end

  local client, nerr = wxpay.new(config)
  if not client then
    err:write("wxpay: ", tostring(nerr), "\n(`wxpay doctor` explains what to fix)\n")
    return 1
  end
  local status
  if cmd == "campaign" and pos[2] == "run" then
    if not pos[3] or not opts.journal then
      err:write("wxpay: campaign run needs PLAN.csv and --journal FILE\n")
      status = 2
    else
      status = require("wxpay.cli.campaign").run{
        plan = pos[3], stock = opts.stock, business_type = opts.business_type, campaign = opts.campaign,
        concurrency = opts.concurrency or 16, qps = opts.qps, journal = opts.journal, client = client,
        out = out, err = err, tty = (opts.progress and true) or (opts.no_progress and false) or nil,
      }
    end
  elseif cmd == "partnerships" then
    if not opts.business_type then
      err:write("wxpay: --business-type is required\n")
      status = 2
    else
      status = require("wxpay.cli.partnerships").run(pos[2], {
        stock = opts.stock, business_type = opts.business_type, appid = opts.appid,
        merchant_id = opts.merchant_id, partner_type = opts.partner_type, limit = opts.limit,
        idempotency_key = opts.idempotency_key, format = format, client = client, out = out, err = err,
      })
    end
  else
    err:write("wxpay: unknown command: ", table.concat(pos, " "), "\n", M.USAGE)
    status = 2
  end
  client.close()
  return status
end

return M
