/* worker_thread.c - the worker's background thread: it owns the DEALER socket and speaks
 * the worker protocol. It registers with Ready (again after a reconnect, reclaiming the
 * jobs it still runs), heartbeats, turns Dispatch into queued jobs and Cancel into flags,
 * sends the API's reports and the broker's replies settle them: Started answers go back to
 * the waiting API thread, final reports (Done, Failed, CancelAck) are delivered at least
 * once (re-sent after a timeout and after every re-registration). Every job costs the
 * thread O(1): requests are on lists and indexed by request id, jobs hashed by (id,
 * attempt), and the timers look at the oldest report in flight only. See worker_int.h. */
#include "clock.h"
#include "codec.h"
#include "worker_int.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <zmq.h>

#define HB_INTERVAL_MIN_MS 10
#define FLUSH_MS           2000 /* corral_worker_free: delivering unacknowledged reports */
#define RETRY_MS           100  /* a send that could not go out: try again after */
#define WAKE_MAX_MS        1000 /* the thread looks at its timers at least this often */
#define DRAIN_MAX          256  /* frames handled per wake-up */

/* ------------------------------------------------------------------ small helpers */

/* The smaller of a and b. */
static uint64_t
min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/* Maps a wire cancel source to the library's; unknown values read as NONE. */
static enum corral_cancel_source
map_source(int v)
{
    return v >= CORRAL_SOURCE_NONE && v <= CORRAL_SOURCE_PARENT ? (enum corral_cancel_source)v
                                                                : CORRAL_SOURCE_NONE;
}

/* Puts r (borrowed; taken off its list) on the send list, to go at retry_at_ms. It keeps
 * its request id in the map until it is sent again: a late reply still settles it. */
static void
sendq_push(struct corral_worker *w, struct req *r, uint64_t retry_at_ms)
{
    worker_list_unlink(r);
    r->retry_at_ms = retry_at_ms;
    worker_list_push(&w->sendq, r);
}

/* Forgets r (takes ownership): off its list, out of the map, freed. */
static void
req_drop(struct corral_worker *w, struct req *r)
{
    worker_list_unlink(r);
    worker_map_remove(&w->byid, r->request_id);
    worker_req_free(r);
}

/* ------------------------------------------------------------------ jobs */

/* Returns owned *out: a job for Dispatch d (borrowed), with two references (the running
 * table's and the queue's), in one allocation. Returns 0 or CORRAL_ENOMEM. */
static int
job_new(struct corral_job **out, struct corral_worker *w, const Corral__V1__Dispatch *d)
{
    const char *kind = d->kind != NULL ? d->kind : "";
    const char *group = d->group != NULL ? d->group : "";
    size_t nid = strlen(d->job) + 1, nkind = strlen(kind) + 1, ngroup = strlen(group) + 1;
    size_t fixed = sizeof(struct corral_job) + nid + nkind + ngroup + 1;
    struct corral_job *j;
    char *p;

    if (d->payload.len > SIZE_MAX - fixed)
        return CORRAL_ENOMEM;
    j = malloc(fixed + d->payload.len);
    if (j == NULL)
        return CORRAL_ENOMEM;
    memset(j, 0, sizeof *j);
    /* The payload first: it starts where the struct ends, aligned like it. */
    p = (char *)(j + 1);
    if (d->payload.len > 0)
        memcpy(p, d->payload.data, d->payload.len);
    p[d->payload.len] = '\0';
    j->payload = (const uint8_t *)p;
    j->payload_len = d->payload.len;
    p += d->payload.len + 1;
    j->id = memcpy(p, d->job, nid);
    p += nid;
    j->kind = memcpy(p, kind, nkind);
    p += nkind;
    j->group = memcpy(p, group, ngroup);
    j->w = w;
    j->attempt = d->attempt;
    j->deadline_ms = d->effective_deadline_unix_ms;
    j->hash = worker_job_hash(j->id, j->attempt);
    j->refs = 2;
    atomic_init(&j->cancel_fd, -1);
    atomic_init(&j->cancelled, false);
    *out = j;
    return CORRAL_OK;
}

/* ------------------------------------------------------------------ sending (thread) */

