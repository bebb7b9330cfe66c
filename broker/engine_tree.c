/* engine_tree.c - what the engine shows: trees of groups and jobs with their outcomes,
 * errors and nested exception groups (S3), and events to subscribers. Everything built
 * here lives in the turn's outbox arena and borrows strings from the nodes. */
#include "engine_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *
turn_alloc(struct engine *e, size_t size)
{
    void *p = arena_alloc(&e->out->arena, size);
    if (p == NULL)
        engine_oom();
    return p;
}

static void fill_error(struct engine *e, struct node *n, struct terr *err);

/* A group's exception group: every child error in the order they happened, a child
 * group's failure nested as its own exception group (never flattened). */
static void
fill_group_error(struct engine *e, struct group *g, struct terr *err)
{
    /* Like Python's ExceptionGroup, the message does not count the sub-exceptions: a
     * printer adds "(N sub-exceptions)" as str(ExceptionGroup) does. */
    char buf[64];
    snprintf(buf, sizeof(buf), "unhandled errors in group %s", g->n.idstr);
    err->type = EXCEPTION_GROUP;
    err->message = arena_strdup(&e->out->arena, buf);
    if (err->message == NULL)
        engine_oom();
    err->job = "";
    err->group = g->n.idstr;
    err->exceptions = turn_alloc(e, g->nfailures * sizeof(*err->exceptions) + 1);
    err->nexceptions = g->nfailures;
    for (size_t i = 0; i < g->nfailures; i++)
        fill_error(e, g->failures[i], &err->exceptions[i]);
}

static void
fill_error(struct engine *e, struct node *n, struct terr *err)
{
    struct job *j = as_job(n);
    struct group *eg = j ? job_error_group(j) : as_group(n);
    if (eg && j == NULL && eg->nfailures == 0) {
        /* S6: a fail_after group whose deadline passed with no real failure: a bare
         * TimeoutError, not an exception group. */
        err->type = TIMEOUT_ERROR;
        err->message = DEADLINE_EXCEEDED;
        err->job = "";
        err->group = n->idstr;
        return;
    }
    if (eg) {
        fill_group_error(e, eg, err);
        return;
    }
    err->type = j->err_type ? j->err_type : "Error";
    err->message = j->err_message ? j->err_message : "";
    err->job = n->idstr;
    err->group = "";
    err->details = (struct bytes){j->err_details, j->err_details_len};
}

static void
fill_node(struct engine *e, struct node *n, struct tnode *t, bool deep)
{
    t->type = n->type;
    t->id = n->idstr;
    t->state = n->state;
    t->outcome = n->outcome;
    t->cancel_called = n->cancel_called;
    t->cancelled_caught = n->cancelled_caught;
    t->cancel_source = n->cancel_source;
    t->cancel_reason = n->cancel_reason ? n->cancel_reason : "";
    t->parent = n->parent ? n->parent->idstr : "";
    t->kind = "";
    t->deadline_ms = n->deadline_ms;
    t->on_deadline = n->on_deadline;
    t->shield = n->shield;
    t->effective_deadline_ms = effective_deadline(n);
    if (n->outcome == OUT_FAILED) {
        t->error = turn_alloc(e, sizeof(*t->error));
        fill_error(e, n, t->error);
    }
    struct job *j = as_job(n);
    if (j) {
        t->kind = j->kind->name;
        t->attempt = j->attempt;
        t->max_attempts = j->max_attempts;
        t->next_attempt_ms = j->next_attempt_ms;
        t->started = j->started;
        t->limiters = (const char *const *)j->limiter_names;
        t->nlimiters = j->nlimiters;
        t->result = (struct bytes){j->result, j->result_len};
        if (deep && j->ngroups) {
            t->groups = turn_alloc(e, j->ngroups * sizeof(*t->groups));
            t->ngroups = j->ngroups;
            for (size_t i = 0; i < j->ngroups; i++)
                fill_node(e, &j->groups[i]->n, &t->groups[i], deep);
        }
        return;
    }
    struct group *g = as_group(n);
    t->closed = g->closed;
    if (deep && g->nchildren) {
        t->children = turn_alloc(e, g->nchildren * sizeof(*t->children));
        t->nchildren = g->nchildren;
        for (size_t i = 0; i < g->nchildren; i++)
            fill_node(e, g->children[i], &t->children[i], deep);
    }
}

