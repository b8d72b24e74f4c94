/* The overlaps pass of the check: every cluster two structures claimed
 * (metadata and anything, or two active guest offsets), as the IMRT
 * recorded the conflicts, named by their owners (METADATA_OVERLAP,
 * DUPLICATE_MAPPING). */
#include <config.h>

#include "check/ck.h"

/* ---- overlaps and duplicate mappings ---- */

static bool
same_owner (const struct owner *x, const struct owner *y)
{
  return x->kind == y->kind && x->a == y->a && x->b == y->b;
}

static void
describe (const struct ck *ck, const struct owner *o, char *buf, size_t len)
{
  char sb[200];
  const struct qk_image *img = ck->img;

  switch (o->kind) {
  case OWN_HEADER: snprintf (buf, len, "the image header"); break;
  case OWN_L1:
    if (o->a < 0) snprintf (buf, len, "the active L1 table");
    else snprintf (buf, len, "the L1 table of snapshot %s (%s)",
                   img->snaps[o->a].s.id, img->snaps[o->a].s.name);
    break;
  case OWN_L2:
    snprintf (buf, len, "the L2 table for %s L1[%" PRId64 "]",
              source_name (ck, o->b, sb, sizeof sb), o->a);
    break;
  case OWN_REFTABLE: snprintf (buf, len, "the refcount table"); break;
  case OWN_REFBLOCK:
    snprintf (buf, len, "refcount block %" PRId64, o->a);
    break;
  case OWN_SNAPTABLE: snprintf (buf, len, "the snapshot table"); break;
  case OWN_BMDIR: snprintf (buf, len, "the bitmap directory"); break;
  case OWN_BMTABLE:
    snprintf (buf, len, "the table of bitmap '%s'", img->bitmaps[o->a].b.name);
    break;
  case OWN_CRYPTO: snprintf (buf, len, "the encryption header"); break;
  case OWN_DATA:
    snprintf (buf, len, "guest data at 0x%" PRIx64, (uint64_t) o->a);
    break;
  case OWN_SNAPDATA: snprintf (buf, len, "snapshot guest data"); break;
  case OWN_CDATA:
    if (o->b < 0)
      snprintf (buf, len, "compressed guest data at 0x%" PRIx64,
                (uint64_t) o->a);
    else
      snprintf (buf, len, "compressed guest data of %s at 0x%" PRIx64,
                source_name (ck, o->b, sb, sizeof sb), (uint64_t) o->a);
    break;
  case OWN_BMDATA:
    snprintf (buf, len, "the data of bitmap '%s'", img->bitmaps[o->a].b.name);
    break;
  }
}

static bool
owner_covers (const struct owner *w, uint64_t k, const struct owner *o)
{
  return k >= w->first && k < w->first + w->n && !same_owner (w, o);
}

/* The first metadata owner of cluster k other than o, in the order of the
 * claims: those before the L2 tables, the L2 tables (in offset order; an
 * L2 table is named by its first L1 entry, the active one if any), the
 * rest. The result may be *tmp. */
static const struct owner *
meta_owner (const struct ck *ck, uint64_t k, const struct owner *o,
            struct owner *tmp)
{
  size_t i;

  for (i = 0; i < ck->n_owners_pre_l2 && i < ck->n_owners; i++)
    if (owner_covers (&ck->owners[i], k, o))
      return &ck->owners[i];
  for (size_t j = l2_lower (ck, k); j < ck->refs.n && l2_claims (ck, j, k);) {
    const struct l2ref *r = &ck->refs.v[j];
    *tmp = (struct owner) { .kind = OWN_L2, .first = r->l2_offset >> ck->cb,
                            .n = 1, .a = r->l1_index, .b = r->source };
    if (!same_owner (tmp, o))
      return tmp;
    while (j < ck->refs.n && ck->refs.v[j].l2_offset == r->l2_offset)
      j++;
  }
  for (; i < ck->n_owners; i++)
    if (owner_covers (&ck->owners[i], k, o))
      return &ck->owners[i];
  return NULL;
}

static int
cmp_u64 (const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
  return x < y ? -1 : x > y;
}

/* Guest offsets in the active tables mapping to host cluster k (up to 2). */
/* L1 entries by L2 table offset, then index */
struct l1slot {
  uint64_t l2;
  uint32_t index;
};

static int
cmp_l1slot (const void *a, const void *b)
{
  const struct l1slot *x = a, *y = b;
  if (x->l2 != y->l2)
    return x->l2 < y->l2 ? -1 : 1;
  return x->index < y->index ? -1 : x->index > y->index;
}

/* Keep the two lowest guest offsets seen for a host cluster, as a walk
 * in guest order would find them first. */
static void
keep_lowest (uint64_t *f, uint64_t g)
{
  if (g == f[0] || g == f[1])
    return;
  if (g < f[0]) {
    f[1] = f[0];
    f[0] = g;
  }
  else if (g < f[1])
    f[1] = g;
}

/* For each host cluster in ks (sorted), the two lowest guest offsets the
 * active tables map it at. Each distinct L2 table is read once, however
 * many L1 entries point at it (a damaged L1 may point all of them at
 * one), so the time is bounded by the image's distinct tables, not by
 * l1_size times the entries of a table. */
