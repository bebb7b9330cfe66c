/* test_backpressure.c - DESIGN.md S11 (backpressure: the BUSY bound on queued jobs, overall
 * and per kind, and idempotency keys) against the real corrald.
 *
 * The broker counts the jobs that are QUEUED or WAITING (for a limiter token); a Submit
 * that would queue one beyond --max-queued or --max-queued-per-kind gets ERR_BUSY with
 * Reply.retry_after_ms and creates nothing. A Submit whose non-empty idempotency_key is
 * that of an earlier job of the same group gets that job's id with Reply.duplicate set,
 * whatever the group's state now, and creates nothing; keys are durable (S12).
 *
 * Submissions are raw Submit messages (so that many can be pipelined from several DEALER
 * sockets and every Reply field read); the s11_library suite drives the same rules
 * through libcorral (corral_submit_opts: idempotency_key, duplicate, wait_for_capacity)
 * and corralctl (exit 75 on BUSY). */
#include <criterion/criterion.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "harness.h"

#define WAIT_MS 10000
/* The pipelined flood: clients x submissions each, against --max-queued FLOOD_BOUND. */
#define FLOOD_CLIENTS    4
#define FLOOD_PER_CLIENT 50
#define FLOOD_TOTAL      (FLOOD_CLIENTS * FLOOD_PER_CLIENT)
#define FLOOD_BOUND      50
/* The broker's longest idempotency key (bytes). */
#define IDEM_KEY_MAX 1024

TestSuite(s11_busy, .fini = harness_teardown);
TestSuite(s11_idempotency, .fini = harness_teardown);
TestSuite(s11_library, .fini = harness_teardown);

/* ------------------------------------------------------------------ helpers */

static void
sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* One raw submission. NULL strings: field left empty. */
struct sub {
    const char *group;
    const char *kind;
    const char *payload;
    const char *key;     /* idempotency key */
    const char *limiter; /* one limiter, or none */
    bool shield;
};

/* Sends a Submit (not waiting for its reply); returns its request id. */
static uint64_t
send_submit(struct raw_peer *p, const struct sub *s)
{
    Corral__V1__Envelope env;
    Corral__V1__Submit sub;
    Corral__V1__Scope scope;
    corral__v1__envelope__init(&env);
    corral__v1__submit__init(&sub);
    corral__v1__scope__init(&scope);
    char *lims[1];
    sub.group = (char *)s->group;
    sub.kind = (char *)s->kind;
    if (s->payload != NULL) {
        sub.payload.data = (uint8_t *)s->payload;
        sub.payload.len = strlen(s->payload);
    }
    if (s->key != NULL)
        sub.idempotency_key = (char *)s->key;
    if (s->limiter != NULL) {
        lims[0] = (char *)s->limiter;
        sub.limiters = lims;
        sub.n_limiters = 1;
    }
    if (s->shield) {
        scope.shield = true;
        sub.scope = &scope;
    }
    env.version = CORRAL_PROTOCOL_VERSION;
    env.request_id = p->next_request_id++;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_SUBMIT;
    env.submit = &sub;
    raw_send(p, &env);
    return env.request_id;
}

/* Sends a Submit and returns its Reply envelope (owned). */
static Corral__V1__Envelope *
submit_req(struct raw_peer *p, const struct sub *s)
{
    uint64_t id = send_submit(p, s);
    return raw_expect_reply(p, id, WAIT_MS);
}

/* Asserts r (freed) is ERR_OK with an id; copies it into id; returns Reply.duplicate.
 * *cancelled (may be NULL) gets Reply.cancelled. */
static bool
take_ok(Corral__V1__Envelope *r, char id[CORRAL_ID_MAX], bool *cancelled, const char *what)
{
    Corral__V1__Reply *rep = r->reply;
    cr_assert_not_null(rep, "%s: no Reply", what);
    cr_assert_eq(rep->code, CORRAL__V1__ERROR_CODE__ERR_OK, "%s: code %d (%s), expected ERR_OK",
                 what, (int)rep->code, rep->message);
    cr_assert(rep->id != NULL && rep->id[0] != '\0', "%s: no id in the reply", what);
    cr_assert_lt(strlen(rep->id), (size_t)CORRAL_ID_MAX, "%s: id too long", what);
    snprintf(id, CORRAL_ID_MAX, "%s", rep->id);
    bool dup = rep->duplicate;
    if (cancelled != NULL)
        *cancelled = rep->cancelled;
    corral__v1__envelope__free_unpacked(r, NULL);
    return dup;
}

/* Submits and asserts ERR_OK; returns Reply.duplicate. */
static bool
submit_ok(struct raw_peer *p, const struct sub *s, char id[CORRAL_ID_MAX], bool *cancelled)
{
    char what[256];
    snprintf(what, sizeof what, "submit %s into %s (key '%.40s')", s->kind, s->group,
             s->key != NULL ? s->key : "");
    return take_ok(submit_req(p, s), id, cancelled, what);
}

/* Asserts r (freed) is ERR_BUSY with a retry hint, no id, and a message holding each of
 * the needles (NULL-terminated). */
static void
take_busy(Corral__V1__Envelope *r, const char *what, const char *const *needles)
{
    Corral__V1__Reply *rep = r->reply;
    cr_assert_not_null(rep, "%s: no Reply", what);
    cr_assert_eq(rep->code, CORRAL__V1__ERROR_CODE__ERR_BUSY,
                 "%s: code %d (%s, id '%s'), expected ERR_BUSY", what, (int)rep->code, rep->message,
                 rep->id);
    cr_assert_gt(rep->retry_after_ms, 0u, "%s: BUSY without retry_after_ms", what);
    cr_assert(rep->id == NULL || rep->id[0] == '\0', "%s: BUSY names a job '%s'", what, rep->id);
    cr_assert(!rep->duplicate, "%s: BUSY marked duplicate", what);
    for (size_t i = 0; needles != NULL && needles[i] != NULL; i++)
        cr_assert_not_null(strstr(rep->message, needles[i]),
                           "%s: the BUSY message '%s' does not contain '%s'", what, rep->message,
                           needles[i]);
    corral__v1__envelope__free_unpacked(r, NULL);
}

/* Submits and asserts ERR_BUSY whose message names the bound ("the bound is N" and the
 * flag). */
