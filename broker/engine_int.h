/* engine_int.h - the engine's internal types, shared by engine.c (requests, scopes and
 * completion), engine_sched.c (workers, dispatch, timers, recovery) and engine_tree.c
 * (trees, errors, events, rows). Not for use outside the engine. */
#ifndef CORRAL_ENGINE_INT_H
#define CORRAL_ENGINE_INT_H

#include "engine.h"
#include "log.h"
#include "strmap.h"
#include "timer.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What every group and job has. The first member of struct group and struct job, so a
 * struct node * converts to either once its type is checked. */
struct node {
    enum node_type type;
    enum node_state state;
    enum outcome outcome;
    uint64_t id;
    char idstr[MODEL_ID_MAX];
    struct node *parent; /* jobs: their group; groups: a group, a job or NULL (root) */
    bool cancel_called;
    bool cancelled_caught;
    enum cancel_source cancel_source;
    char *cancel_reason; /* owned; NULL when none */
    uint64_t failed_seq; /* position in the parent's exception group; 0: not in it */
    uint64_t created_ms;
    uint64_t ended_ms;
    uint64_t deadline_ms; /* own deadline, wall-clock ms; 0: none (S6) */
    enum on_deadline on_deadline;
    bool shield;    /* cancellation from above does not reach it (S7) */
    bool dirty;     /* changed since the last flush */
    bool persisted; /* a row exists in the store */
    bool purging;   /* roots: the tree is being purged and is gone for requests */
};

/* A client waiting for a group to end (deferred WaitGroup reply), or subscribed to its
 * events. */
struct listener {
    struct peer peer;
    uint64_t request_id;
    uint32_t event_mask; /* subscriptions: the event types wanted; 0: all */
    struct listener *next;
};

struct group {
    struct node n;
    bool closed;
    bool busy; /* cancelling its children: do not end it half-way */
    uint32_t depth;
    struct node **children; /* submission order */
    size_t nchildren;
    size_t capchildren;
    size_t unended;
    struct node **failures; /* failed children in the order they failed */
    size_t nfailures;
    size_t capfailures;
    struct listener *waiters;
    struct listener *subs;
    struct group *rprev; /* ended roots: the retained list, in the order they ended */
    struct group *rnext;
    bool retained;
};

struct kind;
struct worker;
struct limiter;

struct job {
    struct node n;
    struct kind *kind;
    uint8_t *payload;
    size_t payload_len;
    uint32_t attempt;
    uint8_t *result;
    size_t result_len;
    char *err_type;
    char *err_message;
    uint8_t *err_details;
    size_t err_details_len;
    bool started;             /* the current attempt called started() (S9) */
    bool wait_started;        /* its submitter waits for started() */
    struct listener *starter; /* that submitter, until answered */
    uint32_t max_attempts;    /* S13 */
    uint64_t backoff_ms;
    uint64_t next_attempt_ms; /* RETRY_WAIT: when it is queued again */
    struct worker *worker;    /* RUNNING or CANCELLING on it; NULL while orphaned */
    size_t worker_slot;       /* index in worker->jobs */
    struct job *qprev;        /* kind queue links while QUEUED */
    struct job *qnext;
    struct group **groups; /* groups the job opened */
    size_t ngroups;
    size_t capgroups;
    char **limiter_names;      /* S10: the limiters it names (owned), in submission order */
    struct limiter **limiters; /* the same, resolved; NULL once the job has ended */
    size_t nlimiters;
    bool holding;   /* it holds one token of each (from dispatch to release) */
    char *idem_key; /* its idempotency key (owned); NULL: none */
};

/* A named capacity limiter (S10): total tokens, and the jobs holding or waiting for
 * them. refs counts the jobs that name it and have not ended (a limiter in use cannot
 * be deleted, so a job's limiter pointers stay valid while it lives). */
struct limiter {
    char *name;
    uint32_t total;
    uint32_t borrowed;
    uint32_t waiting; /* jobs in ST_WAITING that name it */
    uint32_t refs;
    int64_t spare;          /* during a dispatch pass: tokens left for younger jobs */
    struct job **borrowers; /* the jobs holding its tokens (unordered) */
    size_t nborrowers;
    size_t capborrowers;
    bool dirty;           /* to be written */
    bool deleted;         /* to be deleted from the store, then freed */
    struct limiter *next; /* sorted by name */
};

/* A job kind: its FIFO of queued jobs (oldest first). */
struct kind {
    char *name;
    struct job *head;
    struct job *tail;
    size_t nqueued;
    struct job *cursor; /* during a dispatch pass: the next job to visit */
    struct kind *next;
};

struct worker {
    struct peer peer;
    char *name;
    struct kind **kinds;
    size_t nkinds;
    uint32_t concurrency;
    struct job **jobs; /* RUNNING or CANCELLING here */
    size_t njobs;
    size_t capjobs;
    uint64_t last_seen_ms;
    struct worker *next;
};

