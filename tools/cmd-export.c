/* qcowkit export: the guest-visible contents as a raw file, byte-identical
 * to `qemu-img convert -O raw`, with holes where the guest reads zeros.
 * Works where QEMU refuses (dirty or corrupt bit, unknown autoclear bits,
 * damaged refcounts): reading never needs refcounts. The engine (workers,
 * holes, copy offload) is tools/export-core.c, shared with rescue. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "export-core.h"

static const char help[] =
  "Usage: qcowkit export [--snapshot NAME] [--force] [--no-flush] "
  "[--progress|--quiet] [--root DIR] IMAGE OUTPUT\n"
  "Write the guest-visible contents of IMAGE (through its backing chain)\n"
  "to OUTPUT as a raw file, with holes where the guest reads zeros.\n"
  "--snapshot exports an internal snapshot (name or ID).\n"
  "--force exports even with unknown incompatible feature bits.\n"
  "--no-flush does not fsync OUTPUT before reporting success.\n";

int
cmd_export (int argc, char **argv)
{
  struct common_opts o = { .progress = -1 };
  struct export_spec j = { .fd = -1 };
  struct qk_image *img;
  int r, ret = EXIT_ERR;

  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp (a, "--help") == 0 || strcmp (a, "-h") == 0) {
      fputs (help, stdout);
      return EXIT_OK;
    }
    if ((r = common_option (&o, argc, argv, &i, "export")) < 0)
      return EXIT_USAGE;
    if (r)
      continue;
    if (strcmp (a, "--snapshot") == 0 || strcmp (a, "-l") == 0) {
      if (i + 1 >= argc)
        return usage_error ("export", "%s needs a snapshot name", a);
      j.snap = argv[++i];
    }
    else if (strncmp (a, "--snapshot=", 11) == 0)
      j.snap = a + 11;
    else if (strcmp (a, "--force") == 0)
      o.force = true;
    else if (strcmp (a, "--no-flush") == 0)
      j.no_flush = true;
    else if (a[0] == '-' && a[1])
      return usage_error ("export", "unknown option '%s'", a);
    else if (!j.path)
      j.path = a;
    else if (!j.out)
      j.out = a;
    else
      return usage_error ("export", "too many arguments");
  }
  if (j.path == NULL || j.out == NULL)
    return usage_error ("export", "need IMAGE and OUTPUT");
  j.o = &o;
  j.open_flags = o.force ? QK_OPEN_FORCE : 0;

  img = open_image (j.path, &o, j.open_flags, true);
  if (img == NULL)
    return EXIT_ERR;
  j.img = img;
  {
    const char *why = qk_image_unreadable_reason (img);
    if (why) {
      errx_ ("%s: cannot export: %s", j.path, why);
      goto out;
    }
  }
  if (j.snap && qk_image_select_snapshot (img, j.snap) < 0) {
    errx_ ("%s", qk_get_error ());
    goto out;
  }
  j.size = j.snap ? export_snapshot_size (img, j.snap)
                  : qk_image_virtual_size (img);
  if (export_output_is_input (img, j.out) < 0)
    goto out;

  j.fd = open (j.out, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (j.fd < 0) {
    errx_ ("open %s: %s", j.out, strerror (errno));
    goto out;
  }
  if (export_run (&j) == 0)
    ret = EXIT_OK;
out:
  if (j.fd >= 0 && close (j.fd) < 0 && ret == EXIT_OK) {
    errx_ ("close %s: %s", j.out, strerror (errno));
    ret = EXIT_ERR;
  }
  qk_image_close (img);
  return ret;
}
