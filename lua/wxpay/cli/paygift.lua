--- `wxpay paygift create|get|list|terminate|merchants`: 支付有礼 activities through
-- `client.paygift`. The writes can be journaled (`--journal FILE.db`, the campaign journal's
-- SQLite file): the request number is committed before the call and the outcome after it,
-- so running the same command again repeats the same request (one activity, one change) or
-- reports what the journal already holds.
-- @module wxpay.cli.paygift

local core = require("wxpay.core")
local output = require("wxpay.cli.output")
local stocks = require("wxpay.cli.stocks")

local M = {}

local function fail(o, err, no, flag)
  o.err:write("wxpay: ", output.message(err), "\n")
  if no and err.kind ~= "invalid_argument" then
    o.err:write("wxpay: run again with ", flag, " ", tostring(no), " to repeat the same request\n")
  end
  return 1
end

local function sha(value)
  return core.sha256_hex(require("wxpay.client").encode_json(value))
end

-- Run `send(no)` for the step `key` of the journal (when --journal is given). Returns
-- `"journaled", step` when the journal says it is done, else what `send` returns and the
-- number used. `result(data)` is what the journal keeps of a success.
local function journaled(o, key, no, send, result)
  if not o.journal then return send(no) end
  local j, jerr = require("wxpay.cli.journal").open(o.journal)
  if not j then return nil, { kind = "config", message = jerr } end
  local step = j:stock_step(key)
  if step and step.stock_id then j:close(); return "journaled", step end
  no = step and step.out_request_no or no
  if not step then j:begin_stock_step(key, "paygift", no, key:match("%S+$"), core.time()) end
  local ok, data, err, meta = pcall(send, no)
  if ok and data then j:stock_created(key, result(data), core.time()) end
  if ok and not data and err.kind == "invalid_argument" then j:forget_stock_step(key) end
  j:close()
  if not ok then error(data, 0) end
  return data, err, meta, no
end

-- A request number: the option's, or a fresh one announced before the call.
local function request_no(o, given, flag)
  if given then return given end
  local no, gerr = stocks.new_request_no()
  if not no then return nil, gerr end
  if not o.journal then
    o.err:write("wxpay: request number ", no, " (give ", flag, " ", no, " to repeat this request)\n")
  end
  return no
end

local CREATED = { "activity_id", "out_request_no", "create_time" }

local function create(pos, o)
  if not pos[3] then o.err:write("wxpay: paygift create needs FILE.json\n"); return 2 end
  local params, perr = stocks.read_params(pos[3])
  if not params then o.err:write("wxpay: ", perr, "\n"); return 1 end
  local base = type(params.activity_base_info) == "table" and params.activity_base_info or {}
  local given = o.out_request_no or base.out_request_no
  base.out_request_no = nil
  local no, nerr = request_no(o, given, "--out-request-no")
  if not no then o.err:write("wxpay: ", nerr, "\n"); return 1 end
  local data, err, meta, used = journaled(o, "paygift create " .. sha(params), no, function(n)
    base.out_request_no = n
    return o.client.paygift.create(params)
  end, function(d) return d.activity_id end)
  if data == "journaled" then
    o.err:write("wxpay: already created (", o.journal, ")\n")
    data, meta = { activity_id = err.stock_id }, { out_request_no = err.out_request_no }
  elseif not data then
    return fail(o, err, used or no, "--out-request-no")
  end
  o.out:write(output.one({ activity_id = data.activity_id, out_request_no = meta.out_request_no,
    create_time = data.create_time }, CREATED, o.format))
  return 0
end

local COLUMNS = { "activity_id", "activity_name", "activity_status", "begin_time", "end_time",
  "transaction_amount_minimum", "creator_merchant_id" }

-- An activity as a flat row (the rule is wrapped in `full_send_rule` in answers).
local function row(a)
  local base = type(a.activity_base_info) == "table" and a.activity_base_info or {}
  local rule = type(a.award_send_rule) == "table" and a.award_send_rule or {}
  rule = rule.full_send_rule or rule.specific_send_rule or rule
  return { activity_id = a.activity_id, activity_name = base.activity_name, activity_status = a.activity_status,
    begin_time = base.begin_time, end_time = base.end_time,
    transaction_amount_minimum = rule.transaction_amount_minimum, creator_merchant_id = a.creator_merchant_id }
end

local function render(o, items, columns, to_row)
  if o.format == "json" then return output.json(setmetatable(items, { __jsontype = "array" })) end
  local rows = {}
  for i, a in ipairs(items) do rows[i] = to_row and to_row(a) or a end
  return output.render(rows, columns, o.format)
end

