#!/usr/bin/env lua5.4
--- tools/check-docs.lua: fail (exit 1, listing what is missing) unless the reference in docs/
-- names everything public the code has. Run from the repository root, or give the root as
-- the first argument: `lua5.4 tools/check-docs.lua [ROOT]`.
--
-- What is checked, and how each list is derived from the source (no library is loaded, so
-- the check needs no build and no keys):
--
-- * Configuration keys: the `CONFIG_KEYS = { … }` table, found in lua/wxpay/config.lua or
--   lua/wxpay/client.lua (whichever has it), each key as `name` in backticks in
--   docs/config.md.
-- * Public functions, each in docs/api.md under its public name. Every Lua file under
--   lua/wxpay/ must be listed in PUBLIC or INTERNAL below, so a new module fails the check
--   until someone decides which it is. In a PUBLIC file these definitions count:
--   `function VAR.name(` and `function VAR.a.b(` for the file's variable(s), assignments
--   `VAR.name = …` / `VAR.a, VAR.b = …`, and the fields of a table assigned as
--   `VAR.name = { key = …, … }` (so a forward added to `wxpay.partnerships = {…}` counts).
--   A newly added public function is therefore caught however it is written.
-- * The `wxpay` command's options (`VALUES` and `FLAGS` in lua/wxpay/cli/init.lua), each as
--   `--option-name` in docs/cli.md.
-- * The sandbox's options (`VALUES`, `FLAGS` in lua/wxpay/sandbox/init.lua) and control
--   endpoints (`["/_sandbox/…"]` routes in lua/wxpay/sandbox/control.lua), in docs/sandbox.md.
--
-- A name counts as present when it occurs with no identifier character (nor `.`) just before
-- it and no identifier character just after it, so `client.request` is not satisfied by
-- `client.requests`.

local root = arg and arg[1] or "."

-- file (under lua/wxpay/) -> { variable in the source = public prefix in the docs }
local PUBLIC = {
  ["init.lua"] = { wxpay = "wxpay" },
  ["client.lua"] = { client = "client", M = "wxpay.client" },
  ["errors.lua"] = { M = "wxpay.errors" },
  ["api/partnerships.lua"] = { P = "client.partnerships" },
  ["api/media.lua"] = { media = "client.media" },
  ["notify.lua"] = { notify = "client.notify" },
  ["notify_once.lua"] = { notify = "client.notify" },
  ["sensitive.lua"] = { s = "client" },
  ["transport/curl.lua"] = { M = "wxpay.transport.curl" },
  ["transport/ngx.lua"] = { M = "wxpay.transport.ngx" },
  ["flow.lua"] = { M = "wxpay.flow" },
  ["metrics.lua"] = { M = "wxpay.metrics" },
  ["router.lua"] = { M = "wxpay.router" },
}
PUBLIC["api/issue.lua"] = { issue = "client.issue" }

-- Service modules whose public functions are the fields of the table their `M.new(api)`
-- returns (bound to the client): file -> public prefix. Nested tables count
-- (`stocks = { create = … }` is `client.busifavor.stocks.create`).
local BOUND = {
  ["api/busifavor.lua"] = "client.busifavor",
  ["api/favor.lua"] = "client.favor",
  ["api/paygift.lua"] = "client.paygift",
}

