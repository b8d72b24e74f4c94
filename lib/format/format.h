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
/* The entry masks and flags (QK_L1E_*, QK_L2E_*, QK_OFLAG_*, QK_REFT_*,
 * QK_L2_BITMAP_ALL_ALLOC) are in lib/qcowkit.h, for the raw tables. */

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

/* ---- refcounts ----
 * Refcount block entries of every width (refcount_order 0..6). Sub-byte
 * widths pack from the least significant bit; 16/32/64 are big-endian.
 * Inline: the checker gets and sets one per host cluster, twice. */
static inline __attribute__ ((always_inline)) uint64_t
qk_refblock_get (const uint8_t *blk, unsigned order, uint64_t idx)
{
  switch (order) {
  case 0: return (blk[idx / 8] >> (idx % 8)) & 1;
  case 1: return (blk[idx / 4] >> (2 * (idx % 4))) & 3;
  case 2: return (blk[idx / 2] >> (4 * (idx % 2))) & 15;
  case 3: return blk[idx];
  case 4: return be16_get (blk + 2 * idx);
  case 5: return be32_get (blk + 4 * idx);
  case 6: return be64_get (blk + 8 * idx);
  }
  return 0;
}

/* The first index in [k, end) of the array of refcounts blk whose count
 * is not zero, or end. Zero runs (a sparse file's clusters, the ranges
 * of a refcount table's missing blocks) go 4 KiB, then 8 bytes, at a
 * time. */
extern uint64_t qk_refblock_next_used (const uint8_t *blk, unsigned order,
                                       uint64_t k, uint64_t end);

/* The same over an array with a byte per 4 KiB of it (QK_REFPG_SHIFT),
 * nonzero where a count may be (the in-memory refcount table marks the
 * pages it writes): the unmarked pages, which hold none, are not read.
 * A count on an unmarked page is missed, so every writer marks. A sparse
 * file's table is mostly pages never written, and reading them would map
 * (fault in) each page: megabytes per scan. pg NULL: every page read. */
#define QK_REFPG_SHIFT 12
extern uint64_t qk_refblock_next_used_pg (const uint8_t *blk,
                                          const uint8_t *pg, unsigned order,
                                          uint64_t k, uint64_t end);

static inline __attribute__ ((always_inline)) void
qk_refblock_set (uint8_t *blk, unsigned order, uint64_t idx, uint64_t v)
{
  switch (order) {
  case 0: case 1: case 2:
    {
      unsigned bits = 1U << order, per = 8 / bits, shift;
      uint8_t mask = (1U << bits) - 1;
      shift = bits * (idx % per);
      blk[idx / per] = (blk[idx / per] & ~(mask << shift))
                       | ((v & mask) << shift);
    }
    break;
  case 3: blk[idx] = v; break;
  case 4: be16_put (blk + 2 * idx, v); break;
  case 5: be32_put (blk + 4 * idx, v); break;
  case 6: be64_put (blk + 8 * idx, v); break;
  }
}

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
/* ---- a fresh refcount structure (format/refcount.c) ----
 * A refcount table and blocks placed contiguously from cluster start: the
 * table at [start, start + table_clusters), then one block per entry of
 * block_index (sorted refcount table indexes), up to end. need[] are the
 * table indexes whose clusters have references (any order, duplicates
 * allowed); the plan adds those that count the structure itself. */
struct qk_reflayout {
  unsigned cluster_bits, refcount_order;
  uint64_t per_block;        /* refcounts per block */
  uint64_t start, end;       /* clusters [start, end) */
  uint64_t table_clusters;
  uint64_t table_entries;    /* last block index + 1 */
  uint64_t *block_index;     /* n_blocks, sorted; owned */
  uint64_t n_blocks;
};
extern int qk_reflayout_plan (unsigned cluster_bits, unsigned refcount_order,
                              const uint64_t *need, size_t n_need,
                              uint64_t start, struct qk_reflayout *L);
extern void qk_reflayout_free (struct qk_reflayout *L);
/* The table (len = table_clusters clusters). */
extern int qk_reflayout_table (const struct qk_reflayout *L, uint8_t *out,
                               size_t len);
/* Block j (len = a cluster): counted[k] (refcounts at counted_order for
 * clusters 0 .. n_counted-1), plus 1 for the structure's own clusters.
 * EOVERFLOW when a refcount does not fit the width. */
extern int qk_reflayout_block (const struct qk_reflayout *L, uint64_t j,
                               const uint8_t *counted, unsigned counted_order,
                               uint64_t n_counted, uint8_t *out, size_t len);

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

/* ---- the header cluster (format/hdrcluster.c) ----
 * What qcow2_update_header writes, from a description: the fixed header
 * (h; backing_file_offset and _size are computed; version 2 always gets
 * 72 bytes, version 3 h.header_length bytes with unknown_header as the
 * bytes past 112), then the extensions in QEMU's order (backing format,
 * data file, crypto, feature names (version 3 only), bitmaps, exts[] in
 * the order given), the end marker and the backing name. buf is one
 * cluster (cs bytes), zeroed first; *used gets the bytes that matter.
 * ENOSPC when it does not fit. */
struct qk_hdr_ext {
  uint32_t magic;
  uint32_t len;
  const void *data;
};
struct qk_header_spec {
  struct qk_header h;
  const uint8_t *unknown_header;       /* h.header_length - 112 bytes */
  const char *backing;                 /* raw bytes, not NUL-terminated */
  size_t backing_len;
  const char *backing_format;          /* NULL: no extension */
  const char *data_file;
  const struct qk_crypto_ext *crypto;
  const struct qk_feature_name *fnames;
  size_t n_fnames;
  const struct qk_bitmaps_ext *bitmaps;
  const struct qk_hdr_ext *exts;
  size_t n_exts;
};
extern int qk_header_cluster_format (const struct qk_header_spec *s,
                                     uint8_t *buf, size_t cs, size_t *used);
