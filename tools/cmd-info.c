/* qcowkit info: a superset of `qemu-img info`. */
#include <config.h>

#include <string.h>

#include "tool.h"
#include "json.h"
#include "bytes.h"

static const char *
compat_str (const struct qk_header *h)
{
  return h->version == 2 ? "0.10" : "1.1";
}

static const char *
compression_str (const struct qk_header *h)
{
  switch (h->compression_type) {
  case 0: return "zlib";
  case 1: return "zstd";
  default: return "unknown";
  }
}

/* The backing format stored in the header (the backing format extension),
 * or NULL. qk_image_backing_format() also gives a probed one. */
static const char *
stored_backing_format (struct qk_image *img)
{
  for (size_t i = 0; i < qk_image_extension_count (img); i++) {
    const struct qk_extension *e = qk_image_extension (img, i);
    if (e->magic == QK_EXT_BACKING_FORMAT)
      return qk_image_backing_format (img);
  }
  return NULL;
}

static const char *
crypt_format (const struct qk_header *h)
{
  return h->crypt_method == QK_CRYPT_LUKS ? "luks"
         : h->crypt_method == QK_CRYPT_AES ? "aes" : "unknown";
}

/* ---- JSON ---- */

/* format-specific.data.encrypt, as qemu-img info (QCryptoBlockInfo): the
 * format, and for LUKS what QEMU decodes from the LUKS header. */
static void
json_encrypt (struct qk_json *j, struct qk_image *img)
{
  const struct qk_header *h = qk_image_header (img);
  const struct qk_luks *l = qk_image_luks (img);

  qk_json_object_begin (j, "encrypt");
  qk_json_string (j, "format", crypt_format (h));
  if (h->crypt_method == QK_CRYPT_LUKS && l) {
    if (l->cipher_alg)
      qk_json_string (j, "cipher-alg", l->cipher_alg);
    if (l->mode)
      qk_json_string (j, "cipher-mode", l->mode);
    if (l->ivgen_alg)
      qk_json_string (j, "ivgen-alg", l->ivgen_alg);
    if (l->ivgen_hash_alg)
      qk_json_string (j, "ivgen-hash-alg", l->ivgen_hash_alg);
    if (l->hash_alg)
      qk_json_string (j, "hash-alg", l->hash_alg);
    qk_json_uint (j, "payload-offset", (uint64_t) l->payload_offset_sector * 512);
    qk_json_uint (j, "master-key-iters", l->master_key_iterations);
    qk_json_string (j, "uuid", l->uuid);
    qk_json_array_begin (j, "slots");
    for (int i = 0; i < QK_LUKS_SLOTS; i++) {
      const struct qk_luks_slot *k = &l->slot[i];
      qk_json_object_begin (j, NULL);
      qk_json_bool (j, "active", k->active);
      if (k->active)
        qk_json_uint (j, "iters", k->iterations);
      qk_json_uint (j, "key-offset", (uint64_t) k->key_offset_sector * 512);
      if (k->active)
        qk_json_uint (j, "stripes", k->stripes);
      qk_json_object_end (j);
    }
    qk_json_array_end (j);
  }
  qk_json_object_end (j);
}

