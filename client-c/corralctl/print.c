/* print.c - text and JSON renderings of a group's tree and of limiters for corralctl. */
#include "print.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "json.h"
#include "rfc3339.h"

/* Longest result shown on a tree line, and longest error message, in output columns. */
#define RESULT_SHOWN_MAX 60
#define ERROR_SHOWN_MAX  120

/* Python's traceback limits: sub-exceptions listed per group, and nesting depth. */
#define EG_MAX_WIDTH 15
#define EG_MAX_DEPTH 10

/* ------------------------------------------------------------------ escaped text */

/* How put_text() renders line breaks. */
enum nl_mode {
    NL_ESCAPE, /* as the two characters \n */
    NL_BREAK,  /* as a line break followed by a prefix */
};

/* The escaped form of the character at p[i] (of len bytes) for a terminal: printable
 * ASCII and valid UTF-8 as they are, other bytes as C escapes (\n, \t, \xNN), '"' and
 * '\\' escaped when quoted. Returns the text (static, or in buf), with the bytes of p it
 * stands for in *k and the columns it takes in *w. */
static const char *
text_piece(const uint8_t *p, size_t len, size_t i, bool quoted, char buf[8], size_t *k, size_t *w)
{
    const char *out = buf;
    uint8_t c = p[i];
    *k = 1;
    if (c == '\n') {
        out = "\\n";
    } else if (c == '\t') {
        out = "\\t";
    } else if (c == '\r') {
        out = "\\r";
    } else if (quoted && c == '"') {
        out = "\\\"";
    } else if (quoted && c == '\\') {
        out = "\\\\";
    } else if (c < 0x20 || c == 0x7F) {
        snprintf(buf, 8, "\\x%02x", (unsigned)c);
    } else if (c < 0x80) {
        buf[0] = (char)c;
        buf[1] = '\0';
    } else {
        *k = utf8_seq_len(p + i, len - i);
        if (*k == 0) {
            *k = 1;
            snprintf(buf, 8, "\\x%02x", (unsigned)c);
        } else {
            memcpy(buf, p + i, *k);
            buf[*k] = '\0';
        }
    }
    *w = (*k > 1) ? 1 : strlen(out); /* a multi-byte character is one column */
    return out;
}

/* Writes the len bytes at s for a terminal, each character as text_piece() renders it.
 * Newlines follow mode (NL_BREAK writes nl_prefix after each). At most max columns of
 * escaped text are written (0: no limit); returns true when the text was cut short. */
static bool
put_text(FILE *f, const void *s, size_t len, size_t max, bool quoted, enum nl_mode mode,
         const char *nl_prefix)
{
    const uint8_t *p = s;
    size_t cols = 0;
    size_t i = 0;
    while (i < len) {
        char buf[8];
        size_t k, w;
        if (p[i] == '\n' && mode == NL_BREAK) {
            fputc('\n', f);
            fputs(nl_prefix, f);
            i++;
            continue;
        }
        const char *out = text_piece(p, len, i, quoted, buf, &k, &w);
        if (max > 0 && cols + w > max)
            return true;
        fputs(out, f);
        cols += w;
        i += k;
    }
    return false;
}

/* The columns put_text(f, s, strlen(s), 0, false, NL_ESCAPE, NULL) takes, for aligning
 * tables. */
static size_t
text_width(const char *s)
{
    const uint8_t *p = (const uint8_t *)s;
    size_t len = strlen(s), cols = 0, i = 0;
    while (i < len) {
        char buf[8];
        size_t k, w;
        text_piece(p, len, i, false, buf, &k, &w);
        cols += w;
        i += k;
    }
    return cols;
}

/* Writes the string s (borrowed) as put_text does on one line, unquoted, uncut. */
static void
put_plain(FILE *f, const char *s)
{
    put_text(f, s, strlen(s), 0, false, NL_ESCAPE, NULL);
}

/* Length of text once its trailing line breaks are dropped. */
static size_t
trimmed_len(const char *text)
{
    size_t n = strlen(text);
    while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r'))
        n--;
    return n;
}

/* ------------------------------------------------------------------ exception groups */

