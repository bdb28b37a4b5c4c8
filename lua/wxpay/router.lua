--- Several merchants behind one callback endpoint: `wxpay.router.new(clients)` picks the
-- client a callback belongs to. The `Wechatpay-Serial` of a callback names the WeChat Pay
-- public key or platform certificate that signed it, and those belong to one merchant: the
-- client whose key ring holds that serial parses it. When no client (or more than one) holds
-- it — a platform certificate not downloaded yet, a shared one — each client is tried in
-- turn, and the first that verifies **and** decrypts the callback (with its own APIv3 key)
-- takes it.
--
--     local router = require("wxpay.router").new{ client_a, client_b }
--     local answer, outcome, n, err, client = router.handle(headers, body, function(n, meta)
--       -- meta.client, meta.mchid: whose notification it is
--       return true
--     end)
--
-- docs/merchants.md describes the deployment (服务商, several brands).
-- @module wxpay.router

local M = {}

local function serial_of(headers)
  for name, value in pairs(headers) do
    if type(name) == "string" and name:lower() == "wechatpay-serial" then
      if type(value) == "table" then value = value[1] end
      return type(value) == "string" and value or nil
    end
  end
end

-- The clients whose key ring holds `serial`.
local function owners(clients, serial)
  local out = {}
  if not serial then return out end
  for _, c in ipairs(clients) do
    for _, entry in ipairs(c.certificates.list()) do
      if entry.serial_no == serial then out[#out + 1] = c; break end
    end
  end
  return out
end

--- Create a router over clients (one per merchant).
-- @tparam table clients an array of clients made by `wxpay.new`
-- @return the router: `client_for(headers)`, `parse(headers, body)`, `handle(headers, body,
--   handler, opts)`
function M.new(clients)
  if type(clients) ~= "table" or #clients == 0 then
    error("bad argument #1 to 'new' (a non-empty array of clients expected)", 2)
  end
  for i, c in ipairs(clients) do
    if type(c) ~= "table" or type(c.notify) ~= "table" or type(c.certificates) ~= "table" then
      error("bad argument #1 to 'new' (clients[" .. i .. "] is not a wxpay client)", 2)
    end
  end
  local router = {}

  --- The client whose key ring holds the callback's `Wechatpay-Serial`, when exactly one does.
  -- @treturn table|nil the client
  function router.client_for(headers)
    local found = owners(clients, serial_of(headers))
    return #found == 1 and found[1] or nil
  end

  --- Parse a callback with the client it belongs to (see the module's rule).
  -- @return n, nil, meta (`meta.client`, `meta.mchid` added) or nil, err (the owner's error,
  --   else the first client's) with `err.answer`
  function router.parse(headers, body)
    local owner = router.client_for(headers)
    local first_err
    if owner then
      local n, err, meta = owner.notify.parse(headers, body)
      if n then meta.client = owner; return n, nil, meta end
      first_err = err
    end
    for _, c in ipairs(clients) do
      if c ~= owner then
        local n, err, meta = c.notify.parse(headers, body)
        if n then meta.client = c; return n, nil, meta end
        first_err = first_err or err
      end
    end
    return nil, first_err
  end

  --- Parse a callback with its merchant's client, then run `handler(n, meta)` once per
  -- notification id in that client's store (`client.notify.once`).
  -- @return answer, outcome, n, err (as `client.notify.handle`) and the client
  function router.handle(headers, body, handler, opts)
    if type(handler) ~= "function" then
      error("bad argument #3 to 'handle' (function expected, got " .. type(handler) .. ")", 2)
    end
    local n, err, meta = router.parse(headers, body)
    if not n then return err.answer, "refused", nil, err end
    local answer, outcome, herr = meta.client.notify.once(n, meta, handler, opts)
    return answer, outcome, n, herr, meta.client
  end

  return router
end

return M
