/* corral.h - the C client library of corral (libcorral).
 *
 * Two roles, two objects:
 *   struct corral_client  opens groups, submits jobs, cancels, waits and reads trees.
 *                         One DEALER socket; every call blocks until the broker's reply
 *                         or the client's timeout. Not thread-safe: use one per thread.
 *   struct corral_worker  serves job kinds. A background thread owns its socket, sends
 *                         heartbeats on its own (a job may compute for minutes without
 *                         calling the library), re-registers after a reconnect and
 *                         re-sends reports the broker has not acknowledged. Its
 *                         functions may be called from any thread.
 *
 * Conventions: functions return an enum corral_err (0 = CORRAL_OK) and give results
 * through out-parameters, which are untouched on error. "Returns owned" results are
 * freed by the caller with the matching _free function, which accepts NULL and sets the
 * pointer to NULL. Strings passed in are borrowed for the duration of the call. After an
 * error returned by the broker, corral_client_last_error() gives its human message.
 */
#ifndef CORRAL_H
#define CORRAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Marks the library's public functions: libcorral is built with hidden visibility by
 * default, so only what this header declares is exported. */
#if defined(__GNUC__)
#define CORRAL_API __attribute__((visibility("default")))
#else
#define CORRAL_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Longest group or job id, including the terminating NUL. Ids are opaque strings. */
#define CORRAL_ID_MAX 24

/* The protocol version this library speaks. */
#define CORRAL_PROTOCOL_VERSION 1

/* Default endpoints of corrald. */
#define CORRAL_DEFAULT_CLIENT_ENDPOINT "tcp://127.0.0.1:7700"
#define CORRAL_DEFAULT_WORKER_ENDPOINT "tcp://127.0.0.1:7701"

/* Error codes. 1..99 are the broker's codes (proto ErrorCode, same numbers); 100 and up
 * are raised locally by the library. */
enum corral_err {
    CORRAL_OK = 0,
    CORRAL_EBADREQUEST = 1,      /* the broker could not parse the request */
    CORRAL_EVERSION = 2,         /* unsupported protocol version */
    CORRAL_ENOTFOUND = 3,        /* unknown group or job id */
    CORRAL_ENOTACTIVE = 4,       /* the group has ended */
    CORRAL_ETOOLARGE = 5,        /* payload, result, value or details over the broker's limit */
    CORRAL_EBUSY = 6,            /* the broker is at capacity; retry later */
    CORRAL_ESTALE = 7,           /* a report for an attempt that is no longer current */
    CORRAL_EWRONGSTATE = 8,      /* the request does not apply in the node's state */
    CORRAL_EUNKNOWNWORKER = 9,   /* the worker is not registered (handled internally) */
    CORRAL_EINTERNAL = 10,       /* the broker failed; the request had no effect */
    CORRAL_ESHUTDOWN = 11,       /* the broker is shutting down */
    CORRAL_ESTARTFAILED = 12,    /* the job failed before signalling readiness */
    CORRAL_ESTARTCANCELLED = 13, /* the job was cancelled before signalling readiness */
    CORRAL_ENOTSTARTED = 14,     /* the job ended without signalling readiness */
    CORRAL_ETIMEDOUT = 100,      /* no answer within the timeout */
    CORRAL_EIO = 101,            /* socket error */
    CORRAL_ENOMEM = 102,         /* out of memory */
    CORRAL_EINVAL = 103,         /* invalid argument */
    CORRAL_EPROTO = 104,         /* the broker sent something this library cannot parse */
    CORRAL_ECLOSED = 105,        /* the worker has been stopped */
};

/* A static, human-readable name for an error code ("not found", ...). Never NULL. */
CORRAL_API const char *corral_strerror(int err);

enum corral_node_type { CORRAL_NODE_GROUP = 0, CORRAL_NODE_JOB = 1 };

enum corral_state {
    CORRAL_STATE_UNSPECIFIED = 0,
    CORRAL_STATE_QUEUED = 1,
    CORRAL_STATE_RUNNING = 2,
    CORRAL_STATE_CANCELLING = 3,
    CORRAL_STATE_ENDED = 4,
    CORRAL_STATE_OPEN = 5,
    CORRAL_STATE_CLOSED = 6,
    CORRAL_STATE_WAITING = 7,
    CORRAL_STATE_RETRY_WAIT = 8,
};

