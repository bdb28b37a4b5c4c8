-- examples/openresty's 发券 endpoint in a real nginx against the sandbox: the logged-in user
-- gets signed plugin attributes with a request number made and bound on the server, asking
-- again gives the same number (DUPREQUEST), and a coupon claimed by another user with that
-- user's captured attributes is deactivated when its COUPON.SEND arrives.
local cjson = require("cjson").new()
local wxpay = require("wxpay")
local sandbox = require("spec.support.sandbox")
local nginx_support = require("spec.support.nginx")
local h = require("spec.helpers")

local ROOT = io.popen("pwd"):read("*l")
local APPID = "wxd678efh567hg6787"
local ALICE, MALLORY = "oAlice000000000000000000001", "oMallory00000000000000000001"

local sb, nginx, client, config_file

local function json(method, url, value)
  local status, text = nginx_support.http(method, url, value and cjson.encode(value))
  local ok, obj = pcall(cjson.decode, text or "")
  return status, ok and obj or text
end

setup(function()
  sb = sandbox.start{ mode = "combined" }
  client = assert(wxpay.new(sb.config))
  local cfg = {}
  for k, v in pairs(sb.config) do cfg[k] = v end
  cfg.base_url = cfg.base_url:gsub("^https://127%.0%.0%.1:", "https://localhost:")
  config_file = os.tmpname()
  h.write(config_file, cjson.encode{ config = cfg })
  local conf = h.read(ROOT .. "/examples/openresty/nginx.conf"):gsub("{{root}}", ROOT)
    :gsub("{{ca_file}}", sb.config.ca_file)
  nginx = nginx_support.start(conf, "WXPAY_CONFIG=" .. h.q(config_file) .. " WXPAY_MINIAPP_APPID=" .. APPID)
  for _ = 1, 100 do
    if nginx_support.http("GET", nginx.url .. "/healthz") == 200 then break end
    os.execute("sleep 0.05")
  end
end)
teardown(function()
  if nginx then nginx:stop() end
  if sb then sb:stop() end
  if config_file then os.remove(config_file) end
end)

local function rfc3339(t)
  return os.date("!%Y-%m-%dT%H:%M:%S+08:00", t + 8 * 3600)
end

describe("examples/openresty 发券", function()
  it("binds out_request_no to the logged-in user and deactivates a coupon another user took", function()
    local now = os.time()
    local stock_id = assert(client.busifavor.stocks.create{
      stock_name = "开业券", goods_name = "全场通用", stock_type = "NORMAL", coupon_code_mode = "WECHATPAY_MODE",
      coupon_use_rule = {
        coupon_available_time = { available_begin_time = rfc3339(now - 60), available_end_time = rfc3339(now + 86400) },
        fixed_normal_coupon = { discount_amount = 500, transaction_minimum = 5000 }, use_method = "OFF_LINE",
      },
      stock_send_rule = { max_coupons = 100, max_coupons_per_user = 3 },
      notify_config = { notify_appid = APPID },
    }).stock_id
    -- The example listens on plain http: the sandbox takes that for loopback hosts.
    assert(client.request{ method = "POST", path = "/v3/marketing/busifavor/callbacks",
      body = { notify_url = nginx.url .. "/wxpay/notify" } })

    local status = json("POST", nginx.url .. "/coupons/send-params", { session = "nobody", stock_ids = { stock_id } })
    assert.equal(401, status)
    assert.equal(200, (json("POST", nginx.url .. "/admin/sessions", { session = "s-alice", openid = ALICE })))
    local attrs
    status, attrs = json("POST", nginx.url .. "/coupons/send-params", { session = "s-alice", stock_ids = { stock_id } })
    assert.equal(200, status)
    assert.equal(sb.config.mchid, attrs.send_coupon_merchant)
    local no = attrs.send_coupon_params[1].out_request_no

    local function tap(a, openid)
      local res = sb:control("POST", "/issue/plugin", { attributes = a, openid = openid, appid = APPID })
      return res.send_coupon_result[1]
    end
    local mine = tap(attrs, ALICE)
    assert.equal("SUCCESS", mine.code)

    -- Asking again: the same number, so a second tap gives the same coupon.
    local _, again = json("POST", nginx.url .. "/coupons/send-params",
      { session = "s-alice", stock_ids = { stock_id } })
    assert.equal(no, again.send_coupon_params[1].out_request_no)
    assert.equal("DUPREQUEST", tap(again, ALICE).code)

    -- Mallory replays Alice's captured attributes: WeChat accepts them once per user...
    local stolen = tap(attrs, MALLORY)
    assert.equal("SUCCESS", stolen.code)
    -- ...and the COUPON.SEND check deactivates that coupon.
    -- (The check runs in nginx after the callback: wait for it, longer under valgrind or ASan.)
    local slow = os.getenv("WXPAY_UNDER_VALGRIND") or os.getenv("WXPAY_UNDER_SANITIZER")
    local state
    for _ = 1, slow and 2000 or 400 do
      local c = assert(client.busifavor.coupons.get(MALLORY, stolen.coupon_code, APPID))
      state = c.coupon_state
      if state == "DEACTIVATED" then break end
      os.execute("sleep 0.05")
    end
    assert.equal("DEACTIVATED", state)
    assert.equal("SENDED", assert(client.busifavor.coupons.get(ALICE, mine.coupon_code, APPID)).coupon_state)
    assert.same({}, nginx_support.bad_log_lines(nginx:log()))
    assert.truthy(nginx:log():find("claimed by another user", 1, true))
  end)

  it("binds numbers for at most 50 stocks per user, and none for a malformed stock id", function()
    -- Each binding lives in the shared dict for days: unbounded, one user could fill it and
    -- push out other users' bindings (a new number for a stock is a second coupon).
    assert.equal(200, (json("POST", nginx.url .. "/admin/sessions", { session = "s-bob", openid = "oBob01" })))
    local function ask(ids)
      return json("POST", nginx.url .. "/coupons/send-params", { session = "s-bob", stock_ids = ids })
    end
    local status, body = ask{ "12345 67" }
    assert.equal(400, status)
    assert.matches("stock_id", cjson.encode(body))
    for batch = 0, 4 do
      local ids = {}
      for i = 1, 10 do ids[i] = string.format("99%06d", batch * 10 + i) end
      status = ask(ids)
      assert.equal(200, status)
    end
    status, body = ask{ "99000051" }
    assert.equal(429, status)
    assert.matches("50 stocks", body.error)
    status = ask{ "99000007" } -- a stock already bound still answers
    assert.equal(200, status)
  end)
end)
