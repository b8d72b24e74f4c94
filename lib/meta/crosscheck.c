/* lib/meta: the metadata against the images, through the public image
 * API only. Images are opened read-only with their backing chains; with a
 * sysroot, every path (the XML's and the backing files') is resolved under
 * it by an open_fn, so image names stay the paths the metadata uses. */
#include <config.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/stat.h>

#include "meta/crosscheck.h"

struct img {
  char *path;               /* normalised logical path */
  struct qk_image *img;     /* NULL: missing or unreadable */
  bool missing;
  char *err;
};

struct known {              /* (image, name) pairs the metadata accounts for */
  char **v;
  size_t n, cap;
};

struct xc {
  struct qk_meta *m;
  struct meta_report *r;
  struct img *imgs;
  size_t n, cap;
  struct known snaps, bitmaps;
};

/* The metadata being checked (for host paths); set by meta_check_images. */
static __thread const struct qk_meta *cur_meta;

/* The same file: the same path once normalised, or (through symlinks,
 * under the sysroot) the same device and inode. */
bool
meta_same_path (const struct qk_meta *m, const char *a, const char *b)
{
  char *x, *y;
  bool r;

  if (a == NULL || b == NULL)
    return false;
  x = qk_path_normalize (a);
  y = qk_path_normalize (b);
  r = x && y && strcmp (x, y) == 0;
  if (!r && x && y && m) {
    char *hx = meta_host_path (m, x), *hy = meta_host_path (m, y);
    struct stat sx, sy;
    r = hx && hy && stat (hx, &sx) == 0 && stat (hy, &sy) == 0
      && sx.st_dev == sy.st_dev && sx.st_ino == sy.st_ino;
    free (hx);
    free (hy);
  }
  free (x);
  free (y);
  return r;
}

static bool
same_path (const char *a, const char *b)
{
  return meta_same_path (cur_meta, a, b);
}

/* A key naming the file: device and inode when it exists, else the
 * normalised path. */
static char *
file_key (const char *path)
{
  char *n = qk_path_normalize (path), *h, *k = NULL;
  struct stat st;

  if (n == NULL)
    return NULL;
  h = cur_meta ? meta_host_path (cur_meta, n) : NULL;
  if (h && stat (h, &st) == 0) {
    if (asprintf (&k, "%ju:%ju", (uintmax_t) st.st_dev,
                  (uintmax_t) st.st_ino) < 0)
      k = NULL;
    free (n);
  }
  else
    k = n;
  free (h);
  return k;
}

static struct qk_source *
open_under (void *opaque, const char *path)
{
  struct qk_meta *m = opaque;
  int fd;

  /* resolved in the sysroot by the kernel (or the O_NOFOLLOW walk) */
  if (m->sysroot == NULL)
    return qk_source_file (path);
  fd = qk_root_open (&m->root, path, O_RDONLY | O_NOCTTY | O_NONBLOCK, 0);
  if (fd < 0)
    return NULL;
  return qk_source_fd (fd, path);
}

struct qk_image *
meta_image_open (struct qk_meta *m, const char *path)
{
  struct qk_open_options oo = { 0 };

  if (m->sysroot) {
    oo.open_fn = open_under;
    oo.open_opaque = m;
  }
  return qk_image_open (path, &oo);
}

static struct img *
get_image (struct xc *x, const char *path)
{
  char *p = qk_path_normalize (path), *h;
  struct img *e;
  struct stat st;

  if (p == NULL)
    return NULL;
  for (size_t i = 0; i < x->n; i++)
    if (strcmp (x->imgs[i].path, p) == 0) {
      free (p);
      return &x->imgs[i];
    }
  e = qk_grow (x->imgs, &x->cap, x->n + 1, sizeof *e);
  if (e == NULL) {
    free (p);
    return NULL;
  }
  x->imgs = e;
  e = &x->imgs[x->n++];
  memset (e, 0, sizeof *e);
  e->path = p;
  h = meta_host_path (x->m, p);
  if (h == NULL || stat (h, &st) < 0) {
    e->missing = true;
    free (h);
    return e;
  }
  free (h);
  e->img = meta_image_open (x->m, p);
  if (e->img == NULL)
    e->err = strdup (qk_get_error ());
  return e;
}

