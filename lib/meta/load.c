/* lib/meta: loading a domain's metadata into the model (issue #12 split
 * it out of store.c): the domain definition, then each kind from its
 * per-file directory (parsed in batches on every core) or its streamed
 * bulk file, through xml.c, at the places paths.c finds. Calls only the
 * model, xml.c and paths.c (layer order in meta.h). */
#include <config.h>

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libxml/parser.h>
#include <libxml/tree.h>

#include "meta/load.h"

#define DEFAULT_MAX_FILE (16ULL << 20)
/* The scanner's bound on nesting, above libxml2's own limit (257 levels,
 * without XML_PARSE_HUGE as libvirt parses), so that libxml2 decides what
 * is too deep, as it does for libvirt; the bound only keeps absurd depth
 * from reaching libxml2 at all. */
#define DEFAULT_MAX_DEPTH 1024
#define LIBVIRT_MAX_FILE (1ULL << 20)   /* virFileReadAll limit at load */
#define CHUNK (256U << 10)

static int
read_limited (const struct qk_meta *m, const char *path, uint64_t max,
              char **buf, size_t *len, uint64_t *size, mode_t *mode)
{
  int fd = meta_open (m, path, O_RDONLY | O_NONBLOCK);

  *mode = 0;
  if (fd < 0)
    return -1;
  return meta_read_limited_fd (fd, max, buf, len, size, mode);
}


static inline uint64_t
hash_mix (uint64_t h, uint64_t w)
{
  h = (h ^ w) * 0x9e3779b97f4a7c15ULL;
  return h ^ (h >> 32);
}

/* A hash of the bytes p1 + p2 (an element without its <active>), eight
 * bytes at a time: the same bytes give the same hash however they are
 * split between the two parts. Equality of moments across layouts, not
 * security. */
uint64_t
meta_hash2 (const char *p1, size_t n1, const char *p2, size_t n2)
{
  const char *seg[2] = { p1, p2 };
  size_t len[2] = { n1, n2 }, bn = 0;
  unsigned char buf[8];
  uint64_t h = 1469598103934665603ULL, w;

  for (int s = 0; s < 2; s++) {
    const char *p = seg[s];
    size_t n = len[s];
    while (bn && n) {
      buf[bn++] = *p++;
      n--;
      if (bn == 8) {
        memcpy (&w, buf, 8);
        h = hash_mix (h, w);
        bn = 0;
      }
    }
    for (; n >= 8; p += 8, n -= 8) {
      memcpy (&w, p, 8);
      h = hash_mix (h, w);
    }
    while (n--)
      buf[bn++] = *p++;
  }
  memset (buf + bn, 0, 8 - bn);
  memcpy (&w, buf, 8);
  return hash_mix (hash_mix (h, w), n1 + n2);
}

struct doc_tags {
  uint64_t root_start, root_end;
  uint64_t act_start, act_end;
  bool act;
};

static int
doc_on_tag (void *opaque, bool end, bool empty, unsigned depth,
            const char *name, uint64_t start, uint64_t stop)
{
  struct doc_tags *t = opaque;

  if (depth == 1) {
    if (!end)
      t->root_start = start;
    if (end || empty)
      t->root_end = stop;
  }
  else if (depth == 2 && !t->act && strcmp (name, "active") == 0) {
    if (!end)
      t->act_start = start;
    if (end || empty) {
      t->act_end = stop;
      t->act = true;
    }
  }
  return 0;
}

static void
widen_active (const char *buf, size_t len, size_t *a, size_t *b)
{
  size_t x = *a, y = *b;

  while (x > 0 && (buf[x - 1] == ' ' || buf[x - 1] == '\t'))
    x--;
  if ((x == 0 || buf[x - 1] == '\n') && y < len && buf[y] == '\n')
    y++;
  else
    x = *a;
  *a = x;
  *b = y;
}

void
meta_active_range (const char *elem, size_t len, size_t *a, size_t *b)
{
  struct doc_tags t = { 0 };
  struct xml_scan sc;

  xml_scan_init (&sc, 1u << 30);
  sc.on_tag = doc_on_tag;
  sc.opaque = &t;
  *a = *b = 0;
  if (xml_scan_feed (&sc, elem, len) < 0 || !t.act)
    return;
  *a = t.act_start;
  *b = t.act_end;
  widen_active (elem, len, a, b);
}

