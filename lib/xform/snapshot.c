/* lib/xform/snapshot.c: delete an internal snapshot (qk_snapshot_delete)
 * or make the active state a copy of one (qk_snapshot_apply), offline, as
 * qemu-img snapshot -d and -a do (block/qcow2-snapshot.c
 * qcow2_snapshot_delete, qcow2_snapshot_goto, qcow2_write_snapshots;
 * block/qcow2-refcount.c qcow2_update_snapshot_refcount).
 *
 * Lookup as qemu-img: delete by name first, then by ID (bdrv_snapshot_find);
 * apply by ID first, then by name (find_snapshot_by_id_or_name).
 *
 * Refcounts count references per L1 table, as QEMU and qemu-img check do:
 * an L1 table reaching an L2 table counts 1 on it and 1 on every cluster
 * its entries hold (each cluster a compressed entry spans), however many
 * other L1 tables share that L2 table.
 *
 * Everything is decided before the first write: the image is checked
 * (errors refuse: repair first; leaks are freed, step 0), the snapshot
 * found, every refusal QEMU makes made (external data file, a v2 image
 * that would change size, persistent bitmaps on apply), and every new
 * refcount computed in memory (a refcount that would not fit the width
 * refuses), so a refused run leaves the file as it was.
 *
 * Crash-safety protocol, delete (QEMU's order), each step ending with a
 * flush:
 *   0. Leaked clusters freed (lib/xform/xform.c).
 *   1. The snapshot table without the entry (every entry with at least 16
 *      bytes of extra data, as qcow2_write_snapshots) written into fresh
 *      clusters, their refcounts written (lib/image/alloc.h); nothing
 *      points at them yet: a crash leaves leaks.
 *   2. One 12-byte header write (nb_snapshots and snapshots_offset, at 60:
 *      one sector): before it the old table, after it the new one.
 *   3. The refcounts of the old table, the snapshot's L1 table, its L2
 *      tables and every cluster they hold dropped by one, written. Nothing
 *      references them any more: a crash before leaves leaks only.
 *   4. QCOW_OFLAG_COPIED set in the active L1 and L2 entries whose
 *      refcount is now 1 (and cleared where it is not), changed tables
 *      written in place. A crash between 3 and 4 leaves entries with
 *      refcount 1 and no COPIED flag, which QEMU's order leaves too:
 *      harmless (QEMU copies on write where it could have written in
 *      place), but qemu-img check counts it as an OFLAG_COPIED error;
 *      qcowkit repair -y (or qemu-img check -r all) sets the flags. The
 *      other direction, COPIED on a shared cluster, never happens: flags
 *      are set only after the refcount 1 is on disk.
 * Apply:
 *   0. As above.
 *   1. COPIED cleared in the snapshot's L2 tables (they are about to be
 *      shared by the active L1: a flag there would let QEMU write in place
 *      into a cluster the snapshot keeps), written in place: clearing the
 *      flag is always safe.
 *   2. +1 on the refcounts of everything the snapshot's L1 references;
 *      a new active L1 table (the snapshot's entries without COPIED, as
 *      many entries as the larger of the old active L1, the snapshot's L1
 *      and the new virtual size need) written into fresh clusters; the
 *      refcounts written. A crash leaves leaks.
 *   3. One 24-byte header write at 24 (size, crypt_method as it was,
 *      l1_size, l1_table_offset: one sector): before it the old active
 *      state, after it the snapshot's. The new L1 goes to fresh clusters
 *      (QEMU overwrites the L1 in place, which a torn write could leave
 *      half old, half new), so the guest sees one or the other, never a
 *      mixture.
 *   4. -1 on the refcounts of the old active L1 table, its L2 tables and
 *      their clusters, written: leaks before.
 *   5. COPIED in the new active tables, as step 4 of delete.
 * A crash after the header write leaves the work done but for leaks and
 * COPIED flags: qcowkit repair -y finishes it (a rerun of delete no
 * longer finds the snapshot; a rerun of apply applies it again, which
 * reads the same). The undo journal (when asked for) holds the old bytes
 * of every range written, so qcowkit undo puts the file back whatever
 * step it reached. Written through the writer stack (lib/io/writer.c:
 * QEMU's write locks, fault injection, the journal). */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "check/check.h"
