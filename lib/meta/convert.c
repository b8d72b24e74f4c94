/* lib/meta: converting between the per-file and the bulk layouts,
 * crash-safely.
 *
 * Names, in KIND/ (D the domain):
 *   D/              per-file layout          D.xml          bulk layout
 *   .D.qk-new/      per-file being written   .D.xml.qk-new  bulk being written
 *   .D.qk-old/      old per-file directory being deleted (--no-backup)
 *   .D.per-file.qk-backup[.N]/, .D.bulk.qk-backup[.N]: kept old layouts
 *
 * Protocol: (1) write the new layout under its temporary name, fsync every
 * file and the directories; (2) read it back and compare with what was
 * loaded (names, parents, current, and a hash of every element's bytes
 * without <active>); (3) rename it to its real name and fsync KIND/: from
 * here both layouts exist and are equal (the commit point); (4) rename the
 * old layout to its backup name (or to .D.qk-old/ and delete it, or unlink
 * the bulk file) and fsync KIND/.
 *
 * Re-running after an interruption: a temporary .qk-new is removed (roll
 * back); a .qk-old directory is deleted when the bulk file exists (roll
 * forward) and renamed back otherwise; when both layouts exist and read
 * back equal, the conversion is completed towards the requested layout.
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
#include <unistd.h>

#include "meta/meta.h"

/* ---- fault injection (tests) ---- */

static void
fault (const char *op)
{
  static unsigned counts[8];
  static const char *const ops[] = { "write", "fsync", "rename", "unlink",
                                     "mkdir", "rmdir", NULL };
  const char *f = getenv ("QCOWKIT_FAULT");
  char want[32];

  if (f == NULL)
    return;
  for (int i = 0; ops[i]; i++)
    if (strcmp (ops[i], op) == 0) {
      counts[i]++;
      snprintf (want, sizeof want, "after-%s-%u", op, counts[i]);
      if (strcmp (f, want) == 0)
        raise (SIGKILL);
    }
}

/* ---- file operations ---- */

static int
fsync_path (const char *path, bool dir)
{
  int fd = open (path, (dir ? O_DIRECTORY : 0) | O_RDONLY | O_CLOEXEC);

  if (fd < 0) {
    set_error (errno, "open %s", path);
    return -1;
  }
  if (fsync (fd) < 0) {
    set_error (errno, "fsync %s", path);
    close (fd);
    return -1;
  }
  close (fd);
  fault ("fsync");
  return 0;
}

static int
do_rename (const char *a, const char *b)
{
  if (rename (a, b) < 0) {
    set_error (errno, "rename %s to %s", a, b);
    return -1;
  }
  fault ("rename");
  return 0;
}

static int
do_unlink (const char *p)
{
  if (unlink (p) < 0 && errno != ENOENT) {
    set_error (errno, "unlink %s", p);
    return -1;
  }
  fault ("unlink");
  return 0;
}

/* Remove a directory of plain files (our own temporary or old layout). */
static int
remove_dir (const char *dir)
{
  DIR *d = opendir (dir);
  struct dirent *e;

  if (d == NULL) {
    if (errno == ENOENT)
      return 0;
    set_error (errno, "opendir %s", dir);
    return -1;
  }
  while ((e = readdir (d)) != NULL) {
    char *p;
    if (strcmp (e->d_name, ".") == 0 || strcmp (e->d_name, "..") == 0)
      continue;
    if (asprintf (&p, "%s/%s", dir, e->d_name) < 0) {
      closedir (d);
      set_error (ENOMEM, "asprintf");
      return -1;
    }
    if (do_unlink (p) < 0) {
      free (p);
      closedir (d);
      return -1;
    }
    free (p);
  }
  closedir (d);
  if (rmdir (dir) < 0) {
    set_error (errno, "rmdir %s", dir);
    return -1;
  }
  fault ("rmdir");
  return 0;
}

