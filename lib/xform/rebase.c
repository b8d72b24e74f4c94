/* lib/xform/rebase.c: change an image's backing file (qk_rebase), as
 * qemu-img rebase does (qemu-img.c img_rebase, qcow2_change_backing_file).
 *
 * Unsafe mode (QK_REBASE_UNSAFE, qemu-img rebase -u): only the name and
 * format change: the header cluster written again with the new backing
 * name and backing format extension (none when detaching), one write from
 * offset 0; flush. Before it the old name, after it the new one.
 *
 * Safe mode: first every guest cluster the image does not allocate
 * itself, where the old backing chain and the new backing file read
 * differently, is given the old chain's data in the image (a zero
 * cluster in version 3 when that data is all zeros), through the guest
 * write batches of image/gwrite.c: data into fresh clusters, L2 tables
 * made or copied into fresh clusters, their refcounts, flush, the entries
 * and L1 entries, flush, what a copied table no longer needs freed, flush.
 * Through the old chain the guest reads the same at every point (the
 * clusters given are what the old chain reads there), so a crash anywhere
 * before the last step leaves the image as it was to the guest, with
 * leaks at worst, and a rerun compares again and copies what is still
 * missing. Then the header cluster written with the new name, as in
 * unsafe mode: before it the old chain, after it the new one, both
 * reading the same guest data. The image must check without errors
 * first (the fresh clusters go where the refcounts say the file is free),
 * and leaked clusters are freed. Internal snapshots keep reading through
 * the backing file, old or new (qemu-img copies for the active state
 * only, and so does this).
 *
 * The image is written through the writer stack (lib/io/writer.c: QEMU's
 * locks, fault injection, the undo journal). Backing files are opened
 * read-only, relative to the image (as the reader resolves names), under
 * the confinement root when one is given; nothing but the image is
 * written. */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "check/check.h"
#include "format/format.h"
#include "image/gwrite.h"
#include "image/image.h"
#include "image/spec.h"
#include "repair/refstruct.h"
#include "io/io.h"
#include "util/path.h"
#include "xform/xform.h"

#define BATCH_TABLES 32

struct rebase {
  const struct qk_rebase_options *o;
  struct qk_rebase_result *res;
  const char *path;
  struct qk_writer w;
  struct qk_image *img;
  struct qk_image *nb;       /* the new backing file (safe mode) */
};

#define refuse(err, ...) qk_xform_refuse ("rebase", (err), __VA_ARGS__)

static int
reopen (struct rebase *r, bool backing)
{
  struct qk_open_options oo = { .flags = backing ? 0 : QK_OPEN_NO_BACKING,
                                .confine_root = r->o->root };

  qk_image_close (r->img);
  r->img = qk_image_open_src (qk_writer_src (&r->w), r->path, &oo, true);
  if (r->img == NULL)
    return -1;
  if (!r->img->is_qcow2)
    return refuse (ENOTSUP, "%s is not a qcow2 image", r->path);
  return 0;
}

/* The header with the new backing name and format; one write. */
static int
write_backing (struct rebase *r)
{
  struct qk_image_spec sp;
  const char *b = r->o->backing;
  uint8_t *buf;
  size_t len;
  int ret;

  if (qk_image_spec_init (r->img, &sp) < 0)
    return -1;
  sp.s.backing = b && *b ? b : NULL;
  sp.s.backing_len = b && *b ? strlen (b) : 0;
  sp.s.backing_format = b && *b ? r->o->backing_format : NULL;
  buf = qk_image_spec_format (r->img, &sp.s, &len);
  qk_image_spec_free (&sp);
  if (buf == NULL) {
    if (errno == ENOSPC)
      return refuse (ENOSPC, "Could not change the backing file to '%s': "
                     "No space left in the file header", b);
    return -1;
  }
  r->res->changed = true;
  ret = qk_writer_pwrite (&r->w, buf, len, 0) < 0
        || qk_writer_flush (&r->w) < 0 ? -1 : 0;
  free (buf);
  return ret;
}

