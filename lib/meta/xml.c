/* The safe XML layer of lib/meta.
 *
 * Every metadata byte goes first through a small tokenizer (xml_scan) that
 * only finds tags: it steps over a document type declaration (its internal
 * subset included), enforces a depth bound, and reports element
 * boundaries as byte offsets. The bulk reader uses those offsets to cut
 * one <domainsnapshot> at a time out of a file of any size; the per-file
 * reader uses the same pass on the whole file. Only then does libxml2
 * parse the bytes, exactly as libvirt does (virXMLParseHelper: a C string,
 * XML_PARSE_NONET | XML_PARSE_NOWARNING, no encoding forced), so that what
 * libvirt loads is loaded here with the same values, and what it rejects
 * is rejected: internal entities are expanded in text where libvirt's
 * XPath sees them expanded, libxml2's own limits (depth 256 below the
 * root, entity amplification) apply, external entities and DTDs are never
 * loaded (libvirt does not load them either; a resolver that refuses
 * everything makes sure), and the text read out of entities is bounded. */
#include <config.h>

#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/SAX2.h>
#include <libxml/parser.h>
#include <libxml/tree.h>

#include "meta/xml.h"

/* ---- tokenizer ---- */

enum {
  S_TEXT, S_LT, S_BANG, S_COMMENT, S_CDATA, S_PI, S_TAG, S_TAG_ATTRS, S_ETAG,
  S_ETAG_SPACE,
  /* <!DOCTYPE ...>: the declaration, a quoted literal in it, its internal
   * subset [...], a literal there, '<', '<!', '<!-' there, a comment and
   * a processing instruction there (which may hold quotes and ']') */
  S_DT, S_DT_QUOTE, S_DTS, S_DTS_QUOTE, S_DTS_LT, S_DTS_BANG, S_DTS_BANG2,
  S_DTS_COMMENT, S_DTS_PI,
  S_BOM,        /* a UTF-8 byte order mark, first in the file */
};

void
xml_scan_init (struct xml_scan *sc, unsigned max_depth)
{
  memset (sc, 0, sizeof *sc);
  sc->st = S_TEXT;
  sc->max_depth = max_depth;
}

static int
scan_fail (struct xml_scan *sc, enum scan_err e, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));

static int
scan_fail (struct xml_scan *sc, enum scan_err e, const char *fmt, ...)
{
  va_list ap;

  sc->err = e;
  va_start (ap, fmt);
  vsnprintf (sc->errmsg, sizeof sc->errmsg, fmt, ap);
  va_end (ap);
  return -1;
}

