/* The export engine: the guest-visible contents of an image as a raw
 * file, byte-identical to `qemu-img convert -O raw`, with holes where the
 * guest reads zeros (but for zeros inside uncompressed data clusters: see
 * copy offload). Reading never needs refcounts, so it works where QEMU
 * refuses (dirty or corrupt bit, unknown autoclear bits, damaged
 * refcounts). Used by `qcowkit export` (tools/cmd-export.c) and, in
 * salvage mode with a sha256 of the output, by `qcowkit rescue`
 * (tools/cmd-rescue.c). */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "export-core.h"
#include "bytes.h"
#include "util/sha256.h"   /* self-contained: compiled into the tool */

/* What a worker reads (or decompresses) and writes at a time: small
 * enough that its buffer stays in the core's L2 cache between filling it
 * and copying it into the page cache. With 4 MiB chunks a compressed
 * export spent 2-3x the system time (the copy read the buffer back from
 * memory). */
#define CHUNK (512U << 10)
#define COPY_CHUNK (4U << 20)  /* a copy_file_range call, for progress */
#define SEGMENT (32ULL << 20)  /* unit of work handed to a worker thread */
#define ZERO_GRAIN 4096        /* like qemu-img convert's default -S 4k */
#define MAX_WORKERS 4
#define MAX_SOURCES 16         /* files data is copied from with copy_file_range */

/* A file holding data clusters, opened again by the name the library
 * reported, for copy_file_range: fd -1 when it may not be used. */
struct source_file {
  char *name;
  int fd;
};

/* What the workers share. Each worker has its own image handle (handles
 * are not thread-safe, and are cheap), its own buffer, and takes the next
 * SEGMENT of the guest disk until none is left; writes go to their own
 * offsets with pwrite, so no ordering is needed except for a stream. */
struct export_job {
  const char *path, *snap, *out;
  const struct common_opts *o;
  unsigned open_flags;
  struct export_spec *spec;
  int fd;
  bool sparse;           /* holes may be left (a regular file, truncated) */
  bool stream;           /* not seekable (a pipe): one worker, in order */
  bool no_flush;         /* --no-flush: no fsync at the end */
  struct qk_image *img;  /* the image as opened first (worker 0's) */
  _Atomic bool offload;  /* copy data clusters with copy_file_range */
  pthread_mutex_t src_lock;
  struct source_file src[MAX_SOURCES];
  size_t nsrc;
  uint64_t size;
  uint64_t nsegs;
  _Atomic uint64_t next_seg;
  _Atomic int failed;
  pthread_mutex_t lock;  /* progress */
  uint64_t done;
  struct progress prog;
  _Atomic uint64_t written;  /* bytes written, holes not counted */
  bool hash;             /* one worker, in order: sha256 of every byte */
  struct qk_sha256 sha;
  uint64_t granule;      /* salvage: the unit retried alone (a cluster) */
};

struct export_worker {
  struct export_job *job;
  struct qk_image *img;
  uint8_t *buf;
  int ret;
  bool cb_failed;        /* export_extent failed (not the mapping) */
  uint64_t pos;          /* guest offset up to which the segment is done */
  pthread_t tid;
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

/* A stream (a pipe) is written by one worker in guest order with write(2),
 * every byte included. */
static int
write_all (struct export_job *j, const uint8_t *p, size_t n, uint64_t off)
{
  while (n) {
    ssize_t r = j->stream ? write (j->fd, p, n)
                          : pwrite (j->fd, p, n, (off_t) off);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      errx_ ("write %s: %s", j->out, strerror (errno));
      return -1;
    }
    p += r;
    n -= r;
    off += r;
    j->written += (uint64_t) r;
  }
  return 0;
}

/* Write buf, skipping all-zero grains when holes are allowed. */
static int
write_sparse (struct export_job *j, const uint8_t *p, size_t n, uint64_t off)
{
  size_t i = 0;

  if (!j->sparse)
    return write_all (j, p, n, off);
  while (i < n) {
    size_t g = MIN ((size_t) ZERO_GRAIN - (size_t) ((off + i) % ZERO_GRAIN),
                    n - i);
    size_t k = i;
    bool z = all_zero (p + i, g);
    /* Extend the run of grains with the same zeroness. */
    while (k < n) {
      size_t gl = MIN ((size_t) ZERO_GRAIN - (size_t) ((off + k) % ZERO_GRAIN),
                       n - k);
      if (all_zero (p + k, gl) != z)
        break;
      k += gl;
    }
    if (!z && write_all (j, p + i, k - i, off + i) < 0)
      return -1;
    i = k;
  }
  return 0;
}

