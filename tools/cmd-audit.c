/* qcowkit audit: every domain of a host, every disk, every image of each
 * disk's backing chain checked read-only as 'check --chain' checks it,
 * and each domain's libvirt metadata as 'meta check' does; one verdict
 * per image and per domain (qcowkit-audit(1), doc/audit-jsonl.md).
 *
 * Images are checked by --jobs threads. Each image is checked once,
 * however many disks share it (a base image under several overlays):
 * the first job to reach it claims it, the others wait for its result;
 * a job finishes an image before it moves down its chain, so no job
 * waits while it holds one. Memory: before an image is opened its need
 * is estimated from its header (its L1 table twice, the refcount table,
 * the refcount map at its width over the file's clusters, a fixed part
 * for caches); the jobs together never hold more than --memory-limit of
 * such estimates, and an image whose estimate alone is over the limit
 * fails with that reason. Results are printed at the end, in domain and
 * disk order, so that any --jobs gives the same records. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tool.h"
#include "buf.h"
#include "json.h"

/* Verdicts, from the least to the most severe. The exit status is the
 * worst verdict's, with check's meanings: corrupt 2 > in use or error 1
 * > leaks 3 > clean 0 (a corruption found outranks a part not checked). */
enum verdict {
  V_CLEAN = 0,
  V_NOT_CHECKED,    /* network, block, volume disks; empty drives */
  V_LEAKS,
  V_IN_USE,
  V_ERROR,
  V_CORRUPT,
};
static const char *const vname[] = {
  "clean", "not-checked", "leaks", "in-use", "error", "corrupt",
};
static const int vexit[] = { 0, 0, 3, 1, 1, 2 };

#define MAX_PROBLEMS 100      /* kept per image or metadata, for the records */
#define MAX_CHAIN 64
#define FIXED_NEED (4ULL << 20)

struct prob {
  uint32_t code;
  const char *name;
  enum qk_problem_class cls;
  char *msg;
  char *subject;             /* metadata: "snapshot s1" */
};

struct probs {
  struct prob *p;
  size_t n, cap;
  uint64_t dropped;
  uint64_t by_class[5];
};

/* One image file, checked once. */
struct rec {
  char *logical;             /* the path as named (under the sysroot) */
  char *path;                /* the host path */
  dev_t dev;
  ino_t ino;
  const char *format;        /* "qcow2", "raw" */
  enum verdict v;
  char *reason;              /* why not clean-or-counted (NULL: none) */
  bool stale;                /* in use, read anyway (--force-share) */
  struct qk_check_result res;
  bool checked;
  struct probs pr;
  char *backing;             /* logical path of its backing file, or NULL */
  char *backing_format;
  bool done;
  bool printed;
  struct sbuf users;         /* "dom:disk" list, for the record */
};

struct disk {
  size_t dom;
  const struct qk_meta_host_disk *d;
  enum verdict v;
  char *reason;              /* not checked: why; chain errors */
  size_t chain[MAX_CHAIN];   /* record indexes, top first */
  size_t n_chain;
};

struct dom {
  const struct qk_meta_host_domain *d;
  enum verdict v;
  enum verdict meta_v;
  bool meta_checked;
  char *meta_reason;
  struct probs meta;
  size_t first_disk, n_disks;
};

struct audit {
  /* options */
  unsigned check_flags;
  bool force_share;
  unsigned jobs;
  uint64_t mem_limit;
  struct qk_root *root;      /* the sysroot, or the host */
  bool sysroot;
  /* work */
  struct qk_meta_domains *l;
  struct dom *doms;
  size_t n_doms;
  struct disk *disks;
  size_t n_disks;
  size_t next_disk;          /* the queue */
  size_t disks_done;
  struct rec **recs;         /* pointers: stable while the array grows */
  size_t n_recs, cap_recs;
  uint64_t mem_used;
  pthread_mutex_t mu;
  pthread_cond_t cv;         /* a record done, memory released */
  struct progress prog;
};

static void
probs_add (struct probs *ps, const struct qk_problem *p)
{
  struct prob *np;

  if (p->cls <= QK_CLASS_ERROR)
    ps->by_class[p->cls] += p->count ? p->count : 1;
  if (ps->n >= MAX_PROBLEMS) {
    ps->dropped++;
    return;
  }
  np = grow (ps->p, &ps->cap, ps->n + 1, sizeof *np);
  if (np == NULL)
    return;
  ps->p = np;
  np = &ps->p[ps->n++];
  np->code = p->code;
  np->name = p->name;
  np->cls = p->cls;
  np->msg = strdup (p->message);
  np->subject = NULL;
  if (p->subject && p->subject_kind
      && asprintf (&np->subject, "%s %s", p->subject_kind, p->subject) < 0)
    np->subject = NULL;
}

static void
probs_free (struct probs *ps)
{
  for (size_t i = 0; i < ps->n; i++) {
    free (ps->p[i].msg);
    free (ps->p[i].subject);
  }
  free (ps->p);
}

static int
on_problem (void *opaque, const struct qk_problem *p)
{
  probs_add (opaque, p);
  return 0;
}

/* The metadata check: a disk of the definition itself (no snapshot or
 * checkpoint as subject) whose image is missing is the image pass's
 * finding, reported there once (an error; a network disk's name, which
 * meta check takes for a path, is "not checked" there). */
