/* Writers of qcow2 on-disk structures: the exact inverses of the parsers
 * of format/ (header extensions, feature names, table entries, refcount
 * blocks of every width, snapshot extra data, bitmap directory entries).
 * Pure functions over caller buffers, with bounds checks. */
#include <config.h>

#include <string.h>

#include "format/format.h"

#define BME_FIXED 24

static int
no_room (const char *what, size_t need, size_t len)
{
  set_error (ENOSPC, "%s needs %zu bytes, the buffer has %zu", what, need,
             len);
  return -1;
}

/* ---- header extensions ---- */

size_t
qk_ext_size (uint32_t payload_len)
{
  return 8 + (((size_t) payload_len + 7) & ~(size_t) 7);
}

ssize_t
qk_ext_format (uint32_t magic, const void *payload, uint32_t payload_len,
               uint8_t *buf, size_t len)
{
  size_t need = qk_ext_size (payload_len);

  if (magic == QK_EXT_END && payload_len) {
    set_error (EINVAL, "the end marker has no payload");
    return -1;
  }
  if (payload_len && payload == NULL) {
    set_error (EINVAL, "no payload");
    return -1;
  }
  if (len < need)
    return no_room ("header extension", need, len);
  memset (buf, 0, need);
  be32_put (buf, magic);
  be32_put (buf + 4, payload_len);
  if (payload_len)
    memcpy (buf + 8, payload, payload_len);
  return (ssize_t) need;
}

ssize_t
qk_ext_end_format (uint8_t *buf, size_t len)
{
  return qk_ext_format (QK_EXT_END, NULL, 0, buf, len);
}

int
qk_feature_name_format (const struct qk_feature_name *f, uint8_t *buf,
                        size_t len)
{
  size_t n = strnlen (f->name, sizeof f->name);

  if (n > QK_FEATURE_NAME_LEN || f->type > QK_FEATURE_AUTOCLEAR
      || f->bit > 63) {
    set_error (EINVAL, "feature name entry type %u bit %u is invalid",
               f->type, f->bit);
    return -1;
  }
  if (len < QK_FEATURE_NAME_ENTRY)
    return no_room ("feature name entry", QK_FEATURE_NAME_ENTRY, len);
  memset (buf, 0, QK_FEATURE_NAME_ENTRY);
  buf[0] = f->type;
  buf[1] = f->bit;
  memcpy (buf + 2, f->name, n);
  return QK_FEATURE_NAME_ENTRY;
}

int
qk_feature_name_parse (const uint8_t *buf, size_t len,
                       struct qk_feature_name *out)
{
  size_t n;

  memset (out, 0, sizeof *out);
  if (len < QK_FEATURE_NAME_ENTRY) {
    set_error (EBADMSG, "feature name entry truncated (%zu bytes)", len);
    return -1;
  }
  out->type = buf[0];
  out->bit = buf[1];
  n = strnlen ((const char *) buf + 2, QK_FEATURE_NAME_LEN);
  memcpy (out->name, buf + 2, n);
  out->name[n] = '\0';
  return 0;
}

int
qk_bitmaps_ext_format (const struct qk_bitmaps_ext *e, uint8_t *buf,
                       size_t len)
{
  if (len < 24)
    return no_room ("bitmaps extension", 24, len);
  be32_put (buf, e->nb_bitmaps);
  be32_put (buf + 4, e->reserved);
  be64_put (buf + 8, e->directory_size);
  be64_put (buf + 16, e->directory_offset);
  return 24;
}

int
qk_crypto_ext_format (const struct qk_crypto_ext *e, uint8_t *buf, size_t len)
{
  if (len < 16)
    return no_room ("encryption header pointer", 16, len);
  be64_put (buf, e->offset);
  be64_put (buf + 8, e->length);
  return 16;
}

int
qk_crypto_ext_parse (const uint8_t *buf, size_t len, struct qk_crypto_ext *out)
{
  if (len < 16) {
    set_error (EBADMSG, "encryption header pointer too short (%zu bytes, "
               "need 16)", len);
    return -1;
  }
  out->offset = be64_get (buf);
  out->length = be64_get (buf + 8);
  return 0;
}

/* ---- table entries ---- */

static int
bad_offset (const char *what, uint64_t off)
{
  set_error (EINVAL, "%s offset 0x%" PRIx64 " cannot be stored", what, off);
  return -1;
}

int
qk_l1_entry_make (uint64_t l2_offset, bool copied, uint64_t *entry)
{
  if (l2_offset & ~QK_L1E_OFFSET_MASK)
    return bad_offset ("L2 table", l2_offset);
  *entry = l2_offset | (copied ? QK_OFLAG_COPIED : 0);
  return 0;
}

int
qk_l2_entry_make (uint64_t host_offset, bool copied, bool zero,
                  uint64_t *entry)
{
  if (host_offset & ~QK_L2E_OFFSET_MASK)
    return bad_offset ("data cluster", host_offset);
  *entry = host_offset | (copied ? QK_OFLAG_COPIED : 0)
           | (zero ? QK_OFLAG_ZERO : 0);
  return 0;
}

