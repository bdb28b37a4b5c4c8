-- The three rockspecs: wxpay (the library), wxpay-cli (the `wxpay` command) and wxpay-sandbox.
-- Each installs exactly its part of lua/ and bin/, declares exactly the rocks its code
-- requires, and the versioned ones carry the version wxpay reports.
local h = require("spec.helpers")

local ROCKS = { "wxpay", "wxpay-cli", "wxpay-sandbox" }

-- The rock that installs a file of the checkout.
local function part_of(path)
  if path:find("^lua/wxpay/cli/") or path == "bin/wxpay" then return "wxpay-cli" end
  if path:find("^lua/wxpay/sandbox/") or path == "bin/wxpay-sandbox" then return "wxpay-sandbox" end
  return "wxpay"
end

-- Rocks (as luarocks.org names them) that provide the modules we do not write ourselves.
local PROVIDERS = {
  { "^cjson$", "lua-cjson" }, { "^cjson%.", "lua-cjson" },
  { "^cqueues$", "cqueues" }, { "^cqueues%.", "cqueues" },
  { "^openssl$", "luaossl" }, { "^openssl%.", "luaossl" },
  { "^luasql%.sqlite3$", "luasql-sqlite3" },
  { "^socket$", "luasocket" }, { "^socket%.", "luasocket" },
}

-- Modules loaded only through `pcall(require, ...)` that a rock does not declare, and why
-- that is fine. Anything else a rock requires must be a declared dependency.
local OPTIONAL = {
  socket = "luasocket: the sandbox clock has milliseconds with it, whole seconds without",
  ["wxpay.sandbox"] = "the wxpay-sandbox rock: without it `wxpay sandbox` says how to install it",
  redis = "lua-redis, needed only with store = \"redis://…\" in plain Lua (the store says which package)",
  ["resty.redis"] = "lua-resty-redis, needed only with store = \"redis://…\" under OpenResty",
  ["nginx.redis"] = "the same module under the name Debian's lua-nginx-redis installs it",
}

local function load_rockspec(file)
  local env = {}
  local src = h.read(file)
  local chunk
  if setfenv then
    chunk = assert(loadstring(src, file))
    setfenv(chunk, env)
  else
    chunk = assert(load(src, file, "t", env))
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

local function sorted_keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  table.sort(out)
  return out
end

local function module_name(path)
  return (path:gsub("^lua/", ""):gsub("%.lua$", ""):gsub("/init$", ""):gsub("/", "."))
end