static int
active_guests (struct ck *ck, const uint64_t *ks, size_t nk,
               uint64_t (*found)[2])
{
  const struct qk_header *h = ck->h;
  uint64_t span = (uint64_t) h->l2_entries << ck->cb;
  uint8_t *buf = malloc (ck->cs);
  struct l1slot *slots = NULL;
  size_t ns = 0;

  for (size_t i = 0; i < nk; i++)
    found[i][0] = found[i][1] = QK_NONE;
  if (buf == NULL)
    return -1;
  if (ck->img->l1_ok && ck->img->l1_count > 0) {
    slots = malloc ((size_t) ck->img->l1_count * sizeof *slots);
    if (slots == NULL) {
      free (buf);
      return -1;
    }
    for (uint32_t l = 0; l < ck->img->l1_count; l++) {
      uint64_t l2 = ck->img->l1[l] & QK_L1E_OFFSET_MASK;
      if (l2 != 0)
        slots[ns++] = (struct l1slot) { l2, l };
    }
    if (ns)
      qsort (slots, ns, sizeof *slots, cmp_l1slot);
  }
  for (size_t s = 0; s < ns;) {
    size_t e = s;
    while (e < ns && slots[e].l2 == slots[s].l2)
      e++;
    if (qk_source_read_zeropad (ck->img->src, buf, ck->cs, slots[s].l2) < 0) {
      s = e;
      continue;
    }
    for (uint32_t j = 0; j < h->l2_entries; j++) {
      uint64_t en = be64_get (buf + (size_t) j * h->l2_entry_size);
      enum qk_cluster_type t;
      uint64_t k, last, *hit;
      if (en == 0)
        continue;               /* unallocated: maps no host cluster */
      t = qk_l2_cluster_type (en, h->subclusters > 1, ck->data_file);
      if (t == QK_CLUSTER_COMPRESSED) {
        uint64_t coff, clen;
        qk_l2_compressed (en & ~QK_OFLAG_COPIED, ck->cb, &coff, &clen);
        k = coff >> ck->cb;
        last = (coff + clen - 1) >> ck->cb;
      }
      else if (t == QK_CLUSTER_NORMAL || t == QK_CLUSTER_ZERO_ALLOC)
        k = last = (en & QK_L2E_OFFSET_MASK) >> ck->cb;
      else
        continue;
      for (; k <= last; k++) {
        hit = bsearch (&k, ks, nk, sizeof *ks, cmp_u64);
        if (hit == NULL)
          continue;
        /* the L1 indexes are in order: only the first two matter */
        for (size_t x = s; x < e && x < s + 2; x++)
          keep_lowest (found[hit - ks],
                       (uint64_t) slots[x].index * span
                       + ((uint64_t) j << ck->cb));
      }
    }
    s = e;
  }
  free (slots);
  free (buf);
  return 0;
}

int
phase_overlaps (struct ck *ck)
{
  uint64_t *ks;
  uint64_t (*guests)[2];
  size_t nk = 0;

  if (ck->n_conf == 0)
    return 0;
  ks = malloc (ck->n_conf * sizeof *ks);
  guests = malloc (ck->n_conf * sizeof *guests);
  if (ks && guests) {
    /* the guest offsets name only a conflict that no metadata owns: the
     * active tables are read again only for those */
    for (size_t i = 0; i < ck->n_conf; i++) {
      struct owner tmp;
      if (meta_owner (ck, ck->conf[i].cluster, &ck->conf[i].second, &tmp)
          == NULL)
        ks[nk++] = ck->conf[i].cluster;
    }
    if (nk) {
      qsort (ks, nk, sizeof *ks, cmp_u64);
      if (active_guests (ck, ks, nk, guests) < 0)
        nk = 0;
    }
  }
  for (size_t i = 0; i < ck->n_conf; i++) {
    const struct conflict *c = &ck->conf[i];
    struct owner tmp;
    const struct owner *first = meta_owner (ck, c->cluster, &c->second, &tmp);
    char a[256], b[256];
    uint64_t *gs = NULL;

    if (ks && guests) {
      uint64_t *hit = bsearch (&c->cluster, ks, nk, sizeof *ks, cmp_u64);
      if (hit)
        gs = guests[hit - ks];
    }
    if (first == NULL && c->second.kind == OWN_DATA && gs && gs[1] != QK_NONE) {
      report (ck, PR_DUPLICATE_MAPPING, 1,
              LOC (.host_offset = c->cluster << ck->cb, .guest_offset = gs[0],
                   .guest_offset2 = gs[1]),
              "host cluster 0x%" PRIx64 " is mapped at guest offsets 0x%"
              PRIx64 " and 0x%" PRIx64 " of the active tables: one of them "
              "has lost its data (qemu-img check -r all would make them share "
              "it silently)", c->cluster << ck->cb, gs[0], gs[1]);
      continue;
    }
    if (c->second.kind == OWN_DATA && first == NULL)
      continue;   /* active data shared with snapshot data: legitimate */
    describe (ck, &c->second, b, sizeof b);
    if (first)
      describe (ck, first, a, sizeof a);
    else if (gs && gs[0] != QK_NONE)
      snprintf (a, sizeof a, "guest data at 0x%" PRIx64, gs[0]);
    else
      snprintf (a, sizeof a, "snapshot guest data");
    report (ck, PR_METADATA_OVERLAP, 1,
            LOC (.host_offset = c->cluster << ck->cb),
            "%s overlaps %s at host cluster 0x%" PRIx64, b, a,
            c->cluster << ck->cb);
  }
  free (ks);
  free (guests);
  return 0;
}
