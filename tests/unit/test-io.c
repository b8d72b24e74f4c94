/* Unit tests of lib/io: read-only and writable file and memory sources,
 * QEMU's image locks (against a forked holder and a real qemu-io), the
 * undo journal (capture, replay, refusals, a crash at every write), the
 * fault layer (fail, and kill in a child), durable file creation, and
 * SHA-256. */
#include <config.h>

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "io/io.h"
#include "../tap.h"

static char top[256];
static int topfd;

static char *
path_of (const char *leaf)
{
  static char p[4][512];
  static int k;
  k = (k + 1) % 4;
  snprintf (p[k], sizeof p[k], "%s/%s", top, leaf);
  return p[k];
}

static void
die (const char *what)
{
  perror (what);
  exit (99);
}

/* A file of len pseudo-random bytes (seeded). */
static void
mkfile (const char *leaf, size_t len, unsigned seed)
{
  uint8_t *b = malloc (len ? len : 1);
  int fd;
  if (b == NULL)
    die ("malloc");
  srand (seed);
  for (size_t i = 0; i < len; i++)
    b[i] = rand ();
  fd = open (path_of (leaf), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0 || (len && write (fd, b, len) != (ssize_t) len))
    die (leaf);
  close (fd);
  free (b);
}

static void
sha_file (const char *leaf, uint8_t out[32], uint64_t *size)
{
  struct qk_sha256 c;
  static uint8_t buf[65536];
  ssize_t r;
  int fd = open (path_of (leaf), O_RDONLY);
  if (fd < 0)
    die (leaf);
  qk_sha256_init (&c);
  *size = 0;
  while ((r = read (fd, buf, sizeof buf)) > 0) {
    qk_sha256_update (&c, buf, r);
    *size += r;
  }
  close (fd);
  qk_sha256_final (&c, out);
}

static uint64_t
file_size (const char *leaf)
{
  struct stat st;
  if (stat (path_of (leaf), &st) < 0)
    return (uint64_t) -1;
  return st.st_size;
}

static void
copy_file (const char *from, const char *to)
{
  char cmd[1200];
  snprintf (cmd, sizeof cmd, "cp '%s' '%s'", path_of (from), path_of (to));
  if (system (cmd) != 0)
    die ("cp");
}

static bool
has_program (const char *name)
{
  char cmd[300];
  snprintf (cmd, sizeof cmd, "command -v %s >/dev/null 2>&1", name);
  return system (cmd) == 0;
}

/* ---- sha256 ---- */

static void
test_sha256 (void)
{
  static const char *const abc =
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
  static const char *const two =
    "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1";
  const char *msg2 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  uint8_t d[32];
  char hex[65];
  struct qk_sha256 c;

  qk_sha256_init (&c);
  qk_sha256_update (&c, "abc", 3);
  qk_sha256_final (&c, d);
  for (int i = 0; i < 32; i++)
    sprintf (hex + 2 * i, "%02x", d[i]);
  is_str (hex, abc, "sha256 (\"abc\")");
  qk_sha256_init (&c);
  for (const char *p = msg2; *p; p++)   /* byte at a time */
    qk_sha256_update (&c, p, 1);
  qk_sha256_final (&c, d);
  for (int i = 0; i < 32; i++)
    sprintf (hex + 2 * i, "%02x", d[i]);
  is_str (hex, two, "sha256 of the two-block FIPS vector, fed a byte at a time");
}

/* ---- read-only and writable bottoms ---- */

static void
test_readonly (void)
{
  struct qk_source *s;
  uint8_t b[4] = "abc";

  mkfile ("ro", 1000, 1);
  s = qk_source_file (path_of ("ro"));
  ok (s != NULL, "open read-only");
  ok (qk_source_pwrite (s, b, 3, 0) < 0 && qk_get_errno () == EROFS,
      "read-only file refuses pwrite with EROFS");
  ok (strstr (qk_get_error (), "read-only") != NULL,
      "and says it is read-only: %s", qk_get_error ());
  ok (qk_source_truncate (s, 10) < 0 && qk_get_errno () == EROFS,
      "read-only file refuses truncate");
  ok (qk_source_flush (s) == 0, "flush of a read-only file is fine");
  qk_source_close (s);
  is_u64 (file_size ("ro"), 1000, "file unchanged");

  s = qk_source_memory (b, 3, "m");
  ok (qk_source_pwrite (s, "x", 1, 0) < 0 && qk_get_errno () == EROFS,
      "read-only memory refuses pwrite with EROFS");
  ok (qk_source_lock (s, QK_LOCK_WRITE) == 0, "memory locks are no-ops");
  qk_source_close (s);

  {
    int fd = open (path_of ("ro"), O_RDONLY);
    s = qk_source_fd_rw (fd, "ro", 0);
    ok (s == NULL && qk_get_errno () == EBADF,
        "qk_source_fd_rw refuses a read-only descriptor");
  }
  {
    char ln[600];
    snprintf (ln, sizeof ln, "%s", path_of ("ro-link"));
    if (symlink ("ro", ln) < 0)
      die ("symlink");
    s = qk_source_file_rw (ln, 0);
    ok (s == NULL && qk_get_errno () == ELOOP,
        "qk_source_file_rw does not follow a symlink");
  }
}

