/* Pass 6 of the check: the persistent dirty bitmaps (the bitmaps
 * extension, the directory entries as QEMU checks them on load, their
 * tables and the data they point to, counted into the IMRT). */
#include <config.h>

#include "check/ck.h"

/* ---- phase 6: bitmaps ---- */

static void
add_missing (struct ck *ck, const char *what)
{
  if (ck->missing == NULL)
    ck->missing = what;
  else if (strcmp (ck->missing, what) != 0)
    ck->missing = "part of the metadata";
}

/* The bitmap table size QEMU requires (load_bitmap_data): the bitmap
 * serialized in 64-bit words, in whole clusters. */
static uint64_t
bitmap_table_clusters (const struct ck *ck, unsigned gran_bits)
{
  uint64_t bits = ck->h->size / (1ULL << gran_bits)
                  + (ck->h->size % (1ULL << gran_bits) != 0);
  uint64_t bytes = (bits + 63) / 64 * 8;
  return DIV_ROUND_UP (bytes, ck->cs);
}

/* qcow2_check_bitmaps_refcounts, plus what QEMU checks when it loads the
 * bitmaps on open (check_dir_entry, load_bitmap_data) and the flags. */
static bool
bitmap_table_usable (const struct ck *ck, const struct qk_bitmap *b)
{
  return b->table_size != 0 && b->table_offset != 0
         && IS_ALIGNED (b->table_offset, ck->cs)
         && b->table_size <= QK_MAX_BITMAP_TABLE_ENTRIES;
}

