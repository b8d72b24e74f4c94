/* Opening an image: header, extensions, L1, snapshot table, bitmap
 * directory, external data file and backing chain.
 *
 * Opening is lenient: anything past the header that cannot be read is a
 * warning, so that inspection and recovery still work on images QEMU
 * refuses. Guest reads are refused (qk_image_unreadable_reason) only when
 * the data cannot be interpreted at all. */
#include <config.h>

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "image/image.h"
#include "util/path.h"

int
qk_image_warn (struct qk_image *img, const char *fmt, ...)
{
  va_list ap;
  char *s;

  va_start (ap, fmt);
  s = qk_vformat (fmt, ap);
  va_end (ap);
  if (s == NULL)
    return -1;
  return qk_strvec_add (&img->warnings, s);
}

/* The warning just added (for the typed findings), or NULL. */
static const char *
last_warning (const struct qk_image *img)
{
  return img->warnings.n ? img->warnings.v[img->warnings.n - 1] : NULL;
}

/* The backing file was not opened: state and the warning that says why
 * (the first reason wins, as set_unreadable's). */
static void
backing_failed (struct qk_image *img, enum qk_backing_state st)
{
  if (img->backing_state != QK_BK_OK)
    return;
  img->backing_state = st;
  img->backing_why = last_warning (img);
}

