/* The public API only, linked against the shared libqcowkit, compiled as
 * ISO C99 with -pedantic. */
#define _GNU_SOURCE 1   /* the test's own files and locks (qcowkit.h
                           needs nothing: api-syms.sh compiles it alone) */
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcowkit.h"
#include "tap.h"

static void
put32 (unsigned char *p, unsigned long v)
{
  p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

static void
put64 (unsigned char *p, unsigned long long v)
{
  put32 (p, (unsigned long) (v >> 32));
  put32 (p + 4, (unsigned long) (v & 0xffffffffUL));
}

/* A 4 KiB v3 image with 512-byte clusters: header, reftable, refblock, L1,
 * L2, one data cluster mapped at guest offset 512 and a zero cluster at
 * 1024. */
static unsigned char img[6 * 512];

static void
build (void)
{
  memset (img, 0, sizeof img);
  put32 (img, 0x514649fbUL);
  put32 (img + 4, 3);
  put32 (img + 20, 9);              /* cluster_bits */
  put64 (img + 24, 4096);           /* size */
  put32 (img + 36, 1);              /* l1_size */
  put64 (img + 40, 3 * 512);        /* l1_table_offset */
  put64 (img + 48, 1 * 512);        /* refcount_table_offset */
  put32 (img + 56, 1);
  put32 (img + 96, 4);              /* refcount_order */
  put32 (img + 100, 104);           /* header_length */
  put64 (img + 512, 2 * 512);       /* reftable[0] -> refblock */
  for (int i = 0; i < 6; i++)
    img[1024 + 2 * i + 1] = 1;      /* refcounts of clusters 0..5 */
  put64 (img + 3 * 512, (4 * 512) | (1ULL << 63));
  put64 (img + 4 * 512 + 8, (5 * 512) | (1ULL << 63));  /* L2[1] data */
  put64 (img + 4 * 512 + 16, 1);                        /* L2[2] zero */
  memset (img + 5 * 512, 0xa5, 512);
}

struct ext { unsigned long long start[8], len[8]; int data[8], zero[8], n; };

static int
collect (void *opaque, const struct qk_extent *e)
{
  struct ext *x = opaque;
  if (x->n < 8) {
    x->start[x->n] = e->start;
    x->len[x->n] = e->length;
    x->data[x->n] = e->data;
    x->zero[x->n] = e->zero;
    x->n++;
  }
  return 0;
}

/* ---- QCOWKIT_0.8: what tools/qcowkit needed besides ---- */

static struct qk_root *test_root;

static struct qk_source *
open_in_root (void *opaque, const char *path)
{
  int fd = qk_root_open (opaque, path, O_RDONLY, 0);
  return fd < 0 ? NULL : qk_source_fd (fd, path);
}

static int
put_file (const char *path, const void *p, size_t n)
{
  int fd = open (path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  int r = fd >= 0 && write (fd, p, n) == (ssize_t) n ? 0 : -1;
  if (fd >= 0)
    close (fd);
  return r;
}

static void
tools_api (void)
{
  struct qk_header hh;
  struct qk_open_options oo;
  struct qk_image *i;
  struct qk_source *s;
  char dir[] = "/tmp/qk-api-XXXXXX", p[512], rd[8];
  char *t;
  int fd, r;

  ok (qk_header_parse (img, sizeof img, &hh) == 0 && hh.cluster_size == 512
      && hh.refcount_bits == 16 && hh.l2_entries == 64 && hh.l1_size == 1,
      "qk_header_parse decodes the header and its derived fields");
  ok (qk_header_parse (img, 71, &hh) < 0 && qk_get_errno () == EBADMSG,
      "qk_header_parse: 71 bytes fail with EBADMSG");
  t = qk_path_normalize ("a//b/./c/../d");
  is_str (t, "a/b/d", "qk_path_normalize");
  free (t);
  qk_root_free (NULL);
  qk_source_close (NULL);
  ok (qk_root_new ("/nonexistent/qk-root", QK_ROOT_IN) == NULL
      && qk_get_errno () == ENOENT, "qk_root_new of a missing directory");

  if (mkdtemp (dir) == NULL) {
    ok (0, "mkdtemp");
    return;
  }
  snprintf (p, sizeof p, "%s/sub", dir);
  mkdir (p, 0755);
  snprintf (p, sizeof p, "%s/file", dir);
  put_file (p, "inside", 6);
  snprintf (p, sizeof p, "%s/sub/abs", dir);
  ok (symlink ("/file", p) == 0, "an absolute symlink in the root");
  snprintf (p, sizeof p, "%s/img.qcow2", dir);
  put_file (p, img, sizeof img);

  test_root = qk_root_new (dir, QK_ROOT_IN);
  ok (test_root != NULL, "qk_root_new (QK_ROOT_IN)");
  if (test_root == NULL)
    return;
  fd = qk_root_open (test_root, "/sub/abs", O_RDONLY, 0);
  memset (rd, 0, sizeof rd);
  ok (fd >= 0 && read (fd, rd, 6) == 6 && memcmp (rd, "inside", 6) == 0,
      "an absolute symlink restarts from the root");
  if (fd >= 0)
    close (fd);
  fd = qk_root_open (test_root, "/../../file", O_RDONLY, 0);
  ok (fd >= 0, "\"..\" stops at the root");
  if (fd >= 0)
    close (fd);
  t = qk_root_host_path (test_root, "/sub/abs");
  snprintf (p, sizeof p, "%s/file", dir);
  is_str (t, p, "qk_root_host_path resolves the symlink inside the root");
  free (t);
  snprintf (p, sizeof p, "%s/sub/x", dir);
  is_str (qk_root_strip (test_root, p), "/sub/x", "qk_root_strip");
  ok (qk_root_strip (test_root, "/elsewhere") == NULL,
      "qk_root_strip of a path outside");
  {
    struct qk_root *b = qk_root_new (dir, QK_ROOT_BENEATH);
    fd = b ? qk_root_open (b, "sub/../../etc/passwd", O_RDONLY, 0) : -2;
    ok (fd == -1 && qk_get_errno () == EXDEV,
        "QK_ROOT_BENEATH: leaving the root fails with EXDEV");
    qk_root_free (b);
  }

  memset (&oo, 0, sizeof oo);
  oo.open_fn = open_in_root;
  oo.open_opaque = test_root;
  i = qk_image_open ("/img.qcow2", &oo);
  ok (i && qk_image_header (i) && qk_image_virtual_size (i) == 4096,
      "qk_source_fd from an open_fn under the root");
  ok (i && qk_image_luks (i) == NULL, "qk_image_luks: none without LUKS");
  qk_image_close (i);

  fd = qk_root_open (test_root, "/img.qcow2", O_RDONLY, 0);
  s = fd >= 0 ? qk_source_fd (fd, "img.qcow2") : NULL;
  ok (s && qk_source_lock_test (s, QK_LOCK_READ) == 0,
      "qk_source_lock_test: nobody holds the image");
#ifdef F_OFD_SETLK
  {
    /* what a running VM holds: the write permission (byte 101) */
    struct flock fl;
    int vm;
    snprintf (p, sizeof p, "%s/img.qcow2", dir);
    vm = open (p, O_RDWR);
    memset (&fl, 0, sizeof fl);
    fl.l_type = F_RDLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = 101;
    fl.l_len = 1;
    r = vm >= 0 ? fcntl (vm, F_OFD_SETLK, &fl) : -1;
    ok (r == 0 && s && qk_source_lock_test (s, QK_LOCK_READ) < 0
        && qk_get_errno () == EBUSY,
        "qk_source_lock_test: EBUSY while a writer holds it");
    if (vm >= 0)
      close (vm);
  }
#endif
  qk_source_close (s);
  qk_root_free (test_root);

  ok (qk_leaf_ok ("a.xml") && !qk_leaf_ok ("") && !qk_leaf_ok ("..")
      && !qk_leaf_ok ("a/b") && !qk_leaf_ok (NULL), "qk_leaf_ok");
  fd = open (dir, O_RDONLY | O_DIRECTORY);
  snprintf (p, sizeof p, "%s/file", dir);
  ok (fd >= 0 && qk_durable_write (fd, "file", "new", 3, 0600, 0) < 0
      && qk_get_errno () == EEXIST,
      "qk_durable_write: an existing file is kept without QK_DURABLE_REPLACE");
  memset (rd, 0, sizeof rd);
  r = fd >= 0 ? qk_durable_write (fd, "file", "new", 3, 0600,
                                  QK_DURABLE_REPLACE) : -1;
  {
    int in = open (p, O_RDONLY);
    struct stat st;
    ok (r == 0 && in >= 0 && read (in, rd, 8) == 3 && memcmp (rd, "new", 3) == 0
        && fstat (in, &st) == 0 && (st.st_mode & 0777) == 0600,
        "qk_durable_write (QK_DURABLE_REPLACE) replaces the file");
    if (in >= 0)
      close (in);
  }
  ok (fd >= 0 && qk_durable_write (fd, "../x", "new", 3, 0600, 0) < 0,
      "qk_durable_write refuses a name that is not a leaf");
  if (fd >= 0)
    close (fd);
  snprintf (p, sizeof p, "%s/img.qcow2", dir);
  unlink (p);
  snprintf (p, sizeof p, "%s/sub/abs", dir);
  unlink (p);
  snprintf (p, sizeof p, "%s/file", dir);
  unlink (p);
  snprintf (p, sizeof p, "%s/sub", dir);
  rmdir (p);
  rmdir (dir);
}

int
main (void)
{
  struct qk_image *i;
  unsigned char buf[4096];
  struct ext x;
  const struct qk_header *h;

  qk_image_close (NULL);
  ok (1, "qk_image_close (NULL) is a no-op");
  /* The structures callers allocate keep their size for good: new fields
   * take reserved slots (a change here is an ABI break). */
  ok (sizeof (struct qk_open_options)
      == 2 * sizeof (unsigned) + 3 * sizeof (void *) + 6 * 8
         + 4 * sizeof (void *)
      || sizeof (void *) != 8,
      "struct qk_open_options has its fixed size (%zu bytes)",
      sizeof (struct qk_open_options));
  ok (sizeof (struct qk_check_result) == 27 * 8,
      "struct qk_check_result has its fixed size (%zu bytes)",
      sizeof (struct qk_check_result));
  ok (qk_version () != NULL && strlen (qk_version ()) > 0, "qk_version");

  i = qk_image_open ("/nonexistent/qcowkit-test.qcow2", NULL);
  ok (i == NULL, "opening a missing file fails");
  ok (qk_get_errno () == ENOENT, "errno is ENOENT");
  ok (qk_get_error () && strstr (qk_get_error (), "/nonexistent/"),
      "the error names the file: %s", qk_get_error ());

  i = qk_image_open_memory ("QFI", 3, "short", NULL);
  ok (i != NULL, "three bytes open as a raw image");
  if (i) {
    is_str (qk_image_format (i), "raw", "format is raw");
    /* QEMU rounds a raw image up to whole 512-byte sectors */
    is_u64 (qk_image_virtual_size (i), 512,
            "raw virtual size is the length rounded up to 512");
    memset (buf, 0x77, sizeof buf);
    ok (qk_image_read (i, buf, 512, 0) == 0 && memcmp (buf, "QFI", 3) == 0
        && buf[3] == 0 && buf[511] == 0, "the rounded-up tail reads as zeros");
    qk_image_close (i);
  }

  build ();
  img[4 + 3] = 9;
  i = qk_image_open_memory (img, sizeof img, "badver", NULL);
  ok (i == NULL && qk_get_errno () == EBADMSG, "version 9 fails with EBADMSG");
  build ();

  i = qk_image_open_memory (img, sizeof img, "mem.qcow2", NULL);
  ok (i != NULL, "the hand-built image opens");
  if (i == NULL)
    return tap_done ();
  h = qk_image_header (i);
  is_str (qk_image_format (i), "qcow2", "format is qcow2");
  is_u64 (h->cluster_size, 512, "cluster size");
  is_u64 (h->l2_entries, 64, "L2 entries");
  is_u64 (qk_image_virtual_size (i), 4096, "virtual size");
  is_u64 (qk_image_warning_count (i), 0, "no warnings");
  ok (qk_image_unreadable_reason (i) == NULL, "readable");

  memset (buf, 0x77, sizeof buf);
  ok (qk_image_read (i, buf, 4096, 0) == 0, "read the whole disk");
  ok (buf[0] == 0 && buf[511] == 0, "unallocated cluster reads as zeros");
  ok (buf[512] == 0xa5 && buf[1023] == 0xa5, "data cluster reads its data");
  ok (buf[1024] == 0 && buf[4095] == 0, "zero cluster reads as zeros");
  ok (qk_image_read (i, buf, 2, 4095) < 0 && qk_get_errno () == EINVAL,
      "reading past the end fails with EINVAL");

  memset (&x, 0, sizeof x);
  ok (qk_image_map (i, 0, (unsigned long long) -1, collect, &x) == 0, "map");
  is_u64 (x.n, 4, "four extents");
  is_u64 (x.start[1], 512, "extent 1 starts at 512");
  ok (x.data[1] && !x.zero[1], "extent 1 is data");
  ok (!x.data[2] && x.zero[2], "extent 2 is zero");
  ok (!x.data[0] && x.zero[0] && !x.data[3] && x.zero[3],
      "unallocated extents read as zero");
  {
    uint32_t n;
    const uint64_t *l1 = qk_image_l1 (i, &n);
    ok (l1 && n == 1 && (l1[0] & 0xffffffffffffULL) == 2048, "L1 is borrowed");
  }
  ok (qk_image_select_snapshot (i, "nope") < 0 && qk_get_errno () == ENOENT,
      "selecting a missing snapshot fails with ENOENT");
  qk_image_close (i);
  tools_api ();
  return tap_done ();
}
