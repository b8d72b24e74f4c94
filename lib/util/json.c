/* Streaming JSON writer. */
#include <config.h>

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "util/json.h"

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
        /* Pass valid UTF-8 through; escape stray bytes as U+FFFD. */
        size_t len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 0;
        bool ok = len && c < 0xf5 && i + len <= n;
        for (size_t k = 1; ok && k < len; k++)
          ok = ((unsigned char) s[i + k] & 0xc0) == 0x80;
        if (ok) {
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
