/* libqcowkit: offline qcow2 image and libvirt metadata toolkit.
 *
 * Public API. See libqcowkit(3).
 *
 * Conventions:
 *  - Functions return -1 (or NULL) on error; the reason is in
 *    qk_get_error() / qk_get_errno() for the calling thread.
 *    errno EBADMSG means an on-disk structure is invalid.
 *  - A returned "const" pointer is borrowed from the image and lives until
 *    qk_image_close(); a returned non-const pointer belongs to the caller
 *    and is released with free(3).
 *  - The library never prints, never reads stdin and never exits.
 */
#ifndef QCOWKIT_H
#define QCOWKIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QK_VERSION_MAJOR 0
#define QK_VERSION_MINOR 1
#define QK_VERSION_MICRO 0

/* ---- errors ---- */
extern const char *qk_get_error (void);
extern int qk_get_errno (void);
extern const char *qk_version (void);

/* ---- on-disk constants ---- */
#define QK_QCOW2_MAGIC 0x514649fbU

#define QK_INCOMPAT_DIRTY           (1ULL << 0)
#define QK_INCOMPAT_CORRUPT         (1ULL << 1)
#define QK_INCOMPAT_DATA_FILE       (1ULL << 2)
#define QK_INCOMPAT_COMPRESSION     (1ULL << 3)
#define QK_INCOMPAT_EXTL2           (1ULL << 4)
#define QK_INCOMPAT_KNOWN           0x1fULL
#define QK_COMPAT_LAZY_REFCOUNTS    (1ULL << 0)
#define QK_COMPAT_KNOWN             0x1ULL
#define QK_AUTOCLEAR_BITMAPS        (1ULL << 0)
#define QK_AUTOCLEAR_DATA_FILE_RAW  (1ULL << 1)
#define QK_AUTOCLEAR_KNOWN          0x3ULL

#define QK_EXT_END             0x00000000U
#define QK_EXT_BACKING_FORMAT  0xe2792acaU
#define QK_EXT_FEATURE_TABLE   0x6803f857U
#define QK_EXT_BITMAPS         0x23852875U
#define QK_EXT_CRYPTO          0x0537be77U
#define QK_EXT_DATA_FILE       0x44415441U

#define QK_CRYPT_NONE 0
#define QK_CRYPT_AES  1
#define QK_CRYPT_LUKS 2

#define QK_COMPRESSION_DEFLATE 0
#define QK_COMPRESSION_ZSTD    1

#define QK_FEATURE_INCOMPAT  0
#define QK_FEATURE_COMPAT    1
#define QK_FEATURE_AUTOCLEAR 2

/* Entries of the raw tables (qk_image_l1, qk_image_read_l2,
 * qk_image_read_refcount_table): offsets and flags (QK_OFLAG_COPIED: the
 * refcount is 1; QK_OFLAG_ZERO: a standard L2 entry reads as zeros; with
 * extended L2 the second word's low 32 bits are the allocated
 * subclusters, QK_L2_BITMAP_ALL_ALLOC all of them). */
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

/* The qcow2 header, decoded. Fields absent from a short header are 0. */
struct qk_header {
  uint32_t magic;
  uint32_t version;
  uint64_t backing_file_offset;
  uint32_t backing_file_size;
  uint32_t cluster_bits;
  uint64_t size;
  uint32_t crypt_method;
  uint32_t l1_size;
  uint64_t l1_table_offset;
  uint64_t refcount_table_offset;
  uint32_t refcount_table_clusters;
  uint32_t nb_snapshots;
  uint64_t snapshots_offset;
  uint64_t incompatible_features;
  uint64_t compatible_features;
  uint64_t autoclear_features;
  uint32_t refcount_order;
  uint32_t header_length;
  uint8_t compression_type;
  /* Derived. */
  uint64_t cluster_size;
  uint32_t refcount_bits;
  uint32_t l2_entries;          /* entries per L2 table */
  uint32_t l2_entry_size;       /* 8, or 16 with extended L2 */
  uint32_t subclusters;         /* 1, or 32 with extended L2 */
  uint32_t unknown_header_bytes; /* header bytes past the fields we know */
};

/* One header extension, as stored. */
struct qk_extension {
  uint32_t magic;
  uint32_t length;          /* payload length as stored */
  uint64_t offset;          /* file offset of the 8-byte extension header */
  const uint8_t *data;      /* payload (length bytes) */
  const char *name;         /* "backing format", ..., or "unknown" */
};

struct qk_snapshot {
  uint64_t entry_offset;    /* file offset of this table entry */
  uint32_t entry_size;      /* bytes, padding included */
  uint64_t l1_table_offset;
  uint32_t l1_size;
  const char *id;
  const char *name;
  uint32_t date_sec;
  uint32_t date_nsec;
  uint64_t vm_clock_nsec;
  uint64_t vm_state_size;   /* the 64-bit one when present */
  uint32_t vm_state_size32;
  uint32_t extra_data_size;
  bool has_vm_state_size_large;
  bool has_disk_size;
  uint64_t disk_size;       /* virtual size at snapshot time (or current size) */
  bool has_icount;
  uint64_t icount;          /* UINT64_MAX: disabled */
};

#define QK_BITMAP_IN_USE        (1U << 0)
#define QK_BITMAP_AUTO          (1U << 1)
#define QK_BITMAP_EXTRA_COMPAT  (1U << 2)

struct qk_bitmap {
  uint64_t entry_offset;
  uint32_t entry_size;
  uint64_t table_offset;
  uint32_t table_size;
  uint32_t flags;
  uint8_t type;
  uint8_t granularity_bits;
  uint32_t extra_data_size;
  const char *name;
};

/* ---- opening ---- */
struct qk_image;

#define QK_OPEN_NO_BACKING   (1U << 0) /* do not open the backing chain */
#define QK_OPEN_NO_DATA_FILE (1U << 1) /* do not open an external data file */
#define QK_OPEN_FORCE        (1U << 2) /* read despite unknown incompatible bits */

/* A caller may supply its own way to open backing and data files (used by
 * the fuzzers to serve a fake file system). Returns an image source of the
 * given absolute or image-relative path, or NULL with qk error set. */
