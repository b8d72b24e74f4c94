/* Streaming JSON writer. */
#include <config.h>

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

#define MAXDEPTH 64

struct qk_json {
  FILE *out;
  int indent;
  int depth;
  int count[MAXDEPTH + 1];
  bool is_array[MAXDEPTH + 1];
};

struct qk_json *
qk_json_new (FILE *out, int indent)
{
  struct qk_json *j = calloc (1, sizeof *j);
  if (j) {
    j->out = out;
    j->indent = indent;
  }
  return j;
}

int
qk_json_free (struct qk_json *j)
{
  int r = 0;
  if (j == NULL)
    return 0;
  fputc ('\n', j->out);
  if (ferror (j->out))
    r = -1;
  free (j);
  return r;
}

/* The length of the well-formed UTF-8 sequence at s[0..n) (RFC 3629,
 * table 3-7: no overlong forms, no surrogates, nothing above U+10FFFF),
 * or 0. */
static size_t
utf8_seq (const unsigned char *s, size_t n)
{
  unsigned char c = s[0], lo = 0x80, hi = 0xbf;
  size_t len;

  if (c >= 0xc2 && c <= 0xdf)
    len = 2;
  else if (c >= 0xe0 && c <= 0xef) {
    len = 3;
    if (c == 0xe0) lo = 0xa0;        /* overlong */
    if (c == 0xed) hi = 0x9f;        /* surrogates */
  }
  else if (c >= 0xf0 && c <= 0xf4) {
    len = 4;
    if (c == 0xf0) lo = 0x90;        /* overlong */
    if (c == 0xf4) hi = 0x8f;        /* above U+10FFFF */
  }
  else
    return 0;
  if (len > n || s[1] < lo || s[1] > hi)
    return 0;
  for (size_t k = 2; k < len; k++)
    if ((s[k] & 0xc0) != 0x80)
      return 0;
  return len;
}

void
qk_json_quote (FILE *out, const char *s, size_t n)
{
  fputc ('"', out);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = s[i];
    switch (c) {
    case '"': fputs ("\\\"", out); break;
    case '\\': fputs ("\\\\", out); break;
    case '\n': fputs ("\\n", out); break;
    case '\r': fputs ("\\r", out); break;
    case '\t': fputs ("\\t", out); break;
    case '\b': fputs ("\\b", out); break;
    case '\f': fputs ("\\f", out); break;
    default:
      if (c < 0x20 || c == 0x7f)
        fprintf (out, "\\u%04x", c);
      else if (c >= 0x80) {
        /* Pass well-formed UTF-8 through; each byte of anything else
         * (from a hostile image) becomes U+FFFD, so the output is always
         * valid JSON in valid UTF-8. */
        size_t len = utf8_seq ((const unsigned char *) s + i, n - i);
        if (len) {
          fwrite (s + i, 1, len, out);
          i += len - 1;
        }
        else
          fputs ("\\ufffd", out);
      }
      else
        fputc (c, out);
    }
  }
  fputc ('"', out);
}

static void
newline (struct qk_json *j)
{
  if (j->indent) {
    fputc ('\n', j->out);
    for (int i = 0; i < j->depth * j->indent; i++)
      fputc (' ', j->out);
  }
}

static void
prefix (struct qk_json *j, const char *key)
{
  if (j->depth > 0) {
    if (j->count[j->depth]++)
      fputc (',', j->out);
    newline (j);
  }
  if (key && j->depth > 0 && !j->is_array[j->depth]) {
    qk_json_quote (j->out, key, strlen (key));
    fputs (j->indent ? ": " : ":", j->out);
  }
}

static void
open_c (struct qk_json *j, const char *key, char c, bool arr)
{
  prefix (j, key);
  fputc (c, j->out);
  if (j->depth < MAXDEPTH)
    j->depth++;
  j->count[j->depth] = 0;
  j->is_array[j->depth] = arr;
}

static void
close_c (struct qk_json *j, char c)
{
  bool empty = j->count[j->depth] == 0;
  if (j->depth > 0)
    j->depth--;
  if (!empty)
    newline (j);
  fputc (c, j->out);
}

void qk_json_object_begin (struct qk_json *j, const char *key) { open_c (j, key, '{', false); }
void qk_json_object_end (struct qk_json *j) { close_c (j, '}'); }
void qk_json_array_begin (struct qk_json *j, const char *key) { open_c (j, key, '[', true); }
void qk_json_array_end (struct qk_json *j) { close_c (j, ']'); }

void
qk_json_string (struct qk_json *j, const char *key, const char *s)
{
  if (s == NULL) {
    qk_json_null (j, key);
    return;
  }
  qk_json_stringn (j, key, s, strlen (s));
}

void
qk_json_stringn (struct qk_json *j, const char *key, const char *s, size_t n)
{
  prefix (j, key);
  qk_json_quote (j->out, s, n);
}

void
qk_json_int (struct qk_json *j, const char *key, int64_t v)
{
  prefix (j, key);
  fprintf (j->out, "%" PRId64, v);
}

void
qk_json_uint (struct qk_json *j, const char *key, uint64_t v)
{
  prefix (j, key);
  fprintf (j->out, "%" PRIu64, v);
}

void
qk_json_bool (struct qk_json *j, const char *key, bool v)
{
  prefix (j, key);
  fputs (v ? "true" : "false", j->out);
}

void
qk_json_null (struct qk_json *j, const char *key)
{
  prefix (j, key);
  fputs ("null", j->out);
}

void
qk_json_hex (struct qk_json *j, const char *key, uint64_t v)
{
  prefix (j, key);
  fprintf (j->out, "\"0x%" PRIx64 "\"", v);
}
