/* client.c - struct corral_client: one DEALER socket to the broker's client endpoint.
 *
 * Every request is one frame holding an Envelope{version 1, request_id = ++counter}.
 * Blocking calls send, then read the socket (zmq_poll) until the reply carrying their
 * request id arrives or their deadline passes. Whatever else arrives meanwhile is
 * routed: replies to pipelined submits go to a FIFO of results, Event messages to an
 * event FIFO, and replies nobody waits for (a late answer to a call that timed out) are
 * dropped. Network input never reaches an assert. Not thread-safe (one per thread). */
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
#define NO_DEADLINE           UINT64_MAX

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

struct corral_client {
    void *ctx;
    void *sock;
    int timeout_ms;             /* negative: forever */
    uint64_t last_id;           /* request ids: ++last_id, never 0 */
    struct idset submits;       /* pipelined submits without a reply yet */
    struct result_ring results; /* pipelined submits replied, not collected */
    struct event_item *ev_head; /* events not yet taken, oldest first */
    struct event_item *ev_tail;
    char last_error[CLIENT_LAST_ERROR_MAX];
};

/* What a wait is for: the reply to one request, a pipelined result, or an event. */
enum wait_for { WAIT_REPLY, WAIT_RESULT, WAIT_EVENT };

/* ------------------------------------------------------------------ small helpers */

