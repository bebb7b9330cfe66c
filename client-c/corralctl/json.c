/* json.c - the streaming JSON writer of corralctl, and UTF-8 / base64 helpers. */
#include "json.h"

#include <inttypes.h>
#include <string.h>

/* Writes len bytes, remembering a failure. */
static void
put(struct json_writer *w, const char *s, size_t len)
{
    if (w->err != 0 || len == 0)
        return;
    if (fwrite(s, 1, len, w->f) != len)
        w->err = -1;
}

/* Writes a NUL-terminated string, remembering a failure. */
static void
puts_w(struct json_writer *w, const char *s)
{
    put(w, s, strlen(s));
}

/* Starts a new line indented to the current depth. */
static void
newline(struct json_writer *w)
{
    static const char spaces[] = "                                ";
    put(w, "\n", 1);
    size_t n = (size_t)w->depth * 2;
    while (n > 0) {
        size_t chunk = n < sizeof(spaces) - 1 ? n : sizeof(spaces) - 1;
        put(w, spaces, chunk);
        n -= chunk;
    }
}

/* Writes what separates the coming element from the previous one in its container. */
static void
separate(struct json_writer *w)
{
    if (w->depth == 0)
        return;
    if (!w->first)
        put(w, ",", 1);
    newline(w);
    w->first = false;
}

/* Prepares for a value: after a key nothing is needed, else a separator. */
static void
before_value(struct json_writer *w)
{
    if (w->after_key) {
        w->after_key = false;
        return;
    }
    separate(w);
}

void
json_init(struct json_writer *w, FILE *f)
{
    w->f = f;
    w->depth = 0;
    w->first = true;
    w->after_key = false;
    w->err = 0;
}

int
json_finish(struct json_writer *w)
{
    put(w, "\n", 1);
    if (w->err == 0 && fflush(w->f) != 0)
        w->err = -1;
    if (ferror(w->f))
        w->err = -1;
    return w->err;
}

/* Opens a container with the given bracket. */
static void
begin(struct json_writer *w, const char *open)
{
    before_value(w);
    puts_w(w, open);
    w->depth++;
    w->first = true;
}

/* Closes a container with the given bracket; a non-empty one closes on its own line. */
static void
end(struct json_writer *w, const char *close)
{
    if (w->depth > 0)
        w->depth--;
    if (!w->first)
        newline(w);
    puts_w(w, close);
    w->first = false; /* the container just closed is an element of its parent */
}

void
json_begin_object(struct json_writer *w)
{
    begin(w, "{");
}

void
json_end_object(struct json_writer *w)
{
    end(w, "}");
}

void
json_begin_array(struct json_writer *w)
{
    begin(w, "[");
}

void
json_end_array(struct json_writer *w)
{
    end(w, "]");
}

size_t
utf8_seq_len(const uint8_t *s, size_t n)
{
    uint8_t c = s[0];
    if (c < 0x80)
        return 1;
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0)
            lo = 0xA0; /* no overlong forms */
        else if (c == 0xED)
            hi = 0x9F; /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0)
            lo = 0x90; /* no overlong forms */
        else if (c == 0xF4)
            hi = 0x8F; /* nothing above U+10FFFF */
    } else {
        return 0;
    }
    if (n < need)
        return 0;
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < need; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return need;
}

bool
utf8_valid(const void *s, size_t len)
{
    const uint8_t *p = s;
    size_t i = 0;
    while (i < len) {
        size_t k = utf8_seq_len(p + i, len - i);
        if (k == 0)
            return false;
        i += k;
    }
    return true;
}

/* Writes the body of a JSON string (without quotes), escaping as needed. */
static void
put_escaped(struct json_writer *w, const uint8_t *s, size_t len)
{
    size_t run = 0; /* start of the pending run of bytes that need no escape */
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        const char *esc = NULL;
        char buf[8];
        size_t k = 1;
        if (c == '"') {
            esc = "\\\"";
        } else if (c == '\\') {
            esc = "\\\\";
        } else if (c == '\n') {
            esc = "\\n";
        } else if (c == '\r') {
            esc = "\\r";
        } else if (c == '\t') {
            esc = "\\t";
        } else if (c == '\b') {
            esc = "\\b";
        } else if (c == '\f') {
            esc = "\\f";
        } else if (c < 0x20 || c == 0x7F) {
            snprintf(buf, sizeof(buf), "\\u%04x", (unsigned)c);
            esc = buf;
        } else if (c >= 0x80) {
            k = utf8_seq_len(s + i, len - i);
            if (k == 0) {
                esc = "\\ufffd"; /* not UTF-8: replacement character */
                k = 1;
            }
        }
        if (esc != NULL) {
            put(w, (const char *)s + run, i - run);
            puts_w(w, esc);
            run = i + k;
        }
        i += k;
    }
    put(w, (const char *)s + run, len - run);
}

void
json_key(struct json_writer *w, const char *key)
{
    separate(w);
    put(w, "\"", 1);
    put_escaped(w, (const uint8_t *)key, strlen(key));
    put(w, "\": ", 3);
    w->after_key = true;
}

void
json_string_n(struct json_writer *w, const void *s, size_t len)
{
    before_value(w);
    put(w, "\"", 1);
    if (len > 0)
        put_escaped(w, s, len);
    put(w, "\"", 1);
}

void
json_string(struct json_writer *w, const char *s)
{
    if (s == NULL)
        json_null(w);
    else
        json_string_n(w, s, strlen(s));
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t
base64_encoded_len(size_t len)
{
    return (len + 2) / 3 * 4;
}

void
base64_encode(char *dst, const void *src, size_t len)
{
    const uint8_t *p = src;
    size_t o = 0;
    size_t i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        dst[o++] = B64[v >> 18 & 63];
        dst[o++] = B64[v >> 12 & 63];
        dst[o++] = B64[v >> 6 & 63];
        dst[o++] = B64[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)p[i + 1] << 8;
        dst[o++] = B64[v >> 18 & 63];
        dst[o++] = B64[v >> 12 & 63];
        dst[o++] = i + 1 < len ? B64[v >> 6 & 63] : '=';
        dst[o++] = '=';
    }
    dst[o] = '\0';
}

void
json_base64(struct json_writer *w, const void *data, size_t len)
{
    before_value(w);
    put(w, "\"", 1);
    /* Encode in chunks of 3 * 1024 bytes so no allocation is needed. */
    const uint8_t *p = data;
    char buf[4 * 1024 + 1];
    while (len > 0) {
        size_t chunk = len < 3 * 1024 ? len : 3 * 1024;
        base64_encode(buf, p, chunk);
        puts_w(w, buf);
        p += chunk;
        len -= chunk;
    }
    put(w, "\"", 1);
}

void
json_bool(struct json_writer *w, bool v)
{
    before_value(w);
    puts_w(w, v ? "true" : "false");
}

void
json_null(struct json_writer *w)
{
    before_value(w);
    puts_w(w, "null");
}

void
json_int(struct json_writer *w, int64_t v)
{
    char buf[32];
    before_value(w);
    int n = snprintf(buf, sizeof(buf), "%" PRId64, v);
    if (n > 0)
        put(w, buf, (size_t)n);
}
