--- Test keys and certificates for the sandbox, generated with luaossl and kept as PEM
-- files in a state directory so that later starts (specs) reuse them instead of paying
-- for RSA key generation again.
local pkey = require("openssl.pkey")
local x509 = require("openssl.x509")
local x509_name = require("openssl.x509.name")
local altname = require("openssl.x509.altname")
local extension = require("openssl.x509.extension")
local bignum = require("openssl.bignum")

local json = require("wxpay.sandbox.json")
local util = require("wxpay.sandbox.util")

local M = {}

M.MCHID = "1900000001"

-- Bumped when the layout changes, so an old cache directory is regenerated.
local MANIFEST_VERSION = 1
local DAY = 86400

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local data = f:read("a")
  f:close()
  return data
end

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- Write via a temporary name and rename, so a reader never sees half a file. Lua cannot
-- set a file's mode, so a shell with umask 077 creates it: 0600 from its first byte, and
-- the 0700 directory (see M.mkdir) keeps it private even before that.
local function write_file(path, data)
  local tmp = path .. ".tmp" .. util.random_hex(8)
  local f = assert(io.popen("umask 077 && cat > " .. shell_quote(tmp), "w"))
  assert(f:write(data))
  assert(f:close(), "cannot write " .. tmp)
  assert(os.rename(tmp, path))
end

-- Group or others may enter or read `dir` (ls -ld: "drwxr-x---" and the like).
local function shared(dir)
  local p = io.popen("ls -ld -- " .. shell_quote(dir) .. " 2>/dev/null")
  local line = p:read("l") or ""
  p:close()
  return line:sub(5, 10):find("[^-]") ~= nil
end

local function is_empty_or_ours(dir)
  local p = io.popen("ls -A -- " .. shell_quote(dir) .. " 2>/dev/null")
  local names = p:read("a")
  p:close()
  return names == "" or ("\n" .. names):find("\nmanifest%.json\n") ~= nil
end

--- Create a private (0700) state directory and its parents, or make an existing one private.
-- The directory is 0700 before any key is written into it. An existing one that others can
-- read is tightened to 0700 when it is empty or already a sandbox state directory; one that
-- holds anything else is refused rather than changed.
-- @tparam string dir
-- @return true, or nil and an error message
function M.mkdir(dir)
  local q = shell_quote(dir)
  if not os.execute("test -d " .. q) then
    if not os.execute("mkdir -p -m 700 -- " .. q) then return nil, "cannot create directory " .. dir end
    return true
  end
  if not shared(dir) then return true end
  if not is_empty_or_ours(dir) then
    return nil, "state directory " .. dir .. " is readable by others and holds other files: "
      .. "give a new or private (chmod 700) directory"
  end
  if not os.execute("chmod 700 -- " .. q) then return nil, "cannot make " .. dir .. " private" end
  return true
end

--- A fresh private (0700) temporary directory under $TMPDIR (default /tmp), by mktemp -d.
-- @treturn string path
function M.tempdir()
  local p = assert(io.popen('mktemp -d "${TMPDIR:-/tmp}/wxpay-sandbox.XXXXXX"'))
  local dir = p:read("l")
  p:close()
  assert(dir and dir ~= "", "cannot create a temporary directory")
  return dir
end

--- Remove a directory made by `tempdir` and everything in it (the keys).
-- @tparam string dir
function M.remove_tempdir(dir)
  os.execute("rm -rf -- " .. shell_quote(dir))
end

local function rsa_key()
  return pkey.new{ type = "RSA", bits = 2048 }
end

-- 40 upper-case hex digits whose first digit is 1..7: positive, exactly 20 octets in DER,
-- and rendered the same by every SDK (no leading zero nibble to drop).
local function serial_hex()
  local first = ("1234567")
  local i = tonumber(util.random_hex(2), 16) % 7 + 1
  return first:sub(i, i) .. util.random_hex(39)
end

