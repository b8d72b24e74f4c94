/* lib/meta: converting between the per-file and the bulk layouts,
 * crash-safely, without ever following a symlink out of the metadata
 * directory.
 *
 * Every operation is relative to one directory descriptor, KIND/ (the
 * snapshot or checkpoint directory, resolved under the sysroot by
 * lib/util/path.c), on single names that are never followed: mkdirat,
 * openat(O_CREAT | O_EXCL | O_NOFOLLOW), renameat2(RENAME_NOREPLACE),
 * unlinkat. A symbolic link where a layout should be is refused, never
 * used.
 *
 * Names, in KIND/ (D the domain):
 *   D/              per-file layout          D.xml          bulk layout
 *   .D.qk-stage/    qcowkit's staging directory, recognised by the marker
 *                   file .qcowkit-stage inside it (not by its name):
 *     new/          the per-file layout being written
 *     new.xml       the bulk layout being written
 *     old/          the old per-file directory being deleted (--no-backup)
 *   .D.per-file.qk-backup[.N]/, .D.bulk.qk-backup[.N]: kept old layouts
 *
 * Protocol: (0) make the staging directory and its marker, fsync both and
 * KIND/; (1) write the new layout in it, fsync every file and directory;
 * (2) read it back and compare with what was loaded (names, parents,
 * current, and a hash of every element's bytes without <active>);
 * (3) rename it to its real name (never replacing anything) and fsync
 * KIND/: from here both layouts exist and are equal (the commit point);
 * (4) rename the old layout to its backup name, or into the staging
 * directory and delete it (--no-backup; a bulk file is unlinked), and
 * fsync KIND/; (5) remove the staging directory.
 *
 * What a crash leaves, and how a re-run finishes (recover ()):
 *   during (0)     a staging directory, empty or holding only its marker
 *                  (or part of it): removed;
 *   during (1)-(2) staging with new/ or new.xml: removed (roll back);
 *   after (3)      both layouts, equal: completed towards the layout asked
 *                  for (roll forward);
 *   during (4)     staging with old/ and the bulk file: old/ deleted;
 *   during (5)     a staging directory without new or old: removed.
 * A staging directory without a valid marker, or holding anything else,
 * is not ours: convert refuses and says so. Temporaries of earlier
 * versions (.D.qk-new, .D.xml.qk-new, .D.qk-old) are recognised by name
 * only, so they are reported and never removed.
 *
 * Only what qcowkit made is removed: the staging directory's contents;
 * and with --no-backup the old layout, whose files must all be the
 * metadata files that were read and carried over (anything else in the
 * old directory makes --no-backup refuse before anything is written).
 *
 * QCOWKIT_FAULT=after-OP-N (OP: write, fsync, rename, unlink, mkdir,
 * rmdir) kills the process with SIGKILL right after the Nth such
 * operation, to test exactly that. */
#include <config.h>

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "meta/meta.h"
#include "io/io.h"

#define MARKER ".qcowkit-stage"

/* ---- operations on names in a directory, never following them ---- */

/* The places of one conversion: KIND/ and the names in it. */
struct place {
  int base;                 /* KIND/ */
  char *base_path;          /* its host path, for messages */
  char *dir, *bulk, *stage; /* "D", "D.xml", ".D.qk-stage" */
};

static int
fsync_fd (int fd, const char *what)
{
  if (fsync (fd) < 0) {
    set_error (errno, "fsync %s", what);
    return -1;
  }
  qk_fault_point ("fsync");
  return 0;
}

/* renameat that never replaces: the target must not exist. */
static int
rename_noreplace (int fa, const char *a, int fb, const char *b)
{
  if (renameat2 (fa, a, fb, b, RENAME_NOREPLACE) == 0)
    goto done;
  if (errno != EINVAL && errno != ENOSYS) {
    set_error (errno, "rename %s to %s", a, b);
    return -1;
  }
  /* a file system without RENAME_NOREPLACE: check, then rename */
  {
    struct stat st;
    if (fstatat (fb, b, &st, AT_SYMLINK_NOFOLLOW) == 0) {
      set_error (EEXIST, "rename %s to %s", a, b);
      return -1;
    }
  }
  if (renameat (fa, a, fb, b) < 0) {
    set_error (errno, "rename %s to %s", a, b);
    return -1;
  }
done:
  qk_fault_point ("rename");
  return 0;
}

static int
unlink_at (int dfd, const char *name, int flags)
{
  if (unlinkat (dfd, name, flags) < 0 && errno != ENOENT) {
    set_error (errno, "%s %s", (flags & AT_REMOVEDIR) ? "rmdir" : "unlink",
               name);
    return -1;
  }
  qk_fault_point ((flags & AT_REMOVEDIR) ? "rmdir" : "unlink");
  return 0;
}

