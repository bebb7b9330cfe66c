/* engine.c - groups, jobs and cancel scopes: the client requests, the transition table,
 * cancellation (S2, S4, S5, S8), group completion (S1, S3) and recovery from rows.
 * Workers and dispatch live in engine_sched.c, trees and events in engine_tree.c. */
#include "engine_int.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Groups nest at most this deep (through jobs too), so recursion stays bounded. */
#define MAX_DEPTH 64

/* ------------------------------------------------------------------ memory */

void
engine_oom(void)
{
    fputs("corrald: out of memory\n", stderr);
    abort();
}

static void *
oom(void)
{
    engine_oom();
    return NULL;
}

void *
ecalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    return p ? p : oom();
}

void *
erealloc(void *p, size_t size)
{
    void *q = realloc(p, size ? size : 1);
    return q ? q : oom();
}

char *
estrdup(const char *s)
{
    return ememdup(s, strlen(s) + 1);
}

void *
ememdup(const void *p, size_t len)
{
    if (len == 0)
        return NULL;
    void *q = malloc(len);
    if (q == NULL)
        return oom();
    memcpy(q, p, len);
    return q;
}

void
eappend(void ***arr, size_t *n, size_t *cap, void *item)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 4;
        *arr = erealloc(*arr, *cap * sizeof(**arr));
    }
    (*arr)[(*n)++] = item;
}

/* ------------------------------------------------------------------ id map */

static size_t
slot_of(uint64_t key, size_t cap)
{
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;
    key ^= key >> 33;
    return (size_t)key & (cap - 1);
}

static void idmap_put(struct idmap *m, struct node *n);

static void
idmap_grow(struct idmap *m)
{
    struct idmap old = *m;
    m->cap = old.cap ? old.cap * 2 : 1024;
    m->keys = ecalloc(m->cap, sizeof(*m->keys));
    m->vals = ecalloc(m->cap, sizeof(*m->vals));
    m->n = 0;
    for (size_t i = 0; i < old.cap; i++)
        if (old.keys[i])
            idmap_put(m, old.vals[i]);
    free(old.keys);
    free(old.vals);
}

static void
idmap_put(struct idmap *m, struct node *n)
{
    if ((m->n + 1) * 2 > m->cap)
        idmap_grow(m);
    size_t i = slot_of(n->id, m->cap);
    while (m->keys[i] && m->keys[i] != n->id)
        i = (i + 1) & (m->cap - 1);
    if (!m->keys[i])
        m->n++;
    m->keys[i] = n->id;
    m->vals[i] = n;
}

/* Removes id (backward-shift deletion: no tombstones, probes stay short). */
static void
idmap_del(struct idmap *m, uint64_t id)
{
    if (m->cap == 0 || id == 0)
        return;
    size_t mask = m->cap - 1;
    size_t i = slot_of(id, m->cap);
    while (m->keys[i] && m->keys[i] != id)
        i = (i + 1) & mask;
    if (!m->keys[i])
        return;
    m->n--;
    for (size_t j = (i + 1) & mask; m->keys[j]; j = (j + 1) & mask) {
        size_t home = slot_of(m->keys[j], m->cap);
        /* Entry j may move into the hole at i unless its home lies in (i, j]. */
        bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (stays)
            continue;
        m->keys[i] = m->keys[j];
        m->vals[i] = m->vals[j];
        i = j;
    }
    m->keys[i] = 0;
    m->vals[i] = NULL;
}

static struct node *
idmap_get(const struct idmap *m, uint64_t id)
{
    if (m->cap == 0 || id == 0)
        return NULL;
    size_t i = slot_of(id, m->cap);
    while (m->keys[i]) {
        if (m->keys[i] == id)
            return m->vals[i];
        i = (i + 1) & (m->cap - 1);
    }
    return NULL;
}