static void
advance (struct export_job *j, uint64_t n)
{
  pthread_mutex_lock (&j->lock);
  j->done += n;
  progress_update (&j->prog, j->done);
  pthread_mutex_unlock (&j->lock);
}

/* ---- copy offload ----
 * A data cluster that is stored as is (not compressed; encrypted images
 * are refused before any of this) is the same bytes in its file as in the
 * guest, so the kernel can copy it from file to file: copy_file_range(2)
 * shares the extents on file systems that can (reflink: btrfs, XFS) and
 * otherwise copies in the kernel, without the bytes passing through us.
 * Only into a regular file (j->sparse). Where it stops short (the end of
 * the source file) or cannot copy, the rest of the extent is read and
 * written as before. The bytes are the same; the holes differ in one way:
 * all-zero blocks inside such a cluster are copied, not skipped (as with
 * qemu-img convert -C, which refuses -S). QCOWKIT_COPY_RANGE=0 turns it
 * off. */

#if defined(__GLIBC__) \
    && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 27))
static ssize_t
copy_range (int in, uint64_t in_off, int out, uint64_t out_off, size_t n)
{
  off64_t i = (off64_t) in_off, o = (off64_t) out_off;
  return copy_file_range (in, &i, out, &o, n, 0);
}
#else
static ssize_t
copy_range (int in, uint64_t in_off, int out, uint64_t out_off, size_t n)
{
  (void) in, (void) in_off, (void) out, (void) out_off, (void) n;
  errno = ENOSYS;
  return -1;
}
#endif

/* Copy offload is on unless QCOWKIT_COPY_RANGE=0, and never for an
 * encrypted image anywhere in the chain (its clusters are ciphertext; such
 * images are refused before this anyway). */
static bool
copy_offload_allowed (struct qk_image *img)
{
  const char *e = getenv ("QCOWKIT_COPY_RANGE");

  if (e && strcmp (e, "0") == 0)
    return false;
  for (struct qk_image *i = img; i; i = qk_image_backing (i)) {
    const struct qk_header *h = qk_image_header (i);
    if (h && h->crypt_method)
      return false;
  }
  return true;
}

/* May the file the library calls name be opened again by that name? It
 * must be one the image reads (the library reported it) and, for an image
 * of the chain, still the size the library found. With --root, backing and
 * data files were opened beneath the root through the library's own
 * descriptors; opening them again by name would not be confined, so only
 * the image named on the command line is reopened. */
static int
open_source_file (struct export_job *j, const char *name)
{
  struct stat st;
  int fd;
  bool known = false;

  for (struct qk_image *i = j->img; i; i = qk_image_backing (i)) {
    if (strcmp (qk_image_filename (i), name) != 0)
      continue;
    if (j->o->root && i != j->img)
      return -1;
    known = true;
    break;
  }
  if (!known && j->o->root)
    return -1;
  fd = open (name, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0)
    return -1;
  if (fstat (fd, &st) < 0 || !S_ISREG (st.st_mode)) {
    close (fd);
    return -1;
  }
  for (struct qk_image *i = j->img; i; i = qk_image_backing (i))
    if (strcmp (qk_image_filename (i), name) == 0
        && (uint64_t) st.st_size != qk_image_file_size (i)) {
      close (fd);
      return -1;
    }
  return fd;
}

/* The descriptor to copy data clusters of file name from, or -1. */
static int
source_fd (struct export_job *j, const char *name)
{
  int fd = -1;

  pthread_mutex_lock (&j->src_lock);
  for (size_t k = 0; k < j->nsrc; k++)
    if (strcmp (j->src[k].name, name) == 0) {
      fd = j->src[k].fd;
      goto out;
    }
  if (j->nsrc < MAX_SOURCES) {
    char *copy = strdup (name);
    if (copy) {
      fd = open_source_file (j, name);
      j->src[j->nsrc].name = copy;
      j->src[j->nsrc].fd = fd;
      j->nsrc++;
    }
  }
out:
  pthread_mutex_unlock (&j->src_lock);
  return fd;
}

