/* The checker's shared context: struct ck, which the passes of the check
 * (the pass table in check.c) read and fill in turn, the claims recorded
 * in it, and the helpers more than one pass uses. Internal to lib/check:
 * the repair sees the refcount map of check.h only. The names shared
 * here keep the ones they had as statics of the one check.c: the library
 * is built with -fvisibility=hidden, so none of them leaves it. */
#ifndef QK_CHECK_CK_H
#define QK_CHECK_CK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image/image.h"
#include "check/check.h"

/* LOC below overrides the fields it defaults */
#pragma GCC diagnostic ignored "-Woverride-init"

/* ---- the problem codes (the table: check.c) ---- */

enum {
#define PROBLEM(code, name, cls, desc) PR_##name,
#include "check/problems.def"
#undef PROBLEM
  PR__COUNT
};

/* ---- state ---- */

enum owner_kind {
  OWN_HEADER, OWN_L1, OWN_L2, OWN_REFTABLE, OWN_REFBLOCK, OWN_SNAPTABLE,
  OWN_BMDIR, OWN_BMTABLE, OWN_CRYPTO, OWN_DATA, OWN_SNAPDATA, OWN_BMDATA,
  OWN_CDATA,
};

struct owner {        /* a metadata structure and the clusters it covers */
  uint64_t first, n;  /* clusters */
  enum owner_kind kind;
  int64_t a;          /* L1: -1 active, else snapshot index; L2: L1 index;
                         refblock: reftable index; bitmap: bitmap index */
  int64_t b;          /* L2: source (-1 active, else snapshot index) */
};

/* Who has claimed a host cluster so far: nothing when its counted
 * refcount is 0; else snapshot, bitmap or compressed data only, unless its
 * "exclusive" bit says active data or metadata did too. Conflicts: active
 * data with active data or metadata; metadata with anything; snapshot,
 * bitmap or compressed data with metadata only (is_meta tells the
 * exclusive claims apart, for those claims alone). */
#define MAX_CONFLICTS 1024

struct conflict {
  uint64_t cluster;
  struct owner second;  /* the claim that collided */
};

struct l2ref {        /* one L1 entry pointing at an L2 table */
  uint64_t l2_offset;
  int32_t source;     /* -1 active, else snapshot index (< 65536) */
  uint32_t l1_index;
};

/* Every L1 entry of every L1 table, sorted by L2 offset before the L2
 * tables are walked: then also the record of which L2 table owns which
 * cluster (the L2 tables are not in the owner list). */
struct refs {
  struct l2ref *v;
  size_t n, cap;
};

struct range {        /* clusters [first, end) */
  uint64_t first, end;
};

/* A refcount block read, in the cache of struct ck. */
struct rbslot {
  uint64_t t;         /* its refcount table index + 1; 0: the slot is free */
  uint8_t *buf;       /* a cluster, or NULL */
  uint64_t used;      /* when last used (a tick) */
};

/* The cache's size: a power of two of slots, at least 2, with buffers for
 * all of them in at most this many bytes (16 blocks of 64 KiB, covering
 * 32 GiB of file at 16 bits). */
#define RB_CACHE_BYTES (1U << 20)

/* ---- worker threads (check.c) ----
 * The L2 walk and the refcount comparison run parts of their work on
 * every thread (QCOWKIT_THREADS, else the online CPUs; at most
 * CK_MAX_THREADS), the calling thread as thread 0. A parallel step only
 * computes: whatever it finds that a report or a claim of the general
 * kind would follow from is left to the calling thread, which redoes it
 * in the order of the single-threaded check. */
#define CK_MAX_THREADS 8
#define WK_SLOTS 2

struct ck;
struct ckpool;

struct wk {           /* one thread's own state */
  struct ck *ck;
  unsigned id;
  uint8_t *rb[WK_SLOTS];   /* refcount blocks read (lazily allocated) */
  uint64_t rb_t[WK_SLOTS]; /* their table index + 1; 0: free */
  uint64_t rb_used[WK_SLOTS];
  uint64_t tick;
  uint64_t reads;          /* blocks read in this step */
};

struct ck {
  struct qk_image *img;
  const struct qk_header *h;
  uint64_t cs;
  unsigned cb;
  unsigned order;     /* IMRT width (the image's) */
  uint64_t refmax;
  uint64_t file_len;
  bool data_file;
  bool counting;      /* refcounts can be counted at all */
  bool reftable_invalid;  /* phase_header reported the refcount table */
  const char *missing; /* metadata that could not be read (so an excess
                           refcount may be its, not a leak), or NULL */
  const char *uncounted; /* a snapshot whose references were not counted
                            (qemu-img counts its clusters as leaks, and so
                            does the check; a repair must not free them) */
  unsigned flags;

  uint8_t *imrt;
  uint64_t nb;        /* clusters covered by the IMRT */
  /* A byte per 4 KiB of the IMRT, set by every write of a count (see
   * imrt_touch): the scans for counts (imrt_next_used) skip the pages
   * never written, which in a sparse file are most of them. */
  uint8_t *imrt_pg;
  uint8_t *excl;      /* a bit per cluster: active data or metadata */
  bool dense;         /* refcount blocks cover half the IMRT or more */

