/* client.c - struct corral_client: one DEALER socket to the broker's client endpoint.
 *
 * Every request is one frame holding an Envelope{version 1, request_id = ++counter}.
 * Blocking calls send, then read the socket (zmq_poll) until the reply carrying their
 * request id arrives or their deadline passes. Whatever else arrives meanwhile is
 * routed: replies to pipelined submits and Event messages go to the queues of
 * client_async.c (which also holds the pipelined submits and the subscriptions
 * themselves), and replies nobody waits for (a late answer to a call that timed out) are
 * dropped. Network input never reaches an assert. Frames are unpacked into one arena and
 * requests packed into one buffer, both reused. Not thread-safe (one per thread). */
#include "client_int.h"
#include "clock.h"
#include "codec.h"
#include "corral.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define CLIENT_HWM       100000
#define CLIENT_DRAIN_MAX 1024 /* frames read per opportunistic drain */
#define NO_DEADLINE      UINT64_MAX
#define POLL_DEADLINE    0    /* timeout 0: passed at once, without reading the clock */
#define BUSY_WAIT_MIN_MS 10   /* shortest wait before trying a BUSY submission again */
#define BUSY_WAIT_MAX_MS 5000 /* longest */

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
void
client_set_error_lazy(struct corral_client *c, enum err_text kind, int arg)
{
    c->err_kind = kind;
    c->err_arg = arg;
}

/* Forgets the last error and its BUSY hint: a call starts. */
void
client_clear_error(struct corral_client *c)
{
    c->err_kind = ERR_TEXT_NONE;
    c->retry_after_ms = 0;
}

/* Records the local error rc with its generic description and returns rc. */
int
client_fail_local(struct corral_client *c, int rc)
{
    set_error_static(c, corral_strerror(rc));
    return rc;
}

/* The absolute monotonic deadline for timeout_ms from now (negative: none). */
uint64_t
client_deadline_after(int timeout_ms)
{
    if (timeout_ms < 0)
        return NO_DEADLINE;
    if (timeout_ms == 0)
        return POLL_DEADLINE;
    return clock_mono_ms() + (uint64_t)timeout_ms;
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

/* Whether s (borrowed) is a non-empty string. */
bool
client_nonempty(const char *s)
{
    return s != NULL && s[0] != '\0';
}

/* ------------------------------------------------------------------ socket */

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
        if (env->reply != NULL)
            client_route_submit_reply(c, env->request_id, env->reply);
    } else if (env->body_case == CORRAL__V1__ENVELOPE__BODY_EVENT && env->event != NULL) {
        client_route_event(c, env->request_id, env->event);
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
void
client_drain(struct corral_client *c)
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
int
client_wait_until(struct corral_client *c, enum wait_for what, uint64_t want, uint64_t deadline,
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
int
client_send_request(struct corral_client *c, Corral__V1__Envelope *env, uint64_t id,
                    uint64_t deadline)
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
        client_drain(c);
        left = remaining_ms(deadline);
        if (left == 0)
            return CORRAL_ETIMEDOUT;
        if (zmq_poll(&item, 1, left) < 0 && zmq_errno() != EINTR)
            return CORRAL_EIO;
    }
}

/* Sends env (borrowed) as request id and waits up to timeout_ms (negative: forever) for
 * its reply. When a Reply of this protocol version arrived, returns its envelope in *out
 * (may be NULL to discard), borrowed from c's arena until the next frame is read, also
 * with a broker error code, which is returned as is, its message kept for last_error. */
