--- `wxpay partnerships list|build|terminate`: one-off operations with table, CSV or JSON
-- output.
-- @module wxpay.cli.partnerships

local output = require("wxpay.cli.output")

local M = {}

local COLUMNS = { "partner_type", "partner_id", "business_type", "stock_id", "state", "build_time",
  "terminate_time" }

local function row(rel, authorized_data)
  local p = type(rel.partner) == "table" and rel.partner or {}
  local ad = type(rel.authorized_data) == "table" and rel.authorized_data or authorized_data or {}
  return { partner_type = p.type, partner_id = p.appid or p.merchant_id, business_type = ad.business_type,
           stock_id = ad.stock_id, state = rel.state, build_time = rel.build_time,
           terminate_time = rel.terminate_time }
end

local function partner_of(o)
  if o.appid and o.merchant_id then return nil, "give --appid or --merchant-id, not both" end
  if o.appid then return { type = "APPID", appid = o.appid } end
  if o.merchant_id then return { type = "MERCHANT", merchant_id = o.merchant_id } end
  return nil, "--appid APPID or --merchant-id ID is required"
end

--- Run one subcommand.
-- @tparam string cmd "list", "build" or "terminate"
-- @tparam table o options (`stock`, `business_type`, `appid`, `merchant_id`, `partner_type`,
--   `limit` (page size), `max` (stop after that many rows), `idempotency_key`, `format`), plus `client`, `out`, `err`
-- @treturn int exit status
function M.run(cmd, o)
  local client, format = o.client, o.format or "table"
  local authorized_data = { business_type = o.business_type, stock_id = o.stock }
  if cmd == "list" then
    local partner = o.partner_type and { type = o.partner_type } or nil
    if o.appid or o.merchant_id then
      local perr
      partner, perr = partner_of(o)
      if not partner then o.err:write("wxpay: ", perr, "\n"); return 2 end
    end
    local rows = {}
    local ok, err = pcall(function()
      for rel in client.partnerships.list{ authorized_data = authorized_data, partner = partner,
                                           limit = o.limit } do
        rows[#rows + 1] = row(rel, authorized_data)
        if o.max and #rows >= o.max then break end -- --limit is only the page size
      end
    end)
    if not ok then o.err:write("wxpay: ", output.message(err), "\n"); return 1 end
    o.out:write(output.render(rows, COLUMNS, format))
    return 0
  elseif cmd == "build" or cmd == "terminate" then
    local partner, perr = partner_of(o)
    if not partner then o.err:write("wxpay: ", perr, "\n"); return 2 end
    local rel, err = client.partnerships[cmd]({ partner = partner, authorized_data = authorized_data },
      { idempotency_key = o.idempotency_key })
    if not rel then o.err:write("wxpay: ", output.message(err), "\n"); return 1 end
    if cmd == "terminate" then
      rel = { partner = partner, authorized_data = authorized_data, state = "TERMINATED",
              terminate_time = rel.terminate_time }
    end
    o.out:write(output.one(row(rel, authorized_data), COLUMNS, format))
    return 0
  end
  o.err:write("wxpay: unknown partnerships command: ", tostring(cmd), "\n")
  return 2
end

return M
