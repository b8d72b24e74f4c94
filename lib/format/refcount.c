/* Refcount block entries of every width (refcount_order 0..6). Sub-byte
 * widths pack from the least significant bit; 16/32/64 are big-endian. */
#include <config.h>

#include "format/format.h"

uint64_t
qk_refblock_get (const uint8_t *blk, unsigned order, uint64_t idx)
{
  switch (order) {
  case 0: return (blk[idx / 8] >> (idx % 8)) & 1;
  case 1: return (blk[idx / 4] >> (2 * (idx % 4))) & 3;
  case 2: return (blk[idx / 2] >> (4 * (idx % 2))) & 15;
  case 3: return blk[idx];
  case 4: return be16_get (blk + 2 * idx);
  case 5: return be32_get (blk + 4 * idx);
  case 6: return be64_get (blk + 8 * idx);
  }
  return 0;
}

void
qk_refblock_set (uint8_t *blk, unsigned order, uint64_t idx, uint64_t v)
{
  unsigned shift;

  switch (order) {
  case 0: case 1: case 2:
    {
      unsigned bits = 1U << order, per = 8 / bits;
      uint8_t mask = (1U << bits) - 1;
      shift = bits * (idx % per);
      blk[idx / per] = (blk[idx / per] & ~(mask << shift))
                       | ((v & mask) << shift);
    }
    break;
  case 3: blk[idx] = v; break;
  case 4: be16_put (blk + 2 * idx, v); break;
  case 5: be32_put (blk + 4 * idx, v); break;
  case 6: be64_put (blk + 8 * idx, v); break;
  }
}