/* qcowkit.luks-header: where the LUKS header is and its fields as stored. */
static void
json_luks_header (struct qk_json *j, struct qk_image *img)
{
  const struct qk_header *h = qk_image_header (img);
  const struct qk_luks *l = qk_image_luks (img);

  if (h->crypt_method != QK_CRYPT_LUKS)
    return;
  qk_json_object_begin (j, "luks-header");
  for (size_t i = 0; i < qk_image_extension_count (img); i++) {
    const struct qk_extension *e = qk_image_extension (img, i);
    if (e->magic == QK_EXT_CRYPTO && e->length >= 16) {
      qk_json_uint (j, "offset", be64_get (e->data));
      qk_json_uint (j, "length", be64_get (e->data + 8));
      break;
    }
  }
  qk_json_bool (j, "readable", l != NULL);
  if (l) {
    qk_json_uint (j, "version", l->version);
    qk_json_string (j, "cipher-name", l->cipher_name);
    qk_json_string (j, "cipher-mode", l->cipher_mode);
    qk_json_string (j, "hash-spec", l->hash_spec);
    qk_json_uint (j, "key-bytes", l->key_bytes);
    qk_json_uint (j, "payload-offset", (uint64_t) l->payload_offset_sector * 512);
    qk_json_uint (j, "master-key-iters", l->master_key_iterations);
    qk_json_string (j, "uuid", l->uuid);
    qk_json_array_begin (j, "slots");
    for (int i = 0; i < QK_LUKS_SLOTS; i++) {
      const struct qk_luks_slot *k = &l->slot[i];
      qk_json_object_begin (j, NULL);
      qk_json_hex (j, "state", k->state);
      qk_json_bool (j, "active", k->active);
      qk_json_uint (j, "iters", k->iterations);
      qk_json_uint (j, "key-offset", (uint64_t) k->key_offset_sector * 512);
      qk_json_uint (j, "stripes", k->stripes);
      qk_json_object_end (j);
    }
    qk_json_array_end (j);
  }
  qk_json_object_end (j);
}

static void
json_features (struct qk_json *j, struct qk_image *img, const char *key,
               int type, uint64_t bits)
{
  qk_json_array_begin (j, key);
  for (unsigned b = 0; b < 64; b++)
    if (bits & (1ULL << b)) {
      const char *n = qk_image_feature_name (img, type, b);
      qk_json_object_begin (j, NULL);
      qk_json_uint (j, "bit", b);
      qk_json_string (j, "name", n ? n : "unknown");
      qk_json_bool (j, "known",
                    (type == QK_FEATURE_INCOMPAT && b < 5)
                    || (type == QK_FEATURE_COMPAT && b < 1)
                    || (type == QK_FEATURE_AUTOCLEAR && b < 2));
      qk_json_object_end (j);
    }
  qk_json_array_end (j);
}

static void
json_region (struct qk_json *j, const char *key, uint64_t off, uint64_t bytes,
             uint64_t entries)
{
  qk_json_object_begin (j, key);
  qk_json_uint (j, "offset", off);
  qk_json_uint (j, "length", bytes);
  qk_json_uint (j, "entries", entries);
  qk_json_object_end (j);
}

