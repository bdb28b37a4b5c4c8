--- What the two coupon products of the sandbox share: error answers, field checks,
-- request-number replay, page-index paging, ids and times, and the callbacks they send.
local callbacks = require("wxpay.sandbox.callbacks")
local json = require("wxpay.sandbox.json")
local util = require("wxpay.sandbox.util")

local M = {}

--- An API error answer, in the body shape the rest of the sandbox uses.
-- @treturn table `{ status =, body = }`
function M.error(status, code, message, detail)
  return { status = status, body = json.encode{ code = code, message = message, detail = detail } }
end

--- `400 PARAM_ERROR` naming the field.
-- @tparam string field e.g. "/stock_send_rule/max_coupons"
-- @tparam string issue what is wrong
-- @tparam[opt="body"] string location "body", "query" or "path"
function M.param_error(field, issue, location)
  return M.error(400, "PARAM_ERROR", "参数错误",
                 { field = field, location = location or "body", issue = issue })
end

--- A 200 answer with a JSON body.
function M.ok(value)
  return { status = 200, body = type(value) == "string" and value or json.encode(value) }
end

--- The coupon state of a store, created on first use (Store:clear drops it).
-- @tparam table store the sandbox store
-- @treturn table `{ favor =, busifavor =, replay = }`
function M.state(store)
  local cs = store.coupons
  if not cs then
    local function product()
      return { stocks = {}, order = {}, coupons = {}, by_user = {}, notify = {} }
    end
    cs = { favor = product(), busifavor = product(), replay = {} }
    cs.favor.balance = 1000000000000 -- fen a 预充值 start draws on
    store.coupons = cs
  end
  return cs
end

--- The decoded JSON object of a request body, or nil and a PARAM_ERROR answer.
function M.body(req)
  local v = json.decode(req.body)
  if type(v) ~= "table" or v[1] ~= nil then return nil, M.param_error("/", "body is not a JSON object") end
  return v
end

-- Field checks: a checker walks one object and keeps the first error it meets, so a
-- handler runs its checks in a row and looks at `c:error()` once.
local Checker = {}
Checker.__index = Checker

--- A checker over `t` (fields reported as prefix .. "/" .. name).
-- @tparam table t decoded object
-- @tparam[opt=""] string prefix
-- @tparam[opt="body"] string location
-- @tparam[opt] table box where the first error goes (shared with nested checkers)
function M.checker(t, prefix, location, box)
  return setmetatable({ t = t, prefix = prefix or "", location = location or "body",
                        box = box or {} }, Checker)
end

function Checker:fail(name, issue)
  if not self.box.err then self.box.err = M.param_error(self.prefix .. "/" .. name, issue, self.location) end
  return nil
end

-- The value of `name`, or nil when absent (and an error when also required).
function Checker:get(name, required)
  if self.box.err then return nil end
  local v = self.t[name]
  if v == nil or v == json.null then
    if required then return self:fail(name, name .. " is required") end
    return nil
  end
  return v, true
end

--- Code points of a UTF-8 string, or nil when it is not UTF-8 or has a 4-byte sequence.
function M.chars(s)
  if s:find("[\240-\255]") then return nil end
  return utf8.len(s)
end

--- A string of min..max code points; `pattern` (optional) must match all of it.
function Checker:string(name, min, max, required, pattern)
  local v, present = self:get(name, required)
  if not present then return nil end
  local n = type(v) == "string" and M.chars(v)
  if not n or n < min or n > max then
    return self:fail(name, string.format("%s must be a string of %d-%d characters", name, min, max))
  end
  if pattern and not v:match(pattern) then return self:fail(name, name .. " has characters not allowed") end
  return v
end

--- An integer in min..max.
function Checker:int(name, min, max, required)
  local v, present = self:get(name, required)
  if not present then return nil end
  if math.type(v) == "float" and v == math.floor(v) then v = math.tointeger(v) end
  if math.type(v) ~= "integer" or v < min or v > max then
    return self:fail(name, string.format("%s must be an integer in %d..%d", name, min, max))
  end
  return v
end

