--- The campaign journal: a SQLite database (through LuaSQL's sqlite3 driver, Debian's
-- `lua-sql-sqlite3`) recording every partner of a campaign and what happened to it.
--
-- Each state change is its own committed transaction, written before the runner takes the
-- next step, so a runner killed at any point (even `kill -9`) leaves a journal that says
-- exactly what is known: `pending` (never sent), `sending` (sent, answer unknown), `done`,
-- `failed`. WAL mode with `synchronous = NORMAL`: a committed change survives the process
-- dying; only a power loss could lose the last few (which the deterministic
-- Idempotency-Key then makes harmless to re-send).
--
-- A run holds the journal's lock file (`FILE.db.lock`, an empty SQLite database kept in an
-- exclusive transaction: a POSIX record lock the kernel drops when the process ends, even by
-- `kill -9`), so a second run on the same journal is refused instead of sending every
-- partner again. Strings holding NUL are refused: SQLite's C strings would cut them.
-- @module wxpay.cli.journal

local M = {}

local SCHEMA = {
  [[CREATE TABLE IF NOT EXISTS campaigns (
      id TEXT PRIMARY KEY, stock_id TEXT NOT NULL, business_type TEXT NOT NULL,
      plan TEXT, created_at INTEGER NOT NULL)]],
  [[CREATE TABLE IF NOT EXISTS partners (
      campaign TEXT NOT NULL, seq INTEGER NOT NULL, partner_type TEXT NOT NULL,
      partner_id TEXT NOT NULL, idempotency_key TEXT NOT NULL,
      state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
      sends INTEGER NOT NULL DEFAULT 0, retryable INTEGER, error_code TEXT, error_message TEXT,
      request_id TEXT, relation_state TEXT, updated_at INTEGER,
      PRIMARY KEY (campaign, partner_type, partner_id))]],
  -- A campaign that creates its stock (`--create-stock`): the request number is committed
  -- before the create call, the stock id once the answer is in. A table of its own, so
  -- journals written before it existed open unchanged.
  [[CREATE TABLE IF NOT EXISTS stock_steps (
      campaign TEXT PRIMARY KEY, product TEXT NOT NULL, out_request_no TEXT NOT NULL,
      params_sha256 TEXT NOT NULL, stock_id TEXT, created_at INTEGER NOT NULL, updated_at INTEGER)]],
}

local Journal = {}
Journal.__index = Journal

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- Neither Lua nor LuaSQL can set a file's mode, so a new journal is first created empty
-- (a valid empty database) by a shell with umask 077. SQLite's unix VFS gives the -wal,
-- -shm and -journal files the main file's permissions, so they are 0600 too.
local function create_private(path)
  local f = io.open(path, "rb")
  if f then f:close(); return true end
  local r = os.execute("umask 077 && : >> " .. shell_quote(path))
  if r == true or r == 0 then return true end
  return nil, "cannot create journal " .. path
end

local function driver()
  local ok, d = pcall(require, "luasql.sqlite3")
  if not ok then
    return nil, "the journal needs LuaSQL's SQLite driver (Debian: apt-get install lua-sql-sqlite3)"
  end
  return d
end

-- Take the lock file of `path`: env and connection holding the exclusive transaction, or
-- nil and a message when another process holds it.
local function lock(d, path)
  local lpath = path .. ".lock"
  local created, cerr = create_private(lpath)
  if not created then return nil, cerr end
  local env = d.sqlite3()
  local conn, err = env:connect(lpath)
  local ok = conn and conn:execute("BEGIN EXCLUSIVE")
  if ok then return env, conn end
  if conn then conn:close() end
  env:close()
  if not conn then return nil, "cannot open the journal's lock file " .. lpath .. ": " .. tostring(err) end
  return nil, "journal " .. path .. " is in use by another run (its lock " .. lpath
    .. " is held); wait for it to end, or run this one on another journal"
end

