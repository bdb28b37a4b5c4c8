--- Signed, encrypted callback notifications sent by the sandbox to the app under test
-- (docs/protocol.md#callbacks), with WeChat Pay's retry schedule scaled down for tests.
--
-- `POST /_sandbox/callbacks` with a JSON object:
--   url            "http://127.0.0.1:PORT/path" or https (verified against the sandbox CA);
--                  loopback hosts only
--   event_type     default "TRANSACTION.SUCCESS"
--   resource       object encrypted into `resource.ciphertext` (default {})
--   original_type  default "transaction"; associated_data defaults to it
--   summary        default "sandbox notification"
--   signer         "public_key" | "primary" | "secondary"; default: the public key in
--                  public_key and combined mode, else the signing certificate
--   probe, tamper, stale   booleans: a WECHATPAY/SIGNTEST/ signature, a body changed after
--                  signing, a timestamp 600 s old (each sent once unless max_attempts says)
--   retry_scale    factor on the schedule 15 s, 15 s, 30 s, 3 m, … 6 h (default 0.01)
--   max_attempts   1..16 (default 16, or 1 for probe/tamper/stale)
--   timeout        seconds to wait for each answer (default 5)
-- The answer lists the callback's record; `GET /_sandbox/callbacks` lists all of them with
-- every attempt's answer (`status`, `body`) or transport `error`. A callback is "accepted"
-- on 200 or 204, "rejected" when its last allowed attempt got another answer or none.
local cqueues = require("cqueues")
local csocket = require("cqueues.socket")
local ssl_context = require("openssl.ssl.context")
local x509_store = require("openssl.x509.store")
local rand = require("openssl.rand")
local core = require("wxpay.core")

local json = require("wxpay.sandbox.json")
local util = require("wxpay.sandbox.util")

local M = {}

M.SCHEDULE = { 15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600 }

local SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
local LOOPBACK = { ["127.0.0.1"] = true, localhost = true, ["[::1]"] = true }

--- Empty callback registry.
function M.new()
  return { items = {} }
end

local function signer_for(state, name)
  local crypto = state.crypto
  if name == nil then
    if state.config.mode == "certificate" then return crypto.platforms[state.config.signing_certificate] end
    return crypto.public_key
  end
  if name == "public_key" then return crypto.public_key end
  return crypto.platforms[name]
end

-- The callback body, fields in the documented order (docs/protocol.md#callbacks).
local function build_body(state, spec)
  local nonce = util.random_alnum(12)
  local original_type = spec.original_type or "transaction"
  local aad = spec.associated_data or original_type
  local ciphertext = assert(core.aes_gcm_encrypt(state.keys.apiv3_key, nonce, aad,
                                                 json.encode(spec.resource or {})))
  local resource = '{"original_type":' .. json.encode(original_type)
    .. ',"algorithm":"AEAD_AES_256_GCM","ciphertext":' .. json.encode(ciphertext)
    .. ',"associated_data":' .. json.encode(aad) .. ',"nonce":' .. json.encode(nonce) .. "}"
  return '{"id":' .. json.encode("EV-" .. util.random_digits(19))
    .. ',"create_time":' .. json.encode(util.rfc3339(util.now()))
    .. ',"resource_type":"encrypt-resource","event_type":'
    .. json.encode(spec.event_type or "TRANSACTION.SUCCESS")
    .. ',"summary":' .. json.encode(spec.summary or "sandbox notification")
    .. ',"resource":' .. resource .. "}"
end

-- Fresh signature headers for one attempt.
local function sign(cb, signer)
  local ts = tostring(os.time() - (cb.stale and 600 or 0))
  local nonce = core.nonce(32)
  local signature = signer.key:sign(ts .. "\n" .. nonce .. "\n" .. cb.body .. "\n")
  if cb.probe then signature = "WECHATPAY/SIGNTEST/" .. core.base64_encode(rand.bytes(256)) end
  local body = cb.body
  if cb.tamper then body = body:gsub('"summary":"', '"summary":"X', 1) end
  return {
    { "Wechatpay-Timestamp", ts }, { "Wechatpay-Nonce", nonce },
    { "Wechatpay-Signature", signature }, { "Wechatpay-Serial", signer.serial },
    { "Wechatpay-Signature-Type", SIGNATURE_TYPE },
  }, body
end

-- What a callback record keeps of the application's answer body.
local MAX_ANSWER = 65536

-- A chunked answer body, decoded (its first MAX_ANSWER bytes): the record shows what the
-- application answered, not the framing. Nil when the framing is broken.
local function read_chunked(sock)
  local parts, size = {}, 0
  while true do
    local line = sock:read("*l")
    local n = line and tonumber(line:match("^%s*(%x+)"), 16)
    if not n then return nil end
    if n == 0 then return table.concat(parts) end
    if size + n > MAX_ANSWER then
      parts[#parts + 1] = sock:read(MAX_ANSWER - size)
      return table.concat(parts)
    end
    local data = sock:read(n)
    if not data or #data < n then return nil end
    parts[#parts + 1], size = data, size + n
    sock:read("*l") -- the CRLF after the data
  end
end

-- One POST; returns status, body or nil, error.
local function post(server, cb, headers, body)
  local sock = csocket.connect{ host = cb.host, port = cb.port }
  sock:settimeout(cb.timeout)
  local ok, err = sock:connect(cb.timeout)
  if not ok then sock:close(); return nil, "connect: " .. tostring(err) end
  sock:setmode("b", "bf")
  if cb.https then
    local ctx = ssl_context.new("TLS", false)
    local store = x509_store.new()
    store:add(server.state.keys.files.ca_file)
    ctx:setStore(store)
    ctx:setVerify(ssl_context.VERIFY_PEER)
    ok, err = sock:starttls(ctx, cb.timeout)
    if not ok then sock:close(); return nil, "tls: " .. tostring(err) end
  end
  local out = { "POST " .. cb.path .. " HTTP/1.1\r\n", "Host: " .. cb.hostport .. "\r\n",
                "User-Agent: Mozilla/4.0 (wxpay-sandbox)\r\n", "Content-Type: application/json\r\n",
                "Request-ID: " .. server.state.next_request_id() .. "\r\n" }
  for _, h in ipairs(headers) do out[#out + 1] = h[1] .. ": " .. h[2] .. "\r\n" end
  out[#out + 1] = "Content-Length: " .. #body .. "\r\nConnection: close\r\n\r\n" .. body
  ok, err = sock:write(table.concat(out))
  if ok then ok, err = sock:flush() end
  if not ok then sock:close(); return nil, "write: " .. tostring(err) end
  local line = sock:read("*l")
  local status = line and tonumber(line:match("^HTTP/1%.[01] (%d%d%d)"))
  if not status then sock:close(); return nil, "no HTTP answer" end
  local length, chunked
  while true do
    local h = sock:read("*l")
    if not h then sock:close(); return nil, "truncated answer" end
    h = h:gsub("\r$", "")
    if h == "" then break end
    local n, v = h:match("^([^:]+):%s*(.-)%s*$")
    if n and n:lower() == "content-length" then length = tonumber(v) end
    if n and n:lower() == "transfer-encoding" and v:lower():find("chunked", 1, true) then chunked = true end
  end
  local answer
  if chunked then
    answer = read_chunked(sock)
  elseif length then
    answer = length > 0 and sock:read(math.min(length, MAX_ANSWER)) or ""
  else
    answer = sock:read(MAX_ANSWER)
  end
  sock:close()
  return status, answer or ""
end

-- The record as JSON; `attempts` always an array (spliced in: cjson writes an empty table
-- as an object).
local function view(cb)
  local head = json.encode{ id = cb.id, url = cb.url, event_type = cb.event_type, state = cb.state,
                           probe = cb.probe, tamper = cb.tamper, stale = cb.stale,
                           signer = cb.signer_serial, body = cb.body }
  return head:sub(1, -2) .. ',"attempts":' .. json.array(cb.attempts) .. "}"
end

-- Deliver with retries; runs as its own coroutine on the server's loop.
local function deliver(server, cb, signer)
  for n = 1, cb.max_attempts do
    local headers, body = sign(cb, signer)
    local status, answer = post(server, cb, headers, body)
    local attempt = { n = n, at = util.now() }
    if status then attempt.status, attempt.body = status, answer else attempt.error = answer end
    cb.attempts[#cb.attempts + 1] = attempt
    if status == 200 or status == 204 then
      cb.state = "accepted"
      return
    end
    if n == cb.max_attempts then break end
    cqueues.sleep(M.SCHEDULE[n] * cb.retry_scale)
  end
  cb.state = "rejected"
end

--- Create a callback from a control request and start delivering it.
-- @tparam table server the running sandbox server
-- @tparam table spec decoded request body
-- @return the record's JSON, or nil and an error message
function M.send(server, spec)
  local state = server.state
  state.callbacks = state.callbacks or M.new()
  if type(spec.url) ~= "string" then return nil, "url is required" end
  local scheme, hostport, path = spec.url:match("^(https?)://([^/]+)(/.*)$")
  if not scheme then return nil, "url must be http(s)://host:port/path" end
  local host, port = hostport:match("^(.*):(%d+)$")
  if not host then host, port = hostport, scheme == "https" and 443 or 80 end
  if not LOOPBACK[host] then return nil, "url must point at a loopback address" end
  if spec.resource ~= nil and (type(spec.resource) ~= "table" or not pcall(json.encode, spec.resource)) then
    return nil, "resource must be an object (without NaN or Infinity)"
  end
  for _, name in ipairs{ "event_type", "summary", "original_type", "associated_data" } do
    if spec[name] ~= nil and type(spec[name]) ~= "string" then return nil, name .. " must be a string" end
  end
  local signer = signer_for(state, spec.signer)
  if not signer then return nil, "signer must be public_key, primary or secondary" end
  local once = spec.probe or spec.tamper or spec.stale
  local cb = {
    id = #state.callbacks.items + 1, url = spec.url, https = scheme == "https",
    host = host:gsub("^%[(.*)%]$", "%1"), port = math.tointeger(tonumber(port)), path = path,
    hostport = hostport, event_type = spec.event_type or "TRANSACTION.SUCCESS",
    probe = spec.probe == true, tamper = spec.tamper == true, stale = spec.stale == true,
    retry_scale = tonumber(spec.retry_scale) or 0.01,
    max_attempts = math.tointeger(spec.max_attempts or (once and 1 or #M.SCHEDULE + 1)),
    timeout = tonumber(spec.timeout) or 5, state = "pending", attempts = {},
    signer_serial = signer.serial,
  }
  if not cb.max_attempts or cb.max_attempts < 1 or cb.max_attempts > #M.SCHEDULE + 1 then
    return nil, "max_attempts must be 1.." .. (#M.SCHEDULE + 1)
  end
  -- Written so that NaN fails too.
  if not (cb.retry_scale >= 0 and cb.retry_scale <= 1000 and cb.timeout > 0 and cb.timeout <= 600) then
    return nil, "retry_scale must be 0..1000, timeout 0..600 seconds"
  end
  cb.body = build_body(state, spec)
  state.callbacks.items[cb.id] = cb
  server.cq:wrap(function() deliver(server, cb, signer) end)
  return view(cb)
end

--- Every callback so far, as a JSON array.
function M.list(state)
  local out = {}
  for i, cb in ipairs(state.callbacks and state.callbacks.items or {}) do out[i] = view(cb) end
  return "[" .. table.concat(out, ",") .. "]"
end

return M
