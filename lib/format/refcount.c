/* The layout of a complete refcount structure (a refcount table and its
 * refcount blocks) placed in fresh clusters, and its serialisation. Pure:
 * no I/O. Used by repair's rebuild; the same plan serves a later refcount
 * width change.
 *
 * The structure counts itself: its own clusters need refcount 1, and the
 * blocks that count them may need more table entries, which may need more
 * table clusters. qk_reflayout_plan iterates to the fixpoint, as QEMU's
 * rebuild_refcounts_write_refblocks does by retrying, but in arithmetic
 * only. */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "format/format.h"

uint64_t
qk_refblock_next_used (const uint8_t *blk, unsigned order, uint64_t k,
                       uint64_t end)
{
  static const uint8_t zero[4096];
  const uint64_t chunk = (8ULL * sizeof zero) >> order;   /* per 4 KiB */
  const uint64_t wn = 64U >> order;                        /* per 8 bytes */

  if (order > 6)
    return end;
  while (k < end) {
    if ((k & (chunk - 1)) == 0 && end - k >= chunk
        && memcmp (blk + ((k << order) >> 3), zero, sizeof zero) == 0) {
      k += chunk;
      continue;
    }
    if ((k & (wn - 1)) == 0 && end - k >= wn) {
      uint64_t x;
      memcpy (&x, blk + ((k << order) >> 3), 8);
      if (x == 0) {
        k += wn;
        continue;
      }
    }
    if (qk_refblock_get (blk, order, k))
      return k;
    k++;
  }
  return end;
}

uint64_t
qk_refblock_next_used_pg (const uint8_t *blk, const uint8_t *pg,
                          unsigned order, uint64_t k, uint64_t end)
{
  const uint64_t per = (UINT64_C (8) << QK_REFPG_SHIFT) >> order;

  if (pg == NULL || order > 6)
    return qk_refblock_next_used (blk, order, k, end);
  while (k < end) {
    uint64_t p = k / per, stop = (p + 1) * per;
    if (stop > end)
      stop = end;
    if (pg[p]) {
      uint64_t r = qk_refblock_next_used (blk, order, k, stop);
      if (r < stop)
        return r;
    }
    k = stop;
  }
  return end;
}

static int
cmp_u64 (const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
  return x < y ? -1 : x > y;
}

/* The sorted union of need[0..n) and [lo, hi] into out (capacity cap);
 * the count, or SIZE_MAX when it does not fit. */
static size_t
merge_range (const uint64_t *need, size_t n, uint64_t lo, uint64_t hi,
             uint64_t *out, size_t cap)
{
  size_t i = 0, k = 0;
  uint64_t t = lo;

  while (i < n || t <= hi) {
    uint64_t v;
    if (i < n && (t > hi || need[i] < t))
      v = need[i++];
    else if (i < n && need[i] == t) {
      v = t++;
      i++;
    }
    else
      v = t++;
    if (k && out[k - 1] == v)
      continue;
    if (k == cap)
      return SIZE_MAX;
    out[k++] = v;
    if (t == 0)               /* hi was UINT64_MAX */
      break;
  }
  return k;
}

int
qk_reflayout_plan (unsigned cluster_bits, unsigned refcount_order,
                   const uint64_t *need, size_t n_need, uint64_t start,
                   struct qk_reflayout *L)
{
  uint64_t cs = 1ULL << cluster_bits, per, tcl = 1, nb = n_need;
  uint64_t *sorted = NULL, *blocks = NULL;
  size_t cap;

  memset (L, 0, sizeof *L);
  if (cluster_bits < 9 || cluster_bits > 21 || refcount_order > 6) {
    set_error (EINVAL, "invalid cluster bits %u or refcount order %u",
               cluster_bits, refcount_order);
    return -1;
  }
  per = cs * 8 >> refcount_order;
  if (start == 0 || start > (UINT64_MAX >> cluster_bits) / 2) {
    set_error (EINVAL, "invalid start cluster %" PRIu64, start);
    return -1;
  }
  /* the structure's own blocks: at most n_need + 2 + what it takes to
   * count the table and blocks themselves (a block counts per >= 512
   * clusters, so a handful) */
  cap = n_need + n_need / (per / 2) + 64;
  sorted = malloc ((n_need ? n_need : 1) * sizeof *sorted);
  blocks = malloc (cap * sizeof *blocks);
  if (sorted == NULL || blocks == NULL) {
    free (sorted);
    free (blocks);
    set_error (ENOMEM, "malloc");
    return -1;
  }
  if (n_need)
    memcpy (sorted, need, n_need * sizeof *need);
  qsort (sorted, n_need, sizeof *sorted, cmp_u64);

