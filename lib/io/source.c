/* Byte sources, the bottom of the stack (io/io.h): a file descriptor
 * (read-only, or read-write on request), or a memory buffer (fuzzing,
 * tests; growable when writable). All image bytes are read and written
 * through here.
 *
 * Guarantees: a pwrite writes all of its bytes or fails with the error
 * set (a short write is retried; nothing is half-reported). A file write
 * is durable only after qk_source_flush (fdatasync) returned 0: a crash
 * before that may leave any subset of the writes since the last flush. A
 * read-only source refuses pwrite and truncate with EROFS and never
 * changes the file. Locks are OFD locks on the source's own open file
 * description (io/lock.c): they go away with its close. */
#include <config.h>

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "io/io.h"

/* ---- file ---- */

static ssize_t
file_pread (struct qk_source *s, void *buf, size_t len, uint64_t off)
{
  size_t done = 0;

  if (off > INT64_MAX) {
    set_error (EINVAL, "%s: offset %" PRIu64 " out of range", s->name, off);
    return -1;
  }
  while (done < len) {
    ssize_t r = pread (s->fd, (char *) buf + done, len - done,
                       (off_t) (off + done));
    if (r < 0) {
      if (errno == EINTR)
        continue;
      set_error (errno, "%s: read at %" PRIu64, s->name, off + done);
      return -1;
    }
    if (r == 0)
      break;
    done += r;
  }
  return done;
}

static int
file_block_status (struct qk_source *s, uint64_t off, uint64_t len,
                   uint64_t *pnum)
{
  off_t data, hole;

  if (off >= s->size) {
    *pnum = len;
    return 0;
  }
  data = lseek (s->fd, (off_t) off, SEEK_DATA);
  if (data < 0) {
    if (errno == ENXIO) {       /* trailing hole */
      *pnum = len;
      return 0;
    }
    *pnum = len;
    return -1;
  }
  if ((uint64_t) data > off) {
    *pnum = MIN ((uint64_t) data - off, len);
    return 0;
  }
  hole = lseek (s->fd, (off_t) off, SEEK_HOLE);
  if (hole < 0 || (uint64_t) hole <= off) {
    *pnum = len;
    return -1;
  }
  *pnum = MIN ((uint64_t) hole - off, len);
  return 1;
}

static int
file_pwrite (struct qk_source *s, const void *buf, size_t len, uint64_t off)
{
  uint64_t end;

  if (off > INT64_MAX || ADD_OVERFLOW (off, len, &end) || end > INT64_MAX) {
    set_error (EFBIG, "%s: write of %zu bytes at %" PRIu64 " out of range",
               s->name, len, off);
    return -1;
  }
  if (qk_full_pwrite (s->fd, buf, len, (off_t) off) < 0) {
    set_error (errno, "%s: write of %zu bytes at %" PRIu64, s->name, len,
               off);
    return -1;
  }
  if (end > s->size)
    s->size = end;
  return 0;
}

static int
file_flush (struct qk_source *s)
{
  if (fdatasync (s->fd) < 0) {
    set_error (errno, "%s: fdatasync", s->name);
    return -1;
  }
  return 0;
}

static int
file_truncate (struct qk_source *s, uint64_t size)
{
  if (size > INT64_MAX) {
    set_error (EFBIG, "%s: size %" PRIu64 " out of range", s->name, size);
    return -1;
  }
  if (ftruncate (s->fd, (off_t) size) < 0) {
    set_error (errno, "%s: truncate to %" PRIu64 " bytes", s->name, size);
    return -1;
  }
  s->size = size;
  return 0;
}

static int
file_lock (struct qk_source *s, unsigned mode, bool test)
{
  if (qk_fd_lock (s->fd, s->name, s->lock_mode, mode, test) < 0)
    return -1;
  if (!test)
    s->lock_mode = mode;
  return 0;
}

static void
file_close (struct qk_source *s)
{
  if (s->fd >= 0)
    close (s->fd);
}

static const struct qk_source_ops file_ops = {
  .pread = file_pread,
  .block_status = file_block_status,
  .pwrite = file_pwrite,
  .flush = file_flush,
  .truncate = file_truncate,
  .lock = file_lock,
  .close = file_close,
};