/* What is at name in dfd, not following it: 0 none, else st_mode's type. */
static mode_t
type_at (int dfd, const char *name)
{
  struct stat st;

  if (fstatat (dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
    return 0;
  return st.st_mode & S_IFMT;
}

static int
open_dir_at (int dfd, const char *name)
{
  int fd = openat (dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW
                   | O_CLOEXEC);
  if (fd < 0)
    set_error (errno, "open %s", name);
  return fd;
}

/* Empty a directory that qcowkit made (staging new/ or old/) and remove
 * it: its entries are unlinked, never followed (a symlink put there is
 * removed as a link), and a directory inside it is an error. */
static int
remove_our_dir (int pfd, const char *name)
{
  int fd = openat (pfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW
                   | O_CLOEXEC);
  DIR *d;
  struct dirent *e;

  if (fd < 0) {
    if (errno == ENOENT)
      return 0;
    set_error (errno, "open %s", name);
    return -1;
  }
  d = fdopendir (fd);
  if (d == NULL) {
    set_error (errno, "opendir %s", name);
    close (fd);
    return -1;
  }
  while ((e = readdir (d)) != NULL) {
    if (strcmp (e->d_name, ".") == 0 || strcmp (e->d_name, "..") == 0)
      continue;
    if (type_at (dirfd (d), e->d_name) == S_IFDIR) {
      set_error (EEXIST, "%s/%s is a directory; qcowkit did not make it",
                 name, e->d_name);
      closedir (d);
      return -1;
    }
    if (unlink_at (dirfd (d), e->d_name, 0) < 0) {
      closedir (d);
      return -1;
    }
  }
  closedir (d);
  return unlink_at (pfd, name, AT_REMOVEDIR);
}

static int
write_all (int fd, const void *buf, size_t len, const char *path)
{
  const char *p = buf;

  while (len) {
    ssize_t n = write (fd, p, len);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      set_error (errno, "write %s", path);
      return -1;
    }
    p += n;
    len -= n;
  }
  return 0;
}

static int
writev_all (int fd, struct iovec *iov, int n, const char *path)
{
  while (n > 0) {
    ssize_t w = writev (fd, iov, n);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      set_error (errno, "write %s", path);
      return -1;
    }
    while (n > 0 && (size_t) w >= iov->iov_len) {
      w -= iov->iov_len;
      iov++;
      n--;
    }
    if (n > 0) {
      iov->iov_base = (char *) iov->iov_base + w;
      iov->iov_len -= w;
    }
  }
  return 0;
}

static int
pread_all (int fd, void *buf, size_t len, uint64_t off, const char *path)
{
  char *p = buf;

  while (len) {
    ssize_t n = pread (fd, p, len, off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      set_error (n < 0 ? errno : EBADMSG, "reading %s at %" PRIu64, path,
                 off);
      return -1;
    }
    p += n;
    len -= n;
    off += n;
  }
  return 0;
}

/* ---- the staging directory ---- */

static int
marker_text (const struct qk_meta *m, int kind, char *buf, size_t len)
{
  return snprintf (buf, len, "qcowkit meta convert: staging directory for "
                   "the %ss of domain %s; safe to remove when no qcowkit "
                   "runs\n", meta_kind_name (kind), m->domain);
}

/* Whether the staging directory is ours: its marker holds our text (a
 * crash while it was written may have left a prefix, or an empty file or
 * none, when the directory holds nothing else). Returns 1 ours, 0 not. */
static int
stage_is_ours (const struct qk_meta *m, int kind, int sfd)
{
  char want[512], got[512];
  int wl = marker_text (m, kind, want, sizeof want);
  int fd = openat (sfd, MARKER, O_RDONLY | O_NOFOLLOW | O_NONBLOCK
                   | O_CLOEXEC);
  ssize_t n = 0;
  struct stat st;
  size_t others = 0;
  DIR *d;
  struct dirent *e;
  int dup_fd;

  if (fd >= 0) {
    if (fstat (fd, &st) < 0 || !S_ISREG (st.st_mode)) {
      close (fd);
      return 0;
    }
    n = read (fd, got, sizeof got);
    close (fd);
    if (n < 0)
      return 0;
    if (n == wl && memcmp (got, want, wl) == 0)
      return 1;
    if (n > wl || memcmp (got, want, n) != 0)
      return 0;
  }
  else if (errno != ENOENT)
    return 0;
  /* no marker, or part of it: ours only if there is nothing else */
  dup_fd = openat (sfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dup_fd < 0 || (d = fdopendir (dup_fd)) == NULL) {
    if (dup_fd >= 0)
      close (dup_fd);
    return 0;
  }
  while ((e = readdir (d)) != NULL)
    if (strcmp (e->d_name, ".") && strcmp (e->d_name, "..")
        && strcmp (e->d_name, MARKER))
      others++;
  closedir (d);
  return others == 0;
}

static int
make_stage (const struct qk_meta *m, int kind, const struct place *pl)
{
  char text[512];
  int n = marker_text (m, kind, text, sizeof text), sfd, fd;

  if (mkdirat (pl->base, pl->stage, 0700) < 0) {
    set_error (errno, "mkdir %s/%s", pl->base_path, pl->stage);
    return -1;
  }
  qk_fault_point ("mkdir");
  sfd = open_dir_at (pl->base, pl->stage);
  if (sfd < 0)
    return -1;
  fd = openat (sfd, MARKER, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW
               | O_CLOEXEC, 0600);
  if (fd < 0 || write_all (fd, text, n, MARKER) < 0 || fsync_fd (fd, MARKER) < 0) {
    if (fd < 0)
      set_error (errno, "create %s/%s/%s", pl->base_path, pl->stage, MARKER);
    else
      close (fd);
    close (sfd);
    return -1;
  }
  close (fd);
  qk_fault_point ("write");
  if (fsync_fd (sfd, pl->stage) < 0) {
    close (sfd);
    return -1;
  }
  close (sfd);
  return fsync_fd (pl->base, pl->base_path);
}

