/* test_cancel.c - DESIGN.md S4 (propagation, level-triggered cancel over the network)
 * against the real corrald: a libcorral test worker, and raw workers where the test must
 * control when the CancelAck is sent. */
#include <criterion/criterion.h>

#include <string.h>

#include "clock.h"
#include "harness.h"

#define WAIT_MS 10000

TestSuite(s4_propagation, .fini = harness_teardown);

static const char *const RAW_KINDS[] = {"raw"};

Test(s4_propagation, running_job_receives_cancel_with_source_and_reason_within_1s)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 2);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], a[CORRAL_ID_MAX], j[CORRAL_ID_MAX], g2[CORRAL_ID_MAX];

    open_root(c, g);
    submit(c, g, "sleep", "60000", a);
    cr_assert(test_worker_wait_started(w, 1, 5000));
    uint64_t t0 = clock_mono_ms();
    cr_assert_eq(corral_group_cancel(c, g, "halt"), CORRAL_OK);
    cr_assert(test_worker_wait_cancels(w, 1, 1000), "no cancel reached the worker within 1 s");
    struct cancel_seen cs;
    cr_assert(test_worker_cancel_of(w, a, &cs));
    cr_assert_lt(cs.at_ms - t0, 1000, "the cancel took %llu ms",
                 (unsigned long long)(cs.at_ms - t0));
    expect_worker_cancel(w, a, CORRAL_SOURCE_PARENT, "halt");
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect(t, a, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect_cancel(t, a, true, CORRAL_SOURCE_PARENT, "halt", false);
    corral_node_free(&t);

    /* The same for a single job cancelled explicitly. */
    open_root(c, g2);
    submit(c, g2, "sleep", "60000", j);
    cr_assert(test_worker_wait_started(w, 2, 5000));
    t0 = clock_mono_ms();
    cr_assert_eq(corral_job_cancel(c, j, "only you"), CORRAL_OK);
    cr_assert(test_worker_wait_cancels(w, 2, 1000), "no cancel reached the worker within 1 s");
    cr_assert(test_worker_cancel_of(w, j, &cs));
    cr_assert_lt(cs.at_ms - t0, 1000);
    expect_worker_cancel(w, j, CORRAL_SOURCE_EXPLICIT, "only you");
    cr_assert(node_eventually(c, g2, j, CORRAL_STATE_ENDED, 2000));
    cr_assert_eq(corral_group_close(c, g2), CORRAL_OK);
    t = wait_group(c, g2, WAIT_MS);
    node_expect(t, g2, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect(t, j, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect_cancel(t, j, true, CORRAL_SOURCE_EXPLICIT, "only you", true);
    corral_node_free(&t);

    expect_no_worker_problem(w);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s4_propagation, group_stays_cancelling_until_the_worker_acknowledges)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer wk;
    raw_worker_register(&wk, &b, RAW_KINDS, 1, 1);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];

    open_root(c, g);
    submit(c, g, "raw", "p", j);
    Corral__V1__Envelope *d =
        raw_worker_expect(&wk, CORRAL__V1__ENVELOPE__BODY_DISPATCH, 5000, true);
    cr_assert_not_null(d, "no Dispatch within 5 s");
    cr_assert_str_eq(d->dispatch->job, j);
    cr_assert_str_eq(d->dispatch->kind, "raw");
    cr_assert_str_eq(d->dispatch->group, g);
    cr_assert_eq(d->dispatch->payload.len, 1);
    cr_assert_eq(d->dispatch->payload.data[0], 'p');
    cr_assert_eq(d->request_id, 0);
    uint32_t attempt = d->dispatch->attempt;
    cr_assert_eq(attempt, 1);
    corral__v1__envelope__free_unpacked(d, NULL);

    uint64_t t0 = clock_mono_ms();
    cr_assert_eq(corral_group_cancel(c, g, "why"), CORRAL_OK);
    Corral__V1__Envelope *cm =
        raw_worker_expect(&wk, CORRAL__V1__ENVELOPE__BODY_CANCEL, 1000, true);
    cr_assert_not_null(cm, "no Cancel within 1 s");
    cr_assert_lt(clock_mono_ms() - t0, 1000);
    cr_assert_str_eq(cm->cancel->job, j);
    cr_assert_eq(cm->cancel->attempt, attempt);
    cr_assert_eq(cm->cancel->source, CORRAL__V1__CANCEL_SOURCE__CANCEL_SOURCE_PARENT);
    cr_assert_str_eq(cm->cancel->reason, "why");
    corral__v1__envelope__free_unpacked(cm, NULL);

    struct corral_node *t = get_tree(c, g);
    node_expect(t, g, CORRAL_STATE_CANCELLING, CORRAL_OUTCOME_NONE);
    node_expect(t, j, CORRAL_STATE_CANCELLING, CORRAL_OUTCOME_NONE);
    corral_node_free(&t);

    /* The worker takes its time to stop (heartbeating meanwhile): nothing ends. */
    raw_worker_idle(&wk, 500);
    t = get_tree(c, g);
    node_expect(t, g, CORRAL_STATE_CANCELLING, CORRAL_OUTCOME_NONE);
    node_expect(t, j, CORRAL_STATE_CANCELLING, CORRAL_OUTCOME_NONE);
    corral_node_free(&t);

    cr_assert_eq(raw_worker_cancel_ack(&wk, j, attempt), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect(t, j, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect_cancel(t, g, true, CORRAL_SOURCE_EXPLICIT, "why", true);
    node_expect_cancel(t, j, true, CORRAL_SOURCE_PARENT, "why", false);
    corral_node_free(&t);

    corral_client_free(&c);
    raw_close(&wk);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s4_propagation, cancel_is_repeated_until_acknowledged)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer wk;
    raw_worker_register(&wk, &b, RAW_KINDS, 1, 1);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];

    open_root(c, g);
    submit(c, g, "raw", "", j);
    Corral__V1__Envelope *d =
        raw_worker_expect(&wk, CORRAL__V1__ENVELOPE__BODY_DISPATCH, 5000, true);
    cr_assert_not_null(d, "no Dispatch within 5 s");
    uint32_t attempt = d->dispatch->attempt;
    corral__v1__envelope__free_unpacked(d, NULL);

    cr_assert_eq(corral_job_cancel(c, j, "again"), CORRAL_OK);
    Corral__V1__Envelope *cm =
        raw_worker_expect(&wk, CORRAL__V1__ENVELOPE__BODY_CANCEL, 1000, true);
    cr_assert_not_null(cm, "no Cancel within 1 s");
    corral__v1__envelope__free_unpacked(cm, NULL);
    /* The worker "swallows" it; the broker must say it again (still heartbeating, so the
     * worker is alive). */
    cm = raw_worker_expect(&wk, CORRAL__V1__ENVELOPE__BODY_CANCEL, 5000, true);
    cr_assert_not_null(cm, "the Cancel was not repeated within 5 s");
    cr_assert_str_eq(cm->cancel->job, j);
    cr_assert_eq(cm->cancel->attempt, attempt);
    cr_assert_eq(cm->cancel->source, CORRAL__V1__CANCEL_SOURCE__CANCEL_SOURCE_EXPLICIT);
    cr_assert_str_eq(cm->cancel->reason, "again");
    corral__v1__envelope__free_unpacked(cm, NULL);

    cr_assert_eq(raw_worker_cancel_ack(&wk, j, attempt), CORRAL_OK);
    cr_assert(node_eventually(c, g, j, CORRAL_STATE_ENDED, 2000));
    struct corral_node *t = get_tree(c, g);
    node_expect(t, j, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    corral_node_free(&t);
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    corral_node_free(&t);

    corral_client_free(&c);
    raw_close(&wk);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s4_propagation, cancel_reaches_running_jobs_through_three_nested_groups)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 3);
    struct corral_client *c = client_connect(&b);
    char g1[CORRAL_ID_MAX], g2[CORRAL_ID_MAX], g3[CORRAL_ID_MAX];
    char x1[CORRAL_ID_MAX], x2[CORRAL_ID_MAX], x3[CORRAL_ID_MAX];

    open_root(c, g1);
    open_child(c, g1, g2);
    open_child(c, g2, g3);
    submit(c, g1, "sleep", "60000", x1);
    submit(c, g2, "sleep", "60000", x2);
    submit(c, g3, "sleep", "60000", x3);
    cr_assert(test_worker_wait_started(w, 3, 5000));

    cr_assert_eq(corral_group_cancel(c, g1, "deep"), CORRAL_OK);
    cr_assert(test_worker_wait_cancels(w, 3, 1000), "not every job was told within 1 s");
    expect_worker_cancel(w, x1, CORRAL_SOURCE_PARENT, "deep");
    expect_worker_cancel(w, x2, CORRAL_SOURCE_PARENT, "deep");
    expect_worker_cancel(w, x3, CORRAL_SOURCE_PARENT, "deep");

    /* Nobody closed anything: cancelled groups end once their children have. */
    struct corral_node *t = wait_group(c, g1, WAIT_MS);
    const char *all[] = {g1, g2, g3, x1, x2, x3};
    for (size_t i = 0; i < 6; i++)
        node_expect(t, all[i], CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    /* cancelled_caught only on the scope whose cancel was the origin. */
    node_expect_cancel(t, g1, true, CORRAL_SOURCE_EXPLICIT, "deep", true);
    for (size_t i = 1; i < 6; i++)
        node_expect_cancel(t, all[i], true, CORRAL_SOURCE_PARENT, "deep", false);
    const struct corral_node *n2 = tree_find(t, g2);
    const struct corral_node *n3 = tree_find(t, g3);
    cr_assert_str_eq(n2->parent, g1);
    cr_assert_str_eq(n3->parent, g2);
    corral_node_free(&t);

    expect_no_worker_problem(w);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s4_propagation, cancel_reaches_groups_opened_by_jobs)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 2);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], p[CORRAL_ID_MAX], h[CORRAL_ID_MAX], y[CORRAL_ID_MAX];

    open_root(c, g);
    submit(c, g, "sleep", "60000", p);
    cr_assert(test_worker_wait_started(w, 1, 5000));
    /* The running job p opens a group of its own (as a job's code would). */
    bool cancelled = true;
    int rc = corral_group_open(c, NULL, p, h, &cancelled);
    cr_assert_eq(rc, CORRAL_OK, "open a group under job %s: %s (%s)", p, corral_strerror(rc),
                 corral_client_last_error(c));
    cr_assert(!cancelled);
    submit(c, h, "sleep", "60000", y);
    cr_assert(test_worker_wait_started(w, 2, 5000));

    struct corral_node *t = get_tree(c, g);
    const struct corral_node *pn = tree_find(t, p);
    cr_assert_not_null(pn);
    cr_assert_eq(pn->ngroups, 1, "job %s lists %zu groups", p, pn->ngroups);
    cr_assert_str_eq(pn->groups[0].id, h);
    cr_assert_str_eq(pn->groups[0].parent, p);
    corral_node_free(&t);

    cr_assert_eq(corral_group_cancel(c, g, "from the top"), CORRAL_OK);
    cr_assert(test_worker_wait_cancels(w, 2, 1000), "not every job was told within 1 s");
    expect_worker_cancel(w, p, CORRAL_SOURCE_PARENT, "from the top");
    expect_worker_cancel(w, y, CORRAL_SOURCE_PARENT, "from the top");

    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect(t, p, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect(t, h, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect(t, y, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect_cancel(t, g, true, CORRAL_SOURCE_EXPLICIT, "from the top", true);
    node_expect_cancel(t, h, true, CORRAL_SOURCE_PARENT, "from the top", false);
    node_expect_cancel(t, y, true, CORRAL_SOURCE_PARENT, "from the top", false);
    corral_node_free(&t);

    expect_no_worker_problem(w);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* Root g runs job p1, which opens h1 and runs p2 there, which opens h2 and runs x3 there:
 * three levels of jobs through two job-owned groups. x3 runs on a raw worker so the test
 * decides when it stops; until then nothing above it may end (S4, D5). */
Test(s4_propagation, cancel_reaches_a_job_three_levels_down_through_two_job_owned_groups)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 2);
    struct raw_peer wk;
    raw_worker_register(&wk, &b, RAW_KINDS, 1, 1);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], p1[CORRAL_ID_MAX], h1[CORRAL_ID_MAX], p2[CORRAL_ID_MAX];
    char h2[CORRAL_ID_MAX], x3[CORRAL_ID_MAX];
    bool cancelled = true;

    open_root(c, g);
    submit(c, g, "sleep", "60000", p1);
    cr_assert(test_worker_wait_started(w, 1, 5000));
    cr_assert_eq(corral_group_open(c, NULL, p1, h1, &cancelled), CORRAL_OK);
    cr_assert(!cancelled);
    submit(c, h1, "sleep", "60000", p2);
    cr_assert(test_worker_wait_started(w, 2, 5000));
    cr_assert_eq(corral_group_open(c, NULL, p2, h2, &cancelled), CORRAL_OK);
    cr_assert(!cancelled);
    submit(c, h2, "raw", "deep", x3);
    Corral__V1__Envelope *d =
        raw_worker_expect(&wk, CORRAL__V1__ENVELOPE__BODY_DISPATCH, 5000, true);
    cr_assert_not_null(d, "no Dispatch within 5 s");
    cr_assert_str_eq(d->dispatch->job, x3);
    cr_assert_str_eq(d->dispatch->group, h2);
    uint32_t attempt = d->dispatch->attempt;
    corral__v1__envelope__free_unpacked(d, NULL);

    uint64_t t0 = clock_mono_ms();
    cr_assert_eq(corral_group_cancel(c, g, "from the root"), CORRAL_OK);
    Corral__V1__Envelope *cm =
        raw_worker_expect(&wk, CORRAL__V1__ENVELOPE__BODY_CANCEL, 1000, true);
    cr_assert_not_null(cm, "the job three levels down was not told within 1 s");
    cr_assert_lt(clock_mono_ms() - t0, 1000);
    cr_assert_str_eq(cm->cancel->job, x3);
    cr_assert_eq(cm->cancel->attempt, attempt);
    cr_assert_eq(cm->cancel->source, CORRAL__V1__CANCEL_SOURCE__CANCEL_SOURCE_PARENT);
    cr_assert_str_eq(cm->cancel->reason, "from the root");
    corral__v1__envelope__free_unpacked(cm, NULL);
    cr_assert(test_worker_wait_cancels(w, 2, 1000), "p1 and p2 were not told within 1 s");
    expect_worker_cancel(w, p1, CORRAL_SOURCE_PARENT, "from the root");
    expect_worker_cancel(w, p2, CORRAL_SOURCE_PARENT, "from the root");

    /* p1 and p2 have stopped, but x3 has not: every scope above x3 is still open. */
    raw_worker_idle(&wk, 500);
    struct corral_node *t = get_tree(c, g);
    const char *above[] = {g, p1, h1, p2, h2, x3};
    for (size_t i = 0; i < 6; i++) {
        const struct corral_node *n = tree_find(t, above[i]);
        cr_assert_not_null(n, "%s missing from the tree", above[i]);
        cr_assert_neq(n->state, CORRAL_STATE_ENDED, "%s ended before the job below it", above[i]);
    }
    corral_node_free(&t);

    cr_assert_eq(raw_worker_cancel_ack(&wk, x3, attempt), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    for (size_t i = 0; i < 6; i++)
        node_expect(t, above[i], CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect_cancel(t, g, true, CORRAL_SOURCE_EXPLICIT, "from the root", true);
    node_expect_cancel(t, h2, true, CORRAL_SOURCE_PARENT, "from the root", false);
    node_expect_cancel(t, x3, true, CORRAL_SOURCE_PARENT, "from the root", false);
    corral_node_free(&t);

    expect_no_worker_problem(w);
    corral_client_free(&c);
    raw_close(&wk);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}
