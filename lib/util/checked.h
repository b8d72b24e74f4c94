/* qcowkit: checked arithmetic for untrusted numbers. Each returns true on overflow. */
#ifndef QK_UTIL_CHECKED_H
#define QK_UTIL_CHECKED_H

#include <stdbool.h>
#include <stdint.h>

#define ADD_OVERFLOW(a, b, r) __builtin_add_overflow ((a), (b), (r))
#define MUL_OVERFLOW(a, b, r) __builtin_mul_overflow ((a), (b), (r))

/* Round up to a power-of-two alignment; true on overflow. */
static inline bool
align_up_overflow (uint64_t v, uint64_t align, uint64_t *r)
{
  uint64_t t;
  if (ADD_OVERFLOW (v, align - 1, &t))
    return true;
  *r = t & ~(align - 1);
  return false;
}

#define DIV_ROUND_UP(n, d) (((n) + (d) - 1) / (d))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define IS_ALIGNED(v, a) (((v) & ((a) - 1)) == 0)

#endif
