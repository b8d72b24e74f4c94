/* lib/format/hdrcluster.c: the header cluster as QEMU's
 * qcow2_update_header lays it out, from a description (struct
 * qk_header_spec). Every writer that changes the header's shape (the
 * builder, repair dropping the bitmaps extension, amend changing the
 * version) formats the whole cluster here, so that there is one layout:
 *   the fixed header (72 bytes for version 2; header_length for version
 *   3, with the unknown fields past 112 copied after the known ones),
 *   then the extensions, each padded to 8: backing format, external data
 *   file, full disk encryption header pointer, feature name table
 *   (version 3 only), bitmaps, the other (unknown) extensions in the
 *   order given, the end marker; then the backing file name, raw.
 * Pure: nothing is read or allocated. */
#include <config.h>

#include <string.h>

#include "format/format.h"

const struct qk_feature_name qk_qemu_feature_table[QK_QEMU_FEATURES] = {
  { QK_FEATURE_INCOMPAT, 0, "dirty bit" },
  { QK_FEATURE_INCOMPAT, 1, "corrupt bit" },
  { QK_FEATURE_INCOMPAT, 2, "external data file" },
  { QK_FEATURE_INCOMPAT, 3, "compression type" },
  { QK_FEATURE_INCOMPAT, 4, "extended L2 entries" },
  { QK_FEATURE_COMPAT, 0, "lazy refcounts" },
  { QK_FEATURE_AUTOCLEAR, 0, "bitmaps" },
  { QK_FEATURE_AUTOCLEAR, 1, "raw external data" },
};

static int
too_big (size_t cs)
{
  set_error (ENOSPC, "the header, its extensions and the backing file name "
             "do not fit in one %zu-byte cluster", cs);
  return -1;
}

int
qk_header_cluster_format (const struct qk_header_spec *s, uint8_t *buf,
                          size_t cs, size_t *used)
{
  struct qk_header h = s->h;
  size_t pos;
  ssize_t n;

  if (h.version == 2)
    h.header_length = QK_HEADER_V2_LEN;
  else if (h.header_length < QK_HEADER_V3_MIN
           || (h.header_length > 112 && s->unknown_header == NULL)) {
    set_error (EINVAL, "header length %u", h.header_length);
    return -1;
  }
  if (h.header_length > cs)
    return too_big (cs);
  memset (buf, 0, cs);
  h.backing_file_offset = 0;
  h.backing_file_size = 0;
  if (qk_header_format (&h, buf, cs) < 0)
    return -1;
  if (h.version == 3 && h.header_length > 112)
    memcpy (buf + 112, s->unknown_header, h.header_length - 112);
  pos = h.header_length;

#define EXT(magic, data, len) \
  do { \
    if ((n = qk_ext_format ((magic), (data), (len), buf + pos, \
                            cs - pos)) < 0) \
      return too_big (cs); \
    pos += (size_t) n; \
  } while (0)

  if (s->backing_format)
    EXT (QK_EXT_BACKING_FORMAT, s->backing_format,
         (uint32_t) strlen (s->backing_format));
  if (s->data_file)
    EXT (QK_EXT_DATA_FILE, s->data_file, (uint32_t) strlen (s->data_file));
  if (s->crypto) {
    uint8_t p[16];
    if (qk_crypto_ext_format (s->crypto, p, sizeof p) < 0)
      return -1;
    EXT (QK_EXT_CRYPTO, p, sizeof p);
  }
  if (h.version == 3 && s->n_fnames) {
    size_t total = s->n_fnames * QK_FEATURE_NAME_ENTRY;
    if (total > UINT32_MAX || pos + 8 + total > cs)
      return too_big (cs);
    be32_put (buf + pos, QK_EXT_FEATURE_TABLE);
    be32_put (buf + pos + 4, (uint32_t) total);
    for (size_t i = 0; i < s->n_fnames; i++)
      if (qk_feature_name_format (&s->fnames[i],
                                  buf + pos + 8 + i * QK_FEATURE_NAME_ENTRY,
                                  QK_FEATURE_NAME_ENTRY) < 0)
        return -1;
    pos += 8 + total;      /* 48-byte entries keep it a multiple of 8 */
  }
  if (s->bitmaps) {
    uint8_t p[24];
    if (qk_bitmaps_ext_format (s->bitmaps, p, sizeof p) < 0)
      return -1;
    EXT (QK_EXT_BITMAPS, p, sizeof p);
  }
  for (size_t i = 0; i < s->n_exts; i++)
    EXT (s->exts[i].magic, s->exts[i].data, s->exts[i].len);
  if ((n = qk_ext_end_format (buf + pos, cs - pos)) < 0)
    return too_big (cs);
  pos += (size_t) n;
#undef EXT

  if (s->backing && s->backing_len) {
    if (s->backing_len > cs - pos)
      return too_big (cs);
    memcpy (buf + pos, s->backing, s->backing_len);
    be64_put (buf + 8, pos);
    be32_put (buf + 16, (uint32_t) s->backing_len);
    pos += s->backing_len;
  }
  if (used)
    *used = pos;
  return 0;
}
