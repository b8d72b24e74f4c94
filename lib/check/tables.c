/* Passes 1 and 2 of the check: the active and snapshot L1 tables, every
 * distinct L2 table (read once, in offset order, however many L1 tables
 * share it) with the COPIED flags (pass 5) and the data they map, counted
 * into the IMRT; and the snapshot table. */
#include <config.h>

#include <fcntl.h>

#include "check/ck.h"

/* ---- phases 1 and 2: L1 and L2 tables ---- */

const char *
source_name (const struct ck *ck, int64_t source, char *buf, size_t len)
{
  if (source < 0)
    return "active";
  snprintf (buf, len, "snapshot %s (%s)", ck->img->snaps[source].s.id,
            ck->img->snaps[source].s.name);
  return buf;
}

static int
cmp_l2ref (const void *a, const void *b)
{
  const struct l2ref *x = a, *y = b;
  if (x->l2_offset != y->l2_offset)
    return x->l2_offset < y->l2_offset ? -1 : 1;
  if (x->source != y->source)
    return x->source < y->source ? -1 : 1;
  return x->l1_index < y->l1_index ? -1 : x->l1_index > y->l1_index;
}

/* check_refcounts_l1: the table itself, each entry, and collect the L2
 * tables it points to. */
static int
walk_l1 (struct ck *ck, const uint64_t *l1, uint32_t n, uint64_t l1_offset,
         int64_t source, struct refs *refs)
{
  struct owner o = { .kind = OWN_L1, .a = source };
  char sb[200];

  if (n == 0)
    return 0;
  if (inc_refs (ck, l1_offset, (uint64_t) n * 8, 1, &o) < 0)
    return -1;
  for (uint32_t i = 0; i < n; i++) {
    uint64_t e = l1[i], l2;
    struct l2ref *r;

    if (e == 0)
      continue;
    if (e & QK_L1E_RESERVED_MASK)
      report (ck, PR_L1_RESERVED, 1,
              LOC (.table_offset = l1_offset, .index = i, .found = e),
              "%s L1[%u] = 0x%016" PRIx64 " has reserved bits set",
              source_name (ck, source, sb, sizeof sb), i, e);
    l2 = e & QK_L1E_OFFSET_MASK;
    if (!IS_ALIGNED (l2, ck->cs))
      report (ck, PR_L1_UNALIGNED, 1,
              LOC (.table_offset = l1_offset, .index = i, .host_offset = l2),
              "l2_offset=0x%" PRIx64 ": the L2 table for %s L1[%u] is not "
              "cluster aligned", l2, source_name (ck, source, sb, sizeof sb),
              i);
    r = qk_grow (refs->v, &refs->cap, refs->n + 1, sizeof *r);
    if (r == NULL)
      return -1;
    refs->v = r;
    refs->v[refs->n++] = (struct l2ref) { l2, (int32_t) source, i };
  }
  return 0;
}

struct l2group {
  uint64_t l2_offset;
  uint64_t mult;          /* L1 entries pointing here */
  uint64_t active;        /* of which in the active L1 */
  const struct l2ref *first;
  const struct l2ref *first_active;
};

static void
check_compressed_deep (struct ck *ck, uint64_t entry, uint64_t guest,
                       uint8_t *in, uint8_t *out)
{
  uint64_t coff, clen;

  qk_l2_compressed (entry, ck->cb, &coff, &clen);
  if (clen > 2 * ck->cs)
    clen = 2 * ck->cs;
  if (qk_source_read_zeropad (ck->img->src, in, clen, coff) < 0
      || qk_decompress (ck->h->compression_type, in, clen, out, ck->cs) < 0)
    report (ck, PR_COMPRESSED_DAMAGED, 1,
            LOC (.host_offset = coff, .length = clen, .guest_offset = guest),
            "compressed cluster at 0x%" PRIx64 " (%" PRIu64 " bytes, guest "
            "offset 0x%" PRIx64 "): %s", coff, clen, guest, qk_get_error ());
}

/* where an L2 entry is, for walk_l2's reports (built only when one is made) */
#define L2_LOC LOC (.table_offset = l2off, .index = i, .guest_offset = guest, \
                    .found = e0)

/* check_refcounts_l2 for one distinct table, with multiplicity, plus the
 * COPIED check of check_oflag_copied when the active L1 uses it. */
/* have: buf holds the table already (read by a parallel step). from: a
 * parallel step claimed the table's cluster and counted entries
 * [0, from) (the last allocated one before next_contig), and the walk
 * goes on from there; else 0 (and next_contig 0). */
