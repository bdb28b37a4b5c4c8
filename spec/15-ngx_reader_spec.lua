-- The ngx transport's HTTP/1.1 reader against hostile and random byte streams, through fake
-- cosockets (spec/support/cosocket.lua): no nginx needed, so it runs under Lua 5.4 and
-- LuaJIT alike. The same hostile upstreams against a real nginx are in spec/14.
local F = require("spec.support.cosocket")
local helpers = require("spec.helpers")

local MAX_BODY, MAX_HEADERS = 16 * 1024 * 1024, 256 * 1024

-- An endless stream: `head` first, then `fill` repeated for ever (or until `total` bytes).
local function endless(head, fill, total)
  local sent, block = 0, string.rep(fill, 64 * 1024 / #fill)
  return function(max)
    if total and sent >= total then return nil end
    local s
    if sent < #head then s = head:sub(sent + 1, sent + max) else s = block:sub(1, max) end
    sent = sent + #s
    return s
  end
end

describe("wxpay.transport.ngx against hostile upstreams (fake cosockets)", function()
  local clock, server, saved_ngx

  before_each(function()
    clock = F.clock(1000)
    server = { connections = {} }
    saved_ngx = rawget(_G, "ngx")
    rawset(_G, "ngx", F.ngx(server, clock))
    package.loaded["wxpay.transport.ngx"] = nil
  end)

  after_each(function()
    rawset(_G, "ngx", saved_ngx)
    package.loaded["wxpay.transport.ngx"] = nil
  end)

  -- One connection answering `answers` in turn; returns the connection.
  local function serve(spec)
    spec.clock = clock
    local c = F.connection(spec)
    server.connections[#server.connections + 1] = c
    return c
  end

  local function get(t, extra)
    local req = { method = "GET", url = "https://h/v3/x", timeout = 10, connect_timeout = 2 }
    for k, v in pairs(extra or {}) do req[k] = v end
    local ok, resp, err = pcall(t.request, req)
    assert(ok, "the transport raised: " .. tostring(resp))
    return resp, err
  end

  local function transport()
    return require("wxpay.transport.ngx").new()
  end

  it("returns an error, never raises, on a chunk size that is not hex", function()
    serve{ answers = { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzzzz\r\nhello\r\n0\r\n\r\n" } }
    local resp, err = get(transport())
    assert.is_nil(resp)
    assert.same({ "network", true }, { err.kind, err.connected })
    assert.matches("malformed chunk size", err.message, 1, true)
  end)

  it("returns error objects shaped like the client's, with the local code", function()
    serve{ answers = { "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort" } }
    local _, err = get(transport())
    assert.same({ "network", "NETWORK_ERROR", true, true }, { err.kind, err.code, err.connected, err.retryable })
    assert.matches("^wxpay: network error NETWORK_ERROR: receiving from h:443 failed", tostring(err))
    local _, perr = get(require("wxpay.transport.ngx").new{ proxy = "http://p:3128" })
    assert.same({ "network", "NETWORK_ERROR", false }, { perr.kind, perr.code, perr.connected })
    assert.matches("^wxpay: network error", tostring(perr))
  end)

  it("stops an endless close-delimited body at 16 MB, reading in bounded pieces", function()
    local c = serve{ answers = { endless("HTTP/1.1 200 OK\r\n\r\n", "x", 40 * 1024 * 1024) } }
    local resp, err = get(transport())
    assert.is_nil(resp)
    assert.equal("network", err.kind)
    assert.matches("response body over 16777216 bytes", err.message, 1, true)
    assert.is_true(c.max_piece <= 64 * 1024, "one read returned " .. c.max_piece .. " bytes")
    assert.is_true(c.received <= MAX_BODY + 2 * 64 * 1024, "read " .. c.received .. " bytes")
  end)

  it("stops a giant header line at 256 KB", function()
    local c = serve{ answers = { endless("HTTP/1.1 200 OK\r\nX-Big: ", "a", 8 * 1024 * 1024) } }
    local resp, err = get(transport())
    assert.is_nil(resp)
    assert.equal("network", err.kind)
    assert.matches("response headers over 262144 bytes", err.message, 1, true)
    assert.is_true(c.received <= MAX_HEADERS + 64 * 1024, "read " .. c.received .. " bytes")
  end)

  it("stops a giant chunk-size line after a few KB", function()
    local c = serve{ answers = { endless("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;", "e",
      8 * 1024 * 1024) } }
    local resp, err = get(transport())
    assert.is_nil(resp)
    assert.equal("network", err.kind)
    assert.matches("chunk size line over 4096 bytes", err.message, 1, true)
    assert.is_true(c.received <= 2 * 64 * 1024, "read " .. c.received .. " bytes")
  end)

  it("refuses Content-Length or chunks over 16 MB before reading them", function()
    serve{ answers = { "HTTP/1.1 200 OK\r\nContent-Length: 16777217\r\n\r\n" } }
    serve{ answers = { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n" } }
    local t = transport()
    for _ = 1, 2 do
      local resp, err = get(t)
      assert.is_nil(resp)
      assert.matches("response body over 16777216 bytes", err.message, 1, true)
    end
  end)

  it("bounds the whole attempt by timeout: a 1 byte/s drip is cut off at the deadline", function()
    local answer = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"
    serve{ answers = { answer }, piece = 1, delay = 1 }
    local t0 = clock.t
    local resp, err = get(transport(), { timeout = 4 })
    assert.is_nil(resp)
    assert.same({ "timeout", true }, { err.kind, err.connected })
    assert.is_true(clock.t - t0 <= 4.001, "took " .. (clock.t - t0) .. " s")
    assert.is_true(clock.t - t0 >= 3.9, "took " .. (clock.t - t0) .. " s")
  end)

  it("answers within the deadline still arrive when they drip fast enough", function()
    serve{ answers = { "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" }, piece = 3, delay = 0.01 }
    local resp = assert(get(transport(), { timeout = 4 }))
    assert.same({ 200, "ok" }, { resp.status, resp.body })
  end)

  local OK = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

  it("sends a fresh_connect request on a connection of its own, never a pooled one", function()
    local first = serve{ answers = { OK, OK, OK } }
    local second = serve{ answers = { OK } }
    local t = transport()
    assert(get(t))                                        -- opens `first`, kept alive
    assert(get(t, { method = "POST", body = "{}", fresh_connect = true }))
    assert.equal(2, server.connects)
    assert.equal(1, #first.sent)
    assert.equal(1, #second.sent)
    assert.matches("^POST ", second.sent[1])
    assert.is_true(second.closed)                         -- not kept for others either
    assert(get(t))                                        -- a plain request reuses `first`
    assert.equal(2, #first.sent)
    assert.same({ requests = 3, connects = 2, reused = 1 }, t.stats())
  end)

  it("does not resend a fresh_connect request whose connection broke", function()
    serve{ answers = {} } -- accepts, then closes without answering
    serve{ answers = { OK } }
    local resp, err = get(transport(), { method = "POST", body = "{}", fresh_connect = true })
    assert.is_nil(resp)
    assert.same({ "network", true }, { err.kind, err.connected })
    assert.equal(1, server.connects)
  end)

  it("still resends a plain request once when its pooled connection went stale", function()
    local first = serve{ answers = { OK } } -- then closes
    serve{ answers = { OK } }
    local t = transport()
    assert(get(t))
    assert(get(t))
    assert.equal(2, server.connects)
    assert.equal(2, #first.sent)
  end)

  it("does not pool a connection whose answer had both chunked framing and a Content-Length", function()
    local c = serve{ answers = { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n"
      .. "2\r\nok\r\n0\r\n\r\n", OK } }
    serve{ answers = { OK } }
    local t = transport()
    local resp = assert(get(t))
    assert.equal("ok", resp.body)
    assert.is_true(c.closed)
    assert(get(t))
    assert.equal(2, server.connects)
    assert.equal(1, #c.sent)
  end)

  it("refuses a malformed header line as a network error instead of dropping it", function()
    serve{ answers = { "HTTP/1.1 200 OK\r\nContent-Length : 3\r\n\r\nabc" } }
    local resp, err = get(transport())
    assert.is_nil(resp)
    assert.same({ "network", true }, { err.kind, err.connected })
    assert.matches("malformed header line", err.message, 1, true)
  end)

  it("refuses CR, LF and NUL in header names, values and the method, sending nothing", function()
    serve{ answers = { OK } }
    local t = transport()
    local cases = {
      { headers = { ["X-A"] = "v\r\nX-Evil: 1" }, name = "X-A" },
      { headers = { ["X-A"] = "v\nX-Evil: 1" }, name = "X-A" },
      { headers = { ["X-A"] = "v\0x" }, name = "X-A" },
      { headers = { ["X-A\r\nX-Evil"] = "v" }, name = "X-A" },
      { headers = { "Accept: */*", "X-A: v\r\n\r\nGET / HTTP/1.1" }, name = "header 2" },
      { method = "GET /x HTTP/1.1\r\nX-Evil: 1\r\n", name = "method" },
    }
    for _, case in ipairs(cases) do
      local ok, err = pcall(t.request, { method = case.method or "GET", url = "https://h/x",
        headers = case.headers })
      assert.is_false(ok)
      assert.matches(case.name, err, 1, true)
      assert.matches("CR, LF", err, 1, true)
      assert.not_matches("Evil: 1", err, 1, true) -- the offending value is never shown
    end
    assert.equal(0, server.connects)
    local _, err = get(t, { url = "https://h/x\r\nX-Evil: 1" })
    assert.same({ "network", false }, { err.kind, err.connected })
    assert.equal(0, server.connects)
  end)
end)

---------------------------------------------------------------------------------------------
-- Framing edge cases straight into the reader
---------------------------------------------------------------------------------------------

describe("wxpay.transport.ngx reader framing", function()
  local reader, saved_ngx

  setup(function()
    saved_ngx = rawget(_G, "ngx")
    rawset(_G, "ngx", nil)
    package.loaded["wxpay.transport.ngx"] = nil
    reader = require("wxpay.transport.ngx")._read_response
  end)

  teardown(function()
    rawset(_G, "ngx", saved_ngx)
    package.loaded["wxpay.transport.ngx"] = nil
  end)

  -- Read `bytes` (delivered `piece` bytes at a time): resp, keepalive or nil, err.
  local function read(bytes, piece)
    local clock = F.clock(0)
    local conn = F.connection{ answers = { bytes }, clock = clock, piece = piece }
    return reader(F.socket(conn), 10, "GET", { now = clock.now })
  end

  it("reads a body of many one-byte chunks exactly, in any piece size", function()
    local body, wire = {}, { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" }
    for i = 1, 20000 do
      body[i] = string.char(i % 256)
      wire[#wire + 1] = "1\r\n" .. body[i] .. "\r\n"
    end
    wire[#wire + 1] = "0\r\n\r\n"
    for _, piece in ipairs({ 1, 7, 4096, 64 * 1024 }) do
      local resp, keepalive = read(table.concat(wire), piece)
      assert(resp, keepalive)
      assert.equal(table.concat(body), resp.body)
      assert.is_true(keepalive)
    end
  end)

  it("reads many header lines exactly: each name, and repeated ones joined", function()
    local wire, want = { "HTTP/1.1 200 OK" }, { ["content-length"] = "4", ["x-r"] = {} }
    for i = 1, 5000 do
      wire[#wire + 1] = "X-H" .. i .. ": v" .. i
      wire[#wire + 1] = "X-R:" .. i
      want["x-h" .. i] = "v" .. i
      want["x-r"][i] = tostring(i)
    end
    want["x-r"] = table.concat(want["x-r"], ", ")
    wire[#wire + 1] = "Content-Length: 4"
    for _, piece in ipairs({ 3, 4096, 64 * 1024 }) do
      local resp = assert(read(table.concat(wire, "\r\n") .. "\r\n\r\nbody", piece))
      assert.same(want, resp.headers)
      assert.equal("body", resp.body)
    end
  end)

  it("reads a body of 1 MB in large pieces exactly, with nothing left over", function()
    local body = string.rep("0123456789abcdef", 64 * 1024)
    local resp, keepalive = read("HTTP/1.1 200 OK\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body,
      64 * 1024)
    assert(resp, keepalive)
    assert.equal(body, resp.body)
    assert.is_true(keepalive)
  end)

  it("uses chunked framing but does not keep the connection when Content-Length is there too", function()
    local resp, keepalive = read("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
      .. "5\r\nhello\r\n0\r\n\r\n")
    assert(resp, keepalive)
    assert.equal("hello", resp.body)
    assert.is_false(keepalive)
  end)

  it("reads the status only as three digits followed by a space or the end of the line", function()
    for _, line in ipairs({ "HTTP/1.1 2000 OK", "HTTP/1.1 200OK", "HTTP/1.1 20", "XHTTP/1.1 200 OK" }) do
      local resp, err = read(line .. "\r\nContent-Length: 0\r\n\r\n")
      assert.is_nil(resp, line)
      assert.equal("malformed status line", err, line)
    end
    for _, line in ipairs({ "HTTP/1.1 200", "HTTP/1.1 200 ", "HTTP/1.0 200 OK" }) do
      local resp = assert(read(line .. "\r\nContent-Length: 0\r\n\r\n"))
      assert.equal(200, resp.status, line)
    end
  end)

  it("never keeps a 101 Switching Protocols connection", function()
    local resp, keepalive = read("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
      .. "Connection: Upgrade\r\n\r\n")
    assert(resp, keepalive)
    assert.equal(101, resp.status)
    assert.is_false(keepalive)
  end)

  it("refuses header lines it cannot parse, instead of dropping them", function()
    for _, line in ipairs({ "Content-Length : 3", "no colon here", ": empty name", " folded: x",
        "X-A\0: 1" }) do
      local resp, err = read("HTTP/1.1 200 OK\r\n" .. line .. "\r\nContent-Length: 3\r\n\r\nabc")
      assert.is_nil(resp, line)
      assert.equal("malformed header line", err, line)
    end
    local resp = assert(read("HTTP/1.1 200 OK\r\nX-Empty:\r\nX-Tab:\tv \r\nContent-Length: 3\r\n\r\nabc"))
    assert.same({ "", "v", "abc" }, { resp.headers["x-empty"], resp.headers["x-tab"], resp.body })
  end)
end)

---------------------------------------------------------------------------------------------
-- Random, truncated and mutated streams straight into the reader
---------------------------------------------------------------------------------------------

describe("wxpay.transport.ngx reader on random byte streams", function()
  local reader, saved_ngx

  setup(function()
    saved_ngx = rawget(_G, "ngx")
    rawset(_G, "ngx", nil)
    package.loaded["wxpay.transport.ngx"] = nil
    reader = require("wxpay.transport.ngx")._read_response
  end)

  teardown(function()
    rawset(_G, "ngx", saved_ngx)
    package.loaded["wxpay.transport.ngx"] = nil
  end)

  local SEED = 20260110
  local CASES = helpers.slowdown(10) == 1 and 5000 or 1000 -- valgrind: 1,000

  local function rand_bytes(n, alphabet)
    local t = {}
    for i = 1, n do
      if alphabet then
        local k = math.random(#alphabet)
        t[i] = alphabet:sub(k, k)
      else
        t[i] = string.char(math.random(0, 255))
      end
    end
    return table.concat(t)
  end

  local TOKENS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"

  -- A valid response: its bytes, status and body.
  local function valid_response()
    local status = ({ 200, 201, 204, 400, 404, 429, 500 })[math.random(7)]
    local body = status == 204 and "" or rand_bytes(math.random(0, 300))
    local lines = { "HTTP/1." .. math.random(0, 1) .. " " .. status .. " Reason" }
    if math.random(4) == 1 then table.insert(lines, 1, "HTTP/1.1 100 Continue\r\n") end
    for _ = 1, math.random(0, 6) do
      lines[#lines + 1] = rand_bytes(math.random(1, 12), TOKENS) .. ": " .. rand_bytes(math.random(0, 40), TOKENS)
    end
    local framing = status == 204 and 1 or math.random(3)
    local tail
    if framing == 1 then
      lines[#lines + 1] = "Content-Length: " .. #body
      tail = body
    elseif framing == 2 then
      lines[#lines + 1] = "Transfer-Encoding: chunked"
      local parts, pos = {}, 1
      while pos <= #body do
        local n = math.random(1, 64)
        local piece = body:sub(pos, pos + n - 1)
        parts[#parts + 1] = string.format("%x", #piece) .. (math.random(5) == 1 and ";x=y" or "")
          .. "\r\n" .. piece .. "\r\n"
        pos = pos + n
      end
      parts[#parts + 1] = "0\r\n" .. (math.random(3) == 1 and "X-Trailer: t\r\n" or "") .. "\r\n"
      tail = table.concat(parts)
    else
      lines[#lines + 1] = "Connection: close"
      tail = body
    end
    return table.concat(lines, "\r\n") .. "\r\n\r\n" .. tail, status, body, framing
  end

  local function mutate(s)
    local kind = math.random(4)
    if kind == 1 then -- truncate
      return s:sub(1, math.random(0, #s))
    elseif kind == 2 then -- flip bytes
      for _ = 1, math.random(1, 4) do
        local i = math.random(1, math.max(1, #s))
        s = s:sub(1, i - 1) .. string.char(math.random(0, 255)) .. s:sub(i + 1)
      end
      return s
    elseif kind == 3 then -- insert junk
      local i = math.random(0, #s)
      return s:sub(1, i) .. rand_bytes(math.random(1, 20), "\r\n:;0fz ") .. s:sub(i + 1)
    end
    return rand_bytes(math.random(0, 200), math.random(2) == 1 and "HTP/1. 0123456789\r\n:abcdef;" or nil)
  end

  it("always returns a response within the limits or an error, never raises", function()
    math.randomseed(SEED)
    print(string.format("\n  ngx reader: %d random byte streams, seed %d", CASES, SEED))
    local answered, refused, intact_checked = 0, 0, 0
    for case = 1, CASES do
      local bytes, status, body, framing = valid_response()
      local intact = math.random(3) == 1
      if not intact then bytes = mutate(bytes) end
      local tiny = math.random(3) == 1
      local max_body = tiny and math.random(0, 64) or MAX_BODY
      local max_headers = tiny and math.random(16, 256) or MAX_HEADERS
      local clock = F.clock(0)
      local conn = F.connection{ answers = { bytes }, clock = clock,
        piece = function() return math.random(1, 40) end,
        at_end = math.random(4) == 1 and "timeout" or "closed" }
      local method = math.random(10) == 1 and "HEAD" or "GET"
      local ok, resp, err = pcall(reader, F.socket(conn), 10, method,
        { max_body = max_body, max_headers = max_headers, now = clock.now })
      local where = "case " .. case .. " (" .. string.format("%q", bytes):sub(1, 200) .. ")"
      assert(ok, where .. " raised: " .. tostring(resp))
      if resp then
        answered = answered + 1
        assert(type(resp.status) == "number" and resp.status == math.floor(resp.status)
          and resp.status >= 100 and resp.status <= 999, where .. ": status " .. tostring(resp.status))
        assert(type(resp.body) == "string" and #resp.body <= max_body, where .. ": body over the limit")
        assert(type(resp.headers) == "table", where)
        assert(clock.t <= 10, where .. ": past the deadline")
      else
        refused = refused + 1
        assert(type(err) == "string" and err ~= "", where .. ": error " .. tostring(err))
      end
      -- An intact answer is read exactly, or refused only for a limit (or a silent peer
      -- after a close-delimited body, which is a timeout).
      if intact then
        local silent_close = framing == 3 and conn.at_end == "timeout" and method ~= "HEAD"
        if resp then
          intact_checked = intact_checked + 1
          assert(resp.status == status, where .. ": status " .. resp.status .. " for " .. status)
          assert(resp.body == (method == "HEAD" and "" or body), where .. ": wrong body")
        elseif not tiny and not silent_close then
          error(where .. ": an intact answer was refused: " .. err)
        elseif not silent_close then
          assert(err:find("over %d+ bytes"), where .. ": " .. err)
        end
      end
    end
    print(string.format("  %d answered, %d refused, %d intact answers read exactly", answered, refused,
      intact_checked))
    assert.is_true(answered > CASES / 10 and refused > CASES / 10)
    assert.is_true(intact_checked > CASES / 10)
  end)
end)
