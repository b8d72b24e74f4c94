/* Unit tests of every lib/format parser over byte buffers: headers,
 * header extensions, L2 entries, refcount blocks, snapshot entries, bitmap
 * directory entries, compressed clusters; then random and hostile buffers
 * fed to every parser (fixed seed). Buffers handed to parsers are heap
 * blocks of exactly the stated length, so valgrind or ASan catch any read
 * past the end. */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "format/format.h"
#include "image/image.h"   /* qk_luks_parse, qk_luks_check */
#include "../tap.h"

/* ---- helpers ---- */

static uint64_t rng_state;

static uint64_t
rnd (void)
{
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static uint64_t
rnd_below (uint64_t n)
{
  return n ? rnd () % n : 0;
}

static void
fill_random (uint8_t *p, size_t n)
{
  for (size_t i = 0; i < n; i++)
    p[i] = (uint8_t) rnd ();
}

static void *
xmalloc (size_t n)
{
  void *p = malloc (n ? n : 1);
  if (p == NULL) {
    printf ("Bail out! out of memory\n");
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

/* A copy in a heap block of exactly n bytes. */
static uint8_t *
exact_copy (const uint8_t *p, size_t n)
{
  /* malloc (0) may return NULL: a parser given 0 bytes must not look. */
  uint8_t *c = malloc (n);
  if (c == NULL && n) {
    printf ("Bail out! out of memory\n");
    exit (1);
  }
  if (n)
    memcpy (c, p, n);
  return c;
}

/* The last call failed as damage: -1, EBADMSG and a message. */
static bool
failed_badmsg (int r)
{
  const char *e = qk_get_error ();
  return r == -1 && qk_get_errno () == EBADMSG && e && *e;
}

/* ---- headers ---- */

#define T_BFO      0x0a0b0c0d0e0f1011ULL
#define T_BFS      0x12131415U
#define T_SIZE     0x161718191a1b1c1dULL
#define T_CRYPT    0x1e1f2021U
#define T_L1SIZE   0x22232425U
#define T_L1OFF    0x262728292a2b2c2dULL
#define T_RTOFF    0x2e2f303132333435ULL
#define T_RTCL     0x36373839U
#define T_NBSN     0x3a3b3c3dU
#define T_SNOFF    0x3e3f404142434445ULL
#define T_INCOMPAT 0x464748494a4b4c4dULL   /* bit 4 (extended L2) clear */
#define T_COMPAT   0x4e4f505152535455ULL
#define T_AUTOCL   0x565758595a5b5c5dULL
#define T_CTYPE    0x5e

/* A header with a distinct value in every field, so that a field read
 * from the wrong offset shows. Bytes 105..111 are 0x5f (padding that must
 * be ignored) unless zero_pad. */
static void
make_header (uint8_t *b, size_t cap, uint32_t version, uint32_t cluster_bits,
             uint32_t refcount_order, uint32_t header_length, bool zero_pad)
{
  memset (b, 0, cap);
  be32_put (b, QK_QCOW2_MAGIC);
  be32_put (b + 4, version);
  be64_put (b + 8, T_BFO);
  be32_put (b + 16, T_BFS);
  be32_put (b + 20, cluster_bits);
  be64_put (b + 24, T_SIZE);
  be32_put (b + 32, T_CRYPT);
  be32_put (b + 36, T_L1SIZE);
  be64_put (b + 40, T_L1OFF);
  be64_put (b + 48, T_RTOFF);
  be32_put (b + 56, T_RTCL);
  be32_put (b + 60, T_NBSN);
  be64_put (b + 64, T_SNOFF);
  if (cap >= 112) {
    be64_put (b + 72, T_INCOMPAT);
    be64_put (b + 80, T_COMPAT);
    be64_put (b + 88, T_AUTOCL);
    be32_put (b + 96, refcount_order);
    be32_put (b + 100, header_length);
    b[104] = T_CTYPE;
    for (int i = 105; i < 112; i++)
      b[i] = zero_pad ? 0 : 0x5f;
  }
}

static int
parse_exact (const uint8_t *b, size_t len, struct qk_header *h)
{
  uint8_t *c = exact_copy (b, len);
  int r = qk_header_parse (c, len, h);
  free (c);
  return r;
}

static void
test_header_fields (void)
{
  uint8_t b[512];
  struct qk_header h;

  /* v3, header_length 112 */
  make_header (b, sizeof b, 3, 16, 4, 112, false);
  ok (parse_exact (b, 112, &h) == 0, "v3 header parses");
  is_u64 (h.magic, QK_QCOW2_MAGIC, "v3 magic");
  is_u64 (h.version, 3, "v3 version");
  is_u64 (h.backing_file_offset, T_BFO, "v3 backing_file_offset (off 8)");
  is_u64 (h.backing_file_size, T_BFS, "v3 backing_file_size (off 16)");
  is_u64 (h.cluster_bits, 16, "v3 cluster_bits (off 20)");
  is_u64 (h.size, T_SIZE, "v3 size (off 24)");
  is_u64 (h.crypt_method, T_CRYPT, "v3 crypt_method (off 32)");
  is_u64 (h.l1_size, T_L1SIZE, "v3 l1_size (off 36)");
  is_u64 (h.l1_table_offset, T_L1OFF, "v3 l1_table_offset (off 40)");
  is_u64 (h.refcount_table_offset, T_RTOFF, "v3 refcount_table_offset (48)");
  is_u64 (h.refcount_table_clusters, T_RTCL, "v3 refcount_table_clusters (56)");
  is_u64 (h.nb_snapshots, T_NBSN, "v3 nb_snapshots (off 60)");
  is_u64 (h.snapshots_offset, T_SNOFF, "v3 snapshots_offset (off 64)");
  is_u64 (h.incompatible_features, T_INCOMPAT, "v3 incompatible (off 72)");
  is_u64 (h.compatible_features, T_COMPAT, "v3 compatible (off 80)");
  is_u64 (h.autoclear_features, T_AUTOCL, "v3 autoclear (off 88)");
  is_u64 (h.refcount_order, 4, "v3 refcount_order (off 96)");
  is_u64 (h.header_length, 112, "v3 header_length (off 100)");
  is_u64 (h.compression_type, T_CTYPE, "v3 compression_type (off 104)");
  is_u64 (h.cluster_size, 65536, "derived cluster_size");
  is_u64 (h.refcount_bits, 16, "derived refcount_bits");
  is_u64 (h.l2_entry_size, 8, "derived l2_entry_size");
  is_u64 (h.subclusters, 1, "derived subclusters");
  is_u64 (h.l2_entries, 8192, "derived l2_entries");
  is_u64 (h.unknown_header_bytes, 0, "no unknown header bytes at 112");

  /* header_length 104: no compression_type field even if byte 104 set */
  make_header (b, sizeof b, 3, 16, 4, 104, false);
  ok (parse_exact (b, 104, &h) == 0, "v3 header_length 104 parses in 104 "
      "bytes");
  is_u64 (h.compression_type, 0, "header_length 104: compression_type absent "
          "(0)");
  is_u64 (h.header_length, 104, "header_length 104 kept");

  /* header_length 105: compression_type present */
  make_header (b, sizeof b, 3, 16, 4, 105, false);
  ok (parse_exact (b, 105, &h) == 0, "v3 header_length 105 parses");
  is_u64 (h.compression_type, T_CTYPE, "header_length 105: compression_type "
          "read");

  /* header_length > 112: unknown fields */
  make_header (b, sizeof b, 3, 16, 4, 136, false);
  ok (parse_exact (b, 136, &h) == 0, "v3 header_length 136 parses");
  is_u64 (h.unknown_header_bytes, 24, "header_length 136: 24 unknown bytes");
  ok (parse_exact (b, 112, &h) == 0, "header_length 136 parses from the first "
      "112 bytes (as image.c reads it)");

  /* extended L2 */
  make_header (b, sizeof b, 3, 16, 4, 112, false);
  be64_put (b + 72, QK_INCOMPAT_EXTL2 | QK_INCOMPAT_COMPRESSION);
  ok (parse_exact (b, 112, &h) == 0, "extended L2 header parses");
  is_u64 (h.l2_entry_size, 16, "extended L2: l2_entry_size 16");
  is_u64 (h.subclusters, 32, "extended L2: 32 subclusters");
  is_u64 (h.l2_entries, 4096, "extended L2: 4096 entries per 64k L2");
  be32_put (b + 20, 9);
  ok (parse_exact (b, 112, &h) == 0 && h.l2_entries == 32,
      "extended L2 with 512-byte clusters: 32 entries");

  /* refcount orders */
  for (uint32_t o = 0; o <= 8; o++) {
    make_header (b, sizeof b, 3, 16, o, 112, false);
    ok (parse_exact (b, 112, &h) == 0 && h.refcount_order == o
        && h.refcount_bits == (o <= 6 ? 1U << o : 0),
        "refcount_order %u: refcount_bits %u", o, o <= 6 ? 1U << o : 0);
  }
  make_header (b, sizeof b, 3, 16, 0xffffffff, 112, false);
  ok (parse_exact (b, 112, &h) == 0 && h.refcount_bits == 0
      && h.refcount_order == 0xffffffff,
      "refcount_order 0xffffffff kept as read, refcount_bits 0");

  /* v2: everything past byte 72 is ignored */
  make_header (b, sizeof b, 2, 12, 0, 0, false);
  memset (b + 72, 0xff, 40);
  ok (parse_exact (b, 72, &h) == 0, "v2 header parses in 72 bytes");
  is_u64 (h.version, 2, "v2 version");
  is_u64 (h.l1_table_offset, T_L1OFF, "v2 l1_table_offset");
  is_u64 (h.snapshots_offset, T_SNOFF, "v2 snapshots_offset");
  is_u64 (h.nb_snapshots, T_NBSN, "v2 nb_snapshots");
  is_u64 (h.header_length, 72, "v2 implies header_length 72");
  is_u64 (h.refcount_order, 4, "v2 implies refcount_order 4");
  is_u64 (h.refcount_bits, 16, "v2 refcount_bits 16");
  ok (h.incompatible_features == 0 && h.compatible_features == 0
      && h.autoclear_features == 0, "v2 has no feature bits");
  is_u64 (h.compression_type, 0, "v2 compression_type 0");
  is_u64 (h.cluster_size, 4096, "v2 cluster_size");
  is_u64 (h.l2_entries, 512, "v2 l2_entries");
  ok (parse_exact (b, 112, &h) == 0 && h.incompatible_features == 0
      && h.header_length == 72, "v2 with 0xff bytes after 72 ignores them");
}

static bool
same_header (const struct qk_header *a, const struct qk_header *b)
{
  return memcmp (a, b, sizeof *a) == 0;
}

static void
test_header_roundtrip (void)
{
  static const uint32_t hlens[] = { 104, 105, 112, 120, 4096 };
  uint8_t *b = xcalloc (4096), *f = xcalloc (4096);
  struct qk_header h, h2;

  for (size_t i = 0; i < sizeof hlens / sizeof hlens[0]; i++) {
    uint32_t hl = hlens[i];
    make_header (b, 4096, 3, 12, 5, hl, true);
    if (hl <= 104)
      b[104] = 0;
    ok (qk_header_parse (b, 4096, &h) == 0, "header_length %u parses", hl);
    memset (f, 0xaa, 4096);
    ok (qk_header_format (&h, f, 4096) == 0, "header_length %u formats", hl);
    ok (memcmp (f, b, MIN (hl, 112U)) == 0, "header_length %u: format "
        "writes the same bytes", hl);
    {
      bool zero = true;
      for (uint32_t k = 112; k < hl; k++)
        zero &= f[k] == 0;
      ok (zero && f[hl < 4096 ? hl : 0] == (hl < 4096 ? 0xaa : 'Q'),
          "header_length %u: unknown bytes zeroed, nothing written past "
          "header_length", hl);
    }
    ok (qk_header_parse (f, 4096, &h2) == 0 && same_header (&h, &h2),
        "header_length %u: format -> parse round trip", hl);
  }

  /* v2 */
  make_header (b, 4096, 2, 16, 0, 0, true);
  memset (b + 72, 0, 40);
  ok (qk_header_parse (b, 72, &h) == 0, "v2 parses");
  memset (f, 0xaa, 4096);
  ok (qk_header_format (&h, f, 72) == 0, "v2 formats into 72 bytes");
  ok (memcmp (f, b, 72) == 0 && f[72] == 0xaa, "v2 format: same 72 bytes, "
      "nothing after");
  ok (qk_header_parse (f, 72, &h2) == 0 && same_header (&h, &h2),
      "v2 round trip");

  /* byte layout written by format, checked against the reference table */
  memset (&h, 0, sizeof h);
  h.version = 3;
  h.cluster_bits = 16;
  h.size = 1ULL << 30;
  h.l1_size = 2;
  h.l1_table_offset = 0x30000;
  h.refcount_table_offset = 0x10000;
  h.refcount_table_clusters = 1;
  h.refcount_order = 4;
  h.header_length = 112;
  h.compression_type = 1;
  h.incompatible_features = QK_INCOMPAT_COMPRESSION;
  ok (qk_header_format (&h, f, 112) == 0, "format a fresh v3 header");
  ok (memcmp (f, "QFI\xfb\0\0\0\3", 8) == 0, "magic and version bytes");
  is_u64 (be64_get (f + 24), 1ULL << 30, "size at byte 24");
  is_u64 (be32_get (f + 36), 2, "l1_size at byte 36");
  is_u64 (be64_get (f + 40), 0x30000, "l1_table_offset at byte 40");
  is_u64 (be64_get (f + 48), 0x10000, "refcount_table_offset at byte 48");
  is_u64 (be64_get (f + 72), QK_INCOMPAT_COMPRESSION, "incompatible at 72");
  is_u64 (be32_get (f + 96), 4, "refcount_order at byte 96");
  is_u64 (be32_get (f + 100), 112, "header_length at byte 100");
  is_u64 (f[104], 1, "compression_type at byte 104");

  /* format refuses small buffers */
  ok (qk_header_format (&h, f, 111) == -1 && qk_get_errno () == EINVAL,
      "format into 111 bytes for header_length 112 fails with EINVAL");
  h.header_length = 100;
  ok (qk_header_format (&h, f, 4096) == -1, "format of a v3 header_length "
      "100 fails");
  h.version = 2;
  ok (qk_header_format (&h, f, 71) == -1, "format of v2 into 71 bytes fails");
  free (b);
  free (f);
}

static void
test_header_truncated (void)
{
  uint8_t b[112];
  struct qk_header h;

  make_header (b, sizeof b, 3, 16, 4, 112, false);
  for (size_t len = 0; len <= 112; len++) {
    int r = parse_exact (b, len, &h);
    if (len >= 105)
      ok (r == 0, "v3 header_length 112 truncated to %zu bytes parses", len);
    else
      ok (failed_badmsg (r), "v3 header_length 112 truncated to %zu bytes "
          "fails (EBADMSG)", len);
  }
  make_header (b, sizeof b, 3, 16, 4, 104, false);
  for (size_t len = 72; len <= 112; len++) {
    int r = parse_exact (b, len, &h);
    if (len >= 104)
      ok (r == 0, "v3 header_length 104 truncated to %zu bytes parses", len);
    else
      ok (failed_badmsg (r), "v3 header_length 104 truncated to %zu bytes "
          "fails", len);
  }
  make_header (b, sizeof b, 2, 16, 4, 0, false);
  for (size_t len = 0; len <= 112; len++) {
    int r = parse_exact (b, len, &h);
    if (len >= 72)
      ok (r == 0 && h.l1_table_offset == T_L1OFF,
          "v2 header truncated to %zu bytes parses", len);
    else
      ok (failed_badmsg (r), "v2 header truncated to %zu bytes fails", len);
  }
}

static void
test_header_bad (void)
{
  uint8_t b[512];
  struct qk_header h;

  for (int i = 0; i < 4; i++) {
    make_header (b, sizeof b, 3, 16, 4, 112, false);
    b[i] ^= 0x01;
    ok (failed_badmsg (parse_exact (b, 112, &h)), "magic byte %d wrong: "
        "fails", i);
  }
  make_header (b, sizeof b, 3, 16, 4, 112, false);
  memset (b, 0, 4);
  ok (failed_badmsg (parse_exact (b, 112, &h))
      && strstr (qk_get_error (), "magic"), "zero magic: message names the "
      "magic");
  {
    static const uint32_t vers[] = { 0, 1, 4, 0x100, 0x02000000, 0xffffffff };
    for (size_t i = 0; i < sizeof vers / sizeof vers[0]; i++) {
      make_header (b, sizeof b, vers[i], 16, 4, 112, false);
      ok (failed_badmsg (parse_exact (b, 112, &h)), "version %u fails",
          vers[i]);
    }
  }
  for (uint32_t cb = 0; cb <= 64; cb++) {
    int r;
    make_header (b, sizeof b, 3, cb, 4, 104, false);
    r = parse_exact (b, 112, &h);
    if (cb >= 9 && cb <= 21)
      ok (r == 0 && h.cluster_size == 1ULL << cb, "cluster_bits %u accepted",
          cb);
    else
      ok (failed_badmsg (r), "cluster_bits %u rejected", cb);
  }
  {
    static const uint32_t cbs[] = { 0x80000009, 0xffffffff, 0x100 + 16 };
    for (size_t i = 0; i < sizeof cbs / sizeof cbs[0]; i++) {
      make_header (b, sizeof b, 3, cbs[i], 4, 112, false);
      ok (failed_badmsg (parse_exact (b, 112, &h)), "cluster_bits 0x%x "
          "rejected", cbs[i]);
      make_header (b, sizeof b, 2, cbs[i], 4, 112, false);
      ok (failed_badmsg (parse_exact (b, 112, &h)), "v2 cluster_bits 0x%x "
          "rejected", cbs[i]);
    }
  }
  {
    static const uint32_t bad[] = { 0, 1, 72, 96, 103 };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
      make_header (b, sizeof b, 3, 16, 4, bad[i], false);
      ok (failed_badmsg (parse_exact (b, 112, &h)), "header_length %u < 104 "
          "rejected", bad[i]);
    }
  }
  make_header (b, sizeof b, 3, 9, 4, 512, false);
  ok (parse_exact (b, 112, &h) == 0 && h.unknown_header_bytes == 400,
      "header_length 512 == cluster size (512) accepted");
  make_header (b, sizeof b, 3, 9, 4, 513, false);
  ok (failed_badmsg (parse_exact (b, 112, &h)), "header_length 513 > cluster "
      "size 512 rejected");
  make_header (b, sizeof b, 3, 16, 4, 65536, false);
  ok (parse_exact (b, 112, &h) == 0, "header_length 65536 == cluster size "
      "accepted");
  make_header (b, sizeof b, 3, 16, 4, 65537, false);
  ok (failed_badmsg (parse_exact (b, 112, &h)), "header_length 65537 "
      "rejected");
  make_header (b, sizeof b, 3, 21, 4, 0xffffffff, false);
  ok (failed_badmsg (parse_exact (b, 112, &h)), "header_length 0xffffffff "
      "rejected");
  make_header (b, sizeof b, 2, 16, 4, 0xffffffff, false);
  ok (parse_exact (b, 112, &h) == 0 && h.header_length == 72,
      "v2 ignores a garbage header_length field");
}

static void
test_feature_names (void)
{
  is_str (qk_feature_known_name (QK_FEATURE_INCOMPAT, 0), "dirty bit",
          "incompatible bit 0 name");
  is_str (qk_feature_known_name (QK_FEATURE_INCOMPAT, 1), "corrupt bit",
          "incompatible bit 1 name");
  is_str (qk_feature_known_name (QK_FEATURE_INCOMPAT, 2), "external data file",
          "incompatible bit 2 name");
  is_str (qk_feature_known_name (QK_FEATURE_INCOMPAT, 3), "compression type",
          "incompatible bit 3 name");
  is_str (qk_feature_known_name (QK_FEATURE_INCOMPAT, 4), "extended L2 entries",
          "incompatible bit 4 name");
  ok (qk_feature_known_name (QK_FEATURE_INCOMPAT, 5) == NULL,
      "incompatible bit 5 unknown");
  is_str (qk_feature_known_name (QK_FEATURE_COMPAT, 0), "lazy refcounts",
          "compatible bit 0 name");
  ok (qk_feature_known_name (QK_FEATURE_COMPAT, 1) == NULL,
      "compatible bit 1 unknown");
  is_str (qk_feature_known_name (QK_FEATURE_AUTOCLEAR, 0), "bitmaps",
          "autoclear bit 0 name");
  is_str (qk_feature_known_name (QK_FEATURE_AUTOCLEAR, 1), "raw external data",
          "autoclear bit 1 name");
  ok (qk_feature_known_name (QK_FEATURE_AUTOCLEAR, 2) == NULL
      && qk_feature_known_name (QK_FEATURE_INCOMPAT, 63) == NULL
      && qk_feature_known_name (QK_FEATURE_INCOMPAT, 4000000000U) == NULL
      && qk_feature_known_name (3, 0) == NULL
      && qk_feature_known_name (-1, 0) == NULL,
      "out-of-range types and bits have no name");
}

/* ---- header extensions ---- */

struct ext_seen {
  uint32_t magic, length;
  uint64_t offset;
  const uint8_t *payload;
};

struct ext_log {
  struct ext_seen e[64];
  size_t n;
  int stop_at;           /* return -1 at this callback (0-based), or -1 */
  const uint8_t *base;
  size_t end;
  bool bad;              /* payload not where it should be or overrunning */
};

static int
ext_collect (void *opaque, const struct qk_ext_raw *e, const uint8_t *payload)
{
  struct ext_log *l = opaque;

  if (payload != l->base + e->offset + 8
      || e->offset + 8 + (uint64_t) e->length > l->end)
    l->bad = true;
  if (l->n < 64) {
    l->e[l->n].magic = e->magic;
    l->e[l->n].length = e->length;
    l->e[l->n].offset = e->offset;
    l->e[l->n].payload = payload;
  }
  l->n++;
  if (l->stop_at >= 0 && l->n == (size_t) l->stop_at + 1)
    return -1;
  return 0;
}

static int
walk (const uint8_t *buf, size_t start, size_t end, struct ext_log *l)
{
  memset (l, 0, sizeof *l);
  l->stop_at = -1;
  l->base = buf;
  l->end = end;
  return qk_extensions_walk (buf, start, end, ext_collect, l);
}

static size_t
put_ext (uint8_t *b, size_t pos, uint32_t magic, uint32_t len,
         const void *payload, uint8_t pad_byte)
{
  be32_put (b + pos, magic);
  be32_put (b + pos + 4, len);
  if (payload)
    memcpy (b + pos + 8, payload, len);
  for (size_t k = len; k % 8; k++)
    b[pos + 8 + k] = pad_byte;
  return pos + 8 + ((len + 7) & ~7U);
}

static void
test_extensions (void)
{
  uint8_t *c = xcalloc (4096), *x;
  uint8_t ft[96], bm[24];
  struct ext_log l;
  size_t p, end_marker;
  int r;

  memset (ft, 0, sizeof ft);
  ft[0] = 0; ft[1] = 0; memcpy (ft + 2, "dirty bit", 9);
  ft[48] = 2; ft[49] = 0; memcpy (ft + 50, "bitmaps", 7);
  be32_put (bm, 1);
  be32_put (bm + 4, 0);
  be64_put (bm + 8, 32);
  be64_put (bm + 16, 0x50000);

  p = put_ext (c, 112, QK_EXT_BACKING_FORMAT, 5, "qcow2", 0);
  is_u64 (p, 128, "backing format extension padded to 8");
  p = put_ext (c, p, QK_EXT_FEATURE_TABLE, 96, ft, 0);
  p = put_ext (c, p, 0x12345678, 3, "xyz", 0xee);   /* unknown, odd padding */
  p = put_ext (c, p, QK_EXT_BITMAPS, 24, bm, 0);
  end_marker = p;
  p = put_ext (c, p, QK_EXT_END, 0, NULL, 0);
  memcpy (c + p, "base.qcow2", 10);  /* a backing file name after the end */

  x = exact_copy (c, 4096);
  r = walk (x, 112, 4096, &l);
  ok (r == 0 && l.n == 4 && !l.bad, "walk finds 4 extensions and stops at "
      "the end marker");
  ok (l.e[0].magic == QK_EXT_BACKING_FORMAT && l.e[0].length == 5
      && l.e[0].offset == 112 && memcmp (l.e[0].payload, "qcow2", 5) == 0,
      "backing format extension: magic, length, offset, payload");
  ok (l.e[1].magic == QK_EXT_FEATURE_TABLE && l.e[1].length == 96
      && l.e[1].offset == 128 && l.e[1].payload[50] == 'b',
      "feature table extension");
  ok (l.e[2].magic == 0x12345678 && l.e[2].length == 3 && l.e[2].offset == 232
      && memcmp (l.e[2].payload, "xyz", 3) == 0, "unknown extension kept");
  ok (l.e[3].magic == QK_EXT_BITMAPS && l.e[3].length == 24
      && l.e[3].offset == 248, "bitmaps extension after odd padding");
  is_u64 (end_marker, 280, "end marker offset");

  r = walk (x, 112, end_marker, &l);
  ok (r == 0 && l.n == 4 && !l.bad, "area ending exactly after the last "
      "extension (no end marker) is fine");
  r = walk (x, 112, end_marker + 8 + 10, &l);
  ok (r == 0 && l.n == 4, "area ending at the backing file name");
  free (x);

  /* without the end marker, the backing file name is read as an extension */
  memcpy (c + end_marker, "base.qcow2", 10);
  x = exact_copy (c, 4096);
  r = walk (x, 112, 4096, &l);
  ok (failed_badmsg (r) && l.n == 4, "no end marker and no backing_file_offset "
      "limit: the name overruns as an extension, EBADMSG after 4");
  r = walk (x, 112, end_marker, &l);
  ok (r == 0 && l.n == 4, "walk limited at backing_file_offset stops before "
      "the name");
  free (x);

  /* empty areas */
  memset (c, 0, 4096);
  x = exact_copy (c, 4096);
  ok (walk (x, 112, 4096, &l) == 0 && l.n == 0, "end marker first: nothing");
  ok (walk (x, 4096, 4096, &l) == 0 && l.n == 0, "empty area: nothing");
  ok (walk (x, 200, 100, &l) == 0 && l.n == 0, "start after end: nothing");
  ok (failed_badmsg (walk (x, 4092, 4096, &l)), "4 bytes left: truncated "
      "extension header fails");
  ok (failed_badmsg (walk (x, 4089, 4096, &l)), "7 bytes left: truncated "
      "extension header fails");
  ok (walk (x, 4088, 4096, &l) == 0 && l.n == 0, "8 zero bytes left: end "
      "marker");
  free (x);

  /* lengths */
  memset (c, 0, 4096);
  put_ext (c, 112, 0x11111111, 4096 - 112 - 8, NULL, 0);
  x = exact_copy (c, 4096);
  ok (walk (x, 112, 4096, &l) == 0 && l.n == 1 && !l.bad,
      "an extension filling the area exactly");
  free (x);
  be32_put (c + 116, 4096 - 112 - 8 + 1);
  x = exact_copy (c, 4096);
  ok (failed_badmsg (walk (x, 112, 4096, &l)) && l.n == 0,
      "an extension one byte too long fails before the callback");
  free (x);
  be32_put (c + 116, 0xffffffff);
  x = exact_copy (c, 4096);
  ok (failed_badmsg (walk (x, 112, 4096, &l)) && l.n == 0,
      "length 0xffffffff fails (no overflow)");
  free (x);
  be32_put (c + 116, 0xfffffff9);
  x = exact_copy (c, 4096);
  ok (failed_badmsg (walk (x, 112, 4096, &l)) && l.n == 0,
      "length 0xfffffff9 (padding would wrap 32 bits) fails");
  free (x);

  /* padding: QEMU checks the unpadded length against the area */
  memset (c, 0, 4096);
  put_ext (c, 112, 0x22222222, 5, "abcde", 0x77);
  x = exact_copy (c, 125);
  ok (walk (x, 112, 125, &l) == 0 && l.n == 1 && !l.bad,
      "payload ending at an unaligned end (padding past it) is accepted, as "
      "QEMU does");
  free (x);
  x = exact_copy (c, 124);
  ok (failed_badmsg (walk (x, 112, 124, &l)), "payload one byte past an "
      "unaligned end fails");
  free (x);

  /* zero-length and padding contents */
  memset (c, 0xcc, 4096);
  p = put_ext (c, 112, 0x33333333, 0, NULL, 0);
  p = put_ext (c, p, 0x44444444, 1, "!", 0xff);
  p = put_ext (c, p, QK_EXT_END, 0, NULL, 0);
  x = exact_copy (c, 4096);
  ok (walk (x, 112, 4096, &l) == 0 && l.n == 2 && l.e[0].length == 0
      && l.e[1].offset == 120 && l.e[1].payload[0] == '!',
      "zero-length extension, then one with non-zero padding");
  free (x);

  /* a duplicate is reported twice (image.c decides which one wins) */
  memset (c, 0, 4096);
  p = put_ext (c, 112, QK_EXT_BACKING_FORMAT, 3, "raw", 0);
  p = put_ext (c, p, QK_EXT_BACKING_FORMAT, 5, "qcow2", 0);
  x = exact_copy (c, 4096);
  ok (walk (x, 112, 4096, &l) == 0 && l.n == 2 && l.e[0].magic == l.e[1].magic,
      "duplicate extensions are both walked");
  /* callback failure stops the walk */
  memset (&l, 0, sizeof l);
  l.stop_at = 0;
  l.base = x;
  l.end = 4096;
  ok (qk_extensions_walk (x, 112, 4096, ext_collect, &l) == -1 && l.n == 1,
      "a failing callback stops the walk with -1");
  free (x);

  /* the end marker: QEMU checks every length, the end marker's too,
   * before it looks at the type (qcow2_read_extensions) */
  memset (c, 0, 4096);
  p = put_ext (c, 112, QK_EXT_BACKING_FORMAT, 5, "qcow2", 0);
  be32_put (c + p, QK_EXT_END);
  be32_put (c + p + 4, 0x10000);
  x = exact_copy (c, 4096);
  r = walk (x, 112, 4096, &l);
  ok (failed_badmsg (r) && l.n == 1, "an end marker whose length runs past "
      "the area fails (EBADMSG), after the extension before it");
  ok (strstr (qk_get_error (), "end marker") != NULL
      && strstr (qk_get_error (), "Header extension too large") != NULL
      && strstr (qk_get_error (), "exceeds the header area") == NULL,
      "the message says it is the end marker, and QEMU's words (%s)",
      qk_get_error ());
  free (x);
  be32_put (c + p + 4, 4096 - p - 8);
  x = exact_copy (c, 4096);
  ok (walk (x, 112, 4096, &l) == 0 && l.n == 1, "an end marker whose length "
      "fills the area exactly is accepted");
  free (x);
  be32_put (c + p + 4, 4096 - p - 8 + 1);
  x = exact_copy (c, 4096);
  ok (failed_badmsg (walk (x, 112, 4096, &l)), "one byte more fails");
  free (x);
  be32_put (c + p + 4, 5);
  x = exact_copy (c, 4096);
  ok (walk (x, 112, p + 8 + 5, &l) == 0 && l.n == 1, "an end marker with "
      "a small length (within an area ending at the backing file name) is "
      "accepted");
  ok (failed_badmsg (walk (x, 112, p + 8 + 4, &l)), "and fails when the "
      "area ends one byte earlier");
  free (x);
  be32_put (c + p + 4, 0xffffffff);
  x = exact_copy (c, 4096);
  ok (failed_badmsg (walk (x, 112, 4096, &l)) && l.n == 1,
      "an end marker of length 0xffffffff fails (no overflow)");
  free (x);
  memset (c, 0, 4096);
  be32_put (c + 116, 0x20);
  x = exact_copy (c, 4096);
  ok (failed_badmsg (walk (x, 112, 136, &l)) && l.n == 0, "an end marker "
      "first, its length past a short area: fails with no callback");
  free (x);

  /* good extensions before an overrunning one are reported */
  memset (c, 0, 512);
  p = put_ext (c, 112, QK_EXT_BACKING_FORMAT, 5, "qcow2", 0);
  p = put_ext (c, p, QK_EXT_FEATURE_TABLE, 48, ft, 0);
  be32_put (c + p, 0x55555555);
  be32_put (c + p + 4, 512);
  x = exact_copy (c, 512);
  ok (failed_badmsg (walk (x, 112, 512, &l)) && l.n == 2, "two good "
      "extensions, then one overrunning: EBADMSG after two callbacks");
  ok (strstr (qk_get_error (), "55555555") != NULL, "the message names the "
      "bad extension's magic");
  free (x);

  is_str (qk_extension_name (QK_EXT_BACKING_FORMAT), "backing format",
          "extension name: backing format");
  is_str (qk_extension_name (QK_EXT_FEATURE_TABLE), "feature name table",
          "extension name: feature name table");
  is_str (qk_extension_name (QK_EXT_BITMAPS), "bitmaps",
          "extension name: bitmaps");
  is_str (qk_extension_name (QK_EXT_CRYPTO),
          "full disk encryption header pointer", "extension name: crypto");
  is_str (qk_extension_name (QK_EXT_DATA_FILE), "external data file name",
          "extension name: data file");
  is_str (qk_extension_name (0xdeadbeef), "unknown", "extension name: unknown");
  free (c);
}

/* ---- L2 entries ---- */

/* Independent model of qcow2_get_cluster_type / qcow2_get_subcluster_type
 * (block/qcow2.h), written from the reference's rules. */
static enum qk_cluster_type
model_cluster (uint64_t e, bool extl2, bool df)
{
  uint64_t off = e & 0x00fffffffffffe00ULL;
  if (e >> 62 & 1)
    return QK_CLUSTER_COMPRESSED;
  if ((e & 1) && !extl2)
    return off ? QK_CLUSTER_ZERO_ALLOC : QK_CLUSTER_ZERO_PLAIN;
  if (off == 0)
    return df && (e >> 63) ? QK_CLUSTER_NORMAL : QK_CLUSTER_UNALLOCATED;
  return QK_CLUSTER_NORMAL;
}

static enum qk_subcluster_type
model_sub (uint64_t e, uint64_t bm, unsigned sc, bool extl2, bool df)
{
  enum qk_cluster_type t = model_cluster (e, extl2, df);
  uint64_t alloc = bm & 0xffffffffULL, zero = bm >> 32;

  if (!extl2)
    switch (t) {
    case QK_CLUSTER_COMPRESSED: return QK_SUB_COMPRESSED;
    case QK_CLUSTER_ZERO_PLAIN: return QK_SUB_ZERO_PLAIN;
    case QK_CLUSTER_ZERO_ALLOC: return QK_SUB_ZERO_ALLOC;
    case QK_CLUSTER_NORMAL: return QK_SUB_NORMAL;
    case QK_CLUSTER_UNALLOCATED: return QK_SUB_UNALLOCATED_PLAIN;
    }
  switch (t) {
  case QK_CLUSTER_COMPRESSED:
    return QK_SUB_COMPRESSED;
  case QK_CLUSTER_NORMAL:
    if (alloc & zero)
      return QK_SUB_INVALID;
    if (zero >> sc & 1)
      return QK_SUB_ZERO_ALLOC;
    if (alloc >> sc & 1)
      return QK_SUB_NORMAL;
    return QK_SUB_UNALLOCATED_ALLOC;
  case QK_CLUSTER_UNALLOCATED:
    if (alloc)
      return QK_SUB_INVALID;
    if (zero >> sc & 1)
      return QK_SUB_ZERO_PLAIN;
    return QK_SUB_UNALLOCATED_PLAIN;
  default:
    return QK_SUB_INVALID;  /* zero types cannot happen with extended L2 */
  }
}

static void
test_l2_types (void)
{
  const uint64_t C = QK_OFLAG_COPIED, Z = QK_OFLAG_ZERO,
                 X = QK_OFLAG_COMPRESSED, OFF = 0x50000;

  /* standard entries */
  is_u64 (qk_l2_cluster_type (0, false, false), QK_CLUSTER_UNALLOCATED,
          "0: unallocated");
  is_u64 (qk_l2_cluster_type (C, false, false), QK_CLUSTER_UNALLOCATED,
          "COPIED, offset 0, no data file: unallocated");
  is_u64 (qk_l2_cluster_type (C, false, true), QK_CLUSTER_NORMAL,
          "COPIED, offset 0, data file: normal");
  is_u64 (qk_l2_cluster_type (0, false, true), QK_CLUSTER_UNALLOCATED,
          "offset 0 without COPIED, data file: unallocated");
  is_u64 (qk_l2_cluster_type (OFF, false, false), QK_CLUSTER_NORMAL,
          "offset: normal");
  is_u64 (qk_l2_cluster_type (OFF | C, false, false), QK_CLUSTER_NORMAL,
          "offset + COPIED: normal");
  is_u64 (qk_l2_cluster_type (Z, false, false), QK_CLUSTER_ZERO_PLAIN,
          "zero flag: zero plain");
  is_u64 (qk_l2_cluster_type (Z | OFF | C, false, false),
          QK_CLUSTER_ZERO_ALLOC, "zero flag + offset: zero alloc");
  is_u64 (qk_l2_cluster_type (Z | C, false, true), QK_CLUSTER_ZERO_PLAIN,
          "zero flag + COPIED, data file: zero plain (zero checked first)");
  is_u64 (qk_l2_cluster_type (X, false, false), QK_CLUSTER_COMPRESSED,
          "compressed flag alone: compressed");
  is_u64 (qk_l2_cluster_type (X | Z | OFF, false, false),
          QK_CLUSTER_COMPRESSED, "compressed wins over zero");
  is_u64 (qk_l2_cluster_type (X | C | 1234, true, true), QK_CLUSTER_COMPRESSED,
          "compressed with extended L2 and data file");
  is_u64 (qk_l2_cluster_type (QK_L2E_STD_RESERVED, false, false),
          QK_CLUSTER_UNALLOCATED, "only reserved bits: unallocated");
  is_u64 (qk_l2_cluster_type (0x3f00000000000000ULL, false, false),
          QK_CLUSTER_UNALLOCATED, "bits 56-61 are not offset bits");
  is_u64 (qk_l2_cluster_type (0x00fffffffffffe00ULL, false, false),
          QK_CLUSTER_NORMAL, "all offset bits: normal");
  is_u64 (qk_l2_cluster_type (0x1ff & ~1ULL, false, false),
          QK_CLUSTER_UNALLOCATED, "bits 1-8 are not offset bits");
  /* extended L2: the zero flag is not a flag */
  is_u64 (qk_l2_cluster_type (Z, true, false), QK_CLUSTER_UNALLOCATED,
          "extended L2: bit 0 alone is unallocated");
  is_u64 (qk_l2_cluster_type (Z | OFF, true, false), QK_CLUSTER_NORMAL,
          "extended L2: bit 0 + offset is normal");

  /* subclusters, standard entries: the index is ignored */
  is_u64 (qk_l2_subcluster_type (0, 0, 0, false, false),
          QK_SUB_UNALLOCATED_PLAIN, "std: unallocated -> unallocated plain");
  is_u64 (qk_l2_subcluster_type (OFF, 0, 0, false, false), QK_SUB_NORMAL,
          "std: normal");
  is_u64 (qk_l2_subcluster_type (Z, 0, 0, false, false), QK_SUB_ZERO_PLAIN,
          "std: zero plain");
  is_u64 (qk_l2_subcluster_type (Z | OFF, 0, 0, false, false),
          QK_SUB_ZERO_ALLOC, "std: zero alloc");
  is_u64 (qk_l2_subcluster_type (X | OFF, 0, 0, false, false),
          QK_SUB_COMPRESSED, "std: compressed");
  is_u64 (qk_l2_subcluster_type (OFF, ~0ULL, 0, false, false), QK_SUB_NORMAL,
          "std: the bitmap argument is ignored");

  /* extended L2, by hand */
  is_u64 (qk_l2_subcluster_type (OFF, 1, 0, true, false), QK_SUB_NORMAL,
          "ext: alloc bit 0 -> sc 0 normal");
  is_u64 (qk_l2_subcluster_type (OFF, 1, 1, true, false),
          QK_SUB_UNALLOCATED_ALLOC, "ext: sc 1 not allocated -> unallocated "
          "alloc");
  is_u64 (qk_l2_subcluster_type (OFF, 1ULL << 33, 1, true, false),
          QK_SUB_ZERO_ALLOC, "ext: zero bit 1 -> sc 1 zero alloc");
  is_u64 (qk_l2_subcluster_type (OFF, 1ULL << 31, 31, true, false),
          QK_SUB_NORMAL, "ext: sc 31 allocated");
  is_u64 (qk_l2_subcluster_type (OFF, 1ULL << 63, 31, true, false),
          QK_SUB_ZERO_ALLOC, "ext: sc 31 zero");
  is_u64 (qk_l2_subcluster_type (OFF, 1ULL << 5 | 1ULL << 37, 0, true, false),
          QK_SUB_INVALID, "ext: both bits for sc 5 make every sc invalid");
  is_u64 (qk_l2_subcluster_type (OFF, 0xffffffffULL, 7, true, false),
          QK_SUB_NORMAL, "ext: all allocated");
  is_u64 (qk_l2_subcluster_type (OFF, 0xffffffff00000000ULL, 7, true, false),
          QK_SUB_ZERO_ALLOC, "ext: all zero, allocated cluster");
  is_u64 (qk_l2_subcluster_type (0, 0, 3, true, false),
          QK_SUB_UNALLOCATED_PLAIN, "ext: unallocated, empty bitmap");
  is_u64 (qk_l2_subcluster_type (0, 1ULL << 35, 3, true, false),
          QK_SUB_ZERO_PLAIN, "ext: unallocated, zero bit -> zero plain");
  is_u64 (qk_l2_subcluster_type (0, 1ULL << 35, 4, true, false),
          QK_SUB_UNALLOCATED_PLAIN, "ext: unallocated, other sc zero");
  is_u64 (qk_l2_subcluster_type (0, 1ULL << 9, 3, true, false),
          QK_SUB_INVALID, "ext: unallocated with an alloc bit: invalid");
  is_u64 (qk_l2_subcluster_type (Z, 1ULL << 9, 9, true, false),
          QK_SUB_INVALID, "ext: bit 0 is no zero flag (still unallocated)");
  is_u64 (qk_l2_subcluster_type (X | OFF, 0xdeadbeefcafeULL, 2, true, false),
          QK_SUB_COMPRESSED, "ext: compressed regardless of the bitmap");
  is_u64 (qk_l2_subcluster_type (C, 1, 0, true, true), QK_SUB_NORMAL,
          "ext + data file: COPIED offset 0, alloc bit -> normal");
  is_u64 (qk_l2_subcluster_type (C, 1, 0, true, false), QK_SUB_INVALID,
          "ext, no data file: COPIED offset 0 with alloc bit -> invalid");

  /* exhaustive over interesting entries and bitmaps, every sc index */
  {
    static const uint64_t entries[] = {
      0, 1, 0x200, 0x50000, 0x50001, 1ULL << 63, (1ULL << 63) | 1,
      (1ULL << 63) | 0x50000, 1ULL << 62, (1ULL << 62) | 0x50000,
      (3ULL << 62) | 0x123, 0x3f000000000001feULL, 0x00fffffffffffe00ULL,
      0xffffffffffffffffULL, 0x7fffffffffffffffULL, 0x8000000000000001ULL,
    };
    static const uint64_t bitmaps[] = {
      0, 1, 0x80000000ULL, 0xffffffffULL, 1ULL << 32, 1ULL << 63,
      0xffffffff00000000ULL, 0x0000ffff0000ffffULL, 0xffff00000000ffffULL,
      0xaaaaaaaa55555555ULL, 0x5555555555555555ULL, ~0ULL,
    };
    size_t bad = 0, total = 0;
    for (size_t i = 0; i < sizeof entries / sizeof entries[0]; i++)
      for (size_t j = 0; j < sizeof bitmaps / sizeof bitmaps[0]; j++)
        for (unsigned sc = 0; sc < 32; sc++)
          for (int m = 0; m < 4; m++) {
            bool ext = m & 1, df = m & 2;
            total++;
            if (qk_l2_subcluster_type (entries[i], bitmaps[j], sc, ext, df)
                != model_sub (entries[i], bitmaps[j], sc, ext, df))
              bad++;
            if (qk_l2_cluster_type (entries[i], ext, df)
                != model_cluster (entries[i], ext, df))
              bad++;
          }
    ok (bad == 0, "%zu entry/bitmap/sc/mode combinations agree with the "
        "model (%zu differ)", total, bad);
  }
}

static void
test_l2_compressed (void)
{
  /* a descriptor for 64 KiB clusters: x = 54 */
  uint64_t off, n;

  qk_l2_compressed (QK_OFLAG_COMPRESSED | 0x50000, 16, &off, &n);
  ok (off == 0x50000 && n == 512, "64k: offset 0x50000, 0 extra sectors -> "
      "512 bytes");
  qk_l2_compressed (QK_OFLAG_COMPRESSED | (3ULL << 54) | 0x50123, 16, &off,
                    &n);
  ok (off == 0x50123 && n == 4 * 512 - 0x123, "64k: unaligned offset, 3 extra "
      "sectors -> (3+1)*512 - (off & 511)");
  qk_l2_compressed (QK_OFLAG_COPIED | QK_OFLAG_COMPRESSED | (0xffULL << 54)
                    | ((1ULL << 54) - 1), 16, &off, &n);
  ok (off == (1ULL << 54) - 1 && n == 256 * 512 - 511, "64k: all bits set; "
      "COPIED and compressed bits are not part of the size");

  for (unsigned cb = 9; cb <= 21; cb++) {
    unsigned x = 62 - (cb - 8);
    uint64_t offmask = (1ULL << x) - 1, maxsec = (1ULL << (cb - 8)) - 1;
    static const uint64_t offs[] = { 0, 1, 511, 512, 0x12345, 0x7fffffe00ULL };
    bool good = true, max2 = true;
    for (size_t i = 0; i < sizeof offs / sizeof offs[0]; i++) {
      uint64_t secs[] = { 0, 1, maxsec / 2, maxsec };
      for (size_t k = 0; k < 4; k++) {
        uint64_t o = offs[i] & offmask, s = secs[k];
        for (int flags = 0; flags < 2; flags++) {
          uint64_t e = QK_OFLAG_COMPRESSED | (flags ? QK_OFLAG_COPIED : 0)
                       | (s << x) | o;
          qk_l2_compressed (e, cb, &off, &n);
          if (off != o || n != (s + 1) * 512 - (o & 511))
            good = false;
          if (n > 2ULL << cb)
            max2 = false;
        }
      }
    }
    qk_l2_compressed (QK_OFLAG_COMPRESSED | offmask, cb, &off, &n);
    ok (good && off == offmask && n == 1, "cluster_bits %u: x = %u, offsets "
        "and sector counts decode", cb, x);
    qk_l2_compressed (QK_OFLAG_COMPRESSED | (maxsec << x), cb, &off, &n);
    ok (max2 && off == 0 && n == 2ULL << cb, "cluster_bits %u: the largest "
        "descriptor is two clusters (%" PRIu64 " bytes)", cb, n);
  }
}

/* ---- refcount blocks ---- */

static void
test_refblocks (void)
{
  enum { BLK = 512 };
  uint8_t *b = xcalloc (BLK), *ref = xcalloc (BLK);

  for (unsigned o = 0; o <= 6; o++) {
    unsigned bits = 1U << o;
    uint64_t max = bits == 64 ? ~0ULL : (1ULL << bits) - 1;
    uint64_t entries = (uint64_t) BLK * 8 / bits;
    bool rt = true, neigh = true;

    /* round trip of a pattern over the whole block */
    memset (b, 0, BLK);
    for (uint64_t i = 0; i < entries; i++)
      qk_refblock_set (b, o, i, (i * 0x9e3779b97f4a7c15ULL + 7) & max);
    for (uint64_t i = 0; i < entries; i++)
      if (qk_refblock_get (b, o, i) != ((i * 0x9e3779b97f4a7c15ULL + 7) & max))
        rt = false;
    ok (rt, "order %u: set/get round trip over %" PRIu64 " entries", o,
        entries);

    /* every entry of the first 16 bytes: neighbours untouched */
    for (uint64_t i = 0; i < 16 * 8 / bits; i++) {
      for (int fill = 0; fill < 2; fill++) {
        uint64_t v = fill ? 0 : max;
        memset (b, fill ? 0xff : 0, BLK);
        qk_refblock_set (b, o, i, v);
        for (uint64_t k = 0; k < entries; k++) {
          uint64_t want = k == i ? v : (fill ? max : 0);
          if (qk_refblock_get (b, o, k) != want)
            neigh = false;
        }
      }
    }
    ok (neigh, "order %u: setting one entry leaves its neighbours alone", o);

    /* values wider than the entry are truncated to it */
    memset (b, 0, BLK);
    qk_refblock_set (b, o, 3, max + 6);
    ok (qk_refblock_get (b, o, 3) == ((max + 6) & max)
        && qk_refblock_get (b, o, 2) == 0 && qk_refblock_get (b, o, 4) == 0,
        "order %u: a too-wide value is truncated, neighbours stay 0", o);

    /* the last entry of the block */
    memset (b, 0, BLK);
    qk_refblock_set (b, o, entries - 1, max);
    ok (qk_refblock_get (b, o, entries - 1) == max
        && qk_refblock_get (b, o, entries - 2) == 0,
        "order %u: last entry (%" PRIu64 ")", o, entries - 1);
  }

  /* byte layout: sub-byte widths from the LSB, wider ones big-endian */
  memset (b, 0, BLK);
  qk_refblock_set (b, 0, 0, 1);
  qk_refblock_set (b, 0, 7, 1);
  qk_refblock_set (b, 0, 9, 1);
  ok (b[0] == 0x81 && b[1] == 0x02, "order 0: bit 0 is the LSB");
  memset (b, 0, BLK);
  qk_refblock_set (b, 1, 0, 3);
  qk_refblock_set (b, 1, 3, 1);
  qk_refblock_set (b, 1, 5, 2);
  ok (b[0] == 0x43 && b[1] == 0x08, "order 1: 2-bit entries from the LSB");
  memset (b, 0, BLK);
  qk_refblock_set (b, 2, 0, 0xa);
  qk_refblock_set (b, 2, 1, 0x5);
  qk_refblock_set (b, 2, 3, 0xc);
  ok (b[0] == 0x5a && b[1] == 0xc0, "order 2: low nibble first");
  memset (b, 0, BLK);
  qk_refblock_set (b, 3, 2, 0xab);
  ok (b[2] == 0xab && b[1] == 0 && b[3] == 0, "order 3: one byte");
  memset (b, 0, BLK);
  qk_refblock_set (b, 4, 1, 0x1234);
  ok (b[2] == 0x12 && b[3] == 0x34 && b[1] == 0 && b[4] == 0,
      "order 4: big-endian 16-bit");
  memset (b, 0, BLK);
  qk_refblock_set (b, 5, 1, 0x01020304);
  ok (memcmp (b + 4, "\1\2\3\4", 4) == 0 && b[3] == 0 && b[8] == 0,
      "order 5: big-endian 32-bit");
  memset (b, 0, BLK);
  qk_refblock_set (b, 6, 1, 0x0102030405060708ULL);
  ok (memcmp (b + 8, "\1\2\3\4\5\6\7\10", 8) == 0 && b[7] == 0 && b[16] == 0,
      "order 6: big-endian 64-bit");
  memset (b, 0, BLK);
  b[0] = 0x00; b[1] = 0x01; b[2] = 0xff; b[3] = 0xfe;
  ok (qk_refblock_get (b, 4, 0) == 1 && qk_refblock_get (b, 4, 1) == 0xfffe,
      "order 4 reads QEMU's layout");

  /* an invalid order reads 0 and writes nothing */
  memset (b, 0x5a, BLK);
  memcpy (ref, b, BLK);
  qk_refblock_set (b, 7, 0, 0);
  qk_refblock_set (b, 100, 1, 0);
  ok (memcmp (b, ref, BLK) == 0 && qk_refblock_get (b, 7, 0) == 0
      && qk_refblock_get (b, 0xffffffff, 0) == 0,
      "orders above 6: get is 0, set writes nothing");
  free (b);
  free (ref);
}

/* qk_refblock_next_used against a scan of every entry: every width, long
 * zero runs (whole 4 KiB chunks and words skipped) with counts at their
 * edges, ranges that start and end anywhere. */
static void
test_refblock_next_used (void)
{
  enum { BYTES = 3 * 4096 + 24 };
  uint8_t *b = malloc (BYTES), pg[4];
  unsigned bad = 0, bad_pg = 0, tried = 0;

  for (unsigned o = 0; o <= 6; o++) {
    uint64_t entries = (uint64_t) BYTES * 8 >> o, chunk = 32768U >> o;
    uint64_t at[] = { 0, 1, chunk - 1, chunk, chunk + 1, 2 * chunk + 5,
                      entries - 1 };
    for (unsigned m = 0; m < 1u << 7; m += 1 + m / 3) {
      memset (b, 0, BYTES);
      for (unsigned j = 0; j < 7; j++)
        if (m >> j & 1)
          qk_refblock_set (b, o, at[j], 1);
      for (uint64_t k = 0; k < entries; k += 1 + k / 5 + (k > chunk) * 97) {
        uint64_t ends[] = { entries, k + (64U >> o), k + chunk + 3, k };
        for (unsigned e = 0; e < 4; e++) {
          uint64_t end = ends[e] > entries ? entries : ends[e], want = end;
          for (uint64_t x = k; x < end; x++)
            if (qk_refblock_get (b, o, x)) {
              want = x;
              break;
            }
          tried++;
          bad += qk_refblock_next_used (b, o, k, end) != want;
          /* the pages marked: those with a count, and one without */
          memset (pg, 0, sizeof pg);
          for (unsigned j = 0; j < 7; j++)
            if (m >> j & 1)
              pg[at[j] / chunk] = 1;
          pg[(k / chunk + 1) % 4] = 1;
          bad_pg += qk_refblock_next_used_pg (b, pg, o, k, end) != want;
          bad_pg += qk_refblock_next_used_pg (b, NULL, o, k, end) != want;
        }
      }
    }
  }
  ok (tried > 10000 && bad == 0, "refblock_next_used finds the first count "
      "a scan finds, every width (%u of %u ranges differ)", bad, tried);
  ok (bad_pg == 0, "refblock_next_used_pg finds the same over the pages "
      "marked, and with no page map (%u of %u differ)", bad_pg, 2 * tried);
  ok (qk_refblock_next_used (b, 7, 0, 100) == 100,
      "refblock_next_used: an order above 6 has no counts");
  free (b);
  b = calloc (4, 4096);                    /* four whole pages */
  memset (pg, 0, sizeof pg);
  qk_refblock_set (b, 4, 2048 + 7, 1);     /* on page 1, not marked */
  qk_refblock_set (b, 4, 3 * 2048 + 1, 1); /* on page 3, marked */
  pg[3] = 1;
  ok (qk_refblock_next_used_pg (b, pg, 4, 0, 4 * 2048) == 3 * 2048 + 1
      && qk_refblock_next_used_pg (b, pg, 4, 2048, 2 * 2048) == 2 * 2048,
      "refblock_next_used_pg: pages not marked are not read");
  free (b);
}

/* ---- snapshots ---- */

static size_t
put_snap (uint8_t *b, uint64_t l1off, uint32_t l1size, const char *id,
          const char *name, uint32_t dsec, uint32_t dnsec, uint64_t clk,
          uint32_t vms32, const uint8_t *extra, uint32_t elen)
{
  size_t il = strlen (id), nl = strlen (name);

  be64_put (b, l1off);
  be32_put (b + 8, l1size);
  be16_put (b + 12, il);
  be16_put (b + 14, nl);
  be32_put (b + 16, dsec);
  be32_put (b + 20, dnsec);
  be64_put (b + 24, clk);
  be32_put (b + 32, vms32);
  be32_put (b + 36, elen);
  if (elen)
    memcpy (b + 40, extra, elen);
  memcpy (b + 40 + elen, id, il);
  memcpy (b + 40 + elen + il, name, nl);
  return 40 + elen + il + nl;
}

static int
snap_exact (const uint8_t *b, size_t len, struct qk_snapshot_raw *r,
            size_t *elen)
{
  uint8_t *c = exact_copy (b, len);
  int rv = qk_snapshot_parse (c, len, r, elen);
  free (c);
  return rv;
}

static void
test_snapshots (void)
{
  uint8_t *b = xcalloc (1 << 18), *f = xcalloc (1 << 18);
  uint8_t extra[64];
  struct qk_snapshot_raw r;
  size_t n, el;
  int rv;

  for (int i = 0; i < 64; i++)
    extra[i] = 0x80 + i;
  be64_put (extra, 0x1122334455667788ULL);       /* vm_state_size_large */
  be64_put (extra + 8, 0x40000000ULL);           /* disk_size */
  be64_put (extra + 16, 0x0000000000abcdefULL);  /* icount */

  /* v2-style: no extra data */
  n = put_snap (b, 0x70000, 16, "1", "first", 1700000000, 123456789,
                5000000000ULL, 0x1234, NULL, 0);
  rv = snap_exact (b, n, &r, &el);
  ok (rv == 0, "snapshot without extra data parses");
  is_u64 (r.s.l1_table_offset, 0x70000, "l1_table_offset");
  is_u64 (r.s.l1_size, 16, "l1_size");
  is_str (r.s.id, "1", "id");
  is_str (r.s.name, "first", "name");
  is_u64 (r.s.date_sec, 1700000000, "date_sec");
  is_u64 (r.s.date_nsec, 123456789, "date_nsec");
  is_u64 (r.s.vm_clock_nsec, 5000000000ULL, "vm_clock_nsec");
  is_u64 (r.s.vm_state_size32, 0x1234, "vm_state_size (32-bit)");
  is_u64 (r.s.vm_state_size, 0x1234, "no large field: vm_state_size is the "
          "32-bit one");
  ok (!r.s.has_vm_state_size_large && !r.s.has_disk_size && !r.s.has_icount,
      "no extra fields present");
  is_u64 (r.s.extra_data_size, 0, "extra_data_size 0");
  is_u64 (el, 48, "entry length 40+1+5 padded to 48");
  is_u64 (r.s.entry_size, 48, "entry_size field");
  ok (r.id == r.s.id && r.name == r.s.name, "the strings are owned by the raw "
      "entry");
  qk_snapshot_raw_free (&r);
  ok (r.id == NULL && r.name == NULL && r.extra == NULL, "free clears");

  /* 16 bytes of extra data: large vm state size and disk size */
  memset (b, 0, 4096);
  n = put_snap (b, 0x80000, 8, "2", "sixteen", 1, 2, 3, 0x99, extra, 16);
  ok (snap_exact (b, n, &r, &el) == 0 && r.s.has_vm_state_size_large
      && r.s.has_disk_size && !r.s.has_icount
      && r.s.vm_state_size == 0x1122334455667788ULL
      && r.s.vm_state_size32 == 0x99 && r.s.disk_size == 0x40000000ULL
      && strcmp (r.s.name, "sixteen") == 0 && el == 64,
      "16 bytes of extra data: vm_state_size_large and disk_size");
  qk_snapshot_raw_free (&r);

  /* 24 bytes: icount too */
  n = put_snap (b, 0x80000, 8, "3", "icount", 1, 2, 3, 0, extra, 24);
  ok (snap_exact (b, n, &r, &el) == 0 && r.s.has_icount
      && r.s.icount == 0xabcdef && el == 72
      && memcmp (r.extra, extra, 24) == 0,
      "24 bytes of extra data: icount; extra bytes kept");
  qk_snapshot_raw_free (&r);
  be64_put (extra + 16, ~0ULL);
  n = put_snap (b, 0x80000, 8, "3", "noicount", 1, 2, 3, 0, extra, 24);
  ok (snap_exact (b, n, &r, &el) == 0 && r.s.has_icount
      && r.s.icount == UINT64_MAX, "icount -1 (disabled) kept as UINT64_MAX");
  qk_snapshot_raw_free (&r);

  /* unknown sizes of extra data */
  {
    static const uint32_t sizes[] = { 1, 7, 8, 15, 23, 25, 40, 63 };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
      uint32_t e = sizes[i];
      memset (b, 0, 4096);
      n = put_snap (b, 0x90000, 1, "42", "odd", 7, 8, 9, 10, extra, e);
      rv = snap_exact (b, n, &r, &el);
      ok (rv == 0 && r.s.extra_data_size == e
          && memcmp (r.extra, extra, e) == 0
          && r.s.has_vm_state_size_large == (e >= 8)
          && r.s.has_disk_size == (e >= 16) && r.s.has_icount == (e >= 24)
          && strcmp (r.s.id, "42") == 0 && strcmp (r.s.name, "odd") == 0
          && el == ((40 + e + 5 + 7) & ~7U),
          "%u bytes of extra data: id and name after it, fields as present",
          e);
      qk_snapshot_raw_free (&r);
    }
  }

  /* truncated at every length */
  memset (b, 0, 4096);
  n = put_snap (b, 0x90000, 1, "7", "truncate-me", 7, 8, 9, 10, extra, 24);
  {
    bool all = true;
    for (size_t len = 0; len < n; len++) {
      rv = snap_exact (b, len, &r, &el);
      if (!failed_badmsg (rv)) {
        all = false;
        printf ("#   length %zu did not fail\n", len);
        if (rv == 0)
          qk_snapshot_raw_free (&r);
        break;
      }
    }
    ok (all, "entry (%zu bytes) truncated at every length 0..%zu fails with "
        "EBADMSG", n, n - 1);
  }
  ok (snap_exact (b, n, &r, &el) == 0 && el == 80 && el > n,
      "the last entry need not be padded (entry length %zu > %zu bytes)", el,
      n);
  qk_snapshot_raw_free (&r);

  /* extra data limits */
  memset (b, 0, 1 << 18);
  n = put_snap (b, 0x90000, 1, "8", "big", 0, 0, 0, 0, NULL, 0);
  be32_put (b + 36, QK_MAX_SNAPSHOT_EXTRA);
  memmove (b + 40 + QK_MAX_SNAPSHOT_EXTRA, b + 40, 4);
  rv = snap_exact (b, 40 + QK_MAX_SNAPSHOT_EXTRA + 4, &r, &el);
  ok (rv == 0 && r.s.extra_data_size == QK_MAX_SNAPSHOT_EXTRA
      && strcmp (r.s.id, "8") == 0 && strcmp (r.s.name, "big") == 0,
      "extra data of %u bytes (the limit) is read", QK_MAX_SNAPSHOT_EXTRA);
  if (rv == 0)
    qk_snapshot_raw_free (&r);
  be32_put (b + 36, QK_MAX_SNAPSHOT_EXTRA + 1);
  rv = snap_exact (b, 1 << 18, &r, &el);
  ok (failed_badmsg (rv) && strstr (qk_get_error (), "extra"),
      "extra data over the limit fails even when the buffer holds it");
  be32_put (b + 36, 0xffffffff);
  ok (failed_badmsg (snap_exact (b, 1 << 18, &r, &el)),
      "extra_data_size 0xffffffff fails");
  ok (r.id == NULL && r.name == NULL && r.extra == NULL, "nothing allocated "
      "on failure");

  /* name / id lengths overrunning */
  memset (b, 0, 4096);
  n = put_snap (b, 0x90000, 1, "9", "name", 0, 0, 0, 0, extra, 16);
  be16_put (b + 12, 0xffff);
  ok (failed_badmsg (snap_exact (b, 4096, &r, &el)), "id_str_size 65535 "
      "overrunning a 4096-byte table fails");
  be16_put (b + 12, 1);
  be16_put (b + 14, 0xffff);
  ok (failed_badmsg (snap_exact (b, 4096, &r, &el)), "name_size 65535 "
      "overrunning fails");
  be16_put (b + 14, (uint16_t) (4096 - 40 - 16 - 1));
  ok (snap_exact (b, 4096, &r, &el) == 0 && strlen (r.name) <= 4039
      && el == 4096, "name filling the rest of the buffer exactly parses");
  qk_snapshot_raw_free (&r);
  be16_put (b + 14, (uint16_t) (4096 - 40 - 16));
  ok (failed_badmsg (snap_exact (b, 4096, &r, &el)), "name one byte too long "
      "fails");
  be16_put (b + 12, 0xffff);
  be16_put (b + 14, 0xffff);
  be32_put (b + 36, QK_MAX_SNAPSHOT_EXTRA);
  ok (failed_badmsg (snap_exact (b, 4096, &r, &el)), "all lengths at their "
      "maximum fail without overflow");

  /* empty id and name, and embedded NULs */
  memset (b, 0, 4096);
  n = put_snap (b, 0, 0, "", "", 0, 0, 0, 0, NULL, 0);
  ok (snap_exact (b, n, &r, &el) == 0 && r.s.id[0] == '\0'
      && r.s.name[0] == '\0' && el == 40, "empty id and name (40 bytes)");
  qk_snapshot_raw_free (&r);
  n = put_snap (b, 0, 0, "ab", "cd", 0, 0, 0, 0, NULL, 0);
  b[41] = '\0';
  ok (snap_exact (b, n, &r, &el) == 0 && strcmp (r.s.id, "a") == 0
      && strcmp (r.s.name, "cd") == 0, "a NUL inside the id ends the string "
      "but not the entry");
  qk_snapshot_raw_free (&r);

  /* entry sizes */
  is_u64 (qk_snapshot_entry_size (0, 0, 0), 40, "entry size 40+0+0+0");
  is_u64 (qk_snapshot_entry_size (24, 1, 4), 72, "entry size 40+24+1+4 -> 72");
  is_u64 (qk_snapshot_entry_size (16, 8, 0), 64, "entry size already aligned");
  is_u64 (qk_snapshot_entry_size (UINT32_MAX, 65535, 65535),
          ((40ULL + UINT32_MAX + 131070 + 7) & ~7ULL),
          "entry size for the largest fields");
  is_u64 (qk_snapshot_entry_size (0, SIZE_MAX, 0), 0, "overflowing id length: "
          "0");
  is_u64 (qk_snapshot_entry_size (1, SIZE_MAX - 40, 0), 0, "overflowing sum: "
          "0");
  is_u64 (qk_snapshot_entry_size (0, 0, SIZE_MAX - 45), 0, "overflow only when "
          "padding: 0");

  /* format round trip, two entries in a row */
  memset (b, 0, 4096);
  be64_put (extra + 16, 77);
  n = put_snap (b, 0xa0000, 4, "10", "round trip", 11, 12, 13, 14, extra, 24);
  {
    size_t n1 = (n + 7) & ~7U, n2, el2;
    struct qk_snapshot_raw r2;
    n2 = put_snap (b + n1, 0xb0000, 5, "11", "second", 1, 2, 3, 4, extra, 16);
    ok (snap_exact (b, n1 + n2, &r, &el) == 0 && el == n1,
        "first of two entries");
    ok (qk_snapshot_parse (b + el, n2, &r2, &el2) == 0
        && strcmp (r2.s.name, "second") == 0 && r2.s.l1_size == 5,
        "second entry at the padded offset");
    memset (f, 0xaa, 4096);
    rv = qk_snapshot_format (&r, f, 4096);
    ok (rv == (int) n1 && memcmp (f, b, n1) == 0 && f[n1] == 0xaa,
        "format writes the same bytes (with zero padding) and no more");
    ok (qk_snapshot_format (&r, f, n1 - 1) == -1, "format into a buffer one "
        "byte short fails");
    qk_snapshot_raw_free (&r);
    qk_snapshot_raw_free (&r2);
  }
  free (b);
  free (f);
}

/* ---- bitmaps ---- */

static size_t
put_bme (uint8_t *b, uint64_t toff, uint32_t tsize, uint32_t flags,
         uint8_t type, uint8_t gran, const char *name, uint32_t elen)
{
  size_t nl = strlen (name);
  be64_put (b, toff);
  be32_put (b + 8, tsize);
  be32_put (b + 12, flags);
  b[16] = type;
  b[17] = gran;
  be16_put (b + 18, nl);
  be32_put (b + 20, elen);
  memset (b + 24, 0xe0, elen);
  memcpy (b + 24 + elen, name, nl);
  return 24 + elen + nl;
}

static int
bme_exact (const uint8_t *b, size_t len, struct qk_bitmap_raw *r, size_t *el)
{
  uint8_t *c = exact_copy (b, len);
  int rv = qk_bitmap_parse (c, len, r, el);
  free (c);
  return rv;
}

static void
test_bitmaps (void)
{
  uint8_t b[512], *x;
  struct qk_bitmaps_ext be;
  struct qk_bitmap_raw r;
  size_t n, el;

  memset (b, 0, sizeof b);
  be32_put (b, 3);
  be32_put (b + 4, 0x01020304);
  be64_put (b + 8, 0x1122334455667788ULL);
  be64_put (b + 16, 0x99aabbccddeeff00ULL);
  x = exact_copy (b, 24);
  ok (qk_bitmaps_ext_parse (x, 24, &be) == 0 && be.nb_bitmaps == 3
      && be.reserved == 0x01020304 && be.directory_size == 0x1122334455667788ULL
      && be.directory_offset == 0x99aabbccddeeff00ULL,
      "bitmaps extension: all four fields");
  ok (failed_badmsg (qk_bitmaps_ext_parse (x, 23, &be)), "bitmaps extension "
      "of 23 bytes fails");
  ok (failed_badmsg (qk_bitmaps_ext_parse (x, 0, &be)), "bitmaps extension "
      "of 0 bytes fails");
  free (x);
  ok (qk_bitmaps_ext_parse (b, 48, &be) == 0 && be.nb_bitmaps == 3,
      "a longer bitmaps extension parses its first 24 bytes");

  memset (b, 0, sizeof b);
  n = put_bme (b, 0x60000, 2, QK_BITMAP_AUTO, 1, 16, "bitmap0", 0);
  ok (bme_exact (b, n, &r, &el) == 0, "bitmap directory entry parses");
  is_u64 (r.b.table_offset, 0x60000, "bitmap table offset");
  is_u64 (r.b.table_size, 2, "bitmap table size");
  is_u64 (r.b.flags, QK_BITMAP_AUTO, "bitmap flags");
  is_u64 (r.b.type, 1, "bitmap type");
  is_u64 (r.b.granularity_bits, 16, "bitmap granularity bits");
  is_u64 (r.b.extra_data_size, 0, "bitmap extra data size");
  is_str (r.b.name, "bitmap0", "bitmap name");
  is_u64 (el, 31, "unpadded last entry: length capped at the buffer");
  is_u64 (r.b.entry_size, 32, "entry_size is padded to 8");
  qk_bitmap_raw_free (&r);
  ok (r.name == NULL, "bitmap free clears");
  ok (qk_bitmap_parse (b, 64, &r, &el) == 0 && el == 32, "entry length 32 "
      "when the buffer holds the padding");
  qk_bitmap_raw_free (&r);

  /* extra data before the name */
  memset (b, 0, sizeof b);
  n = put_bme (b, 0x70000, 1, QK_BITMAP_IN_USE | QK_BITMAP_EXTRA_COMPAT, 1, 9,
               "with-extra", 12);
  ok (bme_exact (b, n, &r, &el) == 0 && r.b.extra_data_size == 12
      && strcmp (r.b.name, "with-extra") == 0 && r.b.entry_size == 48,
      "extra data is skipped before the name");
  qk_bitmap_raw_free (&r);

  /* two entries */
  memset (b, 0, sizeof b);
  n = put_bme (b, 0x60000, 2, 0, 1, 16, "a", 0);
  {
    size_t n1 = (n + 7) & ~7U, n2;
    n2 = put_bme (b + n1, 0x70000, 3, 0, 1, 17, "second", 0);
    x = exact_copy (b, n1 + n2);
    ok (qk_bitmap_parse (x, n1 + n2, &r, &el) == 0 && el == n1, "first of two "
        "entries");
    qk_bitmap_raw_free (&r);
    ok (qk_bitmap_parse (x + el, n1 + n2 - el, &r, &el) == 0
        && strcmp (r.b.name, "second") == 0 && r.b.granularity_bits == 17,
        "second entry");
    qk_bitmap_raw_free (&r);
    free (x);
  }

  /* truncated and overrunning */
  memset (b, 0, sizeof b);
  n = put_bme (b, 0x60000, 2, 0, 1, 16, "truncated", 4);
  {
    bool all = true;
    for (size_t len = 0; len < n; len++)
      if (!failed_badmsg (bme_exact (b, len, &r, &el)))
        all = false;
    ok (all, "bitmap entry truncated at every length 0..%zu fails", n - 1);
  }
  be16_put (b + 18, 0xffff);
  ok (failed_badmsg (bme_exact (b, sizeof b, &r, &el)), "name_size 65535 "
      "overruns");
  be16_put (b + 18, 9);
  be32_put (b + 20, 0xffffffff);
  ok (failed_badmsg (bme_exact (b, sizeof b, &r, &el)), "extra_data_size "
      "0xffffffff overruns (no overflow)");
  ok (r.name == NULL, "nothing allocated on failure");
  memset (b, 0, sizeof b);
  n = put_bme (b, 0, 0, 0, 0, 0, "", 0);
  ok (bme_exact (b, n, &r, &el) == 0 && r.b.name[0] == '\0' && el == 24,
      "empty name (24 bytes)");
  qk_bitmap_raw_free (&r);
}

/* ---- compression ---- */

static void
make_pattern (uint8_t *p, size_t n, int kind)
{
  switch (kind) {
  case 0:
    memset (p, 0, n);
    break;
  case 1:
    for (size_t i = 0; i < n; i++)
      p[i] = "qcowkit compresses clusters. "[i % 29] ^ (uint8_t) (i >> 12);
    break;
  default:
    fill_random (p, n);
    break;
  }
}

static void
test_compress_type (int type)
{
  const char *tn = type == QK_COMPRESSION_ZSTD ? "zstd" : "deflate";
  static const size_t sizes[] = { 512, 4096, 65536, 2 << 20 };
  size_t cap = (4 << 20) + 4096;
  uint8_t *in = xmalloc (4 << 20), *c = xmalloc (cap), *out = xmalloc (cap);
  size_t cl;

  for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
    size_t cs = sizes[si];
    for (int kind = 0; kind < 3; kind++) {
      bool good;
      make_pattern (in, cs, kind);
      good = qk_compress (type, in, cs, c, cap, &cl) == 0 && cl > 0;
      memset (out, 0x5a, cs + 64);
      good = good && qk_decompress (type, c, cl, out, cs) == 0
             && memcmp (out, in, cs) == 0;
      for (size_t k = cs; k < cs + 64; k++)
        good = good && out[k] == 0x5a;
      ok (good, "%s: %zu-byte cluster, %s data: round trip, exactly one "
          "cluster written", tn, cs,
          kind == 0 ? "zero" : kind == 1 ? "text" : "random");
    }
  }

  /* damage, with a 64 KiB cluster of text */
  {
    size_t cs = 65536;
    uint8_t *d;
    make_pattern (in, cs, 1);
    ok (qk_compress (type, in, cs, c, cap, &cl) == 0, "%s: compress 64k", tn);

    d = exact_copy (c, cl / 2);
    ok (failed_badmsg (qk_decompress (type, d, cl / 2, out, cs)),
        "%s: half of the compressed data fails with EBADMSG", tn);
    free (d);
    d = exact_copy (c, cl - 1);
    memset (out, 0, cs);
    if (type == QK_COMPRESSION_ZSTD)
      ok (failed_badmsg (qk_decompress (type, d, cl - 1, out, cs)),
          "zstd: a frame one byte short fails");
    else {
      /* The last byte may only finish the end-of-block code once the
       * cluster is full: QEMU accepts that (Z_BUF_ERROR with a full
       * cluster). Either way the data must never be wrong. */
      int r = qk_decompress (type, d, cl - 1, out, cs);
      ok ((r == 0 && memcmp (out, in, cs) == 0) || failed_badmsg (r),
          "deflate: one byte short gives the right cluster or EBADMSG");
    }
    free (d);
    d = exact_copy (c, cl * 3 / 4);
    ok (failed_badmsg (qk_decompress (type, d, cl * 3 / 4, out, cs)),
        "%s: three quarters of the compressed data fail", tn);
    free (d);
    ok (failed_badmsg (qk_decompress (type, c, 0, out, cs)),
        "%s: empty input fails", tn);
    memset (c, 0xff, 4096);
    ok (failed_badmsg (qk_decompress (type, c, 4096, out, cs)),
        "%s: 0xff garbage fails", tn);
    memset (c, 0, 4096);
    ok (failed_badmsg (qk_decompress (type, c, 4096, out, cs)),
        "%s: zeros (what a descriptor past EOF reads) fail", tn);

    /* trailing bytes after the stream (qcow2 rounds to sectors) */
    ok (qk_compress (type, in, cs, c, cap, &cl) == 0, "%s: compress again", tn);
    fill_random (c + cl, 1000);
    ok (qk_decompress (type, c, cl + 1000, out, cs) == 0
        && memcmp (out, in, cs) == 0, "%s: trailing garbage after the "
        "stream is ignored", tn);

    /* a stream of half a cluster */
    ok (qk_compress (type, in, cs / 2, c, cap, &cl) == 0
        && failed_badmsg (qk_decompress (type, c, cl, out, cs)),
        "%s: a stream of half a cluster fails", tn);

    /* a stream of two clusters */
    make_pattern (in, 2 * cs, 1);
    ok (qk_compress (type, in, 2 * cs, c, cap, &cl) == 0, "%s: compress "
        "two clusters", tn);
    memset (out, 0x5a, cs + 16);
    if (type == QK_COMPRESSION_DEFLATE)
      ok (qk_decompress (type, c, cl, out, cs) == 0
          && memcmp (out, in, cs) == 0 && out[cs] == 0x5a,
          "deflate: a longer stream fills exactly one cluster (QEMU accepts "
          "Z_BUF_ERROR once full)");
    else
      ok (failed_badmsg (qk_decompress (type, c, cl, out, cs))
          && out[cs] == 0x5a, "zstd: a frame longer than one cluster fails "
          "(not fully flushed, as QEMU)");

    /* zstd: several frames make one cluster */
    if (type == QK_COMPRESSION_ZSTD) {
      size_t c1, c2;
      make_pattern (in, cs, 2);
      ok (qk_compress (type, in, cs / 4, c, cap, &c1) == 0
          && qk_compress (type, in + cs / 4, cs - cs / 4, c + c1, cap - c1,
                          &c2) == 0
          && qk_decompress (type, c, c1 + c2, out, cs) == 0
          && memcmp (out, in, cs) == 0, "zstd: two frames make one cluster");
    }

    /* output too small to compress into */
    make_pattern (in, cs, 2);
    ok (qk_compress (type, in, cs, c, 100, &cl) == -1, "%s: compressing "
        "random data into 100 bytes fails", tn);
  }

  ok (qk_decompress (2, c, 10, out, 512) == -1 && qk_get_errno () == ENOTSUP,
      "unknown compression type 2: ENOTSUP");
  ok (qk_compress (7, in, 512, c, cap, &cl) == -1 && qk_get_errno () == ENOTSUP,
      "compress with unknown type 7: ENOTSUP");
  free (in);
  free (c);
  free (out);
}