/* Sends env (borrowed) under a new request id, without blocking. Returns 0 with *id,
 * CORRAL_EBUSY when the socket cannot take it now (full, or not connected), or
 * CORRAL_ENOMEM / CORRAL_EIO. */
static int
wsend(struct corral_worker *w, Corral__V1__Envelope *env, uint64_t *id)
{
    int rc;
    uint64_t rid = ++w->last_id;
    const uint8_t *buf = NULL;
    size_t len = 0;

    rc = codec_pack(&w->out, env, rid, &buf, &len);
    if (rc != CORRAL_OK)
        return rc;
    if (zmq_send(w->sock, buf, len, ZMQ_DONTWAIT) < 0)
        return zmq_errno() == EAGAIN || zmq_errno() == EINTR ? CORRAL_EBUSY : CORRAL_EIO;
    if (id != NULL)
        *id = rid;
    return CORRAL_OK;
}

/* Sends request r (borrowed) once. Same returns as wsend. */
static int
send_req(struct corral_worker *w, struct req *r, uint64_t *id)
{
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    Corral__V1__Started started = CORRAL__V1__STARTED__INIT;
    Corral__V1__Done done = CORRAL__V1__DONE__INIT;
    Corral__V1__Failed failed = CORRAL__V1__FAILED__INIT;
    Corral__V1__CancelAck ack = CORRAL__V1__CANCEL_ACK__INIT;

    switch (r->kind) {
    case REQ_STARTED:
        started.job = (char *)r->job;
        started.attempt = r->attempt;
        started.value.data = r->data;
        started.value.len = r->len;
        env.body_case = CORRAL__V1__ENVELOPE__BODY_STARTED;
        env.started = &started;
        break;
    case REQ_DONE:
        done.job = (char *)r->job;
        done.attempt = r->attempt;
        done.result.data = r->data;
        done.result.len = r->len;
        env.body_case = CORRAL__V1__ENVELOPE__BODY_DONE;
        env.done = &done;
        break;
    case REQ_FAILED:
        failed.job = (char *)r->job;
        failed.attempt = r->attempt;
        failed.type = r->type;
        failed.message = r->message;
        failed.details.data = r->data;
        failed.details.len = r->len;
        failed.retryable = r->retryable;
        env.body_case = CORRAL__V1__ENVELOPE__BODY_FAILED;
        env.failed = &failed;
        break;
    case REQ_CANCEL_ACK:
        ack.job = (char *)r->job;
        ack.attempt = r->attempt;
        env.body_case = CORRAL__V1__ENVELOPE__BODY_CANCEL_ACK;
        env.cancel_ack = &ack;
        break;
    }
    return wsend(w, &env, id);
}

/* Sends Ready with every job of the running table, remembering them to compare with the
 * reply's reclaimed list. */
static void
send_ready(struct corral_worker *w, uint64_t now)
{
    int rc = CORRAL_OK;
    size_t n = w->table.count, i = 0, b;
    uint64_t id = 0;
    struct corral_job *j;
    struct snap *snap = NULL;
    Corral__V1__RunningJob *rj = NULL;
    Corral__V1__RunningJob **rjp = NULL;
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    Corral__V1__Ready ready = CORRAL__V1__READY__INIT;

    if (n > 0) {
        rj = calloc(n, sizeof *rj);
        rjp = calloc(n, sizeof *rjp);
        snap = calloc(n, sizeof *snap);
        if (rj == NULL || rjp == NULL || snap == NULL) {
            rc = CORRAL_ENOMEM;
            goto out;
        }
    }
    for (b = 0; b < w->table.nbuckets; b++) {
        for (j = w->table.buckets[b]; j != NULL; j = j->tnext, i++) {
            corral__v1__running_job__init(&rj[i]);
            rj[i].job = (char *)j->id;
            rj[i].attempt = j->attempt;
            rjp[i] = &rj[i];
            snap[i].attempt = j->attempt;
            snap[i].job = worker_dup_str(j->id);
            if (snap[i].job == NULL) {
                rc = CORRAL_ENOMEM;
                goto out;
            }
        }
    }
    ready.n_kinds = w->nkinds;
    ready.kinds = w->kinds;
    ready.concurrency = w->concurrency;
    ready.n_running = n;
    ready.running = rjp;
    ready.name = w->name;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_READY;
    env.ready = &ready;
    rc = wsend(w, &env, &id);
    if (rc != CORRAL_OK)
        goto out;
    worker_snap_free(w->snap, w->nsnap);
    w->snap = snap;
    w->nsnap = n;
    snap = NULL;
    w->ready_id = id;
    w->ready_sent_ms = now;
    w->registered = false;
out:
    if (rc == CORRAL_EBUSY)
        w->blocked = true;
    if (rc != CORRAL_OK)
        w->next_ready_ms = now + RETRY_MS;
    worker_snap_free(snap, n);
    free(rjp);
    free(rj);
}