/* Parses "g123" / "j123" into its number; 0 when malformed or of the other type. */
static uint64_t
parse_id(const char *s, enum node_type type)
{
    if (s[0] != (type == NODE_GROUP ? 'g' : 'j') || s[1] < '1' || s[1] > '9')
        return 0;
    uint64_t v = 0;
    for (const char *p = s + 1; *p; p++) {
        if (*p < '0' || *p > '9' || v > (UINT64_MAX - 9) / 10)
            return 0;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    return v;
}

struct node *
engine_node(struct engine *e, uint64_t id)
{
    return idmap_get(&e->map, id);
}

struct node *
engine_lookup(struct engine *e, const char *idstr, enum node_type type)
{
    struct node *n = idmap_get(&e->map, parse_id(idstr, type));
    if (n == NULL || n->type != type)
        return NULL;
    /* A tree being purged is gone for every request (retention). */
    return root_of(n)->purging ? NULL : n;
}

struct node *
root_of(struct node *n)
{
    while (n->parent)
        n = n->parent;
    return n;
}

void
engine_forget(struct engine *e, struct node *n)
{
    idmap_del(&e->map, n->id);
}

struct group *
as_group(struct node *n)
{
    return n && n->type == NODE_GROUP ? (struct group *)n : NULL;
}

struct job *
as_job(struct node *n)
{
    return n && n->type == NODE_JOB ? (struct job *)n : NULL;
}

void
node_init(struct engine *e, struct node *n, enum node_type type, uint64_t id)
{
    n->type = type;
    n->id = id;
    snprintf(n->idstr, sizeof(n->idstr), "%c%" PRIu64, type == NODE_GROUP ? 'g' : 'j', id);
    idmap_put(&e->map, n);
    if (id >= e->next_id)
        e->next_id = id + 1;
}

/* ------------------------------------------------------------------ log lines */

void
engine_note(struct engine *e, enum log_level level, const char *event, const char *fmt, ...)
{
    char kv[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(kv, sizeof kv, fmt, ap);
    va_end(ap);
    if (!outbox_note(e->out, (int)level, event, kv))
        engine_oom();
}

const char *
kv_quote(struct engine *e, const char *s)
{
    size_t n = 3;
    for (const char *p = s; *p; p++)
        n += (*p == '"' || *p == '\\') ? 2 : 1;
    char *q = arena_alloc(&e->out->arena, n);
    if (q == NULL)
        engine_oom();
    char *w = q;
    *w++ = '"';
    for (const char *p = s; *p; p++) {
        if (*p == '"' || *p == '\\')
            *w++ = '\\';
        *w++ = *p;
    }
    *w++ = '"';
    *w = '\0';
    return q;
}

/* ------------------------------------------------------------------ transitions */

/* The legal moves: legal[type][from] is a bit set of the states it may move to. */
#define BIT(s) (1u << (s))
static const unsigned legal[2][9] = {
    [NODE_GROUP] =
        {
            [ST_NONE] = BIT(ST_OPEN) | BIT(ST_CANCELLING),
            [ST_OPEN] = BIT(ST_CLOSED) | BIT(ST_CANCELLING),
            [ST_CLOSED] = BIT(ST_CANCELLING) | BIT(ST_ENDED),
            [ST_CANCELLING] = BIT(ST_ENDED),
        },
    [NODE_JOB] =
        {
            [ST_NONE] = BIT(ST_QUEUED) | BIT(ST_ENDED),
            [ST_QUEUED] = BIT(ST_RUNNING) | BIT(ST_ENDED) | BIT(ST_WAITING),
            [ST_WAITING] = BIT(ST_QUEUED) | BIT(ST_ENDED),
            [ST_RUNNING] = BIT(ST_CANCELLING) | BIT(ST_ENDED) | BIT(ST_QUEUED) | BIT(ST_RETRY_WAIT),
            [ST_CANCELLING] = BIT(ST_ENDED),
            [ST_RETRY_WAIT] = BIT(ST_QUEUED) | BIT(ST_ENDED),
        },
};

void
mark_dirty(struct engine *e, struct node *n)
{
    if (!n->dirty) {
        n->dirty = true;
        eappend((void ***)&e->dirty, &e->ndirty, &e->capdirty, n);
    }
}

void
node_set_state(struct engine *e, struct node *n, enum node_state to)
{
    if (!(legal[n->type][n->state] & BIT(to))) {
        fprintf(stderr, "corrald: bug: illegal transition of %s from %d to %d\n", n->idstr,
                (int)n->state, (int)to);
        abort();
    }
    n->state = to;
    mark_dirty(e, n);
}

/* ------------------------------------------------------------------ replies */

struct out_msg *
reply(struct engine *e, const struct peer *to, uint64_t request_id, enum corral_err code,
      const char *message)
{
    struct out_msg *m = outbox_msg(e->out, OUTMSG_REPLY, to);
    if (m == NULL)
        oom();
    m->request_id = request_id;
    m->code = code;
    m->message = message ? message : "";
    m->id = "";
    return m;
}

struct out_msg *
reply_fmt(struct engine *e, const struct peer *to, uint64_t request_id, enum corral_err code,
          const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    char *msg = arena_strdup(&e->out->arena, buf);
    if (msg == NULL)
        oom();
    return reply(e, to, request_id, code, msg);
}

/* ------------------------------------------------------------------ scopes */

static bool
same_reason(const struct node *a, const struct node *b)
{
    const char *x = a->cancel_reason ? a->cancel_reason : "";
    const char *y = b->cancel_reason ? b->cancel_reason : "";
    return strcmp(x, y) == 0;
}

/* True when n's cancel came from an enclosing scope rather than from n itself. Direct
 * children of a fail-fast group carry sibling_failed with the group's reason (the failed
 * child's id), which no other scope can have. */
static bool
inherited(const struct node *n)
{
    if (n->cancel_source == SRC_PARENT)
        return true;
    if (n->cancel_source != SRC_SIBLING_FAILED || n->parent == NULL)
        return false;
    return n->parent->cancel_source == SRC_SIBLING_FAILED && same_reason(n, n->parent);
}

/* n ended as cancelled: the scope whose cancel was the origin caught it (D8). With
 * self, n may be that scope itself (a job cancelled directly, a group whose owner's body
 * was cancelled). */
static void
mark_caught(struct engine *e, struct node *n, bool self)
{
    struct node *m = n;
    while (inherited(m) && m->parent)
        m = m->parent;
    if ((m != n || self) && m->cancel_called && !m->cancelled_caught) {
        m->cancelled_caught = true;
        mark_dirty(e, m);
    }
}

void
arm_deadline(struct engine *e, struct node *n)
{
    if (n->deadline_ms == 0 || n->state == ST_ENDED)
        return;
    struct timer t = {n->deadline_ms, n->id, TIMER_DEADLINE, 0};
    if (!timer_push(&e->timers, &t))
        engine_oom();
}

void
scope_init(struct engine *e, struct node *n, const struct scope_opts *scope)
{
    /* D3: a relative deadline starts when the broker accepts the request. */
    n->deadline_ms = scope->timeout_ms ? e->now + scope->timeout_ms : scope->deadline_unix_ms;
    n->on_deadline = scope->on_deadline;
    n->shield = scope->shield;
    arm_deadline(e, n);
}

uint64_t
effective_deadline(const struct node *n)
{
    uint64_t best = 0;
    for (const struct node *m = n; m; m = m->parent) {
        if (m->deadline_ms && (best == 0 || m->deadline_ms < best))
            best = m->deadline_ms;
        if (m->shield)
            break;
    }
    return best;
}

/* True when a cancel with this source comes from an enclosing scope, which a shield
 * stops (S7); a cancel aimed at the node itself or its own deadline goes through. */
static bool
from_above(enum cancel_source src)
{
    return src == SRC_PARENT || src == SRC_SIBLING_FAILED;
}

void
cancel_node(struct engine *e, struct node *n, enum cancel_source src, const char *reason)
{
    if (n->state == ST_ENDED || n->cancel_called || (n->shield && from_above(src)))
        return;
    n->cancel_called = true;
    n->cancel_source = src;
    n->cancel_reason = reason && *reason ? estrdup(reason) : NULL;
    mark_dirty(e, n);
    const char *r = n->cancel_reason;

    struct job *j = as_job(n);
    if (j) {
        if (n->state == ST_QUEUED || n->state == ST_WAITING || n->state == ST_RETRY_WAIT) {
            job_end(e, j, OUT_CANCELLED);
            return;
        }
        node_set_state(e, n, ST_CANCELLING);
        send_cancel(e, j);
        if (j->worker)
            arm_cancel_grace(e, j);
        for (size_t i = 0; i < j->ngroups; i++)
            cancel_node(e, &j->groups[i]->n, SRC_PARENT, r);
        return;
    }
    struct group *g = as_group(n);
    node_set_state(e, n, ST_CANCELLING);
    emit_event(e, n, EV_GROUP_CANCELLING);
    enum cancel_source child_src = src == SRC_SIBLING_FAILED ? SRC_SIBLING_FAILED : SRC_PARENT;
    g->busy = true;
    for (size_t i = 0; i < g->nchildren; i++)
        cancel_node(e, g->children[i], child_src, r);
    g->busy = false;
    group_maybe_end(e, g);
}

/* A child of g has ended: fail fast on a failure (S2), then see whether g can end. */
static void
child_ended(struct engine *e, struct group *g, struct node *child)
{
    g->unended--;
    struct job *cj = as_job(child);
    /* S9: a job that failed before signalling readiness gave its error to its starter;
     * it is not the group's failure. */
    bool before_start = cj && cj->wait_started && !cj->started;
    if (child->outcome == OUT_FAILED && !before_start) {
        child->failed_seq = ++e->failseq;
        mark_dirty(e, child);
        eappend((void ***)&g->failures, &g->nfailures, &g->capfailures, child);
        if (!g->n.cancel_called)
            cancel_node(e, &g->n, SRC_SIBLING_FAILED, child->idstr);
    }
    group_maybe_end(e, g);
}

/* A job waited for with wait_started ended before started(): tell its starter how (S9). */
static void
answer_starter(struct engine *e, struct job *j)
{
    struct listener *l = j->starter;
    if (l == NULL)
        return;
    j->starter = NULL;
    struct out_msg *m;
    if (j->n.outcome == OUT_FAILED) {
        m = reply_fmt(e, &l->peer, l->request_id, CORRAL_ESTARTFAILED,
                      "job %s failed before signalling readiness", j->n.idstr);
        m->error = tree_build(e, &j->n, false)->error;
    } else if (j->n.outcome == OUT_CANCELLED) {
        m = reply_fmt(e, &l->peer, l->request_id, CORRAL_ESTARTCANCELLED,
                      "job %s was cancelled before signalling readiness", j->n.idstr);
    } else {
        m = reply_fmt(e, &l->peer, l->request_id, CORRAL_ENOTSTARTED,
                      "job %s ended without signalling readiness", j->n.idstr);
    }
    m->id = j->n.idstr;
    free(l);
}

void
job_end(struct engine *e, struct job *j, enum outcome o)
{
    if (o == OUT_CANCELLED && j->n.cancel_source == SRC_DEADLINE) {
        /* S6: the job's own deadline stopped it. fail_after raises TimeoutError (a real
         * failure, so its group fails fast); move_on_after ends normally, having caught
         * its cancellation. */
        /* Either way the scope caught its own cancellation, as AnyIO's do. */
        j->n.cancelled_caught = true;
        if (j->n.on_deadline == ON_DEADLINE_FAIL) {
            o = OUT_FAILED;
            free(j->err_type);
            free(j->err_message);
            j->err_type = estrdup(TIMEOUT_ERROR);
            j->err_message = estrdup(DEADLINE_EXCEEDED);
        } else {
            o = OUT_SUCCEEDED;
        }
    }
    job_set_waiting(e, j, false);
    if (j->n.state == ST_QUEUED)
        kind_dequeue(e, j);
    if (j->worker)
        worker_release(e, j);
    job_limiters_done(e, j);
    node_set_state(e, &j->n, ST_ENDED);
    j->n.outcome = o;
    j->n.ended_ms = e->now;
    e->stats.jobs_ended[o]++;
    answer_starter(e, j);
    emit_event(e, &j->n, EV_JOB_ENDED);
    if (o == OUT_CANCELLED)
        mark_caught(e, &j->n, true);
    child_ended(e, as_group(j->n.parent), &j->n);
}

/* True while one of the groups j opened has not ended. */
static bool
has_open_groups(const struct job *j)
{
    for (size_t i = 0; i < j->ngroups; i++)
        if (j->groups[i]->n.state != ST_ENDED)
            return true;
    return false;
}

void
job_body_ended(struct engine *e, struct job *j, enum outcome o)
{
    if (!has_open_groups(j)) {
        job_end(e, j, o);
        return;
    }
    /* D5: the body cannot leave its `async with` early. The outcome waits, kept in the
     * job's outcome while its state is not ENDED (so it survives a restart); the groups
     * are closed implicitly, and cancelled first if the body failed. */
    if (j->worker)
        worker_release(e, j);
    tokens_release(e, j); /* its body has stopped running */
    j->n.outcome = o;
    mark_dirty(e, &j->n);
    for (size_t i = 0; i < j->ngroups; i++) {
        struct group *g = j->groups[i];
        if (o == OUT_FAILED)
            cancel_node(e, &g->n, SRC_PARENT, j->n.idstr);
        if (g->n.state != ST_ENDED && !g->closed) {
            g->closed = true;
            if (g->n.state == ST_OPEN)
                node_set_state(e, &g->n, ST_CLOSED);
            mark_dirty(e, &g->n);
        }
        group_maybe_end(e, g);
    }
}

void
job_maybe_end(struct engine *e, struct job *j)
{
    if (j->n.state == ST_ENDED || j->n.outcome == OUT_NONE || has_open_groups(j))
        return;
    enum outcome o = j->n.outcome;
    /* A failure in a group the job opened becomes the job's, as a nested exception group
     * (the job's own error, if it failed, stays first and wins). */
    for (size_t i = 0; i < j->ngroups && o != OUT_FAILED; i++) {
        struct group *g = j->groups[i];
        if (g->n.outcome == OUT_FAILED) {
            o = OUT_FAILED;
            free(j->err_type);
            free(j->err_message);
            j->err_type = estrdup(EXCEPTION_GROUP);
            j->err_message = estrdup(g->n.idstr);
        }
    }
    job_end(e, j, o);
}

struct group *
job_error_group(const struct job *j)
{
    if (j->err_type == NULL || strcmp(j->err_type, EXCEPTION_GROUP) != 0 || !j->err_message)
        return NULL;
    for (size_t i = 0; i < j->ngroups; i++)
        if (strcmp(j->groups[i]->n.idstr, j->err_message) == 0)
            return j->groups[i];
    return NULL;
}

static void
group_end(struct engine *e, struct group *g)
{
    /* S6: a child that failed for real wins; else the group's own deadline decides (a
     * bare TimeoutError for fail_after, success for move_on_after); else a cancel. */
    bool timed_out = g->n.cancel_source == SRC_DEADLINE;
    enum outcome o;
    if (g->nfailures)
        o = OUT_FAILED;
    else if (timed_out)
        o = g->n.on_deadline == ON_DEADLINE_FAIL ? OUT_FAILED : OUT_SUCCEEDED;
    else
        o = g->n.cancel_called ? OUT_CANCELLED : OUT_SUCCEEDED;
    if (timed_out && o == OUT_SUCCEEDED)
        g->n.cancelled_caught = true;
    node_set_state(e, &g->n, ST_ENDED);
    g->n.outcome = o;
    g->n.ended_ms = e->now;
    e->stats.groups_ended[o]++;
    if (o == OUT_FAILED) {
        /* A failed root at info; the groups failing inside it at debug. */
        const struct node *first = g->nfailures ? g->failures[0] : NULL;
        const struct job *fj = first && first->type == NODE_JOB ? (const struct job *)first : NULL;
        engine_note(e, g->n.parent ? LOG_DEBUG : LOG_INFO, "group_failed",
                    "group=%s errors=%zu first=%s type=%s", g->n.idstr, g->nfailures,
                    first ? first->idstr : "none",
                    kv_quote(e, fj && fj->err_type ? fj->err_type
                                                   : (first ? EXCEPTION_GROUP : TIMEOUT_ERROR)));
    }
    /* An owner still in its block was cancelled too (S1: its body counts as cancelled). */
    if (g->n.cancel_called && !g->closed)
        mark_caught(e, &g->n, true);
    else if (o == OUT_CANCELLED)
        mark_caught(e, &g->n, false);

    for (struct listener *w = g->waiters; w; w = w->next) {
        struct out_msg *m = reply(e, &w->peer, w->request_id, CORRAL_OK, NULL);
        m->tree = tree_build(e, &g->n, true);
    }
    listeners_free(&g->waiters);
    emit_event(e, &g->n, EV_GROUP_ENDED);

    struct group *pg = as_group(g->n.parent);
    if (pg)
        child_ended(e, pg, &g->n);
    else if (g->n.parent)
        job_maybe_end(e, as_job(g->n.parent));
    else
        retain_root(e, g); /* purged once --retention has passed */
}

void
group_maybe_end(struct engine *e, struct group *g)
{
    if (g->n.state == ST_ENDED || g->busy || g->unended > 0)
        return;
    if (g->closed || g->n.cancel_called)
        group_end(e, g);
}

/* ------------------------------------------------------------------ client requests */

static struct group *
group_new(struct engine *e, struct node *parent)
{
    struct group *g = ecalloc(1, sizeof(*g));
    node_init(e, &g->n, NODE_GROUP, e->next_id);
    g->n.parent = parent;
    g->n.created_ms = e->now;
    return g;
}

uint32_t
depth_of(const struct node *n)
{
    uint32_t d = 0;
    for (; n; n = n->parent)
        d++;
    return d;
}

static void
on_open_group(struct engine *e, const struct peer *from, const struct cmd *c)
{
    struct node *parent = NULL;
    if (*c->parent_group && *c->parent_job) {
        reply(e, from, c->request_id, CORRAL_EBADREQUEST,
              "open_group: give parent_group or parent_job, not both");
        return;
    }
    if (*c->parent_group) {
        parent = engine_lookup(e, c->parent_group, NODE_GROUP);
        if (parent == NULL)
            goto not_found;
        if (parent->state == ST_ENDED) {
            reply_fmt(e, from, c->request_id, CORRAL_ENOTACTIVE,
                      "group %s is not active: it has ended", parent->idstr);
            return;
        }
    } else if (*c->parent_job) {
        parent = engine_lookup(e, c->parent_job, NODE_JOB);
        if (parent == NULL)
            goto not_found;
        if (parent->state != ST_RUNNING && parent->state != ST_CANCELLING) {
            reply_fmt(e, from, c->request_id,
                      parent->state == ST_ENDED ? CORRAL_ENOTACTIVE : CORRAL_EWRONGSTATE,
                      "job %s is not running, so it cannot open a group", parent->idstr);
            return;
        }
    }
    if (depth_of(parent) >= MAX_DEPTH) {
        reply_fmt(e, from, c->request_id, CORRAL_EBADREQUEST, "groups nest at most %d deep",
                  MAX_DEPTH);
        return;
    }
    struct group *g = group_new(e, parent);
    g->depth = depth_of(parent);
    if (parent && parent->type == NODE_GROUP) {
        struct group *pg = as_group(parent);
        eappend((void ***)&pg->children, &pg->nchildren, &pg->capchildren, g);
        pg->unended++;
    } else if (parent) {
        struct job *pj = as_job(parent);
        eappend((void ***)&pj->groups, &pj->ngroups, &pj->capgroups, g);
    }
    node_set_state(e, &g->n, ST_OPEN);
    scope_init(e, &g->n, &c->scope);
    bool cancelled = parent && parent->cancel_called && !g->n.shield;
    if (cancelled) {
        /* Level-triggered (S5): a scope opened inside a cancelled one starts cancelled. */
        enum cancel_source src = SRC_PARENT;
        if (parent->type == NODE_GROUP && parent->cancel_source == SRC_SIBLING_FAILED)
            src = SRC_SIBLING_FAILED;
        cancel_node(e, &g->n, src, parent->cancel_reason);
    }
    struct out_msg *m = reply(e, from, c->request_id, CORRAL_OK, NULL);
    m->id = g->n.idstr;
    m->cancelled = cancelled;
    return;
not_found:
    reply_fmt(e, from, c->request_id, CORRAL_ENOTFOUND, "no such %s: '%s'",
              *c->parent_group ? "group" : "job",
              *c->parent_group ? c->parent_group : c->parent_job);
}

/* Finds the group a request names, replying NOT_FOUND (and returning NULL) if none. */
static struct group *
find_group(struct engine *e, const struct peer *from, const struct cmd *c)
{
    struct group *g = as_group(engine_lookup(e, c->id, NODE_GROUP));
    if (g == NULL)
        reply_fmt(e, from, c->request_id, CORRAL_ENOTFOUND, "no such group: '%s'", c->id);
    return g;
}

/* The key of an idempotency key in e->idem: the group's id string, a newline, the key
 * (an id holds no newline, so the split is unambiguous). Owned by the caller (free). */
char *
idem_map_key(uint64_t group_id, const char *key)
{
    size_t len = strlen(key) + MODEL_ID_MAX + 2;
    char *k = malloc(len);
    if (k == NULL)
        oom();
    snprintf(k, len, "g%" PRIu64 "\n%s", group_id, key);
    return k;
}

/* S11: a repeat of a submission with the same idempotency key gets the original job. */
static bool
submit_duplicate(struct engine *e, const struct peer *from, const struct cmd *c,
                 const struct group *g)
{
    if (c->idem_key == NULL || !*c->idem_key)
        return false;
    char *k = idem_map_key(g->n.id, c->idem_key);
    struct job *j = strmap_get(&e->idem, k);
    free(k);
    if (j == NULL)
        return false;
    struct out_msg *m = reply(e, from, c->request_id, CORRAL_OK, NULL);
    m->id = j->n.idstr;
    m->duplicate = true;
    m->cancelled = j->n.cancel_called;
    return true;
}

/* S11: a submission that would queue a job beyond the bounds gets BUSY, with a hint. */
static bool
submit_busy(struct engine *e, const struct peer *from, const struct cmd *c)
{
    struct kind *k = kind_get(e, c->kind);
    bool all = e->cfg.max_queued && e->stats.queued >= e->cfg.max_queued;
    bool one = e->cfg.max_queued_per_kind && k->nqueued >= e->cfg.max_queued_per_kind;
    if (!all && !one)
        return false;
    struct out_msg *m =
        all ? reply_fmt(e, from, c->request_id, CORRAL_EBUSY,
                        "the broker is busy: %" PRIu64 " jobs are queued (the bound is %" PRIu64
                        ", --max-queued); try again later",
                        e->stats.queued, e->cfg.max_queued)
            : reply_fmt(e, from, c->request_id, CORRAL_EBUSY,
                        "the broker is busy: %zu jobs of kind '%s' are queued (the bound is "
                        "%" PRIu64 ", --max-queued-per-kind); try again later",
                        k->nqueued, k->name, e->cfg.max_queued_per_kind);
    m->retry_after_ms = BUSY_RETRY_AFTER_MS;
    return true;
}

static void
on_submit(struct engine *e, const struct peer *from, const struct cmd *c)
{
    struct group *g = find_group(e, from, c);
    if (g == NULL)
        return;
    if (c->idem_key != NULL && strlen(c->idem_key) > IDEM_KEY_MAX) {
        reply_fmt(e, from, c->request_id, CORRAL_EBADREQUEST,
                  "idempotency key of %zu bytes exceeds the limit of %d bytes", strlen(c->idem_key),
                  IDEM_KEY_MAX);
        return;
    }
    if (submit_duplicate(e, from, c, g))
        return;
    if (g->n.state == ST_ENDED) {
        reply_fmt(e, from, c->request_id, CORRAL_ENOTACTIVE, "group %s is not active: it has ended",
                  g->n.idstr);
        return;
    }
    if (c->data.len > e->cfg.max_payload) {
        reply_fmt(e, from, c->request_id, CORRAL_ETOOLARGE,
                  "payload of %zu bytes exceeds the limit of %" PRIu64 " bytes", c->data.len,
                  e->cfg.max_payload);
        return;
    }
    bool cancelled = g->n.cancel_called && !(c->scope.shield);
    if (!cancelled && submit_busy(e, from, c))
        return;
    struct job *j = ecalloc(1, sizeof(*j));
    if (!job_limiters_init(e, j, c->limiters, c->nlimiters, from, c->request_id)) {
        free(j);
        return;
    }
    node_init(e, &j->n, NODE_JOB, e->next_id);
    j->n.parent = &g->n;
    j->n.created_ms = e->now;
    j->kind = kind_get(e, c->kind);
    j->payload = ememdup(c->data.data, c->data.len);
    j->payload_len = c->data.len;
    j->wait_started = c->wait_started;
    j->max_attempts = c->max_attempts ? c->max_attempts : DEFAULT_MAX_ATTEMPTS;
    j->backoff_ms = c->backoff_ms ? c->backoff_ms : DEFAULT_BACKOFF_MS;
    eappend((void ***)&g->children, &g->nchildren, &g->capchildren, j);
    g->unended++;
    e->stats.jobs_submitted++;
    scope_init(e, &j->n, &c->scope);
    if (c->idem_key != NULL && *c->idem_key) {
        j->idem_key = estrdup(c->idem_key);
        char *k = idem_map_key(g->n.id, c->idem_key);
        if (!strmap_put(&e->idem, k, j))
            oom();
        free(k);
    }
    if (cancelled) {
        /* D1 / S5: recorded, ended CANCELLED, never queued nor dispatched. A job is
         * QUEUED exactly while it is in its kind's queue, so it goes straight to ENDED. */
        j->n.cancel_called = true;
        j->n.cancel_source =
            g->n.cancel_source == SRC_SIBLING_FAILED ? SRC_SIBLING_FAILED : SRC_PARENT;
        j->n.cancel_reason = g->n.cancel_reason ? estrdup(g->n.cancel_reason) : NULL;
        job_end(e, j, OUT_CANCELLED);
    } else {
        node_set_state(e, &j->n, ST_QUEUED);
        kind_enqueue(e, j);
    }
    if (c->wait_started && !cancelled) {
        /* S9: the reply waits for started(), or says how the job ended before it. */
        j->starter = ecalloc(1, sizeof(*j->starter));
        j->starter->peer = *from;
        j->starter->request_id = c->request_id;
        return;
    }
    struct out_msg *m =
        c->wait_started ? reply_fmt(e, from, c->request_id, CORRAL_ESTARTCANCELLED,
                                    "job %s was cancelled before signalling readiness", j->n.idstr)
                        : reply(e, from, c->request_id, CORRAL_OK, NULL);
    m->id = j->n.idstr;
    m->cancelled = cancelled;
}

static void
on_close_group(struct engine *e, const struct peer *from, const struct cmd *c)
{
    struct group *g = find_group(e, from, c);
    if (g == NULL)
        return;
    if (!g->closed && g->n.state != ST_ENDED) {
        g->closed = true;
        if (g->n.state == ST_OPEN)
            node_set_state(e, &g->n, ST_CLOSED);
        mark_dirty(e, &g->n);
        group_maybe_end(e, g);
    }
    reply(e, from, c->request_id, CORRAL_OK, NULL);
}

static void
on_cancel(struct engine *e, const struct peer *from, const struct cmd *c)
{
    enum node_type type = c->type == CMD_CANCEL_GROUP ? NODE_GROUP : NODE_JOB;
    struct node *n = engine_lookup(e, c->id, type);
    if (n == NULL) {
        reply_fmt(e, from, c->request_id, CORRAL_ENOTFOUND, "no such %s: '%s'",
                  type == NODE_GROUP ? "group" : "job", c->id);
        return;
    }
    cancel_node(e, n, SRC_EXPLICIT, c->reason);
    reply(e, from, c->request_id, CORRAL_OK, NULL);
}

static void
add_listener(struct listener **list, const struct peer *from, uint64_t request_id,
             uint32_t event_mask)
{
    struct listener *l = ecalloc(1, sizeof(*l));
    l->peer = *from;
    l->request_id = request_id;
    l->event_mask = event_mask;
    l->next = *list;
    *list = l;
}

static void
on_tree_wait_subscribe(struct engine *e, const struct peer *from, const struct cmd *c)
{
    struct group *g = find_group(e, from, c);
    if (g == NULL)
        return;
    bool ended = g->n.state == ST_ENDED;
    if (c->type == CMD_GET_TREE || (c->type == CMD_WAIT_GROUP && ended)) {
        reply(e, from, c->request_id, CORRAL_OK, NULL)->tree = tree_build(e, &g->n, true);
    } else if (c->type == CMD_WAIT_GROUP) {
        add_listener(&g->waiters, from, c->request_id, 0);
    } else {
        reply(e, from, c->request_id, CORRAL_OK, NULL);
        if (ended) {
            /* The subscription's one and last event. */
            struct out_msg *m = outbox_msg(e->out, OUTMSG_EVENT, from);
            if (m == NULL)
                oom();
            m->request_id = c->request_id;
            m->event = EV_GROUP_ENDED;
            m->subscription = g->n.idstr;
            m->node = tree_build(e, &g->n, false);
        } else {
            add_listener(&g->subs, from, c->request_id, c->event_mask);
            e->nsubs++;
        }
    }
}

void
engine_handle(struct engine *e, const struct peer *from, const struct cmd *c, uint64_t now_ms,
              struct outbox *out)
{
    e->now = now_ms;
    e->out = out;
    switch (c->type) {
    case CMD_OPEN_GROUP:
        on_open_group(e, from, c);
        break;
    case CMD_SUBMIT:
        on_submit(e, from, c);
        break;
    case CMD_CLOSE_GROUP:
        on_close_group(e, from, c);
        break;
    case CMD_CANCEL_GROUP:
    case CMD_CANCEL_JOB:
        on_cancel(e, from, c);
        break;
    case CMD_GET_TREE:
    case CMD_WAIT_GROUP:
    case CMD_SUBSCRIBE:
        on_tree_wait_subscribe(e, from, c);
        break;
    case CMD_SET_LIMITER:
    case CMD_DELETE_LIMITER:
    case CMD_GET_LIMITERS:
        engine_handle_limiter(e, from, c);
        break;
    case CMD_PURGE_GROUP:
        on_purge_group(e, from, c);
        break;
    default:
        engine_handle_worker(e, from, c);
        break;
    }
}

/* ------------------------------------------------------------------ life cycle */

int
engine_new(struct engine **out, const struct engine_config *cfg)
{
    struct engine *e = calloc(1, sizeof(*e));
    if (e == NULL)
        return CORRAL_ENOMEM;
    e->cfg = *cfg;
    e->next_id = 1;
    timer_heap_init(&e->timers);
    *out = e;
    return CORRAL_OK;
}

void
node_free(struct node *n)
{
    free(n->cancel_reason);
    struct group *g = as_group(n);
    if (g) {
        free(g->children);
        free(g->failures);
        listeners_free(&g->waiters);
        listeners_free(&g->subs);
    } else {
        struct job *j = as_job(n);
        free(j->payload);
        free(j->result);
        free(j->err_type);
        free(j->err_message);
        free(j->err_details);
        free(j->groups);
        free(j->starter);
        for (size_t i = 0; i < j->nlimiters; i++)
            free(j->limiter_names[i]);
        free(j->limiter_names);
        free(j->limiters);
        free(j->idem_key);
    }
    free(n);
}

void
engine_free(struct engine **p)
{
    struct engine *e = p ? *p : NULL;
    if (e == NULL)
        return;
    for (size_t i = 0; i < e->map.cap; i++)
        if (e->map.keys[i])
            node_free(e->map.vals[i]);
    free(e->map.keys);
    free(e->map.vals);
    workers_free(e);
    limiters_free(e);
    purge_free(e);
    strmap_fini(&e->idem);
    while (e->kinds) {
        struct kind *k = e->kinds;
        e->kinds = k->next;
        free(k->name);
        free(k);
    }
    free(e->dirty);
    free(e->links);
    free(e->orphans);
    timer_heap_fini(&e->timers);
    free(e);
    *p = NULL;
}

const struct engine_stats *
engine_stats(const struct engine *e)
{
    return &e->stats;
}
