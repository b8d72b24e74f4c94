/* lib/meta/delete.c: qcowkit meta delete (qk_meta_delete): delete a
 * snapshot offline, merging an external snapshot's overlay into the image
 * it froze and making every metadata update libvirt makes when its own
 * delete works (children reparented, their <domain> sources, the domain
 * definition's disk when the overlay was active, current moved).
 *
 * One external snapshot S, per disk: S froze B (its <domain>'s source)
 * and made the overlay O (its <disks> source), O backing onto B. The
 * users of O are the images that back onto it directly: the domain's
 * disk (or an image of its chain) and the overlays of S's descendants.
 * Refused, before anything is written: O missing or not backing onto B;
 * B read by anything but O (another snapshot froze B: a branch next to
 * S, or the domain's disk is B with users of O left), since merging O
 * into B would change what that reads; a --sysroot (the image writers
 * resolve paths on the host).
 *
 * Crash-safety protocol, each step durable before the next:
 *   0. S's external disks get <snapshotDeleteInProgress/> (lib/meta/edit.c
 *      writes it), as libvirt marks them: libvirt refuses to delete S
 *      meanwhile, and a rerun knows the delete is its own.
 *   1. Per disk, when O still has users: qk_commit of O into B, keeping
 *      O (QK_COMMIT_KEEP): B gets what O holds, O is unchanged, so
 *      everything reads as before (only B changed, which only O reads).
 *      A crash leaves B partly merged; the rerun commits again (the same
 *      clusters, the same bytes).
 *   2. Per disk, each user of O: qk_rebase -u onto B (the name only: B
 *      now reads as O did). A crash leaves some users on B, some on O,
 *      all reading the same; the rerun commits again (harmless) and
 *      rebases the rest.
 *   3. When O was the domain's disk: the definition's source O becomes B
 *      (lib/meta/edit.c: durable replace, the old file kept).
 *   4. The metadata (lib/meta/edit.c's protocol): S's children get S's
 *      parent, every moment that froze O gets B as its source, the
 *      current mark moves to S's parent if S had it, S's file goes.
 * A rerun finds S still there until step 4 ends; after step 2 nothing
 * backs onto O, so it does not commit again (B may have been used since:
 * it is the domain's disk after step 3). O itself is left in place
 * (qcowkit removes only what it made) and reported as no longer used.
 *
 * One internal snapshot S (every disk snapshot='internal', as virsh
 * snapshot-create-as makes for an inactive domain): as libvirt does, the
 * qcow2 snapshot named S is deleted in the domain's active image of each
 * disk (qk_snapshot_delete, as qemu-img snapshot -d). Refused, before
 * anything is written: a disk whose active image is not a qcow2 holding
 * S (unless S is marked, below); a snapshot mixing internal and external
 * disks (delete the qcow2 snapshots with qemu-img snapshot -d, then
 * --metadata-only); manual disks. Crash-safety protocol:
 *   0. S's disks get <snapshotDeleteInProgress/> (the empty internal
 *      <disk/> elements get children for it): a rerun knows that a disk
 *      whose image lacks S is its own half-done delete, not damage.
 *   1. Per disk holding S: qk_snapshot_delete (its own protocol: a crash
 *      inside leaves S whole or gone, qemu-img check clean or with
 *      leaks only; a rerun does not open an image S is gone from, so
 *      such leaks stay for qcowkit repair or qemu-img check -r leaks).
 *      A crash between disks leaves S gone from some; the rerun sees
 *      the mark and deletes it from the rest.
 *   2. The metadata as step 4 above (no source changes): children to
 *      S's parent, current to S's parent, S's file removed.
 *
 * --metadata-only makes only step 4 (as virsh snapshot-delete
 * --metadata); --children and --children-only delete the descendants
 * first, deepest first, each as above (internal or external each). */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "meta/edit.h"
#include "io/io.h"

