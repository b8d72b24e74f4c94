/* Passes 3 and 4 of the check: the refcount table and blocks (counted as
 * metadata; a block's own refcount must be 1), and the counted references
 * against the stored refcounts (leaks, refcounts too low, the image end
 * offset). Also the stored refcount lookups of the COPIED checks, through
 * a cache of the refcount blocks that the comparison reads from too. */
#include <config.h>

#include "check/ck.h"

/* ---- stored refcounts: the refcount block cache ---- */

/* A buffer for slot s (which has none): a new one while there are fewer
 * than two, or when grow says so, else the buffer of the slot used
 * longest ago. */
static int
refblock_buffer (struct ck *ck, struct rbslot *s, bool grow)
{
  size_t si = s - ck->rbc, v = 0;

  if (ck->n_rb_bufs < 2 || grow) {
    if ((s->buf = malloc (ck->cs)) == NULL) {
      set_error (ENOMEM, "malloc");
      ck->rbc_nomem = true;
      return -1;
    }
    ck->rb_bufs[ck->n_rb_bufs++] = si;
    return 0;
  }
  for (size_t i = 1; i < ck->n_rb_bufs; i++)
    if (ck->rbc[ck->rb_bufs[i]].used < ck->rbc[ck->rb_bufs[v]].used)
      v = i;
  s->buf = ck->rbc[ck->rb_bufs[v]].buf;
  ck->rbc[ck->rb_bufs[v]] = (struct rbslot) { 0 };
  ck->rb_bufs[v] = si;
  return 0;
}

/* The refcount block of table index t, at rb (aligned, not 0), from the
 * cache or read into it; NULL if it cannot be read. grow: a block read
 * again (evicted) gets a buffer of its own, within the cache's size
 * (false in the comparison, which reads in order). */
static const uint8_t *
refblock (struct ck *ck, uint64_t t, uint64_t rb, bool grow)
{
  struct rbslot *s = &ck->rbc[t & (ck->n_rbc - 1)];
  bool seen = t < ck->reftable_n && (ck->rb_seen[t / 8] >> (t & 7)) & 1;

  if (s->buf && s->t == t + 1) {
    s->used = ++ck->rb_tick;
    return s->buf;
  }
  if (s->buf == NULL && refblock_buffer (ck, s, grow && seen) < 0)
    return NULL;
  if (ck->sr_buf == s->buf)
    ck->sr_buf = NULL;
  s->t = 0;
  s->used = ++ck->rb_tick;
  if (qk_source_read_zeropad (ck->img->src, s->buf, ck->cs, rb) < 0)
    return NULL;
  s->t = t + 1;
  if (t < ck->reftable_n)
    ck->rb_seen[t / 8] |= 1U << (t & 7);
  return s->buf;
}

/* qk_image_refcount's answers, from the cache */
int
stored_refcount_lookup (struct ck *ck, uint64_t cluster, uint64_t *rc)
{
  unsigned per_bits;
  uint64_t t, rb;
  const uint8_t *buf;

  if (ck->h->refcount_order > 6)    /* qk_image_refcount says why */
    return qk_image_refcount (ck->img, cluster, rc);
  per_bits = ck->cb + 3 - ck->h->refcount_order;
  t = cluster >> per_bits;
  rb = t < ck->reftable_n ? ck->reftable[t] & QK_REFT_OFFSET_MASK : 0;
  if (rb == 0) {
    *rc = 0;
    return 0;
  }
  if (!IS_ALIGNED (rb, ck->cs) || rb > INT64_MAX - ck->cs)
    return -1;
  if ((buf = refblock (ck, t, rb, true)) == NULL)
    return -1;
  ck->sr_t = t;
  ck->sr_buf = buf;
  *rc = qk_refblock_get (buf, ck->h->refcount_order,
                         cluster & ((UINT64_C (1) << per_bits) - 1));
  return 0;
}

/* ---- phase 3: refcount structures ---- */