/* A file source over fd (taken over, closed on failure too). Only regular
 * files and block devices: a FIFO or a terminal would block or never end.
 * fl: the descriptor's status flags when the caller has them (F_GETFL),
 * else -1. Its errors are qk_source_fd's, under that name. */
static struct qk_source *
fd_source (int fd, const char *name, int fl)
{
  struct qk_source *s;
  struct stat st;

  if (fstat (fd, &st) < 0) {
    qk_internal_set_error (errno, "qk_source_fd", "fstat: %s", name);
    close (fd);
    return NULL;
  }
  if (!S_ISREG (st.st_mode) && !S_ISBLK (st.st_mode)) {
    qk_internal_set_error (S_ISDIR (st.st_mode) ? EISDIR : EINVAL,
                           "qk_source_fd", "%s is %s", name,
                           S_ISDIR (st.st_mode) ? "a directory"
                           : S_ISFIFO (st.st_mode)
                           ? "a FIFO, not an image file"
                           : "not a regular file or a block device");
    close (fd);
    return NULL;
  }
  /* opened with O_NONBLOCK so that a FIFO could not block the open */
  if (fl < 0)
    fl = fcntl (fd, F_GETFL);
  if (fl >= 0 && (fl & O_NONBLOCK))
    fcntl (fd, F_SETFL, fl & ~O_NONBLOCK);
  s = calloc (1, sizeof *s);
  if (s == NULL || (s->name = strdup (name)) == NULL) {
    qk_internal_set_error (ENOMEM, "qk_source_fd", "calloc");
    free (s);
    close (fd);
    return NULL;
  }
  s->ops = &file_ops;
  s->fd = fd;
  if (S_ISBLK (st.st_mode)) {
    off_t end = lseek (fd, 0, SEEK_END);
    s->size = end > 0 ? (uint64_t) end : 0;
    s->allocated = -1;
  } else {
    s->size = st.st_size;
    s->allocated = (int64_t) st.st_blocks * 512;
  }
  s->has_id = true;
  s->dev = st.st_dev;
  s->ino = st.st_ino;
  return s;
}

QK_EXPORT struct qk_source *
qk_source_fd (int fd, const char *name)
{
  return fd_source (fd, name, -1);
}

struct qk_source *
qk_source_fd_rw (int fd, const char *name, unsigned flags)
{
  struct qk_source *s;
  int fl = fcntl (fd, F_GETFL);

  if (fl < 0 || (fl & O_ACCMODE) != O_RDWR) {
    set_error (fl < 0 ? errno : EBADF, "%s: not open for reading and writing",
               name);
    close (fd);
    return NULL;
  }
  s = fd_source (fd, name, fl);
  if (s == NULL)
    return NULL;
  s->writable = true;
  if ((flags & QK_IO_LOCK)
      && qk_source_lock (s, QK_LOCK_READ | QK_LOCK_WRITE) < 0) {
    qk_source_close (s);
    return NULL;
  }
  return s;
}

struct qk_source *
qk_source_file_rw (const char *path, unsigned flags)
{
  int fd = open (path, O_RDWR | O_CLOEXEC | O_NOCTTY | O_NONBLOCK
                 | O_NOFOLLOW);

  if (fd < 0) {
    set_error (errno, "open: %s", path);
    return NULL;
  }
  return qk_source_fd_rw (fd, path, flags);
}

QK_EXPORT struct qk_source *
qk_source_file (const char *path)
{
  int fd = open (path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);

  if (fd < 0) {
    set_error (errno, "open: %s", path);
    return NULL;
  }
  return qk_source_fd (fd, path);
}

/* ---- memory ---- */

static ssize_t
mem_pread (struct qk_source *s, void *buf, size_t len, uint64_t off)
{
  /* as a file refuses it (pread's off_t), so that an image checks the
   * same from memory and from a file: an offset past 2^63 (file_pread),
   * or a range that ends past it (the kernel's EINVAL) */
  if (off > INT64_MAX) {
    set_error (EINVAL, "%s: offset %" PRIu64 " out of range", s->name, off);
    return -1;
  }
  if (len > (uint64_t) INT64_MAX - off) {
    set_error (EINVAL, "%s: read at %" PRIu64, s->name, off);
    return -1;
  }
  if (off >= s->size)
    return 0;
  if (len > s->size - off)
    len = s->size - off;
  memcpy (buf, s->mem + off, len);
  return len;
}

