--- A one-connection-at-a-time HTTP(S) listener on 127.0.0.1 that receives callbacks for the
-- coupon specs (19, 22) and answers them as `client.notify.parse` says. Not a spec itself.
local socket = require("socket")

local M = {}

--- A listening socket and the URL to configure (`scheme` "http" or "https").
function M.listen(scheme)
  local srv = assert(socket.bind("127.0.0.1", 0))
  srv:settimeout(10)
  local _, port = srv:getsockname()
  return srv, scheme .. "://127.0.0.1:" .. port .. "/wxpay/coupons"
end

--- A `wrap(raw)` that serves TLS with the sandbox's own server certificate (LuaSec).
function M.tls(sb)
  local ssl = require("ssl")
  return function(raw)
    local conn = assert(ssl.wrap(raw, { mode = "server", protocol = "any",
      certificate = sb.dir .. "/server_cert.pem", key = sb.dir .. "/server_key.pem" }))
    assert(conn:dohandshake())
    return conn
  end
end

--- Accept one POST (read whole, so closing never resets the connection) and answer it with
-- `answer(headers, body) -> status, body, chunked` (chunked: the body sent in two chunks,
-- as frameworks often answer); `wrap` turns the accepted socket into TLS.
function M.serve_one(srv, answer, wrap)
  local conn = assert(srv:accept())
  conn:settimeout(5)
  if wrap then conn = wrap(conn) end
  assert(conn:receive("*l"))
  local headers, length = {}, 0
  while true do
    local line = assert(conn:receive("*l"))
    if line == "" then break end
    local name, value = line:match("^([^:]+):%s*(.-)%s*$")
    headers[name] = value
    if name:lower() == "content-length" then length = tonumber(value) end
  end
  local body = length > 0 and assert(conn:receive(length)) or ""
  local status, text, chunked = answer(headers, body)
  if chunked then
    local half = math.floor(#text / 2)
    conn:send(string.format("HTTP/1.1 %d X\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
      .. "%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n", status, half, text:sub(1, half), #text - half, text:sub(half + 1)))
  else
    conn:send(string.format("HTTP/1.1 %d X\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
                            status, #text, text))
  end
  conn:close()
end

--- Accept one callback, parse it with `client.notify.parse` as an app would and answer as
-- parse recommends. Returns what parse returned (notification or nil, err).
function M.receive(srv, client, wrap)
  local n, err
  M.serve_one(srv, function(headers, body)
    local meta
    n, err, meta = client.notify.parse(headers, body)
    local answer = n and meta.answer or err.answer
    return answer.status, answer.body
  end, wrap)
  return n, err
end

return M
