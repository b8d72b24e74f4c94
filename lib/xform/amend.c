/* lib/xform/amend.c: change an image's version and refcount width in
 * place (qk_amend), as qemu-img amend -o compat=,refcount_bits= does
 * (block/qcow2.c qcow2_amend_options, qcow2_upgrade, qcow2_downgrade;
 * block/qcow2-refcount.c qcow2_change_refcount_order).
 *
 * Everything is decided before the first write: the image is checked
 * (errors refuse: repair first), the options validated, and every refusal
 * QEMU makes on the way (a width that does not fit a refcount, what
 * version 2 cannot hold) is made up front, so a refused amend leaves the
 * file byte for byte as it was. Writes go through the writer stack
 * (lib/io/writer.c: locked file, fault injection, undo journal) and the
 * cluster allocator (lib/image/alloc.h: refcounts before references).
 *
 * Crash-safety protocol. The steps, in QEMU's order, each ending with a
 * flush:
 *   0. Leaked clusters (an interrupted earlier run leaves some) freed:
 *      their refcount blocks written with the counted values; flush. A
 *      crash leaves each refcount as found or right.
 *   1. Upgrade 0.10 -> 1.1. When a snapshot has less than 16 bytes of
 *      extra data, the snapshot table is written again with 24 bytes (or
 *      more) per entry (vm_state_size_large, disk_size: the virtual size
 *      when absent, icount: -1 when absent, as qcow2_write_snapshots):
 *      the new table into clusters the allocator gives, their refcounts,
 *      flush; then one write of the header cluster from offset 0 that
 *      makes it version 3, points at the new table and sets the dirty
 *      bit (the old table is not freed yet); flush; the old table freed;
 *      flush; the dirty bit cleared (8 bytes at 72); flush. A crash
 *      before the header write leaves version 2 with the old table (and
 *      leaks: a rerun starts over); after it, version 3, marked dirty
 *      until the old table is freed: a rerun (or QEMU's next read-write
 *      open) finds the dirty bit, frees the leak and clears it. Without
 *      such snapshots, the header cluster alone is written again as
 *      version 3 (header_length 112, no feature bits, QEMU's feature name
 *      table when clusters are above 4 KiB): one write from offset 0;
 *      flush; no check is needed for that, and none is made (qemu-img
 *      makes none either).
 *   2. Refcount width: a new refcount table and blocks at the new width
 *      written past the end of the file (and past what the check
 *      counted, and the old structure) from the stored refcounts (those
 *      past that end, leaks no check sees, left out), one new block
 *      at a time from the old blocks that cover its range
 *      (lib/repair/refstruct.c qk_refstruct_convert; the check made once,
 *      before step 0, found none of them below its count, and steps 0
 *      and 1 change them through the allocator only), nothing points at
 *      them; flush; then one 52-byte header write (offset 48..99, from
 *      the header formatter: the table offset and size, and
 *      refcount_order, in the first sector); flush. A crash before that
 *      write leaves the old structure and bytes past the end that
 *      nothing references; after it, the new one. The old table and
 *      blocks are free (refcount 0) in the new one.
 *   3. Downgrade 1.1 -> 0.10: zero clusters expanded, active L2 tables
 *      first, then each snapshot's, each L2 table once: a plain zero
 *      cluster without a backing file becomes unallocated (it reads
 *      zeros either way); with one, a new cluster (refcount = the L2
 *      table's, as QEMU) written with zeros; a preallocated zero cluster
 *      keeps its cluster, written with zeros. By batches of L2 tables:
 *      the zeros, the refcounts (qk_alloc_sync), flush, then the changed
 *      L2 entries, flush. Every entry is either form at every point, both
 *      readable by a version 3 reader, so a crash leaves a valid version
 *      3 image (and leaks); a rerun expands what is left. Then the header
 *      cluster written as version 2 (72 bytes, no feature bits or feature
 *      table, extensions kept), one write from offset 0; flush. Snapshot
 *      extra data is kept (QEMU keeps it too: version 2 readers skip it
 *      by its size, and dropping it would lose disk_size and icount).
 * A rerun of the same command after a crash anywhere finds the image old,
 * new or in between as above, frees the leaks and settles a dirty bit
 * (step 0) and does what is left. An image left dirty by QEMU (lazy
 * refcounts) is settled the same way when its refcounts are only too
 * high (leaks); too low, it is refused (repair it first). The undo journal (when asked for) holds the old bytes of every
 * range written, so qcowkit undo puts the file back whatever step it
 * reached. */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "check/check.h"
#include "format/format.h"
#include "image/alloc.h"
#include "image/image.h"
#include "image/spec.h"
#include "io/io.h"
#include "repair/refstruct.h"
#include "xform/xform.h"

#define L2_BATCH 64

struct amend {
  const struct qk_amend_options *o;
  struct qk_amend_result *res;
  const char *path;
  struct qk_writer w;
  struct qk_image *img;
  unsigned new_version, new_order;
  uint64_t fresh_min;         /* clusters from here on are fresh */
};

