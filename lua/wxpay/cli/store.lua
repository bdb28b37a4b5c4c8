--- The shared store (config key `store`) as `wxpay` commands see it. A command that would
-- share the fleet's rate budget and certificates but cannot reach the store works alone,
-- outside that budget: it says so plainly, once, on stderr before it starts.
-- @module wxpay.cli.store

local M = {}

--- The store a configuration names, for messages: never its password.
-- @param spec the config key `store`
-- @treturn string e.g. `redis 10.0.0.5:6379/2`, `redis://10.0.0.5:6379`, `ngx:wxpay`
function M.describe(spec)
  if type(spec) == "string" then return spec end -- redis:// URLs take no password
  if type(spec) == "table" and spec.host ~= nil then
    local s = "redis " .. tostring(spec.host) .. ":" .. tostring(spec.port or 6379)
    if spec.db ~= nil then s = s .. "/" .. tostring(spec.db) end
    return s
  end
  return "a custom store"
end

-- The store's error, without the password even if a driver ever quoted it.
local function reason(spec, err)
  local text = tostring(err):gsub("^wxpay: ", "")
  local password = type(spec) == "table" and spec.password
  if type(password) == "string" and password ~= "" then
    local i = text:find(password, 1, true)
    while i do
      text = text:sub(1, i - 1) .. "***" .. text:sub(i + #password)
      i = text:find(password, i + 3, true)
    end
  end
  return text
end

--- Warn on `out` when the configured store cannot be reached now (one read of a key).
-- @tparam table config the command's configuration
-- @param out a file (stderr)
-- @treturn boolean true when there is no shared store or it answers, false when warned
function M.check(config, out)
  local spec = config.store
  if spec == nil or spec == "memory" then return true end
  local s, err = require("wxpay.store").open(spec)
  if s then s, err = s:scope(config.mchid) end
  if s then
    local _
    _, err = s:get("cli:probe") -- under the merchant's keys, where a Redis ACL lets it read
  end
  if not err then return true end
  out:write("wxpay: warning: the store ", M.describe(spec), " cannot be reached (", reason(spec, err),
    "): this command works alone, outside the fleet's shared rate budget (qps), until it answers\n")
  return false
end

return M
