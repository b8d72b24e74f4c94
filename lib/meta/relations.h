/* lib/meta/relations.h: the checks of the relations between moments
 * (relations.c), on a loaded model (layer order in meta.h). */
#ifndef QK_META_RELATIONS_H
#define QK_META_RELATIONS_H

#include "meta/model.h"

extern void meta_check_relations (struct qk_meta *m, struct meta_report *r);

#endif
