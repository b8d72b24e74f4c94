/* lib/repair/refstruct.c: a whole refcount structure (table and blocks)
 * written into fresh clusters, from the references a check counted
 * (repair's rebuild) or from the stored refcounts at another width, a
 * refcount block at a time (amend's width change). Nothing points at
 * the new structure until the caller switches the header to it
 * (refcount_table_offset and _clusters, and for a width change
 * refcount_order, all in the first sector). */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "check/check.h"
#include "format/format.h"
#include "image/alloc.h"
#include "image/image.h"
#include "io/io.h"
#include "repair/refstruct.h"

int
qk_refstruct_write (const struct qk_refmap *map, unsigned cluster_bits,
                    unsigned order, uint64_t start, qk_put_fn put,
                    void *opaque, struct qk_refstruct *out)
{
  uint64_t cs = 1ULL << cluster_bits, per = cs * 8 >> order;
  uint64_t *need = NULL;
  size_t n_need = 0, cap_need = 0;
  struct qk_reflayout L = { 0 };
  uint8_t *buf = NULL;
  int ret = -1;

  for (uint64_t t = qk_refmap_next_block (map, per, 0); t != UINT64_MAX;
       t = qk_refmap_next_block (map, per, t + 1)) {
    uint64_t *nv = qk_grow (need, &cap_need, n_need + 1, sizeof *nv);
    if (nv == NULL)
      goto out;
    need = nv;
    need[n_need++] = t;
  }
  if (qk_reflayout_plan (cluster_bits, order, need, n_need, start, &L) < 0)
    goto out;
  if (L.table_clusters > UINT32_MAX) {
    set_error (EFBIG, "refcount table of %" PRIu64 " clusters",
               L.table_clusters);
    goto out;
  }
  buf = malloc (L.table_clusters * cs > cs ? L.table_clusters * cs : cs);
  if (buf == NULL) {
    set_error (ENOMEM, "malloc");
    goto out;
  }
  if (qk_reflayout_table (&L, buf, L.table_clusters * cs) < 0
      || put (opaque, buf, L.table_clusters * cs, L.start << cluster_bits) < 0)
    goto out;
  for (uint64_t j = 0; j < L.n_blocks; j++)
    if (qk_reflayout_block (&L, j, map->counted, map->order, map->n, buf,
                            cs) < 0
        || put (opaque, buf, cs,
                (L.start + L.table_clusters + j) << cluster_bits) < 0)
      goto out;
  out->table_offset = L.start << cluster_bits;
  out->table_clusters = (uint32_t) L.table_clusters;
  out->n_blocks = L.n_blocks;
  out->end = L.end << cluster_bits;
  ret = 0;
out:
  qk_reflayout_free (&L);
  free (need);
  free (buf);
  return ret;
}

/* A bit per cluster the active tables reference where COPIED matters:
 * the L2 tables, and the data clusters they map (not compressed ones). */
static uint8_t *
active_set (struct qk_source *src, const struct qk_image *img, uint64_t n)
{
  const struct qk_header *h = &img->hdr;
  uint64_t cs = h->cluster_size, es = h->l2_entry_size;
  uint8_t *bits = calloc (n / 8 + 1, 1), *l2 = malloc (cs);

  if (bits == NULL || l2 == NULL) {
    free (bits);
    free (l2);
    set_error (ENOMEM, "calloc");
    return NULL;
  }
#define MARK(off) \
  do { uint64_t k_ = (off) / cs; \
       if (k_ < n) bits[k_ / 8] |= (uint8_t) (1U << (k_ & 7)); } while (0)
  for (uint32_t i = 0; img->l1 && i < img->l1_count; i++) {
    uint64_t off = img->l1[i] & QK_L1E_OFFSET_MASK;
    if (off == 0)
      continue;
    MARK (off);
    if (qk_source_read_exact (src, l2, cs, off, "L2 table") < 0)
      continue;                 /* the check read it: it reads */
    for (uint64_t j = 0; j < cs / es; j++) {
      uint64_t e = be64_get (l2 + j * es);
      switch (qk_l2_cluster_type (e, es == 16, false)) {
      case QK_CLUSTER_NORMAL:
      case QK_CLUSTER_ZERO_ALLOC:
        MARK (e & QK_L2E_OFFSET_MASK);
        break;
      default:
        break;
      }
    }
  }
#undef MARK
  free (l2);
  return bits;
}

