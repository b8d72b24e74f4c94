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
  struct qk_source *keep;  /* the top source a writer keeps (never closed) */
  size_t n;
  dev_t dev[QK_DEFAULT_CHAIN_DEPTH * 4 + 1];
  ino_t ino[QK_DEFAULT_CHAIN_DEPTH * 4 + 1];
};

/* The LUKS1 header a LUKS-encrypted qcow2 image keeps in the clusters the
 * full disk encryption header pointer extension names (QEMU's
 * QCryptoBlockLUKSHeader, crypto/block-luks.c: 592 bytes, big-endian):
 * struct qk_luks and qk_image_luks() are in lib/qcowkit.h. */
#define QK_LUKS_HEADER_LEN 592
#define QK_LUKS_SLOT_ENABLED  0x00ac71f3U
#define QK_LUKS_SLOT_DISABLED 0x0000deadU

/* Decode a LUKS1 header from buf[0..len). EBADMSG if len is short, or
 * the magic or version is not LUKS1's; the rest is decoded as found. */
extern int qk_luks_parse (const uint8_t *buf, size_t len, struct qk_luks *l);
/* What QEMU's qcrypto_block_luks_check_header and parse_header refuse
 * (with QEMU's message, more or less); calls fn once per problem and
 * returns how many. */
typedef void (*qk_luks_problem_fn) (void *opaque, const char *msg);
extern unsigned qk_luks_check (const struct qk_luks *l, qk_luks_problem_fn fn,
                               void *opaque);

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
  bool any_feature_name;    /* one of them is set (close frees them) */
  char *backing_format_ext;
  char *data_file_name;
  bool has_bitmaps_ext;
  struct qk_bitmaps_ext bitmaps_ext;
  bool has_crypto_ext;
  uint64_t crypto_offset, crypto_length;
  bool has_luks;           /* the LUKS header was read and decoded */
  struct qk_luks luks;

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
  size_t snaps_qemu;       /* entries that end within QEMU's 64 MiB table limit */
  struct qk_bitmap_raw *bitmaps;
  size_t n_bitmaps;

  struct qk_strvec warnings;
  char *unreadable;        /* why guest reads are impossible, or NULL */
  /* Typed findings of the open, for the checker (which must not parse
   * the English of warnings): why the backing file was not opened (with
   * the warning that says it), whether the extension walk stopped early,
   * and why the snapshot table was not read in full. */
  enum qk_backing_state {
    QK_BK_OK = 0,             /* opened, or none */
    QK_BK_NAME_INVALID,       /* the name is outside cluster 0 or too long */
    QK_BK_TOO_DEEP,
    QK_BK_CANNOT_OPEN,
    QK_BK_LOOP,
    QK_BK_FORMAT_UNSUPPORTED,
    QK_BK_NOT_QCOW2,          /* recorded as qcow2, and it is not */
    QK_BK_NOT_ASKED,          /* QK_OPEN_NO_BACKING: not opened by request */
  } backing_state;
  const char *backing_why; /* a warnings entry, or NULL */
  const char *ext_overrun; /* a warnings entry: the walk stopped, or NULL */
  const char *snaps_why;   /* a warnings entry, or NULL */

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
  bool keep_src;           /* src belongs to the caller (a writer) */
};

/* Open an image over src, as qk_image_open does over a file. keep_src:
 * closing the image leaves src open (a writer reopens the image over the
 * same source after it wrote, so that no cache outlives a write: the one
 * place caches are invalidated), and a failed open leaves it open too.
 * Without keep_src, src is closed with the image, and when the open
 * fails. */
extern struct qk_image *qk_image_open_src (struct qk_source *src,
                                           const char *name,
                                           const struct qk_open_options *opts,
                                           bool keep_src);

extern int qk_image_warn (struct qk_image *img, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));
/* The L2 table at a host offset, from the cache (borrowed until the next
 * call). Past EOF reads as zeros, like QEMU. */
extern const uint8_t *qk_image_l2 (struct qk_image *img, uint64_t l2_offset);
/* The refcount of a host cluster, as qcow2_get_refcount: 0 past the
 * refcount table or for an unallocated refcount block. Fails with EBADMSG
 * when the structures cannot be used (refcount_order above 6, an
 * unaligned refcount table offset, or a refcount table entry with an
 * unaligned refcount block offset, which QEMU treats as corruption), with
 * EFBIG for a refcount table over the limit, and with EIO (or what the
 * read gave) when reading fails. */
extern int qk_image_refcount (struct qk_image *img, uint64_t cluster,
                              uint64_t *rc);

#endif
