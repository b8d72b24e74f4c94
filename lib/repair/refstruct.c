/* lib/repair/refstruct.c: a whole refcount structure (table and blocks)
 * written into fresh clusters from the references a check counted, at
 * any refcount width: repair's rebuild (same width) and amend's
 * refcount width change. Nothing points at the new structure until the
 * caller switches the header to it (refcount_table_offset and _clusters,
 * and for a width change refcount_order, all in the first sector). */
#include <config.h>

#include <stdlib.h>

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

  for (uint64_t t = 0; t * per < map->n; t++) {
    uint64_t first = t * per, end = first + per;
    if (end > map->n)
      end = map->n;
    for (uint64_t k = first; k < end; k++)
      if (qk_refmap_get (map, k)) {
        uint64_t *nv = qk_grow (need, &cap_need, n_need + 1, sizeof *nv);
        if (nv == NULL)
          goto out;
        need = nv;
        need[n_need++] = t;
        break;
      }
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
