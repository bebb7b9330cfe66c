/* worker.c - struct corral_worker and struct corral_job: serving job kinds.
 *
 * A background thread owns the DEALER socket (zmq sockets are not thread-safe; API
 * threads never touch it). It registers with Ready, heartbeats every interval whatever
 * the API user does, turns Dispatch into jobs and Cancel into flags, and delivers the
 * API's reports. API threads and the thread meet under one mutex:
 *   - reports go out through a queue (outq) and an eventfd the thread polls (wake_fd);
 *   - dispatched jobs come in through a queue and an EFD_SEMAPHORE eventfd (jobs_fd)
 *     whose counter always equals the queue's length (both change under the mutex), so
 *     it is readable exactly while a job is waiting.
 * Final reports (Done, Failed, CancelAck) are kept until the broker replies, re-sent after
 * a timeout and after every re-registration. A job record is shared by the running table
 * and its holder (refcount under the mutex), so freeing a job while a Cancel arrives for
 * it is safe. */
#include "clock.h"
#include "codec.h"
#include "corral.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define WORKER_HWM             100000
#define HB_INTERVAL_DEFAULT_MS 1000 /* until the broker says otherwise */
#define HB_INTERVAL_MIN_MS     10
#define HB_TIMEOUT_FACTOR      3 /* timeout default: this many intervals */
#define STARTED_TIMEOUT_MS     5000
#define FLUSH_MS               2000 /* corral_worker_free: delivering unacknowledged reports */
#define RETRY_MS               100  /* a send that could not go out: try again after */
#define WAKE_MAX_MS            1000 /* the thread looks at its timers at least this often */
#define DRAIN_MAX              256  /* frames handled per wake-up */
#define ZMTP_HB_IVL_MS         1000 /* libzmq's own pings detect a dead connection */
#define ZMTP_HB_TIMEOUT_MS     5000
#define TRUNCATED_MESSAGE_MAX  256 /* a Failed message refused as too large is cut to this */

enum req_kind { REQ_STARTED, REQ_DONE, REQ_FAILED, REQ_CANCEL_ACK };

/* A request about a job: queued by an API thread (or made by the thread), then owned by
 * the thread until the broker's reply. A Started request is shared with the API thread
 * that waits for its answer (refs, answered and code under w->mu). */
struct req {
    struct req *next;
    enum req_kind kind;
    char *job; /* owned */
    uint32_t attempt;
    uint8_t *data; /* value, result or details: owned, NULL when empty */
    size_t len;
    char *type;    /* Failed: owned */
    char *message; /* Failed: owned */
    /* thread only */
    uint64_t request_id; /* of the last send; 0: never sent */
    uint64_t sent_ms;
    uint64_t retry_at_ms; /* not sent again before */
    bool needs_send;
    /* Started, under w->mu */
    int refs;
    bool answered;
    int code;
};

struct corral_job {
    struct corral_worker *w; /* borrowed: jobs are freed before their worker */
    char *id;
    uint32_t attempt;
    char *kind;
    char *group;
    uint8_t *payload; /* NUL-terminated, never NULL */
    size_t payload_len;
    int cancel_fd;
    atomic_bool cancelled;
    /* Written once by the thread under w->mu before cancelled is set (release), read
     * after cancelled is seen (acquire). */
    enum corral_cancel_source source;
    char *reason;
    /* under w->mu */
    int refs;                 /* the running table's, and the holder's (the queue's before) */
    bool reported;            /* a final report has been queued */
    bool abandoned;           /* its holder freed it without a report */
    struct corral_job *qnext; /* dispatch queue */
    /* thread only */
    struct corral_job *tnext; /* running table */
};

/* One job announced in the last Ready, to compare with the reply's reclaimed list. */
struct snap {
    char *job; /* owned */
    uint32_t attempt;
};

