/* Durable file operations (io/io.h): create or replace one file in a
 * directory so that a crash leaves either the old state or the new file
 * complete, never a half-written file under the final name.
 *
 * Order, and what a crash after each step leaves:
 *   1. openat (dirfd, ".LEAF.qk-RANDOM", O_CREAT | O_EXCL | O_NOFOLLOW):
 *      a stray temporary file (empty or partial), LEAF untouched;
 *   2. write, fsync the temporary file: the same, with full contents;
 *   3. renameat2 (temp, LEAF, RENAME_NOREPLACE, or a plain rename with
 *      QK_DURABLE_REPLACE): after a crash the directory entry may or may
 *      not be there yet (the directory is not synced), but what LEAF names
 *      is the old file or the complete new one;
 *   4. fsync the directory: LEAF is the new file for good.
 * A failure before step 3 removes the temporary file. Names are leaves in
 * dirfd (from qk_root_open_parent): nothing here resolves a path, and the
 * O_NOFOLLOW / O_EXCL open never follows or reuses a planted link. */
#include <config.h>

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "io/io.h"

QK_EXPORT bool
qk_leaf_ok (const char *leaf)
{
  return leaf && *leaf && strcmp (leaf, ".") != 0 && strcmp (leaf, "..") != 0
         && strchr (leaf, '/') == NULL && strlen (leaf) <= NAME_MAX;
}

int
qk_fsync_dir (int dirfd)
{
  int fd = dirfd, r;

  if (dirfd == AT_FDCWD) {
    fd = open (".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
      set_error (errno, "open the current directory");
      return -1;
    }
  }
  r = fsync (fd);
  if (r < 0)
    set_error (errno, "fsync the directory");
  if (fd != dirfd)
    close (fd);
  return r;
}

int
qk_durable_begin (struct qk_durable *d, int dirfd, const char *leaf,
                  mode_t mode)
{
  memset (d, 0, sizeof *d);
  d->fd = -1;
  if (!qk_leaf_ok (leaf) || strlen (leaf) > NAME_MAX - 20) {
    set_error (EINVAL, "'%s' is not a file name in its directory",
               leaf ? leaf : "");
    return -1;
  }
  d->leaf = strdup (leaf);
  if (d->leaf == NULL) {
    set_error (ENOMEM, "strdup");
    return -1;
  }
  for (int tries = 0; tries < 100; tries++) {
    uint64_t rnd;
    if (getrandom (&rnd, sizeof rnd, 0) != sizeof rnd) {
      set_error (errno, "getrandom");
      goto fail;
    }
    free (d->tmp);
    if (asprintf (&d->tmp, ".%s.qk-%012" PRIx64, leaf,
                  rnd & (uint64_t) 0xffffffffffff) < 0) {
      d->tmp = NULL;
      set_error (ENOMEM, "asprintf");
      goto fail;
    }
    d->fd = openat (dirfd, d->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW
                    | O_CLOEXEC, mode);
    if (d->fd >= 0) {
      d->dirfd = dirfd;
      return 0;
    }
    if (errno != EEXIST) {
      set_error (errno, "create %s", d->tmp);
      goto fail;
    }
  }
  set_error (EEXIST, "create a temporary file for %s", leaf);
fail:
  free (d->tmp);
  free (d->leaf);
  d->tmp = d->leaf = NULL;
  return -1;
}

static void
durable_free (struct qk_durable *d)
{
  if (d->fd >= 0)
    close (d->fd);
  d->fd = -1;
  free (d->tmp);
  free (d->leaf);
  d->tmp = d->leaf = NULL;
}

void
qk_durable_abort (struct qk_durable *d)
{
  if (d->tmp)
    unlinkat (d->dirfd, d->tmp, 0);
  durable_free (d);
}

/* renameat that never replaces: the target must not exist. */
static int
rename_noreplace (int dirfd, const char *a, const char *b)
{
  struct stat st;

  if (renameat2 (dirfd, a, dirfd, b, RENAME_NOREPLACE) == 0)
    return 0;
  if (errno != EINVAL && errno != ENOSYS)
    return -1;
  /* a file system without RENAME_NOREPLACE: check, then rename */
  if (fstatat (dirfd, b, &st, AT_SYMLINK_NOFOLLOW) == 0) {
    errno = EEXIST;
    return -1;
  }
  return renameat (dirfd, a, dirfd, b);
}

int
qk_durable_commit (struct qk_durable *d, unsigned flags)
{
  int r;

  if (fsync (d->fd) < 0) {
    set_error (errno, "fsync %s", d->tmp);
    goto fail;
  }
  r = (flags & QK_DURABLE_REPLACE)
      ? renameat (d->dirfd, d->tmp, d->dirfd, d->leaf)
      : rename_noreplace (d->dirfd, d->tmp, d->leaf);
  if (r < 0) {
    set_error (errno, "rename %s to %s", d->tmp, d->leaf);
    goto fail;
  }
  free (d->tmp);
  d->tmp = NULL;
  r = qk_fsync_dir (d->dirfd);
  durable_free (d);
  return r;

fail:
  qk_durable_abort (d);
  return -1;
}

QK_EXPORT int
qk_durable_write (int dirfd, const char *leaf, const void *buf, size_t len,
                  mode_t mode, unsigned flags)
{
  struct qk_durable d;

  if (qk_durable_begin (&d, dirfd, leaf, mode) < 0)
    return -1;
  if (qk_full_pwrite (d.fd, buf, len, 0) < 0) {
    set_error (errno, "write %s", d.tmp);
    qk_durable_abort (&d);
    return -1;
  }
  return qk_durable_commit (&d, flags);
}

int
qk_durable_unlink (int dirfd, const char *leaf)
{
  if (!qk_leaf_ok (leaf)) {
    set_error (EINVAL, "'%s' is not a file name in its directory",
               leaf ? leaf : "");
    return -1;
  }
  if (unlinkat (dirfd, leaf, 0) < 0) {
    set_error (errno, "unlink %s", leaf);
    return -1;
  }
  return qk_fsync_dir (dirfd);
}