/* Copy up to len bytes of e (a data extent) with copy_file_range; returns
 * how many were copied: the rest, if any, goes through qk_image_read (the
 * end of the source file, or copy_file_range not possible here). */
static uint64_t
offload_extent (struct export_job *j, const struct qk_extent *e)
{
  uint64_t done = 0;
  int fd = source_fd (j, e->filename);

  if (fd < 0)
    return 0;
  while (done < e->length && !j->failed) {
    size_t n = MIN ((uint64_t) COPY_CHUNK, e->length - done);
    ssize_t r = copy_range (fd, e->offset + done, j->fd, e->start + done, n);
    if (r > 0) {
      done += (uint64_t) r;
      j->written += (uint64_t) r;
      advance (j, (uint64_t) r);
      continue;
    }
    if (r < 0 && errno == EINTR)
      continue;
    /* Not between these files (EXDEV: older kernels, other file system
     * types), not by this kernel or file system: for good. Any other
     * error: the reads and writes will say what it is. */
    if (r < 0 && errno != EIO && errno != ENOSPC && errno != EDQUOT
        && errno != EFBIG)
      j->offload = false;
    break;
  }
  return done;
}

static int
zero_range (struct export_worker *w, uint64_t off, uint64_t len)
{
  struct export_job *j = w->job;

  if (j->hash) {
    memset (w->buf, 0, MIN ((uint64_t) CHUNK, len));
    for (uint64_t l = len; l;) {
      size_t n = MIN ((uint64_t) CHUNK, l);
      qk_sha256_update (&j->sha, w->buf, n);
      l -= n;
    }
  }
  if (!j->sparse) {
    memset (w->buf, 0, MIN ((uint64_t) CHUNK, len));
    for (uint64_t o = off, l = len; l;) {
      size_t n = MIN ((uint64_t) CHUNK, l);
      if (write_all (j, w->buf, n, o) < 0)
        return -1;
      o += n;
      l -= n;
    }
  }
  advance (j, len);
  return 0;
}

/* Salvage: read [off, off + n) into buf a granule (a cluster) at a time;
 * what cannot be read is zeros and reported. */
static void
read_salvage (struct export_worker *w, uint8_t *buf, size_t n, uint64_t off)
{
  struct export_job *j = w->job;
  size_t i = 0;

  while (i < n) {
    size_t g = MIN (j->granule - (off + i) % j->granule, n - i);
    if (qk_image_read (w->img, buf + i, g, off + i) < 0) {
      memset (buf + i, 0, g);
      if (j->spec->unreadable)
        j->spec->unreadable (j->spec->opaque, off + i, g, qk_get_error ());
    }
    i += g;
  }
}

static int
export_data (struct export_worker *w, const struct qk_extent *e)
{
  struct export_job *j = w->job;
  uint64_t off = e->start, end = e->start + e->length;

  if (j->failed)
    return -1;
  if (e->zero)
    return zero_range (w, off, e->length);
  if (j->offload && e->data && !e->compressed && e->has_offset && e->filename)
    off += offload_extent (j, e);
  while (off < end) {
    size_t n = MIN ((uint64_t) CHUNK, end - off);
    if (qk_image_read (w->img, w->buf, n, off) < 0) {
      if (!j->spec->salvage) {
        errx_ ("%s", qk_get_error ());
        return -1;
      }
      read_salvage (w, w->buf, n, off);
    }
    if (j->hash)
      qk_sha256_update (&j->sha, w->buf, n);
    if (write_sparse (j, w->buf, n, off) < 0)
      return -1;
    off += n;
    advance (j, n);
  }
  return 0;
}

