/* Pure parse/format of qcow2 on-disk structures over byte buffers.
 * No I/O here; nothing allocated beyond what the input justifies. */
#ifndef QK_FORMAT_H
#define QK_FORMAT_H

#include "internal.h"

/* ---- header (format/header.c) ---- */
#define QK_HEADER_V2_LEN 72
#define QK_HEADER_V3_MIN 104
#define QK_HEADER_KNOWN_LEN 105  /* up to and including compression_type */

/* Decode the header at buf (the first cluster, or as much as exists).
 * Fails (EBADMSG) only when nothing sensible can be read: bad magic,
 * version, cluster_bits, or a buffer shorter than the header. */
extern int qk_header_parse (const uint8_t *buf, size_t len,
                            struct qk_header *h);
/* Write a header into buf (h->header_length bytes; v2: 72). */
extern int qk_header_format (const struct qk_header *h, uint8_t *buf,
                             size_t len);
extern const char *qk_feature_known_name (int type, unsigned bit);

/* ---- header extensions ---- */
struct qk_ext_raw {
  uint32_t magic;
  uint32_t length;
  uint64_t offset;  /* within buf */
};
/* Walk the extension area buf[start..end). Calls fn for each; stops at the
 * end marker. Returns 0, or -1 (EBADMSG) if an extension overruns end;
 * *stop_reason says why the walk stopped early. */
typedef int (*qk_ext_fn) (void *opaque, const struct qk_ext_raw *e,
                          const uint8_t *payload);
extern int qk_extensions_walk (const uint8_t *buf, size_t start, size_t end,
                               qk_ext_fn fn, void *opaque);
extern const char *qk_extension_name (uint32_t magic);

/* ---- mapping entries (format/l2.c) ---- */
#define QK_L1E_OFFSET_MASK    0x00fffffffffffe00ULL
#define QK_L1E_RESERVED_MASK  0x7f000000000001ffULL
#define QK_L2E_OFFSET_MASK    0x00fffffffffffe00ULL
#define QK_L2E_STD_RESERVED   0x3f000000000001feULL
#define QK_OFLAG_COPIED       (1ULL << 63)
#define QK_OFLAG_COMPRESSED   (1ULL << 62)
#define QK_OFLAG_ZERO         (1ULL << 0)
#define QK_REFT_OFFSET_MASK   0xfffffffffffffe00ULL
#define QK_REFT_RESERVED_MASK 0x1ffULL
#define QK_L2_BITMAP_ALL_ALLOC 0xffffffffULL

enum qk_cluster_type {
  QK_CLUSTER_UNALLOCATED,
  QK_CLUSTER_ZERO_PLAIN,
  QK_CLUSTER_ZERO_ALLOC,
  QK_CLUSTER_NORMAL,
  QK_CLUSTER_COMPRESSED,
};

enum qk_subcluster_type {
  QK_SUB_UNALLOCATED_PLAIN,
  QK_SUB_UNALLOCATED_ALLOC,
  QK_SUB_ZERO_PLAIN,
  QK_SUB_ZERO_ALLOC,
  QK_SUB_NORMAL,
  QK_SUB_COMPRESSED,
  QK_SUB_INVALID,
};

/* As QEMU's qcow2_get_cluster_type / qcow2_get_subcluster_type. */
extern enum qk_cluster_type qk_l2_cluster_type (uint64_t entry, bool extl2,
                                                bool data_file);
extern enum qk_subcluster_type qk_l2_subcluster_type (uint64_t entry,
                                                      uint64_t bitmap,
                                                      unsigned sc_index,
                                                      bool extl2,
                                                      bool data_file);
/* Compressed descriptor: host offset and byte length. */
extern void qk_l2_compressed (uint64_t entry, unsigned cluster_bits,
                              uint64_t *host_off, uint64_t *nbytes);

/* ---- refcounts (format/refcount.c) ---- */
extern uint64_t qk_refblock_get (const uint8_t *blk, unsigned order,
                                 uint64_t idx);
extern void qk_refblock_set (uint8_t *blk, unsigned order, uint64_t idx,
                             uint64_t v);

/* ---- snapshot table (format/snapshot.c) ---- */
struct qk_snapshot_raw {
  struct qk_snapshot s;
  char *id;    /* owned */
  char *name;  /* owned */
  uint8_t *extra;  /* owned, extra_data_size bytes */
};
/* Parse the entry at buf[0..len). *entry_len gets its size with padding.
 * EBADMSG if it does not fit or exceeds limits. */
extern int qk_snapshot_parse (const uint8_t *buf, size_t len,
                              struct qk_snapshot_raw *out, size_t *entry_len);
extern void qk_snapshot_raw_free (struct qk_snapshot_raw *r);
/* Bytes an entry takes (padded to 8); 0 on overflow. */
extern size_t qk_snapshot_entry_size (uint32_t extra, size_t idlen,
                                      size_t namelen);
extern int qk_snapshot_format (const struct qk_snapshot_raw *r, uint8_t *buf,
                               size_t len);

/* ---- bitmap directory (format/bitmap.c) ---- */
#define QK_BME_RESERVED_FLAGS  0xfffffffcU
#define QK_BME_TABLE_OFFSET_MASK 0x00fffffffffffe00ULL
#define QK_BME_TABLE_RESERVED  0xff000000000001feULL
struct qk_bitmap_raw {
  struct qk_bitmap b;
  char *name;  /* owned */
};
extern int qk_bitmap_parse (const uint8_t *buf, size_t len,
                            struct qk_bitmap_raw *out, size_t *entry_len);
