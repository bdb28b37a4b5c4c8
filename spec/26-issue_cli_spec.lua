-- `wxpay issue plugin|h5` run as a program against the sandbox's config (the sandbox then
-- accepts what it printed), doctor's apiv2_key check, and the apiv2_key searched for in
-- every output of the command (issue, doctor, stocks, a campaign and its journal file).
local h = require("spec.helpers")
local sandbox = require("spec.support.sandbox")
local cjson = require("cjson").new()

local APPID = "wxd678efh567hg6787"
local OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"

local sb, dir, config_file, stock_id
setup(function()
  sb = sandbox.start{ mode = "combined" }
  dir = h.tmpdir()
  config_file = dir .. "/config.json"
  h.write(config_file, cjson.encode(sb.config))
  local now = os.time()
  local function t(x) return os.date("!%Y-%m-%dT%H:%M:%S+08:00", x + 8 * 3600) end
  local client = assert(require("wxpay").new(sb.config))
  stock_id = assert(client.busifavor.stocks.create{
    stock_name = "满100减10元", goods_name = "全场通用", stock_type = "NORMAL", coupon_code_mode = "WECHATPAY_MODE",
    coupon_use_rule = {
      coupon_available_time = { available_begin_time = t(now - 60), available_end_time = t(now + 30 * 86400) },
      fixed_normal_coupon = { discount_amount = 1000, transaction_minimum = 10000 }, use_method = "OFF_LINE",
    },
    stock_send_rule = { max_coupons = 100, max_coupons_per_user = 5 },
  }).stock_id
  client.close()
end)
teardown(function()
  if sb then sb:stop() end
  h.cleanup()
end)

local outputs = {}
local function wxpay(args, config)
  local out, err, rc = require("spec.support.cli").run(dir, "--config " .. h.q(config or config_file) .. " " .. args)
  outputs[#outputs + 1] = out
  outputs[#outputs + 1] = err
  return out, err, rc
end

local function with_config(changes)
  local c = {}
  for k, v in pairs(sb.config) do c[k] = v end
  for k, v in pairs(changes) do c[k] = v or nil end
  local path = dir .. "/config-" .. #outputs .. ".json"
  h.write(path, cjson.encode(c))
  return path
end

describe("wxpay issue", function()
  it("plugin prints signed attributes the sandbox's plugin accepts", function()
    local out, err, rc = wxpay("issue plugin --stock " .. stock_id)
    assert.equal(0, rc, err)
    local attrs = cjson.decode(out)
    assert.equal(sb.config.mchid, attrs.send_coupon_merchant)
    assert.matches("^%w+$", attrs.send_coupon_params[1].out_request_no)
    local res = sb:control("POST", "/issue/plugin", { attributes = attrs, openid = OPENID, appid = APPID })
    assert.equal("SUCCESS", res.send_coupon_result[1].code)
  end)

  it("h5 prints a URL the sandbox's page accepts; --output json adds the out_request_no", function()
    local out, err, rc = wxpay("issue h5 --stock " .. stock_id .. " --openid " .. OPENID
      .. " --customize-send-time 2024-05-20T13:29:35+08:00 --output json")
    assert.equal(0, rc, err)
    local row = cjson.decode(out) -- one URL: one object
    assert.is_nil(row[1])
    assert.matches("^https://action%.weixin%.qq%.com/busifavor/getcouponinfo%?", row.url)
    assert.matches("%%2B08%%3A00", row.url)
    assert.matches("#wechat_pay&wechat_redirect$", row.url)
    local res = sb:control("POST", "/issue/h5", { url = row.url, appid = APPID })
    assert.equal("SUCCESS", res.send_coupon_result[1].code)
    assert.equal(row.out_request_no, res.send_coupon_result[1].out_request_no)
  end)

  it("refuses without apiv2_key (naming it), with bad input, and needs its options", function()
    local _, err, rc = wxpay("issue plugin --stock " .. stock_id, with_config{ apiv2_key = false })
    assert.equal(1, rc)
    assert.matches("apiv2_key", err)
    _, err, rc = wxpay("issue h5 --stock " .. stock_id .. " --openid " .. OPENID .. " --out-request-no " .. h.q("a|b"))
    assert.equal(1, rc)
    assert.matches("out_request_no", err)
    _, err, rc = wxpay("issue h5 --stock " .. stock_id)
    assert.equal(2, rc)
    assert.matches("%-%-openid", err)
    _, _, rc = wxpay("issue send --stock " .. stock_id)
    assert.equal(2, rc)
  end)

  it("doctor checks the apiv2_key's shape only, and says so", function()
    local out = wxpay("doctor")
    assert.matches("apiv2_key%s+32 characters", out)
    assert.matches("only WeChat's side can prove it right", out)
    out = wxpay("doctor", with_config{ apiv2_key = "short" })
    assert.matches("FAIL%s+apiv2_key", out)
    out = wxpay("doctor", with_config{ apiv2_key = sb.config.apiv3_key })
    assert.matches("same as apiv3_key", out)
  end)

  it("no output and no journal holds the apiv2_key", function()
    wxpay("stocks get --product busifavor " .. stock_id)
    wxpay("stocks get --product busifavor 1234567890123456")
    local plan = dir .. "/plan.csv"
    h.write(plan, "appid\n" .. APPID .. "\nwx1111111111111111\nnot-an-appid\n")
    local journal = dir .. "/journal.db"
    wxpay("campaign run " .. plan .. " --stock " .. stock_id .. " --business-type BUSIFAVOR_STOCK --journal "
      .. journal .. " --no-progress")
    wxpay("campaign status " .. journal)
    outputs[#outputs + 1] = h.read(journal)
    local key = sb.config.apiv2_key
    assert.equal(32, #key)
    assert.is_true(#outputs > 10)
    for _, text in ipairs(outputs) do
      assert.is_nil(text:find(key, 1, true), "the apiv2_key was printed")
      assert.is_nil(text:find(key:sub(1, 16), 1, true), "half of the apiv2_key was printed")
    end
  end)
end)
