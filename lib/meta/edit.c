/* lib/meta/edit.c: the metadata writers' common layer (edit.h).
 *
 * A plan says what changes in each moment of one kind (its parent, its
 * current mark, a delete marker cleared, disk sources renamed, the moment
 * removed or its file renamed) and which moments are added. Each changed
 * moment is written back as the bytes it was read from with only the
 * changed elements replaced (<parent>, <active>, the bulk root's
 * current=, <snapshotDeleteInProgress/>, a source's file=): libvirt's
 * formatting, and everything qcowkit does not know, are kept. Every new
 * file is parsed back with the loader's safe XML options before anything
 * is written.
 *
 * Crash-safety protocol, per kind (KIND/ is snapshot/ or checkpoint/, D
 * the domain, TAG the writer: repair, delete), each step durable before
 * the next:
 *   1. The backup directory KIND/.D.qk-TAG.N/ (N: the first free number)
 *      with its marker file .qcowkit-TAG, then a copy of every file that
 *      will be replaced, renamed or removed (each written to a temporary
 *      name, fsynced, renamed, the directory fsynced). A crash here leaves
 *      the metadata as it was, and a backup directory that a rerun leaves
 *      alone (it makes the next N).
 *   2. Renames, per-file layout only: renameat2 RENAME_NOREPLACE in
 *      KIND/D/, directory fsynced after each. A rename is atomic: the file
 *      has its old or its new name.
 *   3. New files (never over an existing one), then replaced files, each
 *      through lib/io/durable.c (temporary file, fsync, rename over the old
 *      name, directory fsync): each file is the old one or the complete new
 *      one. Files that gain the current mark are written before those that
 *      lose it, so that an interruption leaves several current snapshots
 *      (as found) and never none. A bulk file is one such write: the bulk
 *      layout changes at once.
 *   4. Removed files, unlinkat and a directory fsync, after their children
 *      were given their new parent in step 3.
 * After any interruption every file is the old or the new version of
 * itself, so libvirt loads the metadata; the writer's own protocol says
 * how a rerun finishes (it plans again from what it finds).
 * QCOWKIT_FAULT=after-OP-N (lib/meta/convert.c) kills the process after
 * the Nth mkdir, write, rename or unlink, to test exactly that.
 *
 * Only files that qcowkit read as this domain's metadata are written,
 * each by its leaf name in a directory opened under the sysroot (never
 * through a symlink); the backup directory is created, never reused. */
#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "meta/edit.h"
#include "io/io.h"

const char *
meta_leaf_of (const char *path)
{
  const char *s = strrchr (path, '/');
  return s ? s + 1 : path;
}

/* ---- editing bytes ---- */

struct splice {
  size_t a, b;
  char *text;
};

struct fedit {
  int dfd;                  /* the directory holding leaf (not owned) */
  char *leaf;
  char *path;               /* host path, for messages */
  char *buf;                /* as read */
  size_t len;
  struct splice *sp;
  size_t nsp, capsp;
  char *rename_to;          /* new leaf */
  char *new_path;
  bool remove;
  bool create;              /* a new file (adopted snapshot) */
  bool gains_current;
  char *out;                /* the new bytes */
  size_t outlen;
  char *backup;             /* host path of the copy */
};

static int
add_splice (struct fedit *e, size_t a, size_t b, char *text)
{
  struct splice *sp;

  if (text == NULL) {
    set_error (ENOMEM, "asprintf");
    return -1;
  }
  sp = qk_grow (e->sp, &e->capsp, e->nsp + 1, sizeof *sp);
  if (sp == NULL) {
    free (text);
    return -1;
  }
  e->sp = sp;
  e->sp[e->nsp++] = (struct splice) { a, b, text };
  return 0;
}

static int
cmp_splice (const void *x, const void *y)
{
  const struct splice *a = x, *b = y;
  return a->a < b->a ? -1 : a->a > b->a;
}

/* Apply the splices into e->out. */
static int
render (struct fedit *e)
{
  size_t n = e->len, at = 0, o = 0;

  if (e->nsp > 1)                 /* a rename has no splice: sp is NULL */
    qsort (e->sp, e->nsp, sizeof *e->sp, cmp_splice);
  for (size_t i = 0; i < e->nsp; i++) {
    if (e->sp[i].a < at || e->sp[i].b < e->sp[i].a || e->sp[i].b > e->len) {
      set_error (EINVAL, "%s: overlapping edits", e->path);
      return -1;
    }
    n += strlen (e->sp[i].text);
    at = e->sp[i].b;
  }
  e->out = malloc (n + 1);
  if (e->out == NULL) {
    set_error (ENOMEM, "malloc");
    return -1;
  }
  at = 0;
  for (size_t i = 0; i < e->nsp; i++) {
    size_t t = strlen (e->sp[i].text);
    memcpy (e->out + o, e->buf + at, e->sp[i].a - at);
    o += e->sp[i].a - at;
    memcpy (e->out + o, e->sp[i].text, t);
    o += t;
    at = e->sp[i].b;
  }
  memcpy (e->out + o, e->buf + at, e->len - at);
  o += e->len - at;
  e->out[o] = '\0';
  e->outlen = o;
  return 0;
}

/* XML text (and attribute value) escaping. */
char *
meta_esc (const char *s)
{
  size_t n = 1;
  char *r, *o;

  for (const char *p = s; *p; p++)
    n += *p == '&' ? 5 : (*p == '<' || *p == '>') ? 4
         : (*p == '\'' || *p == '"') ? 6 : 1;
  r = o = malloc (n);
  if (r == NULL)
    return NULL;
  for (const char *p = s; *p; p++)
    switch (*p) {
    case '&': o = stpcpy (o, "&amp;"); break;
    case '<': o = stpcpy (o, "&lt;"); break;
    case '>': o = stpcpy (o, "&gt;"); break;
    case '\'': o = stpcpy (o, "&apos;"); break;
    case '"': o = stpcpy (o, "&quot;"); break;
    default: *o++ = *p;
    }
  *o = '\0';
  return r;
}

