/* Small helpers for the commands that decode extension payloads (tools
 * only; the library has its own in lib/util/). */
#ifndef QK_TOOLS_BYTES_H
#define QK_TOOLS_BYTES_H

#include <stdint.h>

static inline uint32_t
be32_get (const uint8_t *p)
{
  return ((uint32_t) p[0] << 24) | ((uint32_t) p[1] << 16) |
         ((uint32_t) p[2] << 8) | (uint32_t) p[3];
}

static inline uint64_t
be64_get (const uint8_t *p)
{
  return ((uint64_t) be32_get (p) << 32) | be32_get (p + 4);
}

#define DIV_ROUND_UP(n, d) (((n) + (d) - 1) / (d))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