int
phase_refcount_structs (struct ck *ck)
{
  const struct qk_header *h = ck->h;
  struct owner o = { .kind = OWN_REFTABLE };
  uint64_t end;

  if (inc_refs (ck, h->refcount_table_offset, ck->reftable_n * 8, 1, &o) < 0)
    return -1;
  ck->reftable_counted = ck->reftable_n
    && !ADD_OVERFLOW (h->refcount_table_offset, ck->reftable_n * 8, &end)
    && end < ck->file_len + ck->cs;
  /* As qemu-img: the encryption header is a structure of LUKS images
   * only. The pointer in an image that is not LUKS is reported
   * (HDR_FEATURE_DEPENDENCY: QEMU refuses the image) and not counted:
   * fuzzed, its range is any size, and counting it past the end of the
   * file would have a repair write past it (fresh clusters go past what
   * dangling references point at), 1 GiB of holes its garbage then
   * claims. */
  if (ck->img->has_crypto_ext && ck->img->crypto_length
      && h->crypt_method == QK_CRYPT_LUKS) {
    struct owner oc = { .kind = OWN_CRYPTO };
    if (inc_refs (ck, ck->img->crypto_offset, ck->img->crypto_length, 1,
                  &oc) < 0)
      return -1;
  }
  return 0;
}

int
phase_refblocks (struct ck *ck)
{
  for (size_t i = 0; i < ck->reftable_n; i++) {
    uint64_t e = ck->reftable[i];
    uint64_t off = e & QK_REFT_OFFSET_MASK;
    uint64_t cl = off >> ck->cb;
    const struct qk_problem *loc;

    if (e == 0 && ck->nb > 0)
      continue;                 /* no block: the most common entry */
    loc = LOC (.table_offset = ck->h->refcount_table_offset, .index = i,
               .found = e);
    if (e & QK_REFT_RESERVED_MASK) {
      report (ck, PR_REFT_RESERVED, 1, loc,
              "refcount table entry %zu has reserved bits set (0x%016" PRIx64
              ")", i, e);
      continue;
    }
    if (!IS_ALIGNED (off, ck->cs)) {
      report (ck, PR_REFT_UNALIGNED, 1, loc,
              "refcount block %zu (0x%" PRIx64 ") is not cluster aligned; "
              "refcount table entry corrupted", i, off);
      continue;
    }
    if (cl >= ck->nb) {
      report (ck, PR_REFT_OUTSIDE, 1, loc,
              "refcount block %zu (0x%" PRIx64 ") is outside image", i, off);
      continue;
    }
    if (off) {
      struct owner o = { .kind = OWN_REFBLOCK, .a = (int64_t) i };
      uint64_t rc;
      if (inc_refs (ck, off, ck->cs, 1, &o) < 0)
        return -1;
      if (ck->rb_counted)
        ck->rb_counted[i / 8] |= 1U << (i & 7);
      rc = qk_refblock_get (ck->imrt, ck->order, cl);
      if (rc != 1)
        report (ck, PR_REFBLOCK_REFCOUNT, 1,
                LOC (.table_offset = ck->h->refcount_table_offset, .index = i,
                     .host_offset = off, .found = rc, .expected = 1),
                "refcount block %zu refcount=%" PRIu64, i, rc);
    }
  }
  return 0;
}

/* ---- phase 4: compare ---- */

/* The comparison on every thread: each takes the next blocks of the
 * table in turn and finds the blocks whose stored refcounts are all the
 * counted ones (the image's width, whole bytes); the calling thread then
 * goes through the blocks in order, the others with the code below (and
 * their reports), the equal ones by taking their last non-zero count for
 * the image end offset. */
#define CMP_SEQ UINT64_MAX   /* compared by the calling thread */
#define CMP_BATCH 8

struct cmpjob {
  uint64_t nt;          /* blocks */
  uint64_t per;         /* clusters per block */
  uint64_t next;        /* the next block to take (atomic) */
  uint64_t *hi;         /* per block: 0: all counts 0; k + 1: the last
                           cluster counted; CMP_SEQ */
};

/* 1 + the cluster of the last nonzero count in the len bytes of counts c
 * (of cluster first on; bytes per count: 1 << shift), or 0 if none. */
static uint64_t
last_used (const uint8_t *c, size_t len, unsigned shift, uint64_t first)
{
  size_t b;

  for (b = len; b >= 8; b -= 8) {
    uint64_t x;
    memcpy (&x, c + b - 8, 8);
    if (x)
      break;
  }
  while (b && c[b - 1] == 0)
    b--;
  return b ? first + ((b - 1) >> shift) + 1 : 0;
}

