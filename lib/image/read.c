/* The guest view: cluster lookup, guest reads through the backing chain,
 * and block status / map with the meaning of `qemu-img map`. Reading never
 * needs refcounts. */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "image/image.h"

/* One run of guest bytes with the same kind of mapping. */
struct run {
  enum qk_subcluster_type type;
  uint64_t bytes;
  uint64_t host;      /* host offset of the first byte (where it has one) */
  uint64_t entry;     /* the L2 entry (compressed: the descriptor) */
};

static bool
has_host (enum qk_subcluster_type t)
{
  return t == QK_SUB_NORMAL || t == QK_SUB_ZERO_ALLOC
         || t == QK_SUB_UNALLOCATED_ALLOC;
}

/* Find the mapping of guest offset off through the L1 being read, for at
 * most max bytes. */
static int
lookup (struct qk_image *img, uint64_t off, uint64_t max, struct run *r)
{
  const struct qk_header *h = &img->hdr;
  unsigned cb = h->cluster_bits;
  uint64_t cs = h->cluster_size;
  uint64_t l2_span = (uint64_t) h->l2_entries << cb;
  uint64_t l1_idx = off / l2_span;
  uint64_t l2_off, span_end;
  const uint8_t *l2;
  bool extl2 = h->subclusters > 1;
  bool df = (h->incompatible_features & QK_INCOMPAT_DATA_FILE) != 0;
  uint64_t sc_size = cs / h->subclusters;
  uint64_t idx, pos;

  span_end = (l1_idx + 1) * l2_span - off;
  memset (r, 0, sizeof *r);
  if (l1_idx >= img->rd_l1_count
      || (l2_off = img->rd_l1[l1_idx] & QK_L1E_OFFSET_MASK) == 0) {
    /* Unallocated up to the next L1 entry with an L2 table (past the L1
     * table, to the end): one run, not one per L2 table, so that a huge
     * sparse disk is mapped in few steps. */
    uint64_t i = l1_idx + 1, bytes = span_end;
    while (bytes < max) {
      if (i >= img->rd_l1_count) {
        bytes = max;
        break;
      }
      if (img->rd_l1[i] & QK_L1E_OFFSET_MASK)
        break;
      bytes += l2_span;
      i++;
    }
    r->type = QK_SUB_UNALLOCATED_PLAIN;
    r->bytes = MIN (bytes, max);
    return 0;
  }
  if (max > span_end)
    max = span_end;
  if (!IS_ALIGNED (l2_off, cs)) {
    set_error (EBADMSG, "L2 table offset 0x%" PRIx64 " for L1[%" PRIu64 "] "
               "is not cluster aligned", l2_off, l1_idx);
    return -1;
  }
  l2 = qk_image_l2 (img, l2_off);
  if (l2 == NULL)
    return -1;

  idx = (off >> cb) & (h->l2_entries - 1);
  pos = off;
  while (pos - off < max && idx < h->l2_entries) {
    const uint8_t *e = l2 + idx * h->l2_entry_size;
    /* A run of unallocated clusters (entries of 0, no subclusters), the
     * most common run: one test an entry, what the general code below
     * makes of them. */
    if (!extl2 && be64_get (e) == 0
        && (pos == off || r->type == QK_SUB_UNALLOCATED_PLAIN)) {
      r->type = QK_SUB_UNALLOCATED_PLAIN;
      pos += cs - (pos & (cs - 1));
      idx++;
      continue;
    }
    uint64_t entry = be64_get (e);
    uint64_t bitmap = extl2 ? be64_get (e + 8) : 0;
    uint64_t in_cluster = pos & (cs - 1);
    unsigned sc = in_cluster / sc_size;
    enum qk_subcluster_type t = qk_l2_subcluster_type (entry, bitmap, sc,
                                                       extl2, df);
    uint64_t host = 0, step;

    if (has_host (t)) {
      uint64_t hc = entry & QK_L2E_OFFSET_MASK;
      if (!IS_ALIGNED (hc, cs)) {
        if (pos != off)
          break;
        set_error (EBADMSG, "cluster offset 0x%" PRIx64 " for guest offset "
                   "0x%" PRIx64 " is not cluster aligned (L2 table 0x%"
                   PRIx64 ", index %" PRIu64 ")", hc, pos, l2_off, idx);
        return -1;
      }
      host = hc + in_cluster;
    }
    if (t == QK_SUB_INVALID && pos == off) {
      set_error (EBADMSG, "invalid subcluster allocation bitmap 0x%016" PRIx64
                 " for guest offset 0x%" PRIx64, bitmap, pos);
      return -1;
    }
    if (pos == off) {
      r->type = t;
      r->host = host;
      r->entry = entry;
    }
    else if (t != r->type || t == QK_SUB_COMPRESSED || t == QK_SUB_INVALID
             || (has_host (t) && host != r->host + (pos - off)))
      break;
    if (extl2 && t != QK_SUB_COMPRESSED)
      step = sc_size - (in_cluster & (sc_size - 1));
    else
      step = cs - in_cluster;
    pos += step;
    if ((pos & (cs - 1)) == 0)
      idx++;
    if (t == QK_SUB_COMPRESSED)
      break;
  }
  r->bytes = MIN (pos - off, max);
  return 0;
}

