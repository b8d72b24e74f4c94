/* lib/meta/repair.c: qcowkit meta repair (qk_meta_repair_run): fix the
 * relations between snapshots (checkpoints) that qk_meta_check finds
 * broken, with the answer modes of image repair.
 *
 * Planning. For each kind, the fixes are planned against a working model
 * (each moment's parent, current mark, and whether it stays), in this
 * order, one question per fix: ADOPT_SNAPSHOT (qcow2 snapshots libvirt
 * does not know; first, because a moment that lost its parent's metadata
 * gets its parent back), DROP_ORPHANED (only with
 * QK_META_REPAIR_DROP_ORPHANED; before the relations, so that nothing is
 * fixed in a file that goes), REPARENT (a missing parent, or itself),
 * BREAK_CYCLE, ONE_CURRENT, RENAME_FILE, CLEAR_DELETE_MARK. A fix answered yes changes
 * the model, so later fixes see it (a moment reparented away from a
 * cycle is not in it any more). Nothing is written while planning.
 *
 * Edits. A changed moment is written back as the bytes it was read from
 * with only the changed elements replaced (<parent>, <active>, the
 * bulk root's current=, <snapshotDeleteInProgress/>): libvirt's
 * formatting, and everything qcowkit does not know, are kept. Every new
 * file is parsed back with the loader's safe XML options before anything
 * is written.
 *
 * Crash-safety protocol, per kind (KIND/ is snapshot/ or checkpoint/, D
 * the domain), each step durable before the next:
 *   1. The backup directory KIND/.D.qk-repair.N/ (N: the first free
 *      number) with its marker file .qcowkit-repair, then a copy of every
 *      file that will be replaced, renamed or removed (each written to a
 *      temporary name, fsynced, renamed, the directory fsynced). A crash
 *      here leaves the metadata as it was, and a backup directory that a
 *      rerun leaves alone (it makes the next N).
 *   2. Renames (RENAME_FILE), per-file layout only: renameat2
 *      RENAME_NOREPLACE in KIND/D/, directory fsynced after each. A
 *      rename is atomic: the file has its old or its new name.
 *   3. Replaced files, each through lib/io/durable.c (temporary file,
 *      fsync, rename over the old name, directory fsync): each file is
 *      the old one or the complete new one. Files that gain the current
 *      mark are written before those that lose it, so that an
 *      interruption leaves several current snapshots (as found) and never
 *      none. A bulk file is one such write: the bulk layout changes at
 *      once.
 *   4. Removed files (DROP_ORPHANED), unlinkat and a directory fsync,
 *      after their children were given their new parent in step 3.
 * After any interruption every file is the old or the new version of
 * itself, so libvirt loads the metadata (each state in between is one
 * libvirt accepts, with at worst the problems found before); a rerun
 * plans again from what it finds and finishes. QCOWKIT_FAULT=after-OP-N
 * (lib/meta/convert.c) kills the process after the Nth mkdir, write,
 * rename or unlink, to test exactly that.
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

#include "meta/meta.h"
#include "io/io.h"

#define MARKER ".qcowkit-repair"

/* ---- the fix table ---- */

static const struct {
  uint32_t code;
  const char *name;
  unsigned flags;
  const char *desc;
} fix_rows[] = {
#define PREEN QK_FIX_PREEN
#define LOSES QK_FIX_LOSES_DATA
#define FIX(code, name, flags, desc) { code, #name, flags, desc },
#include "meta/fixes.def"
#undef FIX
#undef PREEN
#undef LOSES
};

enum {
#define FIX(code, name, flags, desc) MF_##name,
#include "meta/fixes.def"
#undef FIX
};

QK_EXPORT size_t
qk_meta_fix_count (void)
{
  return sizeof fix_rows / sizeof fix_rows[0];
}

QK_EXPORT int
qk_meta_fix_info (size_t i, uint32_t *code, const char **name,
                  unsigned *flags, const char **description)
{
  if (i >= qk_meta_fix_count ()) {
    set_error (EINVAL, "no fix row %zu", i);
    return -1;
  }
  if (code)
    *code = fix_rows[i].code;
  if (name)
    *name = fix_rows[i].name;
  if (flags)
    *flags = fix_rows[i].flags;
  if (description)
    *description = fix_rows[i].desc;
  return 0;
}

/* ---- the repair object ---- */

struct mfix {
  struct qk_fix pub;
  char *prompt, *done;
};

struct qk_meta_repair {
  enum qk_repair_mode mode;
  unsigned flags;
  qk_fix_fn ask;
  void *ask_opaque;
  qk_meta_change_fn changes;
  void *changes_opaque;
  struct mfix *fix;
  size_t nfix, capfix;
  bool aborted;
};

QK_EXPORT struct qk_meta_repair *
qk_meta_repair_new (void)
{
  struct qk_meta_repair *r = calloc (1, sizeof *r);

  if (r == NULL)
    set_error (ENOMEM, "calloc");
  return r;
}

static void
clear_fixes (struct qk_meta_repair *r)
{
  for (size_t i = 0; i < r->nfix; i++) {
    free (r->fix[i].prompt);
    free (r->fix[i].done);
  }
  r->nfix = 0;
}

QK_EXPORT void
qk_meta_repair_free (struct qk_meta_repair *r)
{
  if (r == NULL)
    return;
  clear_fixes (r);
  free (r->fix);
  free (r);
}

QK_EXPORT int
qk_meta_repair_set_mode (struct qk_meta_repair *r, enum qk_repair_mode mode)
{
  if (r == NULL || mode < QK_REPAIR_NONE || mode > QK_REPAIR_ASK) {
    set_error (EINVAL, "bad repair mode");
    return -1;
  }
  r->mode = mode;
  return 0;
}

QK_EXPORT int
qk_meta_repair_set_flags (struct qk_meta_repair *r, unsigned flags)
{
  if (r == NULL || (flags & ~QK_META_REPAIR_DROP_ORPHANED)) {
    set_error (EINVAL, "unknown metadata repair flags");
    return -1;
  }
  r->flags = flags;
  return 0;
}

QK_EXPORT int
qk_meta_repair_set_ask (struct qk_meta_repair *r, qk_fix_fn fn, void *opaque)
{
  if (r == NULL) {
    set_error (EINVAL, "no repair");
    return -1;
  }
  r->ask = fn;
  r->ask_opaque = opaque;
  return 0;
}

QK_EXPORT int
qk_meta_repair_set_changes (struct qk_meta_repair *r, qk_meta_change_fn fn,
                            void *opaque)
{
  if (r == NULL) {
    set_error (EINVAL, "no repair");
    return -1;
  }
  r->changes = fn;
  r->changes_opaque = opaque;
  return 0;
}

QK_EXPORT size_t
qk_meta_repair_fix_count (const struct qk_meta_repair *r)
{
  return r ? r->nfix : 0;
}

QK_EXPORT const struct qk_fix *
qk_meta_repair_fix (const struct qk_meta_repair *r, size_t i)
{
  return r && i < r->nfix ? &r->fix[i].pub : NULL;
}

/* ---- the working model of one kind ---- */

struct mstate {
  bool touched;             /* some field below differs from the file */
  bool parent_set;
  char *parent;             /* new <parent> (NULL: a root) when parent_set */
  int active;               /* new <active> (-1: unchanged) */
  bool clear_dip;
  bool drop;
  char *rename_to;          /* new leaf */
};

struct work {
  struct qk_meta_repair *r;
  struct qk_meta *m;
  struct meta_set *s;
  struct mstate *st;
  size_t *par;              /* effective parent index (QK_META_NONE) */
  bool bulk_current_set;
  char *bulk_current;       /* new current= (NULL: none) */
  struct adopt *ad;         /* qcow2 snapshots adopted */
  size_t nad, capad;
};

/* A qcow2 internal snapshot libvirt does not know, to be adopted. */
struct adopt {
  char *name;
  int64_t ctime;
  bool vmstate;
  size_t nd;
  struct {
    char *target;
    char *image;            /* the image holding it */
    char *defsrc;           /* the definition's source of that disk */
  } d[16];
  char *parent;             /* chosen parent (NULL: a root) */
  bool yes;
};

static bool
adopted (const struct work *w, const char *name)
{
  for (size_t a = 0; name && a < w->nad; a++)
    if (w->ad[a].yes && strcmp (w->ad[a].name, name) == 0)
      return true;
  return false;
}

static const char *
mname (const struct work *w, size_t i)
{
  return w->s->m[i].pub.name;
}