static int
walk_l2 (struct ck *ck, const struct l2group *g, uint8_t *buf,
         uint8_t *zin, uint8_t *zout, bool have, bool resume, uint32_t from,
         uint64_t next_contig)
{
  const struct qk_header *h = ck->h;
  bool extl2 = h->subclusters > 1;
  uint64_t span = (uint64_t) h->l2_entries << ck->cb;
  const struct l2ref *gr = g->first_active ? g->first_active : g->first;
  uint64_t guest_base = (uint64_t) gr->l1_index * span;
  struct owner ol2 = { .kind = OWN_L2, .a = gr->l1_index, .b = gr->source };
  uint64_t l2off = g->l2_offset;

  if (!resume && inc_refs (ck, l2off, ck->cs, g->mult, &ol2) < 0)
    return -1;
  if (!resume && !have
      && qk_source_read_zeropad (ck->img->src, buf, ck->cs, l2off) < 0) {
    report (ck, PR_REFCOUNT_UNREADABLE, g->mult, LOC (.host_offset = l2off),
            "I/O error reading the L2 table at 0x%" PRIx64 ": %s", l2off,
            qk_get_error ());
    return 0;
  }
  if (!resume)
    ck->res->l2_tables_read++;

  /* COPIED on the L1 entries of the active table pointing here */
  if (!resume && g->active && ck->counting && ck->reftable && l2off) {
    uint64_t rc;
    if (stored_refcount (ck, l2off >> ck->cb, &rc) == 0)
      for (const struct l2ref *r = g->first_active;
           r < g->first + g->mult && r->l2_offset == l2off; r++) {
        uint64_t e;
        if (r->source != -1)
          continue;
        e = ck->img->l1[r->l1_index];
        if ((rc == 1) != ((e & QK_OFLAG_COPIED) != 0))
          report (ck, PR_COPIED_L2, 1,
                  LOC (.table_offset = h->l1_table_offset,
                       .index = r->l1_index, .found = e, .expected = rc),
                  "OFLAG_COPIED L2 cluster: l1_index=%u l1_entry=%" PRIx64
                  " refcount=%" PRIu64, r->l1_index, e, rc);
      }
  }

  /* The fast path: 16-bit refcounts (the default), standard L2 entries,
   * no data file, a table of at most one active reference whose count
   * cannot overflow; for the entries that are plain allocated clusters
   * (no flag but COPIED, aligned, inside the file) whose cluster nothing
   * or only snapshot data claimed so far: exactly what the general path
   * below does for them, without its per-entry generality. Anything else
   * goes the general way. */
  bool fast = !extl2 && !ck->data_file && ck->counting && ck->order == 4
              && h->refcount_order == 4 && g->active <= 1
              && g->mult <= ck->refmax && ck->file_len >= ck->cs
              && (g->active || ck->excl);
  bool copied = g->active && ck->counting && ck->reftable && l2off;
  uint64_t fast_limit = ck->file_len - ck->cs;   /* last offset allowed */
  unsigned per_bits = ck->cb + 3 - h->refcount_order;
  uint64_t n_alloc = 0, n_frag = 0;

  for (uint32_t i = from; i < h->l2_entries; i++) {
    const uint8_t *p = buf + (size_t) i * h->l2_entry_size;
    uint64_t e = be64_get (p);
    /* An unallocated cluster (an entry of 0, and no subcluster bitmap),
     * the most common entry, has nothing to count or report: one test,
     * not the dozen of the general path below (each a callback in a
     * fuzzing build). */
    if (e == 0 && (!extl2 || be64_get (p + 8) == 0))
      continue;
    if (fast) {
      uint64_t off = e & QK_L2E_OFFSET_MASK, k = off >> ck->cb, rc;
      if ((e & ~(QK_L2E_OFFSET_MASK | QK_OFLAG_COPIED)) == 0 && off
          && (off & (ck->cs - 1)) == 0 && off <= fast_limit && k < ck->nb
          && ((rc = be16_get (ck->imrt + 2 * k)) == 0
              || (ck->excl && !((ck->excl[k / 8] >> (k & 7)) & 1)
                  && rc <= ck->refmax - g->mult))) {
        be16_put (ck->imrt + 2 * k, (uint16_t) (rc + g->mult));
        imrt_touch (ck, k);
        if (g->active) {
          excl_set (ck, k);
          n_alloc++;
          if (next_contig && off != next_contig)
            n_frag++;
          next_contig = off + ck->cs;
        }
        if (copied) {
          uint64_t src;
          int ok = 0;
          if (ck->sr_buf && k >> per_bits == ck->sr_t)
            src = be16_get (ck->sr_buf
                            + 2 * (k & ((UINT64_C (1) << per_bits) - 1)));
          else
            ok = stored_refcount_lookup (ck, k, &src);
          if (ok == 0 && (src == 1) != ((e & QK_OFLAG_COPIED) != 0)) {
            uint64_t guest = guest_base + ((uint64_t) i << ck->cb);
            const uint64_t e0 = e;
            report (ck, PR_COPIED_DATA, g->active, L2_LOC,
                    "OFLAG_COPIED data cluster: l2_entry=%" PRIx64
                    " refcount=%" PRIu64 " (guest offset 0x%" PRIx64 ")", e,
                    src, guest);
          }
        }
        continue;
      }
    }
    uint64_t bm = extl2 ? be64_get (p + 8) : 0;
    uint64_t guest = guest_base + ((uint64_t) i << ck->cb);
    enum qk_cluster_type t = qk_l2_cluster_type (e, extl2, ck->data_file);
    const uint64_t e0 = e;   /* as found, for the reports */

    ck->at_table = l2off;
    ck->at_index = i;
    ck->at_guest = guest;

    if (t != QK_CLUSTER_COMPRESSED && (e & QK_L2E_STD_RESERVED))
      report (ck, PR_L2_RESERVED, g->mult, L2_LOC,
              "found l2 entry with reserved bits set: %" PRIx64 " (L2 table "
              "0x%" PRIx64 "[%u], guest offset 0x%" PRIx64 ")", e, l2off, i,
              guest);
    if (h->version == 2 && (e & QK_OFLAG_ZERO) && t != QK_CLUSTER_COMPRESSED)
      report (ck, PR_L2_ZERO_FLAG_V2, 1, L2_LOC,
              "L2 table 0x%" PRIx64 "[%u] (guest offset 0x%" PRIx64 ") has "
              "the zero flag in a version 2 image", l2off, i, guest);

    switch (t) {
    case QK_CLUSTER_COMPRESSED: {
      uint64_t coff, clen;
      /* Compressed data is shared byte-wise between neighbours, so it takes
       * no part in duplicate-mapping detection. */
      struct owner od = { .kind = OWN_CDATA, .a = (int64_t) guest,
                          .b = g->active ? -1 : gr->source };
      if (e & QK_OFLAG_COPIED) {
        report (ck, PR_L2_COMPRESSED_COPIED, g->mult, L2_LOC,
                "coffset=0x%" PRIx64 ": copied flag must never be set for "
                "compressed clusters", e & (((uint64_t) 1 << (62 - (ck->cb - 8))) - 1));
        e &= ~QK_OFLAG_COPIED;
      }
      if (ck->data_file) {
        report (ck, PR_L2_COMPRESSED_DATA_FILE, g->mult, L2_LOC,
                "compressed cluster %u with data file, entry=0x%" PRIx64, i,
                e);
        break;
      }
      if (bm)
        report (ck, PR_L2_SUBCLUSTER_COMPRESSED, g->mult, L2_LOC,
                "compressed cluster %u with non-zero subcluster allocation "
                "bitmap, entry=0x%" PRIx64, i, e);
      /* With a bitmap, qemu-img stops at the entry and calls the data
       * leaked, but QEMU's read path ignores the bitmap of a compressed
       * cluster and reads it (as ours does): the data is in use. Counted
       * either way, so that it is not freed as a leak and no repair
       * writes over it; with a bitmap not in the statistics, which stay
       * qemu-img's. */
      qk_l2_compressed (e, ck->cb, &coff, &clen);
      if (inc_refs (ck, coff, clen, g->mult, &od) < 0)
        return -1;
      if (bm)
        break;
      if (g->active) {
        ck->res->allocated_clusters += g->active;
        ck->res->compressed_clusters += g->active;
        ck->res->fragmented_clusters += g->active;
      }
      if (ck->flags & QK_CHECK_DEEP)
        check_compressed_deep (ck, e, guest, zin, zout);
      break;
    }
    case QK_CLUSTER_ZERO_ALLOC:
    case QK_CLUSTER_NORMAL: {
      uint64_t off = e & QK_L2E_OFFSET_MASK;
      if ((bm >> 32) & bm)
        report (ck, PR_L2_SUBCLUSTER_BOTH, g->mult, L2_LOC,
                "offset=%" PRIx64 ": Allocated cluster has corrupted "
                "subcluster allocation bitmap 0x%016" PRIx64, off, bm);
      if (!IS_ALIGNED (off, ck->cs)) {
        bool data = extl2 ? (bm & QK_L2_BITMAP_ALL_ALLOC) != 0
                          : !(e & QK_OFLAG_ZERO);
        if (data)
          report (ck, PR_L2_DATA_UNALIGNED, g->mult, L2_LOC,
                  "offset=%" PRIx64 ": Data cluster is not properly aligned; "
                  "L2 entry corrupted (guest offset 0x%" PRIx64 ")", off,
                  guest);
        else
          report (ck, PR_L2_PREALLOC_UNALIGNED, g->mult, L2_LOC,
                  "offset=%" PRIx64 ": Preallocated cluster is not properly "
                  "aligned; L2 entry corrupted (guest offset 0x%" PRIx64 ")",
                  off, guest);
      }
      if (g->active) {
        ck->res->allocated_clusters += g->active;
        if (next_contig && off != next_contig)
          ck->res->fragmented_clusters += g->active;
        next_contig = off + ck->cs;
      }
      if (ck->data_file) {
        if (g->mult == 1 && off != guest && t == QK_CLUSTER_NORMAL)
          report (ck, PR_L2_DATA_FILE_OFFSET, 1, L2_LOC,
                  "data file cluster 0x%" PRIx64 " does not match its guest "
                  "offset 0x%" PRIx64, off, guest);
        if (off + ck->cs > ck->max_data_end)
          ck->max_data_end = off + ck->cs;
      }
      else {
        /* An active table referenced twice counts as two owners: the
         * first reference claims the cluster, the others (all in one
         * call, so that an L1 whose entries all point here costs one
         * pass, not one per entry) find it claimed and record the
         * conflict once. */
        uint64_t k = off >> ck->cb, rc;
        /* The common cases without a call: a whole cluster inside the
         * file whose count cannot overflow, that nothing has claimed yet
         * or only snapshot, bitmap or compressed data has (no conflict
         * either way); exactly what the inc_refs calls below would do. */
        if (g->active <= 1 && ck->counting && IS_ALIGNED (off, ck->cs)
            && ck->file_len >= ck->cs && off <= ck->file_len - ck->cs
            && k < ck->nb && g->mult <= ck->refmax
            && ((rc = qk_refblock_get (ck->imrt, ck->order, k)) == 0
                || (ck->excl && !excl_get (ck, k, true)
                    && rc <= ck->refmax - g->mult))) {
          if (!g->active && !ck->excl && excl_need (ck) < 0)
            return -1;
          qk_refblock_set (ck->imrt, ck->order, k, rc + g->mult);
          imrt_touch (ck, k);
          if (g->active)
            excl_set (ck, k);
        }
        else {
          struct owner od = { .kind = g->active ? OWN_DATA : OWN_SNAPDATA,
                              .a = guest };
          if (g->active) {
            if (inc_refs (ck, off, ck->cs, 1, &od) < 0
                || (g->active > 1
                    && inc_refs (ck, off, ck->cs, g->active - 1, &od) < 0))
              return -1;
            if (g->mult > g->active) {
              od.kind = OWN_SNAPDATA;
              if (inc_refs (ck, off, ck->cs, g->mult - g->active, &od) < 0)
                return -1;
            }
          }
          else if (inc_refs (ck, off, ck->cs, g->mult, &od) < 0)
            return -1;
        }
      }
      /* COPIED (check_oflag_copied), on the active tables only; it skips
       * an L1 entry whose offset is 0 (reserved bits only) */
      if (g->active && ck->counting && ck->reftable && l2off) {
        uint64_t rc = 1;
        if (ck->data_file || stored_refcount (ck, off >> ck->cb, &rc) == 0) {
          if ((rc == 1) != ((e & QK_OFLAG_COPIED) != 0))
            report (ck, PR_COPIED_DATA, g->active, L2_LOC,
                    "OFLAG_COPIED data cluster: l2_entry=%" PRIx64
                    " refcount=%" PRIu64 " (guest offset 0x%" PRIx64 ")", e,
                    rc, guest);
        }
      }
      break;
    }
    case QK_CLUSTER_ZERO_PLAIN:
      break;
    case QK_CLUSTER_UNALLOCATED:
      if (bm & QK_L2_BITMAP_ALL_ALLOC)
        report (ck, PR_L2_SUBCLUSTER_UNALLOCATED, g->mult, L2_LOC,
                "Unallocated cluster has non-zero subcluster allocation map "
                "0x%016" PRIx64 " (guest offset 0x%" PRIx64 ")", bm, guest);
      break;
    }
  }
  ck->res->allocated_clusters += n_alloc;
  ck->res->fragmented_clusters += n_frag;
  ck->at_table = ck->at_index = ck->at_guest = QK_NONE;
  return 0;
}

