/* The refcount map: the in-memory refcount table (IMRT) the passes count
 * every reference into, with the claims that name overlaps and duplicate
 * mappings (inc_refs); handed to the caller as a struct qk_refmap, which
 * the repair consumes (qk_refmap_*). */
#include <config.h>

#include <sys/mman.h>

#include "check/ck.h"

/* ---- IMRT ---- */

/* A page of a calloc'ed table read before it is written maps the shared
 * zero page, which the write then replaces: a second fault, and with
 * threads a TLB flush on every CPU the process runs on (in the parallel
 * steps, most of the time). The IMRT's pages are written nearly all when
 * refcount blocks cover the file (a qcow2 file has few holes), so they are
 * made writable at once when the parallel steps count (big tables only);
 * nothing if the kernel cannot (before Linux 5.14). Not in a sparse file,
 * whose holes have no refcount block (ck->dense false: the fresh clusters
 * a repair puts past a dangling entry leave up to 1 GiB of them): making
 * every page of its table writable would clear megabytes of memory that
 * nothing counts into. */
void
populate (const struct ck *ck, void *p, size_t len)
{
#ifdef MADV_POPULATE_WRITE
  uintptr_t pg = 4096, a = (uintptr_t) p & ~(pg - 1);
  uintptr_t b = ((uintptr_t) p + len + pg - 1) & ~(pg - 1);

  if (ck->nthreads && ck->dense && len >= (1U << 20))
    madvise ((void *) a, b - a, MADV_POPULATE_WRITE);
#else
  (void) ck, (void) p, (void) len;
#endif
}

int
imrt_grow (struct ck *ck, uint64_t need)
{
  uint64_t old = ((ck->nb << ck->order) + 7) / 8;
  uint64_t bytes = ((need << ck->order) + 7) / 8;
  uint64_t old_pg = DIV_ROUND_UP (old, 1U << QK_REFPG_SHIFT);
  uint64_t pages = DIV_ROUND_UP (bytes, 1U << QK_REFPG_SHIFT);
  uint8_t *n, *c;

  /* The first allocation is calloc'ed: pages of clusters nothing claims
   * (holes in the file) are then never touched, as with qemu-img, and
   * never read either (imrt_pg). */
  if (ck->imrt == NULL && ck->spare.imrt && ck->spare.imrt_len >= bytes
      && ck->spare.pg_len >= pages) {
    /* the last check's counts: zero the pages it wrote */
    struct qk_refmap_spare *sp = &ck->spare;
    for (uint64_t p = 0; p < sp->pg_len; p++)
      if (sp->imrt_pg[p]) {
        uint64_t a = p << QK_REFPG_SHIFT;
        memset (sp->imrt + a, 0, MIN (sp->imrt_len - a,
                                      (uint64_t) 1 << QK_REFPG_SHIFT));
      }
    memset (sp->imrt_pg, 0, sp->pg_len);
    ck->imrt = sp->imrt;
    ck->imrt_pg = sp->imrt_pg;
    sp->imrt = sp->imrt_pg = NULL;
    ck->nb = need;
    return 0;
  }
  if (ck->imrt == NULL) {
    n = calloc (bytes ? bytes : 1, 1);
    if (n == NULL)
      goto nomem;
    ck->imrt = n;
    ck->imrt_pg = calloc (pages ? pages : 1, 1);
    if (ck->imrt_pg == NULL)
      goto nomem;
    ck->nb = need;
    return 0;
  }
  c = realloc (ck->imrt_pg, pages ? pages : 1);
  if (c == NULL)
    goto nomem;
  memset (c + old_pg, 0, pages - old_pg);
  ck->imrt_pg = c;
  n = realloc (ck->imrt, bytes ? bytes : 1);
  if (n == NULL)
    goto nomem;
  memset (n + old, 0, bytes - old);
  ck->imrt = n;
  if (ck->excl) {
    c = realloc (ck->excl, need / 8 + 1);
    if (c == NULL)
      goto nomem;
    memset (c + ck->nb / 8 + 1, 0, need / 8 - ck->nb / 8);
    ck->excl = c;
  }
  if (ck->conf_bits) {
    c = realloc (ck->conf_bits, need / 8 + 1);
    if (c == NULL)
      goto nomem;
    memset (c + ck->nb / 8 + 1, 0, need / 8 - ck->nb / 8);
    ck->conf_bits = c;
  }
  ck->nb = need;
  return 0;
nomem:
  set_error (ENOMEM, "cannot grow the in-memory refcount table to %" PRIu64
             " clusters", need);
  return -1;
}