static int
mem_block_status (struct qk_source *s, uint64_t off, uint64_t len,
                  uint64_t *pnum)
{
  (void) s; (void) off;
  *pnum = len;
  return -1;
}

/* Make room for size bytes (zero-filled past the old size). */
static int
mem_reserve (struct qk_source *s, uint64_t size)
{
  if (size > SIZE_MAX / 2) {
    set_error (EFBIG, "%s: %" PRIu64 " bytes do not fit in memory", s->name,
               size);
    return -1;
  }
  if (size > s->mem_cap) {
    size_t cap = s->mem_cap;
    uint8_t *p = qk_grow (s->mem_owned, &cap, size, 1);
    if (p == NULL) {
      set_error (ENOMEM, "%s: grow to %" PRIu64 " bytes", s->name, size);
      return -1;
    }
    memset (p + s->mem_cap, 0, cap - s->mem_cap);
    s->mem_owned = p;
    s->mem = p;
    s->mem_cap = cap;
  }
  return 0;
}

static int
mem_pwrite (struct qk_source *s, const void *buf, size_t len, uint64_t off)
{
  uint64_t end;

  if (ADD_OVERFLOW (off, len, &end)) {
    set_error (EFBIG, "%s: write at %" PRIu64 " out of range", s->name, off);
    return -1;
  }
  /* bytes between the old end and off read as zeros: mem_reserve and
   * mem_truncate keep everything past s->size zeroed */
  if (mem_reserve (s, end) < 0)
    return -1;
  memcpy (s->mem_owned + off, buf, len);
  if (end > s->size) {
    s->size = end;
    s->allocated = end;
  }
  return 0;
}

static int
mem_flush (struct qk_source *s)
{
  (void) s;
  return 0;
}

static int
mem_truncate (struct qk_source *s, uint64_t size)
{
  if (mem_reserve (s, size) < 0)
    return -1;
  if (size < s->size)   /* so that growing again reads zeros */
    memset (s->mem_owned + size, 0, s->size - size);
  s->size = size;
  s->allocated = size;
  return 0;
}

static int
mem_lock (struct qk_source *s, unsigned mode, bool test)
{
  (void) s; (void) mode; (void) test;
  return 0;
}

static void
mem_close (struct qk_source *s)
{
  free (s->mem_owned);
}

static const struct qk_source_ops mem_ops = {
  .pread = mem_pread,
  .block_status = mem_block_status,
  .lock = mem_lock,
  .close = mem_close,
};

static const struct qk_source_ops mem_rw_ops = {
  .pread = mem_pread,
  .block_status = mem_block_status,
  .pwrite = mem_pwrite,
  .flush = mem_flush,
  .truncate = mem_truncate,
  .lock = mem_lock,
  .close = mem_close,
};

/* The buffer is borrowed: it must outlive the source. */
QK_EXPORT struct qk_source *
qk_source_memory (const void *buf, size_t len, const char *name)
{
  struct qk_source *s = calloc (1, sizeof *s);

  if (s == NULL || (s->name = strdup (name ? name : "<memory>")) == NULL) {
    set_error (ENOMEM, "calloc");
    free (s);
    return NULL;
  }
  s->ops = &mem_ops;
  s->fd = -1;
  s->mem = buf;
  s->size = len;
  s->allocated = len;
  return s;
}

struct qk_source *
qk_source_memory_rw (const void *buf, size_t len, const char *name)
{
  struct qk_source *s = qk_source_memory (NULL, 0, name);

  if (s == NULL)
    return NULL;
  s->ops = &mem_rw_ops;
  s->writable = true;
  if (len && (mem_reserve (s, len) < 0 || !buf)) {
    if (!buf)
      set_error (EINVAL, "%s: no initial bytes", s->name);
    qk_source_close (s);
    return NULL;
  }
  if (len)
    memcpy (s->mem_owned, buf, len);
  s->size = len;
  s->allocated = len;
  return s;
}

const uint8_t *
qk_source_memory_data (const struct qk_source *s)
{
  return s->mem;
}

/* ---- layers ---- */

