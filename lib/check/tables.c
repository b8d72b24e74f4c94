/* Passes 1 and 2 of the check: the active and snapshot L1 tables, every
 * distinct L2 table (read once, in offset order, however many L1 tables
 * share it) with the COPIED flags (pass 5) and the data they map, counted
 * into the IMRT; and the snapshot table. */
#include <config.h>

#include "check/ck.h"

/* ---- phases 1 and 2: L1 and L2 tables ---- */

const char *
source_name (const struct ck *ck, int64_t source, char *buf, size_t len)
{
  if (source < 0)
    return "active";
  snprintf (buf, len, "snapshot %s (%s)", ck->img->snaps[source].s.id,
            ck->img->snaps[source].s.name);
  return buf;
}

static int
cmp_l2ref (const void *a, const void *b)
{
  const struct l2ref *x = a, *y = b;
  if (x->l2_offset != y->l2_offset)
    return x->l2_offset < y->l2_offset ? -1 : 1;
  if (x->source != y->source)
    return x->source < y->source ? -1 : 1;
  return x->l1_index < y->l1_index ? -1 : x->l1_index > y->l1_index;
}

/* check_refcounts_l1: the table itself, each entry, and collect the L2
 * tables it points to. */
static int
walk_l1 (struct ck *ck, const uint64_t *l1, uint32_t n, uint64_t l1_offset,
         int64_t source, struct refs *refs)
{
  struct owner o = { .kind = OWN_L1, .a = source };
  char sb[200];

  if (n == 0)
    return 0;
  if (inc_refs (ck, l1_offset, (uint64_t) n * 8, 1, &o) < 0)
    return -1;
  for (uint32_t i = 0; i < n; i++) {
    uint64_t e = l1[i], l2;
    struct l2ref *r;

    if (e == 0)
      continue;
    if (e & QK_L1E_RESERVED_MASK)
      report (ck, PR_L1_RESERVED, 1,
              LOC (.table_offset = l1_offset, .index = i, .found = e),
              "%s L1[%u] = 0x%016" PRIx64 " has reserved bits set",
              source_name (ck, source, sb, sizeof sb), i, e);
    l2 = e & QK_L1E_OFFSET_MASK;
    if (!IS_ALIGNED (l2, ck->cs))
      report (ck, PR_L1_UNALIGNED, 1,
              LOC (.table_offset = l1_offset, .index = i, .host_offset = l2),
              "l2_offset=0x%" PRIx64 ": the L2 table for %s L1[%u] is not "
              "cluster aligned", l2, source_name (ck, source, sb, sizeof sb),
              i);
    r = qk_grow (refs->v, &refs->cap, refs->n + 1, sizeof *r);
    if (r == NULL)
      return -1;
    refs->v = r;
    refs->v[refs->n++] = (struct l2ref) { l2, (int32_t) source, i };
  }
  return 0;
}

struct l2group {
  uint64_t l2_offset;
  uint64_t mult;          /* L1 entries pointing here */
  uint64_t active;        /* of which in the active L1 */
  const struct l2ref *first;
  const struct l2ref *first_active;
};

static void
check_compressed_deep (struct ck *ck, uint64_t entry, uint64_t guest,
                       uint8_t *in, uint8_t *out)
{
  uint64_t coff, clen;

  qk_l2_compressed (entry, ck->cb, &coff, &clen);
  if (clen > 2 * ck->cs)
    clen = 2 * ck->cs;
  if (qk_source_read_zeropad (ck->img->src, in, clen, coff) < 0
      || qk_decompress (ck->h->compression_type, in, clen, out, ck->cs) < 0)
    report (ck, PR_COMPRESSED_DAMAGED, 1,
            LOC (.host_offset = coff, .length = clen, .guest_offset = guest),
            "compressed cluster at 0x%" PRIx64 " (%" PRIu64 " bytes, guest "
            "offset 0x%" PRIx64 "): %s", coff, clen, guest, qk_get_error ());
}

/* where an L2 entry is, for walk_l2's reports (built only when one is made) */
#define L2_LOC LOC (.table_offset = l2off, .index = i, .guest_offset = guest, \
                    .found = e0)

