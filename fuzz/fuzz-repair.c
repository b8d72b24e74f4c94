/* Fuzz the repair: repair a copy of the input in memory with every fix
 * and no questions (qcowkit repair -y --no-undo), then hold it to what
 * the repair promises.
 *
 * The input is an image (its backing and data files are the second half
 * of the input, served by the fake file system of fuzz.h, as in
 * fuzz-check). qk_repair_run takes a path and opens it read-write under
 * QEMU's locks, so the image is copied into a memfd (a tmpfile where there
 * is none) and repaired as /proc/self/fd/N. The harness opens the image
 * under the same name: before the repair from the input's bytes in memory
 * (a memory source reads as a file source does, offsets past 2^63
 * refused, and costs no system call a read), after it from that file,
 * through a file source as the repair does (open_top below, over a
 * duplicate of the descriptor: no lookup of /proc per open), so that the
 * check results are compared on the same kind of source. Persistent
 * bitmaps left in use are kept
 * (--bitmaps=keep) or dropped (--bitmaps=drop) as the low bit of a hash
 * of the input's size and first 4 KiB says.
 *
 * Oracles besides the sanitizers:
 *   1. the repaired image opens (the repair's last check opened it), and
 *      a second check of it (qk_check_run, not --deep, as the repair
 *      checks) finds the corruptions, leaks and check errors the repair's
 *      last check reported (qk_repair_after): in particular none when the
 *      repair said the image is clean;
 *   2. guest data: when the repair wrote, every cluster of the active
 *      image that read before the repair and that no lost range of the
 *      active image covers (qk_repair_lost, snapshot -1) reads the same
 *      bytes after it, and the virtual size is the same; when it says it
 *      did not write (qk_repair_wrote), the file holds the input's bytes
 *      (which read as they did: the guest data is read only when the
 *      repair wrote, which a quarter of the inputs it runs on do not);
 *   3. the two-run rule: a second repair of the result writes nothing
 *      (qk_repair_wrote is false, and the bytes are the same).
 * When the first repair wrote, the two-run rule is held first, and the
 * second repair's first check (qk_repair_before) is the second check of
 * oracle 1: it checks the bytes the first repair left, as a check of the
 * harness's own would, and saves one check an input.
 * Inputs whose virtual size is above 64 MiB, that ask for more work than
 * the bounds of fuzz.h (a virtual size above 4 MiB among them), or that
 * do not open as qcow2, are skipped (the virtual size is also what
 * bounds the memory: the clusters that read before the repair are kept,
 * all-zero ones as a flag). Under the bounds a repair may grow the file
 * to 16 MiB (fuzz_file_cap; past it a write fails with EFBIG, as on a
 * full disk). When the repair fails (qk_repair_run returns -1) nothing
 * is asserted. A
 * violation prints which, with the fixes each run made, and traps.
 *
 * QK_FUZZ_REPAIR_ONLY=check, data or two-run in the environment keeps one
 * oracle (the others are not run): libFuzzer's -minimize_crash keeps any
 * crash, so a finding of one kind is minimized with its kind alone. A
 * comma-separated list keeps several (fuzz/smoke.sh: check,two-run while
 * a known data finding is a TODO of tests/fuzz-replay.sh). */
#include <config.h>

#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"

#define MAX_GUEST (64ULL << 20)    /* larger virtual sizes are skipped */
#define CHUNK (1ULL << 20)         /* guest bytes read at once */

static int file_fd = -1;
static char file_path[64];

/* Which oracles run (QK_FUZZ_REPAIR_ONLY). */
enum { OR_CHECK = 1, OR_DATA = 2, OR_TWO_RUN = 4 };
static unsigned oracles;

/* The fixes a run made, for the report of a violation. */
static void
print_made (const char *which, const struct qk_repair *r)
{
  size_t lost = 0;

  if (r == NULL)
    return;
  fprintf (stderr, "fuzz-repair:   the %s repair made:", which);
  for (size_t i = 0; i < qk_repair_fix_count (r); i++) {
    const struct qk_fix *f = qk_repair_fix (r, i);
    if (f->made)
      fprintf (stderr, " %s (%" PRIu64 ")", f->name, f->count);
  }
  for (size_t i = 0; i < qk_repair_lost_count (r); i++)
    lost += qk_repair_lost (r, i)->snapshot == -1;
  fprintf (stderr, "; lost ranges of the active image: %zu; its last check: "
           "%" PRIu64 " corruptions, %" PRIu64 " leaks, %" PRIu64 " check "
           "errors\n", lost, qk_repair_after (r)->corruptions,
           qk_repair_after (r)->leaks, qk_repair_after (r)->check_errors);
}