static void set_unreadable (struct qk_image *img, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

static void
set_unreadable (struct qk_image *img, const char *fmt, ...)
{
  va_list ap;
  char *s;

  if (img->unreadable)
    return;
  va_start (ap, fmt);
  if (vasprintf (&s, fmt, ap) >= 0)
    img->unreadable = s;
  va_end (ap);
}

static char *
strndup_printable (const uint8_t *p, size_t n)
{
  char *s = malloc (n + 1);
  if (s) {
    memcpy (s, p, n);
    s[n] = '\0';
  }
  return s;
}

/* ---- extensions ---- */

struct ext_ctx {
  struct qk_image *img;
  size_t cap;
};

static int
ext_cb (void *opaque, const struct qk_ext_raw *e, const uint8_t *payload)
{
  struct ext_ctx *c = opaque;
  struct qk_image *img = c->img;
  struct qk_extension *x;

  for (size_t i = 0; i < img->n_ext; i++)
    if (img->ext[i].magic == e->magic) {
      qk_image_warn (img, "header extension 0x%08x (%s) appears more than "
                     "once (at 0x%" PRIx64 " and 0x%" PRIx64 "); the first "
                     "one is used", e->magic, qk_extension_name (e->magic),
                     img->ext[i].offset, e->offset);
      break;
    }

  x = qk_grow (img->ext, &c->cap, img->n_ext + 1, sizeof *x);
  if (x == NULL)
    return -1;
  img->ext = x;
  x = &img->ext[img->n_ext++];
  x->magic = e->magic;
  x->length = e->length;
  x->offset = e->offset;
  x->data = payload;
  x->name = qk_extension_name (e->magic);

  for (size_t i = 0; i + 1 < img->n_ext; i++)
    if (img->ext[i].magic == e->magic)
      return 0;   /* duplicates: first one wins, as QEMU */

  switch (e->magic) {
  case QK_EXT_BACKING_FORMAT:
    if (e->length >= 16)
      qk_image_warn (img, "backing format extension is %u bytes long (QEMU "
                     "accepts at most 15)", e->length);
    img->backing_format_ext = strndup_printable (payload,
                                                 MIN (e->length, 1023U));
    break;
  case QK_EXT_FEATURE_TABLE:
    if (e->length % 48)
      qk_image_warn (img, "feature name table length %u is not a multiple "
                     "of 48", e->length);
    for (uint32_t i = 0; i + 48 <= e->length; i += 48) {
      unsigned type = payload[i], bit = payload[i + 1];
      size_t n = strnlen ((const char *) payload + i + 2, 46);
      if (type > 2 || bit > 63) {
        qk_image_warn (img, "feature name table entry %u has type %u bit %u",
                       i / 48, type, bit);
        continue;
      }
      free (img->feature_names[type][bit]);
      img->feature_names[type][bit] = strndup_printable (payload + i + 2, n);
      img->any_feature_name = true;
    }
    break;
  case QK_EXT_BITMAPS:
    if (qk_bitmaps_ext_parse (payload, e->length, &img->bitmaps_ext) < 0)
      qk_image_warn (img, "%s", qk_get_error ());
    else
      img->has_bitmaps_ext = true;
    break;
  case QK_EXT_CRYPTO:
    if (e->length < 16)
      qk_image_warn (img, "encryption header pointer extension too short");
    else {
      img->has_crypto_ext = true;
      img->crypto_offset = be64_get (payload);
      img->crypto_length = be64_get (payload + 8);
    }
    break;
  case QK_EXT_DATA_FILE:
    img->data_file_name = strndup_printable (payload,
                                             MIN (e->length, QK_MAX_NAME));
    break;
  }
  return 0;
}

static void
read_extensions (struct qk_image *img)
{
  const struct qk_header *h = &img->hdr;
  struct ext_ctx c = { img, 0 };
  size_t start = h->header_length, end = h->cluster_size;

  if (h->backing_file_offset && h->backing_file_offset < h->cluster_size
      && h->backing_file_offset >= start)
    end = h->backing_file_offset;
  if (h->version == 2 && start > end)
    return;
  if (qk_extensions_walk (img->cluster0, start, end, ext_cb, &c) < 0) {
    qk_image_warn (img, "%s", qk_get_error ());
    img->ext_overrun = last_warning (img);
  }
}

/* ---- the LUKS header ---- */

/* QEMU's names (crypto/block-luks.c, qapi/crypto.json). */
static const char *const luks_modes[] = { "ecb", "cbc", "xts", "ctr" };
static const char *const luks_ivgens[] = { "plain", "plain64", "essiv" };
static const struct {
  const char *name;
  unsigned digest;
} luks_hashes[] = {
  { "md5", 16 }, { "sha1", 20 }, { "sha224", 28 }, { "sha256", 32 },
  { "sha384", 48 }, { "sha512", 64 }, { "ripemd160", 20 },
};
static const struct {
  const char *name;        /* as in the header */
  unsigned key_bytes;
  const char *alg;         /* QEMU's QCryptoCipherAlgorithm */
} luks_ciphers[] = {
  { "aes", 16, "aes-128" }, { "aes", 24, "aes-192" }, { "aes", 32, "aes-256" },
  { "cast5", 16, "cast5-128" },
  { "serpent", 16, "serpent-128" }, { "serpent", 24, "serpent-192" },
  { "serpent", 32, "serpent-256" },
  { "twofish", 16, "twofish-128" }, { "twofish", 24, "twofish-192" },
  { "twofish", 32, "twofish-256" },
};

static const char *
luks_lookup (const char *const *names, size_t n, const char *s)
{
  for (size_t i = 0; i < n; i++)
    if (strcmp (names[i], s) == 0)
      return names[i];
  return NULL;
}

static int
luks_hash (const char *s)
{
  for (size_t i = 0; i < sizeof luks_hashes / sizeof luks_hashes[0]; i++)
    if (strcmp (luks_hashes[i].name, s) == 0)
      return (int) i;
  return -1;
}

static void
luks_string (char *dst, const uint8_t *src, size_t n)
{
  size_t k = strnlen ((const char *) src, n);
  memcpy (dst, src, k);
  dst[k] = '\0';
}

int
qk_luks_parse (const uint8_t *buf, size_t len, struct qk_luks *l)
{
  static const uint8_t magic[6] = { 'L', 'U', 'K', 'S', 0xba, 0xbe };
  char mode[33], *ivgen, *ivhash;
  int hi;

  memset (l, 0, sizeof *l);
  if (len < QK_LUKS_HEADER_LEN) {
    set_error (EBADMSG, "LUKS header: %zu bytes, not %d", len,
               QK_LUKS_HEADER_LEN);
    return -1;
  }
  if (memcmp (buf, magic, 6) != 0) {
    set_error (EBADMSG, "not a LUKS header (bad magic %02x%02x%02x%02x%02x%02x)",
               buf[0], buf[1], buf[2], buf[3], buf[4], buf[5]);
    return -1;
  }
  l->version = be16_get (buf + 6);
  if (l->version != 1) {
    set_error (EBADMSG, "LUKS version %u is not supported (QEMU reads "
               "LUKS1)", l->version);
    return -1;
  }
  luks_string (l->cipher_name, buf + 8, 32);
  luks_string (l->cipher_mode, buf + 40, 32);
  luks_string (l->hash_spec, buf + 72, 32);
  l->payload_offset_sector = be32_get (buf + 104);
  l->key_bytes = be32_get (buf + 108);
  /* 112: master key digest (20), 132: its salt (32) */
  l->master_key_iterations = be32_get (buf + 164);
  luks_string (l->uuid, buf + 168, 40);
  for (int i = 0; i < QK_LUKS_SLOTS; i++) {
    const uint8_t *k = buf + 208 + 48 * i;
    l->slot[i].state = be32_get (k);
    l->slot[i].active = l->slot[i].state == QK_LUKS_SLOT_ENABLED;
    l->slot[i].iterations = be32_get (k + 4);
    /* k + 8: salt (32) */
    l->slot[i].key_offset_sector = be32_get (k + 40);
    l->slot[i].stripes = be32_get (k + 44);
  }

  /* qcrypto_block_luks_parse_header: "<mode>-<ivgen>[:<ivhash>]" */
  memcpy (mode, l->cipher_mode, sizeof mode);
  ivgen = strchr (mode, '-');
  if (ivgen) {
    *ivgen++ = '\0';
    ivhash = strchr (ivgen, ':');
    if (ivhash)
      *ivhash++ = '\0';
    l->mode = luks_lookup (luks_modes, 4, mode);
    l->ivgen_alg = luks_lookup (luks_ivgens, 3, ivgen);
    if (ivhash && (hi = luks_hash (ivhash)) >= 0
        && l->ivgen_alg && strcmp (l->ivgen_alg, "essiv") == 0)
      l->ivgen_hash_alg = luks_hashes[hi].name;
  }
  if ((hi = luks_hash (l->hash_spec)) >= 0)
    l->hash_alg = luks_hashes[hi].name;
  if (l->mode) {
    /* XTS keys are two keys of the cipher */
    uint32_t kb = strcmp (l->mode, "xts") == 0 ? l->key_bytes / 2
                                                : l->key_bytes;
    for (size_t i = 0; i < sizeof luks_ciphers / sizeof luks_ciphers[0]; i++)
      if (strcmp (luks_ciphers[i].name, l->cipher_name) == 0
          && luks_ciphers[i].key_bytes == kb)
        l->cipher_alg = luks_ciphers[i].alg;
  }
  return 0;
}

/* Sectors of key material of a slot: qcrypto_block_luks_splitkeylen_sectors
 * (the split key in whole sectors, rounded up to the 4 KiB header). */
static uint64_t
luks_slot_sectors (const struct qk_luks *l, uint32_t stripes)
{
  uint64_t s = DIV_ROUND_UP ((uint64_t) l->key_bytes * stripes, 512);
  return DIV_ROUND_UP (s, 8) * 8;
}

static unsigned
luks_problem (qk_luks_problem_fn fn, void *opaque, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));

static unsigned
luks_problem (qk_luks_problem_fn fn, void *opaque, const char *fmt, ...)
{
  char msg[300];
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  fn (opaque, msg);
  return 1;
}