/* Forgets the registration: a new Ready goes out at once. */
static void
reregister(struct corral_worker *w, uint64_t now)
{
    w->registered = false;
    w->ready_id = 0;
    w->next_ready_ms = now;
}

/* Sends a CancelAck for a job this worker does not run, not kept for re-sending: the
 * broker repeats its Cancel if this is lost. */
static void
send_cancel_ack_now(struct corral_worker *w, const char *job, uint32_t attempt)
{
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    Corral__V1__CancelAck ack = CORRAL__V1__CANCEL_ACK__INIT;

    ack.job = (char *)job;
    ack.attempt = attempt;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_CANCEL_ACK;
    env.cancel_ack = &ack;
    (void)wsend(w, &env, NULL);
}

/* Fires what is due at now: Ready (re)sends, the heartbeat, report re-sends. */
static void
run_timers(struct corral_worker *w, uint64_t now)
{
    struct req *r;

    if (!w->registered) {
        if (w->ready_id != 0 && now - w->ready_sent_ms >= w->hb_timeout_ms)
            reregister(w, now); /* the Ready or its reply was lost */
        if (w->ready_id == 0 && now >= w->next_ready_ms)
            send_ready(w, now);
    } else if (now >= w->next_hb_ms) {
        Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
        Corral__V1__Heartbeat hb = CORRAL__V1__HEARTBEAT__INIT;

        env.body_case = CORRAL__V1__ENVELOPE__BODY_HEARTBEAT;
        env.heartbeat = &hb;
        (void)wsend(w, &env, NULL); /* one lost while disconnected does not matter */
        w->next_hb_ms = now + w->hb_interval_ms;
    }
    /* Finals in flight are in the order they were sent, and all wait as long. */
    while ((r = w->inflight.head) != NULL && now - r->sent_ms >= w->hb_timeout_ms)
        sendq_push(w, r, now);
}

/* Sends every request of the send list that is due, once a Ready has gone out before
 * them; each goes to its in-flight list, indexed by its new request id. */
static void
flush(struct corral_worker *w, uint64_t now)
{
    struct req *r, *next;

    if (w->ready_id == 0)
        return;
    for (r = w->sendq.head; r != NULL; r = next) {
        uint64_t id = 0;
        int rc;

        next = r->next;
        if (now < r->retry_at_ms)
            continue;
        rc = send_req(w, r, &id);
        if (rc == CORRAL_OK) {
            worker_list_unlink(r);
            worker_map_remove(&w->byid, r->request_id);
            r->request_id = id;
            r->sent_ms = now;
            /* Out of memory: its reply goes unmatched, and it is sent again after the
             * timeout (a Started one's caller times out). */
            (void)worker_map_add(&w->byid, r);
            worker_list_push(r->kind == REQ_STARTED ? &w->started : &w->inflight, r);
        } else if (rc == CORRAL_EBUSY) {
            w->blocked = true;
            return;
        } else {
            r->retry_at_ms = now + RETRY_MS;
        }
    }
}

/* Milliseconds the thread may sleep from now (flush_deadline 0: not stopping). */
static long
next_wakeup(const struct corral_worker *w, uint64_t now, uint64_t flush_deadline)
{
    uint64_t t = now + WAKE_MAX_MS;
    const struct req *r;

    if (w->registered)
        t = min_u64(t, w->next_hb_ms);
    else if (w->ready_id != 0)
        t = min_u64(t, w->ready_sent_ms + w->hb_timeout_ms);
    else if (!w->blocked)
        t = min_u64(t, w->next_ready_ms);
    /* After flush, only requests that are not due yet remain (usually none). */
    if (w->ready_id != 0 && !w->blocked)
        for (r = w->sendq.head; r != NULL; r = r->next)
            t = min_u64(t, r->retry_at_ms);
    if (w->inflight.head != NULL)
        t = min_u64(t, w->inflight.head->sent_ms + w->hb_timeout_ms);
    if (w->blocked)
        t = min_u64(t, now + RETRY_MS);
    if (flush_deadline != 0)
        t = min_u64(t, flush_deadline);
    return t <= now ? 0 : (long)(t - now);
}

