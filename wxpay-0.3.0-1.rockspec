rockspec_format = "3.0"
package = "wxpay"
version = "0.3.0-1"
-- `make dist` of the tag v0.3.0 makes this archive (one for all three rocks); there is no
-- public repository yet. `luarocks build` this rockspec next to the archive, offline.
source = {
  url = "wxpay-0.3.0.tar.gz",
  dir = "wxpay-0.3.0",
}
description = {
  summary = "WeChat Pay APIv3 client for Lua and OpenResty, with a C core (OpenSSL, libcurl)",
  detailed = [[
Signs requests, verifies responses (platform certificates and the WeChat Pay public key),
and wraps the commissioned-marketing (partnerships) API. The `wxpay` command is the
wxpay-cli rock; the local sandbox of the API is the wxpay-sandbox rock.
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
-- Not the builtin type: it would also copy all of lua/, the modules of wxpay-cli and
-- wxpay-sandbox too. The command compiles the core (into build/rock/, which `make clean`
-- removes); install.lua lists the library's own modules.
build = {
  type = "command",
  build_command = "mkdir -p build/rock && $(CC) $(CFLAGS) -D_GNU_SOURCE"
    .. " -I$(LUA_INCDIR) -I$(OPENSSL_INCDIR) -I$(CURL_INCDIR)"
    .. " csrc/auth.c csrc/core.c csrc/crypto.c csrc/http.c csrc/multi.c csrc/pkey.c csrc/signal.c csrc/util.c csrc/xfer.c"
    .. " $(LIBFLAG) -o build/rock/core.so -L$(OPENSSL_LIBDIR) -L$(CURL_LIBDIR) -lcrypto -lcurl -lpthread",
  install = {
    lib = { ["wxpay.core"] = "build/rock/core.so" },
    lua = {
      -- BEGIN LUA MODULES (tools/sync-rockspec.sh rewrites this block; spec/00 checks it)
      ["wxpay.api.busifavor"] = "lua/wxpay/api/busifavor.lua",
      ["wxpay.api.busifavor_codes"] = "lua/wxpay/api/busifavor_codes.lua",
      ["wxpay.api.busifavor_schema"] = "lua/wxpay/api/busifavor_schema.lua",
      ["wxpay.api.busifavor_subsidy"] = "lua/wxpay/api/busifavor_subsidy.lua",
      ["wxpay.api.coupon_calls"] = "lua/wxpay/api/coupon_calls.lua",
      ["wxpay.api.favor"] = "lua/wxpay/api/favor.lua",
      ["wxpay.api.favor_flows"] = "lua/wxpay/api/favor_flows.lua",
      ["wxpay.api.favor_schema"] = "lua/wxpay/api/favor_schema.lua",
      ["wxpay.api.fields"] = "lua/wxpay/api/fields.lua",
      ["wxpay.api.issue"] = "lua/wxpay/api/issue.lua",
      ["wxpay.api.jump_code"] = "lua/wxpay/api/jump_code.lua",
      ["wxpay.api.media"] = "lua/wxpay/api/media.lua",
      ["wxpay.api.paging"] = "lua/wxpay/api/paging.lua",
      ["wxpay.api.partnerships"] = "lua/wxpay/api/partnerships.lua",
      ["wxpay.api.paygift"] = "lua/wxpay/api/paygift.lua",
      ["wxpay.api.paygift_schema"] = "lua/wxpay/api/paygift_schema.lua",
      ["wxpay.api.routes"] = "lua/wxpay/api/routes.lua",
      ["wxpay.client"] = "lua/wxpay/client.lua",
      ["wxpay.concurrent"] = "lua/wxpay/concurrent.lua",
      ["wxpay.concurrent_sequential"] = "lua/wxpay/concurrent_sequential.lua",
      ["wxpay.config"] = "lua/wxpay/config.lua",
      ["wxpay.config_normalise"] = "lua/wxpay/config_normalise.lua",
      ["wxpay.download"] = "lua/wxpay/download.lua",
      ["wxpay.errors"] = "lua/wxpay/errors.lua",
      ["wxpay.fleet.certs"] = "lua/wxpay/fleet/certs.lua",
      ["wxpay.fleet"] = "lua/wxpay/fleet/init.lua",
      ["wxpay.fleet.members"] = "lua/wxpay/fleet/members.lua",
      ["wxpay.fleet.priority"] = "lua/wxpay/fleet/priority.lua",
      ["wxpay.flow"] = "lua/wxpay/flow.lua",
      ["wxpay"] = "lua/wxpay/init.lua",
      ["wxpay.json"] = "lua/wxpay/json.lua",
      ["wxpay.keyring"] = "lua/wxpay/keyring.lua",
      ["wxpay.metrics"] = "lua/wxpay/metrics.lua",
      ["wxpay.notify"] = "lua/wxpay/notify.lua",
      ["wxpay.notify_once"] = "lua/wxpay/notify_once.lua",
      ["wxpay.observe"] = "lua/wxpay/observe.lua",
      ["wxpay.pipeline"] = "lua/wxpay/pipeline.lua",
      ["wxpay.redact"] = "lua/wxpay/redact.lua",
      ["wxpay.reload"] = "lua/wxpay/reload.lua",
      ["wxpay.request"] = "lua/wxpay/request.lua",
      ["wxpay.retry"] = "lua/wxpay/retry.lua",
      ["wxpay.rotation"] = "lua/wxpay/rotation.lua",
      ["wxpay.router"] = "lua/wxpay/router.lua",
      ["wxpay.sensitive"] = "lua/wxpay/sensitive.lua",
      ["wxpay.store.bounded"] = "lua/wxpay/store/bounded.lua",
      ["wxpay.store.budget"] = "lua/wxpay/store/budget.lua",
      ["wxpay.store"] = "lua/wxpay/store/init.lua",
      ["wxpay.store.memory"] = "lua/wxpay/store/memory.lua",
      ["wxpay.store.ngx"] = "lua/wxpay/store/ngx.lua",
      ["wxpay.store.redis"] = "lua/wxpay/store/redis.lua",
      ["wxpay.suggest"] = "lua/wxpay/suggest.lua",
      ["wxpay.time"] = "lua/wxpay/time.lua",
      ["wxpay.transport.curl"] = "lua/wxpay/transport/curl.lua",
      ["wxpay.transport.http1"] = "lua/wxpay/transport/http1.lua",
      ["wxpay.transport"] = "lua/wxpay/transport/init.lua",
      ["wxpay.transport.multi"] = "lua/wxpay/transport/multi.lua",
      ["wxpay.transport.ngx"] = "lua/wxpay/transport/ngx.lua",
      ["wxpay.transport.ngx_threads"] = "lua/wxpay/transport/ngx_threads.lua",
      ["wxpay.v2sign"] = "lua/wxpay/v2sign.lua",
      ["wxpay.verify"] = "lua/wxpay/verify.lua",
      -- END LUA MODULES
    },
  },
  copy_directories = { "docs", "examples" },
}
-- `luarocks test`: builds the core for Lua 5.4 in build/ (CMake) and runs the unit specs with
-- busted (`make test` runs every spec, on every interpreter, under the sanitizers too).
test = {
  type = "command",
  command = "make build >/dev/null && busted --lua=lua5.4 spec/00-rockspec_spec.lua spec/01-core_spec.lua"
    .. " spec/02-vectors_spec.lua spec/03-client_spec.lua spec/04-partnerships_spec.lua spec/18-coupons_spec.lua",
}
