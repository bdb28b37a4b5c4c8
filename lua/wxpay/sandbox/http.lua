--- Minimal HTTP/1.1 server-side message handling over a cqueues socket.
-- The request-target and body are kept exactly as received: the APIv3 signature covers
-- those bytes, so nothing here decodes or normalises them.
local M = {}

local MAX_HEADER_LINE = 16384
local MAX_HEADERS = 100
local MAX_BODY = 8 * 1024 * 1024

M.REASONS = {
  [100] = "Continue", [200] = "OK", [204] = "No Content", [400] = "Bad Request",
  [401] = "Unauthorized", [403] = "Forbidden", [404] = "Not Found",
  [405] = "Method Not Allowed", [411] = "Length Required", [413] = "Payload Too Large",
  [429] = "Too Many Requests", [431] = "Request Header Fields Too Large",
  [500] = "Internal Server Error", [502] = "Bad Gateway", [503] = "Service Unavailable",
}

local function read_line(sock)
  local line, err = sock:read("*L")
  if not line then return nil, err or "closed" end
  if #line > MAX_HEADER_LINE then return nil, "line too long", 431 end
  return (line:gsub("\r?\n$", ""))
end

--- Read one request from `sock`.
-- @param sock cqueues socket in binary mode
-- @treturn[1] table `{ method, target, version, headers = {lower-case name -> value},
--   header_list = {{name, value}, ...}, body, keep_alive }`
-- @return[2] nil, error string ("closed" when the peer closed between requests), and an
--   HTTP status to answer with when the request was malformed
function M.read_request(sock)
  local line, err = read_line(sock)
  -- Tolerate stray empty lines between pipelined requests (RFC 9112 2.2).
  while line == "" do line, err = read_line(sock) end
  if not line then return nil, err end
  local method, target, version = line:match("^(%u+) (%S+) HTTP/(1%.[01])$")
  if not method then return nil, "bad request line", 400 end

  local headers, header_list = {}, {}
  while true do
    local h, herr, status = read_line(sock)
    if not h then return nil, herr, status end
    if h == "" then break end
    if #header_list >= MAX_HEADERS then return nil, "too many headers", 431 end
    local name, value = h:match("^([^:%s]+):[ \t]*(.-)[ \t]*$")
    if not name then return nil, "bad header line", 400 end
    header_list[#header_list + 1] = { name, value }
    local lname = name:lower()
    headers[lname] = headers[lname] and (headers[lname] .. ", " .. value) or value
  end

  local req = { method = method, target = target, version = version, headers = headers,
                header_list = header_list, body = "" }
  local conn = (headers["connection"] or ""):lower()
  if version == "1.0" then
    req.keep_alive = conn:find("keep-alive", 1, true) ~= nil
  else
    req.keep_alive = conn:find("close", 1, true) == nil
  end

  if headers["transfer-encoding"] then
    -- Nothing WeChat Pay clients send uses chunked bodies; refuse rather than guess.
    req.keep_alive = false
    return nil, "chunked request bodies are not supported", 411, req
  end
  local length = headers["content-length"]
  if length then
    if not length:match("^%d+$") then return nil, "bad Content-Length", 400 end
    length = tonumber(length)
    if length > MAX_BODY then return nil, "body too large", 413 end
    if length > 0 then
      if (headers["expect"] or ""):lower() == "100-continue" then
        sock:write("HTTP/1.1 100 Continue\r\n\r\n")
        sock:flush()
      end
      local body, berr = sock:read(length)
      if not body or #body < length then return nil, berr or "closed" end
      req.body = body
    end
  end
  return req
end

--- Write one response.
-- @param sock cqueues socket
-- @tparam int status
-- @tparam table headers list of `{name, value}` (Content-Length and Connection are added)
-- @tparam string body
-- @tparam boolean keep_alive
-- @tparam[opt] int cut_at send only this many body bytes (a download cut short)
-- @return true, or nil and an error
function M.write_response(sock, status, headers, body, keep_alive, cut_at)
  body = body or ""
  local out = { string.format("HTTP/1.1 %d %s\r\n", status, M.REASONS[status] or "Status") }
  for _, h in ipairs(headers) do
    out[#out + 1] = h[1] .. ": " .. h[2] .. "\r\n"
  end
  out[#out + 1] = "Content-Length: " .. #body .. "\r\n"
  out[#out + 1] = keep_alive and "Connection: keep-alive\r\n" or "Connection: close\r\n"
  out[#out + 1] = "\r\n"
  out[#out + 1] = cut_at and body:sub(1, cut_at) or body
  local ok, err = sock:write(table.concat(out))
  if not ok then return nil, err end
  return sock:flush()
end

return M
