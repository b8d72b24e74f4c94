/* L1/L2 entry decoding, as QEMU's qcow2_get_cluster_type and
 * qcow2_get_subcluster_type. */
#include <config.h>

#include "format/format.h"

enum qk_cluster_type
qk_l2_cluster_type (uint64_t entry, bool extl2, bool data_file)
{
  if (entry & QK_OFLAG_COMPRESSED)
    return QK_CLUSTER_COMPRESSED;
  if ((entry & QK_OFLAG_ZERO) && !extl2) {
    if (entry & QK_L2E_OFFSET_MASK)
      return QK_CLUSTER_ZERO_ALLOC;
    return QK_CLUSTER_ZERO_PLAIN;
  }
  if (!(entry & QK_L2E_OFFSET_MASK)) {
    /* Offset 0 is a valid data-file offset; COPIED disambiguates. */
    if (data_file && (entry & QK_OFLAG_COPIED))
      return QK_CLUSTER_NORMAL;
    return QK_CLUSTER_UNALLOCATED;
  }
  return QK_CLUSTER_NORMAL;
}

enum qk_subcluster_type
qk_l2_subcluster_type (uint64_t entry, uint64_t bitmap, unsigned sc,
                       bool extl2, bool data_file)
{
  enum qk_cluster_type t = qk_l2_cluster_type (entry, extl2, data_file);

  if (!extl2) {
    switch (t) {
    case QK_CLUSTER_COMPRESSED: return QK_SUB_COMPRESSED;
    case QK_CLUSTER_ZERO_PLAIN: return QK_SUB_ZERO_PLAIN;
    case QK_CLUSTER_ZERO_ALLOC: return QK_SUB_ZERO_ALLOC;
    case QK_CLUSTER_NORMAL: return QK_SUB_NORMAL;
    default: return QK_SUB_UNALLOCATED_PLAIN;
    }
  }
  switch (t) {
  case QK_CLUSTER_COMPRESSED:
    return QK_SUB_COMPRESSED;
  case QK_CLUSTER_NORMAL:
    if ((bitmap >> 32) & bitmap)
      return QK_SUB_INVALID;
    if (bitmap & (1ULL << (32 + sc)))
      return QK_SUB_ZERO_ALLOC;
    if (bitmap & (1ULL << sc))
      return QK_SUB_NORMAL;
    return QK_SUB_UNALLOCATED_ALLOC;
  default: /* unallocated (zero types do not exist with extended L2) */
    if (bitmap & QK_L2_BITMAP_ALL_ALLOC)
      return QK_SUB_INVALID;
    if (bitmap & (1ULL << (32 + sc)))
      return QK_SUB_ZERO_PLAIN;
    return QK_SUB_UNALLOCATED_PLAIN;
  }
}

void
qk_l2_compressed (uint64_t entry, unsigned cluster_bits, uint64_t *host_off,
                  uint64_t *nbytes)
{
  unsigned x = 62 - (cluster_bits - 8);
  uint64_t off_mask = (1ULL << x) - 1;
  uint64_t sectors = ((entry >> x) & ((1ULL << (62 - x)) - 1));
  uint64_t off = entry & off_mask;

  *host_off = off;
  *nbytes = (sectors + 1) * 512 - (off & 511);
}
