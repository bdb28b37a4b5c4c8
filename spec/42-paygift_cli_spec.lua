-- `wxpay paygift create|get|list|terminate|merchants`, run as a program against the real
-- sandbox: journaled writes (a rerun repeats the request number and makes nothing twice),
-- the Chinese list filter, partial success of merchants add, a repeated terminate.

local h = require("spec.helpers")
local sandbox = require("spec.support.sandbox")
local cjson = require("cjson").new()

local sb, dir, config_file, stock_id
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

local function rfc3339(t)
  return os.date("!%Y-%m-%dT%H:%M:%S+08:00", t + 8 * 3600)
end

local NOW = os.time()

local function stock()
  local path = dir .. "/stock.json"
  h.write(path, cjson.encode{
    stock_name = "满100送10元", goods_name = "全场通用", stock_type = "NORMAL", coupon_code_mode = "WECHATPAY_MODE",
    coupon_use_rule = {
      coupon_available_time = { available_begin_time = rfc3339(NOW - 3600),
                                available_end_time = rfc3339(NOW + 40 * 86400) },
      fixed_normal_coupon = { discount_amount = 1000, transaction_minimum = 5000 }, use_method = "OFF_LINE",
    },
    stock_send_rule = { max_coupons = 100, max_coupons_per_user = 2 },
  })
  local out, err, rc = wxpay("stocks create --product busifavor --output json " .. h.q(path))
  assert(rc == 0, err)
  return cjson.decode(out).stock_id
end

local function activity_file(name, activity_name)
  local path = dir .. "/" .. name .. ".json"
  h.write(path, cjson.encode{
    activity_base_info = { activity_name = activity_name or "五月回馈", activity_second_title = "满100送券",
      merchant_logo_url = "https://wxpaylogo.qpic.cn/wxpaylogo/logo/0", begin_time = rfc3339(NOW - 60),
      end_time = rfc3339(NOW + 30 * 86400), delivery_purpose = "OFF_LINE_PAY" },
    award_send_rule = { transaction_amount_minimum = 10000, send_content = "SINGLE_COUPON",
      award_list = { { stock_id = stock_id, original_image_url = "https://wxpaylogo.qpic.cn/wxpaylogo/big/0" } } },
  })
  return path
end

local function count_activities()
  local out, err, rc = wxpay("paygift list --output json")
  assert(rc == 0, err)
  return #cjson.decode(out)
end

describe("wxpay paygift", function()
  it("create --journal: a rerun makes no second activity; get and list show it", function()
    stock_id = stock()
    local file, journal = activity_file("a1"), dir .. "/pg.db"
    local out, err, rc = wxpay("paygift create --output json --journal " .. h.q(journal) .. " " .. h.q(file))
    assert.equal(0, rc, err)
    local made = cjson.decode(out) -- one activity: one object
    assert.is_nil(made[1])
    assert.matches("^%d+$", made.activity_id)
    assert.equal(32, #made.out_request_no)
    out, err, rc = wxpay("paygift create --output json --journal " .. h.q(journal) .. " " .. h.q(file))
    assert.equal(0, rc, err)
    assert.matches("already created", err)
    assert.same({ made.activity_id, made.out_request_no },
      { cjson.decode(out).activity_id, cjson.decode(out).out_request_no })
    assert.equal(1, count_activities())
    out, err, rc = wxpay("paygift get --output csv " .. made.activity_id)
    assert.equal(0, rc, err)
    assert.matches("ONGOING_ACT_STATUS", out)
    assert.matches("五月回馈", out)
    out, err, rc = wxpay("paygift get --output json " .. made.activity_id)
    assert.equal(0, rc, err)
    assert.equal(made.activity_id, cjson.decode(out).activity_id) -- one activity: one object
  end)

  it("list filters by a Chinese name", function()
    local _, err, rc = wxpay("paygift create " .. h.q(activity_file("a2", "良品铺子周年")))
    assert.equal(0, rc, err)
    local out
    out, err, rc = wxpay("paygift list --output json --activity-name 良品铺子")
    assert.equal(0, rc, err)
    local rows = cjson.decode(out)
    assert.equal(1, #rows)
    assert.equal("良品铺子周年", rows[1].activity_base_info.activity_name)
  end)

  it("merchants add reports refusals as rows; terminate twice succeeds", function()
    local out, err, rc = wxpay("paygift create --output json " .. h.q(activity_file("a3")))
    assert.equal(0, rc, err)
    local id = cjson.decode(out).activity_id
    local journal = dir .. "/m.db"
    out, err, rc = wxpay("paygift merchants add " .. id .. " " .. sb.config.mchid .. ",1800000001 --output csv"
      .. " --journal " .. h.q(journal))
    assert.equal(0, rc, err)
    assert.matches(sb.config.mchid .. ",added", out)
    assert.matches("1800000001,refused,商户与活动创建方不具备父子关系", out)
    out, err, rc = wxpay("paygift merchants list " .. id .. " --output csv")
    assert.equal(0, rc, err)
    assert.matches(sb.config.mchid, out)
    local _
    _, err, rc = wxpay("paygift terminate " .. id)
    assert.equal(0, rc, err)
    out, err, rc = wxpay("paygift terminate " .. id .. " --output csv")
    assert.equal(0, rc, err)
    assert.matches(id, out)
    out, err, rc = wxpay("paygift terminate " .. id .. " --output json")
    assert.equal(0, rc, err)
    assert.equal(id, cjson.decode(out).activity_id)
    _, err, rc = wxpay("paygift terminate 99999999")
    assert.equal(1, rc)
    assert.matches("RESOURCE_NOT_EXISTS", err)
    _, _, rc = wxpay("paygift frobnicate")
    assert.equal(2, rc)
  end)
end)
