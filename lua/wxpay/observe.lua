--- The `on_request` event hook (config key and per-call option): one event for every
-- attempt and one for every call, with the route template, the outcome and the time spent
-- in each stage. The pipeline keeps a trace only when a hook listens, so a client without
-- one pays two clock reads per call (for `meta.elapsed` / `err.elapsed`). The fields are
-- described in docs/observability.md.
-- @module wxpay.observe

local routes = require("wxpay.api.routes")

local M = {}

local PHASES = { "budget_wait", "signing", "transfer", "verification" }

-- The route label: the caller's `route`, else the declared template the path matches (a
-- product call, or client.request to a declared endpoint), else the path without its query.
local function route_of(r)
  if r.route then return r.route end
  local path = r.target:match("^[^?]*")
  return routes.match(r.method, path) or path
end

-- The request number of a coupon write (`out_request_no`, …) and its field name.
local function request_no(r)
  local name, value = next(r.request_numbers or {})
  return value, name
end

-- The transports' names (their tostring) as the events give them: libcurl (its easy
-- handle or, in a batch, its multi interface), nginx cosockets, or the caller's own.
local TRANSPORTS = { ["wxpay.transport.curl"] = "curl", ["wxpay.transport.multi"] = "curl",
  ["wxpay.transport.ngx"] = "ngx", ["wxpay.transport.ngx (auto)"] = "ngx" }

local function transport_name(st)
  return TRANSPORTS[tostring(st.transport)] or "custom"
end

--- Start a trace for a call when a hook listens (`r.on_request`, else the client's).
-- @return the trace, or nil (no hook: nothing is measured)
function M.start(st, r, t0)
  local hook = r.on_request or st.on_request
  if not hook then return nil end
  return { hook = hook, t0 = t0, route = route_of(r), attempt_t0 = t0, transport = transport_name(st),
    total = { budget_wait = 0, signing = 0, transfer = 0, verification = 0 },
    cur = { budget_wait = 0, signing = 0, transfer = 0, verification = 0 } }
end

--- Add the time since `t` to the current attempt's `phase`.
function M.lap(st, tr, phase, t)
  tr.cur[phase] = tr.cur[phase] + (st.monotonic() - t)
end

--- An attempt begins.
function M.attempt_begin(st, tr)
  tr.attempt_t0 = st.monotonic()
  local cur = tr.cur
  cur.budget_wait, cur.signing, cur.transfer, cur.verification = 0, 0, 0, 0
end

local function host_of(st, base)
  if base == nil then return nil end
  if st.backup_url and base == st.backup_url and base ~= st.base_url then return "backup" end
  return "primary"
end

local function emit(st, tr, event)
  local ok, why = pcall(tr.hook, event)
  if not ok then
    require("wxpay.redact").log(st, "warn", "wxpay on_request hook failed", { error = tostring(why) })
  end
end

-- The fields both kinds of event share.
local function event_of(st, r, tr, phase, meta, err)
  local ev = { phase = phase, method = r.method, route = tr.route, mchid = st.mchid,
    transport = tr.transport, idempotency_key = r.idempotency_key }
  ev.request_no, ev.request_no_field = request_no(r)
  local src = err or meta
  if src then
    ev.status, ev.request_id = src.status, src.request_id
  end
  if err then
    ev.error_kind, ev.error_code, ev.retryable = err.kind, err.code, err.retryable
  end
  return ev
end

--- An attempt ended: with its answer (`meta`) or its error. `base` is the host it went to.
function M.attempt_end(st, r, tr, base, meta, err)
  local ev = event_of(st, r, tr, "attempt", meta, err)
  ev.attempt = r.attempt
  ev.host = host_of(st, base)
  ev.duration = st.monotonic() - tr.attempt_t0
  for _, p in ipairs(PHASES) do
    ev[p] = tr.cur[p]
    tr.total[p] = tr.total[p] + tr.cur[p]
  end
  tr.host = ev.host
  emit(st, tr, ev)
end

--- The call ended (`elapsed` as put on meta or err).
function M.call_end(st, r, tr, meta, err, elapsed)
  local ev = event_of(st, r, tr, "call", meta, err)
  ev.attempts = (err or meta or {}).attempts or 0
  ev.retries = ev.attempts > 0 and ev.attempts - 1 or 0
  ev.host = tr.host
  ev.duration = elapsed
  for _, p in ipairs(PHASES) do ev[p] = tr.total[p] end
  emit(st, tr, ev)
end

M.PHASES = PHASES

return M
