/* Replace one file in a directory crash-safely (tools only). */
#ifndef QK_TOOLS_DURABLE_H
#define QK_TOOLS_DURABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* leaf is one name: not empty, ".", "..", and without '/'. */
extern bool leaf_ok (const char *leaf);

/* Write buf as dirfd/leaf: a new temporary file (O_EXCL, O_NOFOLLOW),
 * written and fsynced, renamed over leaf, the directory fsynced. A crash
 * leaves the old file or the complete new one (and maybe a stray
 * ".LEAF.qk-*"). 0, or -1 with errno (the temporary file removed). */
extern int durable_replace (int dirfd, const char *leaf, const void *buf,
                            size_t len, mode_t mode);

#endif
