/* qcowkit dump: on-disk structures, in the spirit of dumpe2fs and qemu's
 * qcow2.py dump-header. */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "tool.h"
#include "json.h"
#include "bytes.h"

static void
dump_header (struct qk_image *img, const struct qk_header *h, struct qk_json *j)
{
  static const struct {
    const char *name;
    size_t off;
    int v3;
  } f[] = {
#define F(n, v3) { #n, offsetof (struct qk_header, n), v3 }
    F (magic, 0), F (version, 0), F (backing_file_offset, 0),
    F (backing_file_size, 0), F (cluster_bits, 0), F (size, 0),
    F (crypt_method, 0), F (l1_size, 0), F (l1_table_offset, 0),
    F (refcount_table_offset, 0), F (refcount_table_clusters, 0),
    F (nb_snapshots, 0), F (snapshots_offset, 0),
    F (incompatible_features, 1), F (compatible_features, 1),
    F (autoclear_features, 1), F (refcount_order, 1), F (header_length, 1),
#undef F
  };
  static const size_t sz[] = { 4, 4, 8, 4, 4, 8, 4, 4, 8, 8, 4, 4, 8, 8, 8, 8,
                               4, 4 };

  if (j)
    qk_json_object_begin (j, NULL);
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
    uint64_t v;
    if (f[i].v3 && h->version < 3)
      continue;
    if (sz[i] == 8)
      v = *(const uint64_t *) ((const char *) h + f[i].off);
    else
      v = *(const uint32_t *) ((const char *) h + f[i].off);
    if (j)
      qk_json_uint (j, f[i].name, v);
    else if (strstr (f[i].name, "offset") || strstr (f[i].name, "features")
             || strcmp (f[i].name, "magic") == 0)
      printf ("%-28s %#" PRIx64 "\n", f[i].name, v);
    else
      printf ("%-28s %" PRIu64 "\n", f[i].name, v);
  }
  if (h->version >= 3 && h->header_length > 104) {
    if (j)
      qk_json_uint (j, "compression_type", h->compression_type);
    else
      printf ("%-28s %u\n", "compression_type", h->compression_type);
  }
  if (j)
    qk_json_object_end (j);
  else {
    for (int t = 0; t < 3; t++) {
      static const char *const tn[] = { "incompatible", "compatible",
                                        "autoclear" };
      uint64_t bits = t == 0 ? h->incompatible_features
                    : t == 1 ? h->compatible_features : h->autoclear_features;
      for (unsigned b = 0; b < 64; b++)
        if (bits & (1ULL << b)) {
          const char *n = qk_image_feature_name (img, t, b);
          printf ("  %s bit %u: %s\n", tn[t], b, n ? n : "unknown");
        }
    }
  }
}

static void
dump_extensions (struct qk_image *img, struct qk_json *j)
{
  if (j)
    qk_json_array_begin (j, NULL);
  for (size_t i = 0; i < qk_image_extension_count (img); i++) {
    const struct qk_extension *e = qk_image_extension (img, i);
    if (j) {
      qk_json_object_begin (j, NULL);
      qk_json_hex (j, "magic", e->magic);
      qk_json_string (j, "name", e->name);
      qk_json_uint (j, "offset", e->offset);
      qk_json_uint (j, "length", e->length);
      qk_json_array_begin (j, "data");
      for (uint32_t k = 0; k < e->length; k++)
        qk_json_uint (j, NULL, e->data[k]);
      qk_json_array_end (j);
      qk_json_object_end (j);
      continue;
    }
    printf ("Header extension at %#" PRIx64 ":\n", e->offset);
    printf ("%-28s %#010x (%s)\n", "magic", e->magic, e->name);
    printf ("%-28s %u\n", "length", e->length);
    if (e->magic == QK_EXT_BACKING_FORMAT || e->magic == QK_EXT_DATA_FILE) {
      printf ("%-28s ", "data");
      fwrite (e->data, 1, strnlen ((const char *) e->data, e->length), stdout);
      printf ("\n");
    }
    else if (e->magic == QK_EXT_FEATURE_TABLE) {
      for (uint32_t k = 0; k + 48 <= e->length; k += 48)
        printf ("  type %u bit %-3u %.46s\n", e->data[k], e->data[k + 1],
                (const char *) e->data + k + 2);
    }
    else if (e->magic == QK_EXT_BITMAPS && e->length >= 24) {
      printf ("%-28s %u\n", "nb_bitmaps", be32_get (e->data));
      printf ("%-28s %u\n", "reserved32", be32_get (e->data + 4));
      printf ("%-28s %" PRIu64 "\n", "bitmap_directory_size",
              be64_get (e->data + 8));
      printf ("%-28s %#" PRIx64 "\n", "bitmap_directory_offset",
              be64_get (e->data + 16));
    }
    else {
      for (uint32_t k = 0; k < e->length; k++)
        printf ("%s%02x", k % 16 ? " " : (k ? "\n  " : "  "), e->data[k]);
      printf ("\n");
    }
    printf ("\n");
  }
  if (j)
    qk_json_array_end (j);
}

