rockspec_format = "3.0"
package = "wxpay"
version = "scm-1"
source = {
  url = "git+https://github.com/wxpay-lua/wxpay.git",
  branch = "main",
}
description = {
  summary = "WeChat Pay APIv3 client for Lua and OpenResty, with a C core (OpenSSL, libcurl)",
  detailed = [[
Signs requests, verifies responses (platform certificates and the WeChat Pay public key),
and wraps the commissioned-marketing (partnerships) API, with a local sandbox of the API.
]],
  license = "Apache-2.0",
  labels = { "wechatpay", "payments", "openresty" },
}
dependencies = {
  "lua >= 5.1, < 5.5",
  "lua-cjson",
}
external_dependencies = {
  OPENSSL = { header = "openssl/evp.h", library = "crypto" },
  -- Debian keeps curl.h in a multiarch include dir luarocks does not search: check the library.
  CURL = { library = "curl" },
}
build = {
  type = "builtin",
  modules = {
    ["wxpay.core"] = {
      sources = { "csrc/auth.c", "csrc/core.c", "csrc/crypto.c", "csrc/http.c", "csrc/multi.c", "csrc/pkey.c", "csrc/util.c", "csrc/xfer.c" },
      libraries = { "crypto", "curl", "pthread" },
      incdirs = { "$(OPENSSL_INCDIR)", "$(CURL_INCDIR)" },
      libdirs = { "$(OPENSSL_LIBDIR)", "$(CURL_LIBDIR)" },
      defines = { "_GNU_SOURCE" },
    },
    -- BEGIN LUA MODULES (tools/sync-rockspec.sh rewrites this block; spec/00 checks it)
    ["wxpay.api.media"] = "lua/wxpay/api/media.lua",
    ["wxpay.api.partnerships"] = "lua/wxpay/api/partnerships.lua",
    ["wxpay.cli.campaign"] = "lua/wxpay/cli/campaign.lua",
    ["wxpay.cli.doctor"] = "lua/wxpay/cli/doctor.lua",
    ["wxpay.cli"] = "lua/wxpay/cli/init.lua",
    ["wxpay.cli.journal"] = "lua/wxpay/cli/journal.lua",
    ["wxpay.cli.output"] = "lua/wxpay/cli/output.lua",
    ["wxpay.cli.partnerships"] = "lua/wxpay/cli/partnerships.lua",
    ["wxpay.client"] = "lua/wxpay/client.lua",
    ["wxpay.concurrent"] = "lua/wxpay/concurrent.lua",
    ["wxpay.errors"] = "lua/wxpay/errors.lua",
    ["wxpay"] = "lua/wxpay/init.lua",
    ["wxpay.notify"] = "lua/wxpay/notify.lua",
    ["wxpay.sandbox.api"] = "lua/wxpay/sandbox/api.lua",
    ["wxpay.sandbox.callbacks"] = "lua/wxpay/sandbox/callbacks.lua",
    ["wxpay.sandbox.control"] = "lua/wxpay/sandbox/control.lua",
    ["wxpay.sandbox.faults"] = "lua/wxpay/sandbox/faults.lua",
    ["wxpay.sandbox.http"] = "lua/wxpay/sandbox/http.lua",
    ["wxpay.sandbox"] = "lua/wxpay/sandbox/init.lua",
    ["wxpay.sandbox.json"] = "lua/wxpay/sandbox/json.lua",
    ["wxpay.sandbox.keys"] = "lua/wxpay/sandbox/keys.lua",
    ["wxpay.sandbox.media"] = "lua/wxpay/sandbox/media.lua",
    ["wxpay.sandbox.process"] = "lua/wxpay/sandbox/process.lua",
    ["wxpay.sandbox.server"] = "lua/wxpay/sandbox/server.lua",
    ["wxpay.sandbox.store"] = "lua/wxpay/sandbox/store.lua",
    ["wxpay.sandbox.util"] = "lua/wxpay/sandbox/util.lua",
    ["wxpay.sensitive"] = "lua/wxpay/sensitive.lua",
    ["wxpay.transport.curl"] = "lua/wxpay/transport/curl.lua",
    ["wxpay.transport.multi"] = "lua/wxpay/transport/multi.lua",
    ["wxpay.transport.ngx"] = "lua/wxpay/transport/ngx.lua",
    -- END LUA MODULES
  },
  install = {
    bin = { ["wxpay-sandbox"] = "bin/wxpay-sandbox", ["wxpay"] = "bin/wxpay" },
  },
  copy_directories = { "docs", "examples" },
}