/* Open-addressing map from id to node. */
struct idmap {
    uint64_t *keys; /* 0: empty */
    struct node **vals;
    size_t cap; /* power of two */
    size_t n;
};

enum timer_kind {
    TIMER_CANCEL_RESEND = 1, /* id: job id, gen: attempt */
    TIMER_RECLAIM_END = 2,   /* end of the reconnect window after a restart */
    TIMER_DEADLINE = 3,      /* id: group or job id whose own deadline passes */
    TIMER_RETRY = 4,         /* id: job id, gen: the attempt that failed */
    TIMER_CANCEL_GRACE = 5,  /* id: job id, gen: attempt (D6) */
};

/* A restored node and where it hangs, kept until engine_restore_finish links it. */
struct pending_link {
    struct node *n;
    enum parent_type type;
    uint64_t parent_id;
};

struct engine {
    struct engine_config cfg;
    struct engine_stats stats;
    struct idmap map;
    uint64_t next_id;
    uint64_t failseq;
    struct kind *kinds;
    struct worker *workers;
    struct worker *retired; /* freed at the end of the turn */
    struct node **dirty;
    size_t ndirty;
    size_t capdirty;
    struct timer_heap timers;
    bool dispatch_needed;
    struct job **orphans; /* RUNNING at restart, reclaimable until TIMER_RECLAIM_END */
    size_t norphans;
    size_t caporphans;
    size_t nsubs;
    struct pending_link *links; /* during recovery only */
    size_t nlinks;
    size_t caplinks;
    struct limiter *limiters; /* sorted by name */
    size_t nlimiters;
    struct strmap limiter_by_name;
    struct strmap idem;                /* "<group id>\n<key>" -> job (S11) */
    bool limiters_dirty;               /* a limiter changed: engine_flush writes it */
    struct limiter **deleted_limiters; /* deleted this turn: freed at its end */
    size_t ndeleted_limiters;
    size_t capdeleted_limiters;
    struct group *retain_head; /* ended roots, oldest end first (retention) */
    struct group *retain_tail;
    struct node **purge_stack; /* nodes of the trees being purged, children on top */
    size_t npurge;
    size_t cappurge;
    struct node **retired_nodes; /* purged this turn: freed at its end */
    size_t nretired_nodes;
    size_t capretired_nodes;
    struct outbox *out; /* the outbox of the turn in progress */
    uint64_t now;       /* the time of the turn in progress */
};

/* ---- memory: the engine aborts on out-of-memory (Redis's policy): a half-applied
 * transition cannot be undone, and everything acknowledged is in SQLite. Sizes from the
 * wire are checked against limits before any allocation. */
_Noreturn void engine_oom(void);
void *ecalloc(size_t n, size_t size);
void *erealloc(void *p, size_t size);
char *estrdup(const char *s);
void *ememdup(const void *p, size_t len);
/* Appends item to a growable pointer array. */
void eappend(void ***arr, size_t *n, size_t *cap, void *item);

/* ---- ids (engine.c) */
/* Gives n its id and string form and enters it in the id map. */
void node_init(struct engine *e, struct node *n, enum node_type type, uint64_t id);
/* How many nodes are on the path from n to the root (0 for NULL). */
uint32_t depth_of(const struct node *n);
struct node *engine_node(struct engine *e, uint64_t id);
struct node *engine_lookup(struct engine *e, const char *idstr, enum node_type type);
struct group *as_group(struct node *n);
/* The root group of n's tree. */
struct node *root_of(struct node *n);
/* Takes n out of the id map (a purge); it is freed later with node_free. */
void engine_forget(struct engine *e, struct node *n);
void node_free(struct node *n);
struct job *as_job(struct node *n);

/* ---- transitions (engine.c): every state change goes through these, checked against
 * the table of legal moves. */
void node_set_state(struct engine *e, struct node *n, enum node_state to);
void mark_dirty(struct engine *e, struct node *n);
/* The type of an exception group's error. */
#define EXCEPTION_GROUP "ExceptionGroup"
/* The error of a scope whose fail_after deadline passed (S6), and the cancel reason. */
#define TIMEOUT_ERROR     "TimeoutError"
#define DEADLINE_EXCEEDED "deadline exceeded"
/* Defaults of a job's retry policy (S13). */
#define DEFAULT_MAX_ATTEMPTS 3
#define DEFAULT_BACKOFF_MS   1000
#define MAX_BACKOFF_MS       60000
/* S11: the retry hint of a BUSY reply, and the longest idempotency key. */
#define BUSY_RETRY_AFTER_MS 500
#define IDEM_KEY_MAX        1024

/* A job reached its outcome: records it, releases its worker slot, tells its group. */
void job_end(struct engine *e, struct job *j, enum outcome o);
/* The job's body ended (its worker reported): ends it, or, if groups it opened are still
 * running, closes them and keeps the outcome pending until they end (D5). */
