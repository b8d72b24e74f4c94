/* Undo journal layer (io/io.h): every byte of the source below that a
 * writer overwrites (or cuts off with a truncate) is first saved in a
 * journal file, so qk_undo_replay can put the image back exactly as it
 * was when the layer was made.
 *
 * Journal file: a 512-byte header, then records.
 *   header: 0 magic "QKUNDO1\n" | 8 u32 version (1) | 12 u32 header size
 *     (512) | 16 u32 state (1 active, 2 applied) | 20 u32 flags (1: the
 *     file identity is known) | 24 uuid[16] (random) | 40 u64 image size
 *     | 48 u64 device | 56 u64 inode | 64 u32 window (65536) | 72
 *     sha256 (size, first and last window bytes of the image) | 104 u16
 *     name length | 106 name (the image's, for messages) | 508 u32 crc32
 *     of bytes 0..507. Big-endian.
 *   record: 0 u32 "QKUR" | 4 u32 length | 8 u64 image offset | 16 u32
 *     crc32 of the data | 20 u32 crc32 of bytes 0..19 seeded with the
 *     uuid's crc32 | 24 data (the old bytes).
 *
 * Order of writes and fsyncs, and what a crash after each step leaves:
 *   1. create the journal (O_CREAT | O_EXCL | O_NOFOLLOW in dirfd), write
 *      the header, fsync it, fsync the directory. Before the end of this
 *      step no byte of the image has been written: a crash leaves the
 *      image untouched and a journal that is missing, empty or has no
 *      records (replaying it changes nothing).
 *   2. for each pwrite: the ranges of it below the original size not yet
 *      captured are read from the image and appended as records; then the
 *      journal is fdatasynced; only then is the image written. A crash
 *      before the fdatasync returns leaves the image unwritten for this
 *      pwrite, and possibly a torn record at the end of the journal, which
 *      replay recognises (bad magic or crc) and stops at. A crash after it
 *      leaves the records durable, whatever part of the image write made
 *      it: replay restores them.
 *   3. flush: the image's own flush (fdatasync); the journal is already
 *      durable.
 * Every record holds bytes as they were before the layer wrote anything
 * (a byte is captured only while the interval set says it has never been
 * written), so stale or repeated records are harmless: replaying any of
 * them writes back the original bytes. Writes past the original size are
 * not captured; replay truncates the image back to that size.
 *
 * A failed journal write or fdatasync refuses that image write; after a
 * failed fdatasync (the kernel may have dropped the pages) the layer
 * refuses every later write with EIO.
 *
 * Replay checks that the journal is meant for this image (size, the file
 * identity, and the sha256 of the first and last 64 KiB as they will be
 * after the replay), writes the records back newest first, truncates to
 * the old size, flushes the image, and only then marks the journal
 * applied and fsyncs it. A crash before the mark leaves a journal whose
 * replay is done again, with the same result; after it, a second replay
 * is refused. */
#include <config.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "internal.h"
#include "io/io.h"

#define JMAGIC "QKUNDO1\n"
#define JVERSION 1
#define HDR_SIZE 512
#define REC_MAGIC 0x514b5552u   /* "QKUR" */
#define REC_HDR 24
#define REC_MAX (1u << 20)      /* bytes of data per record */
#define WINDOW 65536u
#define NAME_MAX_J 400
enum { STATE_ACTIVE = 1, STATE_APPLIED = 2 };

struct range {
  uint64_t start, end;
};

struct undo {
  int jfd;
  char *jname;
  uint64_t jend;              /* where the next record goes */
  uint64_t orig_size;
  uint32_t seed;              /* crc32 of the uuid */
  bool broken;
  struct range *r;            /* captured: sorted, disjoint, not touching */
  size_t n, cap;
  uint8_t *buf;               /* REC_HDR + REC_MAX */
};

struct jheader {
  uint32_t state, flags;
  uint8_t uuid[16];
  uint64_t size, dev, ino;
  uint8_t ident[32];
  char name[NAME_MAX_J + 1];
};

/* ---- the interval set of captured bytes ---- */

