/* lib/xform/xform.h: what the image transforms (amend, rebase, commit)
 * share: opening the write stack (or, for a dry run, a read-locked
 * source), the check a writer stands on, and small helpers. */
#ifndef QK_XFORM_XFORM_H
#define QK_XFORM_XFORM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "internal.h"

struct qk_writer;
struct qk_image;
struct qk_refmap;
struct qk_check_result;

/* A refusal: ctx ("amend", ...) names the command; returns -1. */
extern int qk_xform_refuse (const char *ctx, int err, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));

/* The writer stack over path (QEMU's write locks, fault injection, the
 * undo journal undo_path when not NULL); for a dry run, the file opened
 * read-only under QEMU's read lock. */
extern int qk_xform_open (struct qk_writer *w, const char *path,
                          const char *undo_path, bool dry_run);
/* Check img (opened over w's source): errors refuse (EUCLEAN, naming
 * name); leaked clusters are freed unless dry_run (*freed: how many;
 * the caller reopens img when it is not 0). map (may be NULL) gets the
 * counts, for the caller to free. */
extern int qk_xform_check (struct qk_image *img, struct qk_writer *w,
                           const char *ctx, const char *name, bool dry_run,
                           struct qk_refmap *map, struct qk_check_result *cr,
                           uint64_t *freed);
/* Whether buf[0..n) is all zeros. */
extern bool qk_all_zero (const uint8_t *buf, size_t n);

#endif
