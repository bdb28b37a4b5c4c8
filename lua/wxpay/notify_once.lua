--- Callbacks handled exactly once across the fleet: `client.notify.handle(headers, body,
-- handler, opts)` verifies and decrypts a callback (`client.notify.parse`), then runs
-- `handler(n, meta)` at most once per notification id for everything sharing the client's
-- `store` (`ngx:NAME`: the workers of one nginx; Redis: every host; without a store: this
-- client only). WeChat Pay repeats a notification until it gets a 2xx, for about 24 hours,
-- to any worker of any host; the answer follows the durable record:
--
-- * the id is taken with an atomic `add` of a lease (`opts.lease` seconds) before the
--   handler runs, renewed under OpenResty while the handler runs; a delivery that finds a
--   lease answers a retryable failure (WeChat Pay repeats it later) and does not run the
--   handler;
-- * when the handler returns true the id is stored as handled for `opts.keep` seconds
--   (default 7 days, at least 25 hours) and only then is success (204) answered; a later
--   delivery of a handled id answers success without running the handler;
-- * when the handler fails (returns false or nil, or raises) the lease is released: the id
--   stays unhandled and the next delivery runs the handler again;
-- * when the store cannot answer, the handler is not run and the answer is a retryable
--   failure.
--
-- docs/callbacks.md describes it for users.
-- @module wxpay.notify_once

local errors = require("wxpay.errors")
local store_mod = require("wxpay.store")

local M = {}

M.LEASE = 60          -- seconds a delivery holds an id while its handler runs
M.KEEP = 7 * 86400    -- seconds a handled id is remembered
M.MAX_HOLD = 3600     -- seconds the lease is renewed at most: a hung handler does not hold the id for ever
local MIN_KEEP = 90000 -- 25 h: longer than WeChat Pay's retry window (15 repeats over about 24 h 4 min)
local MAX_ID = 256
local DONE = "done"

local function answer(status, message)
  if status == 204 then return { status = 204, body = "" } end
  return { status = status, body = '{"code":"FAIL","message":"' .. message .. '"}' }
end

local OPTS = { lease = true, keep = true, store = true }

local function check_opts(opts)
  if opts == nil then return { lease = M.LEASE, keep = M.KEEP } end
  if type(opts) ~= "table" then return nil, errors.invalid_argument("opts", "must be a table") end
  for k in pairs(opts) do
    if not OPTS[k] then return nil, errors.invalid_argument("opts." .. tostring(k), "unknown option") end
  end
  local lease, keep = opts.lease or M.LEASE, opts.keep or M.KEEP
  if type(lease) ~= "number" or lease ~= lease or lease <= 0 or lease > 86400 then
    return nil, errors.invalid_argument("opts.lease", "must be a positive number of seconds, at most 86400")
  end
  if type(keep) ~= "number" or keep ~= keep or keep < MIN_KEEP or keep > 366 * 86400 then
    return nil, errors.invalid_argument("opts.keep", "must be a number of seconds from " .. MIN_KEEP
      .. " (25 hours: WeChat Pay repeats a callback for about 24 hours) to 31622400")
  end
  if opts.store ~= nil and type(opts.store) ~= "string" and type(opts.store) ~= "table" then
    return nil, errors.invalid_argument("opts.store", "must be a store as the config key `store` takes")
  end
  return { lease = lease, keep = keep, store = opts.store }
end

-- The store the ids live in, scoped to the merchant: `opts.store` (opened once per client
-- and kept), else the client's `store`, else one of this client's own in memory.
local function store_of(st, spec)
  if spec == nil and st.fleet then return st.fleet.store end
  st.notify_stores = st.notify_stores or {}
  local key = spec or 1 -- 1: the client's own memory store (a "memory" option is another)
  if not st.notify_stores[key] then
    local s, err = store_mod.open(spec, { clock = function() return st.monotonic() end,
      sleep = function(seconds) return st.sleep(seconds) end })
    if not s then return nil, err end
    st.notify_stores[key] = assert(s:scope(st.mchid))
  end
  return st.notify_stores[key]
end

local function store_failed(st, err)
  if st.fleet then require("wxpay.fleet").failed(st, "notify", err) end
  return answer(500, "try again later"), "store_unavailable", err
end

-- Take the id: a token (ours to run), "done", "in_progress", or nil, err.
local function take(s, key, lease)
  for _ = 1, 2 do
    local token, err = store_mod.lock(s, key, lease)
    if token == nil then return nil, err end
    if token then return token end
    local held
    held, err = s:get(key)
    if held == nil and err then return nil, err end
    if held == DONE then return DONE end
    if held ~= nil then return "in_progress" end
    -- expired between the add and the get: try once more
  end
  return "in_progress"
end

