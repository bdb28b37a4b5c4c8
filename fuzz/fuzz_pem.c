/* PEM loading: keys and certificates from arbitrary text give nil, err or an object. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_run("local s = ...\n"
           "local k = core.load_private_key(s) if k then k:sign('x') k:public_key():fingerprint() tostring(k) end\n"
           "local p = core.load_public_key(s) if p then p:verify('x', 'AAAA') p:fingerprint() end\n"
           "local c = core.load_certificate(s) if c then c:serial() c:not_before() c:not_after()\n"
           "  c:subject() c:issuer() c:public_key() tostring(c) end",
           data, size);
  return 0;
}
