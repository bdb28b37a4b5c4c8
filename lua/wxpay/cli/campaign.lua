--- `wxpay campaign run`, `campaign terminate` and `campaign status`: authorise one stock to
-- (or end it for) every partner of a plan, concurrently, resumably.
--
-- A campaign is identified by `--campaign ID`, or else by its business type and stock. Each
-- partner's Idempotency-Key is derived from the campaign and the partner (a SHA-256), so a
-- re-send after a crash is a replay WeChat Pay answers with the original result. Each partner
-- is marked `sending` in the journal when its request leaves (`client.concurrent`'s
-- `on_send`, after its --qps slot) and `done`/`failed` as soon as the answer is in; a rerun
-- sends again only what is `pending`, `sending` (answer never recorded) or failed in a way a
-- retry may fix. Before the first request the stock is read (it must exist as that business
-- type), and a streak of `max_errors` identical non-retryable errors stops the run.
-- @module wxpay.cli.campaign

local core = require("wxpay.core")
local journal_mod = require("wxpay.cli.journal")
local output = require("wxpay.cli.output")
local plan = require("wxpay.cli.plan")
local stocks = require("wxpay.cli.stocks")

local M = {}

local BUSINESS_TYPES = { FAVOR_STOCK = true, BUSIFAVOR_STOCK = true }

--- The deterministic Idempotency-Key of a partner in a campaign (48 characters).
function M.idempotency_key(campaign, partner_type, partner_id)
  return "wxc" .. core.sha256_hex(campaign .. "\n" .. partner_type .. "\n" .. partner_id):sub(1, 45)
end

--- Read a plan (`wxpay.cli.plan.read`).
M.read_plan = plan.read

-- What each command sends per partner, and the journal's state of the relation once done.
local ACTIONS = {
  run = { call = "build", path = "/v3/marketing/partnerships/build", relation_state = "ESTABLISHED" },
  terminate = { call = "terminate", path = "/v3/marketing/partnerships/terminate", relation_state = "TERMINATED" },
}

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

--- Whether an API error says the relation has already ended (`INVALID_REQUEST` with 已终止).
function M.already_terminated(err)
  return type(err) == "table" and err.kind == "api" and err.code == "INVALID_REQUEST"
    and tostring(err.message or ""):find("已终止", 1, true) ~= nil
end

--- Confirm a suspected duplicate: list the stock's partnerships for that partner and look
-- for one in `state` (default `ESTABLISHED`). Matching a message's text is a guess; the
-- listing is the fact.
-- @treturn boolean
function M.confirm_established(client, partner, authorized_data, state)
  local page = client.partnerships.page{ authorized_data = authorized_data, partner = partner, limit = 50 }
  local id = partner.appid or partner.merchant_id
  for _, rel in ipairs(page and type(page.data) == "table" and page.data or {}) do
    local p = type(rel.partner) == "table" and rel.partner or {}
    if (p.appid or p.merchant_id) == id and rel.state == (state or "ESTABLISHED") then return true end
  end
  return false
end

-- The journal outcome of one build or terminate call.
local function outcome_of(r, partner, rel, err, meta)
  local want = r.action.relation_state
  if rel then
    return { state = "done", attempts = meta.attempts, request_id = meta.request_id,
             relation_state = rel.state or want }
  end
  local already = want == "ESTABLISHED" and M.already_exists(err) or M.already_terminated(err)
  if already and M.confirm_established(r.client, partner, r.authorized_data, want) then
    -- Done before this campaign's key was used (e.g. by hand): the goal is met.
    return { state = "done", attempts = err.attempts, request_id = err.request_id,
             relation_state = want,
             error_code = want == "ESTABLISHED" and "ALREADY_ESTABLISHED" or "ALREADY_TERMINATED" }
  end
  return { state = "failed", attempts = err.attempts, retryable = err.retryable and true or false,
           error_code = err.code, error_message = err.message, request_id = err.request_id }
end

local function partner_of(p)
  return p.partner_type == "APPID" and { type = "APPID", appid = p.partner_id }
         or { type = "MERCHANT", merchant_id = p.partner_id }
end

