-- The key ring (docs/protocol.md#response-verification, #platform-certificates,
-- #migration): certificate download from nothing, rotation,
-- the unknown-serial refresh and its rate limit, combined and pure public-key modes, a
-- refused certificate download — against the sandbox over real HTTPS — plus the parts
-- that need a clock or coroutines (periodic refresh, expiry, one shared refresh) over the
-- fake transport.

local sandbox = require("spec.support.sandbox")
local F = require("spec.support.fake")
local core = require("wxpay.core")
local wxpay = require("wxpay")

local LIST = { authorized_data = { business_type = "BUSIFAVOR_STOCK" } }

local config_from = require("spec.helpers").config_from

local function count_certificate_calls(sb)
  local n = 0
  for _, r in ipairs(sb:requests()) do
    if r.target:find("^/v3/certificates") then n = n + 1 end
  end
  return n
end

local ONLY_APIV3 = { platform_certificate_files = false, wechatpay_public_key_file = false,
                     wechatpay_public_key_id = false }

describe("key ring against the sandbox (certificate mode)", function()
  local sb
  setup(function() sb = sandbox.start{ mode = "certificate", empty_list = 200 } end)
  teardown(function() sb:stop() end)
  before_each(function() sb:reset() end)

  it("downloads the certificates before the first request, once", function()
    local c = assert(wxpay.new(config_from(sb, ONLY_APIV3)))
    local page, err, meta = c.partnerships.page(LIST)
    assert.is_nil(err)
    assert.same({}, page.data)
    local info = sb:control("GET", "/info")
    assert.equal(info.platform_serial_no, meta.verified_by)
    local reqs = sb:requests()
    assert.equal(2, #reqs)
    assert.equal("/v3/certificates?algorithm_type=RSA", reqs[1].target)
    -- the request names the certificate it now trusts
    assert.equal(info.platform_serial_no, reqs[2].headers["wechatpay-serial"])
    local list = c.certificates.list()
    assert.equal(1, #list)
    assert.equal(info.platform_serial_no, list[1].serial_no)
    assert.equal("downloaded", list[1].source)
    assert.is_true(list[1].not_before < core.time() and core.time() < list[1].not_after)
    assert.truthy(c.partnerships.page(LIST))
    assert.equal(1, count_certificate_calls(sb))
  end)

  it("rides through a rotation mid-run: one download, no failed request", function()
    local c = assert(wxpay.new(config_from(sb, ONLY_APIV3)))
    for _ = 1, 3 do assert.truthy(c.partnerships.page(LIST)) end
    assert.equal(1, count_certificate_calls(sb))
    sb:control("POST", "/rotate", { to = "secondary" })
    local info = sb:control("GET", "/info")
    for _ = 1, 5 do
      local page, err, meta = c.partnerships.page(LIST)
      assert.is_nil(err)
      assert.truthy(page)
      assert.equal(info.platform2_serial_no, meta.verified_by)
    end
    assert.equal(2, count_certificate_calls(sb))
    local serials = {}
    for _, e in ipairs(c.certificates.list()) do serials[e.serial_no] = e.source end
    assert.same({ [info.platform_serial_no] = "downloaded", [info.platform2_serial_no] = "downloaded" }, serials)
  end)

  it("refreshes on an unknown serial at most once a minute", function()
    local mono = 1000
    local c = assert(wxpay.new(config_from(sb, { platform_certificate_files = false,
      wechatpay_public_key_file = false, wechatpay_public_key_id = false,
      monotonic = function() return mono end })))
    assert.truthy(c.partnerships.page(LIST)) -- first download (does not count toward the limit)
    -- Signing switches to a certificate the download does not list yet.
    sb:configure{ signing_certificate = "secondary" }
    local _, err = c.partnerships.page(LIST)
    assert.equal("signature", err.kind)
    assert.equal("serial", err.check)
    assert.equal(2, count_certificate_calls(sb)) -- one refresh for the unknown serial
    mono = mono + 30
    local _, err2 = c.partnerships.page(LIST)
    assert.equal("serial", err2.check)
    assert.equal(2, count_certificate_calls(sb)) -- within the minute: no download
    sb:configure{ advertised_certificates = { "primary", "secondary" } }
    mono = mono + 31
    local page, err3 = c.partnerships.page(LIST)
    assert.is_nil(err3)
    assert.truthy(page)
    assert.equal(3, count_certificate_calls(sb))
  end)

  it("refreshes periodically (certificate_refresh_interval)", function()
    local mono = 0
    local c = assert(wxpay.new(config_from(sb, { platform_certificate_files = false,
      wechatpay_public_key_file = false, wechatpay_public_key_id = false,
      certificate_refresh_interval = 600, monotonic = function() return mono end })))
    assert.truthy(c.partnerships.page(LIST))
    mono = 599
    assert.truthy(c.partnerships.page(LIST))
    assert.equal(1, count_certificate_calls(sb))
    mono = 600
    assert.truthy(c.partnerships.page(LIST))
    assert.equal(2, count_certificate_calls(sb))
  end)

  it("refuses a tampered certificate download and sends nothing else", function()
    sb:fault{ fault = "tamper", path = "/v3/certificates" }
    local c = assert(wxpay.new(config_from(sb, ONLY_APIV3)))
    local page, err = c.partnerships.page(LIST)
    assert.is_nil(page)
    -- Which byte the sandbox changes depends on its JSON key order: a signature, decryption
    -- or serial mismatch ("signature"), or a broken algorithm name ("decode").
    assert.truthy(err.kind == "signature" or err.kind == "decode", tostring(err))
    assert.matches("/v3/certificates", err.message, 1, true)
    local reqs = sb:requests()
    assert.equal(1, #reqs)
    assert.equal(0, #c.certificates.list())
  end)

  it("refuses a download signed by a certificate it does not contain", function()
    sb:configure{ signing_certificate = "secondary" } -- advertises only the primary
    local c = assert(wxpay.new(config_from(sb, ONLY_APIV3)))
    local _, err = c.certificates.refresh()
    assert.equal("signature", err.kind)
    assert.equal("serial", err.check)
    assert.equal(0, #c.certificates.list())
  end)

  it("refuses a download when the apiv3_key is wrong", function()
    local c = assert(wxpay.new(config_from(sb, { platform_certificate_files = false,
      wechatpay_public_key_file = false, wechatpay_public_key_id = false,
      apiv3_key = string.rep("k", 32) })))
    local _, err = c.certificates.refresh()
    assert.equal("signature", err.kind)
    assert.equal("decrypt", err.check)
  end)
end)

describe("key ring against the sandbox (combined mode)", function()
  local sb, info
  setup(function()
    sb = sandbox.start{ mode = "combined", empty_list = 200 }
    info = sb:control("GET", "/info")
  end)
  teardown(function() sb:stop() end)
  before_each(function() sb:reset() end)

  it("verifies answers signed by either key, chosen by the request's Wechatpay-Serial", function()
    -- Configured public key and platform certificate: nothing to download.
    local c = assert(wxpay.new(config_from(sb)))
    local _, err, meta = c.partnerships.page(LIST)
    assert.is_nil(err)
    assert.equal(info.wechatpay_public_key_id, meta.verified_by)
    local _, err2, meta2 = c.request{ method = "GET", path = "/v3/marketing/partnerships",
      query = { authorized_data = LIST.authorized_data }, wechatpay_serial = info.platform_serial_no }
    assert.is_nil(err2)
    assert.equal(info.platform_serial_no, meta2.verified_by)
    assert.equal(0, count_certificate_calls(sb))
    local sources = {}
    for _, e in ipairs(c.certificates.list()) do sources[#sources + 1] = e.source end
    assert.same({ "public_key", "configured" }, sources)
  end)

  it("downloads certificates when an answer names one it does not know (public key + apiv3_key)", function()
    local c = assert(wxpay.new(config_from(sb, { platform_certificate_files = false })))
    assert.truthy(c.partnerships.page(LIST))
    assert.equal(0, count_certificate_calls(sb))
    local page, err, meta = c.request{ method = "GET", path = "/v3/marketing/partnerships",
      query = { authorized_data = LIST.authorized_data }, headers = { ["wechatpay-serial"] = info.platform_serial_no } }
    assert.is_nil(err)
    assert.truthy(page)
    assert.equal(info.platform_serial_no, meta.verified_by)
    assert.equal(1, count_certificate_calls(sb))
    -- Once certificates are in use they are kept fresh; the public key stays the default.
    local _, _, meta3 = c.partnerships.page(LIST)
    assert.equal(info.wechatpay_public_key_id, meta3.verified_by)
    assert.equal(1, count_certificate_calls(sb))
  end)
end)

describe("key ring against the sandbox (public-key mode)", function()
  local sb
  setup(function() sb = sandbox.start{ mode = "public_key", empty_list = 200 } end)
  teardown(function() sb:stop() end)

  it("never calls /v3/certificates", function()
    sb:reset()
    local cfg = config_from(sb)
    assert.is_nil(cfg.platform_certificate_files)
    assert.truthy(cfg.apiv3_key) -- kept for callbacks; must not trigger a download
    local c = assert(wxpay.new(cfg))
    for _ = 1, 3 do assert.truthy(c.partnerships.page(LIST)) end
    local ct, serial = c.encrypt("13800138000")
    assert.truthy(ct)
    assert.equal(cfg.wechatpay_public_key_id, serial)
    local reqs = sb:requests()
    assert.equal(3, #reqs)
    for _, r in ipairs(reqs) do
      assert.is_nil(r.target:find("/v3/certificates", 1, true))
      assert.equal(cfg.wechatpay_public_key_id, r.headers["wechatpay-serial"])
    end
    local list = c.certificates.list()
    assert.equal(1, #list)
    assert.equal("public_key", list[1].source)
  end)
end)

describe("key ring policy (fake transport)", function()
  local k = F.keys()
  local only_apiv3 = F.ONLY_APIV3
  local certificates_response = F.certificates_response
  local old = { k.platform_old_cert, k.platform_old_serial }
  local new = { k.platform_new_cert, k.platform_new_serial }

  it("drops expired certificates from the ring and says so", function()
    local now = core.time()
    local t = F.transport(function()
      return F.response(200, "{}", { serial = k.platform_old_serial, timestamp = now })
    end)
    local c = assert(wxpay.new(F.config(t, { wechatpay_public_key = F.NIL, wechatpay_public_key_id = F.NIL,
      now = function() return now end })))
    assert.equal(2, #c.certificates.list())
    assert.truthy(c.request{ method = "GET", path = "/v3/x" })
    -- just past the old certificate's end: it has expired, the newer one (a year longer) not
    now = core.load_certificate(k.platform_old_cert):not_after() + 1
    assert.truthy(now < core.load_certificate(k.platform_new_cert):not_after())
    local list = c.certificates.list()
    assert.equal(1, #list)
    assert.equal(k.platform_new_serial, list[1].serial_no)
    local _, err = c.request{ method = "GET", path = "/v3/x" }
    assert.equal("serial", err.check)
    assert.truthy(err.message:find("expired", 1, true))
    -- and the request now names the remaining certificate
    assert.equal(k.platform_new_serial, t.calls[#t.calls].headers["Wechatpay-Serial"])
  end)

  it("matches serials whatever their leading zeros, in the list and in the headers", function()
    local t = F.transport(function(_, _, rec)
      if rec.target:find("^/v3/certificates") then
        -- the list names the serial with a leading zero byte, the answer's header without
        return certificates_response({ old, new }, k.platform_new_serial,
          function(e) e.serial_no = "00" .. e.serial_no:lower() end)
      end
      return F.response(200, '{"ok":true}', { serial = "000" .. k.platform_new_serial, signer = k.platform_new_serial })
    end)
    local c = assert(wxpay.new(F.config(t, { wechatpay_public_key = F.NIL, wechatpay_public_key_id = F.NIL,
      platform_certificates = F.NIL })))
    local data, err, meta = c.request{ method = "GET", path = "/v3/x" }
    assert.is_nil(err)
    assert.is_true(data.ok)
    assert.truthy(meta.verified_by)
  end)

  it("shares one download between coroutines that need it at the same time", function()
    local downloads = 0
    local t = F.transport(function(_, _, rec)
      if rec.target:find("^/v3/certificates") then
        downloads = downloads + 1
        coroutine.yield() -- the transfer is in flight; other coroutines run
        return certificates_response({ old, new }, k.platform_new_serial)
      end
      return F.response(200, '{"ok":true}', { serial = k.platform_new_serial })
    end)
    local c = assert(wxpay.new(F.config(t, { wechatpay_public_key = F.NIL, wechatpay_public_key_id = F.NIL,
      platform_certificates = F.NIL, sleep = function() coroutine.yield() end })))
    local results = {}
    local cos = {}
    for i = 1, 3 do
      cos[i] = coroutine.create(function()
        local data, err = c.request{ method = "GET", path = "/v3/x" .. i }
        results[i] = data and data.ok or tostring(err)
      end)
    end
    for _ = 1, 20 do
      for _, co in ipairs(cos) do
        if coroutine.status(co) == "suspended" then assert(coroutine.resume(co)) end
      end
    end
    assert.same({ true, true, true }, results)
    assert.equal(1, downloads)
    assert.equal(4, #t.calls)
  end)

  it("in combined mode the first download is not counted toward the one-a-minute limit", function()
    local served = { old }
    local answer_serial = k.platform_old_serial
    local t = F.transport(function(_, _, rec)
      if rec.target:find("^/v3/certificates") then return certificates_response(served, k.platform_old_serial) end
      return F.response(200, "{}", { serial = answer_serial })
    end)
    local c = assert(wxpay.new(F.config(t, { platform_certificates = F.NIL, monotonic = function() return 5 end })))
    assert.truthy(c.request{ method = "GET", path = "/v3/a" }) -- first download on the unknown serial
    assert.equal(2, #t.calls)
    served, answer_serial = { old, new }, k.platform_new_serial
    assert.truthy(c.request{ method = "GET", path = "/v3/b" }) -- same second: still allowed once
    assert.equal(4, #t.calls)
    answer_serial = "0BADC0FFEE"
    local _, err = c.request{ method = "GET", path = "/v3/c" }
    assert.equal("serial", err.check)
    assert.equal(5, #t.calls) -- now limited
  end)

  it("needs only the apiv3_key to start; a failed first download (retried like a GET) is the error", function()
    local t = F.transport(function() return F.error_response(500, "SYSTEM_ERROR", "x") end)
    local c = assert(wxpay.new(F.config(t, only_apiv3)))
    local _, err = c.request{ method = "GET", path = "/v3/x", max_retries = 0 }
    assert.equal("api", err.kind)
    assert.equal(3, #t.calls) -- 1 + max_retries, and the request itself is never sent
    for _, call in ipairs(t.calls) do assert.equal("/v3/certificates?algorithm_type=RSA", call.target) end
  end)
end)
