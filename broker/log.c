/* log.c - one line per event on stderr, logfmt or JSON. A line is built in memory (on
 * the stack when it fits) and written with one fwrite. */
#include "log.h"

#include <corral.h>

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* Bytes of a line built on the stack before the builder moves to the heap. */
#define LOG_STACK_LINE 1024

static atomic_int log_min = LOG_INFO;
static atomic_int log_fmt = LOG_FORMAT_LOGFMT;

/* A growable line: starts in a caller's stack buffer, moves to the heap when needed.
 * When memory runs out, further appends are dropped (the line is truncated). */
struct sbuf {
    char *p;
    size_t len;
    size_t cap;
    bool heap;
};

/* Starts an empty builder over stack[0..cap) (borrowed). */
static void
sb_init(struct sbuf *b, char *stack, size_t cap)
{
    b->p = stack;
    b->len = 0;
    b->cap = cap;
    b->heap = false;
}

/* Makes room for extra more bytes; false when out of memory. */
static bool
sb_reserve(struct sbuf *b, size_t extra)
{
    if (extra <= b->cap - b->len)
        return true;
    size_t need = b->len + extra;
    if (need < b->len)
        return false;
    size_t ncap = b->cap * 2;
    if (ncap < need)
        ncap = need;
    char *np;
    if (b->heap) {
        np = realloc(b->p, ncap);
    } else {
        np = malloc(ncap);
        if (np != NULL)
            memcpy(np, b->p, b->len);
    }
    if (np == NULL)
        return false;
    b->p = np;
    b->cap = ncap;
    b->heap = true;
    return true;
}

/* Appends n bytes of s (borrowed). */
static void
sb_putn(struct sbuf *b, const char *s, size_t n)
{
    if (n == 0 || !sb_reserve(b, n))
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

/* Appends the NUL-terminated s (borrowed). */
static void
sb_puts(struct sbuf *b, const char *s)
{
    sb_putn(b, s, strlen(s));
}

/* Appends one byte. */
static void
sb_putc(struct sbuf *b, char c)
{
    sb_putn(b, &c, 1);
}

/* Frees the builder's heap buffer, if any. */
static void
sb_free(struct sbuf *b)
{
    if (b->heap)
        free(b->p);
    b->p = NULL;
    b->heap = false;
}

/* Returns the length (1..4) of the valid UTF-8 sequence starting s[0..n), or 0 when the
 * bytes there are not valid UTF-8 (overlong forms and surrogates included). */
static size_t
utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++) {
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    }
    return len;
}

/* Appends s[0..n) (borrowed) escaped for the inside of a JSON string: quotes,
 * backslashes and control characters escaped, invalid UTF-8 replaced by U+FFFD. */
static void
put_json_chars(struct sbuf *b, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned char c = u[i];
        if (c == '"' || c == '\\') {
            sb_putc(b, '\\');
            sb_putc(b, (char)c);
            i++;
        } else if (c == '\n') {
            sb_puts(b, "\\n");
            i++;
        } else if (c == '\r') {
            sb_puts(b, "\\r");
            i++;
        } else if (c == '\t') {
            sb_puts(b, "\\t");
            i++;
        } else if (c < 0x20 || c == 0x7f) {
            char esc[8];
            snprintf(esc, sizeof(esc), "\\u%04x", (unsigned)c);
            sb_puts(b, esc);
            i++;
        } else {
            size_t len = utf8_seq(u + i, n - i);
            if (len == 0) {
                sb_puts(b, "\\ufffd");
                i++;
            } else {
                sb_putn(b, s + i, len);
                i += len;
            }
        }
    }
}

/* Appends "s[0..n)" as a JSON string (quotes included). */
static void
put_json_str(struct sbuf *b, const char *s, size_t n)
{
    sb_putc(b, '"');
    put_json_chars(b, s, n);
    sb_putc(b, '"');
}

/* Appends s[0..n) (borrowed) for a logfmt line: control characters become \n, \r, \t
 * or \xNN so that the line stays one line; everything else is copied as is. */