/* Where the elements repair changes are, in one moment's bytes. */
/* The bytes of the first depth-2 element called want: from its '<' to
 * after its end tag. */
struct span {
  bool seen;
  uint64_t start, end;
};

struct elem_tags {
  char cur2[32];            /* the depth-2 element we are in */
  struct span name, parent, active, disks;   /* depth-2 elements */
  bool pname;               /* the text of <parent><name> */
  uint64_t pname_a, pname_b;
  unsigned pnames;
  uint64_t dip_start[64], dip_end[64];
  unsigned ndip;
  uint64_t edisk_start[64], edisk_close[64];
  unsigned nedisk;
  uint64_t disk_end[64];    /* '<' of </disk> in <disks> */
  unsigned ndisk;
};


static void
span (struct span *sp, const char *want, const char *name, bool end,
      bool empty, uint64_t start, uint64_t stop)
{
  if (sp->seen || strcmp (name, want) != 0)
    return;
  if (!end)
    sp->start = start;
  if (end || empty) {
    sp->end = stop;
    sp->seen = true;
  }
}

static int
elem_on_tag (void *opaque, bool end, bool empty, unsigned depth,
             const char *name, uint64_t start, uint64_t stop)
{
  struct elem_tags *t = opaque;

  if (depth == 2 && !end)
    snprintf (t->cur2, sizeof t->cur2, "%s", name);
  if (depth == 2) {
    span (&t->name, "name", name, end, empty, start, stop);
    span (&t->parent, "parent", name, end, empty, start, stop);
    span (&t->active, "active", name, end, empty, start, stop);
    span (&t->disks, "disks", name, end, empty, start, stop);
  }
  if (depth == 3 && strcmp (t->cur2, "parent") == 0
      && strcmp (name, "name") == 0) {
    if (!end && !empty) {
      t->pname_a = stop;
      t->pnames++;
    }
    if (end) {
      t->pname_b = start;
      t->pname = true;
    }
  }
  if (depth == 3 && end && strcmp (t->cur2, "disks") == 0
      && strcmp (name, "disk") == 0 && t->ndisk < 64)
    t->disk_end[t->ndisk++] = start;
  /* an empty <disk .../> (an internal disk snapshot): its "/>" */
  if (depth == 3 && empty && strcmp (t->cur2, "disks") == 0
      && strcmp (name, "disk") == 0 && t->nedisk < 64) {
    t->edisk_start[t->nedisk] = start;
    t->edisk_close[t->nedisk++] = stop - 2;
  }
  if (depth == 4 && strcmp (t->cur2, "disks") == 0
      && strcmp (name, "snapshotDeleteInProgress") == 0
      && t->ndip < 64) {
    if (!end)
      t->dip_start[t->ndip] = start;
    if (end || empty)
      t->dip_end[t->ndip++] = stop;
  }
  return 0;
}

/* The indentation of the line holding offset at, if only blanks precede
 * it on that line. */
static void
indent_of (const char *buf, size_t at, char *out, size_t outlen)
{
  size_t x = at;

  while (x > 0 && (buf[x - 1] == ' ' || buf[x - 1] == '\t'))
    x--;
  if (x == 0 || buf[x - 1] == '\n')
    snprintf (out, outlen, "%.*s", (int) (at - x), buf + x);
  else
    out[0] = '\0';
}

/* Widen [a, b) to whole lines when the element is alone on its line. */
static void
widen (const char *buf, size_t len, size_t *a, size_t *b)
{
  size_t x = *a, y = *b;

  while (x > 0 && (buf[x - 1] == ' ' || buf[x - 1] == '\t'))
    x--;
  while (y < len && (buf[y] == ' ' || buf[y] == '\t'))
    y++;
  if ((x == 0 || buf[x - 1] == '\n') && y < len && buf[y] == '\n') {
    *a = x;
    *b = y + 1;
  }
}

/* Splices renaming every file='OLD' (or "OLD") of the element to NEW. */
static int
subst_splices (struct fedit *e, size_t off, size_t len, const char *old,
               const char *new)
{
  char *eo = meta_esc (old), *en = meta_esc (new);
  const char *el = e->buf + off;
  int ret = -1;

  if (eo == NULL || en == NULL) {
    set_error (ENOMEM, "malloc");
    goto out;
  }
  for (size_t i = 0; i + 7 + strlen (eo) < len; i++) {
    size_t n = strlen (eo);
    char q;
    if (memcmp (el + i, "file=", 5) != 0)
      continue;
    q = el[i + 5];
    if ((q != '\'' && q != '"') || memcmp (el + i + 6, eo, n) != 0
        || el[i + 6 + n] != q)
      continue;
    if (add_splice (e, off + i + 6, off + i + 6 + n, strdup (en)) < 0)
      goto out;
    i += 6 + n;
  }
  ret = 0;
 out:
  free (eo);
  free (en);
  return ret;
}

int
meta_subst_source (char **t, const char *old, const char *new)
{
  char *eo = meta_esc (old), *en = meta_esc (new);
  struct qk_sbuf b = { 0 };
  const char *c = *t;
  bool found = false;
  int ret = -1;

  if (eo == NULL || en == NULL) {
    set_error (ENOMEM, "malloc");
    goto out;
  }
  while (*c) {
    size_t n = strlen (eo);
    if (strncmp (c, "file=", 5) == 0 && (c[5] == '\'' || c[5] == '"')
        && strncmp (c + 6, eo, n) == 0 && c[6 + n] == c[5]) {
      qk_sbuf_add (&b, c, 6);
      qk_sbuf_add (&b, en, strlen (en));
      c += 6 + n;
      found = true;
      continue;
    }
    qk_sbuf_add (&b, c, 1);
    c++;
  }
  if (b.p == NULL) {
    set_error (ENOMEM, "malloc");
    goto out;
  }
  if (!found) {
    free (b.p);
    set_error (ENOENT, "the source %s was not found as written", old);
    goto out;
  }
  free (*t);
  *t = b.p;
  ret = 0;
 out:
  free (eo);
  free (en);
  return ret;
}

