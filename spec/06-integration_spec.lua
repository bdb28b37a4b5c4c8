-- The client against the real sandbox over real HTTPS: real signatures both ways, real
-- libcurl, one kept-alive connection. (Unit specs with a fake transport are 03 and 04.)
local wxpay = require("wxpay")
local core = require("wxpay.core")
local sandbox = require("spec.support.sandbox")
local h = require("spec.helpers")

local STOCK = { business_type = "BUSIFAVOR_STOCK", stock_id = "2433405" }

local sb
setup(function() sb = sandbox.start{ mode = "combined" } end)
teardown(function()
  if sb then sb:stop() end
  h.cleanup()
end)

local function client(overrides)
  local cfg = {}
  for k, v in pairs(sb.config) do cfg[k] = v end
  cfg.max_retries = 0 -- faults must surface here; retries are 07's subject
  for k, v in pairs(overrides or {}) do cfg[k] = v end
  return assert(wxpay.new(cfg))
end

local function params(appid, stock)
  return { partner = { type = "APPID", appid = appid },
           authorized_data = { business_type = "BUSIFAVOR_STOCK", stock_id = stock or STOCK.stock_id } }
end

local function count(iter)
  local n, seen, dup = 0, {}, 0
  for rel in iter do
    n = n + 1
    local id = rel.partner.appid or rel.partner.merchant_id
    if seen[id] then dup = dup + 1 end
    seen[id] = true
  end
  return n, dup
end

