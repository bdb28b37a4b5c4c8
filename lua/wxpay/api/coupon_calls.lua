--- Sending for the coupon products: call options, writes keyed by a request number, reads,
-- query strings and the lazy page iterator shared by `wxpay.api.busifavor` and
-- `wxpay.api.favor`.
--
-- The coupon APIs take no `Idempotency-Key` header: a write is made safe to repeat by its
-- request number in the body (`out_request_no`, `use_request_no`, …). A write is therefore
-- handed to `api.send` with `idempotent = true`, which tells the pipeline it may repeat the
-- request after a dropped connection exactly like one with an Idempotency-Key.
-- @module wxpay.api.coupon_calls

local errors = require("wxpay.errors")
local fields = require("wxpay.api.fields")
local paging = require("wxpay.api.paging")

local M = {}

local OPTS_KEYS = { timeout = true, connect_timeout = true, deadline = true,
  max_retries = true, wechatpay_serial = true, on_request = true }
-- The largest offset a page may state: 2^31 - 1.
local MAX_OFFSET = 2147483647

--- Raise for a wrong argument type in the programmer's own call (like `luaL_argcheck`).
function M.argcheck(fname, n, v, want)
  local ok = (want == "table" and type(v) == "table") or (want == "table?" and (v == nil or type(v) == "table"))
  if not ok then
    error(string.format("bad argument #%d to '%s' (%s expected, got %s)", n, fname,
      want == "table?" and "table or nil" or want, type(v)), 3)
  end
end

--- Validate call options; `extra` adds allowed keys (a set). Returns opts (never nil).
function M.options(api, opts, extra)
  opts = opts or {}
  local allowed = {}
  for k in pairs(OPTS_KEYS) do allowed[k] = true end
  for k in pairs(extra or {}) do allowed[k] = true end
  local ok, err = fields.known(opts, allowed, "opts.")
  if not ok then return nil, err end
  ok, err = api.check_call_options(opts, "opts.")
  if not ok then return nil, err end
  return opts
end

