/* An opened image and its backing chain (internal). */
#ifndef QK_IMAGE_H
#define QK_IMAGE_H

#include "format/format.h"

#define QK_L2_CACHE_SLOTS 32

struct l2_slot {
  uint64_t offset;    /* 0 = empty */
  uint64_t lru;
  uint8_t *buf;       /* one cluster */
};

struct chain_ctx {
  const struct qk_open_options *opts;
  unsigned depth;
  unsigned max_depth;
  size_t n;
  dev_t dev[QK_DEFAULT_CHAIN_DEPTH * 4 + 1];
  ino_t ino[QK_DEFAULT_CHAIN_DEPTH * 4 + 1];
};

struct qk_image {
  char *filename;          /* as given */
  struct qk_source *src;
  struct qk_source *data;  /* == src unless an external data file */
  bool is_qcow2;
  struct qk_header hdr;
  uint8_t *cluster0;       /* the header cluster, zero padded */

  /* extensions */
  struct qk_extension *ext;
  size_t n_ext;
  char *feature_names[3][64];
  char *backing_format_ext;
  char *data_file_name;
  bool has_bitmaps_ext;
  struct qk_bitmaps_ext bitmaps_ext;
  bool has_crypto_ext;
  uint64_t crypto_offset, crypto_length;

  /* backing */
  char *backing_name;
  char *backing_path;
  char *backing_format;    /* from the extension, or probed */
  struct qk_image *backing;

  /* tables */
  uint64_t *l1;
  uint32_t l1_count;
  bool l1_ok;
  struct qk_snapshot_raw *snaps;
  size_t n_snaps;
  bool snaps_ok;
  struct qk_bitmap_raw *bitmaps;
  size_t n_bitmaps;

  struct qk_strvec warnings;
  char *unreadable;        /* why guest reads are impossible, or NULL */

  /* what guest reads go through (active or a snapshot's L1) */
  const uint64_t *rd_l1;
  uint32_t rd_l1_count;
  uint64_t rd_size;
  uint64_t *snap_l1;       /* owned copy for a selected snapshot */

  /* caches */
  struct l2_slot l2c[QK_L2_CACHE_SLOTS];
  uint64_t l2_tick;
  uint8_t *cbuf;           /* last decompressed cluster */
  uint64_t cbuf_entry;     /* its L2 entry, 0 = none */
  uint8_t *cin;            /* compressed input buffer */
  uint64_t *reftable;
  size_t reftable_n;
  bool reftable_loaded;
  uint8_t *rb_buf;
  uint64_t rb_off;
  int meta_prealloc;       /* -1 unknown, 0/1 */
};

extern int qk_image_warn (struct qk_image *img, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));
/* The L2 table at a host offset, from the cache (borrowed until the next
 * call). Past EOF reads as zeros, like QEMU. */
extern const uint8_t *qk_image_l2 (struct qk_image *img, uint64_t l2_offset);
extern int qk_image_refcount (struct qk_image *img, uint64_t cluster,
                              uint64_t *rc);

#endif