/* True when e is an exception group (it lists sub-exceptions). */
static bool
is_group_error(const struct corral_error *e)
{
    return e->nexceptions > 0 || (e->type != NULL && strcmp(e->type, "ExceptionGroup") == 0);
}

/* Mirrors Python's traceback._ExceptionPrintContext. */
struct eg_ctx {
    FILE *f;
    unsigned depth;  /* exception_group_depth */
    bool need_close; /* the closing rule of the innermost listing is still owed */
};

/* Writes the indentation of the current depth (Python's indent()). */
static void
eg_indent(struct eg_ctx *c)
{
    for (unsigned i = 0; i < c->depth; i++)
        fputs("  ", c->f);
}

/* Writes the prefix of an emitted line: indentation, then a margin inside a group. */
static void
eg_margin(struct eg_ctx *c, char *prefix, size_t size)
{
    size_t n = 0;
    for (unsigned i = 0; i < c->depth && n + 2 < size; i++) {
        prefix[n++] = ' ';
        prefix[n++] = ' ';
    }
    if (c->depth > 0 && n + 2 < size) {
        prefix[n++] = '|';
        prefix[n++] = ' ';
    }
    prefix[n] = '\0';
}

/* Emits one exception's "Type: message (job ID)" line(s), every line with the margin. */
static void
eg_emit_exception(struct eg_ctx *c, const struct corral_error *e, size_t nsub)
{
    char prefix[2 * (EG_MAX_DEPTH + 3) + 3];
    eg_margin(c, prefix, sizeof(prefix));
    const char *type = e->type != NULL && e->type[0] != '\0' ? e->type : "Error";
    const char *msg = e->message != NULL ? e->message : "";
    fputs(prefix, c->f);
    put_text(c->f, type, strlen(type), 0, false, NL_ESCAPE, NULL);
    if (is_group_error(e)) {
        /* Python shows str(eg): "message (N sub-exceptions)"; the broker's message may
         * already carry that suffix. */
        char suffix[64];
        snprintf(suffix, sizeof(suffix), " (%zu sub-exception%s)", nsub, nsub == 1 ? "" : "s");
        size_t mlen = trimmed_len(msg), slen = strlen(suffix);
        bool has_suffix = mlen >= slen && memcmp(msg + mlen - slen, suffix, slen) == 0;
        fputs(": ", c->f);
        if (mlen > 0)
            put_text(c->f, msg, mlen, 0, false, NL_BREAK, prefix);
        else
            fprintf(c->f, "unhandled errors in group %s", e->group != NULL ? e->group : "?");
        fprintf(c->f, "%s\n", has_suffix ? "" : suffix);
        return;
    }
    size_t mlen = trimmed_len(msg);
    if (mlen > 0) {
        fputs(": ", c->f);
        put_text(c->f, msg, mlen, 0, false, NL_BREAK, prefix);
    }
    if (e->job != NULL)
        fprintf(c->f, " (job %s)", e->job);
    else if (e->group != NULL)
        fprintf(c->f, " (group %s)", e->group);
    fputc('\n', c->f);
}

/* Emits one plain line of text with the margin. */
static void
eg_emit_line(struct eg_ctx *c, const char *text)
{
    char prefix[2 * (EG_MAX_DEPTH + 3) + 3];
    eg_margin(c, prefix, sizeof(prefix));
    fprintf(c->f, "%s%s\n", prefix, text);
}

/* Formats e at the context's depth; a transcription of Python 3.11's
 * TracebackException.format() for exceptions without a traceback. */
