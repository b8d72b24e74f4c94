/* The consistency checker: qemu-img check's algorithm, message by message,
 * plus what it does not look at. Strictly read-only.
 *
 * Phases over one shared state (struct ck):
 *   0 header and extensions; 1+2 the active and snapshot L1 tables and
 *   every distinct L2 table, read once in offset order however many L1
 *   tables share it; snapshot table; 3 refcount table and blocks; 4 counted
 *   references against stored refcounts; 5 COPIED flags (done in the L2
 *   pass); 6 bitmaps; 7 backing chain and data file; 8 --deep.
 *
 * The in-memory refcount table (IMRT) has the image's refcount width and
 * one entry per host cluster of the file, like qemu-img's. One more bit
 * per cluster says whether active data or metadata claimed it (a non-zero
 * count says that something did), which names overlaps and duplicate
 * mappings precisely; metadata is told from active data by looking the
 * cluster up among the metadata claimed so far. That bit map is only
 * made once a claim that is neither (snapshot, bitmap or compressed data)
 * comes: until then the counts say it all. */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/path.h"
#include "util/problems.h"
#include "image/image.h"
#include "check/check.h"

#pragma GCC diagnostic ignored "-Woverride-init"

/* ---- the problem table ---- */

enum {
#define PROBLEM(code, name, cls, desc) PR_##name,
#include "check/problems.def"
#undef PROBLEM
  PR__COUNT
};

static const struct qk_prow rows[] = {
#define PROBLEM(code, name, cls, desc) { code, #name, QK_CLASS_##cls, desc },
#include "check/problems.def"
#undef PROBLEM
};

QK_EXPORT size_t
qk_problem_count (void)
{
  return PR__COUNT;
}

QK_EXPORT int
qk_problem_info (size_t i, uint32_t *code, const char **name,
                 enum qk_problem_class *cls, const char **description)
{
  return qk_prows_info (rows, PR__COUNT, "problem", i, code, name, cls,
                        description);
}

QK_EXPORT const char *
qk_problem_class_name (enum qk_problem_class cls)
{
  switch (cls) {
  case QK_CLASS_INFO: return "info";
  case QK_CLASS_WARNING: return "warning";
  case QK_CLASS_LEAK: return "leak";
  case QK_CLASS_CORRUPTION: return "corruption";
  case QK_CLASS_ERROR: return "error";
  }
  return "unknown";
}

/* ---- state ---- */

enum owner_kind {
  OWN_HEADER, OWN_L1, OWN_L2, OWN_REFTABLE, OWN_REFBLOCK, OWN_SNAPTABLE,
  OWN_BMDIR, OWN_BMTABLE, OWN_CRYPTO, OWN_DATA, OWN_SNAPDATA, OWN_BMDATA,
  OWN_CDATA,
};

struct owner {        /* a metadata structure and the clusters it covers */
  uint64_t first, n;  /* clusters */
  enum owner_kind kind;
  int64_t a;          /* L1: -1 active, else snapshot index; L2: L1 index;
                         refblock: reftable index; bitmap: bitmap index */
  int64_t b;          /* L2: source (-1 active, else snapshot index) */
};

/* Who has claimed a host cluster so far: nothing when its counted
 * refcount is 0; else snapshot, bitmap or compressed data only, unless its
 * "exclusive" bit says active data or metadata did too. Conflicts: active
 * data with active data or metadata; metadata with anything; snapshot,
 * bitmap or compressed data with metadata only (is_meta tells the
 * exclusive claims apart, for those claims alone). */
#define MAX_CONFLICTS 1024

struct conflict {
  uint64_t cluster;
  struct owner second;  /* the claim that collided */
};

struct l2ref {        /* one L1 entry pointing at an L2 table */
  uint64_t l2_offset;
  int32_t source;     /* -1 active, else snapshot index (< 65536) */
  uint32_t l1_index;
};

/* Every L1 entry of every L1 table, sorted by L2 offset before the L2
 * tables are walked: then also the record of which L2 table owns which
 * cluster (the L2 tables are not in the owner list). */
struct refs {
  struct l2ref *v;
  size_t n, cap;
};

struct range {        /* clusters [first, end) */
  uint64_t first, end;
};

/* A refcount block read, in the cache of struct ck. */
struct rbslot {
  uint64_t t;         /* its refcount table index + 1; 0: the slot is free */
  uint8_t *buf;       /* a cluster, or NULL */
  uint64_t used;      /* when last used (a tick) */
};

/* The cache's size: a power of two of slots, at least 2, with buffers for
 * all of them in at most this many bytes (16 blocks of 64 KiB, covering
 * 32 GiB of file at 16 bits). */
#define RB_CACHE_BYTES (1U << 20)

struct ck {
  struct qk_image *img;
  const struct qk_header *h;
  uint64_t cs;
  unsigned cb;
  unsigned order;     /* IMRT width (the image's) */
  uint64_t refmax;
  uint64_t file_len;
  bool data_file;
  bool counting;      /* refcounts can be counted at all */
  bool reftable_invalid;  /* phase_header reported the refcount table */
  const char *missing; /* metadata that could not be read (so an excess
                           refcount may be its, not a leak), or NULL */
  const char *uncounted; /* a snapshot whose references were not counted
                            (qemu-img counts its clusters as leaks, and so
                            does the check; a repair must not free them) */
  unsigned flags;

  uint8_t *imrt;
  uint64_t nb;        /* clusters covered by the IMRT */
  uint8_t *excl;      /* a bit per cluster: active data or metadata */

  struct owner *owners;   /* metadata claims but the L2 tables, in order */
  size_t n_owners, cap_owners;
  size_t n_owners_pre_l2; /* of which claimed before the L2 tables */
  struct refs refs;       /* the L2 tables (see struct refs) */
  size_t l2_walked;       /* refs.v[0 .. l2_walked) claimed so far */
  struct range *mu;       /* the owners' clusters: a sorted union, built */
  size_t n_mu;            /* when is_meta first needs it after an */
  bool mu_dirty;          /* owner was added */
  struct conflict *conf;
  uint8_t *conf_bits;     /* every conflicted cluster (conf is capped) */
  uint64_t dangling_end;  /* past-EOF references near the end: cluster */
  size_t n_conf;

  uint64_t *reftable;
  size_t reftable_n;
  bool reftable_counted;   /* phase_refcount_structs counted the table */
  uint8_t *rb_counted;     /* a bit per table index: its block was counted */

  uint64_t max_data_end;   /* for the data file size check */
  /* the L2 entry walk_l2 is counting (QK_NONE outside it): PAST_EOF
   * names it, so that a repair knows which entry to clear */
  uint64_t at_table, at_index, at_guest;

