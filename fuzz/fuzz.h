/* Shared bits of the fuzz harnesses: every harness defines
 * LLVMFuzzerTestOneInput and reads only from memory. */
#ifndef QK_FUZZ_H
#define QK_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "qcowkit.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

/* A fake file system for backing and data files: any name opens the
 * second half of the input (so chains, loops and data files are reached
 * without touching the disk); a name containing "missing" fails. */
struct fake_fs {
  const uint8_t *data;
  size_t size;
};

static inline struct qk_source *
fake_open (void *opaque, const char *path)
{
  struct fake_fs *fs = opaque;
  if (strstr (path, "missing"))
    return NULL;
  return qk_source_memory (fs->data + fs->size / 2, fs->size - fs->size / 2,
                           path);
}

/* Put size bytes into the file fd (truncated first), as one image. */
static inline int
fuzz_file_set (int fd, const uint8_t *data, size_t size)
{
  size_t done = 0;

  if (ftruncate (fd, 0) < 0)
    return -1;
  while (done < size) {
    ssize_t n = pwrite (fd, data + done, size - done, (off_t) done);
    if (n <= 0)
      return -1;
    done += (size_t) n;
  }
  return 0;
}

/* A problem callback that counts (opaque: unsigned *) and touches the
 * fields every caller reads. */
static inline int
fuzz_count_problem (void *opaque, const struct qk_problem *p)
{
  unsigned *n = opaque;
  if (p->message == NULL || p->name == NULL)
    __builtin_trap ();
  ++*n;
  return 0;
}

#endif
