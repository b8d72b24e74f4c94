/* lib/image/alloc.h: the cluster allocator and the write transaction of
 * a consistent qcow2 image (one that checks without errors), for the
 * writers that add to an image: amend, commit, rebase.
 *
 * The allocator holds the refcount table and, once read, each refcount
 * block in memory. It hands out clusters first-fit from a free index,
 * as qcow2_alloc_clusters does, adding refcount blocks (each placed at
 * the first cluster of the range it covers, so it counts itself) and
 * growing the refcount table (a new, larger table elsewhere) as needed.
 *
 * The write transaction, QEMU's order (refcounts before references,
 * references gone before refcounts drop):
 *   1. qk_alloc_clusters / qk_alloc_ref (+): in memory only;
 *   2. the caller writes the new clusters' contents (nothing references
 *      them: a crash leaves free space or leaks);
 *   3. qk_alloc_sync: every new refcount block and every block with new
 *      refcounts written, flushed; then the refcount table entries that
 *      point at new blocks (in place), or, when the table moved, the new
 *      table, flush, and one 12-byte header write (refcount_table_offset,
 *      refcount_table_clusters: one sector); flush. A crash here leaves
 *      the old structure, or the new one, and leaks;
 *   4. the caller writes the references (L2/L1 entries, header fields)
 *      and flushes: a crash leaves old or new references, all counted;
 *   5. qk_alloc_free_later, then qk_alloc_release: the deferred decrements
 *      (clusters no longer referenced, an old refcount table) applied and
 *      written; flush. A crash before leaves leaks only.
 * So at every point the image checks with leaks at worst, never with a
 * refcount below its references. */
#ifndef QK_IMAGE_ALLOC_H
#define QK_IMAGE_ALLOC_H

#include <stdbool.h>
#include <stdint.h>

#include "qcowkit.h"

struct qk_source;
struct qk_alloc;

/* Over the writable source s of an image with header h (refcount table
 * read now). EBADMSG for a structure that cannot be used (unaligned
 * table or block offsets, reserved bits, a width above 64 bits). */
extern struct qk_alloc *qk_alloc_new (struct qk_source *s,
                                      const struct qk_header *h);
extern void qk_alloc_free (struct qk_alloc *a);
/* The refcount of cluster k (0 past the table or in a missing block). */
extern int qk_alloc_get (struct qk_alloc *a, uint64_t k, uint64_t *rc);
/* n contiguous free clusters, first-fit from the free index; each gets
 * refcount 1. *off: the byte offset of the first. */
extern int qk_alloc_clusters (struct qk_alloc *a, uint64_t n, uint64_t *off);
/* Add delta to the refcount of cluster k now (EOVERFLOW past the width,
 * ERANGE below 0). Decrements of clusters still referenced on disk go
 * through qk_alloc_free_later instead. */
extern int qk_alloc_ref (struct qk_alloc *a, uint64_t k, int64_t delta);
/* Drop one reference of the n clusters at byte offset off at release. */
extern int qk_alloc_free_later (struct qk_alloc *a, uint64_t off, uint64_t n);
/* Step 3 above. */
extern int qk_alloc_sync (struct qk_alloc *a);
/* Step 5 above. */
extern int qk_alloc_release (struct qk_alloc *a);
/* The refcount table as it is now (after a sync: as on disk). */
extern void qk_alloc_reftable (const struct qk_alloc *a, uint64_t *off,
                               uint32_t *clusters);
/* Clusters allocated so far; the end of the highest cluster handed out
 * or counted (bytes). */
extern uint64_t qk_alloc_count (const struct qk_alloc *a);
extern uint64_t qk_alloc_end (const struct qk_alloc *a);

#endif