struct qk_source;
typedef struct qk_source *(*qk_open_fn) (void *opaque, const char *path);

/* Callers allocate this: zero all of it (= { 0 } or memset) before
 * setting fields. New fields take the reserved slots, so that the size,
 * and the ABI, never change; a zero reserved slot means "as before". */
struct qk_open_options {
  unsigned flags;
  unsigned max_chain_depth;  /* 0: default (64) */
  const char *confine_root;  /* when set, backing and data files must resolve below it */
  qk_open_fn open_fn;        /* NULL: the file system */
  void *open_opaque;
  uint64_t reserved[6];      /* zero */
  void *reserved_ptr[4];     /* NULL */
};

extern struct qk_image *qk_image_open (const char *path,
                                       const struct qk_open_options *opts);
extern struct qk_image *qk_image_open_memory (const void *buf, size_t len,
                                              const char *name,
                                              const struct qk_open_options *opts);
extern void qk_image_close (struct qk_image *img);

/* Image sources for qk_open_fn. */
extern struct qk_source *qk_source_file (const char *path);
extern struct qk_source *qk_source_memory (const void *buf, size_t len,
                                           const char *name);

/* ---- what was found ---- */
extern const char *qk_image_filename (const struct qk_image *img);
extern const char *qk_image_format (const struct qk_image *img); /* "qcow2", "raw" */
extern const struct qk_header *qk_image_header (const struct qk_image *img);
extern uint64_t qk_image_virtual_size (const struct qk_image *img);
extern int64_t qk_image_actual_size (const struct qk_image *img);
extern uint64_t qk_image_file_size (const struct qk_image *img);
extern const char *qk_image_feature_name (const struct qk_image *img,
                                          int type, unsigned bit);

extern size_t qk_image_extension_count (const struct qk_image *img);
extern const struct qk_extension *qk_image_extension (const struct qk_image *img,
                                                      size_t i);

/* Backing file: the name as stored, the path it resolves to, its format
 * (from the extension, else probed), and the opened image (or NULL when
 * not opened or not openable; see the warnings). */
extern const char *qk_image_backing_name (const struct qk_image *img);
extern const char *qk_image_backing_path (const struct qk_image *img);
extern const char *qk_image_backing_format (const struct qk_image *img);
extern struct qk_image *qk_image_backing (const struct qk_image *img);
extern const char *qk_image_data_file_name (const struct qk_image *img);

/* Things that could not be read or look wrong, found while opening.
 * Problems that make reads impossible are also warnings: the image still
 * opens so that what can be shown is shown. */
extern size_t qk_image_warning_count (const struct qk_image *img);
extern const char *qk_image_warning (const struct qk_image *img, size_t i);

/* Whether guest reads are possible, and if not why (a message). */
extern const char *qk_image_unreadable_reason (const struct qk_image *img);

extern size_t qk_image_snapshot_count (const struct qk_image *img);
extern const struct qk_snapshot *qk_image_snapshot (const struct qk_image *img,
                                                    size_t i);
extern bool qk_image_snapshots_ok (const struct qk_image *img);

extern size_t qk_image_bitmap_count (const struct qk_image *img);
extern const struct qk_bitmap *qk_image_bitmap (const struct qk_image *img,
                                                size_t i);

/* ---- raw tables (for dump) ---- */
/* Borrowed active L1 (NULL if unreadable). */
extern const uint64_t *qk_image_l1 (const struct qk_image *img, uint32_t *count);
/* Read the L2 table at a host offset: *count entries; with extended L2
 * each entry is two words (entry, bitmap). Caller frees *entries. */
extern int qk_image_read_l2 (struct qk_image *img, uint64_t l2_offset,
                             uint64_t **entries, size_t *count);
extern int qk_image_read_refcount_table (struct qk_image *img,
                                         uint64_t **entries, size_t *count);
extern int qk_image_read_refblock (struct qk_image *img, uint64_t offset,
                                   uint64_t **refcounts, size_t *count);
/* Read a snapshot's L1 table (caller frees). */
extern int qk_image_read_snapshot_l1 (struct qk_image *img, size_t i,
                                      uint64_t **entries, uint32_t *count);
extern int qk_image_read_bitmap_table (struct qk_image *img, size_t i,
                                       uint64_t **entries, uint32_t *count);

/* ---- guest view ---- */
/* Read through the L1 of an internal snapshot instead of the active one
 * (name or ID; NULL selects the active L1 again). */
extern int qk_image_select_snapshot (struct qk_image *img, const char *name_or_id);

extern int qk_image_read (struct qk_image *img, void *buf, size_t len,
                          uint64_t offset);

/* Extents with the meaning of `qemu-img map --output=json`. */
struct qk_extent {
  uint64_t start;
  uint64_t length;
  unsigned depth;
  bool present;
  bool zero;
  bool data;
  bool compressed;
  bool has_offset;
  uint64_t offset;
  const char *filename;  /* file holding the data when has_offset */
};
typedef int (*qk_extent_fn) (void *opaque, const struct qk_extent *e);
extern int qk_image_map (struct qk_image *img, uint64_t start, uint64_t length,
                         qk_extent_fn fn, void *opaque);

/* ---- consistency check ---- */
enum qk_problem_class {
  QK_CLASS_INFO = 0,
  QK_CLASS_WARNING = 1,
  QK_CLASS_LEAK = 2,
  QK_CLASS_CORRUPTION = 3,
  QK_CLASS_ERROR = 4,        /* the check could not complete some part */
};

#define QK_NONE UINT64_MAX   /* a field of struct qk_problem that is unset */

/* One problem found. Everything a repair needs: where (host offset, the
 * table and index holding the bad entry, the guest offset), what was
 * expected and what was found. Unset fields are QK_NONE. */