/* ---- parsing, in batches on every core ----
 *
 * Parsing (the scanner, then libxml2) is most of the time of a load, and
 * each document is parsed alone: a batch of documents is parsed by a few
 * threads, then completed (findings, hash, extraction) by the loading
 * thread in file order, so that the results are the same as one by one. */

#define BATCH_DOCS 256
#define BATCH_BYTES (8U << 20)
#define PARALLEL_MIN_BYTES (256U << 10)   /* small loads (and fuzzing): serial */

struct pjob {
  size_t idx;               /* the moment, s->m[idx] */
  char *buf;                /* the document (owned) */
  size_t len;
  char *what;               /* its name in messages (owned) */
  struct doc_tags tags;
  bool pre;                 /* tags come from the bulk reader's scan */
  /* per-file: for the checks after a successful parse */
  char *entry;              /* the directory entry (owned), or NULL */
  uint64_t size;
  /* results */
  int scan_err;             /* -1: none, else enum scan_err */
  char errmsg[256];
  xmlDocPtr doc;
};

struct batch {
  struct pjob *jobs;
  size_t n, cap;
  size_t bytes;
  size_t next;              /* the next job to parse (atomic) */
  unsigned max_depth;
};

/* Two batches: one parsed by background threads while the loading thread
 * reads and scans the next one. */
struct pool {
  struct batch b[2];
  int cur;                  /* the batch being filled */
  bool inflight;            /* b[!cur] is being parsed */
  pthread_t tid[8];
  unsigned started;
  unsigned threads;
};

static unsigned
parse_threads (void)
{
  const char *e = getenv ("QCOWKIT_THREADS");
  long n = e ? strtol (e, NULL, 10) : sysconf (_SC_NPROCESSORS_ONLN);

  if (n < 1)
    n = 1;
  return n > 8 ? 8 : (unsigned) n;
}

static void
parse_job (struct pjob *j, unsigned max_depth)
{
  j->scan_err = -1;
  if (!j->pre) {
    struct xml_scan sc;
    memset (&j->tags, 0, sizeof j->tags);
    xml_scan_init (&sc, max_depth);
    sc.on_tag = doc_on_tag;
    sc.opaque = &j->tags;
    if (xml_scan_feed (&sc, j->buf, j->len) < 0
        || xml_scan_finish (&sc) < 0) {
      j->scan_err = sc.err;
      snprintf (j->errmsg, sizeof j->errmsg, "%s", sc.errmsg);
      return;
    }
  }
  j->doc = meta_xml_parse (j->buf, j->len, j->what, j->errmsg,
                           sizeof j->errmsg);
}

static void *
parse_worker (void *opaque)
{
  struct batch *bt = opaque;
  size_t i;

  while ((i = __atomic_fetch_add (&bt->next, 1, __ATOMIC_RELAXED)) < bt->n)
    parse_job (&bt->jobs[i], bt->max_depth);
  return NULL;
}

static void
free_job (struct pjob *j)
{
  free (j->buf);
  free (j->what);
  free (j->entry);
  if (j->doc)
    meta_xml_free_doc (j->doc);
  memset (j, 0, sizeof *j);
}