/* Print a table of 64-bit entries with an offset column. */
static void
dump_words (const uint64_t *w, size_t n, size_t stride, struct qk_json *j,
            const char *label)
{
  if (j) {
    qk_json_array_begin (j, NULL);
    for (size_t i = 0; i < n; i++) {
      if (stride == 2) {
        qk_json_array_begin (j, NULL);
        qk_json_uint (j, NULL, w[2 * i]);
        qk_json_uint (j, NULL, w[2 * i + 1]);
        qk_json_array_end (j);
      }
      else
        qk_json_uint (j, NULL, w[i]);
    }
    qk_json_array_end (j);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    if (stride == 2) {
      if (w[2 * i] || w[2 * i + 1])
        printf ("%s[%zu] = 0x%016" PRIx64 " bitmap 0x%016" PRIx64 "\n", label,
                i, w[2 * i], w[2 * i + 1]);
    }
    else if (w[i])
      printf ("%s[%zu] = 0x%016" PRIx64 "\n", label, i, w[i]);
  }
}

static void
dump_snapshots (struct qk_image *img, struct qk_json *j)
{
  if (j)
    qk_json_array_begin (j, NULL);
  for (size_t i = 0; i < qk_image_snapshot_count (img); i++) {
    const struct qk_snapshot *s = qk_image_snapshot (img, i);
    if (j) {
      qk_json_object_begin (j, NULL);
      qk_json_uint (j, "entry_offset", s->entry_offset);
      qk_json_uint (j, "l1_table_offset", s->l1_table_offset);
      qk_json_uint (j, "l1_size", s->l1_size);
      qk_json_string (j, "id", s->id);
      qk_json_string (j, "name", s->name);
      qk_json_uint (j, "date_sec", s->date_sec);
      qk_json_uint (j, "date_nsec", s->date_nsec);
      qk_json_uint (j, "vm_clock_nsec", s->vm_clock_nsec);
      qk_json_uint (j, "vm_state_size", s->vm_state_size32);
      qk_json_uint (j, "extra_data_size", s->extra_data_size);
      if (s->has_vm_state_size_large)
        qk_json_uint (j, "vm_state_size_large", s->vm_state_size);
      if (s->has_disk_size)
        qk_json_uint (j, "disk_size", s->disk_size);
      if (s->has_icount)
        qk_json_int (j, "icount", (int64_t) s->icount);
      qk_json_object_end (j);
      continue;
    }
    printf ("Snapshot %zu at %#" PRIx64 ":\n", i, s->entry_offset);
    printf ("%-28s %s\n", "id", printable (s->id));
    printf ("%-28s %s\n", "name", printable (s->name));
    printf ("%-28s %#" PRIx64 "\n", "l1_table_offset", s->l1_table_offset);
    printf ("%-28s %u\n", "l1_size", s->l1_size);
    printf ("%-28s %u.%09u\n", "date", s->date_sec, s->date_nsec);
    printf ("%-28s %" PRIu64 "\n", "vm_clock_nsec", s->vm_clock_nsec);
    printf ("%-28s %u\n", "vm_state_size", s->vm_state_size32);
    printf ("%-28s %u\n", "extra_data_size", s->extra_data_size);
    if (s->has_vm_state_size_large)
      printf ("%-28s %" PRIu64 "\n", "vm_state_size_large", s->vm_state_size);
    if (s->has_disk_size)
      printf ("%-28s %" PRIu64 "\n", "disk_size", s->disk_size);
    if (s->has_icount)
      printf ("%-28s %" PRId64 "\n", "icount", (int64_t) s->icount);
    printf ("\n");
  }
  if (j)
    qk_json_array_end (j);
}