  for (int iter = 0; iter < 64; iter++) {
    uint64_t end = start + tcl + nb, entries, ntcl;
    size_t k = merge_range (sorted, n_need, start / per, (end - 1) / per,
                            blocks, cap);
    if (k == SIZE_MAX)
      break;
    entries = blocks[k - 1] + 1;
    if (entries > (UINT64_MAX - cs) / 8)
      break;
    ntcl = (entries * 8 + cs - 1) / cs;
    if (ntcl == tcl && k == nb) {
      free (sorted);
      L->cluster_bits = cluster_bits;
      L->refcount_order = refcount_order;
      L->per_block = per;
      L->start = start;
      L->table_clusters = tcl;
      L->table_entries = entries;
      L->block_index = blocks;
      L->n_blocks = k;
      L->end = end;
      return 0;
    }
    tcl = ntcl > tcl ? ntcl : tcl;
    nb = k;
  }
  free (sorted);
  free (blocks);
  set_error (EOVERFLOW, "the refcount structure does not converge");
  return -1;
}

void
qk_reflayout_free (struct qk_reflayout *L)
{
  free (L->block_index);
  L->block_index = NULL;
}

int
qk_reflayout_table (const struct qk_reflayout *L, uint8_t *out, size_t len)
{
  uint64_t cs = 1ULL << L->cluster_bits;

  if (len != L->table_clusters * cs) {
    set_error (EINVAL, "refcount table buffer of %zu bytes", len);
    return -1;
  }
  memset (out, 0, len);
  for (uint64_t j = 0; j < L->n_blocks; j++)
    be64_put (out + 8 * L->block_index[j],
              (L->start + L->table_clusters + j) << L->cluster_bits);
  return 0;
}

int
qk_reflayout_block (const struct qk_reflayout *L, uint64_t j,
                    const uint8_t *counted, unsigned counted_order,
                    uint64_t n_counted, uint8_t *out, size_t len)
{
  uint64_t cs = 1ULL << L->cluster_bits, first, max;

  if (j >= L->n_blocks || len != cs) {
    set_error (EINVAL, "refcount block %" PRIu64 " of %" PRIu64, j,
               L->n_blocks);
    return -1;
  }
  max = L->refcount_order == 6 ? UINT64_MAX
                               : (1ULL << (1U << L->refcount_order)) - 1;
  first = L->block_index[j] * L->per_block;
  /* The counts in the blocks' format: copy them, then add the structure's
   * own clusters (fresh: counted 0, so at most max - 1 + 1). */
  if (counted_order == L->refcount_order && L->refcount_order >= 3) {
    unsigned sh = L->refcount_order - 3;
    uint64_t have = first < n_counted ? n_counted - first : 0;
    uint64_t lo, hi;
    if (have > L->per_block)
      have = L->per_block;
    memcpy (out, counted + (first << sh), (size_t) (have << sh));
    memset (out + (have << sh), 0, len - (size_t) (have << sh));
    lo = L->start > first ? L->start : first;
    hi = L->end < first + L->per_block ? L->end : first + L->per_block;
    for (uint64_t k = lo; k < hi; k++) {
      uint64_t v = qk_refblock_get (out, L->refcount_order, k - first);
      if (v == max) {
        set_error (EOVERFLOW, "cluster %" PRIu64 " refcount overflows", k);
        return -1;
      }
      qk_refblock_set (out, L->refcount_order, k - first, v + 1);
    }
    return 0;
  }
  memset (out, 0, len);
  for (uint64_t i = 0; i < L->per_block; i++) {
    uint64_t k = first + i, v = 0;
    if (k < n_counted)
      v = qk_refblock_get (counted, counted_order, k);
    if (k >= L->start && k < L->end) {
      if (v == max) {
        set_error (EOVERFLOW, "cluster %" PRIu64 " refcount overflows", k);
        return -1;
      }
      v++;
    }
    if (v > max) {
      set_error (EOVERFLOW, "cluster %" PRIu64 " refcount %" PRIu64
                 " does not fit in %u bits", k, v, 1U << L->refcount_order);
      return -1;
    }
    if (v)
      qk_refblock_set (out, L->refcount_order, i, v);
  }
  return 0;
}
