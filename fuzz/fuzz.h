/* Shared bits of the fuzz harnesses: every harness defines
 * LLVMFuzzerTestOneInput and reads only from memory. */
#ifndef QK_FUZZ_H
#define QK_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

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

#endif