#include "format/format.h"
#include "image/alloc.h"
#include "image/image.h"
#include "io/io.h"
#include "xform/xform.h"

struct snap {
  const struct qk_snapshot_options *o;
  struct qk_snapshot_result *res;
  const char *path, *want, *ctx;
  bool dry;
  struct qk_writer w;
  struct qk_image *img;
  struct qk_alloc *al;
  size_t idx;
  uint64_t cs;
  unsigned esz;              /* L2 entry size */
};

#define refuse(s, err, ...) qk_xform_refuse ((s)->ctx, (err), __VA_ARGS__)

static int
reopen (struct snap *s)
{
  struct qk_open_options oo = { .flags = QK_OPEN_NO_BACKING
                                         | QK_OPEN_NO_DATA_FILE };

  qk_image_close (s->img);
  s->img = qk_image_open_src (qk_writer_src (&s->w), s->path, &oo, true);
  if (s->img == NULL)
    return -1;
  if (!s->img->is_qcow2)
    return refuse (s, ENOTSUP, "%s is not a qcow2 image", s->path);
  return 0;
}

static int
put (struct snap *s, const void *buf, size_t len, uint64_t off)
{
  if (s->dry)
    return 0;
  s->res->changed = true;
  return qk_writer_pwrite (&s->w, buf, len, off);
}

static int
flush (struct snap *s)
{
  return s->dry ? 0 : qk_writer_flush (&s->w);
}

static int
sync_refs (struct snap *s)
{
  if (s->dry)
    return 0;
  s->res->changed = true;
  return qk_alloc_sync (s->al);
}

static int
find (struct snap *s, bool name_first)
{
  const struct qk_image *img = s->img;

  for (int pass = 0; pass < 2; pass++) {
    bool by_name = (pass == 0) == name_first;
    for (size_t i = 0; i < img->n_snaps; i++)
      if (strcmp (by_name ? img->snaps[i].name : img->snaps[i].id,
                  s->want) == 0) {
        s->idx = i;
        return 0;
      }
  }
  return refuse (s, ENOENT, "Could not %s snapshot '%s': snapshot not found",
                 s->ctx[0] == 'd' ? "delete" : "apply", s->want);
}

/* An L1 table of n entries at off, read and checked. */
static uint64_t *
read_l1 (struct snap *s, uint64_t off, uint32_t n)
{
  uint64_t bytes = (uint64_t) n * 8;
  uint8_t *raw;
  uint64_t *l1;

  if (bytes > QK_MAX_L1_BYTES || (n && off % s->cs)) {
    refuse (s, EBADMSG, "the L1 table at 0x%" PRIx64 " (%u entries) is "
            "invalid", off, n);
    return NULL;
  }
  raw = malloc (bytes + 1);
  l1 = malloc (bytes + 8);
  if (raw == NULL || l1 == NULL) {
    free (raw);
    free (l1);
    set_error (ENOMEM, "malloc");
    return NULL;
  }
  if (n && qk_source_read_exact (qk_writer_src (&s->w), raw, bytes, off,
                                 "L1 table") < 0) {
    free (raw);
    free (l1);
    return NULL;
  }
  for (uint32_t i = 0; i < n; i++)
    l1[i] = be64_get (raw + 8 * i);
  free (raw);
  return l1;
}

/* The cluster range an allocated L2 entry holds: *k first, *n count (0:
 * none). */
static void
entry_clusters (struct snap *s, uint64_t e, uint64_t *k, uint64_t *n)
{
  uint64_t ho, nb;

  *n = 0;
  switch (qk_l2_cluster_type (e, s->esz == 16, false)) {
  case QK_CLUSTER_NORMAL:
  case QK_CLUSTER_ZERO_ALLOC:
    *k = (e & QK_L2E_OFFSET_MASK) / s->cs;
    *n = 1;
    break;
  case QK_CLUSTER_COMPRESSED:
    qk_l2_compressed (e, s->img->hdr.cluster_bits, &ho, &nb);
    *k = ho / s->cs;
    *n = nb ? (ho + nb - 1) / s->cs - *k + 1 : 1;
    break;
  default:
    break;
  }
}