/* First range whose end is >= a (ranges that touch a merge with it). */
static size_t
iv_find (const struct undo *u, uint64_t a)
{
  size_t lo = 0, hi = u->n;

  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (u->r[mid].end < a)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* Add [a, b); the caller made room for one more range. */
static void
iv_add (struct undo *u, uint64_t a, uint64_t b)
{
  size_t lo = iv_find (u, a), hi = lo;

  while (hi < u->n && u->r[hi].start <= b) {
    a = MIN (a, u->r[hi].start);
    b = MAX (b, u->r[hi].end);
    hi++;
  }
  if (hi == lo) {
    memmove (u->r + lo + 1, u->r + lo, (u->n - lo) * sizeof *u->r);
    u->n++;
  } else {
    memmove (u->r + lo + 1, u->r + hi, (u->n - hi) * sizeof *u->r);
    u->n -= hi - lo - 1;
  }
  u->r[lo].start = a;
  u->r[lo].end = b;
}

/* ---- journal writing ---- */

static uint32_t
crc (uint32_t seed, const void *p, size_t len)
{
  return crc32 (seed, p, len);
}

static int
append_record (struct qk_source *s, uint64_t off, size_t len)
{
  struct undo *u = s->priv;
  uint8_t *h = u->buf, *data = u->buf + REC_HDR;

  if (qk_source_read_exact (s->below, data, len, off, "bytes to save") < 0)
    return -1;
  be32_put (h, REC_MAGIC);
  be32_put (h + 4, len);
  be64_put (h + 8, off);
  be32_put (h + 16, crc (0, data, len));
  be32_put (h + 20, crc (u->seed, h, 20));
  if (qk_full_pwrite (u->jfd, h, REC_HDR + len, (off_t) u->jend) < 0) {
    set_error (errno, "%s: append to the undo journal", u->jname);
    return -1;
  }
  u->jend += REC_HDR + len;
  return 0;
}

/* Save the bytes of [a, b) never captured, then make the journal durable.
 * After 0, every byte of [a, b) below the original size is in a durable
 * record. */
static int
capture (struct qk_source *s, uint64_t a, uint64_t b)
{
  struct undo *u = s->priv;
  uint64_t cur, jstart = u->jend;
  size_t i;
  bool appended = false;
  struct range *nr;

  if (u->broken) {
    set_error (EIO, "%s: the undo journal could not be synced earlier; "
               "refusing to write more", u->jname);
    return -1;
  }
  b = MIN (b, u->orig_size);
  if (a >= b)
    return 0;
  nr = qk_grow (u->r, &u->cap, u->n + 1, sizeof *u->r);
  if (nr == NULL)
    return -1;
  u->r = nr;
  for (cur = a, i = iv_find (u, a); cur < b;) {
    uint64_t gend;
    if (i < u->n && u->r[i].start <= cur) {
      cur = MAX (cur, u->r[i].end);
      i++;
      continue;
    }
    gend = i < u->n ? MIN (u->r[i].start, b) : b;
    while (cur < gend) {
      size_t k = MIN (gend - cur, (uint64_t) REC_MAX);
      if (append_record (s, cur, k) < 0) {
        u->jend = jstart;   /* the torn tail gets overwritten */
        return -1;
      }
      appended = true;
      cur += k;
    }
  }
  if (appended && fdatasync (u->jfd) < 0) {
    set_error (errno, "%s: fdatasync the undo journal", u->jname);
    u->broken = true;
    return -1;
  }
  iv_add (u, a, b);
  return 0;
}

/* ---- the layer ---- */

static int
undo_pwrite (struct qk_source *s, const void *buf, size_t len, uint64_t off)
{
  uint64_t end;
  int r;

  if (ADD_OVERFLOW (off, len, &end)) {
    set_error (EFBIG, "%s: write at %" PRIu64 " out of range", s->name, off);
    return -1;
  }
  if (capture (s, off, end) < 0)
    return -1;
  r = qk_source_pwrite (s->below, buf, len, off);
  qk_source_layer_sync (s);
  return r;
}

static int
undo_truncate (struct qk_source *s, uint64_t size)
{
  int r;

  if (size < s->below->size && capture (s, size, s->below->size) < 0)
    return -1;
  r = qk_source_truncate (s->below, size);
  qk_source_layer_sync (s);
  return r;
}

static void
undo_close (struct qk_source *s)
{
  struct undo *u = s->priv;

  if (u == NULL)
    return;
  if (u->jfd >= 0)
    close (u->jfd);
  free (u->jname);
  free (u->r);
  free (u->buf);
  free (u);
}

static const struct qk_source_ops undo_ops = {
  .pread = qk_source_below_pread,
  .block_status = qk_source_below_block_status,
  .pwrite = undo_pwrite,
  .truncate = undo_truncate,
  .close = undo_close,
};

/* sha256 (size, bytes [0, W), bytes [size - W, size)) with W = min (size,
 * WINDOW); head and tail hold those bytes. */
static void
identity (uint64_t size, const uint8_t *head, const uint8_t *tail,
          uint8_t out[32])
{
  struct qk_sha256 c;
  uint8_t be[8];
  size_t w = MIN (size, (uint64_t) WINDOW);

  qk_sha256_init (&c);
  be64_put (be, size);
  qk_sha256_update (&c, be, 8);
  qk_sha256_update (&c, head, w);
  qk_sha256_update (&c, tail, w);
  qk_sha256_final (&c, out);
}

static void
header_format (uint8_t *h, const struct jheader *jh)
{
  size_t nl = strlen (jh->name);

  memset (h, 0, HDR_SIZE);
  memcpy (h, JMAGIC, 8);
  be32_put (h + 8, JVERSION);
  be32_put (h + 12, HDR_SIZE);
  be32_put (h + 16, jh->state);
  be32_put (h + 20, jh->flags);
  memcpy (h + 24, jh->uuid, 16);
  be64_put (h + 40, jh->size);
  be64_put (h + 48, jh->dev);
  be64_put (h + 56, jh->ino);
  be32_put (h + 64, WINDOW);
  memcpy (h + 72, jh->ident, 32);
  be16_put (h + 104, nl);
  memcpy (h + 106, jh->name, nl);
  be32_put (h + 508, crc (0, h, 508));
}

static int
header_parse (const uint8_t *h, struct jheader *jh, const char *jname)
{
  size_t nl = be16_get (h + 104);

  if (memcmp (h, JMAGIC, 8) != 0) {
    set_error (EBADMSG, "%s is not a qcowkit undo journal", jname);
    return -1;
  }
  if (be32_get (h + 8) != JVERSION || be32_get (h + 12) != HDR_SIZE
      || be32_get (h + 64) != WINDOW) {
    set_error (ENOTSUP, "%s: undo journal version %" PRIu32 " is not "
               "supported", jname, be32_get (h + 8));
    return -1;
  }
  if (be32_get (h + 508) != crc (0, h, 508) || nl > NAME_MAX_J) {
    set_error (EBADMSG, "%s: the undo journal header is damaged (checksum)",
               jname);
    return -1;
  }
  jh->state = be32_get (h + 16);
  jh->flags = be32_get (h + 20);
  memcpy (jh->uuid, h + 24, 16);
  jh->size = be64_get (h + 40);
  jh->dev = be64_get (h + 48);
  jh->ino = be64_get (h + 56);
  memcpy (jh->ident, h + 72, 32);
  memcpy (jh->name, h + 106, nl);
  jh->name[nl] = '\0';
  return 0;
}

/* Read the windows of src into head and tail (zeros past its end). */
static int
read_windows (struct qk_source *src, uint64_t size, uint8_t *head,
              uint8_t *tail)
{
  size_t w = MIN (size, (uint64_t) WINDOW);

  if (qk_source_read_zeropad (src, head, w, 0) < 0
      || qk_source_read_zeropad (src, tail, w, size - w) < 0)
    return -1;
  return 0;
}

struct qk_source *
qk_source_undo (struct qk_source *below, int dirfd, const char *leaf,
                unsigned flags)
{
  struct qk_source *s;
  struct undo *u;
  struct jheader jh;
  uint8_t h[HDR_SIZE], *head = NULL, *tail = NULL;

  if (!qk_leaf_ok (leaf)) {
    set_error (EINVAL, "'%s' is not a file name in its directory",
               leaf ? leaf : "");
    return qk_source_layer_abandon (below, flags);
  }
  s = qk_source_layer_new (below, &undo_ops, "undo", flags);
  if (s == NULL)
    return NULL;
  u = calloc (1, sizeof *u);
  if (u == NULL) {
    set_error (ENOMEM, "calloc");
    qk_source_close (s);
    return NULL;
  }
  u->jfd = -1;
  s->priv = u;
  if (!s->writable) {
    set_error (EROFS, "%s: an undo journal over a read-only source",
               s->name);
    goto fail;
  }
  u->orig_size = below->size;
  u->buf = malloc (REC_HDR + REC_MAX);
  u->jname = strdup (leaf);
  head = malloc (WINDOW);
  tail = malloc (WINDOW);
  if (u->buf == NULL || u->jname == NULL || head == NULL || tail == NULL) {
    set_error (ENOMEM, "malloc");
    goto fail;
  }
  memset (&jh, 0, sizeof jh);
  jh.state = STATE_ACTIVE;
  if (below->has_id) {
    jh.flags = 1;
    jh.dev = below->dev;
    jh.ino = below->ino;
  }
  jh.size = u->orig_size;
  if (getrandom (jh.uuid, sizeof jh.uuid, 0) != sizeof jh.uuid) {
    set_error (errno, "getrandom");
    goto fail;
  }
  snprintf (jh.name, sizeof jh.name, "%s", below->name);
  if (read_windows (below, u->orig_size, head, tail) < 0)
    goto fail;
  identity (u->orig_size, head, tail, jh.ident);
  header_format (h, &jh);
  u->seed = crc (0, jh.uuid, 16);

  u->jfd = openat (dirfd, leaf, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW
                   | O_CLOEXEC, 0600);
  if (u->jfd < 0) {
    set_error (errno, "create the undo journal %s", leaf);
    goto fail;
  }
  if (qk_full_pwrite (u->jfd, h, HDR_SIZE, 0) < 0) {
    set_error (errno, "%s: write the undo journal", leaf);
    goto fail_unlink;
  }
  if (fsync (u->jfd) < 0) {
    set_error (errno, "%s: fsync the undo journal", leaf);
    goto fail_unlink;
  }
  if (qk_fsync_dir (dirfd) < 0)
    goto fail_unlink;
  u->jend = HDR_SIZE;
  free (head);
  free (tail);
  return s;

fail_unlink:
  unlinkat (dirfd, leaf, 0);
fail:
  free (head);
  free (tail);
  qk_source_close (s);
  return NULL;
}

/* ---- replay ---- */

struct rec {
  uint64_t off, pos;
  uint32_t len;
};

/* The valid records, up to the first torn or foreign one. */
static int
scan_records (int jfd, const char *jname, uint32_t seed, uint64_t size,
              uint8_t *buf, struct rec **recs, size_t *nrecs)
{
  struct stat st;
  uint64_t pos = HDR_SIZE;
  size_t cap = 0;

  *recs = NULL;
  *nrecs = 0;
  if (fstat (jfd, &st) < 0) {
    set_error (errno, "fstat %s", jname);
    return -1;
  }
  while (pos + REC_HDR <= (uint64_t) st.st_size) {
    uint8_t h[REC_HDR];
    uint32_t len;
    uint64_t off;
    ssize_t r = pread (jfd, h, REC_HDR, (off_t) pos);
    struct rec *nr;

    if (r < 0) {
      set_error (errno, "read %s", jname);
      goto fail;
    }
    if (r < REC_HDR || be32_get (h) != REC_MAGIC
        || be32_get (h + 20) != crc (seed, h, 20))
      break;
    len = be32_get (h + 4);
    off = be64_get (h + 8);
    if (len == 0 || len > REC_MAX || off > size || len > size - off) {
      set_error (EBADMSG, "%s: a record at %" PRIu64 " saves bytes outside "
                 "the image (%" PRIu32 " at %" PRIu64 ")", jname, pos, len,
                 off);
      goto fail;
    }
    if (pos + REC_HDR + len > (uint64_t) st.st_size)
      break;
    r = pread (jfd, buf, len, (off_t) (pos + REC_HDR));
    if (r < 0) {
      set_error (errno, "read %s", jname);
      goto fail;
    }
    if ((size_t) r < len || be32_get (h + 16) != crc (0, buf, len))
      break;
    nr = qk_grow (*recs, &cap, *nrecs + 1, sizeof **recs);
    if (nr == NULL)
      goto fail;
    *recs = nr;
    nr[*nrecs].off = off;
    nr[*nrecs].pos = pos + REC_HDR;
    nr[*nrecs].len = len;
    ++*nrecs;
    pos += REC_HDR + len;
  }
  return 0;

fail:
  free (*recs);
  *recs = NULL;
  return -1;
}

/* Copy into win (image bytes [woff, woff + wlen)) what record r saves. */
static int
overlay (int jfd, const char *jname, const struct rec *r, uint8_t *win,
         uint64_t woff, size_t wlen)
{
  uint64_t a = MAX (r->off, woff), b = MIN (r->off + r->len, woff + wlen);

  if (a >= b)
    return 0;
  if (pread (jfd, win + (a - woff), b - a, (off_t) (r->pos + (a - r->off)))
      != (ssize_t) (b - a)) {
    set_error (errno ? errno : EIO, "read %s", jname);
    return -1;
  }
  return 0;
}

int
qk_undo_replay (int dirfd, const char *leaf, struct qk_source *image,
                unsigned flags)
{
  int jfd = -1, ret = -1;
  uint8_t h[HDR_SIZE], ident[32], *buf = NULL, *head = NULL, *tail = NULL;
  struct jheader jh;
  struct rec *recs = NULL;
  size_t nrecs = 0, w;
  ssize_t r;

  if (!qk_leaf_ok (leaf)) {
    set_error (EINVAL, "'%s' is not a file name in its directory",
               leaf ? leaf : "");
    return -1;
  }
  jfd = openat (dirfd, leaf, O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
  if (jfd < 0) {
    set_error (errno, "open the undo journal %s", leaf);
    return -1;
  }
  r = pread (jfd, h, HDR_SIZE, 0);
  if (r < 0) {
    set_error (errno, "read %s", leaf);
    goto out;
  }
  if (r < HDR_SIZE) {
    set_error (EBADMSG, "%s is not a qcowkit undo journal (%zd bytes)", leaf,
               r);
    goto out;
  }
  if (header_parse (h, &jh, leaf) < 0)
    goto out;
  if (jh.state == STATE_APPLIED) {
    set_error (EALREADY, "%s was already replayed onto %s: replaying it "
               "again would undo what was written since", leaf, jh.name);
    goto out;
  }
  if (jh.state != STATE_ACTIVE) {
    set_error (EBADMSG, "%s: unknown journal state %" PRIu32, leaf,
               jh.state);
    goto out;
  }
  if ((jh.flags & 1) && image->has_id && !(flags & QK_UNDO_IGNORE_ID)
      && (jh.dev != (uint64_t) image->dev || jh.ino != (uint64_t) image->ino)) {
    set_error (EINVAL, "%s was made for %s (device %" PRIu64 ", inode %"
               PRIu64 "), not for %s (device %ju, inode %ju)", leaf,
               jh.name, jh.dev, jh.ino, image->name,
               (uintmax_t) image->dev, (uintmax_t) image->ino);
    goto out;
  }
  buf = malloc (REC_MAX);
  head = malloc (WINDOW);
  tail = malloc (WINDOW);
  if (buf == NULL || head == NULL || tail == NULL) {
    set_error (ENOMEM, "malloc");
    goto out;
  }
  if (scan_records (jfd, leaf, crc (0, jh.uuid, 16), jh.size, buf, &recs,
                    &nrecs) < 0)
    goto out;

  /* what the first and last window will hold after the replay */
  w = MIN (jh.size, (uint64_t) WINDOW);
  if (read_windows (image, jh.size, head, tail) < 0)
    goto out;
  for (size_t i = 0; i < nrecs; i++)
    if (overlay (jfd, leaf, &recs[i], head, 0, w) < 0
        || overlay (jfd, leaf, &recs[i], tail, jh.size - w, w) < 0)
      goto out;
  identity (jh.size, head, tail, ident);
  if (memcmp (ident, jh.ident, 32) != 0) {
    set_error (EINVAL, "%s does not belong to %s: after the replay its "
               "first and last %zu bytes would not be those of %s "
               "(%" PRIu64 " bytes)", leaf, image->name, w, jh.name,
               jh.size);
    goto out;
  }

  /* newest first */
  for (size_t i = nrecs; i-- > 0;) {
    r = pread (jfd, buf, recs[i].len, (off_t) recs[i].pos);
    if (r != (ssize_t) recs[i].len) {
      set_error (r < 0 ? errno : EIO, "read %s", leaf);
      goto out;
    }
    if (qk_source_pwrite (image, buf, recs[i].len, recs[i].off) < 0)
      goto out;
  }
  if (image->size != jh.size && qk_source_truncate (image, jh.size) < 0)
    goto out;
  if (qk_source_flush (image) < 0)
    goto out;

  jh.state = STATE_APPLIED;
  header_format (h, &jh);
  if (qk_full_pwrite (jfd, h, HDR_SIZE, 0) < 0) {
    set_error (errno, "%s: mark the journal applied", leaf);
    goto out;
  }
  if (fsync (jfd) < 0) {
    set_error (errno, "%s: fsync", leaf);
    goto out;
  }
  ret = 0;

out:
  free (recs);
  free (buf);
  free (head);
  free (tail);
  if (jfd >= 0)
    close (jfd);
  return ret;
}
