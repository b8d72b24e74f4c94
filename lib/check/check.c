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
 * This file is the driver: the problem table, the reports, the context's
 * setup and teardown and the pass table that runs the passes in order.
 * The context is in ck.h; the passes are header.c (0), tables.c (1, 2,
 * 5), refcounts.c (3, 4), bitmaps.c (6), overlaps.c and chain.c (7); the
 * IMRT and the refcount map handed to the repair are refmap.c.
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

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include "util/problems.h"
#include "check/ck.h"

/* ---- the problem table ---- */

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

/* ---- reports ---- */

void
report (struct ck *ck, int pr, uint64_t count, const struct qk_problem *loc,
        const char *fmt, ...)
{
  struct qk_problem p = *loc;
  char msg[1024];
  va_list ap;

  /* no message for nobody (fn NULL: the totals only) */
  if (ck->fn == NULL || (ck->flags & QK_CHECK_NO_MESSAGES)
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

/* ---- worker threads ---- */

struct ckpool {
  pthread_mutex_t mu;
  pthread_cond_t go, done;
  unsigned gen;             /* a step was posted (counts them) */
  unsigned pending;         /* threads still running the step */
  unsigned started;         /* threads beside the caller */
  bool quit;
  void (*fn) (struct ck *, struct wk *, void *);
  void *arg;
  pthread_t tid[CK_MAX_THREADS];
};

static void *
worker (void *opaque)
{
  struct wk *w = opaque;
  struct ckpool *p = w->ck->pool;
  unsigned seen = 0;

  pthread_mutex_lock (&p->mu);
  for (;;) {
    while (p->gen == seen && !p->quit)
      pthread_cond_wait (&p->go, &p->mu);
    if (p->quit)
      break;
    seen = p->gen;
    pthread_mutex_unlock (&p->mu);
    p->fn (w->ck, w, p->arg);
    pthread_mutex_lock (&p->mu);
    if (--p->pending == 0)
      pthread_cond_signal (&p->done);
  }
  pthread_mutex_unlock (&p->mu);
  return NULL;
}

/* The threads: QCOWKIT_THREADS, else the CPUs this process may run on
 * (taskset); 0 when the parallel steps are not used at all: they read
 * from one file or memory buffer only (pread has no state), not through
 * layers such as fault injection, which count reads in their order; and
 * QCOWKIT_THREADS=0 asks for the plain walk (the reference the tests of
 * the parallel steps compare with). */
static unsigned
check_threads (const struct ck *ck)
{
  const char *e = getenv ("QCOWKIT_THREADS");
  long n = e && *e ? strtol (e, NULL, 10) : 0;
  cpu_set_t set;

  if (ck->img->src->below != NULL || (e && strcmp (e, "0") == 0))
    return 0;
  if (n < 1 && sched_getaffinity (0, sizeof set, &set) == 0)
    n = CPU_COUNT (&set);
  if (n < 1)
    n = 1;
  return n > CK_MAX_THREADS ? CK_MAX_THREADS : (unsigned) n;
}

static int
pool_start (struct ck *ck)
{
  struct ckpool *p = calloc (1, sizeof *p);

  if (p == NULL)
    return -1;
  pthread_mutex_init (&p->mu, NULL);
  pthread_cond_init (&p->go, NULL);
  pthread_cond_init (&p->done, NULL);
  ck->pool = p;
  for (unsigned i = 1; i < ck->nthreads; i++) {
    if (pthread_create (&p->tid[i], NULL, worker, &ck->wk[i]) != 0)
      break;
    p->started++;
  }
  ck->nthreads = p->started + 1;
  return 0;
}

static void
pool_stop (struct ck *ck)
{
  struct ckpool *p = ck->pool;

  if (p) {
    pthread_mutex_lock (&p->mu);
    p->quit = true;
    pthread_cond_broadcast (&p->go);
    pthread_mutex_unlock (&p->mu);
    for (unsigned i = 1; i <= p->started; i++)
      pthread_join (p->tid[i], NULL);
    pthread_mutex_destroy (&p->mu);
    pthread_cond_destroy (&p->go);
    pthread_cond_destroy (&p->done);
    free (p);
    ck->pool = NULL;
  }
  for (unsigned i = 0; i < CK_MAX_THREADS; i++)
    for (unsigned j = 0; j < WK_SLOTS; j++)
      free (ck->wk[i].rb[j]);
}

int
ck_parallel (struct ck *ck, void (*fn) (struct ck *, struct wk *, void *),
             void *arg)
{
  struct ckpool *p;

  if (ck->nthreads == 1) {
    ck->wk[0].reads = 0;
    fn (ck, &ck->wk[0], arg);
    return 0;
  }
  if (ck->pool == NULL && pool_start (ck) < 0)
    return -1;
  p = ck->pool;
  for (unsigned i = 0; i < ck->nthreads; i++)
    ck->wk[i].reads = 0;
  pthread_mutex_lock (&p->mu);
  p->fn = fn;
  p->arg = arg;
  p->pending = p->started;
  p->gen++;
  pthread_cond_broadcast (&p->go);
  pthread_mutex_unlock (&p->mu);
  fn (ck, &ck->wk[0], arg);
  pthread_mutex_lock (&p->mu);
  while (p->pending)
    pthread_cond_wait (&p->done, &p->mu);
  pthread_mutex_unlock (&p->mu);
  return 0;
}

const uint8_t *
wk_refblock (struct ck *ck, struct wk *w, uint64_t t, unsigned slots)
{
  const struct rbslot *s = &ck->rbc[t & (ck->n_rbc - 1)];
  uint64_t rb = ck->reftable[t] & QK_REFT_OFFSET_MASK;
  unsigned v = 0;

  if (s->buf && s->t == t + 1)
    return s->buf;
  for (unsigned i = 0; i < slots; i++) {
    if (w->rb_t[i] == t + 1) {
      w->rb_used[i] = ++w->tick;
      return w->rb[i];
    }
    if (w->rb_used[i] < w->rb_used[v])
      v = i;
  }
  if (w->rb[v] == NULL && (w->rb[v] = malloc (ck->cs)) == NULL)
    return NULL;
  w->rb_t[v] = 0;
  w->reads++;
  if (qk_source_read_zeropad (ck->img->src, w->rb[v], ck->cs, rb) < 0)
    return NULL;
  w->rb_t[v] = t + 1;
  w->rb_used[v] = ++w->tick;
  return w->rb[v];
}

/* ---- driver ---- */

QK_EXPORT int
qk_check_run (struct qk_image *img, unsigned flags, qk_problem_fn fn,
              void *opaque, struct qk_check_result *res)
{
  return qk_check_run_map (img, flags, fn, opaque, res, NULL);
}

int
qk_check_run_map (struct qk_image *img, unsigned flags, qk_problem_fn fn,
                  void *opaque, struct qk_check_result *res,
                  struct qk_refmap *map)
{
  return qk_check_run_map_limit (img, flags, 0, fn, opaque, res, map);
}

/* After the header: the IMRT at the size of the file, the refcount block
 * cache and the refcount table, for the passes that count references. */
static int
counting_setup (struct ck *ck)
{
  struct qk_image *img = ck->img;
  uint64_t n = DIV_ROUND_UP (ck->file_len, ck->cs);

  if (n > (1ULL << 40)) {
    set_error (EFBIG, "%s: %" PRIu64 " clusters is too many to check",
               img->filename, n);
    return -1;
  }
  if (imrt_grow (ck, n) < 0)
    return -1;
  if (qk_image_read_refcount_table (img, &ck->reftable, &ck->reftable_n) < 0) {
    ck->reftable = NULL;
    ck->reftable_n = 0;
    if (!ck->reftable_invalid)   /* else phase_header said why */
      report (ck, PR_HDR_REFTABLE_INVALID, 1, NOLOC,
              "the refcount table cannot be read: %s", qk_get_error ());
  }
  {
    /* Every block read has a table index below reftable_n: with as many
     * slots as that (a power of two), each has a slot of its own, as in
     * the cache's full size, which a small image does not need (it is
     * allocated for every check). */
    size_t slots = 2;
    while (slots * 2 * ck->cs <= RB_CACHE_BYTES && slots < ck->reftable_n)
      slots *= 2;
    ck->rbc = calloc (slots, sizeof *ck->rbc);
    ck->rb_bufs = calloc (slots, sizeof *ck->rb_bufs);
    if (ck->rbc == NULL || ck->rb_bufs == NULL) {
      set_error (ENOMEM, "malloc");
      return -1;
    }
    ck->n_rbc = slots;
  }
  {
    /* Whether refcount blocks cover half the file or more: then the
     * IMRT is made writable at once (see populate). */
    uint64_t per = ck->cs * 8 >> ck->order, covered = 0;
    for (size_t t = 0; t < ck->reftable_n; t++)
      covered += (ck->reftable[t] & QK_REFT_OFFSET_MASK) != 0;
    ck->dense = covered >= DIV_ROUND_UP (ck->nb, 2 * per);
    populate (ck, ck->imrt, ((ck->nb << ck->order) + 7) / 8);
  }
  ck->rb_seen = calloc (ck->reftable_n / 8 + 1, 1);
  ck->rb_counted = calloc (ck->reftable_n / 8 + 1, 1);
  if (ck->rb_seen == NULL || ck->rb_counted == NULL) {
    set_error (ENOMEM, "malloc");
    return -1;
  }
  return 0;
}

/* The passes, run in this order over the one context (as e2fsck runs its
 * pass table): a pass runs when the context has what it needs (refcounts
 * that can be counted at all; a refcount table that could be read); one
 * that fails ends the check. The bitmaps are checked either way, between
 * the refcount structures and the refcount blocks when counting. */
enum {
  NEEDS_COUNTING = 1U << 0,   /* ck->counting */
  NEEDS_REFTABLE = 1U << 1,   /* ck->reftable */
};

static const struct pass {
  const char *name;
  int (*run) (struct ck *ck);
  unsigned needs;
} passes[] = {
  { "header and extensions", phase_header,           0 },
  { "counting setup",        counting_setup,         NEEDS_COUNTING },
  { "L1 and L2 tables",      phase_tables,           0 },
  { "refcount structures",   phase_refcount_structs, NEEDS_COUNTING },
  { "bitmaps",               phase_bitmaps,          0 },
  { "refcount blocks",       phase_refblocks,        NEEDS_COUNTING },
  { "refcount comparison",   phase_compare,
                             NEEDS_COUNTING | NEEDS_REFTABLE },
  { "overlaps",              phase_overlaps,         0 },
  { "backing chain",         phase_chain,            0 },
};

int
qk_check_run_map_limit (struct qk_image *img, unsigned flags,
                        uint64_t msg_limit, qk_problem_fn fn, void *opaque,
                        struct qk_check_result *res, struct qk_refmap *map)
{
  struct ck ck = { .img = img, .fn = fn, .opaque = opaque, .res = res,
                   .flags = flags, .at_table = QK_NONE, .at_index = QK_NONE,
                   .at_guest = QK_NONE, .msg_limit = msg_limit };
  int r = -1;

  if (map) {
    ck.spare = map->spare;
    memset (map, 0, sizeof *map);
  }
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
  res->total_clusters = DIV_ROUND_UP (ck.h->size, ck.cs);
  ck.nthreads = check_threads (&ck);
  for (unsigned i = 0; i < CK_MAX_THREADS; i++)
    ck.wk[i] = (struct wk) { .ck = &ck, .id = i };

  for (size_t i = 0; i < sizeof passes / sizeof *passes; i++) {
    const struct pass *p = &passes[i];
    if (((p->needs & NEEDS_COUNTING) && !ck.counting)
        || ((p->needs & NEEDS_REFTABLE) && ck.reftable == NULL))
      continue;
    if (p->run (&ck) < 0)
      goto out;
  }
  if (map) {
    map->counted = ck.imrt;
    map->counted_pg = ck.imrt_pg;
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
    ck.imrt_pg = NULL;
    ck.rb_counted = NULL;
    ck.reftable = NULL;
  }
  r = 0;
out:
  pool_stop (&ck);
  free (ck.imrt);
  free (ck.imrt_pg);
  if (map && ck.excl) {
    /* for the next check of the map, with what it did not take */
    free (ck.spare.bits[0]);
    ck.spare.bits[0] = ck.excl;
    ck.spare.bits_len[0] = ck.nb / 8 + 1;
    ck.excl = NULL;
  }
  if (map)
    map->spare = ck.spare;
  else
    spare_free (&ck.spare);
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
