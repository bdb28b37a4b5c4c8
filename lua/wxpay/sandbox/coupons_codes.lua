--- 商家券 pre-stored codes in the sandbox (B8 upload, B9 list, B10 query, B11 delete), the
-- pool a MERCHANT_UPLOAD stock issues from (`take`), and linking a coupon to an order
-- (B14 associate, B15 disassociate).
local common = require("wxpay.sandbox.coupons_common")
local json = require("wxpay.sandbox.json")
local util = require("wxpay.sandbox.util")

local M = {}

local err = common.error
-- The page's charset for an uploaded code: letters, digits, space, `- _ \ / = |`.
local CODE_CHARS = "^[%w _%-\\/=|]+$"

local function product(state)
  return common.state(state.store).busifavor
end

-- The caller's stock `id`, or nil and the answer.
local function own_stock(state, auth, id)
  local stock = product(state).stocks[util.percent_decode(id)]
  if not stock then return nil, err(404, "RESOURCE_NOT_EXISTS", "批次不存在") end
  if stock.creator ~= auth.mchid then return nil, err(403, "NOAUTH", "无权限") end
  return stock
end

-- The pool of a stock: `list` (codes in upload order), `by` (code → entry), `next` (the
-- first list index that may still be AVAILABLE), `available` (a count).
local function pool(stock)
  if not stock.pool then stock.pool = { list = {}, by = {}, next = 1, available = 0 } end
  return stock.pool
end

--- Whether `stock` has an AVAILABLE code to issue.
function M.has_available(stock)
  return stock.pool ~= nil and stock.pool.available > 0
end

--- Take the oldest AVAILABLE code for `openid` (it becomes DISPATCHED); nil when none.
function M.take(stock, openid, now)
  local p = pool(stock)
  while p.next <= #p.list do
    local entry = p.by[p.list[p.next]]
    p.next = p.next + 1
    if entry and entry.code_status == "AVAILABLE" then
      entry.code_status, entry.dispatched_time, entry.openid = "DISPATCHED", common.time(now), openid
      entry.coupon_code = entry.code
      p.available = p.available - 1
      return entry.code
    end
  end
  return nil
end

