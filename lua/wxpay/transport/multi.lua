--- A transport with `multi(n)` made coroutine-aware, for `client.concurrent`.
-- A request made by a task of a running batch is handed to that batch's scheduler (the task
-- yields and is resumed with the answer once the multi handle has it); any other request
-- goes through the wrapped transport's blocking `request` unchanged.
-- @module wxpay.transport.multi

local transport = require("wxpay.transport")

local M = {}

local function request(w, req)
  local sched = w.current()
  if not sched then return w.base.request(req) end
  return sched:http{ method = req.method, url = req.url, headers = transport.curl_header_lines(req),
                     body = req.body, timeout = req.timeout, connect_timeout = req.connect_timeout,
                     fresh_connect = req.fresh_connect }
end

-- Raises inside a running batch (from one of its tasks): the batch's other transfers are
-- still on the multi handle, so freeing it would pull it from under them. The caller's task
-- fails; the others go on.
local function close(w)
  if w.busy and w.busy() then
    error("client.close() inside client.concurrent: the batch still uses the client's "
      .. "connections; close it after the batch", 3)
  end
  if w.base.close then w.base.close() end
end

--- Wrap a transport that has `multi(n)`.
-- @tparam table opts `base` (the transport), `current` (function returning the scheduler of
--   the running task, or nil), `busy` (function: is a batch running?)
-- @treturn table a transport with `base`'s functions, `request` and `close` as above
function M.new(opts)
  local w, base = opts, opts.base
  return setmetatable({
    request = function(req) return request(w, req) end,
    close = function() return close(w) end,
    multi = base.multi,
    stats = base.stats,
    pace = base.pace,
  }, { __tostring = function() return "wxpay.transport.multi" end })
end

return M
