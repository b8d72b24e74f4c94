/* A small streaming JSON writer for the commands' --output=json (tools
 * only: the library returns structures, not text). Output goes through a
 * callback. */
#ifndef QK_TOOLS_JSON_H
#define QK_TOOLS_JSON_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

struct qk_json;

/* indent 0: compact; otherwise spaces per level (qemu-img uses 4). */
extern struct qk_json *qk_json_new (FILE *out, int indent);
/* Finish (closing nothing) and free; returns -1 if a write failed. */
extern int qk_json_free (struct qk_json *j);

/* key is NULL inside arrays and at the top level. */
extern void qk_json_object_begin (struct qk_json *j, const char *key);
extern void qk_json_object_end (struct qk_json *j);
extern void qk_json_array_begin (struct qk_json *j, const char *key);
extern void qk_json_array_end (struct qk_json *j);
extern void qk_json_string (struct qk_json *j, const char *key, const char *s);
extern void qk_json_stringn (struct qk_json *j, const char *key, const char *s,
                             size_t n);
extern void qk_json_int (struct qk_json *j, const char *key, int64_t v);
extern void qk_json_uint (struct qk_json *j, const char *key, uint64_t v);
extern void qk_json_bool (struct qk_json *j, const char *key, bool v);
extern void qk_json_null (struct qk_json *j, const char *key);
extern void qk_json_hex (struct qk_json *j, const char *key, uint64_t v);

/* Write s as a JSON string literal (with quotes). */
extern void qk_json_quote (FILE *out, const char *s, size_t n);

#endif
