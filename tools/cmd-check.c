/* qcowkit check: a read-only, fsck-like consistency check with qemu-img
 * check's exit codes and JSON, and a stable problem code on every line. */
#include <config.h>

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "tool.h"
#include "json.h"

#define EXIT_CHECK_CLEAN      0
#define EXIT_CHECK_FAILED     1
#define EXIT_CHECK_CORRUPT    2
#define EXIT_CHECK_LEAKS      3
#define EXIT_CHECK_UNCHECKABLE 63

struct seen {
  uint32_t code;
  uint64_t n;
};

struct check_ctx {
  enum output_fmt output;
  unsigned max_per_code;   /* human output: lines per code before grouping */
  struct seen *seen;
  size_t n_seen, cap_seen;
  struct qk_json *j;       /* JSON: the "problems" array is open */
};

static struct seen *
seen_of (struct check_ctx *c, uint32_t code)
{
  for (size_t i = 0; i < c->n_seen; i++)
    if (c->seen[i].code == code)
      return &c->seen[i];
  if (c->n_seen == c->cap_seen) {
    size_t nc = c->cap_seen ? 2 * c->cap_seen : 16;
    struct seen *n = realloc (c->seen, nc * sizeof *n);
    if (n == NULL)
      return NULL;
    c->seen = n;
    c->cap_seen = nc;
  }
  c->seen[c->n_seen] = (struct seen) { code, 0 };
  return &c->seen[c->n_seen++];
}

static void
json_opt (struct qk_json *j, const char *key, uint64_t v)
{
  if (v != QK_NONE)
    qk_json_uint (j, key, v);
}

static int
on_problem (void *opaque, const struct qk_problem *p)
{
  struct check_ctx *c = opaque;
  struct seen *s = seen_of (c, p->code);

  if (s)
    s->n++;
  if (s && s->n > c->max_per_code)
    return 0;
  fprintf (stderr, "%s 0x%06x: %s\n", problem_label (p->cls), p->code,
           p->message);
  return 0;
}

/* In JSON every problem is listed; the code is a string "0x040001", as the
 * man page writes it. */
static int
on_problem_json (void *opaque, const struct qk_problem *p)
{
  struct check_ctx *c = opaque;
  struct qk_json *j = c->j;
  char code[16];

  snprintf (code, sizeof code, "0x%06x", p->code);
  qk_json_object_begin (j, NULL);
  qk_json_string (j, "code", code);
  qk_json_string (j, "name", p->name);
  qk_json_string (j, "class", qk_problem_class_name (p->cls));
  qk_json_string (j, "message", p->message);
  json_opt (j, "host-offset", p->host_offset);
  json_opt (j, "length", p->length);
  json_opt (j, "guest-offset", p->guest_offset);
  json_opt (j, "guest-offset-2", p->guest_offset2);
  json_opt (j, "table-offset", p->table_offset);
  json_opt (j, "index", p->index);
  json_opt (j, "expected", p->expected);
  json_opt (j, "found", p->found);
  if (p->cls == QK_CLASS_CORRUPTION || p->cls == QK_CLASS_LEAK
      || p->cls == QK_CLASS_ERROR)
    qk_json_uint (j, "count", p->count);
  qk_json_object_end (j);
  return 0;
}