#define refuse(...) qk_xform_refuse ("amend", ENOTSUP, __VA_ARGS__)

static int
reopen (struct amend *a)
{
  /* the backing chain opens, as qemu-img amend opens it: whether the
   * image has a backing file decides how zero clusters are expanded */
  struct qk_open_options oo = { .flags = 0 };

  qk_image_close (a->img);
  a->img = qk_image_open_src (qk_writer_src (&a->w), a->path, &oo, true);
  if (a->img == NULL)
    return -1;
  if (!a->img->is_qcow2)
    return refuse ("%s is not a qcow2 image", a->path);
  return 0;
}

static int
put (struct amend *a, const void *buf, size_t len, uint64_t off)
{
  if (a->o->flags & QK_AMEND_DRY_RUN) {
    set_error (EPERM, "a dry run does not write");
    return -1;
  }
  a->res->writes++;
  a->res->changed = true;
  return qk_writer_pwrite (&a->w, buf, len, off);
}

static int
put_cb (void *opaque, const void *buf, size_t len, uint64_t off)
{
  return put (opaque, buf, len, off);
}

static int
flush (struct amend *a)
{
  return qk_writer_flush (&a->w);
}

/* The check the amend stands on; errors refuse. Leaks are freed later
 * (step 0), once every refusal is made. */
static int
check (struct amend *a, struct qk_refmap *map, struct qk_check_result *cr)
{
  uint64_t none;

  a->res->checked = true;
  return qk_xform_check (a->img, &a->w, "amend", a->path, true, map, cr,
                         &none);
}

/* ---- step 0: leaks ---- */

static int
free_leaks (struct amend *a, const struct qk_refmap *map, uint64_t leaks)
{
  if (leaks == 0 || (a->o->flags & QK_AMEND_DRY_RUN)) {
    a->res->leaks_freed = leaks;
    return 0;
  }
  if (qk_free_leaks (qk_writer_src (&a->w), a->img, map,
                     &a->res->leaks_freed) < 0)
    return -1;
  if (a->res->leaks_freed) {
    a->res->writes++;
    a->res->changed = true;
  }
  return 0;
}

/* ---- step 1: upgrade ---- */

static int write_header (struct amend *a, unsigned version,
                         uint64_t incompat, uint64_t sn_off);
static int clear_dirty (struct amend *a);

/* Returns 1 when it wrote the table and the version 3 header, 0 when no
 * snapshot needs new extra data (or a dry run), -1 on failure. */
static int
upgrade_snapshots (struct amend *a)
{
  struct qk_image *img = a->img;
  uint64_t cs = img->hdr.cluster_size, size = 0, off, old_off, old_len;
  size_t n = img->n_snaps, pos = 0;
  uint8_t *tab = NULL;
  struct qk_alloc *al = NULL;
  bool need = false;
  int ret = -1;

  for (size_t i = 0; i < n; i++)
    if (img->snaps[i].s.extra_data_size < 16)
      need = true;
  if (!need)
    return 0;
  if (!img->snaps_ok || img->snaps_qemu < n)
    return refuse ("the snapshot table cannot be read in full");
  for (size_t i = 0; i < n; i++) {
    const struct qk_snapshot_raw *r = &img->snaps[i];
    uint32_t ex = r->s.extra_data_size > 24 ? r->s.extra_data_size : 24;
    size_t e = qk_snapshot_entry_size (ex, strlen (r->id), strlen (r->name));
    if (e == 0)
      return refuse ("snapshot entry %zu is too big", i);
    size += e;
  }
  if (size > QK_QEMU_SNAPSHOT_TABLE)
    return refuse ("the snapshot table would pass QEMU's 64 MiB limit");
  tab = calloc (1, size);
  if (tab == NULL) {
    set_error (ENOMEM, "calloc");
    return -1;
  }
  for (size_t i = 0; i < n; i++) {
    const struct qk_snapshot_raw *r = &img->snaps[i];
    struct qk_snapshot_raw nr = *r;
    uint32_t ex = r->s.extra_data_size > 24 ? r->s.extra_data_size : 24;
    uint8_t *extra = calloc (1, ex);
    int k;
    if (extra == NULL) {
      set_error (ENOMEM, "calloc");
      goto out;
    }
    nr.s.extra_data_size = ex;
    if (!r->s.has_disk_size)
      nr.s.disk_size = img->hdr.size;
    if (!r->s.has_icount)
      nr.s.icount = UINT64_MAX;
    nr.s.vm_state_size32 = r->s.vm_state_size <= UINT32_MAX
                           ? (uint32_t) r->s.vm_state_size : 0;
    qk_snapshot_extra_format (&nr.s, extra, ex);
    if (r->s.extra_data_size > 24)
      memcpy (extra + 24, r->extra + 24, r->s.extra_data_size - 24);
    nr.extra = extra;
    k = qk_snapshot_format (&nr, tab + pos, size - pos);
    free (extra);
    if (k < 0)
      goto out;
    pos += (size_t) k;
    if (r->s.extra_data_size < 16)
      a->res->snapshots_rewritten++;
  }
  if (a->o->flags & QK_AMEND_DRY_RUN) {
    ret = 0;
    goto out;
  }
  ret = -1;
  old_off = img->hdr.snapshots_offset;
  old_len = 0;
  for (size_t i = 0; i < n; i++)
    old_len = img->snaps[i].s.entry_offset + img->snaps[i].s.entry_size
              - old_off;
  al = qk_alloc_new (qk_writer_src (&a->w), &img->hdr);
  if (al == NULL || qk_alloc_clusters (al, (size + cs - 1) / cs, &off) < 0
      || put (a, tab, size, off) < 0 || qk_alloc_sync (al) < 0)
    goto out;
  /* one write: version 3, the new table, and the dirty bit, which says
   * the refcounts are not settled (the old table is not freed yet): a
   * crash before the release leaves a version 3 image whose only
   * problem is that leak, and the dirty bit makes a rerun (or QEMU's
   * next read-write open) settle it */
  if (write_header (a, 3, QK_INCOMPAT_DIRTY, off) < 0
      || qk_alloc_free_later (al, old_off, (old_len + cs - 1) / cs) < 0
      || qk_alloc_release (al) < 0)
    goto out;
  ret = clear_dirty (a) < 0 ? -1 : 1;
out:
  qk_alloc_free (al);
  free (tab);
  return ret;
}