unsigned
qk_luks_check (const struct qk_luks *l, qk_luks_problem_fn fn, void *opaque)
{
  unsigned n = 0;
  const char *sep = strchr (l->cipher_mode, '-');

  /* qcrypto_block_luks_check_header */
  for (int i = 0; i < QK_LUKS_SLOTS; i++) {
    const struct qk_luks_slot *a = &l->slot[i];
    uint64_t end = a->key_offset_sector + luks_slot_sectors (l, a->stripes);

    if (a->stripes == 0)
      n += luks_problem (fn, opaque, "LUKS key slot %d is corrupted "
                         "(stripes == 0)", i);
    if (a->state != QK_LUKS_SLOT_ENABLED && a->state != QK_LUKS_SLOT_DISABLED)
      n += luks_problem (fn, opaque, "LUKS key slot %d state 0x%08x is "
                         "neither active (0x00ac71f3) nor inactive "
                         "(0x0000dead)", i, a->state);
    if (end > l->payload_offset_sector)
      n += luks_problem (fn, opaque, "LUKS key slot %d (sectors %u to %"
                         PRIu64 ") overlaps the encrypted payload (sector "
                         "%u)", i, a->key_offset_sector, end,
                         l->payload_offset_sector);
    for (int j = i + 1; j < QK_LUKS_SLOTS; j++) {
      const struct qk_luks_slot *b = &l->slot[j];
      uint64_t bend = b->key_offset_sector
                      + luks_slot_sectors (l, b->stripes);
      if (end > b->key_offset_sector && bend > a->key_offset_sector)
        n += luks_problem (fn, opaque, "LUKS key slots %d and %d overlap",
                           i, j);
    }
  }
  /* qcrypto_block_luks_parse_header */
  if (sep == NULL)
    n += luks_problem (fn, opaque, "LUKS cipher mode '%s' is not "
                       "MODE-IVGEN[:HASH]", l->cipher_mode);
  else {
    const char *colon = strchr (sep, ':');
    if (colon && luks_hash (colon + 1) < 0)
      n += luks_problem (fn, opaque, "LUKS IV generator hash '%s' is not "
                         "supported", colon + 1);
    if (l->mode == NULL)
      n += luks_problem (fn, opaque, "LUKS cipher mode '%.*s' is not "
                         "supported", (int) (sep - l->cipher_mode),
                         l->cipher_mode);
    else if (l->cipher_alg == NULL)
      n += luks_problem (fn, opaque, "LUKS cipher '%s' with %u key bytes is "
                         "not supported", l->cipher_name, l->key_bytes);
    if (l->hash_alg == NULL)
      n += luks_problem (fn, opaque, "LUKS hash '%s' is not supported",
                         l->hash_spec);
    if (l->ivgen_alg == NULL)
      n += luks_problem (fn, opaque, "LUKS IV generator in '%s' is not "
                         "supported", l->cipher_mode);
    else if (strcmp (l->ivgen_alg, "essiv") == 0) {
      /* qcrypto_block_luks_essiv_cipher: a cipher key as long as the
       * hash's digest */
      int hi = colon ? luks_hash (colon + 1) : -1;
      if (colon == NULL)
        n += luks_problem (fn, opaque, "LUKS IV generator essiv without a "
                           "hash");
      else if (hi >= 0 && l->cipher_alg) {
        unsigned d = luks_hashes[hi].digest;
        bool cast5 = strcmp (l->cipher_name, "cast5") == 0;
        if (cast5 ? d != 16 : (d != 16 && d != 24 && d != 32))
          n += luks_problem (fn, opaque, "LUKS: cipher %s with essiv:%s is "
                             "not supported (no key of %u bytes)",
                             l->cipher_alg, luks_hashes[hi].name, d);
      }
    }
  }
  return n;
}

static void
luks_warn (void *opaque, const char *msg)
{
  qk_image_warn (opaque, "%s (QEMU refuses the image)", msg);
}

/* The LUKS header, as qcow2 gives it to QEMU's LUKS driver
 * (qcow2_crypto_hdr_read_func): within the extent the extension names,
 * which must be cluster aligned. */
static void
read_luks (struct qk_image *img)
{
  const struct qk_header *h = &img->hdr;
  uint8_t buf[QK_LUKS_HEADER_LEN];

  if (h->crypt_method != QK_CRYPT_LUKS || !img->has_crypto_ext)
    return;
  if (!IS_ALIGNED (img->crypto_offset, h->cluster_size)) {
    qk_image_warn (img, "the LUKS header offset 0x%" PRIx64 " is not "
                   "cluster aligned", img->crypto_offset);
    return;
  }
  if (img->crypto_length < QK_LUKS_HEADER_LEN) {
    qk_image_warn (img, "the LUKS header area (%" PRIu64 " bytes at 0x%"
                   PRIx64 ") is shorter than a LUKS header (%d bytes)",
                   img->crypto_length, img->crypto_offset,
                   QK_LUKS_HEADER_LEN);
    return;
  }
  if (qk_source_read_exact (img->src, buf, sizeof buf, img->crypto_offset,
                            "LUKS header") < 0
      || qk_luks_parse (buf, sizeof buf, &img->luks) < 0) {
    qk_image_warn (img, "LUKS header at 0x%" PRIx64 ": %s",
                   img->crypto_offset, qk_get_error ());
    return;
  }
  img->luks.offset = img->crypto_offset;
  img->luks.length = img->crypto_length;
  img->has_luks = true;
  qk_luks_check (&img->luks, luks_warn, img);
}

/* ---- tables ---- */

static void
read_l1 (struct qk_image *img)
{
  const struct qk_header *h = &img->hdr;
  uint64_t bytes = (uint64_t) h->l1_size * 8;
  uint64_t per_l1 = h->cluster_size * h->l2_entries;
  uint64_t need = h->size / per_l1 + (h->size % per_l1 != 0);

  if (h->l1_size < need)
    qk_image_warn (img, "L1 table is too small: %u entries for a virtual "
                   "size needing %" PRIu64, h->l1_size, need);
  if (bytes > QK_MAX_L1_BYTES) {
    qk_image_warn (img, "L1 table of %u entries is too large (limit %llu)",
                   h->l1_size, QK_MAX_L1_BYTES / 8);
    set_unreadable (img, "the L1 table is too large");
    return;
  }
  if (h->l1_size && !IS_ALIGNED (h->l1_table_offset, h->cluster_size)) {
    qk_image_warn (img, "L1 table offset 0x%" PRIx64 " is not cluster "
                   "aligned", h->l1_table_offset);
    set_unreadable (img, "the L1 table offset is not aligned");
    return;
  }
  if (bytes && (h->l1_table_offset >= img->src->size
                || bytes > img->src->size - h->l1_table_offset)) {
    qk_image_warn (img, "L1 table at 0x%" PRIx64 " (%u entries) extends past "
                   "the end of the file", h->l1_table_offset, h->l1_size);
    set_unreadable (img, "the L1 table cannot be read");
    return;
  }
  img->l1 = calloc (h->l1_size ? h->l1_size : 1, sizeof (uint64_t));
  if (img->l1 == NULL) {
    set_unreadable (img, "out of memory reading the L1 table");
    return;
  }
  /* read in place, then to host order */
  if (bytes && qk_source_read_exact (img->src, img->l1, bytes,
                                     h->l1_table_offset, "L1 table") < 0) {
    qk_image_warn (img, "%s", qk_get_error ());
    set_unreadable (img, "the L1 table cannot be read");
    memset (img->l1, 0, bytes);
    return;
  }
  be64_array (img->l1, h->l1_size);
  img->l1_count = h->l1_size;
  img->l1_ok = true;
}

