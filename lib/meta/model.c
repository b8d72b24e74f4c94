/* lib/meta: the in-memory model at the bottom of lib/meta (issue #12):
 * the problem table and reports, the findings kept from a load, the
 * moment sets (alloc, free, lookup by name), the parent/child links,
 * and the read-only accessors of the public API. Calls nothing above it
 * (see the layer order in meta.h). */
#include <config.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "meta/model.h"
#include "util/problems.h"

/* ---- the problem table ---- */

static const struct qk_prow rows[] = {
#define PROBLEM(code, name, cls, desc) { code, #name, QK_CLASS_##cls, desc },
#include "meta/problems.def"
#undef PROBLEM
};

QK_EXPORT size_t
qk_meta_problem_count (void)
{
  return MP__COUNT;
}

QK_EXPORT int
qk_meta_problem_info (size_t i, uint32_t *code, const char **name,
                      enum qk_problem_class *cls, const char **description)
{
  return qk_prows_info (rows, MP__COUNT, "metadata problem", i, code, name,
                        cls, description);
}

void
meta_report (struct meta_report *r, int pr, const char *fmt, ...)
{
  struct qk_problem p = {
    .host_offset = QK_NONE, .length = QK_NONE, .guest_offset = QK_NONE,
    .guest_offset2 = QK_NONE, .table_offset = QK_NONE, .index = QK_NONE,
    .expected = QK_NONE, .found = QK_NONE, .count = 1,
  };
  char msg[1536];
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  p.code = rows[pr].code;
  p.name = rows[pr].name;
  p.cls = rows[pr].cls;
  p.message = msg;
  if (r->subject) {
    p.subject_kind = meta_kind_name (r->subject->kind);
    p.subject = r->subject->name;
    p.file = r->subject->file;
  }
  else
    p.file = r->file;
  if (p.cls == QK_CLASS_CORRUPTION || p.cls == QK_CLASS_ERROR)
    r->errors++;
  if (r->fn && r->cb_ret == 0)
    r->cb_ret = r->fn (r->opaque, &p);
}

void
meta_subject (struct meta_report *r, const struct qk_meta_moment *p)
{
  r->subject = p;
}

int
meta_add_finding (struct qk_meta *m, int pr, int kind, uint64_t offset,
                  const char *fmt, ...)
{
  struct meta_finding *f;
  va_list ap;
  char *msg;
  int r;

  va_start (ap, fmt);
  r = vasprintf (&msg, fmt, ap);
  va_end (ap);
  if (r < 0)
    return -1;
  f = qk_grow (m->f, &m->capf, m->nf + 1, sizeof *f);
  if (f == NULL) {
    free (msg);
    return -1;
  }
  m->f = f;
  m->f[m->nf++] = (struct meta_finding) { pr, kind, msg, offset };
  return 0;
}

/* ---- names ---- */

const char *
meta_kind_name (int kind)
{
  return kind == QK_META_CHECKPOINT ? "checkpoint" : "snapshot";
}

const char *
meta_elem_name (int kind)
{
  return kind == QK_META_CHECKPOINT ? "domaincheckpoint" : "domainsnapshot";
}

const char *
meta_bulk_root (int kind)
{
  return kind == QK_META_CHECKPOINT ? "checkpoints" : "snapshots";
}

char *
meta_fmt (const char *f, ...)
{
  va_list ap;
  char *s;

  va_start (ap, f);
  if (vasprintf (&s, f, ap) < 0)
    s = NULL;
  va_end (ap);
  return s;
}

/* ---- the moment set ---- */

static uint64_t
hash_str (const char *s)
{
  uint64_t h = 1469598103934665603ULL;
  for (; *s; s++)
    h = (h ^ (unsigned char) *s) * 1099511628211ULL;
  return h;
}

size_t
meta_lookup (const struct meta_set *s, const char *name)
{
  if (s->hash_cap == 0 || name == NULL)
    return QK_META_NONE;
  for (size_t h = hash_str (name) & (s->hash_cap - 1);;
       h = (h + 1) & (s->hash_cap - 1)) {
    size_t v = s->hash[h];
    if (v == 0)
      return QK_META_NONE;
    if (strcmp (s->m[v - 1].pub.name, name) == 0)
      return v - 1;
  }
}

