-- One dialect for all: the library runs unchanged on Lua 5.1/LuaJIT through 5.4.
std = "max"
max_line_length = 120
codes = true
exclude_files = { "build*/", ".luarocks/", "lua_modules/" }
files["spec/"] = { std = "+busted" }
files["bench/"] = { allow_defined_top = false }
files["lua/wxpay/sandbox/"] = { std = "lua54" }
files["bin/wxpay-sandbox"] = { std = "lua54" }
files["bin/wxpay"] = { std = "lua54" }
files["examples/openresty/"] = { globals = { "ngx" } } -- handlers run inside nginx (ngx.status is set)