/* A moment repair may write: loaded under a usable, unique name. */
static bool
editable (const struct meta_moment_priv *mp)
{
  return mp->pub.loaded && mp->pub.name && !mp->unsafe_name && !mp->dup
         && !mp->parse_failed;
}

static bool
alive (const struct work *w, size_t i)
{
  return editable (&w->s->m[i]) && !w->st[i].drop;
}

/* Whether j is i or below i in the working model (walks up from j; a
 * cycle that does not pass through i ends the walk after n steps). */
static bool
below (const struct work *w, size_t j, size_t i)
{
  for (size_t k = j, steps = 0; k != QK_META_NONE && steps <= w->s->n;
       k = w->par[k], steps++)
    if (k == i)
      return true;
  return false;
}

static bool image_has_snapshot (struct qk_image *img, const char *name,
                                size_t *idx);

#define L1_OFFSET_MASK 0x00fffffffffffe00ULL
#define L2_COPIED (1ULL << 63)

/* How many guest clusters two states of one image map differently: L1
 * entries that are equal share their L2 table (no difference); for the
 * others, the L2 entries are compared (the COPIED flag aside). An L2
 * table that cannot be read counts as all different. The state a moment
 * came from is the one it differs least from. */
static uint64_t
state_distance (struct qk_image *img, const uint64_t *a, uint32_t na,
                const uint64_t *b, uint32_t nb)
{
  uint64_t dist = 0;
  uint32_t n = na > nb ? na : nb;

  for (uint32_t k = 0; k < n; k++) {
    uint64_t x = k < na ? a[k] & L1_OFFSET_MASK : 0;
    uint64_t y = k < nb ? b[k] & L1_OFFSET_MASK : 0;
    uint64_t *ex = NULL, *ey = NULL;
    size_t cx = 0, cy = 0, c;

    if (x == y)
      continue;
    if (x && qk_image_read_l2 (img, x, &ex, &cx) < 0) {
      dist += 1u << 16;
      continue;
    }
    if (y && qk_image_read_l2 (img, y, &ey, &cy) < 0) {
      free (ex);
      dist += 1u << 16;
      continue;
    }
    c = cx > cy ? cx : cy;
    for (size_t e = 0; e < c; e++) {
      uint64_t u = e < cx ? ex[e] & ~L2_COPIED : 0;
      uint64_t v = e < cy ? ey[e] & ~L2_COPIED : 0;
      dist += u != v;
    }
    free (ex);
    free (ey);
  }
  return dist;
}

/* The L1 table of moment p's state in img: its internal snapshot there,
 * or, when p froze img (an external snapshot of that disk), img's active
 * L1 table (a backing file no longer changes). NULL: none. */
static uint64_t *
state_l1 (struct qk_image *img, const struct qk_meta_moment *p,
          const char *target, uint32_t *n)
{
  const struct qk_meta_disk *dk = meta_mdisk (p, target, false);
  uint64_t *l1 = NULL;
  size_t idx;

  *n = 0;
  if (img == NULL || strcmp (qk_image_format (img), "qcow2") != 0
      || dk == NULL || dk->mode == NULL)
    return NULL;
  if (strcmp (dk->mode, "internal") == 0) {
    if (!image_has_snapshot (img, p->name, &idx)
        || qk_image_read_snapshot_l1 (img, idx, &l1, n) < 0)
      return NULL;
    return l1;
  }
  if (meta_is_external (dk)) {
    const uint64_t *act = qk_image_l1 (img, n);
    if (act == NULL || *n == 0)
      return NULL;
    l1 = malloc (*n * sizeof *l1);
    if (l1)
      memcpy (l1, act, *n * sizeof *l1);
    return l1;
  }
  return NULL;
}

/* What the nearest ancestor is searched for: a moment (self) or a qcow2
 * snapshot being adopted; its creation time and, per disk, the image it
 * froze and its state there (L1 table). */
#define PROBE_DISKS 16
struct probe {
  size_t self;              /* QK_META_NONE: not in the set */
  const char *name;         /* adopted: moments naming it as parent are
                               below it */
  int64_t ctime;
  size_t nd;
  struct {
    const char *target;
    const char *source;     /* the image the moment froze */
    struct qk_image *img;
    uint64_t *l1;
    uint32_t n;
  } d[PROBE_DISKS];
};

static void
probe_free (struct probe *pr)
{
  for (size_t d = 0; d < pr->nd; d++) {
    free (pr->d[d].l1);
    if (pr->d[d].img)
      qk_image_close (pr->d[d].img);
  }
  pr->nd = 0;
}

/* The probe of moment i: the disks of its <domain>. */
static void
probe_moment (struct work *w, size_t i, struct probe *pr)
{
  const struct qk_meta_moment *pi = &w->s->m[i].pub;

  memset (pr, 0, sizeof *pr);
  pr->self = i;
  pr->ctime = pi->creation_time;
  if (w->s->kind != QK_META_SNAPSHOT)
    return;
  for (size_t d = 0; d < pi->n_domain_disks && pr->nd < PROBE_DISKS; d++) {
    const struct qk_meta_domain_disk *dd = &pi->domain_disks[d];
    size_t k = pr->nd;

    if (dd->target == NULL || dd->source == NULL
        || (dd->device && strcmp (dd->device, "disk") != 0))
      continue;
    pr->d[k].target = dd->target;
    pr->d[k].source = dd->source;
    pr->d[k].img = meta_image_open (w->m, dd->source);
    pr->d[k].l1 = state_l1 (pr->d[k].img, pi, dd->target, &pr->d[k].n);
    pr->nd++;
  }
}

/* Moment j left in use, for some disk of the probe, the image the probe
 * froze: j's overlay (or revert overlay, or for an internal snapshot its
 * image). */
static bool
chain_match (const struct work *w, size_t j, const struct probe *pr)
{
  const struct qk_meta_moment *pj = &w->s->m[j].pub;

  for (size_t d = 0; d < pr->nd; d++) {
    const char *want, *rev;

    want = meta_active_after (pj, pr->d[d].target, &rev);
    if ((want && meta_same_path (w->m, want, pr->d[d].source))
        || (rev && meta_same_path (w->m, rev, pr->d[d].source)))
      return true;
  }
  return false;
}

/* The nearest ancestor of the probe that still exists, outside its
 * subtree, and not created after it: chain evidence first (j left a disk
 * in the image the probe froze), then, among internal snapshots of that
 * image, the one whose state the probe's differs least from
 * (state_distance), then the latest creation time, then the name. */
static size_t
nearest_probe (const struct work *w, const struct probe *pr, bool *by_chain)
{
  size_t best = QK_META_NONE;
  bool best_chain = false;
  uint64_t best_dist = UINT64_MAX;

  for (size_t j = 0; j < w->s->n; j++) {
    const struct qk_meta_moment *pj = &w->s->m[j].pub;
    uint64_t dist = 0;
    bool ch, known = false;

    if (j == pr->self || !alive (w, j)
        || (pr->self != QK_META_NONE && below (w, j, pr->self))
        || !pj->has_creation_time || pj->creation_time > pr->ctime)
      continue;
    if (pr->self == QK_META_NONE && pr->name) {
      size_t r = j, steps = 0;
      while (w->par[r] != QK_META_NONE && steps++ <= w->s->n)
        r = w->par[r];
      if (w->s->m[r].missing_parent && w->s->m[r].pub.parent
          && strcmp (w->s->m[r].pub.parent, pr->name) == 0)
        continue;
    }
    ch = w->s->kind == QK_META_SNAPSHOT && chain_match (w, j, pr);
    for (size_t d = 0; ch && d < pr->nd; d++) {
      const struct qk_meta_disk *jd = meta_mdisk (pj, pr->d[d].target, false);
      uint64_t *l1;
      size_t idx;
      uint32_t n;

      if (pr->d[d].l1 == NULL || jd == NULL || jd->mode == NULL
          || strcmp (jd->mode, "internal") != 0
          || !image_has_snapshot (pr->d[d].img, pj->name, &idx)
          || qk_image_read_snapshot_l1 (pr->d[d].img, idx, &l1, &n) < 0)
        continue;
      dist += state_distance (pr->d[d].img, pr->d[d].l1, pr->d[d].n, l1, n);
      known = true;
      free (l1);
    }
    if (!known)
      dist = UINT64_MAX;
    if (best != QK_META_NONE) {
      const struct qk_meta_moment *pb = &w->s->m[best].pub;
      if (best_chain && !ch)
        continue;
      if (best_chain == ch) {
        if (dist > best_dist)
          continue;
        if (dist == best_dist
            && (pj->creation_time < pb->creation_time
                || (pj->creation_time == pb->creation_time
                    && strcmp (pj->name, pb->name) > 0)))
          continue;
      }
    }
    best = j;
    best_chain = ch;
    best_dist = dist;
  }
  *by_chain = best_chain;
  return best;
}

