/* cmd.h - the engine's input (decoded commands) and output (the outbox of messages to
 * send after the turn commits). wire.c turns protobuf into struct cmd and struct out_msg
 * into protobuf; engine.c reads commands and fills the outbox. No I/O here. */
#ifndef CORRAL_CMD_H
#define CORRAL_CMD_H

#include "arena.h"
#include "model.h"

#include <corral.h>

/* ZeroMQ routing ids are at most 255 bytes. */
#define PEER_ID_MAX 255

enum peer_side { SIDE_CLIENT = 0, SIDE_WORKER = 1 };

/* A connected peer: which endpoint, and its ROUTER routing id. */
struct peer {
    enum peer_side side;
    uint8_t len;
    uint8_t id[PEER_ID_MAX];
};

enum cmd_type {
    CMD_OPEN_GROUP,
    CMD_SUBMIT,
    CMD_CLOSE_GROUP,
    CMD_CANCEL_GROUP,
    CMD_CANCEL_JOB,
    CMD_GET_TREE,
    CMD_WAIT_GROUP,
    CMD_SUBSCRIBE,
    CMD_READY,
    CMD_HEARTBEAT,
    CMD_STARTED,
    CMD_DONE,
    CMD_FAILED,
    CMD_CANCEL_ACK,
    CMD_SET_LIMITER,
    CMD_DELETE_LIMITER,
    CMD_GET_LIMITERS,
    CMD_PURGE_GROUP,
};

struct running_ref {
    const char *job;
    uint32_t attempt;
};

/* Cancel-scope options of an OpenGroup or Submit (proto Scope). */
struct scope_opts {
    uint64_t timeout_ms;       /* relative to acceptance; 0: none */
    uint64_t deadline_unix_ms; /* absolute; 0: none (never both) */
    enum on_deadline on_deadline;
    bool shield;
};

/* A decoded request. Every pointer is borrowed from the decoder and valid only during
 * engine_handle(); strings are NUL-terminated, never NULL (empty when absent). */
struct cmd {
    enum cmd_type type;
    uint64_t request_id;
    const char *id;              /* the group, job or limiter the request names */
    const char *parent_group;    /* OPEN_GROUP */
    const char *parent_job;      /* OPEN_GROUP */
    const char *kind;            /* SUBMIT */
    struct scope_opts scope;     /* OPEN_GROUP, SUBMIT */
    bool wait_started;           /* SUBMIT: reply when the job signals readiness (S9) */
    uint32_t max_attempts;       /* SUBMIT: 0: default */
    uint64_t backoff_ms;         /* SUBMIT: 0: default */
    const char *const *limiters; /* SUBMIT: limiter names (S10) */
    size_t nlimiters;
    const char *idem_key;     /* SUBMIT: "" when none */
    uint32_t total_tokens;    /* SET_LIMITER */
    struct bytes data;        /* SUBMIT payload, DONE result, STARTED value, FAILED details */
    const char *reason;       /* CANCEL_* */
    uint32_t event_mask;      /* SUBSCRIBE: bit (1 << enum event_type) per type; 0: all */
    uint32_t attempt;         /* worker reports */
    const char *err_type;     /* FAILED */
    const char *err_message;  /* FAILED */
    bool retryable;           /* FAILED */
    const char *const *kinds; /* READY */
    size_t nkinds;
    uint32_t concurrency;
    const struct running_ref *running;
    size_t nrunning;
    const char *name;
};

/* An error as sent: a job's error, or an exception group (type "ExceptionGroup", group
 * set, exceptions nested). Strings are borrowed from the engine or the outbox arena. */
struct terr {
    const char *type;
    const char *message;
    const char *job;   /* "" when none */
    const char *group; /* "" when none */
    struct bytes details;
    struct terr *exceptions;
    size_t nexceptions;
};

/* A node of a tree as sent. */
struct tnode {
    enum node_type type;
    const char *id;
    const char *kind;
    enum node_state state;
    enum outcome outcome;
    struct bytes result;
    struct terr *error; /* NULL unless FAILED */
    uint32_t attempt;
    bool cancel_called;
    bool cancelled_caught;
    enum cancel_source cancel_source;
    const char *cancel_reason; /* "" when none */
    const char *parent;        /* "" for a root */
    bool closed;
    uint64_t deadline_ms; /* own deadline, wall-clock ms; 0: none */
    enum on_deadline on_deadline;
    bool shield;
    uint64_t effective_deadline_ms;
    uint32_t max_attempts;
    uint64_t next_attempt_ms;
    bool started;
    const char *const *limiters; /* jobs */
    size_t nlimiters;
    struct tnode *children;
    size_t nchildren;
    struct tnode *groups;
    size_t ngroups;
};