uint8_t *
spare_bits (struct ck *ck, int i, uint64_t len)
{
  uint8_t *b = ck->spare.bits[i];

  if (b == NULL || ck->spare.bits_len[i] < len)
    return calloc (len, 1);
  memset (b, 0, len);
  ck->spare.bits[i] = NULL;
  return b;
}

void
spare_free (struct qk_refmap_spare *sp)
{
  free (sp->imrt);
  free (sp->imrt_pg);
  free (sp->bits[0]);
  free (sp->bits[1]);
  memset (sp, 0, sizeof *sp);
}

/* The exclusive bits exist from the first claim that is not exclusive
 * (snapshot, bitmap or compressed data) on: until then every claim was,
 * so they are the clusters counted so far. Images whose snapshots share
 * all their tables with the active image, and that have no compressed
 * clusters or bitmaps, never need them. */
int
excl_need (struct ck *ck)
{
  if (ck->excl)
    return 0;
  ck->excl = spare_bits (ck, 0, ck->nb / 8 + 1);
  if (ck->excl == NULL) {
    set_error (ENOMEM, "cannot allocate the claim map of %" PRIu64
               " clusters", ck->nb);
    return -1;
  }
  populate (ck, ck->excl, ck->nb / 8 + 1);
  for (uint64_t k = imrt_next_used (ck, 0, ck->nb); k < ck->nb;
       k = imrt_next_used (ck, k + 1, ck->nb))
    ck->excl[k / 8] |= 1U << (k & 7);
  return 0;
}

/* Data claims: not exclusive (but active data's) and not recorded as
 * owners. */
static bool
is_data (enum owner_kind k)
{
  return k == OWN_DATA || k == OWN_SNAPDATA || k == OWN_BMDATA
         || k == OWN_CDATA;
}

static const char *
kind_name (enum owner_kind k)
{
  static const char *const n[] = {
    "header", "L1 table", "L2 table", "refcount table", "refcount block",
    "snapshot table", "bitmap directory", "bitmap table", "encryption header",
    "data cluster", "snapshot data cluster", "bitmap data", "compressed data",
  };
  return n[k];
}

static int
add_conflict (struct ck *ck, uint64_t k, const struct owner *o)
{
  if (ck->conf_bits == NULL)
    ck->conf_bits = spare_bits (ck, 1, ck->nb / 8 + 1);
  if (ck->conf_bits && k < ck->nb)
    ck->conf_bits[k / 8] |= 1U << (k & 7);
  if (ck->n_conf < MAX_CONFLICTS) {
    struct conflict *c = qk_grow (ck->conf, &ck->cap_conf, ck->n_conf + 1,
                                  sizeof *c);
    if (c == NULL)
      return -1;
    ck->conf = c;
    ck->conf[ck->n_conf].cluster = k;
    ck->conf[ck->n_conf].second = *o;
    ck->n_conf++;
  }
  return 0;
}

static void
add_owner (struct ck *ck, const struct owner *o)
{
  struct owner *n = qk_grow (ck->owners, &ck->cap_owners, ck->n_owners + 1,
                             sizeof *n);
  if (n) {
    ck->owners = n;
    ck->owners[ck->n_owners++] = *o;
    ck->mu_dirty = true;
  }
}

