--- Image upload (docs/protocol.md#media-upload): `client.media.upload(path_or_bytes, opts)`.
--
--     local res, err = client.media.upload("banner.png")                 -- marketing image
--     print(res.media_url)
--     local res2 = client.media.upload(jpeg_bytes, { filename = "id.jpg", endpoint = "merchant" })
--     print(res2.media_id)
--
-- The request is `multipart/form-data` with a `meta` part (`{"filename":…,"sha256":…}`,
-- the lower-case hex SHA-256 of the file) and a `file` part; the signature covers the meta
-- JSON only, byte-identical to the part that is sent.
--
-- Decisions:
--
-- * `path_or_bytes` is taken as the image itself when it starts with a JPEG, PNG or BMP
--   signature or holds a NUL byte or a newline; otherwise it is a path, and the file's base
--   name is the default `filename`. Bytes need `opts.filename`.
-- * Checked before anything is sent (`invalid_argument`, nothing sent): the file is not
--   empty; `filename` is 1-150 characters of UTF-8 without quotes, backslashes or control
--   characters and ends in `.jpg`, `.jpeg`, `.png` or `.bmp` (any case; `.jpeg` is looser
--   than the marketing page's "JPG", on purpose: the content is checked, here and live);
--   the content's signature matches that extension; size at most 2 MB for
--   `endpoint = "marketing"` (`POST /v3/marketing/favor/media/image-upload`, the default)
--   and 5 MB for `"merchant"` (`POST /v3/merchant/media/upload`; most pages say 2 MB, some
--   5 MB), or `opts.max_bytes` (an integer 1..10 MB) when given.
-- * Returns what `client.request` returns: the decoded answer (`{ media_url = … }` or
--   `{ media_id = … }`), the error, meta. Other `opts`: `timeout`, `connect_timeout`,
--   `deadline`, `max_retries`, `wechatpay_serial`; unknown ones are refused. An upload has
--   no Idempotency-Key, so it is only retried where a POST without one is (5xx, 429, and
--   failures before a connection was made).
-- @module wxpay.api.media

local core = require("wxpay.core")
local errors = require("wxpay.errors")
local C1_CONTROL = require("wxpay.api.fields").C1_CONTROL
local read_file = require("wxpay.config").read_file

local M = {}

local MB = 1024 * 1024

local ENDPOINTS = {
  marketing = { path = "/v3/marketing/favor/media/image-upload", max = 2 * MB },
  merchant = { path = "/v3/merchant/media/upload", max = 5 * MB },
}

local TYPES = {
  jpg = "image/jpeg", jpeg = "image/jpeg", png = "image/png", bmp = "image/bmp",
}

local OPTS_KEYS = { filename = true, endpoint = true, timeout = true, connect_timeout = true,
  deadline = true, max_retries = true, wechatpay_serial = true, max_bytes = true,
  on_request = true }
-- The largest `opts.max_bytes`: twice the largest size any page gives.
local MAX_BYTES = 10 * MB

local META_ORDER = { __jsonorder = { "filename", "sha256" } }

-- The content type the bytes announce themselves as, or nil.
local function sniff(data)
  if data:sub(1, 3) == "\255\216\255" then return "image/jpeg" end
  if data:sub(1, 8) == "\137PNG\r\n\26\n" then return "image/png" end
  if data:sub(1, 2) == "BM" and #data >= 26 then return "image/bmp" end
end

-- The image and its name, checked against the endpoint's rules. Returns data, filename and
-- content type, or nil and an `invalid_argument` error.
local function load_image(api, path_or_bytes, opts, max)
  local data, filename = path_or_bytes, opts.filename
  if not (sniff(data) or data:find("[%z\n]")) then
    local rerr
    data, rerr = read_file(path_or_bytes)
    if not data then return nil, errors.invalid_argument("path", "unreadable: " .. tostring(rerr)) end
    filename = filename or path_or_bytes:match("([^/]*)$")
  end
  if filename == nil then
    return nil, errors.invalid_argument("opts.filename", "required when uploading bytes")
  end
  if type(filename) ~= "string" or filename == "" or filename:find('[%c"\\]')
      or filename:find(C1_CONTROL) then
    return nil, errors.invalid_argument("opts.filename",
      "must be a non-empty name without quotes or control characters")
  end
  local utf8_ok, why = api.check_utf8(filename)
  if not utf8_ok then return nil, errors.invalid_argument("opts.filename", why) end
  local _, chars = filename:gsub("[^\128-\191]", "")
  if chars > 150 then return nil, errors.invalid_argument("opts.filename", "longer than 150 characters") end
  local ext = filename:match("%.([%w]+)$")
  local ctype = ext and TYPES[ext:lower()]
  if not ctype then
    return nil, errors.invalid_argument("opts.filename", "must end in .jpg, .jpeg, .png or .bmp")
  end
  if #data == 0 then return nil, errors.invalid_argument("file", "is empty") end
  if #data > max then
    return nil, errors.invalid_argument("file", string.format("%d bytes is over the limit of %d bytes",
      #data, max))
  end
  local found = sniff(data)
  if found ~= ctype then
    return nil, errors.invalid_argument("file", "content is " .. (found or "not a JPG, PNG or BMP image")
      .. ", not what ." .. ext .. " says")
  end
  return data, filename, ctype
end

-- The multipart body and the meta JSON its signature covers (byte-identical to the part).
local function multipart(api, data, filename, ctype)
  local meta = api.encode_json(setmetatable({ filename = filename, sha256 = core.sha256_hex(data) },
    META_ORDER))
  local boundary
  repeat
    local n = core.nonce(28)
    if not n then -- no random source: nothing is sent
      return nil, errors.new("network", "request not sent: no random source for a multipart boundary",
        { code = "RANDOM_FAILED", connected = false, retryable = false })
    end
    boundary = "wxpay" .. n
  until not data:find(boundary, 1, true)
  local body = table.concat({
    "--", boundary, "\r\n",
    'Content-Disposition: form-data; name="meta"\r\n',
    "Content-Type: application/json\r\n\r\n",
    meta, "\r\n",
    "--", boundary, "\r\n",
    'Content-Disposition: form-data; name="file"; filename="', filename, '"\r\n',
    "Content-Type: ", ctype, "\r\n\r\n",
    data, "\r\n",
    "--", boundary, "--\r\n",
  })
  return body, meta, "multipart/form-data; boundary=" .. boundary
end

--- Bind to a client (done by `wxpay.client`).
-- @tparam table api the client's internal API table (`send`, `encode_json`, `check_utf8`,
--   `check_call_options`)
-- @treturn table `{ upload = function(path_or_bytes, opts) }`
function M.new(api)
  local media = {}

  --- Upload an image.
  -- @tparam string path_or_bytes a file path, or the image bytes
  -- @tparam[opt] table opts `filename`, `endpoint` ("marketing" | "merchant"), `max_bytes`,
  --   call options
  -- @treturn table|nil the answer: `media_url` (marketing) or `media_id` (merchant)
  -- @treturn table|nil err
  -- @treturn table|nil meta
  function media.upload(path_or_bytes, opts)
    if type(path_or_bytes) ~= "string" then
      error("bad argument #1 to 'upload' (string expected, got " .. type(path_or_bytes) .. ")", 2)
    end
    if opts ~= nil and type(opts) ~= "table" then
      error("bad argument #2 to 'upload' (table expected, got " .. type(opts) .. ")", 2)
    end
    opts = opts or {}
    for k in pairs(opts) do
      if not OPTS_KEYS[k] then return nil, errors.invalid_argument("opts." .. tostring(k), "unknown option") end
    end
    local ok, err = api.check_call_options(opts, "opts.")
    if not ok then return nil, err end
    local endpoint = ENDPOINTS[opts.endpoint or "marketing"]
    if not endpoint then
      return nil, errors.invalid_argument("opts.endpoint", 'must be "marketing" or "merchant"')
    end

    local max = opts.max_bytes or endpoint.max
    if type(max) ~= "number" or max ~= math.floor(max) or max < 1 or max > MAX_BYTES then
      return nil, errors.invalid_argument("opts.max_bytes", "must be an integer 1.." .. MAX_BYTES)
    end
    local data, filename, ctype = load_image(api, path_or_bytes, opts, max)
    if not data then return nil, filename end
    local body, meta, content_type = multipart(api, data, filename, ctype)
    if not body then return nil, meta end
    return api.send{ method = "POST", target = endpoint.path, body = body, sign_body = meta,
      content_type = content_type,
      wechatpay_serial = opts.wechatpay_serial, timeout = opts.timeout,
      connect_timeout = opts.connect_timeout, deadline = opts.deadline,
      max_retries = opts.max_retries, on_request = opts.on_request }
  end

  return media
end

return M
