--- The request pipeline: one attempt (sign, send, fail over to the other host), the answer
-- turned into data or an error (verify, decode), and the retry loop around it. `run` is
-- what every call goes through. Request preparation is in wxpay.request, the retry policy
-- in wxpay.retry.
-- @module wxpay.pipeline

local core = require("wxpay.core")
local cjson = require("cjson")
local errors = require("wxpay.errors")
local fleet = require("wxpay.fleet")
local json = require("wxpay.json")
local keyring = require("wxpay.keyring")
local observe = require("wxpay.observe")
local redact = require("wxpay.redact")
local retry = require("wxpay.retry")
local verify = require("wxpay.verify")

local M = {}

local log = redact.log

-- A certificate that does not name the URL's host, in libcurl's words ("no alternative
-- certificate subject name matches target host name", "… does not match target host
-- name") or a cosocket's ("certificate host mismatch").
local function host_mismatch(message)
  local m = tostring(message or ""):lower()
  return m:find("match target host name", 1, true) or m:find("matches target host name", 1, true)
    or m:find("host mismatch", 1, true)
end

-- Trying the same host again cannot change its certificate: not retried (the other host,
-- with a name and certificate of its own, is still tried once by failover), and the hint
-- points at the host name, not at the trusted CA.
local function mismatch_hint(base)
  local host = tostring(base or ""):match("^%a+://%[?([^/%]]-)%]?:?%d*/?$") or tostring(base)
  return "TLS host name mismatch: the certificate " .. host .. " presented does not name the host "
    .. "name " .. host .. "; base_url and backup_url must use a host name the certificate names (api.mch.weixin.qq.com "
    .. "or api2.mch.weixin.qq.com for WeChat Pay, localhost for the sandbox); the trusted CA (ca_file) "
    .. "is not what failed"
end

local function transport_error(st, terr, sent, base)
  if type(terr) ~= "table" then terr = { message = tostring(terr) } end
  local kind = terr.kind == "timeout" and "timeout" or "network"
  local mismatch = kind == "network" and host_mismatch(terr.message)
  -- `code` stays a local one (NETWORK_ERROR / TIMEOUT, or SIGN_FAILED); libcurl's number
  -- goes beside it. Retryable unless the error says otherwise.
  return errors.new(kind, redact.text(st, terr.message or kind, sent), {
    code = type(terr.code) == "string" and terr.code or nil,
    curl_code = terr.curl_code or (type(terr.code) == "number" and terr.code or nil),
    connected = terr.connected, retryable = terr.retryable ~= false and not mismatch,
    hint = mismatch and mismatch_hint(base) or nil, not_sent = terr.not_sent,
  })
end

-- The live API's code for "this already exists" is not documented: other marketing APIs
-- answer RESOURCE_ALREADY_EXISTS, partnerships the generic INVALID_REQUEST with "已存在"
-- (or "already exist(s)" under Accept-Language: en).
local function already_exists(code, message)
  if code == "RESOURCE_ALREADY_EXISTS" then return true end
  if code ~= "INVALID_REQUEST" or not message then return nil end
  if message:find("已存在", 1, true) or message:lower():find("already exist", 1, true) then return true end
  return nil
end

local SIGN_HINT = "WeChat Pay checks mchid, serial_no and the private key together: a wrong mchid, "
  .. "a serial_no of another certificate or a key that does not match it all give this answer; "
  .. "run `wxpay doctor` to check them"

-- A 401 about the signature or the certificate serial: usually a wrong mchid (e.g.
-- "商户证书序列号有误"), not a bad signature.
local function sign_hint(status, code, message)
  if status ~= 401 then return nil end
  if code == "SIGN_ERROR" then return SIGN_HINT end
  if code == "INVALID_REQUEST" and message and message:find("证书序列号", 1, true) then return SIGN_HINT end
  return nil
end

-- An error answer may echo the request (a gateway's HTML page, a message quoting a
-- header): every text taken from it is redacted.
local function api_error(st, resp, sent)
  local body = resp.body or ""
  local code, message, detail
  local obj = body ~= "" and json.decode(body) or nil
  if type(obj) == "table" then
    if type(obj.code) == "string" then code = redact.text(st, obj.code, sent) end
    if type(obj.message) == "string" then message = redact.text(st, obj.message, sent) end
    if obj.detail ~= nil and obj.detail ~= cjson.null then detail = redact.value(st, obj.detail, sent) end
  end
  if not message then
    -- Redacted before the snippet is cut, so no partial Authorization survives.
    local snippet = redact.text(st, body, sent):sub(1, 200):gsub("%s+", " ")
    message = snippet ~= "" and snippet or ("HTTP " .. resp.status)
  end
  local status = resp.status
  local e = errors.new("api", message, { code = code, detail = detail, status = status,
    request_id = resp.headers["request-id"], retryable = retry.retryable_answer(status, code),
    already_exists = already_exists(code, message), hint = sign_hint(status, code, message) })
  -- Error answers need no signature (docs/protocol.md#which-answers-are-signed); when one
  -- is present, record the outcome.
  local h = resp.headers
  if h["wechatpay-signature"] and h["wechatpay-timestamp"] and h["wechatpay-nonce"]
     and h["wechatpay-serial"] then
    e.signature_verified = verify.response(st, resp) ~= nil
  end
  return e
end

-- WeChat Pay answers 202 for "accepted, not yet processed: repeat the same request". It
-- carries no result, so it is never data: it is retried like a 5xx, and this is the error
-- when the retries are spent.
local function accepted_error(resp)
  return errors.new("api", "request accepted but not yet processed: repeat it with the same "
    .. "idempotency_key", { status = 202, request_id = resp.headers["request-id"], retryable = true })
end

-- The headers of one transmission, with a fresh signature (new timestamp and nonce for
-- every transmission: docs/protocol.md#timestamp-and-nonce). The Authorization value is
-- remembered in `r.sent` so that an echo of it can be redacted from errors and logs.
local function signed_headers(st, r)
  -- A transport may pace the ~1 ms RSA signature (the ngx one spreads bursts over turns).
  if st.transport.pace then st.transport.pace() end
  local auth, why = core.authorization{ mchid = st.mchid, serial_no = st.serial_no,
    key = st.private_key, method = r.method, url = r.target, body = r.sign_body or r.body or "" }
  if not auth then -- never send unsigned (a failing random source, a key that cannot sign)
    return nil, errors.new("network", "request not sent: signing failed: " .. tostring(why),
      { code = "SIGN_FAILED", connected = false, retryable = false })
  end
  local headers = {}
  for k, v in pairs(r.headers) do headers[k] = v end
  headers.Authorization = auth
  r.sent = r.sent or {}
  r.sent[#r.sent + 1] = auth
  return headers
end

-- Send one attempt, trying the other host when the first cannot be connected to.
-- Returns resp, nil, base_url or nil, err, base_url.
local function send_attempt(st, r, remaining)
  local first, second = retry.hosts(st)
  local t_start = st.monotonic()
  local resp, terr, base, leg_used
  local tr, t = r.trace, nil -- on_request timings (wxpay.observe), only when a hook listens
  for leg = 1, second and 2 or 1 do
    leg_used = leg
    base = leg == 1 and first or second
    -- A fleet download lock's lease covers this leg (its budget wait and exchange).
    if r.keepalive then r.keepalive(2 * r.timeout + r.connect_timeout) end
    if st.fleet then -- the shared rate budget: wait for a start, no longer than the call can
      local left = remaining and remaining - (st.monotonic() - t_start) or r.timeout
      if tr then t = st.monotonic() end
      local ok, berr = fleet.before_send(st, r, left)
      if tr then observe.lap(st, tr, "budget_wait", t) end
      if not ok then resp, terr = nil, terr or berr; break end
    end
    if tr then t = st.monotonic() end
    local headers, serr = signed_headers(st, r)
    if tr then observe.lap(st, tr, "signing", t) end
    if not headers then resp, terr = nil, serr; break end
    local timeout, connect_timeout = r.timeout, r.connect_timeout
    if remaining then
      local left = remaining - (st.monotonic() - t_start)
      if left <= 0 then
        resp, terr = nil, terr or { kind = "timeout", message = "deadline reached before sending" }
        break
      end
      timeout = math.min(timeout, left)
      connect_timeout = math.min(connect_timeout, left)
    end
    if st.logger then -- no fields are built when nothing listens
      log(st, "debug", "wxpay request", { method = r.method, path = r.target, base_url = base,
        attempt = r.attempt, idempotency_key = r.idempotency_key }, r.sent)
    end
    if tr then t = st.monotonic() end
    resp, terr = st.transport.request{ method = r.method, url = base .. r.target,
      target = r.target, headers = headers, body = r.body, timeout = timeout,
      connect_timeout = connect_timeout,
      -- Sent at most once: transports must not silently re-send it on a new connection.
      fresh_connect = not retry.repeatable(r) or nil }
    if tr then observe.lap(st, tr, "transfer", t) end
    if resp and st.fleet then fleet.answered(st, r, resp) end -- a 429 slows everyone
    if resp then break end
    if not retry.fail_over(terr, leg, second) then break end
    if st.logger then
      log(st, "warn", "wxpay failover: cannot connect, trying the other host",
        { from = base, to = second, path = r.target, error = terr.message }, r.sent)
    end
  end
  if resp then retry.answered(st, leg_used, base) end
  return resp, terr, base
end

-- A 2xx answer: verified (unless `verify = false`), then decoded. Returns data, nil, meta
-- or nil, err.
local function success(st, r, resp, meta)
  if r.verify ~= false then
    local t = r.trace and st.monotonic()
    local key_id, verr = keyring.verify(st, resp, r.give_up_at)
    if t then observe.lap(st, r.trace, "verification", t) end
    if not key_id then
      verr.attempts, verr.idempotency_key = meta.attempts, r.idempotency_key
      redact.error(st, verr, r.sent)
      if st.logger then log(st, "warn", "wxpay response rejected", { error = tostring(verr) }, r.sent) end
      return nil, verr -- never retried: the operation may have happened
    end
    meta.verified_by = key_id
  end
  if resp.body == "" then return {}, nil, meta end
  local data, derr = json.decode(resp.body)
  if type(data) ~= "table" then
    return nil, errors.new("decode", "response body is not a JSON object: " .. tostring(derr or type(data)),
      { status = meta.status, request_id = meta.request_id, attempts = meta.attempts,
        idempotency_key = r.idempotency_key })
  end
  return data, nil, meta
end

-- What one attempt's answer means. Returns `true, data, err, meta` when the call is over,
-- or `false, err` for an error the loop may retry.
local function outcome(st, r, resp, base, attempt)
  resp.headers = verify.lower_headers(resp.headers)
  resp.body = resp.body or ""
  local status = tonumber(resp.status) or 0
  resp.status = status
  local meta = { status = status, request_id = resp.headers["request-id"],
    idempotency_key = r.idempotency_key, attempts = attempt, headers = resp.headers,
    base_url = base }
  if st.logger then
    log(st, "debug", "wxpay response", { status = status, request_id = meta.request_id,
      attempt = attempt, path = r.target }, r.sent)
  end
  if status == 202 then return false, accepted_error(resp) end
  if status >= 200 and status < 300 then
    if r.raw then return true, resp, nil, meta end -- the caller verifies (certificate download)
    return true, success(st, r, resp, meta)
  end
  return false, api_error(st, resp, r.sent)
end

--- Run a prepared request (method, target, body, headers, idempotency_key, …) with
-- retries, failover, deadline and verification. With `r.raw` a 2xx answer is returned
-- unverified, for a caller that verifies it itself (the certificate download).
-- @return data, nil, meta or nil, err
function M.perform(st, r)
  local t0 = r.t0 or st.monotonic()
  local deadline = r.deadline or st.deadline
  if deadline then r.give_up_at = t0 + deadline end
  local max_retries = r.max_retries or st.max_retries
  r.timeout = r.timeout or st.timeout
  r.connect_timeout = r.connect_timeout or st.connect_timeout
  local attempt = 0
  while true do
    attempt = attempt + 1
    r.attempt = attempt
    local remaining = deadline and deadline - (st.monotonic() - t0) or nil
    if r.trace then observe.attempt_begin(st, r.trace) end
    local resp, terr, base = send_attempt(st, r, remaining)
    local err
    if resp then
      local done, data, derr, meta = outcome(st, r, resp, base, attempt)
      if done then
        if r.trace then observe.attempt_end(st, r, r.trace, base, meta, derr) end
        return data, derr, meta
      end
      err = data
    else
      err = transport_error(st, terr, r.sent, base)
      -- After a connection was made the server may have acted; repeat only when safe.
      if err.connected ~= false and not retry.repeatable(r) then
        err.retry_skipped = "not idempotent"
      end
    end
    err.attempts, err.idempotency_key = attempt, r.idempotency_key
    if r.trace then observe.attempt_end(st, r, r.trace, base, nil, err) end
    if not err.retryable or err.retry_skipped or attempt > max_retries then return nil, err end
    local delay = retry.delay(st, attempt, resp)
    if deadline and (st.monotonic() - t0) + delay >= deadline then
      err.deadline_exceeded = true
      return nil, err
    end
    if st.logger then
      log(st, "warn", "wxpay retry", { attempt = attempt, delay = delay, path = r.target,
        error = tostring(err) }, r.sent)
    end
    if r.keepalive then r.keepalive(delay + 2 * r.timeout + r.connect_timeout) end
    st.sleep(delay)
  end
end

local function run(st, r)
  r.t0 = st.monotonic() -- the deadline counts from here: a certificate wait is part of it
  local deadline = r.deadline or st.deadline
  local ok, err = keyring.ensure(st, deadline and r.t0 + deadline)
  if not ok then return nil, err end
  local serial = r.wechatpay_serial or keyring.request_serial(st)
  if serial then r.headers["Wechatpay-Serial"] = serial end
  return M.perform(st, r)
end

--- Everything a call goes through: certificates ready, request serial chosen, then
-- `perform`; `meta.elapsed` or `err.elapsed` (seconds) is the whole call, and the
-- `on_request` hook (wxpay.observe) hears of every attempt and of the call.
-- @return data, nil, meta or nil, err
function M.run(st, r)
  local t0 = st.monotonic()
  r.trace = observe.start(st, r, t0)
  local data, err, meta = run(st, r)
  local elapsed = st.monotonic() - t0
  if data then meta.elapsed = elapsed else err.elapsed = elapsed end
  if r.trace then observe.call_end(st, r, r.trace, data and meta, err, elapsed) end
  return data, err, meta
end

return M