struct ddisk {
  char *target;
  char *o;                  /* the overlay S made */
  char *b;                  /* the image S froze */
  char *b_format;
  char *users[16];          /* images backing directly onto O */
  size_t nusers;
  bool active_is_o;
};


/* Add every image of the chain from top whose backing file is o. */
static int
find_users (struct qk_meta *m, struct ddisk *d, const char *top)
{
  struct qk_image *img;

  if (top == NULL || meta_same_path (m, top, d->o))
    return 0;
  img = meta_image_open (m, top);
  for (struct qk_image *c = img; c; c = qk_image_backing (c)) {
    struct qk_image *bk = qk_image_backing (c);
    bool have = false;

    if (bk == NULL || !meta_same_path (m, qk_image_filename (bk), d->o))
      continue;
    for (size_t u = 0; u < d->nusers; u++)
      have |= meta_same_path (m, d->users[u], qk_image_filename (c));
    if (!have && d->nusers < 16
        && (d->users[d->nusers] = strdup (qk_image_filename (c))) != NULL)
      d->nusers++;
    break;
  }
  if (img)
    qk_image_close (img);
  return 0;
}

static bool
is_current (const struct meta_set *s, size_t i)
{
  if (s->layout == QK_META_LAYOUT_BULK)
    return s->bulk_current && s->m[i].pub.name
           && strcmp (s->bulk_current, s->m[i].pub.name) == 0;
  return s->m[i].pub.active == 1;
}

/* Step 4 (and the whole of --metadata-only). */
static int
plan_metadata (struct qk_meta *m, size_t i, struct ddisk *dd, size_t nd,
               bool dry, qk_meta_change_fn fn, void *opaque)
{
  struct meta_set *s = &m->set[QK_META_SNAPSHOT];
  const struct qk_meta_moment *p = &s->m[i].pub;
  struct meta_plan pl;
  size_t up = p->parent_index;
  int ret = -1;

  if (meta_plan_init (&pl, m, QK_META_SNAPSHOT, "delete") < 0)
    return -1;
  for (size_t c = 0; c < s->n; c++) {
    const struct qk_meta_moment *pc = &s->m[c].pub;
    if (c == i || !pc->loaded)
      continue;
    if (pc->parent_index == i
        && medit_set_parent (&pl.st[c], up == QK_META_NONE ? NULL
                             : s->m[up].pub.name) < 0)
      goto out;
    for (size_t d = 0; d < nd; d++) {
      const struct qk_meta_domain_disk *cd
        = meta_ddisk (pc->domain_disks, pc->n_domain_disks, dd[d].target);
      if (cd && cd->source && strcmp (cd->source, dd[d].o) == 0
          && medit_add_subst (&pl.st[c], dd[d].o, dd[d].b) < 0)
        goto out;
    }
  }
  if (is_current (s, i)) {
    if (s->layout == QK_META_LAYOUT_BULK) {
      pl.bulk_current_set = true;
      if (up != QK_META_NONE
          && (pl.bulk_current = strdup (s->m[up].pub.name)) == NULL) {
        set_error (ENOMEM, "strdup");
        goto out;
      }
    }
    else if (up != QK_META_NONE && s->m[up].pub.active == 0) {
      pl.st[up].active = 1;
      pl.st[up].touched = true;
    }
  }
  pl.st[i].drop = true;
  pl.st[i].touched = true;
  ret = meta_plan_apply (&pl, dry, fn, opaque);
 out:
  meta_plan_free (&pl);
  return ret;
}

static int
mark_in_progress (struct qk_meta *m, size_t i, bool internal, bool dry,
                  qk_meta_change_fn fn, void *opaque)
{
  struct meta_plan pl;
  int ret;

  if (meta_plan_init (&pl, m, QK_META_SNAPSHOT, "delete") < 0)
    return -1;
  pl.st[i].set_dip = true;
  pl.st[i].dip_empty = internal;
  pl.st[i].touched = true;
  ret = meta_plan_apply (&pl, dry, fn, opaque);
  meta_plan_free (&pl);
  return ret;
}