/* ---- the L2 walk on every thread ----
 *
 * The distinct L2 tables go in windows of up to WIN_BYTES of tables per
 * thread, each thread taking a run of consecutive tables of the window.
 * Step 1 (all threads): read them, and tell the candidates: tables
 * whose every entry is 0 or a plain allocated cluster (what walk_l2's
 * fast path takes), with a header and group walk_l2 would take it for
 * (group_fast), and the clusters they would claim (their own and up to
 * WT_RUNS runs of entries). The first tables of the window up to the
 * first that is not a candidate are then counted by step 2 (all
 * threads), provided that no cluster is claimed by tables of two
 * threads: each cluster then sees its claims in the order of the
 * single-threaded walk, by one thread. Step 2 counts exactly what
 * walk_l2's fast path would, and stops a thread at the first claim that
 * would not go the fast way (already claimed, a COPIED flag to report,
 * a stored refcount it cannot read): the calling thread then walks the
 * rest of that thread's tables from there, in window order, with the
 * general code and its reports (what a thread stopped at touches only
 * the clusters of its own tables, so the other threads' counts made
 * meanwhile change nothing it sees). Every report of the walk is thus
 * made by the calling thread, in table order. */

#define WIN_BYTES (256U << 10)
#define WT_RUNS 16
#define STOP_SELF UINT32_MAX   /* step 2 claimed nothing of the table */