/* The splices for moment i, whose bytes are e->buf[off, off + len). */
static int
moment_splices (struct meta_plan *w, size_t i, struct fedit *e, size_t off,
                size_t len)
{
  const struct medit *st = &w->st[i];
  const char *el = e->buf + off;
  struct elem_tags t = { .cur2 = "" };
  struct xml_scan sc;
  char ind[64];

  xml_scan_init (&sc, 1u << 30);
  sc.on_tag = elem_on_tag;
  sc.opaque = &t;
  if (xml_scan_feed (&sc, el, len) < 0) {
    set_error (EINVAL, "%s: %s", e->path, sc.errmsg);
    return -1;
  }
  if (st->parent_set) {
    char *pn = st->parent ? meta_esc (st->parent) : NULL;
    if (st->parent && pn == NULL) {
      set_error (ENOMEM, "malloc");
      return -1;
    }
    if (t.parent.seen && pn && t.pname && t.pnames == 1
        && t.pname_b >= t.pname_a) {
      /* only the name changes */
      if (add_splice (e, off + t.pname_a, off + t.pname_b, pn) < 0)
        return -1;
      pn = NULL;
    }
    else if (t.parent.seen) {
      size_t a = t.parent.start, b = t.parent.end;
      indent_of (el, a, ind, sizeof ind);
      if (pn) {
        if (add_splice (e, off + a, off + b,
                        meta_fmt ("<parent>\n%s  <name>%s</name>\n%s</parent>",
                             ind, pn, ind)) < 0) {
          free (pn);
          return -1;
        }
      }
      else {
        widen (el, len, &a, &b);
        if (add_splice (e, off + a, off + b, strdup ("")) < 0)
          return -1;
      }
    }
    else if (pn) {
      if (!t.name.seen) {
        free (pn);
        set_error (EINVAL, "%s: no <name> to put <parent> after", e->path);
        return -1;
      }
      indent_of (el, t.name.start, ind, sizeof ind);
      if (add_splice (e, off + t.name.end, off + t.name.end,
                      meta_fmt ("\n%s<parent>\n%s  <name>%s</name>\n%s</parent>",
                           ind, ind, pn, ind)) < 0) {
        free (pn);
        return -1;
      }
    }
    free (pn);
  }
  for (size_t k = 0; k < st->nsubst; k++)
    if (subst_splices (e, off, len, st->subst[2 * k], st->subst[2 * k + 1]) < 0)
      return -1;
  if (st->active >= 0 && t.active.seen) {
    if (add_splice (e, off + t.active.start, off + t.active.end,
                    meta_fmt ("<active>%d</active>", st->active)) < 0)
      return -1;
  }
  if (st->revert_disks) {
    if (!t.disks.seen) {
      set_error (EINVAL, "%s: no <disks> to put <revertDisks> after", e->path);
      return -1;
    }
    indent_of (el, t.disks.start, ind, sizeof ind);
    if (add_splice (e, off + t.disks.end, off + t.disks.end,
                    meta_fmt ("\n%s%s", ind, st->revert_disks)) < 0)
      return -1;
  }
  if (st->set_dip && t.ndip == 0)
    for (unsigned k = 0; k < t.ndisk; k++) {
      size_t at = t.disk_end[k];
      indent_of (el, at, ind, sizeof ind);
      if (add_splice (e, off + at, off + at,
                      meta_fmt ("  <snapshotDeleteInProgress/>\n%s", ind)) < 0)
        return -1;
    }
  if (st->set_dip && st->dip_empty && t.ndip == 0)
    for (unsigned k = 0; k < t.nedisk; k++) {
      size_t at = t.edisk_close[k];
      indent_of (el, t.edisk_start[k], ind, sizeof ind);
      if (add_splice (e, off + at, off + at + 2,
                      meta_fmt (">\n%s  <snapshotDeleteInProgress/>\n%s</disk>",
                                ind, ind)) < 0)
        return -1;
    }
  if (st->clear_dip)
    for (unsigned k = 0; k < t.ndip; k++) {
      size_t a = t.dip_start[k], b = t.dip_end[k];
      widen (el, len, &a, &b);
      if (add_splice (e, off + a, off + b, strdup ("")) < 0)
        return -1;
    }
  return 0;
}

char *
meta_read_fd (int fd, const char *path, size_t max, size_t *len)
{
  size_t cap = 8192, n = 0;
  char *b = malloc (cap + 1);

  if (b == NULL) {
    set_error (ENOMEM, "malloc");
    return NULL;
  }
  for (;;) {
    ssize_t r;
    if (n == cap) {
      char *nb;
      if (cap >= max) {
        free (b);
        set_error (EFBIG, "%s is larger than the limit", path);
        return NULL;
      }
      cap *= 2;
      nb = realloc (b, cap + 1);
      if (nb == NULL) {
        free (b);
        set_error (ENOMEM, "realloc");
        return NULL;
      }
      b = nb;
    }
    r = read (fd, b + n, cap - n);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      set_error (errno, "read %s", path);
      free (b);
      return NULL;
    }
    if (r == 0)
      break;
    n += r;
  }
  b[n] = '\0';
  *len = n;
  return b;
}