/* A window over a table in the file, to parse variable-size entries
 * without one read per entry. */
struct window {
  struct qk_source *src;
  uint64_t base, limit;  /* table [base, base+limit) */
  uint8_t *buf;
  size_t cap;
  uint64_t woff;         /* window start, relative to base */
  size_t wlen;
  size_t chunk;          /* read ahead this much (0: 1 MiB), doubling */
};

/* Make [rel, rel+len) available; returns a pointer or NULL. */
static const uint8_t *
window_get (struct window *w, uint64_t rel, size_t len, size_t *avail)
{
  if (rel >= w->limit)
    return NULL;
  if (rel < w->woff || rel + len > w->woff + w->wlen) {
    size_t want = MAX (len, w->chunk ? w->chunk : (size_t) 1 << 20);
    ssize_t r;
    if (w->chunk && w->chunk < ((size_t) 1 << 20))
      w->chunk *= 2;      /* the estimate was short: read more next time */
    if (want > w->limit - rel)
      want = w->limit - rel;
    if (want > w->cap) {
      uint8_t *nb = realloc (w->buf, want);
      if (nb == NULL)
        return NULL;
      w->buf = nb;
      w->cap = want;
    }
    r = w->src->ops->pread (w->src, w->buf, want, w->base + rel);
    if (r < 0)
      return NULL;
    w->woff = rel;
    w->wlen = r;
  }
  *avail = w->woff + w->wlen - rel;
  return w->buf + (rel - w->woff);
}

/* The snapshot table is not read in full: the warning just added says
 * why. */
static void
snaps_failed (struct qk_image *img)
{
  img->snaps_ok = false;
  img->snaps_why = last_warning (img);
}

static void
read_snapshots (struct qk_image *img)
{
  const struct qk_header *h = &img->hdr;
  struct window w = { .src = img->src, .base = h->snapshots_offset };
  uint64_t rel = 0;
  uint32_t n = h->nb_snapshots, fit;

  img->snaps_ok = true;
  if (n == 0)
    return;
  if (!IS_ALIGNED (h->snapshots_offset, h->cluster_size)) {
    qk_image_warn (img, "snapshot table offset 0x%" PRIx64 " is not cluster "
                   "aligned", h->snapshots_offset);
    snaps_failed (img);
    return;
  }
  if (n > QK_MAX_SNAPSHOTS) {
    qk_image_warn (img, "%u snapshots is more than qcowkit reads (%d); only "
                   "the first %d are read", n, QK_MAX_SNAPSHOTS,
                   QK_MAX_SNAPSHOTS);
    snaps_failed (img);
    n = QK_MAX_SNAPSHOTS;
  }
  w.limit = QK_MAX_SNAPSHOT_TABLE;
  if (h->snapshots_offset >= img->src->size) {
    qk_image_warn (img, "snapshot table at 0x%" PRIx64 " is past the end of "
                   "the file", h->snapshots_offset);
    snaps_failed (img);
    return;
  }
  w.limit = MIN (w.limit, img->src->size - h->snapshots_offset);
  /* a first read sized for n typical entries (40 bytes, extra data, id
   * and name), not a whole MiB of whatever follows the table */
  w.chunk = MIN ((size_t) n * 128 + 4096, (size_t) 1 << 20);
  /* slots for the entries that can fit (an entry takes 40 bytes or
   * more), not for the count the header claims: a 64 KiB file that
   * claims 131072 snapshots would have 17 MB of them */
  fit = MIN (n, w.limit / 40);
  img->snaps = calloc (fit ? fit : 1, sizeof *img->snaps);
  if (img->snaps == NULL) {
    snaps_failed (img);
    return;
  }
  for (uint32_t i = 0; i < n; i++) {
    size_t avail = 0, elen;
    const uint8_t *p = i < fit ? window_get (&w, rel, 40, &avail) : NULL;
    uint64_t full;

    if (p == NULL || avail < 40) {
      qk_image_warn (img, "snapshot table entry %u at 0x%" PRIx64 " is past "
                     "the end of the file or the table size limit", i,
                     h->snapshots_offset + rel);
      snaps_failed (img);
      break;
    }
    full = 40 + (uint64_t) be32_get (p + 36) + be16_get (p + 12)
           + be16_get (p + 14);
    if (full > 40 + QK_MAX_SNAPSHOT_EXTRA + 2 * 65535ULL)
      full = 40;
    p = window_get (&w, rel, full, &avail);
    if (p == NULL
        || qk_snapshot_parse (p, avail, &img->snaps[i], &elen) < 0) {
      qk_image_warn (img, "snapshot table entry %u at 0x%" PRIx64 ": %s", i,
                     h->snapshots_offset + rel,
                     p ? qk_get_error () : "cannot be read");
      snaps_failed (img);
      break;
    }
    img->snaps[i].s.entry_offset = h->snapshots_offset + rel;
    if (img->snaps[i].s.extra_data_size > 1024)
      qk_image_warn (img, "snapshot table entry %u has %u bytes of extra data "
                     "(QEMU refuses more than 1024 and will not open the "
                     "image)", i, img->snaps[i].s.extra_data_size);
    if (img->n_snaps == img->snaps_qemu
        && rel + full <= QK_QEMU_SNAPSHOT_TABLE)
      img->snaps_qemu++;
    img->n_snaps++;
    rel += elen;
  }
  free (w.buf);
}