/* ---- random and hostile buffers ---- */

static void
fuzz_header (unsigned iters)
{
  uint8_t *b = xmalloc (4096), *f = xmalloc (4096);
  unsigned accepted = 0, bad = 0, crash_free = 0;

  for (unsigned it = 0; it < iters; it++) {
    size_t len = rnd_below (160);
    struct qk_header h, h2;
    uint8_t *x;
    int r;

    fill_random (b, 160);
    if (rnd_below (4)) be32_put (b, QK_QCOW2_MAGIC);
    if (rnd_below (4)) be32_put (b + 4, 2 + rnd_below (2));
    if (rnd_below (3)) be32_put (b + 20, rnd_below (30));
    if (rnd_below (2)) be32_put (b + 100, 100 + rnd_below (40));
    if (rnd_below (2)) be32_put (b + 96, rnd_below (10));
    x = exact_copy (b, len);
    r = qk_header_parse (x, len, &h);
    free (x);
    crash_free++;
    if (r != 0) {
      if (qk_get_errno () != EBADMSG || qk_get_error () == NULL)
        bad++;
      continue;
    }
    accepted++;
    if ((h.version != 2 && h.version != 3) || h.cluster_bits < 9
        || h.cluster_bits > 21 || h.cluster_size != 1ULL << h.cluster_bits
        || (h.version == 3 && (h.header_length < 104
                               || h.header_length > h.cluster_size))
        || (h.version == 2 && h.header_length != 72)
        || h.l2_entries * h.l2_entry_size != h.cluster_size
        || (h.refcount_order <= 6) != (h.refcount_bits != 0))
      bad++;
    if (h.header_length <= 4096) {
      if (qk_header_format (&h, f, 4096) != 0
          || qk_header_parse (f, 4096, &h2) != 0 || !same_header (&h, &h2))
        bad++;
    }
  }
  ok (bad == 0 && crash_free == iters, "header: %u random buffers, %u "
      "accepted, all invariants and round trips hold (%u bad)", iters,
      accepted, bad);
  free (b);
  free (f);
}

