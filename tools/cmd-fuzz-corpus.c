/* qcowkit fuzz-corpus: small valid qcow2 images, one per feature
 * combination, made by the in-memory builder of lib/format/build.c (no
 * QEMU needed), as seeds for fuzzers and as test inputs for other qcow2
 * readers. With --expected, the guest contents the builder's model says
 * each image (and each of its snapshots) holds, for differential tests.
 *
 * A developer command on the internal library: the builder is not public
 * API (it writes any structure, valid or not, at any offset), so this is
 * its own program, qcowkit-fuzz-corpus (tools/fuzz-corpus-main.c), linked
 * with lib/libqcowkit-internal.la; tools/qcowkit links only the public
 * libqcowkit and runs it for `qcowkit fuzz-corpus` (tools/helper.c). */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tool.h"
#include "buf.h"
#include "format/format.h"   /* the builder: see the top */
#include "json.h"

#define KiB 1024ULL
#define MiB (1024ULL * 1024)
#define MAX_FEATURES 24
#define MAX_SNAPS 8

struct entry {
  char *file;
  uint64_t size;
  char *features[MAX_FEATURES];
  size_t n_features;
};

struct gen {
  int dirfd;
  const char *dir;
  bool expected, force;
  bool dry;                /* first pass: only check the names */
  struct entry *e;
  size_t n, cap;
  /* the image being made */
  char *feat[MAX_FEATURES];
  size_t n_feat;
  const char *snaps[MAX_SNAPS];
  size_t n_snaps;
};

/* ---- output files ---- */

static void
clear_features (struct gen *g)
{
  for (size_t i = 0; i < g->n_feat; i++)
    free (g->feat[i]);
  g->n_feat = 0;
  g->n_snaps = 0;
}

