--- 代金券 reconciliation files and a stock's lists: `client.favor.stocks.use_flow`,
-- `.refund_flow`, `.use_flow_by_day`, `.refund_flow_by_day`, `.merchants`, `.items`
-- (and their one-page forms `.merchants_page`, `.items_page`).
--
--     local info = assert(client.favor.stocks.use_flow(stock_id))   -- { url, hash_value, hash_type }
--     assert(client.download(info, { path = "/tmp/flow.csv" }))      -- hash checked
--     for mchid in client.favor.stocks.merchants(stock_id) do … end
--
-- The flow calls answer a signed JSON with a short-lived `url` (30 s) and the file's hash;
-- the file itself is fetched with `client.download` (wxpay.download), which trusts it by
-- that hash. The 2025 by-day answers name the hash `stock_useflow_hash` /
-- `stock_refundflow_hash` in the only copy seen: it is also returned as `hash_value`.
-- @module wxpay.api.favor_flows

local f = require("wxpay.api.fields")
local calls = require("wxpay.api.coupon_calls")
local errors = require("wxpay.errors")

local M = {}

local BASE = "/v3/marketing/favor/stocks/"
local STOCK_ID = f.id(1, 20)

-- The answer of a flow call with `hash_value` (and `hash_type` when given) in place.
local function flow_answer(data, meta)
  if type(data.hash_value) ~= "string" then
    data.hash_value = data.stock_useflow_hash or data.stock_refundflow_hash
  end
  for _, name in ipairs({ "url", "hash_value" }) do
    if type(data[name]) ~= "string" or data[name] == "" then
      return nil, calls.decode_error("answer lacks " .. name, meta)
    end
  end
  return data, nil, meta
end

local function flow(api, fname, stock_id, suffix, bill_date, opts)
  calls.argcheck(fname, 2, opts, "table?")
  local id, err = f.segment(stock_id, "stock_id", STOCK_ID, api)
  if not id then return nil, err end
  local o
  o, err = calls.options(api, opts)
  if not o then return nil, err end
  local target = BASE .. id .. suffix
  if suffix:find("by%-day") then
    if type(bill_date) ~= "string" or not bill_date:match("^%d%d%d%d%-%d%d%-%d%d$") then
      return nil, errors.invalid_argument("bill_date", "must be YYYY-MM-DD")
    end
    target = calls.target(api, target, { { "bill_date", bill_date } })
  end
  local data, rerr, meta = calls.read(api, target, o)
  if not data then return nil, rerr, meta end
  return flow_answer(data, meta)
end

--- F14: the redemption file of a stock (`GET …/stocks/{stock_id}/use-flow`).
-- @tparam string stock_id
-- @tparam[opt] table opts call options
-- @treturn table|nil `{ url, hash_value, hash_type }` for `client.download`
function M.use_flow(api, stock_id, opts) return flow(api, "use_flow", stock_id, "/use-flow", nil, opts) end

--- F15: the refund file of a stock (`GET …/stocks/{stock_id}/refund-flow`).
function M.refund_flow(api, stock_id, opts) return flow(api, "refund_flow", stock_id, "/refund-flow", nil, opts) end

--- F16: one day's redemption file (`GET …/stocks/{stock_id}/use-flow-by-day?bill_date=`).
-- @tparam string stock_id
-- @tparam string bill_date `YYYY-MM-DD`
function M.use_flow_by_day(api, stock_id, bill_date, opts)
  return flow(api, "use_flow_by_day", stock_id, "/use-flow-by-day", bill_date, opts)
end

--- F17: one day's refund file (`GET …/stocks/{stock_id}/refund-flow-by-day?bill_date=`).
function M.refund_flow_by_day(api, stock_id, bill_date, opts)
  return flow(api, "refund_flow_by_day", stock_id, "/refund-flow-by-day", bill_date, opts)
end

-- F8/F9: filters → a target builder and paging values. `offset` is a page index, capped
-- at `max_offset`; `limit` at `max_limit`.
local function list_query(api, suffix, stock_id, filters, max_limit, max_offset)
  local id, err = f.segment(stock_id, "stock_id", STOCK_ID, api)
  if not id then return nil, err end
  local ok
  ok, err = f.known(filters, { limit = true, offset = true, stock_creator_mchid = true }, "")
  if not ok then return nil, err end
  local creator
  creator, err = calls.mchid(api, filters, "stock_creator_mchid")
  if not creator then return nil, err end
  local limit, offset = calls.paging(api, filters, max_limit, max_limit, "page")
  if not limit then return nil, offset end
  if offset > max_offset then return nil, errors.invalid_argument("offset", "must be at most " .. max_offset) end
  local path = BASE .. id .. suffix
  return function(l, o)
    return calls.target(api, path, { { "offset", o }, { "limit", l }, { "stock_creator_mchid", creator } })
  end, limit, offset
end

local function lister(suffix, max_limit, max_offset)
  local function page(api, stock_id, filters)
    calls.argcheck("page", 2, filters, "table?")
    local target_for, limit, offset = list_query(api, suffix, stock_id, filters or {}, max_limit, max_offset)
    if not target_for then return nil, limit end
    return calls.page(api, target_for, limit, offset)
  end
  local function list(api, stock_id, filters)
    calls.argcheck("list", 2, filters, "table?")
    local target_for, limit, offset = list_query(api, suffix, stock_id, filters or {}, max_limit, max_offset)
    if not target_for then error(limit, 2) end
    return calls.iterate(api, target_for, limit, offset, "page")
  end
  return page, list
end

local merchants_page, merchants = lister("/merchants", 50, 1000)
local items_page, items = lister("/items", 100, 500)

--- F8: the merchants a stock may be used at, as a lazy iterator of mchids
-- (`GET …/stocks/{stock_id}/merchants`; pages of up to 50, offset ≤ 1000).
-- Arguments: `stock_id`, `filters?` (`limit` (50), `offset` (0, a page index),
-- `stock_creator_mchid`).
M.merchants = merchants

--- F8, one page: `{ data = { mchid, … }, offset, limit, total_count }`.
M.merchants_page = merchants_page

--- F9: the goods ids of a 单品 stock, as a lazy iterator (`GET …/stocks/{stock_id}/items`;
-- pages of up to 100, offset ≤ 500).
M.items = items

--- F9, one page.
M.items_page = items_page

return M