static void
fuzz_extensions (unsigned iters)
{
  uint8_t *b = xmalloc (2048);
  struct ext_log l;
  unsigned bad = 0, walked = 0;
  static const uint32_t magics[] = {
    QK_EXT_END, QK_EXT_BACKING_FORMAT, QK_EXT_FEATURE_TABLE, QK_EXT_BITMAPS,
    QK_EXT_CRYPTO, QK_EXT_DATA_FILE, 0x12345678,
  };

  for (unsigned it = 0; it < iters; it++) {
    size_t len = rnd_below (2048), start, end, pos;
    uint8_t *x;
    int r;

    fill_random (b, 2048);
    start = rnd_below (len + 1);
    end = rnd_below (len + 1);
    if (rnd_below (2) && start > end) {
      size_t t = start; start = end; end = t;
    }
    /* plausible extension headers along the way */
    for (pos = start; pos + 8 <= len && rnd_below (8); ) {
      uint32_t el = rnd_below (4) ? rnd_below (200) : (uint32_t) rnd ();
      be32_put (b + pos, magics[rnd_below (7)]);
      be32_put (b + pos + 4, el);
      pos += 8 + ((el + 7ULL) & ~7ULL);
    }
    x = exact_copy (b, len);
    r = walk (x, start, end, &l);
    free (x);
    walked += l.n;
    if (l.bad || (r != 0 && (r != -1 || qk_get_errno () != EBADMSG)))
      bad++;
  }
  ok (bad == 0, "extensions: %u random areas (%u extensions seen), every "
      "payload inside the area (%u bad)", iters, walked, bad);
  free (b);
}

