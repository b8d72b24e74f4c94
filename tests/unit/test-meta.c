/* Unit tests of lib/meta: the XML tokenizer that guards libxml2 (element
 * boundaries, comments, CDATA, quoted '>', DOCTYPE, depth limit),
 * the <active> range used by the layout conversion, and the problem table. */
#include <config.h>

#include "meta/meta.h"
#include "../tap.h"

struct ev {
  char log[512];
  size_t n;
};

static int
on_tag (void *opaque, bool end, bool empty, unsigned depth, const char *name,
        uint64_t start, uint64_t stop)
{
  struct ev *e = opaque;
  e->n += snprintf (e->log + e->n, sizeof e->log - e->n, "%s%s%s@%u[%u,%u) ",
                    end ? "/" : "", name, empty ? "/" : "", depth,
                    (unsigned) start, (unsigned) stop);
  return 0;
}

static int
scan (const char *doc, struct ev *e, unsigned max_depth, size_t chunk,
      struct xml_scan *sc)
{
  size_t len = strlen (doc);

  memset (e, 0, sizeof *e);
  xml_scan_init (sc, max_depth);
  sc->on_tag = on_tag;
  sc->opaque = e;
  for (size_t i = 0; i < len; i += chunk)
    if (xml_scan_feed (sc, doc + i, len - i < chunk ? len - i : chunk) < 0)
      return -1;
  return xml_scan_finish (sc);
}

int
main (void)
{
  struct xml_scan sc;
  struct ev e;
  const char *doc = "<?xml version='1.0'?>\n<!-- c > -- -->\n<a x='>' y=\"/>\">"
                    "<b/><![CDATA[<c>]]><d>t</d></a>\n";

  /* the same events whatever the chunking */
  for (size_t chunk = 1; chunk <= 64; chunk *= 4) {
    ok (scan (doc, &e, 16, chunk, &sc) == 0, "well-formed (chunks of %zu)",
        chunk);
    is_str (e.log, "a@1[38,54) b/@2[54,58) d@2[73,76) /d@2[77,81) "
            "/a@1[81,85) ", "events (chunks of %zu)", chunk);
  }
  /* libvirt parses a document type declaration: stepped over, its
   * internal subset too, whatever the chunking */
  for (size_t chunk = 1; chunk <= 64; chunk *= 4) {
    ok (scan ("<!DOCTYPE a SYSTEM \"x>\" [<!ENTITY x 'y]>'><!-- ]> ' -->"
              "<?p ]> \" ?>]><a/>", &e, 16, chunk, &sc) == 0,
        "DOCTYPE with an internal subset (chunks of %zu)", chunk);
    is_str (e.log, "a/@1[68,72) ", "its events (chunks of %zu)", chunk);
  }
  ok (scan ("<a><!DOCTYPE a></a>", &e, 16, 7, &sc) < 0
      && sc.err == SCAN_SYNTAX, "DOCTYPE inside the root element");
  ok (scan ("<!-- <!DOCTYPE a> --><a/>", &e, 16, 3, &sc) == 0,
      "DOCTYPE inside a comment is text");
  ok (scan ("<a><a><a></a></a></a>", &e, 2, 5, &sc) < 0
      && sc.err == SCAN_HOSTILE, "depth 3 over a limit of 2");
  ok (scan ("<a><a></a></a>", &e, 2, 5, &sc) == 0, "depth 2 within it");
  ok (scan ("<a>", &e, 16, 1, &sc) < 0 && sc.err == SCAN_SYNTAX,
      "truncated");
  ok (scan ("<a/><b/>", &e, 16, 1, &sc) < 0, "two roots");
  ok (scan ("x<a/>", &e, 16, 1, &sc) < 0, "text before the root");
  ok (scan ("<a x='<'/>", &e, 16, 1, &sc) < 0, "'<' in an attribute");
  ok (scan ("<a></a>", &e, 16, 100, &sc) == 0, "minimal");

  /* the <active> range, with its line */
  {
    const char *el = "<domainsnapshot>\n  <name>s</name>\n  <active>1</active>\n"
                     "</domainsnapshot>";
    size_t a, b;
    char *r;
    meta_active_range (el, strlen (el), &a, &b);
    r = strndup (el + a, b - a);
    is_str (r, "  <active>1</active>\n",
            "active range with indentation and newline");
    free (r);
    el = "<domainsnapshot><name>s</name><active>0</active></domainsnapshot>";
    meta_active_range (el, strlen (el), &a, &b);
    r = strndup (el + a, b - a);
    is_str (r, "<active>0</active>", "active range on one line");
    free (r);
    el = "<domainsnapshot><domain><active>1</active></domain></domainsnapshot>";
    meta_active_range (el, strlen (el), &a, &b);
    ok (a == b, "an <active> deeper down is not the snapshot's");
  }

  /* the problem table: sorted, unique, in the 0x10-0x12 phases */
  {
    uint32_t prev = 0, code;
    const char *name, *desc;
    enum qk_problem_class cls;
    bool sorted = true, ranged = true, described = true;
    for (size_t i = 0; i < qk_meta_problem_count (); i++) {
      qk_meta_problem_info (i, &code, &name, &cls, &desc);
      sorted &= code > prev;
      ranged &= code >= 0x100000 && code < 0x130000;
      described &= desc && strlen (desc) > 20 && name && *name;
      prev = code;
    }
    ok (qk_meta_problem_count () > 30, "%zu problems",
        qk_meta_problem_count ());
    ok (sorted, "codes sorted and unique");
    ok (ranged, "codes in 0x10NNNN..0x12NNNN");
    ok (described, "every row has a name and a description");
    ok (qk_meta_problem_info (qk_meta_problem_count (), NULL, NULL, NULL,
                              NULL) == -1, "past the end: error");
  }

  /* the public API on a missing location: opens, nothing there */
  {
    struct qk_meta_options o = { .libvirt_root = "/nonexistent/qcowkit" };
    struct qk_meta *m = qk_meta_open ("d", &o);
    ok (m != NULL, "qk_meta_open on a missing root");
    ok (m && qk_meta_layout (m, QK_META_SNAPSHOT) == QK_META_LAYOUT_NONE,
        "layout none");
    ok (m && qk_meta_count (m, QK_META_CHECKPOINT) == 0, "no checkpoints");
    ok (m && qk_meta_current (m, QK_META_SNAPSHOT) == QK_META_NONE,
        "no current");
    qk_meta_close (m);
    ok (qk_meta_open ("../x", &o) == NULL && qk_get_errno () == EINVAL,
        "a domain name unsafe as a file name is refused");
  }
  return tap_done ();
}