struct corral_worker {
    void *ctx;
    void *sock; /* the thread's once it has started */
    pthread_t thread;
    bool thread_started;
    bool sync_ready; /* mu and the conds are initialised */
    int wake_fd;     /* API -> thread */
    int jobs_fd;     /* readable while jobs are queued */
    char **kinds;
    size_t nkinds;
    unsigned concurrency;
    char *name;
    pthread_mutex_t mu;
    pthread_cond_t jobs_cond;  /* a job was queued, or the thread ended */
    pthread_cond_t reply_cond; /* a Started was answered, or the thread ended */
    /* under mu */
    struct corral_job *q_head, *q_tail;
    struct req *out_head, *out_tail;
    bool stop;
    bool closed;
    /* thread only */
    struct corral_job *table;
    struct req *pending;
    uint64_t last_id;
    uint64_t ready_id; /* the last Ready sent; 0: none in flight or answered */
    uint64_t ready_sent_ms;
    uint64_t next_ready_ms;
    bool registered;
    struct snap *snap;
    size_t nsnap;
    uint32_t hb_interval_ms;
    uint32_t hb_timeout_ms;
    uint64_t next_hb_ms;
    bool blocked; /* a send met a full or unconnected socket */
};

/* ------------------------------------------------------------------ small helpers */

/* Returns an owned copy of s (borrowed; NULL reads as ""), or NULL when out of memory. */
static char *
dup_str(const char *s)
{
    size_t n;
    char *r;

    if (s == NULL)
        s = "";
    n = strlen(s);
    r = malloc(n + 1);
    if (r != NULL)
        memcpy(r, s, n + 1);
    return r;
}

/* The smaller of a and b. */
static uint64_t
min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/* Adds one to eventfd fd (borrowed). */
static void
efd_post(int fd)
{
    uint64_t one = 1;
    ssize_t n = write(fd, &one, sizeof one);

    (void)n; /* cannot fail short of a counter overflow */
}

/* Takes the value (or one, for a semaphore) from eventfd fd, without blocking. */
static void
efd_take(int fd)
{
    uint64_t v;
    ssize_t n = read(fd, &v, sizeof v);

    (void)n;
}

