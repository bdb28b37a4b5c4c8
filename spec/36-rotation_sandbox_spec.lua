-- Each key rotated mid-run against the sandbox over real HTTPS, the sandbox switching with
-- /_sandbox/rotate/…, the client following docs/rotation.md with client.reload: no call
-- fails and no callback is lost. WeChat Pay public key (public_key mode), APIv3 key
-- (certificates downloaded, callbacks from the sandbox), merchant API certificate.
local wxpay = require("wxpay")
local sandbox = require("spec.support.sandbox")
local listener = require("spec.support.listener")
local helpers = require("spec.helpers")

local ID2 = "PUB_KEY_ID_0114232134912410000000000000000002"
local NEW_APIV3 = "fedcba9876543210FEDCBA9876543210"
local LIST = { authorized_data = { business_type = "BUSIFAVOR_STOCK" } }

local other
setup(function() other = helpers.openssl_keypair(helpers.tmpdir(), "other") end)
teardown(function() helpers.cleanup() end)

local function copy(t, changes)
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  for k, v in pairs(changes or {}) do if v == false then out[k] = nil else out[k] = v end end
  return out
end

local function ok_call(c)
  local page, err, meta = c.partnerships.page(LIST)
  assert(page, tostring(err))
  return meta
end

-- Have sandbox `sb` send a callback and parse it with `c` as an app would.
local function callback_through(sb, c)
  local srv, url = listener.listen("https")
  local ok, n, err = pcall(function()
    local _, status = sb:control("POST", "/callbacks", { url = url, event_type = "COUPON.SEND",
      original_type = "coupon", resource = { coupon_code = "C1" }, max_attempts = 1 })
    assert.equal(200, status)
    return listener.receive(srv, c, listener.tls(sb))
  end)
  srv:close()
  assert(ok, n)
  return n, err
end

describe("rotating each key mid-run", function()
  it("WeChat Pay public key: add the new key, WeChat Pay switches, nothing fails", function()
    local sb = sandbox.start{ mode = "public_key", empty_list = 200 }
    local run_ok, run_err = pcall(function()
      local cfg = copy(sb.config)
      local c = assert(wxpay.new(cfg))
      assert.equal(cfg.wechatpay_public_key_id, ok_call(c).verified_by)
      -- 1. the new key next to the current one
      cfg.wechatpay_public_keys = { [ID2] = other.pub_pem }
      assert(c.reload(cfg))
      ok_call(c)
      -- WeChat Pay switches: answers and callbacks signed with the new key
      local _, status = sb:control("POST", "/rotate/public_key", { id = ID2, private_key = other.key_pem })
      assert.equal(200, status)
      assert.equal(ID2, ok_call(c).verified_by)
      local n, err = callback_through(sb, c)
      assert.is_nil(err)
      assert.equal("C1", n.resource_data.coupon_code)
      -- a client without the new key would have failed: the switch is real
      local stale = assert(wxpay.new(copy(sb.config)))
      local _, serr = stale.partnerships.page(LIST)
      assert.equal("signature", serr.kind)
    end)
    sb:stop()
    assert(run_ok, run_err)
  end)

  it("APIv3 key: the previous key accepted meanwhile; doctor's view of which key decrypted", function()
    local sb = sandbox.start{ mode = "certificate", empty_list = 200 }
    local run_ok, run_err = pcall(function()
      local old = sb.config.apiv3_key
      local cfg = copy(sb.config, { platform_certificate_files = false }) -- downloads its certificates
      local c = assert(wxpay.new(cfg))
      ok_call(c)
      assert.equal("apiv3_key", c.certificates.list()[1].decrypted_with)
      -- 1. new key configured, the old one accepted for two days
      cfg.apiv3_key, cfg.apiv3_key_previous = NEW_APIV3, old
      cfg.apiv3_key_previous_until = os.time() + 2 * 86400
      assert(c.reload(cfg))
      assert(c.certificates.refresh())
      assert.equal("apiv3_key_previous", c.certificates.list()[1].decrypted_with)
      local n, err = callback_through(sb, c) -- still encrypted with the old key
      assert.is_nil(err)
      assert.equal("C1", n.resource_data.coupon_code)
      -- `wxpay doctor` says which key decrypted the platform certificates
      local dir = helpers.tmpdir()
      helpers.write(dir .. "/config.json", require("cjson").encode(cfg))
      local out = require("spec.support.cli").run(dir, "--config " .. dir .. "/config.json doctor")
      assert.truthy(out:find("apiv3_key_previous (the previous key) decrypted the platform certificates", 1, true),
        out)
      assert.is_nil(out:find(NEW_APIV3, 1, true))
      assert.is_nil(out:find(old, 1, true))
      -- 2. the merchant sets the new key: WeChat Pay encrypts with it
      local _, status = sb:control("POST", "/rotate/apiv3_key", { apiv3_key = NEW_APIV3 })
      assert.equal(200, status)
      assert(c.certificates.refresh())
      assert.equal("apiv3_key", c.certificates.list()[1].decrypted_with)
      n, err = callback_through(sb, c)
      assert.is_nil(err)
      assert.equal("C1", n.resource_data.coupon_code)
      ok_call(c)
    end)
    sb:stop()
    assert(run_ok, run_err)
  end)

  it("merchant API certificate: both accepted while the clients reload, then the old one retired", function()
    local sb = sandbox.start{ mode = "combined", empty_list = 200 }
    local run_ok, run_err = pcall(function()
      local c, untouched = assert(wxpay.new(copy(sb.config))), assert(wxpay.new(copy(sb.config)))
      ok_call(c)
      local _, status = sb:control("POST", "/rotate/merchant_certificate", { certificate = other.cert_pem })
      assert.equal(200, status)
      local new = copy(sb.config, { private_key_file = other.key, serial_no = other.serial,
        merchant_certificate_file = other.cert })
      -- a refused reload (a serial of another certificate) keeps the old, working settings
      local bad = copy(new, { serial_no = "0123456789ABCDEF" })
      local rok, rerr = c.reload(bad)
      assert.is_nil(rok)
      assert.equal("serial_no", rerr.field)
      ok_call(c)
      assert(c.reload(new))
      ok_call(c)
      ok_call(untouched) -- not reloaded yet: still accepted
      sb:control("POST", "/rotate/merchant_certificate", { certificate = other.cert_pem, retire_old = true })
      ok_call(c)
      local _, err = untouched.partnerships.page(LIST)
      assert.same({ "api", 401 }, { err.kind, err.status })
    end)
    sb:stop()
    assert(run_ok, run_err)
  end)
end)