static void
submit_busy(struct raw_peer *p, const struct sub *s, unsigned bound, const char *flag)
{
    char what[256];
    char bound_text[64];
    snprintf(what, sizeof what, "submit %s into %s (beyond %s %u)", s->kind, s->group, flag, bound);
    snprintf(bound_text, sizeof bound_text, "the bound is %u", bound);
    const char *const needles[] = {bound_text, flag, NULL};
    take_busy(submit_req(p, s), what, needles);
}

/* Asserts r (freed) has the given error code; returns nothing. */
static void
take_code(Corral__V1__Envelope *r, Corral__V1__ErrorCode code, const char *what, const char *needle)
{
    Corral__V1__Reply *rep = r->reply;
    cr_assert_not_null(rep, "%s: no Reply", what);
    cr_assert_eq(rep->code, code, "%s: code %d (%s, id '%s'), expected %d", what, (int)rep->code,
                 rep->message, rep->id, (int)code);
    if (needle != NULL)
        cr_assert_not_null(strstr(rep->message, needle), "%s: message '%s' does not contain '%s'",
                           what, rep->message, needle);
    corral__v1__envelope__free_unpacked(r, NULL);
}

/* SetLimiter name total over a raw client; asserts ERR_OK. */
static void
raw_set_limiter(struct raw_peer *p, const char *name, uint32_t total)
{
    Corral__V1__Envelope env;
    Corral__V1__SetLimiter sl;
    corral__v1__envelope__init(&env);
    corral__v1__set_limiter__init(&sl);
    sl.name = (char *)name;
    sl.total_tokens = total;
    env.version = CORRAL_PROTOCOL_VERSION;
    env.request_id = p->next_request_id++;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_SET_LIMITER;
    env.set_limiter = &sl;
    raw_send(p, &env);
    take_code(raw_expect_reply(p, env.request_id, WAIT_MS), CORRAL__V1__ERROR_CODE__ERR_OK,
              "SetLimiter", NULL);
}

static size_t
count_children(struct corral_client *c, const char *group)
{
    struct corral_node *t = get_tree(c, group);
    size_t n = t->nchildren;
    corral_node_free(&t);
    return n;
}

/* ---- the flood ---- */

struct acked {
    char id[CORRAL_ID_MAX];
    char payload[32];
};

static ssize_t
acked_find(const struct acked *a, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(a[i].id, id) == 0)
            return (ssize_t)i;
    return -1;
}

/* Pipelines FLOOD_TOTAL submissions of kind into group from FLOOD_CLIENTS raw DEALERs
 * (every one sent before any reply is read), then reads every reply. Asserts each
 * request got exactly one reply, either ERR_OK with a new id or ERR_BUSY naming the bound
 * --max-queued FLOOD_BOUND with a retry hint, and that the acknowledged ids are distinct.
 * Fills acked (FLOOD_TOTAL entries of room) and returns how many were acknowledged. */
static size_t
flood(const struct broker *b, const char *group, const char *kind, struct acked *acked)
{
    struct raw_peer cl[FLOOD_CLIENTS];
    for (int k = 0; k < FLOOD_CLIENTS; k++)
        raw_connect(&cl[k], b->client_ep);
    char payloads[FLOOD_CLIENTS][FLOOD_PER_CLIENT][32];
    uint64_t rids[FLOOD_CLIENTS][FLOOD_PER_CLIENT];
    for (int i = 0; i < FLOOD_PER_CLIENT; i++) {
        for (int k = 0; k < FLOOD_CLIENTS; k++) {
            snprintf(payloads[k][i], sizeof payloads[k][i], "flood-%d-%d", k, i);
            struct sub s = {.group = group, .kind = kind, .payload = payloads[k][i]};
            rids[k][i] = send_submit(&cl[k], &s);
        }
    }

    char bound_text[64];
    snprintf(bound_text, sizeof bound_text, "the bound is %d", FLOOD_BOUND);
    const char *const needles[] = {bound_text, "--max-queued", NULL};
    size_t nacked = 0, nbusy = 0;
    uint64_t deadline = clock_mono_ms() + 3 * WAIT_MS;
    for (int k = 0; k < FLOOD_CLIENTS; k++) {
        bool seen[FLOOD_PER_CLIENT] = {false};
        int got = 0;
        while (got < FLOOD_PER_CLIENT) {
            uint64_t now = clock_mono_ms();
            cr_assert_lt(now, deadline, "flood: client %d got %d of %d replies in time", k, got,
                         FLOOD_PER_CLIENT);
            Corral__V1__Envelope *r = raw_recv(&cl[k], (int)(deadline - now));
            if (r == NULL)
                continue;
            cr_assert_eq(r->body_case, CORRAL__V1__ENVELOPE__BODY_REPLY,
                         "flood: client %d got a message that is not a Reply (body %d)", k,
                         (int)r->body_case);
            int i = -1;
            for (int x = 0; x < FLOOD_PER_CLIENT; x++)
                if (rids[k][x] == r->request_id)
                    i = x;
            cr_assert_geq(i, 0, "flood: a reply to unknown request %" PRIu64, r->request_id);
            cr_assert(!seen[i], "flood: two replies to request %" PRIu64, r->request_id);
            seen[i] = true;
            got++;
            char what[64];
            snprintf(what, sizeof what, "flood submission %s", payloads[k][i]);
            if (r->reply->code == CORRAL__V1__ERROR_CODE__ERR_OK) {
                cr_assert_lt(nacked, (size_t)FLOOD_TOTAL);
                bool cancelled = true;
                bool dup = take_ok(r, acked[nacked].id, &cancelled, what);
                cr_assert(!dup && !cancelled, "%s: acknowledged as duplicate %d cancelled %d", what,
                          dup, cancelled);
                snprintf(acked[nacked].payload, sizeof acked[nacked].payload, "%s", payloads[k][i]);
                cr_assert_eq(acked_find(acked, nacked, acked[nacked].id), -1,
                             "flood: id %s acknowledged twice", acked[nacked].id);
                nacked++;
            } else {
                take_busy(r, what, needles);
                nbusy++;
            }
        }
    }
    for (int k = 0; k < FLOOD_CLIENTS; k++)
        raw_close(&cl[k]);
    cr_assert_eq(nacked + nbusy, (size_t)FLOOD_TOTAL);
    return nacked;
}

/* Asserts the children of tree are exactly the n acknowledged jobs, each once, all of
 * the given state (CORRAL_STATE_UNSPECIFIED: any). */