static void
json_qcowkit (struct qk_json *j, struct qk_image *img)
{
  const struct qk_header *h = qk_image_header (img);

  qk_json_object_begin (j, "qcowkit");
  if (h) {
    qk_json_object_begin (j, "header");
    qk_json_uint (j, "version", h->version);
    qk_json_uint (j, "header-length", h->header_length);
    qk_json_uint (j, "cluster-bits", h->cluster_bits);
    qk_json_uint (j, "crypt-method", h->crypt_method);
    qk_json_uint (j, "refcount-order", h->refcount_order);
    qk_json_uint (j, "compression-type", h->compression_type);
    qk_json_hex (j, "incompatible-features", h->incompatible_features);
    qk_json_hex (j, "compatible-features", h->compatible_features);
    qk_json_hex (j, "autoclear-features", h->autoclear_features);
    qk_json_uint (j, "backing-file-offset", h->backing_file_offset);
    qk_json_uint (j, "backing-file-size", h->backing_file_size);
    qk_json_uint (j, "nb-snapshots", h->nb_snapshots);
    qk_json_uint (j, "unknown-header-bytes", h->unknown_header_bytes);
    qk_json_object_end (j);

    qk_json_object_begin (j, "features");
    json_features (j, img, "incompatible", QK_FEATURE_INCOMPAT,
                   h->incompatible_features);
    json_features (j, img, "compatible", QK_FEATURE_COMPAT,
                   h->compatible_features);
    json_features (j, img, "autoclear", QK_FEATURE_AUTOCLEAR,
                   h->autoclear_features);
    qk_json_object_end (j);

    qk_json_array_begin (j, "header-extensions");
    for (size_t i = 0; i < qk_image_extension_count (img); i++) {
      const struct qk_extension *e = qk_image_extension (img, i);
      qk_json_object_begin (j, NULL);
      qk_json_hex (j, "magic", e->magic);
      qk_json_string (j, "name", e->name);
      qk_json_uint (j, "offset", e->offset);
      qk_json_uint (j, "length", e->length);
      if (e->magic == QK_EXT_BACKING_FORMAT || e->magic == QK_EXT_DATA_FILE)
        qk_json_stringn (j, "value", (const char *) e->data,
                         strnlen ((const char *) e->data, e->length));
      qk_json_object_end (j);
    }
    qk_json_array_end (j);

    qk_json_object_begin (j, "layout");
    json_region (j, "l1-table", h->l1_table_offset, (uint64_t) h->l1_size * 8,
                 h->l1_size);
    json_region (j, "refcount-table", h->refcount_table_offset,
                 (uint64_t) h->refcount_table_clusters * h->cluster_size,
                 (uint64_t) h->refcount_table_clusters * h->cluster_size / 8);
    {
      uint64_t bytes = 0;
      for (size_t i = 0; i < qk_image_snapshot_count (img); i++)
        bytes += qk_image_snapshot (img, i)->entry_size;
      json_region (j, "snapshot-table", h->snapshots_offset, bytes,
                   h->nb_snapshots);
    }
    for (size_t i = 0; i < qk_image_extension_count (img); i++) {
      const struct qk_extension *e = qk_image_extension (img, i);
      if (e->magic == QK_EXT_BITMAPS && e->length >= 24)
        json_region (j, "bitmap-directory", be64_get (e->data + 16),
                     be64_get (e->data + 8), be32_get (e->data));
    }
    qk_json_uint (j, "file-length", qk_image_file_size (img));
    qk_json_object_end (j);

    json_luks_header (j, img);

    if (qk_image_bitmap_count (img)) {
      qk_json_array_begin (j, "bitmaps");
      for (size_t i = 0; i < qk_image_bitmap_count (img); i++) {
        const struct qk_bitmap *b = qk_image_bitmap (img, i);
        qk_json_object_begin (j, NULL);
        qk_json_string (j, "name", b->name);
        qk_json_uint (j, "granularity-bits", b->granularity_bits);
        qk_json_uint (j, "type", b->type);
        qk_json_hex (j, "flags", b->flags);
        qk_json_uint (j, "table-offset", b->table_offset);
        qk_json_uint (j, "table-size", b->table_size);
        qk_json_uint (j, "extra-data-size", b->extra_data_size);
        qk_json_object_end (j);
      }
      qk_json_array_end (j);
    }
    if (qk_image_snapshot_count (img)) {
      qk_json_array_begin (j, "snapshots");
      for (size_t i = 0; i < qk_image_snapshot_count (img); i++) {
        const struct qk_snapshot *s = qk_image_snapshot (img, i);
        qk_json_object_begin (j, NULL);
        qk_json_string (j, "id", s->id);
        qk_json_uint (j, "entry-offset", s->entry_offset);
        qk_json_uint (j, "l1-table-offset", s->l1_table_offset);
        qk_json_uint (j, "l1-size", s->l1_size);
        qk_json_uint (j, "extra-data-size", s->extra_data_size);
        if (s->has_disk_size)
          qk_json_uint (j, "disk-size", s->disk_size);
        if (s->has_icount)
          qk_json_int (j, "icount", (int64_t) s->icount);
        qk_json_object_end (j);
      }
      qk_json_array_end (j);
    }
    qk_json_bool (j, "snapshot-table-readable", qk_image_snapshots_ok (img));
    if (qk_image_backing_format (img) && !stored_backing_format (img))
      qk_json_string (j, "backing-format-probed",
                      qk_image_backing_format (img));
  }
  qk_json_array_begin (j, "warnings");
  for (size_t i = 0; i < qk_image_warning_count (img); i++)
    qk_json_string (j, NULL, qk_image_warning (img, i));
  qk_json_array_end (j);
  if (qk_image_unreadable_reason (img))
    qk_json_string (j, "unreadable", qk_image_unreadable_reason (img));
  qk_json_object_end (j);
}

