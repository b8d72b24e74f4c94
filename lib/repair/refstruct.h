/* lib/repair/refstruct.h: a fresh refcount structure from a check's
 * counts (repair's rebuild), or from the stored refcounts at another
 * width (amend's width change). */
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

/* A refcount width change from the stored refcounts (QEMU's
 * qcow2_change_refcount_order keeps them too), one refcount block at a
 * time: memory for a block or two, never a refcount per cluster.
 *
 * qk_refstruct_scan reads the stored refcounts of the structure in place
 * (header h, table entries rt[0, rt_n), through src) and says what a
 * structure at refcount order `order` needs: the new table indexes whose
 * range holds a refcount, the first refcount that does not fit the new
 * width. The clusters of the structure in place (its table and blocks)
 * count as free: the new structure replaces them; so do the clusters
 * from `limit` on (a refcount there is a leak past what the caller knows
 * to be referenced: past the end of the file, which checks do not look
 * at; UINT64_MAX: none). */
struct qk_refscan {
  uint64_t *need;             /* new table indexes, ascending */
  size_t n_need;
  uint64_t end;               /* 1 + the last cluster with a refcount */
  uint64_t old_end;           /* 1 + the last cluster of the old structure */
  uint64_t over_cluster;      /* the first refcount above the new width */
  uint64_t over_value;        /* (over_cluster UINT64_MAX: none) */
};
struct qk_header;
struct qk_source;
extern int qk_refstruct_scan (struct qk_source *src, const struct qk_header *h,
                              const uint64_t *rt, size_t rt_n, uint64_t limit,
                              unsigned order, struct qk_refscan *s);
extern void qk_refscan_free (struct qk_refscan *s);
/* The new table and blocks written from cluster start on (or past the
 * scan's end, the old structure and limit, if further), nothing pointing
 * at them: every stored refcount below limit kept, the old structure's
 * clusters 0, the new structure's own 1. The refcounts must not have
 * changed since the scan (same limit). EOVERFLOW when the scan found a
 * refcount above the width. */
extern int qk_refstruct_convert (struct qk_source *src,
                                 const struct qk_header *h,
                                 const uint64_t *rt, size_t rt_n,
                                 uint64_t limit, unsigned order,
                                 const struct qk_refscan *s, uint64_t start,
                                 qk_put_fn put, void *opaque,
                                 struct qk_refstruct *out);

/* Leaked clusters (stored refcount above map's count) brought down to
 * the count, through the allocator over the writable src of img, except
 * down to 1 where the active tables reference the cluster (its COPIED
 * flag would have to change too: qcowkit repair does both); *freed: how
 * many. A map that is not complete frees nothing. */
struct qk_image;
extern int qk_free_leaks (struct qk_source *src, const struct qk_image *img,
                          const struct qk_refmap *map, uint64_t *freed);

#endif