--- A JSON boolean.
function Checker:bool(name, required)
  local v, present = self:get(name, required)
  if not present then return nil end
  if type(v) ~= "boolean" then return self:fail(name, name .. " must be a boolean") end
  return v
end

--- One of the keys of `set`.
function Checker:enum(name, set, required)
  local v, present = self:get(name, required)
  if not present then return nil end
  if not set[v] then return self:fail(name, name .. " has an unknown value") end
  return v
end

--- A nested object, as a checker of its own (its errors go to this one), or nil.
function Checker:object(name, required)
  local v, present = self:get(name, required)
  if not present then return nil end
  if type(v) ~= "table" or v[1] ~= nil then return self:fail(name, name .. " must be an object") end
  return M.checker(v, self.prefix .. "/" .. name, self.location, self.box)
end

--- An array of at most `max` strings of 1..`len` characters.
function Checker:strings(name, max, len, required)
  local v, present = self:get(name, required)
  if not present then return nil end
  if type(v) ~= "table" or #v > max or (next(v) ~= nil and v[1] == nil) then
    return self:fail(name, string.format("%s must be an array of at most %d strings", name, max))
  end
  for i, s in ipairs(v) do
    local n = type(s) == "string" and M.chars(s)
    if not n or n < 1 or n > len then return self:fail(name .. "/" .. (i - 1), "bad item") end
  end
  return v
end

--- A request number: 1..max of letters, digits, `|`, `_`, `*`, `-`.
function Checker:request_no(name, max)
  return self:string(name, 1, max, true, "^[A-Za-z0-9|_*-]+$")
end

--- A request number whose page states no charset: 1..max characters, none a control character.
function Checker:request_number(name, max)
  return self:string(name, 1, max, true, "^[^%c]+$")
end

--- An RFC 3339 time, as unix seconds.
function Checker:time(name, required)
  local v, present = self:get(name, required)
  if not present then return nil end
  local t = type(v) == "string" and M.parse_time(v)
  if not t then return self:fail(name, name .. " must be an RFC 3339 time") end
  return t
end

--- The first error of this checker or a nested one.
function Checker:error()
  return self.box.err
end