/* An extent, less the ranges known to be unreadable (holes, unread). */
static int
export_extent (void *opaque, const struct qk_extent *e)
{
  struct export_worker *w = opaque;
  struct export_job *j = w->job;
  const struct export_spec *s = j->spec;
  uint64_t off = e->start, end = e->start + e->length;
  int r = 0;

  for (size_t k = 0; k < s->nholes && off < end && r == 0; k++) {
    const struct export_range *h = &s->holes[k];
    uint64_t hend = h->start + h->length;
    if (hend <= off || h->start >= end)
      continue;
    if (h->start > off) {
      struct qk_extent p = *e;
      p.start = off;
      p.length = h->start - off;
      if (p.has_offset)
        p.offset = e->offset + (off - e->start);
      r = export_data (w, &p);
      off = h->start;
    }
    if (r == 0) {
      r = zero_range (w, off, MIN (hend, end) - off);
      off = MIN (hend, end);
    }
  }
  if (r == 0 && off < end) {
    struct qk_extent p = *e;
    p.start = off;
    p.length = end - off;
    if (p.has_offset)
      p.offset = e->offset + (off - e->start);
    r = export_data (w, &p);
  }
  if (r < 0)
    w->cb_failed = true;
  else
    w->pos = end;
  return r;
}

static void *
worker_main (void *arg)
{
  struct export_worker *w = arg;
  struct export_job *j = w->job;

  for (;;) {
    uint64_t seg = atomic_fetch_add (&j->next_seg, 1);
    uint64_t start = seg * SEGMENT, len;
    int r;

    if (seg >= j->nsegs || j->failed)
      break;
    len = MIN (SEGMENT, j->size - start);
    w->pos = start;
    w->cb_failed = false;
    if (j->snap) {
      /* No block status through a snapshot's L1: read everything and let
       * the zero detection make the holes. */
      struct qk_extent e = { .start = start, .length = len, .data = true };
      r = export_extent (w, &e);
    }
    else {
      r = qk_image_map (w->img, start, len, export_extent, w);
      if (r < 0 && !w->cb_failed && j->spec->salvage) {
        /* The mapping stopped at a damaged table: read the rest of the
         * segment as data (what cannot be read is reported there). */
        struct qk_extent e = { .start = w->pos, .length = start + len - w->pos,
                               .data = true };
        r = export_extent (w, &e);
      }
      else if (r < 0 && qk_get_errno ())
        errx_ ("%s", qk_get_error ());
    }
    if (r) {
      j->failed = 1;
      w->ret = -1;
      break;
    }
  }
  return NULL;
}

/* Refuse to write over the image itself or any file it reads from. */
int
export_output_is_input (struct qk_image *img, const char *out)
{
  struct stat so, si;

  if (stat (out, &so) < 0)
    return 0;
  for (struct qk_image *i = img; i; i = qk_image_backing (i)) {
    const char *df = qk_image_data_file_name (i);
    if (stat (qk_image_filename (i), &si) == 0 && si.st_dev == so.st_dev
        && si.st_ino == so.st_ino) {
      errx_ ("%s is %s: refusing to export over an image being read", out,
             qk_image_filename (i));
      return -1;
    }
    if (df) {
      char p[4096];
      const char *f = qk_image_filename (i), *slash = strrchr (f, '/');
      if (df[0] != '/' && slash)
        snprintf (p, sizeof p, "%.*s%s", (int) (slash - f + 1), f, df);
      else
        snprintf (p, sizeof p, "%s", df);
      if (stat (p, &si) == 0 && si.st_dev == so.st_dev
          && si.st_ino == so.st_ino) {
        errx_ ("%s is the data file of %s: refusing to export over it", out,
               f);
        return -1;
      }
    }
  }
  return 0;
}

/* The size a snapshot is exported at: looked up as qk_image_select_snapshot
 * does (ID first, then name). */
uint64_t
export_snapshot_size (struct qk_image *img, const char *snap)
{
  for (int by_name = 0; by_name < 2; by_name++)
    for (size_t i = 0; i < qk_image_snapshot_count (img); i++) {
      const struct qk_snapshot *s = qk_image_snapshot (img, i);
      if (strcmp (by_name ? s->name : s->id, snap) == 0)
        return s->has_disk_size ? s->disk_size : qk_image_virtual_size (img);
    }
  return qk_image_virtual_size (img);
}

static unsigned
worker_count (const struct export_job *j)
{
  long n = sysconf (_SC_NPROCESSORS_ONLN);
  const char *e = getenv ("QCOWKIT_THREADS");

  if (e && atoi (e) > 0)
    n = atoi (e);
  if (j->stream || j->hash || n < 1)
    n = 1;
  if (n > MAX_WORKERS)
    n = MAX_WORKERS;
  if ((uint64_t) n > j->nsegs)
    n = j->nsegs ? j->nsegs : 1;
  return n;
}