enum corral_outcome {
    CORRAL_OUTCOME_NONE = 0,
    CORRAL_OUTCOME_SUCCEEDED = 1,
    CORRAL_OUTCOME_FAILED = 2,
    CORRAL_OUTCOME_CANCELLED = 3,
};

enum corral_cancel_source {
    CORRAL_SOURCE_NONE = 0,
    CORRAL_SOURCE_EXPLICIT = 1,
    CORRAL_SOURCE_DEADLINE = 2,
    CORRAL_SOURCE_SIBLING_FAILED = 3,
    CORRAL_SOURCE_PARENT = 4,
};

/* What a scope does when its deadline passes (AnyIO's fail_after / move_on_after). */
enum corral_on_deadline {
    CORRAL_ON_DEADLINE_FAIL = 0,    /* cancelled, then FAILED with a bare TimeoutError (or the
                                     * exception group of children that failed for real) */
    CORRAL_ON_DEADLINE_MOVE_ON = 1, /* cancelled, then SUCCEEDED with cancelled_caught set */
};

/* Cancel-scope options of a group or a job. Zero-initialise (= no deadline, FAIL, not
 * shielded); fields may be added at the end. At most one of timeout_ms and
 * deadline_unix_ms may be set. A shielded scope is not reached by cancellation from
 * above (its parent waits for it); its own deadline and a cancel aimed at it still
 * apply. */
struct corral_scope {
    uint64_t timeout_ms;       /* relative deadline from when the broker accepts; 0: none */
    uint64_t deadline_unix_ms; /* absolute deadline, ms since the Unix epoch; 0: none */
    enum corral_on_deadline on_deadline;
    bool shield;
};

/* Names as used in the --json tree: "QUEUED", "SUCCEEDED", "sibling_failed"; NULL for
 * CORRAL_OUTCOME_NONE and CORRAL_SOURCE_NONE. */
CORRAL_API const char *corral_state_name(enum corral_state s);
CORRAL_API const char *corral_outcome_name(enum corral_outcome o);
CORRAL_API const char *corral_source_name(enum corral_cancel_source s);

/* An error: a job's error, or an exception group (type "ExceptionGroup", group set,
 * exceptions holding every child error in the order they happened, nested). */
struct corral_error {
    char *type;
    char *message;
    char *job;   /* NULL unless a job's error */
    char *group; /* NULL unless an exception group */
    uint8_t *details;
    size_t details_len;
    struct corral_error *exceptions;
    size_t nexceptions;
};

/* A node of a group's tree. Strings are NUL-terminated; result is also NUL-terminated
 * (the NUL is not counted in result_len). */
struct corral_node {
    enum corral_node_type type;
    char *id;
    char *kind;   /* jobs; NULL for groups */
    char *parent; /* NULL for a root group */
    enum corral_state state;
    enum corral_outcome outcome;
    uint8_t *result; /* jobs that succeeded */
    size_t result_len;
    struct corral_error *error; /* FAILED nodes; NULL otherwise */
    uint32_t attempt;
    bool cancel_called;
    bool cancelled_caught;
    enum corral_cancel_source cancel_source;
    char *cancel_reason;          /* NULL when none */
    bool closed;                  /* groups */
    struct corral_node *children; /* groups: children in submission order */
    size_t nchildren;
    struct corral_node *groups; /* jobs: groups the job opened */
    size_t ngroups;
    uint64_t deadline_unix_ms; /* the node's own deadline, ms since the Unix epoch; 0: none */
    enum corral_on_deadline on_deadline;
    bool shield;
    /* The earliest deadline of the node and its enclosing scopes up to the nearest shielded
     * one (whose own deadline counts); 0: none. */
    uint64_t effective_deadline_unix_ms;
    /* Jobs: the most attempts the job gets (S13); 0 from a broker that predates retries. */
    uint32_t max_attempts;
    /* Jobs in CORRAL_STATE_RETRY_WAIT: when the next attempt is queued, ms since the Unix
     * epoch; 0 otherwise. */
    uint64_t next_attempt_unix_ms;
    /* Jobs: the current attempt has called started() (corral_job_started). */
    bool started;
    /* Jobs: the limiters the job takes a token of (S10), as submitted; NULL when none. */
    char **limiters;
    size_t nlimiters;
};

