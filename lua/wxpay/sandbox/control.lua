--- The sandbox control API: plain JSON under /_sandbox/, no signatures.
-- Specs and demos use it to inject faults, inspect requests and reshape behaviour.
local callbacks = require("wxpay.sandbox.callbacks")
local coupons = require("wxpay.sandbox.coupons_control")
local issue = require("wxpay.sandbox.issue")
local json = require("wxpay.sandbox.json")

local M = {}

local function reply(status, value)
  return { status = status, body = type(value) == "string" and value or json.encode(value) }
end

local function bad(message)
  return reply(400, { error = message })
end

local function body_table(req)
  if req.body == "" then return {} end
  local v = json.decode(req.body)
  if type(v) ~= "table" then return nil end
  return v
end

-- A handler of a JSON-object body.
local function with_body(req, server, handler)
  local spec = body_table(req)
  if not spec then return bad("body must be a JSON object") end
  return handler(server, spec)
end

local function config_view(config)
  return '{"mode":' .. json.encode(config.mode)
    .. ',"offset_mode":' .. json.encode(config.offset_mode)
    .. ',"empty_list":' .. json.encode(config.empty_list)
    .. ',"state_in_list":' .. json.encode(config.state_in_list)
    .. ',"signing_certificate":' .. json.encode(config.signing_certificate)
    .. ',"latency":' .. json.encode(config.latency)
    .. ',"clock_offset":' .. json.encode(config.clock_offset)
    .. ',"unknown_stocks":' .. json.encode(config.unknown_stocks)
    .. ',"advertised_certificates":' .. json.array(config.advertised_certificates) .. "}"
end

local ENUMS = {
  mode = { certificate = true, public_key = true, combined = true },
  offset_mode = { page = true, item = true },
  empty_list = { ["404"] = true, ["200"] = true },
  signing_certificate = { primary = true, secondary = true },
  unknown_stocks = { auto = true, allow = true, refuse = true },
}

--- Validate and apply a partial configuration (all or nothing).
-- @tparam table config the live configuration
-- @tparam table changes e.g. `{ offset_mode = "item", empty_list = "200" }`
-- @return true, or nil and an error message
function M.apply_config(config, changes)
  local new = {}
  for k, v in pairs(changes) do
    if k == "empty_list" and type(v) == "number" then v = tostring(math.tointeger(v)) end
    if ENUMS[k] then
      if not ENUMS[k][v] then return nil, "bad value for " .. k .. ": " .. tostring(v) end
    elseif k == "state_in_list" then
      if type(v) ~= "boolean" then return nil, "state_in_list must be a boolean" end
    elseif k == "latency" then -- seconds every API answer waits (other connections go on)
      if type(v) ~= "number" or not (v >= 0 and v <= 60) then return nil, "latency must be 0..60 seconds" end
    elseif k == "clock_offset" then -- seconds added to the Date header's time
      if math.type(v) == "float" then v = math.tointeger(v) end
      if math.type(v) ~= "integer" or v < -86400 or v > 86400 then
        return nil, "clock_offset must be an integer -86400..86400"
      end
    elseif k == "advertised_certificates" then
      if type(v) ~= "table" or #v == 0 then
        return nil, "advertised_certificates must be a non-empty array"
      end
      for _, name in ipairs(v) do
        if not ENUMS.signing_certificate[name] then
          return nil, "advertised_certificates: unknown certificate " .. tostring(name)
        end
      end
    else
      return nil, "unknown config key: " .. tostring(k)
    end
    new[k] = v
  end
  for k, v in pairs(new) do config[k] = v end
  return true
end

