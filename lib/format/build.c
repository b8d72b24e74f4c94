/* An in-memory qcow2 image builder over the writers of format/write.c.
 *
 * The model is guest-level: each view (the active state, then one per
 * internal snapshot) maps guest clusters to objects (a data cluster or a
 * compressed cluster), with the subcluster bits of extended L2. Writes
 * copy-on-write objects that a snapshot shares, as QEMU does. Nothing has
 * a host offset until qk_builder_finish lays the file out (header,
 * refcount table and blocks, active L1, then L2 tables each followed by
 * the data clusters they map first, compressed data packed byte after
 * byte, snapshot L1 tables, the snapshot table, bitmaps), walks the
 * result the way qemu-img check counts references, and writes refcounts
 * and COPIED flags from that count. */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format/format.h"

enum gtype {
  GT_UNALLOC = 0,
  GT_ZERO_PLAIN,    /* standard L2 only */
  GT_ZERO_ALLOC,    /* standard L2 only */
  GT_DATA,
  GT_COMPRESSED,
};

struct gent {
  uint32_t obj;      /* 1-based index into b->objs; 0: none */
  uint8_t type;      /* enum gtype */
  uint32_t alloc;    /* extended L2: allocated subclusters */
  uint32_t zero;     /* extended L2: subclusters that read as zeros */
};

struct obj {
  bool compressed;
  uint8_t *data;     /* the cluster as the guest reads it; NULL: zeros */
  uint8_t *cdata;    /* compressed bytes */
  size_t clen;
  uint32_t refs;     /* (view, guest cluster) references */
  uint64_t host;     /* layout: host offset (byte offset if compressed) */
  bool placed;
};

struct view {
  struct gent *map;
  uint64_t nclusters;
  uint64_t size;           /* guest size (a snapshot's disk size) */
  uint32_t l1_size;
  /* snapshots */
  char *id, *name;
  uint32_t date_sec, date_nsec;
  uint64_t vm_clock_nsec, icount, vm_state_size;
  uint32_t extra_data_size;
  uint8_t *extra;          /* bytes past 24 */
  /* layout */
  uint64_t l1_off;
  uint32_t *l2;            /* per L1 index: 1-based index into b->l2s */
};

struct l2tab {
  uint32_t view;
  uint64_t l1_index;
  uint64_t off;
};

struct bitmap {
  char *name;
  unsigned gran_bits;
  uint32_t flags;
  uint64_t *ranges;        /* (offset, length) pairs */
  size_t n_ranges, cap_ranges;
  /* layout */
  uint8_t *bits;
  uint32_t table_size;
  uint64_t table_off;
  uint64_t *data_off;      /* per table entry: 0, 1 (all ones) or offset */
};

struct ext {
  uint32_t magic, len;
  uint8_t *data;
};

struct qk_builder {
  struct qk_build_config cfg;
  uint8_t *unknown_header;
  uint64_t cs;             /* cluster size */
  uint32_t l2_entries;
  bool extl2;
  struct view *views;      /* [0] is the active state */
  size_t n_views, cap_views;
  struct obj *objs;
  size_t n_objs, cap_objs;
  char *backing, *backing_fmt;
  uint8_t *backing_data;
  uint64_t backing_len;
  char *data_file;
  bool data_file_raw;
  struct qk_feature_name *fnames;
  size_t n_fnames, cap_fnames;
  struct ext *exts;
  size_t n_exts, cap_exts;
  struct bitmap *bitmaps;
  size_t n_bitmaps, cap_bitmaps;
  /* layout */
  struct l2tab *l2s;
  size_t n_l2s, cap_l2s;
};

#define ALL_SC 0xffffffffU

static uint64_t
size_to_clusters (const struct qk_builder *b, uint64_t size)
{
  return (size + b->cs - 1) / b->cs;
}

static uint32_t
size_to_l1 (const struct qk_builder *b, uint64_t size)
{
  uint64_t cover = b->cs * b->l2_entries;
  return (uint32_t) ((size + cover - 1) / cover);
}

static char *
xstrdup (const char *s)
{
  char *d = strdup (s);
  if (d == NULL)
    set_error (ENOMEM, "strdup");
  return d;
}

/* ---- creation ---- */

struct qk_builder *
qk_builder_new (const struct qk_build_config *cfg)
{
  struct qk_builder *b;
  struct view *v;
  uint32_t hl = cfg->header_length;

  if (cfg->version != 2 && cfg->version != 3) {
    set_error (EINVAL, "version %u", cfg->version);
    return NULL;
  }
  if (cfg->cluster_bits < QK_MIN_CLUSTER_BITS
      || cfg->cluster_bits > QK_MAX_CLUSTER_BITS
      || cfg->refcount_order > 6
      || (cfg->version == 2 && cfg->refcount_order != 4)) {
    set_error (EINVAL, "cluster_bits %u, refcount_order %u", cfg->cluster_bits,
               cfg->refcount_order);
    return NULL;
  }
  if (cfg->size % 512 || cfg->size > (1ULL << 40)) {
    set_error (EINVAL, "virtual size %" PRIu64, cfg->size);
    return NULL;
  }
  if (cfg->version == 2
      && (cfg->extended_l2 || cfg->compression_type || cfg->lazy_refcounts
          || cfg->dirty || cfg->feature_table || cfg->extra_compatible
          || cfg->extra_autoclear || (hl && hl != QK_HEADER_V2_LEN))) {
    set_error (EINVAL, "a version 2 image has no feature bits");
    return NULL;
  }
  if (cfg->extended_l2 && cfg->cluster_bits < 14) {
    set_error (EINVAL, "extended L2 needs clusters of at least 16 KiB");
    return NULL;
  }
  if (cfg->compression_type != QK_COMPRESSION_DEFLATE
      && cfg->compression_type != QK_COMPRESSION_ZSTD) {
    set_error (EINVAL, "compression type %d", cfg->compression_type);
    return NULL;
  }
  if (cfg->version == 3) {
    if (hl == 0)
      hl = 112;
    if (hl < QK_HEADER_V3_MIN || hl % 8 || hl > (1U << cfg->cluster_bits)
        || (cfg->compression_type && hl < 112)) {
      set_error (EINVAL, "header_length %u", hl);
      return NULL;
    }
  }
  else
    hl = QK_HEADER_V2_LEN;

  b = calloc (1, sizeof *b);
  if (b == NULL) {
    set_error (ENOMEM, "calloc");
    return NULL;
  }
  b->cfg = *cfg;
  b->cfg.header_length = hl;
  b->cfg.unknown_header = NULL;
  if (hl > 112) {
    b->unknown_header = calloc (1, hl - 112);
    if (b->unknown_header == NULL)
      goto nomem;
    if (cfg->unknown_header)
      memcpy (b->unknown_header, cfg->unknown_header, hl - 112);
  }
  b->cs = 1ULL << cfg->cluster_bits;
  b->extl2 = cfg->extended_l2;
  b->l2_entries = (uint32_t) (b->cs / (b->extl2 ? 16 : 8));
  b->views = calloc (1, sizeof *b->views);
  if (b->views == NULL)
    goto nomem;
  b->n_views = b->cap_views = 1;
  v = &b->views[0];
  v->size = cfg->size;
  v->nclusters = size_to_clusters (b, cfg->size);
  v->l1_size = size_to_l1 (b, cfg->size);
  v->map = calloc (v->nclusters ? v->nclusters : 1, sizeof *v->map);
  if (v->map == NULL)
    goto nomem;
  return b;

 nomem:
  qk_builder_free (b);
  set_error (ENOMEM, "calloc");
  return NULL;
}

