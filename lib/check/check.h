/* Internal interface of the checker for the writers (repair). */
#ifndef QK_CHECK_CHECK_H
#define QK_CHECK_CHECK_H

#include <stdbool.h>
#include <stdint.h>

#include "qcowkit.h"

/* The references the check counted: the refcount every host cluster
 * should have, at the image's refcount width (order), for clusters
 * [0, n). complete: every table that holds references was read in full
 * (so a refcount above the count is a leak); counting: refcounts could be
 * counted at all. refstructs: the counts include the refcount table and
 * the refcount blocks the check could use (refblocks[t] is 1 for each
 * table index whose block it counted); qk_refmap_drop_refstructs takes
 * them out again, for a rebuild into fresh clusters. */
/* Buffers a check leaves to the next check of the same map (the
 * repair's rechecks, qk_refmap_recycle), so that they are allocated and
 * faulted in once a repair, not once a check: the counts of a file a
 * repair grew to a gigabyte of 512-byte clusters are 4 MiB. The counts
 * are zero but in the 4 KiB pages imrt_pg marks (every write of a count
 * marks its page); the bits are cleared when taken. */
struct qk_refmap_spare {
  uint8_t *imrt, *imrt_pg;
  uint64_t imrt_len, pg_len;
  uint8_t *bits[2];            /* the exclusive bits, the conflict bits */
  uint64_t bits_len[2];
};

struct qk_refmap {
  uint8_t *counted;
  uint8_t *counted_pg;   /* a byte per 4 KiB of counted: 0 if it holds
                            no count (qk_refblock_next_used_pg) */
  unsigned order;
  uint64_t n;
  bool counting;
  bool complete;
  bool refstructs;
  uint64_t reftable_offset;   /* what was counted for the table */
  uint64_t reftable_len;
  uint8_t *refblocks;         /* a bit per refcount table index */
  uint64_t *reftable;         /* the table as read (entries) */
  size_t reftable_n;
  /* a bit per cluster [0, n) that two structures claim (metadata and
   * anything, or two active guest offsets): what METADATA_OVERLAP and
   * DUPLICATE_MAPPING report, without the cap on reports. A writer must
   * not write there: the bytes are something else too. NULL: none. */
  uint8_t *conflicted;
  /* 1 + the last cluster past the end of the file that an entry points
   * at (within QK_DANGLING_SPAN of the end): fresh clusters go after it,
   * so that the dangling entry does not read them */
  uint64_t dangling_end;
  struct qk_refmap_spare spare;   /* kept by the check for the next */
};

#define QK_DANGLING_SPAN (1ULL << 30)

static inline bool
qk_refmap_conflicted (const struct qk_refmap *map, uint64_t k)
{
  return map && map->conflicted && k < map->n
         && ((map->conflicted[k / 8] >> (k & 7)) & 1);
}

/* A flag of qk_check_run_map beside the public QK_CHECK_*: problems are
 * reported with an empty message (the callback wants only codes and
 * offsets; formatting millions of messages costs more than the check). */
#define QK_CHECK_NO_MESSAGES (1U << 30)

extern int qk_check_run_map (struct qk_image *img, unsigned flags,
                             qk_problem_fn fn, void *opaque,
                             struct qk_check_result *res,
                             struct qk_refmap *map);
/* The same; past msg_limit problems of one code (0: no limit), the
 * message is empty (the caller shows no more of them). */
extern int qk_check_run_map_limit (struct qk_image *img, unsigned flags,
                                   uint64_t msg_limit, qk_problem_fn fn,
                                   void *opaque, struct qk_check_result *res,
                                   struct qk_refmap *map);
extern void qk_refmap_drop_refstructs (struct qk_refmap *map,
                                       unsigned cluster_bits);
extern void qk_refmap_free (struct qk_refmap *map);
/* qk_refmap_free, but the count and bit buffers are kept in map->spare
 * for the next check given map, which takes what fits and frees the
 * rest. */
extern void qk_refmap_recycle (struct qk_refmap *map);
/* The count for cluster k (0 past the map). */
extern uint64_t qk_refmap_get (const struct qk_refmap *map, uint64_t k);
/* The first refcount block index from t on (blocks of per clusters) that
 * covers a count, or UINT64_MAX: from one count to the next, so a hole of
 * clusters (past a dangling entry, up to 1 GiB) is scanned 4 KiB of
 * counts at a time, not a block's at a time. */
extern uint64_t qk_refmap_next_block (const struct qk_refmap *map,
                                      uint64_t per, uint64_t t);

#endif
