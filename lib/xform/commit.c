/* lib/xform/commit.c: merge an overlay into a lower image of its chain
 * (qk_commit), as qemu-img commit does (a mirror of the data allocated
 * above the base into the base, block/mirror.c; then the overlay emptied,
 * qcow2_make_empty), offline.
 *
 * The invariant at every interruption point: the guest reads the same
 * through the top image (data goes into the base before the overlay lets
 * go of it), and the same command again completes the work.
 *
 * Crash-safety protocol. The steps, each ending with a flush:
 *   1. A base smaller than the top grows (as qemu-img commit grows it): a
 *      raw base is extended; a qcow2 base that needs more L1 entries gets
 *      a new L1 table in fresh clusters (refcounts, flush), then one
 *      12-byte header write (l1_size, l1_table_offset; flush), the old
 *      table freed; then the size (8 bytes at 24; flush). What the top
 *      reads does not depend on the base past the old size, so every
 *      intermediate state reads the same.
 *   1b. The base's persistent bitmaps that record writes mark what the
 *      commit will write (as QEMU's commit records its writes there): each
 *      bitmap table entry covering it made "all ones" in place (a little
 *      more than written, never less); flush; the data clusters of the
 *      replaced entries freed. A crash leaves a bitmap marking what was not
 *      yet written: an incremental backup then copies a little more.
 *      (A base with bitmaps that would have to grow is refused.)
 *   2. Every base cluster that something above the base allocates gets
 *      what the top reads there (a zero cluster, version 3, when that is
 *      all zeros): for a qcow2 base through the guest-write batches of
 *      image/gwrite.c (fresh clusters, refcounts, entries, frees; an L2
 *      table or data cluster a snapshot of the base shares is copied, not
 *      written), for a raw base in place. The top does not read the base
 *      there (something above holds it), so it reads the same throughout;
 *      a crash leaves the base with some of the data and leaks at worst.
 *   3. Unless asked to keep it (-d, and always with -b as qemu-img), the
 *      top is emptied: every entry of its active L1 table cleared (one
 *      write), flush; then the L2 tables (and their data clusters) that
 *      nothing else references freed; flush. The base holds the data now,
 *      so an entry either way reads the same; a crash before the frees
 *      leaves leaks, which a rerun frees.
 * A rerun copies again what the top still holds above the base (the same
 * data: the base ends the same) and empties it.
 *
 * Written: the base (and the top when emptied), each through its own
 * writer stack (QEMU's write locks: refused in use, fault injection, an
 * undo journal each when asked for: UNDO.base and UNDO.top). Read: the
 * chain, opened read-only as the reader resolves it (--root confines it).
 * Intermediate images are read, never written (with -b, as qemu-img
 * leaves them: they no longer read as they did, since the base changed
 * under them, unless they are dropped from the chain afterwards). */
#include <config.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "check/check.h"
#include "format/format.h"
#include "image/alloc.h"
#include "image/gwrite.h"
#include "image/image.h"
#include "io/io.h"
#include "repair/refstruct.h"
#include "util/path.h"
#include "xform/xform.h"

#define BATCH_TABLES 32

struct commit {
  const struct qk_commit_options *o;
  struct qk_commit_result *res;
  const char *path;
  struct qk_image *top;        /* the chain, read-only */
  struct qk_image *base_ro;    /* the base in that chain */
  unsigned base_depth;
  struct qk_writer bw;         /* the base */
  struct qk_image *base;       /* the base over bw (qcow2) */
  bool base_qcow2;
  struct qk_writer tw;         /* the top, when emptied */
  char *bundo, *tundo;
};

#define refuse(err, ...) qk_xform_refuse ("commit", (err), __VA_ARGS__)

static bool
same_file (const char *a, const char *b)
{
  char ra[PATH_MAX], rb[PATH_MAX];
  return realpath (a, ra) && realpath (b, rb) && strcmp (ra, rb) == 0;
}

/* The base: the backing file, or the image of the chain -b names (by the
 * name recorded above it, or as the same file). */
static int
find_base (struct commit *c)
{
  struct qk_image *img = c->top;
  unsigned d = 0;

  if (img->backing_name == NULL)
    return refuse (EINVAL, "Image does not have a backing file");
  for (; img->backing; img = img->backing, d++) {
    const char *want = c->o->base;
    if (want == NULL
        || (img->backing_name && strcmp (img->backing_name, want) == 0)
        || same_file (want, img->backing->filename)) {
      c->base_ro = img->backing;
      c->base_depth = d + 1;
      return 0;
    }
  }
  if (c->o->base)
    return refuse (EINVAL, "Did not find '%s' in the backing chain of '%s'",
                   c->o->base, c->path);
  return refuse (EIO, "the backing file of '%s' cannot be opened: %s",
                 c->path, img->unreadable ? img->unreadable : "unknown");
}