static void
test_file_rw (void)
{
  struct qk_source *s;
  uint8_t buf[64];

  mkfile ("rw", 100, 2);
  s = qk_source_file_rw (path_of ("rw"), 0);
  ok (s != NULL, "open read-write");
  if (s == NULL)
    return;
  ok (qk_source_pwrite (s, "hello", 5, 10) == 0, "pwrite inside");
  ok (qk_source_read_exact (s, buf, 5, 10, "x") == 0
      && memcmp (buf, "hello", 5) == 0, "read back");
  ok (qk_source_pwrite (s, "tail", 4, 200) == 0, "pwrite past the end");
  is_u64 (s->size, 204, "the source grew");
  ok (qk_source_read_exact (s, buf, 4, 150, "x") == 0
      && memcmp (buf, "\0\0\0\0", 4) == 0, "the gap reads as zeros");
  ok (qk_source_flush (s) == 0, "flush");
  ok (qk_source_truncate (s, 50) == 0 && s->size == 50, "truncate");
  qk_source_close (s);
  is_u64 (file_size ("rw"), 50, "file has the new size");
}

static void
test_memory_rw (void)
{
  struct qk_source *s = qk_source_memory_rw ("abcdef", 6, "mem");
  uint8_t buf[16];

  ok (s != NULL && s->size == 6, "memory rw");
  ok (qk_source_pwrite (s, "XY", 2, 1) == 0
      && memcmp (qk_source_memory_data (s), "aXYdef", 6) == 0, "overwrite");
  ok (qk_source_pwrite (s, "Z", 1, 9) == 0 && s->size == 10
      && memcmp (qk_source_memory_data (s), "aXYdef\0\0\0Z", 10) == 0,
      "grow with a zeroed gap");
  ok (qk_source_truncate (s, 4) == 0 && qk_source_truncate (s, 8) == 0
      && memcmp (qk_source_memory_data (s), "aXYd\0\0\0\0", 8) == 0,
      "shrink then grow reads zeros");
  ok (s->ops->pread (s, buf, 16, 6) == 2, "short read at the end");
  qk_source_close (s);
  s = qk_source_memory_rw (NULL, 0, NULL);
  ok (s != NULL && s->size == 0 && qk_source_pwrite (s, "q", 1, 100000) == 0
      && s->size == 100001, "empty memory grows");
  qk_source_close (s);
}

/* A memory source refuses the reads a file refuses near 2^63: an offset
 * past it (file_pread), a range that ends past it (the kernel's EINVAL),
 * so that an image reads and checks the same from either (fuzz-repair
 * reads the image before its repair from memory, after it from a file). */
static void
test_memory_file_parity (void)
{
  static const struct { uint64_t off; size_t len; } c[] = {
    { INT64_MAX - 100, 100 },   /* ends at 2^63 - 1: both read nothing */
    { INT64_MAX - 100, 101 },   /* ends past it: both refuse */
    { INT64_MAX - 100, 4096 },
    { INT64_MAX, 1 },
    { (uint64_t) INT64_MAX + 1, 1 },
    { UINT64_MAX - 10, 4 },
    { 4000, 4096 },             /* a short read at the end of the file */
  };
  uint8_t bytes[4096], buf[4096];
  struct qk_source *m, *f;

  memset (bytes, 0x5a, sizeof bytes);
  mkfile ("parity", sizeof bytes, 0x5a);
  m = qk_source_memory (bytes, sizeof bytes, "parity");
  f = qk_source_file (path_of ("parity"));
  if (m == NULL || f == NULL)
    die ("parity sources");
  for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
    ssize_t rm = m->ops->pread (m, buf, c[i].len, c[i].off);
    int em = rm < 0 ? qk_get_errno () : 0;
    ssize_t rf = f->ops->pread (f, buf, c[i].len, c[i].off);
    int ef = rf < 0 ? qk_get_errno () : 0;
    ok (rm == rf && em == ef, "memory and file: %zu bytes at %" PRIu64
        " give %zd (errno %d) and %zd (errno %d)", c[i].len, c[i].off, rm,
        em, rf, ef);
  }
  qk_source_close (m);
  qk_source_close (f);
}

/* ---- fault layer ---- */

