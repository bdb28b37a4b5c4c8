-- Unit specs over a fake transport for the coupon calls of issue 19: the request bytes of
-- 商家券 code upload / list / query / delete, associate, 营销补差, 代金券 flow files and the
-- merchants / items lists; request numbers kept across a dropped connection; refusals that
-- send nothing; the flow-file row parser.

local F = require("spec.support.fake")
local wxpay = require("wxpay")
local flow = require("wxpay.flow")

local MCHID = "1900000001"

local function new_client(handler)
  local t = F.transport(handler or function() return F.response(200, '{"stock_id":"1"}') end)
  local c = assert(wxpay.new(F.config(t)))
  return c, t
end

local function ok_json(body) return function() return F.response(200, body) end end

describe("商家券 code calls: request bytes", function()
  it("upload sends coupon_code_list and upload_request_no, kept across a dropped connection", function()
    local c, t = new_client(function(_, n)
      if n == 1 then return nil, { kind = "network", message = "reset", connected = true } end
      return F.response(200, '{"stock_id":"1212","total_count":2,"success_count":2,"success_time":"x"}')
    end)
    local res, err, meta = c.busifavor.coupon_codes.upload("1212", { coupon_code_list = { "A 1", "B/2" },
      upload_request_no = "UP.2024/05/20" })
    assert.is_nil(err)
    assert.equal(2, res.success_count)
    assert.equal("UP.2024/05/20", meta.upload_request_no)
    assert.equal(2, #t.calls)
    assert.equal("POST", t.calls[1].method)
    assert.equal("/v3/marketing/busifavor/stocks/1212/couponcodes", t.calls[1].target)
    assert.equal('{"coupon_code_list":["A 1","B/2"],"upload_request_no":"UP.2024/05/20"}', t.calls[1].body)
    assert.equal(t.calls[1].body, t.calls[2].body)
  end)

  it("list, get and delete build their targets", function()
    local answers = {
      ok_json('{"stock_id":"9","total_count":3,"offset":0,"limit":2,"data":[{"code":"a"},{"code":"b"}]}'),
      ok_json('{"stock_id":"9","total_count":3,"offset":2,"limit":1,"data":[{"code":"c"}]}'),
      ok_json('{"code_information":{"code":"a=b"}}'),
      ok_json('{"stock_id":"9","delete_time":"x"}'),
    }
    local c, t = new_client(function(_, n) return answers[n]() end)
    local seen = {}
    for code in c.busifavor.coupon_codes.list("9", { limit = 2, status = "AVAILABLE" }) do
      seen[#seen + 1] = code.code
    end
    assert.same({ "a", "b", "c" }, seen)
    assert.equal("/v3/marketing/busifavor/stocks/9/couponcodes?limit=2&offset=0&status=AVAILABLE", t.calls[1].target)
    assert.equal("/v3/marketing/busifavor/stocks/9/couponcodes?limit=2&offset=2&status=AVAILABLE", t.calls[2].target)
    assert(c.busifavor.coupon_codes.get("9", "a=b", { appid = "wx1" }))
    assert.equal("/v3/marketing/busifavor/stocks/9/couponcodes/a%3Db?appid=wx1", t.calls[3].target)
    local _, err, meta = c.busifavor.coupon_codes.delete("9", "a", { delete_request_no = "del:1" })
    assert.is_nil(err)
    assert.equal("del:1", meta.delete_request_no)
    assert.equal("DELETE", t.calls[4].method)
    assert.equal("/v3/marketing/busifavor/stocks/9/couponcodes/a?delete_request_no=del%3A1", t.calls[4].target)
  end)

  it("list and page take no filters at all (each is optional)", function()
    local c, t = new_client(ok_json('{"stock_id":"9","total_count":1,"offset":0,"limit":1,"data":[{"code":"a"}]}'))
    local seen = {}
    for code in c.busifavor.coupon_codes.list("9") do seen[#seen + 1] = code.code end
    assert.same({ "a" }, seen)
    local page = assert(c.busifavor.coupon_codes.page("9"))
    assert.equal("a", page.data[1].code)
    assert.equal("/v3/marketing/busifavor/stocks/9/couponcodes?limit=20&offset=0", t.calls[1].target)
    assert.equal(t.calls[1].target, t.calls[2].target)
    assert.has_error(function() c.busifavor.coupon_codes.list("9", "x") end)
  end)

  it("associate / disassociate send the four fields and answer the time", function()
    local c, t = new_client(function(_, n)
      return F.response(200, n == 1 and '{"wechatpay_associate_time":"t"}' or '{"wechatpay_disassociate_time":"t"}')
    end)
    local p = { stock_id = "9", coupon_code = string.rep("c", 100), out_trade_no = "T:1", out_request_no = "a-1" }
    assert(c.busifavor.coupons.associate(p))
    assert(c.busifavor.coupons.disassociate(p))
    assert.equal("/v3/marketing/busifavor/coupons/associate", t.calls[1].target)
    assert.equal("/v3/marketing/busifavor/coupons/disassociate", t.calls[2].target)
    assert.equal('{"stock_id":"9","coupon_code":"' .. string.rep("c", 100)
      .. '","out_trade_no":"T:1","out_request_no":"a-1"}', t.calls[1].body)
  end)

  it("a signed answer without the promised field is a decode error carrying the number", function()
    local c = new_client(ok_json('{}'))
    local _, err = c.busifavor.coupons.associate{ stock_id = "9", coupon_code = "c", out_trade_no = "t",
      out_request_no = "a-2" }
    assert.equal("decode", err.kind)
    assert.equal("a-2", err.out_request_no)
  end)

  it("refuses bad input without sending", function()
    local c, t = new_client()
    local cases = {
      { function() return c.busifavor.coupon_codes.upload("9", { coupon_code_list = { "" } }) end,
        "coupon_code_list[1]" },
      { function() return c.busifavor.coupon_codes.upload("9", { coupon_code_list = { "a" }, x = 1 }) end, "x" },
      { function() return c.busifavor.coupon_codes.page("9", { limit = 0 }) end, "limit" },
      { function() return c.busifavor.coupons.associate{ stock_id = "9", coupon_code = string.rep("c", 129),
        out_trade_no = "t" } end, "coupon_code" },
      { function() return c.busifavor.subsidy.pay{ stock_id = "9", coupon_code = "c", transaction_id = "t",
        payer_merchant = "x", payee_merchant = MCHID, amount = 1, description = "d" } end, "payer_merchant" },
      { function() return c.busifavor.subsidy.pay_receipts{ stock_id = "9" } end, "coupon_code" },
    }
    for i, case in ipairs(cases) do
      local res, err = case[1]()
      assert.is_nil(res, "case " .. i)
      assert.equal("invalid_argument", err.kind, "case " .. i)
      assert.equal(case[2], err.field, "case " .. i)
    end
    assert.equal(0, #t.calls)
  end)
end)

describe("营销补差: request bytes", function()
  it("a receipt id of any length reaches the path (none is stated)", function()
    local c, t = new_client(ok_json('{"subsidy_receipt_id":"x","status":"PAY_RECEIPT_SUCCESS"}'))
    local long = string.rep("2", 100)
    assert(c.busifavor.subsidy.pay_receipt(long))
    assert(c.busifavor.subsidy.return_receipt(long))
    assert.equal("/v3/marketing/busifavor/subsidy/pay-receipts/" .. long, t.calls[1].target)
    assert.equal("/v3/marketing/busifavor/subsidy/return-receipts/" .. long, t.calls[2].target)
  end)

  it("pay keeps out_subsidy_no across a 500; lists and queries by id", function()
    local answers = {
      function() return F.response(500, '{"code":"SYSTEM_ERROR","message":"x"}') end,
      ok_json('{"subsidy_receipt_id":"R1","status":"PAY_RECEIPT_SUCCESS"}'),
      ok_json('{"data":[],"total_count":0}'),
      ok_json('{"subsidy_receipt_id":"R1","status":"PAY_RECEIPT_SUCCESS"}'),
    }
    local c, t = new_client(function(_, n) return answers[n]() end)
    local r, err, meta = c.busifavor.subsidy.pay{ stock_id = "9", coupon_code = "c", transaction_id = "42",
      payer_merchant = MCHID, payee_merchant = MCHID, amount = 100, description = "补差" }
    assert.is_nil(err)
    assert.equal("R1", r.subsidy_receipt_id)
    assert.equal(32, #meta.out_subsidy_no)
    assert.equal(t.calls[1].body, t.calls[2].body)
    assert.equal('{"stock_id":"9","coupon_code":"c","transaction_id":"42","payer_merchant":"1900000001",'
      .. '"payee_merchant":"1900000001","amount":100,"description":"补差","out_subsidy_no":"'
      .. meta.out_subsidy_no .. '"}', t.calls[1].body)
    assert(c.busifavor.subsidy.pay_receipts{ stock_id = "9", coupon_code = "c" })
    assert.equal("/v3/marketing/busifavor/subsidy/pay-receipts?stock_id=9&coupon_code=c", t.calls[3].target)
    assert(c.busifavor.subsidy.pay_receipt("R1"))
    assert.equal("/v3/marketing/busifavor/subsidy/pay-receipts/R1", t.calls[4].target)
  end)
end)

describe("代金券 flows and lists: request bytes", function()
  it("use_flow / refund_flow / by-day targets, answers mapped to hash_value", function()
    local answers = {
      ok_json('{"url":"https://x/f?t=1","hash_value":"' .. string.rep("a", 40) .. '","hash_type":"SHA1"}'),
      ok_json('{"url":"https://x/f?t=2","hash_value":"' .. string.rep("b", 40) .. '","hash_type":"SHA1"}'),
      ok_json('{"url":"https://x/f?t=3","stock_useflow_hash":"' .. string.rep("c", 40)
        .. '","stock_useflow_count":"3"}'),
      ok_json('{"url":"https://x/f?t=4","stock_refundflow_hash":"' .. string.rep("d", 40) .. '"}'),
      ok_json('{"hash_value":"x"}'),
    }
    local c, t = new_client(function(_, n) return answers[n]() end)
    assert.equal(string.rep("a", 40), assert(c.favor.stocks.use_flow("123")).hash_value)
    assert(c.favor.stocks.refund_flow("123"))
    assert.equal(string.rep("c", 40), assert(c.favor.stocks.use_flow_by_day("123", "2025-09-08")).hash_value)
    assert.equal(string.rep("d", 40), assert(c.favor.stocks.refund_flow_by_day("123", "2025-09-08")).hash_value)
    assert.equal("/v3/marketing/favor/stocks/123/use-flow", t.calls[1].target)
    assert.equal("/v3/marketing/favor/stocks/123/refund-flow", t.calls[2].target)
    assert.equal("/v3/marketing/favor/stocks/123/use-flow-by-day?bill_date=2025-09-08", t.calls[3].target)
    assert.equal("/v3/marketing/favor/stocks/123/refund-flow-by-day?bill_date=2025-09-08", t.calls[4].target)
    local _, err = c.favor.stocks.use_flow("123")
    assert.equal("decode", err.kind)
  end)

  it("merchants and items page with stock_creator_mchid", function()
    local answers = {
      ok_json('{"stock_id":"1","total_count":3,"offset":0,"limit":2,"data":["1900000001","1900000002"]}'),
      ok_json('{"stock_id":"1","total_count":3,"offset":1,"limit":2,"data":["1900000003"]}'),
      ok_json('{"stock_id":"1","total_count":1,"offset":0,"limit":100,"data":["G1"]}'),
    }
    local c, t = new_client(function(_, n) return answers[n]() end)
    local m = {}
    for x in c.favor.stocks.merchants("1", { limit = 2 }) do m[#m + 1] = x end
    assert.same({ "1900000001", "1900000002", "1900000003" }, m)
    assert.equal("/v3/marketing/favor/stocks/1/merchants?offset=0&limit=2&stock_creator_mchid=1900000001",
      t.calls[1].target)
    assert.equal("/v3/marketing/favor/stocks/1/merchants?offset=1&limit=2&stock_creator_mchid=1900000001",
      t.calls[2].target)
    local items = {}
    for x in c.favor.stocks.items("1") do items[#items + 1] = x end
    assert.same({ "G1" }, items)
    assert.equal("/v3/marketing/favor/stocks/1/items?offset=0&limit=100&stock_creator_mchid=1900000001",
      t.calls[3].target)
    assert.has_error(function() c.favor.stocks.items("1", { offset = 501 }) end)
    assert.equal(3, #t.calls)
  end)
end)

describe("route labels of the issue-19 calls", function()
  it("each call's on_request route is its declared template, never an id", function()
    local routes = {}
    local t = F.transport(function()
      return F.response(200, '{"stock_id":"9","status":"S","url":"https://x/f","hash_value":"'
        .. string.rep("a", 40) .. '","wechatpay_associate_time":"t","wechatpay_disassociate_time":"t",'
        .. '"data":[],"total_count":0,"offset":0,"limit":1}')
    end)
    local cfg = F.config(t)
    cfg.on_request = function(ev) if ev.phase == "call" then routes[#routes + 1] = ev.route end end
    local c = assert(wxpay.new(cfg))
    local link = { stock_id = "9", coupon_code = "C1", out_trade_no = "T1" }
    local pay = { stock_id = "9", coupon_code = "C1", transaction_id = "42", payer_merchant = MCHID,
      payee_merchant = MCHID, amount = 1, description = "d" }
    local B, V = "/v3/marketing/busifavor", "/v3/marketing/favor/stocks/{stock_id}"
    local cases = {
      { function() return c.busifavor.coupon_codes.upload("9", { coupon_code_list = { "a" } }) end,
        B .. "/stocks/{stock_id}/couponcodes" },
      { function() return c.busifavor.coupon_codes.page("9", {}) end, B .. "/stocks/{stock_id}/couponcodes" },
      { function() return c.busifavor.coupon_codes.get("9", "C1") end,
        B .. "/stocks/{stock_id}/couponcodes/{coupon_code}" },
      { function() return c.busifavor.coupon_codes.delete("9", "C1") end,
        B .. "/stocks/{stock_id}/couponcodes/{coupon_code}" },
      { function() return c.busifavor.coupons.associate(link) end, B .. "/coupons/associate" },
      { function() return c.busifavor.coupons.disassociate(link) end, B .. "/coupons/disassociate" },
      { function() return c.busifavor.subsidy.pay(pay) end, B .. "/subsidy/pay-receipts" },
      { function() return c.busifavor.subsidy.pay_receipts{ stock_id = "9", coupon_code = "C1" } end,
        B .. "/subsidy/pay-receipts" },
      { function() return c.busifavor.subsidy.pay_receipt("R1") end,
        B .. "/subsidy/pay-receipts/{subsidy_receipt_id}" },
      { function()
          local r = {}
          for k, v in pairs(pay) do r[k] = v end
          r.refund_id = "5"
          return c.busifavor.subsidy.return_pay(r)
        end, B .. "/subsidy/return-receipts" },
      { function() return c.busifavor.subsidy.return_receipt("R2") end,
        B .. "/subsidy/return-receipts/{subsidy_return_receipt_id}" },
      { function() return c.favor.stocks.use_flow("9") end, V .. "/use-flow" },
      { function() return c.favor.stocks.refund_flow("9") end, V .. "/refund-flow" },
      { function() return c.favor.stocks.use_flow_by_day("9", "2024-05-20") end, V .. "/use-flow-by-day" },
      { function() return c.favor.stocks.refund_flow_by_day("9", "2024-05-20") end, V .. "/refund-flow-by-day" },
      { function() return c.favor.stocks.merchants_page("9") end, V .. "/merchants" },
      { function() return c.favor.stocks.items_page("9") end, V .. "/items" },
    }
    for i, case in ipairs(cases) do
      local _, err = case[1]()
      assert.is_nil(err, "case " .. i)
      assert.equal(case[2], routes[i], "case " .. i)
    end
  end)
end)

describe("wxpay.flow", function()
  it("splits lines: backticks, quotes, empty values", function()
    assert.same({ "a", "b,c", 'say "hi"', "", "" }, flow.parse_line('`a,"`b,c","say ""hi""",,'))
    assert.same({ "" }, flow.parse_line(""))
    assert.same({ "1", "2" }, flow.parse_line("` 1 ,`2"))
  end)

  it("iterates rows by position and by column name, skipping blank lines and a BOM", function()
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write("\239\187\191批次id,优惠id\r\n`9,`100\r\n\r\n`9,`101\r\n")
    f:close()
    local rows = {}
    for r in flow.rows(path) do rows[#rows + 1] = r end
    os.remove(path)
    assert.equal(2, #rows)
    assert.equal("9", rows[1]["批次id"])
    assert.equal("101", rows[2]["优惠id"])
    assert.equal("100", rows[1][2])
    assert.has_error(function() flow.rows(path) end)
  end)
end)