static int
on_meta_problem (void *opaque, const struct qk_problem *p)
{
  if (p->subject == NULL && strcmp (p->name, "IMAGE_MISSING") == 0)
    return 0;
  probs_add (opaque, p);
  return 0;
}

/* ---- images ---- */

static struct qk_source *
open_under (void *opaque, const char *path)
{
  struct audit *a = opaque;
  int fd = qk_root_open (a->root, path, O_RDONLY | O_NOCTTY | O_NONBLOCK, 0);

  if (fd < 0)
    return NULL;
  return qk_source_fd (fd, path);
}

static int
open_fd (struct audit *a, const char *logical)
{
  if (a->sysroot)
    return qk_root_open (a->root, logical, O_RDONLY | O_NOCTTY | O_NONBLOCK,
                         0);
  return open (logical, O_RDONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
}

/* What checking a qcow2 image with header h in a file of size bytes
 * needs, at most (see the top of the file). */
static uint64_t
estimate (const struct qk_header *h, uint64_t size)
{
  uint64_t cs = h->cluster_size ? h->cluster_size : 65536;
  uint64_t clusters = size / cs + 1;
  uint64_t need = FIXED_NEED + 16 * cs;

  need += 2 * (uint64_t) h->l1_size * 8;
  need += (uint64_t) h->refcount_table_clusters * cs;
  need += clusters * (h->refcount_bits ? h->refcount_bits : 16) / 8;
  need += clusters / 4;      /* claim and conflict bits */
  return need;
}

static void
set_reason (struct rec *r, enum verdict v, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));

static void
set_reason (struct rec *r, enum verdict v, const char *fmt, ...)
{
  va_list ap;

  r->v = v;
  free (r->reason);
  va_start (ap, fmt);
  if (vasprintf (&r->reason, fmt, ap) < 0)
    r->reason = NULL;
  va_end (ap);
}

/* Check the image of r (claimed by this job); fd is its open file. */
static void
check_image (struct audit *a, struct rec *r, int fd, const char *declared)
{
  struct qk_source *s;
  uint8_t hb[4096];
  struct qk_header h;
  struct stat st;
  ssize_t got;
  uint64_t need = 0;
  struct qk_image *img;
  struct qk_open_options oo = { .flags = QK_OPEN_NO_BACKING | QK_OPEN_FORCE };

  if (fstat (fd, &st) < 0) {
    set_reason (r, V_ERROR, "%s", strerror (errno));
    close (fd);
    return;
  }
  /* QEMU's locks: a writer that shares no write (a running VM) */
  s = qk_source_fd (dup (fd), r->path);
  if (s && qk_source_lock_test (s, QK_LOCK_READ) < 0) {
    if (!a->force_share) {
      set_reason (r, V_IN_USE, "in use by a running QEMU (%s); not read "
                  "(--force-share reads it)", qk_get_error ());
      qk_source_close (s);
      close (fd);
      return;
    }
    r->stale = true;
  }
  if (s)
    qk_source_close (s);
  got = pread (fd, hb, sizeof hb, 0);
  close (fd);
  if (got < 0) {
    set_reason (r, V_ERROR, "%s", strerror (errno));
    return;
  }
  if (got < 4 || hb[0] != 'Q' || hb[1] != 'F' || hb[2] != 'I'
      || hb[3] != 0xfb) {
    if (declared && strcmp (declared, "qcow2") == 0) {
      r->format = "qcow2";
      set_reason (r, V_ERROR, "not a qcow2 image (libvirt's driver type "
                  "is qcow2)");
      return;
    }
    r->format = "raw";
    r->v = V_CLEAN;
    return;
  }
  if (declared && strcmp (declared, "raw") == 0) {
    r->format = "raw";        /* as QEMU will read it */
    r->v = V_CLEAN;
    return;
  }
  r->format = "qcow2";
  if (qk_header_parse (hb, got, &h) == 0)
    need = estimate (&h, st.st_size);
  else
    need = FIXED_NEED;
  if (need > a->mem_limit) {
    set_reason (r, V_ERROR, "checking it needs about %" PRIu64 " MiB (its "
                "L1 table has %u entries), over --memory-limit %" PRIu64
                " MiB; not checked", (need + (1 << 20) - 1) >> 20, h.l1_size,
                a->mem_limit >> 20);
    return;
  }
  pthread_mutex_lock (&a->mu);
  while (a->mem_used + need > a->mem_limit)
    pthread_cond_wait (&a->cv, &a->mu);
  a->mem_used += need;
  pthread_mutex_unlock (&a->mu);

  if (a->sysroot) {
    oo.open_fn = open_under;
    oo.open_opaque = a;
  }
  img = qk_image_open (r->logical, &oo);
  if (img == NULL)
    set_reason (r, V_ERROR, "%s", qk_get_error ());
  else if (qk_image_header (img) == NULL)
    r->v = V_CLEAN;
  else {
    if (qk_check_run (img, a->check_flags, on_problem, &r->pr, &r->res) < 0)
      set_reason (r, V_ERROR, "%s", qk_get_error ());
    else {
      r->checked = true;
      r->v = r->res.check_errors ? V_ERROR : r->res.corruptions ? V_CORRUPT
           : r->res.leaks ? V_LEAKS : V_CLEAN;
      if (r->stale)
        r->reason = strdup ("in use by a running QEMU: read anyway "
                            "(--force-share), the result can be stale");
    }
    if (qk_image_backing_path (img))
      r->backing = strdup (qk_image_backing_path (img));
    else if (qk_image_backing_name (img)) {
      free (r->reason);
      r->v = r->v > V_ERROR ? r->v : V_ERROR;
      if (asprintf (&r->reason, "backing file '%s' is not a path",
                    qk_image_backing_name (img)) < 0)
        r->reason = NULL;
    }
    if (qk_image_backing_format (img))
      r->backing_format = strdup (qk_image_backing_format (img));
  }
  qk_image_close (img);
  pthread_mutex_lock (&a->mu);
  a->mem_used -= need;
  pthread_cond_broadcast (&a->cv);
  pthread_mutex_unlock (&a->mu);
}