static void
expect_exactly(const struct corral_node *t, const struct acked *a, size_t n,
               enum corral_state state)
{
    if (t->nchildren != n)
        tree_print(stderr, t);
    cr_assert_eq(t->nchildren, n, "the group holds %zu jobs, expected the %zu acknowledged",
                 t->nchildren, n);
    bool *seen = calloc(n + 1, sizeof *seen);
    cr_assert_not_null(seen);
    for (size_t i = 0; i < t->nchildren; i++) {
        const struct corral_node *ch = &t->children[i];
        ssize_t k = acked_find(a, n, ch->id);
        cr_assert_geq(k, 0, "the tree holds %s, which was never acknowledged", ch->id);
        cr_assert(!seen[k], "the tree holds %s twice", ch->id);
        seen[k] = true;
        if (state != CORRAL_STATE_UNSPECIFIED)
            cr_assert_eq(ch->state, state, "%s is %s, expected %s", ch->id,
                         corral_state_name(ch->state), corral_state_name(state));
    }
    free(seen);
}

/* Asserts every acknowledged job ended SUCCEEDED on attempt 1 with its payload as result. */
static void
expect_all_succeeded_once(const struct corral_node *t, const struct acked *a, size_t n)
{
    expect_exactly(t, a, n, CORRAL_STATE_ENDED);
    for (size_t i = 0; i < t->nchildren; i++) {
        const struct corral_node *ch = &t->children[i];
        ssize_t k = acked_find(a, n, ch->id);
        cr_assert_eq(ch->outcome, CORRAL_OUTCOME_SUCCEEDED, "%s ended %s", ch->id,
                     corral_outcome_name(ch->outcome));
        cr_assert_eq(ch->attempt, 1u, "%s ran as attempt %u, expected 1", ch->id, ch->attempt);
        cr_assert(ch->result != NULL && strcmp((const char *)ch->result, a[k].payload) == 0,
                  "%s: result '%s', expected '%s'", ch->id,
                  ch->result ? (const char *)ch->result : "(none)", a[k].payload);
    }
}

/* ------------------------------------------------------------------ S11: the bound */

/* 200 pipelined submissions from 4 clients, no worker, --max-queued 50: exactly 50 are
 * acknowledged, the rest BUSY; a worker then runs each acknowledged job exactly once, and
 * once the queue has drained the bound admits as many again. */
Test(s11_busy, flood_past_the_queued_bound_acknowledges_exactly_the_bound, .timeout = 120)
{
    struct broker b;
    broker_start(&b, (const char *const[]){"--max-queued", "50", NULL});
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX];
    open_root(c, g);

    struct acked acked[FLOOD_TOTAL];
    size_t n = flood(&b, g, "echo", acked);
    cr_assert_eq(n, (size_t)FLOOD_BOUND, "%zu of %d submissions acknowledged, expected %d", n,
                 FLOOD_TOTAL, FLOOD_BOUND);

    /* Nothing was created for the refused ones. */
    struct corral_node *t = get_tree(c, g);
    expect_exactly(t, acked, n, CORRAL_STATE_QUEUED);
    corral_node_free(&t);

    /* A raw worker runs them, recording every dispatch. */
    static const char *const kinds[] = {"echo"};
    struct raw_peer w;
    raw_worker_register(&w, &b, kinds, 1, 4);
    int dispatched[FLOOD_TOTAL] = {0};
    for (size_t done = 0; done < n; done++) {
        Corral__V1__Envelope *d =
            raw_worker_expect(&w, CORRAL__V1__ENVELOPE__BODY_DISPATCH, WAIT_MS, true);
        cr_assert_not_null(d, "only %zu of %zu acknowledged jobs were dispatched", done, n);
        char job[CORRAL_ID_MAX];
        snprintf(job, sizeof job, "%s", d->dispatch->job);
        uint32_t attempt = d->dispatch->attempt;
        ssize_t k = acked_find(acked, n, job);
        cr_assert_geq(k, 0, "dispatched %s, which was never acknowledged", job);
        cr_assert_eq(dispatched[k], 0, "%s dispatched twice", job);
        dispatched[k]++;
        cr_assert_eq(attempt, 1u, "%s dispatched as attempt %u", job, attempt);
        cr_assert(
            d->dispatch->payload.len == strlen(acked[k].payload) &&
                memcmp(d->dispatch->payload.data, acked[k].payload, d->dispatch->payload.len) == 0,
            "%s dispatched with another payload", job);
        corral__v1__envelope__free_unpacked(d, NULL);
        cr_assert_eq(raw_worker_done(&w, job, attempt, acked[k].payload), 0, "Done %s refused",
                     job);
    }
    /* No further dispatch: nothing beyond the acknowledged jobs exists. */
    Corral__V1__Envelope *extra =
        raw_worker_expect(&w, CORRAL__V1__ENVELOPE__BODY_DISPATCH, 300, true);
    cr_assert_null(extra, "a job beyond the %zu acknowledged was dispatched: %s", n,
                   extra ? extra->dispatch->job : "");

    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    cr_assert_eq(t->outcome, CORRAL_OUTCOME_SUCCEEDED);
    expect_all_succeeded_once(t, acked, n);
    corral_node_free(&t);

    /* The queue has drained: submissions are accepted again, up to the whole bound (the
     * count went back to zero), with kind "other" that no worker takes. */
    char g2[CORRAL_ID_MAX];
    open_root(c, g2);
    struct raw_peer cl;
    raw_connect(&cl, b.client_ep);
    char id[CORRAL_ID_MAX];
    uint64_t rids[FLOOD_BOUND + 1];
    for (int i = 0; i <= FLOOD_BOUND; i++)
        rids[i] = send_submit(&cl, &(struct sub){.group = g2, .kind = "other", .payload = "x"});
    for (int i = 0; i < FLOOD_BOUND; i++)
        take_ok(raw_expect_reply(&cl, rids[i], WAIT_MS), id, NULL, "submit after the drain");
    const char *const needles[] = {"the bound is 50", "--max-queued", NULL};
    take_busy(raw_expect_reply(&cl, rids[FLOOD_BOUND], WAIT_MS), "submit 51 after the drain",
              needles);
    cr_assert_eq(count_children(c, g2), (size_t)FLOOD_BOUND);

    raw_close(&cl);
    raw_close(&w);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* --max-queued-per-kind 5: the 6th queued job of kind a is BUSY, kind b still accepted. */