static void
step_compare (struct ck *ck, struct wk *w, void *arg)
{
  struct cmpjob *j = arg;
  const unsigned shift = ck->order - 3;   /* bytes per entry: 1 << shift */

  for (;;) {
    uint64_t t0 = __atomic_fetch_add (&j->next, CMP_BATCH, __ATOMIC_RELAXED);
    if (t0 >= j->nt)
      break;
    for (uint64_t t = t0; t < MIN (t0 + CMP_BATCH, j->nt); t++) {
      uint64_t first = t * j->per, end = MIN (ck->nb, first + j->per);
      uint64_t rbo = t < ck->reftable_n
                     ? ck->reftable[t] & QK_REFT_OFFSET_MASK : 0;
      size_t len = (size_t) (end - first) << shift;
      const uint8_t *c = ck->imrt + (first << shift), *blk;

      /* a block with no refcount block stays the calling thread's: it
       * skips a run of them at once (a sparse file's hole) */
      j->hi[t] = CMP_SEQ;
      if (!rbo || !IS_ALIGNED (rbo, ck->cs) || rbo > INT64_MAX - ck->cs
          || (blk = wk_refblock (ck, w, t, 1)) == NULL
          || memcmp (blk, c, len) != 0)
        continue;
      j->hi[t] = last_used (c, len, shift, first);
    }
  }
}