/* Complete one parsed job into its moment, as the loading thread. */
static int
complete_job (struct qk_meta *m, struct meta_set *s, struct pjob *j)
{
  struct meta_moment_priv *mp = &s->m[j->idx];
  const struct doc_tags *t = &j->tags;
  int r;

  if (j->scan_err >= 0) {
    meta_add_finding (m, j->scan_err == SCAN_HOSTILE ? MP_HOSTILE : MP_PARSE,
                      s->kind, mp->pub.offset, "%s: %s", j->what, j->errmsg);
    mp->parse_failed = true;
    return 0;
  }
  if (j->doc == NULL) {
    meta_add_finding (m, MP_PARSE, s->kind, mp->pub.offset, "%s: %s",
                      j->what, j->errmsg);
    mp->parse_failed = true;
    return 0;
  }
  mp->pub.offset += t->root_start;
  mp->pub.length = t->root_end - t->root_start;
  {
    const char *e = j->buf + t->root_start;
    size_t n = t->root_end - t->root_start, a = 0, b = 0;
    if (t->act && s->kind == QK_META_SNAPSHOT) {
      a = t->act_start - t->root_start;
      b = t->act_end - t->root_start;
      widen_active (e, n, &a, &b);
    }
    mp->hash = meta_hash2 (e, a, e + b, n - b);
  }
  r = meta_extract_moment (m, s, j->doc, mp);
  if (r < 0 || j->entry == NULL)
    return r;
  /* per-file: what libvirt checks of a file it could parse */
  mp = &s->m[j->idx];
  if (j->size > LIBVIRT_MAX_FILE) {
    meta_add_finding (m, MP_LIBVIRT_SIZE, s->kind, QK_NONE, "%s: %" PRIu64
                      " bytes; libvirt reads at most %llu", j->what, j->size,
                      LIBVIRT_MAX_FILE);
    mp->pub.loaded = false;
  }
  if (mp->pub.name && !mp->unsafe_name) {
    char *want = meta_fmt ("%s.xml", mp->pub.name);
    if (want == NULL)
      return -1;
    if (strcmp (want, j->entry) != 0)
      meta_add_finding (m, MP_FILE_NAME, s->kind, QK_NONE, "%s holds %s "
                        "'%s': the file should be named %s", j->what,
                        meta_kind_name (s->kind), mp->pub.name, want);
    free (want);
  }
  return 0;
}

/* Finish the batch in flight: help parse it, wait for its threads, then
 * complete its jobs in order. */
static int
pool_land (struct qk_meta *m, struct meta_set *s, struct pool *p)
{
  struct batch *bt = &p->b[!p->cur];
  int ret = 0;

  if (!p->inflight)
    return 0;
  parse_worker (bt);
  for (unsigned i = 0; i < p->started; i++)
    pthread_join (p->tid[i], NULL);
  p->started = 0;
  p->inflight = false;
  for (size_t i = 0; i < bt->n; i++) {
    if (ret == 0 && complete_job (m, s, &bt->jobs[i]) < 0)
      ret = -1;
    free_job (&bt->jobs[i]);
  }
  bt->n = 0;
  bt->bytes = 0;
  return ret;
}

/* The batch being filled is full: land the one in flight, then send this
 * one to background threads (all of it is parsed there but for the part
 * the loading thread helps with when it lands it). Small loads, and one
 * thread, parse in the loading thread. */
static int
pool_cycle (struct qk_meta *m, struct meta_set *s, struct pool *p)
{
  struct batch *bt = &p->b[p->cur];
  unsigned nt = bt->bytes >= PARALLEL_MIN_BYTES && bt->n > 1 ? p->threads : 1;

  if (pool_land (m, s, p) < 0)
    return -1;
  bt->next = 0;
  bt->max_depth = m->lim.max_depth;
  if (nt > 1) {
    xmlInitParser ();       /* once, before threads parse */
    for (unsigned i = 0; i + 1 < nt && i < 8; i++)
      if (pthread_create (&p->tid[p->started], NULL, parse_worker, bt) == 0)
        p->started++;
  }
  p->cur = !p->cur;
  p->inflight = true;
  if (p->started == 0)
    return pool_land (m, s, p);   /* no thread: parse it here, now */
  return 0;
}

/* Parse and complete everything queued. */
static int
pool_flush (struct qk_meta *m, struct meta_set *s, struct pool *p)
{
  if (pool_land (m, s, p) < 0)
    return -1;
  if (p->b[p->cur].n == 0)
    return 0;
  if (pool_cycle (m, s, p) < 0)
    return -1;
  return pool_land (m, s, p);
}

static void
pool_free (struct pool *p)
{
  for (unsigned i = 0; i < p->started; i++)
    pthread_join (p->tid[i], NULL);
  for (int k = 0; k < 2; k++) {
    for (size_t i = 0; i < p->b[k].n; i++)
      free_job (&p->b[k].jobs[i]);
    free (p->b[k].jobs);
  }
  memset (p, 0, sizeof *p);
}

/* A finding about what is not queued: after those queued before it. */
static int
pool_finding (struct qk_meta *m, struct meta_set *s, struct pool *p, int pr,
              const char *fmt, ...)
  __attribute__ ((format (printf, 5, 6)));