/* Remove our staging directory: new/, new.xml, old/ and the marker. */
static int
remove_stage (int base, const char *stage)
{
  int sfd = open_dir_at (base, stage);
  int r = 0;

  if (sfd < 0)
    return errno == ENOENT ? 0 : -1;
  if (remove_our_dir (sfd, "new") < 0 || unlink_at (sfd, "new.xml", 0) < 0
      || remove_our_dir (sfd, "old") < 0 || unlink_at (sfd, MARKER, 0) < 0)
    r = -1;
  close (sfd);
  if (r == 0 && unlink_at (base, stage, AT_REMOVEDIR) < 0)
    r = -1;
  if (r == 0 && fsync_fd (base, stage) < 0)
    r = -1;
  return r;
}

/* ---- writing ---- */

/* The header virXMLSaveFile writes. */
static int
write_header (int fd, int kind, const char *path)
{
  char h[512];
  int n = snprintf (h, sizeof h,
    "<!--\n"
    "WARNING: THIS IS AN AUTO-GENERATED FILE. CHANGES TO IT ARE LIKELY TO BE\n"
    "OVERWRITTEN AND LOST. Changes to this xml configuration should be made "
    "using:\n"
    "  virsh %s-edit\n"
    "or other application using the libvirt API.\n"
    "-->\n\n", meta_kind_name (kind));
  return write_all (fd, h, n, path);
}

/* An attribute value that reads back as s: markup characters as entities,
 * and tab, newline and carriage return as character references (attribute
 * value normalisation would turn them into spaces). */
static int
write_attr_escaped (int fd, const char *s, const char *path)
{
  char buf[512];
  size_t o = 0;

  for (; *s; s++) {
    const char *rep = NULL;
    switch (*s) {
    case '&': rep = "&amp;"; break;
    case '<': rep = "&lt;"; break;
    case '>': rep = "&gt;"; break;
    case '\'': rep = "&apos;"; break;
    case '"': rep = "&quot;"; break;
    case '\t': rep = "&#9;"; break;
    case '\n': rep = "&#10;"; break;
    case '\r': rep = "&#13;"; break;
    }
    if (o + 8 > sizeof buf) {
      if (write_all (fd, buf, o, path) < 0)
        return -1;
      o = 0;
    }
    if (rep) {
      memcpy (buf + o, rep, strlen (rep));
      o += strlen (rep);
    }
    else
      buf[o++] = *s;
  }
  return write_all (fd, buf, o, path);
}

/* ---- the daemon check ---- */

/* libvirt's daemons and the embedded driver hold a POSIX write lock on
 * their pid file while they run (virPidFileAcquirePath). */
QK_EXPORT int
qk_meta_daemon_running (const struct qk_meta *m, char **why)
{
  const char *host[] = { "/run/libvirt/qemu/driver.pid", "/run/libvirtd.pid",
                         "/run/virtqemud.pid", "/var/run/libvirtd.pid",
                         "/var/run/virtqemud.pid", NULL };
  char *cands[8] = { NULL };
  int nc = 0, ret = 0;

  *why = NULL;
  if (m->libvirt_root) {
    if (asprintf (&cands[nc], "%s/run/qemu/driver.pid", m->libvirt_root) < 0)
      return -1;
    nc++;
  }
  else
    for (int i = 0; host[i]; i++)
      if ((cands[nc] = meta_host_path (m, host[i])) != NULL)
        nc++;
  for (int i = 0; i < nc && ret == 0; i++) {
    struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
    struct qk_saved_error sv;
    int fd;

    /* a probe, resolved under the sysroot like every other read */
    qk_internal_save_error (&sv);
    fd = meta_open (m, cands[i], O_RDWR | O_NONBLOCK);
    if (fd < 0)
      fd = meta_open (m, cands[i], O_RDONLY | O_NONBLOCK);
    qk_internal_restore_error (&sv);
    if (fd < 0)
      continue;
    if (fcntl (fd, F_GETLK, &fl) == 0 && fl.l_type != F_UNLCK) {
      if (asprintf (why, "%s is locked by process %ld (a running libvirt "
                    "daemon or embedded driver)", cands[i],
                    (long) fl.l_pid) < 0)
        *why = NULL;
      ret = 1;
    }
    close (fd);
  }
  for (int i = 0; i < nc; i++)
    free (cands[i]);
  return ret;
}


/* ---- converting ---- */

static bool
convertible (const struct meta_moment_priv *mp)
{
  return !mp->parse_failed && mp->pub.name && !mp->unsafe_name && !mp->dup;
}

