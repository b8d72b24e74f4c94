/* qcowkit repair: repair an image the e2fsck way (qk_repair), and
 * qcowkit undo: put back what a repair overwrote (qk_undo_apply).
 *
 * repair -n (the default off a terminal) reports the fixes it would make
 * and opens the image read-only; -p makes the fixes that cannot lose guest
 * data; -y makes every fix; on a terminal without these it asks once per
 * fix ("Free 3 leaked clusters? [y/n/a/q]"). Exit status, as fsck(8):
 * 0 nothing to fix, 1 fixed and now clean, 4 problems left, 8 operational
 * error (the image could not be opened, is in use, a write failed), 16
 * usage, 32 stopped by the user. */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tool.h"
#include "json.h"

#define EXIT_R_CLEAN    0
#define EXIT_R_FIXED    1
#define EXIT_R_LEFT     4
#define EXIT_R_OPERR    8
#define EXIT_R_USAGE    16
#define EXIT_R_ABORTED  32

struct rctx {
  enum output_fmt output;
  unsigned max_per_code;
  uint32_t last_code;
  unsigned same;
  bool yes_to_all;
  FILE *tty;             /* questions are read from here */
};

/* The problems of the first check, as qcowkit check prints them (at most
 * max_per_code in a row of one code). */
static int
on_problem (void *opaque, const struct qk_problem *p)
{
  struct rctx *c = opaque;

  if (p->code == c->last_code)
    c->same++;
  else {
    if (c->same > c->max_per_code)
      printf ("... %u more of problem 0x%06x\n", c->same - c->max_per_code,
              c->last_code);
    c->last_code = p->code;
    c->same = 1;
  }
  if (c->same <= c->max_per_code)
    printf ("%s 0x%06x: %s\n", problem_label (p->cls), p->code, p->message);
  return 0;
}

static void
flush_problems (struct rctx *c)
{
  if (c->same > c->max_per_code)
    printf ("... %u more of problem 0x%06x\n", c->same - c->max_per_code,
            c->last_code);
  c->same = 0;
  c->last_code = 0;
}

/* Notes of the changes made, on stderr (as check -r's). */
static int
on_note (void *opaque, const struct qk_problem *p)
{
  (void) opaque;
  fprintf (stderr, "%s\n", p->message);
  return 0;
}

/* A question on the terminal: y, n, a (yes to this and every later one),
 * q (stop: no more fixes). */
static enum qk_answer
ask (void *opaque, const struct qk_fix *f)
{
  struct rctx *c = opaque;

  flush_problems (c);
  return ask_fix (c->tty, &c->yes_to_all, f, " (loses guest data)");
}

static bool
clean (const struct qk_check_result *r)
{
  return !(r->corruptions || r->leaks || r->check_errors);
}

static void
json_check (struct qk_json *j, const char *key, const struct qk_check_result *r)
{
  qk_json_object_begin (j, key);
  qk_json_uint (j, "check-errors", r->check_errors);
  qk_json_uint (j, "corruptions", r->corruptions);
  qk_json_uint (j, "leaks", r->leaks);
  qk_json_uint (j, "warnings", r->warnings);
  qk_json_uint (j, "image-end-offset", r->image_end_offset);
  qk_json_object_end (j);
}

static const char *
answer_name (enum qk_answer a)
{
  return a == QK_ANSWER_YES ? "yes" : a == QK_ANSWER_ABORT ? "abort" : "no";
}

static const char repair_help[] =
  "Usage: qcowkit repair [-n|-p|-y] [--undo FILE|--no-undo] "
  "[--output=json|human]\n"
  "                      [--bitmaps=keep|drop] [--max-per-code N] "
  "[--root DIR] IMAGE\n"
  "Repair a qcow2 image in place, the e2fsck way. -n (the default when not\n"
  "on a terminal) only says what would be fixed; -p makes the fixes that\n"
  "cannot lose guest data; -y makes every fix; on a terminal it asks once\n"
  "per fix. The old bytes of every range written go first to an undo\n"
  "journal (IMAGE.qkundo unless --undo or --no-undo): 'qcowkit undo' puts\n"
  "them back. Persistent bitmaps left in use are kept and marked fully\n"
  "dirty (--bitmaps=keep) or removed (--bitmaps=drop). Exit: 0 clean,\n"
  "1 fixed, 4 problems left, 8 operational error, 16 usage, 32 stopped.\n"
  "See qcowkit-repair(1).\n";