struct wtab {
  struct l2group g;
  size_t j_end;           /* refs.v index past the group */
  uint8_t *buf;
  bool have;              /* buf holds the table */
  bool cand;
  /* n_run > 0: the allocated entries, in runs of consecutive entries
   * mapping consecutive clusters */
  unsigned n_run;
  struct wrun {
    uint32_t i0, len;     /* entries [i0, i0 + len) */
    uint64_t k0;          /* map clusters [k0, k0 + len) */
    unsigned copied;      /* 1: all have COPIED; 2: none has */
  } run[WT_RUNS];
  unsigned n_iv;
  struct range iv[WT_RUNS + 1];   /* its own cluster, then entry runs */
  /* step 2: entries [0, stop) counted (l2_entries: all) */
  uint32_t stop;
  uint64_t next_contig, n_alloc, n_frag;
};

struct win {
  struct wtab *t;
  size_t n;               /* tables in the window */
  size_t m;               /* tables [0, m) go to step 2 */
  size_t first[CK_MAX_THREADS + 1];   /* thread i: [first[i], first[i+1]) */
};

/* the conditions of walk_l2's fast path that hold for a whole table, and
 * its own claim inside the file (inc_refs' plain case) */
static bool
group_fast (const struct ck *ck, const struct l2group *g)
{
  const struct qk_header *h = ck->h;
  uint64_t l2off = g->l2_offset;

  return h->subclusters <= 1 && h->l2_entry_size == 8 && !ck->data_file
         && ck->counting && ck->order == 4 && h->refcount_order == 4
         && g->active <= 1 && g->mult <= ck->refmax
         && ck->file_len >= ck->cs && (g->active || ck->excl)
         && l2off && IS_ALIGNED (l2off, ck->cs)
         && l2off <= ck->file_len - ck->cs && (l2off >> ck->cb) < ck->nb;
}

static bool
classify (const struct ck *ck, struct wtab *t)
{
  const uint64_t flags = ~(QK_L2E_OFFSET_MASK | QK_OFLAG_COPIED);
  const uint64_t limit = ck->file_len - ck->cs, nb = ck->nb, cs = ck->cs;
  const unsigned cb = ck->cb;
  const uint32_t n = ck->h->l2_entries;
  const uint8_t *buf = t->buf;
  uint64_t self = t->g.l2_offset >> cb;
  struct range *r = NULL;
  bool exact = true;

  t->iv[0] = (struct range) { self, self + 1 };
  t->n_iv = 1;
  t->n_run = 0;
  for (uint32_t i = 0, j; i < n; i = j) {
    uint64_t e = be64_get (buf + 8 * (size_t) i), x, k, len;
    j = i + 1;
    if (e == 0)
      continue;
    /* the run of entries mapping the clusters after this one's */
    for (x = e + cs; j < n && be64_get (buf + 8 * (size_t) j) == x; j++)
      x += cs;
    len = j - i;
    /* its first and last entry are plain allocated clusters in the file
     * (then so are those between) */
    for (int end = 0; end < 2; end++) {
      uint64_t v = end ? x - cs : e, off = v & QK_L2E_OFFSET_MASK;
      if ((v & flags) || off == 0 || (off & (cs - 1)) || off > limit
          || (off >> cb) >= nb)
        return false;
    }
    k = (e & QK_L2E_OFFSET_MASK) >> cb;
    if (exact && t->n_run < WT_RUNS)
      t->run[t->n_run++] = (struct wrun) { i, (uint32_t) len, k,
                                           (e & QK_OFLAG_COPIED) ? 1 : 2 };
    else
      exact = false;
    if (r && k == r->end)
      r->end += len;
    else if (r && k >= r->first && k + len <= r->end)
      ;
    else if (t->n_iv <= WT_RUNS) {
      r = &t->iv[t->n_iv++];
      *r = (struct range) { k, k + len };
    }
    else {
      if (k < r->first)
        r->first = k;
      if (k + len > r->end)
        r->end = k + len;
    }
  }
  if (!exact)
    t->n_run = 0;
  return true;
}

static void
step_none (struct ck *ck, struct wk *w, void *arg)
{
  (void) ck, (void) w, (void) arg;
}

static void
step_read (struct ck *ck, struct wk *w, void *arg)
{
  struct win *win = arg;

  for (size_t x = win->first[w->id]; x < win->first[w->id + 1]; x++) {
    struct wtab *t = &win->t[x];
    t->have = qk_source_read_zeropad (ck->img->src, t->buf, ck->cs,
                                      t->g.l2_offset) == 0;
    t->cand = t->cand && t->have && classify (ck, t);
  }
}

/* The refcount block of cluster block index rt for the COPIED checks of
 * thread w: 0 and the block (NULL: none, refcounts 0); 1: the lookup
 * fails as stored_refcount_lookup's does (the check is skipped); -1: not
 * here (the calling thread decides). */
static int
wk_block (struct ck *ck, struct wk *w, uint64_t rt, const uint8_t **blk)
{
  uint64_t rb = rt < ck->reftable_n
                ? ck->reftable[rt] & QK_REFT_OFFSET_MASK : 0;
  size_t budget = 4 + 2 * MAX (1, WIN_BYTES / ck->cs);

  *blk = NULL;
  if (rb == 0)
    return 0;
  if (!IS_ALIGNED (rb, ck->cs) || rb > INT64_MAX - ck->cs)
    return 1;
  if (w->reads > budget)   /* blocks in random order: not here */
    return -1;
  return (*blk = wk_refblock (ck, w, rt, WK_SLOTS)) ? 0 : -1;
}

static inline void
excl_flush (uint8_t *excl, uint64_t byte, unsigned bits)
{
  if (bits)
    __atomic_fetch_or (&excl[byte], (uint8_t) bits, __ATOMIC_RELAXED);
}

/* whether the claim bits of clusters [k, end) are all clear (the edge
 * bytes may be another thread's too) */
static bool
excl_clear (const uint8_t *excl, uint64_t k, uint64_t end)
{
  for (; k < end && (k & 7); k++)
    if ((__atomic_load_n (&excl[k / 8], __ATOMIC_RELAXED) >> (k & 7)) & 1)
      return false;
  if (end - k >= 8 && !all_zero (excl + k / 8, (end - k) / 8))
    return false;
  for (k += (end - k) / 8 * 8; k < end; k++)
    if ((__atomic_load_n (&excl[k / 8], __ATOMIC_RELAXED) >> (k & 7)) & 1)
      return false;
  return true;
}

struct cstate {
  uint64_t next_contig, n_alloc, n_frag;
};

