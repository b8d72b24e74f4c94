/* Growable arrays and strings for the commands (tools only: the library
 * keeps its own in lib/internal.h; the tools link only the public API). */
#ifndef QK_TOOLS_BUF_H
#define QK_TOOLS_BUF_H

#include <stdbool.h>
#include <stddef.h>

/* ptr grown (realloc) to hold at least need elements of elem bytes; *cap
 * doubles. NULL (errno ENOMEM) on failure, ptr left as it was. */
extern void *grow (void *ptr, size_t *cap, size_t need, size_t elem);

/* A growable NUL-terminated string. Once an allocation fails, p is NULL
 * and oom set, and further additions do nothing: callers check once, at
 * the end. p is NULL while nothing was added. */
struct sbuf {
  char *p;
  size_t n, cap;
  bool oom;
};
extern bool sbuf_add (struct sbuf *b, const void *s, size_t n);
extern bool sbuf_printf (struct sbuf *b, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

#endif
