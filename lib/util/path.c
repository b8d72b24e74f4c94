/* lib/util/path.c: paths resolved under a root (see path.h for the rule).
 *
 * openat2(RESOLVE_IN_ROOT | RESOLVE_BENEATH) does it in the kernel, where
 * it exists. The walk below is its equivalent elsewhere (and what builds
 * host paths for messages): each component is looked at with fstatat
 * (AT_SYMLINK_NOFOLLOW) and opened with O_NOFOLLOW from the directory
 * descriptor of the one before, so a component that becomes a symlink
 * between the look and the open fails instead of being followed. ".."
 * pops a descriptor (never past the root); a symlink's target is spliced
 * into the rest of the path, from the root when it is absolute. */
#include <config.h>

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#ifdef HAVE_LINUX_OPENAT2_H
#include <linux/openat2.h>
#endif

#include "internal.h"
#include "util/path.h"

int qk_path_force_walk;

#define MAX_LINKS 40            /* as the kernel's MAXSYMLINKS */
#define MAX_DEPTH 2048

/* ---- lexical helpers ---- */

bool
qk_path_has_protocol (const char *name)
{
  const char *p = name + strcspn (name, ":/");
  return *p == ':';
}

char *
qk_path_combine (const char *base, const char *name)
{
  const char *slash;
  char *r;

  if (name[0] == '/' || (slash = strrchr (base, '/')) == NULL)
    return strdup (name);
  if (asprintf (&r, "%.*s%s", (int) (slash - base + 1), base, name) < 0)
    return NULL;
  return r;
}

QK_EXPORT char *
qk_path_normalize (const char *p)
{
  size_t n = strlen (p);
  char *out = malloc (n + 2), *o = out;
  const char *s = p;

  if (out == NULL)
    return NULL;
  if (*s == '/')
    *o++ = '/';
  while (*s) {
    const char *e;
    size_t l;
    while (*s == '/')
      s++;
    if (*s == '\0')
      break;
    e = strchr (s, '/');
    l = e ? (size_t) (e - s) : strlen (s);
    if (l == 1 && s[0] == '.')
      ;
    else if (l == 2 && s[0] == '.' && s[1] == '.' && o - out == 1
             && out[0] == '/')
      ;       /* "/.." is "/" */
    else if (l == 2 && s[0] == '.' && s[1] == '.' && o > out) {
      /* drop the last component, unless it is ".." itself */
      char *q = o;
      while (q > out && q[-1] != '/')
        q--;
      if (o - q == 2 && q[0] == '.' && q[1] == '.') {
        *o++ = '/';
        *o++ = '.';
        *o++ = '.';
      }
      else {
        o = q;
        if (o > out + 1 || (o == out + 1 && out[0] != '/'))
          o--;          /* the slash before it */
      }
    }
    else {
      if (o > out && o[-1] != '/')
        *o++ = '/';
      memcpy (o, s, l);
      o += l;
    }
    s += l;
  }
  if (o == out)
    *o++ = '.';
  *o = '\0';
  return out;
}

/* ---- roots ---- */

