/* Tests of the image layer through the public API (qk_image_open_memory):
 * small qcow2 images built here byte by byte (header, refcount table,
 * refcount block, L1, L2, data, snapshot table), checked for guest
 * contents and mapping; then hostile variants and truncations, which must
 * open with a message or with warnings, and whose reads must fail cleanly
 * or return data: never crash, never allocate absurd amounts of memory
 * (the address space is limited to 1 GiB here to prove it).
 *
 * The builder uses qk_compress (format/format.h) to make compressed
 * clusters; everything under test goes through lib/qcowkit.h, except the
 * internal qk_image_refcount and qk_image_luks (image/image.h). */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "qcowkit.h"
#include "format/format.h"
#include "image/image.h"
#include "../tap.h"

/* ---- helpers ---- */

static uint64_t rng_state = 42;

static uint64_t
rnd (void)
{
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static void *
xmalloc (size_t n)
{
  void *p = malloc (n ? n : 1);
  if (p == NULL) {
    printf ("Bail out! out of memory (%zu bytes)\n", n);
    exit (1);
  }
  return p;
}

static void *
xcalloc (size_t n)
{
  void *p = xmalloc (n);
  memset (p, 0, n ? n : 1);
  return p;
}

static uint8_t
pat (unsigned seed, uint64_t i)
{
  return (uint8_t) (seed * 37 + i * 7 + (i >> 9) * 3 + 1);
}

/* ---- the builder ---- */

/* Host cluster layout. */
enum {
  HC_HEADER = 0, HC_REFTABLE = 1, HC_REFBLOCK = 2, HC_L1 = 3, HC_L2 = 4,
};

struct img {
  uint8_t *p;
  size_t len;
  unsigned cb;
  uint64_t cs;
  bool extl2;
  int ctype;
  uint64_t size;         /* virtual size */
  uint8_t *exp;          /* expected guest contents */
};

static void
b_init (struct img *b, unsigned version, unsigned cb, size_t nclusters,
        uint64_t size, bool extl2, int ctype)
{
  uint8_t *h;
  uint64_t incompat = 0;

  memset (b, 0, sizeof *b);
  b->cb = cb;
  b->cs = 1ULL << cb;
  b->extl2 = extl2;
  b->ctype = ctype;
  b->size = size;
  b->len = nclusters * b->cs;
  b->p = xcalloc (b->len);
  b->exp = xcalloc (size);
  h = b->p;
  if (extl2)
    incompat |= QK_INCOMPAT_EXTL2;
  if (ctype)
    incompat |= QK_INCOMPAT_COMPRESSION;
  be32_put (h, QK_QCOW2_MAGIC);
  be32_put (h + 4, version);
  be32_put (h + 20, cb);
  be64_put (h + 24, size);
  be32_put (h + 36, 1);                       /* l1_size */
  be64_put (h + 40, HC_L1 * b->cs);
  be64_put (h + 48, HC_REFTABLE * b->cs);
  be32_put (h + 56, 1);
  if (version >= 3) {
    be64_put (h + 72, incompat);
    be32_put (h + 96, 4);
    be32_put (h + 100, 112);
    h[104] = ctype;
  }
  be64_put (b->p + HC_REFTABLE * b->cs, HC_REFBLOCK * b->cs);
  be64_put (b->p + HC_L1 * b->cs, (HC_L2 * b->cs) | QK_OFLAG_COPIED);
  for (size_t c = 0; c < nclusters; c++)
    be16_put (b->p + HC_REFBLOCK * b->cs + 2 * c, 1);
}

static void
b_free (struct img *b)
{
  free (b->p);
  free (b->exp);
}

static uint8_t *
l2_slot (struct img *b, uint64_t l2_cluster, uint64_t idx)
{
  return b->p + l2_cluster * b->cs + idx * (b->extl2 ? 16 : 8);
}

static void
b_l2 (struct img *b, uint64_t l2_cluster, uint64_t idx, uint64_t entry,
      uint64_t bitmap)
{
  uint8_t *e = l2_slot (b, l2_cluster, idx);
  be64_put (e, entry);
  if (b->extl2)
    be64_put (e + 8, bitmap);
}

/* A normal cluster: guest cluster g at host cluster hc, pattern seed. */
static void
b_normal (struct img *b, uint64_t g, uint64_t hc, unsigned seed)
{
  for (uint64_t i = 0; i < b->cs; i++) {
    b->p[hc * b->cs + i] = pat (seed, i);
    b->exp[g * b->cs + i] = pat (seed, i);
  }
  b_l2 (b, HC_L2, g, (hc * b->cs) | QK_OFLAG_COPIED,
        b->extl2 ? QK_L2_BITMAP_ALL_ALLOC : 0);
}

/* A compressed cluster: guest g's data compressed at host offset off.
 * Returns the end of the compressed data. */
static uint64_t
b_compressed (struct img *b, uint64_t g, uint64_t off, unsigned seed)
{
  uint8_t *d = xmalloc (b->cs);
  size_t clen;
  uint64_t first, last, x = 62 - (b->cb - 8);

  for (uint64_t i = 0; i < b->cs; i++)
    d[i] = (uint8_t) ("compressible "[i % 13] + seed + (i >> 10));
  if (qk_compress (b->ctype, d, b->cs, b->p + off, b->len - off, &clen) < 0) {
    printf ("Bail out! qk_compress: %s\n", qk_get_error ());
    exit (1);
  }
  memcpy (b->exp + g * b->cs, d, b->cs);
  first = off / 512;
  last = (off + clen - 1) / 512;
  b_l2 (b, HC_L2, g, QK_OFLAG_COMPRESSED | ((last - first) << x) | off, 0);
  free (d);
  return off + clen;
}

static struct qk_image *
b_open (const struct img *b, unsigned flags)
{
  struct qk_open_options o = { .flags = flags };
  return qk_image_open_memory (b->p, b->len, "mem.qcow2", &o);
}

/* ---- extents ---- */

struct extents {
  struct qk_extent e[256];
  size_t n;
  size_t limit;           /* stop after this many (return 1) */
};

static int
collect (void *opaque, const struct qk_extent *e)
{
  struct extents *x = opaque;
  if (x->n < 256)
    x->e[x->n] = *e;
  x->n++;
  return x->limit && x->n >= x->limit ? 1 : 0;
}

static const struct qk_extent *
extent_at (const struct extents *x, uint64_t off)
{
  for (size_t i = 0; i < x->n && i < 256; i++)
    if (off >= x->e[i].start && off < x->e[i].start + x->e[i].length)
      return &x->e[i];
  return NULL;
}

static bool
ext_is (const struct extents *x, uint64_t off, bool present, bool zero,
        bool data, bool compressed, bool has_offset, uint64_t offset)
{
  const struct qk_extent *e = extent_at (x, off);
  if (e == NULL)
    return false;
  if (e->present != present || e->zero != zero || e->data != data
      || e->compressed != compressed || e->has_offset != has_offset)
    return false;
  return !has_offset || e->offset + (off - e->start) == offset;
}

/* ---- the standard image ---- */

/* 4 KiB clusters, 16 guest clusters:
 *  g0 normal (host 5)     g1 zero plain       g2 unallocated
 *  g3 normal (host 6)     g4 compressed (in host 7, unaligned)
 *  g5 zero alloc (host 8, filled with 0xee)   g6 normal (host 9)
 *  g7 compressed (right after g4's, same sector)
 *  g8..g14 unallocated    g15 normal (host 10)
 * host 11: snapshot table (one snapshot "snap1", id 1)
 * host 12: snapshot L1 -> host 13: snapshot L2: g0 -> host 14 */
#define STD_CLUSTERS 15

static void
build_std (struct img *b, unsigned version, int ctype)
{
  uint64_t end;
  uint8_t *sn;

  b_init (b, version, 12, STD_CLUSTERS, 16 << 12, false, ctype);
  b_normal (b, 0, 5, 1);
  if (version >= 3)
    b_l2 (b, HC_L2, 1, QK_OFLAG_ZERO, 0);
  b_normal (b, 3, 6, 2);
  end = b_compressed (b, 4, 7 * b->cs + 96, 3);
  memset (b->p + 8 * b->cs, 0xee, b->cs);
  if (version >= 3)
    b_l2 (b, HC_L2, 5, (8 * b->cs) | QK_OFLAG_ZERO | QK_OFLAG_COPIED, 0);
  b_normal (b, 6, 9, 4);
  b_compressed (b, 7, end, 5);
  b_normal (b, 15, 10, 6);

  /* snapshot */
  sn = b->p + 11 * b->cs;
  be64_put (b->p + 60, 0);
  be32_put (b->p + 60, 1);
  be64_put (b->p + 64, 11 * b->cs);
  be64_put (sn, 12 * b->cs);
  be32_put (sn + 8, 1);
  be16_put (sn + 12, 1);
  be16_put (sn + 14, 5);
  be32_put (sn + 16, 1700000000);
  be32_put (sn + 36, 16);
  be64_put (sn + 40, 0);
  be64_put (sn + 48, b->size);
  memcpy (sn + 56, "1snap1", 6);
  be64_put (b->p + 12 * b->cs, 13 * b->cs);
  be64_put (b->p + 13 * b->cs, 14 * b->cs);
  for (uint64_t i = 0; i < b->cs; i++)
    b->p[14 * b->cs + i] = pat (9, i);
}

/* Read the whole disk a cluster at a time, and in one go. */
static bool
read_matches (struct qk_image *img, const struct img *b)
{
  uint8_t *buf = xmalloc (b->size);
  bool good = true;

  for (uint64_t off = 0; off < b->size; off += b->cs)
    if (qk_image_read (img, buf + off, b->cs, off) < 0) {
      printf ("#   read at %" PRIu64 ": %s\n", off, qk_get_error ());
      good = false;
    }
  if (good && memcmp (buf, b->exp, b->size) != 0)
    good = false;
  memset (buf, 0x55, b->size);
  if (qk_image_read (img, buf, b->size, 0) < 0
      || memcmp (buf, b->exp, b->size) != 0)
    good = false;
  free (buf);
  return good;
}

static void
test_std (unsigned version, int ctype)
{
  struct img b;
  struct qk_image *img;
  const struct qk_header *h;
  struct extents x = { .n = 0 };
  uint8_t *buf;
  const char *tag = version == 2 ? "v2" : ctype ? "v3 zstd" : "v3";

  build_std (&b, version, ctype);
  img = b_open (&b, 0);
  ok (img != NULL, "%s: standard image opens", tag);
  if (img == NULL) {
    printf ("#   %s\n", qk_get_error ());
    b_free (&b);
    return;
  }
  for (size_t i = 0; i < qk_image_warning_count (img); i++)
    printf ("#   warning: %s\n", qk_image_warning (img, i));
  is_u64 (qk_image_warning_count (img), 0, "%s: no warnings", tag);
  ok (qk_image_unreadable_reason (img) == NULL, "%s: readable", tag);
  is_str (qk_image_format (img), "qcow2", "%s: format qcow2", tag);
  h = qk_image_header (img);
  ok (h && h->version == version && h->cluster_bits == 12
      && h->compression_type == ctype, "%s: header as built", tag);
  is_u64 (qk_image_virtual_size (img), 16 << 12, "%s: virtual size", tag);
  is_u64 (qk_image_file_size (img), STD_CLUSTERS << 12, "%s: file size", tag);
  ok (read_matches (img, &b), "%s: guest contents (normal, zero, "
      "unallocated, compressed, zero-alloc over 0xee)", tag);

  buf = xmalloc (3 * b.cs);
  ok (qk_image_read (img, buf, 2 * b.cs + 100, b.cs * 3 - 50) == 0
      && memcmp (buf, b.exp + b.cs * 3 - 50, 2 * b.cs + 100) == 0,
      "%s: an unaligned read across normal, compressed and zero clusters",
      tag);
  ok (qk_image_read (img, buf, 1, b.size - 1) == 0
      && buf[0] == b.exp[b.size - 1], "%s: the last byte", tag);
  ok (qk_image_read (img, buf, 0, b.size) == 0, "%s: a 0-byte read at the "
      "end", tag);
  ok (qk_image_read (img, buf, 2, b.size - 1) == -1 && qk_get_error (),
      "%s: a read past the end fails with a message", tag);
  ok (qk_image_read (img, buf, 1, UINT64_MAX) == -1, "%s: a read at "
      "UINT64_MAX fails", tag);

  ok (qk_image_map (img, 0, UINT64_MAX, collect, &x) == 0, "%s: map", tag);
  ok (ext_is (&x, 0, true, false, true, false, true, 5 * b.cs),
      "%s: map g0 data at host 5", tag);
  if (version >= 3) {
    ok (ext_is (&x, b.cs, true, true, false, false, false, 0),
        "%s: map g1 zero", tag);
    ok (ext_is (&x, 5 * b.cs, true, true, false, false, true, 8 * b.cs),
        "%s: map g5 zero with an offset", tag);
  }
  ok (ext_is (&x, 2 * b.cs, false, true, false, false, false, 0),
      "%s: map g2 unallocated reads as zero", tag);
  ok (ext_is (&x, 3 * b.cs, true, false, true, false, true, 6 * b.cs),
      "%s: map g3 data at host 6", tag);
  ok (ext_is (&x, 4 * b.cs, true, false, true, true, false, 0)
      && ext_is (&x, 7 * b.cs, true, false, true, true, false, 0),
      "%s: map g4 and g7 compressed", tag);
  ok (ext_is (&x, 15 * b.cs, true, false, true, false, true, 10 * b.cs),
      "%s: map g15 data at host 10", tag);
  {
    uint64_t covered = 0;
    bool contiguous = true;
    for (size_t i = 0; i < x.n && i < 256; i++) {
      if (x.e[i].start != covered)
        contiguous = false;
      covered += x.e[i].length;
    }
    ok (contiguous && covered == b.size, "%s: extents cover the disk in "
        "order", tag);
  }

  /* snapshots */
  is_u64 (qk_image_snapshot_count (img), 1, "%s: one snapshot", tag);
  ok (qk_image_snapshots_ok (img), "%s: snapshot table read", tag);
  if (qk_image_snapshot_count (img) == 1) {
    const struct qk_snapshot *s = qk_image_snapshot (img, 0);
    ok (strcmp (s->id, "1") == 0 && strcmp (s->name, "snap1") == 0
        && s->l1_table_offset == 12 * b.cs && s->disk_size == b.size,
        "%s: snapshot fields", tag);
  }
  ok (qk_image_snapshot (img, 1) == NULL, "%s: no snapshot 1", tag);
  ok (qk_image_select_snapshot (img, "snap1") == 0
      && qk_image_read (img, buf, b.cs, 0) == 0 && buf[0] == pat (9, 0)
      && buf[b.cs - 1] == pat (9, b.cs - 1), "%s: read through the "
      "snapshot's L1 by name", tag);
  ok (qk_image_read (img, buf, b.cs, 3 * b.cs) == 0 && buf[0] == 0
      && buf[100] == 0, "%s: snapshot: g3 unallocated there", tag);
  ok (qk_image_select_snapshot (img, "1") == 0
      && qk_image_read (img, buf, 1, 0) == 0 && buf[0] == pat (9, 0),
      "%s: select by id", tag);
  ok (qk_image_select_snapshot (img, "nope") == -1
      && qk_get_errno () == ENOENT, "%s: unknown snapshot: ENOENT", tag);
  ok (qk_image_select_snapshot (img, NULL) == 0 && read_matches (img, &b),
      "%s: back to the active L1", tag);

  /* raw tables */
  {
    uint32_t n;
    const uint64_t *l1 = qk_image_l1 (img, &n);
    uint64_t *w = NULL;
    size_t wn = 0;
    uint32_t cn = 0;
    ok (l1 && n == 1 && (l1[0] & QK_L1E_OFFSET_MASK) == HC_L2 * b.cs,
        "%s: L1 via the API", tag);
    ok (qk_image_read_l2 (img, HC_L2 * b.cs, &w, &wn) == 0 && wn == 512
        && (w[0] & QK_L2E_OFFSET_MASK) == 5 * b.cs, "%s: L2 via the API",
        tag);
    free (w);
    ok (qk_image_read_l2 (img, HC_L2 * b.cs + 8, &w, &wn) == -1,
        "%s: unaligned L2 offset refused", tag);
    ok (qk_image_read_refcount_table (img, &w, &wn) == 0 && wn == 512
        && w[0] == HC_REFBLOCK * b.cs, "%s: refcount table", tag);
    free (w);
    ok (qk_image_read_refblock (img, HC_REFBLOCK * b.cs, &w, &wn) == 0
        && wn == 2048 && w[0] == 1 && w[STD_CLUSTERS - 1] == 1
        && w[STD_CLUSTERS] == 0, "%s: refcount block", tag);
    free (w);
    ok (qk_image_read_snapshot_l1 (img, 0, &w, &cn) == 0 && cn == 1
        && w[0] == 13 * b.cs, "%s: snapshot L1", tag);
    free (w);
    ok (qk_image_read_snapshot_l1 (img, 5, &w, &cn) == -1,
        "%s: snapshot L1 of a missing snapshot fails", tag);
  }
  free (buf);
  qk_image_close (img);
  b_free (&b);
}

/* ---- extended L2 ---- */

static void
test_extl2 (void)
{
  struct img b;
  struct qk_image *img;
  struct extents x = { .n = 0 };
  uint8_t *buf;
  uint64_t cs, sc;

  /* 16 KiB clusters, 512-byte subclusters, 8 guest clusters */
  b_init (&b, 3, 14, 10, 8 << 14, true, 0);
  cs = b.cs;
  sc = cs / 32;
  /* g0: host 5; sc 0, 2, 31 allocated; sc 1 zero; the rest unallocated */
  for (uint64_t i = 0; i < cs; i++)
    b.p[5 * cs + i] = pat (1, i);
  b_l2 (&b, HC_L2, 0, 5 * cs | QK_OFLAG_COPIED,
        1ULL | 1ULL << 2 | 1ULL << 31 | 1ULL << 33);
  memcpy (b.exp, b.p + 5 * cs, sc);
  memcpy (b.exp + 2 * sc, b.p + 5 * cs + 2 * sc, sc);
  memcpy (b.exp + 31 * sc, b.p + 5 * cs + 31 * sc, sc);
  /* g1: unallocated, zero bits for sc 0..15 */
  b_l2 (&b, HC_L2, 1, 0, 0xffffULL << 32);
  /* g2: host 6, all allocated */
  b_normal (&b, 2, 6, 2);
  /* g3: compressed */
  b_compressed (&b, 3, 7 * cs + 1000, 3);
  /* g4: allocated, invalid bitmap (sc 5 both allocated and zero) */
  memset (b.p + 8 * cs, 0x11, cs);
  b_l2 (&b, HC_L2, 4, 8 * cs | QK_OFLAG_COPIED, 1ULL << 5 | 1ULL << 37);
  /* g5: unallocated with an allocation bit: invalid */
  b_l2 (&b, HC_L2, 5, 0, 1ULL << 3);
  /* g6: allocated, all zero (host 9 filled with 0xee) */
  memset (b.p + 9 * cs, 0xee, cs);
  b_l2 (&b, HC_L2, 6, 9 * cs | QK_OFLAG_COPIED, 0xffffffffULL << 32);

  img = b_open (&b, 0);
  ok (img && qk_image_warning_count (img) == 0, "extended L2 image opens "
      "without warnings");
  if (img == NULL) {
    b_free (&b);
    return;
  }
  ok (qk_image_header (img)->subclusters == 32
      && qk_image_header (img)->l2_entry_size == 16, "extended L2 header");
  buf = xmalloc (cs * 8);
  ok (qk_image_read (img, buf, 4 * cs, 0) == 0
      && memcmp (buf, b.exp, 4 * cs) == 0, "extended L2: g0..g3 (subcluster "
      "data, zero, unallocated, full cluster, compressed)");
  ok (qk_image_read (img, buf, 100, sc - 50) == 0
      && memcmp (buf, b.exp + sc - 50, 100) == 0, "extended L2: a read "
      "across a data/zero subcluster boundary");
  ok (qk_image_read (img, buf, cs, 4 * cs) == -1
      && qk_get_errno () == EBADMSG && qk_get_error (),
      "extended L2: an invalid bitmap fails the read with EBADMSG");
  ok (qk_image_read (img, buf, 1, 5 * cs + 100) == -1
      && qk_get_errno () == EBADMSG, "extended L2: an allocation bit in an "
      "unallocated cluster fails");
  ok (qk_image_read (img, buf, cs, 6 * cs) == 0 && buf[0] == 0
      && buf[cs - 1] == 0, "extended L2: all-zero allocated cluster reads "
      "zeros");
  ok (qk_image_read (img, buf, cs, 7 * cs) == 0 && buf[5] == 0,
      "extended L2: last cluster unallocated");

  ok (qk_image_map (img, 0, 4 * cs, collect, &x) == 0, "extended L2: map "
      "g0..g3");
  ok (ext_is (&x, 0, true, false, true, false, true, 5 * cs)
      && ext_is (&x, sc, true, true, false, false, true, 5 * cs + sc)
      && ext_is (&x, 2 * sc, true, false, true, false, true, 5 * cs + 2 * sc)
      && ext_is (&x, 3 * sc, false, true, false, false, true, 5 * cs + 3 * sc)
      && ext_is (&x, 31 * sc, true, false, true, false, true, 5 * cs + 31 * sc),
      "extended L2: subcluster extents of g0");
  ok (ext_is (&x, cs, true, true, false, false, false, 0)
      && ext_is (&x, cs + 16 * sc, false, true, false, false, false, 0),
      "extended L2: g1 zero plain, then unallocated");
  ok (ext_is (&x, 3 * cs, true, false, true, true, false, 0),
      "extended L2: g3 compressed");
  x.n = 0;
  ok (qk_image_map (img, 4 * cs, cs, collect, &x) == -1 && qk_get_error (),
      "extended L2: map of the invalid cluster fails with a message");
  free (buf);
  qk_image_close (img);
  b_free (&b);
}

/* ---- backing files through open_fn ---- */

struct fake_fs {
  const char *name;
  const uint8_t *data;
  size_t len;
  unsigned opens;
};

static struct qk_source *
fake_open (void *opaque, const char *path)
{
  struct fake_fs *fs = opaque;
  fs->opens++;
  if (fs->data && strcmp (path, fs->name) == 0)
    return qk_source_memory (fs->data, fs->len, path);
  errno = ENOENT;
  return NULL;
}

static void
set_backing (struct img *b, const char *name, const char *fmt)
{
  size_t pos = 112;
  if (fmt) {
    be32_put (b->p + pos, QK_EXT_BACKING_FORMAT);
    be32_put (b->p + pos + 4, strlen (fmt));
    memcpy (b->p + pos + 8, fmt, strlen (fmt));
    pos += 8 + ((strlen (fmt) + 7) & ~7U);
  }
  be64_put (b->p + pos, 0);
  pos += 8;
  memcpy (b->p + pos, name, strlen (name));
  be64_put (b->p + 8, pos);
  be32_put (b->p + 16, strlen (name));
}

static void
test_backing (void)
{
  struct img b;
  struct qk_image *img;
  uint8_t *base = xmalloc (64 << 10), *buf = xmalloc (64 << 10);
  struct fake_fs fs = { "dir/base.raw", base, 60000, 0 };
  struct qk_open_options o = { .open_fn = fake_open, .open_opaque = &fs };
  bool good;

  for (size_t i = 0; i < 64 << 10; i++)
    base[i] = (uint8_t) (i * 13 + 5);
  build_std (&b, 3, 0);
  set_backing (&b, "base.raw", "raw");
  /* unallocated clusters now read the backing file (past its end: 0) */
  for (uint64_t g = 0; g < 16; g++) {
    uint64_t e = be64_get (l2_slot (&b, HC_L2, g));
    if (e == 0)
      for (uint64_t i = 0; i < b.cs; i++) {
        uint64_t off = g * b.cs + i;
        b.exp[off] = off < 60000 ? base[off] : 0;
      }
  }
  img = qk_image_open_memory (b.p, b.len, "dir/top.qcow2", &o);
  ok (img && qk_image_backing (img) && qk_image_warning_count (img) == 0,
      "backing file opened through open_fn, relative to the image");
  if (img) {
    is_str (qk_image_backing_name (img), "base.raw", "backing name");
    is_str (qk_image_backing_format (img), "raw", "backing format");
    good = qk_image_read (img, buf, b.size, 0) == 0
           && memcmp (buf, b.exp, b.size) == 0;
    ok (good, "unallocated clusters read through to the backing file, zeros "
        "past its end");
    qk_image_close (img);
  }

  /* a missing backing file: opens, reads of it fail with a message */
  fs.data = NULL;
  img = qk_image_open_memory (b.p, b.len, "dir/top.qcow2", &o);
  ok (img && qk_image_warning_count (img) > 0
      && qk_image_unreadable_reason (img), "missing backing file: a warning "
      "and a reason");
  if (img) {
    ok (qk_image_read (img, buf, 4096, 0) == -1 && qk_get_error (),
        "missing backing file: reads fail with a message");
    qk_image_close (img);
  }

  /* a backing chain that loops (memory sources have no inode): the depth
   * limit stops it */
  fs.name = "dir/top.qcow2";
  fs.data = b.p;
  fs.len = b.len;
  fs.opens = 0;
  set_backing (&b, "top.qcow2", NULL);
  img = qk_image_open_memory (b.p, b.len, "dir/top.qcow2", &o);
  ok (img && qk_image_unreadable_reason (img) && fs.opens <= 300,
      "a backing loop ends at the depth limit (%u opens)", fs.opens);
  if (img) {
    ok (qk_image_read (img, buf, 4096, 2 * 4096) == -1 && qk_get_error (),
        "looping chain: reading an unallocated cluster fails with a message");
    qk_image_close (img);
  }
  o.max_chain_depth = 3;
  fs.opens = 0;
  img = qk_image_open_memory (b.p, b.len, "dir/top.qcow2", &o);
  ok (img && qk_image_unreadable_reason (img) && fs.opens == 3,
      "max_chain_depth 3: three backing opens");
  qk_image_close (img);

  /* protocol names are never opened */
  set_backing (&b, "nbd://evil:10809/x", NULL);
  fs.opens = 0;
  img = qk_image_open_memory (b.p, b.len, "dir/top.qcow2", &o);
  ok (img && fs.opens == 0 && qk_image_unreadable_reason (img),
      "a protocol backing name is not opened");
  qk_image_close (img);
  b_free (&b);
  free (base);
  free (buf);
}

/* ---- backing file names as QEMU reads them (qcow2_do_open) ---- */

static void
test_backing_names (void)
{
  struct img b;
  struct qk_image *img;
  struct fake_fs fs = { "dir/base.raw", NULL, 0, 0 };
  struct qk_open_options o = { .open_fn = fake_open, .open_opaque = &fs };

  build_std (&b, 3, 0);

  /* an offset with a name of 0 bytes: no backing file, nothing to say */
  be64_put (b.p + 8, 0x200);
  be32_put (b.p + 16, 0);
  img = qk_image_open_memory (b.p, b.len, "dir/top.qcow2", &o);
  ok (img && qk_image_backing_name (img) == NULL
      && qk_image_backing (img) == NULL && fs.opens == 0
      && qk_image_warning_count (img) == 0
      && qk_image_unreadable_reason (img) == NULL && read_matches (img, &b),
      "empty backing file name: no backing file, no warning, reads as "
      "without one (%s)", img && qk_image_warning_count (img)
      ? qk_image_warning (img, 0) : "");
  qk_image_close (img);

  /* the offset may be the cluster size when the name is empty */
  be64_put (b.p + 8, b.cs);
  img = qk_image_open_memory (b.p, b.len, "dir/top.qcow2", &o);
  ok (img && qk_image_backing_name (img) == NULL && fs.opens == 0
      && qk_image_warning_count (img) == 0
      && qk_image_unreadable_reason (img) == NULL
      && qk_image_extension_count (img) == 0 && read_matches (img, &b),
      "backing_file_offset == cluster size with size 0: accepted, no "
      "backing file (%s)", img && qk_image_warning_count (img)
      ? qk_image_warning (img, 0) : "");
  qk_image_close (img);

  /* ... and not one byte of name more */
  be32_put (b.p + 16, 1);
  img = qk_image_open_memory (b.p, b.len, "dir/top.qcow2", &o);
  ok (img && qk_image_unreadable_reason (img) && qk_image_warning_count (img)
      && fs.opens == 0, "backing_file_offset == cluster size with size 1: "
      "invalid");
  qk_image_close (img);
  be64_put (b.p + 8, b.cs + 1);
  be32_put (b.p + 16, 0);
  img = qk_image_open_memory (b.p, b.len, "dir/top.qcow2", &o);
  ok (img && qk_image_unreadable_reason (img) && qk_image_warning_count (img),
      "backing_file_offset == cluster size + 1 with size 0: invalid");
  qk_image_close (img);

  /* a name ending exactly at the end of cluster 0 */
  memcpy (b.p + b.cs - 8, "base.raw", 8);
  be64_put (b.p + 8, b.cs - 8);
  be32_put (b.p + 16, 8);
  fs.opens = 0;
  img = qk_image_open_memory (b.p, b.len, "dir/top.qcow2", &o);
  ok (img && qk_image_backing_name (img)
      && strcmp (qk_image_backing_name (img), "base.raw") == 0
      && fs.opens == 1, "a name ending at the end of cluster 0 is read "
      "(offset + size == cluster size)");
  qk_image_close (img);
  be32_put (b.p + 16, 9);
  img = qk_image_open_memory (b.p, b.len, "dir/top.qcow2", &o);
  ok (img && qk_image_backing_name (img) == NULL
      && qk_image_unreadable_reason (img), "one byte past it is invalid");
  qk_image_close (img);

  /* a name that starts with a NUL: QEMU's string is empty */
  b.p[b.cs - 8] = '\0';
  be32_put (b.p + 16, 8);
  fs.opens = 0;
  img = qk_image_open_memory (b.p, b.len, "dir/top.qcow2", &o);
  ok (img && qk_image_backing_name (img) == NULL && fs.opens == 0
      && qk_image_unreadable_reason (img) == NULL
      && qk_image_warning_count (img) == 1
      && strstr (qk_image_warning (img, 0), "NUL"),
      "a name starting with NUL: no backing file, one warning (%s)",
      img && qk_image_warning_count (img) ? qk_image_warning (img, 0) : "");
  qk_image_close (img);
  b_free (&b);
}

/* ---- the end of the header extensions (qcow2_read_extensions) ---- */

static void
test_extension_end (void)
{
  struct img b;
  struct qk_image *img;

  build_std (&b, 3, 0);
  be32_put (b.p + 112, QK_EXT_BACKING_FORMAT);
  be32_put (b.p + 116, 3);
  memcpy (b.p + 120, "raw", 3);
  be32_put (b.p + 128, QK_EXT_END);
  be32_put (b.p + 132, 4096);
  img = b_open (&b, QK_OPEN_NO_BACKING);
  ok (img && qk_image_extension_count (img) == 1
      && qk_image_warning_count (img) == 1
      && strstr (qk_image_warning (img, 0), "end marker")
      && qk_image_unreadable_reason (img) == NULL && read_matches (img, &b),
      "an end marker longer than the area: the extensions before it are "
      "kept, one warning (%s), reads fine", img && qk_image_warning_count
      (img) ? qk_image_warning (img, 0) : "");
  qk_image_close (img);
  be32_put (b.p + 132, 4096 - 136);
  img = b_open (&b, QK_OPEN_NO_BACKING);
  ok (img && qk_image_extension_count (img) == 1
      && qk_image_warning_count (img) == 0, "an end marker whose length "
      "fits: no warning");
  qk_image_close (img);
  /* the area ends at the backing file name */
  memcpy (b.p + 200, "base", 4);
  be64_put (b.p + 8, 200);
  be32_put (b.p + 16, 4);
  be32_put (b.p + 132, 200 - 136 + 1);
  img = b_open (&b, QK_OPEN_NO_BACKING);
  ok (img && qk_image_warning_count (img) == 1
      && strstr (qk_image_warning (img, 0), "end marker")
      && qk_image_backing_name (img)
      && strcmp (qk_image_backing_name (img), "base") == 0,
      "an end marker running into the backing file name: a warning");
  qk_image_close (img);
  b_free (&b);
}

/* ---- refcounts: an unaligned refcount block is corruption ---- */

static void
test_refcount_lookup (void)
{
  struct img b;
  struct qk_image *img;
  uint64_t rc = 99;

  build_std (&b, 3, 0);
  img = b_open (&b, 0);
  ok (img && qk_image_refcount (img, HC_L1, &rc) == 0 && rc == 1,
      "refcount of the L1 cluster: 1");
  ok (img && qk_image_refcount (img, 1ULL << 30, &rc) == 0 && rc == 0,
      "refcount of a cluster past the refcount table: 0");
  qk_image_close (img);

  be64_put (b.p + HC_REFTABLE * b.cs, HC_REFBLOCK * b.cs + 512);
  img = b_open (&b, 0);
  rc = 99;
  ok (img && qk_image_refcount (img, HC_L1, &rc) == -1
      && qk_get_errno () == EBADMSG && strstr (qk_get_error (), "aligned")
      && rc == 99, "refcount table entry with an unaligned refcount block: "
      "EBADMSG, nothing read (%s)", qk_get_error ());
  ok (img && read_matches (img, &b), "guest reads do not need it");
  {
    struct extents *x = xcalloc (sizeof *x);
    ok (img && qk_image_map (img, 0, b.size, collect, x) == 0 && x->n > 0,
        "map does not need it (metadata preallocation is then not "
        "detected, as QEMU)");
    free (x);
  }
  qk_image_close (img);
  /* reserved low bits are masked, as QEMU's REFT_OFFSET_MASK */
  be64_put (b.p + HC_REFTABLE * b.cs, HC_REFBLOCK * b.cs | 0x1ff);
  img = b_open (&b, 0);
  ok (img && qk_image_refcount (img, HC_L1, &rc) == 0 && rc == 1,
      "reserved bits 0-8 of the entry are ignored");
  qk_image_close (img);
  b_free (&b);
}

/* ---- LUKS ---- */

static void
put_luks (uint8_t *p, uint32_t key_bytes)
{
  memcpy (p, "LUKS\xba\xbe", 6);
  be16_put (p + 6, 1);
  memcpy (p + 8, "aes", 3);
  memcpy (p + 40, "xts-plain64", 11);
  memcpy (p + 72, "sha256", 6);
  be32_put (p + 104, 4040);
  be32_put (p + 108, key_bytes);
  be32_put (p + 164, 1000);
  memcpy (p + 168, "00000000-1111-2222-3333-444444444444", 36);
  for (int i = 0; i < 8; i++) {
    be32_put (p + 208 + 48 * i, i == 1 ? QK_LUKS_SLOT_ENABLED
                                       : QK_LUKS_SLOT_DISABLED);
    be32_put (p + 208 + 48 * i + 4, i == 1 ? 5000 : 0);
    be32_put (p + 208 + 48 * i + 40, 8 + 504 * i);
    be32_put (p + 208 + 48 * i + 44, 4000);
  }
}

static void
test_luks_image (void)
{
  struct img b;
  struct qk_image *img;
  const struct qk_luks *l;

  /* host cluster 11 (the snapshot table's, unused here) holds the header */
  build_std (&b, 3, 0);
  be32_put (b.p + 60, 0);
  be64_put (b.p + 64, 0);
  memset (b.p + 11 * b.cs, 0, b.cs);
  put_luks (b.p + 11 * b.cs, 64);
  be32_put (b.p + 32, QK_CRYPT_LUKS);
  be32_put (b.p + 112, QK_EXT_CRYPTO);
  be32_put (b.p + 116, 16);
  be64_put (b.p + 120, 11 * b.cs);
  be64_put (b.p + 128, 2068480);
  img = b_open (&b, 0);
  l = img ? qk_image_luks (img) : NULL;
  ok (l && l->offset == 11 * b.cs && l->length == 2068480
      && strcmp (l->cipher_alg ?: "", "aes-256") == 0
      && l->slot[1].active && !l->slot[0].active
      && l->slot[1].iterations == 5000 && l->payload_offset_sector == 4040,
      "LUKS image: the header is found through the extension and decoded");
  ok (img && qk_image_warning_count (img) == 0
      && qk_image_unreadable_reason (img), "no warning; guest data "
      "unreadable (encrypted)");
  qk_image_close (img);

  be64_put (b.p + 120, 11 * b.cs + 512);
  img = b_open (&b, 0);
  ok (img && qk_image_luks (img) == NULL && qk_image_warning_count (img) == 1
      && strstr (qk_image_warning (img, 0), "aligned"),
      "an unaligned LUKS header offset: not read, a warning");
  qk_image_close (img);
  be64_put (b.p + 120, 11 * b.cs);
  be64_put (b.p + 128, 591);
  img = b_open (&b, 0);
  ok (img && qk_image_luks (img) == NULL && qk_image_warning_count (img) == 1
      && strstr (qk_image_warning (img, 0), "shorter"),
      "a LUKS header area of 591 bytes: not read, a warning");
  qk_image_close (img);
  be64_put (b.p + 128, 592);
  be64_put (b.p + 120, 1ULL << 40);
  img = b_open (&b, 0);
  ok (img && qk_image_luks (img) == NULL && qk_image_warning_count (img) == 1,
      "a LUKS header past the end of the file: a warning");
  qk_image_close (img);
  be64_put (b.p + 120, 11 * b.cs);
  b.p[11 * b.cs] = 'X';
  img = b_open (&b, 0);
  ok (img && qk_image_luks (img) == NULL && qk_image_warning_count (img) == 1
      && strstr (qk_image_warning (img, 0), "magic"),
      "a LUKS header with a bad magic: a warning");
  qk_image_close (img);
  b.p[11 * b.cs] = 'L';
  be32_put (b.p + 11 * b.cs + 208 + 44, 0);
  img = b_open (&b, 0);
  ok (img && qk_image_luks (img) && qk_image_warning_count (img) == 1
      && strstr (qk_image_warning (img, 0), "stripes")
      && strstr (qk_image_warning (img, 0), "QEMU refuses"),
      "a corrupted key slot: decoded, with a warning (%s)",
      img && qk_image_warning_count (img) ? qk_image_warning (img, 0) : "");
  qk_image_close (img);
  /* not LUKS: the extension is not followed */
  be32_put (b.p + 32, QK_CRYPT_AES);
  img = b_open (&b, 0);
  ok (img && qk_image_luks (img) == NULL, "AES: no LUKS header");
  qk_image_close (img);
  b_free (&b);
}

/* ---- hostile variants ---- */

struct outcome {
  bool opened, raw;
  size_t warnings;
  bool unreadable;
  unsigned reads_ok, reads_failed, silent;  /* silent: failed, no message */
};

/* Open, read (bounded), map (bounded), and walk the raw tables and
 * snapshots; count what happened. */
static struct outcome
exercise (const uint8_t *p, size_t len, unsigned flags)
{
  struct qk_open_options o = { .flags = flags | QK_OPEN_NO_BACKING };
  struct outcome r = { 0 };
  struct qk_image *img = qk_image_open_memory (p, len, "hostile", &o);
  uint8_t *buf;
  uint64_t size, cs, n;

#define TRY(expr) \
  do { \
    if ((expr) == 0) \
      r.reads_ok++; \
    else { \
      r.reads_failed++; \
      if (qk_get_error () == NULL || !*qk_get_error ()) \
        r.silent++; \
    } \
  } while (0)

  if (img == NULL) {
    if (qk_get_error () == NULL || !*qk_get_error ())
      r.silent++;
    return r;
  }
  r.opened = true;
  r.raw = qk_image_header (img) == NULL;
  r.warnings = qk_image_warning_count (img);
  for (size_t i = 0; i < r.warnings; i++)
    if (qk_image_warning (img, i) == NULL || !*qk_image_warning (img, i))
      r.silent++;
  r.unreadable = qk_image_unreadable_reason (img) != NULL;
  size = qk_image_virtual_size (img);
  cs = qk_image_header (img) ? qk_image_header (img)->cluster_size : 4096;
  buf = xmalloc (cs);
  n = MIN (size / cs, 32);
  for (uint64_t i = 0; i < n; i++)
    TRY (qk_image_read (img, buf, cs, i * cs));
  if (size >= cs)
    TRY (qk_image_read (img, buf, cs, size - cs));
  {
    struct extents *x = xcalloc (sizeof *x);
    x->limit = 200;
    TRY (qk_image_map (img, 0, 64ULL << 20, collect, x) < 0 ? -1 : 0);
    free (x);
  }
  if (qk_image_header (img)) {
    uint32_t l1n;
    const uint64_t *l1 = qk_image_l1 (img, &l1n);
    uint64_t *w;
    size_t wn;
    uint32_t cn;
    for (uint32_t i = 0; l1 && i < l1n && i < 4; i++)
      if (l1[i] & QK_L1E_OFFSET_MASK) {
        w = NULL;
        TRY (qk_image_read_l2 (img, l1[i] & QK_L1E_OFFSET_MASK, &w, &wn));
        free (w);
      }
    w = NULL;
    if (qk_image_read_refcount_table (img, &w, &wn) == 0) {
      r.reads_ok++;
      for (size_t i = 0; i < wn && i < 4; i++)
        if (w[i] & QK_REFT_OFFSET_MASK) {
          uint64_t *rb = NULL;
          TRY (qk_image_read_refblock (img, w[i] & QK_REFT_OFFSET_MASK, &rb,
                                       &wn));
          free (rb);
          break;
        }
      free (w);
    }
    else
      r.reads_failed++;
    for (size_t i = 0; i < qk_image_snapshot_count (img) && i < 4; i++) {
      const struct qk_snapshot *s = qk_image_snapshot (img, i);
      w = NULL;
      TRY (qk_image_read_snapshot_l1 (img, i, &w, &cn));
      free (w);
      if (qk_image_select_snapshot (img, s->id) == 0) {
        TRY (qk_image_read (img, buf, MIN (cs, qk_image_virtual_size (img)),
                            0));
        qk_image_select_snapshot (img, NULL);
      }
    }
    for (size_t i = 0; i < qk_image_bitmap_count (img) && i < 4; i++) {
      w = NULL;
      TRY (qk_image_read_bitmap_table (img, i, &w, &cn));
      free (w);
    }
  }
#undef TRY
  free (buf);
  qk_image_close (img);
  return r;
}

/* The contract: open fails with a message, or succeeds with warnings;
 * nothing ever fails silently. */
static void
hostile (const char *what, const struct img *b, bool want_open)
{
  struct outcome r = exercise (b->p, b->len, 0);
  if (!r.opened)
    ok (!want_open && r.silent == 0, "%s: open fails with a message (%s)",
        what, qk_get_error ());
  else
    ok (want_open && (r.warnings > 0 || r.unreadable) && r.silent == 0,
        "%s: opens with %zu warning(s)%s; %u reads ok, %u failed with a "
        "message", what, r.warnings, r.unreadable ? ", unreadable" : "",
        r.reads_ok, r.reads_failed);
}

/* Open (no warnings needed: the damage is only seen when reading). */
static struct qk_image *
open_std_damaged (struct img *b)
{
  struct qk_image *img = b_open (b, QK_OPEN_NO_BACKING);
  if (img == NULL)
    printf ("#   open: %s\n", qk_get_error ());
  return img;
}

static bool
any_warning (const struct qk_image *img, const char *needle)
{
  for (size_t i = 0; i < qk_image_warning_count (img); i++)
    if (strstr (qk_image_warning (img, i), needle))
      return true;
  return false;
}

static void
test_hostile_header (void)
{
  struct img b;
  struct qk_image *img;
  uint8_t buf[4096];

  /* absurd l1_size */
  build_std (&b, 3, 0);
  be32_put (b.p + 36, 0xffffffff);
  hostile ("l1_size 0xffffffff", &b, true);
  img = b_open (&b, 0);
  ok (img && qk_image_unreadable_reason (img) && any_warning (img, "L1")
      && qk_image_read (img, buf, 512, 0) == -1 && qk_get_error (),
      "l1_size 0xffffffff: warned, unreadable, reads fail with a message");
  qk_image_close (img);
  be32_put (b.p + 36, 0x800000);   /* at the limit, but past EOF */
  hostile ("l1_size 0x800000 (64 MiB, past EOF)", &b, true);
  be32_put (b.p + 36, 0x800001);
  hostile ("l1_size 0x800001", &b, true);
  be32_put (b.p + 36, 0);
  hostile ("l1_size 0 for a 64k disk", &b, true);
  img = b_open (&b, 0);
  ok (img && qk_image_read (img, buf, 4096, 0) == 0 && buf[0] == 0,
      "l1_size 0: opens with a warning, the disk reads as zeros");
  qk_image_close (img);
  b_free (&b);

  /* snapshots */
  build_std (&b, 3, 0);
  be32_put (b.p + 60, 0xffffffff);
  hostile ("nb_snapshots 0xffffffff", &b, true);
  img = b_open (&b, 0);
  ok (img && !qk_image_snapshots_ok (img) && read_matches (img, &b),
      "nb_snapshots 0xffffffff: snapshot table not ok, guest reads fine");
  qk_image_close (img);
  be32_put (b.p + 60, 1);
  be64_put (b.p + 64, 1ULL << 40);
  hostile ("snapshots_offset past EOF", &b, true);
  be64_put (b.p + 64, 11 * b.cs + 8);
  hostile ("snapshots_offset unaligned", &b, true);
  be64_put (b.p + 64, 11 * b.cs);
  be32_put (b.p + 11 * b.cs + 36, 0xfffffff0);
  hostile ("snapshot extra_data_size 0xfffffff0", &b, true);
  be32_put (b.p + 11 * b.cs + 36, 16);
  be32_put (b.p + 11 * b.cs + 8, 0x7fffffff);
  img = b_open (&b, 0);
  ok (img && qk_image_select_snapshot (img, "snap1") == -1 && qk_get_error ()
      && read_matches (img, &b), "snapshot with an absurd l1_size: select "
      "fails with a message, active reads fine");
  qk_image_close (img);
  be32_put (b.p + 11 * b.cs + 8, 0x100000);
  img = b_open (&b, 0);
  ok (img && qk_image_select_snapshot (img, "snap1") == -1 && qk_get_error (),
      "snapshot L1 (8 MiB) past EOF: select fails");
  qk_image_close (img);
  be32_put (b.p + 11 * b.cs + 8, 1);
  be64_put (b.p + 11 * b.cs + 48, UINT64_MAX);
  img = b_open (&b, 0);
  ok (img && qk_image_select_snapshot (img, "snap1") == 0
      && qk_image_read (img, buf, 4096, 1ULL << 50) == 0 && buf[0] == 0,
      "snapshot disk_size UINT64_MAX: reads far out return zeros");
  qk_image_close (img);
  b_free (&b);

  /* header_length, refcount_order, cluster_bits */
  build_std (&b, 3, 0);
  be32_put (b.p + 100, 0xfffffff0);
  hostile ("header_length 0xfffffff0", &b, false);
  be32_put (b.p + 100, 4096 + 8);
  hostile ("header_length cluster size + 8", &b, false);
  be32_put (b.p + 100, 4096);
  img = b_open (&b, 0);
  ok (img && read_matches (img, &b), "header_length == cluster size: opens "
      "and reads");
  qk_image_close (img);
  be32_put (b.p + 100, 112);
  be32_put (b.p + 96, 7);
  hostile ("refcount_order 7", &b, true);
  img = b_open (&b, 0);
  ok (img && any_warning (img, "refcount_order") && read_matches (img, &b),
      "refcount_order 7: a warning, reads fine (reading never needs "
      "refcounts)");
  qk_image_close (img);
  be32_put (b.p + 96, 0xffffffff);
  img = b_open (&b, 0);
  ok (img && read_matches (img, &b), "refcount_order 0xffffffff: reads fine");
  qk_image_close (img);
  be32_put (b.p + 96, 4);
  {
    static const uint32_t cbs[] = { 0, 8, 22, 31, 32, 63, 64, 0xffffffff };
    for (size_t i = 0; i < sizeof cbs / sizeof cbs[0]; i++) {
      char what[64];
      be32_put (b.p + 20, cbs[i]);
      snprintf (what, sizeof what, "cluster_bits %u", cbs[i]);
      hostile (what, &b, false);
    }
    be32_put (b.p + 20, 12);
  }
  be32_put (b.p + 4, 4);
  hostile ("version 4", &b, false);
  be32_put (b.p + 4, 3);

  /* virtual size */
  be64_put (b.p + 24, 0x7fffffffffffffffULL);
  hostile ("size 2^63-1 with a one-entry L1", &b, true);
  img = b_open (&b, 0);
  ok (img && qk_image_read (img, buf, 4096, 0x7fffffffffffffffULL - 4096 - 7)
      == 0 && buf[0] == 0, "size 2^63-1: a read near the end returns zeros");
  qk_image_close (img);
  be64_put (b.p + 24, UINT64_MAX);
  hostile ("size 2^64-1 with a one-entry L1", &b, true);
  img = b_open (&b, 0);
  ok (img && qk_image_read (img, buf, 4096, UINT64_MAX - 4096) == 0
      && buf[0] == 0 && qk_image_read (img, buf, 4096, UINT64_MAX - 4095) == -1,
      "size 2^64-1: the last 4096 bytes read as zeros, one more fails");
  qk_image_close (img);
  be64_put (b.p + 24, 0);
  img = b_open (&b, 0);
  ok (img && qk_image_read (img, buf, 0, 0) == 0
      && qk_image_read (img, buf, 1, 0) == -1, "size 0: nothing to read");
  qk_image_close (img);
  be64_put (b.p + 24, b.size);

  /* feature bits */
  be64_put (b.p + 72, 1ULL << 10);
  img = b_open (&b, 0);
  ok (img && qk_image_unreadable_reason (img) && any_warning (img, "10")
      && qk_image_read (img, buf, 512, 0) == -1 && qk_get_error (),
      "unknown incompatible bit 10: a warning naming it, reads refused");
  qk_image_close (img);
  img = b_open (&b, QK_OPEN_FORCE);
  ok (img && qk_image_unreadable_reason (img) == NULL && read_matches (img, &b),
      "unknown incompatible bit 10 with QK_OPEN_FORCE: reads");
  qk_image_close (img);
  /* a feature name table names it */
  {
    uint8_t *e = b.p + 112;
    be32_put (e, QK_EXT_FEATURE_TABLE);
    be32_put (e + 4, 48);
    e[8] = 0;
    e[9] = 10;
    memcpy (e + 10, "shiny new feature", 17);
    img = b_open (&b, 0);
    ok (img && any_warning (img, "shiny new feature")
        && strcmp (qk_image_feature_name (img, 0, 10) ?: "",
                   "shiny new feature") == 0,
        "the feature name table names the unknown bit");
    qk_image_close (img);
    memset (e, 0, 64);
  }
  be64_put (b.p + 72, QK_INCOMPAT_DIRTY | QK_INCOMPAT_CORRUPT);
  be64_put (b.p + 88, 0xfffffffffffffffcULL);
  be64_put (b.p + 80, ~0ULL);
  img = b_open (&b, 0);
  ok (img && qk_image_unreadable_reason (img) == NULL && read_matches (img, &b),
      "dirty + corrupt + unknown compatible and autoclear bits: reads fine");
  qk_image_close (img);
  be64_put (b.p + 72, 0);
  be64_put (b.p + 80, 0);
  be64_put (b.p + 88, 0);

  /* refcount structures are never needed for reading */
  be64_put (b.p + 48, 0x123);
  be32_put (b.p + 56, 0xffffffff);
  img = b_open (&b, 0);
  ok (img && read_matches (img, &b), "refcount table unaligned with "
      "0xffffffff clusters: reads fine");
  qk_image_close (img);
  {
    struct outcome r = exercise (b.p, b.len, 0);
    ok (r.opened && r.silent == 0 && r.reads_failed >= 1,
        "refcount table absurd: opens, table reads fail with a message");
  }
  be64_put (b.p + 48, HC_REFTABLE * b.cs);
  be32_put (b.p + 56, 1);
  be64_put (b.p + HC_REFTABLE * b.cs, HC_REFTABLE * b.cs);
  img = b_open (&b, 0);
  ok (img && read_matches (img, &b), "refcount table pointing at itself: "
      "reads fine");
  qk_image_close (img);
  memset (b.p + HC_REFTABLE * b.cs, 0, b.cs);
  img = b_open (&b, 0);
  ok (img && read_matches (img, &b), "refcount table zeroed: reads fine");
  qk_image_close (img);

  /* encryption, compression type, data file */
  be32_put (b.p + 32, 2);
  hostile ("crypt_method LUKS without the extension", &b, true);
  be32_put (b.p + 32, 0x77);
  hostile ("crypt_method 0x77", &b, true);
  be32_put (b.p + 32, 0);
  b.p[104] = 2;
  hostile ("compression_type 2", &b, true);
  b.p[104] = 0;
  be64_put (b.p + 72, QK_INCOMPAT_DATA_FILE);
  hostile ("external data file bit without a name", &b, true);
  be64_put (b.p + 72, 0);

  /* extensions */
  be32_put (b.p + 112, 0x12345678);
  be32_put (b.p + 116, 0x00ffffff);
  hostile ("extension length overrunning the cluster", &b, true);
  img = b_open (&b, 0);
  ok (img && read_matches (img, &b), "damaged extension area: reads fine");
  qk_image_close (img);
  be32_put (b.p + 112, QK_EXT_BITMAPS);
  be32_put (b.p + 116, 24);
  be32_put (b.p + 120, 0xffffffff);
  be64_put (b.p + 128, 1ULL << 40);
  be64_put (b.p + 136, 5 * b.cs);
  hostile ("bitmaps extension: 0xffffffff bitmaps", &b, true);
  be32_put (b.p + 120, 1);
  hostile ("bitmaps extension: 1 TiB directory", &b, true);
  be64_put (b.p + 128, 64ULL << 20);
  hostile ("bitmaps extension: 64 MiB directory past EOF", &b, true);
  be64_put (b.p + 128, 32);
  be64_put (b.p + 136, 5 * b.cs);  /* directory over data: garbage entries */
  {
    struct outcome r = exercise (b.p, b.len, 0);
    ok (r.opened && r.silent == 0, "bitmap directory over guest data: "
        "opens (%zu warnings), nothing silent", r.warnings);
  }
  be32_put (b.p + 112, QK_EXT_BACKING_FORMAT);
  be32_put (b.p + 116, 4000);
  hostile ("backing format extension of 4000 bytes", &b, true);
  memset (b.p + 112, 0, 64);

  /* backing file name */
  be64_put (b.p + 8, 4000);
  be32_put (b.p + 16, 2000);
  hostile ("backing file name past the first cluster", &b, true);
  be64_put (b.p + 8, 0xffffffffffffff00ULL);
  be32_put (b.p + 16, 0x100);
  hostile ("backing_file_offset near 2^64", &b, true);
  be64_put (b.p + 8, 0);
  be32_put (b.p + 16, 0);
  b_free (&b);
}

static void
test_hostile_tables (void)
{
  struct img b;
  struct qk_image *img;
  uint8_t *buf = xmalloc (1 << 16);
  uint64_t l1e;

  build_std (&b, 3, 0);
  l1e = be64_get (b.p + HC_L1 * b.cs);

  /* L1 entries */
  be64_put (b.p + HC_L1 * b.cs, (1ULL << 40) | QK_OFLAG_COPIED);
  img = open_std_damaged (&b);
  ok (img && qk_image_read (img, buf, b.size, 0) == 0 && buf[0] == 0
      && buf[b.size - 1] == 0, "L1 entry past EOF: the disk reads as zeros");
  qk_image_close (img);
  be64_put (b.p + HC_L1 * b.cs, HC_L2 * b.cs + 0x200);
  img = open_std_damaged (&b);
  ok (img && qk_image_read (img, buf, 4096, 0) == -1
      && qk_get_errno () == EBADMSG && qk_get_error (),
      "L1 entry unaligned: reads fail with EBADMSG");
  qk_image_close (img);
  be64_put (b.p + HC_L1 * b.cs, l1e | 0x7f00000000000000ULL);
  img = open_std_damaged (&b);
  ok (img && read_matches (img, &b), "L1 entry with reserved bits: the "
      "offset still reads");
  qk_image_close (img);
  be64_put (b.p + HC_L1 * b.cs, HC_L1 * b.cs);
  img = open_std_damaged (&b);
  ok (img && qk_image_read (img, buf, 4096, 0) == 0
      && memcmp (buf, b.p + HC_L1 * b.cs, 4096) == 0,
      "L1 entry pointing at the L1 itself: the L1 is read as an L2 whose "
      "entry 0 maps guest 0 to the L1 cluster");
  qk_image_close (img);
  be64_put (b.p + HC_L1 * b.cs, l1e);

  /* L2 entries */
  {
    uint8_t *e0 = l2_slot (&b, HC_L2, 0);
    uint64_t saved = be64_get (e0);

    be64_put (e0, HC_REFTABLE * b.cs | QK_OFLAG_COPIED);
    img = open_std_damaged (&b);
    ok (img && qk_image_read (img, buf, 4096, 0) == 0
        && memcmp (buf, b.p + HC_REFTABLE * b.cs, 4096) == 0,
        "L2 entry pointing at the refcount table: returns its bytes");
    qk_image_close (img);
    be64_put (e0, HC_L2 * b.cs);
    img = open_std_damaged (&b);
    ok (img && qk_image_read (img, buf, 4096, 0) == 0
        && be64_get (buf) == (HC_L2 * b.cs), "L2 entry pointing at its own "
        "table: returns it");
    qk_image_close (img);
    be64_put (e0, 5 * b.cs + 0x200);
    img = open_std_damaged (&b);
    ok (img && qk_image_read (img, buf, 4096, 0) == -1
        && qk_get_errno () == EBADMSG
        && qk_image_read (img, buf, 4096, 3 * b.cs) == 0
        && memcmp (buf, b.exp + 3 * b.cs, 4096) == 0,
        "L2 entry unaligned: that cluster fails with EBADMSG, others read");
    qk_image_close (img);
    be64_put (e0, (1ULL << 55) | QK_OFLAG_COPIED);
    img = open_std_damaged (&b);
    ok (img && qk_image_read (img, buf, 4096, 0) == 0 && buf[0] == 0,
        "L2 entry at 2^55 (past EOF): zeros");
    qk_image_close (img);
    be64_put (e0, QK_OFLAG_COMPRESSED | (1ULL << 50));
    img = open_std_damaged (&b);
    ok (img && qk_image_read (img, buf, 4096, 0) == -1
        && qk_get_errno () == EBADMSG, "compressed descriptor past EOF: "
        "EBADMSG");
    qk_image_close (img);
    be64_put (e0, QK_OFLAG_COMPRESSED | (15ULL << 58) | (5 * b.cs + 3));
    img = open_std_damaged (&b);
    ok (img && qk_image_read (img, buf, 4096, 0) == -1
        && qk_get_errno () == EBADMSG, "compressed descriptor over "
        "uncompressed data: EBADMSG");
    qk_image_close (img);
    be64_put (e0, QK_OFLAG_COMPRESSED | (15ULL << 58)
              | (b.len - 100));
    img = open_std_damaged (&b);
    ok (img && qk_image_read (img, buf, 4096, 0) == -1,
        "compressed descriptor running past EOF fails cleanly");
    qk_image_close (img);
    be64_put (e0, ~0ULL);
    img = open_std_damaged (&b);
    ok (img && qk_image_read (img, buf, 4096, 0) == -1 && qk_get_error (),
        "L2 entry all ones (compressed, absurd offset) fails cleanly");
    qk_image_close (img);
    be64_put (e0, saved);
  }

  /* an extended L2 header over standard L2 tables (misread entries) */
  be64_put (b.p + 72, QK_INCOMPAT_EXTL2);
  {
    struct outcome r = exercise (b.p, b.len, 0);
    ok (r.opened && r.silent == 0, "extended L2 bit over standard tables: "
        "%u reads ok, %u failed with a message", r.reads_ok, r.reads_failed);
  }
  be32_put (b.p + 20, 9);
  be64_put (b.p + 40, 3 * 512);
  {
    struct outcome r = exercise (b.p, b.len, 0);
    ok (r.opened && r.warnings > 0 && r.silent == 0, "extended L2 with "
        "512-byte clusters: a warning, nothing silent");
  }
  b_free (&b);
  free (buf);
}

/* Mapping a whole disk whose virtual size is far beyond its L1 table must
 * be quick: everything past the L1 is unallocated. Run in a child with an
 * alarm, so that a hang is one failed assertion. */
static int
count_extent (void *opaque, const struct qk_extent *e)
{
  (void) e;
  return ++*(unsigned *) opaque > 1000;
}

static void
test_map_huge (void)
{
  static const uint64_t sizes[] = { 0x7fffffffffffffffULL, 1ULL << 50 };
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    struct img b;
    pid_t pid;
    int st = 0;

    build_std (&b, 3, 0);
    be64_put (b.p + 24, sizes[i]);
    fflush (stdout);
    pid = fork ();
    if (pid == 0) {
      struct qk_image *img = b_open (&b, 0);
      unsigned n = 0;
      alarm (3);
      _exit (img && qk_image_map (img, 0, UINT64_MAX, count_extent, &n) == 0
             ? 0 : 1);
    }
    waitpid (pid, &st, 0);
    ok (WIFEXITED (st) && WEXITSTATUS (st) == 0, "virtual size 0x%" PRIx64
        " with a one-entry L1: the whole disk maps in under 3 s (%s)",
        sizes[i], WIFSIGNALED (st) ? (WTERMSIG (st) == SIGALRM ? "timed out"
                                      : "killed") : "finished");
    b_free (&b);
  }
}