static void
human_summary (struct check_ctx *c, const struct qk_check_result *r)
{
  for (size_t i = 0; i < c->n_seen; i++)
    if (c->seen[i].n > c->max_per_code)
      fprintf (stderr, "... %" PRIu64 " more of problem 0x%06x not shown "
               "(--max-per-code raises the limit)\n",
               c->seen[i].n - c->max_per_code, c->seen[i].code);

  if (!(r->corruptions || r->leaks || r->check_errors))
    printf ("No errors were found on the image.\n");
  else {
    if (r->corruptions)
      printf ("\n%" PRIu64 " errors were found on the image.\n"
              "Data may be corrupted, or further writes to the image may "
              "corrupt it.\n", r->corruptions);
    if (r->leaks)
      printf ("\n%" PRIu64 " leaked clusters were found on the image.\n"
              "This means waste of disk space, but no harm to data.\n",
              r->leaks);
    if (r->check_errors)
      printf ("\n%" PRIu64 " internal errors have occurred during the "
              "check.\n", r->check_errors);
  }
  if (r->total_clusters && r->allocated_clusters)
    printf ("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, %0.2f%% fragmented, "
            "%0.2f%% compressed clusters\n", r->allocated_clusters,
            r->total_clusters,
            r->allocated_clusters * 100.0 / r->total_clusters,
            r->fragmented_clusters * 100.0 / r->allocated_clusters,
            r->compressed_clusters * 100.0 / r->allocated_clusters);
  if (r->image_end_offset)
    printf ("Image end offset: %" PRIu64 "\n", r->image_end_offset);
  if (r->warnings)
    printf ("%" PRIu64 " warnings (problems qemu-img does not count; see "
            "above).\n", r->warnings);
}

/* What a check -r run repaired, in qemu-img's units. */
struct fixed {
  uint64_t corruptions_fixed, leaks_fixed;
};

static void
json_result (struct qk_json *j, const struct qk_check_result *r,
             const struct fixed *fx)
{
  /* qemu-img's ImageCheck: the optional members only when non-zero */
  qk_json_uint (j, "check-errors", r->check_errors);
  if (r->image_end_offset)
    qk_json_uint (j, "image-end-offset", r->image_end_offset);
  if (r->corruptions)
    qk_json_uint (j, "corruptions", r->corruptions);
  if (r->leaks)
    qk_json_uint (j, "leaks", r->leaks);
  if (fx && fx->corruptions_fixed)
    qk_json_uint (j, "corruptions-fixed", fx->corruptions_fixed);
  if (fx && fx->leaks_fixed)
    qk_json_uint (j, "leaks-fixed", fx->leaks_fixed);
  if (r->total_clusters)
    qk_json_uint (j, "total-clusters", r->total_clusters);
  if (r->allocated_clusters)
    qk_json_uint (j, "allocated-clusters", r->allocated_clusters);
  if (r->fragmented_clusters)
    qk_json_uint (j, "fragmented-clusters", r->fragmented_clusters);
  if (r->compressed_clusters)
    qk_json_uint (j, "compressed-clusters", r->compressed_clusters);
}

static int
exit_code (const struct qk_check_result *r)
{
  if (r->check_errors)
    return EXIT_CHECK_FAILED;
  if (r->corruptions)
    return EXIT_CHECK_CORRUPT;
  if (r->leaks)
    return EXIT_CHECK_LEAKS;
  return EXIT_CHECK_CLEAN;
}

/* How a fix is made: by preen, or asked (and whether it loses data). */
static const char *
fix_mode (unsigned flags)
{
  if (flags & QK_FIX_PREEN)
    return "preen";
  return flags & QK_FIX_LOSES_DATA ? "-y only, loses data" : "-y only";
}

/* The fixes whose man text names problem CODE (as 0xPPNNNN) or NAME (as
 * a word), for the "Fixed by" line of qcowkit-problems(7): the fix table
 * names the problems each fix repairs in its description. */
static void
print_fixed_by (uint32_t code, const char *name)
{
  char hex[16];
  size_t nl = strlen (name), n = 0;

  snprintf (hex, sizeof hex, "0x%06x", code);
  for (size_t i = 0; i < qk_fix_count (); i++) {
    uint32_t fcode;
    const char *fname, *fdesc, *p;
    unsigned flags;
    bool hit;

    qk_fix_info (i, &fcode, &fname, &flags, &fdesc);
    hit = strstr (fdesc, hex) != NULL;
    for (p = fdesc; !hit && (p = strstr (p, name)) != NULL; p += nl)
      hit = (p == fdesc || !(isalnum ((unsigned char) p[-1]) || p[-1] == '_'))
            && !(isalnum ((unsigned char) p[nl]) || p[nl] == '_');
    if (hit)
      printf ("%s\\fB0x%06x %s\\fR (%s)", n++ ? ", " : ".br\nFixed by ",
              fcode, fname, fix_mode (flags));
  }
  if (n)
    printf (".\n");
}