/* check_refcounts_l2 for one distinct table, with multiplicity, plus the
 * COPIED check of check_oflag_copied when the active L1 uses it. */
static int
walk_l2 (struct ck *ck, const struct l2group *g, uint8_t *buf,
         uint8_t *zin, uint8_t *zout)
{
  const struct qk_header *h = ck->h;
  bool extl2 = h->subclusters > 1;
  uint64_t next_contig = 0;
  uint64_t span = (uint64_t) h->l2_entries << ck->cb;
  const struct l2ref *gr = g->first_active ? g->first_active : g->first;
  uint64_t guest_base = (uint64_t) gr->l1_index * span;
  struct owner ol2 = { .kind = OWN_L2, .a = gr->l1_index, .b = gr->source };
  uint64_t l2off = g->l2_offset;

  if (inc_refs (ck, l2off, ck->cs, g->mult, &ol2) < 0)
    return -1;
  if (qk_source_read_zeropad (ck->img->src, buf, ck->cs, l2off) < 0) {
    report (ck, PR_REFCOUNT_UNREADABLE, g->mult, LOC (.host_offset = l2off),
            "I/O error reading the L2 table at 0x%" PRIx64 ": %s", l2off,
            qk_get_error ());
    return 0;
  }
  ck->res->l2_tables_read++;

  /* COPIED on the L1 entries of the active table pointing here */
  if (g->active && ck->counting && ck->reftable && l2off) {
    uint64_t rc;
    if (stored_refcount (ck, l2off >> ck->cb, &rc) == 0)
      for (const struct l2ref *r = g->first_active;
           r < g->first + g->mult && r->l2_offset == l2off; r++) {
        uint64_t e;
        if (r->source != -1)
          continue;
        e = ck->img->l1[r->l1_index];
        if ((rc == 1) != ((e & QK_OFLAG_COPIED) != 0))
          report (ck, PR_COPIED_L2, 1,
                  LOC (.table_offset = h->l1_table_offset,
                       .index = r->l1_index, .found = e, .expected = rc),
                  "OFLAG_COPIED L2 cluster: l1_index=%u l1_entry=%" PRIx64
                  " refcount=%" PRIu64, r->l1_index, e, rc);
      }
  }

  /* The fast path: 16-bit refcounts (the default), standard L2 entries,
   * no data file, a table of at most one active reference whose count
   * cannot overflow; for the entries that are plain allocated clusters
   * (no flag but COPIED, aligned, inside the file) whose cluster nothing
   * or only snapshot data claimed so far: exactly what the general path
   * below does for them, without its per-entry generality. Anything else
   * goes the general way. */
  bool fast = !extl2 && !ck->data_file && ck->counting && ck->order == 4
              && h->refcount_order == 4 && g->active <= 1
              && g->mult <= ck->refmax && ck->file_len >= ck->cs
              && (g->active || ck->excl);
  bool copied = g->active && ck->counting && ck->reftable && l2off;
  uint64_t fast_limit = ck->file_len - ck->cs;   /* last offset allowed */
  unsigned per_bits = ck->cb + 3 - h->refcount_order;
  uint64_t n_alloc = 0, n_frag = 0;

  for (uint32_t i = 0; i < h->l2_entries; i++) {
    const uint8_t *p = buf + (size_t) i * h->l2_entry_size;
    uint64_t e = be64_get (p);
    if (fast) {
      uint64_t off = e & QK_L2E_OFFSET_MASK, k = off >> ck->cb, rc;
      if ((e & ~(QK_L2E_OFFSET_MASK | QK_OFLAG_COPIED)) == 0 && off
          && (off & (ck->cs - 1)) == 0 && off <= fast_limit && k < ck->nb
          && ((rc = be16_get (ck->imrt + 2 * k)) == 0
              || (ck->excl && !((ck->excl[k / 8] >> (k & 7)) & 1)
                  && rc <= ck->refmax - g->mult))) {
        be16_put (ck->imrt + 2 * k, (uint16_t) (rc + g->mult));
        if (g->active) {
          excl_set (ck, k);
          n_alloc++;
          if (next_contig && off != next_contig)
            n_frag++;
          next_contig = off + ck->cs;
        }
        if (copied) {
          uint64_t src;
          int ok = 0;
          if (ck->sr_buf && k >> per_bits == ck->sr_t)
            src = be16_get (ck->sr_buf
                            + 2 * (k & ((UINT64_C (1) << per_bits) - 1)));
          else
            ok = stored_refcount_lookup (ck, k, &src);
          if (ok == 0 && (src == 1) != ((e & QK_OFLAG_COPIED) != 0)) {
            uint64_t guest = guest_base + ((uint64_t) i << ck->cb);
            const uint64_t e0 = e;
            report (ck, PR_COPIED_DATA, g->active, L2_LOC,
                    "OFLAG_COPIED data cluster: l2_entry=%" PRIx64
                    " refcount=%" PRIu64 " (guest offset 0x%" PRIx64 ")", e,
                    src, guest);
          }
        }
        continue;
      }
    }
    uint64_t bm = extl2 ? be64_get (p + 8) : 0;
    uint64_t guest = guest_base + ((uint64_t) i << ck->cb);
    enum qk_cluster_type t = qk_l2_cluster_type (e, extl2, ck->data_file);
    const uint64_t e0 = e;   /* as found, for the reports */

    ck->at_table = l2off;
    ck->at_index = i;
    ck->at_guest = guest;

    if (t != QK_CLUSTER_COMPRESSED && (e & QK_L2E_STD_RESERVED))
      report (ck, PR_L2_RESERVED, g->mult, L2_LOC,
              "found l2 entry with reserved bits set: %" PRIx64 " (L2 table "
              "0x%" PRIx64 "[%u], guest offset 0x%" PRIx64 ")", e, l2off, i,
              guest);
    if (h->version == 2 && (e & QK_OFLAG_ZERO) && t != QK_CLUSTER_COMPRESSED)
      report (ck, PR_L2_ZERO_FLAG_V2, 1, L2_LOC,
              "L2 table 0x%" PRIx64 "[%u] (guest offset 0x%" PRIx64 ") has "
              "the zero flag in a version 2 image", l2off, i, guest);

    switch (t) {
    case QK_CLUSTER_COMPRESSED: {
      uint64_t coff, clen;
      /* Compressed data is shared byte-wise between neighbours, so it takes
       * no part in duplicate-mapping detection. */
      struct owner od = { .kind = OWN_CDATA, .a = (int64_t) guest,
                          .b = g->active ? -1 : gr->source };
      if (e & QK_OFLAG_COPIED) {
        report (ck, PR_L2_COMPRESSED_COPIED, g->mult, L2_LOC,
                "coffset=0x%" PRIx64 ": copied flag must never be set for "
                "compressed clusters", e & (((uint64_t) 1 << (62 - (ck->cb - 8))) - 1));
        e &= ~QK_OFLAG_COPIED;
      }
      if (ck->data_file) {
        report (ck, PR_L2_COMPRESSED_DATA_FILE, g->mult, L2_LOC,
                "compressed cluster %u with data file, entry=0x%" PRIx64, i,
                e);
        break;
      }
      if (bm) {
        report (ck, PR_L2_SUBCLUSTER_COMPRESSED, g->mult, L2_LOC,
                "compressed cluster %u with non-zero subcluster allocation "
                "bitmap, entry=0x%" PRIx64, i, e);
        break;
      }
      qk_l2_compressed (e, ck->cb, &coff, &clen);
      if (inc_refs (ck, coff, clen, g->mult, &od) < 0)
        return -1;
      if (g->active) {
        ck->res->allocated_clusters += g->active;
        ck->res->compressed_clusters += g->active;
        ck->res->fragmented_clusters += g->active;
      }
      if (ck->flags & QK_CHECK_DEEP)
        check_compressed_deep (ck, e, guest, zin, zout);
      break;
    }
    case QK_CLUSTER_ZERO_ALLOC:
    case QK_CLUSTER_NORMAL: {
      uint64_t off = e & QK_L2E_OFFSET_MASK;
      if ((bm >> 32) & bm)
        report (ck, PR_L2_SUBCLUSTER_BOTH, g->mult, L2_LOC,
                "offset=%" PRIx64 ": Allocated cluster has corrupted "
                "subcluster allocation bitmap 0x%016" PRIx64, off, bm);
      if (!IS_ALIGNED (off, ck->cs)) {
        bool data = extl2 ? (bm & QK_L2_BITMAP_ALL_ALLOC) != 0
                          : !(e & QK_OFLAG_ZERO);
        if (data)
          report (ck, PR_L2_DATA_UNALIGNED, g->mult, L2_LOC,
                  "offset=%" PRIx64 ": Data cluster is not properly aligned; "
                  "L2 entry corrupted (guest offset 0x%" PRIx64 ")", off,
                  guest);
        else
          report (ck, PR_L2_PREALLOC_UNALIGNED, g->mult, L2_LOC,
                  "offset=%" PRIx64 ": Preallocated cluster is not properly "
                  "aligned; L2 entry corrupted (guest offset 0x%" PRIx64 ")",
                  off, guest);
      }
      if (g->active) {
        ck->res->allocated_clusters += g->active;
        if (next_contig && off != next_contig)
          ck->res->fragmented_clusters += g->active;
        next_contig = off + ck->cs;
      }
      if (ck->data_file) {
        if (g->mult == 1 && off != guest && t == QK_CLUSTER_NORMAL)
          report (ck, PR_L2_DATA_FILE_OFFSET, 1, L2_LOC,
                  "data file cluster 0x%" PRIx64 " does not match its guest "
                  "offset 0x%" PRIx64, off, guest);
        if (off + ck->cs > ck->max_data_end)
          ck->max_data_end = off + ck->cs;
      }
      else {
        /* An active table referenced twice counts as two owners: the
         * first reference claims the cluster, the others (all in one
         * call, so that an L1 whose entries all point here costs one
         * pass, not one per entry) find it claimed and record the
         * conflict once. */
        uint64_t k = off >> ck->cb, rc;
        /* The common cases without a call: a whole cluster inside the
         * file whose count cannot overflow, that nothing has claimed yet
         * or only snapshot, bitmap or compressed data has (no conflict
         * either way); exactly what the inc_refs calls below would do. */
        if (g->active <= 1 && ck->counting && IS_ALIGNED (off, ck->cs)
            && ck->file_len >= ck->cs && off <= ck->file_len - ck->cs
            && k < ck->nb && g->mult <= ck->refmax
            && ((rc = qk_refblock_get (ck->imrt, ck->order, k)) == 0
                || (ck->excl && !excl_get (ck, k, true)
                    && rc <= ck->refmax - g->mult))) {
          if (!g->active && !ck->excl && excl_need (ck) < 0)
            return -1;
          qk_refblock_set (ck->imrt, ck->order, k, rc + g->mult);
          if (g->active)
            excl_set (ck, k);
        }
        else {
          struct owner od = { .kind = g->active ? OWN_DATA : OWN_SNAPDATA,
                              .a = guest };
          if (g->active) {
            if (inc_refs (ck, off, ck->cs, 1, &od) < 0
                || (g->active > 1
                    && inc_refs (ck, off, ck->cs, g->active - 1, &od) < 0))
              return -1;
            if (g->mult > g->active) {
              od.kind = OWN_SNAPDATA;
              if (inc_refs (ck, off, ck->cs, g->mult - g->active, &od) < 0)
                return -1;
            }
          }
          else if (inc_refs (ck, off, ck->cs, g->mult, &od) < 0)
            return -1;
        }
      }
      /* COPIED (check_oflag_copied), on the active tables only; it skips
       * an L1 entry whose offset is 0 (reserved bits only) */
      if (g->active && ck->counting && ck->reftable && l2off) {
        uint64_t rc = 1;
        if (ck->data_file || stored_refcount (ck, off >> ck->cb, &rc) == 0) {
          if ((rc == 1) != ((e & QK_OFLAG_COPIED) != 0))
            report (ck, PR_COPIED_DATA, g->active, L2_LOC,
                    "OFLAG_COPIED data cluster: l2_entry=%" PRIx64
                    " refcount=%" PRIu64 " (guest offset 0x%" PRIx64 ")", e,
                    rc, guest);
        }
      }
      break;
    }
    case QK_CLUSTER_ZERO_PLAIN:
      break;
    case QK_CLUSTER_UNALLOCATED:
      if (bm & QK_L2_BITMAP_ALL_ALLOC)
        report (ck, PR_L2_SUBCLUSTER_UNALLOCATED, g->mult, L2_LOC,
                "Unallocated cluster has non-zero subcluster allocation map "
                "0x%016" PRIx64 " (guest offset 0x%" PRIx64 ")", bm, guest);
      break;
    }
  }
  ck->res->allocated_clusters += n_alloc;
  ck->res->fragmented_clusters += n_frag;
  ck->at_table = ck->at_index = ck->at_guest = QK_NONE;
  return 0;
}