/* The record of the file at logical (opened as fd: dev, ino), claimed by
 * this job (*mine) or another's, done or not. Called locked. */
static struct rec *
find_or_claim (struct audit *a, const char *logical, const char *host,
               const struct stat *st, bool *mine)
{
  struct rec *r, **nr;

  *mine = false;
  for (size_t i = 0; i < a->n_recs; i++) {
    r = a->recs[i];
    if (st ? (r->dev == st->st_dev && r->ino == st->st_ino && r->path)
           : strcmp (r->logical, logical) == 0)
      return r;
  }
  nr = grow (a->recs, &a->cap_recs, a->n_recs + 1, sizeof *nr);
  r = calloc (1, sizeof *r);
  if (nr == NULL || r == NULL) {
    free (r);
    return NULL;
  }
  a->recs = nr;
  r->logical = strdup (logical);
  r->path = strdup (host ? host : logical);
  if (st) {
    r->dev = st->st_dev;
    r->ino = st->st_ino;
  }
  else
    r->dev = (dev_t) -1;
  a->recs[a->n_recs++] = r;
  *mine = true;
  return r;
}

static size_t
rec_index (struct audit *a, struct rec *r)
{
  for (size_t i = 0; i < a->n_recs; i++)
    if (a->recs[i] == r)
      return i;
  return 0;
}

static char *
host_of (struct audit *a, const char *logical)
{
  if (a->sysroot)
    return qk_root_host_path (a->root, logical);
  return qk_path_normalize (logical);
}

static void
audit_disk (struct audit *a, struct disk *k)
{
  const struct qk_meta_host_disk *d = k->d;
  char *logical = strdup (d->source), *fmt = d->format ? strdup (d->format)
                                                        : NULL;

  while (logical) {
    int fd = open_fd (a, logical), e = errno;
    struct stat st;
    bool have = fd >= 0 && fstat (fd, &st) == 0, mine;
    char *host;

    if (fd >= 0 && !have)
      e = errno;
    host = host_of (a, logical);
    struct rec *r;

    if (k->n_chain == MAX_CHAIN) {
      k->reason = strdup ("the backing chain is deeper than 64 images");
      k->v = V_ERROR;
      if (fd >= 0)
        close (fd);
      free (host);
      break;
    }
    pthread_mutex_lock (&a->mu);
    r = find_or_claim (a, logical, host, have ? &st : NULL, &mine);
    if (r && !mine)
      while (!r->done)
        pthread_cond_wait (&a->cv, &a->mu);
    pthread_mutex_unlock (&a->mu);
    free (host);
    if (r == NULL) {
      if (fd >= 0)
        close (fd);
      k->v = V_ERROR;
      k->reason = strdup ("out of memory");
      break;
    }
    /* a loop: the file is already in this chain */
    for (size_t i = 0; i < k->n_chain; i++)
      if (a->recs[k->chain[i]] == r) {
        k->v = V_CORRUPT;
        k->reason = strdup ("the backing chain has a loop");
        if (fd >= 0)
          close (fd);
        goto out;
      }
    pthread_mutex_lock (&a->mu);
    k->chain[k->n_chain++] = rec_index (a, r);
    pthread_mutex_unlock (&a->mu);
    if (mine) {
      if (!have) {
        if (fd >= 0)
          close (fd);
        set_reason (r, V_ERROR, "%s", strerror (e));
      }
      else
        check_image (a, r, fd, fmt);
      pthread_mutex_lock (&a->mu);
      r->done = true;
      pthread_cond_broadcast (&a->cv);
      pthread_mutex_unlock (&a->mu);
    }
    else if (fd >= 0)
      close (fd);
    free (logical);
    free (fmt);
    logical = r->backing ? strdup (r->backing) : NULL;
    fmt = r->backing_format ? strdup (r->backing_format) : NULL;
    continue;
  out:
    break;
  }
  free (logical);
  free (fmt);
}

static void *
worker (void *opaque)
{
  struct audit *a = opaque;

  for (;;) {
    struct disk *k;

    pthread_mutex_lock (&a->mu);
    if (a->next_disk == a->n_disks) {
      pthread_mutex_unlock (&a->mu);
      return NULL;
    }
    k = &a->disks[a->next_disk++];
    pthread_mutex_unlock (&a->mu);
    if (k->v != V_NOT_CHECKED)
      audit_disk (a, k);
    pthread_mutex_lock (&a->mu);
    a->disks_done++;
    progress_update (&a->prog, a->disks_done);
    pthread_mutex_unlock (&a->mu);
  }
}

/* ---- the disks and domains ---- */

