/* Shared bits of the fuzz harnesses: every harness defines
 * LLVMFuzzerTestOneInput and reads only from memory. */
#ifndef QK_FUZZ_H
#define QK_FUZZ_H

#include <config.h>   /* first: _GNU_SOURCE (SEEK_DATA) in every harness */

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "qcowkit.h"

#if defined __SANITIZE_ADDRESS__
# define FUZZ_ASAN 1
#elif defined __has_feature
# if __has_feature (address_sanitizer)
#  define FUZZ_ASAN 1
# endif
#endif
#ifdef FUZZ_ASAN
# include <sanitizer/asan_interface.h>
#endif

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

/* A function of the harness itself whose loops over the whole input are
 * not the library's: without coverage instrumentation (clang 13 on),
 * which calls back on every compare of every iteration (a hash of a 200
 * KiB input cost a tenth of fuzz-amend's time). Never inlined: the
 * coverage pass runs after inlining, and instruments what was inlined
 * into an instrumented caller. */
#if defined __clang__ && __clang_major__ >= 13
# define FUZZ_NO_COV __attribute__ ((no_sanitize ("coverage"), noinline))
#else
# define FUZZ_NO_COV
#endif

/* ---- bounds on the work of one input ----
 *
 * The qcow2 harnesses skip an input (return at once) whose header asks
 * for more work than these bounds, so that every input costs about a
 * millisecond under ASan (doc/FUZZING.md, "Throughput"). What the
 * library refuses by itself is never skipped: a cluster size, an L1 or
 * refcount table or a snapshot count above the library's own limits
 * (lib/internal.h) still goes through the code that refuses it, and so
 * does every input that is not a qcow2 header. Only values the library
 * would accept and then work through are bounded:
 *
 *   - clusters of at most 64 KiB (larger ones: every table read is up
 *     to 2 MiB);
 *   - a virtual size of at most 4 MiB;
 *   - an L1 table whose L2 tables cover at most 1 MiB of the file
 *     (l1_size entries of one cluster each), for the active L1 and each
 *     snapshot's;
 *   - a refcount table of at most 64 KiB;
 *   - at most 32 snapshots and 16 bitmaps, whatever the library's limits
 *     (131072 snapshots, 65535 bitmaps): every check walks each
 *     snapshot's L1 table and each bitmap's table. (The library allocates
 *     entries for as many as the file or directory can hold, no longer
 *     for the count the header claims: a backing file of the input, which
 *     these bounds see only once it is open, claimed 131072 snapshots,
 *     17 MB of entries, and took 93 ms an input);
 *   - a file that a writer (fuzz-repair) grows to at most 16 MiB
 *     (fuzz_file_cap): past it a write fails with EFBIG, as on a full
 *     disk, and the writer's error path is what runs. A repair puts fresh
 *     clusters past every dangling reference (up to 1 GiB past the end of
 *     the file), and a 512-byte-cluster image grown to 512 MiB is then
 *     checked four to six times: in a replay of a session's corpus the
 *     cap took 2.0 of 5.0 s off, from 252 of 2,737 inputs
 *     (doc/FUZZING.md).
 *
 * The bounds hold in the libFuzzer builds. The replay builds
 * (fuzz/standalone.c: make check, AFL++) set QK_FUZZ_BOUNDS=off unless
 * it is set, so that the seeds and tests/regress are replayed whole;
 * QK_FUZZ_BOUNDS=on gives an AFL++ session the bounds. */
#define FUZZ_MAX_CLUSTER_BITS 16
#define FUZZ_MAX_VSIZE (4ULL << 20)
#define FUZZ_MAX_L2_REACH (1ULL << 20)
#define FUZZ_MAX_REFTABLE (64ULL << 10)
#define FUZZ_MAX_SNAPSHOTS 32
#define FUZZ_MAX_BITMAPS 16
#define FUZZ_MAX_FILE (16ULL << 20)
/* guest bytes fuzz-read and fuzz-chain read per layer */
#define FUZZ_MAX_READ (256ULL << 10)
/* the library's limits (lib/internal.h), past which it refuses */
#define FUZZ_LIB_MIN_CLUSTER_BITS 9
#define FUZZ_LIB_MAX_CLUSTER_BITS 21
#define FUZZ_LIB_MAX_L1_BYTES (64ULL << 20)
#define FUZZ_LIB_MAX_REFTABLE (16ULL << 20)
#define FUZZ_BITMAPS_EXTENSION 0x23852875U