-- Extends KEYS[1] to ARGV[2] ms only while it still holds ARGV[1] (this delivery's token).
local RENEW_SCRIPT = [[
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
]]

-- Extend our lease by `lease` seconds if we still hold it; false when it is gone.
local function renew(s, key, token, lease)
  if s:scripted() then
    return tonumber((s:eval(RENEW_SCRIPT, { key }, { token, tostring(math.ceil(lease * 1000)) }))) == 1
  end
  if s:get(key) ~= token then return false end -- a shared dict: get then set, not atomic
  return s:set(key, token, lease) == true
end

-- Under OpenResty, a light thread renews the lease every third of it while the handler
-- runs (it waits on I/O, a database write, so the thread gets its turns): a handler slower
-- than the lease keeps the id and a delivery meanwhile answers "in progress". Not past
-- MAX_HOLD seconds: a hung handler then lets a later delivery run it. Elsewhere (plain
-- Lua) nothing renews it: the handler must finish within `lease`.
local function keep_lease(st, s, key, token, lease)
  local ngx = rawget(_G, "ngx")
  if not (ngx and ngx.thread and ngx.sleep) then return nil end
  local t0 = st.monotonic()
  local ok, th = pcall(ngx.thread.spawn, function()
    while true do
      ngx.sleep(lease / 3)
      if st.monotonic() - t0 > M.MAX_HOLD or not renew(s, key, token, lease) then return end
    end
  end)
  return ok and th or nil
end

-- Run the handler protected (its lease kept while it runs). Returns true, or false and
-- what it said.
local function call(st, handler, n, meta, s, key, token, lease)
  local th = keep_lease(st, s, key, token, lease)
  local ok, res, why = pcall(handler, n, meta)
  if th then pcall(rawget(_G, "ngx").thread.kill, th) end
  if not ok then return false, res end
  if res then return true end
  return false, why
end

--- Run `handler` once for the notification `n` (already verified).
-- @return answer, outcome and, when not handled, what went wrong (see `handle`)
function M.run(st, n, meta, handler, opts)
  local o, oerr = check_opts(opts)
  if not o then return answer(500, "handler options"), "refused", oerr end
  local id = n.id
  if type(id) ~= "string" or id == "" or #id > MAX_ID or id:find("%c") then
    return answer(400, "bad request"), "refused", errors.invalid_argument("id",
      "the notification has no usable id (a string of 1-" .. MAX_ID .. " characters)")
  end
  local s, serr0 = store_of(st, o.store)
  if not s then return answer(500, "handler options"), "refused", serr0 end
  local key = "notify:" .. id
  local token, err = take(s, key, o.lease)
  if token == nil then return store_failed(st, err) end
  if token == DONE then return answer(204), "duplicate" end
  if token == "in_progress" then return answer(500, "in progress, try again later"), "in_progress" end
  local ok, why = call(st, handler, n, meta, s, key, token, o.lease)
  if not ok then
    store_mod.unlock(s, key, token) -- a failing store leaves the lease to expire
    return answer(500, "handler failed, try again later"), "failed", why
  end
  local stored, serr = s:set(key, DONE, o.keep)
  if not stored then
    -- The handler ran but nothing durable says so: answer a failure. The lease expires and a
    -- later delivery runs the handler again (docs/callbacks.md: make it safe to repeat).
    return store_failed(st, serr)
  end
  return answer(204), "handled"
end

--- Add `handle` to a client's `notify` table (done by `wxpay.client`).
function M.bind(notify, st)
  --- Verify and decrypt a callback, then run `handler(n, meta)` once per notification id
  -- across everything sharing the client's `store`.
  -- @tparam table headers the request headers
  -- @tparam string body the raw request body
  -- @tparam function handler `handler(n, meta)`: true when handled; false/nil (and a reason) or
  --   a raise when not
  -- @tparam[opt] table opts `lease` (seconds, default 60), `keep` (seconds, default 7 days),
  --   `store` (where the ids live, as the config key `store`; default: the client's)
  -- @return answer `{ status, body }` to send back; outcome (`"handled"`, `"duplicate"`,
  --   `"in_progress"`, `"failed"`, `"refused"`, `"store_unavailable"`); the notification
  --   when it was verified; and what went wrong: the handler's own error or reason
  --   (`"failed"`), or a wxpay error (`"refused"`, `"store_unavailable"`, bad `opts`)
  function notify.handle(headers, body, handler, opts)
    if type(handler) ~= "function" then
      error("bad argument #3 to 'handle' (function expected, got " .. type(handler) .. ")", 2)
    end
    local n, err, meta = notify.parse(headers, body)
    if not n then return err.answer, "refused", nil, err end
    local a, outcome, herr = M.run(st, n, meta, handler, opts)
    return a, outcome, n, herr
  end

  --- The second half of `handle`, for a notification already returned by `parse` (a caller
  -- that parsed it itself, such as `wxpay.router`): run `handler(n, meta)` once per id.
  -- @return answer, outcome and, when not handled, what went wrong (as `handle`)
  function notify.once(n, meta, handler, opts)
    if type(n) ~= "table" then error("bad argument #1 to 'once' (table expected, got " .. type(n) .. ")", 2) end
    if type(handler) ~= "function" then
      error("bad argument #3 to 'once' (function expected, got " .. type(handler) .. ")", 2)
    end
    return M.run(st, n, meta, handler, opts)
  end
  return notify
end

return M