static size_t
nearest (struct work *w, size_t i, bool *by_chain)
{
  struct probe pr;
  size_t r;

  probe_moment (w, i, &pr);
  r = nearest_probe (w, &pr, by_chain);
  probe_free (&pr);
  return r;
}

/* ---- asking ---- */

static int add_fix (struct work *w, int row, char *prompt, char *done,
                    bool *yes)
  __attribute__ ((warn_unused_result));

/* Record a fix and ask for it. prompt and done are taken (allocated). */
static int
add_fix (struct work *w, int row, char *prompt, char *done, bool *yes)
{
  struct qk_meta_repair *r = w->r;
  struct mfix *f;
  enum qk_answer a = QK_ANSWER_NO;

  *yes = false;
  if (prompt == NULL || done == NULL) {
    free (prompt);
    free (done);
    set_error (ENOMEM, "asprintf");
    return -1;
  }
  f = qk_grow (r->fix, &r->capfix, r->nfix + 1, sizeof *f);
  if (f == NULL) {
    free (prompt);
    free (done);
    return -1;
  }
  r->fix = f;
  f = &r->fix[r->nfix++];
  memset (f, 0, sizeof *f);
  f->prompt = prompt;
  f->done = done;
  f->pub.code = fix_rows[row].code;
  f->pub.name = fix_rows[row].name;
  f->pub.flags = fix_rows[row].flags;
  f->pub.count = 1;
  f->pub.prompt = prompt;
  f->pub.done = done;
  if (r->aborted)
    a = QK_ANSWER_NO;
  else if (r->mode == QK_REPAIR_ALL)
    a = QK_ANSWER_YES;
  else if (r->mode == QK_REPAIR_PREEN)
    a = (f->pub.flags & QK_FIX_PREEN) ? QK_ANSWER_YES : QK_ANSWER_NO;
  else if (r->mode == QK_REPAIR_ASK)
    a = r->ask ? r->ask (r->ask_opaque, &f->pub) : QK_ANSWER_NO;
  if (a == QK_ANSWER_ABORT) {
    r->aborted = true;
    a = QK_ANSWER_NO;
    f->pub.answer = QK_ANSWER_ABORT;
  }
  else
    f->pub.answer = a;
  *yes = a == QK_ANSWER_YES;
  return 0;
}

static void
set_parent (struct work *w, size_t i, size_t np)
{
  struct mstate *st = &w->st[i];

  free (st->parent);
  st->parent = np == QK_META_NONE ? NULL : strdup (mname (w, np));
  st->parent_set = true;
  st->touched = true;
  w->par[i] = np;
}

static const char *
kn (const struct work *w)
{
  return meta_kind_name (w->s->kind);
}

static char *
fmt (const char *f, ...) __attribute__ ((format (printf, 1, 2)));
static char *
fmt (const char *f, ...)
{
  va_list ap;
  char *s;

  va_start (ap, f);
  if (vasprintf (&s, f, ap) < 0)
    s = NULL;
  va_end (ap);
  return s;
}

static int
plan_reparent (struct work *w)
{
  for (size_t i = 0; i < w->s->n; i++) {
    struct meta_moment_priv *mp = &w->s->m[i];
    size_t np;
    bool chain, yes;
    char *why, *to;

    if (!alive (w, i) || !(mp->missing_parent || mp->self_parent)
        || w->st[i].parent_set
        || (mp->missing_parent && adopted (w, mp->pub.parent)))
      continue;
    np = nearest (w, i, &chain);
    why = mp->self_parent ? fmt ("is its own parent")
          : fmt ("names parent '%s', which does not exist", mp->pub.parent);
    to = np == QK_META_NONE ? fmt ("make it a root")
         : fmt ("make it a child of '%s' (%s)", mname (w, np),
                chain ? "from the disks' backing chains" : "created last "
                "before it");
    if (add_fix (w, MF_REPARENT,
                 fmt ("The %s '%s' %s: %s?", kn (w), mname (w, i), why ? why
                      : "", to ? to : ""),
                 np == QK_META_NONE
                   ? fmt ("Made the %s '%s' a root.", kn (w), mname (w, i))
                   : fmt ("Made the %s '%s' a child of '%s'.", kn (w),
                          mname (w, i), mname (w, np)),
                 &yes) < 0) {
      free (why);
      free (to);
      return -1;
    }
    free (why);
    free (to);
    if (yes)
      set_parent (w, i, np);
  }
  return 0;
}

static int
plan_cycles (struct work *w)
{
  bool *done = calloc (w->s->n + 1, 1);

  if (done == NULL) {
    set_error (ENOMEM, "calloc");
    return -1;
  }
  for (size_t i = 0; i < w->s->n; i++) {
    size_t c = i, k = i, steps = 0, np;
    bool chain, yes, cyc = false;

    if (!w->s->m[i].in_cycle || done[i] || !alive (w, i))
      continue;
    /* the members: follow the parent names from i back to i */
    do {
      const struct meta_moment_priv *mk = &w->s->m[k];
      size_t nx;

      done[k] = true;
      if (mk->pub.creation_time < w->s->m[c].pub.creation_time
          || (mk->pub.creation_time == w->s->m[c].pub.creation_time
              && strcmp (mk->pub.name, w->s->m[c].pub.name) < 0))
        c = k;
      nx = w->st[k].parent_set ? w->par[k]
           : mk->pub.parent ? meta_lookup (w->s, mk->pub.parent)
           : QK_META_NONE;
      k = nx;
      if (k == i)
        cyc = true;
    } while (k != QK_META_NONE && k != i && ++steps <= w->s->n && !done[k]);
    if (!cyc)
      continue;         /* an earlier fix broke it already */
    /* the working model links the cycle so that below () sees it */
    for (k = i, steps = 0; steps <= w->s->n; steps++) {
      size_t nx = meta_lookup (w->s, w->s->m[k].pub.parent);
      if (!w->st[k].parent_set)
        w->par[k] = nx;
      k = nx;
      if (k == i || k == QK_META_NONE)
        break;
    }
    np = nearest (w, c, &chain);
    if (add_fix (w, MF_BREAK_CYCLE,
                 np == QK_META_NONE
                   ? fmt ("The %s '%s' is in a parent cycle (its parent is "
                          "'%s'): cut the cycle there and make it a root?",
                          kn (w), mname (w, c), w->s->m[c].pub.parent)
                   : fmt ("The %s '%s' is in a parent cycle (its parent is "
                          "'%s'): cut the cycle there and make it a child of "
                          "'%s' (%s)?", kn (w), mname (w, c),
                          w->s->m[c].pub.parent, mname (w, np),
                          chain ? "from the disks' backing chains"
                          : "created last before it"),
                 fmt ("Cut the parent cycle at the %s '%s'.", kn (w),
                      mname (w, c)), &yes) < 0) {
      free (done);
      return -1;
    }
    if (yes)
      set_parent (w, c, np);
  }
  free (done);
  return 0;
}

/* ---- what the disks say ---- */

static bool
exists (struct qk_meta *m, const char *path)
{
  struct stat st;
  char *h = meta_host_path (m, path);
  bool r = h && stat (h, &st) == 0;

  free (h);
  return r;
}

static bool
image_has_snapshot (struct qk_image *img, const char *name, size_t *idx)
{
  for (size_t i = 0; i < qk_image_snapshot_count (img); i++) {
    const struct qk_snapshot *s = qk_image_snapshot (img, i);
    if (s && s->name && strcmp (s->name, name) == 0) {
      if (idx)
        *idx = i;
      return true;
    }
  }
  return false;
}

static bool
chain_has_bitmap (struct qk_image *img, const char *name)
{
  for (struct qk_image *c = img; c; c = qk_image_backing (c))
    for (size_t i = 0; i < qk_image_bitmap_count (c); i++) {
      const struct qk_bitmap *b = qk_image_bitmap (c, i);
      if (b && b->name && strcmp (b->name, name) == 0)
        return true;
    }
  return false;
}

/* Every disk of the moment that holds data of it lost that data (and at
 * least one did hold some). Sets *what to the reason of the first. */