static void
put_logfmt_chars(struct sbuf *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n') {
            sb_puts(b, "\\n");
        } else if (c == '\r') {
            sb_puts(b, "\\r");
        } else if (c == '\t') {
            sb_puts(b, "\\t");
        } else if (c < 0x20 || c == 0x7f) {
            char esc[8];
            snprintf(esc, sizeof(esc), "\\x%02x", (unsigned)c);
            sb_puts(b, esc);
        } else {
            sb_putc(b, (char)c);
        }
    }
}

/* Appends s (borrowed) as a logfmt value: bare when it is a plain non-empty word,
 * else double-quoted with '"' and '\' escaped. */
static void
put_logfmt_value(struct sbuf *b, const char *s)
{
    bool plain = s[0] != '\0';
    for (const char *q = s; *q != '\0' && plain; q++) {
        unsigned char c = (unsigned char)*q;
        if (c <= ' ' || c == '=' || c == '"' || c == '\\' || c == 0x7f)
            plain = false;
    }
    if (plain) {
        sb_puts(b, s);
        return;
    }
    sb_putc(b, '"');
    for (const char *q = s; *q != '\0'; q++) {
        if (*q == '"' || *q == '\\')
            sb_putc(b, '\\');
        put_logfmt_chars(b, q, 1);
    }
    sb_putc(b, '"');
}

/* True for the characters that separate logfmt pairs. */
static bool
is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Appends the logfmt pairs in kv[0..n) (borrowed) as JSON members, each preceded by a
 * comma: k=v and k="quoted v" (with \" \\ \n \t \r escapes) become "k":"v"; a bare
 * key becomes "k":"". Keys that would clash with ts, level or event get a '_' prefix. */
static void
put_kv_as_json(struct sbuf *b, const char *kv, size_t n)
{
    size_t i = 0;
    for (;;) {
        while (i < n && is_space(kv[i]))
            i++;
        if (i >= n)
            break;
        size_t ks = i;
        while (i < n && !is_space(kv[i]) && kv[i] != '=')
            i++;
        size_t klen = i - ks;

        sb_puts(b, ",\"");
        if (klen == 0)
            sb_putc(b, '_');
        else if ((klen == 2 && memcmp(kv + ks, "ts", 2) == 0) ||
                 (klen == 5 && memcmp(kv + ks, "level", 5) == 0) ||
                 (klen == 5 && memcmp(kv + ks, "event", 5) == 0))
            sb_putc(b, '_');
        put_json_chars(b, kv + ks, klen);
        sb_puts(b, "\":\"");

        if (i < n && kv[i] == '=') {
            i++;
            if (i < n && kv[i] == '"') {
                /* A quoted value: up to the next unescaped quote (or the end). */
                i++;
                while (i < n && kv[i] != '"') {
                    if (kv[i] == '\\' && i + 1 < n) {
                        char e = kv[i + 1];
                        const char *rep = e == 'n'    ? "\n"
                                          : e == 't'  ? "\t"
                                          : e == 'r'  ? "\r"
                                          : e == '"'  ? "\""
                                          : e == '\\' ? "\\"
                                                      : NULL;
                        if (rep != NULL) {
                            put_json_chars(b, rep, 1);
                            i += 2;
                            continue;
                        }
                    }
                    size_t s = i;
                    while (i < n && kv[i] != '"' && kv[i] != '\\')
                        i++;
                    if (i == s)
                        i++; /* a lone backslash: copy it */
                    put_json_chars(b, kv + s, i - s);
                }
                if (i < n)
                    i++; /* the closing quote */
            } else {
                size_t vs = i;
                while (i < n && !is_space(kv[i]))
                    i++;
                put_json_chars(b, kv + vs, i - vs);
            }
        }
        sb_putc(b, '"');
    }
}

/* Returns the lowercase name of lvl as written in lines. */
static const char *
level_name(enum log_level lvl)
{
    switch (lvl) {
    case LOG_DEBUG:
        return "debug";
    case LOG_INFO:
        return "info";
    case LOG_WARN:
        return "warn";
    case LOG_ERROR:
        return "error";
    }
    return "unknown";
}

/* Writes the current UTC time as 2026-11-23T08:00:00.123Z into out[0..size). */
static void
format_ts(char *out, size_t size)
{
    struct timespec ts;
    struct tm tm;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0 || gmtime_r(&ts.tv_sec, &tm) == NULL) {
        snprintf(out, size, "1970-01-01T00:00:00.000Z");
        return;
    }
    char date[32];
    strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, size, "%s.%03ldZ", date, (long)(ts.tv_nsec / 1000000));
}

