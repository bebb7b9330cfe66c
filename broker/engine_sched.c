/* engine_sched.c - workers and the jobs they run: registration and reclaiming after a
 * reconnect, heartbeats and lost workers (S13), worker reports with the attempt rule,
 * CANCEL repeated until acknowledged (S4), and dispatch, oldest queued first, never
 * beyond a worker's stated concurrency, with limiter tokens taken at dispatch (D7). */
#include "engine_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ kinds and queues */

struct kind *
kind_get(struct engine *e, const char *name)
{
    for (struct kind *k = e->kinds; k; k = k->next)
        if (strcmp(k->name, name) == 0)
            return k;
    struct kind *k = ecalloc(1, sizeof(*k));
    k->name = estrdup(name);
    k->next = e->kinds;
    e->kinds = k;
    return k;
}

/* Queues j in id order: new submissions go to the tail at once; a job queued again
 * (its worker was lost) goes back among the older ones. */
void
kind_enqueue(struct engine *e, struct job *j)
{
    struct kind *k = j->kind;
    struct job *at = NULL; /* insert before this one; NULL: at the tail */
    if (k->tail && k->tail->n.id > j->n.id)
        for (at = k->head; at->n.id < j->n.id; at = at->qnext)
            ;
    j->qnext = at;
    j->qprev = at ? at->qprev : k->tail;
    if (j->qprev)
        j->qprev->qnext = j;
    else
        k->head = j;
    if (at)
        at->qprev = j;
    else
        k->tail = j;
    k->nqueued++;
    e->stats.queued++;
    e->dispatch_needed = true;
}

void
kind_dequeue(struct engine *e, struct job *j)
{
    struct kind *k = j->kind;
    if (j->qprev)
        j->qprev->qnext = j->qnext;
    else
        k->head = j->qnext;
    if (j->qnext)
        j->qnext->qprev = j->qprev;
    else
        k->tail = j->qprev;
    j->qprev = j->qnext = NULL;
    k->nqueued--;
    e->stats.queued--;
}

/* ------------------------------------------------------------------ workers */

struct worker *
worker_find(struct engine *e, const struct peer *p)
{
    for (struct worker *w = e->workers; w; w = w->next)
        if (w->peer.len == p->len && memcmp(w->peer.id, p->id, p->len) == 0)
            return w;
    return NULL;
}

static void
worker_assign(struct engine *e, struct worker *w, struct job *j)
{
    j->worker = w;
    j->worker_slot = w->njobs;
    eappend((void ***)&w->jobs, &w->njobs, &w->capjobs, j);
    e->stats.running++;
}

void
worker_release(struct engine *e, struct job *j)
{
    struct worker *w = j->worker;
    struct job *last = w->jobs[--w->njobs];
    w->jobs[j->worker_slot] = last;
    last->worker_slot = j->worker_slot;
    j->worker = NULL;
    e->stats.running--;
    e->dispatch_needed = true;
}

static void
arm_cancel_resend(struct engine *e, struct job *j)
{
    struct timer t = {e->now + e->cfg.cancel_resend_ms, j->n.id, TIMER_CANCEL_RESEND, j->attempt};
    if (!timer_push(&e->timers, &t))
        engine_oom();
}

void
send_cancel(struct engine *e, struct job *j)
{
    /* Without a worker there is nobody to tell: an orphan is told when a Ready reclaims
     * it, a job whose body has ended (D5) only waits for its groups. */
    if (j->worker == NULL)
        return;
    struct out_msg *m = outbox_msg(e->out, OUTMSG_CANCEL, &j->worker->peer);
    if (m == NULL)
        engine_oom();
    m->job = j->n.idstr;
    m->attempt = j->attempt;
    m->source = j->n.cancel_source;
    m->reason = j->n.cancel_reason ? j->n.cancel_reason : "";
    /* Level-triggered over the network: repeated until acknowledged. */
    arm_cancel_resend(e, j);
}

void
arm_retry(struct engine *e, struct job *j)
{
    struct timer t = {j->next_attempt_ms, j->n.id, TIMER_RETRY, j->attempt};
    if (!timer_push(&e->timers, &t))
        engine_oom();
}

void
arm_cancel_grace(struct engine *e, struct job *j)
{
    struct timer t = {e->now + e->cfg.cancel_grace_ms, j->n.id, TIMER_CANCEL_GRACE, j->attempt};
    if (!timer_push(&e->timers, &t))
        engine_oom();
}

/* The delay before the attempt after `attempt`: the backoff doubling per attempt, at
 * most MAX_BACKOFF_MS, plus up to 10% jitter derived from the job and attempt (the engine
 * keeps no random state, so a replay decides the same). */