/* Add delta to the refcount of everything the L1 table l1[0..n) reaches
 * (its L2 tables and their clusters; not the L1 table itself). A drop to
 * 0 counts in clusters_freed. With clear_copied, COPIED is cleared in
 * those L2 tables, which are written back when it changes them. */
static int
update_refs (struct snap *s, const uint64_t *l1, uint32_t n, int delta,
             bool clear_copied)
{
  uint8_t *l2 = malloc (s->cs);
  int ret = -1;

  if (l2 == NULL) {
    set_error (ENOMEM, "malloc");
    return -1;
  }
  for (uint32_t i = 0; i < n; i++) {
    uint64_t off = l1[i] & QK_L1E_OFFSET_MASK, rc;
    bool changed = false;
    if (off == 0)
      continue;
    if (qk_source_read_exact (qk_writer_src (&s->w), l2, s->cs, off,
                              "L2 table") < 0)
      goto out;
    for (uint64_t j = 0; j < s->cs / s->esz; j++) {
      uint64_t e = be64_get (l2 + j * s->esz), k, m;
      entry_clusters (s, e, &k, &m);
      for (uint64_t c = k; c < k + m; c++) {
        if (qk_alloc_ref (s->al, c, delta) < 0)
          goto out;
        if (delta < 0 && qk_alloc_get (s->al, c, &rc) == 0 && rc == 0)
          s->res->clusters_freed++;
      }
      if (clear_copied && (e & QK_OFLAG_COPIED)) {
        be64_put (l2 + j * s->esz, e & ~QK_OFLAG_COPIED);
        changed = true;
      }
    }
    if (changed && put (s, l2, s->cs, off) < 0)
      goto out;
    if (qk_alloc_ref (s->al, off / s->cs, delta) < 0)
      goto out;
    if (delta < 0 && qk_alloc_get (s->al, off / s->cs, &rc) == 0 && rc == 0)
      s->res->clusters_freed++;
  }
  ret = 0;
out:
  free (l2);
  return ret;
}

/* Drop one reference of n clusters from byte offset off (nothing on disk
 * references them any more). */
static int
drop (struct snap *s, uint64_t off, uint64_t n)
{
  uint64_t rc;

  for (uint64_t k = off / s->cs; k < off / s->cs + n; k++) {
    if (qk_alloc_ref (s->al, k, -1) < 0)
      return -1;
    if (qk_alloc_get (s->al, k, &rc) == 0 && rc == 0)
      s->res->clusters_freed++;
  }
  return 0;
}

/* COPIED exactly where the refcount is 1 in the active L1 table l1[0..n)
 * at l1_off and its L2 tables (as qcow2_update_snapshot_refcount with
 * addend 0); changed tables written in place, flush. */
static int
update_copied (struct snap *s, uint64_t *l1, uint32_t n, uint64_t l1_off)
{
  uint8_t *l2 = malloc (s->cs);
  bool l1_changed = false, any = false;
  int ret = -1;

  if (l2 == NULL) {
    set_error (ENOMEM, "malloc");
    return -1;
  }
  for (uint32_t i = 0; i < n; i++) {
    uint64_t off = l1[i] & QK_L1E_OFFSET_MASK, rc, ne;
    bool changed = false;
    if (off == 0)
      continue;
    if (qk_source_read_exact (qk_writer_src (&s->w), l2, s->cs, off,
                              "L2 table") < 0)
      goto out;
    for (uint64_t j = 0; j < s->cs / s->esz; j++) {
      uint64_t e = be64_get (l2 + j * s->esz), k, m;
      ne = e & ~QK_OFLAG_COPIED;
      entry_clusters (s, e, &k, &m);
      if (m == 1 && !(e & QK_OFLAG_COMPRESSED)) {
        if (qk_alloc_get (s->al, k, &rc) < 0)
          goto out;
        if (rc == 1)
          ne |= QK_OFLAG_COPIED;
      }
      if (ne != e) {
        be64_put (l2 + j * s->esz, ne);
        changed = true;
      }
    }
    if (changed && put (s, l2, s->cs, off) < 0)
      goto out;
    any |= changed;
    if (qk_alloc_get (s->al, off / s->cs, &rc) < 0)
      goto out;
    ne = (l1[i] & ~QK_OFLAG_COPIED) | (rc == 1 ? QK_OFLAG_COPIED : 0);
    if (ne != l1[i]) {
      l1[i] = ne;
      l1_changed = true;
    }
  }
  if (l1_changed) {
    uint8_t *raw = malloc ((size_t) n * 8);
    if (raw == NULL) {
      set_error (ENOMEM, "malloc");
      goto out;
    }
    for (uint32_t i = 0; i < n; i++)
      be64_put (raw + 8 * i, l1[i]);
    ret = put (s, raw, (size_t) n * 8, l1_off);
    free (raw);
    if (ret < 0)
      goto out;
    ret = -1;
  }
  if ((any || l1_changed) && flush (s) < 0)
    goto out;
  ret = 0;
out:
  free (l2);
  return ret;
}