  struct owner *owners;   /* metadata claims but the L2 tables, in order */
  size_t n_owners, cap_owners;
  size_t n_owners_pre_l2; /* of which claimed before the L2 tables */
  struct refs refs;       /* the L2 tables (see struct refs) */
  size_t l2_walked;       /* refs.v[0 .. l2_walked) claimed so far */
  struct range *mu;       /* the owners' clusters: a sorted union, built */
  size_t n_mu;            /* when is_meta first needs it after an */
  bool mu_dirty;          /* owner was added */
  struct conflict *conf;  /* the first MAX_CONFLICTS, grown as they come
                             (most images have none) */
  uint8_t *conf_bits;     /* every conflicted cluster (conf is capped) */
  struct qk_refmap_spare spare;   /* buffers of the map's last check */
  uint64_t dangling_end;  /* past-EOF references near the end: cluster */
  size_t n_conf, cap_conf;

  uint64_t *reftable;
  size_t reftable_n;
  bool reftable_counted;   /* phase_refcount_structs counted the table */
  uint8_t *rb_counted;     /* a bit per table index: its block was counted */

  uint64_t max_data_end;   /* for the data file size check */
  /* the L2 entry walk_l2 is counting (QK_NONE outside it): PAST_EOF
   * names it, so that a repair knows which entry to clear */
  uint64_t at_table, at_index, at_guest;

  /* The refcount blocks read, direct-mapped by refcount table index t
   * (slot t & (n_rbc - 1)), shared by the stored refcount lookups of the
   * COPIED checks in the L2 walk and by the comparison, which reads only
   * the blocks not in the cache. Walking the L2 tables in offset order
   * visits the data in guest order, which on a randomly written image is
   * random in host order, so one block of cache read a block per cluster;
   * now, while the blocks the walk needs have a slot each (any number in
   * host order, up to n_rbc at random), it reads each at most twice (see
   * rb_bufs), and the comparison reads it at most once more. */
  struct rbslot *rbc;
  size_t n_rbc;
  /* The slots with a buffer. There are two buffers, moved to the slot
   * that needs one, from the one used longest ago, until a block is read
   * again (it did not stay): only then does a slot get a buffer of its
   * own. Reading in host order then takes no more memory than two blocks
   * (the preallocated benchmark rows), reading at random as much as the
   * blocks read. */
  size_t *rb_bufs;
  size_t n_rb_bufs;
  uint8_t *rb_seen;   /* a bit per table index: its block was read */
  uint64_t rb_tick;
  bool rbc_nomem;     /* a buffer could not be allocated */
  /* stored_refcount: the table index and block of the previous lookup,
   * so that consecutive clusters of one block skip the lookup */
  uint64_t sr_t;
  const uint8_t *sr_buf;

  unsigned nthreads;       /* 0: no parallel step (a layered source) */
  struct ckpool *pool;     /* started by the first parallel step */
  struct wk wk[CK_MAX_THREADS];

  qk_problem_fn fn;
  void *opaque;
  struct qk_check_result *res;
  int cb_ret;
  /* messages formatted per problem code, then empty (0: no limit) */
  uint64_t msg_limit;
  uint64_t msg_count[PR__COUNT];
};

#define LOC(...) (&(const struct qk_problem) { \
    .host_offset = QK_NONE, .length = QK_NONE, .guest_offset = QK_NONE, \
    .guest_offset2 = QK_NONE, .table_offset = QK_NONE, .index = QK_NONE, \
    .expected = QK_NONE, .found = QK_NONE, __VA_ARGS__ })
#define NOLOC LOC (.count = 0)

/* ---- reports (check.c) ---- */

extern void report (struct ck *ck, int pr, uint64_t count,
                    const struct qk_problem *loc, const char *fmt, ...)
  __attribute__ ((format (printf, 5, 6)));

/* ---- worker threads (check.c) ---- */

/* Run fn on every thread (ck->nthreads of them, at least 1, this one as
 * thread 0) and wait for all: -1 if the threads could not be started
 * (nothing ran). */
extern int ck_parallel (struct ck *ck,
                        void (*fn) (struct ck *ck, struct wk *w, void *arg),
                        void *arg);
/* The refcount block of table index t (< reftable_n; its offset aligned
 * and not 0) for thread w, from the shared cache when it holds it (which
 * no thread changes during a parallel step) or from the first slots of
 * w's own (the one used longest ago is read into); NULL if it cannot be
 * read or no buffer is left. */
extern const uint8_t *wk_refblock (struct ck *ck, struct wk *w, uint64_t t,
                                   unsigned slots);

/* whether len bytes at p are all 0 */
static inline bool
all_zero (const uint8_t *p, size_t len)
{
  uint64_t acc = 0, x;
  size_t i = 0;

  for (; i + 8 <= len; i += 8) {
    memcpy (&x, p + i, 8);
    acc |= x;
  }
  for (; i < len; i++)
    acc |= p[i];
  return acc == 0;
}

