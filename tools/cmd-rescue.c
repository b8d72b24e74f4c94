/* qcowkit rescue: get the guest data out of a host that will not boot.
 *
 * Every disk of every libvirt domain found under --sysroot (or an embedded
 * driver's --libvirt-root), or the images given with --image, is exported
 * as a raw file with holes (tools/export-core.c in salvage mode: reading
 * needs no refcounts, and a cluster that cannot be read is left as a hole
 * and reported) under --to, with a manifest (manifest.json, MANIFEST.txt).
 *
 * Files, per disk: DIR/NAME.raw.part while it is written; then NAME.info
 * (bytes written and the unreadable ranges, for a later run), NAME.raw
 * (renamed from .part), and last NAME.raw.sha256 (`sha256sum` format). A
 * rerun skips a disk whose NAME.raw still has the sha256 recorded next to
 * it, and writes any other again.
 *
 * Nothing is written under the sysroot or the libvirt root: --to is
 * resolved (symlinks included) and refused when it is inside either. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "export-core.h"
#include "buf.h"
#include "bytes.h"
#include "json.h"
#include "util/sha256.h"   /* self-contained: compiled into the tool */

/* Exit status: a bitmask (usage errors alone are 2, as for every command). */
#define RESCUE_FAILED     1  /* a disk could not be exported, or nothing was */
#define RESCUE_UNREADABLE 4  /* some guest ranges could not be read */
#define RESCUE_SKIPPED    8  /* some disk not exported: in use, network, ... */

struct range {
  uint64_t start, length;
  char *why;
};

struct member_check {
  char *filename, *format;
  bool checked;
  struct qk_check_result res;
  char **names;             /* problem names, with counts */
  uint64_t *counts;
  size_t n;
};

enum disk_status { ST_PLANNED, ST_DONE, ST_EARLIER, ST_SKIPPED, ST_FAILED };

struct disk {
  char *domain, *target, *type, *source;
  char *path;               /* host path of the image (NULL: none) */
  char *snap;               /* an internal snapshot's name, or NULL */
  char *out;                /* relative to --to */
  bool in_use;
  enum disk_status st;
  char *reason;             /* skipped or failed: why */
  struct member_check *chain;
  size_t nchain;
  uint64_t size, estimate, written;
  struct range *r;          /* unreadable ranges, sorted */
  size_t nr, rcap;
  char sha[65];
};

struct rescue {
  struct common_opts o;
  const char *sysroot, *libvirt_root, *to, **domains, **images;
  size_t ndomains, nimages;
  bool snapshots, force_share;
  struct qk_root *root;     /* the sysroot, for backing files */
  bool have_root;
  struct disk *d;
  size_t n, cap;
  int to_fd;
};

static char *
xstrdup (const char *s)
{
  char *p;

  if (s == NULL)
    return NULL;
  p = strdup (s);
  if (p == NULL) {
    errx_ ("out of memory");
    exit (EXIT_ERR);
  }
  return p;
}

static void *
xgrow (void *v, size_t *cap, size_t n, size_t size)
{
  void *p = grow (v, cap, n, size);

  if (p == NULL) {
    errx_ ("out of memory");
    exit (EXIT_ERR);
  }
  return p;
}

static char *
xasprintf (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));
static char *
xasprintf (const char *fmt, ...)
{
  va_list ap;
  char *s;

  va_start (ap, fmt);
  if (vasprintf (&s, fmt, ap) < 0) {
    errx_ ("out of memory");
    exit (EXIT_ERR);
  }
  va_end (ap);
  return s;
}

/* A file name made of image-supplied text: no '/', no leading '.'. */
static char *
safe_name (const char *s)
{
  char *p = xstrdup (s && *s ? s : "_");

  for (char *q = p; *q; q++)
    if (*q == '/' || (unsigned char) *q < 0x20)
      *q = '_';
  if (p[0] == '.')
    p[0] = '_';
  return p;
}

static struct disk *
new_disk (struct rescue *R)
{
  struct disk *d;

  R->d = xgrow (R->d, &R->cap, R->n + 1, sizeof *R->d);
  d = &R->d[R->n++];
  memset (d, 0, sizeof *d);
  return d;
}

/* ---- unreadable ranges ---- */

static void
add_range (struct disk *d, uint64_t start, uint64_t len, const char *why)
{
  if (len == 0)
    return;
  if (d->nr && d->r[d->nr - 1].start + d->r[d->nr - 1].length == start
      && strcmp (d->r[d->nr - 1].why, why) == 0) {
    d->r[d->nr - 1].length += len;
    return;
  }
  d->r = xgrow (d->r, &d->rcap, d->nr + 1, sizeof *d->r);
  d->r[d->nr++] = (struct range) { start, len, xstrdup (why) };
}

static int
range_cmp (const void *a, const void *b)
{
  const struct range *x = a, *y = b;
  return x->start < y->start ? -1 : x->start > y->start;
}

/* Sort, and join neighbours with the same reason. */
static void
sort_ranges (struct disk *d)
{
  size_t k = 0;

  if (d->nr < 2)
    return;
  qsort (d->r, d->nr, sizeof *d->r, range_cmp);
  for (size_t i = 1; i < d->nr; i++) {
    struct range *p = &d->r[k];
    if (p->start + p->length >= d->r[i].start
        && strcmp (p->why, d->r[i].why) == 0) {
      uint64_t e = MAX (p->start + p->length,
                        d->r[i].start + d->r[i].length);
      p->length = e - p->start;
      free (d->r[i].why);
    }
    else
      d->r[++k] = d->r[i];
  }
  d->nr = k + 1;
}