static void
test_fault (void)
{
  struct qk_source *m = qk_source_memory_rw (NULL, 0, "f");
  struct qk_source *s = qk_source_fault (m, QK_FAULT_WRITE_FAIL, 3, 0);
  uint64_t w, f;
  enum qk_fault_kind k;
  uint64_t n;
  int r1, r2, r3, r4;

  r1 = qk_source_pwrite (s, "1", 1, 0);
  r2 = qk_source_pwrite (s, "2", 1, 1);
  r3 = qk_source_pwrite (s, "3", 1, 2);
  ok (r3 < 0 && qk_get_errno () == EIO, "write 3 fails with EIO");
  r4 = qk_source_pwrite (s, "4", 1, 3);
  ok (r1 == 0 && r2 == 0 && r4 < 0, "writes 1, 2 pass, 4 fails too");
  is_u64 (m->size, 2, "exactly 2 writes reached below");
  is_u64 (s->size, 2, "the layer's size follows below");
  qk_source_fault_counts (s, &w, &f);
  ok (w == 4 && f == 0, "counts: 4 writes, 0 flushes");
  qk_source_close (s);   /* closes m */

  m = qk_source_memory_rw (NULL, 0, "f");
  s = qk_source_fault (m, QK_FAULT_WRITE_FAIL, 1, QK_FAULT_ONCE);
  ok (qk_source_pwrite (s, "1", 1, 0) < 0 && qk_source_pwrite (s, "2", 1, 0) == 0,
      "QK_FAULT_ONCE fails one write only");
  qk_source_close (s);

  m = qk_source_memory_rw (NULL, 0, "f");
  s = qk_source_fault (m, QK_FAULT_FLUSH_FAIL, 2, QK_IO_KEEP_BELOW);
  ok (qk_source_flush (s) == 0 && qk_source_flush (s) < 0
      && qk_get_errno () == EIO, "flush 2 fails");
  qk_source_close (s);
  ok (m->size == 0 && qk_source_pwrite (m, "x", 1, 0) == 0,
      "QK_IO_KEEP_BELOW leaves below open");
  qk_source_close (m);

  ok (qk_fault_parse ("write-kill-7", &k, &n) == 0 && k == QK_FAULT_WRITE_KILL
      && n == 7, "parse write-kill-7");
  ok (qk_fault_parse ("flush-fail-1", &k, &n) == 0 && k == QK_FAULT_FLUSH_FAIL
      && n == 1, "parse flush-fail-1");
  ok (qk_fault_parse ("write-fail-", &k, &n) < 0
      && qk_fault_parse ("write-fail-0", &k, &n) < 0
      && qk_fault_parse ("write-fail-2x", &k, &n) < 0
      && qk_fault_parse ("read-fail-2", &k, &n) < 0
      && qk_get_errno () == EINVAL, "bad specs refused");

  m = qk_source_memory_rw (NULL, 0, "f");
  unsetenv ("QCOWKIT_FAULT");
  ok (qk_source_fault_env (m, 0) == m, "no QCOWKIT_FAULT: no layer");
  setenv ("QCOWKIT_FAULT", "write-fail-2", 1);
  s = qk_source_fault_env (m, 0);
  ok (s != NULL && s != m && qk_source_pwrite (s, "a", 1, 0) == 0
      && qk_source_pwrite (s, "b", 1, 0) < 0, "QCOWKIT_FAULT=write-fail-2");
  qk_source_close (s);
  setenv ("QCOWKIT_FAULT", "bogus", 1);
  m = qk_source_memory_rw (NULL, 0, "f");
  ok (qk_source_fault_env (m, 0) == NULL && qk_get_errno () == EINVAL,
      "QCOWKIT_FAULT=bogus refused");
  unsetenv ("QCOWKIT_FAULT");

  /* kill: a child writes byte i at offset i, 10 times */
  for (int kind = 0; kind < 2; kind++) {
    pid_t pid;
    int st;
    mkfile ("kill", 0, 0);
    pid = fork ();
    if (pid < 0)
      die ("fork");
    if (pid == 0) {
      struct qk_source *c = qk_source_file_rw (path_of ("kill"), 0);
      if (kind == 0)
        setenv ("QCOWKIT_FAULT", "write-kill-4", 1);
      else
        setenv ("QCOWKIT_FAULT", "flush-kill-2", 1);
      c = c ? qk_source_fault_env (c, 0) : NULL;
      if (c == NULL)
        _exit (3);
      for (int i = 0; i < 10; i++) {
        uint8_t b = 'a' + i;
        if (qk_source_pwrite (c, &b, 1, i) < 0 || qk_source_flush (c) < 0)
          _exit (4);
      }
      _exit (0);
    }
    if (waitpid (pid, &st, 0) != pid)
      die ("waitpid");
    ok (WIFSIGNALED (st) && WTERMSIG (st) == SIGKILL,
        "%s: the child died of SIGKILL", kind ? "flush-kill-2" : "write-kill-4");
    /* write-kill-4: writes 1-3 reached the file; flush-kill-2: the second
     * flush comes after the second write */
    is_u64 (file_size ("kill"), kind ? 2 : 3,
            "%s: exactly %d writes reached the file",
            kind ? "flush-kill-2" : "write-kill-4", kind ? 2 : 3);
  }
}