/* The header cluster written again as `version`, in one write from
 * offset 0; incompat: feature bits to set (the dirty bit while an
 * upgrade's old snapshot table is not yet freed); sn_off, when not 0,
 * switches to a new snapshot table in the same write. */
static int
write_header (struct amend *a, unsigned version, uint64_t incompat,
              uint64_t sn_off)
{
  struct qk_image_spec sp;
  uint8_t *buf;
  size_t len;
  int ret;

  if (qk_image_spec_init (a->img, &sp) < 0)
    return -1;
  sp.s.h.version = version;
  sp.s.h.incompatible_features = incompat;
  sp.s.h.compatible_features = 0;
  sp.s.h.autoclear_features = 0;
  sp.s.h.compression_type = 0;
  sp.s.unknown_header = NULL;
  sp.s.h.header_length = 112;
  sp.s.h.refcount_order = 4;
  if (sn_off)
    sp.s.h.snapshots_offset = sn_off;
  sp.s.fnames = NULL;
  sp.s.n_fnames = 0;
  sp.s.bitmaps = NULL;
  if (version == 3 && a->img->hdr.cluster_size > 4096) {
    sp.s.fnames = qk_qemu_feature_table;
    sp.s.n_fnames = QK_QEMU_FEATURES;
  }
  buf = qk_image_spec_format (a->img, &sp.s, &len);
  qk_image_spec_free (&sp);
  if (buf == NULL)
    return -1;
  ret = put (a, buf, len, 0) < 0 || flush (a) < 0 ? -1 : 0;
  free (buf);
  return ret < 0 ? -1 : reopen (a);
}

/* The dirty bit cleared: 8 bytes at 72, one sector; flush. */
static int
clear_dirty (struct amend *a)
{
  uint8_t b[8];

  be64_put (b, a->img->hdr.incompatible_features & ~QK_INCOMPAT_DIRTY);
  if (put (a, b, sizeof b, 72) < 0 || flush (a) < 0)
    return -1;
  return reopen (a);
}

/* ---- step 2: refcount width ---- */

/* The clusters a refcount can belong to: the file's, and those the check
 * counted past its end (entries that point there). A stored refcount
 * beyond is a leak no check looks at (qemu-img check neither): the new
 * structure leaves it out, and fresh clusters go from there on. */
static uint64_t
known_end (struct amend *a)
{
  uint64_t cs = a->img->hdr.cluster_size;
  uint64_t n = (qk_writer_src (&a->w)->size + cs - 1) / cs;

  return n > a->fresh_min ? n : a->fresh_min;
}

/* The first stored refcount that a refcount order of `order` cannot
 * hold, as QEMU names it (qcow2_change_refcount_order looks at the stored
 * values); 0 when all fit. */
static int
refuse_width (struct amend *a, const struct qk_refscan *sc)
{
  if (sc->over_cluster == UINT64_MAX)
    return 0;
  return refuse ("Cannot decrease refcount entry width to %u bits: "
                 "Cluster at offset %#" PRIx64 " has a refcount of %" PRIu64,
                 1U << a->new_order,
                 sc->over_cluster << a->img->hdr.cluster_bits,
                 sc->over_value);
}

/* Step 2 gives the clusters of the old refcount table and blocks a
 * refcount of 0 in the new structure: none of them may hold anything
 * else too (the check's claim map marks the clusters two structures
 * claim). Found by fuzz-amend: a refcount table that an encryption
 * header pointer also named was freed under it, a corruption after an
 * amend of an image with none. */
