--- `client.reload(config)`: new settings for a live client (a rotated merchant key and
-- serial, a new APIv3 key, another WeChat Pay public key, other limits) without recreating
-- it, so an nginx worker can pick up new keys on a signal or a timer. The whole config is
-- checked and every key loaded first, exactly as `wxpay.new` does; only when all of it is
-- good are the settings swapped in, at once, between two calls. On failure the client keeps
-- its old settings and `reload` returns the `config` error naming the key.
--
-- Kept across a reload of the same merchant (`mchid` unchanged): the platform certificates
-- downloaded so far and their refresh schedule, and the in-memory record of handled
-- callbacks (`client.notify.handle` without a store, or with a memory `store`). Everything else comes from the new
-- config. The old HTTP session is closed. docs/rotation.md shows it in use.
-- @module wxpay.reload

local config_mod = require("wxpay.config")

local M = {}

-- State that belongs to the merchant, not to the config.
local CARRIED = { "expired", "next_refresh", "has_downloaded", "download_attempted", "notify_stores" }

local function carry(old, new)
  if old.mchid ~= new.mchid then return end
  for _, k in ipairs(CARRIED) do
    if new[k] == nil or (k == "expired" and next(new[k]) == nil) then new[k] = old[k] end
  end
  -- A memory store (`store = "memory"`, or `qps` alone) lives in the client: the new one
  -- would start empty, forgetting handled callbacks, the budget and failover state.
  if new.fleet and old.fleet and new.fleet.kind == "memory" and old.fleet.kind == "memory" then
    new.fleet.store = old.fleet.store
  end
  if new.download or new.public_key then
    for _, c in ipairs(old.certificates or {}) do
      if c.source == "downloaded" then new.certificates[#new.certificates + 1] = c end
    end
  end
end

--- Check `config` and load its keys; on success replace the settings in `st` (in place:
-- the client's closures hold `st`).
-- @tparam table st the client's state
-- @tparam table config a complete `wxpay.new` config
-- @return true, or nil and a `config` error (the old settings stay)
function M.apply(st, config)
  local fresh, err = config_mod.build(config, st.version)
  if not fresh then return nil, err end
  carry(st, fresh)
  local old_transport = st.transport
  for k in pairs(st) do st[k] = nil end
  for k, v in pairs(fresh) do st[k] = v end
  if old_transport and old_transport ~= st.transport and old_transport.close then
    pcall(old_transport.close)
  end
  return true
end

return M