int
qk_free_leaks (struct qk_source *src, const struct qk_image *img,
               const struct qk_refmap *map, uint64_t *freed)
{
  const struct qk_header *h = &img->hdr;
  struct qk_alloc *al;
  uint64_t cs = h->cluster_size, n = map->n, fixed = 0;
  uint8_t *active = NULL;
  int ret = -1;

  *freed = 0;
  if (!map->complete)
    return 0;
  al = qk_alloc_new (src, h);
  if (al == NULL)
    return -1;
  if ((src->size + cs - 1) / cs > n)
    n = (src->size + cs - 1) / cs;
  active = active_set (src, img, n);
  if (active == NULL)
    goto out;
  for (uint64_t k = 0; k < n; k++) {
    uint64_t rc, want = qk_refmap_get (map, k);
    if (qk_alloc_get (al, k, &rc) < 0)
      goto out;
    /* not down to 1 where the active tables reference it: that would
     * need its COPIED flag set too (QEMU's repair order), and a crash
     * between would leave a "corruption"; counted too high there costs
     * space only (qcowkit repair fixes both) */
    if (rc > want && !(want == 1 && ((active[k / 8] >> (k & 7)) & 1))) {
      if (qk_alloc_ref (al, k, -(int64_t) (rc - want)) < 0)
        goto out;
      fixed++;
    }
  }
  /* nothing else references a leaked cluster: the decrements go
   * straight to the refcount blocks */
  if (fixed && qk_alloc_sync (al) < 0)
    goto out;
  *freed = fixed;
  ret = 0;
out:
  free (active);
  qk_alloc_free (al);
  return ret;
}

/* ---- a refcount width change from the stored refcounts ----
 * The stored refcounts are read one refcount block at a time, in table
 * order, and the new blocks are made one at a time from the range they
 * cover: nothing holds a refcount per cluster of the image. */

/* The clusters of the structure in place (its table and blocks), sorted,
 * with a cursor for walks in ascending cluster order. */
struct oldset {
  uint64_t *v;
  size_t n, i;
};

static int
cmp_u64 (const void *x, const void *y)
{
  uint64_t p = *(const uint64_t *) x, q = *(const uint64_t *) y;
  return p < q ? -1 : p > q;
}

static int
oldset_make (const struct qk_header *h, const uint64_t *rt, size_t rt_n,
             struct oldset *o)
{
  size_t n = 0;

  memset (o, 0, sizeof *o);
  o->v = malloc (((size_t) h->refcount_table_clusters + rt_n + 1)
                 * sizeof *o->v);
  if (o->v == NULL) {
    set_error (ENOMEM, "malloc");
    return -1;
  }
  for (uint32_t c = 0; c < h->refcount_table_clusters; c++)
    o->v[n++] = (h->refcount_table_offset >> h->cluster_bits) + c;
  for (size_t t = 0; t < rt_n; t++)
    if (rt[t] & QK_REFT_OFFSET_MASK)
      o->v[n++] = (rt[t] & QK_REFT_OFFSET_MASK) >> h->cluster_bits;
  qsort (o->v, n, sizeof *o->v, cmp_u64);
  o->n = 0;
  for (size_t i = 0; i < n; i++)
    if (o->n == 0 || o->v[o->n - 1] != o->v[i])
      o->v[o->n++] = o->v[i];
  return 0;
}

/* The first cluster of the set at or after k (UINT64_MAX: none); k must
 * not go down between calls. */
static inline uint64_t
oldset_next (struct oldset *o, uint64_t k)
{
  while (o->i < o->n && o->v[o->i] < k)
    o->i++;
  return o->i < o->n ? o->v[o->i] : UINT64_MAX;
}

/* Refcount block t of the structure in place into buf (a cluster); 0 when
 * the table has no block there (buf untouched), 1 when read. */
static int
old_block (struct qk_source *src, const struct qk_header *h,
           const uint64_t *rt, size_t rt_n, uint64_t t, uint8_t *buf)
{
  uint64_t rb;

  if (t >= rt_n || (rb = rt[t] & QK_REFT_OFFSET_MASK) == 0)
    return 0;
  if (!IS_ALIGNED (rb, h->cluster_size)) {
    set_error (EBADMSG, "refcount table entry %" PRIu64 ": refcount block "
               "offset 0x%" PRIx64 " is not cluster aligned", t, rb);
    return -1;
  }
  if (qk_source_read_zeropad (src, buf, h->cluster_size, rb) < 0)
    return -1;
  return 1;
}

