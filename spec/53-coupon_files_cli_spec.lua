-- `wxpay busifavor upload-codes` (a codes file of any size in journaled batches of 200: a
-- failed or killed run resumes and never uploads a batch under a second request number)
-- and `wxpay favor use-flow --output csv`, run as a program against the sandbox.
local h = require("spec.helpers")
local sandbox = require("spec.support.sandbox")
local wxpay = require("wxpay")
local cjson = require("cjson").new()

local APPID = "wxd678efh567hg6787"
local OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"

local sb, dir, config_file, client
setup(function()
  sb = sandbox.start{ mode = "combined" }
  dir = h.tmpdir()
  local c = {}
  for k, v in pairs(sb.config) do c[k] = v end
  c.max_retries = 0
  config_file = dir .. "/config.json"
  h.write(config_file, cjson.encode(c))
  client = assert(wxpay.new(sb.config))
end)
teardown(function()
  if sb then sb:stop() end
  h.cleanup()
end)
before_each(function() sb:reset() end)

local function run(args)
  return require("spec.support.cli").run(dir, "--config " .. h.q(config_file) .. " " .. args)
end

local function rfc3339(t)
  return os.date("!%Y-%m-%dT%H:%M:%S+08:00", t + 8 * 3600)
end

local serial = 0
local function upload_stock()
  serial = serial + 1
  local now = os.time()
  return assert(client.busifavor.stocks.create{
    stock_name = "预存券", goods_name = "全场通用", stock_type = "NORMAL", coupon_code_mode = "MERCHANT_UPLOAD",
    out_request_no = "cli-codes-" .. serial,
    coupon_use_rule = {
      coupon_available_time = { available_begin_time = rfc3339(now - 60),
                                available_end_time = rfc3339(now + 30 * 86400) },
      fixed_normal_coupon = { discount_amount = 1000, transaction_minimum = 10000 },
      use_method = "OFF_LINE",
    },
    stock_send_rule = { max_coupons = 100000, max_coupons_per_user = 100 },
  }).stock_id
end

