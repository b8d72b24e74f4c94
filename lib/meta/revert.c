/* lib/meta/revert.c: qcowkit meta revert (qk_meta_revert): revert a
 * domain offline to a disk-only external snapshot, the way seed 001
 * designs it: a new overlay on each image the snapshot froze, the domain
 * definition pointed at it, the snapshot made current, so that the next
 * snapshot starts a new branch. Existing children keep their overlays and
 * metadata (they are never invalidated); --discard-children removes their
 * metadata (their files stay: qcowkit removes only what it made).
 *
 * Per disk, the snapshot S froze B (its <domain>'s source) and made the
 * overlay O. The new overlay N, on B, is named O's name and "-revert"
 * (then -revert2, ... when taken), created with O_EXCL, never over a
 * file. S records it in <revertDisks> (the element
 * libvirt 9.9 and later write for the same purpose; libvirt 9.0 ignores
 * it), so that meta check knows the domain's disk is S's revert overlay.
 *
 * Crash-safety protocol, each step durable before the next:
 *   1. N created (temporary name, fsync, rename without replacing, the
 *      directory fsynced): a crash leaves an empty overlay nothing uses.
 *   2. The metadata (lib/meta/edit.c's protocol): S gets <revertDisks>
 *      naming N and the current mark (the files gaining it first);
 *      with --discard-children the descendants' files go.
 *   3. The definition's disk source becomes N (durable replace, the old
 *      file kept).
 * A rerun after step 2 finds S current with a revert overlay that exists,
 * backs onto B and is not yet the domain's disk: it reuses it and makes
 * step 3. Once the definition uses N, a new revert makes a new overlay.
 * The state the domain had before (its old disk) is left as it was and
 * reported.
 *
 * An internal snapshot S (every disk snapshot='internal', as virsh
 * snapshot-create-as makes for an inactive domain): as libvirt does
 * offline, the qcow2 snapshot named S is applied in the domain's active
 * image of each disk (qk_snapshot_apply, as qemu-img snapshot -a).
 * Crash-safety protocol:
 *   1. Per disk: qk_snapshot_apply (its own protocol: a crash inside
 *      leaves the image's active state old or S's, leaked clusters at
 *      most, which the rerun's apply frees first). Applying is
 *      idempotent (S stays in the image), so a crash between disks is
 *      finished by the rerun applying S to every disk again.
 *   2. The metadata as step 2 above, without <revertDisks>: S current,
 *      with --discard-children its descendants' files go.
 * The definition is left as it is: libvirt replaces it with S's <domain>
 * (for an internal snapshot of an inactive domain they name the same
 * images); qcowkit does not rewrite it.
 *
 * Refused: snapshots with memory state (state running or paused: libvirt
 * reverts those into a running domain, which offline cannot be; revert
 * the disks with qemu-img snapshot -a if that is what is wanted),
 * snapshots mixing internal and external disks, manual or non-file
 * disks, a sysroot (the image writers and the overlay name host
 * paths), and --discard-children for an internal snapshot that has
 * children (their qcow2 snapshots would stay in the image with no
 * metadata: meta delete --children-only removes both). */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "meta/edit.h"
#include "format/format.h"
#include "io/io.h"

struct rdisk {
  char *target;
  char *b;                  /* the image S froze */
  char *b_format;
  uint64_t size;
  char *cur;                /* the definition's source now */
  char *n;                  /* the new (or resumed) overlay */
  bool resume;
  bool internal;            /* cur holds the qcow2 snapshot to apply */
};


static void
free_rdisks (struct rdisk *d, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    free (d[i].target);
    free (d[i].b);
    free (d[i].b_format);
    free (d[i].cur);
    free (d[i].n);
  }
}

/* A free name for the overlay, next to the snapshot's own overlay o
 * (host path = logical path: no sysroot). */
static char *
overlay_name (const char *o)
{
  char *n = NULL;
  struct stat st;

  for (unsigned k = 1; k < 1000; k++) {
    free (n);
    n = k == 1 ? meta_fmt ("%s-revert", o) : meta_fmt ("%s-revert%u", o, k);
    if (n == NULL || (lstat (n, &st) < 0 && errno == ENOENT))
      return n;
  }
  free (n);
  set_error (EEXIST, "%s-revert: no free name", o);
  return NULL;
}