/* The start both share: open, check, find. */
static int
start (struct snap *s, bool name_first)
{
  struct qk_check_result cr;
  struct qk_image *img;

  if (reopen (s) < 0)
    return -1;
  img = s->img;
  if (img->hdr.incompatible_features & QK_INCOMPAT_DATA_FILE)
    return refuse (s, ENOTSUP, "internal snapshots of an image with an "
                   "external data file are not supported (nor by QEMU)");
  if (!img->snaps_ok || img->snaps_qemu < img->n_snaps)
    return refuse (s, EBADMSG, "the snapshot table of %s cannot be read in "
                   "full: repair it first", s->path);
  if (find (s, name_first) < 0)
    return -1;
  if (qk_xform_check (img, &s->w, s->ctx, s->path, s->dry, NULL, &cr,
                      &s->res->leaks_freed) < 0)
    return -1;
  if (s->res->leaks_freed) {
    s->res->changed = true;
    if (reopen (s) < 0)
      return -1;
  }
  img = s->img;
  s->cs = img->hdr.cluster_size;
  s->esz = img->hdr.l2_entry_size;
  if (!s->dry && qk_writer_begin (&s->w) < 0)
    return -1;
  s->al = qk_alloc_new (qk_writer_src (&s->w), &img->hdr);
  if (s->al == NULL)
    return -1;
  if ((s->res->id = strdup (img->snaps[s->idx].id)) == NULL
      || (s->res->name = strdup (img->snaps[s->idx].name)) == NULL) {
    set_error (ENOMEM, "strdup");
    return -1;
  }
  return 0;
}

/* ---- delete ---- */

/* The snapshot table without entry idx, as qcow2_write_snapshots writes
 * it; *len its size. */
static uint8_t *
table_without (struct snap *s, size_t *len)
{
  struct qk_image *img = s->img;
  size_t size = 0, pos = 0;
  uint8_t *tab;

  for (size_t i = 0; i < img->n_snaps; i++) {
    const struct qk_snapshot_raw *r = &img->snaps[i];
    uint32_t ex = r->s.extra_data_size > 16 ? r->s.extra_data_size : 16;
    size_t e = qk_snapshot_entry_size (ex, strlen (r->id), strlen (r->name));
    if (i == s->idx)
      continue;
    if (e == 0) {
      refuse (s, EFBIG, "snapshot entry %zu is too big", i);
      return NULL;
    }
    size += e;
  }
  if (size > QK_QEMU_SNAPSHOT_TABLE) {
    refuse (s, EFBIG, "the snapshot table would pass QEMU's 64 MiB limit");
    return NULL;
  }
  tab = calloc (1, size + 1);
  if (tab == NULL) {
    set_error (ENOMEM, "calloc");
    return NULL;
  }
  for (size_t i = 0; i < img->n_snaps; i++) {
    const struct qk_snapshot_raw *r = &img->snaps[i];
    struct qk_snapshot_raw nr = *r;
    uint32_t ex = r->s.extra_data_size > 16 ? r->s.extra_data_size : 16;
    uint8_t *extra;
    int k;
    if (i == s->idx)
      continue;
    extra = calloc (1, ex);
    if (extra == NULL) {
      set_error (ENOMEM, "calloc");
      free (tab);
      return NULL;
    }
    memcpy (extra, r->extra, r->s.extra_data_size);
    be64_put (extra, r->s.vm_state_size);
    be64_put (extra + 8, r->s.has_disk_size ? r->s.disk_size : img->hdr.size);
    nr.s.extra_data_size = ex;
    nr.s.vm_state_size32 = r->s.vm_state_size <= UINT32_MAX
                           ? (uint32_t) r->s.vm_state_size : 0;
    nr.extra = extra;
    k = qk_snapshot_format (&nr, tab + pos, size - pos);
    free (extra);
    if (k < 0) {
      free (tab);
      return NULL;
    }
    pos += (size_t) k;
  }
  *len = size;
  return tab;
}