/* Whether the bounds hold (fuzz_init reads QK_FUZZ_BOUNDS). */
static inline bool *
fuzz_bounded (void)
{
  static bool on = true;
  return &on;
}

static inline uint32_t
fuzz_be32 (const uint8_t *p)
{
  return (uint32_t) p[0] << 24 | (uint32_t) p[1] << 16 | (uint32_t) p[2] << 8
         | p[3];
}

static inline uint64_t
fuzz_be64 (const uint8_t *p)
{
  return (uint64_t) fuzz_be32 (p) << 32 | fuzz_be32 (p + 4);
}

/* The bounds above on header fields (cluster bits, virtual size, L1
 * entries, refcount table clusters, snapshots): true when they ask for
 * more work than the harness allows and less than the library refuses. */
static inline bool
fuzz_fields_too_big (uint32_t cbits, uint64_t vsize, uint32_t l1_size,
                     uint32_t rt_clusters, uint32_t nb_snapshots)
{
  if (!*fuzz_bounded ())
    return false;
  if (cbits < FUZZ_LIB_MIN_CLUSTER_BITS || cbits > FUZZ_LIB_MAX_CLUSTER_BITS)
    return false;                       /* refused: open fails at once */
  if (cbits > FUZZ_MAX_CLUSTER_BITS)
    return true;
  if (vsize > FUZZ_MAX_VSIZE)
    return true;
  if ((uint64_t) l1_size * 8 <= FUZZ_LIB_MAX_L1_BYTES
      && ((uint64_t) l1_size << cbits) > FUZZ_MAX_L2_REACH)
    return true;
  if (((uint64_t) rt_clusters << cbits) <= FUZZ_LIB_MAX_REFTABLE
      && ((uint64_t) rt_clusters << cbits) > FUZZ_MAX_REFTABLE)
    return true;
  return nb_snapshots > FUZZ_MAX_SNAPSHOTS;
}

/* The input's own qcow2 header, before it is opened (opening reads the
 * whole L1 table): false for anything that is not a qcow2 header. */
static inline bool
fuzz_input_too_big (const uint8_t *data, size_t size)
{
  uint32_t cbits;
  size_t off, end;

  if (size < 72 || memcmp (data, "QFI\xfb", 4) != 0)
    return false;
  cbits = fuzz_be32 (data + 20);
  if (fuzz_fields_too_big (cbits, fuzz_be64 (data + 24),
                           fuzz_be32 (data + 36), fuzz_be32 (data + 56),
                           fuzz_be32 (data + 60)))
    return true;
  if (!*fuzz_bounded () || cbits < FUZZ_LIB_MIN_CLUSTER_BITS
      || cbits > FUZZ_MAX_CLUSTER_BITS)
    return false;                 /* and end below is at least 72 */
  /* the bitmap count, in the header extensions of cluster 0 */
  off = fuzz_be32 (data + 4) >= 3 && size >= 104 ? fuzz_be32 (data + 100) : 72;
  end = size < (1U << cbits) ? size : (1U << cbits);
  while (off >= 72 && off <= end - 8) {
    uint32_t type = fuzz_be32 (data + off), len = fuzz_be32 (data + off + 4);
    if (type == 0)
      break;
    if (type == FUZZ_BITMAPS_EXTENSION && len >= 4 && off + 12 <= end
        && fuzz_be32 (data + off + 8) > FUZZ_MAX_BITMAPS)
      return true;
    if (len > end - off - 8)
      break;
    off += 8 + (((size_t) len + 7) & ~(size_t) 7);
  }
  return false;
}

/* Every layer of an opened image (backing files come from the input
 * too), each snapshot's L1 and the bitmap count. */