struct tnode *
tree_build(struct engine *e, struct node *n, bool deep)
{
    struct tnode *t = turn_alloc(e, sizeof(*t));
    fill_node(e, n, t, deep);
    return t;
}

void
listeners_free(struct listener **l)
{
    while (*l) {
        struct listener *next = (*l)->next;
        free(*l);
        *l = next;
    }
}

/* Tells every subscriber of n or of one of its ancestors what happened to n. A group's
 * own GROUP_ENDED is the last event of its subscriptions, which end with it. */
void
emit_event(struct engine *e, struct node *n, enum event_type type)
{
    if (e->nsubs == 0)
        return;
    struct tnode *shallow = NULL;
    for (struct node *a = n; a; a = a->parent) {
        struct group *g = as_group(a);
        if (g == NULL || g->subs == NULL)
            continue;
        /* A subscription's own group ending is its last event, whatever its filter. */
        bool last = a == n && type == EV_GROUP_ENDED;
        for (struct listener *s = g->subs; s; s = s->next) {
            if (!last && s->event_mask && !(s->event_mask & (1u << type)))
                continue;
            if (shallow == NULL)
                shallow = tree_build(e, n, false);
            struct out_msg *m = outbox_msg(e->out, OUTMSG_EVENT, &s->peer);
            if (m == NULL)
                engine_oom();
            m->request_id = s->request_id;
            m->event = type;
            m->subscription = g->n.idstr;
            m->node = shallow;
        }
        if (last) {
            for (struct listener *s = g->subs; s; s = s->next)
                e->nsubs--;
            listeners_free(&g->subs);
        }
    }
}

static bool
same_peer(const struct peer *a, const struct peer *b)
{
    return a->side == b->side && a->len == b->len && memcmp(a->id, b->id, a->len) == 0;
}

/* Drops every listener of the given peer from one list; returns how many. */
static size_t
drop_peer(struct listener **l, const struct peer *p)
{
    size_t n = 0;
    while (*l) {
        if (same_peer(&(*l)->peer, p)) {
            struct listener *gone = *l;
            *l = gone->next;
            free(gone);
            n++;
        } else {
            l = &(*l)->next;
        }
    }
    return n;
}

void
engine_peer_gone(struct engine *e, const struct peer *p)
{
    if (p->side != SIDE_CLIENT)
        return;
    for (size_t i = 0; i < e->map.cap; i++) {
        struct node *n = e->map.keys[i] ? e->map.vals[i] : NULL;
        struct group *g = as_group(n);
        struct job *j = as_job(n);
        if (g && (g->waiters || g->subs)) {
            drop_peer(&g->waiters, p);
            e->nsubs -= drop_peer(&g->subs, p);
        } else if (j && j->starter) {
            /* D2: a caller that stops waiting does not cancel the job. */
            drop_peer(&j->starter, p);
        }
    }
}

bool
engine_subscription_overflow(struct engine *e, const struct peer *p, const char *group,
                             uint64_t request_id)
{
    struct group *g = as_group(engine_lookup(e, group, NODE_GROUP));
    if (g == NULL)
        return false;
    for (struct listener **l = &g->subs; *l; l = &(*l)->next) {
        if ((*l)->request_id == request_id && same_peer(&(*l)->peer, p)) {
            struct listener *gone = *l;
            *l = gone->next;
            free(gone);
            e->nsubs--;
            return true;
        }
    }
    return false;
}
