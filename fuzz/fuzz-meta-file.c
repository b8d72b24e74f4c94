/* Fuzz one libvirt metadata document as the per-file layout reads it
 * (KIND/DOMAIN/NAME.xml), from memory: the guarding tokenizer over the
 * whole file, libxml2 with the safe options, the extraction of a
 * <domainsnapshot> or <domaincheckpoint> (or of a <domain> definition),
 * the <active> range the layout conversion cuts out, and the checks of
 * the one-moment set.
 *
 * Oracles besides the sanitizers: tag offsets stay inside the input, a
 * document libxml2 finds well-formed is not refused by the tokenizer as
 * a syntax error, and what the extraction loads has what libvirt needs
 * (a name, a known state, a creation time; a name unsafe as a file name
 * is loaded, as libvirt loads it, but marked). */
#include <config.h>

#include <stdlib.h>

#include "fuzz.h"
#include "meta/meta.h"

#define MAX_DEPTH 1024   /* the loader's default */

struct tags {
  size_t len;
  uint64_t root_start, root_end;
  uint64_t act_start, act_end;
  bool act;
};

/* What the loader's doc_on_tag records, plus bounds checks. */
static int
on_tag (void *opaque, bool end, bool empty, unsigned depth, const char *name,
        uint64_t start, uint64_t stop)
{
  struct tags *t = opaque;

  if (start >= stop || stop > t->len || depth == 0 || depth > MAX_DEPTH
      || name == NULL)
    __builtin_trap ();
  if (depth == 1) {
    if (!end)
      t->root_start = start;
    if (end || empty)
      t->root_end = stop;
  }
  else if (depth == 2 && !t->act && strcmp (name, "active") == 0) {
    if (!end)
      t->act_start = start;
    if (end || empty) {
      t->act_end = stop;
      t->act = true;
    }
  }
  return 0;
}

static int
on_problem (void *opaque, const struct qk_problem *p)
{
  size_t *n = opaque;
  if (p->message == NULL || p->name == NULL)
    __builtin_trap ();
  *n += strlen (p->message);
  return 0;
}

static bool
known_state (const char *s)
{
  static const char *const states[] = {
    "running", "blocked", "paused", "shutdown", "shutoff", "crashed",
    "disk-snapshot", "pmsuspended", NULL
  };
  for (size_t i = 0; states[i]; i++)
    if (strcmp (s, states[i]) == 0)
      return true;
  return false;
}

static void
load_moment (struct qk_meta *m, int kind, struct _xmlDoc *doc,
             const char *buf, size_t len, const struct tags *t)
{
  struct meta_set *s = &m->set[kind];
  struct meta_moment_priv *mp = calloc (1, sizeof *mp);
  const struct qk_meta_moment *p = &mp->pub;
  size_t a = 0, b = 0, n = t->root_end - t->root_start;
  const char *e = buf + t->root_start;

  if (mp == NULL)
    return;
  s->m = mp;
  s->n = s->cap = 1;
  s->layout = QK_META_LAYOUT_PER_FILE;
  mp->pub.kind = kind;
  mp->pub.active = -1;
  mp->pub.parent_index = mp->pub.first_child = mp->pub.next_sibling =
    QK_META_NONE;
  mp->pub.file = "fuzz.xml";
  mp->file_size = len;
  mp->pub.offset = t->root_start;
  mp->pub.length = n;
  if (t->root_end < t->root_start || t->root_end > len)
    __builtin_trap ();
  if (t->act && kind == QK_META_SNAPSHOT) {
    a = t->act_start - t->root_start;
    b = t->act_end - t->root_start;
    if (a > b || b > n)
      __builtin_trap ();
  }
  mp->hash = meta_hash2 (e, a, e + b, n - b);
  if (meta_extract_moment (m, s, doc, mp) < 0)
    return;
  if (p->loaded) {
    if (p->name == NULL || p->name[0] == '\0')
      __builtin_trap ();
    if ((p->name[0] == '.' || strchr (p->name, '/')) && !mp->unsafe_name)
      __builtin_trap ();
    if (!p->has_creation_time)
      __builtin_trap ();
    if (kind == QK_META_SNAPSHOT
        && (p->state == NULL || !known_state (p->state) || p->active < 0))
      __builtin_trap ();
  }
  for (size_t i = 0; i < p->n_disks; i++)
    if (p->disks[i].name)
      (void) strlen (p->disks[i].name);
  meta_link (s);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  const char *buf = (const char *) data;
  struct tags t = { .len = size };
  struct xml_scan sc;
  struct _xmlDoc *doc;
  struct qk_meta *m;
  char err[256];
  bool scanned;
  size_t n = 0, a, b;

  xml_scan_init (&sc, MAX_DEPTH);
  sc.on_tag = on_tag;
  sc.opaque = &t;
  scanned = xml_scan_feed (&sc, buf, size) == 0 && xml_scan_finish (&sc) == 0;
  if (!scanned && sc.err != SCAN_SYNTAX)
    return 0;     /* DOCTYPE or too deep: never reaches libxml2 */
  doc = meta_xml_parse (buf, size, "fuzz.xml", err, sizeof err);
  if (!scanned) {
    /* a well-formed document refused by the tokenizer would be metadata
     * libvirt loads and qcowkit calls unparsable. NUL bytes are left out:
     * libvirt reads the file as a C string and stops at the first one,
     * and the per-file reader cuts the file there before both */
    bool known = memchr (buf, '\0', size) != NULL;
    if (doc && !known)
      __builtin_trap ();
    meta_xml_free_doc (doc);
    return 0;
  }
  if (doc == NULL)
    return 0;

  m = calloc (1, sizeof *m);
  if (m == NULL) {
    meta_xml_free_doc (doc);
    return 0;
  }
  m->lim.max_size = 16 << 20;
  m->lim.max_depth = MAX_DEPTH;
  for (int k = 0; k < 2; k++) {
    m->set[k].kind = k;
    m->set[k].current = m->set[k].claimed = QK_META_NONE;
  }
  {
    const char *root = buf + t.root_start + 1;
    size_t rl = t.root_end - t.root_start - 1;
    if (rl >= 6 && memcmp (root, "domain", 6) == 0
        && (rl == 6 || strchr (" \t\r\n/>", root[6])))
      (void) meta_extract_domain (m, doc);
    else if (rl >= 16 && memcmp (root, "domaincheckpoint", 16) == 0)
      load_moment (m, QK_META_CHECKPOINT, doc, buf, size, &t);
    else
      load_moment (m, QK_META_SNAPSHOT, doc, buf, size, &t);
  }
  meta_xml_free_doc (doc);

  /* what the layout conversion cuts out of an element */
  meta_active_range (buf + t.root_start, t.root_end - t.root_start, &a, &b);
  if (a > b || b > t.root_end - t.root_start)
    __builtin_trap ();

  (void) qk_meta_check (m, 0, on_problem, &n);
  for (int k = 0; k < 2; k++) {
    size_t c = qk_meta_current (m, k);
    if (c != QK_META_NONE && c >= qk_meta_count (m, k))
      __builtin_trap ();
    for (size_t i = 0; i < qk_meta_count (m, k); i++)
      n += qk_meta_moment (m, k, i)->n_disks;
  }
  meta_unload (m);
  free (m);
  return 0;
}
