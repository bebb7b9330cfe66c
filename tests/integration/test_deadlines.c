/* test_deadlines.c - DESIGN.md S6 (deadlines, D3) and S7 (shields) against the real corrald.
 *
 * The client side speaks the raw protocol wherever a Scope is needed (OpenGroup.scope,
 * Submit.scope) and to read the new Node fields (deadline_unix_ms, on_deadline, shield,
 * effective_deadline_unix_ms); libcorral serves for the rest (close, cancel, trees, waits).
 * The worker side is the harness's test worker, or a raw worker where the test must see
 * Dispatch.effective_deadline_unix_ms or the exact moment a Cancel arrives.
 *
 * Timing: bounds are functional and generous (a deadline fires "within 1 s"); the only
 * strict bound is the lower one of S6 ("no deadline fires early"), measured on the wall
 * clock the broker uses, from before the request that set the deadline was sent.
 *
 * Kinds: the test worker's echo, sleep, stubborn, stubbornfail; "raw" (a raw worker);
 * "unserved", which no worker serves, so such a job stays QUEUED. */
#include <criterion/criterion.h>

#include <string.h>
#include <time.h>

#include "clock.h"
#include "harness.h"

#define WAIT_MS      10000
#define DEADLINE_MSG "deadline exceeded"
/* How late a deadline may be seen (a functional bound, not the 50 ms latency target). */
#define LATE_MS 1000

TestSuite(s6_deadlines, .fini = harness_teardown);
TestSuite(s7_shield, .fini = harness_teardown);

static const char *const RAW_KINDS[] = {"raw"};

/* ------------------------------------------------------------------ helpers */

static void
pause_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

/* A Scope: relative timeout_ms or absolute deadline_unix_ms (0: none), mode, shield. */
static Corral__V1__Scope
scope_of(uint64_t timeout_ms, uint64_t deadline_unix_ms, bool move_on, bool shield)
{
    Corral__V1__Scope s;
    corral__v1__scope__init(&s);
    s.timeout_ms = timeout_ms;
    s.deadline_unix_ms = deadline_unix_ms;
    s.on_deadline = move_on ? CORRAL__V1__ON_DEADLINE__ON_DEADLINE_MOVE_ON
                            : CORRAL__V1__ON_DEADLINE__ON_DEADLINE_FAIL;
    s.shield = shield;
    return s;
}

/* Sends OpenGroup (parent_group / parent_job may be NULL, scope may be NULL) on a raw
 * client and returns the Reply envelope (owned). */
static Corral__V1__Envelope *
raw_open_reply(struct raw_peer *p, const char *parent_group, const char *parent_job,
               const Corral__V1__Scope *scope)
{
    Corral__V1__Envelope env;
    Corral__V1__OpenGroup og;
    corral__v1__envelope__init(&env);
    corral__v1__open_group__init(&og);
    if (parent_group != NULL)
        og.parent_group = (char *)parent_group;
    if (parent_job != NULL)
        og.parent_job = (char *)parent_job;
    og.scope = (Corral__V1__Scope *)scope;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_OPEN_GROUP;
    env.open_group = &og;
    Corral__V1__Envelope *r = raw_request(p, &env, 5000);
    cr_assert(r->body_case == CORRAL__V1__ENVELOPE__BODY_REPLY && r->reply != NULL);
    return r;
}

/* Opens a group over the raw client, asserting success; returns Reply.cancelled. */
static bool
raw_open(struct raw_peer *p, const char *parent_group, const char *parent_job,
         const Corral__V1__Scope *scope, char id[CORRAL_ID_MAX])
{
    Corral__V1__Envelope *r = raw_open_reply(p, parent_group, parent_job, scope);
    cr_assert_eq(r->reply->code, CORRAL__V1__ERROR_CODE__ERR_OK, "OpenGroup refused: %d %s",
                 (int)r->reply->code, r->reply->message);
    cr_assert(r->reply->id != NULL && *r->reply->id != '\0' &&
              strlen(r->reply->id) < CORRAL_ID_MAX);
    snprintf(id, CORRAL_ID_MAX, "%s", r->reply->id);
    bool cancelled = r->reply->cancelled;
    corral__v1__envelope__free_unpacked(r, NULL);
    return cancelled;
}

/* Sends Submit on a raw client and returns the Reply envelope (owned). */
static Corral__V1__Envelope *
raw_submit_reply(struct raw_peer *p, const char *group, const char *kind, const char *payload,
                 const Corral__V1__Scope *scope)
{
    Corral__V1__Envelope env;
    Corral__V1__Submit sb;
    corral__v1__envelope__init(&env);
    corral__v1__submit__init(&sb);
    sb.group = (char *)group;
    sb.kind = (char *)kind;
    sb.payload.data = (uint8_t *)payload;
    sb.payload.len = payload != NULL ? strlen(payload) : 0;
    sb.scope = (Corral__V1__Scope *)scope;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_SUBMIT;
    env.submit = &sb;
    Corral__V1__Envelope *r = raw_request(p, &env, 5000);
    cr_assert(r->body_case == CORRAL__V1__ENVELOPE__BODY_REPLY && r->reply != NULL);
    return r;
}

/* Submits a job over the raw client, asserting success; returns Reply.cancelled. */
static bool
raw_submit(struct raw_peer *p, const char *group, const char *kind, const char *payload,
           const Corral__V1__Scope *scope, char id[CORRAL_ID_MAX])
{
    Corral__V1__Envelope *r = raw_submit_reply(p, group, kind, payload, scope);
    cr_assert_eq(r->reply->code, CORRAL__V1__ERROR_CODE__ERR_OK, "Submit %s refused: %d %s", kind,
                 (int)r->reply->code, r->reply->message);
    cr_assert(r->reply->id != NULL && *r->reply->id != '\0' &&
              strlen(r->reply->id) < CORRAL_ID_MAX);
    snprintf(id, CORRAL_ID_MAX, "%s", r->reply->id);
    bool cancelled = r->reply->cancelled;
    corral__v1__envelope__free_unpacked(r, NULL);
    return cancelled;
}

/* GetTree over the raw client (asserting success); the Reply envelope is owned, its
 * reply->tree the tree. */
static Corral__V1__Envelope *
raw_tree(struct raw_peer *p, const char *group)
{
    Corral__V1__Envelope env;
    Corral__V1__GetTree gt;
    corral__v1__envelope__init(&env);
    corral__v1__get_tree__init(&gt);
    gt.group = (char *)group;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_GET_TREE;
    env.get_tree = &gt;
    Corral__V1__Envelope *r = raw_request(p, &env, 5000);
    cr_assert(r->body_case == CORRAL__V1__ENVELOPE__BODY_REPLY && r->reply != NULL);
    cr_assert_eq(r->reply->code, CORRAL__V1__ERROR_CODE__ERR_OK, "GetTree %s: %d %s", group,
                 (int)r->reply->code, r->reply->message);
    cr_assert_not_null(r->reply->tree);
    return r;
}

/* Finds a node by id in a protobuf tree (children and job-opened groups). */
static const Corral__V1__Node *
pb_find(const Corral__V1__Node *n, const char *id)
{
    if (n == NULL)
        return NULL;
    if (n->id != NULL && strcmp(n->id, id) == 0)
        return n;
    for (size_t i = 0; i < n->n_children; i++) {
        const Corral__V1__Node *f = pb_find(n->children[i], id);
        if (f != NULL)
            return f;
    }
    for (size_t i = 0; i < n->n_groups; i++) {
        const Corral__V1__Node *f = pb_find(n->groups[i], id);
        if (f != NULL)
            return f;
    }
    return NULL;
}

