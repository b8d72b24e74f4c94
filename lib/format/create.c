/* lib/format/create.c: the bytes of a new, empty qcow2 overlay, as
 * qemu-img create -f qcow2 -b BACKING -F FMT lays it out: version 3,
 * 64 KiB clusters, 16-bit refcounts, the header in cluster 0 (with the
 * backing format extension and QEMU's feature name table), the refcount
 * table in cluster 1, its one refcount block in cluster 2, the L1 table
 * from cluster 3; every guest cluster unallocated (it reads the backing
 * file). */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "format/format.h"
#include "util/byteorder.h"

int
qk_overlay_bytes (const char *backing, const char *backing_format,
                  uint64_t size, uint8_t **out, size_t *len)
{
  const uint32_t cb = 16;
  const uint64_t cs = 1ULL << cb;
  const uint64_t l2_reach = cs * (cs / 8);
  struct qk_header_spec s;
  uint64_t l1_size, l1_clusters, clusters;
  uint8_t *b;
  size_t used;

  *out = NULL;
  *len = 0;
  if (backing == NULL || strlen (backing) > 1023 || size == 0
      || size > (1ULL << 56)) {
    set_error (EINVAL, "a backing file name (at most 1023 bytes) and a "
               "size are needed");
    return -1;
  }
  l1_size = (size + l2_reach - 1) / l2_reach;
  l1_clusters = (l1_size * 8 + cs - 1) / cs;
  clusters = 3 + l1_clusters;
  if (clusters > cs / 2) {
    set_error (EFBIG, "the L1 table does not fit one refcount block");
    return -1;
  }
  memset (&s, 0, sizeof s);
  s.h.magic = QK_QCOW2_MAGIC;
  s.h.version = 3;
  s.h.cluster_bits = cb;
  s.h.size = size;
  s.h.l1_size = l1_size;
  s.h.l1_table_offset = 3 * cs;
  s.h.refcount_table_offset = cs;
  s.h.refcount_table_clusters = 1;
  s.h.refcount_order = 4;
  s.h.header_length = 112;
  s.backing = backing;
  s.backing_len = strlen (backing);
  s.backing_format = backing_format;
  s.fnames = qk_qemu_feature_table;
  s.n_fnames = QK_QEMU_FEATURES;
  b = calloc (clusters, cs);
  if (b == NULL) {
    set_error (ENOMEM, "calloc");
    return -1;
  }
  if (qk_header_cluster_format (&s, b, cs, &used) < 0) {
    free (b);
    return -1;
  }
  be64_put (b + cs, 2 * cs);                    /* the refcount table */
  for (uint64_t c = 0; c < clusters; c++)       /* the refcount block */
    be16_put (b + 2 * cs + 2 * c, 1);
  *out = b;
  *len = clusters * cs;
  return 0;
}
