/* A main for the harnesses without libFuzzer: replays every file named on
 * the command line, and every file in a directory named there. Used by
 * make check (seed corpus and tests/regress/) and by AFL++. gzipped
 * inputs (*.gz) are inflated first.
 *
 * QK_FUZZ_TIME=N (N >= 2) runs each input N times and prints, per input,
 * the fastest of the runs after the first (which pays for first-time
 * costs: pages, coverage, caches) in microseconds, then the path: where
 * a harness spends its time, input by input (doc/FUZZING.md). */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <zlib.h>

#include "fuzz.h"

#define QK_MAX_FUZZ_INPUT (64U << 20)

static unsigned time_runs;   /* QK_FUZZ_TIME */

static uint64_t
now_ns (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000000000 + (uint64_t) ts.tv_nsec;
}

static int
replay_file (const char *path)
{
  gzFile f = gzopen (path, "rb");   /* reads plain files too */
  uint8_t *buf = NULL, *in;
  size_t len = 0, cap = 0;
  int n;

  if (f == NULL) {
    fprintf (stderr, "%s: %s\n", path, strerror (errno));
    return -1;
  }
  /* grown as it reads (a 64 MiB buffer for every input made a replay
   * cost its page faults, about 0.1 s under ASan) */
  do {
    if (len == cap) {
      uint8_t *p;
      cap = cap ? 2 * cap : 64U << 10;
      if (cap > QK_MAX_FUZZ_INPUT)
        cap = QK_MAX_FUZZ_INPUT;
      if (len == cap)
        break;
      p = realloc (buf, cap);
      if (p == NULL) {
        free (buf);
        gzclose (f);
        return -1;
      }
      buf = p;
    }
    n = gzread (f, buf + len, (unsigned) (cap - len));
    if (n > 0)
      len += (size_t) n;
  } while (n > 0);
  gzclose (f);
  if (n < 0) {
    fprintf (stderr, "%s: read error\n", path);
    free (buf);
    return -1;
  }
  /* the input in a buffer of its own size, as libFuzzer passes it, so
   * that ASan sees a read past its end */
  in = malloc (len ? len : 1);
  if (in == NULL) {
    free (buf);
    return -1;
  }
  if (len)
    memcpy (in, buf, len);
  free (buf);
  if (time_runs >= 2) {
    uint64_t best = UINT64_MAX;
    for (unsigned i = 0; i < time_runs; i++) {
      uint64_t t0 = now_ns (), t;
      LLVMFuzzerTestOneInput (in, len);
      t = now_ns () - t0;
      if (i > 0 && t < best)
        best = t;
    }
    printf ("%" PRIu64 " %s\n", best / 1000, path);
  }
  else
    LLVMFuzzerTestOneInput (in, len);
  free (in);
  return 0;
}

static int
replay (const char *path, unsigned *count)
{
  struct stat st;
  if (stat (path, &st) < 0) {
    fprintf (stderr, "%s: %s\n", path, strerror (errno));
    return -1;
  }
  if (S_ISDIR (st.st_mode)) {
    DIR *d = opendir (path);
    struct dirent *e;
    int r = 0;
    if (d == NULL)
      return -1;
    while ((e = readdir (d)) != NULL) {
      char p[4096];
      if (e->d_name[0] == '.')
        continue;
      snprintf (p, sizeof p, "%s/%s", path, e->d_name);
      if (replay (p, count) < 0)
        r = -1;
    }
    closedir (d);
    return r;
  }
  (*count)++;
  return replay_file (path);
}

int
main (int argc, char **argv)
{
  unsigned count = 0;
  int r = 0;

  if (argc < 2) {
    fprintf (stderr, "usage: %s FILE|DIR...\n", argv[0]);
    return 2;
  }
  /* every input replayed whole: no bounds of fuzz.h on the work */
  setenv ("QK_FUZZ_BOUNDS", "off", 0);
  if (getenv ("QK_FUZZ_TIME"))
    time_runs = (unsigned) strtoul (getenv ("QK_FUZZ_TIME"), NULL, 10);
  for (int i = 1; i < argc; i++)
    if (replay (argv[i], &count) < 0)
      r = 1;
  fprintf (stderr, "%s: replayed %u inputs\n", argv[0], count);
  return r;
}