static void
json_snapshots (struct qk_json *j, struct qk_image *img)
{
  qk_json_array_begin (j, "snapshots");
  for (size_t i = 0; i < qk_image_snapshot_count (img); i++) {
    const struct qk_snapshot *s = qk_image_snapshot (img, i);
    qk_json_object_begin (j, NULL);
    qk_json_string (j, "id", s->id);
    qk_json_string (j, "name", s->name);
    qk_json_uint (j, "vm-state-size", s->vm_state_size);
    qk_json_uint (j, "date-sec", s->date_sec);
    qk_json_uint (j, "date-nsec", s->date_nsec);
    qk_json_uint (j, "vm-clock-sec", s->vm_clock_nsec / 1000000000ULL);
    qk_json_uint (j, "vm-clock-nsec", s->vm_clock_nsec % 1000000000ULL);
    if (s->has_icount && s->icount != UINT64_MAX)
      qk_json_uint (j, "icount", s->icount);
    qk_json_object_end (j);
  }
  qk_json_array_end (j);
}

static void
json_info (struct qk_json *j, struct qk_image *img)
{
  const struct qk_header *h = qk_image_header (img);
  int64_t actual = qk_image_actual_size (img);

  qk_json_object_begin (j, NULL);
  qk_json_string (j, "filename", qk_image_filename (img));
  qk_json_string (j, "format", qk_image_format (img));
  qk_json_uint (j, "virtual-size", qk_image_virtual_size (img));
  if (actual >= 0)
    qk_json_int (j, "actual-size", actual);
  if (h) {
    qk_json_uint (j, "cluster-size", h->cluster_size);
    qk_json_bool (j, "dirty-flag",
                  (h->incompatible_features & QK_INCOMPAT_DIRTY) != 0);
    if (h->crypt_method)
      qk_json_bool (j, "encrypted", true);
    if (qk_image_backing_name (img)) {
      qk_json_string (j, "backing-filename", qk_image_backing_name (img));
      /* A protocol or json: name is not combined with the image's
       * directory: QEMU shows it unchanged as the full name. */
      qk_json_string (j, "full-backing-filename",
                      qk_image_backing_path (img)
                      ? qk_image_backing_path (img)
                      : qk_image_backing_name (img));
      /* As qemu-img: only the format the image names (a probed one is
       * in "qcowkit" as "backing-format-probed"). */
      if (stored_backing_format (img))
        qk_json_string (j, "backing-filename-format",
                        stored_backing_format (img));
    }
    if (qk_image_snapshot_count (img))
      json_snapshots (j, img);

    qk_json_object_begin (j, "format-specific");
    qk_json_string (j, "type", "qcow2");
    qk_json_object_begin (j, "data");
    qk_json_string (j, "compat", compat_str (h));
    qk_json_string (j, "compression-type", compression_str (h));
    if (h->version >= 3) {
      qk_json_bool (j, "lazy-refcounts",
                    (h->compatible_features & QK_COMPAT_LAZY_REFCOUNTS) != 0);
      if (qk_image_bitmap_count (img)) {
        qk_json_array_begin (j, "bitmaps");
        for (size_t i = 0; i < qk_image_bitmap_count (img); i++) {
          const struct qk_bitmap *b = qk_image_bitmap (img, i);
          qk_json_object_begin (j, NULL);
          qk_json_array_begin (j, "flags");
          if (b->flags & QK_BITMAP_IN_USE)
            qk_json_string (j, NULL, "in-use");
          if (b->flags & QK_BITMAP_AUTO)
            qk_json_string (j, NULL, "auto");
          qk_json_array_end (j);
          qk_json_string (j, "name", b->name);
          qk_json_uint (j, "granularity",
                        b->granularity_bits < 64
                        ? 1ULL << b->granularity_bits : 0);
          qk_json_object_end (j);
        }
        qk_json_array_end (j);
      }
    }
    qk_json_uint (j, "refcount-bits", h->refcount_bits);
    if (h->incompatible_features & QK_INCOMPAT_DATA_FILE) {
      if (qk_image_data_file_name (img))
        qk_json_string (j, "data-file", qk_image_data_file_name (img));
      qk_json_bool (j, "data-file-raw",
                    (h->autoclear_features & QK_AUTOCLEAR_DATA_FILE_RAW) != 0);
    }
    if (h->crypt_method)
      json_encrypt (j, img);
    if (h->version >= 3) {
      qk_json_bool (j, "corrupt",
                    (h->incompatible_features & QK_INCOMPAT_CORRUPT) != 0);
      qk_json_bool (j, "extended-l2",
                    (h->incompatible_features & QK_INCOMPAT_EXTL2) != 0);
    }
    qk_json_object_end (j);
    qk_json_object_end (j);
  }
  else
    qk_json_bool (j, "dirty-flag", false);
  json_qcowkit (j, img);
  qk_json_object_end (j);
}