static int
read_compressed (struct qk_image *img, uint64_t entry, uint8_t *dst,
                 uint64_t in_cluster, uint64_t n)
{
  const struct qk_header *h = &img->hdr;

  /* the buffers on the first compressed cluster read, not at every open
   * (3 cluster sizes: 6 MiB for 2 MiB clusters) */
  if (img->cbuf == NULL
      && ((img->cbuf = malloc (h->cluster_size)) == NULL
          || (img->cin = malloc (2 * h->cluster_size)) == NULL)) {
    free (img->cbuf);
    img->cbuf = NULL;
    set_error (ENOMEM, "malloc");
    return -1;
  }
  if (img->cbuf_entry != entry) {
    uint64_t coff, clen;
    qk_l2_compressed (entry, h->cluster_bits, &coff, &clen);
    if (clen > 2 * h->cluster_size)
      clen = 2 * h->cluster_size;
    img->cbuf_entry = 0;
    if (qk_source_read_zeropad (img->src, img->cin, clen, coff) < 0)
      return -1;
    if (qk_decompress (h->compression_type, img->cin, clen, img->cbuf,
                       h->cluster_size) < 0) {
      qk_internal_prefix_error ("compressed cluster at 0x%" PRIx64, coff);
      return -1;
    }
    img->cbuf_entry = entry;
  }
  memcpy (dst, img->cbuf + in_cluster, n);
  return 0;
}

static int read_chain (struct qk_image *img, uint8_t *buf, uint64_t len,
                       uint64_t off, bool active);

static int
read_backing (struct qk_image *img, uint8_t *buf, uint64_t len, uint64_t off)
{
  struct qk_image *b = img->backing;
  uint64_t bsize, n;

  if (b == NULL) {
    if (img->backing_name && !(img->unreadable == NULL)) {
      set_error (EIO, "%s: %s", img->filename, img->unreadable);
      return -1;
    }
    memset (buf, 0, len);
    return 0;
  }
  bsize = qk_image_virtual_size (b);
  n = off < bsize ? MIN (len, bsize - off) : 0;
  if (n && read_chain (b, buf, n, off, true) < 0)
    return -1;
  memset (buf + n, 0, len - n);
  return 0;
}

static int
read_chain (struct qk_image *img, uint8_t *buf, uint64_t len, uint64_t off,
            bool active)
{
  (void) active;
  if (!img->is_qcow2)
    return qk_source_read_zeropad (img->src, buf, len, off);

  while (len) {
    struct run r;
    if (lookup (img, off, len, &r) < 0)
      return -1;
    switch (r.type) {
    case QK_SUB_NORMAL:
      if (qk_source_read_zeropad (img->data, buf, r.bytes, r.host) < 0)
        return -1;
      break;
    case QK_SUB_ZERO_PLAIN:
    case QK_SUB_ZERO_ALLOC:
      memset (buf, 0, r.bytes);
      break;
    case QK_SUB_UNALLOCATED_PLAIN:
    case QK_SUB_UNALLOCATED_ALLOC:
      if (read_backing (img, buf, r.bytes, off) < 0)
        return -1;
      break;
    case QK_SUB_COMPRESSED:
      /* As QEMU (qcow2_get_host_offset): no compressed cluster with an
       * external data file. Read from the image file, it would be bytes
       * the checker counts as nobody's, and a repair could write its
       * fixes over them. */
      if (img->hdr.incompatible_features & QK_INCOMPAT_DATA_FILE) {
        set_error (EIO, "compressed cluster entry for guest offset 0x%" PRIx64
                   " in an image with an external data file", off);
        return -1;
      }
      if (read_compressed (img, r.entry, buf, off & (img->hdr.cluster_size - 1),
                           r.bytes) < 0)
        return -1;
      break;
    case QK_SUB_INVALID:
      set_error (EBADMSG, "invalid subcluster bitmap");
      return -1;
    }
    buf += r.bytes;
    off += r.bytes;
    len -= r.bytes;
  }
  return 0;
}

