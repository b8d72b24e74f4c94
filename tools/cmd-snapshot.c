/* qcowkit snapshot: list internal snapshots (qemu-img snapshot -l), and
 * delete (-d) or apply (-a) one offline (qk_snapshot_delete,
 * qk_snapshot_apply). Exit status of delete and apply: 0 done, 1 refused
 * or failed (a refusal leaves the image untouched; an image in use is
 * refused), 2 usage. */
#include <config.h>

#include <errno.h>
#include <string.h>
#include <time.h>

#include "tool.h"
#include "json.h"

void
print_snapshot_table (struct qk_image *img)
{
  size_t n = qk_image_snapshot_count (img);

  printf ("Snapshot list:\n");
  printf ("%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE",
          "VM CLOCK", "ICOUNT");
  for (size_t i = 0; i < n; i++) {
    const struct qk_snapshot *s = qk_image_snapshot (img, i);
    char date[32], clk[64], ic[32] = "";
    time_t t = s->date_sec;
    struct tm tm;
    uint64_t secs = s->vm_clock_nsec / 1000000000ULL;
    char size[32];

    strftime (date, sizeof date, "%Y-%m-%d %H:%M:%S", localtime_r (&t, &tm));
    snprintf (clk, sizeof clk, "%02d:%02d:%02d.%03d", (int) (secs / 3600),
              (int) ((secs / 60) % 60), (int) (secs % 60),
              (int) ((s->vm_clock_nsec / 1000000) % 1000));
    if (s->has_icount && s->icount != UINT64_MAX)
      snprintf (ic, sizeof ic, "%" PRId64, (int64_t) s->icount);
    snprintf (size, sizeof size, "%s", size_str (s->vm_state_size));
    printf ("%-9s %-16s %8s%20s%13s%11s\n", printable (s->id),
            printable (s->name), size, date, clk, ic);
  }
}

static int
snapshot_list (int argc, char **argv)
{
  struct common_opts o = { .progress = -1 };
  const char *path = NULL;
  struct qk_image *img;
  int r;

  for (int i = 1; i < argc; i++) {
    if (strcmp (argv[i], "--help") == 0 || strcmp (argv[i], "-h") == 0) {
      printf ("Usage: qcowkit snapshot list [--output=json|human] IMAGE\n");
      return EXIT_OK;
    }
    if ((r = common_option (&o, argc, argv, &i, "snapshot")) < 0)
      return EXIT_USAGE;
    if (r)
      continue;
    if (argv[i][0] == '-' && argv[i][1])
      return usage_error ("snapshot", "unknown option '%s'", argv[i]);
    if (path)
      return usage_error ("snapshot", "too many arguments");
    path = argv[i];
  }
  if (path == NULL)
    return usage_error ("snapshot", "no image given");
  img = open_image (path, &o, QK_OPEN_NO_BACKING, true);
  if (img == NULL)
    return EXIT_ERR;
  if (qk_image_header (img) == NULL) {
    errx_ ("%s is not a qcow2 image", path);
    qk_image_close (img);
    return EXIT_ERR;
  }
  if (o.output == OUT_JSON) {
    struct qk_json *j = qk_json_new (stdout, 4);
    qk_json_array_begin (j, NULL);
    for (size_t i = 0; i < qk_image_snapshot_count (img); i++) {
      const struct qk_snapshot *s = qk_image_snapshot (img, i);
      qk_json_object_begin (j, NULL);
      qk_json_string (j, "id", s->id);
      qk_json_string (j, "name", s->name);
      qk_json_uint (j, "vm-state-size", s->vm_state_size);
      qk_json_uint (j, "date-sec", s->date_sec);
      qk_json_uint (j, "date-nsec", s->date_nsec);
      qk_json_uint (j, "vm-clock-sec", s->vm_clock_nsec / 1000000000ULL);
      qk_json_uint (j, "vm-clock-nsec", s->vm_clock_nsec % 1000000000ULL);
      if (s->has_icount && s->icount != UINT64_MAX)
        qk_json_uint (j, "icount", s->icount);
      if (s->has_disk_size)
        qk_json_uint (j, "disk-size", s->disk_size);
      qk_json_hex (j, "l1-table-offset", s->l1_table_offset);
      qk_json_uint (j, "l1-size", s->l1_size);
      qk_json_object_end (j);
    }
    qk_json_array_end (j);
    qk_json_free (j);
  }
  else if (qk_image_snapshot_count (img) > 0)
    print_snapshot_table (img);
  r = qk_image_snapshots_ok (img) ? EXIT_OK : EXIT_ERR;
  if (r != EXIT_OK)
    errx_ ("%s: the snapshot table could not be read completely", path);
  qk_image_close (img);
  return r;
}

static const char delete_help[] =
  "Usage: qcowkit snapshot delete [-n] [--undo FILE] [--output=human|json]\n"
  "                               IMAGE NAME|ID\n"
  "\n"
  "Delete an internal snapshot of IMAGE as qemu-img's snapshot deletion\n"
  "does (by name first, then by ID), without QEMU and crash-safe.\n"
  "\n"
  "  -n, --dry-run       find it and count what would be freed, write nothing\n"
  "  --undo FILE         keep the old bytes in FILE (qcowkit undo FILE IMAGE)\n"
  "  --output=FMT        human (default) or json\n"
  "\n"
  "Exit status: 0 done, 1 refused or failed (a refusal leaves the image\n"
  "untouched), 2 usage. See qcowkit-snapshot(1).\n";

