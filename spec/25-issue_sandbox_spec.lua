-- 发券 end to end against the sandbox over HTTPS: create a 商家券 stock, grant it, issue it
-- through the plugin, the H5 page and wx.addCard (each signed by client.issue and checked
-- by the sandbox's own verifier), COUPON.SEND with the channel's send_channel, a repeated
-- issue answering DUPREQUEST, the jump code decrypted and the coupon redeemed; what the
-- sandbox refuses and the rule it names; the apiv2_key in no error, log line or journal.
local wxpay = require("wxpay")
local sandbox = require("spec.support.sandbox")
local listener = require("spec.support.listener")
local h = require("spec.helpers")

local APPID = "wxd678efh567hg6787"
local OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
local PARTNER = "1900000109"

local sb, client, logged
setup(function()
  sb = sandbox.start{ mode = "combined" }
  local cfg = {}
  for k, v in pairs(sb.config) do cfg[k] = v end
  logged = {}
  cfg.max_retries = 0
  cfg.logger = function(level, message, fields)
    logged[#logged + 1] = tostring(level) .. " " .. tostring(message) .. " " .. require("cjson").encode(fields or {})
  end
  client = assert(wxpay.new(cfg))
end)
teardown(function()
  if sb then sb:stop() end
  h.cleanup()
end)
before_each(function() sb:reset() end)

local function rfc3339(t)
  return os.date("!%Y-%m-%dT%H:%M:%S+08:00", t + 8 * 3600)
end

local serial = 0
local function create_stock(over)
  serial = serial + 1
  local now = os.time()
  local p = {
    stock_name = "满100减10元", goods_name = "全场通用", stock_type = "NORMAL",
    coupon_code_mode = "WECHATPAY_MODE", out_request_no = "iss25-" .. serial .. "-" .. now,
    coupon_use_rule = {
      coupon_available_time = { available_begin_time = rfc3339(now - 60),
                                available_end_time = rfc3339(now + 30 * 86400) },
      fixed_normal_coupon = { discount_amount = 1000, transaction_minimum = 10000 },
      use_method = "MINI_PROGRAMS", mini_programs_appid = APPID, mini_programs_path = "pages/use/index",
    },
    stock_send_rule = { max_coupons = 100, max_coupons_per_user = 2 },
    notify_config = { notify_appid = APPID },
  }
  for k, v in pairs(over or {}) do p[k] = v end
  local stock, err = client.busifavor.stocks.create(p)
  assert.is_nil(err)
  return stock.stock_id
end

local function plugin(attrs, openid)
  return sb:control("POST", "/issue/plugin", { attributes = attrs, openid = openid or OPENID, appid = APPID })
end

describe("发券 in the sandbox", function()
  it("create → grant → issue (plugin, H5, JSAPI) → COUPON.SEND → jump code → redeem", function()
    local srv, url = listener.listen("https")
    local ok, failure = pcall(function()
      local stock_id = create_stock()
      assert(client.busifavor.callbacks.set{ notify_url = url })
      assert(client.partnerships.build{ partner = { type = "APPID", appid = APPID },
        authorized_data = { business_type = "BUSIFAVOR_STOCK", stock_id = stock_id } })

      -- The plugin: one coupon, then the same out_request_no again.
      local attrs, err, meta = client.issue.plugin_params{ send_coupon_params = { { stock_id = stock_id } } }
      assert.is_nil(err)
      assert.equal(sb.config.mchid, attrs.send_coupon_merchant)
      local res, status = plugin(attrs)
      assert.equal(200, status)
      assert.equal("OK", res.errcode)
      local first = res.send_coupon_result[1]
      assert.equal("SUCCESS", first.code)
      assert.equal(meta.out_request_nos[1], first.out_request_no)
      local n = listener.receive(srv, client, listener.tls(sb))
      local event = assert(client.busifavor.send_event(n))
      assert.equal("BUSICOUPON_SEND_CHANNEL_MINIAPP", event.send_channel)
      assert.equal(first.coupon_code, event.coupon_code)
      assert.equal(sb.config.mchid, event.send_merchant)

      res = plugin(attrs)
      assert.equal("DUPREQUEST", res.send_coupon_result[1].code)
      assert.equal(first.coupon_code, res.send_coupon_result[1].coupon_code)

      -- H5: a second coupon for the same user, then the per-user limit (2) is reached.
      local h5, herr = client.issue.h5_url{ stock_id = stock_id, open_id = OPENID }
      assert.is_nil(herr)
      res, status = sb:control("POST", "/issue/h5", { url = h5, appid = APPID })
      assert.equal(200, status)
      assert.equal("SUCCESS", res.send_coupon_result[1].code)
      n = listener.receive(srv, client, listener.tls(sb))
      assert.equal("BUSICOUPON_SEND_CHANNEL_H5", assert(client.busifavor.send_event(n)).send_channel)
      local cards = assert(client.issue.jsapi_cards{ { stock_id = stock_id } })
      res = sb:control("POST", "/issue/jsapi", { card_list = cards, openid = OPENID, appid = APPID })
      assert.equal("MAXQUOTA", res.send_coupon_result[1].code)
      -- Another user through wx.addCard.
      res = sb:control("POST", "/issue/jsapi", { card_list = cards, openid = OPENID .. "X", appid = APPID })
      assert.equal("SUCCESS", res.send_coupon_result[1].code)
      n = listener.receive(srv, client, listener.tls(sb))
      assert.equal("BUSICOUPON_SEND_CHANNEL_JSAPI", assert(client.busifavor.send_event(n)).send_channel)

      -- Nothing issued twice: the user holds exactly the two coupons.
      local held = {}
      for c in client.busifavor.coupons.list(OPENID, { appid = APPID }) do held[#held + 1] = c.coupon_code end
      assert.equal(2, #held)

      -- The user taps the first coupon: the jump code decrypts to it, and it is redeemed.
      local jump = sb:control("POST", "/busifavor/jump_code", { coupon_code = first.coupon_code })
      local q = {}
      for k, v in jump.query:gmatch("([^&=]+)=([^&]*)") do q[k] = v end
      assert.matches("%%", q.ciphertext .. "%") -- percent-encoded as in the path
      local code, jerr = client.busifavor.decrypt_jump_code(q)
      assert.is_nil(jerr)
      assert.equal(first.coupon_code, code)
      local used = assert(client.busifavor.coupons.use{ coupon_code = code, appid = APPID,
        use_time = rfc3339(os.time()), stock_id = stock_id })
      assert.equal(OPENID, used.openid)
    end)
    srv:close()
    assert(ok, failure)
  end)

  it("refuses a tampered jump code with a signature error", function()
    local stock_id = create_stock()
    local attrs = assert(client.issue.plugin_params{ send_coupon_params = { { stock_id = stock_id } } })
    local coupon = plugin(attrs).send_coupon_result[1].coupon_code
    local jump = sb:control("POST", "/busifavor/jump_code", { coupon_code = coupon })
    local ct = jump.ciphertext
    local tampered = (ct:sub(1, 1) == "A" and "B" or "A") .. ct:sub(2)
    local code, err = client.busifavor.decrypt_jump_code{ ciphertext = tampered, nonce = jump.nonce }
    assert.is_nil(code)
    assert.equal("signature", err.kind)
    assert.equal("decrypt", err.check)
    assert.is_nil(tostring(err):find(coupon, 1, true))
  end)

  describe("refuses a bad signature and names the rule", function()
    local stock_id, attrs
    before_each(function()
      stock_id = create_stock()
      attrs = assert(client.issue.plugin_params{ send_coupon_params = {
        { stock_id = stock_id, out_request_no = "1900|x*1", customize_send_time = rfc3339(os.time()) } } })
    end)
    local function refused(a, rule)
      local res, status = plugin(a)
      assert.equal(400, status)
      assert.equal("SIGN_ERROR", res.errcode)
      assert.equal(rule, res.rule)
      assert.is_string(res.msg)
      return res
    end
    local function resign(params, key)
      return assert(wxpay.sign_v2(params, key))
    end
    local function flat(over)
      local p = { send_coupon_merchant = attrs.send_coupon_merchant }
      for k, v in pairs(attrs.send_coupon_params[1]) do p[k .. "0"] = v end
      for k, v in pairs(over or {}) do p[k] = v or nil end
      return p
    end

    it("sign_type sent or signed", function()
      local a = { send_coupon_params = attrs.send_coupon_params, send_coupon_merchant = attrs.send_coupon_merchant,
                  sign = attrs.sign, sign_type = "HMAC-SHA256" }
      refused(a, "sign_type")
      a.sign_type = nil
      a.sign = resign(flat{ sign_type = "HMAC-SHA256" }, sb.config.apiv2_key)
      refused(a, "sign_type")
    end)
    it("the APIv3 key, another merchant's key", function()
      local a = { send_coupon_params = attrs.send_coupon_params, send_coupon_merchant = attrs.send_coupon_merchant }
      a.sign = resign(flat(), sb.config.apiv3_key)
      refused(a, "key")
      a.sign = resign(flat(), "WECHATPAY_TEST_APIV2_KEY_32BYTES")
      assert.matches("send_coupon_merchant", refused(a, "mismatch").msg)
    end)
    it("values encoded, a field missing or added, lower-case hex", function()
      local a = { send_coupon_params = attrs.send_coupon_params, send_coupon_merchant = attrs.send_coupon_merchant }
      local enc = flat()
      for k, v in pairs(enc) do
        enc[k] = v:gsub("[^%w]", function(c) return string.format("%%%02X", c:byte()) end)
      end
      a.sign = resign(enc, sb.config.apiv2_key)
      refused(a, "encoding")
      a.sign = resign(flat{ customize_send_time0 = false }, sb.config.apiv2_key)
      assert.matches("customize_send_time0", refused(a, "missing").msg)
      a.sign = resign(flat{ openid = OPENID }, sb.config.apiv2_key)
      refused(a, "added")
      a.sign = attrs.sign:lower()
      refused(a, "case")
    end)
    it("an H5 URL with a raw + or without its fragment", function()
      local url = assert(client.issue.h5_url{ stock_id = stock_id, open_id = OPENID,
        customize_send_time = rfc3339(os.time()) })
      local res, status = sb:control("POST", "/issue/h5", { url = url:gsub("%%2B", "+"), appid = APPID })
      assert.equal(400, status)
      assert.equal("url_encoding", res.rule)
      res = sb:control("POST", "/issue/h5", { url = url:gsub("#.*$", ""), appid = APPID })
      assert.matches("268435461", res.msg)
      res = sb:control("POST", "/issue/h5", { url = url, appid = APPID, openid = "someone_else" })
      assert.equal("USER_NOT_EXISTS", res.errcode)
    end)
  end)

  it("a partner merchant issues with its own APIv2 key only once the stock is granted to it", function()
    local stock_id = create_stock()
    local key = sb:control("GET", "/issue/keys?mchid=" .. PARTNER).apiv2_key
    assert.equal(32, #key)
    local cfg = {}
    for k, v in pairs(sb.config) do cfg[k] = v end
    cfg.apiv2_key = key
    local partner_client = assert(wxpay.new(cfg)) -- signs only: the mchid is not used to call
    local attrs = assert(partner_client.issue.plugin_params{ send_coupon_merchant = PARTNER,
      send_coupon_params = { { stock_id = stock_id } } })
    assert.equal("FAILED", plugin(attrs).send_coupon_result[1].code)
    assert(client.partnerships.build{ partner = { type = "MERCHANT", merchant_id = PARTNER },
      authorized_data = { business_type = "BUSIFAVOR_STOCK", stock_id = stock_id } })
    assert.equal("SUCCESS", plugin(attrs).send_coupon_result[1].code)
    -- The 服务商 mistake: the creator's key for the partner's send_coupon_merchant.
    local wrong = assert(client.issue.plugin_params{ send_coupon_merchant = PARTNER,
      send_coupon_params = { { stock_id = stock_id } } })
    local res = plugin(wrong)
    assert.equal("key", res.rule)
  end)

  it("result codes: SUCCESS and FAILED (unknown stock) in one call, then NOTENOUGH", function()
    local stock_id = create_stock{ stock_send_rule = { max_coupons = 1, max_coupons_per_user = 1 } }
    local attrs = assert(client.issue.plugin_params{ send_coupon_params = {
      { stock_id = stock_id }, { stock_id = "1234567890123456" } } })
    local res = plugin(attrs)
    assert.equal("SUCCESS", res.send_coupon_result[1].code)
    assert.equal("FAILED", res.send_coupon_result[2].code)
    attrs = assert(client.issue.plugin_params{ send_coupon_params = { { stock_id = stock_id } } })
    assert.equal("NOTENOUGH", plugin(attrs, OPENID .. "2").send_coupon_result[1].code)
  end)

  it("a 代金券 through the plugin: NOTRUNNING until started, then SUCCESS, DUPREQUEST, MAXQUOTA", function()
    local now = os.time()
    local stock = assert(client.favor.stocks.create{
      stock_name = "满50减5", available_begin_time = rfc3339(now), available_end_time = rfc3339(now + 86400),
      stock_use_rule = { max_coupons = 5, max_amount = 2500, max_coupons_per_user = 1,
                         natural_person_limit = false, prevent_api_abuse = false },
      coupon_use_rule = { fixed_normal_coupon = { coupon_amount = 500, transaction_minimum = 5000 },
                          available_merchants = { sb.config.mchid } },
      no_cash = false, stock_type = "NORMAL",
    })
    local item = { stock_id = stock.stock_id, create_coupon_merchant = sb.config.mchid }
    local attrs = assert(client.issue.plugin_params{ send_coupon_params = { item } })
    assert.equal("NOTRUNNING", plugin(attrs).send_coupon_result[1].code)
    assert(client.favor.stocks.start(stock.stock_id))
    local first = plugin(attrs).send_coupon_result[1]
    assert.equal("SUCCESS", first.code)
    assert.matches("^%d+$", first.coupon_id or first.coupon_code)
    assert.equal("DUPREQUEST", plugin(attrs).send_coupon_result[1].code)
    local other = assert(client.issue.plugin_params{ send_coupon_params = { item } })
    assert.equal("MAXQUOTA", plugin(other).send_coupon_result[1].code)
    -- without create_coupon_merchant WeChat cannot tell whose 代金券 it is
    local bare = assert(client.issue.plugin_params{ send_coupon_params = { { stock_id = stock.stock_id } } })
    assert.equal("FAILED", plugin(bare, OPENID .. "3").send_coupon_result[1].code)
    local held = 0
    for _ in client.favor.coupons.list(OPENID, { appid = APPID, stock_id = stock.stock_id,
                                                  creator_mchid = sb.config.mchid }) do held = held + 1 end
    assert.equal(1, held)
  end)

  it("the apiv2_key appears in no error, log line or tostring", function()
    local key = sb.config.apiv2_key
    local stock_id = create_stock()
    local texts = { tostring(client) }
    local _, err = client.issue.plugin_params{ send_coupon_params = { { stock_id = stock_id, bogus = "x" } } }
    texts[#texts + 1] = tostring(err)
    _, err = client.issue.h5_url{ stock_id = stock_id, open_id = OPENID, out_request_no = "a|b" }
    texts[#texts + 1] = tostring(err)
    local cfg = {}
    for k, v in pairs(sb.config) do cfg[k] = v end
    cfg.apiv2_key = key .. "x"
    _, err = wxpay.new(cfg)
    texts[#texts + 1] = tostring(err)
    sb:fault{ fault = "500", count = 1 }
    _, err = client.busifavor.stocks.get(stock_id)
    texts[#texts + 1] = tostring(err)
    for _, line in ipairs(logged) do texts[#texts + 1] = line end
    for _, t in ipairs(texts) do assert.is_nil(t:find(key, 1, true), t) end
    assert.is_true(#logged > 0)
  end)
end)