static int
cmp_range (const void *a, const void *b)
{
  const struct range *x = a, *y = b;
  return x->first < y->first ? -1 : x->first > y->first;
}

/* Whether metadata has claimed cluster k so far. Only asked when data of
 * a snapshot, a bitmap or a compressed cluster meets a cluster claimed
 * exclusively; the owner union is rebuilt at most once per phase that
 * adds owners (metadata is claimed in phases: header, L1 and snapshot
 * tables; the L2 tables, looked up in refs; refcount and bitmap
 * structures). */
static bool
is_meta (struct ck *ck, uint64_t k)
{
  size_t lo, hi;

  if (ck->l2_walked) {
    size_t i = l2_lower (ck, k);
    if (i < ck->refs.n && l2_claims (ck, i, k))
      return true;
  }
  if (ck->mu_dirty) {
    struct range *u = realloc (ck->mu, (ck->n_owners + 1) * sizeof *u);
    size_t n = 0;
    if (u == NULL)
      return true;   /* cannot tell: say it conflicts, never hide one */
    for (size_t i = 0; i < ck->n_owners; i++)
      u[i] = (struct range) { ck->owners[i].first,
                              ck->owners[i].first + ck->owners[i].n };
    qsort (u, ck->n_owners, sizeof *u, cmp_range);
    for (size_t i = 0; i < ck->n_owners; i++) {
      if (n && u[i].first <= u[n - 1].end) {
        if (u[i].end > u[n - 1].end)
          u[n - 1].end = u[i].end;
      }
      else
        u[n++] = u[i];
    }
    ck->mu = u;
    ck->n_mu = n;
    ck->mu_dirty = false;
  }
  lo = 0;
  hi = ck->n_mu;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (ck->mu[mid].end <= k)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < ck->n_mu && ck->mu[lo].first <= k;
}

/* qcow2_inc_refcounts_imrt, with a multiplicity (an L2 table shared by
 * mult L1 entries counts mult times) and a claim. */
int
inc_refs (struct ck *ck, uint64_t offset, uint64_t size, uint64_t mult,
          const struct owner *who)
{
  uint64_t end, start, last;

  if (size == 0 || !ck->counting)
    return 0;
  /* A partial last cluster is fine; a cluster or more past EOF is not. */
  if (ADD_OVERFLOW (offset, size, &end) || end >= ck->file_len + ck->cs) {
    /* remembered, so that a writer does not put fresh clusters where a
     * dangling reference would then read them (references up to 1 GiB
     * past the end; a writer's fresh clusters never go farther) */
    if (end >= offset && end - ck->file_len <= QK_DANGLING_SPAN
        && ((end + ck->cs - 1) >> ck->cb) > ck->dangling_end)
      ck->dangling_end = (end + ck->cs - 1) >> ck->cb;
    report (ck, PR_PAST_EOF, mult,
            LOC (.host_offset = offset, .length = size,
                 .table_offset = ck->at_table, .index = ck->at_index,
                 .guest_offset = ck->at_guest),
            "counting reference for region exceeding the end of the file by "
            "one cluster or more: offset 0x%" PRIx64 " size 0x%" PRIx64
            " (%s)", offset, size, kind_name (who->kind));
    return 0;
  }
  start = offset >> ck->cb;
  last = (end - 1) >> ck->cb;
  if (last >= ck->nb && imrt_grow (ck, last + 1) < 0)
    return -1;
  if (is_data (who->kind) && who->kind != OWN_DATA && excl_need (ck) < 0)
    return -1;
  for (uint64_t k = start; k <= last; k++) {
    uint64_t rc = qk_refblock_get (ck->imrt, ck->order, k);
    bool claimed = rc != 0, x = excl_get (ck, k, claimed);

    if (rc + mult > ck->refmax || rc + mult < rc) {
      uint64_t over = mult - (ck->refmax - rc);
      report (ck, PR_REFCOUNT_OVERFLOW, over,
              LOC (.host_offset = k << ck->cb, .found = rc, .expected = rc + mult),
              "overflow cluster offset=0x%" PRIx64 ": more references than "
              "%u-bit refcounts can count; widen them with qemu-img amend "
              "-o refcount_bits=", k << ck->cb, ck->h->refcount_bits);
      rc = ck->refmax;
    }
    else
      rc += mult;
    qk_refblock_set (ck->imrt, ck->order, k, rc);
    imrt_touch (ck, k);

    switch (who->kind) {
    case OWN_DATA:
      if (x && add_conflict (ck, k, who) < 0)   /* metadata, or active data */
        return -1;
      excl_set (ck, k);
      break;
    case OWN_SNAPDATA:
    case OWN_BMDATA:
    case OWN_CDATA:
      if (x && is_meta (ck, k) && add_conflict (ck, k, who) < 0)
        return -1;
      break;
    default:
      if (claimed && add_conflict (ck, k, who) < 0)
        return -1;
      excl_set (ck, k);
      break;
    }
  }
  if (!is_data (who->kind) && who->kind != OWN_L2) {
    struct owner o = *who;
    o.first = start;
    o.n = last - start + 1;
    add_owner (ck, &o);
  }
  return 0;
}

