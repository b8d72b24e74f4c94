/* Minimal TAP helpers for C tests. */
#ifndef QK_TAP_H
#define QK_TAP_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int tap_n, tap_failed;

#define ok(cond, ...) \
  do { \
    int ok_c_ = !!(cond); \
    printf ("%sok %d - ", ok_c_ ? "" : "not ", ++tap_n); \
    printf (__VA_ARGS__); \
    putchar ('\n'); \
    if (!ok_c_) { \
      tap_failed++; \
      printf ("#   failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
    } \
  } while (0)

#define is_u64(got, want, ...) \
  do { \
    uint64_t g_ = (got), w_ = (want); \
    ok (g_ == w_, __VA_ARGS__); \
    if (g_ != w_) \
      printf ("#   got %" PRIu64 " (0x%" PRIx64 "), want %" PRIu64 " (0x%" PRIx64 ")\n", \
              g_, g_, w_, w_); \
  } while (0)

#define is_str(got, want, ...) \
  do { \
    const char *g_ = (got), *w_ = (want); \
    int same_ = (g_ && w_) ? strcmp (g_, w_) == 0 : g_ == w_; \
    ok (same_, __VA_ARGS__); \
    if (!same_) \
      printf ("#   got '%s', want '%s'\n", g_ ? g_ : "(null)", w_ ? w_ : "(null)"); \
  } while (0)

static inline int
tap_done (void)
{
  printf ("1..%d\n", tap_n);
  return tap_failed ? 1 : 0;
}

#endif