  /* The refcount blocks read, direct-mapped by refcount table index t
   * (slot t & (n_rbc - 1)), shared by the stored refcount lookups of the
   * COPIED checks in the L2 walk and by the comparison, which reads only
   * the blocks not in the cache. Walking the L2 tables in offset order
   * visits the data in guest order, which on a randomly written image is
   * random in host order, so one block of cache read a block per cluster;
   * now, while the blocks the walk needs have a slot each (any number in
   * host order, up to n_rbc at random), it reads each at most twice (see
   * rb_bufs), and the comparison reads it at most once more. */
  struct rbslot *rbc;
  size_t n_rbc;
  /* The slots with a buffer. There are two buffers, moved to the slot
   * that needs one, from the one used longest ago, until a block is read
   * again (it did not stay): only then does a slot get a buffer of its
   * own. Reading in host order then takes no more memory than two blocks
   * (the preallocated benchmark rows), reading at random as much as the
   * blocks read. */
  size_t *rb_bufs;
  size_t n_rb_bufs;
  uint8_t *rb_seen;   /* a bit per table index: its block was read */
  uint64_t rb_tick;
  bool rbc_nomem;     /* a buffer could not be allocated */
  /* stored_refcount: the table index and block of the previous lookup,
   * so that consecutive clusters of one block skip the lookup */
  uint64_t sr_t;
  const uint8_t *sr_buf;

  qk_problem_fn fn;
  void *opaque;
  struct qk_check_result *res;
  int cb_ret;
  /* messages formatted per problem code, then empty (0: no limit) */
  uint64_t msg_limit;
  uint64_t msg_count[PR__COUNT];
};

#define LOC(...) (&(const struct qk_problem) { \
    .host_offset = QK_NONE, .length = QK_NONE, .guest_offset = QK_NONE, \
    .guest_offset2 = QK_NONE, .table_offset = QK_NONE, .index = QK_NONE, \
    .expected = QK_NONE, .found = QK_NONE, __VA_ARGS__ })
#define NOLOC LOC (.count = 0)

static void report (struct ck *ck, int pr, uint64_t count,
                    const struct qk_problem *loc, const char *fmt, ...)
  __attribute__ ((format (printf, 5, 6)));

static void
report (struct ck *ck, int pr, uint64_t count, const struct qk_problem *loc,
        const char *fmt, ...)
{
  struct qk_problem p = *loc;
  char msg[1024];
  va_list ap;

  if ((ck->flags & QK_CHECK_NO_MESSAGES)
      || (ck->msg_limit && ++ck->msg_count[pr] > ck->msg_limit))
    msg[0] = '\0';
  else {
    va_start (ap, fmt);
    vsnprintf (msg, sizeof msg, fmt, ap);
    va_end (ap);
  }
  p.code = rows[pr].code;
  p.name = rows[pr].name;
  p.cls = rows[pr].cls;
  p.message = msg;
  p.count = count;
  switch (p.cls) {
  case QK_CLASS_CORRUPTION: ck->res->corruptions += count; break;
  case QK_CLASS_LEAK: ck->res->leaks += count; break;
  case QK_CLASS_ERROR: ck->res->check_errors += count; break;
  case QK_CLASS_WARNING: ck->res->warnings++; break;
  case QK_CLASS_INFO: ck->res->infos++; break;
  }
  if (ck->fn && ck->cb_ret == 0)
    ck->cb_ret = ck->fn (ck->opaque, &p);
}

/* ---- IMRT ---- */

