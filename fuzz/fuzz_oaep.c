/* RSA-OAEP input handling: arbitrary ciphertexts (raw and base64) and plaintexts. */
#include "fuzz_common.h"

static const char KEY[] =
#include "oaep_key.inc"
    ;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lua_State *L = fuzz_state();
  static int loaded;
  if (!loaded) {
    lua_getglobal(L, "core");
    lua_getfield(L, -1, "load_private_key");
    lua_pushstring(L, KEY);
    lua_call(L, 1, 1);
    lua_setglobal(L, "KEY");
    lua_pop(L, 1);
    loaded = 1;
  }
  fuzz_run("local s = ...\n"
           "KEY:decrypt_oaep(s)\n"
           "KEY:decrypt_oaep(core.base64_encode(s))\n"
           "local ct = KEY:public_key():encrypt_oaep(s)\n"
           "if ct and KEY:decrypt_oaep(ct) ~= s then error('round trip') end",
           data, size);
  return 0;
}
