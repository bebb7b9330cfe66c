/* worker_thread.c - the worker's background thread: it owns the DEALER socket and speaks
 * the worker protocol. It registers with Ready (again after a reconnect, reclaiming the
 * jobs it still runs), heartbeats, turns Dispatch into queued jobs and Cancel into flags,
 * sends the API's reports and the broker's replies settle them: Started answers go back to
 * the waiting API thread, final reports (Done, Failed, CancelAck) are delivered at least
 * once (re-sent after a timeout and after every re-registration). See worker_int.h. */
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

/* Appends r (takes ownership) to the thread's pending list, to be sent. Thread only. */
static void
pending_push(struct corral_worker *w, struct req *r)
{
    struct req **pp = &w->pending;

    while (*pp != NULL)
        pp = &(*pp)->next;
    r->next = NULL;
    r->needs_send = true;
    r->retry_at_ms = 0;
    *pp = r;
}

/* ------------------------------------------------------------------ jobs */

/* Returns owned *out: a job for Dispatch d (borrowed), with two references (the running
 * table's and the queue's). Returns 0, CORRAL_ENOMEM or CORRAL_EIO (no eventfd). */
static int
job_new(struct corral_job **out, struct corral_worker *w, const Corral__V1__Dispatch *d)
{
    int rc = CORRAL_OK;
    struct corral_job *j = calloc(1, sizeof *j);

    if (j == NULL)
        return CORRAL_ENOMEM;
    j->w = w;
    j->attempt = d->attempt;
    j->refs = 2;
    j->cancel_fd = -1;
    atomic_init(&j->cancelled, false);
    j->id = worker_dup_str(d->job);
    j->kind = worker_dup_str(d->kind);
    j->group = worker_dup_str(d->group);
    j->payload = codec_dup_bytes(d->payload.data, d->payload.len);
    if (j->id == NULL || j->kind == NULL || j->group == NULL || j->payload == NULL) {
        rc = CORRAL_ENOMEM;
        goto out;
    }
    j->payload_len = d->payload.len;
    j->cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (j->cancel_fd < 0) {
        rc = CORRAL_EIO;
        goto out;
    }
    *out = j;
    j = NULL;
out:
    if (j != NULL)
        worker_job_destroy(j);
    return rc;
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
    uint8_t *buf = NULL;
    size_t len = 0;

    rc = codec_pack(env, rid, &buf, &len);
    if (rc != CORRAL_OK)
        goto out;
    if (zmq_send(w->sock, buf, len, ZMQ_DONTWAIT) < 0) {
        rc = zmq_errno() == EAGAIN || zmq_errno() == EINTR ? CORRAL_EBUSY : CORRAL_EIO;
        goto out;
    }
    if (id != NULL)
        *id = rid;
out:
    free(buf);
    return rc;
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
        started.job = r->job;
        started.attempt = r->attempt;
        started.value.data = r->data;
        started.value.len = r->len;
        env.body_case = CORRAL__V1__ENVELOPE__BODY_STARTED;
        env.started = &started;
        break;
    case REQ_DONE:
        done.job = r->job;
        done.attempt = r->attempt;
        done.result.data = r->data;
        done.result.len = r->len;
        env.body_case = CORRAL__V1__ENVELOPE__BODY_DONE;
        env.done = &done;
        break;
    case REQ_FAILED:
        failed.job = r->job;
        failed.attempt = r->attempt;
        failed.type = r->type;
        failed.message = r->message;
        failed.details.data = r->data;
        failed.details.len = r->len;
        env.body_case = CORRAL__V1__ENVELOPE__BODY_FAILED;
        env.failed = &failed;
        break;
    case REQ_CANCEL_ACK:
        ack.job = r->job;
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
    size_t n = 0, i = 0;
    uint64_t id = 0;
    struct corral_job *j;
    struct snap *snap = NULL;
    Corral__V1__RunningJob *rj = NULL;
    Corral__V1__RunningJob **rjp = NULL;
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    Corral__V1__Ready ready = CORRAL__V1__READY__INIT;

    for (j = w->table; j != NULL; j = j->tnext)
        n++;
    if (n > 0) {
        rj = calloc(n, sizeof *rj);
        rjp = calloc(n, sizeof *rjp);
        snap = calloc(n, sizeof *snap);
        if (rj == NULL || rjp == NULL || snap == NULL) {
            rc = CORRAL_ENOMEM;
            goto out;
        }
    }
    for (j = w->table; j != NULL; j = j->tnext, i++) {
        corral__v1__running_job__init(&rj[i]);
        rj[i].job = j->id;
        rj[i].attempt = j->attempt;
        rjp[i] = &rj[i];
        snap[i].attempt = j->attempt;
        snap[i].job = worker_dup_str(j->id);
        if (snap[i].job == NULL) {
            rc = CORRAL_ENOMEM;
            goto out;
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
    for (r = w->pending; r != NULL; r = r->next) {
        if (r->kind != REQ_STARTED && !r->needs_send && r->request_id != 0 &&
            now - r->sent_ms >= w->hb_timeout_ms) {
            r->needs_send = true;
            r->retry_at_ms = now;
        }
    }
}

/* Sends every pending request that is due, once a Ready has gone out before them. */
static void
flush(struct corral_worker *w, uint64_t now)
{
    struct req *r;

    if (w->ready_id == 0)
        return;
    for (r = w->pending; r != NULL; r = r->next) {
        uint64_t id = 0;
        int rc;

        if (!r->needs_send || now < r->retry_at_ms)
            continue;
        rc = send_req(w, r, &id);
        if (rc == CORRAL_OK) {
            r->needs_send = false;
            r->request_id = id;
            r->sent_ms = now;
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
    for (r = w->pending; r != NULL; r = r->next) {
        if (r->needs_send) {
            if (w->ready_id != 0 && !w->blocked)
                t = min_u64(t, r->retry_at_ms);
        } else if (r->kind != REQ_STARTED && r->request_id != 0) {
            t = min_u64(t, r->sent_ms + w->hb_timeout_ms);
        }
    }
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

/* Ends final report *pp (unlinked and freed) and the job's place in the running table. */
static void
finish_final(struct corral_worker *w, struct req **pp)
{
    struct req *r = *pp;

    *pp = r->next;
    worker_table_remove(w, r->job, r->attempt);
    worker_req_free(r);
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
     * A duplicate is answered ERR_STALE_ATTEMPT or ERR_WRONG_STATE, which acknowledges it. */
    for (p = w->pending; p != NULL; p = p->next) {
        if (p->kind != REQ_STARTED && p->request_id != 0 && p->request_id < w->ready_id) {
            p->needs_send = true;
            p->retry_at_ms = now;
        }
    }
}

/* Handles Reply r (borrowed) to request id. */
static void
on_reply(struct corral_worker *w, uint64_t id, const Corral__V1__Reply *r, uint64_t now)
{
    int code = codec_reply_code(r);
    struct req **pp, *p;

    if (w->ready_id != 0 && id == w->ready_id) {
        on_ready_reply(w, r, code, now);
        return;
    }
    for (pp = &w->pending; *pp != NULL; pp = &(*pp)->next)
        if ((*pp)->request_id == id)
            break;
    p = *pp;
    if (code == CORRAL_EUNKNOWNWORKER) {
        if (p != NULL) {
            p->needs_send = true; /* again, after the Ready */
            p->retry_at_ms = now;
        }
        /* Sent after our last Ready: the broker has forgotten us since (restarted, or
         * declared us lost). Sent before it: the Ready in flight deals with it. */
        if (w->ready_id != 0 && id > w->ready_id)
            reregister(w, now);
        return;
    }
    if (p == NULL)
        return; /* a heartbeat, an immediate CancelAck, or a late duplicate */
    if (p->kind == REQ_STARTED) {
        *pp = p->next;
        answer_started(w, p, code);
        return;
    }
    switch (code) {
    case CORRAL_OK:
    case CORRAL_ESTALE:
    case CORRAL_EWRONGSTATE:
    case CORRAL_ENOTFOUND:
        finish_final(w, pp);
        break;
    case CORRAL_ETOOLARGE:
        if (worker_req_shrink(p)) {
            p->needs_send = true;
            p->retry_at_ms = now;
        } else {
            finish_final(w, pp);
        }
        break;
    case CORRAL_EBUSY:
        p->needs_send = true;
        p->retry_at_ms = now + (r->retry_after_ms > RETRY_MS ? r->retry_after_ms : RETRY_MS);
        break;
    case CORRAL_EINTERNAL:
    case CORRAL_ESHUTDOWN:
        p->needs_send = true;
        p->retry_at_ms = now + w->hb_interval_ms;
        break;
    default:
        /* Refused for good (bad request, version...): sending it again cannot help. */
        finish_final(w, pp);
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
    pending_push(w, r);
}

/* Handles Dispatch d (borrowed): a new job for the queue and the running table. */
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
    if (rc != CORRAL_OK) {
        refuse_dispatch(w, d, rc);
        return;
    }
    j->tnext = w->table;
    w->table = j;
    pthread_mutex_lock(&w->mu);
    j->qnext = NULL;
    if (w->q_tail != NULL)
        w->q_tail->qnext = j;
    else
        w->q_head = j;
    w->q_tail = j;
    worker_efd_post(w->jobs_fd);
    pthread_cond_signal(&w->jobs_cond);
    pthread_mutex_unlock(&w->mu);
}

/* Whether a final report about (job, attempt) (borrowed) is pending. */
static bool
final_pending(const struct corral_worker *w, const char *job, uint32_t attempt)
{
    const struct req *r;

    for (r = w->pending; r != NULL; r = r->next)
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
            pending_push(w, ack);
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
    Corral__V1__Envelope *env = NULL;

    if (codec_unpack(data, len, &env) != CORRAL_OK)
        return;
    if (env->version != CORRAL_PROTOCOL_VERSION)
        goto out;
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
out:
    codec_envelope_free(&env);
}

/* Handles what is waiting on the socket. Returns 0, or CORRAL_EIO on a socket error. */
static int
drain(struct corral_worker *w)
{
    int i;
    uint64_t now = clock_mono_ms();

    for (i = 0; i < DRAIN_MAX; i++) {
        zmq_msg_t msg;
        bool more;

        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, w->sock, ZMQ_DONTWAIT) < 0) {
            int e = zmq_errno();

            zmq_msg_close(&msg);
            return e == EAGAIN || e == EINTR ? CORRAL_OK : CORRAL_EIO;
        }
        more = zmq_msg_more(&msg);
        if (!more)
            on_frame(w, zmq_msg_data(&msg), zmq_msg_size(&msg), now);
        /* A multipart message is not of this protocol: skip its frames. */
        while (more && zmq_msg_recv(&msg, w->sock, ZMQ_DONTWAIT) >= 0)
            more = zmq_msg_more(&msg);
        zmq_msg_close(&msg);
    }
    return CORRAL_OK;
}

/* Moves the API's queued requests to the pending list and drops Started requests their
 * caller gave up on. Returns whether the worker is stopping. */
static bool
take_requests(struct corral_worker *w)
{
    struct req **pp;
    bool stop;

    pthread_mutex_lock(&w->mu);
    while (w->out_head != NULL) {
        struct req *r = w->out_head;

        w->out_head = r->next;
        pending_push(w, r);
    }
    w->out_tail = NULL;
    for (pp = &w->pending; *pp != NULL;) {
        struct req *r = *pp;

        if (r->kind == REQ_STARTED && r->refs == 1) {
            *pp = r->next;
            worker_req_free(r);
        } else {
            pp = &r->next;
        }
    }
    stop = w->stop;
    pthread_mutex_unlock(&w->mu);
    return stop;
}

/* Whether a final report still waits for the broker. */
static bool
has_finals(const struct corral_worker *w)
{
    const struct req *r;

    for (r = w->pending; r != NULL; r = r->next)
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
        if (drain(w) != CORRAL_OK)
            break;
    }
    zmq_close(w->sock);
    w->sock = NULL;
    pthread_mutex_lock(&w->mu);
    w->closed = true;
    /* One extra count that nobody takes: the fd stays readable, and corral_worker_next
     * returns the queued jobs, then CORRAL_ECLOSED without blocking. */
    worker_efd_post(w->jobs_fd);
    pthread_cond_broadcast(&w->jobs_cond);
    pthread_cond_broadcast(&w->reply_cond);
    pthread_mutex_unlock(&w->mu);
    return NULL;
}