static int
reopen_base (struct commit *c)
{
  struct qk_open_options oo = { .flags = QK_OPEN_NO_BACKING
                                         | QK_OPEN_NO_DATA_FILE };

  qk_image_close (c->base);
  c->base = qk_image_open_src (qk_writer_src (&c->bw), c->base_ro->filename,
                               &oo, true);
  return c->base ? 0 : -1;
}

/* The base checks clean (leaks are freed). */
static int
check_base (struct commit *c)
{
  struct qk_check_result cr;
  uint64_t n;

  if (qk_xform_check (c->base, &c->bw, "commit", c->base_ro->filename,
                      (c->o->flags & QK_COMMIT_DRY_RUN) != 0, NULL, &cr,
                      &n) < 0)
    return -1;
  if (n) {
    c->res->leaks_freed += n;
    c->res->changed = true;
    return reopen_base (c);
  }
  return 0;
}

/* ---- step 1: grow the base ---- */

static int
grow_base (struct commit *c, uint64_t size)
{
  struct qk_image *b = c->base;
  uint64_t cs, per, need, l1n;
  uint8_t buf8[12];

  if (!c->base_qcow2) {
    c->res->base_grown = true;
    return qk_source_truncate (qk_writer_src (&c->bw), size);
  }
  if (b->hdr.version < 3 && b->hdr.nb_snapshots)
    return refuse (ENOTSUP, "Can't resize a v2 image which has snapshots "
                   "(the base %s is smaller than the top)",
                   c->base_ro->filename);
  cs = b->hdr.cluster_size;
  per = cs / b->hdr.l2_entry_size;
  need = (size + cs * per - 1) / (cs * per);
  if ((uint64_t) need * 8 > QK_MAX_L1_BYTES)
    return refuse (EFBIG, "the base would need an L1 table of %" PRIu64
                   " entries", need);
  l1n = b->hdr.l1_size;
  if (need > l1n) {
    struct qk_alloc *al = qk_alloc_new (qk_writer_src (&c->bw), &b->hdr);
    uint64_t bytes = need * 8, off, clusters = (bytes + cs - 1) / cs;
    uint8_t *t = calloc (1, clusters * cs);
    int ok = al && t;
    if (!ok)
      set_error (ENOMEM, "calloc");
    for (uint64_t i = 0; ok && i < l1n; i++)
      be64_put (t + 8 * i, b->l1[i]);
    if (!ok || qk_alloc_clusters (al, clusters, &off) < 0
        || qk_writer_pwrite (&c->bw, t, clusters * cs, off) < 0
        || qk_alloc_sync (al) < 0)
      ok = 0;
    if (ok) {
      be32_put (buf8, (uint32_t) need);
      be64_put (buf8 + 4, off);
      ok = qk_writer_pwrite (&c->bw, buf8, 12, 36) == 0
           && qk_writer_flush (&c->bw) == 0
           && (l1n == 0
               || qk_alloc_free_later (al, b->hdr.l1_table_offset,
                                       (l1n * 8 + cs - 1) / cs) == 0)
           && qk_alloc_release (al) == 0;
    }
    free (t);
    qk_alloc_free (al);
    if (!ok)
      return -1;
  }
  be64_put (buf8, size);
  if (qk_writer_pwrite (&c->bw, buf8, 8, 24) < 0
      || qk_writer_flush (&c->bw) < 0)
    return -1;
  c->res->base_grown = true;
  return reopen_base (c);
}

/* ---- step 2: copy ---- */

struct ranges {
  uint64_t *v;     /* pairs: start, end */
  size_t n, cap;
  unsigned depth;
};

static int
collect (void *opaque, const struct qk_extent *e)
{
  struct ranges *r = opaque;
  uint64_t *nv;

  if (!e->present || e->depth >= r->depth)
    return 0;
  if (r->n && r->v[2 * r->n - 1] == e->start) {
    r->v[2 * r->n - 1] = e->start + e->length;
    return 0;
  }
  nv = qk_grow (r->v, &r->cap, 2 * r->n + 2, sizeof *nv);
  if (nv == NULL)
    return -1;
  r->v = nv;
  r->v[2 * r->n] = e->start;
  r->v[2 * r->n + 1] = e->start + e->length;
  r->n++;
  return 0;
}

