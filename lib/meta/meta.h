/* lib/meta internal declarations: libvirt snapshot and checkpoint
 * metadata. Uses only the public image API and lib/util.
 *
 * The layers of lib/meta (issue #12), bottom first; a file includes (and
 * calls) only its own layer's header and those of layers below it:
 *
 *   0  model.c        model.h       the model, problem rows, links
 *   1  xml.c          xml.h         the safe XML layer, extraction
 *   1  paths.c        paths.h       directories, sysroot, layout, reading
 *   2  load.c         load.h        loading files into the model
 *   3  relations.c    relations.h   checks of the relations
 *   3  crosscheck.c   crosscheck.h  checks against the images
 *   4  metacheck.c    (qcowkit.h)   qk_meta_check, the check driver
 *   5  edit.c convert.c repair.c delete.c revert.c host.c
 *                     meta.h, edit.h  the writers (and host discovery)
 *
 * meta.h, the writers' header, includes them all. tests/layers.sh checks
 * the order on the #include lines and the calls. */
#ifndef QK_META_META_H
#define QK_META_META_H

#include "meta/model.h"
#include "meta/xml.h"
#include "meta/paths.h"
#include "meta/load.h"
#include "meta/relations.h"
#include "meta/crosscheck.h"

/* convert.c */
extern int meta_convert (struct qk_meta *m, int kind, int layout,
                         unsigned flags);

#endif
