-- What `wxpay` makes of its inputs: a JSON configuration whose integral numbers a Lua 5.3+
-- decoder gives as floats (the Redis port 6379.0) reaches a real redis-server; a store it
-- cannot reach is said plainly on stderr, without the password; CSV output is safe to open
-- in a spreadsheet (formula cells neutralised).
local h = require("spec.helpers")
local socket = require("socket")
local sandbox = require("spec.support.sandbox")
local output = require("wxpay.cli.output")
local normalise = require("wxpay.config_normalise")
local cjson = require("cjson").new()

describe("wxpay.config_normalise", function()
  local transport = { request = function() end }
  local config = { timeout = 5.0, retry_base_delay = 0.2, store = { host = "127.0.0.1", port = 6379.0, db = 2.0 },
                   qps = { ["GET /v3/x"] = 10.0 }, transport = transport, mchid = "1900000001" }

  it("gives integral floats as integers, in plain tables too, and leaves the caller's table alone", function()
    local n = normalise(config)
    assert.equal(6379, n.store.port)
    assert.equal("6379", tostring(n.store.port))
    assert.equal("2", tostring(n.store.db))
    assert.equal("5", tostring(n.timeout))
    assert.equal("10", tostring(n.qps["GET /v3/x"]))
    assert.equal(0.2, n.retry_base_delay)
    assert.equal(transport, n.transport) -- not plain data: passed through
    assert.equal("1900000001", n.mchid)
    if math.type then
      assert.equal("float", math.type(config.store.port))
      assert.equal("integer", math.type(n.store.port))
    end
  end)

  it("returns the same table when nothing changes", function()
    local c = { mchid = "1", timeout = 5, store = { host = "h", port = 1 } }
    assert.equal(c, normalise(c))
  end)
end)

describe("CSV output", function()
  it("neutralises formula cells with a leading single quote, as OWASP advises", function()
    local rows = { { v = "=HYPERLINK(\"http://x\",\"y\")" }, { v = "+1+1" }, { v = "-2+3" }, { v = "@SUM(A1)" },
                   { v = "\t=1" }, { v = "\r=1" }, { v = "=1,2" } }
    local csv = output.csv(rows, { "v" })
    local parsed = assert(output.parse_csv(csv))
    assert.same({ "v" }, parsed[1])
    assert.equal("'=HYPERLINK(\"http://x\",\"y\")", parsed[2][1])
    assert.equal("'+1+1", parsed[3][1])
    assert.equal("'-2+3", parsed[4][1])
    assert.equal("'@SUM(A1)", parsed[5][1])
    assert.equal("'\t=1", parsed[6][1])
    assert.equal("'\r=1", parsed[7][1])
    assert.equal("'=1,2", parsed[8][1])
  end)

  it("leaves numbers, negative ones included, and ordinary text as they are", function()
    local rows = { { v = -10 }, { v = -2.5 }, { v = -2252.0 }, { v = "-10" }, { v = "-10.5" }, { v = "wx-1" },
                   { v = "a=b" }, { v = "" } }
    assert.equal("v\r\n-10\r\n-2.5\r\n-2252\r\n-10\r\n-10.5\r\nwx-1\r\na=b\r\n\r\n", output.csv(rows, { "v" }))
  end)
end)

describe("wxpay --config FILE.json with a shared store", function()
  local sb, srv, dir
  setup(function()
    sb = sandbox.start{ mode = "combined" }
    srv = require("spec.support.redis").start()
    dir = h.tmpdir()
  end)
  teardown(function()
    if srv then srv:stop() end
    if sb then sb:stop() end
    h.cleanup()
  end)

  -- The configuration as JSON text, with `store` written as given (numbers stay `6379`).
  local function config_file(store_json)
    local text = cjson.encode(sb.config):gsub("}$", ',"qps":50,"store":' .. store_json .. "}")
    local path = dir .. "/config.json"
    h.write(path, text)
    return path
  end

  local function wxpay(args)
    return require("spec.support.cli").run(dir, args)
  end

  -- Keys in the redis-server, by a plain RESP exchange.
  local function redis_keys()
    local c = socket.tcp()
    c:settimeout(5)
    assert(c:connect("127.0.0.1", srv.port))
    c:send("KEYS *\r\n")
    local head = c:receive("*l")
    local keys = {}
    for _ = 1, tonumber(head:match("^%*(%d+)")) or 0 do
      c:receive("*l")
      keys[#keys + 1] = c:receive("*l")
    end
    c:close()
    return keys
  end

  local LIST = " partnerships list --business-type FAVOR_STOCK --stock 7001 --output json"

  it("reaches Redis with the table form (the port a JSON number) and warns about nothing", function()
    local path = config_file(string.format('{"host":"127.0.0.1","port":%d,"timeout":2}', srv.port))
    local _, err, rc = wxpay("--config " .. h.q(path) .. LIST)
    assert.equal(0, rc, err)
    assert.falsy(err:find("warning", 1, true), err)
    local budget
    for _, k in ipairs(redis_keys()) do
      if k:find("^wxpay:" .. sb.config.mchid .. ":qps") then budget = k end
    end
    assert.truthy(budget, "no rate budget key in Redis: " .. table.concat(redis_keys(), " "))
  end)

  it("says plainly on stderr, without the password, that the store cannot be reached", function()
    local path = config_file('{"host":"127.0.0.1","port":1,"password":"pw-Secret-42","timeout":1}')
    local out, err, rc = wxpay("--config " .. h.q(path) .. LIST)
    assert.equal(0, rc, err) -- it still works, alone
    assert.equal("[]\n", out)
    local line = err:match("wxpay: warning: the store redis 127%.0%.0%.1:1 cannot be reached[^\n]*")
    assert.truthy(line, err)
    assert.truthy(line:find("rate budget", 1, true), line)
    assert.falsy(err:find("pw-Secret-42", 1, true), err)
  end)
end)
