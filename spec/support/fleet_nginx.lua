--- A fleet of real nginx hosts (Debian's nginx + libnginx-mod-http-lua, LuaJIT) for the fleet
-- specs (21, 61, 63) and benchmarks (bench/fleet*.lua). Not a spec itself.
--
--     local fleet_nginx = require("spec.support.fleet_nginx")
--     fleet_nginx.write(dir, "fleet_t", BODY, fleet_nginx.config(sb.config), { name = { qps = 20 } })
--     local conf = fleet_nginx.conf{ module = "fleet_t", dir = dir, ca_file = sb.config.ca_file,
--       workers = 2, locations = { { "/t", "run" } } }
--     local host = fleet_nginx.start(conf, dir)   -- answers on host.url .. "/up"
--
-- The handlers module `dir/<module>.lua` is `BODY` after an `init` (run in the master by
-- init_by_lua: it reads the keys) that makes one client per variant into `clients[name]`:
-- `dir/fleet.json`'s `config` with the variant's changes over it.
-- `downloads`, `starts` and `busiest_second` read the sandbox's request log.
local nginx = require("spec.support.nginx")
local socket = require("socket")
local cjson = require("cjson")

local M = {}

M.ROOT = io.popen("pwd"):read("*l")

local INIT = [=[
local cjson = require("cjson.safe")
local wxpay = require("wxpay")
local M, clients = {}, {}
local LIST = { authorized_data = { business_type = "BUSIFAVOR_STOCK" } }

function M.init(path)
  local f = assert(io.open(path))
  local spec = assert(cjson.decode(f:read("*a")))
  f:close()
  for name, changes in pairs(spec.variants) do
    local cfg = {}
    for k, v in pairs(spec.config) do cfg[k] = v end
    for k, v in pairs(changes) do cfg[k] = v end
    clients[name] = assert(wxpay.new(cfg))
  end
end
]=]

local CONF = [[
load_module /usr/share/nginx/modules/ndk_http_module.so;
load_module /usr/share/nginx/modules/ngx_http_lua_module.so;
worker_processes {{workers}};
pid logs/nginx.pid;
error_log logs/error.log warn;
env FLEET_CONFIG;
events { {{events}} }
http {
  access_log off;
  client_body_temp_path tmp/body; proxy_temp_path tmp/proxy; fastcgi_temp_path tmp/fastcgi;
  uwsgi_temp_path tmp/uwsgi; scgi_temp_path tmp/scgi;
  lua_package_path "{{dir}}/?.lua;{{root}}/lua/?.lua;{{root}}/lua/?/init.lua;;";
  lua_package_cpath "{{root}}/build-luajit/?.so;;";
  lua_ssl_trusted_certificate {{ca_file}};
  lua_ssl_verify_depth 3;
{{http}}  init_by_lua_block { require("{{module}}").init(os.getenv("FLEET_CONFIG")) }
  server {
    listen {{listen}} reuseport;
    location = /up { return 200 "up"; }
{{locations}}  }
}
]]

local function q(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

--- The sandbox's client configuration in download mode (no platform certificate, no public
-- key), its base URL on `localhost` (the name its certificate holds).
-- @tparam table sb_config the sandbox's `config`
-- @treturn table a copy
function M.config(sb_config)
  local cfg = {}
  for k, v in pairs(sb_config) do cfg[k] = v end
  cfg.platform_certificate_files, cfg.wechatpay_public_key_file, cfg.wechatpay_public_key_id = nil, nil, nil
  cfg.base_url = cfg.base_url:gsub("^https://127%.0%.0%.1:", "https://localhost:")
  return cfg
end

--- Writes the handlers module `dir/<module>.lua` (the shared `init`, then `body`, which ends
-- before `return M`) and `dir/fleet.json`; makes `dir` readable by the workers (they run as nobody).
function M.write(dir, module, body, config, variants)
  os.execute("chmod 755 " .. q(dir))
  write(dir .. "/" .. module .. ".lua", INIT .. "\n" .. body .. "\nreturn M\n")
  write(dir .. "/fleet.json", cjson.encode({ config = config, variants = variants }))
end

--- The nginx configuration of a host.
-- @tparam table o `module`, `dir`, `ca_file`; `workers` (1); `events` (`worker_connections 256;`);
--   `http`, more http directives (a list of lines); `locations`, a list of `{ prefix, handler }`
--   (`location PREFIX { content_by_lua_block { require(module).HANDLER() } }`)
-- @treturn string the text, {{listen}} left for spec.support.nginx
function M.conf(o)
  local http, locations = {}, {}
  for _, line in ipairs(o.http or {}) do http[#http + 1] = "  " .. line .. "\n" end
  for _, l in ipairs(o.locations) do
    locations[#locations + 1] = ("    location %s { content_by_lua_block { require(\"%s\").%s() } }\n")
      :format(l[1], o.module, l[2])
  end
  local values = { workers = tostring(o.workers or 1), events = o.events or "worker_connections 256;",
    http = table.concat(http), module = o.module, locations = table.concat(locations),
    root = M.ROOT, dir = o.dir, ca_file = o.ca_file }
  return (CONF:gsub("{{([%w_]+)}}", function(k)
    if k == "listen" then return nil end
    return values[k]
  end))
end

--- Starts nginx on `conf` with FLEET_CONFIG naming `dir/fleet.json`; returns once it answers
-- on `/up` (or after 5 s). The host of spec.support.nginx (`url`, `stop()`, `log()`).
function M.start(conf, dir)
  local host = nginx.start(conf, "FLEET_CONFIG=" .. q(dir .. "/fleet.json"))
  for _ = 1, 100 do
    if nginx.http("GET", host.url .. "/up") == 200 then break end
    socket.sleep(0.05)
  end
  return host
end

--- How many `/v3/certificates` downloads the sandbox's request log `requests` holds.
function M.downloads(requests)
  local n = 0
  for _, r in ipairs(requests) do
    if r.target:find("^/v3/certificates") then n = n + 1 end
  end
  return n
end

--- The receive times of the API calls (`/v3/marketing/partnerships`, not the downloads) in
-- the sandbox's request log `requests`, sorted.
function M.starts(requests)
  local t = {}
  for _, r in ipairs(requests) do
    if r.target:find("^/v3/marketing/partnerships") then t[#t + 1] = r.received_at end
  end
  table.sort(t)
  return t
end

--- The most times of `t` (seconds; sorted here, in place) within one second.
function M.busiest_second(t)
  table.sort(t)
  local most, j = 0, 1
  for i = 1, #t do
    while t[i] - t[j] >= 1 do j = j + 1 end
    most = math.max(most, i - j + 1)
  end
  return most
end

return M