static bool
data_gone (struct work *w, size_t i, char **what)
{
  const struct qk_meta_moment *p = &w->s->m[i].pub;
  size_t holders = 0, gone = 0;

  *what = NULL;
  for (size_t d = 0; d < p->n_disks; d++) {
    const struct qk_meta_disk *dk = &p->disks[d];
    const struct qk_meta_domain_disk *dd;
    const char *src;
    struct qk_image *img;
    bool lost = false;

    if (dk->revert || dk->mode == NULL || dk->name == NULL)
      continue;
    if (w->s->kind == QK_META_SNAPSHOT && strcmp (dk->mode, "external") == 0) {
      if (!meta_is_external (dk))
        continue;
      holders++;
      if (!exists (w->m, dk->source)) {
        lost = true;
        if (*what == NULL)
          *what = fmt ("its overlay %s does not exist", dk->source);
      }
      gone += lost;
      continue;
    }
    if (!((w->s->kind == QK_META_SNAPSHOT && strcmp (dk->mode, "internal") == 0)
          || (w->s->kind == QK_META_CHECKPOINT
              && strcmp (dk->mode, "bitmap") == 0)))
      continue;
    dd = w->s->kind == QK_META_SNAPSHOT
         ? meta_ddisk (p->domain_disks, p->n_domain_disks, dk->name)
         : meta_ddisk (w->m->ddisks, w->m->n_ddisks, dk->name);
    src = dd ? dd->source : NULL;
    if (src == NULL)
      continue;
    holders++;
    if (!exists (w->m, src)) {
      gone++;
      if (*what == NULL)
        *what = fmt ("its image %s does not exist", src);
      continue;
    }
    img = meta_image_open (w->m, src);
    if (img == NULL)
      continue;             /* unreadable is not gone */
    if (w->s->kind == QK_META_SNAPSHOT)
      lost = strcmp (qk_image_format (img), "qcow2") == 0
             && !image_has_snapshot (img, p->name, NULL);
    else
      lost = strcmp (qk_image_format (img), "qcow2") == 0
             && !chain_has_bitmap (img, dk->bitmap ? dk->bitmap : p->name);
    if (lost && *what == NULL)
      *what = w->s->kind == QK_META_SNAPSHOT
              ? fmt ("%s has no internal snapshot '%s'", src, p->name)
              : fmt ("%s has no bitmap '%s'", src,
                     dk->bitmap ? dk->bitmap : p->name);
    gone += lost;
    qk_image_close (img);
  }
  if (holders == 0 || gone < holders) {
    free (*what);
    *what = NULL;
    return false;
  }
  return true;
}

static size_t current_now (const struct work *w);

static void
set_current (struct work *w, size_t c)
{
  if (w->s->layout == QK_META_LAYOUT_BULK) {
    free (w->bulk_current);
    w->bulk_current = c == QK_META_NONE ? NULL : strdup (mname (w, c));
    w->bulk_current_set = true;
    return;
  }
  for (size_t i = 0; i < w->s->n; i++) {
    int want = i == c ? 1 : 0;
    int now = w->st[i].active >= 0 ? w->st[i].active : w->s->m[i].pub.active;
    if (!alive (w, i) || now < 0 || now == want)
      continue;
    w->st[i].active = want;
    w->st[i].touched = true;
  }
}

static int
plan_orphans (struct work *w)
{
  if (!(w->r->flags & QK_META_REPAIR_DROP_ORPHANED))
    return 0;
  for (size_t i = 0; i < w->s->n; i++) {
    char *what;
    bool yes;
    size_t up;

    if (!alive (w, i) || !data_gone (w, i, &what))
      continue;
    up = w->par[i];
    if (up == QK_META_NONE && (w->s->m[i].missing_parent
                               || w->s->m[i].self_parent
                               || w->s->m[i].in_cycle)) {
      bool chain;
      up = nearest (w, i, &chain);
    }
    if (add_fix (w, MF_DROP_ORPHANED,
                 fmt ("The %s '%s' has lost its data (%s): remove its "
                      "metadata%s%s%s?", kn (w), mname (w, i), what,
                      up != QK_META_NONE ? " and give its children to '" : "",
                      up != QK_META_NONE ? mname (w, up) : "",
                      up != QK_META_NONE ? "'" : ""),
                 fmt ("Removed the metadata of the %s '%s'.", kn (w),
                      mname (w, i)), &yes) < 0) {
      free (what);
      return -1;
    }
    free (what);
    if (!yes)
      continue;
    for (size_t j = 0; j < w->s->n; j++)
      if (j != i && alive (w, j) && w->par[j] == i)
        set_parent (w, j, up);
    if (w->s->kind == QK_META_SNAPSHOT && current_now (w) == i)
      set_current (w, up);
    w->st[i].drop = true;
    w->st[i].touched = true;
  }
  return 0;
}

/* The current snapshot of the working model, when there is exactly one
 * claim (QK_META_NONE otherwise). */
static size_t
current_now (const struct work *w)
{
  size_t c = QK_META_NONE, n = 0;

  if (w->s->layout == QK_META_LAYOUT_BULK) {
    const char *cur = w->bulk_current_set ? w->bulk_current
                      : w->s->bulk_current;
    return cur ? meta_lookup (w->s, cur) : QK_META_NONE;
  }
  for (size_t i = 0; i < w->s->n; i++) {
    int a = w->st[i].active >= 0 ? w->st[i].active : w->s->m[i].pub.active;
    if (alive (w, i) && a == 1) {
      c = i;
      n++;
    }
  }
  return n == 1 ? c : QK_META_NONE;
}

/* How far the disk's active state is from the snapshot's (UINT64_MAX:
 * not comparable). */
static uint64_t
l1_distance (struct work *w, const char *image, const char *name)
{
  struct qk_image *img = meta_image_open (w->m, image);
  const uint64_t *act;
  uint64_t *sn = NULL, dist = UINT64_MAX;
  uint32_t na = 0, ns = 0;
  size_t idx;

  if (img == NULL)
    return dist;
  if (strcmp (qk_image_format (img), "qcow2") == 0
      && image_has_snapshot (img, name, &idx)
      && (act = qk_image_l1 (img, &na)) != NULL
      && qk_image_read_snapshot_l1 (img, idx, &sn, &ns) == 0)
    dist = state_distance (img, act, na, sn, ns);
  free (sn);
  qk_image_close (img);
  return dist;
}

/* How well snapshot j matches the domain's disks now: *match disks use
 * the image it left in use; *dist is how far the disks' active states are
 * from its internal snapshots (UINT64_MAX: none to compare). */
static void
disk_score (struct work *w, size_t j, uint64_t *match, uint64_t *dist)
{
  const struct qk_meta_moment *p = &w->s->m[j].pub;
  bool known = false;

  *match = *dist = 0;
  for (size_t d = 0; d < w->m->n_ddisks; d++) {
    const struct qk_meta_domain_disk *dd = &w->m->ddisks[d];
    const struct qk_meta_disk *dk;
    const char *want, *rev;

    if (dd->target == NULL || dd->source == NULL
        || (dd->device && strcmp (dd->device, "disk") != 0))
      continue;
    want = meta_active_after (p, dd->target, &rev);
    if ((want && meta_same_path (w->m, want, dd->source))
        || (rev && meta_same_path (w->m, rev, dd->source)))
      (*match)++;
    dk = meta_mdisk (p, dd->target, false);
    if (dk && dk->mode && strcmp (dk->mode, "internal") == 0) {
      uint64_t d1 = l1_distance (w, dd->source, p->name);
      if (d1 != UINT64_MAX) {
        *dist += d1;
        known = true;
      }
    }
  }
  if (!known)
    *dist = UINT64_MAX;
}