static int
known_add (struct known *k, const char *image, const char *name)
{
  char **v = qk_grow (k->v, &k->cap, k->n + 1, sizeof *v);
  char *n = file_key (image), *s = NULL;

  if (v == NULL || n == NULL || asprintf (&s, "%s\n%s", n, name) < 0) {
    free (n);
    return -1;
  }
  free (n);
  k->v = v;
  k->v[k->n++] = s;
  return 0;
}

static bool
known_has (const struct known *k, const char *image, const char *name)
{
  char *n = file_key (image), *s;
  bool r = false;

  if (n == NULL || asprintf (&s, "%s\n%s", n, name) < 0) {
    free (n);
    return false;
  }
  for (size_t i = 0; i < k->n && !r; i++)
    r = strcmp (k->v[i], s) == 0;
  free (n);
  free (s);
  return r;
}

static void
known_free (struct known *k)
{
  for (size_t i = 0; i < k->n; i++)
    free (k->v[i]);
  free (k->v);
}

const struct qk_meta_domain_disk *
meta_ddisk (const struct qk_meta_domain_disk *d, size_t n, const char *name)
{
  if (name == NULL)
    return NULL;
  for (size_t i = 0; i < n; i++)
    if ((d[i].target && strcmp (d[i].target, name) == 0)
        || (d[i].source && name[0] == '/' && same_path (d[i].source, name)))
      return &d[i];
  return NULL;
}

const struct qk_meta_disk *
meta_mdisk (const struct qk_meta_moment *p, const char *target, bool revert)
{
  for (size_t i = 0; i < p->n_disks; i++)
    if (p->disks[i].revert == revert && p->disks[i].name
        && strcmp (p->disks[i].name, target) == 0)
      return &p->disks[i];
  return NULL;
}

bool
meta_is_external (const struct qk_meta_disk *d)
{
  return d && d->mode && strcmp (d->mode, "external") == 0 && d->source
    && (d->type == NULL || strcmp (d->type, "file") == 0);
}

static bool
has_snapshot (struct qk_image *img, const char *name)
{
  for (size_t i = 0; i < qk_image_snapshot_count (img); i++) {
    const struct qk_snapshot *s = qk_image_snapshot (img, i);
    if (s && s->name && strcmp (s->name, name) == 0)
      return true;
  }
  return false;
}

/* An image cannot be used: say why (once per image). */
static void
report_image (struct xc *x, struct img *e, const char *who)
{
  if (e->missing)
    meta_report (x->r, MP_IMAGE_MISSING, "%s: image %s does not exist", who,
                 e->path);
  else if (e->img == NULL)
    meta_report (x->r, MP_IMAGE_UNREADABLE, "%s: image %s: %s", who, e->path,
                 e->err ? e->err : "cannot be opened");
}