/* Sets the minimum level and the format; see log.h. */
void
log_setup(enum log_level min, enum log_format fmt)
{
    atomic_store(&log_min, (int)min);
    atomic_store(&log_fmt, (int)fmt);
}

/* Parses a level name; see log.h. */
int
log_parse_level(const char *s, enum log_level *out)
{
    if (s == NULL)
        return CORRAL_EINVAL;
    if (strcasecmp(s, "debug") == 0)
        *out = LOG_DEBUG;
    else if (strcasecmp(s, "info") == 0)
        *out = LOG_INFO;
    else if (strcasecmp(s, "warn") == 0 || strcasecmp(s, "warning") == 0)
        *out = LOG_WARN;
    else if (strcasecmp(s, "error") == 0)
        *out = LOG_ERROR;
    else
        return CORRAL_EINVAL;
    return 0;
}

/* Parses a format name; see log.h. */
int
log_parse_format(const char *s, enum log_format *out)
{
    if (s == NULL)
        return CORRAL_EINVAL;
    if (strcasecmp(s, "logfmt") == 0)
        *out = LOG_FORMAT_LOGFMT;
    else if (strcasecmp(s, "json") == 0)
        *out = LOG_FORMAT_JSON;
    else
        return CORRAL_EINVAL;
    return 0;
}

/* Renders and writes one line; see log.h. */
void
log_event(enum log_level lvl, const char *event, const char *fmt_kv, ...)
{
    if ((int)lvl < atomic_load(&log_min))
        return;
    bool json = atomic_load(&log_fmt) == LOG_FORMAT_JSON;
    if (event == NULL)
        event = "";

    /* Render the caller's pairs: on the stack when short, else on the heap. */
    char kvstack[LOG_STACK_LINE];
    char *kv = kvstack;
    size_t kvlen = 0;
    if (fmt_kv != NULL) {
        va_list ap;
        va_start(ap, fmt_kv);
        int n = vsnprintf(kvstack, sizeof(kvstack), fmt_kv, ap);
        va_end(ap);
        if (n < 0) {
            kvstack[0] = '\0';
            n = 0;
        } else if ((size_t)n >= sizeof(kvstack)) {
            char *big = malloc((size_t)n + 1);
            if (big != NULL) {
                va_start(ap, fmt_kv);
                vsnprintf(big, (size_t)n + 1, fmt_kv, ap);
                va_end(ap);
                kv = big;
            } else {
                n = (int)sizeof(kvstack) - 1; /* out of memory: truncate */
            }
        }
        kvlen = (size_t)n;
    }

    char ts[48];
    format_ts(ts, sizeof(ts));

    char linestack[LOG_STACK_LINE];
    struct sbuf b;
    sb_init(&b, linestack, sizeof(linestack));
    if (json) {
        sb_puts(&b, "{\"ts\":\"");
        sb_puts(&b, ts);
        sb_puts(&b, "\",\"level\":\"");
        sb_puts(&b, level_name(lvl));
        sb_puts(&b, "\",\"event\":");
        put_json_str(&b, event, strlen(event));
        put_kv_as_json(&b, kv, kvlen);
        sb_puts(&b, "}\n");
    } else {
        sb_puts(&b, "ts=");
        sb_puts(&b, ts);
        sb_puts(&b, " level=");
        sb_puts(&b, level_name(lvl));
        sb_puts(&b, " event=");
        put_logfmt_value(&b, event);
        if (kvlen > 0) {
            sb_putc(&b, ' ');
            put_logfmt_chars(&b, kv, kvlen);
        }
        sb_putc(&b, '\n');
    }
    fwrite(b.p, 1, b.len, stderr);
    if (b.len == 0 || b.p[b.len - 1] != '\n')
        fputc('\n', stderr); /* out of memory truncated the line: still end it */
    sb_free(&b);
    if (kv != kvstack)
        free(kv);
}