static void
free_disks (struct ddisk *dd, size_t nd)
{
  for (size_t d = 0; d < nd; d++) {
    free (dd[d].target);
    free (dd[d].o);
    free (dd[d].b);
    free (dd[d].b_format);
    for (size_t u = 0; u < dd[d].nusers; u++)
      free (dd[d].users[u]);
  }
}

/* Delete the internal snapshot i (steps 0 to 2 of the internal
 * protocol); targets are its internal disks. */
static int
delete_internal (struct qk_meta *m, size_t i, char **targets, size_t nt,
                 bool marked, bool dry, qk_meta_change_fn fn, void *opaque)
{
  struct meta_set *s = &m->set[QK_META_SNAPSHOT];
  const char *name = s->m[i].pub.name;
  char *paths[16] = { 0 };
  bool has[16] = { 0 };
  char *sname = strdup (name);
  int ret = -1;

  if (sname == NULL) {
    set_error (ENOMEM, "strdup");
    return -1;
  }
  for (size_t d = 0; d < nt; d++) {
    const struct qk_meta_domain_disk *act
      = meta_ddisk (m->ddisks, m->n_ddisks, targets[d]);
    int r;

    if (act == NULL || act->source == NULL) {
      set_error (EINVAL, "snapshot '%s', disk '%s': the domain definition "
                 "has no file source for the disk", sname, targets[d]);
      goto out;
    }
    if ((paths[d] = strdup (act->source)) == NULL) {
      set_error (ENOMEM, "strdup");
      goto out;
    }
    r = meta_image_has_snapshot (m, paths[d], sname);
    if (r < 0) {
      set_error (qk_get_errno (), "snapshot '%s', disk '%s': %s", sname,
                 targets[d], qk_get_error ());
      goto out;
    }
    has[d] = r == 1;
    if (!has[d] && !marked) {
      set_error (ENOENT, "snapshot '%s', disk '%s': the domain's image %s "
                 "holds no qcow2 snapshot '%s' (libvirt deletes it there); "
                 "use --metadata-only to remove the metadata only",
                 sname, targets[d], paths[d], sname);
      goto out;
    }
  }
  /* 0. mark */
  if (!marked && mark_in_progress (m, i, true, dry, fn, opaque) < 0)
    goto out;
  if (!dry && meta_reload (m) < 0)
    goto out;
  /* 1. the qcow2 snapshots */
  for (size_t d = 0; d < nt; d++) {
    struct qk_snapshot_options so = { 0 };
    struct qk_snapshot_result sr = { 0 };

    if (!has[d])
      continue;           /* deleted by an earlier, interrupted run */
    if (meta_report_op (fn, opaque, "snapshot-delete", paths[d], NULL) < 0)
      goto out;
    if (dry)
      continue;
    if (qk_snapshot_delete (paths[d], sname, &so, &sr) < 0)
      goto out;
    qk_snapshot_result_clear (&sr);
    qk_fault_point ("write");
  }
  /* 2. the metadata */
  i = meta_lookup (s, sname);
  if (i == QK_META_NONE) {
    set_error (ENOENT, "the snapshot disappeared during the delete");
    goto out;
  }
  ret = plan_metadata (m, i, NULL, 0, dry, fn, opaque);
 out:
  for (size_t d = 0; d < nt; d++)
    free (paths[d]);
  free (sname);
  return ret;
}

