--- Shared helpers for the specs: files, the vectors, temp dirs and the openssl CLI.
local helpers = {}

helpers.VECTORS = "spec/vectors/"

--- Reads a whole file (binary).
function helpers.read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

--- Writes a whole file (binary).
function helpers.write(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

--- Decoded vectors.json, with a by-id index.
function helpers.vectors()
  local cjson = require("cjson").new()
  local v = cjson.decode(helpers.read(helpers.VECTORS .. "vectors.json"))
  v.by_id = {}
  for _, vec in ipairs(v.vectors) do v.by_id[vec.id] = vec end
  return v
end

--- Runs a shell command; returns its stdout and whether it exited 0.
function helpers.sh(cmd)
  local p = assert(io.popen(cmd .. " 2>/dev/null; echo \"__rc=$?\""))
  local out = p:read("*a")
  p:close()
  local body, rc = out:match("^(.-)__rc=(%d+)%s*$")
  return body, tonumber(rc) == 0
end

--- A fresh temporary directory, removed by helpers.cleanup().
local made = {}
function helpers.tmpdir()
  local out = assert(helpers.sh("mktemp -d /tmp/wxpay-spec.XXXXXX"))
  local dir = out:gsub("%s+$", "")
  made[#made + 1] = dir
  return dir
end

function helpers.cleanup()
  for _, d in ipairs(made) do os.execute("rm -rf '" .. d .. "'") end
  made = {}
end

--- An RSA key (PKCS#8 PEM), its public key and a self-signed certificate made now with the
-- openssl CLI (`opts.days`, default 30; `opts.bits`, default 2048). The key is the committed
-- spec/support/keys/<name>_<bits>.pem when there is one (key generation is the slow part,
-- a 4096-bit one takes seconds), else a fresh one. Returns a table of paths and PEM strings.
function helpers.openssl_keypair(dir, name, opts)
  opts = opts or {}
  local key, pub, crt = dir .. "/" .. name .. "_key.pem", dir .. "/" .. name .. "_pub.pem",
    dir .. "/" .. name .. "_cert.pem"
  local bits = opts.bits or 2048
  local fixture = ("spec/support/keys/%s_%d.pem"):format(name, bits)
  local f = io.open(fixture, "rb")
  if f then
    helpers.write(key, f:read("*a"))
    f:close()
  else
    assert(select(2, helpers.sh(("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:%d -out %s")
      :format(bits, key))), "openssl genpkey failed")
  end
  assert(select(2, helpers.sh(("openssl pkey -in %s -pubout -out %s"):format(key, pub))))
  assert(select(2, helpers.sh(("openssl req -new -x509 -key %s -subj /CN=%s -days %d -out %s")
    :format(key, name, opts.days or 30, crt))))
  local serial = helpers.sh(("openssl x509 -in %s -noout -serial"):format(crt)):match("serial=(%x+)")
  return { key = key, pub = pub, cert = crt, serial = serial:upper(),
           key_pem = helpers.read(key), pub_pem = helpers.read(pub), cert_pem = helpers.read(crt) }
end

--- A copy of a sandbox's client config with some keys changed (`false` removes a key).
function helpers.config_from(sb, changes)
  local c = {}
  for k, v in pairs(sb.config) do c[k] = v end
  for k, v in pairs(changes or {}) do
    if v == false then c[k] = nil else c[k] = v end
  end
  return c
end

--- How much longer timing bounds stretch in this run: `under_valgrind` under valgrind
-- (`make test-valgrind` sets WXPAY_UNDER_VALGRIND), 2 under ASan/UBSan, else 1.
function helpers.slowdown(under_valgrind)
  if os.getenv("WXPAY_UNDER_VALGRIND") then return under_valgrind end
  if os.getenv("WXPAY_UNDER_SANITIZER") then return 2 end
  return 1
end

--- Shell-quotes a string.
function helpers.q(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

return helpers