/* The check safe mode stands on: errors refuse; leaks (an interrupted
 * run leaves some) are freed. */
static int
check_clean (struct rebase *r)
{
  struct qk_check_result cr;

  if (qk_xform_check (r->img, &r->w, "rebase", r->path,
                      (r->o->flags & QK_REBASE_DRY_RUN) != 0, NULL, &cr,
                      &r->res->leaks_freed) < 0)
    return -1;
  if (r->res->leaks_freed) {
    r->res->changed = true;
    return reopen (r, true);
  }
  return 0;
}

/* Read len bytes of img at off; past its virtual size, zeros. */
static int
read_view (struct qk_image *img, uint8_t *buf, size_t len, uint64_t off)
{
  uint64_t size;

  memset (buf, 0, len);
  if (img == NULL)
    return 0;
  size = img->is_qcow2 ? img->hdr.size : img->src->size;
  if (off >= size)
    return 0;
  if (off + len > size)
    len = (size_t) (size - off);
  return qk_image_read (img, buf, len, off);
}

static int
copy_differences (struct rebase *r)
{
  struct qk_image *img = r->img;
  uint64_t cs = img->hdr.cluster_size, per = cs / 8, size = img->hdr.size;
  uint8_t *l2 = malloc (cs), *a = malloc (cs), *b = malloc (cs);
  struct qk_gwrite *g = NULL;
  int ret = -1;

  if (l2 == NULL || a == NULL || b == NULL) {
    set_error (ENOMEM, "malloc");
    goto out;
  }
  g = qk_gwrite_new (&r->w, img);
  if (g == NULL)
    goto out;
  for (uint32_t i = 0; i < img->l1_count && (uint64_t) i * per * cs < size;
       i++) {
    uint64_t l2off = img->l1[i] & QK_L1E_OFFSET_MASK;
    if (l2off && qk_source_read_exact (qk_writer_src (&r->w), l2, cs, l2off,
                                       "L2 table") < 0)
      goto out;
    for (uint64_t j = 0; j < per; j++) {
      uint64_t guest = ((uint64_t) i * per + j) * cs;
      if (guest >= size)
        break;
      if (r->o->progress)
        r->o->progress (r->o->progress_opaque, guest / cs,
                        (size + cs - 1) / cs);
      if (l2off && qk_l2_cluster_type (be64_get (l2 + 8 * j), false, false)
                   != QK_CLUSTER_UNALLOCATED)
        continue;                  /* the image's own: the backing is unseen */
      if (read_view (img, a, cs, guest) < 0
          || read_view (r->nb, b, cs, guest) < 0)
        goto out;
      r->res->clusters_compared++;
      if (memcmp (a, b, cs) == 0)
        continue;
      if (r->o->flags & QK_REBASE_DRY_RUN) {
        r->res->clusters_copied++;
        continue;
      }
      if (qk_gwrite_cluster (g, guest,
                             img->hdr.version >= 3 && qk_all_zero (a, cs)
                             ? NULL : a) < 0)
        goto out;
      r->res->clusters_copied++;
      r->res->changed = true;
    }
    if (qk_gwrite_pending_tables (g) >= BATCH_TABLES
        && qk_gwrite_commit (g) < 0)
      goto out;
  }
  if (qk_gwrite_commit (g) < 0)
    goto out;
  if (r->o->progress)
    r->o->progress (r->o->progress_opaque, (size + cs - 1) / cs,
                    (size + cs - 1) / cs);
  ret = 0;
out:
  qk_gwrite_free (g);
  free (l2);
  free (a);
  free (b);
  return ret;
}

