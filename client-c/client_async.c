/* client_async.c - the parts of struct corral_client that do not wait for their own
 * reply: pipelined submissions (corral_submit_async, whose replies are collected later,
 * oldest first) and event subscriptions (corral_subscribe*, whose events are taken with
 * corral_next_event); and the queues client.c routes their replies and events into while
 * it reads the socket: the set of pipelined submits in flight, the ring of their results,
 * the event FIFO and the subscriptions' filters (events of types a filtered subscription
 * does not want are dropped here, should the broker not filter them itself). The socket,
 * the waits and the errors are client.c's. Not thread-safe (one client per thread). */
#include "client_int.h"
#include "clock.h"
#include "codec.h"
#include "corral.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ small helpers */

/* Whether the opportunistic drain in corral_submit_async may leave the socket alone: it
 * was found empty less than CLIENT_QUIET_US ago. Finding it empty costs libzmq two system
 * calls, and a pipelining caller submits many times between replies. Explicit calls
 * (collect, next event, waits) always look: a poll means "look now". */
static bool
quiet(const struct corral_client *c)
{
    return c->quiet_until_us != 0 && clock_mono_us() < c->quiet_until_us;
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
 * last event of the subscription, the group's own GROUP_ENDED or a SUBSCRIPTION_OVERFLOW,
 * always passes and ends the filter. */
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
    if (type == CORRAL_EVENT_SUBSCRIPTION_OVERFLOW ||
        (type == CORRAL_EVENT_GROUP_ENDED && pb->node != NULL && pb->node->id != NULL &&
         strcmp(pb->node->id, f->group) == 0)) {
        *pp = f->next;
        free(f);
        return true;
    }
    return type >= 0 && type < 32 && (f->mask & (1u << type)) != 0;
}

/* Queues the event in pb (borrowed), received for request_id, unless its subscription's
 * filter drops it; drops it when it cannot be converted. */
void
client_route_event(struct corral_client *c, uint64_t request_id, const Corral__V1__Event *pb)
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

/* Records the reply r (borrowed) to request_id as a result when it is a pipelined submit
 * in flight; drops it otherwise (a late answer to a call that timed out). */
void
client_route_submit_reply(struct corral_client *c, uint64_t request_id, const Corral__V1__Reply *r)
{
    struct corral_submit_result res;

    if (!idset_remove(&c->submits, request_id))
        return;
    memset(&res, 0, sizeof res);
    res.token = request_id;
    res.err = codec_reply_code(r);
    if (res.err == CORRAL_OK) {
        res.err = codec_copy_id(res.id, r->id);
        res.cancelled = r->cancelled != 0;
    }
    if (res.err != CORRAL_OK)
        res.id[0] = '\0';
    ring_push(&c->results, &res);
}

/* ------------------------------------------------------------------ freeing */

/* Frees every queued result and event, every filter and the set of submits in flight of c
 * (borrowed), which is being freed: its queues are not usable afterwards. */
void
client_async_fini(struct corral_client *c)
{
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
    free(c->submits.slots);
    free(c->results.buf);
}

/* ------------------------------------------------------------------ public API */

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
    if (!client_nonempty(group) || !client_nonempty(kind) || (payload == NULL && len > 0) ||
        token == NULL)
        return client_fail_local(c, CORRAL_EINVAL);
    client_clear_error(c);
    /* Room for every reply that may come, so routing a reply never allocates. */
    if (ring_reserve(&c->results, c->results.count + c->submits.count + 1) != CORRAL_OK)
        return client_fail_local(c, CORRAL_ENOMEM);
    id = ++c->last_id;
    if (idset_add(&c->submits, id) != CORRAL_OK)
        return client_fail_local(c, CORRAL_ENOMEM);
    client_fill_submit(&body, group, kind, payload, len);
    env.body_case = CORRAL__V1__ENVELOPE__BODY_SUBMIT;
    env.submit = &body;
    rc = client_send_request(c, &env, id, client_deadline_after(c->timeout_ms));
    if (rc != CORRAL_OK) {
        idset_remove(&c->submits, id);
        if (rc == CORRAL_ETIMEDOUT)
            client_set_error_lazy(c, ERR_TEXT_SEND_TIMEOUT, c->timeout_ms);
        else
            client_fail_local(c, rc);
        return rc;
    }
    /* Keep replies flowing into memory so the broker never meets a full queue. */
    if (!quiet(c))
        client_drain(c);
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
        return client_fail_local(c, CORRAL_EINVAL);
    client_clear_error(c);
    /* Nothing in flight: nothing can arrive, do not wait for it. */
    if (c->results.count == 0 && c->submits.count == 0)
        timeout_ms = 0;
    rc = client_wait_until(c, WAIT_RESULT, 0, client_deadline_after(timeout_ms), NULL);
    if (rc != CORRAL_OK)
        return client_fail_local(c, rc);
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

/* The event types a mask may name (not SUBSCRIPTION_OVERFLOW, which always comes). */
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
    if (!client_nonempty(group) || strlen(group) >= CORRAL_ID_MAX || (mask & ~EVENT_MASK_ALL) != 0)
        return client_fail_local(c, CORRAL_EINVAL);
    for (int t = CORRAL_EVENT_JOB_DISPATCHED; t <= CORRAL_EVENT_GROUP_ENDED; t++)
        if (mask & (1u << t))
            types[n++] = (Corral__V1__EventType)t;
    id = ++c->last_id;
    if (mask != 0) {
        /* In place before the request goes: its first events may come with the reply. */
        f = malloc(sizeof *f);
        if (f == NULL)
            return client_fail_local(c, CORRAL_ENOMEM);
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
    rc = client_call_id(c, &env, id, c->timeout_ms, NULL);
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
        return client_fail_local(c, CORRAL_EINVAL);
    client_clear_error(c);
    rc = client_wait_until(c, WAIT_EVENT, 0, client_deadline_after(timeout_ms), NULL);
    if (rc != CORRAL_OK)
        return client_fail_local(c, rc);
    it = c->ev_head;
    c->ev_head = it->next;
    if (c->ev_head == NULL)
        c->ev_tail = NULL;
    *out = it->ev;
    free(it);
    return CORRAL_OK;
}