int
phase_bitmaps (struct ck *ck)
{
  struct qk_image *img = ck->img;
  const struct qk_header *h = ck->h;
  const struct qk_bitmaps_ext *be = &img->bitmaps_ext;
  bool consistent = (h->autoclear_features & QK_AUTOCLEAR_BITMAPS) != 0;
  bool failed = false;

  if (!img->has_bitmaps_ext) {
    if (consistent)
      report (ck, PR_BM_AUTOCLEAR_NO_EXT, 1, NOLOC,
              "the 'bitmaps' autoclear bit is set but there is no bitmaps "
              "extension");
    return 0;
  }
  if (!consistent) {
    /* QEMU ignores the extension (and drops it on its next read-write
     * open), so what it points to is not referenced: leaks, as qemu-img
     * check counts them. */
    report (ck, PR_BM_AUTOCLEAR, 1, NOLOC,
            "the bitmaps extension is present but the 'bitmaps' autoclear bit "
            "is clear: all %u bitmaps must be considered inconsistent, and "
            "QEMU ignores them (their clusters are leaks)", be->nb_bitmaps);
    return 0;
  }
  if (be->nb_bitmaps == 0 || be->nb_bitmaps > QK_MAX_BITMAPS
      || be->directory_size > QK_MAX_BITMAP_DIR
      || !IS_ALIGNED (be->directory_offset, ck->cs)) {
    report (ck, PR_BM_DIRECTORY, 1,
            LOC (.host_offset = be->directory_offset,
                 .length = be->directory_size, .found = be->nb_bitmaps),
            "the bitmaps extension is invalid: %u bitmaps, directory of %"
            PRIu64 " bytes at 0x%" PRIx64, be->nb_bitmaps,
            be->directory_size, be->directory_offset);
    add_missing (ck, "the bitmap directory");
    return 0;
  }
  {
    struct owner o = { .kind = OWN_BMDIR };
    if (inc_refs (ck, be->directory_offset, be->directory_size, 1, &o) < 0)
      return -1;
  }
  if (img->n_bitmaps < be->nb_bitmaps) {
    report (ck, PR_BM_DIRECTORY, 1,
            LOC (.host_offset = be->directory_offset,
                 .length = be->directory_size, .found = img->n_bitmaps,
                 .expected = be->nb_bitmaps),
            "the bitmap directory at 0x%" PRIx64 " (%" PRIu64 " bytes) holds "
            "%zu readable entries of %u", be->directory_offset,
            be->directory_size, img->n_bitmaps, be->nb_bitmaps);
    add_missing (ck, "the bitmap directory");
    failed = true;
  }
  for (size_t i = 0; i < img->n_bitmaps; i++) {
    const struct qk_bitmap *b = &img->bitmaps[i].b;
    uint64_t phys = (uint64_t) b->table_size * ck->cs;
    const struct qk_problem *loc = LOC (.table_offset = b->entry_offset,
                                        .index = i);
    const char *bad = NULL;
    bool gran_ok = b->granularity_bits >= 9 && b->granularity_bits <= 31;

    if (b->table_size == 0) bad = "its table is empty";
    else if (b->table_offset == 0 || !IS_ALIGNED (b->table_offset, ck->cs))
      bad = "its table offset is zero or not cluster aligned";
    else if (b->table_size > QK_MAX_BITMAP_TABLE_ENTRIES)
      bad = "its table is too large";
    else if (!gran_ok)
      bad = "its granularity is outside 512 B to 2 GiB";
    else if (b->flags & QK_BME_RESERVED_FLAGS)
      bad = "it has reserved flags set";
    else if (strlen (b->name) > 1023) bad = "its name is too long";
    else if (b->type != 1) bad = "its type is not dirty tracking";
    else if (b->extra_data_size) bad = "it has extra data";
    else if (phys > 0x20000000ULL) bad = "its table covers too much";
    else if (!(b->flags & QK_BITMAP_IN_USE)
             && h->size > ((phys * 8) << b->granularity_bits))
      bad = "its table is too small for the virtual size";
    if (bad) {
      /* qemu-img counts one corruption for the whole directory */
      report (ck, PR_BM_ENTRY, failed ? 0 : 1, loc,
              "bitmap '%s' (directory entry %zu): %s", b->name, i, bad);
      failed = true;
    }
    else if (b->table_size != bitmap_table_clusters (ck, b->granularity_bits))
      report (ck, PR_BM_TABLE_SIZE, 1,
              LOC (.table_offset = b->entry_offset, .index = i,
                   .found = b->table_size,
                   .expected = bitmap_table_clusters (ck,
                                                      b->granularity_bits)),
              "bitmap '%s': its table has %u entries where the virtual size "
              "at its granularity needs %" PRIu64 " (QEMU refuses to load "
              "it)", b->name, b->table_size,
              bitmap_table_clusters (ck, b->granularity_bits));
    if (b->flags & QK_BITMAP_IN_USE)
      report (ck, PR_BM_IN_USE, 1, loc,
              "bitmap '%s' is in use: the VM did not close it; incremental "
              "backups based on it will fail", b->name);
    for (size_t k = 0; k < i; k++)
      if (strcmp (img->bitmaps[k].b.name, b->name) == 0)
        report (ck, PR_BM_DUPLICATE_NAME, 1, loc,
                "bitmaps %zu and %zu are both named '%s' (QEMU refuses to "
                "open the image)", k, i, b->name);
  }
  /* The tables: every one whose pointer is usable is counted, even when
   * its directory entry is bad in other ways (qemu-img stops at a bad
   * directory and counts nothing; what the entries point to is still in
   * use, not leaked). */
  /* The tables first, then the data: metadata is then claimed in one
   * go, before the data claims that may have to look it up. */
  for (size_t i = 0; i < img->n_bitmaps; i++) {
    const struct qk_bitmap *b = &img->bitmaps[i].b;
    struct owner ot = { .kind = OWN_BMTABLE, .a = (int64_t) i };

    if (bitmap_table_usable (ck, b)
        && inc_refs (ck, b->table_offset, (uint64_t) b->table_size * 8, 1,
                     &ot) < 0)
      return -1;
  }
  for (size_t i = 0; i < img->n_bitmaps; i++) {
    const struct qk_bitmap *b = &img->bitmaps[i].b;
    struct owner od = { .kind = OWN_BMDATA, .a = (int64_t) i };
    uint64_t *tab;
    uint32_t n;

    if (!bitmap_table_usable (ck, b)) {
      if (b->table_size || b->table_offset)
        add_missing (ck, "a bitmap table");
      continue;
    }
    if (qk_image_read_bitmap_table (img, i, &tab, &n) < 0) {
      report (ck, PR_BM_TABLE_ENTRY, 1,
              LOC (.host_offset = b->table_offset),
              "bitmap '%s': its table cannot be read: %s", b->name,
              qk_get_error ());
      add_missing (ck, "a bitmap table");
      continue;
    }
    for (uint32_t k = 0; k < n; k++) {
      uint64_t e = tab[k], off = e & QK_BME_TABLE_OFFSET_MASK;
      if ((e & QK_BME_TABLE_RESERVED)
          || (off && ((e & 1) || !IS_ALIGNED (off, ck->cs))))
        report (ck, PR_BM_TABLE_ENTRY, 1,
                LOC (.table_offset = b->table_offset, .index = k, .found = e),
                "bitmap '%s': table entry %u = 0x%016" PRIx64 " is invalid",
                b->name, k, e);
      /* A cluster an entry points to is in use even when the entry has
       * bad bits (qemu-img skips it, so it would call it leaked). */
      if (off && IS_ALIGNED (off, ck->cs)
          && inc_refs (ck, off, ck->cs, 1, &od) < 0) {
        free (tab);
        return -1;
      }
    }
    free (tab);
  }
  return 0;
}