/* Fills *ts with the CLOCK_MONOTONIC time ms milliseconds from now. */
static void
deadline_ts(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Maps a wire cancel source to the library's; unknown values read as NONE. */
static enum corral_cancel_source
map_source(int v)
{
    return v >= CORRAL_SOURCE_NONE && v <= CORRAL_SOURCE_PARENT ? (enum corral_cancel_source)v
                                                                : CORRAL_SOURCE_NONE;
}

/* ------------------------------------------------------------------ requests */

/* Frees r (takes ownership); accepts NULL. */
static void
req_free(struct req *r)
{
    if (r == NULL)
        return;
    free(r->job);
    free(r->data);
    free(r->type);
    free(r->message);
    free(r);
}

/* Returns an owned request of the given kind about (job, attempt) (borrowed) carrying a
 * copy of data (borrowed; may be NULL when len is 0), or NULL when out of memory. */
static struct req *
req_new(enum req_kind kind, const char *job, uint32_t attempt, const void *data, size_t len)
{
    bool ok = false;
    struct req *r = calloc(1, sizeof *r);

    if (r == NULL)
        return NULL;
    r->kind = kind;
    r->attempt = attempt;
    r->needs_send = true;
    r->refs = 1;
    r->job = dup_str(job);
    if (r->job == NULL)
        goto out;
    if (len > 0) {
        r->data = codec_dup_bytes(data, len);
        if (r->data == NULL)
            goto out;
        r->len = len;
    }
    ok = true;
out:
    if (!ok) {
        req_free(r);
        r = NULL;
    }
    return r;
}

/* Appends r (takes ownership) to the API -> thread queue. Caller holds w->mu. */
static void
outq_push(struct corral_worker *w, struct req *r)
{
    r->next = NULL;
    if (w->out_tail != NULL)
        w->out_tail->next = r;
    else
        w->out_head = r;
    w->out_tail = r;
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

/* Frees a job whose last reference is gone (takes ownership). */
static void
job_destroy(struct corral_job *j)
{
    if (j->cancel_fd >= 0)
        close(j->cancel_fd);
    free(j->id);
    free(j->kind);
    free(j->group);
    free(j->payload);
    free(j->reason);
    free(j);
}

/* Drops one reference to j; frees it with the last. */
static void
job_unref(struct corral_worker *w, struct corral_job *j)
{
    bool last;

    pthread_mutex_lock(&w->mu);
    last = --j->refs == 0;
    pthread_mutex_unlock(&w->mu);
    if (last)
        job_destroy(j);
}

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
    j->id = dup_str(d->job);
    j->kind = dup_str(d->kind);
    j->group = dup_str(d->group);
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
        job_destroy(j);
    return rc;
}

/* Marks j cancelled with source and reason (borrowed; NULL: none) unless it already is,
 * and makes its cancel fd readable for good. Caller holds w->mu. */
static void
job_mark_cancelled(struct corral_job *j, enum corral_cancel_source source, const char *reason)
{
    if (atomic_load_explicit(&j->cancelled, memory_order_relaxed))
        return;
    j->source = source;
    j->reason = dup_str(reason); /* NULL when out of memory: reads as "" */
    atomic_store_explicit(&j->cancelled, true, memory_order_release);
    efd_post(j->cancel_fd);
}

/* The running table's job (id, attempt) (borrowed), or NULL. Thread only. */
static struct corral_job *
table_find(struct corral_worker *w, const char *id, uint32_t attempt)
{
    struct corral_job *j;

    for (j = w->table; j != NULL; j = j->tnext)
        if (j->attempt == attempt && strcmp(j->id, id) == 0)
            return j;
    return NULL;
}

/* Removes job (id, attempt) from the running table, dropping the table's reference. */
static void
table_remove(struct corral_worker *w, const char *id, uint32_t attempt)
{
    struct corral_job **pp;

    for (pp = &w->table; *pp != NULL; pp = &(*pp)->tnext) {
        struct corral_job *j = *pp;

        if (j->attempt == attempt && strcmp(j->id, id) == 0) {
            *pp = j->tnext;
            job_unref(w, j);
            return;
        }
    }
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

/* Frees the snapshot array s of n entries (takes ownership). */
static void
snap_free(struct snap *s, size_t n)
{
    size_t i;

    for (i = 0; i < n && s != NULL; i++)
        free(s[i].job);
    free(s);
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
        snap[i].job = dup_str(j->id);
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
    snap_free(w->snap, w->nsnap);
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
    snap_free(snap, n);
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
        req_free(r);
}

/* Ends final report *pp (unlinked and freed) and the job's place in the running table. */
static void
finish_final(struct corral_worker *w, struct req **pp)
{
    struct req *r = *pp;

    *pp = r->next;
    table_remove(w, r->job, r->attempt);
    req_free(r);
}

/* Rewrites a report the broker refused as too large into a smaller one that can end the
 * job. Returns whether there is something new to send. */
static bool
shrink_report(struct req *r)
{
    char msg[160];

    if (r->kind == REQ_DONE) {
        char *type = dup_str("ResultTooLarge");
        char *message;

        snprintf(msg, sizeof msg, "the job's result (%zu bytes) is over the broker's size limit",
                 r->len);
        message = dup_str(msg);
        if (type == NULL || message == NULL) {
            free(type);
            free(message);
            return false;
        }
        free(r->data);
        r->data = NULL;
        r->len = 0;
        r->kind = REQ_FAILED;
        r->type = type;
        r->message = message;
        return true;
    }
    if (r->kind == REQ_FAILED && (r->len > 0 || strlen(r->message) > TRUNCATED_MESSAGE_MAX)) {
        size_t cut = TRUNCATED_MESSAGE_MAX;

        free(r->data);
        r->data = NULL;
        r->len = 0;
        if (strlen(r->message) > cut) {
            /* Cut on a UTF-8 character boundary. */
            while (cut > 0 && ((unsigned char)r->message[cut] & 0xC0) == 0x80)
                cut--;
            r->message[cut] = '\0';
        }
        return true;
    }
    return false;
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
        j = table_find(w, w->snap[i].job, w->snap[i].attempt);
        if (j == NULL)
            continue;
        pthread_mutex_lock(&w->mu);
        if (j->reported)
            ; /* its report settles it */
        else if (j->abandoned)
            drop = true; /* nobody runs it here, and the broker no longer expects it */
        else
            job_mark_cancelled(j, CORRAL_SOURCE_NONE, "not reclaimed by the broker");
        pthread_mutex_unlock(&w->mu);
        if (drop)
            table_remove(w, w->snap[i].job, w->snap[i].attempt);
    }
    snap_free(w->snap, w->nsnap);
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
        if (shrink_report(p)) {
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
    struct req *r = req_new(REQ_FAILED, d->job, d->attempt, NULL, 0);

    if (r == NULL)
        return; /* the broker will cancel it, and the unknown job is acknowledged */
    snprintf(msg, sizeof msg, "the worker could not accept the job: %s", corral_strerror(rc));
    r->type = dup_str("WorkerError");
    r->message = dup_str(msg);
    if (r->type == NULL || r->message == NULL) {
        req_free(r);
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
    if (table_find(w, d->job, d->attempt) != NULL)
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
    efd_post(w->jobs_fd);
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
    j = table_find(w, c->job, c->attempt);
    if (j == NULL) {
        if (!final_pending(w, c->job, c->attempt))
            send_cancel_ack_now(w, c->job, c->attempt); /* not running here */
        return;
    }
    ack = req_new(REQ_CANCEL_ACK, j->id, j->attempt, NULL, 0);
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
        job_mark_cancelled(j, map_source((int)c->source), c->reason);
    }
    pthread_mutex_unlock(&w->mu);
    req_free(ack);
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
            req_free(r);
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
static void *
worker_main(void *arg)
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
            efd_take(w->wake_fd);
        if (drain(w) != CORRAL_OK)
            break;
    }
    zmq_close(w->sock);
    w->sock = NULL;
    pthread_mutex_lock(&w->mu);
    w->closed = true;
    /* One extra count that nobody takes: the fd stays readable, and corral_worker_next
     * returns the queued jobs, then CORRAL_ECLOSED without blocking. */
    efd_post(w->jobs_fd);
    pthread_cond_broadcast(&w->jobs_cond);
    pthread_cond_broadcast(&w->reply_cond);
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* ------------------------------------------------------------------ lifetime */

/* Frees w and everything it still holds (takes ownership); the thread has ended or never
 * started. Jobs their holders did not free are leaked. */
static void
worker_destroy(struct corral_worker *w)
{
    size_t i;

    if (w->sock != NULL)
        zmq_close(w->sock);
    if (w->ctx != NULL)
        zmq_ctx_term(w->ctx);
    if (w->sync_ready) {
        while (w->q_head != NULL) {
            struct corral_job *j = w->q_head;

            w->q_head = j->qnext;
            job_unref(w, j);
        }
        while (w->table != NULL) {
            struct corral_job *j = w->table;

            w->table = j->tnext;
            job_unref(w, j);
        }
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->jobs_cond);
        pthread_cond_destroy(&w->reply_cond);
    }
    while (w->pending != NULL) {
        struct req *r = w->pending;

        w->pending = r->next;
        req_free(r);
    }
    while (w->out_head != NULL) {
        struct req *r = w->out_head;

        w->out_head = r->next;
        req_free(r);
    }
    snap_free(w->snap, w->nsnap);
    for (i = 0; i < w->nkinds && w->kinds != NULL; i++)
        free(w->kinds[i]);
    free(w->kinds);
    free(w->name);
    if (w->wake_fd >= 0)
        close(w->wake_fd);
    if (w->jobs_fd >= 0)
        close(w->jobs_fd);
    free(w);
}

/* Initialises w's mutex and condition variables (on CLOCK_MONOTONIC). Returns 0 or
 * CORRAL_ENOMEM. */
static int
sync_init(struct corral_worker *w)
{
    pthread_condattr_t attr;
    int rc = CORRAL_ENOMEM;

    if (pthread_condattr_init(&attr) != 0)
        return CORRAL_ENOMEM;
    if (pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) != 0)
        goto out;
    if (pthread_mutex_init(&w->mu, NULL) != 0)
        goto out;
    if (pthread_cond_init(&w->jobs_cond, &attr) != 0) {
        pthread_mutex_destroy(&w->mu);
        goto out;
    }
    if (pthread_cond_init(&w->reply_cond, &attr) != 0) {
        pthread_cond_destroy(&w->jobs_cond);
        pthread_mutex_destroy(&w->mu);
        goto out;
    }
    w->sync_ready = true;
    rc = CORRAL_OK;
out:
    pthread_condattr_destroy(&attr);
    return rc;
}

