rockspec_format = "3.0"
package = "wxpay-sandbox"
version = "0.3.0-1"
-- `make dist` of the tag v0.3.0 makes this archive (one for all three rocks); there is no
-- public repository yet. `luarocks build` this rockspec next to the archive, offline.
source = {
  url = "wxpay-0.3.0.tar.gz",
  dir = "wxpay-0.3.0",
}
description = {
  summary = "wxpay-sandbox: a local WeChat Pay APIv3 look-alike over HTTPS, for tests",
  detailed = [[
Serves the partnerships and media APIs with signed responses, platform certificates,
callbacks and injectable faults. wxpay.sandbox.process starts and drives one from tests;
it runs the curl command for control requests.
]],
  license = "Apache-2.0",
  labels = { "wechatpay", "payments", "testing" },
}
dependencies = {
  "lua >= 5.3, < 5.5", -- the sandbox uses math.type and math.tointeger
  "wxpay == 0.3.0",
  "lua-cjson",
  "cqueues",
  "luaossl",
}
-- Type none: luarocks' builtin type would also copy all of lua/, the other rocks' modules too.
build = {
  type = "none",
  install = {
    lua = {
      -- BEGIN LUA MODULES (tools/sync-rockspec.sh rewrites this block; spec/00 checks it)
      ["wxpay.sandbox.api"] = "lua/wxpay/sandbox/api.lua",
      ["wxpay.sandbox.callbacks"] = "lua/wxpay/sandbox/callbacks.lua",
      ["wxpay.sandbox.control"] = "lua/wxpay/sandbox/control.lua",
      ["wxpay.sandbox.coupons"] = "lua/wxpay/sandbox/coupons.lua",
      ["wxpay.sandbox.coupons_busifavor"] = "lua/wxpay/sandbox/coupons_busifavor.lua",
      ["wxpay.sandbox.coupons_codes"] = "lua/wxpay/sandbox/coupons_codes.lua",
      ["wxpay.sandbox.coupons_common"] = "lua/wxpay/sandbox/coupons_common.lua",
      ["wxpay.sandbox.coupons_control"] = "lua/wxpay/sandbox/coupons_control.lua",
      ["wxpay.sandbox.coupons_favor"] = "lua/wxpay/sandbox/coupons_favor.lua",
      ["wxpay.sandbox.coupons_flows"] = "lua/wxpay/sandbox/coupons_flows.lua",
      ["wxpay.sandbox.coupons_subsidy"] = "lua/wxpay/sandbox/coupons_subsidy.lua",
      ["wxpay.sandbox.faults"] = "lua/wxpay/sandbox/faults.lua",
      ["wxpay.sandbox.http"] = "lua/wxpay/sandbox/http.lua",
      ["wxpay.sandbox"] = "lua/wxpay/sandbox/init.lua",
      ["wxpay.sandbox.issue"] = "lua/wxpay/sandbox/issue.lua",
      ["wxpay.sandbox.issue_sign"] = "lua/wxpay/sandbox/issue_sign.lua",
      ["wxpay.sandbox.json"] = "lua/wxpay/sandbox/json.lua",
      ["wxpay.sandbox.keys"] = "lua/wxpay/sandbox/keys.lua",
      ["wxpay.sandbox.media"] = "lua/wxpay/sandbox/media.lua",
      ["wxpay.sandbox.paygift"] = "lua/wxpay/sandbox/paygift.lua",
      ["wxpay.sandbox.paygift_control"] = "lua/wxpay/sandbox/paygift_control.lua",
      ["wxpay.sandbox.process"] = "lua/wxpay/sandbox/process.lua",
      ["wxpay.sandbox.rotation"] = "lua/wxpay/sandbox/rotation.lua",
      ["wxpay.sandbox.server"] = "lua/wxpay/sandbox/server.lua",
      ["wxpay.sandbox.store"] = "lua/wxpay/sandbox/store.lua",
      ["wxpay.sandbox.util"] = "lua/wxpay/sandbox/util.lua",
      -- END LUA MODULES
    },
    bin = { ["wxpay-sandbox"] = "bin/wxpay-sandbox" },
  },
}