struct qk_problem {
  uint32_t code;             /* 0xPPNNNN, see qcowkit-problems(7) */
  const char *name;          /* e.g. "LEAK" */
  enum qk_problem_class cls;
  const char *message;       /* one line, valid during the callback */
  uint64_t host_offset;
  uint64_t length;
  uint64_t guest_offset;
  uint64_t guest_offset2;    /* a second guest offset (duplicate mappings) */
  uint64_t table_offset;     /* the table holding the entry */
  uint64_t index;            /* the entry's index in it */
  uint64_t expected;
  uint64_t found;
  uint64_t count;            /* qemu-img units this adds to its counters */
  /* libvirt metadata problems (qk_meta_check): the moment the problem is
   * about, when it is about one; NULL otherwise. New fields go after
   * these (the library allocates the structure). */
  const char *subject_kind;  /* "snapshot" or "checkpoint" */
  const char *subject;       /* its name */
  const char *file;          /* the file it was read from; with no
                                subject, the image the problem is in
                                (INT_SNAPSHOT_UNKNOWN, BITMAP_UNKNOWN) */
};
typedef int (*qk_problem_fn) (void *opaque, const struct qk_problem *p);

struct qk_check_result {
  /* qemu-img check's counters, same meanings */
  uint64_t check_errors;
  uint64_t corruptions;
  uint64_t leaks;
  uint64_t image_end_offset;
  uint64_t total_clusters;
  uint64_t allocated_clusters;
  uint64_t fragmented_clusters;
  uint64_t compressed_clusters;
  /* ours */
  uint64_t warnings;
  uint64_t infos;
  uint64_t l2_tables_read;   /* distinct L2 tables read */
  /* new counters take these slots (the size, and the ABI, never change);
   * qk_check_run zeroes the whole structure */
  uint64_t reserved[16];
};

#define QK_CHECK_DEEP (1U << 0)  /* decompress every compressed cluster */

/* Check one qcow2 image (not its backing files). Returns 0 when the check
 * ran (problems go to fn, totals to *res), -1 on an API failure. */
extern int qk_check_run (struct qk_image *img, unsigned flags,
                         qk_problem_fn fn, void *opaque,
                         struct qk_check_result *res);
/* The problem table: rows 0 .. count-1. */
extern size_t qk_problem_count (void);
extern int qk_problem_info (size_t i, uint32_t *code, const char **name,
                            enum qk_problem_class *cls,
                            const char **description);
extern const char *qk_problem_class_name (enum qk_problem_class cls);

/* ---- image repair ----
 * A repair runs the check, groups what can be fixed into fixes (one
 * question each, e2fsck's latch groups: "Free 10512 leaked clusters?"),
 * asks, and makes the fixes answered yes through a write stack: the image
 * file opened read-write under QEMU's write locks (refused with EBUSY
 * while QEMU holds it), an undo journal (the old bytes of every range,
 * fsynced before it is first overwritten), and QCOWKIT_FAULT injection
 * for tests. It then checks again. The protocol (the order of writes and
 * what a crash after each leaves) is stated in lib/repair/repair.c.
 * Settings are made with setters, so that new ones never change the ABI. */
struct qk_repair;

enum qk_repair_mode {
  QK_REPAIR_NONE = 0,   /* report what would be fixed; open read-only */
  QK_REPAIR_PREEN = 1,  /* fixes that cannot lose guest data, unasked */
  QK_REPAIR_ALL = 2,    /* every fix, unasked */
  QK_REPAIR_ASK = 3,    /* ask the callback for each fix */
};

enum qk_answer { QK_ANSWER_NO = 0, QK_ANSWER_YES = 1, QK_ANSWER_ABORT = 2 };

#define QK_FIX_PREEN      (1U << 0) /* cannot lose guest data: preen makes it */
#define QK_FIX_LOSES_DATA (1U << 1) /* guest ranges are lost (see lost) */
#define QK_FIX_LEAKS      (1U << 2) /* what qemu-img check -r leaks fixes */

/* One fix, offered or made. */
struct qk_fix {
  uint32_t code;          /* 0x20NNNN, see qcowkit-repair(1) */
  const char *name;       /* e.g. "FREE_LEAKS" */
  unsigned flags;         /* QK_FIX_* */
  uint64_t count;         /* how many items (clusters, entries) */
  const char *prompt;     /* "Free 3 leaked clusters?" */
  const char *done;       /* "Freed 3 leaked clusters." */
  enum qk_answer answer;  /* what was answered (NO in QK_REPAIR_NONE) */
  bool made;              /* the fix was written (and flushed) */
  uint64_t leaks_fixed, corruptions_fixed;  /* qemu-img's units */
};
typedef enum qk_answer (*qk_fix_fn) (void *opaque, const struct qk_fix *f);

/* A guest range whose contents a fix changed or could not keep. */
struct qk_lost {
  int64_t snapshot;       /* -1: the active image, else the snapshot index */
  uint64_t guest_offset;
  uint64_t length;
  const char *reason;
};

#define QK_REPAIR_LEAKS_ONLY (1U << 0) /* only leaks (check -r leaks) */
/* Bitmaps left in use are removed (BITMAPS_DROP) instead of being kept
 * and marked fully dirty (BITMAPS_FULL, the default). */
#define QK_REPAIR_DROP_BITMAPS (1U << 1)

extern struct qk_repair *qk_repair_new (void);
extern void qk_repair_free (struct qk_repair *r);
extern int qk_repair_set_mode (struct qk_repair *r, enum qk_repair_mode mode);
extern int qk_repair_set_flags (struct qk_repair *r, unsigned flags);
/* Journal path (created; must not exist), or NULL for none (default). */
extern int qk_repair_set_undo (struct qk_repair *r, const char *path);
extern int qk_repair_set_ask (struct qk_repair *r, qk_fix_fn fn, void *opaque);
/* Problems of the first check go to fn (as qk_check_run's), and notes of
 * each change made ("Repairing cluster 5 refcount=2 reference=1", with
 * the code and name of the fix, class QK_CLASS_INFO) to note; either may
 * be NULL. */
extern int qk_repair_set_report (struct qk_repair *r, qk_problem_fn fn,
                                 qk_problem_fn note, void *opaque);
/* Past per_code problems of one code (0: no limit, the default), the
 * first check's problems reach fn with an empty message: a caller that
 * shows only that many lines per code saves formatting the rest. */
extern int qk_repair_set_report_limit (struct qk_repair *r,
                                       uint64_t per_code);
extern int qk_repair_set_open_options (struct qk_repair *r,
                                       const struct qk_open_options *opts);
