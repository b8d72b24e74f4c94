/* lib/image/gwrite.h: guest writes into a consistent qcow2 image, whole
 * clusters, in batches (the protocol: image/gwrite.c). */
#ifndef QK_IMAGE_GWRITE_H
#define QK_IMAGE_GWRITE_H

#include <stddef.h>
#include <stdint.h>

struct qk_writer;
struct qk_image;
struct qk_gwrite;

/* Over the writer w of the open image img (opened over w's source). Its
 * active L1 table must cover every cluster written. ENOTSUP for extended
 * L2 entries, an external data file, encryption. */
extern struct qk_gwrite *qk_gwrite_new (struct qk_writer *w,
                                        struct qk_image *img);
extern void qk_gwrite_free (struct qk_gwrite *g);
/* One guest cluster (guest: its byte offset, cluster-aligned): data is a
 * cluster, or NULL for zeros (a zero cluster in version 3, a cluster of
 * zeros in version 2). The data is written now; the mapping at commit. */
extern int qk_gwrite_cluster (struct qk_gwrite *g, uint64_t guest,
                              const void *data);
/* Make the batch's mapping durable (steps 1 to 4). */
extern int qk_gwrite_commit (struct qk_gwrite *g);
/* L2 tables the batch holds (commit when it grows), clusters written. */
extern size_t qk_gwrite_pending_tables (const struct qk_gwrite *g);
extern uint64_t qk_gwrite_count (const struct qk_gwrite *g);

#endif