/* count_table for one run of consecutive entries mapping consecutive
 * clusters: when the fast path would take every one of them (claimed by
 * nothing, or by nothing exclusive and without overflow; the stored
 * refcounts agree with the COPIED flags), all at once, 8 bytes at a
 * time; else false, and nothing done. */
static bool
count_run (struct ck *ck, struct wk *w, const struct wtab *t,
           const struct wrun *u, struct cstate *st)
{
  const struct l2group *g = &t->g;
  const uint64_t k0 = u->k0, len = u->len, cs = ck->cs;
  const unsigned per_bits = ck->cb + 3 - 4;
  uint8_t *imrt = ck->imrt, *excl = ck->excl, *c = imrt + 2 * k0;
  const uint64_t lanes = UINT64_C (0x0001000100010001);
  const uint64_t highs = UINT64_C (0x8000800080008000);
  uint8_t vb[8];
  uint64_t one4, v4, j;
  bool zero;

  for (unsigned i = 0; i < 4; i++)
    be16_put (vb + 2 * i, 1);
  memcpy (&one4, vb, 8);
  for (unsigned i = 0; i < 4; i++)
    be16_put (vb + 2 * i, (uint16_t) g->mult);
  memcpy (&v4, vb, 8);

  zero = all_zero (c, 2 * len);
  if (!zero) {
    uint64_t lim = ck->refmax - g->mult, bad = 0;
    if (!excl || !excl_clear (excl, k0, k0 + len))
      return false;
    for (j = 0; j < len; j++)
      bad |= be16_get (c + 2 * j) > lim;
    if (bad)
      return false;
  }
  if (g->active && ck->reftable) {   /* the COPIED checks */
    bool all = u->copied == 1;
    for (uint64_t k = k0; k < k0 + len;) {
      uint64_t rt = k >> per_bits;
      uint64_t end = MIN (k0 + len, (rt + 1) << per_bits);
      const uint8_t *b;
      int r = wk_block (ck, w, rt, &b);
      if (r < 0)
        return false;
      if (r == 0) {
        uint64_t bad = 0, x, y;
        if (b == NULL)
          bad = all;   /* refcounts 0 */
        else {
          const uint8_t *p = b + 2 * (k & ((UINT64_C (1) << per_bits) - 1));
          j = 0;
          if (all)
            for (; j + 4 <= end - k; j += 4) {
              memcpy (&x, p + 2 * j, 8);
              bad |= x ^ one4;
            }
          else
            for (; j + 4 <= end - k; j += 4) {   /* a lane equal to 1 */
              memcpy (&x, p + 2 * j, 8);
              y = x ^ one4;
              bad |= (y - lanes) & ~y & highs;
            }
          for (; j < end - k; j++)
            bad |= (be16_get (p + 2 * j) == 1) != all;
        }
        if (bad)
          return false;
      }
      k = end;
    }
  }
  j = 0;
  if (zero)
    for (; j + 4 <= len; j += 4)
      memcpy (c + 2 * j, &v4, 8);
  for (; j < len; j++)
    be16_put (c + 2 * j, (uint16_t) (be16_get (c + 2 * j) + g->mult));
  imrt_touch_range (ck, k0, k0 + len);
  if (g->active) {
    if (excl) {
      uint64_t k = k0, end = k0 + len;
      for (; k < end && (k & 7); k++)
        excl_flush (excl, k / 8, 1U << (k & 7));
      for (; k + 8 <= end; k += 8)
        excl[k / 8] = 0xff;   /* a byte of its own, all clear */
      for (; k < end; k++)
        excl_flush (excl, k / 8, 1U << (k & 7));
    }
    st->n_alloc += len;
    if (st->next_contig && k0 * cs != st->next_contig)
      st->n_frag++;
    st->next_contig = (k0 + len) * cs;
  }
  return true;
}

/* Step 2 for one table: walk_l2's fast path (16-bit refcounts, standard
 * entries), stopping before the first claim it would not take. */
static bool
count_table (struct ck *ck, struct wk *w, struct wtab *t)
{
  const struct l2group *g = &t->g;
  uint8_t *imrt = ck->imrt, *excl = ck->excl;
  const unsigned cb = ck->cb, per_bits = cb + 3 - 4;
  const uint64_t self = g->l2_offset >> cb, mult = g->mult, cs = ck->cs;
  const uint64_t refmax = ck->refmax, pmask = (UINT64_C (1) << per_bits) - 1;
  const bool active = g->active != 0, copied = active && ck->reftable;
  const uint8_t *buf = t->buf, *sr = NULL;
  uint64_t sr_t = UINT64_MAX, next_contig, n_alloc, n_frag;
  uint64_t pbyte = 0;
  unsigned pbits = 0;
  int sr_r = 0;
  uint32_t i = 0, n = ck->h->l2_entries;
  struct cstate st = { 0 };

  t->stop = STOP_SELF;
  t->n_alloc = t->n_frag = t->next_contig = 0;
  if (copied) {   /* COPIED on the active L1 entries pointing here */
    const uint8_t *b;
    int r = wk_block (ck, w, self >> per_bits, &b);
    if (r < 0)
      return false;
    if (r == 0) {
      uint64_t rc = b ? be16_get (b + 2 * (self & pmask)) : 0;
      for (const struct l2ref *x = g->first_active;
           x < g->first + g->mult && x->l2_offset == g->l2_offset; x++)
        if (x->source == -1
            && (rc == 1) != ((ck->img->l1[x->l1_index] & QK_OFLAG_COPIED)
                             != 0))
          return false;
    }
  }
  if (be16_get (imrt + 2 * self) != 0)
    return false;
  be16_put (imrt + 2 * self, (uint16_t) mult);
  imrt_touch (ck, self);
  if (excl)
    excl_flush (excl, self / 8, 1U << (self & 7));
  if (t->n_run) {
    unsigned r = 0;
    while (r < t->n_run && count_run (ck, w, t, &t->run[r], &st))
      r++;
    if (r == t->n_run) {
      t->stop = n;
      t->next_contig = st.next_contig;
      t->n_alloc = st.n_alloc;
      t->n_frag = st.n_frag;
      return true;
    }
    i = t->run[r].i0;   /* entry by entry from there */
  }
  next_contig = st.next_contig;
  n_alloc = st.n_alloc;
  n_frag = st.n_frag;
  for (; i < n; i++) {
    uint64_t e = be64_get (buf + 8 * (size_t) i), off, k, rc;
    if (e == 0)
      continue;
    off = e & QK_L2E_OFFSET_MASK;
    k = off >> cb;
    rc = be16_get (imrt + 2 * k);
    if (rc) {
      unsigned bits;
      if (!excl || rc > refmax - mult)
        break;
      bits = __atomic_load_n (&excl[k / 8], __ATOMIC_RELAXED);
      if (k / 8 == pbyte)
        bits |= pbits;
      if ((bits >> (k & 7)) & 1)
        break;
    }
    if (copied) {
      if (k >> per_bits != sr_t) {
        sr_t = k >> per_bits;
        if ((sr_r = wk_block (ck, w, sr_t, &sr)) < 0)
          break;
      }
      if (sr_r == 0
          && ((sr ? be16_get (sr + 2 * (k & pmask)) : 0) == 1)
             != ((e & QK_OFLAG_COPIED) != 0))
        break;
    }
    be16_put (imrt + 2 * k, (uint16_t) (rc + mult));
    imrt_touch (ck, k);
    if (active) {
      if (excl) {
        if (k / 8 != pbyte) {
          excl_flush (excl, pbyte, pbits);
          pbyte = k / 8;
          pbits = 0;
        }
        pbits |= 1U << (k & 7);
      }
      n_alloc++;
      if (next_contig && off != next_contig)
        n_frag++;
      next_contig = off + cs;
    }
  }
  if (excl)
    excl_flush (excl, pbyte, pbits);
  t->stop = i;
  t->next_contig = next_contig;
  t->n_alloc = n_alloc;
  t->n_frag = n_frag;
  return i == n;
}

