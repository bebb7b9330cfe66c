/* codec.c - protobuf-c <-> libcorral structs: deep copies of Node, Error, Event and Limiter
 * into owned, NUL-terminated library structs (and their _free functions), reply codes, and
 * envelope packing (into a reusable buffer) / unpacking (into an arena). Pure: no I/O. */
#include "codec.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Returns an owned copy of s (borrowed), or NULL when out of memory. */
static char *
dup_str(const char *s)
{
    size_t n = strlen(s);
    char *r = malloc(n + 1);

    if (r != NULL)
        memcpy(r, s, n + 1);
    return r;
}

/* Copies s (borrowed) into *out as an owned string, or NULL when s is NULL or empty.
 * Returns 0 or CORRAL_ENOMEM. */
static int
dup_opt(const char *s, char **out)
{
    *out = NULL;
    if (s == NULL || s[0] == '\0')
        return CORRAL_OK;
    *out = dup_str(s);
    return *out != NULL ? CORRAL_OK : CORRAL_ENOMEM;
}

/* Copies s (borrowed; NULL reads as "") into *out as an owned string, never NULL on
 * success. Returns 0 or CORRAL_ENOMEM. */
static int
dup_req(const char *s, char **out)
{
    *out = dup_str(s != NULL ? s : "");
    return *out != NULL ? CORRAL_OK : CORRAL_ENOMEM;
}

/* Frees the n strings of arr (owned; may be NULL when n is 0) and arr itself. */
static void
strs_free(char **arr, size_t n)
{
    size_t i;

    for (i = 0; i < n && arr != NULL; i++)
        free(arr[i]);
    free(arr);
}

/* Copies the n strings src (borrowed; a NULL one reads as "") into *arr (returned owned;
 * NULL when n is 0) and *count. On failure *arr holds nothing. Returns 0 or
 * CORRAL_ENOMEM. */
static int
strs_dup(char ***arr, size_t *count, char *const *src, size_t n)
{
    size_t i;
    char **a;

    *arr = NULL;
    *count = 0;
    if (n == 0)
        return CORRAL_OK;
    a = calloc(n, sizeof *a);
    if (a == NULL)
        return CORRAL_ENOMEM;
    for (i = 0; i < n; i++) {
        if (dup_req(src[i], &a[i]) != CORRAL_OK) {
            strs_free(a, i);
            return CORRAL_ENOMEM;
        }
    }
    *arr = a;
    *count = n;
    return CORRAL_OK;
}

/* Borrows data; returns an owned buffer or NULL (see codec.h). */
uint8_t *
codec_dup_bytes(const void *data, size_t len)
{
    uint8_t *r = malloc(len + 1);

    if (r == NULL)
        return NULL;
    if (len > 0)
        memcpy(r, data, len);
    r[len] = '\0';
    return r;
}

/* ------------------------------------------------------------------ packing */

#define BUF_MIN      256
#define BUF_KEEP_MAX 65536 /* a bigger buffer is given back once a smaller message comes */

/* Frees what b owns (see codec.h). */
void
codec_buf_fini(struct codec_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->cap = 0;
}