/* Repair the image at path. 0 when the repair ran (whatever remains is
 * in the results), -1 on a failure (EBUSY: the image is in use; EIO...):
 * then what was written before the failure is in the journal. */
extern int qk_repair_run (struct qk_repair *r, const char *path);
/* Results. */
extern size_t qk_repair_fix_count (const struct qk_repair *r);
extern const struct qk_fix *qk_repair_fix (const struct qk_repair *r,
                                           size_t i);
extern size_t qk_repair_lost_count (const struct qk_repair *r);
extern const struct qk_lost *qk_repair_lost (const struct qk_repair *r,
                                             size_t i);
/* The first check (before) and the last (after). */
extern const struct qk_check_result *qk_repair_before (const struct qk_repair *r);
extern const struct qk_check_result *qk_repair_after (const struct qk_repair *r);
/* Whether anything was written. */
extern bool qk_repair_wrote (const struct qk_repair *r);
/* The fix table (rows 0 .. count-1). */
extern size_t qk_fix_count (void);
extern int qk_fix_info (size_t i, uint32_t *code, const char **name,
                        unsigned *flags, const char **description);

/* Put back the bytes a repair overwrote: replay the journal at
 * journal_path onto the image at image_path (under QEMU's write locks).
 * Refuses (EINVAL) a journal of another image and (EALREADY) one already
 * replayed; QK_UNDO_FORCE accepts another file identity (a copy) when its
 * content matches the journal. */
#define QK_UNDO_FORCE (1U << 0)
extern int qk_undo_apply (const char *journal_path, const char *image_path,
                          unsigned flags);
/* ---- end of image repair ---- */

/* ---- image transforms ----
 * Long transforms (commit, rebase) report progress through this, when
 * given: done of total units (clusters), total known from the start. */
typedef void (*qk_progress_fn) (void *opaque, uint64_t done, uint64_t total);

/* ---- amend (see qcowkit-amend(1)) ----
 * Change an image's version (compat 0.10 = 2, 1.1 = 3) and refcount
 * width in place, as `qemu-img amend -o compat=...,refcount_bits=...`
 * does, in QEMU's order (upgrade, width, downgrade last) and with its
 * refusals, all decided before the first write (a refused amend leaves
 * the file untouched). When it allocates or recounts, the image must
 * check without errors and leaked clusters (an interrupted run leaves
 * some) are freed first; a header-only upgrade skips the check. The
 * crash-safety protocol is stated in lib/xform/amend.c. */
struct qk_amend_options {
  unsigned compat;          /* 0: keep; 2 (0.10) or 3 (1.1) */
  unsigned refcount_bits;   /* 0: keep; 1, 2, 4, 8, 16, 32 or 64 */
  const char *undo_path;    /* NULL: no undo journal (qcowkit undo) */
  unsigned flags;           /* QK_AMEND_* */
  uint64_t reserved[4];     /* zero */
};
#define QK_AMEND_DRY_RUN (1U << 0)  /* decide and report, write nothing */
struct qk_amend_result {
  unsigned old_version, new_version;
  unsigned old_refcount_bits, new_refcount_bits;
  uint64_t leaks_freed;             /* leaked clusters freed first */
  uint64_t snapshots_rewritten;     /* entries given v3 extra data */
  uint64_t zero_allocated;          /* zero clusters made data (backing) */
  uint64_t zero_unmapped;           /* zero clusters made unallocated */
  uint64_t zero_prealloc;           /* preallocated zero clusters made data */
  uint64_t writes;                  /* writes made */
  bool changed;                     /* the image was written */
  bool checked;                     /* it was checked first (all but a
                                       header-only upgrade) */
  uint64_t reserved[4];
};
extern int qk_amend (const char *path, const struct qk_amend_options *o,
                     struct qk_amend_result *res);

/* ---- rebase (see qcowkit-rebase(1)) ----
 * Change the backing file recorded in an image, as qemu-img rebase does.
 * Safe mode first copies into the image every cluster it does not hold
 * itself where the old backing chain and the new backing file differ,
 * so that the guest reads the same through either; QK_REBASE_UNSAFE only
 * rewrites the name. The protocol is stated in lib/xform/rebase.c. */
struct qk_rebase_options {
  const char *backing;        /* the new name as recorded; "" detaches */
  const char *backing_format; /* "qcow2" or "raw"; needed with a name */
  const char *root;           /* NULL, or backing files must resolve below */
  const char *undo_path;      /* NULL: no undo journal */
  unsigned flags;             /* QK_REBASE_* */
  qk_progress_fn progress;    /* NULL: none */
  void *progress_opaque;
  uint64_t reserved[4];       /* zero */
};
#define QK_REBASE_UNSAFE  (1U << 0)  /* the name only (qemu-img rebase -u) */
#define QK_REBASE_DRY_RUN (1U << 1)  /* compare and report, write nothing */
struct qk_rebase_result {
  uint64_t clusters_compared;  /* clusters read through both backings */
  uint64_t clusters_copied;    /* given the old chain's data */
  uint64_t leaks_freed;
  bool changed;
  uint64_t reserved[4];
};
extern int qk_rebase (const char *path, const struct qk_rebase_options *o,
                      struct qk_rebase_result *res);

/* ---- commit (see qcowkit-commit(1)) ----
 * Merge what an overlay (and, with base, the images between) holds into
 * a lower image of its chain, as qemu-img commit does, offline: the base
 * grows when smaller, then gets every cluster something above it
 * allocates, as the top reads it; then the top is emptied (unless
 * QK_COMMIT_KEEP, or base is given, as qemu-img -b implies -d). The
 * guest reads the same through the top at every point. The protocol is
 * stated in lib/xform/commit.c. */
