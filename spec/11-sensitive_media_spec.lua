-- Sensitive fields (docs/protocol.md#sensitive-fields) and media upload
-- (docs/protocol.md#media-upload): client.encrypt decrypted by the
-- sandbox and by openssl, client.decrypt of what openssl encrypts and of the V8 vector,
-- and image uploads to the sandbox's two media endpoints, with the local refusals that
-- send nothing.

local sandbox = require("spec.support.sandbox")
local helpers = require("spec.helpers")
local core = require("wxpay.core")
local wxpay = require("wxpay")

local q = helpers.q

local config_from = helpers.config_from

-- openssl pkeyutl with the OAEP options of docs/protocol.md#sensitive-fields; returns stdout and success.
local function oaep(op, keyopt, input, md)
  local dir = helpers.tmpdir()
  helpers.write(dir .. "/in", input)
  md = md or "sha1"
  return helpers.sh(("openssl pkeyutl -%s %s -in %s -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:%s "
    .. "-pkeyopt rsa_mgf1_md:%s"):format(op, keyopt, q(dir .. "/in"), md, md))
end

describe("client.encrypt / client.decrypt", function()
  local sb
  setup(function() sb = sandbox.start{ mode = "combined" } end)
  teardown(function()
    sb:stop()
    helpers.cleanup()
  end)

  it("encrypts with the public key it names; the sandbox and openssl decrypt it", function()
    local c = assert(wxpay.new(sb.config))
    local ct, serial = c.encrypt("13800138000")
    assert.equal(sb.config.wechatpay_public_key_id, serial)
    assert.equal(344, #ct)
    local res = sb:control("POST", "/decrypt", { ciphertext = ct, serial = serial })
    assert.equal("13800138000", res.plaintext)
    local out, ok = oaep("decrypt", "-inkey " .. q(sb.dir .. "/pub_key_private.pem"), core.base64_decode(ct))
    assert.is_true(ok)
    assert.equal("13800138000", out)
    -- randomised: the same input never gives the same ciphertext
    assert.are_not.equal(ct, (c.encrypt("13800138000")))
  end)

  it("works through the module-level default client too", function()
    package.loaded["wxpay"] = nil -- a fresh module: no default client yet
    local w = require("wxpay")
    local none, err = w.encrypt("x")
    assert.is_nil(none)
    assert.equal("config", err.kind)
    assert.has_error(function() w.concurrent({}) end)
    assert(w.configure(sb.config))
    local ct, serial = w.encrypt("13800138000")
    assert.equal(sb.config.wechatpay_public_key_id, serial)
    assert.equal("13800138000", sb:control("POST", "/decrypt", { ciphertext = ct, serial = serial }).plaintext)
    local listed = assert(w.certificates.list())
    assert.truthy(#listed >= 1)
    local results = w.concurrent({ function() return 1 end, function() return 2 end })
    assert.same({ { n = 1, 1 }, { n = 1, 2 } }, results)
    local n, nerr = w.notify.parse({}, "")
    assert.is_nil(n)
    assert.equal("invalid_argument", nerr.kind)
    assert.equal(400, nerr.answer.status)
    local m, merr = w.media.upload("\137PNG\r\n\26\n", { filename = "logo.gif", endpoint = "marketing" })
    assert.is_nil(m)
    assert.equal("invalid_argument", merr.kind)
  end)

  it("downloads certificates first when it has only the apiv3_key, and names the certificate", function()
    sb:reset()
    local c = assert(wxpay.new(config_from(sb, { platform_certificate_files = false,
      wechatpay_public_key_file = false, wechatpay_public_key_id = false })))
    local info = sb:control("GET", "/info")
    local ct, serial = c.encrypt("张三")
    assert.equal(info.platform_serial_no, serial)
    assert.equal("张三", sb:control("POST", "/decrypt", { ciphertext = ct, serial = serial }).plaintext)
    local reqs = sb:requests()
    assert.equal(1, #reqs)
    assert.equal("/v3/certificates?algorithm_type=RSA", reqs[1].target)
    -- an encrypting request carries the same serial by default
    c.request{ method = "GET", path = "/v3/certificates" }
    assert.equal(serial, sb:requests()[2].headers["wechatpay-serial"])
  end)

  it("refuses a plaintext over 214 bytes (RSA-2048) and accepts exactly 214", function()
    local c = assert(wxpay.new(sb.config))
    local ct = c.encrypt(string.rep("a", 214))
    assert.truthy(ct)
    local none, err = c.encrypt(string.rep("a", 215))
    assert.is_nil(none)
    assert.equal("invalid_argument", err.kind)
    assert.equal("plaintext", err.field)
    assert.has_error(function() c.encrypt(42) end)
  end)

  it("decrypts what openssl encrypts to the merchant certificate, and refuses SHA-256 OAEP", function()
    local c = assert(wxpay.new(sb.config))
    local keyopt = "-certin -inkey " .. q(sb.config.merchant_certificate_file)
    local raw, ok = oaep("encrypt", keyopt, "13800138000")
    assert.is_true(ok)
    assert.equal("13800138000", c.decrypt(core.base64_encode(raw)))
    local raw256 = oaep("encrypt", keyopt, "13800138000", "sha256")
    local pt, err = c.decrypt(core.base64_encode(raw256))
    assert.is_nil(pt)
    assert.equal("invalid_argument", err.kind)
    assert.equal("ciphertext", err.field)
    assert.has_error(function() c.decrypt(nil) end)
  end)

  it("decrypts the V8 vector and refuses V8-neg through the Lua API", function()
    local v = helpers.vectors()
    local key = helpers.read(helpers.VECTORS .. "java_merchant_private_key.pem")
    local c = assert(wxpay.new{ mchid = "1234567891", serial_no = "1DDE55AD98ED71D6EDD4A4A16996DE7B47773A8C",
      private_key = key, wechatpay_public_key = helpers.read(helpers.VECTORS .. "java_wechat_pay_public_key.pem"),
      wechatpay_public_key_id = "PUB_KEY_ID_0000000000000024101100397200000006" })
    assert.equal(v.by_id["V8"].expected.plaintext, c.decrypt(v.by_id["V8"].inputs.ciphertext_base64))
    local pt, err = c.decrypt(v.by_id["V8-neg"].inputs.ciphertext_base64)
    assert.is_nil(pt)
    assert.equal("invalid_argument", err.kind)
    -- encrypting uses the configured WeChat Pay public key and names its id
    local _, serial = c.encrypt("x")
    assert.equal("PUB_KEY_ID_0000000000000024101100397200000006", serial)
  end)
end)

describe("client.media.upload", function()
  local sb, c, dir
  local PNG = "\137PNG\r\n\26\n" .. string.rep("\0\1\2\3png", 300)
  local JPEG = "\255\216\255\224" .. string.rep("jpeg\0", 400)
  local BMP = "BM" .. string.rep("\0bmp", 50)

  setup(function()
    sb = sandbox.start{ mode = "combined" }
    c = assert(wxpay.new(sb.config))
    dir = helpers.tmpdir()
  end)
  teardown(function()
    sb:stop()
    helpers.cleanup()
  end)
  before_each(function() sb:reset() end)

  it("uploads a marketing image (bytes) and gets its media_url", function()
    local res, err, meta = c.media.upload(PNG, { filename = "banner.png" })
    assert.is_nil(err)
    assert.equal(200, meta.status)
    assert.matches("^https://", res.media_url)
    local uploads = sb:control("GET", "/media").media
    assert.equal(1, #uploads)
    assert.equal("marketing", uploads[1].endpoint)
    assert.equal("banner.png", uploads[1].filename)
    assert.equal(#PNG, uploads[1].size)
    assert.equal("image/png", uploads[1].content_type)
    -- the meta sha256 is the file's lower-case hex digest, as openssl computes it
    helpers.write(dir .. "/banner.png", PNG)
    local dgst = helpers.sh("openssl dgst -sha256 -r " .. q(dir .. "/banner.png")):match("^(%x+)")
    assert.equal(dgst, uploads[1].sha256)
    local req = sb:requests()[1]
    assert.equal("/v3/marketing/favor/media/image-upload", req.target)
    assert.matches("^multipart/form%-data; boundary=", req.headers["content-type"])
  end)

  it("uploads a file by path to the merchant endpoint and gets its media_id", function()
    local path = dir .. "/身份证.jpg"
    helpers.write(path, JPEG)
    local res, err = c.media.upload(path, { endpoint = "merchant" })
    assert.is_nil(err)
    assert.truthy(res.media_id)
    local up = sb:control("GET", "/media").media[1]
    assert.equal("身份证.jpg", up.filename)
    assert.equal("merchant", up.endpoint)
    assert.equal(res.media_id, up.media_id)
    local bmp, berr = c.media.upload(BMP, { filename = "LOGO.BMP" })
    assert.is_nil(berr)
    assert.truthy(bmp.media_url)
  end)

  it("accepts 5 MB on the merchant endpoint but not 2 MB + 1 on the marketing one", function()
    local big = "\137PNG\r\n\26\n" .. string.rep("x", 2 * 1024 * 1024 - 7)
    local res, err = c.media.upload(big, { filename = "big.png", endpoint = "merchant" })
    assert.is_nil(err)
    assert.truthy(res.media_id)
    assert.equal(1, #sb:requests())
    local none, lerr = c.media.upload(big, { filename = "big.png" })
    assert.is_nil(none)
    assert.equal("file", lerr.field)
    assert.equal(1, #sb:requests()) -- refused locally
  end)

  it("takes opts.max_bytes, e.g. the 2 MB most merchant pages give", function()
    local big = "\137PNG\r\n\26\n" .. string.rep("x", 2 * 1024 * 1024 - 7)
    local none, err = c.media.upload(big, { filename = "big.png", endpoint = "merchant",
      max_bytes = 2 * 1024 * 1024 - 1 })
    assert.is_nil(none)
    assert.equal("file", err.field)
    assert.equal(0, #sb:requests())
    local res, rerr = c.media.upload(big, { filename = "big.png", endpoint = "merchant", max_bytes = #big })
    assert.is_nil(rerr)
    assert.truthy(res.media_id)
  end)

  it("accepts a .jpeg name (looser than the marketing page's JPG, on purpose)", function()
    local res, err = c.media.upload(JPEG, { filename = "photo.jpeg" })
    assert.is_nil(err)
    assert.truthy(res.media_url)
  end)

  local refusals = {
    { "a GIF name", PNG, { filename = "a.gif" }, "opts.filename" },
    { "content that is not what the name says", PNG, { filename = "a.jpg" }, "file" },
    { "bytes without a filename", PNG, nil, "opts.filename" },
    { "a filename with a quote", PNG, { filename = 'a".png' }, "opts.filename" },
    { "a filename over 150 characters", PNG, { filename = string.rep("a", 148) .. ".png" }, "opts.filename" },
    { "an unreadable path", "/nonexistent/x.png", nil, "path" },
    { "an unknown endpoint", PNG, { filename = "a.png", endpoint = "video" }, "opts.endpoint" },
    { "an unknown option", PNG, { filename = "a.png", idempotency_key = "x" }, "opts.idempotency_key" },
    { "a file that is not an image", "plain text\n", { filename = "a.png" }, "file" },
    { "max_bytes 0", PNG, { filename = "a.png", max_bytes = 0 }, "opts.max_bytes" },
    { "a fractional max_bytes", PNG, { filename = "a.png", max_bytes = 1.5 }, "opts.max_bytes" },
    { "max_bytes as a string", PNG, { filename = "a.png", max_bytes = "2097152" }, "opts.max_bytes" },
    { "max_bytes over 10 MB", PNG, { filename = "a.png", max_bytes = 10 * 1024 * 1024 + 1 }, "opts.max_bytes" },
    { "an image over opts.max_bytes", PNG, { filename = "a.png", max_bytes = #PNG - 1 }, "file" },
  }
  for _, case in ipairs(refusals) do
    it("refuses " .. case[1] .. " without sending anything", function()
      local res, err = c.media.upload(case[2], case[3])
      assert.is_nil(res)
      assert.equal("invalid_argument", err.kind)
      assert.equal(case[4], err.field)
      assert.equal(0, #sb:requests())
    end)
  end

  it("refuses an empty file", function()
    local path = dir .. "/empty.png"
    helpers.write(path, "")
    local _, err = c.media.upload(path)
    assert.equal("file", err.field)
    assert.equal(0, #sb:requests())
  end)

  it("raises on wrong argument types", function()
    assert.has_error(function() c.media.upload(nil) end)
    assert.has_error(function() c.media.upload(PNG, "a.png") end)
  end)
end)
