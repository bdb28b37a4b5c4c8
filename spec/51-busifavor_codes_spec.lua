-- 商家券 pre-stored codes (upload, list, query, delete), issuing from the uploaded pool,
-- associate / disassociate and 营销补差, through the typed calls over HTTPS against the
-- sandbox; and the refusals that send nothing.
local sandbox = require("spec.support.sandbox")
local stocks = require("spec.support.stocks")
local h = require("spec.helpers")

local APPID = "wxd678efh567hg6787"
local OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"

local sb, client, retrying
setup(function()
  sb = sandbox.start{ mode = "combined" }
  client, retrying = stocks.clients(sb)
end)
teardown(function()
  if sb then sb:stop() end
  h.cleanup()
end)
before_each(function() sb:reset() end)

local rfc3339 = stocks.rfc3339

local serial = 0
local function create(mode, max)
  serial = serial + 1
  local now = os.time()
  local stock = assert(client.busifavor.stocks.create{
    stock_name = "预存券", goods_name = "全场通用", stock_type = "NORMAL", coupon_code_mode = mode,
    out_request_no = "codes-" .. serial,
    coupon_use_rule = {
      coupon_available_time = { available_begin_time = rfc3339(now - 60),
                                available_end_time = rfc3339(now + 30 * 86400) },
      fixed_normal_coupon = { discount_amount = 1000, transaction_minimum = 10000 },
      use_method = "OFF_LINE",
    },
    stock_send_rule = { max_coupons = max or 1000, max_coupons_per_user = 100 },
  })
  return stock.stock_id
end

local function claim(stock_id)
  return sb:control("POST", "/busifavor/claim", { stock_id = stock_id, openid = OPENID, appid = APPID })
end

local function refused(field, fn)
  local before = sb:stats().requests
  local data, err = fn()
  assert.is_nil(data)
  assert.equal("invalid_argument", err.kind)
  assert.equal(field, err.field)
  assert.equal(before, sb:stats().requests)
  return err
end

