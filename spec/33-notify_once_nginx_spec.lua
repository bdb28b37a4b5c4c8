-- Callbacks handled once in a real nginx (Debian's nginx + libnginx-mod-http-lua, LuaJIT):
-- 4 workers sharing `store = "ngx:NAME"`, one notification delivered 20 times at once, and
-- the handler (which takes a moment, like a database write) runs once. Then a repeat is
-- answered 204 without running it, and a handler failure is retried by the next delivery.
-- Also examples/openresty: its /metrics passes `promtool check metrics`.
local cjson = require("cjson").new()
local core = require("wxpay.core")
local nginx = require("spec.support.nginx")
local fake = require("spec.support.fake")
local helpers = require("spec.helpers")

local ROOT = io.popen("pwd"):read("*l")

local HANDLERS = [=[
local cjson = require("cjson.safe")
local wxpay = require("wxpay")
local M, client = {}, nil

function M.init(path)
  local f = assert(io.open(path))
  client = assert(wxpay.new(assert(cjson.decode(f:read("*a")))))
  f:close()
end

-- The handler stands for the application's own work: it counts its runs in a shared dict
-- and takes 300 ms, so the 20 deliveries overlap. `fail=1` in the query makes it fail.
function M.notify()
  ngx.req.read_body()
  local fail = ngx.var.arg_fail == "1"
  local lease, sleep = tonumber(ngx.var.arg_lease), tonumber(ngx.var.arg_sleep) or 0.3
  local answer, outcome = client.notify.handle(ngx.req.get_headers(), ngx.req.get_body_data() or "",
    function(n)
      ngx.shared.runs:incr(n.id, 1, 0)
      ngx.sleep(sleep)
      return not fail
    end, lease and { lease = lease } or nil)
  ngx.header["X-Outcome"] = outcome
  ngx.header["X-Worker"] = ngx.worker.pid()
  ngx.status = answer.status
  ngx.print(answer.body)
end

function M.runs()
  ngx.print(ngx.shared.runs:get(ngx.var.arg_id) or 0)
end

return M
]=]

local CONF = [[
load_module /usr/share/nginx/modules/ndk_http_module.so;
load_module /usr/share/nginx/modules/ngx_http_lua_module.so;
worker_processes 4;
pid logs/nginx.pid;
error_log logs/error.log warn;
env ONCE_CONFIG;
events { worker_connections 512; multi_accept on; }
http {
  access_log off;
  client_body_temp_path tmp/body; proxy_temp_path tmp/proxy; fastcgi_temp_path tmp/fastcgi;
  uwsgi_temp_path tmp/uwsgi; scgi_temp_path tmp/scgi;
  lua_package_path "{{dir}}/?.lua;{{root}}/lua/?.lua;{{root}}/lua/?/init.lua;;";
  lua_package_cpath "{{root}}/build-luajit/?.so;;";
  lua_shared_dict wxpay_store 1m;
  lua_shared_dict runs 1m;
  client_body_buffer_size 64k;
  init_by_lua_block { require("once_t").init(os.getenv("ONCE_CONFIG")) }
  server {
    listen {{listen}} reuseport;
    location = /up { return 200 "up"; }
    location = /notify { content_by_lua_block { require("once_t").notify() } }
    location = /runs { content_by_lua_block { require("once_t").runs() } }
  }
}
]]

-- A callback signed with the fake WeChat Pay public key (as spec/32 does).
local function callback(id)
  local k = fake.keys()
  local nonce = core.nonce(12)
  local body = cjson.encode{ id = id, create_time = "2026-01-01T00:00:00+08:00", event_type = "COUPON.USE",
    resource_type = "encrypt-resource", summary = "spec", resource = { original_type = "coupon",
      algorithm = "AEAD_AES_256_GCM", nonce = nonce, associated_data = "coupon",
      ciphertext = assert(core.aes_gcm_encrypt(fake.APIV3, nonce, "coupon", '{"coupon_code":"C1"}')) } }
  local ts, n = tostring(core.time()), core.nonce(32)
  local sig = k.signers[k.pub_key_id]:sign(ts .. "\n" .. n .. "\n" .. body .. "\n")
  return { "Wechatpay-Timestamp: " .. ts, "Wechatpay-Nonce: " .. n, "Wechatpay-Signature: " .. sig,
    "Wechatpay-Serial: " .. k.pub_key_id, "Content-Type: application/json" }, body
end

-- POST the callback `times` times at once (curl --parallel, one connection each); returns
-- a list of { status, outcome, worker }.
local function deliver(dir, url, headers, body, times)
  local bf = dir .. "/body.json"
  helpers.write(bf, body)
  local hs = {}
  for i, h in ipairs(headers) do hs[i] = "-H " .. helpers.q(h) end
  local one = "-X POST " .. table.concat(hs, " ") .. " --data-binary @" .. helpers.q(bf)
    .. " -o /dev/null -D - " .. helpers.q(url)
  local parts = {}
  for i = 1, times do parts[i] = (i > 1 and "--next " or "") .. one end
  local p = assert(io.popen(nginx.CLEAN_ENV .. "curl -s -m 30 --parallel --parallel-immediate --parallel-max "
    .. times .. " " .. table.concat(parts, " ") .. " 2>/dev/null"))
  local out = p:read("*a")
  p:close()
  local answers = {}
  for block in (out .. "\r\n\r\n"):gmatch("(HTTP/.-)\r\n\r\n") do
    answers[#answers + 1] = { status = tonumber(block:match("^HTTP/%S+ (%d+)")),
      outcome = block:match("[Xx]%-[Oo]utcome: (%S+)"), worker = block:match("[Xx]%-[Ww]orker: (%d+)") }
  end
  return answers
end

describe("callbacks handled once in nginx (4 workers, store = ngx:wxpay_store)", function()
  local server, dir

  setup(function()
    assert(io.open(nginx.NGINX), "nginx is not installed (make deps)")
    if not io.open(ROOT .. "/build-luajit/wxpay/core.so") then os.execute("make -s luajit >/dev/null 2>&1") end
    dir = helpers.tmpdir()
    helpers.write(dir .. "/once_t.lua", HANDLERS)
    local cfg = fake.config(nil, { store = "ngx:wxpay_store", sleep = fake.NIL, base_url = "https://127.0.0.1:1",
      backup_url = false })
    helpers.write(dir .. "/config.json", cjson.encode(cfg))
    local conf = CONF:gsub("{{dir}}", dir):gsub("{{root}}", ROOT)
    server = nginx.start(conf, "ONCE_CONFIG=" .. helpers.q(dir .. "/config.json"))
  end)

  teardown(function()
    if server then server:stop() end
    helpers.cleanup()
  end)

  local function runs(id)
    local _, body = nginx.http("GET", server.url .. "/runs?id=" .. id)
    return tonumber(body)
  end

  it("one notification delivered 20 times at once: the handler runs once", function()
    local id = "EV-nginx-" .. core.nonce(8)
    local headers, body = callback(id)
    local answers = deliver(dir, server.url .. "/notify", headers, body, 20)
    assert.equal(20, #answers)
    local by, workers, nworkers = {}, {}, 0
    for _, a in ipairs(answers) do
      by[a.outcome] = (by[a.outcome] or 0) + 1
      if a.worker and not workers[a.worker] then workers[a.worker], nworkers = true, nworkers + 1 end
      if a.outcome == "handled" or a.outcome == "duplicate" then
        assert.equal(204, a.status)
      else
        assert.equal("in_progress", a.outcome)
        assert.equal(500, a.status) -- WeChat Pay repeats it later
      end
    end
    assert.equal(1, by.handled)
    assert.equal(1, runs(id))
    assert.is_true(nworkers >= 2, "the deliveries reached " .. nworkers .. " worker(s)")
    -- WeChat Pay's later repeats: success, not run again
    local again = deliver(dir, server.url .. "/notify", headers, body, 4)
    for _, a in ipairs(again) do assert.same({ 204, "duplicate" }, { a.status, a.outcome }) end
    assert.equal(1, runs(id))
  end)

  it("a failing handler leaves the id unhandled for the next delivery", function()
    local id = "EV-nginx-fail-" .. core.nonce(8)
    local headers, body = callback(id)
    local first = deliver(dir, server.url .. "/notify?fail=1", headers, body, 1)[1]
    assert.same({ 500, "failed" }, { first.status, first.outcome })
    local second = deliver(dir, server.url .. "/notify", headers, body, 1)[1]
    assert.same({ 204, "handled" }, { second.status, second.outcome })
    assert.equal(2, runs(id))
  end)

  it("a handler slower than its lease keeps it (renewed): a delivery meanwhile does not run it again", function()
    local id = "EV-nginx-slow-" .. core.nonce(8)
    local headers, body = callback(id)
    -- lease 2 s (renewed every 0.67 s), the handler takes 4 s; the second delivery comes 3 s
    -- after the first, when an unrenewed lease would have expired
    local bf = dir .. "/slow.json"
    helpers.write(bf, body)
    local hs = {}
    for i, h in ipairs(headers) do hs[i] = "-H " .. helpers.q(h) end
    local one = "curl -s -m 30 -X POST " .. table.concat(hs, " ") .. " --data-binary @" .. helpers.q(bf)
      .. " -o /dev/null -D - " .. helpers.q(server.url .. "/notify?lease=2&sleep=4")
    local p = assert(io.popen(nginx.CLEAN_ENV .. "sh -c " .. helpers.q("(" .. one .. " > " .. helpers.q(dir
      .. "/first.txt") .. ") & sleep 3; " .. one .. "; wait") .. " 2>/dev/null"))
    local second = p:read("*a")
    p:close()
    local outcomes = {}
    for _, text in ipairs({ helpers.read(dir .. "/first.txt"), second }) do
      local o = text:match("[Xx]%-[Oo]utcome: (%S+)")
      outcomes[o or "none"] = (outcomes[o or "none"] or 0) + 1
    end
    -- one ran it; the other (whichever came second to nginx) found it held or done
    assert.equal(1, outcomes.handled, cjson.encode(outcomes))
    assert.equal(1, (outcomes.in_progress or 0) + (outcomes.duplicate or 0), cjson.encode(outcomes))
    assert.equal(1, runs(id))
  end)

  it("left no Lua errors in the error log", function()
    local log = server:log()
    assert.is_nil(log:find("[error]", 1, true), log)
  end)
end)

describe("examples/openresty: callbacks once and /metrics", function()
  local server, dir

  setup(function()
    dir = helpers.tmpdir()
    -- The fake keys verify callbacks without a download; the API is unreachable on purpose
    -- (every call ends in a network error, which the metrics count as well).
    local cfg = fake.config(nil, { sleep = fake.NIL, base_url = "https://localhost:1", backup_url = false,
      max_retries = 0 })
    helpers.write(dir .. "/config.json", cjson.encode(cfg))
    local conf = helpers.read(ROOT .. "/examples/openresty/nginx.conf"):gsub("{{root}}", ROOT)
      :gsub("{{ca_file}}", "/etc/ssl/certs/ca-certificates.crt")
    server = nginx.start(conf, "WXPAY_CONFIG=" .. helpers.q(dir .. "/config.json"))
  end)

  teardown(function()
    if server then server:stop() end
    helpers.cleanup()
  end)

  it("answers a callback 204, and its repeat 204 without handling it again", function()
    local headers, body = callback("EV-example-" .. core.nonce(8))
    local first = deliver(dir, server.url .. "/wxpay/notify", headers, body, 1)[1]
    local second = deliver(dir, server.url .. "/wxpay/notify", headers, body, 1)[1]
    assert.same({ 204, 204 }, { first.status, second.status })
    local tampered = deliver(dir, server.url .. "/wxpay/notify", headers, body:gsub("spec", "spek"), 1)[1]
    assert.equal(400, tampered.status)
  end)

  it("answers a refused callback (tampered body) with its status and no error in the log", function()
    local headers, body = callback("EV-example-bad-" .. core.nonce(8))
    local answers = deliver(dir, server.url .. "/wxpay/notify", headers, (body:gsub("spec", "spek")), 1)
    assert.equal(1, #answers)
    assert.is_true(answers[1].status >= 400 and answers[1].status < 500, tostring(answers[1].status))
    local log = server:log()
    assert.is_nil(log:find("[error]", 1, true), log)
  end)

  it("serves /metrics in a text promtool accepts", function()
    local status = nginx.http("POST", server.url .. "/admin/partnerships",
      cjson.encode{ appid = "wxmetricsexample", stock_id = "S1" })
    assert.equal(502, status)
    local mstatus, text = nginx.http("GET", server.url .. "/metrics")
    assert.equal(200, mstatus)
    assert.truthy(text:find('wxpay_requests_total{mchid="1900000001",method="POST",'
      .. 'route="/v3/marketing/partnerships/build",status="none",error="network"} 1', 1, true), text)
    if not io.open("/usr/bin/promtool") then
      pending("promtool is not installed (Debian package prometheus; tools/deps.sh installs it)")
      return
    end
    local path = dir .. "/metrics.txt"
    helpers.write(path, text)
    local p = assert(io.popen("/usr/bin/promtool check metrics < " .. helpers.q(path) .. " 2>&1; echo rc=$?"))
    local out = p:read("*a")
    p:close()
    assert.truthy(out:find("rc=0", 1, true), out)
  end)
end)