static void
step_count (struct ck *ck, struct wk *w, void *arg)
{
  struct win *win = arg;
  size_t x = win->first[w->id], end = MIN (win->first[w->id + 1], win->m);

  for (; x < end; x++)
    if (!count_table (ck, w, &win->t[x]))
      break;
  for (x++; x < end; x++)
    win->t[x].stop = STOP_SELF;
}

struct ivx {
  uint64_t first, end;
  size_t thread;
};

static int
cmp_ivx (const void *a, const void *b)
{
  const struct ivx *x = a, *y = b;
  return x->first < y->first ? -1 : x->first > y->first;
}

/* whether tables [0, m) of two threads claim a cluster in common */
static bool
overlap (const struct win *win, unsigned threads, struct ivx *v)
{
  size_t n = 0;
  uint64_t max_end = 0;
  size_t max_thread = 0;

  for (unsigned c = 0; c < threads; c++)
    for (size_t x = win->first[c]; x < MIN (win->first[c + 1], win->m); x++)
      for (unsigned j = 0; j < win->t[x].n_iv; j++)
        v[n++] = (struct ivx) { win->t[x].iv[j].first, win->t[x].iv[j].end,
                                c };
  qsort (v, n, sizeof *v, cmp_ivx);
  for (size_t i = 0; i < n; i++) {
    if (i && v[i].first < max_end && v[i].thread != max_thread)
      return true;
    if (i == 0 || v[i].end > max_end) {
      max_end = v[i].end;
      max_thread = v[i].thread;
    }
  }
  return false;
}

/* Ask the kernel for the tables of the next window while this one is
 * counted (contiguous tables in one call). */
static void
read_ahead (const struct ck *ck, const struct refs *refs, size_t i,
            size_t tables)
{
  int fd = ck->img->src->fd;
  uint64_t start = 0, end = 0;

  if (fd < 0 || ck->img->src->mem)
    return;
  for (; i < refs->n && tables; i++) {
    uint64_t off = refs->v[i].l2_offset;
    if (i && off == refs->v[i - 1].l2_offset)
      continue;
    tables--;
    if (off == end) {
      end += ck->cs;
      continue;
    }
    if (end > start)
      posix_fadvise (fd, (off_t) start, (off_t) (end - start),
                     POSIX_FADV_WILLNEED);
    start = off;
    end = off + ck->cs;
  }
  if (end > start && end <= INT64_MAX)
    posix_fadvise (fd, (off_t) start, (off_t) (end - start),
                   POSIX_FADV_WILLNEED);
}

/* walk_tables with the parallel steps: 1 done, 0 not possible here (the
 * caller walks), -1 failed */
static int
walk_tables_par (struct ck *ck, struct refs *refs, uint8_t *zin,
                 uint8_t *zout)
{
  unsigned threads;
  size_t per = MAX (1, WIN_BYTES / ck->cs), cap, i = 0;
  struct wtab *tabs;
  struct ivx *iv;
  uint8_t *bufs;
  int r = 0;

  /* the threads first: fewer may start than asked for */
  if (ck_parallel (ck, step_none, NULL) < 0)
    return 0;
  threads = ck->nthreads;
  cap = per * threads;
  /* no larger than the distinct tables (a window never holds more): a
   * window and its buffers are allocated for every check, and most
   * images have fewer tables than one holds */
  {
    size_t d = 0;
    for (size_t j = 0; j < refs->n && d < cap; j++)
      d += j == 0 || refs->v[j].l2_offset != refs->v[j - 1].l2_offset;
    cap = d;
  }
  tabs = calloc (cap, sizeof *tabs);
  iv = malloc (cap * (WT_RUNS + 1) * sizeof *iv);
  bufs = malloc (cap * ck->cs);
  if (tabs == NULL || iv == NULL || bufs == NULL) {
    free (tabs);
    free (iv);
    free (bufs);
    return 0;
  }
  for (size_t x = 0; x < cap; x++)
    tabs[x].buf = bufs + x * ck->cs;
  while (i < refs->n && r == 0) {
    struct win win = { .t = tabs };
    while (win.n < cap && i < refs->n) {
      struct wtab *t = &tabs[win.n++];
      size_t j = i;
      t->g = (struct l2group) { .l2_offset = refs->v[i].l2_offset,
                                .first = &refs->v[i] };
      for (; j < refs->n && refs->v[j].l2_offset == t->g.l2_offset; j++) {
        t->g.mult++;
        if (refs->v[j].source == -1) {
          if (!t->g.first_active)
            t->g.first_active = &refs->v[j];
          t->g.active++;
        }
      }
      t->j_end = j;
      t->cand = group_fast (ck, &t->g);
      t->have = false;
      t->stop = STOP_SELF;
      i = j;
    }
    for (unsigned c = 0; c <= threads; c++)
      win.first[c] = c * win.n / threads;
    read_ahead (ck, refs, i, cap);
    if (ck_parallel (ck, step_read, &win) < 0) {
      for (size_t x = 0; x < win.n; x++)
        tabs[x].have = tabs[x].cand = false;
    }
    while (win.m < win.n && tabs[win.m].cand)
      win.m++;
    if (win.m && overlap (&win, threads, iv))
      win.m = 0;
    if (win.m && ck_parallel (ck, step_count, &win) < 0)
      win.m = 0;
    for (size_t x = 0; x < win.n && r == 0; x++) {
      struct wtab *t = &tabs[x];
      ck->l2_walked = t->j_end;
      if (x < win.m && t->stop != STOP_SELF) {
        ck->res->l2_tables_read++;
        ck->res->allocated_clusters += t->n_alloc;
        ck->res->fragmented_clusters += t->n_frag;
        if (t->stop < ck->h->l2_entries)
          r = walk_l2 (ck, &t->g, t->buf, zin, zout, true, true, t->stop,
                       t->next_contig);
      }
      else
        r = walk_l2 (ck, &t->g, t->buf, zin, zout, t->have, false, 0, 0);
    }
  }
  free (tabs);
  free (iv);
  free (bufs);
  return r < 0 ? -1 : 1;
}

