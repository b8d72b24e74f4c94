/* qcowkit export: the guest-visible contents as a raw file, byte-identical
 * to `qemu-img convert -O raw`, with holes where the guest reads zeros.
 * Works where QEMU refuses (dirty or corrupt bit, unknown autoclear bits,
 * damaged refcounts): reading never needs refcounts. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tool.h"
#include "util/checked.h"

#define CHUNK (4U << 20)
#define ZERO_GRAIN 4096  /* like qemu-img convert's default -S 4k */

struct export_ctx {
  struct qk_image *img;
  int fd;
  bool sparse;           /* holes may be left (regular file, fresh) */
  bool stream;           /* not seekable (a pipe): write in order */
  uint8_t *buf;
  uint64_t done, total;
  struct progress prog;
  const char *out;
};

static bool
all_zero (const uint8_t *p, size_t n)
{
  /* Compare word-wise; p is at least 8-byte aligned in our buffer. */
  const uint64_t *w = (const uint64_t *) p;
  size_t i;
  for (i = 0; i < n / 8; i++)
    if (w[i])
      return false;
  for (i *= 8; i < n; i++)
    if (p[i])
      return false;
  return true;
}

/* Extents come in guest order and every byte is written when holes are not
 * allowed, so a stream (a pipe) gets the bytes in order with write(2). */
static int
write_all (struct export_ctx *c, const uint8_t *p, size_t n, uint64_t off)
{
  int fd = c->fd;
  const char *out = c->out;

  while (n) {
    ssize_t r = c->stream ? write (fd, p, n) : pwrite (fd, p, n, (off_t) off);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      errx_ ("write %s: %s", out, strerror (errno));
      return -1;
    }
    p += r;
    n -= r;
    off += r;
  }
  return 0;
}

/* Write buf, skipping all-zero grains when holes are allowed. */
static int
write_sparse (struct export_ctx *c, const uint8_t *p, size_t n, uint64_t off)
{
  size_t i = 0;

  if (!c->sparse)
    return write_all (c, p, n, off);
  while (i < n) {
    size_t g = MIN ((size_t) ZERO_GRAIN - (size_t) ((off + i) % ZERO_GRAIN),
                    n - i);
    size_t j = i;
    bool z = all_zero (p + i, g);
    /* Extend the run of grains with the same zeroness. */
    while (j < n) {
      size_t gl = MIN ((size_t) ZERO_GRAIN - (size_t) ((off + j) % ZERO_GRAIN),
                       n - j);
      if (all_zero (p + j, gl) != z)
        break;
      j += gl;
    }
    if (!z && write_all (c, p + i, j - i, off + i) < 0)
      return -1;
    i = j;
  }
  return 0;
}

static int
zero_range (struct export_ctx *c, uint64_t off, uint64_t len)
{
  if (c->sparse)
    return 0;
  memset (c->buf, 0, MIN ((uint64_t) CHUNK, len));
  while (len) {
    size_t n = MIN ((uint64_t) CHUNK, len);
    if (write_all (c, c->buf, n, off) < 0)
      return -1;
    off += n;
    len -= n;
  }
  return 0;
}

static int
export_extent (void *opaque, const struct qk_extent *e)
{
  struct export_ctx *c = opaque;
  uint64_t off = e->start, end = e->start + e->length;

  if (e->zero) {
    if (zero_range (c, off, e->length) < 0)
      return -1;
    c->done += e->length;
    progress_update (&c->prog, c->done);
    return 0;
  }
  while (off < end) {
    size_t n = MIN ((uint64_t) CHUNK, end - off);
    if (qk_image_read (c->img, c->buf, n, off) < 0) {
      errx_ ("%s", qk_get_error ());
      return -1;
    }
    if (write_sparse (c, c->buf, n, off) < 0)
      return -1;
    off += n;
    c->done += n;
    progress_update (&c->prog, c->done);
  }
  return 0;
}

/* Exporting a snapshot: no block status through a snapshot's L1, so read
 * everything and let the zero detection make the holes. */
static int
export_all (struct export_ctx *c, uint64_t size)
{
  struct qk_extent e = { .start = 0, .length = size, .data = true };
  return export_extent (c, &e);
}