struct qk_source *
qk_source_layer_new (struct qk_source *below, const struct qk_source_ops *ops,
                     const char *kind, unsigned flags)
{
  struct qk_source *s = calloc (1, sizeof *s);

  if (s == NULL
      || (s->name = strdup (below->name)) == NULL) {
    set_error (ENOMEM, "%s layer", kind);
    free (s);
    return qk_source_layer_abandon (below, flags);
  }
  s->ops = ops;
  s->below = below;
  s->own_below = !(flags & QK_IO_KEEP_BELOW);
  s->writable = below->writable;
  s->fd = -1;
  s->has_id = below->has_id;
  s->dev = below->dev;
  s->ino = below->ino;
  qk_source_layer_sync (s);
  return s;
}

void
qk_source_layer_sync (struct qk_source *s)
{
  s->size = s->below->size;
  s->allocated = s->below->allocated;
}

struct qk_source *
qk_source_layer_abandon (struct qk_source *below, unsigned flags)
{
  if (!(flags & QK_IO_KEEP_BELOW))
    qk_source_close (below);
  return NULL;
}

ssize_t
qk_source_below_pread (struct qk_source *s, void *buf, size_t len,
                       uint64_t off)
{
  return s->below->ops->pread (s->below, buf, len, off);
}

int
qk_source_below_block_status (struct qk_source *s, uint64_t off,
                              uint64_t len, uint64_t *pnum)
{
  if (s->below->ops->block_status == NULL) {
    *pnum = len;
    return -1;
  }
  return s->below->ops->block_status (s->below, off, len, pnum);
}

/* ---- common ---- */

QK_EXPORT void
qk_source_close (struct qk_source *s)
{
  if (s == NULL)
    return;
  s->ops->close (s);
  if (s->below && s->own_below)
    qk_source_close (s->below);
  free (s->name);
  free (s);
}

int
qk_source_pwrite (struct qk_source *s, const void *buf, size_t len,
                  uint64_t off)
{
  if (!s->writable || s->ops->pwrite == NULL) {
    set_error (EROFS, "%s: the source is read-only (opened for reading)",
               s->name);
    return -1;
  }
  if (len == 0)
    return 0;
  return s->ops->pwrite (s, buf, len, off);
}

int
qk_source_flush (struct qk_source *s)
{
  for (; s; s = s->below)
    if (s->ops->flush)
      return s->ops->flush (s);
  return 0;
}

int
qk_source_truncate (struct qk_source *s, uint64_t size)
{
  if (!s->writable || s->ops->truncate == NULL) {
    set_error (EROFS, "%s: the source is read-only (opened for reading)",
               s->name);
    return -1;
  }
  return s->ops->truncate (s, size);
}

static int
lock_walk (struct qk_source *s, unsigned mode, bool test)
{
  if (mode & ~(QK_LOCK_READ | QK_LOCK_WRITE)) {
    set_error (EINVAL, "%s: unknown lock mode 0x%x", s->name, mode);
    return -1;
  }
  if (mode & QK_LOCK_WRITE)
    mode |= QK_LOCK_READ;
  for (; s; s = s->below)
    if (s->ops->lock)
      return s->ops->lock (s, mode, test);
  return 0;
}

int
qk_source_lock (struct qk_source *s, unsigned mode)
{
  return lock_walk (s, mode, false);
}

QK_EXPORT int
qk_source_lock_test (struct qk_source *s, unsigned mode)
{
  return lock_walk (s, mode, true);
}

int
qk_full_pwrite (int fd, const void *buf, size_t len, off_t off)
{
  size_t done = 0;

  while (done < len) {
    ssize_t r = pwrite (fd, (const char *) buf + done, len - done,
                        off + (off_t) done);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    if (r == 0) {
      errno = ENOSPC;
      return -1;
    }
    done += r;
  }
  return 0;
}

int
qk_source_read_exact (struct qk_source *s, void *buf, size_t len,
                      uint64_t off, const char *what)
{
  ssize_t r = s->ops->pread (s, buf, len, off);

  if (r < 0)
    return -1;
  if ((size_t) r < len) {
    set_error (EBADMSG,
               "%s: %s at offset 0x%" PRIx64 " (%zu bytes) extends past the "
               "end of the file (%" PRIu64 " bytes)",
               s->name, what, off, len, s->size);
    return -1;
  }
  return 0;
}

int
qk_source_read_zeropad (struct qk_source *s, void *buf, size_t len,
                        uint64_t off)
{
  ssize_t r = s->ops->pread (s, buf, len, off);

  if (r < 0)
    return -1;
  if ((size_t) r < len)
    memset ((char *) buf + r, 0, len - r);
  return 0;
}
