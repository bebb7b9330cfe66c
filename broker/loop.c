/* loop.c - the only module that speaks ZeroMQ (see loop.h). */
#include "loop.h"

#include "clock.h"
#include "log.h"
#include "wire.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>
#include <zmq.h>

/* At most this many messages are taken per turn, so one turn's transaction and latency
 * stay bounded while a flood still gets many jobs per commit. */
#define TURN_BATCH 4096
/* Queue bounds per peer, set on purpose; see the send path for what happens at them. */
#define RECV_HWM 100000
/* Messages kept for one peer whose queue is full (the backlog) before it is given up. */
#define BACKLOG_PEER_MAX 10000
/* How soon the loop retries the backlog. */
#define BACKLOG_RETRY_MS 10
/* Peers blocked in one pass over the backlog that are tracked (more: the pass stops). */
#define BACKLOG_BLOCKED_MAX 64
/* How long the last replies and the Shutdown messages to workers may take to leave
 * when corrald stops. */
#define SHUTDOWN_LINGER_MS 500
/* The loop wakes at least this often even with no timer due. */
#define MAX_SLEEP_MS 1000

/* A message that met a full peer queue (EAGAIN at ZMQ_SNDHWM), kept encoded until the
 * peer reads again: replies, dispatches and cancels are promised by the protocol and are
 * never dropped while the peer is there. */
struct pending {
    struct peer to;
    size_t len;
    struct pending *next;
    uint8_t buf[];
};

struct backlog_peer {
    struct peer peer;
    size_t n;
};

struct loop {
    const struct config *cfg;
    struct engine *eng;
    struct store *store;
    int sigfd;
    void *ctx;
    void *sock[2];    /* by enum peer_side */
    void *monitor[2]; /* PAIR sockets receiving each ROUTER's connection events */
    struct outbox out;
    struct wire_encoder enc;
    struct peer gone; /* the last peer reported vanished this turn */
    bool gone_set;
    struct loop_stats stats;
    bool stopping;
    struct pending *backlog; /* oldest first */
    struct pending **backlog_tail;
    size_t nbacklog;
    /* The peers with messages in the backlog and how many each (few: a peer is only here
     * while it does not read), so the send path checks a peer without walking the list. */
    struct backlog_peer *bpeers;
    size_t nbpeers;
    size_t capbpeers;
};

static const char *const side_name[2] = {"client", "worker"};

static int
set_int(void *s, int opt, int v)
{
    return zmq_setsockopt(s, opt, &v, sizeof(v));
}

/* Creates, configures and binds one ROUTER, plus a monitor for its disconnects. */
static int
open_router(struct loop *l, enum peer_side side, const char *endpoint, char *err, size_t errlen)
{
    void *s = zmq_socket(l->ctx, ZMQ_ROUTER);
    if (s == NULL)
        goto fail;
    l->sock[side] = s;
    int64_t maxmsg = (int64_t)l->cfg->max_message;
    if (set_int(s, ZMQ_ROUTER_MANDATORY, 1) != 0 || set_int(s, ZMQ_LINGER, 0) != 0 ||
        set_int(s, ZMQ_SNDHWM, (int)l->cfg->send_hwm) != 0 ||
        set_int(s, ZMQ_RCVHWM, RECV_HWM) != 0 ||
        zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof(maxmsg)) != 0)
        goto fail;
    if (zmq_bind(s, endpoint) != 0)
        goto fail;
    char mon[64];
    snprintf(mon, sizeof(mon), "inproc://monitor-%s", side_name[side]);
    if (zmq_socket_monitor(s, mon, ZMQ_EVENT_DISCONNECTED) != 0)
        goto fail;
    l->monitor[side] = zmq_socket(l->ctx, ZMQ_PAIR);
    if (l->monitor[side] == NULL || zmq_connect(l->monitor[side], mon) != 0)
        goto fail;
    log_event(LOG_INFO, "bind", "side=%s endpoint=%s", side_name[side], endpoint);
    return 0;
fail:
    snprintf(err, errlen, "cannot bind the %s endpoint %s: %s", side_name[side], endpoint,
             zmq_strerror(errno));
    return -1;
}

