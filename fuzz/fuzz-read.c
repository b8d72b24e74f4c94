/* Fuzz guest reads (what export does) of the active layer and of the
 * first snapshot, through a fake backing chain, decompressing deflate and
 * zstd clusters.
 *
 * What is read: the start of every extent the map finds (up to 64 KiB of
 * each: data, compressed, zero, unallocated and backing extents alike),
 * at most FUZZ_MAX_READ bytes per view, then the first and last bytes of
 * the disk; so the clusters the seeds make interesting (compressed ones,
 * subclusters, the end of the disk) are read however large the disk,
 * without reading all of it. Inputs that ask for more work than the
 * bounds of fuzz.h are skipped. */
#include "fuzz.h"

#define PIECE (64U << 10)

struct reader {
  struct qk_image *img;
  uint64_t left;        /* bytes still to read */
};

static uint8_t buf[PIECE];

static void
read_at (struct reader *r, uint64_t off, uint64_t len)
{
  if (len > PIECE)
    len = PIECE;
  if (len > r->left)
    len = r->left;
  if (len == 0)
    return;
  r->left -= len;
  (void) qk_image_read (r->img, buf, len, off);
}

static int
read_extent (void *opaque, const struct qk_extent *e)
{
  struct reader *r = opaque;
  read_at (r, e->start, e->length);
  return r->left == 0;
}

static void
read_some (struct qk_image *img)
{
  uint64_t size = qk_image_virtual_size (img);
  struct reader r = { img, FUZZ_MAX_READ };

  qk_image_map (img, 0, size, read_extent, &r);
  r.left += 2 * 4096;
  read_at (&r, 0, size < 4096 ? size : 4096);
  if (size > 4096)
    read_at (&r, size - 4096, 4096);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct fake_fs fs = { data, size };
  struct qk_open_options o = { .open_fn = fake_open, .open_opaque = &fs,
                               .max_chain_depth = 8, .flags = QK_OPEN_FORCE };
  struct qk_image *img;

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
  read_some (img);
  if (qk_image_snapshot_count (img)
      && qk_image_select_snapshot (img, qk_image_snapshot (img, 0)->id) == 0)
    read_some (img);
  qk_image_close (img);
  return 0;
}