static int
do_delete (struct snap *s)
{
  struct qk_image *img;
  const struct qk_snapshot *sn;
  uint64_t *sl1 = NULL, *al1 = NULL, off = 0, old_off, old_len = 0;
  uint8_t *tab = NULL, hb[12];
  size_t len = 0;
  int ret = -1;

  if (start (s, true) < 0)
    return -1;
  img = s->img;
  sn = &img->snaps[s->idx].s;
  sl1 = read_l1 (s, sn->l1_table_offset, sn->l1_size);
  al1 = read_l1 (s, img->hdr.l1_table_offset, img->hdr.l1_size);
  if (sl1 == NULL || al1 == NULL || (tab = table_without (s, &len)) == NULL)
    goto out;
  old_off = img->hdr.snapshots_offset;
  for (size_t i = 0; i < img->n_snaps; i++)
    old_len = img->snaps[i].s.entry_offset + img->snaps[i].s.entry_size
              - old_off;
  /* 1: the new table */
  if (len && (qk_alloc_clusters (s->al, (len + s->cs - 1) / s->cs, &off) < 0
              || put (s, tab, len, off) < 0))
    goto out;
  if (sync_refs (s) < 0)
    goto out;
  /* 2: the switch */
  be32_put (hb, (uint32_t) (img->n_snaps - 1));
  be64_put (hb + 4, off);
  if (put (s, hb, sizeof hb, 60) < 0 || flush (s) < 0)
    goto out;
  /* 3: what the snapshot and the old table held */
  if (update_refs (s, sl1, sn->l1_size, -1, false) < 0
      || (sn->l1_size && drop (s, sn->l1_table_offset,
                               ((uint64_t) sn->l1_size * 8 + s->cs - 1)
                               / s->cs) < 0)
      || (old_len && drop (s, old_off, (old_len + s->cs - 1) / s->cs) < 0)
      || sync_refs (s) < 0)
    goto out;
  /* 4: COPIED */
  ret = update_copied (s, al1, img->hdr.l1_size, img->hdr.l1_table_offset);
out:
  free (sl1);
  free (al1);
  free (tab);
  return ret;
}

/* ---- apply ---- */