static int
walk_tables (struct ck *ck, struct refs *refs)
{
  uint8_t *buf = malloc (ck->cs), *zin = NULL, *zout = NULL;
  int r = 0;

  if (buf == NULL) {
    set_error (ENOMEM, "malloc");
    return -1;
  }
  if (ck->flags & QK_CHECK_DEEP) {
    zin = malloc (2 * ck->cs);
    zout = malloc (ck->cs);
    if (!zin || !zout) {
      free (buf); free (zin); free (zout);
      set_error (ENOMEM, "malloc");
      return -1;
    }
  }
  /* Offset order: every distinct L2 table read once, sequentially. */
  if (refs->n)   /* qsort (NULL, 0, ...) is undefined */
    qsort (refs->v, refs->n, sizeof *refs->v, cmp_l2ref);
  ck->n_owners_pre_l2 = ck->n_owners;
  for (size_t i = 0; i < refs->n && r == 0;) {
    struct l2group g = { .l2_offset = refs->v[i].l2_offset,
                         .first = &refs->v[i] };
    size_t j = i;
    for (; j < refs->n && refs->v[j].l2_offset == g.l2_offset; j++) {
      g.mult++;
      if (refs->v[j].source == -1) {
        if (!g.first_active)
          g.first_active = &refs->v[j];
        g.active++;
      }
    }
    ck->l2_walked = j;   /* this table claims its cluster first thing */
    r = walk_l2 (ck, &g, buf, zin, zout);
    i = j;
  }
  free (buf);
  free (zin);
  free (zout);
  return r;
}

