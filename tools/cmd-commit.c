/* qcowkit commit: merge an overlay into a lower image of its chain
 * (qk_commit), as qemu-img commit does, offline. Exit status: 0 done, 1
 * refused or failed, 2 usage. */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tool.h"
#include "json.h"

static const char commit_help[] =
  "Usage: qcowkit commit [-b BASE] [-d] [-n] [--undo FILE] [--root DIR]\n"
  "                      [--output=human|json] OVERLAY\n"
  "\n"
  "Merge what OVERLAY holds into its backing file (or into BASE, a lower\n"
  "image of its chain, with the images between), as 'qemu-img commit'\n"
  "does, without QEMU and crash-safe. The base grows when smaller; the\n"
  "overlay is then emptied (it reads the same, through the base).\n"
  "\n"
  "  -b BASE             commit into BASE (implies -d, as qemu-img)\n"
  "  -d                  keep the overlay's data (do not empty it)\n"
  "  -n, --dry-run       count what would be copied, write nothing\n"
  "  --undo FILE         keep the old bytes in FILE.base and FILE.top\n"
  "                      (qcowkit undo FILE.base BASE, FILE.top OVERLAY)\n"
  "  --root DIR          backing files must resolve below DIR\n"
  "  -p, --progress      a progress bar on standard error (the default on\n"
  "                      a terminal); -q, --quiet: none\n"
  "  --output=FMT        human (default) or json\n"
  "\n"
  "Exit status: 0 done, 1 refused or failed, 2 usage. See qcowkit-commit(1).\n";

int
cmd_commit (int argc, char **argv)
{
  struct common_opts o = { .progress = -1 };
  struct qk_commit_options co;
  struct qk_commit_result res;
  const char *path = NULL;
  struct progress prog;
  int rc;
  int e;
  const struct opt opts[] = {
    { "-b", "a value", .str = &co.base },
    { "-d", NULL, .flags = &co.flags, .set = QK_COMMIT_KEEP },
    { "-n|--dry-run", NULL, .flags = &co.flags, .set = QK_COMMIT_DRY_RUN },
    { "--undo", "a value", .str = &co.undo_path },
    { NULL },
  };
  const struct opt_cmd cmd = {
    .name = "commit", .help = commit_help, .opts = opts, .common = &o,
    .operands = &path, .max_operands = 1, .min_operands = 1,
  };

  memset (&co, 0, sizeof co);
  if (!opt_parse (&cmd, argc, argv, &e))
    return e;
  if ((co.flags & QK_COMMIT_DRY_RUN) && co.undo_path)
    return usage_error ("commit", "a dry run writes no undo journal"),
           EXIT_USAGE;
  co.root = o.root;

  progress_start (&prog, &o, 1);
  progress_hook (&prog, &co.progress, &co.progress_opaque);
  rc = qk_commit (path, &co, &res);
  e = errno;
  progress_end (&prog);
  if (rc < 0) {
    /* two journals (FILE.base, FILE.top): no single undo line to give */
    write_failed (e, "an image of the chain", path, res.changed, NULL,
                  co.undo_path ? "the overlay still reads the same: run the "
                  "same command again to finish, or undo it from the "
                  "journals" : "the overlay still reads the same: run the "
                  "same command again to finish");
    return EXIT_ERR;
  }
  if (o.output == OUT_JSON) {
    struct qk_json *j = qk_json_new (stdout, 4);
    qk_json_object_begin (j, NULL);
    qk_json_string (j, "filename", path);
    qk_json_bool (j, "dry-run", (co.flags & QK_COMMIT_DRY_RUN) != 0);
    qk_json_uint (j, "clusters-copied", res.clusters_copied);
    qk_json_uint (j, "leaks-freed", res.leaks_freed);
    qk_json_uint (j, "bitmaps-marked", res.bitmaps_marked);
    qk_json_bool (j, "base-grown", res.base_grown);
    qk_json_bool (j, "emptied", res.top_emptied);
    qk_json_bool (j, "changed", res.changed);
    qk_json_object_end (j);
    qk_json_free (j);
    return EXIT_OK;
  }
  if (co.flags & QK_COMMIT_DRY_RUN)
    printf ("Would commit %s: %" PRIu64 " clusters of the base would be "
            "written\n", printable (path), res.clusters_copied);
  else {
    printf ("Image committed.\n");
    printf ("  %" PRIu64 " clusters of the base written%s%s\n",
            res.clusters_copied, res.base_grown ? ", the base grown" : "",
            res.top_emptied ? ", the overlay emptied" : "");
  }
  if (res.leaks_freed)
    printf ("  freed %" PRIu64 " leaked clusters of the base first\n",
            res.leaks_freed);
  if (res.bitmaps_marked)
    printf ("  %" PRIu64 " persistent bitmaps of the base mark the committed "
            "ranges\n", res.bitmaps_marked);
  return EXIT_OK;
}