static void
read_bitmaps (struct qk_image *img)
{
  const struct qk_bitmaps_ext *be = &img->bitmaps_ext;
  uint8_t *buf;
  size_t pos = 0;
  uint64_t fit;

  if (!img->has_bitmaps_ext)
    return;
  if (be->nb_bitmaps == 0 || be->nb_bitmaps > QK_MAX_BITMAPS) {
    qk_image_warn (img, "bitmaps extension: %u bitmaps is out of range (1 to "
                   "%d)", be->nb_bitmaps, QK_MAX_BITMAPS);
    return;
  }
  if (be->directory_size > QK_MAX_BITMAP_DIR
      || !IS_ALIGNED (be->directory_offset, img->hdr.cluster_size)) {
    qk_image_warn (img, "bitmaps extension: directory at 0x%" PRIx64 " of %"
                   PRIu64 " bytes is unaligned or too large",
                   be->directory_offset, be->directory_size);
    return;
  }
  buf = malloc (be->directory_size ? be->directory_size : 1);
  /* slots for the entries the directory can hold (24 bytes or more
   * each), not for the count the extension claims */
  fit = MIN (be->nb_bitmaps, be->directory_size / 24);
  img->bitmaps = calloc (fit ? fit : 1, sizeof *img->bitmaps);
  if (buf == NULL || img->bitmaps == NULL) {
    free (buf);
    return;
  }
  if (qk_source_read_exact (img->src, buf, be->directory_size,
                            be->directory_offset, "bitmap directory") < 0) {
    qk_image_warn (img, "%s", qk_get_error ());
    free (buf);
    return;
  }
  for (uint32_t i = 0; i < be->nb_bitmaps; i++) {
    size_t elen;
    struct qk_bitmap_raw spare;
    /* an entry past the slots runs past the directory: parsed into a
     * spare, it fails as it would */
    if (qk_bitmap_parse (buf + pos, be->directory_size - pos,
                         i < fit ? &img->bitmaps[i] : &spare, &elen) < 0) {
      qk_image_warn (img, "bitmap directory entry %u: %s", i, qk_get_error ());
      break;
    }
    if (i >= fit) {              /* cannot be: each entry took 24 bytes */
      qk_bitmap_raw_free (&spare);
      break;
    }
    img->bitmaps[i].b.entry_offset = be->directory_offset + pos;
    img->n_bitmaps++;
    pos += elen;
  }
  free (buf);
}

/* ---- paths ---- */

/* Open path (a backing or data file) below root only: the directory
 * holding it must resolve (as the kernel resolves it) below root, and the
 * file is then opened from root's descriptor with RESOLVE_BENEATH, so that
 * no symlink in its last component, or one swapped in since, leads out. */
static struct qk_source *
open_beneath (const char *path, const char *root)
{
  char rr[PATH_MAX], rp[PATH_MAX], *dir, *leaf, *rel = NULL;
  const char *slash = strrchr (path, '/');
  struct qk_root r;
  size_t n;
  int fd;

  dir = slash ? strndup (path, slash == path ? 1 : (size_t) (slash - path))
              : strdup (".");
  leaf = strdup (slash ? slash + 1 : path);
  if (dir == NULL || leaf == NULL) {
    set_error (ENOMEM, "strdup");
    goto fail;
  }
  if (leaf[0] == '\0' || strcmp (leaf, ".") == 0 || strcmp (leaf, "..") == 0) {
    set_error (EINVAL, "%s names no file", path);
    goto fail;
  }
  if (realpath (root, rr) == NULL) {
    set_error (errno, "%s", root);
    goto fail;
  }
  if (realpath (dir, rp) == NULL) {
    set_error (errno, "%s", dir);
    goto fail;
  }
  n = strlen (rr);
  if (n == 1)
    n = 0;
  if (strncmp (rp, rr, n) != 0 || (rp[n] != '/' && rp[n] != '\0')) {
    set_error (EXDEV, "%s is outside %s", path, root);
    goto fail;
  }
  if (asprintf (&rel, "%s/%s", rp + n, leaf) < 0) {
    rel = NULL;
    set_error (ENOMEM, "asprintf");
    goto fail;
  }
  if (qk_root_init (&r, rr, QK_ROOT_BENEATH) < 0)
    goto fail;
  fd = qk_root_open (&r, rel, O_RDONLY | O_NOCTTY | O_NONBLOCK, 0);
  qk_root_fini (&r);
  if (fd < 0)
    goto fail;
  free (dir);
  free (leaf);
  free (rel);
  return qk_source_fd (fd, path);
fail:
  free (dir);
  free (leaf);
  free (rel);
  return NULL;
}

/* Open a referenced file (backing or data file) with all the checks. */
static struct qk_source *
open_ref (struct qk_image *img, struct chain_ctx *cc, const char *what,
          const char *name, char **pathp)
{
  const struct qk_open_options *o = cc->opts;
  char *path;
  struct qk_source *s;

  /* Errors here name qk_image_open, the call the user made. */
  if (name[0] == '\0') {
    qk_internal_set_error (EBADMSG, "qk_image_open", "%s name is empty",
                           what);
    return NULL;
  }
  if (qk_path_has_protocol (name)) {
    qk_internal_set_error (EPERM, "qk_image_open", "%s '%s' is a protocol "
                           "or json: specification; only local files are "
                           "opened (write a relative name with a colon as "
                           "./NAME)", what, name);
    return NULL;
  }
  path = qk_path_combine (img->filename, name);
  if (path == NULL) {
    set_error (ENOMEM, "path_combine");
    return NULL;
  }
  *pathp = path;
  if (o && o->confine_root && !(o->open_fn)) {
    s = open_beneath (path, o->confine_root);
    if (s == NULL && errno == EXDEV) {
      qk_internal_set_error (EPERM, "qk_image_open", "%s '%s' resolves "
                             "outside %s", what, path, o->confine_root);
      return NULL;
    }
  }
  else
    s = (o && o->open_fn) ? o->open_fn (o->open_opaque, path)
                          : qk_source_file (path);
  if (s == NULL)
    qk_internal_prefix_error ("%s '%s'", what, name);
  return s;
}

static struct qk_image *open_source (struct qk_source *src, const char *name,
                                     const char *format,
                                     struct chain_ctx *cc);

