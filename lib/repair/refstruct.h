/* lib/repair/refstruct.h: a fresh refcount structure from a check's
 * counts (repair's rebuild, amend's width change). */
#ifndef QK_REPAIR_REFSTRUCT_H
#define QK_REPAIR_REFSTRUCT_H

#include <stddef.h>
#include <stdint.h>

struct qk_refmap;

typedef int (*qk_put_fn) (void *opaque, const void *buf, size_t len,
                          uint64_t off);
struct qk_refstruct {
  uint64_t table_offset;
  uint32_t table_clusters;
  uint64_t n_blocks;
  uint64_t end;               /* bytes: past the last cluster written */
};
/* Write a table and blocks at refcount order `order` from clusters
 * `start` on, counting map's references (take the old structure out of
 * them first: qk_refmap_drop_refstructs) and the new structure's own
 * clusters. EOVERFLOW when a count does not fit the width (some of it may
 * have been written past the end of the file by then: check first). */
extern int qk_refstruct_write (const struct qk_refmap *map,
                               unsigned cluster_bits, unsigned order,
                               uint64_t start, qk_put_fn put, void *opaque,
                               struct qk_refstruct *out);

/* Leaked clusters (stored refcount above map's count) brought down to
 * the count, through the allocator over the writable src of img, except
 * down to 1 where the active tables reference the cluster (its COPIED
 * flag would have to change too: qcowkit repair does both); *freed: how
 * many. A map that is not complete frees nothing. */
struct qk_source;
struct qk_image;
extern int qk_free_leaks (struct qk_source *src, const struct qk_image *img,
                          const struct qk_refmap *map, uint64_t *freed);

#endif
