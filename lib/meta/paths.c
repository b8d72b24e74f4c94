/* lib/meta: where libvirt keeps a domain's metadata (issue #12): the
 * configuration and state directories under a libvirt root, every path
 * resolved under the sysroot, which layout (per-file directory or bulk
 * file) each kind has, and opening and reading those files. Above the
 * model only (layer order in meta.h). */
#include <config.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "meta/paths.h"

/* ---- paths under a sysroot ---- */

/* Every path is resolved by lib/util/path.c: under a sysroot as if it
 * were "/" (absolute symlinks and ".." never leave it). */
char *
meta_host_path (const struct qk_meta *m, const char *path)
{
  if (m->sysroot && path[0] == '/')
    return qk_root_host_path (&m->root, path);
  return strdup (path);
}

int
meta_open (const struct qk_meta *m, const char *host, int flags)
{
  const char *rel;

  if (m->sysroot == NULL) {
    int fd = open (host, flags | O_CLOEXEC | ((flags & O_PATH) ? 0 : O_NOCTTY));
    if (fd < 0)
      set_error (errno, "open %s", host);
    return fd;
  }
  rel = qk_root_strip (&m->root, host);
  if (rel == NULL) {
    set_error (EXDEV, "%s is not under the sysroot %s", host, m->sysroot);
    return -1;
  }
  return qk_root_open (&m->root, rel,
                       flags | ((flags & O_PATH) ? 0 : O_NOCTTY), 0);
}

int
meta_stat (const struct qk_meta *m, const char *host, struct stat *st)
{
  struct qk_saved_error sv;
  int fd, e;

  qk_internal_save_error (&sv);     /* a probe: not the caller's error */
  fd = meta_open (m, host, O_PATH);
  if (fd < 0) {
    e = errno;
    qk_internal_restore_error (&sv);
    errno = e;
    return -1;
  }
  if (fstat (fd, st) < 0) {
    e = errno;
    close (fd);
    errno = e;
    return -1;
  }
  close (fd);
  return 0;
}

/* What a file that is not a regular file is, for messages. */
const char *
meta_file_type (mode_t mode)
{
  return S_ISDIR (mode) ? "a directory"
    : S_ISFIFO (mode) ? "a FIFO (named pipe)"
    : S_ISCHR (mode) ? "a character device"
    : S_ISBLK (mode) ? "a block device"
    : S_ISSOCK (mode) ? "a socket" : "not a regular file";
}

/* ---- reading files ---- */

/* Read a whole regular file from fd (taken over), at most max bytes.
 * Returns 0, -1 (errno; EINVAL and *mode for a file that is not regular),
 * or 1 when the file is larger than max (*size is set). Never blocks: the
 * file was opened O_NONBLOCK, and only a regular file is read. */
int
meta_read_limited_fd (int fd, uint64_t max, char **buf, size_t *len,
                      uint64_t *size, mode_t *mode)
{
  struct stat st;
  char *b;
  size_t got = 0;

  if (fstat (fd, &st) < 0) {
    int e = errno;
    close (fd);
    errno = e;
    return -1;
  }
  *mode = st.st_mode;
  *size = st.st_size;
  if (!S_ISREG (st.st_mode)) {
    close (fd);
    errno = EINVAL;
    return -1;
  }
  if ((uint64_t) st.st_size > max) {
    close (fd);
    return 1;
  }
  b = malloc (st.st_size + 1);
  if (b == NULL) {
    close (fd);
    errno = ENOMEM;
    return -1;
  }
  while (got < (size_t) st.st_size) {
    ssize_t n = read (fd, b + got, st.st_size - got);
    if (n < 0) {
      int e = errno;
      if (e == EINTR)
        continue;
      free (b);
      close (fd);
      errno = e;
      return -1;
    }
    if (n == 0)
      break;
    got += n;
  }
  close (fd);
  b[got] = '\0';
  *buf = b;
  *len = got;
  return 0;
}

bool
meta_domain_name_ok (const char *d)
{
  return d && d[0] != '\0' && d[0] != '.' && strchr (d, '/') == NULL;
}

/* The configuration and state directories of o, as paths before the
 * sysroot (NULL when out of memory): the embedded driver's
 * ROOT/etc/qemu and ROOT/lib/qemu, else the system daemon's, each
 * replaced by config_dir or state_dir when given. */
void
meta_dirs (const struct qk_meta_options *o, char **cfg, char **state)
{
  if (o->libvirt_root) {
    *cfg = meta_fmt ("%s/etc/qemu", o->libvirt_root);
    *state = meta_fmt ("%s/lib/qemu", o->libvirt_root);
  }
  else {
    *cfg = strdup ("/etc/libvirt/qemu");
    *state = strdup ("/var/lib/libvirt/qemu");
  }
  if (o->config_dir) {
    free (*cfg);
    *cfg = strdup (o->config_dir);
  }
  if (o->state_dir) {
    free (*state);
    *state = strdup (o->state_dir);
  }
}

/* Where the metadata of one kind is (per-file directory, bulk file, or
 * none yet): sets s's kind, dir, bulk, layout and location, with the
 * findings about the layout (both, a collision, a file that is not one,
 * leftovers of an interrupted conversion). */
