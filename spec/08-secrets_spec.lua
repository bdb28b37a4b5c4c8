-- Secret hygiene: every string the client produces while the sandbox throws faults of
-- every kind at it (tostring of the client and keys, every error and its fields, every
-- logger message and its fields, meta tables, data, raised errors) is collected and
-- searched for the private key (any 32-character slice of its PEM body), the APIv3 key,
-- every Authorization value the sandbox received and the decrypted certificate plaintexts.
local wxpay = require("wxpay")
local core = require("wxpay.core")
local sandbox = require("spec.support.sandbox")

local SLICE = 32

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local function copy(t)
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  return out
end

---------------------------------------------------------------------------------------------
-- The collector and the search
---------------------------------------------------------------------------------------------

-- Collects every string reachable from the values given to it: strings, tostring of
-- anything else (so __tostring), table keys and values, metatables, recursively.
local function new_collector()
  local strings, seen = {}, {}
  local function add(v)
    local t = type(v)
    if t == "string" then strings[#strings + 1] = v return end
    strings[#strings + 1] = tostring(v)
    if t == "table" and not seen[v] then
      seen[v] = true
      for k, x in pairs(v) do add(k); add(x) end
      local mt = getmetatable(v)
      if mt ~= nil then add(mt) end
    end
  end
  local c = { strings = strings }
  function c.add(...)
    for i = 1, select("#", ...) do add((select(i, ...))) end
    return ...
  end
  function c.logger(level, message, fields) add(level); add(message); add(fields) end
  return c
end

-- Every SLICE-long window of a PEM body with its line breaks removed.
local function pem_slices(pem)
  local body = pem:gsub("%-%-%-%-%-[^\n]*%-%-%-%-%-", ""):gsub("%s", "")
  local out = {}
  for i = 1, #body - SLICE + 1 do out[#out + 1] = body:sub(i, i + SLICE - 1) end
  return out
end

-- Returns the names of the secrets found in `strings` (empty when clean). The text is
-- searched once as is and once with all white space removed, so a secret split over
-- lines is found too.
local function leaks(strings, secrets)
  local text = table.concat(strings, "\0")
  local squeezed = text:gsub("%s", "")
  local found = {}
  for _, s in ipairs(secrets) do
    for _, needle in ipairs(s.needles) do
      if text:find(needle, 1, true) or squeezed:find(needle:gsub("%s", ""), 1, true) then
        found[#found + 1] = s.name
        break
      end
    end
  end
  return found
end

---------------------------------------------------------------------------------------------

describe("secret hygiene", function()
  local sb, secrets, private_pem

  setup(function()
    sb = sandbox.start{ mode = "combined" }
    private_pem = read_file(sb.config.private_key_file)
    secrets = {
      { name = "private key", needles = pem_slices(private_pem) },
      { name = "APIv3 key", needles = { sb.config.apiv3_key } },
    }
    -- The certificate plaintexts /v3/certificates decrypts to, decrypted here by hand.
    local resp = sb:http{ target = "/v3/certificates" }
    local plain = {}
    for _, entry in ipairs(require("cjson").new().decode(resp.body).data) do
      local ec = entry.encrypt_certificate
      local pem = assert(core.aes_gcm_decrypt(sb.config.apiv3_key, ec.nonce, ec.associated_data or "",
        ec.ciphertext))
      for _, s in ipairs(pem_slices(pem)) do plain[#plain + 1] = s end
    end
    assert.is_true(#plain > 0)
    secrets[#secrets + 1] = { name = "decrypted plaintext", needles = plain }
  end)
  teardown(function() if sb then sb:stop() end end)

  -- Secrets plus the Authorization values the sandbox received so far.
  local function all_secrets()
    local auths = {}
    for _, e in ipairs(sb:requests()) do
      local a = e.headers.authorization
      if a then
        auths[#auths + 1] = a
        auths[#auths + 1] = a:match('signature="([^"]+)"')
      end
    end
    local out = copy(secrets)
    out[#out + 1] = { name = "Authorization", needles = auths }
    return out, #auths / 2
  end

  -- Runs `fn(collector, client_config)` against a reset sandbox, then searches what it
  -- collected. Returns the collector (for scenario-specific checks).
  local function scenario(fn, min_requests)
    sb:reset()
    local col = new_collector()
    local cfg = copy(sb.config)
    cfg.logger = col.logger
    cfg.retry_base_delay = 0.01
    cfg.retry_max_delay = 0.02
    fn(col, cfg)
    local list, n_auth = all_secrets()
    assert.is_true(n_auth >= (min_requests or 0), "the sandbox saw " .. n_auth .. " signed requests")
    assert.is_true(#col.strings > 0)
    assert.same({}, leaks(col.strings, list))
    return col
  end

  local function params(appid)
    return { partner = { type = "APPID", appid = appid },
             authorized_data = { business_type = "BUSIFAVOR_STOCK", stock_id = "SECRET1" } }
  end

  describe("the search itself", function()
    it("finds each kind of secret when one is planted, and nothing in clean text", function()
      local list = copy(secrets)
      list[#list + 1] = { name = "Authorization", needles = { "WECHATPAY2-SHA256-RSA2048 mchid=\"1\",sig=\"abc\"" } }
      local body = private_pem:gsub("%-%-%-%-%-[^\n]*%-%-%-%-%-", ""):gsub("%s", "")
      local clean = { "wxpay: api error 500 SYSTEM_ERROR", tostring(wxpay), sb.config.mchid }
      assert.same({}, leaks(clean, list))
      -- A slice from the middle of the key body, as is and broken over two lines.
      local mid = body:sub(701, 701 + SLICE - 1)
      assert.same({ "private key" }, leaks({ "error: " .. mid .. " end" }, list))
      assert.same({ "private key" }, leaks({ "x" .. mid:sub(1, 10) .. "\n" .. mid:sub(11) }, list))
      -- One character short of a slice is not a leak.
      assert.same({}, leaks({ mid:sub(1, SLICE - 1) }, list))
      assert.same({ "APIv3 key" }, leaks({ "key=" .. sb.config.apiv3_key }, list))
      assert.same({ "decrypted plaintext" }, leaks({ secrets[3].needles[5] }, list))
      assert.same({ "Authorization" }, leaks({ list[4].needles[1] }, list))
      -- The collector reaches nested fields, metatables and __tostring.
      local col = new_collector()
      col.add(setmetatable({ a = { b = { "deep " .. sb.config.apiv3_key } } }, {}))
      assert.same({ "APIv3 key" }, leaks(col.strings, list))
      col = new_collector()
      col.add(setmetatable({}, { __tostring = function() return mid end }))
      assert.same({ "private key" }, leaks(col.strings, list))
    end)
  end)

  describe("no secret in anything the client produces", function()
    it("configuration errors, including ones made from secret values", function()
      scenario(function(col, cfg)
        local key_file = cfg.private_key_file
        local truncated = private_pem:sub(1, math.floor(#private_pem / 2))
        local cases = {
          { private_key_file = false, private_key = truncated },
          { private_key = private_pem },                      -- both the file and the PEM
          { private_key_file = false, private_key = (private_pem:gsub("%-%-%-%-%-[^\n]*%-%-%-%-%-", "")) },
          { private_key_file = false, private_key = sb.config.apiv3_key },
          { private_key_file = "/nonexistent/" .. sb.config.apiv3_key:sub(1, 8) },
          { apiv3_key = sb.config.apiv3_key .. "x" },
          { apiv3_key = sb.config.apiv3_key:sub(1, 31) },
          { apiv3key = sb.config.apiv3_key },                 -- a typo'd name holding a secret
          { private_key_file = false, privatekey = private_pem },
        }
        for _, o in ipairs(cases) do
          local c = copy(cfg)
          for k, v in pairs(o) do
            if v == false then c[k] = nil else c[k] = v end
          end
          local client, err = col.add(wxpay.new(c))
          assert.is_nil(client)
          assert.equal("config", err.kind)
        end
        assert.equal(key_file, cfg.private_key_file)
        -- Raised misuse errors carry no values.
        col.add(select(2, pcall(wxpay.new, private_pem)))
        col.add(wxpay.new(cfg)) -- and a good one
      end)
    end)

    it("a normal run: tostring of the client, keys, meta, data, lists and the logger", function()
      scenario(function(col, cfg)
        local client = assert(col.add(wxpay.new(cfg)))
        col.add(client, tostring(client), client.certificates.list())
        col.add(core.load_private_key(private_pem))
        col.add(core.load_private_key(private_pem):public_key())
        col.add(core.load_certificate(read_file(sb.config.platform_certificate_files[1])))
        for i = 1, 3 do
          col.add(client.partnerships.build(params("wxsecret" .. i), { idempotency_key = "secret-" .. i }))
        end
        col.add(client.partnerships.terminate(params("wxsecret1"), { idempotency_key = "secret-t1" }))
        col.add(client.partnerships.page{ authorized_data = { business_type = "BUSIFAVOR_STOCK" }, limit = 2 })
        for rel in client.partnerships.list{ authorized_data = { business_type = "BUSIFAVOR_STOCK" }, limit = 1 } do
          col.add(rel)
        end
        col.add(client.request{ method = "GET", path = "/v3/certificates" })
        wxpay.configure(cfg)
        col.add(wxpay.request{ method = "GET", path = "/v3/certificates" })
        client.close()
      end, 8)
    end)

    it("500, 429, drops, timeouts, exhausted retries, deadline and API errors", function()
      scenario(function(col, cfg)
        cfg.timeout, cfg.max_retries = 1, 4
        local client = assert(wxpay.new(cfg))
        assert(client.request{ method = "GET", path = "/v3/certificates" }) -- warm connection
        local function build(appid, opts)
          return col.add(client.partnerships.build(params(appid), opts or { idempotency_key = "k-" .. appid }))
        end
        sb:fault{ { fault = "500", count = 2 }, { fault = "429", count = 1, retry_after = 0 } }
        assert(build("wxf1")) -- three retries: 500, 500, 429
        sb:fault{ fault = "drop", count = 2 }
        assert(build("wxf2"))
        sb:fault{ fault = "500", count = 6 }
        assert.is_nil(build("wxf3"))
        sb:control("DELETE", "/faults")
        sb:fault{ fault = "delay", seconds = 2, count = 1 }
        assert(build("wxf4")) -- timed out, retried, replayed
        sb:fault{ fault = "delay", seconds = 2, count = 5 }
        assert.is_nil(col.add(client.request{ method = "GET", path = "/v3/certificates", deadline = 1.5 }))
        sb:control("DELETE", "/faults")
        assert.is_nil(build("wxf1", { idempotency_key = "another-key" })) -- 400
        assert.is_nil(col.add(client.partnerships.terminate(params("wxnone"), { idempotency_key = "t-none" })))
        assert.is_nil(col.add(client.request{ method = "GET", path = "/v3/nothing/here" }))
        sb:fault{ fault = "500", count = 6 }
        col.add(pcall(function()
          for rel in client.partnerships.list{ authorized_data = { business_type = "BUSIFAVOR_STOCK" } } do
            col.add(rel)
          end
        end))
        -- Invalid arguments (nothing sent) and a POST without a key that is dropped.
        col.add(client.partnerships.build({ partner = { type = "APPID", appid = "bad appid" } }))
        sb:fault{ fault = "drop", count = 1 }
        col.add(client.request{ method = "POST", path = "/v3/marketing/partnerships/build", body = params("wxnk") })
      end, 15)
    end)

    it("an error page echoing the request's Authorization, retried and then given up", function()
      local col = scenario(function(c, cfg)
        cfg.max_retries = 2
        local client = assert(wxpay.new(cfg))
        sb:fault{ fault = "echo", count = 1 }
        assert(c.add(client.partnerships.build(params("wxecho1"), { idempotency_key = "echo-1" })))
        sb:fault{ fault = "echo", count = 3 }
        local rel, err = c.add(client.partnerships.build(params("wxecho2"), { idempotency_key = "echo-2" }))
        assert.is_nil(rel)
        assert.equal(500, err.status)
        assert.equal(3, err.attempts)
      end, 5)
      -- the echo did reach the client: its page shows up redacted, with no piece of a
      -- signature left where the error message was cut short
      local text = table.concat(col.strings, "\n")
      assert.truthy(text:find("bad credentials: [REDACTED]", 1, true))
      for _, e in ipairs(sb:requests()) do
        local sig = e.headers.authorization:match('signature="([^"]+)"')
        assert.is_nil(text:find(sig:sub(1, 24), 1, true), "part of a signature leaked")
      end
    end)

    it("tampered, unsigned, stale and probe responses", function()
      scenario(function(col, cfg)
        local client = assert(wxpay.new(cfg))
        for _, f in ipairs({ "tamper", "unsigned", "stale", "probe" }) do
          sb:fault{ fault = f, count = 1 }
          local rel, err = col.add(client.partnerships.build(params("wx" .. f), { idempotency_key = "s-" .. f }))
          assert.is_nil(rel)
          assert.equal("signature", err.kind)
        end
        -- An error answer that is signed too: its signature is checked and recorded.
        col.add(client.request{ method = "GET", path = "/v3/nothing" })
      end, 5)
    end)

    it("a rejected request signature (wrong merchant key): the server's SIGN_ERROR detail", function()
      scenario(function(col, cfg)
        local dir = os.tmpname()
        os.remove(dir)
        os.execute("mkdir -p " .. dir .. " && openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "
          .. dir .. "/k.pem 2>/dev/null")
        cfg.private_key_file = dir .. "/k.pem"
        cfg.merchant_certificate_file = nil
        local client = assert(wxpay.new(cfg))
        local wrong_pem = read_file(cfg.private_key_file)
        os.execute("rm -rf " .. dir)
        local rel, err = col.add(client.partnerships.build(params("wxwrongkey"), { idempotency_key = "wrong" }))
        assert.is_nil(rel)
        assert.same({ "api", 401, "SIGN_ERROR" }, { err.kind, err.status, err.code })
        assert.same({}, leaks(col.strings, { { name = "wrong key", needles = pem_slices(wrong_pem) } }))
      end, 1)
    end)

    it("certificate download: decryption, a tampered download, a wrong APIv3 key", function()
      scenario(function(col, cfg)
        cfg.platform_certificate_files, cfg.wechatpay_public_key_file, cfg.wechatpay_public_key_id = nil, nil, nil
        local client = assert(wxpay.new(cfg))
        sb:fault{ fault = "tamper", count = 1, path = "/v3/certificates" }
        col.add(client.certificates.refresh())
        col.add(client.partnerships.build(params("wxdl"), { idempotency_key = "dl-1" }))
        col.add(client.certificates.refresh())
        col.add(client.certificates.list())
        -- Another 32-byte key: every entry fails to decrypt.
        local other = copy(cfg)
        other.apiv3_key = string.rep("k", 32)
        local c2 = assert(wxpay.new(other))
        local ok, err = col.add(c2.certificates.refresh())
        assert.is_nil(ok)
        assert.equal("signature", err.kind)
        col.add(c2.partnerships.build(params("wxdl2"), { idempotency_key = "dl-2" }))
      end, 3)
    end)

    it("sensitive-field decryption and notifications (decrypted plaintexts)", function()
      local probe = assert(wxpay.new(copy(sb.config)))
      if not (probe.decrypt and probe.notify) then
        pending("client.decrypt / client.notify are not there yet")
        return
      end
      local plaintext = "13800138000-SECRET-PLAINTEXT-" .. core.nonce(16)
      local resource_plain = '{"mobile":"' .. plaintext .. '"}'
      local extra = { name = "this test's plaintext", needles = { plaintext } }
      local col = scenario(function(c, cfg)
        local client = assert(wxpay.new(cfg))
        local merchant_pub = core.load_private_key(private_pem):public_key()
        local ct = assert(merchant_pub:encrypt_oaep(plaintext))
        local out = client.decrypt(ct)
        assert.equal(plaintext, out) -- returned to the caller, and not collected
        c.add(client.decrypt(ct:sub(1, -5) .. "AAA="))           -- does not decrypt
        c.add(client.decrypt(core.base64_encode("not a ciphertext")))
        c.add(client, tostring(client))
        -- A notification whose resource decrypts but whose signature is wrong: the plaintext
        -- must not surface anywhere.
        local nonce = "n0nce0123456"
        local body = '{"id":"EV-1","event_type":"TEST.EVENT","resource_type":"encrypt-resource",'
          .. '"resource":{"algorithm":"AEAD_AES_256_GCM","ciphertext":"'
          .. assert(core.aes_gcm_encrypt(cfg.apiv3_key, nonce, "notify", resource_plain))
          .. '","nonce":"' .. nonce .. '","associated_data":"notify"}}'
        local headers = { ["Wechatpay-Timestamp"] = tostring(os.time()), ["Wechatpay-Nonce"] = "abc",
          ["Wechatpay-Serial"] = cfg.wechatpay_public_key_id,
          ["Wechatpay-Signature"] = core.base64_encode(string.rep("\1", 256)) }
        local n, err = c.add(client.notify.parse(headers, body))
        assert.is_nil(n)
        assert.equal("signature", err.kind)
        headers["Wechatpay-Signature"] = nil
        c.add(client.notify.parse(headers, body))
        -- A resource that does not decrypt (wrong associated data).
        c.add(client.notify.parse(headers, (body:gsub('"associated_data":"notify"', '"associated_data":"other"'))))
      end)
      assert.same({}, leaks(col.strings, { extra, { name = "resource", needles = { resource_plain } } }))
    end)

    it("failover from a refused primary, and a transport whose errors echo secrets", function()
      local leaky_err
      scenario(function(col, cfg)
        local gone = sandbox.start{ mode = "combined" }
        local primary = gone.base_url
        gone:stop()
        local c = copy(cfg)
        c.base_url, c.backup_url = primary, sb.base_url
        local client = assert(wxpay.new(c))
        assert(col.add(client.partnerships.build(params("wxfo"), { idempotency_key = "fo" })))
        -- Outside code may put anything in an error message: the client redacts what it knows.
        local curl = require("wxpay.transport.curl").new{ ca_file = cfg.ca_file }
        local leaky = { request = function(req)
          local resp, err = curl.request(req)
          if err then
            err.message = err.message .. " while sending Authorization: " .. req.headers.Authorization
              .. " apiv3=" .. cfg.apiv3_key .. "\n" .. private_pem
          end
          return resp, err
        end }
        local c3 = copy(cfg)
        c3.transport, c3.ca_file = leaky, nil
        local client3 = assert(wxpay.new(c3))
        sb:fault{ fault = "drop", count = 3 }
        local rel, err = col.add(client3.partnerships.build(params("wxleaky"), { idempotency_key = "leaky" }))
        assert.is_nil(rel)
        assert.equal("network", err.kind)
        leaky_err = err
      end, 3)
      assert.matches("REDACTED", tostring(leaky_err))
    end)
  end)
end)
