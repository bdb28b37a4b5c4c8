--- In-memory partnership relations and idempotency records.
-- Relations keep insertion order, which is create_time order (a terminated relation is
-- re-established in place and keeps its create_time). Query results are cached until
-- the next insert, so paging through N relations costs O(N) once, not once per page.
local util = require("wxpay.sandbox.util")

local Store = {}
Store.__index = Store

local M = {}

--- New empty store.
-- @treturn table store
function M.new()
  local self = setmetatable({}, Store)
  self:clear()
  return self
end

--- Drop every relation and idempotency record.
function Store:clear()
  self.relations = {}     -- in insertion order
  self.by_key = {}        -- relation key -> relation
  self.generation = 0     -- bumped on insert; invalidates cached queries
  self.query_cache = {}
  self.idempotency = {}   -- mchid \0 endpoint \0 key -> { body, status, response }
  self.coupons = nil      -- coupon stocks and coupons (wxpay.sandbox.coupons_common.state)
end

--- The id of the grantee in a validated `partner` object.
-- @tparam table partner
-- @treturn string
function M.partner_id(partner)
  return partner.type == "MERCHANT" and partner.merchant_id or partner.appid
end

--- Store key for (mchid, partner, authorized_data).
-- @treturn string
function M.key(mchid, partner, authorized_data)
  return table.concat({ mchid, partner.type, M.partner_id(partner),
                        authorized_data.business_type, authorized_data.stock_id or "" }, "\0")
end

--- Look a relation up.
-- @return relation table or nil
function Store:get(mchid, partner, authorized_data)
  return self.by_key[M.key(mchid, partner, authorized_data)]
end

--- Insert a new ESTABLISHED relation.
-- @tparam string mchid
-- @tparam table partner validated partner object (copied as given)
-- @tparam table authorized_data validated authorized_data object
-- @tparam[opt] number now unix seconds
-- @treturn table the relation
function Store:insert(mchid, partner, authorized_data, now)
  local t = util.rfc3339(now or util.now())
  local rel = { mchid = mchid, partner = partner, authorized_data = authorized_data,
                state = "ESTABLISHED", build_time = t, create_time = t, update_time = t }
  self.relations[#self.relations + 1] = rel
  self.by_key[M.key(mchid, partner, authorized_data)] = rel
  self.generation = self.generation + 1
  if next(self.query_cache) then self.query_cache = {} end
  return rel
end

--- Number of relations.
function Store:count()
  return #self.relations
end

--- Relations matching a filter, in create_time order (cached until the next insert).
-- @tparam string mchid
-- @tparam table filter `{ business_type =, stock_id = ?, partner_type = ?, appid = ?,
--   merchant_id = ? }`
-- @treturn table array of relations (shared; do not modify)
function Store:query(mchid, filter)
  local ck = table.concat({ mchid, filter.business_type or "", filter.stock_id or "",
                            filter.partner_type or "", filter.appid or "",
                            filter.merchant_id or "" }, "\0")
  local hit = self.query_cache[ck]
  if hit then return hit end
  local out = {}
  for _, rel in ipairs(self.relations) do
    local ad, p = rel.authorized_data, rel.partner
    if rel.mchid == mchid
      and ad.business_type == filter.business_type
      and (filter.stock_id == nil or ad.stock_id == filter.stock_id)
      and (filter.partner_type == nil or p.type == filter.partner_type)
      and (filter.appid == nil or p.appid == filter.appid)
      and (filter.merchant_id == nil or p.merchant_id == filter.merchant_id) then
      out[#out + 1] = rel
    end
  end
  self.query_cache[ck] = out
  return out
end

local function idem_key(mchid, endpoint, key)
  return mchid .. "\0" .. endpoint .. "\0" .. key
end

--- The stored outcome for an Idempotency-Key, if any.
-- @return `{ body = request body, status =, response = response body }` or nil
function Store:idempotent(mchid, endpoint, key)
  return self.idempotency[idem_key(mchid, endpoint, key)]
end

--- Remember the outcome of a request made with an Idempotency-Key.
function Store:remember(mchid, endpoint, key, request_body, status, response_body)
  self.idempotency[idem_key(mchid, endpoint, key)] =
    { body = request_body, status = status, response = response_body }
end

return M
