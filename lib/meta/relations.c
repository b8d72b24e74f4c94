/* lib/meta: the relations between moments, as libvirt rebuilds them at
 * load (virDomainMomentUpdateRelations), and their checks. */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "meta/meta.h"

/* Link parents and children; find the current moment the way libvirt
 * would. Moments with a missing parent, their own parent, or in a cycle
 * become roots; any of those makes libvirt forget the current one. */
void
meta_link (struct meta_set *s)
{
  unsigned char *state;
  size_t *path;
  size_t claimants = 0, cur = QK_META_NONE;

  for (size_t i = 0; i < s->n; i++) {
    struct meta_moment_priv *mp = &s->m[i];
    struct qk_meta_moment *p = &mp->pub;
    size_t j;

    p->parent_index = p->first_child = p->next_sibling = QK_META_NONE;
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

  /* cycles: 0 unvisited, 1 on the current walk, 2 done */
  state = calloc (s->n ? s->n : 1, 1);
  path = malloc ((s->n ? s->n : 1) * sizeof *path);
  if (state && path) {
    for (size_t i = 0; i < s->n; i++) {
      size_t np = 0, k = i;

      while (k != QK_META_NONE && state[k] == 0) {
        state[k] = 1;
        path[np++] = k;
        k = s->m[k].pub.parent_index;
      }
      if (k != QK_META_NONE && state[k] == 1) {
        /* k is on this walk: path from k to the end is a cycle */
        size_t a = 0;
        while (path[a] != k)
          a++;
        for (; a < np; a++) {
          s->m[path[a]].in_cycle = true;
          s->relations_bad = true;
        }
      }
      for (size_t a = 0; a < np; a++)
        state[path[a]] = 2;
    }
    for (size_t i = 0; i < s->n; i++)
      if (s->m[i].in_cycle)
        s->m[i].pub.parent_index = QK_META_NONE;
  }
  free (state);
  free (path);

  for (size_t i = s->n; i-- > 0;) {
    struct qk_meta_moment *p = &s->m[i].pub;
    if (p->parent_index != QK_META_NONE) {
      struct qk_meta_moment *par = &s->m[p->parent_index].pub;
      p->next_sibling = par->first_child;
      par->first_child = i;
    }
  }

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
    ? "; libvirt makes it a root and forgets the current snapshot"
    : "; libvirt makes it a root";

  for (size_t i = 0; i < s->n; i++) {
    struct meta_moment_priv *mp = &s->m[i];
    struct qk_meta_moment *p = &mp->pub;

    if (!p->loaded)
      continue;
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
