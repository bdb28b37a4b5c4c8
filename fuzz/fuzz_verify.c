/* SHA256-RSA verification of arbitrary signatures and messages, with a 2048-bit and a
 * 4096-bit key. Inputs are tried as given, as base64, cut or repeated to the exact length
 * of the key's signatures (the only length that reaches the decoder), and spliced over a
 * valid signature, which must then verify exactly when nothing changed. */
#include "fuzz_common.h"

static const char KEY2048[] =
#include "oaep_key.inc"
    ;
static const char KEY4096[] =
#include "verify_key4096.inc"
    ;

static const char SETUP[] =
    "local pems = { ... }\n"
    "KEYS = {}\n"
    "for i, pem in ipairs(pems) do\n"
    "  local key = assert(core.load_private_key(pem))\n"
    "  local msg = 'POST\\n/v3/x\\n1554209980\\nnonce\\n{}\\n'\n"
    "  KEYS[i] = { pub = key:public_key(), msg = msg, sig = key:sign(msg) }\n"
    "end\n";

static const char RUN[] =
    "local s = ...\n"
    "local function check(k, msg, sig)\n"
    "  local ok = k.pub:verify(msg, sig)\n"
    "  if type(ok) ~= 'boolean' then error('verify gave a ' .. type(ok)) end\n"
    "  return ok\n"
    "end\n"
    "for _, k in ipairs(KEYS) do\n"
    "  local n = #k.sig\n"
    "  check(k, s, s)\n"
    "  check(k, s, core.base64_encode(s))\n"
    "  if #s > 0 then\n"
    "    local fitted = string.rep(s, math.ceil(n / #s)):sub(1, n)\n"
    "    check(k, s, fitted)\n"
    "    check(k, s, (fitted:gsub('=', 'A')))\n"
    "    local spliced = (s .. k.sig:sub(#s + 1)):sub(1, n)\n"
    "    if check(k, k.msg, spliced) ~= (spliced == k.sig) then error('spliced signature') end\n"
    "  end\n"
    "  if not check(k, k.msg, k.sig) then error('valid signature refused') end\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lua_State *L = fuzz_state();
  static int loaded;
  if (!loaded) {
    if (luaL_loadstring(L, SETUP) != 0) __builtin_trap();
    lua_pushstring(L, KEY2048);
    lua_pushstring(L, KEY4096);
    if (lua_pcall(L, 2, 0, 0) != 0) __builtin_trap();
    loaded = 1;
  }
  fuzz_run(RUN, data, size);
  return 0;
}
