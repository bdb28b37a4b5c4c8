--- wxpay-sandbox: a local WeChat Pay APIv3 look-alike for the partnerships API.
-- `require("wxpay.sandbox").main(arg)` is what `bin/wxpay-sandbox` runs; `parse_args`
-- and `start` are there for embedding it.
local M = {}

M.USAGE = [[
Usage: wxpay-sandbox [options]

A local HTTPS look-alike of the WeChat Pay APIv3 partnerships API (and /v3/certificates,
the two media upload endpoints, the coupon products 商家券 and 代金券). The control API
under /_sandbox/ also rotates the platform certificate (POST /_sandbox/rotate), sends
signed, encrypted callbacks to a local URL with WeChat Pay's retry schedule (POST
/_sandbox/callbacks, see wxpay.sandbox.callbacks) and acts as a user of coupons.
When it listens it prints one line of JSON to stdout:
  {"config":{...wxpay.new config...},"control_url":"https://127.0.0.1:PORT/_sandbox","pid":N,"dir":"..."}
then logs one line per API request to stderr.

Options:
  --host HOST               address to listen on (default 127.0.0.1)
  --port N                  port, 0 = ephemeral (default 0)
  --mchid MCHID             the merchant it plays (default 1900000001; one --dir per merchant)
  --dir DIR                 state directory for keys (default: a fresh temporary
                            directory under $TMPDIR, removed on exit); keys already in
                            DIR are reused. DIR is made 0700 and its files 0600; an
                            existing DIR that others can read is tightened if it is
                            empty or a sandbox's, else refused
  --mode MODE               certificate | public_key | combined (default combined)
  --seed N                  pre-populate N relations (BUSIFAVOR_STOCK, stock SEED_STOCK,
                            APPID partners wxseed000001...)
  --offset-mode MODE        page | item: how list offsets count (default page)
  --empty-list STATUS       404 | 200: answer to an empty list page (default 404)
  --no-state-in-list        omit "state" from list items
  --unknown-stocks MODE     auto | allow | refuse: whether partnerships build refuses a
                            coupon stock the sandbox never created (default auto: only
                            once it has created a stock of that product)
  --fault-seed N            seed for random fault rates ({"fault":"500","rate":0.2}), for
                            reproducible runs (default: from the clock)
  --exit-on-stdin-close     exit when stdin reaches end of file
  --exit-with-pid PID       exit when process PID is gone (checked every second)
  --quiet                   no request log on stderr
  --version                 print the version
  --help                    this text
]]

local VALUES = {
  ["--host"] = "host", ["--port"] = "port", ["--dir"] = "dir", ["--mode"] = "mode",
  ["--seed"] = "seed", ["--offset-mode"] = "offset_mode", ["--empty-list"] = "empty_list",
  ["--exit-with-pid"] = "exit_with_pid", ["--fault-seed"] = "fault_seed",
  ["--unknown-stocks"] = "unknown_stocks",
  ["--mchid"] = "mchid",
}
local FLAGS = {
  ["--no-state-in-list"] = "no_state_in_list", ["--quiet"] = "quiet", ["--help"] = "help",
  ["--version"] = "version",
  ["--exit-on-stdin-close"] = "exit_on_stdin_close",
}
local CHOICES = {
  mode = { certificate = true, public_key = true, combined = true },
  offset_mode = { page = true, item = true },
  empty_list = { ["404"] = true, ["200"] = true },
  unknown_stocks = { auto = true, allow = true, refuse = true },
}

--- Parse command-line arguments.
-- @tparam table argv e.g. `{ "--port", "0", "--quiet" }`
-- @return options table, or nil and an error message
function M.parse_args(argv)
  local opts = { host = "127.0.0.1", port = 0, mode = "combined", offset_mode = "page",
                 empty_list = "404", state_in_list = true, seed = 0, unknown_stocks = "auto" }
  local i = 1
  while i <= #argv do
    local a = argv[i]
    local name, inline = a:match("^(%-%-[%w-]+)=(.*)$")
    name = name or a
    if VALUES[name] then
      local v = inline
      if not v then
        i = i + 1
        v = argv[i]
      end
      if v == nil then return nil, name .. " needs a value" end
      opts[VALUES[name]] = v
    elseif FLAGS[name] and not inline then
      opts[FLAGS[name]] = true
    else
      return nil, "unknown option: " .. a
    end
    i = i + 1
  end
  for key, choices in pairs(CHOICES) do
    if not choices[opts[key]] then return nil, "bad value for " .. key .. ": " .. opts[key] end
  end
  for _, key in ipairs{ "port", "seed", "exit_with_pid", "fault_seed" } do
    if opts[key] ~= nil then
      local n = math.tointeger(tonumber(opts[key]))
      if not n or n < 0 then return nil, "--" .. key:gsub("_", "-") .. " needs a number" end
      opts[key] = n
    end
  end
  if opts.no_state_in_list then opts.state_in_list = false end
  if opts.mchid ~= nil and not opts.mchid:match("^%d+$") then return nil, "--mchid needs digits" end
  return opts
