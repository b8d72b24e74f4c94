/* qcowkit command-line tool: shared helpers. */
#include <config.h>

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tool.h"

const char *progname = "qcowkit";

static void vmsg (const char *pre, const char *fmt, va_list ap)
  __attribute__ ((format (printf, 2, 0)));

static void
vmsg (const char *pre, const char *fmt, va_list ap)
{
  fprintf (stderr, "%s: %s", progname, pre);
  vfprintf (stderr, fmt, ap);
  fputc ('\n', stderr);
}

void
warnx_ (const char *fmt, ...)
{
  va_list ap;
  va_start (ap, fmt);
  vmsg ("warning: ", fmt, ap);
  va_end (ap);
}

void
errx_ (const char *fmt, ...)
{
  va_list ap;
  va_start (ap, fmt);
  vmsg ("", fmt, ap);
  va_end (ap);
}

int
usage_error (const char *cmd, const char *fmt, ...)
{
  va_list ap;
  va_start (ap, fmt);
  vmsg ("", fmt, ap);
  va_end (ap);
  fprintf (stderr, "Try '%s %s --help' for more information.\n", progname,
           cmd);
  return EXIT_USAGE;
}

bool
parse_size (const char *s, uint64_t *v)
{
  char *end;
  unsigned long long n;
  int shift = 0;

  if (s == NULL || *s == '\0' || *s == '-')
    return false;
  /* decimal as qemu-img reads it (010 is ten); 0x for hexadecimal */
  {
    bool hex = s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
    const char *digits = hex ? s + 2 : s;
    if (*digits == '\0' || *digits == '-' || *digits == '+')
      return false;
    errno = 0;
    n = strtoull (digits, &end, hex ? 16 : 10);
    if (errno || end == digits)
      return false;
  }
  switch (*end) {
  case '\0': break;
  case 'k': case 'K': shift = 10; end++; break;
  case 'M': shift = 20; end++; break;
  case 'G': shift = 30; end++; break;
  case 'T': shift = 40; end++; break;
  default: return false;
  }
  if (*end == 'i' && end[1] == 'B')
    end += 2;
  else if (*end == 'B')
    end++;
  if (*end != '\0' || (shift && n > (UINT64_MAX >> shift)))
    return false;
  *v = (uint64_t) n << shift;
  return true;
}

/* ---- option tables (tool.h) ---- */

/* Does NAMES ("-n|--dry-run") spell S (LEN bytes)? With BASE, a name is
 * compared up to its '=' ("--list-problems=man" as "--list-problems"). */
static bool
opt_named (const char *names, const char *s, size_t len, bool base)
{
  for (const char *p = names; *p; ) {
    size_t n = strcspn (p, "|");
    size_t m = base ? strcspn (p, "|=") : n;

    if (m == len && strncmp (p, s, len) == 0)
      return true;
    p += n + (p[n] == '|');
  }
  return false;
}

/* Match argv[*i] against table T and act on it: 1 if it was an option of
 * T (and *i advanced past a separate value), 0 if not, -1 after a usage
 * error. */
static int
opt_one (const struct opt *t, const char *cmd, int argc, char **argv, int *i)
{
  const char *a = argv[*i];
  const char *eq = a[0] == '-' && a[1] == '-' ? strchr (a, '=') : NULL;

  for (; t->names; t++) {
    const char *value = NULL;
    size_t len = strlen (a);
    char name[64];

    if (t->needs && eq && opt_named (t->names, a, (size_t) (eq - a), false)) {
      value = eq + 1;
      len = (size_t) (eq - a);
    }
    else if (!opt_named (t->names, a, len, false))
      continue;
    else if (t->needs) {
      if (*i + 1 >= argc)
        return usage_error (cmd, "%s needs %s", a, t->needs), -1;
      value = argv[++*i];
    }
    if (t->str)
      *t->str = value;
    else if (t->flags)
      *t->flags |= t->set;
    else if (t->on)
      *t->on = true;
    else if (t->fn) {
      snprintf (name, sizeof name, "%.*s", (int) len, a);
      if (t->fn (t->data, name, value) < 0)
        return -1;
    }
    return 1;
  }
  return 0;
}

