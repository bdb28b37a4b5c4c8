--- Rows of a downloaded reconciliation file (the 代金券 use-flow and refund-flow files):
-- comma-separated text, the first line naming the columns. WeChat Pay's bill files prefix
-- each value with a backtick (so spreadsheets keep long numbers as text) and may quote
-- values; both are undone here. One line is in memory at a time.
--
--     for row in wxpay.flow.rows("/tmp/flow.csv") do print(row["批次id"], row[2]) end
-- @module wxpay.flow

local M = {}

-- Undo the backtick prefix and surrounding spaces of one value.
local function clean(v)
  local first = v:byte(1)
  if first == 96 and not v:find("%s", 2) then return v:sub(2) end -- the usual "`value"
  if first ~= 96 and not v:find("^%s") and not v:find("%s$") then return v end
  return (v:match("^%s*`?%s*(.-)%s*$"))
end

--- Split one line into its values (RFC 4180 quoting: `"a,b"`, `""` for a quote).
-- @tparam string line without its line break
-- @treturn table the values, cleaned
function M.parse_line(line)
  local out, i, n = {}, 1, #line
  while i <= n + 1 do
    local c = line:sub(i, i)
    if c == '"' then
      local buf, j = {}, i + 1
      while j <= n do
        local ch = line:sub(j, j)
        if ch == '"' and line:sub(j + 1, j + 1) == '"' then buf[#buf + 1] = '"'; j = j + 2
        elseif ch == '"' then j = j + 1; break
        else buf[#buf + 1] = ch; j = j + 1 end
      end
      local rest_end = line:find(",", j, true) or n + 1
      out[#out + 1] = clean(table.concat(buf) .. line:sub(j, rest_end - 1))
      i = rest_end + 1
    else
      local e = line:find(",", i, true) or n + 1
      out[#out + 1] = clean(line:sub(i, e - 1))
      i = e + 1
    end
  end
  return out
end

--- The rows of the file at `path`, lazily: each row holds its values by position
-- (`row[1]`) and by column name (`row["批次id"]`). Blank lines are skipped; a byte-order
-- mark on the first line is dropped. Like `io.lines`, an unreadable file raises.
-- @tparam string path
-- @treturn function iterator
function M.rows(path)
  local f = assert(io.open(path, "rb"))
  local header
  return function()
    while true do
      local line = f:read("*l")
      if line == nil then f:close(); return nil end
      line = line:gsub("\r$", "")
      if not header then line = line:gsub("^\239\187\191", "") end
      if line:find("%S") then
        local values = M.parse_line(line)
        if not header then
          header = values
        else
          for i, name in ipairs(header) do
            if name ~= "" and values[i] ~= nil then values[name] = values[i] end
          end
          return values
        end
      end
    end
  end
end

return M