static const struct qk_repair *run1, *run2;   /* for print_made */

static void violation (const char *fmt, ...)
  __attribute__ ((format (printf, 1, 2), noreturn, noinline));

static void
violation (const char *fmt, ...)
{
  va_list ap;

  fprintf (stderr, "fuzz-repair: ");
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fprintf (stderr, "\n");
  print_made ("first", run1);
  print_made ("second", run2);
  fflush (stderr);
  __builtin_trap ();
}

/* ---- the file the repair writes ---- */

/* The memfd, moved to descriptor 997 (or the first free one above) so
 * that its name, which backing names are resolved against, is the same
 * in every process that replays an input. */
static int
file_init (void)
{
  const char *only;
  int fd = -1;

  if (file_fd >= 0)
    return 0;
  only = getenv ("QK_FUZZ_REPAIR_ONLY");
  oracles = only == NULL || *only == '\0' ? OR_CHECK | OR_DATA | OR_TWO_RUN
                                          : 0;
  for (const char *p = only; p && *p && oracles != ~0U;) {
    size_t n = strcspn (p, ",");
    unsigned o = n == 5 && strncmp (p, "check", 5) == 0 ? OR_CHECK
                 : n == 4 && strncmp (p, "data", 4) == 0 ? OR_DATA
                 : n == 7 && strncmp (p, "two-run", 7) == 0 ? OR_TWO_RUN : 0;
    oracles = o ? oracles | o : ~0U;
    p += n + (p[n] == ',');
  }
  if (oracles == 0 || oracles == ~0U) {
    fprintf (stderr, "fuzz-repair: QK_FUZZ_REPAIR_ONLY is check, data or "
             "two-run, or a comma-separated list of them, not '%s'\n", only);
    abort ();
  }
#ifdef MFD_CLOEXEC
  fd = memfd_create ("qk-fuzz-repair", MFD_CLOEXEC);
#endif
  if (fd < 0) {
    char t[] = "/tmp/qk-fuzz-repair.XXXXXX";
    fd = mkstemp (t);
    if (fd < 0)
      return -1;
    unlink (t);
  }
  file_fd = fcntl (fd, F_DUPFD_CLOEXEC, 997);
  if (file_fd < 0)
    file_fd = fd;
  else
    close (fd);
  snprintf (file_path, sizeof file_path, "/proc/self/fd/%d", file_fd);
  return 0;
}

/* ---- guest data ---- */

/* The guest view before the repair, per unit (a cluster): whether it read,
 * whether a lost range of the active image covers it, and its bytes: all
 * zero (most of them), or a copy in store. */
#define ZERO UINT32_MAX
struct guest {
  uint64_t size, unit, n_units;
  uint8_t *ok;       /* it read before the repair */
  uint8_t *lost;     /* a lost range of the active image covers it */
  uint32_t *slot;    /* ZERO, or its index in store */
  uint8_t *store;
  size_t n_store, cap_store;   /* in units */
  uint8_t *buf;      /* CHUNK bytes (or one unit) to read into */
  uint8_t *rd;       /* per unit of a chunk: it read */
  uint64_t per;      /* units per chunk */
};

static uint64_t FUZZ_NO_COV
unit_len (const struct guest *g, uint64_t u)
{
  uint64_t off = u * g->unit;
  return g->size - off < g->unit ? g->size - off : g->unit;
}

/* Read the units [lo, hi) into their place in g->buf (the chunk from
 * first) in one read; when that fails, each half the same way, down to
 * single units. g->rd[u - first] says which units read. A read of a
 * range fails when one of its units does not read (the reader stops
 * there) and succeeds when all do, so rd says what a read per unit would,
 * and a bad entry costs about 2 log2(n) reads, not n: a read per unit of
 * every chunk that failed made 640 reads an input. */