-- A streak of identical non-retryable failures (same code and message) says the campaign,
-- not the partners, is wrong: at `max_errors` in a row the run stops.
local function count_streak(r, p, outcome)
  if outcome.state ~= "failed" or outcome.retryable then r.streak = { n = 0, partners = {} }; return end
  local key = tostring(outcome.error_code) .. "\n" .. tostring(outcome.error_message)
  if r.streak.key ~= key then r.streak = { key = key, n = 0, partners = {}, outcome = outcome } end
  r.streak.n = r.streak.n + 1
  r.streak.partners[#r.streak.partners + 1] = p
  if r.streak.n >= r.max_errors and not r.stopped then r.stopped, r.stop = r.streak, true end
end

-- One task per partner. Once `r.stop` is set (Ctrl-C, a journal failure, an error streak)
-- or a SIGTERM arrived, tasks not yet started send nothing: they end as "skipped" and their
-- partners keep their state. `sending` is journaled by `on_send`, when the request leaves.
local function partner_task(r, p)
  return function()
    if r.stop or core.signal_pending() then r.ended_ok = r.ended_ok + 1; return "skipped" end
    local rel, err, meta = r.client.partnerships[r.action.call]({ partner = partner_of(p),
      authorized_data = r.authorized_data }, { idempotency_key = p.idempotency_key,
      on_request = r.figures.on_request })
    -- Held back by on_send (the run stopped while it waited for its --qps slot): never sent.
    if err and err.not_sent then r.ended_ok = r.ended_ok + 1; return "skipped" end
    local outcome = outcome_of(r, partner_of(p), rel, err, meta)
    if p.state == "failed" then r.errors = r.errors - 1 end
    if outcome.state == "failed" then r.errors = r.errors + 1 end
    r.journal:outcome(r.campaign, p, outcome, core.time())
    count_streak(r, p, outcome)
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
  local marked = {}
  local ok, results = pcall(r.client.concurrent, tasks, { concurrency = o.concurrency, qps = o.qps,
    on_send = function(i)
      if r.stop or core.signal_pending() then return false end -- stopped: send nothing more
      if not marked[i] then marked[i] = true; r.journal:sending(r.campaign, todo[i], core.time()) end
    end,
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
    if res[1] == nil and res.n == 2 and not (type(res[2]) == "table" and res[2].not_sent) then
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
    if o.action == ACTIONS.terminate then
      o.err:write("wxpay: campaign terminate needs --stock, not --create-stock\n")
      return nil, 2
    end
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
  if o.action == ACTIONS.terminate then campaign = campaign .. "/terminate" end
  for _, p in ipairs(partners) do p.idempotency_key = M.idempotency_key(campaign, p.type, p.id) end
  return partners, campaign
end

local PRODUCT_OF = { FAVOR_STOCK = "favor", BUSIFAVOR_STOCK = "busifavor" }
local NAMES = { FAVOR_STOCK = "代金券", BUSIFAVOR_STOCK = "商家券" }

--- Check, before the first grant, that the stock exists and is of `business_type` (the
-- product's own query: `favor.stocks.get` or `busifavor.stocks.get`).
-- @return true, or nil and a message (which says the other type when the stock is one)
function M.check_stock(client, stock_id, business_type)
  local s, err = client[PRODUCT_OF[business_type]].stocks.get(stock_id)
  if s then return true end
  if err.kind ~= "api" or (err.status ~= 404 and err.code ~= "RESOURCE_NOT_EXISTS") then
    return nil, string.format("cannot check stock %s: %s; nothing sent", stock_id, output.message(err))
  end
  local other = business_type == "FAVOR_STOCK" and "BUSIFAVOR_STOCK" or "FAVOR_STOCK"
  local hint = "check --stock"
  if client[PRODUCT_OF[other]].stocks.get(stock_id) then
    hint = "it is a " .. other .. ": give --business-type " .. other
  end
  return nil, string.format("stock %s is not a %s (%s) of this merchant (%s %s); %s; nothing sent", stock_id,
    business_type, NAMES[business_type], tostring(err.code), tostring(err.message), hint)
end

-- The stock check with the real client, when the stock is given (not created).
local function stock_ok(o, client)
  if o.create_stock then return true end
  local ok, cerr = M.check_stock(client, o.stock, o.business_type)
  if not ok then o.err:write("wxpay: ", cerr, "\n") end
  return ok
end

--- `--dry-run`: check the stock (one query), every row of the plan with the library's own
-- validation (as the real run does) and the config, print what would be sent and how long
-- it would take at --qps; send no write and write no journal.
-- @treturn int exit status (1 when the stock, a row or the config is refused)
function M.dry_run(o, partners, campaign)
  local client, cerr = require("wxpay").new(o.config)
  if not client then o.err:write("wxpay: ", output.message(cerr), "\n"); return 1 end
  local bad_stock = not stock_ok(o, client)
  if o.stock_params then
    -- Through a transport that sends nothing: the library checks the fields before that.
    local c = {}
    for k, v in pairs(o.config) do c[k] = v end
    c.max_retries, c.transport = 0, { request = function()
      return nil, require("wxpay.transport").error("network", "dry run: not sent", false) end }
    local dry = assert(require("wxpay").new(c))
    local _, err = stocks.create_stock(dry, o.product, o.stock_params, o.stock_params.out_request_no or "DRYRUN")
    dry.close()
    if err and err.kind == "invalid_argument" then
      bad_stock = true
      o.err:write("wxpay: ", o.create_stock, ": ", output.message(err), "\n")
    end
  end
  local good, bad = plan.check_rows(client, o, partners)
  client.close()
  local rows = {}
  for i, p in ipairs(good) do
    rows[i] = { partner_type = p.type, partner_id = p.id, idempotency_key = p.idempotency_key }
  end
  o.out:write(output.table(rows, { "partner_type", "partner_id", "idempotency_key" }))
  local pace = o.qps and string.format("about %s at --qps %s", output.duration(#rows / o.qps), output.number(o.qps))
               or "no --qps limit: as fast as --concurrency and the API allow"
  o.out:write(string.format("dry run of campaign %s: would send %d %s requests (POST %s) for %s %s to %s; "
    .. "%s; nothing sent%s\n", campaign, #rows, o.action.call, o.action.path, o.business_type,
    o.stock or ("a new stock from " .. o.create_stock),
    o.host or "?", pace, o.create_stock and "" or " (only the stock was read)"))
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

-- After an error streak stopped the run: its partners are journaled as worth retrying, so
-- the same command, run again once the cause is fixed, sends them again.
local function stopped_by_streak(o, r, counts)
  local again = {}
  for i, p in ipairs(r.stopped.partners) do
    again[i] = { partner_type = p.partner_type, partner_id = p.partner_id,
                 idempotency_key = "wxc" .. core.sha256_hex(p.idempotency_key .. "\nagain"):sub(1, 45) }
  end
  r.journal:retry_later(r.campaign, again, core.time())
  local e = r.stopped.outcome
  o.err:write(string.format("\nwxpay: stopped after %d identical errors in a row (--max-errors %d): %s %s; "
    .. "%d/%d done. The cause is likely the campaign (stock, business type, budget, permissions), not the "
    .. "partners: fix it and run the same command again to resume (the %d partners of the streak are sent "
    .. "again, nothing done is repeated)\n", r.stopped.n, r.max_errors, tostring(e.error_code),
    tostring(e.error_message), counts.done, counts.total, #r.stopped.partners))
  return 1
end

-- Ends a run: the summary line, the exit status.
local function finish(o, r, counts)
  if r.stopped then return stopped_by_streak(o, r, counts) end
  r.progress.finish(counts.done + counts.failed, counts.failed)
  o.out:write(string.format("campaign %s: %d partners, %d done, %d failed, %d not finished\n", r.campaign,
    counts.total, counts.done, counts.failed, counts.pending + counts.sending))
  o.out:write(output.figures(r.figures.summary()))
  return (counts.done == counts.total) and 0 or 1
end

-- Checks the rows (exactly as --dry-run does) and the stock, then opens the journal (its
-- lock held until the end); returns the journal, or nil and a status.
local function open_checked(o, partners)
  local _, bad = plan.check_rows(o.client, o, partners)
  if bad > 0 then
    o.err:write(string.format("wxpay: %d row%s of the plan refused; nothing sent\n", bad, bad == 1 and "" or "s"))
    return nil, 1
  end
  if not stock_ok(o, o.client) then return nil, 1 end
  local journal, jerr = journal_mod.open(o.journal, { lock = true })
  if not journal then o.err:write("wxpay: ", jerr, "\n"); return nil, 1 end
  return journal
end

local function execute(o)
  local partners, campaign = prepare(o)
  if not partners then return campaign end
  if o.dry_run then return M.dry_run(o, partners, campaign) end
  local journal, jstatus = open_checked(o, partners)
  if not journal then return jstatus end
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
    errors = counts.failed, ended_ok = 0, authorized_data = { business_type = o.business_type, stock_id = o.stock },
    figures = require("wxpay.metrics").recorder(),
    action = o.action, max_errors = o.max_errors or 20, streak = { n = 0, partners = {} } }
  r.progress = o.no_progress and { update = function() end, finish = function() end }
    or output.progress{ total = counts.total, start = r.done, tty = o.tty == nil and is_tty() or o.tty,
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
  local status = finish(o, r, counts)
  journal:close()
  return status
end

--- Run a campaign: authorise the stock to every partner of the plan.
-- @tparam table o `plan`, `stock`, `business_type`, `campaign`, `concurrency`, `qps`,
--   `max_errors` (default 20), `journal`, `client`, `config`, `out` (stdout), `err`
--   (stderr), `tty` (nil: detect), `dry_run`, `host`; `create_stock` and `product`
-- @treturn int exit status (0: every partner done; 130: Ctrl-C; 143: SIGTERM)
function M.run(o)
  o.action = ACTIONS.run
  return execute(o)
end

--- End the stock's partnership with every partner of the plan (`campaign terminate`): the
-- same journal, checks and manners as `run`, as a campaign of its own (`ID/terminate`).
-- @tparam table o as `run`, without `create_stock`
-- @treturn int exit status
function M.terminate(o)
  o.action = ACTIONS.terminate
  return execute(o)
end

--- Report on a journal (`wxpay.cli.campaign_status`).
M.status = function(o) return require("wxpay.cli.campaign_status").status(o) end

return M