int
phase_compare (struct ck *ck)
{
  const struct qk_header *h = ck->h;
  uint64_t per = ck->cs * 8 >> h->refcount_order;
  uint64_t highest = 0, last_word = 0;
  bool any = false, any_word = false;
  bool word = ck->order == h->refcount_order && ck->order >= 3;
  uint64_t wn = word ? 64U >> ck->order : 1;   /* entries in 8 bytes */
  struct cmpjob job = { .nt = DIV_ROUND_UP (ck->nb, per), .per = per };

  if (word && ck->nthreads && job.nt > 1
      && (job.hi = malloc (job.nt * sizeof *job.hi)) != NULL
      && ck_parallel (ck, step_compare, &job) < 0) {
    free (job.hi);
    job.hi = NULL;
  }
  uint64_t no_block_end = 0;   /* the run of table entries without one */

  for (uint64_t t = 0; t * per < ck->nb; t++) {
    uint64_t first = t * per, end = MIN (ck->nb, first + per);
    uint64_t rbo = t < ck->reftable_n ? ck->reftable[t] & QK_REFT_OFFSET_MASK
                                      : 0;
    const uint8_t *blk = NULL;

    /* A run of blocks with no refcount block: to its first count at once
     * (4 KiB of counts at a time, not a block's at a time: the fresh
     * clusters a repair puts past a dangling entry leave a hole of up to
     * 1 GiB, two million clusters of 512 bytes) */
    if (rbo == 0 && !(job.hi && job.hi[t] != CMP_SEQ)) {
      uint64_t stop, k;
      if (no_block_end <= t) {
        no_block_end = t;
        while (no_block_end < ck->reftable_n
               && (ck->reftable[no_block_end] & QK_REFT_OFFSET_MASK) == 0)
          no_block_end++;
      }
      stop = no_block_end < ck->reftable_n
             ? MIN (no_block_end * per, ck->nb) : ck->nb;
      k = imrt_next_used (ck, first, stop);
      if (k == ck->nb)
        break;                 /* no count and no block from here on */
      if (k >= end) {
        t = k / per - 1;       /* the block of k next (the loop's t++) */
        continue;
      }
    }
    if (job.hi && job.hi[t] != CMP_SEQ) {
      if (job.hi[t] && job.hi[t] - 1 > highest)
        highest = job.hi[t] - 1;
      any = any || job.hi[t];
      continue;
    }

    if (rbo && !IS_ALIGNED (rbo, ck->cs)) {
      report (ck, PR_REFCOUNT_UNREADABLE, end - first,
              LOC (.host_offset = first << ck->cb, .length = (end - first) << ck->cb),
              "Can't get refcount for clusters %" PRIu64 "..%" PRIu64 ": "
              "refcount block offset 0x%" PRIx64 " is not aligned", first,
              end - 1, rbo);
      /* qemu-img leaves these clusters out of image-end-offset */
      continue;
    }
    /* from the cache when the COPIED checks have read it */
    if (rbo && (blk = refblock (ck, t, rbo, false)) == NULL) {
      if (ck->rbc_nomem) {
        free (job.hi);
        return -1;
      }
      /* e.g. an offset past what a file can hold: qemu-img cannot get
       * these refcounts either (a check error per cluster) */
      report (ck, PR_REFCOUNT_UNREADABLE, end - first,
              LOC (.host_offset = first << ck->cb,
                   .length = (end - first) << ck->cb),
              "Can't get refcount for clusters %" PRIu64 "..%" PRIu64 ": "
              "refcount block 0x%" PRIx64 " cannot be read: %s", first,
              end - 1, rbo, qk_get_error ());
      /* qemu-img leaves these clusters out of image-end-offset */
      continue;
    }
    /* Nothing to report at once, as in step_compare: no block and no
     * count (a sparse file's hole: the fresh clusters a repair puts past
     * a dangling entry can leave a gigabyte of them), or a block in the
     * counts' format with the same bytes, whose last count is then all
     * the end offset needs. */
    if (blk == NULL
        && imrt_next_used (ck, first, end) == end)
      continue;
    if (blk && word) {
      size_t len = (size_t) (end - first) << (ck->order - 3);
      const uint8_t *c = ck->imrt + (first << (ck->order - 3));
      if (memcmp (blk, c, len) == 0) {
        uint64_t hi = last_used (c, len, ck->order - 3, first);
        if (hi && hi - 1 > highest)
          highest = hi - 1;
        any = any || hi;
        continue;
      }
    }
    for (uint64_t k = first; k < end; k++) {
      uint64_t stored, counted;
      /* The IMRT has the blocks' format (ck->order is the image's width):
       * an 8-byte word equal to the block's (or zero with no block) holds
       * nothing to report; only the last nonzero one matters for the end
       * offset (taken apart at the end). */
      if (word && ((k - first) & (wn - 1)) == 0 && end - k >= wn) {
        const uint8_t *cw = ck->imrt + (k << (ck->order - 3));
        uint64_t c64;
        memcpy (&c64, cw, 8);
        if (blk ? memcmp (blk + ((k - first) << (ck->order - 3)), cw, 8) == 0
                : c64 == 0) {
          if (c64) {
            last_word = k;
            any_word = true;
          }
          k += wn - 1;
          continue;
        }
      }
      stored = blk ? qk_refblock_get (blk, h->refcount_order, k - first) : 0;
      counted = qk_refblock_get (ck->imrt, ck->order, k);
      if (stored || counted) {
        highest = k;
        any = true;
      }
      if (stored == counted)
        continue;
      if (stored < counted)
        report (ck, PR_REFCOUNT_LOW, 1,
                LOC (.host_offset = k << ck->cb, .found = stored,
                     .expected = counted),
                "cluster %" PRIu64 " (0x%" PRIx64 ") refcount=%" PRIu64
                " reference=%" PRIu64, k, k << ck->cb, stored, counted);
      else if (ck->missing)
        report (ck, PR_LEAK_UNCERTAIN, 1,
                LOC (.host_offset = k << ck->cb, .found = stored,
                     .expected = counted),
                "cluster %" PRIu64 " (0x%" PRIx64 ") refcount=%" PRIu64
                " reference=%" PRIu64 ": not counted as a leak, %s could not "
                "be read in full", k, k << ck->cb, stored, counted, ck->missing);
      else
        report (ck, PR_LEAK, 1,
                LOC (.host_offset = k << ck->cb, .found = stored,
                     .expected = counted),
                "Leaked cluster %" PRIu64 " (0x%" PRIx64 ") refcount=%" PRIu64
                " reference=%" PRIu64, k, k << ck->cb, stored, counted);
    }
  }
  if (any_word)
    for (uint64_t k = last_word + wn; k-- > last_word; )
      if (qk_refblock_get (ck->imrt, ck->order, k)) {
        if (k > highest)
          highest = k;
        break;
      }
  (void) any;
  free (job.hi);
  ck->res->image_end_offset = (highest + 1) * ck->cs;
  return 0;
}
