-- The 发券 signatures (V2 rule, HMAC-SHA256 with the APIv2 key): every vector of the
-- protocol notes (one official, seven computed by three independent implementations), the
-- negative vectors refused or differing, fresh random vectors checked against the openssl
-- binary byte for byte, client.issue's checks and outputs, the jump code, and apiv2_key in
-- the configuration.
local wxpay = require("wxpay")
local core = require("wxpay.core")
local F = require("spec.support.fake")
local h = require("spec.helpers")

local KEY = "WECHATPAY_TEST_APIV2_KEY_32BYTES"

-- The parameters of a string to sign `a=1&b=2&key=K` (the key= pair dropped).
local function params_of(s)
  local p = {}
  for pair in s:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]+)=(.*)$")
    if k ~= "key" then p[k] = v end
  end
  return p
end

-- { id, key, string to sign, its length in bytes, expected }
local VECTORS = {
  { "V0", "192006250b4c09247ec02edce69f6a2d",
    "appid=wxd930ea5d5a258f4f&body=test&device_info=1000&mch_id=10000100&nonce_str=ibuaiVcKdpRxkhJA"
      .. "&key=192006250b4c09247ec02edce69f6a2d", 131,
    "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6" },
  { "P1", "xxxxx", "out_request_no0=abc123&send_coupon_merchant=10016226&stock_id0=1234567&key=xxxxx", 80,
    "18DB1CCF3272D9392ED327EBD970D1C522531A2A4195E04E33DB9599CFDDB723" },
  { "P2", "xxxxx", "out_request_no0=abc123&out_request_no1=123abc&send_coupon_merchant=10016226"
      .. "&stock_id0=1234567&stock_id1=2345678&key=xxxxx", 121,
    "CCFD9478637ECB6817C3E3A0EC66EBCA58E38ADC42C8D8FA3E1227E253AFD3D3" },
  { "P3", "xxxxx", "coupon_code0=asdsada&out_request_no0=abc123&send_coupon_merchant=10016226"
      .. "&stock_id0=1234567&key=xxxxx", 101,
    "E2B40FD0FBB257BAF9174CA49691604A44D80AF4DE22299757AADB83C441564D" },
  { "P4", "exposed_your_key_here_have_risks",
    "out_request_no0=1234567&out_request_no1=7654321&send_coupon_merchant=10016226&stock_id0=abc123"
      .. "&stock_id1=321cba&key=exposed_your_key_here_have_risks", 148,
    "20FB971D442A119C85CA1A49DBDEA61A14944D98AFC1D2B040030C5C8792A83A" },
  { "H1", "exposed_your_key_here_have_risks",
    "coupon_code=75345199&open_id=oVvBvwEurkeUJpBzX90-6MfCHbec&out_request_no=20191204550002"
      .. "&send_coupon_merchant=10016226&stock_id=12111100000001&key=exposed_your_key_here_have_risks", 178,
    "D4AE51952153389716232ABDE5124F2B1C94431BE7B647F6DB22BE7E4A5FBE33" },
  { "P5", KEY,
    "coupon_code0=ABC-123_x&create_coupon_merchant0=1900000001&customize_send_time0=2024-05-20T13:29:35+08:00"
      .. "&out_request_no0=1900000001|20240520*0001&send_coupon_merchant=1900000001&stock_id0=1286950000000039"
      .. "&key=" .. KEY, 241,
    "43402793CC91A26CF8A4BA43184C5816EDAB696ED5B4FA8783B8C1236B09A0EB" },
  { "H2", KEY,
    "customize_send_time=2024-05-20T13:29:35+08:00&open_id=oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
      .. "&out_request_no=190000000120240520000002&send_coupon_merchant=1900000001&stock_id=1286950000000039"
      .. "&key=" .. KEY, 217,
    "A8EF99067BAA34D908A302A235A595E569135A9D183DE715365102D18E7FCAAF" },
}
local P5_SIGN = VECTORS[7][5]
local P1 = params_of(VECTORS[2][3])

local function client(overrides)
  local o = { apiv2_key = KEY }
  for k, v in pairs(overrides or {}) do o[k] = v end
  return assert(wxpay.new(F.config(nil, o)))
end