struct qk_commit_options {
  const char *base;           /* NULL: the backing file; else an image of
                                 the chain (its recorded name or the same
                                 file) */
  const char *root;           /* NULL, or backing files must resolve below */
  const char *undo_path;      /* NULL, or journals UNDO.base and UNDO.top */
  unsigned flags;             /* QK_COMMIT_* */
  qk_progress_fn progress;    /* NULL: none */
  void *progress_opaque;
  uint64_t reserved[4];       /* zero */
};
#define QK_COMMIT_KEEP    (1U << 0)  /* do not empty the top (-d) */
#define QK_COMMIT_DRY_RUN (1U << 1)  /* count, write nothing */
struct qk_commit_result {
  const char *base_filename;  /* valid during the call only */
  uint64_t clusters_copied;   /* base clusters written */
  uint64_t leaks_freed;       /* in the base, first */
  uint64_t bitmaps_marked;    /* bitmaps of the base marking the commit */
  bool base_grown;
  bool top_emptied;
  bool changed;
  uint64_t reserved[4];
};
extern int qk_commit (const char *path, const struct qk_commit_options *o,
                      struct qk_commit_result *res);
/* ---- internal snapshots: delete, apply (see qcowkit-snapshot(1)) ----
 * qk_snapshot_delete removes an internal snapshot as qemu-img snapshot -d
 * does (found by name, then by ID): the table rewritten without it, the
 * refcounts of what only it referenced dropped, QCOW_OFLAG_COPIED set in
 * the active tables where a refcount became 1. qk_snapshot_apply makes
 * the active state a copy of one, as qemu-img snapshot -a (found by ID,
 * then by name): the virtual size becomes the snapshot's, the refcounts
 * follow. Both check the image first (errors refuse; leaks are freed).
 * The protocol is stated in lib/xform/snapshot.c. */
struct qk_snapshot_options {
  const char *undo_path;      /* NULL: no undo journal */
  unsigned flags;             /* QK_SNAPSHOT_* */
  uint64_t reserved[4];       /* zero */
};
#define QK_SNAPSHOT_DRY_RUN (1U << 0)  /* find and count, write nothing */
struct qk_snapshot_result {
  char *id, *name;            /* the snapshot found (qk_snapshot_result_clear
                                 frees them) */
  uint64_t clusters_freed;    /* refcounts that dropped to 0 */
  uint64_t leaks_freed;       /* before, by the check */
  uint64_t old_size, new_size;  /* apply: virtual size before and after */
  bool changed;               /* the file was written */
  uint64_t reserved[4];
};
extern int qk_snapshot_delete (const char *path, const char *snapshot,
                               const struct qk_snapshot_options *o,
                               struct qk_snapshot_result *res);
extern int qk_snapshot_apply (const char *path, const char *snapshot,
                              const struct qk_snapshot_options *o,
                              struct qk_snapshot_result *res);
extern void qk_snapshot_result_clear (struct qk_snapshot_result *res);
/* ---- end of image transforms ---- */

/* ---- libvirt metadata ---- */
/* A domain's libvirt snapshot and checkpoint metadata (see
 * qcowkit-meta(1)): loaded from the per-file layout libvirt writes
 * (KIND/DOMAIN/NAME.xml) or the bulk layout (KIND/DOMAIN.xml), checked,
 * cross-checked against the images and converted between the two. */
#define QK_META_SNAPSHOT   0
#define QK_META_CHECKPOINT 1

#define QK_META_LAYOUT_NONE     0   /* no metadata of this kind */
#define QK_META_LAYOUT_PER_FILE 1   /* KIND/DOMAIN/NAME.xml, <active> marks current */
#define QK_META_LAYOUT_BULK     2   /* KIND/DOMAIN.xml, current='NAME' on the root */

#define QK_META_NONE SIZE_MAX       /* no such index */

struct qk_meta;

struct qk_meta_options {
  const char *libvirt_root;  /* embedded driver root: ROOT/etc/qemu, ROOT/lib/qemu */
  const char *config_dir;    /* domain definitions (default /etc/libvirt/qemu) */
  const char *state_dir;     /* holds snapshot/ and checkpoint/ (default
                                /var/lib/libvirt/qemu) */
  const char *sysroot;       /* every absolute path, image paths included,
                                resolves under it */
  uint64_t max_file_size;    /* per file or bulk element; 0: 16 MiB */
  unsigned max_depth;        /* XML nesting bound; 0: 1024 (libxml2's own
                                limit, 257, applies below it) */
};

/* A <disk> of a snapshot's or checkpoint's <disks> (or <revertDisks>). */
struct qk_meta_disk {
  const char *name;          /* name=: target dev or path */
  const char *mode;          /* snapshot= or checkpoint= (NULL: absent) */
  const char *type;          /* type= (file, block, network) */
  const char *source;        /* external: <source file= or dev=> */
  const char *format;        /* <driver type=> */
  const char *bitmap;        /* checkpoints: bitmap= */
  bool delete_in_progress;   /* <snapshotDeleteInProgress/> */
  bool revert;               /* listed under <revertDisks> */
};

/* A disk of a <domain> (the definition's, or one recorded in a moment). */
struct qk_meta_domain_disk {
  const char *target;        /* <target dev=> */
  const char *device;        /* device= (disk, cdrom, ...) */
  const char *source;        /* <source file= or dev=> */
  const char *format;        /* <driver type=> */
};

/* Why virsh's tree (snapshot-list --tree, checkpoint-list --tree) does not
 * show a moment: libvirt 9.0 keeps such moments, but virsh draws the tree
 * from the roots by parent name, so a moment whose parent chain does not
 * reach a root is hidden with its whole subtree. */
#define QK_META_DETACHED_NONE           0  /* shown (or not loaded) */
#define QK_META_DETACHED_MISSING_PARENT 1  /* names a parent not loaded */
#define QK_META_DETACHED_SELF_PARENT    2  /* is its own parent */
#define QK_META_DETACHED_CYCLE          3  /* in a cycle of parent links */
#define QK_META_DETACHED_BELOW          4  /* below a detached moment */

/* One snapshot or checkpoint. Links are what libvirt makes at load:
 * moments with a missing parent, their own parent, or in a cycle are
 * roots (see detached). */