/* The common options (qcowkit(1), COMMON OPTIONS). */
struct common_ctx {
  struct common_opts *o;
  const char *cmd;
};

static int
common_output (void *data, const char *opt, const char *v)
{
  struct common_ctx *cc = data;

  (void) opt;
  if (strcmp (v, "json") == 0)
    cc->o->output = OUT_JSON;
  else if (strcmp (v, "human") == 0)
    cc->o->output = OUT_HUMAN;
  else
    return usage_error (cc->cmd, "--output: '%s' is not json or human", v), -1;
  return 0;
}

static int
common_progress (void *data, const char *opt, const char *v)
{
  struct common_ctx *cc = data;

  (void) v;
  if (strcmp (opt, "-q") == 0 || strcmp (opt, "--quiet") == 0) {
    cc->o->progress = 0;
    cc->o->quiet = true;
  }
  else
    cc->o->progress = 1;
  return 0;
}

#define COMMON_OPTS 5

static void
common_table (struct opt t[COMMON_OPTS], struct common_ctx *cc)
{
  if (cc->o == NULL) {         /* a command without the common options */
    memset (t, 0, sizeof *t);
    return;
  }
  const struct opt common[COMMON_OPTS] = {
    { "--output", "a value", .fn = common_output, .data = cc },
    { "--root", "a directory", .str = &cc->o->root },
    { "-p|--progress", NULL, .fn = common_progress, .data = cc },
    { "-q|--quiet", NULL, .fn = common_progress, .data = cc },
    { NULL },
  };

  memcpy (t, common, sizeof common);
}

int
common_option (struct common_opts *o, int argc, char **argv, int *i,
               const char *cmd)
{
  struct common_ctx cc = { o, cmd };
  struct opt t[COMMON_OPTS];

  common_table (t, &cc);
  return opt_one (t, cmd, argc, argv, i);
}

/* The next option the help text names, from P: "-x" or "--name" after a
 * space, a bracket, a comma, '|' or a quote. NULL at the end; else its
 * start, and its length in *len. */
static const char *
help_option (const char *p, size_t *len)
{
  for (; *p; p++) {
    const char *q = p + 1;

    if (*p != '-' || !strchr (" \t\n[(,|'\"", p[-1]))
      continue;
    if (*q == '-' && islower ((unsigned char) q[1])) {
      for (q++; isalnum ((unsigned char) *q) || *q == '-'; q++)
        ;
    }
    else if (isalpha ((unsigned char) *q) && !isalnum ((unsigned char) q[1]))
      q++;
    else
      continue;
    *len = (size_t) (q - p);
    return p;
  }
  return NULL;
}

static bool
help_names (const char *help, const char *s, size_t len)
{
  size_t n;

  for (const char *p = help + 1; (p = help_option (p, &n)) != NULL; p += n)
    if (n == len && strncmp (p, s, n) == 0)
      return true;
  return false;
}

bool
opt_check_help (const struct opt_cmd *c)
{
  struct common_ctx cc = { c->common, c->name };
  struct opt common[COMMON_OPTS];
  bool ok = true;
  size_t n;

  common_table (common, &cc);
  /* the help's first byte is never an option: start past it, so that
   * help_option() may look one byte back */
  for (const char *p = c->help + 1; (p = help_option (p, &n)) != NULL;
       p += n) {
    if ((n == 2 && strncmp (p, "-h", 2) == 0)
        || (n == 6 && strncmp (p, "--help", 6) == 0))
      continue;
    bool known = false;
    for (const struct opt *t = c->opts; t->names && !known; t++)
      known = opt_named (t->names, p, n, true);
    for (const struct opt *t = common; c->common && t->names && !known; t++)
      known = opt_named (t->names, p, n, true);
    if (!known) {
      errx_ ("internal error: %s: its help names %.*s, which it does not "
             "take", c->name, (int) n, p);
      ok = false;
    }
  }
  for (const struct opt *t = c->opts; t->names; t++) {
    int targets = (t->str != NULL) + (t->flags != NULL) + (t->on != NULL)
                  + (t->fn != NULL);
    if (targets != 1 || (t->str && !t->needs) || t->names[0] != '-') {
      errx_ ("internal error: %s: option %s: a bad table entry", c->name,
             t->names);
      ok = false;
    }
    for (const char *p = t->names; *p && !t->hidden; ) {
      size_t len = strcspn (p, "|"), base = strcspn (p, "|=");
      if (!help_names (c->help, p, base)) {
        errx_ ("internal error: %s: option %.*s is not in its help",
               c->name, (int) len, p);
        ok = false;
      }
      p += len + (p[len] == '|');
    }
  }
  return ok;
}

