--- The `wxpay` command run as a program, for the CLI specs (13, 23, 28, 42). Not a spec itself.
local h = require("spec.helpers")
local sandbox = require("spec.support.sandbox")
local cjson = require("cjson").new()

local M = {}

--- A scratch folder (removed by `helpers.cleanup`) holding `config.json`: the client
-- configuration of the sandbox `sb`.
-- @treturn string the folder
-- @treturn string the config file
function M.configured(sb)
  local dir = h.tmpdir()
  local config_file = dir .. "/config.json"
  h.write(config_file, cjson.encode(sb.config))
  return dir, config_file
end

--- Run `lua5.4 bin/wxpay ARGS` (build/ holds the Lua 5.4 module) with stdout and stderr in
-- files under `dir`, without a sanitizer runtime preloaded.
-- @tparam string dir a scratch folder
-- @tparam string args the command line after `wxpay` (already quoted)
-- @tparam[opt] string env `NAME=value …` put before the command
-- @return stdout, stderr, exit status
function M.run(dir, args, env)
  local out, err = dir .. "/out", dir .. "/err"
  local cmd = string.format(sandbox.CLEAN_ENV .. "%s lua5.4 bin/wxpay %s >%s 2>%s; echo $?", env or "", args,
    h.q(out), h.q(err))
  local p = assert(io.popen(cmd))
  local rc = tonumber(p:read("*a"):match("(%d+)%s*$"))
  p:close()
  return h.read(out), h.read(err), rc
end

return M
