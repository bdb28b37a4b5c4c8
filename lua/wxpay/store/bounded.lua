--- A socket that bounds a whole store operation: the Redis drivers (`resty.redis` on a
-- cosocket, `lua-redis` on LuaSocket) read their replies through it. A cosocket's read
-- timeout is re-armed by every byte that arrives, so a server trickling its reply could
-- hold a call for ever; here every read is given only what is left until one deadline for
-- the whole operation (connect, AUTH, SELECT, the command, a script load), and the reply's
-- size is counted as it is read: past `max_bytes` the read fails ("reply too large") before
-- more is buffered. Either failure leaves the connection unusable: the driver closes it.
-- @module wxpay.store.bounded

local M = {}

--- The largest reply a store operation reads (bytes): far above what the fleet stores
-- (a certificate answer is a few KB), far below what would hurt a worker.
M.MAX_REPLY = 1024 * 1024

local CHUNK = 16384

local Bounded = {}

-- Forward any other method (connect, send, setkeepalive, close, …) to the real socket.
Bounded.__index = function(self, k)
  local own = rawget(Bounded, k)
  if own then return own end
  local real = rawget(self, "real")
  local f = real[k]
  if type(f) ~= "function" then return f end
  return function(_, ...) return f(real, ...) end
end

--- Wrap `sock` (a cosocket or a LuaSocket TCP object).
-- @tparam table sock
-- @tparam function clock seconds (`ngx.now` after `ngx.update_time`, `socket.gettime`)
-- @treturn table the wrapper; `arm` it before each operation
function M.wrap(sock, clock)
  return setmetatable({ real = sock, clock = clock, buf = "", cosocket = sock.receiveany ~= nil }, Bounded)
end

--- Start an operation: it must end by `deadline` (on `clock`) and read at most `max_bytes`.
function Bounded:arm(deadline, max_bytes)
  self.deadline, self.left_bytes, self.buf = deadline, max_bytes or M.MAX_REPLY, ""
end

-- Seconds left, or nil when the deadline has passed.
function Bounded:left()
  local left = self.deadline - self.clock()
  if left <= 0 then return nil end
  return left
end

-- Some bytes (at most `max`) from the socket within `left` seconds, or nil, err.
function Bounded:some(max, left)
  local real = self.real
  if self.cosocket then
    real:settimeout(math.max(1, math.floor(left * 1000)))
    return real:receiveany(max)
  end
  -- LuaSocket: wait until readable (unless its own buffer has data), then take what is there.
  if not (real.dirty and real:dirty()) then
    local ok, socket = pcall(require, "socket") -- there: `real` is a LuaSocket object
    if not ok then return nil, "luasocket is not installed" end
    local readable = socket.select({ real }, nil, left)
    if not readable or not readable[1] then return nil, "timeout" end
  end
  real:settimeout(0)
  local data, err, partial = real:receive(max)
  if data then return data end
  if partial and partial ~= "" then return partial end
  if err == "timeout" then return "" end
  return nil, err
end

-- Read more into the buffer: true, or nil, err.
function Bounded:fill(want)
  local left = self:left()
  if not left then return nil, "timeout" end
  if self.left_bytes <= 0 then return nil, "reply too large" end
  local data, err = self:some(math.min(CHUNK, want, self.left_bytes), left)
  if not data then return nil, err end
  self.left_bytes = self.left_bytes - #data
  self.buf = self.buf .. data
  return true
end

--- `receive()` / `receive("*l")`: one line without its CR LF; `receive(n)`: n bytes.
function Bounded:receive(pattern)
  if self.deadline == nil then return self.real:receive(pattern) end
  if type(pattern) == "number" then
    if pattern > self.left_bytes + #self.buf then return nil, "reply too large" end
    while #self.buf < pattern do
      local ok, err = self:fill(pattern - #self.buf)
      if not ok then return nil, err end
    end
    local out = self.buf:sub(1, pattern)
    self.buf = self.buf:sub(pattern + 1)
    return out
  end
  while true do
    local nl = self.buf:find("\n", 1, true)
    if nl then
      local line = self.buf:sub(1, nl - 1):gsub("\r$", "")
      self.buf = self.buf:sub(nl + 1)
      return line
    end
    local ok, err = self:fill(CHUNK)
    if not ok then return nil, err end
  end
end

--- `send`, within what is left.
function Bounded:send(data)
  if self.deadline then
    local left = self:left()
    if not left then return nil, "timeout" end
    if self.cosocket then self.real:settimeout(math.max(1, math.floor(left * 1000)))
    else self.real:settimeout(left, "t") end
  end
  return self.real:send(data)
end

--- Whether the connection can go back to a pool: nothing left unread.
function Bounded:clean()
  return self.buf == ""
end

return M