static int
refstruct_shared (struct amend *a, const struct qk_refmap *map)
{
  const struct qk_header *h = &a->img->hdr;
  uint64_t cs = h->cluster_size, first = h->refcount_table_offset / cs;
  uint64_t found = UINT64_MAX, *rt;
  size_t rt_n;

  if (a->new_order == h->refcount_order)
    return 0;
  for (uint64_t k = first; k < first + h->refcount_table_clusters
                           && found == UINT64_MAX; k++)
    if (qk_refmap_conflicted (map, k))
      found = k;
  if (found == UINT64_MAX) {
    if (qk_image_read_refcount_table (a->img, &rt, &rt_n) < 0)
      return -1;
    for (size_t t = 0; t < rt_n && found == UINT64_MAX; t++) {
      uint64_t b = rt[t] & QK_REFT_OFFSET_MASK;
      if (b && qk_refmap_conflicted (map, b / cs))
        found = b / cs;
    }
    free (rt);
  }
  if (found == UINT64_MAX)
    return 0;
  return qk_xform_refuse ("amend", EUCLEAN, "%s: the refcount structure "
                          "shares the cluster at 0x%" PRIx64 " with other "
                          "metadata, and a new refcount width frees it: run "
                          "qcowkit check, and repair, first", a->path,
                          found * cs);
}

/* The new structure from the stored refcounts, one refcount block at a
 * time (lib/repair/refstruct.c): every refcount as stored (the check
 * found none too low; the leaks it found are freed by now, but those of
 * active clusters, whose COPIED flags depend on them), the old structure
 * free, the new one counted. Then the header switched to it: the 52
 * bytes at 48..99 (the table offset and size, refcount_order; the
 * fields between as they are) from the header formatter. */
static int
change_width (struct amend *a)
{
  const struct qk_header *h = &a->img->hdr;
  struct qk_source *src = qk_writer_src (&a->w);
  struct qk_refscan sc;
  struct qk_refstruct rs;
  struct qk_header nh;
  uint64_t *rt = NULL, start;
  size_t rt_n = 0;
  uint8_t *hb = NULL;
  int ret = -1;

  if (h->version < 3) {
    set_error (EINVAL, "a refcount width change of a version %u header",
               h->version);
    return -1;
  }
  if (qk_image_read_refcount_table (a->img, &rt, &rt_n) < 0)
    return -1;
  start = known_end (a);
  if (qk_refstruct_scan (src, h, rt, rt_n, start, a->new_order, &sc) < 0) {
    free (rt);
    return -1;
  }
  if (refuse_width (a, &sc) < 0)
    goto out;
  if (qk_refstruct_convert (src, h, rt, rt_n, start, a->new_order, &sc,
                            start, put_cb, a, &rs) < 0 || flush (a) < 0)
    goto out;
  nh = *h;
  nh.refcount_table_offset = rs.table_offset;
  nh.refcount_table_clusters = rs.table_clusters;
  nh.refcount_order = a->new_order;
  hb = malloc (nh.header_length);
  if (hb == NULL) {
    set_error (ENOMEM, "malloc");
    goto out;
  }
  if (qk_header_format (&nh, hb, nh.header_length) < 0
      || put (a, hb + 48, 52, 48) < 0 || flush (a) < 0)
    goto out;
  ret = reopen (a);
out:
  free (hb);
  free (rt);
  qk_refscan_free (&sc);
  return ret;
}

/* ---- step 3: downgrade ---- */

struct seen {
  uint64_t *v;
  size_t n, cap;
};

static int
cmp_u64 (const void *x, const void *y)
{
  uint64_t p = *(const uint64_t *) x, q = *(const uint64_t *) y;
  return p < q ? -1 : p > q;
}

