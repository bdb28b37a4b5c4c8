--- The cosocket HTTP/1.1 reader's CPU on large and finely split answers (prints figures, no
-- pass/fail): `lua5.4 bench/http1_reader.lua` (or luajit). The fake socket hands out
-- prepared pieces, so the time is the reader's own.
package.path = "lua/?.lua;lua/?/init.lua;./?.lua;" .. package.path

local http1 = require("wxpay.transport.http1")

-- A socket handing out `pieces` in turn, then "closed".
local function socket(pieces)
  local i = 0
  return {
    settimeout = function() end,
    receiveany = function()
      i = i + 1
      if pieces[i] then return pieces[i] end
      return nil, "closed"
    end,
  }
end

-- `wire` cut into pieces of `size` bytes.
local function cut(wire, size)
  local pieces = {}
  for i = 1, #wire, size do pieces[#pieces + 1] = wire:sub(i, i + size - 1) end
  return pieces
end

local function length_body(mb)
  local body = string.rep("x", mb * 1024 * 1024)
  return cut("HTTP/1.1 200 OK\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body, 16 * 1024), #body
end

local function tiny_chunks(n)
  local wire = { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", string.rep("1\r\nx\r\n", n),
    "0\r\n\r\n" }
  return cut(table.concat(wire), 16 * 1024), n
end

local function many_headers(n)
  local wire = { "HTTP/1.1 200 OK\r\n", string.rep("a:\r\n", n), "Content-Length: 2\r\n\r\nok" }
  return cut(table.concat(wire), 16 * 1024), 2
end

local cases = {
  { "16 MB Content-Length body, 16 KB pieces", length_body, 16 },
  { "8 MB Content-Length body, 16 KB pieces", length_body, 8 },
  { "200k one-byte chunks", tiny_chunks, 200000 },
  { "60k header lines (240 KB)", many_headers, 60000 },
}

local function now() return 0 end
print("wxpay.transport.http1 reader, CPU per response (" .. _VERSION .. ")")
for _, case in ipairs(cases) do
  local pieces, body_len = case[2](case[3])
  local t0 = os.clock()
  local resp, err = http1.read_response(socket(pieces), 1, "GET", { now = now })
  local dt = os.clock() - t0
  assert(resp, err)
  assert(#resp.body == body_len, "wrong body length")
  print(string.format("  %-42s %8.3f s", case[1], dt))
end
