/* qcowkit amend: change an image's version (compat 0.10 / 1.1) and
 * refcount width in place (qk_amend), as qemu-img amend -o compat=,
 * refcount_bits= does. Exit status: 0 done (or nothing to do), 1 refused
 * or failed (the message says why; a refusal leaves the file untouched),
 * 2 usage. */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tool.h"
#include "json.h"

static const char amend_help[] =
  "Usage: qcowkit amend [--compat 0.10|1.1] [--refcount-bits N]\n"
  "                     [-o compat=...,refcount_bits=...] [-n]\n"
  "                     [--undo FILE] [--output=human|json] IMAGE\n"
  "\n"
  "Change a qcow2 image's version and refcount width in place, as\n"
  "'qemu-img amend' does, without QEMU and crash-safe.\n"
  "\n"
  "  --compat 0.10|1.1   version 2 or version 3 (also v2, v3)\n"
  "  --refcount-bits N   1, 2, 4, 8, 16, 32 or 64 (16 for compat 0.10)\n"
  "  -o OPTIONS          the same, qemu-img style: compat=1.1,refcount_bits=64\n"
  "  -n, --dry-run       decide and report, write nothing\n"
  "  --undo FILE         keep the old bytes in FILE (qcowkit undo FILE IMAGE)\n"
  "  --output=FMT        human (default) or json\n"
  "\n"
  "Exit status: 0 done or nothing to do, 1 refused or failed (a refusal\n"
  "leaves the image untouched), 2 usage. See qcowkit-amend(1).\n";

/* The option callbacks: 0, or -1 after a usage error. */
static int
parse_compat (void *data, const char *opt, const char *v)
{
  unsigned *out = data;

  if (strcmp (v, "0.10") == 0 || strcmp (v, "v2") == 0)
    *out = 2;
  else if (strcmp (v, "1.1") == 0 || strcmp (v, "v3") == 0)
    *out = 3;
  else
    return usage_error ("amend", "Unknown compatibility level %s", v), -1;
  return 0;
}

static int
parse_bits (void *data, const char *opt, const char *v)
{
  unsigned *out = data;
  uint64_t n;

  if (!parse_size (v, &n) || n == 0 || n > 64 || (n & (n - 1)))
    return usage_error ("amend", "Refcount width must be a power of two and "
                        "may not exceed 64 bits"), -1;
  *out = (unsigned) n;
  return 0;
}

/* -o compat=1.1,refcount_bits=16 */
static int
parse_o (void *data, const char *opt, const char *arg)
{
  struct qk_amend_options *ao = data;
  char *copy = strdup (arg), *save = NULL;
  int ret = 0;

  if (copy == NULL)
    return usage_error ("amend", "out of memory"), -1;
  for (char *kv = strtok_r (copy, ",", &save); kv && ret == 0;
       kv = strtok_r (NULL, ",", &save)) {
    char *eq = strchr (kv, '=');
    if (eq == NULL) {
      usage_error ("amend", "Invalid parameter '%s'", kv);
      ret = -1;
      break;
    }
    *eq = '\0';
    if (strcmp (kv, "compat") == 0)
      ret = parse_compat (&ao->compat, kv, eq + 1);
    else if (strcmp (kv, "refcount_bits") == 0)
      ret = parse_bits (&ao->refcount_bits, kv, eq + 1);
    else {
      usage_error ("amend", "Invalid parameter '%s' (qcowkit amend "
                   "changes compat and refcount_bits)", kv);
      ret = -1;
    }
  }
  free (copy);
  return ret;
}

static const char *
compat_name (unsigned v)
{
  return v == 2 ? "0.10" : v == 3 ? "1.1" : "?";
}

