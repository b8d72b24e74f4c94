/* lib/xform/xform.c: what amend, rebase and commit share (xform.h). */
#include <config.h>

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "check/check.h"
#include "image/image.h"
#include "io/io.h"
#include "repair/refstruct.h"
#include "xform/xform.h"

int
qk_xform_refuse (const char *ctx, int err, const char *fmt, ...)
{
  char msg[1024];
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  qk_internal_set_error (err, ctx, "%s", msg);
  return -1;
}

int
qk_xform_open (struct qk_writer *w, const char *path, const char *undo_path,
               bool dry_run)
{
  struct qk_source *s;

  if (!dry_run)
    return qk_writer_open (w, path, undo_path);
  s = qk_source_file (path);
  if (s == NULL)
    return -1;
  qk_writer_adopt (w, s);
  return qk_source_lock (s, QK_LOCK_READ);
}

int
qk_xform_check (struct qk_image *img, struct qk_writer *w, const char *ctx,
                const char *name, bool dry_run, struct qk_refmap *map,
                struct qk_check_result *cr, uint64_t *freed)
{
  struct qk_refmap own;
  struct qk_refmap *m = map ? map : &own;
  int ret = 0;

  *freed = 0;
  memset (m, 0, sizeof *m);
  if (qk_check_run_map (img, QK_CHECK_NO_MESSAGES, NULL, NULL, cr, m) < 0)
    return -1;
  if (cr->corruptions || cr->check_errors || !m->counting)
    ret = qk_xform_refuse (ctx, EUCLEAN, "%s has %" PRIu64 " errors (qcowkit "
                           "check tells which); repair it first: qcowkit "
                           "repair -y", name,
                           cr->corruptions + cr->check_errors);
  else if (cr->leaks && !dry_run
           && (qk_writer_begin (w) < 0
               || qk_free_leaks (qk_writer_src (w), img, m,
                                 freed) < 0))
    ret = -1;
  if (ret < 0 || map == NULL)
    qk_refmap_free (m);
  return ret;
}

bool
qk_all_zero (const uint8_t *p, size_t n)
{
  static const uint8_t z[4096];

  for (size_t o = 0; o < n; o += sizeof z) {
    size_t k = n - o < sizeof z ? n - o : sizeof z;
    if (memcmp (p + o, z, k))
      return false;
  }
  return true;
}
