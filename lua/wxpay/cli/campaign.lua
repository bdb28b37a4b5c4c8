--- `wxpay campaign run` and `wxpay campaign status`: authorise one stock to every partner of
-- a plan, concurrently, resumably.
--
-- A campaign is identified by `--campaign ID`, or else by its business type and stock. Each
-- partner's Idempotency-Key is derived from the campaign and the partner (a SHA-256), so a
-- re-send after a crash is a replay WeChat Pay answers with the original result. Each partner
-- is marked `sending` in the journal before its request leaves and `done`/`failed` as soon
-- as the answer is in; a rerun sends again only what is `pending`, `sending` (answer never
-- recorded) or failed in a way a retry may fix.
-- @module wxpay.cli.campaign

local core = require("wxpay.core")
local journal_mod = require("wxpay.cli.journal")
local output = require("wxpay.cli.output")

local M = {}

local BUSINESS_TYPES = { FAVOR_STOCK = true, BUSIFAVOR_STOCK = true }

--- The deterministic Idempotency-Key of a partner in a campaign (48 characters).
function M.idempotency_key(campaign, partner_type, partner_id)
  return "wxc" .. core.sha256_hex(campaign .. "\n" .. partner_type .. "\n" .. partner_id):sub(1, 45)
end

--- Read a plan: CSV with a header row and an `appid` or a `merchant_id` column.
-- @return array of `{ type, id }` (duplicates dropped), or nil and an error
function M.read_plan(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, "cannot read plan: " .. tostring(err) end
  local text = f:read("*a")
  f:close()
  text = text:gsub("^\239\187\191", "") -- a UTF-8 BOM from spreadsheets
  local records, perr = output.parse_csv(text)
  if not records then return nil, "plan " .. path .. ": " .. perr end
  local header = records[1]
  if not header then return nil, "plan " .. path .. " is empty" end
  local col, ptype
  for i, name in ipairs(header) do
    local n = name:lower():gsub("^%s+", ""):gsub("%s+$", "")
    if n == "appid" and not col then col, ptype = i, "APPID" end
    if n == "merchant_id" and not col then col, ptype = i, "MERCHANT" end
  end
  if not col then return nil, "plan " .. path .. " has no appid or merchant_id column in its header row" end
  local out, seen = {}, {}
  for line = 2, #records do
    local id = (records[line][col] or ""):gsub("^%s+", ""):gsub("%s+$", "")
    if id ~= "" and not seen[id] then
      seen[id] = true
      out[#out + 1] = { type = ptype, id = id }
    end
  end
  if #out == 0 then return nil, "plan " .. path .. " lists no partners" end
  return out
end

local function is_tty()
  local ok = os.execute("test -t 2")
  return ok == true or ok == 0
end

--- Run a campaign.
-- @tparam table o `plan`, `stock`, `business_type`, `campaign`, `concurrency`, `qps`,
--   `journal`, `client`, `out` (stdout), `err` (stderr), `tty` (nil: detect)
-- @treturn int exit status (0: every partner done)
function M.run(o)
  if not BUSINESS_TYPES[o.business_type or ""] then
    o.err:write("wxpay: --business-type must be FAVOR_STOCK or BUSIFAVOR_STOCK\n")
    return 2
  end
  if type(o.stock) ~= "string" or o.stock == "" then
    o.err:write("wxpay: --stock STOCK_ID is required\n")
    return 2
  end
  local partners, perr = M.read_plan(o.plan)
  if not partners then o.err:write("wxpay: ", perr, "\n"); return 1 end
  local campaign = o.campaign or (o.business_type .. "-" .. o.stock)
  local journal, jerr = journal_mod.open(o.journal)
  if not journal then o.err:write("wxpay: ", jerr, "\n"); return 1 end
  for _, p in ipairs(partners) do p.idempotency_key = M.idempotency_key(campaign, p.type, p.id) end
  local ok, serr = journal:start({ id = campaign, stock_id = o.stock, business_type = o.business_type,
    plan = o.plan }, partners, core.time())
  if not ok then o.err:write("wxpay: ", serr, "\n"); journal:close(); return 1 end

  local todo = journal:todo(campaign)
  local counts = journal:counts(campaign)
  local already = counts.total - #todo
  local done, errors = already, counts.failed
  local client = o.client
  local progress = output.progress{ total = counts.total, start = already, tty = o.tty == nil and is_tty() or o.tty,
    out = o.err, clock = core.monotonic, label = "campaign " .. campaign }
  local authorized_data = { business_type = o.business_type, stock_id = o.stock }

  local tasks = {}
  for i, p in ipairs(todo) do
    tasks[i] = function()
      local partner = p.partner_type == "APPID" and { type = "APPID", appid = p.partner_id }
                      or { type = "MERCHANT", merchant_id = p.partner_id }
      if p.state == "failed" then errors = errors - 1 end
      journal:sending(campaign, p, core.time())
      local rel, err, meta = client.partnerships.build({ partner = partner, authorized_data = authorized_data },
        { idempotency_key = p.idempotency_key })
      local outcome
      if rel then
        outcome = { state = "done", attempts = meta.attempts, request_id = meta.request_id,
                    relation_state = rel.state }
      elseif err.kind == "api" and err.code == "INVALID_REQUEST" and tostring(err.message):find("已存在") then
        -- Established before this campaign's key was used (e.g. by hand): the goal is met.
        outcome = { state = "done", attempts = err.attempts, request_id = err.request_id,
                    relation_state = "ESTABLISHED", error_code = "ALREADY_ESTABLISHED" }
      else
        outcome = { state = "failed", attempts = err.attempts, retryable = err.retryable and true or false,
                    error_code = err.code, error_message = err.message, request_id = err.request_id }
        errors = errors + 1
      end
      journal:outcome(campaign, p, outcome, core.time())
      done = done + 1
      progress.update(done, errors)
      return outcome.state
    end
  end
  local results = client.concurrent(tasks, { concurrency = o.concurrency, qps = o.qps })
  for i, r in ipairs(results) do
    if r[1] == nil and r.n == 2 then -- a task raised (the journal failed, for one)
      o.err:write("wxpay: partner ", todo[i].partner_id, ": ", tostring(r[2]), "\n")
    end
  end
  counts = journal:counts(campaign)
  progress.finish(counts.done + counts.failed, counts.failed)
  o.out:write(string.format("campaign %s: %d partners, %d done, %d failed, %d not finished\n", campaign,
    counts.total, counts.done, counts.failed, counts.pending + counts.sending))
  journal:close()
  return (counts.done == counts.total) and 0 or 1
end

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
