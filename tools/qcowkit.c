/* qcowkit: offline toolkit for qcow2 images and libvirt metadata. */
#include <config.h>

#include <string.h>

#include "tool.h"

static const struct {
  const char *name;
  int (*fn) (int, char **);
  const char *summary;
} commands[] = {
  { "info", cmd_info, "show what an image is (qemu-img info compatible)" },
  { "check", cmd_check, "check consistency, like fsck (qemu-img check "
    "compatible)" },
  { "repair", cmd_repair, "repair an image in place, the e2fsck way "
    "(asks; -n, -p, -y)" },
  { "undo", cmd_undo, "put back what a repair overwrote, from its undo "
    "journal" },
  { "amend", cmd_amend, "change an image's compat version and refcount "
    "width in place (qemu-img amend)" },
  { "commit", cmd_commit, "merge an overlay into its backing file "
    "(qemu-img commit)" },
  { "rebase", cmd_rebase, "change the backing file an image records "
    "(qemu-img rebase)" },
  { "map", cmd_map, "show where guest data lives (qemu-img map compatible)" },
  { "export", cmd_export, "write the guest-visible contents to a raw file" },
  { "dump", cmd_dump, "dump on-disk structures (header, tables, ...)" },
  { "snapshot", cmd_snapshot, "list, delete or apply internal snapshots" },
  { "meta", cmd_meta, "check, show and convert libvirt snapshot metadata" },
  { "audit", cmd_audit, "check every domain of a host: images, chains, "
    "metadata (read-only)" },
  { "rescue", cmd_rescue, "export every domain's disks of a host that "
    "will not boot, with a manifest" },
  { "fuzz-corpus", cmd_fuzz_corpus, "write small valid images covering every "
    "feature" },
};

static void
usage (FILE *f)
{
  fprintf (f,
           "Usage: %s COMMAND [OPTIONS] ...\n"
           "Offline inspection and repair of qcow2 images; no QEMU needed.\n\n"
           "Commands:\n", progname);
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    fprintf (f, "  %-12s %s\n", commands[i].name, commands[i].summary);
  fprintf (f, "\n'%s COMMAND --help' describes a command; see qcowkit(1).\n",
           progname);
}

int
main (int argc, char **argv)
{
  if (argc < 2) {
    usage (stderr);
    return EXIT_USAGE;
  }
  if (strcmp (argv[1], "--help") == 0 || strcmp (argv[1], "-h") == 0
      || strcmp (argv[1], "help") == 0) {
    usage (stdout);
    return EXIT_OK;
  }
  if (strcmp (argv[1], "--version") == 0 || strcmp (argv[1], "-V") == 0) {
    printf ("qcowkit %s (libqcowkit %s)\n", PACKAGE_VERSION, qk_version ());
    return EXIT_OK;
  }
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (strcmp (argv[1], commands[i].name) == 0)
      return commands[i].fn (argc - 1, argv + 1);
  errx_ ("unknown command '%s'", argv[1]);
  usage (stderr);
  return EXIT_USAGE;
}