static void
eg_format(struct eg_ctx *c, const struct corral_error *e)
{
    if (!is_group_error(e)) {
        eg_emit_exception(c, e, 0);
        return;
    }
    if (c->depth > EG_MAX_DEPTH) {
        char line[64];
        snprintf(line, sizeof(line), "... (max_group_depth is %d)", EG_MAX_DEPTH);
        eg_emit_line(c, line);
        return;
    }
    bool toplevel = c->depth == 0;
    if (toplevel)
        c->depth++;
    eg_emit_exception(c, e, e->nexceptions);
    size_t n = e->nexceptions <= EG_MAX_WIDTH ? e->nexceptions : EG_MAX_WIDTH + 1;
    c->need_close = false;
    for (size_t i = 0; i < n; i++) {
        bool last = i == n - 1;
        if (last)
            c->need_close = true; /* a nested group's listing may close it instead */
        bool truncated = i >= EG_MAX_WIDTH;
        eg_indent(c);
        fputs(i == 0 ? "+-" : "  ", c->f);
        if (truncated)
            fputs("+---------------- ... ----------------\n", c->f);
        else
            fprintf(c->f, "+---------------- %zu ----------------\n", i + 1);
        c->depth++;
        if (!truncated) {
            eg_format(c, &e->exceptions[i]);
        } else {
            char line[80];
            size_t more = e->nexceptions - EG_MAX_WIDTH;
            snprintf(line, sizeof(line), "and %zu more exception%s", more, more > 1 ? "s" : "");
            eg_emit_line(c, line);
        }
        if (last && c->need_close) {
            eg_indent(c);
            fputs("+------------------------------------\n", c->f);
            c->need_close = false;
        }
        c->depth--;
    }
    if (toplevel)
        c->depth = 0;
}

void
print_exception(FILE *f, const struct corral_error *e)
{
    struct eg_ctx c = {.f = f, .depth = 0, .need_close = false};
    eg_format(&c, e);
}

/* ------------------------------------------------------------------ text tree */

/* Writes a node's state and, when it has one, its outcome. */
static void
put_state(FILE *f, const struct corral_node *n)
{
    const char *state = corral_state_name(n->state);
    const char *outcome = corral_outcome_name(n->outcome);
    fputs(state != NULL ? state : "?", f);
    if (outcome != NULL)
        fprintf(f, " %s", outcome);
}

/* Writes "(cancel: SOURCE "REASON", caught)" for a node a cancel reached. */
static void
put_cancel(FILE *f, const struct corral_node *n)
{
    if (!n->cancel_called)
        return;
    const char *source = corral_source_name(n->cancel_source);
    fputs("(cancel", f);
    if (source != NULL)
        fprintf(f, ": %s", source);
    if (n->cancel_reason != NULL && n->cancel_reason[0] != '\0') {
        fputs(source != NULL ? " \"" : ": \"", f);
        put_text(f, n->cancel_reason, strlen(n->cancel_reason), RESULT_SHOWN_MAX, true, NL_ESCAPE,
                 NULL);
        fputc('"', f);
    }
    if (n->cancelled_caught)
        fputs(", caught", f);
    fputc(')', f);
}

/* The name of an on_deadline mode, as in --on-deadline and the --json tree. */
static const char *
on_deadline_name(enum corral_on_deadline m)
{
    return m == CORRAL_ON_DEADLINE_MOVE_ON ? "move-on" : "fail";
}

/* Writes a node's scope, each part that is set: "  deadline TIME (MODE)", "  shield",
 * "  effective deadline TIME". */
static void
put_scope(FILE *f, const struct corral_node *n)
{
    char t[RFC3339_MAX];
    if (n->deadline_unix_ms != 0)
        fprintf(f, "  deadline %s (%s)", rfc3339_format(n->deadline_unix_ms, t),
                on_deadline_name(n->on_deadline));
    if (n->shield)
        fputs("  shield", f);
    if (n->effective_deadline_unix_ms != 0)
        fprintf(f, "  effective deadline %s", rfc3339_format(n->effective_deadline_unix_ms, t));
}

/* Writes a job's result: "  result: "text"", cut short past RESULT_SHOWN_MAX columns. */
static void
put_result(FILE *f, const struct corral_node *n)
{
    fputs("  result: \"", f);
    bool cut = put_text(f, n->result, n->result != NULL ? n->result_len : 0, RESULT_SHOWN_MAX, true,
                        NL_ESCAPE, NULL);
    fputc('"', f);
    if (cut)
        fprintf(f, "... (%zu bytes)", n->result_len);
}

/* Writes an error on one line: "  error: Type: message", the message cut short. */
static void
put_error(FILE *f, const struct corral_error *e)
{
    const char *type = e->type != NULL ? e->type : "Error";
    const char *msg = e->message != NULL ? e->message : "";
    fputs("  error: ", f);
    put_text(f, type, strlen(type), 0, false, NL_ESCAPE, NULL);
    size_t mlen = trimmed_len(msg);
    if (mlen > 0) {
        fputs(": ", f);
        if (put_text(f, msg, mlen, ERROR_SHOWN_MAX, false, NL_ESCAPE, NULL))
            fputs("...", f);
    }
}

