/* lib/image/spec.c: the description of an open image's header cluster
 * (struct qk_header_spec), for a writer that changes one thing in it and
 * writes the whole cluster again with qk_header_cluster_format: repair
 * dropping the bitmaps extension, amend changing the version. Everything
 * the image has is kept: unknown header fields, the backing name (raw),
 * the backing format, data file, crypto, feature names, bitmaps and
 * unknown extensions (in the order found; QEMU reverses them). */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "image/image.h"
#include "image/spec.h"

int
qk_image_spec_init (const struct qk_image *img, struct qk_image_spec *sp)
{
  const struct qk_header *h = &img->hdr;
  struct qk_header_spec *s = &sp->s;
  uint64_t bo = h->backing_file_offset, bn = h->backing_file_size;
  size_t cs = h->cluster_size, nx = 0;

  memset (sp, 0, sizeof *sp);
  s->h = *h;
  if (h->version == 3 && h->header_length > 112) {
    if (h->header_length > cs) {
      set_error (ENOTSUP, "the header is longer than its cluster");
      return -1;
    }
    s->unknown_header = img->cluster0 + 112;
  }
  if (bo) {
    if (bo > cs || bn > cs - bo) {
      set_error (ENOTSUP, "the backing file name is not in the header "
                 "cluster");
      return -1;
    }
    s->backing = (const char *) img->cluster0 + bo;
    s->backing_len = bn;
  }
  s->backing_format = img->backing_format_ext;
  s->data_file = img->data_file_name;
  if (img->has_crypto_ext) {
    sp->crypto.offset = img->crypto_offset;
    sp->crypto.length = img->crypto_length;
    s->crypto = &sp->crypto;
  }
  if (img->has_bitmaps_ext) {
    sp->bitmaps = img->bitmaps_ext;
    s->bitmaps = &sp->bitmaps;
  }
  sp->exts = calloc (img->n_ext + 1, sizeof *sp->exts);
  if (sp->exts == NULL) {
    set_error (ENOMEM, "calloc");
    return -1;
  }
  for (size_t i = 0; i < img->n_ext; i++) {
    const struct qk_extension *e = &img->ext[i];
    switch (e->magic) {
    case QK_EXT_BACKING_FORMAT: case QK_EXT_DATA_FILE: case QK_EXT_CRYPTO:
    case QK_EXT_BITMAPS:
      break;
    case QK_EXT_FEATURE_TABLE:
      if (sp->fnames == NULL && e->length >= QK_FEATURE_NAME_ENTRY) {
        size_t n = e->length / QK_FEATURE_NAME_ENTRY;
        sp->fnames = calloc (n, sizeof *sp->fnames);
        if (sp->fnames == NULL) {
          set_error (ENOMEM, "calloc");
          qk_image_spec_free (sp);
          return -1;
        }
        for (size_t k = 0; k < n; k++)
          qk_feature_name_parse (e->data + k * QK_FEATURE_NAME_ENTRY,
                                 QK_FEATURE_NAME_ENTRY, &sp->fnames[k]);
        s->fnames = sp->fnames;
        s->n_fnames = n;
      }
      break;
    default:
      sp->exts[nx++] = (struct qk_hdr_ext) { e->magic, e->length, e->data };
    }
  }
  s->exts = sp->exts;
  s->n_exts = nx;
  return 0;
}

void
qk_image_spec_free (struct qk_image_spec *sp)
{
  free (sp->fnames);
  free (sp->exts);
  memset (sp, 0, sizeof *sp);
}

uint8_t *
qk_image_spec_format (const struct qk_image *img,
                      const struct qk_header_spec *s, size_t *len)
{
  size_t cs = img->hdr.cluster_size, used, old = 0;
  uint8_t *buf = malloc (cs);

  if (buf == NULL) {
    set_error (ENOMEM, "malloc");
    return NULL;
  }
  if (qk_header_cluster_format (s, buf, cs, &used) < 0) {
    free (buf);
    return NULL;
  }
  /* what the old layout used: header, extensions, end marker, name */
  old = img->hdr.version == 2 ? QK_HEADER_V2_LEN : img->hdr.header_length;
  for (size_t i = 0; i < img->n_ext; i++) {
    size_t e = img->ext[i].offset + 8 + ((img->ext[i].length + 7) & ~7U);
    if (e > old)
      old = e;
  }
  old += 8;
  if (img->hdr.backing_file_offset
      && img->hdr.backing_file_offset + img->hdr.backing_file_size > old)
    old = img->hdr.backing_file_offset + img->hdr.backing_file_size;
  *len = used > old ? used : old;
  if (*len > cs)
    *len = cs;
  return buf;
}