static void
view_free (struct view *v)
{
  free (v->map);
  free (v->id);
  free (v->name);
  free (v->extra);
  free (v->l2);
}

void
qk_builder_free (struct qk_builder *b)
{
  if (b == NULL)
    return;
  for (size_t i = 0; i < b->n_views; i++)
    view_free (&b->views[i]);
  free (b->views);
  for (size_t i = 0; i < b->n_objs; i++) {
    free (b->objs[i].data);
    free (b->objs[i].cdata);
  }
  free (b->objs);
  free (b->unknown_header);
  free (b->backing);
  free (b->backing_fmt);
  free (b->backing_data);
  free (b->data_file);
  free (b->fnames);
  for (size_t i = 0; i < b->n_exts; i++)
    free (b->exts[i].data);
  free (b->exts);
  for (size_t i = 0; i < b->n_bitmaps; i++) {
    free (b->bitmaps[i].name);
    free (b->bitmaps[i].ranges);
    free (b->bitmaps[i].bits);
    free (b->bitmaps[i].data_off);
  }
  free (b->bitmaps);
  free (b->l2s);
  free (b);
}

int
qk_builder_set_backing (struct qk_builder *b, const char *name,
                        const char *format, const uint8_t *content,
                        uint64_t len)
{
  size_t n = name ? strlen (name) : 0;

  if (n == 0 || n > 1023 || (format && (*format == '\0'
                                        || strlen (format) > 15))) {
    set_error (EINVAL, "backing file name or format");
    return -1;
  }
  if (b->data_file_raw) {
    set_error (EINVAL, "a raw data file rules out a backing file");
    return -1;
  }
  free (b->backing);
  free (b->backing_fmt);
  free (b->backing_data);
  b->backing_fmt = NULL;
  b->backing_data = NULL;
  b->backing_len = 0;
  if ((b->backing = xstrdup (name)) == NULL)
    return -1;
  if (format && (b->backing_fmt = xstrdup (format)) == NULL)
    return -1;
  if (len) {
    if (len > SIZE_MAX || (b->backing_data = malloc (len)) == NULL) {
      set_error (ENOMEM, "malloc");
      return -1;
    }
    memcpy (b->backing_data, content, len);
    b->backing_len = len;
  }
  return 0;
}

int
qk_builder_set_data_file (struct qk_builder *b, const char *name, bool raw)
{
  if (b->cfg.version != 3 || name == NULL || *name == '\0') {
    set_error (EINVAL, "an external data file needs a version 3 image and "
               "a name");
    return -1;
  }
  if (raw && b->backing) {
    set_error (EINVAL, "a raw data file rules out a backing file");
    return -1;
  }
  free (b->data_file);
  if ((b->data_file = xstrdup (name)) == NULL)
    return -1;
  b->data_file_raw = raw;
  return 0;
}

int
qk_builder_add_feature_name (struct qk_builder *b, int type, unsigned bit,
                             const char *name)
{
  struct qk_feature_name *f;

  if (type < 0 || type > QK_FEATURE_AUTOCLEAR || bit > 63
      || strlen (name) > QK_FEATURE_NAME_LEN) {
    set_error (EINVAL, "feature name type %d bit %u", type, bit);
    return -1;
  }
  f = qk_grow (b->fnames, &b->cap_fnames, b->n_fnames + 1, sizeof *f);
  if (f == NULL)
    return -1;
  b->fnames = f;
  f = &b->fnames[b->n_fnames++];
  memset (f, 0, sizeof *f);
  f->type = (uint8_t) type;
  f->bit = (uint8_t) bit;
  strcpy (f->name, name);
  return 0;
}

int
qk_builder_add_extension (struct qk_builder *b, uint32_t magic,
                          const void *data, uint32_t len)
{
  struct ext *e;

  if (magic == QK_EXT_END || len > b->cs) {
    set_error (EINVAL, "extension 0x%08x of %u bytes", magic, len);
    return -1;
  }
  e = qk_grow (b->exts, &b->cap_exts, b->n_exts + 1, sizeof *e);
  if (e == NULL)
    return -1;
  b->exts = e;
  e = &b->exts[b->n_exts];
  e->magic = magic;
  e->len = len;
  e->data = malloc (len ? len : 1);
  if (e->data == NULL) {
    set_error (ENOMEM, "malloc");
    return -1;
  }
  if (len)
    memcpy (e->data, data, len);
  b->n_exts++;
  return 0;
}

/* ---- the guest model ---- */

static struct obj *
obj_of (struct qk_builder *b, const struct gent *g)
{
  return g->obj ? &b->objs[g->obj - 1] : NULL;
}

/* A new object (refs 1); returns its 1-based index or 0. */
static uint32_t
obj_new (struct qk_builder *b, bool compressed)
{
  struct obj *o = qk_grow (b->objs, &b->cap_objs, b->n_objs + 1, sizeof *o);

  if (o == NULL)
    return 0;
  if (b->n_objs >= UINT32_MAX - 1) {
    set_error (ENOMEM, "too many clusters");
    return 0;
  }
  b->objs = o;
  o = &b->objs[b->n_objs++];
  memset (o, 0, sizeof *o);
  o->compressed = compressed;
  o->refs = 1;
  return (uint32_t) b->n_objs;
}

static void
unref (struct qk_builder *b, struct gent *g)
{
  struct obj *o = obj_of (b, g);

  if (o && --o->refs == 0) {
    free (o->data);
    free (o->cdata);
    o->data = o->cdata = NULL;
  }
  g->obj = 0;
}

static uint8_t
backing_byte (const struct qk_builder *b, uint64_t off)
{
  return off < b->backing_len ? b->backing_data[off] : 0;
}

/* What the guest reads at one byte of cluster c of view v. */
static uint8_t
read_byte (struct qk_builder *b, const struct view *v, uint64_t off)
{
  uint64_t c = off >> b->cfg.cluster_bits, in = off & (b->cs - 1);
  const struct gent *g;
  const struct obj *o;
  unsigned sc;

  if (off >= v->size && !(v != &b->views[0] && c < v->nclusters))
    return 0;
  if (c >= v->nclusters)
    return 0;
  g = &v->map[c];
  o = obj_of (b, g);
  sc = (unsigned) (in / (b->cs / 32));
  switch (g->type) {
  case GT_ZERO_PLAIN:
  case GT_ZERO_ALLOC:
    return 0;
  case GT_COMPRESSED:
    return o->data ? o->data[in] : 0;
  case GT_DATA:
    if (!b->extl2 || (g->alloc & (1U << sc)))
      return o->data ? o->data[in] : 0;
    /* fall through */
  default:
    if (b->extl2 && (g->zero & (1U << sc)))
      return 0;
    return backing_byte (b, off);
  }
}

static void
read_cluster (struct qk_builder *b, const struct view *v, uint64_t c,
              uint8_t *buf)
{
  for (uint64_t i = 0; i < b->cs; i++)
    buf[i] = read_byte (b, v, (c << b->cfg.cluster_bits) + i);
}

