/* qcowkit meta: libvirt snapshot and checkpoint metadata: check, tree,
 * convert between the per-file and the bulk layouts, repair. */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tool.h"
#include "json.h"

#define EXIT_META_CLEAN   0
#define EXIT_META_FAILED  1
#define EXIT_META_ERRORS  2

static const char help[] =
  "Usage: qcowkit meta check [OPTIONS] [--no-images] DOMAIN\n"
  "       qcowkit meta tree [OPTIONS] [--kind snapshot|checkpoint|all] DOMAIN\n"
  "       qcowkit meta convert [OPTIONS] --to bulk|per-file [--kind snapshot|checkpoint|all]\n"
  "                            [--no-backup] [--force] DOMAIN\n"
  "       qcowkit meta repair [OPTIONS] [-n|-p|-y] [--drop-orphaned-metadata] DOMAIN\n"
  "       qcowkit meta delete [OPTIONS] [--children|--children-only] [--metadata-only]\n"
  "                           [--dry-run] DOMAIN SNAPSHOT\n"
  "       qcowkit meta revert [OPTIONS] [--discard-children] [--dry-run] DOMAIN SNAPSHOT\n"
  "       qcowkit meta check --list-problems[=man]\n"
  "       qcowkit meta repair --list-fixes[=man]\n"
  "Read, check and convert a domain's libvirt snapshot and checkpoint\n"
  "metadata (see qcowkit-meta(1)). OPTIONS:\n"
  "  --output=json|human   output format\n"
  "  --libvirt-root DIR    an embedded driver's root (DIR/etc/qemu, DIR/lib/qemu)\n"
  "  --sysroot DIR         a host's disk mounted at DIR: every absolute path,\n"
  "                        image paths inside the XML included, is under DIR\n"
  "  --config-dir DIR      domain definitions (default /etc/libvirt/qemu)\n"
  "  --state-dir DIR       snapshot/ and checkpoint/ (default /var/lib/libvirt/qemu)\n"
  "  --max-file-size SIZE  per-file (and per bulk element) limit, default 16M\n"
  "check exits 0 when libvirt would load everything, 2 when problems of class\n"
  "corruption were found, 1 when part of the check could not be done.\n"
  "repair -n (the default off a terminal) says what it would fix; -p makes\n"
  "the fixes that lose nothing; -y every fix; on a terminal it asks. Each\n"
  "file changed is kept first in KIND/.DOMAIN.qk-repair.N/. Exit status as\n"
  "fsck: 0 nothing to fix, 1 fixed and clean, 4 problems left, 8 error,\n"
  "16 usage, 32 stopped.\n"
  "delete merges an external snapshot's overlay into the image it froze and\n"
  "updates the metadata as libvirt does; --metadata-only only the metadata.\n"
  "revert starts a new overlay on a disk-only external snapshot's images.\n";

struct meta_cli {
  struct common_opts o;
  struct qk_meta_options mo;
  const char *domain;
  int kind;                 /* -1: all */
  bool kind_given;
  bool no_images;
  bool no_backup, force;
  int to;                   /* layout */
  bool repair;              /* -n/-p/-y are answer modes */
  int mode;                 /* enum qk_repair_mode, -1: by the terminal */
  bool drop_orphaned;
  bool list_fixes, list_fixes_man;
  bool del;                 /* delete, revert: DOMAIN SNAPSHOT */
  bool rev;
  const char *snapshot;
  unsigned del_flags;
};

static const char *
layout_name (int l)
{
  switch (l) {
  case QK_META_LAYOUT_PER_FILE: return "per-file";
  case QK_META_LAYOUT_BULK: return "bulk";
  default: return "none";
  }
}

static const char *
kind_plural (int k)
{
  return k == QK_META_CHECKPOINT ? "checkpoints" : "snapshots";
}

static int
list_problems (bool man)
{
  if (man)
    printf (".\\\" Generated from lib/meta/problems.def by "
            "'qcowkit meta check --list-problems=man'.\n.SH METADATA PROBLEMS\n");
  for (size_t i = 0; i < qk_meta_problem_count (); i++) {
    uint32_t code;
    const char *name, *desc;
    enum qk_problem_class cls;

    qk_meta_problem_info (i, &code, &name, &cls, &desc);
    if (man)
      printf (".TP\n.B 0x%06x %s\n(%s) %s\n", code, name,
              qk_problem_class_name (cls), desc);
    else
      printf ("0x%06x  %-26s %-10s %s\n", code, name,
              qk_problem_class_name (cls), desc);
  }
  return EXIT_OK;
}

