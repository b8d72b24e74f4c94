/* lib/meta/crosscheck.h: the checks of the metadata against the images
 * (crosscheck.c), and the disk and image helpers the writers share with
 * them (layer order in meta.h). */
#ifndef QK_META_CROSSCHECK_H
#define QK_META_CROSSCHECK_H

#include "meta/paths.h"

extern void meta_check_images (struct qk_meta *m, struct meta_report *r);
/* The same file (normalised path, or under m's sysroot the same inode). */
extern bool meta_same_path (const struct qk_meta *m, const char *a,
                            const char *b);
/* Open an image read-only with its backing chain, resolved like every
 * other path of m (under its sysroot). */
extern struct qk_image *meta_image_open (struct qk_meta *m, const char *path);
/* The disk of a <domain> with target (or source path) name. */
extern const struct qk_meta_domain_disk *
meta_ddisk (const struct qk_meta_domain_disk *d, size_t n, const char *name);
/* The <disk> of a moment's <disks> (revert: of its <revertDisks>). */
extern const struct qk_meta_disk *meta_mdisk (const struct qk_meta_moment *p,
                                              const char *target, bool revert);
extern bool meta_is_external (const struct qk_meta_disk *d);
/* The image a disk used right after moment p was taken (*revert: after a
 * revert to it, or NULL). */
extern const char *meta_active_after (const struct qk_meta_moment *p,
                                      const char *target,
                                      const char **revert);

#endif
