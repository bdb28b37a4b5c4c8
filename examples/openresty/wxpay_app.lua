--- Handlers for examples/openresty/nginx.conf: an admin API over client.partnerships and
-- the WeChat Pay callback endpoint. Everything answers JSON.
--
--   POST /admin/partnerships            {"appid":…,"stock_id":…,"business_type":…,"idempotency_key"?:…}
--   GET  /admin/partnerships?stock_id=…&business_type=…[&limit=50]   every relation, all pages
--   POST /admin/partnerships/terminate  {"appid":…,"stock_id":…,"business_type":…}
--   GET  /metrics                       Prometheus text: calls, attempts, retries, latency
--   POST /wxpay/notify                  WeChat Pay callbacks, each handled once across the
--                                       workers: 204 once handled (now or before), 4xx/5xx
--                                       {"code":"FAIL",…} otherwise (WeChat Pay repeats it)
--   POST /coupons/send-params           发券: the signed <send-coupon> attributes of the
--                                       logged-in user (issue_handler.lua)
--
-- The client is created once per nginx master (`init`, from the config file named by
-- WXPAY_CONFIG) and so once per worker after the fork. Requests run over cosockets (the
-- automatic transport in content phases), so a slow WeChat Pay never blocks the worker.
-- @module wxpay_app

local ngx = ngx
local cjson = require("cjson.safe").new()
local wxpay = require("wxpay")

local M = {}

local client -- one per worker (inherited from the master), shared by all its requests
local metrics -- wxpay.metrics over the lua_shared_dict wxpay_metrics (all workers)

local function reply(status, value)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.print(type(value) == "string" and value or cjson.encode(value))
  return ngx.exit(status)
end

-- A wxpay error as JSON: its fields without anything secret (errors never hold secrets).
local function error_reply(err)
  local status = err.kind == "invalid_argument" and 400 or err.kind == "api" and (err.status or 502) or 502
  return reply(status, { error = { kind = err.kind, code = err.code, message = err.message,
    status = err.status, request_id = err.request_id, idempotency_key = err.idempotency_key,
    attempts = err.attempts } })
end

local function json_body()
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  local obj = body and cjson.decode(body)
  if type(obj) ~= "table" then return nil end
  return obj
end

local function partner_params(obj)
  return {
    partner = { type = "APPID", appid = obj.appid },
    authorized_data = { business_type = obj.business_type or "BUSIFAVOR_STOCK", stock_id = obj.stock_id },
  }
end

-- The config object from the file: a `wxpay.new` config, or the sandbox's startup line
-- (its "config" member), as the CLI takes them; JSON nulls dropped. Raises a message.
local function read_config(config_file)
  if not config_file then error("WXPAY_CONFIG is not set", 0) end
  local f, ferr = io.open(config_file, "rb")
  if not f then error("WXPAY_CONFIG: " .. tostring(ferr), 0) end
  local config = cjson.decode(f:read("*a"))
  f:close()
  if type(config) ~= "table" then error("WXPAY_CONFIG " .. config_file .. " is not a JSON object", 0) end
  if config.mchid == nil and type(config.config) == "table" then config = config.config end
  for k, v in pairs(config) do
    if v == cjson.null then config[k] = nil end
  end
  return config
end

--- Create the client (init_by_lua: keys are parsed once, before the workers fork).
-- @tparam string config_file path of a JSON file holding the `wxpay.new` config, or the
--   sandbox's startup line
function M.init(config_file)
  local config = read_config(config_file)
  config.logger = function(level, message, fields)
    if level == "warn" or level == "error" then
      ngx.log(level == "warn" and ngx.WARN or ngx.ERR, message, " ", cjson.encode(fields or {}))
    end
  end
  metrics = assert(require("wxpay.metrics").new{ dict = "wxpay_metrics" })
  config.on_request = metrics.on_request
  local err
  client, err = wxpay.new(config)
  -- A string, so nginx prints it (an error table would show as "unknown error").
  if not client then error("wxpay config: " .. tostring(err) .. " (`wxpay doctor` explains it)", 0) end
end