-- Sort one upload's codes into success, exist, duplicate and fail lists.
local function sort_codes(p, list, room, now)
  local r = { success = {}, exist = {}, duplicate = {}, fail = {}, seen = {}, total = 0 }
  for _, code in ipairs(list) do
    if r.seen[code] then
      r.duplicate[#r.duplicate + 1] = code
    else
      r.seen[code] = true
      r.total = r.total + 1
      if p.by[code] then
        r.exist[#r.exist + 1] = code
      elseif not code:match(CODE_CHARS) then
        r.fail[#r.fail + 1] = { coupon_code = code, code = "PARAM_ERROR", message = "code含有非法字符" }
      elseif #r.success >= room then
        r.fail[#r.fail + 1] = { coupon_code = code, code = "EXCEED_LIMIT", message = "上传的自定义code已达上限" }
      else
        r.success[#r.success + 1] = code
        p.list[#p.list + 1] = code
        p.by[code] = { code = code, code_status = "AVAILABLE", upload_time = common.time(now) }
        p.available = p.available + 1
      end
    end
  end
  return r
end

local function list_or_nil(t)
  if #t == 0 then return nil end
  return t
end

--- B8 `POST /v3/marketing/busifavor/stocks/{stock_id}/couponcodes`.
function M.upload(state, req, auth, captures)
  local stock, e = own_stock(state, auth, captures[1])
  if not stock then return e end
  local body
  body, e = common.body(req)
  if not body then return e end
  local c = common.checker(body)
  local list = c:strings("coupon_code_list", 200, 32, true)
  c:request_number("upload_request_no", 128)
  if list and #list == 0 then c:fail("coupon_code_list", "coupon_code_list must hold 1-200 codes") end
  if c:error() then return c:error() end
  if stock.fields.coupon_code_mode ~= "MERCHANT_UPLOAD" then
    return err(400, "INVALID_REQUEST", "发券模式不合法")
  end
  local cs = common.state(state.store)
  local answer, handle = common.replay(cs, { auth.mchid, "busifavor.upload", stock.id, body.upload_request_no },
                                       body, "上传请求单号已存在")
  if answer then return answer end
  local p, now = pool(stock), util.now()
  local room = (stock.fields.stock_send_rule.max_coupons or 1000000000) - #p.list
  if room <= 0 then return err(400, "INVALID_REQUEST", "上传的自定义code已达上限") end
  local r = sort_codes(p, list, room, now)
  return common.remember(cs, handle, common.ok{
    stock_id = stock.id, total_count = r.total, success_count = #r.success,
    success_codes = list_or_nil(r.success), success_time = common.time(now), fail_count = #r.fail,
    fail_codes = list_or_nil(r.fail), exist_codes = list_or_nil(r.exist),
    duplicate_codes = list_or_nil(r.duplicate),
  })
end

local STATUSES = { AVAILABLE = true, DISPATCHED = true }

--- B9 `GET …/stocks/{stock_id}/couponcodes?limit=&offset=&status=`: `offset` counts codes.
function M.list(state, req, auth, captures)
  local stock, e = own_stock(state, auth, captures[1])
  if not stock then return e end
  local _, params = util.parse_target(req.target)
  local c = common.checker(params, "", "query")
  c:enum("status", STATUSES)
  c:string("appid", 1, 32)
  if c:error() then return c:error() end
  local offset, limit
  offset, limit, e = common.paging(params, 20, 100)
  if e then return e end
  local out = {}
  for _, code in ipairs(pool(stock).list) do
    local entry = pool(stock).by[code]
    if entry and (not params.status or entry.code_status == params.status) then out[#out + 1] = entry end
  end
  local data = {}
  for i = offset + 1, math.min(offset + limit, #out) do data[#data + 1] = json.encode(out[i]) end
  local body = string.format('{"stock_id":%s,"total_count":%d,"offset":%d,"limit":%d', json.encode(stock.id),
    #out, offset, #data)
  if #data > 0 then body = body .. ',"data":[' .. table.concat(data, ",") .. "]" end
  return { status = 200, body = body .. "}" }
end

--- B10 `GET …/stocks/{stock_id}/couponcodes/{coupon_code}`.
function M.get(state, _, auth, captures)
  local stock, e = own_stock(state, auth, captures[1])
  if not stock then return e end
  local entry = pool(stock).by[util.percent_decode(captures[2])]
  if not entry then return err(404, "RESOURCE_NOT_EXISTS", "code不存在") end
  local coupon = entry.code_status == "DISPATCHED" and product(state).coupons[entry.code]
  local view = coupon and require("wxpay.sandbox.coupons_busifavor").coupon_view(coupon) or nil
  return common.ok{ code_information = entry, coupon_information = view }
end

--- B11 `DELETE …/stocks/{stock_id}/couponcodes/{coupon_code}?delete_request_no=`.
function M.delete(state, req, auth, captures)
  local stock, e = own_stock(state, auth, captures[1])
  if not stock then return e end
  local _, params = util.parse_target(req.target)
  local c = common.checker(params, "", "query")
  c:request_number("delete_request_no", 128)
  if c:error() then return c:error() end
  local code = util.percent_decode(captures[2])
  local cs = common.state(state.store)
  local answer, handle = common.replay(cs, { auth.mchid, "busifavor.delete_code", stock.id,
    params.delete_request_no }, { code = code }, "删除请求单号已存在")
  if answer then return answer end
  local p = pool(stock)
  local entry = p.by[code]
  if not entry then return err(404, "RESOURCE_NOT_EXISTS", "code不存在") end
  if entry.code_status ~= "AVAILABLE" then return err(400, "INVALID_REQUEST", "code已发放，不能删除") end
  p.by[code], p.available = nil, p.available - 1
  return common.remember(cs, handle, common.ok{ stock_id = stock.id, delete_time = common.time(util.now()) })
end

-- B14/B15: the checked body, the replay state and the coupon, or nil and the answer.
local function link_start(state, req, auth, op)
  local body, e = common.body(req)
  if not body then return nil, e end
  local c = common.checker(body)
  c:string("stock_id", 1, 20, true)
  c:string("coupon_code", 1, 128, true)
  c:string("out_trade_no", 1, 128, true)
  c:request_no("out_request_no", 128)
  if c:error() then return nil, c:error() end
  local cs = common.state(state.store)
  local answer, handle = common.replay(cs, { auth.mchid, op, body.out_request_no }, body, "请求单号已存在")
  if answer then return nil, answer end
  local p = product(state)
  local coupon = p.coupons[body.coupon_code]
  if not coupon or coupon.stock_id ~= body.stock_id then return nil, err(404, "RESOURCE_NOT_EXISTS", "券不存在") end
  if p.stocks[coupon.stock_id].creator ~= auth.mchid then return nil, err(403, "NOAUTH", "无权限") end
  return body, cs, handle, coupon
end

--- B14 `POST /v3/marketing/busifavor/coupons/associate`: only an unused coupon.
function M.associate(state, req, auth)
  local body, cs, handle, coupon = link_start(state, req, auth, "busifavor.associate")
  if not body then return cs end
  if coupon.state ~= "SENDED" then return err(400, "INVALID_REQUEST", "券不是可用状态，不能关联订单") end
  if coupon.associate_out_trade_no and coupon.associate_out_trade_no ~= body.out_trade_no then
    return err(400, "INVALID_REQUEST", "券已关联其他订单")
  end
  coupon.associate_out_trade_no = body.out_trade_no
  return common.remember(cs, handle, common.ok{ wechatpay_associate_time = common.time(util.now()) })
end

--- B15 `POST /v3/marketing/busifavor/coupons/disassociate`.
function M.disassociate(state, req, auth)
  local body, cs, handle, coupon = link_start(state, req, auth, "busifavor.disassociate")
  if not body then return cs end
  if coupon.associate_out_trade_no ~= body.out_trade_no then
    return err(400, "INVALID_REQUEST", "券未关联该订单")
  end
  coupon.associate_out_trade_no = nil
  return common.remember(cs, handle, common.ok{ wechatpay_disassociate_time = common.time(util.now()) })
end

M.routes = {
  { "^/v3/marketing/busifavor/stocks/([^/]+)/couponcodes$", POST = M.upload, GET = M.list },
  { "^/v3/marketing/busifavor/stocks/([^/]+)/couponcodes/([^/]+)$", GET = M.get, DELETE = M.delete },
  { "^/v3/marketing/busifavor/coupons/associate$", POST = M.associate },
  { "^/v3/marketing/busifavor/coupons/disassociate$", POST = M.disassociate },
}

return M