/* ---- the IMRT and the claims (refmap.c) ---- */

extern int imrt_grow (struct ck *ck, uint64_t need);

/* Every write of a count to the IMRT marks its page (threads may mark
 * one page at once: a relaxed store of the same value). */
static inline void
imrt_touch (const struct ck *ck, uint64_t k)
{
  __atomic_store_n (&ck->imrt_pg[(k << ck->order) >> (QK_REFPG_SHIFT + 3)], 1,
                    __ATOMIC_RELAXED);
}

/* the pages of counts [k, end) */
static inline void
imrt_touch_range (const struct ck *ck, uint64_t k, uint64_t end)
{
  for (uint64_t p = (k << ck->order) >> (QK_REFPG_SHIFT + 3);
       k < end && p <= ((end - 1) << ck->order) >> (QK_REFPG_SHIFT + 3); p++)
    __atomic_store_n (&ck->imrt_pg[p], 1, __ATOMIC_RELAXED);
}

/* The first cluster in [k, end) with a count, or end. */
static inline uint64_t
imrt_next_used (const struct ck *ck, uint64_t k, uint64_t end)
{
  return qk_refblock_next_used_pg (ck->imrt, ck->imrt_pg, ck->order, k, end);
}
/* With more than one thread: the pages of a table about to be filled,
 * made writable in one go (see refmap.c). */
extern void populate (const struct ck *ck, void *p, size_t len);
extern int excl_need (struct ck *ck);
/* A zeroed bit map of len bytes: spare->bits[i] when it is that long,
 * else calloc'ed (NULL: out of memory). */
extern uint8_t *spare_bits (struct ck *ck, int i, uint64_t len);
extern void spare_free (struct qk_refmap_spare *sp);

/* whether active data or metadata claimed cluster k, given whether
 * anything did */
static inline bool
excl_get (const struct ck *ck, uint64_t k, bool claimed)
{
  return ck->excl ? (ck->excl[k / 8] >> (k & 7)) & 1 : claimed;
}

static inline void
excl_set (struct ck *ck, uint64_t k)
{
  if (ck->excl)
    ck->excl[k / 8] |= 1U << (k & 7);
}

/* The first of the sorted L2 references whose table, a cluster long from
 * any byte offset, may cover cluster k (its last cluster is >= k); the
 * tables at refs.v[i ..] that cover k start there. */
static inline size_t
l2_lower (const struct ck *ck, uint64_t k)
{
  size_t lo = 0, hi = ck->refs.n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if ((ck->refs.v[mid].l2_offset + ck->cs - 1) >> ck->cb < k)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* Whether refs.v[i], an L2 table, has claimed cluster k (inc_refs does
 * not claim a table past the end of the file). */
static inline bool
l2_claims (const struct ck *ck, size_t i, uint64_t k)
{
  uint64_t off = ck->refs.v[i].l2_offset;
  return i < ck->l2_walked && off >> ck->cb <= k && off < ck->file_len;
}

/* qcow2_inc_refcounts_imrt, with a multiplicity (an L2 table shared by
 * mult L1 entries counts mult times) and a claim. */
extern int inc_refs (struct ck *ck, uint64_t offset, uint64_t size,
                     uint64_t mult, const struct owner *who);

/* ---- stored refcounts (refcounts.c) ---- */

/* qcow2_get_refcount as check_oflag_copied sees it: a refcount in a refcount
 * block whose offset is not cluster aligned cannot be read (QEMU signals
 * corruption and fails), and such entries are skipped. */
extern int stored_refcount_lookup (struct ck *ck, uint64_t cluster,
                                   uint64_t *rc);

static inline __attribute__ ((always_inline)) int
stored_refcount (struct ck *ck, uint64_t cluster, uint64_t *rc)
{
  /* the block of the previous lookup, without a call (sr_buf is only set
   * for widths up to 64 bits) */
  if (ck->sr_buf) {
    unsigned per_bits = ck->cb + 3 - ck->h->refcount_order;
    if (cluster >> per_bits == ck->sr_t) {
      *rc = qk_refblock_get (ck->sr_buf, ck->h->refcount_order,
                             cluster & ((UINT64_C (1) << per_bits) - 1));
      return 0;
    }
  }
  return stored_refcount_lookup (ck, cluster, rc);
}

/* ---- the passes (the order: the pass table in check.c) ---- */

extern int phase_header (struct ck *ck);               /* header.c */
extern int phase_tables (struct ck *ck);               /* tables.c */
extern const char *source_name (const struct ck *ck, int64_t source,
                                char *buf, size_t len);
extern int phase_refcount_structs (struct ck *ck);     /* refcounts.c */
extern int phase_refblocks (struct ck *ck);
extern int phase_compare (struct ck *ck);
extern int phase_bitmaps (struct ck *ck);              /* bitmaps.c */
extern int phase_overlaps (struct ck *ck);             /* overlaps.c */
extern int phase_chain (struct ck *ck);                /* chain.c */

#endif