static int
plan_current (struct work *w)
{
  struct meta_set *s = w->s;
  size_t best = QK_META_NONE, claims = 0;
  uint64_t bm = 0, bs = UINT64_MAX;
  bool unknown = false, yes;
  char *list = NULL;

  if (s->kind != QK_META_SNAPSHOT)
    return 0;
  if (s->layout == QK_META_LAYOUT_BULK) {
    size_t c;
    if (s->bulk_current == NULL || w->bulk_current_set)
      return 0;
    c = meta_lookup (s, s->bulk_current);
    if (c != QK_META_NONE && s->m[c].pub.loaded)
      return 0;
    unknown = true;
  }
  else {
    for (size_t i = 0; i < s->n; i++) {
      int a = w->st[i].active >= 0 ? w->st[i].active : s->m[i].pub.active;
      if (alive (w, i) && a == 1)
        claims++;
    }
    if (claims < 2)
      return 0;
  }
  for (size_t i = 0; i < s->n; i++) {
    int a = w->st[i].active >= 0 ? w->st[i].active : s->m[i].pub.active;
    uint64_t mt, sh;
    if (!alive (w, i) || (!unknown && a != 1))
      continue;
    if (!unknown) {
      char *nl = fmt ("%s%s'%s'", list ? list : "", list ? ", " : "",
                      mname (w, i));
      free (list);
      list = nl;
    }
    disk_score (w, i, &mt, &sh);
    if (best != QK_META_NONE) {
      const struct qk_meta_moment *pb = &s->m[best].pub, *pi = &s->m[i].pub;
      if (mt < bm || (mt == bm && sh > bs)
          || (mt == bm && sh == bs
              && (pi->creation_time < pb->creation_time
                  || (pi->creation_time == pb->creation_time
                      && i < best))))
        continue;
    }
    best = i;
    bm = mt;
    bs = sh;
  }
  if (unknown && best == QK_META_NONE) {
    free (list);
    if (add_fix (w, MF_ONE_CURRENT,
                 fmt ("The bulk file's current='%s' names no snapshot: "
                      "remove it (no snapshot is current)?",
                      s->bulk_current),
                 fmt ("Removed current='%s' from the bulk file.",
                      s->bulk_current), &yes) < 0)
      return -1;
    if (yes)
      set_current (w, QK_META_NONE);
    return 0;
  }
  if (best == QK_META_NONE) {
    free (list);
    return 0;
  }
  {
    const char *how = bs != UINT64_MAX
                      ? "the disks' active state is closest to it"
                      : bm ? "the disks use its images" : "created last";
    char *p = unknown
      ? fmt ("The bulk file's current='%s' names no snapshot: make '%s' "
             "current (%s)?", s->bulk_current, mname (w, best), how)
      : fmt ("%zu snapshots claim to be current (%s): keep '%s' (%s)?",
             claims, list ? list : "", mname (w, best), how);
    free (list);
    if (add_fix (w, MF_ONE_CURRENT, p,
                 fmt ("Made '%s' the one current snapshot.", mname (w, best)),
                 &yes) < 0)
      return -1;
  }
  if (yes)
    set_current (w, best);
  return 0;
}

static const char *
leaf_of (const char *path)
{
  const char *s = strrchr (path, '/');
  return s ? s + 1 : path;
}

static int
plan_renames (struct work *w)
{
  if (w->s->layout != QK_META_LAYOUT_PER_FILE)
    return 0;
  for (size_t i = 0; i < w->s->n; i++) {
    const struct qk_meta_moment *p = &w->s->m[i].pub;
    char *want;
    bool yes, taken = false;

    if (!alive (w, i) || p->file == NULL)
      continue;
    want = fmt ("%s.xml", p->name);
    if (want == NULL) {
      set_error (ENOMEM, "asprintf");
      return -1;
    }
    if (strcmp (leaf_of (p->file), want) == 0 || !qk_leaf_ok (want)) {
      free (want);
      continue;
    }
    for (size_t j = 0; j < w->s->n; j++)
      if (w->s->m[j].pub.file && strcmp (leaf_of (w->s->m[j].pub.file),
                                         want) == 0)
        taken = true;
    if (taken) {
      free (want);
      continue;         /* a duplicate: not this fix's to settle */
    }
    if (add_fix (w, MF_RENAME_FILE,
                 fmt ("The %s '%s' is in %s: rename it to %s?", kn (w),
                      p->name, leaf_of (p->file), want),
                 fmt ("Renamed %s to %s.", leaf_of (p->file), want),
                 &yes) < 0) {
      free (want);
      return -1;
    }
    if (yes) {
      w->st[i].rename_to = want;
      w->st[i].touched = true;
    }
    else
      free (want);
  }
  return 0;
}

/* Whether an image still has overlay above it: the disk's image in the
 * domain definition, or another snapshot's overlay for that disk, is it
 * or has it in its backing chain. */
static bool
in_chain_of (struct work *w, const char *top, const char *image)
{
  struct qk_image *img;
  bool found = false;

  if (top == NULL)
    return false;
  if (meta_same_path (w->m, top, image))
    return true;
  img = meta_image_open (w->m, top);
  for (struct qk_image *c = img ? qk_image_backing (img) : NULL; c && !found;
       c = qk_image_backing (c))
    found = meta_same_path (w->m, qk_image_filename (c), image);
  if (img)
    qk_image_close (img);
  return found;
}

static bool
overlay_in_use (struct work *w, const char *target, const char *overlay)
{
  const struct qk_meta_domain_disk *dd
    = meta_ddisk (w->m->ddisks, w->m->n_ddisks, target);

  if (dd && in_chain_of (w, dd->source, overlay))
    return true;
  for (size_t j = 0; j < w->s->n; j++) {
    const struct qk_meta_disk *d;
    if (!alive (w, j))
      continue;
    d = meta_mdisk (&w->s->m[j].pub, target, false);
    if (meta_is_external (d) && !meta_same_path (w->m, d->source, overlay)
        && in_chain_of (w, d->source, overlay))
      return true;
  }
  return false;
}