--- Build `path?name=value&…` from an array of `{ name, value }` (nil values skipped).
function M.target(api, path, pairs_)
  local parts = {}
  for _, p in ipairs(pairs_) do
    local v = p[2]
    if v ~= nil then
      if type(v) == "number" then v = string.format("%d", v) end
      parts[#parts + 1] = p[1] .. "=" .. api.percent_encode(v)
    end
  end
  if #parts == 0 then return path end
  return path .. "?" .. table.concat(parts, "&")
end

local function request(method, target, body, opts)
  return { method = method, target = target, body = body, timeout = opts.timeout,
    connect_timeout = opts.connect_timeout, deadline = opts.deadline,
    max_retries = opts.max_retries, wechatpay_serial = opts.wechatpay_serial,
    on_request = opts.on_request }
end

-- Put the request numbers (`{ out_request_no = "…" }`) on the meta or the error.
local function tag(t, numbers)
  if t then for k, v in pairs(numbers) do t[k] = v end end
  return t
end

--- Send a write that is idempotent by its request number(s) or by nature.
-- @tparam table api the client handle
-- @tparam string method `POST` or `PATCH`
-- @tparam string target path (and query)
-- @tparam table body the checked object (encoded here, once: every repeat sends these bytes)
-- @tparam table opts checked call options
-- @tparam table numbers request numbers to report in `meta` and errors (may be empty)
-- @return data, err, meta as `api.send`
function M.write(api, method, target, body, opts, numbers)
  local r = request(method, target, body and api.encode_json(body) or nil, opts)
  r.idempotent = true
  r.request_numbers = numbers
  local data, err, meta = api.send(r)
  if not data then return nil, tag(err, numbers), meta end
  return data, nil, tag(meta or {}, numbers)
end

-- The node `schema` declares for `name` (its request number).
local function node_of(schema, name)
  for _, f in ipairs(schema) do
    if f[1] == name then return f[2] end
  end
end

-- Copy `params` and fill the request number `name`; returns the copy and the number.
local function with_number(api, params, name, schema)
  local no, err = M.request_no(api, params, name, 128, node_of(schema, name))
  if not no then return nil, err end
  local p = {}
  for k, v in pairs(params) do p[k] = v end
  p[name] = no
  return p, no
end

--- Check `params` against `schema` (a fresh request number `name` filled in when absent),
-- apply `cross` (cross-field rules on the checked copy), and send it as a keyed write.
-- Errors carry the request number as `err[name]`. The caller has checked the argument types.
function M.keyed_write(api, method, target, params, opts, schema, name, cross)
  local p, no = with_number(api, params, name, schema)
  if not p then return nil, no end
  local numbers = { [name] = no }
  local o, err = M.options(api, opts)
  local body
  if o then body, err = fields.check(p, schema, api.check_utf8) end
  if body and cross then
    local ok
    ok, err = cross(body)
    if not ok then body = nil end
  end
  if not body then
    err[name] = no
    return nil, err
  end
  return M.write(api, method, target, body, o, numbers)
end

--- Send a GET.
function M.read(api, target, opts)
  return api.send(request("GET", target, nil, opts or {}))
end

--- A GET of one object whose answer must hold the string fields `names`: data, nil, meta; or
-- nil, err (and meta when the call itself failed).
function M.read_one(api, target, opts, names)
  local data, err, meta = M.read(api, target, opts)
  if not data then return nil, err, meta end
  local ok, derr = M.expect(data, names, meta)
  if not ok then return nil, derr end
  return data, nil, meta
end

--- A `decode` error for a signed answer that lacks what the call promises.
function M.decode_error(what, meta)
  meta = meta or {}
  return errors.new("decode", what, { status = meta.status, request_id = meta.request_id,
    attempts = meta.attempts, elapsed = meta.elapsed })
end

--- Require string fields in an answer: returns data, or nil and a `decode` error.
function M.expect(data, names, meta)
  for _, name in ipairs(names) do
    if type(data[name]) ~= "string" or data[name] == "" then
      return nil, M.decode_error("answer lacks " .. name, meta)
    end
  end
  return data
end

-- A page's own numbers steer the iterator: integers in range, or the page is refused.
local function page_numbers(data, meta)
  for _, name in ipairs({ "offset", "limit", "total_count" }) do
    local v = data[name]
    if v ~= nil and (type(v) ~= "number" or v ~= v or math.floor(v) ~= v or v < 0 or v > MAX_OFFSET) then
      local e = M.decode_error("list page: " .. name .. " is not an integer 0.." .. MAX_OFFSET, meta)
      e.field = name
      return nil, e
    end
  end
  if data.data ~= nil and type(data.data) ~= "table" then
    return nil, M.decode_error("list page: data is not an array", meta)
  end
  return true
end

--- Fetch one page: `target_for(limit, offset)` builds the request target.
-- @return `{ data, offset, limit, total_count }`, err, meta
function M.page(api, target_for, limit, offset, opts)
  local data, err, meta = M.read(api, target_for(limit, offset), opts)
  if not data then return nil, err, meta end
  local ok, perr = page_numbers(data, meta)
  if not ok then return nil, perr end
  return { data = data.data or {}, offset = data.offset or offset, limit = data.limit or limit,
    total_count = data.total_count }, nil, meta
end

--- A lazy iterator over every item, one page in memory. `mode` is `"page"` (offset is a
-- page index: next = offset + 1) or `"item"` (next = offset + #data). It stops after a
-- short or empty page, when `total_count` is reached, or if the offset would not advance;
-- a failure raises the structured error inside the loop (and again on a later call).
function M.iterate(api, target_for, limit, offset, mode)
  return paging.iterate(function(l, o) return M.page(api, target_for, l, o) end, limit, offset, mode)
end

--- Check the paging filters `limit` (1..`max_limit`, default `default_limit`), `offset`
-- (default 0) and `offset_mode`; returns limit, offset, mode or nil, err.
function M.paging(api, filters, default_limit, max_limit, fixed_mode)
  local limit, offset = filters.limit or default_limit, filters.offset or 0
  local ok, err = fields.integer(limit, "limit", 1, max_limit)
  if not ok then return nil, err end
  ok, err = fields.integer(offset, "offset", 0, MAX_OFFSET)
  if not ok then return nil, err end
  local mode = fixed_mode or filters.offset_mode or api.offset_mode or "page"
  if mode ~= "page" and mode ~= "item" then
    return nil, errors.invalid_argument("offset_mode", 'must be "page" or "item"')
  end
  return limit, offset, mode
end

--- The request number `name` from `params`: checked when given (against `node`, default
-- the stated charset `fields.request_no(max)`), generated when not (generated numbers
-- always keep the safe charset).
-- @return the number, or nil and an error
function M.request_no(api, params, name, max, node)
  local v = params[name]
  if v == nil then return api.new_idempotency_key() end
  return fields.value(v, name, node or fields.request_no(max), api.check_utf8)
end

--- The merchant id `name` from `t`, defaulting to the client's `mchid`.
function M.mchid(api, t, name, min, max)
  local v = t[name]
  if v == nil then v = api.mchid end
  if v == nil then return nil, errors.invalid_argument(name, "required (the client has no mchid)") end
  return fields.value(v, name, fields.digits(min or 1, max or 20), api.check_utf8)
end

--- The callback-URL query both products have (`GET BASE/callbacks?mchid=`): `mchid`
-- defaults to the client's, and must be `min`..`max` digits.
-- @return `{ mchid, notify_url }`, or nil and an error
function M.get_callback(api, base, mchid, opts, min, max)
  M.argcheck("get", 2, opts, "table?")
  local o, err = M.options(api, opts)
  if not o then return nil, err end
  local id
  id, err = M.mchid(api, { mchid = mchid }, "mchid", min, max)
  if not id then return nil, err end
  return M.read(api, M.target(api, base .. "/callbacks", { { "mchid", id } }), o)
end

--- The resource of a parsed notification of `event_type`, which must carry the string
-- fields named in `required` (e.g. `{ "coupon_id", "stock_id" }`).
-- @return the resource, or nil and an `invalid_argument` error
function M.event(notification, event_type, required)
  if type(notification) ~= "table" or notification.event_type ~= event_type then
    return nil, errors.invalid_argument("event_type", "is not " .. event_type)
  end
  local r = notification.resource_data
  local ok = type(r) == "table"
  for _, name in ipairs(required) do ok = ok and type(r[name]) == "string" end
  if not ok then
    return nil, errors.invalid_argument("resource", event_type .. " resource lacks "
      .. table.concat(required, " or "))
  end
  return r
end

--- One page and the lazy iterator over a query builder `query(api, ...)` that returns
-- `target_for(limit, offset), limit, offset, mode` or `nil, err`. The filters are the
-- call's last argument (number `n`); `mode` defaults to the page-index mode.
-- @return `page(api, ...)`, `list(api, ...)`: bad filters are `nil, err` from `page` and
--   raise from `list`; a failure while paging raises inside the loop
function M.pager(query, n)
  local function page(api, ...)
    M.argcheck("page", n, select(n, ...), "table")
    local target_for, limit, offset = query(api, ...)
    if not target_for then return nil, limit end
    return M.page(api, target_for, limit, offset)
  end
  local function list(api, ...)
    M.argcheck("list", n, select(n, ...), "table")
    local target_for, limit, offset, mode = query(api, ...)
    if not target_for then error(limit, 2) end
    return M.iterate(api, target_for, limit, offset, mode or "page")
  end
  return page, list
end

--- Bind a tree of module functions `fn(api, ...)` to a client's handle: the dot-called
-- closures `client.busifavor` and `client.favor` are made of.
-- @tparam table api the handle
-- @tparam table tree names -> functions, or -> nested trees
-- @treturn table the same tree of closures
function M.bind(api, tree)
  local out = {}
  for name, v in pairs(tree) do
    if type(v) == "table" then
      out[name] = M.bind(api, v)
    else
      out[name] = function(...) return v(api, ...) end
    end
  end
  return out
end

return M
