/* engine_rows.c - the engine and the store's rows: engine_flush turns every node changed
 * in a turn into a row, and recovery rebuilds the tree from the rows at start (S12):
 * queued jobs are queued again, running ones wait for their worker's Ready within the
 * reconnect window. */
#include "engine_int.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ rows */

/* j's limiter names joined by newlines, in out's arena ("" when none). */
static const char *
join_limiters(struct outbox *out, const struct job *j)
{
    if (j->nlimiters == 0)
        return "";
    size_t len = 0;
    for (size_t i = 0; i < j->nlimiters; i++)
        len += strlen(j->limiter_names[i]) + 1;
    char *s = arena_alloc(&out->arena, len);
    if (s == NULL)
        engine_oom();
    char *p = s;
    for (size_t i = 0; i < j->nlimiters; i++) {
        size_t n = strlen(j->limiter_names[i]);
        memcpy(p, j->limiter_names[i], n);
        p += n;
        *p++ = '\n';
    }
    p[-1] = '\0';
    return s;
}

void
engine_flush(struct engine *e, struct outbox *out)
{
    limiters_flush(e, out);
    for (size_t i = 0; i < e->ndirty; i++) {
        struct node *n = e->dirty[i];
        n->dirty = false;
        struct job *j = as_job(n);
        bool ok;
        if (j) {
            struct job_row r = {
                .id = n->id,
                .group_id = n->parent->id,
                .kind = j->kind->name,
                .payload = {j->payload, j->payload_len},
                .state = n->state,
                .outcome = n->outcome,
                .attempt = j->attempt,
                .result = {j->result, j->result_len},
                .err_type = j->err_type,
                .err_message = j->err_message,
                .err_details = {j->err_details, j->err_details_len},
                .cancel_called = n->cancel_called,
                .cancelled_caught = n->cancelled_caught,
                .cancel_source = n->cancel_source,
                .cancel_reason = n->cancel_reason,
                .failed_seq = n->failed_seq,
                .created_ms = n->created_ms,
                .ended_ms = n->ended_ms,
                .deadline_ms = n->deadline_ms,
                .on_deadline = n->on_deadline,
                .shield = n->shield,
                .wait_started = j->wait_started,
                .max_attempts = j->max_attempts,
                .backoff_ms = j->backoff_ms,
                .started = j->started,
                .next_attempt_ms = j->next_attempt_ms,
                .limiters = n->persisted ? NULL : join_limiters(out, j),
                .idem_key = j->idem_key,
                .holds_tokens = j->holding,
                .is_new = !n->persisted,
            };
            ok = outbox_job_row(out, &r);
        } else {
            struct group *g = as_group(n);
            struct group_row r = {
                .id = n->id,
                .parent_type = !n->parent                    ? PARENT_NONE
                               : n->parent->type == NODE_JOB ? PARENT_JOB
                                                             : PARENT_GROUP,
                .parent_id = n->parent ? n->parent->id : 0,
                .state = n->state,
                .outcome = n->outcome,
                .closed = g->closed,
                .cancel_called = n->cancel_called,
                .cancelled_caught = n->cancelled_caught,
                .cancel_source = n->cancel_source,
                .cancel_reason = n->cancel_reason,
                .failed_seq = n->failed_seq,
                .created_ms = n->created_ms,
                .ended_ms = n->ended_ms,
                .deadline_ms = n->deadline_ms,
                .on_deadline = n->on_deadline,
                .shield = n->shield,
                .is_new = !n->persisted,
            };
            ok = outbox_group_row(out, &r);
        }
        if (!ok)
            engine_oom();
        n->persisted = true;
    }
    e->ndirty = 0;
}

/* ------------------------------------------------------------------ recovery */

static void
restore_common(struct engine *e, struct node *n, enum node_type type, uint64_t id,
               enum node_state state, enum outcome outcome, bool cancel_called,
               bool cancelled_caught, enum cancel_source src, const char *reason,
               uint64_t failed_seq, uint64_t created, uint64_t ended)
{
    node_init(e, n, type, id);
    n->state = state;
    n->outcome = outcome;
    n->cancel_called = cancel_called;
    n->cancelled_caught = cancelled_caught;
    n->cancel_source = src;
    n->cancel_reason = reason ? estrdup(reason) : NULL;
    n->failed_seq = failed_seq;
    if (failed_seq > e->failseq)
        e->failseq = failed_seq;
    n->created_ms = created;
    n->ended_ms = ended;
    n->persisted = true;
}