end

--- Load or create the keys and build a listening server.
-- @tparam table opts from `parse_args`
-- @treturn table server (see wxpay.sandbox.server), already listening
function M.start(opts)
  local keys_mod = require("wxpay.sandbox.keys")
  local server_mod = require("wxpay.sandbox.server")
  local keys = keys_mod.load(opts.dir or keys_mod.tempdir(), opts.mchid)
  local server = server_mod.new{
    keys = keys, host = opts.host, port = opts.port, mode = opts.mode,
    offset_mode = opts.offset_mode, empty_list = opts.empty_list,
    state_in_list = opts.state_in_list, quiet = opts.quiet, seed = opts.seed, pid = opts.pid,
    fault_seed = opts.fault_seed, unknown_stocks = opts.unknown_stocks,
  }
  server:listen()
  return server
end

local function own_pid()
  local f = io.open("/proc/self/stat")
  if not f then return nil end
  local pid = f:read("n")
  f:close()
  return math.tointeger(pid)
end

-- Coroutines that end the server: SIGTERM/SIGINT, stdin EOF, a watched pid going away.
local function watchers(server, opts)
  local cqueues = require("cqueues")
  local signal = require("cqueues.signal")
  local list = {}
  signal.block(signal.SIGTERM, signal.SIGINT)
  local listener = signal.listen(signal.SIGTERM, signal.SIGINT)
  list[#list + 1] = function()
    listener:wait()
    server:stop()
  end
  if opts.exit_on_stdin_close then
    list[#list + 1] = function()
      local stdin = require("cqueues.socket").fdopen(0)
      stdin:setmode("b", "b")
      -- Negative size: whatever is there, up to that many bytes; nil at end of file.
      while stdin:read(-4096) do end
      server:stop()
    end
  end
  if opts.exit_with_pid then
    local proc = "/proc/" .. opts.exit_with_pid
    list[#list + 1] = function()
      while true do
        cqueues.sleep(1)
        -- Only "no such file" means gone: out of descriptors (EMFILE) it is still there.
        local alive, _, code = io.open(proc .. "/stat")
        if alive then alive:close() elseif code == 2 then break end
      end
      server:stop()
    end
  end
  return list
end

-- Start, print the startup line, serve until a watcher stops the server.
local function run(opts)
  local server = M.start(opts)
  io.stdout:write(server:startup_line(), "\n")
  io.stdout:flush()
  server:run(watchers(server, opts))
end

--- Run the sandbox as a program.
-- @tparam table argv command-line arguments
-- @treturn int exit status
function M.main(argv)
  local opts, err = M.parse_args(argv)
  if not opts then
    io.stderr:write("wxpay-sandbox: ", err, "\n", M.USAGE)
    return 2
  end
  if opts.help then
    io.stdout:write(M.USAGE)
    return 0
  end
  if opts.version then
    io.stdout:write("wxpay-sandbox ", require("wxpay")._VERSION, "\n")
    return 0
  end
  opts.pid = own_pid()
  -- Blocked from here on (the watchers take them), so a SIGTERM during key generation
  -- ends the run below and its clean-up instead of killing the process in the middle.
  local signal = require("cqueues.signal")
  signal.block(signal.SIGTERM, signal.SIGINT)
  local keys_mod = require("wxpay.sandbox.keys")
  local temp -- holds private keys: removed on every way out but SIGKILL
  if not opts.dir then
    temp = keys_mod.tempdir()
    opts.dir = temp
  end
  local ok, failure = pcall(run, opts)
  if temp then keys_mod.remove_tempdir(temp) end
  if not ok then
    io.stderr:write("wxpay-sandbox: ", tostring(failure), "\n")
    return 1
  end
  return 0
end

return M
