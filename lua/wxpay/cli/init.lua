--- The `wxpay` command: campaigns, one-off partnership operations, the sandbox, doctor.
-- `require("wxpay.cli").main(arg)` is what `bin/wxpay` runs; it returns the exit status.
-- @module wxpay.cli

-- Loaded with the command, not on the way out: `main` asks it whether a SIGTERM arrived.
local core = require("wxpay.core")

local M = {}

-- Each command's help; `wxpay COMMAND --help` prints its own, `wxpay --help` them all.
M.HELP = {
  campaign = [[
  campaign run PLAN.csv --stock STOCK_ID --business-type FAVOR_STOCK|BUSIFAVOR_STOCK
               --journal FILE.db [--campaign ID] [--concurrency 16] [--qps N]
               [--progress | --no-progress] [--dry-run]
  campaign run PLAN.csv --create-stock FILE.json --product busifavor|favor
               --journal FILE.db [the options above but --stock and --business-type]
      Authorise the stock to every partner of PLAN.csv (a header row with an `appid` or a
      `merchant_id` column). With --create-stock the campaign first creates the stock from
      FILE.json; its request number is journaled before the call, so a rerun after a crash
      repeats that request and gets the same stock, never a second one. Every outcome goes to
      the SQLite journal before the next step, so a run killed at any point can simply be run
      again: it finishes the rest and does nothing twice. A campaign is its business type and
      stock (or stock file) unless --campaign is given.
      --dry-run checks the stock (one read), every row and the config, prints what would be
      sent and how long it would take at --qps, and sends no write; the real run checks the
      rows the same way first. Ctrl-C stops it (exit status 130); run again to resume.
  campaign status FILE.db [--campaign ID] [--output table|csv|json]
  campaign terminate PLAN.csv --stock STOCK_ID --business-type T --journal FILE.db
               [--campaign ID] [--concurrency 16] [--qps N] [--max-errors 20]
               [--progress | --no-progress] [--dry-run]
      End the stock's partnership with every partner of PLAN.csv, journaled and resumable
      like `run` (its own campaign in the journal: the run's ID and `/terminate`).
  Both check first that the stock exists as that business type (--dry-run too), and stop
  after --max-errors (default 20) identical non-retryable errors in a row; one run at a
  time per journal.
]],
  partnerships = [[
  partnerships list --business-type T [--stock ID] [--partner-type APPID|MERCHANT]
               [--appid X | --merchant-id X] [--limit N] [--max N] [--output table|csv|json]
      --limit N is the page size of each request (1 to 50); every page is read unless
      --max N stops after N rows.
  partnerships build|terminate --business-type T --stock ID (--appid X | --merchant-id X)
               [--idempotency-key K] [--output table|csv|json]
]],
  stocks = [[
  stocks create --product busifavor|favor FILE.json [--out-request-no N] [--output F]
      Create a stock from the fields in FILE.json; prints its stock_id and out_request_no. A
      number generated (when neither the option nor the file gives one) is printed first:
      pass it with --out-request-no to repeat the request after a lost answer.
  stocks get --product busifavor|favor STOCK_ID [--output table|csv|json]
  stocks budget --product busifavor STOCK_ID (--max-coupons N | --max-coupons-by-day N)
               [--current-max-coupons N] [--current-max-coupons-by-day N] [--out-request-no N]
      Change a 商家券 budget (compare-and-set); without --current-… the stock is read first.
  stocks list --product favor [--status S] [--create-start-time T] [--create-end-time T]
               [--limit N] [--max N] [--output table|csv|json]
      List 代金券 stocks (商家券 has no list endpoint: use get).
]],
  paygift = [[
  paygift create FILE.json [--out-request-no N] [--journal FILE.db] [--output F]
      Create a 支付有礼 activity from the fields of FILE.json (client.paygift.create); prints
      its activity_id and out_request_no. With --journal the request number is committed
      before the call and the activity id after it: the same command again repeats the same
      request (one activity) or prints the activity the journal holds.
  paygift get ACTIVITY_ID [--output table|csv|json]
  paygift list [--status S] [--activity-name TEXT] [--limit N] [--max N] [--output F]
  paygift terminate ACTIVITY_ID [--journal FILE.db]
  paygift merchants list ACTIVITY_ID [--limit N] [--max N] [--output F]
  paygift merchants add|delete ACTIVITY_ID MCHID[,MCHID...] [--request-no N] [--journal FILE.db]
      One row per merchant: added, deleted, or refused with WeChat Pay's reason.
]],
  busifavor = [[
  busifavor upload-codes STOCK_ID --file CODES.txt --journal FILE.db [--output table|csv|json]
      Load a MERCHANT_UPLOAD 商家券 stock's codes (one per line, any number) in batches of 200.
      Each batch's upload_request_no is journaled before it is sent; a run killed at any point
      is run again: done batches are skipped, an unfinished one is repeated with the same
      number. Codes WeChat Pay refuses are listed on stderr.
]],
  favor = [[
  favor use-flow|refund-flow STOCK_ID [--bill-date YYYY-MM-DD] [--file OUT.csv]
               [--output table|csv|json]
      Download a 代金券 stock's redemption (use-flow) or refund file, checked against its
      hash. --output csv writes the file as is (to --file or stdout); table and json print
      its rows. --bill-date asks for one day's file.
]],
  sandbox = [[
  sandbox [sandbox options]      start the local sandbox (see `wxpay sandbox --help`)
]],
  doctor = [[
  doctor [--output json]         check the configuration and say what to fix
]],
}
M.HELP.issue = require("wxpay.cli.issue").HELP

M.USAGE = "Usage: wxpay [--config FILE] COMMAND ...   (wxpay --version, wxpay COMMAND --help)\n\nCommands:\n"
  .. M.HELP.campaign .. M.HELP.partnerships .. M.HELP.stocks .. M.HELP.busifavor .. M.HELP.favor
  .. M.HELP.paygift .. M.HELP.issue
  .. M.HELP.sandbox .. M.HELP.doctor .. [[

Configuration: --config FILE or WXPAY_CONFIG=FILE, a JSON object with the keys of wxpay.new
(the sandbox's startup line, with its "config" member, works as is). Secrets are never printed.
Without base_url the commands talk to the production API, and say so first.

Numbers: --concurrency is an integer from 1 to 1024 (default 16), --qps a number above 0 and
at most 10000 (default: no limit), --limit an integer from 1 to 50 (WeChat Pay's page size),
--max a positive integer; --max-coupons and --max-coupons-by-day an integer from 1 to
1000000000, their --current-… from 0. Anything else is a usage error (exit status 2).
]]

local VALUES = {
  config = true, stock = true, business_type = true, journal = true, campaign = true,
  concurrency = true, qps = true, output = true, partner_type = true, appid = true,
  merchant_id = true, limit = true, max = true, idempotency_key = true,
  product = true, create_stock = true, out_request_no = true, max_coupons = true, max_coupons_by_day = true,
  current_max_coupons = true, current_max_coupons_by_day = true, status = true, create_start_time = true,
  create_end_time = true,
  activity_name = true, request_no = true,
  max_errors = true,
}
for _, name in ipairs{ "openid", "coupon_code", "customize_send_time", "send_coupon_merchant", "fragment" } do
  VALUES[name] = true -- wxpay issue
end
VALUES.file, VALUES.bill_date = true, true -- the coupon file commands (wxpay.cli.coupon_files)
local FLAGS = { help = true, progress = true, no_progress = true, dry_run = true, version = true }

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
  return require("wxpay.config_normalise")(obj) -- a port of 6379.0 is 6379
end

-- Ranges for the numeric options. 1024 concurrent requests is far beyond what WeChat Pay's
-- per-merchant rate limits let through, and each one holds a connection and a coroutine.
local NUMBERS = {
  concurrency = { integer = true, min = 1, max = 1024, text = "an integer from 1 to 1024" },
  qps = { min = 0, above_min = true, max = 10000, text = "a number above 0 and at most 10000" },
  limit = { integer = true, min = 1, max = 50, text = "an integer from 1 to 50" },
  max = { integer = true, min = 1, max = 2 ^ 53, text = "a positive integer" },
}
-- Coupon counts of a budget: WeChat Pay's range for max_coupons (1..10^9).
for _, name in ipairs{ "max_coupons", "max_coupons_by_day", "current_max_coupons", "current_max_coupons_by_day" } do
  NUMBERS[name] = { integer = true, min = 1, max = 1e9, text = "an integer from 1 to 1000000000" }
end
NUMBERS.max_errors = { integer = true, min = 1, max = 1e9, text = "an integer from 1 to 1000000000" }
-- A current value may be 0: a stock created without a daily cap (docs/coupons.md).
for _, name in ipairs{ "current_max_coupons", "current_max_coupons_by_day" } do
  NUMBERS[name] = { integer = true, min = 0, max = 1e9, text = "an integer from 0 to 1000000000" }
end
local NUMBER_OPTIONS = { "concurrency", "qps", "limit", "max", "max_coupons", "max_coupons_by_day",
  "current_max_coupons", "current_max_coupons_by_day", "max_errors" }

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
    return nil, "--" .. (name:gsub("_", "-")) .. " must be " .. range.text
  end
  opts[name] = n
  return true
end

-- `wxpay sandbox ...`: everything after the word is the sandbox's.
local function run_sandbox(argv, err)
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

-- --help, --version and no command at all; returns a status when one of them applies.
local function help_or_version(cmd, opts, out)
  if opts.version then
    out:write("wxpay ", require("wxpay")._VERSION, "\n")
    return 0
  end
  if opts.help and M.HELP[cmd or ""] then
    out:write("Usage: wxpay [--config FILE] COMMAND ...\n\n", M.HELP[cmd])
    return 0
  end
  if opts.help or cmd == nil or cmd == "help" then
    out:write(M.USAGE)
    return (cmd == nil and not opts.help) and 2 or 0
  end
end

-- The options every command shares; returns a usage message when one is wrong.
local function check_options(opts)
  if not require("wxpay.cli.output").FORMATS[opts.output or "table"] then
    return "--output must be table, csv or json"
  end
  for _, name in ipairs(NUMBER_OPTIONS) do
    local ok, nerr = number_opt(opts, name)
    if not ok then return nerr end
  end
end

-- The configuration from --config or WXPAY_CONFIG: config, path; or nil, message, status.
local function configuration(opts, getenv)
  local path = opts.config or getenv("WXPAY_CONFIG")
  if not path then return nil, "no configuration: give --config FILE or set WXPAY_CONFIG", 2 end
  local config, cerr = M.load_config(path)
  if not config then return nil, cerr, 1 end
  return config, path
end

local PRODUCTION = "https://api.mch.weixin.qq.com"

local function campaign_run(pos, opts, c)
  if not pos[3] or not opts.journal then
    c.err:write("wxpay: campaign ", pos[2], " needs PLAN.csv and --journal FILE\n")
    return 2
  end
  local o = {
    plan = pos[3], stock = opts.stock, business_type = opts.business_type, campaign = opts.campaign,
    create_stock = opts.create_stock, product = opts.product,
    concurrency = opts.concurrency or 16, qps = opts.qps, journal = opts.journal, client = c.client,
    config = c.config, dry_run = opts.dry_run, host = c.config.base_url or PRODUCTION,
    out = c.out, err = c.err, max_errors = opts.max_errors or 20,
    tty = opts.progress and true or nil, no_progress = opts.no_progress and not opts.progress,
  }
  return require("wxpay.cli.campaign")[pos[2]](o)
end

local function partnerships(pos, opts, c)
  if not opts.business_type then
    c.err:write("wxpay: --business-type is required\n")
    return 2
  end
  return require("wxpay.cli.partnerships").run(pos[2], {
    stock = opts.stock, business_type = opts.business_type, appid = opts.appid,
    merchant_id = opts.merchant_id, partner_type = opts.partner_type, limit = opts.limit, max = opts.max,
    idempotency_key = opts.idempotency_key, format = opts.output or "table", client = c.client,
    out = c.out, err = c.err,
  })
end

local function stocks(pos, opts, c)
  return require("wxpay.cli.stocks").run(pos, {
    product = opts.product, format = opts.output or "table", client = c.client, out = c.out, err = c.err,
    out_request_no = opts.out_request_no, max_coupons = opts.max_coupons, max_coupons_by_day = opts.max_coupons_by_day,
    current_max_coupons = opts.current_max_coupons, current_max_coupons_by_day = opts.current_max_coupons_by_day,
    status = opts.status, create_start_time = opts.create_start_time, create_end_time = opts.create_end_time,
    limit = opts.limit, max = opts.max,
  })
end

local function paygift(pos, opts, c)
  return require("wxpay.cli.paygift").run(pos, {
    client = c.client, format = opts.output or "table", out = c.out, err = c.err, journal = opts.journal,
    out_request_no = opts.out_request_no, request_no = opts.request_no, status = opts.status,
    activity_name = opts.activity_name, limit = opts.limit, max = opts.max,
  })
end

local COMMANDS = { partnerships = partnerships, stocks = stocks, paygift = paygift }
COMMANDS.issue = function(pos, opts, c)
  return require("wxpay.cli.issue").run(pos[2], {
    stock = opts.stock, openid = opts.openid, out_request_no = opts.out_request_no, coupon_code = opts.coupon_code,
    customize_send_time = opts.customize_send_time, send_coupon_merchant = opts.send_coupon_merchant,
    fragment = opts.fragment, format = opts.output or "table", client = c.client, out = c.out, err = c.err,
  })
end

-- `busifavor upload-codes` and `favor use-flow|refund-flow` (wxpay.cli.coupon_files).
function COMMANDS.busifavor(pos, opts, c)
  if pos[2] ~= "upload-codes" or not pos[3] or not opts.file or not opts.journal then
    c.err:write("wxpay: usage: busifavor upload-codes STOCK_ID --file CODES.txt --journal FILE.db\n")
    return 2
  end
  return require("wxpay.cli.coupon_files").upload_codes{ stock = pos[3], file = opts.file,
    journal = opts.journal, client = c.client, format = opts.output or "table", out = c.out, err = c.err }
end

function COMMANDS.favor(pos, opts, c)
  if (pos[2] ~= "use-flow" and pos[2] ~= "refund-flow") or not pos[3] then
    c.err:write("wxpay: usage: favor use-flow|refund-flow STOCK_ID [--bill-date D] [--file F]\n")
    return 2
  end
  return require("wxpay.cli.coupon_files").flow{ verb = pos[2], stock = pos[3], bill_date = opts.bill_date,
    file = opts.file, client = c.client, format = opts.output or "table", out = c.out, err = c.err }
end

-- The commands that need a configuration, after it has loaded.
local function with_config(pos, opts, c)
  local cmd = pos[1]
  if cmd == "doctor" then
    local doctor = require("wxpay.cli.doctor")
    return doctor.report(doctor.checks(c.config, { wxpay = require("wxpay") }), c.out, opts.output,
      { config = c.path, base_url = c.config.base_url or (PRODUCTION .. " (the production API)") })
  end
  local run = (cmd == "campaign" and (pos[2] == "run" or pos[2] == "terminate")) and campaign_run
    or COMMANDS[cmd]
  if not run then
    c.err:write("wxpay: unknown command: ", table.concat(pos, " "), "\n", M.USAGE)
    return 2
  end
  if c.config.base_url == nil then
    c.err:write("wxpay: no base_url in ", c.path, ": this talks to the production API, ", PRODUCTION, "\n")
  end
  if run == campaign_run and opts.dry_run then return run(pos, opts, c) end -- it makes a client that never sends
  local client, nerr = require("wxpay").new(c.config)
  if not client then
    c.err:write("wxpay: ", require("wxpay.cli.output").message(nerr), "\n(`wxpay doctor` explains what to fix)\n")
    return 1
  end
  c.client = client
  require("wxpay.cli.store").check(c.config, c.err)
  local ok, status = pcall(run, pos, opts, c)
  client.close()
  if not ok then error(status, 0) end
  return status
end

local function dispatch(argv, out, err, getenv)
  if argv[1] == "sandbox" then return run_sandbox(argv, err) end
  local pos, opts = M.parse(argv)
  if not pos then err:write("wxpay: ", opts, "\n", M.USAGE); return 2 end
  local cmd = pos[1]
  local status = help_or_version(cmd, opts, out)
  if status then return status end
  local uerr = check_options(opts)
  if not uerr and opts.output and cmd == "campaign" and pos[2] ~= "status" then
    uerr = "--output is not an option of campaign " .. tostring(pos[2]) .. " (its summary is text): "
      .. "`wxpay campaign status FILE.db --output json` reports on the journal"
  end
  if uerr then err:write("wxpay: ", uerr, "\n"); return 2 end
  if cmd == "campaign" and pos[2] == "status" then
    if not pos[3] then err:write("wxpay: campaign status needs the journal file\n"); return 2 end
    return require("wxpay.cli.campaign").status{ journal = pos[3], campaign = opts.campaign,
      format = opts.output or "table", out = out, err = err }
  end
  if cmd == "stocks" then
    local serr = require("wxpay.cli.stocks").usage_error(pos, opts)
    if serr then err:write("wxpay: ", serr, "\n"); return 2 end
  end
  local config, path, cstatus = configuration(opts, getenv)
  if not config then err:write("wxpay: ", path, "\n"); return cstatus end
  return with_config(pos, opts, { config = config, path = path, out = out, err = err })
end

--- Run the command.
-- @tparam table argv arguments
-- @tparam[opt] table io `out`, `err` (files), `env` (function like os.getenv)
-- @treturn int exit status: 0 fine, 1 failed, 2 usage, 130 interrupted (Ctrl-C), 143 SIGTERM
function M.main(argv, io_)
  io_ = io_ or {}
  local out, err = io_.out or io.stdout, io_.err or io.stderr
  local ok, status = pcall(dispatch, argv, out, err, io_.env or os.getenv)
  -- A SIGTERM whose "terminated!" a pcall inside the library swallowed still ends the
  -- command as terminated (core.signal_pending).
  if ok and (status == 143 or not core.signal_pending()) then return status end
  -- The interpreter turns Ctrl-C into an "interrupted!" error wherever Lua code runs, and
  -- bin/wxpay has SIGTERM raise "terminated!" the same way (core.trap_signal).
  local stop = require("wxpay.cli.campaign").interruption(ok and "terminated!" or status)
  if stop then
    err:write("wxpay: ", stop, "\n")
    return stop == "interrupted" and 130 or 143
  end
  -- Anything else that raised (a damaged journal, a bug): one line, never a traceback.
  err:write("wxpay: ", M.failure(status), "\n")
  return 1
end

--- A raised error as the one line the CLI prints (without its `wxpay: `).
function M.failure(e)
  local s = require("wxpay.cli.output").message(e):gsub("^wxpay journal: ", "journal: ")
  return (s:match("^[^\n]*"))
end

return M
