/* AES-256-GCM input handling: arbitrary key / nonce / aad / ciphertext splits. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_run("local s = ...\n"
           "local key, nonce = s:sub(1, 32), s:sub(33, 44)\n"
           "local rest = s:sub(45)\n"
           "local cut = (rest:byte(1) or 0) % (#rest + 1)\n"
           "local aad, ct = rest:sub(2, cut), rest:sub(cut + 1)\n"
           "local pt = core.aes_gcm_decrypt(key, nonce, aad, ct)\n"
           "local pt2 = core.aes_gcm_decrypt(key, nonce, aad, core.base64_encode(ct))\n"
           "local enc = core.aes_gcm_encrypt(key, nonce, aad, ct)\n"
           "if enc and core.aes_gcm_decrypt(key, nonce, aad, enc) ~= ct then error('round trip') end\n"
           "if pt and pt2 then error('both') end",
           data, size);
  return 0;
}
