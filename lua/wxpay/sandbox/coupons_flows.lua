--- 代金券 reconciliation files and a stock's lists in the sandbox: F14/F15 use-flow and
-- refund-flow (and the 2025 by-day forms F16/F17) answer a signed JSON `{ url, hash_value,
-- hash_type = "SHA1" }`; the file behind `url` (`GET /v3/billdownload/file?token=`) needs a
-- signed request, is answered **unsigned**, and lives `ttl` seconds (30 by default). Fault
-- switches (`POST /_sandbox/favor/flow`) cut the next downloads short or corrupt a byte;
-- `filler_rows` pads every file with synthetic rows (for size tests). F8 merchants and F9
-- items list a stock's available merchants and goods ids.
local common = require("wxpay.sandbox.coupons_common")
local favor = require("wxpay.sandbox.coupons_favor")
local digest = require("openssl.digest")
local util = require("wxpay.sandbox.util")

local M = {}

local err = common.error
local KEEP_FILES = 4

local USE_HEADER = "批次id,优惠id,优惠类型,优惠金额（元）,订单总金额（元）,交易类型,支付单号,消耗时间,消耗商户号,设备号,银行流水号,单品信息"
local REFUND_HEADER = "批次id,优惠id,优惠类型,优惠金额（元）,订单总金额（元）,交易类型,支付单号,退款单号,退款时间,消耗商户号"

-- The flow state of the store: files by token, their order, the fault switches.
local function flows(state)
  local cs = common.state(state.store)
  if not cs.flows then cs.flows = { files = {}, order = {}, fault = nil, count = 0, filler = 0, ttl = 30 } end
  return cs.flows
end