int
cmd_repair (int argc, char **argv)
{
  struct common_opts o = { .progress = -1 };
  struct rctx c = { .max_per_code = 10 };
  enum qk_repair_mode mode = QK_REPAIR_ASK;
  bool mode_given = false, no_undo = false, undo_existed;
  unsigned rflags = 0;
  const char *path = NULL, *undo = NULL;
  char *undo_default = NULL;
  struct qk_repair *r = NULL;
  struct qk_open_options oo;
  const struct qk_check_result *b, *a;
  struct qk_json *j = NULL;
  int ret = EXIT_R_OPERR, e;

  for (int i = 1; i < argc; i++) {
    const char *s = argv[i];
    int k;
    if (strcmp (s, "--help") == 0 || strcmp (s, "-h") == 0) {
      fputs (repair_help, stdout);
      return EXIT_OK;
    }
    if (strcmp (s, "-n") == 0 || strcmp (s, "-p") == 0
        || strcmp (s, "-y") == 0) {
      enum qk_repair_mode m = s[1] == 'n' ? QK_REPAIR_NONE
                              : s[1] == 'p' ? QK_REPAIR_PREEN : QK_REPAIR_ALL;
      if (mode_given && m != mode)
        return usage_error ("repair", "-n, -p and -y exclude each other"),
               EXIT_R_USAGE;
      mode = m;
      mode_given = true;
      continue;
    }
    if (strcmp (s, "--undo") == 0) {
      if (i + 1 >= argc)
        return usage_error ("repair", "--undo needs a file"), EXIT_R_USAGE;
      undo = argv[++i];
      continue;
    }
    if (strcmp (s, "--no-undo") == 0) {
      no_undo = true;
      continue;
    }
    if (strncmp (s, "--bitmaps=", 10) == 0) {
      if (strcmp (s + 10, "keep") == 0)
        rflags &= ~QK_REPAIR_DROP_BITMAPS;
      else if (strcmp (s + 10, "drop") == 0)
        rflags |= QK_REPAIR_DROP_BITMAPS;
      else
        return usage_error ("repair", "--bitmaps is keep or drop, not '%s'",
                            s + 10), EXIT_R_USAGE;
      continue;
    }
    if (strcmp (s, "--max-per-code") == 0) {
      uint64_t v;
      if (i + 1 >= argc || !parse_size (argv[i + 1], &v) || v > 1000000000)
        return usage_error ("repair", "--max-per-code needs a number"),
               EXIT_R_USAGE;
      c.max_per_code = v;
      i++;
      continue;
    }
    if ((k = common_option (&o, argc, argv, &i, "repair")) < 0)
      return EXIT_R_USAGE;
    if (k)
      continue;
    if (s[0] == '-' && s[1])
      return usage_error ("repair", "unknown option '%s'", s), EXIT_R_USAGE;
    if (path)
      return usage_error ("repair", "too many arguments"), EXIT_R_USAGE;
    path = s;
  }
  if (path == NULL)
    return usage_error ("repair", "no image given"), EXIT_R_USAGE;
  if (undo && no_undo)
    return usage_error ("repair", "--undo and --no-undo exclude each other"),
           EXIT_R_USAGE;
  c.output = o.output;
  if (mode == QK_REPAIR_ASK) {
    /* questions need a terminal and human output */
    if (o.output == OUT_HUMAN && isatty (STDIN_FILENO)
        && isatty (STDOUT_FILENO))
      c.tty = stdin;
    else
      mode = QK_REPAIR_NONE;
  }
  if (!no_undo && undo == NULL && mode != QK_REPAIR_NONE) {
    if (asprintf (&undo_default, "%s.qkundo", path) < 0) {
      errx_ ("out of memory");
      return EXIT_R_OPERR;
    }
    undo = undo_default;
  }
  if (mode == QK_REPAIR_NONE)
    undo = NULL;
  undo_existed = undo && access (undo, F_OK) == 0;

  oo = (struct qk_open_options) { .flags = QK_OPEN_FORCE,
                                  .confine_root = o.root };
  r = qk_repair_new ();
  if (r == NULL
      || qk_repair_set_mode (r, mode) < 0
      || qk_repair_set_flags (r, rflags) < 0
      || qk_repair_set_undo (r, undo) < 0
      || qk_repair_set_open_options (r, &oo) < 0
      || qk_repair_set_ask (r, ask, &c) < 0
      || qk_repair_set_report (r, o.output == OUT_HUMAN ? on_problem : NULL,
                               o.output == OUT_HUMAN ? on_note : NULL,
                               &c) < 0) {
    errx_ ("%s", qk_get_error ());
    goto out;
  }
  if (qk_repair_run (r, path) < 0) {
    e = errno;
    flush_problems (&c);
    errx_ ("%s", qk_get_error ());
    if (undo_existed)
      errx_ ("the undo journal %s exists (from an earlier repair?): apply it "
             "with 'qcowkit undo %s %s', remove it, or choose another with "
             "--undo FILE", undo, undo, path);
    else if (e == EBUSY || e == EAGAIN)
      errx_ ("%s is in use (QEMU holds its lock): stop the VM first", path);
    if (qk_repair_wrote (r) && undo)
      errx_ ("what was written is in %s: 'qcowkit undo %s %s' puts it back",
             undo, undo, path);
    goto out;
  }
  flush_problems (&c);
  b = qk_repair_before (r);
  a = qk_repair_after (r);
  if (!clean (a))
    ret = EXIT_R_LEFT;
  else
    ret = qk_repair_wrote (r) ? EXIT_R_FIXED : EXIT_R_CLEAN;
  for (size_t i = 0; i < qk_repair_fix_count (r); i++)
    if (qk_repair_fix (r, i)->answer == QK_ANSWER_ABORT)
      ret = EXIT_R_ABORTED;

  if (o.output == OUT_JSON) {
    j = qk_json_new (stdout, 4);
    qk_json_object_begin (j, NULL);
    qk_json_string (j, "filename", path);
    qk_json_string (j, "mode", mode == QK_REPAIR_NONE ? "none"
                    : mode == QK_REPAIR_PREEN ? "preen"
                    : mode == QK_REPAIR_ALL ? "all" : "ask");
    json_check (j, "before", b);
    qk_json_array_begin (j, "fixes");
    for (size_t i = 0; i < qk_repair_fix_count (r); i++) {
      const struct qk_fix *f = qk_repair_fix (r, i);
      char code[16];
      snprintf (code, sizeof code, "0x%06x", f->code);
      qk_json_object_begin (j, NULL);
      qk_json_string (j, "code", code);
      qk_json_string (j, "name", f->name);
      qk_json_uint (j, "count", f->count);
      qk_json_string (j, "prompt", f->prompt);
      qk_json_string (j, "answer", answer_name (f->answer));
      qk_json_bool (j, "made", f->made);
      qk_json_bool (j, "loses-data", (f->flags & QK_FIX_LOSES_DATA) != 0);
      qk_json_object_end (j);
    }
    qk_json_array_end (j);
    qk_json_array_begin (j, "lost");
    for (size_t i = 0; i < qk_repair_lost_count (r); i++) {
      const struct qk_lost *l = qk_repair_lost (r, i);
      qk_json_object_begin (j, NULL);
      if (l->snapshot >= 0)
        qk_json_uint (j, "snapshot", (uint64_t) l->snapshot);
      qk_json_uint (j, "guest-offset", l->guest_offset);
      qk_json_uint (j, "length", l->length);
      qk_json_string (j, "reason", l->reason);
      qk_json_object_end (j);
    }
    qk_json_array_end (j);
    json_check (j, "after", a);
    qk_json_bool (j, "wrote", qk_repair_wrote (r));
    if (qk_repair_wrote (r) && undo)
      qk_json_string (j, "undo", undo);
    qk_json_int (j, "exit", ret);
    qk_json_object_end (j);
    qk_json_free (j);
    goto out;
  }

  for (size_t i = 0; i < qk_repair_fix_count (r); i++) {
    const struct qk_fix *f = qk_repair_fix (r, i);
    if (f->made)
      printf ("%s\n", f->done);
    else if (mode == QK_REPAIR_NONE)
      printf ("%s no\n", f->prompt);
    else if (mode == QK_REPAIR_PREEN && !(f->flags & QK_FIX_PREEN))
      printf ("%s no (it can lose guest data: run with -y or on a "
              "terminal)\n", f->prompt);
    else if (mode != QK_REPAIR_ASK)
      printf ("%s not made\n", f->prompt);
  }
  for (size_t i = 0; i < qk_repair_lost_count (r); i++) {
    const struct qk_lost *l = qk_repair_lost (r, i);
    char where[40] = "the active image";
    if (l->snapshot >= 0)
      snprintf (where, sizeof where, "snapshot %" PRId64, l->snapshot);
    printf ("Lost: guest bytes 0x%" PRIx64 "-0x%" PRIx64 " of %s: %s\n",
            l->guest_offset, l->guest_offset + l->length - 1, where,
            l->reason);
  }
  if (ret == EXIT_R_CLEAN)
    printf ("%s: clean.\n", path);
  else if (ret == EXIT_R_FIXED)
    printf ("%s: repaired; it now checks clean.\n", path);
  else
    printf ("%s: %" PRIu64 " corruptions, %" PRIu64 " leaked clusters and "
            "%" PRIu64 " check errors %s.\n", path, a->corruptions, a->leaks,
            a->check_errors,
            mode == QK_REPAIR_NONE ? "found (nothing was changed)"
            : "remain (qcowkit check lists them)");
  if (qk_repair_wrote (r) && undo)
    printf ("Undo journal: %s ('qcowkit undo %s %s' puts the old bytes "
            "back).\n", undo, undo, path);
out:
  qk_repair_free (r);
  free (undo_default);
  return ret;
}