/* ---- undo journal ---- */

#define IMG_SIZE (300 * 1024 + 123)

struct wr {
  uint64_t off;
  size_t len;
};

static const struct wr writes[] = {
  { 0, 512 },                     /* the header */
  { 100, 50 },                    /* inside it again: nothing to save */
  { 4000, 70000 },                /* across the first window */
  { 60000, 20000 },               /* overlapping the previous one */
  { 4000, 10 },                   /* repeated */
  { 200000, 3 },
  { 199998, 8 },                  /* around the last one */
  { IMG_SIZE - 100, 1000 },       /* across the end: grows */
  { IMG_SIZE + 50000, 4096 },     /* past the end */
  { 150000, 1 << 21 },            /* more than a record holds, grows */
};

static void
do_writes (struct qk_source *s, size_t upto, unsigned seed)
{
  uint8_t *b = malloc (1 << 21);
  if (b == NULL)
    die ("malloc");
  srand (seed);
  for (size_t i = 0; i < upto; i++) {
    for (size_t k = 0; k < writes[i].len; k++)
      b[k] = rand ();
    if (qk_source_pwrite (s, b, writes[i].len, writes[i].off) < 0) {
      printf ("# write %zu: %s\n", i, qk_get_error ());
      exit (98);
    }
  }
  free (b);
}

static void
test_undo (void)
{
  uint8_t before[32], after[32], now[32];
  uint64_t size0, size1, size2;
  struct qk_source *s, *img;
  const size_t nw = sizeof writes / sizeof writes[0];

  mkfile ("img", IMG_SIZE, 3);
  sha_file ("img", before, &size0);
  s = qk_source_file_rw (path_of ("img"), QK_IO_LOCK);
  s = s ? qk_source_undo (s, topfd, "img.undo", 0) : NULL;
  ok (s != NULL, "undo layer over a locked file");
  if (s == NULL) {
    printf ("# %s\n", qk_get_error ());
    return;
  }
  ok (qk_source_undo (s, topfd, "img.undo", QK_IO_KEEP_BELOW) == NULL
      && qk_get_errno () == EEXIST, "an existing journal is never reused");
  {
    /* a write entirely inside captured bytes appends nothing */
    uint64_t j0;
    do_writes (s, 1, 10);
    j0 = file_size ("img.undo");
    is_u64 (j0, 512 + 24 + 512, "the first write saved its 512 old bytes");
    do_writes (s, 2, 10);
    is_u64 (file_size ("img.undo"), j0, "a second write there saves nothing");
  }
  do_writes (s, nw, 10);
  is_u64 (s->size, 150000 + (1 << 21), "the image grew");
  ok (qk_source_flush (s) == 0, "flush");
  qk_source_close (s);
  sha_file ("img", after, &size1);
  ok (memcmp (before, after, 32) != 0, "the writes changed the image");
  {
    /* what was saved: each original byte at most once */
    /* below the original size the writes cover [0, 512), [4000, 80000),
     * [150000, end): 233835 bytes, in 9 records */
    is_u64 (file_size ("img.undo"), 512 + 233835 + 24 * 9,
            "each original byte saved once, nothing past the old end");
  }

  /* a copy of the changed image is another file: refused by identity */
  copy_file ("img", "copy");
  img = qk_source_file_rw (path_of ("copy"), 0);
  ok (qk_undo_replay (topfd, "img.undo", img, 0) < 0
      && qk_get_errno () == EINVAL, "replay onto another file is refused");
  printf ("# %s\n", qk_get_error ());
  qk_source_close (img);

  /* another image of the same size with QK_UNDO_IGNORE_ID: content differs */
  mkfile ("other", size1, 4);
  sha_file ("other", after, &size2);
  img = qk_source_file_rw (path_of ("other"), 0);
  ok (qk_undo_replay (topfd, "img.undo", img, QK_UNDO_IGNORE_ID) < 0
      && qk_get_errno () == EINVAL, "replay onto other content is refused");
  printf ("# %s\n", qk_get_error ());
  qk_source_close (img);
  sha_file ("other", now, &size2);
  ok (size2 == size1 && memcmp (after, now, 32) == 0,
      "the refused image was not touched");

  /* the copy with QK_UNDO_IGNORE_ID: same content, so it works */
  img = qk_source_file_rw (path_of ("copy"), 0);
  ok (qk_undo_replay (topfd, "img.undo", img, QK_UNDO_IGNORE_ID) == 0,
      "replay onto an identical copy with QK_UNDO_IGNORE_ID");
  qk_source_close (img);
  sha_file ("copy", now, &size2);
  ok (memcmp (before, now, 32) == 0 && size2 == size0,
      "the copy is back to the original bytes and size");
  img = qk_source_file_rw (path_of ("copy"), 0);
  ok (qk_undo_replay (topfd, "img.undo", img, QK_UNDO_IGNORE_ID) < 0
      && qk_get_errno () == EALREADY, "a second replay is refused");
  printf ("# %s\n", qk_get_error ());
  qk_source_close (img);
}