static int
pool_finding (struct qk_meta *m, struct meta_set *s, struct pool *p, int pr,
              const char *fmt, ...)
{
  va_list ap;
  char *msg;
  int r;

  if (pool_flush (m, s, p) < 0)
    return -1;
  va_start (ap, fmt);
  r = vasprintf (&msg, fmt, ap);
  va_end (ap);
  if (r < 0)
    return -1;
  r = meta_add_finding (m, pr, s->kind, QK_NONE, "%s", msg);
  free (msg);
  return r;
}

/* Queue one document (buf, what and entry are taken over); flushes when
 * the batch is full. */
static int
pool_add (struct qk_meta *m, struct meta_set *s, struct pool *p,
          size_t idx, char *buf, size_t len, char *what,
          const struct doc_tags *pre, char *entry, uint64_t size)
{
  struct batch *bt = &p->b[p->cur];
  struct pjob *nj = qk_grow (bt->jobs, &bt->cap, bt->n + 1, sizeof *nj);

  if (nj == NULL) {
    free (buf);
    free (what);
    free (entry);
    return -1;
  }
  bt->jobs = nj;
  nj = &bt->jobs[bt->n++];
  memset (nj, 0, sizeof *nj);
  nj->idx = idx;
  nj->buf = buf;
  nj->len = len;
  nj->what = what;
  nj->entry = entry;
  nj->size = size;
  if (pre) {
    nj->tags = *pre;
    nj->pre = true;
  }
  bt->bytes += len;
  if (bt->n >= BATCH_DOCS || bt->bytes >= BATCH_BYTES)
    return pool_cycle (m, s, p);
  return 0;
}

struct dent {
  char *name;
  size_t order;             /* readdir order */
};

static int
cmp_dent (const void *a, const void *b)
{
  return strcmp (((const struct dent *) a)->name,
                 ((const struct dent *) b)->name);
}

/* The per-file layout: every entry of the directory, in name order (for
 * stable output), remembering readdir's order, which is the order libvirt
 * reads them in (it decides which of several "current" ones wins). */