int
loop_new(struct loop **out, const struct config *cfg, struct engine *eng, struct store *store,
         int signal_fd, char *err, size_t errlen)
{
    struct loop *l = calloc(1, sizeof(*l));
    if (l == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    l->cfg = cfg;
    l->eng = eng;
    l->store = store;
    l->sigfd = signal_fd;
    outbox_init(&l->out);
    wire_encoder_init(&l->enc);
    l->backlog_tail = &l->backlog;
    l->ctx = zmq_ctx_new();
    if (l->ctx == NULL) {
        snprintf(err, errlen, "cannot create the ZeroMQ context: %s", zmq_strerror(errno));
        goto fail;
    }
    if (open_router(l, SIDE_CLIENT, cfg->client_endpoint, err, errlen) != 0 ||
        open_router(l, SIDE_WORKER, cfg->worker_endpoint, err, errlen) != 0)
        goto fail;
    *out = l;
    return 0;
fail:
    loop_free(&l);
    return -1;
}

void
loop_free(struct loop **p)
{
    struct loop *l = p ? *p : NULL;
    if (l == NULL)
        return;
    /* Monitors are stopped before their PAIR sockets close: an I/O thread reporting a
     * disconnect to a closed PAIR would block forever, and zmq_ctx_term with it. */
    for (int i = 0; i < 2; i++)
        if (l->sock[i] && l->monitor[i])
            zmq_socket_monitor(l->sock[i], NULL, 0);
    for (int i = 0; i < 2; i++) {
        if (l->monitor[i])
            zmq_close(l->monitor[i]);
        if (l->sock[i]) {
            /* The last turn's replies and the Shutdown to workers get a moment to leave
             * (zmq_ctx_term waits that long at most). */
            if (l->stopping)
                set_int(l->sock[i], ZMQ_LINGER, SHUTDOWN_LINGER_MS);
            zmq_close(l->sock[i]);
        }
    }
    if (l->ctx)
        zmq_ctx_term(l->ctx);
    outbox_fini(&l->out);
    wire_encoder_fini(&l->enc);
    while (l->backlog) {
        struct pending *pm = l->backlog;
        l->backlog = pm->next;
        free(pm);
    }
    free(l->bpeers);
    free(l);
    *p = NULL;
}

const struct loop_stats *
loop_stats(const struct loop *l)
{
    return &l->stats;
}

/* Queues an error reply for input that never reached the engine. */
static void
reject(struct loop *l, const struct peer *from, uint64_t request_id, int code, const char *msg)
{
    l->stats.malformed++;
    struct out_msg *m = outbox_msg(&l->out, OUTMSG_REPLY, from);
    if (m == NULL)
        return;
    m->request_id = request_id;
    m->code = (enum corral_err)code;
    m->message = msg;
    m->id = "";
}

/* Drains the remaining frames of a message. */
static void
drain_frames(void *s)
{
    int more = 1;
    size_t len = sizeof(more);
    while (zmq_getsockopt(s, ZMQ_RCVMORE, &more, &len) == 0 && more) {
        zmq_msg_t f;
        zmq_msg_init(&f);
        zmq_msg_recv(&f, s, ZMQ_DONTWAIT);
        zmq_msg_close(&f);
    }
}

static bool
has_more(void *s)
{
    int more = 0;
    size_t len = sizeof(more);
    return zmq_getsockopt(s, ZMQ_RCVMORE, &more, &len) == 0 && more;
}

/* Receives and applies one message from a side. Returns false when none was waiting. */
static bool
receive_one(struct loop *l, enum peer_side side, uint64_t now)
{
    void *s = l->sock[side];
    zmq_msg_t idf, body;
    zmq_msg_init(&idf);
    if (zmq_msg_recv(&idf, s, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&idf);
        return false;
    }
    struct peer from = {.side = side};
    size_t idlen = zmq_msg_size(&idf);
    from.len = (uint8_t)(idlen > PEER_ID_MAX ? PEER_ID_MAX : idlen);
    memcpy(from.id, zmq_msg_data(&idf), from.len);
    zmq_msg_close(&idf);
    l->stats.messages_in++;
    if (!has_more(s)) {
        reject(l, &from, 0, CORRAL_EBADREQUEST, "empty message: expected one frame");
        return true;
    }
    zmq_msg_init(&body);
    if (zmq_msg_recv(&body, s, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&body);
        return true;
    }
    if (has_more(s)) {
        drain_frames(s);
        zmq_msg_close(&body);
        reject(l, &from, 0, CORRAL_EBADREQUEST,
               "wrong frame count: a corral message is exactly one frame");
        return true;
    }
    struct cmd c;
    struct wire_decoded *holder = NULL;
    uint64_t request_id = 0;
    const char *errmsg = NULL;
    int rc = wire_decode(zmq_msg_data(&body), zmq_msg_size(&body), side, &c, &holder, &request_id,
                         &errmsg);
    if (rc != CORRAL_OK)
        reject(l, &from, request_id, rc, errmsg);
    else
        engine_handle(l->eng, &from, &c, now, &l->out);
    wire_decoded_free(&holder);
    zmq_msg_close(&body);
    return true;
}

/* Counts the connection events the monitors report. */
static void
read_monitor(struct loop *l, enum peer_side side)
{
    for (;;) {
        zmq_msg_t ev;
        zmq_msg_init(&ev);
        if (zmq_msg_recv(&ev, l->monitor[side], ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&ev);
            return;
        }
        if (zmq_msg_size(&ev) >= 2) {
            uint16_t event;
            memcpy(&event, zmq_msg_data(&ev), sizeof(event));
            if (event == ZMQ_EVENT_DISCONNECTED) {
                l->stats.disconnects++;
                log_event(LOG_DEBUG, "peer_disconnected", "side=%s", side_name[side]);
            }
        }
        zmq_msg_close(&ev);
        drain_frames(l->monitor[side]);
    }
}

static bool
same_peer(const struct peer *a, const struct peer *b)
{
    return a->side == b->side && a->len == b->len && memcmp(a->id, b->id, a->len) == 0;
}

/* A peer vanished (EHOSTUNREACH): the engine forgets it, once per turn. */
static void
peer_vanished(struct loop *l, const struct peer *to)
{
    l->stats.unreachable++;
    if (!l->gone_set || !same_peer(&l->gone, to)) {
        engine_peer_gone(l->eng, to);
        l->gone = *to;
        l->gone_set = true;
    }
}

/* Sends one encoded frame to a peer: 0, or the errno of the failure. */
static int
send_frame(struct loop *l, const struct peer *to, const uint8_t *buf, size_t len)
{
    void *s = l->sock[to->side];
    /* zmq_send copies the body into one allocation of its own. The routing frame fails
     * with EAGAIN when the peer's queue is at its high-water mark. */
    if (zmq_send(s, to->id, to->len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_send(s, buf, len, ZMQ_DONTWAIT) < 0)
        return errno;
    l->stats.messages_out++;
    return 0;
}

/* The backlog entry of peer p, or NULL when nothing waits for it. */
static struct backlog_peer *
backlog_peer(const struct loop *l, const struct peer *p)
{
    for (size_t i = 0; i < l->nbpeers; i++)
        if (same_peer(&l->bpeers[i].peer, p))
            return &l->bpeers[i];
    return NULL;
}

/* How many backlog messages wait for peer p. */
static size_t
backlog_count(const struct loop *l, const struct peer *p)
{
    const struct backlog_peer *bp = l->nbpeers ? backlog_peer(l, p) : NULL;
    return bp ? bp->n : 0;
}

/* One message of peer p left the backlog (sent or dropped). */
static void
backlog_unref(struct loop *l, const struct peer *p)
{
    struct backlog_peer *bp = backlog_peer(l, p);
    l->nbacklog--;
    if (--bp->n == 0)
        *bp = l->bpeers[--l->nbpeers];
}

/* Removes every backlog message of peer p. */
static void
backlog_drop_peer(struct loop *l, const struct peer *p)
{
    struct pending **pp = &l->backlog;
    l->backlog_tail = &l->backlog;
    while (*pp) {
        if (same_peer(&(*pp)->to, p)) {
            struct pending *gone = *pp;
            *pp = gone->next;
            backlog_unref(l, &gone->to);
            free(gone);
        } else {
            l->backlog_tail = &(*pp)->next;
            pp = &(*pp)->next;
        }
    }
}

/* Keeps a copy of an encoded message for later, behind the peer's earlier ones. A peer
 * that has not read BACKLOG_PEER_MAX messages is given up: its backlog is dropped and it
 * is forgotten as if it had vanished (its waits and subscriptions end; a worker is left
 * to the heartbeat timeout), and that is logged. */
static void
backlog_push(struct loop *l, const struct peer *to, const uint8_t *buf, size_t len)
{
    if (backlog_count(l, to) >= BACKLOG_PEER_MAX) {
        l->stats.send_full++;
        log_event(LOG_WARN, "peer_dropped", "side=%s reason=\"it does not read its messages\"",
                  side_name[to->side]);
        backlog_drop_peer(l, to);
        peer_vanished(l, to);
        return;
    }
    struct pending *pm = malloc(sizeof(*pm) + len);
    if (pm == NULL) {
        /* Out of memory: the engine's policy (abort) applies here too; what was
         * acknowledged is in SQLite. */
        log_event(LOG_ERROR, "out_of_memory", "where=backlog");
        abort();
    }
    pm->to = *to;
    pm->len = len;
    pm->next = NULL;
    memcpy(pm->buf, buf, len);
    *l->backlog_tail = pm;
    l->backlog_tail = &pm->next;
    l->nbacklog++;
    struct backlog_peer *bp = backlog_peer(l, to);
    if (bp == NULL) {
        if (l->nbpeers == l->capbpeers) {
            size_t cap = l->capbpeers ? l->capbpeers * 2 : 8;
            struct backlog_peer *grown = realloc(l->bpeers, cap * sizeof(*grown));
            if (grown == NULL) {
                log_event(LOG_ERROR, "out_of_memory", "where=backlog");
                abort();
            }
            l->bpeers = grown;
            l->capbpeers = cap;
        }
        bp = &l->bpeers[l->nbpeers++];
        *bp = (struct backlog_peer){*to, 0};
    }
    bp->n++;
    l->stats.backlogged++;
}

/* Sends what the backlog holds, oldest first, keeping each peer's order: once a peer's
 * queue is full again, its later messages wait for the next pass. */
static void
backlog_flush(struct loop *l)
{
    struct peer blocked[BACKLOG_BLOCKED_MAX];
    size_t nblocked = 0;
    struct pending **pp = &l->backlog;
    while (*pp) {
        struct pending *pm = *pp;
        bool skip = false;
        for (size_t i = 0; i < nblocked && !skip; i++)
            skip = same_peer(&blocked[i], &pm->to);
        int err = skip ? EAGAIN : send_frame(l, &pm->to, pm->buf, pm->len);
        if (err == EAGAIN) {
            if (!skip) {
                if (nblocked == BACKLOG_BLOCKED_MAX)
                    break;
                blocked[nblocked++] = pm->to;
            }
            pp = &pm->next;
            continue;
        }
        if (err == EHOSTUNREACH)
            peer_vanished(l, &pm->to);
        *pp = pm->next;
        backlog_unref(l, &pm->to);
        free(pm);
    }
    l->backlog_tail = &l->backlog;
    while (*l->backlog_tail)
        l->backlog_tail = &(*l->backlog_tail)->next;
}

/* An event the subscriber could not take: its subscription ends, and it is told so by
 * one EVENT_SUBSCRIPTION_OVERFLOW (kept in the backlog until it can read it), so that no
 * event goes missing without the subscriber knowing (S11). */
static void
event_overflow(struct loop *l, const struct out_msg *m)
{
    l->stats.events_overflowed++;
    if (!engine_subscription_overflow(l->eng, &m->to, m->subscription, m->request_id))
        return; /* already ended and told */
    struct out_msg note = {
        .type = OUTMSG_EVENT,
        .to = m->to,
        .request_id = m->request_id,
        .event = EV_SUBSCRIPTION_OVERFLOW,
        .subscription = m->subscription,
    };
    const uint8_t *buf = NULL;
    size_t len = 0;
    if (wire_encode(&l->enc, &note, &buf, &len) != 0) {
        log_event(LOG_ERROR, "encode_failed", "side=%s", side_name[m->to.side]);
        return;
    }
    log_event(LOG_WARN, "subscription_overflow", "group=%s", m->subscription);
    backlog_push(l, &m->to, buf, len);
}

/* Sends one message. A vanished peer is forgotten; at a full peer queue the message
 * waits in the backlog (an event ends its subscription instead); never a silent drop. */
static void
send_one(struct loop *l, const struct out_msg *m)
{
    const uint8_t *buf = NULL;
    size_t len = 0;
    bool behind = backlog_count(l, &m->to) > 0;
    if (behind && m->type == OUTMSG_EVENT) {
        event_overflow(l, m);
        return;
    }
    if (wire_encode(&l->enc, m, &buf, &len) != 0) {
        log_event(LOG_ERROR, "encode_failed", "side=%s", side_name[m->to.side]);
        return;
    }
    if (behind) {
        backlog_push(l, &m->to, buf, len);
        return;
    }
    int err = send_frame(l, &m->to, buf, len);
    if (err == 0)
        return;
    if (err == EHOSTUNREACH) {
        peer_vanished(l, &m->to);
    } else if (err == EAGAIN) {
        if (m->type == OUTMSG_EVENT)
            event_overflow(l, m);
        else
            backlog_push(l, &m->to, buf, len);
    } else {
        l->stats.send_full++;
        log_event(LOG_WARN, "send_failed", "side=%s reason=\"%s\" type=%d", side_name[m->to.side],
                  zmq_strerror(err), (int)m->type);
    }
}

/* Writes the turn's rows in one transaction. */
static int
commit(struct loop *l)
{
    if (l->out.ngroups == 0 && l->out.njobs == 0 && l->out.nlimiters == 0 &&
        l->out.npurge_roots == 0 && l->out.ndeleted == 0)
        return 0;
    if (store_begin(l->store) != 0)
        goto fail;
    for (size_t i = 0; i < l->out.ngroups; i++)
        if (store_put_group(l->store, &l->out.groups[i]) != 0)
            goto fail;
    for (size_t i = 0; i < l->out.nlimiters; i++)
        if (store_put_limiter(l->store, &l->out.limiters[i]) != 0)
            goto fail;
    for (size_t i = 0; i < l->out.njobs; i++)
        if (store_put_job(l->store, &l->out.jobs[i]) != 0)
            goto fail;
    /* Purges last: a node written and purged in the same turn is written, then deleted. */
    for (size_t i = 0; i < l->out.npurge_roots; i++)
        if (store_mark_purge(l->store, l->out.purge_roots[i]) != 0)
            goto fail;
    for (size_t i = 0; i < l->out.ndeleted; i++) {
        const struct deleted_row *d = &l->out.deleted[i];
        if (store_delete_node(l->store, d->type == NODE_GROUP, d->id, d->root) != 0)
            goto fail;
    }
    if (store_commit(l->store) != 0)
        goto fail;
    l->stats.commits++;
    l->stats.rows += l->out.ngroups + l->out.njobs + l->out.ndeleted;
    return 0;
fail:
    log_event(LOG_ERROR, "store_failed", "error=\"%s\"", store_errmsg(l->store));
    store_rollback(l->store);
    return -1;
}

/* One turn; returns 0, or -1 on a store failure. */
static int
turn(struct loop *l, uint64_t *next)
{
    uint64_t now = clock_wall_ms();
    long wait = *next == UINT64_MAX ? MAX_SLEEP_MS : (long)(*next > now ? *next - now : 0);
    if (wait > MAX_SLEEP_MS)
        wait = MAX_SLEEP_MS;
    if (l->nbacklog > 0 && wait > BACKLOG_RETRY_MS)
        wait = BACKLOG_RETRY_MS;
    zmq_pollitem_t items[5] = {
        {l->sock[SIDE_CLIENT], 0, ZMQ_POLLIN, 0},
        {l->sock[SIDE_WORKER], 0, ZMQ_POLLIN, 0},
        {l->monitor[SIDE_CLIENT], 0, ZMQ_POLLIN, 0},
        {l->monitor[SIDE_WORKER], 0, ZMQ_POLLIN, 0},
        {NULL, l->sigfd, ZMQ_POLLIN, 0},
    };
    if (zmq_poll(items, 5, wait) < 0 && errno != EINTR)
        return -1;
    if (items[4].revents & ZMQ_POLLIN) {
        struct signalfd_siginfo si;
        if (read(l->sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si))
            log_event(LOG_INFO, "signal", "signal=%u", si.ssi_signo);
        l->stopping = true;
    }
    for (int side = 0; side < 2; side++)
        if (items[2 + side].revents & ZMQ_POLLIN)
            read_monitor(l, (enum peer_side)side);

    now = clock_wall_ms();
    /* Alternate between the sides so neither starves the other. */
    for (int n = 0; n < TURN_BATCH;) {
        bool got = false;
        for (int side = 0; side < 2; side++)
            if (receive_one(l, (enum peer_side)side, now)) {
                got = true;
                n++;
            }
        if (!got)
            break;
    }
    *next = engine_tick(l->eng, now, &l->out);
    if (l->stopping)
        engine_shutdown(l->eng, &l->out);
    engine_flush(l->eng, &l->out);
    if (commit(l) != 0)
        return -1;
    l->gone_set = false;
    if (l->nbacklog > 0)
        backlog_flush(l);
    for (size_t i = 0; i < l->out.nmsgs; i++)
        send_one(l, &l->out.msgs[i]);
    for (size_t i = 0; i < l->out.nnotes; i++)
        log_event((enum log_level)l->out.notes[i].level, l->out.notes[i].event, "%s",
                  l->out.notes[i].kv);
    outbox_reset(&l->out);
    engine_end_turn(l->eng);
    l->stats.turns++;
    return 0;
}

int
loop_run(struct loop *l)
{
    uint64_t next = 0;
    while (!l->stopping)
        if (turn(l, &next) != 0)
            return -1;
    return 0;
}