/* Make active cluster c a data cluster owned by the active state alone,
 * holding what the guest reads now, with the subclusters in touched
 * allocated. Returns its data, or NULL. */
static uint8_t *
own_cluster (struct qk_builder *b, uint64_t c, uint32_t touched)
{
  struct view *v = &b->views[0];
  struct gent *g = &v->map[c];
  struct obj *o = obj_of (b, g);
  uint8_t *cur = malloc (b->cs);
  uint32_t idx;

  if (cur == NULL) {
    set_error (ENOMEM, "malloc");
    return NULL;
  }
  read_cluster (b, v, c, cur);
  if (o && o->refs == 1 && (g->type == GT_DATA || g->type == GT_ZERO_ALLOC)) {
    free (o->data);
    o->data = cur;
    if (g->type == GT_ZERO_ALLOC || !b->extl2)
      g->alloc = 0;
    g->type = GT_DATA;
    g->alloc |= touched;
    g->zero &= ~touched;
    return o->data;
  }
  idx = obj_new (b, false);
  if (idx == 0) {
    free (cur);
    return NULL;
  }
  if (g->type == GT_COMPRESSED) {
    g->alloc = ALL_SC;
    g->zero = 0;
  }
  else if (g->type != GT_DATA)
    g->alloc = 0;
  unref (b, g);
  g->obj = idx;
  g->type = GT_DATA;
  g->alloc |= touched;
  g->zero &= ~touched;
  b->objs[idx - 1].data = cur;
  return cur;
}

/* Subclusters of cluster-relative [a, a+n) (n > 0), whole or partial. */
static uint32_t
sc_mask (const struct qk_builder *b, uint64_t a, uint64_t n, bool whole)
{
  uint64_t scs = b->cs / 32;
  uint64_t first, last;

  if (whole) {
    first = (a + scs - 1) / scs;
    last = (a + n) / scs;  /* exclusive */
    if (a + n == b->cs)
      last = 32;
  }
  else {
    first = a / scs;
    last = (a + n - 1) / scs + 1;
  }
  if (last <= first)
    return 0;
  return (uint32_t) (last - first == 32 ? ALL_SC
                     : ((1ULL << (last - first)) - 1) << first);
}

static int
check_range (const struct qk_builder *b, uint64_t off, uint64_t len)
{
  uint64_t end;

  if (ADD_OVERFLOW (off, len, &end) || end > b->views[0].size) {
    set_error (EINVAL, "range %" PRIu64 "+%" PRIu64 " is past the end of the "
               "disk (%" PRIu64 ")", off, len, b->views[0].size);
    return -1;
  }
  return 0;
}

int
qk_builder_write (struct qk_builder *b, uint64_t off, const void *buf,
                  size_t len)
{
  const uint8_t *p = buf;

  if (check_range (b, off, len) < 0)
    return -1;
  while (len) {
    uint64_t c = off >> b->cfg.cluster_bits, in = off & (b->cs - 1);
    size_t n = (size_t) MIN ((uint64_t) len, b->cs - in);
    uint8_t *d = own_cluster (b, c, b->extl2 ? sc_mask (b, in, n, false) : 0);

    if (d == NULL)
      return -1;
    memcpy (d + in, p, n);
    p += n;
    off += n;
    len -= n;
  }
  return 0;
}

int
qk_builder_write_compressed (struct qk_builder *b, uint64_t off,
                             const void *buf, size_t len)
{
  struct view *v = &b->views[0];
  uint64_t c = off >> b->cfg.cluster_bits;
  uint8_t *data, *cdata;
  size_t clen;
  uint32_t idx;
  struct gent *g;

  if (b->data_file) {
    set_error (EINVAL, "no compressed clusters with an external data file");
    return -1;
  }
  if (off & (b->cs - 1) || len == 0 || len > b->cs
      || (len < b->cs && off + len != v->size) || check_range (b, off, len) < 0) {
    set_error (EINVAL, "a compressed write is one whole cluster");
    return -1;
  }
  data = calloc (1, b->cs);
  cdata = malloc (b->cs);
  if (data == NULL || cdata == NULL) {
    free (data);
    free (cdata);
    set_error (ENOMEM, "malloc");
    return -1;
  }
  memcpy (data, buf, len);
  /* As QEMU: what does not shrink below a cluster is not compressed. */
  if (qk_compress (b->cfg.compression_type, data, b->cs, cdata, b->cs - 1,
                   &clen) < 0) {
    free (data);
    free (cdata);
    return -1;
  }
  idx = obj_new (b, true);
  if (idx == 0) {
    free (data);
    free (cdata);
    return -1;
  }
  g = &v->map[c];
  unref (b, g);
  g->obj = idx;
  g->type = GT_COMPRESSED;
  g->alloc = g->zero = 0;
  b->objs[idx - 1].data = data;
  b->objs[idx - 1].cdata = cdata;
  b->objs[idx - 1].clen = clen;
  return 0;
}

/* Write zeros as data over cluster-relative [in, in+n) of cluster c. */
static int
zero_data (struct qk_builder *b, uint64_t c, uint64_t in, uint64_t n)
{
  uint8_t *d;

  if (n == 0)
    return 0;
  d = own_cluster (b, c, b->extl2 ? sc_mask (b, in, n, false) : 0);
  if (d == NULL)
    return -1;
  memset (d + in, 0, n);
  return 0;
}

int
qk_builder_zero (struct qk_builder *b, uint64_t off, uint64_t len,
                 bool keep_alloc)
{
  struct view *v = &b->views[0];

  if (b->cfg.version < 3) {
    set_error (EINVAL, "version 2 images have no zero clusters");
    return -1;
  }
  if (check_range (b, off, len) < 0)
    return -1;
  while (len) {
    uint64_t c = off >> b->cfg.cluster_bits, in = off & (b->cs - 1);
    uint64_t n = MIN (len, b->cs - in);
    /* the last cluster of a disk ends at the end of the disk */
    bool whole = in == 0 && (n == b->cs || off + n == v->size);
    struct gent *g = &v->map[c];

    if (!b->extl2) {
      if (!whole) {
        if (zero_data (b, c, in, n) < 0)
          return -1;
      }
      else if (keep_alloc && !b->data_file) {
        struct obj *o = obj_of (b, g);
        if (!(o && o->refs == 1
              && (g->type == GT_DATA || g->type == GT_ZERO_ALLOC))) {
          uint32_t idx = obj_new (b, false);
          if (idx == 0)
            return -1;
          unref (b, g);
          g->obj = idx;
        }
        g->type = GT_ZERO_ALLOC;
      }
      else {
        unref (b, g);
        g->type = GT_ZERO_PLAIN;
      }
    }
    else {
      uint64_t scs = b->cs / 32;
      /* whole subclusters [fs, fe); the parts outside get zeros as data */
      uint64_t fs = whole ? 0 : (in + scs - 1) / scs * scs;
      uint64_t fe = whole ? b->cs : (in + n) / scs * scs;
      uint32_t m = 0;

      if (fs < fe)
        m = fe - fs == b->cs ? ALL_SC
            : (uint32_t) (((1ULL << ((fe - fs) / scs)) - 1) << (fs / scs));
      else
        fs = fe = in + n;
      /* A whole last cluster of the disk ends before fe: nothing is left
       * to write as data (and in + n - fe would wrap). */
      if (!whole
          && (zero_data (b, c, in, fs - in) < 0
              || zero_data (b, c, fe, in + n - fe) < 0))
        return -1;
      if (m) {
        if (g->type == GT_COMPRESSED) {
          if (m == ALL_SC) {
            unref (b, g);
            g->type = GT_UNALLOC;
            g->alloc = 0;
          }
          else if (own_cluster (b, c, 0) == NULL)
            return -1;
        }
        if (g->type == GT_DATA && m == ALL_SC && !keep_alloc) {
          unref (b, g);
          g->type = GT_UNALLOC;
          g->alloc = 0;
        }
        g->alloc &= ~m;
        g->zero |= m;
      }
    }
    off += n;
    len -= n;
  }
  return 0;
}