--- Open (or create, mode 0600) a journal.
-- @tparam string path
-- @tparam[opt] table opts `lock = true`: hold the journal's lock file until `close` (a run)
-- @return journal, or nil and an error message
function M.open(path, opts)
  local d, derr = driver()
  if not d then return nil, derr end
  local created, cerr = create_private(path)
  if not created then return nil, cerr end
  local self = setmetatable({}, Journal)
  if opts and opts.lock then
    local lenv, lconn = lock(d, path)
    if not lenv then return nil, lconn end
    self.lock_env, self.lock_conn = lenv, lconn
  end
  local env = d.sqlite3()
  local conn, err = env:connect(path)
  self.env, self.conn = env, conn
  if not conn then self:close(); return nil, "cannot open journal " .. path .. ": " .. tostring(err) end
  for _, sql in ipairs({ "PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", "PRAGMA busy_timeout=5000" }) do
    local cur = conn:execute(sql)
    if type(cur) == "userdata" then cur:close() end
  end
  for _, sql in ipairs(SCHEMA) do
    local r, serr = conn:execute(sql)
    if not r then self:close(); return nil, "journal " .. path .. ": " .. tostring(serr):gsub("^LuaSQL: ", "") end
  end
  return self
end

function Journal:q(s)
  if s == nil then return "NULL" end
  if type(s) == "number" then return string.format("%d", s) end
  if type(s) == "boolean" then return s and "1" or "0" end
  s = tostring(s)
  if s:find("\0", 1, true) then error("wxpay journal: cannot store a string holding NUL", 0) end
  return "'" .. self.conn:escape(s) .. "'"
end

function Journal:exec(sql)
  local r, err = self.conn:execute(sql)
  if not r then error("wxpay journal: " .. tostring(err), 0) end
  return r
end

