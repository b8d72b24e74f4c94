/* lib/image/alloc.c: the cluster allocator and write transaction (the
 * protocol is stated in alloc.h). */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "format/format.h"
#include "image/alloc.h"
#include "io/io.h"

enum { B_NONE, B_CLEAN, B_DIRTY, B_NEW };

struct later {
  uint64_t k, n;
};

struct qk_alloc {
  struct qk_source *s;
  uint64_t cs;
  unsigned order;
  uint64_t per;              /* refcounts per block */
  uint64_t max;              /* largest refcount */
  uint64_t *reft;            /* cap entries, offsets only */
  uint64_t cap;
  uint64_t reft_off;
  uint32_t reft_clusters;
  bool moved;                /* the table is new, not yet on disk */
  uint64_t old_off;          /* the table on disk, while moved */
  uint32_t old_clusters;
  uint8_t *reft_dirty;       /* entry changed in place */
  uint8_t **blk;
  uint8_t *state;
  uint64_t free_index;
  uint64_t end;              /* clusters: past every one handed out */
  uint64_t count;
  struct later *later;
  size_t n_later, cap_later;
  bool growing;
};

static int
fail (int err, const char *what)
{
  set_error (err, "%s", what);
  return -1;
}

void
qk_alloc_free (struct qk_alloc *a)
{
  if (a == NULL)
    return;
  for (uint64_t i = 0; i < a->cap; i++)
    free (a->blk[i]);
  free (a->blk);
  free (a->state);
  free (a->reft);
  free (a->reft_dirty);
  free (a->later);
  free (a);
}

static int
resize (struct qk_alloc *a, uint64_t cap)
{
  uint64_t *r = realloc (a->reft, cap * sizeof *r);
  uint8_t **b, *st, *d;

  if (r == NULL)
    return fail (ENOMEM, "the refcount table");
  a->reft = r;
  b = realloc (a->blk, cap * sizeof *b);
  if (b == NULL)
    return fail (ENOMEM, "the refcount table");
  a->blk = b;
  st = realloc (a->state, cap);
  if (st == NULL)
    return fail (ENOMEM, "the refcount table");
  a->state = st;
  d = realloc (a->reft_dirty, cap);
  if (d == NULL)
    return fail (ENOMEM, "the refcount table");
  a->reft_dirty = d;
  for (uint64_t i = a->cap; i < cap; i++) {
    a->reft[i] = 0;
    a->blk[i] = NULL;
    a->state[i] = B_NONE;
    a->reft_dirty[i] = 0;
  }
  a->cap = cap;
  return 0;
}

struct qk_alloc *
qk_alloc_new (struct qk_source *s, const struct qk_header *h)
{
  struct qk_alloc *a;
  uint64_t bytes, n;
  uint8_t *raw = NULL;

  if (h->refcount_order > 6 || h->cluster_bits < QK_MIN_CLUSTER_BITS
      || h->cluster_bits > QK_MAX_CLUSTER_BITS) {
    set_error (EBADMSG, "refcount width or cluster size out of range");
    return NULL;
  }
  if (h->refcount_table_offset % h->cluster_size
      || h->refcount_table_clusters == 0) {
    set_error (EBADMSG, "the refcount table offset is not aligned");
    return NULL;
  }
  bytes = (uint64_t) h->refcount_table_clusters * h->cluster_size;
  if (bytes > QK_MAX_REFTABLE_BYTES) {
    set_error (EFBIG, "the refcount table is too big (%" PRIu64 " bytes)",
               bytes);
    return NULL;
  }
  a = calloc (1, sizeof *a);
  raw = malloc (bytes);
  if (a == NULL || raw == NULL) {
    free (a);
    free (raw);
    set_error (ENOMEM, "calloc");
    return NULL;
  }
  a->s = s;
  a->cs = h->cluster_size;
  a->order = h->refcount_order;
  a->per = (a->cs * 8) >> a->order;
  a->max = a->order == 6 ? UINT64_MAX : (1ULL << (1U << a->order)) - 1;
  a->reft_off = h->refcount_table_offset;
  a->reft_clusters = h->refcount_table_clusters;
  n = bytes / 8;
  if (resize (a, n) < 0
      || qk_source_read_exact (s, raw, bytes, a->reft_off,
                               "refcount table") < 0)
    goto fail;
  for (uint64_t i = 0; i < n; i++) {
    uint64_t e = be64_get (raw + 8 * i);
    if ((e & QK_REFT_RESERVED_MASK) || (e & (a->cs - 1))) {
      set_error (EBADMSG, "refcount table entry %" PRIu64 " is not a "
                 "cluster-aligned offset", i);
      goto fail;
    }
    a->reft[i] = e;
  }
  free (raw);
  a->end = (s->size + a->cs - 1) / a->cs;
  return a;
fail:
  free (raw);
  qk_alloc_free (a);
  return NULL;
}