describe("client.busifavor.coupon_codes", function()
  it("uploads codes, issues from the pool, lists, queries and deletes", function()
    local id = create("MERCHANT_UPLOAD")
    local res, status = claim(id)
    assert.equal(400, status)
    assert.equal("NOTENOUGH", res.code) -- nothing uploaded yet
    local codes = {}
    for i = 1, 200 do codes[i] = string.format("UP-%04d", i) end
    local up, err, meta = client.busifavor.coupon_codes.upload(id, { coupon_code_list = codes,
      upload_request_no = "upload.2024/05/20" })
    assert.is_nil(err)
    assert.equal("upload.2024/05/20", meta.upload_request_no)
    assert.equal(id, up.stock_id)
    assert.equal(200, up.success_count)
    assert.equal(200, up.total_count)
    -- The same request number and body: the stored answer, nothing uploaded twice.
    assert.same(up, assert(client.busifavor.coupon_codes.upload(id, { coupon_code_list = codes,
      upload_request_no = "upload.2024/05/20" })))
    local again = assert(client.busifavor.coupon_codes.upload(id, { coupon_code_list = { "UP-0001", "UP-X", "UP-X",
      "bad#code" } }))
    assert.same({ "UP-0001" }, again.exist_codes)
    assert.same({ "UP-X" }, again.duplicate_codes)
    assert.same({ "UP-X" }, again.success_codes)
    assert.equal("bad#code", again.fail_codes[1].coupon_code)
    local first = claim(id)
    assert.equal("SUCCESS", first.code)
    assert.equal("UP-0001", first.coupon_code)
    local info = assert(client.busifavor.coupon_codes.get(id, "UP-0001"))
    assert.equal("DISPATCHED", info.code_information.code_status)
    assert.equal(OPENID, info.code_information.openid)
    assert.equal("UP-0001", info.coupon_information.coupon_code)
    assert.equal("AVAILABLE", assert(client.busifavor.coupon_codes.get(id, "UP-0002", { appid = APPID }))
      .code_information.code_status)
    local n, dispatched = 0, 0
    for c in client.busifavor.coupon_codes.list(id, { limit = 50 }) do
      n = n + 1
      if c.code_status == "DISPATCHED" then dispatched = dispatched + 1 end
    end
    assert.equal(201, n)
    assert.equal(1, dispatched)
    local page = assert(client.busifavor.coupon_codes.page(id, { status = "DISPATCHED" }))
    assert.equal(1, page.total_count)
    local del, derr, dmeta = client.busifavor.coupon_codes.delete(id, "UP-0002")
    assert.is_nil(derr)
    assert.equal(id, del.stock_id)
    assert.equal(32, #dmeta.delete_request_no)
    local _, gerr = client.busifavor.coupon_codes.get(id, "UP-0002")
    assert.equal(404, gerr.status)
    local _, e2 = client.busifavor.coupon_codes.delete(id, "UP-0001")
    assert.equal("INVALID_REQUEST", e2.code)
    assert.truthy(e2.delete_request_no)
    assert.equal("UP-0003", claim(id).coupon_code) -- the deleted code is never issued
  end)

  it("a WECHATPAY_MODE stock refuses uploads", function()
    local id = create("WECHATPAY_MODE")
    local _, err = client.busifavor.coupon_codes.upload(id, { coupon_code_list = { "A1" } })
    assert.equal("INVALID_REQUEST", err.code)
    assert.truthy(err.upload_request_no)
  end)

  it("refuses bad uploads without sending", function()
    local many = {}
    for i = 1, 201 do many[i] = "C" .. i end
    refused("coupon_code_list", function()
      return client.busifavor.coupon_codes.upload("123", { coupon_code_list = many })
    end)
    refused("coupon_code_list", function()
      return client.busifavor.coupon_codes.upload("123", { coupon_code_list = {} })
    end)
    refused("coupon_code_list[1]", function()
      return client.busifavor.coupon_codes.upload("123", { coupon_code_list = { string.rep("x", 33) } })
    end)
    refused("stock_id", function()
      return client.busifavor.coupon_codes.upload("..", { coupon_code_list = { "a" } })
    end)
    refused("coupon_code", function() return client.busifavor.coupon_codes.get("123", string.rep("x", 129)) end)
    refused("status", function() return client.busifavor.coupon_codes.page("123", { status = "USED" }) end)
    refused("delete_request_no", function()
      return client.busifavor.coupon_codes.delete("123", "a", { delete_request_no = "a\1" })
    end)
  end)
end)

describe("client.busifavor.coupons.associate / disassociate", function()
  it("links an unused coupon to an order and unlinks it", function()
    local id = create("WECHATPAY_MODE")
    local code = claim(id).coupon_code
    local p = { stock_id = id, coupon_code = code, out_trade_no = "trade-1", out_request_no = "assoc-1" }
    local res, err, meta = client.busifavor.coupons.associate(p)
    assert.is_nil(err)
    assert.truthy(res.wechatpay_associate_time)
    assert.equal("assoc-1", meta.out_request_no)
    assert.equal("trade-1", assert(client.busifavor.coupons.get(OPENID, code, APPID)).associate_out_trade_no)
    local other = { stock_id = id, coupon_code = code, out_trade_no = "trade-2" }
    local _, oerr = client.busifavor.coupons.associate(other)
    assert.equal("INVALID_REQUEST", oerr.code)
    local _, werr = client.busifavor.coupons.disassociate(other)
    assert.equal("INVALID_REQUEST", werr.code)
    local back = assert(client.busifavor.coupons.disassociate{ stock_id = id, coupon_code = code,
      out_trade_no = "trade-1" })
    assert.truthy(back.wechatpay_disassociate_time)
    assert.is_nil(assert(client.busifavor.coupons.get(OPENID, code, APPID)).associate_out_trade_no)
  end)

  it("refuses an out_request_no outside the stated charset without sending", function()
    refused("out_request_no", function()
      return client.busifavor.coupons.associate{ stock_id = "1", coupon_code = "c", out_trade_no = "t",
        out_request_no = "ORD:1" }
    end)
    refused("out_trade_no", function()
      return client.busifavor.coupons.disassociate{ stock_id = "1", coupon_code = "c" }
    end)
  end)
end)

describe("client.busifavor.subsidy", function()
  local function pay_params(id, code, over)
    local p = { stock_id = id, coupon_code = code, transaction_id = "4200000000000000000000000001",
      payer_merchant = sb.config.mchid, payee_merchant = sb.config.mchid, amount = 300,
      description = "补差" }
    for k, v in pairs(over or {}) do p[k] = v end
    return p
  end

  it("pays once per out_subsidy_no, lists, queries and returns at most what was paid", function()
    local id = create("WECHATPAY_MODE")
    local code = claim(id).coupon_code
    local p = pay_params(id, code, { out_subsidy_no = "SUB.2024/05/20-1" })
    local r, err, meta = client.busifavor.subsidy.pay(p)
    assert.is_nil(err)
    assert.equal("SUB.2024/05/20-1", meta.out_subsidy_no)
    assert.equal("PAY_RECEIPT_SUCCESS", r.status)
    assert.same(r, assert(client.busifavor.subsidy.pay(p))) -- replayed, not paid again
    local _, cerr = client.busifavor.subsidy.pay(pay_params(id, code, { out_subsidy_no = p.out_subsidy_no,
      amount = 301 }))
    assert.equal("RESOURCE_ALREADY_EXISTS", cerr.code)
    assert.equal(p.out_subsidy_no, cerr.out_subsidy_no)
    local list = assert(client.busifavor.subsidy.pay_receipts{ stock_id = id, coupon_code = code })
    assert.equal(1, list.total_count)
    assert.equal(r.subsidy_receipt_id, list.data[1].subsidy_receipt_id)
    assert.equal(300, assert(client.busifavor.subsidy.pay_receipt(r.subsidy_receipt_id)).amount)
    local back_p = pay_params(id, code, { refund_id = "50000000000000000001", amount = 200 })
    local back, berr, bmeta = client.busifavor.subsidy.return_pay(back_p)
    assert.is_nil(berr)
    assert.equal(32, #bmeta.out_subsidy_return_no)
    assert.equal("RETURN_RECEIPT_SUCCESS", back.status)
    assert.equal(r.subsidy_receipt_id, back.subsidy_receipt_id)
    assert.equal(200, assert(client.busifavor.subsidy.return_receipt(back.subsidy_return_receipt_id)).amount)
    local after = assert(client.busifavor.subsidy.pay_receipt(r.subsidy_receipt_id))
    assert.equal("PAY_RECEIPT_PARTIAL_RETURN", after.status)
    local _, over = client.busifavor.subsidy.return_pay(pay_params(id, code, { refund_id = "5", amount = 101 }))
    assert.equal("INVALID_REQUEST", over.code)
  end)

  it("a dropped answer after processing is retried under the same out_subsidy_no: paid once", function()
    local id = create("WECHATPAY_MODE")
    local code = claim(id).coupon_code
    sb:fault{ fault = "drop_after", count = 1, path = "/v3/marketing/busifavor/subsidy/pay-receipts", method = "POST" }
    local r, err, meta = retrying.busifavor.subsidy.pay(pay_params(id, code))
    assert.is_nil(err)
    assert.equal(2, meta.attempts)
    local list = assert(client.busifavor.subsidy.pay_receipts{ stock_id = id, coupon_code = code })
    assert.equal(1, list.total_count)
    assert.equal(r.subsidy_receipt_id, list.data[1].subsidy_receipt_id)
  end)

  it("refuses bad input without sending", function()
    refused("amount", function() return client.busifavor.subsidy.pay(pay_params("1", "c", { amount = 1.5 })) end)
    refused("out_subsidy_return_no", function()
      return client.busifavor.subsidy.return_pay(pay_params("1", "c", { refund_id = "r",
        out_subsidy_return_no = "R:1" }))
    end)
    refused("refund_id", function() return client.busifavor.subsidy.return_pay(pay_params("1", "c")) end)
    refused("subsidy_receipt_id", function() return client.busifavor.subsidy.pay_receipt("..") end)
    refused("subsidy_return_receipt_id", function() return client.busifavor.subsidy.return_receipt("") end)
  end)
end)