/* ---- human ---- */

static void
human_features (struct qk_image *img, const char *label, int type,
                uint64_t bits)
{
  bool any = false;

  printf ("    %s:", label);
  for (unsigned b = 0; b < 64; b++)
    if (bits & (1ULL << b)) {
      const char *n = qk_image_feature_name (img, type, b);
      printf ("%s %s (bit %u)", any ? "," : "", n ? n : "unknown", b);
      any = true;
    }
  printf ("%s\n", any ? "" : " none");
}

/* The encrypt section of qemu-img info, in its order (that of QEMU's
 * QDict, so fixed). */
static void
human_encrypt (struct qk_image *img)
{
  const struct qk_header *h = qk_image_header (img);
  const struct qk_luks *l = qk_image_luks (img);

  printf ("    encrypt:\n");
  if (h->crypt_method != QK_CRYPT_LUKS || l == NULL) {
    printf ("        format: %s\n", crypt_format (h));
    return;
  }
  if (l->ivgen_alg)
    printf ("        ivgen alg: %s\n", l->ivgen_alg);
  if (l->hash_alg)
    printf ("        hash alg: %s\n", l->hash_alg);
  if (l->cipher_alg)
    printf ("        cipher alg: %s\n", l->cipher_alg);
  printf ("        uuid: %s\n", printable (l->uuid));
  if (l->ivgen_hash_alg)
    printf ("        ivgen hash alg: %s\n", l->ivgen_hash_alg);
  printf ("        format: luks\n");
  if (l->mode)
    printf ("        cipher mode: %s\n", l->mode);
  printf ("        slots:\n");
  for (int i = 0; i < QK_LUKS_SLOTS; i++) {
    const struct qk_luks_slot *k = &l->slot[i];
    printf ("            [%d]:\n", i);
    printf ("                active: %s\n", k->active ? "true" : "false");
    if (k->active)
      printf ("                iters: %u\n", k->iterations);
    printf ("                key offset: %" PRIu64 "\n",
            (uint64_t) k->key_offset_sector * 512);
    if (k->active)
      printf ("                stripes: %u\n", k->stripes);
  }
  printf ("        payload offset: %" PRIu64 "\n",
          (uint64_t) l->payload_offset_sector * 512);
  printf ("        master key iters: %u\n", l->master_key_iterations);
}