/* Block i, read when first needed; NULL (no error) when it has none. */
static int
block (struct qk_alloc *a, uint64_t i, uint8_t **out)
{
  *out = NULL;
  if (i >= a->cap || a->reft[i] == 0)
    return 0;
  if (a->blk[i] == NULL) {
    uint8_t *b = malloc (a->cs);
    if (b == NULL)
      return fail (ENOMEM, "a refcount block");
    if (qk_source_read_exact (a->s, b, a->cs, a->reft[i],
                              "refcount block") < 0) {
      free (b);
      return -1;
    }
    a->blk[i] = b;
    a->state[i] = B_CLEAN;
  }
  *out = a->blk[i];
  return 0;
}

int
qk_alloc_get (struct qk_alloc *a, uint64_t k, uint64_t *rc)
{
  uint8_t *b;

  *rc = 0;
  if (block (a, k / a->per, &b) < 0)
    return -1;
  if (b)
    *rc = qk_refblock_get (b, a->order, k % a->per);
  return 0;
}

static void
dirty (struct qk_alloc *a, uint64_t i)
{
  if (a->state[i] == B_CLEAN)
    a->state[i] = B_DIRTY;
}

static int
set (struct qk_alloc *a, uint64_t k, uint64_t v)
{
  uint64_t i = k / a->per;
  uint8_t *b;

  if (block (a, i, &b) < 0)
    return -1;
  if (b == NULL)
    return fail (EINVAL, "no refcount block covers the cluster");
  qk_refblock_set (b, a->order, k % a->per, v);
  dirty (a, i);
  if (v && k + 1 > a->end)
    a->end = k + 1;
  return 0;
}

static int grow (struct qk_alloc *a, uint64_t need);

/* A new block for range i (i < cap), at the first cluster of the range:
 * nothing in an uncovered range is in use, so it is free, and the block
 * counts itself. */
static int
new_block (struct qk_alloc *a, uint64_t i)
{
  uint8_t *b = calloc (1, a->cs);

  if (b == NULL)
    return fail (ENOMEM, "a refcount block");
  if (i * a->per > UINT64_MAX / a->cs) {
    free (b);
    return fail (EFBIG, "the image would be too big");
  }
  a->reft[i] = i * a->per * a->cs;
  a->blk[i] = b;
  a->state[i] = B_NEW;
  a->reft_dirty[i] = 1;
  qk_refblock_set (b, a->order, 0, 1);
  if (i * a->per + 1 > a->end)
    a->end = i * a->per + 1;
  a->count++;
  return 0;
}

/* Make sure range i has a block (growing the table first when i is past
 * it). */
static int
cover (struct qk_alloc *a, uint64_t i)
{
  if (i >= a->cap && grow (a, i + 1) < 0)
    return -1;
  if (a->reft[i] == 0)
    return new_block (a, i);
  return 0;
}

