--- Launch a 商家券 (merchant coupon) stock: upload its logo, create the stock, grant it to
-- mini-programs, set the callback URL, issue a few coupons through the mini-program 发券插件
-- (signed attributes from client.issue, taken by simulated users; a repeat answers
-- DUPREQUEST) and receive COUPON.SEND for each, redeem one through its decrypted jump code,
-- raise the budget, and print a summary.
--
--   lua5.4 examples/launch.lua (--config sandbox.json | --sandbox) --logo examples/logo.png
--          --appids wx1111111111111111,wx2222222222222222 [--claims N] [--raise N] [--name TEXT]
--
-- `--sandbox` starts a local sandbox for the run and stops it afterwards (`make demo`).
-- `--config` is a JSON file holding a wxpay.new config, or the sandbox's startup line (its
-- "config" member is used, and its "control_url" lets the script simulate the users who
-- take the coupons). Users can only be simulated against the sandbox: against the live API
-- that step and the callback listener are skipped. The config needs `apiv2_key` (the
-- sandbox's startup config has one) to sign the plugin's attributes. Re-running is safe:
-- grants already present are counted as such, and each grant carries an Idempotency-Key
-- derived from the stock and the appid.

-- Run from a checkout without installing: use its lua/ and build/ when they exist.
local script = arg and arg[0] or ""
local here = script:match("^(.*)/examples/[^/]*$") or (script:match("^examples/[^/]*$") and ".")
if here then
  package.path = here .. "/lua/?.lua;" .. here .. "/lua/?/init.lua;" .. package.path
  package.cpath = here .. "/build/?.so;" .. package.cpath
end

local wxpay = require("wxpay")
local cjson = require("cjson").new()
local socket = require("socket")
local ssl = require("ssl")
local https = require("ssl.https")
local ltn12 = require("ltn12")

local function usage(msg)
  io.stderr:write("launch: ", msg, "\n",
    "usage: launch.lua (--config FILE | --sandbox) --logo FILE --appids ID[,ID…]\n",
    "                  [--claims N] [--raise N] [--name TEXT]\n")
  os.exit(2)
end

local opts = { claims = 3, raise = 100, name = "开业满100减10" }
local i = 1
while i <= #arg do
  local a, v = arg[i], arg[i + 1]
  if a == "--sandbox" then
    opts.sandbox, opts.config = true, "(sandbox)"
    i = i + 1
  else
    local key = ({ ["--config"] = "config", ["--logo"] = "logo", ["--appids"] = "appids",
                   ["--claims"] = "claims", ["--raise"] = "raise", ["--name"] = "name" })[a]
    if not key then usage("unknown option " .. tostring(a)) end
    if v == nil then usage(a .. " needs a value") end
    opts[key] = v
    i = i + 2
  end
end
for _, name in ipairs({ "logo", "appids" }) do
  if not opts[name] then usage("--" .. name .. " is required") end
end
opts.claims, opts.raise = tonumber(opts.claims), tonumber(opts.raise)
if not opts.claims or not opts.raise or opts.raise < 1 then usage("--claims and --raise take numbers") end

if not opts.config then usage("--config or --sandbox is required") end

local function fail(...)
  error(table.concat({ ... }), 0)
end

local startup, sb
if opts.sandbox then
  sb = require("wxpay.sandbox.process").start{ root = here or ".", mode = "combined" }
  startup = { config = sb.config, control_url = sb.control_url, dir = sb.dir }
  print("Sandbox at " .. sb.base_url)
else
  local f = io.open(opts.config, "rb") or usage("cannot read " .. opts.config)
  startup = cjson.decode(f:read("*a"))
  f:close()
end
local config = startup.config or startup
local control_url = startup.control_url -- only the sandbox has one

local appids = {}
for id in opts.appids:gmatch("[^,%s]+") do appids[#appids + 1] = id end

local client

local function rfc3339(t)
  return os.date("!%Y-%m-%dT%H:%M:%S+08:00", t + 8 * 3600)
end

-- A POST to the sandbox's control API, verified against the sandbox CA.
local function control(path, body)
  local out = {}
  local text = cjson.encode(body)
  local _, status = https.request{ url = control_url .. path, method = "POST", cafile = config.ca_file,
    verify = "peer", source = ltn12.source.string(text), sink = ltn12.sink.table(out),
    headers = { ["content-type"] = "application/json", ["content-length"] = #text } }
  local ok, decoded = pcall(cjson.decode, table.concat(out))
  return ok and decoded or nil, status
end

-- The callback listener: HTTPS on 127.0.0.1 with the sandbox's server certificate (notify
-- URLs must be https://; the sandbox checks the certificate against its CA).
local function listen()
  local srv = assert(socket.bind("127.0.0.1", 0))
  srv:settimeout(10)
  local _, port = srv:getsockname()
  return srv, "https://127.0.0.1:" .. port .. "/wxpay/coupons"
end

-- Accept one callback, parse it with client.notify.parse, answer as parse says.
local function receive(srv)
  local raw = assert(srv:accept())
  raw:settimeout(5)
  local conn = assert(ssl.wrap(raw, { mode = "server", protocol = "any",
    certificate = startup.dir .. "/server_cert.pem", key = startup.dir .. "/server_key.pem" }))
  assert(conn:dohandshake())
  assert(conn:receive("*l"))
  local headers, length = {}, 0
  while true do
    local line = assert(conn:receive("*l"))
    if line == "" then break end
    local name, value = line:match("^([^:]+):%s*(.-)%s*$")
    headers[name] = value
    if name:lower() == "content-length" then length = tonumber(value) end
  end
  local body = length > 0 and assert(conn:receive(length)) or ""
  local n, err, meta = client.notify.parse(headers, body)
  local answer = n and meta.answer or err.answer
  conn:send(string.format("HTTP/1.1 %d X\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
                          answer.status, #answer.body, answer.body))
  conn:close()
  return n, err
end

local function main()
  local cerr
  client, cerr = wxpay.new(config)
  if not client then fail(tostring(cerr)) end

  -- 1. The logo, through the marketing image upload.
  local logo, uerr = client.media.upload(opts.logo, { endpoint = "marketing" })
  if not logo then fail("logo upload: ", tostring(uerr)) end
  print("Logo uploaded: " .. logo.media_url)

  -- 2. The stock, with the logo.
  local now = os.time()
  local stock, serr = client.busifavor.stocks.create{
    stock_name = opts.name, goods_name = "全场通用", stock_type = "NORMAL", coupon_code_mode = "WECHATPAY_MODE",
    coupon_use_rule = {
      coupon_available_time = { available_begin_time = rfc3339(now), available_end_time = rfc3339(now + 30 * 86400) },
      fixed_normal_coupon = { discount_amount = 1000, transaction_minimum = 10000 },
      -- 立即使用 opens this mini-program page, with the coupon's jump code appended
      use_method = "MINI_PROGRAMS", mini_programs_appid = appids[1],
      mini_programs_path = "pages/coupon/use",
    },
    stock_send_rule = { max_coupons = 1000, max_coupons_per_user = 1 },
    display_pattern_info = { merchant_logo_url = logo.media_url },
    notify_config = { notify_appid = appids[1] },
  }
  if not stock then fail("create stock: ", tostring(serr)) end
  print("Stock created: " .. stock.stock_id)

  -- 3. Grant it to every mini-program.
  local grants = { built = 0, already = 0, failed = 0 }
  local authorized = { business_type = "BUSIFAVOR_STOCK", stock_id = stock.stock_id }
  for _, appid in ipairs(appids) do
    local rel, berr = client.partnerships.build({ partner = { type = "APPID", appid = appid },
      authorized_data = authorized }, { idempotency_key = (stock.stock_id .. "-" .. appid):sub(1, 48) })
    if rel then
      grants.built = grants.built + 1
    elseif berr.kind == "api" and berr.code == "INVALID_REQUEST" and berr.status == 400 then
      grants.already = grants.already + 1
    else
      grants.failed = grants.failed + 1
      io.stderr:write("launch: grant to ", appid, ": ", tostring(berr), "\n")
    end
  end
  print(("Granted to %d mini-programs (%d new, %d already, %d failed)"):format(#appids, grants.built,
    grants.already, grants.failed))

  -- 4. Issue through the mini-program 发券插件: the server signs the component's attributes
  -- (client.issue.plugin_params), the user taps, WeChat issues and sends COUPON.SEND. The
  -- sandbox plays the plugin and the users (sandbox only).
  local callbacks, redeemed = 0, nil
  if not control_url then
    print("Not pointed at the sandbox: users taking coupons cannot be simulated against the live API; skipped.")
  else
    local srv, url = listen()
    local ok, err = pcall(function()
      assert(client.busifavor.callbacks.set{ notify_url = url })
      assert(assert(client.busifavor.callbacks.get()).notify_url == url)
      local first
      for n = 1, opts.claims do
        local openid = ("oLaunchUser%04d"):format(n)
        -- One request number per user, made on the server (docs/issuing.md: the replay warning).
        local attrs, ierr = client.issue.plugin_params{ send_coupon_params = {
          { stock_id = stock.stock_id, out_request_no = ("%s_%04d"):format(stock.stock_id, n) } } }
        assert(attrs, ierr and tostring(ierr))
        local res, status = control("/issue/plugin", { attributes = attrs, openid = openid, appid = appids[1] })
        assert(status == 200 and res.errcode == "OK", "the plugin answered " .. tostring(status))
        local result = res.send_coupon_result[1]
        assert(result.code == "SUCCESS", "issue: " .. tostring(result.code) .. " " .. tostring(result.message))
        local note, perr = receive(srv)
        assert(note, perr and tostring(perr))
        local ev = assert(client.busifavor.send_event(note))
        assert(ev.stock_id == stock.stock_id and ev.coupon_code == result.coupon_code and ev.openid == openid)
        assert(ev.send_channel == "BUSICOUPON_SEND_CHANNEL_MINIAPP")
        print(("  COUPON.SEND: coupon %s to %s (%s)"):format(ev.coupon_code, ev.openid, ev.send_channel))
        callbacks = callbacks + 1
        if n == 1 then first = { attrs = attrs, openid = openid, code = result.coupon_code } end
      end
      if first then
        -- The same tap again: DUPREQUEST, the same coupon, nothing issued twice.
        local again = control("/issue/plugin", { attributes = first.attrs, openid = first.openid, appid = appids[1] })
        local r = again.send_coupon_result[1]
        assert(r.code == "DUPREQUEST" and r.coupon_code == first.code, "a repeat answers DUPREQUEST")
        print("  again for " .. first.openid .. ": " .. r.code)
        -- The user taps 立即使用: the page gets the jump parameters; the server decrypts the
        -- coupon_code (APIv3 key, AAD COUPON_CODE) and redeems it.
        local jump = control("/busifavor/jump_code", { coupon_code = first.code })
        local q = {}
        for k, v in jump.query:gmatch("([^&=]+)=([^&]*)") do q[k] = v end
        local code, jerr = client.busifavor.decrypt_jump_code(q)
        assert(code == first.code, jerr and tostring(jerr))
        assert(client.busifavor.coupons.use{ coupon_code = code, stock_id = q.stock_id, appid = appids[1],
          use_time = rfc3339(os.time()), openid = first.openid })
        redeemed = code
        print("  redeemed via the jump code: " .. code)
      end
    end)
    srv:close()
    if not ok then fail("issuing: ", tostring(err)) end
  end

  -- 5. Raise the budget: a compare-and-set on the value just read.
  local before = assert(client.busifavor.stocks.get(stock.stock_id))
  local current = before.stock_send_rule.max_coupons
  local raised, rerr = client.busifavor.stocks.update_budget(stock.stock_id,
    { target_max_coupons = current + opts.raise, current_max_coupons = current })
  if not raised then fail("update_budget: ", tostring(rerr)) end
  local after = assert(client.busifavor.stocks.get(stock.stock_id))

  print("\nSummary")
  print("  stock id            " .. stock.stock_id)
  print(("  grants              %d made, %d already present, %d failed"):format(grants.built, grants.already,
    grants.failed))
  print(("  COUPON.SEND         %d received"):format(callbacks))
  print("  redeemed (jump code) " .. tostring(redeemed or "-"))
  print(("  budget (max_coupons) %d -> %d"):format(current, after.stock_send_rule.max_coupons))
  if control_url then
    print(("  coupons sent        %d"):format(after.send_count_information.total_send_num))
  end

  -- What the summary shows is what happened.
  assert(grants.failed == 0 and grants.built + grants.already == #appids, "every appid granted")
  assert(after.stock_send_rule.max_coupons == current + opts.raise and raised.max_coupons == current + opts.raise,
    "budget raised")
  assert(after.display_pattern_info.merchant_logo_url == logo.media_url, "the stock shows the uploaded logo")
  if control_url then
    assert(callbacks == opts.claims, "one COUPON.SEND per claim")
    assert(after.send_count_information.total_send_num == opts.claims, "one coupon per claim")
    assert(opts.claims == 0 or redeemed, "one coupon redeemed through its jump code")
  end

  -- 6. A 支付有礼 activity over the stock, and a simulated payment that issues its prize.
  dofile((here or ".") .. "/examples/launch_paygift.lua"){ client = client, mchid = config.mchid, stock = after,
    image_url = logo.media_url, control = control_url and control, listen = listen, receive = receive }
end

local ok, err = pcall(main)
if sb then sb:stop() end
if not ok then
  io.stderr:write("launch: ", tostring(err), "\n")
  os.exit(1)
end
