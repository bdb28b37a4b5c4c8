--- `client.download(info, opts)`: fetch a file whose answer is not signed (the 代金券
-- use-flow and refund-flow files, bills), trusting it by its hash only.
--
--     local info = assert(client.favor.stocks.use_flow(stock_id))  -- { url, hash_value, hash_type }
--     local ok, err = client.download(info, { path = "/tmp/flow.csv" })
--     client.download(info, { sink = function(chunk) … end })     -- chunk nil at the end
--
-- The request is a signed GET of `info.url`; the answer is streamed by the C core into a
-- temporary file next to `path` (created with O_EXCL, mode 0600) while its digest is
-- computed, so nothing the size of the file is ever in memory. Only when the digest equals
-- `hash_value` is the file renamed to `path` (or read back in 64 KiB chunks into `sink`);
-- on any failure (network, a cut connection, a wrong hash, an API error, a sink error) the
-- temporary file is removed and nothing is left at `path`. libcurl blocks, so under
-- OpenResty the download is refused in phases with cosockets (run it from a CLI or a
-- separate process). docs/coupons.md#reconciliation-files has the details.
-- @module wxpay.download

local core = require("wxpay.core")
local errors = require("wxpay.errors")

local M = {}

-- hash_type → the core's digest name and the hex length it yields.
local HASHES = { SHA1 = { "sha1", 40 }, SHA256 = { "sha256", 64 } }
local CHUNK = 65536
local OPTS = { path = true, sink = true, timeout = true, connect_timeout = true, max_bytes = true,
  tmp_dir = true }

local invalid = errors.invalid_argument