int
cmd_amend (int argc, char **argv)
{
  struct common_opts o = { .progress = -1 };
  struct qk_amend_options ao;
  struct qk_amend_result res;
  const char *path = NULL;
  int e;
  const struct opt opts[] = {
    { "--compat", "a value", .fn = parse_compat, .data = &ao.compat },
    { "--refcount-bits", "a value", .fn = parse_bits,
      .data = &ao.refcount_bits },
    { "-o", "a value", .fn = parse_o, .data = &ao },
    { "-n|--dry-run", NULL, .flags = &ao.flags, .set = QK_AMEND_DRY_RUN },
    { "--undo", "a value", .str = &ao.undo_path },
    { NULL },
  };
  const struct opt_cmd cmd = {
    .name = "amend", .help = amend_help, .opts = opts, .common = &o,
    .operands = &path, .max_operands = 1, .min_operands = 1,
  };

  memset (&ao, 0, sizeof ao);
  if (!opt_parse (&cmd, argc, argv, &e))
    return e;
  if (ao.compat == 0 && ao.refcount_bits == 0)
    return usage_error ("amend", "nothing to change: give --compat or "
                        "--refcount-bits"), EXIT_USAGE;
  if ((ao.flags & QK_AMEND_DRY_RUN) && ao.undo_path)
    return usage_error ("amend", "a dry run writes no undo journal"),
           EXIT_USAGE;

  if (qk_amend (path, &ao, &res) < 0) {
    write_failed (errno, path, path, res.changed, ao.undo_path,
                  "the image is consistent (the old or the new form, maybe "
                  "with leaked clusters): run the same command again to "
                  "finish");
    return EXIT_ERR;
  }

  if (o.output == OUT_JSON) {
    struct qk_json *j = qk_json_new (stdout, 4);
    qk_json_object_begin (j, NULL);
    qk_json_string (j, "filename", path);
    qk_json_bool (j, "dry-run", (ao.flags & QK_AMEND_DRY_RUN) != 0);
    qk_json_string (j, "old-compat", compat_name (res.old_version));
    qk_json_string (j, "new-compat", compat_name (res.new_version));
    qk_json_uint (j, "old-refcount-bits", res.old_refcount_bits);
    qk_json_uint (j, "new-refcount-bits", res.new_refcount_bits);
    qk_json_uint (j, "leaks-freed", res.leaks_freed);
    qk_json_uint (j, "snapshots-rewritten", res.snapshots_rewritten);
    qk_json_uint (j, "zero-clusters-allocated", res.zero_allocated);
    qk_json_uint (j, "zero-clusters-unmapped", res.zero_unmapped);
    qk_json_uint (j, "zero-clusters-preallocated", res.zero_prealloc);
    qk_json_bool (j, "changed", res.changed);
    qk_json_object_end (j);
    qk_json_free (j);
    return EXIT_OK;
  }
  if (res.old_version == res.new_version
      && res.old_refcount_bits == res.new_refcount_bits) {
    printf ("Nothing to do: %s is compat %s with %u-bit refcounts\n",
            printable (path), compat_name (res.old_version),
            res.old_refcount_bits);
    return EXIT_OK;
  }
  printf ("%s %s: compat %s -> %s, refcount bits %u -> %u\n",
          (ao.flags & QK_AMEND_DRY_RUN) ? "Would amend" : "Amended",
          printable (path), compat_name (res.old_version),
          compat_name (res.new_version), res.old_refcount_bits,
          res.new_refcount_bits);
  if (res.leaks_freed)
    printf ("  %s %" PRIu64 " leaked clusters first\n",
            (ao.flags & QK_AMEND_DRY_RUN) ? "would free" : "freed",
            res.leaks_freed);
  if (res.snapshots_rewritten)
    printf ("  snapshot table: %" PRIu64 " entries given version 3 extra "
            "data\n", res.snapshots_rewritten);
  if (res.zero_allocated || res.zero_unmapped || res.zero_prealloc)
    printf ("  zero clusters: %" PRIu64 " made data clusters of zeros "
            "(backing file), %" PRIu64 " made unallocated, %" PRIu64
            " preallocated written with zeros\n", res.zero_allocated,
            res.zero_unmapped, res.zero_prealloc);
  return EXIT_OK;
}
