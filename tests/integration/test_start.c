/* test_start.c - DESIGN.md S9 (start readiness) and D2 (a job submitted with wait_started
 * belongs to its group from submission) against the real corrald.
 *
 * The caller is a raw client socket that sends Submit with wait_started and reads the
 * deferred Reply itself, and the workers are raw workers, so each test decides when
 * Started, Done, Failed and CancelAck are sent. Trees are read with libcorral, and with a
 * raw GetTree for the field libcorral does not show (Node.started). */
#include <criterion/criterion.h>

#include <string.h>

#include "clock.h"
#include "harness.h"

#define WAIT_MS 10000

TestSuite(s9_start_readiness, .fini = harness_teardown);
TestSuite(d2_start_membership, .fini = harness_teardown);

static const char *const RAW_KINDS[] = {"raw"};

/* ------------------------------------------------------------------ helpers */

/* Waits for a Dispatch on p (heartbeating), copies its job id into job and returns its
 * attempt. */
static uint32_t
expect_dispatch(struct raw_peer *p, char job[CORRAL_ID_MAX], int timeout_ms)
{
    Corral__V1__Envelope *d =
        raw_worker_expect(p, CORRAL__V1__ENVELOPE__BODY_DISPATCH, timeout_ms, true);
    cr_assert_not_null(d, "no Dispatch within %d ms", timeout_ms);
    cr_assert_lt(strlen(d->dispatch->job), CORRAL_ID_MAX);
    snprintf(job, CORRAL_ID_MAX, "%s", d->dispatch->job);
    uint32_t attempt = d->dispatch->attempt;
    corral__v1__envelope__free_unpacked(d, NULL);
    return attempt;
}

/* Waits for a Cancel on p (heartbeating) and checks its job, attempt and source (and its
 * reason unless NULL). */
static void
expect_cancel(struct raw_peer *p, const char *job, uint32_t attempt,
              Corral__V1__CancelSource source, const char *reason, int timeout_ms)
{
    Corral__V1__Envelope *cm =
        raw_worker_expect(p, CORRAL__V1__ENVELOPE__BODY_CANCEL, timeout_ms, true);
    cr_assert_not_null(cm, "no Cancel of %s within %d ms", job, timeout_ms);
    cr_assert_str_eq(cm->cancel->job, job);
    cr_assert_eq(cm->cancel->attempt, attempt);
    cr_assert_eq(cm->cancel->source, source, "Cancel of %s: source %d, expected %d", job,
                 (int)cm->cancel->source, (int)source);
    if (reason != NULL)
        cr_assert_str_eq(cm->cancel->reason, reason);
    corral__v1__envelope__free_unpacked(cm, NULL);
}

/* Keeps p alive for ms and asserts no Cancel reached it meanwhile. */
static void
expect_no_cancel(struct raw_peer *p, int ms)
{
    Corral__V1__Envelope *cm = raw_worker_expect(p, CORRAL__V1__ENVELOPE__BODY_CANCEL, ms, true);
    if (cm != NULL) {
        char job[CORRAL_ID_MAX];
        snprintf(job, sizeof job, "%s", cm->cancel->job);
        corral__v1__envelope__free_unpacked(cm, NULL);
        cr_assert_fail("the worker was told to cancel %s", job);
    }
}

/* The caller: sends Submit{group, kind, payload, wait_started} on a raw client socket
 * without waiting for the reply; returns the request id. max_attempts and backoff_ms 0
 * ask for the broker's defaults. */