/* Writes the node n and its subtree, indented by depth levels of two spaces. */
static void
put_node(FILE *f, const struct corral_node *n, unsigned depth)
{
    for (unsigned i = 0; i < depth; i++)
        fputs("  ", f);
    if (n->type == CORRAL_NODE_GROUP) {
        fprintf(f, "group %s  ", n->id != NULL ? n->id : "?");
        put_state(f, n);
        if (n->cancel_called) {
            fputs("  ", f);
            put_cancel(f, n);
        }
        put_scope(f, n);
        if (n->error != NULL && !is_group_error(n->error))
            put_error(f, n->error); /* a bare error, such as a deadline's TimeoutError */
        fputc('\n', f);
        for (size_t i = 0; i < n->nchildren; i++)
            put_node(f, &n->children[i], depth + 1);
        return;
    }
    fprintf(f, "job %s [", n->id != NULL ? n->id : "?");
    if (n->kind != NULL)
        put_text(f, n->kind, strlen(n->kind), 0, false, NL_ESCAPE, NULL);
    fputs("] ", f);
    put_state(f, n);
    if (n->state == CORRAL_STATE_RETRY_WAIT && n->next_attempt_unix_ms != 0) {
        char t[RFC3339_MAX];
        fprintf(f, " until %s", rfc3339_format(n->next_attempt_unix_ms, t));
    }
    fprintf(f, " attempt %" PRIu32, n->attempt);
    if (n->max_attempts != 0) /* 0: a broker that predates retries */
        fprintf(f, "/%" PRIu32, n->max_attempts);
    if (n->nlimiters > 0) {
        fputs("  limiters ", f);
        for (size_t i = 0; i < n->nlimiters; i++) {
            if (i > 0)
                fputc(',', f);
            put_plain(f, n->limiters[i]);
        }
    }
    if (n->started)
        fputs("  started", f);
    if (n->cancel_called) {
        fputc(' ', f);
        put_cancel(f, n);
    }
    put_scope(f, n);
    if (n->outcome == CORRAL_OUTCOME_SUCCEEDED)
        put_result(f, n);
    if (n->error != NULL)
        put_error(f, n->error);
    fputc('\n', f);
    for (size_t i = 0; i < n->ngroups; i++)
        put_node(f, &n->groups[i], depth + 1);
}

/* Prints the exception group of every failed group of the subtree that is not nested in
 * one printed already (a failed group's own error lists its failed subgroups). */
static void
put_failures(FILE *f, const struct corral_node *n)
{
    if (n->type == CORRAL_NODE_GROUP && n->error != NULL && is_group_error(n->error)) {
        fputc('\n', f);
        print_exception(f, n->error);
        return;
    }
    for (size_t i = 0; i < n->nchildren; i++)
        put_failures(f, &n->children[i]);
    for (size_t i = 0; i < n->ngroups; i++)
        put_failures(f, &n->groups[i]);
}

int
print_tree_text(FILE *f, const struct corral_node *n)
{
    put_node(f, n, 0);
    put_failures(f, n);
    if (fflush(f) != 0 || ferror(f))
        return -1;
    return 0;
}

/* ------------------------------------------------------------------ JSON tree */

/* Writes bytes as "name": STRING when valid UTF-8, else as "name_b64": BASE64. */
static void
json_text_or_b64(struct json_writer *w, const char *name, const char *name_b64, const void *data,
                 size_t len)
{
    if (data == NULL)
        len = 0;
    if (utf8_valid(data, len)) {
        json_key(w, name);
        json_string_n(w, data, len);
    } else {
        json_key(w, name_b64);
        json_base64(w, data, len);
    }
}