static void
fuzz_snapshots (unsigned iters)
{
  uint8_t *b = xmalloc (600);
  unsigned bad = 0, accepted = 0;

  for (unsigned it = 0; it < iters; it++) {
    size_t len = rnd_below (600), el = 0;
    struct qk_snapshot_raw r;
    uint8_t *x;
    int rv;

    fill_random (b, 600);
    if (rnd_below (3)) be16_put (b + 12, rnd_below (40));
    if (rnd_below (3)) be16_put (b + 14, rnd_below (40));
    if (rnd_below (3)) be32_put (b + 36, rnd_below (4) ? rnd_below (64)
                                 : QK_MAX_SNAPSHOT_EXTRA - 4 + rnd_below (8));
    x = exact_copy (b, len);
    rv = qk_snapshot_parse (x, len, &r, &el);
    if (rv == 0) {
      uint64_t need = 40ULL + be32_get (x + 36) + be16_get (x + 12)
                      + be16_get (x + 14);
      accepted++;
      if (need > len || el != ((need + 7) & ~7ULL) || el % 8
          || r.s.extra_data_size > QK_MAX_SNAPSHOT_EXTRA
          || strlen (r.s.id) > be16_get (x + 12)
          || strlen (r.s.name) > be16_get (x + 14)
          || (r.s.extra_data_size
              && memcmp (r.extra, x + 40, r.s.extra_data_size) != 0))
        bad++;
      qk_snapshot_raw_free (&r);
    }
    else if (qk_get_errno () != EBADMSG || r.id || r.name || r.extra)
      bad++;
    free (x);
  }
  ok (bad == 0, "snapshots: %u random entries, %u accepted, all consistent "
      "(%u bad)", iters, accepted, bad);
  free (b);
}