static int
load_per_file (struct qk_meta *m, struct meta_set *s)
{
  struct dent *ents = NULL;
  size_t nents = 0, capents = 0;
  struct pool pool = { .threads = parse_threads () };
  int dfd = meta_open (m, s->dir, O_RDONLY | O_DIRECTORY);
  DIR *d = dfd >= 0 ? fdopendir (dfd) : NULL;
  struct dirent *e;
  int ret = -1;

  if (d == NULL) {
    if (dfd >= 0) {
      set_error (errno, "opendir %s", s->dir);
      close (dfd);
    }
    return -1;
  }
  while ((e = readdir (d)) != NULL) {
    struct dent *ne;
    if (strcmp (e->d_name, ".") == 0 || strcmp (e->d_name, "..") == 0)
      continue;
    ne = qk_grow (ents, &capents, nents + 1, sizeof *ents);
    if (ne == NULL)
      goto out;
    ents = ne;
    ents[nents].name = strdup (e->d_name);
    if (ents[nents].name == NULL)
      goto out;
    ents[nents].order = nents;
    nents++;
  }
  if (nents)
    qsort (ents, nents, sizeof *ents, cmp_dent);
  for (size_t i = 0; i < nents; i++) {
    struct meta_moment_priv *mp;
    char *path = meta_fmt ("%s/%s", s->dir, ents[i].name);
    char *buf = NULL;
    size_t len;
    uint64_t size = 0;
    mode_t mode = 0;
    int r, fd, err;

    if (path == NULL)
      goto out;
    /* under a sysroot, a symlink is followed inside it only */
    fd = m->sysroot ? meta_open (m, path, O_RDONLY | O_NONBLOCK)
      : openat (dirfd (d), ents[i].name,
                O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    r = fd < 0 ? -1 : meta_read_limited_fd (fd, m->lim.max_size, &buf,
                                            &len, &size, &mode);
    err = errno;
    if (r < 0 && (fd < 0 || err == EINVAL)) {
      bool blocks = fd >= 0 && !S_ISDIR (mode);
      r = blocks
        ? pool_finding (m, s, &pool, MP_BLOCKING_FILE, "%s is %s: libvirt "
                        "reads every entry when its QEMU driver starts and "
                        "blocks on it", path, meta_file_type (mode))
        : pool_finding (m, s, &pool, MP_NOT_A_FILE, "%s is not a regular "
                        "file (%s)", path,
                        fd < 0 ? strerror (err) : meta_file_type (mode));
      free (path);
      if (r < 0)
        goto out;
      continue;
    }
    mp = meta_new_moment (s);
    if (mp == NULL || qk_strvec_add (&mp->strs, path) < 0) {
      free (path);
      free (buf);
      goto out;
    }
    mp->read_order = ents[i].order;
    mp->pub.file = path;
    mp->file_size = size;
    if (r != 0) {
      size_t idx = mp - s->m;
      if ((r < 0 ? pool_finding (m, s, &pool, MP_PARSE, "%s: %s", path,
                                 strerror (err))
                 : pool_finding (m, s, &pool, MP_TOO_LARGE, "%s: %" PRIu64
                                 " bytes is over the %" PRIu64 "-byte limit",
                                 path, size, m->lim.max_size)) < 0)
        goto out;
      s->m[idx].parse_failed = true;
      continue;
    }
    /* libvirt reads the file into a C string: it ends at a NUL byte */
    len = strlen (buf);
    {
      char *what = strdup (path), *entry = strdup (ents[i].name);
      if (what == NULL || entry == NULL) {
        free (what);
        free (entry);
        free (buf);
        goto out;
      }
      if (pool_add (m, s, &pool, mp - s->m, buf, len, what, NULL, entry,
                    size) < 0)
        goto out;
    }
  }
  if (pool_flush (m, s, &pool) < 0)
    goto out;
  ret = 0;
out:
  pool_free (&pool);
  if (ret < 0 && errno == ENOMEM)
    set_error (ENOMEM, "reading %s", s->dir);
  closedir (d);
  for (size_t i = 0; i < nents; i++)
    free (ents[i].name);
  free (ents);
  return ret;
}

/* ---- the streaming bulk reader ---- */

struct bulk {
  struct qk_meta *m;
  struct meta_set *s;
  char *acc;              /* bytes [acc_off, acc_off + acc_len) */
  size_t acc_len, acc_cap;
  uint64_t acc_off;
  bool in_elem, elem_skip, elem_bad;
  uint64_t elem_start;
  bool root_ok;
  struct doc_tags tags;   /* of the element being read, relative to it */
  bool stop;              /* structure error: stop */
  int fail;               /* allocation failure */
  struct pool pool;       /* elements being parsed */
};

static void
bulk_invalid (struct bulk *b, uint64_t at, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));

static void
bulk_invalid (struct bulk *b, uint64_t at, const char *fmt, ...)
{
  char msg[512];
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  if (pool_flush (b->m, b->s, &b->pool) < 0)
    b->fail = 1;
  meta_add_finding (b->m, MP_BULK_INVALID, b->s->kind, at, "%s: %s",
                    b->s->bulk, msg);
}

static int
bulk_root (struct bulk *b, uint64_t start, uint64_t stop, bool empty)
{
  /* Parse the root start tag alone, closed, to read current=. */
  size_t off, len = stop - start;
  char *t, err[256];
  xmlDocPtr doc;

  if (start < b->acc_off) {
    bulk_invalid (b, start, "the root start tag is %" PRIu64 " bytes, over "
                  "the %" PRIu64 "-byte limit", len, b->m->lim.max_size);
    b->stop = true;
    return -1;
  }
  off = start - b->acc_off;
  t = malloc (len + 2);
  if (t == NULL) {
    b->fail = 1;
    return -1;
  }
  memcpy (t, b->acc + off, len);
  if (!empty) {
    t[len - 1] = '/';
    t[len] = '>';
    len++;
  }
  doc = meta_xml_parse (t, len, b->s->bulk, err, sizeof err);
  free (t);
  if (doc == NULL) {
    bulk_invalid (b, start, "the root element: %s", err);
    b->stop = true;
    return -1;
  }
  xmlChar *cur = xmlGetProp (xmlDocGetRootElement (doc), BAD_CAST "current");
  if (cur) {
    b->s->bulk_current = strdup ((const char *) cur);
    b->s->bulk_current_seen = true;
    xmlFree (cur);
  }
  meta_xml_free_doc (doc);
  b->root_ok = true;
  return 0;
}

