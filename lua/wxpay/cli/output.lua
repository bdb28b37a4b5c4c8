--- Output for the `wxpay` command: tables, CSV, JSON and the campaign progress display.
-- @module wxpay.cli.output

local client_mod = require("wxpay.client")

local M = {}

M.FORMATS = { table = true, csv = true, json = true }

-- Integral numbers print as integers: Lua 5.4 decodes JSON numbers as floats (2252.0).
local function cell(v)
  if v == nil then return "" end
  if type(v) == "number" and math.floor(v) == v and math.abs(v) <= 2 ^ 53 then
    return string.format("%d", v)
  end
  return tostring(v)
end

-- East Asian wide and fullwidth code points take two terminal columns (Unicode's UAX #11).
local WIDE = {
  { 0x1100, 0x115F }, { 0x2E80, 0x303E }, { 0x3041, 0x33FF }, { 0x3400, 0x4DBF },
  { 0x4E00, 0x9FFF }, { 0xA000, 0xA4CF }, { 0xAC00, 0xD7A3 }, { 0xF900, 0xFAFF },
  { 0xFE30, 0xFE4F }, { 0xFF00, 0xFF60 }, { 0xFFE0, 0xFFE6 }, { 0x1F300, 0x1F64F },
  { 0x1F900, 0x1F9FF }, { 0x20000, 0x3FFFD },
}

local function code_point(ch)
  local b = { ch:byte(1, -1) }
  if #b == 1 then return b[1] end
  local cp = b[1] % (2 ^ (7 - #b))
  for i = 2, #b do cp = cp * 64 + b[i] % 64 end
  return cp
end

--- Display width of a UTF-8 string: two columns per wide character, one otherwise.
function M.width(s)
  local n = 0
  for ch in s:gmatch("[%z\1-\127\192-\253][\128-\191]*") do
    local cp, w = code_point(ch), 1
    if cp >= 0x1100 then
      for _, r in ipairs(WIDE) do
        if cp >= r[1] and cp <= r[2] then w = 2; break end
      end
    end
    n = n + w
  end
  return n
end
local width = M.width

--- An error as one line of text, without the `wxpay: ` its tostring starts with (the CLI
-- puts its own).
function M.message(err)
  return (tostring(err):gsub("^wxpay: ", ""))
end

--- Render rows as an aligned text table.
-- @tparam table rows array of maps
-- @tparam table columns array of column names (the keys)
-- @treturn string
function M.table(rows, columns)
  local widths = {}
  for i, c in ipairs(columns) do widths[i] = width(c) end
  for _, r in ipairs(rows) do
    for i, c in ipairs(columns) do
      local w = width(cell(r[c]))
      if w > widths[i] then widths[i] = w end
    end
  end
  local function line(values)
    local parts = {}
    for i, v in ipairs(values) do
      parts[i] = v .. string.rep(" ", widths[i] - width(v))
    end
    return (table.concat(parts, "  "):gsub("%s+$", ""))
  end
  local out = { line(columns) }
  local rule = {}
  for i in ipairs(columns) do rule[i] = string.rep("-", widths[i]) end
  out[#out + 1] = line(rule)
  for _, r in ipairs(rows) do
    local values = {}
    for i, c in ipairs(columns) do values[i] = cell(r[c]) end
    out[#out + 1] = line(values)
  end
  return table.concat(out, "\n") .. "\n"
end

-- A text cell a spreadsheet would take for a formula (OWASP "CSV injection": = + - @ first,
-- or a tab or CR before one) gets a leading single quote, shown as text and not evaluated.
-- Numbers stay as they are: a number (-10) or a text that is a plain decimal number ("-10.5")
-- is data to a spreadsheet, never a formula.
local function neutralised(v, s)
  if type(v) == "number" or not s:find("^[=+%-@\t\r]") then return s end
  if s:match("^%-%d+$") or s:match("^%-%d+%.%d+$") then return s end
  return "'" .. s
end

local function csv_field(v)
  local s = neutralised(v, cell(v))
  if s:find('[",\r\n]') or s:match("^%s") or s:match("%s$") then
    s = '"' .. s:gsub('"', '""') .. '"'
  end
  return s
end

--- Render rows as CSV (RFC 4180, CRLF line ends, a header row).
function M.csv(rows, columns)
  local out = {}
  local head = {}
  for i, c in ipairs(columns) do head[i] = csv_field(c) end
  out[1] = table.concat(head, ",")
  for _, r in ipairs(rows) do
    local f = {}
    for i, c in ipairs(columns) do f[i] = csv_field(r[c]) end
    out[#out + 1] = table.concat(f, ",")
  end
  return table.concat(out, "\r\n") .. "\r\n"
end

--- Encode a value as JSON (keys sorted, so output is stable), with a final newline.
function M.json(value)
  return client_mod.encode_json(value) .. "\n"
end

--- Render rows in `format` ("table", "csv" or "json": an array of objects).
function M.render(rows, columns, format)
  if format == "csv" then return M.csv(rows, columns) end
  if format == "json" then
    local arr = setmetatable({}, { __jsontype = "array" })
    for i, r in ipairs(rows) do
      local o = {}
      for _, c in ipairs(columns) do o[c] = r[c] end
      arr[i] = o
    end
    return M.json(arr)
  end
  return M.table(rows, columns)
end

--- Render one thing (a command that returns one stock, relation, activity, URL): with
-- "json" one object of `columns` (not a one-element array), else a one-row table or CSV.
function M.one(row, columns, format)
  if format ~= "json" then return M.render({ row }, columns, format) end
  local o = {}
  for _, c in ipairs(columns) do o[c] = row[c] end
  return M.json(o)
end

--- Parse CSV text (RFC 4180: quotes, doubled quotes, CRLF or LF).
-- @treturn table array of records (arrays of strings), or nil and an error
function M.parse_csv(text)
  local records, record, field = {}, {}, {}
  local i, n, line = 1, #text, 1
  local quoted_field = false
  local function end_field()
    record[#record + 1] = table.concat(field)
    field, quoted_field = {}, false
  end
  local function end_record()
    end_field()
    if not (#record == 1 and record[1] == "") then records[#records + 1] = record end
    record = {}
    line = line + 1
  end
  while i <= n do
    local c = text:sub(i, i)
    if c == '"' and #field == 0 and not quoted_field then
      local j = i + 1
      while true do
        local q = text:find('"', j, true)
        if not q then return nil, "unterminated quoted field on line " .. line end
        field[#field + 1] = text:sub(j, q - 1)
        if text:sub(q + 1, q + 1) == '"' then
          field[#field + 1] = '"'
          j = q + 2
        else
          i = q + 1
          break
        end
      end
      quoted_field = true
    elseif c == "," then
      end_field()
      i = i + 1
    elseif c == "\r" or c == "\n" then
      end_record()
      i = i + ((c == "\r" and text:sub(i + 1, i + 1) == "\n") and 2 or 1)
    else
      if quoted_field then return nil, "text after a closing quote on line " .. line end
      local j = text:find('[,\r\n]', i) or n + 1
      field[#field + 1] = text:sub(i, j - 1)
      i = j
    end
  end
  if #field > 0 or #record > 0 or quoted_field then end_record() end
  return records
end

--- A number as the CLI prints it: integral ones without a fraction.
function M.number(v) return cell(v) end

--- Seconds as `3s`, `2m05s` or `1h02m` (`?` when unknown).
function M.duration(s)
  if s == nil or s ~= s or s == math.huge then return "?" end
  s = math.floor(s + 0.5)
  if s >= 3600 then return string.format("%dh%02dm", math.floor(s / 3600), math.floor(s % 3600 / 60)) end
  if s >= 60 then return string.format("%dm%02ds", math.floor(s / 60), s % 60) end
  return s .. "s"
end

--- The figures line after a campaign run (`wxpay.metrics.recorder`'s summary):
-- `calls N, latency p50 12.3 ms, p99 45.6 ms, R retries, K answers 429`.
function M.figures(s)
  local function ms(v) return v and string.format("%.1f ms", v * 1000) or "-" end
  return string.format("calls %d, latency p50 %s, p99 %s, %d retries, %d answers 429\n", s.calls,
    ms(s.p50), ms(s.p99), s.retries, s.status_429)
end

--- A progress display: a redrawn bar on a terminal, a plain line every `every` seconds
-- (and at the end) otherwise.
-- @tparam table opts `total`, `start` (done before), `tty` (boolean), `out` (file, default
--   io.stderr), `clock` (function returning seconds), `label`, `every` (plain-line period,
--   default 5)
-- @treturn table with `update(done, errors)` and `finish(done, errors)`
function M.progress(opts)
  local out, clock = opts.out or io.stderr, opts.clock
  local t0 = clock()
  local last = -math.huge
  local p = {}
  local start = opts.start or 0 -- done before this run: not part of its rate
  local function text(done, errors, now)
    local elapsed = now - t0
    local rate = elapsed > 0 and (done - start) / elapsed or 0
    local eta = rate > 0 and (opts.total - done) / rate or nil
    return done, rate, errors, eta
  end
  local function draw(done, errors, final)
    local now = clock()
    if not final and now - last < (opts.tty and 0.1 or (opts.every or 5)) then return end
    last = now
    local d, rate, e, eta = text(done, errors, now)
    local total = opts.total
    if opts.tty then
      local w = 30
      local fill = total > 0 and math.floor(w * d / total) or w
      out:write(string.format("\r%s [%s%s] %d/%d %3d%%  %.1f/s  errors %d  ETA %s\027[K",
        opts.label or "", string.rep("#", fill), string.rep(".", w - fill), d, total,
        total > 0 and math.floor(100 * d / total) or 100, rate, e, final and "0s" or M.duration(eta)))
      if final then out:write("\n") end
    else
      out:write(string.format("%s%d/%d done, %d errors, %.1f/s, ETA %s\n", opts.label and (opts.label .. ": ") or "",
        d, total, e, rate, final and "0s" or M.duration(eta)))
    end
    out:flush()
  end
  function p.update(done, errors) draw(done, errors, false) end
  function p.finish(done, errors) draw(done, errors, true) end
  return p
end

return M
