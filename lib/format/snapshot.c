/* Snapshot table entries. */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "format/format.h"

#define SN_FIXED 40

size_t
qk_snapshot_entry_size (uint32_t extra, size_t idlen, size_t namelen)
{
  uint64_t n;

  if (ADD_OVERFLOW ((uint64_t) SN_FIXED + extra, (uint64_t) idlen, &n)
      || ADD_OVERFLOW (n, (uint64_t) namelen, &n)
      || align_up_overflow (n, 8, &n) || n > SIZE_MAX)
    return 0;
  return (size_t) n;
}

static char *
dup_bytes (const uint8_t *p, size_t n)
{
  char *s = malloc (n + 1);
  if (s) {
    memcpy (s, p, n);
    s[n] = '\0';
  }
  return s;
}

int
qk_snapshot_parse (const uint8_t *buf, size_t len, struct qk_snapshot_raw *r,
                   size_t *entry_len)
{
  struct qk_snapshot *s = &r->s;
  uint32_t extra;
  uint16_t idlen, namelen;
  size_t need;

  memset (r, 0, sizeof *r);
  if (len < SN_FIXED) {
    set_error (EBADMSG, "snapshot entry truncated (%zu bytes)", len);
    return -1;
  }
  s->l1_table_offset = be64_get (buf);
  s->l1_size = be32_get (buf + 8);
  idlen = be16_get (buf + 12);
  namelen = be16_get (buf + 14);
  s->date_sec = be32_get (buf + 16);
  s->date_nsec = be32_get (buf + 20);
  s->vm_clock_nsec = be64_get (buf + 24);
  s->vm_state_size32 = be32_get (buf + 32);
  extra = be32_get (buf + 36);
  s->extra_data_size = extra;
  if (extra > QK_MAX_SNAPSHOT_EXTRA) {
    set_error (EBADMSG, "snapshot entry has %u bytes of extra data (limit %u)",
               extra, QK_MAX_SNAPSHOT_EXTRA);
    return -1;
  }
  need = qk_snapshot_entry_size (extra, idlen, namelen);
  /* The last entry need not be padded. */
  if ((size_t) SN_FIXED + extra + idlen + namelen > len) {
    set_error (EBADMSG, "snapshot entry (%zu bytes) runs past the end of the "
               "table", need);
    return -1;
  }
  s->vm_state_size = s->vm_state_size32;
  if (extra >= 8) {
    s->has_vm_state_size_large = true;
    s->vm_state_size = be64_get (buf + 40);
  }
  if (extra >= 16) {
    s->has_disk_size = true;
    s->disk_size = be64_get (buf + 48);
  }
  if (extra >= 24) {
    s->has_icount = true;
    s->icount = be64_get (buf + 56);
  }
  r->extra = malloc (extra ? extra : 1);
  r->id = dup_bytes (buf + SN_FIXED + extra, idlen);
  r->name = dup_bytes (buf + SN_FIXED + extra + idlen, namelen);
  if (!r->extra || !r->id || !r->name) {
    qk_snapshot_raw_free (r);
    set_error (ENOMEM, "malloc");
    return -1;
  }
  memcpy (r->extra, buf + SN_FIXED, extra);
  s->id = r->id;
  s->name = r->name;
  s->entry_size = need;
  *entry_len = need;
  return 0;
}

void
qk_snapshot_raw_free (struct qk_snapshot_raw *r)
{
  free (r->id);
  free (r->name);
  free (r->extra);
  r->id = r->name = NULL;
  r->extra = NULL;
}

int
qk_snapshot_format (const struct qk_snapshot_raw *r, uint8_t *buf, size_t len)
{
  const struct qk_snapshot *s = &r->s;
  size_t idlen = strlen (r->id), namelen = strlen (r->name);
  size_t need = qk_snapshot_entry_size (s->extra_data_size, idlen, namelen);

  if (idlen > UINT16_MAX || namelen > UINT16_MAX || need == 0 || len < need) {
    set_error (EINVAL, "snapshot entry does not fit");
    return -1;
  }
  memset (buf, 0, need);
  be64_put (buf, s->l1_table_offset);
  be32_put (buf + 8, s->l1_size);
  be16_put (buf + 12, idlen);
  be16_put (buf + 14, namelen);
  be32_put (buf + 16, s->date_sec);
  be32_put (buf + 20, s->date_nsec);
  be64_put (buf + 24, s->vm_clock_nsec);
  be32_put (buf + 32, s->vm_state_size32);
  be32_put (buf + 36, s->extra_data_size);
  if (s->extra_data_size)
    memcpy (buf + SN_FIXED, r->extra, s->extra_data_size);
  memcpy (buf + SN_FIXED + s->extra_data_size, r->id, idlen);
  memcpy (buf + SN_FIXED + s->extra_data_size + idlen, r->name, namelen);
  return (int) need;
}
