/* model.h - the vocabulary shared by wire, engine and store: node states, outcomes,
 * cancel sources and the rows the engine asks the store to write. No I/O, no library
 * headers: the values match proto/corral.proto so that wire.c maps them one to one. */
#ifndef CORRAL_MODEL_H
#define CORRAL_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest id string ("g" or "j" and a decimal uint64) plus its NUL. */
#define MODEL_ID_MAX 24

enum node_type { NODE_GROUP = 0, NODE_JOB = 1 };

enum node_state {
    ST_NONE = 0,
    ST_QUEUED = 1,
    ST_RUNNING = 2,
    ST_CANCELLING = 3,
    ST_ENDED = 4,
    ST_OPEN = 5,
    ST_CLOSED = 6,
    ST_WAITING = 7,
    ST_RETRY_WAIT = 8,
};

enum outcome { OUT_NONE = 0, OUT_SUCCEEDED = 1, OUT_FAILED = 2, OUT_CANCELLED = 3 };

enum cancel_source {
    SRC_NONE = 0,
    SRC_EXPLICIT = 1,
    SRC_DEADLINE = 2,
    SRC_SIBLING_FAILED = 3,
    SRC_PARENT = 4,
};

/* What a scope does when its deadline passes (AnyIO's fail_after / move_on_after). */
enum on_deadline { ON_DEADLINE_FAIL = 0, ON_DEADLINE_MOVE_ON = 1 };

/* Where a group hangs: nowhere (a root), under a group, or under a job that opened it. */
enum parent_type { PARENT_NONE = 0, PARENT_GROUP = 1, PARENT_JOB = 2 };

/* A borrowed byte string. */
struct bytes {
    const uint8_t *data;
    size_t len;
};

/* One group as stored. Strings and bytes are borrowed for the duration of the call that
 * receives the row. failed_seq orders child failures in the parent's exception group
 * (0: not part of it). */
struct group_row {
    uint64_t id;
    enum parent_type parent_type;
    uint64_t parent_id;
    enum node_state state;
    enum outcome outcome;
    bool closed;
    bool cancel_called;
    bool cancelled_caught;
    enum cancel_source cancel_source;
    const char *cancel_reason; /* NULL: none */
    uint64_t failed_seq;
    uint64_t created_ms;
    uint64_t ended_ms;
    uint64_t deadline_ms; /* absolute, wall-clock ms; 0: none. Immutable, like the next two */
    enum on_deadline on_deadline;
    bool shield;
    bool is_new; /* true: not yet in the store (INSERT); false: UPDATE */
};

/* One job as stored; same conventions as group_row. The payload is written only when
 * is_new is true (it never changes). */
struct job_row {
    uint64_t id;
    uint64_t group_id;
    const char *kind;
    struct bytes payload;
    enum node_state state;
    enum outcome outcome;
    uint32_t attempt;
    struct bytes result;
    const char *err_type; /* NULL unless FAILED */
    const char *err_message;
    struct bytes err_details;
    bool cancel_called;
    bool cancelled_caught;
    enum cancel_source cancel_source;
    const char *cancel_reason;
    uint64_t failed_seq;
    uint64_t created_ms;
    uint64_t ended_ms;
    uint64_t deadline_ms;
    enum on_deadline on_deadline;
    bool shield;
    bool wait_started;        /* immutable: submitted with wait_started (S9) */
    uint32_t max_attempts;    /* immutable (S13) */
    uint64_t backoff_ms;      /* immutable: the first retry's delay */
    bool started;             /* the current attempt called started() */
    uint64_t next_attempt_ms; /* RETRY_WAIT: when the job is queued again */
    const char *limiters;     /* immutable: the limiters it names, '\n'-separated; "" none */
    const char *idem_key;     /* immutable: its idempotency key; NULL: none */
    bool holds_tokens;        /* it holds one token of each of its limiters (S10) */
    bool is_new;
};

/* One limiter as stored (S10): written when created or changed, deleted when deleted. */
struct limiter_row {
    const char *name;
    uint32_t total_tokens;
    bool deleted; /* true: DELETE the row */
};

#endif