struct snapkey {
  const char *key;
  size_t i;
};

static int
cmp_snapkey (const void *a, const void *b)
{
  const struct snapkey *x = a, *y = b;
  int c = strcmp (x->key, y->key);
  if (c)
    return c;
  return x->i < y->i ? -1 : x->i > y->i;
}

/* Snapshots sharing an ID (or a name): each one after the first is
 * reported once, against the first (sorted, so a table of 65536 entries
 * all with the same empty ID costs n log n, not n squared). */
static void
duplicate_snapshots (struct ck *ck, bool names)
{
  const struct qk_image *img = ck->img;
  struct snapkey *v = malloc (img->n_snaps * sizeof *v);

  if (v == NULL)
    return;
  for (size_t i = 0; i < img->n_snaps; i++)
    v[i] = (struct snapkey) { names ? img->snaps[i].s.name
                                    : img->snaps[i].s.id, i };
  qsort (v, img->n_snaps, sizeof *v, cmp_snapkey);
  for (size_t j = 1, first = 0; j < img->n_snaps; j++) {
    size_t i = v[j].i;
    if (strcmp (v[j].key, v[first].key) != 0) {
      first = j;
      continue;
    }
    report (ck, names ? PR_SN_DUPLICATE_NAME : PR_SN_DUPLICATE_ID, 1,
            LOC (.table_offset = img->snaps[i].s.entry_offset, .index = i),
            "snapshot table entries %zu and %zu have the same %s '%s'",
            v[first].i, i, names ? "name" : "ID", v[j].key);
  }
  free (v);
}

