/* engine.h - the pure state machine of corral: groups, jobs, cancel scopes, workers.
 *
 * It takes decoded commands and the current time and returns effects in an outbox
 * (messages to send, rows to write). It never reads the clock, never touches a socket
 * or SQL, and never frees a node while a turn is in progress: a turn is
 *     engine_handle()* -> engine_tick() -> engine_flush() -> (commit) -> engine_end_turn().
 */
#ifndef CORRAL_ENGINE_H
#define CORRAL_ENGINE_H

#include "cmd.h"
#include "model.h"

#include <stdint.h>

struct engine;

struct engine_config {
    uint32_t heartbeat_interval_ms; /* told to workers */
    uint32_t heartbeat_timeout_ms;  /* silent worker -> lost; reconnect window at start */
    uint32_t cancel_resend_ms;      /* CANCEL is repeated this often until acknowledged */
    uint32_t cancel_grace_ms;       /* unacknowledged this long: CANCELLED, worker lost (D6) */
    uint64_t max_payload;           /* soft limit on payload, result, value, details */
    uint64_t max_queued;            /* S11: queued jobs (QUEUED or WAITING) in all; 0: no bound */
    uint64_t max_queued_per_kind;   /* the same for one kind; 0: no bound */
    uint64_t retention_ms;          /* ended root groups are purged this long after; 0: never */
};

/* Counters since start, read by the loop for logs and stats. */
struct engine_stats {
    uint64_t jobs_submitted;
    uint64_t jobs_dispatched;
    uint64_t jobs_ended[4]; /* by enum outcome */
    uint64_t groups_ended[4];
    uint64_t workers_lost;
    uint64_t jobs_requeued;
    uint64_t stale_reports;
    uint64_t queued; /* gauges */
    uint64_t running;
    uint64_t workers;
    uint64_t reclaimable;   /* RUNNING at the last start, not yet reclaimed or re-queued */
    uint64_t groups_purged; /* root groups whose purge began (retention or PurgeGroup) */
    uint64_t nodes_purged;  /* groups and jobs freed by purges */
};

/* Returns owned *out, or CORRAL_ENOMEM. cfg is copied. */
int engine_new(struct engine **out, const struct engine_config *cfg);
/* Frees the engine and every node. Accepts NULL; sets *p to NULL. */
void engine_free(struct engine **p);

/* Recovery: feed every stored row (rows borrowed; the engine copies), then call
 * engine_restore_finish once, which links the tree, queues QUEUED jobs again and gives
 * RUNNING jobs a reconnect window of heartbeat_timeout_ms from now_ms. Returns 0 or a
 * corral_err (CORRAL_ENOMEM, CORRAL_EINTERNAL for an inconsistent database). */
int engine_restore_group(struct engine *e, const struct group_row *row);
int engine_restore_job(struct engine *e, const struct job_row *row);
int engine_restore_finish(struct engine *e, uint64_t now_ms, struct outbox *out);
/* Recovery of a purge cut short (after engine_restore_finish): the root's tree is
 * purged again from the start. */
int engine_restore_purging(struct engine *e, uint64_t root_id);
/* Recovery of a limiter (before any job that names it). */
int engine_restore_limiter(struct engine *e, const struct limiter_row *row);

/* Applies one command from a peer. Every request gets exactly one reply in the outbox
 * (now, or deferred for WaitGroup). Borrows everything. */
void engine_handle(struct engine *e, const struct peer *from, const struct cmd *c, uint64_t now_ms,
                   struct outbox *out);

/* Fires due timers (lost workers, reconnect window, cancel repeats) and dispatches queued
 * jobs to free workers. Returns the next time (ms) it must be called, UINT64_MAX if none. */
uint64_t engine_tick(struct engine *e, uint64_t now_ms, struct outbox *out);

/* Appends a row for every node changed since the last flush. */
void engine_flush(struct engine *e, struct outbox *out);

/* Ends the turn: frees what was retired during it (lost workers). */
void engine_end_turn(struct engine *e);

/* A message to this peer could not be delivered (it vanished): forget its waits and
 * subscriptions. Workers are left to the heartbeat timeout. */
void engine_peer_gone(struct engine *e, const struct peer *p);

/* The subscriber p could not take an event of its subscription (request_id, to group)
 * in time (its queue is full): the subscription ends, events of it are no longer made.
 * Returns whether it was still subscribed (the caller then tells it, S11). */
bool engine_subscription_overflow(struct engine *e, const struct peer *p, const char *group,
                                  uint64_t request_id);

/* The broker is stopping: queue a Shutdown message to every connected worker. */
void engine_shutdown(struct engine *e, struct outbox *out);

/* Borrowed view of the counters. */
const struct engine_stats *engine_stats(const struct engine *e);

#endif