-- Optional string fields of a seed: absent, or a string of 1..64 printable bytes.
local function seed_string(spec, name)
  local v = spec[name]
  if v ~= nil and (type(v) ~= "string" or v == "" or #v > 64 or v:find("[%c]")) then
    return name .. " must be a string of 1-64 characters"
  end
end

local function seed(server, spec)
  local count = math.tointeger(spec.count or 0)
  if not count or count < 0 or count > 1000000 then return bad("count must be 0..1000000") end
  for _, name in ipairs{ "business_type", "stock_id", "partner_type", "prefix" } do
    local err = seed_string(spec, name)
    if err then return bad(err) end
  end
  local start = spec.start == nil and 1 or math.tointeger(spec.start)
  if not start or start < 0 or start > 1e12 then return bad("start must be an integer 0..1000000000000") end
  local ok, added = server:seed{
    count = count, business_type = spec.business_type, stock_id = spec.stock_id,
    partner_type = spec.partner_type, prefix = spec.prefix, start = start,
  }
  if not ok then return bad(added) end
  return reply(200, { added = added, total = server.state.store:count() })
end

local function requests(server, req)
  local since = tonumber(req.target:match("[?&]since=(%d+)") or 0)
  local log = server.state.log
  local out = {}
  for seq = math.max(log.first, since + 1), log.last do
    local e = log.items[seq]
    out[#out + 1] = json.encode{
      seq = e.seq, connection = e.connection, method = e.method, target = e.target,
      headers = e.headers, body = e.body, status = e.status, fault = e.fault,
      received_at = e.received_at, answered_at = e.answered_at,
    }
  end
  return reply(200, '{"requests":[' .. table.concat(out, ",") .. "]}")
end

local function relations(server)
  local out = {}
  for _, rel in ipairs(server.state.store.relations) do
    out[#out + 1] = json.encode{
      mchid = rel.mchid, partner = rel.partner, authorized_data = rel.authorized_data,
      state = rel.state, build_time = rel.build_time, terminate_time = rel.terminate_time,
      create_time = rel.create_time, update_time = rel.update_time,
    }
  end
  return reply(200, string.format('{"count":%d,"relations":[%s]}', #out, table.concat(out, ",")))
end

local function info(server)
  local keys = server.state.keys
  return reply(200, {
    mchid = keys.mchid, serial_no = keys.serial_no,
    platform_serial_no = keys.platform_serial_no,
    platform2_serial_no = keys.platform2_serial_no,
    wechatpay_public_key_id = keys.wechatpay_public_key_id,
    files = keys.files, dir = keys.dir,
  })
end

local ROUTES = {
  ["/_sandbox"] = { GET = function(server) return reply(200, server:startup_line()) end },
  ["/_sandbox/info"] = { GET = info },
  ["/_sandbox/faults"] = {
    GET = function(server)
      return reply(200, '{"faults":' .. json.array(server.state.faults:list()) .. "}")
    end,
    POST = function(server, req)
      local spec = body_table(req)
      if not spec then return bad("body must be a JSON object") end
      -- A JSON array queues several faults at once.
      local specs = spec[1] and spec or { spec }
      for _, s in ipairs(specs) do
        local ok, err = server.state.faults:add(s)
        if not ok then return bad(err) end
      end
      return reply(200, '{"faults":' .. json.array(server.state.faults:list()) .. "}")
    end,
    DELETE = function(server)
      server.state.faults:clear()
      return reply(200, '{"faults":[]}')
    end,
  },
  ["/_sandbox/requests"] = {
    GET = requests,
    DELETE = function(server)
      server:clear_log()
      return reply(200, '{"requests":[]}')
    end,
  },
  ["/_sandbox/stats"] = { GET = function(server) return reply(200, server:stats()) end },
  ["/_sandbox/reset"] = { POST = function(server)
    server:reset()
    server.state.media, server.state.callbacks = nil, nil -- uploads and callbacks too
    require("wxpay.sandbox.rotation").restore(server.state) -- and the keys of a rotation
    return reply(200, { ok = true })
  end },
  ["/_sandbox/seed"] = { POST = function(server, req)
    local spec = body_table(req)
    if not spec then return bad("body must be a JSON object") end
    return seed(server, spec)
  end },
  ["/_sandbox/config"] = {
    GET = function(server) return reply(200, config_view(server.state.config)) end,
    POST = function(server, req)
      local changes = body_table(req)
      if not changes then return bad("body must be a JSON object") end
      local ok, err = M.apply_config(server.state.config, changes)
      if not ok then return bad(err) end
      return reply(200, config_view(server.state.config))
    end,
  },
  ["/_sandbox/relations"] = { GET = relations },
  -- Callbacks to the app under test (see wxpay.sandbox.callbacks).
  ["/_sandbox/callbacks"] = {
    GET = function(server) return reply(200, '{"callbacks":' .. callbacks.list(server.state) .. "}") end,
    POST = function(server, req)
      local spec = body_table(req)
      if not spec then return bad("body must be a JSON object") end
      local view, err = callbacks.send(server, spec)
      if not view then return bad(err) end
      return reply(200, view)
    end,
  },
  -- What users do with coupons (see wxpay.sandbox.coupons_control).
  ["/_sandbox/busifavor/claim"] = { POST = function(server, req)
    local spec = body_table(req)
    if not spec then return bad("body must be a JSON object") end
    return coupons.claim(server, spec)
  end },
  ["/_sandbox/favor/redeem"] = { POST = function(server, req)
    local spec = body_table(req)
    if not spec then return bad("body must be a JSON object") end
    return coupons.redeem(server, spec)
  end },
  ["/_sandbox/favor/balance"] = {
    GET = function(server) return coupons.balance(server, {}) end,
    POST = function(server, req)
      local spec = body_table(req)
      if not spec then return bad("body must be a JSON object") end
      return coupons.balance(server, spec)
    end,
  },
  -- 支付有礼: a payment that may issue a prize, forced states, same-brand merchants.
  ["/_sandbox/paygift/pay"] = { POST = function(server, req)
    local spec = body_table(req)
    if not spec then return bad("body must be a JSON object") end
    return require("wxpay.sandbox.paygift_control").pay(server, spec)
  end },
  ["/_sandbox/paygift/status"] = { POST = function(server, req)
    local spec = body_table(req)
    if not spec then return bad("body must be a JSON object") end
    return require("wxpay.sandbox.paygift_control").force_status(server, spec)
  end },
  ["/_sandbox/paygift/brands"] = {
    GET = function(server) return require("wxpay.sandbox.paygift_control").brands(server, {}) end,
    POST = function(server, req)
      local spec = body_table(req)
      if not spec then return bad("body must be a JSON object") end
      return require("wxpay.sandbox.paygift_control").brands(server, spec)
    end,
  },
  -- 发券 as the plugin, the H5 page and wx.addCard would (see wxpay.sandbox.issue).
  ["/_sandbox/issue/plugin"] = { POST = function(server, req) return with_body(req, server, issue.plugin) end },
  ["/_sandbox/issue/h5"] = { POST = function(server, req) return with_body(req, server, issue.h5) end },
  ["/_sandbox/issue/jsapi"] = { POST = function(server, req) return with_body(req, server, issue.jsapi) end },
  ["/_sandbox/issue/verify"] = { POST = function(server, req) return with_body(req, server, issue.verify) end },
  ["/_sandbox/issue/keys"] = { GET = issue.keys },
  ["/_sandbox/busifavor/jump_code"] = { POST = function(server, req)
    return with_body(req, server, issue.jump_code)
  end },
  -- 代金券 flow files: fault switches and padding, and refunds (wxpay.sandbox.coupons_flows).
  ["/_sandbox/favor/flow"] = { POST = function(server, req)
    local spec = body_table(req)
    if not spec then return bad("body must be a JSON object") end
    local view, err = require("wxpay.sandbox.coupons_flows").configure(server, spec)
    if not view then return bad(err) end
    return reply(200, view)
  end },
  ["/_sandbox/favor/refund"] = { POST = function(server, req)
    local spec = body_table(req)
    if not spec then return bad("body must be a JSON object") end
    local view, err = require("wxpay.sandbox.coupons_flows").refund(server, spec)
    if not view then return bad(err) end
    return reply(200, view)
  end },
  ["/_sandbox/media"] = { GET = function(server)
    return reply(200, '{"media":' .. json.array(server.state.media or {}) .. "}")
  end },
  -- Rotation in one step: advertise both platform certificates, sign with `to`.
  ["/_sandbox/rotate"] = { POST = function(server, req)
    local spec = body_table(req)
    local to = spec and spec.to or "secondary"
    local ok, err = M.apply_config(server.state.config, { signing_certificate = to,
      advertised_certificates = { "primary", "secondary" } })
    if not ok then return bad(err) end
    return reply(200, config_view(server.state.config))
  end },
  ["/_sandbox/rotate/public_key"] = { POST = function(server, req) return M.rotate(server, req, "public_key") end },
  ["/_sandbox/rotate/apiv3_key"] = { POST = function(server, req) return M.rotate(server, req, "apiv3_key") end },
  ["/_sandbox/rotate/merchant_certificate"] = { POST = function(server, req)
    return M.rotate(server, req, "merchant_certificate")
  end },
  -- What WeChat Pay would decrypt: an OAEP ciphertext under the key `serial` names.
  ["/_sandbox/decrypt"] = { POST = function(server, req)
    local spec = body_table(req)
    if not spec or type(spec.ciphertext) ~= "string" then return bad("ciphertext is required") end
    local crypto = server.state.crypto
    local key
    for _, k in ipairs{ crypto.public_key, crypto.platforms.primary, crypto.platforms.secondary } do
      if k.serial == spec.serial then key = k.key end
    end
    if not key then return bad("unknown serial: " .. tostring(spec.serial)) end
    local plaintext = key:decrypt_oaep(spec.ciphertext)
    if not plaintext then return bad("does not decrypt") end
    return reply(200, { plaintext = plaintext })
  end },
}

--- One of the key rotation switches (wxpay.sandbox.rotation).
function M.rotate(server, req, what)
  local spec = body_table(req)
  if not spec then return bad("body must be a JSON object") end
  local out, err = require("wxpay.sandbox.rotation")[what](server.state, spec)
  if not out then return bad(err) end
  return reply(200, out)
end

--- Answer one control request.
-- @tparam table server the running sandbox server
-- @tparam table req parsed request
-- @treturn table `{ status =, body = }`
function M.handle(server, req)
  local path = req.target:match("^[^?]*"):gsub("/$", "")
  local route = ROUTES[path]
  if not route then return reply(404, { error = "no such control path: " .. path }) end
  local handler = route[req.method]
  if not handler then return reply(405, { error = "method not allowed" }) end
  return handler(server, req)
end

return M
