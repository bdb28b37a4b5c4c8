--- `wxpay issue plugin|h5`: the signed attributes of the mini-program 发券插件, or an H5发券
-- URL, for a stock and a user, through `client.issue` (the config needs `apiv2_key`, which is
-- never printed). Nothing is sent to WeChat Pay.
-- @module wxpay.cli.issue

local output = require("wxpay.cli.output")

local M = {}

M.HELP = [[
  issue plugin --stock ID[,ID...] [--out-request-no N] [--coupon-code C]
               [--customize-send-time T] [--send-coupon-merchant M]
      Print the signed attributes of the mini-program <send-coupon> component as JSON
      (send_coupon_params, send_coupon_merchant, sign): at most 10 stocks, each with a
      generated out_request_no unless --out-request-no is given (one stock only).
  issue h5 --stock ID --openid OPENID [--out-request-no N] [--coupon-code C]
               [--customize-send-time T] [--send-coupon-merchant M] [--fragment F]
               [--output table|csv|json]
      Print the H5发券 URL for that user (with --output json, the URL and out_request_no).
      Both need apiv2_key in the configuration.
]]

local function item(o, stock_id)
  return { stock_id = stock_id, out_request_no = o.out_request_no, coupon_code = o.coupon_code,
           customize_send_time = o.customize_send_time }
end

local function plugin(o)
  local items = {}
  for id in o.stock:gmatch("[^,]+") do items[#items + 1] = item(o, id) end
  if #items > 1 and (o.out_request_no or o.coupon_code) then
    o.err:write("wxpay: --out-request-no and --coupon-code go with one --stock only\n")
    return 2
  end
  local attrs, err = o.client.issue.plugin_params{ send_coupon_params = items,
    send_coupon_merchant = o.send_coupon_merchant }
  if not attrs then o.err:write("wxpay: ", output.message(err), "\n"); return 1 end
  o.out:write(require("cjson").new().encode(attrs), "\n")
  return 0
end

local function h5(o)
  if not o.openid then o.err:write("wxpay: issue h5 needs --openid\n"); return 2 end
  local p = item(o, o.stock)
  p.open_id, p.send_coupon_merchant, p.fragment = o.openid, o.send_coupon_merchant, o.fragment
  local url, err, meta = o.client.issue.h5_url(p)
  if not url then o.err:write("wxpay: ", output.message(err), "\n"); return 1 end
  if o.format == "table" then
    o.out:write(url, "\n")
  else
    o.out:write(output.one({ url = url, out_request_no = meta.out_request_no },
      { "url", "out_request_no" }, o.format))
  end
  return 0
end

--- Run `issue plugin` or `issue h5`.
-- @tparam string cmd "plugin" or "h5"
-- @tparam table o options (`stock`, `openid`, `out_request_no`, `coupon_code`,
--   `customize_send_time`, `send_coupon_merchant`, `fragment`, `format`), `client`, `out`, `err`
-- @treturn int exit status
function M.run(cmd, o)
  if cmd ~= "plugin" and cmd ~= "h5" then
    o.err:write("wxpay: unknown issue command: ", tostring(cmd), " (plugin or h5)\n")
    return 2
  end
  if not o.stock then o.err:write("wxpay: issue ", cmd, " needs --stock\n"); return 2 end
  if cmd == "plugin" then return plugin(o) end
  return h5(o)
end

return M