/* api: the public call to name in the error. */
static int
readable (const struct qk_image *img, const char *api)
{
  if (img->unreadable) {
    qk_internal_set_error (ENOTSUP, api, "%s: %s", img->filename,
                           img->unreadable);
    return -1;
  }
  if (img->is_qcow2 && !img->l1_ok) {
    qk_internal_set_error (EBADMSG, api, "%s: the L1 table cannot be read",
                           img->filename);
    return -1;
  }
  return 0;
}

QK_EXPORT int
qk_image_read (struct qk_image *img, void *buf, size_t len, uint64_t offset)
{
  uint64_t size = img->is_qcow2 ? img->rd_size : qk_image_virtual_size (img);

  if (readable (img, __func__) < 0)
    return -1;
  if (offset > size || len > size - offset) {
    set_error (EINVAL, "read of %zu bytes at %" PRIu64 " is beyond the "
               "virtual size %" PRIu64, len, offset, size);
    return -1;
  }
  return read_chain (img, buf, len, offset, true);
}

QK_EXPORT int
qk_image_select_snapshot (struct qk_image *img, const char *name_or_id)
{
  uint64_t *l1;
  uint32_t n;
  size_t i;

  if (!img->is_qcow2) {
    set_error (EINVAL, "%s is not a qcow2 image", img->filename);
    return -1;
  }
  free (img->snap_l1);
  img->snap_l1 = NULL;
  img->rd_l1 = img->l1;
  img->rd_l1_count = img->l1_count;
  img->rd_size = img->hdr.size;
  img->cbuf_entry = 0;
  if (name_or_id == NULL)
    return 0;
  /* QEMU looks up by ID first, then by name. */
  for (i = 0; i < img->n_snaps; i++)
    if (strcmp (img->snaps[i].s.id, name_or_id) == 0)
      break;
  if (i == img->n_snaps)
    for (i = 0; i < img->n_snaps; i++)
      if (strcmp (img->snaps[i].s.name, name_or_id) == 0)
        break;
  if (i == img->n_snaps) {
    set_error (ENOENT, "%s: no snapshot '%s'", img->filename, name_or_id);
    return -1;
  }
  if (qk_image_read_snapshot_l1 (img, i, &l1, &n) < 0)
    return -1;
  img->snap_l1 = l1;
  img->rd_l1 = l1;
  img->rd_l1_count = n;
  if (img->snaps[i].s.has_disk_size)
    img->rd_size = img->snaps[i].s.disk_size;
  return 0;
}

/* ---- block status, as QEMU's bdrv_co_block_status ---- */

#define BS_DATA        0x01
#define BS_ZERO        0x02
#define BS_OFFSET      0x04
#define BS_ALLOCATED   0x10
#define BS_COMPRESSED  0x40

struct bstat {
  unsigned flags;
  uint64_t pnum;
  uint64_t map;
  const char *file;
};

/* qcow2_detect_metadata_preallocation: many clusters refcounted but few
 * allocated on the host means preallocated metadata over a sparse file. */
static bool
metadata_prealloc (struct qk_image *img)
{
  if (img->meta_prealloc < 0) {
    uint64_t cs = img->hdr.cluster_size;
    int64_t real_alloc = img->src->allocated;
    uint64_t end, count = 0, threshold, real;

    img->meta_prealloc = 0;
    if (real_alloc < 0)
      return false;
    real = (uint64_t) real_alloc / cs;
    threshold = MAX (real * 10 / 9, real + 2);
    end = DIV_ROUND_UP (img->src->size, cs);
    /* As QEMU: at least threshold refcounted clusters (>=, not >). */
    for (uint64_t i = 0; i < end && count < threshold; i++) {
      uint64_t rc;
      if (qk_image_refcount (img, i, &rc) < 0)
        return false;
      count += rc != 0;
    }
    img->meta_prealloc = count >= threshold;
  }
  return img->meta_prealloc == 1;
}

static int
block_status (struct qk_image *img, uint64_t off, uint64_t bytes,
              struct bstat *b)
{
  uint64_t size = qk_image_virtual_size (img);