/* A new empty overlay (format/create.c), as qemu-img create -f qcow2 -b
 * backing -F backing_format lays it out (v3, 64 KiB clusters, 16-bit
 * refcounts); *out (malloc'd, *len bytes) is the whole file. */
extern int qk_overlay_bytes (const char *backing, const char *backing_format,
                             uint64_t size, uint8_t **out, size_t *len);
/* QEMU's feature name table (qcow2_update_header), written by version 3
 * images with clusters above 4 KiB. */
#define QK_QEMU_FEATURES 8
extern const struct qk_feature_name qk_qemu_feature_table[QK_QEMU_FEATURES];

/* ---- image builder (format/build.c) ----
 * Builds a small valid image in memory: geometry and features are set at
 * creation, then guest writes (plain, compressed, zero, discard),
 * snapshots, bitmaps, backing and data file references, header
 * extensions; qk_builder_finish lays out every structure, computes the
 * refcounts exactly (each cluster once per reference, as qemu-img check
 * counts them; COPIED exactly where the refcount is 1) and returns the
 * file bytes. Deterministic: the same calls give the same bytes. */
struct qk_builder;
struct qk_build_config {
  uint32_t version;            /* 2 or 3 */
  uint32_t cluster_bits;
  uint32_t refcount_order;     /* v2: 4 */
  uint64_t size;               /* virtual size, a multiple of 512 */
  bool extended_l2;
  int compression_type;        /* QK_COMPRESSION_*: zstd sets incompat bit 3 */
  uint32_t header_length;      /* 0: 72 (v2), 112 (v3); 104, or > 112 */
  const uint8_t *unknown_header; /* header_length - 112 bytes, or NULL */
  bool feature_table;          /* v3: name the known feature bits */
  bool lazy_refcounts;
  bool dirty;                  /* v3: the dirty bit (needs lazy_refcounts) */
  uint64_t extra_compatible;   /* more bits (unknown ones, say) */
  uint64_t extra_autoclear;
  uint32_t reftable_clusters;  /* at least this many (0: what is needed) */
};
struct qk_build_snapshot {
  const char *id;              /* NULL: the next free number */
  const char *name;
  uint32_t date_sec, date_nsec;
  uint64_t vm_clock_nsec;
  uint64_t icount;             /* UINT64_MAX: disabled */
  uint32_t extra_data_size;    /* 0 (v2 only), 8, 16, 24 or more (bytes past
                                  24 are unknown data, filled from extra) */
  const uint8_t *extra;        /* the bytes past 24, or NULL for zeros */
  const uint8_t *vm_state;     /* saved after the disk (NULL: none) */
  uint64_t vm_state_size;
};

extern struct qk_builder *qk_builder_new (const struct qk_build_config *cfg);
extern void qk_builder_free (struct qk_builder *b);
/* format NULL: no backing format extension. content (len bytes) is what
 * the backing file reads as (zeros past it): used for copy-on-write of
 * partial writes and by qk_builder_read. */
extern int qk_builder_set_backing (struct qk_builder *b, const char *name,
                                   const char *format, const uint8_t *content,
                                   uint64_t len);
extern int qk_builder_set_data_file (struct qk_builder *b, const char *name,
                                     bool raw);
extern int qk_builder_add_feature_name (struct qk_builder *b, int type,
                                        unsigned bit, const char *name);
/* An extension written as given, after the known ones. */
extern int qk_builder_add_extension (struct qk_builder *b, uint32_t magic,
                                     const void *data, uint32_t len);
extern int qk_builder_write (struct qk_builder *b, uint64_t off,
                             const void *buf, size_t len);
/* Compress one whole guest cluster (the last one of a disk may be short:
 * the rest reads as zeros). ENOSPC if it does not compress. */
extern int qk_builder_write_compressed (struct qk_builder *b, uint64_t off,
                                        const void *buf, size_t len);
/* v3: make guest clusters (standard L2) or subclusters (extended L2) read
 * as zeros; a partial unit gets zeros written as data. keep_alloc keeps
 * (or, for standard L2, creates) the host cluster: a preallocated zero
 * cluster. */
extern int qk_builder_zero (struct qk_builder *b, uint64_t off, uint64_t len,
                            bool keep_alloc);
/* Unmap whole clusters (subclusters with extended L2): they read from the
 * backing file again. */
extern int qk_builder_discard (struct qk_builder *b, uint64_t off,
                               uint64_t len);
extern int qk_builder_resize (struct qk_builder *b, uint64_t size);
/* Take an internal snapshot of the current state; returns its index. */
extern int qk_builder_snapshot (struct qk_builder *b,
                                const struct qk_build_snapshot *s);
/* A persistent dirty bitmap; returns its index. */
extern int qk_builder_add_bitmap (struct qk_builder *b, const char *name,
                                  unsigned granularity_bits, uint32_t flags);
extern int qk_builder_bitmap_dirty (struct qk_builder *b, int bitmap,
                                    uint64_t off, uint64_t len);
/* What the guest reads (snapshot -1: the active state), backing included;
 * the model the image is built from. */
extern int qk_builder_read (struct qk_builder *b, int snapshot, uint64_t off,
                            void *buf, size_t len);
extern uint64_t qk_builder_size (const struct qk_builder *b, int snapshot);
/* Lay out and serialize. *image (and *data_file when a data file is set,
 * else NULL) are allocated; the caller frees them. */
extern int qk_builder_finish (struct qk_builder *b, uint8_t **image,
                              size_t *image_len, uint8_t **data_file,
                              size_t *data_file_len);

#endif