static int
parse_args (struct meta_cli *c, int argc, char **argv, const char *cmd,
            bool *listp, bool *listman)
{
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = NULL;
    int r;

    if (c->repair && (strcmp (a, "-n") == 0 || strcmp (a, "-p") == 0
                      || strcmp (a, "-y") == 0)) {
      int want = a[1] == 'n' ? QK_REPAIR_NONE : a[1] == 'p' ? QK_REPAIR_PREEN
                 : QK_REPAIR_ALL;
      if (c->mode != -1 && c->mode != want)
        return usage_error (cmd, "-n, -p and -y exclude each other"), -1;
      c->mode = want;
      continue;
    }
    if (c->repair && strcmp (a, "--drop-orphaned-metadata") == 0) {
      c->drop_orphaned = true;
      continue;
    }
    if (c->repair && strcmp (a, "--list-fixes") == 0) {
      c->list_fixes = true;
      continue;
    }
    if (c->repair && strcmp (a, "--list-fixes=man") == 0) {
      c->list_fixes = c->list_fixes_man = true;
      continue;
    }
    if (c->del && !c->rev && strcmp (a, "--children") == 0) {
      c->del_flags |= QK_META_DELETE_CHILDREN;
      continue;
    }
    if (c->del && !c->rev && strcmp (a, "--children-only") == 0) {
      c->del_flags |= QK_META_DELETE_CHILDREN_ONLY;
      continue;
    }
    if (c->del && !c->rev && strcmp (a, "--metadata-only") == 0) {
      c->del_flags |= QK_META_DELETE_METADATA_ONLY;
      continue;
    }
    if (c->del && strcmp (a, "--dry-run") == 0) {
      c->del_flags |= c->rev ? QK_META_REVERT_DRY_RUN : QK_META_DELETE_DRY_RUN;
      continue;
    }
    if (c->rev && strcmp (a, "--discard-children") == 0) {
      c->del_flags |= QK_META_REVERT_DISCARD_CHILDREN;
      continue;
    }
    if ((r = common_option (&c->o, argc, argv, &i, cmd)) < 0)
      return -1;
    if (r)
      continue;
#define VALOPT(opt) \
    ((strncmp (a, opt "=", sizeof opt) == 0 && (v = a + sizeof opt)) \
     || (strcmp (a, opt) == 0 && i + 1 < argc && (v = argv[++i])))
    if (strcmp (a, "--help") == 0 || strcmp (a, "-h") == 0) {
      fputs (help, stdout);
      exit (EXIT_OK);
    }
    else if (listp && strcmp (a, "--list-problems") == 0)
      *listp = true;
    else if (listp && strcmp (a, "--list-problems=man") == 0)
      *listp = *listman = true;
    else if (VALOPT ("--libvirt-root"))
      c->mo.libvirt_root = v;
    else if (VALOPT ("--sysroot"))
      c->mo.sysroot = v;
    else if (VALOPT ("--config-dir"))
      c->mo.config_dir = v;
    else if (VALOPT ("--state-dir"))
      c->mo.state_dir = v;
    else if (VALOPT ("--max-file-size")) {
      if (!parse_size (v, &c->mo.max_file_size) || c->mo.max_file_size == 0)
        return usage_error (cmd, "--max-file-size: bad size '%s'", v), -1;
    }
    else if (VALOPT ("--kind")) {
      c->kind_given = true;
      if (strcmp (v, "snapshot") == 0 || strcmp (v, "snapshots") == 0)
        c->kind = QK_META_SNAPSHOT;
      else if (strcmp (v, "checkpoint") == 0
               || strcmp (v, "checkpoints") == 0)
        c->kind = QK_META_CHECKPOINT;
      else if (strcmp (v, "all") == 0)
        c->kind = -1;
      else
        return usage_error (cmd, "--kind: '%s' is not snapshot, checkpoint "
                            "or all", v), -1;
    }
    else if (VALOPT ("--to")) {
      if (strcmp (v, "bulk") == 0)
        c->to = QK_META_LAYOUT_BULK;
      else if (strcmp (v, "per-file") == 0)
        c->to = QK_META_LAYOUT_PER_FILE;
      else
        return usage_error (cmd, "--to: '%s' is not bulk or per-file", v), -1;
    }
    else if (strcmp (a, "--no-images") == 0)
      c->no_images = true;
    else if (strcmp (a, "--no-backup") == 0)
      c->no_backup = true;
    else if (strcmp (a, "--force") == 0)
      c->force = true;
    else if (a[0] == '-' && a[1] != '\0')
      return usage_error (cmd, "unknown option '%s'", a), -1;
    else if (c->domain == NULL)
      c->domain = a;
    else if (c->del && c->snapshot == NULL)
      c->snapshot = a;
    else
      return usage_error (cmd, "too many arguments"), -1;
#undef VALOPT
  }
  return 0;
}

static struct qk_meta *
open_meta (struct meta_cli *c)
{
  struct qk_meta *m = qk_meta_open (c->domain, &c->mo);

  if (m == NULL)
    errx_ ("%s", printable (qk_get_error ()));
  return m;
}

/* The JSON document of a command: one object, opened with the domain. */
static struct qk_json *
json_start (const struct meta_cli *c)
{
  struct qk_json *j = qk_json_new (stdout, 4);

  if (j == NULL) {
    errx_ ("out of memory");
    return NULL;
  }
  qk_json_object_begin (j, NULL);
  qk_json_string (j, "domain", c->domain);
  return j;
}

static void
json_finish (struct qk_json *j)
{
  qk_json_object_end (j);
  qk_json_free (j);
  putchar ('\n');
}

/* ---- check ---- */

struct check_ctx {
  struct qk_json *j;
  uint64_t n[5];
};

/* One problem: counted by class; a JSON object, or a line (infos too
 * unless only_issues). */
