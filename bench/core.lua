--- Benchmark: wxpay.core signing and verification next to `openssl speed rsa2048`.
-- Single-threaded, same machine, same run. Prints figures; asserts nothing.
local core = require("wxpay.core")

local M = {}

local function rate(fn, seconds)
  local n, t0 = 0, os.clock()
  local deadline = t0 + seconds
  repeat
    for _ = 1, 50 do fn() end
    n = n + 50
  until os.clock() >= deadline
  return n / (os.clock() - t0)
end

local function openssl_speed(seconds)
  local p = io.popen(("openssl speed -seconds %d rsa2048 2>/dev/null"):format(seconds))
  local out = p:read("*a")
  p:close()
  local s, v = out:match("rsa%s+2048 bits%s+[%d.]+s%s+[%d.]+s%s+([%d.]+)%s+([%d.]+)")
  return tonumber(s), tonumber(v)
end

--- Runs the benchmark; returns a table of figures (also printed).
function M.run(opts)
  opts = opts or {}
  local seconds = opts.seconds or 3
  local dir = os.tmpname()
  os.remove(dir)
  os.execute("mkdir -p " .. dir)
  os.execute(("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out %s/k.pem 2>/dev/null"):format(dir))
  local f = assert(io.open(dir .. "/k.pem"))
  local key = assert(core.load_private_key(f:read("*a")))
  f:close()
  os.execute("rm -rf " .. dir)
  local pub = key:public_key()
  -- a realistic string to sign / verify (a build request; a response's three lines)
  local msg = "POST\n/v3/marketing/partnerships/build\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n"
    .. '{"partner":{"type":"APPID","appid":"wx4e1916a585d1f4e9"},'
    .. '"authorized_data":{"business_type":"BUSIFAVOR_STOCK","stock_id":"2433405"}}\n'
  local sig = key:sign(msg)
  assert(pub:verify(msg, sig))
  -- Alternate ours and openssl's over a few rounds and keep each one's best: on a shared
  -- 2-core machine a single pair of runs is at the mercy of whatever else ran meanwhile.
  local our_sign, our_verify, ossl_sign, ossl_verify = 0, 0, nil, nil
  for _ = 1, opts.rounds or 3 do
    our_sign = math.max(our_sign, rate(function() key:sign(msg) end, seconds))
    our_verify = math.max(our_verify, rate(function() pub:verify(msg, sig) end, seconds))
    local s, v = openssl_speed(seconds)
    if s then
      ossl_sign, ossl_verify = math.max(ossl_sign or 0, s), math.max(ossl_verify or 0, v)
    end
  end
  local r = { sign = our_sign, verify = our_verify, openssl_sign = ossl_sign, openssl_verify = ossl_verify,
              sign_seconds = 1 / our_sign }
  print(("== RSA-2048 SHA256withRSA, single thread, best of %d alternating rounds ==")
    :format(opts.rounds or 3))
  print(("%-28s %12s %12s"):format("", "sign/s", "verify/s"))
  print(("%-28s %12.1f %12.1f"):format("wxpay.core (Lua " .. (jit and jit.version or _VERSION) .. ")",
    our_sign, our_verify))
  if ossl_sign then
    print(("%-28s %12.1f %12.1f"):format("openssl speed rsa2048", ossl_sign, ossl_verify))
    print(("%-28s %11.1f%% %11.1f%%   (targets: sign >= 95%%, verify >= 90%%)"):format("ratio",
      100 * our_sign / ossl_sign, 100 * our_verify / ossl_verify))
  else
    print("openssl speed: not available")
  end
  return r
end

return M
