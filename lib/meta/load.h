/* lib/meta/load.h: loading the metadata into the model (load.c), through
 * the XML layer at the places paths.c finds (layer order in meta.h). */
#ifndef QK_META_LOAD_H
#define QK_META_LOAD_H

#include "meta/xml.h"
#include "meta/paths.h"

/* Load the domain and both kinds into m (findings kept in m). */
extern int meta_load (struct qk_meta *m);
/* Load s (kind, layout, dir or bulk set) into m. */
extern int meta_load_set_at (struct qk_meta *m, struct meta_set *s);
/* Reload m's metadata from the files. */
extern int meta_reload (struct qk_meta *m);

/* The byte range [*a, *b) of the <active> child (with its indentation and
 * newline) in one element's bytes; *a == *b when there is none. */
extern void meta_active_range (const char *elem, size_t len, size_t *a,
                               size_t *b);
extern uint64_t meta_hash2 (const char *p1, size_t n1, const char *p2,
                            size_t n2);

#endif