static void
check_internal (struct xc *x, const struct qk_meta_moment *p)
{
  for (size_t i = 0; i < p->n_disks; i++) {
    const struct qk_meta_disk *d = &p->disks[i];
    const struct qk_meta_domain_disk *dd;
    struct img *e;

    if (d->revert || !d->mode || strcmp (d->mode, "internal") != 0)
      continue;
    dd = meta_ddisk (p->domain_disks, p->n_domain_disks, d->name);
    if (dd == NULL || dd->source == NULL) {
      meta_report (x->r, MP_SNAPSHOT_DISK_UNKNOWN, "snapshot '%s': disk '%s' "
                   "is not in its <domain>", p->name, d->name);
      continue;
    }
    known_add (&x->snaps, dd->source, p->name);
    e = get_image (x, dd->source);
    if (e == NULL)
      continue;
    if (e->img == NULL) {
      char who[512];
      snprintf (who, sizeof who, "snapshot '%s', disk '%s'", p->name,
                d->name);
      if (e->missing)
        meta_report (x->r, MP_INT_SNAPSHOT_MISSING, "%s: internal snapshot "
                     "in %s, which does not exist", who, e->path);
      else
        report_image (x, e, who);
      continue;
    }
    if (strcmp (qk_image_format (e->img), "qcow2") != 0) {
      meta_report (x->r, MP_INT_SNAPSHOT_NOT_QCOW2, "snapshot '%s', disk "
                   "'%s': %s is %s, which cannot hold internal snapshots",
                   p->name, d->name, e->path, qk_image_format (e->img));
      continue;
    }
    if (has_snapshot (e->img, p->name))
      continue;
    /* somewhere else? */
    const char *other = NULL;
    for (size_t k = 0; k < x->n && !other; k++)
      for (struct qk_image *c = x->imgs[k].img; c && !other;
           c = qk_image_backing (c))
        if (!same_path (qk_image_filename (c), e->path)
            && has_snapshot (c, p->name))
          other = qk_image_filename (c);
    if (other)
      meta_report (x->r, MP_INT_SNAPSHOT_WRONG_IMAGE, "snapshot '%s', disk "
                   "'%s': not in %s but in %s", p->name, d->name, e->path,
                   other);
    else
      meta_report (x->r, MP_INT_SNAPSHOT_MISSING, "snapshot '%s', disk '%s': "
                   "%s has no internal snapshot of that name", p->name,
                   d->name, e->path);
  }
}

static void
check_external (struct xc *x, const struct qk_meta_moment *p)
{
  for (size_t i = 0; i < p->n_disks; i++) {
    const struct qk_meta_disk *d = &p->disks[i];
    const struct qk_meta_domain_disk *dd;
    const char *bp;
    struct img *e;

    if (!meta_is_external (d))
      continue;
    e = get_image (x, d->source);
    if (e == NULL)
      continue;
    if (e->missing) {
      meta_report (x->r, MP_EXT_OVERLAY_MISSING, "snapshot '%s', disk '%s': "
                   "overlay %s does not exist", p->name, d->name, e->path);
      continue;
    }
    if (e->img == NULL) {
      char who[512];
      snprintf (who, sizeof who, "snapshot '%s', disk '%s'", p->name,
                d->name);
      report_image (x, e, who);
      continue;
    }
    if (strcmp (qk_image_format (e->img), "qcow2") != 0
        || (d->format && strcmp (d->format, "qcow2") != 0)) {
      meta_report (x->r, MP_EXT_OVERLAY_NOT_QCOW2, "snapshot '%s', disk "
                   "'%s': overlay %s is %s (recorded: %s)", p->name, d->name,
                   e->path, qk_image_format (e->img),
                   d->format ? d->format : "qcow2");
      continue;
    }
    if (d->revert)
      continue;
    dd = meta_ddisk (p->domain_disks, p->n_domain_disks, d->name);
    if (dd == NULL || dd->source == NULL) {
      meta_report (x->r, MP_SNAPSHOT_DISK_UNKNOWN, "snapshot '%s': disk '%s' "
                   "is not in its <domain>", p->name, d->name);
      continue;
    }
    bp = qk_image_backing_path (e->img);
    if (bp == NULL)
      meta_report (x->r, MP_EXT_BACKING_MISMATCH, "snapshot '%s', disk '%s': "
                   "overlay %s has no backing file; the snapshot froze %s",
                   p->name, d->name, e->path, dd->source);
    else if (!same_path (bp, dd->source))
      meta_report (x->r, MP_EXT_BACKING_MISMATCH, "snapshot '%s', disk '%s': "
                   "overlay %s backs onto %s; the snapshot froze %s", p->name,
                   d->name, e->path, bp, dd->source);
  }
}