/* Copies kinds (borrowed) and builds the worker's name ("host:pid") into w. */
static int
copy_identity(struct corral_worker *w, const char *const *kinds, size_t nkinds)
{
    char host[256], name[300];
    size_t i;

    w->kinds = calloc(nkinds, sizeof *w->kinds);
    if (w->kinds == NULL)
        return CORRAL_ENOMEM;
    w->nkinds = nkinds;
    for (i = 0; i < nkinds; i++) {
        w->kinds[i] = dup_str(kinds[i]);
        if (w->kinds[i] == NULL)
            return CORRAL_ENOMEM;
    }
    if (gethostname(host, sizeof host) != 0)
        strcpy(host, "unknown");
    host[sizeof host - 1] = '\0';
    snprintf(name, sizeof name, "%s:%ld", host, (long)getpid());
    w->name = dup_str(name);
    return w->name != NULL ? CORRAL_OK : CORRAL_ENOMEM;
}

/* Creates w's socket and connects it to endpoint (borrowed). */
static int
open_socket(struct corral_worker *w, const char *endpoint)
{
    int hwm = WORKER_HWM, zero = 0, one = 1;
    int ivl = ZMTP_HB_IVL_MS, hbt = ZMTP_HB_TIMEOUT_MS;

    w->ctx = zmq_ctx_new();
    if (w->ctx == NULL)
        return CORRAL_EIO;
    w->sock = zmq_socket(w->ctx, ZMQ_DEALER);
    if (w->sock == NULL)
        return CORRAL_EIO;
    /* ZMQ_IMMEDIATE: nothing piles up for a broker that is down; the thread re-sends
     * what matters once it is back. */
    if (zmq_setsockopt(w->sock, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
        zmq_setsockopt(w->sock, ZMQ_SNDHWM, &hwm, sizeof hwm) != 0 ||
        zmq_setsockopt(w->sock, ZMQ_RCVHWM, &hwm, sizeof hwm) != 0 ||
        zmq_setsockopt(w->sock, ZMQ_IMMEDIATE, &one, sizeof one) != 0 ||
        zmq_setsockopt(w->sock, ZMQ_HEARTBEAT_IVL, &ivl, sizeof ivl) != 0 ||
        zmq_setsockopt(w->sock, ZMQ_HEARTBEAT_TIMEOUT, &hbt, sizeof hbt) != 0)
        return CORRAL_EIO;
    if (zmq_connect(w->sock, endpoint != NULL ? endpoint : CORRAL_DEFAULT_WORKER_ENDPOINT) != 0)
        return CORRAL_EINVAL;
    return CORRAL_OK;
}

/* Borrows endpoint and kinds; returns owned *out with its thread running. */
int
corral_worker_new(struct corral_worker **out, const char *endpoint, const char *const *kinds,
                  size_t nkinds, unsigned concurrency)
{
    int rc;
    size_t i;
    sigset_t all, old;
    struct corral_worker *w = NULL;

    if (out == NULL || kinds == NULL || nkinds == 0 || concurrency == 0)
        return CORRAL_EINVAL;
    for (i = 0; i < nkinds; i++)
        if (kinds[i] == NULL || kinds[i][0] == '\0')
            return CORRAL_EINVAL;
    w = calloc(1, sizeof *w);
    if (w == NULL)
        return CORRAL_ENOMEM;
    w->wake_fd = -1;
    w->jobs_fd = -1;
    w->concurrency = concurrency;
    w->hb_interval_ms = HB_INTERVAL_DEFAULT_MS;
    w->hb_timeout_ms = HB_INTERVAL_DEFAULT_MS * HB_TIMEOUT_FACTOR;
    if ((rc = sync_init(w)) != CORRAL_OK || (rc = copy_identity(w, kinds, nkinds)) != CORRAL_OK)
        goto out;
    w->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    w->jobs_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK | EFD_SEMAPHORE);
    if (w->wake_fd < 0 || w->jobs_fd < 0) {
        rc = CORRAL_EIO;
        goto out;
    }
    if ((rc = open_socket(w, endpoint)) != CORRAL_OK)
        goto out;
    /* The thread starts with every signal blocked, so a daemon's signalfd sees them. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&w->thread, NULL, worker_main, w) == 0 ? CORRAL_OK : CORRAL_ENOMEM;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != CORRAL_OK)
        goto out;
    w->thread_started = true;
    *out = w;
    w = NULL;
out:
    if (w != NULL)
        worker_destroy(w);
    return rc;
}

/* Stops the thread (after it has tried for up to FLUSH_MS to deliver unacknowledged final
 * reports) and frees the worker. Accepts NULL, sets *p to NULL. */
void
corral_worker_free(struct corral_worker **p)
{
    struct corral_worker *w;

    if (p == NULL || *p == NULL)
        return;
    w = *p;
    if (w->thread_started) {
        pthread_mutex_lock(&w->mu);
        w->stop = true;
        pthread_mutex_unlock(&w->mu);
        efd_post(w->wake_fd);
        pthread_join(w->thread, NULL);
    }
    worker_destroy(w);
    *p = NULL;
}

/* ------------------------------------------------------------------ API: jobs */

/* Returns the next queued job owned in *out. */
int
corral_worker_next(struct corral_worker *w, int timeout_ms, struct corral_job **out)
{
    int rc = CORRAL_OK;
    bool timed_out = false;
    struct timespec ts;

    if (w == NULL || out == NULL)
        return CORRAL_EINVAL;
    if (timeout_ms > 0)
        deadline_ts(&ts, timeout_ms);
    pthread_mutex_lock(&w->mu);
    for (;;) {
        if (w->q_head != NULL) {
            struct corral_job *j = w->q_head;

            w->q_head = j->qnext;
            if (w->q_head == NULL)
                w->q_tail = NULL;
            j->qnext = NULL;
            efd_take(w->jobs_fd); /* the semaphore follows the queue's length */
            *out = j;
            break;
        }
        if (w->closed) {
            rc = CORRAL_ECLOSED;
            break;
        }
        if (timeout_ms == 0 || timed_out) {
            rc = CORRAL_ETIMEDOUT;
            break;
        }
        if (timeout_ms < 0)
            pthread_cond_wait(&w->jobs_cond, &w->mu);
        else if (pthread_cond_timedwait(&w->jobs_cond, &w->mu, &ts) == ETIMEDOUT)
            timed_out = true;
    }
    pthread_mutex_unlock(&w->mu);
    return rc;
}

/* Borrowed; valid for the worker's life. */
int
corral_worker_fd(const struct corral_worker *w)
{
    return w != NULL ? w->jobs_fd : -1;
}

/* Borrowed for the job's life. */
const char *
corral_job_id(const struct corral_job *j)
{
    return j->id;
}

/* Borrows j. */
uint32_t
corral_job_attempt(const struct corral_job *j)
{
    return j->attempt;
}

/* Borrowed for the job's life. */
const char *
corral_job_kind(const struct corral_job *j)
{
    return j->kind;
}

/* Borrowed for the job's life. */
const char *
corral_job_group(const struct corral_job *j)
{
    return j->group;
}

/* Borrowed for the job's life; NUL-terminated (not counted in *len), never NULL. */
const void *
corral_job_payload(const struct corral_job *j, size_t *len)
{
    if (len != NULL)
        *len = j->payload_len;
    return j->payload;
}

/* Borrows j; safe from any thread. */
bool
corral_job_cancelled(const struct corral_job *j)
{
    return atomic_load_explicit(&((struct corral_job *)j)->cancelled, memory_order_acquire);
}

/* Borrowed; readable from the cancel on. */
int
corral_job_cancel_fd(const struct corral_job *j)
{
    return j->cancel_fd;
}

/* Borrows j; CORRAL_SOURCE_NONE before a cancel, and for a job the broker did not give back
 * after a reconnect (cancelled locally, reason "not reclaimed by the broker"). */
enum corral_cancel_source
corral_job_cancel_source(const struct corral_job *j)
{
    return corral_job_cancelled(j) ? j->source : CORRAL_SOURCE_NONE;
}

/* Borrowed for the job's life; "" when none. */
const char *
corral_job_cancel_reason(const struct corral_job *j)
{
    if (!corral_job_cancelled(j) || j->reason == NULL)
        return "";
    return j->reason;
}

/* Borrows value; blocks until the broker answers or STARTED_TIMEOUT_MS pass. */
int
corral_job_started(struct corral_job *j, const void *value, size_t len)
{
    int rc = CORRAL_OK;
    bool last;
    struct timespec ts;
    struct corral_worker *w;
    struct req *r;

    if (j == NULL || (value == NULL && len > 0))
        return CORRAL_EINVAL;
    w = j->w;
    r = req_new(REQ_STARTED, j->id, j->attempt, value, len);
    if (r == NULL)
        return CORRAL_ENOMEM;
    r->refs = 2; /* this caller's and the thread's */
    pthread_mutex_lock(&w->mu);
    if (j->reported)
        rc = CORRAL_EWRONGSTATE;
    else if (w->closed || w->stop)
        rc = CORRAL_ECLOSED;
    else
        outq_push(w, r);
    pthread_mutex_unlock(&w->mu);
    if (rc != CORRAL_OK) {
        req_free(r);
        return rc;
    }
    efd_post(w->wake_fd);
    deadline_ts(&ts, STARTED_TIMEOUT_MS);
    pthread_mutex_lock(&w->mu);
    while (!r->answered && !w->closed)
        if (pthread_cond_timedwait(&w->reply_cond, &w->mu, &ts) == ETIMEDOUT)
            break;
    rc = r->answered ? r->code : w->closed ? CORRAL_ECLOSED : CORRAL_ETIMEDOUT;
    last = --r->refs == 0;
    pthread_mutex_unlock(&w->mu);
    if (last)
        req_free(r);
    return rc;
}

/* Queues r (takes ownership on success) as j's final report. */
static int
report(struct corral_job *j, struct req *r)
{
    int rc = CORRAL_OK;
    struct corral_worker *w = j->w;

    pthread_mutex_lock(&w->mu);
    if (j->reported)
        rc = CORRAL_EWRONGSTATE;
    else if (r->kind == REQ_CANCEL_ACK &&
             !atomic_load_explicit(&j->cancelled, memory_order_relaxed))
        rc = CORRAL_EWRONGSTATE; /* nothing to acknowledge yet */
    else if (w->closed || w->stop)
        rc = CORRAL_ECLOSED;
    else {
        j->reported = true;
        outq_push(w, r);
    }
    pthread_mutex_unlock(&w->mu);
    if (rc == CORRAL_OK)
        efd_post(w->wake_fd);
    return rc;
}

/* Borrows result; returns once the report is queued. */
int
corral_job_done(struct corral_job *j, const void *result, size_t len)
{
    int rc;
    struct req *r;

    if (j == NULL || (result == NULL && len > 0))
        return CORRAL_EINVAL;
    r = req_new(REQ_DONE, j->id, j->attempt, result, len);
    if (r == NULL)
        return CORRAL_ENOMEM;
    rc = report(j, r);
    if (rc != CORRAL_OK)
        req_free(r);
    return rc;
}

/* Borrows type (NULL: "Error"), message (NULL: "") and details. */
int
corral_job_fail(struct corral_job *j, const char *type, const char *message, const void *details,
                size_t len)
{
    int rc = CORRAL_OK;
    struct req *r = NULL;

    if (j == NULL || (details == NULL && len > 0))
        return CORRAL_EINVAL;
    r = req_new(REQ_FAILED, j->id, j->attempt, details, len);
    if (r == NULL)
        return CORRAL_ENOMEM;
    r->type = dup_str(type != NULL && type[0] != '\0' ? type : "Error");
    r->message = dup_str(message);
    if (r->type == NULL || r->message == NULL) {
        rc = CORRAL_ENOMEM;
        goto out;
    }
    rc = report(j, r);
    if (rc == CORRAL_OK)
        r = NULL;
out:
    req_free(r);
    return rc;
}

/* Reports that the cancelled job has stopped. CORRAL_EWRONGSTATE before any cancel. */
int
corral_job_ack_cancel(struct corral_job *j)
{
    int rc;
    struct req *r;

    if (j == NULL)
        return CORRAL_EINVAL;
    r = req_new(REQ_CANCEL_ACK, j->id, j->attempt, NULL, 0);
    if (r == NULL)
        return CORRAL_ENOMEM;
    rc = report(j, r);
    if (rc != CORRAL_OK)
        req_free(r);
    return rc;
}

/* Drops the holder's reference (takes ownership). A job freed after its cancel without a
 * report is acknowledged as stopped; one freed before stays RUNNING at the broker until
 * it is cancelled (then acknowledged) or its worker is lost. Accepts NULL, sets NULL. */
void
corral_job_free(struct corral_job **p)
{
    struct corral_job *j;
    struct corral_worker *w;
    struct req *ack = NULL;
    bool last, queued = false;

    if (p == NULL || *p == NULL)
        return;
    j = *p;
    w = j->w;
    if (corral_job_cancelled(j))
        ack = req_new(REQ_CANCEL_ACK, j->id, j->attempt, NULL, 0);
    pthread_mutex_lock(&w->mu);
    if (!j->reported) {
        j->abandoned = true;
        if (ack != NULL && !w->closed) {
            j->reported = true;
            outq_push(w, ack);
            ack = NULL;
            queued = true;
        }
    }
    last = --j->refs == 0;
    pthread_mutex_unlock(&w->mu);
    if (queued)
        efd_post(w->wake_fd);
    req_free(ack);
    if (last)
        job_destroy(j);
    *p = NULL;
}