-- The digest name and the expected lower-case hex of `info`, or nil and an error. Without
-- a `hash_type` (the 2025 by-day answers) the type follows from the length.
local function expected_hash(info)
  local value = info.hash_value
  if type(value) ~= "string" or not value:match("^%x+$") then
    return nil, invalid("hash_value", "must be a hex digest")
  end
  local t = info.hash_type
  if t == nil then t = (#value == 40 and "SHA1") or (#value == 64 and "SHA256") or nil end
  local h = type(t) == "string" and HASHES[t:upper()]
  if not h then return nil, invalid("hash_type", "must be SHA1 or SHA256 (got " .. tostring(t) .. ")") end
  if #value ~= h[2] then return nil, invalid("hash_value", "is not a " .. t:upper() .. " digest") end
  return h[1], value:lower()
end

-- https://host[:port] and the request target (path and query) of `url`.
local function split_url(url)
  if type(url) ~= "string" or url:find("[%z\1-\32\127#]") then return nil end
  local origin, target = url:match("^(https://[^/?]+)(/[^?]*%??.*)$")
  return origin, target
end

local function check_opts(opts)
  for k in pairs(opts) do
    if not OPTS[k] then return nil, invalid("opts." .. tostring(k), "unknown option") end
  end
  if (opts.path == nil) == (opts.sink == nil) then
    return nil, invalid("opts.path", "give exactly one of path and sink")
  end
  -- A NUL byte would cut the name short in the C core: another file than the one named.
  for _, k in ipairs({ "path", "tmp_dir" }) do
    local v = opts[k]
    if v ~= nil and (type(v) ~= "string" or v == "" or v:find("%z")) then
      return nil, invalid("opts." .. k, k == "path" and "must be a file name" or "must be a directory name")
    end
  end
  if opts.sink ~= nil and type(opts.sink) ~= "function" then return nil, invalid("opts.sink", "must be a function") end
  for _, k in ipairs({ "timeout", "connect_timeout" }) do
    local v = opts[k]
    if v ~= nil and (type(v) ~= "number" or v ~= v or v <= 0 or v > 86400) then
      return nil, invalid("opts." .. k, "must be 0 < seconds <= 86400")
    end
  end
  -- At most 2^53: the C core takes an integer (math.huge and 2^63 made it raise).
  local mb = opts.max_bytes
  if mb ~= nil and (type(mb) ~= "number" or mb < 1 or mb > 2 ^ 53 or math.floor(mb) ~= mb) then
    return nil, invalid("opts.max_bytes", "must be an integer from 1 to 2^53")
  end
  return true
end

-- A fresh temporary name beside `path` (or in tmp_dir for a sink).
local function temp_name(opts)
  local nonce = core.nonce(16)
  if opts.path then return opts.path .. ".part-" .. nonce end
  local dir = opts.tmp_dir or os.getenv("TMPDIR") or "/tmp"
  return dir .. "/wxpay-download-" .. nonce
end

-- The structured error of a non-2xx answer (its JSON `code` and `message` when present).
local function api_error(st, resp)
  local body = type(resp.body) == "string" and resp.body or ""
  local ok, data = pcall(st.decode_json or require("wxpay.json").decode, body)
  data = ok and type(data) == "table" and data or {}
  return errors.new("api", tostring(data.message or ("download answered HTTP " .. resp.status)), {
    status = resp.status, code = data.code, request_id = resp.headers and resp.headers["request-id"],
  })
end

-- Whether a sink's answer `res, why` stops the download: `false`, or `nil` with an error
-- (the ltn12 convention). A sink that returns nothing has taken the chunk.
local function sink_refused(res, why)
  return res == false or (res == nil and why ~= nil)
end

-- Feed the verified file at `tmp` to `sink` in chunks, then `sink(nil)`.
local function drain(tmp, sink)
  local f, ferr = io.open(tmp, "rb")
  if not f then return nil, errors.new("network", "reading the downloaded file failed: " .. tostring(ferr),
    { code = "WRITE_FAILED", retryable = false }) end
  local ok, res, why
  repeat
    local chunk = f:read(CHUNK)
    ok, res, why = pcall(sink, chunk)
  until not ok or sink_refused(res, why) or chunk == nil
  f:close()
  if not ok or sink_refused(res, why) then
    return nil, errors.new("invalid_argument", "opts.sink: the sink failed: " .. tostring(ok and (why or res) or res),
      { field = "opts.sink" })
  end
  return true
end

-- Refuse where libcurl would block an nginx worker.
local function blocking_refused()
  if not rawget(_G, "ngx") then return nil end
  local ok, ngx_transport = pcall(require, "wxpay.transport.ngx")
  if ok and ngx_transport.cosockets_available and ngx_transport.cosockets_available() then
    return errors.config("transport", "client.download blocks (libcurl): not in an nginx request or timer; "
      .. "run it from the CLI or another process")
  end
end

local function fetch(st, info, opts, tmp, digest)
  local origin, target = split_url(info.url)
  local auth, why = core.authorization{ mchid = st.mchid, serial_no = st.serial_no,
    key = st.private_key, method = "GET", url = target, body = "" }
  if not auth then
    return nil, errors.new("network", "request not sent: signing failed: " .. tostring(why),
      { code = "SIGN_FAILED", connected = false, retryable = false })
  end
  local session = core.http_session{ ca_file = st.ca_file, proxy = st.proxy }
  local resp, err = session:download{ method = "GET", url = origin .. target,
    headers = { "Authorization: " .. auth, "Accept: */*", "User-Agent: " .. st.user_agent },
    timeout = opts.timeout or 600, connect_timeout = opts.connect_timeout or 5, path = tmp,
    hash = digest, max_bytes = opts.max_bytes }
  session:close()
  if not resp then
    if err.kind == "io" and tostring(err.message):find("^download not started") then
      return nil, invalid(opts.path and "opts.path" or "opts.tmp_dir", tostring(err.message))
    elseif err.kind == "io" then
      return nil, errors.new("network", "writing the downloaded file failed: " .. tostring(err.message),
        { code = "WRITE_FAILED", retryable = false })
    end
    return nil, errors.new(err.kind == "timeout" and "timeout" or "network", tostring(err.message),
      { connected = err.connected, curl_code = type(err.code) == "number" and err.code or nil })
  end
  return resp
end

--- Download the file `info` describes, checking its hash; see the module text.
-- @tparam table st the client state (keys, mchid, ca_file, proxy, user_agent)
-- @tparam table info `{ url, hash_value, hash_type? }` as a flow call returned it
-- @tparam table opts `path` or `sink` (exactly one); `timeout` (600 s), `connect_timeout`
--   (5 s), `max_bytes`, `tmp_dir` (for a sink: where the temporary file goes)
-- @return `{ bytes, hash, path? }`, or nil and an error (nothing left at `path`)
function M.download(st, info, opts)
  if type(info) ~= "table" then error("bad argument #1 to 'download' (table expected, got " .. type(info) .. ")", 3) end
  if type(opts) ~= "table" then error("bad argument #2 to 'download' (table expected, got " .. type(opts) .. ")", 3) end
  local ok, err = check_opts(opts)
  if not ok then return nil, err end
  if not split_url(info.url) then return nil, invalid("url", "must be an https:// URL with a path") end
  local digest, want = expected_hash(info)
  if not digest then return nil, want end
  local refused = blocking_refused()
  if refused then return nil, refused end
  local tmp = temp_name(opts)
  local resp, ferr = fetch(st, info, opts, tmp, digest)
  if not resp then os.remove(tmp); return nil, ferr end
  if resp.status < 200 or resp.status > 299 then os.remove(tmp); return nil, api_error(st, resp) end
  if resp.hash ~= want then
    os.remove(tmp)
    return nil, errors.new("signature", "downloaded file does not match hash_value (" .. resp.bytes
      .. " bytes received)", { code = "HASH_MISMATCH", status = resp.status })
  end
  if opts.sink then
    ok, err = drain(tmp, opts.sink)
    os.remove(tmp)
    if not ok then return nil, err end
    return { bytes = resp.bytes, hash = resp.hash }
  end
  local moved, why = os.rename(tmp, opts.path)
  if not moved then
    os.remove(tmp)
    return nil, invalid("opts.path", "cannot be written: " .. tostring(why))
  end
  return { bytes = resp.bytes, hash = resp.hash, path = opts.path }
end

--- Bind `download` to a client's state: the function `client.download` is.
function M.bind(st, config)
  local s = setmetatable({ ca_file = config.ca_file, proxy = config.proxy }, { __index = st })
  return function(info, opts) return M.download(s, info, opts) end
end

return M
