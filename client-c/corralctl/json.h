/* json.h - a small streaming JSON writer for corralctl, plus the UTF-8 and base64 helpers
 * that the --json output and the worker need.
 *
 * The writer emits to a FILE* as it goes (no document is built in memory), pretty-printed
 * with a 2-space indent. It never fails half-way silently: the first write error is kept
 * and returned by json_finish(). Text given to json_string*() is always emitted as valid
 * JSON: control characters are escaped and bytes that are not valid UTF-8 become U+FFFD.
 */
#ifndef CORRALCTL_JSON_H
#define CORRALCTL_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* A writer. Initialise with json_init(); the fields are private. */
struct json_writer {
    FILE *f;        /* borrowed output */
    unsigned depth; /* nesting of open containers */
    bool first;     /* no element written yet in the current container */
    bool after_key; /* a key was written; its value comes next */
    int err;        /* 0, or -1 after a write error */
};

/* Starts a document on f (borrowed for the writer's life). */
void json_init(struct json_writer *w, FILE *f);

/* Ends the document with a newline and flushes. Returns 0, or -1 if any write failed. */
int json_finish(struct json_writer *w);

/* Containers. Calls must nest properly; a key must precede every value in an object. */
void json_begin_object(struct json_writer *w);
void json_end_object(struct json_writer *w);
void json_begin_array(struct json_writer *w);
void json_end_array(struct json_writer *w);

/* Writes an object key (borrowed, NUL-terminated); the next call writes its value. */
void json_key(struct json_writer *w, const char *key);

/* Scalar values. json_string() with NULL writes null. */
void json_string(struct json_writer *w, const char *s);
void json_string_n(struct json_writer *w, const void *s, size_t len);
void json_base64(struct json_writer *w, const void *data, size_t len);
void json_bool(struct json_writer *w, bool v);
void json_null(struct json_writer *w);
void json_int(struct json_writer *w, int64_t v);

/* Length of the valid UTF-8 sequence starting at s (n bytes available): 1..4, or 0 when
 * the bytes there are not valid UTF-8 (overlong forms, surrogates and code points above
 * U+10FFFF are invalid). n must be > 0. */
size_t utf8_seq_len(const uint8_t *s, size_t n);

/* True when the len bytes at s are entirely valid UTF-8 (NUL bytes are valid). */
bool utf8_valid(const void *s, size_t len);

/* Number of characters base64_encode() writes for len bytes, without the NUL. */
size_t base64_encoded_len(size_t len);

/* Encodes len bytes (standard alphabet, '=' padding) into dst, which must hold
 * base64_encoded_len(len) + 1 bytes; NUL-terminates it. */
void base64_encode(char *dst, const void *src, size_t len);

#endif