void
qk_refscan_free (struct qk_refscan *s)
{
  free (s->need);
  s->need = NULL;
  s->n_need = 0;
}

int
qk_refstruct_scan (struct qk_source *src, const struct qk_header *h,
                   const uint64_t *rt, size_t rt_n, uint64_t limit,
                   unsigned order, struct qk_refscan *s)
{
  unsigned cb = h->cluster_bits, oo = h->refcount_order;
  unsigned pob, pnb;               /* log2 of refcounts per block */
  uint64_t lim, cs = h->cluster_size;
  size_t cap = 0;
  struct oldset old;
  uint8_t *buf = NULL;
  int ret = -1;

  memset (s, 0, sizeof *s);
  s->over_cluster = UINT64_MAX;
  if (oo > 6 || order > 6) {
    set_error (EINVAL, "refcount order %u or %u", oo, order);
    return -1;
  }
  pob = cb + 3 - oo;
  pnb = cb + 3 - order;
  lim = order == 6 ? UINT64_MAX : (1ULL << (1U << order)) - 1;
  if (oldset_make (h, rt, rt_n, &old) < 0)
    return -1;
  s->old_end = old.n ? old.v[old.n - 1] + 1 : 0;
  buf = malloc (cs);
  if (buf == NULL) {
    set_error (ENOMEM, "malloc");
    goto out;
  }
  for (uint64_t t = 0; t < rt_n && (t << pob) < limit; t++) {
    uint64_t first = t << pob, per = 1ULL << pob, nx;
    int r;
    if (per > limit - first)
      per = limit - first;
    r = old_block (src, h, rt, rt_n, t, buf);
    if (r < 0)
      goto out;
    if (r == 0)
      continue;
    nx = oldset_next (&old, first);
    for (uint64_t i = 0; i < per; i++) {
      uint64_t v, k;
      /* eight 16-bit refcounts of 0 at once (the common width) */
      if (oo == 4 && (i & 7) == 0 && per - i >= 8) {
        uint64_t w[2];
        memcpy (w, buf + 2 * i, 16);
        if ((w[0] | w[1]) == 0) {
          i += 7;
          continue;
        }
      }
      v = qk_refblock_get (buf, oo, i);
      if (v == 0)
        continue;
      k = first + i;
      if (k == nx) {              /* the old structure: free in the new */
        nx = oldset_next (&old, k + 1);
        continue;
      }
      if (v > lim && s->over_cluster == UINT64_MAX) {
        s->over_cluster = k;
        s->over_value = v;
      }
      if (s->n_need == 0 || s->need[s->n_need - 1] != k >> pnb) {
        uint64_t *nv = qk_grow (s->need, &cap, s->n_need + 1, sizeof *nv);
        if (nv == NULL)
          goto out;
        s->need = nv;
        s->need[s->n_need++] = k >> pnb;
      }
      s->end = k + 1;
    }
  }
  ret = 0;
out:
  if (ret < 0)
    qk_refscan_free (s);
  free (old.v);
  free (buf);
  return ret;
}

/* Up to this many clusters of the new structure go in one write. */
#define CONVERT_BATCH 16

int
qk_refstruct_convert (struct qk_source *src, const struct qk_header *h,
                      const uint64_t *rt, size_t rt_n, uint64_t limit,
                      unsigned order, const struct qk_refscan *s,
                      uint64_t start, qk_put_fn put, void *opaque,
                      struct qk_refstruct *out)
{
  unsigned cb = h->cluster_bits, oo = h->refcount_order;
  uint64_t cs = h->cluster_size, max, tbytes;
  unsigned pob, pnb;
  struct qk_reflayout L = { 0 };
  struct oldset old = { 0 };
  uint8_t *ob = NULL, *wb = NULL, *tab = NULL;
  uint64_t ob_t = UINT64_MAX;      /* the old block in ob (+ whether read) */
  bool ob_have = false;
  size_t nw = 0;
  int ret = -1;