Test(s11_busy, per_kind_bound_refuses_only_that_kind, .timeout = 120)
{
    struct broker b;
    broker_start(&b, (const char *const[]){"--max-queued-per-kind", "5", NULL});
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX];
    open_root(c, g);
    struct raw_peer cl;
    raw_connect(&cl, b.client_ep);
    char id[CORRAL_ID_MAX];

    for (int i = 0; i < 5; i++)
        submit_ok(&cl, &(struct sub){.group = g, .kind = "a"}, id, NULL);
    submit_busy(&cl, &(struct sub){.group = g, .kind = "a"}, 5, "--max-queued-per-kind");
    Corral__V1__Envelope *r = submit_req(&cl, &(struct sub){.group = g, .kind = "a"});
    const char *const kind_a[] = {"kind 'a'", NULL};
    take_busy(r, "7th of kind a", kind_a);

    for (int i = 0; i < 5; i++)
        submit_ok(&cl, &(struct sub){.group = g, .kind = "b"}, id, NULL);
    r = submit_req(&cl, &(struct sub){.group = g, .kind = "b"});
    const char *const kind_b[] = {"kind 'b'", "the bound is 5", NULL};
    take_busy(r, "6th of kind b", kind_b);
    submit_ok(&cl, &(struct sub){.group = g, .kind = "c"}, id, NULL);

    struct corral_node *t = get_tree(c, g);
    cr_assert_eq(t->nchildren, 11u, "BUSY created jobs: %zu in the tree", t->nchildren);
    size_t na = 0, nb = 0;
    for (size_t i = 0; i < t->nchildren; i++) {
        na += strcmp(t->children[i].kind, "a") == 0;
        nb += strcmp(t->children[i].kind, "b") == 0;
    }
    cr_assert(na == 5 && nb == 5, "%zu jobs of a, %zu of b", na, nb);
    corral_node_free(&t);

    raw_close(&cl);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* Running jobs hold no place in the bound: with --max-queued 3 and 2 jobs running, 3 more
 * queue and the 4th is BUSY. */