struct order {
  size_t read_order, index;
};

static int
cmp_order (const void *a, const void *b)
{
  const struct order *x = a, *y = b;
  return x->read_order < y->read_order ? -1 : x->read_order > y->read_order;
}

/* Index the loaded moments by name; later duplicates are not loaded. */
int
meta_build_hash (struct qk_meta *m, struct meta_set *s)
{
  size_t cap = 16;
  struct order *ord;

  while (cap < s->n * 2 + 2)
    cap *= 2;
  free (s->hash);
  s->hash = calloc (cap, sizeof *s->hash);
  if (s->hash == NULL)
    return -1;
  s->hash_cap = cap;
  /* in the order libvirt reads them: the first one read keeps the name */
  ord = malloc ((s->n ? s->n : 1) * sizeof *ord);
  if (ord == NULL)
    return -1;
  for (size_t i = 0; i < s->n; i++)
    ord[i] = (struct order) { s->m[i].read_order, i };
  if (s->n)
    qsort (ord, s->n, sizeof *ord, cmp_order);
  for (size_t oi = 0; oi < s->n; oi++) {
    size_t i = ord[oi].index;
    struct meta_moment_priv *mp = &s->m[i];
    size_t j;

    if (!mp->pub.loaded || mp->pub.name == NULL)
      continue;
    j = meta_lookup (s, mp->pub.name);
    if (j != QK_META_NONE) {
      mp->dup = true;
      mp->pub.loaded = false;
      meta_add_finding (m, MP_DUPLICATE_NAME, s->kind, mp->pub.offset,
                        "%s '%s' is defined twice: in %s%s and in %s%s; "
                        "libvirt drops one", meta_kind_name (s->kind),
                        mp->pub.name, s->m[j].pub.file,
                        s->layout == QK_META_LAYOUT_BULK ? " (earlier)" : "",
                        mp->pub.file,
                        s->layout == QK_META_LAYOUT_BULK ? " (later)" : "");
      continue;
    }
    for (size_t h = hash_str (mp->pub.name) & (cap - 1);;
         h = (h + 1) & (cap - 1))
      if (s->hash[h] == 0) {
        s->hash[h] = i + 1;
        break;
      }
  }
  free (ord);
  return 0;
}

struct meta_moment_priv *
meta_new_moment (struct meta_set *s)
{
  struct meta_moment_priv *n = qk_grow (s->m, &s->cap, s->n + 1, sizeof *n);

  if (n == NULL)
    return NULL;
  s->m = n;
  n = &s->m[s->n++];
  memset (n, 0, sizeof *n);
  n->read_order = s->n - 1;
  n->pub.kind = s->kind;
  n->pub.active = -1;
  n->pub.parent_index = n->pub.first_child = n->pub.next_sibling =
    QK_META_NONE;
  return n;
}

static void
free_moment (struct meta_moment_priv *mp)
{
  free (mp->disks);
  free (mp->ddisks);
  free (mp->disk_invalid_msg);
  qk_strvec_free (&mp->strs);
}

/* Mark the moments whose parent links lead back to themselves and make
 * them roots. Each walk follows parent links from one moment until a root
 * or a moment already seen, so the whole pass is linear and needs no
 * memory: the detached field holds the walk state meanwhile. */
static void
break_cycles (struct meta_set *s)
{
  enum { UNSEEN, ON_WALK, DONE };
  struct meta_moment_priv *m = s->m;

  for (size_t i = 0; i < s->n; i++)
    m[i].pub.detached = UNSEEN;
  for (size_t i = 0; i < s->n; i++) {
    size_t k = i;

    while (k != QK_META_NONE && m[k].pub.detached == UNSEEN) {
      m[k].pub.detached = ON_WALK;
      k = m[k].pub.parent_index;
    }
    if (k != QK_META_NONE && m[k].pub.detached == ON_WALK) {
      /* k is on this walk: following its parents comes back to it */
      size_t c = k;
      do {
        m[c].in_cycle = true;
        c = m[c].pub.parent_index;
      } while (c != k);
      s->relations_bad = true;
    }
    for (k = i; k != QK_META_NONE && m[k].pub.detached == ON_WALK;
         k = m[k].pub.parent_index)
      m[k].pub.detached = DONE;
  }
  for (size_t i = 0; i < s->n; i++) {
    m[i].pub.detached = QK_META_DETACHED_NONE;
    if (m[i].in_cycle)
      m[i].pub.parent_index = QK_META_NONE;
  }
}