static int
create_overlay (const struct rdisk *d)
{
  uint8_t *buf;
  size_t len;
  const char *leaf;
  char *dir;
  int dfd, r;

  if (qk_overlay_bytes (d->b, d->b_format, d->size, &buf, &len) < 0)
    return -1;
  leaf = meta_leaf_of (d->n);
  dir = leaf == d->n ? strdup (".") : strndup (d->n, leaf - 1 - d->n);
  if (dir == NULL) {
    free (buf);
    set_error (ENOMEM, "strdup");
    return -1;
  }
  dfd = open (dir[0] ? dir : "/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) {
    set_error (errno, "open %s", dir);
    free (dir);
    free (buf);
    return -1;
  }
  r = qk_durable_write (dfd, leaf, buf, len, 0644, 0);
  close (dfd);
  free (dir);
  free (buf);
  if (r == 0)
    qk_fault_point ("write");
  return r;
}

/* <revertDisks> for S, indented as its <disks>. */
static char *
revert_disks_xml (const struct rdisk *d, size_t nd)
{
  struct qk_sbuf b = { 0 };

  qk_sbuf_add (&b, "<revertDisks>\n", 14);
  for (size_t i = 0; i < nd; i++) {
    char *t = meta_esc (d[i].target), *n = meta_esc (d[i].n);
    char *line = meta_fmt ("    <disk name='%s' snapshot='external' "
                           "type='file'>\n      <source file='%s'/>\n"
                           "    </disk>\n", t ? t : "", n ? n : "");
    if (line)
      qk_sbuf_add (&b, line, strlen (line));
    free (t);
    free (n);
    free (line);
  }
  qk_sbuf_add (&b, "  </revertDisks>", 16);
  return b.p;
}