static bool
is_space (unsigned char c)
{
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static bool
is_name_char (unsigned char c)
{
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
    || (c >= '0' && c <= '9') || c == '_' || c == ':' || c == '-' || c == '.'
    || c >= 0x80;
}

/* The bytes inside a tag, outside quotes, that change the scanner's
 * state. */
static bool
attr_stop (unsigned char c)
{
  return c == '"' || c == '\'' || c == '>' || c == '<' || c == '/'
    || is_space (c);
}

static bool
is_name_start (unsigned char c)
{
  return is_name_char (c) && !(c >= '0' && c <= '9') && c != '-' && c != '.';
}

static int
tag_done (struct xml_scan *sc, bool end, bool empty)
{
  unsigned d;

  sc->tag[sc->ntag < sizeof sc->tag ? sc->ntag : sizeof sc->tag - 1] = '\0';
  if (end) {
    if (sc->depth == 0)
      return scan_fail (sc, SCAN_SYNTAX, "end tag </%s> at offset %" PRIu64
                        " closes nothing", sc->tag, sc->tag_start);
    d = sc->depth;
    if (sc->on_tag && sc->on_tag (sc->opaque, true, false, d, sc->tag,
                                  sc->tag_start, sc->pos + 1) < 0)
      return -1;
    sc->depth--;
    if (sc->depth == 0)
      sc->root_closed = true;
    return 0;
  }
  if (sc->depth == 0 && sc->root_seen)
    return scan_fail (sc, SCAN_SYNTAX, "a second root element <%s> at offset "
                      "%" PRIu64, sc->tag, sc->tag_start);
  d = sc->depth + 1;
  if (d > sc->max_depth)
    return scan_fail (sc, SCAN_HOSTILE, "elements nest deeper than %u "
                      "levels (at offset %" PRIu64 ")", sc->max_depth,
                      sc->tag_start);
  sc->root_seen = true;
  if (sc->on_tag && sc->on_tag (sc->opaque, false, empty, d, sc->tag,
                                sc->tag_start, sc->pos + 1) < 0)
    return -1;
  if (!empty)
    sc->depth++;
  else if (d == 1)
    sc->root_closed = true;
  return 0;
}

/* Progress through the end of a comment ("-->", rep '-', need 2), a CDATA
 * section ("]]>") or a processing instruction ("?>", need 1): true when
 * c is its last byte. */
static bool
closes (struct xml_scan *sc, unsigned char c, unsigned char rep,
        unsigned need)
{
  if (c == rep) {
    if (sc->match < need)
      sc->match++;
    return false;
  }
  if (c == '>' && sc->match == need)
    return true;
  sc->match = 0;
  return false;
}

/* The rest of a tag's name at once, from buf[*i]; *i is left on its last
 * byte (the caller's loop steps over it). */
static void
take_name (struct xml_scan *sc, const char *buf, size_t len, size_t *i)
{
  size_t j = *i;

  for (; j < len && is_name_char (buf[j]); j++)
    if (sc->ntag < sizeof sc->tag - 1)
      sc->tag[sc->ntag++] = buf[j];
  sc->pos += j - 1 - *i;
  *i = j - 1;
}

int
xml_scan_feed (struct xml_scan *sc, const char *buf, size_t len)
{
  static const char doctype[] = "DOCTYPE";
  static const char cdata[] = "[CDATA[";

  if (sc->err)
    return -1;
  for (size_t i = 0; i < len; i++, sc->pos++) {
    unsigned char c = buf[i];

    switch (sc->st) {
    case S_TEXT:
      if (sc->depth >= 2 || (sc->depth == 1 && sc->on_text == NULL)) {
        /* inside the elements nothing but '<' matters here */
        const char *lt = memchr (buf + i, '<', len - i);
        size_t skip = lt ? (size_t) (lt - (buf + i)) : len - i;
        i += skip;
        sc->pos += skip;
        if (lt == NULL) {
          i--;
          sc->pos--;
          break;
        }
        c = '<';
      }
      if (c == '<') {
        sc->st = S_LT;
        sc->tag_start = sc->pos;
      }
      else if (c == 0xef && sc->pos == 0) {
        /* libxml2 takes it as the encoding's mark, and libvirt loads the
         * file */
        sc->st = S_BOM;
        sc->match = 1;
      }
      else if (!is_space (c)) {
        if (sc->depth == 0)
          return scan_fail (sc, SCAN_SYNTAX, "text outside the root element "
                            "at offset %" PRIu64, sc->pos);
        if (sc->on_text && sc->on_text (sc->opaque, sc->depth, sc->pos) < 0)
          return -1;
      }
      break;
    case S_LT:
      if (c == '!') {
        sc->st = S_BANG;
        sc->nbang = 0;
      }
      else if (c == '?') {
        sc->st = S_PI;
        sc->match = 0;
      }
      else if (c == '/') {
        sc->st = S_ETAG;
        sc->ntag = 0;
      }
      else if (is_name_start (c)) {
        sc->st = S_TAG;
        sc->tag[0] = c;
        sc->ntag = 1;
        sc->last_slash = false;
        sc->quote = 0;
      }
      else
        return scan_fail (sc, SCAN_SYNTAX, "'<' not starting a tag at offset "
                          "%" PRIu64, sc->tag_start);
      break;
    case S_BANG:
      sc->bang[sc->nbang++] = c;
      if (sc->nbang == 2 && memcmp (sc->bang, "--", 2) == 0) {
        sc->st = S_COMMENT;
        sc->match = 0;
      }
      else if (sc->nbang <= 7 && memcmp (sc->bang, cdata, sc->nbang) == 0) {
        if (sc->nbang == 7) {
          if (sc->depth == 0)
            return scan_fail (sc, SCAN_SYNTAX, "CDATA outside the root "
                              "element at offset %" PRIu64, sc->tag_start);
          if (sc->on_text && sc->on_text (sc->opaque, sc->depth,
                                          sc->tag_start) < 0)
            return -1;
          sc->st = S_CDATA;
          sc->match = 0;
        }
      }
      else if (sc->nbang <= 7 && memcmp (sc->bang, doctype, sc->nbang) == 0) {
        /* libvirt parses a document type declaration (libxml2 declares
         * its entities but loads nothing external): step over it here */
        if (sc->nbang == 7) {
          if (sc->depth > 0 || sc->root_seen)
            return scan_fail (sc, SCAN_SYNTAX, "a document type declaration "
                              "after the root element starts, at offset %"
                              PRIu64, sc->tag_start);
          sc->st = S_DT;
        }
      }
      else if (!(sc->nbang == 1 && sc->bang[0] == '-'))
        return scan_fail (sc, SCAN_SYNTAX, "markup declaration <!%.*s at "
                          "offset %" PRIu64 " is not allowed", (int) sc->nbang,
                          sc->bang, sc->tag_start);
      break;
    case S_COMMENT:
    case S_DTS_COMMENT:
      if (closes (sc, c, '-', 2))
        sc->st = sc->st == S_COMMENT ? S_TEXT : S_DTS;
      break;
    case S_CDATA:
      if (closes (sc, c, ']', 2))
        sc->st = S_TEXT;
      break;
    case S_PI:
    case S_DTS_PI:
      if (closes (sc, c, '?', 1))
        sc->st = sc->st == S_PI ? S_TEXT : S_DTS;
      break;
    case S_TAG:
      if (is_name_char (c)) {
        take_name (sc, buf, len, &i);
        break;
      }
      sc->st = S_TAG_ATTRS;
      /* fall through */
    case S_TAG_ATTRS:
      if (sc->quote) {
        const char *q = memchr (buf + i, sc->quote, len - i);
        size_t skip = q ? (size_t) (q - (buf + i)) : len - i;
        if (memchr (buf + i, '<', skip))
          return scan_fail (sc, SCAN_SYNTAX, "'<' in an attribute value at "
                            "offset %" PRIu64, sc->pos);
        i += skip;
        sc->pos += skip;
        if (q == NULL) {
          i--;
          sc->pos--;
          break;
        }
        sc->quote = 0;
      }
      else if (c == '"' || c == '\'')
        sc->quote = c, sc->last_slash = false;
      else if (c == '>') {
        sc->st = S_TEXT;
        if (tag_done (sc, false, sc->last_slash) < 0)
          return -1;
      }
      else if (c == '<')
        return scan_fail (sc, SCAN_SYNTAX, "'<' inside a tag at offset %"
                          PRIu64, sc->pos);
      else if (c == '/')
        sc->last_slash = true;
      else if (!is_space (c)) {
        /* an attribute name or '=': up to the next byte that matters */
        size_t j = i + 1;
        while (j < len && !attr_stop (buf[j]))
          j++;
        sc->last_slash = false;
        sc->pos += j - 1 - i;
        i = j - 1;
      }
      break;
    case S_ETAG:
      if (is_name_char (c)) {
        take_name (sc, buf, len, &i);
        break;
      }
      sc->st = S_ETAG_SPACE;
      /* fall through */
    case S_ETAG_SPACE:
      if (c == '>') {
        sc->st = S_TEXT;
        if (tag_done (sc, true, false) < 0)
          return -1;
      }
      else if (!is_space (c))
        return scan_fail (sc, SCAN_SYNTAX, "bad end tag at offset %" PRIu64,
                          sc->tag_start);
      break;
    case S_BOM:
      if (c != (sc->match == 1 ? 0xbb : 0xbf))
        return scan_fail (sc, SCAN_SYNTAX, "text outside the root element "
                          "at offset 0");
      if (sc->match++ == 2)
        sc->st = S_TEXT;
      break;
    case S_DT:
    case S_DTS:
      if (c == '"' || c == '\'') {
        sc->quote = c;
        sc->st = sc->st == S_DT ? S_DT_QUOTE : S_DTS_QUOTE;
      }
      else if (sc->st == S_DT && c == '[')
        sc->st = S_DTS;
      else if (sc->st == S_DT && c == '>')
        sc->st = S_TEXT;
      else if (sc->st == S_DTS && c == ']')
        sc->st = S_DT;
      else if (sc->st == S_DTS && c == '<')
        sc->st = S_DTS_LT;
      break;
    case S_DT_QUOTE:
    case S_DTS_QUOTE:
      if (c == (unsigned char) sc->quote) {
        sc->quote = 0;
        sc->st = sc->st == S_DT_QUOTE ? S_DT : S_DTS;
      }
      break;
    case S_DTS_LT:
      sc->match = 0;
      sc->st = c == '!' ? S_DTS_BANG : c == '?' ? S_DTS_PI : S_DTS;
      break;
    case S_DTS_BANG:
    case S_DTS_BANG2:
      if (c == '"' || c == '\'') {
        sc->quote = c;
        sc->st = S_DTS_QUOTE;
      }
      else if (c == '-')
        sc->st = sc->st == S_DTS_BANG ? S_DTS_BANG2 : S_DTS_COMMENT;
      else
        sc->st = S_DTS;
      break;
    }
  }
  return 0;
}

bool
xml_scan_idle (const struct xml_scan *sc)
{
  return sc->st == S_TEXT;
}

int
xml_scan_finish (struct xml_scan *sc)
{
  if (sc->err)
    return -1;
  if (!sc->root_seen)
    return scan_fail (sc, SCAN_SYNTAX, "no root element");
  if (!sc->root_closed || sc->st != S_TEXT)
    return scan_fail (sc, SCAN_SYNTAX, "the document ends inside an element "
                      "(truncated?)");
  return 0;
}

/* ---- libxml2, as libvirt calls it ---- */

/* virXMLParseHelper's options. No XML_PARSE_NOENT: entity references stay
 * in the tree and libvirt's XPath string() expands internal ones; no
 * DTDLOAD, so neither the external subset nor an external entity is ever
 * read; no HUGE, so libxml2's depth and amplification limits apply. */
#define PARSE_OPTS (XML_PARSE_NONET | XML_PARSE_NOWARNING | XML_PARSE_NOERROR)

/* libxml2 never asks for an external entity with PARSE_OPTS; should it
 * ever, refuse (and the parse fails) rather than read a file. */
static xmlParserInputPtr
refuse_entity (void *ctx, const xmlChar *public_id, const xmlChar *system_id)
{
  xmlParserCtxtPtr ctxt = ctx;

  (void) public_id;
  (void) system_id;
  if (ctxt)
    ctxt->wellFormed = 0;
  return NULL;
}

/* A snapshot's <domain> is a whole domain definition (kilobytes of
 * devices) of which only <uuid> and <devices><disk> are read. libxml2
 * still parses every byte of it (so it is rejected exactly when libvirt
 * rejects it: tag names, entities, depth, characters), but the elements
 * of <domain> (<inactiveDomain>) other than those, and their text, are
 * not built into the tree. Only for the parse of that document itself:
 * libxml2 parses an entity's text with the same handlers and another
 * context, and that is built whole. The handlers are libxml2's own
 * (xmlSAX2*) for everything that is built. */
struct prune {
  xmlParserCtxtPtr ctxt;
  unsigned skip;            /* depth inside a pruned element */
};

static bool
is_named (xmlNodePtr n, const char *name)
{
  return n && n->type == XML_ELEMENT_NODE
    && xmlStrcmp (n->name, BAD_CAST name) == 0;
}

/* A child of the snapshot's (checkpoint's) <domain> or <inactiveDomain>:
 * n is that element, its parent the root. */
static bool
is_moment_domain (xmlNodePtr n)
{
  return (is_named (n, "domain") || is_named (n, "inactiveDomain"))
    && n->parent && n->parent->type == XML_ELEMENT_NODE
    && !is_named (n->parent, "domstatus")     /* host.c reads it whole */
    && n->parent->parent && n->parent->parent->type == XML_DOCUMENT_NODE;
}

static bool
pruned (xmlNodePtr parent, const xmlChar *name)
{
  const char *n = (const char *) name;

  if (is_moment_domain (parent))
    return strcmp (n, "uuid") != 0 && strcmp (n, "devices") != 0;
  if (is_named (parent, "devices") && is_moment_domain (parent->parent))
    return strcmp (n, "disk") != 0;
  return false;
}

/* This document's own parse, inside a pruned element: drop the event. */
static struct prune *
skipping (void *ctx)
{
  xmlParserCtxtPtr ctxt = ctx;
  struct prune *p = ctxt->_private;

  return p && p->ctxt == ctxt && p->skip ? p : NULL;
}

static void
prune_start (void *ctx, const xmlChar *localname, const xmlChar *prefix,
             const xmlChar *uri, int nb_namespaces, const xmlChar **namespaces,
             int nb_attributes, int nb_defaulted, const xmlChar **attributes)
{
  xmlParserCtxtPtr ctxt = ctx;
  struct prune *p = ctxt->_private;

  if (p && p->ctxt == ctxt && (p->skip || pruned (ctxt->node, localname)))
    p->skip++;
  else
    xmlSAX2StartElementNs (ctx, localname, prefix, uri, nb_namespaces,
                           namespaces, nb_attributes, nb_defaulted,
                           attributes);
}

static void
prune_end (void *ctx, const xmlChar *localname, const xmlChar *prefix,
           const xmlChar *uri)
{
  struct prune *p = skipping (ctx);

  if (p)
    p->skip--;
  else
    xmlSAX2EndElementNs (ctx, localname, prefix, uri);
}

static void
prune_chars (void *ctx, const xmlChar *ch, int len)
{
  if (!skipping (ctx))
    xmlSAX2Characters (ctx, ch, len);
}

static void
prune_cdata (void *ctx, const xmlChar *ch, int len)
{
  if (!skipping (ctx))
    xmlSAX2CDataBlock (ctx, ch, len);
}

static void
prune_reference (void *ctx, const xmlChar *name)
{
  if (!skipping (ctx))
    xmlSAX2Reference (ctx, name);
}

static void
prune_comment (void *ctx, const xmlChar *value)
{
  if (!skipping (ctx))
    xmlSAX2Comment (ctx, value);
}

static void
prune_pi (void *ctx, const xmlChar *target, const xmlChar *data)
{
  if (!skipping (ctx))
    xmlSAX2ProcessingInstruction (ctx, target, data);
}

/* Put the pruning handlers in place of the tree builder's, when those are
 * libxml2's defaults. characters and ignorableWhitespace stay one
 * function, as libxml2 compares them. */
static void
prune_install (xmlParserCtxtPtr ctxt, struct prune *p)
{
  xmlSAXHandlerPtr h = ctxt->sax;

  memset (p, 0, sizeof *p);
  if (h->startElementNs != xmlSAX2StartElementNs
      || h->endElementNs != xmlSAX2EndElementNs
      || h->characters != xmlSAX2Characters
      || h->ignorableWhitespace != xmlSAX2Characters
      || h->cdataBlock != xmlSAX2CDataBlock
      || h->reference != xmlSAX2Reference || h->comment != xmlSAX2Comment
      || h->processingInstruction != xmlSAX2ProcessingInstruction)
    return;
  p->ctxt = ctxt;
  ctxt->_private = p;
  h->startElementNs = prune_start;
  h->endElementNs = prune_end;
  h->characters = h->ignorableWhitespace = prune_chars;
  h->cdataBlock = prune_cdata;
  h->reference = prune_reference;
  h->comment = prune_comment;
  h->processingInstruction = prune_pi;
}

struct _xmlDoc *
meta_xml_parse (const char *buf, size_t len, const char *url, char *err,
                size_t errlen)
{
  xmlParserCtxtPtr ctxt;
  xmlDocPtr doc;
  const char *nul;
  char *str;
  struct prune prune;

  if (len > INT_MAX) {
    snprintf (err, errlen, "too large for libxml2");
    return NULL;
  }
  /* libvirt parses a C string (xmlCtxtReadDoc): whatever follows a NUL is
   * not part of the document. The per-file reader cuts a file there; a
   * NUL still inside the bytes given is an error. */
  nul = memchr (buf, '\0', len);
  if (nul) {
    snprintf (err, errlen, "a NUL byte at offset %zu", (size_t) (nul - buf));
    return NULL;
  }
  /* xmlCtxtReadDoc, as libvirt: a string input cannot switch encodings,
   * so a file declaring anything but UTF-8 fails there as it does here */
  str = malloc (len + 1);
  if (str == NULL) {
    snprintf (err, errlen, "out of memory");
    return NULL;
  }
  memcpy (str, buf, len);
  str[len] = '\0';
  ctxt = xmlNewParserCtxt ();
  if (ctxt == NULL || ctxt->sax == NULL) {
    snprintf (err, errlen, "out of memory");
    if (ctxt)
      xmlFreeParserCtxt (ctxt);
    free (str);
    return NULL;
  }
  ctxt->sax->resolveEntity = refuse_entity;
  prune_install (ctxt, &prune);
  doc = xmlCtxtReadDoc (ctxt, BAD_CAST str, url, NULL, PARSE_OPTS);
  free (str);
  if (doc == NULL || !ctxt->wellFormed || xmlDocGetRootElement (doc) == NULL) {
    const xmlError *e = &ctxt->lastError;
    snprintf (err, errlen, "line %d: %s", e->line,
              e->message ? e->message : "not well-formed");
    /* libxml2 messages end with a newline */
    size_t n = strlen (err);
    while (n && (err[n - 1] == '\n' || err[n - 1] == ' '))
      err[--n] = '\0';
    if (doc)
      xmlFreeDoc (doc);
    doc = NULL;
  }
  xmlFreeParserCtxt (ctxt);
  return doc;
}

void
meta_xml_free_doc (struct _xmlDoc *doc)
{
  if (doc)
    xmlFreeDoc (doc);
}

/* ---- extraction ---- */

static xmlNodePtr
child (xmlNodePtr n, const char *name)
{
  if (n == NULL)
    return NULL;
  for (xmlNodePtr c = n->children; c; c = c->next)
    if (c->type == XML_ELEMENT_NODE && xmlStrcmp (c->name, BAD_CAST name) == 0)
      return c;
  return NULL;
}

/* What extraction reads out of one document, with a budget: entity
 * references are expanded in what is read (as libvirt's XPath string()
 * and xmlGetProp expand them), and libxml2 has refused amplification at
 * parse time already, but what is read stays bounded here anyway. */
#define READ_BUDGET (16U << 20)

struct ex {
  struct qk_strvec *sv;     /* every string kept */
  size_t left;              /* bytes that may still be read */
  bool over;                /* the budget ran out */
  bool oom;
};

static bool
sbuf_add (struct ex *x, struct qk_sbuf *b, const xmlChar *s)
{
  size_t l = s ? strlen ((const char *) s) : 0;

  if (l == 0)
    return true;
  if (l > x->left) {
    x->over = true;
    return false;
  }
  x->left -= l;
  if (!qk_sbuf_add (b, s, l)) {
    x->oom = true;
    return false;
  }
  return true;
}

/* The text of a node list as xmlNodeGetContent gives it: text and CDATA,
 * element descendants' text, entity references replaced by their
 * entity's text; comments and processing instructions left out. */
static bool
gather (struct ex *x, struct qk_sbuf *b, xmlDocPtr doc, xmlNodePtr n,
        unsigned depth)
{
  if (depth > 1024) {
    x->over = true;
    return false;
  }
  for (; n; n = n->next)
    switch (n->type) {
    case XML_TEXT_NODE:
    case XML_CDATA_SECTION_NODE:
      if (!sbuf_add (x, b, n->content))
        return false;
      break;
    case XML_ELEMENT_NODE:
      if (!gather (x, b, doc, n->children, depth + 1))
        return false;
      break;
    case XML_ENTITY_REF_NODE: {
      xmlEntityPtr e = xmlGetDocEntity (doc, n->name);
      if (e && !gather (x, b, doc, e->children, depth + 1))
        return false;
      break;
    }
    default:
      break;
    }
  return true;
}

/* Keep a string of b (taken over) in the moment's string list. */
static const char *
keep (struct ex *x, struct qk_sbuf *b)
{
  char *d = b->p;

  if (x->over || x->oom) {
    free (d);
    return NULL;
  }
  if (d == NULL)
    d = strdup ("");
  else if (b->n + 1 < b->cap) {
    /* kept for the moment's life: no spare room */
    char *fit = realloc (d, b->n + 1);
    if (fit)
      d = fit;
  }
  if (d == NULL || qk_strvec_add (x->sv, d) < 0) {
    free (d);
    x->oom = true;
    return NULL;
  }
  return d;
}

/* libvirt's virXPathString ("string(./X)"): the text exactly, untrimmed.
 * NULL when there is no such element (the caller tells "" apart). */
static const char *
text_of (struct ex *x, xmlNodePtr n)
{
  struct qk_sbuf b = { 0 };

  if (n == NULL)
    return NULL;
  if (!gather (x, &b, n->doc, n->children, 0)) {
    free (b.p);
    return NULL;
  }
  return keep (x, &b);
}

/* libvirt's virXMLPropString (xmlGetProp): the value with entity
 * references expanded, or the default an <!ATTLIST> of the document's
 * DTD gives an attribute the element does not have. */
static const char *
attr (struct ex *x, xmlNodePtr n, const char *name)
{
  struct qk_sbuf b = { 0 };
  xmlAttrPtr a;

  if (n == NULL)
    return NULL;
  a = xmlHasNsProp (n, BAD_CAST name, NULL);
  if (a == NULL)
    return NULL;
  if (a->type == XML_ATTRIBUTE_DECL) {
    if (!sbuf_add (x, &b, ((xmlAttributePtr) a)->defaultValue)) {
      free (b.p);
      return NULL;
    }
  }
  else if (!gather (x, &b, n->doc, a->children, 0)) {
    free (b.p);
    return NULL;
  }
  return keep (x, &b);
}

static bool
parse_int64 (const char *s, int64_t *v)
{
  char *end;
  long long x;

  if (s == NULL || *s == '\0')
    return false;
  errno = 0;
  x = strtoll (s, &end, 10);
  if (errno || *end != '\0')
    return false;
  *v = x;
  return true;
}

static int
domain_disks (struct ex *x, xmlNodePtr dom,
              struct qk_meta_domain_disk **out, size_t *n)
{
  xmlNodePtr devs = child (dom, "devices");
  size_t cap = 0;

  *out = NULL;
  *n = 0;
  if (devs == NULL)
    return 0;
  for (xmlNodePtr d = devs->children; d; d = d->next) {
    struct qk_meta_domain_disk *dd;
    xmlNodePtr src;

    if (d->type != XML_ELEMENT_NODE || xmlStrcmp (d->name, BAD_CAST "disk"))
      continue;
    dd = qk_grow (*out, &cap, *n + 1, sizeof **out);
    if (dd == NULL)
      return -1;
    *out = dd;
    dd = &(*out)[(*n)++];
    memset (dd, 0, sizeof *dd);
    dd->device = attr (x, d, "device");
    dd->target = attr (x, child (d, "target"), "dev");
    src = child (d, "source");
    dd->source = attr (x, src, "file");
    if (dd->source == NULL)
      dd->source = attr (x, src, "dev");
    if (dd->source == NULL)
      dd->source = attr (x, src, "name");
    dd->format = attr (x, child (d, "driver"), "type");
  }
  return 0;
}

static bool
safe_name (const char *s)
{
  return s[0] != '\0' && s[0] != '.' && strchr (s, '/') == NULL;
}

/* virDomainSnapshotStateTypeFromString, less "nostate" (0), which the
 * parser refuses as it refuses an unknown state */
static const char *const states[] = {
  "running", "blocked", "paused", "shutdown", "shutoff", "crashed",
  "pmsuspended", "disk-snapshot", NULL
};

static bool
in_list (const char *s, const char *const *list)
{
  for (; *list; list++)
    if (strcmp (s, *list) == 0)
      return true;
  return false;
}

static void set_msg (struct meta_moment_priv *mp, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

static void
set_msg (struct meta_moment_priv *mp, const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  if (vasprintf (&mp->disk_invalid_msg, fmt, ap) < 0)
    mp->disk_invalid_msg = NULL;
  va_end (ap);
}

static int
add_disks (struct ex *x, struct meta_moment_priv *mp, xmlNodePtr list,
           bool revert, size_t *cap)
{
  static const char *const snap_modes[] = { "no", "internal", "manual",
                                            "external", NULL };
  static const char *const ck_modes[] = { "no", "bitmap", NULL };
  bool ck = mp->pub.kind == QK_META_CHECKPOINT;

  if (list == NULL)
    return 0;
  for (xmlNodePtr d = list->children; d; d = d->next) {
    struct qk_meta_disk *k;
    xmlNodePtr src;

    if (d->type != XML_ELEMENT_NODE || xmlStrcmp (d->name, BAD_CAST "disk"))
      continue;
    k = qk_grow (mp->disks, cap, mp->pub.n_disks + 1, sizeof *k);
    if (k == NULL)
      return -1;
    mp->disks = k;
    k = &mp->disks[mp->pub.n_disks++];
    memset (k, 0, sizeof *k);
    k->revert = revert;
    k->name = attr (x, d, "name");
    k->mode = attr (x, d, ck ? "checkpoint" : "snapshot");
    k->type = attr (x, d, "type");
    src = child (d, "source");
    k->source = attr (x, src, "file");
    if (k->source == NULL)
      k->source = attr (x, src, "dev");
    k->format = attr (x, child (d, "driver"), "type");
    k->bitmap = attr (x, d, "bitmap");
    k->delete_in_progress = child (d, "snapshotDeleteInProgress") != NULL;
    if (ck && k->bitmap == NULL && k->mode && strcmp (k->mode, "bitmap") == 0)
      k->bitmap = mp->pub.name;
    if (ck && k->mode == NULL)
      k->mode = k->bitmap ? "bitmap" : NULL;
    if (!ck && k->mode == NULL && (k->source || k->format))
      k->mode = "external";
    if (mp->disk_invalid)
      continue;
    if (k->name == NULL || k->name[0] == '\0') {
      mp->disk_invalid = true;
      set_msg (mp, "a <disk> without name=");
    }
    else if (k->mode && !in_list (k->mode, ck ? ck_modes : snap_modes)) {
      mp->disk_invalid = true;
      set_msg (mp, "disk '%s' has an unknown %s='%s'",
                k->name, ck ? "checkpoint" : "snapshot", k->mode);
    }
  }
  return 0;
}

/* virUUIDParse: surrounding white space, '-' and ' ' between the pairs
 * of exactly 32 hex digits. The canonical form (lower case, dashed) goes
 * to u; false when libvirt would refuse the text. */
static bool
parse_uuid (const char *t, char u[37])
{
  size_t i = 0, o = 0;

  while (is_space (*t))
    t++;
  while (i < 32) {
    if (*t == '-' || *t == ' ') {
      t++;
      continue;
    }
    if (!isxdigit ((unsigned char) t[0]) || !isxdigit ((unsigned char) t[1]))
      return false;
    for (int k = 0; k < 2; k++, i++) {
      if (i == 8 || i == 12 || i == 16 || i == 20)
        u[o++] = '-';
      u[o++] = tolower ((unsigned char) t[k]);
    }
    t += 2;
  }
  u[o] = '\0';
  for (; *t; t++)
    if (!is_space (*t))
      return false;
  return true;
}

/* The UUID a domain's <uuid> stands for, in the canonical form, so that
 * comparing two is comparing what libvirt compares. NULL when there is
 * none (libvirt makes one up); *bad when libvirt refuses the text (the
 * raw text is kept). */
static const char *
domain_uuid (struct ex *x, xmlNodePtr dom, bool *bad)
{
  const char *t = text_of (x, child (dom, "uuid"));
  char u[37];
  char *d;

  *bad = false;
  if (t == NULL || *t == '\0')
    return NULL;
  if (!parse_uuid (t, u)) {
    *bad = true;
    return t;
  }
  d = strdup (u);
  if (d == NULL || qk_strvec_add (x->sv, d) < 0) {
    free (d);
    x->oom = true;
    return NULL;
  }
  return d;
}

/* virStrToLong_i: strtol's syntax (leading space, a sign), nothing after
 * the digits, and within an int. */
static bool
parse_int (const char *s, int *v)
{
  int64_t x;

  if (!parse_int64 (s, &x) || x < INT_MIN || x > INT_MAX)
    return false;
  *v = (int) x;
  return true;
}

/* Fill mp from a parsed <domainsnapshot>/<domaincheckpoint> document.
 * Records what libvirt would make of it (loaded or skipped) and the
 * findings. Every text is read as libvirt reads it: XPath string() of the
 * first such child, untrimmed (so "<name> s </name>" is the name " s ",
 * and "<creationTime>1 </creationTime>" is no number), an empty text
 * being no text. Returns -1 only on allocation failure. */
int
meta_extract_moment (struct qk_meta *m, struct meta_set *s,
                     struct _xmlDoc *doc, struct meta_moment_priv *mp)
{
  struct ex ex = { .sv = &mp->strs, .left = READ_BUDGET }, *x = &ex;
  struct qk_meta_moment *p = &mp->pub;
  xmlNodePtr root = xmlDocGetRootElement (doc);
  const char *where = p->file;
  bool ck = s->kind == QK_META_CHECKPOINT, bad_uuid = false;
  const char *t, *kname = ck ? "checkpoint" : "snapshot";
  xmlNodePtr dom, act;
  size_t cap = 0;
  char off[48] = "";

  if (s->layout == QK_META_LAYOUT_BULK)
    snprintf (off, sizeof off, " (element at offset %" PRIu64 ")", p->offset);
  if (root == NULL
      || xmlStrcmp (root->name, BAD_CAST meta_elem_name (s->kind)) != 0) {
    meta_add_finding (m, MP_PARSE, s->kind, p->offset, "%s%s: the root element "
                      "is <%s>, not <%s>", where, off,
                      root ? (const char *) root->name : "", meta_elem_name (s->kind));
    mp->parse_failed = true;
    p->loaded = false;
    return 0;
  }
  p->loaded = true;
  p->name = text_of (x, child (root, "name"));
  p->parent = text_of (x, child (child (root, "parent"), "name"));
  if (p->parent && p->parent[0] == '\0')
    p->parent = NULL;
  if (p->name == NULL || p->name[0] == '\0') {
    p->name = NULL;
    if (!x->over)
      meta_add_finding (m, MP_MISSING_NAME, s->kind, p->offset,
                        "%s%s: the %s has no <name>", where, off, kname);
    p->loaded = false;
  }
  else if (!safe_name (p->name) || strcmp (p->name, "..") == 0) {
    /* libvirt refuses the name for a new snapshot but loads the file:
     * loaded, yet never written under that name */
    mp->unsafe_name = true;
    meta_add_finding (m, MP_UNSAFE_NAME, s->kind, p->offset,
                      "%s%s: %s name '%s' cannot be a file name; libvirt "
                      "loads it but fails to update it", where, off, kname,
                      p->name);
  }
  if (!ck) {
    p->state = text_of (x, child (root, "state"));
    if (p->state == NULL || !in_list (p->state, states)) {
      mp->bad_state = true;
      if (p->state)
        meta_add_finding (m, MP_MISSING_STATE, s->kind, p->offset,
                          "%s%s: snapshot '%s' has an unknown state '%s'",
                          where, off, p->name ? p->name : "?", p->state);
      else if (!x->over)
        meta_add_finding (m, MP_MISSING_STATE, s->kind, p->offset,
                          "%s%s: snapshot '%s' has no <state>", where, off,
                          p->name ? p->name : "?");
      p->loaded = false;
    }
  }
  t = text_of (x, child (root, "creationTime"));
  p->has_creation_time = parse_int64 (t, &p->creation_time);
  if (!p->has_creation_time) {
    mp->bad_ctime = true;
    if (!x->over)
      meta_add_finding (m, MP_MISSING_CTIME, s->kind, p->offset,
                        "%s%s: %s '%s' has %s", where, off, kname,
                        p->name ? p->name : "?",
                        t && *t ? "a <creationTime> that is not a number"
                                : "no <creationTime>");
    p->loaded = false;
  }
  act = child (root, "active");
  p->active = -1;
  if (act) {
    int a;
    t = text_of (x, act);
    if (parse_int (t, &a))
      p->active = a != 0;
    else
      mp->bad_active = true;
  }
  if (ck && act) {
    mp->has_active_elem = true;
    meta_add_finding (m, MP_CHECKPOINT_ACTIVE, s->kind, p->offset,
                      "%s%s: checkpoint '%s' has an <active> element (an "
                      "early on-disk format)", where, off,
                      p->name ? p->name : "?");
  }
  if (!ck && s->layout == QK_META_LAYOUT_PER_FILE
      && (act == NULL || mp->bad_active) && !x->over) {
    meta_add_finding (m, MP_MISSING_ACTIVE, s->kind, p->offset,
                      "%s: snapshot '%s' has %s", where,
                      p->name ? p->name : "?",
                      act ? "an <active> that is not an int"
                          : "no <active> element");
    p->loaded = false;
  }
  if (add_disks (x, mp, child (root, "disks"), false, &cap) < 0
      || add_disks (x, mp, child (root, "revertDisks"), true, &cap) < 0)
    return -1;
  p->disks = mp->disks;
  if (mp->disk_invalid && !x->over) {
    meta_add_finding (m, MP_DISK_INVALID, s->kind, p->offset, "%s%s: %s '%s': "
                      "%s", where, off, kname, p->name ? p->name : "?",
                      mp->disk_invalid_msg ? mp->disk_invalid_msg : "bad disk");
    p->loaded = false;
  }
  dom = child (root, "domain");
  if (dom == NULL)
    dom = child (root, "inactiveDomain");
  if (dom) {
    p->domain_uuid = domain_uuid (x, dom, &bad_uuid);
    if (domain_disks (x, dom, &mp->ddisks, &p->n_domain_disks) < 0)
      return -1;
    p->domain_disks = mp->ddisks;
  }
  if (x->oom)
    return -1;
  if (x->over) {
    meta_add_finding (m, MP_HOSTILE, s->kind, p->offset, "%s%s: %s '%s': "
                      "entity references expand to more than %u bytes in "
                      "what qcowkit reads; not read further", where, off,
                      kname, p->name ? p->name : "?", READ_BUDGET);
    p->loaded = false;
    mp->parse_failed = true;
  }
  else if (bad_uuid) {
    meta_add_finding (m, MP_PARSE, s->kind, p->offset, "%s%s: %s '%s': the "
                      "<uuid> '%s' of its domain is malformed; libvirt fails "
                      "to parse the %s and skips it", where, off, kname,
                      p->name ? p->name : "?", p->domain_uuid, kname);
    p->loaded = false;
  }
  return 0;
}

/* The domain definition: UUID and disks. */
int
meta_extract_domain (struct qk_meta *m, struct _xmlDoc *doc)
{
  struct ex ex = { .sv = &m->dstrs, .left = READ_BUDGET }, *x = &ex;
  xmlNodePtr root = xmlDocGetRootElement (doc);
  bool bad_uuid;

  if (root == NULL || xmlStrcmp (root->name, BAD_CAST "domain") != 0)
    return 0;
  m->uuid = (char *) domain_uuid (x, root, &bad_uuid);
  if (domain_disks (x, root, &m->ddisks, &m->n_ddisks) < 0 || x->oom)
    return -1;
  if (x->over)
    return 0;
  m->domain_ok = true;
  return 0;
}