/* Writes v at p as a varint; returns how many bytes (at most 10). */
static size_t
put_varint(uint8_t *p, uint64_t v)
{
    size_t n = 0;

    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

/* How many bytes v takes as a varint. */
static size_t
varint_len(uint64_t v)
{
    size_t n = 1;

    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* The message of env's oneof body (borrowed), or NULL when none is set. */
static const ProtobufCMessage *
envelope_body(const Corral__V1__Envelope *env)
{
    const ProtobufCFieldDescriptor *f;

    if (env->body_case == CORRAL__V1__ENVELOPE__BODY__NOT_SET)
        return NULL;
    f = protobuf_c_message_descriptor_get_field(&corral__v1__envelope__descriptor,
                                                (unsigned)env->body_case);
    if (f == NULL || f->type != PROTOBUF_C_TYPE_MESSAGE)
        return NULL;
    return *(const ProtobufCMessage *const *)((const char *)env + f->offset);
}

/* Makes room for n bytes in b. Returns 0 or CORRAL_ENOMEM. */
static int
buf_reserve(struct codec_buf *b, size_t n)
{
    size_t ncap = BUF_MIN;
    uint8_t *nb;

    if (n <= b->cap && !(b->cap > BUF_KEEP_MAX && n <= BUF_KEEP_MAX))
        return CORRAL_OK;
    while (ncap < n && ncap <= SIZE_MAX / 2)
        ncap *= 2;
    if (ncap < n)
        ncap = n;
    nb = malloc(ncap);
    if (nb == NULL)
        return CORRAL_ENOMEM;
    free(b->data);
    b->data = nb;
    b->cap = ncap;
    return CORRAL_OK;
}

/* Borrows env; the bytes are borrowed from b (see codec.h). The envelope's own fields are
 * written here, the body by protobuf-c: its generic packer visits every field of a
 * descriptor, twice (size, then bytes), and the Envelope's twenty-odd oneof members made
 * up most of the cost of packing a small request. The bytes are the ones protobuf-c
 * writes: fields in number order, version and request id left out when 0. */
int
codec_pack(struct codec_buf *b, Corral__V1__Envelope *env, uint64_t request_id,
           const uint8_t **data, size_t *len)
{
    const ProtobufCMessage *body;
    uint64_t tag;
    size_t n, blen;
    uint8_t *p;

    env->version = CORRAL_PROTOCOL_VERSION;
    env->request_id = request_id;
    body = envelope_body(env);
    if (body == NULL) {
        n = corral__v1__envelope__get_packed_size(env);
        if (buf_reserve(b, n) != CORRAL_OK)
            return CORRAL_ENOMEM;
        *len = corral__v1__envelope__pack(env, b->data);
        *data = b->data;
        return CORRAL_OK;
    }
    tag = ((uint64_t)env->body_case << 3) | PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED;
    blen = protobuf_c_message_get_packed_size(body);
    n = (env->version != 0 ? 1 + varint_len(env->version) : 0) +
        (request_id != 0 ? 1 + varint_len(request_id) : 0) + varint_len(tag) + varint_len(blen) +
        blen;
    if (blen > SIZE_MAX - 64 || buf_reserve(b, n) != CORRAL_OK)
        return CORRAL_ENOMEM;
    p = b->data;
    if (env->version != 0) {
        *p++ = (1 << 3) | PROTOBUF_C_WIRE_TYPE_VARINT;
        p += put_varint(p, env->version);
    }
    if (request_id != 0) {
        *p++ = (2 << 3) | PROTOBUF_C_WIRE_TYPE_VARINT;
        p += put_varint(p, request_id);
    }
    p += put_varint(p, tag);
    p += put_varint(p, blen);
    p += protobuf_c_message_pack(body, p);
    *len = (size_t)(p - b->data);
    *data = b->data;
    return CORRAL_OK;
}

/* ------------------------------------------------------------------ unpacking */

#define ARENA_MIN      4096
#define ARENA_KEEP_MAX (256 * 1024) /* frames needing more spill into malloc'd blocks */
#define ARENA_ALIGN    (sizeof(max_align_t))

/* An allocation that did not fit in the arena's buffer; freed by the next reset. */
struct arena_block {
    struct arena_block *next;
    max_align_t data[];
};

/* protobuf-c's allocation hook: hands out the next bytes of the arena (data), or a block
 * of its own when they do not fit. */
static void *
arena_alloc(void *data, size_t size)
{
    struct codec_arena *a = data;
    struct arena_block *b;
    size_t n;

    if (size > SIZE_MAX - ARENA_ALIGN - sizeof *b)
        return NULL;
    n = size == 0 ? ARENA_ALIGN : (size + ARENA_ALIGN - 1) & ~(ARENA_ALIGN - 1);
    if (n <= a->cap - a->used) {
        void *p = a->buf + a->used;

        a->used += n;
        return p;
    }
    b = malloc(sizeof *b + n);
    if (b == NULL)
        return NULL;
    b->next = a->extra;
    a->extra = b;
    a->spill += n;
    return b->data;
}

/* protobuf-c's free hook: nothing, the whole arena goes at its next reset. */
static void
arena_free(void *data, void *p)
{
    (void)data;
    (void)p;
}

/* Ends the life of everything allocated in a; when the last frame spilled, grows the
 * buffer (up to ARENA_KEEP_MAX) so that the next one like it fits. */
static void
arena_reset(struct codec_arena *a)
{
    size_t want = a->used + a->spill;

    while (a->extra != NULL) {
        struct arena_block *b = a->extra;

        a->extra = b->next;
        free(b);
    }
    if (a->buf == NULL || (a->spill > 0 && a->cap < ARENA_KEEP_MAX)) {
        size_t ncap = a->cap > 0 ? a->cap : ARENA_MIN;

        while (ncap < want && ncap < ARENA_KEEP_MAX)
            ncap *= 2;
        if (ncap != a->cap || a->buf == NULL) {
            free(a->buf);
            a->buf = malloc(ncap);
            a->cap = a->buf != NULL ? ncap : 0; /* without one, every allocation spills */
        }
    }
    a->used = 0;
    a->spill = 0;
}

/* Frees what a owns (see codec.h). */
void
codec_arena_fini(struct codec_arena *a)
{
    arena_reset(a);
    free(a->buf);
    a->buf = NULL;
    a->cap = 0;
}

/* Reads a varint at *p (before end) into *v, advancing *p. Returns false when it is
 * truncated or longer than 10 bytes. */
static bool
get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    uint64_t r = 0;

    for (unsigned shift = 0; shift < 70 && *p < end; shift += 7) {
        uint8_t byte = *(*p)++;

        r |= (uint64_t)(byte & 0x7f) << shift;
        if ((byte & 0x80) == 0) {
            *v = r;
            return true;
        }
    }
    return false;
}

/* The common frame, unpacked with protobuf-c's generic code for the body only: version
 * and request id as varints, then one body, nothing else. Anything else (an unknown
 * field, a body given twice, which protobuf merges) returns false, and the caller starts
 * over with the generic code, which handles every case. *out is allocated with alloc.
 * The Envelope level made up half the cost of unpacking a small frame: the generic code
 * visits every field of a descriptor, and the Envelope has twenty-odd. */
static bool
unpack_fast(ProtobufCAllocator *alloc, const uint8_t *p, size_t len, Corral__V1__Envelope **out,
            bool *bad)
{
    const uint8_t *end = p + len, *bdata = NULL;
    const ProtobufCFieldDescriptor *bf = NULL;
    Corral__V1__Envelope *env;
    ProtobufCMessage *body;
    uint64_t blen = 0;

    env = alloc->alloc(alloc->allocator_data, sizeof *env);
    if (env == NULL)
        return false;
    corral__v1__envelope__init(env);
    while (p < end) {
        uint64_t key, v;
        uint32_t field;

        if (!get_varint(&p, end, &key) || (key >> 3) > UINT32_MAX)
            return false;
        field = (uint32_t)(key >> 3);
        if ((key & 7) == PROTOBUF_C_WIRE_TYPE_VARINT && (field == 1 || field == 2)) {
            if (!get_varint(&p, end, &v))
                return false;
            if (field == 1)
                env->version = (uint32_t)v; /* as protobuf-c reads a uint32 */
            else
                env->request_id = v;
            continue;
        }
        if ((key & 7) != PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED || bf != NULL)
            return false;
        bf = protobuf_c_message_descriptor_get_field(&corral__v1__envelope__descriptor, field);
        if (bf == NULL || bf->type != PROTOBUF_C_TYPE_MESSAGE || bf->quantifier_offset == 0 ||
            !get_varint(&p, end, &blen) || blen > (uint64_t)(end - p))
            return false;
        bdata = p;
        p += blen;
    }
    if (bf != NULL) {
        body = protobuf_c_message_unpack(bf->descriptor, alloc, (size_t)blen, bdata);
        if (body == NULL) {
            *bad = true; /* the generic code would refuse it too */
            return false;
        }
        *(ProtobufCMessage **)((char *)env + bf->offset) = body;
        *(uint32_t *)((char *)env + bf->quantifier_offset) = bf->id;
    }
    *out = env;
    return true;
}

/* Borrows data; *out is borrowed from a (see codec.h). */
int
codec_unpack(struct codec_arena *a, const void *data, size_t len, const Corral__V1__Envelope **out)
{
    ProtobufCAllocator alloc = {arena_alloc, arena_free, a};
    Corral__V1__Envelope *env = NULL;
    bool bad = false;

    arena_reset(a);
    if (!unpack_fast(&alloc, data, len, &env, &bad)) {
        if (bad)
            return CORRAL_EPROTO;
        arena_reset(a);
        env = corral__v1__envelope__unpack(&alloc, len, data);
        if (env == NULL)
            return CORRAL_EPROTO;
    }
    *out = env;
    return CORRAL_OK;
}

/* Borrows r (see codec.h). */
int
codec_reply_code(const Corral__V1__Reply *r)
{
    int code = (int)r->code;

    if (code == 0)
        return CORRAL_OK;
    if (code > 0 && code < 100)
        return code;
    return CORRAL_EPROTO;
}

/* Borrows id; writes out (see codec.h). */
int
codec_copy_id(char out[CORRAL_ID_MAX], const char *id)
{
    size_t n = id != NULL ? strlen(id) : 0;

    if (n == 0 || n >= CORRAL_ID_MAX)
        return CORRAL_EPROTO;
    memcpy(out, id, n + 1);
    return CORRAL_OK;
}

/* ------------------------------------------------------------------ errors */

/* Frees what e (borrowed) owns, recursively, and zeroes it. */
static void
error_clear(struct corral_error *e)
{
    size_t i;

    for (i = 0; i < e->nexceptions; i++)
        error_clear(&e->exceptions[i]);
    free(e->exceptions);
    free(e->type);
    free(e->message);
    free(e->job);
    free(e->group);
    free(e->details);
    memset(e, 0, sizeof *e);
}

/* Fills *dst (borrowed, overwritten) with a deep copy of pb (borrowed) at nesting level
 * depth. On failure *dst holds nothing. Returns 0, CORRAL_EPROTO or CORRAL_ENOMEM. */
static int
error_fill(struct corral_error *dst, const Corral__V1__Error *pb, int depth)
{
    int rc = CORRAL_OK;
    size_t i;

    memset(dst, 0, sizeof *dst);
    if (depth > CODEC_MAX_DEPTH) {
        rc = CORRAL_EPROTO;
        goto out;
    }
    if ((rc = dup_req(pb->type, &dst->type)) != CORRAL_OK ||
        (rc = dup_req(pb->message, &dst->message)) != CORRAL_OK ||
        (rc = dup_opt(pb->job, &dst->job)) != CORRAL_OK ||
        (rc = dup_opt(pb->group, &dst->group)) != CORRAL_OK)
        goto out;
    if (pb->details.len > 0) {
        dst->details = codec_dup_bytes(pb->details.data, pb->details.len);
        if (dst->details == NULL) {
            rc = CORRAL_ENOMEM;
            goto out;
        }
        dst->details_len = pb->details.len;
    }
    if (pb->n_exceptions > 0) {
        dst->exceptions = calloc(pb->n_exceptions, sizeof *dst->exceptions);
        if (dst->exceptions == NULL) {
            rc = CORRAL_ENOMEM;
            goto out;
        }
        dst->nexceptions = pb->n_exceptions;
        for (i = 0; i < pb->n_exceptions; i++) {
            if (pb->exceptions[i] == NULL) {
                rc = CORRAL_EPROTO;
                goto out;
            }
            rc = error_fill(&dst->exceptions[i], pb->exceptions[i], depth + 1);
            if (rc != CORRAL_OK)
                goto out;
        }
    }
out:
    if (rc != CORRAL_OK)
        error_clear(dst);
    return rc;
}

/* Borrows pb; returns an owned *out (see codec.h). */
int
codec_error_new(struct corral_error **out, const Corral__V1__Error *pb)
{
    int rc;
    struct corral_error *e = malloc(sizeof *e);

    if (e == NULL)
        return CORRAL_ENOMEM;
    rc = error_fill(e, pb, 0);
    if (rc != CORRAL_OK) {
        free(e);
        return rc;
    }
    *out = e;
    return CORRAL_OK;
}

/* Frees an error returned by the library (takes ownership); accepts NULL, sets NULL. */
void
corral_error_free(struct corral_error **p)
{
    if (p == NULL || *p == NULL)
        return;
    error_clear(*p);
    free(*p);
    *p = NULL;
}

/* ------------------------------------------------------------------ nodes */

/* Maps a wire state to the library's; unknown values read as UNSPECIFIED. */
static enum corral_state
map_state(int v)
{
    return v >= CORRAL_STATE_UNSPECIFIED && v <= CORRAL_STATE_RETRY_WAIT ? (enum corral_state)v
                                                                         : CORRAL_STATE_UNSPECIFIED;
}

/* Maps a wire outcome to the library's; unknown values read as NONE. */
static enum corral_outcome
map_outcome(int v)
{
    return v >= CORRAL_OUTCOME_NONE && v <= CORRAL_OUTCOME_CANCELLED ? (enum corral_outcome)v
                                                                     : CORRAL_OUTCOME_NONE;
}

/* Maps a wire cancel source to the library's; unknown values read as NONE. */
static enum corral_cancel_source
map_source(int v)
{
    return v >= CORRAL_SOURCE_NONE && v <= CORRAL_SOURCE_PARENT ? (enum corral_cancel_source)v
                                                                : CORRAL_SOURCE_NONE;
}

/* Maps a wire on_deadline to the library's; unknown values read as FAIL (the default). */
static enum corral_on_deadline
map_on_deadline(int v)
{
    return v == CORRAL_ON_DEADLINE_MOVE_ON ? CORRAL_ON_DEADLINE_MOVE_ON : CORRAL_ON_DEADLINE_FAIL;
}

/* Frees what n (borrowed) owns, recursively, and zeroes it. */
static void
node_clear(struct corral_node *n)
{
    size_t i;

    for (i = 0; i < n->nchildren; i++)
        node_clear(&n->children[i]);
    for (i = 0; i < n->ngroups; i++)
        node_clear(&n->groups[i]);
    free(n->children);
    free(n->groups);
    if (n->error != NULL) {
        error_clear(n->error);
        free(n->error);
    }
    free(n->id);
    free(n->kind);
    free(n->parent);
    free(n->result);
    free(n->cancel_reason);
    strs_free(n->limiters, n->nlimiters);
    memset(n, 0, sizeof *n);
}

static int node_fill(struct corral_node *dst, const Corral__V1__Node *pb, int depth);

/* Fills *arr (returned owned) and *count with deep copies of the n nodes src (borrowed).
 * On failure *arr holds nothing. Returns 0, CORRAL_EPROTO or CORRAL_ENOMEM. */
static int
nodes_fill(struct corral_node **arr, size_t *count, Corral__V1__Node *const *src, size_t n,
           int depth)
{
    int rc = CORRAL_OK;
    size_t i;
    struct corral_node *a;

    *arr = NULL;
    *count = 0;
    if (n == 0)
        return CORRAL_OK;
    a = calloc(n, sizeof *a);
    if (a == NULL)
        return CORRAL_ENOMEM;
    for (i = 0; i < n; i++) {
        if (src[i] == NULL) {
            rc = CORRAL_EPROTO;
            goto out;
        }
        rc = node_fill(&a[i], src[i], depth);
        if (rc != CORRAL_OK)
            goto out;
    }
    *arr = a;
    *count = n;
    a = NULL;
out:
    if (a != NULL) {
        for (i = 0; i < n; i++)
            node_clear(&a[i]);
        free(a);
    }
    return rc;
}

/* Fills *dst (borrowed, overwritten) with a deep copy of pb (borrowed) at nesting level
 * depth. On failure *dst holds nothing. Returns 0, CORRAL_EPROTO or CORRAL_ENOMEM. */
static int
node_fill(struct corral_node *dst, const Corral__V1__Node *pb, int depth)
{
    int rc = CORRAL_OK;

    memset(dst, 0, sizeof *dst);
    if (depth > CODEC_MAX_DEPTH) {
        rc = CORRAL_EPROTO;
        goto out;
    }
    if (pb->type == CORRAL__V1__NODE_TYPE__NODE_GROUP)
        dst->type = CORRAL_NODE_GROUP;
    else if (pb->type == CORRAL__V1__NODE_TYPE__NODE_JOB)
        dst->type = CORRAL_NODE_JOB;
    else {
        rc = CORRAL_EPROTO;
        goto out;
    }
    dst->state = map_state((int)pb->state);
    dst->outcome = map_outcome((int)pb->outcome);
    dst->attempt = pb->attempt;
    dst->cancel_called = pb->cancel_called != 0;
    dst->cancelled_caught = pb->cancelled_caught != 0;
    dst->cancel_source = map_source((int)pb->cancel_source);
    dst->closed = pb->closed != 0;
    dst->deadline_unix_ms = pb->deadline_unix_ms;
    dst->on_deadline = map_on_deadline((int)pb->on_deadline);
    dst->shield = pb->shield != 0;
    dst->effective_deadline_unix_ms = pb->effective_deadline_unix_ms;
    dst->max_attempts = pb->max_attempts;
    dst->next_attempt_unix_ms = pb->next_attempt_unix_ms;
    dst->started = pb->started != 0;
    if ((rc = dup_req(pb->id, &dst->id)) != CORRAL_OK ||
        (rc = dup_opt(pb->parent, &dst->parent)) != CORRAL_OK ||
        (rc = dup_opt(pb->cancel_reason, &dst->cancel_reason)) != CORRAL_OK)
        goto out;
    if (dst->type == CORRAL_NODE_JOB && (rc = dup_req(pb->kind, &dst->kind)) != CORRAL_OK)
        goto out;
    rc = strs_dup(&dst->limiters, &dst->nlimiters, pb->limiters, pb->n_limiters);
    if (rc != CORRAL_OK)
        goto out;
    /* A job that succeeded always has a (possibly empty) result buffer. */
    if (pb->result.len > 0 ||
        (dst->type == CORRAL_NODE_JOB && dst->outcome == CORRAL_OUTCOME_SUCCEEDED)) {
        dst->result = codec_dup_bytes(pb->result.data, pb->result.len);
        if (dst->result == NULL) {
            rc = CORRAL_ENOMEM;
            goto out;
        }
        dst->result_len = pb->result.len;
    }
    if (pb->error != NULL) {
        dst->error = malloc(sizeof *dst->error);
        if (dst->error == NULL) {
            rc = CORRAL_ENOMEM;
            goto out;
        }
        rc = error_fill(dst->error, pb->error, depth + 1);
        if (rc != CORRAL_OK) {
            free(dst->error);
            dst->error = NULL;
            goto out;
        }
    }
    rc = nodes_fill(&dst->children, &dst->nchildren, pb->children, pb->n_children, depth + 1);
    if (rc != CORRAL_OK)
        goto out;
    rc = nodes_fill(&dst->groups, &dst->ngroups, pb->groups, pb->n_groups, depth + 1);
out:
    if (rc != CORRAL_OK)
        node_clear(dst);
    return rc;
}

/* Borrows pb; returns an owned *out (see codec.h). */
int
codec_node_new(struct corral_node **out, const Corral__V1__Node *pb)
{
    int rc;
    struct corral_node *n = malloc(sizeof *n);

    if (n == NULL)
        return CORRAL_ENOMEM;
    rc = node_fill(n, pb, 0);
    if (rc != CORRAL_OK) {
        free(n);
        return rc;
    }
    *out = n;
    return CORRAL_OK;
}

/* Frees a tree returned by the library (takes ownership); accepts NULL, sets NULL. */
void
corral_node_free(struct corral_node **p)
{
    if (p == NULL || *p == NULL)
        return;
    node_clear(*p);
    free(*p);
    *p = NULL;
}

/* ------------------------------------------------------------------ events */

/* Borrows pb; returns an owned *out (see codec.h). */
int
codec_event_new(struct corral_event **out, const Corral__V1__Event *pb)
{
    int rc = CORRAL_OK;
    struct corral_event *ev = NULL;
    size_t n = pb->subscription != NULL ? strlen(pb->subscription) : 0;
    int type = (int)pb->type;

    if (type < CORRAL_EVENT_JOB_DISPATCHED || type > CORRAL_EVENT_SUBSCRIPTION_OVERFLOW ||
        (pb->node == NULL && type != CORRAL_EVENT_SUBSCRIPTION_OVERFLOW) || n >= CORRAL_ID_MAX) {
        rc = CORRAL_EPROTO;
        goto out;
    }
    ev = calloc(1, sizeof *ev);
    if (ev == NULL) {
        rc = CORRAL_ENOMEM;
        goto out;
    }
    ev->type = (enum corral_event_type)type;
    if (n > 0)
        memcpy(ev->subscription, pb->subscription, n + 1);
    if (pb->node != NULL) {
        rc = codec_node_new(&ev->node, pb->node);
        if (rc != CORRAL_OK)
            goto out;
    }
    *out = ev;
    ev = NULL;
out:
    corral_event_free(&ev);
    return rc;
}

/* Frees an event (takes ownership); accepts NULL, sets NULL. */
void
corral_event_free(struct corral_event **p)
{
    if (p == NULL || *p == NULL)
        return;
    corral_node_free(&(*p)->node);
    free(*p);
    *p = NULL;
}

/* ------------------------------------------------------------------ limiters */

/* Frees what l (borrowed) owns and zeroes it. */
static void
limiter_clear(struct corral_limiter *l)
{
    free(l->name);
    strs_free(l->borrowers, l->nborrowers);
    memset(l, 0, sizeof *l);
}

/* Borrows src; returns an owned *out (see codec.h). */
int
codec_limiters_new(struct corral_limiter **out, Corral__V1__Limiter *const *src, size_t n)
{
    int rc = CORRAL_OK;
    size_t i;
    struct corral_limiter *a;

    if (n == 0) {
        *out = NULL;
        return CORRAL_OK;
    }
    a = calloc(n, sizeof *a);
    if (a == NULL)
        return CORRAL_ENOMEM;
    for (i = 0; i < n; i++) {
        const Corral__V1__Limiter *pb = src[i];

        if (pb == NULL || pb->name == NULL || pb->name[0] == '\0') {
            rc = CORRAL_EPROTO;
            break;
        }
        a[i].total_tokens = pb->total_tokens;
        a[i].borrowed_tokens = pb->borrowed_tokens;
        a[i].waiting = pb->waiting;
        if ((rc = dup_req(pb->name, &a[i].name)) != CORRAL_OK ||
            (rc = strs_dup(&a[i].borrowers, &a[i].nborrowers, pb->borrowers, pb->n_borrowers)) !=
                CORRAL_OK)
            break;
    }
    if (rc != CORRAL_OK) {
        corral_limiters_free(&a, n);
        return rc;
    }
    *out = a;
    return CORRAL_OK;
}

/* Frees an array of n limiters (takes ownership); accepts NULL, sets NULL. Entries past
 * a failed copy are all zero, which limiter_clear handles. */
void
corral_limiters_free(struct corral_limiter **p, size_t n)
{
    size_t i;

    if (p == NULL || *p == NULL)
        return;
    for (i = 0; i < n; i++)
        limiter_clear(&(*p)[i]);
    free(*p);
    *p = NULL;
}