void job_body_ended(struct engine *e, struct job *j, enum outcome o);
/* Ends a job whose body has ended once its last group has ended. */
void job_maybe_end(struct engine *e, struct job *j);
/* The group whose exception group is the job's error (D5), or NULL. */
struct group *job_error_group(const struct job *j);
/* Cancels a node and its subtree (first cancel's source and reason are kept). */
void cancel_node(struct engine *e, struct node *n, enum cancel_source src, const char *reason);
/* Re-checks whether a group can end now. */
void group_maybe_end(struct engine *e, struct group *g);

/* Gives a new node its cancel scope (deadline from now, or absolute; shield) and arms
 * its deadline timer. */
void scope_init(struct engine *e, struct node *n, const struct scope_opts *scope);
/* Arms the timer of n's own deadline (after creation or recovery). */
void arm_deadline(struct engine *e, struct node *n);
/* The earliest deadline of n and its enclosing scopes up to the nearest shield; 0: none. */
uint64_t effective_deadline(const struct node *n);

/* ---- scheduling (engine_sched.c) */
void kind_enqueue(struct engine *e, struct job *j);
void kind_dequeue(struct engine *e, struct job *j);
struct kind *kind_get(struct engine *e, const char *name);
void worker_release(struct engine *e, struct job *j);
void send_cancel(struct engine *e, struct job *j);
/* Gives a job's worker the cancel grace to acknowledge (D6). */
void arm_cancel_grace(struct engine *e, struct job *j);
/* Arms the timer that queues a RETRY_WAIT job again (S13). */
void arm_retry(struct engine *e, struct job *j);
void engine_handle_worker(struct engine *e, const struct peer *from, const struct cmd *c);
struct worker *worker_find(struct engine *e, const struct peer *p);
void workers_free(struct engine *e);

/* e->idem's key for idempotency key `key` of group group_id (S11); owned (free). */
char *idem_map_key(uint64_t group_id, const char *key);

/* ---- limiters (engine_limit.c) */
void engine_handle_limiter(struct engine *e, const struct peer *from, const struct cmd *c);
/* Resolves the limiter names of a submission into j (counting it as a user of each).
 * Returns false (nothing changed) after replying NOT_FOUND when one does not exist. */
bool job_limiters_init(struct engine *e, struct job *j, const char *const *names, size_t n,
                       const struct peer *from, uint64_t request_id);
/* Resolves j->limiter_names to limiters (counting j as a user of each). Returns the
 * first name that names no limiter (nothing changed then), or NULL. */
const char *job_limiters_resolve(struct engine *e, struct job *j);
/* Whether every limiter of j has a token that no older dispatchable waiter needs. */
bool tokens_available(const struct job *j);
/* Takes one token of each of j's limiters (at dispatch). */
void tokens_acquire(struct engine *e, struct job *j);
/* Gives j's tokens back, if it holds them (exactly once: when it stops running). */
void tokens_release(struct engine *e, struct job *j);
/* Holds back one token of each of j's limiters for it, in this dispatch pass (D7). */
void tokens_reserve(struct job *j);
/* Starts a dispatch pass: every limiter's spare is what is not borrowed. */
void limiters_pass_begin(struct engine *e);
/* Moves a queued job in or out of ST_WAITING, keeping the limiters' waiting counts. */
void job_set_waiting(struct engine *e, struct job *j, bool waiting);
/* The job has ended: it no longer uses its limiters. */
void job_limiters_done(struct engine *e, struct job *j);
/* Appends rows for the changed limiters; frees deleted ones. */
void limiters_flush(struct engine *e, struct outbox *out);
void limiters_end_turn(struct engine *e);
void limiters_free(struct engine *e);

/* ---- retention (engine_purge.c) */
/* Appends an ended root to the retained list (it ended last). */
void retain_root(struct engine *e, struct group *g);
/* Recovery: appends the ended roots, sorted here by when they ended. */
void retain_restored(struct engine *e, struct group **roots, size_t n);
/* Frees up to one batch of purged nodes; true when work is left for the next turn. */
bool purge_step(struct engine *e);
/* When purge_step next has work: now, the next root's expiry, or UINT64_MAX. */
uint64_t purge_next(const struct engine *e);
void on_purge_group(struct engine *e, const struct peer *from, const struct cmd *c);
void purge_end_turn(struct engine *e);
void purge_free(struct engine *e);

/* ---- trees, events and rows (engine_tree.c) */
struct tnode *tree_build(struct engine *e, struct node *n, bool deep);
void emit_event(struct engine *e, struct node *n, enum event_type type);
void listeners_free(struct listener **l);

/* ---- log lines (engine.c): effects like the rest, written by the loop after the
 * commit. No line per job at the default level (info). */
void engine_note(struct engine *e, enum log_level level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* s as a quoted logfmt value (in the outbox arena). */
const char *kv_quote(struct engine *e, const char *s);

/* ---- replies (engine.c) */
struct out_msg *reply(struct engine *e, const struct peer *to, uint64_t request_id,
                      enum corral_err code, const char *message);
struct out_msg *reply_fmt(struct engine *e, const struct peer *to, uint64_t request_id,
                          enum corral_err code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

#endif
