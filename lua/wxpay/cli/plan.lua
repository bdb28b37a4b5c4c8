--- A campaign's plan: reading PLAN.csv, and checking its rows with the library's own
-- validation (shared by `--dry-run` and the real run, so both refuse the same rows).
-- @module wxpay.cli.plan

local output = require("wxpay.cli.output")

local M = {}

-- Separators a spreadsheet may have used instead of the comma (a European locale's `;`).
local OTHER_SEPARATORS = { { ";", "semicolons" }, { "\t", "tabs" }, { "|", "bars" } }

local function show(s)
  s = s:gsub("[%z\1-\31\127]", function(c) return c == "\t" and "\\t" or string.format("\\x%02x", c:byte()) end)
  return #s > 120 and s:sub(1, 117) .. "..." or s
end

-- Why the header row has no partner column: the header read and, when another separator
-- would have found one, which.
local function no_column(path, header, first_line)
  local msg = string.format("plan %s has no appid or merchant_id column in its header row (read %d column%s: "
    .. "%s)", path, #header, #header == 1 and "" or "s", show(first_line))
  for _, sep in ipairs(OTHER_SEPARATORS) do
    for name in (first_line .. sep[1]):gmatch("([^" .. sep[1] .. "]*)" .. sep[1]) do
      local n = name:lower():gsub('^[%s"]+', ""):gsub('[%s"]+$', "")
      if n == "appid" or n == "merchant_id" then
        return msg .. "; it looks separated by " .. sep[2] .. ": save it as CSV with commas"
      end
    end
  end
  return msg
end

--- Read a plan: CSV with a header row and an `appid` or a `merchant_id` column.
-- @return array of `{ type, id, row }` (duplicates dropped), or nil and an error
function M.read(path)
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
  if not col then return nil, no_column(path, header, text:match("^[^\r\n]*")) end
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

--- The partner object of a plan row.
function M.partner(p)
  return p.type == "APPID" and { type = "APPID", appid = p.id } or { type = "MERCHANT", merchant_id = p.id }
end

--- Check every row as the campaign's call would (`client.partnerships.check`: the build's
-- and terminate's own validation; nothing is sent). Refused rows are named on `o.err`.
-- @tparam table client a client
-- @tparam table o `business_type`, `stock`, `plan`, `err`
-- @tparam table partners from `read`, each with its `idempotency_key`
-- @treturn table the rows that pass
-- @treturn int how many were refused
function M.check_rows(client, o, partners)
  local ad, good, bad = { business_type = o.business_type, stock_id = o.stock or "NEW" }, {}, 0
  for _, p in ipairs(partners) do
    local ok, err = client.partnerships.check({ partner = M.partner(p), authorized_data = ad },
      { idempotency_key = p.idempotency_key })
    if ok then
      good[#good + 1] = p
    else
      bad = bad + 1
      o.err:write("wxpay: ", o.plan, " row ", p.row, ": ", output.message(err), "\n")
    end
  end
  return good, bad
end

return M
