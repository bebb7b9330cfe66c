/* worker_int.h - internal to libcorral (not installed): the parts of struct corral_worker.
 *
 * A background thread (worker_thread.c) owns the DEALER socket (zmq sockets are not
 * thread-safe; API threads never touch it). It registers with Ready, heartbeats every
 * interval whatever the API user does, turns Dispatch into jobs and Cancel into flags, and
 * delivers the API's reports. API threads (worker.c) and the thread meet under one mutex:
 *   - reports go out through a queue (outq) and an eventfd the thread polls (wake_fd),
 *     written only when the thread sleeps (or is about to) with nothing queued: a thread
 *     that is awake takes the whole queue before it sleeps again;
 *   - dispatched jobs come in through a queue (filled a drained batch at a time) and a
 *     condition variable; the eventfd jobs_fd is readable exactly while a job is queued or
 *     the worker has closed, kept so (under the mutex) from the first corral_worker_fd
 *     call on: before it, nobody can poll it, and it costs nothing;
 *   - a job's cancel eventfd is made by the first corral_job_cancel_fd call (under the
 *     mutex, readable at once if the job is already cancelled); corral_job_cancelled reads
 *     an atomic flag.
 * Final reports (Done, Failed, CancelAck) are kept until the broker replies, re-sent after
 * a timeout and after every re-registration. The thread keeps its requests on three lists
 * (to send; finals in flight, oldest first; Started in flight) and indexes them by request
 * id, and its running jobs in a hash table by (id, attempt), so that each job costs O(1).
 * A job record is shared by the running table and its holder (refcount under the mutex),
 * so freeing a job while a Cancel arrives for it is safe. The records both sides share
 * (jobs, requests, the Ready snapshot) and the thread's indexes live in
 * worker_records.c. */
#ifndef CORRAL_WORKER_INT_H
#define CORRAL_WORKER_INT_H

#include "codec.h"
#include "corral.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HB_INTERVAL_DEFAULT_MS 1000 /* until the broker says otherwise */
#define HB_TIMEOUT_FACTOR      3    /* timeout default: this many intervals */

enum req_kind { REQ_STARTED, REQ_DONE, REQ_FAILED, REQ_CANCEL_ACK };

struct reqlist;

/* A request about a job: queued by an API thread (or made by the thread), then owned by
 * the thread until the broker's reply. A Started request is shared with the API thread
 * that waits for its answer (refs, answered and code under w->mu). */
struct req {
    struct req *next; /* the API's queue, then the thread's list */
    enum req_kind kind;
    const char *job; /* stored after the struct, in its allocation */
    uint32_t attempt;
    uint8_t *data; /* value, result or details: owned, NULL when empty */
    size_t len;
    char *type;     /* Failed: owned */
    char *message;  /* Failed: owned */
    bool retryable; /* Failed: try the job again if attempts remain (S13) */
    /* thread only */
    struct req *prev;
    struct reqlist *list; /* the thread's list it is on; NULL: none */
    uint64_t request_id;  /* of the last send, the key in w->byid; 0: never sent */
    uint64_t sent_ms;
    uint64_t retry_at_ms; /* on the send list: not sent before */
    /* Started, under w->mu */
    int refs;
    bool answered;
    int code;
};

/* A doubly-linked list of requests (thread only). */
struct reqlist {
    struct req *head, *tail;
    size_t n;
};

/* The thread's requests that have been sent, by request id: open addressing, linear
 * probing, backward-shift deletion (thread only). */
struct reqmap {
    struct req **slots; /* owned array; the requests are borrowed */
    size_t cap;         /* a power of two, or 0 */
    size_t count;
};

/* The running table: jobs by (id, attempt), chained through tnext (thread only). */
struct jobtab {
    struct corral_job **buckets; /* owned array; each job holds a reference */
    size_t nbuckets;             /* a power of two, or 0 */
    size_t count;
};

