--- The media upload endpoints (docs/protocol.md#media-upload): multipart parsing and the checks on meta and file.
-- `api.lua` verifies the signature over the meta part before `handler` runs. Accepted
-- uploads are kept in `state.media` (listed by `GET /_sandbox/media`).
local core = require("wxpay.core")

local json = require("wxpay.sandbox.json")
local util = require("wxpay.sandbox.util")

local M = {}

local MB = 1024 * 1024
-- [SIM] limits: 2 MB for marketing images, 5 MB for the generic endpoint (docs/protocol.md#upload-endpoints).
local LIMITS = { marketing = 2 * MB, merchant = 5 * MB }
local EXTENSIONS = { jpg = "jpeg", jpeg = "jpeg", png = "png", bmp = "bmp" }

local function param_error(field, issue)
  return { status = 400, body = json.encode{ code = "PARAM_ERROR", message = "参数错误",
                                             detail = { field = field, location = "body", issue = issue } } }
end

local function sniff(data)
  if data:sub(1, 3) == "\255\216\255" then return "jpeg" end
  if data:sub(1, 8) == "\137PNG\r\n\26\n" then return "png" end
  if data:sub(1, 2) == "BM" then return "bmp" end
end

--- Split a multipart/form-data body into its `meta` and `file` parts (in that order).
-- @tparam table req parsed request
-- @treturn table|nil `{ meta =, file =, filename =, file_type = }`
function M.parse(req)
  local ctype = req.headers["content-type"] or ""
  local boundary = ctype:match('^multipart/form%-data;%s*boundary="?([^";]+)"?')
  if not boundary then return nil end
  local body, delim = req.body, "--" .. boundary
  if body:sub(1, #delim) ~= delim then return nil end
  local parts, pos = {}, #delim + 1
  while body:sub(pos, pos + 1) ~= "--" do
    if body:sub(pos, pos + 1) ~= "\r\n" then return nil end
    local head_end = body:find("\r\n\r\n", pos + 2, true)
    if not head_end then return nil end
    local next_delim = body:find("\r\n" .. delim, head_end + 4, true)
    if not next_delim then return nil end
    local part = { content = body:sub(head_end + 4, next_delim - 1) }
    for line in body:sub(pos + 2, head_end + 1):gmatch("(.-)\r\n") do
      local name, value = line:match("^([^:]+):%s*(.*)$")
      if name and name:lower() == "content-disposition" then
        part.name = value:match('[;%s]name="([^"]*)"')
        part.filename = value:match('[;%s]filename="([^"]*)"')
      elseif name and name:lower() == "content-type" then
        part.content_type = value
      end
    end
    parts[#parts + 1] = part
    pos = next_delim + 2 + #delim
  end
  if #parts ~= 2 or parts[1].name ~= "meta" or parts[2].name ~= "file" then return nil end
  return { meta = parts[1].content, file = parts[2].content, filename = parts[2].filename,
           file_type = parts[2].content_type }
end

--- The handler for one endpoint.
-- @tparam string endpoint "marketing" | "merchant"
-- @treturn function(state, req, auth, parts) -> `{ status =, body = }`
function M.handler(endpoint)
  return function(state, _, _, parts)
    local meta = json.decode(parts.meta)
    if type(meta) ~= "table" or type(meta.filename) ~= "string" or type(meta.sha256) ~= "string" then
      return param_error("meta", "meta must be a JSON object with filename and sha256")
    end
    local ext = meta.filename:match("%.(%w+)$")
    local kind = ext and EXTENSIONS[ext:lower()]
    if not kind then return param_error("meta.filename", "filename must end in .jpg, .png or .bmp") end
    if parts.filename ~= meta.filename then
      return param_error("file", "the file part's filename differs from meta.filename")
    end
    if #parts.file == 0 or #parts.file > LIMITS[endpoint] then
      return param_error("file", "the file must be 1 byte to " .. LIMITS[endpoint] // MB .. " MB")
    end
    if core.sha256_hex(parts.file) ~= meta.sha256 then
      return param_error("meta.sha256", "sha256 does not match the file (lower-case hex expected)")
    end
    if sniff(parts.file) ~= kind then
      return param_error("file", "the file is not the image type its name says")
    end
    state.media = state.media or {}
    local id = #state.media + 1
    local record = { endpoint = endpoint, filename = meta.filename, sha256 = meta.sha256,
                     size = #parts.file, content_type = parts.file_type, time = util.rfc3339(util.now()) }
    if endpoint == "marketing" then
      record.media_url = "https://qpic.cn/wxpay-sandbox/" .. meta.sha256:sub(1, 16) .. "/" .. id
    else
      record.media_id = "sandbox-media-" .. id .. "-" .. meta.sha256:sub(1, 16)
    end
    state.media[id] = record
    return { status = 200, body = json.encode{ media_url = record.media_url, media_id = record.media_id } }
  end
end

return M
