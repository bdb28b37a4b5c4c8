rockspec_format = "3.0"
package = "wxpay-cli"
version = "0.3.0-1"
-- `make dist` of the tag v0.3.0 makes this archive (one for all three rocks); there is no
-- public repository yet. `luarocks build` this rockspec next to the archive, offline.
source = {
  url = "wxpay-0.3.0.tar.gz",
  dir = "wxpay-0.3.0",
}
description = {
  summary = "The wxpay command: WeChat Pay APIv3 campaigns, partnerships and a config doctor",
  detailed = [[
Runs commissioned-marketing campaigns from a CSV plan with a resumable SQLite journal,
builds, lists and terminates partnerships, and checks a merchant configuration.
`wxpay sandbox` needs the wxpay-sandbox rock.
]],
  license = "Apache-2.0",
  labels = { "wechatpay", "payments", "cli" },
}
dependencies = {
  "lua >= 5.1, < 5.5",
  "wxpay == 0.3.0",
  "lua-cjson",
  "luasql-sqlite3",
}
-- Type none: luarocks' builtin type would also copy all of lua/, the other rocks' modules too.
build = {
  type = "none",
  install = {
    lua = {
      -- BEGIN LUA MODULES (tools/sync-rockspec.sh rewrites this block; spec/00 checks it)
      ["wxpay.cli.campaign"] = "lua/wxpay/cli/campaign.lua",
      ["wxpay.cli.campaign_status"] = "lua/wxpay/cli/campaign_status.lua",
      ["wxpay.cli.coupon_files"] = "lua/wxpay/cli/coupon_files.lua",
      ["wxpay.cli.doctor"] = "lua/wxpay/cli/doctor.lua",
      ["wxpay.cli"] = "lua/wxpay/cli/init.lua",
      ["wxpay.cli.issue"] = "lua/wxpay/cli/issue.lua",
      ["wxpay.cli.journal"] = "lua/wxpay/cli/journal.lua",
      ["wxpay.cli.output"] = "lua/wxpay/cli/output.lua",
      ["wxpay.cli.partnerships"] = "lua/wxpay/cli/partnerships.lua",
      ["wxpay.cli.paygift"] = "lua/wxpay/cli/paygift.lua",
      ["wxpay.cli.plan"] = "lua/wxpay/cli/plan.lua",
      ["wxpay.cli.stocks"] = "lua/wxpay/cli/stocks.lua",
      ["wxpay.cli.store"] = "lua/wxpay/cli/store.lua",
      -- END LUA MODULES
    },
    bin = { ["wxpay"] = "bin/wxpay" },
  },
}