-- Every literal `require("x")`, `require "x"`, `require('x')` and `pcall(require, "x")` in
-- a Lua source, skipping whole-line and block comments. A require of anything but a string
-- literal is reported as `dynamic` (it cannot be checked).
local function requires_in(src)
  src = src:gsub("%-%-%[(=*)%[.-%]%1%]", "")
  local found = {}
  local n = 0
  for line in (src .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    if not line:find("^%s*%-%-") then
      for name in line:gmatch("pcall%(%s*require%s*,%s*[\"']([^\"']+)[\"']") do
        found[#found + 1] = { name = name, guarded = true, line = n }
      end
      for call in line:gmatch("%f[%w_]require%s*(%b())") do
        local name = call:match("^%(%s*[\"']([^\"']+)[\"']%s*%)$")
        found[#found + 1] = { name = name or "dynamic " .. call, line = n }
      end
      for name in line:gmatch("%f[%w_]require%s*[\"']([^\"']+)[\"']") do
        found[#found + 1] = { name = name, line = n }
      end
    end
  end
  return found
end

local function dependency_names(spec)
  local names = {}
  for _, d in ipairs(spec.dependencies or {}) do names[d:match("^%s*([%w_.%-]+)")] = d end
  return names
end

local rockspecs, version = {}, nil
setup(function()
  for _, rock in ipairs(ROCKS) do rockspecs[rock] = load_rockspec(rock .. "-scm-1.rockspec") end
  version = dofile("lua/wxpay/init.lua")._VERSION
end)

describe("the rockspecs", function()
  it("are the scm and versioned rockspec of each of the three rocks, and nothing else", function()
    local want = {}
    for _, rock in ipairs(ROCKS) do
      want[#want + 1] = rock .. "-scm-1.rockspec"
      want[#want + 1] = rock .. "-" .. version .. "-1.rockspec"
    end
    table.sort(want)
    assert.same(want, lines("ls *.rockspec"))
    for _, rock in ipairs(ROCKS) do assert.equal(rock, rockspecs[rock].package) end
  end)

  it("install every Lua module under lua/ and every script in bin/ from exactly one rock, its own", function()
    local want, have = {}, {}
    for _, f in ipairs(lines("find lua -name '*.lua'")) do
      want[#want + 1] = part_of(f) .. ": " .. module_name(f) .. " = " .. f
    end
    for _, f in ipairs(lines("ls bin/*")) do
      want[#want + 1] = part_of(f) .. ": bin " .. f:gsub("^bin/", "") .. " = " .. f
    end
    for _, rock in ipairs(ROCKS) do
      local spec = rockspecs[rock]
      for mod, v in pairs(spec.build.install.lua) do have[#have + 1] = rock .. ": " .. mod .. " = " .. v end
      for name, v in pairs(spec.build.install.bin or {}) do
        have[#have + 1] = rock .. ": bin " .. name .. " = " .. v
      end
    end
    table.sort(want)
    table.sort(have)
    assert.same(want, have)
  end)

  it("build wxpay.core in the library rock only, from every C source CMake builds", function()
    for _, rock in ipairs(ROCKS) do
      -- luarocks' builtin type installs all of lua/, whatever the rockspec lists.
      assert.not_equal("builtin", rockspecs[rock].build.type, rock)
      local lib = rockspecs[rock].build.install.lib
      assert.same(rock == "wxpay" and { ["wxpay.core"] = "build/rock/core.so" } or nil, lib, rock)
    end
    local cmake = h.read("CMakeLists.txt"):match("set%(WXPAY_SOURCES ([^)]+)%)")
    local from_cmake = {}
    for f in cmake:gmatch("%S+") do from_cmake[#from_cmake + 1] = f end
    table.sort(from_cmake)
    local srcs = {}
    for f in rockspecs.wxpay.build.build_command:gmatch("csrc/%S+") do srcs[#srcs + 1] = f end
    table.sort(srcs)
    assert.same(from_cmake, srcs)
    assert.same(lines("ls csrc/*.c"), srcs)
    assert.truthy(rockspecs.wxpay.external_dependencies.OPENSSL)
    assert.truthy(rockspecs.wxpay.external_dependencies.CURL)
  end)

  it("declare exactly the rocks their modules and scripts require", function()
    local owner = {} -- module -> rock, for our own modules
    for _, rock in ipairs(ROCKS) do
      local install = rockspecs[rock].build.install
      for mod in pairs(install.lua) do owner[mod] = rock end
      for mod in pairs(install.lib or {}) do owner[mod] = rock end
    end
    local function provider(name)
      if owner[name] then return owner[name] end
      for _, p in ipairs(PROVIDERS) do
        if name:find(p[1]) then return p[2] end
      end
    end
    local problems, optional_seen = {}, {}
    for _, rock in ipairs(ROCKS) do
      local spec = rockspecs[rock]
      local declared, used = dependency_names(spec), {}
      assert.truthy(declared.lua, rock .. " names the Lua versions")
      local files = {}
      for _, f in pairs(spec.build.install.lua) do files[#files + 1] = f end
      for _, f in pairs(spec.build.install.bin or {}) do files[#files + 1] = f end
      table.sort(files)
      for _, f in ipairs(files) do
        for _, r in ipairs(requires_in(h.read(f))) do
          local from = provider(r.name)
          local where = rock .. ": " .. f .. ":" .. r.line .. " requires " .. r.name
          if from == rock or (from and declared[from]) then
            used[from] = true
          elseif r.guarded and OPTIONAL[r.name] then
            optional_seen[r.name] = true
          elseif r.name:find("^dynamic ") then
            problems[#problems + 1] = where .. ": a computed name cannot be checked; require a literal"
          elseif not from then
            problems[#problems + 1] = where .. ": no rock known to provide it (add it to PROVIDERS)"
          else
            problems[#problems + 1] = where .. ", from " .. from .. ", which " .. rock .. " does not declare"
          end
        end
      end
      for _, name in ipairs(sorted_keys(declared)) do
        if name ~= "lua" and not used[name] then
          problems[#problems + 1] = rock .. " declares " .. name .. " but requires nothing from it"
        end
      end
    end
    for _, name in ipairs(sorted_keys(OPTIONAL)) do
      if not optional_seen[name] then
        problems[#problems + 1] = "OPTIONAL lists " .. name .. " but no rock pcall-requires it undeclared"
      end
    end
    assert.same({}, problems)
  end)

  it("find each require call, literal or not, outside comments", function()
    local found = requires_in(table.concat({
      'local a = require("a.b")', "local b = require 'b'", "local c = require('c')",
      'local ok, d = pcall(require, "d")', "-- require('comment')", "--[[ require('block') ]]",
      "local e = require(name)", 'local s = "is required" .. x',
    }, "\n"))
    local names = {}
    for _, r in ipairs(found) do names[#names + 1] = r.name .. (r.guarded and "?" or "") end
    assert.same({ "a.b", "b", "c", "d?", "dynamic (name)" }, names)
  end)

  it("install bin scripts that luarocks wraps for the interpreter of the tree", function()
    -- luarocks wraps a bin script in a shell script that runs the tree's interpreter when
    -- that interpreter can load it; the shebang only counts when the script is run as is.
    for _, rock in ipairs(ROCKS) do
      local spec = rockspecs[rock]
      assert.is_not_false(spec.deploy and spec.deploy.wrap_bin_scripts, rock)
      for _, path in pairs(spec.build.install.bin or {}) do
        assert.equal("#!/usr/bin/env lua", h.read(path):match("^[^\n]*"), path)
        assert.truthy(loadfile(path), path .. " loads on " .. _VERSION)
      end
    end
  end)

  it("carry the version wxpay reports, and agree with the scm rockspecs but for version and source", function()
    assert.truthy(version:find("^%d+%.%d+%.%d+$"), version)
    for _, rock in ipairs(ROCKS) do
      local scm = load_rockspec(rock .. "-scm-1.rockspec")
      local tagged = load_rockspec(rock .. "-" .. version .. "-1.rockspec")
      assert.equal("scm-1", scm.version)
      assert.equal(version .. "-1", tagged.version)
      -- `make dist` of the tag makes this archive; luarocks builds it offline.
      assert.same({ url = "wxpay-" .. version .. ".tar.gz", dir = "wxpay-" .. version }, tagged.source)
      local deps = {}
      for i, d in ipairs(tagged.dependencies) do
        if d:find("^wxpay[%s=<>~]") or d == "wxpay" then
          assert.equal("wxpay == " .. version, d, rock)
          d = "wxpay"
        end
        deps[i] = d
      end
      tagged.dependencies = deps
      tagged.version, tagged.source, scm.version, scm.source = nil, nil, nil, nil
      assert.same(scm, tagged)
    end
  end)
end)

describe("the wxpay command without the wxpay-sandbox rock", function()
  it("says which rock `wxpay sandbox` needs", function()
    local cli = require("wxpay.cli")
    local err = { text = "" }
    function err.write(self, ...) self.text = self.text .. table.concat({ ... }) end
    local saved_path, saved_cpath = package.path, package.cpath
    package.loaded["wxpay.sandbox"] = nil
    package.path, package.cpath = "/nonexistent/?.lua", "/nonexistent/?.so"
    local ok, rc = pcall(cli.main, { "sandbox", "--help" }, { out = err, err = err })
    package.path, package.cpath = saved_path, saved_cpath
    assert.truthy(ok, tostring(rc))
    assert.equal(1, rc)
    assert.truthy(err.text:find("luarocks install wxpay-sandbox", 1, true), err.text)
  end)
end)

-- The README's install blocks, as a new user runs them on a fresh Debian: every package they
-- name is one `make deps` installs (tools/deps.sh: what CI builds and tests with), a C compiler
-- among them (luarocks compiles the core and Debian's luarocks does not pull one in), and a
-- block that installs a rock's commands into a --tree also puts that tree on the PATH.
describe("the README's install commands", function()
  local readme = h.read("README.md")
  local deps = {}
  for p in h.read("tools/deps.sh"):match('PKGS="([^"]*)"'):gmatch("%S+") do deps[p] = true end
  local blocks = {}
  for b in readme:gmatch("```sh\n(.-)```") do
    b = b:gsub("\\\n", " ")
    if b:find("luarocks", 1, true) and b:find("apt%-get install") then blocks[#blocks + 1] = b end
  end

  it("name only packages `make deps` installs, a compiler among them", function()
    assert.is_true(#blocks >= 2)
    for _, b in ipairs(blocks) do
      local pkgs = b:match("apt%-get install([^\n]*)")
      local compiler = false
      for p in pkgs:gmatch("%S+") do
        assert.is_true(deps[p] or p:sub(1, 1) == "-", "README installs " .. p .. ", tools/deps.sh does not")
        if p == "gcc" or p == "build-essential" then compiler = true end
      end
      assert.is_true(compiler, "no C compiler in: " .. pkgs)
    end
  end)

  it("put the tree they install the commands into on the PATH", function()
    for _, b in ipairs(blocks) do
      for lv in b:gmatch("luarocks (%-%-lua%-version=[%d.]+) %-%-tree %S+ make[^\n]*wxpay%-cli") do
        local esc = ('eval "$(luarocks ' .. lv .. " --tree "):gsub("%p", "%%%0")
        assert.truthy(b:find(esc .. "%S+ path%)\""),
          "no eval \"$(luarocks " .. lv .. " --tree … path)\" in:\n" .. b)
      end
    end
  end)
end)

describe("bin/wxpay from a checkout", function()
  it("loads the core built for the interpreter running it (build-luajit/ under LuaJIT)", function()
    local runs = { { "lua5.4", "build/wxpay/core.so" }, { "luajit", "build-luajit/wxpay/core.so" } }
    local tried = 0
    for _, r in ipairs(runs) do
      local found = os.execute("command -v " .. r[1] .. " >/dev/null")
      if io.open(r[2]) and (found == true or found == 0) then
        tried = tried + 1
        local out = h.sh(r[1] .. " bin/wxpay --version 2>&1")
        assert.truthy(out:match("^wxpay %d"), r[1] .. ": " .. out)
      end
    end
    assert.is_true(tried > 0, "no build to run bin/wxpay with (make, make luajit)")
  end)
end)