static void
emit_problem (struct qk_json *j, uint64_t *n, bool quiet, bool only_issues,
              const struct qk_problem *p)
{
  if (p->cls <= QK_CLASS_ERROR)
    n[p->cls]++;
  if (j) {
    char code[16];
    snprintf (code, sizeof code, "0x%06x", p->code);
    qk_json_object_begin (j, NULL);
    qk_json_string (j, "code", code);
    qk_json_string (j, "name", p->name);
    qk_json_string (j, "class", qk_problem_class_name (p->cls));
    qk_json_string (j, "message", p->message);
    if (p->subject && p->subject_kind)
      qk_json_string (j, p->subject_kind, p->subject);
    if (p->file)
      qk_json_string (j, "file", p->file);
    qk_json_object_end (j);
  }
  else if (!quiet && !(only_issues && p->cls == QK_CLASS_INFO))
    printf ("%s 0x%06x %s: %s\n", problem_label (p->cls), p->code, p->name,
            printable (p->message));
}

static int
on_problem (void *opaque, const struct qk_problem *p)
{
  struct check_ctx *c = opaque;

  emit_problem (c->j, c->n, false, false, p);
  return 0;
}

static void
describe_kind (struct qk_meta *m, int k, struct qk_json *j)
{
  size_t n = qk_meta_count (m, k), cur = qk_meta_current (m, k);
  const char *curname = cur != QK_META_NONE ? qk_meta_moment (m, k, cur)->name
                                            : NULL;

  if (j) {
    qk_json_object_begin (j, kind_plural (k));
    qk_json_string (j, "layout", layout_name (qk_meta_layout (m, k)));
    qk_json_string (j, "location", qk_meta_location (m, k));
    qk_json_uint (j, "count", n);
    if (curname)
      qk_json_string (j, "current", curname);
    else
      qk_json_null (j, "current");
    qk_json_object_end (j);
  }
  else if (qk_meta_layout (m, k) == QK_META_LAYOUT_NONE)
    printf ("%s: none\n", kind_plural (k));
  else
    printf ("%s: %s layout, %s: %zu, current %s%s%s\n", kind_plural (k),
            layout_name (qk_meta_layout (m, k)),
            printable (qk_meta_location (m, k)), n, curname ? "'" : "",
            curname ? printable (curname) : "none", curname ? "'" : "");
}

static int
meta_check_cmd (struct meta_cli *c)
{
  struct check_ctx cc = { 0 };
  struct qk_meta *m = open_meta (c);
  int r;

  if (m == NULL)
    return EXIT_META_FAILED;
  if (c->o.output == OUT_JSON) {
    if ((cc.j = json_start (c)) == NULL) {
      qk_meta_close (m);
      return EXIT_META_FAILED;
    }
    if (qk_meta_domain_uuid (m))
      qk_json_string (cc.j, "uuid", qk_meta_domain_uuid (m));
    describe_kind (m, QK_META_SNAPSHOT, cc.j);
    describe_kind (m, QK_META_CHECKPOINT, cc.j);
    qk_json_array_begin (cc.j, "problems");
  }
  else {
    printf ("domain %s", printable (c->domain));
    if (qk_meta_domain_uuid (m))
      printf (" (%s)", printable (qk_meta_domain_uuid (m)));
    printf ("\n");
    describe_kind (m, QK_META_SNAPSHOT, NULL);
    describe_kind (m, QK_META_CHECKPOINT, NULL);
  }
  r = qk_meta_check (m, c->no_images ? 0 : QK_META_CHECK_IMAGES, on_problem,
                     &cc);
  if (cc.j) {
    qk_json_array_end (cc.j);
    qk_json_uint (cc.j, "errors", cc.n[QK_CLASS_CORRUPTION]);
    qk_json_uint (cc.j, "check-errors", cc.n[QK_CLASS_ERROR]);
    qk_json_uint (cc.j, "warnings", cc.n[QK_CLASS_WARNING]);
    qk_json_uint (cc.j, "infos", cc.n[QK_CLASS_INFO]);
    json_finish (cc.j);
  }
  else if (r >= 0) {
    if (cc.n[QK_CLASS_CORRUPTION] == 0 && cc.n[QK_CLASS_ERROR] == 0)
      printf ("No errors were found in the metadata.\n");
    printf ("%" PRIu64 " errors, %" PRIu64 " check failures, %" PRIu64
            " warnings, %" PRIu64 " notes.\n", cc.n[QK_CLASS_CORRUPTION],
            cc.n[QK_CLASS_ERROR], cc.n[QK_CLASS_WARNING],
            cc.n[QK_CLASS_INFO]);
  }
  if (r < 0)
    errx_ ("%s", printable (qk_get_error ()));
  qk_meta_close (m);
  if (r < 0)
    return EXIT_META_FAILED;
  if (cc.n[QK_CLASS_CORRUPTION])
    return EXIT_META_ERRORS;
  if (cc.n[QK_CLASS_ERROR])
    return EXIT_META_FAILED;
  return EXIT_META_CLEAN;
}

/* ---- tree ---- */

/* Levels drawn with virsh's indentation, 4 columns each: a tree this deep
 * still fits 80 columns. A deeper moment is drawn at the column of this
 * level, its name after "[+K] " for the K levels not drawn, so that a line
 * stays short and the output linear in the number of moments, however deep
 * the tree. */
#define TREE_LEVELS 16

