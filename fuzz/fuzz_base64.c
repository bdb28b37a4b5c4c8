/* base64 decode of arbitrary bytes: strict, never out of bounds; a success round-trips. */
#include <string.h>
#include "../csrc/wxpay.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  unsigned char out[4096];
  char again[8192];
  size_t n;
  if (size > 4096) return 0;
  n = wx_b64_decode((const char *)data, size, out);
  if (n == (size_t)-1) return 0;
  if (n > 3 * (size / 4)) __builtin_trap();
  wx_b64_encode(out, n, again);
  if (wx_b64_encoded_len(n) != size || memcmp(again, data, size) != 0) __builtin_trap();
  return 0;
}