static int
feature (struct gen *g, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

static int
feature (struct gen *g, const char *fmt, ...)
{
  va_list ap;
  char *s;
  int r;

  if (g->n_feat >= MAX_FEATURES) {
    errx_ ("internal: too many features");
    return -1;
  }
  va_start (ap, fmt);
  r = vasprintf (&s, fmt, ap);
  va_end (ap);
  if (r < 0) {
    errx_ ("out of memory");
    return -1;
  }
  g->feat[g->n_feat++] = s;
  return 0;
}

/* Write len bytes as NAME in the output directory, leaving holes where
 * whole 4 KiB blocks are zero: the big-cluster images are mostly zeros. */
static int
write_out (struct gen *g, const char *name, const uint8_t *buf, size_t len,
           char *const *features, size_t n_features)
{
  const size_t blk = 4096;
  struct entry *e;
  int fd;

  if (g->dry) {
    struct stat st;
    if (!g->force && fstatat (g->dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
      errx_ ("%s/%s exists (--force overwrites it)", g->dir, name);
      return -1;
    }
    return 0;
  }
  fd = openat (g->dirfd, name, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW
               | (g->force ? O_TRUNC : O_EXCL), 0644);
  if (fd < 0) {
    errx_ ("%s/%s: %s", g->dir, name, strerror (errno));
    return -1;
  }
  /* --force over a longer file: the holes must not keep its old bytes */
  if (ftruncate (fd, 0) < 0)
    goto err;
  for (size_t off = 0; off < len; off += blk) {
    size_t n = MIN (blk, len - off);
    bool zero = true;
    for (size_t k = 0; k < n && zero; k++)
      zero = buf[off + k] == 0;
    if (zero)
      continue;
    for (size_t done = 0; done < n;) {
      ssize_t w = pwrite (fd, buf + off + done, n - done,
                          (off_t) (off + done));
      if (w < 0 && errno == EINTR)
        continue;
      if (w <= 0)
        goto err;
      done += (size_t) w;
    }
  }
  if (ftruncate (fd, (off_t) len) < 0)
    goto err;
  if (close (fd) < 0) {
    fd = -1;
    goto err;
  }
  e = grow (g->e, &g->cap, g->n + 1, sizeof *g->e);
  if (e == NULL) {
    errx_ ("out of memory");
    return -1;
  }
  g->e = e;
  e = &g->e[g->n];
  memset (e, 0, sizeof *e);
  if ((e->file = strdup (name)) == NULL) {
    errx_ ("out of memory");
    return -1;
  }
  e->size = len;
  for (size_t i = 0; i < n_features; i++)
    if ((e->features[e->n_features++] = strdup (features[i])) == NULL) {
      errx_ ("out of memory");
      return -1;
    }
  g->n++;
  return 0;

 err:
  errx_ ("%s/%s: %s", g->dir, name, strerror (errno));
  if (fd >= 0)
    close (fd);
  return -1;
}

/* Write the guest contents of a view of b as NAME. */
static int
write_expected (struct gen *g, struct qk_builder *b, int snapshot,
                const char *name, char *const *features, size_t n_features)
{
  uint64_t size = qk_builder_size (b, snapshot);
  uint8_t *buf;
  int r;

  if (size > SIZE_MAX || (buf = malloc (size ? (size_t) size : 1)) == NULL) {
    errx_ ("out of memory");
    return -1;
  }
  if (qk_builder_read (b, snapshot, 0, buf, (size_t) size) < 0) {
    errx_ ("%s: %s", name, qk_get_error ());
    free (buf);
    return -1;
  }
  r = write_out (g, name, buf, (size_t) size, features, n_features);
  free (buf);
  return r;
}

/* Finish b and write NAME.qcow2 (its data file as data_file when set),
 * then with --expected NAME.raw and NAME.snap-S.raw. Frees b. */
static int
emit (struct gen *g, struct qk_builder *b, const char *name,
      const char *data_file)
{
  uint8_t *img = NULL, *df = NULL;
  size_t img_len = 0, df_len = 0;
  char file[256], *f[2];
  int r = -1;

  if (qk_builder_finish (b, &img, &img_len, data_file ? &df : NULL,
                         data_file ? &df_len : NULL) < 0) {
    errx_ ("%s: %s", name, qk_get_error ());
    goto out;
  }
  snprintf (file, sizeof file, "%s.qcow2", name);
  if (feature (g, "virtual-size=%" PRIu64, qk_builder_size (b, -1)) < 0
      || write_out (g, file, img, img_len, g->feat, g->n_feat) < 0)
    goto out;
  if (data_file) {
    char tag[300];
    snprintf (tag, sizeof tag, "data-file-of=%s", file);
    f[0] = tag;
    if (write_out (g, data_file, df, df_len, f, 1) < 0)
      goto out;
  }
  if (g->expected) {
    char tag[300];
    snprintf (tag, sizeof tag, "expected-of=%s", file);
    f[0] = tag;
    snprintf (file, sizeof file, "%s.raw", name);
    if (write_expected (g, b, -1, file, f, 1) < 0)
      goto out;
    for (size_t i = 0; i < g->n_snaps; i++) {
      char stag[300];
      snprintf (stag, sizeof stag, "snapshot=%s", g->snaps[i]);
      f[1] = stag;
      snprintf (file, sizeof file, "%s.snap-%s.raw", name, g->snaps[i]);
      if (write_expected (g, b, (int) i, file, f, 2) < 0)
        goto out;
    }
  }
  r = 0;
 out:
  free (img);
  free (df);
  qk_builder_free (b);
  clear_features (g);
  return r;
}

/* ---- guest data ---- */

/* Deterministic incompressible bytes (splitmix64). */
static void
fill_random (uint8_t *p, size_t n, uint64_t seed)
{
  uint64_t s = seed * 0x9e3779b97f4a7c15ULL + 1;
  for (size_t i = 0; i < n; i++) {
    uint64_t z = (s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    p[i] = (uint8_t) (z ^ (z >> 31));
  }
}

/* Compressible text that still differs from cluster to cluster. */
static void
fill_text (uint8_t *p, size_t n, unsigned seed)
{
  char line[80];
  size_t pos = 0;

  for (unsigned k = 0; pos < n; k++) {
    int l = snprintf (line, sizeof line, "qcowkit fuzz corpus %u line %u\n",
                      seed, k);
    for (int i = 0; i < l && pos < n; i++)
      p[pos++] = (uint8_t) line[i];
  }
}

static int
bfail (const char *what)
{
  errx_ ("%s: %s", what, qk_get_error ());
  return -1;
}

static int
put_random (struct qk_builder *b, uint64_t off, size_t len, uint64_t seed)
{
  uint8_t *p = malloc (len ? len : 1);
  int r;

  if (p == NULL)
    return bfail ("malloc");
  fill_random (p, len, seed);
  r = qk_builder_write (b, off, p, len);
  free (p);
  return r < 0 ? bfail ("write") : 0;
}

static int
put_compressed (struct qk_builder *b, uint64_t off, uint64_t cs,
                unsigned seed)
{
  uint8_t *p = malloc ((size_t) cs);
  int r;

  if (p == NULL)
    return bfail ("malloc");
  fill_text (p, (size_t) cs, seed);
  r = qk_builder_write_compressed (b, off, p, (size_t) cs);
  free (p);
  return r < 0 ? bfail ("compressed write") : 0;
}

struct workload {
  bool zero;          /* v3 zero clusters: plain and preallocated */
  bool compress;      /* one or two compressed clusters */
  bool extl2;         /* subcluster writes, zeros and discards */
  uint64_t seed;
};

/* The standard guest writes, in units of clusters: a full cluster, a
 * partial write across clusters, zero clusters, compressed clusters and
 * the last bytes of the disk. Cluster 6 and 7 are the compressed ones. */
static int
workload (struct qk_builder *b, uint64_t cs, uint64_t size,
          const struct workload *w)
{
  uint64_t sc = cs / 32;

  if (put_random (b, 0, (size_t) cs, w->seed)
      || put_random (b, 2 * cs + cs / 4 + 7, 1000, w->seed + 1))
    return -1;
  if (w->zero) {
    /* plain zero over data; preallocated zero keeps the host cluster */
    if (put_random (b, 4 * cs, (size_t) cs, w->seed + 2)
        || put_random (b, 5 * cs, (size_t) cs, w->seed + 3))
      return -1;
    if (qk_builder_zero (b, 4 * cs, cs, false) < 0
        || qk_builder_zero (b, 5 * cs, cs, true) < 0)
      return bfail ("zero");
  }
  if (w->compress
      && (put_compressed (b, 6 * cs, cs, (unsigned) w->seed)
          || put_compressed (b, 7 * cs, cs, (unsigned) w->seed + 1)))
    return -1;
  if (w->extl2) {
    /* cluster 8: only subclusters 0 and 1 allocated (a partial write);
     * cluster 9: data with zero subclusters 2..5 in it; cluster 10: zero
     * subclusters in an unallocated cluster; cluster 0: subclusters 8
     * and 9 discarded */
    if (put_random (b, 8 * cs + 100, (size_t) (sc + 200), w->seed + 4)
        || put_random (b, 9 * cs, (size_t) cs, w->seed + 5))
      return -1;
    if (qk_builder_zero (b, 9 * cs + 2 * sc, 4 * sc, false) < 0
        || qk_builder_zero (b, 10 * cs + 3 * sc, 4 * sc, false) < 0
        || qk_builder_discard (b, 8 * sc, 2 * sc) < 0)
      return bfail ("extended L2 workload");
  }
  return put_random (b, size - 1536, 1536, w->seed + 6);
}

static struct qk_builder *
builder (const struct qk_build_config *cfg)
{
  struct qk_builder *b = qk_builder_new (cfg);
  if (b == NULL)
    bfail ("builder");
  return b;
}

static int
base_features (struct gen *g, const struct qk_build_config *c)
{
  return feature (g, "compat=%s", c->version == 2 ? "0.10" : "1.1")
         || feature (g, "cluster-size=%llu", 1ULL << c->cluster_bits)
         || feature (g, "refcount-bits=%u", 1U << c->refcount_order)
         || (c->version == 3
             && feature (g, "compression-type=%s",
                         c->compression_type == QK_COMPRESSION_ZSTD ? "zstd"
                         : "zlib"))
         || (c->extended_l2 && feature (g, "extended-l2"))
         || (c->lazy_refcounts && feature (g, "lazy-refcounts"))
         || (c->dirty && feature (g, "dirty"));
}

/* ---- the images ---- */

/* A plain image: geometry, and the standard workload. */
static int
plain (struct gen *g, const char *name, uint32_t version, unsigned cbits,
       unsigned rorder, int comp, bool extl2, uint64_t seed)
{
  uint64_t cs = 1ULL << cbits;
  struct qk_build_config c = {
    .version = version, .cluster_bits = cbits, .refcount_order = rorder,
    .size = MAX (MiB, 16 * cs), .extended_l2 = extl2,
    .compression_type = comp,
  };
  struct workload w = {
    .zero = version == 3, .compress = true, .extl2 = extl2, .seed = seed,
  };
  struct qk_builder *b = builder (&c);

  if (b == NULL || base_features (g, &c)
      || feature (g, "compressed") || (w.zero && feature (g, "zero-clusters"))
      || (w.zero && feature (g, "preallocated-zero-clusters"))
      || (extl2 && feature (g, "subclusters"))
      || workload (b, cs, c.size, &w) < 0) {
    qk_builder_free (b);
    clear_features (g);
    return -1;
  }
  return emit (g, b, name, NULL);
}

/* 2 MiB clusters: a header, refcount table, refcount block, L1, L2 and a
 * data cluster are 2 MiB each at least; one small write and one zero
 * cluster keep the file to six clusters, and holes keep it small on
 * disk. */
static int
huge (struct gen *g)
{
  struct qk_build_config c = {
    .version = 3, .cluster_bits = 21, .refcount_order = 4, .size = 4 * MiB,
  };
  struct qk_builder *b = builder (&c);

  if (b == NULL || base_features (g, &c) || feature (g, "zero-clusters")
      || put_random (b, 4096, 4096, 21)
      || (qk_builder_zero (b, 2 * MiB, 2 * MiB, false) < 0
          && bfail ("zero"))) {
    qk_builder_free (b);
    clear_features (g);
    return -1;
  }
  return emit (g, b, "v3-c2m-rc16", NULL);
}

static int
snap (struct gen *g, struct qk_builder *b, const char *name, uint64_t icount,
      uint32_t extra_size, const uint8_t *extra, const uint8_t *vm,
      uint64_t vm_size)
{
  struct qk_build_snapshot s = {
    .name = name,
    .date_sec = 1764547200 + (uint32_t) g->n_snaps * 3600,
    .date_nsec = 123456789,
    .vm_clock_nsec = 1500000000ULL * (g->n_snaps + 1),
    .icount = icount, .extra_data_size = extra_size, .extra = extra,
    .vm_state = vm, .vm_state_size = vm_size,
  };

  if (g->n_snaps >= MAX_SNAPS || qk_builder_snapshot (b, &s) < 0)
    return bfail ("snapshot");
  g->snaps[g->n_snaps++] = name;
  return feature (g, "snapshot=%s", name);
}

/* Internal snapshots (v3): one before a resize (that adds L1 entries),
 * one with unknown extra data past the known 24 bytes, one with icount
 * disabled and a VM state; writes in between copy on write the clusters
 * the snapshots share. 512-byte clusters keep all of it under 64 KiB. */
static int
snapshots_v3 (struct gen *g)
{
  const uint64_t cs = 512;
  struct qk_build_config c = {
    .version = 3, .cluster_bits = 9, .refcount_order = 4, .size = MiB,
  };
  struct workload w = { .zero = true, .compress = true, .seed = 300 };
  uint8_t extra[16], vm[2000];
  struct qk_builder *b = builder (&c);

  fill_random (extra, sizeof extra, 301);
  fill_text (vm, sizeof vm, 302);
  if (b == NULL || base_features (g, &c) || feature (g, "resized")
      || feature (g, "snapshot-unknown-extra-data")
      || feature (g, "snapshot-icount-disabled")
      || feature (g, "snapshot-vm-state")
      || workload (b, cs, c.size, &w) < 0
      || snap (g, b, "before-resize", 1000, 24, NULL, NULL, 0) < 0)
    goto err;
  if (qk_builder_resize (b, 3 * MiB / 2) < 0) {
    bfail ("resize");
    goto err;
  }
  if (put_random (b, 100, 200, 303) || put_random (b, 5 * MiB / 4, 1024, 304)
      || snap (g, b, "unknown-extra", 2000, 40, extra, NULL, 0) < 0
      || put_random (b, 6 * cs, cs, 305)
      || (qk_builder_zero (b, 2 * cs, cs, false) < 0 && bfail ("zero"))
      || snap (g, b, "no-icount", UINT64_MAX, 24, NULL, vm, sizeof vm) < 0
      || (qk_builder_discard (b, 0, cs) < 0 && bfail ("discard"))
      || put_random (b, 3 * MiB / 2 - cs, cs, 306))
    goto err;
  return emit (g, b, "v3-c512-rc16-snapshots", NULL);
 err:
  qk_builder_free (b);
  clear_features (g);
  return -1;
}

/* v2: snapshot table entries without extra data, as the oldest QEMU
 * wrote them. */
static int
snapshots_v2 (struct gen *g)
{
  const uint64_t cs = 512;
  struct qk_build_config c = {
    .version = 2, .cluster_bits = 9, .refcount_order = 4, .size = MiB,
  };
  struct workload w = { .compress = true, .seed = 200 };
  struct qk_builder *b = builder (&c);

  if (b == NULL || base_features (g, &c)
      || feature (g, "snapshot-no-extra-data")
      || workload (b, cs, c.size, &w) < 0
      || snap (g, b, "first", 0, 0, NULL, NULL, 0) < 0
      || put_random (b, cs, cs, 201) || put_random (b, 0, 100, 202)
      || snap (g, b, "second", 0, 0, NULL, NULL, 0) < 0
      || put_random (b, 6 * cs + 100, 100, 203)) {
    qk_builder_free (b);
    clear_features (g);
    return -1;
  }
  return emit (g, b, "v2-c512-rc16-snapshots", NULL);
}

static int
bitmaps (struct gen *g)
{
  struct qk_build_config c = {
    .version = 3, .cluster_bits = 12, .refcount_order = 4, .size = MiB,
  };
  struct workload w = { .zero = true, .compress = true, .seed = 400 };
  struct qk_builder *b = builder (&c);
  int m0, m1, m2;

  if (b == NULL || base_features (g, &c) || workload (b, 4096, c.size, &w) < 0)
    goto err;
  if ((m0 = qk_builder_add_bitmap (b, "auto-64k", 16, 2)) < 0
      || (m1 = qk_builder_add_bitmap (b, "manual-4k", 12, 0)) < 0
      || (m2 = qk_builder_add_bitmap (b, "clean-512", 9, 2)) < 0
      || qk_builder_bitmap_dirty (b, m0, 0, 64 * KiB) < 0
      || qk_builder_bitmap_dirty (b, m0, 512 * KiB + 1, 100) < 0
      || qk_builder_bitmap_dirty (b, m1, 8192, 3 * 4096) < 0
      || qk_builder_bitmap_dirty (b, m1, MiB - 1536, 1536) < 0) {
    bfail ("bitmap");
    goto err;
  }
  (void) m2;
  if (feature (g, "bitmap=auto-64k") || feature (g, "bitmap=manual-4k")
      || feature (g, "bitmap=clean-512") || feature (g, "bitmap-auto")
      || feature (g, "bitmap-dirty-ranges"))
    goto err;
  return emit (g, b, "v3-c4k-rc16-bitmaps", NULL);
 err:
  qk_builder_free (b);
  clear_features (g);
  return -1;
}

static int
lazy_dirty (struct gen *g)
{
  struct qk_build_config c = {
    .version = 3, .cluster_bits = 12, .refcount_order = 4, .size = MiB,
    .lazy_refcounts = true, .dirty = true,
  };
  struct workload w = { .zero = true, .compress = true, .seed = 500 };
  struct qk_builder *b = builder (&c);

  if (b == NULL || base_features (g, &c)
      || workload (b, 4096, c.size, &w) < 0) {
    qk_builder_free (b);
    clear_features (g);
    return -1;
  }
  return emit (g, b, "v3-c4k-rc16-lazy-dirty", NULL);
}

/* The base of a chain (a qcow2 image of its own), a raw base, and two
 * overlays: one naming its backing format, one without (QEMU probes). */
static int
backing (struct gen *g)
{
  struct qk_build_config c = {
    .version = 3, .cluster_bits = 12, .refcount_order = 4, .size = MiB,
  };
  struct workload w = { .zero = true, .compress = true, .seed = 600 };
  struct qk_builder *b = builder (&c);
  uint8_t *content = NULL, *raw = NULL;
  const size_t raw_len = 48 * KiB;
  char *f[1] = { (char *) "raw-backing-file" };
  int r = -1;

  if (b == NULL || base_features (g, &c) || feature (g, "backing-base")
      || workload (b, 4096, c.size, &w) < 0)
    goto out;
  if ((content = malloc (MiB)) == NULL
      || qk_builder_read (b, -1, 0, content, MiB) < 0) {
    bfail ("read");
    goto out;
  }
  r = emit (g, b, "v3-c4k-rc16-base", NULL);
  b = NULL;
  if (r < 0)
    goto out;
  r = -1;

  /* without a backing format: the qcow2 base, probed */
  if ((b = builder (&c)) == NULL || base_features (g, &c)
      || feature (g, "backing-filename=v3-c4k-rc16-base.qcow2")
      || feature (g, "backing-no-format")
      || qk_builder_set_backing (b, "v3-c4k-rc16-base.qcow2", NULL, content,
                                 MiB) < 0
      || put_random (b, 4096 + 1000, 100, 610)       /* copy on write */
      || put_random (b, 3 * 4096, 4096, 611)
      || qk_builder_zero (b, 0, 4096, false) < 0     /* zeros over data */
      || qk_builder_discard (b, 3 * 4096, 4096) < 0  /* back to the base */
      || put_random (b, 512 * KiB, 2048, 612))
    goto out;
  r = emit (g, b, "v3-c4k-rc16-backing-nofmt", NULL);
  b = NULL;
  if (r < 0)
    goto out;
  r = -1;

  /* with a backing format: a raw base smaller than the overlay */
  if ((raw = malloc (raw_len)) == NULL) {
    bfail ("malloc");
    goto out;
  }
  fill_random (raw, raw_len, 620);
  if (write_out (g, "base-raw.img", raw, raw_len, f, 1) < 0)
    goto out;
  if ((b = builder (&c)) == NULL || base_features (g, &c)
      || feature (g, "backing-filename=base-raw.img")
      || feature (g, "backing-format=raw")
      || qk_builder_set_backing (b, "base-raw.img", "raw", raw,
                                 raw_len) < 0
      || put_random (b, 2 * 4096 + 7, 10, 621)
      || put_random (b, 44 * KiB, 8192, 622)          /* across the end */
      || qk_builder_zero (b, 4096, 4096, true) < 0
      || put_random (b, MiB - 512, 512, 623))
    goto out;
  r = emit (g, b, "v3-c4k-rc16-backing", NULL);
  b = NULL;
 out:
  if (r < 0 && b)
    bfail ("backing chain");
  qk_builder_free (b);
  clear_features (g);
  free (content);
  free (raw);
  return r;
}

static int
data_file (struct gen *g, bool raw)
{
  struct qk_build_config c = {
    .version = 3, .cluster_bits = 12, .refcount_order = 4, .size = 256 * KiB,
  };
  struct workload w = { .zero = true, .seed = raw ? 710 : 700 };
  const char *name = raw ? "v3-c4k-rc16-datafile-raw"
                         : "v3-c4k-rc16-datafile";
  char df[64];
  struct qk_builder *b = builder (&c);

  snprintf (df, sizeof df, "%s.data", name);
  if (b == NULL || base_features (g, &c)
      || feature (g, "data-file=%s", df)
      || (raw && feature (g, "data-file-raw"))
      || (qk_builder_set_data_file (b, df, raw) < 0 && bfail ("data file"))
      || workload (b, 4096, c.size, &w) < 0) {
    qk_builder_free (b);
    clear_features (g);
    return -1;
  }
  return emit (g, b, name, df);
}

/* What a reader must ignore or keep: a feature name table (QEMU's names
 * and some for unknown bits), an unknown header extension, unknown
 * compatible and autoclear bits, and a 128-byte header whose last 16
 * bytes are unknown fields. */
static int
unknown (struct gen *g)
{
  static const uint8_t trailer[16] = {
    0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
  };
  static const char ext[] = "unknown extension payload";
  struct qk_build_config c = {
    .version = 3, .cluster_bits = 12, .refcount_order = 4, .size = MiB,
    .header_length = 128, .unknown_header = trailer, .feature_table = true,
    .extra_compatible = 1ULL << 7, .extra_autoclear = 1ULL << 9,
  };
  struct workload w = { .zero = true, .compress = true, .seed = 800 };
  struct qk_builder *b = builder (&c);

  if (b == NULL || base_features (g, &c) || feature (g, "feature-name-table")
      || feature (g, "unknown-extension") || feature (g, "unknown-compatible")
      || feature (g, "unknown-autoclear") || feature (g, "header-length=128")
      || qk_builder_add_feature_name (b, QK_FEATURE_COMPAT, 7,
                                      "fuzz compatible") < 0
      || qk_builder_add_feature_name (b, QK_FEATURE_AUTOCLEAR, 9,
                                      "fuzz autoclear") < 0
      || qk_builder_add_feature_name (b, QK_FEATURE_INCOMPAT, 40,
                                      "fuzz incompatible (not set)") < 0
      || qk_builder_add_extension (b, 0x66757a7a, ext, sizeof ext - 1) < 0
      || workload (b, 4096, c.size, &w) < 0) {
    if (b)
      bfail ("unknown features");
    qk_builder_free (b);
    clear_features (g);
    return -1;
  }
  return emit (g, b, "v3-c4k-rc16-unknown", NULL);
}

static int
corpus (struct gen *g)
{
  static const unsigned rc_orders[] = { 0, 1, 2, 3, 5, 6 };
  char name[64];

  if (plain (g, "v2-c512-rc16", 2, 9, 4, 0, false, 1)
      || plain (g, "v2-c4k-rc16", 2, 12, 4, 0, false, 2)
      || plain (g, "v2-c64k-rc16", 2, 16, 4, 0, false, 3)
      || snapshots_v2 (g)
      || plain (g, "v3-c512-rc16", 3, 9, 4, 0, false, 4)
      || plain (g, "v3-c4k-rc16", 3, 12, 4, 0, false, 5)
      || plain (g, "v3-c64k-rc16", 3, 16, 4, 0, false, 6)
      || huge (g)
      || plain (g, "v3-c4k-rc16-zstd", 3, 12, 4, QK_COMPRESSION_ZSTD, false,
                7)
      || plain (g, "v3-c512-rc16-zstd", 3, 9, 4, QK_COMPRESSION_ZSTD, false,
                8)
      || plain (g, "v3-c16k-rc16-extl2", 3, 14, 4, 0, true, 9)
      || plain (g, "v3-c16k-rc16-extl2-zstd", 3, 14, 4, QK_COMPRESSION_ZSTD,
                true, 10)
      || plain (g, "v3-c64k-rc16-extl2", 3, 16, 4, 0, true, 11))
    return -1;
  for (size_t i = 0; i < sizeof rc_orders / sizeof rc_orders[0]; i++) {
    snprintf (name, sizeof name, "v3-c4k-rc%u", 1U << rc_orders[i]);
    if (plain (g, name, 3, 12, rc_orders[i], 0, false, 20 + i))
      return -1;
  }
  return snapshots_v3 (g) || bitmaps (g) || lazy_dirty (g) || backing (g)
         || data_file (g, false) || data_file (g, true) || unknown (g) ? -1
         : 0;
}

static const char help[] =
  "Usage: qcowkit fuzz-corpus [--expected] [--force] [--output=json|human] "
  "DIR\n"
  "Write small valid qcow2 images, one per feature combination, into DIR\n"
  "(created if missing), made without QEMU.\n"
  "--expected also writes NAME.raw, the guest contents, and\n"
  "NAME.snap-SNAPSHOT.raw for each internal snapshot.\n"
  "--force overwrites files that exist.\n";

int
cmd_fuzz_corpus (int argc, char **argv)
{
  struct common_opts o = { .progress = -1 };
  struct gen g = { .dirfd = -1 };
  const char *dir = NULL;
  int r, ret = EXIT_ERR;

  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp (a, "--help") == 0 || strcmp (a, "-h") == 0) {
      fputs (help, stdout);
      return EXIT_OK;
    }
    if ((r = common_option (&o, argc, argv, &i, "fuzz-corpus")) < 0)
      return EXIT_USAGE;
    if (r)
      continue;
    if (strcmp (a, "--expected") == 0)
      g.expected = true;
    else if (strcmp (a, "--force") == 0 || strcmp (a, "-f") == 0)
      g.force = true;
    else if (a[0] == '-' && a[1])
      return usage_error ("fuzz-corpus", "unknown option '%s'", a);
    else if (dir)
      return usage_error ("fuzz-corpus", "too many arguments");
    else
      dir = a;
  }
  if (dir == NULL)
    return usage_error ("fuzz-corpus", "no directory given");
  if (mkdir (dir, 0777) < 0 && errno != EEXIST) {
    errx_ ("%s: %s", dir, strerror (errno));
    return EXIT_ERR;
  }
  g.dir = dir;
  g.dirfd = open (dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (g.dirfd < 0) {
    errx_ ("%s: %s", dir, strerror (errno));
    return EXIT_ERR;
  }
  /* First only the names, so that nothing is written when one exists. */
  g.dry = true;
  if (corpus (&g) < 0)
    goto out;
  g.dry = false;
  if (corpus (&g) < 0)
    goto out;
  if (o.output == OUT_JSON) {
    struct qk_json *j = qk_json_new (stdout, 4);
    qk_json_array_begin (j, NULL);
    for (size_t i = 0; i < g.n; i++) {
      qk_json_object_begin (j, NULL);
      qk_json_string (j, "file", g.e[i].file);
      qk_json_uint (j, "size", g.e[i].size);
      qk_json_array_begin (j, "features");
      for (size_t k = 0; k < g.e[i].n_features; k++)
        qk_json_string (j, NULL, g.e[i].features[k]);
      qk_json_array_end (j);
      qk_json_object_end (j);
    }
    qk_json_array_end (j);
    if (qk_json_free (j) < 0)
      goto out;
  }
  else
    for (size_t i = 0; i < g.n; i++)
      printf ("%10" PRIu64 "  %s\n", g.e[i].size, g.e[i].file);
  ret = EXIT_OK;
 out:
  for (size_t i = 0; i < g.n; i++) {
    free (g.e[i].file);
    for (size_t k = 0; k < g.e[i].n_features; k++)
      free (g.e[i].features[k]);
  }
  free (g.e);
  clear_features (&g);
  close (g.dirfd);
  return ret;
}