/* Same, twice over, with a torn record at the end and on the image
 * itself; then journals in memory. */
static void
test_undo_replay (void)
{
  uint8_t before[32], now[32];
  uint64_t size0, size2;
  struct qk_source *s, *img;
  const size_t nw = sizeof writes / sizeof writes[0];
  int fd;

  mkfile ("img2", IMG_SIZE, 5);
  sha_file ("img2", before, &size0);
  s = qk_source_file_rw (path_of ("img2"), 0);
  s = qk_source_undo (s, topfd, "img2.undo", 0);
  do_writes (s, nw, 11);
  ok (qk_source_truncate (s, 1000) == 0, "truncate through the journal");
  ok (qk_source_pwrite (s, "again", 5, 5000) == 0, "write past the cut");
  qk_source_close (s);
  /* a torn record: a header whose data never made it */
  fd = open (path_of ("img2.undo"), O_WRONLY | O_APPEND);
  if (fd < 0 || write (fd, "QKUR\0\0\0\x10garbage-garbage", 23) != 23)
    die ("append");
  close (fd);
  img = qk_source_file_rw (path_of ("img2"), QK_IO_LOCK);
  ok (qk_undo_replay (topfd, "img2.undo", img, 0) == 0,
      "replay despite a torn tail record");
  qk_source_close (img);
  sha_file ("img2", now, &size2);
  ok (memcmp (before, now, 32) == 0 && size2 == size0,
      "overlapping, repeated, growing writes and a truncate all undone");

  {
    uint8_t orig[5000];
    struct qk_source *m;
    for (size_t i = 0; i < sizeof orig; i++)
      orig[i] = i * 7;
    m = qk_source_memory_rw (orig, sizeof orig, "mem");
    s = qk_source_undo (m, topfd, "mem.undo", QK_IO_KEEP_BELOW);
    ok (s != NULL, "undo over memory");
    ok (qk_source_pwrite (s, "abc", 3, 4999) == 0
        && qk_source_pwrite (s, "abc", 3, 0) == 0
        && qk_source_pwrite (s, "xyz", 3, 1) == 0, "writes");
    qk_source_close (s);
    ok (qk_undo_replay (topfd, "mem.undo", m, 0) == 0
        && m->size == sizeof orig
        && memcmp (qk_source_memory_data (m), orig, sizeof orig) == 0,
        "memory restored exactly");
    qk_source_close (m);
    m = qk_source_memory (orig, sizeof orig, "ro");
    ok (qk_source_undo (m, topfd, "ro.undo", 0) == NULL
        && qk_get_errno () == EROFS, "no journal over a read-only source");
  }
}

/* A crash at every image write: a child writes through undo over a
 * fault layer that kills it at write n; the parent replays and must get
 * the original back each time. */
static void
test_undo_crash_sweep (void)
{
  uint8_t before[32], now[32];
  uint64_t size0, size2;
  const size_t nw = sizeof writes / sizeof writes[0];
  int bad = 0, killed = 0;

  for (uint64_t n = 1; n <= nw + 1; n++) {
    pid_t pid;
    int st;
    struct qk_source *img;

    mkfile ("sweep", IMG_SIZE, 6);
    unlinkat (topfd, "sweep.undo", 0);
    if (n == 1)
      sha_file ("sweep", before, &size0);
    pid = fork ();
    if (pid < 0)
      die ("fork");
    if (pid == 0) {
      struct qk_source *c = qk_source_file_rw (path_of ("sweep"), 0);
      c = c ? qk_source_fault (c, QK_FAULT_WRITE_KILL, n, 0) : NULL;
      c = c ? qk_source_undo (c, topfd, "sweep.undo", 0) : NULL;
      if (c == NULL)
        _exit (3);
      do_writes (c, nw, 12);
      qk_source_close (c);
      _exit (0);
    }
    if (waitpid (pid, &st, 0) != pid)
      die ("waitpid");
    if (WIFSIGNALED (st) && WTERMSIG (st) == SIGKILL)
      killed++;
    else if (!(n == nw + 1 && WIFEXITED (st) && WEXITSTATUS (st) == 0)) {
      printf ("# n=%" PRIu64 ": child status 0x%x\n", n, st);
      bad++;
    }
    img = qk_source_file_rw (path_of ("sweep"), 0);
    if (img == NULL || qk_undo_replay (topfd, "sweep.undo", img, 0) < 0) {
      printf ("# n=%" PRIu64 ": %s\n", n, qk_get_error ());
      bad++;
    }
    qk_source_close (img);
    sha_file ("sweep", now, &size2);
    if (memcmp (before, now, 32) != 0 || size2 != size0) {
      printf ("# n=%" PRIu64 ": not restored\n", n);
      bad++;
    }
  }
  is_u64 (killed, nw, "killed at each of the %zu writes", nw);
  is_u64 (bad, 0, "replay after a kill at every write restores the image");
}