extern void qk_bitmap_raw_free (struct qk_bitmap_raw *r);

struct qk_bitmaps_ext {
  uint32_t nb_bitmaps;
  uint32_t reserved;
  uint64_t directory_size;
  uint64_t directory_offset;
};
extern int qk_bitmaps_ext_parse (const uint8_t *buf, size_t len,
                                 struct qk_bitmaps_ext *out);

/* ---- compressed clusters (format/compress.c) ---- */
/* Decompress one cluster: out must receive exactly outlen bytes.
 * EBADMSG if the input is damaged or too short. */
extern int qk_decompress (int type, const uint8_t *in, size_t inlen,
                          uint8_t *out, size_t outlen);
extern int qk_compress (int type, const uint8_t *in, size_t inlen,
                        uint8_t *out, size_t outcap, size_t *outlen);

/* ---- writers (format/write.c): the inverses of the parsers above ----
 * Pure: each writes into a caller buffer and checks its bounds (EINVAL for
 * a value the format cannot hold, ENOSPC for a buffer too small); nothing
 * is allocated and nothing read. qk_header_format and qk_snapshot_format
 * (above) are the header and snapshot entry writers. */

/* Header extensions: an 8-byte header (magic, length), the payload, zero
 * padding to 8. Returns the bytes written (qk_ext_size), or -1. */
extern size_t qk_ext_size (uint32_t payload_len);
extern ssize_t qk_ext_format (uint32_t magic, const void *payload,
                              uint32_t payload_len, uint8_t *buf, size_t len);
/* The end marker (magic 0, length 0): 8 zero bytes. */
extern ssize_t qk_ext_end_format (uint8_t *buf, size_t len);

/* Feature name table entries (48 bytes each: type, bit, 46-byte name, NUL
 * padded, not necessarily NUL terminated). */
#define QK_FEATURE_NAME_ENTRY 48
#define QK_FEATURE_NAME_LEN   46
struct qk_feature_name {
  uint8_t type;    /* QK_FEATURE_INCOMPAT, _COMPAT, _AUTOCLEAR */
  uint8_t bit;
  char name[QK_FEATURE_NAME_LEN + 1];
};
extern int qk_feature_name_format (const struct qk_feature_name *f,
                                   uint8_t *buf, size_t len);
extern int qk_feature_name_parse (const uint8_t *buf, size_t len,
                                  struct qk_feature_name *out);

/* The bitmaps extension payload (24 bytes). */
extern int qk_bitmaps_ext_format (const struct qk_bitmaps_ext *e, uint8_t *buf,
                                  size_t len);
/* The full-disk encryption header pointer payload (16 bytes). */
struct qk_crypto_ext {
  uint64_t offset;
  uint64_t length;
};
extern int qk_crypto_ext_format (const struct qk_crypto_ext *e, uint8_t *buf,
                                 size_t len);
extern int qk_crypto_ext_parse (const uint8_t *buf, size_t len,
                                struct qk_crypto_ext *out);

/* Table entries. Each fails (-1, EINVAL) on an offset the entry cannot
 * hold (unaligned, or bits outside the offset mask). */
extern int qk_l1_entry_make (uint64_t l2_offset, bool copied, uint64_t *entry);
extern int qk_l2_entry_make (uint64_t host_offset, bool copied, bool zero,
                             uint64_t *entry);
/* A compressed descriptor: the inverse of qk_l2_compressed. nbytes is the
 * length of the compressed data (at least 1); the sector count rounds it
 * up, as QEMU does. */
extern int qk_l2_compressed_make (uint64_t host_offset, uint64_t nbytes,
                                  unsigned cluster_bits, uint64_t *entry);
extern int qk_reftable_entry_make (uint64_t refblock_offset, uint64_t *entry);
/* offset 0 with all_ones: the "all bits set" entry. */
extern int qk_bitmap_table_entry_make (uint64_t data_offset, bool all_ones,
                                       uint64_t *entry);

/* Put entry i of a table of big-endian 64-bit words (L1, reftable, bitmap
 * table) / of an L2 table (standard: 8-byte entries; extended: 16 bytes,
 * entry then subcluster bitmap). */
extern int qk_table_put (uint8_t *buf, size_t len, uint64_t i, uint64_t v);
extern int qk_l2_put (uint8_t *buf, size_t len, bool extl2, uint64_t i,
                      uint64_t entry, uint64_t bitmap);
/* Extended L2 subcluster bitmaps: allocated bits 0..31, zero 32..63. */
extern uint64_t qk_l2_bitmap_make (uint32_t alloc, uint32_t zero);

/* A refcount block of refcount width 1 << order: n values (n at most the
 * entries of len bytes; the rest is zeroed). EINVAL if a value does not
 * fit the width. */
extern int qk_refblock_format (const uint64_t *refcounts, size_t n,
                               unsigned order, uint8_t *buf, size_t len);

/* Snapshot extra data from s (vm_state_size_large, disk_size, icount, as
 * far as s->extra_data_size reaches; bytes past 24 are zeroed). */
extern int qk_snapshot_extra_format (const struct qk_snapshot *s, uint8_t *buf,
                                     size_t len);

/* A bitmap directory entry (padded to 8): the inverse of qk_bitmap_parse.
 * extra (b.extra_data_size bytes) may be NULL for zeros. Returns the bytes
 * written (qk_bitmap_entry_size), or -1. */
extern size_t qk_bitmap_entry_size (uint32_t extra, size_t namelen);
extern ssize_t qk_bitmap_format (const struct qk_bitmap_raw *r,
                                 const uint8_t *extra, uint8_t *buf,
                                 size_t len);

#endif