int
meta_locate_set (struct qk_meta *m, int kind)
{
  struct meta_set *s = &m->set[kind];
  struct stat st;
  bool is_dir, bulk_file, bulk_dir;
  char *base, *tmp;

  s->kind = kind;
  s->current = QK_META_NONE;
  base = meta_fmt ("%s/%s", m->state_dir, meta_kind_name (kind));
  if (base == NULL)
    return -1;
  {
    char *l = meta_fmt ("%s/%s/%s", m->state_logical, meta_kind_name (kind),
                     m->domain);
    char *lb = l ? meta_fmt ("%s.xml", l) : NULL;
    s->dir = l ? meta_host_path (m, l) : NULL;
    s->bulk = lb ? meta_host_path (m, lb) : NULL;
    free (l);
    free (lb);
  }
  if (s->dir == NULL || s->bulk == NULL) {
    free (base);
    return -1;
  }
  is_dir = meta_stat (m, s->dir, &st) == 0 && S_ISDIR (st.st_mode);
  bulk_file = bulk_dir = false;
  if (meta_stat (m, s->bulk, &st) == 0) {
    bulk_file = S_ISREG (st.st_mode);
    bulk_dir = S_ISDIR (st.st_mode);
    if (!bulk_file && !bulk_dir)
      meta_add_finding (m, MP_BLOCKING_FILE, kind, QK_NONE, "%s is %s, not "
                        "a bulk file; not read", s->bulk,
                        meta_file_type (st.st_mode));
  }
  if (bulk_dir)
    meta_add_finding (m, MP_LAYOUT_COLLISION, kind, QK_NONE, "%s is a "
                      "directory: the per-file %ss of a domain named "
                      "'%s.xml', not a bulk file of '%s'", s->bulk,
                      meta_kind_name (kind), m->domain, m->domain);
  {
    struct qk_saved_error sv;
    int bfd;

    qk_internal_save_error (&sv);
    bfd = meta_open (m, base, O_RDONLY | O_DIRECTORY);
    qk_internal_restore_error (&sv);
    for (int i = 0; bfd >= 0 && i < 4; i++) {
      tmp = i == 0 ? meta_fmt (".%s.qk-stage", m->domain)
          : i == 1 ? meta_fmt (".%s.qk-new", m->domain)
          : i == 2 ? meta_fmt (".%s.xml.qk-new", m->domain)
          : meta_fmt (".%s.qk-old", m->domain);
      if (tmp && fstatat (bfd, tmp, &st, AT_SYMLINK_NOFOLLOW) == 0)
        meta_add_finding (m, MP_LEFTOVER_TEMPORARY, kind, QK_NONE, "%s/%s is "
                          "left from an interrupted conversion", base, tmp);
      free (tmp);
    }
    if (bfd >= 0)
      close (bfd);
  }
  free (base);
  if (is_dir && bulk_file)
    meta_add_finding (m, MP_BOTH_LAYOUTS, kind, QK_NONE, "both %s/ and %s "
                      "exist; the directory is read (as libvirt 9 does)",
                      s->dir, s->bulk);
  if (is_dir) {
    s->layout = QK_META_LAYOUT_PER_FILE;
    s->location = s->dir;
  }
  else if (bulk_file) {
    s->layout = QK_META_LAYOUT_BULK;
    s->location = s->bulk;
  }
  else {
    s->layout = QK_META_LAYOUT_NONE;
    s->location = s->dir;
  }
  return 0;
}

/* Where m's domain keeps its metadata: the sysroot (o->sysroot), and the
 * configuration and state directories as host paths under it (m->domain
 * set). 0, or -1 with the error set. */
int
meta_locate (struct qk_meta *m, const struct qk_meta_options *o)
{
  char *cfg = NULL, *state = NULL;

  m->sysroot = o->sysroot ? strdup (o->sysroot) : NULL;
  if (qk_root_init (&m->root, o->sysroot, o->sysroot ? QK_ROOT_IN
                                                     : QK_ROOT_HOST) < 0) {
    qk_internal_prefix_error ("the sysroot");
    goto fail;
  }
  meta_dirs (o, &cfg, &state);
  if (m->domain == NULL || cfg == NULL || state == NULL
      || (o->sysroot && m->sysroot == NULL)) {
    set_error (ENOMEM, "strdup");
    goto fail;
  }
  m->config_dir = meta_host_path (m, cfg);
  m->state_dir = meta_host_path (m, state);
  m->libvirt_root = o->libvirt_root ? meta_host_path (m, o->libvirt_root)
                                    : NULL;
  if (m->config_dir == NULL || m->state_dir == NULL
      || (o->libvirt_root && m->libvirt_root == NULL)) {
    set_error (errno ? errno : ENOMEM, "resolving the metadata directories");
    goto fail;
  }
  /* every file name is resolved whole, so that a symlink in its last
   * component cannot leave the sysroot either */
  {
    char *l = meta_fmt ("%s/%s.xml", cfg, m->domain);
    m->config_file = l ? meta_host_path (m, l) : NULL;
    free (l);
  }
  m->state_logical = strdup (state);
  if (m->config_file == NULL || m->state_logical == NULL) {
    set_error (ENOMEM, "asprintf");
    goto fail;
  }
  free (cfg);
  free (state);
  return 0;
fail:
  free (cfg);
  free (state);
  return -1;
}