static const char help[] =
  "Usage: qcowkit export [--snapshot NAME] [--force] [--progress|--quiet] "
  "[--root DIR] IMAGE OUTPUT\n"
  "Write the guest-visible contents of IMAGE (through its backing chain)\n"
  "to OUTPUT as a raw file, with holes where the guest reads zeros.\n"
  "--snapshot exports an internal snapshot (name or ID).\n"
  "--force exports even with unknown incompatible feature bits.\n";

int
cmd_export (int argc, char **argv)
{
  struct common_opts o = { .progress = -1 };
  struct export_ctx c = { .fd = -1 };
  const char *snap = NULL, *path = NULL, *out = NULL;
  struct stat st;
  uint64_t size;
  int r, ret = EXIT_ERR;

  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp (a, "--help") == 0 || strcmp (a, "-h") == 0) {
      fputs (help, stdout);
      return EXIT_OK;
    }
    if ((r = common_option (&o, argc, argv, &i, "export")) < 0)
      return EXIT_USAGE;
    if (r)
      continue;
    if (strcmp (a, "--snapshot") == 0 || strcmp (a, "-l") == 0) {
      if (i + 1 >= argc)
        return usage_error ("export", "%s needs a snapshot name", a);
      snap = argv[++i];
    }
    else if (strncmp (a, "--snapshot=", 11) == 0)
      snap = a + 11;
    else if (strcmp (a, "--force") == 0)
      o.force = true;
    else if (a[0] == '-' && a[1])
      return usage_error ("export", "unknown option '%s'", a);
    else if (!path)
      path = a;
    else if (!out)
      out = a;
    else
      return usage_error ("export", "too many arguments");
  }
  if (path == NULL || out == NULL)
    return usage_error ("export", "need IMAGE and OUTPUT");

  c.img = open_image (path, &o, o.force ? QK_OPEN_FORCE : 0, true);
  if (c.img == NULL)
    return EXIT_ERR;
  {
    const char *why = qk_image_unreadable_reason (c.img);
    if (why) {
      errx_ ("%s: cannot export: %s", path, why);
      goto out;
    }
  }
  if (snap && qk_image_select_snapshot (c.img, snap) < 0) {
    errx_ ("%s", qk_get_error ());
    goto out;
  }
  size = qk_image_virtual_size (c.img);
  if (snap) {
    for (size_t i = 0; i < qk_image_snapshot_count (c.img); i++) {
      const struct qk_snapshot *s = qk_image_snapshot (c.img, i);
      if ((strcmp (s->id, snap) == 0 || strcmp (s->name, snap) == 0)
          && s->has_disk_size) {
        size = s->disk_size;
        break;
      }
    }
  }

  c.out = out;
  c.fd = open (out, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (c.fd < 0) {
    errx_ ("open %s: %s", out, strerror (errno));
    goto out;
  }
  if (fstat (c.fd, &st) < 0) {
    errx_ ("fstat %s: %s", out, strerror (errno));
    goto out;
  }
  if (S_ISREG (st.st_mode)) {
    if (ftruncate (c.fd, 0) < 0 || ftruncate (c.fd, (off_t) size) < 0) {
      errx_ ("truncate %s: %s", out, strerror (errno));
      goto out;
    }
    c.sparse = true;
  }
  else if (lseek (c.fd, 0, SEEK_CUR) < 0 && errno == ESPIPE)
    c.stream = true;
  c.buf = aligned_alloc (4096, CHUNK);
  if (c.buf == NULL) {
    errx_ ("out of memory");
    goto out;
  }
  c.total = size;
  progress_start (&c.prog, &o, size);
  if (snap)
    r = export_all (&c, size);
  else {
    r = qk_image_map (c.img, 0, size, export_extent, &c);
    if (r < 0 && qk_get_error ())
      errx_ ("%s", qk_get_error ());
  }
  progress_end (&c.prog);
  if (r == 0 && fsync (c.fd) < 0 && errno != EINVAL) {
    errx_ ("fsync %s: %s", out, strerror (errno));
    r = -1;
  }
  if (r == 0)
    ret = EXIT_OK;
out:
  if (c.fd >= 0 && close (c.fd) < 0 && ret == EXIT_OK) {
    errx_ ("close %s: %s", out, strerror (errno));
    ret = EXIT_ERR;
  }
  free (c.buf);
  qk_image_close (c.img);
  return ret;
}