-- Modules whose functions are not part of the Lua API: machinery behind `client.concurrent`,
-- or the command-line programs, documented in cli.md and sandbox.md. (The service modules'
-- own `M.new`, which the client calls to bind them, is not scanned: only the variables
-- listed in PUBLIC are.)
local INTERNAL = {
  ["concurrent.lua"] = true, ["transport/multi.lua"] = true, ["transport/init.lua"] = true,
  ["transport/http1.lua"] = true, ["transport/ngx_threads.lua"] = true,
  ["cli/"] = true, ["sandbox/"] = true,
  -- the coupon products' shared checks, calls and field tables (behind client.busifavor/favor)
  ["api/fields.lua"] = true, ["api/coupon_calls.lua"] = true, ["api/paging.lua"] = true,
  ["api/busifavor_schema.lua"] = true, ["api/favor_schema.lua"] = true,
  ["api/paygift_schema.lua"] = true,
  -- 商家券 codes, associate and 营销补差, bound into client.busifavor by api/busifavor.lua
  ["api/busifavor_codes.lua"] = true, ["api/busifavor_subsidy.lua"] = true,
  ["api/favor_flows.lua"] = true, ["download.lua"] = true, -- behind client.favor, client.download
  -- calendar arithmetic shared by the field checks, doctor and the sandbox
  ["time.lua"] = true,
  -- "did you mean" for a mistyped config key (the message is in docs/config.md)
  ["suggest.lua"] = true,
  -- the shared store (behind the `store` and `qps` config keys; docs/config.md)
  ["store/"] = true,
  -- the client's side of it: shared certificates, budget and failover (docs/fleet.md)
  ["fleet/"] = true,
  -- the rooms of the request pipeline, reached through `wxpay.client` (which re-exports
  -- the public encoders) and the client's closures
  ["config.lua"] = true, ["json.lua"] = true, ["request.lua"] = true, ["keyring.lua"] = true,
  ["verify.lua"] = true, ["retry.lua"] = true, ["pipeline.lua"] = true, ["redact.lua"] = true,
  -- integral floats as integers before config.lua's checks (docs/config.md)
  ["config_normalise.lua"] = true,
  ["concurrent_sequential.lua"] = true, -- client.concurrent outside cosocket phases
  -- the `on_request` events and their route templates (docs/observability.md)
  ["observe.lua"] = true, ["api/routes.lua"] = true,
  -- behind the config keys of a rotation and client.reload (docs/rotation.md)
  ["rotation.lua"] = true, ["reload.lua"] = true,
}
-- 发券: the checks behind wxpay.sign_v2, and client.busifavor.decrypt_jump_code (docs/issuing.md)
INTERNAL["v2sign.lua"], INTERNAL["api/jump_code.lua"] = true, true

-- Names defined in PUBLIC files that are plumbing, not API (none today). Besides these, a
-- name whose last part is `_` + lower case (`M._read_response`) is internal by Lua's
-- convention; `_VERSION` and the like are not.
local SKIP = {}
local function internal_name(name) return name:match("%._[%l_]") ~= nil end

