/* A main for the harnesses without libFuzzer: replays every file named on
 * the command line, and every file in a directory named there. Used by
 * make check (seed corpus and tests/regress/) and by AFL++. gzipped
 * inputs (*.gz) are inflated first. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "fuzz.h"

#define QK_MAX_FUZZ_INPUT (64U << 20)

static int
replay_file (const char *path)
{
  gzFile f = gzopen (path, "rb");   /* reads plain files too */
  uint8_t *buf;
  int n;

  if (f == NULL) {
    fprintf (stderr, "%s: %s\n", path, strerror (errno));
    return -1;
  }
  buf = malloc (QK_MAX_FUZZ_INPUT);
  if (buf == NULL) {
    gzclose (f);
    return -1;
  }
  n = gzread (f, buf, QK_MAX_FUZZ_INPUT);
  gzclose (f);
  if (n < 0) {
    fprintf (stderr, "%s: read error\n", path);
    free (buf);
    return -1;
  }
  LLVMFuzzerTestOneInput (buf, n);
  free (buf);
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
  for (int i = 1; i < argc; i++)
    if (replay (argv[i], &count) < 0)
      r = 1;
  fprintf (stderr, "%s: replayed %u inputs\n", argv[0], count);
  return r;
}
