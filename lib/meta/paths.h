/* lib/meta/paths.h: where the metadata is (paths.c): directories under a
 * libvirt root, paths under the sysroot, the layout of each kind, and
 * opening and reading files there. Above the model only (layer order in
 * meta.h). */
#ifndef QK_META_PATHS_H
#define QK_META_PATHS_H

#include <sys/stat.h>

#include "meta/model.h"

extern char *meta_host_path (const struct qk_meta *m, const char *path);
/* Open (or stat) a host path made by meta_host_path, resolved again under
 * the sysroot so that nothing swapped in since leads out of it. */
extern int meta_open (const struct qk_meta *m, const char *host, int flags);
extern int meta_stat (const struct qk_meta *m, const char *host,
                      struct stat *st);
/* Read a whole regular file from fd (taken over), at most max bytes:
 * 0, -1 (errno; EINVAL and *mode for a file that is not regular), or 1
 * when it is larger than max (*size set). */
extern int meta_read_limited_fd (int fd, uint64_t max, char **buf,
                                 size_t *len, uint64_t *size, mode_t *mode);
/* A domain name that can be a file name (no '/', no leading '.'). */
extern bool meta_domain_name_ok (const char *d);
/* o's configuration and state directories, before the sysroot. */
extern void meta_dirs (const struct qk_meta_options *o, char **cfg,
                       char **state);
/* What a file that is not a regular file is, for messages ("a FIFO
 * (named pipe)"). */
extern const char *meta_file_type (mode_t mode);
/* Set m's sysroot and directories from o (m->domain set). */
extern int meta_locate (struct qk_meta *m, const struct qk_meta_options *o);
/* Find the layout of kind in m (m->set[kind]), with its findings. */
extern int meta_locate_set (struct qk_meta *m, int kind);

#endif