/* Print one problem table, as text or as man page entries. */
static void
print_problem_table (size_t (*count) (void),
                     int (*info) (size_t, uint32_t *, const char **,
                                  enum qk_problem_class *, const char **),
                     bool man)
{
  for (size_t i = 0; i < count (); i++) {
    uint32_t code;
    const char *name, *desc;
    enum qk_problem_class cls;

    info (i, &code, &name, &cls, &desc);
    if (man) {
      printf (".TP\n.B 0x%06x %s\n(%s) %s\n", code, name,
              qk_problem_class_name (cls), desc);
      print_fixed_by (code, name);
    }
    else
      printf ("0x%06x  %-28s %-10s %s\n", code, name,
              qk_problem_class_name (cls), desc);
  }
}

/* --list-problems[=man]: the table, for people and for qcowkit-problems(7),
 * which documents both tables: the image checker's and the libvirt
 * metadata checker's (qcowkit meta check --list-problems lists the
 * latter alone). */
static int
list_problems (bool man)
{
  if (man) {
    printf (".\\\" Generated from lib/check/problems.def and "
            "lib/meta/problems.def by\n"
            ".\\\" 'qcowkit check --list-problems=man'. Do not edit.\n"
            ".TH QCOWKIT-PROBLEMS 7 \"\" \"qcowkit %s\" \"qcowkit\"\n"
            ".SH NAME\nqcowkit-problems \\- the problems qcowkit check and "
            "qcowkit meta check report\n.SH DESCRIPTION\n"
            "Every problem \\fBqcowkit check\\fR(1) and \\fBqcowkit meta "
            "check\\fR (\\fBqcowkit-meta\\fR(1)) report has a stable "
            "code 0xPPNNNN: PP is the phase that finds it, NNNN a number. A "
            "code is never reused or renumbered. Phases 00 to 0f are the "
            "image checker's, 10 and above the libvirt metadata checker's.\n"
            ".PP\n"
            "The class says what a problem does to the result: "
            "\\fBcorruption\\fR and \\fBleak\\fR are what qemu-img check "
            "counts as corruptions and leaks (exit status 2 and 3); "
            "\\fBerror\\fR means a part of the check could not be done "
            "(qemu-img's check-errors, exit status 1); \\fBwarning\\fR and "
            "\\fBinfo\\fR are findings qemu-img does not count, and never "
            "change the exit status.\n.SH IMAGE PROBLEMS\n", PACKAGE_VERSION);
  }
  print_problem_table (qk_problem_count, qk_problem_info, man);
  if (man) {
    printf (".SH METADATA PROBLEMS\n"
            "What \\fBqcowkit meta check\\fR finds in libvirt's snapshot and "
            "checkpoint metadata and between it and the images. There, "
            "\\fBcorruption\\fR is what libvirt drops, skips or detaches "
            "when it loads the metadata, or what makes a revert, delete or "
            "backup go wrong (exit status 2).\n");
    print_problem_table (qk_meta_problem_count, qk_meta_problem_info, true);
    printf (".SH FIXES\n"
            "What \\fBqcowkit repair\\fR (\\fBqcowkit-repair\\fR(1)) and "
            "\\fBqcowkit check -r\\fR can do about the image problems above, "
            "one row per fix, with the problems it fixes. \\fBpreen\\fR: "
            "the fix cannot lose guest data, \\fBrepair -p\\fR makes it "
            "without asking; \\fB-y only\\fR: it is made with \\fB-y\\fR "
            "or when the answer to its question is yes; \\fBloses data\\fR: "
            "guest ranges become unreadable and each is reported.\n");
    for (size_t i = 0; i < qk_fix_count (); i++) {
      uint32_t fcode;
      const char *fname, *fdesc;
      unsigned flags;
      qk_fix_info (i, &fcode, &fname, &flags, &fdesc);
      printf (".TP\n.B 0x%06x %s\n(%s%s) %s\n", fcode, fname,
              fix_mode (flags), flags & QK_FIX_LEAKS ? ", check -r leaks" : "",
              fdesc);
    }
    printf (".SH SEE ALSO\n.BR qcowkit (1),\n.BR qcowkit-check (1),\n"
            ".BR qcowkit-meta (1),\n.BR qcowkit-repair (1),\n.BR qemu-img (1)\n");
  }
  return EXIT_OK;
}