static const char *
not_checked_reason (const struct qk_meta_host_disk *d)
{
  static char buf[160];

  switch (d->type) {
  case QK_META_DISK_NETWORK:
    snprintf (buf, sizeof buf, "network disk (%s): not checked",
              d->protocol ? printable (d->protocol) : "?");
    return buf;
  case QK_META_DISK_BLOCK:
    return "block device: not checked";
  case QK_META_DISK_VOLUME:
    return "storage pool volume: not checked";
  default:
    break;
  }
  if (d->type != QK_META_DISK_FILE) {
    snprintf (buf, sizeof buf, "disk type %s: not checked",
              d->type_name ? printable (d->type_name) : "?");
    return buf;
  }
  if (d->source == NULL || d->source[0] == '\0')
    return "no medium: nothing to check";
  if (d->format && strcmp (d->format, "qcow2") && strcmp (d->format, "raw")) {
    snprintf (buf, sizeof buf, "format %s: not checked", printable (d->format));
    return buf;
  }
  return NULL;
}

static void
check_metadata (struct audit *a, struct dom *dm)
{
  struct qk_meta_options mo;
  struct qk_meta *m;
  unsigned flags = QK_META_CHECK_IMAGES;
  bool busy = false;
  int r;

  if (!dm->d->persistent) {
    dm->meta_reason = strdup ("transient domain: no metadata");
    dm->meta_v = V_NOT_CHECKED;
    return;
  }
  for (size_t j = 0; j < dm->n_disks; j++) {
    struct disk *k = &a->disks[dm->first_disk + j];
    for (size_t c = 0; c < k->n_chain; c++)
      if (a->recs[k->chain[c]]->v == V_IN_USE)
        busy = true;
  }
  if (busy)
    flags = 0;                /* do not read images QEMU holds */
  qk_meta_domains_options (a->l, &mo);
  m = qk_meta_open (dm->d->name, &mo);
  if (m == NULL) {
    dm->meta_v = V_ERROR;
    dm->meta_reason = strdup (qk_get_error ());
    return;
  }
  r = qk_meta_check (m, flags, on_meta_problem, &dm->meta);
  qk_meta_close (m);
  if (r < 0) {
    dm->meta_v = V_ERROR;
    dm->meta_reason = strdup (qk_get_error ());
    return;
  }
  dm->meta_checked = true;
  if (busy)
    dm->meta_reason = strdup ("images in use: the metadata checked without "
                              "the images");
  dm->meta_v = dm->meta.by_class[QK_CLASS_CORRUPTION] ? V_CORRUPT
    : dm->meta.by_class[QK_CLASS_ERROR] ? V_ERROR : V_CLEAN;
}

static enum verdict
worse (enum verdict a, enum verdict b)
{
  /* not-checked is not a problem: clean and not-checked give not-checked */
  return a > b ? a : b;
}

/* ---- output ---- */

static void
json_probs (struct qk_json *j, const char *key, const struct probs *ps)
{
  qk_json_array_begin (j, key);
  for (size_t i = 0; i < ps->n; i++) {
    char code[16];
    snprintf (code, sizeof code, "0x%06x", ps->p[i].code);
    qk_json_object_begin (j, NULL);
    qk_json_string (j, "code", code);
    qk_json_string (j, "name", ps->p[i].name);
    qk_json_string (j, "class", qk_problem_class_name (ps->p[i].cls));
    qk_json_string (j, "message", ps->p[i].msg ? ps->p[i].msg : "");
    if (ps->p[i].subject)
      qk_json_string (j, "subject", ps->p[i].subject);
    qk_json_object_end (j);
  }
  qk_json_array_end (j);
  if (ps->dropped)
    qk_json_uint (j, "problems-not-listed", ps->dropped);
}

static void
json_image (struct qk_json *j, const struct rec *r, const char *domain,
            const char *disk, size_t depth)
{
  qk_json_object_begin (j, NULL);
  qk_json_string (j, "type", "image");
  qk_json_string (j, "domain", domain);
  qk_json_string (j, "disk", disk);
  qk_json_uint (j, "depth", depth);
  qk_json_string (j, "filename", r->path);
  if (r->format)
    qk_json_string (j, "format", r->format);
  else
    qk_json_null (j, "format");
  qk_json_string (j, "verdict", vname[r->v]);
  if (r->reason)
    qk_json_string (j, "reason", r->reason);
  else
    qk_json_null (j, "reason");
  qk_json_bool (j, "checked", r->checked);
  qk_json_bool (j, "stale", r->stale);
  qk_json_uint (j, "check-errors", r->res.check_errors);
  qk_json_uint (j, "corruptions", r->res.corruptions);
  qk_json_uint (j, "leaks", r->res.leaks);
  qk_json_uint (j, "warnings", r->res.warnings);
  qk_json_uint (j, "infos", r->res.infos);
  if (r->res.image_end_offset)
    qk_json_uint (j, "image-end-offset", r->res.image_end_offset);
  json_probs (j, "problems", &r->pr);
  qk_json_array_begin (j, "used-by");
  for (const char *p = r->users.p; p && *p;) {
    const char *e = strchr (p, '\n');
    qk_json_stringn (j, NULL, p, e ? (size_t) (e - p) : strlen (p));
    p = e ? e + 1 : p + strlen (p);
  }
  qk_json_array_end (j);
  qk_json_object_end (j);
}