/* The image in use for a disk right after moment p was taken, and the one
 * after a revert to it (its revert overlay), if any. */
const char *
meta_active_after (const struct qk_meta_moment *p, const char *target,
              const char **revert)
{
  const struct qk_meta_disk *d = meta_mdisk (p, target, false);
  const struct qk_meta_disk *rd = meta_mdisk (p, target, true);
  const struct qk_meta_domain_disk *dd;

  *revert = meta_is_external (rd) ? rd->source : NULL;
  if (meta_is_external (d))
    return d->source;
  if (d && d->mode && strcmp (d->mode, "no") == 0)
    return NULL;
  dd = meta_ddisk (p->domain_disks, p->n_domain_disks, target);
  return dd ? dd->source : NULL;
}

/* image is an overlay on the image parent froze: the disk after a revert
 * to parent (a revert overlay that libvirt 9.0 does not keep in the
 * parent's <revertDisks> when it rewrites the parent's file). */
static bool
revert_overlay_of (struct xc *x, const struct qk_meta_moment *par,
                   const char *target, const char *image)
{
  const struct qk_meta_domain_disk *pd
    = meta_ddisk (par->domain_disks, par->n_domain_disks, target);
  const struct qk_meta_disk *d = meta_mdisk (par, target, false);
  struct img *e;
  struct qk_image *bk;

  if (pd == NULL || pd->source == NULL || !meta_is_external (d))
    return false;
  e = get_image (x, image);
  bk = e && e->img ? qk_image_backing (e->img) : NULL;
  return bk && same_path (qk_image_filename (bk), pd->source);
}

static void
check_order (struct xc *x, const struct meta_set *s,
             const struct qk_meta_moment *p)
{
  const struct qk_meta_moment *par;

  if (p->parent_index == QK_META_NONE)
    return;
  par = &s->m[p->parent_index].pub;
  for (size_t i = 0; i < p->n_domain_disks; i++) {
    const struct qk_meta_domain_disk *dd = &p->domain_disks[i];
    const struct qk_meta_disk *d;
    const char *want, *rev;

    if (dd->target == NULL || dd->source == NULL
        || (dd->device && strcmp (dd->device, "disk") != 0))
      continue;
    d = meta_mdisk (p, dd->target, false);
    if (d && d->mode && strcmp (d->mode, "no") == 0)
      continue;
    want = meta_active_after (par, dd->target, &rev);
    if (want == NULL || same_path (want, dd->source)
        || (rev && same_path (rev, dd->source))
        || revert_overlay_of (x, par, dd->target, dd->source))
      continue;
    meta_report (x->r, MP_EXT_CHAIN_ORDER, "snapshot '%s', disk '%s': its "
                 "<domain> uses %s, but after its parent '%s' the disk was "
                 "%s%s%s", p->name, dd->target, dd->source, par->name, want,
                 rev ? " (or after a revert " : "", rev ? rev : "");
  }
}

static void
check_current (struct xc *x, const struct meta_set *s)
{
  size_t c = s->current != QK_META_NONE ? s->current : s->claimed;
  const struct qk_meta_moment *p;

  if (c == QK_META_NONE || !x->m->domain_ok || s->multi_current)
    return;
  p = &s->m[c].pub;
  meta_subject (x->r, p);
  for (size_t i = 0; i < x->m->n_ddisks; i++) {
    const struct qk_meta_domain_disk *dd = &x->m->ddisks[i];
    const char *want, *rev;

    if (dd->target == NULL || dd->source == NULL
        || (dd->device && strcmp (dd->device, "disk") != 0))
      continue;
    want = meta_active_after (p, dd->target, &rev);
    if (want == NULL || same_path (want, dd->source)
        || (rev && same_path (rev, dd->source))
        || revert_overlay_of (x, p, dd->target, dd->source))
      continue;
    meta_report (x->r, MP_CURRENT_CHAIN_MISMATCH, "disk '%s': the domain uses "
                 "%s, but the current snapshot '%s' says %s", dd->target,
                 dd->source, p->name, want);
  }
  meta_subject (x->r, NULL);
}