struct tree {
  struct qk_meta *m;
  int kind;
  size_t *order;     /* the loaded moments, sorted by name */
  size_t n;
  size_t *kid;       /* first child in name order (QK_META_NONE: none) */
  size_t *next;      /* next sibling in name order */
  size_t *droot;     /* JSON: the root of a detached moment's subtree */
  size_t root;       /* of the walk under way */
  char indent[4 * TREE_LEVELS + 4];
  size_t ilen;
};

static const struct qk_meta_moment *
mom (const struct tree *t, size_t id)
{
  return qk_meta_moment (t->m, t->kind, id);
}

static int
by_name (const void *a, const void *b, void *opaque)
{
  const struct qk_meta_moment *x = mom (opaque, *(const size_t *) a);
  const struct qk_meta_moment *y = mom (opaque, *(const size_t *) b);

  return strcmp (x->name ? x->name : "", y->name ? y->name : "");
}

/* Visit the subtree of root, children in name order, without recursion
 * (a chain may be as deep as it has moments): fn (t, id, depth, false)
 * before the children of id, fn (t, id, depth, true) after them. */
static void
tree_walk (struct tree *t, size_t root,
           void (*fn) (struct tree *t, size_t id, size_t depth, bool after))
{
  size_t id = root, depth = 0;

  t->root = root;
  for (;;) {
    fn (t, id, depth, false);
    if (t->kid[id] != QK_META_NONE) {
      id = t->kid[id];
      depth++;
      continue;
    }
    for (;;) {
      fn (t, id, depth, true);
      if (id == root)
        return;
      if (t->next[id] != QK_META_NONE) {
        id = t->next[id];
        break;
      }
      id = mom (t, id)->parent_index;
      depth--;
    }
  }
}

static void
ind_push (struct tree *t, const char *two)
{
  memcpy (t->indent + t->ilen, two, 2);
  t->ilen += 2;
  t->indent[t->ilen] = '\0';
}

static void
ind_trim (struct tree *t)
{
  t->ilen -= 2;
  t->indent[t->ilen] = '\0';
}

/* Why a detached subtree's root is not in libvirt's tree. */
static void
print_detached_why (const struct qk_meta_moment *p)
{
  switch (p->detached) {
  case QK_META_DETACHED_MISSING_PARENT:
    printf (" (parent '%s' does not exist)", printable (p->parent));
    break;
  case QK_META_DETACHED_SELF_PARENT:
    printf (" (its own parent)");
    break;
  case QK_META_DETACHED_CYCLE:
    printf (" (in a parent cycle, parent '%s')", printable (p->parent));
    break;
  }
}

/* One step of virsh's vshTreePrintInternal, so that the output compares
 * equal (for trees up to TREE_LEVELS deep). */
static void
tree_line (struct tree *t, size_t id, size_t depth, bool after)
{
  const struct qk_meta_moment *p = mom (t, id);
  bool root = depth == 0;
  bool last = root || t->next[id] == QK_META_NONE;
  bool kids = t->kid[id] != QK_META_NONE;
  bool drawn = depth < TREE_LEVELS;    /* its children a level further in */

  if (!after) {
    if (root) {
      printf ("%s", printable (p->name));
      print_detached_why (p);
      putchar ('\n');
    }
    else if (depth <= TREE_LEVELS)
      printf ("%s+- %s\n", t->indent, printable (p->name));
    else
      printf ("%s+- [+%zu] %s\n", t->indent, depth - TREE_LEVELS,
              printable (p->name));
    if (!root && drawn)
      ind_push (t, last ? "  " : "| ");
    if (kids)
      printf ("%s%s\n", t->indent, drawn ? "  |" : "|");
    if (drawn)
      ind_push (t, "  ");
    return;
  }
  if (drawn)
    ind_trim (t);
  if (!kids && last)
    printf ("%s\n", t->indent);
  if (!root && drawn)
    ind_trim (t);
}

static void
set_droot (struct tree *t, size_t id, size_t depth, bool after)
{
  (void) depth;
  if (!after)
    t->droot[id] = t->root;
}

static const char *
detached_key (int why)
{
  switch (why) {
  case QK_META_DETACHED_MISSING_PARENT: return "missing-parent";
  case QK_META_DETACHED_SELF_PARENT: return "self-parent";
  case QK_META_DETACHED_CYCLE: return "cycle";
  default: return "below-detached";
  }
}

static void
tree_json (struct tree *t, size_t cur, struct qk_json *j)
{
  for (size_t i = 0; i < t->n; i++) {
    size_t id = t->order[i];
    const struct qk_meta_moment *p = mom (t, id);

    qk_json_object_begin (j, NULL);
    qk_json_string (j, "name", p->name);
    if (p->parent)
      qk_json_string (j, "parent", p->parent);
    else
      qk_json_null (j, "parent");
    if (p->state)
      qk_json_string (j, "state", p->state);
    if (p->has_creation_time)
      qk_json_int (j, "creation-time", p->creation_time);
    qk_json_bool (j, "current", id == cur);
    qk_json_bool (j, "detached", p->detached != QK_META_DETACHED_NONE);
    if (p->detached != QK_META_DETACHED_NONE) {
      qk_json_string (j, "detached-reason", detached_key (p->detached));
      qk_json_string (j, "detached-root", mom (t, t->droot[id])->name);
    }
    qk_json_array_begin (j, "children");
    for (size_t ch = t->kid[id]; ch != QK_META_NONE; ch = t->next[ch])
      qk_json_string (j, NULL, mom (t, ch)->name);
    qk_json_array_end (j);
    qk_json_object_end (j);
  }
}