static void
json_nodisk (struct qk_json *j, const struct disk *k, const char *domain)
{
  qk_json_object_begin (j, NULL);
  qk_json_string (j, "type", "image");
  qk_json_string (j, "domain", domain);
  qk_json_string (j, "disk", k->d->target ? k->d->target : "");
  qk_json_uint (j, "depth", 0);
  if (k->d->path)
    qk_json_string (j, "filename", k->d->path);
  else if (k->d->source)
    qk_json_string (j, "filename", k->d->source);
  else
    qk_json_null (j, "filename");
  if (k->d->format)
    qk_json_string (j, "format", k->d->format);
  else
    qk_json_null (j, "format");
  qk_json_string (j, "verdict", vname[k->v]);
  qk_json_string (j, "reason", k->reason ? k->reason : "");
  qk_json_bool (j, "checked", false);
  qk_json_bool (j, "stale", false);
  qk_json_uint (j, "check-errors", 0);
  qk_json_uint (j, "corruptions", 0);
  qk_json_uint (j, "leaks", 0);
  qk_json_uint (j, "warnings", 0);
  qk_json_uint (j, "infos", 0);
  qk_json_array_begin (j, "problems");
  qk_json_array_end (j);
  qk_json_array_begin (j, "used-by");
  qk_json_array_end (j);
  qk_json_object_end (j);
}

static void
json_domain (struct qk_json *j, struct audit *a, const struct dom *dm)
{
  qk_json_object_begin (j, NULL);
  qk_json_string (j, "type", "domain");
  qk_json_string (j, "domain", dm->d->name);
  if (dm->d->uuid)
    qk_json_string (j, "uuid", dm->d->uuid);
  else
    qk_json_null (j, "uuid");
  qk_json_bool (j, "persistent", dm->d->persistent);
  qk_json_bool (j, "running", dm->d->running);
  qk_json_string (j, "verdict", vname[dm->v]);
  qk_json_uint (j, "exit", vexit[dm->v]);
  qk_json_array_begin (j, "disks");
  for (size_t i = 0; i < dm->n_disks; i++) {
    const struct disk *k = &a->disks[dm->first_disk + i];
    qk_json_object_begin (j, NULL);
    qk_json_string (j, "target", k->d->target ? k->d->target : "");
    qk_json_string (j, "type", k->d->type_name);
    qk_json_string (j, "verdict", vname[k->v]);
    if (k->reason)
      qk_json_string (j, "reason", k->reason);
    qk_json_uint (j, "images", k->n_chain);
    qk_json_object_end (j);
  }
  qk_json_array_end (j);
  qk_json_object_begin (j, "metadata");
  qk_json_string (j, "verdict", vname[dm->meta_v]);
  qk_json_bool (j, "checked", dm->meta_checked);
  if (dm->meta_reason)
    qk_json_string (j, "reason", dm->meta_reason);
  qk_json_uint (j, "errors", dm->meta.by_class[QK_CLASS_CORRUPTION]);
  qk_json_uint (j, "check-errors", dm->meta.by_class[QK_CLASS_ERROR]);
  qk_json_uint (j, "warnings", dm->meta.by_class[QK_CLASS_WARNING]);
  qk_json_uint (j, "infos", dm->meta.by_class[QK_CLASS_INFO]);
  json_probs (j, "problems", &dm->meta);
  qk_json_object_end (j);
  qk_json_object_end (j);
}

/* ---- prometheus ---- */

static void
prom_label (struct sbuf *b, const char *s)
{
  for (; s && *s; s++) {
    if (*s == '\\' || *s == '"')
      sbuf_printf (b, "\\%c", *s);
    else if (*s == '\n')
      sbuf_add (b, "\\n", 2);
    else
      sbuf_add (b, s, 1);
  }
}

static void
prom_line (struct sbuf *b, const char *metric, const char *domain,
           const char *disk, const char *sev, uint64_t v)
{
  sbuf_printf (b, "%s{domain=\"", metric);
  prom_label (b, domain);
  sbuf_add (b, "\",disk=\"", 8);
  prom_label (b, disk);
  sbuf_printf (b, "\",severity=\"%s\"} %" PRIu64 "\n", sev, v);
}

