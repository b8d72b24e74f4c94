/* Replace one file in a directory crash-safely: see durable.h. The
 * library's writers have their own (lib/io/durable.c, with the protocol
 * stated there); this is the same order for the commands' own files. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "durable.h"

bool
leaf_ok (const char *leaf)
{
  return leaf && *leaf && strcmp (leaf, ".") != 0 && strcmp (leaf, "..") != 0
         && strchr (leaf, '/') == NULL && strlen (leaf) <= NAME_MAX;
}

int
durable_replace (int dirfd, const char *leaf, const void *buf, size_t len,
                 mode_t mode)
{
  char tmp[NAME_MAX + 1];
  const char *p = buf;
  int fd = -1, e;

  if (!leaf_ok (leaf) || strlen (leaf) > NAME_MAX - 20) {
    errno = EINVAL;
    return -1;
  }
  for (int tries = 0; fd < 0 && tries < 100; tries++) {
    uint64_t rnd;
    if (getrandom (&rnd, sizeof rnd, 0) != sizeof rnd)
      return -1;
    snprintf (tmp, sizeof tmp, ".%s.qk-%012" PRIx64, leaf,
              rnd & (uint64_t) 0xffffffffffff);
    fd = openat (dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW
                 | O_CLOEXEC, mode);
    if (fd < 0 && errno != EEXIST)
      return -1;
  }
  if (fd < 0)
    return -1;
  while (len) {
    ssize_t r = write (fd, p, len);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      goto fail;
    p += r;
    len -= (size_t) r;
  }
  if (fsync (fd) < 0)
    goto fail;
  e = close (fd);
  fd = -1;
  if (e < 0)
    goto fail;
  if (renameat (dirfd, tmp, dirfd, leaf) < 0)
    goto fail;
  return fsync (dirfd);

fail:
  e = errno;
  if (fd >= 0)
    close (fd);
  unlinkat (dirfd, tmp, 0);
  errno = e;
  return -1;
}
