/* lib/util/problems.c: the problem engine (see problems.h). */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "util/problems.h"

int
qk_prows_info (const struct qk_prow *rows, size_t n, const char *what,
               size_t i, uint32_t *code, const char **name,
               enum qk_problem_class *cls, const char **description)
{
  if (i >= n) {
    set_error (EINVAL, "no %s %zu", what, i);
    return -1;
  }
  if (code) *code = rows[i].code;
  if (name) *name = rows[i].name;
  if (cls) *cls = rows[i].cls;
  if (description) *description = rows[i].desc;
  return 0;
}

int
qk_fixrows_info (const struct qk_fixrow *rows, size_t n, size_t i,
                 uint32_t *code, const char **name, unsigned *flags,
                 const char **description)
{
  if (i >= n) {
    set_error (EINVAL, "no fix %zu", i);
    return -1;
  }
  if (code) *code = rows[i].code;
  if (name) *name = rows[i].name;
  if (flags) *flags = rows[i].flags;
  if (description) *description = rows[i].desc;
  return 0;
}

/* The prompt or past tense of a fix with its count: each "%s" of the
 * table's text replaced by countstr (no other conversions). */
static char *
subst_count (const char *fmt, const char *countstr)
{
  size_t n = strlen (fmt) + 1, k = strlen (countstr), o = 0;
  const char *p;
  char *out;

  for (p = fmt; (p = strstr (p, "%s")) != NULL; p += 2)
    n += k;
  out = malloc (n);
  if (out == NULL)
    return NULL;
  for (p = fmt; *p; ) {
    if (p[0] == '%' && p[1] == 's') {
      memcpy (out + o, countstr, k);
      o += k;
      p += 2;
    }
    else
      out[o++] = *p++;
  }
  out[o] = '\0';
  return out;
}

struct qk_fixrec *
qk_fixer_offer (struct qk_fixer *fx, const struct qk_fixrow *row,
                uint64_t count, const char *countstr)
{
  struct qk_fixrec *fr;
  char num[32];
  enum qk_answer a = QK_ANSWER_NO;

  struct qk_fixrec **recs = qk_grow (fx->recs, &fx->cap, fx->n + 1,
                                     sizeof *recs);
  if (recs == NULL)
    return NULL;
  fx->recs = recs;
  fr = calloc (1, sizeof *fr);
  if (fr == NULL) {
    set_error (ENOMEM, "malloc");
    return NULL;
  }
  if (countstr == NULL) {
    snprintf (num, sizeof num, "%" PRIu64, count);
    countstr = num;
  }
  fr->prompt = subst_count (row->prompt, countstr);
  fr->done = subst_count (row->done, countstr);
  if (fr->prompt == NULL || fr->done == NULL) {
    free (fr->prompt);
    free (fr->done);
    free (fr);
    set_error (ENOMEM, "malloc");
    return NULL;
  }
  fx->recs[fx->n++] = fr;
  fr->f.code = row->code;
  fr->f.name = row->name;
  fr->f.flags = row->flags;
  fr->f.count = count;
  fr->f.prompt = fr->prompt;
  fr->f.done = fr->done;

  if (fx->aborted || (row->flags & fx->require) != fx->require)
    a = QK_ANSWER_NO;
  else
    switch (fx->mode) {
    case QK_REPAIR_NONE: a = QK_ANSWER_NO; break;
    case QK_REPAIR_PREEN:
      a = (row->flags & QK_FIX_PREEN) ? QK_ANSWER_YES : QK_ANSWER_NO;
      break;
    case QK_REPAIR_ALL: a = QK_ANSWER_YES; break;
    case QK_REPAIR_ASK:
      a = fx->ask ? fx->ask (fx->ask_opaque, &fr->f) : QK_ANSWER_NO;
      break;
    }
  if (a == QK_ANSWER_ABORT)
    fx->aborted = true;   /* recorded as ABORT: not made, and no more */
  fr->f.answer = a;
  return fr;
}

void
qk_fixer_reset (struct qk_fixer *fx)
{
  for (size_t i = 0; i < fx->n; i++) {
    free (fx->recs[i]->prompt);
    free (fx->recs[i]->done);
    free (fx->recs[i]);
  }
  fx->n = 0;
  fx->aborted = false;
}

void
qk_fixer_free (struct qk_fixer *fx)
{
  qk_fixer_reset (fx);
  free (fx->recs);
  fx->recs = NULL;
  fx->cap = 0;
}
