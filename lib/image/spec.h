/* lib/image/spec.h: an open image's header cluster as a description
 * (format.h's struct qk_header_spec), to change and format again. */
#ifndef QK_IMAGE_SPEC_H
#define QK_IMAGE_SPEC_H

#include "image/image.h"

struct qk_image_spec {
  struct qk_header_spec s;      /* points into the image and below */
  struct qk_crypto_ext crypto;
  struct qk_bitmaps_ext bitmaps;
  struct qk_feature_name *fnames;
  struct qk_hdr_ext *exts;
};

/* Describe img's header cluster as found (the image must stay open while
 * sp is used). ENOTSUP when the header or the backing name is not inside
 * the header cluster. */
extern int qk_image_spec_init (const struct qk_image *img,
                               struct qk_image_spec *sp);
extern void qk_image_spec_free (struct qk_image_spec *sp);
/* The new header cluster for s (malloc'd, a cluster); *len gets the bytes
 * to write from offset 0 in one write: the new layout, or as far as the
 * old one reached if that is longer (its tail zeroed). */
extern uint8_t *qk_image_spec_format (const struct qk_image *img,
                                      const struct qk_header_spec *s,
                                      size_t *len);

#endif