/* ---- locks ---- */

/* A child that opens leaf and takes mode; returns its pid once the locks
 * are held; it holds them until *release is closed. */
static pid_t
holder (const char *leaf, unsigned mode, int *release)
{
  int up[2], down[2];
  pid_t pid;
  char c;

  if (pipe (up) < 0 || pipe (down) < 0)
    die ("pipe");
  pid = fork ();
  if (pid < 0)
    die ("fork");
  if (pid == 0) {
    struct qk_source *s = qk_source_file (path_of (leaf));
    close (up[0]);
    close (down[1]);
    if (s == NULL || qk_source_lock (s, mode) < 0)
      _exit (3);
    if (write (up[1], "y", 1) != 1)
      _exit (4);
    while (read (down[0], &c, 1) > 0)
      ;
    _exit (0);
  }
  close (up[1]);
  close (down[0]);
  if (read (up[0], &c, 1) != 1)
    die ("holder did not lock");
  close (up[0]);
  *release = down[1];
  return pid;
}

static void
release_holder (pid_t pid, int fd)
{
  int st;
  close (fd);
  waitpid (pid, &st, 0);
}

static void
test_locks (void)
{
  struct qk_source *s, *r;
  int rel;
  pid_t pid;
  char want[64];

  mkfile ("locked", 4096, 7);
  /* a child holds a writer's locks */
  pid = holder ("locked", QK_LOCK_READ | QK_LOCK_WRITE, &rel);
  s = qk_source_file_rw (path_of ("locked"), QK_IO_LOCK);
  ok (s == NULL && qk_get_errno () == EBUSY,
      "a writer is refused while another writer holds the image");
  printf ("# %s\n", qk_get_error ());
  snprintf (want, sizeof want, "(pid %d)", (int) pid);
  ok (strstr (qk_get_error (), want) != NULL
      && strstr (qk_get_error (), "\"write\"") != NULL,
      "the message names the permission and the holder's pid");
  r = qk_source_file (path_of ("locked"));
  ok (qk_source_lock_test (r, QK_LOCK_READ) < 0 && qk_get_errno () == EBUSY,
      "lock_test: a reader sees the writer");
  ok (qk_source_lock (r, QK_LOCK_READ) < 0 && qk_get_errno () == EBUSY,
      "and cannot take read locks");
  release_holder (pid, rel);
  ok (qk_source_lock (r, QK_LOCK_READ) == 0, "once the writer is gone, it can");

  /* we hold a reader's locks: another reader is fine, a writer is not */
  pid = holder ("locked", QK_LOCK_READ, &rel);
  ok (qk_source_lock_test (r, QK_LOCK_READ) == 0, "two readers share");
  ok (qk_source_lock (r, QK_LOCK_READ | QK_LOCK_WRITE) < 0
      && qk_get_errno () == EBUSY, "a writer is refused while a reader reads");
  ok (qk_source_lock_test (r, QK_LOCK_READ) == 0,
      "the failed upgrade kept the read locks only");
  release_holder (pid, rel);
  ok (qk_source_lock (r, QK_LOCK_WRITE) == 0, "upgrade once alone");
  pid = fork ();
  if (pid == 0) {
    struct qk_source *c = qk_source_file_rw (path_of ("locked"), QK_IO_LOCK);
    _exit (c == NULL && qk_get_errno () == EBUSY ? 0 : 1);
  }
  {
    int st;
    waitpid (pid, &st, 0);
    ok (WIFEXITED (st) && WEXITSTATUS (st) == 0,
        "another process cannot write while we hold the write locks");
  }
  ok (qk_source_lock (r, QK_LOCK_NONE) == 0, "unlock");
  s = qk_source_file_rw (path_of ("locked"), QK_IO_LOCK);
  ok (s != NULL, "then a writer gets in");
  qk_source_close (s);
  qk_source_close (r);
}