/* Read a moment's element bytes from its file. */
static char *
read_element (const struct qk_meta *m, const struct meta_moment_priv *mp,
              size_t *len)
{
  int fd = meta_open (m, mp->pub.file, O_RDONLY | O_NONBLOCK);
  struct stat st;
  char *b;

  if (fd < 0)
    return NULL;
  if (fstat (fd, &st) < 0 || !S_ISREG (st.st_mode)) {
    set_error (EINVAL, "%s is not a regular file", mp->pub.file);
    close (fd);
    return NULL;
  }
  b = malloc (mp->pub.length + 1);
  if (b == NULL) {
    set_error (ENOMEM, "malloc");
    close (fd);
    return NULL;
  }
  if (pread_all (fd, b, mp->pub.length, mp->pub.offset, mp->pub.file) < 0) {
    free (b);
    close (fd);
    return NULL;
  }
  close (fd);
  b[mp->pub.length] = '\0';
  *len = mp->pub.length;
  return b;
}

static int
write_bulk (const struct qk_meta *m, struct meta_set *s, int dfd,
            const char *name)
{
  int fd = openat (dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW
                   | O_CLOEXEC, 0600);
  const char *root = meta_bulk_root (s->kind);

  if (fd < 0) {
    set_error (errno, "create %s", name);
    return -1;
  }
  if (write_header (fd, s->kind, name) < 0
      || write_all (fd, "<", 1, name) < 0
      || write_all (fd, root, strlen (root), name) < 0)
    goto fail;
  if (s->claimed != QK_META_NONE) {
    if (write_all (fd, " current='", 10, name) < 0
        || write_attr_escaped (fd, s->m[s->claimed].pub.name, name) < 0
        || write_all (fd, "'", 1, name) < 0)
      goto fail;
  }
  if (write_all (fd, ">\n", 2, name) < 0)
    goto fail;
  for (size_t i = 0; i < s->n; i++) {
    struct meta_moment_priv *mp = &s->m[i];
    size_t len, a, b;
    char *e;

    if (!convertible (mp))
      continue;
    e = read_element (m, mp, &len);
    if (e == NULL)
      goto fail;
    a = b = 0;
    if (s->kind == QK_META_SNAPSHOT)
      meta_active_range (e, len, &a, &b);
    {
      /* one system call per element, not four */
      struct iovec iov[4] = {
        { (void *) "  ", 2 }, { e, a }, { e + b, len - b },
        { (void *) "\n", 1 },
      };
      if (writev_all (fd, iov, 4, name) < 0) {
        free (e);
        goto fail;
      }
    }
    free (e);
  }
  if (write_all (fd, "</", 2, name) < 0
      || write_all (fd, root, strlen (root), name) < 0
      || write_all (fd, ">\n", 2, name) < 0)
    goto fail;
  if (fsync (fd) < 0) {
    set_error (errno, "fsync %s", name);
    goto fail;
  }
  close (fd);
  qk_fault_point ("write");
  qk_fault_point ("fsync");
  return 0;
fail:
  close (fd);
  return -1;
}

static int
write_one_file (const struct qk_meta *m, const struct meta_set *s,
                const struct meta_moment_priv *mp, int dfd, bool batch)
{
  char *path, *e;
  size_t len, a, b, close_at;
  int fd, ret = -1;
  bool cur = s->claimed != QK_META_NONE && &s->m[s->claimed] == mp;

  if (asprintf (&path, "%s.xml", mp->pub.name) < 0) {
    set_error (ENOMEM, "asprintf");
    return -1;
  }
  e = read_element (m, mp, &len);
  if (e == NULL) {
    free (path);
    return -1;
  }
  a = b = 0;
  if (s->kind == QK_META_SNAPSHOT)
    meta_active_range (e, len, &a, &b);
  fd = openat (dfd, path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW
               | O_CLOEXEC, 0600);
  if (fd < 0) {
    set_error (errno, "create %s", path);
    goto out;
  }
  if (write_header (fd, s->kind, path) < 0 || write_all (fd, e, a, path) < 0)
    goto out_close;
  /* the rest without <active>, and for snapshots a fresh <active> before
   * the end tag, where libvirt writes it */
  {
    const char *rest = e + b;
    size_t rlen = len - b;
    close_at = rlen;
    while (close_at > 1 && !(rest[close_at - 1] == '/'
                             && rest[close_at - 2] == '<'))
      close_at--;
    if (close_at > 1)
      close_at -= 2;
    else
      close_at = rlen;
    if (s->kind == QK_META_SNAPSHOT && close_at < rlen) {
      char act[40];
      int n = close_at > 0 && rest[close_at - 1] == '\n'
        ? snprintf (act, sizeof act, "  <active>%d</active>\n", cur ? 1 : 0)
        : snprintf (act, sizeof act, "<active>%d</active>", cur ? 1 : 0);
      if (write_all (fd, rest, close_at, path) < 0
          || write_all (fd, act, n, path) < 0
          || write_all (fd, rest + close_at, rlen - close_at, path) < 0)
        goto out_close;
    }
    else if (write_all (fd, rest, rlen, path) < 0)
      goto out_close;
  }
  if (write_all (fd, "\n", 1, path) < 0)
    goto out_close;
  if (!batch && fsync (fd) < 0) {
    set_error (errno, "fsync %s", path);
    goto out_close;
  }
  ret = 0;
out_close:
  close (fd);
  if (ret == 0) {
    qk_fault_point ("write");
    if (!batch)
      qk_fault_point ("fsync");
  }
out:
  free (e);
  free (path);
  return ret;
}