static void FUZZ_NO_COV
read_range (struct qk_image *img, struct guest *g, uint64_t first,
            uint64_t lo, uint64_t hi)
{
  uint64_t off = lo * g->unit;
  uint64_t len = (hi - 1) * g->unit + unit_len (g, hi - 1) - off;

  if (qk_image_read (img, g->buf + (lo - first) * g->unit, len, off) == 0) {
    memset (g->rd + (lo - first), 1, hi - lo);
    return;
  }
  if (hi - lo == 1)
    return;
  read_range (img, g, first, lo, lo + (hi - lo) / 2);
  read_range (img, g, first, lo + (hi - lo) / 2, hi);
}

static void FUZZ_NO_COV
read_units (struct qk_image *img, struct guest *g, uint64_t first,
            uint64_t end)
{
  memset (g->rd, 0, end - first);
  read_range (img, g, first, first, end);
}

static int FUZZ_NO_COV
guest_before (struct qk_image *img, struct guest *g)
{
  const struct qk_header *h = qk_image_header (img);

  memset (g, 0, sizeof *g);
  g->size = qk_image_virtual_size (img);
  g->unit = h && h->cluster_size >= 512 && h->cluster_size <= (2U << 20)
            ? h->cluster_size : 65536;
  g->n_units = (g->size + g->unit - 1) / g->unit;
  g->per = CHUNK > g->unit ? CHUNK / g->unit : 1;
  g->ok = calloc (g->n_units + 1, 1);
  g->lost = calloc (g->n_units + 1, 1);
  g->slot = calloc (g->n_units + 1, sizeof *g->slot);
  g->buf = fuzz_scratch (0, g->per * g->unit);
  g->rd = malloc (g->per);
  if (g->ok == NULL || g->lost == NULL || g->slot == NULL || g->buf == NULL
      || g->rd == NULL)
    return -1;
  if (qk_image_unreadable_reason (img) != NULL)
    return 0;                           /* nothing reads */
  for (uint64_t u = 0; u < g->n_units; u += g->per) {
    uint64_t end = u + g->per < g->n_units ? u + g->per : g->n_units;
    read_units (img, g, u, end);
    for (uint64_t k = u; k < end; k++) {
      const uint8_t *p = g->buf + (k - u) * g->unit;
      if (!g->rd[k - u])
        continue;
      g->ok[k] = 1;
      g->slot[k] = ZERO;
      if (fuzz_all_zero (p, unit_len (g, k)))
        continue;
      if (g->n_store == g->cap_store) {
        size_t cap = g->cap_store ? 2 * g->cap_store : 16;
        uint8_t *st = realloc (g->store, cap * g->unit);
        if (st == NULL)
          return -1;
        g->store = st;
        g->cap_store = cap;
      }
      memcpy (g->store + g->n_store * g->unit, p, unit_len (g, k));
      g->slot[k] = (uint32_t) g->n_store++;
    }
  }
  return 0;
}

static void FUZZ_NO_COV
guest_free (struct guest *g)
{
  free (g->ok);
  free (g->lost);
  free (g->slot);
  free (g->store);
  free (g->rd);
}

/* Mark the units the repair's lost ranges of the active image touch. */
static void FUZZ_NO_COV
guest_mark_lost (struct guest *g, const struct qk_repair *r)
{
  for (size_t i = 0; i < qk_repair_lost_count (r); i++) {
    const struct qk_lost *l = qk_repair_lost (r, i);
    uint64_t end;
    if (l->snapshot != -1 || l->length == 0 || l->guest_offset >= g->size)
      continue;
    end = l->length > g->size - l->guest_offset ? g->size
                                                : l->guest_offset + l->length;
    for (uint64_t u = l->guest_offset / g->unit;
         u < (end + g->unit - 1) / g->unit; u++)
      g->lost[u] = 1;
  }
}