-- A codes file of n codes (blank lines and spaces sprinkled in); returns its path.
local function codes_file(name, n)
  local lines = {}
  for i = 1, n do
    lines[#lines + 1] = string.format("  CODE-%06d ", i)
    if i % 97 == 0 then lines[#lines + 1] = "" end
  end
  local path = dir .. "/" .. name
  h.write(path, table.concat(lines, "\n") .. "\n")
  return path
end

-- The upload requests the sandbox received (answered or not): upload_request_no → the code
-- lists sent under it.
local function uploads()
  local by_no, order = {}, {}
  for _, r in ipairs(sb:requests()) do
    if r.method == "POST" and r.target:find("/couponcodes$") then
      local b = cjson.decode(r.body)
      local key = table.concat(b.coupon_code_list, "\n")
      if not by_no[b.upload_request_no] then order[#order + 1] = b.upload_request_no end
      by_no[b.upload_request_no] = by_no[b.upload_request_no] or {}
      table.insert(by_no[b.upload_request_no], key)
    end
  end
  return by_no, order
end

-- Every code the stock holds, checked for duplicates.
local function pool(stock)
  local seen, n = {}, 0
  for c in client.busifavor.coupon_codes.list(stock, { limit = 100 }) do
    assert.is_nil(seen[c.code], "code uploaded twice: " .. c.code)
    seen[c.code] = true
    n = n + 1
  end
  return n, seen
end

-- Each request number carries one batch (repeats of a number carry the same codes), and
-- no two numbers carry the same batch.
local function one_number_per_batch()
  local by_no, order = uploads()
  local batch_of = {}
  for _, no in ipairs(order) do
    for _, key in ipairs(by_no[no]) do assert.equal(by_no[no][1], key) end
    assert.is_nil(batch_of[by_no[no][1]], "a batch was sent under two request numbers")
    batch_of[by_no[no][1]] = no
  end
  return #order, by_no
end

describe("wxpay busifavor upload-codes", function()
  it("loads 1050 codes in 6 batches; a failed run resumes with the same request number", function()
    local stock = upload_stock()
    local file = codes_file("codes.txt", 1050)
    local db = dir .. "/codes.db"
    -- The first batch is stored, then its answer is lost: the run stops there.
    sb:fault{ fault = "drop_after", count = 1, method = "POST",
              path = "/v3/marketing/busifavor/stocks/" .. stock .. "/couponcodes" }
    local out, err, rc = run("busifavor upload-codes " .. stock .. " --file " .. file .. " --journal " .. db)
    assert.equal(1, rc, out .. err)
    assert.truthy(err:find("run the same command again", 1, true), err)
    assert.truthy(out:find("failed", 1, true), out)
    out, err, rc = run("busifavor upload-codes " .. stock .. " --file " .. file .. " --journal " .. db
      .. " --output json")
    assert.equal(0, rc, out .. err)
    local rows = cjson.decode(out)
    assert.equal(6, #rows)
    for i, r in ipairs(rows) do
      assert.equal("done", r.state)
      assert.equal(i == 6 and 50 or 200, tonumber(r.count))
    end
    assert.equal(2, tonumber(rows[1].sends))
    local numbers, by_no = one_number_per_batch()
    assert.equal(6, numbers)
    assert.equal(2, #by_no[rows[1].upload_request_no]) -- the same number, sent twice
    local n, seen = pool(stock)
    assert.equal(1050, n)
    assert.truthy(seen["CODE-000001"] and seen["CODE-001050"])
    -- A third run has nothing left to do and sends nothing.
    local before = sb:stats().requests
    out, err, rc = run("busifavor upload-codes " .. stock .. " --file " .. file .. " --journal " .. db)
    assert.equal(0, rc, out .. err)
    assert.equal(before, sb:stats().requests)
    -- A changed file is refused rather than uploaded under the old batches' numbers.
    local changed = codes_file("changed.txt", 1049)
    out, err, rc = run("busifavor upload-codes " .. stock .. " --file " .. changed .. " --journal " .. db)
    assert.equal(1, rc, out)
    assert.truthy(err:find("changed since batch 6", 1, true), err)
  end)

  it("a run killed with SIGKILL resumes: every code once, one number per batch", function()
    local stock = upload_stock()
    local file = codes_file("kill.txt", 1400)
    local db = dir .. "/kill.db"
    sb:configure{ latency = 0.15 }
    local cmd = string.format(sandbox.CLEAN_ENV .. "lua5.4 bin/wxpay --config %s busifavor upload-codes %s "
      .. "--file %s --journal %s", h.q(config_file), stock, h.q(file), h.q(db))
    local pr = assert(io.popen(cmd .. " >/dev/null 2>&1 & echo $!"))
    local pid = tonumber(pr:read("*l"))
    pr:close()
    os.execute("sleep 0.7")
    os.execute("kill -KILL " .. pid .. " 2>/dev/null")
    os.execute("while kill -0 " .. pid .. " 2>/dev/null; do sleep 0.05; done")
    sb:configure{ latency = 0 }
    local out, err, rc = run("busifavor upload-codes " .. stock .. " --file " .. h.q(file) .. " --journal " .. db)
    assert.equal(0, rc, out .. err)
    assert.equal(7, (one_number_per_batch()))
    assert.equal(1400, (pool(stock)))
  end)

  it("waits for no other run: a journal held by another run is refused, nothing sent", function()
    local stock = upload_stock()
    local file = codes_file("held.txt", 10)
    local db = dir .. "/held.db"
    local holder = assert(require("wxpay.cli.journal").open(db, { lock = true }))
    local before = sb:stats().requests
    local out, err, rc = run("busifavor upload-codes " .. stock .. " --file " .. file .. " --journal " .. db)
    holder:close()
    assert.equal(1, rc, out .. err)
    assert.truthy(err:find("in use by another run", 1, true), err)
    assert.equal(before, sb:stats().requests)
    out, err, rc = run("busifavor upload-codes " .. stock .. " --file " .. file .. " --journal " .. db)
    assert.equal(0, rc, out .. err)
  end)

  it("usage errors", function()
    local _, err, rc = run("busifavor upload-codes 123 --file x.txt")
    assert.equal(2, rc)
    assert.truthy(err:find("usage", 1, true))
    _, err, rc = run("busifavor upload-codes 123 --file " .. dir .. "/none.txt --journal " .. dir .. "/u.db")
    assert.equal(1, rc)
    assert.truthy(err:find("cannot read", 1, true), err)
  end)
end)

describe("wxpay favor use-flow", function()
  it("prints the verified file with --output csv and its rows as json; a corrupt file fails", function()
    local now = os.time()
    local id = assert(client.favor.stocks.create{
      stock_name = "满50减5", out_request_no = "cli-flow-1",
      available_begin_time = rfc3339(now), available_end_time = rfc3339(now + 30 * 86400),
      stock_use_rule = { max_coupons = 5, max_amount = 2500, max_coupons_per_user = 5,
                         natural_person_limit = false, prevent_api_abuse = false },
      coupon_use_rule = { fixed_normal_coupon = { coupon_amount = 500, transaction_minimum = 5000 } },
      no_cash = false, stock_type = "NORMAL",
    }).stock_id
    assert(client.favor.stocks.start(id))
    local c = assert(client.favor.coupons.send(OPENID, { stock_id = id, appid = APPID })).coupon_id
    sb:control("POST", "/favor/redeem", { coupon_id = c, openid = OPENID,
      transaction_id = "4200000000000000000000000042" })
    local out, err, rc = run("favor use-flow " .. id .. " --output csv")
    assert.equal(0, rc, err)
    assert.truthy(out:find("批次id,优惠id", 1, true), out)
    assert.truthy(out:find("`" .. c, 1, true), out)
    out, err, rc = run("favor use-flow " .. id .. " --output json")
    assert.equal(0, rc, err)
    local rows = cjson.decode(out)
    assert.equal(1, #rows)
    assert.equal(c, rows[1]["优惠id"])
    assert.equal("4200000000000000000000000042", rows[1]["支付单号"])
    sb:control("POST", "/favor/flow", { fault = "corrupt" })
    out, err, rc = run("favor use-flow " .. id .. " --output csv")
    assert.equal(1, rc)
    assert.equal("", out) -- nothing unverified reaches stdout
    assert.truthy(err:find("does not match hash_value", 1, true), err)
    out, err, rc = run("favor refund-flow " .. id .. " --file " .. dir .. "/refund.csv --output csv")
    assert.equal(0, rc, out .. err)
    assert.truthy(h.read(dir .. "/refund.csv"):find("退款单号", 1, true))
    -- A disk error while the file is written (a file size limit, SIGXFSZ ignored so the
    -- write fails with EFBIG): an error, and neither the file nor its temporary is left.
    assert.equal(200, select(2, sb:control("POST", "/favor/flow", { filler_rows = 3000 })))
    local full = dir .. "/full"
    assert(os.execute("mkdir -p " .. h.q(full)))
    local cmd = string.format("ulimit -f 64; trap '' XFSZ; exec %s lua5.4 bin/wxpay --config %s favor use-flow %s "
      .. "--file %s --output csv", sandbox.CLEAN_ENV, h.q(config_file), id, h.q(full .. "/use.csv"))
    local p = assert(io.popen("sh -c " .. h.q(cmd) .. " >/dev/null 2>" .. h.q(dir .. "/full.err") .. "; echo $?"))
    rc = tonumber(p:read("*a"):match("(%d+)%s*$"))
    p:close()
    err = h.read(dir .. "/full.err")
    assert.equal(1, rc, err)
    assert.truthy(err:find("writing the downloaded file failed", 1, true), err)
    local lp = io.popen("ls -A " .. h.q(full))
    assert.equal("", lp:read("*a"))
    lp:close()
    sb:control("POST", "/favor/flow", { filler_rows = 0 })
  end)
end)
