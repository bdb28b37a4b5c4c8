--- The libcurl transport made coroutine-aware, for `client.concurrent`.
-- A request made by a task of a running batch is handed to that batch's scheduler (the task
-- yields and is resumed with the answer once libcurl's multi interface has it); any other
-- request goes through the wrapped blocking transport unchanged. The multi handle is kept
-- between batches so its connection cache (and TLS sessions) are reused.
-- @module wxpay.transport.multi

local core = require("wxpay.core")

local M = {}

local DEFAULT_CONNECTIONS = 64

--- `"Name: value"` lines, sorted by name so the wire form is deterministic.
-- @tparam table headers map name -> value
-- @treturn table array of strings
function M.header_lines(headers)
  local names = {}
  for name in pairs(headers or {}) do names[#names + 1] = name end
  table.sort(names)
  local lines = {}
  for i, name in ipairs(names) do lines[i] = name .. ": " .. headers[name] end
  return lines
end

--- Wrap a blocking transport.
-- @tparam table opts `base` (the blocking transport, used outside batches), `current`
--   (function returning the scheduler of the running task, or nil), `busy` (function: is a
--   batch running?), `ca_file`, `proxy`
-- @treturn table a transport with `request`, `multi(connections)`, `stats` and `close`
function M.new(opts)
  local base, current = opts.base, opts.current
  local multi, limit
  local t = {}

  --- Send one request: through the scheduler inside a batch, blocking otherwise.
  -- @tparam table req as for `wxpay.transport.curl`
  function t.request(req)
    local sched = current()
    if not sched then return base.request(req) end
    return sched:http{ method = req.method, url = req.url, headers = M.header_lines(req.headers),
                       body = req.body, timeout = req.timeout, connect_timeout = req.connect_timeout,
                       fresh_connect = req.fresh_connect }
  end

  --- The multi handle, with room for at least `connections` connections (a larger batch
  -- replaces a smaller handle).
  -- @tparam number connections
  function t.multi(connections)
    local want = math.max(connections or 1, DEFAULT_CONNECTIONS)
    if multi and limit < connections then multi:close(); multi = nil end
    if not multi then
      multi = core.http_multi{ ca_file = opts.ca_file, proxy = opts.proxy, max_connections = want }
      limit = want
    end
    return multi
  end

  --- Counters of the blocking session plus the multi handle's (`multi_requests`,
  -- `multi_connects`).
  function t.stats()
    local s = base.stats and base.stats() or {}
    local m = multi and multi:stats() or { requests = 0, connects = 0 }
    s.multi_requests, s.multi_connects = m.requests, m.connects
    return s
  end

  --- Close both (idempotent); later requests open new ones. Raises inside a running batch
  -- (from one of its tasks): the batch's other transfers are still on the multi handle, so
  -- freeing it would pull it from under them. The caller's task fails; the others go on.
  function t.close()
    if opts.busy and opts.busy() then
      error("client.close() inside client.concurrent: the batch still uses the client's "
        .. "connections; close it after the batch", 3)
    end
    if base.close then base.close() end
    if multi then multi:close(); multi = nil end
  end

  return setmetatable(t, { __tostring = function() return "wxpay.transport.multi" end })
end

return M
