/* qcowkit map: the extents of `qemu-img map`. */
#include <config.h>

#include <string.h>

#include "tool.h"

struct map_ctx {
  enum output_fmt output;
  bool first;
};

static int
print_extent (void *opaque, const struct qk_extent *e)
{
  struct map_ctx *c = opaque;

  if (c->output == OUT_JSON) {
    /* Byte for byte the format of qemu-img map --output=json. */
    printf ("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", \"depth\": "
            "%u, \"present\": %s, \"zero\": %s, \"data\": %s",
            c->first ? "[" : ",\n", e->start, e->length, e->depth,
            e->present ? "true" : "false", e->zero ? "true" : "false",
            e->data ? "true" : "false");
    if (e->compressed)
      printf (", \"compressed\": true");
    if (e->has_offset)
      printf (", \"offset\": %" PRIu64, e->offset);
    putchar ('}');
  }
  else {
    /* As qemu-img, but compressed extents are listed instead of failing. */
    if (e->data && !e->has_offset)
      printf ("%#-16" PRIx64 "%#-16" PRIx64 "%-16s%s\n", e->start, e->length,
              "compressed", "");
    else if (e->data && !e->zero)
      printf ("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", e->start,
              e->length, e->offset, e->filename ? e->filename : "");
  }
  c->first = false;
  return 0;
}

static const char help[] =
  "Usage: qcowkit map [--output=json|human] [--start-offset N] "
  "[--max-length N] [--force] [--root DIR] IMAGE\n"
  "Show where each guest byte range lives, through the backing chain.\n"
  "The JSON is that of `qemu-img map --output=json`, plus \"compressed\".\n"
  "--force maps even with unknown incompatible feature bits.\n";

int
cmd_map (int argc, char **argv)
{
  struct common_opts o = { .progress = -1 };
  struct map_ctx c = { .first = true };
  uint64_t start = 0, len = UINT64_MAX;
  const char *path = NULL;
  struct qk_image *img;
  int r;

  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp (a, "--help") == 0 || strcmp (a, "-h") == 0) {
      fputs (help, stdout);
      return EXIT_OK;
    }
    if ((r = common_option (&o, argc, argv, &i, "map")) < 0)
      return EXIT_USAGE;
    if (r)
      continue;
    if (strncmp (a, "--start-offset", 14) == 0
        || strncmp (a, "--max-length", 12) == 0) {
      /* --opt N or --opt=N */
      const char *eq = strchr (a, '=');
      const char *val = eq ? eq + 1 : (i + 1 < argc ? argv[i + 1] : NULL);
      size_t nl = eq ? (size_t) (eq - a) : strlen (a);
      uint64_t v;
      if ((nl != 14 && nl != 12) || (nl == 14 && a[2] != 's')
          || (nl == 12 && a[2] != 'm'))
        return usage_error ("map", "unknown option '%s'", a);
      if (!val || !parse_size (val, &v))
        return usage_error ("map", "%.*s needs a size", (int) nl, a);
      if (!eq)
        i++;
      if (a[2] == 's')
        start = v;
      else
        len = v;
    }
    else if (strcmp (a, "--force") == 0)
      o.force = true;
    else if (a[0] == '-' && a[1])
      return usage_error ("map", "unknown option '%s'", a);
    else if (path)
      return usage_error ("map", "too many arguments");
    else
      path = a;
  }
  if (path == NULL)
    return usage_error ("map", "no image given");
  img = open_image (path, &o, o.force ? QK_OPEN_FORCE : 0, true);
  if (img == NULL)
    return EXIT_ERR;
  {
    const char *why = qk_image_unreadable_reason (img);
    if (why) {
      errx_ ("%s: cannot map: %s", path, why);
      qk_image_close (img);
      return EXIT_ERR;
    }
  }
  c.output = o.output;
  if (o.output == OUT_HUMAN)
    printf ("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
  r = qk_image_map (img, start, len, print_extent, &c);
  if (o.output == OUT_JSON) {
    /* Like qemu-img, an empty range (an empty image, a start at or past
     * the end, --max-length 0) is one empty extent at the start asked
     * for, not an empty list. */
    if (c.first && r == 0)
      printf ("[{ \"start\": %" PRIu64 ", \"length\": 0, \"depth\": 0, "
              "\"present\": false, \"zero\": false, \"data\": false}",
              start);
    else if (c.first)
      printf ("[");
    printf ("]\n");
  }
  if (r < 0)
    errx_ ("%s", qk_get_error ());
  qk_image_close (img);
  return r < 0 ? EXIT_ERR : EXIT_OK;
}