static const char undo_help[] =
  "Usage: qcowkit undo [--force] JOURNAL IMAGE\n"
  "Put back the bytes a repair overwrote in IMAGE, from the undo journal\n"
  "JOURNAL. Refuses a journal made for another image or already applied;\n"
  "--force accepts a copy of the image (another file) whose contents match.\n";

int
cmd_undo (int argc, char **argv)
{
  const char *args[2];
  size_t n = 0;
  unsigned flags = 0;

  for (int i = 1; i < argc; i++) {
    if (strcmp (argv[i], "--help") == 0 || strcmp (argv[i], "-h") == 0) {
      fputs (undo_help, stdout);
      return EXIT_OK;
    }
    if (strcmp (argv[i], "--force") == 0)
      flags |= QK_UNDO_FORCE;
    else if (argv[i][0] == '-' && argv[i][1])
      return usage_error ("undo", "unknown option '%s'", argv[i]);
    else if (n == 2)
      return usage_error ("undo", "too many arguments");
    else
      args[n++] = argv[i];
  }
  if (n != 2)
    return usage_error ("undo", "needs JOURNAL and IMAGE");
  if (qk_undo_apply (args[0], args[1], flags) < 0) {
    errx_ ("%s", qk_get_error ());
    return EXIT_ERR;
  }
  printf ("%s: restored from %s.\n", args[1], args[0]);
  return EXIT_OK;
}
