/* A structure-aware mutator for the qcow2 harnesses (fuzz-image,
 * fuzz-read, fuzz-check, fuzz-chain, fuzz-repair), linked into their
 * libFuzzer builds only (the *-nomut binaries are the first four without
 * it, to measure it; see doc/FUZZING.md).
 *
 * It finds the qcow2 images in the input (at the start, at the half where
 * the fake file system of fuzz.h serves backing files, or at the start of
 * each fake file of a fuzz-chain input), decodes the header of one (v2 or
 * v3) and follows it to the structures it points to: header extensions,
 * the backing file name, the L1 table and the L2 tables it reaches, the
 * refcount table and refcount blocks, the snapshot table, the bitmap
 * directory and bitmap tables. Then it changes one to a few fields of
 * those to values that matter: 0, 1, all ones, limits and one past them,
 * powers of two, unaligned values, and the offsets of the other
 * structures (so tables overlap, point at the header, at each other, past
 * the end), flags and reserved bits, compressed-cluster descriptors,
 * subcluster bitmaps, extension types and lengths, backing names that
 * loop, climb, are missing or are json:/protocol names. A fraction of the
 * time (and always when no image is recognised) it leaves the work to
 * libFuzzer's own byte-level mutations (LLVMFuzzerMutate).
 *
 * The mutator itself is not instrumented for coverage, so cov: and ft:
 * count the library only, as in the builds without it. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "chainfs.h"

size_t LLVMFuzzerMutate (uint8_t *data, size_t size, size_t max_size);
size_t LLVMFuzzerCustomMutator (uint8_t *data, size_t size, size_t max_size,
                                unsigned int seed);
size_t LLVMFuzzerCustomCrossOver (const uint8_t *d1, size_t s1,
                                  const uint8_t *d2, size_t s2, uint8_t *out,
                                  size_t max_out, unsigned int seed);

#ifdef __clang__
#pragma clang attribute push (__attribute__ ((no_sanitize ("coverage"))), \
                              apply_to = function)
#endif

/* Per cent of calls left to LLVMFuzzerMutate alone. */
#define BYTE_LEVEL_PERCENT 20

/* ---- random numbers (splitmix64) ---- */

struct rng {
  uint64_t s;
};

