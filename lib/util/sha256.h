/* SHA-256 (FIPS 180-4): lib/io/sha256.c. Self-contained (no library state,
 * no I/O, no allocation): tools/qcowkit compiles the same source for the
 * sha256 of an export or a rescue, as it links only the public API. Keep
 * both files free of other library headers but util/byteorder.h and
 * util/checked.h (header-only). */
#ifndef QK_UTIL_SHA256_H
#define QK_UTIL_SHA256_H

#include <stddef.h>
#include <stdint.h>

struct qk_sha256 {
  uint32_t h[8];
  uint64_t len;
  uint8_t buf[64];
  size_t n;
};
extern void qk_sha256_init (struct qk_sha256 *c);
extern void qk_sha256_update (struct qk_sha256 *c, const void *p, size_t len);
extern void qk_sha256_final (struct qk_sha256 *c, uint8_t out[32]);

#endif