describe("build, replay, terminate", function()
  before_each(function() sb:reset() end)

  it("builds a partnership with everything the spec asks the request to carry", function()
    local c = client()
    local rel, err, meta = c.partnerships.build(params("wx4e1916a585d1f4e9"), { idempotency_key = "camp42-wx4e1916" })
    assert.is_nil(err)
    assert.equal("ESTABLISHED", rel.state)
    assert.same({ type = "APPID", appid = "wx4e1916a585d1f4e9" }, rel.partner)
    assert.same(STOCK, rel.authorized_data)
    assert.equal(200, meta.status)
    assert.equal("camp42-wx4e1916", meta.idempotency_key)
    assert.equal(1, meta.attempts)
    assert.is_string(meta.request_id)
    local reqs = sb:requests()
    assert.equal(1, #reqs)
    local r = reqs[1]
    assert.equal("POST", r.method)
    assert.equal("/v3/marketing/partnerships/build", r.target)
    assert.equal('{"partner":{"type":"APPID","appid":"wx4e1916a585d1f4e9"},'
      .. '"authorized_data":{"business_type":"BUSIFAVOR_STOCK","stock_id":"2433405"}}', r.body)
    assert.equal("camp42-wx4e1916", r.headers["idempotency-key"])
    assert.equal("application/json", r.headers["accept"])
    assert.equal("application/json", r.headers["content-type"])
    assert.equal(sb.config.wechatpay_public_key_id, r.headers["wechatpay-serial"])
    local v = core.versions()
    local ua = "^wxpay/" .. wxpay._VERSION:gsub("%.", "%%.") .. " %(Linux/[^)]+%) Lua/%S+ "
      .. (jit and "LuaJIT/%S+ " or "") .. "libcurl/" .. v.libcurl:gsub("%.", "%%.") .. " OpenSSL/%S+$"
    assert.matches(ua, r.headers["user-agent"])
    assert.matches('^WECHATPAY2%-SHA256%-RSA2048 mchid="' .. sb.config.mchid .. '",nonce_str="%w+",timestamp="%d+",'
      .. 'serial_no="' .. sb.config.serial_no .. '",signature="[%w+/=]+"$', r.headers["authorization"])
  end)

  it("generates an Idempotency-Key when none is given and returns it", function()
    local c = client()
    local _, err, meta = c.partnerships.build(params("wxgenerated0001"))
    assert.is_nil(err)
    assert.matches("^[A-Za-z0-9]+$", meta.idempotency_key)
    assert.equal(meta.idempotency_key, sb:requests()[1].headers["idempotency-key"])
  end)

  it("replays a build sent again with the same key, and refuses a second key for the same relation", function()
    local c = client()
    local first = assert(c.partnerships.build(params("wxreplay0001"), { idempotency_key = "k-replay-1" }))
    local again, err = c.partnerships.build(params("wxreplay0001"), { idempotency_key = "k-replay-1" })
    assert.is_nil(err)
    assert.same(first, again)
    assert.equal(1, sb:control("GET", "/relations").count)
    local dup, derr, dmeta = c.partnerships.build(params("wxreplay0001"), { idempotency_key = "k-replay-2" })
    assert.is_nil(dup)
    assert.is_nil(dmeta)
    assert.equal("api", derr.kind)
    assert.equal(400, derr.status)
    assert.equal("INVALID_REQUEST", derr.code)
    assert.is_false(derr.retryable)
    assert.equal("k-replay-2", derr.idempotency_key)
    assert.is_string(derr.request_id)
  end)

  it("terminates, lists the relation as terminated, and re-establishes it", function()
    local c = client()
    assert(c.partnerships.build(params("wxterm0001")))
    local res, err = c.partnerships.terminate(params("wxterm0001"), { idempotency_key = "end-wxterm0001" })
    assert.is_nil(err)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%d%+08:00$", res.terminate_time)
    local rows = {}
    for rel in c.partnerships.list{ authorized_data = STOCK } do rows[#rows + 1] = rel end
    assert.equal(1, #rows)
    assert.equal("TERMINATED", rows[1].state)
    assert.equal(res.terminate_time, rows[1].terminate_time)
    local again, aerr = c.partnerships.terminate(params("wxterm0001"))
    assert.is_nil(again)
    assert.equal(400, aerr.status)
    local _, nerr = c.partnerships.terminate(params("wxnever0001"))
    assert.equal(404, nerr.status)
    assert.equal("RESOURCE_NOT_EXISTS", nerr.code)
    local rebuilt = assert(c.partnerships.build(params("wxterm0001")))
    assert.equal("ESTABLISHED", rebuilt.state)
  end)

  it("keeps one TCP connection for many requests", function()
    local c = client()
    for i = 1, 30 do assert(c.partnerships.build(params(("wxconn%04d"):format(i)))) end
    assert.equal(1, sb:stats().api_connections)
  end)

  it("works through the module-level default client", function()
    local cfg = {}
    for k, v in pairs(sb.config) do cfg[k] = v end
    assert(wxpay.configure(cfg))
    local rel = assert(wxpay.partnerships.build(params("wxdefault0001")))
    assert.equal("ESTABLISHED", rel.state)
    assert.equal(1, count(wxpay.partnerships.list{ authorized_data = STOCK }))
    local page = assert(wxpay.request{ method = "GET", path = "/v3/marketing/partnerships",
      query = { { "authorized_data", STOCK }, { "limit", 10 }, { "offset", 0 } } })
    assert.equal(1, page.total_count)
  end)
end)

describe("listing", function()
  local c
  setup(function()
    sb:reset()
    c = client()
    for _, n in ipairs({ 1, 50, 51, 10000 }) do
      sb:control("POST", "/seed", { count = n, business_type = "BUSIFAVOR_STOCK", stock_id = "S" .. n,
                                    prefix = "wxs" .. n .. "x" })
    end
  end)

  local function list_requests(before)
    local n = 0
    for _, r in ipairs(sb:requests()) do
      if r.seq > before and r.target:find("^/v3/marketing/partnerships%?") then n = n + 1 end
    end
    return n
  end

  local function last_seq()
    local reqs = sb:requests()
    return #reqs > 0 and reqs[#reqs].seq or 0
  end

  for _, mode in ipairs({ "page", "item" }) do
    for _, n in ipairs({ 1, 50, 51, 10000 }) do
      it(("iterates %d relations in %s offset mode, fetching %d pages lazily"):format(n, mode, math.ceil(n / 50)),
        function()
          sb:configure{ offset_mode = mode }
          local before = last_seq()
          local got, dup = count(c.partnerships.list{ authorized_data = { business_type = "BUSIFAVOR_STOCK",
            stock_id = "S" .. n }, offset_mode = mode })
          assert.equal(n, got)
          assert.equal(0, dup)
          assert.equal(math.ceil(n / 50), list_requests(before))
        end)
    end
  end

  it("fetches the next page only when the loop needs it", function()
    sb:configure{ offset_mode = "page" }
    local before = last_seq()
    local it = c.partnerships.list{ authorized_data = { business_type = "BUSIFAVOR_STOCK", stock_id = "S10000" },
                                    limit = 50 }
    assert.equal(0, list_requests(before))
    for _ = 1, 50 do assert.is_table(it()) end
    assert.equal(1, list_requests(before))
    assert.is_table(it())
    assert.equal(2, list_requests(before))
  end)

  it("gives zero iterations for an empty result, as 404 or as an empty 200", function()
    for _, mode in ipairs({ "404", "200" }) do
      sb:configure{ empty_list = mode, offset_mode = "page" }
      assert.equal(0, (count(c.partnerships.list{ authorized_data = { business_type = "FAVOR_STOCK",
        stock_id = "NONE" } })))
    end
    sb:configure{ empty_list = "404" }
    -- page too: any 404 from the list endpoint is an empty page
    local page, err, meta = c.partnerships.page{
      authorized_data = { business_type = "FAVOR_STOCK", stock_id = "NONE" } }
    assert.is_nil(err)
    assert.same({}, page.data)
    assert.equal(0, page.total_count)
    assert.is_true(meta.empty)
    assert.equal(404, meta.status)
  end)

  it("page() returns one raw page with total_count at offset 0", function()
    sb:configure{ offset_mode = "page" }
    local page = assert(c.partnerships.page{ authorized_data = { business_type = "BUSIFAVOR_STOCK",
      stock_id = "S51" }, limit = 20, offset = 0 })
    assert.equal(20, #page.data)
    assert.equal(51, page.total_count)
    assert.equal(20, page.limit)
    assert.equal(0, page.offset)
    local second = assert(c.partnerships.page{ authorized_data = { business_type = "BUSIFAVOR_STOCK",
      stock_id = "S51" }, limit = 20, offset = 2 })
    assert.equal(11, #second.data)
  end)

  it("raises the structured error inside the loop, for pcall", function()
    sb:configure{ offset_mode = "page" }
    local it = c.partnerships.list{ authorized_data = { business_type = "BUSIFAVOR_STOCK", stock_id = "S51" } }
    for _ = 1, 50 do it() end
    sb:fault{ fault = "500", count = 1 }
    local ok, err = pcall(it)
    assert.is_false(ok)
    assert.equal("api", err.kind)
    assert.equal(500, err.status)
    assert.is_true(err.retryable)
    assert.matches("SYSTEM_ERROR", tostring(err))
  end)
end)

describe("bad input never reaches the server", function()
  local long = string.rep("a", 33)
  local cases = {
    { "build", { partner = { type = "OPENID", appid = "wx1" }, authorized_data = STOCK }, nil, "partner.type" },
    { "build", { partner = { type = "APPID" }, authorized_data = STOCK }, nil, "partner.appid" },
    { "build", { partner = { type = "MERCHANT" }, authorized_data = { business_type = "BUSIFAVOR_STOCK",
      stock_id = "1" } }, nil, "partner.merchant_id" },
    { "build", { partner = { type = "APPID", appid = long }, authorized_data = STOCK }, nil, "partner.appid" },
    { "build", { partner = { type = "MERCHANT", merchant_id = "123" }, authorized_data = {
      business_type = "BUSIFAVOR_STOCK", stock_id = "1" } }, nil, "partner.merchant_id" },
    { "build", { partner = { type = "APPID", appid = "wx1" }, authorized_data = { business_type = "COUPON",
      stock_id = "1" } }, nil, "authorized_data.business_type" },
    { "build", { partner = { type = "APPID", appid = "wx1" }, authorized_data = { business_type = "FAVOR_STOCK" } },
      nil, "authorized_data.stock_id" },
    { "build", { partner = { type = "APPID", appid = "wx1" }, authorized_data = { business_type = "FAVOR_STOCK",
      stock_id = string.rep("1", 21) } }, nil, "authorized_data.stock_id" },
    { "build", { partner = { type = "MERCHANT", merchant_id = "12345678" }, authorized_data = {
      business_type = "FAVOR_STOCK", stock_id = "1" } }, nil, "partner.type" },
    { "build", { partner = { type = "APPID", appid = "wx\240\159\152\128" }, authorized_data = STOCK }, nil,
      "partner.appid" },
    { "build", { partner = { type = "APPID", appid = "wx1" }, authorized_data = { business_type = "FAVOR_STOCK",
      stock_id = 2433405 } }, nil, "authorized_data.stock_id" },
    { "build", params("wx1"), { idempotency_key = "has space" }, "opts.idempotency_key" },
    { "build", params("wx1"), { idempotency_key = string.rep("k", 49) }, "opts.idempotency_key" },
    { "terminate", params("wx1"), { idempotency_key = "" }, "opts.idempotency_key" },
    { "page", { authorized_data = STOCK, limit = 51 }, nil, "limit" },
    { "page", { authorized_data = STOCK, limit = 0 }, nil, "limit" },
    { "page", { authorized_data = STOCK, offset = -1 }, nil, "offset" },
    { "page", { authorized_data = STOCK, limit = 2.5 }, nil, "limit" },
    { "page", { partner = { type = "APPID" } }, nil, "authorized_data" },
  }
  for i, case in ipairs(cases) do
    it(("%d: %s refuses a bad %s"):format(i, case[1], case[4]), function()
      sb:reset()
      local c = client()
      local res, err = c.partnerships[case[1]](case[2], case[3])
      assert.is_nil(res)
      assert.equal("invalid_argument", err.kind)
      assert.equal(case[4], err.field)
      assert.equal(0, #sb:requests())
      assert.equal(0, sb:stats().requests)
    end)
  end

  it("refuses dot segments and an 8 KB target without opening a connection", function()
    sb:reset()
    local c = client()
    local before = sb:stats().connections
    for _, path in ipairs({ "/v3/../_sandbox/info", "/v3/marketing/partnerships/../../h/ok",
                            "/v3/%2e%2e/_sandbox/stats", "/v3/.%2E/_sandbox/reset", "/v3/./certificates",
                            "/v3/" .. string.rep("a", 8200) }) do
      local data, err = c.request{ method = "GET", path = path }
      assert.is_nil(data)
      assert.equal("invalid_argument", err.kind)
      assert.equal("path", err.field)
    end
    local after = sb:stats()
    -- the only connection since is the control call reading these counters
    assert.equal(before + 1, after.connections)
    assert.equal(0, after.requests)
    assert.equal(0, #sb:requests())
  end)

  it("list raises on bad input before any request", function()
    sb:reset()
    local c = client()
    local ok, err = pcall(c.partnerships.list, { authorized_data = STOCK, limit = 60 })
    assert.is_false(ok)
    assert.equal("invalid_argument", err.kind)
    assert.equal(0, sb:stats().requests)
  end)
end)

describe("fault switches", function()
  before_each(function() sb:reset() end)

  for _, f in ipairs({ "tamper", "unsigned", "stale", "probe" }) do
    it(("a %s response is a signature error and its data is never returned"):format(f), function()
      local c = client()
      sb:fault{ fault = f, count = 1 }
      local rel, err, meta = c.partnerships.build(params("wxfault" .. f))
      assert.is_nil(rel)
      assert.is_nil(meta)
      assert.equal("signature", err.kind)
      assert.equal(200, err.status)
      assert.is_false(err.retryable)
      if f == "probe" then assert.is_true(err.probe) end
      assert.is_nil(err.data)
      assert.equal(1, #sb:requests(), "a signature failure is never retried")
    end)
  end

  it("a 500 is an api error with retryable = true", function()
    local c = client()
    sb:fault{ fault = "500", count = 1 }
    local _, err = c.partnerships.build(params("wx500"))
    assert.equal("api", err.kind)
    assert.equal(500, err.status)
    assert.equal("SYSTEM_ERROR", err.code)
    assert.is_true(err.retryable)
    assert.equal(1, err.attempts)
    assert.equal(0, sb:control("GET", "/relations").count)
  end)

  it("a 429 is an api error with retryable = true", function()
    local c = client()
    sb:fault{ fault = "429", count = 1 }
    local _, err = c.partnerships.build(params("wx429"))
    assert.equal(429, err.status)
    assert.is_true(err.retryable)
  end)

  it("a dropped connection is a network error", function()
    local c = client()
    sb:fault{ fault = "drop", count = 2 } -- libcurl silently re-sends once on a reused connection
    local _, err = c.partnerships.build(params("wxdrop"))
    assert.equal("network", err.kind)
    assert.is_true(err.retryable)
  end)

  it("a delayed answer past the timeout is a timeout error", function()
    local c = client{ timeout = 0.5 }
    sb:fault{ fault = "delay", seconds = 2, count = 1 }
    local t0 = core.monotonic()
    local _, err = c.partnerships.build(params("wxslow"))
    assert.equal("timeout", err.kind)
    assert.truthy(core.monotonic() - t0 < 1.5)
  end)
end)

describe("configuration against the sandbox's files", function()
  it("refuses a certificate that does not match the key, a short APIv3 key and a bad base_url", function()
    local dir = h.tmpdir()
    local other = h.openssl_keypair(dir, "other")
    local function try(k, v)
      local cfg = {}
      for a, b in pairs(sb.config) do cfg[a] = b end
      cfg[k] = v
      local c, err = wxpay.new(cfg)
      assert.is_nil(c)
      assert.equal("config", err.kind)
      return err
    end
    assert.equal("merchant_certificate_file", try("merchant_certificate_file", other.cert).field)
    assert.equal("serial_no", try("serial_no", "0123456789ABCDEF").field)
    assert.equal("apiv3_key", try("apiv3_key", "short").field)
    assert.equal("base_url", try("base_url", "ftp://127.0.0.1").field)
    assert.equal("private_key_file", try("private_key_file", dir .. "/missing.pem").field)
    assert.equal("mchid", try("mchid", nil).field)
  end)

  it("does not retry a host name the certificate does not name, and says so", function()
    sb:reset()
    -- The sandbox's certificate names localhost and 127.0.0.1; libcurl resolves any
    -- *.localhost name to the loopback address itself (RFC 6761), so this reaches it.
    local base = sb.config.base_url:gsub("^https://[^:/]+", "https://wxpay.localhost")
    local c = client{ base_url = base, backup_url = false, max_retries = 2 }
    local _, err = c.partnerships.build(params("wxhost"))
    if err.curl_code == 6 then pending("this libcurl does not resolve *.localhost") return end
    assert.equal("network", err.kind)
    assert.equal(60, err.curl_code) -- CURLE_PEER_FAILED_VERIFICATION
    assert.is_false(err.connected)
    assert.is_false(err.retryable)
    assert.equal(1, err.attempts)
    assert.truthy(err.hint:find("host name wxpay.localhost", 1, true), err.hint)
    assert.truthy(tostring(err):find("localhost for the sandbox", 1, true), tostring(err))
    assert.equal(0, sb:stats().requests)
  end)

  it("verifies the sandbox's TLS certificate, always", function()
    sb:reset()
    local cfg = {}
    for k, v in pairs(sb.config) do cfg[k] = v end
    cfg.ca_file = nil -- the system store does not know the sandbox's CA
    cfg.backup_url = false
    cfg.max_retries = 0
    local c = assert(wxpay.new(cfg))
    local _, err = c.partnerships.build(params("wxtls"))
    assert.equal("network", err.kind)
    assert.equal(0, sb:stats().requests)
  end)
end)