static uint64_t
retry_delay(const struct job *j)
{
    uint64_t d = j->backoff_ms;
    for (uint32_t a = 1; a < j->attempt && d < MAX_BACKOFF_MS; a++)
        d *= 2;
    if (d > MAX_BACKOFF_MS)
        d = MAX_BACKOFF_MS;
    uint64_t h = (j->n.id * 0x9e3779b97f4a7c15ULL) ^ ((uint64_t)j->attempt << 32);
    h ^= h >> 29;
    return d + h % (d / 10 + 1);
}

/* S13: an attempt ended without a result (its worker was lost, or it failed as
 * retryable). Another attempt follows after the backoff while attempts remain; else the
 * job ends FAILED with the error given (or the one it reported: type NULL). */
static void
retry_or_fail(struct engine *e, struct job *j, const char *type, const char *message)
{
    if (j->worker)
        worker_release(e, j);
    tokens_release(e, j); /* the attempt has stopped running */
    if (type) {
        free(j->err_type);
        free(j->err_message);
        j->err_type = estrdup(type);
        j->err_message = estrdup(message);
    }
    if (j->attempt >= j->max_attempts) {
        job_body_ended(e, j, OUT_FAILED);
        return;
    }
    /* D5: the groups the lost attempt opened are cancelled with it. */
    for (size_t i = 0; i < j->ngroups; i++)
        cancel_node(e, &j->groups[i]->n, SRC_PARENT, "the job's attempt ended");
    node_set_state(e, &j->n, ST_RETRY_WAIT);
    j->started = false;
    j->next_attempt_ms = e->now + retry_delay(j);
    arm_retry(e, j);
    e->stats.jobs_requeued++;
}

/* A job's worker is gone for good: a running job is tried again (at least once, S13), a
 * job being cancelled ends CANCELLED and is never retried (D6). */
static void
orphan_lost(struct engine *e, struct job *j, const char *why)
{
    if (j->n.state == ST_CANCELLING)
        job_body_ended(e, j, OUT_CANCELLED);
    else
        retry_or_fail(e, j, "WorkerLost", why);
}

static void
worker_lose(struct engine *e, struct worker *w, const char *why)
{
    char msg[160];
    snprintf(msg, sizeof(msg), "worker %s was lost: %s", w->name ? w->name : "?", why);
    engine_note(e, LOG_WARN, "worker_lost", "name=%s jobs=%zu reason=%s workers=%" PRIu64,
                kv_quote(e, w->name ? w->name : ""), w->njobs, kv_quote(e, why),
                e->stats.workers - 1);
    while (w->njobs > 0)
        orphan_lost(e, w->jobs[w->njobs - 1], msg);
    struct worker **pp = &e->workers;
    while (*pp != w)
        pp = &(*pp)->next;
    *pp = w->next;
    w->next = e->retired;
    e->retired = w;
    e->stats.workers--;
    e->stats.workers_lost++;
}

static void
worker_free(struct worker *w)
{
    free(w->name);
    free(w->kinds);
    free(w->jobs);
    free(w);
}

void
workers_free(struct engine *e)
{
    engine_end_turn(e);
    while (e->workers) {
        struct worker *w = e->workers;
        e->workers = w->next;
        worker_free(w);
    }
}

void
engine_end_turn(struct engine *e)
{
    limiters_end_turn(e);
    purge_end_turn(e);
    while (e->retired) {
        struct worker *w = e->retired;
        e->retired = w->next;
        worker_free(w);
    }
}

/* Logs a registration: a new worker at info, a repeated Ready at debug. */
static void
note_ready(struct engine *e, const struct worker *w, bool joined, size_t reclaimed)
{
    char kinds[512];
    size_t n = 0;
    kinds[0] = '\0';
    for (size_t i = 0; i < w->nkinds && n + 2 < sizeof kinds; i++) {
        int k = snprintf(kinds + n, sizeof kinds - n, "%s%s", i ? "," : "", w->kinds[i]->name);
        if (k < 0 || (size_t)k >= sizeof kinds - n)
            break;
        n += (size_t)k;
    }
    engine_note(e, joined ? LOG_INFO : LOG_DEBUG, joined ? "worker_joined" : "worker_ready",
                "name=%s kinds=%s concurrency=%" PRIu32 " reclaimed=%zu workers=%" PRIu64,
                kv_quote(e, w->name ? w->name : ""), kv_quote(e, kinds), w->concurrency, reclaimed,
                e->stats.workers);
}