static void
dump_bitmaps (struct qk_image *img, struct qk_json *j)
{
  if (j)
    qk_json_array_begin (j, NULL);
  for (size_t i = 0; i < qk_image_bitmap_count (img); i++) {
    const struct qk_bitmap *b = qk_image_bitmap (img, i);
    if (j) {
      qk_json_object_begin (j, NULL);
      qk_json_uint (j, "entry_offset", b->entry_offset);
      qk_json_string (j, "name", b->name);
      qk_json_uint (j, "bitmap_table_offset", b->table_offset);
      qk_json_uint (j, "bitmap_table_size", b->table_size);
      qk_json_uint (j, "flags", b->flags);
      qk_json_uint (j, "type", b->type);
      qk_json_uint (j, "granularity_bits", b->granularity_bits);
      qk_json_uint (j, "extra_data_size", b->extra_data_size);
      qk_json_object_end (j);
      continue;
    }
    printf ("Bitmap %zu at %#" PRIx64 ":\n", i, b->entry_offset);
    printf ("%-28s %s\n", "name", printable (b->name));
    printf ("%-28s %#" PRIx64 "\n", "bitmap_table_offset", b->table_offset);
    printf ("%-28s %u\n", "bitmap_table_size", b->table_size);
    printf ("%-28s %#x%s%s\n", "flags", b->flags,
            b->flags & QK_BITMAP_IN_USE ? " in-use" : "",
            b->flags & QK_BITMAP_AUTO ? " auto" : "");
    printf ("%-28s %u\n", "type", b->type);
    printf ("%-28s %u\n", "granularity_bits", b->granularity_bits);
    printf ("%-28s %u\n", "extra_data_size", b->extra_data_size);
    printf ("\n");
  }
  if (j)
    qk_json_array_end (j);
}

/* "N" is a table index; "@OFFSET" a host offset. */
static bool
parse_index (const char *s, bool *is_off, uint64_t *v)
{
  *is_off = s[0] == '@';
  return parse_size (s + *is_off, v);
}

static const char help[] =
  "Usage: qcowkit dump [--output=json|human] IMAGE WHAT [N]\n"
  "WHAT: header | extensions | l1 | l2 N | refcount-table | refblock N |\n"
  "      snapshots | snapshot-l1 N | bitmaps | bitmap-table N\n"
  "For l2 and refblock, N is an L1 or refcount table index, or @OFFSET for a\n"
  "host offset; for snapshot-l1 and bitmap-table, the entry's index, or\n"
  "@OFFSET for the entry whose table is at that host offset.\n";

