/* lib/io/writer.c: the write stack every image writer stands on (repair,
 * amend, commit, rebase):
 *   the image file, read-write, with QEMU's write locks (refused while a
 *   running QEMU or qemu-img holds it)
 *   <- fault injection (QCOWKIT_FAULT: the fault sweep tests)
 *   <- undo journal, made just before the first write when asked for.
 * Reads go through the top of the stack, so they see every write. */
#include <config.h>

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "io/io.h"

int
qk_dir_of (const char *path, const char **leaf)
{
  const char *slash = strrchr (path, '/');
  char *dir;
  int fd;

  *leaf = slash ? slash + 1 : path;
  dir = slash ? strndup (path, slash == path ? 1 : (size_t) (slash - path))
              : strdup (".");
  if (dir == NULL) {
    set_error (ENOMEM, "strdup");
    return -1;
  }
  fd = open (dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    set_error (errno, "open the directory %s", dir);
  free (dir);
  return fd;
}

int
qk_writer_open (struct qk_writer *w, const char *path, const char *undo_path)
{
  int fd;

  memset (w, 0, sizeof *w);
  w->undo_dirfd = -1;
  if (undo_path && (w->undo_path = strdup (undo_path)) == NULL) {
    set_error (ENOMEM, "strdup");
    return -1;
  }
  fd = open (path, O_RDWR | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    set_error (errno, "open %s read-write", path);
    qk_writer_close (w);
    return -1;
  }
  w->base = qk_source_fd_rw (fd, path, QK_IO_LOCK);
  if (w->base)
    w->base = qk_source_fault_env (w->base, 0);
  if (w->base == NULL) {
    qk_writer_close (w);
    return -1;
  }
  return 0;
}

void
qk_writer_adopt (struct qk_writer *w, struct qk_source *s)
{
  memset (w, 0, sizeof *w);
  w->undo_dirfd = -1;
  w->base = s;
}

struct qk_source *
qk_writer_src (const struct qk_writer *w)
{
  return w->top ? w->top : w->base;
}

int
qk_writer_begin (struct qk_writer *w)
{
  const char *leaf;

  if (w->top)
    return 0;
  if (w->undo_path == NULL) {
    w->top = w->base;
    return 0;
  }
  w->undo_dirfd = qk_dir_of (w->undo_path, &leaf);
  if (w->undo_dirfd < 0) {
    qk_internal_prefix_error ("undo journal");
    return -1;
  }
  w->top = qk_source_undo (w->base, w->undo_dirfd, leaf, QK_IO_KEEP_BELOW);
  if (w->top == NULL) {
    qk_internal_prefix_error ("undo journal %s", w->undo_path);
    return -1;
  }
  return 0;
}

int
qk_writer_pwrite (struct qk_writer *w, const void *buf, size_t len,
                  uint64_t off)
{
  if (qk_writer_begin (w) < 0)
    return -1;
  w->n_writes++;
  return qk_source_pwrite (w->top, buf, len, off);
}

int
qk_writer_flush (struct qk_writer *w)
{
  return w->top ? qk_source_flush (w->top) : 0;
}

void
qk_writer_close (struct qk_writer *w)
{
  if (w->top && w->top != w->base)
    qk_source_close (w->top);
  w->top = NULL;
  if (w->base)
    qk_source_close (w->base);
  w->base = NULL;
  if (w->undo_dirfd >= 0)
    close (w->undo_dirfd);
  w->undo_dirfd = -1;
  free (w->undo_path);
  w->undo_path = NULL;
}
