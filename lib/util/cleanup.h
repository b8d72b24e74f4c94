/* qcowkit: scope-bound cleanup (GCC/Clang). */
#ifndef QK_UTIL_CLEANUP_H
#define QK_UTIL_CLEANUP_H

#include <stdlib.h>

static inline void
cleanup_free_ptr (void *p)
{
  free (*(void **) p);
}

#define CLEANUP_FREE __attribute__ ((cleanup (cleanup_free_ptr)))

#endif
