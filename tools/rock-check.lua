-- `make rock` (tools/rock-check.sh), run outside the checkout with the paths `luarocks path`
-- gives: every wxpay module loads from the tree just installed.
local tree = assert(arg[1], "usage: rock-check.lua TREE")
local function from_tree(name, path)
  local file = package.searchpath(name, path)
  assert(file and file:sub(1, #tree + 1) == tree .. "/", name .. " is not from " .. tree .. ": " .. tostring(file))
end
for _, name in ipairs{ "wxpay", "wxpay.client", "wxpay.cli", "wxpay.sandbox", "wxpay.sandbox.process" } do
  from_tree(name, package.path)
end
from_tree("wxpay.core", package.cpath)
-- Each rock owns only its part: the library's files hold neither the CLI nor the sandbox.
local manifest = {}
assert(loadfile(tree .. "/lib/luarocks/rocks-5.4/wxpay/scm-1/rock_manifest", "t", manifest))()
local own = manifest.rock_manifest.lua.wxpay
assert(own.cli == nil and own.sandbox == nil, "the wxpay rock installs only the library")
local wxpay = require("wxpay")
assert(require("wxpay.core").versions().libcurl)
assert(require("wxpay.sandbox").main, "wxpay.sandbox loads")
print("rock ok: wxpay " .. wxpay._VERSION .. ", wxpay-cli and wxpay-sandbox from " .. tree)