/* Every truncation of the standard image. */
static void
test_truncated (void)
{
  struct img b;
  unsigned opened = 0, failed = 0, bad = 0, raw = 0;
  size_t lens[512], nl = 0;

  build_std (&b, 3, 0);
  for (size_t l = 0; l <= 130; l++)
    lens[nl++] = l;
  for (size_t k = 1; k <= STD_CLUSTERS; k++) {
    lens[nl++] = k * b.cs - 1;
    lens[nl++] = k * b.cs;
    if (k < STD_CLUSTERS)
      lens[nl++] = k * b.cs + 1;
    lens[nl++] = k * b.cs - 512 + 100;
  }
  for (size_t i = 0; i < nl; i++) {
    size_t l = lens[i];
    uint8_t *c = xmalloc (l);
    struct outcome r;

    memcpy (c, b.p, l);
    r = exercise (c, l, 0);
    if (r.silent)
      bad++;
    if (!r.opened) {
      failed++;
      if (l >= 112)
        bad++;           /* the header is there: must open */
    }
    else {
      opened++;
      if (r.raw)
        raw++;
      /* up to the end of the snapshot entry, something is missing that
       * open reads: it must say so */
      else if (l < 11 * b.cs + 62 && r.warnings == 0 && !r.unreadable) {
        printf ("#   truncated to %zu: no warning\n", l);
        bad++;
      }
    }
    free (c);
  }
  ok (bad == 0 && raw == 4, "%zu truncations: %u open (%u as raw: fewer than "
      "4 bytes), %u fail with a message; none silent (%u bad)", nl, opened,
      raw, failed, bad);
  b_free (&b);
}