/* ---- the map handed to the repair ---- */

uint64_t
qk_refmap_get (const struct qk_refmap *map, uint64_t k)
{
  return k < map->n ? qk_refblock_get (map->counted, map->order, k) : 0;
}

uint64_t
qk_refmap_next_block (const struct qk_refmap *map, uint64_t per, uint64_t t)
{
  uint64_t k;

  if (t >= DIV_ROUND_UP (map->n, per))
    return UINT64_MAX;
  k = qk_refblock_next_used_pg (map->counted, map->counted_pg, map->order,
                                t * per, map->n);
  return k < map->n ? k / per : UINT64_MAX;
}

static void
refmap_dec (struct qk_refmap *map, uint64_t k)
{
  uint64_t v = qk_refmap_get (map, k);
  if (v)
    qk_refblock_set (map->counted, map->order, k, v - 1);
}

void
qk_refmap_drop_refstructs (struct qk_refmap *map, unsigned cluster_bits)
{
  if (!map->refstructs)
    return;
  if (map->reftable_len) {
    uint64_t first = map->reftable_offset >> cluster_bits;
    uint64_t last = (map->reftable_offset + map->reftable_len - 1)
                    >> cluster_bits;
    for (uint64_t k = first; k <= last; k++)
      refmap_dec (map, k);
  }
  for (size_t t = 0; t < map->reftable_n; t++)
    if (map->refblocks && (map->refblocks[t / 8] >> (t & 7)) & 1)
      refmap_dec (map, (map->reftable[t] & QK_REFT_OFFSET_MASK)
                       >> cluster_bits);
  map->refstructs = false;
}

void
qk_refmap_recycle (struct qk_refmap *map)
{
  struct qk_refmap_spare sp = map->spare;

  if (map->counted) {
    free (sp.imrt);
    free (sp.imrt_pg);
    sp.imrt = map->counted;
    sp.imrt_pg = map->counted_pg;
    sp.imrt_len = ((map->n << map->order) + 7) / 8;
    sp.pg_len = DIV_ROUND_UP (sp.imrt_len, 1U << QK_REFPG_SHIFT);
    map->counted = map->counted_pg = NULL;
  }
  if (map->conflicted) {
    free (sp.bits[1]);
    sp.bits[1] = map->conflicted;
    sp.bits_len[1] = map->n / 8 + 1;
    map->conflicted = NULL;
  }
  map->spare = (struct qk_refmap_spare) { 0 };
  qk_refmap_free (map);
  map->spare = sp;
}

void
qk_refmap_free (struct qk_refmap *map)
{
  spare_free (&map->spare);
  free (map->counted);
  free (map->counted_pg);
  free (map->refblocks);
  free (map->reftable);
  free (map->conflicted);
  memset (map, 0, sizeof *map);
}