/* The scope fields of node id in the tree of group, read now over the raw client. */
struct scope_fields {
    uint64_t deadline;
    int on_deadline;
    bool shield;
    uint64_t effective;
};

static struct scope_fields
scope_fields_of(struct raw_peer *p, const char *group, const char *id)
{
    Corral__V1__Envelope *r = raw_tree(p, group);
    const Corral__V1__Node *n = pb_find(r->reply->tree, id);
    cr_assert_not_null(n, "node %s is not in the tree of %s", id, group);
    struct scope_fields f = {n->deadline_unix_ms, (int)n->on_deadline, n->shield,
                             n->effective_deadline_unix_ms};
    corral__v1__envelope__free_unpacked(r, NULL);
    return f;
}

/* Asserts err is the bare TimeoutError of group (not an ExceptionGroup). */
static void
error_expect_group_timeout(const struct corral_error *err, const char *group)
{
    cr_assert_not_null(err, "group %s: expected a bare TimeoutError, got no error", group);
    cr_assert(err->type != NULL && strcmp(err->type, "TimeoutError") == 0,
              "group %s: error type %s, expected a bare TimeoutError", group,
              err->type != NULL ? err->type : "-");
    cr_assert(err->message != NULL && strcmp(err->message, DEADLINE_MSG) == 0,
              "group %s: error message \"%s\", expected \"" DEADLINE_MSG "\"", group,
              err->message != NULL ? err->message : "-");
    cr_assert(err->group != NULL && strcmp(err->group, group) == 0,
              "group %s: the TimeoutError names group %s", group,
              err->group != NULL ? err->group : "-");
    cr_assert(err->job == NULL || *err->job == '\0', "group %s: the TimeoutError names job %s",
              group, err->job);
    cr_assert_eq(err->nexceptions, 0, "group %s: a bare TimeoutError has no sub-exceptions", group);
}

/* Asserts node id was cancelled with that source and reason, leaving cancelled_caught
 * alone: the contract does not say it for a job whose fail deadline made it FAILED. */
static void
expect_cancel_origin(const struct corral_node *root, const char *id,
                     enum corral_cancel_source source, const char *reason)
{
    const struct corral_node *n = tree_find(root, id);
    cr_assert_not_null(n, "node %s is not in the tree", id);
    node_expect_cancel(root, id, true, source, reason, n->cancelled_caught);
}

/* Asserts the worker saw no cancel of job. */
static void
expect_no_worker_cancel(struct test_worker *w, const char *job)
{
    struct cancel_seen cs;
    bool seen = test_worker_cancel_of(w, job, &cs);
    cr_assert(!seen, "the worker saw a cancel of %s (source %s, reason '%s')", job,
              seen ? corral_source_name(cs.source) : "-", seen ? cs.reason : "");
}

/* A Dispatch as a raw worker saw it. */
struct dispatched {
    char job[CORRAL_ID_MAX];
    uint32_t attempt;
    uint64_t effective;
};

/* Waits (heartbeating) for n Dispatch messages and records them. */
static void
collect_dispatches(struct raw_peer *p, struct dispatched *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        Corral__V1__Envelope *d =
            raw_worker_expect(p, CORRAL__V1__ENVELOPE__BODY_DISPATCH, 5000, true);
        cr_assert_not_null(d, "only %zu of %zu Dispatch messages arrived within 5 s", i, n);
        snprintf(out[i].job, sizeof out[i].job, "%s", d->dispatch->job);
        out[i].attempt = d->dispatch->attempt;
        out[i].effective = d->dispatch->effective_deadline_unix_ms;
        corral__v1__envelope__free_unpacked(d, NULL);
    }
}

static const struct dispatched *
dispatched_of(const struct dispatched *d, size_t n, const char *job)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(d[i].job, job) == 0)
            return &d[i];
    cr_assert_fail("job %s was not dispatched", job);
    return NULL;
}

/* Waits (heartbeating) for the next Cancel; returns it (owned) with the wall-clock time
 * at which it was received in *at_wall. */
static Corral__V1__Envelope *
expect_raw_cancel(struct raw_peer *p, const char *job, int timeout_ms, uint64_t *at_wall)
{
    Corral__V1__Envelope *cm =
        raw_worker_expect(p, CORRAL__V1__ENVELOPE__BODY_CANCEL, timeout_ms, true);
    if (at_wall != NULL)
        *at_wall = clock_wall_ms();
    cr_assert_not_null(cm, "no Cancel of %s within %d ms", job, timeout_ms);
    cr_assert_str_eq(cm->cancel->job, job, "a Cancel of %s arrived, expected one of %s",
                     cm->cancel->job, job);
    return cm;
}

/* ------------------------------------------------------------------ S6: groups */