struct qk_meta_moment {
  int kind;                  /* QK_META_SNAPSHOT or QK_META_CHECKPOINT */
  const char *name;          /* NULL when missing */
  const char *parent;        /* <parent><name>, NULL for none */
  const char *state;         /* snapshots: <state> */
  int64_t creation_time;
  bool has_creation_time;
  int active;                /* <active>: 0, 1, or -1 when absent */
  bool loaded;               /* libvirt would load it (else skipped) */
  const char *file;          /* the file it was read from */
  uint64_t offset;           /* its bytes in that file */
  uint64_t length;
  const char *domain_uuid;   /* <domain><uuid> (NULL: none) */
  size_t n_disks;
  const struct qk_meta_disk *disks;
  size_t n_domain_disks;     /* disks of its <domain> */
  const struct qk_meta_domain_disk *domain_disks;
  size_t parent_index;       /* QK_META_NONE for roots */
  size_t first_child;
  size_t next_sibling;
  int detached;              /* QK_META_DETACHED_*; new fields go after
                                it (the library allocates the struct) */
};

extern struct qk_meta *qk_meta_open (const char *domain,
                                     const struct qk_meta_options *opts);
extern void qk_meta_close (struct qk_meta *m);
extern const char *qk_meta_domain_name (const struct qk_meta *m);
extern const char *qk_meta_domain_uuid (const struct qk_meta *m);
extern size_t qk_meta_domain_disk_count (const struct qk_meta *m);
extern const struct qk_meta_domain_disk *qk_meta_domain_disk (const struct qk_meta *m,
                                                              size_t i);
extern int qk_meta_layout (const struct qk_meta *m, int kind);
/* The directory (per-file) or file (bulk) holding this kind, as a path on
 * the host (sysroot applied). */
extern const char *qk_meta_location (const struct qk_meta *m, int kind);
extern size_t qk_meta_count (const struct qk_meta *m, int kind);
extern const struct qk_meta_moment *qk_meta_moment (const struct qk_meta *m,
                                                    int kind, size_t i);
/* The index of the current moment as libvirt would see it, or QK_META_NONE. */
extern size_t qk_meta_current (const struct qk_meta *m, int kind);

#define QK_META_CHECK_IMAGES (1U << 0)  /* cross-check against the images */

/* Report every problem through fn (codes 0x10NNNN-0x12NNNN). Returns the
 * number of problems of class CORRUPTION or ERROR, or -1 on an API failure. */
extern int qk_meta_check (struct qk_meta *m, unsigned flags,
                          qk_problem_fn fn, void *opaque);

#define QK_META_CONVERT_NO_BACKUP (1U << 0) /* do not keep the old layout */
#define QK_META_CONVERT_FORCE     (1U << 1) /* despite load problems */

/* Convert one kind to layout (QK_META_LAYOUT_PER_FILE or _BULK),
 * crash-safely; completes or rolls back an interrupted conversion first.
 * Refuses (EBUSY) while a libvirt daemon for the location appears to run.
 * The metadata of m is reloaded afterwards. */
extern int qk_meta_convert (struct qk_meta *m, int kind, int layout,
                            unsigned flags);
/* Whether a libvirt daemon appears to run for m's location: 1 (and *why, a
 * message to free), 0, or -1. */
extern int qk_meta_daemon_running (const struct qk_meta *m, char **why);

/* ---- metadata repair ----
 * qk_meta_repair fixes what qk_meta_check finds in the relations between
 * moments, with the answer modes of image repair (enum qk_repair_mode,
 * one question per fix through qk_fix_fn; codes 0x21NNNN, see
 * qcowkit-meta(1)). Each replaced, renamed or removed file is first
 * copied into a backup directory next to the layout
 * (KIND/.DOMAIN.qk-repair.N/); every write is durable (temporary file,
 * fsync, rename, directory fsync). Refused (EBUSY) while a libvirt daemon
 * or embedded driver holds the location. The protocol is stated in
 * lib/meta/repair.c. */
struct qk_meta_repair;

/* Drop metadata whose snapshot data (internal snapshot, external
 * overlay) or checkpoint bitmap is gone in every disk. */
#define QK_META_REPAIR_DROP_ORPHANED (1U << 0)

/* One file changed (or, in QK_REPAIR_NONE, that would change). */
struct qk_meta_change {
  int kind;                /* QK_META_SNAPSHOT or QK_META_CHECKPOINT */
  const char *action;      /* "edit", "rename" or "remove" */
  const char *path;        /* host path of the file */
  const char *new_path;    /* rename: its new host path, else NULL */
  const char *backup;      /* host path of the copy of the old file, or NULL */
  const char *diff;        /* a unified diff of the change, or NULL */
};
typedef int (*qk_meta_change_fn) (void *opaque, const struct qk_meta_change *c);

extern struct qk_meta_repair *qk_meta_repair_new (void);
extern void qk_meta_repair_free (struct qk_meta_repair *r);
extern int qk_meta_repair_set_mode (struct qk_meta_repair *r,
                                    enum qk_repair_mode mode);
extern int qk_meta_repair_set_flags (struct qk_meta_repair *r, unsigned flags);
extern int qk_meta_repair_set_ask (struct qk_meta_repair *r, qk_fix_fn fn,
                                   void *opaque);
extern int qk_meta_repair_set_changes (struct qk_meta_repair *r,
                                       qk_meta_change_fn fn, void *opaque);
/* Repair m's metadata (both kinds); m is reloaded afterwards. 0 when the
 * repair ran (check again for what remains), -1 on an error (nothing
 * after the failing step was written), or when stopped (QK_ANSWER_ABORT:
 * errno ECANCELED; the fixes answered before were made). */
extern int qk_meta_repair_run (struct qk_meta_repair *r, struct qk_meta *m);
extern size_t qk_meta_repair_fix_count (const struct qk_meta_repair *r);
extern const struct qk_fix *qk_meta_repair_fix (const struct qk_meta_repair *r,
                                                size_t i);
/* The fix table (rows 0 .. count-1) for --list-fixes and the man page. */
extern size_t qk_meta_fix_count (void);
extern int qk_meta_fix_info (size_t i, uint32_t *code, const char **name,
                             unsigned *flags, const char **description);

/* ---- metadata delete ----
 * Delete a snapshot offline (see qcowkit-meta(1) and the protocol in
 * lib/meta/delete.c): an external snapshot's overlay is merged into the
 * image it froze (qk_commit, then qk_rebase -u of the images above), the
 * domain definition follows when the overlay was its disk, and the
 * metadata is updated as libvirt updates it (children reparented, their
 * sources, current moved). fn receives every file changed (as
 * qk_meta_repair's) and every image operation (kind -1, action "commit",
 * "rebase" with new_path the new backing file, "unused" for an overlay
 * no longer used, left in place). */
