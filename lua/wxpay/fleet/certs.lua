--- Platform certificates shared through the store: one `/v3/certificates` download per
-- refresh interval for every client of a merchant that shares the store.
--
-- The store holds the raw answer (status, body, the Wechatpay-* headers) and when it was
-- fetched, under `certs`, for the refresh interval. It is never trusted as such: a reader
-- checks it exactly as a fresh download (`wxpay.keyring.accept`: decrypted with the APIv3
-- key, serials and validity checked, the signature verified), so a forged or damaged entry
-- is refused and downloaded over. The download itself runs under the lock `certs:lock`
-- (an `add` with a TTL a bit over the longest the download can take with this client's
-- timeouts, retries, backoff and Retry-After cap, so a dead holder blocks the others that
-- long at most); the others wait with the `sleep` hook and read its result.
-- A store that fails: this client downloads on its own (`wxpay.fleet.failed` warns once).
-- @module wxpay.fleet.certs

local budget = require("wxpay.store.budget")
local fleet = require("wxpay.fleet")
local json = require("wxpay.json")
local keyring = require("wxpay.keyring")
local redact = require("wxpay.redact")
local store = require("wxpay.store")

local M = {}

local KEY, LOCK = "certs", "certs:lock"
local POLL = 0.05 -- seconds between reads while another client downloads
local HEADERS = { "wechatpay-timestamp", "wechatpay-nonce", "wechatpay-signature",
                  "wechatpay-serial", "wechatpay-signature-type", "request-id" }

-- The longest one download can take under this client's own settings (the lock's TTL is a
-- bit more, so a slow holder keeps it): every attempt on both hosts when there is a backup,
-- each leg a rate-budget wait (at most the timeout) and the exchange, and between attempts
-- the largest backoff step or Retry-After. A `deadline` bounds it all.
local function download_budget(st)
  local legs = st.backup_url and 2 or 1
  local qps_wait = st.fleet and st.fleet.qps and math.min(st.timeout, budget.MAX_WAIT) or 0
  local leg = qps_wait + st.timeout + st.connect_timeout
  local pause = math.max(st.retry_max_delay, st.retry_after_max)
  local worst = (st.max_retries + 1) * legs * leg + st.max_retries * pause + 1
  if st.deadline then worst = math.min(worst, st.deadline + 1) end
  return worst
end

local function encode(st, resp)
  local h = {}
  for _, name in ipairs(HEADERS) do h[name] = resp.headers[name] end
  return json.encode({ status = resp.status, body = resp.body, headers = h, fetched_at = st.now() })
end

-- A stored entry as an answer, or nil when it is not one.
local function decode(blob)
  local e = json.decode(blob)
  if type(e) ~= "table" or type(e.body) ~= "string" or type(e.headers) ~= "table"
     or type(e.fetched_at) ~= "number" then
    return nil
  end
  local h = {}
  for _, name in ipairs(HEADERS) do
    if type(e.headers[name]) == "string" then h[name] = e.headers[name] end
  end
  return { status = tonumber(e.status) or 200, body = e.body, headers = h }, e.fetched_at
end

-- Take in the stored answer when it is newer than the one this client holds. Returns true
-- (taken), false (none, not newer, or refused), or nil, err (store down).
local function try_stored(st)
  local f = st.fleet
  local blob, err = f.store:get(KEY)
  if blob == nil then
    if err then return nil, err end
    return false
  end
  -- What this client holds already (it needs newer) or refused before.
  if blob == f.applied or blob == f.refused then return false end
  local resp = decode(blob)
  if resp and keyring.accept(st, resp, true) then
    f.applied = blob
    -- Refresh when the entry runs out, not a whole interval from now. Counted from the
    -- signed Wechatpay-Timestamp (accept verified it): `fetched_at` is the writer's word,
    -- and a replay with a fresh one would keep an old set nearly a second interval.
    local signed_at = tonumber(resp.headers["wechatpay-timestamp"]) or 0
    local left = signed_at + st.certificate_refresh_interval - st.now()
    st.next_refresh = st.monotonic() + math.max(1, math.min(left, st.certificate_refresh_interval))
    return true
  end
  redact.log(st, "warn", "wxpay stored certificates refused: downloading them again", {})
  f.refused = blob
  return false
end

-- Download while holding the lock, publish a good answer, release the lock.
local function download_holding(st, download, token)
  local f = st.fleet
  local ok, resp = download(st)
  if ok and type(resp) == "table" then
    local blob = encode(st, resp)
    local stored, err = f.store:set(KEY, blob, st.certificate_refresh_interval)
    if stored then f.applied = blob else fleet.failed(st, "certificates", err) end
  end
  store.unlock(f.store, LOCK, token)
  if not ok then return nil, resp end
  return true
end

--- Refresh the certificates through the store: take a newer stored answer, else download
-- under the lock (and store it), else wait for the holder and read what it stored.
-- @tparam table st the client state (`st.fleet` shared)
-- @tparam function download this client's own download: true, answer | nil, err
-- @return true, or nil and an error (the current set is kept)
function M.refresh(st, download)
  if not fleet.usable(st) then return download(st) end
  local ttl = download_budget(st) + 1
  local give_up = st.monotonic() + 2 * ttl
  while true do
    local taken, err = try_stored(st)
    if taken then fleet.worked(st); return true end
    local token
    if taken == false then token, err = store.lock(st.fleet.store, LOCK, ttl) end
    if token == nil then fleet.failed(st, "certificates", err); return download(st) end
    fleet.worked(st)
    if token then
      -- The holder before us may have stored its answer just before we took the lock.
      if try_stored(st) then store.unlock(st.fleet.store, LOCK, token); return true end
      return download_holding(st, download, token)
    end
    if st.monotonic() > give_up then return download(st) end
    st.sleep(POLL)
  end
end

return M
