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
local stocks = require("wxpay.cli.stocks")

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
      out[#out + 1] = { type = ptype, id = id, row = line }
    end
  end
  if #out == 0 then return nil, "plan " .. path .. " lists no partners" end
  return out
end

local function is_tty()
  local ok = os.execute("test -t 2")
  return ok == true or ok == 0
end

--- Whether an API error says the relation already exists: `err.already_exists` when the
-- library sets it, else the same rule from the code and message (WeChat Pay answers
-- `RESOURCE_ALREADY_EXISTS`, or `INVALID_REQUEST` with 已存在 in the message).
function M.already_exists(err)
  if type(err) ~= "table" or err.kind ~= "api" then return false end
  if err.already_exists ~= nil then return err.already_exists and true or false end
  return err.code == "RESOURCE_ALREADY_EXISTS"
    or (err.code == "INVALID_REQUEST" and tostring(err.message or ""):find("已存在", 1, true) ~= nil)
end

--- Confirm a suspected duplicate: list the stock's partnerships for that partner and look
-- for an established one. Matching a message's text is a guess; the listing is the fact.
-- @treturn boolean
function M.confirm_established(client, partner, authorized_data)
  local page = client.partnerships.page{ authorized_data = authorized_data, partner = partner, limit = 50 }
  local id = partner.appid or partner.merchant_id
  for _, rel in ipairs(page and type(page.data) == "table" and page.data or {}) do
    local p = type(rel.partner) == "table" and rel.partner or {}
    if (p.appid or p.merchant_id) == id and rel.state == "ESTABLISHED" then return true end
  end
  return false
end

-- The journal outcome of one build call.
local function outcome_of(r, partner, rel, err, meta)
  if rel then
    return { state = "done", attempts = meta.attempts, request_id = meta.request_id, relation_state = rel.state }
  end
  if M.already_exists(err) and M.confirm_established(r.client, partner, r.authorized_data) then
    -- Established before this campaign's key was used (e.g. by hand): the goal is met.
    return { state = "done", attempts = err.attempts, request_id = err.request_id,
             relation_state = "ESTABLISHED", error_code = "ALREADY_ESTABLISHED" }
  end
  return { state = "failed", attempts = err.attempts, retryable = err.retryable and true or false,
           error_code = err.code, error_message = err.message, request_id = err.request_id }
end

local function partner_of(p)
  return p.partner_type == "APPID" and { type = "APPID", appid = p.partner_id }
         or { type = "MERCHANT", merchant_id = p.partner_id }
end

-- One task per partner. Once `r.stop` is set (Ctrl-C, a journal failure) or a SIGTERM
-- arrived, tasks not yet started send nothing: they end as "skipped" and their partners
-- stay pending.
local function partner_task(r, p)
  return function()
    if r.stop or core.signal_pending() then r.ended_ok = r.ended_ok + 1; return "skipped" end
    if p.state == "failed" then r.errors = r.errors - 1 end
    r.journal:sending(r.campaign, p, core.time())
    local rel, err, meta = r.client.partnerships.build({ partner = partner_of(p),
      authorized_data = r.authorized_data }, { idempotency_key = p.idempotency_key,
      on_request = r.figures.on_request })
    local outcome = outcome_of(r, partner_of(p), rel, err, meta)
    if outcome.state == "failed" then r.errors = r.errors + 1 end
    r.journal:outcome(r.campaign, p, outcome, core.time())
    r.done, r.ended_ok = r.done + 1, r.ended_ok + 1
    return outcome.state
  end
end

-- "interrupted" (Ctrl-C: the interpreter's "interrupted!") or "terminated" (SIGTERM:
-- core.trap_signal's "terminated!", or its flag: a pcall inside the library may have
-- swallowed the error), else nil.
local function interruption(e)
  local s = tostring(e)
  if s:find("interrupted!", 1, true) then return "interrupted" end
  if s:find("terminated!", 1, true) or core.signal_pending() then return "terminated" end
end
M.interruption = interruption

-- Exit statuses of a stopped run: 128 + the signal's number, as shells report them.
local STOP_STATUS = { interrupted = 130, terminated = 143 }

-- Run the tasks; returns whether Ctrl-C stopped them. A task that raised (the journal
-- failed, or Ctrl-C landed inside it) makes the rest skip: `ended_ok` falls behind `done`.
local function run_tasks(r, o, todo)
  local tasks = {}
  for i, p in ipairs(todo) do tasks[i] = partner_task(r, p) end
  local ok, results = pcall(r.client.concurrent, tasks, { concurrency = o.concurrency, qps = o.qps,
    on_progress = function(ended)
      if ended > r.ended_ok or core.signal_pending() then r.stop = true end
      r.progress.update(r.done, r.errors)
    end })
  if not ok then
    local stop = interruption(results)
    if stop then return stop end
    error(results, 0)
  end
  local interrupted
  for i, res in ipairs(results) do
    if res[1] == nil and res.n == 2 then
      local stop = interruption(res[2])
      if stop then
        interrupted = interrupted or stop
      else
        o.err:write("wxpay: partner ", todo[i].partner_id, ": ", output.message(res[2]), "\n")
      end
    end
  end
  if not interrupted and core.signal_pending() then interrupted = "terminated" end
  return interrupted
end

-- Checks the options and reads the plan: partners and campaign id, or nil and a status.
-- `--create-stock FILE.json --product P`: checks the options and reads the stock's fields;
-- returns nil, or a message and an exit status.
local function stock_file_options(o)
  if o.stock then return "give --stock or --create-stock, not both", 2 end
  local bt = stocks.PRODUCTS[o.product or ""]
  if not bt then return "--create-stock needs --product busifavor or favor", 2 end
  if o.business_type and o.business_type ~= bt then
    return "--business-type " .. o.business_type .. " is not the business type of --product " .. o.product, 2
  end
  o.business_type = bt
  local params, perr = stocks.read_params(o.create_stock)
  if not params then return perr, 1 end
  o.stock_params = params
  -- The fields as sorted JSON: a rerun must send the same ones with the journaled number.
  o.params_sha256 = core.sha256_hex(require("wxpay.client").encode_json(params))
end

local function prepare(o)
  if o.create_stock then
    local serr, status = stock_file_options(o)
    if serr then o.err:write("wxpay: ", serr, "\n"); return nil, status end
  end
  if not BUSINESS_TYPES[o.business_type or ""] then
    o.err:write("wxpay: --business-type must be FAVOR_STOCK or BUSIFAVOR_STOCK\n")
    return nil, 2
  end
  if not o.create_stock and (type(o.stock) ~= "string" or o.stock == "") then
    o.err:write("wxpay: --stock STOCK_ID (or --create-stock FILE.json) is required\n")
    return nil, 2
  end
  local partners, perr = M.read_plan(o.plan)
  if not partners then o.err:write("wxpay: ", perr, "\n"); return nil, 1 end
  local campaign = o.campaign or (o.business_type .. "-" .. (o.stock or ("new-" .. o.params_sha256:sub(1, 12))))
  for _, p in ipairs(partners) do p.idempotency_key = M.idempotency_key(campaign, p.type, p.id) end
  return partners, campaign
end

-- A transport that records each request and sends nothing: the client validates and signs
-- before a request reaches its transport, so a row that gets here is one WeChat Pay would see.
local function recorder(seen)
  return { request = function(req)
    seen[#seen + 1] = (req.method or "?") .. " " .. tostring(req.url):gsub("^https?://[^/]*", "")
    return nil, require("wxpay.transport").error("network", "dry run: not sent", false)
  end }
end

local function dry_client(config, seen)
  local c = {}
  for k, v in pairs(config or {}) do c[k] = v end
  c.transport, c.max_retries = recorder(seen), 0
  return require("wxpay").new(c)
end

--- `campaign run --dry-run`: check every row of the plan with the library's own validation
-- and the config, print what would be sent and how long it would take at --qps; send
-- nothing and write no journal.
-- @treturn int exit status (1 when a row or the config is refused)
function M.dry_run(o, partners, campaign)
  local seen = {}
  local client, cerr = dry_client(o.config, seen)
  if not client then o.err:write("wxpay: ", output.message(cerr), "\n"); return 1 end
  local ad, rows, bad = { business_type = o.business_type, stock_id = o.stock or "NEW" }, {}, 0
  local bad_stock = false
  if o.stock_params then
    local _, err = stocks.create_stock(client, o.product, o.stock_params, o.stock_params.out_request_no or "DRYRUN")
    bad_stock = err ~= nil and err.kind == "invalid_argument"
    if bad_stock then o.err:write("wxpay: ", o.create_stock, ": ", output.message(err), "\n") end
  end
  for _, p in ipairs(partners) do
    local partner = p.type == "APPID" and { type = "APPID", appid = p.id } or { type = "MERCHANT", merchant_id = p.id }
    local _, err = client.partnerships.build({ partner = partner, authorized_data = ad },
      { idempotency_key = p.idempotency_key })
    if err and err.kind == "invalid_argument" then
      bad = bad + 1
      o.err:write("wxpay: ", o.plan, " row ", p.row, ": ", output.message(err), "\n")
    else
      rows[#rows + 1] = { partner_type = p.type, partner_id = p.id, idempotency_key = p.idempotency_key }
    end
  end
  client.close()
  o.out:write(output.table(rows, { "partner_type", "partner_id", "idempotency_key" }))
  local pace = o.qps and string.format("about %s at --qps %s", output.duration(#rows / o.qps), output.number(o.qps))
               or "no --qps limit: as fast as --concurrency and the API allow"
  o.out:write(string.format("dry run of campaign %s: would send %d build requests (POST %s) for %s %s to %s; "
    .. "%s; nothing sent\n", campaign, #rows, "/v3/marketing/partnerships/build", o.business_type,
    o.stock or ("a new stock from " .. o.create_stock),
    o.host or "?", pace))
  if bad > 0 then o.err:write(string.format("wxpay: %d row%s of the plan refused\n", bad, bad == 1 and "" or "s")) end
  return (bad == 0 and not bad_stock) and 0 or 1
end

-- The journaled request number of a campaign's stock, committed before any create call.
local function journaled_number(o, journal, campaign)
  local step = journal:stock_step(campaign)
  if step then return step end
  local old = journal:campaign(campaign)
  if old then
    return nil, string.format("campaign %s in this journal is for stock %s, not a new one", campaign, old.stock_id)
  end
  local no = o.stock_params.out_request_no
  if no == nil then
    local gerr
    no, gerr = stocks.new_request_no()
    if not no then return nil, gerr end
  end
  journal:begin_stock_step(campaign, o.product, tostring(no), o.params_sha256, core.time())
  return journal:stock_step(campaign), true
end

--- The campaign's first step with `--create-stock`: the stock id, created once. The request
-- number is committed to the journal before the create call, so a run killed before the
-- answer sends the same number again, which WeChat Pay answers with the same stock.
-- @return stock id, or nil and a message
function M.stock_step(o, journal, campaign)
  local step, fresh = journaled_number(o, journal, campaign)
  if not step then return nil, fresh end
  if step.params_sha256 ~= o.params_sha256 then
    return nil, string.format("campaign %s creates its stock from other fields (out_request_no %s): give the "
      .. "same %s, or another --campaign", campaign, step.out_request_no, o.create_stock)
  end
  if step.stock_id then return step.stock_id end
  local data, err = stocks.create_stock(o.client, o.product, o.stock_params, step.out_request_no)
  if not data and err.kind == "invalid_argument" then
    -- Refused before sending: a number no request carried is not worth keeping, and the
    -- fixed file must be free to get one of its own.
    if fresh then journal:forget_stock_step(campaign) end
    return nil, string.format("%s: %s; nothing sent", o.create_stock, output.message(err))
  end
  if not data then
    return nil, string.format("creating the stock (out_request_no %s): %s; run again to repeat the same request",
      step.out_request_no, output.message(err))
  end
  journal:stock_created(campaign, data.stock_id, core.time())
  o.err:write("wxpay: created stock ", data.stock_id, " (out_request_no ", step.out_request_no, ")\n")
  return data.stock_id
end

--- Run a campaign.
-- @tparam table o `plan`, `stock`, `business_type`, `campaign`, `concurrency`, `qps`,
--   `journal`, `client`, `out` (stdout), `err` (stderr), `tty` (nil: detect); for
--   `dry_run`, `config` and `host` instead of `client`
-- @treturn int exit status (0: every partner done; 130: Ctrl-C; 143: SIGTERM)
function M.run(o)
  local partners, campaign = prepare(o)
  if not partners then return campaign end
  if o.dry_run then return M.dry_run(o, partners, campaign) end
  local journal, jerr = journal_mod.open(o.journal)
  if not journal then o.err:write("wxpay: ", jerr, "\n"); return 1 end
  if o.create_stock then
    local stock_id, cerr = M.stock_step(o, journal, campaign)
    if not stock_id then o.err:write("wxpay: ", cerr, "\n"); journal:close(); return 1 end
    o.stock = stock_id
  end
  local ok, serr = journal:start({ id = campaign, stock_id = o.stock, business_type = o.business_type,
    plan = o.plan }, partners, core.time())
  if not ok then o.err:write("wxpay: ", serr, "\n"); journal:close(); return 1 end

  local todo = journal:todo(campaign)
  local counts = journal:counts(campaign)
  local r = { journal = journal, campaign = campaign, client = o.client, done = counts.total - #todo,
    errors = counts.failed, ended_ok = 0, figures = require("wxpay.metrics").recorder(),
    authorized_data = { business_type = o.business_type, stock_id = o.stock } }
  r.progress = output.progress{ total = counts.total, start = r.done, tty = o.tty == nil and is_tty() or o.tty,
    out = o.err, clock = core.monotonic, label = "campaign " .. campaign, every = 1 }
  local run_ok, interrupted = pcall(run_tasks, r, o, todo)
  if not run_ok then journal:close(); error(interrupted, 0) end
  counts = journal:counts(campaign)
  if interrupted then
    -- Partners whose answer never came stay `sending` (unknown): the rerun re-sends them
    -- with the same Idempotency-Key, which WeChat Pay answers as a replay.
    o.err:write(string.format("\n%s: %d/%d done, run again to resume\n", interrupted,
      counts.done + counts.failed, counts.total))
    journal:close()
    return STOP_STATUS[interrupted]
  end
  r.progress.finish(counts.done + counts.failed, counts.failed)
  o.out:write(string.format("campaign %s: %d partners, %d done, %d failed, %d not finished\n", campaign,
    counts.total, counts.done, counts.failed, counts.pending + counts.sending))
  o.out:write(output.figures(r.figures.summary()))
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