static int
write_per_file (const struct qk_meta *m, struct meta_set *s, int sfd,
                const char *name)
{
  int dfd, r = 0;

  if (mkdirat (sfd, name, 0755) < 0) {
    set_error (errno, "mkdir %s", name);
    return -1;
  }
  qk_fault_point ("mkdir");
  dfd = open_dir_at (sfd, name);
  if (dfd < 0)
    return -1;
  /* Many files: write them all, then flush the file system they are on
   * once (syncfs), instead of one journal commit per file. */
  bool batch = s->n > 16;
  for (size_t i = 0; r == 0 && i < s->n; i++)
    if (convertible (&s->m[i])
        && write_one_file (m, s, &s->m[i], dfd, batch) < 0)
      r = -1;
  if (r == 0 && batch) {
    if (syncfs (dfd) < 0) {
      set_error (errno, "syncfs %s", name);
      r = -1;
    }
    else
      qk_fault_point ("fsync");
  }
  if (r == 0)
    r = fsync_fd (dfd, name);
  close (dfd);
  return r;
}

/* ---- reading back ---- */

/* Load the layout at one host path into a fresh meta (same domain,
 * options and root). */
static struct qk_meta *
load_alone (struct qk_meta *m, int kind, int layout, const char *path)
{
  struct qk_meta *t = calloc (1, sizeof *t);
  struct meta_set *s;

  if (t == NULL) {
    set_error (ENOMEM, "calloc");
    return NULL;
  }
  t->domain = m->domain;
  t->lim = m->lim;
  t->sysroot = m->sysroot;      /* borrowed, as the root is */
  t->root = m->root;
  s = &t->set[kind];
  s->kind = kind;
  s->layout = layout;
  s->current = QK_META_NONE;
  if (layout == QK_META_LAYOUT_BULK) {
    s->bulk = strdup (path);
    s->location = s->bulk;
  }
  else {
    s->dir = strdup (path);
    s->location = s->dir;
  }
  if (s->location == NULL || meta_load_set_at (t, s) < 0) {
    meta_unload (t);
    free (t);
    return NULL;
  }
  return t;
}

static void
free_alone (struct qk_meta *t)
{
  if (t) {
    meta_unload (t);
    free (t);
  }
}

/* Whether set b holds exactly what set a would be converted to. */
static bool
same_sets (const struct meta_set *a, const struct meta_set *b, char *why,
           size_t wlen)
{
  size_t na = 0, nb = 0;

  for (size_t i = 0; i < a->n; i++) {
    const struct meta_moment_priv *x = &a->m[i];
    size_t j;
    if (!convertible (x))
      continue;
    na++;
    j = meta_lookup (b, x->pub.name);
    for (size_t k = 0; j == QK_META_NONE && k < b->n; k++)
      if (convertible (&b->m[k]) && strcmp (b->m[k].pub.name, x->pub.name) == 0)
        j = k;        /* not loaded by libvirt, but carried over */
    if (j == QK_META_NONE) {
      snprintf (why, wlen, "'%s' is missing", x->pub.name);
      return false;
    }
    const struct meta_moment_priv *y = &b->m[j];
    if (x->hash != y->hash) {
      snprintf (why, wlen, "'%s' differs", x->pub.name);
      return false;
    }
    if ((x->pub.parent == NULL) != (y->pub.parent == NULL)
        || (x->pub.parent && strcmp (x->pub.parent, y->pub.parent))) {
      snprintf (why, wlen, "the parent of '%s' differs", x->pub.name);
      return false;
    }
  }
  for (size_t i = 0; i < b->n; i++)
    if (convertible (&b->m[i]))
      nb++;
  if (na != nb) {
    snprintf (why, wlen, "%zu moments instead of %zu", nb, na);
    return false;
  }
  if (a->kind == QK_META_CHECKPOINT)
    return true;      /* per-file: libvirt derives it (the single leaf) */
  const char *ca = a->claimed != QK_META_NONE ? a->m[a->claimed].pub.name
                                              : NULL;
  const char *cb = b->claimed != QK_META_NONE ? b->m[b->claimed].pub.name
                                              : NULL;
  if ((ca == NULL) != (cb == NULL) || (ca && strcmp (ca, cb))) {
    snprintf (why, wlen, "the current one differs ('%s', '%s')",
              ca ? ca : "none", cb ? cb : "none");
    return false;
  }
  return true;
}

/* ---- retiring the old layout ---- */

static char *
backup_name (const struct place *pl, const char *domain, const char *what)
{
  char *n;

  for (int i = 0; i < 1000; i++) {
    int r = i ? asprintf (&n, ".%s.%s.qk-backup.%d", domain, what, i)
              : asprintf (&n, ".%s.%s.qk-backup", domain, what);
    if (r < 0)
      return NULL;
    if (type_at (pl->base, n) == 0)
      return n;
    free (n);
  }
  errno = EEXIST;
  return NULL;
}

static int
cmp_cstr (const void *a, const void *b)
{
  return strcmp (*(const char *const *) a, *(const char *const *) b);
}