static const char apply_help[] =
  "Usage: qcowkit snapshot apply [-n] [--undo FILE] [--output=human|json]\n"
  "                              IMAGE NAME|ID\n"
  "\n"
  "Revert the active state of IMAGE to an internal snapshot as qemu-img's\n"
  "snapshot apply does (by ID first, then by name; the virtual size becomes\n"
  "the snapshot's), without QEMU and crash-safe.\n"
  "\n"
  "  -n, --dry-run       find it and count what would be freed, write nothing\n"
  "  --undo FILE         keep the old bytes in FILE (qcowkit undo FILE IMAGE)\n"
  "  --output=FMT        human (default) or json\n"
  "\n"
  "Exit status: 0 done, 1 refused or failed (a refusal leaves the image\n"
  "untouched), 2 usage. See qcowkit-snapshot(1).\n";

static int
snapshot_write (int argc, char **argv, bool del)
{
  struct common_opts o = { .progress = -1 };
  struct qk_snapshot_options so;
  struct qk_snapshot_result res;
  const char *ops[2] = { NULL, NULL };
  const char *name = del ? "snapshot delete" : "snapshot apply";
  bool dry;
  int rc, e;
  const struct opt opts[] = {
    { "-n|--dry-run", NULL, .flags = &so.flags, .set = QK_SNAPSHOT_DRY_RUN },
    { "--undo", "a value", .str = &so.undo_path },
    { NULL },
  };
  const struct opt_cmd cmd = {
    .name = name, .help = del ? delete_help : apply_help, .opts = opts,
    .common = &o, .operands = ops, .max_operands = 2, .min_operands = 2,
    .missing = "an image and a snapshot name or ID are needed",
  };

  memset (&so, 0, sizeof so);
  if (!opt_parse (&cmd, argc, argv, &e))
    return e;
  dry = (so.flags & QK_SNAPSHOT_DRY_RUN) != 0;
  if (dry && so.undo_path)
    return usage_error (name, "a dry run writes no undo journal"),
           EXIT_USAGE;
  rc = del ? qk_snapshot_delete (ops[0], ops[1], &so, &res)
           : qk_snapshot_apply (ops[0], ops[1], &so, &res);
  e = errno;
  if (rc < 0) {
    write_failed (e, ops[0], ops[0], res.changed, so.undo_path,
                  "the image reads as before or as after, with leaked "
                  "clusters at worst: 'qcowkit repair -y' settles them");
    qk_snapshot_result_clear (&res);
    return EXIT_ERR;
  }
  if (o.output == OUT_JSON) {
    struct qk_json *j = qk_json_new (stdout, 4);
    qk_json_object_begin (j, NULL);
    qk_json_string (j, "filename", ops[0]);
    qk_json_string (j, "operation", del ? "delete" : "apply");
    qk_json_string (j, "id", res.id);
    qk_json_string (j, "name", res.name);
    qk_json_bool (j, "dry-run", dry);
    if (!del) {
      qk_json_uint (j, "old-virtual-size", res.old_size);
      qk_json_uint (j, "virtual-size", res.new_size);
    }
    qk_json_uint (j, "clusters-freed", res.clusters_freed);
    qk_json_uint (j, "leaks-freed", res.leaks_freed);
    qk_json_bool (j, "changed", res.changed);
    qk_json_object_end (j);
    qk_json_free (j);
  }
  else {
    printf ("%s snapshot %s (ID %s) %s %s: %" PRIu64 " clusters %sfreed\n",
            dry ? (del ? "Would delete" : "Would apply")
                : (del ? "Deleted" : "Applied"),
            printable (res.name), printable (res.id),
            del ? "of" : "to", printable (ops[0]), res.clusters_freed,
            dry ? "would be " : "");
    if (!del && res.old_size != res.new_size)
      printf ("  virtual size %" PRIu64 " -> %" PRIu64 " bytes\n",
              res.old_size, res.new_size);
    if (res.leaks_freed)
      printf ("  freed %" PRIu64 " leaked clusters first\n",
              res.leaks_freed);
  }
  qk_snapshot_result_clear (&res);
  return EXIT_OK;
}

static const char snapshot_help[] =
  "Usage: qcowkit snapshot list [--output=json|human] IMAGE\n"
  "       qcowkit snapshot delete [-n] [--undo FILE] IMAGE NAME|ID\n"
  "       qcowkit snapshot apply [-n] [--undo FILE] IMAGE NAME|ID\n";

int
cmd_snapshot (int argc, char **argv)
{
  if (argc < 2)
    return usage_error ("snapshot", "missing subcommand (list, delete, "
                        "apply)");
  if (strcmp (argv[1], "--help") == 0 || strcmp (argv[1], "-h") == 0) {
    fputs (snapshot_help, stdout);
    return EXIT_OK;
  }
  if (strcmp (argv[1], "list") == 0 || strcmp (argv[1], "-l") == 0)
    return snapshot_list (argc - 1, argv + 1);
  if (strcmp (argv[1], "delete") == 0 || strcmp (argv[1], "-d") == 0)
    return snapshot_write (argc - 1, argv + 1, true);
  if (strcmp (argv[1], "apply") == 0 || strcmp (argv[1], "-a") == 0)
    return snapshot_write (argc - 1, argv + 1, false);
  return usage_error ("snapshot", "unknown subcommand '%s'", argv[1]);
}
