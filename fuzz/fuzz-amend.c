/* Fuzz amend: change the version and refcount width of a copy of the
 * input (qk_amend, as qcowkit amend does), then hold it to what amend
 * promises. The input is an image. It is written to a memfd and
 * amended as /proc/self/fd/N (amend takes a path and QEMU's locks, as on
 * a disk); a backing name it records resolves below /proc/self/fd, where
 * nothing but a descriptor number opens, so the host's files are not
 * read. The options come from a hash of the input: compat 0.10 or 1.1,
 * and the refcount width kept, 1, 16 or 64 bits.
 *
 * Oracles besides the sanitizers:
 *   1. a refusal (qk_amend fails before writing: ENOTSUP, EUCLEAN,
 *      EINVAL) leaves the file byte for byte as it was;
 *   2. after a successful amend that wrote, the image opens, and a check
 *      finds no more corruptions and check errors than before (when the
 *      amend checked it: all but a header-only upgrade), and, when there
 *      were none, none and no more leaks than before, counting those the
 *      check before could not be sure of (LEAK_UNCERTAIN);
 *   3. guest data: every 64 KiB of the active image that read before
 *      reads the same after, and the virtual size is the same;
 *   4. the two-run rule: the same amend again writes nothing.
 * Inputs whose virtual size is above 64 MiB, that ask for more work than
 * the bounds of fuzz.h (a virtual size above 4 MiB among them), or that
 * do not open as qcow2, are
 * skipped. A violation prints which and traps. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"

#define MAX_GUEST (64ULL << 20)
#define UNIT ((uint64_t) 64 << 10)

static int file_fd = -1;
static char file_path[64];

static void violation (const char *fmt, ...)
  __attribute__ ((format (printf, 1, 2), noreturn, noinline));

static void
violation (const char *fmt, ...)
{
  va_list ap;

  fprintf (stderr, "fuzz-amend: ");
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fprintf (stderr, "\n");
  fflush (stderr);
  __builtin_trap ();
}

static int
file_init (void)
{
  int fd = -1;

  if (file_fd >= 0)
    return 0;
#ifdef MFD_CLOEXEC
  fd = memfd_create ("qk-fuzz-amend", MFD_CLOEXEC);
#endif
  if (fd < 0) {
    char t[] = "/tmp/qk-fuzz-amend.XXXXXX";
    fd = mkstemp (t);
    if (fd < 0)
      return -1;
    unlink (t);
  }
  file_fd = fcntl (fd, F_DUPFD_CLOEXEC, 996);
  if (file_fd < 0)
    file_fd = fd;
  else
    close (fd);
  snprintf (file_path, sizeof file_path, "/proc/self/fd/%d", file_fd);
  return 0;
}

static struct qk_image *
open_file (void)
{
  struct qk_open_options oo = { .flags = QK_OPEN_NO_BACKING
                                         | QK_OPEN_NO_DATA_FILE };
  return qk_image_open (file_path, &oo);
}

/* The active guest view, UNIT at a time, in scratch buffer SLOT (fuzz.h);
 * ok[u]: it read (only those bytes are compared). */
static FUZZ_NO_COV uint8_t *
guest_get (unsigned slot, struct qk_image *img, uint64_t size, uint8_t **ok)
{
  uint64_t n = (size + UNIT - 1) / UNIT;
  uint8_t *g = fuzz_scratch (slot, n * UNIT + 1);

  *ok = calloc (1, n + 1);
  if (g == NULL || *ok == NULL) {
    free (*ok);
    return NULL;
  }
  for (uint64_t u = 0; u < n; u++) {
    uint64_t len = size - u * UNIT < UNIT ? size - u * UNIT : UNIT;
    (*ok)[u] = qk_image_read (img, g + u * UNIT, len, u * UNIT) == 0;
  }
  return g;
}

static FUZZ_NO_COV uint64_t
hash (const uint8_t *d, size_t n)
{
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; i++)
    h = (h ^ d[i]) * 1099511628211ULL;
  return h;
}

/* Clusters the check found with a stored refcount above their count
 * while part of the metadata could not be read (LEAK_UNCERTAIN): leaks
 * it does not count, which it counts once that part reads (an amend
 * that grows the file over an L1 table past its end makes it read as
 * QEMU reads it, zeros: qemu-img check counts them as leaks before). */
