/* Small growable vectors. */
#include <config.h>

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

int
qk_strvec_addf (struct qk_strvec *sv, const char *fmt, ...)
{
  va_list ap;
  char *s;
  int r;

  va_start (ap, fmt);
  r = vasprintf (&s, fmt, ap);
  va_end (ap);
  if (r < 0) {
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
