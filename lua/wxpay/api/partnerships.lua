--- 委托营销 partnerships: build, terminate, page and list (docs/protocol.md#partnerships).
-- Reached as `client.partnerships`; dot-called closures bound to the client.
--
-- Input rules (checked before anything is sent; a failure is `nil, err` with
-- `kind = "invalid_argument"`, `code = "INVALID_ARGUMENT"` and `field` naming the input,
-- e.g. `partner.appid`, and no request is made):
--
-- * `params` that is not a table, or `opts` that is neither nil nor a table, raises (a
--   wrong argument type in the programmer's own call, like `luaL_argcheck`). Every other
--   problem, including a field of the wrong Lua type (`stock_id = 2433405`, a number), is
--   an `invalid_argument` error, so data-driven callers can report it per record.
-- * `partner.type` is `APPID` or `MERCHANT`; `appid` (1-32 characters) is required for
--   APPID, `merchant_id` (8-15 characters: the docs give only a length) for MERCHANT.
--   The id field that does not match `type` is left out of the request (official
--   examples carry both); it is not validated.
-- * `authorized_data.business_type` is `FAVOR_STOCK` or `BUSIFAVOR_STOCK`; `stock_id`
--   (1-20 characters) is required for build/terminate and optional as a list filter (the
--   newer list page marks it required: pass it);
--   `scenarios` (build/terminate only) is a non-empty array of distinct strings of 1-64
--   characters (`COUPON_SEND`, `STOCK_QUERY` are the known values; no official page lists
--   them) and is sent only when given. Granting or ending `FAVOR_STOCK` for a `MERCHANT`
--   partner is refused (the docs restrict it); listing it is not.
-- * Unknown fields anywhere in `params`, `partner`, `authorized_data` or `opts` are refused.
-- * Strings must be UTF-8 without 4-byte characters; lengths count characters.
-- * `limit` is an integer 1..50, `offset` an integer 0..2^31-1 (2147483647); a signed page
--   whose `offset`, `limit` or `total_count` is not an integer in that range is a `decode`
--   error (`page` returns it, `list` raises it).
-- * Identifiers (`appid`, `merchant_id`, `stock_id`) hold no control characters (CR, LF,
--   NUL, DEL, …).
-- * `opts.idempotency_key` matches `^[A-Za-z0-9|_*-]{1,48}$` (as these pages state).
-- * `page`/`list` `opts`: `timeout`, `connect_timeout`, `deadline`, `max_retries`, and
--   `headers` (extra request headers such as `Accept-Language`; not the ones the client
--   sets, nor Idempotency-Key or Wechatpay-Serial).
-- @module wxpay.api.partnerships

local errors = require("wxpay.errors")
local fields = require("wxpay.api.fields")
local paging = require("wxpay.api.paging")

local M = {}

local invalid = errors.invalid_argument

local PARTNER_TYPES = { APPID = true, MERCHANT = true }
local BUSINESS_TYPES = { FAVOR_STOCK = true, BUSIFAVOR_STOCK = true }
local OPTS_KEYS = { idempotency_key = true, wechatpay_serial = true, timeout = true,
  connect_timeout = true, deadline = true, max_retries = true, on_request = true }
-- page and list: the call options and extra headers (Accept-Language, …); no key.
local READ_OPTS_KEYS = { timeout = true, connect_timeout = true, deadline = true,
  max_retries = true, headers = true, on_request = true }
local BUILD_PATH = "/v3/marketing/partnerships/build"
local TERMINATE_PATH = "/v3/marketing/partnerships/terminate"
local LIST_PATH = "/v3/marketing/partnerships"
-- The largest offset: 2^31 - 1, a signed 32-bit integer (written out: 2^31 is a float).
local MAX_OFFSET = 2147483647

-- Protocol key order for the JSON objects (reproduces the test vectors byte for byte:
-- docs/protocol.md#test-vectors).
local PARTNER_ORDER = { __jsonorder = { "type", "appid", "merchant_id" } }
local AUTHORIZED_ORDER = { __jsonorder = { "business_type", "stock_id", "scenarios" } }
local BODY_ORDER = { __jsonorder = { "partner", "authorized_data" } }
local ARRAY = { __jsontype = "array" }

local utf8_len = fields.utf8_len

local function check_string(api, v, field, min, max)
  if type(v) ~= "string" then return nil, invalid(field, "must be a string, got " .. type(v)) end
  -- No real identifier holds one; they would only be escaped on the wire.
  if v:find("[%z\1-\31\127]") or v:find(fields.C1_CONTROL) then
    return nil, invalid(field, "must not contain control characters")
  end
  local ok, why = api.check_utf8(v)
  if not ok then return nil, invalid(field, why) end
  local n = utf8_len(v)
  if n < min or n > max then
    return nil, invalid(field, string.format("must be %d-%d characters, got %d", min, max, n))
  end
  return v
end

local check_fields = fields.known

-- `write`: build/terminate (ids required); otherwise a list filter (ids optional).
local function partner_object(api, p, write)
  if p == nil and not write then return false end
  if type(p) ~= "table" then return nil, invalid("partner", "must be a table, got " .. type(p)) end
  local ok, err = check_fields(p, { type = true, appid = true, merchant_id = true }, "partner.")
  if not ok then return nil, err end
  if p.type == nil then return nil, invalid("partner.type", "required") end
  if type(p.type) ~= "string" or not PARTNER_TYPES[p.type] then
    return nil, invalid("partner.type", "must be APPID or MERCHANT")
  end
  local out = setmetatable({ type = p.type }, PARTNER_ORDER)
  if p.type == "APPID" then
    if p.appid ~= nil or write then
      if p.appid == nil then return nil, invalid("partner.appid", "required when partner.type is APPID") end
      out.appid, err = check_string(api, p.appid, "partner.appid", 1, 32)
      if not out.appid then return nil, err end
    end
  else
    if p.merchant_id ~= nil or write then
      if p.merchant_id == nil then
        return nil, invalid("partner.merchant_id", "required when partner.type is MERCHANT")
      end
      -- The docs give a length only (real ones are digits; the API has the last word).
      out.merchant_id, err = check_string(api, p.merchant_id, "partner.merchant_id", 8, 15)
      if not out.merchant_id then return nil, err end
    end
  end
  return out
end

local function authorized_object(api, a, write)
  if a == nil then return nil, invalid("authorized_data", "required") end
  if type(a) ~= "table" then
    return nil, invalid("authorized_data", "must be a table, got " .. type(a))
  end
  local allowed = { business_type = true, stock_id = true, scenarios = write or nil }
  local ok, err = check_fields(a, allowed, "authorized_data.")
  if not ok then return nil, err end
  if a.business_type == nil then return nil, invalid("authorized_data.business_type", "required") end
  if type(a.business_type) ~= "string" or not BUSINESS_TYPES[a.business_type] then
    return nil, invalid("authorized_data.business_type", "must be FAVOR_STOCK or BUSIFAVOR_STOCK")
  end
  local out = setmetatable({ business_type = a.business_type }, AUTHORIZED_ORDER)
  if a.stock_id ~= nil or write then
    if a.stock_id == nil then return nil, invalid("authorized_data.stock_id", "required") end
    out.stock_id, err = check_string(api, a.stock_id, "authorized_data.stock_id", 1, 20)
    if not out.stock_id then return nil, err end
  end
  if a.scenarios ~= nil then
    local s = a.scenarios
    if type(s) ~= "table" then
      return nil, invalid("authorized_data.scenarios", "must be an array, got " .. type(s))
    end
    local n, count = #s, 0
    for _ in pairs(s) do count = count + 1 end
    if n == 0 or count ~= n then
      return nil, invalid("authorized_data.scenarios", "must be a non-empty array")
    end
    local seen, list = {}, setmetatable({}, ARRAY)
    for i = 1, n do
      -- No official page documents the values (COUPON_SEND and STOCK_QUERY are the known
      -- ones): any identifier-like string is sent.
      local field = "authorized_data.scenarios[" .. i .. "]"
      local v, serr = check_string(api, s[i], field, 1, 64)
      if not v then return nil, serr end
      if seen[v] then return nil, invalid(field, "duplicate " .. v) end
      seen[s[i]] = true
      list[i] = s[i]
    end
    out.scenarios = list
  end
  return out
end

-- Validate partner + authorized_data; returns the two ordered objects.
local function objects(api, params, write)
  local partner, err = partner_object(api, params.partner, write)
  if partner == nil then return nil, err end
  local ad
  ad, err = authorized_object(api, params.authorized_data, write)
  if not ad then return nil, err end
  -- The docs restrict granting FAVOR_STOCK to a merchant, not listing.
  if write and partner and partner.type == "MERCHANT" and ad.business_type == "FAVOR_STOCK" then
    return nil, invalid("partner.type", "FAVOR_STOCK cannot be authorised to a MERCHANT partner")
  end
  return partner, ad
end

local function check_integer(v, field, min, max)
  if type(v) ~= "number" then return nil, invalid(field, "must be an integer, got " .. type(v)) end
  if v ~= v or math.floor(v) ~= v or v < min or (max and v > max) then
    return nil, invalid(field, "must be an integer " .. min .. ".." .. (max or "n"))
  end
  return true
end

local function check_args(fname, params, opts)
  if type(params) ~= "table" then
    error("bad argument #1 to '" .. fname .. "' (table expected, got " .. type(params) .. ")", 3)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #2 to '" .. fname .. "' (table or nil expected, got " .. type(opts) .. ")", 3)
  end
end

-- The checks of build and terminate: partner, authorized_data and opts (the key when
-- given); returns the two ordered objects, or nil and an error.
local function write_checks(api, params, opts)
  local ok, err = check_fields(params, { partner = true, authorized_data = true }, "")
  if not ok then return nil, err end
  local partner, ad = objects(api, params, true)
  if not partner then return nil, ad end
  ok, err = check_fields(opts, OPTS_KEYS, "opts.")
  if not ok then return nil, err end
  ok, err = api.check_call_options(opts, "opts.")
  if not ok then return nil, err end
  if opts.idempotency_key ~= nil then
    ok, err = api.check_idempotency_key(opts.idempotency_key, "opts.idempotency_key")
    if not ok then return nil, err end
  end
  return partner, ad
end

-- `check`: build's and terminate's checks alone; true, or nil and the error.
local function check_call(api, params, opts)
  check_args("check", params, opts)
  local partner, err = write_checks(api, params, opts or {})
  if not partner then return nil, err end
  return true
end

-- build and terminate: POST partner + authorized_data with an Idempotency-Key.
local function write_call(api, fname, path, params, opts)
  check_args(fname, params, opts)
  opts = opts or {}
  local partner, ad = write_checks(api, params, opts)
  if not partner then return nil, ad end
  local key = opts.idempotency_key
  if key == nil then
    local kerr
    key, kerr = api.new_idempotency_key()
    if not key then return nil, kerr end
  end
  local body = api.encode_json(setmetatable({ partner = partner, authorized_data = ad }, BODY_ORDER))
  return api.send{ method = "POST", target = path, body = body, idempotency_key = key,
    wechatpay_serial = opts.wechatpay_serial, timeout = opts.timeout,
    connect_timeout = opts.connect_timeout, deadline = opts.deadline,
    max_retries = opts.max_retries, on_request = opts.on_request }
end

-- Validate list/page params; returns the canonical query builder inputs.
local function list_query(api, params, extra_keys)
  local allowed = { partner = true, authorized_data = true, limit = true, offset = true }
  for k in pairs(extra_keys or {}) do allowed[k] = true end
  local ok, err = check_fields(params, allowed, "")
  if not ok then return nil, err end
  local partner, ad = objects(api, params, false)
  if partner == nil then return nil, ad end
  if params.limit ~= nil then
    ok, err = check_integer(params.limit, "limit", 1, 50)
    if not ok then return nil, err end
  end
  if params.offset ~= nil then
    ok, err = check_integer(params.offset, "offset", 0, MAX_OFFSET)
    if not ok then return nil, err end
  end
  return { partner = partner or nil, authorized_data = ad }
end

-- Canonical target: partner, authorized_data, limit, offset
-- (docs/protocol.md#list-query-encoding, docs/protocol.md#test-vectors).
local function list_target(api, q, limit, offset)
  local parts = {}
  if q.partner then parts[#parts + 1] = "partner=" .. api.percent_encode(api.encode_json(q.partner)) end
  parts[#parts + 1] = "authorized_data=" .. api.percent_encode(api.encode_json(q.authorized_data))
  if limit then parts[#parts + 1] = string.format("limit=%d", limit) end
  if offset then parts[#parts + 1] = string.format("offset=%d", offset) end
  return LIST_PATH .. "?" .. table.concat(parts, "&")
end

-- The page's own numbers steer the iterator and the next request: integers in range, or
-- the page is refused as malformed.
local function page_numbers(data, meta)
  for _, name in ipairs({ "offset", "limit", "total_count" }) do
    local v = data[name]
    if v ~= nil then
      if type(v) ~= "number" or v ~= v or math.floor(v) ~= v or v < 0 or v > MAX_OFFSET then
        return nil, errors.new("decode", "list page: " .. name .. " is not an integer 0.." .. MAX_OFFSET
          .. " (got " .. tostring(v):sub(1, 40) .. ")", { field = name, status = meta.status,
          request_id = meta.request_id, attempts = meta.attempts, elapsed = meta.elapsed })
      end
    end
  end
  return true
end

local function number_or_nil(v) return type(v) == "number" and v or nil end

-- page and list: options checked like build's, extra headers like client.request's.
-- Returns the options for api.send, or nil and an error.
local function read_options(api, opts)
  if opts == nil then return {} end
  local ok, err = check_fields(opts, READ_OPTS_KEYS, "opts.")
  if not ok then return nil, err end
  ok, err = api.check_call_options(opts, "opts.")
  if not ok then return nil, err end
  local headers
  headers, err = api.check_extra_headers(opts.headers, "opts.headers")
  if err then return nil, err end
  return { timeout = opts.timeout, connect_timeout = opts.connect_timeout, deadline = opts.deadline,
    max_retries = opts.max_retries, headers = headers, on_request = opts.on_request }
end

-- The docs say an empty result is an error without naming its code: any 404 from the list
-- endpoint is taken as "nothing matches".
local function empty_page(err, limit, offset)
  return { data = {}, offset = offset, limit = limit, total_count = 0 }, nil,
    { status = err.status, request_id = err.request_id, attempts = err.attempts, elapsed = err.elapsed,
      empty = true }
end

local function fetch_page(api, q, limit, offset, o)
  local data, err, meta = api.send{ method = "GET", target = list_target(api, q, limit, offset),
    timeout = o.timeout, connect_timeout = o.connect_timeout, deadline = o.deadline,
    max_retries = o.max_retries, extra_headers = o.headers, on_request = o.on_request }
  if not data then
    if err.kind == "api" and err.status == 404 then return empty_page(err, limit, offset) end
    return nil, err, meta
  end
  local ok, nerr = page_numbers(data, meta)
  if not ok then return nil, nerr, meta end
  local items = type(data.data) == "table" and data.data or {}
  for _, item in ipairs(items) do
    -- `state` is not in every schema (docs/protocol.md#shared-objects): derive it and say so.
    if type(item) == "table" and item.state == nil then
      item.state = item.terminate_time and "TERMINATED" or "ESTABLISHED"
      item.state_derived = true
    end
  end
  return {
    data = items,
    offset = number_or_nil(data.offset) or offset,
    limit = number_or_nil(data.limit) or limit,
    total_count = number_or_nil(data.total_count),
  }, nil, meta
end

local function get_page(api, params, opts)
  check_args("page", params, opts)
  local q, err = list_query(api, params)
  if not q then return nil, err end
  local o
  o, err = read_options(api, opts)
  if not o then return nil, err end
  return fetch_page(api, q, params.limit, params.offset, o)
end

-- The iterator behind `list`: pages fetched lazily, one in memory.
local function iterate(api, params, opts)
  check_args("list", params, opts)
  local q, err = list_query(api, params, { offset_mode = true })
  if not q then error(err, 2) end
  local o
  o, err = read_options(api, opts)
  if not o then error(err, 2) end
  local mode = params.offset_mode or api.offset_mode
  if mode ~= "page" and mode ~= "item" then
    error(invalid("offset_mode", 'must be "page" or "item"'), 2)
  end
  return paging.iterate(function(limit, offset) return fetch_page(api, q, limit, offset, o) end,
    params.limit or 50, params.offset or 0, mode)
end

--- Bind the partnerships functions to a client's internal API handle.
-- @tparam table api the handle `wxpay.client` passes (pipeline + encoders)
-- @treturn table `{ build, terminate, page, list }`
function M.new(api)
  local P = {}

  --- Authorise a coupon stock to a partner (`POST /v3/marketing/partnerships/build`).
  -- @tparam table params `{ partner = { type, appid | merchant_id }, authorized_data =
  --   { business_type, stock_id, scenarios? } }`
  -- @tparam[opt] table opts `idempotency_key` (generated, 32 alphanumerics, when absent;
  --   always returned in `meta` and in errors so a later call can reuse it),
  --   `wechatpay_serial`, `timeout`, `connect_timeout`, `deadline`, `max_retries`
  --   A 202 (accepted, not yet processed) is repeated with the same key within the retries;
  --   when they are spent it is an `api` error with `status = 202`, `retryable = true`.
  -- @treturn table|nil the relation (`partner`, `authorized_data`, `state`, `build_time`, …)
  -- @treturn table|nil err
  -- @treturn table|nil meta
  function P.build(params, opts)
    return write_call(api, "build", BUILD_PATH, params, opts)
  end

  --- End a partnership (`POST /v3/marketing/partnerships/terminate`).
  -- Same arguments and Idempotency-Key handling as `build`.
  -- @treturn table|nil `{ terminate_time = "…" }`
  -- @treturn table|nil err
  -- @treturn table|nil meta
  function P.terminate(params, opts)
    return write_call(api, "terminate", TERMINATE_PATH, params, opts)
  end

  --- Check `params` and `opts` as `build` and `terminate` do, and send nothing: a script
  -- (the campaign runner) refuses a bad record before it journals or sends anything.
  -- @tparam table params as `build`
  -- @tparam[opt] table opts as `build`
  -- @treturn true|nil
  -- @treturn table|nil err (`invalid_argument`, naming the field)
  function P.check(params, opts)
    return check_call(api, params, opts)
  end

  --- Fetch one page (`GET /v3/marketing/partnerships`).
  -- `limit` and `offset` are sent only when given (the server's defaults apply otherwise).
  -- Any 404 answer is an empty page (`data = {}`, `total_count = 0`, `meta.empty = true`):
  -- the docs say an empty result is an error without naming its code. Other errors are
  -- returned as they are. Items without `state` get one derived from `terminate_time` and
  -- `state_derived = true`.
  -- @tparam table params `{ authorized_data = {business_type, stock_id?}, partner = {type,
  --   appid? | merchant_id?}?, limit?, offset? }`
  -- @tparam[opt] table opts `timeout`, `connect_timeout`, `deadline`, `max_retries`,
  --   `headers` (extra request headers, e.g. `{ ["Accept-Language"] = "en" }`)
  -- @treturn table|nil `{ data = {…}, offset = n, limit = n, total_count = n|nil }`
  -- @treturn table|nil err
  -- @treturn table|nil meta
  function P.page(params, opts)
    return get_page(api, params, opts)
  end

  --- Iterate over every matching relation, fetching pages lazily (one page in memory).
  -- `limit` defaults to 50, `offset` to 0; `offset_mode` (`"page"`: next = offset + 1, the
  -- default, or `"item"`: next = offset + #data) comes from the call or the client config.
  -- It stops after a short page, when `total_count` is reached, or if the offset would not
  -- advance. An empty result (any 404, missing or empty `data`, `total_count == 0`) gives
  -- zero iterations. Invalid params or opts raise at the call; a failure
  -- while paging raises the structured error from inside the loop, like `io.lines`. Catch
  -- it with pcall:
  --
  --     local ok, err = pcall(function()
  --       for rel in client.partnerships.list{ authorized_data = { business_type = "BUSIFAVOR_STOCK" } } do
  --         handle(rel)
  --       end
  --     end)
  --     if not ok then print(tostring(err), err.kind, err.retryable) end
  -- @tparam table params as `page`, plus `offset_mode`
  -- @tparam[opt] table opts as `page`'s, applied to every page fetched
  -- @treturn function the iterator, yielding one relation per step
  function P.list(params, opts)
    return iterate(api, params, opts)
  end

  return P
end

return M