/* ------------------------------------------------------------------ receiving (thread) */

/* Answers the Started request r (takes the thread's reference) with code. */
static void
answer_started(struct corral_worker *w, struct req *r, int code)
{
    bool last;

    pthread_mutex_lock(&w->mu);
    r->answered = true;
    r->code = code;
    last = --r->refs == 0;
    pthread_cond_broadcast(&w->reply_cond);
    pthread_mutex_unlock(&w->mu);
    if (last)
        worker_req_free(r);
}

/* Ends final report r (dropped) and the job's place in the running table. */
static void
finish_final(struct corral_worker *w, struct req *r)
{
    worker_table_remove(w, r->job, r->attempt);
    req_drop(w, r);
}

/* Stops (cancels locally) every job announced in the last Ready that the broker did not
 * give back in reply r (borrowed): it was re-queued or has ended. */
static void
reclaim(struct corral_worker *w, const Corral__V1__Reply *r)
{
    size_t i, k;

    for (i = 0; i < w->nsnap; i++) {
        struct corral_job *j;
        bool kept = false, drop = false;

        for (k = 0; k < r->n_reclaimed && !kept; k++) {
            const Corral__V1__RunningJob *rj = r->reclaimed[k];

            kept = rj != NULL && rj->attempt == w->snap[i].attempt && rj->job != NULL &&
                   strcmp(rj->job, w->snap[i].job) == 0;
        }
        if (kept)
            continue;
        j = worker_table_find(w, w->snap[i].job, w->snap[i].attempt);
        if (j == NULL)
            continue;
        pthread_mutex_lock(&w->mu);
        if (j->reported)
            ; /* its report settles it */
        else if (j->abandoned)
            drop = true; /* nobody runs it here, and the broker no longer expects it */
        else
            worker_job_mark_cancelled(j, CORRAL_SOURCE_NONE, "not reclaimed by the broker");
        pthread_mutex_unlock(&w->mu);
        if (drop)
            worker_table_remove(w, w->snap[i].job, w->snap[i].attempt);
    }
    worker_snap_free(w->snap, w->nsnap);
    w->snap = NULL;
    w->nsnap = 0;
}

/* Handles the reply r (borrowed, with code) to the current Ready. */
static void
on_ready_reply(struct corral_worker *w, const Corral__V1__Reply *r, int code, uint64_t now)
{
    struct req *p;

    if (code != CORRAL_OK) {
        w->registered = false;
        w->ready_id = 0;
        w->next_ready_ms = now + w->hb_interval_ms;
        return;
    }
    w->registered = true;
    w->hb_interval_ms = HB_INTERVAL_DEFAULT_MS;
    if (r->heartbeat_interval_ms > 0)
        w->hb_interval_ms = r->heartbeat_interval_ms < HB_INTERVAL_MIN_MS
                                ? HB_INTERVAL_MIN_MS
                                : r->heartbeat_interval_ms;
    w->hb_timeout_ms = r->heartbeat_timeout_ms > 0 ? r->heartbeat_timeout_ms
                                                   : w->hb_interval_ms * HB_TIMEOUT_FACTOR;
    w->next_hb_ms = now + w->hb_interval_ms;
    reclaim(w, r);
    /* Reports sent before this Ready may have died with the old broker: send them again.
     * A duplicate is answered ERR_STALE_ATTEMPT or ERR_WRONG_STATE, which acknowledges it.
     * (In flight they are in send order, so they are the first ones.) */
    while ((p = w->inflight.head) != NULL && p->request_id < w->ready_id)
        sendq_push(w, p, now);
    for (p = w->sendq.head; p != NULL; p = p->next)
        if (p->kind != REQ_STARTED && p->request_id != 0 && p->request_id < w->ready_id)
            p->retry_at_ms = now;
}