int
qk_root_init (struct qk_root *r, const char *dir, enum qk_root_mode mode)
{
  size_t n;

  r->fd = AT_FDCWD;
  r->mode = QK_ROOT_HOST;
  r->path = NULL;
  if (dir == NULL || mode == QK_ROOT_HOST) {
    r->path = strdup ("");
    if (r->path == NULL) {
      set_error (ENOMEM, "strdup");
      return -1;
    }
    return 0;
  }
  n = strlen (dir);
  while (n > 1 && dir[n - 1] == '/')
    n--;
  r->path = strndup (dir, n);
  if (r->path == NULL) {
    set_error (ENOMEM, "strdup");
    return -1;
  }
  r->fd = open (dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (r->fd < 0) {
    set_error (errno, "open %s", dir);
    free (r->path);
    r->path = NULL;
    r->fd = AT_FDCWD;
    return -1;
  }
  r->mode = mode;
  if (strcmp (r->path, "/") == 0)
    r->path[0] = '\0';        /* host paths are "" + "/a/b" */
  return 0;
}

void
qk_root_fini (struct qk_root *r)
{
  if (r->fd >= 0)
    close (r->fd);
  r->fd = AT_FDCWD;
  free (r->path);
  r->path = NULL;
}

QK_EXPORT struct qk_root *
qk_root_new (const char *dir, enum qk_root_mode mode)
{
  struct qk_root *r = malloc (sizeof *r);

  if (r == NULL) {
    set_error (ENOMEM, "malloc");
    return NULL;
  }
  if (qk_root_init (r, dir, mode) < 0) {
    free (r);
    return NULL;
  }
  return r;
}

QK_EXPORT void
qk_root_free (struct qk_root *r)
{
  if (r == NULL)
    return;
  qk_root_fini (r);
  free (r);
}

QK_EXPORT const char *
qk_root_strip (const struct qk_root *r, const char *path)
{
  size_t n = strlen (r->path);

  if (strncmp (path, r->path, n) != 0 || (path[n] != '/' && path[n] != '\0'))
    return NULL;
  return path[n] ? path + n : "/";
}

/* ---- the walk ---- */

struct walk {
  const struct qk_root *r;
  int *fd;                  /* fd[0] is the root's, not owned */
  size_t *hlen;             /* length of host at each depth */
  size_t depth, cap;
  char *host;               /* the host path so far (want_host) */
  size_t hcap;
  char *todo;               /* what is left to resolve */
  bool want_host;
  bool lexical;             /* a component did not exist: the rest as written */
};

static void
walk_free (struct walk *w)
{
  for (size_t i = 1; i <= w->depth; i++)
    if (w->fd[i] >= 0)
      close (w->fd[i]);
  free (w->fd);
  free (w->hlen);
  free (w->host);
  free (w->todo);
}

static int
host_append (struct walk *w, const char *comp, size_t l)
{
  size_t cur = w->hlen[w->depth];
  char *h;

  if (!w->want_host)
    return 0;
  if (cur + l + 2 > w->hcap) {
    size_t nc = (cur + l + 2) * 2;
    h = realloc (w->host, nc);
    if (h == NULL) {
      errno = ENOMEM;
      return -1;
    }
    w->host = h;
    w->hcap = nc;
  }
  w->host[cur] = '/';
  memcpy (w->host + cur + 1, comp, l);
  w->host[cur + l + 1] = '\0';
  return 0;
}

/* Push a resolved directory (fd may be -1 in lexical mode). */
static int
push (struct walk *w, int fd, const char *comp, size_t l)
{
  if (w->depth + 1 >= MAX_DEPTH) {
    if (fd >= 0)
      close (fd);
    errno = ENAMETOOLONG;
    return -1;
  }
  if (w->depth + 2 > w->cap) {
    size_t nc = w->cap * 2;
    int *f = realloc (w->fd, nc * sizeof *f);
    if (f)
      w->fd = f;
    size_t *h = f ? realloc (w->hlen, nc * sizeof *h) : NULL;
    if (h == NULL) {
      if (fd >= 0)
        close (fd);
      errno = ENOMEM;
      return -1;
    }
    w->hlen = h;
    w->cap = nc;
  }
  if (host_append (w, comp, l) < 0) {
    if (fd >= 0)
      close (fd);
    return -1;
  }
  w->depth++;
  w->fd[w->depth] = fd;
  w->hlen[w->depth] = w->hlen[w->depth - 1] + (w->want_host ? l + 1 : 0);
  return 0;
}

static int
pop (struct walk *w)
{
  if (w->depth == 0)
    return w->r->mode == QK_ROOT_BENEATH ? (errno = EXDEV, -1) : 0;
  if (w->fd[w->depth] >= 0)
    close (w->fd[w->depth]);
  w->depth--;
  if (w->want_host)
    w->host[w->hlen[w->depth]] = '\0';
  return 0;
}

/* Replace todo by target + "/" + rest. */
static int
splice_link (struct walk *w, const char *target, const char *rest)
{
  char *n;

  if (asprintf (&n, "%s/%s", target, rest) < 0) {
    errno = ENOMEM;
    return -1;
  }
  free (w->todo);
  w->todo = n;
  if (target[0] == '/') {
    if (w->r->mode == QK_ROOT_BENEATH) {
      errno = EXDEV;
      return -1;
    }
    while (w->depth > 0)
      pop (w);
  }
  return 0;
}

/* Resolve path. Returns an fd of the last component opened with flags
 * (open mode), or 0 and w->host (want_host); -1 with errno. */
static int
walk (struct walk *w, const char *path, int flags, mode_t mode)
{
  unsigned links = 0;

  w->cap = 16;
  w->fd = malloc (w->cap * sizeof *w->fd);
  w->hlen = malloc (w->cap * sizeof *w->hlen);
  w->todo = strdup (path);
  w->hcap = strlen (w->r->path) + 64;
  w->host = w->want_host ? malloc (w->hcap) : NULL;
  if (w->fd == NULL || w->hlen == NULL || w->todo == NULL
      || (w->want_host && w->host == NULL)) {
    errno = ENOMEM;
    return -1;
  }
  w->fd[0] = w->r->fd;
  w->hlen[0] = strlen (w->r->path);
  if (w->want_host)
    memcpy (w->host, w->r->path, w->hlen[0] + 1);

  for (;;) {
    char *p = w->todo, *rest;
    size_t l;
    bool last;
    struct stat st;
    char comp[NAME_MAX + 1];

    while (*p == '/')
      p++;
    if (*p == '\0') {
      /* the path names the directory we are in */
      if (w->want_host)
        return 0;
      return openat (w->fd[w->depth], ".", flags | O_CLOEXEC, mode);
    }
    l = strcspn (p, "/");
    if (l > NAME_MAX) {
      errno = ENAMETOOLONG;
      return -1;
    }
    memcpy (comp, p, l);
    comp[l] = '\0';
    rest = p + l;
    while (*rest == '/')
      rest++;
    last = *rest == '\0';
    /* keep the rest; comp is a copy */
    memmove (w->todo, rest, strlen (rest) + 1);

    if (strcmp (comp, ".") == 0)
      continue;
    if (strcmp (comp, "..") == 0) {
      if (pop (w) < 0)
        return -1;
      continue;
    }
    if (w->lexical) {
      if (push (w, -1, comp, l) < 0)
        return -1;
      continue;
    }
    if (fstatat (w->fd[w->depth], comp, &st, AT_SYMLINK_NOFOLLOW) < 0) {
      if (errno == ENOENT && w->want_host) {
        w->lexical = true;
        if (push (w, -1, comp, l) < 0)
          return -1;
        continue;
      }
      if (errno == ENOENT && last && (flags & O_CREAT))
        return openat (w->fd[w->depth], comp,
                       flags | O_NOFOLLOW | O_CLOEXEC, mode);
      return -1;
    }
    if (S_ISLNK (st.st_mode) && !(last && (flags & O_NOFOLLOW) && !w->want_host)) {
      char target[PATH_MAX];
      ssize_t n;

      if (++links > MAX_LINKS) {
        errno = ELOOP;
        return -1;
      }
      n = readlinkat (w->fd[w->depth], comp, target, sizeof target - 1);
      if (n < 0)
        return -1;
      target[n] = '\0';
      {
        char *r = strdup (w->todo);
        int s;
        if (r == NULL) {
          errno = ENOMEM;
          return -1;
        }
        s = splice_link (w, target, r);
        free (r);
        if (s < 0)
          return -1;
      }
      continue;
    }
    if (last && !w->want_host)
      return openat (w->fd[w->depth], comp, flags | O_NOFOLLOW | O_CLOEXEC,
                     mode);
    if (last && w->want_host) {
      if (push (w, -1, comp, l) < 0)
        return -1;
      continue;
    }
    if (!S_ISDIR (st.st_mode)) {
      errno = ENOTDIR;
      return -1;
    }
    {
      int fd = openat (w->fd[w->depth], comp,
                       O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (fd < 0)
        return -1;
      if (push (w, fd, comp, l) < 0)
        return -1;
    }
  }
}

#if defined(SYS_openat2) && defined(HAVE_LINUX_OPENAT2_H)
static int
try_openat2 (const struct qk_root *r, const char *path, int flags,
             mode_t mode)
{
  static int no_openat2;
  struct open_how how = {
    .flags = (uint64_t) (flags | O_CLOEXEC),
    .mode = ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) ? mode
                                                                   : 0,
    .resolve = RESOLVE_NO_MAGICLINKS
      | (r->mode == QK_ROOT_BENEATH ? RESOLVE_BENEATH : RESOLVE_IN_ROOT),
  };

  if (no_openat2 || qk_path_force_walk)
    return -2;
  while (*path == '/')
    path++;               /* from the root, in both modes */
  for (int i = 0; i < 8; i++) {
    long fd = syscall (SYS_openat2, r->fd, path[0] ? path : ".", &how,
                       sizeof how);
    if (fd >= 0)
      return fd;
    if (errno == ENOSYS || errno == E2BIG) {
      no_openat2 = 1;
      return -2;
    }
    if (errno != EAGAIN)
      return -1;
  }
  return -2;    /* renames kept racing: the walk */
}
#else
static int
try_openat2 (const struct qk_root *r, const char *path, int flags,
             mode_t mode)
{
  (void) r; (void) path; (void) flags; (void) mode;
  return -2;
}
#endif

QK_EXPORT int
qk_root_open (const struct qk_root *r, const char *path, int flags,
              mode_t mode)
{
  struct walk w = { .r = r };
  int fd, e;

  if (r->mode == QK_ROOT_HOST) {
    fd = openat (AT_FDCWD, path, flags | O_CLOEXEC, mode);
    if (fd < 0)
      set_error (errno, "open %s", path);
    return fd;
  }
  fd = try_openat2 (r, path, flags, mode);
  if (fd == -2) {
    fd = walk (&w, path, flags, mode);
    e = errno;
    walk_free (&w);
    errno = e;
  }
  if (fd < 0) {
    e = errno;
    if (e == EXDEV)
      set_error (e, "%s%s%s leads outside %s", r->path,
                 path[0] == '/' ? "" : "/", path, r->path);
    else
      set_error (e, "open %s%s%s", r->path, path[0] == '/' ? "" : "/", path);
    errno = e;
  }
  return fd;
}

int
qk_root_open_parent (const struct qk_root *r, const char *path, char **leaf)
{
  const char *s;
  char *dir;
  size_t n = strlen (path);
  int fd;

  while (n > 1 && path[n - 1] == '/')
    n--;
  s = memrchr (path, '/', n);
  *leaf = s ? strndup (s + 1, n - (s + 1 - path)) : strndup (path, n);
  if (*leaf == NULL) {
    set_error (ENOMEM, "strdup");
    return -1;
  }
  if ((*leaf)[0] == '\0' || strcmp (*leaf, ".") == 0
      || strcmp (*leaf, "..") == 0) {
    set_error (EINVAL, "%s names no file", path);
    free (*leaf);
    *leaf = NULL;
    return -1;
  }
  dir = s ? strndup (path, s == path ? 1 : (size_t) (s - path))
          : strdup (r->mode == QK_ROOT_HOST ? "." : "");
  if (dir == NULL) {
    set_error (ENOMEM, "strdup");
    free (*leaf);
    *leaf = NULL;
    return -1;
  }
  fd = qk_root_open (r, dir, O_RDONLY | O_DIRECTORY, 0);
  free (dir);
  if (fd < 0) {
    free (*leaf);
    *leaf = NULL;
  }
  return fd;
}

QK_EXPORT char *
qk_root_host_path (const struct qk_root *r, const char *path)
{
  struct walk w = { .r = r, .want_host = true };
  char *h;
  int e;

  if (r->mode == QK_ROOT_HOST)
    return strdup (path);
  if (walk (&w, path, 0, 0) < 0) {
    e = errno;
    walk_free (&w);
    errno = e;
    return NULL;
  }
  h = w.host;
  w.host = NULL;
  walk_free (&w);
  if (h[0] == '\0') {
    free (h);
    return strdup ("/");
  }
  return h;
}
