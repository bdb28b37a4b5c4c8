--- A fake `ngx` with fake cosockets, for the ngx transport's specs outside nginx.
--
-- A connection serves scripted answers the way an `ngx.socket.tcp` would: bytes arrive in
-- pieces, each arrival takes `delay` seconds of a fake clock, a read that waits longer than
-- the socket's timeout fails with "timeout" (the clock moves by the timeout), and a peer
-- that has sent everything either closes ("closed", with the partial data where a real
-- cosocket gives it) or stays silent (`at_end = "timeout"`). Like a real cosocket, the
-- timer of a `receive` is re-armed on every arrival.
local F = {}

--- A clock the fake sockets advance while they "wait".
-- @treturn table `{ t = seconds, now = function }`
function F.clock(t)
  local c = { t = t or 1000 }
  function c.now() return c.t end
  return c
end

-- A byte source: a string (split by `piece`, a number or a function returning one) or a
-- function(max) returning up to max bytes, nil at the end.
local function source(answer, piece)
  if type(answer) == "function" then return answer end
  local pos = 1
  return function(max)
    if pos > #answer then return nil end
    local n = type(piece) == "function" and piece() or piece or #answer
    n = math.max(1, math.min(n, max))
    local s = answer:sub(pos, pos + n - 1)
    pos = pos + n
    return s
  end
end

--- One connection of the fake server.
-- @tparam table spec `answers` (one per request sent on the connection: a string or a
--   generator function), `piece` (bytes per arrival), `delay` (seconds per arrival),
--   `at_end` ("closed" or "timeout"), `clock`
function F.connection(spec)
  local c = { answers = spec.answers or {}, piece = spec.piece, delay = spec.delay or 0,
    at_end = spec.at_end or "closed", clock = spec.clock or F.clock(), pending = "",
    sent = {}, received = 0, max_piece = 0, timeout_ms = 60000, reused = 0 }

  -- Wait for the next piece into c.pending. Returns true or nil, err.
  function c.arrive()
    local wait = c.timeout_ms / 1000
    if not c.source or c.ended then
      if c.at_end == "closed" then return nil, "closed" end
      c.clock.t = c.clock.t + wait
      return nil, "timeout"
    end
    if c.delay > wait then
      c.clock.t = c.clock.t + wait
      return nil, "timeout"
    end
    c.clock.t = c.clock.t + c.delay
    local s = c.source(64 * 1024)
    if not s then
      c.ended = true
      return c.arrive()
    end
    c.pending = c.pending .. s
    return true
  end

  -- Hand n bytes of c.pending to the caller.
  function c.take(n)
    local s = c.pending:sub(1, n)
    c.pending = c.pending:sub(n + 1)
    c.received = c.received + #s
    c.max_piece = math.max(c.max_piece, #s)
    return s
  end
  return c
end

local Socket = {}
Socket.__index = Socket

--- A socket already connected to `conn` (for the reader's specs).
function F.socket(conn)
  local s = setmetatable({ conn = conn }, Socket)
  conn.source = conn.source or (conn.answers[1] and source(table.remove(conn.answers, 1), conn.piece))
  return s
end

function Socket:settimeout(ms) if self.conn then self.conn.timeout_ms = ms end; self.timeout_ms = ms end
function Socket:settimeouts(_, _, read_ms) self:settimeout(read_ms) end

function Socket:receiveany(max)
  local c = self.conn
  if c.pending == "" then
    local ok, err = c.arrive()
    if not ok then return nil, err end
  end
  return c.take(max)
end

function Socket:receive(pattern)
  local c = self.conn
  pattern = pattern or "*l"
  if pattern == "*a" or pattern == "a" then
    local parts = {}
    while true do
      parts[#parts + 1] = c.take(#c.pending)
      local ok, err = c.arrive()
      if not ok then
        if err == "closed" then return table.concat(parts) end
        return nil, err, table.concat(parts)
      end
    end
  elseif pattern == "*l" or pattern == "l" then
    while true do
      local lf = c.pending:find("\n", 1, true)
      if lf then return (c.take(lf):gsub("\r?\n$", "")) end
      local ok, err = c.arrive()
      if not ok then return nil, err, c.take(#c.pending) end
    end
  end
  while #c.pending < pattern do
    local ok, err = c.arrive()
    if not ok then return nil, err, c.take(#c.pending) end
  end
  return c.take(pattern)
end

--- `receiveuntil(pattern)`: an iterator returning the data before `pattern` (at most
-- `size` bytes per call when given, then nil when the pattern is reached).
function Socket:receiveuntil(pattern)
  local c, done = self.conn, false
  return function(size)
    if done then done = false; return nil end
    while true do
      local at = c.pending:find(pattern, 1, true)
      if at then
        if size and at - 1 > size then return c.take(size) end
        local s = c.take(at - 1)
        c.take(#pattern)
        if size then done = true end
        return s
      end
      if size and #c.pending >= size + #pattern then return c.take(size) end
      local ok, err = c.arrive()
      if not ok then return nil, err, c.take(#c.pending) end
    end
  end
end

function Socket:send(data)
  local c = self.conn
  if not c or c.closed then return nil, "closed" end
  c.sent[#c.sent + 1] = data
  -- the answer to this request starts now; none left: the server closed the connection
  local answer = table.remove(c.answers, 1)
  c.source, c.ended, c.pending = answer and source(answer, c.piece), false, ""
  return #data
end

function Socket:close()
  if self.conn then self.conn.closed = true end
  return 1
end

--- A fake `ngx` whose cosockets connect to `server.connections` (specs, made with
-- F.connection, taken in turn for each new connection) or to a pooled one.
-- `server` collects `connects` (new connections), `pools` and `log`.
function F.ngx(server, clock)
  server.pools, server.connects, server.log = server.pools or {}, 0, server.log or {}
  local fake = { WARN = 5 }
  function fake.now() return clock.t end
  function fake.update_time() end
  function fake.get_phase() return "content" end
  function fake.sleep(s) clock.t = clock.t + s end
  function fake.log() end
  local function tcp()
    local s = setmetatable({ timeout_ms = 60000 }, Socket)
    function s:connect(host, port, o)
      server.log[#server.log + 1] = "connect " .. host .. ":" .. port .. " pool=" .. o.pool
      local pool = server.pools[o.pool]
      local c = pool and table.remove(pool)
      if c then
        c.reused = c.reused + 1
      else
        c = table.remove(server.connections, 1)
        if not c then return nil, "connection refused" end
        server.connects = server.connects + 1
        c.reused = 0
      end
      c.timeout_ms, self.conn, self.pool = self.timeout_ms, c, o.pool
      return 1
    end
    function s:getreusedtimes() return self.conn.reused end
    function s.sslhandshake() return true end
    function s:setkeepalive()
      server.log[#server.log + 1] = "keepalive " .. self.pool
      server.pools[self.pool] = server.pools[self.pool] or {}
      table.insert(server.pools[self.pool], self.conn)
      self.conn = nil
      return 1
    end
    return s
  end
  fake.socket = { tcp = tcp }
  return fake
end

return F
