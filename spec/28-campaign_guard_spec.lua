-- Campaigns that stop themselves, run as a program against the real sandbox: the stock
-- checked before the first grant (--dry-run too), a streak of identical errors stops the
-- run, `sending` only once a request left, one run per journal, `campaign terminate`
-- (resumable, each partner once, through kill -9), and every failure one `wxpay:` line.

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

local function wxpay(args)
  return require("spec.support.cli").run(dir, "--config " .. h.q(config_file) .. " " .. args)
end

local function plan(path, n, prefix)
  local lines = { "appid" }
  for i = 1, n do lines[#lines + 1] = string.format("%s%012d", prefix, i) end
  h.write(path, table.concat(lines, "\n") .. "\n")
end

-- The sandbox's POSTs to `endpoint` (build or terminate) for `stock`: { appid, key, status }.
local function posts(endpoint, stock)
  local out = {}
  for _, e in ipairs(sb:requests()) do
    if e.method == "POST" and e.target == "/v3/marketing/partnerships/" .. endpoint then
      local body = cjson.decode(e.body)
      if body.authorized_data.stock_id == stock then
        out[#out + 1] = { appid = body.partner.appid, key = e.headers["idempotency-key"], status = e.status }
      end
    end
  end
  return out
end

local function status_json(db)
  return cjson.decode((wxpay("campaign status " .. db .. " --output json")))
end

-- One line on stderr starting `wxpay: `, no traceback.
local function one_line(err)
  assert.truthy(err:match("^wxpay: [^\n]+\n$"), "not one wxpay: line: " .. err)
  assert.falsy(err:find("traceback", 1, true), err)
end

-- Start `wxpay ARGS` in the background: its pid, and a function waiting for its status.
local function background(args, name)
  local pidf, rcf, errf = dir .. "/" .. name .. ".pid", dir .. "/" .. name .. ".rc", dir .. "/" .. name .. ".err"
  os.remove(rcf)
  os.remove(pidf)
  os.execute(string.format("(%slua5.4 bin/wxpay --config %s %s >/dev/null 2>%s & echo $! > %s.new; "
    .. "mv %s.new %s; wait $!; echo $? > %s) 2>/dev/null &", sandbox.CLEAN_ENV, h.q(config_file), args, h.q(errf),
    h.q(pidf), h.q(pidf), h.q(pidf), h.q(rcf)))
  local deadline = os.time() + 30
  while not io.open(pidf) and os.time() < deadline do os.execute("sleep 0.02") end
  local pid = assert(tonumber(h.read(pidf)))
  return pid, function()
    while not io.open(rcf) and os.time() < deadline + 60 do os.execute("sleep 0.05") end
    return tonumber(h.read(rcf)), h.read(errf)
  end
end

describe("wxpay campaign: the stock is checked first", function()
  before_each(function() sb:reset() end)

  it("refuses a stock of the other business type before any grant, in --dry-run too", function()
    local stock = stocks.create(sb, "BUSIFAVOR_STOCK")
    local p, db = dir .. "/type.csv", dir .. "/type.db"
    plan(p, 50, "wxtype")
    for _, dry in ipairs{ "", " --dry-run" } do
      local out, err, rc = wxpay("campaign run " .. p .. " --stock " .. stock .. " --business-type FAVOR_STOCK"
        .. " --journal " .. db .. " --no-progress" .. dry)
      assert.equal(1, rc, out .. err)
      assert.truthy(err:find("stock " .. stock .. " is not a FAVOR_STOCK", 1, true), err)
      assert.truthy(err:find("give --business-type BUSIFAVOR_STOCK", 1, true), err)
      assert.equal(0, #posts("build", stock), dry)
    end
    assert.is_nil(io.open(db, "rb"), "a refused campaign created the journal")
    -- a stock that does not exist at all
    local _, err, rc = wxpay("campaign run " .. p .. " --stock 999999 --business-type BUSIFAVOR_STOCK --journal " .. db)
    assert.equal(1, rc)
    assert.truthy(err:find("stock 999999 is not a BUSIFAVOR_STOCK", 1, true), err)
    assert.truthy(err:find("check --stock", 1, true), err)
    -- the right type runs
    local out
    out, err, rc = wxpay("campaign run " .. p .. " --stock " .. stock .. " --business-type BUSIFAVOR_STOCK"
      .. " --journal " .. db .. " --no-progress")
    assert.equal(0, rc, err)
    assert.truthy(out:find("50 partners, 50 done", 1, true), out)
    assert.equal(50, #posts("build", stock))
  end)
end)

describe("wxpay campaign: --max-errors", function()
  before_each(function() sb:reset() end)

  it("stops after a streak of identical errors, says why and how to resume, and the rerun resumes", function()
    local stock = stocks.create(sb, "BUSIFAVOR_STOCK")
    local p, db = dir .. "/streak.csv", dir .. "/streak.db"
    plan(p, 30, "wxstreak")
    -- ending partnerships never built: every terminate is 404 RESOURCE_NOT_EXISTS
    local term = "campaign terminate " .. p .. " --stock " .. stock .. " --business-type BUSIFAVOR_STOCK --journal "
      .. db .. " --no-progress --concurrency 1"
    local out, err, rc = wxpay(term .. " --max-errors 5")
    local _
    assert.equal(1, rc, out .. err)
    assert.equal(5, #posts("terminate", stock))
    assert.truthy(err:find("stopped after 5 identical errors in a row (--max-errors 5): RESOURCE_NOT_EXISTS", 1, true),
      err)
    assert.truthy(err:find("run the same command again to resume", 1, true), err)
    local st = status_json(db).campaigns[1]
    assert.equal("BUSIFAVOR_STOCK-" .. stock .. "/terminate", st.campaign)
    assert.equal(5, st.failed)
    assert.equal(25, st.pending)
    -- the default streak is 20
    _, err, rc = wxpay((term:gsub("streak%.db", "streak20.db")))
    assert.equal(1, rc)
    assert.truthy(err:find("stopped after 20 identical errors", 1, true), err)

    -- the cause fixed (the partnerships built), the same command finishes, each partner ended once
    _, err, rc = wxpay("campaign run " .. p .. " --stock " .. stock .. " --business-type BUSIFAVOR_STOCK --journal "
      .. db .. " --no-progress")
    assert.equal(0, rc, err)
    out, err, rc = wxpay(term .. " --max-errors 5")
    assert.equal(0, rc, out .. err)
    assert.truthy(out:find("30 partners, 30 done, 0 failed", 1, true), out)
    local ended = {}
    for _, t in ipairs(posts("terminate", stock)) do
      if t.status == 200 then
        assert.is_nil(ended[t.appid], "terminated twice: " .. t.appid)
        ended[t.appid] = true
      end
    end
    local n = 0
    for _ in pairs(ended) do n = n + 1 end
    assert.equal(30, n)
  end)

  it("sends nothing more once the streak stopped it, not even requests already waiting for --qps", function()
    local stock = stocks.create(sb, "BUSIFAVOR_STOCK")
    local p, db = dir .. "/streakq.csv", dir .. "/streakq.db"
    plan(p, 20, "wxstreakq")
    -- 16 tasks queue for a --qps 0.5 slot at once; the streak of 3 is complete after ~4 s (a
    -- request leaves every 2 s: one more is sent only if an answer takes longer than that)
    local out, err, rc = wxpay("campaign terminate " .. p .. " --stock " .. stock .. " --business-type "
      .. "BUSIFAVOR_STOCK --journal " .. db .. " --no-progress --concurrency 16 --qps 0.5 --max-errors 3")
    assert.equal(1, rc, out .. err)
    assert.truthy(err:find("stopped after 3 identical errors", 1, true), err)
    -- the streak, plus at most what was already in flight when its last answer came
    local sent = #posts("terminate", stock)
    assert.is_true(sent >= 3 and sent <= 5, "sent " .. sent)
    local st = status_json(db).campaigns[1]
    assert.equal(0, st.sending)
    assert.equal(20, st.pending + st.failed)
    assert.equal(sent, st.failed)
  end)

  it("is a usage error outside 1..1000000000", function()
    for _, bad in ipairs{ "0", "-1", "1.5", "x" } do
      local out, err, rc = wxpay("campaign run x.csv --stock 1 --business-type FAVOR_STOCK --journal x.db"
        .. " --max-errors " .. bad)
      assert.equal(2, rc, out .. err)
      assert.truthy(err:find("--max-errors", 1, true), err)
    end
  end)
end)

describe("wxpay campaign: the journal", function()
  before_each(function() sb:reset() end)
  after_each(function() sb:configure{ latency = 0 } end)

  it("records `sending` only when a request leaves, not while it waits for --qps", function()
    local stock = stocks.create(sb, "FAVOR_STOCK")
    local p, db = dir .. "/qps.csv", dir .. "/qps.db"
    plan(p, 40, "wxqps")
    local pid, wait = background("campaign run " .. p .. " --stock " .. stock .. " --business-type FAVOR_STOCK"
      .. " --journal " .. db .. " --qps 2 --concurrency 16 --no-progress", "qps")
    local deadline = os.time() + 30
    while #posts("build", stock) < 3 and os.time() < deadline do os.execute("sleep 0.05") end
    os.execute("kill -INT " .. pid)
    local rc, err = wait()
    assert.equal(130, rc, err)
    local sent = #posts("build", stock)
    local c = status_json(db).campaigns[1]
    -- every partner the journal says left did reach the sandbox (at most one on its way)
    assert.truthy(c.done + c.failed + c.sending <= sent + 1, cjson.encode(c) .. " sent " .. sent)
    assert.truthy(c.pending >= 40 - sent - 1, cjson.encode(c))
  end)

  it("refuses a second run while the first holds the journal, and a kill -9 frees it", function()
    local stock = stocks.create(sb, "FAVOR_STOCK")
    local p, db = dir .. "/lock.csv", dir .. "/lock.db"
    plan(p, 30, "wxlock")
    sb:configure{ latency = 0.2 } -- the first run holds the journal for about 6 s
    local run = "campaign run " .. p .. " --stock " .. stock .. " --business-type FAVOR_STOCK --journal " .. db
      .. " --concurrency 1 --no-progress"
    local pid = background(run, "lock1")
    local deadline = os.time() + 30
    while #posts("build", stock) < 2 and os.time() < deadline do os.execute("sleep 0.05") end
    local out, err, rc = wxpay(run)
    assert.equal(1, rc, out .. err)
    one_line(err)
    assert.truthy(err:find("is in use by another run", 1, true), err)
    -- the holder dies without a chance to clean up: the kernel drops its lock
    os.execute("kill -KILL " .. pid)
    os.execute("while kill -0 " .. pid .. " 2>/dev/null; do sleep 0.05; done")
    sb:configure{ latency = 0 }
    out, err, rc = wxpay(run)
    assert.equal(0, rc, out .. err)
    assert.truthy(out:find("30 partners, 30 done", 1, true), out)
    local keys = {}
    for _, b in ipairs(posts("build", stock)) do
      keys[b.appid] = keys[b.appid] or b.key
      assert.equal(keys[b.appid], b.key)
    end
  end)

  it("turns a damaged journal and a stock file holding null into one line and exit 1", function()
    local stock = stocks.create(sb, "FAVOR_STOCK")
    local p = dir .. "/dmg.csv"
    plan(p, 2, "wxdmg")
    local garbage = dir .. "/garbage.db"
    h.write(garbage, "SQLite format 3\0" .. string.rep("\255", 3000))
    -- a database whose tables are not a journal's
    local other = dir .. "/other.db"
    local env = require("luasql.sqlite3").sqlite3()
    local conn = env:connect(other)
    conn:execute("CREATE TABLE partners (x INTEGER)")
    conn:execute("CREATE TABLE campaigns (y INTEGER)")
    conn:close()
    env:close()
    for _, db in ipairs{ garbage, other } do
      local _, err, rc = wxpay("campaign run " .. p .. " --stock " .. stock .. " --business-type FAVOR_STOCK"
        .. " --journal " .. db .. " --no-progress")
      assert.equal(1, rc, err)
      one_line(err)
      _, err, rc = wxpay("campaign status " .. db)
      assert.equal(1, rc, err)
      one_line(err)
    end
    for _, text in ipairs{ "null", '{"stock_name": null}', "[1,2]" } do
      local file = dir .. "/null.json"
      h.write(file, text)
      local _, err, rc = wxpay("campaign run " .. p .. " --create-stock " .. file .. " --product favor --journal "
        .. dir .. "/null.db --no-progress")
      assert.equal(1, rc, text .. ": " .. err)
      one_line(err)
      _, err, rc = wxpay("stocks create --product favor " .. file)
      assert.equal(1, rc, text .. ": " .. err)
      one_line(err)
    end
    -- sent: the stock this test created and the runs' stock checks, no grant, no other stock
    local posted = 0
    for _, e in ipairs(sb:requests()) do
      if e.method == "POST" then posted = posted + 1 end
    end
    assert.equal(1, posted)
  end)

  it("shows the header it read and suggests the separator of a `;` plan", function()
    local p = dir .. "/semi.csv"
    h.write(p, "appid;note\nwx1;a\n")
    local _, err, rc = wxpay("campaign run " .. p .. " --stock 1 --business-type FAVOR_STOCK --journal "
      .. dir .. "/semi.db")
    assert.equal(1, rc)
    one_line(err)
    assert.truthy(err:find("appid;note", 1, true), err)
    assert.truthy(err:find("separated by semicolons", 1, true), err)
  end)

  it("--no-progress shows no progress, --progress forces the bar", function()
    local stock = stocks.create(sb, "FAVOR_STOCK")
    local p = dir .. "/prog.csv"
    plan(p, 3, "wxprog")
    local run = "campaign run " .. p .. " --stock " .. stock .. " --business-type FAVOR_STOCK --journal "
    local out, err, rc = wxpay(run .. dir .. "/prog1.db --no-progress")
    assert.equal(0, rc, err)
    assert.truthy(out:find("3 done", 1, true), out)
    assert.falsy(err:find("done", 1, true), err)
    out, err, rc = wxpay(run .. dir .. "/prog2.db --progress")
    assert.equal(0, rc, out .. err)
    assert.truthy(err:find("\r", 1, true), err) -- the redrawn bar
    out, err, rc = wxpay(run .. dir .. "/prog3.db")
    assert.equal(0, rc, out .. err)
    assert.truthy(err:find("3/3 done", 1, true), err) -- plain lines: stderr is no terminal
  end)
end)

describe("wxpay campaign terminate", function()
  before_each(function() sb:reset() end)

  it("survives kill -9 at random points and ends each partnership once #scale", function()
    local stock = stocks.create(sb, "BUSIFAVOR_STOCK")
    local p, db = dir .. "/term.csv", dir .. "/term.db"
    local n = 300
    plan(p, n, "wxterm")
    local _, err, rc = wxpay("campaign run " .. p .. " --stock " .. stock .. " --business-type BUSIFAVOR_STOCK"
      .. " --journal " .. db .. " --no-progress --qps 2000")
    assert.equal(0, rc, err)
    local seed = os.time()
    math.randomseed(seed)
    local term = "campaign terminate " .. p .. " --stock " .. stock .. " --business-type BUSIFAVOR_STOCK --journal "
      .. db .. " --no-progress --concurrency 8"
    for k = 1, 3 do
      local pid = background(term .. " --qps 150", "term" .. k)
      os.execute(string.format("sleep %.2f", 0.2 + math.random() * 1.2))
      os.execute("kill -KILL " .. pid .. " 2>/dev/null")
      os.execute("while kill -0 " .. pid .. " 2>/dev/null; do sleep 0.05; done")
    end
    local out
    out, err, rc = wxpay(term)
    assert.equal(0, rc, "seed " .. seed .. ": " .. out .. err)
    assert.truthy(out:find(n .. " partners, " .. n .. " done, 0 failed", 1, true), out)
    -- each partner: one key, answered 200 (a re-send after a kill is a replay, never an
    -- "already ended" refusal), and the sandbox holds every relation TERMINATED
    local key_of = {}
    for _, t in ipairs(posts("terminate", stock)) do
      key_of[t.appid] = key_of[t.appid] or t.key
      assert.equal(key_of[t.appid], t.key, "two keys for " .. t.appid)
      assert.equal(200, t.status, "terminate of " .. t.appid .. " answered " .. tostring(t.status))
    end
    local ended = 0
    for _, r in ipairs(sb:control("GET", "/relations").relations) do
      if r.authorized_data.stock_id == stock then
        assert.equal("TERMINATED", r.state)
        ended = ended + 1
      end
    end
    assert.equal(n, ended)
  end)
end)

describe("wxpay campaign: the journal keeps what the server said", function()
  it("stores an error message holding NUL (JSON's \\u0000) instead of failing the run", function()
    local journal = require("wxpay.cli.journal")
    local db = dir .. "/nul.db"
    local j = assert(journal.open(db))
    assert(j:start({ id = "c", stock_id = "1", business_type = "BUSIFAVOR_STOCK", plan = "p.csv" },
      { { type = "APPID", id = "wxnul000000001", idempotency_key = "k1" } }, 1))
    local p = j:todo("c")[1]
    local ok, err = pcall(j.outcome, j, "c", p, { state = "failed", attempts = 1, retryable = false,
      error_code = "PARAM\0ERROR", error_message = "bad\0value", request_id = "r\0" }, 2)
    assert.is_true(ok, tostring(err))
    local row = j:partners("c")[1]
    j:close()
    assert.equal("failed", row.state)
    assert.equal("bad\\0value", row.error_message)
    assert.equal("PARAM\\0ERROR", row.error_code)
  end)
end)