/* Frees a tree returned by the library. */
CORRAL_API void corral_node_free(struct corral_node **p);

/* Frees an error returned owned by the library (corral_start), with its sub-exceptions.
 * Accepts NULL and a NULL *p; sets *p to NULL. */
CORRAL_API void corral_error_free(struct corral_error **p);

/* ------------------------------------------------------------------ client */

struct corral_client;

/* Connects to the broker's client endpoint (NULL: CORRAL_DEFAULT_CLIENT_ENDPOINT).
 * timeout_ms bounds every blocking call but corral_group_wait (which has its own);
 * the connection itself is lazy, so a broker that is down shows as CORRAL_ETIMEDOUT on
 * the first call. Returns owned *out. */
CORRAL_API int corral_client_new(struct corral_client **out, const char *endpoint, int timeout_ms);
CORRAL_API void corral_client_free(struct corral_client **p);

/* The broker's message for the last call that failed with a broker code, else a
 * description of the local error. Borrowed; valid until the next call. */
CORRAL_API const char *corral_client_last_error(const struct corral_client *c);

/* The retry hint of the broker's reply to the last call, when that call failed with
 * CORRAL_EBUSY: how many milliseconds to wait before trying again. 0 when the last call
 * did not fail so, or the broker gave no hint (or c is NULL). Never blocks. */
CORRAL_API uint32_t corral_client_retry_after_ms(const struct corral_client *c);

/* Opens a group. parent_group and parent_job: at most one non-NULL; neither: a root.
 * Writes the id into id_out. *cancelled (may be NULL) is set when the parent scope was
 * already cancelled (the new group is cancelled at once). */
CORRAL_API int corral_group_open(struct corral_client *c, const char *parent_group,
                                 const char *parent_job, char id_out[CORRAL_ID_MAX],
                                 bool *cancelled);

/* Submits a job of the given kind into an active group. payload (borrowed) may be NULL
 * when len is 0. *cancelled (may be NULL) is set when the group was already cancelled:
 * the job is recorded CANCELLED and never runs. CORRAL_ENOTACTIVE: the group ended. */
CORRAL_API int corral_submit(struct corral_client *c, const char *group, const char *kind,
                             const void *payload, size_t len, char id_out[CORRAL_ID_MAX],
                             bool *cancelled);

/* corral_group_open and corral_submit with the cancel-scope options *scope (NULL or all
 * zero: none, the very request of the plain calls). Every argument is borrowed; the new
 * id is written into id_out and *cancelled (may be NULL) set as by the plain calls, which
 * they block like, up to the client's timeout, with the same errors, and also
 * CORRAL_EINVAL (nothing sent) when both timeout_ms and deadline_unix_ms are set or
 * on_deadline is not a corral_on_deadline value. A broker that predates scopes ignores
 * them. */
CORRAL_API int corral_group_open_scoped(struct corral_client *c, const char *parent_group,
                                        const char *parent_job, const struct corral_scope *scope,
                                        char id_out[CORRAL_ID_MAX], bool *cancelled);
CORRAL_API int corral_submit_scoped(struct corral_client *c, const char *group, const char *kind,
                                    const void *payload, size_t len,
                                    const struct corral_scope *scope, char id_out[CORRAL_ID_MAX],
                                    bool *cancelled);

/* Options of a submission. Zero-initialise (= no scope, the broker's retry defaults);
 * fields may be added at the end. */
