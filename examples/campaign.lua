--- The main job: authorise one coupon stock to many mini-programs, list the stock's
-- partnerships page by page, end a few, and print a summary.
--
--   lua5.4 examples/campaign.lua --config sandbox.json [--stock ID] [--business-type T]
--          [--appids FILE | --count N] [--terminate K] [--campaign NAME] [--quiet]
--
-- `--config` is a JSON file holding a wxpay.new config (or the sandbox's startup line,
-- whose "config" member is used). Re-running the same campaign is safe: relations already
-- present are skipped, and every build carries an Idempotency-Key derived from the campaign
-- and the appid, so a retried or repeated build is never done twice. A build refused as
-- "already exists" (`err.already_exists`) counts as already present only once a listing
-- shows the relation ESTABLISHED; any other refusal is a failure.
--
-- Loaded with a table as its argument (`loadfile("examples/campaign.lua")({})`, as the specs
-- do), it returns its functions instead of running.

-- Run from a checkout without installing: use its lua/ and build/ when they exist.
local here = (arg and arg[0] or ""):match("^(.*)/examples/[^/]*$")
if here then
  package.path = here .. "/lua/?.lua;" .. here .. "/lua/?/init.lua;" .. package.path
  package.cpath = here .. "/build/?.so;" .. package.cpath
end

local wxpay = require("wxpay")
local core = require("wxpay.core")
local cjson = require("cjson").new()

local M = {}

-- Whether a listing shows `appid` ESTABLISHED for the stock. The answer to a build of an
-- existing relation has no documented code, so only the list is taken as proof. Returns
-- true, false, or nil and the listing's error.
local function confirm_established(client, partner, authorized)
  local found = false
  local ok, err = pcall(function()
    for rel in client.partnerships.list{ partner = partner, authorized_data = authorized } do
      if type(rel.partner) == "table" and rel.partner.appid == partner.appid and rel.state == "ESTABLISHED" then
        found = true
        break
      end
    end
  end)
  if not ok then return nil, err end
  return found
end

--- Authorise the stock to one appid.
-- @return `"built", meta`, `"already"` (confirmed by a listing) or `"failed", err`
function M.establish(client, appid, authorized, key)
  local partner = { type = "APPID", appid = appid }
  local rel, err, meta = client.partnerships.build({ partner = partner, authorized_data = authorized },
    { idempotency_key = key })
  if rel then return "built", meta end
  if not err.already_exists then return "failed", err end
  local established, cerr = confirm_established(client, partner, authorized)
  if established then return "already" end
  return "failed", cerr or err -- "exists" but not listed as established: not counted as done
end

if type((...)) == "table" then return M end

local function usage(msg)
  io.stderr:write("campaign: ", msg, "\n",
    "usage: campaign.lua --config FILE [--stock ID] [--business-type BUSIFAVOR_STOCK|FAVOR_STOCK]\n",
    "                    [--appids FILE | --count N] [--terminate K] [--campaign NAME] [--quiet]\n")
  os.exit(2)
end

local opts = { stock = "DEMO2026", business_type = "BUSIFAVOR_STOCK", count = 200, terminate = 5,
               campaign = "camp2026" }
local i = 1
while i <= #arg do
  local a, v = arg[i], arg[i + 1]
  if a == "--quiet" then opts.quiet = true; i = i + 1
  else
    local key = ({ ["--config"] = "config", ["--stock"] = "stock", ["--business-type"] = "business_type",
                   ["--appids"] = "appids", ["--count"] = "count", ["--terminate"] = "terminate",
                   ["--campaign"] = "campaign" })[a]
    if not key then usage("unknown option " .. tostring(a)) end
    if v == nil then usage(a .. " needs a value") end
    opts[key] = v
    i = i + 2
  end
end
if not opts.config then usage("--config is required") end
opts.count, opts.terminate = tonumber(opts.count), tonumber(opts.terminate)
if not opts.count or not opts.terminate then usage("--count and --terminate take numbers") end

local function read(path)
  local f, err = io.open(path, "rb")
  if not f then usage(err) end
  local s = f:read("*a")
  f:close()
  return s
end

local config = cjson.decode(read(opts.config))
config = config.config or config