int
client_call_id(struct corral_client *c, Corral__V1__Envelope *env, uint64_t id, int timeout_ms,
               const Corral__V1__Envelope **out)
{
    int rc;
    uint64_t deadline = client_deadline_after(timeout_ms);
    const Corral__V1__Envelope *rep = NULL;
    const Corral__V1__Reply *r;

    client_clear_error(c);
    rc = client_send_request(c, env, id, deadline);
    if (rc == CORRAL_OK)
        rc = client_wait_until(c, WAIT_REPLY, id, deadline, &rep);
    if (rc != CORRAL_OK) {
        if (rc == CORRAL_ETIMEDOUT)
            client_set_error_lazy(c, ERR_TEXT_NO_REPLY, timeout_ms);
        else
            client_fail_local(c, rc);
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
    if (out != NULL)
        *out = rep;
    if (rc == CORRAL_EBUSY)
        c->retry_after_ms = r->retry_after_ms;
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
    return CORRAL_OK;
}

/* client_call_id under the next request id. */
static int
call(struct corral_client *c, Corral__V1__Envelope *env, int timeout_ms,
     const Corral__V1__Envelope **out)
{
    return client_call_id(c, env, ++c->last_id, timeout_ms, out);
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
    /* Clients started together must not retry in step: seed from the time and the
     * address. */
    c->rng = (clock_mono_us() ^ (clock_wall_ms() << 20) ^ (uint64_t)(uintptr_t)c) | 1;
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
    client_async_fini(c);
    codec_arena_fini(&c->arena);
    codec_buf_fini(&c->out);
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

/* Borrows c; never blocks. */
uint32_t
corral_client_retry_after_ms(const struct corral_client *c)
{
    return c != NULL ? c->retry_after_ms : 0;
}

/* Whether scope (borrowed; NULL: none) is valid: at most one of the two deadlines, and a
 * known on_deadline. */
static bool
scope_valid(const struct corral_scope *scope)
{
    if (scope == NULL)
        return true;
    if (scope->timeout_ms != 0 && scope->deadline_unix_ms != 0)
        return false;
    return scope->on_deadline == CORRAL_ON_DEADLINE_FAIL ||
           scope->on_deadline == CORRAL_ON_DEADLINE_MOVE_ON;
}

/* Fills pb from scope (both borrowed; scope valid). Returns pb, or NULL when scope is NULL
 * or all zero: then no Scope is sent, and the request is the one a plain call sends. */
static Corral__V1__Scope *
fill_scope(Corral__V1__Scope *pb, const struct corral_scope *scope)
{
    if (scope == NULL || (scope->timeout_ms == 0 && scope->deadline_unix_ms == 0 &&
                          scope->on_deadline == CORRAL_ON_DEADLINE_FAIL && !scope->shield))
        return NULL;
    pb->timeout_ms = scope->timeout_ms;
    pb->deadline_unix_ms = scope->deadline_unix_ms;
    pb->on_deadline = scope->on_deadline == CORRAL_ON_DEADLINE_MOVE_ON
                          ? CORRAL__V1__ON_DEADLINE__ON_DEADLINE_MOVE_ON
                          : CORRAL__V1__ON_DEADLINE__ON_DEADLINE_FAIL;
    pb->shield = scope->shield;
    return pb;
}

/* Borrows every argument; writes the new id into id_out. */
int
corral_group_open(struct corral_client *c, const char *parent_group, const char *parent_job,
                  char id_out[CORRAL_ID_MAX], bool *cancelled)
{
    return corral_group_open_scoped(c, parent_group, parent_job, NULL, id_out, cancelled);
}

/* Borrows every argument; writes the new id into id_out. */
int
corral_group_open_scoped(struct corral_client *c, const char *parent_group, const char *parent_job,
                         const struct corral_scope *scope, char id_out[CORRAL_ID_MAX],
                         bool *cancelled)
{
    int rc;
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    Corral__V1__OpenGroup body = CORRAL__V1__OPEN_GROUP__INIT;
    Corral__V1__Scope pb_scope = CORRAL__V1__SCOPE__INIT;
    const Corral__V1__Envelope *rep = NULL;

    if (c == NULL)
        return CORRAL_EINVAL;
    if (id_out == NULL || (client_nonempty(parent_group) && client_nonempty(parent_job)) ||
        !scope_valid(scope))
        return client_fail_local(c, CORRAL_EINVAL);
    body.parent_group = pb_str(parent_group);
    body.parent_job = pb_str(parent_job);
    body.scope = fill_scope(&pb_scope, scope);
    env.body_case = CORRAL__V1__ENVELOPE__BODY_OPEN_GROUP;
    env.open_group = &body;
    rc = call(c, &env, c->timeout_ms, &rep);
    if (rc == CORRAL_OK)
        rc = take_id(c, rep, id_out, cancelled);
    return rc;
}

/* Fills body (borrowed) for a submission; strings and payload are borrowed. */
void
client_fill_submit(Corral__V1__Submit *body, const char *group, const char *kind,
                   const void *payload, size_t len)
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
    return corral_submit_opts(c, group, kind, payload, len, NULL, id_out, cancelled);
}

/* Borrows every argument; writes the job's id into id_out. */
int
corral_submit_scoped(struct corral_client *c, const char *group, const char *kind,
                     const void *payload, size_t len, const struct corral_scope *scope,
                     char id_out[CORRAL_ID_MAX], bool *cancelled)
{
    struct corral_submit_opts opts;

    memset(&opts, 0, sizeof opts);
    if (scope != NULL)
        opts.scope = *scope;
    return corral_submit_opts(c, group, kind, payload, len, &opts, id_out, cancelled);
}

/* Whether the n limiter names (borrowed) are non-empty and distinct. A job names a few:
 * comparing every pair costs less than sorting a copy. */
static bool
limiters_valid(const char *const *names, size_t n)
{
    size_t i, j;

    if (n > 0 && names == NULL)
        return false;
    for (i = 0; i < n; i++) {
        if (!client_nonempty(names[i]))
            return false;
        for (j = 0; j < i; j++)
            if (strcmp(names[i], names[j]) == 0)
                return false;
    }
    return true;
}

/* Whether the arguments of a submission (borrowed) are valid. */
static bool
submit_valid(const char *group, const char *kind, const void *payload, size_t len,
             const struct corral_submit_opts *opts)
{
    return client_nonempty(group) && client_nonempty(kind) && (payload != NULL || len == 0) &&
           (opts == NULL ||
            (scope_valid(&opts->scope) && limiters_valid(opts->limiters, opts->nlimiters)));
}

/* Fills env and body (borrowed) for a submission with opts (borrowed; NULL: none), the
 * scope in *pb_scope; everything points into the borrowed arguments. All-zero options
 * leave the fields unset, so the request is byte for byte a plain corral_submit's. */
static void
fill_submit_env(Corral__V1__Envelope *env, Corral__V1__Submit *body, Corral__V1__Scope *pb_scope,
                const char *group, const char *kind, const void *payload, size_t len,
                const struct corral_submit_opts *opts)
{
    client_fill_submit(body, group, kind, payload, len);
    if (opts != NULL) {
        body->scope = fill_scope(pb_scope, &opts->scope);
        body->max_attempts = opts->max_attempts;
        body->backoff_ms = opts->backoff_ms;
        /* protobuf-c only reads them while packing; its fields are not const. */
        body->n_limiters = opts->nlimiters;
        body->limiters = (char **)opts->limiters;
        if (client_nonempty(opts->idempotency_key))
            body->idempotency_key = (char *)opts->idempotency_key;
    }
    env->body_case = CORRAL__V1__ENVELOPE__BODY_SUBMIT;
    env->submit = body;
}

/* The next wait before a BUSY submission is tried again: twice the last one (prev; 0 for
 * the first), at least the broker's hint and BUSY_WAIT_MIN_MS, at most BUSY_WAIT_MAX_MS.
 * Without the jitter, which busy_sleep_ms adds. */
static uint32_t
busy_delay(uint32_t prev, uint32_t hint)
{
    uint64_t d = (uint64_t)prev * 2;

    if (d < hint)
        d = hint;
    if (d < BUSY_WAIT_MIN_MS)
        d = BUSY_WAIT_MIN_MS;
    return d > BUSY_WAIT_MAX_MS ? BUSY_WAIT_MAX_MS : (uint32_t)d;
}

/* delay plus up to 10% of it at random (c's xorshift64), at most BUSY_WAIT_MAX_MS: many
 * clients turned away at once do not all come back at once. */
static uint32_t
busy_sleep_ms(struct corral_client *c, uint32_t delay)
{
    uint64_t x = c->rng, d;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    c->rng = x;
    d = delay + x % ((uint64_t)delay / 10 + 1);
    return d > BUSY_WAIT_MAX_MS ? BUSY_WAIT_MAX_MS : (uint32_t)d;
}

/* Sends the submission in env (borrowed) and waits for its reply as client_call_id does,
 * the reply in *out (NULL when none came). Each try is bounded by timeout_ms (negative:
 * forever), or, when whole, by what is left of it since the call began. With
 * opts->wait_for_capacity (opts borrowed; may be NULL), a BUSY reply is waited out while
 * reading the socket, and the submission sent again (see corral.h), while the client's
 * timeout lasts from the call's start (and, when whole, only while the wait leaves some of
 * timeout_ms for the next try); then the last BUSY reply is returned. */
static int
call_submit(struct corral_client *c, Corral__V1__Envelope *env, int timeout_ms, bool whole,
            const struct corral_submit_opts *opts, const Corral__V1__Envelope **out)
{
    uint64_t end = client_deadline_after(timeout_ms);
    uint64_t budget = client_deadline_after(c->timeout_ms);
    uint32_t delay = 0;

    for (;;) {
        int rc;
        long left, wait;

        *out = NULL;
        rc = call(c, env, whole ? (int)remaining_ms(end) : timeout_ms, out);
        if (rc != CORRAL_EBUSY || opts == NULL || !opts->wait_for_capacity)
            return rc;
        delay = busy_delay(delay, c->retry_after_ms);
        wait = (long)busy_sleep_ms(c, delay);
        left = remaining_ms(budget);
        if (left == 0)
            return rc;
        if (left > 0 && left < wait)
            wait = left;
        left = remaining_ms(end);
        if (whole && left >= 0 && left <= wait)
            return rc;
        /* A wait for no reply (request id 0 is never used) routes what arrives meanwhile. */
        rc = client_wait_until(c, WAIT_REPLY, 0, clock_mono_ms() + (uint64_t)wait, NULL);
        if (rc == CORRAL_EIO)
            return client_fail_local(c, rc);
    }
}

/* Borrows every argument; writes the job's id into id_out. */
int
corral_submit_opts(struct corral_client *c, const char *group, const char *kind,
                   const void *payload, size_t len, const struct corral_submit_opts *opts,
                   char id_out[CORRAL_ID_MAX], bool *cancelled)
{
    int rc;
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    Corral__V1__Submit body = CORRAL__V1__SUBMIT__INIT;
    Corral__V1__Scope pb_scope = CORRAL__V1__SCOPE__INIT;
    const Corral__V1__Envelope *rep = NULL;

    if (c == NULL)
        return CORRAL_EINVAL;
    if (!submit_valid(group, kind, payload, len, opts) || id_out == NULL)
        return client_fail_local(c, CORRAL_EINVAL);
    fill_submit_env(&env, &body, &pb_scope, group, kind, payload, len, opts);
    rc = call_submit(c, &env, c->timeout_ms, false, opts, &rep);
    if (rc == CORRAL_OK)
        rc = take_id(c, rep, id_out, cancelled);
    if (rc == CORRAL_OK && opts != NULL && opts->duplicate != NULL)
        *opts->duplicate = rep->reply->duplicate != 0;
    return rc;
}

/* Copies what the reply r (borrowed) to a start says into the caller's out-parameters, per
 * its code rc (see corral.h); named says whether id holds the job's id. Returns rc, or a
 * local error (the reply then cannot be told in full, but id_out is still written). */
static int
take_start(struct corral_client *c, const Corral__V1__Reply *r, int rc, bool named, const char *id,
           void **value, size_t *value_len, struct corral_error **error)
{
    if (rc == CORRAL_OK) {
        uint8_t *v;

        if (!named) {
            set_error_static(c, "reply without a valid id");
            return CORRAL_EPROTO;
        }
        if (value == NULL) {
            if (value_len != NULL)
                *value_len = r->value.len;
            return CORRAL_OK;
        }
        v = codec_dup_bytes(r->value.data, r->value.len);
        if (v == NULL)
            return client_fail_local(c, CORRAL_ENOMEM);
        *value = v;
        if (value_len != NULL)
            *value_len = r->value.len;
        return CORRAL_OK;
    }
    if (rc == CORRAL_ESTARTFAILED && error != NULL) {
        Corral__V1__Error bare = CORRAL__V1__ERROR__INIT;
        const Corral__V1__Error *pe = r->error;
        int erc;

        if (pe == NULL) {
            /* A reply without the error: say what is known, as a job's error. */
            bare.type = (char *)"Error";
            bare.message = r->message;
            bare.job = (char *)(named ? id : "");
            pe = &bare;
        }
        erc = codec_error_new(error, pe);
        if (erc == CORRAL_EPROTO) {
            set_error_static(c, "malformed error in reply");
            return erc;
        }
        if (erc != CORRAL_OK)
            return client_fail_local(c, erc);
    }
    return rc;
}

/* Borrows every argument; blocks until the job signals readiness or timeout_ms passes. A
 * reply that comes after the timeout is dropped by route_frame, as any reply nobody waits
 * for. */
int
corral_start(struct corral_client *c, const char *group, const char *kind, const void *payload,
             size_t len, const struct corral_submit_opts *opts, int timeout_ms,
             char id_out[CORRAL_ID_MAX], void **value, size_t *value_len,
             struct corral_error **error)
{
    int rc;
    bool named;
    char id[CORRAL_ID_MAX];
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    Corral__V1__Submit body = CORRAL__V1__SUBMIT__INIT;
    Corral__V1__Scope pb_scope = CORRAL__V1__SCOPE__INIT;
    const Corral__V1__Envelope *rep = NULL;

    if (c == NULL)
        return CORRAL_EINVAL;
    if (!submit_valid(group, kind, payload, len, opts))
        return client_fail_local(c, CORRAL_EINVAL);
    fill_submit_env(&env, &body, &pb_scope, group, kind, payload, len, opts);
    body.wait_started = true;
    rc = call_submit(c, &env, timeout_ms, true, opts, &rep);
    if (rc == CORRAL_ETIMEDOUT) {
        set_error(c,
                  "no answer within %d ms: the job has not signalled readiness (it keeps "
                  "running), or the broker is unreachable",
                  timeout_ms);
        return rc;
    }
    if (rep == NULL)
        return rc; /* never sent, or no readable reply: the error is recorded */
    named = codec_copy_id(id, rep->reply->id) == CORRAL_OK;
    if (rc != CORRAL_OK && rc != CORRAL_ESTARTFAILED && rc != CORRAL_ESTARTCANCELLED &&
        rc != CORRAL_ENOTSTARTED)
        return rc; /* refused: nothing was submitted */
    if (named && opts != NULL && opts->duplicate != NULL)
        *opts->duplicate = rep->reply->duplicate != 0;
    rc = take_start(c, rep->reply, rc, named, id, value, value_len, error);
    if (named && id_out != NULL)
        memcpy(id_out, id, sizeof id);
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
    if (!client_nonempty(group))
        return client_fail_local(c, CORRAL_EINVAL);
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
    if (!client_nonempty(group))
        return client_fail_local(c, CORRAL_EINVAL);
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
    if (!client_nonempty(job))
        return client_fail_local(c, CORRAL_EINVAL);
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
        client_fail_local(c, rc);
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
    if (!client_nonempty(group) || out == NULL)
        return client_fail_local(c, CORRAL_EINVAL);
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
    if (!client_nonempty(group) || out == NULL)
        return client_fail_local(c, CORRAL_EINVAL);
    body.group = (char *)group;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_WAIT_GROUP;
    env.wait_group = &body;
    rc = call(c, &env, timeout_ms, &rep);
    if (rc == CORRAL_OK)
        rc = take_tree(c, rep, out);
    return rc;
}

/* ------------------------------------------------------------------ limiters */

/* Borrows name. */
int
corral_limiter_set(struct corral_client *c, const char *name, uint32_t total_tokens)
{
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    Corral__V1__SetLimiter body = CORRAL__V1__SET_LIMITER__INIT;

    if (c == NULL)
        return CORRAL_EINVAL;
    if (!client_nonempty(name))
        return client_fail_local(c, CORRAL_EINVAL);
    body.name = (char *)name;
    body.total_tokens = total_tokens;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_SET_LIMITER;
    env.set_limiter = &body;
    return call(c, &env, c->timeout_ms, NULL);
}

/* Borrows name. */
int
corral_limiter_delete(struct corral_client *c, const char *name)
{
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    Corral__V1__DeleteLimiter body = CORRAL__V1__DELETE_LIMITER__INIT;

    if (c == NULL)
        return CORRAL_EINVAL;
    if (!client_nonempty(name))
        return client_fail_local(c, CORRAL_EINVAL);
    body.name = (char *)name;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_DELETE_LIMITER;
    env.delete_limiter = &body;
    return call(c, &env, c->timeout_ms, NULL);
}

/* Borrows group; see corral.h. */
int
corral_group_purge(struct corral_client *c, const char *group, uint64_t *purged_nodes)
{
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    Corral__V1__PurgeGroup body = CORRAL__V1__PURGE_GROUP__INIT;
    const Corral__V1__Envelope *rep = NULL;

    if (c == NULL)
        return CORRAL_EINVAL;
    if (!client_nonempty(group))
        return client_fail_local(c, CORRAL_EINVAL);
    body.group = (char *)group;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_PURGE_GROUP;
    env.purge_group = &body;
    int rc = call(c, &env, c->timeout_ms, &rep);
    if (rc == CORRAL_OK && purged_nodes != NULL)
        *purged_nodes = rep->reply->purged_nodes;
    return rc;
}

/* Borrows name (NULL or "": every limiter); returns owned *out and *n. A reply to a named
 * request must hold exactly that limiter. */
int
corral_limiter_get(struct corral_client *c, const char *name, struct corral_limiter **out,
                   size_t *n)
{
    int rc;
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    Corral__V1__GetLimiters body = CORRAL__V1__GET_LIMITERS__INIT;
    const Corral__V1__Envelope *rep = NULL;
    const Corral__V1__Reply *r;

    if (c == NULL)
        return CORRAL_EINVAL;
    if (out == NULL || n == NULL)
        return client_fail_local(c, CORRAL_EINVAL);
    body.name = pb_str(name);
    env.body_case = CORRAL__V1__ENVELOPE__BODY_GET_LIMITERS;
    env.get_limiters = &body;
    rc = call(c, &env, c->timeout_ms, &rep);
    if (rc != CORRAL_OK)
        return rc;
    r = rep->reply;
    if (client_nonempty(name) &&
        (r->n_limiters != 1 || r->limiters[0] == NULL || r->limiters[0]->name == NULL ||
         strcmp(r->limiters[0]->name, name) != 0)) {
        set_error(c, "reply without limiter %s", name);
        return CORRAL_EPROTO;
    }
    rc = codec_limiters_new(out, r->limiters, r->n_limiters);
    if (rc == CORRAL_EPROTO) {
        set_error_static(c, "malformed limiter in reply");
        return rc;
    }
    if (rc != CORRAL_OK)
        return client_fail_local(c, rc);
    *n = r->n_limiters;
    return CORRAL_OK;
}