static int
write_prometheus (struct audit *a, const char *file, double start,
                  double dur, int status)
{
  struct sbuf b = { 0 };
  static const char *const sev[] = { "corruption", "leak", "error",
                                     "warning" };
  static const enum qk_problem_class cls[] = { QK_CLASS_CORRUPTION,
    QK_CLASS_LEAK, QK_CLASS_ERROR, QK_CLASS_WARNING };
  char *dir, *slash, *leaf;
  int dfd, r;

  sbuf_printf (&b, "# HELP qcowkit_audit_problems Problems qcowkit audit "
                  "found, by domain, disk (\"metadata\": libvirt's) and "
                  "severity.\n# TYPE qcowkit_audit_problems gauge\n");
  for (size_t i = 0; i < a->n_doms; i++) {
    struct dom *dm = &a->doms[i];
    for (size_t j = 0; j < dm->n_disks; j++) {
      struct disk *k = &a->disks[dm->first_disk + j];
      uint64_t n[4] = { 0 };
      for (size_t c = 0; c < k->n_chain; c++) {
        struct rec *ir = a->recs[k->chain[c]];
        n[0] += ir->res.corruptions;
        n[1] += ir->res.leaks;
        n[2] += ir->res.check_errors
                + (ir->v == V_ERROR || ir->v == V_IN_USE);
        n[3] += ir->res.warnings;
      }
      if (k->v == V_ERROR && k->n_chain == 0)
        n[2]++;
      for (int s = 0; s < 4; s++)
        prom_line (&b, "qcowkit_audit_problems", dm->d->name,
                   k->d->target ? k->d->target : "", sev[s], n[s]);
    }
    for (int s = 0; s < 4; s++)
      prom_line (&b, "qcowkit_audit_problems", dm->d->name, "metadata",
                 sev[s], dm->meta.by_class[cls[s]]
                 + (s == 2 && dm->meta_v == V_ERROR
                    && dm->meta.by_class[QK_CLASS_ERROR] == 0));
  }
  sbuf_printf (&b, "# HELP qcowkit_audit_domain_verdict The worst "
                  "verdict of each domain (1 for the verdict it has).\n"
                  "# TYPE qcowkit_audit_domain_verdict gauge\n");
  for (size_t i = 0; i < a->n_doms; i++) {
    sbuf_add (&b, "qcowkit_audit_domain_verdict{domain=\"", 37);
    prom_label (&b, a->doms[i].d->name);
    sbuf_printf (&b, "\",verdict=\"%s\"} 1\n", vname[a->doms[i].v]);
  }
  sbuf_printf (&b, "# HELP qcowkit_audit_last_run_timestamp_seconds When "
                  "the audit started.\n# TYPE "
                  "qcowkit_audit_last_run_timestamp_seconds gauge\n"
                  "qcowkit_audit_last_run_timestamp_seconds %.3f\n"
                  "# HELP qcowkit_audit_duration_seconds How long it took.\n"
                  "# TYPE qcowkit_audit_duration_seconds gauge\n"
                  "qcowkit_audit_duration_seconds %.3f\n"
                  "# HELP qcowkit_audit_domains Domains audited.\n"
                  "# TYPE qcowkit_audit_domains gauge\n"
                  "qcowkit_audit_domains %zu\n"
                  "# HELP qcowkit_audit_exit_status The audit's exit status.\n"
                  "# TYPE qcowkit_audit_exit_status gauge\n"
                  "qcowkit_audit_exit_status %d\n", start, dur, a->n_doms,
                  status);
  if (b.oom) {
    errx_ ("out of memory");
    return -1;
  }
  dir = strdup (file);
  if (dir == NULL) {
    free (b.p);
    return -1;
  }
  slash = strrchr (dir, '/');
  if (slash) {
    *slash = '\0';
    leaf = slash + 1;
    dfd = open (slash == dir ? "/" : dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  }
  else {
    leaf = dir;
    dfd = open (".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  }
  if (dfd < 0 || !qk_leaf_ok (leaf)) {
    errx_ ("--prometheus %s: %s", file,
           dfd < 0 ? strerror (errno) : "not a file name");
    r = -1;
  }
  else if ((r = qk_durable_write (dfd, leaf, b.p, b.n, 0644,
                                  QK_DURABLE_REPLACE)) < 0)
    errx_ ("--prometheus %s: %s", file, qk_get_error ());
  if (dfd >= 0)
    close (dfd);
  free (dir);
  free (b.p);
  return r;
}

/* ---- the command ---- */

enum out { A_HUMAN, A_JSON, A_JSONL };

struct cli {
  enum out out;
};

static int
set_output (void *data, const char *opt, const char *v)
{
  struct cli *c = data;

  (void) opt;
  if (strcmp (v, "human") == 0)
    c->out = A_HUMAN;
  else if (strcmp (v, "json") == 0)
    c->out = A_JSON;
  else if (strcmp (v, "jsonl") == 0)
    c->out = A_JSONL;
  else
    return usage_error ("audit", "--output: '%s' is not human, json or "
                        "jsonl", v), -1;
  return 0;
}

static const char help[] =
  "Usage: qcowkit audit [--sysroot DIR | --libvirt-root DIR] [--session]\n"
  "                     [-j|--jobs N] [--memory-limit SIZE] [--deep]\n"
  "                     [-U|--force-share] [--output=human|json|jsonl]\n"
  "                     [--prometheus FILE]\n"
  "Check every libvirt domain of a host read-only: each disk's backing\n"
  "chain as check does with its chain option, each domain's snapshot and\n"
  "checkpoint metadata as 'meta check' does. Images a running QEMU holds\n"
  "are \"in use\" and not read unless --force-share. Exit status: the worst verdict\n"
  "(2 corrupt, 1 in use or error, 3 leaks, 0 clean); see qcowkit-audit(1).\n";

static double
now (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_REALTIME, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

int
cmd_audit (int argc, char **argv)
{
  struct common_opts o = { .progress = -1 };
  struct cli c = { A_HUMAN };
  struct audit a = { .jobs = 1, .mem_limit = 512ULL << 20 };
  const char *sysroot = NULL, *libvirt_root = NULL, *jobs_s = NULL;
  const char *mem_s = NULL, *prom = NULL;
  bool deep = false, session = false;
  unsigned flags = 0;
  const struct opt opts[] = {
    { "--sysroot", "a directory", .str = &sysroot },
    { "--libvirt-root", "a directory", .str = &libvirt_root },
    { "--session", NULL, .on = &session },
    { "-j|--jobs", "a number", .str = &jobs_s },
    { "--memory-limit", "a size", .str = &mem_s },
    { "--deep", NULL, .on = &deep },
    { "-U|--force-share", NULL, .on = &a.force_share },
    { "--output", "a value", .fn = set_output, .data = &c },
    { "--prometheus", "a file", .str = &prom },
    { NULL }
  };
  const struct opt_cmd cmd = {
    .name = "audit", .help = help, .opts = opts, .common = &o,
    .max_operands = 0,
  };
  struct qk_meta_options mo = { 0 };
  int status, worst_exit = 0;
  enum verdict worst = V_CLEAN;
  double t0 = now ();
  pthread_t *th = NULL;
  struct qk_json *j = NULL;

  if (!opt_parse (&cmd, argc, argv, &status))
    return status;
  if (jobs_s) {
    uint64_t v;
    if (!parse_size (jobs_s, &v) || v < 1 || v > 256)
      return usage_error ("audit", "--jobs: '%s' is not a number from 1 to "
                          "256", jobs_s);
    a.jobs = v;
  }
  if (mem_s && (!parse_size (mem_s, &a.mem_limit) || a.mem_limit == 0))
    return usage_error ("audit", "--memory-limit: '%s' is not a size", mem_s);
  if (deep)
    a.check_flags |= QK_CHECK_DEEP;
  if (session)
    flags |= QK_META_LIST_SESSION;
  mo.sysroot = sysroot;
  mo.libvirt_root = libvirt_root;
  a.sysroot = sysroot != NULL;
  a.root = qk_root_new (sysroot, sysroot ? QK_ROOT_IN : QK_ROOT_HOST);
  if (a.root == NULL) {
    errx_ ("--sysroot %s: %s", sysroot, qk_get_error ());
    return EXIT_ERR;
  }
  a.l = qk_meta_list_domains (&mo, NULL, flags);
  if (a.l == NULL) {
    errx_ ("%s", qk_get_error ());
    qk_root_free (a.root);
    return EXIT_ERR;
  }
  for (size_t i = 0; i < qk_meta_domains_warning_count (a.l); i++)
    warnx_ ("%s", printable (qk_meta_domains_warning (a.l, i)));
  if (qk_meta_domains_warning_count (a.l))
    worst = V_ERROR;          /* a definition that cannot be read */
  pthread_mutex_init (&a.mu, NULL);
  pthread_cond_init (&a.cv, NULL);

  a.n_doms = qk_meta_domains_count (a.l);
  a.doms = calloc (a.n_doms + 1, sizeof *a.doms);
  for (size_t i = 0; i < a.n_doms; i++)
    a.n_disks += qk_meta_domains_disk_count (a.l, i);
  a.disks = calloc (a.n_disks + 1, sizeof *a.disks);
  if (a.doms == NULL || a.disks == NULL) {
    errx_ ("out of memory");
    return EXIT_ERR;
  }
  for (size_t i = 0, n = 0; i < a.n_doms; i++) {
    a.doms[i].d = qk_meta_domains_get (a.l, i);
    a.doms[i].first_disk = n;
    a.doms[i].n_disks = qk_meta_domains_disk_count (a.l, i);
    for (size_t k = 0; k < a.doms[i].n_disks; k++, n++) {
      struct disk *dk = &a.disks[n];
      const char *why;
      dk->dom = i;
      dk->d = qk_meta_domains_disk (a.l, i, k);
      why = not_checked_reason (dk->d);
      if (why) {
        dk->v = V_NOT_CHECKED;
        dk->reason = strdup (why);
      }
    }
  }

  progress_start (&a.prog, &o, a.n_disks);
  th = calloc (a.jobs, sizeof *th);
  if (th == NULL) {
    errx_ ("out of memory");
    return EXIT_ERR;
  }
  {
    unsigned started = 0;
    for (unsigned t = 0; t < a.jobs; t++)
      if (pthread_create (&th[t], NULL, worker, &a) == 0)
        started++;
      else
        break;
    if (started == 0)
      worker (&a);
    for (unsigned t = 0; t < started; t++)
      pthread_join (th[t], NULL);
  }
  free (th);
  progress_end (&a.prog);

  /* verdicts */
  for (size_t i = 0; i < a.n_doms; i++) {
    struct dom *dm = &a.doms[i];
    dm->v = V_CLEAN;
    for (size_t k = 0; k < dm->n_disks; k++) {
      struct disk *dk = &a.disks[dm->first_disk + k];
      if (dk->v != V_NOT_CHECKED)
        for (size_t ci = 0; ci < dk->n_chain; ci++)
          dk->v = worse (dk->v, a.recs[dk->chain[ci]]->v);
      dm->v = worse (dm->v, dk->v);
    }
    check_metadata (&a, dm);
    dm->v = worse (dm->v, dm->meta_v);
    if (dm->v == V_NOT_CHECKED)
      dm->v = V_CLEAN;        /* nothing wrong was found */
    worst = worse (worst, dm->v);
  }
  if (worst == V_NOT_CHECKED)
    worst = V_CLEAN;
  worst_exit = vexit[worst];

  /* users of each image */
  for (size_t i = 0; i < a.n_doms; i++)
    for (size_t k = 0; k < a.doms[i].n_disks; k++) {
      struct disk *dk = &a.disks[a.doms[i].first_disk + k];
      for (size_t ci = 0; ci < dk->n_chain; ci++) {
        struct rec *r = a.recs[dk->chain[ci]];
        sbuf_printf (&r->users, "%s%s:%s", r->users.n ? "\n" : "",
                        a.doms[i].d->name, dk->d->target ? dk->d->target : "");
      }
    }

  /* output */
  if (c.out != A_HUMAN) {
    j = qk_json_new (stdout, c.out == A_JSON ? 4 : 0);
    if (c.out == A_JSON) {
      qk_json_object_begin (j, NULL);
      qk_json_array_begin (j, "records");
    }
  }
  else
    printf ("%-16s %-6s %-11s %-28s %s\n", "DOMAIN", "DISK", "VERDICT",
            "PROBLEMS", "IMAGE");
  for (size_t i = 0; i < a.n_doms; i++) {
    struct dom *dm = &a.doms[i];
    for (size_t k = 0; k < dm->n_disks; k++) {
      struct disk *dk = &a.disks[dm->first_disk + k];
      const char *tgt = dk->d->target ? dk->d->target : "";
      if (dk->n_chain == 0) {
        if (j) {
          json_nodisk (j, dk, dm->d->name);
          if (c.out == A_JSONL) {
            qk_json_free (j);
            putchar ('\n');
            j = qk_json_new (stdout, 0);
          }
        }
        else
          printf ("%-16s %-6s %-11s %-28s %s\n", printable (dm->d->name),
                  printable (tgt), vname[dk->v],
                  dk->reason ? printable (dk->reason) : "-",
                  dk->d->path ? printable (dk->d->path)
                  : dk->d->source ? printable (dk->d->source) : "-");
        continue;
      }
      for (size_t ch = 0; ch < dk->n_chain; ch++) {
        struct rec *r = a.recs[dk->chain[ch]];
        char pb[64];
        if (r->printed)
          continue;
        r->printed = true;
        if (j) {
          json_image (j, r, dm->d->name, tgt, ch);
          if (c.out == A_JSONL) {
            qk_json_free (j);
            putchar ('\n');
            j = qk_json_new (stdout, 0);
          }
          continue;
        }
        if (r->checked)
          snprintf (pb, sizeof pb, "%" PRIu64 " corrupt, %" PRIu64
                    " leaks, %" PRIu64 " warn", r->res.corruptions,
                    r->res.leaks, r->res.warnings);
        else
          snprintf (pb, sizeof pb, "-");
        printf ("%-16s %-6s %-11s %-28s %s%s\n", printable (dm->d->name),
                ch ? "" : printable (tgt), vname[r->v], pb,
                ch ? "  backing " : "", printable (r->path));
        if (r->reason)
          printf ("%-16s %-6s %-11s   %s\n", "", "", "",
                  printable (r->reason));
      }
      if (!j && dk->reason)
        printf ("%-16s %-6s %-11s   %s\n", "", "", "",
                printable (dk->reason));
    }
    if (j) {
      json_domain (j, &a, dm);
      if (c.out == A_JSONL) {
        qk_json_free (j);
        putchar ('\n');
        j = qk_json_new (stdout, 0);
      }
    }
    else {
      printf ("%-16s %-6s %-11s domain; metadata %s: %" PRIu64 " errors, %"
              PRIu64 " check failures, %" PRIu64 " warnings%s%s\n",
              printable (dm->d->name), "", vname[dm->v], vname[dm->meta_v],
              dm->meta.by_class[QK_CLASS_CORRUPTION],
              dm->meta.by_class[QK_CLASS_ERROR],
              dm->meta.by_class[QK_CLASS_WARNING],
              dm->meta_reason ? "; " : "",
              dm->meta_reason ? printable (dm->meta_reason) : "");
      for (size_t p = 0; p < dm->meta.n; p++)
        if (dm->meta.p[p].cls >= QK_CLASS_WARNING)
          printf ("%-16s %-6s %-11s   %s 0x%06x %s: %s\n", "", "", "",
                  problem_label (dm->meta.p[p].cls), dm->meta.p[p].code,
                  dm->meta.p[p].name, printable (dm->meta.p[p].msg));
    }
  }
  if (c.out == A_JSON) {
    qk_json_array_end (j);
    qk_json_string (j, "verdict", vname[worst]);
    qk_json_uint (j, "exit", worst_exit);
    qk_json_object_end (j);
    qk_json_free (j);
    putchar ('\n');
  }
  else if (j)
    qk_json_free (j);
  else {
    size_t nv[6] = { 0 };
    for (size_t i = 0; i < a.n_doms; i++)
      nv[a.doms[i].v]++;
    printf ("\n%zu domains, %zu disks, %zu images: %zu clean, %zu with "
            "leaks, %zu in use, %zu with errors, %zu corrupt.\n", a.n_doms,
            a.n_disks, a.n_recs, nv[V_CLEAN], nv[V_LEAKS], nv[V_IN_USE],
            nv[V_ERROR], nv[V_CORRUPT]);
  }
  fflush (stdout);
  if (prom && write_prometheus (&a, prom, t0, now () - t0, worst_exit) < 0
      && worst_exit == 0)
    worst_exit = EXIT_ERR;

  for (size_t i = 0; i < a.n_recs; i++) {
    struct rec *r = a.recs[i];
    free (r->logical);
    free (r->path);
    free (r->reason);
    free (r->backing);
    free (r->backing_format);
    free (r->users.p);
    probs_free (&r->pr);
    free (r);
  }
  free (a.recs);
  for (size_t i = 0; i < a.n_disks; i++)
    free (a.disks[i].reason);
  for (size_t i = 0; i < a.n_doms; i++) {
    free (a.doms[i].meta_reason);
    probs_free (&a.doms[i].meta);
  }
  free (a.disks);
  free (a.doms);
  qk_meta_domains_free (a.l);
  qk_root_free (a.root);
  pthread_mutex_destroy (&a.mu);
  pthread_cond_destroy (&a.cv);
  return worst_exit;
}