static int
find (struct qk_alloc *a, uint64_t n, uint64_t *first)
{
  uint64_t k = a->free_index, start = k, run = 0;

  while (run < n) {
    uint64_t rc;
    if (cover (a, k / a->per) < 0 || qk_alloc_get (a, k, &rc) < 0)
      return -1;
    if (rc) {
      run = 0;
      start = k + 1;
    }
    else if (run++ == 0)
      start = k;
    k++;
  }
  *first = start;
  return 0;
}

static int
alloc_at (struct qk_alloc *a, uint64_t n, uint64_t *first)
{
  for (;;) {
    uint64_t f, rc;
    bool ok = true;
    if (find (a, n, &f) < 0)
      return -1;
    /* covering later ranges of the run may have put blocks inside it */
    for (uint64_t k = f; k < f + n; k++) {
      if (cover (a, k / a->per) < 0 || qk_alloc_get (a, k, &rc) < 0)
        return -1;
      if (rc) {
        ok = false;
        break;
      }
    }
    if (!ok)
      continue;
    for (uint64_t k = f; k < f + n; k++)
      if (set (a, k, 1) < 0)
        return -1;
    a->free_index = f + n;
    a->count += n;
    *first = f;
    return 0;
  }
}

/* The table grows to hold need entries (at least one and a half times
 * its size), in new clusters; it is written by the next sync. */
static int
grow (struct qk_alloc *a, uint64_t need)
{
  uint64_t per_cl = a->cs / 8, cap = a->cap + a->cap / 2, clusters, first;

  if (a->growing)
    return fail (EFBIG, "the refcount table cannot cover itself");
  if (cap < need)
    cap = need;
  cap = (cap + per_cl - 1) / per_cl * per_cl;
  clusters = cap / per_cl;
  if (cap * 8 > QK_MAX_REFTABLE_BYTES || clusters > UINT32_MAX)
    return fail (EFBIG, "the refcount table would grow past its limit");
  if (resize (a, cap) < 0)
    return -1;
  a->growing = true;
  if (alloc_at (a, clusters, &first) < 0) {
    a->growing = false;
    return -1;
  }
  a->growing = false;
  if (a->moved) {
    /* an earlier new table never written: free it now */
    for (uint64_t k = 0; k < a->reft_clusters; k++)
      if (set (a, a->reft_off / a->cs + k, 0) < 0)
        return -1;
  }
  else {
    a->old_off = a->reft_off;
    a->old_clusters = a->reft_clusters;
  }
  a->moved = true;
  a->reft_off = first * a->cs;
  a->reft_clusters = (uint32_t) clusters;
  return 0;
}

int
qk_alloc_clusters (struct qk_alloc *a, uint64_t n, uint64_t *off)
{
  uint64_t first;

  if (n == 0)
    return fail (EINVAL, "allocation of no clusters");
  if (alloc_at (a, n, &first) < 0)
    return -1;
  *off = first * a->cs;
  return 0;
}

int
qk_alloc_ref (struct qk_alloc *a, uint64_t k, int64_t delta)
{
  uint64_t rc;

  if (cover (a, k / a->per) < 0 || qk_alloc_get (a, k, &rc) < 0)
    return -1;
  if (delta > 0 && (uint64_t) delta > a->max - rc) {
    set_error (EOVERFLOW, "the refcount of cluster 0x%" PRIx64 " would "
               "not fit %u bits", k * a->cs, 1U << a->order);
    return -1;
  }
  if (delta < 0 && (uint64_t) -delta > rc) {
    set_error (ERANGE, "the refcount of cluster 0x%" PRIx64 " would drop "
               "below 0", k * a->cs);
    return -1;
  }
  if (set (a, k, rc + (uint64_t) delta) < 0)
    return -1;
  if (rc + (uint64_t) delta == 0 && k < a->free_index)
    a->free_index = k;
  return 0;
}

int
qk_alloc_free_later (struct qk_alloc *a, uint64_t off, uint64_t n)
{
  if (off % a->cs)
    return fail (EINVAL, "free of an unaligned offset");
  if (a->n_later == a->cap_later) {
    size_t c = a->cap_later ? a->cap_later * 2 : 64;
    struct later *l = realloc (a->later, c * sizeof *l);
    if (l == NULL)
      return fail (ENOMEM, "realloc");
    a->later = l;
    a->cap_later = c;
  }
  a->later[a->n_later++] = (struct later) { off / a->cs, n };
  return 0;
}

