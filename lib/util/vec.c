/* Small growable vectors. */
#include <config.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

void *
qk_grow (void *ptr, size_t *cap, size_t need, size_t elem)
{
  size_t ncap = *cap ? *cap : 8;
  void *p;

  if (need <= *cap)
    return ptr;
  while (ncap < need) {
    if (MUL_OVERFLOW (ncap, (size_t) 2, &ncap)) {
      set_error (ENOMEM, "vector too large");
      return NULL;
    }
  }
  if (ncap > SIZE_MAX / elem) {
    set_error (ENOMEM, "vector too large");
    return NULL;
  }
  p = realloc (ptr, ncap * elem);
  if (p == NULL) {
    set_error (errno, "realloc");
    return NULL;
  }
  *cap = ncap;
  return p;
}

int
qk_strvec_add (struct qk_strvec *sv, char *s)
{
  char **v;

  if (s == NULL) {
    set_error (ENOMEM, "strdup");
    return -1;
  }
  v = qk_grow (sv->v, &sv->cap, sv->n + 1, sizeof *v);
  if (v == NULL) {
    free (s);
    return -1;
  }
  sv->v = v;
  sv->v[sv->n++] = s;
  return 0;
}

char *
qk_vformat (const char *fmt, va_list ap)
{
  char buf[256], *s;
  va_list ap2;
  int n;

  va_copy (ap2, ap);
  n = vsnprintf (buf, sizeof buf, fmt, ap2);
  va_end (ap2);
  if (n < 0)
    return NULL;
  if ((size_t) n < sizeof buf) {
    s = malloc ((size_t) n + 1);
    if (s)
      memcpy (s, buf, (size_t) n + 1);
    return s;
  }
  if (vasprintf (&s, fmt, ap) < 0)
    return NULL;
  return s;
}

int
qk_strvec_addf (struct qk_strvec *sv, const char *fmt, ...)
{
  va_list ap;
  char *s;

  va_start (ap, fmt);
  s = qk_vformat (fmt, ap);
  va_end (ap);
  if (s == NULL) {
    set_error (ENOMEM, "vasprintf");
    return -1;
  }
  return qk_strvec_add (sv, s);
}

void
qk_strvec_free (struct qk_strvec *sv)
{
  for (size_t i = 0; i < sv->n; i++)
    free (sv->v[i]);
  free (sv->v);
  sv->v = NULL;
  sv->n = sv->cap = 0;
}

static void
sbuf_oom (struct qk_sbuf *b)
{
  free (b->p);
  b->p = NULL;
  b->n = b->cap = 0;
  b->oom = true;
}

bool
qk_sbuf_add (struct qk_sbuf *b, const void *s, size_t n)
{
  char *p;

  if (b->oom)
    return false;
  if (n > SIZE_MAX - b->n - 1) {
    set_error (ENOMEM, "string too large");
    sbuf_oom (b);
    return false;
  }
  p = qk_grow (b->p, &b->cap, b->n + n + 1, 1);
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
qk_sbuf_printf (struct qk_sbuf *b, const char *fmt, ...)
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
    set_error (ENOMEM, "vasprintf");
    sbuf_oom (b);
    return false;
  }
  ok = qk_sbuf_add (b, s, r);
  free (s);
  return ok;
}
