--- The key ring: the keys responses are verified with (the WeChat Pay public key by id,
-- platform certificates by serial), which one requests name, pruning of expired ones, and
-- the download, refresh and "ready before a call" of platform certificates
-- (docs/protocol.md#platform-certificates, docs/protocol.md#rotation-and-refresh).
-- @module wxpay.keyring

local core = require("wxpay.core")
local errors = require("wxpay.errors")
local json = require("wxpay.json")
local redact = require("wxpay.redact")
local verify = require("wxpay.verify")

local M = {}

local CERTIFICATES_TARGET = "/v3/certificates?algorithm_type=RSA"

--- A serial in the form used to compare two: upper case without leading zero nibbles
-- (Java renders serials without them, Go with them).
-- @tparam string s
-- @treturn string
M.serial_key = verify.serial_key

-- The newest usable platform certificate: latest not_before, ties by latest not_after.
local function newest_certificate(st, now)
  local best
  for _, c in ipairs(st.certificates) do
    if c.not_after >= now then
      if not best or c.not_before > best.not_before
         or (c.not_before == best.not_before and c.not_after > best.not_after) then
        best = c
      end
    end
  end
  return best
end

--- The Wechatpay-Serial sent with requests: it selects the response-signing key
-- (docs/protocol.md#migration).
-- @return the serial or public key id, or nil when the ring is empty
function M.request_serial(st)
  if st.public_key then return st.public_key.id end
  local c = newest_certificate(st, st.now())
  return c and c.serial or nil
end

--- The key sensitive fields are encrypted with: the one `request_serial` names
-- (docs/protocol.md#sensitive-fields).
-- @return key and its serial, or nothing
function M.encryption_key(st)
  if st.public_key then return st.public_key.key, st.public_key.id end
  local c = newest_certificate(st, st.now())
  if c then return c.key, c.serial end
end

--- Drop expired certificates from the ring (docs/protocol.md#rotation-and-refresh),
-- remembering their serials so that a response naming one says "expired" rather than
-- "unknown".
function M.prune_expired(st)
  local now, keep = st.now(), {}
  for _, c in ipairs(st.certificates) do
    if c.not_after >= now then keep[#keep + 1] = c else st.expired[M.serial_key(c.serial)] = true end
  end
  if #keep ~= #st.certificates then st.certificates = keep end
end

--- The keys responses are verified with, as `client.certificates.list()` shows them.
-- @treturn table array of `{ serial_no, not_before, not_after, source }`
function M.list(st)
  M.prune_expired(st)
  local out = {}
  local main = st.public_key and st.public_key.id:upper()
  if main then out[1] = { serial_no = st.public_key.id, source = "public_key" } end
  for id in pairs(st.public_keys or {}) do
    if id ~= main then out[#out + 1] = { serial_no = id, source = "public_key" } end -- listed once
  end
  for _, c in ipairs(st.certificates) do
    out[#out + 1] = { serial_no = c.serial, not_before = c.not_before, not_after = c.not_after,
      source = c.source, decrypted_with = c.decrypted_with }
  end
  return out
end

-- An unknown serial may be a certificate issued since the last download: refresh once, at
-- most every 60 s (docs/protocol.md#response-verification,
-- docs/protocol.md#rotation-and-refresh). The very first download (combined mode meeting
-- its first certificate-signed answer) does not count toward that limit.
local function may_refresh_for_unknown_serial(st)
  if not st.download then return false end
  if not st.download_attempted then return true end
  local now = st.monotonic()
  if st.unknown_serial_refresh and now - st.unknown_serial_refresh < 60 then return false end
  st.unknown_serial_refresh = now
  return true
end

--- Verify a signed message like a response; on an unknown serial, refresh the downloaded
-- certificates (rate-limited) and verify once more.
-- @tparam table st
-- @tparam table msg `{ status?, headers (lower-cased), body, what? }`
-- @tparam[opt] number give_up_at the call's deadline (`monotonic`): the refresh is not
--   waited for past it
function M.verify(st, msg, give_up_at)
  local key_id, verr = verify.response(st, msg)
  if not key_id and verr.check == "serial" and may_refresh_for_unknown_serial(st)
     and M.refresh(st, { wait = true, give_up_at = give_up_at }) then
    key_id, verr = verify.response(st, msg)
  end
  return key_id, verr
end

-- A rejected download: the error, redacted (an entry's serial_no or the answer's
-- Wechatpay-Serial may echo the request's signature) and logged. `sent` lists the
-- Authorization values of the download (nil for a stored answer).
local function rejected_error(st, e, sent)
  redact.error(st, e, sent)
  redact.log(st, "warn", "wxpay certificate download rejected", { error = tostring(e) }, sent)
  return nil, e
end

local function rejected(st, resp, sent, kind, msg, extra)
  local fields = { status = resp.status, request_id = resp.headers["request-id"] }
  for k, v in pairs(extra or {}) do fields[k] = v end
  return rejected_error(st, errors.new(kind, "/v3/certificates: " .. msg, fields), sent)
end

-- Decrypt and check one entry of the answer. Returns the ring entry (nil for a certificate
-- outside its validity), or false, kind, message, extra.
local function decrypt_entry(st, i, entry, now)
  local ec = type(entry) == "table" and entry.encrypt_certificate
  if type(ec) ~= "table" or type(entry.serial_no) ~= "string" or type(ec.ciphertext) ~= "string"
     or type(ec.nonce) ~= "string" or ec.algorithm ~= "AEAD_AES_256_GCM" then
    return false, "decode", "entry " .. i .. " is malformed"
  end
  local aad = type(ec.associated_data) == "string" and ec.associated_data or ""
  local pem, which = require("wxpay.rotation").decrypt(st, ec.nonce, aad, ec.ciphertext)
  if not pem then
    return false, "signature", "entry " .. i .. " does not decrypt with the apiv3_key", { check = "decrypt" }
  end
  local cert = core.load_certificate(pem)
  if not cert then return false, "decode", "entry " .. i .. " is not a certificate" end
  if M.serial_key(cert:serial()) ~= M.serial_key(entry.serial_no) then
    return false, "signature", "entry " .. i .. " serial_no does not match its certificate",
      { check = "serial", serial = entry.serial_no }
  end
  if cert:not_before() <= now and now <= cert:not_after() then
    return { serial = entry.serial_no:upper(), key = cert:public_key(), not_before = cert:not_before(),
      not_after = cert:not_after(), source = "downloaded", decrypted_with = which }
  end
end

-- The configured keys with the downloaded set replaced by `fresh`.
local function swap_in(st, fresh)
  local keep = {}
  for _, c in ipairs(st.certificates) do
    if c.source ~= "downloaded" then keep[#keep + 1] = c end
  end
  for _, c in ipairs(fresh) do keep[#keep + 1] = c end
  st.certificates = keep
end

local function has_valid_download(st, now)
  for _, c in ipairs(st.certificates) do
    if c.source == "downloaded" and c.not_after >= now then return true end
  end
  return false
end

-- Check a `/v3/certificates` answer and replace the downloaded set, following
-- docs/protocol.md#trusting-a-download: decrypt every entry (any failure rejects the whole
-- answer), check each certificate's serial and validity, verify the answer with the already
-- trusted keys plus the new certificates, and only then swap the set in. The same checks
-- for a fresh download and for one read from a shared store (`stored`): there the
-- signature may be as old as one refresh interval (plus the clock skew), never older, so a
-- replayed old answer is refused; the APIv3 key's GCM tag still proves each certificate
-- came from WeChat Pay for this merchant, and expired ones are dropped. `sent` lists the
-- Authorization values of a fresh download, redacted from errors and logs. Returns true or
-- nil, err; the current set is kept on failure.
function M.accept(st, resp, stored, sent)
  local obj = json.decode(resp.body)
  if type(obj) ~= "table" or type(obj.data) ~= "table" then
    return rejected(st, resp, sent, "decode", "no data array")
  end
  local now = st.now()
  local fresh, ring = {}, {}
  for _, c in ipairs(st.certificates) do ring[#ring + 1] = c end
  for i, entry in ipairs(obj.data) do
    local c, kind, msg, extra = decrypt_entry(st, i, entry, now)
    if c == false then return rejected(st, resp, sent, kind, msg, extra) end
    if c then
      fresh[#fresh + 1] = c
      ring[#ring + 1] = c
    end
  end
  if #fresh == 0 and (stored or has_valid_download(st, now)) then
    -- An empty (or all-expired) list never replaces a set that still verifies answers (nor is
    -- one worth taking from the store).
    return rejected(st, resp, sent, "decode", "the answer lists no valid certificate; the current set is kept")
  end
  resp.what = stored and "stored /v3/certificates response" or "/v3/certificates response"
  local view = st
  if stored then
    local ts = tonumber(resp.headers["wechatpay-timestamp"] or "")
    local age = ts and now - ts
    if not age or age > st.certificate_refresh_interval + st.clock_skew or age < -st.clock_skew then
      return rejected(st, resp, sent, "signature", "the stored answer was signed more than one refresh interval ago",
        { check = "timestamp" })
    end
    view = setmetatable({ now = function() return ts end }, { __index = st })
  end
  local verified, verr = verify.response(view, resp, ring)
  if not verified then return rejected_error(st, verr, sent) end
  swap_in(st, fresh)
  st.has_downloaded = #fresh > 0
  st.next_refresh = st.monotonic() + st.certificate_refresh_interval
  redact.log(st, "debug", "wxpay certificates refreshed", { count = #fresh, stored = stored or nil })
  return true
end

-- Download /v3/certificates and take it in (`M.accept`). `opts.give_up_at` (`monotonic`)
-- bounds it (the waiting call's deadline); `opts.keepalive(seconds)` is called before every
-- transmission and pause (the fleet lock's lease). Returns true and the answer, or nil, err.
local function download_certificates(st, opts)
  opts = opts or {}
  local now_mono = st.monotonic()
  st.next_refresh = now_mono + 60 -- a failure is retried at most once a minute
  st.download_attempted = true
  -- Required here, not at load time: the pipeline needs this module to verify answers.
  local r = { method = "GET", target = CERTIFICATES_TARGET, raw = true, keepalive = opts.keepalive,
    headers = { Accept = "application/json", ["User-Agent"] = st.user_agent } }
  if opts.give_up_at then
    local left = opts.give_up_at - now_mono
    if left <= 0 then return nil, errors.new("timeout", "deadline reached before the certificate download") end
    r.deadline = math.min(st.deadline or left, left)
  end
  local resp, err = require("wxpay.pipeline").perform(st, r)
  if not resp then
    if err.kind == "api" and err.status == 404 and st.public_key then
      -- public-key-only merchants have no platform certificates
      -- (docs/protocol.md#merchants-without-platform-certificates)
      st.next_refresh = now_mono + st.certificate_refresh_interval
      return true
    end
    redact.log(st, "warn", "wxpay certificate download failed", { error = tostring(err) })
    return nil, err
  end
  local ok, aerr = M.accept(st, resp, nil, r.sent)
  if not ok then return nil, aerr end
  return true, resp
end

-- With a shared store: the fleet's one download (wxpay.fleet.certs), else our own.
local function shared_or_own(st, opts)
  if st.fleet and st.fleet.shared then
    return require("wxpay.fleet.certs").refresh(st, download_certificates, opts)
  end
  return download_certificates(st, opts)
end

--- Download the platform certificates now. One download at a time: a caller arriving
-- while another coroutine (OpenResty, the concurrent transport) is downloading waits for
-- that download's outcome instead of starting a second one (never past `opts.give_up_at`).
-- Waiting uses the `sleep` hook, so it yields where that yields.
-- @tparam table st
-- @tparam[opt] table opts `give_up_at` (`monotonic` time: the call's deadline), `wait`
--   (default true: wait for another fleet member's download; false: return at once)
-- @return true, or nil and an error (the current set is kept)
function M.refresh(st, opts)
  opts = opts or {}
  if opts.wait == nil then opts.wait = true end
  if st.refreshing then
    if not opts.wait then return nil, errors.new("timeout", "a certificate download is in progress") end
    local limit = st.monotonic() + (st.timeout + st.connect_timeout) * (st.max_retries + 2)
    if opts.give_up_at then limit = math.min(limit, opts.give_up_at) end
    while st.refreshing and st.monotonic() < limit do st.sleep(math.min(0.01, math.max(0, limit - st.monotonic()))) end
    if st.refreshing then
      return nil, errors.new("timeout", "waited too long for a certificate download in progress")
    end
    return st.refresh_ok, st.refresh_err
  end
  st.refreshing = true
  local ok, res, err = pcall(shared_or_own, st, opts)
  st.refreshing = false
  if not ok then error(res, 0) end
  if res then err = nil end -- the answer itself stays here
  st.refresh_ok, st.refresh_err = res, err
  return res, err
end

-- A due refresh for a client that holds a valid key: never waited for. Under OpenResty a
-- timer runs it (the call goes on at once); elsewhere it runs here without waiting for
-- another fleet member's download.
local function refresh_ahead(st, give_up_at)
  local ngx = rawget(_G, "ngx")
  if ngx and ngx.timer and ngx.timer.at then
    if st.ahead_scheduled then return end
    local ok, t = pcall(ngx.timer.at, 0, function(premature)
      st.ahead_scheduled = nil
      if not premature and not st.refreshing then pcall(M.refresh, st, { wait = true }) end
    end)
    if ok and t then st.ahead_scheduled = true; return end
  end
  M.refresh(st, { wait = false, give_up_at = give_up_at })
end

--- Certificates ready before a call: the first download and the periodic refresh
-- (docs/protocol.md#rotation-and-refresh). With a public key too (combined mode)
-- certificates are only fetched on an unknown serial, and kept fresh periodically once some
-- were downloaded. A client that holds a valid key never waits for a due refresh
-- (`refresh_ahead`); one without waits, never past `give_up_at`.
-- @tparam table st
-- @tparam[opt] number give_up_at the call's deadline (`monotonic`)
-- @return true, or nil and an error
function M.ensure(st, give_up_at)
  M.prune_expired(st)
  if not st.download or (st.public_key and not st.has_downloaded) then return true end
  local due = not (st.next_refresh and st.monotonic() < st.next_refresh)
  if M.request_serial(st) then
    if due and not st.refreshing then refresh_ahead(st, give_up_at) end
    return true
  end
  if not due and not st.refreshing then return true end
  local ok, err = M.refresh(st, { give_up_at = give_up_at })
  if not ok and #st.certificates == 0 and not st.public_key then return nil, err end -- nothing to verify with
  return true
end

return M
