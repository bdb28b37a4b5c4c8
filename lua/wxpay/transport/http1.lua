--- HTTP/1.1 on the wire, for the cosocket transport: the request head and a bounded
-- response reader (status line, headers, the three body framings), with the limits libcurl
-- holds for the C core's session. Works on any cosocket-like socket (`receiveany`,
-- `settimeout`, `send`) and a clock given by the caller, so it can be tested on its own.
-- @module wxpay.transport.http1

local transport = require("wxpay.transport")

local M = {}

M.MAX_BODY = 16 * 1024 * 1024 -- same limits as the C core's session
M.MAX_HEADER_BYTES = 256 * 1024

--- Split `https://host[:port]/target`. IPv6 literals keep their brackets (for the Host
-- header). A target with a space or a control character is refused, as libcurl refuses
-- such URLs: it would split the request line.
-- @treturn string|nil host, port (number), target
function M.parse_url(url)
  local host, port, target = url:match("^https://(%[[%x:.]+%]):?(%d*)(/.*)$")
  if not host then host, port, target = url:match("^https://([%w.-]+):?(%d*)(/.*)$") end
  if not host or target:find("[%c ]") then return nil end
  port = tonumber(port) or 443
  return host, port, target
end

--- The request as bytes: request line, Host, the caller's headers, Content-Length, body.
-- Raises (sending nothing) on a method that is not a token or a header with CR, LF or NUL.
-- @treturn string the wire form
-- @treturn string the method
function M.request_wire(req, host, port, target)
  local method = req.method or "GET"
  if type(method) ~= "string" or not method:match("^[%w_-]+$") then
    error("wxpay.transport.ngx: method must be a token without CR, LF, NUL or space", 3)
  end
  local body = req.body
  local head = { method .. " " .. target .. " HTTP/1.1",
    "Host: " .. (port == 443 and host or (host .. ":" .. port)) }
  for _, line in ipairs(transport.header_lines(req.headers)) do head[#head + 1] = line end
  if body or method == "POST" or method == "PUT" or method == "PATCH" then
    head[#head + 1] = "Content-Length: " .. #(body or "")
  end
  return table.concat(head, "\r\n") .. "\r\n\r\n" .. (body or ""), method
end

---------------------------------------------------------------------------------------------
-- The response reader. Like lua-resty-http: status line, headers and one function per body
-- framing, each with its limit. `rd` is the state of one response:
-- `{ sock, deadline, now, buf, pos, got, max_body, max_headers, header_bytes }`.
-- Bytes come through `receiveany` in bounded pieces, and every wait gets only the time left
-- until the deadline: a cosocket re-arms its timer whenever data arrives, so one big
-- `receive` from a dripping server would never time out.
-- `rd.buf` holds one piece and `rd.pos` its first unread byte. A line or a body longer than
-- what is left of the piece is gathered in a table and joined once: appending to a buffer
-- or cutting its front on every piece, line or chunk would copy it each time, and the work
-- would grow with the square of the answer (seconds of a worker's CPU for a 16 MB body or
-- for many tiny chunks).
---------------------------------------------------------------------------------------------

local READ_PIECE = 64 * 1024
local MAX_CHUNK_LINE = 4096 -- a chunk size with its extensions; libcurl keeps none of them

-- Give the socket what is left of the deadline; false when nothing is left.
local function arm(sock, deadline, clock)
  local ms = math.floor((deadline - clock()) * 1000)
  if ms <= 0 then return false end
  sock:settimeout(ms)
  return true
end

-- Replace rd.buf by the next piece the peer sends (the caller has taken the rest of the old
-- one). Returns true or nil, err.
local function fill(rd)
  if not arm(rd.sock, rd.deadline, rd.now) then return nil, "timeout" end
  local data, err = rd.sock:receiveany(READ_PIECE)
  if not data then return nil, err or "closed" end
  rd.got = true
  rd.buf, rd.pos = data, 1
  return true
end

-- What is left of rd.buf, which is then used up.
local function take_rest(rd)
  local rest = rd.pos == 1 and rd.buf or rd.buf:sub(rd.pos)
  rd.pos = #rd.buf + 1
  return rest
end

-- One line, without its CRLF (a bare LF is accepted), of at most `cap` bytes; a longer
-- one is the error `too_long`.
local function read_line(rd, cap, too_long)
  local parts, len = nil, 0
  while true do
    local lf = rd.buf:find("\n", rd.pos, true)
    if lf then
      local line = rd.buf:sub(rd.pos, lf - 1)
      rd.pos = lf + 1
      if parts then
        parts[#parts + 1] = line
        line = table.concat(parts)
      end
      line = line:gsub("\r$", "")
      if #line > cap then return nil, too_long end
      return line
    end
    len = len + #rd.buf - rd.pos + 1
    if len > cap + 1 then return nil, too_long end -- + 1: the CR may be there already
    parts = parts or {}
    parts[#parts + 1] = take_rest(rd)
    local ok, err = fill(rd)
    if not ok then return nil, err end
  end
end

-- Exactly n bytes (n is already within the body limit).
local function read_bytes(rd, n)
  local have = #rd.buf - rd.pos + 1
  if have >= n then
    local data = rd.buf:sub(rd.pos, rd.pos + n - 1)
    rd.pos = rd.pos + n
    return data
  end
  local parts = { take_rest(rd) }
  while have < n do
    local ok, err = fill(rd)
    if not ok then return nil, err end
    local want = n - have
    if #rd.buf <= want then
      parts[#parts + 1] = take_rest(rd)
    else
      parts[#parts + 1] = rd.buf:sub(1, want)
      rd.pos = want + 1
    end
    have = have + #parts[#parts]
  end
  return table.concat(parts)
end

-- A line of the head: the status line, headers, trailers. All of them together stay
-- within max_headers, interim 1xx answers included.
local function read_head_line(rd)
  local too_long = "response headers over " .. rd.max_headers .. " bytes"
  local line, err = read_line(rd, rd.max_headers - rd.header_bytes, too_long)
  if not line then return nil, err end
  rd.header_bytes = rd.header_bytes + #line + 2
  if rd.header_bytes > rd.max_headers then return nil, too_long end
  return line
end

--- Status line: version ("1.1"), status (integer) or nil, err. The three digits end the
-- line or are followed by a space: "HTTP/1.1 2000" is no status 200.
local function read_status_line(rd)
  local line, err = read_head_line(rd)
  if not line then return nil, err end
  local version, status, rest = line:match("^HTTP/(%d%.%d) (%d%d%d)(.*)$")
  if not status or (rest ~= "" and rest:sub(1, 1) ~= " ") then return nil, "malformed status line" end
  return version, tonumber(status)
end

-- A header name is a token (RFC 9110), with no space before the colon.
local HEADER_LINE = "^([%w!#%$%%&'%*%+%.%^_`|~%-]+):[ \t]*(.-)[ \t]*$"

-- Header lines up to the empty one: names lower-cased, repeated ones joined with ", ". A
-- line that is no header is an error: dropping it could drop the framing (a
-- "Content-Length : 3" would leave the body read until the connection closes).
local function read_headers(rd)
  local values = {}
  while true do
    local line, err = read_head_line(rd)
    if not line then return nil, err end
    if line == "" then break end
    local name, value = line:match(HEADER_LINE)
    if not name then return nil, "malformed header line" end
    name = name:lower()
    local list = values[name] or {}
    list[#list + 1] = value
    values[name] = list
  end
  local headers = {} -- joined once: appending to a growing value each time is quadratic
  for name, list in pairs(values) do headers[name] = table.concat(list, ", ") end
  return headers
end

local function body_over(rd)
  return "response body over " .. rd.max_body .. " bytes"
end

local function read_body_length(rd, value)
  local digits = value:match("^%s*(%d+)%s*$")
  if not digits then return nil, "malformed Content-Length" end
  digits = digits:gsub("^0+(%d)", "%1")
  if #digits > 12 or tonumber(digits) > rd.max_body then return nil, body_over(rd) end
  return read_bytes(rd, tonumber(digits))
end

-- "1a;ext=v" → 26; nil, err when it is not a chunk size or the body would pass the limit.
local function chunk_size(rd, line, total)
  local hex, rest = line:match("^[ \t]*(%x+)[ \t]*(.*)$")
  if not hex or (rest ~= "" and rest:sub(1, 1) ~= ";") then return nil, "malformed chunk size" end
  hex = hex:gsub("^0+(%x)", "%1")
  local size = #hex <= 8 and tonumber(hex, 16) or math.huge
  if size > rd.max_body - total then return nil, body_over(rd) end
  return size
end

local function read_body_chunked(rd)
  local parts, total = {}, 0
  while true do
    local line, err = read_line(rd, MAX_CHUNK_LINE, "chunk size line over " .. MAX_CHUNK_LINE .. " bytes")
    if not line then return nil, err end
    local size
    size, err = chunk_size(rd, line, total)
    if not size then return nil, err end
    if size == 0 then break end
    local data
    data, err = read_bytes(rd, size)
    if not data then return nil, err end
    parts[#parts + 1] = data
    total = total + size
    line, err = read_line(rd, 0, "malformed chunk end")
    if not line then return nil, err end
  end
  repeat -- trailers, up to the empty line; they count as headers
    local line, err = read_head_line(rd)
    if not line then return nil, err end
  until line == ""
  return table.concat(parts)
end

local function read_body_close(rd)
  local parts = { take_rest(rd) }
  local total = #parts[1]
  while total <= rd.max_body do
    if not arm(rd.sock, rd.deadline, rd.now) then return nil, "timeout" end
    local data, err = rd.sock:receiveany(READ_PIECE)
    if not data then
      if err == "closed" then return table.concat(parts) end
      return nil, err
    end
    parts[#parts + 1] = data
    total = total + #data
  end
  return nil, body_over(rd)
end

local function keeps_alive(version, headers)
  local conn = (headers["connection"] or ""):lower()
  if version == "1.0" then return conn:find("keep-alive", 1, true) ~= nil end
  return conn:find("close", 1, true) == nil
end

-- Read one response. Returns resp, keepalive or nil, err (a string), got_bytes.
local function read_response(rd, method)
  local version, status, headers, err
  repeat -- interim 1xx answers are skipped: only the final response counts
    version, status = read_status_line(rd)
    if not version then return nil, status, rd.got end
    headers, err = read_headers(rd)
    if not headers then return nil, err, rd.got end
  until status >= 200 or status == 101

  local te = headers["transfer-encoding"]
  -- Both framings at once (RFC 9112 asks a client to close after such an answer: it may be a
  -- smuggling attempt), or a switch to another protocol: no next answer can follow safely.
  local keepalive = keeps_alive(version, headers) and status ~= 101
    and not (te and headers["content-length"])
  local body
  if method == "HEAD" or status == 204 or status == 304 or status == 101 then
    body = "" -- no body by definition
  elseif te and te:lower():find("chunked", 1, true) then
    body, err = read_body_chunked(rd)
  elseif headers["content-length"] then
    body, err = read_body_length(rd, headers["content-length"])
  else -- delimited by the end of the connection
    keepalive = false
    body, err = read_body_close(rd)
  end
  if not body then return nil, err, true end
  -- Bytes past the response (an answer nobody asked for): the connection is not reusable.
  if rd.pos <= #rd.buf then keepalive = false end
  return { status = status, headers = headers, body = body }, keepalive
end


--- Read one HTTP/1.1 response.
-- @param sock a cosocket-like socket (`receiveany`, `settimeout`)
-- @tparam number deadline in `opts.now`'s seconds
-- @tparam string method the request's (a HEAD answer has no body)
-- @tparam table opts `now` (the clock, required), `max_body` (default 16 MB),
--   `max_headers` (256 KB)
-- @return `resp, keepalive` or `nil, err` (a string) and whether any byte arrived
function M.read_response(sock, deadline, method, opts)
  local rd = { sock = sock, deadline = deadline, now = opts.now, buf = "", pos = 1, got = false,
    max_body = opts.max_body or M.MAX_BODY, max_headers = opts.max_headers or M.MAX_HEADER_BYTES,
    header_bytes = 0 }
  return read_response(rd, method)
end

--- Send `wire` in pieces, each with the time left until `deadline` (on the clock `now`).
-- @return true or nil, err (a string)
function M.send_all(sock, wire, deadline, now)
  for i = 1, #wire, READ_PIECE do
    if not arm(sock, deadline, now) then return nil, "timeout" end
    local ok, err = sock:send(wire:sub(i, i + READ_PIECE - 1))
    if not ok then return nil, err end
  end
  return true
end

--- Give the socket what is left of `deadline` on the clock `now`; false when nothing is.
M.arm = arm

return M
