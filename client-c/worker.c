/* worker.c - struct corral_worker and struct corral_job: the public API of corral.h's
 * worker section, run by API threads. Creating and freeing the worker (which starts and
 * joins the background thread of worker_thread.c), taking dispatched jobs from the queue,
 * the job accessors, queueing Started and final reports (retryable or not) for the thread,
 * and opening a group owned by a job through a client. API threads
 * never touch the socket. See worker_int.h for how the two sides meet. */
#include "worker_int.h"

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

#define WORKER_HWM         100000
#define STARTED_TIMEOUT_MS 5000
#define ZMTP_HB_IVL_MS     1000 /* libzmq's own pings detect a dead connection */
#define ZMTP_HB_TIMEOUT_MS 5000

/* ------------------------------------------------------------------ small helpers */

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

/* Appends r (takes ownership) to the API -> thread queue. Caller holds w->mu. Returns
 * whether the thread sleeps and must be woken: the caller then posts wake_fd, after
 * releasing w->mu. Only the first request after the thread fell asleep wakes it; an
 * awake thread takes the whole queue before it sleeps again. */
static bool
outq_push(struct corral_worker *w, struct req *r)
{
    bool wake = w->sleeping;

    r->next = NULL;
    if (w->out_tail != NULL)
        w->out_tail->next = r;
    else
        w->out_head = r;
    w->out_tail = r;
    w->sleeping = false;
    return wake;
}

/* Frees every request of list l (takes ownership of them). */
static void
free_list(struct reqlist *l)
{
    while (l->head != NULL) {
        struct req *r = l->head;

        l->head = r->next;
        worker_req_free(r);
    }
    l->tail = NULL;
    l->n = 0;
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
            worker_job_unref(w, j);
        }
        worker_table_clear(w);
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->jobs_cond);
        pthread_cond_destroy(&w->reply_cond);
    }
    free_list(&w->sendq);
    free_list(&w->inflight);
    free_list(&w->started);
    free(w->byid.slots);
    codec_arena_fini(&w->arena);
    codec_buf_fini(&w->out);
    while (w->out_head != NULL) {
        struct req *r = w->out_head;

        w->out_head = r->next;
        worker_req_free(r);
    }
    worker_snap_free(w->snap, w->nsnap);
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
        w->kinds[i] = worker_dup_str(kinds[i]);
        if (w->kinds[i] == NULL)
            return CORRAL_ENOMEM;
    }
    if (gethostname(host, sizeof host) != 0)
        strcpy(host, "unknown");
    host[sizeof host - 1] = '\0';
    snprintf(name, sizeof name, "%s:%ld", host, (long)getpid());
    w->name = worker_dup_str(name);
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
    w->jobs_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (w->wake_fd < 0 || w->jobs_fd < 0) {
        rc = CORRAL_EIO;
        goto out;
    }
    if ((rc = open_socket(w, endpoint)) != CORRAL_OK)
        goto out;
    /* The thread starts with every signal blocked, so a daemon's signalfd sees them. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&w->thread, NULL, worker_thread_main, w) == 0 ? CORRAL_OK : CORRAL_ENOMEM;
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
        worker_efd_post(w->wake_fd);
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
            if (w->q_head == NULL) {
                w->q_tail = NULL;
                worker_jobs_fd_sync(w); /* the last one: not readable any more */
            }
            j->qnext = NULL;
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

/* Borrowed; valid for the worker's life. From the first call on, the fd's state follows
 * the queue (see worker_int.h). w is const for the caller, but no worker is defined const
 * (they come from corral_worker_new), so the cast is sound. */