/* The bytes fd holds OFD locks on, as /proc/self/fdinfo lists them, as
 * a string of offsets ("100 201 203"). */
static void
held_bytes (int fd, char *out, size_t len)
{
  char path[64], line[256];
  FILE *f;

  out[0] = '\0';
  snprintf (path, sizeof path, "/proc/self/fdinfo/%d", fd);
  f = fopen (path, "re");
  if (f == NULL)
    return;
  while (fgets (line, sizeof line, f)) {
    long long a, b;
    char *p = strrchr (line, ' ');
    if (strncmp (line, "lock:", 5) != 0 || p == NULL)
      continue;
    *p = '\0';
    b = atoll (p + 1);
    p = strrchr (line, ' ');
    if (p == NULL)
      continue;
    a = atoll (p + 1);
    for (long long x = a; x <= b && strlen (out) + 8 < len; x++)
      snprintf (out + strlen (out), len - strlen (out), "%s%lld",
                out[0] ? " " : "", x);
  }
  fclose (f);
  /* fdinfo lists the newest lock first: sort the offsets */
  {
    int v[16], n = 0;
    char *t, *save = NULL;
    for (t = strtok_r (out, " ", &save); t && n < 16;
         t = strtok_r (NULL, " ", &save))
      v[n++] = atoi (t);
    for (int i = 1; i < n; i++)
      for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
        int x = v[j]; v[j] = v[j - 1]; v[j - 1] = x;
      }
    out[0] = '\0';
    for (int i = 0; i < n; i++)
      snprintf (out + strlen (out), len - strlen (out), "%s%d",
                i ? " " : "", v[i]);
  }
}

/* Going from mode to mode changes only the bytes that differ; the bytes
 * held after each step are QEMU's for that mode (a reader: consistent
 * read, and write and resize not shared; a writer adds write and
 * resize), whatever the mode before. */
static void
test_lock_bytes (void)
{
  static const struct { unsigned mode; const char *bytes; } step[] = {
    { QK_LOCK_READ, "100 201 203" },
    { QK_LOCK_READ | QK_LOCK_WRITE, "100 101 103 201 203" },
    { QK_LOCK_READ, "100 201 203" },
    { QK_LOCK_NONE, "" },
    { QK_LOCK_READ | QK_LOCK_WRITE, "100 101 103 201 203" },
    { QK_LOCK_NONE, "" },
  };
  unsigned mode = QK_LOCK_NONE;
  char got[128];
  int fd;

  mkfile ("bytes", 4096, 3);
  fd = open (path_of ("bytes"), O_RDWR | O_CLOEXEC);
  if (fd < 0)
    die ("open");
  for (size_t i = 0; i < sizeof step / sizeof *step; i++) {
    int r = qk_fd_lock (fd, "bytes", mode, step[i].mode, false);
    held_bytes (fd, got, sizeof got);
    ok (r == 0 && strcmp (got, step[i].bytes) == 0,
        "lock step %zu: holds bytes [%s] (want [%s])", i, got,
        step[i].bytes);
    mode = step[i].mode;
  }
  close (fd);
}

/* The same against QEMU itself. */
static void
test_qemu_locks (void)
{
  bool ci = getenv ("CI") && strcmp (getenv ("CI"), "true") == 0;
  char cmd[1200];
  struct qk_source *s;
  pid_t pid;
  int st, i;

  if (!has_program ("qemu-io") || !has_program ("qemu-img")) {
    if (ci)
      ok (0, "qemu-io and qemu-img are installed (CI)");
    else
      printf ("ok %d # SKIP qemu-io or qemu-img is not installed\n", ++tap_n);
    return;
  }
  snprintf (cmd, sizeof cmd, "qemu-img create -q -f qcow2 '%s' 1M",
            path_of ("q.qcow2"));
  if (system (cmd) != 0)
    die ("qemu-img create");

  /* qemu-io holds the image (read-write) */
  pid = fork ();
  if (pid < 0)
    die ("fork");
  if (pid == 0) {
    int nul = open ("/dev/null", O_RDWR);
    dup2 (nul, 0);
    dup2 (nul, 1);
    execlp ("qemu-io", "qemu-io", "-c", "sleep 5000", path_of ("q.qcow2"),
            (char *) NULL);
    _exit (127);
  }
  s = qk_source_file (path_of ("q.qcow2"));
  for (i = 0; i < 100 && qk_source_lock_test (s, QK_LOCK_READ) == 0; i++) {
    struct timespec ts = { 0, 50 * 1000 * 1000 };
    nanosleep (&ts, NULL);
  }
  ok (i < 100, "qemu-io's locks are seen by lock_test");
  qk_source_close (s);
  s = qk_source_file_rw (path_of ("q.qcow2"), QK_IO_LOCK);
  ok (s == NULL && qk_get_errno () == EBUSY,
      "a writer is refused while qemu-io has the image");
  printf ("# %s\n", qk_get_error ());
  ok (strstr (qk_get_error (), "qemu-io") != NULL,
      "the message names qemu-io");
  kill (pid, SIGTERM);
  waitpid (pid, &st, 0);

  /* we hold the write locks: qemu-img info (without -U) is refused */
  s = qk_source_file_rw (path_of ("q.qcow2"), QK_IO_LOCK);
  ok (s != NULL, "a writer gets in once qemu-io is gone");
  snprintf (cmd, sizeof cmd, "qemu-img info '%s' >/dev/null 2>&1",
            path_of ("q.qcow2"));
  ok (system (cmd) != 0, "qemu-img info fails while we hold the write locks");
  snprintf (cmd, sizeof cmd, "qemu-img info -U '%s' >/dev/null 2>&1",
            path_of ("q.qcow2"));
  ok (system (cmd) == 0, "qemu-img info -U still works");
  ok (qk_source_lock (s, QK_LOCK_READ) == 0, "downgrade to reading");
  snprintf (cmd, sizeof cmd, "qemu-img info '%s' >/dev/null 2>&1",
            path_of ("q.qcow2"));
  ok (system (cmd) == 0, "qemu-img info shares the image with a reader");
  snprintf (cmd, sizeof cmd, "qemu-io -c 'write 0 512' '%s' >/dev/null 2>&1",
            path_of ("q.qcow2"));
  ok (system (cmd) != 0, "qemu-io cannot write while we read");
  qk_source_close (s);
  ok (system (cmd) == 0, "and can once we closed");
}

