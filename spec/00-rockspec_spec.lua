-- The rockspec builds the same sources as CMake and lists every Lua module.
local h = require("spec.helpers")

local function load_rockspec()
  local env = {}
  local chunk
  local src = h.read("wxpay-scm-1.rockspec")
  if setfenv then
    chunk = assert(loadstring(src))
    setfenv(chunk, env)
  else
    chunk = assert(load(src, "rockspec", "t", env))
  end
  chunk()
  return env
end

local function lines(cmd)
  local out = {}
  for l in assert(h.sh(cmd)):gmatch("[^\n]+") do out[#out + 1] = l end
  table.sort(out)
  return out
end

describe("wxpay-scm-1.rockspec", function()
  local spec = load_rockspec()

  it("lists every Lua module under lua/ and nothing else", function()
    local want = {}
    for _, f in ipairs(lines("find lua -name '*.lua'")) do
      local mod = f:gsub("^lua/", ""):gsub("%.lua$", ""):gsub("/init$", ""):gsub("/", ".")
      want[#want + 1] = mod .. "=" .. f
    end
    local have = {}
    for mod, v in pairs(spec.build.modules) do
      if type(v) == "string" then have[#have + 1] = mod .. "=" .. v end
    end
    table.sort(want)
    table.sort(have)
    assert.same(want, have)
  end)

  it("builds wxpay.core from every C source CMake builds", function()
    local cmake = h.read("CMakeLists.txt"):match("set%(WXPAY_SOURCES ([^)]+)%)")
    local from_cmake = {}
    for f in cmake:gmatch("%S+") do from_cmake[#from_cmake + 1] = f end
    table.sort(from_cmake)
    local srcs = {}
    for _, s in ipairs(spec.build.modules["wxpay.core"].sources) do srcs[#srcs + 1] = s end
    table.sort(srcs)
    assert.same(from_cmake, srcs)
    assert.same(lines("ls csrc/*.c"), srcs)
  end)

  it("installs the sandbox and the wxpay command, and names its external dependencies", function()
    assert.equal("bin/wxpay-sandbox", spec.build.install.bin["wxpay-sandbox"])
    assert.equal("bin/wxpay", spec.build.install.bin["wxpay"])
    for _, path in pairs(spec.build.install.bin) do
      assert.truthy(h.read(path):find("^#!/usr/bin/env lua"), path .. " is a Lua script")
    end
    assert.truthy(spec.external_dependencies.OPENSSL)
    assert.truthy(spec.external_dependencies.CURL)
    assert.equal("builtin", spec.build.type)
  end)

  it("carries the version wxpay reports", function()
    local init = h.read("lua/wxpay/init.lua")
    assert.truthy(init:find("_VERSION", 1, true))
    assert.equal("scm-1", spec.version)
  end)
end)