static void
fuzz_bitmaps (unsigned iters)
{
  uint8_t *b = xmalloc (400);
  unsigned bad = 0, accepted = 0;

  for (unsigned it = 0; it < iters; it++) {
    size_t len = rnd_below (400), el = 0;
    struct qk_bitmap_raw r;
    struct qk_bitmaps_ext be;
    uint8_t *x;
    int rv;

    fill_random (b, 400);
    if (rnd_below (3)) be16_put (b + 18, rnd_below (64));
    if (rnd_below (3)) be32_put (b + 20, rnd_below (64));
    x = exact_copy (b, len);
    rv = qk_bitmap_parse (x, len, &r, &el);
    if (rv == 0) {
      uint64_t need = 24ULL + be32_get (x + 20) + be16_get (x + 18);
      accepted++;
      if (need > len || el > len || el < need
          || strlen (r.b.name) > be16_get (x + 18))
        bad++;
      qk_bitmap_raw_free (&r);
    }
    else if (qk_get_errno () != EBADMSG || r.name)
      bad++;
    rv = qk_bitmaps_ext_parse (x, len, &be);
    if ((rv == 0) != (len >= 24))
      bad++;
    free (x);
  }
  ok (bad == 0, "bitmaps: %u random directory entries, %u accepted, all "
      "consistent (%u bad)", iters, accepted, bad);
  free (b);
}

