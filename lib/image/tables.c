/* Reading metadata tables: the L2 cache, refcounts, and whole tables for
 * dumping. */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "image/image.h"

const uint8_t *
qk_image_l2 (struct qk_image *img, uint64_t l2_offset)
{
  struct l2_slot *victim = &img->l2c[0];

  for (int i = 0; i < QK_L2_CACHE_SLOTS; i++) {
    struct l2_slot *s = &img->l2c[i];
    if (s->buf && s->offset == l2_offset) {
      s->lru = ++img->l2_tick;
      return s->buf;
    }
    if (s->buf == NULL || s->lru < victim->lru)
      victim = s;
    if (s->buf == NULL)
      break;
  }
  if (victim->buf == NULL
      && (victim->buf = malloc (img->hdr.cluster_size)) == NULL) {
    set_error (ENOMEM, "malloc");
    return NULL;
  }
  victim->offset = 0;
  if (qk_source_read_zeropad (img->src, victim->buf, img->hdr.cluster_size,
                              l2_offset) < 0)
    return NULL;
  victim->offset = l2_offset;
  victim->lru = ++img->l2_tick;
  return victim->buf;
}

static int
load_reftable (struct qk_image *img)
{
  const struct qk_header *h = &img->hdr;
  uint64_t bytes;

  if (img->reftable_loaded)
    return 0;
  bytes = (uint64_t) h->refcount_table_clusters * h->cluster_size;
  if (bytes > QK_MAX_REFTABLE_BYTES) {
    set_error (EFBIG, "refcount table of %u clusters is too large",
               h->refcount_table_clusters);
    return -1;
  }
  if (!IS_ALIGNED (h->refcount_table_offset, h->cluster_size)) {
    set_error (EBADMSG, "refcount table offset 0x%" PRIx64 " is not aligned",
               h->refcount_table_offset);
    return -1;
  }
  free (img->reftable);
  img->reftable = calloc (bytes / 8 + 1, sizeof (uint64_t));
  if (img->reftable == NULL) {
    set_error (ENOMEM, "malloc");
    return -1;
  }
  /* read in place, then to host order */
  if (qk_source_read_zeropad (img->src, img->reftable, bytes,
                              h->refcount_table_offset) < 0) {
    memset (img->reftable, 0, bytes);
    return -1;
  }
  img->reftable_n = bytes / 8;
  be64_array (img->reftable, img->reftable_n);
  img->reftable_loaded = true;
  return 0;
}

int
qk_image_refcount (struct qk_image *img, uint64_t cluster, uint64_t *rc)
{
  const struct qk_header *h = &img->hdr;
  uint64_t per_block, ti, rb;

  if (h->refcount_order > 6) {
    set_error (EBADMSG, "refcount_order %u is invalid", h->refcount_order);
    return -1;
  }
  if (load_reftable (img) < 0)
    return -1;
  per_block = h->cluster_size * 8 >> h->refcount_order;
  ti = cluster / per_block;
  if (ti >= img->reftable_n) {
    *rc = 0;
    return 0;
  }
  rb = img->reftable[ti] & QK_REFT_OFFSET_MASK;
  if (rb == 0) {
    *rc = 0;
    return 0;
  }
  /* qcow2_get_refcount: "Refblock offset %#x unaligned (reftable index:
   * %#x)" signals corruption and fails; never read a block at an
   * unaligned offset. */
  if (!IS_ALIGNED (rb, h->cluster_size)) {
    set_error (EBADMSG, "refcount table entry %" PRIu64 ": refcount block "
               "offset 0x%" PRIx64 " is not cluster aligned", ti, rb);
    return -1;
  }
  if (img->rb_buf == NULL
      && (img->rb_buf = malloc (h->cluster_size)) == NULL) {
    set_error (ENOMEM, "malloc");
    return -1;
  }
  if (img->rb_off != rb) {
    img->rb_off = 0;
    if (qk_source_read_zeropad (img->src, img->rb_buf, h->cluster_size,
                                rb) < 0)
      return -1;
    img->rb_off = rb;
  }
  *rc = qk_refblock_get (img->rb_buf, h->refcount_order, cluster % per_block);
  return 0;
}

/* ---- whole tables for dump ---- */

static int
need_qcow2 (const struct qk_image *img)
{
  if (!img->is_qcow2) {
    set_error (EINVAL, "%s is not a qcow2 image", img->filename);
    return -1;
  }
  return 0;
}

static int
read_words (struct qk_image *img, uint64_t off, uint64_t n, const char *what,
            uint64_t **out)
{
  uint64_t *w;

  if (n > QK_MAX_L1_BYTES / 8) {
    set_error (EFBIG, "%s of %" PRIu64 " entries is too large", what, n);
    return -1;
  }
  /* Never allocate for a table the file cannot hold. */
  if (off > img->src->size || n * 8 > img->src->size - off) {
    set_error (EBADMSG, "%s: %s at offset 0x%" PRIx64 " (%" PRIu64 " bytes) "
               "extends past the end of the file (%" PRIu64 " bytes)",
               img->src->name, what, off, n * 8, img->src->size);
    return -1;
  }
  w = malloc (n * 8 + 1);
  if (w == NULL) {
    set_error (ENOMEM, "malloc");
    return -1;
  }
  /* read in place, then to host order */
  if (n && qk_source_read_exact (img->src, w, n * 8, off, what) < 0) {
    free (w);
    return -1;
  }
  be64_array (w, n);
  *out = w;
  return 0;
}

