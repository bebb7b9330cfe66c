/* client_int.h - internal to libcorral (not installed): the parts of struct corral_client.
 *
 * client.c owns the DEALER socket: it sends requests, waits for replies and routes every
 * other frame it reads; client_async.c owns the pipelined submissions and the
 * subscriptions, and the queues client.c routes their replies and events into. A client
 * is not thread-safe (one per thread). */
#ifndef CORRAL_CLIENT_INT_H
#define CORRAL_CLIENT_INT_H

#include "codec.h"
#include "corral.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CLIENT_LAST_ERROR_MAX 1024
#define CLIENT_QUIET_US       50 /* see quiet() in client_async.c */

/* An open-addressing set of request ids (0 never used: it marks an empty slot). */
struct idset {
    uint64_t *slots;
    size_t cap; /* a power of two, or 0 */
    size_t count;
};

/* A growable ring of completed pipelined submissions. */
struct result_ring {
    struct corral_submit_result *buf;
    size_t cap;
    size_t head;
    size_t count;
};

struct event_item {
    struct event_item *next;
    struct corral_event *ev; /* owned */
};

/* A subscription with a filter (mask != 0). The broker filters too, but one that predates
 * the filter sends every type: the others are dropped here. The group's own GROUP_ENDED
 * and a SUBSCRIPTION_OVERFLOW always pass, and end the subscription and this record. */
struct sub_filter {
    struct sub_filter *next;
    uint64_t request_id; /* the Subscribe's, which its events carry */
    unsigned mask;       /* bit (1u << type) per wanted type */
    char group[CORRAL_ID_MAX];
};

/* How the last error's text is made. Texts are built only when corral_client_last_error
 * asks: an empty poll fails with CORRAL_ETIMEDOUT, and formatting a text nobody reads on
 * each of them was a measurable part of the client's CPU. */
enum err_text {
    ERR_TEXT_NONE,         /* "" */
    ERR_TEXT_STATIC,       /* err_static */
    ERR_TEXT_BUF,          /* err_buf, already formatted */
    ERR_TEXT_NO_REPLY,     /* "no reply ... within err_arg ms" */
    ERR_TEXT_SEND_TIMEOUT, /* "send queue full ... for err_arg ms" */
};

struct corral_client {
    void *ctx;
    void *sock;
    int timeout_ms;             /* negative: forever */
    uint64_t last_id;           /* request ids: ++last_id, never 0 */
    struct idset submits;       /* pipelined submits without a reply yet */
    struct result_ring results; /* pipelined submits replied, not collected */
    struct event_item *ev_head; /* events not yet taken, oldest first */
    struct event_item *ev_tail;
    struct sub_filter *filters; /* owned list */
    struct codec_arena arena;   /* the last frame received lives here */
    struct codec_buf out;       /* the last request sent was packed here */
    uint64_t quiet_until_us;    /* the socket was found empty: see quiet() */
    uint32_t retry_after_ms;    /* the last call's BUSY hint; 0: none */
    uint64_t rng;               /* xorshift64 state for the jitter of BUSY waits; never 0 */
    enum err_text err_kind;     /* the last error */
    const char *err_static;     /* ERR_TEXT_STATIC: a static string */
    int err_arg;                /* the lazy texts' number */
    char err_buf[CLIENT_LAST_ERROR_MAX];
};

/* What a wait is for: the reply to one request, a pipelined result, or an event. */
enum wait_for { WAIT_REPLY, WAIT_RESULT, WAIT_EVENT };

/* ------------------------------------------------------------------ client.c */

/* Records a failure of c (borrowed) whose text (kind) is built when asked for, with the
 * number arg. */
void client_set_error_lazy(struct corral_client *c, enum err_text kind, int arg);

/* Forgets the last error of c (borrowed) and its BUSY hint: a call starts. */
void client_clear_error(struct corral_client *c);

/* Records the local error rc with its generic description in c (borrowed) and returns
 * rc. */
int client_fail_local(struct corral_client *c, int rc);

/* The absolute monotonic deadline for timeout_ms from now (negative: none). */
uint64_t client_deadline_after(int timeout_ms);

/* Whether s (borrowed) is a non-empty string. */
bool client_nonempty(const char *s);

/* Fills body (borrowed) for a submission; strings and payload are borrowed, and body
 * points into them. */
void client_fill_submit(Corral__V1__Submit *body, const char *group, const char *kind,
                        const void *payload, size_t len);

/* Reads whatever is waiting on c's socket (c borrowed) without blocking, routing it. */
void client_drain(struct corral_client *c);

/* Reads c's socket (c borrowed) until the wait for what is satisfied or deadline passes.
 * For WAIT_REPLY, returns the reply to want in *out (borrowed from c's arena: valid until
 * the next frame is read). Returns 0, CORRAL_ETIMEDOUT or CORRAL_EIO. */
int client_wait_until(struct corral_client *c, enum wait_for what, uint64_t want, uint64_t deadline,
                      const Corral__V1__Envelope **out);

/* Sends env (borrowed) as request id on c's socket (c borrowed), waiting for room in the
 * send queue (while routing what arrives) until deadline. Returns 0, CORRAL_ETIMEDOUT,
 * CORRAL_EIO or CORRAL_ENOMEM. */
int client_send_request(struct corral_client *c, Corral__V1__Envelope *env, uint64_t id,
                        uint64_t deadline);

/* Sends env (borrowed) as request id and waits up to timeout_ms (negative: forever) for
 * its reply, setting c's (borrowed) last error on failure. When a Reply of this protocol
 * version arrived (also with a broker error code, which is returned as is), returns its
 * envelope in *out (may be NULL to discard), borrowed from c's arena until the next frame
 * is read; *out is untouched otherwise. A reply that comes after the timeout is dropped
 * when it arrives (it is nobody's). */
int client_call_id(struct corral_client *c, Corral__V1__Envelope *env, uint64_t id, int timeout_ms,
                   const Corral__V1__Envelope **out);

/* ------------------------------------------------------------------ client_async.c */

/* Queues the event in pb (borrowed), received for request_id, on c (borrowed) unless its
 * subscription's filter drops it; drops it when it cannot be converted. The queued event
 * is owned by c until corral_next_event returns it. */
void client_route_event(struct corral_client *c, uint64_t request_id, const Corral__V1__Event *pb);

/* Records the reply r (borrowed) to request_id as a result on c (borrowed) when it is a
 * pipelined submit in flight; drops it otherwise. Never allocates (room was reserved when
 * the submit was sent). */
void client_route_submit_reply(struct corral_client *c, uint64_t request_id,
                               const Corral__V1__Reply *r);

/* Frees every queued result and event, every filter and the set of submits in flight of
 * c (borrowed), which is being freed: its queues are not usable afterwards. */
void client_async_fini(struct corral_client *c);

#endif
