/* Per-thread error state (libnbd style, fixed buffers: no allocation on
 * error paths). */
#include <config.h>

#include <stdio.h>
#include <string.h>

#include "internal.h"

#define ERRBUF 1024

static _Thread_local char errbuf[ERRBUF];
static _Thread_local int errnum_last;

void
qk_internal_set_error (int errnum, const char *context, const char *fmt, ...)
{
  char msg[ERRBUF];
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);

  if (errnum && errnum != EBADMSG)
    snprintf (errbuf, sizeof errbuf, "%s: %s: %s", context, msg,
              strerror (errnum));
  else
    snprintf (errbuf, sizeof errbuf, "%s: %s", context, msg);
  errnum_last = errnum;
  errno = errnum;
}

void
qk_internal_prefix_error (const char *fmt, ...)
{
  char pre[ERRBUF], old[ERRBUF];
  va_list ap;
  int e = errnum_last;

  va_start (ap, fmt);
  vsnprintf (pre, sizeof pre, fmt, ap);
  va_end (ap);
  memcpy (old, errbuf, sizeof old);
  snprintf (errbuf, sizeof errbuf, "%s: %s", pre, old);
  errno = errnum_last = e;
}

void
qk_internal_save_error (struct qk_saved_error *sv)
{
  memcpy (sv->msg, errbuf, sizeof sv->msg);
  sv->errnum = errnum_last;
}

void
qk_internal_restore_error (const struct qk_saved_error *sv)
{
  memcpy (errbuf, sv->msg, sizeof errbuf);
  errno = errnum_last = sv->errnum;
}

QK_EXPORT const char *
qk_get_error (void)
{
  return errbuf[0] ? errbuf : NULL;
}

QK_EXPORT int
qk_get_errno (void)
{
  return errnum_last;
}

QK_EXPORT const char *
qk_version (void)
{
  return PACKAGE_VERSION;
}
