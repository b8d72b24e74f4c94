/* lib/meta: the check driver (issue #12 split it out of store.c): the
 * findings kept from the load, then the relations (relations.c) and, when
 * asked, the images (crosscheck.c). Below the writers, above everything
 * else (layer order in meta.h). */
#include <config.h>

#include "meta/relations.h"
#include "meta/crosscheck.h"

QK_EXPORT int
qk_meta_check (struct qk_meta *m, unsigned flags, qk_problem_fn fn,
               void *opaque)
{
  struct meta_report r = { .fn = fn, .opaque = opaque };

  for (size_t i = 0; i < m->nf; i++)
    meta_report (&r, m->f[i].pr, "%s", m->f[i].msg);
  meta_check_relations (m, &r);
  if (flags & QK_META_CHECK_IMAGES)
    meta_check_images (m, &r);
  return r.errors;
}
