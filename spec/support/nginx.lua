--- A real nginx for the specs (Debian's nginx + libnginx-mod-http-lua), with its own prefix.
--
--     local nginx = require("spec.support.nginx")
--     local n = nginx.start(conf, "WXPAY_CONFIG=/tmp/x.json")  -- n.url, n.url2, n.prefix
--     local status, body = nginx.http("GET", n.url .. "/")
--     n:stop()
--
-- `conf` is the configuration text with {{listen}} (and optionally {{listen2}}) left in.
-- nginx cannot listen on port 0, so ports are picked below Linux's ephemeral range (where
-- outgoing connections take theirs) and, when another process holds one, nginx is started
-- again on new ones, with a fresh error log: the failed bind must not stay in the log the
-- specs check. `pick` (for the spec of this) returns the next two ports to try.
-- Children do not inherit a sanitizer runtime preloaded into busted.
local M = {}

M.NGINX = "/usr/sbin/nginx"
M.LUA_MODULE = "/usr/share/nginx/modules/ngx_http_lua_module.so"
M.CLEAN_ENV = "env -u LD_PRELOAD -u ASAN_OPTIONS -u LSAN_OPTIONS -u UBSAN_OPTIONS "

local function q(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function write(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  return out
end

local function alive(pid)
  local stat = read("/proc/" .. pid .. "/stat")
  return stat ~= nil and not stat:match("^%d+ %b() Z")
end

local Nginx = {}
Nginx.__index = Nginx

--- Two random ports to try.
function M.random_ports()
  local port = math.random(20000, 32000)
  return port, port + math.random(1, 700)
end

--- Start nginx on `conf` (see the module header); raises when it cannot.
-- @tparam string conf the configuration, with {{listen}} / {{listen2}} placeholders
-- @tparam[opt] string env `NAME=value ...` put before the command
-- @tparam[opt] function pick returns the next two ports to try
-- @treturn table `{ prefix, pid, port, port2, url, url2 }` with `stop()` and `log()`
function M.start(conf, env, pick)
  local prefix = os.tmpname()
  os.remove(prefix)
  sh("mkdir -p " .. q(prefix .. "/logs") .. " " .. q(prefix .. "/tmp") .. " " .. q(prefix .. "/conf"))
  local seed = tonumber(tostring({}):match("0x(%x+)"), 16) or os.time()
  math.randomseed(os.time() + seed % 100000)
  for _ = 1, 20 do
    local port, port2 = (pick or M.random_ports)()
    local text = conf:gsub("{{listen}}", "127.0.0.1:" .. port):gsub("{{listen2}}", "127.0.0.1:" .. port2)
    write(prefix .. "/conf/nginx.conf", text)
    os.remove(prefix .. "/logs/error.log")
    local out = sh(M.CLEAN_ENV .. (env or "") .. " " .. M.NGINX .. " -p " .. q(prefix)
      .. " -c conf/nginx.conf -e logs/error.log"
      .. " 2>&1; echo rc=$?")
    if out:match("rc=0") then
      local pid
      for _ = 1, 100 do
        pid = tonumber(read(prefix .. "/logs/nginx.pid") or "")
        if pid then break end
        sh("sleep 0.02")
      end
      assert(pid, "nginx wrote no pid file")
      return setmetatable({ prefix = prefix, pid = pid, port = port, port2 = port2,
        url = "http://127.0.0.1:" .. port, url2 = "http://127.0.0.1:" .. port2 }, Nginx)
    end
    local why = out .. (read(prefix .. "/logs/error.log") or "")
    if not why:find("in use", 1, true) then
      sh("rm -rf " .. q(prefix))
      error("nginx did not start: " .. why)
    end
  end
  sh("rm -rf " .. q(prefix))
  error("nginx: no free port found")
end

--- The error log so far.
function Nginx:log()
  return read(self.prefix .. "/logs/error.log") or ""
end

--- Graceful stop (SIGQUIT), SIGKILL after 5 s; the prefix is removed.
function Nginx:stop()
  if self.stopped then return end
  self.stopped = true
  sh("kill -QUIT " .. self.pid .. " 2>/dev/null")
  for _ = 1, 100 do
    if not alive(self.pid) then break end
    sh("sleep 0.05")
  end
  if alive(self.pid) then sh("kill -KILL " .. self.pid .. " 2>/dev/null") end
  sh("rm -rf " .. q(self.prefix))
end

--- One HTTP request with the curl CLI: status, body.
function M.http(method, url, body)
  local cmd = M.CLEAN_ENV .. "curl -s -m 10 -o - -w '\\n%{http_code}' -X " .. method
  if body then cmd = cmd .. " -H 'Content-Type: application/json' --data-binary " .. q(body) end
  local out = sh(cmd .. " " .. q(url))
  local text, status = out:match("^(.*)\n(%d+)$")
  return tonumber(status), text
end

--- Lines of an error log that show a Lua error or a worker blocked.
function M.bad_log_lines(log)
  local bad = {}
  for line in log:gmatch("[^\n]+") do
    if line:find("%[error%]") or line:find("%[crit%]") or line:find("%[alert%]") or line:find("%[emerg%]")
       or line:find("runtime error", 1, true) or line:find("lua entry thread aborted", 1, true)
       or line:lower():find("block", 1, true) then
      bad[#bad + 1] = line
    end
  end
  return bad
end

return M