/* The persistent bitmaps of the base that record writes (enabled, not
 * in use) mark what the commit writes, as QEMU's commit records its
 * writes in them: every bitmap table entry that covers a committed range
 * is made "all ones" (offset 0, bit 0: no data cluster), which marks a
 * little more than was written, never less; the data clusters of the
 * entries replaced are freed after. This comes before the data (flush),
 * so a crash leaves at worst a bitmap marking what was not yet written. */
static int
mark_bitmaps (struct commit *c, const struct ranges *r)
{
  struct qk_image *b = c->base;
  uint64_t cs = b->hdr.cluster_size;
  struct qk_alloc *al = NULL;
  uint8_t *tab = NULL;
  bool wrote = false;
  int ret = -1;

  for (size_t i = 0; i < b->n_bitmaps; i++) {
    const struct qk_bitmap *bm = &b->bitmaps[i].b;
    uint64_t span, len = (uint64_t) bm->table_size * 8;
    bool changed = false;
    uint8_t *t;
    if (!(bm->flags & QK_BITMAP_AUTO) || (bm->flags & QK_BITMAP_IN_USE)
        || bm->type != 1 || bm->granularity_bits > 31 || len == 0)
      continue;
    span = (cs * 8) << bm->granularity_bits;   /* guest bytes per entry */
    if (len > QK_MAX_BITMAP_TABLE_ENTRIES * 8ULL) {
      set_error (EFBIG, "bitmap table of %" PRIu64 " bytes", len);
      goto out;
    }
    t = realloc (tab, len);
    if (t == NULL) {
      set_error (ENOMEM, "realloc");
      goto out;
    }
    tab = t;
    if (qk_source_read_exact (qk_writer_src (&c->bw), tab, len,
                              bm->table_offset, "bitmap table") < 0)
      goto out;
    if (al == NULL && (al = qk_alloc_new (qk_writer_src (&c->bw),
                                          &b->hdr)) == NULL)
      goto out;
    for (size_t k = 0; k < r->n; k++)
      for (uint64_t e = r->v[2 * k] / span;
           e * span < r->v[2 * k + 1] && e < bm->table_size; e++) {
        uint64_t old = be64_get (tab + 8 * e);
        if (old == 1)
          continue;
        if ((old & QK_BME_TABLE_OFFSET_MASK)
            && qk_alloc_free_later (al, old & QK_BME_TABLE_OFFSET_MASK,
                                    1) < 0)
          goto out;
        be64_put (tab + 8 * e, 1);
        changed = true;
      }
    if (changed) {
      if (qk_writer_pwrite (&c->bw, tab, len, bm->table_offset) < 0)
        goto out;
      wrote = true;
      c->res->bitmaps_marked++;
    }
  }
  if (wrote && (qk_writer_flush (&c->bw) < 0 || qk_alloc_release (al) < 0))
    goto out;
  ret = 0;
out:
  free (tab);
  qk_alloc_free (al);
  return ret;
}

