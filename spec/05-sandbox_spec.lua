-- The sandbox itself, checked over real HTTPS with the curl CLI and requests signed by
-- hand with wxpay.core (not with the wxpay client, which is tested against it elsewhere).
local core = require("wxpay.core")
local cjson = require("cjson").new()
local sandbox = require("spec.support.sandbox")
local helpers = require("spec.helpers")

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

local BUILD = "/v3/marketing/partnerships/build"
local TERMINATE = "/v3/marketing/partnerships/terminate"
local LIST = "/v3/marketing/partnerships"

local function body_for(appid, business_type, stock_id)
  return cjson.encode{
    partner = { type = "APPID", appid = appid or "wx4e1916a585d1f4e9" },
    authorized_data = { business_type = business_type or "BUSIFAVOR_STOCK",
                        stock_id = stock_id or "2433405" },
  }
end

local function pct(s)
  return (s:gsub("[^A-Za-z0-9%-._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

local function list_target(ad, extra)
  return LIST .. "?authorized_data=" .. pct(cjson.encode(ad)) .. (extra or "")
end

local function decode(resp)
  return cjson.decode(resp.body)
end

describe("wxpay-sandbox", function()
  local sb, platform_cert, public_key

  setup(function()
    sb = sandbox.start()
    platform_cert = assert(core.load_certificate(read_file(sb.config.platform_certificate_files[1])))
    public_key = assert(core.load_public_key(read_file(sb.config.wechatpay_public_key_file)))
  end)

  teardown(function()
    if sb then assert.is_true(sb:stop()) end
  end)

  before_each(function()
    sb:reset()
  end)

  -- Verify a response (docs/protocol.md#response-verification) with the key its Wechatpay-Serial names.
  local function verifies(resp, key)
    local h = resp.headers
    if not (h["wechatpay-timestamp"] and h["wechatpay-nonce"] and h["wechatpay-signature"]) then
      return false
    end
    if not key then
      if h["wechatpay-serial"] == sb.config.wechatpay_public_key_id then key = public_key
      elseif h["wechatpay-serial"] == platform_cert:serial() then key = platform_cert:public_key()
      else return false end
    end
    return key:verify(h["wechatpay-timestamp"] .. "\n" .. h["wechatpay-nonce"] .. "\n"
                      .. resp.body .. "\n", h["wechatpay-signature"])
  end

  local function build(appid, key, extra)
    local req = { method = "POST", target = BUILD, body = body_for(appid),
                  idempotency_key = key or ("k-" .. (appid or "default")) }
    for k, v in pairs(extra or {}) do req[k] = v end
    return sb:http(req)
  end

  describe("startup", function()
    it("prints a config usable by wxpay.new, with files that exist", function()
      local c = sb.config
      assert.equal("1900000001", c.mchid)
      assert.matches("^[0-9A-F]+$", c.serial_no)
      assert.equal(40, #c.serial_no)
      assert.equal(32, #c.apiv3_key)
      assert.matches("^[A-Za-z0-9]+$", c.apiv3_key)
      assert.matches("^https://127%.0%.0%.1:%d+$", c.base_url)
      assert.equal(false, c.backup_url)
      assert.equal(c.base_url .. "/_sandbox", sb.control_url)
      assert.matches("^PUB_KEY_ID_%d+$", c.wechatpay_public_key_id)
      assert.equal(11 + 34, #c.wechatpay_public_key_id)
      local key = assert(core.load_private_key(read_file(c.private_key_file)))
      local cert = assert(core.load_certificate(read_file(c.merchant_certificate_file)))
      assert.equal(c.serial_no, cert:serial())
      assert.equal(cert:public_key():fingerprint(), key:public_key():fingerprint())
      assert.equal(40, #platform_cert:serial())
      assert.truthy(read_file(c.ca_file):find("BEGIN CERTIFICATE", 1, true))
    end)

    -- Permission bits as octal text ("600"), from stat(1).
    local function mode(path)
      local out, ok = helpers.sh(sandbox.CLEAN_ENV .. "stat -c %a " .. helpers.q(path))
      assert(ok, "stat " .. path)
      return (out:gsub("%s+$", ""))
    end

    local function assert_private(dir)
      assert.equal("700", mode(dir))
      local names = assert(helpers.sh(sandbox.CLEAN_ENV .. "ls -A " .. helpers.q(dir)))
      local n = 0
      for name in names:gmatch("[^\n]+") do
        n = n + 1
        assert.equal("600", mode(dir .. "/" .. name), name)
      end
      assert.is_true(n >= 13) -- twelve PEM files and manifest.json (it holds the APIv3 key)
    end

    it("keeps --dir 0700 with its files 0600, tightening a reused one and refusing a shared one", function()
      local base = helpers.tmpdir()
      local ok, err = pcall(function()
        local fresh = base .. "/new/keys" -- parents are created too
        local one = sandbox.start{ dir = fresh, timeout = 120 }
        one:stop()
        assert_private(fresh)
        -- A cache from before (0755, files 0644) is tightened and its keys reused.
        local old = base .. "/old"
        assert(os.execute("cp -r " .. helpers.q(fresh) .. " " .. helpers.q(old) .. " && chmod 755 " .. helpers.q(old)
                          .. " && chmod 644 " .. helpers.q(old) .. "/*"))
        local two = sandbox.start{ dir = old }
        two:stop()
        assert_private(old)
        assert.equal(one.config.serial_no, two.config.serial_no)
        -- A group/world-accessible folder holding other things is not the sandbox's to change.
        local shared = base .. "/shared"
        assert(os.execute("mkdir -m 755 " .. helpers.q(shared) .. " && touch " .. helpers.q(shared) .. "/notes.txt"))
        local started, serr = pcall(sandbox.start, { dir = shared })
        if started then serr:stop() end
        assert.is_false(started)
        assert.truthy(tostring(serr):find("readable by others", 1, true), tostring(serr))
        assert.equal("755", mode(shared))
        assert.falsy(helpers.sh("ls " .. helpers.q(shared)):find("manifest", 1, true))
      end)
      helpers.cleanup()
      assert(ok, err)
    end)

    -- Without --dir the keys go to a temporary folder under $TMPDIR, which every way of
    -- ending the sandbox removes. Started through popen so the spec holds its stdin, and
    -- always with --exit-on-stdin-close so that a failing spec's p:close() still ends it;
    -- `timeout -s KILL` bounds a hang (and a killed sandbox leaves its folder: a failure).
    describe("without --dir", function()
      local tmp

      local function own_pid()
        local f = assert(io.open("/proc/self/stat"))
        local pid = f:read("*n")
        f:close()
        return pid
      end

      local function alive(pid)
        local stat = io.open("/proc/" .. pid .. "/stat")
        if not stat then return false end
        local text = stat:read("*a")
        stat:close()
        return not text:match("^%d+ %b() Z")
      end

      local function spawn()
        local out = tmp .. "-out"
        local p = assert(io.popen(string.format(
          "%s TMPDIR=%s timeout -s KILL 120 lua5.4 bin/wxpay-sandbox --port 0 --quiet --exit-on-stdin-close"
            .. " --exit-with-pid %d >%s 2>%s",
          sandbox.CLEAN_ENV, helpers.q(tmp), own_pid(), helpers.q(out), helpers.q(tmp .. "-err")), "w"))
        local deadline = os.time() + 110
        local text = ""
        while not text:find("\n") and os.time() <= deadline do
          local f = io.open(out, "rb")
          text = f and f:read("*a") or ""
          if f then f:close() end
          if not text:find("\n") then os.execute("sleep 0.05") end
        end
        local line = text:match("^([^\n]*)\n")
        if not line then
          p:close() -- it watches stdin, so this ends it
          error("no startup line: " .. (helpers.read(tmp .. "-err") or ""))
        end
        local info = cjson.decode(line)
        info.pid = math.floor(info.pid) -- cjson gives 5.4 a float
        return p, info
      end

      -- Waits (bounded) for the sandbox to exit, then reaps the shell.
      local function reap(p, pid)
        local deadline = os.time() + 30
        while alive(pid) and os.time() <= deadline do os.execute("sleep 0.05") end
        local still = alive(pid)
        if still then os.execute("kill -KILL " .. pid) end
        p:close()
        assert.is_false(still, "the sandbox did not exit")
      end

      local function leftovers()
        return (helpers.sh(sandbox.CLEAN_ENV .. "ls -A " .. helpers.q(tmp)))
      end

      before_each(function()
        tmp = helpers.tmpdir()
      end)
      after_each(function()
        os.remove(tmp .. "-out")
        os.remove(tmp .. "-err")
        helpers.cleanup()
      end)

      for _, how in ipairs{ "TERM", "INT" } do
        it("removes its temporary folder on SIG" .. how, function()
          local p, info = spawn()
          local ok, err = pcall(function()
            assert.equal(tmp, info.dir:match("^(.*)/[^/]+$"))
            assert.truthy(io.open(info.config.private_key_file, "rb")):close()
          end)
          os.execute(string.format("kill -%s %d", how, info.pid))
          reap(p, info.pid)
          assert(ok, err)
          assert.equal("", leftovers())
        end)
      end

      it("removes its temporary folder when stdin closes", function()
        local p, info = spawn()
        local ok, err = pcall(function()
          assert.equal(tmp, info.dir:match("^(.*)/[^/]+$"))
          assert.truthy(io.open(info.config.private_key_file, "rb")):close()
        end)
        p:close() -- closes the sandbox's stdin and waits for it
        assert.is_false(alive(info.pid))
        assert(ok, err)
        assert.equal("", leftovers())
      end)

      it("removes its temporary folder when startup fails after making it", function()
        local out, ok = helpers.sh(string.format("%s TMPDIR=%s lua5.4 bin/wxpay-sandbox --host 256.0.0.1 --quiet",
          sandbox.CLEAN_ENV, helpers.q(tmp)))
        assert.is_false(ok, out)
        assert.equal("", leftovers())
      end)
    end)

    it("describes public_key mode without platform certificates", function()
      local pk = sandbox.start{ mode = "public_key" }
      local ok, err = pcall(function()
        assert.is_nil(pk.config.platform_certificate_files)
        assert.truthy(pk.config.wechatpay_public_key_file)
        local resp = pk:http{ target = "/v3/certificates" }
        assert.equal(404, resp.status)
        assert.equal("RESOURCE_NOT_EXISTS", decode(resp).code)
      end)
      pk:stop()
      assert(ok, err)
    end)
  end)

  describe("request authentication", function()
    it("accepts a correctly signed build and signs the answer", function()
      local resp = build()
      assert.equal(200, resp.status)
      assert.truthy(resp.headers["request-id"])
      assert.equal("WECHATPAY2-SHA256-RSA2048", resp.headers["wechatpay-signature-type"])
      -- Combined mode without a Wechatpay-Serial request header: platform certificate.
      assert.equal(platform_cert:serial(), resp.headers["wechatpay-serial"])
      assert.is_true(verifies(resp, platform_cert:public_key()))
      assert.is_false(verifies(resp, public_key))
      local rel = decode(resp)
      assert.equal("ESTABLISHED", rel.state)
      assert.equal("wx4e1916a585d1f4e9", rel.partner.appid)
      assert.equal("2433405", rel.authorized_data.stock_id)
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%d%+08:00$", rel.build_time)
      assert.equal(rel.build_time, rel.create_time)
    end)

    it("signs with the public key when the request names its id", function()
      local resp = build(nil, nil, { wechatpay_serial = sb.config.wechatpay_public_key_id })
      assert.equal(200, resp.status)
      assert.equal(sb.config.wechatpay_public_key_id, resp.headers["wechatpay-serial"])
      assert.is_true(verifies(resp, public_key))
      sb:configure{ mode = "certificate" }
      resp = sb:http{ target = "/v3/certificates", wechatpay_serial = sb.config.wechatpay_public_key_id }
      assert.equal(platform_cert:serial(), resp.headers["wechatpay-serial"])
      assert.is_true(verifies(resp))
    end)

    it("answers 401 SIGN_ERROR with sign_information for a bad signature", function()
      local auth = core.authorization{ mchid = sb.config.mchid, serial_no = sb.config.serial_no,
                                       key = sb:merchant_key(), method = "POST", url = BUILD,
                                       body = body_for("wxother") }
      local resp = build(nil, nil, { authorization = auth })
      assert.equal(401, resp.status)
      assert.is_nil(resp.headers["wechatpay-signature"])
      local err = decode(resp)
      assert.equal("SIGN_ERROR", err.code)
      local info = err.detail.sign_information
      assert.equal("POST", info.method)
      assert.equal(BUILD, info.url)
      assert.equal(#("POST\n" .. BUILD .. "\n") + #body_for() + 1 + 10 + 1 + 32 + 1, info.sign_message_length)
      assert.matches("^POST\n/v3/marketing/partnerships/build\n%d+\n", info.truncated_sign_message)
      assert.equal(0, sb:control("GET", "/relations").count)
    end)

    it("rejects a stale timestamp, a wrong serial and a malformed header with 401", function()
      local stale = build(nil, nil, { timestamp = tostring(os.time() - 600) })
      assert.equal(401, stale.status)
      assert.equal("SIGN_ERROR", decode(stale).code)
      assert.equal(401, build(nil, nil, { serial_no = string.rep("A", 40) }).status)
      local auth = core.authorization{ mchid = sb.config.mchid, serial_no = sb.config.serial_no,
                                       key = sb:merchant_key(), method = "POST", url = BUILD,
                                       body = body_for() }
      local spaced = build(nil, nil, { authorization = auth:gsub('",', '", ') })
      assert.equal(401, spaced.status)
      assert.equal(401, build(nil, nil, { authorization = false }).status)
      assert.equal(0, sb:control("GET", "/relations").count)
    end)

    it("answers 400 INVALID_REQUEST without Accept or User-Agent", function()
      local resp = build(nil, nil, { headers = { "Accept:" } })
      assert.equal(400, resp.status)
      assert.equal("INVALID_REQUEST", decode(resp).code)
      assert.equal(400, build(nil, nil, { headers = { "User-Agent:" } }).status)
    end)

    it("verifies the raw request-target without decoding it", function()
      -- Lower-case hex as in the old wiki example: valid because the signature covers it.
      local target = LIST .. "?authorized_data=%7b%22business_type%22%3a%22BUSIFAVOR_STOCK%22%7d&offset=0&limit=5"
      assert.equal(200, build().status)
      local resp = sb:http{ target = target }
      assert.equal(200, resp.status)
      assert.equal(1, decode(resp).total_count)
      local log = sb:requests()
      assert.equal(target, log[#log].target)
    end)
  end)

  describe("partnerships", function()
    it("replays an idempotent build with fresh signature headers", function()
      local first = build("wxidem", "same-key")
      local again = build("wxidem", "same-key")
      assert.equal(200, again.status)
      assert.equal(first.body, again.body)
      assert.are_not.equal(first.headers["wechatpay-nonce"], again.headers["wechatpay-nonce"])
      assert.is_true(verifies(again))
      assert.equal(1, sb:control("GET", "/relations").count)
    end)

    it("rejects a reused key with a different body, and a duplicate relation", function()
      assert.equal(200, build("wxa", "key-1").status)
      local reused = build("wxb", "key-1")
      assert.equal(400, reused.status)
      assert.equal("INVALID_REQUEST", decode(reused).code)
      local dup = build("wxa", "key-2")
      assert.equal(400, dup.status)
      assert.equal("INVALID_REQUEST", decode(dup).code)
    end)

    it("validates the Idempotency-Key and the body fields", function()
      local resp = sb:http{ method = "POST", target = BUILD, body = body_for() }
      assert.equal(400, resp.status)
      local err = decode(resp)
      assert.equal("PARAM_ERROR", err.code)
      assert.same({ "Idempotency-Key", "header" }, { err.detail.field, err.detail.location })
      assert.equal(400, build(nil, "bad key!").status)
      resp = sb:http{ method = "POST", target = BUILD, idempotency_key = "v1", body = cjson.encode{
        partner = { type = "APPID" }, authorized_data = { business_type = "FAVOR_STOCK", stock_id = "1" } } }
      assert.same({ "PARAM_ERROR", "/partner/appid" }, { decode(resp).code, decode(resp).detail.field })
      resp = sb:http{ method = "POST", target = BUILD, idempotency_key = "v2", body = cjson.encode{
        partner = { type = "MERCHANT", merchant_id = "1900000109" },
        authorized_data = { business_type = "FAVOR_STOCK", stock_id = "1" } } }
      assert.same({ 400, "INVALID_REQUEST" }, { resp.status, decode(resp).code })
      resp = sb:http{ method = "POST", target = BUILD, idempotency_key = "v3", body = "{not json" }
      assert.same({ 400, "PARAM_ERROR" }, { resp.status, decode(resp).code })
    end)

    it("terminates, refuses a second terminate, and re-establishes in place", function()
      assert.equal(200, build("wxt").status)
      local req = { method = "POST", target = TERMINATE, body = body_for("wxt"), idempotency_key = "t1" }
      local resp = sb:http(req)
      assert.equal(200, resp.status)
      assert.is_true(verifies(resp))
      assert.matches("%+08:00$", decode(resp).terminate_time)
      req.idempotency_key = "t2"
      assert.equal(400, sb:http(req).status)
      req.body, req.idempotency_key = body_for("wxnone"), "t3"
      assert.same({ 404, "RESOURCE_NOT_EXISTS" }, { sb:http(req).status, decode(sb:http(req)).code })
      local again = build("wxt", "rebuild")
      assert.equal(200, again.status)
      assert.equal("ESTABLISHED", decode(again).state)
      local rels = sb:control("GET", "/relations")
      assert.equal(1, rels.count)
      assert.is_nil(rels.relations[1].terminate_time)
    end)

    it("pages by page index and by item offset, in creation order", function()
      sb:control("POST", "/seed", { count = 45, stock_id = "S1" })
      local ad = { business_type = "BUSIFAVOR_STOCK", stock_id = "S1" }
      local pages = sb:http{
        { target = list_target(ad, "&limit=20&offset=0") },
        { target = list_target(ad, "&limit=20&offset=1") },
        { target = list_target(ad, "&limit=20&offset=2") },
        { target = list_target(ad, "&limit=20&offset=3") },
      }
      local p0, p1, p2 = decode(pages[1]), decode(pages[2]), decode(pages[3])
      assert.same({ 20, 20, 5 }, { #p0.data, #p1.data, #p2.data })
      assert.equal(45, p0.total_count)
      assert.is_nil(p1.total_count)
      assert.equal("wxseed000001", p0.data[1].partner.appid)
      assert.equal("wxseed000021", p1.data[1].partner.appid)
      assert.equal("wxseed000045", p2.data[5].partner.appid)
      assert.equal("ESTABLISHED", p0.data[1].state)
      assert.is_true(verifies(pages[2]))
      assert.same({ 404, "RESOURCE_NOT_EXISTS" }, { pages[4].status, decode(pages[4]).code })

      sb:configure{ offset_mode = "item", state_in_list = false }
      local item = decode(sb:http{ target = list_target(ad, "&limit=20&offset=20") })
      assert.equal(20, #item.data)
      assert.equal("wxseed000021", item.data[1].partner.appid)
      assert.is_nil(item.data[1].state)
      local filtered = decode(sb:http{
        target = LIST .. "?partner=" .. pct('{"type":"APPID","appid":"wxseed000007"}')
                 .. "&authorized_data=" .. pct(cjson.encode(ad)) })
      assert.equal(1, filtered.total_count)
      assert.equal("wxseed000007", filtered.data[1].partner.appid)
    end)

    it("answers an empty list with 404 by default and 200 when configured", function()
      local target = list_target{ business_type = "FAVOR_STOCK" }
      assert.equal(404, sb:http{ target = target }.status)
      sb:configure{ empty_list = "200" }
      local resp = sb:http{ target = target }
      assert.equal(200, resp.status)
      assert.equal('{"data":[],"limit":20,"offset":0,"total_count":0}', resp.body)
      assert.is_true(verifies(resp))
    end)

    it("validates list queries", function()
      local ad = { business_type = "BUSIFAVOR_STOCK" }
      local resp = sb:http{ target = LIST .. "?limit=5" }
      assert.same({ 400, "PARAM_ERROR", "query" },
                  { resp.status, decode(resp).code, decode(resp).detail.location })
      assert.equal(400, sb:http{ target = list_target(ad, "&limit=51") }.status)
      assert.equal(400, sb:http{ target = list_target(ad, "&offset=-1") }.status)
    end)

    it("answers 400 PARAM_ERROR to out-of-range offsets and limits in both offset modes", function()
      local ad = { business_type = "BUSIFAVOR_STOCK" }
      assert.equal(200, build("wxoffset000000001").status)
      local bad = {
        { "offset", "9223372036854775807" }, { "offset", "9223372036854775808" },
        { "offset", "2147483648" }, { "offset", "99999999999999999999" }, { "offset", "1e300" },
        { "offset", "-1" }, { "offset", "abc" }, { "offset", "" },
        { "limit", "9223372036854775807" }, { "limit", "99999999999999999999" }, { "limit", "1e300" },
        { "limit", "0" }, { "limit", "-1" }, { "limit", "abc" },
      }
      for _, mode in ipairs{ "page", "item" } do
        sb:configure{ offset_mode = mode }
        local reqs = {}
        for i, b in ipairs(bad) do reqs[i] = { target = list_target(ad, "&" .. b[1] .. "=" .. b[2]) } end
        for i, resp in ipairs(sb:http(reqs)) do
          local what = mode .. " " .. bad[i][1] .. "=" .. bad[i][2]
          assert.equal(400, resp.status, what .. ": " .. resp.body)
          assert.same({ "PARAM_ERROR", bad[i][1] }, { decode(resp).code, decode(resp).detail.field }, what)
        end
        -- The largest offset allowed is an empty page, not an error.
        local last = sb:http{ target = list_target(ad, "&limit=50&offset=2147483647") }
        assert.equal(404, last.status, mode .. ": " .. last.body)
        assert.equal("RESOURCE_NOT_EXISTS", decode(last).code)
      end
      assert.equal(1, #decode(sb:http{ target = list_target(ad, "&offset=0") }).data)
    end)

    it("lists 10,000 relations completely and in order, 50 a page", function()
      sb:control("POST", "/seed", { count = 10000 })
      local reqs = {}
      for page = 0, 199 do
        reqs[#reqs + 1] = { target = list_target({ business_type = "BUSIFAVOR_STOCK" },
                                                 "&limit=50&offset=" .. page) }
      end
      local pages = sb:http(reqs)
      assert.equal(200, #pages)
      local n = 0
      for page, resp in ipairs(pages) do
        assert.equal(200, resp.status)
        local list = decode(resp)
        assert.same({ 50, page - 1 }, { list.limit, list.offset })
        if page == 1 then assert.equal(10000, list.total_count) end
        assert.equal(50, #list.data)
        for _, rel in ipairs(list.data) do
          n = n + 1
          if rel.partner.appid ~= ("wxseed%06d"):format(n) then
            assert.equal(("wxseed%06d"):format(n), rel.partner.appid) -- one failure, not 10,000
          end
        end
      end
      assert.equal(10000, n)
    end)
  end)

  describe("/v3/certificates", function()
    it("returns the platform certificate encrypted under the APIv3 key", function()
      local resp = sb:http{ target = "/v3/certificates?algorithm_type=RSA" }
      assert.equal(200, resp.status)
      local entry = decode(resp).data[1]
      assert.equal(platform_cert:serial(), entry.serial_no)
      local enc = entry.encrypt_certificate
      assert.same({ "AEAD_AES_256_GCM", "certificate", 12 },
                  { enc.algorithm, enc.associated_data, #enc.nonce })
      local pem = assert(core.aes_gcm_decrypt(sb.config.apiv3_key, enc.nonce, "certificate", enc.ciphertext))
      assert.equal(read_file(sb.config.platform_certificate_files[1]), pem)
      local cert = assert(core.load_certificate(pem))
      assert.is_true(verifies(resp, cert:public_key()))
      assert.matches("%.%d%d%d%+08:00$", entry.effective_time)
      assert.matches("%+08:00$", entry.expire_time)
    end)
  end)

  describe("certificate rotation switches", function()
    it("advertises both platform certificates and signs with the second", function()
      local info = sb:control("GET", "/info")
      sb:configure{ advertised_certificates = { "primary", "secondary" }, signing_certificate = "secondary" }
      local resp = sb:http{ target = "/v3/certificates" }
      local data = decode(resp).data
      assert.same({ platform_cert:serial(), info.platform2_serial_no },
                  { data[1].serial_no, data[2].serial_no })
      assert.equal(info.platform2_serial_no, resp.headers["wechatpay-serial"])
      local second = assert(core.load_certificate(read_file(info.files.platform2_certificate_file)))
      assert.is_true(verifies(resp, second:public_key()))
    end)
  end)

  describe("faults", function()
    it("answers 500 to the next N requests without processing them", function()
      sb:fault{ fault = "500", count = 2 }
      local r = build(nil, "f1")
      assert.same({ 500, "SYSTEM_ERROR" }, { r.status, decode(r).code })
      assert.equal(0, sb:control("GET", "/relations").count)
      assert.equal(500, build(nil, "f1").status)
      assert.equal(200, build(nil, "f1").status)
      assert.equal(1, sb:control("GET", "/relations").count)
    end)

    it("answers 429 with Retry-After", function()
      sb:fault{ fault = "429", count = 1, retry_after = 1 }
      local r = build()
      assert.same({ 429, "FREQUENCY_LIMITED", "1" },
                  { r.status, decode(r).code, r.headers["retry-after"] })
      assert.equal(200, build().status)
    end)

    it("queues faults of one kind and combines kinds", function()
      sb:fault{ { fault = "500" }, { fault = "429" }, { fault = "unsigned" } }
      local rs = sb:http{ { target = "/v3/certificates" }, { target = "/v3/certificates" },
                          { target = "/v3/certificates" } }
      assert.same({ 500, 429, 200 }, { rs[1].status, rs[2].status, rs[3].status })
      assert.same({}, sb:control("GET", "/faults").faults)
    end)

    it("tampers with a signed body", function()
      sb:fault{ fault = "tamper" }
      local r = build()
      assert.equal(200, r.status)
      assert.truthy(cjson.decode(r.body))
      assert.is_false(verifies(r))
      assert.is_true(verifies(build()))
    end)

    it("omits the signature headers", function()
      sb:fault{ fault = "unsigned" }
      local r = build()
      assert.equal(200, r.status)
      assert.is_nil(r.headers["wechatpay-signature"])
      assert.is_nil(r.headers["wechatpay-timestamp"])
      assert.truthy(r.headers["request-id"])
    end)

    it("signs with a stale timestamp", function()
      sb:fault{ fault = "stale" }
      local r = build()
      assert.is_true(verifies(r))
      assert.is_true(os.time() - tonumber(r.headers["wechatpay-timestamp"]) >= 599)
    end)

    it("sends a WECHATPAY/SIGNTEST/ probe signature", function()
      sb:fault{ fault = "probe" }
      local r = build()
      local sig = r.headers["wechatpay-signature"]
      local b64 = sig:match("^WECHATPAY/SIGNTEST/(.+)$")
      assert.truthy(b64)
      assert.equal(256, #assert(core.base64_decode(b64)))
      assert.is_false(verifies(r))
    end)

    it("drops the connection without answering", function()
      sb:fault{ fault = "drop" }
      local r = sb:http{ target = "/v3/certificates" }
      assert.is_nil(r.status)
      local log = sb:requests()
      assert.same({ 0, "drop" }, { log[1].status, log[1].fault })
      assert.equal(200, sb:http{ target = "/v3/certificates" }.status)
    end)

    it("delays one answer without holding up another connection", function()
      sb:fault{ fault = "delay", seconds = 2 }
      local t0 = core.monotonic()
      local slow = sb:spawn{ target = "/v3/certificates" }
      -- Wait until the slow request has been received, so the fault is surely its own.
      local seen
      for _ = 1, 100 do
        seen = #sb:requests() > 0
        if seen then break end
        core.sleep(0.05)
      end
      assert.is_true(seen)
      local t1 = core.monotonic()
      assert.equal(200, sb:http{ target = "/v3/certificates" }.status)
      assert.is_true(core.monotonic() - t1 < 1.5)
      assert.equal(200, slow().status)
      assert.is_true(core.monotonic() - t0 >= 2)
    end)
  end)

  describe("HTTP", function()
    it("keeps connections alive", function()
      local rs = sb:http{ { target = "/v3/certificates" }, { target = "/v3/certificates" } }
      assert.same({ 200, 200 }, { rs[1].status, rs[2].status })
      local stats = sb:stats()
      assert.equal(1, stats.api_connections)
      assert.equal(2, stats.requests)
      local log = sb:requests()
      assert.equal(log[1].connection, log[2].connection)
    end)

    it("logs requests with lower-cased headers and raw bodies", function()
      build("wxlog", "log-key")
      local e = sb:requests()[1]
      assert.same({ 1, "POST", BUILD, 200 }, { e.seq, e.method, e.target, e.status })
      assert.equal("log-key", e.headers["idempotency-key"])
      assert.equal(body_for("wxlog"), e.body)
      sb:control("DELETE", "/requests")
      assert.same({}, sb:requests())
    end)

    it("answers Expect: 100-continue, refuses chunked bodies, 404s unknown paths", function()
      assert.equal(200, build(nil, nil, { headers = { "Expect: 100-continue" } }).status)
      local chunked = sb:http{ method = "POST", target = BUILD, body = body_for("wxc"),
                               idempotency_key = "c1", headers = { "Transfer-Encoding: chunked" } }
      assert.equal(411, chunked.status)
      local unknown = sb:http{ target = "/v3/nothing/here" }
      assert.equal(404, unknown.status)
      assert.truthy(decode(unknown).code)
    end)
  end)
end)