static bool
exists (const char *p)
{
  struct stat st;
  return lstat (p, &st) == 0;
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
    int fd = open (cands[i], O_RDWR | O_CLOEXEC | O_NOCTTY);

    if (fd < 0)
      fd = open (cands[i], O_RDONLY | O_CLOEXEC | O_NOCTTY);
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

/* ---- writing a layout ---- */

struct paths {
  char *base, *dir, *bulk, *new_dir, *new_bulk, *old_dir;
};

static void
free_paths (struct paths *p)
{
  free (p->base);
  free (p->dir);
  free (p->bulk);
  free (p->new_dir);
  free (p->new_bulk);
  free (p->old_dir);
}

static int
make_paths (struct qk_meta *m, int kind, struct paths *p)
{
  const char *d = m->domain;
  memset (p, 0, sizeof *p);
  if (asprintf (&p->base, "%s/%s", m->state_dir, meta_kind_name (kind)) < 0
      || asprintf (&p->dir, "%s/%s", p->base, d) < 0
      || asprintf (&p->bulk, "%s/%s.xml", p->base, d) < 0
      || asprintf (&p->new_dir, "%s/.%s.qk-new", p->base, d) < 0
      || asprintf (&p->new_bulk, "%s/.%s.xml.qk-new", p->base, d) < 0
      || asprintf (&p->old_dir, "%s/.%s.qk-old", p->base, d) < 0) {
    set_error (ENOMEM, "asprintf");
    return -1;
  }
  return 0;
}

static bool
convertible (const struct meta_moment_priv *mp)
{
  return !mp->parse_failed && mp->pub.name && !mp->unsafe_name && !mp->dup;
}

/* Read a moment's element bytes from its file. */
static char *
read_element (const struct meta_moment_priv *mp, size_t *len)
{
  int fd = open (mp->pub.file, O_RDONLY | O_CLOEXEC);
  char *b;

  if (fd < 0) {
    set_error (errno, "open %s", mp->pub.file);
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
write_bulk (struct meta_set *s, const char *path)
{
  int fd = open (path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  const char *root = meta_bulk_root (s->kind);

  if (fd < 0) {
    set_error (errno, "create %s", path);
    return -1;
  }
  if (write_header (fd, s->kind, path) < 0
      || write_all (fd, "<", 1, path) < 0
      || write_all (fd, root, strlen (root), path) < 0)
    goto fail;
  if (s->claimed != QK_META_NONE) {
    if (write_all (fd, " current='", 10, path) < 0
        || write_attr_escaped (fd, s->m[s->claimed].pub.name, path) < 0
        || write_all (fd, "'", 1, path) < 0)
      goto fail;
  }
  if (write_all (fd, ">\n", 2, path) < 0)
    goto fail;
  for (size_t i = 0; i < s->n; i++) {
    struct meta_moment_priv *mp = &s->m[i];
    size_t len, a, b;
    char *e;

    if (!convertible (mp))
      continue;
    e = read_element (mp, &len);
    if (e == NULL)
      goto fail;
    a = b = 0;
    if (s->kind == QK_META_SNAPSHOT)
      meta_active_range (e, len, &a, &b);
    if (write_all (fd, "  ", 2, path) < 0 || write_all (fd, e, a, path) < 0
        || write_all (fd, e + b, len - b, path) < 0
        || write_all (fd, "\n", 1, path) < 0) {
      free (e);
      goto fail;
    }
    free (e);
  }
  if (write_all (fd, "</", 2, path) < 0
      || write_all (fd, root, strlen (root), path) < 0
      || write_all (fd, ">\n", 2, path) < 0)
    goto fail;
  if (fsync (fd) < 0) {
    set_error (errno, "fsync %s", path);
    goto fail;
  }
  close (fd);
  fault ("write");
  fault ("fsync");
  return 0;
fail:
  close (fd);
  return -1;
}

static int
write_one_file (const struct meta_set *s, const struct meta_moment_priv *mp,
                const char *dir, bool batch)
{
  char *path, *e;
  size_t len, a, b, close_at;
  int fd, ret = -1;
  bool cur = s->claimed != QK_META_NONE && &s->m[s->claimed] == mp;

  if (asprintf (&path, "%s/%s.xml", dir, mp->pub.name) < 0) {
    set_error (ENOMEM, "asprintf");
    return -1;
  }
  e = read_element (mp, &len);
  if (e == NULL) {
    free (path);
    return -1;
  }
  a = b = 0;
  if (s->kind == QK_META_SNAPSHOT)
    meta_active_range (e, len, &a, &b);
  fd = open (path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
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
    fault ("write");
    if (!batch)
      fault ("fsync");
  }
out:
  free (e);
  free (path);
  return ret;
}

static int
write_per_file (struct meta_set *s, const char *dir)
{
  if (mkdir (dir, 0755) < 0) {
    set_error (errno, "mkdir %s", dir);
    return -1;
  }
  fault ("mkdir");
  /* Many files: write them all, then flush the file system they are on
   * once (syncfs), instead of one journal commit per file. */
  bool batch = s->n > 16;
  for (size_t i = 0; i < s->n; i++)
    if (convertible (&s->m[i]) && write_one_file (s, &s->m[i], dir, batch) < 0)
      return -1;
  if (batch) {
    int fd = open (dir, O_DIRECTORY | O_RDONLY | O_CLOEXEC);
    if (fd < 0 || syncfs (fd) < 0) {
      set_error (errno, "syncfs %s", dir);
      if (fd >= 0)
        close (fd);
      return -1;
    }
    close (fd);
    fault ("fsync");
  }
  return fsync_path (dir, true);
}

/* ---- reading back ---- */

/* Load the layout at one path into a fresh meta (same domain, options). */
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

/* ---- backups ---- */

static char *
backup_name (const struct paths *p, const char *domain, const char *what)
{
  char *n;

  for (int i = 0; i < 1000; i++) {
    int r = i ? asprintf (&n, "%s/.%s.%s.qk-backup.%d", p->base, domain,
                          what, i)
              : asprintf (&n, "%s/.%s.%s.qk-backup", p->base, domain, what);
    if (r < 0)
      return NULL;
    if (!exists (n))
      return n;
    free (n);
  }
  errno = EEXIST;
  return NULL;
}

/* Step 4: retire the old layout (both exist and are equal). */
static int
retire (struct qk_meta *m, const struct paths *p, int layout, unsigned flags)
{
  bool no_backup = flags & QK_META_CONVERT_NO_BACKUP;
  char *bk = NULL;

  if (layout == QK_META_LAYOUT_BULK) {
    /* retire the directory */
    if (no_backup) {
      if (do_rename (p->dir, p->old_dir) < 0 || fsync_path (p->base, true) < 0
          || remove_dir (p->old_dir) < 0)
        return -1;
    }
    else {
      bk = backup_name (p, m->domain, "per-file");
      if (bk == NULL) {
        set_error (errno ? errno : ENOMEM, "no backup name");
        return -1;
      }
      if (do_rename (p->dir, bk) < 0) {
        free (bk);
        return -1;
      }
    }
  }
  else {
    if (no_backup) {
      if (do_unlink (p->bulk) < 0)
        return -1;
    }
    else {
      bk = backup_name (p, m->domain, "bulk");
      if (bk == NULL) {
        set_error (errno ? errno : ENOMEM, "no backup name");
        return -1;
      }
      if (do_rename (p->bulk, bk) < 0) {
        free (bk);
        return -1;
      }
    }
  }
  free (bk);
  return fsync_path (p->base, true);
}

/* ---- recovery ---- */

static int
recover (struct qk_meta *m, int kind, int layout, const struct paths *p,
         unsigned flags)
{
  struct stat st;
  bool dir, bulk;

  if (exists (p->new_dir) && remove_dir (p->new_dir) < 0)
    return -1;
  if (exists (p->new_bulk) && do_unlink (p->new_bulk) < 0)
    return -1;
  dir = stat (p->dir, &st) == 0 && S_ISDIR (st.st_mode);
  bulk = stat (p->bulk, &st) == 0 && S_ISREG (st.st_mode);
  if (exists (p->old_dir)) {
    if (bulk) {
      if (remove_dir (p->old_dir) < 0)
        return -1;
    }
    else if (!dir) {
      if (do_rename (p->old_dir, p->dir) < 0)
        return -1;
      dir = true;
    }
    if (fsync_path (p->base, true) < 0)
      return -1;
  }
  if (dir && bulk) {
    struct qk_meta *a = load_alone (m, kind, QK_META_LAYOUT_PER_FILE, p->dir);
    struct qk_meta *b = a ? load_alone (m, kind, QK_META_LAYOUT_BULK, p->bulk)
                          : NULL;
    char why[256] = "";
    bool same;

    if (b == NULL) {
      free_alone (a);
      return -1;
    }
    same = same_sets (&a->set[kind], &b->set[kind], why, sizeof why)
           && same_sets (&b->set[kind], &a->set[kind], why, sizeof why);
    free_alone (a);
    free_alone (b);
    if (!same) {
      set_error (EEXIST, "both %s/ and %s exist and differ (%s); move the "
                 "one that is wrong away by hand", p->dir, p->bulk, why);
      return -1;
    }
    /* an interrupted conversion past its commit point: complete it
     * towards the layout asked for */
    if (retire (m, p, layout, flags) < 0)
      return -1;
  }
  return 0;
}

static int
reload (struct qk_meta *m)
{
  meta_unload (m);
  return meta_load (m);
}

int
meta_convert (struct qk_meta *m, int kind, int layout, unsigned flags)
{
  struct paths p;
  struct meta_set *s;
  char *why = NULL;
  int r, ret = -1;

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
  if (make_paths (m, kind, &p) < 0)
    goto out;
  if (recover (m, kind, layout, &p, flags) < 0 || reload (m) < 0)
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
              || m->f[i].pr == MP_TOO_LARGE || m->f[i].pr == MP_NOT_A_FILE))
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
    struct stat st;
    const char *target = layout == QK_META_LAYOUT_BULK ? p.bulk : p.dir;
    if (lstat (target, &st) == 0) {
      if (layout == QK_META_LAYOUT_BULK && S_ISDIR (st.st_mode))
        set_error (EEXIST, "%s is a directory: the per-file metadata of a "
                   "domain named '%s.xml'; convert that domain first",
                   target, m->domain);
      else
        set_error (EEXIST, "%s exists and is not a %s", target,
                   layout == QK_META_LAYOUT_BULK ? "bulk file" : "directory");
      goto out;
    }
  }
  /* (1) write */
  if (layout == QK_META_LAYOUT_BULK) {
    if (write_bulk (s, p.new_bulk) < 0)
      goto out;
  }
  else if (write_per_file (s, p.new_dir) < 0)
    goto out;
  if (fsync_path (p.base, true) < 0)
    goto out;
  /* (2) read back */
  {
    const char *np = layout == QK_META_LAYOUT_BULK ? p.new_bulk : p.new_dir;
    struct qk_meta *t = load_alone (m, kind, layout, np);
    char w[256] = "";
    bool same;

    if (t == NULL)
      goto out;
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
      set_error (EIO, "the new layout does not read back equal (%s); the "
                 "old one is untouched", w);
      if (layout == QK_META_LAYOUT_BULK)
        unlink (p.new_bulk);
      else
        remove_dir (p.new_dir);
      goto out;
    }
  }
  /* (3) commit */
  if (do_rename (layout == QK_META_LAYOUT_BULK ? p.new_bulk : p.new_dir,
                 layout == QK_META_LAYOUT_BULK ? p.bulk : p.dir) < 0
      || fsync_path (p.base, true) < 0)
    goto out;
  /* (4) retire the old layout */
  if (retire (m, &p, layout, flags) < 0)
    goto out;
  ret = 0;
out:
  free_paths (&p);
  if (reload (m) < 0)
    ret = -1;
  return ret;
}

QK_EXPORT int
qk_meta_convert (struct qk_meta *m, int kind, int layout, unsigned flags)
{
  return meta_convert (m, kind, layout, flags);
}
