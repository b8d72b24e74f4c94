/* Compressed cluster payloads: raw deflate (window -12) and zstd, as
 * QEMU's qcow2-threads.c. */
#include <config.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "format/format.h"

/* One inflate stream and one zstd context per thread, made on first use
 * and reset for each cluster: an inflateInit2 per cluster allocated its
 * state and its window (39 KiB) for every compressed cluster read.
 * Freed when the thread exits (the key's destructor), and at exit for
 * the thread that calls exit. */
struct dstate {
  z_stream z;
  bool z_ok;
  ZSTD_DCtx *dctx;
};

static pthread_key_t dkey;
static pthread_once_t dkey_once = PTHREAD_ONCE_INIT;
static bool dkey_ok;

static void
dstate_free (void *p)
{
  struct dstate *d = p;

  if (d == NULL)
    return;
  if (d->z_ok)
    inflateEnd (&d->z);
  ZSTD_freeDCtx (d->dctx);
  free (d);
}

static void
dkey_init (void)
{
  dkey_ok = pthread_key_create (&dkey, dstate_free) == 0;
}

/* At exit or when the library is unloaded: the calling thread's state,
 * and the key (a later thread exit must not call into unloaded code). */
__attribute__ ((destructor)) static void
dkey_fini (void)
{
  if (dkey_ok) {
    dstate_free (pthread_getspecific (dkey));
    pthread_key_delete (dkey);
    dkey_ok = false;
  }
}

static struct dstate *
dstate (void)
{
  struct dstate *d;

  pthread_once (&dkey_once, dkey_init);
  if (!dkey_ok) {
    set_error (ENOMEM, "pthread_key_create");
    return NULL;
  }
  d = pthread_getspecific (dkey);
  if (d == NULL) {
    d = calloc (1, sizeof *d);
    if (d == NULL || pthread_setspecific (dkey, d) != 0) {
      free (d);
      set_error (ENOMEM, "calloc");
      return NULL;
    }
  }
  return d;
}

static int
inflate_cluster (const uint8_t *in, size_t inlen, uint8_t *out, size_t outlen)
{
  struct dstate *d = dstate ();
  z_stream *z;
  int r;

  if (d == NULL)
    return -1;
  z = &d->z;
  if (!d->z_ok) {
    memset (z, 0, sizeof *z);
    if (inflateInit2 (z, -12) != Z_OK) {
      set_error (ENOMEM, "inflateInit2");
      return -1;
    }
    d->z_ok = true;
  }
  else if (inflateReset (z) != Z_OK) {
    set_error (EINVAL, "inflateReset");
    return -1;
  }
  z->next_in = (Bytef *) in;
  z->avail_in = inlen;
  z->next_out = out;
  z->avail_out = outlen;
  z->msg = NULL;
  r = inflate (z, Z_FINISH);
  /* QEMU accepts Z_BUF_ERROR once the cluster is full. */
  if ((r != Z_STREAM_END && r != Z_BUF_ERROR) || z->avail_out != 0) {
    set_error (EBADMSG, "deflate data is damaged (%s, %zu of %zu bytes out)",
               z->msg ? z->msg : zError (r), outlen - z->avail_out, outlen);
    return -1;
  }
  return 0;
}

static int
zstd_cluster (const uint8_t *in, size_t inlen, uint8_t *out, size_t outlen)
{
  ZSTD_inBuffer ib = { in, inlen, 0 };
  ZSTD_outBuffer ob = { out, outlen, 0 };
  struct dstate *d = dstate ();
  ZSTD_DCtx *dctx;
  size_t r = 0;

  if (d == NULL)
    return -1;
  if (d->dctx == NULL && (d->dctx = ZSTD_createDCtx ()) == NULL) {
    set_error (ENOMEM, "ZSTD_createDCtx");
    return -1;
  }
  dctx = d->dctx;
  ZSTD_DCtx_reset (dctx, ZSTD_reset_session_only);
  /* Like QEMU: stream until exactly one cluster is out; the frame must be
   * complete when the output is full. */
  while (ob.pos < ob.size) {
    size_t last_in = ib.pos, last_out = ob.pos;
    r = ZSTD_decompressStream (dctx, &ob, &ib);
    if (ZSTD_isError (r)) {
      set_error (EBADMSG, "zstd data is damaged (%s)", ZSTD_getErrorName (r));
      return -1;
    }
    if (ib.pos == last_in && ob.pos == last_out) {
      set_error (EBADMSG, "zstd data ends early (%zu of %zu bytes out)",
                 ob.pos, ob.size);
      return -1;
    }
    if (r == 0 && ob.pos < ob.size && ib.pos == ib.size) {
      set_error (EBADMSG, "zstd data ends early (%zu of %zu bytes out)",
                 ob.pos, ob.size);
      return -1;
    }
  }
  /* The frame must be fully flushed once the cluster is full: more data
   * means the cluster decompresses to more than a cluster (damage). */
  if (r != 0) {
    set_error (EBADMSG, "zstd data decompresses to more than %zu bytes",
               ob.size);
    return -1;
  }
  return 0;
}

int
qk_decompress (int type, const uint8_t *in, size_t inlen, uint8_t *out,
               size_t outlen)
{
  switch (type) {
  case QK_COMPRESSION_DEFLATE:
    return inflate_cluster (in, inlen, out, outlen);
  case QK_COMPRESSION_ZSTD:
    return zstd_cluster (in, inlen, out, outlen);
  }
  set_error (ENOTSUP, "unknown compression type %d", type);
  return -1;
}

int
qk_compress (int type, const uint8_t *in, size_t inlen, uint8_t *out,
             size_t outcap, size_t *outlen)
{
  if (type == QK_COMPRESSION_DEFLATE) {
    z_stream z;
    int r;

    memset (&z, 0, sizeof z);
    if (deflateInit2 (&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9,
                      Z_DEFAULT_STRATEGY) != Z_OK) {
      set_error (ENOMEM, "deflateInit2");
      return -1;
    }
    z.next_in = (Bytef *) in;
    z.avail_in = inlen;
    z.next_out = out;
    z.avail_out = outcap;
    r = deflate (&z, Z_FINISH);
    deflateEnd (&z);
    if (r != Z_STREAM_END) {
      set_error (ENOSPC, "compressed data does not fit");
      return -1;
    }
    *outlen = outcap - z.avail_out;
    return 0;
  }
  if (type == QK_COMPRESSION_ZSTD) {
    size_t r = ZSTD_compress (out, outcap, in, inlen, 1);
    if (ZSTD_isError (r)) {
      set_error (ENOSPC, "zstd: %s", ZSTD_getErrorName (r));
      return -1;
    }
    *outlen = r;
    return 0;
  }
  set_error (ENOTSUP, "unknown compression type %d", type);
  return -1;
}