/* Restores a node's cancel scope. Its deadline timer is armed even if the time has
 * passed: a deadline that expired while corrald was down fires on the first tick. */
static void
restore_scope(struct engine *e, struct node *n, uint64_t deadline_ms, enum on_deadline on,
              bool shield)
{
    n->deadline_ms = deadline_ms;
    n->on_deadline = on;
    n->shield = shield;
    arm_deadline(e, n);
}

/* Remembers where a restored node hangs until engine_restore_finish links it. */
static void
park(struct engine *e, struct node *n, enum parent_type type, uint64_t parent_id)
{
    if (e->nlinks == e->caplinks) {
        e->caplinks = e->caplinks ? e->caplinks * 2 : 1024;
        e->links = erealloc(e->links, e->caplinks * sizeof(*e->links));
    }
    e->links[e->nlinks++] = (struct pending_link){n, type, parent_id};
}

int
engine_restore_group(struct engine *e, const struct group_row *r)
{
    if (r->id == 0 || engine_node(e, r->id))
        return CORRAL_EINTERNAL;
    struct group *g = ecalloc(1, sizeof(*g));
    restore_common(e, &g->n, NODE_GROUP, r->id, r->state, r->outcome, r->cancel_called,
                   r->cancelled_caught, r->cancel_source, r->cancel_reason, r->failed_seq,
                   r->created_ms, r->ended_ms);
    g->closed = r->closed;
    restore_scope(e, &g->n, r->deadline_ms, r->on_deadline, r->shield);
    park(e, &g->n, r->parent_type, r->parent_id);
    return CORRAL_OK;
}

/* Gives a restored job its limiters (S10): a job that has not ended uses them, one that
 * was running with tokens holds them again (its lease survives the restart, S12), and
 * a waiting one counts as waiting once it is queued again. */
static int
restore_limiters(struct engine *e, struct job *j, const struct job_row *r)
{
    size_t n = 1;
    for (const char *p = r->limiters; *p; p++)
        n += *p == '\n';
    j->limiter_names = ecalloc(n, sizeof(*j->limiter_names));
    char *copy = estrdup(r->limiters);
    for (char *save = NULL, *t = strtok_r(copy, "\n", &save); t && j->nlimiters < n;
         t = strtok_r(NULL, "\n", &save))
        j->limiter_names[j->nlimiters++] = estrdup(t);
    free(copy);
    /* An ended job keeps only the names, for trees: its limiters may be deleted since. */
    if (j->n.state == ST_ENDED)
        return CORRAL_OK;
    if (job_limiters_resolve(e, j) != NULL)
        return CORRAL_EINTERNAL; /* a limiter in use was deleted: an inconsistent database */
    if (r->holds_tokens && (j->n.state == ST_RUNNING || j->n.state == ST_CANCELLING))
        tokens_acquire(e, j);
    return CORRAL_OK;
}

int
engine_restore_job(struct engine *e, const struct job_row *r)
{
    if (r->id == 0 || engine_node(e, r->id))
        return CORRAL_EINTERNAL;
    struct job *j = ecalloc(1, sizeof(*j));
    restore_common(e, &j->n, NODE_JOB, r->id, r->state, r->outcome, r->cancel_called,
                   r->cancelled_caught, r->cancel_source, r->cancel_reason, r->failed_seq,
                   r->created_ms, r->ended_ms);
    j->kind = kind_get(e, r->kind ? r->kind : "");
    j->payload = ememdup(r->payload.data, r->payload.len);
    j->payload_len = r->payload.len;
    j->attempt = r->attempt;
    j->result = ememdup(r->result.data, r->result.len);
    j->result_len = r->result.len;
    j->err_type = r->err_type ? estrdup(r->err_type) : NULL;
    j->err_message = r->err_message ? estrdup(r->err_message) : NULL;
    j->err_details = ememdup(r->err_details.data, r->err_details.len);
    j->err_details_len = r->err_details.len;
    restore_scope(e, &j->n, r->deadline_ms, r->on_deadline, r->shield);
    j->wait_started = r->wait_started;
    j->max_attempts = r->max_attempts ? r->max_attempts : DEFAULT_MAX_ATTEMPTS;
    j->backoff_ms = r->backoff_ms ? r->backoff_ms : DEFAULT_BACKOFF_MS;
    j->started = r->started;
    j->next_attempt_ms = r->next_attempt_ms;
    if (j->n.state == ST_RETRY_WAIT)
        arm_retry(e, j); /* S13: the retry schedule survives a restart */
    if (r->idem_key) {
        j->idem_key = estrdup(r->idem_key);
        char *k = idem_map_key(r->group_id, r->idem_key);
        if (!strmap_put(&e->idem, k, j))
            engine_oom();
        free(k);
    }
    if (r->limiters && *r->limiters && restore_limiters(e, j, r) != CORRAL_OK)
        return CORRAL_EINTERNAL;
    park(e, &j->n, PARENT_GROUP, r->group_id);
    return CORRAL_OK;
}

