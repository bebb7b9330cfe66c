/* client.c - struct corral_client: one DEALER socket to the broker's client endpoint.
 *
 * Every request is one frame holding an Envelope{version 1, request_id = ++counter}.
 * Blocking calls send, then read the socket (zmq_poll) until the reply carrying their
 * request id arrives or their deadline passes. Whatever else arrives meanwhile is
 * routed: replies to pipelined submits go to a FIFO of results, Event messages to an
 * event FIFO (less the types a filtered subscription does not want, should the broker not
 * filter them itself), and replies nobody waits for (a late answer to a call that timed
 * out) are dropped. Network input never reaches an assert. Frames are unpacked into one
 * arena and requests packed into one buffer, both reused. Not thread-safe (one per
 * thread). */
#include "clock.h"
#include "codec.h"
#include "corral.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define CLIENT_HWM            100000
#define CLIENT_LAST_ERROR_MAX 1024
#define CLIENT_DRAIN_MAX      1024 /* frames read per opportunistic drain */
#define CLIENT_QUIET_US       50   /* see quiet() */
#define NO_DEADLINE           UINT64_MAX
#define POLL_DEADLINE         0 /* timeout 0: passed at once, without reading the clock */

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
 * always passes, and ends the subscription and this record. */
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
    enum err_text err_kind;     /* the last error */
    const char *err_static;     /* ERR_TEXT_STATIC: a static string */
    int err_arg;                /* the lazy texts' number */
    char err_buf[CLIENT_LAST_ERROR_MAX];
};

/* What a wait is for: the reply to one request, a pipelined result, or an event. */
enum wait_for { WAIT_REPLY, WAIT_RESULT, WAIT_EVENT };

/* ------------------------------------------------------------------ small helpers */