/* The L2 tables of the active L1, then of each snapshot's, each once. */
static int
l2_tables (struct amend *a, struct seen *t)
{
  struct qk_image *img = a->img;
  uint64_t *l1 = NULL;
  size_t k = 0;

  memset (t, 0, sizeof *t);
  for (size_t s = 0; s <= img->n_snaps; s++) {
    const uint64_t *tab;
    uint32_t n;
    if (s == 0) {
      tab = img->l1;
      n = img->l1_count;
    }
    else {
      const struct qk_snapshot *sn = &img->snaps[s - 1].s;
      uint8_t *raw;
      n = sn->l1_size;
      if ((uint64_t) n * 8 > QK_MAX_L1_BYTES) {
        free (l1);
        return refuse ("snapshot %s: L1 table too big", sn->name);
      }
      raw = malloc ((size_t) n * 8 + 1);
      l1 = realloc (l1, ((size_t) n + 1) * 8);
      if (raw == NULL || l1 == NULL) {
        free (raw);
        free (l1);
        set_error (ENOMEM, "malloc");
        return -1;
      }
      if (n && qk_source_read_exact (qk_writer_src (&a->w), raw,
                                     (size_t) n * 8, sn->l1_table_offset,
                                     "snapshot L1 table") < 0) {
        free (raw);
        free (l1);
        return -1;
      }
      for (uint32_t i = 0; i < n; i++)
        l1[i] = be64_get (raw + 8 * i);
      free (raw);
      tab = l1;
    }
    for (uint32_t i = 0; i < n; i++) {
      uint64_t off = tab[i] & QK_L1E_OFFSET_MASK;
      uint64_t *nv;
      if (off == 0)
        continue;
      nv = qk_grow (t->v, &t->cap, t->n + 1, sizeof *nv);
      if (nv == NULL) {
        free (l1);
        return -1;
      }
      t->v = nv;
      t->v[t->n++] = off;
    }
  }
  free (l1);
  /* keep the first occurrence of each, in order (active first) */
  if (t->n == 0)
    return 0;
  {
    uint64_t *sorted = malloc ((t->n + 1) * sizeof *sorted);
    size_t m = 0;
    if (sorted == NULL) {
      set_error (ENOMEM, "malloc");
      return -1;
    }
    memcpy (sorted, t->v, t->n * sizeof *sorted);
    qsort (sorted, t->n, sizeof *sorted, cmp_u64);
    uint8_t *used = calloc (t->n + 1, 1);
    if (used == NULL) {
      free (sorted);
      set_error (ENOMEM, "calloc");
      return -1;
    }
    for (k = 0; k < t->n; k++) {
      uint64_t *p = bsearch (&t->v[k], sorted, t->n, sizeof *sorted,
                             cmp_u64);
      size_t j = (size_t) (p - sorted);
      while (j > 0 && sorted[j - 1] == t->v[k])
        j--;
      if (!used[j]) {
        used[j] = 1;
        t->v[m++] = t->v[k];
      }
    }
    t->n = m;
    free (used);
    free (sorted);
  }
  return 0;
}

/* Whether any L2 entry is compressed (zstd images cannot go to v2). */
static int
any_compressed (struct amend *a, const struct seen *t, bool *yes)
{
  uint64_t cs = a->img->hdr.cluster_size;
  uint8_t *buf = malloc (cs);

  *yes = false;
  if (buf == NULL) {
    set_error (ENOMEM, "malloc");
    return -1;
  }
  for (size_t i = 0; i < t->n && !*yes; i++) {
    if (qk_source_read_exact (qk_writer_src (&a->w), buf, cs, t->v[i],
                              "L2 table") < 0) {
      free (buf);
      return -1;
    }
    for (uint64_t e = 0; e < cs / 8; e++)
      if (be64_get (buf + 8 * e) & QK_OFLAG_COMPRESSED) {
        *yes = true;
        break;
      }
  }
  free (buf);
  return 0;
}

struct batch {
  uint64_t off[L2_BATCH];
  uint8_t *buf[L2_BATCH];
  uint32_t lo[L2_BATCH], hi[L2_BATCH];   /* changed entries [lo, hi) */
  size_t n;
  uint64_t *zero;                        /* clusters to write zeros to */
  size_t n_zero, cap_zero;
};

/* Whether [off, off + len) of the source holds data (1), is a hole (0),
 * or cannot be told (-1); *pnum: how far the answer holds. */
static int
status (struct qk_source *s, uint64_t off, uint64_t len, uint64_t *pnum)
{
  if (s->ops->block_status == NULL) {
    *pnum = len;
    return -1;
  }
  return s->ops->block_status (s, off, len, pnum);
}

/* Zeros into the clusters of the batch. What reads as zeros already is
 * left alone: a hole of the file (a preallocated image's clusters), and
 * a cluster past its end (fresh: the file is extended over it). */
static int
zero_clusters (struct amend *a, struct batch *b)
{
  struct qk_source *src = qk_writer_src (&a->w);
  uint64_t cs = a->img->hdr.cluster_size, size = src->size, end = size;
  size_t chunk = (size_t) 1 << 20;
  uint8_t *z = NULL;
  int ret = -1;

  if (b->n_zero == 0)
    return 0;
  qsort (b->zero, b->n_zero, sizeof *b->zero, cmp_u64);
  for (size_t i = 0; i < b->n_zero; ) {
    size_t j = i + 1;
    uint64_t off, stop;
    while (j < b->n_zero && b->zero[j] == b->zero[j - 1] + cs)
      j++;
    off = b->zero[i];
    stop = b->zero[j - 1] + cs;
    i = j;
    if (stop > end)
      end = stop;
    if (stop > size)
      stop = size;
    while (off < stop) {
      uint64_t n;
      int st = status (src, off, stop - off, &n);
      if (n == 0 || n > stop - off)
        n = stop - off;
      if (st != 0) {
        if (z == NULL && (z = calloc (1, chunk)) == NULL) {
          set_error (ENOMEM, "calloc");
          goto out;
        }
        for (uint64_t p = off; p < off + n; p += chunk)
          if (put (a, z, off + n - p < chunk ? off + n - p : chunk, p) < 0)
            goto out;
      }
      off += n;
    }
  }
  if (end > size) {
    a->res->writes++;
    if (qk_source_truncate (src, end) < 0)
      goto out;
  }
  ret = 0;
out:
  free (z);
  b->n_zero = 0;
  return ret;
}

