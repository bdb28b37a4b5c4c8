--- `wxpay campaign status`: a journal's campaigns and partners as a table, CSV or JSON.
-- @module wxpay.cli.campaign_status

local journal_mod = require("wxpay.cli.journal")
local output = require("wxpay.cli.output")

local M = {}

local PARTNER_COLUMNS = { "campaign", "partner_type", "partner_id", "state", "attempts", "sends",
  "error_code", "error_message", "request_id", "idempotency_key", "updated_at" }
local SUMMARY_COLUMNS = { "campaign", "business_type", "stock_id", "total", "done", "failed", "pending",
  "sending" }

--- Report on a journal.
-- @tparam table o `journal`, `campaign` (optional), `format`, `out`, `err`
function M.status(o)
  local f = io.open(o.journal, "rb")
  if not f then o.err:write("wxpay: no journal at ", o.journal, "\n"); return 1 end
  f:close()
  local journal, jerr = journal_mod.open(o.journal)
  if not journal then o.err:write("wxpay: ", jerr, "\n"); return 1 end
  local campaigns = {}
  for _, c in ipairs(journal:campaigns()) do
    if not o.campaign or c.id == o.campaign then campaigns[#campaigns + 1] = c end
  end
  if o.campaign and #campaigns == 0 then
    o.err:write("wxpay: no campaign ", o.campaign, " in ", o.journal, "\n")
    journal:close()
    return 1
  end
  local summary, partners = {}, {}
  for i, c in ipairs(campaigns) do
    local n = journal:counts(c.id)
    summary[i] = { campaign = c.id, business_type = c.business_type, stock_id = c.stock_id, total = n.total,
                   done = n.done, failed = n.failed, pending = n.pending, sending = n.sending }
    for _, p in ipairs(journal:partners(c.id)) do
      p.campaign = c.id
      p.attempts, p.sends, p.updated_at = tonumber(p.attempts), tonumber(p.sends), tonumber(p.updated_at)
      partners[#partners + 1] = p
    end
  end
  journal:close()
  if o.format == "csv" then
    o.out:write(output.csv(partners, PARTNER_COLUMNS))
  elseif o.format == "json" then
    local list = setmetatable({}, { __jsontype = "array" })
    for i, s in ipairs(summary) do
      local ps = setmetatable({}, { __jsontype = "array" })
      for _, p in ipairs(partners) do
        if p.campaign == s.campaign then
          local row = {}
          for _, col in ipairs(PARTNER_COLUMNS) do row[col] = p[col] end
          row.campaign = nil
          ps[#ps + 1] = row
        end
      end
      local entry = {}
      for k, v in pairs(s) do entry[k] = v end
      entry.partners = ps
      list[i] = entry
    end
    o.out:write(output.json({ campaigns = list }))
  else
    o.out:write(output.table(summary, SUMMARY_COLUMNS))
    local failed = {}
    for _, p in ipairs(partners) do
      if p.state == "failed" then failed[#failed + 1] = p end
    end
    if #failed > 0 then
      o.out:write("\nfailed partners:\n")
      o.out:write(output.table(failed, { "campaign", "partner_id", "error_code", "error_message", "request_id" }))
    end
  end
  return 0
end

return M