struct corral_submit_opts {
    struct corral_scope scope; /* deadline and shield of the job (see corral_submit_scoped) */
    /* How many times the job may run in all (S13): it is tried again when its worker is
     * lost or it fails as retryable (corral_job_fail_retryable) while attempts remain.
     * 0: the broker's default (3). */
    uint32_t max_attempts;
    /* The wait before the first retry; it doubles with each attempt (with up to 10% jitter),
     * at most 60 s. 0: the broker's default (1 s). */
    uint64_t backoff_ms;
    /* The limiters the job takes one token of each (S10): nlimiters distinct, non-empty
     * names (the array and the strings borrowed; NULL when nlimiters is 0), each created
     * beforehand with corral_limiter_set (else CORRAL_ENOTFOUND). The job is dispatched only
     * once it holds every token, taken all at once; until then it is CORRAL_STATE_QUEUED
     * (no worker free for its kind) or CORRAL_STATE_WAITING (no token for it). It gives
     * them back when it stops running. */
    const char *const *limiters;
    size_t nlimiters;
    /* Makes the submission safe to repeat (borrowed; NULL or "": none): a submission with
     * the key of an earlier job of the same group gets that job's id, creates nothing, and
     * sets *duplicate, whatever the group's state now. */
    const char *idempotency_key;
    /* When the broker is at its bound on queued jobs (CORRAL_EBUSY, S11), wait and try
     * again rather than fail: first for the reply's retry hint (at least 10 ms), then twice
     * as long each time (or the new hint, if longer), with up to 10% jitter, at most 5 s
     * per wait, until the client's timeout has passed since the call began (each try
     * itself bounded as a plain call is); then CORRAL_EBUSY. While it waits, replies to
     * pipelined submits and events are queued as by any call. */
    bool wait_for_capacity;
    /* Out (may be NULL): set on success to whether the broker answered with the id of an
     * earlier submission with the same idempotency_key (nothing was created); false when
     * the job is new. Untouched on error. */
    bool *duplicate;
};

/* corral_submit with the options *opts (borrowed; NULL or all zero: the very request of
 * corral_submit). Every argument is borrowed; writes the job's id into id_out and sets
 * *cancelled (may be NULL) as corral_submit does, and *opts->duplicate (may be NULL).
 * Blocks up to the client's timeout (with wait_for_capacity, see there). Errors as
 * corral_submit_scoped (CORRAL_EINVAL, nothing sent, for an invalid scope, and also for
 * limiter names that are empty or repeated, or limiters NULL with nlimiters > 0), and
 * CORRAL_ENOTFOUND for a limiter that does not exist, CORRAL_EBUSY when the broker holds
 * as many queued jobs as it takes (nothing was submitted; corral_client_retry_after_ms
 * gives its hint). A broker that predates retries ignores max_attempts and backoff_ms. */
CORRAL_API int corral_submit_opts(struct corral_client *c, const char *group, const char *kind,
                                  const void *payload, size_t len,
                                  const struct corral_submit_opts *opts, char id_out[CORRAL_ID_MAX],
                                  bool *cancelled);

/* AnyIO's tg.start(): submits a job (as corral_submit_opts, opts may be NULL) asking the
 * broker to answer once the job has signalled readiness, and blocks until then or until
 * timeout_ms passes (negative: forever; it bounds sending the request too, as for
 * corral_group_wait). The job belongs to the group from its submission (D2): it runs on
 * whatever this call returns, and only a cancel stops it.
 *   CORRAL_OK: the job called started(value) and keeps running. *value (may be NULL: not
 *     wanted) is returned owned (free()), NUL-terminated after its *value_len bytes (may
 *     be NULL), never NULL itself, even for an empty value.
 *   CORRAL_ESTARTFAILED: the job failed before started(); *error (may be NULL: not
 *     wanted) is its error, returned owned (corral_error_free). The failure does not
 *     fail or cancel the group (S9).
 *   CORRAL_ESTARTCANCELLED: the job was cancelled first (also at once, when the group was
 *     already cancelled).
 *   CORRAL_ENOTSTARTED: the job ended (succeeded) without calling started().
 *   CORRAL_ETIMEDOUT: no answer within timeout_ms. The job, if the broker got the
 *     request, keeps running; a later answer is dropped. id_out is not known then.
 *   Or any error of corral_submit_opts (CORRAL_ENOTACTIVE, CORRAL_ENOTFOUND,
 *     CORRAL_EINVAL, CORRAL_EBUSY...). With opts->wait_for_capacity, a busy broker is
 *     tried again as corral_submit_opts does, while both the client's timeout and
 *     timeout_ms last; then CORRAL_EBUSY (nothing was submitted).
 * id_out (may be NULL) is written whenever the broker named the job: on CORRAL_OK and
 * the three CORRAL_ESTART... / CORRAL_ENOTSTARTED codes (and on CORRAL_ENOMEM or
 * CORRAL_EPROTO when the value or the error in such a reply could not be copied), and so
 * is *opts->duplicate (may be NULL): a repeated idempotency_key names the earlier job,
 * and the answer is about that job's readiness.
 * *value, *value_len and *error are untouched on other returns. corral_client_last_error
 * gives the broker's message. While it waits, replies to pipelined submits and events are
 * queued as by any call. The broker keeps the pending answer in memory only: if it
 * restarts meanwhile, no answer comes (as for corral_group_wait), so a caller that must
 * not hang gives a timeout. */
