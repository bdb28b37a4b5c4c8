--- A misbehaving "Redis" for the store specs, in a child Lua process on 127.0.0.1 (a free
-- port): it reads each command and answers in one of two hostile ways a real redis-server
-- cannot be made to:
--
-- * `"trickle"`: a status reply that never ends, one byte every 0.1 s (each byte re-arms a
--   cosocket's read timeout);
-- * `"huge"`: a bulk reply announcing 300,000,000 bytes, then 2 MB of them, then nothing.
--
--     local bad = require("spec.support.bad_redis")
--     local srv = bad.start("trickle")   -- srv.port
--     srv:stop()
--
-- It serves several connections at once and exits by itself after 120 s.
local M = {}

local SERVER = [=[
local socket = require("socket")
local mode, portfile = arg[1], arg[2]
local srv = assert(socket.bind("127.0.0.1", 0))
srv:settimeout(0)
local _, port = srv:getsockname()
local f = assert(io.open(portfile .. ".tmp", "w")); f:write(port); f:close()
os.rename(portfile .. ".tmp", portfile)
local conns, stop_at = {}, socket.gettime() + 120
while socket.gettime() < stop_at do
  local c = srv:accept()
  if c then c:settimeout(0); conns[#conns + 1] = { sock = c, sent = 0 } end
  local keep = {}
  for _, x in ipairs(conns) do
    local data, err, partial = x.sock:receive(65536)
    local got = data or partial
    if got and got ~= "" and not x.started then
      x.started = true
      if mode == "huge" then
        x.sock:settimeout(1)
        x.sock:send("$300000000\r\n")
        local chunk = string.rep("x", 65536)
        for _ = 1, 32 do if not x.sock:send(chunk) then break end end
        x.sock:settimeout(0)
      else
        x.sock:send("+")
      end
    end
    if err ~= "closed" then
      if x.started and mode == "trickle" then x.sock:send("a") end
      keep[#keep + 1] = x
    else
      x.sock:close()
    end
  end
  conns = keep
  socket.sleep(0.1)
end
]=]

local Server = {}
Server.__index = Server

--- Start the server in `mode`; raises when it cannot.
function M.start(mode)
  local dir = os.tmpname()
  os.remove(dir)
  os.execute("mkdir -p '" .. dir .. "'")
  local f = assert(io.open(dir .. "/server.lua", "w"))
  f:write(SERVER)
  f:close()
  local p = assert(io.popen("env -u LD_PRELOAD -u ASAN_OPTIONS -u LSAN_OPTIONS -u UBSAN_OPTIONS lua5.4 '"
    .. dir .. "/server.lua' " .. mode .. " '" .. dir .. "/port' </dev/null >/dev/null 2>&1 & echo $!"))
  local pid = tonumber(p:read("*l"))
  p:close()
  local socket = require("socket")
  for _ = 1, 250 do
    local pf = io.open(dir .. "/port")
    if pf then
      local port = tonumber(pf:read("*a"))
      pf:close()
      if port then return setmetatable({ pid = pid, port = port, dir = dir }, Server) end
    end
    socket.sleep(0.02)
  end
  os.execute("kill " .. pid .. " 2>/dev/null")
  error("bad_redis did not start")
end

function Server:stop()
  os.execute("kill " .. self.pid .. " 2>/dev/null")
  os.execute("rm -rf '" .. self.dir .. "'")
end

return M