static uint64_t
start_send(struct raw_peer *caller, const char *group, const char *kind, const char *payload,
           uint32_t max_attempts, uint64_t backoff_ms)
{
    Corral__V1__Envelope env;
    Corral__V1__Submit sub;
    corral__v1__envelope__init(&env);
    corral__v1__submit__init(&sub);
    sub.group = (char *)group;
    sub.kind = (char *)kind;
    sub.payload.data = (uint8_t *)payload;
    sub.payload.len = payload != NULL ? strlen(payload) : 0;
    sub.wait_started = true;
    sub.max_attempts = max_attempts;
    sub.backoff_ms = backoff_ms;
    env.version = CORRAL_PROTOCOL_VERSION;
    env.request_id = caller->next_request_id++;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_SUBMIT;
    env.submit = &sub;
    raw_send(caller, &env);
    return env.request_id;
}

/* Asserts that nothing reached the caller within ms. */
static void
expect_no_reply(struct raw_peer *caller, int ms)
{
    Corral__V1__Envelope *r = raw_recv(caller, ms);
    if (r != NULL) {
        int code = r->reply != NULL ? (int)r->reply->code : -1;
        int body = (int)r->body_case;
        corral__v1__envelope__free_unpacked(r, NULL);
        cr_assert_fail("the caller got a message (body %d, reply code %d) while none was due", body,
                       code);
    }
}

/* The reply to the caller's Submit (request rid): asserts its code and that it names job
 * (unless job is NULL). Returns it, owned. */
static Corral__V1__Envelope *
expect_start_reply(struct raw_peer *caller, uint64_t rid, Corral__V1__ErrorCode code,
                   const char *job, int timeout_ms)
{
    Corral__V1__Envelope *r = raw_expect_reply(caller, rid, timeout_ms);
    cr_assert_not_null(r->reply);
    cr_assert_eq(r->reply->code, code, "start reply: code %d (\"%s\"), expected %d",
                 (int)r->reply->code, r->reply->message, (int)code);
    if (job != NULL)
        cr_assert_str_eq(r->reply->id, job, "start reply names job %s, expected %s", r->reply->id,
                         job);
    return r;
}

static void
expect_bytes(ProtobufCBinaryData got, const char *want, const char *what)
{
    size_t len = strlen(want);
    cr_assert(got.len == len && (len == 0 || memcmp(got.data, want, len) == 0),
              "%s: \"%.*s\", expected \"%s\"", what, (int)got.len,
              got.data != NULL ? (const char *)got.data : "", want);
}

/* Worker reports libcorral's raw helpers do not cover: Started, and Failed with the
 * retryable flag. Each returns the Reply's code. */
static int
raw_worker_started(struct raw_peer *p, const char *job, uint32_t attempt, const char *value)
{
    Corral__V1__Envelope env;
    Corral__V1__Started st;
    corral__v1__envelope__init(&env);
    corral__v1__started__init(&st);
    st.job = (char *)job;
    st.attempt = attempt;
    st.value.data = (uint8_t *)value;
    st.value.len = value != NULL ? strlen(value) : 0;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_STARTED;
    env.started = &st;
    Corral__V1__Envelope *r = raw_request(p, &env, 5000);
    int code = r->reply != NULL ? (int)r->reply->code : -1;
    corral__v1__envelope__free_unpacked(r, NULL);
    return code;
}

/* Node.started of job in group's tree, read with a raw GetTree on reader. */
static bool
raw_node_started(struct raw_peer *reader, const char *group, const char *job)
{
    Corral__V1__Envelope env;
    Corral__V1__GetTree gt;
    corral__v1__envelope__init(&env);
    corral__v1__get_tree__init(&gt);
    gt.group = (char *)group;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_GET_TREE;
    env.get_tree = &gt;
    Corral__V1__Envelope *r = raw_request(reader, &env, 5000);
    cr_assert_eq(r->reply->code, CORRAL__V1__ERROR_CODE__ERR_OK, "GetTree %s: %s", group,
                 r->reply->message);
    const Corral__V1__Node *n = pnode_find(r->reply->tree, job);
    cr_assert_not_null(n, "job %s is not in the tree of %s", job, group);
    bool started = n->started;
    corral__v1__envelope__free_unpacked(r, NULL);
    return started;
}

