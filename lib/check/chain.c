/* Pass 7 of the check: the backing chain (whether it opens as a whole,
 * the recorded backing format) and the external data file. */
#include <config.h>

#include "util/path.h"
#include "check/ck.h"

/* ---- phase 7: backing chain and data file ---- */

/* The backing chain must open as a whole for QEMU to open the image: a
 * missing file, a loop, a protocol name or too deep a chain anywhere in it
 * is reported here, naming the image where the chain breaks. Damage of a
 * backing file's own is only mentioned (check it with --chain). */
static void
chain_break (struct ck *ck, const struct qk_image *at)
{
  char where[600] = "";

  if (at != ck->img)
    snprintf (where, sizeof where, " (in the chain, below '%s')",
              at->filename);
  if (qk_path_has_protocol (at->backing_name)) {
    report (ck, PR_BACKING_PROTOCOL, 1, NOLOC,
            "backing file '%s'%s is a protocol or json: specification",
            at->backing_name, where);
    return;
  }
  switch (at->backing_state) {
  case QK_BK_LOOP:
    report (ck, PR_BACKING_LOOP, 1, NOLOC,
            "backing file '%s'%s: the backing chain loops back to an image "
            "already in it", at->backing_name, where);
    break;
  case QK_BK_TOO_DEEP:
    report (ck, PR_BACKING_TOO_DEEP, 1, NOLOC,
            "backing file '%s'%s: the backing chain is deeper than %u "
            "images", at->backing_name, where, QK_DEFAULT_CHAIN_DEPTH);
    break;
  case QK_BK_FORMAT_UNSUPPORTED:
    report (ck, PR_BACKING_FORMAT, 1, NOLOC,
            "backing file '%s'%s: format '%s' is not supported",
            at->backing_name, where,
            at->backing_format ? at->backing_format : "?");
    break;
  case QK_BK_NAME_INVALID:
    break;                      /* phase_header reported the name */
  case QK_BK_NOT_ASKED:
    break;                      /* the caller checks the image alone */
  case QK_BK_OK:
  case QK_BK_CANNOT_OPEN:
  case QK_BK_NOT_QCOW2:
    report (ck, PR_BACKING_MISSING, 1, NOLOC, "%s%s",
            at->backing_why ? at->backing_why : "cannot be opened", where);
    if (at->backing_state == QK_BK_NOT_QCOW2)
      report (ck, PR_EXT_BACKING_FORMAT_MISMATCH, 1, NOLOC,
              "backing file '%s'%s is recorded as qcow2 but is not a qcow2 "
              "image", at->backing_name, where);
    break;
  }
}

int
phase_chain (struct ck *ck)
{
  struct qk_image *img = ck->img;
  const struct qk_image *at;

  for (at = img; at; at = at->backing)
    if (at->backing_name && at->backing_name[0] && at->backing == NULL
        && at->backing_state != QK_BK_NOT_ASKED) {
      chain_break (ck, at);
      break;
    }
  if (img->backing) {
    uint8_t magic[4] = { 0 };
    bool is_qcow2 = img->backing->is_qcow2;

    if (!is_qcow2
        && qk_source_read_zeropad (img->backing->src, magic, 4, 0) == 0)
      is_qcow2 = be32_get (magic) == QK_QCOW2_MAGIC;
    if (img->backing_format_ext
        && strcmp (img->backing_format_ext, "raw") == 0 && is_qcow2)
      report (ck, PR_EXT_BACKING_FORMAT_MISMATCH, 1, NOLOC,
              "backing file '%s' is recorded as raw but is a qcow2 image "
              "(the guest sees its qcow2 metadata as data)",
              img->backing_name);
    /* Damage of a backing file's own (the chain itself opened). */
    for (at = img->backing; at; at = at->backing)
      if (at->unreadable
          && !(at->backing_name && at->backing_name[0] && at->backing == NULL)
          && !(at->backing && at->backing->unreadable)) {
        report (ck, PR_BACKING_PROBLEM, 1, NOLOC,
                "backing file '%s': %s (check it with --chain)",
                at->filename, at->unreadable);
        break;
      }
  }
  if (ck->data_file) {
    if (img->data == img->src)
      report (ck, PR_DATA_FILE_MISSING, 1, NOLOC,
              "external data file '%s' cannot be opened",
              img->data_file_name ? img->data_file_name : "(unnamed)");
    else if (ck->max_data_end > img->data->size)
      report (ck, PR_DATA_FILE_SHORT, 1,
              LOC (.found = img->data->size, .expected = ck->max_data_end),
              "external data file '%s' is %" PRIu64 " bytes but data is "
              "mapped up to %" PRIu64, img->data_file_name, img->data->size,
              ck->max_data_end);
  }
  return 0;
}