static void
fuzz_l2_refcount (unsigned iters)
{
  uint8_t *blk = xcalloc (4096), *copy = xmalloc (4096);
  unsigned bad = 0, rbad = 0;

  for (unsigned it = 0; it < iters; it++) {
    uint64_t e = rnd (), bm = rnd ();
    unsigned sc = rnd_below (32), cb = 9 + rnd_below (13);
    bool ext = rnd () & 1, df = rnd () & 1;
    uint64_t off, n;

    if (rnd_below (2)) e &= ~QK_OFLAG_COMPRESSED;
    if (rnd_below (3) == 0) e &= QK_OFLAG_COPIED | 1;
    if (rnd_below (3) == 0) bm &= rnd_below (2) ? 0xffffffffULL : ~0ULL << 32;
    if (qk_l2_subcluster_type (e, bm, sc, ext, df)
        != model_sub (e, bm, sc, ext, df)
        || qk_l2_cluster_type (e, ext, df) != model_cluster (e, ext, df))
      bad++;
    qk_l2_compressed (e, cb, &off, &n);
    if (n == 0 || n > 2ULL << cb || off >> (62 - (cb - 8)))
      bad++;
  }
  for (unsigned it = 0; it < iters / 4; it++) {
    unsigned o = rnd_below (7), bits = 1U << o;
    uint64_t entries = 4096ULL * 8 / bits, idx = rnd_below (entries);
    uint64_t max = bits == 64 ? ~0ULL : (1ULL << bits) - 1, v = rnd ();
    size_t lo = idx * bits / 8, hi = (idx * bits + bits - 1) / 8;

    memcpy (copy, blk, 4096);
    qk_refblock_set (blk, o, idx, v);
    if (qk_refblock_get (blk, o, idx) != (v & max))
      rbad++;
    /* only the bytes holding entry idx may change */
    if (memcmp (copy, blk, lo) != 0
        || memcmp (copy + hi + 1, blk + hi + 1, 4096 - hi - 1) != 0)
      rbad++;
  }
  ok (bad == 0, "L2: %u random entries agree with the model, compressed "
      "descriptors stay within two clusters (%u bad)", iters, bad);
  ok (rbad == 0, "refcounts: %u random sets touch only their own bits (%u "
      "bad)", iters / 4, rbad);
  free (blk);
  free (copy);
}

static void
fuzz_decompress (unsigned iters)
{
  size_t cs = 4096;
  uint8_t *in = xmalloc (cs), *c = xmalloc (2 * cs), *out = xmalloc (cs + 64);

  for (int type = 0; type < 2; type++) {
    unsigned bad = 0, okays = 0;
    size_t cl;

    make_pattern (in, cs, 1);
    if (qk_compress (type, in, cs, c, 2 * cs, &cl) < 0)
      bad++;
    for (unsigned it = 0; it < iters; it++) {
      uint8_t *m;
      size_t ml;
      int r;

      if (it % 4 == 0) {
        ml = rnd_below (2 * cs);
        m = xmalloc (ml);
        fill_random (m, ml);
      }
      else {
        ml = rnd_below (3) ? cl : rnd_below (cl + 1);
        m = exact_copy (c, ml);
        for (unsigned k = 1 + rnd_below (4); k && ml; k--)
          m[rnd_below (ml)] ^= 1U << rnd_below (8);
      }
      memset (out + cs, 0x5a, 64);
      r = qk_decompress (type, m, ml, out, cs);
      if (r == 0)
        okays++;
      else if (!failed_badmsg (r))
        bad++;
      for (size_t k = cs; k < cs + 64; k++)
        if (out[k] != 0x5a) {
          bad++;
          break;
        }
      free (m);
    }
    ok (bad == 0, "%s: %u damaged streams decompress or fail with EBADMSG, "
        "never past one cluster (%u decoded, %u bad)",
        type ? "zstd" : "deflate", iters, okays, bad);
  }
  free (in);
  free (c);
  free (out);
}

/* ---- LUKS headers (image/image.c, a byte-buffer parser) ---- */

struct problems {
  unsigned n;
  char last[300];
  bool any_with[8];
};

static void
collect_problem (void *opaque, const char *msg)
{
  struct problems *p = opaque;
  p->n++;
  snprintf (p->last, sizeof p->last, "%s", msg);
}

/* A LUKS1 header as qemu-img writes it: aes-256 xts-plain64 sha256, 64
 * key bytes, slot 0 active (key material at sector 8), slots 1..7
 * inactive, payload at sector 4040. */
static void
make_luks (uint8_t *b, const char *cipher, const char *mode,
           const char *hash, uint32_t key_bytes)
{
  memset (b, 0, QK_LUKS_HEADER_LEN);
  memcpy (b, "LUKS\xba\xbe", 6);
  be16_put (b + 6, 1);
  memcpy (b + 8, cipher, strlen (cipher));
  memcpy (b + 40, mode, strlen (mode));
  memcpy (b + 72, hash, strlen (hash));
  be32_put (b + 104, 4040);
  be32_put (b + 108, key_bytes);
  memset (b + 112, 0xd1, 20);           /* digest */
  memset (b + 132, 0x5a, 32);           /* salt */
  be32_put (b + 164, 2074974);
  memcpy (b + 168, "310fb93b-e3e2-4ac2-b078-0f10cd412ecc", 36);
  for (int i = 0; i < 8; i++) {
    uint8_t *k = b + 208 + 48 * i;
    be32_put (k, i == 0 ? QK_LUKS_SLOT_ENABLED : QK_LUKS_SLOT_DISABLED);
    be32_put (k + 4, i == 0 ? 8192000 : 0);
    memset (k + 8, 0x33, 32);
    /* ROUND_UP (DIV_ROUND_UP (64 * 4000, 512), 8) = 504 sectors each */
    be32_put (k + 40, 8 + 504 * i);
    be32_put (k + 44, 4000);
  }
}

static struct qk_luks
luks_of (const uint8_t *b, size_t len, int *r)
{
  struct qk_luks l;
  uint8_t *x = exact_copy (b, len);
  *r = qk_luks_parse (x, len, &l);
  free (x);
  return l;
}

static void
test_luks (void)
{
  uint8_t b[QK_LUKS_HEADER_LEN + 8];
  struct qk_luks l;
  struct problems pr;
  int r;

  make_luks (b, "aes", "xts-plain64", "sha256", 64);
  l = luks_of (b, QK_LUKS_HEADER_LEN, &r);
  ok (r == 0 && l.version == 1, "LUKS1 header parses");
  is_str (l.cipher_name, "aes", "cipher name (offset 8)");
  is_str (l.cipher_mode, "xts-plain64", "cipher mode (offset 40)");
  is_str (l.hash_spec, "sha256", "hash spec (offset 72)");
  is_u64 (l.payload_offset_sector, 4040, "payload offset (offset 104)");
  is_u64 (l.key_bytes, 64, "key bytes (offset 108)");
  is_u64 (l.master_key_iterations, 2074974, "master key iterations "
          "(offset 164)");
  is_str (l.uuid, "310fb93b-e3e2-4ac2-b078-0f10cd412ecc", "uuid (offset 168)");
  ok (l.slot[0].active && l.slot[0].state == QK_LUKS_SLOT_ENABLED
      && l.slot[0].iterations == 8192000 && l.slot[0].key_offset_sector == 8
      && l.slot[0].stripes == 4000, "key slot 0 (offset 208): active, "
      "iterations, key offset, stripes");
  ok (!l.slot[7].active && l.slot[7].state == QK_LUKS_SLOT_DISABLED
      && l.slot[7].key_offset_sector == 8 + 504 * 7,
      "key slot 7 (offset 544): inactive");
  is_str (l.cipher_alg, "aes-256", "QEMU's cipher-alg: xts halves the 64 "
          "key bytes");
  is_str (l.mode, "xts", "QEMU's cipher-mode");
  is_str (l.ivgen_alg, "plain64", "QEMU's ivgen-alg");
  ok (l.ivgen_hash_alg == NULL, "no ivgen-hash-alg without essiv");
  is_str (l.hash_alg, "sha256", "QEMU's hash-alg");
  memset (&pr, 0, sizeof pr);
  ok (qk_luks_check (&l, collect_problem, &pr) == 0 && pr.n == 0,
      "qemu-img's own header has no problem");

  /* every field at its maximum length, no NUL */
  memset (b + 8, 'c', 32);
  memset (b + 168, 'u', 40);
  l = luks_of (b, QK_LUKS_HEADER_LEN, &r);
  ok (r == 0 && strlen (l.cipher_name) == 32 && strlen (l.uuid) == 40
      && l.cipher_alg == NULL, "unterminated 32-byte cipher name and 40-byte "
      "uuid are cut at their fields; the cipher is unknown");
  memset (&pr, 0, sizeof pr);
  ok (qk_luks_check (&l, collect_problem, &pr) == 1
      && strstr (pr.last, "not supported"), "an unknown cipher is a problem "
      "(%s)", pr.last);

  /* the other ciphers and modes QEMU knows */
  {
    static const struct {
      const char *c, *m, *h;
      uint32_t kb;
      const char *alg, *mode, *ivgen, *ivhash;
      unsigned problems;
    } t[] = {
      { "aes", "cbc-essiv:sha256", "sha1", 16, "aes-128", "cbc", "essiv",
        "sha256", 0 },
      { "aes", "cbc-essiv:sha1", "sha256", 16, "aes-128", "cbc", "essiv",
        "sha1", 1 },     /* no AES key of 20 bytes for ESSIV */
      { "aes", "xts-plain", "sha512", 32, "aes-128", "xts", "plain", NULL, 0 },
      { "aes", "ctr-plain64", "sha384", 24, "aes-192", "ctr", "plain64",
        NULL, 0 },
      { "twofish", "cbc-essiv:sha256", "sha512", 16, "twofish-128", "cbc",
        "essiv", "sha256", 0 },
      { "serpent", "xts-plain64", "sha224", 64, "serpent-256", "xts",
        "plain64", NULL, 0 },
      { "cast5", "cbc-plain64", "md5", 16, "cast5-128", "cbc", "plain64",
        NULL, 0 },
      { "cast5", "cbc-essiv:sha256", "md5", 16, "cast5-128", "cbc", "essiv",
        "sha256", 1 },   /* cast5 takes ESSIV only with a 16-byte digest */
      { "aes", "cbc-plain64:sha256", "ripemd160", 32, "aes-256", "cbc",
        "plain64", NULL, 0 },   /* a hash with plain64 is ignored */
      { "aes", "cbc-plain64:nosuch", "sha256", 32, "aes-256", "cbc",
        "plain64", NULL, 1 },   /* but it must be a known hash */
      { "aes", "cbc-essiv", "sha256", 32, "aes-256", "cbc", "essiv", NULL,
        1 },             /* essiv needs a hash */
      { "aes", "xts-plain64", "sha256", 48, "aes-192", "xts", "plain64", NULL,
        0 },
      { "aes", "xts-plain64", "sha256", 40, NULL, "xts", "plain64", NULL, 1 },
      { "aes", "cbc-plain64", "sha256", 64, NULL, "cbc", "plain64", NULL, 1 },
      { "aes", "gcm-plain64", "sha256", 32, NULL, NULL, "plain64", NULL, 1 },
      { "aes", "xtsplain64", "sha256", 64, NULL, NULL, NULL, NULL, 1 },
      { "aes", "xts-plain65", "sha256", 64, "aes-256", "xts", NULL, NULL, 1 },
      { "AES", "xts-plain64", "sha256", 64, NULL, "xts", "plain64", NULL, 1 },
      { "aes", "xts-plain64", "whirlpool", 64, "aes-256", "xts", "plain64",
        NULL, 1 },
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
      make_luks (b, t[i].c, t[i].m, t[i].h, t[i].kb);
      l = luks_of (b, QK_LUKS_HEADER_LEN, &r);
      memset (&pr, 0, sizeof pr);
      qk_luks_check (&l, collect_problem, &pr);
      ok (r == 0 && strcmp (l.cipher_alg ?: "-", t[i].alg ?: "-") == 0
          && strcmp (l.mode ?: "-", t[i].mode ?: "-") == 0
          && strcmp (l.ivgen_alg ?: "-", t[i].ivgen ?: "-") == 0
          && strcmp (l.ivgen_hash_alg ?: "-", t[i].ivhash ?: "-") == 0
          && (l.hash_alg != NULL) == (strcmp (t[i].h, "whirlpool") != 0)
          && pr.n == t[i].problems,
          "%s %s %s, %u key bytes: %s %s %s %s, %u problem(s)%s%s", t[i].c,
          t[i].m, t[i].h, t[i].kb, l.cipher_alg ?: "-", l.mode ?: "-",
          l.ivgen_alg ?: "-", l.ivgen_hash_alg ?: "-", pr.n,
          pr.n ? ": " : "", pr.last);
    }
  }

  /* key slots, as qcrypto_block_luks_check_header */
  make_luks (b, "aes", "xts-plain64", "sha256", 64);
  be32_put (b + 208 + 48 * 3, 0x12345678);
  l = luks_of (b, QK_LUKS_HEADER_LEN, &r);
  memset (&pr, 0, sizeof pr);
  ok (r == 0 && !l.slot[3].active && l.slot[3].state == 0x12345678
      && qk_luks_check (&l, collect_problem, &pr) == 1
      && strstr (pr.last, "slot 3"), "a key slot state that is neither "
      "active nor inactive (%s)", pr.last);
  make_luks (b, "aes", "xts-plain64", "sha256", 64);
  be32_put (b + 208 + 48 * 5 + 44, 0);
  l = luks_of (b, QK_LUKS_HEADER_LEN, &r);
  memset (&pr, 0, sizeof pr);
  ok (qk_luks_check (&l, collect_problem, &pr) == 1
      && strstr (pr.last, "stripes == 0"), "stripes 0 (%s)", pr.last);
  make_luks (b, "aes", "xts-plain64", "sha256", 64);
  be32_put (b + 104, 8 + 504 * 8 - 1);
  l = luks_of (b, QK_LUKS_HEADER_LEN, &r);
  memset (&pr, 0, sizeof pr);
  ok (qk_luks_check (&l, collect_problem, &pr) == 1
      && strstr (pr.last, "slot 7") && strstr (pr.last, "payload"),
      "the payload one sector into slot 7's key material (%s)", pr.last);
  be32_put (b + 104, 8 + 504 * 8);
  l = luks_of (b, QK_LUKS_HEADER_LEN, &r);
  ok (qk_luks_check (&l, collect_problem, &pr) == 0, "the payload right "
      "after it is fine");
  make_luks (b, "aes", "xts-plain64", "sha256", 64);
  be32_put (b + 208 + 48 * 2 + 40, 8);
  l = luks_of (b, QK_LUKS_HEADER_LEN, &r);
  memset (&pr, 0, sizeof pr);
  ok (qk_luks_check (&l, collect_problem, &pr) == 1
      && strstr (pr.last, "slots 0 and 2"), "key slots 0 and 2 at the same "
      "offset overlap (%s)", pr.last);
  be32_put (b + 208 + 48 * 2 + 40, 8 + 504 * 3 - 1);
  l = luks_of (b, QK_LUKS_HEADER_LEN, &r);
  memset (&pr, 0, sizeof pr);
  ok (qk_luks_check (&l, collect_problem, &pr) == 1
      && strstr (pr.last, "slots 2 and 3"), "slot 2 one sector into slot 3 "
      "(%s)", pr.last);
  make_luks (b, "aes", "xts-plain64", "sha256", 0xffffffff);
  for (int i = 0; i < 8; i++) {
    be32_put (b + 208 + 48 * i + 40, 0xffffffff);
    be32_put (b + 208 + 48 * i + 44, 0xffffffff);
  }
  be32_put (b + 104, 0xffffffff);
  l = luks_of (b, QK_LUKS_HEADER_LEN, &r);
  memset (&pr, 0, sizeof pr);
  ok (r == 0 && qk_luks_check (&l, collect_problem, &pr) >= 8 + 28,
      "all-ones key slots: every slot overlaps the payload and every other "
      "(%u problems, no overflow)", pr.n);

  /* not a LUKS1 header */
  make_luks (b, "aes", "xts-plain64", "sha256", 64);
  l = luks_of (b, QK_LUKS_HEADER_LEN - 1, &r);
  ok (failed_badmsg (r), "591 bytes: EBADMSG");
  l = luks_of (b, 0, &r);
  ok (failed_badmsg (r), "0 bytes: EBADMSG");
  b[4] = 0xbb;
  l = luks_of (b, QK_LUKS_HEADER_LEN, &r);
  ok (failed_badmsg (r) && strstr (qk_get_error (), "magic"), "bad magic: "
      "EBADMSG (%s)", qk_get_error ());
  b[4] = 0xba;
  be16_put (b + 6, 2);
  l = luks_of (b, QK_LUKS_HEADER_LEN, &r);
  ok (failed_badmsg (r) && strstr (qk_get_error (), "version 2"),
      "LUKS2: EBADMSG (%s)", qk_get_error ());

  /* random bytes after a good magic and version: never a crash, and
   * every string NUL-terminated within its field */
  {
    unsigned bad = 0;
    for (int it = 0; it < 5000; it++) {
      fill_random (b, QK_LUKS_HEADER_LEN);
      memcpy (b, "LUKS\xba\xbe\x00\x01", 8);
      if (rnd () % 2)
        memcpy (b + 40, "xts-", 4);
      l = luks_of (b, QK_LUKS_HEADER_LEN, &r);
      memset (&pr, 0, sizeof pr);
      qk_luks_check (&l, collect_problem, &pr);
      if (r != 0 || strlen (l.cipher_name) > 32 || strlen (l.cipher_mode) > 32
          || strlen (l.hash_spec) > 32 || strlen (l.uuid) > 40)
        bad++;
    }
    ok (bad == 0, "5000 random LUKS headers: parsed and checked (%u bad)",
        bad);
  }
}

/* ---- writers (format/write.c): each round-trips through its parser ---- */

