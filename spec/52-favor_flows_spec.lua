-- 代金券 reconciliation over HTTPS against the sandbox: use-flow / refund-flow (and the
-- by-day forms) answer a signed { url, hash } and client.download streams the unsigned
-- file, trusting it by its hash: a corrupted or cut download is an error and leaves no
-- file. The row parser, the merchants / items iterators, and a large file downloaded with
-- flat memory.
local flow = require("wxpay.flow")
local sandbox = require("spec.support.sandbox")
local stocks = require("spec.support.stocks")
local h = require("spec.helpers")

local APPID = "wxd678efh567hg6787"
local OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"

local sb, client, dir
setup(function()
  sb = sandbox.start{ mode = "combined" }
  client = stocks.clients(sb)
  dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -m 700 " .. dir))
end)
teardown(function()
  if sb then sb:stop() end
  if dir then os.execute("rm -rf " .. dir) end
  h.cleanup()
end)
before_each(function() sb:reset() end)

local rfc3339 = stocks.rfc3339

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- The names in `dir` (to see that nothing is left behind).
local function listing()
  local p = io.popen("ls -A " .. dir)
  local out = {}
  for name in p:lines() do out[#out + 1] = name end
  p:close()
  return out
end

local serial = 0
local function stock(over)
  serial = serial + 1
  local now = os.time()
  local p = {
    stock_name = "满50减5", out_request_no = "flow-" .. serial,
    available_begin_time = rfc3339(now), available_end_time = rfc3339(now + 30 * 86400),
    stock_use_rule = { max_coupons = 5, max_amount = 2500, max_coupons_per_user = 5,
                       natural_person_limit = false, prevent_api_abuse = false },
    coupon_use_rule = { fixed_normal_coupon = { coupon_amount = 500, transaction_minimum = 5000 } },
    no_cash = false, stock_type = "NORMAL",
  }
  for k, v in pairs(over or {}) do p.coupon_use_rule[k] = v end
  local id = assert(client.favor.stocks.create(p)).stock_id
  assert(client.favor.stocks.start(id))
  return id
end

-- A stock with two redeemed coupons (one later refunded); returns id, coupon ids.
local function redeemed_stock()
  local id = stock()
  local used = {}
  for i = 1, 2 do
    local c = assert(client.favor.coupons.send(OPENID, { stock_id = id, appid = APPID })).coupon_id
    local _, status = sb:control("POST", "/favor/redeem", { coupon_id = c, openid = OPENID,
      transaction_id = "420000000000000000000000000" .. i })
    assert.equal(200, status)
    used[i] = c
  end
  assert(client.favor.coupons.send(OPENID, { stock_id = id, appid = APPID })) -- not used
  local _, status = sb:control("POST", "/favor/refund", { coupon_id = used[2], refund_id = "5000000001" })
  assert.equal(200, status)
  return id, used
end

describe("use-flow / refund-flow and client.download", function()
  it("downloads a verified use-flow file and parses its rows", function()
    local id, used = redeemed_stock()
    local info, err = client.favor.stocks.use_flow(id)
    assert.is_nil(err)
    assert.matches("^https://", info.url)
    assert.equal("SHA1", info.hash_type)
    assert.equal(40, #info.hash_value)
    local path = dir .. "/use.csv"
    local res, derr = client.download(info, { path = path })
    assert.is_nil(derr)
    assert.equal(path, res.path)
    assert.equal(info.hash_value, res.hash)
    assert.equal(#read(path), res.bytes)
    local rows = {}
    for r in flow.rows(path) do rows[#rows + 1] = r end
    assert.equal(2, #rows)
    local by_id = {}
    for _, r in ipairs(rows) do by_id[r["优惠id"]] = r end
    assert.equal(id, by_id[used[1]]["批次id"])
    assert.equal("4200000000000000000000000001", by_id[used[1]]["支付单号"])
    assert.equal("4200000000000000000000000002", by_id[used[2]]["支付单号"])
    assert.equal("5.00", rows[2][4])
    os.remove(path)
    local refund = assert(client.favor.stocks.refund_flow(id))
    local back = {}
    assert(client.download(refund, { sink = function(chunk)
      if chunk then back[#back + 1] = chunk end
      return true
    end }))
    local text = table.concat(back)
    assert.truthy(text:find(used[2], 1, true))
    assert.is_nil(text:find(used[1], 1, true))
    assert.truthy(text:find("5000000001", 1, true))
  end)

  it("the by-day forms give the day's file; its hash name is mapped to hash_value", function()
    local id = redeemed_stock()
    local today = os.date("!%Y-%m-%d", os.time() + 8 * 3600)
    local info = assert(client.favor.stocks.use_flow_by_day(id, today))
    assert.equal(40, #info.hash_value)
    local path = dir .. "/day.csv"
    assert(client.download(info, { path = path }))
    local n = 0
    for _ in flow.rows(path) do n = n + 1 end
    assert.equal(2, n)
    local other = assert(client.favor.stocks.refund_flow_by_day(id, "2001-01-01"))
    assert(client.download(other, { path = dir .. "/none.csv" }))
    n = 0
    for _ in flow.rows(dir .. "/none.csv") do n = n + 1 end
    assert.equal(0, n)
    local _, berr = client.favor.stocks.use_flow_by_day(id, "20240520")
    assert.equal("bill_date", berr.field)
    os.remove(path)
    os.remove(dir .. "/none.csv")
  end)

  for _, case in ipairs({ { "corrupt", "signature", "HASH_MISMATCH" }, { "cut", "network" } }) do
    it("a " .. case[1] .. " download is an error and leaves nothing behind", function()
      local id = redeemed_stock()
      local info = assert(client.favor.stocks.use_flow(id))
      local _, status = sb:control("POST", "/favor/flow", { fault = case[1] })
      assert.equal(200, status)
      local path = dir .. "/bad.csv"
      local res, err = client.download(info, { path = path })
      assert.is_nil(res)
      assert.equal(case[2], err.kind)
      if case[3] then assert.equal(case[3], err.code) end
      assert.is_nil(read(path))
      assert.same({}, listing())
      local got = false
      local sres = client.download(info, { sink = function(c) got = got or c ~= nil; return true end })
      assert.truthy(sres) -- the fault was for one download; the sink sees only verified bytes
      assert.is_true(got)
    end)
  end

  it("a wrong hash in info, an expired url, a failing sink: errors, nothing left", function()
    local id = redeemed_stock()
    local info = assert(client.favor.stocks.use_flow(id))
    local wrong = { url = info.url, hash_value = string.rep("0", 40), hash_type = "SHA1" }
    local _, err = client.download(wrong, { path = dir .. "/w.csv" })
    assert.equal("HASH_MISMATCH", err.code)
    local _, serr = client.download(info, { sink = function() error("disk full") end, tmp_dir = dir })
    assert.equal("opts.sink", serr.field)
    -- ltn12's refusals stop it too: nil and an error, or false.
    local calls = 0
    _, serr = client.download(info, { sink = function() calls = calls + 1; return nil, "disk full" end,
      tmp_dir = dir })
    assert.equal("opts.sink", serr.field)
    assert.truthy(serr.message:find("disk full", 1, true))
    assert.equal(1, calls)
    _, serr = client.download(info, { sink = function() return false end, tmp_dir = dir })
    assert.equal("opts.sink", serr.field)
    -- A sink that returns nothing has taken each chunk (a plain callback).
    local parts, ended = {}, false
    local res = assert(client.download(info, { sink = function(chunk)
      if chunk then parts[#parts + 1] = chunk else ended = true end
    end, tmp_dir = dir }))
    assert.is_true(ended)
    assert.equal(res.bytes, #table.concat(parts))
    assert.same({}, listing())
    local _, aerr = client.download({ url = info.url:gsub("token=%w+", "token=nope"), hash_value = info.hash_value },
      { path = dir .. "/x.csv" })
    assert.equal("api", aerr.kind)
    assert.equal(404, aerr.status)
    assert.same({}, listing())
  end)

  it("a timeout and a file over max_bytes: errors, nothing left (path or sink)", function()
    local id = redeemed_stock()
    local info = assert(client.favor.stocks.use_flow(id))
    local _, err = client.download(info, { path = dir .. "/big.csv", max_bytes = 10 })
    assert.equal("network", err.kind)
    local got = false
    _, err = client.download(info, { sink = function(c) got = got or c ~= nil; return true end,
      tmp_dir = dir, max_bytes = 10 })
    assert.equal("network", err.kind)
    assert.is_false(got)
    assert.same({}, listing())
    sb:configure{ latency = 3 }
    _, err = client.download(info, { path = dir .. "/slow.csv", timeout = 0.5 })
    assert.equal("timeout", err.kind)
    _, err = client.download(info, { sink = function(c) got = got or c ~= nil; return true end,
      tmp_dir = dir, timeout = 0.5 })
    assert.equal("timeout", err.kind)
    assert.is_false(got)
    assert.same({}, listing())
  end)

  it("refuses bad input without sending", function()
    local before = sb:stats().requests
    local good = { url = "https://127.0.0.1/v3/billdownload/file?token=x", hash_value = string.rep("a", 40) }
    local cases = {
      { { url = "http://x/y", hash_value = good.hash_value }, { path = "p" }, "url" },
      { { url = good.url, hash_value = "xyz" }, { path = "p" }, "hash_value" },
      { { url = good.url, hash_value = good.hash_value, hash_type = "MD5" }, { path = "p" }, "hash_type" },
      { good, {}, "opts.path" },
      { good, { path = "p", sink = print }, "opts.path" },
      { good, { path = "p", bogus = 1 }, "opts.bogus" },
      { good, { path = dir .. "/no/such/dir/f" }, "opts.path" },
      { good, { path = dir .. "/a\0b" }, "opts.path" }, -- the C core would cut it at the NUL
      { good, { sink = print, tmp_dir = {} }, "opts.tmp_dir" },
      { good, { sink = print, tmp_dir = "" }, "opts.tmp_dir" },
      { good, { sink = print, tmp_dir = dir .. "\0x" }, "opts.tmp_dir" },
      { good, { path = "p", max_bytes = math.huge }, "opts.max_bytes" }, -- the C core raised
      { good, { path = "p", max_bytes = 2 ^ 63 }, "opts.max_bytes" },
      { good, { path = "p", max_bytes = 0 }, "opts.max_bytes" },
    }
    for _, c in ipairs(cases) do
      local res, err = client.download(c[1], c[2])
      assert.is_nil(res)
      assert.equal("invalid_argument", err.kind)
      assert.equal(c[3], err.field)
    end
    assert.equal(before, sb:stats().requests)
    assert.has_error(function() client.download(nil, {}) end)
  end)
end)

describe("merchants and items iterators", function()
  it("walks 120 available merchants in pages of 50 and the items of a 单品 stock", function()
    local m = { sb.config.mchid }
    for i = 2, 120 do m[i] = string.format("19%08d", i) end
    local items = {}
    for i = 1, 30 do items[i] = "GOODS-" .. i end
    local id = stock{ available_merchants = m, available_items = items }
    local seen = {}
    for mchid in client.favor.stocks.merchants(id) do seen[#seen + 1] = mchid end
    assert.same(m, seen)
    local page = assert(client.favor.stocks.merchants_page(id, { limit = 10, offset = 2 }))
    assert.equal(120, page.total_count)
    assert.equal(m[21], page.data[1])
    local got = {}
    for it in client.favor.stocks.items(id, { limit = 7 }) do got[#got + 1] = it end
    assert.same(items, got)
    assert.has_error(function() client.favor.stocks.merchants(id, { limit = 51 }) end)
    local _, err = client.favor.stocks.items_page(id, { offset = 501 })
    assert.equal("offset", err.field)
  end)
end)

describe("a large flow file", function()
  -- Resident memory of this process in KiB (Linux).
  local function rss_kib()
    local f = io.open("/proc/self/status")
    if not f then return nil end
    local s = f:read("*a")
    f:close()
    return tonumber(s:match("VmRSS:%s*(%d+)"))
  end

  it("downloads with flat memory (RSS grows far less than the file)", function()
    -- 50 MB normally; smaller under valgrind / sanitizers, where RSS is not meaningful anyway.
    local slow = os.getenv("WXPAY_UNDER_VALGRIND") or os.getenv("WXPAY_UNDER_SANITIZER")
    local rows = slow and 20000 or 380000 -- about 51 MB
    local id = stock()
    assert.equal(200, select(2, sb:control("POST", "/favor/flow", { filler_rows = rows })))
    -- The sandbox writes the file while it answers: give it time on a busy machine.
    local info = assert(client.favor.stocks.use_flow(id, { timeout = 120 }))
    collectgarbage()
    local before = rss_kib()
    local path = dir .. "/big.csv"
    local res, err = client.download(info, { path = path, timeout = 300 })
    assert.is_nil(err)
    local after = rss_kib()
    assert.equal(rows, (function() local n = 0; for _ in flow.rows(path) do n = n + 1 end; return n end)())
    if not slow and before and after then
      assert.truthy(res.bytes > 45 * 1024 * 1024, "the file is " .. res.bytes .. " bytes")
      assert.truthy(after - before < 16 * 1024, string.format("RSS grew by %d KiB", after - before))
    end
    os.remove(path)
    sb:control("POST", "/favor/flow", { filler_rows = 0 })
  end)
end)