int
corral_worker_fd(const struct corral_worker *w)
{
    struct corral_worker *m = (struct corral_worker *)w;

    if (w == NULL)
        return -1;
    pthread_mutex_lock(&m->mu);
    if (!m->jobs_fd_used) {
        m->jobs_fd_used = true;
        worker_jobs_fd_sync(m);
    }
    pthread_mutex_unlock(&m->mu);
    return w->jobs_fd;
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

/* Borrows j; set once before the job is handed out, so safe from any thread. */
uint64_t
corral_job_deadline(const struct corral_job *j)
{
    return j->deadline_ms;
}

/* Borrows j; safe from any thread. */
bool
corral_job_cancelled(const struct corral_job *j)
{
    return atomic_load_explicit(&((struct corral_job *)j)->cancelled, memory_order_acquire);
}

/* Borrowed; readable from the cancel on. Made by the first call, under the worker's
 * mutex, which the thread holds when it marks a cancel: either the cancel comes after
 * and posts the fd, or it came before and the new fd is posted here. j is const for the
 * caller, but no job is defined const, so the cast is sound. -1 when no eventfd can be
 * made (the next call tries again). */
int
corral_job_cancel_fd(const struct corral_job *j)
{
    struct corral_job *m = (struct corral_job *)j;
    int fd = atomic_load_explicit(&m->cancel_fd, memory_order_acquire);

    if (fd >= 0)
        return fd;
    pthread_mutex_lock(&m->w->mu);
    fd = atomic_load_explicit(&m->cancel_fd, memory_order_relaxed);
    if (fd < 0) {
        fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (fd >= 0) {
            if (atomic_load_explicit(&m->cancelled, memory_order_relaxed))
                worker_efd_post(fd);
            atomic_store_explicit(&m->cancel_fd, fd, memory_order_release);
        }
    }
    pthread_mutex_unlock(&m->w->mu);
    return fd;
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
    bool last, wake = false;
    struct timespec ts;
    struct corral_worker *w;
    struct req *r;

    if (j == NULL || (value == NULL && len > 0))
        return CORRAL_EINVAL;
    w = j->w;
    r = worker_req_new(REQ_STARTED, j->id, j->attempt, value, len);
    if (r == NULL)
        return CORRAL_ENOMEM;
    r->refs = 2; /* this caller's and the thread's */
    pthread_mutex_lock(&w->mu);
    if (j->reported)
        rc = CORRAL_EWRONGSTATE;
    else if (w->closed || w->stop)
        rc = CORRAL_ECLOSED;
    else
        wake = outq_push(w, r);
    pthread_mutex_unlock(&w->mu);
    if (rc != CORRAL_OK) {
        worker_req_free(r);
        return rc;
    }
    if (wake)
        worker_efd_post(w->wake_fd);
    deadline_ts(&ts, STARTED_TIMEOUT_MS);
    pthread_mutex_lock(&w->mu);
    while (!r->answered && !w->closed)
        if (pthread_cond_timedwait(&w->reply_cond, &w->mu, &ts) == ETIMEDOUT)
            break;
    rc = r->answered ? r->code : w->closed ? CORRAL_ECLOSED : CORRAL_ETIMEDOUT;
    last = --r->refs == 0;
    if (!last)
        w->started_dropped++; /* the thread frees it (take_requests) */
    pthread_mutex_unlock(&w->mu);
    if (last)
        worker_req_free(r);
    return rc;
}

/* Queues r (takes ownership on success) as j's final report. */
static int
report(struct corral_job *j, struct req *r)
{
    int rc = CORRAL_OK;
    bool wake = false;
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
        wake = outq_push(w, r);
    }
    pthread_mutex_unlock(&w->mu);
    if (wake)
        worker_efd_post(w->wake_fd);
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
    r = worker_req_new(REQ_DONE, j->id, j->attempt, result, len);
    if (r == NULL)
        return CORRAL_ENOMEM;
    rc = report(j, r);
    if (rc != CORRAL_OK)
        worker_req_free(r);
    return rc;
}

/* Queues j's Failed report (type NULL: "Error", message NULL: "", details: all borrowed),
 * retryable or not. */
static int
report_failed(struct corral_job *j, const char *type, const char *message, const void *details,
              size_t len, bool retryable)
{
    int rc = CORRAL_OK;
    struct req *r = NULL;

    if (j == NULL || (details == NULL && len > 0))
        return CORRAL_EINVAL;
    r = worker_req_new(REQ_FAILED, j->id, j->attempt, details, len);
    if (r == NULL)
        return CORRAL_ENOMEM;
    r->type = worker_dup_str(type != NULL && type[0] != '\0' ? type : "Error");
    r->message = worker_dup_str(message);
    r->retryable = retryable;
    if (r->type == NULL || r->message == NULL) {
        rc = CORRAL_ENOMEM;
        goto out;
    }
    rc = report(j, r);
    if (rc == CORRAL_OK)
        r = NULL;
out:
    worker_req_free(r);
    return rc;
}

/* Borrows type (NULL: "Error"), message (NULL: "") and details. */
int
corral_job_fail(struct corral_job *j, const char *type, const char *message, const void *details,
                size_t len)
{
    return report_failed(j, type, message, details, len, false);
}

/* Borrows type (NULL: "Error"), message (NULL: "") and details; the broker tries the job
 * again while attempts remain. */
int
corral_job_fail_retryable(struct corral_job *j, const char *type, const char *message,
                          const void *details, size_t len)
{
    return report_failed(j, type, message, details, len, true);
}

/* Borrows j and scope; c is used as by any of its calls (its thread). */
int
corral_job_open_group(struct corral_job *j, struct corral_client *c,
                      const struct corral_scope *scope, char id_out[CORRAL_ID_MAX], bool *cancelled)
{
    if (j == NULL || c == NULL)
        return CORRAL_EINVAL;
    return corral_group_open_scoped(c, NULL, j->id, scope, id_out, cancelled);
}

/* Reports that the cancelled job has stopped. CORRAL_EWRONGSTATE before any cancel. */
int
corral_job_ack_cancel(struct corral_job *j)
{
    int rc;
    struct req *r;

    if (j == NULL)
        return CORRAL_EINVAL;
    r = worker_req_new(REQ_CANCEL_ACK, j->id, j->attempt, NULL, 0);
    if (r == NULL)
        return CORRAL_ENOMEM;
    rc = report(j, r);
    if (rc != CORRAL_OK)
        worker_req_free(r);
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
    bool last, wake = false;

    if (p == NULL || *p == NULL)
        return;
    j = *p;
    w = j->w;
    if (corral_job_cancelled(j))
        ack = worker_req_new(REQ_CANCEL_ACK, j->id, j->attempt, NULL, 0);
    pthread_mutex_lock(&w->mu);
    if (!j->reported) {
        j->abandoned = true;
        if (ack != NULL && !w->closed) {
            j->reported = true;
            wake = outq_push(w, ack);
            ack = NULL;
        }
    }
    last = --j->refs == 0;
    pthread_mutex_unlock(&w->mu);
    if (wake)
        worker_efd_post(w->wake_fd);
    worker_req_free(ack);
    if (last)
        worker_job_destroy(j);
    *p = NULL;
}