static void
open_backing (struct qk_image *img, struct chain_ctx *cc)
{
  const struct qk_header *h = &img->hdr;
  struct qk_source *s;
  char *path = NULL;

  /* qcow2_do_open: the name is read whenever backing_file_offset is not
   * 0; the offset may be at most the cluster size and the name must end
   * within the first cluster (offset + size <= cluster size) and be at
   * most 1023 bytes. So an empty name may start right at the end of
   * cluster 0. */
  if (h->backing_file_offset == 0)
    return;
  if (h->backing_file_size > 1023
      || h->backing_file_offset > h->cluster_size
      || h->backing_file_size > h->cluster_size - h->backing_file_offset) {
    qk_image_warn (img, "backing file name (offset 0x%" PRIx64 ", %u bytes) "
                   "is not within the first cluster or longer than 1023 "
                   "bytes", h->backing_file_offset, h->backing_file_size);
    set_unreadable (img, "the backing file name is invalid");
    backing_failed (img, QK_BK_NAME_INVALID);
    return;
  }
  /* QEMU keeps the name as a C string, so it ends at the first NUL; an
   * empty one (backing_file_size 0, or a NUL first) means no backing file
   * (bdrv_open_backing_file opens nothing, qemu-img info shows none). */
  if (h->backing_file_size == 0
      || img->cluster0[h->backing_file_offset] == '\0') {
    if (h->backing_file_size)
      qk_image_warn (img, "backing file name (%u bytes at 0x%" PRIx64 ") "
                     "starts with a NUL byte: no backing file, as QEMU reads "
                     "it", h->backing_file_size, h->backing_file_offset);
    return;
  }
  img->backing_name = strndup_printable (img->cluster0 + h->backing_file_offset,
                                         h->backing_file_size);
  if (img->backing_name == NULL)
    return;
  if (memchr (img->backing_name, '\0', h->backing_file_size))
    qk_image_warn (img, "backing file name contains a NUL byte");
  if (img->backing_format_ext)
    img->backing_format = strdup (img->backing_format_ext);
  if (!qk_path_has_protocol (img->backing_name))
    img->backing_path = qk_path_combine (img->filename, img->backing_name);

  if (cc->opts && (cc->opts->flags & QK_OPEN_NO_BACKING)) {
    img->backing_state = QK_BK_NOT_ASKED;
    return;
  }
  if (cc->depth + 1 > cc->max_depth) {
    qk_image_warn (img, "backing chain is deeper than %u images; not opened "
                   "further", cc->max_depth);
    set_unreadable (img, "the backing chain is too deep");
    backing_failed (img, QK_BK_TOO_DEEP);
    return;
  }
  s = open_ref (img, cc, "backing file", img->backing_name, &path);
  if (s == NULL) {
    qk_image_warn (img, "%s", qk_get_error ());
    set_unreadable (img, "the backing file cannot be opened");
    backing_failed (img, QK_BK_CANNOT_OPEN);
    free (path);
    return;
  }
  if (s->has_id) {
    for (size_t i = 0; i < cc->n; i++)
      if (cc->dev[i] == s->dev && cc->ino[i] == s->ino) {
        qk_image_warn (img, "backing file '%s' is already in the chain "
                       "(a loop)", img->backing_name);
        set_unreadable (img, "the backing chain has a loop");
        backing_failed (img, QK_BK_LOOP);
        qk_source_close (s);
        free (path);
        return;
      }
  }
  if (img->backing_format && strcmp (img->backing_format, "qcow2") != 0
      && strcmp (img->backing_format, "raw") != 0) {
    qk_image_warn (img, "backing file format '%s' is not supported (qcow2 "
                   "and raw are)", img->backing_format);
    set_unreadable (img, "the backing file format is not supported");
    backing_failed (img, QK_BK_FORMAT_UNSUPPORTED);
    qk_source_close (s);
    free (path);
    return;
  }
  cc->depth++;
  img->backing = open_source (s, path, img->backing_format, cc);
  cc->depth--;
  free (path);
  if (img->backing == NULL) {
    bool not_qcow2 = errno == EMEDIUMTYPE;   /* recorded qcow2, it is not */
    qk_image_warn (img, "backing file '%s': %s", img->backing_name,
                   qk_get_error ());
    set_unreadable (img, "the backing file cannot be opened");
    backing_failed (img, not_qcow2 ? QK_BK_NOT_QCOW2 : QK_BK_CANNOT_OPEN);
    return;
  }
  if (img->backing_format == NULL)
    img->backing_format = strdup (img->backing->is_qcow2 ? "qcow2" : "raw");
  else if (strcmp (img->backing_format, "qcow2") == 0
           && !img->backing->is_qcow2)
    qk_image_warn (img, "backing format is qcow2 but '%s' is not a qcow2 "
                   "image", img->backing_name);
  if (img->backing->unreadable)
    set_unreadable (img, "backing file '%s': %s", img->backing_name,
                    img->backing->unreadable);
}

static void
open_data_file (struct qk_image *img, struct chain_ctx *cc)
{
  char *path = NULL;
  struct qk_source *s;

  if (!(img->hdr.incompatible_features & QK_INCOMPAT_DATA_FILE)) {
    if (img->data_file_name)
      qk_image_warn (img, "external data file name '%s' present but the "
                     "external data file bit is clear", img->data_file_name);
    return;
  }
  if (img->data_file_name == NULL) {
    qk_image_warn (img, "external data file bit set but no data file name "
                   "extension");
    set_unreadable (img, "the external data file is not named");
    return;
  }
  if (cc->opts && (cc->opts->flags & QK_OPEN_NO_DATA_FILE)) {
    set_unreadable (img, "the external data file was not opened");
    return;
  }
  s = open_ref (img, cc, "data file", img->data_file_name, &path);
  free (path);
  if (s == NULL) {
    qk_image_warn (img, "%s", qk_get_error ());
    set_unreadable (img, "the external data file cannot be opened");
    return;
  }
  img->data = s;
}

/* ---- open ---- */

/* The bytes an open reads at offset 0 at once: the magic, the header and
 * its extensions (cluster 0 whole when clusters are 4 KiB or smaller). */
#define OPEN_HEAD 4096

static struct qk_image *
new_image (struct qk_source *src, const char *name, bool keep)
{
  struct qk_image *img = calloc (1, sizeof *img);

  if (img == NULL || (img->filename = strdup (name)) == NULL) {
    free (img);
    if (!keep)
      qk_source_close (src);
    set_error (ENOMEM, "calloc");
    return NULL;
  }
  img->src = img->data = src;
  img->keep_src = keep;
  img->meta_prealloc = -1;
  return img;
}