/* Opens a root group with a relative move-on deadline (raw OpenGroup). */
static void
raw_open_move_on(struct raw_peer *p, uint64_t timeout_ms, char id[CORRAL_ID_MAX])
{
    Corral__V1__Envelope env;
    Corral__V1__OpenGroup og;
    Corral__V1__Scope scope;
    corral__v1__envelope__init(&env);
    corral__v1__open_group__init(&og);
    corral__v1__scope__init(&scope);
    scope.timeout_ms = timeout_ms;
    scope.on_deadline = CORRAL__V1__ON_DEADLINE__ON_DEADLINE_MOVE_ON;
    og.scope = &scope;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_OPEN_GROUP;
    env.open_group = &og;
    Corral__V1__Envelope *r = raw_request(p, &env, 5000);
    cr_assert_eq(r->reply->code, CORRAL__V1__ERROR_CODE__ERR_OK, "OpenGroup: %s",
                 r->reply->message);
    cr_assert_lt(strlen(r->reply->id), CORRAL_ID_MAX);
    snprintf(id, CORRAL_ID_MAX, "%s", r->reply->id);
    corral__v1__envelope__free_unpacked(r, NULL);
}

/* ------------------------------------------------------------------ S9 */

Test(s9_start_readiness, start_returns_the_started_value_while_the_job_runs_on)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer wk, caller, reader;
    raw_worker_register(&wk, &b, RAW_KINDS, 1, 1);
    raw_connect(&caller, b.client_ep);
    raw_connect(&reader, b.client_ep);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];

    open_root(c, g);
    uint64_t rid = start_send(&caller, g, "raw", "p", 0, 0);
    cr_assert_eq(expect_dispatch(&wk, j, 5000), 1);

    /* Until started(), the caller waits. */
    raw_worker_idle(&wk, 300);
    expect_no_reply(&caller, 0);
    struct corral_node *t = get_tree(c, g);
    node_expect(t, j, CORRAL_STATE_RUNNING, CORRAL_OUTCOME_NONE);
    corral_node_free(&t);
    cr_assert(!raw_node_started(&reader, g, j), "the tree says %s started before it did", j);

    cr_assert_eq(raw_worker_started(&wk, j, 1, "ready:42"), CORRAL__V1__ERROR_CODE__ERR_OK);
    Corral__V1__Envelope *r =
        expect_start_reply(&caller, rid, CORRAL__V1__ERROR_CODE__ERR_OK, j, 2000);
    expect_bytes(r->reply->value, "ready:42", "start reply value");
    corral__v1__envelope__free_unpacked(r, NULL);

    /* The job runs on: still RUNNING, marked started, not cancelled. */
    expect_no_cancel(&wk, 300);
    t = get_tree(c, g);
    node_expect(t, j, CORRAL_STATE_RUNNING, CORRAL_OUTCOME_NONE);
    node_expect_cancel(t, j, false, CORRAL_SOURCE_NONE, NULL, false);
    corral_node_free(&t);
    cr_assert(raw_node_started(&reader, g, j), "the tree does not say %s started", j);

    cr_assert_eq(raw_worker_done(&wk, j, 1, "final"), CORRAL_OK);
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    cr_assert_null(t->error);
    node_expect_result(t, j, "final");
    corral_node_free(&t);
    /* The caller had its one reply. */
    expect_no_reply(&caller, 200);

    corral_client_free(&c);
    raw_close(&reader);
    raw_close(&caller);
    raw_close(&wk);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s9_start_readiness, failure_before_started_goes_to_the_caller_and_does_not_cancel_the_group)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer wk, caller;
    raw_worker_register(&wk, &b, RAW_KINDS, 1, 2);
    raw_connect(&caller, b.client_ep);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], s[CORRAL_ID_MAX], j[CORRAL_ID_MAX], d[CORRAL_ID_MAX];

    open_root(c, g);
    submit(c, g, "raw", "sibling", s);
    cr_assert_eq(expect_dispatch(&wk, d, 5000), 1);
    cr_assert_str_eq(d, s);
    uint64_t rid = start_send(&caller, g, "raw", "starter", 0, 0);
    cr_assert_eq(expect_dispatch(&wk, j, 5000), 1);

    cr_assert_eq(raw_worker_failed(&wk, j, 1, "ValueError", "broken before start"), CORRAL_OK);
    Corral__V1__Envelope *r =
        expect_start_reply(&caller, rid, CORRAL__V1__ERROR_CODE__ERR_START_FAILED, j, 2000);
    const Corral__V1__Error *err = r->reply->error;
    cr_assert_not_null(err, "ERR_START_FAILED without the job's error");
    cr_assert_str_eq(err->type, "ValueError");
    cr_assert_str_eq(err->message, "broken before start");
    cr_assert_str_eq(err->job, j);
    cr_assert_eq(err->n_exceptions, 0);
    corral__v1__envelope__free_unpacked(r, NULL);

    /* The group is not cancelled by it: the sibling runs on, untold. */
    expect_no_cancel(&wk, 500);
    struct corral_node *t = get_tree(c, g);
    node_expect(t, g, CORRAL_STATE_OPEN, CORRAL_OUTCOME_NONE);
    node_expect_cancel(t, g, false, CORRAL_SOURCE_NONE, NULL, false);
    node_expect(t, s, CORRAL_STATE_RUNNING, CORRAL_OUTCOME_NONE);
    node_expect_cancel(t, s, false, CORRAL_SOURCE_NONE, NULL, false);
    const struct corral_node *jn = node_expect(t, j, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_job(jn->error, "ValueError", "broken before start", j);
    corral_node_free(&t);

    /* ...and it ends without that failure: recorded on the job, not in an exception group. */
    cr_assert_eq(raw_worker_done(&wk, s, 1, "fine"), CORRAL_OK);
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    cr_assert_null(t->error, "the group has an error (type %s)",
                   t->error != NULL && t->error->type != NULL ? t->error->type : "-");
    node_expect_result(t, s, "fine");
    jn = node_expect(t, j, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_job(jn->error, "ValueError", "broken before start", j);
    node_expect_cancel(t, g, false, CORRAL_SOURCE_NONE, NULL, false);
    corral_node_free(&t);

    corral_client_free(&c);
    raw_close(&caller);
    raw_close(&wk);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s9_start_readiness, success_without_started_gives_not_started)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer wk, caller;
    raw_worker_register(&wk, &b, RAW_KINDS, 1, 1);
    raw_connect(&caller, b.client_ep);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];

    open_root(c, g);
    uint64_t rid = start_send(&caller, g, "raw", "", 0, 0);
    cr_assert_eq(expect_dispatch(&wk, j, 5000), 1);
    cr_assert_eq(raw_worker_done(&wk, j, 1, "never said ready"), CORRAL_OK);

    Corral__V1__Envelope *r =
        expect_start_reply(&caller, rid, CORRAL__V1__ERROR_CODE__ERR_NOT_STARTED, j, 2000);
    cr_assert(strstr(r->reply->message, "ended without signalling readiness") != NULL,
              "ERR_NOT_STARTED message \"%s\" does not say the job ended without signalling "
              "readiness",
              r->reply->message);
    corral__v1__envelope__free_unpacked(r, NULL);

    /* The job itself succeeded, and so does its group. */
    struct corral_node *t = get_tree(c, g);
    node_expect_result(t, j, "never said ready");
    corral_node_free(&t);
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect_result(t, j, "never said ready");
    corral_node_free(&t);

    corral_client_free(&c);
    raw_close(&caller);
    raw_close(&wk);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s9_start_readiness, cancelling_the_group_before_started_gives_start_cancelled)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer wk, caller;
    raw_worker_register(&wk, &b, RAW_KINDS, 1, 1);
    raw_connect(&caller, b.client_ep);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX], g2[CORRAL_ID_MAX];

    /* A running job whose group is cancelled before it calls started(). */
    open_root(c, g);
    uint64_t rid = start_send(&caller, g, "raw", "", 0, 0);
    cr_assert_eq(expect_dispatch(&wk, j, 5000), 1);
    cr_assert_eq(corral_group_cancel(c, g, "not now"), CORRAL_OK);
    expect_cancel(&wk, j, 1, CORRAL__V1__CANCEL_SOURCE__CANCEL_SOURCE_PARENT, "not now", 1000);
    cr_assert_eq(raw_worker_cancel_ack(&wk, j, 1), CORRAL_OK);
    Corral__V1__Envelope *r =
        expect_start_reply(&caller, rid, CORRAL__V1__ERROR_CODE__ERR_START_CANCELLED, j, 2000);
    corral__v1__envelope__free_unpacked(r, NULL);
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect(t, j, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    corral_node_free(&t);

    /* A queued one (no worker serves its kind): cancelled at once, so is the caller told. */
    open_root(c, g2);
    rid = start_send(&caller, g2, "nobody-serves-this", "", 0, 0);
    raw_worker_idle(&wk, 200);
    expect_no_reply(&caller, 0);
    cr_assert_eq(corral_group_cancel(c, g2, "before any worker"), CORRAL_OK);
    r = expect_start_reply(&caller, rid, CORRAL__V1__ERROR_CODE__ERR_START_CANCELLED, NULL, 2000);
    char q[CORRAL_ID_MAX];
    cr_assert(r->reply->id[0] != '\0' && strlen(r->reply->id) < CORRAL_ID_MAX,
              "ERR_START_CANCELLED names no job");
    snprintf(q, sizeof q, "%s", r->reply->id);
    corral__v1__envelope__free_unpacked(r, NULL);
    t = wait_group(c, g2, WAIT_MS);
    node_expect(t, g2, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect(t, q, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    corral_node_free(&t);

    corral_client_free(&c);
    raw_close(&caller);
    raw_close(&wk);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s9_start_readiness, cancelling_the_job_before_started_gives_start_cancelled)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer wk, caller;
    raw_worker_register(&wk, &b, RAW_KINDS, 1, 1);
    raw_connect(&caller, b.client_ep);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];

    open_root(c, g);
    uint64_t rid = start_send(&caller, g, "raw", "", 0, 0);
    cr_assert_eq(expect_dispatch(&wk, j, 5000), 1);
    cr_assert_eq(corral_job_cancel(c, j, "just this one"), CORRAL_OK);
    expect_cancel(&wk, j, 1, CORRAL__V1__CANCEL_SOURCE__CANCEL_SOURCE_EXPLICIT, "just this one",
                  1000);
    cr_assert_eq(raw_worker_cancel_ack(&wk, j, 1), CORRAL_OK);
    Corral__V1__Envelope *r =
        expect_start_reply(&caller, rid, CORRAL__V1__ERROR_CODE__ERR_START_CANCELLED, j, 2000);
    corral__v1__envelope__free_unpacked(r, NULL);

    /* Cancelling one job is not a group error. */
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect(t, j, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    corral_node_free(&t);

    corral_client_free(&c);
    raw_close(&caller);
    raw_close(&wk);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s9_start_readiness, a_deadline_before_started_gives_start_cancelled)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer wk, caller;
    raw_worker_register(&wk, &b, RAW_KINDS, 1, 1);
    raw_connect(&caller, b.client_ep);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];

    /* The group's move-on deadline passes while the job has not called started(). */
    raw_open_move_on(&caller, 500, g);
    uint64_t rid = start_send(&caller, g, "raw", "", 0, 0);
    cr_assert_eq(expect_dispatch(&wk, j, 5000), 1);
    Corral__V1__Envelope *cm =
        raw_worker_expect(&wk, CORRAL__V1__ENVELOPE__BODY_CANCEL, 5000, true);
    cr_assert_not_null(cm, "the deadline sent no Cancel within 5 s");
    cr_assert_str_eq(cm->cancel->job, j);
    corral__v1__envelope__free_unpacked(cm, NULL);
    cr_assert_eq(raw_worker_cancel_ack(&wk, j, 1), CORRAL_OK);
    Corral__V1__Envelope *r =
        expect_start_reply(&caller, rid, CORRAL__V1__ERROR_CODE__ERR_START_CANCELLED, j, 2000);
    corral__v1__envelope__free_unpacked(r, NULL);

    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, j, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    corral_node_free(&t);

    corral_client_free(&c);
    raw_close(&caller);
    raw_close(&wk);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s9_start_readiness, start_into_a_cancelled_group_is_start_cancelled_at_once)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer wk, caller;
    raw_worker_register(&wk, &b, RAW_KINDS, 1, 2);
    raw_connect(&caller, b.client_ep);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], x[CORRAL_ID_MAX], d[CORRAL_ID_MAX];

    /* g is cancelled but has not ended: its running job x has not acknowledged. */
    open_root(c, g);
    submit(c, g, "raw", "", x);
    cr_assert_eq(expect_dispatch(&wk, d, 5000), 1);
    cr_assert_str_eq(d, x);
    cr_assert_eq(corral_group_cancel(c, g, "closed for business"), CORRAL_OK);
    expect_cancel(&wk, x, 1, CORRAL__V1__CANCEL_SOURCE__CANCEL_SOURCE_PARENT, "closed for business",
                  1000);

    uint64_t t0 = clock_mono_ms();
    uint64_t rid = start_send(&caller, g, "raw", "", 0, 0);
    Corral__V1__Envelope *r =
        expect_start_reply(&caller, rid, CORRAL__V1__ERROR_CODE__ERR_START_CANCELLED, NULL, 1000);
    uint64_t took = clock_mono_ms() - t0;
    char j[CORRAL_ID_MAX];
    cr_assert(r->reply->id[0] != '\0' && strlen(r->reply->id) < CORRAL_ID_MAX,
              "ERR_START_CANCELLED names no job");
    snprintf(j, sizeof j, "%s", r->reply->id);
    corral__v1__envelope__free_unpacked(r, NULL);
    cr_assert_lt(took, 1000, "the reply took %llu ms", (unsigned long long)took);

    /* Recorded, cancelled, never dispatched (the worker has a free slot). */
    struct corral_node *t = get_tree(c, g);
    node_expect(t, j, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    corral_node_free(&t);
    Corral__V1__Envelope *dm =
        raw_worker_expect(&wk, CORRAL__V1__ENVELOPE__BODY_DISPATCH, 300, true);
    if (dm != NULL) {
        corral__v1__envelope__free_unpacked(dm, NULL);
        cr_assert_fail("a job submitted into a cancelled group was dispatched");
    }

    cr_assert_eq(raw_worker_cancel_ack(&wk, x, 1), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect(t, x, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect(t, j, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    corral_node_free(&t);

    corral_client_free(&c);
    raw_close(&caller);
    raw_close(&wk);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s9_start_readiness, failure_after_started_is_the_groups)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer wk, caller;
    raw_worker_register(&wk, &b, RAW_KINDS, 1, 2);
    raw_connect(&caller, b.client_ep);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], s[CORRAL_ID_MAX], j[CORRAL_ID_MAX], d[CORRAL_ID_MAX];

    open_root(c, g);
    submit(c, g, "raw", "sibling", s);
    cr_assert_eq(expect_dispatch(&wk, d, 5000), 1);
    cr_assert_str_eq(d, s);
    uint64_t rid = start_send(&caller, g, "raw", "", 0, 0);
    cr_assert_eq(expect_dispatch(&wk, j, 5000), 1);
    cr_assert_eq(raw_worker_started(&wk, j, 1, "up"), CORRAL__V1__ERROR_CODE__ERR_OK);
    Corral__V1__Envelope *r =
        expect_start_reply(&caller, rid, CORRAL__V1__ERROR_CODE__ERR_OK, j, 2000);
    expect_bytes(r->reply->value, "up", "start reply value");
    corral__v1__envelope__free_unpacked(r, NULL);

    /* Now its failure fails the group fast, like any child's. */
    cr_assert_eq(raw_worker_failed(&wk, j, 1, "RuntimeError", "broke after start"), CORRAL_OK);
    expect_cancel(&wk, s, 1, CORRAL__V1__CANCEL_SOURCE__CANCEL_SOURCE_SIBLING_FAILED, j, 1000);
    cr_assert_eq(raw_worker_cancel_ack(&wk, s, 1), CORRAL_OK);
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    node_expect(t, s, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    const struct corral_node *jn = node_expect(t, j, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_job(jn->error, "RuntimeError", "broke after start", j);
    error_expect_group(t->error, g, 1);
    error_expect_job(&t->error->exceptions[0], "RuntimeError", "broke after start", j);
    corral_node_free(&t);
    /* The caller had its answer at started(); nothing more comes. */
    expect_no_reply(&caller, 200);

    corral_client_free(&c);
    raw_close(&caller);
    raw_close(&wk);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s9_start_readiness, started_twice_is_an_error_to_the_worker)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer wk, caller;
    raw_worker_register(&wk, &b, RAW_KINDS, 1, 1);
    raw_connect(&caller, b.client_ep);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];

    open_root(c, g);
    uint64_t rid = start_send(&caller, g, "raw", "", 0, 0);
    cr_assert_eq(expect_dispatch(&wk, j, 5000), 1);
    cr_assert_eq(raw_worker_started(&wk, j, 1, "first"), CORRAL__V1__ERROR_CODE__ERR_OK);
    Corral__V1__Envelope *r =
        expect_start_reply(&caller, rid, CORRAL__V1__ERROR_CODE__ERR_OK, j, 2000);
    expect_bytes(r->reply->value, "first", "start reply value");
    corral__v1__envelope__free_unpacked(r, NULL);

    cr_assert_eq(raw_worker_started(&wk, j, 1, "second"), CORRAL__V1__ERROR_CODE__ERR_WRONG_STATE);
    expect_no_reply(&caller, 300);

    /* The refusal changes nothing for the job. */
    struct corral_node *t = get_tree(c, g);
    node_expect(t, j, CORRAL_STATE_RUNNING, CORRAL_OUTCOME_NONE);
    corral_node_free(&t);
    cr_assert_eq(raw_worker_done(&wk, j, 1, "done"), CORRAL_OK);
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect_result(t, j, "done");
    corral_node_free(&t);

    corral_client_free(&c);
    raw_close(&caller);
    raw_close(&wk);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s9_start_readiness, a_job_retried_before_started_keeps_the_caller_waiting)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer wk, caller;
    raw_worker_register(&wk, &b, RAW_KINDS, 1, 1);
    raw_connect(&caller, b.client_ep);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX], j2[CORRAL_ID_MAX];

    open_root(c, g);
    uint64_t rid = start_send(&caller, g, "raw", "", 2, 100);
    cr_assert_eq(expect_dispatch(&wk, j, 5000), 1);
    cr_assert_eq(raw_worker_failed_retryable(&wk, j, 1, "ConnectionError", "try again"), CORRAL_OK);
    cr_assert_eq(expect_dispatch(&wk, j2, 5000), 2);
    cr_assert_str_eq(j2, j);
    expect_no_reply(&caller, 0);

    cr_assert_eq(raw_worker_started(&wk, j, 2, "second try"), CORRAL__V1__ERROR_CODE__ERR_OK);
    Corral__V1__Envelope *r =
        expect_start_reply(&caller, rid, CORRAL__V1__ERROR_CODE__ERR_OK, j, 2000);
    expect_bytes(r->reply->value, "second try", "start reply value");
    corral__v1__envelope__free_unpacked(r, NULL);

    cr_assert_eq(raw_worker_done(&wk, j, 2, "ok"), CORRAL_OK);
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect_result(t, j, "ok");
    cr_assert_eq(tree_find(t, j)->attempt, 2);
    corral_node_free(&t);

    corral_client_free(&c);
    raw_close(&caller);
    raw_close(&wk);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* ------------------------------------------------------------------ D2 */