function Journal:rows(sql)
  local cur = self:exec(sql)
  local out = {}
  local row = cur:fetch({}, "a")
  while row do
    out[#out + 1] = row
    row = cur:fetch({}, "a")
  end
  cur:close()
  return out
end

--- The campaign's row, or nil.
function Journal:campaign(id)
  return self:rows("SELECT * FROM campaigns WHERE id = " .. self:q(id))[1]
end

--- Every campaign in the journal.
function Journal:campaigns()
  return self:rows("SELECT * FROM campaigns ORDER BY created_at, id")
end

--- Record a campaign and its partners (new partners as `pending`) in one transaction.
-- @tparam table c `id`, `stock_id`, `business_type`, `plan`
-- @tparam table partners array of `{ type, id, idempotency_key }`
-- @return true, or nil and a message when the campaign id exists for another stock
function Journal:start(c, partners, now)
  local old = self:campaign(c.id)
  if old and (old.stock_id ~= c.stock_id or old.business_type ~= c.business_type) then
    return nil, string.format("campaign %s in this journal is for %s %s, not %s %s", c.id,
      old.business_type, old.stock_id, c.business_type, c.stock_id)
  end
  self:exec("BEGIN IMMEDIATE")
  local ok, err = pcall(function()
    if not old then
      self:exec(string.format("INSERT INTO campaigns (id, stock_id, business_type, plan, created_at) "
        .. "VALUES (%s, %s, %s, %s, %s)", self:q(c.id), self:q(c.stock_id), self:q(c.business_type),
        self:q(c.plan), self:q(now)))
    end
    local base = tonumber(self:rows("SELECT COALESCE(MAX(seq), 0) AS n FROM partners WHERE campaign = "
      .. self:q(c.id))[1].n)
    for i, p in ipairs(partners) do
      self:exec(string.format("INSERT OR IGNORE INTO partners (campaign, seq, partner_type, partner_id, "
        .. "idempotency_key, updated_at) VALUES (%s, %d, %s, %s, %s, %s)", self:q(c.id), base + i,
        self:q(p.type), self:q(p.id), self:q(p.idempotency_key), self:q(now)))
    end
  end)
  if not ok then
    self.conn:execute("ROLLBACK")
    error(err, 0)
  end
  self:exec("COMMIT")
  return true
end

--- The stock step of a campaign (`campaign`, `product`, `out_request_no`,
-- `params_sha256`, `stock_id` once created), or nil.
function Journal:stock_step(campaign)
  return self:rows("SELECT * FROM stock_steps WHERE campaign = " .. self:q(campaign))[1]
end

--- Record a stock step's request number (committed before the create call is sent).
function Journal:begin_stock_step(campaign, product, out_request_no, params_sha256, now)
  self:exec(string.format("INSERT INTO stock_steps (campaign, product, out_request_no, params_sha256, "
    .. "created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s)", self:q(campaign), self:q(product),
    self:q(out_request_no), self:q(params_sha256), self:q(now), self:q(now)))
end

--- Drop a stock step whose request was never sent (the library refused the fields).
function Journal:forget_stock_step(campaign)
  self:exec("DELETE FROM stock_steps WHERE stock_id IS NULL AND campaign = " .. self:q(campaign))
end

--- Record the stock id the create call answered.
function Journal:stock_created(campaign, stock_id, now)
  self:exec(string.format("UPDATE stock_steps SET stock_id = %s, updated_at = %s WHERE campaign = %s",
    self:q(stock_id), self:q(now), self:q(campaign)))
end

--- Partners still to do: never sent, in doubt, or failed in a way a retry may fix.
function Journal:todo(campaign)
  return self:rows("SELECT * FROM partners WHERE campaign = " .. self:q(campaign)
    .. " AND (state IN ('pending', 'sending') OR (state = 'failed' AND retryable = 1)) ORDER BY seq")
end

--- Every partner of a campaign, in plan order.
function Journal:partners(campaign)
  return self:rows("SELECT * FROM partners WHERE campaign = " .. self:q(campaign) .. " ORDER BY seq")
end

--- Mark a partner as being sent (committed before the request leaves).
function Journal:sending(campaign, p, now)
  self:exec(string.format("UPDATE partners SET state = 'sending', sends = sends + 1, updated_at = %s "
    .. "WHERE campaign = %s AND partner_type = %s AND partner_id = %s", self:q(now), self:q(campaign),
    self:q(p.partner_type), self:q(p.partner_id)))
end

--- Record an outcome.
-- @tparam table o `state` ("done"|"failed"), `attempts`, `retryable`, `error_code`,
--   `error_message`, `request_id`, `relation_state`
-- What a server said (its code, message, request id) is kept, not refused, when it holds
-- NUL (JSON's \u0000): each NUL is written as the two characters \0.
local function server_text(s)
  if type(s) ~= "string" or not s:find("\0", 1, true) then return s end
  local out, i = {}, 1
  while true do
    local j = s:find("\0", i, true)
    if not j then out[#out + 1] = s:sub(i); break end
    out[#out + 1] = s:sub(i, j - 1)
    i = j + 1
  end
  return table.concat(out, "\\0")
end

function Journal:outcome(campaign, p, o, now)
  self:exec(string.format("UPDATE partners SET state = %s, attempts = attempts + %s, retryable = %s, "
    .. "error_code = %s, error_message = %s, request_id = %s, relation_state = %s, updated_at = %s "
    .. "WHERE campaign = %s AND partner_type = %s AND partner_id = %s",
    self:q(o.state), self:q(o.attempts or 0), o.retryable == nil and "NULL" or self:q(o.retryable),
    self:q(server_text(o.error_code)), self:q(server_text(o.error_message)), self:q(server_text(o.request_id)),
    self:q(server_text(o.relation_state)),
    self:q(now), self:q(campaign), self:q(p.partner_type), self:q(p.partner_id)))
end

--- Mark failed partners worth retrying (the error streak that stopped a run: its cause is
-- the campaign's, so a rerun sends them again), each with its new `idempotency_key`: the
-- refused request did nothing, and a server that replays an answer by key would repeat
-- the refusal.
function Journal:retry_later(campaign, partners, now)
  self:exec("BEGIN IMMEDIATE")
  local ok, err = pcall(function()
    for _, p in ipairs(partners) do
      self:exec(string.format("UPDATE partners SET retryable = 1, idempotency_key = %s, updated_at = %s WHERE "
        .. "campaign = %s AND partner_type = %s AND partner_id = %s AND state = 'failed'", self:q(p.idempotency_key),
        self:q(now), self:q(campaign), self:q(p.partner_type), self:q(p.partner_id)))
    end
  end)
  if not ok then self.conn:execute("ROLLBACK"); error(err, 0) end
  self:exec("COMMIT")
end

--- Counts per state: `{ total, pending, sending, done, failed }`.
function Journal:counts(campaign)
  local c = { total = 0, pending = 0, sending = 0, done = 0, failed = 0 }
  for _, r in ipairs(self:rows("SELECT state, COUNT(*) AS n FROM partners WHERE campaign = "
      .. self:q(campaign) .. " GROUP BY state")) do
    c[r.state] = tonumber(r.n)
    c.total = c.total + tonumber(r.n)
  end
  return c
end

function Journal:close()
  if self.conn then self.conn:close(); self.conn = nil end
  if self.env then self.env:close(); self.env = nil end
  if self.lock_conn then self.lock_conn:close(); self.lock_conn = nil end -- ends the lock's transaction
  if self.lock_env then self.lock_env:close(); self.lock_env = nil end
end

return M