#define QK_META_DELETE_METADATA_ONLY (1U << 0) /* the metadata only */
#define QK_META_DELETE_CHILDREN      (1U << 1) /* and its descendants */
#define QK_META_DELETE_CHILDREN_ONLY (1U << 2) /* its descendants only */
#define QK_META_DELETE_DRY_RUN       (1U << 3) /* report, write nothing */
extern int qk_meta_delete (struct qk_meta *m, const char *snapshot,
                           unsigned flags, qk_meta_change_fn fn,
                           void *opaque);

/* ---- metadata revert ----
 * Revert offline to a disk-only external snapshot (see qcowkit-meta(1)
 * and lib/meta/revert.c): a new overlay on each image the snapshot froze,
 * recorded in its <revertDisks>, the snapshot made current, the domain
 * definition's disks pointed at the new overlays. Children are kept (the
 * next snapshot starts a new branch), or their metadata removed with
 * QK_META_REVERT_DISCARD_CHILDREN. fn receives each file changed and
 * each image operation (kind -1: "create" path on new_path, "kept" for
 * the disk the domain used before). */
#define QK_META_REVERT_DISCARD_CHILDREN (1U << 0)
#define QK_META_REVERT_DRY_RUN          (1U << 1)
extern int qk_meta_revert (struct qk_meta *m, const char *snapshot,
                           unsigned flags, qk_meta_change_fn fn,
                           void *opaque);

/* The metadata problem table (rows 0 .. count-1), like qk_problem_info. */
extern size_t qk_meta_problem_count (void);
extern int qk_meta_problem_info (size_t i, uint32_t *code, const char **name,
                                 enum qk_problem_class *cls,
                                 const char **description);
/* ---- end of libvirt metadata ---- */

/* ---- a host's domains (see libqcowkit(3), qcowkit-audit(1)) ----
 * Every libvirt QEMU domain of a host: the persistent definitions
 * (CONFIG/NAME.xml) and the running ones' status XML (RUN/NAME.xml, a
 * <domstatus> holding the live <domain>), in the layout the options
 * select: the system daemon's (/etc/libvirt/qemu, /run/libvirt/qemu), an
 * embedded driver's root (ROOT/etc/qemu, ROOT/run/qemu), the session
 * daemon's (QK_META_LIST_SESSION), each under opts->sysroot when set.
 * Every path, image paths included, is resolved under the sysroot.
 * A definition that cannot be read (too large, not well-formed, a name
 * that cannot be a file name) is a warning, never a failure. */
struct qk_meta_domains;

#define QK_META_LIST_SESSION (1U << 0) /* $XDG_CONFIG_HOME/libvirt/qemu,
                                          $XDG_RUNTIME_DIR/libvirt/qemu/run */

#define QK_META_DISK_FILE    0
#define QK_META_DISK_BLOCK   1
#define QK_META_DISK_NETWORK 2
#define QK_META_DISK_VOLUME  3
#define QK_META_DISK_OTHER   4   /* dir, nvme, vhostuser, unknown: see type_name */

/* One image of a disk's <backingStore> chain, top first. */
struct qk_meta_backing {
  int type;                 /* QK_META_DISK_* */
  const char *type_name;    /* type= as written (NULL: absent) */
  const char *format;       /* <format type=> */
  const char *source;       /* file=, dev=, name= (network), POOL/VOLUME */
  const char *path;         /* file and block: the host path (sysroot
                               applied), NULL otherwise or unresolvable */
};

/* A <disk> of a domain (the status XML's when it runs, else the
 * definition's). */
struct qk_meta_host_disk {
  const char *target;       /* <target dev=> */
  const char *device;       /* device= (disk, cdrom, floppy, lun) */
  int type;                 /* QK_META_DISK_* */
  const char *type_name;    /* type= as written ("file" when absent) */
  const char *format;       /* <driver type=> (NULL: absent) */
  const char *source;       /* as written; NULL for an empty drive */
  const char *protocol;     /* network: protocol= */
  const char *path;         /* file and block: the host path, NULL
                               otherwise or when it cannot resolve */
  bool readonly;            /* <readonly/> */
  bool shareable;           /* <shareable/> */
  size_t n_backing;         /* <backingStore> chain, as libvirt recorded it */
  const struct qk_meta_backing *backing;
};

struct qk_meta_host_domain {
  const char *name;         /* the file name (without .xml) */
  const char *uuid;         /* <uuid> (NULL: none) */
  bool persistent;          /* a definition exists */
  bool running;             /* a status XML exists (libvirt's record; not
                               proof that its QEMU still runs) */
  int64_t pid;              /* <domstatus pid=>, 0 when unknown */
  const char *config_path;  /* host path of the definition (NULL: none) */
  const char *status_path;  /* host path of the status XML (NULL: none) */
};

/* run_dir: NULL for the layout's. Returns NULL only on an API failure. */
extern struct qk_meta_domains *qk_meta_list_domains (const struct qk_meta_options *opts,
                                                     const char *run_dir,
                                                     unsigned flags);
extern void qk_meta_domains_free (struct qk_meta_domains *l);
/* Domains, sorted by name. */
extern size_t qk_meta_domains_count (const struct qk_meta_domains *l);
extern const struct qk_meta_host_domain *qk_meta_domains_get (const struct qk_meta_domains *l,
                                                              size_t i);
extern size_t qk_meta_domains_disk_count (const struct qk_meta_domains *l,
                                          size_t i);
extern const struct qk_meta_host_disk *qk_meta_domains_disk (const struct qk_meta_domains *l,
                                                             size_t i, size_t j);
/* The options that make qk_meta_open find these domains' metadata
 * (strings borrowed from l). */
extern int qk_meta_domains_options (const struct qk_meta_domains *l,
                                    struct qk_meta_options *opts);