/* Random damage to the metadata clusters of the standard image. */
static void
test_random_damage (unsigned iters)
{
  struct img b;
  uint8_t *c;
  unsigned opened = 0, silent = 0, readsok = 0, readsfail = 0;

  build_std (&b, 3, 0);
  c = xmalloc (b.len);
  for (unsigned it = 0; it < iters; it++) {
    struct outcome r;
    unsigned nflips = 1 + rnd () % 8;
    memcpy (c, b.p, b.len);
    for (unsigned k = 0; k < nflips; k++) {
      /* header fields, L1, L2, snapshot table, or anywhere */
      static const uint64_t areas[][2] = {
        { 0, 112 }, { 112, 256 }, { 3 << 12, 64 }, { 4 << 12, 128 },
        { 11 << 12, 64 }, { 12 << 12, 16 }, { 0, 15 << 12 },
      };
      unsigned a = rnd () % 7;
      uint64_t off = areas[a][0] + rnd () % areas[a][1];
      if (rnd () % 2)
        c[off] ^= 1U << (rnd () % 8);
      else
        c[off] = (uint8_t) rnd ();
    }
    r = exercise (c, b.len, (rnd () % 4) ? 0 : QK_OPEN_FORCE);
    opened += r.opened;
    silent += r.silent;
    readsok += r.reads_ok;
    readsfail += r.reads_failed;
  }
  ok (silent == 0, "%u randomly damaged images: %u opened, %u reads ok, %u "
      "failed with a message, none silent", iters, opened, readsok,
      readsfail);
  free (c);
  b_free (&b);
}