int
qk_l2_compressed_make (uint64_t host_offset, uint64_t nbytes,
                       unsigned cluster_bits, uint64_t *entry)
{
  unsigned x;
  uint64_t last, sectors;

  if (cluster_bits < QK_MIN_CLUSTER_BITS || cluster_bits > QK_MAX_CLUSTER_BITS
      || nbytes == 0) {
    set_error (EINVAL, "compressed descriptor: cluster_bits %u, %" PRIu64
               " bytes", cluster_bits, nbytes);
    return -1;
  }
  x = 62 - (cluster_bits - 8);
  if (host_offset >> x)
    return bad_offset ("compressed data", host_offset);
  if (ADD_OVERFLOW (host_offset, nbytes - 1, &last)) {
    set_error (EINVAL, "compressed data overflows");
    return -1;
  }
  /* Additional sectors after the first (QEMU: nb_csectors - 1). */
  sectors = (last >> 9) - (host_offset >> 9);
  if (sectors >> (62 - x)) {
    set_error (EINVAL, "compressed data of %" PRIu64 " bytes at 0x%" PRIx64
               " spans too many sectors for %u-bit clusters", nbytes,
               host_offset, cluster_bits);
    return -1;
  }
  *entry = QK_OFLAG_COMPRESSED | (sectors << x) | host_offset;
  return 0;
}

int
qk_reftable_entry_make (uint64_t refblock_offset, uint64_t *entry)
{
  if (refblock_offset & ~QK_REFT_OFFSET_MASK)
    return bad_offset ("refcount block", refblock_offset);
  *entry = refblock_offset;
  return 0;
}

int
qk_bitmap_table_entry_make (uint64_t data_offset, bool all_ones,
                            uint64_t *entry)
{
  if ((data_offset & ~QK_BME_TABLE_OFFSET_MASK) || (all_ones && data_offset))
    return bad_offset ("bitmap data", data_offset);
  *entry = data_offset | (all_ones ? 1 : 0);
  return 0;
}

/* The bytes entries 0..i take (SIZE_MAX when that does not fit), for
 * messages: i + 1 wraps at i = 2^64-1. */
static size_t
entries_bytes (uint64_t i, size_t es)
{
  return i >= SIZE_MAX / es ? SIZE_MAX : (size_t) (i + 1) * es;
}

int
qk_table_put (uint8_t *buf, size_t len, uint64_t i, uint64_t v)
{
  if (i >= len / 8)
    return no_room ("table entry", entries_bytes (i, 8), len);
  be64_put (buf + 8 * i, v);
  return 0;
}

int
qk_l2_put (uint8_t *buf, size_t len, bool extl2, uint64_t i, uint64_t entry,
           uint64_t bitmap)
{
  size_t es = extl2 ? 16 : 8;

  if (i >= len / es)
    return no_room ("L2 entry", entries_bytes (i, es), len);
  if (!extl2 && bitmap) {
    set_error (EINVAL, "a standard L2 entry has no subcluster bitmap");
    return -1;
  }
  be64_put (buf + es * i, entry);
  if (extl2)
    be64_put (buf + es * i + 8, bitmap);
  return 0;
}

uint64_t
qk_l2_bitmap_make (uint32_t alloc, uint32_t zero)
{
  return ((uint64_t) zero << 32) | alloc;
}

/* ---- refcount blocks ---- */

int
qk_refblock_format (const uint64_t *refcounts, size_t n, unsigned order,
                    uint8_t *buf, size_t len)
{
  uint64_t max, entries;

  if (order > 6) {
    set_error (EINVAL, "refcount_order %u", order);
    return -1;
  }
  max = order == 6 ? UINT64_MAX : (1ULL << (1U << order)) - 1;
  entries = (uint64_t) len * 8 >> order;
  if (n > entries)
    return no_room ("refcount block",
                    (size_t) (((uint64_t) n << order) + 7) / 8, len);
  memset (buf, 0, len);
  for (size_t i = 0; i < n; i++) {
    if (refcounts[i] > max) {
      set_error (EINVAL, "refcount %" PRIu64 " (entry %zu) does not fit in "
                 "%u bits", refcounts[i], i, 1U << order);
      return -1;
    }
    qk_refblock_set (buf, order, i, refcounts[i]);
  }
  return 0;
}

/* ---- snapshot extra data ---- */

int
qk_snapshot_extra_format (const struct qk_snapshot *s, uint8_t *buf,
                          size_t len)
{
  uint32_t e = s->extra_data_size;

  if (len < e)
    return no_room ("snapshot extra data", e, len);
  memset (buf, 0, e);
  if (e >= 8)
    be64_put (buf, s->vm_state_size);
  if (e >= 16)
    be64_put (buf + 8, s->disk_size);
  if (e >= 24)
    be64_put (buf + 16, s->icount);
  return (int) e;
}

/* ---- bitmap directory entries ---- */

size_t
qk_bitmap_entry_size (uint32_t extra, size_t namelen)
{
  uint64_t n = (uint64_t) BME_FIXED + extra + namelen;
  n = (n + 7) & ~7ULL;
  return n > SIZE_MAX ? 0 : (size_t) n;
}

ssize_t
qk_bitmap_format (const struct qk_bitmap_raw *r, const uint8_t *extra,
                  uint8_t *buf, size_t len)
{
  const struct qk_bitmap *b = &r->b;
  size_t namelen = strlen (r->name);
  size_t need = qk_bitmap_entry_size (b->extra_data_size, namelen);

  if (namelen > UINT16_MAX || need == 0) {
    set_error (EINVAL, "bitmap name of %zu bytes", namelen);
    return -1;
  }
  if (len < need)
    return no_room ("bitmap directory entry", need, len);
  memset (buf, 0, need);
  be64_put (buf, b->table_offset);
  be32_put (buf + 8, b->table_size);
  be32_put (buf + 12, b->flags);
  buf[16] = b->type;
  buf[17] = b->granularity_bits;
  be16_put (buf + 18, (uint16_t) namelen);
  be32_put (buf + 20, b->extra_data_size);
  if (extra && b->extra_data_size)
    memcpy (buf + BME_FIXED, extra, b->extra_data_size);
  memcpy (buf + BME_FIXED + b->extra_data_size, r->name, namelen);
  return (ssize_t) need;
}