Test(d2_start_membership, the_job_is_a_child_of_its_group_from_submission)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer wk, caller;
    raw_worker_register(&wk, &b, RAW_KINDS, 1, 1);
    raw_connect(&caller, b.client_ep);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];

    open_root(c, g);
    uint64_t rid = start_send(&caller, g, "raw", "", 0, 0);
    cr_assert_eq(expect_dispatch(&wk, j, 5000), 1);

    /* Before started(): listed under g, and g closed does not end without it. */
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    raw_worker_idle(&wk, 300);
    struct corral_node *t = get_tree(c, g);
    node_expect(t, g, CORRAL_STATE_CLOSED, CORRAL_OUTCOME_NONE);
    cr_assert_eq(t->nchildren, 1, "g lists %zu children", t->nchildren);
    cr_assert_str_eq(t->children[0].id, j);
    cr_assert_str_eq(t->children[0].parent, g);
    node_expect(t, j, CORRAL_STATE_RUNNING, CORRAL_OUTCOME_NONE);
    corral_node_free(&t);
    expect_no_reply(&caller, 0);

    cr_assert_eq(raw_worker_started(&wk, j, 1, "v"), CORRAL__V1__ERROR_CODE__ERR_OK);
    Corral__V1__Envelope *r =
        expect_start_reply(&caller, rid, CORRAL__V1__ERROR_CODE__ERR_OK, j, 2000);
    corral__v1__envelope__free_unpacked(r, NULL);
    raw_worker_idle(&wk, 200);
    t = get_tree(c, g);
    node_expect(t, g, CORRAL_STATE_CLOSED, CORRAL_OUTCOME_NONE);
    corral_node_free(&t);
    cr_assert_eq(raw_worker_done(&wk, j, 1, "r"), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect_result(t, j, "r");
    corral_node_free(&t);

    corral_client_free(&c);
    raw_close(&caller);
    raw_close(&wk);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(d2_start_membership, a_caller_that_stops_waiting_does_not_cancel_the_job)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer wk, caller;
    raw_worker_register(&wk, &b, RAW_KINDS, 1, 1);
    raw_connect(&caller, b.client_ep);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];

    open_root(c, g);
    start_send(&caller, g, "raw", "", 0, 0);
    cr_assert_eq(expect_dispatch(&wk, j, 5000), 1);
    /* The caller goes away before started(). */
    raw_close(&caller);

    expect_no_cancel(&wk, 500);
    struct corral_node *t = get_tree(c, g);
    node_expect(t, j, CORRAL_STATE_RUNNING, CORRAL_OUTCOME_NONE);
    node_expect_cancel(t, j, false, CORRAL_SOURCE_NONE, NULL, false);
    corral_node_free(&t);

    /* The job goes on as usual: its started() is accepted (nobody is left to tell), and
     * it ends with its result. */
    cr_assert_eq(raw_worker_started(&wk, j, 1, "anyone?"), CORRAL__V1__ERROR_CODE__ERR_OK);
    expect_no_cancel(&wk, 200);
    cr_assert_eq(raw_worker_done(&wk, j, 1, "done alone"), CORRAL_OK);
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect_result(t, j, "done alone");
    corral_node_free(&t);

    corral_client_free(&c);
    raw_close(&wk);
    broker_stop(&b);
    broker_cleanup(&b);
}
