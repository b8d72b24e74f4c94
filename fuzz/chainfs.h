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
#include <string.h>

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

/* Lexical clean-up of a path into out (size CHAINFS_MAX_NAME + 2):
 * empty and "." components go, ".." eats the previous component (at the
 * root of an absolute path it is dropped; leading ones of a relative
 * path stay). Paths too long for out come out empty (no file). */
static inline void
chainfs_normalize (const char *in, char *out)
{
  size_t o = 0, len = strlen (in);
  const char *s = in;
  int absolute = in[0] == '/';

  out[0] = '\0';
  if (len > CHAINFS_MAX_NAME)
    return;
  if (*s == '/')
    out[o++] = '/';
  while (*s) {
    const char *e;
    size_t l;

    while (*s == '/')
      s++;
    if (*s == '\0')
      break;
    e = strchr (s, '/');
    l = e ? (size_t) (e - s) : strlen (s);
    if (l == 1 && s[0] == '.')
      ;
    else if (l == 2 && s[0] == '.' && s[1] == '.') {
      /* the last component, unless there is none or it is ".." */
      size_t q = o;
      while (q > 0 && out[q - 1] == '/')
        q--;
      size_t b = q;
      while (b > 0 && out[b - 1] != '/')
        b--;
      if (q == b) {               /* nothing to eat */
        if (!absolute) {
          if (o > 0 && out[o - 1] != '/')
            out[o++] = '/';
          out[o++] = '.';
          out[o++] = '.';
        }
      }
      else if (q - b == 2 && out[b] == '.' && out[b + 1] == '.') {
        out[o++] = '/';
        out[o++] = '.';
        out[o++] = '.';
      }
      else
        o = b;
    }
    else {
      if (o > 0 && out[o - 1] != '/')
        out[o++] = '/';
      memcpy (out + o, s, l);
      o += l;
    }
    s += l;
  }
  while (o > 1 && out[o - 1] == '/')
    o--;
  out[o] = '\0';
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