static void set_error(struct corral_client *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Records a description of the last failure (format borrowed). */
static void
set_error(struct corral_client *c, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(c->last_error, sizeof c->last_error, fmt, ap);
    va_end(ap);
}

/* Records the local error rc with its generic description and returns rc. */
static int
fail_local(struct corral_client *c, int rc)
{
    set_error(c, "%s", corral_strerror(rc));
    return rc;
}

/* The absolute monotonic deadline for timeout_ms from now (negative: none). */
static uint64_t
deadline_after(int timeout_ms)
{
    if (timeout_ms < 0)
        return NO_DEADLINE;
    return clock_mono_ms() + (uint64_t)timeout_ms;
}

/* Milliseconds left until deadline, for zmq_poll (-1: forever, 0: passed). */
static long
remaining_ms(uint64_t deadline)
{
    uint64_t now;

    if (deadline == NO_DEADLINE)
        return -1;
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

/* Queues the event in pb (borrowed); drops it when it cannot be converted. */
static void
route_event(struct corral_client *c, const Corral__V1__Event *pb)
{
    struct corral_event *ev = NULL;
    struct event_item *it;

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
 * its envelope owned in *out and true; otherwise routes or drops it and returns false. */
static bool
route_frame(struct corral_client *c, const void *data, size_t len, uint64_t want,
            Corral__V1__Envelope **out)
{
    Corral__V1__Envelope *env = NULL;
    bool mine = false;

    if (codec_unpack(data, len, &env) != CORRAL_OK)
        goto out; /* unreadable: nobody can be told, drop it */
    if (want != 0 && env->request_id == want &&
        env->body_case == CORRAL__V1__ENVELOPE__BODY_REPLY) {
        *out = env;
        env = NULL;
        mine = true;
        goto out;
    }
    if (env->version != CORRAL_PROTOCOL_VERSION)
        goto out;
    if (env->body_case == CORRAL__V1__ENVELOPE__BODY_REPLY) {
        if (env->reply != NULL && idset_remove(&c->submits, env->request_id))
            route_submit_reply(c, env->request_id, env->reply);
    } else if (env->body_case == CORRAL__V1__ENVELOPE__BODY_EVENT && env->event != NULL) {
        route_event(c, env->event);
    }
out:
    codec_envelope_free(&env);
    return mine;
}

/* Reads one frame without blocking. Returns 1 when a frame was handled (and, if it was
 * the reply to want, stored owned in *out with *got set), 0 when none was waiting, or
 * a negative corral_err for a socket error. */
static int
recv_one(struct corral_client *c, uint64_t want, Corral__V1__Envelope **out, bool *got)
{
    zmq_msg_t msg;
    int n;

    zmq_msg_init(&msg);
    n = zmq_msg_recv(&msg, c->sock, ZMQ_DONTWAIT);
    if (n < 0) {
        int e = zmq_errno();

        zmq_msg_close(&msg);
        if (e == EAGAIN || e == EINTR)
            return 0;
        return -CORRAL_EIO;
    }
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
 * WAIT_REPLY, returns the reply to want owned in *out. Returns 0, CORRAL_ETIMEDOUT or
 * CORRAL_EIO. */
static int
wait_until(struct corral_client *c, enum wait_for what, uint64_t want, uint64_t deadline,
           Corral__V1__Envelope **out)
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
    uint8_t *buf = NULL;
    size_t len = 0;

    rc = codec_pack(env, id, &buf, &len);
    if (rc != CORRAL_OK)
        goto out;
    for (;;) {
        zmq_pollitem_t item = {c->sock, 0, ZMQ_POLLIN | ZMQ_POLLOUT, 0};
        long left;

        if (zmq_send(c->sock, buf, len, ZMQ_DONTWAIT) >= 0)
            break;
        if (zmq_errno() != EAGAIN && zmq_errno() != EINTR) {
            rc = CORRAL_EIO;
            goto out;
        }
        /* Full queue, or not connected yet (ZMQ_IMMEDIATE): keep reading meanwhile. */
        drain(c);
        left = remaining_ms(deadline);
        if (left == 0) {
            rc = CORRAL_ETIMEDOUT;
            goto out;
        }
        if (zmq_poll(&item, 1, left) < 0 && zmq_errno() != EINTR) {
            rc = CORRAL_EIO;
            goto out;
        }
    }
out:
    free(buf);
    return rc;
}

/* Sends env (borrowed) and waits up to timeout_ms (negative: forever) for its reply.
 * On success returns the Reply's envelope owned in *out (may be NULL to discard). A
 * broker error code is returned as is, with its message kept for last_error. */
static int
call(struct corral_client *c, Corral__V1__Envelope *env, int timeout_ms, Corral__V1__Envelope **out)
{
    int rc;
    uint64_t id = ++c->last_id;
    uint64_t deadline = deadline_after(timeout_ms);
    Corral__V1__Envelope *rep = NULL;
    const Corral__V1__Reply *r;

    c->last_error[0] = '\0';
    rc = send_request(c, env, id, deadline);
    if (rc == CORRAL_OK)
        rc = wait_until(c, WAIT_REPLY, id, deadline, &rep);
    if (rc != CORRAL_OK) {
        if (rc == CORRAL_ETIMEDOUT)
            set_error(c, "no reply from the broker within %d ms", timeout_ms);
        else
            fail_local(c, rc);
        goto out;
    }
    r = rep->reply;
    if (r == NULL) {
        rc = CORRAL_EPROTO;
        set_error(c, "malformed reply");
        goto out;
    }
    rc = codec_reply_code(r);
    if (rep->version != CORRAL_PROTOCOL_VERSION && rc != CORRAL_EVERSION) {
        rc = CORRAL_EPROTO;
        set_error(c, "reply with protocol version %u", (unsigned)rep->version);
        goto out;
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
            set_error(c, "%s", corral_strerror(rc));
        goto out;
    }
    if (out != NULL) {
        *out = rep;
        rep = NULL;
    }
out:
    codec_envelope_free(&rep);
    return rc;
}

/* Takes the reply's id (borrowed from rep) into id_out; CORRAL_EPROTO if it is bad. */
static int
take_id(struct corral_client *c, const Corral__V1__Envelope *rep, char id_out[CORRAL_ID_MAX],
        bool *cancelled)
{
    char id[CORRAL_ID_MAX];

    if (codec_copy_id(id, rep->reply->id) != CORRAL_OK) {
        set_error(c, "reply without a valid id");
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
    free(c->submits.slots);
    free(c->results.buf);
    free(c);
    *p = NULL;
}

/* Borrowed; valid until the next call on c. */
const char *
corral_client_last_error(const struct corral_client *c)
{
    if (c == NULL)
        return corral_strerror(CORRAL_EINVAL);
    return c->last_error;
}

/* Borrows every argument; writes the new id into id_out. */
int
corral_group_open(struct corral_client *c, const char *parent_group, const char *parent_job,
                  char id_out[CORRAL_ID_MAX], bool *cancelled)
{
    int rc;
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    Corral__V1__OpenGroup body = CORRAL__V1__OPEN_GROUP__INIT;
    Corral__V1__Envelope *rep = NULL;

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
    codec_envelope_free(&rep);
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
    Corral__V1__Envelope *rep = NULL;

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
    codec_envelope_free(&rep);
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
        set_error(c, "reply without a tree");
        return CORRAL_EPROTO;
    }
    rc = codec_node_new(out, rep->reply->tree);
    if (rc == CORRAL_EPROTO)
        set_error(c, "malformed tree in reply");
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
    Corral__V1__Envelope *rep = NULL;

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
    codec_envelope_free(&rep);
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
    Corral__V1__Envelope *rep = NULL;

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
    codec_envelope_free(&rep);
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
    c->last_error[0] = '\0';
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
            set_error(c, "send queue full or broker not connected for %d ms", c->timeout_ms);
        else
            fail_local(c, rc);
        return rc;
    }
    /* Keep replies flowing into memory so the broker never meets a full queue. */
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
    c->last_error[0] = '\0';
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

/* Borrows group. */
int
corral_subscribe(struct corral_client *c, const char *group)
{
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    Corral__V1__Subscribe body = CORRAL__V1__SUBSCRIBE__INIT;

    if (c == NULL)
        return CORRAL_EINVAL;
    if (!nonempty(group))
        return fail_local(c, CORRAL_EINVAL);
    body.group = (char *)group;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_SUBSCRIBE;
    env.subscribe = &body;
    return call(c, &env, c->timeout_ms, NULL);
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
    c->last_error[0] = '\0';
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