int
qk_builder_discard (struct qk_builder *b, uint64_t off, uint64_t len)
{
  struct view *v = &b->views[0];

  if (check_range (b, off, len) < 0)
    return -1;
  while (len) {
    uint64_t c = off >> b->cfg.cluster_bits, in = off & (b->cs - 1);
    uint64_t n = MIN (len, b->cs - in);
    bool whole = in == 0 && (n == b->cs || off + n == v->size);
    struct gent *g = &v->map[c];
    uint32_t m = whole ? ALL_SC : b->extl2 ? sc_mask (b, in, n, true) : 0;

    if (m == ALL_SC) {
      unref (b, g);
      g->type = GT_UNALLOC;
      g->alloc = g->zero = 0;
    }
    else if (m) {
      if (g->type == GT_COMPRESSED && own_cluster (b, c, 0) == NULL)
        return -1;
      g->alloc &= ~m;
      g->zero &= ~m;
      if (g->type == GT_DATA && g->alloc == 0 && g->zero == 0) {
        unref (b, g);
        g->type = GT_UNALLOC;
      }
    }
    off += n;
    len -= n;
  }
  return 0;
}

int
qk_builder_resize (struct qk_builder *b, uint64_t size)
{
  struct view *v = &b->views[0];
  uint64_t n = size_to_clusters (b, size);
  struct gent *m;

  if (size % 512 || size > (1ULL << 40)) {
    set_error (EINVAL, "virtual size %" PRIu64, size);
    return -1;
  }
  for (uint64_t c = n; c < v->nclusters; c++) {
    unref (b, &v->map[c]);
    memset (&v->map[c], 0, sizeof v->map[c]);
  }
  m = realloc (v->map, (n ? n : 1) * sizeof *m);
  if (m == NULL) {
    set_error (ENOMEM, "realloc");
    return -1;
  }
  if (n > v->nclusters)
    memset (m + v->nclusters, 0, (n - v->nclusters) * sizeof *m);
  v->map = m;
  v->nclusters = n;
  v->size = size;
  v->l1_size = size_to_l1 (b, size);
  return 0;
}

int
qk_builder_snapshot (struct qk_builder *b, const struct qk_build_snapshot *s)
{
  struct view *a, *v;
  struct view *vs;
  uint64_t vm_off = 0, n;
  char idbuf[32];

  if (b->data_file) {
    set_error (EINVAL, "no internal snapshots with an external data file");
    return -1;
  }
  if ((b->cfg.version == 3 && s->extra_data_size < 16)
      || (s->extra_data_size < 8 && s->vm_state_size > UINT32_MAX)
      || s->extra_data_size > 1024 || s->name == NULL
      || strlen (s->name) > UINT16_MAX
      || (s->id && strlen (s->id) > UINT16_MAX)
      || (s->vm_state_size && s->vm_state == NULL)) {
    set_error (EINVAL, "snapshot entry values");
    return -1;
  }
  vs = qk_grow (b->views, &b->cap_views, b->n_views + 1, sizeof *vs);
  if (vs == NULL)
    return -1;
  b->views = vs;
  a = &b->views[0];
  v = &b->views[b->n_views];
  memset (v, 0, sizeof *v);
  v->size = a->size;
  n = a->nclusters;
  v->l1_size = a->l1_size;
  if (s->vm_state_size) {
    vm_off = (uint64_t) size_to_l1 (b, a->size) * b->l2_entries * b->cs;
    n = size_to_clusters (b, vm_off + s->vm_state_size);
    v->l1_size = size_to_l1 (b, vm_off + s->vm_state_size);
  }
  v->nclusters = n;
  v->map = calloc (n ? n : 1, sizeof *v->map);
  if (s->id == NULL) {
    unsigned long max = 0;
    for (size_t i = 1; i < b->n_views; i++) {
      unsigned long k = strtoul (b->views[i].id, NULL, 10);
      max = MAX (max, k);
    }
    snprintf (idbuf, sizeof idbuf, "%lu", max + 1);
  }
  v->id = strdup (s->id ? s->id : idbuf);
  v->name = strdup (s->name);
  if (s->extra_data_size > 24)
    v->extra = calloc (1, s->extra_data_size - 24);
  if (v->map == NULL || v->id == NULL || v->name == NULL
      || (s->extra_data_size > 24 && v->extra == NULL)) {
    view_free (v);
    set_error (ENOMEM, "malloc");
    return -1;
  }
  if (v->extra && s->extra)
    memcpy (v->extra, s->extra, s->extra_data_size - 24);
  v->date_sec = s->date_sec;
  v->date_nsec = s->date_nsec;
  v->vm_clock_nsec = s->vm_clock_nsec;
  v->icount = s->icount;
  v->extra_data_size = s->extra_data_size;
  v->vm_state_size = s->vm_state_size;
  memcpy (v->map, a->map, a->nclusters * sizeof *v->map);
  for (uint64_t c = 0; c < a->nclusters; c++)
    if (v->map[c].obj)
      b->objs[v->map[c].obj - 1].refs++;
  /* The VM state: guest clusters past the disk, in this snapshot only. */
  for (uint64_t o = 0; o < s->vm_state_size; o += b->cs) {
    uint64_t c = (vm_off + o) >> b->cfg.cluster_bits;
    uint64_t k = MIN (b->cs, s->vm_state_size - o);
    uint32_t idx = obj_new (b, false);
    uint8_t *d = calloc (1, b->cs);

    if (idx == 0 || d == NULL) {
      free (d);
      b->n_views++;   /* so that qk_builder_free releases it */
      set_error (ENOMEM, "malloc");
      return -1;
    }
    memcpy (d, s->vm_state + o, k);
    b->objs[idx - 1].data = d;
    v->map[c].obj = idx;
    v->map[c].type = GT_DATA;
    v->map[c].alloc = b->extl2 ? sc_mask (b, 0, k, false) : 0;
  }
  b->n_views++;
  return (int) (b->n_views - 2);
}