int
cmd_dump (int argc, char **argv)
{
  struct common_opts o = { .progress = -1 };
  const char *args[3] = { NULL, NULL, NULL };
  int nargs = 0, r, ret = EXIT_OK;
  struct qk_image *img;
  const struct qk_header *h;
  struct qk_json *j = NULL;
  const char *what;
  uint64_t *w = NULL;
  size_t n = 0;

  for (int i = 1; i < argc; i++) {
    if (strcmp (argv[i], "--help") == 0 || strcmp (argv[i], "-h") == 0) {
      fputs (help, stdout);
      return EXIT_OK;
    }
    if ((r = common_option (&o, argc, argv, &i, "dump")) < 0)
      return EXIT_USAGE;
    if (r)
      continue;
    if (argv[i][0] == '-' && argv[i][1])
      return usage_error ("dump", "unknown option '%s'", argv[i]);
    if (nargs == 3)
      return usage_error ("dump", "too many arguments");
    args[nargs++] = argv[i];
  }
  if (nargs < 2)
    return usage_error ("dump", "need IMAGE and what to dump");
  what = args[1];
  {
    bool needs_n = strcmp (what, "l2") == 0 || strcmp (what, "refblock") == 0
                   || strcmp (what, "snapshot-l1") == 0
                   || strcmp (what, "bitmap-table") == 0;
    bool known = needs_n || strcmp (what, "header") == 0
                 || strcmp (what, "extensions") == 0
                 || strcmp (what, "l1") == 0
                 || strcmp (what, "refcount-table") == 0
                 || strcmp (what, "snapshots") == 0
                 || strcmp (what, "bitmaps") == 0;
    if (!known)
      return usage_error ("dump", "unknown structure '%s'", what);
    if (needs_n != (nargs == 3))
      return usage_error ("dump", "'%s' %s an index", what,
                          needs_n ? "needs" : "takes no");
  }
  img = open_image (args[0], &o, QK_OPEN_NO_BACKING | QK_OPEN_NO_DATA_FILE,
                    o.output == OUT_HUMAN);
  if (img == NULL)
    return EXIT_ERR;
  h = qk_image_header (img);
  if (h == NULL) {
    errx_ ("%s is not a qcow2 image", args[0]);
    qk_image_close (img);
    return EXIT_ERR;
  }
  if (o.output == OUT_JSON)
    j = qk_json_new (stdout, 4);

  if (strcmp (what, "header") == 0)
    dump_header (img, h, j);
  else if (strcmp (what, "extensions") == 0)
    dump_extensions (img, j);
  else if (strcmp (what, "snapshots") == 0)
    dump_snapshots (img, j);
  else if (strcmp (what, "bitmaps") == 0)
    dump_bitmaps (img, j);
  else if (strcmp (what, "l1") == 0) {
    uint32_t cnt;
    const uint64_t *l1 = qk_image_l1 (img, &cnt);
    if (l1 == NULL) {
      errx_ ("%s: the L1 table cannot be read", args[0]);
      ret = EXIT_ERR;
    }
    else
      dump_words (l1, cnt, 1, j, "L1");
  }
  else if (strcmp (what, "refcount-table") == 0) {
    if (qk_image_read_refcount_table (img, &w, &n) < 0) {
      errx_ ("%s", qk_get_error ());
      ret = EXIT_ERR;
    }
    else
      dump_words (w, n, 1, j, "reftable");
  }
  else {
    bool is_off;
    uint64_t v;
    if (!parse_index (args[2], &is_off, &v)) {
      errx_ ("'%s' is not an index or @offset", args[2]);
      ret = EXIT_USAGE;
    }
    else if (strcmp (what, "l2") == 0) {
      if (!is_off) {
        uint32_t cnt;
        const uint64_t *l1 = qk_image_l1 (img, &cnt);
        if (l1 == NULL || v >= cnt || !(l1[v] & QK_L1E_OFFSET_MASK)) {
          errx_ ("L1[%" PRIu64 "] does not point to an L2 table", v);
          ret = EXIT_ERR;
        }
        else
          v = l1[v] & QK_L1E_OFFSET_MASK;
      }
      if (ret == EXIT_OK) {
        if (qk_image_read_l2 (img, v, &w, &n) < 0) {
          errx_ ("%s", qk_get_error ());
          ret = EXIT_ERR;
        }
        else
          dump_words (w, n, h->l2_entry_size / 8, j, "L2");
      }
    }
    else if (strcmp (what, "refblock") == 0) {
      if (!is_off) {
        uint64_t *rt = NULL;
        size_t rn = 0;
        if (qk_image_read_refcount_table (img, &rt, &rn) < 0 || v >= rn
            || !(rt[v] & QK_REFT_OFFSET_MASK)) {
          errx_ ("refcount table entry %" PRIu64 " does not point to a "
                 "refcount block", v);
          ret = EXIT_ERR;
        }
        else
          v = rt[v] & QK_REFT_OFFSET_MASK;
        if (rn || rt)
          free (rt);
      }
      if (ret == EXIT_OK) {
        if (qk_image_read_refblock (img, v, &w, &n) < 0) {
          errx_ ("%s", qk_get_error ());
          ret = EXIT_ERR;
        }
        else
          dump_words (w, n, 1, j, "refcount");
      }
    }
    else {
      bool snap = strcmp (what, "snapshot-l1") == 0;
      size_t k = v;
      uint32_t cnt;
      if (is_off) {
        /* @OFFSET: the entry whose table is at that host offset */
        size_t nent = snap ? qk_image_snapshot_count (img)
                           : qk_image_bitmap_count (img);
        for (k = 0; k < nent; k++)
          if ((snap ? qk_image_snapshot (img, k)->l1_table_offset
                    : qk_image_bitmap (img, k)->table_offset) == v)
            break;
        if (k == nent) {
          errx_ ("no %s has its %s at 0x%" PRIx64, snap ? "snapshot"
                 : "bitmap", snap ? "L1 table" : "bitmap table", v);
          ret = EXIT_ERR;
        }
      }
      if (ret != EXIT_OK)
        ;
      else if ((snap ? qk_image_read_snapshot_l1 (img, k, &w, &cnt)
                     : qk_image_read_bitmap_table (img, k, &w, &cnt)) < 0) {
        errx_ ("%s", qk_get_error ());
        ret = EXIT_ERR;
      }
      else
        dump_words (w, cnt, 1, j, snap ? "L1" : "bitmap-table");
    }
  }
  if (j) {
    if (ret != EXIT_OK)
      qk_json_null (j, NULL);
    qk_json_free (j);
  }
  free (w);
  qk_image_close (img);
  return ret;
}