/* check -r: notes of the changes made, on stderr as qemu-img's
 * "Repairing cluster ..." lines. They come by the hundred thousand (a line
 * per cluster) and stderr is unbuffered, a write each: gathered here and
 * written in 64 KiB pieces (all flushed when the repair returns, before
 * anything else goes to stderr). */
static char note_buf[1 << 16];
static size_t note_len;

static void
note_flush (void)
{
  if (note_len)
    fwrite (note_buf, 1, note_len, stderr);
  note_len = 0;
}

static int
on_note (void *opaque, const struct qk_problem *p)
{
  size_t n = strlen (p->message);
  (void) opaque;
  if (note_len + n + 1 > sizeof note_buf)
    note_flush ();
  if (n + 1 > sizeof note_buf) {
    fprintf (stderr, "%s\n", p->message);
    return 0;
  }
  memcpy (note_buf + note_len, p->message, n);
  note_buf[note_len + n] = '\n';
  note_len += n + 1;
  return 0;
}

/* check -r leaks|all: qk_repair with every fix (or the leak fixes) and no
 * questions, then qemu-img's summary of what was repaired. The caller
 * then checks again ("Double checking the fixed image now..."): the exit
 * status describes the image after the repair, as qemu-img's does. */
static int
repair_image (struct check_ctx *c, const char *path,
              const struct common_opts *o, bool leaks_only, const char *undo,
              struct fixed *fx, struct qk_check_result *after)
{
  struct qk_repair *r = qk_repair_new ();
  struct qk_open_options oo = { .flags = QK_OPEN_FORCE,
                                .confine_root = o->root };
  const struct qk_check_result *b, *a;
  int ret = -1;

  if (r == NULL
      || qk_repair_set_mode (r, QK_REPAIR_ALL) < 0
      || qk_repair_set_flags (r, leaks_only ? QK_REPAIR_LEAKS_ONLY : 0) < 0
      || qk_repair_set_undo (r, undo) < 0
      || qk_repair_set_open_options (r, &oo) < 0
      || qk_repair_set_report_limit (r, c->max_per_code) < 0
      || qk_repair_set_report (r, c->output == OUT_JSON ? NULL : on_problem,
                               on_note, c) < 0) {
    errx_ ("%s", qk_get_error ());
    goto out;
  }
  if (qk_repair_run (r, path) < 0) {
    note_flush ();
    errx_ ("%s", qk_get_error ());
    goto out;
  }
  note_flush ();
  b = qk_repair_before (r);
  a = qk_repair_after (r);
  *after = *a;
  fx->leaks_fixed = b->leaks > a->leaks ? b->leaks - a->leaks : 0;
  fx->corruptions_fixed = b->corruptions > a->corruptions
                          ? b->corruptions - a->corruptions : 0;
  if (qk_repair_wrote (r) && fx->leaks_fixed == 0
      && fx->corruptions_fixed == 0)
    for (size_t i = 0; i < qk_repair_fix_count (r); i++) {
      const struct qk_fix *f = qk_repair_fix (r, i);
      if (f->made) {
        fx->leaks_fixed += f->leaks_fixed;
        fx->corruptions_fixed += f->corruptions_fixed;
      }
    }
  for (size_t i = 0; i < qk_repair_lost_count (r); i++) {
    const struct qk_lost *l = qk_repair_lost (r, i);
    char where[40] = "the active image";
    if (l->snapshot >= 0)
      snprintf (where, sizeof where, "snapshot %" PRId64, l->snapshot);
    warnx_ ("%s: guest range 0x%" PRIx64 "+0x%" PRIx64 " of %s is lost: %s",
            path, l->guest_offset, l->length, where, l->reason);
  }
  if (c->output == OUT_HUMAN && (fx->leaks_fixed || fx->corruptions_fixed))
    printf ("The following inconsistencies were found and repaired:\n\n"
            "    %" PRIu64 " leaked clusters\n"
            "    %" PRIu64 " corruptions\n\n"
            "Double checking the fixed image now...\n",
            fx->leaks_fixed, fx->corruptions_fixed);
  c->n_seen = 0;
  ret = 0;
out:
  qk_repair_free (r);
  return ret;
}

