--- `wxpay stocks create|get|budget|list`: the coupon stocks of 商家券 (`--product busifavor`)
-- and 代金券 (`--product favor`), through `client.busifavor` and `client.favor`.
-- @module wxpay.cli.stocks

local core = require("wxpay.core")
local output = require("wxpay.cli.output")

local M = {}

--- The partnerships business type of each product.
M.PRODUCTS = { busifavor = "BUSIFAVOR_STOCK", favor = "FAVOR_STOCK" }

-- JSON numbers decode as floats on Lua 5.3+; integral ones go back to integers so that
-- fen and counts are sent as `100`, not `100.0`, and pass the integer checks. A JSON null
-- is refused, naming the field: WeChat Pay takes absent fields, never null.
local function integral(v, field)
  if type(v) == "number" and v == math.floor(v) and math.abs(v) < 2 ^ 53 then return math.floor(v) end
  if type(v) == "userdata" then return nil, (field or "the file") .. " is null (leave absent fields out)" end
  if type(v) ~= "table" then return v end
  for k, x in pairs(v) do
    local y, err = integral(x, (field and field .. "." or "") .. tostring(k))
    if y == nil then return nil, err end
    v[k] = y
  end
  return v
end

--- Read a stock's creation parameters (the fields of `stocks.create`) from a JSON file.
-- @return params table, or nil and a message
function M.read_params(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, "cannot read " .. path .. ": " .. tostring(err) end
  local text = f:read("*a")
  f:close()
  local ok, obj = pcall(require("cjson").new().decode, text)
  if not ok or type(obj) ~= "table" or obj[1] ~= nil then return nil, path .. " is not a JSON object" end
  local params, nerr = integral(obj)
  if not params then return nil, path .. ": " .. nerr end
  return params
end

--- A fresh request number: 32 letters and digits, as the library generates them.
-- @return the number, or nil and a message
function M.new_request_no()
  local no, why = core.nonce(32)
  if not no then return nil, "no random source for a request number: " .. tostring(why) end
  return no
end

--- Create a stock with the request number `no`.
-- @return data, err, meta as `client.<product>.stocks.create`
function M.create_stock(client, product, params, no)
  local p = {}
  for k, v in pairs(params) do p[k] = v end
  p.out_request_no = no
  return client[product].stocks.create(p)
end

local CREATED = { "stock_id", "out_request_no", "create_time" }

local function create(pos, o)
  if not pos[3] then o.err:write("wxpay: stocks create needs FILE.json\n"); return 2 end
  local params, perr = M.read_params(pos[3])
  if not params then o.err:write("wxpay: ", perr, "\n"); return 1 end
  local no = o.out_request_no or params.out_request_no
  if no == nil then
    local gerr
    no, gerr = M.new_request_no()
    if not no then o.err:write("wxpay: ", gerr, "\n"); return 1 end
    -- Said before the call: if the answer is lost, the same number repeats the request.
    o.err:write("wxpay: out_request_no ", no, " (give --out-request-no ", no, " to repeat this request)\n")
  end
  local data, err, meta = M.create_stock(o.client, o.product, params, no)
  if not data then
    o.err:write("wxpay: ", output.message(err), "\n")
    if err.kind ~= "invalid_argument" then
      o.err:write("wxpay: run again with --out-request-no ", tostring(no), " to repeat the same request\n")
    end
    return 1
  end
  local row = { stock_id = data.stock_id, out_request_no = meta.out_request_no or no, create_time = data.create_time }
  -- One stock: JSON prints it as one object, not a one-element array.
  o.out:write(o.format == "json" and output.json(row) or output.render({ row }, CREATED, o.format))
  return 0
end

-- One stock as a flat row (its nested rules differ by product).
local function stock_row(product, s)
  if product == "busifavor" then
    local rule = type(s.stock_send_rule) == "table" and s.stock_send_rule or {}
    local sent = type(s.send_count_information) == "table" and s.send_count_information or {}
    return { stock_id = s.stock_id, stock_name = s.stock_name, state = s.stock_state, stock_type = s.stock_type,
             max_coupons = rule.max_coupons, max_coupons_by_day = rule.max_coupons_by_day,
             sent = sent.total_send_num }
  end
  local rule = type(s.stock_use_rule) == "table" and s.stock_use_rule or {}
  return { stock_id = s.stock_id, stock_name = s.stock_name, state = s.status, stock_type = s.stock_type,
           max_coupons = rule.max_coupons, sent = s.distributed_coupons,
           available_begin_time = s.available_begin_time, available_end_time = s.available_end_time,
           create_time = s.create_time }
end

local COLUMNS = {
  busifavor = { "stock_id", "stock_name", "state", "stock_type", "max_coupons", "max_coupons_by_day", "sent" },
  favor = { "stock_id", "stock_name", "state", "stock_type", "max_coupons", "sent", "available_begin_time",
            "available_end_time", "create_time" },
}

-- Rows as `format`: JSON gets the stocks as the API answered them, the others flat rows.
local function render_stocks(o, stocks)
  if o.format == "json" then
    return output.json(setmetatable(stocks, { __jsontype = "array" }))
  end
  local rows = {}
  for i, s in ipairs(stocks) do rows[i] = stock_row(o.product, s) end
  return output.render(rows, COLUMNS[o.product], o.format)
end

local function get(pos, o)
  if not pos[3] then o.err:write("wxpay: stocks get needs STOCK_ID\n"); return 2 end
  local s, err = o.client[o.product].stocks.get(pos[3])
  if not s then o.err:write("wxpay: ", output.message(err), "\n"); return 1 end
  o.out:write(o.format == "json" and output.json(s) or render_stocks(o, { s }))
  return 0
end

-- The compare-and-set pairs of B4: option, the stock's current value, the request fields.
local BUDGET = {
  { opt = "max_coupons", target = "target_max_coupons", current = "current_max_coupons" },
  { opt = "max_coupons_by_day", target = "target_max_coupons_by_day", current = "current_max_coupons_by_day" },
}

-- The budget changes asked for, with their current values (read from the stock when not
-- given); returns the list, or nil, a message and a status.
local function budget_changes(pos, o)
  local changes, stock = {}, nil
  for _, b in ipairs(BUDGET) do
    if o[b.opt] then
      local current = o["current_" .. b.opt]
      if current == nil then
        if not stock then
          local err
          stock, err = o.client.busifavor.stocks.get(pos[3])
          if not stock then return nil, output.message(err), 1 end
        end
        current = type(stock.stock_send_rule) == "table" and stock.stock_send_rule[b.opt] or nil
        if current == nil then
          return nil, "stock " .. pos[3] .. " has no " .. b.opt .. ": give --current-" .. b.opt:gsub("_", "-"), 1
        end
      end
      changes[#changes + 1] = { b = b, target = o[b.opt], current = current }
    end
  end
  if #changes == 0 then return nil, "stocks budget needs --max-coupons N or --max-coupons-by-day N", 2 end
  if #changes > 1 and o.out_request_no then
    return nil, "--out-request-no repeats one change: give --max-coupons or --max-coupons-by-day, not both", 2
  end
  return changes
end

local BUDGET_COLUMNS = { "stock_id", "field", "current", "target", "max_coupons", "max_coupons_by_day",
  "modify_budget_request_no" }

local function budget(pos, o)
  if o.product ~= "busifavor" then
    o.err:write("wxpay: stocks budget is for --product busifavor only: a 代金券 budget cannot be changed by API "
      .. "(the merchant platform does it)\n")
    return 2
  end
  if not pos[3] then o.err:write("wxpay: stocks budget needs STOCK_ID\n"); return 2 end
  local changes, cerr, status = budget_changes(pos, o)
  if not changes then o.err:write("wxpay: ", cerr, "\n"); return status end
  local rows = {}
  for _, c in ipairs(changes) do
    local no = o.out_request_no or M.new_request_no()
    local data, err = o.client.busifavor.stocks.update_budget(pos[3], { [c.b.target] = c.target,
      [c.b.current] = c.current, modify_budget_request_no = no })
    if not data then
      o.err:write("wxpay: ", c.b.opt, ": ", output.message(err), "\n")
      if err.kind ~= "invalid_argument" then
        o.err:write("wxpay: repeat with --out-request-no ", tostring(no), "; if the current value changed, "
          .. "run again without it\n")
      end
      return 1
    end
    rows[#rows + 1] = { stock_id = pos[3], field = c.b.opt, current = c.current, target = c.target,
      max_coupons = data.max_coupons, max_coupons_by_day = data.max_coupons_by_day, modify_budget_request_no = no }
  end
  o.out:write(output.render(rows, BUDGET_COLUMNS, o.format))
  return 0
end

local function list(_, o)
  if o.product ~= "favor" then
    o.err:write("wxpay: 商家券 (busifavor) has no list endpoint: use `wxpay stocks get --product busifavor "
      .. "STOCK_ID`\n")
    return 2
  end
  if o.limit and o.limit > 10 then
    o.err:write("wxpay: --limit must be an integer from 1 to 10 for 代金券 stocks\n")
    return 2
  end
  local stocks = {}
  local ok, err = pcall(function()
    for s in o.client.favor.stocks.list{ status = o.status, create_start_time = o.create_start_time,
                                         create_end_time = o.create_end_time, limit = o.limit } do
      stocks[#stocks + 1] = s
      if o.max and #stocks >= o.max then break end
    end
  end)
  if not ok then o.err:write("wxpay: ", output.message(err), "\n"); return 1 end
  o.out:write(render_stocks(o, stocks))
  return 0
end

local COMMANDS = { create = create, get = get, budget = budget, list = list }

--- Run one subcommand.
-- @tparam table pos the positional words (`stocks`, the subcommand, its argument)
-- @tparam table o `product`, `format`, `client`, `out`, `err` and the subcommand's options
--   (`out_request_no`, `max_coupons`, `max_coupons_by_day`, `current_max_coupons`,
--   `current_max_coupons_by_day`, `status`, `create_start_time`, `create_end_time`, `limit`, `max`)
-- @treturn int exit status
function M.run(pos, o)
  return COMMANDS[pos[2]](pos, o)
end

--- Whether `pos`/`opts` name a valid stocks subcommand and product; a usage message if not.
function M.usage_error(pos, opts)
  if not COMMANDS[pos[2] or ""] then return "stocks needs create, get, budget or list" end
  if not M.PRODUCTS[opts.product or ""] then return "--product must be busifavor or favor" end
end

return M
