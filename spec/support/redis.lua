--- A private redis-server for the specs: on 127.0.0.1, a free port, no persistence.
--
--     local redis = require("spec.support.redis")
--     local srv = redis.start()       -- srv.port, srv.url ("redis://127.0.0.1:P")
--     srv:stop()                      -- and srv:start_again() on the same port
--
-- The port is picked at random below Linux's ephemeral range; when another process holds
-- it (the server exits with "Address already in use") it starts again on a new one. It is up
-- when it answers PING. Children do not inherit a sanitizer runtime preloaded into busted.
local socket = require("socket")

local M = {}

local SERVER = "/usr/bin/redis-server"
local CLEAN_ENV = "env -u LD_PRELOAD -u ASAN_OPTIONS -u LSAN_OPTIONS -u UBSAN_OPTIONS "

local Server = {}
Server.__index = Server

local function q(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  return out
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function alive(pid)
  local stat = read("/proc/" .. pid .. "/stat")
  return stat ~= nil and not stat:match("^%d+ %b() Z")
end

--- Whether a server answers PING on `port`.
function M.ping(port)
  local c = socket.tcp()
  c:settimeout(0.2)
  local ok = c:connect("127.0.0.1", port)
  local reply
  if ok then
    c:send("PING\r\n")
    reply = c:receive("*l")
  end
  c:close()
  return reply == "+PONG"
end

-- Starts redis-server on `port`: true when it answers PING, false when the port is taken.
local function launch(self, port)
  os.remove(self.dir .. "/redis.log")
  local args = {}
  for _, a in ipairs({ "--port", tostring(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                       "--daemonize", "no", "--dir", self.dir, "--logfile", self.dir .. "/redis.log" }) do
    args[#args + 1] = q(a)
  end
  local pid = tonumber(sh(CLEAN_ENV .. SERVER .. " " .. table.concat(args, " ")
    .. " </dev/null >/dev/null 2>&1 & echo $!"))
  assert(pid, "redis-server did not start")
  for _ = 1, 250 do -- 5 s
    if M.ping(port) then
      self.pid, self.port, self.url = pid, port, "redis://127.0.0.1:" .. port
      return true
    end
    if not alive(pid) then break end
    socket.sleep(0.02)
  end
  local log = read(self.dir .. "/redis.log") or ""
  if alive(pid) then sh("kill -KILL " .. pid) end
  if log:find("in use", 1, true) then return false end
  error("redis-server did not answer PING on port " .. port .. ":\n" .. log)
end

--- Start a server on a free port.
-- @tparam[opt] function pick returns the next port to try (for the spec of this)
function M.start(pick)
  local dir = os.tmpname()
  os.remove(dir)
  sh("mkdir -p " .. q(dir))
  local self = setmetatable({ dir = dir }, Server)
  local seed = tonumber(tostring({}):match("0x(%x+)"), 16) or os.time()
  math.randomseed(os.time() + seed % 100000)
  for _ = 1, 20 do
    local port = pick and pick() or math.random(20000, 32000)
    if launch(self, port) then return self end
  end
  sh("rm -rf " .. q(dir))
  error("redis-server: no free port found")
end

--- Stop the server (SIGTERM, SIGKILL after 5 s); its directory stays for `start_again`.
function Server:kill()
  if not self.pid then return end
  sh("kill -TERM " .. self.pid .. " 2>/dev/null")
  for _ = 1, 100 do
    if not alive(self.pid) then break end
    socket.sleep(0.05)
  end
  if alive(self.pid) then sh("kill -KILL " .. self.pid .. " 2>/dev/null") end
  self.pid = nil
end

--- Start it again on the same port (after `kill`).
function Server:start_again()
  for _ = 1, 10 do
    if launch(self, self.port) then return self end
    socket.sleep(0.1)
  end
  error("redis-server: port " .. self.port .. " stayed taken")
end

--- Stop the server and remove its directory.
function Server:stop()
  self:kill()
  if self.dir then sh("rm -rf " .. q(self.dir)) end
  self.dir = nil
end

return M
