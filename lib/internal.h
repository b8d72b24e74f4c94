/* libqcowkit internal declarations shared between files. */
#ifndef QK_INTERNAL_H
#define QK_INTERNAL_H

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <inttypes.h>
#include <sys/types.h>

#include "qcowkit.h"
#include "util/byteorder.h"
#include "util/checked.h"
#include "util/cleanup.h"

#define QK_EXPORT __attribute__ ((visibility ("default")))

/* ---- errors (util/error.c) ---- */
/* Sets the per-thread error as "<context>: <message>[: strerror(errnum)]".
 * errnum 0 leaves errno meaning to the caller; EBADMSG = on-disk damage. */
extern void qk_internal_set_error (int errnum, const char *context,
                                   const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));
#define set_error(errnum, ...) \
  qk_internal_set_error ((errnum), __func__, __VA_ARGS__)
/* Keep the current error across calls that may set their own (probes
 * whose failure is not the caller's error). */
struct qk_saved_error {
  char msg[1024];
  int errnum;
};
extern void qk_internal_save_error (struct qk_saved_error *sv);
extern void qk_internal_restore_error (const struct qk_saved_error *sv);
/* Prefix the current error with a context (keeps errno). */
extern void qk_internal_prefix_error (const char *fmt, ...)
  __attribute__ ((format (printf, 1, 2)));

/* ---- limits (a little above QEMU's, so images QEMU rejects can still be
 * diagnosed; never allocate from an unchecked size) ---- */
#define QK_MIN_CLUSTER_BITS 9
#define QK_MAX_CLUSTER_BITS 21
#define QK_MAX_L1_BYTES            (64ULL << 20)   /* QEMU: 32 MiB */
#define QK_MAX_REFTABLE_BYTES      (16ULL << 20)   /* QEMU: 8 MiB */
#define QK_MAX_SNAPSHOTS           131072          /* QEMU: 65536 */
#define QK_MAX_SNAPSHOT_TABLE      (128ULL << 20)  /* QEMU: 64 MiB */
#define QK_QEMU_SNAPSHOT_TABLE     (64ULL << 20)   /* QCOW_MAX_SNAPSHOTS_SIZE */
#define QK_MAX_SNAPSHOT_EXTRA      (64U << 10)     /* QEMU: 1 KiB */
#define QK_MAX_BITMAPS             65535
#define QK_MAX_BITMAP_DIR          (64ULL << 20)
#define QK_MAX_BITMAP_TABLE_ENTRIES 0x8000000U
#define QK_DEFAULT_CHAIN_DEPTH     64
#define QK_MAX_NAME                4096

/* ---- vectors ---- */
struct qk_strvec {
  char **v;
  size_t n, cap;
};
extern int qk_strvec_add (struct qk_strvec *sv, char *s); /* takes ownership */
extern int qk_strvec_addf (struct qk_strvec *sv, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));
extern void qk_strvec_free (struct qk_strvec *sv);
/* vasprintf in one allocation of the string's own size (vasprintf makes
 * two: a buffer, then a realloc to size); NULL when out of memory. */
extern char *qk_vformat (const char *fmt, va_list ap)
  __attribute__ ((format (printf, 1, 0)));
extern void *qk_grow (void *ptr, size_t *cap, size_t need, size_t elem);

/* A growable NUL-terminated string. Once an allocation fails, p is NULL
 * and oom set (the error is set too), and further additions do nothing:
 * callers check once, at the end. p is NULL while nothing was added. */
struct qk_sbuf {
  char *p;
  size_t n, cap;
  bool oom;
};
extern bool qk_sbuf_add (struct qk_sbuf *b, const void *s, size_t n);
extern bool qk_sbuf_printf (struct qk_sbuf *b, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

/* ---- byte sources (io/source.c; the layers and writers: io/io.h) ----
 * A source is one layer of a stack: a file or a memory buffer at the
 * bottom, an undo journal or fault injection above it, each over the
 * source below. */
struct qk_source_ops {
  /* Read up to len bytes at off; returns bytes read (short only at EOF)
   * or -1 with the error set. */
  ssize_t (*pread) (struct qk_source *s, void *buf, size_t len, uint64_t off);
  /* 1: [off, off+*pnum) holds data, 0: a hole, -1: unknown. */
  int (*block_status) (struct qk_source *s, uint64_t off, uint64_t len,
                       uint64_t *pnum);
  /* Write exactly len bytes at off (past the end grows the source);
   * 0, or -1 with the error set. NULL: read-only (qk_source_pwrite fails
   * with EROFS). */
  int (*pwrite) (struct qk_source *s, const void *buf, size_t len,
                 uint64_t off);
  /* Make every write so far durable. NULL: flush the source below. */
  int (*flush) (struct qk_source *s);
  /* Set the size (undo replay shrinks a grown image back). NULL: EROFS. */
  int (*truncate) (struct qk_source *s, uint64_t size);
  /* Take or drop QEMU's image locks (QK_LOCK_* in io/io.h); test: only
   * check that they could be taken. NULL: lock the source below. */
  int (*lock) (struct qk_source *s, unsigned mode, bool test);
  void (*close) (struct qk_source *s);
};

struct qk_source {
  const struct qk_source_ops *ops;
  char *name;
  uint64_t size;           /* follows writes that grow the source */
  int64_t allocated;       /* bytes allocated on the host, -1 unknown */
  bool has_id;
  dev_t dev;
  ino_t ino;
  bool writable;           /* pwrite allowed (ops->pwrite alone is not) */
  struct qk_source *below; /* the next layer down, NULL at the bottom */
  bool own_below;          /* close below with this one */
  void *priv;              /* the layer's own state, freed by its close */
  /* file */
  int fd;
  unsigned lock_mode;      /* QK_LOCK_* held on fd */
  /* memory */
  const uint8_t *mem;
  uint8_t *mem_owned;
  size_t mem_cap;          /* writable memory: allocated bytes */
};

extern void qk_source_close (struct qk_source *s);
/* A file source over fd (taken over, closed on failure too). */
extern struct qk_source *qk_source_fd (int fd, const char *name);
/* Read exactly len bytes; short reads (past EOF) fail with EBADMSG. */
extern int qk_source_read_exact (struct qk_source *s, void *buf, size_t len,
                                 uint64_t off, const char *what);
/* Read len bytes; the part past EOF reads as zeros (like QEMU does for
 * data clusters). */
extern int qk_source_read_zeropad (struct qk_source *s, void *buf, size_t len,
                                   uint64_t off);

#endif