static int
batch_write (struct amend *a, struct qk_alloc *al, struct batch *b)
{
  int ret = 0;

  if (b->n == 0)
    return 0;
  if (zero_clusters (a, b) < 0 || qk_alloc_sync (al) < 0)
    ret = -1;
  for (size_t i = 0; i < b->n && ret == 0; i++)
    ret = put (a, b->buf[i] + 8 * b->lo[i], 8 * (b->hi[i] - b->lo[i]),
               b->off[i] + 8 * b->lo[i]);
  if (ret == 0)
    ret = flush (a);
  for (size_t i = 0; i < b->n; i++)
    free (b->buf[i]);
  b->n = 0;
  return ret;
}

static int
expand_zeros (struct amend *a, const struct seen *t)
{
  struct qk_image *img = a->img;
  uint64_t cs = img->hdr.cluster_size;
  bool backing = img->backing_name != NULL;
  struct qk_alloc *al;
  struct batch b;
  int ret = -1;

  memset (&b, 0, sizeof b);
  al = qk_alloc_new (qk_writer_src (&a->w), &img->hdr);
  if (al == NULL)
    return -1;
  for (size_t i = 0; i < t->n; i++) {
    uint8_t *buf = malloc (cs);
    uint64_t l2rc;
    uint32_t lo = UINT32_MAX, hi = 0;
    if (buf == NULL) {
      set_error (ENOMEM, "malloc");
      goto out;
    }
    if (qk_source_read_exact (qk_writer_src (&a->w), buf, cs, t->v[i],
                              "L2 table") < 0
        || qk_alloc_get (al, t->v[i] / cs, &l2rc) < 0) {
      free (buf);
      goto out;
    }
    for (uint32_t e = 0; e < cs / 8; e++) {
      uint64_t ent = be64_get (buf + 8 * e), off, ne, drc = l2rc;
      enum qk_cluster_type ty = qk_l2_cluster_type (ent, false, false);
      if (ty == QK_CLUSTER_ZERO_PLAIN && !backing) {
        ne = 0;
        a->res->zero_unmapped++;
      }
      else if (ty == QK_CLUSTER_ZERO_PLAIN || ty == QK_CLUSTER_ZERO_ALLOC) {
        if (ty == QK_CLUSTER_ZERO_PLAIN) {
          if (a->o->flags & QK_AMEND_DRY_RUN)
            off = 0;
          else if (qk_alloc_clusters (al, 1, &off) < 0
                   || (l2rc > 1
                       && qk_alloc_ref (al, off / cs,
                                        (int64_t) l2rc - 1) < 0)) {
            free (buf);
            goto out;
          }
          a->res->zero_allocated++;
        }
        else {
          off = ent & QK_L2E_OFFSET_MASK;
          if (qk_alloc_get (al, off / cs, &drc) < 0) {
            free (buf);
            goto out;
          }
          a->res->zero_prealloc++;
        }
        ne = off | (l2rc == 1 && drc == 1 ? QK_OFLAG_COPIED : 0);
        if (!(a->o->flags & QK_AMEND_DRY_RUN)) {
          uint64_t *nv = qk_grow (b.zero, &b.cap_zero, b.n_zero + 1,
                                  sizeof *nv);
          if (nv == NULL) {
            free (buf);
            goto out;
          }
          b.zero = nv;
          b.zero[b.n_zero++] = off;
        }
      }
      else
        continue;
      be64_put (buf + 8 * e, ne);
      if (e < lo)
        lo = e;
      hi = e + 1;
    }
    if (hi == 0 || (a->o->flags & QK_AMEND_DRY_RUN)) {
      free (buf);
      continue;
    }
    b.off[b.n] = t->v[i];
    b.buf[b.n] = buf;
    b.lo[b.n] = lo;
    b.hi[b.n] = hi;
    if (++b.n == L2_BATCH && batch_write (a, al, &b) < 0)
      goto out;
  }
  if (batch_write (a, al, &b) < 0 || qk_alloc_release (al) < 0)
    goto out;
  ret = 0;
out:
  for (size_t i = 0; i < b.n; i++)
    free (b.buf[i]);
  free (b.zero);
  qk_alloc_free (al);
  return ret;
}

/* ---- validation: every refusal before the first write ---- */