static int
tree_kind (struct meta_cli *c, struct qk_meta *m, int k, struct qk_json *j)
{
  struct tree t = { .m = m, .kind = k };
  size_t n = qk_meta_count (m, k), cur = qk_meta_current (m, k), ndet = 0;

  if (n > SIZE_MAX / (4 * sizeof *t.order)
      || (t.order = malloc ((n ? n : 1) * 4 * sizeof *t.order)) == NULL) {
    errx_ ("%s: out of memory", kind_plural (k));
    return -1;
  }
  t.kid = t.order + n;
  t.next = t.kid + n;
  t.droot = t.next + n;
  for (size_t i = 0; i < n; i++) {
    t.kid[i] = t.next[i] = QK_META_NONE;
    if (qk_meta_moment (m, k, i)->loaded)
      t.order[t.n++] = i;
  }
  qsort_r (t.order, t.n, sizeof *t.order, by_name, &t);
  /* children in name order: prepend them in reverse */
  for (size_t i = t.n; i-- > 0;) {
    size_t id = t.order[i], par = mom (&t, id)->parent_index;
    if (par != QK_META_NONE) {
      t.next[id] = t.kid[par];
      t.kid[par] = id;
    }
  }
  for (size_t i = 0; i < t.n; i++) {
    const struct qk_meta_moment *p = mom (&t, t.order[i]);
    if (p->parent_index == QK_META_NONE
        && p->detached != QK_META_DETACHED_NONE) {
      ndet++;
      if (j)
        tree_walk (&t, t.order[i], set_droot);
    }
  }
  if (j) {
    qk_json_object_begin (j, kind_plural (k));
    qk_json_string (j, "layout", layout_name (qk_meta_layout (m, k)));
    if (cur != QK_META_NONE)
      qk_json_string (j, "current", mom (&t, cur)->name);
    else
      qk_json_null (j, "current");
    qk_json_array_begin (j, "moments");
    tree_json (&t, cur, j);
    qk_json_array_end (j);
    qk_json_object_end (j);
  }
  else {
    if (c->kind == -1)
      printf ("%s%s:\n", k == QK_META_CHECKPOINT ? "\n" : "", kind_plural (k));
    /* libvirt's tree, then the subtrees it hides */
    for (int detached = 0; detached < 2; detached++) {
      if (detached && ndet)
        printf ("detached (libvirt's tree does not show these):\n");
      for (size_t i = 0; i < t.n; i++) {
        const struct qk_meta_moment *p = mom (&t, t.order[i]);
        if (p->parent_index == QK_META_NONE
            && (p->detached != QK_META_DETACHED_NONE) == detached)
          tree_walk (&t, t.order[i], tree_line);
      }
    }
  }
  free (t.order);
  return 0;
}

static int
meta_tree_cmd (struct meta_cli *c)
{
  struct qk_meta *m = open_meta (c);
  struct qk_json *j = NULL;
  int ret = EXIT_OK;

  if (m == NULL)
    return EXIT_ERR;
  if (c->o.output == OUT_JSON && (j = json_start (c)) == NULL) {
    qk_meta_close (m);
    return EXIT_ERR;
  }
  for (int k = 0; k < 2; k++)
    if ((c->kind == -1 || c->kind == k) && tree_kind (c, m, k, j) < 0)
      ret = EXIT_ERR;
  if (j)
    json_finish (j);
  qk_meta_close (m);
  return ret;
}

/* ---- convert ---- */

static int
meta_convert_cmd (struct meta_cli *c)
{
  struct qk_meta *m;
  unsigned flags = (c->no_backup ? QK_META_CONVERT_NO_BACKUP : 0)
                   | (c->force ? QK_META_CONVERT_FORCE : 0);
  int ret = EXIT_OK;
  struct qk_json *j = NULL;

  if (c->to == QK_META_LAYOUT_NONE)
    return usage_error ("meta", "convert needs --to bulk|per-file");
  m = open_meta (c);
  if (m == NULL)
    return EXIT_ERR;
  if (c->o.output == OUT_JSON) {
    if ((j = json_start (c)) == NULL) {
      qk_meta_close (m);
      return EXIT_ERR;
    }
    qk_json_string (j, "to", layout_name (c->to));
  }
  for (int k = 0; k < 2; k++) {
    int from;
    if (!(c->kind == -1 || c->kind == k))
      continue;
    from = qk_meta_layout (m, k);
    if (qk_meta_convert (m, k, c->to, flags) < 0) {
      errx_ ("%s: %s", kind_plural (k), printable (qk_get_error ()));
      ret = EXIT_ERR;
      if (j) {
        qk_json_object_begin (j, kind_plural (k));
        qk_json_string (j, "error", qk_get_error ());
        qk_json_object_end (j);
      }
      continue;
    }
    if (j) {
      qk_json_object_begin (j, kind_plural (k));
      qk_json_string (j, "from", layout_name (from));
      qk_json_string (j, "layout", layout_name (qk_meta_layout (m, k)));
      qk_json_string (j, "location", qk_meta_location (m, k));
      qk_json_uint (j, "count", qk_meta_count (m, k));
      qk_json_object_end (j);
    }
    else if (qk_meta_layout (m, k) == QK_META_LAYOUT_NONE)
      printf ("%s: none to convert\n", kind_plural (k));
    else if (from == qk_meta_layout (m, k))
      printf ("%s: already %s: %s (%zu)\n", kind_plural (k),
              layout_name (from), printable (qk_meta_location (m, k)),
              qk_meta_count (m, k));
    else
      printf ("%s: %s -> %s: %s (%zu)\n", kind_plural (k), layout_name (from),
              layout_name (qk_meta_layout (m, k)),
              printable (qk_meta_location (m, k)), qk_meta_count (m, k));
  }
  if (j) {
    qk_json_bool (j, "ok", ret == EXIT_OK);
    json_finish (j);
  }
  qk_meta_close (m);
  return ret;
}