static int
bulk_element (struct bulk *b, uint64_t start, uint64_t stop)
{
  struct meta_moment_priv *mp = meta_new_moment (b->s);
  char what[64];

  if (mp == NULL) {
    b->fail = 1;
    return -1;
  }
  mp->pub.file = b->s->bulk;
  mp->pub.offset = start;
  mp->pub.length = stop - start;
  if (b->elem_skip || stop - start > b->m->lim.max_size) {
    if (pool_flush (b->m, b->s, &b->pool) < 0) {
      b->fail = 1;
      return -1;
    }
    meta_add_finding (b->m, MP_TOO_LARGE, b->s->kind, start, "%s: the "
                      "element at offset %" PRIu64 " is %" PRIu64 " bytes, "
                      "over the %" PRIu64 "-byte limit", b->s->bulk, start,
                      stop - start, b->m->lim.max_size);
    mp->parse_failed = true;
    return 0;
  }
  snprintf (what, sizeof what, "element at offset %" PRIu64, start);
  {
    char *full = meta_fmt ("%s (%s)", b->s->bulk, what);
    int r;
    if (full == NULL) {
      b->fail = 1;
      return -1;
    }
    char *copy = malloc (stop - start + 1);
    b->tags.root_start = 0;
    b->tags.root_end = stop - start;
    if (copy == NULL) {
      free (full);
      b->fail = 1;
      return -1;
    }
    memcpy (copy, b->acc + (start - b->acc_off), stop - start);
    r = pool_add (b->m, b->s, &b->pool, mp - b->s->m, copy, stop - start,
                  full, &b->tags, NULL, 0);
    if (r < 0) {
      b->fail = 1;
      return -1;
    }
  }
  return 0;
}

static int
bulk_on_tag (void *opaque, bool end, bool empty, unsigned depth,
             const char *name, uint64_t start, uint64_t stop)
{
  struct bulk *b = opaque;

  if (depth == 1) {
    if (end)
      return 0;
    if (strcmp (name, meta_bulk_root (b->s->kind)) != 0) {
      bulk_invalid (b, start, "the root element is <%s>, not <%s>", name,
                    meta_bulk_root (b->s->kind));
      b->stop = true;
      return -1;
    }
    return bulk_root (b, start, stop, empty);
  }
  if (depth == 3 && !b->tags.act && strcmp (name, "active") == 0) {
    if (!end)
      b->tags.act_start = start - b->elem_start;
    if (end || empty) {
      b->tags.act_end = stop - b->elem_start;
      b->tags.act = true;
    }
    return 0;
  }
  if (depth != 2)
    return 0;
  if (!end) {
    memset (&b->tags, 0, sizeof b->tags);
    if (strcmp (name, meta_elem_name (b->s->kind)) != 0) {
      bulk_invalid (b, start, "<%s> at offset %" PRIu64 " in <%s>", name,
                    start, meta_bulk_root (b->s->kind));
      b->elem_bad = true;
    }
    b->in_elem = true;
    /* a start tag over the limit was not kept: so is its element */
    b->elem_skip = start < b->acc_off;
    b->elem_start = start;
    if (!empty)
      return 0;
  }
  b->in_elem = false;
  if (b->elem_bad) {
    b->elem_bad = false;
    return 0;
  }
  return bulk_element (b, b->elem_start, stop);
}

static int
bulk_on_text (void *opaque, unsigned depth, uint64_t at)
{
  struct bulk *b = opaque;

  if (depth == 1) {
    bulk_invalid (b, at, "text at offset %" PRIu64 " in <%s>", at,
                  meta_bulk_root (b->s->kind));
    b->stop = true;
    return -1;
  }
  return 0;
}

/* Stream the bulk file: memory stays within the per-element limit plus a
 * read chunk, whatever the file holds (huge comments, tags, attributes,
 * holes). Only a <domainsnapshot> element being read, or a tag that may
 * start one (or the root's), is kept; NUL bytes are not XML. */