/* Delete snapshot i. */
static int
delete_one (struct qk_meta *m, size_t i, unsigned flags,
            qk_meta_change_fn fn, void *opaque)
{
  struct meta_set *s = &m->set[QK_META_SNAPSHOT];
  const struct qk_meta_moment *p = &s->m[i].pub;
  bool dry = flags & QK_META_DELETE_DRY_RUN;
  bool meta_only = flags & QK_META_DELETE_METADATA_ONLY;
  struct ddisk dd[16];
  char *itarget[16];
  size_t nd = 0, ni = 0;
  bool internal = false, manual = false, marked = false;
  char *sname = NULL;
  int ret = -1;

  memset (dd, 0, sizeof dd);
  for (size_t d = 0; d < p->n_disks; d++) {
    const struct qk_meta_disk *dk = &p->disks[d];
    const struct qk_meta_domain_disk *fd;

    if (dk->revert || dk->mode == NULL || strcmp (dk->mode, "no") == 0)
      continue;
    if (strcmp (dk->mode, "manual") == 0) {
      manual = true;
      continue;
    }
    if (strcmp (dk->mode, "internal") == 0) {
      internal = true;
      marked |= dk->delete_in_progress;
      if (ni < 16 && dk->name)
        itarget[ni++] = (char *) dk->name;
      continue;
    }
    if (!meta_is_external (dk) || nd == 16) {
      set_error (ENOTSUP, "snapshot '%s', disk '%s': not a file-backed "
                 "external snapshot", p->name, dk->name ? dk->name : "?");
      free_disks (dd, nd);
      return -1;
    }
    fd = meta_ddisk (p->domain_disks, p->n_domain_disks, dk->name);
    if (fd == NULL || fd->source == NULL) {
      set_error (EINVAL, "snapshot '%s', disk '%s': its <domain> has no "
                 "source for the disk", p->name, dk->name);
      free_disks (dd, nd);
      return -1;
    }
    marked |= dk->delete_in_progress;
    dd[nd].target = strdup (dk->name);
    dd[nd].o = strdup (dk->source);
    dd[nd].b = strdup (fd->source);
    nd++;
    if (!dd[nd - 1].target || !dd[nd - 1].o || !dd[nd - 1].b) {
      set_error (ENOMEM, "strdup");
      free_disks (dd, nd);
      return -1;
    }
  }
  sname = strdup (p->name);
  if (sname == NULL) {
    set_error (ENOMEM, "strdup");
    goto out;
  }
  if (meta_only) {
    ret = plan_metadata (m, i, dd, nd, dry, fn, opaque);
    goto out;
  }
  if (manual) {
    set_error (ENOTSUP, "snapshot '%s' has manual disk snapshots: qcowkit "
               "does not know what was made; use --metadata-only", p->name);
    goto out;
  }
  if (internal && nd) {
    set_error (ENOTSUP, "snapshot '%s' mixes internal and external disk "
               "snapshots: not deleted (delete the qcow2 snapshots with "
               "qemu-img snapshot -d, then use --metadata-only)", p->name);
    goto out;
  }
  if (m->sysroot) {
    set_error (ENOTSUP, "%s images under --sysroot is not supported "
               "(the image writers resolve backing files on the host); use "
               "--metadata-only, or run it on the host",
               internal ? "deleting qcow2 snapshots in" : "merging");
    goto out;
  }
  if (internal) {
    ret = delete_internal (m, i, itarget, ni, marked, dry, fn, opaque);
    goto out;
  }

  /* checks, before anything is written */
  for (size_t d = 0; d < nd; d++) {
    struct ddisk *x = &dd[d];
    const struct qk_meta_domain_disk *act
      = meta_ddisk (m->ddisks, m->n_ddisks, x->target);
    struct qk_image *o = meta_image_open (m, x->o);
    struct qk_image *bk = o ? qk_image_backing (o) : NULL;

    if (o == NULL) {
      set_error (ENOENT, "snapshot '%s', disk '%s': its overlay %s cannot be "
                 "opened: %s", p->name, x->target, x->o, qk_get_error ());
      goto out;
    }
    if (bk == NULL || !meta_same_path (m, qk_image_filename (bk), x->b)) {
      set_error (EINVAL, "snapshot '%s', disk '%s': the overlay %s does not "
                 "back onto %s, the image the snapshot froze", p->name,
                 x->target, x->o, x->b);
      qk_image_close (o);
      goto out;
    }
    x->b_format = strdup (qk_image_format (bk));
    qk_image_close (o);
    if (x->b_format == NULL) {
      set_error (ENOMEM, "strdup");
      goto out;
    }
    /* users of O: the domain's disk chain, the descendants' overlays */
    x->active_is_o = act && act->source
                     && meta_same_path (m, act->source, x->o);
    if (act && act->source)
      find_users (m, x, act->source);
    for (size_t j = 0; j < s->n; j++) {
      const struct qk_meta_disk *jd;
      if (j == i || !s->m[j].pub.loaded)
        continue;
      jd = meta_mdisk (&s->m[j].pub, x->target, false);
      if (meta_is_external (jd))
        find_users (m, x, jd->source);
    }
    /* B read by something else than O: only matters when O is merged
     * into B (when O has no users left, the merge was made by an earlier
     * run: S's children already moved onto B) */
    if (x->nusers == 0 && !x->active_is_o)
      continue;
    for (size_t j = 0; j < s->n; j++) {
      const struct qk_meta_moment *pj = &s->m[j].pub;
      const struct qk_meta_disk *jd;
      const struct qk_meta_domain_disk *jf;
      if (j == i || !pj->loaded)
        continue;
      jd = meta_mdisk (pj, x->target, false);
      jf = meta_ddisk (pj->domain_disks, pj->n_domain_disks, x->target);
      if (meta_is_external (jd) && jf && jf->source
          && meta_same_path (m, jf->source, x->b)
          && !meta_same_path (m, jd->source, x->o)) {
        set_error (EBUSY, "snapshot '%s', disk '%s': the snapshot '%s' froze "
                   "%s too (a branch next to '%s'); merging %s into it would "
                   "change what that branch reads: delete '%s' first, or use "
                   "--metadata-only", p->name, x->target, pj->name, x->b,
                   p->name, x->o, pj->name);
        goto out;
      }
    }
    if (act && act->source && meta_same_path (m, act->source, x->b)
        && x->nusers) {
      set_error (EBUSY, "snapshot '%s', disk '%s': the domain's disk is %s, "
                 "which the merge would change", p->name, x->target, x->b);
      goto out;
    }
  }

  /* 0. mark */
  if (!marked && mark_in_progress (m, i, false, dry, fn, opaque) < 0)
    goto out;
  if (!dry && meta_reload (m) < 0)
    goto out;
  /* 1, 2 */
  for (size_t d = 0; d < nd; d++) {
    struct ddisk *x = &dd[d];
    int r = 0;

    if (x->nusers == 0 && !x->active_is_o)
      continue;         /* merged and moved: a rerun after step 2 */
    if (meta_report_op (fn, opaque, "commit", x->o, x->b) < 0)
      goto out;
    if (!dry) {
      struct qk_commit_options co = { .base = x->b, .flags = QK_COMMIT_KEEP };
      struct qk_commit_result cr;
      r = qk_commit (x->o, &co, &cr);
      if (r < 0)
        goto out;
      qk_fault_point ("write");
    }
    for (size_t u = 0; u < x->nusers; u++) {
      if (meta_report_op (fn, opaque, "rebase", x->users[u], x->b) < 0)
        goto out;
      if (!dry) {
        struct qk_rebase_options ro = { .backing = x->b,
                                        .backing_format = x->b_format,
                                        .flags = QK_REBASE_UNSAFE };
        struct qk_rebase_result rr;
          r = qk_rebase (x->users[u], &ro, &rr);
          if (r < 0)
          goto out;
        qk_fault_point ("write");
      }
    }
  }
  /* 3. the domain definition */
  for (size_t d = 0; d < nd; d++) {
    char *text;

    if (!dd[d].active_is_o)
      continue;
    if ((text = meta_definition_read (m)) == NULL)
      goto out;
    if (meta_subst_source (&text, dd[d].o, dd[d].b) < 0
        || meta_replace_file (m, m->config_file, text, strlen (text),
                              "delete", dry, fn, opaque) < 0) {
      free (text);
      goto out;
    }
    free (text);
  }
  if (!dry && meta_reload (m) < 0)
    goto out;
  /* 4. the metadata; i is still S (nothing was added or removed) */
  i = meta_lookup (s, sname);
  if (i == QK_META_NONE) {
    set_error (ENOENT, "the snapshot disappeared during the delete");
    goto out;
  }
  if (plan_metadata (m, i, dd, nd, dry, fn, opaque) < 0)
    goto out;
  for (size_t d = 0; d < nd; d++)
    if (meta_report_op (fn, opaque, "unused", dd[d].o, NULL) < 0)
      goto out;
  ret = 0;
 out:
  free (sname);
  free_disks (dd, nd);
  return ret;
}