static int
walk_tables (struct ck *ck, struct refs *refs)
{
  uint8_t *buf = malloc (ck->cs), *zin = NULL, *zout = NULL;
  int r = 0;

  if (buf == NULL) {
    set_error (ENOMEM, "malloc");
    return -1;
  }
  if (ck->flags & QK_CHECK_DEEP) {
    zin = malloc (2 * ck->cs);
    zout = malloc (ck->cs);
    if (!zin || !zout) {
      free (buf); free (zin); free (zout);
      set_error (ENOMEM, "malloc");
      return -1;
    }
  }
  /* Offset order: every distinct L2 table read once, sequentially. */
  if (refs->n)   /* qsort (NULL, 0, ...) is undefined */
    qsort (refs->v, refs->n, sizeof *refs->v, cmp_l2ref);
  ck->n_owners_pre_l2 = ck->n_owners;
  if (ck->nthreads && refs->n > 1) {
    int pr = walk_tables_par (ck, refs, zin, zout);
    if (pr != 0) {
      r = pr < 0 ? -1 : 0;
      goto done;
    }
  }
  for (size_t i = 0; i < refs->n && r == 0;) {
    struct l2group g = { .l2_offset = refs->v[i].l2_offset,
                         .first = &refs->v[i] };
    size_t j = i;
    for (; j < refs->n && refs->v[j].l2_offset == g.l2_offset; j++) {
      g.mult++;
      if (refs->v[j].source == -1) {
        if (!g.first_active)
          g.first_active = &refs->v[j];
        g.active++;
      }
    }
    ck->l2_walked = j;   /* this table claims its cluster first thing */
    r = walk_l2 (ck, &g, buf, zin, zout, false, false, 0, 0);
    i = j;
  }
done:
  free (buf);
  free (zin);
  free (zout);
  return r;
}

struct snapkey {
  const char *key;
  size_t i;
};

static int
cmp_snapkey (const void *a, const void *b)
{
  const struct snapkey *x = a, *y = b;
  int c = strcmp (x->key, y->key);
  if (c)
    return c;
  return x->i < y->i ? -1 : x->i > y->i;
}

/* Snapshots sharing an ID (or a name): each one after the first is
 * reported once, against the first (sorted, so a table of 65536 entries
 * all with the same empty ID costs n log n, not n squared). */
static void
duplicate_snapshots (struct ck *ck, bool names)
{
  const struct qk_image *img = ck->img;
  struct snapkey *v = malloc (img->n_snaps * sizeof *v);

  if (v == NULL)
    return;
  for (size_t i = 0; i < img->n_snaps; i++)
    v[i] = (struct snapkey) { names ? img->snaps[i].s.name
                                    : img->snaps[i].s.id, i };
  qsort (v, img->n_snaps, sizeof *v, cmp_snapkey);
  for (size_t j = 1, first = 0; j < img->n_snaps; j++) {
    size_t i = v[j].i;
    if (strcmp (v[j].key, v[first].key) != 0) {
      first = j;
      continue;
    }
    report (ck, names ? PR_SN_DUPLICATE_NAME : PR_SN_DUPLICATE_ID, 1,
            LOC (.table_offset = img->snaps[i].s.entry_offset, .index = i),
            "snapshot table entries %zu and %zu have the same %s '%s'",
            v[first].i, i, names ? "name" : "ID", v[j].key);
  }
  free (v);
}