/* Write the blocks in state st (whole clusters). */
static int
write_blocks (struct qk_alloc *a, int st, bool *wrote)
{
  for (uint64_t i = 0; i < a->cap; i++)
    if (a->state[i] == st) {
      if (qk_source_pwrite (a->s, a->blk[i], a->cs, a->reft[i]) < 0)
        return -1;
      a->state[i] = B_CLEAN;
      *wrote = true;
    }
  return 0;
}

int
qk_alloc_sync (struct qk_alloc *a)
{
  bool wrote = false, entries = false;

  if (write_blocks (a, B_NEW, &wrote) < 0
      || write_blocks (a, B_DIRTY, &wrote) < 0)
    return -1;
  for (uint64_t i = 0; i < a->cap && !entries; i++)
    entries = a->reft_dirty[i];
  if (a->moved) {
    uint64_t bytes = (uint64_t) a->reft_clusters * a->cs;
    uint8_t *t = calloc (1, bytes), hb[12];
    if (t == NULL)
      return fail (ENOMEM, "the refcount table");
    for (uint64_t i = 0; i < a->cap; i++)
      be64_put (t + 8 * i, a->reft[i]);
    if (qk_source_pwrite (a->s, t, bytes, a->reft_off) < 0
        || qk_source_flush (a->s) < 0) {
      free (t);
      return -1;
    }
    free (t);
    be64_put (hb, a->reft_off);
    be32_put (hb + 8, a->reft_clusters);
    if (qk_source_pwrite (a->s, hb, sizeof hb, 48) < 0
        || qk_source_flush (a->s) < 0)
      return -1;
    a->moved = false;
    memset (a->reft_dirty, 0, a->cap);
    return qk_alloc_free_later (a, a->old_off, a->old_clusters);
  }
  if (entries) {
    if (qk_source_flush (a->s) < 0)
      return -1;
    for (uint64_t i = 0; i < a->cap; ) {
      uint64_t j = i;
      uint8_t *buf;
      if (!a->reft_dirty[i]) {
        i++;
        continue;
      }
      while (j < a->cap && a->reft_dirty[j])
        j++;
      buf = malloc ((j - i) * 8);
      if (buf == NULL)
        return fail (ENOMEM, "malloc");
      for (uint64_t k = i; k < j; k++) {
        be64_put (buf + 8 * (k - i), a->reft[k]);
        a->reft_dirty[k] = 0;
      }
      if (qk_source_pwrite (a->s, buf, (j - i) * 8, a->reft_off + 8 * i) < 0) {
        free (buf);
        return -1;
      }
      free (buf);
      i = j;
    }
    wrote = true;
  }
  return wrote ? qk_source_flush (a->s) : 0;
}

int
qk_alloc_release (struct qk_alloc *a)
{
  /* a sync that switched to a moved table queues the old one: again */
  while (a->n_later) {
    size_t n = a->n_later;
    for (size_t i = 0; i < n; i++)
      for (uint64_t k = a->later[i].k; k < a->later[i].k + a->later[i].n;
           k++)
        if (qk_alloc_ref (a, k, -1) < 0)
          return -1;
    memmove (a->later, a->later + n, (a->n_later - n) * sizeof *a->later);
    a->n_later -= n;
    if (qk_alloc_sync (a) < 0)
      return -1;
  }
  return qk_alloc_sync (a);
}

void
qk_alloc_reftable (const struct qk_alloc *a, uint64_t *off,
                   uint32_t *clusters)
{
  *off = a->reft_off;
  *clusters = a->reft_clusters;
}

uint64_t
qk_alloc_count (const struct qk_alloc *a)
{
  return a->count;
}

uint64_t
qk_alloc_end (const struct qk_alloc *a)
{
  return a->end * a->cs;
}