/* --no-backup deletes the old per-file directory only when every entry
 * in it is a regular file that was read as one of the set's moments and
 * is carried over (looked up in the sorted names: 16,384 files and more). */
static int
only_moment_files (const struct place *pl, const struct meta_set *s)
{
  const char **names = malloc ((s->n ? s->n : 1) * sizeof *names);
  size_t nn = 0;
  int fd;
  DIR *d;
  struct dirent *e;
  int ret = 0;

  if (names == NULL) {
    set_error (ENOMEM, "malloc");
    return -1;
  }
  for (size_t i = 0; i < s->n; i++) {
    const char *f = s->m[i].pub.file, *sl = f ? strrchr (f, '/') : NULL;
    if (sl && convertible (&s->m[i]))
      names[nn++] = sl + 1;
  }
  if (nn)
    qsort (names, nn, sizeof *names, cmp_cstr);
  fd = open_dir_at (pl->base, pl->dir);
  d = fd >= 0 ? fdopendir (fd) : NULL;
  if (d == NULL) {
    if (fd >= 0)
      close (fd);
    free (names);
    return -1;
  }
  while (ret == 0 && (e = readdir (d)) != NULL) {
    const char *key = e->d_name;
    if (strcmp (e->d_name, ".") == 0 || strcmp (e->d_name, "..") == 0)
      continue;
    if (type_at (dirfd (d), e->d_name) != S_IFREG || nn == 0
        || bsearch (&key, names, nn, sizeof *names, cmp_cstr) == NULL) {
      set_error (EEXIST, "%s/%s/%s is not a metadata file that is carried "
                 "over; --no-backup deletes only those: move it away, or "
                 "convert with a backup", pl->base_path, pl->dir, e->d_name);
      ret = -1;
    }
  }
  closedir (d);
  free (names);
  return ret;
}

/* Step 4: retire the old layout (both exist and are equal). */
static int
retire (struct qk_meta *m, int kind, const struct place *pl, int layout,
        unsigned flags)
{
  bool no_backup = flags & QK_META_CONVERT_NO_BACKUP;
  const char *old = layout == QK_META_LAYOUT_BULK ? pl->dir : pl->bulk;
  char *bk = NULL;

  if (no_backup && layout == QK_META_LAYOUT_BULK) {
    /* the old directory moves into our staging directory, then goes */
    int sfd, r;
    if (type_at (pl->base, pl->stage) == 0 && make_stage (m, kind, pl) < 0)
      return -1;
    sfd = open_dir_at (pl->base, pl->stage);
    if (sfd < 0)
      return -1;
    r = rename_noreplace (pl->base, old, sfd, "old");
    if (r == 0)
      r = fsync_fd (pl->base, pl->base_path);
    if (r == 0)
      r = remove_our_dir (sfd, "old");
    close (sfd);
    if (r < 0)
      return -1;
  }
  else if (no_backup) {
    if (unlink_at (pl->base, old, 0) < 0)
      return -1;
  }
  else {
    bk = backup_name (pl, m->domain,
                      layout == QK_META_LAYOUT_BULK ? "per-file" : "bulk");
    if (bk == NULL) {
      set_error (errno ? errno : ENOMEM, "no backup name");
      return -1;
    }
    if (rename_noreplace (pl->base, old, pl->base, bk) < 0) {
      free (bk);
      return -1;
    }
    free (bk);
  }
  return fsync_fd (pl->base, pl->base_path);
}

/* ---- recovery ---- */

static char *
at_path (const struct place *pl, const char *a, const char *b)
{
  char *p;
  if (asprintf (&p, "%s/%s%s%s", pl->base_path, a, b ? "/" : "",
                b ? b : "") < 0)
    return NULL;
  return p;
}

/* Finish or roll back an interrupted conversion: -1, 0 (nothing to do),
 * or 1 (the layouts changed: reload). */
