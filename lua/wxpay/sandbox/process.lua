--- Start and drive a wxpay-sandbox process (from specs, the demo and the benchmark).
--
--   local sandbox = require("wxpay.sandbox.process")
--   local sb = sandbox.start{ mode = "combined" }   -- sb.config is ready for wxpay.new
--   sb:fault{ fault = "500", count = 1 }
--   sb:stop()
--
-- Talks to the sandbox with the curl CLI (never with the wxpay client under test), and
-- can send hand-signed APIv3 requests (`sb:http`) so specs can check the sandbox itself.
local M = {}

--- Prefix for commands whose processes are not under test: in sanitizer runs the spec
-- runner has the ASan runtime preloaded, and a child that inherits it can report its own
-- leaks or, as a curl CLI did in test-asan, deadlock in LeakSanitizer's exit-time check.
M.CLEAN_ENV = "env -u LD_PRELOAD -u ASAN_OPTIONS -u LSAN_OPTIONS -u UBSAN_OPTIONS "

local cjson = require("cjson").new()

local Sandbox = {}
Sandbox.__index = Sandbox

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local data = f:read("*a")
  f:close()
  return data
end

local function write_file(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

local function sleep(seconds)
  os.execute("sleep " .. seconds)
end

-- Runs under Lua 5.1/LuaJIT too (the specs do), so no math.tointeger.
local function int(v)
  v = tonumber(v)
  return v and math.floor(v)
end

local function own_pid()
  local f = io.open("/proc/self/stat")
  if not f then return nil end
  local pid = f:read("*n")
  f:close()
  return int(pid)
end

local function alive(pid)
  local stat = read_file("/proc/" .. pid .. "/stat")
  if stat then return not stat:match("^%d+ %b() Z") end
  local r = os.execute("kill -0 " .. pid .. " 2>/dev/null")
  return r == true or r == 0
end

--- Start a sandbox.
-- @tparam[opt] table opts `mode`, `offset_mode`, `empty_list`, `mchid`, `state_in_list` (false adds
--   --no-state-in-list), `seed`, `fault_seed`, `dir` (default build/sandbox-keys: keys are reused),
--   `args` (extra arguments), `timeout` (seconds to wait for the startup line, default 10),
--   `verbose` (keep the request log; `sb:stderr()` returns it), `nofile` (the process's
--   open-file limit, `ulimit -n`, for specs that run it out of descriptors)
-- @treturn table sandbox object with `.config`, `.control_url`, `.base_url`, `.pid`, `.dir`
function M.start(opts)
  opts = opts or {}
  local root = opts.root or "."
  -- The checkout's bin/ when there is one, else the installed wxpay-sandbox on PATH.
  local checkout = root .. "/bin/wxpay-sandbox"
  local bin = opts.bin or (read_file(checkout) and checkout or "wxpay-sandbox")
  -- build/ holds the Lua 5.4 module: the checkout's script runs on lua5.4, whatever `lua` is.
  local run = bin == checkout and "lua5.4 " .. q(bin) or q(bin)
  local args = { "--port", "0", "--dir", opts.dir or (root .. "/build/sandbox-keys") }
  if not opts.verbose then args[#args + 1] = "--quiet" end
  local me = own_pid()
  -- If the spec run dies without calling stop(), the sandbox follows it.
  if me then
    args[#args + 1] = "--exit-with-pid"
    args[#args + 1] = tostring(me)
  end
  for _, name in ipairs{ "mode", "offset_mode", "empty_list", "seed", "fault_seed", "mchid" } do
    if opts[name] ~= nil then
      args[#args + 1] = "--" .. name:gsub("_", "-")
      args[#args + 1] = tostring(opts[name])
    end
  end
  if opts.state_in_list == false then args[#args + 1] = "--no-state-in-list" end
  for _, a in ipairs(opts.args or {}) do args[#args + 1] = a end

  local out, err = os.tmpname(), os.tmpname()
  local quoted = {}
  for i, a in ipairs(args) do quoted[i] = q(a) end
  -- Background job writing to files: no pipe to block on, and its pid from $!.
  -- With `nofile`, a subshell lowers its limit and execs the sandbox (so $! is its pid).
  local open, close = "", ""
  if opts.nofile then open, close = string.format("(ulimit -n %d && exec ", opts.nofile), ")" end
  local cmd = string.format("%s" .. M.CLEAN_ENV .. "%s %s%s </dev/null >%s 2>%s & echo $!",
                            open, run, table.concat(quoted, " "), close,
                            q(out), q(err))
  local p = assert(io.popen(cmd))
  local pid = int(p:read("*l"))
  p:close()
  assert(pid, "wxpay-sandbox: could not spawn " .. cmd)

  local deadline = os.time() + (opts.timeout or 10)
  local line
  while true do
    local text = read_file(out) or ""
    line = text:match("^([^\n]*)\n")
    if line then break end
    if not alive(pid) then
      os.remove(out)
      error("wxpay-sandbox exited before it was ready: " .. (read_file(err) or ""), 2)
    end
    if os.time() > deadline then
      os.execute("kill -9 " .. pid .. " 2>/dev/null")
      error("wxpay-sandbox printed no startup line within " .. (opts.timeout or 10)
            .. " s: " .. (read_file(err) or ""), 2)
    end
    sleep(0.05)
  end
  os.remove(out)
  local info = assert(cjson.decode(line), "bad startup line: " .. line)
  local self = setmetatable({
    config = info.config, control_url = info.control_url, base_url = info.config.base_url,
    pid = int(info.pid) or pid, dir = info.dir, stderr_file = err,
  }, Sandbox)
  self:publish_ca()
  return self
end

-- The sandbox keeps its folder private (0700), but nginx workers run as another user and
-- must read the CA certificate (`lua_ssl_trusted_certificate`). The CA certificate is
-- public: a copy goes into a folder anyone may read, and the config points at it (libcurl
-- reads the copy just the same). stop() removes it and points the config back at the
-- sandbox's own file (which stays with a --dir).
function Sandbox:publish_ca()
  local p = assert(io.popen("mktemp -d /tmp/wxpay-sandbox-ca.XXXXXX"))
  local dir = (p:read("*l") or "")
  p:close()
  if dir == "" then return end
  local copy = dir .. "/ca.pem"
  local ok = os.execute(string.format("chmod 755 %s && cp %s %s && chmod 644 %s", q(dir),
    q(self.config.ca_file), q(copy), q(copy)))
  if ok == true or ok == 0 then
    self.public_ca_dir, self.private_ca_file, self.config.ca_file = dir, self.config.ca_file, copy
  else
    os.execute("rm -rf " .. q(dir))
  end
end

-- curl config-file quoting: the command line would be too long for 200 signed requests.
local function cq(s)
  return '"' .. tostring(s):gsub('[\\"]', "\\%0"):gsub("\n", "\\n") .. '"'
end

-- Write a curl config for `parts` (lists of config lines, one transfer each, joined with
-- "next" so they share one connection). Returns the config path and per-transfer files.
local function curl_config(ca_file, parts)
  local lines, files = { "silent", "path-as-is" }, {}
  for i, part in ipairs(parts) do
    if i > 1 then lines[#lines + 1] = "next" end
    local hf, bf = os.tmpname(), os.tmpname()
    files[i] = { hf, bf }
    lines[#lines + 1] = "cacert = " .. cq(ca_file)
    lines[#lines + 1] = "dump-header = " .. cq(hf)
    lines[#lines + 1] = "output = " .. cq(bf)
    for _, line in ipairs(part) do lines[#lines + 1] = line end
  end
  local config = os.tmpname()
  write_file(config, table.concat(lines, "\n") .. "\n")
  return config, files
end

local function collect(files)
  local out = {}
  for i, f in ipairs(files) do
    local head = read_file(f[1]) or ""
    local resp = { headers = {}, body = read_file(f[2]) or "" }
    -- Interim responses (100 Continue) come first: the last status block wins.
    for block in head:gmatch("(.-)\r?\n\r?\n") do
      local status = block:match("^HTTP/%S+ (%d+)")
      if status then
        resp.status = int(status)
        resp.headers = {}
        for name, value in block:gmatch("\n([^:\r\n]+):[ \t]*([^\r\n]*)") do
          resp.headers[name:lower()] = value
        end
      end
    end
    os.remove(f[1])
    os.remove(f[2])
    out[i] = resp
  end
  return out
end

local CURL = M.CLEAN_ENV .. "curl -K "

-- One curl run over one connection. Returns a list of { status, headers, body }.
local function curl(ca_file, parts)
  local config, files = curl_config(ca_file, parts)
  os.execute(CURL .. q(config))
  os.remove(config)
  return collect(files)
end

--- Call the control API.
-- @tparam string method
-- @tparam string path "/stats", "stats" or "/_sandbox/stats"
-- @tparam[opt] table body encoded as JSON
-- @return decoded JSON, the HTTP status and the body as it came
function Sandbox:control(method, path, body)
  path = path:gsub("^/?_sandbox", ""):gsub("^/?", "/")
  local part = { "request = " .. cq(method), "url = " .. cq(self.control_url .. path) }
  local bf
  if body ~= nil then
    bf = os.tmpname()
    write_file(bf, cjson.encode(body))
    part[#part + 1] = "header = " .. cq("Content-Type: application/json")
    part[#part + 1] = "data-binary = " .. cq("@" .. bf)
  end
  local resp = curl(self.config.ca_file, { part })[1]
  if bf then os.remove(bf) end
  assert(resp.status, "wxpay-sandbox control " .. method .. " " .. path .. ": no answer")
  local ok, value = pcall(cjson.decode, resp.body)
  return ok and value or resp.body, resp.status, resp.body
end

--- Send several control requests with one curl run (over one connection while the sandbox
-- keeps it open), each with a raw body and at most `max_time` seconds (default 30).
-- @tparam table list of `{ method, path, body = "raw text" }`
-- @tparam[opt] number max_time
-- @treturn table list of `{ status, headers, body }` (no status: no answer)
function Sandbox:controls(list, max_time)
  local parts, bodies = {}, {}
  for i, c in ipairs(list) do
    local path = c[2]:gsub("^/?_sandbox", ""):gsub("^/?", "/")
    local part = { "request = " .. cq(c[1]), "url = " .. cq(self.control_url .. path),
                   "max-time = " .. (max_time or 30) }
    if c.body then
      bodies[#bodies + 1] = os.tmpname()
      write_file(bodies[#bodies], c.body)
      part[#part + 1] = "header = " .. cq("Content-Type: application/json")
      part[#part + 1] = "data-binary = " .. cq("@" .. bodies[#bodies])
    end
    parts[i] = part
  end
  local out = curl(self.config.ca_file, parts)
  for _, f in ipairs(bodies) do os.remove(f) end
  return out
end

--- The number of descriptors the sandbox process has open (from /proc), or nil.
function Sandbox:open_files()
  local p = io.popen("ls /proc/" .. self.pid .. "/fd 2>/dev/null | wc -l")
  local n = p and int(p:read("*a"))
  if p then p:close() end
  return n
end

--- Whether the sandbox process is still running.
function Sandbox:alive()
  return alive(self.pid)
end

--- API requests the sandbox received (`GET /_sandbox/requests`).
function Sandbox:requests()
  return self:control("GET", "/requests").requests
end

--- Counters (`GET /_sandbox/stats`).
function Sandbox:stats()
  return self:control("GET", "/stats")
end

--- Clear relations, idempotency records, faults, the request log, counters and config.
function Sandbox:reset()
  return self:control("POST", "/reset")
end

--- Queue a fault, e.g. `{ fault = "500", count = 2 }`.
function Sandbox:fault(spec)
  local res, status = self:control("POST", "/faults", spec)
  assert(status == 200, "wxpay-sandbox fault: " .. cjson.encode(res))
  return res
end

--- Change run-time behaviour, e.g. `{ offset_mode = "item" }`.
function Sandbox:configure(changes)
  local res, status = self:control("POST", "/config", changes)
  assert(status == 200, "wxpay-sandbox config: " .. cjson.encode(res))
  return res
end

--- The merchant private key as a wxpay.core key (loaded once).
function Sandbox:merchant_key()
  if not self._key then
    local core = require("wxpay.core")
    self._key = assert(core.load_private_key(read_file(self.config.private_key_file)))
  end
  return self._key
end

--- Build curl config lines for one hand-signed APIv3 request.
-- @tparam table req `method`, `target` (path and query, sent as is), `body`,
--   `headers` (list of "Name: value"; "Accept:" removes a header), `authorization`
--   (a value to send instead of a computed one; false: none), `timestamp`, `nonce`,
--   `idempotency_key`, `wechatpay_serial`
function Sandbox:request_args(req)
  local core = require("wxpay.core")
  local method = req.method or "GET"
  local part = { "request = " .. cq(method) }
  -- Defaults a spec can override or remove ("Accept:" sends no Accept header).
  local headers = { "Accept: application/json", "User-Agent: wxpay-spec/1" }
  for _, h in ipairs(req.headers or {}) do
    local name = h:match("^([^:]+):"):lower()
    for i = #headers, 1, -1 do
      if headers[i]:match("^([^:]+):"):lower() == name then table.remove(headers, i) end
    end
    headers[#headers + 1] = h
  end
  local auth = req.authorization
  if auth == nil then
    auth = assert(core.authorization{
      mchid = self.config.mchid, serial_no = req.serial_no or self.config.serial_no,
      key = self:merchant_key(), method = method, url = req.target, body = req.body or "",
      timestamp = req.timestamp, nonce = req.nonce,
    })
  end
  if auth then headers[#headers + 1] = "Authorization: " .. auth end
  if req.idempotency_key then headers[#headers + 1] = "Idempotency-Key: " .. req.idempotency_key end
  if req.wechatpay_serial then headers[#headers + 1] = "Wechatpay-Serial: " .. req.wechatpay_serial end
  if req.body then
    local bf = os.tmpname()
    write_file(bf, req.body)
    self._tmp = self._tmp or {}
    self._tmp[#self._tmp + 1] = bf
    headers[#headers + 1] = "Content-Type: application/json"
    part[#part + 1] = "data-binary = " .. cq("@" .. bf)
  end
  for _, h in ipairs(headers) do part[#part + 1] = "header = " .. cq(h) end
  part[#part + 1] = "url = " .. cq(self.base_url .. req.target)
  return part
end

--- Send hand-signed APIv3 requests with one curl run (so over one kept-alive connection).
-- @tparam table reqs list of requests as for `request_args`, or a single request
-- @treturn table list of `{ status, headers = {lower-case name -> value}, body }`, or a
--   single response when a single request was given
function Sandbox:http(reqs)
  local single = reqs.target ~= nil
  if single then reqs = { reqs } end
  local parts = {}
  for i, r in ipairs(reqs) do parts[i] = self:request_args(r) end
  local out = curl(self.config.ca_file, parts)
  for _, f in ipairs(self._tmp or {}) do os.remove(f) end
  self._tmp = nil
  return single and out[1] or out
end

--- Start one hand-signed request in the background (a curl process).
-- @tparam table req as for `request_args`
-- @treturn function that waits for the answer and returns `{ status, headers, body }`
function Sandbox:spawn(req)
  local config, files = curl_config(self.config.ca_file, { self:request_args(req) })
  local tmp = self._tmp
  self._tmp = nil
  local proc = assert(io.popen(CURL .. q(config)))
  return function()
    proc:read("*a")
    proc:close()
    os.remove(config)
    for _, f in ipairs(tmp or {}) do os.remove(f) end
    return collect(files)[1]
  end
end

--- The sandbox's stderr so far (only has the request log with `verbose = true`).
function Sandbox:stderr()
  return read_file(self.stderr_file) or ""
end

--- Stop the sandbox (SIGTERM, then SIGKILL after 5 s) and wait until it is gone.
-- @treturn boolean true when it exited on SIGTERM
function Sandbox:stop()
  if self.stopped then return true end
  self.stopped = true
  if self.public_ca_dir then -- the copy goes; the config names the sandbox's own file again
    os.execute("rm -rf " .. q(self.public_ca_dir))
    self.config.ca_file, self.public_ca_dir = self.private_ca_file, nil
  end
  os.execute("kill -TERM " .. self.pid .. " 2>/dev/null")
  for _ = 1, 100 do
    if not alive(self.pid) then
      os.remove(self.stderr_file)
      return true
    end
    sleep(0.05)
  end
  os.execute("kill -KILL " .. self.pid .. " 2>/dev/null")
  os.remove(self.stderr_file)
  return false
end

return M