static const struct qk_bitmap *
find_bitmap (struct qk_image *top, const char *name, struct qk_image **where)
{
  for (struct qk_image *c = top; c; c = qk_image_backing (c))
    for (size_t i = 0; i < qk_image_bitmap_count (c); i++) {
      const struct qk_bitmap *b = qk_image_bitmap (c, i);
      if (b && b->name && strcmp (b->name, name) == 0) {
        *where = c;
        return b;
      }
    }
  return NULL;
}

static void
check_checkpoints (struct xc *x)
{
  const struct meta_set *s = &x->m->set[QK_META_CHECKPOINT];

  for (size_t i = 0; i < s->n; i++) {
    const struct qk_meta_moment *p = &s->m[i].pub;
    if (!p->loaded)
      continue;
    meta_subject (x->r, p);
    for (size_t k = 0; k < p->n_disks; k++) {
      const struct qk_meta_disk *d = &p->disks[k];
      const struct qk_meta_domain_disk *dd;
      const struct qk_bitmap *b;
      struct qk_image *where = NULL;
      struct img *e;

      if (d->revert || !d->mode || strcmp (d->mode, "bitmap") != 0
          || d->bitmap == NULL)
        continue;
      dd = meta_ddisk (x->m->ddisks, x->m->n_ddisks, d->name);
      if (dd == NULL || dd->source == NULL) {
        if (x->m->domain_ok)
          meta_report (x->r, MP_CHECKPOINT_DISK_UNKNOWN, "checkpoint '%s': "
                       "disk '%s' is not in the domain definition", p->name,
                       d->name);
        continue;
      }
      e = get_image (x, dd->source);
      if (e == NULL || e->img == NULL)
        continue;      /* reported with the domain's disks */
      if (strcmp (qk_image_format (e->img), "qcow2") != 0) {
        meta_report (x->r, MP_BITMAP_NOT_QCOW2, "checkpoint '%s', disk '%s': "
                     "%s is %s", p->name, d->name, e->path,
                     qk_image_format (e->img));
        continue;
      }
      b = find_bitmap (e->img, d->bitmap, &where);
      if (b == NULL) {
        meta_report (x->r, MP_BITMAP_MISSING, "checkpoint '%s', disk '%s': "
                     "no bitmap '%s' in the chain of %s", p->name, d->name,
                     d->bitmap, e->path);
        continue;
      }
      known_add (&x->bitmaps, qk_image_filename (where), b->name);
      if (b->flags & QK_BITMAP_IN_USE)
        meta_report (x->r, MP_BITMAP_IN_USE, "checkpoint '%s', disk '%s': "
                     "bitmap '%s' in %s is in use (not saved cleanly)",
                     p->name, d->name, b->name, qk_image_filename (where));
      if (b->granularity_bits < 9 || b->granularity_bits > 31)
        meta_report (x->r, MP_BITMAP_GRANULARITY, "checkpoint '%s', disk "
                     "'%s': bitmap '%s' in %s has granularity 2^%u",
                     p->name, d->name, b->name, qk_image_filename (where),
                     b->granularity_bits);
    }
  }
  meta_subject (x->r, NULL);
  /* bitmaps no checkpoint accounts for, in the domain's disk chains */
  for (size_t i = 0; i < x->m->n_ddisks; i++) {
    const struct qk_meta_domain_disk *dd = &x->m->ddisks[i];
    struct img *e;

    if (dd->source == NULL || (dd->device && strcmp (dd->device, "disk")))
      continue;
    e = get_image (x, dd->source);
    if (e == NULL || e->img == NULL)
      continue;
    for (struct qk_image *c = e->img; c; c = qk_image_backing (c))
      for (size_t k = 0; k < qk_image_bitmap_count (c); k++) {
        const struct qk_bitmap *b = qk_image_bitmap (c, k);
        if (b && b->name && !known_has (&x->bitmaps, qk_image_filename (c),
                                        b->name)) {
          x->r->file = qk_image_filename (c);
          meta_report (x->r, MP_BITMAP_UNKNOWN, "disk '%s': bitmap '%s' in "
                       "%s belongs to no checkpoint", dd->target
                       ? dd->target : "?", b->name, qk_image_filename (c));
          x->r->file = NULL;
          known_add (&x->bitmaps, qk_image_filename (c), b->name);
        }
      }
  }
}