int
qk_builder_add_bitmap (struct qk_builder *b, const char *name,
                       unsigned granularity_bits, uint32_t flags)
{
  struct bitmap *m;

  if (b->cfg.version < 3 || granularity_bits < 9 || granularity_bits > 31
      || name == NULL || *name == '\0' || strlen (name) > 1023
      || (flags & QK_BME_RESERVED_FLAGS)) {
    set_error (EINVAL, "bitmap '%s'", name ? name : "");
    return -1;
  }
  for (size_t i = 0; i < b->n_bitmaps; i++)
    if (strcmp (b->bitmaps[i].name, name) == 0) {
      set_error (EEXIST, "bitmap '%s'", name);
      return -1;
    }
  m = qk_grow (b->bitmaps, &b->cap_bitmaps, b->n_bitmaps + 1, sizeof *m);
  if (m == NULL)
    return -1;
  b->bitmaps = m;
  m = &b->bitmaps[b->n_bitmaps];
  memset (m, 0, sizeof *m);
  if ((m->name = xstrdup (name)) == NULL)
    return -1;
  m->gran_bits = granularity_bits;
  m->flags = flags;
  return (int) b->n_bitmaps++;
}

int
qk_builder_bitmap_dirty (struct qk_builder *b, int bitmap, uint64_t off,
                         uint64_t len)
{
  struct bitmap *m;
  uint64_t *r;

  if (bitmap < 0 || (size_t) bitmap >= b->n_bitmaps || len == 0) {
    set_error (EINVAL, "bitmap %d", bitmap);
    return -1;
  }
  m = &b->bitmaps[bitmap];
  r = qk_grow (m->ranges, &m->cap_ranges, m->n_ranges + 2, sizeof *r);
  if (r == NULL)
    return -1;
  m->ranges = r;
  m->ranges[m->n_ranges++] = off;
  m->ranges[m->n_ranges++] = len;
  return 0;
}

static struct view *
view_of (struct qk_builder *b, int snapshot)
{
  if (snapshot < -1 || snapshot + 1 >= (int) b->n_views) {
    set_error (EINVAL, "no snapshot %d", snapshot);
    return NULL;
  }
  return &b->views[snapshot + 1];
}

uint64_t
qk_builder_size (const struct qk_builder *b, int snapshot)
{
  if (snapshot < -1 || snapshot + 1 >= (int) b->n_views)
    return 0;
  return b->views[snapshot + 1].size;
}

int
qk_builder_read (struct qk_builder *b, int snapshot, uint64_t off, void *buf,
                 size_t len)
{
  struct view *v = view_of (b, snapshot);
  uint8_t *p = buf;

  if (v == NULL)
    return -1;
  for (size_t i = 0; i < len; i++)
    p[i] = off + i < v->size ? read_byte (b, v, off + i) : 0;
  return 0;
}

/* ---- layout ---- */

struct layout {
  uint64_t next;           /* next free cluster offset */
  uint64_t end;            /* file length */
  uint32_t reft_clusters;
  uint64_t n_refblocks;
  uint64_t reft_off, refblocks_off;
  uint64_t comp_start, comp_end;
  uint64_t sn_off, sn_size;
  uint64_t dir_off, dir_size;
  uint64_t *refcounts;     /* per host cluster */
  uint64_t n_clusters;
};

static uint64_t
alloc_clusters (struct qk_builder *b, struct layout *L, uint64_t bytes)
{
  uint64_t off = L->next;
  uint64_t n = (bytes + b->cs - 1) / b->cs;

  L->next += n * b->cs;
  L->end = MAX (L->end, off + bytes);
  return off;
}

static bool
slice_empty (const struct qk_builder *b, const struct view *v, uint64_t i)
{
  for (uint64_t k = 0; k < b->l2_entries; k++) {
    uint64_t c = i * b->l2_entries + k;
    if (c >= v->nclusters)
      break;
    if (v->map[c].type != GT_UNALLOC || v->map[c].zero)
      return false;
  }
  return true;
}

static bool
slice_same (const struct qk_builder *b, const struct view *v,
            const struct view *w, uint64_t i)
{
  for (uint64_t k = 0; k < b->l2_entries; k++) {
    uint64_t c = i * b->l2_entries + k;
    bool inv = c < v->nclusters, inw = c < w->nclusters;
    const struct gent *x = inv ? &v->map[c] : NULL;
    const struct gent *y = inw ? &w->map[c] : NULL;
    bool ex = !x || (x->type == GT_UNALLOC && !x->zero);
    bool ey = !y || (y->type == GT_UNALLOC && !y->zero);

    if (ex || ey) {
      if (ex != ey)
        return false;
      continue;
    }
    if (x->type != y->type || x->obj != y->obj || x->alloc != y->alloc
        || x->zero != y->zero)
      return false;
  }
  return true;
}

/* L2 tables of view vi (sharing a table with an earlier view whose slice
 * at the same L1 index is the same), each followed by the data clusters
 * it maps first; compressed objects are only listed. */
static int
place_view (struct qk_builder *b, struct layout *L, size_t vi,
            uint32_t **corder, size_t *n_corder, size_t *cap_corder)
{
  struct view *v = &b->views[vi];

  free (v->l2);
  v->l2 = calloc (v->l1_size ? v->l1_size : 1, sizeof *v->l2);
  if (v->l2 == NULL) {
    set_error (ENOMEM, "calloc");
    return -1;
  }
  for (uint64_t i = 0; i < v->l1_size; i++) {
    if (slice_empty (b, v, i))
      continue;
    for (size_t w = 0; w < vi && !v->l2[i]; w++)
      if (i < b->views[w].l1_size && b->views[w].l2[i]
          && slice_same (b, v, &b->views[w], i))
        v->l2[i] = b->views[w].l2[i];
    if (v->l2[i])
      continue;
    {
      struct l2tab *t = qk_grow (b->l2s, &b->cap_l2s, b->n_l2s + 1, sizeof *t);
      if (t == NULL)
        return -1;
      b->l2s = t;
      t = &b->l2s[b->n_l2s++];
      t->view = (uint32_t) vi;
      t->l1_index = i;
      t->off = alloc_clusters (b, L, b->cs);
      v->l2[i] = (uint32_t) b->n_l2s;
    }
    for (uint64_t k = 0; k < b->l2_entries; k++) {
      uint64_t c = i * b->l2_entries + k;
      struct obj *o;

      if (c >= v->nclusters)
        break;
      o = obj_of (b, &v->map[c]);
      if (o == NULL || o->placed)
        continue;
      o->placed = true;
      if (o->compressed) {
        uint32_t *co = qk_grow (*corder, cap_corder, *n_corder + 1,
                                sizeof *co);
        if (co == NULL)
          return -1;
        *corder = co;
        co[(*n_corder)++] = v->map[c].obj;
      }
      else if (b->data_file)
        o->host = c << b->cfg.cluster_bits;
      else
        o->host = alloc_clusters (b, L, b->cs);
    }
  }
  return 0;
}

static uint64_t
refcount_max (const struct qk_builder *b)
{
  return b->cfg.refcount_order == 6 ? UINT64_MAX
         : (1ULL << (1U << b->cfg.refcount_order)) - 1;
}

/* Pack compressed data byte after byte; a cluster whose refcount would
 * overflow is left for the next one. */