static inline bool
fuzz_image_too_big (const struct qk_image *img)
{
  if (!*fuzz_bounded ())
    return false;
  for (const struct qk_image *l = img; l; l = qk_image_backing (l)) {
    const struct qk_header *h = qk_image_header (l);
    size_t ns = qk_image_snapshot_count (l);

    if (h == NULL)
      continue;                         /* raw */
    if (fuzz_fields_too_big (h->cluster_bits, h->size, h->l1_size,
                             h->refcount_table_clusters, h->nb_snapshots)
        || ns > FUZZ_MAX_SNAPSHOTS
        || qk_image_bitmap_count (l) > FUZZ_MAX_BITMAPS)
      return true;
    for (size_t i = 0; i < ns; i++) {
      const struct qk_snapshot *s = qk_image_snapshot (l, i);
      if (s && (uint64_t) s->l1_size * 8 <= FUZZ_LIB_MAX_L1_BYTES
          && ((uint64_t) s->l1_size << h->cluster_bits) > FUZZ_MAX_L2_REACH)
        return true;
    }
  }
  return false;
}

/* Under the bounds, cap (on) or uncap the size a write may grow a file
 * to (RLIMIT_FSIZE, for the whole process: around the writer's call
 * only). SIGXFSZ is ignored from the first call on, so that a write past
 * the cap fails with EFBIG instead of killing the process (libFuzzer's
 * -handle_xfsz handler, installed before the first input, is replaced).
 * Returns -1 when the limit cannot be set. */
static inline int
fuzz_file_cap (bool on)
{
  static bool init;
  static struct rlimit was;
  struct rlimit rl;

  if (!*fuzz_bounded ())
    return 0;
  if (!init) {
    if (getrlimit (RLIMIT_FSIZE, &was) < 0)
      return -1;
    signal (SIGXFSZ, SIG_IGN);
    init = true;
  }
  rl = was;
  if (on && (was.rlim_cur == RLIM_INFINITY || was.rlim_cur > FUZZ_MAX_FILE))
    rl.rlim_cur = FUZZ_MAX_FILE;
  return setrlimit (RLIMIT_FSIZE, &rl);
}

/* Whether the environment chose QCOWKIT_THREADS (fuzz_init). */
static inline bool *
fuzz_threads_given (void)
{
  static bool given;
  return &given;
}

/* Once per process: read QK_FUZZ_BOUNDS, and whether QCOWKIT_THREADS
 * is the environment's. */
static inline void
fuzz_init (void)
{
  static bool done;
  if (!done) {
    const char *b = getenv ("QK_FUZZ_BOUNDS");
    *fuzz_bounded () = !(b && strcmp (b, "off") == 0);
    *fuzz_threads_given () = getenv ("QCOWKIT_THREADS") != NULL;
    done = true;
  }
}

/* Before each input of a harness that checks: the checker runs on the
 * calling thread alone, and one input in eight (a hash of its first
 * bytes and its length says which, so a replay does the same) takes the
 * windowed table walk (lib/check/tables.c) with one thread, the others
 * the plain walk. A thread pool started and joined for every input cost
 * more than the check of a small image and made runs depend on
 * scheduling; the windowed walk set up a 256 KiB window for every run,
 * which cost about twice the check of a small image under ASan (it is
 * now sized to the image's L2 tables; the ratio stays, so that a replay
 * walks as before). An environment that sets QCOWKIT_THREADS keeps its
 * value. */
static inline void
fuzz_check_threads (const uint8_t *data, size_t size)
{
  uint32_t h = 2166136261u ^ (uint32_t) size;

  if (*fuzz_threads_given ())
    return;
  for (size_t i = 0; i < size && i < 128; i++)
    h = (h ^ data[i]) * 16777619u;
  setenv ("QCOWKIT_THREADS", (h >> 7) % 8 == 0 ? "1" : "0", 1);
}

/* The largest virtual size fuzz-repair and fuzz-amend take: the bound,
 * or theirs (what bounds their memory) when the bounds are off. */
static inline uint64_t
fuzz_max_guest (uint64_t own)
{
  return *fuzz_bounded () && FUZZ_MAX_VSIZE < own ? FUZZ_MAX_VSIZE : own;
}

/* A buffer of at least len bytes kept from one input to the next (slot:
 * one of FUZZ_SCRATCH per harness); NULL when out of memory. Under ASan a
 * fresh allocation above 128 KiB is mapped and unmapped for every input,
 * and its page faults cost more than the check of a small image; under
 * ASan the bytes past len are poisoned, so that a read or write past them
 * is still caught. */