Test(s11_busy, running_jobs_do_not_count_toward_the_bound, .timeout = 120)
{
    struct broker b;
    broker_start(&b, (const char *const[]){"--max-queued", "3", NULL});
    struct corral_client *c = client_connect(&b);
    struct test_worker *w = test_worker_start(&b, 2);
    char g[CORRAL_ID_MAX];
    open_root(c, g);
    struct raw_peer cl;
    raw_connect(&cl, b.client_ep);
    char ids[5][CORRAL_ID_MAX];

    for (int i = 0; i < 2; i++)
        submit_ok(&cl, &(struct sub){.group = g, .kind = "sleep", .payload = "60000"}, ids[i],
                  NULL);
    cr_assert(test_worker_wait_started(w, 2, WAIT_MS), "the 2 jobs did not start");
    cr_assert(node_eventually(c, g, ids[1], CORRAL_STATE_RUNNING, WAIT_MS));
    for (int i = 2; i < 5; i++)
        submit_ok(&cl, &(struct sub){.group = g, .kind = "sleep", .payload = "60000"}, ids[i],
                  NULL);
    submit_busy(&cl, &(struct sub){.group = g, .kind = "sleep", .payload = "60000"}, 3,
                "--max-queued");
    struct corral_node *t = get_tree(c, g);
    cr_assert_eq(t->nchildren, 5u);
    node_expect(t, ids[0], CORRAL_STATE_RUNNING, CORRAL_OUTCOME_NONE);
    node_expect(t, ids[4], CORRAL_STATE_QUEUED, CORRAL_OUTCOME_NONE);
    corral_node_free(&t);

    cr_assert_eq(corral_group_cancel(c, g, "done"), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    corral_node_free(&t);
    raw_close(&cl);
    test_worker_stop(&w);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* Jobs WAITING for a limiter token count like QUEUED ones: with --max-queued 3 and 3 jobs
 * waiting for a paused limiter, a 4th submission is BUSY although a worker slot is free;
 * once the limiter lets them run, submissions are accepted again. */
Test(s11_busy, jobs_waiting_for_a_limiter_count_toward_the_bound, .timeout = 120)
{
    struct broker b;
    broker_start(&b, (const char *const[]){"--max-queued", "3", NULL});
    struct corral_client *c = client_connect(&b);
    struct raw_peer cl;
    raw_connect(&cl, b.client_ep);
    raw_set_limiter(&cl, "lim", 0);
    struct test_worker *w = test_worker_start(&b, 4);
    char g[CORRAL_ID_MAX];
    open_root(c, g);
    char ids[4][CORRAL_ID_MAX];

    for (int i = 0; i < 3; i++)
        submit_ok(&cl, &(struct sub){.group = g, .kind = "echo", .payload = "w", .limiter = "lim"},
                  ids[i], NULL);
    for (int i = 0; i < 3; i++)
        cr_assert(node_eventually(c, g, ids[i], CORRAL_STATE_WAITING, WAIT_MS), "%s never WAITING",
                  ids[i]);
    submit_busy(&cl, &(struct sub){.group = g, .kind = "echo", .payload = "x"}, 3, "--max-queued");
    cr_assert_eq(count_children(c, g), 3u);

    raw_set_limiter(&cl, "lim", 3);
    for (int i = 0; i < 3; i++)
        cr_assert(node_eventually(c, g, ids[i], CORRAL_STATE_ENDED, WAIT_MS), "%s never ran",
                  ids[i]);
    submit_ok(&cl, &(struct sub){.group = g, .kind = "echo", .payload = "after"}, ids[3], NULL);
    cr_assert(node_eventually(c, g, ids[3], CORRAL_STATE_ENDED, WAIT_MS));
    struct corral_node *t = get_tree(c, g);
    cr_assert_eq(t->nchildren, 4u);
    for (int i = 0; i < 4; i++)
        node_expect(t, ids[i], CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    corral_node_free(&t);

    expect_no_worker_problem(w);
    raw_close(&cl);
    test_worker_stop(&w);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* A job submitted into a cancelled group is recorded CANCELLED and never queues: BUSY does
 * not refuse it, and it takes no place in the bound. A shielded one would queue, so it is
 * refused. */
Test(s11_busy, job_born_cancelled_is_not_refused_and_takes_no_place, .timeout = 120)
{
    struct broker b;
    broker_start(&b, (const char *const[]){"--max-queued", "3", NULL});
    struct corral_client *c = client_connect(&b);
    char g1[CORRAL_ID_MAX], g2[CORRAL_ID_MAX];
    open_root(c, g1);
    open_root(c, g2);
    struct raw_peer cl;
    raw_connect(&cl, b.client_ep);
    char id[CORRAL_ID_MAX];

    for (int i = 0; i < 2; i++)
        submit_ok(&cl, &(struct sub){.group = g1, .kind = "echo"}, id, NULL);
    /* A cancelled group with nothing left in it ends at once; a shielded child group (not
     * reached by the cancel, still open) keeps g2 from ending, so it takes submissions. */
    char shielded[CORRAL_ID_MAX];
    struct corral_scope sh = {.shield = true};
    cr_assert_eq(corral_group_open_scoped(c, g2, NULL, &sh, shielded, NULL), CORRAL_OK);
    cr_assert_eq(corral_group_cancel(c, g2, "stop"), CORRAL_OK);

    /* More born-cancelled jobs than the bound leaves room for: all recorded. */
    char born[5][CORRAL_ID_MAX];
    for (int i = 0; i < 5; i++) {
        bool cancelled = false;
        submit_ok(&cl, &(struct sub){.group = g2, .kind = "echo"}, born[i], &cancelled);
        cr_assert(cancelled, "a job submitted into a cancelled group is not reported cancelled");
    }
    struct corral_node *t = get_tree(c, g2);
    cr_assert_eq(t->nchildren, 6u); /* the shielded group and the 5 jobs */
    for (int i = 0; i < 5; i++) {
        const struct corral_node *n =
            node_expect(t, born[i], CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
        cr_assert(n->cancel_called && n->cancel_source == CORRAL_SOURCE_PARENT,
                  "%s: cancel_called %d source %s", born[i], n->cancel_called,
                  corral_source_name(n->cancel_source));
    }
    corral_node_free(&t);

    /* They took no place: g1 still gets its 3rd, then BUSY. */
    submit_ok(&cl, &(struct sub){.group = g1, .kind = "echo"}, id, NULL);
    submit_busy(&cl, &(struct sub){.group = g1, .kind = "echo"}, 3, "--max-queued");
    /* Born cancelled even at the bound. */
    bool cancelled = false;
    submit_ok(&cl, &(struct sub){.group = g2, .kind = "echo"}, id, &cancelled);
    cr_assert(cancelled);
    /* A shielded job in the cancelled group would queue: refused. */
    submit_busy(&cl, &(struct sub){.group = g2, .kind = "echo", .shield = true}, 3, "--max-queued");
    cr_assert_eq(count_children(c, g2), 7u);
    cr_assert_eq(count_children(c, g1), 3u);
    /* The cancelled group ends once its shielded child does: every job CANCELLED. */
    cr_assert_eq(corral_group_close(c, shielded), CORRAL_OK);
    t = wait_group(c, g2, WAIT_MS);
    cr_assert_eq(t->outcome, CORRAL_OUTCOME_CANCELLED);
    for (int i = 0; i < 5; i++)
        node_expect(t, born[i], CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    corral_node_free(&t);

    raw_close(&cl);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* After the flood, kill -9 and a restart: the 50 acknowledged jobs are all there (and
 * only they), still count toward the bound, and each runs exactly once. */
Test(s11_busy, busy_loses_nothing_across_kill9, .timeout = 120)
{
    struct broker b;
    broker_start(&b, (const char *const[]){"--max-queued", "50", NULL});
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX];
    open_root(c, g);
    corral_client_free(&c);

    struct acked acked[FLOOD_TOTAL];
    size_t n = flood(&b, g, "echo", acked);
    cr_assert_eq(n, (size_t)FLOOD_BOUND);
    broker_kill9(&b);
    broker_restart(&b);

    c = client_connect(&b);
    struct corral_node *t = get_tree(c, g);
    expect_exactly(t, acked, n, CORRAL_STATE_QUEUED);
    corral_node_free(&t);

    struct raw_peer cl;
    raw_connect(&cl, b.client_ep);
    submit_busy(&cl, &(struct sub){.group = g, .kind = "echo", .payload = "late"}, FLOOD_BOUND,
                "--max-queued");

    struct test_worker *w = test_worker_start(&b, 8);
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    t = wait_group(c, g, 3 * WAIT_MS);
    cr_assert_eq(t->outcome, CORRAL_OUTCOME_SUCCEEDED);
    expect_all_succeeded_once(t, acked, n);
    corral_node_free(&t);
    cr_assert_eq(test_worker_started(w), n, "the worker started %zu jobs, expected %zu",
                 test_worker_started(w), n);
    expect_no_worker_problem(w);

    char g2[CORRAL_ID_MAX], id[CORRAL_ID_MAX];
    open_root(c, g2);
    submit_ok(&cl, &(struct sub){.group = g2, .kind = "echo", .payload = "again"}, id, NULL);
    cr_assert(node_eventually(c, g2, id, CORRAL_STATE_ENDED, WAIT_MS));

    raw_close(&cl);
    test_worker_stop(&w);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* ------------------------------------------------------------------ S11: idempotency keys */

Test(s11_idempotency, same_key_same_group_gives_the_same_job, .timeout = 120)
{
    struct broker b;
    broker_start(&b, NULL);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX];
    open_root(c, g);
    struct raw_peer cl;
    raw_connect(&cl, b.client_ep);
    char id1[CORRAL_ID_MAX], id2[CORRAL_ID_MAX], id3[CORRAL_ID_MAX];

    cr_assert(!submit_ok(&cl, &(struct sub){.group = g, .kind = "k", .payload = "1", .key = "K"},
                         id1, NULL),
              "a first submission is marked duplicate");
    /* The repeat may differ in everything but the key: it still names the first job. */
    for (int i = 0; i < 3; i++) {
        cr_assert(submit_ok(&cl,
                            &(struct sub){.group = g, .kind = "other", .payload = "2", .key = "K"},
                            id2, NULL),
                  "a repeat is not marked duplicate");
        cr_assert_str_eq(id2, id1, "a repeat got %s, expected %s", id2, id1);
    }
    /* Another key, and no key at all (twice), create new jobs. */
    cr_assert(!submit_ok(&cl, &(struct sub){.group = g, .kind = "k", .key = "K2"}, id3, NULL));
    cr_assert_str_neq(id3, id1);
    char e1[CORRAL_ID_MAX], e2[CORRAL_ID_MAX];
    cr_assert(!submit_ok(&cl, &(struct sub){.group = g, .kind = "k", .key = ""}, e1, NULL));
    cr_assert(!submit_ok(&cl, &(struct sub){.group = g, .kind = "k", .key = ""}, e2, NULL));
    cr_assert_str_neq(e1, e2, "an empty key made submissions duplicates");

    struct corral_node *t = get_tree(c, g);
    cr_assert_eq(t->nchildren, 4u, "%zu jobs in the tree, expected 4", t->nchildren);
    const struct corral_node *j = node_expect(t, id1, CORRAL_STATE_QUEUED, CORRAL_OUTCOME_NONE);
    cr_assert_str_eq(j->kind, "k", "the repeat changed the job's kind");
    corral_node_free(&t);

    raw_close(&cl);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s11_idempotency, same_key_in_another_group_is_another_job, .timeout = 120)
{
    struct broker b;
    broker_start(&b, NULL);
    struct corral_client *c = client_connect(&b);
    char g1[CORRAL_ID_MAX], g2[CORRAL_ID_MAX], child[CORRAL_ID_MAX];
    open_root(c, g1);
    open_root(c, g2);
    open_child(c, g1, child);
    struct raw_peer cl;
    raw_connect(&cl, b.client_ep);
    char a[CORRAL_ID_MAX], bb[CORRAL_ID_MAX], ch[CORRAL_ID_MAX], r[CORRAL_ID_MAX];

    cr_assert(!submit_ok(&cl, &(struct sub){.group = g1, .kind = "k", .key = "K"}, a, NULL));
    cr_assert(!submit_ok(&cl, &(struct sub){.group = g2, .kind = "k", .key = "K"}, bb, NULL),
              "the key of a job in another group made a duplicate");
    cr_assert(!submit_ok(&cl, &(struct sub){.group = child, .kind = "k", .key = "K"}, ch, NULL),
              "the key of a job in the parent group made a duplicate");
    cr_assert_str_neq(a, bb);
    cr_assert_str_neq(a, ch);
    cr_assert_str_neq(bb, ch);
    /* Each group's repeat names its own job. */
    cr_assert(submit_ok(&cl, &(struct sub){.group = g2, .kind = "k", .key = "K"}, r, NULL));
    cr_assert_str_eq(r, bb);
    cr_assert(submit_ok(&cl, &(struct sub){.group = g1, .kind = "k", .key = "K"}, r, NULL));
    cr_assert_str_eq(r, a);
    cr_assert(submit_ok(&cl, &(struct sub){.group = child, .kind = "k", .key = "K"}, r, NULL));
    cr_assert_str_eq(r, ch);
    cr_assert_eq(count_children(c, g2), 1u);

    raw_close(&cl);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* A repeat after the group has ended names the original job (not ERR_NOT_ACTIVE), while a
 * new key in that group is ERR_NOT_ACTIVE. */
Test(s11_idempotency, repeat_after_the_group_ended_returns_the_original, .timeout = 120)
{
    struct broker b;
    broker_start(&b, NULL);
    struct corral_client *c = client_connect(&b);
    struct test_worker *w = test_worker_start(&b, 2);
    char g[CORRAL_ID_MAX];
    open_root(c, g);
    struct raw_peer cl;
    raw_connect(&cl, b.client_ep);
    char id[CORRAL_ID_MAX], r[CORRAL_ID_MAX];

    submit_ok(&cl, &(struct sub){.group = g, .kind = "echo", .payload = "one", .key = "K"}, id,
              NULL);
    /* Closed but not yet ended (the job may still run): the repeat names it. */
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    cr_assert(submit_ok(&cl, &(struct sub){.group = g, .kind = "echo", .key = "K"}, r, NULL));
    cr_assert_str_eq(r, id);
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect_result(t, id, "one");
    corral_node_free(&t);

    bool cancelled = true;
    cr_assert(submit_ok(&cl, &(struct sub){.group = g, .kind = "echo", .key = "K"}, r, &cancelled),
              "a repeat into the ended group is not marked duplicate");
    cr_assert_str_eq(r, id);
    cr_assert(!cancelled);
    take_code(submit_req(&cl, &(struct sub){.group = g, .kind = "echo", .key = "new"}),
              CORRAL__V1__ERROR_CODE__ERR_NOT_ACTIVE, "a new key into the ended group", NULL);
    t = get_tree(c, g);
    cr_assert_eq(t->nchildren, 1u);
    node_expect_result(t, id, "one");
    corral_node_free(&t);
    cr_assert_eq(test_worker_started(w), 1u, "the repeats ran the job again");

    raw_close(&cl);
    test_worker_stop(&w);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* Keys are durable: after kill -9 and a restart, repeats still name the original jobs,
 * in an active group and in an ended one; a key acknowledged just before the kill too. */
Test(s11_idempotency, keys_survive_kill9, .timeout = 120)
{
    struct broker b;
    broker_start(&b, NULL);
    struct corral_client *c = client_connect(&b);
    char g1[CORRAL_ID_MAX], g2[CORRAL_ID_MAX];
    open_root(c, g1);
    open_root(c, g2);
    struct raw_peer cl;
    raw_connect(&cl, b.client_ep);
    char ja[CORRAL_ID_MAX], jb[CORRAL_ID_MAX], jc[CORRAL_ID_MAX], r[CORRAL_ID_MAX];

    /* g1 stays active: its job is of a kind no worker takes. */
    submit_ok(&cl, &(struct sub){.group = g1, .kind = "nobody", .key = "A"}, ja, NULL);
    /* g2 ends. */
    struct test_worker *w = test_worker_start(&b, 1);
    submit_ok(&cl, &(struct sub){.group = g2, .kind = "echo", .payload = "b", .key = "B"}, jb,
              NULL);
    cr_assert_eq(corral_group_close(c, g2), CORRAL_OK);
    struct corral_node *t = wait_group(c, g2, WAIT_MS);
    corral_node_free(&t);
    test_worker_stop(&w);
    raw_close(&cl);
    corral_client_free(&c);

    broker_kill9(&b);
    broker_restart(&b);
    raw_connect(&cl, b.client_ep);
    cr_assert(submit_ok(&cl, &(struct sub){.group = g1, .kind = "nobody", .key = "A"}, r, NULL),
              "after a restart a repeat in an active group is not a duplicate");
    cr_assert_str_eq(r, ja);
    cr_assert(submit_ok(&cl, &(struct sub){.group = g2, .kind = "echo", .key = "B"}, r, NULL),
              "after a restart a repeat in an ended group is not a duplicate");
    cr_assert_str_eq(r, jb);
    cr_assert(!submit_ok(&cl, &(struct sub){.group = g1, .kind = "nobody", .key = "C"}, jc, NULL));
    cr_assert_str_neq(jc, ja);

    /* The acknowledgement of C came after its commit: kill at once. */
    broker_kill9(&b);
    broker_restart(&b);
    raw_close(&cl);
    raw_connect(&cl, b.client_ep);
    cr_assert(submit_ok(&cl, &(struct sub){.group = g1, .kind = "nobody", .key = "C"}, r, NULL));
    cr_assert_str_eq(r, jc);
    cr_assert(submit_ok(&cl, &(struct sub){.group = g1, .kind = "nobody", .key = "A"}, r, NULL));
    cr_assert_str_eq(r, ja);

    c = client_connect(&b);
    cr_assert_eq(count_children(c, g1), 2u);
    cr_assert_eq(count_children(c, g2), 1u);
    raw_close(&cl);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s11_idempotency, key_longer_than_1024_bytes_is_bad_request, .timeout = 120)
{
    struct broker b;
    broker_start(&b, NULL);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX];
    open_root(c, g);
    struct raw_peer cl;
    raw_connect(&cl, b.client_ep);

    char key[IDEM_KEY_MAX + 2];
    memset(key, 'k', IDEM_KEY_MAX + 1);
    key[IDEM_KEY_MAX + 1] = '\0';
    take_code(submit_req(&cl, &(struct sub){.group = g, .kind = "k", .key = key}),
              CORRAL__V1__ERROR_CODE__ERR_BAD_REQUEST, "a key of 1025 bytes", "1024");
    cr_assert_eq(count_children(c, g), 0u, "a refused key created a job");

    /* 1024 bytes is allowed, and works as a key. */
    key[IDEM_KEY_MAX] = '\0';
    char id[CORRAL_ID_MAX], r[CORRAL_ID_MAX];
    cr_assert(!submit_ok(&cl, &(struct sub){.group = g, .kind = "k", .key = key}, id, NULL));
    cr_assert(submit_ok(&cl, &(struct sub){.group = g, .kind = "k", .key = key}, r, NULL));
    cr_assert_str_eq(r, id);
    /* The long key's 1024-byte prefix is not the long key: still refused, not a repeat. */
    key[IDEM_KEY_MAX] = 'k';
    take_code(submit_req(&cl, &(struct sub){.group = g, .kind = "k", .key = key}),
              CORRAL__V1__ERROR_CODE__ERR_BAD_REQUEST, "a key of 1025 bytes, again", NULL);
    cr_assert_eq(count_children(c, g), 1u);

    raw_close(&cl);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* At the bound, a repeat of an acknowledged submission still names its job (a client
 * retrying after a lost reply is never told BUSY for work that exists); a refused
 * submission leaves no key behind, so its retry later creates the job. */
Test(s11_idempotency, repeat_is_answered_when_busy_and_busy_records_no_key, .timeout = 120)
{
    struct broker b;
    broker_start(&b, (const char *const[]){"--max-queued", "1", NULL});
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX];
    open_root(c, g);
    struct raw_peer cl;
    raw_connect(&cl, b.client_ep);
    char id[CORRAL_ID_MAX], r[CORRAL_ID_MAX], id2[CORRAL_ID_MAX];

    submit_ok(&cl, &(struct sub){.group = g, .kind = "echo", .payload = "1", .key = "K"}, id, NULL);
    cr_assert(submit_ok(&cl, &(struct sub){.group = g, .kind = "echo", .key = "K"}, r, NULL),
              "a repeat at the bound is not a duplicate");
    cr_assert_str_eq(r, id);
    submit_busy(&cl, &(struct sub){.group = g, .kind = "echo", .payload = "2", .key = "K2"}, 1,
                "--max-queued");
    cr_assert_eq(count_children(c, g), 1u);

    struct test_worker *w = test_worker_start(&b, 1);
    cr_assert(node_eventually(c, g, id, CORRAL_STATE_ENDED, WAIT_MS));
    cr_assert(!submit_ok(&cl,
                         &(struct sub){.group = g, .kind = "echo", .payload = "2", .key = "K2"},
                         id2, NULL),
              "the retry of a submission refused BUSY is marked duplicate");
    cr_assert_str_neq(id2, id);
    cr_assert(node_eventually(c, g, id2, CORRAL_STATE_ENDED, WAIT_MS));
    struct corral_node *t = get_tree(c, g);
    cr_assert_eq(t->nchildren, 2u);
    node_expect_result(t, id, "1");
    node_expect_result(t, id2, "2");
    corral_node_free(&t);

    raw_close(&cl);
    test_worker_stop(&w);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* ------------------------------------------------------------------ libcorral, corralctl */

struct waiter {
    const char *endpoint;
    const char *group;
    int rc;
    char id[CORRAL_ID_MAX];
    bool duplicate;
    uint64_t elapsed_ms;
    atomic_bool done;
};

/* A client of its own submitting with wait_for_capacity (timeout 30 s); no cr_assert. */
static void *
waiter_main(void *arg)
{
    struct waiter *wt = arg;
    struct corral_client *c = NULL;
    uint64_t t0 = clock_mono_ms();
    wt->rc = corral_client_new(&c, wt->endpoint, 30000);
    if (wt->rc == CORRAL_OK) {
        struct corral_submit_opts o = {0};
        o.wait_for_capacity = true;
        o.duplicate = &wt->duplicate;
        wt->rc = corral_submit_opts(c, wt->group, "echo", "waited", 6, &o, wt->id, NULL);
    }
    wt->elapsed_ms = clock_mono_ms() - t0;
    corral_client_free(&c);
    atomic_store(&wt->done, true);
    return NULL;
}

Test(s11_library, wait_for_capacity_succeeds_once_a_worker_drains, .timeout = 120)
{
    struct broker b;
    broker_start(&b, (const char *const[]){"--max-queued", "5", NULL});
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], id[CORRAL_ID_MAX];
    open_root(c, g);
    for (int i = 0; i < 5; i++)
        submit(c, g, "echo", "fill", id);

    struct waiter wt = {.endpoint = b.client_ep, .group = g, .rc = -1};
    atomic_init(&wt.done, false);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, waiter_main, &wt), 0);
    /* The bound is full and no worker is there: the caller waits (a plain call would have
     * returned CORRAL_EBUSY at once). */
    sleep_ms(1000);
    bool early = atomic_load(&wt.done);
    struct test_worker *w = NULL;
    if (!early)
        w = test_worker_start(&b, 4);
    pthread_join(th, NULL);
    cr_assert(!early,
              "corral_submit_opts with wait_for_capacity returned %d (%s) before any "
              "capacity, after %" PRIu64 " ms",
              wt.rc, corral_strerror(wt.rc), wt.elapsed_ms);
    cr_assert_eq(wt.rc, CORRAL_OK, "wait_for_capacity: %s after %" PRIu64 " ms",
                 corral_strerror(wt.rc), wt.elapsed_ms);
    cr_assert(!wt.duplicate);
    cr_assert(node_eventually(c, g, wt.id, CORRAL_STATE_ENDED, WAIT_MS));
    struct corral_node *t = get_tree(c, g);
    cr_assert_eq(t->nchildren, 6u, "%zu jobs, expected the 5 and the waited one", t->nchildren);
    node_expect_result(t, wt.id, "waited");
    corral_node_free(&t);

    test_worker_stop(&w);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s11_library, submit_without_wait_for_capacity_gets_ebusy, .timeout = 120)
{
    struct broker b;
    broker_start(&b, (const char *const[]){"--max-queued", "3", NULL});
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], g2[CORRAL_ID_MAX], id[CORRAL_ID_MAX], a[CORRAL_ID_MAX], r[CORRAL_ID_MAX];
    open_root(c, g);
    open_root(c, g2);

    /* libcorral's duplicate flag (the job queues: one of the 3). */
    bool dup = true;
    struct corral_submit_opts k = {.idempotency_key = "K", .duplicate = &dup};
    cr_assert_eq(corral_submit_opts(c, g2, "echo", "k", 1, &k, a, NULL), CORRAL_OK, "%s",
                 corral_client_last_error(c));
    cr_assert(!dup, "a first submission is marked duplicate");
    cr_assert_eq(corral_submit_opts(c, g2, "echo", "k", 1, &k, r, NULL), CORRAL_OK);
    cr_assert(dup, "a repeat is not marked duplicate");
    cr_assert_str_eq(r, a);

    submit(c, g, "echo", "1", id);
    submit(c, g, "echo", "2", id);

    char busy_id[CORRAL_ID_MAX] = "";
    int rc = corral_submit(c, g, "echo", "3", 1, busy_id, NULL);
    cr_assert_eq(rc, CORRAL_EBUSY, "corral_submit at the bound: %s", corral_strerror(rc));
    cr_assert_gt(corral_client_retry_after_ms(c), 0u);
    cr_assert_not_null(strstr(corral_client_last_error(c), "--max-queued"), "message: %s",
                       corral_client_last_error(c));

    struct corral_submit_opts o = {0};
    rc = corral_submit_opts(c, g, "echo", "3", 1, &o, busy_id, NULL);
    cr_assert_eq(rc, CORRAL_EBUSY, "corral_submit_opts at the bound: %s", corral_strerror(rc));
    cr_assert_gt(corral_client_retry_after_ms(c), 0u);

    /* A repeat of the key at the bound is still answered, with the first job. */
    dup = false;
    cr_assert_eq(corral_submit_opts(c, g2, "echo", "k", 1, &k, r, NULL), CORRAL_OK,
                 "a repeat at the bound: %s", corral_client_last_error(c));
    cr_assert(dup);
    cr_assert_str_eq(r, a);

    /* With wait_for_capacity and nobody draining: CORRAL_EBUSY once the client's timeout
     * (1.5 s) has passed. */
    struct corral_client *c2 = NULL;
    cr_assert_eq(corral_client_new(&c2, b.client_ep, 1500), CORRAL_OK);
    o.wait_for_capacity = true;
    uint64_t t0 = clock_mono_ms();
    rc = corral_submit_opts(c2, g, "echo", "3", 1, &o, busy_id, NULL);
    uint64_t el = clock_mono_ms() - t0;
    cr_assert_eq(rc, CORRAL_EBUSY, "wait_for_capacity with no capacity: %s", corral_strerror(rc));
    cr_assert(el >= 1000 && el < 15000, "wait_for_capacity gave up after %" PRIu64 " ms", el);
    corral_client_free(&c2);
    cr_assert_eq(count_children(c, g), 2u, "a BUSY submission created a job");
    cr_assert_eq(count_children(c, g2), 1u, "a repeat created a job");

    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

static void
trim(char *s)
{
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == ' '))
        s[--n] = '\0';
}

Test(s11_library, corralctl_submit_exits_75_on_busy, .timeout = 120)
{
    struct broker b;
    broker_start(&b, (const char *const[]){"--max-queued", "2", NULL});
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], id[CORRAL_ID_MAX];
    open_root(c, g);
    char out[512], first[512];

    int st = run_ctl(&b, first, sizeof first,
                     (const char *const[]){"submit", g, "echo", "--idempotency-key", "K", NULL});
    cr_assert_eq(st, 0, "submit --idempotency-key: exit %d", st);
    trim(first);
    cr_assert(first[0] != '\0');
    submit(c, g, "echo", "2", id);

    st = run_ctl(&b, out, sizeof out, (const char *const[]){"submit", g, "echo", NULL});
    cr_assert_eq(st, 75, "submit at the bound: exit %d, expected 75 (stdout: %s)", st, out);
    cr_assert_str_eq(out, "", "a BUSY submit printed '%s'", out);
    uint64_t t0 = clock_mono_ms();
    st = run_ctl(
        &b, out, sizeof out,
        (const char *const[]){"submit", g, "echo", "--wait-for-capacity", "--timeout", "1s", NULL});
    uint64_t el = clock_mono_ms() - t0;
    cr_assert_eq(st, 75, "submit --wait-for-capacity at the bound: exit %d, expected 75", st);
    cr_assert_geq(el, 900u, "--wait-for-capacity gave up after %" PRIu64 " ms", el);

    /* A repeat of the key is answered even at the bound, with the first job's id. */
    st = run_ctl(&b, out, sizeof out,
                 (const char *const[]){"submit", g, "echo", "--idempotency-key", "K", NULL});
    cr_assert_eq(st, 0, "repeat at the bound: exit %d", st);
    trim(out);
    cr_assert_str_eq(out, first, "the repeat printed %s, expected %s", out, first);
    st = run_ctl(
        &b, out, sizeof out,
        (const char *const[]){"submit", g, "echo", "--idempotency-key", "K", "--json", NULL});
    cr_assert_eq(st, 0);
    cr_assert_not_null(strstr(out, "\"duplicate\": true") ? out : strstr(out, "\"duplicate\":true"),
                       "--json of a repeat: %s", out);
    cr_assert_eq(count_children(c, g), 2u);

    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}