static int
place_compressed (struct qk_builder *b, struct layout *L, const uint32_t *co,
                  size_t n)
{
  uint64_t pos, used = 0, max = refcount_max (b);

  L->comp_start = L->comp_end = L->next;
  if (n == 0)
    return 0;
  pos = L->next;
  for (size_t i = 0; i < n; i++) {
    struct obj *o = &b->objs[co[i] - 1];
    uint64_t first = pos / b->cs, last;

    if (o->refs > max) {
      set_error (ERANGE, "a compressed cluster has %u references, more than "
                 "%u-bit refcounts hold", o->refs,
                 1U << b->cfg.refcount_order);
      return -1;
    }
    if (pos % b->cs && used + o->refs > max) {
      pos = (first + 1) * b->cs;
      first++;
      used = 0;
    }
    o->host = pos;
    last = (pos + o->clen - 1) / b->cs;
    used = last == first ? used + o->refs : o->refs;
    pos += o->clen;
    if (pos % b->cs == 0)
      used = 0;
  }
  /* QEMU reads (and counts) compressed data up to the end of its last
   * sector: the file holds it. */
  L->comp_end = (pos + 511) & ~511ULL;
  L->next = (pos + b->cs - 1) / b->cs * b->cs;
  L->end = MAX (L->end, L->comp_end);
  return 0;
}

static uint64_t
snapshot_entry_size (const struct view *v)
{
  return qk_snapshot_entry_size (v->extra_data_size, strlen (v->id),
                                 strlen (v->name));
}

static int
place_bitmaps (struct qk_builder *b, struct layout *L)
{
  uint64_t size = b->views[0].size;

  L->dir_size = 0;
  for (size_t i = 0; i < b->n_bitmaps; i++) {
    struct bitmap *m = &b->bitmaps[i];
    uint64_t g = 1ULL << m->gran_bits;
    uint64_t nbits = (size + g - 1) / g, nbytes = (nbits + 7) / 8;
    uint64_t ts = (nbytes + b->cs - 1) / b->cs;

    if (ts == 0 || ts > QK_MAX_BITMAP_TABLE_ENTRIES) {
      set_error (EINVAL, "bitmap '%s' of %" PRIu64 " table entries", m->name,
                 ts);
      return -1;
    }
    free (m->bits);
    free (m->data_off);
    m->table_size = (uint32_t) ts;
    m->bits = calloc (ts, b->cs);
    m->data_off = calloc (ts, sizeof *m->data_off);
    if (m->bits == NULL || m->data_off == NULL) {
      set_error (ENOMEM, "calloc");
      return -1;
    }
    for (size_t r = 0; r < m->n_ranges; r += 2) {
      uint64_t a = m->ranges[r] / g;
      uint64_t e = (m->ranges[r] + m->ranges[r + 1] - 1) / g;
      for (uint64_t k = a; k <= e && k < nbits; k++)
        m->bits[k / 8] |= (uint8_t) (1U << (k % 8));
    }
    for (uint64_t t = 0; t < ts; t++) {
      const uint8_t *p = m->bits + t * b->cs;
      bool zero = true, ones = true;
      for (uint64_t k = 0; k < b->cs; k++) {
        zero &= p[k] == 0;
        ones &= p[k] == 0xff;
      }
      if (zero)
        m->data_off[t] = 0;
      else if (ones)
        m->data_off[t] = 1;
      else
        m->data_off[t] = alloc_clusters (b, L, b->cs);
    }
    m->table_off = alloc_clusters (b, L, ts * 8);
    L->dir_size += qk_bitmap_entry_size (0, strlen (m->name));
  }
  L->dir_off = b->n_bitmaps ? alloc_clusters (b, L, L->dir_size) : 0;
  return 0;
}

/* One layout attempt with the given refcount table and block counts. */
static int
layout_once (struct qk_builder *b, struct layout *L)
{
  uint32_t *corder = NULL;
  size_t n_corder = 0, cap_corder = 0;
  int r = -1;

  L->next = b->cs;
  L->end = b->cs;  /* cluster 0 is written whole */
  for (size_t i = 0; i < b->n_objs; i++)
    b->objs[i].placed = false;
  b->n_l2s = 0;
  L->reft_off = alloc_clusters (b, L, (uint64_t) L->reft_clusters * b->cs);
  L->refblocks_off = alloc_clusters (b, L, L->n_refblocks * b->cs);
  if (b->views[0].l1_size)
    b->views[0].l1_off = alloc_clusters (b, L,
                                         (uint64_t) b->views[0].l1_size * 8);
  else
    b->views[0].l1_off = 0;
  for (size_t vi = 0; vi < b->n_views; vi++)
    if (place_view (b, L, vi, &corder, &n_corder, &cap_corder) < 0)
      goto out;
  if (place_compressed (b, L, corder, n_corder) < 0)
    goto out;
  for (size_t vi = 1; vi < b->n_views; vi++) {
    struct view *v = &b->views[vi];
    v->l1_off = v->l1_size ? alloc_clusters (b, L, (uint64_t) v->l1_size * 8)
                           : 0;
  }
  L->sn_size = 0;
  for (size_t vi = 1; vi < b->n_views; vi++)
    L->sn_size += snapshot_entry_size (&b->views[vi]);
  L->sn_off = L->sn_size ? alloc_clusters (b, L, L->sn_size) : 0;
  if (place_bitmaps (b, L) < 0)
    goto out;
  r = 0;
 out:
  free (corder);
  return r;
}

/* ---- counting references, as qemu-img check does ---- */

static int
inc (struct qk_builder *b, struct layout *L, uint64_t off, uint64_t len)
{
  if (len == 0)
    return 0;
  for (uint64_t k = off / b->cs; k <= (off + len - 1) / b->cs; k++) {
    if (k >= L->n_clusters) {
      set_error (EINVAL, "internal: reference past the end of the layout");
      return -1;
    }
    if (L->refcounts[k] == refcount_max (b)) {
      set_error (ERANGE, "cluster %" PRIu64 " has more references than %u-bit "
                 "refcounts hold", k, 1U << b->cfg.refcount_order);
      return -1;
    }
    L->refcounts[k]++;
  }
  return 0;
}

static uint64_t
compressed_range (const struct qk_builder *b, const struct obj *o)
{
  return (((o->host + o->clen + 511) & ~511ULL)) - o->host;
}

static int
count_refs (struct qk_builder *b, struct layout *L)
{
  free (L->refcounts);
  L->n_clusters = (L->end + b->cs - 1) / b->cs;
  L->refcounts = calloc (L->n_clusters ? L->n_clusters : 1, sizeof (uint64_t));
  if (L->refcounts == NULL) {
    set_error (ENOMEM, "calloc");
    return -1;
  }
  if (inc (b, L, 0, b->cs) < 0)
    return -1;
  for (size_t vi = 0; vi < b->n_views; vi++) {
    struct view *v = &b->views[vi];
    if (inc (b, L, v->l1_off, (uint64_t) v->l1_size * 8) < 0)
      return -1;
    for (uint64_t i = 0; i < v->l1_size; i++) {
      if (!v->l2[i])
        continue;
      if (inc (b, L, b->l2s[v->l2[i] - 1].off, b->cs) < 0)
        return -1;
      for (uint64_t k = 0; k < b->l2_entries; k++) {
        uint64_t c = i * b->l2_entries + k;
        const struct obj *o;
        if (c >= v->nclusters)
          break;
        o = obj_of (b, &v->map[c]);
        if (o == NULL)
          continue;
        if (o->compressed) {
          if (inc (b, L, o->host, compressed_range (b, o)) < 0)
            return -1;
        }
        else if (!b->data_file && inc (b, L, o->host, b->cs) < 0)
          return -1;
      }
    }
  }
  if (inc (b, L, L->sn_off, L->sn_size) < 0
      || inc (b, L, L->reft_off, (uint64_t) L->reft_clusters * b->cs) < 0
      || inc (b, L, L->refblocks_off, L->n_refblocks * b->cs) < 0
      || inc (b, L, L->dir_off, L->dir_size) < 0)
    return -1;
  for (size_t i = 0; i < b->n_bitmaps; i++) {
    const struct bitmap *m = &b->bitmaps[i];
    if (inc (b, L, m->table_off, (uint64_t) m->table_size * 8) < 0)
      return -1;
    for (uint32_t t = 0; t < m->table_size; t++)
      if (m->data_off[t] > 1 && inc (b, L, m->data_off[t], b->cs) < 0)
        return -1;
  }
  return 0;
}