QK_EXPORT const uint64_t *
qk_image_l1 (const struct qk_image *img, uint32_t *count)
{
  *count = img->l1_ok ? img->l1_count : 0;
  return img->l1_ok ? img->l1 : NULL;
}

QK_EXPORT int
qk_image_read_l2 (struct qk_image *img, uint64_t l2_offset, uint64_t **entries,
                  size_t *count)
{
  if (need_qcow2 (img) < 0)
    return -1;
  if (!IS_ALIGNED (l2_offset, img->hdr.cluster_size)) {
    set_error (EINVAL, "L2 offset 0x%" PRIx64 " is not cluster aligned",
               l2_offset);
    return -1;
  }
  if (read_words (img, l2_offset, img->hdr.cluster_size / 8, "L2 table",
                  entries) < 0)
    return -1;
  *count = img->hdr.l2_entries;
  return 0;
}

QK_EXPORT int
qk_image_read_refcount_table (struct qk_image *img, uint64_t **entries,
                              size_t *count)
{
  if (need_qcow2 (img) < 0 || load_reftable (img) < 0)
    return -1;
  *entries = malloc (img->reftable_n * 8 + 1);
  if (*entries == NULL) {
    set_error (ENOMEM, "malloc");
    return -1;
  }
  memcpy (*entries, img->reftable, img->reftable_n * 8);
  *count = img->reftable_n;
  return 0;
}

QK_EXPORT int
qk_image_read_refblock (struct qk_image *img, uint64_t offset,
                        uint64_t **refcounts, size_t *count)
{
  const struct qk_header *h = &img->hdr;
  uint8_t *buf;
  uint64_t n;

  if (need_qcow2 (img) < 0)
    return -1;
  if (h->refcount_order > 6 || !IS_ALIGNED (offset, h->cluster_size)) {
    set_error (EINVAL, "refcount block at 0x%" PRIx64 " is not aligned, or "
               "refcount_order %u is invalid", offset, h->refcount_order);
    return -1;
  }
  n = h->cluster_size * 8 >> h->refcount_order;
  buf = malloc (h->cluster_size);
  *refcounts = malloc (n * sizeof (uint64_t));
  if (buf == NULL || *refcounts == NULL) {
    free (buf);
    free (*refcounts);
    *refcounts = NULL;
    set_error (ENOMEM, "malloc");
    return -1;
  }
  if (qk_source_read_exact (img->src, buf, h->cluster_size, offset,
                            "refcount block") < 0) {
    free (buf);
    free (*refcounts);
    *refcounts = NULL;   /* callers may free it again */
    return -1;
  }
  for (uint64_t i = 0; i < n; i++)
    (*refcounts)[i] = qk_refblock_get (buf, h->refcount_order, i);
  free (buf);
  *count = n;
  return 0;
}

QK_EXPORT int
qk_image_read_snapshot_l1 (struct qk_image *img, size_t i, uint64_t **entries,
                           uint32_t *count)
{
  const struct qk_snapshot *s;

  if (need_qcow2 (img) < 0)
    return -1;
  if (i >= img->n_snaps) {
    set_error (EINVAL, "no snapshot %zu", i);
    return -1;
  }
  s = &img->snaps[i].s;
  if ((uint64_t) s->l1_size * 8 > QK_MAX_L1_BYTES) {
    set_error (EBADMSG, "snapshot %s: L1 table of %u entries is too large",
               s->id, s->l1_size);
    return -1;
  }
  if (!IS_ALIGNED (s->l1_table_offset, img->hdr.cluster_size)) {
    set_error (EBADMSG, "snapshot %s: L1 table offset 0x%" PRIx64 " is not "
               "aligned", s->id, s->l1_table_offset);
    return -1;
  }
  if (read_words (img, s->l1_table_offset, s->l1_size, "snapshot L1 table",
                  entries) < 0)
    return -1;
  *count = s->l1_size;
  return 0;
}

QK_EXPORT int
qk_image_read_bitmap_table (struct qk_image *img, size_t i, uint64_t **entries,
                            uint32_t *count)
{
  const struct qk_bitmap *b;

  if (need_qcow2 (img) < 0)
    return -1;
  if (i >= img->n_bitmaps) {
    set_error (EINVAL, "no bitmap %zu", i);
    return -1;
  }
  b = &img->bitmaps[i].b;
  if (b->table_size > QK_MAX_BITMAP_TABLE_ENTRIES
      || !IS_ALIGNED (b->table_offset, img->hdr.cluster_size)) {
    set_error (EBADMSG, "bitmap '%s': table at 0x%" PRIx64 " of %u entries "
               "is unaligned or too large", b->name, b->table_offset,
               b->table_size);
    return -1;
  }
  if (read_words (img, b->table_offset, b->table_size, "bitmap table",
                  entries) < 0)
    return -1;
  *count = b->table_size;
  return 0;
}