/* What virsh's tree hides. libvirt 9.0 keeps every loaded moment, but
 * virsh draws the tree from the roots by parent name, so a moment whose
 * parent is missing, itself, or in a cycle is never reached, nor is
 * anything below it. Walks each such subtree without recursion. */
static void
mark_detached (struct meta_set *s)
{
  struct meta_moment_priv *m = s->m;

  for (size_t i = 0; i < s->n; i++) {
    size_t k;

    if (!m[i].pub.loaded)
      continue;
    if (m[i].self_parent)
      m[i].pub.detached = QK_META_DETACHED_SELF_PARENT;
    else if (m[i].missing_parent)
      m[i].pub.detached = QK_META_DETACHED_MISSING_PARENT;
    else if (m[i].in_cycle)
      m[i].pub.detached = QK_META_DETACHED_CYCLE;
    else
      continue;
    for (k = m[i].pub.first_child; k != QK_META_NONE;) {
      m[k].pub.detached = QK_META_DETACHED_BELOW;
      if (m[k].pub.first_child != QK_META_NONE) {
        k = m[k].pub.first_child;
        continue;
      }
      while (k != i && m[k].pub.next_sibling == QK_META_NONE)
        k = m[k].pub.parent_index;
      k = k == i ? QK_META_NONE : m[k].pub.next_sibling;
    }
  }
}

/* Link parents and children; find the current moment the way libvirt
 * would. Moments with a missing parent, their own parent, or in a cycle
 * become roots, and virsh's tree hides them with their subtrees; any of
 * those makes libvirt forget the current one. */
void
meta_link (struct meta_set *s)
{
  size_t claimants = 0, cur = QK_META_NONE;

  for (size_t i = 0; i < s->n; i++) {
    struct meta_moment_priv *mp = &s->m[i];
    struct qk_meta_moment *p = &mp->pub;
    size_t j;

    p->parent_index = p->first_child = p->next_sibling = QK_META_NONE;
    p->detached = QK_META_DETACHED_NONE;
    mp->self_parent = mp->missing_parent = mp->in_cycle = false;
    if (!p->loaded || p->parent == NULL)
      continue;
    if (p->name && strcmp (p->parent, p->name) == 0) {
      mp->self_parent = true;
      s->relations_bad = true;
      continue;
    }
    j = meta_lookup (s, p->parent);
    if (j == QK_META_NONE || !s->m[j].pub.loaded) {
      mp->missing_parent = true;
      s->relations_bad = true;
      continue;
    }
    p->parent_index = j;
  }
  break_cycles (s);

  for (size_t i = s->n; i-- > 0;) {
    struct qk_meta_moment *p = &s->m[i].pub;
    if (p->parent_index != QK_META_NONE) {
      struct qk_meta_moment *par = &s->m[p->parent_index].pub;
      p->next_sibling = par->first_child;
      par->first_child = i;
    }
  }
  mark_detached (s);

  if (s->kind == QK_META_SNAPSHOT && s->layout == QK_META_LAYOUT_PER_FILE) {
    for (size_t i = 0; i < s->n; i++)
      if (s->m[i].pub.loaded && s->m[i].pub.active == 1) {
        claimants++;
        cur = i;      /* libvirt keeps the last one it reads */
      }
  }
  else if (s->layout == QK_META_LAYOUT_BULK) {
    if (s->bulk_current) {
      cur = meta_lookup (s, s->bulk_current);
      if (cur != QK_META_NONE && !s->m[cur].pub.loaded)
        cur = QK_META_NONE;
    }
  }
  else if (s->kind == QK_META_CHECKPOINT) {
    /* the single leaf of a single chain */
    size_t roots = 0, leaves = 0, leaf = QK_META_NONE;
    bool chain = true;
    for (size_t i = 0; i < s->n; i++) {
      struct qk_meta_moment *p = &s->m[i].pub;
      if (!p->loaded)
        continue;
      if (p->parent_index == QK_META_NONE)
        roots++;
      if (p->first_child == QK_META_NONE) {
        leaves++;
        leaf = i;
      }
      else if (s->m[p->first_child].pub.next_sibling != QK_META_NONE)
        chain = false;
    }
    if (chain && roots == 1 && leaves == 1)
      cur = leaf;
  }
  s->multi_current = claimants > 1;
  s->claimed = cur;
  s->current = s->relations_bad ? QK_META_NONE : cur;
}