  memset (b, 0, sizeof *b);
  if (off + bytes > size)
    bytes = size - off;
  if (!img->is_qcow2) {
    /* raw format over file-posix */
    int r = img->src->ops->block_status (img->src, off, bytes, &b->pnum);
    b->flags = (r == 0 ? BS_ZERO : BS_DATA) | BS_OFFSET | BS_ALLOCATED;
    b->map = off;
    b->file = img->src->name;
    return 0;
  }
  {
    struct run r;
    if (lookup (img, off, bytes, &r) < 0)
      return -1;
    b->pnum = r.bytes;
    if (has_host (r.type)) {
      b->flags |= BS_OFFSET;
      b->map = r.host;
      b->file = img->data->name;
    }
    if (r.type == QK_SUB_ZERO_PLAIN || r.type == QK_SUB_ZERO_ALLOC)
      b->flags |= BS_ZERO;
    else if (r.type == QK_SUB_NORMAL || r.type == QK_SUB_COMPRESSED)
      b->flags |= BS_DATA;
    if (r.type == QK_SUB_COMPRESSED)
      b->flags |= BS_COMPRESSED;

    if (b->flags & (BS_DATA | BS_ZERO))
      b->flags |= BS_ALLOCATED;
    else if (img->backing == NULL)
      b->flags |= BS_ZERO;
    else if (off >= qk_image_virtual_size (img->backing))
      b->flags |= BS_ZERO;

    if (r.type == QK_SUB_NORMAL && metadata_prealloc (img)) {
      uint64_t fp;
      int s = img->data->ops->block_status (img->data, b->map, b->pnum, &fp);
      if (s >= 0) {
        if (b->map >= img->data->size)
          b->flags |= BS_ZERO;
        else {
          b->pnum = fp;
          if (s == 0)
            b->flags |= BS_ZERO;
        }
      }
    }
  }
  return 0;
}

/* qemu-img's get_block_status: walk down the chain until something is
 * allocated. */
static int
chain_status (struct qk_image *img, uint64_t off, uint64_t bytes,
              struct qk_extent *e)
{
  struct qk_image *bs = img;
  unsigned depth = 0;
  struct bstat b;

  for (;;) {
    if (block_status (bs, off, bytes, &b) < 0)
      return -1;
    bytes = b.pnum;
    if (b.flags & (BS_ZERO | BS_DATA))
      break;
    if (bs->backing == NULL) {
      if (bs->backing_name) {
        set_error (EIO, "%s: backing file is not available: %s", bs->filename,
                   bs->unreadable ? bs->unreadable : "not opened");
        return -1;
      }
      b.flags = 0;
      break;
    }
    bs = bs->backing;
    depth++;
  }
  memset (e, 0, sizeof *e);
  e->start = off;
  e->length = bytes;
  e->depth = depth;
  e->present = (b.flags & BS_ALLOCATED) != 0;
  e->zero = (b.flags & BS_ZERO) != 0;
  e->data = (b.flags & BS_DATA) != 0;
  e->compressed = (b.flags & BS_COMPRESSED) != 0;
  e->has_offset = (b.flags & BS_OFFSET) != 0;
  e->offset = e->has_offset ? b.map : 0;
  e->filename = e->has_offset ? b.file : NULL;
  return 0;
}

static bool
mergeable (const struct qk_extent *c, const struct qk_extent *n)
{
  if (c->length == 0)
    return false;
  if (c->zero != n->zero || c->data != n->data || c->compressed != n->compressed
      || c->depth != n->depth || c->present != n->present
      || !c->filename != !n->filename || c->has_offset != n->has_offset)
    return false;
  if (c->filename && strcmp (c->filename, n->filename) != 0)
    return false;
  if (c->has_offset && c->offset + c->length != n->offset)
    return false;
  return true;
}

QK_EXPORT int
qk_image_map (struct qk_image *img, uint64_t start, uint64_t length,
              qk_extent_fn fn, void *opaque)
{
  uint64_t size = qk_image_virtual_size (img);
  uint64_t end;
  struct qk_extent cur, next;

  if (img->is_qcow2 && readable (img, __func__) < 0)
    return -1;
  if (start > size)
    start = size;
  end = (length > size - start) ? size : start + length;
  memset (&cur, 0, sizeof cur);
  cur.start = start;
  while (cur.start + cur.length < end) {
    uint64_t off = cur.start + cur.length;
    /* No 1 GiB steps as qemu-img: lookup() bounds each step by an L2
     * table, or by a run of unallocated L1 entries, and adjacent extents
     * are merged anyway. */
    uint64_t n = end - off;
    if (chain_status (img, off, n, &next) < 0)
      return -1;
    if (next.length == 0) {
      set_error (EIO, "block status made no progress at %" PRIu64, off);
      return -1;
    }
    if (mergeable (&cur, &next)) {
      cur.length += next.length;
      continue;
    }
    if (cur.length > 0) {
      int r = fn (opaque, &cur);
      if (r)
        return r;
    }
    cur = next;
  }
  if (cur.length > 0)
    return fn (opaque, &cur);
  return 0;
}