/* Every unit that read before and is not lost reads the same now. */
static void FUZZ_NO_COV
guest_after (struct qk_image *img, struct guest *g)
{
  if (qk_image_virtual_size (img) != g->size)
    violation ("the repair changed the virtual size from %" PRIu64
               " to %" PRIu64, g->size, qk_image_virtual_size (img));
  for (uint64_t u = 0; u < g->n_units; u += g->per) {
    uint64_t end = u + g->per < g->n_units ? u + g->per : g->n_units;
    bool want = false;
    for (uint64_t k = u; k < end && !want; k++)
      want = g->ok[k] && !g->lost[k];
    if (!want)
      continue;
    read_units (img, g, u, end);
    for (uint64_t k = u; k < end; k++) {
      const uint8_t *p = g->buf + (k - u) * g->unit;
      uint64_t off = k * g->unit, n = unit_len (g, k);
      if (!g->ok[k] || g->lost[k])
        continue;
      if (!g->rd[k - u])
        violation ("guest bytes 0x%" PRIx64 "+0x%" PRIx64 " read before the "
                   "repair, are not reported lost, and do not read after "
                   "it: %s", off, n, qk_get_error ());
      if (g->slot[k] == ZERO ? !fuzz_all_zero (p, n)
          : memcmp (p, g->store + (uint64_t) g->slot[k] * g->unit, n) != 0)
        violation ("guest bytes 0x%" PRIx64 "+0x%" PRIx64 " changed, and "
                   "no lost range of the active image covers them", off, n);
    }
  }
}

/* ---- opening ---- */

/* qk_image_open serves the top image through open_fn too: the first call
 * opens the file the repair writes, every later one (backing and data
 * files) the fake file system of the input. */
struct open_ctx {
  struct fake_fs fs;
  bool top_pending;
  bool top_input;      /* the top image is the input's bytes in memory */
};

static struct qk_source *
open_top (void *opaque, const char *path)
{
  struct open_ctx *c = opaque;

  if (c->top_pending) {
    int fd;
    c->top_pending = false;
    if (c->top_input)
      return qk_source_memory (c->fs.data, c->fs.size, path);
    fd = fcntl (file_fd, F_DUPFD_CLOEXEC, 0);
    return fd < 0 ? NULL : qk_source_fd (fd, path);
  }
  return fake_open (&c->fs, path);
}

/* The file the repair writes (input false), or the image as it was
 * before the repair, from the input's bytes (input true). */
static struct qk_image *
open_file (struct open_ctx *c, bool input)
{
  struct qk_open_options o = { .open_fn = open_top, .open_opaque = c,
                               .max_chain_depth = 8, .flags = QK_OPEN_FORCE };

  c->top_pending = true;
  c->top_input = input;
  return qk_image_open (file_path, &o);
}

/* ---- checking and repairing ---- */

static bool
clean (const struct qk_check_result *c)
{
  return c->corruptions == 0 && c->leaks == 0 && c->check_errors == 0;
}

static struct qk_repair *
repair (const struct qk_open_options *o, unsigned flags, int *ret)
{
  struct qk_repair *r = qk_repair_new ();

  if (r == NULL || qk_repair_set_mode (r, QK_REPAIR_ALL) < 0
      || qk_repair_set_flags (r, flags) < 0
      || qk_repair_set_undo (r, NULL) < 0
      || qk_repair_set_open_options (r, o) < 0) {
    qk_repair_free (r);
    return NULL;
  }
  if (fuzz_file_cap (true) < 0)
    abort ();
  *ret = qk_repair_run (r, file_path);
  if (fuzz_file_cap (false) < 0)
    abort ();
  return r;
}

/* Bitmaps kept or dropped: the low bit of an FNV-1a hash of the input's
 * size and first 4 KiB (the header, and the bitmap extension with it;
 * a hash of the whole input was 2 % of the harness's time). */