-- The partners: from a file (one appid a line), or generated from the campaign name.
local appids = {}
if opts.appids then
  for line in read(opts.appids):gmatch("[^\r\n]+") do
    local id = line:match("^%s*(%S+)")
    if id and id:sub(1, 1) ~= "#" then appids[#appids + 1] = id end
  end
else
  for n = 1, opts.count do
    appids[n] = "wx" .. core.sha256_hex(opts.campaign .. "/" .. n):sub(1, 16)
  end
end

local client, err = wxpay.new(config)
if not client then
  io.stderr:write("campaign: ", tostring(err), "\n")
  os.exit(1)
end

local function say(...)
  if not opts.quiet then io.write(...) end
end

local authorized = { business_type = opts.business_type, stock_id = opts.stock }

-- 1. What is already there (a re-run skips it).
local present = {}
local ok, lerr = pcall(function()
  for rel in client.partnerships.list{ authorized_data = authorized, partner = { type = "APPID" } } do
    -- A terminated relation was ended on purpose: a re-run leaves it ended.
    present[rel.partner.appid] = true
  end
end)
if not ok then
  io.stderr:write("campaign: listing failed: ", tostring(lerr), "\n")
  os.exit(1)
end

-- 2. Authorise the stock to every appid not yet present.
say(("Authorising stock %s (%s) to %d mini-programs\n"):format(opts.stock, opts.business_type, #appids))
local summary = { built = 0, already = 0, failed = 0, listed = 0, terminated = 0, retries = 0 }
local failures = {}
local t0 = core.monotonic()
for n, appid in ipairs(appids) do
  if present[appid] then
    summary.already = summary.already + 1
  else
    local outcome, info = M.establish(client, appid, authorized, (opts.campaign .. "-" .. appid):sub(1, 48))
    if outcome == "built" then
      summary.built = summary.built + 1
      summary.retries = summary.retries + (info.attempts - 1)
      present[appid] = true
    elseif outcome == "already" then
      summary.already = summary.already + 1 -- established meanwhile, under another key
      present[appid] = true
    else
      local berr = info
      summary.failed = summary.failed + 1
      failures[#failures + 1] = appid .. ": " .. tostring(berr)
    end
  end
  if n % 25 == 0 or n == #appids then
    say(("  [%4d/%d] built %d, already present %d, failed %d\n"):format(n, #appids, summary.built,
      summary.already, summary.failed))
  end
end
local build_seconds = core.monotonic() - t0

-- 3. List the stock's partnerships, lazily, and print them as a table.
local rows = {}
ok, lerr = pcall(function()
  for rel in client.partnerships.list{ authorized_data = authorized } do
    summary.listed = summary.listed + 1
    if #rows < 10 then rows[#rows + 1] = rel end
  end
end)
if not ok then
  io.stderr:write("campaign: listing failed: ", tostring(lerr), "\n")
  os.exit(1)
end
say(("\nPartnerships of stock %s (first %d of %d)\n"):format(opts.stock, #rows, summary.listed))
say(("%-4s %-20s %-16s %-12s %s\n"):format("#", "appid", "business_type", "state", "build_time"))
for n, rel in ipairs(rows) do
  say(("%-4d %-20s %-16s %-12s %s\n"):format(n, rel.partner.appid or rel.partner.merchant_id,
    rel.authorized_data.business_type, rel.state or "?", rel.build_time or ""))
end

-- 4. End a few.
say(("\nTerminating %d partnerships\n"):format(opts.terminate))
local ended = 0
for _, appid in ipairs(appids) do
  if ended >= opts.terminate then break end
  local res, terr = client.partnerships.terminate({
    partner = { type = "APPID", appid = appid }, authorized_data = authorized,
  }, { idempotency_key = (opts.campaign .. "-end-" .. appid):sub(1, 48) })
  if res then
    ended = ended + 1
    say(("  %s terminated at %s\n"):format(appid, res.terminate_time))
  elseif not (terr.kind == "api" and terr.status == 400) then -- 400: already terminated
    failures[#failures + 1] = appid .. " (terminate): " .. tostring(terr)
    summary.failed = summary.failed + 1
  end
end
summary.terminated = ended

-- 5. Summary, and the checks this example stands for.
say(("\nSummary: built %d, already present %d, failed %d, listed %d, terminated %d, retries %d, %.1f builds/s\n")
  :format(summary.built, summary.already, summary.failed, summary.listed, summary.terminated, summary.retries,
    (summary.built + summary.already) / math.max(build_seconds, 1e-6)))
for _, f in ipairs(failures) do io.stderr:write("  failed: ", f, "\n") end
assert(summary.built + summary.already + summary.failed == #appids, "every appid was accounted for")
assert(summary.failed > 0 or summary.listed >= #appids, "every authorised appid is listed")
client.close()
os.exit(summary.failed == 0 and 0 or 1)