static void
human_info (struct qk_image *img)
{
  const struct qk_header *h = qk_image_header (img);
  int64_t actual = qk_image_actual_size (img);

  printf ("image: %s\n", qk_image_filename (img));
  printf ("file format: %s\n", qk_image_format (img));
  printf ("virtual size: %s (%" PRIu64 " bytes)\n",
          size_str (qk_image_virtual_size (img)), qk_image_virtual_size (img));
  if (actual >= 0)
    printf ("disk size: %s\n", size_str (actual));
  else
    printf ("disk size: unavailable\n");
  if (h == NULL)
    return;
  /* qemu-img's order: encrypted, then cluster_size */
  if (h->crypt_method)
    printf ("encrypted: yes\n");
  printf ("cluster_size: %" PRIu64 "\n", h->cluster_size);
  if (h->incompatible_features & QK_INCOMPAT_DIRTY)
    printf ("cleanly shut down: no\n");
  if (qk_image_backing_name (img)) {
    const char *p = qk_image_backing_path (img);
    printf ("backing file: %s", printable (qk_image_backing_name (img)));
    if (p && strcmp (p, qk_image_backing_name (img)) != 0)
      printf (" (actual path: %s)", printable (p));
    printf ("\n");
    if (qk_image_backing_format (img))
      printf ("backing file format: %s%s\n", qk_image_backing_format (img),
              stored_backing_format (img) ? "" : " (probed)");
  }
  if (qk_image_snapshot_count (img))
    print_snapshot_table (img);
  printf ("Format specific information:\n");
  printf ("    compat: %s\n", compat_str (h));
  printf ("    compression type: %s\n", compression_str (h));
  if (h->version >= 3) {
    printf ("    lazy refcounts: %s\n",
            h->compatible_features & QK_COMPAT_LAZY_REFCOUNTS ? "true"
                                                              : "false");
    if (qk_image_bitmap_count (img)) {
      printf ("    bitmaps:\n");
      for (size_t i = 0; i < qk_image_bitmap_count (img); i++) {
        const struct qk_bitmap *b = qk_image_bitmap (img, i);
        int k = 0;
        printf ("        [%zu]:\n            flags:\n", i);
        if (b->flags & QK_BITMAP_IN_USE)
          printf ("                [%d]: in-use\n", k++);
        if (b->flags & QK_BITMAP_AUTO)
          printf ("                [%d]: auto\n", k++);
        printf ("            name: %s\n", printable (b->name));
        printf ("            granularity: %llu\n",
                b->granularity_bits < 64 ? 1ULL << b->granularity_bits : 0);
      }
    }
  }
  printf ("    refcount bits: %u\n", h->refcount_bits);
  /* qemu-img prints "encrypt" between "data file" and "data file raw" */
  if ((h->incompatible_features & QK_INCOMPAT_DATA_FILE)
      && qk_image_data_file_name (img))
    printf ("    data file: %s\n", printable (qk_image_data_file_name (img)));
  if (h->crypt_method)
    human_encrypt (img);
  if (h->incompatible_features & QK_INCOMPAT_DATA_FILE)
    printf ("    data file raw: %s\n",
            h->autoclear_features & QK_AUTOCLEAR_DATA_FILE_RAW ? "true"
                                                               : "false");
  if (h->version >= 3) {
    printf ("    corrupt: %s\n",
            h->incompatible_features & QK_INCOMPAT_CORRUPT ? "true" : "false");
    printf ("    extended l2: %s\n",
            h->incompatible_features & QK_INCOMPAT_EXTL2 ? "true" : "false");
  }

  printf ("qcowkit details:\n");
  printf ("    header: version %u, %u bytes", h->version, h->header_length);
  if (h->unknown_header_bytes)
    printf (" (%u bytes of unknown fields)", h->unknown_header_bytes);
  printf ("\n");
  human_features (img, "incompatible features", QK_FEATURE_INCOMPAT,
                  h->incompatible_features);
  human_features (img, "compatible features", QK_FEATURE_COMPAT,
                  h->compatible_features);
  human_features (img, "autoclear features", QK_FEATURE_AUTOCLEAR,
                  h->autoclear_features);
  for (size_t i = 0; i < qk_image_extension_count (img); i++) {
    const struct qk_extension *e = qk_image_extension (img, i);
    printf ("    header extension 0x%08x (%s): %u bytes at 0x%" PRIx64 "\n",
            e->magic, e->name, e->length, e->offset);
  }
  printf ("    L1 table: %u entries at 0x%" PRIx64 "\n", h->l1_size,
          h->l1_table_offset);
  printf ("    refcount table: %u clusters at 0x%" PRIx64 "\n",
          h->refcount_table_clusters, h->refcount_table_offset);
  printf ("    snapshot table: %u entries at 0x%" PRIx64 "%s\n",
          h->nb_snapshots, h->snapshots_offset,
          qk_image_snapshots_ok (img) ? "" : " (NOT fully readable)");
  for (size_t i = 0; i < qk_image_extension_count (img); i++) {
    const struct qk_extension *e = qk_image_extension (img, i);
    if (e->magic == QK_EXT_BITMAPS && e->length >= 24)
      printf ("    bitmap directory: %u bitmaps, %" PRIu64 " bytes at 0x%"
              PRIx64 "\n", be32_get (e->data), be64_get (e->data + 8),
              be64_get (e->data + 16));
  }
  if (h->crypt_method == QK_CRYPT_LUKS) {
    const struct qk_luks *l = qk_image_luks (img);
    bool found = false;
    for (size_t i = 0; i < qk_image_extension_count (img) && !found; i++) {
      const struct qk_extension *e = qk_image_extension (img, i);
      if (e->magic == QK_EXT_CRYPTO && e->length >= 16) {
        printf ("    LUKS header: %" PRIu64 " bytes at 0x%" PRIx64,
                be64_get (e->data + 8), be64_get (e->data));
        found = true;
      }
    }
    if (!found)
      printf ("    LUKS header: no encryption header pointer");
    if (l) {
      int active = 0;
      for (int i = 0; i < QK_LUKS_SLOTS; i++)
        active += l->slot[i].active;
      printf (", LUKS%u %s %s %s, %d of %d key slots active\n", l->version,
              printable (l->cipher_name), printable (l->cipher_mode),
              printable (l->hash_spec), active, QK_LUKS_SLOTS);
    }
    else
      printf (found ? " (NOT readable)\n" : "\n");
  }
  if (qk_image_unreadable_reason (img))
    printf ("    guest data: NOT readable: %s\n",
            qk_image_unreadable_reason (img));
}

