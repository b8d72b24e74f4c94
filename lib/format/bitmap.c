/* Bitmaps extension and bitmap directory entries. */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "format/format.h"

#define BME_FIXED 24

int
qk_bitmaps_ext_parse (const uint8_t *buf, size_t len,
                      struct qk_bitmaps_ext *out)
{
  if (len < 24) {
    set_error (EBADMSG, "bitmaps extension too short (%zu bytes, need 24)",
               len);
    return -1;
  }
  out->nb_bitmaps = be32_get (buf);
  out->reserved = be32_get (buf + 4);
  out->directory_size = be64_get (buf + 8);
  out->directory_offset = be64_get (buf + 16);
  return 0;
}

int
qk_bitmap_parse (const uint8_t *buf, size_t len, struct qk_bitmap_raw *r,
                 size_t *entry_len)
{
  struct qk_bitmap *b = &r->b;
  uint16_t namelen;
  uint64_t need;

  memset (r, 0, sizeof *r);
  if (len < BME_FIXED) {
    set_error (EBADMSG, "bitmap directory entry truncated (%zu bytes)", len);
    return -1;
  }
  b->table_offset = be64_get (buf);
  b->table_size = be32_get (buf + 8);
  b->flags = be32_get (buf + 12);
  b->type = buf[16];
  b->granularity_bits = buf[17];
  namelen = be16_get (buf + 18);
  b->extra_data_size = be32_get (buf + 20);
  need = (uint64_t) BME_FIXED + b->extra_data_size + namelen;
  if (need > len) {
    set_error (EBADMSG, "bitmap directory entry (%" PRIu64 " bytes) runs past "
               "the end of the directory", need);
    return -1;
  }
  r->name = malloc (namelen + 1);
  if (r->name == NULL) {
    set_error (ENOMEM, "malloc");
    return -1;
  }
  memcpy (r->name, buf + BME_FIXED + b->extra_data_size, namelen);
  r->name[namelen] = '\0';
  b->name = r->name;
  need = (need + 7) & ~7ULL;
  b->entry_size = need;
  *entry_len = need > len ? len : need;
  return 0;
}

void
qk_bitmap_raw_free (struct qk_bitmap_raw *r)
{
  free (r->name);
  r->name = NULL;
}