bool
opt_parse (const struct opt_cmd *c, int argc, char **argv, int *status)
{
  struct common_ctx cc = { c->common, c->name };
  struct opt common[COMMON_OPTS];
  size_t n = 0;

  assert (opt_check_help (c));
  common_table (common, &cc);
  *status = c->usage_status ? c->usage_status : EXIT_USAGE;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    int k;

    if (strcmp (a, "--help") == 0 || strcmp (a, "-h") == 0) {
      fputs (c->help, stdout);
      *status = EXIT_OK;
      return false;
    }
    k = opt_one (c->opts, c->name, argc, argv, &i);
    if (k == 0 && c->common)
      k = opt_one (common, c->name, argc, argv, &i);
    if (k < 0)
      return false;
    if (k)
      continue;
    if (a[0] == '-' && a[1])
      return usage_error (c->name, "unknown option '%s'", a), false;
    if (n >= c->max_operands)
      return usage_error (c->name, "too many arguments"), false;
    c->operands[n++] = a;
  }
  if (n < c->min_operands)
    return usage_error (c->name, "%s",
                        c->missing ? c->missing : "no image given"), false;
  return true;
}

/* QEMU takes OFD locks on bytes 100.. (permissions) and 200.. (shared
 * permissions) of an image it has open. A write lock we could not take
 * means a running QEMU (or qemu-img) is using the image. */
bool
locked_by_qemu (const char *path)
{
  struct flock fl;
  int fd = open (path, O_RDONLY | O_CLOEXEC);
  bool busy = false;

  if (fd < 0)
    return false;
  memset (&fl, 0, sizeof fl);
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = 100;
  fl.l_len = 200;
#ifdef F_OFD_GETLK
  if (fcntl (fd, F_OFD_GETLK, &fl) == 0 && fl.l_type != F_UNLCK)
    busy = true;
#endif
  close (fd);
  return busy;
}

struct qk_image *
open_image (const char *path, const struct common_opts *o, unsigned flags,
            bool show_warnings)
{
  struct qk_open_options oo = { .flags = flags, .confine_root = o->root };
  struct qk_image *img = qk_image_open (path, &oo);

  if (img == NULL) {
    errx_ ("%s", qk_get_error ());
    return NULL;
  }
  if (locked_by_qemu (path))
    warnx_ ("%s is in use by a running QEMU: what is shown may be changing",
            path);
  if (show_warnings && !o->quiet)
    for (struct qk_image *i = img; i; i = qk_image_backing (i))
      for (size_t k = 0; k < qk_image_warning_count (i); k++)
        warnx_ ("%s: %s", qk_image_filename (i), qk_image_warning (i, k));
  return img;
}

const char *
size_str (uint64_t val)
{
  static const char *const suffixes[] = { "", "Ki", "Mi", "Gi", "Ti", "Pi",
                                          "Ei" };
  static char buf[64];
  int i;

  frexp (val / (1000.0 / 1024.0), &i);
  i = (i - 1) / 10;
  if (i < 0)
    i = 0;
  if (i > 6)
    i = 6;
  snprintf (buf, sizeof buf, "%0.3g %sB",
            (double) val / (double) (1ULL << (i * 10)), suffixes[i]);
  return buf;
}

void
progress_start (struct progress *p, const struct common_opts *o,
                uint64_t total)
{
  p->on = o->progress == 1 || (o->progress == -1 && isatty (2));
  p->total = total ? total : 1;
  p->last_permille = -1;
  progress_update (p, 0);
}

void
progress_update (struct progress *p, uint64_t done)
{
  int pm;

  if (!p->on)
    return;
  pm = (int) (done * 1000.0 / p->total);
  if (pm == p->last_permille)
    return;
  p->last_permille = pm;
  fprintf (stderr, "\r    (%5.1f/100%%)", pm / 10.0);
  fflush (stderr);
}

