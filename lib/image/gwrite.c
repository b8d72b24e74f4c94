/* lib/image/gwrite.c: guest writes into a consistent qcow2 image, whole
 * clusters at a time, in batches, for the writers that copy guest data
 * (rebase, commit). The protocol is the allocator's transaction
 * (image/alloc.h):
 *   1. each cluster written goes to a fresh cluster (or in place, when
 *      its cluster is its own: refcount 1 in an L2 table of refcount 1);
 *      an L2 table the batch needs is made (none yet) or copied (shared
 *      with a snapshot: refcount above 1) into a fresh cluster, whole;
 *   2. the refcounts of the fresh clusters (qk_alloc_sync; flush);
 *   3. the entries: the changed run of each L2 table written in place,
 *      the changed run of the L1 table; flush;
 *   4. the references dropped (old clusters and copied L2 tables) freed
 *      (qk_alloc_release; flush).
 * A crash before 3 leaves leaks; within 3, each entry is the old or the
 * new one, both complete; before 4, leaks. Data written in place (step 1)
 * is the one exception: it changes what the guest reads at once, which
 * is what a writer asks for there (commit writes what the overlay held). */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "format/format.h"
#include "image/alloc.h"
#include "image/gwrite.h"
#include "image/image.h"
#include "io/io.h"

struct tab {
  uint32_t l1i;
  uint64_t old_off;          /* 0: none before */
  uint64_t new_off;          /* == old_off when written in place */
  uint8_t *buf;
  uint32_t lo, hi;           /* changed entries [lo, hi) */
};

struct qk_gwrite {
  struct qk_writer *w;
  struct qk_image *img;
  struct qk_alloc *al;
  uint64_t cs;
  unsigned cb;
  uint64_t *l1;              /* the active L1, as on disk after flushes */
  uint32_t l1n;
  uint32_t l1lo, l1hi;       /* changed L1 entries [lo, hi) */
  struct tab *tabs;
  size_t n_tabs, cap_tabs;
  uint64_t n_clusters;       /* guest clusters written */
};

static int
fail (int err, const char *what)
{
  set_error (err, "%s", what);
  return -1;
}

struct qk_gwrite *
qk_gwrite_new (struct qk_writer *w, struct qk_image *img)
{
  struct qk_gwrite *g;
  const struct qk_header *h = &img->hdr;

  if (h->incompatible_features & (QK_INCOMPAT_EXTL2 | QK_INCOMPAT_DATA_FILE)) {
    set_error (ENOTSUP, "writing guest data into an image with extended L2 "
               "entries or an external data file is not supported yet");
    return NULL;
  }
  if (h->crypt_method) {
    set_error (ENOTSUP, "writing guest data into an encrypted image is not "
               "supported");
    return NULL;
  }
  if (!img->l1_ok) {
    set_error (EBADMSG, "the L1 table cannot be read");
    return NULL;
  }
  g = calloc (1, sizeof *g);
  if (g == NULL) {
    set_error (ENOMEM, "calloc");
    return NULL;
  }
  g->w = w;
  g->img = img;
  g->cs = h->cluster_size;
  g->cb = h->cluster_bits;
  g->l1n = img->l1_count;
  g->l1 = malloc (((size_t) g->l1n + 1) * sizeof *g->l1);
  g->al = qk_alloc_new (qk_writer_src (w), h);
  if (g->l1 == NULL || g->al == NULL) {
    if (g->l1 == NULL)
      set_error (ENOMEM, "malloc");
    qk_gwrite_free (g);
    return NULL;
  }
  memcpy (g->l1, img->l1, (size_t) g->l1n * sizeof *g->l1);
  g->l1lo = UINT32_MAX;
  return g;
}

void
qk_gwrite_free (struct qk_gwrite *g)
{
  if (g == NULL)
    return;
  for (size_t i = 0; i < g->n_tabs; i++)
    free (g->tabs[i].buf);
  free (g->tabs);
  free (g->l1);
  qk_alloc_free (g->al);
  free (g);
}

/* The batch's copy of L2 table l1i, made (or copied) when first needed. */
static struct tab *
table (struct qk_gwrite *g, uint32_t l1i)
{
  struct tab *t;
  uint64_t e = g->l1[l1i], off = e & QK_L1E_OFFSET_MASK, rc = 0;

  for (size_t i = 0; i < g->n_tabs; i++)
    if (g->tabs[i].l1i == l1i)
      return &g->tabs[i];
  t = qk_grow (g->tabs, &g->cap_tabs, g->n_tabs + 1, sizeof *t);
  if (t == NULL)
    return NULL;
  g->tabs = t;
  t = &g->tabs[g->n_tabs];
  memset (t, 0, sizeof *t);
  t->l1i = l1i;
  t->old_off = off;
  t->lo = UINT32_MAX;
  t->buf = calloc (1, g->cs);
  if (t->buf == NULL) {
    set_error (ENOMEM, "calloc");
    return NULL;
  }
  if (off && (qk_source_read_exact (qk_writer_src (g->w), t->buf, g->cs, off,
                                    "L2 table") < 0
              || qk_alloc_get (g->al, off >> g->cb, &rc) < 0)) {
    free (t->buf);
    return NULL;
  }
  if (off && rc == 1)
    t->new_off = off;                      /* its own: in place */
  else {
    if (qk_alloc_clusters (g->al, 1, &t->new_off) < 0) {
      free (t->buf);
      return NULL;
    }
    t->lo = 0;                             /* written whole */
    t->hi = (uint32_t) (g->cs / 8);
    if (g->l1lo > l1i)
      g->l1lo = l1i;
    if (g->l1hi < l1i + 1)
      g->l1hi = l1i + 1;
  }
  g->n_tabs++;
  return t;
}

