/* Fault injection layer (io/io.h), for fault sweeps of every writer.
 *
 * Guarantees: writes and flushes are counted in the order they reach this
 * layer, from 1. At number n of the chosen kind it fails with EIO (and
 * again for every later one, unless QK_FAULT_ONCE), or raises SIGKILL,
 * before passing the operation down: exactly n - 1 writes (or flushes)
 * reached the source below, and the faulting one did not. SIGKILL cannot
 * be caught, so a writer cannot tidy up after it: what is on disk is what
 * a crash at that point leaves (short of a power loss, which also drops
 * what was not flushed). Reads pass through uncounted.
 *
 * QCOWKIT_FAULT=write-fail-N | write-kill-N | flush-fail-N | flush-kill-N
 * asks for one from outside (qk_source_fault_env), so shell tests can
 * sweep N over a command.
 *
 * The file writers (libvirt metadata: rename, unlink, mkdir...) have no
 * byte source to layer; they call qk_fault_point after each operation,
 * and QCOWKIT_FAULT=after-OP-N kills the process right after the Nth OP.
 * Both grammars are read here, and each side ignores the other's: a
 * metadata writer that runs an image writer (meta delete commits) needs
 * no juggling of the variable. */
#include <config.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "io/io.h"

struct fault {
  enum qk_fault_kind kind;
  uint64_t n;
  bool once;
  uint64_t writes, flushes;
};

/* 0: pass the operation down, -1: fail it (error set). */
static int
hit (struct qk_source *s, uint64_t count, bool is_write)
{
  struct fault *f = s->priv;
  bool kill_, mine;

  if (is_write)
    mine = f->kind == QK_FAULT_WRITE_FAIL || f->kind == QK_FAULT_WRITE_KILL;
  else
    mine = f->kind == QK_FAULT_FLUSH_FAIL || f->kind == QK_FAULT_FLUSH_KILL;
  if (!mine || f->n == 0 || count < f->n || (f->once && count > f->n))
    return 0;
  kill_ = f->kind == QK_FAULT_WRITE_KILL || f->kind == QK_FAULT_FLUSH_KILL;
  if (kill_) {
    raise (SIGKILL);
    abort ();   /* not reached */
  }
  set_error (EIO, "%s: injected %s failure (number %" PRIu64 ")", s->name,
             is_write ? "write" : "flush", count);
  return -1;
}

static int
fault_pwrite (struct qk_source *s, const void *buf, size_t len, uint64_t off)
{
  struct fault *f = s->priv;
  int r;

  if (hit (s, ++f->writes, true) < 0)
    return -1;
  r = qk_source_pwrite (s->below, buf, len, off);
  qk_source_layer_sync (s);
  return r;
}

static int
fault_flush (struct qk_source *s)
{
  struct fault *f = s->priv;

  if (hit (s, ++f->flushes, false) < 0)
    return -1;
  return qk_source_flush (s->below);
}

static int
fault_truncate (struct qk_source *s, uint64_t size)
{
  struct fault *f = s->priv;
  int r;

  /* a truncate changes the file as a write does: count it as one */
  if (hit (s, ++f->writes, true) < 0)
    return -1;
  r = qk_source_truncate (s->below, size);
  qk_source_layer_sync (s);
  return r;
}

static void
fault_close (struct qk_source *s)
{
  free (s->priv);
}

static const struct qk_source_ops fault_ops = {
  .pread = qk_source_below_pread,
  .block_status = qk_source_below_block_status,
  .pwrite = fault_pwrite,
  .flush = fault_flush,
  .truncate = fault_truncate,
  .close = fault_close,
};

struct qk_source *
qk_source_fault (struct qk_source *below, enum qk_fault_kind kind,
                 uint64_t n, unsigned flags)
{
  struct qk_source *s;
  struct fault *f;

  if ((unsigned) kind > QK_FAULT_FLUSH_KILL) {
    set_error (EINVAL, "unknown fault kind %d", (int) kind);
    return qk_source_layer_abandon (below, flags);
  }
  f = calloc (1, sizeof *f);
  if (f == NULL) {
    set_error (ENOMEM, "calloc");
    return qk_source_layer_abandon (below, flags);
  }
  s = qk_source_layer_new (below, &fault_ops, "fault", flags);
  if (s == NULL) {
    free (f);
    return NULL;
  }
  f->kind = kind;
  f->n = n;
  f->once = flags & QK_FAULT_ONCE;
  s->priv = f;
  return s;
}

int
qk_fault_parse (const char *spec, enum qk_fault_kind *kind, uint64_t *n)
{
  static const struct {
    const char *prefix;
    enum qk_fault_kind kind;
  } kinds[] = {
    { "write-fail-", QK_FAULT_WRITE_FAIL },
    { "write-kill-", QK_FAULT_WRITE_KILL },
    { "flush-fail-", QK_FAULT_FLUSH_FAIL },
    { "flush-kill-", QK_FAULT_FLUSH_KILL },
  };

  for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
    size_t k = strlen (kinds[i].prefix);
    const char *p = spec + k;
    char *end;
    unsigned long long v;

    if (strncmp (spec, kinds[i].prefix, k) != 0)
      continue;
    if (*p < '0' || *p > '9')
      break;
    errno = 0;
    v = strtoull (p, &end, 10);
    if (errno || *end || v == 0)
      break;
    *kind = kinds[i].kind;
    *n = v;
    return 0;
  }
  set_error (EINVAL, "QCOWKIT_FAULT='%s': expected write-fail-N, "
             "write-kill-N, flush-fail-N or flush-kill-N (N from 1)", spec);
  return -1;
}

struct qk_source *
qk_source_fault_env (struct qk_source *below, unsigned flags)
{
  const char *spec = getenv ("QCOWKIT_FAULT");
  enum qk_fault_kind kind;
  uint64_t n;

  if (spec == NULL || *spec == '\0' || strncmp (spec, "after-", 6) == 0)
    return below;
  if (qk_fault_parse (spec, &kind, &n) < 0) {
    return qk_source_layer_abandon (below, flags);
  }
  return qk_source_fault (below, kind, n, flags);
}

void
qk_source_fault_counts (const struct qk_source *s, uint64_t *writes,
                        uint64_t *flushes)
{
  const struct fault *f = s->ops == &fault_ops ? s->priv : NULL;
  static const struct fault none;

  if (f == NULL)
    f = &none;
  if (writes)
    *writes = f->writes;
  if (flushes)
    *flushes = f->flushes;
}

void
qk_fault_point (const char *op)
{
  static unsigned counts[8];
  static const char *const ops[] = { "write", "fsync", "rename", "unlink",
                                     "mkdir", "rmdir", NULL };
  const char *f = getenv ("QCOWKIT_FAULT");
  char want[32];

  if (f == NULL || strncmp (f, "after-", 6) != 0)
    return;
  for (int i = 0; ops[i]; i++)
    if (strcmp (ops[i], op) == 0) {
      counts[i]++;
      snprintf (want, sizeof want, "after-%s-%u", op, counts[i]);
      if (strcmp (f, want) == 0)
        raise (SIGKILL);
    }
}