static int FUZZ_NO_COV
count_uncertain (void *opaque, const struct qk_problem *p)
{
  if (p->code == 0x040004)
    ++*(uint64_t *) opaque;
  return 0;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  static const unsigned widths[] = { 0, 1, 16, 64 };
  struct qk_amend_options o;
  struct qk_amend_result res, res2;
  struct qk_check_result before, after;
  struct qk_image *img;
  uint64_t vsize, h, uncertain = 0;
  uint8_t *g1 = NULL, *ok1 = NULL, *g2 = NULL, *ok2 = NULL;
  int r, e;

  fuzz_init ();
  if (fuzz_input_too_big (data, size))
    return 0;
  fuzz_check_threads (data, size);
  if (file_init () < 0 || fuzz_file_set (file_fd, data, size) < 0)
    return 0;
  img = open_file ();
  if (img == NULL)
    return 0;
  vsize = qk_image_header (img) ? qk_image_header (img)->size : 0;
  if (strcmp (qk_image_format (img), "qcow2") != 0
      || vsize > fuzz_max_guest (MAX_GUEST) || fuzz_image_too_big (img)) {
    qk_image_close (img);
    return 0;
  }
  h = hash (data, size);   /* (only of the inputs amend is run on) */
  memset (&before, 0, sizeof before);
  qk_check_run (img, 0, NULL, NULL, &before);
  if (before.warnings)   /* (messages formatted only then) */
    qk_check_run (img, 0, count_uncertain, &uncertain, &before);
  g1 = guest_get (2, img, vsize, &ok1);
  qk_image_close (img);
  if (g1 == NULL)
    return 0;

  memset (&o, 0, sizeof o);
  o.compat = (h & 1) ? 3 : 2;
  o.refcount_bits = widths[(h >> 1) & 3];
  r = qk_amend (file_path, &o, &res);
  e = errno;
  if (r < 0) {
    /* 1: a refusal writes nothing: the file is still the input */
    if ((e == ENOTSUP || e == EUCLEAN || e == EINVAL) && !res.changed
        && !fuzz_file_is (file_fd, data, size))
      violation ("a refused amend (%s) wrote the file", qk_get_error ());
    goto out;
  }
  if (!res.changed)
    goto out;
  /* 2: it opens and checks no worse */
  img = open_file ();
  if (img == NULL)
    violation ("the amended image does not open: %s", qk_get_error ());
  memset (&after, 0, sizeof after);
  qk_check_run (img, 0, NULL, NULL, &after);
  /* (a header-only upgrade is not checked, as qemu-img's: an image
   * with errors may count differently as version 3, not worse data) */
  if (res.checked && after.corruptions + after.check_errors
      > before.corruptions + before.check_errors)
    violation ("amend (compat %u, refcount bits %u) made the image worse: "
               "%" PRIu64 "+%" PRIu64 " corruptions+errors before, %" PRIu64
               "+%" PRIu64 " after", o.compat, o.refcount_bits,
               before.corruptions, before.check_errors, after.corruptions,
               after.check_errors);
  if (before.corruptions + before.check_errors == 0
      && (after.corruptions + after.check_errors != 0
          || after.leaks > before.leaks + uncertain))
    violation ("amend (compat %u, refcount bits %u) of an image without "
               "errors left %" PRIu64 " corruptions, %" PRIu64 " leaks (%"
               PRIu64 " before, and %" PRIu64 " uncertain), %" PRIu64
               " check errors", o.compat, o.refcount_bits, after.corruptions,
               after.leaks, before.leaks, uncertain, after.check_errors);
  /* 3: guest data */
  if (qk_image_header (img)->size != vsize)
    violation ("amend changed the virtual size");
  g2 = guest_get (3, img, vsize, &ok2);
  qk_image_close (img);
  if (g2)
    for (uint64_t u = 0; u < (vsize + UNIT - 1) / UNIT; u++)
      if (ok1[u] && (!ok2[u] || memcmp (g1 + u * UNIT, g2 + u * UNIT,
                                        vsize - u * UNIT < UNIT
                                        ? vsize - u * UNIT : UNIT) != 0))
        violation ("amend (compat %u, refcount bits %u) changed guest "
                   "bytes at 0x%" PRIx64, o.compat, o.refcount_bits,
                   (uint64_t) (u * UNIT));
  /* 4: two runs */
  if (qk_amend (file_path, &o, &res2) == 0 && res2.changed)
    violation ("a second amend (compat %u, refcount bits %u) wrote again",
               o.compat, o.refcount_bits);
out:
  free (ok1);
  free (ok2);
  return 0;
}
