/* Unit tests of lib/util/path.c: lexical helpers, and resolution under a
 * root, both by openat2 and by the O_NOFOLLOW walk, on a tree of hostile
 * symlinks next to a sentinel directory outside the root. */
#include <config.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "util/path.h"
#include "../tap.h"

static char top[256];

static void
mk (const char *rel, const char *content)
{
  char p[512];
  int fd;
  snprintf (p, sizeof p, "%s/%s", top, rel);
  fd = open (p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0 || write (fd, content, strlen (content)) < 0) {
    perror (p);
    exit (1);
  }
  close (fd);
}

static void
mkd (const char *rel)
{
  char p[512];
  snprintf (p, sizeof p, "%s/%s", top, rel);
  if (mkdir (p, 0755) < 0) {
    perror (p);
    exit (1);
  }
}

static void
ln (const char *target, const char *rel)
{
  char p[512];
  snprintf (p, sizeof p, "%s/%s", top, rel);
  if (symlink (target, p) < 0) {
    perror (p);
    exit (1);
  }
}

/* What the file opened as path under r holds ("" on failure, "E:<errno>"). */
static const char *
read_under (const struct qk_root *r, const char *path)
{
  static char buf[64];
  int fd = qk_root_open (r, path, O_RDONLY, 0);
  ssize_t n;

  if (fd < 0) {
    snprintf (buf, sizeof buf, "E:%d", errno);
    return buf;
  }
  n = read (fd, buf, sizeof buf - 1);
  close (fd);
  buf[n > 0 ? n : 0] = '\0';
  return buf;
}

static void
lexical (void)
{
  static const char *const cases[][2] = {
    { "/a//b/./c", "/a/b/c" }, { "a/../b", "b" }, { "../a", "../a" },
    { "../../a/..", "../.." }, { "/..", "/" }, { "/a/..", "/" },
    { "", "." }, { "a/..", "." }, { "/a/b/../../..", "/" },
    { "x/y/../../../z", "../z" }, { "./a/", "a" },
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char *n = qk_path_normalize (cases[i][0]);
    is_str (n, cases[i][1], "normalize '%s'", cases[i][0]);
    free (n);
  }
  ok (qk_path_has_protocol ("nbd:localhost:10809"), "nbd: is a protocol");
  ok (qk_path_has_protocol ("json:{}"), "json: is a protocol");
  ok (!qk_path_has_protocol ("./a:b"), "./a:b is a file");
  ok (!qk_path_has_protocol ("/x/a:b"), "/x/a:b is a file");
  char *c = qk_path_combine ("/d/e/top.qcow2", "../base");
  is_str (c, "/d/e/../base", "combine relative");
  free (c);
  c = qk_path_combine ("top.qcow2", "base");
  is_str (c, "base", "combine without a directory");
  free (c);
  c = qk_path_combine ("/d/top", "/abs");
  is_str (c, "/abs", "combine absolute");
  free (c);
}