/* The last call failed as a bad argument / a short buffer. */
static bool
failed_with (int r, int errnum)
{
  const char *e = qk_get_error ();
  return r == -1 && qk_get_errno () == errnum && e && *e;
}

struct wext_seen {
  size_t n;
  uint32_t magic[4], length[4];
  uint8_t payload[4][16];
};

static int
wcollect_ext (void *opaque, const struct qk_ext_raw *e, const uint8_t *payload)
{
  struct wext_seen *s = opaque;

  if (s->n < 4) {
    s->magic[s->n] = e->magic;
    s->length[s->n] = e->length;
    memcpy (s->payload[s->n], payload, MIN (e->length, 16U));
  }
  s->n++;
  return 0;
}

static void
test_write_extensions (void)
{
  uint8_t buf[128], *c;
  struct wext_seen s = { 0 };
  size_t pos = 0;
  ssize_t n;
  int r;

  memset (buf, 0xaa, sizeof buf);
  is_u64 (qk_ext_size (0), 8, "ext size: no payload is 8 bytes");
  is_u64 (qk_ext_size (5), 16, "ext size: 5 bytes of payload pad to 16");
  is_u64 (qk_ext_size (16), 24, "ext size: 16 bytes of payload need no pad");
  n = qk_ext_format (QK_EXT_BACKING_FORMAT, "qcow2", 5, buf, sizeof buf);
  is_u64 ((uint64_t) n, 16, "ext format returns the padded size");
  ok (buf[13] == 0 && buf[15] == 0, "ext format zeroes the padding");
  pos += (size_t) n;
  n = qk_ext_format (0x66757a7a, "0123456789abcdef", 16, buf + pos,
                     sizeof buf - pos);
  pos += (size_t) n;
  n = qk_ext_format (QK_EXT_DATA_FILE, NULL, 0, buf + pos, sizeof buf - pos);
  is_u64 ((uint64_t) n, 8, "an empty extension is 8 bytes");
  pos += (size_t) n;
  n = qk_ext_end_format (buf + pos, sizeof buf - pos);
  is_u64 ((uint64_t) n, 8, "the end marker is 8 bytes");
  pos += (size_t) n;
  c = exact_copy (buf, pos);
  r = qk_extensions_walk (c, 0, pos, wcollect_ext, &s);
  ok (r == 0, "the written extensions walk cleanly");
  is_u64 (s.n, 3, "... three extensions before the end marker");
  is_u64 (s.magic[0], QK_EXT_BACKING_FORMAT, "... first magic");
  is_u64 (s.length[0], 5, "... first length");
  ok (memcmp (s.payload[0], "qcow2", 5) == 0, "... first payload");
  is_u64 (s.magic[1], 0x66757a7a, "... unknown magic");
  ok (memcmp (s.payload[1], "0123456789abcdef", 16) == 0,
      "... unknown payload");
  is_u64 (s.magic[2], QK_EXT_DATA_FILE, "... empty extension magic");
  is_u64 (s.length[2], 0, "... empty extension length");
  free (c);

  r = (int) qk_ext_format (QK_EXT_BACKING_FORMAT, "qcow2", 5, buf, 15);
  ok (failed_with (r, ENOSPC), "ext format into 15 bytes: ENOSPC");
  r = (int) qk_ext_end_format (buf, 7);
  ok (failed_with (r, ENOSPC), "end marker into 7 bytes: ENOSPC");
  r = (int) qk_ext_format (QK_EXT_END, "x", 1, buf, sizeof buf);
  ok (failed_with (r, EINVAL), "an end marker with a payload: EINVAL");
  r = (int) qk_ext_format (QK_EXT_BITMAPS, NULL, 4, buf, sizeof buf);
  ok (failed_with (r, EINVAL), "a length without a payload: EINVAL");
}

static void
test_write_feature_names (void)
{
  struct qk_feature_name f, g;
  uint8_t buf[QK_FEATURE_NAME_ENTRY], *c;
  int r;

  memset (&f, 0, sizeof f);
  f.type = QK_FEATURE_AUTOCLEAR;
  f.bit = 63;
  strcpy (f.name, "bitmaps");
  memset (buf, 0xaa, sizeof buf);
  r = qk_feature_name_format (&f, buf, sizeof buf);
  is_u64 ((uint64_t) r, QK_FEATURE_NAME_ENTRY, "feature name: 48 bytes");
  ok (buf[2 + 7] == 0 && buf[47] == 0, "... NUL padded");
  c = exact_copy (buf, sizeof buf);
  ok (qk_feature_name_parse (c, sizeof buf, &g) == 0, "... parses");
  ok (g.type == f.type && g.bit == f.bit, "... same type and bit");
  is_str (g.name, "bitmaps", "... same name");
  free (c);

  /* a name of exactly 46 bytes has no NUL on disk */
  memset (f.name, 'n', QK_FEATURE_NAME_LEN);
  f.name[QK_FEATURE_NAME_LEN] = '\0';
  r = qk_feature_name_format (&f, buf, sizeof buf);
  ok (r == QK_FEATURE_NAME_ENTRY && buf[47] == 'n',
      "a 46-byte name fills the entry");
  c = exact_copy (buf, sizeof buf);
  ok (qk_feature_name_parse (c, sizeof buf, &g) == 0
      && strlen (g.name) == QK_FEATURE_NAME_LEN
      && strcmp (g.name, f.name) == 0, "... and parses back whole");
  ok (failed_badmsg (qk_feature_name_parse (c, sizeof buf - 1, &g)),
      "a 47-byte entry does not parse: EBADMSG");
  free (c);

  f.type = 3;
  ok (failed_with (qk_feature_name_format (&f, buf, sizeof buf), EINVAL),
      "feature type 3: EINVAL");
  f.type = QK_FEATURE_COMPAT;
  f.bit = 64;
  ok (failed_with (qk_feature_name_format (&f, buf, sizeof buf), EINVAL),
      "feature bit 64: EINVAL");
  f.bit = 0;
  ok (failed_with (qk_feature_name_format (&f, buf, 47), ENOSPC),
      "feature name into 47 bytes: ENOSPC");
}

static void
test_write_ext_payloads (void)
{
  struct qk_bitmaps_ext e = { 3, 0, 0x30, 0x123400 }, e2;
  struct qk_crypto_ext k = { 0x10000, 0x2000 }, k2;
  uint8_t buf[24], *c;

  ok (qk_bitmaps_ext_format (&e, buf, sizeof buf) == 24,
      "bitmaps extension: 24 bytes");
  c = exact_copy (buf, 24);
  ok (qk_bitmaps_ext_parse (c, 24, &e2) == 0 && e2.nb_bitmaps == 3
      && e2.reserved == 0 && e2.directory_size == 0x30
      && e2.directory_offset == 0x123400, "... parses back the same");
  free (c);
  ok (failed_with (qk_bitmaps_ext_format (&e, buf, 23), ENOSPC),
      "bitmaps extension into 23 bytes: ENOSPC");
  ok (qk_crypto_ext_format (&k, buf, sizeof buf) == 16,
      "encryption header pointer: 16 bytes");
  c = exact_copy (buf, 16);
  ok (qk_crypto_ext_parse (c, 16, &k2) == 0 && k2.offset == k.offset
      && k2.length == k.length, "... parses back the same");
  ok (failed_badmsg (qk_crypto_ext_parse (c, 15, &k2)),
      "... and 15 bytes of it do not: EBADMSG");
  free (c);
  ok (failed_with (qk_crypto_ext_format (&k, buf, 15), ENOSPC),
      "encryption header pointer into 15 bytes: ENOSPC");
}

static void
test_write_entries (void)
{
  uint64_t e = 0, h, nb;
  int r;

  /* L1 */
  ok (qk_l1_entry_make (0x7fff0000ULL, true, &e) == 0
      && (e & QK_L1E_OFFSET_MASK) == 0x7fff0000ULL && (e & QK_OFLAG_COPIED)
      && (e & QK_L1E_RESERVED_MASK) == 0, "L1 entry: offset and COPIED");
  ok (qk_l1_entry_make (0x200, false, &e) == 0 && e == 0x200,
      "L1 entry without COPIED");
  e = 42;
  ok (failed_with (qk_l1_entry_make (0x10100, true, &e), EINVAL) && e == 42,
      "L1 entry: unaligned offset: EINVAL, entry untouched");
  ok (failed_with (qk_l1_entry_make (1ULL << 56, true, &e), EINVAL),
      "L1 entry: offset past 56 bits: EINVAL");

  /* L2, standard */
  ok (qk_l2_entry_make (0x30000, true, false, &e) == 0
      && qk_l2_cluster_type (e, false, false) == QK_CLUSTER_NORMAL
      && (e & QK_L2E_OFFSET_MASK) == 0x30000 && (e & QK_OFLAG_COPIED)
      && (e & QK_L2E_STD_RESERVED) == 0, "L2 entry: a normal cluster");
  ok (qk_l2_entry_make (0, false, true, &e) == 0
      && qk_l2_cluster_type (e, false, false) == QK_CLUSTER_ZERO_PLAIN,
      "L2 entry: a plain zero cluster");
  ok (qk_l2_entry_make (0x30000, true, true, &e) == 0
      && qk_l2_cluster_type (e, false, false) == QK_CLUSTER_ZERO_ALLOC,
      "L2 entry: a preallocated zero cluster");
  ok (qk_l2_entry_make (0, false, false, &e) == 0
      && qk_l2_cluster_type (e, false, false) == QK_CLUSTER_UNALLOCATED,
      "L2 entry: unallocated");
  ok (failed_with (qk_l2_entry_make (0x30001, true, false, &e), EINVAL),
      "L2 entry: unaligned offset: EINVAL");
  ok (failed_with (qk_l2_entry_make (0x30100, true, false, &e), EINVAL),
      "L2 entry: offset not a multiple of 512: EINVAL");
  ok (failed_with (qk_l2_entry_make (1ULL << 62, true, false, &e), EINVAL),
      "L2 entry: offset in the flag bits: EINVAL");

  /* compressed descriptors, every cluster size */
  for (unsigned cb = QK_MIN_CLUSTER_BITS; cb <= QK_MAX_CLUSTER_BITS; cb++) {
    bool good = true;
    for (int k = 0; k < 200; k++) {
      uint64_t cs = 1ULL << cb;
      uint64_t off = rnd_below (1ULL << 40) & ~1ULL;
      uint64_t len = rnd_below (cs) + 1;
      r = qk_l2_compressed_make (off, len, cb, &e);
      qk_l2_compressed (e, cb, &h, &nb);
      /* QEMU reads whole sectors: what the descriptor covers ends at the
       * sector end of the data */
      good &= r == 0 && h == off
              && qk_l2_cluster_type (e, false, false) == QK_CLUSTER_COMPRESSED
              && h + nb == ((off + len - 1) / 512 + 1) * 512;
    }
    ok (good, "compressed descriptors round-trip (%u-bit clusters)", cb);
  }
  ok (failed_with (qk_l2_compressed_make (0x1000, 0, 16, &e), EINVAL),
      "compressed: 0 bytes: EINVAL");
  ok (failed_with (qk_l2_compressed_make (0x1000, 10, 8, &e), EINVAL),
      "compressed: 8-bit clusters: EINVAL");
  ok (failed_with (qk_l2_compressed_make (0x1000, 10, 22, &e), EINVAL),
      "compressed: 22-bit clusters: EINVAL");
  ok (failed_with (qk_l2_compressed_make (1ULL << 54, 10, 16, &e), EINVAL),
      "compressed: offset past the offset field: EINVAL");
  ok (failed_with (qk_l2_compressed_make (0x1000, 1ULL << 20, 9, &e),
                   EINVAL),
      "compressed: more sectors than the field holds: EINVAL");
  ok (failed_with (qk_l2_compressed_make (UINT64_MAX >> 10, 4096, 16, &e),
                   EINVAL)
      || failed_with (qk_l2_compressed_make (UINT64_MAX - 5, 10, 16, &e),
                      EINVAL), "compressed: overflowing data: EINVAL");

  /* refcount table, bitmap table */
  ok (qk_reftable_entry_make (0x50000, &e) == 0
      && (e & QK_REFT_OFFSET_MASK) == 0x50000, "reftable entry");
  ok (failed_with (qk_reftable_entry_make (0x50010, &e), EINVAL),
      "reftable entry: unaligned offset: EINVAL");
  ok (qk_bitmap_table_entry_make (0x60000, false, &e) == 0
      && (e & QK_BME_TABLE_OFFSET_MASK) == 0x60000
      && (e & QK_BME_TABLE_RESERVED) == 0, "bitmap table entry");
  ok (qk_bitmap_table_entry_make (0, true, &e) == 0 && e == 1,
      "bitmap table entry: all ones");
  ok (qk_bitmap_table_entry_make (0, false, &e) == 0 && e == 0,
      "bitmap table entry: all zeros");
  ok (failed_with (qk_bitmap_table_entry_make (0x60000, true, &e), EINVAL),
      "bitmap table entry: all ones with an offset: EINVAL");
  ok (failed_with (qk_bitmap_table_entry_make (0x60001, false, &e), EINVAL),
      "bitmap table entry: unaligned offset: EINVAL");
  ok (failed_with (qk_bitmap_table_entry_make (1ULL << 56, false, &e),
                   EINVAL), "bitmap table entry: offset past 56 bits: EINVAL");
}

static void
test_write_tables (void)
{
  uint8_t t[64];
  uint64_t bm;

  memset (t, 0, sizeof t);
  ok (qk_table_put (t, sizeof t, 7, 0x1122334455667788ULL) == 0
      && be64_get (t + 56) == 0x1122334455667788ULL, "table put: last entry");
  ok (failed_with (qk_table_put (t, sizeof t, 8, 1), ENOSPC),
      "table put past the end: ENOSPC");
  ok (failed_with (qk_table_put (t, sizeof t, UINT64_MAX, 1), ENOSPC),
      "table put at entry 2^64-1: ENOSPC");
  ok (failed_with (qk_table_put (t, 7, 0, 1), ENOSPC),
      "table put into 7 bytes: ENOSPC");
  ok (qk_l2_put (t, sizeof t, false, 7, 0x8000000000050000ULL, 0) == 0
      && be64_get (t + 56) == 0x8000000000050000ULL,
      "L2 put, standard: 8-byte entries");
  ok (failed_with (qk_l2_put (t, sizeof t, false, 0, 0, 1), EINVAL),
      "L2 put, standard, with a bitmap: EINVAL");
  bm = qk_l2_bitmap_make (0x0000000fU, 0xf0000000U);
  is_u64 (bm, 0xf00000000000000fULL, "subcluster bitmap: zero bits high");
  ok (qk_l2_put (t, sizeof t, true, 3, 0x50000, bm) == 0
      && be64_get (t + 48) == 0x50000 && be64_get (t + 56) == bm,
      "L2 put, extended: entry then bitmap");
  ok (failed_with (qk_l2_put (t, sizeof t, true, 4, 0, 0), ENOSPC),
      "L2 put, extended, past the end: ENOSPC");
  ok (qk_l2_subcluster_type (0x50000, bm, 0, true, false) == QK_SUB_NORMAL
      && qk_l2_subcluster_type (0x50000, bm, 31, true, false)
         == QK_SUB_ZERO_ALLOC
      && qk_l2_subcluster_type (0x50000, bm, 10, true, false)
         == QK_SUB_UNALLOCATED_ALLOC
      && qk_l2_subcluster_type (0, qk_l2_bitmap_make (0, 1), 0, true, false)
         == QK_SUB_ZERO_PLAIN, "subcluster bitmaps read back as written");
}

static void
test_write_refblocks (void)
{
  uint64_t vals[300];
  uint8_t *blk = xmalloc (512);

  for (unsigned order = 0; order <= 6; order++) {
    uint64_t max = order == 6 ? UINT64_MAX : (1ULL << (1U << order)) - 1;
    size_t per = (512 * 8) >> order, n = MIN (per - 3, 300);
    bool same = true, rest = true;

    for (size_t i = 0; i < n; i++)
      vals[i] = i == 0 ? max : i == 1 ? 0 : rnd () & max;
    memset (blk, 0xaa, 512);
    ok (qk_refblock_format (vals, n, order, blk, 512) == 0,
        "refblock of %u-bit refcounts: formats", 1U << order);
    for (size_t i = 0; i < n; i++)
      same &= qk_refblock_get (blk, order, i) == vals[i];
    for (size_t i = n; i < per; i++)
      rest &= qk_refblock_get (blk, order, i) == 0;
    ok (same, "... every value reads back");
    ok (rest, "... the entries past n are zero");
    ok (failed_with (qk_refblock_format (vals, per + 1, order, blk, 512),
                     ENOSPC), "... one entry too many: ENOSPC");
    if (order < 6) {
      vals[5] = max + 1;
      ok (failed_with (qk_refblock_format (vals, n, order, blk, 512), EINVAL),
          "... a value wider than %u bits: EINVAL", 1U << order);
    }
  }
  ok (failed_with (qk_refblock_format (vals, 1, 7, blk, 512), EINVAL),
      "refcount order 7: EINVAL");
  free (blk);
}