static int
copy (struct commit *c, const struct ranges *rr)
{
  uint64_t tsize = qk_image_virtual_size (c->top);
  uint64_t cs = c->base_qcow2 ? c->base->hdr.cluster_size : 65536;
  uint64_t last = UINT64_MAX, total = 0, done = 0;
  const struct ranges r = *rr;
  struct qk_gwrite *g = NULL;
  uint8_t *buf = malloc (cs);
  int ret = -1;

  if (buf == NULL) {
    set_error (ENOMEM, "malloc");
    return -1;
  }
  if (c->base_qcow2 && !(c->o->flags & QK_COMMIT_DRY_RUN)
      && (g = qk_gwrite_new (&c->bw, c->base)) == NULL)
    goto out;
  for (size_t i = 0; i < r.n; i++)
    total += (r.v[2 * i + 1] + cs - 1) / cs - r.v[2 * i] / cs;
  for (size_t i = 0; i < r.n; i++)
    for (uint64_t k = r.v[2 * i] / cs; k * cs < r.v[2 * i + 1]; k++) {
      uint64_t off = k * cs, n = cs;
      if (k == last)
        continue;
      last = k;
      if (c->o->progress)
        c->o->progress (c->o->progress_opaque, done++, total);
      if (off + n > tsize)
        n = tsize - off;
      /* what the top reads; past its end, what the base holds */
      memset (buf, 0, cs);
      if (n < cs && off + cs <= qk_image_virtual_size (c->base_ro)
          && qk_image_read (c->base_ro, buf + n, cs - n, off + n) < 0)
        goto out;
      if (qk_image_read (c->top, buf, n, off) < 0)
        goto out;
      c->res->clusters_copied++;
      if (c->o->flags & QK_COMMIT_DRY_RUN)
        continue;
      c->res->changed = true;
      if (g) {
        if (qk_gwrite_cluster (g, off, qk_all_zero (buf, cs)
                                       && c->base->hdr.version >= 3
                                       ? NULL : buf) < 0)
          goto out;
        if (qk_gwrite_pending_tables (g) >= BATCH_TABLES
            && qk_gwrite_commit (g) < 0)
          goto out;
      }
      else if (qk_writer_pwrite (&c->bw, buf, n, off) < 0)
        goto out;
    }
  if (g && qk_gwrite_commit (g) < 0)
    goto out;
  if (c->o->progress)
    c->o->progress (c->o->progress_opaque, total, total);
  if (!(c->o->flags & QK_COMMIT_DRY_RUN) && qk_writer_flush (&c->bw) < 0)
    goto out;
  ret = 0;
out:
  qk_gwrite_free (g);
  free (buf);
  return ret;
}

/* ---- step 3: empty the top ---- */

static int
empty_top (struct commit *c)
{
  struct qk_open_options oo = { .flags = QK_OPEN_NO_BACKING
                                         | QK_OPEN_NO_DATA_FILE };
  struct qk_image *t;
  struct qk_alloc *al = NULL;
  uint64_t cs;
  uint8_t *z = NULL, *l2 = NULL;
  bool any = false;
  int ret = -1;

  t = qk_image_open_src (qk_writer_src (&c->tw), c->path, &oo, true);
  if (t == NULL)
    return -1;
  cs = t->hdr.cluster_size;
  for (uint32_t i = 0; i < t->l1_count; i++)
    if (t->l1[i] & QK_L1E_OFFSET_MASK)
      any = true;
  if (!any) {
    ret = 0;
    goto out;
  }
  if (qk_writer_begin (&c->tw) < 0)
    goto out;
  al = qk_alloc_new (qk_writer_src (&c->tw), &t->hdr);
  z = calloc (1, (size_t) t->l1_count * 8 + 1);
  l2 = malloc (cs);
  if (al == NULL || z == NULL || l2 == NULL) {
    if (al)
      set_error (ENOMEM, "calloc");
    goto out;
  }
  /* what each table held is freed once nothing points at it */
  for (uint32_t i = 0; i < t->l1_count; i++) {
    uint64_t off = t->l1[i] & QK_L1E_OFFSET_MASK, rc;
    if (off == 0)
      continue;
    if (qk_alloc_get (al, off / cs, &rc) < 0)
      goto out;
    if (rc == 1) {
      if (qk_source_read_exact (qk_writer_src (&c->tw), l2, cs, off,
                                "L2 table") < 0)
        goto out;
      for (uint64_t j = 0; j < cs / t->hdr.l2_entry_size; j++) {
        uint64_t e = be64_get (l2 + j * t->hdr.l2_entry_size), ho, nb;
        switch (qk_l2_cluster_type (e, t->hdr.l2_entry_size == 16,
                                    false)) {
        case QK_CLUSTER_NORMAL:
        case QK_CLUSTER_ZERO_ALLOC:
          if (qk_alloc_free_later (al, e & QK_L2E_OFFSET_MASK, 1) < 0)
            goto out;
          break;
        case QK_CLUSTER_COMPRESSED:
          qk_l2_compressed (e, t->hdr.cluster_bits, &ho, &nb);
          if (qk_alloc_free_later (al, ho / cs * cs,
                                   (ho + nb - 1) / cs - ho / cs + 1) < 0)
            goto out;
          break;
        default:
          break;
        }
      }
    }
    if (qk_alloc_free_later (al, off, 1) < 0)
      goto out;
  }
  if (qk_writer_pwrite (&c->tw, z, (size_t) t->l1_count * 8,
                        t->hdr.l1_table_offset) < 0
      || qk_writer_flush (&c->tw) < 0 || qk_alloc_release (al) < 0)
    goto out;
  c->res->top_emptied = true;
  c->res->changed = true;
  ret = 0;
out:
  free (z);
  free (l2);
  qk_alloc_free (al);
  qk_image_close (t);
  return ret;
}