/* ---- repair ---- */

#define EXIT_MR_CLEAN    0
#define EXIT_MR_FIXED    1
#define EXIT_MR_LEFT     4
#define EXIT_MR_OPERR    8
#define EXIT_MR_ABORTED  32

static int
list_fixes (bool man)
{
  if (man)
    printf (".\\\" Generated from lib/meta/fixes.def by "
            "'qcowkit meta repair --list-fixes=man'.\n.SH METADATA FIXES\n");
  for (size_t i = 0; i < qk_meta_fix_count (); i++) {
    uint32_t code;
    const char *name, *desc;
    unsigned flags;

    qk_meta_fix_info (i, &code, &name, &flags, &desc);
    if (man)
      printf (".TP\n.B 0x%06x %s\n(%s) %s\n", code, name,
              (flags & QK_FIX_PREEN) ? "preen" : "asked", desc);
    else
      printf ("0x%06x  %-18s %-6s %s\n", code, name,
              (flags & QK_FIX_PREEN) ? "preen" : "asked", desc);
  }
  return EXIT_OK;
}

struct mrctx {
  struct qk_json *j;
  bool yes_to_all;
  FILE *tty;
  uint64_t n[5];
  bool quiet;               /* count only */
  FILE *chg;                /* human: the changes, printed after the fixes */
};

static int
mr_problem (void *opaque, const struct qk_problem *p)
{
  struct mrctx *c = opaque;

  emit_problem (c->j, c->n, c->quiet, true, p);
  return 0;
}

static enum qk_answer
mr_ask (void *opaque, const struct qk_fix *f)
{
  struct mrctx *c = opaque;

  return ask_fix (c->tty, &c->yes_to_all, f, " (removes metadata)");
}

static int
mr_change (void *opaque, const struct qk_meta_change *ch)
{
  struct mrctx *c = opaque;

  if (c->j) {
    qk_json_object_begin (c->j, NULL);
    qk_json_string (c->j, "kind", ch->kind == QK_META_CHECKPOINT
                    ? "checkpoint" : ch->kind == QK_META_SNAPSHOT ? "snapshot"
                    : strcmp (ch->action, "edit") == 0 ? "definition"
                    : "image");
    qk_json_string (c->j, "action", ch->action);
    qk_json_string (c->j, "path", ch->path);
    if (ch->new_path)
      qk_json_string (c->j, "new-path", ch->new_path);
    if (ch->backup)
      qk_json_string (c->j, "backup", ch->backup);
    else
      qk_json_null (c->j, "backup");
    if (ch->diff)
      qk_json_string (c->j, "diff", ch->diff);
    qk_json_object_end (c->j);
    return 0;
  }
  FILE *o = c->chg ? c->chg : stdout;
  if (strcmp (ch->action, "remove") == 0)
    fprintf (o, "removed %s\n", printable (ch->path));
  else if (ch->new_path && ch->diff == NULL)
    fprintf (o, "renamed %s to %s\n", printable (ch->path),
             printable (ch->new_path));
  if (ch->diff)
    fputs (ch->diff, o);
  if (ch->backup)
    fprintf (o, "(the old file is kept as %s)\n", printable (ch->backup));
  return 0;
}

static const char *
mode_name (int mode)
{
  switch (mode) {
  case QK_REPAIR_NONE: return "none";
  case QK_REPAIR_PREEN: return "preen";
  case QK_REPAIR_ALL: return "yes";
  default: return "ask";
  }
}

