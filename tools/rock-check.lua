-- `make rock`: load wxpay from the luarocks tree just installed, not from the checkout.
package.cpath = "build/rocktree/lib/lua/5.4/?.so;" .. package.cpath
package.path = "build/rocktree/share/lua/5.4/?.lua;build/rocktree/share/lua/5.4/?/init.lua;" .. package.path
local wxpay = require("wxpay")
assert(package.searchpath("wxpay.core", package.cpath):find("rocktree", 1, true), "core from the rock tree")
assert(package.searchpath("wxpay", package.path):find("rocktree", 1, true), "wxpay from the rock tree")
assert(require("wxpay.core").versions().libcurl)
print("rock ok: wxpay " .. wxpay._VERSION .. " from build/rocktree")
