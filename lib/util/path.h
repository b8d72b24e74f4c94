/* lib/util/path.h: every path that an image header or a metadata file can
 * name goes through here.
 *
 * The rule, for every read and every write: a path below a root is
 * resolved one component at a time and never leaves the root. With
 * QK_ROOT_IN the root acts as "/" (a sysroot: ".." stops at it, absolute
 * symlinks restart from it); with QK_ROOT_BENEATH leaving it is an error
 * (EXDEV), as for --root. The kernel does it where it can (openat2 with
 * RESOLVE_IN_ROOT / RESOLVE_BENEATH); elsewhere a walk with O_NOFOLLOW
 * does the same. Writers never follow a symlink in the last component:
 * they open the parent (qk_root_open_parent) and use the *at() calls on
 * the leaf name. */
#ifndef QK_UTIL_PATH_H
#define QK_UTIL_PATH_H

#include <stdbool.h>
#include <sys/types.h>

#include "qcowkit.h"

/* enum qk_root_mode (QK_ROOT_HOST, QK_ROOT_IN, QK_ROOT_BENEATH) and the
 * calls exported to the tools (qk_root_new, qk_root_open,
 * qk_root_host_path, qk_root_strip, qk_path_normalize) are in
 * lib/qcowkit.h; struct qk_root is opaque there. */
struct qk_root {
  int fd;               /* the root directory (AT_FDCWD for the host) */
  char *path;           /* as given, without trailing slashes; "" host */
  enum qk_root_mode mode;
};

/* A name QEMU would take as a protocol or a json: specification
 * ("nbd:...", "json:{...}"): a colon before any slash. */
extern bool qk_path_has_protocol (const char *name);
/* QEMU's path_combine: name relative to the directory of base. */
extern char *qk_path_combine (const char *base, const char *name);
/* Lexical normalisation: "//", "/./" and "dir/.." collapse; a leading
 * ".." of a relative path is kept; "" becomes ".". */
extern char *qk_path_normalize (const char *p);

/* dir NULL (or mode QK_ROOT_HOST): the host. Returns 0 or -1 (error set). */
extern int qk_root_init (struct qk_root *r, const char *dir,
                         enum qk_root_mode mode);
extern void qk_root_fini (struct qk_root *r);
/* Open path resolved under r (absolute or relative, both from the root;
 * from the cwd for the host). Symlinks are followed inside the root, the
 * last one only without O_NOFOLLOW. flags and mode as openat(2); O_CLOEXEC
 * is added. Returns an fd, or -1 with errno and the error set. */
extern int qk_root_open (const struct qk_root *r, const char *path, int flags,
                         mode_t mode);
/* Open (O_RDONLY | O_DIRECTORY) the directory holding path's last
 * component, resolved under r, and return that component in *leaf (to
 * free), for mkdirat/renameat/unlinkat/openat(O_NOFOLLOW), which never
 * follow it. A last component of "", "." or ".." is EINVAL. */
extern int qk_root_open_parent (const struct qk_root *r, const char *path,
                                char **leaf);
/* The host path path resolves to under r (for messages and for APIs that
 * take paths): symlinks inside the root resolved, components that do not
 * exist kept as written. NULL with errno (EXDEV: leaves a BENEATH root). */
extern char *qk_root_host_path (const struct qk_root *r, const char *path);
/* path as given below r (r->path + "/..." stripped), or NULL when path
 * does not start with r->path. For host paths made by qk_root_host_path. */
extern const char *qk_root_strip (const struct qk_root *r, const char *path);

/* Tests: 1 forces the O_NOFOLLOW walk even where openat2 exists. */
extern int qk_path_force_walk;

#endif