static int
validate (struct amend *a)
{
  const struct qk_image *img = a->img;
  const struct qk_header *h = &img->hdr;
  const struct qk_amend_options *o = a->o;
  unsigned v = h->version, order = h->refcount_order;

  a->new_version = o->compat ? o->compat : v;
  a->new_order = order;
  if (o->compat && o->compat != 2 && o->compat != 3) {
    set_error (EINVAL, "Unknown compatibility level %u", o->compat);
    return -1;
  }
  if (o->refcount_bits) {
    unsigned b = o->refcount_bits, ord = 0;
    if (b > 64 || (b & (b - 1)))
      return refuse ("Refcount width must be a power of two and may not "
                     "exceed 64 bits");
    while ((1U << ord) < b)
      ord++;
    a->new_order = ord;
    if (ord != order && a->new_version < 3 && ord != 4)
      return refuse ("Refcount widths other than 16 bits require "
                     "compatibility level 1.1 or above (use compat=1.1 or "
                     "greater)");
  }
  if (h->incompatible_features & QK_INCOMPAT_CORRUPT)
    return refuse ("%s is marked corrupt: run qcowkit repair -y first",
                   a->path);
  if (a->new_version == 2 && v == 3) {
    if (a->new_order != 4)
      return refuse ("compat=0.10 requires refcount_bits=16");
    if (h->incompatible_features & QK_INCOMPAT_DATA_FILE)
      return refuse ("Cannot downgrade an image with a data file");
    for (size_t i = 0; i < img->n_snaps; i++) {
      const struct qk_snapshot *s = &img->snaps[i].s;
      if (s->vm_state_size > UINT32_MAX
          || (s->has_disk_size && s->disk_size != h->size))
        return refuse ("Internal snapshots prevent downgrade of image");
    }
    /* (the dirty bit is settled first, as QEMU settles it) */
    uint64_t other = h->incompatible_features
                     & ~(uint64_t) (QK_INCOMPAT_COMPRESSION
                                    | QK_INCOMPAT_DIRTY);
    if (other)
      return refuse ("Cannot downgrade an image with incompatible features "
                     "%#" PRIx64 " set", other);
    if (img->has_bitmaps_ext && img->bitmaps_ext.nb_bitmaps)
      return refuse ("Cannot downgrade an image with persistent bitmaps "
                     "(version 2 cannot hold them; remove them first, "
                     "e.g. qemu-img bitmap --remove)");
  }
  return 0;
}

/* A narrower width must hold every stored refcount (as QEMU, which
 * looks at the stored ones; the check found none below its count): the
 * first cluster that does not fit is named, as QEMU names it. Read a
 * refcount block at a time, before anything is written. */
static int
width_fits (struct amend *a)
{
  struct qk_refscan sc;
  uint64_t *rt;
  size_t rt_n;
  int ret;

  if (a->new_order >= a->img->hdr.refcount_order)
    return 0;
  if (qk_image_read_refcount_table (a->img, &rt, &rt_n) < 0)
    return -1;
  ret = qk_refstruct_scan (qk_writer_src (&a->w), &a->img->hdr, rt, rt_n,
                           known_end (a), a->new_order, &sc);
  free (rt);
  if (ret == 0)
    ret = refuse_width (a, &sc);
  qk_refscan_free (&sc);
  return ret;
}

/* An upgrade with nothing else to do and no snapshot table to write
 * again. */
static bool
header_only (const struct amend *a)
{
  const struct qk_image *img = a->img;

  if (!(a->new_version == 3 && img->hdr.version == 2
        && a->new_order == img->hdr.refcount_order))
    return false;
  for (size_t i = 0; i < img->n_snaps; i++)
    if (img->snaps[i].s.extra_data_size < 16)
      return false;
  return img->snaps_ok;
}