/* Handles Reply r (borrowed) to request id. */
static void
on_reply(struct corral_worker *w, uint64_t id, const Corral__V1__Reply *r, uint64_t now)
{
    int code = codec_reply_code(r);
    struct req *p;

    if (w->ready_id != 0 && id == w->ready_id) {
        on_ready_reply(w, r, code, now);
        return;
    }
    p = worker_map_find(&w->byid, id);
    if (code == CORRAL_EUNKNOWNWORKER) {
        if (p != NULL)
            sendq_push(w, p, now); /* again, after the Ready */
        /* Sent after our last Ready: the broker has forgotten us since (restarted, or
         * declared us lost). Sent before it: the Ready in flight deals with it. */
        if (w->ready_id != 0 && id > w->ready_id)
            reregister(w, now);
        return;
    }
    if (p == NULL)
        return; /* a heartbeat, an immediate CancelAck, or a late duplicate */
    if (p->kind == REQ_STARTED) {
        worker_list_unlink(p);
        worker_map_remove(&w->byid, p->request_id);
        answer_started(w, p, code);
        return;
    }
    switch (code) {
    case CORRAL_OK:
    case CORRAL_ESTALE:
    case CORRAL_EWRONGSTATE:
    case CORRAL_ENOTFOUND:
        finish_final(w, p);
        break;
    case CORRAL_ETOOLARGE:
        if (worker_req_shrink(p))
            sendq_push(w, p, now);
        else
            finish_final(w, p);
        break;
    case CORRAL_EBUSY:
        sendq_push(w, p, now + (r->retry_after_ms > RETRY_MS ? r->retry_after_ms : RETRY_MS));
        break;
    case CORRAL_EINTERNAL:
    case CORRAL_ESHUTDOWN:
        sendq_push(w, p, now + w->hb_interval_ms);
        break;
    default:
        /* Refused for good (bad request, version...): sending it again cannot help. */
        finish_final(w, p);
        break;
    }
}

/* Queues a Failed report for a dispatch this worker could not take (rc says why). */
static void
refuse_dispatch(struct corral_worker *w, const Corral__V1__Dispatch *d, int rc)
{
    char msg[128];
    struct req *r = worker_req_new(REQ_FAILED, d->job, d->attempt, NULL, 0);

    if (r == NULL)
        return; /* the broker will cancel it, and the unknown job is acknowledged */
    snprintf(msg, sizeof msg, "the worker could not accept the job: %s", corral_strerror(rc));
    r->type = worker_dup_str("WorkerError");
    r->message = worker_dup_str(msg);
    if (r->type == NULL || r->message == NULL) {
        worker_req_free(r);
        return;
    }
    sendq_push(w, r, 0);
}

/* Handles Dispatch d (borrowed): a new job for the running table, and for the batch that
 * goes to the queue once the frames at hand are handled. */
static void
on_dispatch(struct corral_worker *w, const Corral__V1__Dispatch *d)
{
    int rc;
    struct corral_job *j = NULL;

    if (d->job == NULL || d->job[0] == '\0')
        return;
    if (worker_table_find(w, d->job, d->attempt) != NULL)
        return; /* a duplicate */
    rc = job_new(&j, w, d);
    if (rc == CORRAL_OK && (rc = worker_table_add(w, j)) != CORRAL_OK)
        worker_job_destroy(j);
    if (rc != CORRAL_OK) {
        refuse_dispatch(w, d, rc);
        return;
    }
    j->qnext = NULL;
    if (w->batch_tail != NULL)
        w->batch_tail->qnext = j;
    else
        w->batch_head = j;
    w->batch_tail = j;
}

/* Moves the batch of dispatched jobs to the API's queue, under one lock, and wakes as many
 * waiters as it may satisfy. */