/* Read dfd/leaf (a regular file, never through a link). */
static char *
read_leaf (int dfd, const char *leaf, const char *path, size_t max,
           size_t *len)
{
  int fd = openat (dfd, leaf, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  struct stat st;
  char *b;

  if (fd < 0) {
    set_error (errno, "open %s", path);
    return NULL;
  }
  if (fstat (fd, &st) < 0 || !S_ISREG (st.st_mode)) {
    set_error (EINVAL, "%s is not a regular file", path);
    close (fd);
    return NULL;
  }
  b = meta_read_fd (fd, path, max, len);
  close (fd);
  return b;
}

struct doc_root {
  uint64_t a, b;
  bool seen;
  bool closed;
  uint64_t end_start;       /* the '<' of the root's end tag */
};

static int
root_on_tag (void *opaque, bool end, bool empty, unsigned depth,
             const char *name, uint64_t start, uint64_t stop)
{
  struct doc_root *r = opaque;

  (void) empty;
  (void) name;
  if (depth == 1 && !end && !r->seen) {
    r->a = start;
    r->b = stop;
    r->seen = true;
  }
  if (depth == 1 && end && r->seen && !r->closed) {
    r->end_start = start;
    r->closed = true;
  }
  return 0;
}

/* The bulk root's current= attribute replaced (cur NULL: removed). */
static int
bulk_current_splice (struct fedit *e, const char *cur)
{
  struct doc_root r = { 0 };
  size_t a, b, q, v0, v1;
  char *ce;

  /* the root start tag, as the scanner sees it */
  {
    struct xml_scan sc;
    xml_scan_init (&sc, 1u << 30);
    sc.on_tag = root_on_tag;
    sc.opaque = &r;
    if (xml_scan_feed (&sc, e->buf, e->len) < 0 || !r.seen || r.b <= r.a) {
      set_error (EINVAL, "%s: no root element", e->path);
      return -1;
    }
    r.b--;          /* the '>' */
  }
  /* find current= as an attribute name */
  for (a = r.a; a + 8 < r.b; a++) {
    if (memcmp (e->buf + a, "current", 7) == 0 && isspace ((unsigned char)
                                                           e->buf[a - 1])) {
      q = a + 7;
      while (q < r.b && isspace ((unsigned char) e->buf[q]))
        q++;
      if (q < r.b && e->buf[q] == '=')
        break;
    }
  }
  if (a + 8 < r.b) {
    q = a + 7;
    while (e->buf[q] != '=')
      q++;
    q++;
    while (q < r.b && isspace ((unsigned char) e->buf[q]))
      q++;
    if (q >= r.b || (e->buf[q] != '\'' && e->buf[q] != '"')) {
      set_error (EINVAL, "%s: current= is not quoted", e->path);
      return -1;
    }
    v0 = q + 1;
    v1 = v0;
    while (v1 < r.b && e->buf[v1] != e->buf[q])
      v1++;
    b = v1 + 1;
    if (cur == NULL) {
      while (a > r.a && isspace ((unsigned char) e->buf[a - 1]))
        a--;
      return add_splice (e, a, b, strdup (""));
    }
    ce = meta_esc (cur);
    return add_splice (e, v0, v1, ce);
  }
  if (cur == NULL)
    return 0;
  ce = meta_esc (cur);
  if (ce == NULL) {
    set_error (ENOMEM, "malloc");
    return -1;
  }
  a = r.b;
  if (a > r.a && e->buf[a - 1] == '/')
    a--;
  {
    int rc = add_splice (e, a, a, meta_fmt (" current='%s'", ce));
    free (ce);
    return rc;
  }
}

/* ---- the diff ---- */


char *
meta_definition_read (struct qk_meta *m)
{
  int fd = meta_open (m, m->config_file, O_RDONLY | O_NONBLOCK);
  size_t len;
  char *text;

  if (fd < 0)
    return NULL;
  text = meta_read_fd (fd, m->config_file, 16u << 20, &len);
  close (fd);
  return text;
}

/* Line number (1-based) of offset at, and the start of that line. */
static size_t
line_at (const char *buf, size_t at, size_t *start)
{
  size_t ln = 1, s = 0;

  for (size_t i = 0; i < at; i++)
    if (buf[i] == '\n') {
      ln++;
      s = i + 1;
    }
  *start = s;
  return ln;
}

static size_t
line_end (const char *buf, size_t len, size_t at)
{
  while (at < len && buf[at] != '\n')
    at++;
  return at < len ? at + 1 : at;
}

static void
emit_lines (struct qk_sbuf *d, char mark, const char *p, size_t n)
{
  while (n > 0) {
    size_t k = 0;
    while (k < n && p[k] != '\n')
      k++;
    qk_sbuf_add (d, &mark, 1);
    qk_sbuf_add (d, p, k);
    qk_sbuf_add (d, "\n", 1);
    if (k < n)
      k++;
    p += k;
    n -= k;
  }
}

static size_t
count_lines (const char *p, size_t n)
{
  size_t c = 0;
  for (size_t i = 0; i < n; i++)
    c += p[i] == '\n';
  if (n && p[n - 1] != '\n')
    c++;
  return c;
}

/* One hunk per splice (widened to whole lines, no context merging: the
 * splices of one file are far apart). */
static char *
make_diff (const struct fedit *e)
{
  struct qk_sbuf d = { 0 };
  long shift = 0;

  qk_sbuf_printf (&d, "--- %s\n+++ %s\n", e->path,
             e->new_path ? e->new_path : e->path);
  for (size_t i = 0; i < e->nsp; i++) {
    const struct splice *s = &e->sp[i];
    size_t ls, le = line_end (e->buf, e->len, s->b > s->a ? s->b - 1 : s->a);
    size_t ln = line_at (e->buf, s->a, &ls);
    size_t tl = strlen (s->text);
    size_t oldn, newn;
    struct qk_sbuf nw = { 0 };

    if (s->b == s->a && s->a == ls && tl == 0)
      continue;
    /* the new text of those lines */
    qk_sbuf_add (&nw, e->buf + ls, s->a - ls);
    qk_sbuf_add (&nw, s->text, tl);
    qk_sbuf_add (&nw, e->buf + s->b, le > s->b ? le - s->b : 0);
    if (nw.oom) {
      free (d.p);
      return NULL;
    }
    oldn = count_lines (e->buf + ls, le - ls);
    newn = nw.p ? count_lines (nw.p, nw.n) : 0;
    qk_sbuf_printf (&d, "@@ -%zu,%zu +%ld,%zu @@\n", ln, oldn, (long) ln + shift,
               newn);
    emit_lines (&d, '-', e->buf + ls, le - ls);
    if (nw.p)
      emit_lines (&d, '+', nw.p, nw.n);
    shift += (long) newn - (long) oldn;
    free (nw.p);
  }
  return d.p;
}

static char *
make_create_diff (const struct fedit *e)
{
  struct qk_sbuf d = { 0 };

  qk_sbuf_printf (&d, "--- /dev/null\n+++ %s\n@@ -0,0 +1,%zu @@\n", e->path,
             count_lines (e->out, e->outlen));
  emit_lines (&d, '+', e->out, e->outlen);
  return d.p;
}

/* ---- writing one kind ---- */

struct kplan {
  struct fedit *e;
  size_t n, cap;
  int kfd;                  /* KIND/ */
  int dfd;                  /* KIND/D/ (per-file), else -1 */
  char *kpath;              /* host path of KIND/ */
  int bfd;                  /* the backup directory */
  char *bpath;
};

static void
free_kplan (struct kplan *k)
{
  for (size_t i = 0; i < k->n; i++) {
    struct fedit *e = &k->e[i];
    for (size_t j = 0; j < e->nsp; j++)
      free (e->sp[j].text);
    free (e->sp);
    free (e->leaf);
    free (e->path);
    free (e->buf);
    free (e->rename_to);
    free (e->new_path);
    free (e->out);
    free (e->backup);
  }
  free (k->e);
  if (k->kfd >= 0)
    close (k->kfd);
  if (k->dfd >= 0)
    close (k->dfd);
  if (k->bfd >= 0)
    close (k->bfd);
  free (k->kpath);
  free (k->bpath);
}

static struct fedit *
new_edit (struct kplan *k, int dfd, const char *dirpath, const char *leaf,
          uint64_t max)
{
  struct fedit *e = qk_grow (k->e, &k->cap, k->n + 1, sizeof *e);

  if (e == NULL)
    return NULL;
  k->e = e;
  e = &k->e[k->n];
  memset (e, 0, sizeof *e);
  e->dfd = dfd;
  e->leaf = strdup (leaf);
  e->path = meta_fmt ("%s/%s", dirpath, leaf);
  if (e->leaf == NULL || e->path == NULL) {
    free (e->leaf);
    free (e->path);
    set_error (ENOMEM, "strdup");
    return NULL;
  }
  e->buf = read_leaf (dfd, leaf, e->path, max, &e->len);
  if (e->buf == NULL) {
    free (e->leaf);
    free (e->path);
    return NULL;
  }
  k->n++;
  return e;
}

/* Open KIND/ and (per-file) KIND/D/ under the sysroot, never through a
 * link in the last component. */
static int
open_places (struct meta_plan *w, struct kplan *k, bool make)
{
  struct meta_set *s = w->s;
  const char *loc = s->layout == QK_META_LAYOUT_BULK ? s->bulk : s->dir;
  const char *slash = strrchr (loc, '/');

  k->kfd = k->dfd = k->bfd = -1;
  if (slash == NULL) {
    set_error (EINVAL, "%s: not a path", loc);
    return -1;
  }
  k->kpath = strndup (loc, slash - loc);
  if (k->kpath == NULL) {
    set_error (ENOMEM, "strndup");
    return -1;
  }
  if (s->layout == QK_META_LAYOUT_NONE) {
    /* no metadata yet: the per-file layout is made when something is
     * adopted, as libvirt 9 makes it */
    char *ks = strrchr (k->kpath, '/'), *state;
    int sfd;

    if (!make)
      return 0;
    if (ks == NULL || (state = strndup (k->kpath, ks - k->kpath)) == NULL) {
      set_error (EINVAL, "%s: not a path", k->kpath);
      return -1;
    }
    sfd = meta_open (w->m, state, O_RDONLY | O_DIRECTORY);
    free (state);
    if (sfd < 0)
      return -1;
    if (mkdirat (sfd, ks + 1, 0755) == 0)
      qk_fault_point ("mkdir");
    else if (errno != EEXIST) {
      set_error (errno, "mkdir %s", k->kpath);
      close (sfd);
      return -1;
    }
    k->kfd = openat (sfd, ks + 1, O_RDONLY | O_DIRECTORY | O_NOFOLLOW
                     | O_CLOEXEC);
    close (sfd);
    if (k->kfd < 0) {
      set_error (errno, "open %s (never through a symbolic link)", k->kpath);
      return -1;
    }
    if (mkdirat (k->kfd, slash + 1, 0755) == 0) {
      qk_fsync_dir (k->kfd);
      qk_fault_point ("mkdir");
    }
    else if (errno != EEXIST) {
      set_error (errno, "mkdir %s", loc);
      return -1;
    }
  }
  else {
    k->kfd = meta_open (w->m, k->kpath, O_RDONLY | O_DIRECTORY);
    if (k->kfd < 0)
      return -1;
  }
  if (s->layout != QK_META_LAYOUT_BULK) {
    k->dfd = openat (k->kfd, slash + 1, O_RDONLY | O_DIRECTORY | O_NOFOLLOW
                     | O_CLOEXEC);
    if (k->dfd < 0) {
      set_error (errno, "open %s (never through a symbolic link)", loc);
      return -1;
    }
  }
  return 0;
}

/* Per-file: one new file per new moment. */
static int
add_new_files (struct meta_plan *w, struct kplan *k)
{
  for (size_t a = 0; a < w->nnew; a++) {
    struct fedit *e = qk_grow (k->e, &k->cap, k->n + 1, sizeof *e);
    if (e == NULL)
      return -1;
    k->e = e;
    e = &k->e[k->n++];
    memset (e, 0, sizeof *e);
    e->dfd = k->dfd;
    e->create = true;
    e->leaf = meta_fmt ("%s.xml", w->nw[a].name);
    e->path = meta_fmt ("%s/%s.xml", w->s->dir, w->nw[a].name);
    e->out = strdup (w->nw[a].xml_pf);
    if (e->leaf == NULL || e->path == NULL || e->out == NULL) {
      set_error (ENOMEM, "asprintf");
      return -1;
    }
    e->outlen = strlen (e->out);
  }
  return 0;
}

/* Bulk: the new elements inserted before the root's end tag. */
static int
add_new_bulk (struct meta_plan *w, struct fedit *e)
{
  struct doc_root r = { 0 };
  struct xml_scan sc;
  size_t at;

  if (w->nnew == 0)
    return 0;
  xml_scan_init (&sc, 1u << 30);
  sc.on_tag = root_on_tag;
  sc.opaque = &r;
  if (xml_scan_feed (&sc, e->buf, e->len) < 0 || !r.seen || !r.closed) {
    set_error (EINVAL, "%s: no root end tag", e->path);
    return -1;
  }
  at = r.end_start;
  while (at > 0 && (e->buf[at - 1] == ' ' || e->buf[at - 1] == '\t'))
    at--;
  if (!(at == 0 || e->buf[at - 1] == '\n'))
    at = r.end_start;
  for (size_t a = 0; a < w->nnew; a++) {
    char *x = strdup (w->nw[a].xml_bulk);
    if (x == NULL || add_splice (e, at, at, x) < 0) {
      set_error (ENOMEM, "strdup");
      return -1;
    }
  }
  return 0;
}

static int
build_edits (struct meta_plan *w, struct kplan *k)
{
  struct meta_set *s = w->s;
  uint64_t max = w->m->lim.max_size ? w->m->lim.max_size : (16u << 20);

  if (s->layout != QK_META_LAYOUT_BULK) {
    for (size_t i = 0; i < s->n; i++) {
      struct fedit *e;
      if (!w->st[i].touched)
        continue;
      e = new_edit (k, k->dfd, s->dir, meta_leaf_of (s->m[i].pub.file), max);
      if (e == NULL)
        return -1;
      if (w->st[i].drop) {
        e->remove = true;
        continue;
      }
      if (moment_splices (w, i, e, 0, e->len) < 0)
        return -1;
      e->gains_current = w->st[i].active == 1;
      if (w->st[i].rename_to) {
        e->rename_to = strdup (w->st[i].rename_to);
        e->new_path = meta_fmt ("%s/%s", s->dir, w->st[i].rename_to);
        if (e->rename_to == NULL || e->new_path == NULL) {
          set_error (ENOMEM, "strdup");
          return -1;
        }
      }
    }
    if (add_new_files (w, k) < 0)
      return -1;
    return 0;
  }
  /* bulk: one file */
  {
    bool any = w->bulk_current_set;
    struct fedit *e;

    for (size_t i = 0; i < s->n; i++)
      any |= w->st[i].touched;
    any |= w->nnew > 0;
    if (!any)
      return 0;
    e = new_edit (k, k->kfd, k->kpath, meta_leaf_of (s->bulk),
                  max * 64 > max ? max * 64 : max);
    if (e == NULL)
      return -1;
    for (size_t i = 0; i < s->n; i++) {
      const struct qk_meta_moment *p = &s->m[i].pub;
      if (!w->st[i].touched)
        continue;
      if (p->offset + p->length > e->len) {
        set_error (EINVAL, "%s changed since it was read", e->path);
        return -1;
      }
      if (w->st[i].drop) {
        size_t a = p->offset, b = p->offset + p->length;
        widen (e->buf, e->len, &a, &b);
        if (add_splice (e, a, b, strdup ("")) < 0)
          return -1;
        continue;
      }
      if (moment_splices (w, i, e, p->offset, p->length) < 0)
        return -1;
    }
    if (w->bulk_current_set
        && bulk_current_splice (e, w->bulk_current) < 0)
      return -1;
    if (add_new_bulk (w, e) < 0)
      return -1;
  }
  return 0;
}

/* Every new file parses as the loader parses it. */
static int
verify_edits (struct kplan *k)
{
  for (size_t i = 0; i < k->n; i++) {
    struct fedit *e = &k->e[i];
    char err[256];
    struct _xmlDoc *doc;

    if (e->remove)
      continue;
    if (!e->create && render (e) < 0)
      return -1;
    doc = meta_xml_parse (e->out, e->outlen, e->path, err, sizeof err);
    if (doc == NULL) {
      set_error (EINVAL, "%s: the repaired file would not parse (%s); "
                 "nothing was written", e->path, err);
      return -1;
    }
    meta_xml_free_doc (doc);
  }
  return 0;
}

static int
make_backup_dir (struct qk_meta *m, struct kplan *k, const char *tag)
{
  char name[300], marker[512], mleaf[64];
  time_t now = time (NULL);

  for (unsigned n = 1; n < 10000; n++) {
    snprintf (name, sizeof name, ".%s.qk-%s.%u", m->domain, tag, n);
    if (mkdirat (k->kfd, name, 0700) == 0)
      break;
    if (errno != EEXIST) {
      set_error (errno, "mkdir %s/%s", k->kpath, name);
      return -1;
    }
    name[0] = '\0';
  }
  if (name[0] == '\0') {
    set_error (EEXIST, "%s: no free backup directory name", k->kpath);
    return -1;
  }
  qk_fault_point ("mkdir");
  k->bpath = meta_fmt ("%s/%s", k->kpath, name);
  k->bfd = openat (k->kfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW
                   | O_CLOEXEC);
  if (k->bpath == NULL || k->bfd < 0) {
    set_error (errno ? errno : ENOMEM, "open %s/%s", k->kpath, name);
    return -1;
  }
  snprintf (marker, sizeof marker, "qcowkit meta %s backup of domain %s, "
            "made %lld\n", tag, m->domain, (long long) now);
  snprintf (mleaf, sizeof mleaf, ".qcowkit-%s", tag);
  if (qk_durable_write (k->bfd, mleaf, marker, strlen (marker), 0600, 0) < 0)
    return -1;
  qk_fault_point ("write");
  return qk_fsync_dir (k->kfd);
}

static int
report_change (qk_meta_change_fn fn, void *opaque, int kind, struct fedit *e)
{
  struct qk_meta_change c = {
    .kind = kind,
    .action = e->remove ? "remove" : e->create ? "create"
              : (e->rename_to && e->nsp == 0) ? "rename" : "edit",
    .path = e->path,
    .new_path = e->new_path,
    .backup = e->backup,
  };
  char *diff = NULL;
  int rc;

  if (fn == NULL)
    return 0;
  if (e->create)
    c.diff = diff = make_create_diff (e);
  else if (!e->remove && e->nsp)
    c.diff = diff = make_diff (e);
  rc = fn (opaque, &c);
  free (diff);
  return rc;
}

static int
write_kind (struct meta_plan *w, struct kplan *k)
{
  /* 1. backups (of files that exist) */
  bool old = false;
  for (size_t i = 0; i < k->n; i++)
    old |= !k->e[i].create;
  if (old && make_backup_dir (w->m, k, w->tag) < 0)
    return -1;
  for (size_t i = 0; i < k->n; i++) {
    struct fedit *e = &k->e[i];
    if (e->create)
      continue;
    if (qk_durable_write (k->bfd, e->leaf, e->buf, e->len, 0600, 0) < 0)
      return -1;
    qk_fault_point ("write");
    e->backup = meta_fmt ("%s/%s", k->bpath, e->leaf);
  }
  /* 2. renames */
  for (size_t i = 0; i < k->n; i++) {
    struct fedit *e = &k->e[i];
    if (e->rename_to == NULL || e->remove)
      continue;
    if (renameat2 (e->dfd, e->leaf, e->dfd, e->rename_to,
                   RENAME_NOREPLACE) < 0) {
      set_error (errno, "rename %s to %s", e->path, e->rename_to);
      return -1;
    }
    if (qk_fsync_dir (e->dfd) < 0)
      return -1;
    qk_fault_point ("rename");
  }
  /* 3. new files (adopted snapshots; never over a file), then replaced
   * files: those gaining the current mark first */
  for (size_t i = 0; i < k->n; i++) {
    struct fedit *e = &k->e[i];
    if (!e->create)
      continue;
    if (qk_durable_write (e->dfd, e->leaf, e->out, e->outlen, 0600, 0) < 0)
      return -1;
    qk_fault_point ("write");
  }
  for (int pass = 0; pass < 2; pass++)
    for (size_t i = 0; i < k->n; i++) {
      struct fedit *e = &k->e[i];
      if (e->remove || e->create || e->nsp == 0
          || e->gains_current != (pass == 0))
        continue;
      if (qk_durable_write (e->dfd, e->rename_to ? e->rename_to : e->leaf,
                            e->out, e->outlen, 0600, QK_DURABLE_REPLACE) < 0)
        return -1;
      qk_fault_point ("write");
    }
  /* 4. removed files */
  for (size_t i = 0; i < k->n; i++) {
    struct fedit *e = &k->e[i];
    if (!e->remove)
      continue;
    if (qk_durable_unlink (e->dfd, e->leaf) < 0)
      return -1;
    qk_fault_point ("unlink");
  }
  return 0;
}


/* ---- the plan ---- */

int
meta_plan_init (struct meta_plan *p, struct qk_meta *m, int kind,
                const char *tag)
{
  memset (p, 0, sizeof *p);
  p->m = m;
  p->s = &m->set[kind];
  p->tag = tag;
  p->st = calloc (p->s->n + 1, sizeof *p->st);
  if (p->st == NULL) {
    set_error (ENOMEM, "calloc");
    return -1;
  }
  for (size_t i = 0; i < p->s->n; i++)
    p->st[i].active = -1;
  return 0;
}

void
meta_plan_free (struct meta_plan *p)
{
  if (p->st)
    for (size_t i = 0; i < p->s->n; i++) {
      free (p->st[i].parent);
      free (p->st[i].rename_to);
      free (p->st[i].revert_disks);
      for (size_t k = 0; k < 2 * p->st[i].nsubst; k++)
        free (p->st[i].subst[k]);
      free (p->st[i].subst);
    }
  free (p->st);
  free (p->bulk_current);
  for (size_t a = 0; a < p->nnew; a++) {
    free (p->nw[a].name);
    free (p->nw[a].xml_pf);
    free (p->nw[a].xml_bulk);
  }
  free (p->nw);
  memset (p, 0, sizeof *p);
}

bool
meta_plan_empty (const struct meta_plan *p)
{
  if (p->bulk_current_set || p->nnew)
    return false;
  for (size_t i = 0; i < p->s->n; i++)
    if (p->st[i].touched)
      return false;
  return true;
}

int
meta_plan_add_new (struct meta_plan *p, const char *name, char *xml_pf,
                   char *xml_bulk)
{
  struct mnew *n = qk_grow (p->nw, &p->capnew, p->nnew + 1, sizeof *n);

  if (n == NULL || xml_pf == NULL || xml_bulk == NULL) {
    free (xml_pf);
    free (xml_bulk);
    if (n)
      set_error (ENOMEM, "malloc");
    return -1;
  }
  p->nw = n;
  n = &p->nw[p->nnew];
  n->name = strdup (name);
  if (n->name == NULL) {
    free (xml_pf);
    free (xml_bulk);
    set_error (ENOMEM, "strdup");
    return -1;
  }
  n->xml_pf = xml_pf;
  n->xml_bulk = xml_bulk;
  p->nnew++;
  return 0;
}

int
medit_set_parent (struct medit *e, const char *parent)
{
  char *c = parent ? strdup (parent) : NULL;

  if (parent && c == NULL) {
    set_error (ENOMEM, "strdup");
    return -1;
  }
  free (e->parent);
  e->parent = c;
  e->parent_set = true;
  e->touched = true;
  return 0;
}

int
medit_add_subst (struct medit *e, const char *old, const char *new)
{
  char **v = realloc (e->subst, (e->nsubst + 1) * 2 * sizeof *v);

  if (v == NULL) {
    set_error (ENOMEM, "realloc");
    return -1;
  }
  e->subst = v;
  v[2 * e->nsubst] = strdup (old);
  v[2 * e->nsubst + 1] = strdup (new);
  if (v[2 * e->nsubst] == NULL || v[2 * e->nsubst + 1] == NULL) {
    free (v[2 * e->nsubst]);
    free (v[2 * e->nsubst + 1]);
    set_error (ENOMEM, "strdup");
    return -1;
  }
  e->nsubst++;
  e->touched = true;
  return 0;
}

int
meta_plan_apply (struct meta_plan *p, bool dry, qk_meta_change_fn fn,
                 void *opaque)
{
  struct kplan k = { .kfd = -1, .dfd = -1, .bfd = -1 };
  int ret = -1;

  if (meta_plan_empty (p))
    return 0;
  if (open_places (p, &k, !dry) < 0 || build_edits (p, &k) < 0
      || verify_edits (&k) < 0)
    goto out;
  if (k.n && !dry && write_kind (p, &k) < 0)
    goto out;
  for (size_t i = 0; i < k.n; i++)
    if (report_change (fn, opaque, p->s->kind, &k.e[i]) != 0) {
      set_error (ECANCELED, "stopped by the change callback");
      goto out;
    }
  ret = 0;
 out:
  free_kplan (&k);
  return ret;
}

/* ---- image operations, reported as changes ---- */

int
meta_report_op (qk_meta_change_fn fn, void *opaque, const char *action,
                const char *path, const char *new_path)
{
  struct qk_meta_change c = { .kind = -1, .action = action, .path = path,
                              .new_path = new_path };

  if (fn && fn (opaque, &c) != 0) {
    set_error (ECANCELED, "stopped by the change callback");
    return -1;
  }
  return 0;
}

/* ---- the snapshot a writer acts on ---- */

size_t
meta_writer_target (struct qk_meta *m, const char *name, bool dry,
                    const char *verb)
{
  struct meta_set *s = &m->set[QK_META_SNAPSHOT];
  size_t i = meta_lookup (s, name);
  char *why = NULL;
  int rc;

  if (i == QK_META_NONE || !s->m[i].pub.loaded) {
    set_error (ENOENT, "no snapshot '%s' (that libvirt loads)", name);
    return QK_META_NONE;
  }
  /* (several current snapshots are no obstacle: the writers set the
   * current one, and their own interruption can leave two) */
  if (s->relations_bad) {
    set_error (EINVAL, "the snapshot relations are broken (meta check): run "
               "qcowkit meta repair first");
    return QK_META_NONE;
  }
  if (dry)
    return i;
  rc = qk_meta_daemon_running (m, &why);
  if (rc != 0) {
    set_error (EBUSY, "refusing to %s while libvirt may be using the "
               "metadata: %s", verb, why ? why : "cannot tell");
    free (why);
    return QK_META_NONE;
  }
  return i;
}

/* ---- whole files outside the metadata directories ---- */

int
meta_replace_file (struct qk_meta *m, const char *host, const char *buf,
                   size_t len, const char *tag, bool dry,
                   qk_meta_change_fn fn, void *opaque)
{
  const char *slash = strrchr (host, '/');
  struct kplan k = { .kfd = -1, .dfd = -1, .bfd = -1 };
  struct fedit *e;
  int ret = -1;

  if (slash == NULL) {
    set_error (EINVAL, "%s: not a path", host);
    return -1;
  }
  k.kpath = strndup (host, slash - host);
  if (k.kpath == NULL) {
    set_error (ENOMEM, "strndup");
    return -1;
  }
  k.kfd = meta_open (m, k.kpath, O_RDONLY | O_DIRECTORY);
  if (k.kfd < 0)
    goto out;
  e = new_edit (&k, k.kfd, k.kpath, slash + 1, 16u << 20);
  if (e == NULL)
    goto out;
  e->out = malloc (len + 1);
  if (e->out == NULL) {
    set_error (ENOMEM, "malloc");
    goto out;
  }
  memcpy (e->out, buf, len);
  e->out[len] = '\0';
  e->outlen = len;
  /* one splice for the diff: the lines between the common head and tail */
  {
    size_t a = 0, ta = 0;
    while (a < e->len && a < len && e->buf[a] == buf[a])
      a++;
    while (a > 0 && e->buf[a - 1] != '\n')
      a--;
    while (ta < e->len - a && ta < len - a
           && e->buf[e->len - 1 - ta] == buf[len - 1 - ta])
      ta++;
    while (ta > 0 && e->buf[e->len - ta] != '\n')
      ta--;
    if (ta > 0)
      ta--;       /* keep the newline ending the changed lines */
    if (add_splice (e, a, e->len - ta, strndup (buf + a, len - ta - a)) < 0)
      goto out;
  }
  if (!dry) {
    if (make_backup_dir (m, &k, tag) < 0
        || qk_durable_write (k.bfd, e->leaf, e->buf, e->len, 0600, 0) < 0)
      goto out;
    qk_fault_point ("write");
    e->backup = meta_fmt ("%s/%s", k.bpath, e->leaf);
    if (qk_durable_write (k.kfd, e->leaf, e->out, e->outlen, 0600,
                          QK_DURABLE_REPLACE) < 0)
      goto out;
    qk_fault_point ("write");
  }
  if (report_change (fn, opaque, -1, e) != 0) {
    set_error (ECANCELED, "stopped by the change callback");
    goto out;
  }
  ret = 0;
 out:
  free_kplan (&k);
  return ret;
}

/* Whether the image at path (host path) holds a qcow2 snapshot named
 * name: 1, 0, or -1 with the error set when it cannot be opened or is
 * not qcow2. */
int
meta_image_has_snapshot (struct qk_meta *m, const char *path,
                         const char *name)
{
  struct qk_image *img = meta_image_open (m, path);
  int r = 0;

  if (img == NULL)
    return -1;
  if (strcmp (qk_image_format (img), "qcow2") != 0
      || !qk_image_snapshots_ok (img)) {
    set_error (ENOTSUP, "%s: not a qcow2 image with a readable snapshot "
               "table", path);
    qk_image_close (img);
    return -1;
  }
  for (size_t k = 0; k < qk_image_snapshot_count (img); k++) {
    const struct qk_snapshot *sn = qk_image_snapshot (img, k);
    if (sn && sn->name && strcmp (sn->name, name) == 0)
      r = 1;
  }
  qk_image_close (img);
  return r;
}