CORRAL_API int corral_start(struct corral_client *c, const char *group, const char *kind,
                            const void *payload, size_t len, const struct corral_submit_opts *opts,
                            int timeout_ms, char id_out[CORRAL_ID_MAX], void **value,
                            size_t *value_len, struct corral_error **error);

/* Closes a group (the owner left its block). Idempotent. */
CORRAL_API int corral_group_close(struct corral_client *c, const char *group);

/* Cancels a group and its subtree, or one job. reason may be NULL. Idempotent; the
 * first cancel's source and reason are kept. */
CORRAL_API int corral_group_cancel(struct corral_client *c, const char *group, const char *reason);
CORRAL_API int corral_job_cancel(struct corral_client *c, const char *job, const char *reason);

/* Reads a group's tree now. Returns owned *out. */
CORRAL_API int corral_group_tree(struct corral_client *c, const char *group,
                                 struct corral_node **out);

/* Blocks until the group has ended (it does not close it) or timeout_ms passes
 * (negative: forever); returns the ended group's tree, owned. CORRAL_ETIMEDOUT on timeout. */
CORRAL_API int corral_group_wait(struct corral_client *c, const char *group, int timeout_ms,
                                 struct corral_node **out);

/* Purges the ended root group `group` (borrowed) now: its whole tree (jobs, nested
 * groups, the groups its jobs opened) is deleted from the broker's memory and database,
 * as --retention does once it has passed since the group ended. Afterwards every request
 * naming a node of the tree gets CORRAL_ENOTFOUND, also after a restart. *purged_nodes
 * (may be NULL) receives how many groups and jobs the tree held. CORRAL_EWRONGSTATE when
 * the group is not a root or has not ended, CORRAL_ENOTFOUND when it is unknown (or
 * already purged). Blocks up to the client's timeout. */
CORRAL_API int corral_group_purge(struct corral_client *c, const char *group,
                                  uint64_t *purged_nodes);

/* ---- limiters (S10, D7) ---- */

/* A limiter as the broker reports it. Strings are NUL-terminated. */
struct corral_limiter {
    char *name;
    uint32_t total_tokens;    /* 0: paused */
    uint32_t borrowed_tokens; /* may exceed total_tokens after it was lowered */
    uint32_t waiting;         /* jobs in CORRAL_STATE_WAITING that name it */
    char **borrowers;         /* ids of the jobs holding its tokens, oldest first */
    size_t nborrowers;
};

/* Creates the limiter name (borrowed, non-empty) with total_tokens tokens, or changes the
 * total of an existing one. 0 pauses it. Raising the total admits waiting jobs at once
 * while borrowed < total; lowering it stops no running job (the borrowed tokens drain
 * below the new total as their jobs end). Blocks up to the client's timeout. CORRAL_EINVAL
 * (nothing sent) for an empty name. */
CORRAL_API int corral_limiter_set(struct corral_client *c, const char *name, uint32_t total_tokens);

/* Deletes the limiter name (borrowed, non-empty). CORRAL_EWRONGSTATE while it is in use
 * (tokens borrowed, or jobs that have not ended name it), CORRAL_ENOTFOUND when there is
 * no such limiter. Blocks up to the client's timeout. */
CORRAL_API int corral_limiter_delete(struct corral_client *c, const char *name);

/* Reads limiters: with name (borrowed) NULL or "", every limiter, sorted by name as the
 * broker sends them; otherwise exactly that one (CORRAL_ENOTFOUND when there is none).
 * Returns owned *out (corral_limiters_free; NULL when *n is 0) and their number in *n.
 * Blocks up to the client's timeout. */
CORRAL_API int corral_limiter_get(struct corral_client *c, const char *name,
                                  struct corral_limiter **out, size_t *n);

/* Frees an array of n limiters returned by corral_limiter_get. Accepts NULL and a NULL
 * *p; sets *p to NULL. */
