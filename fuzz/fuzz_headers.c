/* Response header block parsing of the HTTP layer: every name is a token, every value is
 * trimmed, nothing is read out of bounds. */
#include <string.h>
#include "../csrc/wxpay.h"

static void check(void *ud, const char *name, size_t nlen, const char *value, size_t vlen) {
  size_t *total = (size_t *)ud;
  if (nlen == 0 || memchr(name, ':', nlen) || memchr(name, '\n', nlen)) __builtin_trap();
  if (memchr(value, '\n', vlen)) __builtin_trap();
  if (vlen && (value[0] == ' ' || value[vlen - 1] == ' ')) __builtin_trap();
  *total += nlen + vlen;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  size_t total = 0;
  int n = wx_parse_headers((const char *)data, size, check, &total);
  if (n < 0 || total > size) __builtin_trap();
  return 0;
}
