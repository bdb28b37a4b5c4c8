--- `wxpay busifavor upload-codes` and `wxpay favor use-flow|refund-flow`: the coupon
-- commands that move files.
--
-- upload-codes loads a codes file of any size into a MERCHANT_UPLOAD 商家券 stock in
-- batches of 200, journaled like a campaign (in the same SQLite journal, table
-- `code_batches`): each batch's request number is derived from the stock, the batch's
-- position and its codes, and committed with state `sending` before the call, so a run
-- killed at any point is simply run again: finished batches are skipped, an unfinished one
-- is repeated with the same `upload_request_no` (which WeChat Pay answers as the same
-- request), and no batch is ever uploaded under a second number. A file that changed since
-- a batch was journaled is refused.
-- @module wxpay.cli.coupon_files

local core = require("wxpay.core")
local journal_mod = require("wxpay.cli.journal")
local output = require("wxpay.cli.output")

local M = {}

M.BATCH = 200

local SCHEMA = [[CREATE TABLE IF NOT EXISTS code_batches (
  stock_id TEXT NOT NULL, batch INTEGER NOT NULL, upload_request_no TEXT NOT NULL,
  codes_sha256 TEXT NOT NULL, first_line INTEGER NOT NULL, count INTEGER NOT NULL,
  state TEXT NOT NULL, sends INTEGER NOT NULL DEFAULT 0, success_count INTEGER,
  fail_count INTEGER, exist_count INTEGER, duplicate_count INTEGER, error_code TEXT,
  error_message TEXT, updated_at INTEGER, PRIMARY KEY (stock_id, batch))]]

local COLUMNS = { "batch", "first_line", "count", "state", "sends", "success_count", "fail_count",
  "exist_count", "upload_request_no" }

-- The request number of batch `b`: 32 characters of the safe charset, the same on every run.
function M.request_no(stock_id, b, sha)
  return "UP" .. core.sha256_hex(stock_id .. "\0" .. b .. "\0" .. sha):sub(1, 30)
end