static int
load_bulk (struct qk_meta *m, struct meta_set *s)
{
  struct bulk b = { .m = m, .s = s, .pool.threads = parse_threads () };
  struct xml_scan sc;
  int fd = meta_open (m, s->bulk, O_RDONLY | O_NONBLOCK);
  struct stat st;
  int ret = -1;

  if (fd < 0) {
    meta_add_finding (m, MP_BULK_INVALID, s->kind, QK_NONE, "%s: %s",
                      s->bulk, strerror (errno));
    return 0;
  }
  if (fstat (fd, &st) < 0 || !S_ISREG (st.st_mode)) {
    meta_add_finding (m, MP_BULK_INVALID, s->kind, QK_NONE, "%s is %s; not "
                      "read", s->bulk, meta_file_type (st.st_mode));
    close (fd);
    return 0;
  }
  xml_scan_init (&sc, m->lim.max_depth);
  sc.on_tag = bulk_on_tag;
  sc.on_text = bulk_on_text;
  sc.opaque = &b;
  for (;;) {
    uint64_t keep;
    ssize_t n;
    const char *nul;

    /* Drop what is no longer needed: everything before the element being
     * read, or before the tag being scanned. */
    if (b.in_elem)
      keep = b.elem_skip ? sc.pos : b.elem_start;
    else if (!xml_scan_idle (&sc)
             && sc.pos - sc.tag_start <= m->lim.max_size)
      keep = sc.tag_start;
    else
      keep = sc.pos;      /* text, or a comment or tag over the limit */
    if (keep > b.acc_off) {
      size_t drop = keep - b.acc_off;
      if (drop > b.acc_len)
        drop = b.acc_len;
      memmove (b.acc, b.acc + drop, b.acc_len - drop);
      b.acc_len -= drop;
      b.acc_off += drop;
    }
    if (b.in_elem && !b.elem_skip && b.acc_len > m->lim.max_size) {
      b.elem_skip = true;       /* keep scanning, stop keeping */
      b.acc_off += b.acc_len;
      b.acc_len = 0;
    }
    if (b.acc_len + CHUNK > b.acc_cap) {
      size_t nc = b.acc_len + CHUNK;
      char *na = realloc (b.acc, nc);
      if (na == NULL)
        goto out;
      b.acc = na;
      b.acc_cap = nc;
    }
    n = read (fd, b.acc + b.acc_len, CHUNK);
    if (n < 0) {
      int e = errno;
      if (e == EINTR)
        continue;
      if (pool_flush (m, s, &b.pool) < 0)
        goto out;
      meta_add_finding (m, MP_BULK_INVALID, s->kind, sc.pos, "%s: %s",
                        s->bulk, strerror (e));
      break;
    }
    if (n == 0) {
      if (xml_scan_finish (&sc) < 0)
        bulk_invalid (&b, sc.pos, "%s", sc.errmsg);
      break;
    }
    /* a NUL byte is not XML: what comes before it is read (however the
     * file was cut into reads), then the file ends there */
    nul = memchr (b.acc + b.acc_len, '\0', n);
    if (nul)
      n = nul - (b.acc + b.acc_len);
    b.acc_len += n;
    if (n > 0 && xml_scan_feed (&sc, b.acc + b.acc_len - n, n) < 0) {
      if (b.fail || pool_flush (m, s, &b.pool) < 0)
        goto out;
      if (!b.stop)
        meta_add_finding (m, sc.err == SCAN_HOSTILE ? MP_HOSTILE
                          : MP_BULK_INVALID, s->kind, sc.pos, "%s: %s",
                          s->bulk, sc.errmsg);
      break;
    }
    if (nul) {
      bulk_invalid (&b, sc.pos, "a NUL byte at offset %" PRIu64 ": not XML",
                    sc.pos);
      break;
    }
  }
  if (b.fail || pool_flush (m, s, &b.pool) < 0)
    goto out;
  ret = 0;
out:
  pool_free (&b.pool);
  free (b.acc);
  close (fd);
  if (ret < 0)
    set_error (ENOMEM, "reading %s", s->bulk);
  return ret;
}

/* ---- loading a domain ---- */

