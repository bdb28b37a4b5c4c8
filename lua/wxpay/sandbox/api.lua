--- The WeChat Pay APIv3 look-alike: request authentication (docs/protocol.md#server-checks-on-requests), the
-- partnerships endpoints (docs/sandbox.md#what-it-imitates), `GET /v3/certificates`
-- (docs/protocol.md#platform-certificates) and response signing
-- (docs/protocol.md#response-verification).
-- Handlers return `{ status =, body = }`; `finish` adds headers and the signature, so
-- the server can apply faults between processing and signing.
local core = require("wxpay.core")
local rand = require("openssl.rand")

local coupons = require("wxpay.sandbox.coupons")
local json = require("wxpay.sandbox.json")
local media = require("wxpay.sandbox.media")
local util = require("wxpay.sandbox.util")

local M = {}

local SKEW = 300
local SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"

local function error_response(status, code, message, detail)
  return { status = status, body = json.encode{ code = code, message = message, detail = detail } }
end

local function param_error(field, location, issue, value)
  return error_response(400, "PARAM_ERROR", "参数错误",
                        { field = field, location = location, issue = issue, value = value })
end

--- Keys the handlers need, loaded once into wxpay.core objects.
-- @tparam table keys result of `wxpay.sandbox.keys.load`
-- @treturn table crypto context
function M.load_crypto(keys)
  local pem = keys.pem
  local function platform(key_field, cert_field, serial)
    local cert = assert(core.load_certificate(pem[cert_field]))
    return { key = assert(core.load_private_key(pem[key_field])), serial = serial,
             pem = pem[cert_field], not_before = cert:not_before(),
             not_after = cert:not_after() }
  end
  return {
    merchant_public_key = assert(core.load_certificate(pem.merchant_certificate_file)):public_key(),
    platforms = {
      primary = platform("platform_key_file", "platform_certificate_file",
                         keys.platform_serial_no),
      secondary = platform("platform2_key_file", "platform2_certificate_file",
                           keys.platform2_serial_no),
    },
    public_key = { key = assert(core.load_private_key(pem.public_key_private_file)),
                   serial = keys.wechatpay_public_key_id },
  }
end

--- Parse an Authorization value exactly as docs/protocol.md#authorization-header describes it.
-- @tparam string value
-- @treturn table|nil `{ mchid =, nonce_str =, timestamp =, serial_no =, signature = }`
function M.parse_authorization(value)
  if type(value) ~= "string" then return nil end
  local rest = value:match("^WECHATPAY2%-SHA256%-RSA2048 (.+)$")
  if not rest then return nil end
  local fields, count = {}, 0
  local pos = 1
  while true do
    local name, v, stop = rest:match('^([a-z_]+)="([^"]*)"()', pos)
    if not name or v == "" or fields[name] then return nil end
    if name ~= "mchid" and name ~= "nonce_str" and name ~= "timestamp"
      and name ~= "serial_no" and name ~= "signature" then
      return nil
    end
    fields[name] = v
    count = count + 1
    if stop > #rest then break end
    if rest:sub(stop, stop) ~= "," then return nil end
    pos = stop + 1
  end
  if count ~= 5 or not fields.timestamp:match("^%d+$") then return nil end
  return fields
end

local function sign_error(message, detail)
  return error_response(401, "SIGN_ERROR", message, detail)
end

-- The checks of docs/protocol.md#server-checks-on-requests, in that order. Returns the
-- parsed Authorization fields, or nil and the error response. `body` is the signed body
-- line (the meta JSON for uploads).
local function authenticate(state, req, body)
  local h = req.headers
  if (h["accept"] or "") == "" or (h["user-agent"] or "") == "" then
    return nil, error_response(400, "INVALID_REQUEST", "Http头缺少Accept或User-Agent")
  end
  local auth = M.parse_authorization(h["authorization"])
  if not auth then
    return nil, sign_error("Http头Authorization值格式错误，请参考《微信支付商户REST API签名规则》",
                           { field = "authorization", location = "header" })
  end
  if math.abs(os.time() - tonumber(auth.timestamp)) >= SKEW then
    return nil, sign_error("Http头Authorization中的timestamp与发起请求的时间不得超过5分钟",
                           { field = "timestamp", location = "authorization" })
  end
  -- The merchant key of this serial (several during a rotation: wxpay.sandbox.rotation).
  local mkey = (state.merchant_keys or { [state.keys.serial_no] = state.crypto.merchant_public_key })[auth.serial_no]
  if auth.mchid ~= state.keys.mchid or not mkey then
    return nil, sign_error("商户证书序列号有误。", { field = "serial_no", location = "authorization" })
  end
  local message = table.concat({ req.method, req.target, auth.timestamp, auth.nonce_str, body }, "\n") .. "\n"
  if not mkey:verify(message, auth.signature) then
    local path = req.target:match("^[^?]*")
    -- Like the real service: the first lines of the string it built, body cut short.
    local truncated = table.concat({ req.method, req.target, auth.timestamp, auth.nonce_str,
                                     body:sub(1, 8) }, "\n") .. "\n"
    return nil, sign_error("签名错误，请检查后再试", {
      field = "signature", location = "authorization",
      detail = { issue = "sign not match" },
      sign_information = { method = req.method, url = path,
                           sign_message_length = #message,
                           truncated_sign_message = truncated },
    })
  end
  return auth
end

local function is_string(v, min, max)
  return type(v) == "string" and #v >= min and #v <= max
end

-- Field rules of docs/protocol.md#shared-objects. Returns normalised copies, or nil and an error response.
local function validate_partner(p)
  if type(p) ~= "table" then return nil, param_error("/partner", "body", "partner is required") end
  if p.type == "APPID" then
    if not is_string(p.appid, 1, 32) then
      return nil, param_error("/partner/appid", "body", "appid must be a string of 1-32 bytes")
    end
    return { type = "APPID", appid = p.appid }
  elseif p.type == "MERCHANT" then
    if not is_string(p.merchant_id, 8, 15) then
      return nil, param_error("/partner/merchant_id", "body",
                              "merchant_id must be a string of 8-15 bytes")
    end
    return { type = "MERCHANT", merchant_id = p.merchant_id }
  end
  return nil, param_error("/partner/type", "body", "type must be APPID or MERCHANT")
end

local BUSINESS_TYPES = { FAVOR_STOCK = true, BUSIFAVOR_STOCK = true }
local SCENARIOS = { COUPON_SEND = true, STOCK_QUERY = true }

local function validate_authorized_data(ad)
  if type(ad) ~= "table" then
    return nil, param_error("/authorized_data", "body", "authorized_data is required")
  end
  if not BUSINESS_TYPES[ad.business_type] then
    return nil, param_error("/authorized_data/business_type", "body",
                            "business_type must be FAVOR_STOCK or BUSIFAVOR_STOCK")
  end
  if not is_string(ad.stock_id, 1, 20) then
    return nil, param_error("/authorized_data/stock_id", "body",
                            "stock_id must be a string of 1-20 bytes")
  end
  local out = { business_type = ad.business_type, stock_id = ad.stock_id }
  if ad.scenarios ~= nil then
    if type(ad.scenarios) ~= "table" then
      return nil, param_error("/authorized_data/scenarios", "body", "scenarios must be an array")
    end
    for i, s in ipairs(ad.scenarios) do
      if not SCENARIOS[s] then
        return nil, param_error("/authorized_data/scenarios/" .. (i - 1), "body",
                                "unknown scenario")
      end
    end
    if #ad.scenarios > 0 then out.scenarios = ad.scenarios end
  end
  return out
end

local function relation_json(rel, with_state)
  return json.encode{
    partner = rel.partner, authorized_data = rel.authorized_data,
    state = with_state and rel.state or nil,
    build_time = rel.build_time, terminate_time = rel.terminate_time,
    create_time = rel.create_time, update_time = rel.update_time,
  }
end

local function build(state, mchid, partner, ad)
  local refused = coupons.unknown_stock(state, ad)
  if refused then return refused end
  local rel = state.store:get(mchid, partner, ad)
  if not rel then
    rel = state.store:insert(mchid, partner, ad)
  elseif rel.state == "ESTABLISHED" then
    return error_response(400, "INVALID_REQUEST", "合作关系已存在")
  else
    local t = util.rfc3339(util.now())
    rel.state, rel.build_time, rel.update_time, rel.terminate_time = "ESTABLISHED", t, t, nil
  end
  return { status = 200, body = relation_json(rel, true) }
end

local function terminate(state, mchid, partner, ad)
  local rel = state.store:get(mchid, partner, ad)
  if not rel then
    return error_response(404, "RESOURCE_NOT_EXISTS", "合作关系不存在")
  elseif rel.state == "TERMINATED" then
    return error_response(400, "INVALID_REQUEST", "合作关系已终止")
  end
  local t = util.rfc3339(util.now())
  rel.state, rel.terminate_time, rel.update_time = "TERMINATED", t, t
  return { status = 200, body = json.encode{ terminate_time = t } }
end

local function partnership_post(state, req, auth, endpoint, handler)
  local key = req.headers["idempotency-key"]
  if not key or #key > 48 or not key:match("^[A-Za-z0-9|_*-]+$") then
    return param_error("Idempotency-Key", "header",
                       "Idempotency-Key is required: 1-48 of A-Z a-z 0-9 | _ * -", key)
  end
  local mchid = auth.mchid
  local record = state.store:idempotent(mchid, endpoint, key)
  if record then
    if record.body == req.body then
      return { status = record.status, body = record.response, replayed = true }
    end
    return error_response(400, "INVALID_REQUEST",
                          "Idempotency-Key已被使用，且请求参数与原请求不一致")
  end
  local body = json.decode(req.body)
  if type(body) ~= "table" then
    return param_error("/", "body", "body is not a JSON object")
  end
  local partner, err = validate_partner(body.partner)
  if not partner then return err end
  local ad
  ad, err = validate_authorized_data(body.authorized_data)
  if not ad then return err end
  if ad.business_type == "FAVOR_STOCK" and partner.type == "MERCHANT" then
    return error_response(400, "INVALID_REQUEST", "暂不支持合作方为商户的场景")
  end
  local resp = handler(state, mchid, partner, ad)
  -- Only successes are remembered: a retry after an error is processed afresh.
  if resp.status == 200 then
    state.store:remember(mchid, endpoint, key, req.body, resp.status, resp.body)
  end
  return resp
end

local function query_json(params, name)
  local text = params[name]
  if text == nil then return nil end
  local v = json.decode(text)
  if type(v) ~= "table" then return nil, param_error(name, "query", name .. " is not a JSON object", text) end
  return v
end

-- Offsets above a signed 32-bit int are refused: WeChat Pay's own are int32, and a bound
-- keeps `offset * limit + 1` far from integer overflow (which indexed past the matches).
local MAX_OFFSET = 2147483647

-- A decimal query parameter in min..max, or its default when absent.
-- @return the integer, or nil and a PARAM_ERROR answer
local function query_integer(params, name, default, min, max)
  local text = params[name]
  if text == nil then return default end
  local n = text:match("^%d+$") and tonumber(text)
  if not n or n < min or n > max then
    return nil, param_error(name, "query", string.format("%s must be an integer in %d..%d", name, min, max),
                            text)
  end
  return n
end

local function list(state, req, auth)
  local _, params = util.parse_target(req.target)
  local ad, err = query_json(params, "authorized_data")
  if err then return err end
  if not ad then return param_error("authorized_data", "query", "authorized_data is required") end
  if not BUSINESS_TYPES[ad.business_type] then
    return param_error("authorized_data", "query",
                       "authorized_data.business_type must be FAVOR_STOCK or BUSIFAVOR_STOCK")
  end
  if ad.stock_id ~= nil and not is_string(ad.stock_id, 1, 20) then
    return param_error("authorized_data", "query", "authorized_data.stock_id must be a string")
  end
  local partner
  partner, err = query_json(params, "partner")
  if err then return err end
  partner = partner or {}
  if partner.type ~= nil and partner.type ~= "APPID" and partner.type ~= "MERCHANT" then
    return param_error("partner", "query", "partner.type must be APPID or MERCHANT")
  end
  for _, f in ipairs{ "appid", "merchant_id" } do
    if partner[f] ~= nil and type(partner[f]) ~= "string" then
      return param_error("partner", "query", "partner." .. f .. " must be a string")
    end
  end
  local limit, offset
  limit, err = query_integer(params, "limit", 20, 1, 50)
  if err then return err end
  offset, err = query_integer(params, "offset", 0, 0, MAX_OFFSET)
  if err then return err end

  local matches = state.store:query(auth.mchid, {
    business_type = ad.business_type, stock_id = ad.stock_id, partner_type = partner.type,
    appid = partner.appid, merchant_id = partner.merchant_id,
  })
  local first = state.config.offset_mode == "item" and offset + 1 or offset * limit + 1
  local items = {}
  for i = first, math.min(first + limit - 1, #matches) do
    items[#items + 1] = relation_json(matches[i], state.config.state_in_list)
  end
  if #items == 0 and state.config.empty_list == "404" then
    return error_response(404, "RESOURCE_NOT_EXISTS", "查询结果为空")
  end
  -- Assembled by hand: cjson would write an empty `data` as {}.
  local body = string.format('{"data":[%s],"limit":%d,"offset":%d', table.concat(items, ","),
                             limit, offset)
  if offset == 0 or #items == 0 then
    body = body .. string.format(',"total_count":%d', #matches)
  end
  return { status = 200, body = body .. "}" }
end

local function certificates(state, req)
  if state.config.mode == "public_key" then
    return error_response(404, "RESOURCE_NOT_EXISTS",
                          "无可用的平台证书，请在商户平台-API安全申请使用微信支付公钥。")
  end
  local _, params = util.parse_target(req.target)
  local algorithm = params.algorithm_type or "RSA"
  if algorithm ~= "RSA" and algorithm ~= "SM2" and algorithm ~= "ALL" then
    return param_error("algorithm_type", "query", "algorithm_type must be RSA, SM2 or ALL", algorithm)
  end
  local entries = {}
  if algorithm ~= "SM2" then
    for _, name in ipairs(state.config.advertised_certificates) do
      local p = state.crypto.platforms[name]
      local nonce = util.random_alnum(12)
      entries[#entries + 1] = json.encode{
        serial_no = p.serial,
        effective_time = util.rfc3339(p.not_before),
        expire_time = util.rfc3339(p.not_after),
        encrypt_certificate = {
          algorithm = "AEAD_AES_256_GCM", nonce = nonce, associated_data = "certificate",
          ciphertext = assert(core.aes_gcm_encrypt(state.keys.apiv3_key, nonce,
                                                   "certificate", p.pem)),
        },
      }
    end
  end
  return { status = 200, body = '{"data":[' .. table.concat(entries, ",") .. "]}" }
end

local ROUTES = {
  ["/v3/marketing/partnerships/build"] = { POST = function(state, req, auth)
    return partnership_post(state, req, auth, "build", build)
  end },
  ["/v3/marketing/partnerships/terminate"] = { POST = function(state, req, auth)
    return partnership_post(state, req, auth, "terminate", terminate)
  end },
  ["/v3/marketing/partnerships"] = { GET = list },
  ["/v3/certificates"] = { GET = certificates },
  ["/v3/marketing/favor/media/image-upload"] = { POST = media.handler("marketing"), multipart = true },
  ["/v3/merchant/media/upload"] = { POST = media.handler("merchant"), multipart = true },
}

--- Process one APIv3 request (no faults, no signature yet).
-- @tparam table state server state (`keys`, `crypto`, `store`, `config`)
-- @tparam table req request from `wxpay.sandbox.http.read_request`
-- @treturn table `{ status =, body = }`
function M.handle(state, req)
  local path = req.target:match("^[^?]*")
  local route, captures = ROUTES[path], nil
  if not route then route, captures = coupons.route(path) end
  if not route then
    return error_response(404, "NOT_FOUND", "no such API: " .. path)
  end
  local handler = route[req.method]
  if not handler then return { status = 405, body = "" } end
  local signed, parts = req.body, nil
  if route.multipart then
    -- Uploads sign the meta part only (docs/protocol.md#body-line, #multipart-format).
    parts = media.parse(req)
    if not parts then
      return param_error("meta", "body", "multipart/form-data with a meta part, then a file part, is required")
    end
    signed = parts.meta
  end
  local auth, err = authenticate(state, req, signed)
  if not auth then return err end
  return handler(state, req, auth, parts or captures)
end

-- The key that signs a response (docs/sandbox.md#what-it-imitates): in combined mode the request's
-- Wechatpay-Serial picks the public key, anything else gets the platform certificate.
local function signer_for(state, req)
  local mode = state.config.mode
  if mode == "public_key" or (mode == "combined"
      and req.headers["wechatpay-serial"] == state.crypto.public_key.serial) then
    return state.crypto.public_key
  end
  return state.crypto.platforms[state.config.signing_certificate]
end

-- Change one value while keeping the JSON valid, so only the signature can tell.
local function tamper(body)
  local i = body:find("%d")
  if i then
    local d = (tonumber(body:sub(i, i)) + 1) % 10
    return body:sub(1, i - 1) .. d .. body:sub(i + 1)
  end
  i = body:find("%a")
  if i then
    local c = body:sub(i, i)
    return body:sub(1, i - 1) .. (c:upper() == c and c:lower() or c:upper()) .. body:sub(i + 1)
  end
  return body .. " "
end

--- Headers (and possibly a tampered body) for a processed response.
-- Every 2xx is signed unless `post_fault` or `resp.unsigned` (a file) says not; errors aren't.
-- @tparam table state
-- @tparam table req
-- @tparam table resp `{ status =, body = }`
-- @tparam[opt] string post_fault "tamper" | "unsigned" | "stale" | "probe"
-- @treturn table headers list of `{name, value}`
-- @treturn string body to send
function M.finish(state, req, resp, post_fault)
  local headers = { { "Request-ID", state.next_request_id() } }
  local body = resp.body or ""
  if body ~= "" then headers[#headers + 1] = { "Content-Type", resp.content_type or "application/json" } end
  if resp.status >= 200 and resp.status < 300 and post_fault ~= "unsigned" and not resp.unsigned then
    local signer = signer_for(state, req)
    local ts = tostring(os.time() - (post_fault == "stale" and 600 or 0))
    local nonce = core.nonce(32)
    local signature = signer.key:sign(ts .. "\n" .. nonce .. "\n" .. body .. "\n")
    if post_fault == "probe" then
      signature = "WECHATPAY/SIGNTEST/" .. core.base64_encode(rand.bytes(256))
    end
    headers[#headers + 1] = { "Wechatpay-Timestamp", ts }
    headers[#headers + 1] = { "Wechatpay-Nonce", nonce }
    headers[#headers + 1] = { "Wechatpay-Signature", signature }
    headers[#headers + 1] = { "Wechatpay-Serial", signer.serial }
    headers[#headers + 1] = { "Wechatpay-Signature-Type", SIGNATURE_TYPE }
  end
  if post_fault == "tamper" then body = tamper(body) end
  return headers, body
end

M.error_response = error_response

return M