--- Warm the key ring in a timer (cosockets work there): a worker downloads the platform
-- certificates once, before its first request needs them, when the config asks for
-- downloads. Requests arriving meanwhile wait for this download instead of starting another.
function M.init_worker()
  local ok, err = ngx.timer.at(0, function(premature)
    if premature then return end
    if #client.certificates.list() > 0 then return end -- configured keys: nothing to fetch
    local done, rerr = client.certificates.refresh()
    if not done and rerr.kind ~= "config" then
      ngx.log(ngx.WARN, "wxpay certificate warm-up failed: ", tostring(rerr))
    end
  end)
  if not ok then ngx.log(ngx.ERR, "wxpay warm-up timer: ", err) end
end

--- GET: list every relation of a stock; POST: build one.
function M.partnerships()
  local method = ngx.req.get_method()
  if method == "POST" then
    local obj = json_body()
    if not obj or type(obj.appid) ~= "string" or type(obj.stock_id) ~= "string" then
      return reply(400, { error = { message = "need a JSON body with appid and stock_id" } })
    end
    local rel, err, meta = client.partnerships.build(partner_params(obj),
      { idempotency_key = obj.idempotency_key })
    if not rel then return error_reply(err) end
    return reply(200, { relation = rel, idempotency_key = meta.idempotency_key, attempts = meta.attempts })
  elseif method == "GET" then
    local args = ngx.req.get_uri_args()
    local query = { authorized_data = { business_type = args.business_type or "BUSIFAVOR_STOCK",
      stock_id = args.stock_id }, limit = tonumber(args.limit) or 50 }
    local out = {}
    -- The iterator fetches page after page and raises a structured error on failure.
    local ok, err = pcall(function()
      for rel in client.partnerships.list(query) do out[#out + 1] = rel end
    end)
    if not ok then
      if type(err) == "table" and err.kind then return error_reply(err) end
      error(err, 0)
    end
    -- Debian's lua-cjson has no array marker: an empty list is written out by hand.
    return reply(200, '{"count":' .. #out .. ',"data":' .. (#out == 0 and "[]" or cjson.encode(out)) .. "}")
  end
  return reply(405, { error = { message = "GET or POST" } })
end

--- POST: terminate one partnership.
function M.terminate()
  if ngx.req.get_method() ~= "POST" then return reply(405, { error = { message = "POST" } }) end
  local obj = json_body()
  if not obj or type(obj.appid) ~= "string" or type(obj.stock_id) ~= "string" then
    return reply(400, { error = { message = "need a JSON body with appid and stock_id" } })
  end
  local res, err = client.partnerships.terminate(partner_params(obj))
  if not res then return error_reply(err) end
  return reply(200, res)
end

--- POST: the signed 发券 attributes for the logged-in user (issue_handler.lua).
function M.issue_params()
  return require("issue_handler").plugin_params(client)
end

--- GET: the Prometheus text format (version 0.0.4).
function M.metrics()
  ngx.header["Content-Type"] = "text/plain; version=0.0.4"
  ngx.print(metrics.render())
end

-- The application's work for one notification (here: a log line). It runs once per
-- notification id across the workers (and the hosts, with a Redis store); return true once
-- it is durably done, false or nil (or raise) to have WeChat Pay deliver it again later.
local function on_notification(n)
  if n.event_type == "COUPON.SEND" then require("issue_handler").on_coupon_send(client, n) end
  ngx.log(ngx.INFO, "wxpay callback ", n.id, " ", n.event_type, " handled")
  return true
end

--- The WeChat Pay callback: verified over the raw body, decrypted, then handled once
-- (`client.notify.handle`); the answer follows the durable record: 204 only once the
-- handler succeeded and the store holds the id as handled.
function M.notify()
  if ngx.req.get_method() ~= "POST" then return reply(405, { code = "FAIL", message = "POST" }) end
  ngx.req.read_body()
  local body = ngx.req.get_body_data() -- the raw bytes; nginx.conf keeps them in memory
  local answer, outcome, _, err = client.notify.handle(ngx.req.get_headers(), body or "", on_notification,
    { store = "ngx:wxpay_callbacks" })
  if outcome == "refused" then
    ngx.log(ngx.WARN, "wxpay callback refused: ", tostring(err))
  elseif outcome ~= "handled" and outcome ~= "duplicate" then
    ngx.log(ngx.WARN, "wxpay callback not handled (", outcome, "): ", tostring(err))
  end
  ngx.status = answer.status
  if answer.body ~= "" then ngx.header["Content-Type"] = "application/json"; ngx.print(answer.body) end
  return ngx.exit(answer.status)
end

return M