QK_EXPORT int
qk_meta_revert (struct qk_meta *m, const char *name, unsigned flags,
                qk_meta_change_fn fn, void *opaque)
{
  struct meta_set *s;
  const struct qk_meta_moment *p;
  struct rdisk dd[16];
  size_t i, nd = 0, n_int = 0;
  bool dry = flags & QK_META_REVERT_DRY_RUN;
  struct meta_plan pl = { 0 };
  char *text = NULL;
  int ret = -1;

  memset (dd, 0, sizeof dd);
  if (m == NULL || name == NULL
      || (flags & ~(QK_META_REVERT_DISCARD_CHILDREN | QK_META_REVERT_DRY_RUN))) {
    set_error (EINVAL, "bad arguments");
    return -1;
  }
  s = &m->set[QK_META_SNAPSHOT];
  if ((i = meta_writer_target (m, name, dry, "revert")) == QK_META_NONE)
    return -1;
  if (!m->domain_ok) {
    set_error (EINVAL, "the domain definition cannot be read");
    return -1;
  }
  if (m->sysroot) {
    set_error (ENOTSUP, "revert writes images on the host: not under "
               "--sysroot");
    return -1;
  }
  p = &s->m[i].pub;
  if (p->state && strcmp (p->state, "disk-snapshot") != 0
      && strcmp (p->state, "shutoff") != 0) {
    set_error (ENOTSUP, "snapshot '%s' holds the VM's memory (state %s): "
               "only disk-only snapshots are reverted offline", name,
               p->state);
    return -1;
  }
  for (size_t d = 0; d < p->n_disks; d++) {
    const struct qk_meta_disk *dk = &p->disks[d];
    const struct qk_meta_domain_disk *fd, *act;
    const struct qk_meta_disk *rv;
    struct qk_image *img;
    struct rdisk *x;

    if (dk->revert || dk->mode == NULL || strcmp (dk->mode, "no") == 0)
      continue;
    if (strcmp (dk->mode, "internal") == 0) {
      int r;
      act = meta_ddisk (m->ddisks, m->n_ddisks, dk->name);
      if (act == NULL || act->source == NULL || nd == 16) {
        set_error (EINVAL, "snapshot '%s', disk '%s': no file source for the "
                   "disk in the definition", name, dk->name);
        goto out;
      }
      x = &dd[nd++];
      x->internal = true;
      x->target = strdup (dk->name);
      x->cur = strdup (act->source);
      if (!x->target || !x->cur) {
        set_error (ENOMEM, "strdup");
        goto out;
      }
      if ((r = meta_image_has_snapshot (m, x->cur, name)) <= 0) {
        if (r == 0)
          set_error (ENOENT, "the domain's image %s holds no qcow2 snapshot "
                     "'%s'", x->cur, name);
        set_error (qk_get_errno (), "snapshot '%s', disk '%s': %s", name,
                   x->target, qk_get_error ());
        goto out;
      }
      n_int++;
      continue;
    }
    if (!meta_is_external (dk)) {
      set_error (ENOTSUP, "snapshot '%s', disk '%s': a '%s' disk snapshot "
                 "(not a qcow2 snapshot or a file overlay libvirt made): "
                 "not reverted offline", name, dk->name ? dk->name : "?",
                 dk->mode);
      goto out;
    }
    fd = meta_ddisk (p->domain_disks, p->n_domain_disks, dk->name);
    act = meta_ddisk (m->ddisks, m->n_ddisks, dk->name);
    if (fd == NULL || fd->source == NULL || act == NULL
        || act->source == NULL || nd == 16) {
      set_error (EINVAL, "snapshot '%s', disk '%s': no source for the disk "
                 "in its <domain> or in the definition", name, dk->name);
      goto out;
    }
    x = &dd[nd++];
    x->target = strdup (dk->name);
    x->b = strdup (fd->source);
    x->cur = strdup (act->source);
    if (!x->target || !x->b || !x->cur) {
      set_error (ENOMEM, "strdup");
      goto out;
    }
    img = meta_image_open (m, x->b);
    if (img == NULL) {
      set_error (ENOENT, "snapshot '%s', disk '%s': the image it froze, %s, "
                 "cannot be opened: %s", name, x->target, x->b,
                 qk_get_error ());
      goto out;
    }
    x->b_format = strdup (qk_image_format (img));
    x->size = qk_image_virtual_size (img);
    qk_image_close (img);
    if (x->b_format == NULL) {
      set_error (ENOMEM, "strdup");
      goto out;
    }
    /* resume: S current, its revert overlay there, not yet the disk */
    rv = meta_mdisk (p, x->target, true);
    if (p->active == 1 && meta_is_external (rv)
        && !meta_same_path (m, rv->source, x->cur)) {
      struct qk_image *o = meta_image_open (m, rv->source);
      struct qk_image *ob = o ? qk_image_backing (o) : NULL;
      if (ob && meta_same_path (m, qk_image_filename (ob), x->b)) {
        x->n = strdup (rv->source);
        x->resume = true;
      }
      if (o)
        qk_image_close (o);
    }
    if (x->n == NULL && (x->n = overlay_name (dk->source)) == NULL)
      goto out;
  }
  if (nd == 0) {
    set_error (EINVAL, "snapshot '%s' has no disk to revert", name);
    goto out;
  }
  if (n_int && n_int != nd) {
    set_error (ENOTSUP, "snapshot '%s' mixes internal and external disk "
               "snapshots: not reverted", name);
    goto out;
  }
  /* Internal descendants are qcow2 snapshots in the same images: dropping
   * only their metadata would leave snapshots libvirt no longer knows
   * (meta check's INT_SNAPSHOT_UNKNOWN), and deleting them is meta
   * delete's work, with its own protocol. */
  if (n_int && (flags & QK_META_REVERT_DISCARD_CHILDREN))
    for (size_t j = 0; j < s->n; j++)
      if (j != i && s->m[j].pub.loaded && s->m[j].pub.parent_index == i) {
        set_error (ENOTSUP, "snapshot '%s' is internal: --discard-children "
                   "would leave its descendants' qcow2 snapshots in the "
                   "image without metadata; delete them first (qcowkit meta "
                   "delete DOMAIN %s --children-only), then revert", name,
                   name);
        goto out;
      }
  /* 1 (internal). the qcow2 snapshots applied */
  for (size_t d = 0; d < n_int; d++) {
    struct qk_snapshot_options so = { 0 };
    struct qk_snapshot_result sr = { 0 };

    if (meta_report_op (fn, opaque, "snapshot-apply", dd[d].cur, NULL) < 0)
      goto out;
    if (dry)
      continue;
    if (qk_snapshot_apply (dd[d].cur, name, &so, &sr) < 0)
      goto out;
    qk_snapshot_result_clear (&sr);
    qk_fault_point ("write");
  }

  /* 1. the overlays */
  for (size_t d = 0; d < nd; d++) {
    if (dd[d].resume || dd[d].internal)
      continue;
    if (meta_report_op (fn, opaque, "create", dd[d].n, dd[d].b) < 0)
      goto out;
    if (!dry && create_overlay (&dd[d]) < 0)
      goto out;
  }
  /* 2. the metadata */
  if (meta_plan_init (&pl, m, QK_META_SNAPSHOT, "revert") < 0)
    goto out;
  {
    bool has_rv = false;
    for (size_t d = 0; d < p->n_disks; d++)
      has_rv |= p->disks[d].revert;
    if (n_int)
      ;                 /* nothing to record: the images are the same */
    else if (!has_rv) {
      if ((pl.st[i].revert_disks = revert_disks_xml (dd, nd)) == NULL) {
        set_error (ENOMEM, "malloc");
        goto out;
      }
      pl.st[i].touched = true;
    }
    else {
      /* an earlier revert's overlay is replaced by the new one */
      for (size_t d = 0; d < nd; d++) {
        const struct qk_meta_disk *rv = meta_mdisk (p, dd[d].target, true);
        if (rv && rv->source && strcmp (rv->source, dd[d].n) != 0
            && medit_add_subst (&pl.st[i], rv->source, dd[d].n) < 0)
          goto out;
      }
    }
  }
  if (s->layout == QK_META_LAYOUT_BULK) {
    if (!s->bulk_current || strcmp (s->bulk_current, name) != 0) {
      pl.bulk_current_set = true;
      if ((pl.bulk_current = strdup (name)) == NULL) {
        set_error (ENOMEM, "strdup");
        goto out;
      }
    }
  }
  else
    for (size_t j = 0; j < s->n; j++) {
      int want = j == i;
      if (!s->m[j].pub.loaded || s->m[j].pub.active < 0
          || s->m[j].pub.active == want)
        continue;
      pl.st[j].active = want;
      pl.st[j].touched = true;
    }
  if (flags & QK_META_REVERT_DISCARD_CHILDREN)
    for (size_t j = 0; j < s->n; j++) {
      size_t k = j, steps = 0;
      if (j == i || !s->m[j].pub.loaded)
        continue;
      while (k != QK_META_NONE && k != i && steps++ <= s->n)
        k = s->m[k].pub.parent_index;
      if (k == i) {
        pl.st[j].drop = true;
        pl.st[j].touched = true;
      }
    }
  if (meta_plan_apply (&pl, dry, fn, opaque) < 0)
    goto out;
  /* 3. the definition */
  if (n_int == 0) {
    if ((text = meta_definition_read (m)) == NULL)
      goto out;
    for (size_t d = 0; d < nd; d++)
      if (!meta_same_path (m, dd[d].cur, dd[d].n)
          && meta_subst_source (&text, dd[d].cur, dd[d].n) < 0)
        goto out;
    if (meta_replace_file (m, m->config_file, text, strlen (text), "revert",
                           dry, fn, opaque) < 0)
      goto out;
  }
  for (size_t d = 0; d < nd && n_int == 0; d++)
    if (!meta_same_path (m, dd[d].cur, dd[d].n)
        && meta_report_op (fn, opaque, "kept", dd[d].cur, NULL) < 0)
      goto out;
  if (!dry && meta_reload (m) < 0)
    goto out;
  ret = 0;
 out:
  if (pl.st)
    meta_plan_free (&pl);
  free (text);
  free_rdisks (dd, nd);
  return ret;
}