int
phase_tables (struct ck *ck)
{
  struct qk_image *img = ck->img;
  const struct qk_header *h = ck->h;
  struct refs *refs = &ck->refs;
  int r = -1;
  uint64_t snap_bytes = 0;
  bool snaps = img->snaps_ok;

  /* the header */
  {
    struct owner o = { .kind = OWN_HEADER };
    if (inc_refs (ck, 0, ck->cs, 1, &o) < 0)
      goto out;
  }
  /* the active L1 (qemu-img walks whatever l1_size says) */
  if (!img->l1_ok && h->l1_size)
    ck->missing = "the active L1 table";
  if (img->l1_ok) {
    if (walk_l1 (ck, img->l1, img->l1_count, h->l1_table_offset, -1, refs) < 0)
      goto out;
  }
  else if (IS_ALIGNED (h->l1_table_offset, ck->cs)
           && (uint64_t) h->l1_size * 8 <= QK_MAX_L1_BYTES) {
    /* past EOF: QEMU reads zeros; count the table (and say it is past EOF) */
    struct owner o = { .kind = OWN_L1, .a = -1 };
    uint64_t bytes = (uint64_t) h->l1_size * 8;
    if (inc_refs (ck, h->l1_table_offset, bytes, 1, &o) < 0)
      goto out;
    /* inc_refs says so from a cluster past the end on; a table that ends
     * inside the file's partial last cluster (torn by a truncation) is
     * as unreadable, and QEMU reads its entries from what is there and
     * zeros: the mapping it gives is not the image's */
    if (h->l1_size && h->l1_table_offset + bytes > ck->file_len
        && h->l1_table_offset + bytes < ck->file_len + ck->cs)
      report (ck, PR_PAST_EOF, 1,
              LOC (.host_offset = h->l1_table_offset, .length = bytes),
              "the active L1 table at 0x%" PRIx64 " (%u entries) runs past "
              "the end of the file (%" PRIu64 " bytes): its mapping cannot "
              "be read (QEMU reads the missing bytes as zeros)",
              h->l1_table_offset, h->l1_size, ck->file_len);
  }

  /* the snapshot table (qcow2_check_read_snapshot_table) */
  if (h->nb_snapshots > 65536) {
    report (ck, PR_SN_TOO_MANY, 1, LOC (.found = h->nb_snapshots),
            "%u snapshots: the snapshot table is too large (%u overhanging "
            "snapshots; qemu-img check -r all discards them)",
            h->nb_snapshots, h->nb_snapshots - 65536);
    snaps = false;
  }
  else if (!IS_ALIGNED (h->snapshots_offset, ck->cs)
           || h->snapshots_offset > INT64_MAX - (uint64_t) h->nb_snapshots * 40) {
    /* qcow2_validate_table: even with no snapshots */
    report (ck, PR_SN_TABLE_INVALID, 1,
            LOC (.host_offset = h->snapshots_offset),
            "invalid snapshot table offset 0x%" PRIx64, h->snapshots_offset);
    snaps = false;
  }
  else if (!img->snaps_ok) {
    const char *why = img->snaps_why ? img->snaps_why
                                     : "an entry is damaged";
    report (ck, PR_SN_TABLE_UNREADABLE, 1,
            LOC (.host_offset = h->snapshots_offset),
            "failed to read the snapshot table: %s", why);
  }
  else if (img->snaps_qemu < img->n_snaps)
    /* qcow2_read_snapshots: "Snapshot table is too big" (EFBIG) */
    report (ck, PR_SN_TABLE_TOO_BIG, 1,
            LOC (.host_offset = h->snapshots_offset, .index = img->snaps_qemu),
            "the snapshot table is too big: entry %zu ends past QEMU's "
            "limit of 64 MiB (%zu of %zu entries fit)", img->snaps_qemu,
            img->snaps_qemu, img->n_snaps);
  if (h->nb_snapshots && !snaps)
    ck->missing = ck->missing ? "the active L1 table and the snapshot table"
                              : "the snapshot table";
  if (snaps && ck->data_file && img->n_snaps)
    report (ck, PR_SN_DATA_FILE, 1, LOC (.found = img->n_snaps),
            "%zu snapshots in image with data file", img->n_snaps);

  for (size_t i = 0; snaps && i < img->n_snaps; i++) {
    const struct qk_snapshot *s = &img->snaps[i].s;
    uint64_t *l1 = NULL;
    uint32_t n;
    const struct qk_problem *loc = LOC (.table_offset = s->entry_offset,
                                        .index = i);

    if (s->extra_data_size > 1024)
      report (ck, PR_SN_EXTRA_TOO_BIG, 1, loc,
              "snapshot table entry %zu has too much extra metadata (%u > "
              "1024)", i, s->extra_data_size);
    else if (h->version >= 3 && s->extra_data_size < 16)
      report (ck, PR_SN_EXTRA_INCOMPLETE, 1, loc,
              "snapshot table entry %zu is incomplete (%u bytes of extra data, "
              "version 3 needs 16)", i, s->extra_data_size);
    if (s->has_vm_state_size_large && s->vm_state_size32
        && s->vm_state_size32 != s->vm_state_size)
      report (ck, PR_SN_VM_STATE, 1, loc,
              "snapshot %s (%s): VM state size %u disagrees with the 64-bit "
              "one %" PRIu64, s->id, s->name, s->vm_state_size32,
              s->vm_state_size);
    snap_bytes += s->entry_size;
    if (i + 1 == img->n_snaps) {
      /* The last entry is not padded. Its ID and name sizes as stored
       * (they may hold NUL bytes, which strlen would stop at). */
      uint8_t sz[4];
      uint64_t raw = 40 + (uint64_t) s->extra_data_size + strlen (s->id)
                     + strlen (s->name);
      if (qk_source_read_zeropad (img->src, sz, 4, s->entry_offset + 12) == 0)
        raw = 40 + (uint64_t) s->extra_data_size + be16_get (sz)
              + be16_get (sz + 2);
      snap_bytes -= s->entry_size - raw;
    }

    if (!IS_ALIGNED (s->l1_table_offset, ck->cs)) {
      report (ck, PR_SN_L1_UNALIGNED, 1,
              LOC (.table_offset = s->entry_offset, .index = i,
                   .host_offset = s->l1_table_offset),
              "snapshot %s (%s) l1_offset=%#" PRIx64 ": L1 table is not "
              "cluster aligned; snapshot table entry corrupted", s->id,
              s->name, s->l1_table_offset);
      ck->uncounted = "a snapshot's L1 table";
      continue;
    }
    if (s->l1_size > (32U << 20) / 8) {
      report (ck, PR_SN_L1_TOO_LARGE, 1,
              LOC (.table_offset = s->entry_offset, .index = i,
                   .found = s->l1_size),
              "snapshot %s (%s) l1_size=%#" PRIx32 ": L1 table is too large; "
              "snapshot table entry corrupted", s->id, s->name, s->l1_size);
      ck->uncounted = "a snapshot's L1 table";
      continue;
    }
    {
      uint64_t dsize = s->has_disk_size ? s->disk_size : h->size;
      uint64_t per = ck->cs * h->l2_entries;
      uint64_t need = dsize / per + (dsize % per != 0);
      if (s->l1_size < need)
        report (ck, PR_SN_L1_SIZE, 1,
                LOC (.table_offset = s->entry_offset, .index = i,
                     .found = s->l1_size, .expected = need),
                "snapshot %s (%s): L1 table of %u entries is too small for "
                "its disk size %" PRIu64 " (needs %" PRIu64 ")", s->id,
                s->name, s->l1_size, dsize, need);
    }
    if (s->l1_size == 0)
      continue;
    if (qk_image_read_snapshot_l1 (img, i, &l1, &n) < 0) {
      /* qemu-img reads past EOF as zeros: count the table, no entries */
      struct owner o = { .kind = OWN_L1, .a = (int64_t) i };
      if (inc_refs (ck, s->l1_table_offset, (uint64_t) s->l1_size * 8, 1,
                    &o) < 0)
        goto out;
      ck->uncounted = "a snapshot's L1 table";
      continue;
    }
    r = walk_l1 (ck, l1, n, s->l1_table_offset, (int32_t) i, refs);
    free (l1);
    if (r < 0)
      goto out;
    r = -1;
  }
  if (snaps && img->n_snaps > 1) {
    duplicate_snapshots (ck, false);
    duplicate_snapshots (ck, true);
  }
  if (snaps && img->n_snaps) {
    struct owner o = { .kind = OWN_SNAPTABLE };
    if (inc_refs (ck, h->snapshots_offset, snap_bytes, 1, &o) < 0)
      goto out;
  }
  r = walk_tables (ck, refs);
out:
  return r;
}
