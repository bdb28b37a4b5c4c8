-- The `wxpay` command, run as a program against the real sandbox: table/CSV/JSON output,
-- doctor's diagnosis of each kind of broken configuration, campaign run and status, and
-- (#scale) a 2,000-partner campaign killed with SIGKILL five times, then finished.

local h = require("spec.helpers")
local sandbox = require("spec.support.sandbox")
local stocks = require("spec.support.stocks")
local cjson = require("cjson").new()

local sb, dir, config_file
setup(function()
  sb = sandbox.start{ mode = "combined" }
  dir, config_file = require("spec.support.cli").configured(sb)
end)
teardown(function()
  if sb then sb:stop() end
  h.cleanup()
end)

-- Run bin/wxpay; returns stdout, stderr, exit status.
local function wxpay(args, env)
  return require("spec.support.cli").run(dir, args, env)
end

local function with_config(changes)
  local c = {}
  for k, v in pairs(sb.config) do c[k] = v end
  for k, v in pairs(changes) do
    if v == false and k ~= "backup_url" then c[k] = nil else c[k] = v end
  end
  local path = os.tmpname()
  h.write(path, cjson.encode(c))
  return path
end

local function plan(path, n, prefix, column)
  local lines = { (column or "appid") .. ",note" }
  for i = 1, n do lines[#lines + 1] = string.format("%s%012d,row %d", prefix, i, i) end
  h.write(path, table.concat(lines, "\n") .. "\n")
end

local function parse_csv(text)
  local rows = {}
  for line in text:gmatch("([^\r\n]+)") do
    local r = {}
    for f in (line .. ","):gmatch("([^,]*),") do r[#r + 1] = f end
    rows[#rows + 1] = r
  end
  return rows
end

local function builds_for(stock)
  local out = {}
  for _, e in ipairs(sb:requests()) do
    if e.method == "POST" and e.target == "/v3/marketing/partnerships/build" then
      local body = cjson.decode(e.body)
      if body.authorized_data.stock_id == stock then out[#out + 1] = { e = e, body = body } end
    end
  end
  return out
end

describe("wxpay partnerships", function()
  before_each(function() sb:reset() end)

  it("builds, lists and terminates with table, CSV and JSON output", function()
    local base = "--config " .. config_file .. " partnerships "
    local ad = " --business-type FAVOR_STOCK --stock 7001"
    for i = 1, 3 do
      local out, err, rc = wxpay(base .. "build" .. ad .. " --appid wxcli00000000000" .. i .. " --output json")
      assert.equal(0, rc, err)
      local rel = cjson.decode(out) -- one relation: one object, not a one-element array
      assert.is_nil(rel[1])
      assert.equal("wxcli00000000000" .. i, rel.partner_id)
      assert.equal("ESTABLISHED", rel.state)
      assert.equal("7001", rel.stock_id)
    end
    local out, err, rc = wxpay(base .. "list" .. ad)
    assert.equal(0, rc, err)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equal(5, #lines) -- header, rule, three rows
    assert.truthy(lines[1]:match("^partner_type%s+partner_id%s+business_type%s+stock_id%s+state"))
    assert.truthy(lines[2]:match("^%-+  %-+"))
    assert.truthy(lines[3]:match("^APPID%s+wxcli000000000001%s+FAVOR_STOCK%s+7001%s+ESTABLISHED"))
    -- columns line up: every row's second column starts where the header's does
    local col = lines[1]:find("partner_id", 1, true)
    for i = 3, 5 do assert.equal("wx", lines[i]:sub(col, col + 1)) end

    out, err, rc = wxpay(base .. "list" .. ad .. " --output csv")
    assert.equal(0, rc, err)
    assert.truthy(out:find("\r\n", 1, true))
    local rows = parse_csv(out)
    assert.same({ "partner_type", "partner_id", "business_type", "stock_id", "state", "build_time",
                  "terminate_time" }, rows[1])
    assert.equal(4, #rows)
    assert.equal("wxcli000000000002", rows[3][2])

    out, err, rc = wxpay(base .. "terminate" .. ad .. " --appid wxcli000000000002 --output csv")
    assert.equal(0, rc, err)
    assert.equal("TERMINATED", parse_csv(out)[2][5])

    out, err, rc = wxpay(base .. "list" .. ad .. " --output json")
    assert.equal(0, rc, err)
    local list = cjson.decode(out)
    assert.equal(3, #list)
    local states = {}
    for _, r in ipairs(list) do states[r.partner_id] = r.state end
    assert.equal("TERMINATED", states.wxcli000000000002)
    assert.equal("ESTABLISHED", states.wxcli000000000003)
  end)

  it("reports API errors and usage mistakes with an exit status", function()
    local out, err, rc = wxpay("--config " .. config_file .. " partnerships terminate --business-type FAVOR_STOCK"
      .. " --stock 7002 --appid wxnothere")
    assert.equal(1, rc)
    assert.equal("", out)
    assert.truthy(err:find("RESOURCE_NOT_EXISTS", 1, true))
    out, err, rc = wxpay("--config " .. config_file .. " partnerships build --business-type FAVOR_STOCK --stock 1")
    assert.equal(2, rc)
    assert.equal("", out)
    assert.truthy(err:find("--appid", 1, true))
    out, err, rc = wxpay("partnerships list --business-type FAVOR_STOCK", "WXPAY_CONFIG=" .. dir .. "/nothing.json")
    assert.equal(1, rc)
    assert.equal("", out)
    assert.truthy(err:find("cannot read config", 1, true))
    out, err, rc = wxpay("--config " .. config_file .. " partnerships list --business-type X --output xml")
    assert.equal(2, rc)
    assert.equal("", out)
    assert.truthy(err:find("--output", 1, true))
    -- WXPAY_CONFIG works like --config
    local o2, e2, rc2 = wxpay("partnerships list --business-type FAVOR_STOCK --stock 7002 --output json",
      "WXPAY_CONFIG=" .. config_file)
    assert.equal(0, rc2, e2)
    assert.same({}, cjson.decode(o2))
  end)
end)

describe("wxpay numeric options", function()
  before_each(function() sb:reset() end)

  local function usage_error(args)
    local out, err, rc = wxpay("--config " .. config_file .. " " .. args)
    assert.equal(2, rc, args .. ": " .. err)
    assert.equal("", out, args)
    assert.truthy(err:match("^wxpay: [^\n]+\n$"), args .. ": not one line: " .. err)
    assert.falsy(err:find("traceback", 1, true), args)
    return err
  end

  it("rejects out-of-range values as one-line usage errors that send nothing", function()
    local plan_file, journal = dir .. "/numeric-plan.csv", dir .. "/numeric.db"
    plan(plan_file, 1, "wxnum")
    local run = "campaign run " .. plan_file .. " --stock 7100 --business-type FAVOR_STOCK --journal " .. journal
    for _, bad in ipairs{ "--qps 1e999", "--qps=-1", "--qps 0", "--qps 10001", "--qps nan", "--qps 0x",
                          "--concurrency 20000", "--concurrency 1025", "--concurrency 0", "--concurrency -3",
                          "--concurrency 1.5", "--concurrency 1e308", "--concurrency ''" } do
      local err = usage_error(run .. " " .. bad)
      local name = bad:match("^%-%-(%a+)")
      assert.truthy(err:find("--" .. name, 1, true), bad .. ": " .. err)
    end
    local list = "partnerships list --business-type FAVOR_STOCK --stock 7100"
    for _, bad in ipairs{ "--limit 0", "--limit 51", "--limit 100000", "--limit 1e999", "--limit -1",
                          "--limit 2.5" } do
      assert.truthy(usage_error(list .. " " .. bad):find("--limit", 1, true), bad)
    end
    assert.is_nil(io.open(journal, "rb"), "a usage error created the journal")
    assert.same({}, sb:requests())
  end)

  it("treats --appid with --merchant-id as a usage error in list, build and terminate", function()
    for _, cmd in ipairs{ "list", "build", "terminate" } do
      local err = usage_error("partnerships " .. cmd .. " --business-type FAVOR_STOCK --stock 7100"
        .. " --appid wxboth --merchant-id 1900000109")
      assert.truthy(err:find("not both", 1, true), cmd .. ": " .. err)
    end
    assert.same({}, sb:requests())
  end)

  it("accepts the ends of each range", function()
    local plan_file = dir .. "/numeric-ok.csv"
    plan(plan_file, 2, "wxnumok")
    local stock = stocks.create(sb, "FAVOR_STOCK")
    local out, err, rc = wxpay("--config " .. config_file .. " campaign run " .. plan_file
      .. " --stock " .. stock .. " --business-type FAVOR_STOCK --journal " .. dir .. "/numeric-ok.db"
      .. " --concurrency 1024 --qps 10000 --no-progress")
    assert.equal(0, rc, err)
    assert.truthy(out:find("2 done", 1, true), out)
    out, err, rc = wxpay("--config " .. config_file .. " partnerships list --business-type FAVOR_STOCK"
      .. " --stock " .. stock .. " --limit 50 --output json")
    assert.equal(0, rc, err)
    assert.equal(2, #cjson.decode(out))
    local _
    _, err, rc = wxpay("--config " .. config_file .. " partnerships list --business-type FAVOR_STOCK"
      .. " --stock " .. stock .. " --limit 1 --output json")
    assert.equal(0, rc, err)
  end)
end)

describe("wxpay doctor", function()
  before_each(function() sb:reset() end)

  local function never_echoes_secrets(text)
    assert.falsy(text:find(sb.config.apiv3_key, 1, true))
    assert.falsy(text:find("PRIVATE KEY", 1, true))
  end

  it("passes a good configuration", function()
    local out, err, rc = wxpay("--config " .. config_file .. " doctor")
    assert.equal(0, rc, out .. err)
    for _, check in ipairs{ "private key", "key matches certificate", "serial_no", "apiv3_key",
                            "endpoint reachable", "clock", "signed request", "answer verified" } do
      assert.truthy(out:find("ok    " .. check, 1, true), check .. " not ok in:\n" .. out)
    end
    never_echoes_secrets(out .. err)
  end)

  it("--output json prints one object; a campaign run refuses --output rather than ignore it", function()
    local out, err, rc = wxpay("--config " .. config_file .. " doctor --output json")
    assert.equal(0, rc, out .. err)
    local d = cjson.decode(out)
    assert.equal(0, d.problems)
    assert.equal(config_file, d.config)
    assert.equal(sb.config.base_url, d.base_url)
    local seen = {}
    for _, c in ipairs(d.checks) do seen[c.check] = c.status end
    assert.equal("ok", seen["signed request"])
    never_echoes_secrets(out .. err)
    out, err, rc = wxpay("--config " .. config_file .. " campaign run x.csv --stock 1 --business-type FAVOR_STOCK"
      .. " --journal x.db --output json")
    assert.equal(2, rc, out .. err)
    assert.truthy(err:find("--output is not an option of campaign run", 1, true), err)
  end)

  -- { what is broken, config changes, sandbox config, the FAIL line, words of the advice }
  local other_key
  local cases = {
    { "a key that is not the certificate's", function() return { private_key_file = other_key } end, nil,
      "FAIL  key matches certificate", "issued together" },
    { "a wrong serial_no", { serial_no = "0123456789ABCDEF" }, nil, "FAIL  serial_no", "openssl x509" },
    { "a 31-byte APIv3 key", { apiv3_key = string.rep("k", 31) }, nil, "FAIL  apiv3_key", "exactly 32" },
    { "a missing key file", { private_key_file = "/nonexistent/apiclient_key.pem" }, nil, "FAIL  private key",
      "apiclient_key.pem" },
    { "a clock 15 minutes off", {}, { clock_offset = 900 }, "FAIL  clock", "NTP" },
    { "an unreachable endpoint", { base_url = "https://127.0.0.1:1" }, nil, "FAIL  endpoint reachable",
      "Cannot connect" },
    { "the wrong WeChat Pay public key", function()
        return { wechatpay_public_key_file = other_key .. ".pub", platform_certificate_files = false,
                 apiv3_key = false }
      end, nil, "FAIL  answer verified", "platform public key" },
    -- doctor runs wxpay.config's own checks, so it refuses what wxpay.new refuses
    { "a 33-digit mchid", { mchid = string.rep("1", 33) }, nil, "FAIL  mchid", "merchant number" },
    { "both private_key and private_key_file", function()
        return { private_key = h.read(sb.config.private_key_file) }
      end, nil, "FAIL  private key", "not both" },
    { "a WeChat Pay public key without its id", { wechatpay_public_key_id = false }, nil,
      "FAIL  wechatpay_public_key", "wechatpay_public_key_id" },
    { "a wrong APIv3 key with the public key configured", { apiv3_key = string.rep("k", 32),
        platform_certificate_files = false }, nil, "FAIL  apiv3_key decrypts", "APIv3 key" },
  }
  for _, case in ipairs(cases) do
    it("diagnoses " .. case[1], function()
      if not other_key then
        other_key = dir .. "/other_key.pem"
        assert(select(2, h.sh("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out " .. other_key)))
        assert(select(2, h.sh("openssl pkey -in " .. other_key .. " -pubout -out " .. other_key .. ".pub")))
      end
      local changes = type(case[2]) == "function" and case[2]() or case[2]
      if case[3] then sb:configure(case[3]) end
      local path = with_config(changes)
      local out, err, rc = wxpay("--config " .. path .. " doctor")
      os.remove(path)
      sb:configure{ clock_offset = 0 }
      assert.equal(1, rc, out .. err)
      assert.truthy(out:find(case[4], 1, true), "no '" .. case[4] .. "' in:\n" .. out)
      assert.truthy(out:find(case[5], 1, true), "no advice '" .. case[5] .. "' in:\n" .. out)
      assert.truthy(out:find("problem", 1, true))
      never_echoes_secrets(out .. err)
    end)
  end
end)

describe("wxpay campaign", function()
  before_each(function() sb:reset() end)

  -- Permission bits as octal text ("600"), from stat(1).
  local function mode(path)
    local out, ok = h.sh(sandbox.CLEAN_ENV .. "stat -c %a " .. h.q(path))
    assert(ok, "stat " .. path)
    return (out:gsub("%s+$", ""))
  end

  it("creates the journal 0600, and SQLite's side files with it", function()
    local plan_file, journal = dir .. "/mode-plan.csv", dir .. "/mode.db"
    plan(plan_file, 2, "wxmode")
    local out, err, rc = wxpay("--config " .. config_file .. " campaign run " .. plan_file
      .. " --stock " .. stocks.create(sb, "FAVOR_STOCK") .. " --business-type FAVOR_STOCK --journal " .. journal
      .. " --no-progress")
    assert.equal(0, rc, out .. err)
    assert.equal("600", mode(journal))
    -- While a journal is open in WAL mode its -wal and -shm files exist.
    local path = dir .. "/mode-direct.db"
    local j = assert(require("wxpay.cli.journal").open(path))
    local ok, jerr = pcall(function()
      assert(j:start({ id = "c", stock_id = "s", business_type = "FAVOR_STOCK" },
                     { { type = "APPID", id = "wx1", idempotency_key = "k" } }, 1))
      for _, name in ipairs{ "", "-wal", "-shm" } do assert.equal("600", mode(path .. name), name) end
    end)
    j:close()
    assert(ok, jerr)
  end)

  it("runs a plan, reports it, and a rerun sends nothing", function()
    local p, db = dir .. "/plan.csv", dir .. "/small.db"
    plan(p, 40, "wxsmall")
    local stock = stocks.create(sb, "FAVOR_STOCK")
    local run = "--config " .. config_file .. " campaign run " .. p
      .. " --stock " .. stock .. " --business-type FAVOR_STOCK --journal " .. db .. " --concurrency 8 --qps 200"
    local out, err, rc = wxpay(run)
    assert.equal(0, rc, err)
    assert.truthy(out:find("40 partners, 40 done, 0 failed, 0 not finished", 1, true), out)
    assert.truthy(err:find("40/40 done, 0 errors", 1, true), err) -- plain lines: no terminal here
    assert.falsy(err:find("\r", 1, true))
    local builds = builds_for(stock)
    assert.equal(40, #builds)
    -- keys are deterministic per campaign and partner
    local keys = {}
    for _, b in ipairs(builds) do keys[b.e.headers["idempotency-key"]] = b.body.partner.appid end
    local n = 0
    for k in pairs(keys) do n = n + 1; assert.equal(48, #k) end
    assert.equal(40, n)

    local _
    _, err, rc = wxpay(run)
    assert.equal(0, rc, err)
    assert.equal(40, #builds_for(stock)) -- nothing sent again

    out, err, rc = wxpay("campaign status " .. db)
    assert.equal(0, rc, err)
    assert.truthy(out:match("FAVOR_STOCK%-" .. stock .. "%s+FAVOR_STOCK%s+" .. stock .. "%s+40%s+40%s+0%s+0%s+0"), out)
    out = wxpay("campaign status " .. db .. " --output csv")
    local rows = parse_csv(out)
    assert.equal(41, #rows)
    assert.equal("campaign", rows[1][1])
    assert.equal("done", rows[2][4])
    assert.equal(keys[rows[2][10]], rows[2][3]) -- the key the sandbox saw for that partner
    out = wxpay("campaign status " .. db .. " --output json")
    local j = cjson.decode(out)
    assert.equal(1, #j.campaigns)
    assert.equal(40, j.campaigns[1].done)
    assert.equal(40, #j.campaigns[1].partners)
  end)

  it("records failures, retries the retryable ones on a rerun, and identifies campaigns by --campaign", function()
    local p, db = dir .. "/merchants.csv", dir .. "/m.db"
    plan(p, 5, "1", "merchant_id")
    -- FAVOR_STOCK refuses merchant partners: the rows are refused before anything is sent or
    -- journaled, as --dry-run refuses them
    local _, err, rc = wxpay("--config " .. config_file .. " campaign run " .. p
      .. " --stock " .. stocks.create(sb, "FAVOR_STOCK") .. " --business-type FAVOR_STOCK --journal " .. db
      .. " --campaign spring")
    assert.equal(1, rc, err)
    assert.truthy(err:find("5 rows of the plan refused; nothing sent", 1, true), err)
    assert.truthy(err:find("row 2: invalid_argument", 1, true), err)
    assert.is_nil(io.open(db, "rb"))
    -- a 500 storm exhausts the retries of one partner; the rerun finishes it
    local stock = stocks.create(sb, "BUSIFAVOR_STOCK")
    sb:fault{ fault = "500", count = 3, path = "/v3/marketing/partnerships/build" }
    local out
    out, err, rc = wxpay("--config " .. with_config{ retry_base_delay = 0.01 } .. " campaign run " .. p
      .. " --stock " .. stock .. " --business-type BUSIFAVOR_STOCK --journal " .. db .. " --concurrency 1"
      .. " --campaign spring")
    assert.equal(1, rc, err)
    assert.truthy(out:find("4 done, 1 failed", 1, true), out)
    out = wxpay("campaign status " .. db .. " --campaign spring")
    assert.truthy(out:find("failed partners", 1, true))
    assert.truthy(out:find("SYSTEM_ERROR", 1, true))
    out, err, rc = wxpay("--config " .. config_file .. " campaign run " .. p
      .. " --stock " .. stock .. " --business-type BUSIFAVOR_STOCK --journal " .. db .. " --campaign spring")
    assert.equal(0, rc, err)
    assert.truthy(out:find("5 done, 0 failed", 1, true), out)
    -- the same key each time for that partner
    local per = {}
    for _, b in ipairs(builds_for(stock)) do
      local id = b.body.partner.merchant_id
      per[id] = per[id] or b.e.headers["idempotency-key"]
      assert.equal(per[id], b.e.headers["idempotency-key"])
    end
    -- two campaigns in one journal
    _, err, rc = wxpay("--config " .. config_file .. " campaign run " .. p
      .. " --stock " .. stock .. " --business-type BUSIFAVOR_STOCK --journal " .. db .. " --no-progress")
    assert.equal(0, rc, err)
    local j = cjson.decode((wxpay("campaign status " .. db .. " --output json")))
    assert.equal(2, #j.campaigns)
  end)

  it("survives SIGKILL at random points five times, then finishes: nothing built twice #scale", function()
    local p, db = dir .. "/big.csv", dir .. "/big.db"
    local n = 2000
    plan(p, n, "wxkill")
    local seed = os.time()
    math.randomseed(seed)
    local stock = stocks.create(sb, "BUSIFAVOR_STOCK")
    local run = string.format(sandbox.CLEAN_ENV .. "lua5.4 bin/wxpay --config %s campaign run %s --stock %s "
      .. "--business-type BUSIFAVOR_STOCK --journal %s --concurrency 16 --qps 300", config_file, p, stock, db)
    local kills = {}
    for k = 1, 5 do
      local pr = assert(io.popen(run .. " >/dev/null 2>&1 & echo $!"))
      local pid = tonumber(pr:read("*l"))
      pr:close()
      local wait = 0.05 + math.random() * 1.4 -- paced at 300/s, so each kill lands mid-campaign
      os.execute("sleep " .. string.format("%.2f", wait))
      os.execute("kill -KILL " .. pid .. " 2>/dev/null")
      os.execute("while kill -0 " .. pid .. " 2>/dev/null; do sleep 0.05; done")
      -- a kill before the journal is opened (the stock is read first) leaves no journal yet
      local sout, _, src = wxpay("campaign status " .. db .. " --output json")
      local st = src == 0 and cjson.decode(sout) or { campaigns = {} }
      kills[k] = string.format("%.2f s: %d done", wait, st.campaigns[1] and st.campaigns[1].done or 0)
    end
    local out, err, rc = wxpay("--config " .. config_file .. " campaign run " .. p
      .. " --stock " .. stock .. " --business-type BUSIFAVOR_STOCK --journal " .. db .. " --concurrency 16")
    print(("\nkill -9 campaign (seed %d): %s"):format(seed, table.concat(kills, "; ")))
    assert.equal(0, rc, out .. err)
    assert.truthy(out:find("2000 partners, 2000 done, 0 failed, 0 not finished", 1, true), out)

    -- The sandbox: exactly 2,000 relations, each built by requests carrying one key only,
    -- no build refused as already existing (which a second key would cause).
    local rels = sb:control("GET", "/relations").relations
    local built = {}
    for _, r in ipairs(rels) do
      if r.authorized_data.stock_id == stock then
        assert.is_nil(built[r.partner.appid])
        built[r.partner.appid] = r.state
      end
    end
    local count = 0
    for _, state in pairs(built) do count = count + 1; assert.equal("ESTABLISHED", state) end
    assert.equal(n, count)
    local key_of, sends = {}, 0
    for _, b in ipairs(builds_for(stock)) do
      local appid = b.body.partner.appid
      local key = b.e.headers["idempotency-key"]
      key_of[appid] = key_of[appid] or key
      assert.equal(key_of[appid], key, "two keys for " .. appid)
      assert.equal(200, b.e.status, "build of " .. appid .. " answered " .. tostring(b.e.status))
      sends = sends + 1
    end
    print(("%d build requests for %d partners (re-sends after a kill are replays)"):format(sends, n))

    -- The journal agrees with the sandbox, partner by partner.
    local rows = parse_csv((wxpay("campaign status " .. db .. " --output csv")))
    assert.equal(n + 1, #rows)
    for i = 2, #rows do
      local partner, state, key = rows[i][3], rows[i][4], rows[i][10]
      assert.equal("done", state)
      assert.equal("ESTABLISHED", built[partner])
      assert.equal(key_of[partner], key)
    end
  end)
end)

describe("wxpay command line (errors, help, --version, --max)", function()
  before_each(function() sb:reset() end)

  it("prints an API error once, without a doubled prefix", function()
    local out, err, rc = wxpay("--config " .. config_file .. " partnerships terminate --business-type FAVOR_STOCK"
      .. " --stock 7300 --appid wxnothere")
    assert.equal(1, rc)
    assert.equal("", out)
    assert.truthy(err:match("^wxpay: api error"), err)
    assert.falsy(err:find("wxpay: wxpay:", 1, true), err)
  end)

  it("prints its version, and the sandbox's", function()
    local version = require("wxpay")._VERSION
    local out, err, rc = wxpay("--version")
    assert.equal(0, rc, err)
    assert.equal("wxpay " .. version .. "\n", out)
    local text, ok = h.sh(sandbox.CLEAN_ENV .. "lua5.4 bin/wxpay-sandbox --version")
    assert.truthy(ok)
    assert.equal("wxpay-sandbox " .. version .. "\n", text)
  end)

  it("shows a command's own help with COMMAND --help", function()
    local out, err, rc = wxpay("partnerships --help")
    assert.equal(0, rc, err)
    assert.truthy(out:find("--max N", 1, true), out)
    assert.falsy(out:find("campaign run", 1, true), out)
    out = wxpay("campaign --help")
    assert.truthy(out:find("--dry-run", 1, true), out)
    assert.falsy(out:find("partnerships list", 1, true), out)
  end)

  it("stops after --max rows; --limit is only the page size", function()
    for i = 1, 7 do
      local _, err, rc = wxpay("--config " .. config_file .. " partnerships build --business-type FAVOR_STOCK"
        .. " --stock 7301 --appid wxmax00000000000" .. i)
      assert.equal(0, rc, err)
    end
    local list = "--config " .. config_file
      .. " partnerships list --business-type FAVOR_STOCK --stock 7301 --output json"
    local out, err, rc = wxpay(list .. " --limit 2")
    assert.equal(0, rc, err)
    assert.equal(7, #cjson.decode(out))
    out, err, rc = wxpay(list .. " --limit 2 --max 3")
    assert.equal(0, rc, err)
    assert.equal(3, #cjson.decode(out))
    local _
    _, err, rc = wxpay(list .. " --max 0")
    assert.equal(2, rc)
    assert.truthy(err:find("--max", 1, true), err)
  end)
end)

describe("wxpay output", function()
  local output = require("wxpay.cli.output")

  it("aligns table columns by display width (CJK characters take two columns)", function()
    local t = output.table({ { error_message = "合作关系已存在", request_id = "r1" },
                             { error_message = "ok", request_id = "r2" } }, { "error_message", "request_id" })
    local lines = {}
    for l in t:gmatch("[^\n]+") do lines[#lines + 1] = l end
    -- the display column where request_id starts: 14 for the CJK row (7 characters x 2) + 2
    local function display_col(line, needle)
      local before = line:sub(1, line:find(needle, 1, true) - 1)
      local cols = 0
      for ch in before:gmatch("[%z\1-\127\194-\244][\128-\191]*") do cols = cols + (#ch >= 3 and 2 or 1) end
      return cols
    end
    assert.equal(display_col(lines[1], "request_id"), display_col(lines[3], "r1"))
    assert.equal(display_col(lines[1], "request_id"), display_col(lines[4], "r2"))
    assert.equal(16, display_col(lines[3], "r1"))
  end)

  it("prints integral numbers without .0", function()
    local t = output.table({ { total_count = 2252.0, rate = 1.5 } }, { "total_count", "rate" })
    assert.truthy(t:find("2252  ", 1, true), t)
    assert.falsy(t:find("2252.0", 1, true), t)
    assert.truthy(t:find("1.5", 1, true), t)
    assert.equal("n\r\n2252\r\n", output.csv({ { n = 2252.0 } }, { "n" }))
  end)
end)

describe("wxpay campaign run (interrupts, --dry-run, duplicates)", function()
  before_each(function() sb:reset() end)
  after_each(function() sb:configure{ latency = 0 } end)

  -- Ctrl-C (the interpreter's own hook) and SIGTERM (core.trap_signal in bin/wxpay) stop a
  -- run the same way; each gives its own status.
  for _, case in ipairs({ { "INT", "130", "interrupted" }, { "TERM", "143", "terminated" } }) do
    local signal, status, word = case[1], case[2], case[3]
    it("stops on SIG" .. signal .. " with status " .. status .. " and a resume line, and a rerun finishes "
      .. "without building twice", function()
      local p, db = dir .. "/" .. word .. ".csv", dir .. "/" .. word .. ".db"
      plan(p, 40, "wx" .. word:sub(1, 3))
      local stock = stocks.create(sb, "FAVOR_STOCK")
      sb:configure{ latency = 0.1 }
      local pidf, rcf, errf = dir .. "/" .. word .. ".pid", dir .. "/" .. word .. ".rc", dir .. "/" .. word .. ".err"
      os.remove(rcf)
      local run = string.format("lua5.4 bin/wxpay --config %s campaign run %s --stock %s --business-type FAVOR_STOCK"
        .. " --journal %s --concurrency 2", config_file, p, stock, db)
      -- A subshell records the pid and, once it ends, the exit status.
      os.execute(string.format("(%s%s >/dev/null 2>%s & echo $! > %s; wait $!; echo $? > %s) &", sandbox.CLEAN_ENV,
        run, h.q(errf), h.q(pidf), h.q(rcf)))
      local deadline = os.time() + 30
      while #builds_for(stock) < 4 and os.time() < deadline do os.execute("sleep 0.05") end
      local pid = tonumber(h.read(pidf))
      os.execute("kill -" .. signal .. " " .. pid)
      while not io.open(rcf) and os.time() < deadline do os.execute("sleep 0.05") end
      local err = h.read(errf)
      assert.equal(status, (h.read(rcf):gsub("%s+", "")), err)
      local n = tonumber(err:match(word .. ": (%d+)/40 done, run again to resume\n"))
      assert.truthy(n and n < 40, err)
      assert.falsy(err:find("traceback", 1, true), err)
      assert.falsy(err:find(word .. "!", 1, true), err)

      sb:configure{ latency = 0 }
      local out, err2, rc = wxpay("--config " .. config_file .. " campaign run " .. p
        .. " --stock " .. stock .. " --business-type FAVOR_STOCK --journal " .. db .. " --no-progress")
      assert.equal(0, rc, err2)
      assert.truthy(out:find("40 partners, 40 done, 0 failed", 1, true), out)
      local seen = {}
      for _, b in ipairs(builds_for(stock)) do
        assert.equal(200, b.e.status, "a build answered " .. tostring(b.e.status))
        seen[b.body.partner.appid] = true
      end
      local count = 0
      for _ in pairs(seen) do count = count + 1 end
      assert.equal(40, count)
    end)
  end

  -- A SIGTERM whose "terminated!" a pcall inside the library swallowed: before bin/wxpay
  -- runs, a -e chunk traps SIGTERM and sends it to itself inside a pcall, so the run
  -- starts with the signal already taken. It must still stop as terminated.
  it("stops as terminated (143) on a SIGTERM whose error a pcall swallowed", function()
    local pre = table.concat({
      "package.cpath = 'build/?.so;' .. package.cpath",
      "local core = require('wxpay.core')",
      "core.trap_signal('TERM')",
      "local f = assert(io.open('/proc/self/stat'))",
      "local pid = f:read('*a'):match('^(%d+)')",
      "f:close()",
      "print(pcall(os.execute, 'kill -TERM ' .. pid))",
    }, " ")
    local function swallowed(args)
      local out, err = dir .. "/sw.out", dir .. "/sw.err"
      local p = assert(io.popen(string.format(sandbox.CLEAN_ENV .. "lua5.4 -e %s bin/wxpay %s >%s 2>%s; echo $?",
        h.q(pre), args, h.q(out), h.q(err))))
      local rc = tonumber(p:read("*a"):match("(%d+)%s*$"))
      p:close()
      return h.read(out), h.read(err), rc
    end
    local p, db = dir .. "/swallowed.csv", dir .. "/swallowed.db"
    plan(p, 5, "wxswl")
    local stock = stocks.create(sb, "FAVOR_STOCK")
    local out, err, rc = swallowed("--config " .. config_file .. " campaign run " .. p
      .. " --stock " .. stock .. " --business-type FAVOR_STOCK --journal " .. db .. " --no-progress")
    assert.truthy(out:find("^false\t[^\n]*terminated!"), out) -- the trap fired and was swallowed
    assert.equal(143, rc, out .. err)
    assert.truthy(err:find("terminated: 0/5 done, run again to resume", 1, true), err)
    assert.equal(0, #builds_for(stock))
    -- any other command too
    out, err, rc = swallowed("--config " .. config_file .. " partnerships build --business-type FAVOR_STOCK"
      .. " --stock 9104 --appid wxswl000000000009")
    assert.equal(143, rc, out .. err)
    assert.truthy(err:find("wxpay: terminated\n", 1, true), err)
  end)

  it("--dry-run validates the plan, says what it would send and how long, and sends nothing", function()
    local p = dir .. "/dry.csv"
    plan(p, 30, "wxdry")
    local db = dir .. "/dry.db"
    local stock = stocks.create(sb, "FAVOR_STOCK")
    sb:control("DELETE", "/requests")
    -- the one request a dry run sends: the stock's query
    local function only_the_stock_read()
      local seen = sb:requests()
      assert.equal(1, #seen)
      assert.equal("GET", seen[1].method)
      assert.truthy(seen[1].target:find("/v3/marketing/favor/stocks/" .. stock, 1, true), seen[1].target)
      sb:control("DELETE", "/requests")
    end
    local out, err, rc = wxpay("--config " .. config_file .. " campaign run " .. p
      .. " --stock " .. stock .. " --business-type FAVOR_STOCK --journal " .. db .. " --qps 10 --dry-run")
    assert.equal(0, rc, err)
    assert.truthy(out:find("wxdry000000000030", 1, true), out)
    assert.truthy(out:find("30 build requests", 1, true), out)
    assert.truthy(out:find("3s at --qps 10", 1, true), out)
    only_the_stock_read()
    assert.is_nil(io.open(db, "rb"), "a dry run created the journal")
    -- a row the library refuses is named, and still nothing is sent
    h.write(p, "appid\nwxok1\n" .. string.rep("x", 40) .. "\n")
    out, err, rc = wxpay("--config " .. config_file .. " campaign run " .. p
      .. " --stock " .. stock .. " --business-type FAVOR_STOCK --journal " .. db .. " --dry-run")
    assert.equal(1, rc, out .. err)
    assert.truthy(err:find("row 3", 1, true), err)
    assert.truthy(err:find("invalid_argument", 1, true), err)
    only_the_stock_read()
    -- the real run refuses that row the same way, before it journals or sends a grant
    out, err, rc = wxpay("--config " .. config_file .. " campaign run " .. p
      .. " --stock " .. stock .. " --business-type FAVOR_STOCK --journal " .. db)
    assert.equal(1, rc, out .. err)
    assert.truthy(err:find("row 3", 1, true), err)
    assert.same({}, sb:requests())
    assert.is_nil(io.open(db, "rb"), "a refused plan created the journal")
    -- a NUL inside a row: refused by both (the journal would have cut it at the NUL)
    h.write(p, "appid\nwxnul\0tail\n")
    for _, dry in ipairs{ " --dry-run", "" } do
      out, err, rc = wxpay("--config " .. config_file .. " campaign run " .. p
        .. " --stock " .. stock .. " --business-type FAVOR_STOCK --journal " .. db .. dry)
      assert.equal(1, rc, out .. err)
      assert.truthy(err:find("row 2: invalid_argument", 1, true), dry .. err)
    end
    sb:control("DELETE", "/requests")
    -- without base_url the first line says this is the production API (the stock check
    -- goes through a proxy that refuses: nothing leaves this machine)
    local path = with_config{ base_url = false, backup_url = false, proxy = "http://127.0.0.1:9", max_retries = 0 }
    h.write(p, "appid\nwxok1\n")
    out, err, rc = wxpay("--config " .. path .. " campaign run " .. p
      .. " --stock " .. stock .. " --business-type FAVOR_STOCK --journal " .. db .. " --dry-run")
    os.remove(path)
    assert.equal(1, rc, out .. err)
    assert.truthy(err:match("^[^\n]*production API[^\n]*api%.mch%.weixin%.qq%.com"), err)
    assert.truthy(err:find("cannot check stock", 1, true), err)
    assert.same({}, sb:requests())
  end)

  it("confirms a partner that already exists by listing it before recording it done", function()
    local stock = stocks.create(sb, "FAVOR_STOCK")
    local _, err, rc = wxpay("--config " .. config_file .. " partnerships build --business-type FAVOR_STOCK"
      .. " --stock " .. stock .. " --appid wxdup000000000001")
    assert.equal(0, rc, err)
    local p, db = dir .. "/dup.csv", dir .. "/dup.db"
    plan(p, 2, "wxdup")
    local out
    out, err, rc = wxpay("--config " .. config_file .. " campaign run " .. p
      .. " --stock " .. stock .. " --business-type FAVOR_STOCK --journal " .. db .. " --no-progress")
    assert.equal(0, rc, out .. err)
    assert.truthy(out:find("2 done", 1, true), out)
    local listed = false
    for _, e in ipairs(sb:requests()) do
      if e.method == "GET" and e.target:find("/v3/marketing/partnerships", 1, true)
         and e.target:find("wxdup000000000001", 1, true) then listed = true end
    end
    assert.truthy(listed, "no list request confirmed the duplicate")
    local rows = parse_csv((wxpay("campaign status " .. db .. " --output csv")))
    assert.equal("done", rows[2][4])
    assert.equal("ALREADY_ESTABLISHED", rows[2][7])
  end)

  it("does not record a claimed duplicate the list does not show", function()
    local campaign = require("wxpay.cli.campaign")
    local function client_listing(rels)
      return { partnerships = { page = function() return { data = rels, offset = 0, limit = 50 } end } }
    end
    local partner = { type = "APPID", appid = "wx1" }
    local ad = { business_type = "FAVOR_STOCK", stock_id = "1" }
    assert.is_true(campaign.confirm_established(client_listing{ { partner = partner, state = "ESTABLISHED" } },
      partner, ad))
    assert.is_false(campaign.confirm_established(client_listing{}, partner, ad))
    assert.is_false(campaign.confirm_established(client_listing{ { partner = partner, state = "TERMINATED" } },
      partner, ad))
    assert.is_true(campaign.already_exists{ kind = "api", code = "RESOURCE_ALREADY_EXISTS" })
    assert.is_true(campaign.already_exists{ kind = "api", code = "INVALID_REQUEST", message = "合作关系已存在" })
    assert.is_false(campaign.already_exists{ kind = "api", code = "INVALID_REQUEST", message = "bad" })
    assert.is_true(campaign.already_exists{ kind = "api", code = "X", already_exists = true })
  end)
end)