CORRAL_API void corral_limiters_free(struct corral_limiter **p, size_t n);

/* ---- pipelined submits: many in flight, replies collected later ---- */

struct corral_submit_result {
    uint64_t token; /* the value corral_submit_async gave */
    int err;        /* CORRAL_OK or the broker's code */
    char id[CORRAL_ID_MAX];
    bool cancelled;
};

/* Sends a submission without waiting for its reply; *token identifies the reply later.
 * Never blocks on the network beyond the socket's send queue. */
CORRAL_API int corral_submit_async(struct corral_client *c, const char *group, const char *kind,
                                   const void *payload, size_t len, uint64_t *token);

/* Takes the next reply to a pipelined submission, waiting up to timeout_ms (0: poll,
 * negative: forever). CORRAL_ETIMEDOUT when none arrived. */
CORRAL_API int corral_submit_collect(struct corral_client *c, int timeout_ms,
                                     struct corral_submit_result *out);

/* Number of pipelined submissions whose replies have not been collected. */
CORRAL_API size_t corral_submit_pending(const struct corral_client *c);

/* ---- events ---- */

enum corral_event_type {
    CORRAL_EVENT_JOB_DISPATCHED = 1,
    CORRAL_EVENT_JOB_STARTED = 2,
    CORRAL_EVENT_JOB_ENDED = 3,
    CORRAL_EVENT_GROUP_CANCELLING = 4,
    CORRAL_EVENT_GROUP_ENDED = 5,
    /* This client did not read its events fast enough: the broker's queue for it filled
     * up, events were left out, and the subscription has ended (its last event, instead
     * of the group's GROUP_ENDED). Read the tree (corral_group_tree) and subscribe again. */
    CORRAL_EVENT_SUBSCRIPTION_OVERFLOW = 6,
};

struct corral_event {
    enum corral_event_type type;
    char subscription[CORRAL_ID_MAX]; /* the subscribed group */
    /* The node that changed, without children. For CORRAL_EVENT_SUBSCRIPTION_OVERFLOW,
     * what the broker sent (the subscribed group), or NULL when it sent no node. */
    struct corral_node *node;
};

/* Subscribes to every change in a group's subtree until the group ends (or the
 * subscription overflows: CORRAL_EVENT_SUBSCRIPTION_OVERFLOW). */
CORRAL_API int corral_subscribe(struct corral_client *c, const char *group);

/* Like corral_subscribe, receiving only the event types whose bit (1u << type) is set in
 * mask (0: every type). The group's own CORRAL_EVENT_GROUP_ENDED always arrives, and so
 * does CORRAL_EVENT_SUBSCRIPTION_OVERFLOW, which is not a bit of mask. CORRAL_EINVAL for
 * a bit that is no event type one may ask for. */
CORRAL_API int corral_subscribe_events(struct corral_client *c, const char *group, unsigned mask);

/* Takes the next event, waiting up to timeout_ms (0: poll, as corral_submit_collect says,
 * negative: forever). Returns owned *out. CORRAL_ETIMEDOUT when none arrived. */
CORRAL_API int corral_next_event(struct corral_client *c, int timeout_ms,
                                 struct corral_event **out);
CORRAL_API void corral_event_free(struct corral_event **p);

/* ------------------------------------------------------------------ worker */

struct corral_worker;
struct corral_job;

/* Registers a worker for the given kinds (borrowed) with the given concurrency (> 0)
 * at the broker's worker endpoint (NULL: CORRAL_DEFAULT_WORKER_ENDPOINT), and starts its
 * background thread. Does not wait for the broker. Returns owned *out. */
CORRAL_API int corral_worker_new(struct corral_worker **out, const char *endpoint,
                                 const char *const *kinds, size_t nkinds, unsigned concurrency);

/* Stops the background thread and closes the socket. Jobs not yet reported stay
 * RUNNING at the broker until their worker is declared lost. Jobs obtained from this
 * worker must be freed before it. */
CORRAL_API void corral_worker_free(struct corral_worker **p);

/* Takes the next dispatched job, waiting up to timeout_ms (0: poll, negative: forever).
 * Returns owned *out. CORRAL_ETIMEDOUT when none arrived. Never more than the stated
 * concurrency of jobs are handed out before they are reported. */