enum out_type { OUTMSG_REPLY, OUTMSG_DISPATCH, OUTMSG_CANCEL, OUTMSG_EVENT, OUTMSG_SHUTDOWN };

enum event_type {
    EV_JOB_DISPATCHED = 1,
    EV_JOB_STARTED = 2,
    EV_JOB_ENDED = 3,
    EV_GROUP_CANCELLING = 4,
    EV_GROUP_ENDED = 5,
    EV_SUBSCRIPTION_OVERFLOW = 6,
};

/* A limiter as sent in a GetLimiters reply. */
struct limiter_info {
    const char *name;
    uint32_t total_tokens;
    uint32_t borrowed_tokens;
    uint32_t waiting;
    const char *const *borrowers;
    size_t nborrowers;
};

/* A log line the engine asks for (it does no I/O itself): the loop writes it after the
 * turn commits. event is static; kv, logfmt pairs, lives in the outbox arena. */
struct out_note {
    int level; /* enum log_level */
    const char *event;
    const char *kv;
};

/* A node whose row is deleted (a purge); a root's deletion also clears its marker. */
struct deleted_row {
    enum node_type type;
    uint64_t id;
    bool root;
};

/* One message to send once the turn's transaction has committed. Pointers are borrowed
 * from the engine (which frees nothing during a turn) or owned by the outbox arena. */
struct out_msg {
    enum out_type type;
    struct peer to;
    uint64_t request_id;
    /* OUTMSG_REPLY */
    enum corral_err code;
    const char *message; /* "" on success */
    const char *id;      /* new group or job id, or "" */
    bool cancelled;
    struct tnode *tree;
    uint32_t retry_after_ms;
    uint32_t hb_interval_ms;
    uint32_t hb_timeout_ms;
    const struct running_ref *reclaimed;
    size_t nreclaimed;
    struct bytes value; /* Submit with wait_started: the started() value */
    struct terr *error; /* CORRAL_ESTARTFAILED: the job's error */
    bool duplicate;     /* Submit: the job of an earlier submission with the same key */
    const struct limiter_info *limiters; /* GetLimiters */
    size_t nlimiters;
    uint64_t purged_nodes; /* PurgeGroup */
    /* OUTMSG_DISPATCH and OUTMSG_CANCEL (job, attempt); dispatch also kind, payload, group */
    const char *job;
    uint32_t attempt;
    const char *kind;
    struct bytes payload;
    const char *group;
    uint64_t effective_deadline_ms; /* DISPATCH; 0: none */
    enum cancel_source source;
    const char *reason;
    /* OUTMSG_EVENT: node is shallow (no children) */
    enum event_type event;
    const char *subscription;
    struct tnode *node;
};

/* The effects of a turn: messages in order, and rows to write, all freed by
 * outbox_reset(). */
struct outbox {
    struct arena arena;
    struct out_msg *msgs;
    size_t nmsgs;
    size_t capmsgs;
    struct group_row *groups;
    size_t ngroups;
    size_t capgroups;
    struct job_row *jobs;
    size_t njobs;
    size_t capjobs;
    struct limiter_row *limiters;
    size_t nlimiters;
    size_t caplimiters;
    /* Purges (retention, PurgeGroup): roots whose purge begins (their marker is written,
     * so it resumes after a restart), and the nodes whose rows are deleted, children
     * before parents so that the rows left at any commit form whole trees. */
    uint64_t *purge_roots;
    size_t npurge_roots;
    size_t cappurge_roots;
    struct deleted_row *deleted;
    size_t ndeleted;
    size_t capdeleted;
    struct out_note *notes;
    size_t nnotes;
    size_t capnotes;
};

void outbox_init(struct outbox *ob);
/* Empties the outbox for the next turn, keeping its buffers. */
void outbox_reset(struct outbox *ob);
/* Frees everything the outbox holds. */
void outbox_fini(struct outbox *ob);
/* Appends a zeroed message and returns it (owned by the outbox); NULL when out of memory. */
struct out_msg *outbox_msg(struct outbox *ob, enum out_type type, const struct peer *to);
/* Appends a copy of the row (its pointers stay borrowed); false when out of memory. */
bool outbox_group_row(struct outbox *ob, const struct group_row *row);
bool outbox_job_row(struct outbox *ob, const struct job_row *row);
bool outbox_limiter_row(struct outbox *ob, const struct limiter_row *row);
/* Records the start of the purge of root group `root` (its marker row). */
bool outbox_purge_root(struct outbox *ob, uint64_t root);
/* Appends a log line (copied; kv into the arena); false when out of memory. */
bool outbox_note(struct outbox *ob, int level, const char *event, const char *kv);
/* Records the deletion of a node's row. */
bool outbox_deleted_row(struct outbox *ob, const struct deleted_row *row);

#endif