-- The lower-case hex SHA-1 of `s` (an independent implementation: luaossl, not wxpay.core).
local function sha1_hex(s)
  return (digest.new("sha1"):final(s):gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local function yuan(fen)
  return string.format("%d.%02d", math.floor(fen / 100), fen % 100)
end

-- One row, every value behind a backtick as WeChat Pay's bill files write them.
local function row(values)
  for i, v in ipairs(values) do values[i] = "`" .. tostring(v) end
  return table.concat(values, ",")
end

-- The coupons of `stock` that belong in the file (`refund`: the refunded ones), by id.
local function coupons_of(state, stock, refund, bill_date)
  local out = {}
  for _, c in pairs(favor.product(state).coupons) do
    local when = refund and c.refund and c.refund.time or (not refund and c.consume and c.consume.consume_time)
    if c.stock == stock and when and (not bill_date or when:sub(1, 10) == bill_date) then out[#out + 1] = c end
  end
  table.sort(out, function(a, b) return a.id < b.id end)
  return out
end

local function file_body(state, stock, refund, bill_date)
  local fixed = stock.fields.coupon_use_rule.fixed_normal_coupon
  local amount, minimum = yuan(fixed.coupon_amount), yuan(fixed.transaction_minimum)
  local lines = { refund and REFUND_HEADER or USE_HEADER }
  for _, c in ipairs(coupons_of(state, stock, refund, bill_date)) do
    local u = c.consume or {}
    lines[#lines + 1] = refund
      and row{ stock.id, c.id, "NORMAL", amount, minimum, "MICROAPP", u.transaction_id or "", c.refund.refund_id,
               c.refund.time, u.consume_mchid or stock.creator }
      or row{ stock.id, c.id, "NORMAL", amount, minimum, "MICROAPP", u.transaction_id, u.consume_time,
              u.consume_mchid, "", "", "" }
  end
  -- Synthetic rows, built from one template (size tests ask for hundreds of thousands).
  local head = "`" .. stock.id .. ",`"
  local tail = ",`NORMAL,`" .. amount .. ",`" .. minimum .. ",`MICROAPP,`"
  local rest = ",`2024-05-20T13:29:35+08:00,`" .. stock.creator .. ",`,`,`"
  for i = 1, flows(state).filler do
    lines[#lines + 1] = string.format("%s9%015d%s42%026d%s", head, i, tail, i, rest)
  end
  return table.concat(lines, "\r\n") .. "\r\n"
end

-- Keep a file under a fresh token; the oldest beyond KEEP_FILES are dropped.
local function publish(state, req, body, creator)
  local fl = flows(state)
  local token = util.random_alnum(32)
  fl.files[token] = { body = body, hash = sha1_hex(body), creator = creator,
                      expires = util.now() + fl.ttl }
  fl.order[#fl.order + 1] = token
  while #fl.order > KEEP_FILES do fl.files[table.remove(fl.order, 1)] = nil end
  local host = req.headers.host or "127.0.0.1"
  return "https://" .. host .. "/v3/billdownload/file?token=" .. token, fl.files[token]
end

-- F14-F17: the answer for one file of the caller's stock.
local function flow(state, req, auth, captures, refund, by_day)
  local stock = favor.product(state).stocks[util.percent_decode(captures[1])]
  if not stock then return err(404, "RESOURCE_NOT_EXISTS", "批次不存在") end
  if stock.creator ~= auth.mchid then return err(403, "REQUEST_BLOCKED", "调用商户无权限") end
  local bill_date
  if by_day then
    local _, params = util.parse_target(req.target)
    bill_date = params.bill_date
    if type(bill_date) ~= "string" or not bill_date:match("^%d%d%d%d%-%d%d%-%d%d$") then
      return common.param_error("bill_date", "bill_date must be YYYY-MM-DD", "query")
    end
  end
  local body = file_body(state, stock, refund, bill_date)
  local url, file = publish(state, req, body, auth.mchid)
  if by_day then
    local name = refund and "stock_refundflow_" or "stock_useflow_"
    return common.ok{ url = url, [name .. "hash"] = file.hash,
                      [name .. "count"] = tostring(select(2, body:gsub("\n", "")) - 1) }
  end
  return common.ok{ url = url, hash_value = file.hash, hash_type = "SHA1" }
end

function M.use_flow(s, r, a, c) return flow(s, r, a, c, false, false) end
function M.refund_flow(s, r, a, c) return flow(s, r, a, c, true, false) end
function M.use_flow_by_day(s, r, a, c) return flow(s, r, a, c, false, true) end
function M.refund_flow_by_day(s, r, a, c) return flow(s, r, a, c, true, true) end

-- Change one byte in the middle (the hash no longer matches).
local function corrupt(body)
  local i = math.max(1, math.floor(#body / 2))
  local b = body:byte(i)
  return body:sub(1, i - 1) .. string.char(b == 48 and 49 or 48) .. body:sub(i + 1)
end

--- `GET /v3/billdownload/file?token=`: the file, unsigned; faults cut or corrupt it.
function M.file(state, req, auth)
  local _, params = util.parse_target(req.target)
  local fl = flows(state)
  local file = params.token and fl.files[params.token]
  if not file or util.now() > file.expires then return err(404, "RESOURCE_NOT_EXISTS", "文件不存在或已过期") end
  if file.creator ~= auth.mchid then return err(403, "NOAUTH", "无权限") end
  local resp = { status = 200, body = file.body, unsigned = true, content_type = "text/plain; charset=utf-8" }
  if fl.fault and fl.count > 0 then
    fl.count = fl.count - 1
    if fl.fault == "cut" then resp.cut_at = math.floor(#file.body / 2) end
    if fl.fault == "corrupt" then resp.body = corrupt(file.body) end
    if fl.count == 0 then fl.fault = nil end
  end
  return resp
end

-- F8/F9: pages of `values` (page index offset, limits as documented).
local function value_page(state, req, auth, captures, what, max_limit, max_offset)
  local stock = favor.product(state).stocks[util.percent_decode(captures[1])]
  if not stock then return err(404, "RESOURCE_NOT_EXISTS", "批次不存在") end
  local _, params = util.parse_target(req.target)
  if params.stock_creator_mchid ~= auth.mchid or stock.creator ~= auth.mchid then
    return err(403, "REQUEST_BLOCKED", "调用商户无权限")
  end
  local offset, limit, e = common.paging(params, max_limit, max_limit)
  if e then return e end
  if offset > max_offset then return common.param_error("offset", "offset too large", "query") end
  local rule = stock.fields.coupon_use_rule
  local values = what == "merchants" and (rule.available_merchants or { stock.creator }) or (rule.available_items or {})
  if what == "merchants" and offset > 0 and offset * limit >= #values then
    return err(400, "MCH_NOT_EXISTS", "商户号不合法") -- the observed answer past the last page
  end
  local page = common.page_body(values, offset, limit, function(v) return v end)
  page.body = page.body:gsub("^{", '{"stock_id":"' .. stock.id .. '",')
  return page
end

function M.merchants(s, r, a, c) return value_page(s, r, a, c, "merchants", 50, 1000) end
function M.items(s, r, a, c) return value_page(s, r, a, c, "items", 100, 500) end

--- `POST /_sandbox/favor/flow {fault?, count?, filler_rows?, ttl?}`: the download fault
-- switches (`"cut"`, `"corrupt"`, `"none"`) for the next `count` (1) downloads, padding
-- rows and the files' lifetime in seconds.
function M.configure(server, spec)
  local fl = flows(server.state)
  if spec.fault ~= nil then
    if spec.fault ~= "cut" and spec.fault ~= "corrupt" and spec.fault ~= "none" then
      return nil, 'fault must be "cut", "corrupt" or "none"'
    end
    fl.fault = spec.fault ~= "none" and spec.fault or nil
    fl.count = fl.fault and (math.tointeger(spec.count) or 1) or 0
  end
  if spec.filler_rows ~= nil then
    local n = math.tointeger(spec.filler_rows)
    if not n or n < 0 or n > 2000000 then return nil, "filler_rows must be 0..2000000" end
    fl.filler = n
  end
  if spec.ttl ~= nil then
    if type(spec.ttl) ~= "number" or spec.ttl <= 0 then return nil, "ttl must be positive seconds" end
    fl.ttl = spec.ttl
  end
  return { fault = fl.fault or "none", count = fl.count, filler_rows = fl.filler, ttl = fl.ttl }
end

--- `POST /_sandbox/favor/refund {coupon_id, refund_id?}`: a used coupon's order is refunded
-- (it appears in the refund-flow file).
function M.refund(server, spec)
  local coupon = type(spec.coupon_id) == "string" and favor.product(server.state).coupons[spec.coupon_id]
  if not coupon or coupon.status ~= "USED" then return nil, "no used coupon with this coupon_id" end
  coupon.refund = { refund_id = type(spec.refund_id) == "string" and spec.refund_id or ("50" .. util.random_digits(26)),
                    time = common.time(util.now()) }
  return { coupon_id = coupon.id, refund_id = coupon.refund.refund_id }
end

M.routes = {
  { "^/v3/marketing/favor/stocks/([^/]+)/use%-flow$", GET = M.use_flow },
  { "^/v3/marketing/favor/stocks/([^/]+)/refund%-flow$", GET = M.refund_flow },
  { "^/v3/marketing/favor/stocks/([^/]+)/use%-flow%-by%-day$", GET = M.use_flow_by_day },
  { "^/v3/marketing/favor/stocks/([^/]+)/refund%-flow%-by%-day$", GET = M.refund_flow_by_day },
  { "^/v3/marketing/favor/stocks/([^/]+)/merchants$", GET = M.merchants },
  { "^/v3/marketing/favor/stocks/([^/]+)/items$", GET = M.items },
  { "^/v3/billdownload/file$", GET = M.file },
}

return M
