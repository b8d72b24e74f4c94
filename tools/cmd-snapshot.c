/* qcowkit snapshot list: like qemu-img snapshot -l. */
#include <config.h>

#include <string.h>
#include <time.h>

#include "tool.h"
#include "util/json.h"

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

int
cmd_snapshot (int argc, char **argv)
{
  if (argc < 2)
    return usage_error ("snapshot", "missing subcommand (list)");
  if (strcmp (argv[1], "--help") == 0 || strcmp (argv[1], "-h") == 0) {
    printf ("Usage: qcowkit snapshot list [--output=json|human] IMAGE\n");
    return EXIT_OK;
  }
  if (strcmp (argv[1], "list") == 0 || strcmp (argv[1], "-l") == 0)
    return snapshot_list (argc - 1, argv + 1);
  return usage_error ("snapshot", "unknown subcommand '%s'", argv[1]);
}
