/* Fuzz backing-chain resolution over a fake file system: several fake
 * files carved from the input (fuzz/chainfs.h), names resolved relative
 * to the image's directory, loops, the depth limit, json: and protocol
 * names, external data files; then guest reads and the map through the
 * chain that was opened.
 *
 * Oracles besides the sanitizers: the chain is never deeper than the
 * limit, no fake file appears twice in it (a loop was followed), and the
 * library opens no more files than the chain can hold. Chains any layer
 * of which asks for more work than the bounds of fuzz.h are skipped
 * after the oracles on the chain (before the reads and the map). */
#include "fuzz.h"
#include "chainfs.h"

#include <errno.h>

#include "image/image.h"    /* the fake inode of each layer (img->src) */

#define MAX_DEPTH 8
#define TOP_NAME "vm/top.qcow2"

struct chain_fs {
  const uint8_t *data;
  struct chainfs_part part[CHAINFS_MAX_PARTS];
  size_t n;
  unsigned opens;
};

static struct qk_source *
chain_open (void *opaque, const char *path)
{
  struct chain_fs *fs = opaque;
  char norm[CHAINFS_MAX_NAME + 2];

  /* the top, then at most one backing and one data file per layer */
  if (++fs->opens > 2 * (MAX_DEPTH + 1) + 1)
    __builtin_trap ();
  chainfs_normalize (path, norm);
  for (size_t i = 0; norm[0] && i < fs->n; i++) {
    const struct chainfs_part *p = &fs->part[i];
    struct qk_source *s;

    if (strcmp (p->norm, norm) != 0)
      continue;
    s = qk_source_memory (fs->data + p->data, p->end - p->data, path);
    if (s) {
      s->has_id = true;
      s->dev = 0xf5;
      s->ino = i + 1;
    }
    return s;
  }
  qk_internal_set_error (ENOENT, "open", "%s: no such file", path);
  return NULL;
}

static int
count_extent (void *opaque, const struct qk_extent *e)
{
  unsigned *n = opaque;
  (void) e;
  return ++*n > 20000;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  static struct chain_fs fs;
  static uint8_t buf[16 << 10];     /* per read: start, middle, end */
  struct qk_open_options o = { .open_fn = chain_open, .open_opaque = &fs,
                               .max_chain_depth = MAX_DEPTH,
                               .flags = QK_OPEN_FORCE };
  struct qk_image *img;
  unsigned depth = 0, n = 0;
  uint64_t vsize;

  fuzz_init ();
  if (fuzz_input_too_big (data, size))
    return 0;
  fs.data = data;
  fs.opens = 0;
  fs.n = chainfs_split (data, size, fs.part, CHAINFS_MAX_PARTS);
  if (size >= 4 && memcmp (data, "QFI\xfb", 4) == 0) {
    /* a bare image as the top: no name line */
    fs.part[0].data = 0;
    strcpy (fs.part[0].name, TOP_NAME);
    chainfs_normalize (TOP_NAME, fs.part[0].norm);
  }
  else if (fs.part[0].norm[0] == '\0') {
    strcpy (fs.part[0].name, TOP_NAME);
    chainfs_normalize (TOP_NAME, fs.part[0].norm);
  }

  img = qk_image_open (fs.part[0].name, &o);
  if (img == NULL)
    return 0;
  for (const struct qk_image *l = img; l; l = qk_image_backing (l)) {
    const char *s;
    if (++depth > MAX_DEPTH + 1)
      __builtin_trap ();          /* the depth limit did not hold */
    for (const struct qk_image *k = img; k != l; k = qk_image_backing (k))
      if (k->src->ino == l->src->ino)
        __builtin_trap ();        /* a loop was followed */
    s = qk_image_backing_name (l);
    n += s ? strlen (s) : 0;
    s = qk_image_backing_path (l);
    n += s ? strlen (s) : 0;
    s = qk_image_backing_format (l);
    n += s ? strlen (s) : 0;
    s = qk_image_data_file_name (l);
    n += s ? strlen (s) : 0;
    s = qk_image_unreadable_reason (l);
    n += s ? strlen (s) : 0;
    for (size_t i = 0; i < qk_image_warning_count (l); i++)
      n += strlen (qk_image_warning (l, i));
  }

  /* past the oracles of the chain: its reads and map are bounded */
  if (fuzz_image_too_big (img)) {
    qk_image_close (img);
    return 0;
  }

  /* guest reads through the chain: start, middle and end */
  vsize = qk_image_virtual_size (img);
  if (vsize) {
    uint64_t at[3] = { 0, vsize / 2, vsize > sizeof buf ? vsize - sizeof buf
                                                        : 0 };
    for (int i = 0; i < 3; i++) {
      size_t len = vsize - at[i] < sizeof buf ? vsize - at[i] : sizeof buf;
      (void) qk_image_read (img, buf, len, at[i]);
    }
  }
  n = 0;
  qk_image_map (img, 0, UINT64_MAX, count_extent, &n);
  qk_image_close (img);
  return 0;
}
