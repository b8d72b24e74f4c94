/* lib/io/io.h: the source stack and durable file operations.
 *
 * Every byte a writer puts into an image goes through a source (struct
 * qk_source in internal.h): a file or a memory buffer at the bottom, and
 * layers over it (an undo journal, fault injection). A layer is made by a
 * constructor that takes the source below and closes it when the layer
 * is closed, unless given QK_IO_KEEP_BELOW; a constructor that fails
 * closes the source below too (unless QK_IO_KEEP_BELOW), so a stack is
 * built as s = layer (s, ...) with one check of NULL each time.
 *
 * Paths are resolved elsewhere (util/path.h, qk_root_open_parent): what
 * creates or replaces a file here takes a directory fd and a leaf name
 * (no '/', not "", "." or ".."), and never follows a symlink in it. */
#ifndef QK_IO_IO_H
#define QK_IO_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "qcowkit.h"

struct qk_source;

/* Constructor flags. */
#define QK_IO_KEEP_BELOW   0x1u  /* do not close the source below */
#define QK_IO_LOCK         0x2u  /* file: take the write locks on open */

/* ---- operations on any source (they walk down the stack) ---- */
/* Write exactly len bytes at off; 0, or -1 with the error set (EROFS for
 * a read-only source). */
extern int qk_source_pwrite (struct qk_source *s, const void *buf,
                             size_t len, uint64_t off);
/* Make every write so far durable (fdatasync for a file). */
extern int qk_source_flush (struct qk_source *s);
/* Set the size of a writable source. */
extern int qk_source_truncate (struct qk_source *s, uint64_t size);
/* Write all of buf at off, retrying short writes and EINTR; errno set. */
extern int qk_full_pwrite (int fd, const void *buf, size_t len, off_t off);

/* ---- QEMU's image locking (io/lock.c) ----
 * QEMU takes OFD byte-range read locks on bytes 100 + p for each
 * permission p it holds and 200 + p for each it does not share with
 * others (block/file-posix.c, raw_apply_lock_bytes), then tests for a
 * conflicting lock of anyone else (raw_check_lock_bytes). Permissions:
 * 0 consistent read, 1 write, 2 write unchanged, 3 resize.
 *   QK_LOCK_READ: what qemu-img takes to read an image (without -U):
 *     holds consistent read, does not share write or resize.
 *   QK_LOCK_READ | QK_LOCK_WRITE: what qemu-img takes to write (check -r,
 *     snapshot, commit): holds consistent read, write and resize, does not
 *     share write or resize. QK_LOCK_WRITE implies QK_LOCK_READ.
 *   QK_LOCK_NONE: drops every lock this source holds.
 * A conflict fails with EBUSY and a message naming the permission and,
 * when /proc tells, the process that holds it. Memory sources have no
 * locks: locking them succeeds. */
/* QK_LOCK_NONE, QK_LOCK_READ, QK_LOCK_WRITE: lib/qcowkit.h */
extern int qk_source_lock (struct qk_source *s, unsigned mode);
/* Only check: 0 if mode could be taken now, -1 with EBUSY (and the
 * message) if another process holds a conflicting lock. Read-only
 * commands: qk_source_lock_test (s, QK_LOCK_READ) fails while a writer
 * (a running VM, qemu-img commit...) has the image open. */
extern int qk_source_lock_test (struct qk_source *s, unsigned mode);
/* The lock bytes on an fd (the file layer uses these). */
extern int qk_fd_lock (int fd, const char *name, unsigned old_mode,
                       unsigned mode, bool test);

/* ---- bottom layers (io/source.c) ---- */
/* A file opened for reading and writing; writes past the end grow it;
 * flush is fdatasync. flags: QK_IO_LOCK takes QEMU's write locks
 * (QK_LOCK_READ | QK_LOCK_WRITE) and fails with EBUSY if a running QEMU
 * holds the image. qk_source_fd_rw takes fd over (closed on failure too);
 * it must be open O_RDWR on a regular file or a block device. */
extern struct qk_source *qk_source_fd_rw (int fd, const char *name,
                                          unsigned flags);
/* path is opened as given (O_RDWR | O_NOFOLLOW): resolve it under a root
 * first (qk_root_open) and use qk_source_fd_rw for anything an image or a
 * metadata file named. */
extern struct qk_source *qk_source_file_rw (const char *path, unsigned flags);
/* A writable, growable memory source starting as a copy of buf[0..len)
 * (buf may be NULL when len is 0). */
extern struct qk_source *qk_source_memory_rw (const void *buf, size_t len,
                                              const char *name);
/* The bytes of a memory source (size in s->size). */
extern const uint8_t *qk_source_memory_data (const struct qk_source *s);

/* Helper for layers: a new source over below with ops, taking size and
 * identity from it. On failure below is closed unless QK_IO_KEEP_BELOW. */
extern struct qk_source *qk_source_layer_new (struct qk_source *below,
                                              const struct qk_source_ops *ops,
                                              const char *kind,
                                              unsigned flags);
/* After a layer wrote to below: take its size again. */
extern void qk_source_layer_sync (struct qk_source *s);
/* A constructor that fails before qk_source_layer_new: close below unless
 * QK_IO_KEEP_BELOW; returns NULL. */
extern struct qk_source *qk_source_layer_abandon (struct qk_source *below,
                                                  unsigned flags);
/* pread and block_status of a layer that does not change them. */
extern ssize_t qk_source_below_pread (struct qk_source *s, void *buf,
                                      size_t len, uint64_t off);
extern int qk_source_below_block_status (struct qk_source *s, uint64_t off,
                                         uint64_t len, uint64_t *pnum);

