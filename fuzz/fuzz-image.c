/* Fuzz opening an image and everything info, dump and map compute:
 * header, extensions, snapshot and bitmap tables, raw tables, the whole
 * map through a fake backing chain. Inputs that ask for more work than
 * the bounds of fuzz.h are skipped. */
#include "fuzz.h"

#include <stdlib.h>

static int
count_extent (void *opaque, const struct qk_extent *e)
{
  unsigned *n = opaque;
  (void) e;
  return ++*n > 100000;  /* bound the work on absurd images */
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct fake_fs fs = { data, size };
  struct qk_open_options o = { .open_fn = fake_open, .open_opaque = &fs,
                               .max_chain_depth = 8 };
  struct qk_image *img;
  unsigned n = 0;
  uint32_t l1n;
  const uint64_t *l1;

  fuzz_init ();
  if (fuzz_input_too_big (data, size))
    return 0;
  img = qk_image_open_memory (data, size, "fuzz.qcow2", &o);
  if (img == NULL)
    return 0;
  if (fuzz_image_too_big (img)) {
    qk_image_close (img);
    return 0;
  }
  (void) qk_image_virtual_size (img);
  for (size_t i = 0; i < qk_image_extension_count (img); i++)
    (void) qk_image_extension (img, i);
  for (size_t i = 0; i < qk_image_snapshot_count (img) && i < 16; i++) {
    uint64_t *t;
    uint32_t c;
    if (qk_image_read_snapshot_l1 (img, i, &t, &c) == 0)
      free (t);
  }
  for (size_t i = 0; i < qk_image_bitmap_count (img) && i < 16; i++) {
    uint64_t *t;
    uint32_t c;
    if (qk_image_read_bitmap_table (img, i, &t, &c) == 0)
      free (t);
  }
  for (int t = 0; t < 3; t++)
    for (unsigned b = 0; b < 64; b++)
      (void) qk_image_feature_name (img, t, b);
  l1 = qk_image_l1 (img, &l1n);
  if (l1 && l1n) {
    uint64_t *e;
    size_t c;
    if (qk_image_read_l2 (img, l1[0] & 0x00fffffffffffe00ULL, &e, &c) == 0)
      free (e);
  }
  {
    uint64_t *e;
    size_t c;
    if (qk_image_read_refcount_table (img, &e, &c) == 0) {
      if (c && (e[0] & ~0x1ffULL)) {
        uint64_t *r;
        size_t rc;
        if (qk_image_read_refblock (img, e[0] & ~0x1ffULL, &r, &rc) == 0)
          free (r);
      }
      free (e);
    }
  }
  qk_image_map (img, 0, UINT64_MAX, count_extent, &n);
  qk_image_close (img);
  return 0;
}