/* Ready: register (or re-register) and reclaim the running jobs the worker announces.
 * A job is given back when it is still RUNNING or CANCELLING with that attempt and it
 * is orphaned, already this worker's, or held by a registration of the same worker name
 * (the same process after a reconnect). */
static void
on_ready(struct engine *e, const struct peer *from, const struct cmd *c)
{
    struct worker *w = worker_find(e, from);
    bool joined = w == NULL;
    if (w == NULL) {
        w = ecalloc(1, sizeof(*w));
        w->peer = *from;
        w->next = e->workers;
        e->workers = w;
        e->stats.workers++;
    }
    free(w->name);
    w->name = estrdup(c->name);
    free(w->kinds);
    w->kinds = ecalloc(c->nkinds, sizeof(*w->kinds));
    w->nkinds = c->nkinds;
    for (size_t i = 0; i < c->nkinds; i++)
        w->kinds[i] = kind_get(e, c->kinds[i]);
    w->concurrency = c->concurrency;
    w->last_seen_ms = e->now;

    struct running_ref *back = arena_alloc(&e->out->arena, (c->nrunning + 1) * sizeof(*back));
    if (back == NULL)
        engine_oom();
    size_t nback = 0;
    for (size_t i = 0; i < c->nrunning; i++) {
        struct job *j = as_job(engine_lookup(e, c->running[i].job, NODE_JOB));
        if (j == NULL || j->attempt != c->running[i].attempt ||
            (j->n.state != ST_RUNNING && j->n.state != ST_CANCELLING))
            continue;
        if (j->worker && j->worker != w &&
            !(*c->name && j->worker->name && strcmp(j->worker->name, c->name) == 0))
            continue;
        if (j->worker != w) {
            if (j->worker)
                worker_release(e, j);
            worker_assign(e, w, j);
        }
        if (j->n.state == ST_CANCELLING) {
            send_cancel(e, j);
            arm_cancel_grace(e, j);
        }
        back[nback].job = j->n.idstr;
        back[nback].attempt = j->attempt;
        nback++;
    }
    struct out_msg *m = reply(e, from, c->request_id, CORRAL_OK, NULL);
    m->hb_interval_ms = e->cfg.heartbeat_interval_ms;
    m->hb_timeout_ms = e->cfg.heartbeat_timeout_ms;
    m->reclaimed = back;
    m->nreclaimed = nback;
    e->dispatch_needed = true;
    note_ready(e, w, joined, nback);
}

/* Finds the job a worker report names and checks the attempt rule (S13): the report
 * must come from the worker running that very attempt. Replies and returns NULL if not. */
static struct job *
reported_job(struct engine *e, struct worker *w, const struct peer *from, const struct cmd *c)
{
    struct job *j = as_job(engine_lookup(e, c->id, NODE_JOB));
    if (j == NULL) {
        reply_fmt(e, from, c->request_id, CORRAL_ENOTFOUND, "no such job: '%s'", c->id);
        return NULL;
    }
    if (j->worker != w || j->attempt != c->attempt ||
        (j->n.state != ST_RUNNING && j->n.state != ST_CANCELLING)) {
        e->stats.stale_reports++;
        reply_fmt(e, from, c->request_id, CORRAL_ESTALE,
                  "stale report for job %s attempt %" PRIu32 ": the current attempt is %" PRIu32
                  " and it is %s",
                  j->n.idstr, c->attempt, j->attempt,
                  j->n.state == ST_ENDED ? "ended" : "not running on this worker");
        return NULL;
    }
    return j;
}

static bool
too_large(struct engine *e, const struct peer *from, const struct cmd *c, const char *what,
          size_t len)
{
    if (len <= e->cfg.max_payload)
        return false;
    reply_fmt(e, from, c->request_id, CORRAL_ETOOLARGE,
              "%s of %zu bytes exceeds the limit of %" PRIu64 " bytes", what, len,
              e->cfg.max_payload);
    return true;
}