int
phase_tables (struct ck *ck)
{
  struct qk_image *img = ck->img;
  const struct qk_header *h = ck->h;
  struct refs *refs = &ck->refs;
  int r = -1;
  uint64_t snap_bytes = 0;
  bool snaps = img->snaps_ok;

  /* the header */
  {
    struct owner o = { .kind = OWN_HEADER };
    if (inc_refs (ck, 0, ck->cs, 1, &o) < 0)
      goto out;
  }
  /* the active L1 (qemu-img walks whatever l1_size says) */
  if (!img->l1_ok && h->l1_size)
    ck->missing = "the active L1 table";
  if (img->l1_ok) {
    if (walk_l1 (ck, img->l1, img->l1_count, h->l1_table_offset, -1, refs) < 0)
      goto out;
  }
  else if (IS_ALIGNED (h->l1_table_offset, ck->cs)
           && (uint64_t) h->l1_size * 8 <= QK_MAX_L1_BYTES) {
    /* past EOF: QEMU reads zeros; count the table (and say it is past EOF) */
    struct owner o = { .kind = OWN_L1, .a = -1 };
    if (inc_refs (ck, h->l1_table_offset, (uint64_t) h->l1_size * 8, 1,
                  &o) < 0)
      goto out;
  }

  /* the snapshot table (qcow2_check_read_snapshot_table) */
  if (h->nb_snapshots > 65536) {
    report (ck, PR_SN_TOO_MANY, 1, LOC (.found = h->nb_snapshots),
            "%u snapshots: the snapshot table is too large (%u overhanging "
            "snapshots; qemu-img check -r all discards them)",
            h->nb_snapshots, h->nb_snapshots - 65536);
    snaps = false;
  }
  else if (!IS_ALIGNED (h->snapshots_offset, ck->cs)
           || h->snapshots_offset > INT64_MAX - (uint64_t) h->nb_snapshots * 40) {
    /* qcow2_validate_table: even with no snapshots */
    report (ck, PR_SN_TABLE_INVALID, 1,
            LOC (.host_offset = h->snapshots_offset),
            "invalid snapshot table offset 0x%" PRIx64, h->snapshots_offset);
    snaps = false;
  }
  else if (!img->snaps_ok) {
    const char *why = img->snaps_why ? img->snaps_why
                                     : "an entry is damaged";
    report (ck, PR_SN_TABLE_UNREADABLE, 1,
            LOC (.host_offset = h->snapshots_offset),
            "failed to read the snapshot table: %s", why);
  }
  else if (img->snaps_qemu < img->n_snaps)
    /* qcow2_read_snapshots: "Snapshot table is too big" (EFBIG) */
    report (ck, PR_SN_TABLE_TOO_BIG, 1,
            LOC (.host_offset = h->snapshots_offset, .index = img->snaps_qemu),
            "the snapshot table is too big: entry %zu ends past QEMU's "
            "limit of 64 MiB (%zu of %zu entries fit)", img->snaps_qemu,
            img->snaps_qemu, img->n_snaps);
  if (h->nb_snapshots && !snaps)
    ck->missing = ck->missing ? "the active L1 table and the snapshot table"
                              : "the snapshot table";
  if (snaps && ck->data_file && img->n_snaps)
    report (ck, PR_SN_DATA_FILE, 1, LOC (.found = img->n_snaps),
            "%zu snapshots in image with data file", img->n_snaps);

  for (size_t i = 0; snaps && i < img->n_snaps; i++) {
    const struct qk_snapshot *s = &img->snaps[i].s;
    uint64_t *l1 = NULL;
    uint32_t n;
    const struct qk_problem *loc = LOC (.table_offset = s->entry_offset,
                                        .index = i);

    if (s->extra_data_size > 1024)
      report (ck, PR_SN_EXTRA_TOO_BIG, 1, loc,
              "snapshot table entry %zu has too much extra metadata (%u > "
              "1024)", i, s->extra_data_size);
    else if (h->version >= 3 && s->extra_data_size < 16)
      report (ck, PR_SN_EXTRA_INCOMPLETE, 1, loc,
              "snapshot table entry %zu is incomplete (%u bytes of extra data, "
              "version 3 needs 16)", i, s->extra_data_size);
    if (s->has_vm_state_size_large && s->vm_state_size32
        && s->vm_state_size32 != s->vm_state_size)
      report (ck, PR_SN_VM_STATE, 1, loc,
              "snapshot %s (%s): VM state size %u disagrees with the 64-bit "
              "one %" PRIu64, s->id, s->name, s->vm_state_size32,
              s->vm_state_size);
    snap_bytes += s->entry_size;
    if (i + 1 == img->n_snaps) {
      /* The last entry is not padded. Its ID and name sizes as stored
       * (they may hold NUL bytes, which strlen would stop at). */
      uint8_t sz[4];
      uint64_t raw = 40 + (uint64_t) s->extra_data_size + strlen (s->id)
                     + strlen (s->name);
      if (qk_source_read_zeropad (img->src, sz, 4, s->entry_offset + 12) == 0)
        raw = 40 + (uint64_t) s->extra_data_size + be16_get (sz)
              + be16_get (sz + 2);
      snap_bytes -= s->entry_size - raw;
    }

    if (!IS_ALIGNED (s->l1_table_offset, ck->cs)) {
      report (ck, PR_SN_L1_UNALIGNED, 1,
              LOC (.table_offset = s->entry_offset, .index = i,
                   .host_offset = s->l1_table_offset),
              "snapshot %s (%s) l1_offset=%#" PRIx64 ": L1 table is not "
              "cluster aligned; snapshot table entry corrupted", s->id,
              s->name, s->l1_table_offset);
      ck->uncounted = "a snapshot's L1 table";
      continue;
    }
    if (s->l1_size > (32U << 20) / 8) {
      report (ck, PR_SN_L1_TOO_LARGE, 1,
              LOC (.table_offset = s->entry_offset, .index = i,
                   .found = s->l1_size),
              "snapshot %s (%s) l1_size=%#" PRIx32 ": L1 table is too large; "
              "snapshot table entry corrupted", s->id, s->name, s->l1_size);
      ck->uncounted = "a snapshot's L1 table";
      continue;
    }
    {
      uint64_t dsize = s->has_disk_size ? s->disk_size : h->size;
      uint64_t per = ck->cs * h->l2_entries;
      uint64_t need = dsize / per + (dsize % per != 0);
      if (s->l1_size < need)
        report (ck, PR_SN_L1_SIZE, 1,
                LOC (.table_offset = s->entry_offset, .index = i,
                     .found = s->l1_size, .expected = need),
                "snapshot %s (%s): L1 table of %u entries is too small for "
                "its disk size %" PRIu64 " (needs %" PRIu64 ")", s->id,
                s->name, s->l1_size, dsize, need);
    }
    if (s->l1_size == 0)
      continue;
    if (qk_image_read_snapshot_l1 (img, i, &l1, &n) < 0) {
      /* qemu-img reads past EOF as zeros: count the table, no entries */
      struct owner o = { .kind = OWN_L1, .a = (int64_t) i };
      if (inc_refs (ck, s->l1_table_offset, (uint64_t) s->l1_size * 8, 1,
                    &o) < 0)
        goto out;
      ck->uncounted = "a snapshot's L1 table";
      continue;
    }
    r = walk_l1 (ck, l1, n, s->l1_table_offset, (int32_t) i, refs);
    free (l1);
    if (r < 0)
      goto out;
    r = -1;
  }
  if (snaps && img->n_snaps > 1) {
    duplicate_snapshots (ck, false);
    duplicate_snapshots (ck, true);
  }
  if (snaps && img->n_snaps) {
    struct owner o = { .kind = OWN_SNAPTABLE };
    if (inc_refs (ck, h->snapshots_offset, snap_bytes, 1, &o) < 0)
      goto out;
  }
  r = walk_tables (ck, refs);
out:
  return r;
}