/* What could not be read, one message each (naming the file). */
extern size_t qk_meta_domains_warning_count (const struct qk_meta_domains *l);
extern const char *qk_meta_domains_warning (const struct qk_meta_domains *l,
                                            size_t i);
/* ---- end of a host's domains ---- */

/* ---- what the qcowkit commands need beyond the above (QCOWKIT_0.8) ----
 * tools/qcowkit links only this API; these are the pieces it lacked. */

/* Decode a qcow2 header from the first bytes of a file (as much of the
 * first cluster as there is), derived fields included, without opening
 * the image (e.g. to estimate what checking it will need). Fails
 * (EBADMSG) only when nothing sensible can be read: bad magic, version or
 * cluster_bits, or fewer bytes than a version 2 header (72). */
extern int qk_header_parse (const uint8_t *buf, size_t len,
                            struct qk_header *h);

/* The LUKS1 header of a LUKS-encrypted image (crypt_method QK_CRYPT_LUKS)
 * in the clusters its full disk encryption header extension names, as
 * QEMU's QCryptoBlockLUKSHeader: only what `qemu-img info` shows and
 * where things are, never salts, digests or key material. The library
 * allocates it: new fields go after hash_alg. */
#define QK_LUKS_SLOTS 8
struct qk_luks_slot {
  uint32_t state;            /* 0x00ac71f3 active, 0x0000dead inactive */
  bool active;               /* state is 0x00ac71f3, as QEMU reads it */
  uint32_t iterations;
  uint32_t key_offset_sector;
  uint32_t stripes;
};

struct qk_luks {
  uint64_t offset, length;   /* from the extension */
  uint16_t version;
  char cipher_name[33];      /* NUL-terminated copies of the fields */
  char cipher_mode[33];      /* e.g. "xts-plain64", "cbc-essiv:sha256" */
  char hash_spec[33];
  char uuid[41];
  uint32_t payload_offset_sector;
  uint32_t key_bytes;        /* master_key_len */
  uint32_t master_key_iterations;
  struct qk_luks_slot slot[QK_LUKS_SLOTS];
  /* As QEMU names them (qapi enums); NULL when QEMU would not know them
   * and refuse the image. */
  const char *cipher_alg;    /* "aes-256" */
  const char *mode;          /* "xts" */
  const char *ivgen_alg;     /* "plain64" */
  const char *ivgen_hash_alg; /* only with essiv */
  const char *hash_alg;      /* "sha256" */
};
/* Borrowed; NULL when the image has no LUKS header that could be read
 * (the reason is among the warnings). */
extern const struct qk_luks *qk_image_luks (const struct qk_image *img);

/* Paths under a root, as the library resolves every path an image or a
 * metadata file names: one component at a time, never leaving the root.
 * QK_ROOT_IN: the root is "/" for every path (a sysroot: ".." stops at
 * it, absolute symlinks restart from it); QK_ROOT_BENEATH: leaving it
 * fails with EXDEV; QK_ROOT_HOST: no root (plain paths, from the cwd). */
enum qk_root_mode {
  QK_ROOT_HOST = 0,
  QK_ROOT_IN,
  QK_ROOT_BENEATH,
};
struct qk_root;
/* dir NULL (or QK_ROOT_HOST): the host. */
extern struct qk_root *qk_root_new (const char *dir, enum qk_root_mode mode);
extern void qk_root_free (struct qk_root *r);
/* Open path (absolute or relative, both from the root) as openat(2)
 * would with flags and mode (O_CLOEXEC added); symlinks are followed
 * inside the root, the last one only without O_NOFOLLOW. An fd, or -1. */
extern int qk_root_open (const struct qk_root *r, const char *path, int flags,
                         mode_t mode);
/* The host path path resolves to under r (caller frees): symlinks inside
 * the root resolved, components that do not exist kept as written. */
extern char *qk_root_host_path (const struct qk_root *r, const char *path);
/* A host path below r's directory as seen inside r ("ROOT/a/b" gives
 * "/a/b", borrowed from path), or NULL when path is not below it. */
extern const char *qk_root_strip (const struct qk_root *r, const char *path);
/* Lexical normalisation (caller frees): "//", "/./" and "dir/.."
 * collapse; a leading ".." of a relative path is kept; "" becomes ".". */
extern char *qk_path_normalize (const char *path);

/* A source over an open file descriptor, taken over (closed with the
 * source, and on failure too): what a qk_open_fn returns for a file it
 * opened itself (with qk_root_open, say). */
extern struct qk_source *qk_source_fd (int fd, const char *name);
/* Close a source not handed over to qk_image_open (NULL: nothing). */
extern void qk_source_close (struct qk_source *s);

/* QEMU's image locks (OFD byte-range locks, as block/file-posix.c takes
 * them). QK_LOCK_READ: what qemu-img takes to read an image (without -U);
 * with QK_LOCK_WRITE: what it takes to write one. */
#define QK_LOCK_NONE   0u
#define QK_LOCK_READ   0x1u
#define QK_LOCK_WRITE  0x2u
/* 0 when mode could be taken now; -1 with EBUSY (and a message naming
 * the holder when /proc tells) while another process holds a conflicting
 * lock: qk_source_lock_test (s, QK_LOCK_READ) fails while a running VM
 * has the image open. Takes no lock. Memory sources: 0. */
extern int qk_source_lock_test (struct qk_source *s, unsigned mode);

/* Write len bytes of buf as the file leaf of the directory dirfd so that
 * a crash leaves the old file (or none) or the complete new one, never a
 * half-written one: a new ".LEAF.qk-RANDOM" (O_EXCL, O_NOFOLLOW), written
 * and fsynced, renamed to leaf (over an existing leaf only with
 * QK_DURABLE_REPLACE), the directory fsynced. 0, or -1 (the temporary
 * file removed; qk_get_error says why). */
#define QK_DURABLE_REPLACE 0x1u
extern int qk_durable_write (int dirfd, const char *leaf, const void *buf,
                             size_t len, mode_t mode, unsigned flags);
/* leaf is one name in a directory: not empty, ".", "..", nor longer
 * than NAME_MAX, and without '/'. */
extern bool qk_leaf_ok (const char *leaf);

#ifdef __cplusplus
}
#endif

#endif /* QCOWKIT_H */