#define FUZZ_SCRATCH 4
static inline void *
fuzz_scratch (unsigned slot, size_t len)
{
  static uint8_t *p[FUZZ_SCRATCH];
  static size_t cap[FUZZ_SCRATCH];

  if (slot >= FUZZ_SCRATCH)
    abort ();
  if (len == 0)
    len = 1;
  if (len > cap[slot]) {
    uint8_t *q = realloc (p[slot], len);
    if (q == NULL)
      return NULL;
    p[slot] = q;
    cap[slot] = len;
  }
#ifdef FUZZ_ASAN
  __asan_unpoison_memory_region (p[slot], len);
  if (cap[slot] > len)
    __asan_poison_memory_region (p[slot] + len, cap[slot] - len);
#endif
  return p[slot];
}

/* A fake file system for backing and data files: any name opens the
 * second half of the input (so chains, loops and data files are reached
 * without touching the disk); a name containing "missing" fails. */
struct fake_fs {
  const uint8_t *data;
  size_t size;
};

static inline struct qk_source *
fake_open (void *opaque, const char *path)
{
  struct fake_fs *fs = opaque;
  if (strstr (path, "missing"))
    return NULL;
  return qk_source_memory (fs->data + fs->size / 2, fs->size - fs->size / 2,
                           path);
}

/* Put size bytes into the file fd (truncated first), as one image. */
static inline int
fuzz_file_set (int fd, const uint8_t *data, size_t size)
{
  size_t done = 0;

  if (ftruncate (fd, 0) < 0)
    return -1;
  while (done < size) {
    ssize_t n = pwrite (fd, data + done, size - done, (off_t) done);
    if (n <= 0)
      return -1;
    done += (size_t) n;
  }
  return 0;
}

/* Whether n bytes of a harness's own buffer are all zero: 256 bytes
 * ORed at a time (the compiler makes vector loads of it), without the
 * sanitizers' checks of every load (the buffer is the harness's; the
 * library's reads into it are checked). memcmp (p, p + 1) through ASan's
 * interceptor, which first checks both ranges' shadow, took 18 against
 * 12 us a MiB; with ASan's checks off but UBSan's on, its pointer-
 * overflow check of every p[i + k] kept the loop to a byte a step with
 * two compares each, and this test was 22 % of fuzz-repair's time (perf,
 * 30,000 inputs). Most of a guest is unallocated and reads as zeros, and
 * most pages of a repaired file are zero. */
#if defined __clang__
# define FUZZ_NO_SAN __attribute__ ((no_sanitize ("address", "undefined")))
#elif defined __GNUC__
# define FUZZ_NO_SAN __attribute__ ((no_sanitize_address, \
                                     no_sanitize_undefined))
#else
# define FUZZ_NO_SAN
#endif
static inline FUZZ_NO_SAN FUZZ_NO_COV bool
fuzz_all_zero (const uint8_t *p, size_t n)
{
  size_t i = 0;

  for (; i + 256 <= n; i += 256) {
    uint8_t acc = 0;
    for (size_t k = 0; k < 256; k++)
      acc |= p[i + k];
    if (acc)
      return false;
  }
  for (; i < n; i++)
    if (p[i])
      return false;
  return true;
}

/* ---- the bytes of a file, its holes skipped ----
 * What a writer left, to see whether a second run changes it. A copy of
 * the whole file cost more than the repair it guards: a repair that
 * places fresh structures past a dangling reference leaves a sparse file
 * of hundreds of MiB, read and compared whole before. Here only the data
 * segments (SEEK_DATA, SEEK_HOLE; the whole file where a file system
 * knows no holes) are read, and of them only the pages that are not all
 * zero are kept (their offsets and bytes, in a scratch buffer): two files
 * hold the same bytes exactly when their sizes and those lists are
 * equal. */
#define FUZZ_PAGE 4096U
#define FUZZ_PAGES_MAX (64U << 20)   /* kept bytes; more: cannot tell */
struct fuzz_pages {
  uint64_t size;         /* of the file */
  size_t n;              /* pages kept */
  size_t have;           /* bytes asked of the scratch buffer */
  uint8_t *rec;          /* per page: 8 bytes of offset, FUZZ_PAGE of data */
  unsigned slot;         /* the scratch buffer (fuzz_scratch) */
};