  if (oo > 6 || order > 6) {
    set_error (EINVAL, "refcount order %u or %u", oo, order);
    return -1;
  }
  pob = cb + 3 - oo;
  pnb = cb + 3 - order;
  max = order == 6 ? UINT64_MAX : (1ULL << (1U << order)) - 1;
  if (s->over_cluster != UINT64_MAX) {
    set_error (EOVERFLOW, "cluster %" PRIu64 " has a refcount of %" PRIu64
               ", above %u bits", s->over_cluster, s->over_value,
               1U << order);
    return -1;
  }
  /* past every stored refcount and the structure in place: fresh */
  if (start < s->end)
    start = s->end;
  if (start < s->old_end)
    start = s->old_end;
  if (start < limit)
    start = limit;
  if (qk_reflayout_plan (cb, order, s->need, s->n_need, start, &L) < 0)
    return -1;
  if (L.table_clusters > UINT32_MAX) {
    set_error (EFBIG, "refcount table of %" PRIu64 " clusters",
               L.table_clusters);
    goto out;
  }
  tbytes = L.table_clusters * cs;
  if (oldset_make (h, rt, rt_n, &old) < 0)
    goto out;
  tab = malloc (tbytes);
  ob = malloc (cs);
  wb = malloc (CONVERT_BATCH * cs);
  if (tab == NULL || ob == NULL || wb == NULL) {
    set_error (ENOMEM, "malloc");
    goto out;
  }
  if (qk_reflayout_table (&L, tab, tbytes) < 0
      || put (opaque, tab, tbytes, L.start << cb) < 0)
    goto out;
  free (tab);
  tab = NULL;
  for (uint64_t j = 0; j < L.n_blocks; j++) {
    uint64_t first = L.block_index[j] << pnb, last = first + (1ULL << pnb);
    uint8_t *nb = wb + nw * cs;
    memset (nb, 0, cs);
    /* the stored values of the range, old block by old block (none
     * from limit on) */
    for (uint64_t k = first; k < last && k < limit; ) {
      uint64_t t = k >> pob, stop = (t + 1) << pob, nx;
      if (stop > last)
        stop = last;
      if (stop > limit)
        stop = limit;
      if (t != ob_t) {
        int r = old_block (src, h, rt, rt_n, t, ob);
        if (r < 0)
          goto out;
        ob_t = t;
        ob_have = r == 1;
      }
      if (!ob_have) {
        k = stop;
        continue;
      }
      nx = oldset_next (&old, k);
      if (oo == 4 && order == 6) {
        /* 16 to 64 bits, the usual way up */
        const uint8_t *p = ob + 2 * (k - (t << pob));
        uint8_t *q = nb + 8 * (k - first);
        for (uint64_t m = k; m < stop; m++, p += 2, q += 8)
          be64_put (q, be16_get (p));
      }
      else
        for (uint64_t m = k; m < stop; m++) {
          uint64_t v = qk_refblock_get (ob, oo, m - (t << pob));
          if (v)
            qk_refblock_set (nb, order, m - first, v);
        }
      /* the old structure is free in the new one */
      for (; nx < stop; nx = oldset_next (&old, nx + 1))
        qk_refblock_set (nb, order, nx - first, 0);
      k = stop;
    }
    /* the new structure's own clusters (past every stored refcount) */
    for (uint64_t k = first > L.start ? first : L.start;
         k < last && k < L.end; k++) {
      uint64_t v = qk_refblock_get (nb, order, k - first);
      if (v == max) {
        set_error (EOVERFLOW, "cluster %" PRIu64 " refcount overflows", k);
        goto out;
      }
      qk_refblock_set (nb, order, k - first, v + 1);
    }
    if (++nw == CONVERT_BATCH || j + 1 == L.n_blocks) {
      if (put (opaque, wb, nw * cs,
               (L.start + L.table_clusters + j + 1 - nw) << cb) < 0)
        goto out;
      nw = 0;
    }
  }
  out->table_offset = L.start << cb;
  out->table_clusters = (uint32_t) L.table_clusters;
  out->n_blocks = L.n_blocks;
  out->end = L.end << cb;
  ret = 0;
out:
  qk_reflayout_free (&L);
  free (old.v);
  free (tab);
  free (ob);
  free (wb);
  return ret;
}