/* Drop one reference of what entry e points at (at release). */
static int
unref_entry (struct qk_gwrite *g, uint64_t e)
{
  switch (qk_l2_cluster_type (e, false, false)) {
  case QK_CLUSTER_NORMAL:
  case QK_CLUSTER_ZERO_ALLOC:
    return qk_alloc_free_later (g->al, e & QK_L2E_OFFSET_MASK, 1);
  case QK_CLUSTER_COMPRESSED: {
    uint64_t off, n, first, last;
    qk_l2_compressed (e, g->cb, &off, &n);
    first = off >> g->cb;
    last = (off + n - 1) >> g->cb;
    return qk_alloc_free_later (g->al, first << g->cb, last - first + 1);
  }
  default:
    return 0;
  }
}

int
qk_gwrite_cluster (struct qk_gwrite *g, uint64_t guest, const void *data)
{
  uint64_t k = guest >> g->cb, per = g->cs / 8, e, off, rc = 0, ne;
  uint32_t l1i = (uint32_t) (k / per), l2i = (uint32_t) (k % per);
  struct tab *t;
  bool zero = data == NULL;

  if (guest % g->cs || k / per >= g->l1n)
    return fail (EINVAL, "guest write outside the L1 table or unaligned");
  t = table (g, l1i);
  if (t == NULL)
    return -1;
  e = be64_get (t->buf + 8 * l2i);
  if (zero && g->img->hdr.version >= 3) {
    ne = QK_OFLAG_ZERO;
    if (unref_entry (g, e) < 0)
      return -1;
  }
  else {
    uint8_t *z = NULL;
    if (qk_l2_cluster_type (e, false, false) == QK_CLUSTER_NORMAL
        && (e & QK_OFLAG_COPIED) && t->new_off == t->old_off) {
      off = e & QK_L2E_OFFSET_MASK;
      if (qk_alloc_get (g->al, off >> g->cb, &rc) < 0)
        return -1;
    }
    if (rc == 1)
      ne = e;                              /* in place */
    else {
      if (qk_alloc_clusters (g->al, 1, &off) < 0 || unref_entry (g, e) < 0)
        return -1;
      ne = off | QK_OFLAG_COPIED;
    }
    if (zero && (z = calloc (1, g->cs)) == NULL)
      return fail (ENOMEM, "calloc");
    if (qk_writer_pwrite (g->w, zero ? z : data, g->cs, off) < 0) {
      free (z);
      return -1;
    }
    free (z);
  }
  if (ne != e) {
    be64_put (t->buf + 8 * l2i, ne);
    if (t->lo > l2i)
      t->lo = l2i;
    if (t->hi < l2i + 1)
      t->hi = l2i + 1;
  }
  g->n_clusters++;
  return 0;
}

int
qk_gwrite_commit (struct qk_gwrite *g)
{
  int ret = -1;

  /* 1: new and copied tables, whole */
  for (size_t i = 0; i < g->n_tabs; i++) {
    struct tab *t = &g->tabs[i];
    if (t->new_off != t->old_off
        && qk_writer_pwrite (g->w, t->buf, g->cs, t->new_off) < 0)
      return -1;
  }
  /* 2 */
  if (qk_alloc_sync (g->al) < 0)
    return -1;
  /* 3: entries in place, then L1 */
  for (size_t i = 0; i < g->n_tabs; i++) {
    struct tab *t = &g->tabs[i];
    if (t->new_off == t->old_off && t->lo < t->hi
        && qk_writer_pwrite (g->w, t->buf + 8 * t->lo, 8 * (t->hi - t->lo),
                             t->new_off + 8 * t->lo) < 0)
      return -1;
    if (t->new_off != t->old_off) {
      uint64_t e;
      if (qk_l1_entry_make (t->new_off, true, &e) < 0)
        return -1;
      g->l1[t->l1i] = e;
      if (t->old_off && qk_alloc_free_later (g->al, t->old_off, 1) < 0)
        return -1;
    }
  }
  if (g->l1lo < g->l1hi) {
    size_t n = g->l1hi - g->l1lo;
    uint8_t *b = malloc (n * 8);
    if (b == NULL)
      return fail (ENOMEM, "malloc");
    for (size_t i = 0; i < n; i++)
      be64_put (b + 8 * i, g->l1[g->l1lo + i]);
    ret = qk_writer_pwrite (g->w, b, n * 8,
                            g->img->hdr.l1_table_offset + 8 * g->l1lo);
    free (b);
    if (ret < 0)
      return -1;
  }
  if (qk_writer_flush (g->w) < 0)
    return -1;
  /* 4 */
  if (qk_alloc_release (g->al) < 0)
    return -1;
  for (size_t i = 0; i < g->n_tabs; i++)
    free (g->tabs[i].buf);
  g->n_tabs = 0;
  g->l1lo = UINT32_MAX;
  g->l1hi = 0;
  return 0;
}

size_t
qk_gwrite_pending_tables (const struct qk_gwrite *g)
{
  return g->n_tabs;
}

uint64_t
qk_gwrite_count (const struct qk_gwrite *g)
{
  return g->n_clusters;
}