/* ---- serializing ---- */

static bool
copied (const struct layout *L, uint64_t off, uint64_t cs)
{
  return L->refcounts[off / cs] == 1;
}

static int
write_l2 (struct qk_builder *b, const struct layout *L, uint8_t *img,
          const struct l2tab *t)
{
  const struct view *v = &b->views[t->view];
  uint8_t *p = img + t->off;

  for (uint64_t k = 0; k < b->l2_entries; k++) {
    uint64_t c = t->l1_index * b->l2_entries + k;
    const struct gent *g;
    const struct obj *o;
    uint64_t e = 0, bm = 0;
    int r = 0;

    if (c >= v->nclusters)
      break;
    g = &v->map[c];
    o = obj_of (b, g);
    switch (g->type) {
    case GT_UNALLOC:
      break;
    case GT_ZERO_PLAIN:
      r = qk_l2_entry_make (0, false, true, &e);
      break;
    case GT_ZERO_ALLOC:
      r = qk_l2_entry_make (o->host, b->data_file
                            || copied (L, o->host, b->cs), true, &e);
      break;
    case GT_DATA:
      r = qk_l2_entry_make (o->host, b->data_file
                            || copied (L, o->host, b->cs), false, &e);
      break;
    case GT_COMPRESSED:
      r = qk_l2_compressed_make (o->host, o->clen, b->cfg.cluster_bits, &e);
      break;
    }
    if (b->extl2 && g->type != GT_COMPRESSED)
      bm = qk_l2_bitmap_make (g->alloc, g->zero);
    if (r < 0 || qk_l2_put (p, b->cs, b->extl2, k, e, bm) < 0)
      return -1;
  }
  return 0;
}

static int
write_l1 (struct qk_builder *b, const struct layout *L, uint8_t *img,
          const struct view *v)
{
  for (uint64_t i = 0; i < v->l1_size; i++) {
    uint64_t e = 0, off;
    if (!v->l2[i])
      continue;
    off = b->l2s[v->l2[i] - 1].off;
    if (qk_l1_entry_make (off, copied (L, off, b->cs), &e) < 0
        || qk_table_put (img + v->l1_off, (size_t) v->l1_size * 8, i, e) < 0)
      return -1;
  }
  return 0;
}

/* Header, extensions and backing file name in cluster 0, laid out by
 * the shared header-cluster formatter (format/hdrcluster.c). */
static int
write_header (struct qk_builder *b, const struct layout *L, uint8_t *img)
{
  struct qk_header_spec s;
  struct qk_header *h = &s.h;
  struct qk_bitmaps_ext be;
  struct qk_feature_name *f = NULL;
  struct qk_hdr_ext *x = NULL;
  size_t nk = 0;
  int ret = -1;

  memset (&s, 0, sizeof s);
  h->version = b->cfg.version;
  h->cluster_bits = b->cfg.cluster_bits;
  h->size = b->views[0].size;
  h->l1_size = b->views[0].l1_size;
  h->l1_table_offset = b->views[0].l1_off;
  h->refcount_table_offset = L->reft_off;
  h->refcount_table_clusters = L->reft_clusters;
  h->nb_snapshots = (uint32_t) (b->n_views - 1);
  h->snapshots_offset = L->sn_off;
  h->refcount_order = b->cfg.refcount_order;
  h->header_length = b->cfg.header_length;
  if (b->cfg.version == 3) {
    h->incompatible_features = (b->cfg.dirty ? QK_INCOMPAT_DIRTY : 0)
      | (b->data_file ? QK_INCOMPAT_DATA_FILE : 0)
      | (b->cfg.compression_type ? QK_INCOMPAT_COMPRESSION : 0)
      | (b->extl2 ? QK_INCOMPAT_EXTL2 : 0);
    h->compatible_features = (b->cfg.lazy_refcounts
                              ? QK_COMPAT_LAZY_REFCOUNTS : 0)
                             | b->cfg.extra_compatible;
    h->autoclear_features = (b->n_bitmaps ? QK_AUTOCLEAR_BITMAPS : 0)
      | (b->data_file_raw ? QK_AUTOCLEAR_DATA_FILE_RAW : 0)
      | b->cfg.extra_autoclear;
    h->compression_type = (uint8_t) b->cfg.compression_type;
  }
  s.unknown_header = b->unknown_header;
  s.backing = b->backing;
  s.backing_len = b->backing ? strlen (b->backing) : 0;
  s.backing_format = b->backing_fmt;
  s.data_file = b->data_file;
  if (b->cfg.feature_table || b->n_fnames) {
    /* QEMU's table of the known bits, then the names added */
    nk = b->cfg.feature_table ? QK_QEMU_FEATURES : 0;
    f = calloc (nk + b->n_fnames, sizeof *f);
    if (f == NULL) {
      set_error (ENOMEM, "calloc");
      return -1;
    }
    memcpy (f, qk_qemu_feature_table, nk * sizeof *f);
    memcpy (f + nk, b->fnames, b->n_fnames * sizeof *f);
    s.fnames = f;
    s.n_fnames = nk + b->n_fnames;
  }
  if (b->n_bitmaps) {
    memset (&be, 0, sizeof be);
    be.nb_bitmaps = (uint32_t) b->n_bitmaps;
    be.directory_size = L->dir_size;
    be.directory_offset = L->dir_off;
    s.bitmaps = &be;
  }
  if (b->n_exts) {
    x = calloc (b->n_exts, sizeof *x);
    if (x == NULL) {
      set_error (ENOMEM, "calloc");
      goto out;
    }
    for (size_t i = 0; i < b->n_exts; i++)
      x[i] = (struct qk_hdr_ext) { b->exts[i].magic, b->exts[i].len,
                                   b->exts[i].data };
    s.exts = x;
    s.n_exts = b->n_exts;
  }
  ret = qk_header_cluster_format (&s, img, (size_t) b->cs, NULL);
out:
  free (f);
  free (x);
  return ret;
}