/* The smallest cluster of the chain: what salvage retries alone. */
static uint64_t
salvage_granule (struct qk_image *img)
{
  uint64_t g = 0;

  for (struct qk_image *i = img; i; i = qk_image_backing (i)) {
    const struct qk_header *h = qk_image_header (i);
    if (h && h->cluster_size && (g == 0 || h->cluster_size < g))
      g = h->cluster_size;
  }
  return g ? MIN (g, (uint64_t) CHUNK) : ZERO_GRAIN;
}

int
export_run (struct export_spec *s)
{
  struct export_job j = { .fd = s->fd, .lock = PTHREAD_MUTEX_INITIALIZER,
                          .src_lock = PTHREAD_MUTEX_INITIALIZER };
  struct export_worker w[MAX_WORKERS];
  struct stat st;
  unsigned nw = 0;
  int r = -1;

  memset (w, 0, sizeof w);
  j.path = s->path;
  j.snap = s->snap;
  j.out = s->out;
  j.o = s->o;
  j.open_flags = s->open_flags;
  j.spec = s;
  j.img = s->img;
  j.size = s->size;
  j.no_flush = s->no_flush;
  j.hash = s->hash;
  j.granule = salvage_granule (s->img);
  if (j.hash)
    qk_sha256_init (&j.sha);

  if (fstat (j.fd, &st) < 0) {
    errx_ ("fstat %s: %s", j.out, strerror (errno));
    goto out;
  }
  if (S_ISREG (st.st_mode)) {
    /* An existing file is emptied first (holes must read as zeros). A new
     * one is not: ext4 takes a truncate to 0 as replace-via-truncate and
     * forces the data out early (auto_da_alloc), 2-3x slower. */
    if ((st.st_size > 0 && ftruncate (j.fd, 0) < 0)
        || ftruncate (j.fd, (off_t) j.size) < 0) {
      errx_ ("truncate %s: %s", j.out, strerror (errno));
      goto out;
    }
    j.sparse = true;
    /* Hashing needs every byte to pass through here. */
    j.offload = !j.hash && copy_offload_allowed (j.img);
  }
  else if (lseek (j.fd, 0, SEEK_CUR) < 0 && errno == ESPIPE)
    j.stream = true;

  j.nsegs = DIV_ROUND_UP (j.size, SEGMENT);
  nw = worker_count (&j);
  for (unsigned i = 0; i < nw; i++) {
    w[i].job = &j;
    /* worker 0 uses the handle already open; the others open their own */
    w[i].img = i == 0 ? j.img : open_image (j.path, j.o, j.open_flags, false);
    w[i].buf = aligned_alloc (4096, CHUNK);
    if (w[i].img == NULL || w[i].buf == NULL
        || (i && j.snap && qk_image_select_snapshot (w[i].img, j.snap) < 0)) {
      errx_ ("cannot set up export worker %u: %s", i,
             w[i].buf ? qk_get_error () : "out of memory");
      goto out;
    }
  }
  progress_start (&j.prog, j.o, j.size);
  for (unsigned i = 1; i < nw; i++)
    if (pthread_create (&w[i].tid, NULL, worker_main, &w[i]) != 0) {
      errx_ ("pthread_create failed");
      j.failed = 1;
      nw = i;
      break;
    }
  worker_main (&w[0]);
  for (unsigned i = 1; i < nw; i++)
    pthread_join (w[i].tid, NULL);
  progress_end (&j.prog);
  r = j.failed ? -1 : 0;
  if (r == 0 && !j.no_flush && fsync (j.fd) < 0 && errno != EINVAL) {
    errx_ ("fsync %s: %s", j.out, strerror (errno));
    r = -1;
  }
  if (r == 0 && j.hash)
    qk_sha256_final (&j.sha, s->sha256);
  s->written = j.written;
out:
  for (size_t k = 0; k < j.nsrc; k++) {
    if (j.src[k].fd >= 0)
      close (j.src[k].fd);
    free (j.src[k].name);
  }
  for (unsigned i = 0; i < MAX_WORKERS; i++) {
    free (w[i].buf);
    if (i > 0)
      qk_image_close (w[i].img);
  }
  return r;
}
