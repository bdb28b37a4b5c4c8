--- `make bench`: prints the project's performance figures (no pass/fail).
package.path = "lua/?.lua;lua/?/init.lua;./?.lua;" .. package.path
package.cpath = "build/?.so;" .. package.cpath

local sections = { "bench.core" }
for _, extra in ipairs({ "bench.client", "bench.floor", "bench.instructions", "bench.openresty", "bench.reliability",
                         "bench.campaign", "bench.scale", "bench.store", "bench.fleet", "bench.download",
                         "bench.metrics" }) do
  local f = io.open(extra:gsub("%.", "/") .. ".lua")
  if f then f:close(); sections[#sections + 1] = extra end
end
local shared = {}
for _, name in ipairs(sections) do
  local r = require(name).run({ seconds = tonumber(os.getenv("BENCH_SECONDS")) or 3, shared = shared })
  shared[name] = r
  print()
end
