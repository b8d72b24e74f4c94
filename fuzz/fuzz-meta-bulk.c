/* Fuzz the streaming reader of libvirt's bulk metadata file
 * (KIND/DOMAIN.xml: <snapshots current='...'> or <checkpoints> holding one
 * <domainsnapshot>/<domaincheckpoint> per moment), then the relations and
 * checks of the set it loads.
 *
 * The first input byte chooses how the file is cut into the reads the
 * reader sees (below); the rest is the file. The kind is checkpoints when
 * the file mentions "<checkpoints", else snapshots.
 *
 * The reader takes a path and read(2)s it. The file is a memfd (a tmpfile
 * where there is none) named by /proc/self/fd/N, and the harness is linked
 * with -Wl,--wrap=read so that reads of that file return the chunk sizes
 * the input chose: element and tag boundaries fall at every position of
 * the reader's buffer handling. Other reads pass through.
 *
 * Oracles besides the sanitizers: every moment's bytes lie inside the
 * file, loaded moments have names, the current index is in range, the
 * reader's result does not depend on how the file was cut (the moment
 * count and names are compared with a second load in one piece). */
#include <config.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"
#include "meta/meta.h"

#define MAX_DEPTH 1024

/* ---- the chunked file ---- */

static int file_fd = -1;
static char file_path[64];
static dev_t file_dev;
static ino_t file_ino;
static bool chunking;
static uint32_t chunk_rng;
static unsigned chunk_shift;
static size_t chunk_min;

ssize_t __real_read (int fd, void *buf, size_t count);
ssize_t __wrap_read (int fd, void *buf, size_t count);

ssize_t
__wrap_read (int fd, void *buf, size_t count)
{
  struct stat st;

  if (chunking && count > 1 && fstat (fd, &st) == 0
      && st.st_dev == file_dev && st.st_ino == file_ino) {
    size_t n;
    chunk_rng = chunk_rng * 1103515245u + 12345u;
    n = chunk_min + ((chunk_rng >> 8) & ((1u << chunk_shift) - 1));
    if (n < count)
      count = n;
  }
  return __real_read (fd, buf, count);
}

static int
file_init (void)
{
  struct stat st;

  if (file_fd >= 0)
    return 0;
#ifdef MFD_CLOEXEC
  file_fd = memfd_create ("qk-fuzz-bulk", MFD_CLOEXEC);
#endif
  if (file_fd < 0) {
    char t[] = "/tmp/qk-fuzz-bulk.XXXXXX";
    file_fd = mkstemp (t);
    if (file_fd < 0)
      return -1;
    unlink (t);
  }
  if (fstat (file_fd, &st) < 0)
    return -1;
  file_dev = st.st_dev;
  file_ino = st.st_ino;
  snprintf (file_path, sizeof file_path, "/proc/self/fd/%d", file_fd);
  return 0;
}

/* ---- loading ---- */

static int
on_problem (void *opaque, const struct qk_problem *p)
{
  size_t *n = opaque;
  if (p->message == NULL || p->name == NULL)
    __builtin_trap ();
  *n += strlen (p->message);
  return 0;
}

static struct qk_meta *
load (int kind)
{
  struct qk_meta *m = calloc (1, sizeof *m);
  struct meta_set *s;

  if (m == NULL)
    return NULL;
  m->lim.max_size = 16 << 20;
  m->lim.max_depth = MAX_DEPTH;
  for (int k = 0; k < 2; k++) {
    m->set[k].kind = k;
    m->set[k].current = m->set[k].claimed = QK_META_NONE;
  }
  s = &m->set[kind];
  s->layout = QK_META_LAYOUT_BULK;
  s->bulk = strdup (file_path);
  s->location = s->bulk;
  if (s->bulk == NULL || meta_load_set_at (m, s) < 0) {
    meta_unload (m);
    free (m);
    return NULL;
  }
  return m;
}

static void
unload (struct qk_meta *m)
{
  if (m) {
    meta_unload (m);
    free (m);
  }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  const char *file = (const char *) data + 1;
  size_t len = size ? size - 1 : 0, n = 0;
  struct qk_meta *m, *whole;
  int kind;

  if (size < 1 || file_init () < 0 || fuzz_file_set (file_fd, data + 1, len) < 0)
    return 0;
  kind = memmem (file, len, "<checkpoints", 12) ? QK_META_CHECKPOINT
                                               : QK_META_SNAPSHOT;

  /* control byte c: 0xff reads in one piece; otherwise chunks of 1 to
   * 2^(c & 15) bytes, sizes drawn from a generator seeded by c >> 4. At
   * most about a thousand reads per file: the reader grows its buffer by
   * a fixed step per read, so many short reads of one big element cost
   * time quadratic in its size (slow, not wrong). */
  chunking = data[0] != 0xff;
  chunk_shift = data[0] & 15;
  chunk_rng = data[0] >> 4;
  chunk_min = len >> 10 ? len >> 10 : 1;
  m = load (kind);
  chunking = false;
  if (m == NULL)
    return 0;

  {
    const struct meta_set *s = &m->set[kind];
    for (size_t i = 0; i < s->n; i++) {
      const struct qk_meta_moment *p = &s->m[i].pub;
      size_t a, b;
      if (p->offset > len || p->length > len - p->offset)
        __builtin_trap ();
      if (p->loaded && (p->name == NULL || p->name[0] == '\0'))
        __builtin_trap ();
      if (!s->m[i].parse_failed) {
        meta_active_range (file + p->offset, p->length, &a, &b);
        if (a > b || b > p->length)
          __builtin_trap ();
      }
    }
    if (s->current != QK_META_NONE && s->current >= s->n)
      __builtin_trap ();
  }
  (void) qk_meta_check (m, 0, on_problem, &n);

  /* the same file read in one piece loads the same moments */
  if (data[0] != 0xff && (whole = load (kind)) != NULL) {
    const struct meta_set *s = &m->set[kind], *w = &whole->set[kind];
    if (s->n != w->n || s->current != w->current || whole->nf != m->nf)
      __builtin_trap ();
    for (size_t i = 0; i < s->n; i++) {
      const struct qk_meta_moment *p = &s->m[i].pub, *q = &w->m[i].pub;
      if (p->loaded != q->loaded || p->offset != q->offset
          || p->length != q->length
          || (p->name == NULL) != (q->name == NULL)
          || (p->name && strcmp (p->name, q->name) != 0))
        __builtin_trap ();
    }
    unload (whole);
  }
  unload (m);
  return 0;
}