static const char help[] =
  "Usage: qcowkit info [--output=json|human] [--backing-chain] [--root DIR] "
  "IMAGE\n"
  "Show what IMAGE is. JSON is a superset of `qemu-img info --output=json`.\n"
  "Works on images QEMU refuses to open: what cannot be read is said.\n";

int
cmd_info (int argc, char **argv)
{
  struct common_opts o = { .progress = -1 };
  bool chain = false;
  const char *path = NULL;
  struct qk_image *img;
  int r;

  for (int i = 1; i < argc; i++) {
    if (strcmp (argv[i], "--help") == 0 || strcmp (argv[i], "-h") == 0) {
      fputs (help, stdout);
      return EXIT_OK;
    }
    if ((r = common_option (&o, argc, argv, &i, "info")) < 0)
      return EXIT_USAGE;
    if (r)
      continue;
    if (strcmp (argv[i], "--backing-chain") == 0)
      chain = true;
    else if (argv[i][0] == '-' && argv[i][1])
      return usage_error ("info", "unknown option '%s'", argv[i]);
    else if (path)
      return usage_error ("info", "too many arguments");
    else
      path = argv[i];
  }
  if (path == NULL)
    return usage_error ("info", "no image given");

  img = open_image (path, &o, chain ? 0 : QK_OPEN_NO_BACKING,
                    o.output == OUT_HUMAN);
  if (img == NULL)
    return EXIT_ERR;

  if (o.output == OUT_JSON) {
    struct qk_json *j = qk_json_new (stdout, 4);
    if (chain)
      qk_json_array_begin (j, NULL);
    for (struct qk_image *i = img; i; i = chain ? qk_image_backing (i) : NULL)
      json_info (j, i);
    if (chain)
      qk_json_array_end (j);
    r = qk_json_free (j);
  }
  else {
    for (struct qk_image *i = img; i; i = chain ? qk_image_backing (i) : NULL) {
      if (i != img)
        printf ("\n");
      human_info (i);
    }
    r = 0;
  }
  if (chain)
    for (struct qk_image *i = img; i; i = qk_image_backing (i))
      if (qk_image_backing_name (i) && !qk_image_backing (i)) {
        errx_ ("%s: backing file '%s' could not be opened", 
               qk_image_filename (i), qk_image_backing_name (i));
        r = -1;
      }
  qk_image_close (img);
  return r < 0 ? EXIT_ERR : EXIT_OK;
}
