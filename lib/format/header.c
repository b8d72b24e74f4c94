/* qcow2 header and header extensions. */
#include <config.h>

#include <string.h>

#include "format/format.h"

static const char *const incompat_names[] = {
  "dirty bit", "corrupt bit", "external data file", "compression type",
  "extended L2 entries",
};
static const char *const compat_names[] = { "lazy refcounts" };
static const char *const autoclear_names[] = { "bitmaps", "raw external data" };

const char *
qk_feature_known_name (int type, unsigned bit)
{
  switch (type) {
  case QK_FEATURE_INCOMPAT:
    return bit < 5 ? incompat_names[bit] : NULL;
  case QK_FEATURE_COMPAT:
    return bit < 1 ? compat_names[bit] : NULL;
  case QK_FEATURE_AUTOCLEAR:
    return bit < 2 ? autoclear_names[bit] : NULL;
  }
  return NULL;
}

QK_EXPORT int
qk_header_parse (const uint8_t *buf, size_t len, struct qk_header *h)
{
  memset (h, 0, sizeof *h);
  if (len < QK_HEADER_V2_LEN) {
    set_error (EBADMSG, "file too short for a qcow2 header (%zu bytes)", len);
    return -1;
  }
  h->magic = be32_get (buf);
  if (h->magic != QK_QCOW2_MAGIC) {
    set_error (EBADMSG, "not a qcow2 image (bad magic 0x%08x)", h->magic);
    return -1;
  }
  h->version = be32_get (buf + 4);
  if (h->version != 2 && h->version != 3) {
    set_error (EBADMSG, "unsupported qcow2 version %u", h->version);
    return -1;
  }
  h->backing_file_offset = be64_get (buf + 8);
  h->backing_file_size = be32_get (buf + 16);
  h->cluster_bits = be32_get (buf + 20);
  h->size = be64_get (buf + 24);
  h->crypt_method = be32_get (buf + 32);
  h->l1_size = be32_get (buf + 36);
  h->l1_table_offset = be64_get (buf + 40);
  h->refcount_table_offset = be64_get (buf + 48);
  h->refcount_table_clusters = be32_get (buf + 56);
  h->nb_snapshots = be32_get (buf + 60);
  h->snapshots_offset = be64_get (buf + 64);

  if (h->cluster_bits < QK_MIN_CLUSTER_BITS
      || h->cluster_bits > QK_MAX_CLUSTER_BITS) {
    set_error (EBADMSG, "cluster_bits %u out of range (%d to %d)",
               h->cluster_bits, QK_MIN_CLUSTER_BITS, QK_MAX_CLUSTER_BITS);
    return -1;
  }
  h->cluster_size = 1ULL << h->cluster_bits;

  if (h->version == 2) {
    h->refcount_order = 4;
    h->header_length = QK_HEADER_V2_LEN;
  }
  else {
    if (len < QK_HEADER_V3_MIN) {
      set_error (EBADMSG, "file too short for a version 3 header");
      return -1;
    }
    h->incompatible_features = be64_get (buf + 72);
    h->compatible_features = be64_get (buf + 80);
    h->autoclear_features = be64_get (buf + 88);
    h->refcount_order = be32_get (buf + 96);
    h->header_length = be32_get (buf + 100);
    if (h->header_length < QK_HEADER_V3_MIN) {
      set_error (EBADMSG, "header_length %u is smaller than %d",
                 h->header_length, QK_HEADER_V3_MIN);
      return -1;
    }
    if (h->header_length > h->cluster_size) {
      set_error (EBADMSG, "header_length %u is larger than the cluster size",
                 h->header_length);
      return -1;
    }
    if (h->header_length > QK_HEADER_V3_MIN) {
      if (len < QK_HEADER_KNOWN_LEN) {
        set_error (EBADMSG, "file too short for its header_length");
        return -1;
      }
      h->compression_type = buf[104];
    }
    /* Bytes 105..111 pad compression_type; past 112 fields are unknown. */
    if (h->header_length > 112)
      h->unknown_header_bytes = h->header_length - 112;
  }
  /* Derived values: a refcount_order above 6 is kept as read (the checker
   * reports it); refcount_bits is then 0. */
  h->refcount_bits = h->refcount_order <= 6 ? 1U << h->refcount_order : 0;
  if (h->incompatible_features & QK_INCOMPAT_EXTL2) {
    h->l2_entry_size = 16;
    h->subclusters = 32;
  }
  else {
    h->l2_entry_size = 8;
    h->subclusters = 1;
  }
  h->l2_entries = h->cluster_size / h->l2_entry_size;
  return 0;
}

