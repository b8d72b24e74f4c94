/* lib/meta: the relations between moments, as libvirt rebuilds them at
 * load (virDomainMomentUpdateRelations), and their checks. */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "meta/meta.h"

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

static const char *
nm (const struct qk_meta_moment *p)
{
  return p->name ? p->name : "(unnamed)";
}

static void
check_set (struct qk_meta *m, struct meta_set *s, struct meta_report *r)
{
  const char *kn = meta_kind_name (s->kind);
  size_t roots = 0, loaded = 0, claimants = 0;
  const char *lost = s->kind == QK_META_SNAPSHOT
    ? "; virsh's tree hides it and all below it, and libvirt forgets the "
      "current snapshot"
    : "; virsh's tree hides it and all below it";

  for (size_t i = 0; i < s->n; i++) {
    struct meta_moment_priv *mp = &s->m[i];
    struct qk_meta_moment *p = &mp->pub;

    if (!p->loaded)
      continue;
    meta_subject (r, p);
    loaded++;
    if (p->parent == NULL)    /* roots by choice, not detached ones */
      roots++;
    if (p->active == 1)
      claimants++;
    if (mp->self_parent)
      meta_report (r, MP_SELF_PARENT, "%s '%s' (%s) is its own parent%s", kn,
                   nm (p), p->file, lost);
    if (mp->missing_parent)
      meta_report (r, MP_MISSING_PARENT, "%s '%s' (%s) names parent '%s', "
                   "which does not exist%s", kn, nm (p), p->file, p->parent,
                   lost);
    if (mp->in_cycle)
      meta_report (r, MP_CYCLE, "%s '%s' (%s) is in a parent cycle (its "
                   "parent is '%s')%s", kn, nm (p), p->file, p->parent, lost);
    if (m->uuid && p->domain_uuid && strcasecmp (m->uuid, p->domain_uuid))
      meta_report (r, MP_UUID_MISMATCH, "%s '%s' records domain UUID %s; "
                   "the domain's is %s", kn, nm (p), p->domain_uuid, m->uuid);
    if (p->parent_index != QK_META_NONE) {
      const struct qk_meta_moment *par = &s->m[p->parent_index].pub;
      if (p->has_creation_time && par->has_creation_time
          && p->creation_time < par->creation_time)
        meta_report (r, MP_CHILD_BEFORE_PARENT, "%s '%s' was created at %"
                     PRId64 ", before its parent '%s' (%" PRId64 ")", kn,
                     nm (p), p->creation_time, nm (par), par->creation_time);
    }
    for (size_t d = 0; d < p->n_disks; d++)
      if (p->disks[d].delete_in_progress)
        meta_report (r, MP_DELETE_IN_PROGRESS, "%s '%s', disk '%s': "
                     "<snapshotDeleteInProgress/> is left from a delete "
                     "that did not complete", kn, nm (p),
                     p->disks[d].name ? p->disks[d].name : "?");
  }
  meta_subject (r, NULL);
  if (s->kind == QK_META_SNAPSHOT && s->layout == QK_META_LAYOUT_PER_FILE
      && claimants > 1) {
    char list[1024] = "";
    size_t o = 0;
    for (size_t i = 0; i < s->n && o < sizeof list - 64; i++)
      if (s->m[i].pub.loaded && s->m[i].pub.active == 1)
        o += snprintf (list + o, sizeof list - o, "%s'%s'", o ? ", " : "",
                       nm (&s->m[i].pub));
    meta_report (r, MP_MULTIPLE_CURRENT, "%zu snapshots claim to be current "
                 "(%s); libvirt keeps the one it reads last", claimants, list);
  }
  if (s->layout == QK_META_LAYOUT_BULK && s->bulk_current) {
    size_t c = meta_lookup (s, s->bulk_current);
    if (c == QK_META_NONE || !s->m[c].pub.loaded)
      meta_report (r, MP_CURRENT_UNKNOWN, "%s: current='%s' names no %s of "
                   "the file", s->bulk, s->bulk_current, kn);
  }
  if (roots > 1)
    meta_report (r, MP_MULTIPLE_ROOTS, "%zu %ss are roots", roots, kn);
  if (s->kind == QK_META_SNAPSHOT && loaded && !s->relations_bad
      && s->current == QK_META_NONE
      && !(s->layout == QK_META_LAYOUT_BULK && s->bulk_current))
    meta_report (r, MP_NO_CURRENT, "no snapshot is current");
  if (s->kind == QK_META_SNAPSHOT && s->current != QK_META_NONE
      && !s->multi_current
      && s->m[s->current].pub.first_child != QK_META_NONE)
    meta_report (r, MP_CURRENT_NOT_LEAF, "the current snapshot '%s' has "
                 "children", nm (&s->m[s->current].pub));
  if (s->kind == QK_META_CHECKPOINT && s->layout == QK_META_LAYOUT_PER_FILE
      && loaded && !s->relations_bad && s->current == QK_META_NONE)
    meta_report (r, MP_CHECKPOINT_BRANCHES, "the checkpoints are not a "
                 "single chain: libvirt has no current checkpoint");
}

void
meta_check_relations (struct qk_meta *m, struct meta_report *r)
{
  for (int k = 0; k < 2; k++)
    check_set (m, &m->set[k], r);
}