static void
resolution (const char *how)
{
  struct qk_root in, beneath;
  char root[300], *h, *leaf;
  int fd;

  snprintf (root, sizeof root, "%s/root", top);
  ok (qk_root_init (&in, root, QK_ROOT_IN) == 0, "%s: root init", how);
  ok (qk_root_init (&beneath, root, QK_ROOT_BENEATH) == 0,
      "%s: beneath init", how);

  is_str (read_under (&in, "/etc/f"), "inside", "%s: plain file", how);
  is_str (read_under (&in, "etc/f"), "inside", "%s: relative = from the root",
          how);
  is_str (read_under (&in, "/abs/f"), "inside",
          "%s: absolute symlink restarts at the root", how);
  is_str (read_under (&in, "/up/f"), "inside",
          "%s: ../../.. symlink stops at the root", how);
  is_str (read_under (&in, "/../../outside/secret"), "E:2",
          "%s: .. in the path stops at the root", how);
  is_str (read_under (&in, "/leaf"), "inside",
          "%s: last-component absolute symlink stays in", how);
  is_str (read_under (&in, "/etc/rel"), "inside",
          "%s: relative symlink followed", how);
  is_str (read_under (&in, "/loop/x"), "E:40", "%s: symlink loop is ELOOP",
          how);
  fd = qk_root_open (&in, "/leaf", O_RDONLY | O_NOFOLLOW, 0);
  ok (fd < 0 && errno == ELOOP, "%s: O_NOFOLLOW refuses a last symlink", how);
  if (fd >= 0)
    close (fd);
  /* beneath: leaving fails */
  is_str (read_under (&beneath, "etc/f"), "inside", "%s: beneath, inside", how);
  is_str (read_under (&beneath, "abs/f"), "E:18",
          "%s: beneath, an absolute symlink is EXDEV", how);
  is_str (read_under (&beneath, "../outside/secret"), "E:18",
          "%s: beneath, .. out is EXDEV", how);
  is_str (read_under (&beneath, "up/f"), "E:18",
          "%s: beneath, a symlink climbing out is EXDEV", how);
  /* creating through a dangling symlink never creates outside */
  fd = qk_root_open (&in, "/dangling", O_WRONLY | O_CREAT, 0644);
  if (fd >= 0)
    close (fd);
  {
    char p[512];
    struct stat st;
    snprintf (p, sizeof p, "%s/outside/created", top);
    ok (stat (p, &st) < 0, "%s: O_CREAT through a symlink stays inside", how);
    snprintf (p, sizeof p, "%s/root/outside/created", top);
    ok (stat (p, &st) == 0 || fd < 0,
        "%s: ... it made the sysroot's file (or refused)", how);
  }
  /* host paths */
  h = qk_root_host_path (&in, "/abs/f");
  {
    char want[512];
    snprintf (want, sizeof want, "%s/root/etc/f", top);
    is_str (h, want, "%s: host path of an absolute link", how);
    free (h);
    h = qk_root_host_path (&in, "/up/missing/../x");
    snprintf (want, sizeof want, "%s/root/etc/x", top);
    is_str (h, want, "%s: host path, missing components lexical", how);
    free (h);
    h = qk_root_host_path (&in, "/");
    is_str (h, root, "%s: host path of the root", how);
    free (h);
    is_str (qk_root_strip (&in, want), "/etc/x", "%s: strip", how);
    ok (qk_root_strip (&in, "/etc/passwd") == NULL, "%s: strip outside", how);
  }
  /* the parent of a leaf: the leaf is never followed */
  fd = qk_root_open_parent (&in, "/abs/leafname", &leaf);
  ok (fd >= 0 && strcmp (leaf, "leafname") == 0, "%s: open_parent", how);
  {
    struct stat a, b;
    char p[512];
    snprintf (p, sizeof p, "%s/root/etc", top);
    ok (fd >= 0 && fstat (fd, &a) == 0 && stat (p, &b) == 0
        && a.st_ino == b.st_ino, "%s: open_parent resolved in the root", how);
  }
  if (fd >= 0)
    close (fd);
  free (leaf);
  fd = qk_root_open_parent (&in, "/etc/..", &leaf);
  ok (fd < 0 && errno == EINVAL, "%s: open_parent of .. is EINVAL", how);
  qk_root_fini (&in);
  qk_root_fini (&beneath);
}

int
main (void)
{
  const char *t = getenv ("TMPDIR");

  snprintf (top, sizeof top, "%s/qk-path.XXXXXX", t ? t : "/tmp");
  if (mkdtemp (top) == NULL) {
    perror ("mkdtemp");
    return 1;
  }
  mkd ("outside");
  mk ("outside/secret", "outside");
  mk ("outside/f", "outside");
  mkd ("root");
  mkd ("root/etc");
  mkd ("root/outside");
  mk ("root/etc/f", "inside");
  ln ("f", "root/etc/rel");
  ln ("/etc", "root/abs");
  ln ("../../../../../../../../../../etc", "root/up");
  ln ("/etc/f", "root/leaf");
  ln ("/outside/created", "root/dangling");
  ln ("loop", "root/loop");

  lexical ();
  resolution ("openat2");
  qk_path_force_walk = 1;
  resolution ("walk");

  {
    char cmd[300];
    snprintf (cmd, sizeof cmd, "rm -rf '%s'", top);
    if (system (cmd) != 0)
      return 1;
  }
  return tap_done ();
}
