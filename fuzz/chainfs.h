/* The multi-file input of fuzz-chain (and of the mutator, which edits
 * one file of it at a time): several fake files carved from one input.
 *
 *   input := part ( SEP part )*         SEP is "\n#QKFILE#\n"
 *   part  := NAME '\n' CONTENT          (NAME: up to 255 bytes)
 *
 * A part whose first 256 bytes hold no '\n' has no name (its content is
 * the whole part). The first part is the top image; the others are the
 * files its backing and data file names may reach. Names are paths,
 * relative ones relative to the current directory, and are compared after
 * a lexical clean-up ("a//b", "a/./b" and "a/x/../b" are "a/b"), so a
 * backing name that reaches a file by another spelling is still that
 * file: each part is one fake inode, and loops are loops. */
#ifndef QK_FUZZ_CHAINFS_H
#define QK_FUZZ_CHAINFS_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/path.h"

#define CHAINFS_SEP "\n#QKFILE#\n"
#define CHAINFS_SEP_LEN 10
#define CHAINFS_MAX_PARTS 32
#define CHAINFS_MAX_NAME 255

struct chainfs_part {
  size_t start;           /* offset of the part (its name) in the input */
  size_t data;            /* offset of the content */
  size_t end;             /* offset just past the content */
  char name[CHAINFS_MAX_NAME + 1];   /* as written */
  char norm[CHAINFS_MAX_NAME + 2];   /* cleaned up */
};

/* Lexical clean-up of a path into out (size CHAINFS_MAX_NAME + 2), by
 * the library's own qk_path_normalize: empty and "." components go, ".."
 * eats the previous component (at the root of an absolute path it is
 * dropped; leading ones of a relative path stay); a path that is its own
 * directory comes out empty. Paths too long for out come out empty (no
 * file). */
static inline void
chainfs_normalize (const char *in, char *out)
{
  char *n;

  out[0] = '\0';
  if (strlen (in) > CHAINFS_MAX_NAME)
    return;
  n = qk_path_normalize (in);
  if (n && strcmp (n, ".") != 0 && strlen (n) <= CHAINFS_MAX_NAME + 1)
    strcpy (out, n);
  free (n);
}

static inline const uint8_t *
chainfs_memmem (const uint8_t *h, size_t hl, const char *n, size_t nl)
{
  if (nl > hl)
    return NULL;
  for (size_t i = 0; i + nl <= hl; i++) {
    const uint8_t *p = memchr (h + i, n[0], hl - nl + 1 - i);
    if (p == NULL)
      return NULL;
    if (memcmp (p, n, nl) == 0)
      return p;
    i = p - h;
  }
  return NULL;
}

/* Split data into at most max parts; returns how many (at least 1). */
static inline size_t
chainfs_split (const uint8_t *data, size_t size, struct chainfs_part *p,
               size_t max)
{
  size_t n = 0, pos = 0;

  for (;;) {
    const uint8_t *sep = n + 1 < max
      ? chainfs_memmem (data + pos, size - pos, CHAINFS_SEP, CHAINFS_SEP_LEN)
      : NULL;
    size_t end = sep ? (size_t) (sep - data) : size;
    size_t look = end - pos < CHAINFS_MAX_NAME + 1 ? end - pos
                                                    : CHAINFS_MAX_NAME + 1;
    const uint8_t *nl = memchr (data + pos, '\n', look);

    p[n].start = pos;
    p[n].end = end;
    if (nl) {
      size_t l = nl - (data + pos);
      memcpy (p[n].name, data + pos, l);
      p[n].name[l] = '\0';
      p[n].data = l + 1 + pos;
    }
    else {
      p[n].name[0] = '\0';
      p[n].data = pos;
    }
    chainfs_normalize (p[n].name, p[n].norm);
    n++;
    if (sep == NULL)
      return n;
    pos = end + CHAINFS_SEP_LEN;
  }
}

#endif