static int
open_new_backing (struct rebase *r)
{
  const char *name = r->o->backing, *fmt = r->o->backing_format;
  struct qk_open_options oo = { .confine_root = r->o->root };
  char *p;

  if (name == NULL || *name == '\0')
    return 0;                      /* no backing file: reads zeros */
  if (qk_path_has_protocol (name))
    return refuse (ENOTSUP, "Could not open new backing file '%s': only "
                   "local files are supported", name);
  p = qk_path_combine (r->path, name);
  if (p == NULL)
    return -1;
  r->nb = qk_image_open (p, &oo);
  if (r->nb == NULL) {
    refuse (errno ? errno : EIO, "Could not open new backing file '%s': %s",
            name, qk_get_error ());
    free (p);
    return -1;
  }
  free (p);
  if (strcmp (fmt, "raw") == 0 && r->nb->is_qcow2)
    return refuse (EINVAL, "new backing file '%s' is a qcow2 image: as "
                   "-F raw its metadata would be read as guest data", name);
  if (strcmp (fmt, "qcow2") == 0 && !r->nb->is_qcow2)
    return refuse (EINVAL, "new backing file '%s' is not a qcow2 image",
                   name);
  if (r->nb->unreadable)
    return refuse (EIO, "new backing file '%s' cannot be read: %s", name,
                   r->nb->unreadable);
  return 0;
}

static int
run (struct rebase *r)
{
  const struct qk_rebase_options *o = r->o;
  const char *b = o->backing;
  bool unsafe = (o->flags & QK_REBASE_UNSAFE) != 0;

  if (b == NULL)
    return refuse (EINVAL, "Must specify backing file (-b) or use unsafe "
                   "mode (-u)");
  if (*b && o->backing_format == NULL)
    return refuse (EINVAL, "Could not change the backing file to '%s': "
                   "backing format must be specified", b);
  if (*b && strcmp (o->backing_format, "qcow2") != 0
      && strcmp (o->backing_format, "raw") != 0)
    return refuse (ENOTSUP, "backing format '%s': qcowkit reads qcow2 and "
                   "raw", o->backing_format);
  if (strlen (b) > 1023)
    return refuse (EINVAL, "Could not change the backing file to '%s': "
                   "Invalid argument (longer than 1023 bytes)", b);
  if (reopen (r, !unsafe) < 0)
    return -1;
  if (*b && (r->img->hdr.autoclear_features & QK_AUTOCLEAR_DATA_FILE_RAW))
    return refuse (EINVAL, "Could not change the backing file to '%s': an "
                   "image with a raw external data file cannot have a "
                   "backing file", b);
  if (!unsafe) {
    if (r->img->unreadable)
      return refuse (EIO, "Could not open old backing file: %s",
                     r->img->unreadable);
    if (open_new_backing (r) < 0 || check_clean (r) < 0)
      return -1;
    if (!(o->flags & QK_REBASE_DRY_RUN) && qk_writer_begin (&r->w) < 0)
      return -1;
    if (copy_differences (r) < 0)
      return -1;
    if (reopen (r, false) < 0)
      return -1;
  }
  if (o->flags & QK_REBASE_DRY_RUN)
    return 0;
  return write_backing (r);
}

QK_EXPORT int
qk_rebase (const char *path, const struct qk_rebase_options *o,
           struct qk_rebase_result *res)
{
  struct rebase r;
  struct qk_rebase_result dummy;
  struct qk_saved_error sv;
  int ret;

  if (path == NULL || o == NULL) {
    set_error (EINVAL, "qk_rebase: NULL argument");
    return -1;
  }
  if (res == NULL)
    res = &dummy;
  memset (res, 0, sizeof *res);
  memset (&r, 0, sizeof r);
  r.o = o;
  r.res = res;
  r.path = path;
  if (qk_xform_open (&r.w, path, o->undo_path,
                     (o->flags & QK_REBASE_DRY_RUN) != 0) < 0) {
    qk_internal_prefix_error ("qk_rebase");
    qk_writer_close (&r.w);
    return -1;
  }
  ret = run (&r);
  if (ret < 0)
    qk_internal_save_error (&sv);
  qk_image_close (r.img);
  qk_image_close (r.nb);
  qk_writer_close (&r.w);
  if (ret < 0)
    qk_internal_restore_error (&sv);
  return ret;
}