static int
run (struct commit *c)
{
  struct qk_open_options oo = { .confine_root = c->o->root };
  bool keep = (c->o->flags & QK_COMMIT_KEEP) || c->o->base;
  struct ranges r = { .depth = 0 };
  uint64_t tsize;
  bool grow;

  c->top = qk_image_open (c->path, &oo);
  if (c->top == NULL)
    return -1;
  if (!c->top->is_qcow2)
    return refuse (EINVAL, "Image does not have a backing file");
  if (find_base (c) < 0)
    return -1;
  if (c->top->unreadable)
    return refuse (EIO, "%s cannot be read: %s", c->path,
                   c->top->unreadable);
  c->base_qcow2 = c->base_ro->is_qcow2;
  r.depth = c->base_depth;
  c->res->base_filename = c->base_ro->filename;
  if (c->base_qcow2 && (c->base_ro->hdr.incompatible_features
                        & (QK_INCOMPAT_EXTL2 | QK_INCOMPAT_DATA_FILE)))
    return refuse (ENOTSUP, "committing into a base with extended L2 "
                   "entries or an external data file is not supported yet");
  if (c->base_qcow2 && c->base_ro->hdr.crypt_method)
    return refuse (ENOTSUP, "committing into an encrypted base is not "
                   "supported");
  /* the top is held for the whole run: its write locks when it is to be
   * emptied, else its read lock (nothing may write it while it is read) */
  if (qk_xform_open (&c->tw, c->path, c->tundo,
                     keep || (c->o->flags & QK_COMMIT_DRY_RUN)) < 0
      || qk_xform_open (&c->bw, c->base_ro->filename, c->bundo,
                        (c->o->flags & QK_COMMIT_DRY_RUN) != 0) < 0)
    return -1;
  if (c->base_qcow2) {
    if (reopen_base (c) < 0 || check_base (c) < 0)
      return -1;
  }
  tsize = qk_image_virtual_size (c->top);
  if (qk_image_map (c->top, 0, tsize, collect, &r) != 0)
    goto fail;
  grow = tsize > (c->base_qcow2 ? c->base->hdr.size : c->bw.base->size);
  if (grow && c->base_qcow2 && c->base->n_bitmaps) {
    refuse (ENOTSUP, "the base has persistent bitmaps and would have to "
            "grow to the overlay's size: resizing bitmaps is not "
            "supported yet");
    goto fail;
  }
  if (!(c->o->flags & QK_COMMIT_DRY_RUN)) {
    if (qk_writer_begin (&c->bw) < 0
        || (grow && grow_base (c, tsize) < 0)
        || (c->base_qcow2 && c->base->n_bitmaps
            && mark_bitmaps (c, &r) < 0))
      goto fail;
  }
  if (copy (c, &r) < 0)
    goto fail;
  free (r.v);
  if (keep || (c->o->flags & QK_COMMIT_DRY_RUN))
    return 0;
  return empty_top (c);
fail:
  free (r.v);
  return -1;
}

QK_EXPORT int
qk_commit (const char *path, const struct qk_commit_options *o,
           struct qk_commit_result *res)
{
  struct commit c;
  struct qk_commit_result dummy;
  struct qk_saved_error sv;
  int ret;

  if (path == NULL || o == NULL) {
    set_error (EINVAL, "qk_commit: NULL argument");
    return -1;
  }
  if (res == NULL)
    res = &dummy;
  memset (res, 0, sizeof *res);
  memset (&c, 0, sizeof c);
  c.bw.undo_dirfd = c.tw.undo_dirfd = -1;
  c.o = o;
  c.res = res;
  c.path = path;
  if (o->undo_path
      && (asprintf (&c.bundo, "%s.base", o->undo_path) < 0
          || asprintf (&c.tundo, "%s.top", o->undo_path) < 0)) {
    set_error (ENOMEM, "asprintf");
    free (c.bundo);
    return -1;
  }
  ret = run (&c);
  if (ret < 0)
    qk_internal_save_error (&sv);
  res->base_filename = NULL;     /* it pointed into the chain */
  qk_image_close (c.base);
  qk_writer_close (&c.bw);
  qk_writer_close (&c.tw);
  qk_image_close (c.top);
  free (c.bundo);
  free (c.tundo);
  if (ret < 0)
    qk_internal_restore_error (&sv);
  return ret;
}