static int
do_apply (struct snap *s)
{
  struct qk_image *img;
  const struct qk_snapshot *sn;
  uint64_t *sl1 = NULL, *al1 = NULL, *nl1 = NULL, size, per, need, n, off;
  uint64_t old_l1_off;
  uint32_t old_l1n;
  uint8_t *raw = NULL, hb[24];
  int ret = -1;

  if (start (s, false) < 0)
    return -1;
  img = s->img;
  sn = &img->snaps[s->idx].s;
  size = sn->has_disk_size ? sn->disk_size : img->hdr.size;
  s->res->old_size = img->hdr.size;
  s->res->new_size = size;
  if (img->n_bitmaps)
    return refuse (s, ENOTSUP, "Could not apply snapshot '%s': Device has "
                   "active dirty bitmaps (QEMU refuses it too: remove the "
                   "bitmaps first)", s->want);
  if (size != img->hdr.size && img->hdr.version < 3)
    return refuse (s, ENOTSUP, "Could not apply snapshot '%s': Can't resize "
                   "a v2 image which has snapshots", s->want);
  per = s->cs / s->esz;
  need = (size + s->cs * per - 1) / (s->cs * per);
  n = img->hdr.l1_size;
  if (sn->l1_size > n)
    n = sn->l1_size;
  if (need > n)
    n = need;
  if (n * 8 > QK_MAX_L1_BYTES || n > UINT32_MAX)
    return refuse (s, EFBIG, "the active L1 table would need %" PRIu64
                   " entries", n);
  old_l1_off = img->hdr.l1_table_offset;
  old_l1n = img->hdr.l1_size;
  sl1 = read_l1 (s, sn->l1_table_offset, sn->l1_size);
  al1 = read_l1 (s, old_l1_off, old_l1n);
  nl1 = calloc (n ? n : 1, 8);
  raw = calloc (1, (n * 8 + s->cs - 1) / s->cs * s->cs + s->cs);
  if (sl1 == NULL || al1 == NULL)
    goto out;
  if (nl1 == NULL || raw == NULL) {
    set_error (ENOMEM, "calloc");
    goto out;
  }
  for (uint32_t i = 0; i < sn->l1_size; i++)
    nl1[i] = sl1[i] & ~QK_OFLAG_COPIED;
  /* 1, 2: flags cleared, +1, the new L1 */
  if (update_refs (s, sl1, sn->l1_size, 1, true) < 0 || flush (s) < 0)
    goto out;
  for (uint64_t i = 0; i < n; i++)
    be64_put (raw + 8 * i, nl1[i]);
  {
    uint64_t cl = n ? (n * 8 + s->cs - 1) / s->cs : 1;
    if (qk_alloc_clusters (s->al, cl, &off) < 0
        || put (s, raw, cl * s->cs, off) < 0 || sync_refs (s) < 0)
      goto out;
  }
  /* 3: the switch */
  be64_put (hb, size);
  be32_put (hb + 8, img->hdr.crypt_method);
  be32_put (hb + 12, (uint32_t) n);
  be64_put (hb + 16, off);
  if (put (s, hb, sizeof hb, 24) < 0 || flush (s) < 0)
    goto out;
  /* 4: what the old active state held */
  if (update_refs (s, al1, old_l1n, -1, false) < 0
      || (old_l1n && drop (s, old_l1_off,
                           ((uint64_t) old_l1n * 8 + s->cs - 1) / s->cs) < 0)
      || sync_refs (s) < 0)
    goto out;
  /* 5: COPIED */
  ret = update_copied (s, nl1, (uint32_t) n, off);
out:
  free (sl1);
  free (al1);
  free (nl1);
  free (raw);
  return ret;
}

static int
run (const char *path, const char *snapshot,
     const struct qk_snapshot_options *o, struct qk_snapshot_result *res,
     bool del)
{
  struct qk_snapshot_options none;
  struct snap s;
  struct qk_saved_error sv;
  const char *fn = del ? "qk_snapshot_delete" : "qk_snapshot_apply";
  int ret;

  if (res)
    memset (res, 0, sizeof *res);
  if (path == NULL || snapshot == NULL || res == NULL) {
    set_error (EINVAL, "%s: NULL argument", fn);
    return -1;
  }
  if (o == NULL) {
    memset (&none, 0, sizeof none);
    o = &none;
  }
  memset (&s, 0, sizeof s);
  s.w.undo_dirfd = -1;
  s.o = o;
  s.res = res;
  s.path = path;
  s.want = snapshot;
  s.ctx = del ? "delete" : "apply";
  s.dry = (o->flags & QK_SNAPSHOT_DRY_RUN) != 0;
  if (qk_xform_open (&s.w, path, o->undo_path, s.dry) < 0) {
    qk_internal_prefix_error ("%s", fn);
    qk_writer_close (&s.w);
    return -1;
  }
  ret = del ? do_delete (&s) : do_apply (&s);
  if (ret < 0)
    qk_internal_save_error (&sv);
  qk_alloc_free (s.al);
  qk_image_close (s.img);
  qk_writer_close (&s.w);
  if (ret < 0)
    qk_internal_restore_error (&sv);
  return ret;
}

QK_EXPORT int
qk_snapshot_delete (const char *path, const char *snapshot,
                    const struct qk_snapshot_options *o,
                    struct qk_snapshot_result *res)
{
  return run (path, snapshot, o, res, true);
}

QK_EXPORT int
qk_snapshot_apply (const char *path, const char *snapshot,
                   const struct qk_snapshot_options *o,
                   struct qk_snapshot_result *res)
{
  return run (path, snapshot, o, res, false);
}

QK_EXPORT void
qk_snapshot_result_clear (struct qk_snapshot_result *res)
{
  if (res == NULL)
    return;
  free (res->id);
  free (res->name);
  res->id = res->name = NULL;
}
