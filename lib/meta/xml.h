/* lib/meta/xml.h: the safe XML layer (xml.c): the scanner, libxml2 with
 * the safe options, and the extraction of a document into the model.
 * Above the model only (layer order in meta.h). */
#ifndef QK_META_XML_H
#define QK_META_XML_H

#include "meta/model.h"

/* Scanner events over raw XML bytes (tokenizer only: finds element
 * boundaries, rejects DOCTYPE, enforces depth). */
enum scan_err {
  SCAN_OK = 0,
  SCAN_SYNTAX,      /* not well-formed at the level the scanner sees */
  SCAN_HOSTILE,     /* DOCTYPE, or too deep */
  SCAN_TOO_LARGE,
  SCAN_IO,
};

struct xml_scan {
  /* state */
  int st;
  unsigned depth;
  unsigned max_depth;
  char quote;
  unsigned match;         /* progress through a terminator or keyword */
  char bang[10];
  unsigned nbang;
  char tag[64];
  unsigned ntag;
  bool tag_end;           /* end tag */
  bool last_slash;
  bool root_seen, root_closed;
  uint64_t pos;           /* absolute offset of the next byte */
  uint64_t tag_start;     /* offset of '<' of the current tag */
  bool text_nonspace;     /* non-space text at depth 1 seen */
  /* callback on every element start tag end and end tag end:
   * start: depth is the element's depth (root = 1), empty for <x/>.
   * end: depth of the element being closed. */
  int (*on_tag) (void *opaque, bool end, bool empty, unsigned depth,
                 const char *name, uint64_t start, uint64_t stop);
  int (*on_text) (void *opaque, unsigned depth, uint64_t at);
  void *opaque;
  enum scan_err err;
  char errmsg[160];
};

extern void xml_scan_init (struct xml_scan *sc, unsigned max_depth);
/* Feed bytes; returns 0 or -1 (sc->err, sc->errmsg set). */
extern int xml_scan_feed (struct xml_scan *sc, const char *buf, size_t len);
/* Whether the scanner is between tags (no tag bytes pending). */
extern bool xml_scan_idle (const struct xml_scan *sc);
/* After all bytes: -1 unless exactly one root element was closed. */
extern int xml_scan_finish (struct xml_scan *sc);

/* Parse a complete, already scanned buffer with the safe options. */
struct _xmlDoc;
extern struct _xmlDoc *meta_xml_parse (const char *buf, size_t len,
                                       const char *url, char *err,
                                       size_t errlen);
extern void meta_xml_free_doc (struct _xmlDoc *doc);

/* Fill a moment (or the domain) from a parsed document. */
extern int meta_extract_moment (struct qk_meta *m, struct meta_set *s,
                                struct _xmlDoc *doc,
                                struct meta_moment_priv *mp);
extern int meta_extract_domain (struct qk_meta *m, struct _xmlDoc *doc);

#endif