describe("wxpay.sign_v2: the vectors", function()
  for _, v in ipairs(VECTORS) do
    it(v[1] .. " (" .. v[4] .. " bytes)", function()
      assert.equal(v[4], #v[3])
      assert.equal(v[5], wxpay.sign_v2(params_of(v[3]), v[2]))
      assert.equal(v[5], core.sign_v2(params_of(v[3]), v[2]))
    end)
  end

  it("V0 also holds with sign and empty values present (both left out)", function()
    local p = params_of(VECTORS[1][3])
    p.sign, p.attach = "9A0A8659F005D6984697E2CA0A9CF3B7", ""
    assert.equal(VECTORS[1][5], wxpay.sign_v2(p, VECTORS[1][2]))
  end)

  it("the negative vectors differ from the right one (and are what the mistakes give)", function()
    local right = VECTORS[2][5]
    local with_type = {}
    for k, v in pairs(P1) do with_type[k] = v end
    with_type.sign_type = "HMAC-SHA256"
    local wrong = wxpay.sign_v2(with_type, "xxxxx")
    assert.equal("7C50AB3786ED8EA54B767566EF3388FE623B87F70475F453AF8D0E908B77FF88", wrong)
    assert.not_equal(right, wrong)
    wrong = wxpay.sign_v2(P1, "WECHATPAY_TEST_APIV3_KEY_32BYTES")
    assert.equal("AD0308FB0ABA80D0DDE698D5295217C40B905669F002E103058333489A3B4222", wrong)
    assert.not_equal(right, wrong)
    local p5 = params_of(VECTORS[7][3])
    p5.out_request_no0 = "1900000001%7C20240520%2A0001"
    p5.customize_send_time0 = "2024-05-20T13%3A29%3A35%2B08%3A00"
    wrong = wxpay.sign_v2(p5, KEY)
    assert.equal("4AE540E58C58E6DCEFD1294198D1E4C87657E3CBB772757E04A8D61F2AA6257C", wrong)
    assert.not_equal(P5_SIGN, wrong)
    -- lower-case hex is never produced
    assert.equal(P5_SIGN:upper(), wxpay.sign_v2(params_of(VECTORS[7][3]), KEY))
    assert.not_equal(P5_SIGN:lower(), wxpay.sign_v2(params_of(VECTORS[7][3]), KEY))
  end)

  it("the client refuses the negative inputs: sign_type is not a 发券 parameter", function()
    local c = client()
    local attrs, err = c.issue.plugin_params{ send_coupon_params = {
      { stock_id = "1234567", sign_type = "HMAC-SHA256" } } }
    assert.is_nil(attrs)
    assert.equal("invalid_argument", err.kind)
    assert.matches("sign_type", err.field)
  end)
end)

describe("wxpay.sign_v2 against the openssl binary", function()
  local NAMES = { "stock_id", "out_request_no", "coupon_code", "open_id", "send_coupon_merchant",
                  "customize_send_time", "a", "B", "z9", "stock_id0", "stock_id1", "Zeta", "_x" }
  local CHARS = "abcXYZ0189|*_-+:/.%&=中文券 "
  local function random_value()
    local out = {}
    for _ = 1, math.random(1, 24) do
      local i = math.random(1, #CHARS)
      local b = CHARS:byte(i)
      if b >= 0x80 then out[#out + 1] = "券" else out[#out + 1] = string.char(b) end
    end
    return table.concat(out)
  end

  it("agrees byte for byte on 25 fresh random inputs", function()
    math.randomseed(os.time())
    local dir = h.tmpdir()
    for n = 1, 25 do
      local key = assert(core.nonce(32))
      local params, names = {}, {}
      for _, name in ipairs(NAMES) do
        if math.random() < 0.6 then params[name] = random_value() end
      end
      params.send_coupon_merchant = "1900000001"
      for name, v in pairs(params) do
        if v:find("[&=]") then params[name] = v:gsub("[&=]", "x") end -- V2 values have no separators
      end
      for name in pairs(params) do names[#names + 1] = name end
      table.sort(names)
      local parts = {}
      for i, name in ipairs(names) do parts[i] = name .. "=" .. params[name] end
      parts[#parts + 1] = "key=" .. key
      local file = dir .. "/msg" .. n
      h.write(file, table.concat(parts, "&"))
      local out, ok = h.sh("openssl dgst -sha256 -hmac " .. h.q(key) .. " " .. h.q(file))
      assert.is_true(ok)
      local expected = out:match("= (%x+)%s*$"):upper()
      assert.equal(expected, wxpay.sign_v2(params, key))
    end
  end)
end)

describe("wxpay.sign_v2 signs any UTF-8 text", function()
  -- The V2 rule signs raw UTF-8 bytes; WeChat's APIv3 JSON refusal of 4-byte characters
  -- does not make them unsignable (a coupon_code or a generic V2 value may hold one).
  it("4-byte characters (emoji) agree with an HMAC computed by the openssl binary", function()
    local dir = h.tmpdir()
    local key = "exposed_your_key_here_have_risks"
    local msg = "coupon_code0=\240\159\142\159券&out_request_no0=abc123&send_coupon_merchant=10016226"
      .. "&stock_id0=1234567&key=" .. key
    h.write(dir .. "/msg", msg)
    local out, ok = h.sh("openssl dgst -sha256 -hmac " .. h.q(key) .. " " .. h.q(dir .. "/msg"))
    assert.is_true(ok)
    local sign, err = wxpay.sign_v2(params_of(msg), key)
    assert.is_nil(err)
    assert.equal(out:match("= (%x+)%s*$"):upper(), sign)
  end)
  it("but not invalid UTF-8, also after a 4-byte character", function()
    for _, bad in ipairs{ "\255", "\240\159\142", "\240\159\142\159\255", "\244\144\128\128",
                          "\237\160\128" } do
      local sign, err = wxpay.sign_v2({ a = bad }, KEY)
      assert.is_nil(sign)
      assert.equal("a", err.field)
    end
  end)
end)

describe("core.sign_v2 at its edges (the C string building, under ASan and valgrind too)", function()
  local function openssl_hex(key, msg)
    local dir = h.tmpdir()
    h.write(dir .. "/msg", msg)
    local hexkey = key:gsub(".", function(c) return string.format("%02x", c:byte()) end)
    local out, ok = h.sh("openssl dgst -sha256 -mac HMAC -macopt hexkey:" .. hexkey .. " " .. h.q(dir .. "/msg"))
    assert.is_true(ok)
    return out:match("= (%x+)%s*$"):upper()
  end

  it("signs NUL bytes in names, values and the key as bytes, and sorts prefixes bytewise", function()
    local key = "k\0ey"
    assert.equal(openssl_hex(key, "a=1&a\0=x\0y&ab=2&key=" .. key),
      core.sign_v2({ ab = "2", ["a\0"] = "x\0y", a = "1", sign = "S", e = "" }, key))
  end)

  it("takes 256 parameters, 256 KiB and a 1024-byte key, and refuses one more", function()
    local many = {}
    for i = 1, 256 do many["n" .. i] = "v" end
    assert.matches("^%x+$", core.sign_v2(many, "k"))
    many.n257 = "v"
    local sign, err = core.sign_v2(many, "k")
    assert.is_nil(sign)
    assert.matches("too many", err)
    -- "a=" .. value .. "&key=k": 262144 bytes in all is the most
    local big = ("x"):rep(262144 - 8)
    assert.equal(openssl_hex("k", "a=" .. big .. "&key=k"), core.sign_v2({ a = big }, "k"))
    sign, err = core.sign_v2({ a = big .. "x" }, "k")
    assert.is_nil(sign)
    assert.matches("too long", err)
    local long_key = ("K"):rep(1024)
    assert.equal(openssl_hex(long_key, "a=1&key=" .. long_key), core.sign_v2({ a = "1" }, long_key))
    sign, err = core.sign_v2({ a = "1" }, long_key .. "K")
    assert.is_nil(sign)
    assert.is_nil(err:find("KKKK", 1, true))
    assert.is_nil(core.sign_v2({ a = "1" }, ""))
    assert.has_error(function() core.sign_v2({ a = 1 }, "k") end)
    assert.has_error(function() core.sign_v2({ "a" }, "k") end)
  end)
end)

describe("wxpay.sign_v2 refuses", function()
  it("tables, booleans, fractions and control characters among the values", function()
    for _, bad in ipairs{ { a = {} }, { a = true }, { a = 1.5 }, { a = "x\n" }, { a = "x\0y" }, { a = "\127" } } do
      local sign, err = wxpay.sign_v2(bad, KEY)
      assert.is_nil(sign)
      assert.equal("invalid_argument", err.kind)
      assert.equal("a", err.field)
    end
    assert.equal(wxpay.sign_v2({ a = "12" }, KEY), wxpay.sign_v2({ a = 12 }, KEY))
  end)
  it("a set with nothing to sign (no parameter, or only sign and empty values)", function()
    -- The V2 string would be "&key=..." or "key=...": no rule says which, no request has it.
    for _, empty in ipairs{ {}, { a = "" }, { sign = "ABC", b = "" } } do
      local sign, err = wxpay.sign_v2(empty, KEY)
      assert.is_nil(sign)
      assert.equal("invalid_argument", err.kind)
      assert.equal("params", err.field)
    end
  end)
  it("odd names and an empty key; a non-table raises", function()
    assert.is_nil(wxpay.sign_v2({ ["a=b"] = "1" }, KEY))
    assert.is_nil(wxpay.sign_v2({ [1] = "1" }, KEY))
    assert.is_nil(wxpay.sign_v2({ a = "1" }, ""))
    assert.has_error(function() wxpay.sign_v2("a=1", KEY) end)
    assert.has_error(function() wxpay.sign_v2({}, nil) end)
  end)
end)

describe("client.issue", function()
  it("plugin_params gives the P5 attributes", function()
    local item = { stock_id = "1286950000000039", out_request_no = "1900000001|20240520*0001",
                   coupon_code = "ABC-123_x", create_coupon_merchant = "1900000001",
                   customize_send_time = "2024-05-20T13:29:35+08:00" }
    local attrs, err, meta = client().issue.plugin_params{ send_coupon_params = { item } }
    assert.is_nil(err)
    assert.equal("1900000001", attrs.send_coupon_merchant)
    assert.equal(P5_SIGN, attrs.sign)
    assert.same({ item }, attrs.send_coupon_params)
    assert.same({ item.out_request_no }, meta.out_request_nos)
  end)

  it("h5_url gives the H2 URL, and the fragment can be set", function()
    local c = client()
    local url, err, meta = c.issue.h5_url{ stock_id = "1286950000000039", open_id = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
      out_request_no = "190000000120240520000002", customize_send_time = "2024-05-20T13:29:35+08:00" }
    assert.is_nil(err)
    assert.equal("https://action.weixin.qq.com/busifavor/getcouponinfo?stock_id=1286950000000039"
      .. "&out_request_no=190000000120240520000002"
      .. "&sign=A8EF99067BAA34D908A302A235A595E569135A9D183DE715365102D18E7FCAAF"
      .. "&send_coupon_merchant=1900000001&open_id=oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
      .. "&customize_send_time=2024-05-20T13%3A29%3A35%2B08%3A00#wechat_pay&wechat_redirect", url)
    assert.equal("190000000120240520000002", meta.out_request_no)
    url = c.issue.h5_url{ stock_id = "1", open_id = "o", fragment = "wechat_redirect" }
    assert.matches("#wechat_redirect$", url)
    assert.matches("out_request_no=%w+&", url) -- generated, letters and digits
  end)

  it("jsapi_cards signs like the plugin; the first cardExt carries merchant and sign", function()
    local cards, err, meta = client().issue.jsapi_cards{ { stock_id = "1234567", out_request_no = "abc123" },
      { stock_id = "2345678", out_request_no = "123abc" }, send_coupon_merchant = "10016226" }
    assert.is_nil(err)
    assert.equal("1234567", cards[1].cardId)
    local cjson = require("cjson")
    local first, second = cjson.decode(cards[1].cardExt), cjson.decode(cards[2].cardExt)
    assert.equal("10016226", first.send_coupon_merchant)
    assert.equal(wxpay.sign_v2(params_of(VECTORS[3][3]), KEY), first.sign)
    assert.is_nil(second.sign)
    assert.equal("123abc", second.out_request_no)
    assert.same({ "abc123", "123abc" }, meta.out_request_nos)
  end)

  it("jsapi_cards refuses a list with a hole or a fractional index instead of dropping cards", function()
    local c = client()
    for _, cards in ipairs{ { [1] = { stock_id = "1" }, [3] = { stock_id = "3" } },
                            { { stock_id = "1" }, [1.5] = { stock_id = "2" } },
                            { [0] = { stock_id = "0" }, { stock_id = "1" } } } do
      local out, err = c.issue.jsapi_cards(cards)
      assert.is_nil(out)
      assert.equal("invalid_argument", err.kind)
      assert.equal("cards", err.field)
    end
  end)

  it("takes an empty optional field as absent (V2: empty values are not signed), not out_request_no", function()
    local c = client()
    local attrs, err = c.issue.plugin_params{ send_coupon_merchant = "10016226", send_coupon_params = {
      { stock_id = "1234567", out_request_no = "abc123", coupon_code = "", create_coupon_merchant = "",
        customize_send_time = "" } } }
    assert.is_nil(err)
    assert.same({ stock_id = "1234567", out_request_no = "abc123" }, attrs.send_coupon_params[1])
    assert.equal(wxpay.sign_v2(P1, KEY), attrs.sign)
    local url = assert(c.issue.h5_url{ stock_id = "1", open_id = "o", out_request_no = "a1", coupon_code = "" })
    assert.is_nil(url:find("coupon_code", 1, true))
    local _
    _, err = c.issue.plugin_params{ send_coupon_params = { { stock_id = "1", out_request_no = "" } } }
    assert.equal("send_coupon_params[1].out_request_no", err.field)
  end)

  it("takes integer ids as their digits", function()
    local attrs = assert(client().issue.plugin_params{ send_coupon_merchant = 10016226,
      send_coupon_params = { { stock_id = 1234567, out_request_no = "abc123" } } })
    assert.equal("1234567", attrs.send_coupon_params[1].stock_id)
    assert.equal("10016226", attrs.send_coupon_merchant)
    assert.equal(wxpay.sign_v2(P1, KEY), attrs.sign)
  end)

  it("generates out_request_no, defaults send_coupon_merchant, signs the set it returns", function()
    local attrs, _, meta = client().issue.plugin_params{
      send_coupon_params = { { stock_id = "1" }, { stock_id = "2" } } }
    assert.equal("1900000001", attrs.send_coupon_merchant)
    assert.equal(2, #meta.out_request_nos)
    assert.not_equal(meta.out_request_nos[1], meta.out_request_nos[2])
    assert.equal(wxpay.sign_v2({ stock_id0 = "1", stock_id1 = "2", out_request_no0 = meta.out_request_nos[1],
      out_request_no1 = meta.out_request_nos[2], send_coupon_merchant = "1900000001" }, KEY), attrs.sign)
  end)

  it("checks everything before it signs, naming the field", function()
    local c = client()
    local eleven = {}
    for i = 1, 11 do eleven[i] = { stock_id = tostring(i) } end
    local cases = {
      { "send_coupon_params", function() return c.issue.plugin_params{ send_coupon_params = eleven } end },
      { "send_coupon_params", function() return c.issue.plugin_params{ send_coupon_params = {} } end },
      { "send_coupon_params[1].stock_id", function() return c.issue.plugin_params{ send_coupon_params = { {} } } end },
      { "send_coupon_params[1].out_request_no", function()
        return c.issue.plugin_params{ send_coupon_params = { { stock_id = "1", out_request_no = "a b" } } } end },
      { "send_coupon_params[1].out_request_no", function()
        return c.issue.plugin_params{ send_coupon_params = { { stock_id = "1", out_request_no = ("x"):rep(129) } } }
      end },
      { "send_coupon_params[1].customize_send_time", function()
        return c.issue.plugin_params{ send_coupon_params = { { stock_id = "1", customize_send_time = "2024-05-20" } } }
      end },
      { "send_coupon_params[1].stock_id", function()
        return c.issue.plugin_params{ send_coupon_params = { { stock_id = 12.5 } } } end },
      { "send_coupon_merchant", function()
        return c.issue.plugin_params{ send_coupon_merchant = "abc", send_coupon_params = { { stock_id = "1" } } } end },
      { "out_request_no", function()
        return c.issue.h5_url{ stock_id = "1", open_id = "o", out_request_no = "a|b" } end },
      { "open_id", function() return c.issue.h5_url{ stock_id = "1" } end },
      { "create_coupon_merchant", function()
        return c.issue.h5_url{ stock_id = "1", open_id = "o", create_coupon_merchant = "1" } end },
      { "fragment", function() return c.issue.h5_url{ stock_id = "1", open_id = "o", fragment = "#a b" } end },
      { "cards", function() return c.issue.jsapi_cards{} end },
    }
    for _, case in ipairs(cases) do
      local v, err = case[2]()
      assert.is_nil(v)
      assert.equal("invalid_argument", err.kind)
      assert.equal(case[1], err.field)
    end
    assert.has_error(function() c.issue.plugin_params() end)
    assert.has_error(function() c.issue.h5_url("x") end)
  end)

  it("without apiv2_key refuses with a config error naming it", function()
    local c = client{ apiv2_key = F.NIL }
    for _, call in ipairs{
      function() return c.issue.plugin_params{ send_coupon_params = { { stock_id = "1" } } } end,
      function() return c.issue.h5_url{ stock_id = "1", open_id = "o" } end,
      function() return c.issue.jsapi_cards{ { stock_id = "1" } } end,
    } do
      local v, err = call()
      assert.is_nil(v)
      assert.equal("config", err.kind)
      assert.equal("apiv2_key", err.field)
    end
  end)
end)

describe("apiv2_key in the configuration", function()
  it("must be 32 printable ASCII characters; errors and tostring never show it", function()
    for _, bad in ipairs{ KEY .. "X", "short", KEY:sub(1, 31) .. "\n", 12345 } do
      local c, err = wxpay.new(F.config(nil, { apiv2_key = bad }))
      assert.is_nil(c)
      assert.equal("apiv2_key", err.field)
      if type(bad) == "string" then assert.is_nil(tostring(err):find(bad, 1, true)) end
    end
    local c = client()
    assert.is_nil(tostring(c):find(KEY, 1, true))
    local _, err = c.issue.plugin_params{ send_coupon_params = { { stock_id = "1", coupon_code = "x\1" } } }
    assert.is_nil(tostring(err):find(KEY, 1, true))
  end)
end)

describe("client.busifavor.decrypt_jump_code", function()
  local nonce, code = "0123456789ab", "9876543210123456789012"
  local ct = assert(core.aes_gcm_encrypt(F.APIV3, nonce, "COUPON_CODE", code))
  local c = client()

  it("decrypts as given and as percent-encoded in the path, or with + turned into a space", function()
    assert.equal(code, c.busifavor.decrypt_jump_code{ ciphertext = ct, nonce = nonce })
    local enc = ct:gsub("[+/=]", function(ch) return string.format("%%%02X", ch:byte()) end)
    assert.equal(code, c.busifavor.decrypt_jump_code{ ciphertext = enc, nonce = nonce, stock_id = "1", openid = "o" })
    assert.equal(code, c.busifavor.decrypt_jump_code{ ciphertext = ct:gsub("%+", " "), nonce = nonce })
  end)
  it("refuses other associated data, a wrong key, bad input; needs apiv3_key", function()
    local other = assert(core.aes_gcm_encrypt(F.APIV3, nonce, "coupon", code))
    local v, err = c.busifavor.decrypt_jump_code{ ciphertext = other, nonce = nonce }
    assert.is_nil(v)
    assert.equal("signature", err.kind)
    assert.equal("decrypt", err.check)
    for field, p in pairs{ nonce = { ciphertext = ct, nonce = "short" }, ciphertext = { nonce = nonce },
                           associate = { ciphertext = ct, nonce = nonce, associate = "a b" } } do
      v, err = c.busifavor.decrypt_jump_code(p)
      assert.is_nil(v)
      assert.equal(field, err.field)
    end
    v, err = c.busifavor.decrypt_jump_code{ ciphertext = "!!!", nonce = nonce }
    assert.is_nil(v)
    assert.equal("ciphertext", err.field)
    local no_key = client{ apiv3_key = F.NIL }
    v, err = no_key.busifavor.decrypt_jump_code{ ciphertext = ct, nonce = nonce }
    assert.is_nil(v)
    assert.equal("config", err.kind)
    assert.equal("apiv3_key", err.field)
    assert.has_error(function() c.busifavor.decrypt_jump_code("x") end)
  end)
end)

teardown(function() h.cleanup() end)