/* Record the file's pages in fp (compare false), or compare the file with
 * them (compare true). 1: recorded, or the same bytes; 0: different; -1:
 * cannot tell (an I/O error, more than FUZZ_PAGES_MAX bytes to keep). */
static inline FUZZ_NO_COV int
fuzz_file_pages (int fd, struct fuzz_pages *fp, bool compare)
{
  static uint8_t chunk[16 * FUZZ_PAGE];
  const size_t rec = 8 + FUZZ_PAGE;
  struct stat st;
  uint64_t next = 0, last;     /* page indexes */
  size_t i = 0;

  if (fstat (fd, &st) < 0)
    return -1;
  if (compare && (uint64_t) st.st_size != fp->size)
    return 0;
  if (!compare) {
    fp->size = (uint64_t) st.st_size;
    fp->n = 0;
  }
  last = (fp->size + FUZZ_PAGE - 1) / FUZZ_PAGE;
  while (next < last) {
    off_t d = lseek (fd, (off_t) (next * FUZZ_PAGE), SEEK_DATA), h;
    uint64_t k, end;
    if (d < 0)
      break;                          /* ENXIO: a hole to the end */
    h = lseek (fd, d, SEEK_HOLE);
    k = (uint64_t) d / FUZZ_PAGE > next ? (uint64_t) d / FUZZ_PAGE : next;
    end = h < 0 ? last : ((uint64_t) h + FUZZ_PAGE - 1) / FUZZ_PAGE;
    if (end > last)
      end = last;
    if (end <= k)
      end = k + 1;
    while (k < end) {
      uint64_t off = k * FUZZ_PAGE;
      size_t want = (end - k) * FUZZ_PAGE < sizeof chunk
                    ? (size_t) ((end - k) * FUZZ_PAGE) : sizeof chunk;
      ssize_t got = pread (fd, chunk, want, (off_t) off);
      if (got <= 0)
        return -1;
      for (size_t p = 0; p < (size_t) got; p += FUZZ_PAGE) {
        size_t len = (size_t) got - p < FUZZ_PAGE ? (size_t) got - p
                                                   : FUZZ_PAGE;
        const uint8_t *pg = chunk + p;
        uint64_t po = off + p;
        uint8_t *r;
        if (fuzz_all_zero (pg, len))
          continue;
        if (compare) {
          if (i >= fp->n)
            return 0;
          r = fp->rec + i++ * rec;
          if (memcmp (r, &po, 8) != 0 || memcmp (r + 8, pg, len) != 0)
            return 0;
          continue;
        }
        if ((fp->n + 1) * rec > fp->have) {
          size_t want_b = fp->have ? 2 * fp->have : 64 * rec;
          if (want_b > FUZZ_PAGES_MAX + rec)
            return -1;
          if ((fp->rec = fuzz_scratch (fp->slot, want_b)) == NULL)
            return -1;
          fp->have = want_b;
        }
        r = fp->rec + fp->n++ * rec;
        memcpy (r, &po, 8);
        memcpy (r + 8, pg, len);
      }
      k += ((size_t) got + FUZZ_PAGE - 1) / FUZZ_PAGE;
    }
    next = end;
  }
  return compare ? i == fp->n : 1;
}

/* Whether the file fd holds exactly the size bytes at data. */
static inline FUZZ_NO_COV bool
fuzz_file_is (int fd, const uint8_t *data, size_t size)
{
  static uint8_t chunk[16 * FUZZ_PAGE];
  struct stat st;

  if (fstat (fd, &st) < 0 || (uint64_t) st.st_size != size)
    return false;
  for (size_t off = 0; off < size;) {
    size_t want = size - off < sizeof chunk ? size - off : sizeof chunk;
    ssize_t got = pread (fd, chunk, want, (off_t) off);
    if (got <= 0 || memcmp (chunk, data + off, (size_t) got) != 0)
      return false;
    off += (size_t) got;
  }
  return true;
}

/* A problem callback that counts (opaque: unsigned *) and touches the
 * fields every caller reads. */
static inline int
fuzz_count_problem (void *opaque, const struct qk_problem *p)
{
  unsigned *n = opaque;
  if (p->message == NULL || p->name == NULL)
    __builtin_trap ();
  ++*n;
  return 0;
}

#endif