int
qk_header_format (const struct qk_header *h, uint8_t *buf, size_t len)
{
  size_t need = h->version == 2 ? QK_HEADER_V2_LEN : h->header_length;

  if (len < need || (h->version == 3 && need < QK_HEADER_V3_MIN)) {
    set_error (EINVAL, "buffer too small for header (%zu < %zu)", len, need);
    return -1;
  }
  memset (buf, 0, need);
  be32_put (buf, QK_QCOW2_MAGIC);
  be32_put (buf + 4, h->version);
  be64_put (buf + 8, h->backing_file_offset);
  be32_put (buf + 16, h->backing_file_size);
  be32_put (buf + 20, h->cluster_bits);
  be64_put (buf + 24, h->size);
  be32_put (buf + 32, h->crypt_method);
  be32_put (buf + 36, h->l1_size);
  be64_put (buf + 40, h->l1_table_offset);
  be64_put (buf + 48, h->refcount_table_offset);
  be32_put (buf + 56, h->refcount_table_clusters);
  be32_put (buf + 60, h->nb_snapshots);
  be64_put (buf + 64, h->snapshots_offset);
  if (h->version >= 3) {
    be64_put (buf + 72, h->incompatible_features);
    be64_put (buf + 80, h->compatible_features);
    be64_put (buf + 88, h->autoclear_features);
    be32_put (buf + 96, h->refcount_order);
    be32_put (buf + 100, h->header_length);
    if (h->header_length > QK_HEADER_V3_MIN)
      buf[104] = h->compression_type;
  }
  return 0;
}

const char *
qk_extension_name (uint32_t magic)
{
  switch (magic) {
  case QK_EXT_BACKING_FORMAT: return "backing format";
  case QK_EXT_FEATURE_TABLE: return "feature name table";
  case QK_EXT_BITMAPS: return "bitmaps";
  case QK_EXT_CRYPTO: return "full disk encryption header pointer";
  case QK_EXT_DATA_FILE: return "external data file name";
  default: return "unknown";
  }
}

int
qk_extensions_walk (const uint8_t *buf, size_t start, size_t end,
                    qk_ext_fn fn, void *opaque)
{
  size_t pos = start;

  while (pos < end) {
    struct qk_ext_raw e;
    uint64_t padded;

    if (end - pos < 8) {
      set_error (EBADMSG, "header extension at 0x%zx: truncated extension "
                 "header", pos);
      return -1;
    }
    e.magic = be32_get (buf + pos);
    e.length = be32_get (buf + pos + 4);
    e.offset = pos;
    /* qcow2_read_extensions checks the length before it looks at the
     * type, so an end marker whose length runs past the area makes QEMU
     * refuse the image ("Header extension too large") just as any other
     * extension would. Like QEMU, only the payload must fit: the padding
     * of the last extension may run past the end of the area (e.g. an
     * unaligned backing_file_offset). */
    if (e.length > end - pos - 8) {
      if (e.magic == QK_EXT_END)
        set_error (EBADMSG, "header extensions: the end marker at 0x%zx has "
                   "length %u, past the end of the extension area (%zu "
                   "bytes left; QEMU: Header extension too large)",
                   pos, e.length, end - pos - 8);
      else
        set_error (EBADMSG, "header extension 0x%08x at 0x%zx: length %u "
                   "exceeds the header area (%zu bytes left)",
                   e.magic, pos, e.length, end - pos - 8);
      return -1;
    }
    if (e.magic == QK_EXT_END)
      return 0;
    if (fn (opaque, &e, buf + pos + 8) < 0)
      return -1;
    padded = ((uint64_t) e.length + 7) & ~7ULL;
    if (padded >= end - pos - 8)
      return 0;
    pos += 8 + padded;
  }
  return 0;
}
