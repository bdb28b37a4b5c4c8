--- `make demo`: start a local sandbox, run the campaign against it twice (the second run
-- shows that nothing is done twice), with a few injected server faults the client rides
-- out, then stop the sandbox.
local here = (arg and arg[0] or ""):match("^(.*)/examples/[^/]*$") or "."
package.path = here .. "/lua/?.lua;" .. here .. "/lua/?/init.lua;" .. package.path
package.cpath = here .. "/build/?.so;" .. package.cpath

local sandbox = require("wxpay.sandbox.process")
local cjson = require("cjson").new()

local lua = arg[-1] or "lua5.4"
print("Starting the sandbox (keys in build/sandbox-keys) ...")
local sb = sandbox.start{ root = here, mode = "combined" }
local ok, err = pcall(function()
  local cfg = here .. "/build/demo-config.json"
  local f = assert(io.open(cfg, "wb"))
  f:write(cjson.encode(sb.config))
  f:close()
  print("Sandbox at " .. sb.base_url .. "; client config in " .. cfg .. "\n")

  -- Server errors and a dropped connection on the way: the client retries the builds with
  -- the same Idempotency-Key and a fresh signature.
  local build = "/v3/marketing/partnerships/build"
  sb:fault{ { fault = "500", count = 1, path = build }, { fault = "drop", count = 1, path = build } }
  local cmd = ("%s %s/examples/campaign.lua --config %s --stock DEMO2026 --count 200 --terminate 5")
    :format(lua, here, cfg)
  local r = os.execute(cmd)
  assert(r == true or r == 0, "the campaign failed")

  print("\nRunning the same campaign again: every relation is already there, nothing is built twice.\n")
  r = os.execute(cmd .. " --quiet")
  assert(r == true or r == 0, "the re-run failed")
  local rels = sb:control("GET", "/relations")
  local established = 0
  for _, rel in ipairs(rels.relations) do
    if rel.state == "ESTABLISHED" then established = established + 1 end
  end
  print(("Sandbox holds %d relations for the campaign, %d established, %d terminated.\n")
    :format(rels.count, established, rels.count - established))
  assert(rels.count == 200 and established == 195, "exactly one relation per appid, five ended")
  local stats = sb:stats()
  print(("Sandbox saw %d API requests over %d API connections."):format(stats.requests, stats.api_connections))
end)
sb:stop()
print("Sandbox stopped.")
if not ok then
  io.stderr:write("demo failed: ", tostring(err), "\n")
  os.exit(1)
end
