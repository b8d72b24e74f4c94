/* lib/util/problems.h: the problem engine shared by the image checker,
 * the metadata checker and the repairs (image now, metadata next).
 *
 * Two kinds of tables, each generated from a .def file of rows:
 *   - problem tables (check/problems.def, meta/problems.def): what a
 *     checker reports, with a stable code, a class and the man page text;
 *   - fix tables (repair/fixes.def): what a repair can do about them, with
 *     flags (preen-safe, loses data, ...), the question, its past tense
 *     and the man page text.
 * A repair offers a fix through a qk_fixer (qk_fixer_offer, the
 * fix_problem of e2fsck): one call per latch group ("Free 10,512 leaked
 * clusters?"), answered by the mode, or by asking, and recorded with its
 * prompt and past tense for the caller's report. */
#ifndef QCOWKIT_UTIL_PROBLEMS_H
#define QCOWKIT_UTIL_PROBLEMS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qcowkit.h"

struct qk_prow {
  uint32_t code;
  const char *name;
  enum qk_problem_class cls;
  const char *desc;
};

/* qk_problem_info and qk_meta_problem_info over a table of n rows; what
 * names the table in the error ("problem", "metadata problem"). */
extern int qk_prows_info (const struct qk_prow *rows, size_t n,
                          const char *what, size_t i, uint32_t *code,
                          const char **name, enum qk_problem_class *cls,
                          const char **description);

struct qk_fixrow {
  uint32_t code;
  const char *name;
  unsigned flags;            /* QK_FIX_* */
  const char *prompt, *done; /* "%s" takes the count (or countstr) */
  const char *desc;
};

extern int qk_fixrows_info (const struct qk_fixrow *rows, size_t n, size_t i,
                            uint32_t *code, const char **name,
                            unsigned *flags, const char **description);

/* One fix offered, with its texts (owned). */
struct qk_fixrec {
  struct qk_fix f;
  char *prompt, *done;
};

struct qk_fixer {
  enum qk_repair_mode mode;
  unsigned require;          /* QK_FIX_* flags a fix must have (0: any) */
  qk_fix_fn ask;
  void *ask_opaque;
  bool aborted;              /* answered ABORT: every later offer is NO */
  struct qk_fixrec **recs;  /* each its own allocation: a record stays
                               where it is while later offers grow recs */
  size_t n, cap;
};

/* Offer the fix of row with its count (countstr, when not NULL, replaces
 * the number in the texts). The answer is in ->f.answer of the record
 * returned (valid until qk_fixer_reset: a caller may hold several records
 * across offers); NULL on ENOMEM. */
extern struct qk_fixrec *qk_fixer_offer (struct qk_fixer *fx,
                                         const struct qk_fixrow *row,
                                         uint64_t count,
                                         const char *countstr);
/* Forget the offers (and the abort); the settings stay. */
extern void qk_fixer_reset (struct qk_fixer *fx);
extern void qk_fixer_free (struct qk_fixer *fx);

#endif