Test(s6_deadlines, group_fail_deadline_ends_failed_with_a_bare_timeout_error)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 2);
    struct corral_client *c = client_connect(&b);
    struct raw_peer rc;
    raw_connect(&rc, b.client_ep);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];

    Corral__V1__Scope s = scope_of(300, 0, false, false);
    cr_assert(!raw_open(&rc, NULL, NULL, &s, g));
    submit(c, g, "sleep", "60000", j);
    cr_assert(test_worker_wait_started(w, 1, 5000));

    /* Nobody closes or cancels: the deadline alone ends the group. */
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_group_timeout(t->error, g);
    /* The deadline was the origin and ended a child as cancelled (D8). */
    node_expect_cancel(t, g, true, CORRAL_SOURCE_DEADLINE, DEADLINE_MSG, true);
    node_expect(t, j, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect_cancel(t, j, true, CORRAL_SOURCE_PARENT, DEADLINE_MSG, false);
    corral_node_free(&t);
    /* The running job's worker was told, as a child of the scope whose deadline passed. */
    expect_worker_cancel(w, j, CORRAL_SOURCE_PARENT, DEADLINE_MSG);

    expect_no_worker_problem(w);
    raw_close(&rc);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s6_deadlines, group_fail_deadline_with_a_real_child_failure_ends_with_its_exception_group)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 2);
    struct corral_client *c = client_connect(&b);
    struct raw_peer rc;
    raw_connect(&rc, b.client_ep);
    char g[CORRAL_ID_MAX], f[CORRAL_ID_MAX], a[CORRAL_ID_MAX];

    Corral__V1__Scope s = scope_of(300, 0, false, false);
    cr_assert(!raw_open(&rc, NULL, NULL, &s, g));
    /* f ignores the deadline's cancel and fails for real ~1 s later; a stops at once. */
    submit(c, g, "stubbornfail", "1000", f);
    submit(c, g, "sleep", "60000", a);
    cr_assert(test_worker_wait_started(w, 2, 5000));

    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    /* Not a TimeoutError: the exception group of the real failure, as in AnyIO. */
    error_expect_group(t->error, g, 1);
    error_expect_job(&t->error->exceptions[0], "ValueError", "fail-1000", f);
    node_expect_cancel(t, g, true, CORRAL_SOURCE_DEADLINE, DEADLINE_MSG, true);
    node_expect(t, f, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_job(tree_find(t, f)->error, "ValueError", "fail-1000", f);
    node_expect_cancel(t, f, true, CORRAL_SOURCE_PARENT, DEADLINE_MSG, false);
    node_expect(t, a, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect_cancel(t, a, true, CORRAL_SOURCE_PARENT, DEADLINE_MSG, false);
    corral_node_free(&t);
    expect_worker_cancel(w, f, CORRAL_SOURCE_PARENT, DEADLINE_MSG);
    expect_worker_cancel(w, a, CORRAL_SOURCE_PARENT, DEADLINE_MSG);

    expect_no_worker_problem(w);
    raw_close(&rc);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s6_deadlines, group_move_on_deadline_succeeds_and_keeps_finished_results)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 2);
    struct corral_client *c = client_connect(&b);
    struct raw_peer rc;
    raw_connect(&rc, b.client_ep);
    char g[CORRAL_ID_MAX], e[CORRAL_ID_MAX], a[CORRAL_ID_MAX], q[CORRAL_ID_MAX];

    Corral__V1__Scope s = scope_of(600, 0, true, false);
    cr_assert(!raw_open(&rc, NULL, NULL, &s, g));
    submit(c, g, "echo", "early", e);
    cr_assert(node_eventually(c, g, e, CORRAL_STATE_ENDED, 2000));
    submit(c, g, "sleep", "60000", a);
    submit(c, g, "unserved", "", q);
    cr_assert(test_worker_wait_started(w, 2, 5000));

    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    cr_assert_null(t->error, "a move-on scope that timed out has no error");
    node_expect_cancel(t, g, true, CORRAL_SOURCE_DEADLINE, DEADLINE_MSG, true);
    node_expect_result(t, e, "early");
    node_expect_cancel(t, e, false, CORRAL_SOURCE_NONE, NULL, false);
    node_expect(t, a, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect_cancel(t, a, true, CORRAL_SOURCE_PARENT, DEADLINE_MSG, false);
    node_expect(t, q, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect_cancel(t, q, true, CORRAL_SOURCE_PARENT, DEADLINE_MSG, false);
    corral_node_free(&t);
    expect_worker_cancel(w, a, CORRAL_SOURCE_PARENT, DEADLINE_MSG);
    cr_assert_eq(test_worker_started(w), 2, "the queued job was dispatched");

    struct scope_fields sf = scope_fields_of(&rc, g, g);
    cr_assert_eq(sf.on_deadline, CORRAL__V1__ON_DEADLINE__ON_DEADLINE_MOVE_ON);
    cr_assert(!sf.shield);

    expect_no_worker_problem(w);
    raw_close(&rc);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s6_deadlines, explicit_cancel_of_a_fail_scope_before_its_deadline_ends_cancelled)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 1);
    struct corral_client *c = client_connect(&b);
    struct raw_peer rc;
    raw_connect(&rc, b.client_ep);
    char g[CORRAL_ID_MAX], a[CORRAL_ID_MAX];

    Corral__V1__Scope s = scope_of(800, 0, false, false);
    cr_assert(!raw_open(&rc, NULL, NULL, &s, g));
    submit(c, g, "sleep", "60000", a);
    cr_assert(test_worker_wait_started(w, 1, 5000));
    cr_assert_eq(corral_group_cancel(c, g, "user stop"), CORRAL_OK);
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    cr_assert_null(t->error, "an explicit cancel of a fail scope is not a timeout");
    node_expect_cancel(t, g, true, CORRAL_SOURCE_EXPLICIT, "user stop", true);
    corral_node_free(&t);

    /* The deadline passing later changes nothing. */
    pause_ms(1000);
    t = get_tree(c, g);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    cr_assert_null(t->error);
    node_expect_cancel(t, g, true, CORRAL_SOURCE_EXPLICIT, "user stop", true);
    node_expect_cancel(t, a, true, CORRAL_SOURCE_PARENT, "user stop", false);
    corral_node_free(&t);

    expect_no_worker_problem(w);
    raw_close(&rc);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* ------------------------------------------------------------------ S6: jobs */

