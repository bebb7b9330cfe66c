/* codec.c - protobuf-c <-> libcorral structs: deep copies of Node, Error and Event into
 * owned, NUL-terminated library structs (and their _free functions), reply codes, and
 * envelope packing / unpacking. Pure: no I/O. */
#include "codec.h"

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

/* Borrows env; returns an owned *buf (see codec.h). */
int
codec_pack(Corral__V1__Envelope *env, uint64_t request_id, uint8_t **buf, size_t *len)
{
    size_t n;
    uint8_t *b;

    env->version = CORRAL_PROTOCOL_VERSION;
    env->request_id = request_id;
    n = corral__v1__envelope__get_packed_size(env);
    b = malloc(n > 0 ? n : 1);
    if (b == NULL)
        return CORRAL_ENOMEM;
    *len = corral__v1__envelope__pack(env, b);
    *buf = b;
    return CORRAL_OK;
}

/* Borrows data; returns an owned *out (see codec.h). */
int
codec_unpack(const void *data, size_t len, Corral__V1__Envelope **out)
{
    Corral__V1__Envelope *env = corral__v1__envelope__unpack(NULL, len, data);

    if (env == NULL)
        return CORRAL_EPROTO;
    *out = env;
    return CORRAL_OK;
}

/* Frees an unpacked envelope; accepts NULL, sets *p to NULL. */
void
codec_envelope_free(Corral__V1__Envelope **p)
{
    if (p == NULL || *p == NULL)
        return;
    corral__v1__envelope__free_unpacked(*p, NULL);
    *p = NULL;
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
    if ((rc = dup_req(pb->id, &dst->id)) != CORRAL_OK ||
        (rc = dup_opt(pb->parent, &dst->parent)) != CORRAL_OK ||
        (rc = dup_opt(pb->cancel_reason, &dst->cancel_reason)) != CORRAL_OK)
        goto out;
    if (dst->type == CORRAL_NODE_JOB && (rc = dup_req(pb->kind, &dst->kind)) != CORRAL_OK)
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

    if (type < CORRAL_EVENT_JOB_DISPATCHED || type > CORRAL_EVENT_GROUP_ENDED || pb->node == NULL ||
        n >= CORRAL_ID_MAX) {
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
    rc = codec_node_new(&ev->node, pb->node);
    if (rc != CORRAL_OK)
        goto out;
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
