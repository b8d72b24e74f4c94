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
 * Writing. The plan goes to lib/meta/edit.c, which edits only the changed
 * elements, parses every new file back, keeps a copy of every old file in
 * KIND/.D.qk-repair.N/, and writes in the order its protocol states
 * (renames, new files, files gaining the current mark, the others,
 * removals), each step durable: after an interruption every file is its
 * old or its new version, libvirt loads the metadata, and a rerun plans
 * again from what it finds and finishes (each fix is planned from the
 * state it finds: a fix half made is a smaller problem of the same kind,
 * and a fix made is no problem). */
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

struct work {
  struct qk_meta_repair *r;
  struct meta_plan p;       /* what changes (lib/meta/edit.h) */
  size_t *par;              /* effective parent index (QK_META_NONE) */
  char *dom;                /* the definition's <domain>, for adoption */
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
  return w->p.s->m[i].pub.name;
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
  return editable (&w->p.s->m[i]) && !w->p.st[i].drop;
}

/* Whether j is i or below i in the working model (walks up from j; a
 * cycle that does not pass through i ends the walk after n steps). */
static bool
below (const struct work *w, size_t j, size_t i)
{
  for (size_t k = j, steps = 0; k != QK_META_NONE && steps <= w->p.s->n;
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
  const struct qk_meta_moment *pi = &w->p.s->m[i].pub;

  memset (pr, 0, sizeof *pr);
  pr->self = i;
  pr->ctime = pi->creation_time;
  if (w->p.s->kind != QK_META_SNAPSHOT)
    return;
  for (size_t d = 0; d < pi->n_domain_disks && pr->nd < PROBE_DISKS; d++) {
    const struct qk_meta_domain_disk *dd = &pi->domain_disks[d];
    size_t k = pr->nd;

    if (dd->target == NULL || dd->source == NULL
        || (dd->device && strcmp (dd->device, "disk") != 0))
      continue;
    pr->d[k].target = dd->target;
    pr->d[k].source = dd->source;
    pr->d[k].img = meta_image_open (w->p.m, dd->source);
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
  const struct qk_meta_moment *pj = &w->p.s->m[j].pub;

  for (size_t d = 0; d < pr->nd; d++) {
    const char *want, *rev;

    want = meta_active_after (pj, pr->d[d].target, &rev);
    if ((want && meta_same_path (w->p.m, want, pr->d[d].source))
        || (rev && meta_same_path (w->p.m, rev, pr->d[d].source)))
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

  for (size_t j = 0; j < w->p.s->n; j++) {
    const struct qk_meta_moment *pj = &w->p.s->m[j].pub;
    uint64_t dist = 0;
    bool ch, known = false;

    if (j == pr->self || !alive (w, j)
        || (pr->self != QK_META_NONE && below (w, j, pr->self))
        || !pj->has_creation_time || pj->creation_time > pr->ctime)
      continue;
    if (pr->self == QK_META_NONE && pr->name) {
      size_t r = j, steps = 0;
      while (w->par[r] != QK_META_NONE && steps++ <= w->p.s->n)
        r = w->par[r];
      if (w->p.s->m[r].missing_parent && w->p.s->m[r].pub.parent
          && strcmp (w->p.s->m[r].pub.parent, pr->name) == 0)
        continue;
    }
    ch = w->p.s->kind == QK_META_SNAPSHOT && chain_match (w, j, pr);
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
      const struct qk_meta_moment *pb = &w->p.s->m[best].pub;
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
  /* (a failed strdup leaves the moment a root: refused at the write) */
  medit_set_parent (&w->p.st[i], np == QK_META_NONE ? NULL : mname (w, np));
  w->par[i] = np;
}

static const char *
kn (const struct work *w)
{
  return meta_kind_name (w->p.s->kind);
}

static int
plan_reparent (struct work *w)
{
  for (size_t i = 0; i < w->p.s->n; i++) {
    struct meta_moment_priv *mp = &w->p.s->m[i];
    size_t np;
    bool chain, yes;
    char *why, *to;

    if (!alive (w, i) || !(mp->missing_parent || mp->self_parent)
        || w->p.st[i].parent_set
        || (mp->missing_parent && adopted (w, mp->pub.parent)))
      continue;
    np = nearest (w, i, &chain);
    why = mp->self_parent ? meta_fmt ("is its own parent")
          : meta_fmt ("names parent '%s', which does not exist", mp->pub.parent);
    to = np == QK_META_NONE ? meta_fmt ("make it a root")
         : meta_fmt ("make it a child of '%s' (%s)", mname (w, np),
                chain ? "from the disks' backing chains" : "created last "
                "before it");
    if (add_fix (w, MF_REPARENT,
                 meta_fmt ("The %s '%s' %s: %s?", kn (w), mname (w, i), why ? why
                      : "", to ? to : ""),
                 np == QK_META_NONE
                   ? meta_fmt ("Made the %s '%s' a root.", kn (w), mname (w, i))
                   : meta_fmt ("Made the %s '%s' a child of '%s'.", kn (w),
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
  bool *done = calloc (w->p.s->n + 1, 1);

  if (done == NULL) {
    set_error (ENOMEM, "calloc");
    return -1;
  }
  for (size_t i = 0; i < w->p.s->n; i++) {
    size_t c = i, k = i, steps = 0, np;
    bool chain, yes, cyc = false;

    if (!w->p.s->m[i].in_cycle || done[i] || !alive (w, i))
      continue;
    /* the members: follow the parent names from i back to i */
    do {
      const struct meta_moment_priv *mk = &w->p.s->m[k];
      size_t nx;

      done[k] = true;
      if (mk->pub.creation_time < w->p.s->m[c].pub.creation_time
          || (mk->pub.creation_time == w->p.s->m[c].pub.creation_time
              && strcmp (mk->pub.name, w->p.s->m[c].pub.name) < 0))
        c = k;
      nx = w->p.st[k].parent_set ? w->par[k]
           : mk->pub.parent ? meta_lookup (w->p.s, mk->pub.parent)
           : QK_META_NONE;
      k = nx;
      if (k == i)
        cyc = true;
    } while (k != QK_META_NONE && k != i && ++steps <= w->p.s->n && !done[k]);
    if (!cyc)
      continue;         /* an earlier fix broke it already */
    /* the working model links the cycle so that below () sees it */
    for (k = i, steps = 0; steps <= w->p.s->n; steps++) {
      size_t nx = meta_lookup (w->p.s, w->p.s->m[k].pub.parent);
      if (!w->p.st[k].parent_set)
        w->par[k] = nx;
      k = nx;
      if (k == i || k == QK_META_NONE)
        break;
    }
    np = nearest (w, c, &chain);
    if (add_fix (w, MF_BREAK_CYCLE,
                 np == QK_META_NONE
                   ? meta_fmt ("The %s '%s' is in a parent cycle (its parent is "
                          "'%s'): cut the cycle there and make it a root?",
                          kn (w), mname (w, c), w->p.s->m[c].pub.parent)
                   : meta_fmt ("The %s '%s' is in a parent cycle (its parent is "
                          "'%s'): cut the cycle there and make it a child of "
                          "'%s' (%s)?", kn (w), mname (w, c),
                          w->p.s->m[c].pub.parent, mname (w, np),
                          chain ? "from the disks' backing chains"
                          : "created last before it"),
                 meta_fmt ("Cut the parent cycle at the %s '%s'.", kn (w),
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
  const struct qk_meta_moment *p = &w->p.s->m[i].pub;
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
    if (w->p.s->kind == QK_META_SNAPSHOT && strcmp (dk->mode, "external") == 0) {
      if (!meta_is_external (dk))
        continue;
      holders++;
      if (!exists (w->p.m, dk->source)) {
        lost = true;
        if (*what == NULL)
          *what = meta_fmt ("its overlay %s does not exist", dk->source);
      }
      gone += lost;
      continue;
    }
    if (!((w->p.s->kind == QK_META_SNAPSHOT && strcmp (dk->mode, "internal") == 0)
          || (w->p.s->kind == QK_META_CHECKPOINT
              && strcmp (dk->mode, "bitmap") == 0)))
      continue;
    dd = w->p.s->kind == QK_META_SNAPSHOT
         ? meta_ddisk (p->domain_disks, p->n_domain_disks, dk->name)
         : meta_ddisk (w->p.m->ddisks, w->p.m->n_ddisks, dk->name);
    src = dd ? dd->source : NULL;
    if (src == NULL)
      continue;
    holders++;
    if (!exists (w->p.m, src)) {
      gone++;
      if (*what == NULL)
        *what = meta_fmt ("its image %s does not exist", src);
      continue;
    }
    img = meta_image_open (w->p.m, src);
    if (img == NULL)
      continue;             /* unreadable is not gone */
    if (w->p.s->kind == QK_META_SNAPSHOT)
      lost = strcmp (qk_image_format (img), "qcow2") == 0
             && !image_has_snapshot (img, p->name, NULL);
    else
      lost = strcmp (qk_image_format (img), "qcow2") == 0
             && !chain_has_bitmap (img, dk->bitmap ? dk->bitmap : p->name);
    if (lost && *what == NULL)
      *what = w->p.s->kind == QK_META_SNAPSHOT
              ? meta_fmt ("%s has no internal snapshot '%s'", src, p->name)
              : meta_fmt ("%s has no bitmap '%s'", src,
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
  if (w->p.s->layout == QK_META_LAYOUT_BULK) {
    free (w->p.bulk_current);
    w->p.bulk_current = c == QK_META_NONE ? NULL : strdup (mname (w, c));
    w->p.bulk_current_set = true;
    return;
  }
  for (size_t i = 0; i < w->p.s->n; i++) {
    int want = i == c ? 1 : 0;
    int now = w->p.st[i].active >= 0 ? w->p.st[i].active : w->p.s->m[i].pub.active;
    if (!alive (w, i) || now < 0 || now == want)
      continue;
    w->p.st[i].active = want;
    w->p.st[i].touched = true;
  }
}

static int
plan_orphans (struct work *w)
{
  if (!(w->r->flags & QK_META_REPAIR_DROP_ORPHANED))
    return 0;
  for (size_t i = 0; i < w->p.s->n; i++) {
    char *what;
    bool yes;
    size_t up;

    if (!alive (w, i) || !data_gone (w, i, &what))
      continue;
    up = w->par[i];
    if (up == QK_META_NONE && (w->p.s->m[i].missing_parent
                               || w->p.s->m[i].self_parent
                               || w->p.s->m[i].in_cycle)) {
      bool chain;
      up = nearest (w, i, &chain);
    }
    if (add_fix (w, MF_DROP_ORPHANED,
                 meta_fmt ("The %s '%s' has lost its data (%s): remove its "
                      "metadata%s%s%s?", kn (w), mname (w, i), what,
                      up != QK_META_NONE ? " and give its children to '" : "",
                      up != QK_META_NONE ? mname (w, up) : "",
                      up != QK_META_NONE ? "'" : ""),
                 meta_fmt ("Removed the metadata of the %s '%s'.", kn (w),
                      mname (w, i)), &yes) < 0) {
      free (what);
      return -1;
    }
    free (what);
    if (!yes)
      continue;
    for (size_t j = 0; j < w->p.s->n; j++)
      if (j != i && alive (w, j) && w->par[j] == i)
        set_parent (w, j, up);
    if (w->p.s->kind == QK_META_SNAPSHOT && current_now (w) == i)
      set_current (w, up);
    w->p.st[i].drop = true;
    w->p.st[i].touched = true;
  }
  return 0;
}

/* The current snapshot of the working model, when there is exactly one
 * claim (QK_META_NONE otherwise). */
static size_t
current_now (const struct work *w)
{
  size_t c = QK_META_NONE, n = 0;

  if (w->p.s->layout == QK_META_LAYOUT_BULK) {
    const char *cur = w->p.bulk_current_set ? w->p.bulk_current
                      : w->p.s->bulk_current;
    return cur ? meta_lookup (w->p.s, cur) : QK_META_NONE;
  }
  for (size_t i = 0; i < w->p.s->n; i++) {
    int a = w->p.st[i].active >= 0 ? w->p.st[i].active : w->p.s->m[i].pub.active;
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
  struct qk_image *img = meta_image_open (w->p.m, image);
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
  const struct qk_meta_moment *p = &w->p.s->m[j].pub;
  bool known = false;

  *match = *dist = 0;
  for (size_t d = 0; d < w->p.m->n_ddisks; d++) {
    const struct qk_meta_domain_disk *dd = &w->p.m->ddisks[d];
    const struct qk_meta_disk *dk;
    const char *want, *rev;

    if (dd->target == NULL || dd->source == NULL
        || (dd->device && strcmp (dd->device, "disk") != 0))
      continue;
    want = meta_active_after (p, dd->target, &rev);
    if ((want && meta_same_path (w->p.m, want, dd->source))
        || (rev && meta_same_path (w->p.m, rev, dd->source)))
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
  struct meta_set *s = w->p.s;
  size_t best = QK_META_NONE, claims = 0;
  uint64_t bm = 0, bs = UINT64_MAX;
  bool unknown = false, yes;
  char *list = NULL;

  if (s->kind != QK_META_SNAPSHOT)
    return 0;
  if (s->layout == QK_META_LAYOUT_BULK) {
    size_t c;
    if (s->bulk_current == NULL || w->p.bulk_current_set)
      return 0;
    c = meta_lookup (s, s->bulk_current);
    if (c != QK_META_NONE && s->m[c].pub.loaded)
      return 0;
    unknown = true;
  }
  else {
    for (size_t i = 0; i < s->n; i++) {
      int a = w->p.st[i].active >= 0 ? w->p.st[i].active : s->m[i].pub.active;
      if (alive (w, i) && a == 1)
        claims++;
    }
    if (claims < 2)
      return 0;
  }
  for (size_t i = 0; i < s->n; i++) {
    int a = w->p.st[i].active >= 0 ? w->p.st[i].active : s->m[i].pub.active;
    uint64_t mt, sh;
    if (!alive (w, i) || (!unknown && a != 1))
      continue;
    if (!unknown) {
      char *nl = meta_fmt ("%s%s'%s'", list ? list : "", list ? ", " : "",
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
                 meta_fmt ("The bulk file's current='%s' names no snapshot: "
                      "remove it (no snapshot is current)?",
                      s->bulk_current),
                 meta_fmt ("Removed current='%s' from the bulk file.",
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
      ? meta_fmt ("The bulk file's current='%s' names no snapshot: make '%s' "
             "current (%s)?", s->bulk_current, mname (w, best), how)
      : meta_fmt ("%zu snapshots claim to be current (%s): keep '%s' (%s)?",
             claims, list ? list : "", mname (w, best), how);
    free (list);
    if (add_fix (w, MF_ONE_CURRENT, p,
                 meta_fmt ("Made '%s' the one current snapshot.", mname (w, best)),
                 &yes) < 0)
      return -1;
  }
  if (yes)
    set_current (w, best);
  return 0;
}

static int
plan_renames (struct work *w)
{
  if (w->p.s->layout != QK_META_LAYOUT_PER_FILE)
    return 0;
  for (size_t i = 0; i < w->p.s->n; i++) {
    const struct qk_meta_moment *p = &w->p.s->m[i].pub;
    char *want;
    bool yes, taken = false;

    if (!alive (w, i) || p->file == NULL)
      continue;
    want = meta_fmt ("%s.xml", p->name);
    if (want == NULL) {
      set_error (ENOMEM, "asprintf");
      return -1;
    }
    if (strcmp (meta_leaf_of (p->file), want) == 0 || !qk_leaf_ok (want)) {
      free (want);
      continue;
    }
    for (size_t j = 0; j < w->p.s->n; j++)
      if (w->p.s->m[j].pub.file && strcmp (meta_leaf_of (w->p.s->m[j].pub.file),
                                         want) == 0)
        taken = true;
    if (taken) {
      free (want);
      continue;         /* a duplicate: not this fix's to settle */
    }
    if (add_fix (w, MF_RENAME_FILE,
                 meta_fmt ("The %s '%s' is in %s: rename it to %s?", kn (w),
                      p->name, meta_leaf_of (p->file), want),
                 meta_fmt ("Renamed %s to %s.", meta_leaf_of (p->file), want),
                 &yes) < 0) {
      free (want);
      return -1;
    }
    if (yes) {
      w->p.st[i].rename_to = want;
      w->p.st[i].touched = true;
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
  if (meta_same_path (w->p.m, top, image))
    return true;
  img = meta_image_open (w->p.m, top);
  for (struct qk_image *c = img ? qk_image_backing (img) : NULL; c && !found;
       c = qk_image_backing (c))
    found = meta_same_path (w->p.m, qk_image_filename (c), image);
  if (img)
    qk_image_close (img);
  return found;
}

static bool
overlay_in_use (struct work *w, const char *target, const char *overlay)
{
  const struct qk_meta_domain_disk *dd
    = meta_ddisk (w->p.m->ddisks, w->p.m->n_ddisks, target);

  if (dd && in_chain_of (w, dd->source, overlay))
    return true;
  for (size_t j = 0; j < w->p.s->n; j++) {
    const struct qk_meta_disk *d;
    if (!alive (w, j))
      continue;
    d = meta_mdisk (&w->p.s->m[j].pub, target, false);
    if (meta_is_external (d) && !meta_same_path (w->p.m, d->source, overlay)
        && in_chain_of (w, d->source, overlay))
      return true;
  }
  return false;
}

static int
plan_delete_marks (struct work *w)
{
  if (w->p.s->kind != QK_META_SNAPSHOT)
    return 0;
  for (size_t i = 0; i < w->p.s->n; i++) {
    const struct qk_meta_moment *p = &w->p.s->m[i].pub;
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
      img = meta_image_open (w->p.m, dk->source);
      if (img == NULL || qk_image_backing_name (img) == NULL
          || !meta_same_path (w->p.m, qk_image_backing_path (img)
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
                 meta_fmt ("The snapshot '%s' is marked <snapshotDeleteInProgress/>"
                      ", but its overlays still back onto the images it froze "
                      "and are still in use above (the merge did not start): "
                      "clear the mark?", p->name),
                 meta_fmt ("Cleared the delete mark of the snapshot '%s'.",
                      p->name), &yes) < 0)
      return -1;
    if (yes) {
      w->p.st[i].clear_dip = true;
      w->p.st[i].touched = true;
    }
  }
  return 0;
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
  for (size_t d = 0; d < w->p.m->n_ddisks; d++) {
    const struct qk_meta_domain_disk *dd = &w->p.m->ddisks[d];
    struct qk_image *img;

    if (dd->target == NULL || dd->source == NULL
        || (dd->device && strcmp (dd->device, "disk") != 0))
      continue;
    img = meta_image_open (w->p.m, dd->source);
    for (struct qk_image *c = img; c; c = qk_image_backing (c)) {
      if (strcmp (qk_image_format (c), "qcow2") != 0)
        continue;
      for (size_t k = 0; k < qk_image_snapshot_count (c); k++) {
        const struct qk_snapshot *sn = qk_image_snapshot (c, k);
        struct adopt *a;
        bool have = false;

        if (sn == NULL || sn->name == NULL || sn->name[0] == '\0'
            || meta_lookup (w->p.s, sn->name) != QK_META_NONE)
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

static char *adopt_xml (struct work *w, const struct adopt *a,
                        const char *domain_text, bool per_file);
static char *domain_text (struct qk_meta *m);

static int
plan_adopt (struct work *w)
{
  if (w->p.s->kind != QK_META_SNAPSHOT || !w->p.m->domain_ok)
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
      pr.d[k].img = meta_image_open (w->p.m, a->d[d].image);
      if (pr.d[k].img && image_has_snapshot (pr.d[k].img, a->name, &idx)
          && qk_image_read_snapshot_l1 (pr.d[k].img, idx, &pr.d[k].l1,
                                        &pr.d[k].n) < 0)
        pr.d[k].l1 = NULL;
    }
    np = nearest_probe (w, &pr, &chain);
    probe_free (&pr);
    if (add_fix (w, MF_ADOPT_SNAPSHOT,
                 np == QK_META_NONE
                   ? meta_fmt ("The qcow2 snapshot '%s' (in %s) is not in libvirt's "
                          "metadata: adopt it as a root snapshot?", a->name,
                          where)
                   : meta_fmt ("The qcow2 snapshot '%s' (in %s) is not in libvirt's "
                          "metadata: adopt it as a child of '%s' (%s)?",
                          a->name, where, mname (w, np),
                          chain ? "from the disks' backing chains"
                          : "created last before it"),
                 meta_fmt ("Adopted the qcow2 snapshot '%s'.", a->name), &yes) < 0)
      return -1;
    if (!yes)
      continue;
    a->yes = true;
    if (np != QK_META_NONE && (a->parent = strdup (mname (w, np))) == NULL) {
      set_error (ENOMEM, "strdup");
      return -1;
    }
    if (w->dom == NULL && (w->dom = domain_text (w->p.m)) == NULL)
      return -1;
    if (meta_plan_add_new (&w->p, a->name, adopt_xml (w, a, w->dom, true),
                           adopt_xml (w, a, w->dom, false)) < 0)
      return -1;
  }
  return 0;
}

/* The <domainsnapshot> element of an adopted snapshot, each line after
 * the first indented by ind (the bulk file nests it one level). */
static char *
adopt_xml (struct work *w, const struct adopt *a, const char *domain_text,
           bool per_file)
{
  struct { char *p; size_t n; } o = { NULL, 0 };
  char *dom = strdup (domain_text), *nm = meta_esc (a->name), *pn = NULL, *x;
  FILE *f;

  if (dom == NULL || nm == NULL
      || (a->parent && (pn = meta_esc (a->parent)) == NULL)) {
    free (dom);
    free (nm);
    set_error (ENOMEM, "strdup");
    return NULL;
  }
  for (size_t d = 0; d < a->nd; d++)
    if (strcmp (a->d[d].image, a->d[d].defsrc) != 0
        && meta_subst_source (&dom, a->d[d].defsrc, a->d[d].image) < 0) {
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
  for (size_t d = 0; d < w->p.m->n_ddisks; d++) {
    const struct qk_meta_domain_disk *dd = &w->p.m->ddisks[d];
    bool in = false;
    char *t;
    if (dd->target == NULL)
      continue;
    for (size_t k = 0; k < a->nd; k++)
      in |= strcmp (a->d[k].target, dd->target) == 0;
    t = meta_esc (dd->target);
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
    struct qk_sbuf b = { 0 };
    const char *c = o.p;
    qk_sbuf_add (&b, "  ", 2);
    for (; *c; c++) {
      qk_sbuf_add (&b, c, 1);
      if (*c == '\n' && c[1] != '\0')
        qk_sbuf_add (&b, "  ", 2);
    }
    free (o.p);
    x = b.p;
    if (x == NULL)
      set_error (ENOMEM, "malloc");
    return x;
  }
}

/* The <domain> element of the definition, as written. */
static char *
domain_text (struct qk_meta *m)
{
  char *b = meta_definition_read (m), *a, *e, *r;

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

static int
repair_kind (struct qk_meta_repair *r, struct qk_meta *m, int kind)
{
  struct meta_set *s = &m->set[kind];
  struct work w = { .r = r };
  int ret = -1;

  if (s->layout == QK_META_LAYOUT_NONE && kind != QK_META_SNAPSHOT)
    return 0;
  if (meta_plan_init (&w.p, m, kind, "repair") < 0)
    return -1;
  w.par = malloc ((s->n + 1) * sizeof *w.par);
  if (w.par == NULL) {
    set_error (ENOMEM, "malloc");
    goto out;
  }
  for (size_t i = 0; i < s->n; i++)
    w.par[i] = s->m[i].pub.parent_index;
  if (plan_adopt (&w) < 0 || plan_orphans (&w) < 0 || plan_reparent (&w) < 0
      || plan_cycles (&w) < 0 || plan_current (&w) < 0
      || plan_renames (&w) < 0 || plan_delete_marks (&w) < 0)
    goto out;
  ret = meta_plan_apply (&w.p, r->mode == QK_REPAIR_NONE, r->changes,
                         r->changes_opaque);
 out:
  meta_plan_free (&w.p);
  free (w.par);
  free (w.dom);
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