/* ---- durable files ---- */

static void
test_durable (void)
{
  struct qk_durable d;
  char buf[64] = "";
  int fd;

  ok (qk_durable_write (topfd, "new", "one", 3, 0644, 0) == 0,
      "durable write of a new file");
  fd = open (path_of ("new"), O_RDONLY);
  ok (fd >= 0 && read (fd, buf, sizeof buf) == 3 && memcmp (buf, "one", 3) == 0,
      "it holds its bytes");
  close (fd);
  ok (qk_durable_write (topfd, "new", "two", 3, 0644, 0) < 0
      && qk_get_errno () == EEXIST, "no replacing without QK_DURABLE_REPLACE");
  ok (qk_durable_write (topfd, "new", "three", 5, 0644, QK_DURABLE_REPLACE)
      == 0 && file_size ("new") == 5, "replacing with it");
  if (symlink ("new", path_of ("link")) < 0)
    die ("symlink");
  ok (qk_durable_write (topfd, "link", "x", 1, 0644, 0) < 0
      && qk_get_errno () == EEXIST, "a symlink leaf is not followed");
  ok (qk_durable_write (topfd, "link", "four", 4, 0644, QK_DURABLE_REPLACE)
      == 0 && file_size ("new") == 5 && file_size ("link") == 4,
      "replacing a symlink replaces the link, not its target");
  ok (qk_durable_write (topfd, "a/b", "x", 1, 0644, 0) < 0
      && qk_get_errno () == EINVAL
      && qk_durable_write (topfd, "..", "x", 1, 0644, 0) < 0,
      "a path is not a leaf");
  ok (qk_durable_begin (&d, topfd, "aborted", 0600) == 0, "begin");
  qk_durable_abort (&d);
  {
    char cmd[700];
    snprintf (cmd, sizeof cmd, "ls -A '%s' | grep -q qk-", top);
    ok (system (cmd) != 0, "no temporary file left behind");
  }
  ok (faccessat (topfd, "aborted", F_OK, 0) < 0, "abort creates nothing");
  ok (qk_durable_unlink (topfd, "new") == 0
      && faccessat (topfd, "new", F_OK, AT_SYMLINK_NOFOLLOW) < 0, "unlink");
}

int
main (void)
{
  const char *t = getenv ("TMPDIR");

  snprintf (top, sizeof top, "%s/qk-io.XXXXXX", t ? t : "/tmp");
  if (mkdtemp (top) == NULL)
    die ("mkdtemp");
  topfd = open (top, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (topfd < 0)
    die (top);

  test_sha256 ();
  test_readonly ();
  test_file_rw ();
  test_memory_rw ();
  test_memory_file_parity ();
  test_fault ();
  test_undo ();
  test_undo_replay ();
  test_undo_crash_sweep ();
  test_locks ();
  test_lock_bytes ();
  test_qemu_locks ();
  test_durable ();

  close (topfd);
  {
    char cmd[300];
    snprintf (cmd, sizeof cmd, "rm -rf '%s'", top);
    if (system (cmd) != 0)
      return 1;
  }
  return tap_done ();
}