static void
on_unreadable (void *opaque, uint64_t start, uint64_t len, const char *why)
{
  add_range (opaque, start, len, why);
}

/* ---- what cannot be read, found before reading ----
 * The library reads past the end of a file as zeros (as QEMU does for a
 * partial last cluster), so an L2 table or a data cluster that starts at
 * or past the end of its file gives zeros, not an error: those ranges are
 * found here from the tables (L1, L2) and left as holes. Misaligned
 * tables and clusters, and compressed data that does not decompress,
 * fail the read: the export reports them. */

struct scan {
  struct disk *d;
  struct range *r;          /* this member's bad ranges */
  size_t nr, cap;
  uint64_t allocated;       /* bytes of data clusters seen */
};

static void
scan_add (struct scan *s, uint64_t start, uint64_t len, uint64_t size,
          const char *why)
{
  if (start >= size)
    return;
  len = MIN (len, size - start);
  if (s->nr && s->r[s->nr - 1].start + s->r[s->nr - 1].length == start
      && strcmp (s->r[s->nr - 1].why, why) == 0) {
    s->r[s->nr - 1].length += len;
    return;
  }
  s->r = xgrow (s->r, &s->cap, s->nr + 1, sizeof *s->r);
  s->r[s->nr++] = (struct range) { start, len, xstrdup (why) };
}

static void
scan_member (struct scan *s, struct qk_image *m, const uint64_t *l1,
             uint32_t n, uint64_t size)
{
  const struct qk_header *h = qk_image_header (m);
  uint64_t fsize = qk_image_file_size (m), cs, span;
  bool df = (h->incompatible_features & QK_INCOMPAT_DATA_FILE) != 0;
  bool extl2 = h->subclusters > 1;
  char *why_data = xasprintf ("data cluster past the end of %s",
                              qk_image_filename (m));

  cs = h->cluster_size;
  span = (uint64_t) h->l2_entries * cs;
  for (uint32_t i = 0; i < n && (uint64_t) i * span < size; i++) {
    uint64_t l2 = l1[i] & QK_L1E_OFFSET_MASK, *e = NULL;
    size_t ne = 0;
    if (l2 == 0 || l2 % cs)
      continue;
    if (l2 >= fsize) {
      char *why = xasprintf ("L2 table (L1[%" PRIu32 "] = 0x%" PRIx64
                             ") past the end of %s", i, l2,
                             qk_image_filename (m));
      scan_add (s, (uint64_t) i * span, span, size, why);
      free (why);
      continue;
    }
    if (qk_image_read_l2 (m, l2, &e, &ne) < 0)
      continue;
    for (size_t k = 0; k < h->l2_entries && k < ne; k++) {
      uint64_t ent = e[extl2 ? 2 * k : k];
      uint64_t off = ent & QK_L2E_OFFSET_MASK;
      bool data;
      if ((ent & QK_OFLAG_COMPRESSED) || off == 0)
        continue;
      data = extl2 ? (e[2 * k + 1] & 0xffffffffULL) != 0
                   : !(ent & QK_OFLAG_ZERO);
      if (!data)
        continue;
      s->allocated += cs;
      if (!df && off % cs == 0 && off >= fsize)
        scan_add (s, (uint64_t) i * span + k * cs, cs, size, why_data);
    }
    free (e);
  }
  free (why_data);
}

struct depth_filter {
  struct disk *d;
  struct scan *s;
  unsigned depth;
};

/* Keep the bad ranges of a backing member where the guest reads it. */
static int
depth_extent (void *opaque, const struct qk_extent *e)
{
  struct depth_filter *f = opaque;

  if (e->depth < f->depth)
    return 0;
  for (size_t i = 0; i < f->s->nr; i++) {
    const struct range *r = &f->s->r[i];
    uint64_t a = MAX (r->start, e->start);
    uint64_t b = MIN (r->start + r->length, e->start + e->length);
    if (a < b)
      add_range (f->d, a, b - a, r->why);
  }
  return 0;
}

static int
estimate_extent (void *opaque, const struct qk_extent *e)
{
  uint64_t *sum = opaque;

  if (e->data && !e->zero)
    *sum += e->length;
  return 0;
}

static void
scan_free (struct scan *s)
{
  for (size_t i = 0; i < s->nr; i++)
    free (s->r[i].why);
  free (s->r);
  memset (s, 0, sizeof *s);
}

/* The unreadable ranges known before reading, and the bytes the export
 * will write (an upper bound). */