static void
test_write_snapshot_extra (void)
{
  static const uint32_t sizes[] = { 0, 8, 16, 24, 40 };

  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    struct qk_snapshot_raw r, p;
    uint8_t extra[64], *entry, *c;
    size_t elen, plen;
    uint32_t e = sizes[k];

    memset (&r, 0, sizeof r);
    r.s.vm_state_size = 0x123456789aULL;
    r.s.vm_state_size32 = 0x3456789a;
    r.s.disk_size = 0x40000000ULL;
    r.s.icount = UINT64_MAX;
    r.s.extra_data_size = e;
    r.s.l1_table_offset = 0x70000;
    r.s.l1_size = 2;
    memset (extra, 0xee, sizeof extra);
    ok (qk_snapshot_extra_format (&r.s, extra, sizeof extra) == (int) e,
        "snapshot extra data of %u bytes", e);
    ok (e < 40 || (extra[24] == 0 && extra[39] == 0 && extra[40] == 0xee),
        "... bytes past 24 are zeroed, nothing past the size written");
    r.id = (char *) "7";
    r.name = (char *) "snap";
    r.extra = extra;
    elen = qk_snapshot_entry_size (e, 1, 4);
    entry = xcalloc (elen);
    ok (qk_snapshot_format (&r, entry, elen) == (int) elen,
        "... an entry with it formats");
    c = exact_copy (entry, elen);
    ok (qk_snapshot_parse (c, elen, &p, &plen) == 0 && plen == elen,
        "... and parses");
    ok (p.s.has_vm_state_size_large == (e >= 8)
        && p.s.has_disk_size == (e >= 16) && p.s.has_icount == (e >= 24),
        "... with the fields the size reaches");
    ok (p.s.vm_state_size == (e >= 8 ? r.s.vm_state_size
                              : r.s.vm_state_size32)
        && (e < 16 || p.s.disk_size == r.s.disk_size)
        && (e < 24 || p.s.icount == UINT64_MAX),
        "... with the values written");
    is_str (p.s.name, "snap", "... name");
    qk_snapshot_raw_free (&p);
    free (c);
    free (entry);
    if (e)
      ok (failed_with (qk_snapshot_extra_format (&r.s, extra, e - 1), ENOSPC),
          "... into %u bytes: ENOSPC", e - 1);
  }
}

static void
test_write_bitmap_entries (void)
{
  struct qk_bitmap_raw r, p;
  uint8_t extra[5] = { 1, 2, 3, 4, 5 }, *buf, *c;
  size_t need, plen;
  char *longname;

  memset (&r, 0, sizeof r);
  r.b.table_offset = 0x90000;
  r.b.table_size = 3;
  r.b.flags = QK_BITMAP_AUTO;
  r.b.type = 1;
  r.b.granularity_bits = 16;
  r.b.extra_data_size = sizeof extra;
  r.name = (char *) "bitmap-0";
  need = qk_bitmap_entry_size (sizeof extra, 8);
  is_u64 (need, 40, "bitmap entry size: 24 + 5 + 8 padded to 40");
  buf = xcalloc (need);
  ok (qk_bitmap_format (&r, extra, buf, need) == (ssize_t) need,
      "bitmap entry formats");
  c = exact_copy (buf, need);
  ok (qk_bitmap_parse (c, need, &p, &plen) == 0 && plen == need,
      "... and parses");
  ok (p.b.table_offset == 0x90000 && p.b.table_size == 3
      && p.b.flags == QK_BITMAP_AUTO && p.b.type == 1
      && p.b.granularity_bits == 16 && p.b.extra_data_size == 5,
      "... the same fields");
  is_str (p.b.name, "bitmap-0", "... the same name");
  ok (memcmp (c + 24, extra, 5) == 0, "... the extra data before the name");
  qk_bitmap_raw_free (&p);
  free (c);
  ok (failed_with ((int) qk_bitmap_format (&r, extra, buf, need - 1), ENOSPC),
      "bitmap entry into one byte less: ENOSPC");
  r.b.extra_data_size = 0;
  ok (qk_bitmap_format (&r, NULL, buf, need) == 32,
      "a bitmap entry without extra data");
  free (buf);
  longname = xmalloc (UINT16_MAX + 2);
  memset (longname, 'b', UINT16_MAX + 1);
  longname[UINT16_MAX + 1] = '\0';
  r.name = longname;
  buf = xmalloc (UINT16_MAX + 64);
  ok (failed_with ((int) qk_bitmap_format (&r, NULL, buf, UINT16_MAX + 64),
                   EINVAL), "a bitmap name of 65536 bytes: EINVAL");
  free (buf);
  free (longname);
}

/* ---- the image builder (format/build.c) ----
 * Its images are checked against qemu-img by tests/fuzz-corpus.sh; here,
 * the argument checks, the model, determinism and the header it writes. */

static struct qk_builder *
small_builder (uint32_t version, unsigned cbits, unsigned rorder)
{
  struct qk_build_config c = {
    .version = version, .cluster_bits = cbits, .refcount_order = rorder,
    .size = 64 * 1024,
  };
  return qk_builder_new (&c);
}

static void
test_builder_args (void)
{
  struct qk_build_config c = {
    .version = 3, .cluster_bits = 12, .refcount_order = 4, .size = 65536,
  };
  struct qk_build_config bad;
  struct qk_build_snapshot s = { .name = "s", .extra_data_size = 24 };
  struct qk_builder *b;
  uint8_t d[4096] = { 1 }, *img, *df;
  size_t il, dl;

#define REJECTS(field, value, what) \
  do { \
    bad = c; \
    bad.field = value; \
    b = qk_builder_new (&bad); \
    ok (b == NULL && qk_get_errno () == EINVAL, "builder rejects %s", what); \
    qk_builder_free (b); \
  } while (0)
  REJECTS (version, 4, "version 4");
  REJECTS (cluster_bits, 8, "256-byte clusters");
  REJECTS (cluster_bits, 22, "4 MiB clusters");
  REJECTS (refcount_order, 7, "128-bit refcounts");
  REJECTS (size, 1000, "a size that is not a multiple of 512");
  REJECTS (extended_l2, true, "extended L2 with 4 KiB clusters");
  REJECTS (header_length, 100, "a 100-byte header");
  REJECTS (header_length, 116, "a header length that is not a multiple of 8");
  REJECTS (compression_type, 2, "compression type 2");
  bad = c;
  bad.version = 2;
  bad.lazy_refcounts = true;
  b = qk_builder_new (&bad);
  ok (b == NULL && qk_get_errno () == EINVAL,
      "builder rejects feature bits in a version 2 image");
  bad.lazy_refcounts = false;
  bad.refcount_order = 3;
  b = qk_builder_new (&bad);
  ok (b == NULL && qk_get_errno () == EINVAL,
      "builder rejects 8-bit refcounts in a version 2 image");
#undef REJECTS

  b = small_builder (2, 12, 4);
  ok (failed_with (qk_builder_zero (b, 0, 4096, false), EINVAL),
      "v2: no zero clusters");
  ok (failed_with (qk_builder_write (b, 65536 - 10, d, 11), EINVAL),
      "a write past the end of the disk: EINVAL");
  ok (failed_with (qk_builder_write (b, UINT64_MAX - 2, d, 10), EINVAL),
      "a write whose end overflows: EINVAL");
  ok (failed_with (qk_builder_write_compressed (b, 512, d, 4096), EINVAL),
      "an unaligned compressed write: EINVAL");
  ok (failed_with (qk_builder_add_bitmap (b, "m", 16, 0), EINVAL),
      "v2: no bitmaps");
  ok (failed_with (qk_builder_set_data_file (b, "d", false), EINVAL),
      "v2: no data file");
  ok (failed_with (qk_builder_read (b, 0, 0, d, 1), EINVAL),
      "reading snapshot 0 when there is none: EINVAL");
  qk_builder_free (b);

  b = small_builder (3, 12, 4);
  ok (qk_builder_set_data_file (b, "d.raw", true) == 0, "a raw data file");
  ok (failed_with (qk_builder_set_backing (b, "base", "raw", NULL, 0), EINVAL),
      "a raw data file rules out a backing file");
  ok (failed_with (qk_builder_write_compressed (b, 0, d, 4096), EINVAL),
      "no compressed clusters with a data file");
  ok (failed_with (qk_builder_snapshot (b, &s), EINVAL),
      "no snapshots with a data file");
  ok (failed_with (qk_builder_finish (b, &img, &il, NULL, NULL), EINVAL),
      "finishing with a data file needs somewhere for its bytes");
  ok (qk_builder_write (b, 4096, d, 4096) == 0
      && qk_builder_finish (b, &img, &il, &df, &dl) == 0 && dl == 65536
      && memcmp (df + 4096, d, 4096) == 0,
      "a raw data file holds the guest data at guest offsets");
  free (img);
  free (df);
  qk_builder_free (b);

  /* refcounts cannot count more references than their width */
  b = small_builder (3, 12, 1);
  qk_builder_write (b, 0, d, 4096);
  for (int i = 0; i < 3; i++)
    qk_builder_snapshot (b, &s);
  ok (failed_with (qk_builder_finish (b, &img, &il, NULL, NULL), ERANGE),
      "four references with 2-bit refcounts: ERANGE");
  qk_builder_free (b);
}

static int
build_sample (uint8_t **img, size_t *len, struct qk_builder **out)
{
  struct qk_build_config c = {
    .version = 3, .cluster_bits = 14, .refcount_order = 3, .size = 1 << 20,
    .extended_l2 = true, .header_length = 120,
  };
  struct qk_build_snapshot s = {
    .name = "one", .extra_data_size = 24, .icount = UINT64_MAX,
  };
  struct qk_builder *b = qk_builder_new (&c);
  static uint8_t d[20000];

  for (size_t i = 0; i < sizeof d; i++)
    d[i] = (uint8_t) (i * 7 + 1);
  if (b == NULL || qk_builder_write (b, 100, d, sizeof d) < 0
      || qk_builder_snapshot (b, &s) < 0
      || qk_builder_write (b, 1000, d + 5, 300) < 0
      || qk_builder_zero (b, 16384 + 1024, 2048, false) < 0
      || qk_builder_add_extension (b, 0x12345678, "abc", 3) < 0
      || qk_builder_finish (b, img, len, NULL, NULL) < 0) {
    qk_builder_free (b);
    return -1;
  }
  *out = b;
  return 0;
}

static void
test_builder_model (void)
{
  struct qk_builder *b1 = NULL, *b2 = NULL;
  uint8_t *i1 = NULL, *i2 = NULL, got[300], want[300];
  size_t l1 = 0, l2 = 0;
  struct qk_header h;

  ok (build_sample (&i1, &l1, &b1) == 0 && build_sample (&i2, &l2, &b2) == 0,
      "builder: an extended L2 image with a snapshot builds");
  if (b1 == NULL || b2 == NULL) {
    qk_builder_free (b1);
    qk_builder_free (b2);
    return;
  }
  ok (l1 == l2 && memcmp (i1, i2, l1) == 0, "... the same bytes twice");
  ok (qk_header_parse (i1, l1, &h) == 0 && h.version == 3
      && h.cluster_bits == 14 && h.refcount_order == 3
      && h.header_length == 120 && h.nb_snapshots == 1
      && (h.incompatible_features & QK_INCOMPAT_EXTL2)
      && h.l1_table_offset % 16384 == 0
      && h.refcount_table_offset % 16384 == 0
      && h.snapshots_offset % 16384 == 0, "... its header is what was asked");
  for (int i = 0; i < 300; i++)
    want[i] = (uint8_t) ((i + 5) * 7 + 1);
  ok (qk_builder_read (b1, -1, 1000, got, 300) == 0
      && memcmp (got, want, 300) == 0, "... the active state reads the "
      "second write");
  for (int i = 0; i < 300; i++)
    want[i] = (uint8_t) ((900 + i) * 7 + 1);
  ok (qk_builder_read (b1, 0, 1000, got, 300) == 0
      && memcmp (got, want, 300) == 0, "... the snapshot the first");
  memset (want, 0, sizeof want);
  ok (qk_builder_read (b1, -1, 16384 + 1024, got, 300) == 0
      && memcmp (got, want, 300) == 0, "... zero subclusters read zeros");
  is_u64 (qk_builder_size (b1, 0), 1 << 20, "... the snapshot's size");
  free (i1);
  free (i2);
  qk_builder_free (b1);
  qk_builder_free (b2);
}

/* qk_reflayout: a refcount structure planned past `start` for a random
 * map of counted references covers every cluster in use and itself. The
 * check decodes the table and blocks as a reader would. */
static void
test_reflayout_one (unsigned cb, unsigned order, uint64_t n, uint64_t start,
                    unsigned density)
{
  uint64_t cs = 1ULL << cb, per = cs * 8 >> order;
  uint64_t max = order == 6 ? UINT64_MAX : (1ULL << (1U << order)) - 1;
  size_t mapbytes = (size_t) ((n << order) + 7) / 8 + 8;
  uint8_t *counted = calloc (1, mapbytes), *buf = NULL, *tab = NULL;
  uint64_t *need = calloc (n / per + 2, sizeof *need);
  size_t n_need = 0;
  struct qk_reflayout L;
  bool good = true;

  for (uint64_t k = 0; k < n; k++)
    if (rnd () % 100 < density)
      qk_refblock_set (counted, order, k, 1 + rnd () % (max < 3 ? max : 3));
  for (uint64_t t = 0; t * per < n; t++)
    for (uint64_t k = t * per; k < n && k < (t + 1) * per; k++)
      if (qk_refblock_get (counted, order, k)) {
        need[n_need++] = t;
        break;
      }
  if (qk_reflayout_plan (cb, order, need, n_need, start, &L) < 0) {
    ok (0, "reflayout cb=%u order=%u n=%" PRIu64 ": plan (%s)", cb, order, n,
        qk_get_error ());
    goto out;
  }
  tab = malloc (L.table_clusters * cs);
  buf = malloc (cs);
  if (qk_reflayout_table (&L, tab, L.table_clusters * cs) < 0)
    good = false;
  /* every cluster: the refcount the structure gives it */
  for (uint64_t k = 0; good && k < (n > L.end ? n : L.end); k++) {
    uint64_t t = k / per, want, got = 0, e;
    want = k < n ? qk_refblock_get (counted, order, k) : 0;
    if (k >= L.start && k < L.end)
      want++;
    e = t < L.table_entries ? be64_get (tab + 8 * t) : 0;
    if (e) {
      uint64_t j = (e >> cb) - L.start - L.table_clusters;
      if (j >= L.n_blocks
          || qk_reflayout_block (&L, j, counted, order, n, buf, cs) < 0)
        good = false;
      else
        got = qk_refblock_get (buf, order, k % per);
    }
    if (got != want) {
      printf ("#   cluster %" PRIu64 ": refcount %" PRIu64 ", want %" PRIu64
              "\n", k, got, want);
      good = false;
    }
  }
  ok (good, "reflayout cb=%u order=%u: %" PRIu64 " clusters, %zu blocks "
      "needed, structure of %" PRIu64 " table clusters and %" PRIu64
      " blocks at %" PRIu64 " counts them and itself", cb, order, n, n_need,
      L.table_clusters, L.n_blocks, L.start);
  qk_reflayout_free (&L);
out:
  free (counted);
  free (need);
  free (buf);
  free (tab);
}

static void
test_reflayout (void)
{
  struct qk_reflayout L;

  test_reflayout_one (16, 4, 1000, 1000, 50);
  test_reflayout_one (9, 4, 70000, 70000, 30);     /* many blocks, 512 B */
  test_reflayout_one (9, 6, 20000, 20000, 90);     /* 64 per block */
  test_reflayout_one (9, 0, 9000, 9000, 10);       /* 1-bit refcounts */
  test_reflayout_one (12, 3, 50000, 60000, 5);     /* a gap before start */
  test_reflayout_one (21, 5, 100, 100, 100);       /* 2 MiB clusters */
  test_reflayout_one (16, 4, 0, 1, 0);             /* nothing in use */
  ok (qk_reflayout_plan (8, 4, NULL, 0, 1, &L) < 0 && errno == EINVAL,
      "reflayout refuses 256-byte clusters");
  ok (qk_reflayout_plan (16, 7, NULL, 0, 1, &L) < 0 && errno == EINVAL,
      "reflayout refuses refcount order 7");
  ok (qk_reflayout_plan (16, 4, NULL, 0, 0, &L) < 0,
      "reflayout refuses start cluster 0 (the header)");
}

int
main (void)
{
  const char *env = getenv ("QK_FUZZ_SCALE");
  unsigned scale = env ? (unsigned) atoi (env) : 1;

  if (scale == 0)
    scale = 1;
  rng_state = 20240601;

  test_header_fields ();
  test_header_roundtrip ();
  test_header_truncated ();
  test_header_bad ();
  test_feature_names ();
  test_extensions ();
  test_l2_types ();
  test_l2_compressed ();
  test_refblocks ();
  test_refblock_next_used ();
  test_snapshots ();
  test_bitmaps ();
  test_compress_type (QK_COMPRESSION_DEFLATE);
  test_compress_type (QK_COMPRESSION_ZSTD);
  test_luks ();
  test_write_extensions ();
  test_write_feature_names ();
  test_write_ext_payloads ();
  test_write_entries ();
  test_write_tables ();
  test_write_refblocks ();
  test_write_snapshot_extra ();
  test_write_bitmap_entries ();
  test_builder_args ();
  test_builder_model ();
  test_reflayout ();

  fuzz_header (20000 * scale);
  fuzz_extensions (20000 * scale);
  fuzz_snapshots (20000 * scale);
  fuzz_bitmaps (20000 * scale);
  fuzz_l2_refcount (100000 * scale);
  fuzz_decompress (3000 * scale);
  return tap_done ();
}