/* ---- undo journal (io/undo.c) ----
 * Before a byte of below is first overwritten (or cut by a truncate), its
 * old value is appended to the journal file dirfd/leaf (created, must not
 * exist) and the journal is fdatasynced; only then is below written. The
 * journal stays when the layer is closed: it is the undo file. */
extern struct qk_source *qk_source_undo (struct qk_source *below, int dirfd,
                                         const char *leaf, unsigned flags);
/* Put back the old bytes recorded in dirfd/leaf into image (newest first),
 * shrink it back to its old size, flush it, then mark the journal applied.
 * Refuses (EINVAL) a journal for another image (identity, size or content
 * of the first and last 64 KiB after the replay), and (EALREADY) one that
 * was already replayed. flags: QK_UNDO_IGNORE_ID accepts another file
 * identity (device, inode: a copy, a restored backup) when the content
 * matches. */
#define QK_UNDO_IGNORE_ID 0x1u
extern int qk_undo_replay (int dirfd, const char *leaf,
                           struct qk_source *image, unsigned flags);

/* ---- fault injection (io/fault.c) ----
 * Counts the writes and flushes that reach it; at write (or flush) number
 * n, counting from 1, it fails with EIO, or kills the process with
 * SIGKILL, before passing it down: exactly n - 1 writes (flushes) reached
 * the source below. A failure repeats for every later write (flush) too,
 * unless QK_FAULT_ONCE. n 0: never. */
enum qk_fault_kind {
  QK_FAULT_WRITE_FAIL,
  QK_FAULT_WRITE_KILL,
  QK_FAULT_FLUSH_FAIL,
  QK_FAULT_FLUSH_KILL,
};
#define QK_FAULT_ONCE 0x100u
extern struct qk_source *qk_source_fault (struct qk_source *below,
                                          enum qk_fault_kind kind,
                                          uint64_t n, unsigned flags);
/* "write-fail-N", "write-kill-N", "flush-fail-N", "flush-kill-N". */
extern int qk_fault_parse (const char *spec, enum qk_fault_kind *kind,
                           uint64_t *n);
/* The fault layer QCOWKIT_FAULT asks for over below, or below itself when
 * it is unset or empty. An invalid value fails (EINVAL). */
extern struct qk_source *qk_source_fault_env (struct qk_source *below,
                                              unsigned flags);
/* QCOWKIT_FAULT=after-OP-N: SIGKILL right after the Nth operation OP
 * (write, fsync, rename, unlink, mkdir, rmdir) of a file writer; the
 * fault layers above ignore that grammar, and this the layers'. */
extern void qk_fault_point (const char *op);
/* Writes and flushes seen so far (failed ones included). */
extern void qk_source_fault_counts (const struct qk_source *s,
                                    uint64_t *writes, uint64_t *flushes);

/* ---- durable file operations (io/durable.c) ----
 * Create or replace dirfd/leaf so that after a crash it is either absent
 * (or the old file) or complete: write a temporary file next to it
 * (O_CREAT | O_EXCL | O_NOFOLLOW), fsync it, rename it over the leaf
 * (renameat2 RENAME_NOREPLACE unless QK_DURABLE_REPLACE), fsync the
 * directory. */
struct qk_durable {
  int dirfd;
  int fd;          /* the temporary file: write here */
  char *tmp;       /* its name in dirfd */
  char *leaf;
};
extern int qk_durable_begin (struct qk_durable *d, int dirfd,
                             const char *leaf, mode_t mode);
/* fsync, rename, fsync the directory; d is finished either way. */
extern int qk_durable_commit (struct qk_durable *d, unsigned flags);
/* Remove the temporary file. */
extern void qk_durable_abort (struct qk_durable *d);
/* All of it for a buffer: qk_durable_write (qcowkit.h). */
/* unlinkat, then fsync the directory. */
extern int qk_durable_unlink (int dirfd, const char *leaf);
extern int qk_fsync_dir (int dirfd);
/* qk_leaf_ok: qcowkit.h. */

/* ---- SHA-256 (io/sha256.c) ---- */
#include "util/sha256.h"

/* ---- the write stack of an image writer (io/writer.c) ----
 * base: the file, read-write, with QEMU's write locks (EBUSY while in
 * use), under fault injection (QCOWKIT_FAULT); top: the undo journal
 * over base, made by the first write when undo_path was given (else
 * base). Reads go through qk_writer_src, which sees every write. */
struct qk_writer {
  struct qk_source *base, *top;
  int undo_dirfd;
  char *undo_path;
  uint64_t n_writes;
};
extern int qk_writer_open (struct qk_writer *w, const char *path,
                           const char *undo_path);
/* A writer over a source opened elsewhere (read-only, or memory), no
 * journal; closed with the writer. */
extern void qk_writer_adopt (struct qk_writer *w, struct qk_source *s);
extern struct qk_source *qk_writer_src (const struct qk_writer *w);
/* Make the journal now (the first write does it anyway). */
extern int qk_writer_begin (struct qk_writer *w);
extern int qk_writer_pwrite (struct qk_writer *w, const void *buf,
                             size_t len, uint64_t off);
extern int qk_writer_flush (struct qk_writer *w);
extern void qk_writer_close (struct qk_writer *w);
/* The directory of path opened (O_DIRECTORY), *leaf its last component:
 * a command-line path of a new file (an undo journal) has no root to
 * resolve under; its leaf is then created O_EXCL | O_NOFOLLOW there. */
extern int qk_dir_of (const char *path, const char **leaf);

#endif
