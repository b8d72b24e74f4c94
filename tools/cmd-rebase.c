/* qcowkit rebase: change the backing file an image records (qk_rebase),
 * as qemu-img rebase does: the safe mode first copies into the image
 * every cluster where the old and the new backing differ; -u only
 * rewrites the name. Exit status: 0 done, 1 refused or failed (a refusal
 * leaves the image untouched), 2 usage. */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tool.h"
#include "json.h"

static const char rebase_help[] =
  "Usage: qcowkit rebase -b NEW [-F FMT] [-u] [-n] [--undo FILE]\n"
  "                      [--root DIR] [--output=human|json] IMAGE\n"
  "\n"
  "Change the backing file IMAGE records, as 'qemu-img rebase' does,\n"
  "without QEMU and crash-safe.\n"
  "\n"
  "  -b NEW              the new backing file name, as recorded (relative\n"
  "                      names are relative to IMAGE); \"\" detaches\n"
  "  -F FMT              its format, qcow2 or raw (needed with a name)\n"
  "  -u                  unsafe: rewrite the name only, copy nothing\n"
  "  -n, --dry-run       compare and report, write nothing\n"
  "  --undo FILE         keep the old bytes in FILE (qcowkit undo FILE IMAGE)\n"
  "  --root DIR          backing files must resolve below DIR\n"
  "  -p, --progress      a progress bar on standard error (the default on\n"
  "                      a terminal); -q, --quiet: none\n"
  "  --output=FMT        human (default) or json\n"
  "\n"
  "Exit status: 0 done, 1 refused or failed (a refusal leaves the image\n"
  "untouched), 2 usage. See qcowkit-rebase(1).\n";

int
cmd_rebase (int argc, char **argv)
{
  struct common_opts o = { .progress = -1 };
  struct qk_rebase_options ro;
  struct qk_rebase_result res;
  const char *path = NULL;
  struct progress prog;
  int rc;
  int e;
  const struct opt opts[] = {
    { "-b", "a value", .str = &ro.backing },
    { "-F", "a value", .str = &ro.backing_format },
    { "-u", NULL, .flags = &ro.flags, .set = QK_REBASE_UNSAFE },
    { "-n|--dry-run", NULL, .flags = &ro.flags, .set = QK_REBASE_DRY_RUN },
    { "--undo", "a value", .str = &ro.undo_path },
    { NULL },
  };
  const struct opt_cmd cmd = {
    .name = "rebase", .help = rebase_help, .opts = opts, .common = &o,
    .operands = &path, .max_operands = 1, .min_operands = 1,
  };

  memset (&ro, 0, sizeof ro);
  if (!opt_parse (&cmd, argc, argv, &e))
    return e;
  if (ro.backing == NULL)
    return usage_error ("rebase", "Must specify backing file (-b) or use "
                        "unsafe mode (-u)"), EXIT_USAGE;
  if ((ro.flags & QK_REBASE_DRY_RUN) && ro.undo_path)
    return usage_error ("rebase", "a dry run writes no undo journal"),
           EXIT_USAGE;
  ro.root = o.root;

  progress_start (&prog, &o, 1);
  progress_hook (&prog, &ro.progress, &ro.progress_opaque);
  rc = qk_rebase (path, &ro, &res);
  e = errno;
  progress_end (&prog);
  if (rc < 0) {
    write_failed (e, path, path, res.changed, ro.undo_path,
                  "the image still reads the same through its old backing "
                  "file: run the same command again to finish");
    return EXIT_ERR;
  }
  if (o.output == OUT_JSON) {
    struct qk_json *j = qk_json_new (stdout, 4);
    qk_json_object_begin (j, NULL);
    qk_json_string (j, "filename", path);
    qk_json_string (j, "backing-filename", ro.backing);
    if (*ro.backing)
      qk_json_string (j, "backing-filename-format", ro.backing_format);
    qk_json_bool (j, "unsafe", (ro.flags & QK_REBASE_UNSAFE) != 0);
    qk_json_bool (j, "dry-run", (ro.flags & QK_REBASE_DRY_RUN) != 0);
    qk_json_uint (j, "clusters-compared", res.clusters_compared);
    qk_json_uint (j, "clusters-copied", res.clusters_copied);
    qk_json_uint (j, "leaks-freed", res.leaks_freed);
    qk_json_bool (j, "changed", res.changed);
    qk_json_object_end (j);
    qk_json_free (j);
    return EXIT_OK;
  }
  if (ro.flags & QK_REBASE_DRY_RUN)
    printf ("Would rebase %s onto %s: %" PRIu64 " of %" PRIu64 " clusters "
            "differ and would be copied\n", printable (path),
            *ro.backing ? printable (ro.backing) : "no backing file",
            res.clusters_copied, res.clusters_compared);
  else if (ro.flags & QK_REBASE_UNSAFE)
    printf ("Rebased %s onto %s (unsafe: the name only)\n", printable (path),
            *ro.backing ? printable (ro.backing) : "no backing file");
  else
    printf ("Rebased %s onto %s: %" PRIu64 " of %" PRIu64 " clusters "
            "differed and were copied\n", printable (path),
            *ro.backing ? printable (ro.backing) : "no backing file",
            res.clusters_copied, res.clusters_compared);
  if (res.leaks_freed)
    printf ("  freed %" PRIu64 " leaked clusters first\n", res.leaks_freed);
  return EXIT_OK;
}
