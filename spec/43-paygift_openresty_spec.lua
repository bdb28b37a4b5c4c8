-- 支付有礼 terminate from a real nginx (Debian's nginx + libnginx-mod-http-lua, LuaJIT,
-- build-luajit/wxpay/core.so) over cosockets, against the real sandbox: the empty-body POST
-- goes out with Content-Length: 0 and no Content-Type, its signature covers the empty body
-- (the sandbox verifies it), and the repeat is safe. This file only drives.
local cjson = require("cjson").new()
local wxpay = require("wxpay")
local sandbox = require("spec.support.sandbox")
local nginx = require("spec.support.nginx")
local helpers = require("spec.helpers")

local ROOT = io.popen("pwd"):read("*l")
local ACTS = "/v3/marketing/paygiftactivity/activities"

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function rfc3339(t)
  return os.date("!%Y-%m-%dT%H:%M:%S+08:00", t + 8 * 3600)
end

describe("client.paygift.terminate under OpenResty", function()
  local sb, n, client

  setup(function()
    assert(exists(nginx.NGINX), "nginx is not installed (make deps)")
    assert(exists(nginx.LUA_MODULE), "libnginx-mod-http-lua is not installed (make deps)")
    if not exists(ROOT .. "/build-luajit/wxpay/core.so") then
      local p = io.popen("make -s luajit >/dev/null 2>&1"); p:read("*a"); p:close()
    end
    assert(exists(ROOT .. "/build-luajit/wxpay/core.so"), "build-luajit/wxpay/core.so missing (make luajit)")
    sb = sandbox.start{ mode = "combined" }
    client = assert(wxpay.new(sb.config))
    local cfg = {}
    for k, v in pairs(sb.config) do cfg[k] = v end
    -- nginx verifies TLS by name, never for an IP address
    cfg.base_url = cfg.base_url:gsub("^https://127%.0%.0%.1:", "https://localhost:")
    local config_file = os.tmpname()
    helpers.write(config_file, cjson.encode(cfg))
    n = nginx.start(table.concat({
      "load_module /usr/share/nginx/modules/ndk_http_module.so;",
      "load_module " .. nginx.LUA_MODULE .. ";",
      "worker_processes 1;", "pid logs/nginx.pid;", "error_log logs/error.log info;",
      "env WXPAY_CONFIG;",
      "events { worker_connections 64; }",
      "http {",
      "  access_log off; client_body_temp_path tmp/body; proxy_temp_path tmp/proxy;",
      "  fastcgi_temp_path tmp/fastcgi; uwsgi_temp_path tmp/uwsgi; scgi_temp_path tmp/scgi;",
      '  lua_package_path "' .. ROOT .. "/lua/?.lua;" .. ROOT .. '/lua/?/init.lua;;";',
      '  lua_package_cpath "' .. ROOT .. '/build-luajit/?.so;;";',
      "  lua_ssl_trusted_certificate " .. sb.config.ca_file .. ";",
      "  init_by_lua_block {",
      "    local f = io.open(os.getenv('WXPAY_CONFIG'))",
      "    local cfg = require('cjson').decode(f:read('*a')); f:close()",
      "    package.loaded.spec_client = assert(require('wxpay').new(cfg))",
      "  }",
      "  server {",
      "    listen {{listen}};",
      "    location = /terminate { content_by_lua_block {",
      "      local res, err = package.loaded.spec_client.paygift.terminate(ngx.var.arg_id)",
      "      ngx.say(require('cjson').encode{ activity_id = res and res.activity_id,",
      "        terminate_time = res and res.terminate_time, already = res and res.already_terminated,",
      "        err = err and tostring(err) }) } }",
      "  }",
      "}",
    }, "\n"), "WXPAY_CONFIG=" .. helpers.q(config_file))
    os.remove(config_file) -- read by the master before it returned
  end)

  teardown(function()
    if n then n:stop() end
    if sb then sb:stop() end
    helpers.cleanup()
  end)

  it("sends no Content-Type, signs the empty body, and a repeat is success", function()
    local now = os.time()
    local stock = assert(client.busifavor.stocks.create{
      stock_name = "满100送10元", goods_name = "全场通用", stock_type = "NORMAL",
      coupon_code_mode = "WECHATPAY_MODE", out_request_no = "pg-or-stock",
      coupon_use_rule = {
        coupon_available_time = { available_begin_time = rfc3339(now - 3600),
                                  available_end_time = rfc3339(now + 40 * 86400) },
        fixed_normal_coupon = { discount_amount = 1000, transaction_minimum = 5000 }, use_method = "OFF_LINE" },
      stock_send_rule = { max_coupons = 100, max_coupons_per_user = 5 },
    }).stock_id
    local act = assert(client.paygift.create{
      activity_base_info = { activity_name = "五月回馈", activity_second_title = "满100送券",
        merchant_logo_url = "https://wxpaylogo.qpic.cn/wxpaylogo/logo/0", begin_time = rfc3339(now - 60),
        end_time = rfc3339(now + 30 * 86400), delivery_purpose = "OFF_LINE_PAY" },
      award_send_rule = { transaction_amount_minimum = 10000, send_content = "SINGLE_COUPON",
        award_list = { { stock_id = stock, original_image_url = "https://wxpaylogo.qpic.cn/wxpaylogo/big/0" } } },
    })
    local status, text = nginx.http("GET", n.url .. "/terminate?id=" .. act.activity_id)
    assert.equal(200, status)
    local res = cjson.decode(text)
    assert.is_nil(res.err)
    assert.equal(act.activity_id, res.activity_id)
    assert.is_string(res.terminate_time)
    local path = ACTS .. "/" .. act.activity_id .. "/terminate"
    local logged
    for _, r in ipairs(sb:requests()) do
      if r.method == "POST" and r.target == path then logged = r end
    end
    assert.equal(200, logged.status) -- the sandbox verified the signature over the empty body
    assert.equal("", logged.body)
    assert.equal("0", logged.headers["content-length"])
    assert.is_nil(logged.headers["content-type"])
    -- the second terminate is refused by the server and reads back as terminated
    status, text = nginx.http("GET", n.url .. "/terminate?id=" .. act.activity_id)
    assert.equal(200, status)
    res = cjson.decode(text)
    assert.is_nil(res.err)
    assert.is_true(res.already)
    local log = n:log()
    assert.same({}, nginx.bad_log_lines(log))
    assert.is_nil(log:find("falling back to libcurl", 1, true)) -- cosockets carried both
  end)
end)