/* head holds the file's first n_head bytes (OPEN_HEAD, or the whole file
 * when it is shorter): the header and the start of cluster 0 are not
 * read again. */
static int
open_qcow2 (struct qk_image *img, struct chain_ctx *cc, const uint8_t *head,
            size_t n_head)
{
  struct qk_header *h = &img->hdr;
  size_t want, have;

  if (qk_header_parse (head, MIN (n_head, (size_t) QK_HEADER_KNOWN_LEN + 7),
                       h) < 0)
    return -1;
  /* calloc'ed, and read only as far as the file goes: the zeros past
   * its end are already there, and a 2 MiB cluster of a small file is
   * not written over (each page of it faulted in) at every open */
  img->cluster0 = calloc (1, h->cluster_size);
  if (img->cluster0 == NULL) {
    set_error (ENOMEM, "calloc");
    return -1;
  }
  want = MIN (h->cluster_size, img->src->size);
  have = MIN (want, n_head);
  memcpy (img->cluster0, head, have);
  if (want > have
      && qk_source_read_zeropad (img->src, img->cluster0 + have, want - have,
                                 have) < 0)
    return -1;
  if (img->src->size < h->cluster_size)
    qk_image_warn (img, "the file (%" PRIu64 " bytes) is shorter than one "
                   "cluster (%" PRIu64 ")", img->src->size, h->cluster_size);

  read_extensions (img);

  if (h->incompatible_features & ~QK_INCOMPAT_KNOWN) {
    for (unsigned b = 0; b < 64; b++)
      if ((h->incompatible_features & ~QK_INCOMPAT_KNOWN) & (1ULL << b)) {
        const char *nm = img->feature_names[0][b];
        qk_image_warn (img, "unknown incompatible feature bit %u%s%s%s", b,
                       nm ? " (" : "", nm ? nm : "", nm ? ")" : "");
      }
    if (!(cc->opts && (cc->opts->flags & QK_OPEN_FORCE)))
      set_unreadable (img, "the image uses unknown incompatible features "
                      "(--force reads it anyway)");
  }
  if (h->refcount_order > 6)
    qk_image_warn (img, "refcount_order %u is above 6", h->refcount_order);
  if ((h->incompatible_features & QK_INCOMPAT_COMPRESSION)
      && h->compression_type == 0)
    qk_image_warn (img, "compression type bit set but compression_type is 0");
  if (h->compression_type > 1) {
    qk_image_warn (img, "unknown compression type %u", h->compression_type);
    set_unreadable (img, "unknown compression type");
  }
  if (h->compression_type != 0
      && !(h->incompatible_features & QK_INCOMPAT_COMPRESSION))
    qk_image_warn (img, "compression_type %u without the compression type "
                   "incompatible bit", h->compression_type);
  if (h->crypt_method != QK_CRYPT_NONE) {
    set_unreadable (img, "the image is encrypted (%s); qcowkit does not "
                    "decrypt", h->crypt_method == QK_CRYPT_LUKS ? "LUKS"
                    : h->crypt_method == QK_CRYPT_AES ? "AES" : "unknown");
    if (h->crypt_method == QK_CRYPT_LUKS && !img->has_crypto_ext)
      qk_image_warn (img, "LUKS encryption without the encryption header "
                     "pointer extension");
  }
  read_luks (img);
  if ((h->incompatible_features & QK_INCOMPAT_EXTL2) && h->cluster_bits < 14)
    qk_image_warn (img, "extended L2 entries with clusters smaller than "
                   "16 KiB");

  read_l1 (img);
  read_snapshots (img);
  read_bitmaps (img);
  open_data_file (img, cc);
  open_backing (img, cc);

  img->rd_l1 = img->l1;
  img->rd_l1_count = img->l1_count;
  img->rd_size = h->size;
  return 0;
}

static struct qk_image *
open_source (struct qk_source *src, const char *name, const char *format,
             struct chain_ctx *cc)
{
  struct qk_image *img;
  uint8_t *head;   /* on the heap: an open recurses down the chain */
  ssize_t n;

  if (src->has_id && cc->n < sizeof cc->dev / sizeof cc->dev[0]) {
    cc->dev[cc->n] = src->dev;
    cc->ino[cc->n] = src->ino;
    cc->n++;
  }
  img = new_image (src, name, src == cc->keep);
  if (img == NULL)
    return NULL;
  /* one read for the magic, the header and the start of cluster 0 */
  head = malloc (OPEN_HEAD);
  if (head == NULL) {
    set_error (ENOMEM, "malloc");
    qk_image_close (img);
    return NULL;
  }
  n = src->ops->pread (src, head, OPEN_HEAD, 0);
  if (n < 0) {
    free (head);
    qk_image_close (img);
    return NULL;
  }
  img->is_qcow2 = (format == NULL || strcmp (format, "qcow2") == 0)
                  && n >= 4 && be32_get (head) == QK_QCOW2_MAGIC;
  if (format && strcmp (format, "qcow2") == 0 && !img->is_qcow2) {
    set_error (EMEDIUMTYPE, "%s: not a qcow2 image", name);
    goto fail;
  }
  if (!img->is_qcow2)
    img->rd_size = qk_image_virtual_size (img);
  else if (open_qcow2 (img, cc, head, (size_t) n) < 0) {
    qk_internal_prefix_error ("%s", name);
    goto fail;
  }
  free (head);
  return img;

 fail:
  free (head);
  qk_image_close (img);
  return NULL;
}

static struct qk_image *
open_top (struct qk_source *src, const char *name,
          const struct qk_open_options *opts)
{
  struct chain_ctx cc = { .opts = opts };

  cc.max_depth = opts && opts->max_chain_depth ? opts->max_chain_depth
                                               : QK_DEFAULT_CHAIN_DEPTH;
  if (cc.max_depth > QK_DEFAULT_CHAIN_DEPTH * 4)
    cc.max_depth = QK_DEFAULT_CHAIN_DEPTH * 4;
  return open_source (src, name, NULL, &cc);
}

QK_EXPORT struct qk_image *
qk_image_open (const char *path, const struct qk_open_options *opts)
{
  struct qk_source *s;

  if (path == NULL) {
    set_error (EINVAL, "path is NULL");
    return NULL;
  }
  s = (opts && opts->open_fn) ? opts->open_fn (opts->open_opaque, path)
                              : qk_source_file (path);
  if (s == NULL)
    return NULL;
  return open_top (s, path, opts);
}