-- Batches of up to BATCH codes from `path`, one batch in memory: each call of the iterator
-- returns codes, first line number (blank lines and surrounding spaces skipped).
local function batches(f)
  local line_no = 0
  return function()
    local codes, first = {}, nil
    while #codes < M.BATCH do
      local line = f:read("*l")
      if line == nil then break end
      line_no = line_no + 1
      local code = line:gsub("\r$", ""):match("^%s*(.-)%s*$")
      if code ~= "" then
        first = first or line_no
        codes[#codes + 1] = code
      end
    end
    if #codes == 0 then return nil end
    return codes, first
  end
end

local function journaled(j, stock_id)
  local known = {}
  for _, r in ipairs(j:rows("SELECT * FROM code_batches WHERE stock_id = " .. j:q(stock_id))) do
    known[tonumber(r.batch)] = r
  end
  return known
end

-- Send one batch (state `sending` committed first); returns true, or nil and a message.
local function send_batch(j, o, b, codes, first, sha, rec)
  local no = rec and rec.upload_request_no or M.request_no(o.stock, b, sha)
  local now = os.time()
  if rec then
    j:exec(string.format("UPDATE code_batches SET state = 'sending', sends = sends + 1, updated_at = %d "
      .. "WHERE stock_id = %s AND batch = %d", now, j:q(o.stock), b))
  else
    j:exec(string.format("INSERT INTO code_batches (stock_id, batch, upload_request_no, codes_sha256, "
      .. "first_line, count, state, sends, updated_at) VALUES (%s, %d, %s, %s, %d, %d, 'sending', 1, %d)",
      j:q(o.stock), b, j:q(no), j:q(sha), first, #codes, now))
  end
  local res, err = o.client.busifavor.coupon_codes.upload(o.stock, { coupon_code_list = codes,
    upload_request_no = no })
  if not res then
    j:exec(string.format("UPDATE code_batches SET state = 'failed', error_code = %s, error_message = %s, "
      .. "updated_at = %d WHERE stock_id = %s AND batch = %d", j:q(err.code), j:q(output.message(err)),
      os.time(), j:q(o.stock), b))
    return nil, string.format("batch %d (line %d): %s", b, first, output.message(err))
  end
  for _, fc in ipairs(type(res.fail_codes) == "table" and res.fail_codes or {}) do
    o.err:write(string.format("wxpay: batch %d: code %s refused: %s %s\n", b, tostring(fc.coupon_code),
      tostring(fc.code), tostring(fc.message)))
  end
  local function count(t) return type(t) == "table" and #t or 0 end
  j:exec(string.format("UPDATE code_batches SET state = 'done', success_count = %d, fail_count = %d, "
    .. "exist_count = %d, duplicate_count = %d, error_code = NULL, error_message = NULL, updated_at = %d "
    .. "WHERE stock_id = %s AND batch = %d", math.floor(tonumber(res.success_count) or 0),
    count(res.fail_codes), count(res.exist_codes), count(res.duplicate_codes), os.time(), j:q(o.stock), b))
  return true
end

-- Walk the file: skip done batches, send the rest. Returns true, or nil and a message.
local function upload_all(j, f, o)
  local known = journaled(j, o.stock)
  local b = 0
  for codes, first in batches(f) do
    b = b + 1
    local sha = core.sha256_hex(table.concat(codes, "\n"))
    local rec = known[b]
    if rec and rec.codes_sha256 ~= sha then
      return nil, string.format("the codes file changed since batch %d (line %d) was journaled; "
        .. "use a new journal for a new file", b, first)
    end
    if not (rec and rec.state == "done") then
      local ok, err = send_batch(j, o, b, codes, first, sha, rec)
      if not ok then return nil, err end
    end
  end
  return true
end

--- `wxpay busifavor upload-codes STOCK_ID --file CODES.txt --journal FILE.db`.
-- @tparam table o `stock`, `file`, `journal`, `client`, `format`, `out`, `err`
-- @treturn int exit status
function M.upload_codes(o)
  local f, ferr = io.open(o.file, "rb")
  if not f then o.err:write("wxpay: cannot read ", o.file, ": ", tostring(ferr), "\n"); return 1 end
  -- A run holds the journal's lock like a campaign run: two uploads of one file at once
  -- would send the same batches side by side.
  local j, jerr = journal_mod.open(o.journal, { lock = true })
  if not j then f:close(); o.err:write("wxpay: ", jerr, "\n"); return 1 end
  j:exec(SCHEMA)
  local ok, done, why = pcall(upload_all, j, f, o)
  f:close()
  local rows = j:rows("SELECT * FROM code_batches WHERE stock_id = " .. j:q(o.stock) .. " ORDER BY batch")
  j:close()
  if not ok then error(done, 0) end
  o.out:write(output.render(rows, COLUMNS, o.format))
  if not done then
    o.err:write("wxpay: ", why, "\n(run the same command again to resume: done batches are skipped, "
      .. "the unfinished one is repeated with its own upload_request_no)\n")
    return 1
  end
  return 0
end

--- `wxpay favor use-flow|refund-flow STOCK_ID [--bill-date YYYY-MM-DD] [--file OUT]
-- [--output csv|table|json]`: the verified file; csv is the file as WeChat Pay wrote it.
-- @tparam table o `verb`, `stock`, `bill_date`, `file`, `client`, `format`, `out`, `err`
-- @treturn int exit status
function M.flow(o)
  local stocks = o.client.favor.stocks
  local name = o.verb:gsub("%-", "_")
  local info, err
  if o.bill_date then info, err = stocks[name .. "_by_day"](o.stock, o.bill_date)
  else info, err = stocks[name](o.stock) end
  if not info then o.err:write("wxpay: ", output.message(err), "\n"); return 1 end
  if o.format == "csv" and not o.file then
    local res, derr = o.client.download(info, { sink = function(chunk)
      if chunk then o.out:write(chunk) end
      return true
    end })
    if not res then o.err:write("wxpay: ", output.message(derr), "\n"); return 1 end
    return 0
  end
  local path = o.file or (os.getenv("TMPDIR") or "/tmp") .. "/wxpay-flow-" .. core.nonce(16) .. ".csv"
  local res, derr = o.client.download(info, { path = path })
  if not res then o.err:write("wxpay: ", output.message(derr), "\n"); return 1 end
  if o.file then
    o.err:write(string.format("wxpay: %s: %d bytes, %s %s\n", path, res.bytes, info.hash_type or "hash", res.hash))
    return 0
  end
  local rows = {}
  local flow = require("wxpay.flow")
  local ok, perr = pcall(function()
    for r in flow.rows(path) do rows[#rows + 1] = r end
  end)
  local hf = io.open(path, "rb")
  local header = hf and hf:read("*l") or ""
  if hf then hf:close() end
  os.remove(path)
  if not ok then o.err:write("wxpay: ", tostring(perr), "\n"); return 1 end
  local columns = flow.parse_line((header:gsub("\r$", ""):gsub("^\239\187\191", "")))
  o.out:write(output.render(rows, columns, o.format))
  return 0
end

return M