static void
publish_batch(struct corral_worker *w)
{
    bool many;

    if (w->batch_head == NULL)
        return;
    many = w->batch_head != w->batch_tail;
    pthread_mutex_lock(&w->mu);
    if (w->q_tail != NULL)
        w->q_tail->qnext = w->batch_head;
    else
        w->q_head = w->batch_head;
    w->q_tail = w->batch_tail;
    worker_jobs_fd_sync(w);
    if (many)
        pthread_cond_broadcast(&w->jobs_cond);
    else
        pthread_cond_signal(&w->jobs_cond);
    pthread_mutex_unlock(&w->mu);
    w->batch_head = w->batch_tail = NULL;
}

/* Whether a final report about (job, attempt) (borrowed) waits for the broker. A scan:
 * only asked for a Cancel of a job that is not in the running table. */
static bool
final_pending(const struct corral_worker *w, const char *job, uint32_t attempt)
{
    const struct reqlist *lists[] = {&w->sendq, &w->inflight};

    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++)
        for (const struct req *r = lists[i]->head; r != NULL; r = r->next)
            if (r->kind != REQ_STARTED && r->attempt == attempt && strcmp(r->job, job) == 0)
                return true;
    return false;
}

/* Handles Cancel c (borrowed). */
static void
on_cancel(struct corral_worker *w, const Corral__V1__Cancel *c)
{
    struct corral_job *j;
    struct req *ack = NULL;

    if (c->job == NULL || c->job[0] == '\0')
        return;
    j = worker_table_find(w, c->job, c->attempt);
    if (j == NULL) {
        if (!final_pending(w, c->job, c->attempt))
            send_cancel_ack_now(w, c->job, c->attempt); /* not running here */
        return;
    }
    ack = worker_req_new(REQ_CANCEL_ACK, j->id, j->attempt, NULL, 0);
    pthread_mutex_lock(&w->mu);
    if (j->reported) {
        ; /* its final report answers the Cancel */
    } else if (j->abandoned) {
        /* Its holder freed it without a report: nothing runs it any more. */
        if (ack != NULL) {
            j->reported = true;
            sendq_push(w, ack, 0);
            ack = NULL;
        }
    } else {
        worker_job_mark_cancelled(j, map_source((int)c->source), c->reason);
    }
    pthread_mutex_unlock(&w->mu);
    worker_req_free(ack);
}

/* Handles one received frame (borrowed). Anything unexpected is dropped. */
static void
on_frame(struct corral_worker *w, const void *data, size_t len, uint64_t now)
{
    const Corral__V1__Envelope *env = NULL;

    if (codec_unpack(&w->arena, data, len, &env) != CORRAL_OK)
        return;
    if (env->version != CORRAL_PROTOCOL_VERSION)
        return;
    switch (env->body_case) {
    case CORRAL__V1__ENVELOPE__BODY_REPLY:
        if (env->reply != NULL)
            on_reply(w, env->request_id, env->reply, now);
        break;
    case CORRAL__V1__ENVELOPE__BODY_DISPATCH:
        if (env->dispatch != NULL)
            on_dispatch(w, env->dispatch);
        break;
    case CORRAL__V1__ENVELOPE__BODY_CANCEL:
        if (env->cancel != NULL)
            on_cancel(w, env->cancel);
        break;
    case CORRAL__V1__ENVELOPE__BODY_SHUTDOWN:
        /* The broker restarts: libzmq reconnects, and the next heartbeat's
         * ERR_UNKNOWN_WORKER from the new broker makes us register again. */
        break;
    default:
        break;
    }
}

/* Handles what is waiting on the socket, then queues the jobs it dispatched. Returns 0,
 * or CORRAL_EIO on a socket error. */
static int
drain(struct corral_worker *w)
{
    int i, rc = CORRAL_OK;
    uint64_t now = clock_mono_ms();

    for (i = 0; i < DRAIN_MAX; i++) {
        zmq_msg_t msg;
        bool more;

        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, w->sock, ZMQ_DONTWAIT) < 0) {
            int e = zmq_errno();

            zmq_msg_close(&msg);
            if (e != EAGAIN && e != EINTR)
                rc = CORRAL_EIO;
            break;
        }
        more = zmq_msg_more(&msg);
        if (!more)
            on_frame(w, zmq_msg_data(&msg), zmq_msg_size(&msg), now);
        /* A multipart message is not of this protocol: skip its frames. */
        while (more && zmq_msg_recv(&msg, w->sock, ZMQ_DONTWAIT) >= 0)
            more = zmq_msg_more(&msg);
        zmq_msg_close(&msg);
    }
    publish_batch(w);
    return rc;
}

