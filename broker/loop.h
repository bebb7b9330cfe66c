/* loop.h - corrald's event loop: one thread owns all state. Each turn polls the two
 * ROUTER sockets and the signal fd, decodes every waiting message (wire), applies it to
 * the engine, fires timers and dispatches, writes the turn's rows in ONE transaction
 * (store), and only after COMMIT sends the replies, dispatches and events. */
#ifndef CORRAL_LOOP_H
#define CORRAL_LOOP_H

#include "config.h"
#include "engine.h"
#include "store.h"

#include <stdint.h>

struct loop;

/* Counters kept by the loop (the engine keeps its own). */
struct loop_stats {
    uint64_t turns;
    uint64_t commits;
    uint64_t rows;
    uint64_t messages_in;
    uint64_t messages_out;
    uint64_t malformed;         /* undecodable, wrong frame count, wrong version or endpoint */
    uint64_t disconnects;       /* peers dropped, including those over the hard size cap */
    uint64_t unreachable;       /* sends to a vanished peer (ZMQ_ROUTER_MANDATORY) */
    uint64_t send_full;         /* peers given up at BACKLOG_PEER_MAX, or other send failures */
    uint64_t backlogged;        /* messages kept because a peer's queue was full */
    uint64_t events_overflowed; /* events a subscriber's full queue could not take */
};

/* Creates the ZeroMQ context and binds both endpoints. The engine and store are
 * borrowed and must outlive the loop; signal_fd (a signalfd for SIGTERM/SIGINT, whose
 * signals are blocked in every thread) is borrowed. On failure returns -1 with a
 * message in err. Returns owned *out. */
int loop_new(struct loop **out, const struct config *cfg, struct engine *eng, struct store *store,
             int signal_fd, char *err, size_t errlen);

/* Runs until SIGTERM/SIGINT (then commits, tells workers, returns 0) or a store failure
 * (returns -1: the turn's replies were not sent; a restart recovers the last commit). */
int loop_run(struct loop *l);

const struct loop_stats *loop_stats(const struct loop *l);

/* Closes the sockets and the context. Accepts NULL; sets *p to NULL. */
void loop_free(struct loop **p);

#endif