static int
plan_delete_marks (struct work *w)
{
  if (w->s->kind != QK_META_SNAPSHOT)
    return 0;
  for (size_t i = 0; i < w->s->n; i++) {
    const struct qk_meta_moment *p = &w->s->m[i].pub;
    bool marked = false, intact = true, yes;

    if (!alive (w, i))
      continue;
    for (size_t d = 0; d < p->n_disks; d++) {
      const struct qk_meta_disk *dk = &p->disks[d];
      const struct qk_meta_domain_disk *dd;
      struct qk_image *img;

      if (!dk->delete_in_progress)
        continue;
      marked = true;
      dd = meta_ddisk (p->domain_disks, p->n_domain_disks, dk->name);
      if (!meta_is_external (dk) || dd == NULL || dd->source == NULL) {
        intact = false;
        continue;
      }
      img = meta_image_open (w->m, dk->source);
      if (img == NULL || qk_image_backing_name (img) == NULL
          || !meta_same_path (w->m, qk_image_backing_path (img)
                              ? qk_image_backing_path (img)
                              : qk_image_backing_name (img), dd->source))
        intact = false;
      if (img)
        qk_image_close (img);
      if (intact && !overlay_in_use (w, dk->name, dk->source))
        intact = false;
    }
    if (!marked || !intact)
      continue;
    if (add_fix (w, MF_CLEAR_DELETE_MARK,
                 fmt ("The snapshot '%s' is marked <snapshotDeleteInProgress/>"
                      ", but its overlays still back onto the images it froze "
                      "and are still in use above (the merge did not start): "
                      "clear the mark?", p->name),
                 fmt ("Cleared the delete mark of the snapshot '%s'.",
                      p->name), &yes) < 0)
      return -1;
    if (yes) {
      w->st[i].clear_dip = true;
      w->st[i].touched = true;
    }
  }
  return 0;
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
static char *
esc (const char *s)
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
struct elem_tags {
  char cur2[32];            /* the depth-2 element we are in */
  bool name_seen;
  uint64_t name_end;        /* after </name> of the moment */
  uint64_t name_start;
  bool parent;
  uint64_t parent_start, parent_end;
  bool pname;               /* the text of <parent><name> */
  uint64_t pname_a, pname_b;
  unsigned pnames;
  bool active;
  uint64_t active_start, active_end;
  uint64_t dip_start[64], dip_end[64];
  unsigned ndip;
};

static int
elem_on_tag (void *opaque, bool end, bool empty, unsigned depth,
             const char *name, uint64_t start, uint64_t stop)
{
  struct elem_tags *t = opaque;

  if (depth == 2 && !end)
    snprintf (t->cur2, sizeof t->cur2, "%s", name);
  if (depth == 2 && strcmp (name, "name") == 0 && !t->name_seen) {
    if (!end)
      t->name_start = start;
    if (end || empty) {
      t->name_end = stop;
      t->name_seen = true;
    }
  }
  if (depth == 2 && strcmp (name, "parent") == 0 && !t->parent) {
    if (!end)
      t->parent_start = start;
    if (end || empty) {
      t->parent_end = stop;
      t->parent = true;
    }
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
  if (depth == 2 && strcmp (name, "active") == 0 && !t->active) {
    if (!end)
      t->active_start = start;
    if (end || empty) {
      t->active_end = stop;
      t->active = true;
    }
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

/* The splices for moment i, whose bytes are e->buf[off, off + len). */
static int
moment_splices (struct work *w, size_t i, struct fedit *e, size_t off,
                size_t len)
{
  const struct mstate *st = &w->st[i];
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
    char *pn = st->parent ? esc (st->parent) : NULL;
    if (st->parent && pn == NULL) {
      set_error (ENOMEM, "malloc");
      return -1;
    }
    if (t.parent && pn && t.pname && t.pnames == 1
        && t.pname_b >= t.pname_a) {
      /* only the name changes */
      if (add_splice (e, off + t.pname_a, off + t.pname_b, pn) < 0)
        return -1;
      pn = NULL;
    }
    else if (t.parent) {
      size_t a = t.parent_start, b = t.parent_end;
      indent_of (el, a, ind, sizeof ind);
      if (pn) {
        if (add_splice (e, off + a, off + b,
                        fmt ("<parent>\n%s  <name>%s</name>\n%s</parent>",
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
      if (!t.name_seen) {
        free (pn);
        set_error (EINVAL, "%s: no <name> to put <parent> after", e->path);
        return -1;
      }
      indent_of (el, t.name_start, ind, sizeof ind);
      if (add_splice (e, off + t.name_end, off + t.name_end,
                      fmt ("\n%s<parent>\n%s  <name>%s</name>\n%s</parent>",
                           ind, ind, pn, ind)) < 0) {
        free (pn);
        return -1;
      }
    }
    free (pn);
  }
  if (st->active >= 0 && t.active) {
    if (add_splice (e, off + t.active_start, off + t.active_end,
                    fmt ("<active>%d</active>", st->active)) < 0)
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

static char *
read_all_fd (int fd, const char *path, size_t max, size_t *len)
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
  b = read_all_fd (fd, path, max, len);
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
    ce = esc (cur);
    return add_splice (e, v0, v1, ce);
  }
  if (cur == NULL)
    return 0;
  ce = esc (cur);
  if (ce == NULL) {
    set_error (ENOMEM, "malloc");
    return -1;
  }
  a = r.b;
  if (a > r.a && e->buf[a - 1] == '/')
    a--;
  {
    int rc = add_splice (e, a, a, fmt (" current='%s'", ce));
    free (ce);
    return rc;
  }
}

/* ---- the diff ---- */

struct sb {
  char *p;
  size_t n, cap;
};

static void
sb_add (struct sb *b, const char *s, size_t n)
{
  if (b->p == (char *) -1)
    return;
  if (b->n + n + 1 > b->cap) {
    size_t c = b->cap ? b->cap : 256;
    char *np;
    while (c < b->n + n + 1)
      c *= 2;
    np = realloc (b->p, c);
    if (np == NULL) {
      free (b->p);
      b->p = (char *) -1;
      return;
    }
    b->p = np;
    b->cap = c;
  }
  memcpy (b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = '\0';
}

static void
sb_printf (struct sb *b, const char *f, ...) __attribute__ ((format (printf, 2, 3)));
static void
sb_printf (struct sb *b, const char *f, ...)
{
  va_list ap;
  char *s;
  int n;

  va_start (ap, f);
  n = vasprintf (&s, f, ap);
  va_end (ap);
  if (n < 0) {
    free (b->p == (char *) -1 ? NULL : b->p);
    b->p = (char *) -1;
    return;
  }
  sb_add (b, s, n);
  free (s);
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
emit_lines (struct sb *d, char mark, const char *p, size_t n)
{
  while (n > 0) {
    size_t k = 0;
    while (k < n && p[k] != '\n')
      k++;
    sb_add (d, &mark, 1);
    sb_add (d, p, k);
    sb_add (d, "\n", 1);
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
  struct sb d = { 0 };
  long shift = 0;

  sb_printf (&d, "--- %s\n+++ %s\n", e->path,
             e->new_path ? e->new_path : e->path);
  for (size_t i = 0; i < e->nsp; i++) {
    const struct splice *s = &e->sp[i];
    size_t ls, le = line_end (e->buf, e->len, s->b > s->a ? s->b - 1 : s->a);
    size_t ln = line_at (e->buf, s->a, &ls);
    size_t tl = strlen (s->text);
    size_t oldn, newn;
    struct sb nw = { 0 };

    if (s->b == s->a && s->a == ls && tl == 0)
      continue;
    /* the new text of those lines */
    sb_add (&nw, e->buf + ls, s->a - ls);
    sb_add (&nw, s->text, tl);
    sb_add (&nw, e->buf + s->b, le > s->b ? le - s->b : 0);
    if (nw.p == (char *) -1) {
      free (d.p == (char *) -1 ? NULL : d.p);
      return NULL;
    }
    oldn = count_lines (e->buf + ls, le - ls);
    newn = nw.p ? count_lines (nw.p, nw.n) : 0;
    sb_printf (&d, "@@ -%zu,%zu +%ld,%zu @@\n", ln, oldn, (long) ln + shift,
               newn);
    emit_lines (&d, '-', e->buf + ls, le - ls);
    if (nw.p)
      emit_lines (&d, '+', nw.p, nw.n);
    shift += (long) newn - (long) oldn;
    free (nw.p);
  }
  if (d.p == (char *) -1)
    return NULL;
  return d.p;
}

/* ---- adopting qcow2 snapshots libvirt does not know ---- */

static bool
adopt_name_ok (const char *n)
{
  char leaf[300];

  if (n == NULL || n[0] == '\0' || n[0] == '.' || strchr (n, '/'))
    return false;
  snprintf (leaf, sizeof leaf, "%s.xml", n);
  return strlen (n) < 250 && qk_leaf_ok (leaf);
}

static struct adopt *
adopt_get (struct work *w, const char *name)
{
  struct adopt *a;

  for (size_t i = 0; i < w->nad; i++)
    if (strcmp (w->ad[i].name, name) == 0)
      return &w->ad[i];
  a = qk_grow (w->ad, &w->capad, w->nad + 1, sizeof *a);
  if (a == NULL)
    return NULL;
  w->ad = a;
  a = &w->ad[w->nad];
  memset (a, 0, sizeof *a);
  a->name = strdup (name);
  if (a->name == NULL) {
    set_error (ENOMEM, "strdup");
    return NULL;
  }
  a->ctime = INT64_MAX;
  w->nad++;
  return a;
}

static void
adopt_free (struct work *w)
{
  for (size_t i = 0; i < w->nad; i++) {
    struct adopt *a = &w->ad[i];
    for (size_t d = 0; d < a->nd; d++) {
      free (a->d[d].target);
      free (a->d[d].image);
      free (a->d[d].defsrc);
    }
    free (a->name);
    free (a->parent);
  }
  free (w->ad);
}

/* Collect the snapshots of every image in the chains of the domain's
 * disks that no moment of the set names. */
static int
collect_unknown (struct work *w)
{
  for (size_t d = 0; d < w->m->n_ddisks; d++) {
    const struct qk_meta_domain_disk *dd = &w->m->ddisks[d];
    struct qk_image *img;

    if (dd->target == NULL || dd->source == NULL
        || (dd->device && strcmp (dd->device, "disk") != 0))
      continue;
    img = meta_image_open (w->m, dd->source);
    for (struct qk_image *c = img; c; c = qk_image_backing (c)) {
      if (strcmp (qk_image_format (c), "qcow2") != 0)
        continue;
      for (size_t k = 0; k < qk_image_snapshot_count (c); k++) {
        const struct qk_snapshot *sn = qk_image_snapshot (c, k);
        struct adopt *a;
        bool have = false;

        if (sn == NULL || sn->name == NULL || sn->name[0] == '\0'
            || meta_lookup (w->s, sn->name) != QK_META_NONE)
          continue;
        if ((a = adopt_get (w, sn->name)) == NULL) {
          qk_image_close (img);
          return -1;
        }
        if ((int64_t) sn->date_sec < a->ctime)
          a->ctime = sn->date_sec;
        a->vmstate |= sn->vm_state_size > 0;
        for (size_t x = 0; x < a->nd; x++)
          have |= strcmp (a->d[x].target, dd->target) == 0;
        if (have || a->nd >= 16)
          continue;
        a->d[a->nd].target = strdup (dd->target);
        a->d[a->nd].image = strdup (qk_image_filename (c));
        a->d[a->nd].defsrc = strdup (dd->source);
        if (!a->d[a->nd].target || !a->d[a->nd].image
            || !a->d[a->nd].defsrc) {
          set_error (ENOMEM, "strdup");
          qk_image_close (img);
          return -1;
        }
        a->nd++;
      }
    }
    if (img)
      qk_image_close (img);
  }
  return 0;
}

static int
plan_adopt (struct work *w)
{
  if (w->s->kind != QK_META_SNAPSHOT || !w->m->domain_ok)
    return 0;
  if (collect_unknown (w) < 0)
    return -1;
  for (size_t i = 0; i < w->nad; i++) {
    struct adopt *a = &w->ad[i];
    struct probe pr;
    size_t np;
    bool chain, yes;
    const char *where = a->nd ? a->d[0].image : "?";

    if (!adopt_name_ok (a->name))
      continue;           /* libvirt refuses such a name */
    memset (&pr, 0, sizeof pr);
    pr.self = QK_META_NONE;
    pr.name = a->name;
    pr.ctime = a->ctime;
    for (size_t d = 0; d < a->nd && pr.nd < PROBE_DISKS; d++) {
      size_t k = pr.nd++, idx;
      pr.d[k].target = a->d[d].target;
      pr.d[k].source = a->d[d].image;
      pr.d[k].img = meta_image_open (w->m, a->d[d].image);
      if (pr.d[k].img && image_has_snapshot (pr.d[k].img, a->name, &idx)
          && qk_image_read_snapshot_l1 (pr.d[k].img, idx, &pr.d[k].l1,
                                        &pr.d[k].n) < 0)
        pr.d[k].l1 = NULL;
    }
    np = nearest_probe (w, &pr, &chain);
    probe_free (&pr);
    if (add_fix (w, MF_ADOPT_SNAPSHOT,
                 np == QK_META_NONE
                   ? fmt ("The qcow2 snapshot '%s' (in %s) is not in libvirt's "
                          "metadata: adopt it as a root snapshot?", a->name,
                          where)
                   : fmt ("The qcow2 snapshot '%s' (in %s) is not in libvirt's "
                          "metadata: adopt it as a child of '%s' (%s)?",
                          a->name, where, mname (w, np),
                          chain ? "from the disks' backing chains"
                          : "created last before it"),
                 fmt ("Adopted the qcow2 snapshot '%s'.", a->name), &yes) < 0)
      return -1;
    if (!yes)
      continue;
    a->yes = true;
    if (np != QK_META_NONE && (a->parent = strdup (mname (w, np))) == NULL) {
      set_error (ENOMEM, "strdup");
      return -1;
    }
  }
  return 0;
}

/* Replace the value of the first file='OLD' (or "OLD") in *t by NEW. */
static int
subst_source (char **t, const char *old, const char *new)
{
  char *eo = esc (old), *en = esc (new), *pat = NULL, *hit = NULL, *r;
  int ret = -1;

  if (eo == NULL || en == NULL)
    goto out;
  for (int q = 0; q < 2 && hit == NULL; q++) {
    free (pat);
    pat = fmt ("file=%c%s%c", q ? '"' : '\'', eo, q ? '"' : '\'');
    if (pat == NULL)
      goto out;
    hit = strstr (*t, pat);
  }
  if (hit == NULL) {
    set_error (ENOENT, "the definition's source %s was not found as "
               "written", old);
    goto out;
  }
  r = fmt ("%.*s%.*s%s%s", (int) (hit - *t), *t, 6, hit, en,
           hit + strlen (pat) - 1);
  if (r == NULL)
    goto out;
  free (*t);
  *t = r;
  ret = 0;
 out:
  free (eo);
  free (en);
  free (pat);
  return ret;
}

/* The <domainsnapshot> element of an adopted snapshot, each line after
 * the first indented by ind (the bulk file nests it one level). */
static char *
adopt_xml (struct work *w, const struct adopt *a, const char *domain_text,
           bool per_file)
{
  struct { char *p; size_t n; } o = { NULL, 0 };
  char *dom = strdup (domain_text), *nm = esc (a->name), *pn = NULL, *x;
  FILE *f;

  if (dom == NULL || nm == NULL
      || (a->parent && (pn = esc (a->parent)) == NULL)) {
    free (dom);
    free (nm);
    set_error (ENOMEM, "strdup");
    return NULL;
  }
  for (size_t d = 0; d < a->nd; d++)
    if (strcmp (a->d[d].image, a->d[d].defsrc) != 0
        && subst_source (&dom, a->d[d].defsrc, a->d[d].image) < 0) {
      free (dom);
      free (nm);
      free (pn);
      return NULL;
    }
  f = open_memstream (&o.p, &o.n);
  if (f == NULL) {
    free (dom);
    free (nm);
    free (pn);
    set_error (errno, "open_memstream");
    return NULL;
  }
  fprintf (f, "<domainsnapshot>\n  <name>%s</name>\n  <state>%s</state>\n",
           nm, a->vmstate ? "running" : "shutoff");
  if (pn)
    fprintf (f, "  <parent>\n    <name>%s</name>\n  </parent>\n", pn);
  fprintf (f, "  <creationTime>%lld</creationTime>\n  <memory snapshot='%s'/>\n"
           "  <disks>\n", (long long) a->ctime,
           a->vmstate ? "internal" : "no");
  for (size_t d = 0; d < w->m->n_ddisks; d++) {
    const struct qk_meta_domain_disk *dd = &w->m->ddisks[d];
    bool in = false;
    char *t;
    if (dd->target == NULL)
      continue;
    for (size_t k = 0; k < a->nd; k++)
      in |= strcmp (a->d[k].target, dd->target) == 0;
    t = esc (dd->target);
    fprintf (f, "    <disk name='%s' snapshot='%s'/>\n", t ? t : "",
             in ? "internal" : "no");
    free (t);
  }
  fprintf (f, "  </disks>\n  ");
  for (const char *c = dom; *c; c++) {
    fputc (*c, f);
    if (*c == '\n' && c[1] != '\0')
      fputs ("  ", f);
  }
  fprintf (f, "\n%s</domainsnapshot>\n", per_file ? "  <active>0</active>\n"
           : "");
  free (dom);
  free (nm);
  free (pn);
  if (fclose (f) != 0) {
    free (o.p);
    set_error (ENOMEM, "open_memstream");
    return NULL;
  }
  if (per_file)
    return o.p;
  /* bulk: one level deeper */
  {
    struct sb b = { 0 };
    const char *c = o.p;
    sb_add (&b, "  ", 2);
    for (; *c; c++) {
      sb_add (&b, c, 1);
      if (*c == '\n' && c[1] != '\0')
        sb_add (&b, "  ", 2);
    }
    free (o.p);
    x = b.p == (char *) -1 ? NULL : b.p;
    if (x == NULL)
      set_error (ENOMEM, "malloc");
    return x;
  }
}

/* The <domain> element of the definition, as written. */
static char *
domain_text (struct qk_meta *m)
{
  int fd = meta_open (m, m->config_file, O_RDONLY | O_NONBLOCK);
  size_t len;
  char *b, *a, *e, *r;

  if (fd < 0)
    return NULL;
  b = read_all_fd (fd, m->config_file, 16u << 20, &len);
  close (fd);
  if (b == NULL)
    return NULL;
  a = strstr (b, "<domain");
  e = a ? strstr (a, "</domain>") : NULL;
  if (a == NULL || e == NULL) {
    free (b);
    set_error (EINVAL, "%s: no <domain> element", m->config_file);
    return NULL;
  }
  r = strndup (a, e + 9 - a);
  free (b);
  if (r == NULL)
    set_error (ENOMEM, "strndup");
  return r;
}

static char *
make_create_diff (const struct fedit *e)
{
  struct sb d = { 0 };

  sb_printf (&d, "--- /dev/null\n+++ %s\n@@ -0,0 +1,%zu @@\n", e->path,
             count_lines (e->out, e->outlen));
  emit_lines (&d, '+', e->out, e->outlen);
  return d.p == (char *) -1 ? NULL : d.p;
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
  e->path = fmt ("%s/%s", dirpath, leaf);
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
open_places (struct work *w, struct kplan *k, bool make)
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
      meta_fault ("mkdir");
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
      meta_fault ("mkdir");
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

/* Per-file: one new file per adopted snapshot. */
static int
add_adopted_files (struct work *w, struct kplan *k)
{
  char *dom = NULL;

  for (size_t a = 0; a < w->nad; a++) {
    struct fedit *e;
    if (!w->ad[a].yes)
      continue;
    if (dom == NULL && (dom = domain_text (w->m)) == NULL)
      return -1;
    e = qk_grow (k->e, &k->cap, k->n + 1, sizeof *e);
    if (e == NULL) {
      free (dom);
      return -1;
    }
    k->e = e;
    e = &k->e[k->n++];
    memset (e, 0, sizeof *e);
    e->dfd = k->dfd;
    e->create = true;
    e->leaf = fmt ("%s.xml", w->ad[a].name);
    e->path = fmt ("%s/%s.xml", w->s->dir, w->ad[a].name);
    e->out = adopt_xml (w, &w->ad[a], dom, true);
    if (e->leaf == NULL || e->path == NULL || e->out == NULL) {
      free (dom);
      if (e->out)
        set_error (ENOMEM, "asprintf");
      return -1;
    }
    e->outlen = strlen (e->out);
  }
  free (dom);
  return 0;
}

/* Bulk: the adopted elements inserted before the root's end tag. */
static int
add_adopted_bulk (struct work *w, struct fedit *e)
{
  struct doc_root r = { 0 };
  struct xml_scan sc;
  char *dom = NULL;
  size_t at;

  for (size_t a = 0; a < w->nad; a++)
    if (w->ad[a].yes)
      break;
    else if (a + 1 == w->nad)
      return 0;
  if (w->nad == 0)
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
  if ((dom = domain_text (w->m)) == NULL)
    return -1;
  for (size_t a = 0; a < w->nad; a++) {
    char *x;
    if (!w->ad[a].yes)
      continue;
    x = adopt_xml (w, &w->ad[a], dom, false);
    if (x == NULL || add_splice (e, at, at, x) < 0) {
      free (dom);
      return -1;
    }
  }
  free (dom);
  return 0;
}

static int
build_edits (struct work *w, struct kplan *k)
{
  struct meta_set *s = w->s;
  uint64_t max = w->m->lim.max_size ? w->m->lim.max_size : (16u << 20);

  if (s->layout != QK_META_LAYOUT_BULK) {
    for (size_t i = 0; i < s->n; i++) {
      struct fedit *e;
      if (!w->st[i].touched)
        continue;
      e = new_edit (k, k->dfd, s->dir, leaf_of (s->m[i].pub.file), max);
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
        e->new_path = fmt ("%s/%s", s->dir, w->st[i].rename_to);
        if (e->rename_to == NULL || e->new_path == NULL) {
          set_error (ENOMEM, "strdup");
          return -1;
        }
      }
    }
    if (add_adopted_files (w, k) < 0)
      return -1;
    return 0;
  }
  /* bulk: one file */
  {
    bool any = w->bulk_current_set;
    struct fedit *e;

    for (size_t i = 0; i < s->n; i++)
      any |= w->st[i].touched;
    for (size_t a = 0; a < w->nad; a++)
      any |= w->ad[a].yes;
    if (!any)
      return 0;
    e = new_edit (k, k->kfd, k->kpath, leaf_of (s->bulk),
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
    if (add_adopted_bulk (w, e) < 0)
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
make_backup_dir (struct qk_meta *m, struct kplan *k)
{
  char name[300], marker[512];
  time_t now = time (NULL);

  for (unsigned n = 1; n < 10000; n++) {
    snprintf (name, sizeof name, ".%s.qk-repair.%u", m->domain, n);
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
  meta_fault ("mkdir");
  k->bpath = fmt ("%s/%s", k->kpath, name);
  k->bfd = openat (k->kfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW
                   | O_CLOEXEC);
  if (k->bpath == NULL || k->bfd < 0) {
    set_error (errno ? errno : ENOMEM, "open %s/%s", k->kpath, name);
    return -1;
  }
  snprintf (marker, sizeof marker, "qcowkit meta repair backup of domain %s, "
            "made %lld\n", m->domain, (long long) now);
  if (qk_durable_write (k->bfd, MARKER, marker, strlen (marker), 0600, 0) < 0)
    return -1;
  meta_fault ("write");
  return qk_fsync_dir (k->kfd);
}

static int
report_change (struct qk_meta_repair *r, int kind, struct fedit *e)
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

  if (r->changes == NULL)
    return 0;
  if (e->create)
    c.diff = diff = make_create_diff (e);
  else if (!e->remove && e->nsp)
    c.diff = diff = make_diff (e);
  rc = r->changes (r->changes_opaque, &c);
  free (diff);
  return rc;
}

static int
write_kind (struct work *w, struct kplan *k)
{
  /* 1. backups (of files that exist) */
  bool old = false;
  for (size_t i = 0; i < k->n; i++)
    old |= !k->e[i].create;
  if (old && make_backup_dir (w->m, k) < 0)
    return -1;
  for (size_t i = 0; i < k->n; i++) {
    struct fedit *e = &k->e[i];
    if (e->create)
      continue;
    if (qk_durable_write (k->bfd, e->leaf, e->buf, e->len, 0600, 0) < 0)
      return -1;
    meta_fault ("write");
    e->backup = fmt ("%s/%s", k->bpath, e->leaf);
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
    meta_fault ("rename");
  }
  /* 3. new files (adopted snapshots; never over a file), then replaced
   * files: those gaining the current mark first */
  for (size_t i = 0; i < k->n; i++) {
    struct fedit *e = &k->e[i];
    if (!e->create)
      continue;
    if (qk_durable_write (e->dfd, e->leaf, e->out, e->outlen, 0600, 0) < 0)
      return -1;
    meta_fault ("write");
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
      meta_fault ("write");
    }
  /* 4. removed files */
  for (size_t i = 0; i < k->n; i++) {
    struct fedit *e = &k->e[i];
    if (!e->remove)
      continue;
    if (qk_durable_unlink (e->dfd, e->leaf) < 0)
      return -1;
    meta_fault ("unlink");
  }
  return 0;
}

static int
repair_kind (struct qk_meta_repair *r, struct qk_meta *m, int kind)
{
  struct meta_set *s = &m->set[kind];
  struct work w = { .r = r, .m = m, .s = s };
  struct kplan k = { .kfd = -1, .dfd = -1, .bfd = -1 };
  int ret = -1;

  if (s->layout == QK_META_LAYOUT_NONE && kind != QK_META_SNAPSHOT)
    return 0;
  w.st = calloc (s->n + 1, sizeof *w.st);
  w.par = malloc ((s->n + 1) * sizeof *w.par);
  if (w.st == NULL || w.par == NULL) {
    set_error (ENOMEM, "calloc");
    goto out;
  }
  for (size_t i = 0; i < s->n; i++) {
    w.st[i].active = -1;
    w.par[i] = s->m[i].pub.parent_index;
  }
  if (plan_adopt (&w) < 0 || plan_orphans (&w) < 0 || plan_reparent (&w) < 0
      || plan_cycles (&w) < 0 || plan_current (&w) < 0
      || plan_renames (&w) < 0 || plan_delete_marks (&w) < 0)
    goto out;
  {
    bool any = w.bulk_current_set;
    for (size_t i = 0; i < s->n; i++)
      any |= w.st[i].touched;
    for (size_t a = 0; a < w.nad; a++)
      any |= w.ad[a].yes;
    if (!any) {
      ret = 0;
      goto out;
    }
  }
  if (open_places (&w, &k, r->mode != QK_REPAIR_NONE) < 0
      || build_edits (&w, &k) < 0 || verify_edits (&k) < 0)
    goto out;
  if (k.n && r->mode != QK_REPAIR_NONE && write_kind (&w, &k) < 0)
    goto out;
  for (size_t i = 0; i < k.n; i++)
    if (report_change (r, kind, &k.e[i]) != 0) {
      set_error (ECANCELED, "stopped by the change callback");
      goto out;
    }
  ret = 0;
 out:
  free_kplan (&k);
  if (w.st)
    for (size_t i = 0; i < s->n; i++) {
      free (w.st[i].parent);
      free (w.st[i].rename_to);
    }
  free (w.st);
  free (w.par);
  free (w.bulk_current);
  adopt_free (&w);
  return ret;
}

QK_EXPORT int
qk_meta_repair_run (struct qk_meta_repair *r, struct qk_meta *m)
{
  char *why = NULL;
  int rc;

  if (r == NULL || m == NULL) {
    set_error (EINVAL, "no repair or no metadata");
    return -1;
  }
  clear_fixes (r);
  r->aborted = false;
  if (r->mode != QK_REPAIR_NONE) {
    rc = qk_meta_daemon_running (m, &why);
    if (rc != 0) {
      set_error (EBUSY, "refusing to repair while libvirt may be using the "
                 "metadata: %s", why ? why : "cannot tell");
      free (why);
      return -1;
    }
  }
  for (int kind = 0; kind < 2; kind++)
    if (repair_kind (r, m, kind) < 0) {
      if (r->mode != QK_REPAIR_NONE) {
        struct qk_saved_error sv;
        qk_internal_save_error (&sv);
        meta_reload (m);
        qk_internal_restore_error (&sv);
      }
      return -1;
    }
  for (size_t i = 0; i < r->nfix; i++)
    r->fix[i].pub.made = r->mode != QK_REPAIR_NONE
                         && r->fix[i].pub.answer == QK_ANSWER_YES;
  if (r->mode != QK_REPAIR_NONE && meta_reload (m) < 0)
    return -1;
  if (r->aborted) {
    set_error (ECANCELED, "stopped: the fixes answered before were made");
    return -1;
  }
  return 0;
}