static FUZZ_NO_COV unsigned
repair_flags (const uint8_t *data, size_t size)
{
  uint32_t h = 2166136261u ^ (uint32_t) size;
  for (size_t i = 0; i < size && i < 4096; i++)
    h = (h ^ data[i]) * 16777619u;
#ifdef QK_REPAIR_DROP_BITMAPS
  return (h & 1) ? QK_REPAIR_DROP_BITMAPS : 0;
#else
  (void) h;
  return 0;
#endif
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct open_ctx c = { .fs = { data, size } };
  struct qk_open_options o = { .open_fn = fake_open, .open_opaque = &c.fs,
                               .max_chain_depth = 8, .flags = QK_OPEN_FORCE };
  unsigned flags;
  struct qk_image *img, *img0;
  struct qk_repair *r = NULL, *r2 = NULL;
  struct qk_check_result res;
  const struct qk_check_result *after;
  struct guest g = { 0 };
  struct fuzz_pages pages = { .slot = 1 };
  bool have_res = false, have_guest = false;
  int kept;
  int ret = -1;

  fuzz_init ();
  if (fuzz_input_too_big (data, size))
    return 0;
  fuzz_check_threads (data, size);
  if (file_init () < 0 || fuzz_file_set (file_fd, data, size) < 0)
    return 0;

  /* before: the image as the input has it, from memory (the file holds
   * the same bytes), kept open for the guest data */
  img = NULL;
  img0 = open_file (&c, true);
  if (img0 == NULL)
    return 0;
  if (strcmp (qk_image_format (img0), "qcow2") != 0
      || qk_image_virtual_size (img0) > fuzz_max_guest (MAX_GUEST)
      || fuzz_image_too_big (img0)) {
    qk_image_close (img0);
    return 0;
  }

  /* the repair, in place (the hash only of the inputs it is run on) */
  flags = repair_flags (data, size);
  r = repair (&o, flags, &ret);
  if (r == NULL || ret < 0)
    goto out;
  run1 = r;
  after = qk_repair_after (r);
  if (!qk_repair_wrote (r) && !fuzz_file_is (file_fd, data, size))
    violation ("the repair says it wrote nothing, and the file is not the "
               "input's bytes");
  /* the guest data before, when the repair wrote: a repair that did not
   * left the input's bytes, which read as they did */
  if ((oracles & OR_DATA) && qk_repair_wrote (r)
      && guest_before (img0, &g) == 0) {
    have_guest = true;
    guest_mark_lost (&g, r);
  }

  /* 3. the two-run rule, first: a second repair of what the first left
   * writes nothing. Its first check is then a check of the bytes the
   * first repair left, which oracle 1 compares with the first repair's
   * last check, one check fewer than a check of the harness's own. (A
   * first repair that wrote nothing would only be run again on the same
   * bytes.) */
  if ((oracles & OR_TWO_RUN) && qk_repair_wrote (r)) {
    int ret2;
    kept = fuzz_file_pages (file_fd, &pages, false);
    r2 = repair (&o, flags, &ret2);
    if (r2 != NULL) {
      run2 = r2;
      if (kept == 1 && fuzz_file_pages (file_fd, &pages, true) == 0)
        violation ("a second repair changed the image (%" PRIu64 " bytes "
                   "before it; it returned %d)", pages.size, ret2);
      if (qk_repair_wrote (r2))
        violation ("a second repair wrote (the same bytes again; it "
                   "returned %d)", ret2);
      if (ret2 == 0) {
        res = *qk_repair_before (r2);
        have_res = true;
      }
    }
  }

  /* 1. the repaired image opens and checks as the repair said */
  img = open_file (&c, false);
  if (img == NULL) {
    if (!(oracles & (OR_CHECK | OR_DATA)))
      goto out;
    violation ("the repaired image does not open (the repair's last check "
               "opened it): %s", qk_get_error ());
  }
  if (!(oracles & OR_CHECK))
    goto data;
  if (!have_res && qk_check_run (img, 0, NULL, NULL, &res) < 0)
    violation ("the repaired image cannot be checked (the repair's last "
               "check ran): %s", qk_get_error ());
  if (clean (after) && !clean (&res))
    violation ("the repair left a clean image, a second check finds %"
               PRIu64 " corruptions, %" PRIu64 " leaks, %" PRIu64
               " check errors", res.corruptions, res.leaks,
               res.check_errors);
  if (res.corruptions != after->corruptions || res.leaks != after->leaks
      || res.check_errors != after->check_errors)
    violation ("the repair's last check found %" PRIu64 " corruptions, %"
               PRIu64 " leaks, %" PRIu64 " check errors; a second check %"
               PRIu64 ", %" PRIu64 ", %" PRIu64, after->corruptions,
               after->leaks, after->check_errors, res.corruptions,
               res.leaks, res.check_errors);

  /* 2. the guest data kept where not reported lost */
data:
  if (have_guest)
    guest_after (img, &g);

out:
  run1 = run2 = NULL;
  qk_image_close (img);
  qk_image_close (img0);
  qk_repair_free (r);
  qk_repair_free (r2);
  guest_free (&g);
  return 0;
}