void
meta_check_images (struct qk_meta *m, struct meta_report *r)
{
  struct xc x = { .m = m, .r = r };

  cur_meta = m;
  const struct meta_set *s = &m->set[QK_META_SNAPSHOT];
  struct qk_strvec seen = { 0 };

  /* the domain definition's disks */
  for (size_t i = 0; i < m->n_ddisks; i++) {
    const struct qk_meta_domain_disk *dd = &m->ddisks[i];
    struct img *e;
    char who[256];

    if (dd->source == NULL || (dd->device && strcmp (dd->device, "disk")))
      continue;
    e = get_image (&x, dd->source);
    snprintf (who, sizeof who, "domain disk '%s'",
              dd->target ? dd->target : "?");
    if (e)
      report_image (&x, e, who);
  }
  for (size_t i = 0; i < s->n; i++) {
    const struct qk_meta_moment *p = &s->m[i].pub;
    if (!p->loaded)
      continue;
    meta_subject (r, p);
    check_internal (&x, p);
    check_external (&x, p);
    check_order (&x, s, p);
  }
  meta_subject (r, NULL);
  check_current (&x, s);
  /* qcow2 snapshots libvirt does not know, in every image looked at */
  for (size_t i = 0; i < x.n; i++)
    for (struct qk_image *c = x.imgs[i].img; c; c = qk_image_backing (c)) {
      char *n = file_key (qk_image_filename (c));
      bool dup = false;
      if (n == NULL)
        continue;
      for (size_t k = 0; k < seen.n && !dup; k++)
        dup = strcmp (seen.v[k], n) == 0;
      if (dup || qk_strvec_add (&seen, n) < 0) {
        if (dup)
          free (n);
        continue;
      }
      r->file = qk_image_filename (c);
      for (size_t k = 0; k < qk_image_snapshot_count (c); k++) {
        const struct qk_snapshot *sn = qk_image_snapshot (c, k);
        if (sn && sn->name && *sn->name == '\0')
          /* a garbled entry (its name read from the wrong place): no
           * metadata can name it; check reports the entry itself */
          meta_report (r, MP_INT_SNAPSHOT_UNKNOWN, "%s: internal snapshot "
                       "entry %zu has an empty name, which no libvirt "
                       "snapshot can have (see qcowkit check)",
                       qk_image_filename (c), k);
        else if (sn && sn->name
                 && !known_has (&x.snaps, qk_image_filename (c), sn->name))
          meta_report (r, MP_INT_SNAPSHOT_UNKNOWN, "%s: internal snapshot "
                       "'%s' (id %s) is not in libvirt's metadata",
                       qk_image_filename (c), sn->name,
                       sn->id ? sn->id : "?");
      }
      r->file = NULL;
    }
  check_checkpoints (&x);
  qk_strvec_free (&seen);
  for (size_t i = 0; i < x.n; i++) {
    free (x.imgs[i].path);
    free (x.imgs[i].err);
    if (x.imgs[i].img)
      qk_image_close (x.imgs[i].img);
  }
  free (x.imgs);
  known_free (&x.snaps);
  known_free (&x.bitmaps);
  cur_meta = NULL;
}
