/* lib/meta: a host's libvirt domains and their disks, for whole-host
 * commands (audit, rescue).
 *
 * Where: the directories qk_meta_open uses (meta_dirs: the system
 * daemon's, an embedded driver's root, or the caller's), plus the run
 * directory where libvirt keeps a running domain's status XML
 * (<domstatus> around the live <domain>): /run/libvirt/qemu for the
 * system daemon, ROOT/run/qemu for an embedded root,
 * $XDG_RUNTIME_DIR/libvirt/qemu/run for a session daemon.
 *
 * Every path (directories, definitions, image sources) is resolved under
 * the sysroot by lib/util/path.c, so that no symlink leads out of it.
 * Each file is read with the bounds of the metadata loader (size, then
 * the XML tokenizer's nesting bound, then libxml2 without entities or
 * network); whatever cannot be read is a warning naming the file. */
#include <config.h>

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libxml/parser.h>
#include <libxml/tree.h>

#include "meta/meta.h"

#define DEFAULT_MAX_FILE (16ULL << 20)
#define DEFAULT_MAX_DEPTH 1024
#define MAX_DOMAINS 65536          /* files considered per directory */
#define MAX_DISKS 4096             /* disks per domain */
#define MAX_BACKING 64             /* <backingStore> depth kept */
#define MAX_WARNINGS 1024

struct host_disk {
  struct qk_meta_host_disk pub;
  struct qk_meta_backing *backing;
};

struct host_dom {
  struct qk_meta_host_domain pub;
  struct host_disk *disks;
  size_t n_disks;
  bool from_status;         /* this entry was read from the run directory */
};

struct qk_meta_domains {
  struct qk_meta_options o;     /* strings below are ours */
  char *sysroot, *libvirt_root, *config_dir, *state_dir, *run_dir;
  struct qk_root root;
  uint64_t max_size;
  unsigned max_depth;
  struct host_dom *d;
  size_t n, cap;
  struct qk_strvec strs;        /* every string the structures point to */
  struct qk_strvec warnings;
  size_t warnings_dropped;
};