static void set_error(struct corral_client *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Records a description of the last failure (format borrowed), formatted now: for the
 * rare failures whose text has parts that do not outlive the call. */
static void
set_error(struct corral_client *c, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(c->err_buf, sizeof c->err_buf, fmt, ap);
    va_end(ap);
    c->err_kind = ERR_TEXT_BUF;
}

/* Records text (static) as the description of the last failure. */
static void
set_error_static(struct corral_client *c, const char *text)
{
    c->err_kind = ERR_TEXT_STATIC;
    c->err_static = text;
}

/* Records a failure whose text (kind) is built when asked for, with the number arg. */
static void
set_error_lazy(struct corral_client *c, enum err_text kind, int arg)
{
    c->err_kind = kind;
    c->err_arg = arg;
}

/* Forgets the last error: a call starts. */
static void
clear_error(struct corral_client *c)
{
    c->err_kind = ERR_TEXT_NONE;
}

/* Records the local error rc with its generic description and returns rc. */
static int
fail_local(struct corral_client *c, int rc)
{
    set_error_static(c, corral_strerror(rc));
    return rc;
}

/* The absolute monotonic deadline for timeout_ms from now (negative: none). */
static uint64_t
deadline_after(int timeout_ms)
{
    if (timeout_ms < 0)
        return NO_DEADLINE;
    if (timeout_ms == 0)
        return POLL_DEADLINE;
    return clock_mono_ms() + (uint64_t)timeout_ms;
}

/* Whether the opportunistic drain in corral_submit_async may leave the socket alone: it
 * was found empty less than CLIENT_QUIET_US ago. Finding it empty costs libzmq two system
 * calls, and a pipelining caller submits many times between replies. Explicit calls
 * (collect, next event, waits) always look: a poll means "look now". */
static bool
quiet(const struct corral_client *c)
{
    return c->quiet_until_us != 0 && clock_mono_us() < c->quiet_until_us;
}

/* Milliseconds left until deadline, for zmq_poll (-1: forever, 0: passed). */
static long
remaining_ms(uint64_t deadline)
{
    uint64_t now;

    if (deadline == NO_DEADLINE)
        return -1;
    if (deadline == POLL_DEADLINE)
        return 0;
    now = clock_mono_ms();
    return now >= deadline ? 0 : (long)(deadline - now);
}

/* A protobuf string field for s (borrowed): "" for NULL. */
static char *
pb_str(const char *s)
{
    return (char *)(s != NULL ? s : "");
}

/* ------------------------------------------------------------------ id set */

/* The slot index where id's probe sequence starts. */
static size_t
idset_home(const struct idset *s, uint64_t id)
{
    return (size_t)((id * UINT64_C(0x9E3779B97F4A7C15)) >> 17) & (s->cap - 1);
}

/* Inserts id (not 0) into s, growing it. Returns 0 or CORRAL_ENOMEM. */
static int
idset_add(struct idset *s, uint64_t id)
{
    size_t i;

    if ((s->count + 1) * 2 > s->cap) {
        size_t ncap = s->cap > 0 ? s->cap * 2 : 64;
        struct idset n = {calloc(ncap, sizeof(uint64_t)), ncap, 0};

        if (n.slots == NULL)
            return CORRAL_ENOMEM;
        for (i = 0; i < s->cap; i++) {
            if (s->slots[i] != 0) {
                size_t j = idset_home(&n, s->slots[i]);

                while (n.slots[j] != 0)
                    j = (j + 1) & (ncap - 1);
                n.slots[j] = s->slots[i];
                n.count++;
            }
        }
        free(s->slots);
        *s = n;
    }
    i = idset_home(s, id);
    while (s->slots[i] != 0 && s->slots[i] != id)
        i = (i + 1) & (s->cap - 1);
    if (s->slots[i] == 0) {
        s->slots[i] = id;
        s->count++;
    }
    return CORRAL_OK;
}

/* Removes id from s; returns whether it was there. */
static bool
idset_remove(struct idset *s, uint64_t id)
{
    size_t i, j;

    if (s->cap == 0 || id == 0)
        return false;
    i = idset_home(s, id);
    while (s->slots[i] != id) {
        if (s->slots[i] == 0)
            return false;
        i = (i + 1) & (s->cap - 1);
    }
    /* Backward-shift deletion keeps every probe sequence unbroken without tombstones. */
    j = i;
    for (;;) {
        size_t k;

        s->slots[i] = 0;
        for (;;) {
            j = (j + 1) & (s->cap - 1);
            if (s->slots[j] == 0) {
                s->count--;
                return true;
            }
            k = idset_home(s, s->slots[j]);
            /* Move slot j back to i unless its home lies cyclically in (i, j]. */
            if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
                continue;
            break;
        }
        s->slots[i] = s->slots[j];
        i = j;
    }
}

/* ------------------------------------------------------------------ result ring */

/* Makes room for at least want results in r. Returns 0 or CORRAL_ENOMEM. */
static int
ring_reserve(struct result_ring *r, size_t want)
{
    size_t ncap, i;
    struct corral_submit_result *nb;

    if (want <= r->cap)
        return CORRAL_OK;
    ncap = r->cap > 0 ? r->cap : 64;
    while (ncap < want)
        ncap *= 2;
    nb = malloc(ncap * sizeof *nb);
    if (nb == NULL)
        return CORRAL_ENOMEM;
    for (i = 0; i < r->count; i++)
        nb[i] = r->buf[(r->head + i) % r->cap];
    free(r->buf);
    r->buf = nb;
    r->cap = ncap;
    r->head = 0;
    return CORRAL_OK;
}

/* Appends *res (copied) to r, whose room was reserved beforehand. */
static void
ring_push(struct result_ring *r, const struct corral_submit_result *res)
{
    if (r->count == r->cap && ring_reserve(r, r->count + 1) != CORRAL_OK)
        return; /* cannot happen: room is reserved when the submit is sent */
    r->buf[(r->head + r->count) % r->cap] = *res;
    r->count++;
}

/* ------------------------------------------------------------------ routing */

/* Whether the event pb (borrowed) of the subscription request_id passes its filter; the
 * group's own GROUP_ENDED (which always passes) ends the filter. */
static bool
filter_pass(struct corral_client *c, uint64_t request_id, const Corral__V1__Event *pb)
{
    struct sub_filter **pp, *f;
    int type = (int)pb->type;

    for (pp = &c->filters; *pp != NULL; pp = &(*pp)->next)
        if ((*pp)->request_id == request_id)
            break;
    f = *pp;
    if (f == NULL)
        return true; /* no filter: every type */
    if (type == CORRAL_EVENT_GROUP_ENDED && pb->node != NULL && pb->node->id != NULL &&
        strcmp(pb->node->id, f->group) == 0) {
        *pp = f->next;
        free(f);
        return true;
    }
    return type >= 0 && type < 32 && (f->mask & (1u << type)) != 0;
}

/* Queues the event in pb (borrowed), received for request_id, unless its subscription's
 * filter drops it; drops it when it cannot be converted. */
static void
route_event(struct corral_client *c, uint64_t request_id, const Corral__V1__Event *pb)
{
    struct corral_event *ev = NULL;
    struct event_item *it;

    if (c->filters != NULL && !filter_pass(c, request_id, pb))
        return;
    if (codec_event_new(&ev, pb) != CORRAL_OK)
        return;
    it = malloc(sizeof *it);
    if (it == NULL) {
        corral_event_free(&ev);
        return;
    }
    it->next = NULL;
    it->ev = ev;
    if (c->ev_tail != NULL)
        c->ev_tail->next = it;
    else
        c->ev_head = it;
    c->ev_tail = it;
}

/* Records the reply r (borrowed) to the pipelined submit token as a result. */
static void
route_submit_reply(struct corral_client *c, uint64_t token, const Corral__V1__Reply *r)
{
    struct corral_submit_result res;

    memset(&res, 0, sizeof res);
    res.token = token;
    res.err = codec_reply_code(r);
    if (res.err == CORRAL_OK) {
        res.err = codec_copy_id(res.id, r->id);
        res.cancelled = r->cancelled != 0;
    }
    if (res.err != CORRAL_OK)
        res.id[0] = '\0';
    ring_push(&c->results, &res);
}

/* Handles one received frame (borrowed). When it is the reply to want (0: none), returns
 * its envelope in *out (borrowed from c's arena: valid until the next frame is read) and
 * true; otherwise routes or drops it and returns false. */
static bool
route_frame(struct corral_client *c, const void *data, size_t len, uint64_t want,
            const Corral__V1__Envelope **out)
{
    const Corral__V1__Envelope *env = NULL;

    if (codec_unpack(&c->arena, data, len, &env) != CORRAL_OK)
        return false; /* unreadable: nobody can be told, drop it */
    if (want != 0 && env->request_id == want &&
        env->body_case == CORRAL__V1__ENVELOPE__BODY_REPLY) {
        *out = env;
        return true;
    }
    if (env->version != CORRAL_PROTOCOL_VERSION)
        return false;
    if (env->body_case == CORRAL__V1__ENVELOPE__BODY_REPLY) {
        if (env->reply != NULL && idset_remove(&c->submits, env->request_id))
            route_submit_reply(c, env->request_id, env->reply);
    } else if (env->body_case == CORRAL__V1__ENVELOPE__BODY_EVENT && env->event != NULL) {
        route_event(c, env->request_id, env->event);
    }
    return false;
}

/* Reads one frame without blocking. Returns 1 when a frame was handled (and, if it was
 * the reply to want, stored in *out, borrowed as route_frame says, with *got set), 0 when
 * none was waiting, or a negative corral_err for a socket error. */
static int
recv_one(struct corral_client *c, uint64_t want, const Corral__V1__Envelope **out, bool *got)
{
    zmq_msg_t msg;
    int n;

    zmq_msg_init(&msg);
    n = zmq_msg_recv(&msg, c->sock, ZMQ_DONTWAIT);
    if (n < 0) {
        int e = zmq_errno();

        zmq_msg_close(&msg);
        if (e == EAGAIN) {
            c->quiet_until_us = clock_mono_us() + CLIENT_QUIET_US;
            return 0;
        }
        if (e == EINTR)
            return 0;
        return -CORRAL_EIO;
    }
    c->quiet_until_us = 0;
    /* A multipart message is not ours to read: drop its other frames. */
    if (zmq_msg_more(&msg)) {
        while (zmq_msg_more(&msg) && zmq_msg_recv(&msg, c->sock, ZMQ_DONTWAIT) >= 0)
            ;
        zmq_msg_close(&msg);
        return 1;
    }
    *got = route_frame(c, zmq_msg_data(&msg), zmq_msg_size(&msg), want, out);
    zmq_msg_close(&msg);
    return 1;
}

/* Reads whatever is waiting on the socket without blocking, routing it. */
static void
drain(struct corral_client *c)
{
    int i;
    bool got = false;

    for (i = 0; i < CLIENT_DRAIN_MAX; i++) {
        if (recv_one(c, 0, NULL, &got) <= 0)
            break;
    }
}

/* Whether a wait for a result or an event is already satisfied (never for a reply). */
static bool
wait_satisfied(const struct corral_client *c, enum wait_for what)
{
    if (what == WAIT_RESULT)
        return c->results.count > 0;
    if (what == WAIT_EVENT)
        return c->ev_head != NULL;
    return false;
}

/* Reads the socket until the wait for what is satisfied or deadline passes. For
 * WAIT_REPLY, returns the reply to want in *out (borrowed from c's arena). Returns 0,
 * CORRAL_ETIMEDOUT or CORRAL_EIO. */
static int
wait_until(struct corral_client *c, enum wait_for what, uint64_t want, uint64_t deadline,
           const Corral__V1__Envelope **out)
{
    for (;;) {
        zmq_pollitem_t item = {c->sock, 0, ZMQ_POLLIN, 0};
        bool got = false;
        long left;
        int n;

        if (wait_satisfied(c, what))
            return CORRAL_OK;
        n = recv_one(c, what == WAIT_REPLY ? want : 0, out, &got);
        if (n < 0)
            return -n;
        if (got)
            return CORRAL_OK;
        if (n > 0)
            continue;
        left = remaining_ms(deadline);
        if (left == 0)
            return CORRAL_ETIMEDOUT;
        if (zmq_poll(&item, 1, left) < 0 && zmq_errno() != EINTR)
            return CORRAL_EIO;
    }
}

/* Sends env (borrowed) as request id, waiting for room in the send queue (while routing
 * what arrives) until deadline. Returns 0, CORRAL_ETIMEDOUT, CORRAL_EIO or
 * CORRAL_ENOMEM. */
static int
send_request(struct corral_client *c, Corral__V1__Envelope *env, uint64_t id, uint64_t deadline)
{
    int rc;
    const uint8_t *buf = NULL;
    size_t len = 0;

    rc = codec_pack(&c->out, env, id, &buf, &len);
    if (rc != CORRAL_OK)
        return rc;
    for (;;) {
        zmq_pollitem_t item = {c->sock, 0, ZMQ_POLLIN | ZMQ_POLLOUT, 0};
        long left;

        if (zmq_send(c->sock, buf, len, ZMQ_DONTWAIT) >= 0)
            return CORRAL_OK;
        if (zmq_errno() != EAGAIN && zmq_errno() != EINTR)
            return CORRAL_EIO;
        /* Full queue, or not connected yet (ZMQ_IMMEDIATE): keep reading meanwhile (this
         * does not touch c->out, which buf points into). */
        drain(c);
        left = remaining_ms(deadline);
        if (left == 0)
            return CORRAL_ETIMEDOUT;
        if (zmq_poll(&item, 1, left) < 0 && zmq_errno() != EINTR)
            return CORRAL_EIO;
    }
}

/* Sends env (borrowed) as request id and waits up to timeout_ms (negative: forever) for
 * its reply. On success returns the Reply's envelope in *out (may be NULL to discard),
 * borrowed from c's arena until the next frame is read. A broker error code is returned
 * as is, with its message kept for last_error. */
static int
call_id(struct corral_client *c, Corral__V1__Envelope *env, uint64_t id, int timeout_ms,
        const Corral__V1__Envelope **out)
{
    int rc;
    uint64_t deadline = deadline_after(timeout_ms);
    const Corral__V1__Envelope *rep = NULL;
    const Corral__V1__Reply *r;

    clear_error(c);
    rc = send_request(c, env, id, deadline);
    if (rc == CORRAL_OK)
        rc = wait_until(c, WAIT_REPLY, id, deadline, &rep);
    if (rc != CORRAL_OK) {
        if (rc == CORRAL_ETIMEDOUT)
            set_error_lazy(c, ERR_TEXT_NO_REPLY, timeout_ms);
        else
            fail_local(c, rc);
        return rc;
    }
    r = rep->reply;
    if (r == NULL) {
        set_error_static(c, "malformed reply");
        return CORRAL_EPROTO;
    }
    rc = codec_reply_code(r);
    if (rep->version != CORRAL_PROTOCOL_VERSION && rc != CORRAL_EVERSION) {
        set_error(c, "reply with protocol version %u", (unsigned)rep->version);
        return CORRAL_EPROTO;
    }
    if (rc != CORRAL_OK) {
        if (rc == CORRAL_EPROTO)
            set_error(c, "reply with unknown code %d", (int)r->code);
        else if (r->message != NULL && r->message[0] != '\0')
            set_error(c, "%s", r->message);
        else if (rc == CORRAL_EBUSY && r->retry_after_ms > 0)
            set_error(c, "%s (retry after %u ms)", corral_strerror(rc),
                      (unsigned)r->retry_after_ms);
        else
            set_error_static(c, corral_strerror(rc));
        return rc;
    }
    if (out != NULL)
        *out = rep;
    return CORRAL_OK;
}

/* call_id under the next request id. */
static int
call(struct corral_client *c, Corral__V1__Envelope *env, int timeout_ms,
     const Corral__V1__Envelope **out)
{
    return call_id(c, env, ++c->last_id, timeout_ms, out);
}

/* Takes the reply's id (borrowed from rep) into id_out; CORRAL_EPROTO if it is bad. */
static int
take_id(struct corral_client *c, const Corral__V1__Envelope *rep, char id_out[CORRAL_ID_MAX],
        bool *cancelled)
{
    char id[CORRAL_ID_MAX];

    if (codec_copy_id(id, rep->reply->id) != CORRAL_OK) {
        set_error_static(c, "reply without a valid id");
        return CORRAL_EPROTO;
    }
    memcpy(id_out, id, sizeof id);
    if (cancelled != NULL)
        *cancelled = rep->reply->cancelled != 0;
    return CORRAL_OK;
}

/* Whether s (borrowed) is a non-empty string. */
static bool
nonempty(const char *s)
{
    return s != NULL && s[0] != '\0';
}

/* ------------------------------------------------------------------ public API */

/* Returns owned *out: a client connected (lazily) to endpoint (borrowed; NULL: default). */
int
corral_client_new(struct corral_client **out, const char *endpoint, int timeout_ms)
{
    int rc = CORRAL_OK;
    int hwm = CLIENT_HWM, zero = 0, one = 1;
    struct corral_client *c = NULL;

    if (out == NULL)
        return CORRAL_EINVAL;
    c = calloc(1, sizeof *c);
    if (c == NULL) {
        rc = CORRAL_ENOMEM;
        goto out;
    }
    c->timeout_ms = timeout_ms;
    c->ctx = zmq_ctx_new();
    if (c->ctx == NULL) {
        rc = CORRAL_EIO;
        goto out;
    }
    c->sock = zmq_socket(c->ctx, ZMQ_DEALER);
    if (c->sock == NULL) {
        rc = CORRAL_EIO;
        goto out;
    }
    /* ZMQ_IMMEDIATE: nothing is queued for a broker that is not connected, so a request
     * that timed out while the broker was down is not delivered late. */
    if (zmq_setsockopt(c->sock, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
        zmq_setsockopt(c->sock, ZMQ_SNDHWM, &hwm, sizeof hwm) != 0 ||
        zmq_setsockopt(c->sock, ZMQ_RCVHWM, &hwm, sizeof hwm) != 0 ||
        zmq_setsockopt(c->sock, ZMQ_IMMEDIATE, &one, sizeof one) != 0) {
        rc = CORRAL_EIO;
        goto out;
    }
    if (zmq_connect(c->sock, endpoint != NULL ? endpoint : CORRAL_DEFAULT_CLIENT_ENDPOINT) != 0) {
        rc = CORRAL_EINVAL;
        goto out;
    }
    *out = c;
    c = NULL;
out:
    corral_client_free(&c);
    return rc;
}

/* Closes the socket and frees c with every queued result and event. Accepts NULL. */
void
corral_client_free(struct corral_client **p)
{
    struct corral_client *c;

    if (p == NULL || *p == NULL)
        return;
    c = *p;
    if (c->sock != NULL)
        zmq_close(c->sock);
    if (c->ctx != NULL)
        zmq_ctx_term(c->ctx);
    while (c->ev_head != NULL) {
        struct event_item *it = c->ev_head;

        c->ev_head = it->next;
        corral_event_free(&it->ev);
        free(it);
    }
    while (c->filters != NULL) {
        struct sub_filter *f = c->filters;

        c->filters = f->next;
        free(f);
    }
    codec_arena_fini(&c->arena);
    codec_buf_fini(&c->out);
    free(c->submits.slots);
    free(c->results.buf);
    free(c);
    *p = NULL;
}

/* Borrowed; valid until the next call on c. Builds a lazy text on demand, in the client's
 * buffer: c is const for the caller, but no client is defined const (they come from
 * corral_client_new), so writing through the cast is sound. */
const char *
corral_client_last_error(const struct corral_client *c)
{
    struct corral_client *m = (struct corral_client *)c;

    if (c == NULL)
        return corral_strerror(CORRAL_EINVAL);
    switch (c->err_kind) {
    case ERR_TEXT_NONE:
        break;
    case ERR_TEXT_STATIC:
        return c->err_static;
    case ERR_TEXT_BUF:
        return c->err_buf;
    case ERR_TEXT_NO_REPLY:
        snprintf(m->err_buf, sizeof m->err_buf, "no reply from the broker within %d ms",
                 c->err_arg);
        return c->err_buf;
    case ERR_TEXT_SEND_TIMEOUT:
        snprintf(m->err_buf, sizeof m->err_buf, "send queue full or broker not connected for %d ms",
                 c->err_arg);
        return c->err_buf;
    }
    return "";
}

/* Borrows every argument; writes the new id into id_out. */
int
corral_group_open(struct corral_client *c, const char *parent_group, const char *parent_job,
                  char id_out[CORRAL_ID_MAX], bool *cancelled)
{
    int rc;
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    Corral__V1__OpenGroup body = CORRAL__V1__OPEN_GROUP__INIT;
    const Corral__V1__Envelope *rep = NULL;

    if (c == NULL)
        return CORRAL_EINVAL;
    if (id_out == NULL || (nonempty(parent_group) && nonempty(parent_job)))
        return fail_local(c, CORRAL_EINVAL);
    body.parent_group = pb_str(parent_group);
    body.parent_job = pb_str(parent_job);
    env.body_case = CORRAL__V1__ENVELOPE__BODY_OPEN_GROUP;
    env.open_group = &body;
    rc = call(c, &env, c->timeout_ms, &rep);
    if (rc == CORRAL_OK)
        rc = take_id(c, rep, id_out, cancelled);
    return rc;
}

/* Fills body (borrowed) for a submission; strings and payload are borrowed. */
static void
fill_submit(Corral__V1__Submit *body, const char *group, const char *kind, const void *payload,
            size_t len)
{
    body->group = (char *)group;
    body->kind = (char *)kind;
    body->payload.data = (uint8_t *)payload;
    body->payload.len = len;
}

/* Borrows every argument; writes the job's id into id_out. */
int
corral_submit(struct corral_client *c, const char *group, const char *kind, const void *payload,
              size_t len, char id_out[CORRAL_ID_MAX], bool *cancelled)
{
    int rc;
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    Corral__V1__Submit body = CORRAL__V1__SUBMIT__INIT;
    const Corral__V1__Envelope *rep = NULL;

    if (c == NULL)
        return CORRAL_EINVAL;
    if (!nonempty(group) || !nonempty(kind) || (payload == NULL && len > 0) || id_out == NULL)
        return fail_local(c, CORRAL_EINVAL);
    fill_submit(&body, group, kind, payload, len);
    env.body_case = CORRAL__V1__ENVELOPE__BODY_SUBMIT;
    env.submit = &body;
    rc = call(c, &env, c->timeout_ms, &rep);
    if (rc == CORRAL_OK)
        rc = take_id(c, rep, id_out, cancelled);
    return rc;
}

/* Borrows group. */
int
corral_group_close(struct corral_client *c, const char *group)
{
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    Corral__V1__CloseGroup body = CORRAL__V1__CLOSE_GROUP__INIT;

    if (c == NULL)
        return CORRAL_EINVAL;
    if (!nonempty(group))
        return fail_local(c, CORRAL_EINVAL);
    body.group = (char *)group;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_CLOSE_GROUP;
    env.close_group = &body;
    return call(c, &env, c->timeout_ms, NULL);
}

/* Borrows group and reason (may be NULL). */
int
corral_group_cancel(struct corral_client *c, const char *group, const char *reason)
{
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    Corral__V1__CancelGroup body = CORRAL__V1__CANCEL_GROUP__INIT;

    if (c == NULL)
        return CORRAL_EINVAL;
    if (!nonempty(group))
        return fail_local(c, CORRAL_EINVAL);
    body.group = (char *)group;
    body.reason = pb_str(reason);
    env.body_case = CORRAL__V1__ENVELOPE__BODY_CANCEL_GROUP;
    env.cancel_group = &body;
    return call(c, &env, c->timeout_ms, NULL);
}

/* Borrows job and reason (may be NULL). */
int
corral_job_cancel(struct corral_client *c, const char *job, const char *reason)
{
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    Corral__V1__CancelJob body = CORRAL__V1__CANCEL_JOB__INIT;

    if (c == NULL)
        return CORRAL_EINVAL;
    if (!nonempty(job))
        return fail_local(c, CORRAL_EINVAL);
    body.job = (char *)job;
    body.reason = pb_str(reason);
    env.body_case = CORRAL__V1__ENVELOPE__BODY_CANCEL_JOB;
    env.cancel_job = &body;
    return call(c, &env, c->timeout_ms, NULL);
}

/* Converts the tree of rep (borrowed) into *out, returned owned. */
static int
take_tree(struct corral_client *c, const Corral__V1__Envelope *rep, struct corral_node **out)
{
    int rc;

    if (rep->reply->tree == NULL) {
        set_error_static(c, "reply without a tree");
        return CORRAL_EPROTO;
    }
    rc = codec_node_new(out, rep->reply->tree);
    if (rc == CORRAL_EPROTO)
        set_error_static(c, "malformed tree in reply");
    else if (rc != CORRAL_OK)
        fail_local(c, rc);
    return rc;
}

/* Borrows group; returns owned *out. */
int
corral_group_tree(struct corral_client *c, const char *group, struct corral_node **out)
{
    int rc;
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    Corral__V1__GetTree body = CORRAL__V1__GET_TREE__INIT;
    const Corral__V1__Envelope *rep = NULL;

    if (c == NULL)
        return CORRAL_EINVAL;
    if (!nonempty(group) || out == NULL)
        return fail_local(c, CORRAL_EINVAL);
    body.group = (char *)group;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_GET_TREE;
    env.get_tree = &body;
    rc = call(c, &env, c->timeout_ms, &rep);
    if (rc == CORRAL_OK)
        rc = take_tree(c, rep, out);
    return rc;
}

/* Borrows group; returns owned *out once the group has ended. */
int
corral_group_wait(struct corral_client *c, const char *group, int timeout_ms,
                  struct corral_node **out)
{
    int rc;
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    Corral__V1__WaitGroup body = CORRAL__V1__WAIT_GROUP__INIT;
    const Corral__V1__Envelope *rep = NULL;

    if (c == NULL)
        return CORRAL_EINVAL;
    if (!nonempty(group) || out == NULL)
        return fail_local(c, CORRAL_EINVAL);
    body.group = (char *)group;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_WAIT_GROUP;
    env.wait_group = &body;
    rc = call(c, &env, timeout_ms, &rep);
    if (rc == CORRAL_OK)
        rc = take_tree(c, rep, out);
    return rc;
}

/* Borrows every argument; *token identifies the reply in corral_submit_collect. */
int
corral_submit_async(struct corral_client *c, const char *group, const char *kind,
                    const void *payload, size_t len, uint64_t *token)
{
    int rc;
    uint64_t id;
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    Corral__V1__Submit body = CORRAL__V1__SUBMIT__INIT;

    if (c == NULL)
        return CORRAL_EINVAL;
    if (!nonempty(group) || !nonempty(kind) || (payload == NULL && len > 0) || token == NULL)
        return fail_local(c, CORRAL_EINVAL);
    clear_error(c);
    /* Room for every reply that may come, so routing a reply never allocates. */
    if (ring_reserve(&c->results, c->results.count + c->submits.count + 1) != CORRAL_OK)
        return fail_local(c, CORRAL_ENOMEM);
    id = ++c->last_id;
    if (idset_add(&c->submits, id) != CORRAL_OK)
        return fail_local(c, CORRAL_ENOMEM);
    fill_submit(&body, group, kind, payload, len);
    env.body_case = CORRAL__V1__ENVELOPE__BODY_SUBMIT;
    env.submit = &body;
    rc = send_request(c, &env, id, deadline_after(c->timeout_ms));
    if (rc != CORRAL_OK) {
        idset_remove(&c->submits, id);
        if (rc == CORRAL_ETIMEDOUT)
            set_error_lazy(c, ERR_TEXT_SEND_TIMEOUT, c->timeout_ms);
        else
            fail_local(c, rc);
        return rc;
    }
    /* Keep replies flowing into memory so the broker never meets a full queue. */
    if (!quiet(c))
        drain(c);
    *token = id;
    return CORRAL_OK;
}

/* Copies the next completed pipelined submission into *out (borrowed). */
int
corral_submit_collect(struct corral_client *c, int timeout_ms, struct corral_submit_result *out)
{
    int rc;

    if (c == NULL)
        return CORRAL_EINVAL;
    if (out == NULL)
        return fail_local(c, CORRAL_EINVAL);
    clear_error(c);
    /* Nothing in flight: nothing can arrive, do not wait for it. */
    if (c->results.count == 0 && c->submits.count == 0)
        timeout_ms = 0;
    rc = wait_until(c, WAIT_RESULT, 0, deadline_after(timeout_ms), NULL);
    if (rc != CORRAL_OK)
        return fail_local(c, rc);
    *out = c->results.buf[c->results.head];
    c->results.head = (c->results.head + 1) % c->results.cap;
    c->results.count--;
    return CORRAL_OK;
}

/* Borrows c. */
size_t
corral_submit_pending(const struct corral_client *c)
{
    if (c == NULL)
        return 0;
    return c->submits.count + c->results.count;
}

/* The event types a mask may name. */
#define EVENT_MASK_ALL                                                                             \
    ((1u << CORRAL_EVENT_JOB_DISPATCHED) | (1u << CORRAL_EVENT_JOB_STARTED) |                      \
     (1u << CORRAL_EVENT_JOB_ENDED) | (1u << CORRAL_EVENT_GROUP_CANCELLING) |                      \
     (1u << CORRAL_EVENT_GROUP_ENDED))

/* Borrows group. */
int
corral_subscribe(struct corral_client *c, const char *group)
{
    return corral_subscribe_events(c, group, 0);
}

/* Borrows group. A mask with bits of no event type is CORRAL_EINVAL (a type passed where
 * its bit was meant). */
int
corral_subscribe_events(struct corral_client *c, const char *group, unsigned mask)
{
    int rc;
    size_t n = 0;
    uint64_t id;
    Corral__V1__EventType types[CORRAL_EVENT_GROUP_ENDED];
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    Corral__V1__Subscribe body = CORRAL__V1__SUBSCRIBE__INIT;
    struct sub_filter *f = NULL;

    if (c == NULL)
        return CORRAL_EINVAL;
    if (!nonempty(group) || strlen(group) >= CORRAL_ID_MAX || (mask & ~EVENT_MASK_ALL) != 0)
        return fail_local(c, CORRAL_EINVAL);
    for (int t = CORRAL_EVENT_JOB_DISPATCHED; t <= CORRAL_EVENT_GROUP_ENDED; t++)
        if (mask & (1u << t))
            types[n++] = (Corral__V1__EventType)t;
    id = ++c->last_id;
    if (mask != 0) {
        /* In place before the request goes: its first events may come with the reply. */
        f = malloc(sizeof *f);
        if (f == NULL)
            return fail_local(c, CORRAL_ENOMEM);
        f->request_id = id;
        f->mask = mask;
        memcpy(f->group, group, strlen(group) + 1);
        f->next = c->filters;
        c->filters = f;
    }
    body.group = (char *)group;
    body.n_types = n;
    body.types = types;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_SUBSCRIBE;
    env.subscribe = &body;
    rc = call_id(c, &env, id, c->timeout_ms, NULL);
    /* Refused, or never sent: no events will come. After a timeout (or a reply this
     * library cannot read) the subscription may stand, and the filter with it. */
    if (f != NULL && rc != CORRAL_OK && rc != CORRAL_ETIMEDOUT && rc != CORRAL_EPROTO &&
        rc != CORRAL_EIO) {
        struct sub_filter **pp = &c->filters;

        while (*pp != f)
            pp = &(*pp)->next;
        *pp = f->next;
        free(f);
    }
    return rc;
}

/* Returns the next event owned in *out. */
int
corral_next_event(struct corral_client *c, int timeout_ms, struct corral_event **out)
{
    int rc;
    struct event_item *it;

    if (c == NULL)
        return CORRAL_EINVAL;
    if (out == NULL)
        return fail_local(c, CORRAL_EINVAL);
    clear_error(c);
    rc = wait_until(c, WAIT_EVENT, 0, deadline_after(timeout_ms), NULL);
    if (rc != CORRAL_OK)
        return fail_local(c, rc);
    it = c->ev_head;
    c->ev_head = it->next;
    if (c->ev_head == NULL)
        c->ev_tail = NULL;
    *out = it->ev;
    free(it);
    return CORRAL_OK;
}