/* Writes an error object (and, for an exception group, its sub-exceptions). */
static void
json_error(struct json_writer *w, const struct corral_error *e)
{
    json_begin_object(w);
    json_key(w, "type");
    json_string(w, e->type != NULL ? e->type : "");
    json_key(w, "message");
    json_string(w, e->message != NULL ? e->message : "");
    /* Exactly one of "job" and "group": an exception group names its group. */
    bool by_group = e->group != NULL && (is_group_error(e) || e->job == NULL);
    if (by_group || e->job != NULL) {
        json_key(w, by_group ? "group" : "job");
        json_string(w, by_group ? e->group : e->job);
    }
    if (e->details_len > 0 && e->details != NULL) {
        json_key(w, "details_b64");
        json_base64(w, e->details, e->details_len);
    }
    if (is_group_error(e)) {
        json_key(w, "exceptions");
        json_begin_array(w);
        for (size_t i = 0; i < e->nexceptions; i++)
            json_error(w, &e->exceptions[i]);
        json_end_array(w);
    }
    json_end_object(w);
}

/* Writes "name": TIME (RFC 3339, UTC, milliseconds) for ms, or "name": null when ms is 0. */
static void
json_time(struct json_writer *w, const char *name, uint64_t ms)
{
    char t[RFC3339_MAX];
    json_key(w, name);
    json_string(w, ms != 0 ? rfc3339_format(ms, t) : NULL);
}

/* Writes a node object and its subtree, keys in the order of the contract. */
static void
json_node(struct json_writer *w, const struct corral_node *n)
{
    bool job = n->type == CORRAL_NODE_JOB;
    json_begin_object(w);
    json_key(w, "type");
    json_string(w, job ? "job" : "group");
    json_key(w, "id");
    json_string(w, n->id != NULL ? n->id : "");
    if (job) {
        json_key(w, "kind");
        json_string(w, n->kind != NULL ? n->kind : "");
    }
    json_key(w, "state");
    json_string(w, corral_state_name(n->state));
    json_key(w, "outcome");
    json_string(w, corral_outcome_name(n->outcome));
    if (job && n->outcome == CORRAL_OUTCOME_SUCCEEDED)
        json_text_or_b64(w, "result", "result_b64", n->result, n->result_len);
    json_key(w, "error");
    if (n->error != NULL)
        json_error(w, n->error);
    else
        json_null(w);
    if (job) {
        json_key(w, "attempt");
        json_int(w, n->attempt);
        json_key(w, "max_attempts");
        json_int(w, n->max_attempts);
        json_time(w, "next_attempt", n->next_attempt_unix_ms);
        json_key(w, "started");
        json_bool(w, n->started);
        json_key(w, "limiters");
        json_begin_array(w);
        for (size_t i = 0; i < n->nlimiters; i++)
            json_string(w, n->limiters[i]);
        json_end_array(w);
    }
    json_key(w, "cancel_called");
    json_bool(w, n->cancel_called);
    json_key(w, "cancelled_caught");
    json_bool(w, n->cancelled_caught);
    json_key(w, "cancel_source");
    json_string(w, corral_source_name(n->cancel_source));
    json_key(w, "cancel_reason");
    json_string(w,
                n->cancel_reason != NULL && n->cancel_reason[0] != '\0' ? n->cancel_reason : NULL);
    json_time(w, "deadline", n->deadline_unix_ms);
    json_key(w, "on_deadline");
    json_string(w, on_deadline_name(n->on_deadline));
    json_key(w, "shield");
    json_bool(w, n->shield);
    json_time(w, "effective_deadline", n->effective_deadline_unix_ms);
    json_key(w, job ? "groups" : "children");
    json_begin_array(w);
    const struct corral_node *kids = job ? n->groups : n->children;
    size_t nkids = job ? n->ngroups : n->nchildren;
    for (size_t i = 0; i < nkids; i++)
        json_node(w, &kids[i]);
    json_end_array(w);
    json_end_object(w);
}

int
print_tree_json(FILE *f, const struct corral_node *n)
{
    struct json_writer w;
    json_init(&w, f);
    json_node(&w, n);
    return json_finish(&w);
}

/* ------------------------------------------------------------------ limiters */

/* Columns of the limiter table, and its header. */
enum { LCOL_NAME, LCOL_TOTAL, LCOL_BORROWED, LCOL_WAITING, LCOL_BORROWERS, LCOLS };
static const char *const LIMITER_HEADER[LCOLS] = {"NAME", "TOTAL", "BORROWED", "WAITING",
                                                  "BORROWERS"};

