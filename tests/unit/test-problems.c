/* Unit tests of lib/util/problems.c: the fix engine's answers by mode,
 * the required flags (check -r leaks), questions, abort, and the texts. */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "util/problems.h"
#include "../tap.h"

static const struct qk_fixrow rows[] = {
  { 0x200001, "SAFE", QK_FIX_PREEN, "Fix %s things?", "Fixed %s things.", "" },
  { 0x200002, "LOSSY", QK_FIX_LOSES_DATA, "Drop %s (%s)?", "Dropped %s.", "" },
  { 0x200003, "LEAKY", QK_FIX_PREEN | QK_FIX_LEAKS, "Free %s?", "Freed %s.", "" },
};

static int asked;
static enum qk_answer next;

static enum qk_answer
ask (void *opaque, const struct qk_fix *f)
{
  (void) opaque;
  asked++;
  if (strcmp (f->prompt, "Fix 7 things?") != 0 && f->code == 0x200001)
    return QK_ANSWER_NO;
  return next;
}

static enum qk_answer
answer (struct qk_fixer *fx, int row, uint64_t count, const char *cs)
{
  struct qk_fixrec *r = qk_fixer_offer (fx, &rows[row], count, cs);
  return r ? r->f.answer : (enum qk_answer) -1;
}

int
main (void)
{
  struct qk_fixer fx = { 0 };
  struct qk_fixrec *r;
  uint32_t code;
  const char *name;
  unsigned flags;

  fx.mode = QK_REPAIR_NONE;
  ok (answer (&fx, 0, 1, NULL) == QK_ANSWER_NO, "none: no");
  fx.mode = QK_REPAIR_PREEN;
  ok (answer (&fx, 0, 1, NULL) == QK_ANSWER_YES, "preen: a preen fix is yes");
  ok (answer (&fx, 1, 1, NULL) == QK_ANSWER_NO, "preen: a lossy fix is no");
  fx.mode = QK_REPAIR_ALL;
  ok (answer (&fx, 1, 1, NULL) == QK_ANSWER_YES, "all: a lossy fix is yes");
  fx.require = QK_FIX_LEAKS;
  ok (answer (&fx, 0, 1, NULL) == QK_ANSWER_NO, "required flags: others are no");
  ok (answer (&fx, 2, 1, NULL) == QK_ANSWER_YES, "required flags: a leak fix is yes");
  fx.require = 0;

  r = qk_fixer_offer (&fx, &rows[0], 7, NULL);
  ok (r && strcmp (r->f.prompt, "Fix 7 things?") == 0
      && strcmp (r->f.done, "Fixed 7 things.") == 0 && r->f.count == 7
      && r->f.code == 0x200001 && strcmp (r->f.name, "SAFE") == 0,
      "the texts carry the count");
  r = qk_fixer_offer (&fx, &rows[1], 2, "2 entries");
  ok (r && strcmp (r->f.prompt, "Drop 2 entries (2 entries)?") == 0,
      "countstr replaces every %%s");

  fx.mode = QK_REPAIR_ASK;
  ok (answer (&fx, 0, 1, NULL) == QK_ANSWER_NO, "ask without a callback: no");
  fx.ask = ask;
  next = QK_ANSWER_YES;
  ok (answer (&fx, 0, 7, NULL) == QK_ANSWER_YES && asked == 1,
      "ask: the callback sees the prompt and answers");
  next = QK_ANSWER_ABORT;
  ok (answer (&fx, 1, 1, NULL) == QK_ANSWER_ABORT && fx.aborted,
      "ask: abort is recorded");
  ok (answer (&fx, 0, 7, NULL) == QK_ANSWER_NO && asked == 2,
      "after an abort every offer is no, unasked");
  ok (fx.n == 12, "every offer is recorded (%zu)", fx.n);
  qk_fixer_reset (&fx);
  ok (fx.n == 0 && !fx.aborted, "reset forgets offers and the abort");
  qk_fixer_free (&fx);

  ok (qk_fixrows_info (rows, 3, 2, &code, &name, &flags, NULL) == 0
      && code == 0x200003 && strcmp (name, "LEAKY") == 0
      && flags == (QK_FIX_PREEN | QK_FIX_LEAKS), "fixrows_info");
  ok (qk_fixrows_info (rows, 3, 3, &code, NULL, NULL, NULL) < 0
      && qk_get_errno () == EINVAL, "fixrows_info past the end: EINVAL");
  return tap_done ();
}
