-- `wxpay stocks create|get|budget|list` and `wxpay campaign run --create-stock`, run as a
-- program against the real sandbox; (#scale) a --create-stock campaign killed with SIGKILL
-- five times ends with exactly one stock and every partner granted once.

local h = require("spec.helpers")
local sandbox = require("spec.support.sandbox")
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

-- Run bin/wxpay with a config; returns stdout, stderr, exit status.
local function wxpay(args, config)
  return require("spec.support.cli").run(dir, "--config " .. h.q(config or config_file) .. " " .. args)
end

local function with_config(changes)
  local c = {}
  for k, v in pairs(sb.config) do c[k] = v end
  for k, v in pairs(changes) do c[k] = v end
  local path = dir .. "/config-" .. tostring(os.clock()):gsub("%.", "") .. ".json"
  h.write(path, cjson.encode(c))
  return path
end

local function rfc3339(t)
  return os.date("!%Y-%m-%dT%H:%M:%S+08:00", t + 8 * 3600)
end

local function busifavor_file(name)
  local now = os.time()
  local path = dir .. "/" .. name .. ".json"
  h.write(path, cjson.encode{
    stock_name = "满100减10元", goods_name = "全场通用", stock_type = "NORMAL", coupon_code_mode = "WECHATPAY_MODE",
    coupon_use_rule = {
      coupon_available_time = { available_begin_time = rfc3339(now - 60),
                                available_end_time = rfc3339(now + 30 * 86400) },
      fixed_normal_coupon = { discount_amount = 1000, transaction_minimum = 10000 }, use_method = "OFF_LINE",
    },
    stock_send_rule = { max_coupons = 100, max_coupons_per_user = 2 },
  })
  return path
end

local function favor_file(name, stock_name)
  local now = os.time()
  local path = dir .. "/" .. name .. ".json"
  h.write(path, cjson.encode{
    stock_name = stock_name or "满50减5", available_begin_time = rfc3339(now + 120),
    available_end_time = rfc3339(now + 30 * 86400),
    stock_use_rule = { max_coupons = 5, max_amount = 2500, max_coupons_per_user = 2, natural_person_limit = false,
                       prevent_api_abuse = false },
    coupon_use_rule = { fixed_normal_coupon = { coupon_amount = 500, transaction_minimum = 5000 } },
    no_cash = false, stock_type = "NORMAL", pattern_info = { description = "每人限领两张" },
  })
  return path
end

local function plan(path, n, prefix)
  local lines = { "appid" }
  for i = 1, n do lines[#lines + 1] = string.format("%s%012d", prefix, i) end
  h.write(path, table.concat(lines, "\n") .. "\n")
end

-- The create requests the sandbox received for `path`, as { out_request_no, status }.
local function creates(path)
  local out = {}
  for _, e in ipairs(sb:requests()) do
    if e.method == "POST" and e.target == path then
      out[#out + 1] = { no = cjson.decode(e.body).out_request_no, status = e.status }
    end
  end
  return out
end

-- The 代金券 stocks the sandbox holds, through F6.
local function favor_stocks()
  local out, err, rc = wxpay("stocks list --product favor --output json")
  assert.equal(0, rc, err)
  return cjson.decode(out)
end

describe("wxpay stocks", function()
  before_each(function() sb:reset() end)

  it("creates, gets and raises the budget of a 商家券, reading the current value first", function()
    local file = busifavor_file("bf")
    local out, err, rc = wxpay("stocks create --product busifavor " .. file .. " --output json")
    assert.equal(0, rc, err)
    -- one stock: one JSON object, not a one-element array
    assert.truthy(out:match("^{"), out)
    local row = cjson.decode(out)
    assert.truthy(row.stock_id:match("^%d+$"))
    -- the generated number is said before the call, and is the one sent
    local said = err:match("out_request_no (%w+) %(give %-%-out%-request%-no")
    assert.equal(row.out_request_no, said)
    assert.equal(said, creates("/v3/marketing/busifavor/stocks")[1].no)
    -- repeating it is a replay: the same stock
    local out2, err2, rc2 = wxpay("stocks create --product busifavor " .. file .. " --output json --out-request-no "
      .. said)
    assert.equal(0, rc2, err2)
    assert.equal(row.stock_id, cjson.decode(out2).stock_id)
    assert.equal("", err2) -- nothing generated, nothing to say

    out, err, rc = wxpay("stocks get --product busifavor " .. row.stock_id .. " --output csv")
    assert.equal(0, rc, err)
    assert.truthy(out:find("stock_id,stock_name,state,stock_type,max_coupons", 1, true), out)
    assert.truthy(out:find(row.stock_id .. ",满100减10元,RUNNING,NORMAL,100,", 1, true), out)

    out, err, rc = wxpay("stocks budget --product busifavor " .. row.stock_id .. " --max-coupons 150 --output json")
    assert.equal(0, rc, err)
    local b = cjson.decode(out)[1]
    assert.equal(100, b.current)
    assert.equal(150, b.max_coupons)
    -- a stale current value is the server's compare-and-set refusal: exit 1 with its message
    err, rc = select(2, wxpay("stocks budget --product busifavor " .. row.stock_id
      .. " --max-coupons 200 --current-max-coupons 100"))
    assert.equal(1, rc)
    assert.truthy(err:find("批次库存的当前值错误", 1, true), err)
    out = wxpay("stocks get --product busifavor " .. row.stock_id .. " --output json")
    assert.truthy(out:match("^{"), out)
    assert.equal(150, cjson.decode(out).stock_send_rule.max_coupons)
  end)

  it("creates and lists 代金券 stocks, and says 商家券 has no list", function()
    local out, err, rc = wxpay("stocks create --product favor " .. favor_file("fv") .. " --out-request-no fv-1")
    assert.equal(0, rc, err)
    local id = out:match("\n(%d+)%s+fv%-1")
    assert.truthy(id, out)
    local list = favor_stocks()
    assert.equal(1, #list)
    assert.equal(id, list[1].stock_id)
    assert.equal("unactivated", list[1].status)
    out, err, rc = wxpay("stocks get --product favor " .. id)
    assert.equal(0, rc, err)
    assert.truthy(out:find(id .. "%s+满50减5%s+unactivated"), out)
    err, rc = select(2, wxpay("stocks list --product busifavor"))
    assert.equal(2, rc)
    assert.truthy(err:find("no list endpoint", 1, true) and err:find("stocks get", 1, true), err)
  end)

  it("refuses bad options with a usage error in one line and sends nothing", function()
    for _, args in ipairs{
      "stocks budget --product busifavor 1 --max-coupons abc",
      "stocks budget --product busifavor 1 --max-coupons 0",
      "stocks budget --product busifavor 1 --max-coupons 1000000001",
      "stocks budget --product busifavor 1 --max-coupons 5 --current-max-coupons 1.5",
      "stocks budget --product busifavor 1 --max-coupons-by-day -3",
      "stocks budget --product favor 1 --max-coupons 5",
      "stocks budget --product busifavor 1",
      "stocks get 1",
      "stocks get --product coupons 1",
      "stocks frobnicate --product favor",
      "stocks list --product favor --limit 11",
      "stocks list --product favor --max 0",
    } do
      local _, err, rc = wxpay(args)
      assert.equal(2, rc, args .. ": " .. err)
      assert.equal(1, select(2, err:gsub("\n", "")), args .. ": " .. err)
    end
    assert.equal(0, #sb:requests())
  end)

  it("documents itself in --help", function()
    local out, _, rc = wxpay("stocks --help")
    assert.equal(0, rc)
    for _, word in ipairs{ "stocks create", "stocks get", "stocks budget", "stocks list", "--out-request-no",
                           "--current-max-coupons" } do
      assert.truthy(out:find(word, 1, true), word)
    end
  end)
end)

describe("wxpay campaign run --create-stock", function()
  before_each(function() sb:reset() end)

  it("creates the stock first and grants it; a rerun creates nothing new", function()
    local p, db, file = dir .. "/p1.csv", dir .. "/c1.db", favor_file("c1")
    plan(p, 20, "wxcs")
    local run = "campaign run " .. p .. " --create-stock " .. file .. " --product favor --journal " .. db
    local out, err, rc = wxpay(run)
    assert.equal(0, rc, err)
    assert.truthy(out:find("20 partners, 20 done, 0 failed", 1, true), out)
    local stock = err:match("created stock (%d+)")
    assert.truthy(stock, err)
    err, rc = select(2, wxpay(run))
    assert.equal(0, rc, err)
    assert.falsy(err:find("created stock", 1, true))
    assert.equal(1, #favor_stocks())
    assert.equal(1, #creates("/v3/marketing/favor/coupon-stocks"))
    local n = 0
    for _, r in ipairs(sb:control("GET", "/relations").relations) do
      assert.equal(stock, r.authorized_data.stock_id)
      n = n + 1
    end
    assert.equal(20, n)
    local st = cjson.decode((wxpay("campaign status " .. db .. " --output json")))
    assert.equal(stock, st.campaigns[1].stock_id)
    -- another stock file under the same campaign is refused, naming the journaled number
    err, rc = select(2, wxpay("campaign run " .. p .. " --create-stock " .. favor_file("other", "满60减5")
      .. " --product favor "
      .. "--journal " .. db .. " --campaign " .. st.campaigns[1].campaign))
    assert.equal(1, rc)
    assert.truthy(err:find("other fields", 1, true), err)
  end)

  it("refuses a stock file the library refuses, sends nothing, and takes the fixed file after", function()
    local p, db = dir .. "/p3.csv", dir .. "/c3.db"
    plan(p, 2, "wxfix")
    local bad = dir .. "/bad.json"
    local fields = cjson.decode(h.read(favor_file("good")))
    fields.available_begin_time = nil
    h.write(bad, cjson.encode(fields))
    local base = "campaign run " .. p .. " --product favor --journal " .. db .. " --campaign fix --create-stock "
    local out, err, rc = wxpay(base .. bad .. " --dry-run")
    assert.equal(1, rc, out .. err)
    assert.truthy(err:find("available_begin_time", 1, true), err)
    assert.falsy(err:find("row", 1, true), err) -- the file is not a row of the plan
    err, rc = select(2, wxpay(base .. bad))
    assert.equal(1, rc)
    assert.truthy(err:find("available_begin_time", 1, true) and err:find("nothing sent", 1, true), err)
    assert.equal(0, #sb:requests())
    out, err, rc = wxpay(base .. dir .. "/good.json")
    assert.equal(0, rc, err)
    assert.truthy(out:find("2 partners, 2 done", 1, true), out)
  end)

  it("journals the request number before the call: a lost answer is repeated, not created twice", function()
    local p, db, file = dir .. "/p2.csv", dir .. "/c2.db", busifavor_file("c2")
    plan(p, 3, "wxlost")
    -- the stock is created, but its answer comes after the client gave up
    sb:fault{ fault = "delay", seconds = 3, path = "/v3/marketing/busifavor/stocks", method = "POST" }
    local out, err, rc = wxpay("campaign run " .. p .. " --create-stock " .. file .. " --product busifavor --journal "
      .. db, with_config{ timeout = 0.5, max_retries = 0 })
    assert.equal(1, rc, out .. err)
    assert.truthy(err:find("run again to repeat the same request", 1, true), err)
    out, err, rc = wxpay("campaign run " .. p .. " --create-stock " .. file .. " --product busifavor --journal " .. db)
    assert.equal(0, rc, err)
    assert.truthy(out:find("3 partners, 3 done", 1, true), out)
    local sent = creates("/v3/marketing/busifavor/stocks")
    assert.equal(2, #sent)
    assert.equal(sent[1].no, sent[2].no)
    assert.equal(200, sent[2].status)
  end)

  it("survives SIGKILL at random points five times: one stock, every partner granted once #scale", function()
    local p, db, file = dir .. "/kill.csv", dir .. "/kill.db", favor_file("kill")
    local n = 200
    plan(p, n, "wxks")
    -- the create answer waits 1.5 s, so the first kill (at most 1 s in) lands before it
    sb:fault{ fault = "delay", seconds = 1.5, path = "/v3/marketing/favor/coupon-stocks", method = "POST" }
    sb:configure{ latency = 0.02 }
    local seed = os.time()
    math.randomseed(seed)
    local run = string.format(sandbox.CLEAN_ENV
      .. "lua5.4 bin/wxpay --config %s campaign run %s --create-stock %s --product favor --journal %s "
      .. "--concurrency 8 --qps 100", config_file, p, file, db)
    local kills = {}
    for k = 1, 5 do
      local pr = assert(io.popen(run .. " >/dev/null 2>&1 & echo $!"))
      local pid = tonumber(pr:read("*l"))
      pr:close()
      local wait = k == 1 and (0.3 + math.random() * 0.7) or (0.2 + math.random() * 1.2)
      os.execute("sleep " .. string.format("%.2f", wait))
      os.execute("kill -KILL " .. pid .. " 2>/dev/null")
      os.execute("while kill -0 " .. pid .. " 2>/dev/null; do sleep 0.05; done")
      local st = cjson.decode((wxpay("campaign status " .. db .. " --output json")))
      kills[k] = string.format("%.2f s: %s", wait,
        st.campaigns[1] and string.format("%d done", st.campaigns[1].done) or "no stock yet")
    end
    print(("\nkill -9 --create-stock campaign (seed %d): %s"):format(seed, table.concat(kills, "; ")))
    assert.truthy(kills[1]:find("no stock yet", 1, true), kills[1])
    sb:configure{ latency = 0 }
    local out, err, rc = wxpay("campaign run " .. p .. " --create-stock " .. file
      .. " --product favor --journal " .. db)
    assert.equal(0, rc, out .. err)
    assert.truthy(out:find(n .. " partners, " .. n .. " done, 0 failed, 0 not finished", 1, true), out)

    -- The sandbox: exactly one stock, every create request carrying the same number.
    local held = favor_stocks()
    assert.equal(1, #held)
    local stock = held[1].stock_id
    local sent = creates("/v3/marketing/favor/coupon-stocks")
    for _, c in ipairs(sent) do assert.equal(sent[1].no, c.no) end
    -- every partner granted once, for that stock, and no build refused as existing
    local built = {}
    for _, r in ipairs(sb:control("GET", "/relations").relations) do
      assert.equal(stock, r.authorized_data.stock_id)
      assert.is_nil(built[r.partner.appid], "two relations for " .. r.partner.appid)
      built[r.partner.appid] = r.state
    end
    local count = 0
    for _, state in pairs(built) do count = count + 1; assert.equal("ESTABLISHED", state) end
    assert.equal(n, count)
    for _, e in ipairs(sb:requests()) do
      if e.target == "/v3/marketing/partnerships/build" then assert.equal(200, e.status) end
    end
  end)
end)