/* The width of l's cell in column col, as put_limiter_cell writes it. */
static size_t
limiter_cell_width(const struct corral_limiter *l, int col)
{
    char num[16];
    size_t w = 0;
    switch (col) {
    case LCOL_NAME:
        return text_width(l->name != NULL ? l->name : "");
    case LCOL_TOTAL:
        return (size_t)snprintf(num, sizeof(num), "%" PRIu32, l->total_tokens);
    case LCOL_BORROWED:
        return (size_t)snprintf(num, sizeof(num), "%" PRIu32, l->borrowed_tokens);
    case LCOL_WAITING:
        return (size_t)snprintf(num, sizeof(num), "%" PRIu32, l->waiting);
    default:
        if (l->nborrowers == 0)
            return 1;
        for (size_t i = 0; i < l->nborrowers; i++)
            w += (i > 0 ? 1 : 0) + text_width(l->borrowers[i]);
        return w;
    }
}

/* Writes l's cell in column col: the name, a number, or the borrowers comma-separated
 * ("-" when none). */
static void
put_limiter_cell(FILE *f, const struct corral_limiter *l, int col)
{
    switch (col) {
    case LCOL_NAME:
        put_plain(f, l->name != NULL ? l->name : "");
        break;
    case LCOL_TOTAL:
        fprintf(f, "%" PRIu32, l->total_tokens);
        break;
    case LCOL_BORROWED:
        fprintf(f, "%" PRIu32, l->borrowed_tokens);
        break;
    case LCOL_WAITING:
        fprintf(f, "%" PRIu32, l->waiting);
        break;
    default:
        if (l->nborrowers == 0)
            fputc('-', f);
        for (size_t i = 0; i < l->nborrowers; i++) {
            if (i > 0)
                fputc(',', f);
            put_plain(f, l->borrowers[i]);
        }
        break;
    }
}

int
print_limiters_text(FILE *f, const struct corral_limiter *l, size_t n)
{
    size_t width[LCOLS];
    for (int col = 0; col < LCOLS; col++) {
        width[col] = strlen(LIMITER_HEADER[col]);
        for (size_t i = 0; i < n; i++) {
            size_t w = limiter_cell_width(&l[i], col);
            if (w > width[col])
                width[col] = w;
        }
    }
    /* Two spaces between columns; the last one is not padded. */
    for (int col = 0; col < LCOLS - 1; col++)
        fprintf(f, "%-*s  ", (int)width[col], LIMITER_HEADER[col]);
    fprintf(f, "%s\n", LIMITER_HEADER[LCOLS - 1]);
    for (size_t i = 0; i < n; i++) {
        for (int col = 0; col < LCOLS; col++) {
            put_limiter_cell(f, &l[i], col);
            if (col == LCOLS - 1)
                break;
            for (size_t w = limiter_cell_width(&l[i], col); w < width[col] + 2; w++)
                fputc(' ', f);
        }
        fputc('\n', f);
    }
    if (fflush(f) != 0 || ferror(f))
        return -1;
    return 0;
}

/* Writes a limiter object, keys in the order of the contract. */
static void
json_limiter(struct json_writer *w, const struct corral_limiter *l)
{
    json_begin_object(w);
    json_key(w, "name");
    json_string(w, l->name != NULL ? l->name : "");
    json_key(w, "total_tokens");
    json_int(w, l->total_tokens);
    json_key(w, "borrowed_tokens");
    json_int(w, l->borrowed_tokens);
    json_key(w, "waiting");
    json_int(w, l->waiting);
    json_key(w, "borrowers");
    json_begin_array(w);
    for (size_t i = 0; i < l->nborrowers; i++)
        json_string(w, l->borrowers[i]);
    json_end_array(w);
    json_end_object(w);
}

int
print_limiters_json(FILE *f, const struct corral_limiter *l, size_t n, bool as_array)
{
    struct json_writer w;
    json_init(&w, f);
    if (as_array)
        json_begin_array(&w);
    for (size_t i = 0; i < n; i++) {
        json_limiter(&w, &l[i]);
        if (!as_array)
            break;
    }
    if (as_array)
        json_end_array(&w);
    return json_finish(&w);
}