static void
scan_disk (struct disk *d, struct qk_image *img, size_t snap_index)
{
  unsigned depth = 0;
  uint64_t est = 0;

  for (struct qk_image *m = img; m; m = qk_image_backing (m), depth++) {
    struct scan s = { .d = d };
    const uint64_t *l1;
    uint64_t *sl1 = NULL;
    uint32_t n = 0;

    if (strcmp (qk_image_format (m), "qcow2") != 0)
      continue;
    if (depth == 0 && d->snap) {
      if (qk_image_read_snapshot_l1 (m, snap_index, &sl1, &n) < 0)
        continue;
      scan_member (&s, m, sl1, n, d->size);
      free (sl1);
      for (size_t i = 0; i < s.nr; i++)
        add_range (d, s.r[i].start, s.r[i].length, s.r[i].why);
      /* the snapshot's own clusters, and what the chain below holds */
      est = s.allocated;
      if (qk_image_backing (m)) {
        uint64_t b = 0;
        struct qk_image *bk = qk_image_backing (m);
        if (qk_image_map (bk, 0, MIN (d->size, qk_image_virtual_size (bk)),
                          estimate_extent, &b) < 0)
          b = qk_image_virtual_size (bk);
        est += b;
      }
      d->estimate = MIN (est, d->size);
      scan_free (&s);
      /* Damage in the backing files under a snapshot shows only where a
       * read fails. */
      break;
    }
    l1 = qk_image_l1 (m, &n);
    if (l1 == NULL)
      continue;
    scan_member (&s, m, l1, n, MIN (d->size, qk_image_virtual_size (m)));
    if (depth == 0)
      for (size_t i = 0; i < s.nr; i++)
        add_range (d, s.r[i].start, s.r[i].length, s.r[i].why);
    else if (s.nr) {
      struct depth_filter f = { d, &s, depth };
      qk_image_map (img, 0, d->size, depth_extent, &f);
    }
    scan_free (&s);
  }
  if (!d->snap) {
    if (qk_image_map (img, 0, d->size, estimate_extent, &est) < 0)
      est = d->size;
    d->estimate = est;
  }
  sort_ranges (d);
}

/* ---- check ---- */

static int
on_problem (void *opaque, const struct qk_problem *p)
{
  struct member_check *c = opaque;
  size_t cap = c->n;

  for (size_t i = 0; i < c->n; i++)
    if (strcmp (c->names[i], p->name) == 0) {
      c->counts[i]++;
      return 0;
    }
  c->names = xgrow (c->names, &cap, c->n + 1, sizeof *c->names);
  cap = c->n;
  c->counts = xgrow (c->counts, &cap, c->n + 1, sizeof *c->counts);
  c->names[c->n] = xstrdup (p->name);
  c->counts[c->n++] = 1;
  return 0;
}

static void
check_chain (struct disk *d, struct qk_image *img)
{
  size_t cap = 0;

  for (struct qk_image *m = img; m; m = qk_image_backing (m)) {
    struct member_check *c;
    d->chain = xgrow (d->chain, &cap, d->nchain + 1, sizeof *d->chain);
    c = &d->chain[d->nchain++];
    memset (c, 0, sizeof *c);
    c->filename = xstrdup (qk_image_filename (m));
    c->format = xstrdup (qk_image_format (m));
    if (strcmp (c->format, "qcow2") == 0
        && qk_check_run (m, 0, on_problem, c, &c->res) == 0)
      c->checked = true;
  }
}

/* ---- files under --to ---- */

static int
make_dirs (int dfd, const char *rel)
{
  char *p = xstrdup (rel);

  for (char *s = strchr (p, '/'); s; s = strchr (s + 1, '/')) {
    *s = '\0';
    if (mkdirat (dfd, p, 0755) < 0 && errno != EEXIST) {
      errx_ ("mkdir %s: %s", p, strerror (errno));
      free (p);
      return -1;
    }
    *s = '/';
  }
  free (p);
  return 0;
}

static void
hex (const uint8_t h[32], char out[65])
{
  for (int i = 0; i < 32; i++)
    sprintf (out + 2 * i, "%02x", h[i]);
}