static void warn (struct qk_meta_domains *l, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

static void
warn (struct qk_meta_domains *l, const char *fmt, ...)
{
  va_list ap;
  char *s;

  if (l->warnings.n >= MAX_WARNINGS) {
    l->warnings_dropped++;
    return;
  }
  va_start (ap, fmt);
  if (vasprintf (&s, fmt, ap) < 0)
    s = NULL;
  va_end (ap);
  if (s)
    qk_strvec_add (&l->warnings, s);
}

/* Keep a copy of s (NULL stays NULL; out of memory gives NULL too). */
static const char *
keep (struct qk_meta_domains *l, const char *s)
{
  char *c;

  if (s == NULL)
    return NULL;
  c = strdup (s);
  if (c == NULL || qk_strvec_add (&l->strs, c) < 0)
    return NULL;
  return c;
}

static const char *
keep_own (struct qk_meta_domains *l, char *s)
{
  if (s == NULL || qk_strvec_add (&l->strs, s) < 0)
    return NULL;
  return s;
}

/* The host path of a path as libvirt would name it. */
static char *
host_path (const struct qk_meta_domains *l, const char *path)
{
  if (l->sysroot)
    return qk_root_host_path (&l->root, path);
  return qk_path_normalize (path);
}

static xmlNodePtr
child (xmlNodePtr n, const char *name)
{
  if (n == NULL)
    return NULL;
  for (xmlNodePtr c = n->children; c; c = c->next)
    if (c->type == XML_ELEMENT_NODE && xmlStrcmp (c->name, BAD_CAST name) == 0)
      return c;
  return NULL;
}

static const char *
attr (struct qk_meta_domains *l, xmlNodePtr n, const char *name)
{
  xmlChar *v;
  const char *r;

  if (n == NULL)
    return NULL;
  v = xmlGetProp (n, BAD_CAST name);
  if (v == NULL)
    return NULL;
  r = keep (l, (const char *) v);
  xmlFree (v);
  return r;
}

static const char *
text (struct qk_meta_domains *l, xmlNodePtr n)
{
  xmlChar *v;
  const char *r;

  if (n == NULL)
    return NULL;
  v = xmlNodeGetContent (n);
  if (v == NULL)
    return NULL;
  r = keep (l, (const char *) v);
  xmlFree (v);
  return r;
}

static int
type_of (const char *t)
{
  if (t == NULL || strcmp (t, "file") == 0)
    return QK_META_DISK_FILE;
  if (strcmp (t, "block") == 0)
    return QK_META_DISK_BLOCK;
  if (strcmp (t, "network") == 0)
    return QK_META_DISK_NETWORK;
  if (strcmp (t, "volume") == 0)
    return QK_META_DISK_VOLUME;
  return QK_META_DISK_OTHER;
}

/* The source of a disk or backing store of type type: *source as
 * written, *path its host path (file and block). */
static void
source_of (struct qk_meta_domains *l, const char *where, int type,
           xmlNodePtr src, const char **source, const char **protocol,
           const char **path)
{
  *source = *path = NULL;
  if (protocol)
    *protocol = NULL;
  if (src == NULL)
    return;
  switch (type) {
  case QK_META_DISK_FILE:
    *source = attr (l, src, "file");
    break;
  case QK_META_DISK_BLOCK:
    *source = attr (l, src, "dev");
    break;
  case QK_META_DISK_NETWORK:
    *source = attr (l, src, "name");
    if (protocol)
      *protocol = attr (l, src, "protocol");
    break;
  case QK_META_DISK_VOLUME: {
    const char *pool = attr (l, src, "pool"), *vol = attr (l, src, "volume");
    char *s;
    if (pool && vol && asprintf (&s, "%s/%s", pool, vol) >= 0)
      *source = keep_own (l, s);
    break;
  }
  default:
    *source = attr (l, src, "dir");
    if (*source == NULL)
      *source = attr (l, src, "path");
    break;
  }
  if ((type == QK_META_DISK_FILE || type == QK_META_DISK_BLOCK) && *source
      && (*source)[0] != '\0') {
    char *h = host_path (l, *source);
    int e = errno;
    *path = keep_own (l, h);
    if (h == NULL)
      warn (l, "%s: disk source '%s' cannot be resolved%s: %s", where,
            *source, l->sysroot ? " under the sysroot" : "", strerror (e));
  }
}

static int
add_backing (struct qk_meta_domains *l, const char *where,
             struct host_disk *hd, xmlNodePtr disk)
{
  size_t cap = 0;
  xmlNodePtr b = child (disk, "backingStore");

  for (; b; b = child (b, "backingStore")) {
    struct qk_meta_backing *nb, *e;
    const char *t = attr (l, b, "type");
    xmlNodePtr src = child (b, "source");

    if (t == NULL && src == NULL)
      break;                    /* <backingStore/>: the chain ends */
    if (hd->pub.n_backing >= MAX_BACKING) {
      warn (l, "%s: disk %s: <backingStore> deeper than %d; the rest is "
            "left out", where, hd->pub.target ? hd->pub.target : "?",
            MAX_BACKING);
      break;
    }
    nb = qk_grow (hd->backing, &cap, hd->pub.n_backing + 1, sizeof *nb);
    if (nb == NULL)
      return -1;
    hd->backing = nb;
    e = &nb[hd->pub.n_backing++];
    memset (e, 0, sizeof *e);
    e->type_name = t;
    e->type = type_of (t);
    e->format = attr (l, child (b, "format"), "type");
    source_of (l, where, e->type, src, &e->source, NULL, &e->path);
  }
  hd->pub.backing = hd->backing;
  return 0;
}

static int
read_disks (struct qk_meta_domains *l, const char *where, xmlNodePtr dom,
            struct host_dom *hd)
{
  xmlNodePtr devs = child (dom, "devices");
  size_t cap = 0;

  if (devs == NULL)
    return 0;
  for (xmlNodePtr d = devs->children; d; d = d->next) {
    struct host_disk *nd, *e;

    if (d->type != XML_ELEMENT_NODE || xmlStrcmp (d->name, BAD_CAST "disk"))
      continue;
    if (hd->n_disks >= MAX_DISKS) {
      warn (l, "%s: more than %d disks; the rest are left out", where,
            MAX_DISKS);
      break;
    }
    nd = qk_grow (hd->disks, &cap, hd->n_disks + 1, sizeof *nd);
    if (nd == NULL)
      return -1;
    hd->disks = nd;
    e = &nd[hd->n_disks++];
    memset (e, 0, sizeof *e);
    e->pub.type_name = attr (l, d, "type");
    e->pub.type = type_of (e->pub.type_name);
    if (e->pub.type_name == NULL)
      e->pub.type_name = "file";
    e->pub.device = attr (l, d, "device");
    if (e->pub.device == NULL)
      e->pub.device = "disk";
    e->pub.target = attr (l, child (d, "target"), "dev");
    e->pub.format = attr (l, child (d, "driver"), "type");
    e->pub.readonly = child (d, "readonly") != NULL;
    e->pub.shareable = child (d, "shareable") != NULL;
    source_of (l, where, e->pub.type, child (d, "source"), &e->pub.source,
               &e->pub.protocol, &e->pub.path);
    if (add_backing (l, where, e, d) < 0)
      return -1;
  }
  return 0;
}

static void
free_dom (struct host_dom *hd)
{
  for (size_t j = 0; j < hd->n_disks; j++)
    free (hd->disks[j].backing);
  free (hd->disks);
  hd->disks = NULL;
  hd->n_disks = 0;
}

/* Read one definition or status file; returns 0 (read, or a warning),
 * -1 out of memory. */
static int
read_one (struct qk_meta_domains *l, const char *dir, const char *name,
          size_t stem, bool status)
{
  char *logical = NULL, *host = NULL, *buf = NULL, err[256];
  size_t len;
  uint64_t size;
  mode_t mode = 0;
  struct xml_scan sc;
  xmlDocPtr doc = NULL;
  xmlNodePtr root, dom;
  struct host_dom *hd;
  int fd, r, ret = 0;

  if (stem == 0 || name[0] == '.')
    return 0;                   /* ".xml", hidden files: not domains */
  if (asprintf (&logical, "%s/%s", dir, name) < 0)
    return -1;
  /* named by the directory entry, not by where a symlink leads */
  {
    char *hd_ = host_path (l, dir);
    if (hd_ == NULL || asprintf (&host, "%s/%s", hd_, name) < 0)
      host = strdup (logical);
    free (hd_);
  }
  if (host == NULL) {
    free (logical);
    return -1;
  }
  fd = qk_root_open (&l->root, logical, O_RDONLY | O_NONBLOCK | O_NOCTTY, 0);
  if (fd < 0) {
    warn (l, "%s: %s", host, strerror (errno));
    goto out;
  }
  r = meta_read_limited_fd (fd, l->max_size, &buf, &len, &size, &mode);
  if (r != 0) {
    if (r > 0)
      warn (l, "%s: too large (%llu bytes, the limit is %llu)", host,
            (unsigned long long) size, (unsigned long long) l->max_size);
    else if (errno == EINVAL && mode)
      warn (l, "%s: not a regular file", host);
    else
      warn (l, "%s: %s", host, strerror (errno));
    goto out;
  }
  xml_scan_init (&sc, l->max_depth);
  if (xml_scan_feed (&sc, buf, len) < 0 || xml_scan_finish (&sc) < 0) {
    warn (l, "%s: %s", host, sc.errmsg);
    goto out;
  }
  doc = meta_xml_parse (buf, len, host, err, sizeof err);
  if (doc == NULL) {
    warn (l, "%s: %s", host, err);
    goto out;
  }
  root = xmlDocGetRootElement (doc);
  dom = root;
  if (status) {
    if (root == NULL || xmlStrcmp (root->name, BAD_CAST "domstatus") != 0) {
      warn (l, "%s: not a <domstatus>", host);
      goto out;
    }
    dom = child (root, "domain");
  }
  if (dom == NULL || xmlStrcmp (dom->name, BAD_CAST "domain") != 0) {
    warn (l, "%s: not a <domain>", host);
    goto out;
  }
  hd = qk_grow (l->d, &l->cap, l->n + 1, sizeof *l->d);
  if (hd == NULL) {
    ret = -1;
    goto out;
  }
  l->d = hd;
  hd = &l->d[l->n];
  memset (hd, 0, sizeof *hd);
  {
    char *nm = strndup (name, stem);
    const char *inner = text (l, child (dom, "name"));
    hd->pub.name = keep_own (l, nm);
    if (hd->pub.name == NULL) {
      ret = -1;
      goto out;
    }
    if (inner == NULL)
      warn (l, "%s: no <name>", host);
    else if (strcmp (inner, hd->pub.name) != 0)
      warn (l, "%s: <name> is '%s', not the file's '%s'", host, inner,
            hd->pub.name);
  }
  hd->pub.uuid = text (l, child (dom, "uuid"));
  hd->from_status = status;
  if (status) {
    const char *pid = attr (l, root, "pid");
    char *end;
    long long v;
    hd->pub.running = true;
    hd->pub.status_path = keep (l, host);
    if (pid) {
      errno = 0;
      v = strtoll (pid, &end, 10);
      if (errno == 0 && *end == '\0' && end != pid && v > 0)
        hd->pub.pid = v;
    }
  }
  else {
    hd->pub.persistent = true;
    hd->pub.config_path = keep (l, host);
  }
  l->n++;
  if (read_disks (l, host, dom, hd) < 0) {
    ret = -1;
    goto out;
  }
out:
  if (doc)
    meta_xml_free_doc (doc);
  free (buf);
  free (logical);
  free (host);
  return ret;
}

static int
scan_dir (struct qk_meta_domains *l, const char *dir, bool status)
{
  int fd;
  DIR *dp;
  struct dirent *de;
  size_t seen = 0;
  int ret = 0;

  fd = qk_root_open (&l->root, dir, O_RDONLY | O_DIRECTORY, 0);
  if (fd < 0) {
    if (errno != ENOENT) {
      char *h = host_path (l, dir);
      warn (l, "%s: %s", h ? h : dir, strerror (errno));
      free (h);
    }
    return 0;
  }
  dp = fdopendir (fd);
  if (dp == NULL) {
    close (fd);
    return 0;
  }
  while ((de = readdir (dp)) != NULL) {
    size_t n = strlen (de->d_name);
    if (n < 4 || strcmp (de->d_name + n - 4, ".xml") != 0)
      continue;
    if (++seen > MAX_DOMAINS) {
      warn (l, "%s: more than %d definitions; the rest are left out", dir,
            MAX_DOMAINS);
      break;
    }
    if (read_one (l, dir, de->d_name, n - 4, status) < 0) {
      ret = -1;
      break;
    }
  }
  closedir (dp);
  return ret;
}

static int
cmp_dom (const void *a, const void *b)
{
  const struct host_dom *x = a, *y = b;
  int c = strcmp (x->pub.name, y->pub.name);

  return c ? c : (int) x->from_status - (int) y->from_status;
}

/* One entry per name: a definition and a status XML of the same domain
 * merge (the status XML's disks are the ones in use). */
static void
merge (struct qk_meta_domains *l)
{
  size_t w = 0;

  if (l->n)
    qsort (l->d, l->n, sizeof *l->d, cmp_dom);
  for (size_t i = 0; i < l->n; i++) {
    if (w > 0 && strcmp (l->d[w - 1].pub.name, l->d[i].pub.name) == 0
        && !l->d[w - 1].from_status && l->d[i].from_status) {
      struct host_dom *c = &l->d[w - 1], *s = &l->d[i];
      c->pub.running = true;
      c->pub.pid = s->pub.pid;
      c->pub.status_path = s->pub.status_path;
      if (c->pub.uuid && s->pub.uuid && strcmp (c->pub.uuid, s->pub.uuid))
        warn (l, "%s: <uuid> %s differs from the definition's %s",
              s->pub.status_path, s->pub.uuid, c->pub.uuid);
      if (c->pub.uuid == NULL)
        c->pub.uuid = s->pub.uuid;
      free_dom (c);
      c->disks = s->disks;
      c->n_disks = s->n_disks;
      c->from_status = true;
      continue;
    }
    if (w != i)
      l->d[w] = l->d[i];
    w++;
  }
  l->n = w;
}

static char *
xdg (const char *var, const char *home_rel)
{
  const char *v = getenv (var), *home;
  char *s;

  if (v && v[0] == '/')
    return strdup (v);
  if (home_rel == NULL)
    return NULL;
  home = getenv ("HOME");
  if (home == NULL || home[0] != '/')
    return NULL;
  if (asprintf (&s, "%s/%s", home, home_rel) < 0)
    return NULL;
  return s;
}

QK_EXPORT struct qk_meta_domains *
qk_meta_list_domains (const struct qk_meta_options *opts, const char *run_dir,
                      unsigned flags)
{
  struct qk_meta_options o = { 0 };
  struct qk_meta_domains *l;
  char *cfg = NULL, *state = NULL, *run = NULL;

  if (opts)
    o = *opts;
  if (flags & ~QK_META_LIST_SESSION) {
    set_error (EINVAL, "unknown flags 0x%x", flags);
    return NULL;
  }
  l = calloc (1, sizeof *l);
  if (l == NULL) {
    set_error (ENOMEM, "calloc");
    return NULL;
  }
  l->root.fd = -1;
  if (qk_root_init (&l->root, o.sysroot,
                    o.sysroot ? QK_ROOT_IN : QK_ROOT_HOST) < 0) {
    qk_internal_prefix_error ("the sysroot");
    goto fail;
  }
  if (flags & QK_META_LIST_SESSION) {
    /* libvirt's session daemon: configDir ~/.config/libvirt/qemu, libDir
     * (snapshots, checkpoints) configDir/lib, stateDir
     * $XDG_RUNTIME_DIR/libvirt/qemu/run */
    char *c = xdg ("XDG_CONFIG_HOME", ".config"), *r = xdg ("XDG_RUNTIME_DIR",
                                                            NULL);
    if (c == NULL) {
      free (r);
      set_error (ENOENT, "no $XDG_CONFIG_HOME or $HOME for the session");
      goto fail;
    }
    if (!o.config_dir && asprintf (&cfg, "%s/libvirt/qemu", c) < 0)
      cfg = NULL;
    if (!o.state_dir && asprintf (&state, "%s/libvirt/qemu/lib", c) < 0)
      state = NULL;
    if (r && asprintf (&run, "%s/libvirt/qemu/run", r) < 0)
      run = NULL;
    free (c);
    free (r);
    if (!o.config_dir)
      o.config_dir = cfg;
    if (!o.state_dir)
      o.state_dir = state;
  }
  meta_dirs (&o, &l->config_dir, &l->state_dir);
  free (cfg);
  free (state);
  cfg = state = NULL;
  if (run_dir)
    l->run_dir = strdup (run_dir);
  else if (run)
    l->run_dir = run, run = NULL;
  else if (o.libvirt_root) {
    if (asprintf (&l->run_dir, "%s/run/qemu", o.libvirt_root) < 0)
      l->run_dir = NULL;
  }
  else if (!(flags & QK_META_LIST_SESSION))
    l->run_dir = strdup ("/run/libvirt/qemu");
  free (run);
  l->sysroot = o.sysroot ? strdup (o.sysroot) : NULL;
  l->libvirt_root = o.libvirt_root ? strdup (o.libvirt_root) : NULL;
  if (l->config_dir == NULL || l->state_dir == NULL
      || (o.sysroot && l->sysroot == NULL)
      || (o.libvirt_root && l->libvirt_root == NULL)
      || (run_dir && l->run_dir == NULL)) {
    set_error (ENOMEM, "strdup");
    goto fail;
  }
  l->o = o;
  l->o.sysroot = l->sysroot;
  l->o.libvirt_root = l->libvirt_root;
  l->o.config_dir = l->config_dir;
  l->o.state_dir = l->state_dir;
  l->max_size = o.max_file_size ? o.max_file_size : DEFAULT_MAX_FILE;
  l->max_depth = o.max_depth ? o.max_depth : DEFAULT_MAX_DEPTH;
  if (scan_dir (l, l->config_dir, false) < 0
      || (l->run_dir && scan_dir (l, l->run_dir, true) < 0)) {
    set_error (ENOMEM, "reading the domains");
    goto fail;
  }
  merge (l);
  if (l->warnings_dropped) {
    char *s;
    if (asprintf (&s, "%zu more warnings left out", l->warnings_dropped) >= 0)
      qk_strvec_add (&l->warnings, s);
  }
  return l;
fail:
  free (cfg);
  free (state);
  free (run);
  qk_meta_domains_free (l);
  return NULL;
}

QK_EXPORT void
qk_meta_domains_free (struct qk_meta_domains *l)
{
  if (l == NULL)
    return;
  for (size_t i = 0; i < l->n; i++)
    free_dom (&l->d[i]);
  free (l->d);
  qk_strvec_free (&l->strs);
  qk_strvec_free (&l->warnings);
  free (l->sysroot);
  free (l->libvirt_root);
  free (l->config_dir);
  free (l->state_dir);
  free (l->run_dir);
  qk_root_fini (&l->root);
  free (l);
}

QK_EXPORT size_t
qk_meta_domains_count (const struct qk_meta_domains *l)
{
  return l ? l->n : 0;
}

QK_EXPORT const struct qk_meta_host_domain *
qk_meta_domains_get (const struct qk_meta_domains *l, size_t i)
{
  if (l == NULL || i >= l->n) {
    set_error (EINVAL, "no domain %zu", i);
    return NULL;
  }
  return &l->d[i].pub;
}

QK_EXPORT size_t
qk_meta_domains_disk_count (const struct qk_meta_domains *l, size_t i)
{
  if (l == NULL || i >= l->n)
    return 0;
  return l->d[i].n_disks;
}

QK_EXPORT const struct qk_meta_host_disk *
qk_meta_domains_disk (const struct qk_meta_domains *l, size_t i, size_t j)
{
  if (l == NULL || i >= l->n || j >= l->d[i].n_disks) {
    set_error (EINVAL, "no disk %zu of domain %zu", j, i);
    return NULL;
  }
  return &l->d[i].disks[j].pub;
}

QK_EXPORT int
qk_meta_domains_options (const struct qk_meta_domains *l,
                         struct qk_meta_options *opts)
{
  if (l == NULL || opts == NULL) {
    set_error (EINVAL, "no list or no options");
    return -1;
  }
  *opts = l->o;
  return 0;
}

QK_EXPORT size_t
qk_meta_domains_warning_count (const struct qk_meta_domains *l)
{
  return l ? l->warnings.n : 0;
}

QK_EXPORT const char *
qk_meta_domains_warning (const struct qk_meta_domains *l, size_t i)
{
  if (l == NULL || i >= l->warnings.n) {
    set_error (EINVAL, "no warning %zu", i);
    return NULL;
  }
  return l->warnings.v[i];
}