void
progress_end (struct progress *p)
{
  if (!p->on)
    return;
  p->last_permille = -1;
  progress_update (p, p->total);
  fputc ('\n', stderr);
}

void
progress_report (void *opaque, uint64_t done, uint64_t total)
{
  struct progress *p = opaque;

  p->total = total ? total : 1;
  progress_update (p, done);
}

void
progress_hook (struct progress *p, qk_progress_fn *fn, void **opaque)
{
  *fn = p->on ? progress_report : NULL;
  *opaque = p->on ? p : NULL;
}

void
write_failed (int e, const char *what, const char *path, bool changed,
              const char *undo, const char *again)
{
  errx_ ("%s", qk_get_error ());
  if (e == EBUSY || e == EAGAIN)
    errx_ ("%s is in use (QEMU holds its lock): stop the VM first", what);
  if (changed && undo)
    errx_ ("what was written is in %s: 'qcowkit undo %s %s' puts it back",
           undo, undo, path);
  else if (changed)
    errx_ ("%s", again);
}

/* A string from an image or a metadata file, safe to print on a
 * terminal: control bytes (C0, DEL, and the C1 controls U+0080..U+009F,
 * which some terminals obey as escapes), bytes that are not UTF-8, and
 * backslash are shown as \xNN; valid UTF-8 passes. A string longer than
 * the buffer ends in "...". Returns one of 4 rotating static buffers. */
const char *
printable (const char *s)
{
  static char bufs[4][16 * 1024 + 1];
  static unsigned next;
  char *b = bufs[next++ % 4], *p = b;
  const unsigned char *u = (const unsigned char *) s;

  if (s == NULL)
    return "(null)";
  while (*u) {
    unsigned char c = *u;
    size_t n = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3
      : (c & 0xf8) == 0xf0 ? 4 : 0;
    bool ok = n > 0;

    for (size_t i = 1; ok && i < n; i++)
      ok = (u[i] & 0xc0) == 0x80;
    if (ok && n == 2 && (c < 0xc2 || (c == 0xc2 && u[1] < 0xa0)))
      ok = false;       /* overlong, or a C1 control */
    if (ok && n == 1 && (c < 0x20 || c == 0x7f || c == '\\'))
      ok = false;
    if (p + 4 * (n ? n : 1) + 4 > b + sizeof bufs[0]) {
      memcpy (p, "...", 4);
      return b;
    }
    if (!ok) {
      p += sprintf (p, c == '\\' ? "\\\\" : "\\x%02x", c);
      u++;
      continue;
    }
    memcpy (p, u, n);
    p += n;
    u += n;
  }
  *p = '\0';
  return b;
}

/* The word that starts a problem line: "ERROR 0x040001: ...", as
 * qemu-img starts its lines (ERROR, Leaked) where it has one. */
const char *
problem_label (enum qk_problem_class cls)
{
  switch (cls) {
  case QK_CLASS_CORRUPTION: return "ERROR";
  case QK_CLASS_LEAK: return "Leak";
  case QK_CLASS_ERROR: return "FAILED";
  case QK_CLASS_WARNING: return "Warning";
  default: return "Info";
  }
}

/* One question for a fix, on a terminal: y, n, a (yes to this and every
 * later one), q (stop). */
enum qk_answer
ask_fix (FILE *tty, bool *yes_to_all, const struct qk_fix *f,
         const char *loses)
{
  char line[64];

  if (*yes_to_all) {
    printf ("%s yes\n", printable (f->prompt));
    return QK_ANSWER_YES;
  }
  for (;;) {
    printf ("%s%s [y/n/a/q] ", printable (f->prompt),
            (f->flags & QK_FIX_LOSES_DATA) ? loses : "");
    fflush (stdout);
    if (fgets (line, sizeof line, tty) == NULL) {
      printf ("\n");
      return QK_ANSWER_ABORT;
    }
    switch (line[0]) {
    case 'y': case 'Y': return QK_ANSWER_YES;
    case 'n': case 'N': return QK_ANSWER_NO;
    case 'a': case 'A': *yes_to_all = true; return QK_ANSWER_YES;
    case 'q': case 'Q': return QK_ANSWER_ABORT;
    default: break;
    }
  }
}