void
meta_unload (struct qk_meta *m)
{
  for (int k = 0; k < 2; k++) {
    struct meta_set *s = &m->set[k];
    for (size_t i = 0; i < s->n; i++)
      free_moment (&s->m[i]);
    free (s->m);
    free (s->dir);
    free (s->bulk);
    free (s->bulk_current);
    free (s->hash);
    memset (s, 0, sizeof *s);
  }
  for (size_t i = 0; i < m->nf; i++)
    free (m->f[i].msg);
  free (m->f);
  m->f = NULL;
  m->nf = m->capf = 0;
  free (m->ddisks);
  m->ddisks = NULL;
  m->n_ddisks = 0;
  qk_strvec_free (&m->dstrs);
  m->uuid = NULL;
  m->domain_ok = false;
}

QK_EXPORT void
qk_meta_close (struct qk_meta *m)
{
  if (m == NULL)
    return;
  meta_unload (m);
  free (m->domain);
  free (m->sysroot);
  free (m->config_dir);
  free (m->state_dir);
  free (m->libvirt_root);
  free (m->config_file);
  free (m->state_logical);
  qk_root_fini (&m->root);
  free (m);
}

QK_EXPORT const char *
qk_meta_domain_name (const struct qk_meta *m)
{
  return m->domain;
}

QK_EXPORT const char *
qk_meta_domain_uuid (const struct qk_meta *m)
{
  return m->uuid;
}

QK_EXPORT size_t
qk_meta_domain_disk_count (const struct qk_meta *m)
{
  return m->n_ddisks;
}

QK_EXPORT const struct qk_meta_domain_disk *
qk_meta_domain_disk (const struct qk_meta *m, size_t i)
{
  if (i >= m->n_ddisks) {
    set_error (EINVAL, "no disk %zu", i);
    return NULL;
  }
  return &m->ddisks[i];
}

static bool
kind_ok (int kind)
{
  if (kind == QK_META_SNAPSHOT || kind == QK_META_CHECKPOINT)
    return true;
  set_error (EINVAL, "unknown kind %d", kind);
  return false;
}

QK_EXPORT int
qk_meta_layout (const struct qk_meta *m, int kind)
{
  if (!kind_ok (kind))
    return -1;
  return m->set[kind].layout;
}

QK_EXPORT const char *
qk_meta_location (const struct qk_meta *m, int kind)
{
  if (!kind_ok (kind))
    return NULL;
  return m->set[kind].location;
}

QK_EXPORT size_t
qk_meta_count (const struct qk_meta *m, int kind)
{
  if (!kind_ok (kind))
    return 0;
  return m->set[kind].n;
}

QK_EXPORT const struct qk_meta_moment *
qk_meta_moment (const struct qk_meta *m, int kind, size_t i)
{
  if (!kind_ok (kind))
    return NULL;
  if (i >= m->set[kind].n) {
    set_error (EINVAL, "no %s %zu", meta_kind_name (kind), i);
    return NULL;
  }
  return &m->set[kind].m[i].pub;
}

QK_EXPORT size_t
qk_meta_current (const struct qk_meta *m, int kind)
{
  if (!kind_ok (kind))
    return QK_META_NONE;
  return m->set[kind].current;
}