local function get(pos, o)
  if not pos[3] then o.err:write("wxpay: paygift get needs ACTIVITY_ID\n"); return 2 end
  local a, err = o.client.paygift.get(pos[3])
  if not a then return fail(o, err) end
  o.out:write(o.format == "json" and output.json(a) or render(o, { a }, COLUMNS, row))
  return 0
end

-- Collect an iterator's items (up to --max); returns the list, or nil and the error.
local function collect(o, iter_fn)
  local items = {}
  local ok, err = pcall(function()
    for item in iter_fn() do
      items[#items + 1] = item
      if o.max and #items >= o.max then break end
    end
  end)
  if not ok then return nil, err end
  return items
end

local function list(_, o)
  local items, err = collect(o, function()
    return o.client.paygift.list{ activity_status = o.status, activity_name = o.activity_name, limit = o.limit }
  end)
  if not items then return fail(o, err) end
  o.out:write(render(o, items, COLUMNS, row))
  return 0
end

local function terminate(pos, o)
  if not pos[3] then o.err:write("wxpay: paygift terminate needs ACTIVITY_ID\n"); return 2 end
  local data, err = journaled(o, "paygift terminate " .. pos[3], "-", function()
    return o.client.paygift.terminate(pos[3])
  end, function(d) return d.terminate_time or "terminated" end)
  if data == "journaled" then
    data = { activity_id = pos[3], terminate_time = err.stock_id }
  elseif not data then
    return fail(o, err)
  end
  o.out:write(output.one({ activity_id = data.activity_id, terminate_time = data.terminate_time },
    { "activity_id", "terminate_time" }, o.format))
  return 0
end

local MERCHANT_COLUMNS = { "activity_id", "mchid", "outcome", "reason", "request_no" }

-- `merchants add|delete ACTIVITY_ID MCHID[,MCHID…]`: one row per merchant.
local function merchants_write(pos, o, verb)
  if not pos[4] or not pos[5] then
    o.err:write("wxpay: paygift merchants ", verb, " needs ACTIVITY_ID and MCHID[,MCHID…]\n")
    return 2
  end
  local ids = {}
  for id in pos[5]:gmatch("[^,%s]+") do ids[#ids + 1] = id end
  local no, nerr = request_no(o, o.request_no, "--request-no")
  if not no then o.err:write("wxpay: ", nerr, "\n"); return 1 end
  local name, field = verb .. "_merchants", verb .. "_request_no"
  local key = "paygift merchants " .. verb .. " " .. pos[4] .. " " .. sha(ids)
  local data, err, _, used = journaled(o, key, no, function(n)
    return o.client.paygift[name](pos[4], { merchant_id_list = ids, [field] = n })
  end, function(d) return d.add_time or d.delete_time or "done" end)
  if data == "journaled" then
    o.err:write("wxpay: already done (", o.journal, ")\n")
    used, data = err.out_request_no, {}
  elseif not data then
    return fail(o, err, used or no, "--request-no")
  end
  local refused = {}
  for _, r in ipairs(data.invalid_merchant_id_list or {}) do refused[r.mchid] = r.invalid_reason end
  local rows = {}
  for i, id in ipairs(ids) do
    local outcome = refused[id] and "refused" or (verb == "add" and "added" or "deleted")
    rows[i] = { activity_id = pos[4], mchid = id, outcome = outcome, reason = refused[id], request_no = used or no }
  end
  o.out:write(output.render(rows, MERCHANT_COLUMNS, o.format))
  return 0
end

local function merchants(pos, o)
  local verb = pos[3]
  if verb == "add" or verb == "delete" then return merchants_write(pos, o, verb) end
  if verb ~= "list" or not pos[4] then
    o.err:write("wxpay: paygift merchants needs list|add|delete ACTIVITY_ID\n")
    return 2
  end
  local items, err = collect(o, function() return o.client.paygift.merchants(pos[4], { limit = o.limit }) end)
  if not items then return fail(o, err) end
  o.out:write(render(o, items, { "mchid", "merchant_name", "create_time", "update_time" }))
  return 0
end

local COMMANDS = { create = create, get = get, list = list, terminate = terminate, merchants = merchants }

--- Run one subcommand.
-- @tparam table pos the positional words (`paygift`, the subcommand, its arguments)
-- @tparam table o `client`, `format`, `out`, `err`, and `out_request_no`, `request_no`,
--   `journal`, `status`, `activity_name`, `limit`, `max`
-- @treturn int exit status
function M.run(pos, o)
  local run = COMMANDS[pos[2] or ""]
  if not run then
    o.err:write("wxpay: paygift needs create, get, list, terminate or merchants\n")
    return 2
  end
  return run(pos, o)
end

return M
