/* lib/meta: the relations between moments, as libvirt rebuilds them at
 * load (virDomainMomentUpdateRelations), and their checks. The links
 * themselves are made at load by meta_link (model.c): this only checks. */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "meta/relations.h"

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
