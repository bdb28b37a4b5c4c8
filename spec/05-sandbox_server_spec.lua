-- The sandbox as a server users leave running: it keeps accepting past its descriptor limit,
-- answers hostile control requests without raising, closes a connection whose handler
-- raised, and bounds its request log in bytes. Real sandbox processes, real sockets and TLS.
local socket = require("socket")
local sandbox = require("spec.support.sandbox")
local h = require("spec.helpers")

-- Polls `fn` every 0.1 s until it returns a true value or `seconds` pass; returns its value.
-- The sandbox runs outside valgrind, so the limits are about the machine being busy only.
local function eventually(seconds, fn)
  local deadline = socket.gettime() + seconds * h.slowdown(2)
  repeat
    local v = fn()
    if v then return v end
    socket.sleep(0.1)
  until socket.gettime() > deadline
  return fn()
end

local function port_of(sb)
  return tonumber(sb.base_url:match(":(%d+)$"))
end

local function answers(sb)
  local r = sb:controls({ { "GET", "/stats" } }, 5)[1]
  return r.status == 200
end

describe("wxpay-sandbox as a server", function()
  describe("past its descriptor limit", function()
    local sb, conns
    setup(function() sb = sandbox.start{ nofile = 64 } end)
    teardown(function()
      for _, c in ipairs(conns or {}) do c:close() end
      if sb then sb:stop() end
    end)

    it("backs off and keeps accepting after a burst of connections", function()
      conns = {}
      for _ = 1, 150 do
        local c = socket.tcp()
        c:settimeout(5)
        if c:connect("127.0.0.1", port_of(sb)) then conns[#conns + 1] = c else c:close() end
      end
      assert.is_true(#conns > 64)
      -- Every descriptor it may have is taken (64), the rest wait in the listen backlog.
      assert.truthy(eventually(30, function() return (sb:open_files() or 0) >= 64 end))
      assert.is_true(sb:alive())
      for _, c in ipairs(conns) do c:close() end
      conns = nil
      assert.is_true(eventually(60, function() return answers(sb) end))
      assert.equal(200, sb:http{ target = "/v3/certificates" }.status)
      assert.is_true(sb:alive())
    end)
  end)

  describe("control requests", function()
    local sb
    setup(function() sb = sandbox.start() end)
    teardown(function() if sb then sb:stop() end end)
    before_each(function() sb:reset() end)

    -- Field names of each POST endpoint, and a body that gets past the first checks.
    local ROUTES = {
      { "/seed", { "count", "business_type", "stock_id", "partner_type", "prefix", "start" }, {} },
      { "/faults", { "fault", "count", "rate", "seconds", "retry_after", "path", "method", "seed" },
        { fault = "delay", seconds = 0 } },
      { "/config", { "mode", "offset_mode", "empty_list", "state_in_list", "signing_certificate",
                     "latency", "clock_offset", "unknown_stocks", "advertised_certificates" }, {} },
      { "/callbacks", { "url", "signer", "event_type", "resource", "max_attempts", "retry_scale",
                        "timeout", "probe", "tamper", "stale", "summary", "original_type", "associated_data" },
        { url = "https://127.0.0.1:1/notify", max_attempts = 1, retry_scale = 0 } },
      { "/busifavor/claim", { "stock_id", "openid", "appid", "coupon_code", "out_request_no",
                              "send_channel", "send_merchant", "max_attempts", "retry_scale" },
        { stock_id = "S", openid = "o", appid = "wx" } },
      { "/favor/redeem", { "coupon_id", "openid", "transaction_id", "consume_mchid", "goods_detail" },
        { coupon_id = "C", openid = "o" } },
      { "/favor/balance", { "balance" }, {} },
      { "/rotate", { "to" }, {} },
      { "/decrypt", { "ciphertext", "serial" }, { ciphertext = "AAAA" } },
    }
    local HOSTILE = { "{}", "[]", "[{}]", "null", "1e300", "-1", "0.5", '"x"', "true", "NaN",
                      "-Infinity", '{"a":NaN}', '[[[[[[[[1]]]]]]]]', '"' .. string.rep("a", 300) .. '"' }
    local BODIES = { "", "[]", "[1,2]", '"text"', "1", "null", "[{}]", "[[]]", '["x"]', "{", "{}" }

    local function json_object(t, name, raw)
      local parts = {}
      for k, v in pairs(t) do
        if k ~= name then
          parts[#parts + 1] = string.format("%q:%s", k, type(v) == "string" and string.format("%q", v) or tostring(v))
        end
      end
      if name then parts[#parts + 1] = string.format("%q:%s", name, raw) end
      return "{" .. table.concat(parts, ",") .. "}"
    end

    it("answer every hostile body with 4xx or 200, never a raise, and leak no descriptor", function()
      local list = {}
      for _, route in ipairs(ROUTES) do
        for _, body in ipairs(BODIES) do list[#list + 1] = { "POST", route[1], body = body } end
        for _, name in ipairs(route[2]) do
          for _, raw in ipairs(HOSTILE) do
            list[#list + 1] = { "POST", route[1], body = json_object({}, name, raw) }
            list[#list + 1] = { "POST", route[1], body = json_object(route[3], name, raw) }
          end
        end
      end
      local before = sb:open_files()
      local out = sb:controls(list, 10)
      local wrong = {}
      for i, r in ipairs(out) do
        if not (r.status == 200 or (r.status and r.status >= 400 and r.status < 500)) then
          wrong[#wrong + 1] = tostring(r.status) .. " for " .. list[i][2] .. " " .. list[i].body
        end
      end
      assert.same({}, wrong)
      assert.is_true(answers(sb))
      assert.truthy(eventually(20, function() return sb:open_files() <= before end),
        "descriptors: " .. tostring(before) .. " before, " .. tostring(sb:open_files()) .. " after")
    end)
  end)

  describe("a control handler that raises", function()
    local sb, script
    setup(function()
      local root = h.sh("pwd"):gsub("%s+$", "")
      script = os.tmpname()
      -- The sandbox program with one extra control path whose handler raises.
      h.write(script, table.concat({
        "#!/usr/bin/env lua5.4",
        string.format("package.path = %q .. package.path", root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;"),
        string.format("package.cpath = %q .. package.cpath", root .. "/build/?.so;"),
        'local control = require("wxpay.sandbox.control")',
        "local handle = control.handle",
        "control.handle = function(server, req)",
        '  if req.target == "/_sandbox/raise" then error("a handler that raises") end',
        "  return handle(server, req)",
        "end",
        'os.exit(require("wxpay.sandbox").main(arg), true)',
      }, "\n") .. "\n")
      os.execute("chmod 700 " .. h.q(script))
      sb = sandbox.start{ bin = script }
    end)
    teardown(function()
      if sb then sb:stop() end
      if script then os.remove(script) end
    end)

    it("still answers 500, closes the connection and leaks no descriptor", function()
      local before = sb:open_files()
      local list = {}
      for i = 1, 20 do list[i] = { "GET", "/raise" } end
      list[#list + 1] = { "GET", "/stats" }
      local out = sb:controls(list, 10)
      for i = 1, 20 do
        assert.equal(500, out[i].status)
        assert.equal("close", out[i].headers.connection)
      end
      assert.equal(200, out[21].status)
      assert.truthy(eventually(20, function() return sb:open_files() <= before end),
        "descriptors: " .. tostring(before) .. " before, " .. tostring(sb:open_files()) .. " after")
    end)
  end)

  describe("the request log", function()
    local sb
    setup(function() sb = sandbox.start() end)
    teardown(function() if sb then sb:stop() end end)

    it("is bounded in bytes, not only in entries, keeping the newest", function()
      local body = string.rep("x", 4 * 1024 * 1024)
      local reqs = {}
      for i = 1, 6 do
        reqs[i] = { method = "POST", target = "/v3/marketing/partnerships/build", body = body,
                    authorization = false }
      end
      for _, r in ipairs(sb:http(reqs)) do assert.equal(401, r.status) end
      local stats = sb:stats()
      assert.is_number(stats.log_max_bytes)
      assert.is_true(stats.log_bytes <= stats.log_max_bytes)
      assert.is_true(stats.log_entries >= 1 and stats.log_entries < 6)
      local kept = sb:control("GET", "/requests?since=5").requests
      assert.equal(1, #kept)
      assert.same({ 6, #body }, { kept[1].seq, #kept[1].body })
      sb:http{ target = "/v3/certificates" }
      assert.equal(7, sb:control("GET", "/requests?since=6").requests[1].seq)
    end)
  end)
end)