static uint64_t
rnd (struct rng *r)
{
  uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static uint64_t
below (struct rng *r, uint64_t n)
{
  return n ? rnd (r) % n : 0;
}

static bool
chance (struct rng *r, unsigned percent)
{
  return below (r, 100) < percent;
}

#define PICK(r, arr) ((arr)[below ((r), sizeof (arr) / sizeof (arr)[0])])

/* ---- the image being mutated ---- */

#define MAX_OFFS 96

struct img {
  uint8_t *p;               /* its first byte */
  size_t len;               /* bytes of it in the input */
  const char *self;         /* its fake file name (chain inputs) */
  uint32_t version;
  uint32_t cluster_bits;
  uint64_t cs;
  uint64_t size;
  uint64_t l1_off;
  uint32_t l1_size;
  uint64_t rt_off;
  uint32_t rt_clusters;
  uint32_t nb_snap;
  uint64_t snap_off;
  uint64_t incompat;
  uint32_t refcount_order;
  uint32_t hlen;
  uint64_t ext_start, ext_end;   /* the extension area in cluster 0 */
  bool extl2;
  uint64_t offs[MAX_OFFS];  /* offsets of the structures found */
  size_t noffs;
};

static uint64_t
get (const struct img *im, uint64_t off, unsigned width)
{
  uint64_t v = 0;
  if (off > im->len || width > im->len - off)
    return 0;
  for (unsigned i = 0; i < width; i++)
    v = v << 8 | im->p[off + i];
  return v;
}

static void
put (struct img *im, uint64_t off, unsigned width, uint64_t v)
{
  if (off > im->len || width > im->len - off)
    return;
  for (unsigned i = width; i-- > 0; v >>= 8)
    im->p[off + i] = v & 0xff;
}

static bool
inside (const struct img *im, uint64_t off, uint64_t n)
{
  return off <= im->len && n <= im->len - off;
}

static void
add_off (struct img *im, uint64_t off)
{
  if (im->noffs < MAX_OFFS)
    im->offs[im->noffs++] = off;
}

static bool
decode (struct img *im)
{
  if (im->len < 72 || get (im, 0, 4) != 0x514649fbU)
    return false;
  im->version = get (im, 4, 4);
  im->cluster_bits = get (im, 20, 4);
  if (im->cluster_bits < 9 || im->cluster_bits > 30)
    im->cluster_bits = 16;    /* keep going on a broken one */
  im->cs = 1ULL << im->cluster_bits;
  im->size = get (im, 24, 8);
  im->l1_size = get (im, 36, 4);
  im->l1_off = get (im, 40, 8);
  im->rt_off = get (im, 48, 8);
  im->rt_clusters = get (im, 56, 4);
  im->nb_snap = get (im, 60, 4);
  im->snap_off = get (im, 64, 8);
  if (im->version >= 3 && im->len >= 104) {
    im->incompat = get (im, 72, 8);
    im->refcount_order = get (im, 96, 4);
    im->hlen = get (im, 100, 4);
  }
  else {
    im->refcount_order = 4;
    im->hlen = 72;
  }
  im->extl2 = im->incompat & (1ULL << 4);
  im->ext_start = im->hlen < 72 ? 72 : im->hlen;
  im->ext_end = im->cs < im->len ? im->cs : im->len;
  im->noffs = 0;
  add_off (im, 0);
  add_off (im, im->cs);
  add_off (im, im->l1_off);
  add_off (im, im->rt_off);
  add_off (im, im->snap_off);
  for (uint32_t i = 0; i < im->l1_size && i < 16; i++) {
    uint64_t e = get (im, im->l1_off + 8ULL * i, 8) & 0x00fffffffffffe00ULL;
    if (e)
      add_off (im, e);
  }
  for (uint32_t i = 0; i < 16; i++) {
    uint64_t e = get (im, im->rt_off + 8ULL * i, 8) & ~0x1ffULL;
    if (e)
      add_off (im, e);
  }
  return true;
}

/* ---- interesting values ---- */

static uint64_t
some_offset (struct rng *r, const struct img *im)
{
  uint64_t clusters = im->len / im->cs + 1;

  switch (below (r, 12)) {
  case 0: case 1: case 2: case 3:
    return im->offs[below (r, im->noffs)];
  case 4:
    return im->offs[below (r, im->noffs)] + PICK (r, ((const uint64_t[]) {
      1, 8, 512, im->cs / 2, im->cs - 8, im->cs }));
  case 5:
    return below (r, clusters) * im->cs;      /* some cluster in the file */
  case 6:
    return (im->len + im->cs - 1) / im->cs * im->cs;  /* just past the end */
  case 7:
    return im->len / im->cs * im->cs + PICK (r, ((const uint64_t[]) {
      im->cs, 2 * im->cs, 1ULL << 30, 1ULL << 40 }));
  case 8:
    return PICK (r, ((const uint64_t[]) {
      0, 1, 0x1ff, 0x200, 0xfffffffffffffe00ULL, 0x00fffffffffffe00ULL,
      1ULL << 55, 1ULL << 56, 1ULL << 62, 1ULL << 63, UINT64_MAX,
      INT64_MAX, 0x100000000ULL }));
  case 9:
    return (below (r, clusters) * im->cs) | (rnd (r) & 0x1ff);
  case 10:
    return im->len - (im->len ? 1 : 0);
  default:
    return rnd (r);
  }
}

static uint64_t
some_count (struct rng *r, uint64_t cur)
{
  switch (below (r, 6)) {
  case 0:
    return PICK (r, ((const uint64_t[]) {
      0, 1, 2, 3, 7, 8, 0x7fffffff, 0x80000000, 0xffffffff, 0xfffffffe }));
  case 1:
    return PICK (r, ((const uint64_t[]) {
      /* the limits here and in QEMU, and one past them */
      65535, 65536, 65537, 131072, 131073, 1024, 1025, 4194304, 4194305,
      8388608, 8388609, 0x8000000, 0x8000001, 16777216, 2097152 }));
  case 2:
    return cur + 1;
  case 3:
    return cur ? cur - 1 : 0;
  case 4:
    return 1ULL << below (r, 32);
  default:
    return cur * 2 + below (r, 2);
  }
}

static uint64_t
some_size (struct rng *r, const struct img *im)
{
  switch (below (r, 4)) {
  case 0:
    return PICK (r, ((const uint64_t[]) {
      0, 1, 511, 512, 4096, 1ULL << 30, 1ULL << 40, 1ULL << 50, 1ULL << 62,
      1ULL << 63, INT64_MAX, UINT64_MAX, 0xffffffffULL }));
  case 1:
    return im->size + PICK (r, ((const uint64_t[]) {
      1, 512, im->cs, (uint64_t) -1, (uint64_t) -512 }));
  case 2:
    return im->size * 2;
  default:
    return im->cs * (im->cs / 8) * below (r, 4);  /* L2 coverage multiples */
  }
}

static uint64_t
flip_bits (struct rng *r, uint64_t v, uint64_t known)
{
  switch (below (r, 5)) {
  case 0:
    return v ^ (1ULL << below (r, 64));
  case 1:
    return v ^ (1ULL << below (r, 8));
  case 2:
    return v | known;
  case 3:
    return 0;
  default:
    return UINT64_MAX;
  }
}

/* ---- the header ---- */

static void
mut_header (struct rng *r, struct img *im)
{
  switch (below (r, 19)) {
  case 0:
    put (im, 4, 4, PICK (r, ((const uint64_t[]) { 1, 2, 3, 4, 0xffffffff })));
    break;
  case 1:                                       /* backing_file_offset */
    put (im, 8, 8, PICK (r, ((const uint64_t[]) {
      0, im->ext_end, im->hlen, im->cs - 1, im->cs, im->cs - 16, 72,
      UINT64_MAX })));
    break;
  case 2:                                       /* backing_file_size */
    put (im, 16, 4, PICK (r, ((const uint64_t[]) {
      0, 1, 1023, 1024, im->cs, 0xffffffff, get (im, 16, 4) + 1 })));
    break;
  case 3:                                       /* cluster_bits */
    put (im, 20, 4, PICK (r, ((const uint64_t[]) {
      0, 8, 9, 10, 12, 16, 20, 21, 22, 30, 31, 32, 63, 64, 0xffffffff })));
    break;
  case 4:                                       /* size */
    put (im, 24, 8, some_size (r, im));
    break;
  case 5:                                       /* crypt_method */
    put (im, 32, 4, PICK (r, ((const uint64_t[]) { 0, 1, 2, 3, 0xffffffff })));
    break;
  case 6:                                       /* l1_size */
    put (im, 36, 4, some_count (r, im->l1_size));
    break;
  case 7:
    put (im, 40, 8, some_offset (r, im));
    break;
  case 8:
    put (im, 48, 8, some_offset (r, im));
    break;
  case 9:                                       /* refcount_table_clusters */
    put (im, 56, 4, some_count (r, im->rt_clusters));
    break;
  case 10:                                      /* nb_snapshots */
    put (im, 60, 4, some_count (r, im->nb_snap));
    break;
  case 11:
    put (im, 64, 8, some_offset (r, im));
    break;
  case 12:                                      /* incompatible_features */
    put (im, 72, 8, flip_bits (r, get (im, 72, 8), 0x1f));
    break;
  case 13:                                      /* compatible_features */
    put (im, 80, 8, flip_bits (r, get (im, 80, 8), 0x1));
    break;
  case 14:                                      /* autoclear_features */
    put (im, 88, 8, flip_bits (r, get (im, 88, 8), 0x3));
    break;
  case 15:                                      /* refcount_order */
    put (im, 96, 4, PICK (r, ((const uint64_t[]) {
      0, 1, 2, 3, 4, 5, 6, 7, 31, 32, 0xffffffff })));
    break;
  case 16:                                      /* header_length */
    put (im, 100, 4, PICK (r, ((const uint64_t[]) {
      0, 72, 100, 103, 104, 105, 108, 112, 113, 120, im->hlen + 8,
      im->hlen - 8, im->cs, im->cs + 8, 0xffffffff })));
    break;
  case 17:                                      /* compression_type */
    if (im->hlen >= 105)
      put (im, 104, 1, PICK (r, ((const uint64_t[]) { 0, 1, 2, 255 })));
    else
      put (im, 72, 8, get (im, 72, 8) ^ (1ULL << 3));
    break;
  default:                                      /* v3 <-> v2 */
    if (im->version == 3) {
      put (im, 4, 4, 2);
      put (im, 100, 4, 72);
    }
    else {
      put (im, 4, 4, 3);
      put (im, 96, 4, 4);
      put (im, 100, 4, 104);
    }
    break;
  }
}

/* ---- header extensions ---- */

static const uint32_t ext_magics[] = {
  0x00000000, 0xe2792aca, 0x6803f857, 0x23852875, 0x0537be77, 0x44415441,
  0xdeadbeef,
};

/* The i-th extension (or the end marker / the first unused slot). */
static bool
find_ext (struct img *im, unsigned want, uint64_t *at, uint32_t *type,
          uint32_t *len)
{
  uint64_t off = im->ext_start;

  for (unsigned i = 0; i < 64; i++) {
    if (off + 8 > im->ext_end)
      return false;
    *at = off;
    *type = get (im, off, 4);
    *len = get (im, off + 4, 4);
    if (i == want || *type == 0)
      return true;
    if (*len > im->ext_end - off - 8)
      return false;
    off += 8 + ((uint64_t) *len + 7) / 8 * 8;
  }
  return false;
}

static const char *const format_names[] = {
  "qcow2", "raw", "vmdk", "", "qcow2\0x", "QCOW2", "luks",
};

static void
put_bytes (struct img *im, uint64_t off, const void *s, size_t n)
{
  if (inside (im, off, n))
    memcpy (im->p + off, s, n);
}

static void
mut_extension (struct rng *r, struct img *im)
{
  uint64_t at;
  uint32_t type, len;

  if (!find_ext (im, below (r, 6), &at, &type, &len))
    return;
  if (type == 0 || chance (r, 15)) {
    /* a new extension here (an end marker follows when there is room) */
    static const uint8_t fmt[] = { 'q', 'c', 'o', 'w', '2', 0, 0, 0 };
    uint32_t t = PICK (r, ext_magics);
    uint32_t l;
    put (im, at, 4, t);
    switch (t) {
    case 0xe2792aca:
      l = 5;
      put_bytes (im, at + 8, fmt, 8);
      break;
    case 0x6803f857:                            /* one feature entry */
      l = 48;
      put (im, at + 8, 1, below (r, 4));
      put (im, at + 9, 1, below (r, 64));
      put_bytes (im, at + 10, "fuzz feature", 13);
      break;
    case 0x23852875:
      l = 24;
      put (im, at + 8, 4, some_count (r, 1));
      put (im, at + 12, 4, 0);
      put (im, at + 16, 8, below (r, 3) * 32 + 32);
      put (im, at + 24, 8, some_offset (r, im));
      break;
    case 0x0537be77:
      l = 16;
      put (im, at + 8, 8, some_offset (r, im));
      put (im, at + 16, 8, some_count (r, im->cs));
      break;
    case 0x44415441:
      l = 9;
      put_bytes (im, at + 8, "data.raw\0\0\0\0\0\0\0", 16);
      break;
    default:
      l = below (r, 64);
      break;
    }
    put (im, at + 4, 4, l);
    put (im, at + 8 + (l + 7) / 8 * 8, 8, 0);
    return;
  }
  switch (below (r, 5)) {
  case 0:
    put (im, at, 4, PICK (r, ext_magics));
    return;
  case 1:
    put (im, at + 4, 4, PICK (r, ((const uint64_t[]) {
      0, 1, 7, 8, len + 1, len ? len - 1 : 0, 1023, 1024,
      im->ext_end - at - 8, im->ext_end - at - 7, 0xffffffff })));
    return;
  default:
    break;
  }
  switch (type) {
  case 0xe2792aca: {                            /* backing format */
    const char *f = PICK (r, format_names);
    size_t n = strlen (f);
    put_bytes (im, at + 8, f, n < len ? n : len);
    put (im, at + 4, 4, n + (f[0] == 'q' && chance (r, 20)));
    break;
  }
  case 0x6803f857: {                            /* feature name table */
    uint64_t e = at + 8 + 48 * below (r, len / 48 + 1);
    if (chance (r, 50))
      put (im, e, 1, PICK (r, ((const uint64_t[]) { 0, 1, 2, 3, 255 })));
    else
      put (im, e + 1, 1, PICK (r, ((const uint64_t[]) { 0, 1, 4, 5, 63, 64,
                                                        255 })));
    break;
  }
  case 0x23852875:                              /* bitmaps */
    switch (below (r, 4)) {
    case 0:
      put (im, at + 8, 4, some_count (r, get (im, at + 8, 4)));
      break;
    case 1:
      put (im, at + 12, 4, rnd (r));
      break;
    case 2:
      put (im, at + 16, 8, some_count (r, get (im, at + 16, 8)));
      break;
    default:
      put (im, at + 24, 8, some_offset (r, im));
      break;
    }
    break;
  case 0x0537be77:                              /* crypto header */
    put (im, at + 8 + 8 * below (r, 2), 8, some_offset (r, im));
    break;
  default:                                      /* any payload byte */
    if (len)
      put (im, at + 8 + below (r, len), 1, rnd (r));
    break;
  }
}

/* ---- backing file name ---- */

static void
mut_backing (struct rng *r, struct img *im, const struct chainfs_part *parts,
             size_t nparts)
{
  static const char *const names[] = {
    "missing.qcow2", "nbd://localhost/base", "file:base.qcow2",
    "json:{\"file\":{\"driver\":\"file\",\"filename\":\"x\"}}",
    "./a:b", "a:b", "/", ".", "..", "../", "base.qcow2", "./base.qcow2",
    "../vm/base.qcow2", "/vm/base.qcow2", "vm/base.qcow2", "//vm//./b",
    "raw.img", "data.raw",
  };
  char name[1100];
  size_t n;
  uint64_t off = get (im, 8, 8);

  if (off == 0 || off >= im->cs || chance (r, 20))
    off = PICK (r, ((const uint64_t[]) { im->ext_end - 64, im->cs / 2,
                                         im->ext_end - 256 }));
  if (off < im->hlen)
    off = im->hlen;
  if (nparts > 1 && chance (r, 70)) {
    const struct chainfs_part *p = &parts[below (r, nparts)];
    const char *base = strrchr (p->norm, '/');
    base = base ? base + 1 : p->norm;
    switch (below (r, 6)) {
    case 0:
      snprintf (name, sizeof name, "%s", p->name);
      break;
    case 1:
      snprintf (name, sizeof name, "./%s", base);
      break;
    case 2:
      snprintf (name, sizeof name, "../vm/%s", base);
      break;
    case 3:
      snprintf (name, sizeof name, "%s", im->self ? im->self : base);
      break;
    case 4:
      snprintf (name, sizeof name, "/%s", p->norm);
      break;
    default:
      snprintf (name, sizeof name, "%s", base);
      break;
    }
  }
  else if (chance (r, 10)) {
    n = PICK (r, ((const size_t[]) { 1022, 1023, 1024 }));
    memset (name, 'a', n);
    name[n] = '\0';
  }
  else
    snprintf (name, sizeof name, "%s", PICK (r, names));
  n = strlen (name);
  if (!inside (im, off, n))
    return;
  put (im, 8, 8, off);
  put (im, 16, 4, n + (chance (r, 5) ? 1 : 0));
  put_bytes (im, off, name, n);
}

/* ---- L1, L2, refcounts ---- */

static uint64_t
entry_offset (struct rng *r, const struct img *im)
{
  return some_offset (r, im) & 0x00fffffffffffe00ULL;
}

static uint64_t
mut_l1_entry (struct rng *r, const struct img *im, uint64_t e)
{
  switch (below (r, 6)) {
  case 0:
    return (e & (1ULL << 63)) | entry_offset (r, im);
  case 1:
    return e ^ (1ULL << 63);
  case 2:
    return e | (1ULL << (1 + below (r, 8))) | (chance (r, 50) ? 1ULL << 56
                                                              : 0);
  case 3:
    return 0;
  case 4:
    return UINT64_MAX;
  default:
    return (e & 0x00fffffffffffe00ULL) + PICK (r, ((const uint64_t[]) {
      1, 512, im->cs }));
  }
}

static void
mut_l1 (struct rng *r, struct img *im)
{
  uint32_t n = im->l1_size;
  uint64_t at;

  if (n == 0 || !inside (im, im->l1_off, 8))
    return;
  if (n > (im->len - im->l1_off) / 8)
    n = (im->len - im->l1_off) / 8;
  at = im->l1_off + 8 * below (r, n ? n : 1);
  put (im, at, 8, mut_l1_entry (r, im, get (im, at, 8)));
}

/* An L2 table reached from the L1 table (0: none in the file). */
static uint64_t
some_l2 (struct rng *r, const struct img *im)
{
  uint32_t n = im->l1_size;
  uint64_t start;

  if (n == 0 || !inside (im, im->l1_off, 8))
    return 0;
  if (n > (im->len - im->l1_off) / 8)
    n = (im->len - im->l1_off) / 8;
  start = below (r, n ? n : 1);
  for (uint32_t k = 0; k < n && k < 64; k++) {
    uint64_t e = get (im, im->l1_off + 8 * ((start + k) % n), 8)
                 & 0x00fffffffffffe00ULL;
    if (e && inside (im, e, 8))
      return e;
  }
  return 0;
}

static void
mut_l2 (struct rng *r, struct img *im)
{
  uint64_t l2 = some_l2 (r, im), at, e;
  unsigned esize = im->extl2 ? 16 : 8;
  uint64_t entries = im->cs / esize;
  unsigned x = 62 - (im->cluster_bits - 8);   /* compressed offset bits */

  if (l2 == 0)
    return;
  /* entries in the file only; favour the first few (seeds write there) */
  at = l2 + esize * (chance (r, 50) ? below (r, 4) : below (r, entries));
  if (!inside (im, at, esize))
    at = l2;
  e = get (im, at, 8);
  if (im->extl2 && chance (r, 40)) {
    uint64_t b = get (im, at + 8, 8);
    put (im, at + 8, 8, PICK (r, ((const uint64_t[]) {
      0, 0xffffffffULL, 0xffffffff00000000ULL, UINT64_MAX, b ^ 1,
      b ^ (1ULL << 32), 1, 1ULL << 32, 0x0000ffff0000ffffULL,
      rnd (r) })));
    return;
  }
  switch (below (r, 8)) {
  case 0:                                     /* unallocated / zero */
    e = chance (r, 50) ? 0 : 1;
    break;
  case 1:                                     /* normal cluster */
    e = (1ULL << 63) | entry_offset (r, im);
    break;
  case 2: {                                   /* compressed descriptor */
    uint64_t sectors = PICK (r, ((const uint64_t[]) {
      1, 2, im->cs / 512, im->cs / 512 + 1, im->cs / 512 + 2,
      (1ULL << (62 - x)) }));
    uint64_t host = some_offset (r, im) + below (r, 512);
    e = (1ULL << 62) | (((sectors - 1) & ((1ULL << (62 - x)) - 1)) << x)
        | (host & ((1ULL << x) - 1));
    break;
  }
  case 3:                                     /* flip a flag */
    e ^= PICK (r, ((const uint64_t[]) { 1ULL << 63, 1ULL << 62, 1 }));
    break;
  case 4:                                     /* reserved bits */
    e |= PICK (r, ((const uint64_t[]) { 1ULL << 56, 1ULL << 61, 2, 0x100 }));
    break;
  case 5:                                     /* compressed and copied */
    e |= (1ULL << 62) | (1ULL << 63);
    break;
  case 6:                                     /* unaligned */
    e = (e & ~0x1ffULL) | 0x100;
    break;
  default:
    e = UINT64_MAX;
    break;
  }
  put (im, at, 8, e);
}

static void
mut_reftable (struct rng *r, struct img *im)
{
  uint64_t n = (uint64_t) im->rt_clusters * im->cs / 8, at, e;

  if (!inside (im, im->rt_off, 8))
    return;
  if (n > (im->len - im->rt_off) / 8)
    n = (im->len - im->rt_off) / 8;
  at = im->rt_off + 8 * (chance (r, 50) ? below (r, 2) : below (r, n));
  e = get (im, at, 8);
  switch (below (r, 4)) {
  case 0:
    e = entry_offset (r, im);
    break;
  case 1:
    e |= 1 + below (r, 0x1ff);
    break;
  case 2:
    e = 0;
    break;
  default:
    e = some_offset (r, im);
    break;
  }
  put (im, at, 8, e);
}

static void
mut_refblock (struct rng *r, struct img *im)
{
  uint64_t rb = get (im, im->rt_off + 8 * (chance (r, 70) ? 0 : below (r, 4)),
                     8) & ~0x1ffULL;
  unsigned order = im->refcount_order <= 6 ? im->refcount_order : 4;
  unsigned bits = 1u << order;
  uint64_t nent = im->cs * 8 / bits, idx, max, v;

  if (rb == 0 || !inside (im, rb, 1))
    return;
  max = bits == 64 ? UINT64_MAX : (1ULL << bits) - 1;
  idx = chance (r, 50) ? below (r, 16) : below (r, nent);
  v = PICK (r, ((const uint64_t[]) { 0, 1, 2, 3, max, max - 1, max / 2 + 1 }));
  if (bits >= 8) {
    put (im, rb + idx * (bits / 8), bits / 8, v);
  }
  else {
    uint64_t byte = rb + idx * bits / 8;
    unsigned shift = idx * bits % 8;
    uint64_t old = get (im, byte, 1);
    uint64_t mask = ((1u << bits) - 1) << shift;
    put (im, byte, 1, (old & ~mask) | ((v << shift) & mask));
  }
}

/* ---- snapshot table ---- */

static void
mut_snapshot (struct rng *r, struct img *im)
{
  uint64_t off = im->snap_off;
  uint32_t want = below (r, im->nb_snap < 8 ? im->nb_snap : 8);

  if (im->nb_snap == 0)
    return;
  for (uint32_t i = 0; i < want; i++) {
    uint64_t extra = get (im, off + 36, 4), id = get (im, off + 12, 2),
      nm = get (im, off + 14, 2);
    if (!inside (im, off, 40))
      return;
    off += (40 + extra + id + nm + 7) / 8 * 8;
  }
  if (!inside (im, off, 40))
    return;
  switch (below (r, 12)) {
  case 0:
    put (im, off, 8, some_offset (r, im));
    break;
  case 1:
    put (im, off + 8, 4, some_count (r, get (im, off + 8, 4)));
    break;
  case 2:
    put (im, off + 12, 2, PICK (r, ((const uint64_t[]) {
      0, 1, 2, 255, 0xffff })));
    break;
  case 3:
    put (im, off + 14, 2, PICK (r, ((const uint64_t[]) {
      0, 1, 2, 1024, 0xffff })));
    break;
  case 4:
    put (im, off + 20, 4, PICK (r, ((const uint64_t[]) {
      0, 999999999, 1000000000, 0xffffffff })));
    break;
  case 5:
    put (im, off + 32, 4, some_count (r, 0));
    break;
  case 6:                                     /* extra_data_size */
    put (im, off + 36, 4, PICK (r, ((const uint64_t[]) {
      0, 7, 8, 15, 16, 24, 32, 1024, 1025, 65536, 65537, 0xffffffff })));
    break;
  case 7:                                     /* vm_state_size_large */
    put (im, off + 40, 8, some_size (r, im));
    break;
  case 8:                                     /* disk_size */
    put (im, off + 48, 8, some_size (r, im));
    break;
  case 9:                                     /* icount */
    put (im, off + 56, 8, PICK (r, ((const uint64_t[]) {
      0, 1, UINT64_MAX, 1ULL << 63 })));
    break;
  case 10:                                    /* same L1 as the active one */
    put (im, off, 8, im->l1_off);
    put (im, off + 8, 4, im->l1_size);
    break;
  default:                                    /* a byte of id or name */
    put (im, off + 40 + get (im, off + 36, 4)
         + below (r, get (im, off + 12, 2) + get (im, off + 14, 2) + 1), 1,
         PICK (r, ((const uint64_t[]) { 0, '1', 0xff, '/', '"' })));
    break;
  }
}

/* ---- bitmaps ---- */

static void
mut_bitmap (struct rng *r, struct img *im)
{
  uint64_t at, dir, e;
  uint32_t type, len;

  for (unsigned i = 0; ; i++) {
    if (i == 8 || !find_ext (im, i, &at, &type, &len) || type == 0)
      return;
    if (type == 0x23852875)
      break;
  }
  dir = get (im, at + 24, 8);
  e = dir;
  for (uint32_t k = below (r, 4); k > 0; k--) {
    uint64_t next = e + (24 + get (im, e + 20, 4) + get (im, e + 18, 2) + 7)
                        / 8 * 8;
    if (!inside (im, next, 24))
      break;
    e = next;
  }
  if (!inside (im, e, 24))
    return;
  switch (below (r, 9)) {
  case 0:
    put (im, e, 8, some_offset (r, im));
    break;
  case 1:
    put (im, e + 8, 4, some_count (r, get (im, e + 8, 4)));
    break;
  case 2:
    put (im, e + 12, 4, flip_bits (r, get (im, e + 12, 4), 3) & 0xffffffff);
    break;
  case 3:
    put (im, e + 16, 1, PICK (r, ((const uint64_t[]) { 0, 1, 2, 255 })));
    break;
  case 4:
    put (im, e + 17, 1, PICK (r, ((const uint64_t[]) {
      0, 8, 9, 16, 31, 32, 63, 64, 255 })));
    break;
  case 5:
    put (im, e + 18, 2, PICK (r, ((const uint64_t[]) { 0, 1, 1023, 1024,
                                                       0xffff })));
    break;
  case 6:
    put (im, e + 20, 4, PICK (r, ((const uint64_t[]) { 0, 8, 1, 0xffffffff })));
    break;
  default: {                                  /* a bitmap table entry */
    uint64_t t = get (im, e, 8), n = get (im, e + 8, 4);
    uint64_t te = t + 8 * (n ? below (r, n < 64 ? n : 64) : 0);
    put (im, te, 8, PICK (r, ((const uint64_t[]) {
      0, 1, entry_offset (r, im), entry_offset (r, im) | 1, UINT64_MAX,
      1ULL << 56 })));
    break;
  }
  }
}

/* ---- size changes ---- */

/* Grow or shrink the image at its end, moving what follows it (the other
 * fake files of a chain input). Returns the new input size. */
static size_t
resize (struct rng *r, struct img *im, uint8_t *data, size_t size,
        size_t max)
{
  size_t end = (im->p - data) + im->len, nlen;

  switch (below (r, 4)) {
  case 0:
    nlen = im->len / im->cs * im->cs;           /* drop a partial cluster */
    if (nlen == im->len && nlen >= im->cs)
      nlen -= im->cs;
    break;
  case 1:
    nlen = im->len - below (r, im->len < 4096 ? im->len : 4096);
    break;
  case 2:
    nlen = (im->len / im->cs + 1) * im->cs;     /* one more cluster */
    break;
  default:
    nlen = im->len + 512;
    break;
  }
  /* (libFuzzer's -minimize_crash passes a max below size) */
  if (nlen > im->len && (size > max || nlen - im->len > max - size))
    return size;
  memmove (im->p + nlen, data + end, size - end);
  if (nlen > im->len)
    memset (data + end, 0, nlen - im->len);
  return size - im->len + nlen;
}

/* ---- the entry points ---- */

/* Pick the image to work on; false when there is none. */
static bool
pick_image (struct rng *r, uint8_t *data, size_t size, struct img *im,
            struct chainfs_part *parts, size_t *nparts)
{
  size_t cand[CHAINFS_MAX_PARTS + 2], lens[CHAINFS_MAX_PARTS + 2], nc = 0;
  size_t self[CHAINFS_MAX_PARTS + 2];

  *nparts = 0;
  if (chainfs_memmem (data, size, CHAINFS_SEP, CHAINFS_SEP_LEN)) {
    *nparts = chainfs_split (data, size, parts, CHAINFS_MAX_PARTS);
    if (size >= 4 && memcmp (data, "QFI\xfb", 4) == 0)
      parts[0].data = 0;
    for (size_t i = 0; i < *nparts; i++)
      if (parts[i].end - parts[i].data >= 72
          && memcmp (data + parts[i].data, "QFI\xfb", 4) == 0) {
        cand[nc] = parts[i].data;
        lens[nc] = parts[i].end - parts[i].data;
        self[nc++] = i;
      }
  }
  else {
    /* the image, and the backing file fuzz.h serves from the second half */
    if (size >= 72 && memcmp (data, "QFI\xfb", 4) == 0) {
      cand[nc] = 0;
      lens[nc] = size;
      self[nc++] = SIZE_MAX;
    }
    if (size / 2 > 0 && size - size / 2 >= 72
        && memcmp (data + size / 2, "QFI\xfb", 4) == 0) {
      cand[nc] = size / 2;
      lens[nc] = size - size / 2;
      self[nc++] = SIZE_MAX;
    }
  }
  if (nc == 0)
    return false;
  {
    size_t k = chance (r, 60) ? 0 : below (r, nc);
    memset (im, 0, sizeof *im);
    im->p = data + cand[k];
    im->len = lens[k];
    im->self = self[k] != SIZE_MAX ? parts[self[k]].name : NULL;
  }
  return decode (im);
}

size_t
LLVMFuzzerCustomMutator (uint8_t *data, size_t size, size_t max_size,
                         unsigned int seed)
{
  struct rng r = { seed * 0x2545f4914f6cdd1dULL + size };
  static struct chainfs_part parts[CHAINFS_MAX_PARTS];
  size_t nparts;
  struct img im;
  unsigned steps;

  if (chance (&r, BYTE_LEVEL_PERCENT)
      || !pick_image (&r, data, size, &im, parts, &nparts))
    return LLVMFuzzerMutate (data, size, max_size);
  steps = 1 + (chance (&r, 30) ? below (&r, 4) : 0);
  for (unsigned i = 0; i < steps; i++) {
    switch (below (&r, 24)) {
    case 0: case 1: case 2: case 3: case 4:
      mut_header (&r, &im);
      break;
    case 5: case 6: case 7:
      mut_extension (&r, &im);
      break;
    case 8: case 9:
      mut_backing (&r, &im, parts, nparts);
      break;
    case 10: case 11:
      mut_l1 (&r, &im);
      break;
    case 12: case 13: case 14: case 15:
      mut_l2 (&r, &im);
      break;
    case 16: case 17:
      mut_reftable (&r, &im);
      break;
    case 18: case 19:
      mut_refblock (&r, &im);
      break;
    case 20: case 21:
      mut_snapshot (&r, &im);
      break;
    case 22:
      mut_bitmap (&r, &im);
      break;
    default:
      size = resize (&r, &im, data, size, max_size);
      return size;      /* the view is stale now */
    }
    decode (&im);         /* later steps see the change */
  }
  if (chance (&r, 10))
    return LLVMFuzzerMutate (data, size, max_size);
  return size;
}

/* Cross-over: a cluster of the second input written over a cluster of
 * the first (tables of one image landing in another), or a fake file of
 * the second appended to the first as another file of a chain. */
size_t
LLVMFuzzerCustomCrossOver (const uint8_t *d1, size_t s1, const uint8_t *d2,
                           size_t s2, uint8_t *out, size_t max_out,
                           unsigned int seed)
{
  struct rng r = { seed * 0x9e3779b97f4a7c15ULL + s1 + s2 };
  uint64_t cs = 512;
  size_t n = s1 < max_out ? s1 : max_out;

  memcpy (out, d1, n);
  if (s1 >= 24 && memcmp (d1, "QFI\xfb", 4) == 0) {
    uint32_t bits = (uint32_t) d1[20] << 24 | d1[21] << 16 | d1[22] << 8
                    | d1[23];
    if (bits >= 9 && bits <= 21)
      cs = 1ULL << bits;
  }
  if (chance (&r, 20) && n + CHAINFS_SEP_LEN + s2 <= max_out) {
    memcpy (out + n, CHAINFS_SEP, CHAINFS_SEP_LEN);
    memcpy (out + n + CHAINFS_SEP_LEN, d2, s2);
    return n + CHAINFS_SEP_LEN + s2;
  }
  if (s2 == 0 || n == 0)
    return n;
  {
    uint64_t src = below (&r, s2 / cs + 1) * cs;
    uint64_t dst = below (&r, n / cs + 1) * cs;
    size_t len = cs;
    if (src >= s2)
      src = 0;
    if (len > s2 - src)
      len = s2 - src;
    if (dst > n)
      dst = n;
    if (dst + len > max_out)
      len = max_out - dst;
    memcpy (out + dst, d2 + src, len);
    if (dst + len > n)
      n = dst + len;
  }
  return n;
}

#ifdef __clang__
#pragma clang attribute pop
#endif