static int
meta_repair_cmd (struct meta_cli *c)
{
  struct mrctx cx = { 0 };
  char *chg = NULL;
  size_t chglen = 0;
  struct qk_meta_repair *r = NULL;
  struct qk_meta *m;
  int mode = c->mode, rc, ret = EXIT_MR_OPERR, left, err = 0;
  size_t made = 0, offered = 0;

  if (mode == -1)
    mode = isatty (STDIN_FILENO) && isatty (STDOUT_FILENO) ? QK_REPAIR_ASK
           : QK_REPAIR_NONE;
  if (mode == QK_REPAIR_ASK) {
    cx.tty = stdin;
    if (c->o.output == OUT_JSON)
      return usage_error ("meta", "repair asks on a terminal: give -n, -p or "
                          "-y with --output=json");
  }
  m = open_meta (c);
  if (m == NULL)
    return EXIT_MR_OPERR;
  r = qk_meta_repair_new ();
  if (r == NULL || qk_meta_repair_set_mode (r, mode) < 0
      || qk_meta_repair_set_flags (r, c->drop_orphaned
                                   ? QK_META_REPAIR_DROP_ORPHANED : 0) < 0
      || qk_meta_repair_set_ask (r, mr_ask, &cx) < 0
      || qk_meta_repair_set_changes (r, mr_change, &cx) < 0) {
    errx_ ("%s", printable (qk_get_error ()));
    qk_meta_repair_free (r);
    qk_meta_close (m);
    return EXIT_MR_OPERR;
  }
  if (c->o.output == OUT_JSON) {
    if ((cx.j = json_start (c)) == NULL) {
      qk_meta_repair_free (r);
      qk_meta_close (m);
      return EXIT_MR_OPERR;
    }
    qk_json_string (cx.j, "mode", mode_name (mode));
    qk_json_array_begin (cx.j, "problems-before");
  }
  else
    printf ("domain %s: checking the metadata\n", printable (c->domain));
  if (qk_meta_check (m, QK_META_CHECK_IMAGES, mr_problem, &cx) < 0)
    err = 1;
  if (cx.j) {
    qk_json_array_end (cx.j);
    qk_json_array_begin (cx.j, "changes");
  }
  else
    cx.chg = open_memstream (&chg, &chglen);
  rc = err ? -1 : qk_meta_repair_run (r, m);
  if (rc < 0) {
    if (qk_get_errno () == ECANCELED && !err)
      ret = EXIT_MR_ABORTED;
    else
      ret = EXIT_MR_OPERR;
    if (!cx.j)
      errx_ ("%s", printable (qk_get_error ()));
  }
  if (cx.j) {
    qk_json_array_end (cx.j);
    qk_json_array_begin (cx.j, "fixes");
  }
  for (size_t i = 0; i < qk_meta_repair_fix_count (r); i++) {
    const struct qk_fix *f = qk_meta_repair_fix (r, i);
    const char *ans = f->answer == QK_ANSWER_YES ? "yes"
                      : f->answer == QK_ANSWER_ABORT ? "abort" : "no";
    offered++;
    made += f->made;
    if (cx.j) {
      char code[16];
      snprintf (code, sizeof code, "0x%06x", f->code);
      qk_json_object_begin (cx.j, NULL);
      qk_json_string (cx.j, "code", code);
      qk_json_string (cx.j, "name", f->name);
      qk_json_string (cx.j, "prompt", f->prompt);
      qk_json_string (cx.j, "answer", ans);
      qk_json_bool (cx.j, "made", f->made);
      qk_json_object_end (cx.j);
    }
    else if (f->made)
      printf ("%s\n", printable (f->done));
    else if (mode != QK_REPAIR_ASK)
      printf ("%s %s\n", printable (f->prompt), ans);
  }
  if (cx.chg) {
    fclose (cx.chg);
    cx.chg = NULL;
    if (chg)
      fputs (chg, stdout);
    free (chg);
  }
  if (cx.j) {
    qk_json_array_end (cx.j);
    qk_json_array_begin (cx.j, "problems-after");
  }
  else if (rc == 0 && offered == 0)
    printf ("nothing to repair\n");
  else if (mode != QK_REPAIR_NONE)
    printf ("checking again\n");
  memset (cx.n, 0, sizeof cx.n);
  cx.quiet = mode == QK_REPAIR_NONE;
  left = qk_meta_check (m, QK_META_CHECK_IMAGES, mr_problem, &cx);
  if (cx.j) {
    qk_json_array_end (cx.j);
    qk_json_uint (cx.j, "fixes-made", made);
    qk_json_uint (cx.j, "errors-left", left < 0 ? 0 : (uint64_t) left);
    if (rc < 0)
      qk_json_string (cx.j, "error", qk_get_error ());
  }
  if (rc == 0) {
    if (left < 0)
      ret = EXIT_MR_OPERR;
    else if (left > 0 || (mode == QK_REPAIR_NONE && offered))
      ret = EXIT_MR_LEFT;
    else
      ret = made ? EXIT_MR_FIXED : EXIT_MR_CLEAN;
    /* fixes declined: what they fix is left */
    if (ret != EXIT_MR_OPERR && made < offered && mode != QK_REPAIR_NONE)
      ret = EXIT_MR_LEFT;
  }
  if (cx.j) {
    qk_json_uint (cx.j, "exit", ret);
    json_finish (cx.j);
  }
  else if (rc == 0)
    printf ("%zu fixes made, %d errors left\n", made, left < 0 ? 0 : left);
  qk_meta_repair_free (r);
  qk_meta_close (m);
  return ret;
}

/* ---- delete ---- */