static int
recover (struct qk_meta *m, int kind, int layout, const struct place *pl,
         unsigned flags)
{
  mode_t st_type = type_at (pl->base, pl->stage);
  bool dir, bulk;
  int changed = 0;

  if (st_type != 0) {
    int sfd = st_type == S_IFDIR ? open_dir_at (pl->base, pl->stage) : -1;
    int r = 0;

    if (sfd < 0 || !stage_is_ours (m, kind, sfd)) {
      if (sfd >= 0)
        close (sfd);
      set_error (EEXIST, "%s/%s was not made by qcowkit (no marker): look "
                 "at it and move it away by hand", pl->base_path, pl->stage);
      return -1;
    }
    /* before the commit point: roll back */
    if (remove_our_dir (sfd, "new") < 0 || unlink_at (sfd, "new.xml", 0) < 0)
      r = -1;
    if (r == 0 && type_at (sfd, "old") == S_IFDIR) {
      if (type_at (pl->base, pl->bulk) == S_IFREG)
        r = remove_our_dir (sfd, "old");      /* roll forward */
      else if (type_at (pl->base, pl->dir) == 0)
        r = rename_noreplace (sfd, "old", pl->base, pl->dir);
      else {
        set_error (EEXIST, "%s/%s/old and %s/%s both exist: look at them "
                   "and move one away by hand", pl->base_path, pl->stage,
                   pl->base_path, pl->dir);
        r = -1;
      }
    }
    close (sfd);
    if (r < 0 || remove_stage (pl->base, pl->stage) < 0)
      return -1;
    changed = 1;
  }
  dir = type_at (pl->base, pl->dir) == S_IFDIR;
  bulk = type_at (pl->base, pl->bulk) == S_IFREG;
  if (dir && bulk) {
    char *pd = at_path (pl, pl->dir, NULL), *pb = at_path (pl, pl->bulk, NULL);
    struct qk_meta *a = pd ? load_alone (m, kind, QK_META_LAYOUT_PER_FILE, pd)
                           : NULL;
    struct qk_meta *b = a && pb ? load_alone (m, kind, QK_META_LAYOUT_BULK, pb)
                                : NULL;
    char why[256] = "";
    bool same;
    int r;

    free (pd);
    free (pb);
    if (b == NULL) {
      free_alone (a);
      return -1;
    }
    same = same_sets (&a->set[kind], &b->set[kind], why, sizeof why)
           && same_sets (&b->set[kind], &a->set[kind], why, sizeof why);
    r = 0;
    if (!same) {
      set_error (EEXIST, "both %s/%s/ and %s/%s exist and differ (%s); move "
                 "the one that is wrong away by hand", pl->base_path,
                 pl->dir, pl->base_path, pl->bulk, why);
      r = -1;
    }
    else if (layout == QK_META_LAYOUT_BULK
             && (flags & QK_META_CONVERT_NO_BACKUP))
      r = only_moment_files (pl, &a->set[kind]);
    free_alone (a);
    free_alone (b);
    /* an interrupted conversion past its commit point: complete it
     * towards the layout asked for */
    if (r < 0 || retire (m, kind, pl, layout, flags) < 0
        || remove_stage (pl->base, pl->stage) < 0)
      return -1;
    changed = 1;
  }
  return changed;
}

static void
free_place (struct place *pl)
{
  if (pl->base >= 0)
    close (pl->base);
  free (pl->base_path);
  free (pl->dir);
  free (pl->bulk);
  free (pl->stage);
}

static int
make_place (struct qk_meta *m, int kind, struct place *pl)
{
  char *logical;

  memset (pl, 0, sizeof *pl);
  pl->base = -1;
  if (asprintf (&logical, "%s/%s", m->state_logical, meta_kind_name (kind)) < 0)
    logical = NULL;
  pl->base_path = logical ? meta_host_path (m, logical) : NULL;
  free (logical);
  if (pl->base_path == NULL
      || asprintf (&pl->dir, "%s", m->domain) < 0
      || asprintf (&pl->bulk, "%s.xml", m->domain) < 0
      || asprintf (&pl->stage, ".%s.qk-stage", m->domain) < 0) {
    set_error (ENOMEM, "asprintf");
    return -1;
  }
  pl->base = meta_open (m, pl->base_path, O_RDONLY | O_DIRECTORY);
  return pl->base < 0 ? -1 : 0;
}

/* What convert refuses to touch, before doing anything. */
static int
refusals (struct qk_meta *m, const struct place *pl)
{
  static const char *const legacy[] = { ".qk-new", ".xml.qk-new", ".qk-old",
                                        NULL };

  for (int i = 0; legacy[i]; i++) {
    char name[300];
    snprintf (name, sizeof name, ".%s%s", m->domain, legacy[i]);
    if (type_at (pl->base, name) != 0) {
      set_error (EEXIST, "%s/%s is left by an earlier qcowkit's interrupted "
                 "conversion; qcowkit cannot tell that it made it: look at "
                 "it and remove it by hand", pl->base_path, name);
      return -1;
    }
  }
  if (type_at (pl->base, pl->dir) == S_IFLNK
      || type_at (pl->base, pl->bulk) == S_IFLNK) {
    set_error (ELOOP, "%s/%s is a symbolic link; convert renames and deletes "
               "in place and never through a link: replace it by what it "
               "points to, or convert there", pl->base_path,
               type_at (pl->base, pl->dir) == S_IFLNK ? pl->dir : pl->bulk);
    return -1;
  }
  return 0;
}

