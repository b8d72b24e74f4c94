/* Growable arrays and strings for the commands: see buf.h. */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"

void *
grow (void *ptr, size_t *cap, size_t need, size_t elem)
{
  size_t ncap = *cap ? *cap : 8;
  void *p;

  if (need <= *cap)
    return ptr;
  while (ncap < need) {
    if (__builtin_mul_overflow (ncap, (size_t) 2, &ncap)) {
      errno = ENOMEM;
      return NULL;
    }
  }
  if (ncap > SIZE_MAX / elem) {
    errno = ENOMEM;
    return NULL;
  }
  p = realloc (ptr, ncap * elem);
  if (p == NULL)
    return NULL;
  *cap = ncap;
  return p;
}

static void
sbuf_oom (struct sbuf *b)
{
  free (b->p);
  b->p = NULL;
  b->n = b->cap = 0;
  b->oom = true;
}

bool
sbuf_add (struct sbuf *b, const void *s, size_t n)
{
  char *p;

  if (b->oom)
    return false;
  if (n > SIZE_MAX - b->n - 1) {
    sbuf_oom (b);
    return false;
  }
  p = grow (b->p, &b->cap, b->n + n + 1, 1);
  if (p == NULL) {
    sbuf_oom (b);
    return false;
  }
  b->p = p;
  memcpy (b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = '\0';
  return true;
}

bool
sbuf_printf (struct sbuf *b, const char *fmt, ...)
{
  va_list ap;
  char *s;
  int r;
  bool ok;

  if (b->oom)
    return false;
  va_start (ap, fmt);
  r = vasprintf (&s, fmt, ap);
  va_end (ap);
  if (r < 0) {
    sbuf_oom (b);
    return false;
  }
  ok = sbuf_add (b, s, r);
  free (s);
  return ok;
}
