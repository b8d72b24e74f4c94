/* Fuzz guest reads (what export does): the first megabytes of the active
 * layer and of the first snapshot, through a fake backing chain,
 * decompressing deflate and zstd clusters. */
#include "fuzz.h"

#include <stdlib.h>

static void
read_some (struct qk_image *img, uint8_t *buf, size_t bufsize)
{
  uint64_t size = qk_image_virtual_size (img);
  for (uint64_t off = 0; off < size && off < (4ULL << 20); off += bufsize) {
    size_t n = size - off < bufsize ? size - off : bufsize;
    if (qk_image_read (img, buf, n, off) < 0)
      break;
  }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct fake_fs fs = { data, size };
  struct qk_open_options o = { .open_fn = fake_open, .open_opaque = &fs,
                               .max_chain_depth = 8, .flags = QK_OPEN_FORCE };
  struct qk_image *img = qk_image_open_memory (data, size, "fuzz.qcow2", &o);
  static uint8_t buf[256 << 10];

  if (img == NULL)
    return 0;
  read_some (img, buf, sizeof buf);
  if (qk_image_snapshot_count (img)
      && qk_image_select_snapshot (img, qk_image_snapshot (img, 0)->id) == 0)
    read_some (img, buf, sizeof buf);
  qk_image_close (img);
  return 0;
}