static int
by_node_id(const void *a, const void *b)
{
    const struct pending_link *x = a, *y = b;
    return x->n->id < y->n->id ? -1 : x->n->id > y->n->id;
}

static int
by_failed_seq(const void *a, const void *b)
{
    const struct node *x = *(struct node *const *)a, *y = *(struct node *const *)b;
    return x->failed_seq < y->failed_seq ? -1 : x->failed_seq > y->failed_seq;
}

/* Links a restored node under its parent; CORRAL_EINTERNAL if the parent is missing or
 * of the wrong type (an inconsistent database). */
static int
link_restored(struct engine *e, const struct pending_link *l)
{
    struct node *n = l->n;
    if (l->type == PARENT_NONE)
        return n->type == NODE_GROUP ? CORRAL_OK : CORRAL_EINTERNAL;
    struct node *p = engine_node(e, l->parent_id);
    if (p == NULL || (l->type == PARENT_GROUP) != (p->type == NODE_GROUP))
        return CORRAL_EINTERNAL;
    n->parent = p;
    if (p->type == NODE_JOB) {
        struct job *pj = as_job(p);
        eappend((void ***)&pj->groups, &pj->ngroups, &pj->capgroups, n);
        return CORRAL_OK;
    }
    struct group *pg = as_group(p);
    eappend((void ***)&pg->children, &pg->nchildren, &pg->capchildren, n);
    if (n->state != ST_ENDED)
        pg->unended++;
    if (n->failed_seq)
        eappend((void ***)&pg->failures, &pg->nfailures, &pg->capfailures, n);
    return CORRAL_OK;
}

int
engine_restore_finish(struct engine *e, uint64_t now_ms, struct outbox *out)
{
    e->now = now_ms;
    e->out = out;
    /* Children in id order are children in submission order. */
    if (e->nlinks > 1)
        qsort(e->links, e->nlinks, sizeof(*e->links), by_node_id);
    int rc = CORRAL_OK;
    for (size_t i = 0; i < e->nlinks && rc == CORRAL_OK; i++)
        rc = link_restored(e, &e->links[i]);
    struct group **ended_roots = NULL;
    size_t nended = 0, capended = 0;
    for (size_t i = 0; i < e->nlinks && rc == CORRAL_OK; i++) {
        struct group *g = as_group(e->links[i].n);
        if (g) {
            if (g->n.parent == NULL && g->n.state == ST_ENDED)
                eappend((void ***)&ended_roots, &nended, &capended, g);
            g->depth = depth_of(g->n.parent);
            if (g->nfailures > 1)
                qsort(g->failures, g->nfailures, sizeof(*g->failures), by_failed_seq);
            continue;
        }
        struct job *j = as_job(e->links[i].n);
        if (j->n.state == ST_QUEUED || j->n.state == ST_WAITING)
            kind_enqueue(e, j);
        if (j->n.state == ST_WAITING)
            for (size_t k = 0; k < j->nlimiters; k++)
                j->limiters[k]->waiting++;
        else if ((j->n.state == ST_RUNNING || j->n.state == ST_CANCELLING) &&
                 j->n.outcome == OUT_NONE)
            /* No worker until a Ready reclaims it within the window. */
            eappend((void ***)&e->orphans, &e->norphans, &e->caporphans, j);
    }
    free(e->links);
    e->links = NULL;
    e->nlinks = e->caplinks = 0;
    if (rc == CORRAL_OK)
        retain_restored(e, ended_roots, nended);
    free(ended_roots);
    if (rc != CORRAL_OK)
        return rc;
    e->stats.reclaimable = e->norphans;
    if (e->norphans) {
        struct timer t = {now_ms + e->cfg.heartbeat_timeout_ms, 0, TIMER_RECLAIM_END, 0};
        if (!timer_push(&e->timers, &t))
            engine_oom();
    }
    e->dispatch_needed = true;
    return CORRAL_OK;
}