/* Drops the Started requests of list l whose caller gave up (refs 1: only the thread's
 * reference is left). Caller holds w->mu. */
static void
drop_abandoned_started(struct corral_worker *w, struct reqlist *l)
{
    struct req *r, *next;

    for (r = l->head; r != NULL; r = next) {
        next = r->next;
        if (r->kind == REQ_STARTED && r->refs == 1)
            req_drop(w, r);
    }
}

/* Moves the API's queued requests to the send list, all at once, and drops Started
 * requests their caller gave up on (scanning only when one did). The thread is awake
 * from here on. Returns whether the worker is stopping. */
static bool
take_requests(struct corral_worker *w)
{
    bool stop;

    pthread_mutex_lock(&w->mu);
    w->sleeping = false;
    while (w->out_head != NULL) {
        struct req *r = w->out_head;

        w->out_head = r->next;
        r->next = NULL;
        sendq_push(w, r, 0);
    }
    w->out_tail = NULL;
    if (w->started_dropped > 0) {
        drop_abandoned_started(w, &w->sendq);
        drop_abandoned_started(w, &w->started);
        w->started_dropped = 0;
    }
    stop = w->stop;
    pthread_mutex_unlock(&w->mu);
    return stop;
}

/* Whether the thread may sleep (it then counts as sleeping: the next request wakes it),
 * or requests came since take_requests. */
static bool
may_sleep(struct corral_worker *w)
{
    bool idle;

    pthread_mutex_lock(&w->mu);
    idle = w->out_head == NULL;
    w->sleeping = idle;
    pthread_mutex_unlock(&w->mu);
    return idle;
}

/* Whether a final report still waits for the broker. */
static bool
has_finals(const struct corral_worker *w)
{
    const struct req *r;

    if (w->inflight.n > 0)
        return true;
    for (r = w->sendq.head; r != NULL; r = r->next)
        if (r->kind != REQ_STARTED)
            return true;
    return false;
}

/* The background thread (borrows w): owns the socket until it ends. */
void *
worker_thread_main(void *arg)
{
    struct corral_worker *w = arg;
    uint64_t flush_deadline = 0;
    sigset_t all;

    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    for (;;) {
        uint64_t now = clock_mono_ms();
        zmq_pollitem_t items[2];
        long timeout;

        if (take_requests(w)) {
            if (flush_deadline == 0)
                flush_deadline = now + FLUSH_MS;
            if (!has_finals(w) || now >= flush_deadline)
                break;
        }
        w->blocked = false;
        run_timers(w, now);
        flush(w, now);
        timeout = next_wakeup(w, now, flush_deadline);
        if (timeout != 0 && !may_sleep(w))
            timeout = 0; /* a request came meanwhile: just look at the socket */
        /* With nothing to wait for, the socket is read at once (a wake-up left in
         * wake_fd is taken by the next poll that waits). */
        if (timeout != 0) {
            items[0].socket = w->sock;
            items[0].fd = 0;
            items[0].events = (short)(ZMQ_POLLIN | (w->blocked ? ZMQ_POLLOUT : 0));
            items[0].revents = 0;
            items[1].socket = NULL;
            items[1].fd = w->wake_fd;
            items[1].events = ZMQ_POLLIN;
            items[1].revents = 0;
            if (zmq_poll(items, 2, timeout) < 0) {
                if (zmq_errno() == EINTR)
                    continue;
                break;
            }
            if (items[1].revents & ZMQ_POLLIN)
                worker_efd_take(w->wake_fd);
        }
        if (drain(w) != CORRAL_OK)
            break;
    }
    zmq_close(w->sock);
    w->sock = NULL;
    publish_batch(w);
    pthread_mutex_lock(&w->mu);
    w->closed = true;
    /* The fd stays readable for good, and corral_worker_next returns the queued jobs,
     * then CORRAL_ECLOSED without blocking. */
    worker_jobs_fd_sync(w);
    pthread_cond_broadcast(&w->jobs_cond);
    pthread_cond_broadcast(&w->reply_cond);
    pthread_mutex_unlock(&w->mu);
    return NULL;
}