Test(s6_deadlines, job_fail_deadline_fails_it_with_timeout_error_and_its_group_fails_fast)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 2);
    struct corral_client *c = client_connect(&b);
    struct raw_peer rc;
    raw_connect(&rc, b.client_ep);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX], k[CORRAL_ID_MAX];

    open_root(c, g);
    Corral__V1__Scope s = scope_of(300, 0, false, false);
    cr_assert(!raw_submit(&rc, g, "sleep", "60000", &s, j));
    submit(c, g, "sleep", "60000", k);
    cr_assert(test_worker_wait_started(w, 2, 5000));

    /* The group is never closed: failing, it ends once its children have. */
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, j, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_job(tree_find(t, j)->error, "TimeoutError", DEADLINE_MSG, j);
    expect_cancel_origin(t, j, CORRAL_SOURCE_DEADLINE, DEADLINE_MSG);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_group(t->error, g, 1);
    error_expect_job(&t->error->exceptions[0], "TimeoutError", DEADLINE_MSG, j);
    node_expect_cancel(t, g, true, CORRAL_SOURCE_SIBLING_FAILED, j, true);
    node_expect(t, k, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect_cancel(t, k, true, CORRAL_SOURCE_SIBLING_FAILED, j, false);
    corral_node_free(&t);
    expect_worker_cancel(w, j, CORRAL_SOURCE_DEADLINE, DEADLINE_MSG);
    expect_worker_cancel(w, k, CORRAL_SOURCE_SIBLING_FAILED, j);

    struct scope_fields sf = scope_fields_of(&rc, g, j);
    cr_assert_eq(sf.on_deadline, CORRAL__V1__ON_DEADLINE__ON_DEADLINE_FAIL);
    cr_assert_neq(sf.deadline, 0);
    cr_assert_eq(sf.effective, sf.deadline);

    expect_no_worker_problem(w);
    raw_close(&rc);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s6_deadlines, job_move_on_deadline_succeeds_with_cancelled_caught)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 2);
    struct corral_client *c = client_connect(&b);
    struct raw_peer rc;
    raw_connect(&rc, b.client_ep);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX], k[CORRAL_ID_MAX];

    open_root(c, g);
    Corral__V1__Scope s = scope_of(300, 0, true, false);
    cr_assert(!raw_submit(&rc, g, "sleep", "60000", &s, j));
    submit(c, g, "echo", "sibling", k);
    cr_assert(test_worker_wait_started(w, 2, 5000));
    cr_assert(node_eventually(c, g, j, CORRAL_STATE_ENDED, 300 + LATE_MS + 1000));
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);

    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect_result(t, j, "");
    cr_assert_null(tree_find(t, j)->error);
    node_expect_cancel(t, j, true, CORRAL_SOURCE_DEADLINE, DEADLINE_MSG, true);
    /* Not a failure: the group is untouched. */
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    cr_assert_null(t->error);
    node_expect_cancel(t, g, false, CORRAL_SOURCE_NONE, NULL, false);
    node_expect_result(t, k, "sibling");
    corral_node_free(&t);
    expect_worker_cancel(w, j, CORRAL_SOURCE_DEADLINE, DEADLINE_MSG);

    expect_no_worker_problem(w);
    raw_close(&rc);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s6_deadlines, job_deadline_while_queued_ends_it_at_once_never_dispatched)
{
    struct broker b;
    broker_start(&b, NULL);
    struct corral_client *c = client_connect(&b);
    struct raw_peer rc;
    raw_connect(&rc, b.client_ep);
    char g[CORRAL_ID_MAX], jf[CORRAL_ID_MAX], jm[CORRAL_ID_MAX];

    /* The move-on job's deadline comes first: the fail one's then fails the group fast,
     * which would otherwise cancel the move-on job as a sibling. */
    open_root(c, g);
    uint64_t w0 = clock_wall_ms();
    Corral__V1__Scope sm = scope_of(200, 0, true, false);
    cr_assert(!raw_submit(&rc, g, "unserved", "", &sm, jm));
    Corral__V1__Scope sf = scope_of(500, 0, false, false);
    cr_assert(!raw_submit(&rc, g, "unserved", "", &sf, jf));
    cr_assert(node_eventually(c, g, jm, CORRAL_STATE_ENDED, 200 + LATE_MS));
    struct corral_node *t = get_tree(c, g);
    if (clock_wall_ms() < w0 + 500) { /* read before jf's deadline */
        node_expect(t, jf, CORRAL_STATE_QUEUED, CORRAL_OUTCOME_NONE);
        node_expect(t, g, CORRAL_STATE_OPEN, CORRAL_OUTCOME_NONE);
    }
    corral_node_free(&t);

    t = wait_group(c, g, 500 + LATE_MS + 1000);
    node_expect_result(t, jm, "");
    node_expect_cancel(t, jm, true, CORRAL_SOURCE_DEADLINE, DEADLINE_MSG, true);
    cr_assert_eq(tree_find(t, jm)->attempt, 0, "the move-on job was dispatched");
    node_expect(t, jf, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_job(tree_find(t, jf)->error, "TimeoutError", DEADLINE_MSG, jf);
    expect_cancel_origin(t, jf, CORRAL_SOURCE_DEADLINE, DEADLINE_MSG);
    cr_assert_eq(tree_find(t, jf)->attempt, 0, "the fail job was dispatched");
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_group(t->error, g, 1);
    error_expect_job(&t->error->exceptions[0], "TimeoutError", DEADLINE_MSG, jf);
    corral_node_free(&t);

    raw_close(&rc);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s6_deadlines, job_reporting_after_its_deadline_keeps_its_own_outcome)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 2);
    struct corral_client *c = client_connect(&b);
    struct raw_peer rc;
    raw_connect(&rc, b.client_ep);
    char g[CORRAL_ID_MAX], d[CORRAL_ID_MAX], h[CORRAL_ID_MAX], f[CORRAL_ID_MAX];

    /* Done after the deadline's cancel: SUCCEEDED with its result, no TimeoutError. */
    open_root(c, g);
    Corral__V1__Scope s = scope_of(200, 0, false, false);
    cr_assert(!raw_submit(&rc, g, "stubborn", "800", &s, d));
    cr_assert(test_worker_wait_started(w, 1, 5000));
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect_result(t, d, "finished anyway");
    cr_assert_null(tree_find(t, d)->error);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    corral_node_free(&t);
    expect_worker_cancel(w, d, CORRAL_SOURCE_DEADLINE, DEADLINE_MSG);

    /* Failed after the deadline's cancel: FAILED with its own error. */
    open_root(c, h);
    cr_assert(!raw_submit(&rc, h, "stubbornfail", "800", &s, f));
    cr_assert(test_worker_wait_started(w, 2, 5000));
    t = wait_group(c, h, WAIT_MS);
    node_expect(t, f, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_job(tree_find(t, f)->error, "ValueError", "fail-800", f);
    node_expect(t, h, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_group(t->error, h, 1);
    error_expect_job(&t->error->exceptions[0], "ValueError", "fail-800", f);
    corral_node_free(&t);
    expect_worker_cancel(w, f, CORRAL_SOURCE_DEADLINE, DEADLINE_MSG);

    expect_no_worker_problem(w);
    raw_close(&rc);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* ------------------------------------------------------------------ S6: timing */

/* Sends the request that sets a 300 ms deadline (a group's or a job's), then checks, on
 * the wall clock the broker keeps deadlines in, that the worker's Cancel comes no sooner
 * than 300 ms after the moment before the request was sent, nor later than LATE_MS after
 * the deadline, and not before the deadline shown in the tree. */
Test(s6_deadlines, no_deadline_fires_early)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer wk, rc;
    raw_worker_register(&wk, &b, RAW_KINDS, 1, 2);
    raw_connect(&rc, b.client_ep);
    struct corral_client *c = client_connect(&b);

    for (int round = 0; round < 4; round++) {
        bool on_group = round % 2 == 0;
        bool move_on = round >= 2;
        char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];
        Corral__V1__Scope s = scope_of(300, 0, move_on, false);
        uint64_t w0;
        if (on_group) {
            w0 = clock_wall_ms();
            cr_assert(!raw_open(&rc, NULL, NULL, &s, g));
            cr_assert(!raw_submit(&rc, g, "raw", "", NULL, j));
        } else {
            open_root(c, g);
            w0 = clock_wall_ms();
            cr_assert(!raw_submit(&rc, g, "raw", "", &s, j));
        }
        struct dispatched d;
        collect_dispatches(&wk, &d, 1);
        cr_assert_str_eq(d.job, j);
        struct scope_fields sf = scope_fields_of(&rc, g, on_group ? g : j);

        uint64_t w1 = 0;
        Corral__V1__Envelope *cm = expect_raw_cancel(&wk, j, 300 + LATE_MS + 1000, &w1);
        cr_assert_eq(cm->cancel->source, on_group
                                             ? CORRAL__V1__CANCEL_SOURCE__CANCEL_SOURCE_PARENT
                                             : CORRAL__V1__CANCEL_SOURCE__CANCEL_SOURCE_DEADLINE);
        cr_assert_str_eq(cm->cancel->reason, DEADLINE_MSG);
        corral__v1__envelope__free_unpacked(cm, NULL);
        cr_assert_geq(w1 - w0, 300,
                      "round %d (%s deadline, %s): the Cancel came %llu ms after the request "
                      "was sent, before its 300 ms deadline",
                      round, on_group ? "group" : "job", move_on ? "move-on" : "fail",
                      (unsigned long long)(w1 - w0));
        cr_assert_lt(w1 - w0, 300 + LATE_MS,
                     "round %d: the Cancel came %llu ms after the request, over 1 s late", round,
                     (unsigned long long)(w1 - w0));
        cr_assert_geq(sf.deadline, w0 + 300, "round %d: deadline %llu set before accept + 300",
                      round, (unsigned long long)sf.deadline);
        cr_assert_geq(w1, sf.deadline, "round %d: the Cancel came %llu ms before the deadline",
                      round, (unsigned long long)(sf.deadline - w1));
        cr_assert_eq(raw_worker_cancel_ack(&wk, j, d.attempt), CORRAL_OK);
        if (!on_group && move_on) /* a failing group ends without being closed */
            cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
        struct corral_node *t = wait_group(c, g, WAIT_MS);
        if (move_on) {
            node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
        } else {
            node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
            if (on_group)
                error_expect_group_timeout(t->error, g);
            else
                error_expect_group(t->error, g, 1);
        }
        corral_node_free(&t);
    }

    corral_client_free(&c);
    raw_close(&rc);
    raw_close(&wk);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s6_deadlines, absolute_deadline_unix_ms_fires_at_its_time)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer wk, rc;
    raw_worker_register(&wk, &b, RAW_KINDS, 1, 2);
    raw_connect(&rc, b.client_ep);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX], h[CORRAL_ID_MAX], k[CORRAL_ID_MAX];

    /* A group with an absolute move-on deadline. */
    uint64_t dg = clock_wall_ms() + 500;
    Corral__V1__Scope s = scope_of(0, dg, true, false);
    cr_assert(!raw_open(&rc, NULL, NULL, &s, g));
    cr_assert(!raw_submit(&rc, g, "raw", "", NULL, j));
    struct dispatched d;
    collect_dispatches(&wk, &d, 1);
    cr_assert_eq(d.effective, dg, "Dispatch.effective_deadline_unix_ms %llu, expected %llu",
                 (unsigned long long)d.effective, (unsigned long long)dg);
    struct scope_fields sf = scope_fields_of(&rc, g, g);
    cr_assert_eq(sf.deadline, dg, "tree deadline_unix_ms %llu, expected %llu",
                 (unsigned long long)sf.deadline, (unsigned long long)dg);
    cr_assert_eq(sf.on_deadline, CORRAL__V1__ON_DEADLINE__ON_DEADLINE_MOVE_ON);
    cr_assert_eq(sf.effective, dg);
    uint64_t at = 0;
    Corral__V1__Envelope *cm = expect_raw_cancel(&wk, j, 500 + LATE_MS + 1000, &at);
    cr_assert_eq(cm->cancel->source, CORRAL__V1__CANCEL_SOURCE__CANCEL_SOURCE_PARENT);
    cr_assert_str_eq(cm->cancel->reason, DEADLINE_MSG);
    corral__v1__envelope__free_unpacked(cm, NULL);
    cr_assert_geq(at, dg, "the Cancel came %llu ms before the absolute deadline",
                  (unsigned long long)(dg - at));
    cr_assert_lt(at, dg + LATE_MS, "the Cancel came %llu ms after the absolute deadline",
                 (unsigned long long)(at - dg));
    cr_assert_eq(raw_worker_cancel_ack(&wk, j, d.attempt), CORRAL_OK);
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect_cancel(t, g, true, CORRAL_SOURCE_DEADLINE, DEADLINE_MSG, true);
    node_expect(t, j, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    corral_node_free(&t);

    /* A job with an absolute fail deadline. */
    open_root(c, h);
    uint64_t dj = clock_wall_ms() + 400;
    s = scope_of(0, dj, false, false);
    cr_assert(!raw_submit(&rc, h, "raw", "", &s, k));
    collect_dispatches(&wk, &d, 1);
    cr_assert_str_eq(d.job, k);
    cr_assert_eq(d.effective, dj);
    cm = expect_raw_cancel(&wk, k, 400 + LATE_MS + 1000, &at);
    cr_assert_eq(cm->cancel->source, CORRAL__V1__CANCEL_SOURCE__CANCEL_SOURCE_DEADLINE);
    corral__v1__envelope__free_unpacked(cm, NULL);
    cr_assert_geq(at, dj, "the Cancel came %llu ms before the absolute deadline",
                  (unsigned long long)(dj - at));
    cr_assert_lt(at, dj + LATE_MS);
    cr_assert_eq(raw_worker_cancel_ack(&wk, k, d.attempt), CORRAL_OK);
    t = wait_group(c, h, WAIT_MS);
    node_expect(t, k, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_job(tree_find(t, k)->error, "TimeoutError", DEADLINE_MSG, k);
    node_expect(t, h, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    corral_node_free(&t);

    corral_client_free(&c);
    raw_close(&rc);
    raw_close(&wk);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s6_deadlines, timeout_and_deadline_together_are_a_bad_request)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer rc;
    raw_connect(&rc, b.client_ep);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];

    Corral__V1__Scope both = scope_of(1000, clock_wall_ms() + 60000, false, false);
    Corral__V1__Envelope *r = raw_open_reply(&rc, NULL, NULL, &both);
    cr_assert_eq(r->reply->code, CORRAL__V1__ERROR_CODE__ERR_BAD_REQUEST,
                 "OpenGroup with timeout_ms and deadline_unix_ms: code %d (%s), expected "
                 "ERR_BAD_REQUEST",
                 (int)r->reply->code, r->reply->message);
    cr_assert(r->reply->id == NULL || *r->reply->id == '\0', "a refused open returned id %s",
              r->reply->id);
    corral__v1__envelope__free_unpacked(r, NULL);

    open_root(c, g);
    r = raw_submit_reply(&rc, g, "echo", "x", &both);
    cr_assert_eq(r->reply->code, CORRAL__V1__ERROR_CODE__ERR_BAD_REQUEST,
                 "Submit with timeout_ms and deadline_unix_ms: code %d (%s), expected "
                 "ERR_BAD_REQUEST",
                 (int)r->reply->code, r->reply->message);
    corral__v1__envelope__free_unpacked(r, NULL);
    /* Nothing was recorded, and the broker carries on. */
    struct corral_node *t = get_tree(c, g);
    cr_assert_eq(t->nchildren, 0, "the refused submit left %zu children", t->nchildren);
    corral_node_free(&t);
    Corral__V1__Scope one = scope_of(60000, 0, false, false);
    cr_assert(!raw_submit(&rc, g, "unserved", "", &one, j));
    cr_assert_eq(corral_group_cancel(c, g, "done"), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    corral_node_free(&t);

    corral_client_free(&c);
    raw_close(&rc);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* ------------------------------------------------------------------ S6: restarts */

Test(s6_deadlines, deadline_passed_while_the_broker_was_stopped_fires_on_restart)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer rc;
    raw_connect(&rc, b.client_ep);
    char g1[CORRAL_ID_MAX], g2[CORRAL_ID_MAX], q1[CORRAL_ID_MAX], q2[CORRAL_ID_MAX];

    /* g1's deadline passes while corrald is stopped; g2's after it has started again. */
    uint64_t w0 = clock_wall_ms();
    Corral__V1__Scope s1 = scope_of(800, 0, false, false);
    Corral__V1__Scope s2 = scope_of(5000, 0, false, false);
    cr_assert(!raw_open(&rc, NULL, NULL, &s1, g1));
    cr_assert(!raw_open(&rc, NULL, NULL, &s2, g2));
    cr_assert(!raw_submit(&rc, g1, "unserved", "", NULL, q1));
    cr_assert(!raw_submit(&rc, g2, "unserved", "", NULL, q2));
    uint64_t d2 = scope_fields_of(&rc, g2, g2).deadline;
    cr_assert_geq(d2, w0 + 5000);
    raw_close(&rc);
    broker_stop(&b);

    pause_ms(1500);
    cr_assert_geq(clock_wall_ms(), w0 + 800 + 500);
    broker_restart(&b);
    uint64_t up = clock_mono_ms();
    struct corral_client *c = client_connect(&b);
    raw_connect(&rc, b.client_ep);

    struct corral_node *t = wait_group(c, g1, WAIT_MS);
    uint64_t took = clock_mono_ms() - up;
    cr_assert_lt(took, LATE_MS, "g1 ended %llu ms after corrald answered, expected at once",
                 (unsigned long long)took);
    node_expect(t, g1, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_group_timeout(t->error, g1);
    node_expect_cancel(t, g1, true, CORRAL_SOURCE_DEADLINE, DEADLINE_MSG, true);
    node_expect(t, q1, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect_cancel(t, q1, true, CORRAL_SOURCE_PARENT, DEADLINE_MSG, false);
    corral_node_free(&t);

    /* g2's deadline survived the restart unchanged and has not fired early. */
    t = get_tree(c, g2);
    uint64_t read_at = clock_wall_ms();
    if (read_at < d2) {
        node_expect(t, g2, CORRAL_STATE_OPEN, CORRAL_OUTCOME_NONE);
        node_expect_cancel(t, g2, false, CORRAL_SOURCE_NONE, NULL, false);
        node_expect(t, q2, CORRAL_STATE_QUEUED, CORRAL_OUTCOME_NONE);
    } else {
        cr_log_warn("the restart took so long that g2's deadline had passed: not checked");
    }
    corral_node_free(&t);
    struct scope_fields sf = scope_fields_of(&rc, g2, g2);
    cr_assert_eq(sf.deadline, d2, "g2's deadline was %llu before the restart, %llu after",
                 (unsigned long long)d2, (unsigned long long)sf.deadline);
    cr_assert_eq(sf.on_deadline, CORRAL__V1__ON_DEADLINE__ON_DEADLINE_FAIL);

    t = wait_group(c, g2, WAIT_MS);
    uint64_t ended = clock_wall_ms();
    cr_assert_geq(ended, d2);
    cr_assert_lt(ended, d2 + LATE_MS, "g2 ended %llu ms after its deadline",
                 (unsigned long long)(ended - d2));
    node_expect(t, g2, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_group_timeout(t->error, g2);
    node_expect(t, q2, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    corral_node_free(&t);

    raw_close(&rc);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s6_deadlines, job_deadline_passed_during_a_kill9_fires_on_restart)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer rc;
    raw_connect(&rc, b.client_ep);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], jm[CORRAL_ID_MAX], jf[CORRAL_ID_MAX];

    open_root(c, g);
    /* The move-on deadline first, so that the fail one cannot cancel it as a sibling. */
    Corral__V1__Scope sm = scope_of(400, 0, true, false);
    Corral__V1__Scope sf = scope_of(600, 0, false, false);
    cr_assert(!raw_submit(&rc, g, "unserved", "", &sm, jm));
    cr_assert(!raw_submit(&rc, g, "unserved", "", &sf, jf));
    /* Acknowledged, so durable: kill -9 at once. */
    raw_close(&rc);
    corral_client_free(&c);
    broker_kill9(&b);

    pause_ms(1200);
    broker_restart(&b);
    uint64_t up = clock_mono_ms();
    c = client_connect(&b);
    cr_assert(node_eventually(c, g, jf, CORRAL_STATE_ENDED, LATE_MS),
              "the passed job deadline did not fire within 1 s of the restart");
    cr_assert(node_eventually(c, g, jm, CORRAL_STATE_ENDED, 100));
    cr_assert_lt(clock_mono_ms() - up, LATE_MS + 200);
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect_result(t, jm, "");
    node_expect_cancel(t, jm, true, CORRAL_SOURCE_DEADLINE, DEADLINE_MSG, true);
    node_expect(t, jf, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_job(tree_find(t, jf)->error, "TimeoutError", DEADLINE_MSG, jf);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_group(t->error, g, 1);
    error_expect_job(&t->error->exceptions[0], "TimeoutError", DEADLINE_MSG, jf);
    corral_node_free(&t);

    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* ------------------------------------------------------------------ S6: effective deadline */

/* Tree:  g (deadline D1)
 *          j1  own deadline D1 + 30 s               -> effective D1
 *          j2  own deadline D1 - 10 s               -> effective D1 - 10 s
 *          j3  shield, own deadline D1 + 30 s       -> effective D1 + 30 s
 *          j4  shield, no deadline                  -> effective 0
 *          h   (child group, deadline D1 + 5 s)
 *            j5  no deadline                        -> effective D1
 *          sg  (shield, deadline D1 + 20 s)
 *            j6  no deadline                        -> effective D1 + 20 s
 *          p   own deadline D1 - 20 s (opens group o)
 *            o
 *              q  no deadline                       -> effective D1 - 20 s */
Test(s6_deadlines, effective_deadline_in_dispatch_and_tree)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer wk, rc;
    raw_worker_register(&wk, &b, RAW_KINDS, 1, 16);
    raw_connect(&rc, b.client_ep);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], h[CORRAL_ID_MAX], sg[CORRAL_ID_MAX], o[CORRAL_ID_MAX];
    char j1[CORRAL_ID_MAX], j2[CORRAL_ID_MAX], j3[CORRAL_ID_MAX], j4[CORRAL_ID_MAX];
    char j5[CORRAL_ID_MAX], j6[CORRAL_ID_MAX], p[CORRAL_ID_MAX], q[CORRAL_ID_MAX];

    uint64_t d1 = clock_wall_ms() + 120000;
    Corral__V1__Scope s = scope_of(0, d1, false, false);
    cr_assert(!raw_open(&rc, NULL, NULL, &s, g));
    s = scope_of(0, d1 + 30000, false, false);
    cr_assert(!raw_submit(&rc, g, "raw", "", &s, j1));
    s = scope_of(0, d1 - 10000, true, false);
    cr_assert(!raw_submit(&rc, g, "raw", "", &s, j2));
    s = scope_of(0, d1 + 30000, false, true);
    cr_assert(!raw_submit(&rc, g, "raw", "", &s, j3));
    s = scope_of(0, 0, false, true);
    cr_assert(!raw_submit(&rc, g, "raw", "", &s, j4));
    s = scope_of(0, d1 + 5000, false, false);
    cr_assert(!raw_open(&rc, g, NULL, &s, h));
    cr_assert(!raw_submit(&rc, h, "raw", "", NULL, j5));
    s = scope_of(0, d1 + 20000, false, true);
    cr_assert(!raw_open(&rc, g, NULL, &s, sg));
    cr_assert(!raw_submit(&rc, sg, "raw", "", NULL, j6));
    s = scope_of(0, d1 - 20000, false, false);
    cr_assert(!raw_submit(&rc, g, "raw", "", &s, p));

    struct dispatched ds[8];
    collect_dispatches(&wk, ds, 7);
    cr_assert(!raw_open(&rc, NULL, p, NULL, o));
    cr_assert(!raw_submit(&rc, o, "raw", "", NULL, q));
    collect_dispatches(&wk, &ds[7], 1);

    struct {
        const char *job;
        uint64_t effective;
    } want[] = {{j1, d1}, {j2, d1 - 10000}, {j3, d1 + 30000}, {j4, 0},
                {j5, d1}, {j6, d1 + 20000}, {p, d1 - 20000},  {q, d1 - 20000}};
    for (size_t i = 0; i < 8; i++) {
        const struct dispatched *d = dispatched_of(ds, 8, want[i].job);
        cr_assert_eq(d->effective, want[i].effective,
                     "Dispatch of %s: effective_deadline_unix_ms %llu, expected %llu (D1%+lld)",
                     want[i].job, (unsigned long long)d->effective,
                     (unsigned long long)want[i].effective,
                     want[i].effective ? (long long)(want[i].effective - d1) : 0LL);
        struct scope_fields sf = scope_fields_of(&rc, g, want[i].job);
        cr_assert_eq(sf.effective, want[i].effective,
                     "tree of %s: effective_deadline_unix_ms %llu, expected %llu", want[i].job,
                     (unsigned long long)sf.effective, (unsigned long long)want[i].effective);
    }

    /* The nodes' own fields in the tree. */
    struct scope_fields f = scope_fields_of(&rc, g, g);
    cr_assert(f.deadline == d1 && f.effective == d1 && !f.shield &&
              f.on_deadline == CORRAL__V1__ON_DEADLINE__ON_DEADLINE_FAIL);
    f = scope_fields_of(&rc, g, j2);
    cr_assert(f.deadline == d1 - 10000 && !f.shield &&
              f.on_deadline == CORRAL__V1__ON_DEADLINE__ON_DEADLINE_MOVE_ON);
    f = scope_fields_of(&rc, g, j3);
    cr_assert(f.deadline == d1 + 30000 && f.shield);
    f = scope_fields_of(&rc, g, j4);
    cr_assert(f.deadline == 0 && f.shield);
    f = scope_fields_of(&rc, g, j5);
    cr_assert(f.deadline == 0 && !f.shield);
    f = scope_fields_of(&rc, g, h);
    cr_assert(f.deadline == d1 + 5000 && f.effective == d1 && !f.shield);
    f = scope_fields_of(&rc, g, sg);
    cr_assert(f.deadline == d1 + 20000 && f.effective == d1 + 20000 && f.shield);
    f = scope_fields_of(&rc, g, o);
    cr_assert(f.deadline == 0 && f.effective == d1 - 20000 && !f.shield,
              "group o opened by p: deadline %llu effective %llu shield %d",
              (unsigned long long)f.deadline, (unsigned long long)f.effective, f.shield);

    /* Finish everything. */
    const char *inner[] = {q, j1, j2, j3, j4, j5, j6};
    for (size_t i = 0; i < 7; i++)
        cr_assert_eq(raw_worker_done(&wk, inner[i], dispatched_of(ds, 8, inner[i])->attempt, "ok"),
                     CORRAL_OK);
    cr_assert_eq(corral_group_close(c, o), CORRAL_OK);
    cr_assert_eq(raw_worker_done(&wk, p, dispatched_of(ds, 8, p)->attempt, "ok"), CORRAL_OK);
    cr_assert_eq(corral_group_close(c, h), CORRAL_OK);
    cr_assert_eq(corral_group_close(c, sg), CORRAL_OK);
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    corral_node_free(&t);

    corral_client_free(&c);
    raw_close(&rc);
    raw_close(&wk);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* ------------------------------------------------------------------ S7 */

Test(s7_shield, shielded_job_in_a_cancelled_group_runs_to_completion_and_keeps_its_result)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 3);
    struct corral_client *c = client_connect(&b);
    struct raw_peer rc;
    raw_connect(&rc, b.client_ep);
    char g[CORRAL_ID_MAX], a[CORRAL_ID_MAX], s[CORRAL_ID_MAX], e[CORRAL_ID_MAX];

    open_root(c, g);
    submit(c, g, "sleep", "60000", a);
    Corral__V1__Scope sh = scope_of(0, 0, false, true);
    cr_assert(!raw_submit(&rc, g, "sleep", "1200", &sh, s));
    cr_assert(test_worker_wait_started(w, 2, 5000));

    cr_assert_eq(corral_group_cancel(c, g, "stop"), CORRAL_OK);
    cr_assert(test_worker_wait_cancels(w, 1, 1000));
    expect_worker_cancel(w, a, CORRAL_SOURCE_PARENT, "stop");
    cr_assert(node_eventually(c, g, a, CORRAL_STATE_ENDED, 2000));
    /* The shielded job runs on, and its parent waits for it. */
    struct corral_node *t = get_tree(c, g);
    node_expect(t, s, CORRAL_STATE_RUNNING, CORRAL_OUTCOME_NONE);
    node_expect_cancel(t, s, false, CORRAL_SOURCE_NONE, NULL, false);
    node_expect(t, g, CORRAL_STATE_CANCELLING, CORRAL_OUTCOME_NONE);
    corral_node_free(&t);

    /* A shielded job submitted into the cancelled group is dispatched normally (S5). */
    cr_assert(!raw_submit(&rc, g, "echo", "shielded echo", &sh, e),
              "a shielded job submitted into a cancelled group is reported cancelled");
    cr_assert(node_eventually(c, g, e, CORRAL_STATE_ENDED, 2000));

    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect_cancel(t, g, true, CORRAL_SOURCE_EXPLICIT, "stop", true);
    node_expect(t, a, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect_result(t, s, "slept");
    node_expect_cancel(t, s, false, CORRAL_SOURCE_NONE, NULL, false);
    node_expect_result(t, e, "shielded echo");
    corral_node_free(&t);
    expect_no_worker_cancel(w, s);
    expect_no_worker_cancel(w, e);
    struct scope_fields sf = scope_fields_of(&rc, g, s);
    cr_assert(sf.shield && sf.deadline == 0 && sf.effective == 0);

    expect_no_worker_problem(w);
    raw_close(&rc);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s7_shield, shielded_job_outlives_its_groups_deadline_and_the_group_waits_for_it)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 2);
    struct corral_client *c = client_connect(&b);
    struct raw_peer rc;
    raw_connect(&rc, b.client_ep);
    char g[CORRAL_ID_MAX], a[CORRAL_ID_MAX], s[CORRAL_ID_MAX];

    Corral__V1__Scope sg = scope_of(300, 0, false, false);
    cr_assert(!raw_open(&rc, NULL, NULL, &sg, g));
    submit(c, g, "sleep", "60000", a);
    Corral__V1__Scope sh = scope_of(0, 0, false, true);
    cr_assert(!raw_submit(&rc, g, "sleep", "1500", &sh, s));
    cr_assert(test_worker_wait_started(w, 2, 5000));

    cr_assert(test_worker_wait_cancels(w, 1, 300 + LATE_MS + 1000));
    expect_worker_cancel(w, a, CORRAL_SOURCE_PARENT, DEADLINE_MSG);
    cr_assert(node_eventually(c, g, a, CORRAL_STATE_ENDED, 2000));
    struct corral_node *t = get_tree(c, g);
    node_expect(t, s, CORRAL_STATE_RUNNING, CORRAL_OUTCOME_NONE);
    cr_assert_neq(t->state, CORRAL_STATE_ENDED, "the group ended before its shielded child");
    corral_node_free(&t);

    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_group_timeout(t->error, g);
    node_expect_result(t, s, "slept");
    node_expect_cancel(t, s, false, CORRAL_SOURCE_NONE, NULL, false);
    corral_node_free(&t);
    expect_no_worker_cancel(w, s);

    expect_no_worker_problem(w);
    raw_close(&rc);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s7_shield, shielded_group_is_not_reached_by_cancel_from_above_and_takes_new_jobs)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 3);
    struct corral_client *c = client_connect(&b);
    struct raw_peer rc;
    raw_connect(&rc, b.client_ep);
    char g[CORRAL_ID_MAX], sg[CORRAL_ID_MAX], a[CORRAL_ID_MAX], x[CORRAL_ID_MAX], e[CORRAL_ID_MAX];

    open_root(c, g);
    Corral__V1__Scope sh = scope_of(0, 0, false, true);
    cr_assert(!raw_open(&rc, g, NULL, &sh, sg));
    submit(c, g, "sleep", "60000", a);
    submit(c, sg, "sleep", "800", x);
    cr_assert(test_worker_wait_started(w, 2, 5000));

    cr_assert_eq(corral_group_cancel(c, g, "stop"), CORRAL_OK);
    cr_assert(test_worker_wait_cancels(w, 1, 1000));
    expect_worker_cancel(w, a, CORRAL_SOURCE_PARENT, "stop");
    cr_assert(node_eventually(c, g, a, CORRAL_STATE_ENDED, 2000));
    struct corral_node *t = get_tree(c, g);
    node_expect(t, sg, CORRAL_STATE_OPEN, CORRAL_OUTCOME_NONE);
    node_expect_cancel(t, sg, false, CORRAL_SOURCE_NONE, NULL, false);
    node_expect(t, x, CORRAL_STATE_RUNNING, CORRAL_OUTCOME_NONE);
    node_expect(t, g, CORRAL_STATE_CANCELLING, CORRAL_OUTCOME_NONE);
    corral_node_free(&t);

    /* A job submitted into the shielded group under a cancelled ancestor is dispatched. */
    bool cancelled = true;
    int rc2 = corral_submit(c, sg, "echo", "inside", 6, e, &cancelled);
    cr_assert_eq(rc2, CORRAL_OK, "submit into the shielded group: %s (%s)", corral_strerror(rc2),
                 corral_client_last_error(c));
    cr_assert(!cancelled, "a job submitted into a shielded group was reported cancelled");
    cr_assert(node_eventually(c, g, e, CORRAL_STATE_ENDED, 2000));
    cr_assert_eq(corral_group_close(c, sg), CORRAL_OK);

    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect(t, sg, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect_cancel(t, sg, false, CORRAL_SOURCE_NONE, NULL, false);
    node_expect_result(t, x, "slept");
    node_expect_result(t, e, "inside");
    corral_node_free(&t);
    expect_no_worker_cancel(w, x);
    expect_no_worker_cancel(w, e);

    expect_no_worker_problem(w);
    raw_close(&rc);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s7_shield, shielded_group_own_deadline_still_cancels_it)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 3);
    struct corral_client *c = client_connect(&b);
    struct raw_peer rc;
    raw_connect(&rc, b.client_ep);
    char g[CORRAL_ID_MAX], sg[CORRAL_ID_MAX], a[CORRAL_ID_MAX], x[CORRAL_ID_MAX];
    char g2[CORRAL_ID_MAX], sg2[CORRAL_ID_MAX], y[CORRAL_ID_MAX];

    /* Move-on: the parent is cancelled first (not reaching the shield), then the shielded
     * group's own deadline cancels it. */
    open_root(c, g);
    Corral__V1__Scope sh = scope_of(800, 0, true, true);
    cr_assert(!raw_open(&rc, g, NULL, &sh, sg));
    submit(c, g, "sleep", "60000", a);
    submit(c, sg, "sleep", "60000", x);
    cr_assert(test_worker_wait_started(w, 2, 5000));
    cr_assert_eq(corral_group_cancel(c, g, "stop"), CORRAL_OK);
    cr_assert(node_eventually(c, g, a, CORRAL_STATE_ENDED, 2000));
    struct cancel_seen cs;
    cr_assert(!test_worker_cancel_of(w, x, &cs) || cs.source != CORRAL_SOURCE_PARENT ||
                  strcmp(cs.reason, "stop") != 0,
              "the cancel of g reached the shielded group's job");

    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect(t, sg, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect_cancel(t, sg, true, CORRAL_SOURCE_DEADLINE, DEADLINE_MSG, true);
    node_expect(t, x, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect_cancel(t, x, true, CORRAL_SOURCE_PARENT, DEADLINE_MSG, false);
    corral_node_free(&t);
    expect_worker_cancel(w, x, CORRAL_SOURCE_PARENT, DEADLINE_MSG);

    /* Fail: the shielded group's TimeoutError is its parent's child failure. */
    open_root(c, g2);
    Corral__V1__Scope shf = scope_of(300, 0, false, true);
    cr_assert(!raw_open(&rc, g2, NULL, &shf, sg2));
    submit(c, sg2, "sleep", "60000", y);
    cr_assert(test_worker_wait_started(w, 3, 5000));
    t = wait_group(c, g2, WAIT_MS);
    node_expect(t, sg2, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_group_timeout(tree_find(t, sg2)->error, sg2);
    node_expect_cancel(t, sg2, true, CORRAL_SOURCE_DEADLINE, DEADLINE_MSG, true);
    node_expect(t, y, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect(t, g2, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_group(t->error, g2, 1);
    error_expect_group_timeout(&t->error->exceptions[0], sg2);
    corral_node_free(&t);
    expect_worker_cancel(w, y, CORRAL_SOURCE_PARENT, DEADLINE_MSG);

    expect_no_worker_problem(w);
    raw_close(&rc);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s7_shield, cancel_aimed_at_a_shielded_job_or_group_still_applies)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 2);
    struct corral_client *c = client_connect(&b);
    struct raw_peer rc;
    raw_connect(&rc, b.client_ep);
    char g[CORRAL_ID_MAX], s[CORRAL_ID_MAX], sg[CORRAL_ID_MAX], x[CORRAL_ID_MAX];

    open_root(c, g);
    Corral__V1__Scope sh = scope_of(0, 0, false, true);
    cr_assert(!raw_submit(&rc, g, "sleep", "60000", &sh, s));
    cr_assert(!raw_open(&rc, g, NULL, &sh, sg));
    submit(c, sg, "sleep", "60000", x);
    cr_assert(test_worker_wait_started(w, 2, 5000));

    cr_assert_eq(corral_job_cancel(c, s, "aimed"), CORRAL_OK);
    cr_assert_eq(corral_group_cancel(c, sg, "aimed at the group"), CORRAL_OK);
    cr_assert(test_worker_wait_cancels(w, 2, 1000), "not every cancel reached the worker in 1 s");
    expect_worker_cancel(w, s, CORRAL_SOURCE_EXPLICIT, "aimed");
    expect_worker_cancel(w, x, CORRAL_SOURCE_PARENT, "aimed at the group");

    cr_assert(node_eventually(c, g, sg, CORRAL_STATE_ENDED, 2000));
    cr_assert(node_eventually(c, g, s, CORRAL_STATE_ENDED, 2000));
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, s, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect_cancel(t, s, true, CORRAL_SOURCE_EXPLICIT, "aimed", true);
    node_expect(t, sg, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect_cancel(t, sg, true, CORRAL_SOURCE_EXPLICIT, "aimed at the group", true);
    node_expect(t, x, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect_cancel(t, x, true, CORRAL_SOURCE_PARENT, "aimed at the group", false);
    /* Cancellations are not errors: the parent succeeds, untouched. */
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect_cancel(t, g, false, CORRAL_SOURCE_NONE, NULL, false);
    corral_node_free(&t);

    expect_no_worker_problem(w);
    raw_close(&rc);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}
