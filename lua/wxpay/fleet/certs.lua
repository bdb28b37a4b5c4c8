--- Platform certificates shared through the store: one `/v3/certificates` download per
-- refresh interval for every client of a merchant that shares the store.
--
-- The store holds the raw answer (status, body, the Wechatpay-* headers) and when it was
-- fetched, under `certs`, for the refresh interval. It is never trusted as such: a reader
-- checks it exactly as a fresh download (`wxpay.keyring.accept`: decrypted with the APIv3
-- key, serials and validity checked, the signature verified), so a forged or damaged entry
-- is refused and downloaded over. The download itself runs under the lock `certs:lock`, an
-- `add` with a short lease (LEASE seconds) that a live holder keeps renewing: under
-- OpenResty a heartbeat timer, in plain Lua before every transmission and pause of the
-- download (each renewal covers what comes next); so a holder that dies frees it within
-- LEASE (plain Lua: one leg). A call that holds a valid key never waits for it (`wait`
-- unset); one that needs the result (no key yet, an unknown serial) polls with the
-- `sleep` hook, takes the lock over when the lease runs out, and gives up at its deadline.
-- A store that fails: this client downloads on its own (`wxpay.fleet.failed` warns once).
-- @module wxpay.fleet.certs

local budget = require("wxpay.store.budget")
local errors = require("wxpay.errors")
local fleet = require("wxpay.fleet")
local json = require("wxpay.json")
local keyring = require("wxpay.keyring")
local redact = require("wxpay.redact")
local store = require("wxpay.store")

local M = {}

--- Seconds a download lock outlives its holder's last heartbeat.
M.LEASE = 3

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
local function try_stored(st, give_up_at)
  local f = st.fleet
  local blob, err = f.store:get(KEY, give_up_at and math.max(0.05, give_up_at - st.monotonic()))
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

-- Whether this holder can keep a short lease alive with a timer (OpenResty, outside
-- init_by_lua): then the lock lasts LEASE past the last heartbeat, so a holder killed
-- mid-download (kill -9, a worker crash) frees it within LEASE.
local function can_beat()
  local ngx = rawget(_G, "ngx")
  if not (ngx and ngx.timer and ngx.timer.at) then return false end
  local ok, phase = pcall(ngx.get_phase)
  return ok and phase ~= "init"
end

-- The lock's first TTL: LEASE with a heartbeat; else one leg of the download (a plain Lua
-- download blocks in libcurl and cannot beat), renewed before every leg and pause.
local function first_ttl(st, beats)
  if beats then return M.LEASE end
  local qps_wait = st.fleet and st.fleet.qps and math.min(st.timeout, budget.MAX_WAIT) or 0
  return qps_wait + st.timeout + st.connect_timeout + M.LEASE
end

-- A timer renewing the lock every LEASE/3 until the returned function is called.
local function heartbeat(st, token)
  local ngx = rawget(_G, "ngx")
  local on = true
  local function beat(premature)
    if premature or not on then return end
    store.renew(st.fleet.store, LOCK, token, M.LEASE)
    if on then ngx.timer.at(M.LEASE / 3, beat) end
  end
  local ok, t = pcall(ngx.timer.at, M.LEASE / 3, beat)
  if not ok or not t then return function() end end
  return function() on = false end
end

-- Download while holding the lock (its lease kept alive: a heartbeat timer, else renewed
-- before every transmission and pause of the download), publish a good answer, release.
local function download_holding(st, download, token, opts, beats)
  local f = st.fleet
  local stop
  local dl = { give_up_at = opts.give_up_at }
  if beats then
    stop = heartbeat(st, token)
  else
    dl.keepalive = function(seconds) store.renew(f.store, LOCK, token, seconds + M.LEASE) end
  end
  local done, ok, resp = pcall(download, st, dl)
  if stop then stop() end
  if done and ok and type(resp) == "table" then
    local blob = encode(st, resp)
    local stored, err = f.store:set(KEY, blob, st.certificate_refresh_interval)
    if stored then f.applied = blob else fleet.failed(st, "certificates", err) end
  end
  store.unlock(f.store, LOCK, token)
  if not done then error(ok, 0) end
  if not ok then return nil, resp end
  return true
end

--- Refresh the certificates through the store: take a newer stored answer, else download
-- under the lock (and store it), else (`opts.wait`) wait for the holder and read what it
-- stored, taking the lock over as soon as a dead holder's lease runs out; without
-- `opts.wait` (a call that holds a valid key) return at once and look again in a second.
-- @tparam table st the client state (`st.fleet` shared)
-- @tparam function download this client's own download(st, { give_up_at, keepalive }):
--   true, answer | nil, err
-- @tparam[opt] table opts `wait` (boolean), `give_up_at` (`monotonic` time: never wait
--   past it; the call's deadline)
-- @return true, or nil and an error (the current set is kept)
function M.refresh(st, download, opts)
  opts = opts or {}
  if not fleet.usable(st) then return download(st, { give_up_at = opts.give_up_at }) end
  local beats = can_beat()
  local give_up = opts.give_up_at or (st.monotonic() + download_budget(st) + M.LEASE)
  while true do
    local taken, err = try_stored(st, opts.give_up_at)
    if taken then fleet.worked(st); return true end
    local token
    if taken == false then token, err = store.lock(st.fleet.store, LOCK, first_ttl(st, beats)) end
    if token == nil then
      fleet.failed(st, "certificates", err)
      return download(st, { give_up_at = opts.give_up_at })
    end
    fleet.worked(st)
    if token then
      -- The holder before us may have stored its answer just before we took the lock.
      if try_stored(st) then store.unlock(st.fleet.store, LOCK, token); return true end
      return download_holding(st, download, token, opts, beats)
    end
    if not opts.wait then
      st.next_refresh = st.monotonic() + 1 -- the holder's answer is read then
      return nil, errors.new("timeout", "another fleet member is downloading the certificates")
    end
    local left = give_up - st.monotonic()
    if left <= 0 then
      if opts.give_up_at then
        return nil, errors.new("timeout", "the certificate download by another fleet member did not "
          .. "finish within the call's deadline", { connected = false })
      end
      return download(st, {})
    end
    st.sleep(math.min(POLL, left))
  end
end

return M