QK_EXPORT int
qk_meta_delete (struct qk_meta *m, const char *name, unsigned flags,
                qk_meta_change_fn fn, void *opaque)
{
  struct meta_set *s;
  char **todo = NULL;
  size_t i, nt = 0;
  int rc;

  if (m == NULL || name == NULL
      || (flags & ~(QK_META_DELETE_METADATA_ONLY | QK_META_DELETE_CHILDREN
                    | QK_META_DELETE_CHILDREN_ONLY | QK_META_DELETE_DRY_RUN))
      || ((flags & QK_META_DELETE_CHILDREN)
          && (flags & QK_META_DELETE_CHILDREN_ONLY))) {
    set_error (EINVAL, "bad arguments");
    return -1;
  }
  s = &m->set[QK_META_SNAPSHOT];
  i = meta_writer_target (m, name, flags & QK_META_DELETE_DRY_RUN, "delete");
  if (i == QK_META_NONE)
    return -1;
  /* the names to delete, deepest first: a post-order walk */
  todo = calloc (s->n + 1, sizeof *todo);
  if (todo == NULL) {
    set_error (ENOMEM, "calloc");
    return -1;
  }
  if (flags & (QK_META_DELETE_CHILDREN | QK_META_DELETE_CHILDREN_ONLY)) {
    size_t k = s->m[i].pub.first_child;
    while (k != QK_META_NONE) {
      const struct qk_meta_moment *pk = &s->m[k].pub;
      if (pk->first_child != QK_META_NONE) {
        k = pk->first_child;
        continue;
      }
      /* leaf: take it, then climb while done */
      for (;;) {
        todo[nt++] = (char *) s->m[k].pub.name;
        if (s->m[k].pub.next_sibling != QK_META_NONE) {
          k = s->m[k].pub.next_sibling;
          break;
        }
        k = s->m[k].pub.parent_index;
        if (k == i) {
          k = QK_META_NONE;
          break;
        }
      }
    }
  }
  if (!(flags & QK_META_DELETE_CHILDREN_ONLY))
    todo[nt++] = (char *) s->m[i].pub.name;
  for (size_t t = 0; t < nt; t++)
    if ((todo[t] = strdup (todo[t])) == NULL) {
      for (size_t u = 0; u < t; u++)
        free (todo[u]);
      free (todo);
      set_error (ENOMEM, "strdup");
      return -1;
    }
  rc = 0;
  for (size_t t = 0; t < nt && rc == 0; t++) {
    size_t k = meta_lookup (s, todo[t]);
    if (k == QK_META_NONE) {
      set_error (ENOENT, "no snapshot '%s'", todo[t]);
      rc = -1;
      break;
    }
    rc = delete_one (m, k, flags, fn, opaque);
    if (rc == 0 && !(flags & QK_META_DELETE_DRY_RUN) && meta_reload (m) < 0)
      rc = -1;
    if (rc == 0 && (flags & QK_META_DELETE_DRY_RUN) && t + 1 < nt) {
      /* a dry run cannot show the later steps on the changed state */
      break;
    }
  }
  for (size_t t = 0; t < nt; t++)
    free (todo[t]);
  free (todo);
  return rc;
}
