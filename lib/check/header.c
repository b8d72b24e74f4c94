/* Pass 0 of the check: the header and its extensions (feature bits,
 * table offsets and sizes QEMU validates on open, the extension area and
 * the backing file name). */
#include <config.h>

#include "check/ck.h"

/* ---- phase 0: header and extensions ---- */

static void
feature_bits (struct ck *ck, int type, uint64_t bits, int pr)
{
  for (unsigned b = 0; b < 64; b++)
    if (bits & (1ULL << b)) {
      const char *n = ck->img->feature_names[type][b];
      char what[128];
      snprintf (what, sizeof what, "%u%s%s%s", b, n ? " (" : "",
                n ? n : "", n ? ")" : "");
      report (ck, pr, 1, LOC (.index = b), "unknown %s feature bit %s",
              type == 0 ? "incompatible" : type == 1 ? "compatible"
              : "autoclear", what);
    }
}

int
phase_header (struct ck *ck)
{
  const struct qk_header *h = ck->h;
  struct qk_image *img = ck->img;
  uint64_t per_l1 = ck->cs * h->l2_entries;
  uint64_t need_l1 = h->size / per_l1 + (h->size % per_l1 != 0);
  size_t ext_end = ck->cs;

  if (h->incompatible_features & QK_INCOMPAT_DIRTY)
    report (ck, PR_HDR_DIRTY, 1, NOLOC,
            "the dirty bit is set: the image was not closed cleanly and its "
            "refcounts may be stale (leaks below are expected); QEMU rebuilds "
            "them on its next read-write open");
  if (h->incompatible_features & QK_INCOMPAT_CORRUPT)
    report (ck, PR_HDR_CORRUPT, 1, NOLOC,
            "the corrupt bit is set: QEMU refuses to open the image read-write "
            "until it is repaired");
  feature_bits (ck, 0, h->incompatible_features & ~QK_INCOMPAT_KNOWN,
                PR_HDR_UNKNOWN_INCOMPAT);
  feature_bits (ck, 1, h->compatible_features & ~QK_COMPAT_KNOWN,
                PR_HDR_UNKNOWN_COMPAT);
  feature_bits (ck, 2, h->autoclear_features & ~QK_AUTOCLEAR_KNOWN,
                PR_HDR_UNKNOWN_AUTOCLEAR);
  if (h->header_length % 8)
    report (ck, PR_HDR_LENGTH, 1, LOC (.found = h->header_length),
            "header_length %u is not a multiple of 8", h->header_length);
  if (h->refcount_order > 6)
    report (ck, PR_HDR_REFCOUNT_ORDER, 1, LOC (.found = h->refcount_order),
            "refcount_order %u is above 6: refcounts cannot be checked",
            h->refcount_order);
  if (h->compression_type > 1
      || ((h->incompatible_features & QK_INCOMPAT_COMPRESSION) != 0)
         != (h->compression_type != 0))
    report (ck, PR_HDR_COMPRESSION, 1, LOC (.found = h->compression_type),
            "compression type %u %s the compression type incompatible bit",
            h->compression_type,
            h->incompatible_features & QK_INCOMPAT_COMPRESSION ? "with"
                                                               : "without");
  /* qcow2_validate_table: the offset is checked even for an empty table */
  if ((uint64_t) h->l1_size * 8 > (32ULL << 20)) {
    ck->missing = "the active L1 table";
    report (ck, PR_HDR_L1_INVALID, 1, LOC (.found = h->l1_size),
            "the active L1 table has %u entries, more than QEMU's 32 MiB",
            h->l1_size);
  }
  else if (!IS_ALIGNED (h->l1_table_offset, ck->cs)
           || h->l1_table_offset > INT64_MAX - (uint64_t) h->l1_size * 8) {
    ck->missing = "the active L1 table";
    report (ck, PR_HDR_L1_INVALID, 1,
            LOC (.host_offset = h->l1_table_offset),
            "the active L1 table offset 0x%" PRIx64 " is not cluster aligned "
            "or too large", h->l1_table_offset);
  }
  else if (h->l1_size < need_l1) {
    /* QEMU refuses the image; the entries past l1_size are unknown */
    ck->missing = "the active L1 table";
    report (ck, PR_HDR_L1_INVALID, 1,
            LOC (.found = h->l1_size, .expected = need_l1),
            "the active L1 table has %u entries but the virtual size needs %"
            PRIu64, h->l1_size, need_l1);
  }
  if (h->refcount_table_clusters == 0
      && IS_ALIGNED (h->refcount_table_offset, ck->cs))
    /* qemu-img check (BDRV_O_CHECK) accepts it and counts on */
    report (ck, PR_REFTABLE_EMPTY, 1, LOC (.host_offset = h->refcount_table_offset),
            "the refcount table is empty (refcount_table_clusters is 0): "
            "every refcount reads as 0");
  else if ((uint64_t) h->refcount_table_clusters * ck->cs > (8ULL << 20)
           || !IS_ALIGNED (h->refcount_table_offset, ck->cs)
           || h->refcount_table_offset
              > INT64_MAX - (uint64_t) h->refcount_table_clusters * ck->cs
           || h->refcount_table_clusters == 0) {
    ck->reftable_invalid = true;
    report (ck, PR_HDR_REFTABLE_INVALID, 1,
            LOC (.host_offset = h->refcount_table_offset,
                 .found = h->refcount_table_clusters),
            "the refcount table (%u clusters at 0x%" PRIx64 ") is empty, "
            "misaligned or larger than 8 MiB", h->refcount_table_clusters,
            h->refcount_table_offset);
  }
  /* qcow2_do_open: the offset may be the end of cluster 0 (with an empty
   * name), the name at most 1023 bytes and within cluster 0 */
  if (h->backing_file_offset
      && (h->backing_file_offset > ck->cs
          || h->backing_file_size > MIN (1023, ck->cs - h->backing_file_offset)))
    report (ck, PR_HDR_BACKING_NAME, 1,
            LOC (.host_offset = h->backing_file_offset,
                 .length = h->backing_file_size),
            "the backing file name (%u bytes at 0x%" PRIx64 ") does not fit "
            "in the first cluster or is longer than 1023 bytes",
            h->backing_file_size, h->backing_file_offset);
  if (h->crypt_method > QK_CRYPT_LUKS)
    report (ck, PR_HDR_CRYPT_METHOD, 1, LOC (.found = h->crypt_method),
            "unknown encryption method %u", h->crypt_method);
  else if (h->crypt_method)
    report (ck, PR_HDR_ENCRYPTED, 1, NOLOC,
            "the image is encrypted (%s)",
            h->crypt_method == QK_CRYPT_LUKS ? "LUKS" : "legacy AES");
  if ((h->autoclear_features & QK_AUTOCLEAR_DATA_FILE_RAW)
      && !(h->incompatible_features & QK_INCOMPAT_DATA_FILE))
    report (ck, PR_HDR_FEATURE_DEPENDENCY, 1, NOLOC,
            "raw external data bit without the external data file bit");
  if ((h->autoclear_features & QK_AUTOCLEAR_DATA_FILE_RAW)
      && h->backing_file_offset)
    report (ck, PR_HDR_FEATURE_DEPENDENCY, 1, NOLOC,
            "raw external data with a backing file");
  if ((h->incompatible_features & QK_INCOMPAT_EXTL2) && ck->cb < 14)
    report (ck, PR_HDR_FEATURE_DEPENDENCY, 1, NOLOC,
            "extended L2 entries with %" PRIu64 "-byte clusters (at least "
            "16 KiB needed)", ck->cs);
  if (h->crypt_method == QK_CRYPT_LUKS && !img->has_crypto_ext)
    report (ck, PR_HDR_FEATURE_DEPENDENCY, 1, NOLOC,
            "LUKS encryption without the encryption header pointer");
  if (h->crypt_method != QK_CRYPT_LUKS && img->has_crypto_ext)
    report (ck, PR_HDR_FEATURE_DEPENDENCY, 1, NOLOC,
            "an encryption header pointer without LUKS encryption (QEMU "
            "refuses the image: CRYPTO header extension only expected with "
            "LUKS encryption method)");

  /* extensions */
  if (h->backing_file_offset && h->backing_file_offset <= ck->cs)
    ext_end = h->backing_file_offset;
  for (size_t i = 0; i < img->n_ext; i++) {
    const struct qk_extension *e = &img->ext[i];
    for (size_t k = 0; k < i; k++)
      if (img->ext[k].magic == e->magic) {
        report (ck, PR_EXT_DUPLICATE, 1, LOC (.host_offset = e->offset),
                "header extension 0x%08x (%s) at 0x%" PRIx64 " repeats the "
                "one at 0x%" PRIx64, e->magic, e->name, e->offset,
                img->ext[k].offset);
        break;
      }
    if (e->magic == QK_EXT_BACKING_FORMAT && e->length >= 16)
      report (ck, PR_EXT_BACKING_FORMAT_LONG, 1,
              LOC (.host_offset = e->offset, .found = e->length),
              "the backing format extension is %u bytes long", e->length);
    if (e->magic == QK_EXT_FEATURE_TABLE && e->length % 48)
      report (ck, PR_EXT_FEATURE_TABLE, 1,
              LOC (.host_offset = e->offset, .found = e->length),
              "the feature name table is %u bytes, not a multiple of 48",
              e->length);
  }
  /* qcow2_read_extensions' own walk over the raw headers: it checks an
   * extension's length before its magic, so even the end marker must fit
   * in the area (else "Header extension too large"). And the area ends
   * where the backing file name starts, so the image's walk never holds
   * an extension overlapping the name: say when one runs into it. */
  {
    uint64_t off = h->header_length;
    while (off < ext_end && off + 8 <= ck->cs) {
      uint32_t magic = be32_get (img->cluster0 + off);
      uint64_t len = be32_get (img->cluster0 + off + 4);
      uint64_t e_end = off + 8 + ((len + 7) & ~7ULL);
      if (magic == 0) {
        if (off + 8 > ext_end || len > ext_end - off - 8)
          report (ck, PR_EXT_OVERRUN, 1,
                  LOC (.host_offset = off, .found = len),
                  "the end marker of the header extensions at 0x%" PRIx64
                  " has length %" PRIu64 ", past the end of the extension "
                  "area at 0x%zx (QEMU: Header extension too large)", off,
                  len, ext_end);
        break;
      }
      if (h->backing_file_offset && e_end > h->backing_file_offset
          && off < h->backing_file_offset) {
        report (ck, PR_EXT_OVERLAPS_BACKING_NAME, 1,
                LOC (.host_offset = off, .length = e_end - off),
                "header extension 0x%08x at 0x%" PRIx64 " (%" PRIu64
                " bytes) runs into the backing file name at 0x%" PRIx64,
                magic, off, len, h->backing_file_offset);
        break;
      }
      if (e_end > ext_end)
        break;    /* the image's walk left a warning (below) */
      off = e_end;
    }
  }
  /* An extension walk that stopped early (the image says why). */
  if (img->ext_overrun)
    report (ck, PR_EXT_OVERRUN, 1, NOLOC, "%s (area ends at 0x%zx)",
            img->ext_overrun, ext_end);
  if (img->backing_name && img->backing_name[0]
      && img->backing_format_ext == NULL)
    report (ck, PR_EXT_BACKING_FORMAT_MISSING, 1, NOLOC,
            "backing file '%s' has no recorded format (QEMU must probe it)",
            img->backing_name);
  if ((h->incompatible_features & QK_INCOMPAT_DATA_FILE)
      != (img->data_file_name ? QK_INCOMPAT_DATA_FILE : 0))
    report (ck, PR_EXT_DATA_FILE_NAME, 1, NOLOC,
            img->data_file_name
            ? "an external data file name without the external data file bit"
            : "the external data file bit without a data file name");
  return 0;
}