/* A usage error exits 1, as qemu-img check does: 2 would say "corruptions
 * found" to a script. */
#define check_usage(...) (usage_error ("check", __VA_ARGS__), EXIT_CHECK_FAILED)

static const char help[] =
  "Usage: qcowkit check [--output=json|human] [--chain] [--deep] "
  "[--max-per-code N] [--root DIR] IMAGE\n"
  "       qcowkit check -r leaks|all [--undo FILE] [--output=json|human] "
  "IMAGE\n"
  "       qcowkit check --list-problems[=man]\n"
  "Check IMAGE read-only, like qemu-img check (same exit codes: 0 clean,\n"
  "1 check could not complete, 2 corruptions, 3 leaks only, 63 not\n"
  "checkable) and more; each problem carries a code (qcowkit-problems(7)).\n"
  "--chain checks every image of the backing chain; --deep decompresses\n"
  "every compressed cluster. -r repairs as qemu-img check -r does, then\n"
  "checks again (see also qcowkit repair).\n";

int
cmd_check (int argc, char **argv)
{
  struct common_opts o = { .progress = -1 };
  struct check_ctx c = { .max_per_code = 10 };
  bool chain = false;
  int repair = 0;            /* 1: -r leaks, 2: -r all */
  const char *undo = NULL;
  struct fixed fx = { 0, 0 };
  unsigned flags = 0;
  const char *path = NULL;
  struct qk_image *img;
  int r, worst = EXIT_CHECK_CLEAN;
  struct qk_check_result after;
  bool reuse = false;

  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp (a, "--help") == 0 || strcmp (a, "-h") == 0) {
      fputs (help, stdout);
      return EXIT_OK;
    }
    if (strcmp (a, "--list-problems") == 0)
      return list_problems (false);
    if (strcmp (a, "--list-problems=man") == 0)
      return list_problems (true);
    if ((r = common_option (&o, argc, argv, &i, "check")) < 0)
      return EXIT_CHECK_FAILED;
    if (r)
      continue;
    if (strcmp (a, "--chain") == 0)
      chain = true;
    else if (strcmp (a, "--deep") == 0)
      flags |= QK_CHECK_DEEP;
    else if (strcmp (a, "--max-per-code") == 0) {
      uint64_t v;
      if (i + 1 >= argc || !parse_size (argv[i + 1], &v) || v > 1000000000)
        return check_usage ("--max-per-code needs a number");
      c.max_per_code = v;
      i++;
    }
    else if (strcmp (a, "-r") == 0 || strcmp (a, "--repair") == 0
             || strncmp (a, "--repair=", 9) == 0) {
      const char *v = a[2] == 'r' && a[8] == '=' ? a + 9 : NULL;
      if (v == NULL) {
        if (i + 1 >= argc)
          return check_usage ("%s needs leaks or all", a);
        v = argv[++i];
      }
      if (strcmp (v, "leaks") == 0)
        repair = 1;
      else if (strcmp (v, "all") == 0)
        repair = 2;
      else
        return check_usage ("-r: '%s' is not leaks or all", v);
    }
    else if (strcmp (a, "--undo") == 0) {
      if (i + 1 >= argc)
        return check_usage ("--undo needs a file");
      undo = argv[++i];
    }
    else if (a[0] == '-' && a[1])
      return check_usage ("unknown option '%s'", a);
    else if (path)
      return check_usage ("too many arguments");
    else
      path = a;
  }
  if (path == NULL)
    return check_usage ("no image given");
  if (repair && chain)
    return check_usage ("-r repairs one image: not with --chain");
  if (undo && !repair)
    return check_usage ("--undo is for -r");
  c.output = o.output;

  img = open_image (path, &o, QK_OPEN_FORCE, false);
  if (img == NULL)
    return EXIT_CHECK_FAILED;
  if (qk_image_header (img) == NULL) {
    errx_ ("%s: the %s format has no check", path, qk_image_format (img));
    qk_image_close (img);
    return EXIT_CHECK_UNCHECKABLE;
  }
  if (repair) {
    qk_image_close (img);
    if (repair_image (&c, path, &o, repair == 1, undo, &fx, &after) < 0)
      return EXIT_CHECK_FAILED;
    /* The repair's last check read the image as it is now, after its last
     * write and flush, over a reopened image: when it found nothing at all
     * (no message to print), it is the double check. */
    reuse = flags == 0 && after.check_errors == 0 && after.corruptions == 0
            && after.leaks == 0 && after.warnings == 0 && after.infos == 0;
    img = open_image (path, &o, QK_OPEN_FORCE, false);
    if (img == NULL)
      return EXIT_CHECK_FAILED;
  }

  if (o.output == OUT_JSON) {
    c.j = qk_json_new (stdout, 4);
    if (chain)
      qk_json_array_begin (c.j, NULL);
  }
  for (struct qk_image *i = img; i; i = chain ? qk_image_backing (i) : NULL) {
    struct qk_check_result res;
    int rc;

    if (qk_image_header (i) == NULL)   /* raw backing files have no check */
      continue;
    c.n_seen = 0;
    if (c.j) {
      qk_json_object_begin (c.j, NULL);
      qk_json_string (c.j, "filename", qk_image_filename (i));
      qk_json_string (c.j, "format", "qcow2");
      qk_json_array_begin (c.j, "problems");
    }
    else if (chain)
      printf ("%s%s:\n", i == img ? "" : "\n", qk_image_filename (i));
    if (reuse && i == img) {
      res = after;
      r = 0;
    }
    else
      r = qk_check_run (i, flags, c.j ? on_problem_json : on_problem, &c,
                        &res);
    if (c.j)
      qk_json_array_end (c.j);
    if (r < 0) {
      errx_ ("%s", qk_get_error ());
      if (c.j) {
        qk_json_uint (c.j, "check-errors", 1);
        qk_json_object_end (c.j);
      }
      rc = EXIT_CHECK_FAILED;
    }
    else {
      if (c.j) {
        json_result (c.j, &res, repair ? &fx : NULL);
        qk_json_object_begin (c.j, "qcowkit");
        qk_json_uint (c.j, "warnings", res.warnings);
        qk_json_uint (c.j, "infos", res.infos);
        qk_json_uint (c.j, "l2-tables-read", res.l2_tables_read);
        qk_json_object_end (c.j);
        qk_json_object_end (c.j);
      }
      else
        human_summary (&c, &res);
      rc = exit_code (&res);
      if (rc == EXIT_CHECK_FAILED && c.output == OUT_HUMAN)
        errx_ ("Check failed");
    }
    /* the worst result wins: failed > corrupt > leaks > clean */
    if (rc == EXIT_CHECK_FAILED || worst == EXIT_CHECK_FAILED)
      worst = EXIT_CHECK_FAILED;
    else if (rc == EXIT_CHECK_CORRUPT || worst == EXIT_CHECK_CORRUPT)
      worst = EXIT_CHECK_CORRUPT;
    else if (rc == EXIT_CHECK_LEAKS)
      worst = EXIT_CHECK_LEAKS;
  }
  if (c.j) {
    if (chain)
      qk_json_array_end (c.j);
    qk_json_free (c.j);
  }
  free (c.seen);
  qk_image_close (img);
  return worst;
}