struct qk_image *
qk_image_open_src (struct qk_source *src, const char *name,
                   const struct qk_open_options *opts, bool keep_src)
{
  struct chain_ctx cc = { .opts = opts, .keep = keep_src ? src : NULL };

  cc.max_depth = opts && opts->max_chain_depth ? opts->max_chain_depth
                                               : QK_DEFAULT_CHAIN_DEPTH;
  if (cc.max_depth > QK_DEFAULT_CHAIN_DEPTH * 4)
    cc.max_depth = QK_DEFAULT_CHAIN_DEPTH * 4;
  return open_source (src, name, NULL, &cc);
}

QK_EXPORT struct qk_image *
qk_image_open_memory (const void *buf, size_t len, const char *name,
                      const struct qk_open_options *opts)
{
  struct qk_source *s = qk_source_memory (buf, len, name);

  if (s == NULL)
    return NULL;
  return open_top (s, name ? name : "<memory>", opts);
}

QK_EXPORT void
qk_image_close (struct qk_image *img)
{
  if (img == NULL)
    return;
  qk_image_close (img->backing);
  if (img->data != img->src)
    qk_source_close (img->data);
  if (!img->keep_src)
    qk_source_close (img->src);
  /* (free of NULL is not free under ASan: its interceptor takes a stack
   * trace first, and an image holds 192 name slots and 32 L2 slots) */
  if (img->any_feature_name)
    for (int t = 0; t < 3; t++)
      for (int b = 0; b < 64; b++)
        free (img->feature_names[t][b]);
  for (size_t i = 0; i < img->n_snaps; i++)
    qk_snapshot_raw_free (&img->snaps[i]);
  for (size_t i = 0; i < img->n_bitmaps; i++)
    qk_bitmap_raw_free (&img->bitmaps[i]);
  for (int i = 0; i < QK_L2_CACHE_SLOTS; i++)
    if (img->l2c[i].buf)
      free (img->l2c[i].buf);
  qk_strvec_free (&img->warnings);
  free (img->snaps);
  free (img->bitmaps);
  free (img->ext);
  free (img->backing_format_ext);
  free (img->data_file_name);
  free (img->backing_name);
  free (img->backing_path);
  free (img->backing_format);
  free (img->l1);
  free (img->snap_l1);
  free (img->unreadable);
  free (img->cluster0);
  free (img->cbuf);
  free (img->cin);
  free (img->reftable);
  free (img->rb_buf);
  free (img->filename);
  free (img);
}

/* ---- accessors ---- */

QK_EXPORT const char *
qk_image_filename (const struct qk_image *img)
{
  return img->filename;
}

QK_EXPORT const char *
qk_image_format (const struct qk_image *img)
{
  return img->is_qcow2 ? "qcow2" : "raw";
}

QK_EXPORT const struct qk_header *
qk_image_header (const struct qk_image *img)
{
  return img->is_qcow2 ? &img->hdr : NULL;
}

QK_EXPORT uint64_t
qk_image_virtual_size (const struct qk_image *img)
{
  /* QEMU sizes a raw image in whole 512-byte sectors: a file of 3100000
   * bytes is a disk of 3100160, the tail reading as zeros. */
  return img->is_qcow2 ? img->hdr.size
                       : DIV_ROUND_UP (img->src->size, 512) * 512;
}

QK_EXPORT int64_t
qk_image_actual_size (const struct qk_image *img)
{
  return img->src->allocated;
}

QK_EXPORT uint64_t
qk_image_file_size (const struct qk_image *img)
{
  return img->src->size;
}

QK_EXPORT const char *
qk_image_feature_name (const struct qk_image *img, int type, unsigned bit)
{
  if (type < 0 || type > 2 || bit > 63)
    return NULL;
  if (img->feature_names[type][bit])
    return img->feature_names[type][bit];
  return qk_feature_known_name (type, bit);
}

QK_EXPORT size_t
qk_image_extension_count (const struct qk_image *img)
{
  return img->n_ext;
}

QK_EXPORT const struct qk_extension *
qk_image_extension (const struct qk_image *img, size_t i)
{
  return i < img->n_ext ? &img->ext[i] : NULL;
}

QK_EXPORT const char *
qk_image_backing_name (const struct qk_image *img)
{
  return img->backing_name;
}

QK_EXPORT const char *
qk_image_backing_path (const struct qk_image *img)
{
  return img->backing_path;
}

QK_EXPORT const char *
qk_image_backing_format (const struct qk_image *img)
{
  return img->backing_format;
}

QK_EXPORT struct qk_image *
qk_image_backing (const struct qk_image *img)
{
  return img->backing;
}

QK_EXPORT const struct qk_luks *
qk_image_luks (const struct qk_image *img)
{
  return img->has_luks ? &img->luks : NULL;
}

QK_EXPORT const char *
qk_image_data_file_name (const struct qk_image *img)
{
  return img->data_file_name;
}

QK_EXPORT size_t
qk_image_warning_count (const struct qk_image *img)
{
  return img->warnings.n;
}

QK_EXPORT const char *
qk_image_warning (const struct qk_image *img, size_t i)
{
  return i < img->warnings.n ? img->warnings.v[i] : NULL;
}

QK_EXPORT const char *
qk_image_unreadable_reason (const struct qk_image *img)
{
  return img->unreadable;
}

QK_EXPORT size_t
qk_image_snapshot_count (const struct qk_image *img)
{
  return img->n_snaps;
}

QK_EXPORT const struct qk_snapshot *
qk_image_snapshot (const struct qk_image *img, size_t i)
{
  return i < img->n_snaps ? &img->snaps[i].s : NULL;
}

QK_EXPORT bool
qk_image_snapshots_ok (const struct qk_image *img)
{
  return img->snaps_ok;
}

QK_EXPORT size_t
qk_image_bitmap_count (const struct qk_image *img)
{
  return img->n_bitmaps;
}

QK_EXPORT const struct qk_bitmap *
qk_image_bitmap (const struct qk_image *img, size_t i)
{
  return i < img->n_bitmaps ? &img->bitmaps[i].b : NULL;
}