static int
write_refcounts (struct qk_builder *b, const struct layout *L, uint8_t *img)
{
  uint64_t per = (b->cs * 8) >> b->cfg.refcount_order;

  for (uint64_t r = 0; r < L->n_refblocks; r++) {
    uint64_t off = L->refblocks_off + r * b->cs, e;
    uint64_t first = r * per;
    size_t n = first >= L->n_clusters ? 0
               : (size_t) MIN (per, L->n_clusters - first);

    if (qk_reftable_entry_make (off, &e) < 0
        || qk_table_put (img + L->reft_off,
                         (size_t) L->reft_clusters * b->cs, r, e) < 0
        || qk_refblock_format (L->refcounts + first, n,
                               b->cfg.refcount_order, img + off,
                               (size_t) b->cs) < 0)
      return -1;
  }
  return 0;
}

static int
write_snapshots (struct qk_builder *b, const struct layout *L, uint8_t *img)
{
  uint64_t pos = L->sn_off;

  for (size_t vi = 1; vi < b->n_views; vi++) {
    const struct view *v = &b->views[vi];
    struct qk_snapshot_raw r;
    uint8_t extra[1024];
    int n;

    memset (&r, 0, sizeof r);
    r.s.l1_table_offset = v->l1_off;
    r.s.l1_size = v->l1_size;
    r.s.date_sec = v->date_sec;
    r.s.date_nsec = v->date_nsec;
    r.s.vm_clock_nsec = v->vm_clock_nsec;
    r.s.vm_state_size32 = (uint32_t) v->vm_state_size;
    r.s.vm_state_size = v->vm_state_size;
    r.s.extra_data_size = v->extra_data_size;
    r.s.disk_size = v->size;
    r.s.icount = v->icount;
    if (qk_snapshot_extra_format (&r.s, extra, sizeof extra) < 0)
      return -1;
    if (v->extra)
      memcpy (extra + 24, v->extra, v->extra_data_size - 24);
    r.id = v->id;
    r.name = v->name;
    r.extra = extra;
    n = qk_snapshot_format (&r, img + pos, (size_t) (L->end - pos));
    if (n < 0)
      return -1;
    pos += (uint64_t) n;
  }
  return 0;
}

static int
write_bitmaps (struct qk_builder *b, const struct layout *L, uint8_t *img)
{
  uint64_t pos = L->dir_off;

  for (size_t i = 0; i < b->n_bitmaps; i++) {
    const struct bitmap *m = &b->bitmaps[i];
    struct qk_bitmap_raw r;
    ssize_t n;

    for (uint32_t t = 0; t < m->table_size; t++) {
      uint64_t e, d = m->data_off[t];
      if (qk_bitmap_table_entry_make (d > 1 ? d : 0, d == 1, &e) < 0
          || qk_table_put (img + m->table_off, (size_t) m->table_size * 8,
                           t, e) < 0)
        return -1;
      if (d > 1)
        memcpy (img + d, m->bits + (uint64_t) t * b->cs, b->cs);
    }
    memset (&r, 0, sizeof r);
    r.b.table_offset = m->table_off;
    r.b.table_size = m->table_size;
    r.b.flags = m->flags;
    r.b.type = 1;
    r.b.granularity_bits = (uint8_t) m->gran_bits;
    r.name = m->name;
    n = qk_bitmap_format (&r, NULL, img + pos, (size_t) (L->end - pos));
    if (n < 0)
      return -1;
    pos += (uint64_t) n;
  }
  return 0;
}

/* The external data file: every guest cluster at its own offset; what
 * is not allocated reads as zeros there. */
static int
make_data_file (struct qk_builder *b, uint8_t **out, size_t *out_len)
{
  const struct view *v = &b->views[0];
  uint64_t len = 0;
  uint8_t *d;

  for (uint64_t c = 0; c < v->nclusters; c++)
    if (v->map[c].type == GT_DATA)
      len = (c + 1) * b->cs;
  if (b->data_file_raw)
    len = MAX (len, v->size);
  len = MIN (len, v->size);
  d = calloc (1, len ? len : 1);
  if (d == NULL) {
    set_error (ENOMEM, "calloc");
    return -1;
  }
  for (uint64_t c = 0; c < v->nclusters; c++) {
    const struct gent *g = &v->map[c];
    const struct obj *o = obj_of (b, g);
    uint64_t base = c * b->cs;
    if (g->type != GT_DATA || o->data == NULL)
      continue;
    for (uint64_t k = 0; k < b->cs && base + k < len; k++)
      if (!b->extl2 || (g->alloc & (1U << (k / (b->cs / 32)))))
        d[base + k] = o->data[k];
  }
  *out = d;
  *out_len = (size_t) len;
  return 0;
}

int
qk_builder_finish (struct qk_builder *b, uint8_t **image, size_t *image_len,
                   uint8_t **data_file, size_t *data_file_len)
{
  struct layout L;
  uint64_t per = (b->cs * 8) >> b->cfg.refcount_order;
  uint8_t *img = NULL;
  int r = -1;

  *image = NULL;
  *image_len = 0;
  if (data_file) {
    *data_file = NULL;
    *data_file_len = 0;
  }
  if (b->data_file && (b->n_views > 1 || data_file == NULL)) {
    set_error (EINVAL, "an external data file rules out snapshots (and its "
               "bytes need somewhere to go)");
    return -1;
  }
  memset (&L, 0, sizeof L);
  L.reft_clusters = MAX (1U, b->cfg.reftable_clusters);
  L.n_refblocks = 1;
  /* Grow the refcount structures until they cover the whole file. */
  for (;;) {
    uint64_t n;
    if (layout_once (b, &L) < 0)
      goto out;
    n = (L.end + b->cs - 1) / b->cs;
    if (L.n_refblocks * per < n) {
      L.n_refblocks = (n + per - 1) / per;
      continue;
    }
    if ((uint64_t) L.reft_clusters * b->cs / 8 < L.n_refblocks) {
      L.reft_clusters = (uint32_t) ((L.n_refblocks * 8 + b->cs - 1) / b->cs);
      continue;
    }
    break;
  }
  if (L.end > SIZE_MAX || L.end > (1ULL << 40)) {
    set_error (EFBIG, "image of %" PRIu64 " bytes", L.end);
    goto out;
  }
  if (count_refs (b, &L) < 0)
    goto out;
  img = calloc (1, (size_t) L.end);
  if (img == NULL) {
    set_error (ENOMEM, "calloc");
    goto out;
  }
  if (write_header (b, &L, img) < 0 || write_refcounts (b, &L, img) < 0)
    goto out;
  for (size_t vi = 0; vi < b->n_views; vi++)
    if (write_l1 (b, &L, img, &b->views[vi]) < 0)
      goto out;
  for (size_t i = 0; i < b->n_l2s; i++)
    if (write_l2 (b, &L, img, &b->l2s[i]) < 0)
      goto out;
  for (size_t i = 0; i < b->n_objs; i++) {
    const struct obj *o = &b->objs[i];
    if (o->refs == 0 || !o->placed)
      continue;
    if (o->compressed)
      memcpy (img + o->host, o->cdata, o->clen);
    else if (!b->data_file && o->data)
      memcpy (img + o->host, o->data, b->cs);
  }
  if (write_snapshots (b, &L, img) < 0 || write_bitmaps (b, &L, img) < 0)
    goto out;
  if (b->data_file && make_data_file (b, data_file, data_file_len) < 0)
    goto out;
  *image = img;
  *image_len = (size_t) L.end;
  img = NULL;
  r = 0;
 out:
  free (img);
  free (L.refcounts);
  return r;
}
