/* qkpoke: damage (or inspect) a file byte-exactly, for tests; in the
 * spirit of qemu-iotests' poke_file.
 *
 *   qkpoke FILE OFFSET HEXBYTES          write raw bytes (e.g. ff00)
 *   qkpoke FILE OFFSET be16|be32|be64 V  write a big-endian integer
 *   qkpoke FILE peek OFFSET be16|be32|be64
 *                                        print the big-endian integer there
 *   qkpoke FILE truncate LENGTH          set the file length
 *
 * Numbers are decimal or 0x hex. Exit 0 ok, 1 failure, 2 usage. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage_text[] =
  "Usage: qkpoke FILE OFFSET HEXBYTES\n"
  "       qkpoke FILE OFFSET be16|be32|be64 VALUE\n"
  "       qkpoke FILE peek OFFSET be16|be32|be64\n"
  "       qkpoke FILE truncate LENGTH\n"
  "Numbers are decimal or 0x hex.\n";

static int usage (const char *fmt, ...)
  __attribute__ ((format (printf, 1, 2)));

static int
usage (const char *fmt, ...)
{
  va_list ap;

  fputs ("qkpoke: ", stderr);
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fputc ('\n', stderr);
  fputs (usage_text, stderr);
  return 2;
}

/* Decimal or 0x hex, the whole string, no sign. */
static bool
parse_u64 (const char *s, uint64_t *v)
{
  char *end;
  unsigned long long n;
  int base = 10;

  if (s == NULL || *s == '\0')
    return false;
  if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
    base = 16;
    s += 2;
    if (*s == '\0')
      return false;
  }
  for (const char *p = s; *p; p++)
    if (!(base == 16 ? (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')
                       || (*p >= 'A' && *p <= 'F')
                     : (*p >= '0' && *p <= '9')))
      return false;
  errno = 0;
  n = strtoull (s, &end, base);
  if (errno || *end != '\0')
    return false;
  *v = n;
  return true;
}

static int
width_of (const char *s)
{
  if (strcmp (s, "be16") == 0)
    return 2;
  if (strcmp (s, "be32") == 0)
    return 4;
  if (strcmp (s, "be64") == 0)
    return 8;
  return 0;
}

static int
hexval (int c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

static int
write_at (const char *file, uint64_t off, const uint8_t *p, size_t n)
{
  int fd = open (file, O_WRONLY | O_CLOEXEC);
  size_t done = 0;

  if (fd < 0) {
    fprintf (stderr, "qkpoke: %s: %s\n", file, strerror (errno));
    return 1;
  }
  while (done < n) {
    ssize_t r = pwrite (fd, p + done, n - done, (off_t) (off + done));
    if (r < 0) {
      if (errno == EINTR)
        continue;
      fprintf (stderr, "qkpoke: %s: write at %" PRIu64 ": %s\n", file,
               off + done, strerror (errno));
      close (fd);
      return 1;
    }
    done += r;
  }
  if (close (fd) < 0) {
    fprintf (stderr, "qkpoke: %s: close: %s\n", file, strerror (errno));
    return 1;
  }
  return 0;
}

static int
peek (const char *file, uint64_t off, int w)
{
  uint8_t b[8];
  uint64_t v = 0;
  ssize_t r;
  int fd = open (file, O_RDONLY | O_CLOEXEC);

  if (fd < 0) {
    fprintf (stderr, "qkpoke: %s: %s\n", file, strerror (errno));
    return 1;
  }
  do
    r = pread (fd, b, w, (off_t) off);
  while (r < 0 && errno == EINTR);
  if (r < 0) {
    fprintf (stderr, "qkpoke: %s: read at %" PRIu64 ": %s\n", file, off,
             strerror (errno));
    close (fd);
    return 1;
  }
  close (fd);
  if (r < w) {
    fprintf (stderr, "qkpoke: %s: %d bytes at %" PRIu64 " are past the end "
             "of the file\n", file, w, off);
    return 1;
  }
  for (int i = 0; i < w; i++)
    v = v << 8 | b[i];
  printf ("%" PRIu64 "\n", v);
  return 0;
}

int
main (int argc, char **argv)
{
  const char *file;
  uint64_t off, v;

  if (argc == 2 && (strcmp (argv[1], "--help") == 0
                    || strcmp (argv[1], "-h") == 0)) {
    fputs (usage_text, stdout);
    return 0;
  }
  if (argc < 4)
    return usage ("%s", "too few arguments");
  file = argv[1];

  if (strcmp (argv[2], "peek") == 0) {
    int w;
    if (argc != 5)
      return usage ("%s", "peek needs OFFSET and be16|be32|be64");
    if (!parse_u64 (argv[3], &off) || off > INT64_MAX)
      return usage ("bad offset '%s'", argv[3]);
    if ((w = width_of (argv[4])) == 0)
      return usage ("bad width '%s' (be16, be32 or be64)", argv[4]);
    return peek (file, off, w);
  }

  if (strcmp (argv[2], "truncate") == 0) {
    if (argc != 4)
      return usage ("%s", "truncate needs LENGTH");
    if (!parse_u64 (argv[3], &v) || v > INT64_MAX)
      return usage ("bad length '%s'", argv[3]);
    if (truncate (file, (off_t) v) < 0) {
      fprintf (stderr, "qkpoke: %s: truncate to %" PRIu64 ": %s\n", file, v,
               strerror (errno));
      return 1;
    }
    return 0;
  }

  if (!parse_u64 (argv[2], &off) || off > INT64_MAX)
    return usage ("bad offset '%s'", argv[2]);

  if (argc == 5) {
    uint8_t b[8];
    int w = width_of (argv[3]);
    if (w == 0)
      return usage ("bad width '%s' (be16, be32 or be64)", argv[3]);
    if (!parse_u64 (argv[4], &v))
      return usage ("bad value '%s'", argv[4]);
    if (w < 8 && v >> (8 * w))
      return usage ("value '%s' does not fit the width", argv[4]);
    for (int i = w - 1; i >= 0; i--, v >>= 8)
      b[i] = v & 0xff;
    return write_at (file, off, b, w);
  }
  if (argc == 4 && width_of (argv[3]))
    return usage ("%s needs a VALUE", argv[3]);  /* not the hex bytes be 32 */
  if (argc == 4) {
    const char *h = argv[3];
    size_t n = strlen (h);
    uint8_t *b;
    int r;

    if (n == 0 || n % 2)
      return usage ("'%s' is not an even number of hex digits", h);
    b = malloc (n / 2);
    if (b == NULL) {
      fprintf (stderr, "qkpoke: out of memory\n");
      return 1;
    }
    for (size_t i = 0; i < n / 2; i++) {
      int hi = hexval (h[2 * i]), lo = hexval (h[2 * i + 1]);
      if (hi < 0 || lo < 0) {
        free (b);
        return usage ("'%s' is not hex bytes", h);
      }
      b[i] = hi << 4 | lo;
    }
    r = write_at (file, off, b, n / 2);
    free (b);
    return r;
  }
  return usage ("%s", "too many arguments");
}
