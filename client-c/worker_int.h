/* worker_int.h - internal to libcorral (not installed): the parts of struct corral_worker.
 *
 * A background thread (worker_thread.c) owns the DEALER socket (zmq sockets are not
 * thread-safe; API threads never touch it). It registers with Ready, heartbeats every
 * interval whatever the API user does, turns Dispatch into jobs and Cancel into flags, and
 * delivers the API's reports. API threads (worker.c) and the thread meet under one mutex:
 *   - reports go out through a queue (outq) and an eventfd the thread polls (wake_fd);
 *   - dispatched jobs come in through a queue and an EFD_SEMAPHORE eventfd (jobs_fd)
 *     whose counter always equals the queue's length (both change under the mutex), so
 *     it is readable exactly while a job is waiting.
 * Final reports (Done, Failed, CancelAck) are kept until the broker replies, re-sent after
 * a timeout and after every re-registration. A job record is shared by the running table
 * and its holder (refcount under the mutex), so freeing a job while a Cancel arrives for
 * it is safe. The records both sides share (jobs, requests, the Ready snapshot) live in
 * worker_records.c. */
#ifndef CORRAL_WORKER_INT_H
#define CORRAL_WORKER_INT_H

#include "corral.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HB_INTERVAL_DEFAULT_MS 1000 /* until the broker says otherwise */
#define HB_TIMEOUT_FACTOR      3    /* timeout default: this many intervals */

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

/* ------------------------------------------------------------------ worker_records.c */

/* Returns an owned copy of s (borrowed; NULL reads as ""), or NULL when out of memory. */
char *worker_dup_str(const char *s);

/* Adds one to eventfd fd (borrowed). */
void worker_efd_post(int fd);

/* Takes the value (or one, for a semaphore) from eventfd fd (borrowed), without blocking. */
void worker_efd_take(int fd);

/* Frees r (takes ownership); accepts NULL. */
void worker_req_free(struct req *r);

/* Returns an owned request of the given kind about (job, attempt) (borrowed) carrying a
 * copy of data (borrowed; may be NULL when len is 0), or NULL when out of memory. Its
 * refs is 1 and it needs sending. */
struct req *worker_req_new(enum req_kind kind, const char *job, uint32_t attempt, const void *data,
                           size_t len);

/* Rewrites r (borrowed), a report the broker refused as too large, into a smaller one
 * that can end the job. Returns whether there is something new to send. */
bool worker_req_shrink(struct req *r);

/* Frees a job whose last reference is gone (takes ownership). */
void worker_job_destroy(struct corral_job *j);

/* Drops one reference to j (takes that reference; w borrowed) under w->mu; frees j with
 * the last. Caller does not hold w->mu. */
void worker_job_unref(struct corral_worker *w, struct corral_job *j);

/* Marks j (borrowed) cancelled with source and reason (borrowed; NULL: none) unless it
 * already is, and makes its cancel fd readable for good. Caller holds w->mu. */
void worker_job_mark_cancelled(struct corral_job *j, enum corral_cancel_source source,
                               const char *reason);

/* The running table's job (id, attempt) (borrowed), returned borrowed, or NULL. Thread
 * only. */
struct corral_job *worker_table_find(struct corral_worker *w, const char *id, uint32_t attempt);

/* Removes job (id, attempt) (borrowed) from the running table, dropping the table's
 * reference (worker_job_unref). Thread only; caller does not hold w->mu. */
void worker_table_remove(struct corral_worker *w, const char *id, uint32_t attempt);

/* Frees the snapshot array s of n entries (takes ownership); accepts NULL. */
void worker_snap_free(struct snap *s, size_t n);

/* ------------------------------------------------------------------ worker_thread.c */

/* The background thread's body (pthread_create; borrows arg, a struct corral_worker whose
 * socket it owns from now on): runs until w->stop is set (then tries for up to FLUSH_MS
 * to deliver final reports) or the socket fails; then closes the socket, sets w->closed
 * and wakes every waiter. Returns NULL. */
void *worker_thread_main(void *arg);

#endif