struct corral_job {
    struct corral_worker *w; /* borrowed: jobs are freed before their worker */
    /* id, kind, group and payload are stored after the struct, in its allocation */
    const char *id;
    uint32_t attempt;
    const char *kind;
    const char *group;
    const uint8_t *payload; /* NUL-terminated, never NULL */
    size_t payload_len;
    uint64_t deadline_ms; /* the Dispatch's effective deadline (Unix epoch ms); 0: none */
    uint64_t hash;        /* of (id, attempt), for the running table */
    /* -1 until corral_job_cancel_fd makes it (under w->mu; read without it by API threads
     * once set, hence atomic). */
    atomic_int cancel_fd;
    atomic_bool cancelled;
    /* Written once by the thread under w->mu before cancelled is set (release), read
     * after cancelled is seen (acquire). */
    enum corral_cancel_source source;
    char *reason;
    /* under w->mu */
    int refs;                 /* the running table's, and the holder's (the queue's before) */
    bool reported;            /* a final report has been queued */
    bool abandoned;           /* its holder freed it without a report */
    struct corral_job *qnext; /* dispatch queue (the thread's batch before) */
    /* thread only */
    struct corral_job *tnext; /* running table's bucket */
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
    int jobs_fd;     /* readable while jobs are queued (once jobs_fd_used) */
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
    bool jobs_fd_used;        /* corral_worker_fd was called: keep jobs_fd's state */
    bool jobs_fd_set;         /* jobs_fd's counter is not 0 */
    bool sleeping;            /* the thread polls (or is about to) and has not been woken */
    unsigned started_dropped; /* Started requests their caller gave up on, to free */
    /* thread only */
    struct jobtab table;
    struct reqlist sendq;    /* to send (retry_at_ms), in order */
    struct reqlist inflight; /* finals sent, oldest first */
    struct reqlist started;  /* Started requests sent */
    struct reqmap byid;      /* every request on inflight and started, and those on sendq
                              * sent before, by their last request id */
    struct corral_job *batch_head, *batch_tail; /* dispatched, not yet queued */
    struct codec_arena arena;                   /* the frame being handled */
    struct codec_buf out;                       /* the message being sent */
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

/* Takes the value from eventfd fd (borrowed), without blocking. */
void worker_efd_take(int fd);

/* Makes jobs_fd readable exactly while a job is queued or the worker has closed, once it
 * is in use. Caller holds w->mu. */
void worker_jobs_fd_sync(struct corral_worker *w);

/* Frees r (takes ownership); accepts NULL. */
void worker_req_free(struct req *r);

/* Returns an owned request of the given kind about (job, attempt) (borrowed) carrying a
 * copy of data (borrowed; may be NULL when len is 0), or NULL when out of memory. Its
 * refs is 1. */
struct req *worker_req_new(enum req_kind kind, const char *job, uint32_t attempt, const void *data,
                           size_t len);

/* Appends r (borrowed; on no list) to l. Thread only. */
void worker_list_push(struct reqlist *l, struct req *r);

/* Unlinks r (borrowed) from the list it is on, if any. Thread only. */
void worker_list_unlink(struct req *r);

/* The request sent under id, or NULL. Thread only. */
struct req *worker_map_find(const struct reqmap *m, uint64_t id);

/* Indexes r (borrowed) under its request_id (not 0). Returns 0 or CORRAL_ENOMEM. Thread
 * only. */
int worker_map_add(struct reqmap *m, struct req *r);

/* Removes the entry of id, if any. Thread only. */
void worker_map_remove(struct reqmap *m, uint64_t id);

/* Rewrites r (borrowed), a report the broker refused as too large, into a smaller one
 * that can end the job. Returns whether there is something new to send. */
bool worker_req_shrink(struct req *r);

/* Frees a job whose last reference is gone (takes ownership). */
void worker_job_destroy(struct corral_job *j);

/* Drops one reference to j (takes that reference; w borrowed) under w->mu; frees j with
 * the last. Caller does not hold w->mu. */
void worker_job_unref(struct corral_worker *w, struct corral_job *j);

/* Marks j (borrowed) cancelled with source and reason (borrowed; NULL: none) unless it
 * already is, and makes its cancel fd (if made) readable for good. Caller holds w->mu. */
void worker_job_mark_cancelled(struct corral_job *j, enum corral_cancel_source source,
                               const char *reason);

/* The hash of (id, attempt) (borrowed) in the running table. */
uint64_t worker_job_hash(const char *id, uint32_t attempt);

/* The running table's job (id, attempt) (borrowed), returned borrowed, or NULL. Thread
 * only. */
struct corral_job *worker_table_find(struct corral_worker *w, const char *id, uint32_t attempt);

/* Adds j (taking the reference the table holds) to the running table. Returns 0 or
 * CORRAL_ENOMEM (j is not added). Thread only. */
int worker_table_add(struct corral_worker *w, struct corral_job *j);

/* Removes job (id, attempt) (borrowed) from the running table, dropping the table's
 * reference (worker_job_unref). Thread only; caller does not hold w->mu. */
void worker_table_remove(struct corral_worker *w, const char *id, uint32_t attempt);

/* Empties the running table, dropping its references, and frees its array. */
void worker_table_clear(struct corral_worker *w);

/* Frees the snapshot array s of n entries (takes ownership); accepts NULL. */
void worker_snap_free(struct snap *s, size_t n);

/* ------------------------------------------------------------------ worker_thread.c */

/* The background thread's body (pthread_create; borrows arg, a struct corral_worker whose
 * socket it owns from now on): runs until w->stop is set (then tries for up to FLUSH_MS
 * to deliver final reports) or the socket fails; then closes the socket, sets w->closed
 * and wakes every waiter. Returns NULL. */
void *worker_thread_main(void *arg);

#endif