static int
md_change (void *opaque, const struct qk_meta_change *ch)
{
  struct mrctx *c = opaque;

  if (c->j)
    return mr_change (opaque, ch);
  if (strcmp (ch->action, "commit") == 0)
    printf ("merge %s into %s (qcowkit commit, the overlay kept)\n",
            printable (ch->path), printable (ch->new_path));
  else if (strcmp (ch->action, "rebase") == 0)
    printf ("rebase %s onto %s (the name only: it reads the same)\n",
            printable (ch->path), printable (ch->new_path));
  else if (strcmp (ch->action, "unused") == 0)
    printf ("%s is no longer used; it is left in place\n",
            printable (ch->path));
  else if (strcmp (ch->action, "create") == 0 && ch->kind < 0)
    printf ("create %s, an empty overlay on %s\n", printable (ch->path),
            printable (ch->new_path));
  else if (strcmp (ch->action, "kept") == 0)
    printf ("%s, the disk before the revert, is left as it was\n",
            printable (ch->path));
  else if (strcmp (ch->action, "snapshot-delete") == 0)
    printf ("delete the internal snapshot in %s (qcowkit snapshot -d)\n",
            printable (ch->path));
  else if (strcmp (ch->action, "snapshot-apply") == 0)
    printf ("apply the internal snapshot in %s (qcowkit snapshot -a)\n",
            printable (ch->path));
  else
    return mr_change (opaque, ch);
  return 0;
}

static int
meta_delete_cmd (struct meta_cli *c)
{
  struct mrctx cx = { 0 };
  struct qk_meta *m;
  int rc;

  if (c->snapshot == NULL)
    return usage_error ("meta", "%s needs DOMAIN SNAPSHOT",
                        c->rev ? "revert" : "delete");
  if ((c->del_flags & QK_META_DELETE_CHILDREN)
      && (c->del_flags & QK_META_DELETE_CHILDREN_ONLY))
    return usage_error ("meta", "--children and --children-only exclude "
                        "each other");
  m = open_meta (c);
  if (m == NULL)
    return EXIT_META_FAILED;
  if (c->o.output == OUT_JSON) {
    if ((cx.j = json_start (c)) == NULL) {
      qk_meta_close (m);
      return EXIT_META_FAILED;
    }
    qk_json_string (cx.j, "snapshot", c->snapshot);
    qk_json_bool (cx.j, "dry-run", c->del_flags & (c->rev
                                                   ? QK_META_REVERT_DRY_RUN
                                                   : QK_META_DELETE_DRY_RUN));
    qk_json_array_begin (cx.j, "changes");
  }
  rc = c->rev ? qk_meta_revert (m, c->snapshot, c->del_flags, md_change, &cx)
       : qk_meta_delete (m, c->snapshot, c->del_flags, md_change, &cx);
  if (cx.j) {
    qk_json_array_end (cx.j);
    qk_json_bool (cx.j, "ok", rc == 0);
    if (rc < 0)
      qk_json_string (cx.j, "error", qk_get_error ());
    json_finish (cx.j);
  }
  else if (rc == 0 && c->rev)
    printf ("%s '%s'%s\n", (c->del_flags & QK_META_REVERT_DRY_RUN)
            ? "would revert to" : "reverted to", printable (c->snapshot),
            (c->del_flags & QK_META_REVERT_DISCARD_CHILDREN)
            ? " (its descendants' metadata removed)" : "");
  else if (rc == 0)
    printf ("%s '%s'%s%s\n", (c->del_flags & QK_META_DELETE_DRY_RUN)
            ? "would delete" : "deleted", printable (c->snapshot),
            (c->del_flags & QK_META_DELETE_CHILDREN) ? " and its descendants"
            : (c->del_flags & QK_META_DELETE_CHILDREN_ONLY)
            ? "'s descendants (not itself)" : "",
            (c->del_flags & QK_META_DELETE_METADATA_ONLY)
            ? " (metadata only)" : "");
  if (rc < 0)
    errx_ ("%s", printable (qk_get_error ()));
  qk_meta_close (m);
  return rc < 0 ? EXIT_META_FAILED : EXIT_OK;
}

int
cmd_meta (int argc, char **argv)
{
  struct meta_cli c = { .o = { .progress = -1 }, .kind = -1, .mode = -1 };
  bool list = false, man = false;
  const char *sub;

  if (argc < 2 || strcmp (argv[1], "--help") == 0
      || strcmp (argv[1], "-h") == 0) {
    fputs (help, argc < 2 ? stderr : stdout);
    return argc < 2 ? EXIT_USAGE : EXIT_OK;
  }
  sub = argv[1];
  if (strcmp (sub, "check") && strcmp (sub, "tree") && strcmp (sub, "convert")
      && strcmp (sub, "repair") && strcmp (sub, "delete")
      && strcmp (sub, "revert"))
    return usage_error ("meta", "unknown subcommand '%s' (check, tree, "
                        "convert, repair, delete, revert)", sub);
  c.repair = strcmp (sub, "repair") == 0;
  c.rev = strcmp (sub, "revert") == 0;
  c.del = c.rev || strcmp (sub, "delete") == 0;
  if (strcmp (sub, "tree") == 0)
    c.kind = QK_META_SNAPSHOT;
  if (parse_args (&c, argc - 1, argv + 1, "meta",
                  strcmp (sub, "check") == 0 ? &list : NULL, &man) < 0)
    return EXIT_USAGE;
  if (list)
    return list_problems (man);
  if (c.list_fixes)
    return list_fixes (c.list_fixes_man);
  if (c.domain == NULL)
    return usage_error ("meta", "a DOMAIN is needed");
  if (strcmp (sub, "check") == 0)
    return meta_check_cmd (&c);
  if (strcmp (sub, "tree") == 0)
    return meta_tree_cmd (&c);
  if (c.repair)
    return meta_repair_cmd (&c);
  if (c.del)
    return meta_delete_cmd (&c);
  return meta_convert_cmd (&c);
}
