/* lib/meta internal declarations: libvirt snapshot and checkpoint
 * metadata. Uses only the public image API and lib/util. */
#ifndef QK_META_META_H
#define QK_META_META_H

#include "meta/model.h"
#include "meta/xml.h"
#include "meta/paths.h"

/* store.c */
extern int meta_load (struct qk_meta *m);
/* Load s (kind, layout, dir or bulk set) into m. */
extern int meta_load_set_at (struct qk_meta *m, struct meta_set *s);

/* relations.c */
extern void meta_check_relations (struct qk_meta *m, struct meta_report *r);

/* crosscheck.c */
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

/* The byte range [*a, *b) of the <active> child (with its indentation and
 * newline) in one element's bytes; *a == *b when there is none. */
extern void meta_active_range (const char *elem, size_t len, size_t *a,
                               size_t *b);
extern uint64_t meta_hash2 (const char *p1, size_t n1, const char *p2,
                            size_t n2);

/* convert.c */
extern int meta_convert (struct qk_meta *m, int kind, int layout,
                         unsigned flags);
/* Reload m's metadata from the files. */
extern int meta_reload (struct qk_meta *m);

#endif