static int
run (struct amend *a)
{
  struct qk_refmap map;
  struct qk_check_result cr;
  const struct qk_header *h;
  struct seen t = { 0 };
  bool dirty;
  int ret = -1;

  if (reopen (a) < 0)
    return -1;
  h = &a->img->hdr;
  a->res->old_version = h->version;
  if (h->refcount_order > 6)
    return qk_xform_refuse ("amend", EUCLEAN, "%s has refcounts of 2^%u "
                            "bits: repair it first", a->path,
                            h->refcount_order);
  a->res->old_refcount_bits = 1U << h->refcount_order;
  /* QEMU's refusals first (they need no check), then the check, then
   * what needs the counts */
  if (validate (a) < 0)
    return -1;
  a->res->new_version = a->new_version;
  a->res->new_refcount_bits = 1U << a->new_order;
  dirty = h->version == 3 && (h->incompatible_features & QK_INCOMPAT_DIRTY);
  if (!dirty && a->new_version == h->version
      && a->new_order == h->refcount_order)
    return 0;             /* nothing to do: not even the leaks are ours */
  if (a->new_version == 3 && h->version == 2) {
    /* an upgrade must not change what the guest reads, and the new
     * header is written over the header cluster: a table there would
     * change with it (found by fuzz-amend; qemu-img's upgrade rewrites
     * it).  A version 2 entry with the zero flag is no such case: QEMU
     * fails to read it (corrupt), ours reads zeros, as both do after. */
    uint64_t cs = h->cluster_size, in_hdr = UINT64_MAX;
    const char *what = NULL;
    if (l2_tables (a, &t) < 0) {
      free (t.v);
      return -1;
    }
    if (h->l1_table_offset < cs && a->img->l1_count)
      what = "the L1 table", in_hdr = h->l1_table_offset;
    else if (h->refcount_table_offset < cs)
      what = "the refcount table", in_hdr = h->refcount_table_offset;
    else if (h->nb_snapshots && h->snapshots_offset < cs)
      what = "the snapshot table", in_hdr = h->snapshots_offset;
    for (size_t i = 0; what == NULL && i < t.n; i++)
      if (t.v[i] < cs)
        what = "an L2 table", in_hdr = t.v[i];
    free (t.v);
    memset (&t, 0, sizeof t);
    if (what)
      return qk_xform_refuse ("amend", EUCLEAN, "%s: %s is in the header "
                              "cluster (at 0x%" PRIx64 "), which an upgrade "
                              "writes again: run qcowkit repair first",
                              a->path, what, in_hdr);
  }
  if (!dirty && header_only (a)) {
    /* an upgrade that allocates nothing writes the header alone: the
     * refcounts play no part, so no check is needed (as qemu-img) */
    if (a->o->flags & QK_AMEND_DRY_RUN)
      return 0;
    return qk_writer_begin (&a->w) < 0 ? -1 : write_header (a, 3, 0, 0);
  }
  if (check (a, &map, &cr) < 0) {
    if (dirty && errno == EUCLEAN)
      qk_internal_set_error (EUCLEAN, "amend", "%s is dirty (lazy refcounts "
                             "left unsettled) and its refcounts are too low: "
                             "run qcowkit repair -y (or qemu-img check -r "
                             "all) first", a->path);
    return -1;
  }
  /* fresh clusters go past what the check saw: the file, and what an
   * entry past its end points at */
  a->fresh_min = map.n > map.dangling_end ? map.n : map.dangling_end;
  if (width_fits (a) < 0 || refstruct_shared (a, &map) < 0) {
    qk_refmap_free (&map);
    return -1;
  }
  /* the undo journal (when asked for) exists before anything writes, so
   * that the allocator, which writes through the stack's top, is under
   * it */
  if (!(a->o->flags & QK_AMEND_DRY_RUN)
      && qk_writer_begin (&a->w) < 0)
    goto out;
  if (a->new_version == 2 && h->version == 3
      && (h->incompatible_features & QK_INCOMPAT_COMPRESSION)) {
    bool yes;
    if (l2_tables (a, &t) < 0 || any_compressed (a, &t, &yes) < 0)
      goto out;
    if (yes) {
      refuse ("Cannot downgrade an image with zstd compression type and "
              "existing compressed clusters");
      goto out;
    }
  }
  /* step 0: leaks freed, then the dirty bit cleared (an upgrade this
   * command started and did not finish leaves it) */
  if (free_leaks (a, &map, cr.leaks) < 0)
    goto out;
  qk_refmap_free (&map);
  memset (&map, 0, sizeof map);
  if (a->res->changed && reopen (a) < 0)
    goto out;
  if (dirty && !(a->o->flags & QK_AMEND_DRY_RUN) && clear_dirty (a) < 0)
    goto out;
  h = &a->img->hdr;
  /* step 1 */
  if (a->new_version == 3 && h->version == 2) {
    int k = upgrade_snapshots (a);
    if (k < 0)
      goto out;
    if (k == 0 && !(a->o->flags & QK_AMEND_DRY_RUN)
        && write_header (a, 3, 0, 0) < 0)
      goto out;
    h = &a->img->hdr;
  }
  /* step 2 */
  if (a->new_order != h->refcount_order
      && !(a->o->flags & QK_AMEND_DRY_RUN)) {
    if (change_width (a) < 0)
      goto out;
    h = &a->img->hdr;
  }
  /* step 3 */
  if (a->new_version == 2 && h->version == 3) {
    free (t.v);
    if (l2_tables (a, &t) < 0 || expand_zeros (a, &t) < 0)
      goto out;
    if (!(a->o->flags & QK_AMEND_DRY_RUN)
        && (reopen (a) < 0 || write_header (a, 2, 0, 0) < 0))
      goto out;
  }
  ret = 0;
out:
  free (t.v);
  qk_refmap_free (&map);
  return ret;
}

QK_EXPORT int
qk_amend (const char *path, const struct qk_amend_options *o,
          struct qk_amend_result *res)
{
  struct amend a;
  struct qk_amend_result dummy;
  int ret;

  if (path == NULL || o == NULL) {
    set_error (EINVAL, "qk_amend: NULL argument");
    return -1;
  }
  if (res == NULL)
    res = &dummy;
  memset (res, 0, sizeof *res);
  memset (&a, 0, sizeof a);
  a.o = o;
  a.res = res;
  a.path = path;
  if (qk_xform_open (&a.w, path, o->undo_path,
                     (o->flags & QK_AMEND_DRY_RUN) != 0) < 0) {
    qk_internal_prefix_error ("qk_amend");
    qk_writer_close (&a.w);
    return -1;
  }
  ret = run (&a);
  {
    struct qk_saved_error sv;
    if (ret < 0)
      qk_internal_save_error (&sv);
    qk_image_close (a.img);
    qk_writer_close (&a.w);
    if (ret < 0)
      qk_internal_restore_error (&sv);
  }
  return ret;
}
