/* Byte sources: a read-only file descriptor, or a memory buffer (fuzzing,
 * tests). All image bytes are read through here. */
#include <config.h>

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

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

static void
file_close (struct qk_source *s)
{
  if (s->fd >= 0)
    close (s->fd);
}

static const struct qk_source_ops file_ops = {
  .pread = file_pread,
  .block_status = file_block_status,
  .close = file_close,
};

/* A file source over fd (taken over, closed on failure too). Only regular
 * files and block devices: a FIFO or a terminal would block or never end. */
struct qk_source *
qk_source_fd (int fd, const char *name)
{
  struct qk_source *s;
  struct stat st;

  if (fstat (fd, &st) < 0) {
    set_error (errno, "fstat: %s", name);
    close (fd);
    return NULL;
  }
  if (!S_ISREG (st.st_mode) && !S_ISBLK (st.st_mode)) {
    set_error (S_ISDIR (st.st_mode) ? EISDIR : EINVAL, "%s is %s", name,
               S_ISDIR (st.st_mode) ? "a directory"
               : S_ISFIFO (st.st_mode) ? "a FIFO, not an image file"
               : "not a regular file or a block device");
    close (fd);
    return NULL;
  }
  /* opened with O_NONBLOCK so that a FIFO could not block the open */
  {
    int fl = fcntl (fd, F_GETFL);
    if (fl >= 0 && (fl & O_NONBLOCK))
      fcntl (fd, F_SETFL, fl & ~O_NONBLOCK);
  }
  s = calloc (1, sizeof *s);
  if (s == NULL || (s->name = strdup (name)) == NULL) {
    set_error (ENOMEM, "calloc");
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

static void
mem_close (struct qk_source *s)
{
  free (s->mem_owned);
}

static const struct qk_source_ops mem_ops = {
  .pread = mem_pread,
  .block_status = mem_block_status,
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

/* ---- common ---- */

void
qk_source_close (struct qk_source *s)
{
  if (s == NULL)
    return;
  s->ops->close (s);
  free (s->name);
  free (s);
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