CORRAL_API int corral_worker_next(struct corral_worker *w, int timeout_ms, struct corral_job **out);

/* A file descriptor that is readable while corral_worker_next has a job to return
 * without blocking (for poll()). Borrowed; valid for the worker's life. */
CORRAL_API int corral_worker_fd(const struct corral_worker *w);

/* Accessors; strings and the payload are borrowed for the job's life. */
CORRAL_API const char *corral_job_id(const struct corral_job *j);
CORRAL_API uint32_t corral_job_attempt(const struct corral_job *j);
CORRAL_API const char *corral_job_kind(const struct corral_job *j);
CORRAL_API const char *corral_job_group(const struct corral_job *j);
CORRAL_API const void *corral_job_payload(const struct corral_job *j, size_t *len);

/* The job's effective deadline as the broker dispatched it: the earliest deadline of the
 * job and its enclosing scopes up to the nearest shielded one, in ms since the Unix epoch
 * (wall clock); 0: none. Lets a job bound its own work. Borrows j; never blocks; safe
 * from any thread. */
CORRAL_API uint64_t corral_job_deadline(const struct corral_job *j);

/* True once the broker has asked to cancel the job. The fd (borrowed) becomes readable
 * at that moment and stays readable; it is made on the first call (-1 if the process is
 * out of file descriptors: poll corral_job_cancelled instead). Source and reason describe
 * the cancel. */
CORRAL_API bool corral_job_cancelled(const struct corral_job *j);
CORRAL_API int corral_job_cancel_fd(const struct corral_job *j);
CORRAL_API enum corral_cancel_source corral_job_cancel_source(const struct corral_job *j);
CORRAL_API const char *corral_job_cancel_reason(const struct corral_job *j); /* "" when none */

/* Signals readiness with a value; blocks until the broker's reply (CORRAL_ETIMEDOUT
 * after the worker's timeout). An error says the broker refused it (e.g. started twice,
 * CORRAL_EWRONGSTATE). */
CORRAL_API int corral_job_started(struct corral_job *j, const void *value, size_t len);

/* Reports the job's end: a result, an error, or (after a cancel) that it stopped. These
 * return once the report is queued; the library delivers it at least once, re-sending
 * it after a reconnect until the broker has acknowledged it. Only the first report of a
 * job counts; later ones return CORRAL_EWRONGSTATE. */
CORRAL_API int corral_job_done(struct corral_job *j, const void *result, size_t len);
CORRAL_API int corral_job_fail(struct corral_job *j, const char *type, const char *message,
                               const void *details, size_t len);
CORRAL_API int corral_job_ack_cancel(struct corral_job *j);

/* Reports a failure that should be tried again (S13): like corral_job_fail, but the broker
 * runs the job again (a new attempt, after its backoff, in state CORRAL_STATE_RETRY_WAIT
 * meanwhile) while attempts remain; at max_attempts the job ends FAILED with this error.
 * Same arguments (borrowed), returns and delivery as corral_job_fail. */
CORRAL_API int corral_job_fail_retryable(struct corral_job *j, const char *type,
                                         const char *message, const void *details, size_t len);

/* Opens a group owned by the running job j (its parent is the job, S4/D5) through the
 * client c: cancelling the job reaches the group, and the job's outcome waits for the
 * group to end (a job that ends while the group is open closes it). Same as
 * corral_group_open_scoped(c, NULL, corral_job_id(j), scope, id_out, cancelled): j and
 * scope (may be NULL) are borrowed, the id is written into id_out, *cancelled (may be
 * NULL) is set when the job is already being cancelled; blocks up to c's timeout, with
 * its errors (CORRAL_ENOTACTIVE: the job has ended; CORRAL_EWRONGSTATE: it is not running,
 * e.g. waiting for a retry). c is an ordinary client (one per thread); j is only read, so
 * this may run on any thread while the worker reports other jobs. */
CORRAL_API int corral_job_open_group(struct corral_job *j, struct corral_client *c,
                                     const struct corral_scope *scope, char id_out[CORRAL_ID_MAX],
                                     bool *cancelled);

/* Frees a job. A job freed without a report stays RUNNING at the broker. */
CORRAL_API void corral_job_free(struct corral_job **p);

#ifdef __cplusplus
}
#endif

#endif
