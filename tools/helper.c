/* Commands of tools/qcowkit that are programs of their own, because they
 * need more than the public libqcowkit: `qcowkit fuzz-corpus` runs
 * qcowkit-fuzz-corpus (see tools/cmd-fuzz-corpus.c for why), found next
 * to this program or to its libtool wrapper (the build tree), or in the
 * package's libexec directory. */
#include <config.h>

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tool.h"

static int
run_helper (const char *name, int argc, char **argv)
{
  char self[PATH_MAX], path[PATH_MAX + 64];
  ssize_t n = readlink ("/proc/self/exe", self, sizeof self - 1);

  (void) argc;
  if (n > 0) {
    char *slash;
    self[n] = '\0';
    slash = strrchr (self, '/');
    if (slash) {
      *slash = '\0';
      snprintf (path, sizeof path, "%s/%s", self, name);
      if (access (path, X_OK) == 0)
        execv (path, argv);
      /* the build tree's real binary is in tools/.libs (libtool) */
      slash = strrchr (self, '/');
      if (slash && strcmp (slash, "/.libs") == 0) {
        *slash = '\0';
        snprintf (path, sizeof path, "%s/%s", self, name);
        if (access (path, X_OK) == 0)
          execv (path, argv);
      }
    }
  }
  snprintf (path, sizeof path, "%s/%s", PKGLIBEXECDIR, name);
  execv (path, argv);
  errx_ ("cannot run %s: %s", path, strerror (errno));
  return EXIT_ERR;
}

int
cmd_fuzz_corpus (int argc, char **argv)
{
  return run_helper ("qcowkit-fuzz-corpus", argc, argv);
}