static void
on_report(struct engine *e, struct worker *w, const struct peer *from, const struct cmd *c)
{
    struct job *j = reported_job(e, w, from, c);
    if (j == NULL)
        return;
    switch (c->type) {
    case CMD_STARTED:
        if (too_large(e, from, c, "started value", c->data.len))
            return;
        if (j->started) {
            reply_fmt(e, from, c->request_id, CORRAL_EWRONGSTATE,
                      "job %s attempt %" PRIu32 " has already signalled readiness", j->n.idstr,
                      j->attempt);
            return;
        }
        j->started = true;
        mark_dirty(e, &j->n);
        if (j->starter) {
            /* S9: the submitter gets the value; the job runs on. The value is copied:
             * the reply is encoded after the turn commits. */
            struct out_msg *m =
                reply(e, &j->starter->peer, j->starter->request_id, CORRAL_OK, NULL);
            m->id = j->n.idstr;
            uint8_t *v = arena_alloc(&e->out->arena, c->data.len + 1);
            if (v == NULL)
                engine_oom();
            if (c->data.len)
                memcpy(v, c->data.data, c->data.len);
            m->value = (struct bytes){v, c->data.len};
            free(j->starter);
            j->starter = NULL;
        }
        emit_event(e, &j->n, EV_JOB_STARTED);
        break;
    case CMD_DONE:
        if (c->data.len > e->cfg.max_payload) {
            /* The job cannot be recorded as it is: it fails, so that nobody waits forever. */
            too_large(e, from, c, "result", c->data.len);
            j->err_type = estrdup("ResultTooLarge");
            j->err_message = estrdup(e->out->msgs[e->out->nmsgs - 1].message);
            job_body_ended(e, j, OUT_FAILED);
            return;
        }
        j->result = ememdup(c->data.data, c->data.len);
        j->result_len = c->data.len;
        job_body_ended(e, j, OUT_SUCCEEDED);
        break;
    case CMD_FAILED:
        if (too_large(e, from, c, "error", strlen(c->err_message) + c->data.len))
            return;
        free(j->err_type);
        free(j->err_message);
        free(j->err_details);
        j->err_type = estrdup(c->err_type);
        j->err_message = estrdup(c->err_message);
        j->err_details = ememdup(c->data.data, c->data.len);
        j->err_details_len = c->data.len;
        if (c->retryable && j->n.state == ST_RUNNING)
            retry_or_fail(e, j, NULL, NULL);
        else
            job_body_ended(e, j, OUT_FAILED);
        break;
    default: /* CMD_CANCEL_ACK */
        if (j->n.state != ST_CANCELLING) {
            reply_fmt(e, from, c->request_id, CORRAL_EWRONGSTATE, "job %s was not asked to cancel",
                      j->n.idstr);
            return;
        }
        job_body_ended(e, j, OUT_CANCELLED);
        break;
    }
    reply(e, from, c->request_id, CORRAL_OK, NULL);
}

void
engine_handle_worker(struct engine *e, const struct peer *from, const struct cmd *c)
{
    if (c->type == CMD_READY) {
        on_ready(e, from, c);
        return;
    }
    struct worker *w = worker_find(e, from);
    if (w == NULL) {
        reply(e, from, c->request_id, CORRAL_EUNKNOWNWORKER,
              "unknown worker: send Ready first (the broker restarted or declared it lost)");
        return;
    }
    w->last_seen_ms = e->now;
    if (c->type == CMD_HEARTBEAT)
        reply(e, from, c->request_id, CORRAL_OK, NULL);
    else
        on_report(e, w, from, c);
}

/* ------------------------------------------------------------------ dispatch */

/* The least loaded worker with a free slot that serves kind k, or NULL. */
static struct worker *
free_worker(struct engine *e, const struct kind *k)
{
    struct worker *best = NULL;
    for (struct worker *w = e->workers; w; w = w->next) {
        if (w->njobs >= w->concurrency || (best && w->njobs >= best->njobs))
            continue;
        for (size_t i = 0; i < w->nkinds; i++) {
            if (w->kinds[i] == k) {
                best = w;
                break;
            }
        }
    }
    return best;
}

static void
dispatch(struct engine *e, struct worker *w, struct job *j)
{
    job_set_waiting(e, j, false);
    kind_dequeue(e, j);
    tokens_acquire(e, j);
    node_set_state(e, &j->n, ST_RUNNING);
    j->attempt++;
    j->started = false;
    worker_assign(e, w, j);
    e->stats.jobs_dispatched++;
    struct out_msg *m = outbox_msg(e->out, OUTMSG_DISPATCH, &w->peer);
    if (m == NULL)
        engine_oom();
    m->job = j->n.idstr;
    m->attempt = j->attempt;
    m->kind = j->kind->name;
    m->payload = (struct bytes){j->payload, j->payload_len};
    m->group = j->n.parent->idstr;
    m->effective_deadline_ms = effective_deadline(&j->n);
    emit_event(e, &j->n, EV_JOB_DISPATCHED);
}

/* One dispatch pass (D7). The queued jobs that could run now (a worker slot is free for
 * their kind) are visited oldest first, across kinds. One that can take a token of each
 * of its limiters is dispatched to the least loaded free worker of its kind; one that
 * cannot becomes WAITING and holds back a token of each of its limiters, so that no
 * younger job takes one it needs (FIFO per limiter: a two-limiter job is not starved by
 * one-limiter jobs). A job of a kind with no free worker is not visited: it holds no
 * token and blocks nobody; nor does a job waiting on a full limiter stop a job that needs
 * only another. The pass ends when no kind with queued jobs has a free worker. */