--- Parse `YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM)` (the library's own parser).
-- @treturn number|nil unix seconds
M.parse_time = require("wxpay.time").parse_rfc3339

--- Unix seconds as WeChat Pay writes times.
function M.time(t)
  return util.rfc3339(t)
end

--- A fresh numeric id of `digits` digits (no leading zero) not yet a key of `taken`.
function M.new_id(digits, taken)
  while true do
    local id = tostring(1 + util.random_digits(1) % 9) .. util.random_digits(digits - 1)
    if not taken[id] then return id end
  end
end

-- Sorted-key JSON, so the same body with its keys in another order is the same request.
local function canonical(v)
  if type(v) ~= "table" then return json.encode(v) end
  if v[1] ~= nil or next(v) == nil then
    local out = {}
    for i, x in ipairs(v) do out[i] = canonical(x) end
    return "[" .. table.concat(out, ",") .. "]"
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  for i, k in ipairs(keys) do keys[i] = json.encode(k) .. ":" .. canonical(v[k]) end
  return "{" .. table.concat(keys, ",") .. "}"
end
M.canonical = canonical

--- Replay of a request number: the stored answer for the same request, a conflict for
-- another one, nil for a number not used yet. `key` lists (mchid, endpoint, number, ...).
-- @treturn table|nil answer
-- @treturn string the record key and request fingerprint, for `remember`
function M.replay(cs, key, request, conflict_message)
  local k = table.concat(key, "\0")
  local fingerprint = canonical(request)
  local rec = cs.replay[k]
  if rec then
    if rec.request == fingerprint then return { status = rec.status, body = rec.body, replayed = true } end
    return M.error(400, "RESOURCE_ALREADY_EXISTS", conflict_message)
  end
  return nil, { k, fingerprint }
end

--- Keep a success for `replay` (errors are processed afresh on a retry).
function M.remember(cs, handle, resp)
  if resp.status >= 200 and resp.status < 300 then
    cs.replay[handle[1]] = { request = handle[2], status = resp.status, body = resp.body }
  end
  return resp
end

--- The start of a keyed write on `obj`, one of the caller's stocks or activities (`obj, e` as
-- the caller's lookup returned them): the body, checked by `check(c, obj, body)`, and the
-- replay state of its request number `w.number` (key: mchid, `w.op`, obj.id, the number;
-- `w.reused`, the answer's message when the number comes again with another body).
-- @treturn table|nil obj, then body, cs, handle; or nil and the answer to send (an error, or the stored replay)
function M.keyed_write(state, req, auth, obj, e, check, w)
  if not obj then return nil, e end
  local body
  body, e = M.body(req)
  if not body then return nil, e end
  local c = M.checker(body)
  check(c, obj, body)
  if c:error() then return nil, c:error() end
  local cs = M.state(state.store)
  local answer, handle = M.replay(cs, { auth.mchid, w.op, obj.id, body[w.number] }, body, w.reused)
  if answer then return nil, answer end
  return obj, body, cs, handle
end

--- `offset` (a page index) and `limit` from query parameters, or nil and a PARAM_ERROR.
function M.paging(params, default_limit, max_limit)
  local c = M.checker({}, "", "query")
  local function int(name, default, min, max)
    local s = params[name]
    if s == nil then return default end
    local n = s:match("^%d+$") and tonumber(s)
    if not n or n < min or n > max then
      c:fail(name, string.format("%s must be an integer in %d..%d", name, min, max))
      if n and n > max and name == "limit" then
        c.box.err = M.error(400, "PARAM_ERROR", "页大小超过阈值", { field = "limit", location = "query" })
      end
      return nil
    end
    return math.tointeger(n)
  end
  local offset = int("offset", 0, 0, 1000000)
  local limit = int("limit", default_limit, 1, max_limit)
  if c:error() then return nil, nil, c:error() end
  return offset, limit
end

--- A page of `items` (each a table, encoded as is); no `data` key when the page is empty.
function M.page_body(items, offset, limit, to_view)
  local first = offset * limit + 1
  local out = {}
  for i = first, math.min(first + limit - 1, #items) do out[#out + 1] = json.encode(to_view(items[i])) end
  local body = string.format('{"total_count":%d,"offset":%d,"limit":%d', #items, offset, limit)
  if #out > 0 then body = body .. ',"data":[' .. table.concat(out, ",") .. "]" end
  return { status = 200, body = body .. "}" }
end

--- Whether a notify URL is acceptable: https, or http to a loopback host (for tests).
function M.notify_url_ok(url)
  if url:match("^https://[^/?#]+") then return true end
  local host = url:match("^http://([^/:?#]+)")
  return host == "127.0.0.1" or host == "localhost"
end

--- Send a coupon event to `url`, signed and encrypted like a real notification, retried
-- 3 times 1 s apart by default (WeChat Pay retries for minutes; `retry` overrides).
-- @return the callback record (JSON) or nil and an error message
function M.notify(server, url, event, retry)
  retry = retry or {}
  return callbacks.send(server, {
    url = url, event_type = event.event_type, summary = event.summary,
    original_type = "coupon", associated_data = event.associated_data, resource = event.resource,
    max_attempts = retry.max_attempts or 3, retry_scale = retry.retry_scale or (1 / 15),
  })
end

--- The partnerships rule for unknown stocks: nil when building is allowed, else the
-- `404 RESOURCE_NOT_EXISTS` answer. `unknown_stocks` = "allow" never refuses, "refuse"
-- always does, "auto" only once the sandbox has a stock of that product.
function M.unknown_stock(state, authorized_data)
  local mode = state.config.unknown_stocks or "auto"
  if mode == "allow" then return nil end
  local cs = state.store.coupons
  local product = cs and cs[authorized_data.business_type == "FAVOR_STOCK" and "favor" or "busifavor"]
  if product and product.stocks[authorized_data.stock_id] then return nil end
  if mode == "auto" and not (product and next(product.stocks)) then return nil end
  return M.error(404, "RESOURCE_NOT_EXISTS", "批次不存在")
end

--- Add `id` to the list of `openid`'s coupons.
function M.add_user_coupon(product, openid, id)
  local list = product.by_user[openid]
  if not list then list = {}; product.by_user[openid] = list end
  list[#list + 1] = id
end

return M