static int
imrt_grow (struct ck *ck, uint64_t need)
{
  uint64_t old = ((ck->nb << ck->order) + 7) / 8;
  uint64_t bytes = ((need << ck->order) + 7) / 8;
  uint8_t *n, *c;

  /* The first allocation is calloc'ed: pages of clusters nothing claims
   * (holes in the file) are then never touched, as with qemu-img. */
  if (ck->imrt == NULL) {
    n = calloc (bytes ? bytes : 1, 1);
    if (n == NULL)
      goto nomem;
    ck->imrt = n;
    ck->nb = need;
    return 0;
  }
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

/* The exclusive bits exist from the first claim that is not exclusive
 * (snapshot, bitmap or compressed data) on: until then every claim was,
 * so they are the clusters counted so far. Images whose snapshots share
 * all their tables with the active image, and that have no compressed
 * clusters or bitmaps, never need them. */
static int
excl_need (struct ck *ck)
{
  if (ck->excl)
    return 0;
  ck->excl = calloc (ck->nb / 8 + 1, 1);
  if (ck->excl == NULL) {
    set_error (ENOMEM, "cannot allocate the claim map of %" PRIu64
               " clusters", ck->nb);
    return -1;
  }
  for (uint64_t k = 0; k < ck->nb; k++)
    if (qk_refblock_get (ck->imrt, ck->order, k))
      ck->excl[k / 8] |= 1U << (k & 7);
  return 0;
}

/* whether active data or metadata claimed cluster k, given whether
 * anything did */
static inline bool
excl_get (const struct ck *ck, uint64_t k, bool claimed)
{
  return ck->excl ? (ck->excl[k / 8] >> (k & 7)) & 1 : claimed;
}

static inline void
excl_set (struct ck *ck, uint64_t k)
{
  if (ck->excl)
    ck->excl[k / 8] |= 1U << (k & 7);
}

/* Data claims: not exclusive (but active data's) and not recorded as
 * owners. */
static bool
is_data (enum owner_kind k)
{
  return k == OWN_DATA || k == OWN_SNAPDATA || k == OWN_BMDATA
         || k == OWN_CDATA;
}

static bool
same_owner (const struct owner *x, const struct owner *y)
{
  return x->kind == y->kind && x->a == y->a && x->b == y->b;
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

static void
add_conflict (struct ck *ck, uint64_t k, const struct owner *o)
{
  if (ck->conf_bits == NULL)
    ck->conf_bits = calloc (ck->nb / 8 + 1, 1);
  if (ck->conf_bits && k < ck->nb)
    ck->conf_bits[k / 8] |= 1U << (k & 7);
  if (ck->n_conf < MAX_CONFLICTS) {
    ck->conf[ck->n_conf].cluster = k;
    ck->conf[ck->n_conf].second = *o;
    ck->n_conf++;
  }
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

/* The first of the sorted L2 references whose table, a cluster long from
 * any byte offset, may cover cluster k (its last cluster is >= k); the
 * tables at refs.v[i ..] that cover k start there. */
static size_t
l2_lower (const struct ck *ck, uint64_t k)
{
  size_t lo = 0, hi = ck->refs.n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if ((ck->refs.v[mid].l2_offset + ck->cs - 1) >> ck->cb < k)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* Whether refs.v[i], an L2 table, has claimed cluster k (inc_refs does
 * not claim a table past the end of the file). */
static bool
l2_claims (const struct ck *ck, size_t i, uint64_t k)
{
  uint64_t off = ck->refs.v[i].l2_offset;
  return i < ck->l2_walked && off >> ck->cb <= k && off < ck->file_len;
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
static int
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

    switch (who->kind) {
    case OWN_DATA:
      if (x)                           /* metadata, or active data */
        add_conflict (ck, k, who);
      excl_set (ck, k);
      break;
    case OWN_SNAPDATA:
    case OWN_BMDATA:
    case OWN_CDATA:
      if (x && is_meta (ck, k))
        add_conflict (ck, k, who);
      break;
    default:
      if (claimed)
        add_conflict (ck, k, who);
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

/* ---- phase 0: header and extensions ---- */

static void
feature_bits (struct ck *ck, int type, uint64_t bits, int pr)
{
  for (unsigned b = 0; b < 64; b++)
    if (bits & (1ULL << b)) {
      const char *n = ck->img->feature_names[type][b];
      char what[128];
      snprintf (what, sizeof what, "%u%s%s%s", b, n ? " (" : "",
                n ? n : "", n ? ")" : "");
      report (ck, pr, 1, LOC (.index = b), "unknown %s feature bit %s",
              type == 0 ? "incompatible" : type == 1 ? "compatible"
              : "autoclear", what);
    }
}

static void
phase_header (struct ck *ck)
{
  const struct qk_header *h = ck->h;
  struct qk_image *img = ck->img;
  uint64_t per_l1 = ck->cs * h->l2_entries;
  uint64_t need_l1 = h->size / per_l1 + (h->size % per_l1 != 0);
  size_t ext_end = ck->cs;

  if (h->incompatible_features & QK_INCOMPAT_DIRTY)
    report (ck, PR_HDR_DIRTY, 1, NOLOC,
            "the dirty bit is set: the image was not closed cleanly and its "
            "refcounts may be stale (leaks below are expected); QEMU rebuilds "
            "them on its next read-write open");
  if (h->incompatible_features & QK_INCOMPAT_CORRUPT)
    report (ck, PR_HDR_CORRUPT, 1, NOLOC,
            "the corrupt bit is set: QEMU refuses to open the image read-write "
            "until it is repaired");
  feature_bits (ck, 0, h->incompatible_features & ~QK_INCOMPAT_KNOWN,
                PR_HDR_UNKNOWN_INCOMPAT);
  feature_bits (ck, 1, h->compatible_features & ~QK_COMPAT_KNOWN,
                PR_HDR_UNKNOWN_COMPAT);
  feature_bits (ck, 2, h->autoclear_features & ~QK_AUTOCLEAR_KNOWN,
                PR_HDR_UNKNOWN_AUTOCLEAR);
  if (h->header_length % 8)
    report (ck, PR_HDR_LENGTH, 1, LOC (.found = h->header_length),
            "header_length %u is not a multiple of 8", h->header_length);
  if (h->refcount_order > 6)
    report (ck, PR_HDR_REFCOUNT_ORDER, 1, LOC (.found = h->refcount_order),
            "refcount_order %u is above 6: refcounts cannot be checked",
            h->refcount_order);
  if (h->compression_type > 1
      || ((h->incompatible_features & QK_INCOMPAT_COMPRESSION) != 0)
         != (h->compression_type != 0))
    report (ck, PR_HDR_COMPRESSION, 1, LOC (.found = h->compression_type),
            "compression type %u %s the compression type incompatible bit",
            h->compression_type,
            h->incompatible_features & QK_INCOMPAT_COMPRESSION ? "with"
                                                               : "without");
  /* qcow2_validate_table: the offset is checked even for an empty table */
  if ((uint64_t) h->l1_size * 8 > (32ULL << 20)) {
    ck->missing = "the active L1 table";
    report (ck, PR_HDR_L1_INVALID, 1, LOC (.found = h->l1_size),
            "the active L1 table has %u entries, more than QEMU's 32 MiB",
            h->l1_size);
  }
  else if (!IS_ALIGNED (h->l1_table_offset, ck->cs)
           || h->l1_table_offset > INT64_MAX - (uint64_t) h->l1_size * 8) {
    ck->missing = "the active L1 table";
    report (ck, PR_HDR_L1_INVALID, 1,
            LOC (.host_offset = h->l1_table_offset),
            "the active L1 table offset 0x%" PRIx64 " is not cluster aligned "
            "or too large", h->l1_table_offset);
  }
  else if (h->l1_size < need_l1) {
    /* QEMU refuses the image; the entries past l1_size are unknown */
    ck->missing = "the active L1 table";
    report (ck, PR_HDR_L1_INVALID, 1,
            LOC (.found = h->l1_size, .expected = need_l1),
            "the active L1 table has %u entries but the virtual size needs %"
            PRIu64, h->l1_size, need_l1);
  }
  if (h->refcount_table_clusters == 0
      && IS_ALIGNED (h->refcount_table_offset, ck->cs))
    /* qemu-img check (BDRV_O_CHECK) accepts it and counts on */
    report (ck, PR_REFTABLE_EMPTY, 1, LOC (.host_offset = h->refcount_table_offset),
            "the refcount table is empty (refcount_table_clusters is 0): "
            "every refcount reads as 0");
  else if ((uint64_t) h->refcount_table_clusters * ck->cs > (8ULL << 20)
           || !IS_ALIGNED (h->refcount_table_offset, ck->cs)
           || h->refcount_table_offset
              > INT64_MAX - (uint64_t) h->refcount_table_clusters * ck->cs
           || h->refcount_table_clusters == 0) {
    ck->reftable_invalid = true;
    report (ck, PR_HDR_REFTABLE_INVALID, 1,
            LOC (.host_offset = h->refcount_table_offset,
                 .found = h->refcount_table_clusters),
            "the refcount table (%u clusters at 0x%" PRIx64 ") is empty, "
            "misaligned or larger than 8 MiB", h->refcount_table_clusters,
            h->refcount_table_offset);
  }
  /* qcow2_do_open: the offset may be the end of cluster 0 (with an empty
   * name), the name at most 1023 bytes and within cluster 0 */
  if (h->backing_file_offset
      && (h->backing_file_offset > ck->cs
          || h->backing_file_size > MIN (1023, ck->cs - h->backing_file_offset)))
    report (ck, PR_HDR_BACKING_NAME, 1,
            LOC (.host_offset = h->backing_file_offset,
                 .length = h->backing_file_size),
            "the backing file name (%u bytes at 0x%" PRIx64 ") does not fit "
            "in the first cluster or is longer than 1023 bytes",
            h->backing_file_size, h->backing_file_offset);
  if (h->crypt_method > QK_CRYPT_LUKS)
    report (ck, PR_HDR_CRYPT_METHOD, 1, LOC (.found = h->crypt_method),
            "unknown encryption method %u", h->crypt_method);
  else if (h->crypt_method)
    report (ck, PR_HDR_ENCRYPTED, 1, NOLOC,
            "the image is encrypted (%s)",
            h->crypt_method == QK_CRYPT_LUKS ? "LUKS" : "legacy AES");
  if ((h->autoclear_features & QK_AUTOCLEAR_DATA_FILE_RAW)
      && !(h->incompatible_features & QK_INCOMPAT_DATA_FILE))
    report (ck, PR_HDR_FEATURE_DEPENDENCY, 1, NOLOC,
            "raw external data bit without the external data file bit");
  if ((h->autoclear_features & QK_AUTOCLEAR_DATA_FILE_RAW)
      && h->backing_file_offset)
    report (ck, PR_HDR_FEATURE_DEPENDENCY, 1, NOLOC,
            "raw external data with a backing file");
  if ((h->incompatible_features & QK_INCOMPAT_EXTL2) && ck->cb < 14)
    report (ck, PR_HDR_FEATURE_DEPENDENCY, 1, NOLOC,
            "extended L2 entries with %" PRIu64 "-byte clusters (at least "
            "16 KiB needed)", ck->cs);
  if (h->crypt_method == QK_CRYPT_LUKS && !img->has_crypto_ext)
    report (ck, PR_HDR_FEATURE_DEPENDENCY, 1, NOLOC,
            "LUKS encryption without the encryption header pointer");

  /* extensions */
  if (h->backing_file_offset && h->backing_file_offset <= ck->cs)
    ext_end = h->backing_file_offset;
  for (size_t i = 0; i < img->n_ext; i++) {
    const struct qk_extension *e = &img->ext[i];
    for (size_t k = 0; k < i; k++)
      if (img->ext[k].magic == e->magic) {
        report (ck, PR_EXT_DUPLICATE, 1, LOC (.host_offset = e->offset),
                "header extension 0x%08x (%s) at 0x%" PRIx64 " repeats the "
                "one at 0x%" PRIx64, e->magic, e->name, e->offset,
                img->ext[k].offset);
        break;
      }
    if (e->magic == QK_EXT_BACKING_FORMAT && e->length >= 16)
      report (ck, PR_EXT_BACKING_FORMAT_LONG, 1,
              LOC (.host_offset = e->offset, .found = e->length),
              "the backing format extension is %u bytes long", e->length);
    if (e->magic == QK_EXT_FEATURE_TABLE && e->length % 48)
      report (ck, PR_EXT_FEATURE_TABLE, 1,
              LOC (.host_offset = e->offset, .found = e->length),
              "the feature name table is %u bytes, not a multiple of 48",
              e->length);
  }
  /* qcow2_read_extensions' own walk over the raw headers: it checks an
   * extension's length before its magic, so even the end marker must fit
   * in the area (else "Header extension too large"). And the area ends
   * where the backing file name starts, so the image's walk never holds
   * an extension overlapping the name: say when one runs into it. */
  {
    uint64_t off = h->header_length;
    while (off < ext_end && off + 8 <= ck->cs) {
      uint32_t magic = be32_get (img->cluster0 + off);
      uint64_t len = be32_get (img->cluster0 + off + 4);
      uint64_t e_end = off + 8 + ((len + 7) & ~7ULL);
      if (magic == 0) {
        if (off + 8 > ext_end || len > ext_end - off - 8)
          report (ck, PR_EXT_OVERRUN, 1,
                  LOC (.host_offset = off, .found = len),
                  "the end marker of the header extensions at 0x%" PRIx64
                  " has length %" PRIu64 ", past the end of the extension "
                  "area at 0x%zx (QEMU: Header extension too large)", off,
                  len, ext_end);
        break;
      }
      if (h->backing_file_offset && e_end > h->backing_file_offset
          && off < h->backing_file_offset) {
        report (ck, PR_EXT_OVERLAPS_BACKING_NAME, 1,
                LOC (.host_offset = off, .length = e_end - off),
                "header extension 0x%08x at 0x%" PRIx64 " (%" PRIu64
                " bytes) runs into the backing file name at 0x%" PRIx64,
                magic, off, len, h->backing_file_offset);
        break;
      }
      if (e_end > ext_end)
        break;    /* the image's walk left a warning (below) */
      off = e_end;
    }
  }
  /* An extension walk that stopped early (the image says why). */
  if (img->ext_overrun)
    report (ck, PR_EXT_OVERRUN, 1, NOLOC, "%s (area ends at 0x%zx)",
            img->ext_overrun, ext_end);
  if (img->backing_name && img->backing_name[0]
      && img->backing_format_ext == NULL)
    report (ck, PR_EXT_BACKING_FORMAT_MISSING, 1, NOLOC,
            "backing file '%s' has no recorded format (QEMU must probe it)",
            img->backing_name);
  if ((h->incompatible_features & QK_INCOMPAT_DATA_FILE)
      != (img->data_file_name ? QK_INCOMPAT_DATA_FILE : 0))
    report (ck, PR_EXT_DATA_FILE_NAME, 1, NOLOC,
            img->data_file_name
            ? "an external data file name without the external data file bit"
            : "the external data file bit without a data file name");
}

/* ---- phases 1 and 2: L1 and L2 tables ---- */

static const char *
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

/* qcow2_get_refcount as check_oflag_copied sees it: a refcount in a refcount
 * block whose offset is not cluster aligned cannot be read (QEMU signals
 * corruption and fails), and such entries are skipped. */
static int stored_refcount_lookup (struct ck *ck, uint64_t cluster,
                                   uint64_t *rc);

static inline __attribute__ ((always_inline)) int
stored_refcount (struct ck *ck, uint64_t cluster, uint64_t *rc)
{
  /* the block of the previous lookup, without a call (sr_buf is only set
   * for widths up to 64 bits) */
  if (ck->sr_buf) {
    unsigned per_bits = ck->cb + 3 - ck->h->refcount_order;
    if (cluster >> per_bits == ck->sr_t) {
      *rc = qk_refblock_get (ck->sr_buf, ck->h->refcount_order,
                             cluster & ((UINT64_C (1) << per_bits) - 1));
      return 0;
    }
  }
  return stored_refcount_lookup (ck, cluster, rc);
}

/* A buffer for slot s (which has none): a new one while there are fewer
 * than two, or when grow says so, else the buffer of the slot used
 * longest ago. */
static int
refblock_buffer (struct ck *ck, struct rbslot *s, bool grow)
{
  size_t si = s - ck->rbc, v = 0;

  if (ck->n_rb_bufs < 2 || grow) {
    if ((s->buf = malloc (ck->cs)) == NULL) {
      set_error (ENOMEM, "malloc");
      ck->rbc_nomem = true;
      return -1;
    }
    ck->rb_bufs[ck->n_rb_bufs++] = si;
    return 0;
  }
  for (size_t i = 1; i < ck->n_rb_bufs; i++)
    if (ck->rbc[ck->rb_bufs[i]].used < ck->rbc[ck->rb_bufs[v]].used)
      v = i;
  s->buf = ck->rbc[ck->rb_bufs[v]].buf;
  ck->rbc[ck->rb_bufs[v]] = (struct rbslot) { 0 };
  ck->rb_bufs[v] = si;
  return 0;
}

/* The refcount block of table index t, at rb (aligned, not 0), from the
 * cache or read into it; NULL if it cannot be read. grow: a block read
 * again (evicted) gets a buffer of its own, within the cache's size
 * (false in the comparison, which reads in order). */
static const uint8_t *
refblock (struct ck *ck, uint64_t t, uint64_t rb, bool grow)
{
  struct rbslot *s = &ck->rbc[t & (ck->n_rbc - 1)];
  bool seen = t < ck->reftable_n && (ck->rb_seen[t / 8] >> (t & 7)) & 1;

  if (s->buf && s->t == t + 1) {
    s->used = ++ck->rb_tick;
    return s->buf;
  }
  if (s->buf == NULL && refblock_buffer (ck, s, grow && seen) < 0)
    return NULL;
  if (ck->sr_buf == s->buf)
    ck->sr_buf = NULL;
  s->t = 0;
  s->used = ++ck->rb_tick;
  if (qk_source_read_zeropad (ck->img->src, s->buf, ck->cs, rb) < 0)
    return NULL;
  s->t = t + 1;
  if (t < ck->reftable_n)
    ck->rb_seen[t / 8] |= 1U << (t & 7);
  return s->buf;
}

/* qk_image_refcount's answers, from the cache */
static int
stored_refcount_lookup (struct ck *ck, uint64_t cluster, uint64_t *rc)
{
  unsigned per_bits;
  uint64_t t, rb;
  const uint8_t *buf;

  if (ck->h->refcount_order > 6)    /* qk_image_refcount says why */
    return qk_image_refcount (ck->img, cluster, rc);
  per_bits = ck->cb + 3 - ck->h->refcount_order;
  t = cluster >> per_bits;
  rb = t < ck->reftable_n ? ck->reftable[t] & QK_REFT_OFFSET_MASK : 0;
  if (rb == 0) {
    *rc = 0;
    return 0;
  }
  if (!IS_ALIGNED (rb, ck->cs) || rb > INT64_MAX - ck->cs)
    return -1;
  if ((buf = refblock (ck, t, rb, true)) == NULL)
    return -1;
  ck->sr_t = t;
  ck->sr_buf = buf;
  *rc = qk_refblock_get (buf, ck->h->refcount_order,
                         cluster & ((UINT64_C (1) << per_bits) - 1));
  return 0;
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

static int
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

/* ---- phase 3: refcount structures ---- */

static int
phase_refcount_structs (struct ck *ck)
{
  const struct qk_header *h = ck->h;
  struct owner o = { .kind = OWN_REFTABLE };
  uint64_t end;

  if (inc_refs (ck, h->refcount_table_offset, ck->reftable_n * 8, 1, &o) < 0)
    return -1;
  ck->reftable_counted = ck->reftable_n
    && !ADD_OVERFLOW (h->refcount_table_offset, ck->reftable_n * 8, &end)
    && end < ck->file_len + ck->cs;
  if (ck->img->has_crypto_ext && ck->img->crypto_length) {
    struct owner oc = { .kind = OWN_CRYPTO };
    if (inc_refs (ck, ck->img->crypto_offset, ck->img->crypto_length, 1,
                  &oc) < 0)
      return -1;
  }
  return 0;
}

static int
phase_refblocks (struct ck *ck)
{
  for (size_t i = 0; i < ck->reftable_n; i++) {
    uint64_t e = ck->reftable[i];
    uint64_t off = e & QK_REFT_OFFSET_MASK;
    uint64_t cl = off >> ck->cb;
    const struct qk_problem *loc =
      LOC (.table_offset = ck->h->refcount_table_offset, .index = i,
           .found = e);

    if (e & QK_REFT_RESERVED_MASK) {
      report (ck, PR_REFT_RESERVED, 1, loc,
              "refcount table entry %zu has reserved bits set (0x%016" PRIx64
              ")", i, e);
      continue;
    }
    if (!IS_ALIGNED (off, ck->cs)) {
      report (ck, PR_REFT_UNALIGNED, 1, loc,
              "refcount block %zu (0x%" PRIx64 ") is not cluster aligned; "
              "refcount table entry corrupted", i, off);
      continue;
    }
    if (cl >= ck->nb) {
      report (ck, PR_REFT_OUTSIDE, 1, loc,
              "refcount block %zu (0x%" PRIx64 ") is outside image", i, off);
      continue;
    }
    if (off) {
      struct owner o = { .kind = OWN_REFBLOCK, .a = (int64_t) i };
      uint64_t rc;
      if (inc_refs (ck, off, ck->cs, 1, &o) < 0)
        return -1;
      if (ck->rb_counted)
        ck->rb_counted[i / 8] |= 1U << (i & 7);
      rc = qk_refblock_get (ck->imrt, ck->order, cl);
      if (rc != 1)
        report (ck, PR_REFBLOCK_REFCOUNT, 1,
                LOC (.table_offset = ck->h->refcount_table_offset, .index = i,
                     .host_offset = off, .found = rc, .expected = 1),
                "refcount block %zu refcount=%" PRIu64, i, rc);
    }
  }
  return 0;
}

/* ---- phase 6: bitmaps ---- */

static void
add_missing (struct ck *ck, const char *what)
{
  if (ck->missing == NULL)
    ck->missing = what;
  else if (strcmp (ck->missing, what) != 0)
    ck->missing = "part of the metadata";
}

/* The bitmap table size QEMU requires (load_bitmap_data): the bitmap
 * serialized in 64-bit words, in whole clusters. */
static uint64_t
bitmap_table_clusters (const struct ck *ck, unsigned gran_bits)
{
  uint64_t bits = ck->h->size / (1ULL << gran_bits)
                  + (ck->h->size % (1ULL << gran_bits) != 0);
  uint64_t bytes = (bits + 63) / 64 * 8;
  return DIV_ROUND_UP (bytes, ck->cs);
}

/* qcow2_check_bitmaps_refcounts, plus what QEMU checks when it loads the
 * bitmaps on open (check_dir_entry, load_bitmap_data) and the flags. */
static bool
bitmap_table_usable (const struct ck *ck, const struct qk_bitmap *b)
{
  return b->table_size != 0 && b->table_offset != 0
         && IS_ALIGNED (b->table_offset, ck->cs)
         && b->table_size <= QK_MAX_BITMAP_TABLE_ENTRIES;
}

static int
phase_bitmaps (struct ck *ck)
{
  struct qk_image *img = ck->img;
  const struct qk_header *h = ck->h;
  const struct qk_bitmaps_ext *be = &img->bitmaps_ext;
  bool consistent = (h->autoclear_features & QK_AUTOCLEAR_BITMAPS) != 0;
  bool failed = false;

  if (!img->has_bitmaps_ext) {
    if (consistent)
      report (ck, PR_BM_AUTOCLEAR_NO_EXT, 1, NOLOC,
              "the 'bitmaps' autoclear bit is set but there is no bitmaps "
              "extension");
    return 0;
  }
  if (!consistent) {
    /* QEMU ignores the extension (and drops it on its next read-write
     * open), so what it points to is not referenced: leaks, as qemu-img
     * check counts them. */
    report (ck, PR_BM_AUTOCLEAR, 1, NOLOC,
            "the bitmaps extension is present but the 'bitmaps' autoclear bit "
            "is clear: all %u bitmaps must be considered inconsistent, and "
            "QEMU ignores them (their clusters are leaks)", be->nb_bitmaps);
    return 0;
  }
  if (be->nb_bitmaps == 0 || be->nb_bitmaps > QK_MAX_BITMAPS
      || be->directory_size > QK_MAX_BITMAP_DIR
      || !IS_ALIGNED (be->directory_offset, ck->cs)) {
    report (ck, PR_BM_DIRECTORY, 1,
            LOC (.host_offset = be->directory_offset,
                 .length = be->directory_size, .found = be->nb_bitmaps),
            "the bitmaps extension is invalid: %u bitmaps, directory of %"
            PRIu64 " bytes at 0x%" PRIx64, be->nb_bitmaps,
            be->directory_size, be->directory_offset);
    add_missing (ck, "the bitmap directory");
    return 0;
  }
  {
    struct owner o = { .kind = OWN_BMDIR };
    if (inc_refs (ck, be->directory_offset, be->directory_size, 1, &o) < 0)
      return -1;
  }
  if (img->n_bitmaps < be->nb_bitmaps) {
    report (ck, PR_BM_DIRECTORY, 1,
            LOC (.host_offset = be->directory_offset,
                 .length = be->directory_size, .found = img->n_bitmaps,
                 .expected = be->nb_bitmaps),
            "the bitmap directory at 0x%" PRIx64 " (%" PRIu64 " bytes) holds "
            "%zu readable entries of %u", be->directory_offset,
            be->directory_size, img->n_bitmaps, be->nb_bitmaps);
    add_missing (ck, "the bitmap directory");
    failed = true;
  }
  for (size_t i = 0; i < img->n_bitmaps; i++) {
    const struct qk_bitmap *b = &img->bitmaps[i].b;
    uint64_t phys = (uint64_t) b->table_size * ck->cs;
    const struct qk_problem *loc = LOC (.table_offset = b->entry_offset,
                                        .index = i);
    const char *bad = NULL;
    bool gran_ok = b->granularity_bits >= 9 && b->granularity_bits <= 31;

    if (b->table_size == 0) bad = "its table is empty";
    else if (b->table_offset == 0 || !IS_ALIGNED (b->table_offset, ck->cs))
      bad = "its table offset is zero or not cluster aligned";
    else if (b->table_size > QK_MAX_BITMAP_TABLE_ENTRIES)
      bad = "its table is too large";
    else if (!gran_ok)
      bad = "its granularity is outside 512 B to 2 GiB";
    else if (b->flags & QK_BME_RESERVED_FLAGS)
      bad = "it has reserved flags set";
    else if (strlen (b->name) > 1023) bad = "its name is too long";
    else if (b->type != 1) bad = "its type is not dirty tracking";
    else if (b->extra_data_size) bad = "it has extra data";
    else if (phys > 0x20000000ULL) bad = "its table covers too much";
    else if (!(b->flags & QK_BITMAP_IN_USE)
             && h->size > ((phys * 8) << b->granularity_bits))
      bad = "its table is too small for the virtual size";
    if (bad) {
      /* qemu-img counts one corruption for the whole directory */
      report (ck, PR_BM_ENTRY, failed ? 0 : 1, loc,
              "bitmap '%s' (directory entry %zu): %s", b->name, i, bad);
      failed = true;
    }
    else if (b->table_size != bitmap_table_clusters (ck, b->granularity_bits))
      report (ck, PR_BM_TABLE_SIZE, 1,
              LOC (.table_offset = b->entry_offset, .index = i,
                   .found = b->table_size,
                   .expected = bitmap_table_clusters (ck,
                                                      b->granularity_bits)),
              "bitmap '%s': its table has %u entries where the virtual size "
              "at its granularity needs %" PRIu64 " (QEMU refuses to load "
              "it)", b->name, b->table_size,
              bitmap_table_clusters (ck, b->granularity_bits));
    if (b->flags & QK_BITMAP_IN_USE)
      report (ck, PR_BM_IN_USE, 1, loc,
              "bitmap '%s' is in use: the VM did not close it; incremental "
              "backups based on it will fail", b->name);
    for (size_t k = 0; k < i; k++)
      if (strcmp (img->bitmaps[k].b.name, b->name) == 0)
        report (ck, PR_BM_DUPLICATE_NAME, 1, loc,
                "bitmaps %zu and %zu are both named '%s' (QEMU refuses to "
                "open the image)", k, i, b->name);
  }
  /* The tables: every one whose pointer is usable is counted, even when
   * its directory entry is bad in other ways (qemu-img stops at a bad
   * directory and counts nothing; what the entries point to is still in
   * use, not leaked). */
  /* The tables first, then the data: metadata is then claimed in one
   * go, before the data claims that may have to look it up. */
  for (size_t i = 0; i < img->n_bitmaps; i++) {
    const struct qk_bitmap *b = &img->bitmaps[i].b;
    struct owner ot = { .kind = OWN_BMTABLE, .a = (int64_t) i };

    if (bitmap_table_usable (ck, b)
        && inc_refs (ck, b->table_offset, (uint64_t) b->table_size * 8, 1,
                     &ot) < 0)
      return -1;
  }
  for (size_t i = 0; i < img->n_bitmaps; i++) {
    const struct qk_bitmap *b = &img->bitmaps[i].b;
    struct owner od = { .kind = OWN_BMDATA, .a = (int64_t) i };
    uint64_t *tab;
    uint32_t n;

    if (!bitmap_table_usable (ck, b)) {
      if (b->table_size || b->table_offset)
        add_missing (ck, "a bitmap table");
      continue;
    }
    if (qk_image_read_bitmap_table (img, i, &tab, &n) < 0) {
      report (ck, PR_BM_TABLE_ENTRY, 1,
              LOC (.host_offset = b->table_offset),
              "bitmap '%s': its table cannot be read: %s", b->name,
              qk_get_error ());
      add_missing (ck, "a bitmap table");
      continue;
    }
    for (uint32_t k = 0; k < n; k++) {
      uint64_t e = tab[k], off = e & QK_BME_TABLE_OFFSET_MASK;
      if ((e & QK_BME_TABLE_RESERVED)
          || (off && ((e & 1) || !IS_ALIGNED (off, ck->cs))))
        report (ck, PR_BM_TABLE_ENTRY, 1,
                LOC (.table_offset = b->table_offset, .index = k, .found = e),
                "bitmap '%s': table entry %u = 0x%016" PRIx64 " is invalid",
                b->name, k, e);
      /* A cluster an entry points to is in use even when the entry has
       * bad bits (qemu-img skips it, so it would call it leaked). */
      if (off && IS_ALIGNED (off, ck->cs)
          && inc_refs (ck, off, ck->cs, 1, &od) < 0) {
        free (tab);
        return -1;
      }
    }
    free (tab);
  }
  return 0;
}

/* ---- phase 4: compare ---- */

static int
phase_compare (struct ck *ck)
{
  const struct qk_header *h = ck->h;
  uint64_t per = ck->cs * 8 >> h->refcount_order;
  uint64_t highest = 0, last_word = 0;
  bool any = false, any_word = false;
  bool word = ck->order == h->refcount_order && ck->order >= 3;
  uint64_t wn = word ? 64U >> ck->order : 1;   /* entries in 8 bytes */

  for (uint64_t t = 0; t * per < ck->nb; t++) {
    uint64_t first = t * per, end = MIN (ck->nb, first + per);
    uint64_t rbo = t < ck->reftable_n ? ck->reftable[t] & QK_REFT_OFFSET_MASK
                                      : 0;
    const uint8_t *blk = NULL;

    if (rbo && !IS_ALIGNED (rbo, ck->cs)) {
      report (ck, PR_REFCOUNT_UNREADABLE, end - first,
              LOC (.host_offset = first << ck->cb, .length = (end - first) << ck->cb),
              "Can't get refcount for clusters %" PRIu64 "..%" PRIu64 ": "
              "refcount block offset 0x%" PRIx64 " is not aligned", first,
              end - 1, rbo);
      /* qemu-img leaves these clusters out of image-end-offset */
      continue;
    }
    /* from the cache when the COPIED checks have read it */
    if (rbo && (blk = refblock (ck, t, rbo, false)) == NULL) {
      if (ck->rbc_nomem)
        return -1;
      /* e.g. an offset past what a file can hold: qemu-img cannot get
       * these refcounts either (a check error per cluster) */
      report (ck, PR_REFCOUNT_UNREADABLE, end - first,
              LOC (.host_offset = first << ck->cb,
                   .length = (end - first) << ck->cb),
              "Can't get refcount for clusters %" PRIu64 "..%" PRIu64 ": "
              "refcount block 0x%" PRIx64 " cannot be read: %s", first,
              end - 1, rbo, qk_get_error ());
      /* qemu-img leaves these clusters out of image-end-offset */
      continue;
    }
    for (uint64_t k = first; k < end; k++) {
      uint64_t stored, counted;
      /* The IMRT has the blocks' format (ck->order is the image's width):
       * an 8-byte word equal to the block's (or zero with no block) holds
       * nothing to report; only the last nonzero one matters for the end
       * offset (taken apart at the end). */
      if (word && ((k - first) & (wn - 1)) == 0 && end - k >= wn) {
        const uint8_t *cw = ck->imrt + (k << (ck->order - 3));
        uint64_t c64;
        memcpy (&c64, cw, 8);
        if (blk ? memcmp (blk + ((k - first) << (ck->order - 3)), cw, 8) == 0
                : c64 == 0) {
          if (c64) {
            last_word = k;
            any_word = true;
          }
          k += wn - 1;
          continue;
        }
      }
      stored = blk ? qk_refblock_get (blk, h->refcount_order, k - first) : 0;
      counted = qk_refblock_get (ck->imrt, ck->order, k);
      if (stored || counted) {
        highest = k;
        any = true;
      }
      if (stored == counted)
        continue;
      if (stored < counted)
        report (ck, PR_REFCOUNT_LOW, 1,
                LOC (.host_offset = k << ck->cb, .found = stored,
                     .expected = counted),
                "cluster %" PRIu64 " (0x%" PRIx64 ") refcount=%" PRIu64
                " reference=%" PRIu64, k, k << ck->cb, stored, counted);
      else if (ck->missing)
        report (ck, PR_LEAK_UNCERTAIN, 1,
                LOC (.host_offset = k << ck->cb, .found = stored,
                     .expected = counted),
                "cluster %" PRIu64 " (0x%" PRIx64 ") refcount=%" PRIu64
                " reference=%" PRIu64 ": not counted as a leak, %s could not "
                "be read in full", k, k << ck->cb, stored, counted, ck->missing);
      else
        report (ck, PR_LEAK, 1,
                LOC (.host_offset = k << ck->cb, .found = stored,
                     .expected = counted),
                "Leaked cluster %" PRIu64 " (0x%" PRIx64 ") refcount=%" PRIu64
                " reference=%" PRIu64, k, k << ck->cb, stored, counted);
    }
  }
  if (any_word)
    for (uint64_t k = last_word + wn; k-- > last_word; )
      if (qk_refblock_get (ck->imrt, ck->order, k)) {
        if (k > highest)
          highest = k;
        break;
      }
  (void) any;
  ck->res->image_end_offset = (highest + 1) * ck->cs;
  return 0;
}

/* ---- overlaps and duplicate mappings ---- */

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
      enum qk_cluster_type t = qk_l2_cluster_type (en, h->subclusters > 1,
                                                   ck->data_file);
      uint64_t k, last, *hit;
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

static void
phase_overlaps (struct ck *ck)
{
  uint64_t *ks;
  uint64_t (*guests)[2];
  size_t nk = 0;

  if (ck->n_conf == 0)
    return;
  ks = malloc (ck->n_conf * sizeof *ks);
  guests = malloc (ck->n_conf * sizeof *guests);
  if (ks && guests) {
    for (size_t i = 0; i < ck->n_conf; i++)
      ks[nk++] = ck->conf[i].cluster;
    qsort (ks, nk, sizeof *ks, cmp_u64);
    if (active_guests (ck, ks, nk, guests) < 0)
      nk = 0;
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
    describe (ck, &c->second, b, sizeof b);
    if (first)
      describe (ck, first, a, sizeof a);
    else if (gs && gs[0] != QK_NONE)
      snprintf (a, sizeof a, "guest data at 0x%" PRIx64, gs[0]);
    else
      snprintf (a, sizeof a, "snapshot guest data");
    if (c->second.kind == OWN_DATA && first == NULL)
      continue;   /* active data shared with snapshot data: legitimate */
    report (ck, PR_METADATA_OVERLAP, 1,
            LOC (.host_offset = c->cluster << ck->cb),
            "%s overlaps %s at host cluster 0x%" PRIx64, b, a,
            c->cluster << ck->cb);
  }
  free (ks);
  free (guests);
}

/* ---- phase 7: backing chain and data file ---- */

/* The backing chain must open as a whole for QEMU to open the image: a
 * missing file, a loop, a protocol name or too deep a chain anywhere in it
 * is reported here, naming the image where the chain breaks. Damage of a
 * backing file's own is only mentioned (check it with --chain). */
static void
chain_break (struct ck *ck, const struct qk_image *at)
{
  char where[600] = "";

  if (at != ck->img)
    snprintf (where, sizeof where, " (in the chain, below '%s')",
              at->filename);
  if (qk_path_has_protocol (at->backing_name)) {
    report (ck, PR_BACKING_PROTOCOL, 1, NOLOC,
            "backing file '%s'%s is a protocol or json: specification",
            at->backing_name, where);
    return;
  }
  switch (at->backing_state) {
  case QK_BK_LOOP:
    report (ck, PR_BACKING_LOOP, 1, NOLOC,
            "backing file '%s'%s: the backing chain loops back to an image "
            "already in it", at->backing_name, where);
    break;
  case QK_BK_TOO_DEEP:
    report (ck, PR_BACKING_TOO_DEEP, 1, NOLOC,
            "backing file '%s'%s: the backing chain is deeper than %u "
            "images", at->backing_name, where, QK_DEFAULT_CHAIN_DEPTH);
    break;
  case QK_BK_FORMAT_UNSUPPORTED:
    report (ck, PR_BACKING_FORMAT, 1, NOLOC,
            "backing file '%s'%s: format '%s' is not supported",
            at->backing_name, where,
            at->backing_format ? at->backing_format : "?");
    break;
  case QK_BK_NAME_INVALID:
    break;                      /* phase_header reported the name */
  case QK_BK_OK:
  case QK_BK_CANNOT_OPEN:
  case QK_BK_NOT_QCOW2:
    report (ck, PR_BACKING_MISSING, 1, NOLOC, "%s%s",
            at->backing_why ? at->backing_why : "cannot be opened", where);
    if (at->backing_state == QK_BK_NOT_QCOW2)
      report (ck, PR_EXT_BACKING_FORMAT_MISMATCH, 1, NOLOC,
              "backing file '%s'%s is recorded as qcow2 but is not a qcow2 "
              "image", at->backing_name, where);
    break;
  }
}

static void
phase_chain (struct ck *ck)
{
  struct qk_image *img = ck->img;
  const struct qk_image *at;

  for (at = img; at; at = at->backing)
    if (at->backing_name && at->backing_name[0] && at->backing == NULL) {
      chain_break (ck, at);
      break;
    }
  if (img->backing) {
    uint8_t magic[4] = { 0 };
    bool is_qcow2 = img->backing->is_qcow2;

    if (!is_qcow2
        && qk_source_read_zeropad (img->backing->src, magic, 4, 0) == 0)
      is_qcow2 = be32_get (magic) == QK_QCOW2_MAGIC;
    if (img->backing_format_ext
        && strcmp (img->backing_format_ext, "raw") == 0 && is_qcow2)
      report (ck, PR_EXT_BACKING_FORMAT_MISMATCH, 1, NOLOC,
              "backing file '%s' is recorded as raw but is a qcow2 image "
              "(the guest sees its qcow2 metadata as data)",
              img->backing_name);
    /* Damage of a backing file's own (the chain itself opened). */
    for (at = img->backing; at; at = at->backing)
      if (at->unreadable
          && !(at->backing_name && at->backing_name[0] && at->backing == NULL)
          && !(at->backing && at->backing->unreadable)) {
        report (ck, PR_BACKING_PROBLEM, 1, NOLOC,
                "backing file '%s': %s (check it with --chain)",
                at->filename, at->unreadable);
        break;
      }
  }
  if (ck->data_file) {
    if (img->data == img->src)
      report (ck, PR_DATA_FILE_MISSING, 1, NOLOC,
              "external data file '%s' cannot be opened",
              img->data_file_name ? img->data_file_name : "(unnamed)");
    else if (ck->max_data_end > img->data->size)
      report (ck, PR_DATA_FILE_SHORT, 1,
              LOC (.found = img->data->size, .expected = ck->max_data_end),
              "external data file '%s' is %" PRIu64 " bytes but data is "
              "mapped up to %" PRIu64, img->data_file_name, img->data->size,
              ck->max_data_end);
  }
}

/* ---- driver ---- */

QK_EXPORT int
qk_check_run (struct qk_image *img, unsigned flags, qk_problem_fn fn,
              void *opaque, struct qk_check_result *res)
{
  return qk_check_run_map (img, flags, fn, opaque, res, NULL);
}

uint64_t
qk_refmap_get (const struct qk_refmap *map, uint64_t k)
{
  return k < map->n ? qk_refblock_get (map->counted, map->order, k) : 0;
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
qk_refmap_free (struct qk_refmap *map)
{
  free (map->counted);
  free (map->refblocks);
  free (map->reftable);
  free (map->conflicted);
  memset (map, 0, sizeof *map);
}

int
qk_check_run_map (struct qk_image *img, unsigned flags, qk_problem_fn fn,
                  void *opaque, struct qk_check_result *res,
                  struct qk_refmap *map)
{
  return qk_check_run_map_limit (img, flags, 0, fn, opaque, res, map);
}

int
qk_check_run_map_limit (struct qk_image *img, unsigned flags,
                        uint64_t msg_limit, qk_problem_fn fn, void *opaque,
                        struct qk_check_result *res, struct qk_refmap *map)
{
  struct ck ck = { .img = img, .fn = fn, .opaque = opaque, .res = res,
                   .flags = flags, .at_table = QK_NONE, .at_index = QK_NONE,
                   .at_guest = QK_NONE, .msg_limit = msg_limit };
  int r = -1;

  if (map)
    memset (map, 0, sizeof *map);
  memset (res, 0, sizeof *res);
  if (!img->is_qcow2) {
    set_error (ENOTSUP, "%s is not a qcow2 image", img->filename);
    return -1;
  }
  ck.h = &img->hdr;
  ck.cs = ck.h->cluster_size;
  ck.cb = ck.h->cluster_bits;
  ck.file_len = img->src->size;
  ck.data_file = (ck.h->incompatible_features & QK_INCOMPAT_DATA_FILE) != 0;
  ck.counting = ck.h->refcount_order <= 6;
  ck.order = ck.counting ? ck.h->refcount_order : 4;
  ck.refmax = ck.order == 6 ? UINT64_MAX : (1ULL << (1U << ck.order)) - 1;
  ck.conf = malloc (MAX_CONFLICTS * sizeof *ck.conf);
  res->total_clusters = DIV_ROUND_UP (ck.h->size, ck.cs);
  if (ck.conf == NULL) {
    set_error (ENOMEM, "malloc");
    return -1;
  }

  phase_header (&ck);

  if (ck.counting) {
    uint64_t n = DIV_ROUND_UP (ck.file_len, ck.cs);
    if (n > (1ULL << 40)) {
      set_error (EFBIG, "%s: %" PRIu64 " clusters is too many to check",
                 img->filename, n);
      goto out;
    }
    if (imrt_grow (&ck, n) < 0)
      goto out;
    {
      size_t slots = 2;
      while (slots * 2 * ck.cs <= RB_CACHE_BYTES)
        slots *= 2;
      ck.rbc = calloc (slots, sizeof *ck.rbc);
      ck.rb_bufs = calloc (slots, sizeof *ck.rb_bufs);
      if (ck.rbc == NULL || ck.rb_bufs == NULL) {
        set_error (ENOMEM, "malloc");
        goto out;
      }
      ck.n_rbc = slots;
    }
    if (qk_image_read_refcount_table (img, &ck.reftable, &ck.reftable_n) < 0) {
      ck.reftable = NULL;
      ck.reftable_n = 0;
      if (!ck.reftable_invalid)   /* else phase_header said why */
        report (&ck, PR_HDR_REFTABLE_INVALID, 1, NOLOC,
                "the refcount table cannot be read: %s", qk_get_error ());
    }
    ck.rb_seen = calloc (ck.reftable_n / 8 + 1, 1);
    ck.rb_counted = calloc (ck.reftable_n / 8 + 1, 1);
    if (ck.rb_seen == NULL || ck.rb_counted == NULL) {
      set_error (ENOMEM, "malloc");
      goto out;
    }
  }
  if (phase_tables (&ck) < 0)
    goto out;
  if (ck.counting) {
    if (phase_refcount_structs (&ck) < 0 || phase_bitmaps (&ck) < 0
        || phase_refblocks (&ck) < 0)
      goto out;
    if (ck.reftable && phase_compare (&ck) < 0)
      goto out;
  }
  else if (phase_bitmaps (&ck) < 0)
    goto out;
  phase_overlaps (&ck);
  phase_chain (&ck);
  if (map) {
    map->counted = ck.imrt;
    map->order = ck.order;
    map->n = ck.nb;
    map->counting = ck.counting && ck.reftable != NULL;
    map->complete = ck.missing == NULL && ck.uncounted == NULL;
    map->refstructs = true;
    if (ck.reftable_counted) {
      map->reftable_offset = ck.h->refcount_table_offset;
      map->reftable_len = ck.reftable_n * 8;
    }
    map->refblocks = ck.rb_counted;
    map->reftable = ck.reftable;
    map->reftable_n = ck.reftable_n;
    map->conflicted = ck.conf_bits;
    map->dangling_end = ck.dangling_end;
    ck.conf_bits = NULL;
    ck.imrt = NULL;
    ck.rb_counted = NULL;
    ck.reftable = NULL;
  }
  r = 0;
out:
  free (ck.imrt);
  free (ck.excl);
  free (ck.conf_bits);
  free (ck.owners);
  free (ck.refs.v);
  free (ck.mu);
  free (ck.conf);
  free (ck.reftable);
  for (size_t i = 0; i < ck.n_rb_bufs; i++)
    free (ck.rbc[ck.rb_bufs[i]].buf);
  free (ck.rbc);
  free (ck.rb_bufs);
  free (ck.rb_seen);
  free (ck.rb_counted);
  return r;
}
