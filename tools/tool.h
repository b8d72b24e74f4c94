/* qcowkit command-line tool: shared declarations. */
#ifndef QK_TOOL_H
#define QK_TOOL_H

#include <stdbool.h>
#include <stdint.h>
#include <inttypes.h>
#include <stdio.h>

#include "qcowkit.h"

/* Exit codes (check has its own, qemu-img's). */
#define EXIT_OK    0
#define EXIT_ERR   1
#define EXIT_USAGE 2

enum output_fmt { OUT_HUMAN, OUT_JSON };

struct common_opts {
  enum output_fmt output;
  const char *root;        /* --root: confine backing/data files */
  int progress;            /* -1 auto (terminal), 0 off, 1 on */
  bool quiet;              /* --quiet: no progress, no open warnings */
  bool force;
};

extern const char *progname;

/* Messages on stderr, prefixed "qcowkit: ". */
extern void warnx_ (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));
extern void errx_ (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));
extern int usage_error (const char *cmd, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

/* ---- Option tables ----
 * A command lists its options in a table, ended by { NULL }:
 *
 *   const struct opt opts[] = {
 *     { "-b",            "a value", .str = &ro.backing },
 *     { "-n|--dry-run",  NULL,      .flags = &ro.flags, .set = QK_REBASE_DRY_RUN },
 *     { "--compat",      "a value", .fn = set_compat, .data = &ao },
 *     { NULL }
 *   };
 *
 * names: the short and/or long spellings, '|' between. needs: NULL if the
 * option takes no value; else what "OPTION needs ..." says it lacks ("a
 * value", "a file"). A value is the next argument, or for a long option
 * also "--name=VALUE". Exactly one target: str (set to the value), flags
 * (|= set), on (set true), or fn (called with data, the option as typed
 * and the value, or NULL; it returns 0, or -1 after usage_error()).
 * A name may hold '=' ("--list-problems=man"): then it is matched whole,
 * as an option without a value.
 * hidden: need not be in the help text. */
struct opt {
  const char *names;
  const char *needs;
  const char **str;
  unsigned *flags;
  unsigned set;
  bool *on;
  int (*fn) (void *data, const char *opt, const char *value);
  void *data;
  bool hidden;
};

/* A command's command line. opt_parse() reads argv[1..] left to right:
 * --help and -h print help on stdout and stop (status 0); an option of
 * opts; then, unless common is NULL, a common option (--output, --root,
 * -p/--progress, -q/--quiet: a command's own table may take one of these
 * names for itself, as repair would for -p, preen); "-" or a word not
 * starting with '-' is an operand, put in the next of
 * operands[0..max_operands-1] (slots not given are left as they were:
 * set them to NULL first).
 * Usage errors ("unknown option '-x'", "-b needs a value", "too many
 * arguments", the missing message when fewer than min_operands were
 * given) are printed with usage_error() and stop with usage_status
 * (0: EXIT_USAGE).
 * The help text is checked against the table: every option the help names
 * ("-x" or "--name" after a space, '[', '(', ',', '|' or a quote) is
 * accepted, and every option of opts (but hidden ones) is in the help;
 * the common options are described in qcowkit(1) and need not be. A
 * mismatch is a bug in the program: it is named on stderr and the check
 * fails an assert. */
struct opt_cmd {
  const char *name;            /* "amend", for the messages */
  const char *help;
  const struct opt *opts;
  struct common_opts *common;  /* NULL: no common options */
  const char **operands;
  size_t max_operands, min_operands;
  const char *missing;         /* fewer than min_operands: "no image given" */
  int usage_status;            /* 0: EXIT_USAGE */
};

/* Returns true when the command goes on; false when it stops, with the
 * exit status in *status (0 after --help, else usage_status). */
extern bool opt_parse (const struct opt_cmd *c, int argc, char **argv,
                       int *status);
/* The help check alone: true if it holds; prints each mismatch. */
extern bool opt_check_help (const struct opt_cmd *c);

/* Common options one argument at a time, for a command that reads its
 * command line itself: returns 1 if consumed (and *i advanced), 0 if not a
 * common option, -1 on a bad value (after usage_error()). Same table and
 * messages as opt_parse(). */
extern int common_option (struct common_opts *o, int argc, char **argv, int *i,
                          const char *cmd);
extern bool parse_size (const char *s, uint64_t *v);

/* Open an image for a read-only command; prints the open warnings unless
 * quiet, and warns when a running QEMU holds the image. */
extern struct qk_image *open_image (const char *path,
                                    const struct common_opts *o,
                                    unsigned flags, bool show_warnings);

/* Whether a running QEMU (or qemu-img) holds the image's locks. */
extern bool locked_by_qemu (const char *path);

/* One question for a repair fix on a terminal ([y/n/a/q]); loses is
 * appended to the prompt of a fix that loses data. */
extern enum qk_answer ask_fix (FILE *tty, bool *yes_to_all,
                               const struct qk_fix *f, const char *loses);

/* The word that starts a problem line ("ERROR", "Leak", "Warning", ...). */
extern const char *problem_label (enum qk_problem_class cls);

/* qemu's size_to_str: "216 KiB". Returns a static buffer. */
extern const char *size_str (uint64_t v);
/* Image-supplied text made safe for a terminal (rotating static buffers). */
extern const char *printable (const char *s);

/* Progress on stderr. */
struct progress {
  bool on;
  uint64_t total;
  int last_permille;
};
extern void progress_start (struct progress *p, const struct common_opts *o,
                            uint64_t total);
extern void progress_update (struct progress *p, uint64_t done);
extern void progress_end (struct progress *p);
/* A qk_progress_fn for the library's writers (opaque: a struct progress
 * started with progress_start()); progress_hook() sets *fn and *opaque
 * to it when the bar is on, and leaves them NULL otherwise. */
extern void progress_report (void *opaque, uint64_t done, uint64_t total);
extern void progress_hook (struct progress *p, qk_progress_fn *fn,
                           void **opaque);

/* After a writer of the library failed (errno e): its message; that WHAT
 * is in use when QEMU holds the lock; and, when it had written something
 * (changed), how to get back: 'qcowkit undo UNDO PATH' when UNDO is
 * not NULL, else AGAIN. */
extern void write_failed (int e, const char *what, const char *path,
                          bool changed, const char *undo, const char *again);

/* Commands. */
extern int cmd_info (int argc, char **argv);
extern int cmd_map (int argc, char **argv);
extern int cmd_export (int argc, char **argv);
extern int cmd_dump (int argc, char **argv);
extern int cmd_snapshot (int argc, char **argv);
extern int cmd_check (int argc, char **argv);
extern int cmd_meta (int argc, char **argv);
extern int cmd_fuzz_corpus (int argc, char **argv);
extern int cmd_repair (int argc, char **argv);
extern int cmd_undo (int argc, char **argv);
extern int cmd_amend (int argc, char **argv);
extern int cmd_rebase (int argc, char **argv);
extern int cmd_commit (int argc, char **argv);
extern int cmd_audit (int argc, char **argv);
extern int cmd_rescue (int argc, char **argv);

/* Shared by info and snapshot list. */
extern void print_snapshot_table (struct qk_image *img);

#endif