int
main (void)
{
  const char *env = getenv ("QK_FUZZ_SCALE");
  unsigned scale = env ? (unsigned) atoi (env) : 1;
  struct rusage ru;

  if (scale == 0)
    scale = 1;
#if !defined (__SANITIZE_ADDRESS__)
  {
    /* Prove that no hostile image makes the library allocate absurd
     * amounts: 1 GiB of address space in all. (ASan needs terabytes of
     * shadow mappings, so not there.) */
    struct rlimit rl = { 1ULL << 30, 1ULL << 30 };
    ok (setrlimit (RLIMIT_AS, &rl) == 0, "address space limited to 1 GiB");
  }
#else
  /* the same number of assertions in every build (CI compares them) */
  printf ("ok %d - address space limited to 1 GiB # SKIP ASan needs "
          "terabytes of shadow mappings\n", ++tap_n);
#endif

  test_std (3, QK_COMPRESSION_DEFLATE);
  test_std (3, QK_COMPRESSION_ZSTD);
  test_std (2, QK_COMPRESSION_DEFLATE);
  test_extl2 ();
  test_backing ();
  test_backing_names ();
  test_extension_end ();
  test_refcount_lookup ();
  test_luks_image ();
  test_hostile_header ();
  test_hostile_tables ();
  test_truncated ();
  test_map_huge ();
  test_random_damage (3000 * scale);

  if (getrusage (RUSAGE_SELF, &ru) == 0)
    ok (ru.ru_maxrss < 512 * 1024, "peak resident memory %ld KiB (< 512 "
        "MiB)", ru.ru_maxrss);
  return tap_done ();
}