static int
load_domain (struct qk_meta *m)
{
  char *buf = NULL, err[256];
  size_t len;
  uint64_t size;
  mode_t mode;
  struct xml_scan sc;
  xmlDocPtr doc;
  int r;

  r = read_limited (m, m->config_file, m->lim.max_size, &buf, &len, &size,
                    &mode);
  if (r != 0) {
    meta_add_finding (m, MP_NO_DOMAIN, -1, QK_NONE, "%s: %s", m->config_file,
                      r > 0 ? "too large"
                      : errno == EINVAL && mode ? meta_file_type (mode)
                      : strerror (errno));
    return 0;
  }
  xml_scan_init (&sc, m->lim.max_depth);
  if (xml_scan_feed (&sc, buf, len) < 0 || xml_scan_finish (&sc) < 0) {
    meta_add_finding (m, MP_NO_DOMAIN, -1, QK_NONE, "%s: %s", m->config_file,
                      sc.errmsg);
    free (buf);
    return 0;
  }
  doc = meta_xml_parse (buf, len, m->config_file, err, sizeof err);
  free (buf);
  if (doc == NULL) {
    meta_add_finding (m, MP_NO_DOMAIN, -1, QK_NONE, "%s: %s", m->config_file,
                      err);
    return 0;
  }
  r = meta_extract_domain (m, doc);
  meta_xml_free_doc (doc);
  if (r == 0 && !m->domain_ok)
    meta_add_finding (m, MP_NO_DOMAIN, -1, QK_NONE, "%s: not a <domain>",
                      m->config_file);
  return r;
}

static int
load_set (struct qk_meta *m, int kind)
{
  if (meta_locate_set (m, kind) < 0)
    return -1;
  return meta_load_set_at (m, &m->set[kind]);
}

int
meta_load_set_at (struct qk_meta *m, struct meta_set *s)
{
  s->current = s->claimed = QK_META_NONE;
  if (s->layout == QK_META_LAYOUT_PER_FILE) {
    if (load_per_file (m, s) < 0)
      return -1;
  }
  else if (s->layout == QK_META_LAYOUT_BULK) {
    if (load_bulk (m, s) < 0)
      return -1;
  }
  if (meta_build_hash (m, s) < 0)
    return -1;
  meta_link (s);
  if (s->multi_current && s->layout == QK_META_LAYOUT_PER_FILE) {
    /* libvirt keeps the last claimant readdir gives it, not the last by
     * name: predict its pick from the directory order */
    size_t cur = QK_META_NONE;
    for (size_t i = 0; i < s->n; i++)
      if (s->m[i].pub.loaded && s->m[i].pub.active == 1
          && (cur == QK_META_NONE
              || s->m[i].read_order > s->m[cur].read_order))
        cur = i;
    s->claimed = cur;
    s->current = s->relations_bad ? QK_META_NONE : cur;
  }
  return 0;
}

int
meta_load (struct qk_meta *m)
{
  if (load_domain (m) < 0)
    return -1;
  for (int k = 0; k < 2; k++)
    if (load_set (m, k) < 0)
      return -1;
  return 0;
}

int
meta_reload (struct qk_meta *m)
{
  meta_unload (m);
  return meta_load (m);
}

QK_EXPORT struct qk_meta *
qk_meta_open (const char *domain, const struct qk_meta_options *opts)
{
  struct qk_meta_options o = { 0 };
  struct qk_meta *m;

  if (opts)
    o = *opts;
  if (!meta_domain_name_ok (domain)) {
    set_error (EINVAL, "domain name '%s' cannot be a file name",
               domain ? domain : "(null)");
    return NULL;
  }
  m = calloc (1, sizeof *m);
  if (m == NULL) {
    set_error (ENOMEM, "calloc");
    return NULL;
  }
  m->root.fd = -1;
  m->domain = strdup (domain);
  m->lim.max_size = o.max_file_size ? o.max_file_size : DEFAULT_MAX_FILE;
  m->lim.max_depth = o.max_depth ? o.max_depth : DEFAULT_MAX_DEPTH;
  if (meta_locate (m, &o) < 0)
    goto fail;
  if (meta_load (m) < 0)
    goto fail;
  return m;
fail:
  qk_meta_close (m);
  return NULL;
}