static void
dispatch_all(struct engine *e)
{
    e->dispatch_needed = false;
    limiters_pass_begin(e);
    for (struct kind *k = e->kinds; k; k = k->next)
        k->cursor = k->head;
    for (;;) {
        struct job *j = NULL;
        struct worker *w = NULL;
        for (struct kind *k = e->kinds; k; k = k->next) {
            if (k->cursor == NULL || (j && k->cursor->n.id > j->n.id))
                continue;
            struct worker *fw = free_worker(e, k);
            if (fw == NULL) {
                k->cursor = NULL; /* no free slot for this kind in this pass */
                continue;
            }
            j = k->cursor;
            w = fw;
        }
        if (j == NULL)
            break;
        j->kind->cursor = j->qnext;
        if (tokens_available(j)) {
            dispatch(e, w, j);
        } else {
            tokens_reserve(j);
            job_set_waiting(e, j, true);
        }
    }
}

/* ------------------------------------------------------------------ time */

static void
fire(struct engine *e, const struct timer *t)
{
    if (t->kind == TIMER_DEADLINE) {
        /* S6: a scope already cancelled keeps its first cancel (level-triggered). */
        struct node *n = engine_node(e, t->id);
        if (n && n->state != ST_ENDED && !n->cancel_called)
            cancel_node(e, n, SRC_DEADLINE, DEADLINE_EXCEEDED);
        return;
    }
    if (t->kind == TIMER_RETRY) {
        struct job *j = as_job(engine_node(e, t->id));
        if (j && j->n.state == ST_RETRY_WAIT && j->attempt == t->gen) {
            node_set_state(e, &j->n, ST_QUEUED);
            j->next_attempt_ms = 0;
            kind_enqueue(e, j);
        }
        return;
    }
    if (t->kind == TIMER_CANCEL_GRACE) {
        /* D6: a worker that ignores the protocol is not trusted with more work. */
        struct job *j = as_job(engine_node(e, t->id));
        if (j && j->n.state == ST_CANCELLING && j->attempt == t->gen && j->worker) {
            struct worker *w = j->worker;
            job_body_ended(e, j, OUT_CANCELLED);
            worker_lose(e, w, "it did not acknowledge a cancel within the cancel grace");
        }
        return;
    }
    if (t->kind == TIMER_CANCEL_RESEND) {
        struct job *j = as_job(engine_node(e, t->id));
        if (j && j->n.state == ST_CANCELLING && j->attempt == t->gen)
            send_cancel(e, j);
        return;
    }
    /* TIMER_RECLAIM_END: what no worker reclaimed in the reconnect window is tried again
     * (or ends CANCELLED, if it was being cancelled). */
    for (size_t i = 0; i < e->norphans; i++) {
        struct job *j = e->orphans[i];
        if (j->worker == NULL && (j->n.state == ST_RUNNING || j->n.state == ST_CANCELLING))
            orphan_lost(e, j, "its worker did not reconnect after the broker restarted");
    }
    free(e->orphans);
    e->orphans = NULL;
    e->norphans = e->caporphans = 0;
    e->stats.reclaimable = 0;
}

uint64_t
engine_tick(struct engine *e, uint64_t now_ms, struct outbox *out)
{
    e->now = now_ms;
    e->out = out;
    const struct timer *top;
    while ((top = timer_peek(&e->timers)) && top->at_ms <= now_ms) {
        struct timer t;
        timer_pop(&e->timers, &t);
        fire(e, &t);
    }
    uint64_t next = top ? top->at_ms : UINT64_MAX;
    for (struct worker *w = e->workers, *nw; w; w = nw) {
        nw = w->next;
        uint64_t expiry = w->last_seen_ms + e->cfg.heartbeat_timeout_ms;
        if (expiry <= now_ms)
            worker_lose(e, w, "silent past the heartbeat timeout");
        else if (expiry < next)
            next = expiry;
    }
    if (e->dispatch_needed)
        dispatch_all(e);
    purge_step(e);
    uint64_t purge_at = purge_next(e);
    if (purge_at < next)
        next = purge_at;
    top = timer_peek(&e->timers);
    if (top && top->at_ms < next)
        next = top->at_ms;
    return next;
}

void
engine_shutdown(struct engine *e, struct outbox *out)
{
    for (struct worker *w = e->workers; w; w = w->next)
        if (outbox_msg(out, OUTMSG_SHUTDOWN, &w->peer) == NULL)
            engine_oom();
}
