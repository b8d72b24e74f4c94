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

/* Shared option handling: returns 1 if consumed (and *i advanced), 0 if not
 * a common option, -1 on a bad value. */
extern int common_option (struct common_opts *o, int argc, char **argv, int *i,
                          const char *cmd);
extern bool parse_size (const char *s, uint64_t *v);

/* Open an image for a read-only command; prints the open warnings unless
 * quiet, and warns when a running QEMU holds the image. */
extern struct qk_image *open_image (const char *path,
                                    const struct common_opts *o,
                                    unsigned flags, bool show_warnings);

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

/* Shared by info and snapshot list. */
extern void print_snapshot_table (struct qk_image *img);

#endif