int
meta_convert (struct qk_meta *m, int kind, int layout, unsigned flags)
{
  struct place pl;
  struct meta_set *s;
  char *why = NULL, *np = NULL;
  int r, ret = -1, sfd = -1;
  const char *newname = layout == QK_META_LAYOUT_BULK ? "new.xml" : "new";

  if ((kind != QK_META_SNAPSHOT && kind != QK_META_CHECKPOINT)
      || (layout != QK_META_LAYOUT_BULK && layout != QK_META_LAYOUT_PER_FILE)) {
    set_error (EINVAL, "bad kind or layout");
    return -1;
  }
  r = qk_meta_daemon_running (m, &why);
  if (r != 0) {
    set_error (EBUSY, "refusing to convert while libvirt may be using the "
               "metadata: %s", why ? why : "cannot tell");
    free (why);
    return -1;
  }
  if (make_place (m, kind, &pl) < 0) {
    if (errno == ENOENT) {        /* no KIND/ directory: nothing to convert */
      free_place (&pl);
      return 0;
    }
    goto out;
  }
  if (refusals (m, &pl) < 0)
    goto out;
  /* what was loaded is still what is there unless recovery changed it */
  r = recover (m, kind, layout, &pl, flags);
  if (r < 0 || (r > 0 && meta_reload (m) < 0))
    goto out;
  s = &m->set[kind];
  if (s->layout == layout || s->layout == QK_META_LAYOUT_NONE) {
    ret = 0;
    goto out;
  }
  if (!(flags & QK_META_CONVERT_FORCE)) {
    size_t bad = 0;
    for (size_t i = 0; i < s->n; i++)
      if (!convertible (&s->m[i]) || !s->m[i].pub.loaded)
        bad++;
    for (size_t i = 0; i < m->nf; i++)
      if (m->f[i].kind == kind
          && (m->f[i].pr == MP_BULK_INVALID || m->f[i].pr == MP_HOSTILE
              || m->f[i].pr == MP_TOO_LARGE || m->f[i].pr == MP_NOT_A_FILE
              || m->f[i].pr == MP_BLOCKING_FILE))
        bad++;
    if (bad) {
      set_error (EBADMSG, "%zu problems with the %ss (see qcowkit meta "
                 "check); converting would not carry everything over. Fix "
                 "them, or use --force to convert what can be", bad,
                 meta_kind_name (kind));
      goto out;
    }
  }
  {
    const char *target = layout == QK_META_LAYOUT_BULK ? pl.bulk : pl.dir;
    mode_t t = type_at (pl.base, target);
    if (t != 0) {
      if (layout == QK_META_LAYOUT_BULK && t == S_IFDIR)
        set_error (EEXIST, "%s/%s is a directory: the per-file metadata of a "
                   "domain named '%s.xml'; convert that domain first",
                   pl.base_path, target, m->domain);
      else
        set_error (EEXIST, "%s/%s exists and is not a %s", pl.base_path,
                   target, layout == QK_META_LAYOUT_BULK ? "bulk file"
                                                         : "directory");
      goto out;
    }
  }
  if (layout == QK_META_LAYOUT_BULK && (flags & QK_META_CONVERT_NO_BACKUP)
      && only_moment_files (&pl, s) < 0)
    goto out;
  /* (0) staging */
  if (make_stage (m, kind, &pl) < 0)
    goto out;
  sfd = open_dir_at (pl.base, pl.stage);
  if (sfd < 0)
    goto out;
  /* (1) write */
  if ((layout == QK_META_LAYOUT_BULK ? write_bulk (m, s, sfd, newname)
                                     : write_per_file (m, s, sfd, newname)) < 0
      || fsync_fd (sfd, pl.stage) < 0)
    goto undo;
  /* (2) read back */
  np = at_path (&pl, pl.stage, newname);
  {
    struct qk_meta *t = np ? load_alone (m, kind, layout, np) : NULL;
    char w[256] = "";
    bool same;

    if (t == NULL)
      goto undo;
    same = same_sets (s, &t->set[kind], w, sizeof w);
    for (size_t i = 0; same && i < t->nf; i++)
      if (t->f[i].pr == MP_PARSE || t->f[i].pr == MP_BULK_INVALID
          || t->f[i].pr == MP_HOSTILE || t->f[i].pr == MP_TOO_LARGE
          || t->f[i].pr == MP_DUPLICATE_NAME || t->f[i].pr == MP_FILE_NAME) {
        snprintf (w, sizeof w, "%s", t->f[i].msg);
        same = false;
      }
    free_alone (t);
    if (!same) {
      set_error (EIO, "the new layout does not read back equal (%s)", w);
      goto undo;
    }
  }
  /* (3) commit */
  if (rename_noreplace (sfd, newname, pl.base,
                        layout == QK_META_LAYOUT_BULK ? pl.bulk : pl.dir) < 0
      || fsync_fd (pl.base, pl.base_path) < 0)
    goto out;
  close (sfd);
  sfd = -1;
  /* (4) retire the old layout, (5) remove the staging directory */
  if (retire (m, kind, &pl, layout, flags) < 0
      || remove_stage (pl.base, pl.stage) < 0)
    goto out;
  ret = 0;
  goto out;
undo:
  /* nothing was committed: remove what was made, and say so */
  if (sfd >= 0) {
    close (sfd);
    sfd = -1;
  }
  {
    struct qk_saved_error sv;
    qk_internal_save_error (&sv);
    if (remove_stage (pl.base, pl.stage) == 0) {
      qk_internal_restore_error (&sv);
      qk_internal_prefix_error ("the old layout is untouched and the "
                                "partial new one was removed");
    }
    else
      qk_internal_restore_error (&sv);
  }
out:
  if (sfd >= 0)
    close (sfd);
  free (np);
  free_place (&pl);
  {
    struct qk_saved_error sv;
    qk_internal_save_error (&sv);
    if (meta_reload (m) < 0)
      ret = -1;
    else if (ret < 0)
      qk_internal_restore_error (&sv);
  }
  return ret;
}

QK_EXPORT int
qk_meta_convert (struct qk_meta *m, int kind, int layout, unsigned flags)
{
  return meta_convert (m, kind, layout, flags);
}