local function hex_to_bin(hex)
  return (hex:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end

local function make_name(cn, o)
  local n = x509_name.new()
  n:add("C", "CN")
  n:add("O", o)
  n:add("CN", cn)
  return n
end

-- One certificate; `issuer` = { cert =, key = } or nil for self-signed.
local function make_cert(opts)
  local c = x509.new()
  c:setVersion(3)
  c:setSerial(bignum.fromBinary(hex_to_bin(opts.serial)))
  c:setSubject(opts.subject)
  c:setIssuer(opts.issuer and opts.issuer.cert:getSubject() or opts.subject)
  local now = os.time()
  c:setLifetime(now - DAY, now + opts.days * DAY)
  c:setPublicKey(opts.key)
  c:setBasicConstraints{ CA = opts.ca or false }
  c:setBasicConstraintsCritical(true)
  if opts.ca then
    c:addExtension(extension.new("keyUsage", "critical,keyCertSign,cRLSign"))
  else
    c:addExtension(extension.new("keyUsage", "critical,digitalSignature,keyEncipherment"))
  end
  if opts.alt then c:setSubjectAlt(opts.alt) end
  c:sign(opts.issuer and opts.issuer.key or opts.key, "sha256")
  return c
end

local FILES = {
  ca_file = "ca.pem",
  ca_key_file = "ca_key.pem",
  server_cert_file = "server_cert.pem",
  server_key_file = "server_key.pem",
  private_key_file = "apiclient_key.pem",
  merchant_certificate_file = "apiclient_cert.pem",
  platform_key_file = "platform_key.pem",
  platform_certificate_file = "platform_cert.pem",
  platform2_key_file = "platform2_key.pem",
  platform2_certificate_file = "platform2_cert.pem",
  public_key_private_file = "pub_key_private.pem",
  wechatpay_public_key_file = "pub_key.pem",
}

local function generate(dir, mchid)
  local files = {}
  local ca_key = rsa_key()
  local ca = make_cert{ serial = serial_hex(), key = ca_key, ca = true, days = 3650,
                        subject = make_name("wxpay sandbox CA", "wxpay sandbox") }
  files.ca_file = ca:toPEM()
  files.ca_key_file = ca_key:toPEM("private")

  local server_key = rsa_key()
  local alt = altname.new()
  alt:add("DNS", "localhost")
  alt:add("IP", "127.0.0.1")
  files.server_cert_file = make_cert{
    serial = serial_hex(), key = server_key, days = 825, alt = alt,
    subject = make_name("localhost", "wxpay sandbox"), issuer = { cert = ca, key = ca_key },
  }:toPEM()
  files.server_key_file = server_key:toPEM("private")

  local manifest = { version = MANIFEST_VERSION, mchid = mchid or M.MCHID }
  local function keypair(prefix, cn, o, days)
    local key = rsa_key()
    local serial = serial_hex()
    local cert = make_cert{ serial = serial, key = key, days = days, subject = make_name(cn, o) }
    files[prefix .. "_key_file"] = key:toPEM("private")
    return serial, cert:toPEM()
  end

  local merchant_cert
  manifest.serial_no, merchant_cert = keypair("merchant", manifest.mchid, "wxpay sandbox merchant", 1825)
  files.merchant_certificate_file = merchant_cert
  files.private_key_file = files.merchant_key_file
  files.merchant_key_file = nil

  manifest.platform_serial_no, files.platform_certificate_file =
    keypair("platform", "Tenpay.com Root CA sandbox", "Tenpay.com", 1825)
  manifest.platform2_serial_no, files.platform2_certificate_file =
    keypair("platform2", "Tenpay.com Root CA sandbox 2", "Tenpay.com", 1825)

  local pub = rsa_key()
  files.public_key_private_file = pub:toPEM("private")
  files.wechatpay_public_key_file = pub:toPEM("public")
  manifest.wechatpay_public_key_id = "PUB_KEY_ID_" .. util.random_digits(34)
  manifest.apiv3_key = util.random_alnum(32)

  for field, name in pairs(FILES) do
    write_file(dir .. "/" .. name, assert(files[field], field))
  end
  -- Written last: its presence means every other file is complete.
  write_file(dir .. "/manifest.json", json.encode(manifest))
  return manifest
end

local function load_manifest(dir)
  local text = read_file(dir .. "/manifest.json")
  if not text then return nil end
  local manifest = json.decode(text)
  if type(manifest) ~= "table" or manifest.version ~= MANIFEST_VERSION then return nil end
  for _, name in pairs(FILES) do
    if not read_file(dir .. "/" .. name) then return nil end
  end
  return manifest
end

-- mkdir is atomic, so a lock directory keeps two sandboxes starting on the same cache
-- directory from interleaving their files. A lock older than a minute is stale.
local function with_lock(dir, fn)
  local lock = dir .. "/.lock"
  local deadline = os.time() + 120
  while not os.execute("mkdir " .. shell_quote(lock) .. " 2>/dev/null") do
    if os.time() > deadline then error("wxpay-sandbox: cannot lock " .. lock) end
    local f = io.popen("find " .. shell_quote(lock) .. " -maxdepth 0 -mmin +1 2>/dev/null")
    local stale = f:read("a")
    f:close()
    if stale ~= "" then os.execute("rmdir " .. shell_quote(lock)) end
    os.execute("sleep 0.1")
  end
  local ok, res = pcall(fn)
  os.execute("rmdir " .. shell_quote(lock))
  if not ok then error(res, 0) end
  return res
end

--- Load the sandbox keys from `dir`, generating and saving them first when missing.
-- @tparam string dir state directory (created if needed)
-- @tparam[opt] string mchid the merchant the keys are made for (default 1900000001); keys of
--   another merchant already in `dir` raise
-- @treturn table keys: `dir`, `mchid`, `serial_no`, `platform_serial_no`,
--   `platform2_serial_no`, `wechatpay_public_key_id`, `apiv3_key`, `files` (field -> path)
--   and `pem` (field -> PEM text)
function M.load(dir, mchid)
  local ok, err = M.mkdir(dir)
  if not ok then error(err, 0) end
  -- The printed config must work from any working directory.
  if dir:sub(1, 1) ~= "/" then
    local pwd = io.popen("pwd")
    dir = pwd:read("l") .. "/" .. dir:gsub("^%./", "")
    pwd:close()
  end
  local manifest = load_manifest(dir)
  if not manifest then
    manifest = with_lock(dir, function()
      return load_manifest(dir) or generate(dir, mchid)
    end)
  end
  if mchid and manifest.mchid ~= mchid then
    error("--dir " .. dir .. " holds the keys of mchid " .. tostring(manifest.mchid) .. "; give another --dir", 0)
  end
  local keys = { dir = dir, files = {}, pem = {} }
  for k, v in pairs(manifest) do keys[k] = v end
  local quoted = { shell_quote(dir .. "/manifest.json") }
  for field, name in pairs(FILES) do
    keys.files[field] = dir .. "/" .. name
    keys.pem[field] = read_file(keys.files[field])
    quoted[#quoted + 1] = shell_quote(keys.files[field])
  end
  -- Files kept from a sandbox that wrote them 0644.
  assert(os.execute("chmod 600 -- " .. table.concat(quoted, " ")), "cannot make the key files private")
  return keys
end

return M