local problems = {}
local function problem(fmt, ...) problems[#problems + 1] = string.format(fmt, ...) end

local function read(path)
  local f = io.open(root .. "/" .. path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function has_name(text, name)
  local init = 1
  while true do
    local a, b = text:find(name, init, true)
    if not a then return false end
    local before = a > 1 and text:sub(a - 1, a - 1) or ""
    local after = text:sub(b + 1, b + 1)
    if not before:match("[%w_.]") and not after:match("[%w_]") then return true end
    init = a + 1
  end
end

-- The text of the table constructor starting at `open` (the index of its `{`), and the top-level
-- `key =` names in it. Strings and comments are skipped coarsely (enough for this code base).
local function table_keys(src, open)
  local depth, i, n, keys = 0, open, #src, {}
  while i <= n do
    local c = src:sub(i, i)
    if c == "-" and src:sub(i, i + 1) == "--" then
      i = (src:find("\n", i, true) or n) + 1
    elseif c == '"' or c == "'" then
      local j = i + 1
      while j <= n and src:sub(j, j) ~= c do
        if src:sub(j, j) == "\\" then j = j + 1 end
        j = j + 1
      end
      i = j + 1
    elseif c == "[" and src:sub(i, i + 1):match("^%[[=%[]") then
      local eq = src:match("^%[(=*)%[", i)
      if eq then
        local _, close = src:find("]" .. eq .. "]", i, true)
        i = (close or n) + 1
      else
        i = i + 1
      end
    else
      if c == "{" or c == "(" then
        depth = depth + 1
      elseif c == "}" or c == ")" then
        depth = depth - 1
        if depth == 0 then return keys, i end
      elseif depth == 1 then
        local key = src:match("^([%a_][%w_]*)%s*=[^=]", i)
        local prev = i > 1 and src:sub(i - 1, i - 1) or ""
        if key and not prev:match("[%w_.]") then
          keys[#keys + 1] = key
          i = i + #key - 1
        else
          local quoted = src:match('^%[%s*"([^"]+)"%s*%]%s*=', i)
          if quoted then keys[#keys + 1] = quoted end
        end
      end
      i = i + 1
    end
  end
  return keys, n
end

local function keys_of(src, name)
  local _, stop = src:find("\n%s*local%s+" .. name .. "%s*=%s*{")
  if not stop then _, stop = src:find("\n%s*" .. name .. "%s*=%s*{") end
  if not stop then return nil end
  return (table_keys(src, stop))
end

---------------------------------------------------------------------------------------------
-- Configuration keys
---------------------------------------------------------------------------------------------

local config_keys, config_file
for _, file in ipairs({ "lua/wxpay/config.lua", "lua/wxpay/client.lua" }) do
  local src = read(file)
  config_keys = src and keys_of(src, "CONFIG_KEYS")
  if config_keys then config_file = file; break end
end
local config_doc = read("docs/config.md") or ""
if not config_keys or #config_keys == 0 then
  problem("no CONFIG_KEYS table found in lua/wxpay/config.lua or lua/wxpay/client.lua")
else
  for _, key in ipairs(config_keys) do
    if not config_doc:find("`" .. key .. "`", 1, true) then
      problem("docs/config.md: configuration key `%s` (%s) is not documented", key, config_file)
    end
  end
end

---------------------------------------------------------------------------------------------
-- Public functions
---------------------------------------------------------------------------------------------

local function lua_files()
  local p = io.popen('cd "' .. root .. '/lua/wxpay" && find . -name "*.lua" | sort')
  local out = {}
  for line in p:lines() do out[#out + 1] = (line:gsub("^%./", "")) end
  p:close()
  return out
end

local function classified_internal(file)
  if INTERNAL[file] then return true end
  for prefix in pairs(INTERNAL) do
    if prefix:sub(-1) == "/" and file:sub(1, #prefix) == prefix then return true end
  end
  return false
end

local function public_names(src, vars)
  local names, seen = {}, {}
  local function add(name)
    if seen[name] or SKIP[name] or internal_name(name) then return end
    seen[name] = true
    names[#names + 1] = name
  end
  for var, prefix in pairs(vars) do
    local v = var:gsub("%p", "%%%0")
    -- local VAR = { key = …, … }: fields given in the constructor (`wxpay._VERSION`)
    local _, open = src:find("\n%s*local%s+" .. v .. "%s*=%s*{")
    if open then
      for _, key in ipairs((table_keys(src, open))) do add(prefix .. "." .. key) end
    end
    -- function VAR.a(  /  function VAR.a.b(
    for path in src:gmatch("\n%s*function%s+" .. v .. "%.([%w_.]+)%s*%(") do add(prefix .. "." .. path) end
    -- VAR.a = …  and  VAR.a, VAR.b = …  (assignments at the start of a statement)
    for lhs in src:gmatch("\n%s*(" .. v .. "%.[%w_]+[%w_.,%s]-)%s*=[^=]") do
      for path in lhs:gmatch(v .. "%.([%w_.]+)") do add(prefix .. "." .. path) end
    end
    -- VAR.a = { key = …, … }: the table's fields
    local init = 1
    while true do
      local s, e, path = src:find("\n%s*" .. v .. "%.([%w_]+)%s*=%s*{", init)
      if not s then break end
      for _, key in ipairs((table_keys(src, e))) do add(prefix .. "." .. path .. "." .. key) end
      init = e + 1
    end
  end
  table.sort(names)
  return names
end

-- The names in the table constructor at `open`, descending into nested constructors.
local function bound_names(src, open, prefix, out)
  local keys, close = table_keys(src, open)
  local from = open + 1
  for _, key in ipairs(keys) do
    local _, e = src:find("[{,%s]" .. key .. "%s*=%s*{", from)
    if e and e < close then
      local _, sub_close = table_keys(src, e)
      bound_names(src, e, prefix .. "." .. key, out)
      from = sub_close + 1
    else
      out[#out + 1] = prefix .. "." .. key
    end
  end
  return out
end

local function new_returns(src, prefix)
  local _, fn = src:find("\nfunction%s+M%.new%s*%(")
  if not fn then return {} end
  -- `return { … }`, or `local t = calls.bind(api, { … })` plus `t.name = …` lines
  local _, open = src:find("\n%s*return%s*{", fn)
  if not open then _, open = src:find("bind%(api,%s*{", fn) end
  if not open then return {} end
  local names = bound_names(src, open, prefix, {})
  local stop = src:find("\nend", fn) or #src
  for extra in src:sub(fn, stop):gmatch("\n%s*t%.([%w_]+)%s*=") do names[#names + 1] = prefix .. "." .. extra end
  return names
end

local api_doc = (read("docs/api.md") or "") .. "\n" .. (read("docs/coupons.md") or "")
api_doc = api_doc .. "\n" .. (read("docs/paygift.md") or "")
local checked = 0
for _, file in ipairs(lua_files()) do
  local vars = PUBLIC[file]
  if BOUND[file] then
    for _, name in ipairs(new_returns(read("lua/wxpay/" .. file), BOUND[file])) do
      checked = checked + 1
      if not has_name(api_doc, name) then
        problem("docs/api.md or docs/coupons.md: `%s` (lua/wxpay/%s) is not documented", name, file)
      end
    end
  elseif vars then
    local src = read("lua/wxpay/" .. file)
    for _, name in ipairs(public_names(src, vars)) do
      checked = checked + 1
      if not has_name(api_doc, name) then
        problem("docs/api.md: `%s` (lua/wxpay/%s) is not documented", name, file)
      end
    end
  elseif not classified_internal(file) then
    problem("lua/wxpay/%s is neither PUBLIC nor INTERNAL in tools/check-docs.lua: decide which", file)
  end
end
if checked == 0 then problem("no public functions found under lua/wxpay/ (wrong ROOT?)") end

---------------------------------------------------------------------------------------------
-- The two commands
---------------------------------------------------------------------------------------------

local function check_options(src_file, doc_file, tables, to_option)
  local src, doc = read(src_file), read(doc_file) or ""
  if not src then problem("%s is missing", src_file); return end
  for _, t in ipairs(tables) do
    local keys = keys_of(src, t)
    if not keys then problem("%s: no %s table", src_file, t) end
    for _, key in ipairs(keys or {}) do
      local option = to_option(key)
      if not has_name(doc, option) then
        problem("%s: option %s (%s) is not documented", doc_file, option, src_file)
      end
    end
  end
end

check_options("lua/wxpay/cli/init.lua", "docs/cli.md", { "VALUES", "FLAGS" },
  function(key) return "--" .. key:gsub("_", "-") end)
check_options("lua/wxpay/sandbox/init.lua", "docs/sandbox.md", { "VALUES", "FLAGS" },
  function(key) return key end) -- the sandbox's tables are keyed by the option itself

local control = read("lua/wxpay/sandbox/control.lua")
local sandbox_doc = read("docs/sandbox.md") or ""
if control then
  for path in control:gmatch('%["(/_sandbox[^"]*)"%]%s*=') do
    if not has_name(sandbox_doc, path) then
      problem("docs/sandbox.md: control endpoint %s is not documented", path)
    end
  end
end

if #problems > 0 then
  io.stderr:write("check-docs: ", #problems, " problem", #problems == 1 and "" or "s", "\n")
  for _, p in ipairs(problems) do io.stderr:write("  ", p, "\n") end
  os.exit(1)
end
print(string.format("check-docs: %d configuration keys, %d public functions, CLI and sandbox options documented",
  #config_keys, checked))