/* sha256 of a file under --to; -1 when it cannot be read. */
static int
file_sha256 (int dfd, const char *rel, char out[65])
{
  struct qk_sha256 c;
  uint8_t h[32], *buf = malloc (1 << 20);
  int fd = openat (dfd, rel, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  ssize_t r = -1;

  if (fd >= 0 && buf) {
    qk_sha256_init (&c);
    while ((r = read (fd, buf, 1 << 20)) > 0)
      qk_sha256_update (&c, buf, (size_t) r);
  }
  if (fd >= 0)
    close (fd);
  free (buf);
  if (r < 0)
    return -1;
  qk_sha256_final (&c, h);
  hex (h, out);
  return 0;
}

/* Write a small file under --to: temp, fsync, rename. */
static int
put_file (int dfd, const char *rel, const char *text)
{
  char *tmp = xasprintf ("%s.tmp", rel);
  int fd = openat (dfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC
                              | O_NOFOLLOW, 0644);
  size_t n = strlen (text);
  int ret = -1;

  if (fd >= 0 && write (fd, text, n) == (ssize_t) n && fsync (fd) == 0
      && close (fd) == 0) {
    fd = -1;
    if (renameat (dfd, tmp, dfd, rel) == 0)
      ret = 0;
  }
  if (ret < 0)
    errx_ ("write %s: %s", rel, strerror (errno));
  if (fd >= 0)
    close (fd);
  free (tmp);
  return ret;
}

static char *
strip_ext (const char *out)
{
  const char *dot = strrchr (out, '.');
  return xasprintf ("%.*s.info", (int) (dot ? dot - out : (long) strlen (out)),
                    out);
}

/* A disk complete from an earlier run: NAME.raw with its sha256 beside
 * it, matching; then its NAME.info gives what that run found. */
static bool
complete_earlier (struct rescue *R, struct disk *d)
{
  char *shaf = xasprintf ("%s.sha256", d->out), *info = strip_ext (d->out);
  char rec[65] = "", now[65];
  bool ok = false;
  FILE *f;
  int fd = openat (R->to_fd, shaf, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);

  if (fd >= 0) {
    if (read (fd, rec, 64) == 64)
      rec[64] = '\0';
    else
      rec[0] = '\0';
    close (fd);
  }
  if (rec[0] && file_sha256 (R->to_fd, d->out, now) == 0
      && strcmp (rec, now) == 0
      && (fd = openat (R->to_fd, info, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) >= 0
      && (f = fdopen (fd, "r")) != NULL) {
    char line[4096];
    uint64_t a, b;
    int pos;
    ok = true;
    for (size_t i = 0; i < d->nr; i++)
      free (d->r[i].why);
    d->nr = 0;
    while (fgets (line, sizeof line, f)) {
      line[strcspn (line, "\n")] = '\0';
      if (sscanf (line, "written %" SCNu64, &a) == 1)
        d->written = a;
      else if (sscanf (line, "unreadable %" SCNu64 " %" SCNu64 " %n", &a, &b,
                       &pos) == 2)
        add_range (d, a, b, line + pos);
    }
    fclose (f);
    memcpy (d->sha, now, sizeof now);
  }
  free (shaf);
  free (info);
  return ok;
}

/* ---- one disk ---- */

static struct qk_source *
open_in_root (void *opaque, const char *path)
{
  struct rescue *R = opaque;
  const char *rel = qk_root_strip (R->root, path);
  int fd = qk_root_open (R->root, rel ? rel : path,
                         O_RDONLY | O_NOCTTY | O_NONBLOCK, 0);

  if (fd < 0)
    return NULL;
  return qk_source_fd (fd, path);
}

static struct qk_image *
open_disk (struct rescue *R, const char *path)
{
  struct qk_open_options oo = { .flags = QK_OPEN_FORCE };

  if (R->have_root) {
    oo.open_fn = open_in_root;
    oo.open_opaque = R;
  }
  return qk_image_open (path, &oo);
}

static void
fail (struct disk *d, const char *fmt, ...) __attribute__ ((format (printf, 2, 3)));
static void
fail (struct disk *d, const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  free (d->reason);
  if (vasprintf (&d->reason, fmt, ap) < 0)
    d->reason = NULL;
  va_end (ap);
  d->st = ST_FAILED;
}

/* Open and look at a planned disk: check, scan, estimate; or decide it is
 * complete already. The image stays closed between the phases (there may
 * be many). */
static void
plan_disk (struct rescue *R, struct disk *d)
{
  struct qk_image *img;
  const char *why;
  size_t snap_index = 0;

  if (d->st != ST_PLANNED)
    return;
  if (locked_by_qemu (d->path)) {
    d->in_use = true;
    if (!R->force_share) {
      d->st = ST_SKIPPED;
      d->reason = xstrdup ("in use by a running QEMU (-U exports it anyway)");
      return;
    }
  }
  img = open_disk (R, d->path);
  if (img == NULL) {
    fail (d, "%s", qk_get_error ());
    return;
  }
  check_chain (d, img);
  if ((why = qk_image_unreadable_reason (img)) != NULL) {
    fail (d, "cannot be read: %s", why);
    goto out;
  }
  if (d->snap) {
    for (snap_index = 0; snap_index < qk_image_snapshot_count (img);
         snap_index++)
      if (strcmp (qk_image_snapshot (img, snap_index)->name, d->snap) == 0)
        break;
    d->size = export_snapshot_size (img, d->snap);
  }
  else
    d->size = qk_image_virtual_size (img);
  scan_disk (d, img, snap_index);
  if (complete_earlier (R, d))
    d->st = ST_EARLIER;
out:
  qk_image_close (img);
}

static int
export_disk (struct rescue *R, struct disk *d, size_t num, size_t total)
{
  struct export_spec s = { .fd = -1 };
  struct qk_image *img = open_disk (R, d->path);
  char *part = xasprintf ("%s.part", d->out), *info = strip_ext (d->out);
  char *shaf = xasprintf ("%s.sha256", d->out);
  struct sbuf t = { 0 };
  char *outpath = xasprintf ("%s/%s", R->to, part);
  int ret = -1;

  if (img == NULL) {
    fail (d, "%s", qk_get_error ());
    goto out;
  }
  if (d->snap && qk_image_select_snapshot (img, d->snap) < 0) {
    fail (d, "%s", qk_get_error ());
    goto out;
  }
  if (make_dirs (R->to_fd, d->out) < 0) {
    fail (d, "cannot make its directory");
    goto out;
  }
  /* Neither the .part nor the file it becomes may be a file read. */
  if (export_output_is_input (img, outpath) < 0) {
    fail (d, "the output is an input");
    goto out;
  }
  free (outpath);
  outpath = xasprintf ("%s/%s", R->to, d->out);
  if (export_output_is_input (img, outpath) < 0) {
    fail (d, "the output is an input");
    goto out;
  }
  unlinkat (R->to_fd, shaf, 0);
  s.fd = openat (R->to_fd, part, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC
                                  | O_NOFOLLOW, 0644);
  if (s.fd < 0) {
    fail (d, "open %s: %s", part, strerror (errno));
    goto out;
  }
  if (!R->o.quiet && (R->o.progress == 1 || (R->o.progress == -1
                                               && isatty (2))))
    fprintf (stderr, "qcowkit: [%zu/%zu] %s\n", num, total, d->out);
  s.path = d->path;
  s.snap = d->snap;
  s.out = part;
  s.o = &R->o;
  s.open_flags = QK_OPEN_FORCE;
  s.img = img;
  s.size = d->size;
  s.salvage = true;
  s.hash = true;
  s.unreadable = on_unreadable;
  s.opaque = d;
  {
    struct export_range *h = calloc (d->nr ? d->nr : 1, sizeof *h);
    if (h == NULL) {
      fail (d, "out of memory");
      goto out;
    }
    for (size_t i = 0; i < d->nr; i++)
      h[i] = (struct export_range) { d->r[i].start, d->r[i].length };
    s.holes = h;
    s.nholes = d->nr;
    ret = export_run (&s);
    free (h);
  }
  if (ret < 0) {
    fail (d, "the export failed (see the messages above)");
    goto out;
  }
  ret = -1;
  if (close (s.fd) < 0) {
    s.fd = -1;
    fail (d, "close %s: %s", part, strerror (errno));
    goto out;
  }
  s.fd = -1;
  sort_ranges (d);
  d->written = s.written;
  hex (s.sha256, d->sha);
  sbuf_printf (&t, "written %" PRIu64 "\n", d->written);
  for (size_t i = 0; i < d->nr; i++)
    sbuf_printf (&t, "unreadable %" PRIu64 " %" PRIu64 " %s\n",
                    d->r[i].start, d->r[i].length, d->r[i].why);
  if (t.oom || put_file (R->to_fd, info, t.p) < 0
      || renameat (R->to_fd, part, R->to_fd, d->out) < 0) {
    fail (d, "cannot finish %s: %s", d->out, strerror (errno));
    goto out;
  }
  free (t.p);
  memset (&t, 0, sizeof t);
  {
    const char *slash = strrchr (d->out, '/');
    sbuf_printf (&t, "%s  %s\n", d->sha, slash ? slash + 1 : d->out);
  }
  if (t.oom || put_file (R->to_fd, shaf, t.p) < 0) {
    fail (d, "cannot write %s", shaf);
    goto out;
  }
  fsync (R->to_fd);
  d->st = ST_DONE;
  ret = 0;
out:
  if (s.fd >= 0)
    close (s.fd);
  free (t.p);
  free (part);
  free (info);
  free (shaf);
  free (outpath);
  qk_image_close (img);
  return ret;
}

/* ---- which disks ---- */

static void
plan_image (struct rescue *R, const char *path, const char *domain,
            const char *target, const char *type, const char *source)
{
  struct disk *d = new_disk (R);
  char *base = safe_name (target);
  char *dom = domain ? safe_name (domain) : NULL;
  struct qk_image *img;

  d->domain = xstrdup (domain);
  d->target = xstrdup (target);
  d->type = xstrdup (type);
  d->source = xstrdup (source);
  d->path = xstrdup (path);
  d->out = dom ? xasprintf ("%s/%s.raw", dom, base)
               : xasprintf ("%s.raw", base);
  if (!R->snapshots || (img = open_disk (R, path)) == NULL)
    goto out;
  for (size_t i = 0; i < qk_image_snapshot_count (img); i++) {
    const struct qk_snapshot *sn = qk_image_snapshot (img, i);
    char *sname = safe_name (sn->name);
    d = new_disk (R);
    d->domain = xstrdup (domain);
    d->target = xstrdup (target);
    d->type = xstrdup (type);
    d->source = xstrdup (source);
    d->path = xstrdup (path);
    d->snap = xstrdup (sn->name);
    d->out = dom ? xasprintf ("%s/%s@%s.raw", dom, base, sname)
                 : xasprintf ("%s@%s.raw", base, sname);
    free (sname);
  }
  qk_image_close (img);
out:
  free (base);
  free (dom);
}

static bool
wanted (const struct rescue *R, const char *name)
{
  if (R->ndomains == 0)
    return true;
  for (size_t i = 0; i < R->ndomains; i++)
    if (strcmp (R->domains[i], name) == 0)
      return true;
  return false;
}

static int
plan_domains (struct rescue *R)
{
  struct qk_meta_options mo = { .sysroot = R->sysroot,
                                .libvirt_root = R->libvirt_root };
  struct qk_meta_domains *l = qk_meta_list_domains (&mo, NULL, 0);

  if (l == NULL) {
    errx_ ("%s", qk_get_error ());
    return -1;
  }
  if (!R->o.quiet)
    for (size_t i = 0; i < qk_meta_domains_warning_count (l); i++)
      warnx_ ("%s", qk_meta_domains_warning (l, i));
  for (size_t k = 0; k < R->ndomains; k++) {
    bool found = false;
    for (size_t i = 0; i < qk_meta_domains_count (l); i++)
      if (strcmp (qk_meta_domains_get (l, i)->name, R->domains[k]) == 0)
        found = true;
    if (!found) {
      errx_ ("no domain '%s'", R->domains[k]);
      qk_meta_domains_free (l);
      return -1;
    }
  }
  for (size_t i = 0; i < qk_meta_domains_count (l); i++) {
    const struct qk_meta_host_domain *dom = qk_meta_domains_get (l, i);
    if (!wanted (R, dom->name))
      continue;
    for (size_t j = 0; j < qk_meta_domains_disk_count (l, i); j++) {
      const struct qk_meta_host_disk *k = qk_meta_domains_disk (l, i, j);
      const char *target = k->target ? k->target : "disk";
      struct disk *d;
      if (k->source == NULL)
        continue;                       /* an empty drive: nothing to save */
      if (k->path && (k->type == QK_META_DISK_FILE
                      || k->type == QK_META_DISK_BLOCK)) {
        plan_image (R, k->path, dom->name, target, k->type_name, k->source);
        continue;
      }
      d = new_disk (R);
      d->domain = xstrdup (dom->name);
      d->target = xstrdup (target);
      d->type = xstrdup (k->type_name);
      d->source = xstrdup (k->source);
      d->st = ST_SKIPPED;
      if (k->type == QK_META_DISK_NETWORK)
        d->reason = xasprintf ("network disk (%s): not on this host",
                               k->protocol ? k->protocol : "?");
      else if (k->type == QK_META_DISK_FILE || k->type == QK_META_DISK_BLOCK)
        d->reason = xstrdup ("its path does not resolve");
      else
        d->reason = xasprintf ("a %s disk: not exported",
                               k->type_name ? k->type_name : "?");
    }
  }
  qk_meta_domains_free (l);
  return 0;
}

/* ---- where to write ---- */

/* realpath of p, or of its parent when p does not exist yet. */
static char *
resolve (const char *p)
{
  char buf[PATH_MAX], *r = realpath (p, buf);
  const char *slash;

  if (r)
    return xstrdup (buf);
  if (errno != ENOENT)
    return NULL;
  slash = strrchr (p, '/');
  if (slash == NULL)
    return realpath (".", buf) ? xasprintf ("%s/%s", buf, p) : NULL;
  {
    char *dir = slash == p ? xstrdup ("/")
                           : xasprintf ("%.*s", (int) (slash - p), p);
    char *rd = resolve (dir);
    free (dir);
    if (rd == NULL)
      return NULL;
    r = xasprintf ("%s/%s", strcmp (rd, "/") ? rd : "", slash + 1);
    free (rd);
    return r;
  }
}

static bool
inside (const char *p, const char *root)
{
  size_t n = strlen (root);

  if (strcmp (root, "/") == 0)
    return true;
  return strncmp (p, root, n) == 0 && (p[n] == '/' || p[n] == '\0');
}

static int
check_to (struct rescue *R)
{
  const char *roots[2] = { R->sysroot, R->libvirt_root };
  char *to = resolve (R->to);

  if (to == NULL) {
    errx_ ("%s: %s", R->to, strerror (errno));
    return -1;
  }
  for (int i = 0; i < 2; i++) {
    char *rr;
    if (roots[i] == NULL)
      continue;
    rr = resolve (roots[i]);
    if (rr && inside (to, rr)) {
      errx_ ("--to %s is inside %s %s: refusing to write there", R->to,
             i ? "the libvirt root" : "the sysroot", roots[i]);
      free (rr);
      free (to);
      return -1;
    }
    free (rr);
  }
  free (to);
  if (mkdir (R->to, 0755) < 0 && errno != EEXIST) {
    errx_ ("mkdir %s: %s", R->to, strerror (errno));
    return -1;
  }
  R->to_fd = open (R->to, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (R->to_fd < 0) {
    errx_ ("%s: %s", R->to, strerror (errno));
    return -1;
  }
  return 0;
}

static int
check_space (struct rescue *R)
{
  struct statvfs sv;
  uint64_t need = 0, avail;
  const char *e = getenv ("QCOWKIT_RESCUE_FREE"); /* tests */

  for (size_t i = 0; i < R->n; i++)
    if (R->d[i].st == ST_PLANNED)
      need += R->d[i].estimate;
  if (fstatvfs (R->to_fd, &sv) < 0) {
    errx_ ("statvfs %s: %s", R->to, strerror (errno));
    return -1;
  }
  avail = (uint64_t) sv.f_bavail * sv.f_frsize;
  if (e && *e)
    avail = strtoull (e, NULL, 10);
  if (need > avail) {
    errx_ ("%s has %" PRIu64 " bytes free (%s), the export needs up to %"
           PRIu64 " (%s): refusing to start", R->to, avail, size_str (avail),
           need, size_str (need));
    return -1;
  }
  return 0;
}

/* ---- the manifest ---- */

static const char *
status_name (enum disk_status st)
{
  switch (st) {
  case ST_DONE: return "complete";
  case ST_EARLIER: return "complete-earlier";
  case ST_SKIPPED: return "skipped";
  case ST_FAILED: return "failed";
  default: return "planned";
  }
}

static void
json_manifest (struct rescue *R, FILE *f, int status)
{
  struct qk_json *j = qk_json_new (f, 4);

  qk_json_object_begin (j, NULL);
  qk_json_string (j, "sysroot", R->sysroot);
  qk_json_string (j, "libvirt-root", R->libvirt_root);
  qk_json_int (j, "exit-status", status);
  qk_json_array_begin (j, "disks");
  for (size_t i = 0; i < R->n; i++) {
    struct disk *d = &R->d[i];
    bool out = d->st == ST_DONE || d->st == ST_EARLIER;
    qk_json_object_begin (j, NULL);
    if (d->domain)
      qk_json_string (j, "domain", d->domain);
    if (d->target)
      qk_json_string (j, "target", d->target);
    if (d->type)
      qk_json_string (j, "type", d->type);
    if (d->source)
      qk_json_string (j, "source", d->source);
    if (d->path)
      qk_json_string (j, "path", d->path);
    if (d->snap)
      qk_json_string (j, "snapshot", d->snap);
    else
      qk_json_null (j, "snapshot");
    qk_json_string (j, "status", status_name (d->st));
    if (d->reason)
      qk_json_string (j, "reason", d->reason);
    qk_json_bool (j, "in-use", d->in_use);
    if (d->nchain) {
      qk_json_array_begin (j, "chain");
      for (size_t k = 0; k < d->nchain; k++) {
        struct member_check *c = &d->chain[k];
        qk_json_object_begin (j, NULL);
        qk_json_string (j, "filename", c->filename);
        qk_json_string (j, "format", c->format);
        if (c->checked) {
          qk_json_object_begin (j, "check");
          qk_json_uint (j, "check-errors", c->res.check_errors);
          qk_json_uint (j, "corruptions", c->res.corruptions);
          qk_json_uint (j, "leaks", c->res.leaks);
          qk_json_object_begin (j, "problems");
          for (size_t p = 0; p < c->n; p++)
            qk_json_uint (j, c->names[p], c->counts[p]);
          qk_json_object_end (j);
          qk_json_object_end (j);
        }
        qk_json_object_end (j);
      }
      qk_json_array_end (j);
    }
    if (d->out && d->path)
      qk_json_string (j, "output", d->out);
    if (d->path && d->st != ST_SKIPPED)
      qk_json_uint (j, "virtual-size", d->size);
    if (out) {
      qk_json_uint (j, "bytes-written", d->written);
      qk_json_string (j, "sha256", d->sha);
      qk_json_array_begin (j, "unreadable");
      for (size_t k = 0; k < d->nr; k++) {
        qk_json_object_begin (j, NULL);
        qk_json_uint (j, "start", d->r[k].start);
        qk_json_uint (j, "length", d->r[k].length);
        qk_json_string (j, "reason", d->r[k].why);
        qk_json_object_end (j);
      }
      qk_json_array_end (j);
    }
    qk_json_object_end (j);
  }
  qk_json_array_end (j);
  qk_json_object_end (j);
  fputc ('\n', f);
  qk_json_free (j);
}

static void
text_manifest (struct rescue *R, FILE *f)
{
  for (size_t i = 0; i < R->n; i++) {
    struct disk *d = &R->d[i];
    fprintf (f, "%s%s%s%s%s: %s", d->domain ? printable (d->domain) : "",
             d->domain ? " " : "", printable (d->target ? d->target : "?"),
             d->snap ? " snapshot " : "", d->snap ? printable (d->snap) : "",
             status_name (d->st));
    if (d->reason)
      fprintf (f, " (%s)", printable (d->reason));
    if (d->in_use)
      fprintf (f, " [in use]");
    fputc ('\n', f);
    if (d->source)
      fprintf (f, "  source: %s%s%s\n", printable (d->source),
               d->type ? " " : "", d->type ? printable (d->type) : "");
    for (size_t k = 0; k < d->nchain; k++) {
      struct member_check *c = &d->chain[k];
      fprintf (f, "  chain[%zu]: %s (%s)", k, printable (c->filename),
               c->format);
      if (c->checked) {
        fprintf (f, ": %" PRIu64 " corruptions, %" PRIu64 " leaks, %"
                 PRIu64 " check errors", c->res.corruptions, c->res.leaks,
                 c->res.check_errors);
        for (size_t p = 0; p < c->n; p++)
          fprintf (f, "%s%s %" PRIu64, p ? ", " : "; ", c->names[p],
                   c->counts[p]);
      }
      fputc ('\n', f);
    }
    if (d->st == ST_DONE || d->st == ST_EARLIER) {
      fprintf (f, "  output: %s\n  virtual size: %" PRIu64 "\n"
               "  bytes written: %" PRIu64 "\n  sha256: %s\n",
               printable (d->out), d->size, d->written, d->sha);
      for (size_t k = 0; k < d->nr; k++)
        fprintf (f, "  unreadable: %" PRIu64 "+%" PRIu64 ": %s\n",
                 d->r[k].start, d->r[k].length, printable (d->r[k].why));
    }
  }
}

static int
write_manifests (struct rescue *R, int status)
{
  char *buf = NULL;
  size_t len = 0;
  FILE *f;
  int r = 0;

  for (int k = 0; k < 2; k++) {
    f = open_memstream (&buf, &len);
    if (f == NULL)
      return -1;
    if (k == 0)
      json_manifest (R, f, status);
    else
      text_manifest (R, f);
    fclose (f);
    if (put_file (R->to_fd, k ? "MANIFEST.txt" : "manifest.json", buf) < 0)
      r = -1;
    if ((k == 0) == (R->o.output == OUT_JSON))
      fputs (buf, stdout);
    free (buf);
    buf = NULL;
  }
  return r;
}

static void
free_disks (struct rescue *R)
{
  for (size_t i = 0; i < R->n; i++) {
    struct disk *d = &R->d[i];
    free (d->domain);
    free (d->target);
    free (d->type);
    free (d->source);
    free (d->path);
    free (d->snap);
    free (d->out);
    free (d->reason);
    for (size_t k = 0; k < d->nr; k++)
      free (d->r[k].why);
    free (d->r);
    for (size_t k = 0; k < d->nchain; k++) {
      struct member_check *c = &d->chain[k];
      free (c->filename);
      free (c->format);
      for (size_t p = 0; p < c->n; p++)
        free (c->names[p]);
      free (c->names);
      free (c->counts);
    }
    free (d->chain);
  }
  free (R->d);
}

static int
add_str (void *data, const char *opt, const char *value)
{
  struct { const char ***v; size_t *n; } *a = data;
  size_t cap = *a->n;

  (void) opt;
  *a->v = xgrow (*a->v, &cap, *a->n + 1, sizeof **a->v);
  (*a->v)[(*a->n)++] = value;
  return 0;
}

static const char help[] =
  "Usage: qcowkit rescue [--sysroot DIR|--libvirt-root DIR] [--domain D ...]\n"
  "                      [--image FILE ...] [--snapshots] [-U|--force-share]\n"
  "                      [--output=human|json] --to DIR\n"
  "Export the guest data of every domain's disks (or of each --image) as\n"
  "raw files with holes under DIR, with a manifest (manifest.json,\n"
  "MANIFEST.txt). Clusters that cannot be read are left as holes and\n"
  "reported; a rerun skips disks already complete.\n"
  "--snapshots also exports each internal snapshot.\n"
  "-U exports images a running QEMU holds (else they are skipped).\n"
  "Exit status: a bitmask: 1 a disk failed, 4 unreadable ranges,\n"
  "8 a disk not exported; 2 usage.\n";

int
cmd_rescue (int argc, char **argv)
{
  struct rescue R = { .o = { .progress = -1 }, .to_fd = -1 };
  struct { const char ***v; size_t *n; } dl = { &R.domains, &R.ndomains },
                                          il = { &R.images, &R.nimages };
  const char *operands[1] = { NULL };
  const struct opt opts[] = {
    { "--sysroot", "a directory", .str = &R.sysroot },
    { "--libvirt-root", "a directory", .str = &R.libvirt_root },
    { "--domain", "a domain name", .fn = add_str, .data = &dl },
    { "--image", "a file", .fn = add_str, .data = &il },
    { "--snapshots", NULL, .on = &R.snapshots },
    { "-U|--force-share", NULL, .on = &R.force_share },
    { "--to", "a directory", .str = &R.to },
    { NULL }
  };
  const struct opt_cmd cmd = { "rescue", help, opts, &R.o, operands, 0, 0,
                               NULL, 0 };
  int status = 0, planned = 0;
  size_t num = 0;

  if (!opt_parse (&cmd, argc, argv, &status))
    return status;
  if (R.to == NULL)
    return usage_error ("rescue", "--to DIR is required");
  if (R.sysroot && R.libvirt_root)
    return usage_error ("rescue", "--sysroot and --libvirt-root exclude each "
                        "other");
  if (R.nimages && (R.sysroot || R.libvirt_root || R.ndomains))
    return usage_error ("rescue", "--image excludes --sysroot, "
                        "--libvirt-root and --domain");
  if (R.sysroot) {
    if ((R.root = qk_root_new (R.sysroot, QK_ROOT_IN)) == NULL) {
      errx_ ("%s", qk_get_error ());
      return EXIT_ERR;
    }
    R.have_root = true;
  }
  if (check_to (&R) < 0)
    goto out_err;
  if (R.nimages) {
    for (size_t i = 0; i < R.nimages; i++) {
      const char *b = strrchr (R.images[i], '/');
      plan_image (&R, R.images[i], NULL, b ? b + 1 : R.images[i], "file",
                  R.images[i]);
    }
  }
  else if (plan_domains (&R) < 0)
    goto out_err;
  for (size_t i = 0; i < R.n; i++) {
    plan_disk (&R, &R.d[i]);
    planned += R.d[i].st == ST_PLANNED;
  }
  if (check_space (&R) < 0)
    goto out_err;
  for (size_t i = 0; i < R.n; i++)
    if (R.d[i].st == ST_PLANNED)
      export_disk (&R, &R.d[i], ++num, (size_t) planned);
  status = 0;
  for (size_t i = 0; i < R.n; i++) {
    struct disk *d = &R.d[i];
    if (d->st == ST_FAILED) {
      status |= RESCUE_FAILED;
      errx_ ("%s: %s", d->out ? d->out : "?", d->reason ? d->reason : "failed");
    }
    if (d->st == ST_SKIPPED)
      status |= RESCUE_SKIPPED;
    if ((d->st == ST_DONE || d->st == ST_EARLIER) && d->nr)
      status |= RESCUE_UNREADABLE;
  }
  if (write_manifests (&R, status) < 0)
    status |= RESCUE_FAILED;
  goto out;
out_err:
  status = EXIT_ERR;
out:
  free_disks (&R);
  free (R.domains);
  free (R.images);
  if (R.to_fd >= 0)
    close (R.to_fd);
  if (R.have_root)
    qk_root_free (R.root);
  return status;
}
