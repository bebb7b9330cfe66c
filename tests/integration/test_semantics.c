/* test_semantics.c - DESIGN.md S1, S2, S3, S5 and S8 (with the D8 fields) against the real
 * corrald, driven by libcorral with an in-process test worker (harness.h).
 *
 * Kinds used: the test worker's echo, fail, sleep, stubborn and stubbornfail, and
 * "unserved", which no worker serves, so such a job stays QUEUED until cancelled. */
#include <criterion/criterion.h>

#include <string.h>
#include <time.h>

#include "harness.h"

#define WAIT_MS 10000

TestSuite(s1_group_completion, .fini = harness_teardown);
TestSuite(s2_fail_fast, .fini = harness_teardown);
TestSuite(s3_exception_group, .fini = harness_teardown);
TestSuite(s5_level_triggered, .fini = harness_teardown);
TestSuite(s8_explicit_cancel, .fini = harness_teardown);

static void
pause_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------------ S1 */

Test(s1_group_completion, ends_only_when_closed_and_children_ended)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 4);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j1[CORRAL_ID_MAX], j2[CORRAL_ID_MAX];

    open_root(c, g);
    submit(c, g, "echo", "hi", j1);
    cr_assert(node_eventually(c, g, j1, CORRAL_STATE_ENDED, 5000));
    pause_ms(200);
    /* Its only child ended, but the group is open: it does not end. */
    struct corral_node *t = get_tree(c, g);
    node_expect(t, g, CORRAL_STATE_OPEN, CORRAL_OUTCOME_NONE);
    cr_assert(!t->closed);
    node_expect_result(t, j1, "hi");
    corral_node_free(&t);

    submit(c, g, "sleep", "1000", j2);
    cr_assert(test_worker_wait_started(w, 2, 5000));
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    /* Closed, but a child is still running: not ended. */
    t = get_tree(c, g);
    node_expect(t, g, CORRAL_STATE_CLOSED, CORRAL_OUTCOME_NONE);
    cr_assert(t->closed);
    cr_assert_neq(tree_find(t, j2)->state, CORRAL_STATE_ENDED);
    corral_node_free(&t);

    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    cr_assert(t->closed);
    cr_assert_null(t->error);
    cr_assert_eq(t->nchildren, 2);
    cr_assert_str_eq(t->children[0].id, j1, "children are listed in submission order");
    cr_assert_str_eq(t->children[1].id, j2);
    node_expect_result(t, j2, "slept");
    node_expect_cancel(t, g, false, CORRAL_SOURCE_NONE, NULL, false);
    node_expect_cancel(t, j2, false, CORRAL_SOURCE_NONE, NULL, false);
    corral_node_free(&t);

    expect_no_worker_problem(w);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s1_group_completion, child_added_after_close_is_waited_for)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 4);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j1[CORRAL_ID_MAX], j2[CORRAL_ID_MAX];

    open_root(c, g);
    submit(c, g, "sleep", "800", j1);
    cr_assert(test_worker_wait_started(w, 1, 5000));
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    /* j1 is still running, so the closed group is still active: a child may be added. */
    bool cancelled = true;
    int rc = corral_submit(c, g, "sleep", "1500", 4, j2, &cancelled);
    cr_assert_eq(rc, CORRAL_OK, "submit into a closed, running group: %s (%s)", corral_strerror(rc),
                 corral_client_last_error(c));
    cr_assert(!cancelled);

    /* j1 ends first; the group must wait for j2 as well. */
    cr_assert(node_eventually(c, g, j1, CORRAL_STATE_ENDED, 5000));
    struct corral_node *t = get_tree(c, g);
    node_expect(t, g, CORRAL_STATE_CLOSED, CORRAL_OUTCOME_NONE);
    cr_assert_neq(tree_find(t, j2)->state, CORRAL_STATE_ENDED);
    corral_node_free(&t);

    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect_result(t, j1, "slept");
    node_expect_result(t, j2, "slept");
    corral_node_free(&t);

    expect_no_worker_problem(w);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s1_group_completion, submit_to_ended_group_is_not_active)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 2);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], g2[CORRAL_ID_MAX], j[CORRAL_ID_MAX], id[CORRAL_ID_MAX];

    /* A closed group without children ends at once. */
    open_root(c, g);
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    cr_assert_eq(t->nchildren, 0);
    corral_node_free(&t);
    int rc = corral_submit(c, g, "echo", "x", 1, id, NULL);
    cr_assert_eq(rc, CORRAL_ENOTACTIVE, "submit into an ended group: %s", corral_strerror(rc));
    cr_assert(strstr(corral_client_last_error(c), "is not active") != NULL, "message: '%s'",
              corral_client_last_error(c));

    /* Same after children ran. */
    open_root(c, g2);
    submit(c, g2, "echo", "x", j);
    cr_assert_eq(corral_group_close(c, g2), CORRAL_OK);
    t = wait_group(c, g2, WAIT_MS);
    node_expect_result(t, j, "x");
    corral_node_free(&t);
    rc = corral_submit(c, g2, "echo", "y", 1, id, NULL);
    cr_assert_eq(rc, CORRAL_ENOTACTIVE, "submit into an ended group: %s", corral_strerror(rc));
    cr_assert(strstr(corral_client_last_error(c), "is not active") != NULL);

    /* The ended group is unchanged (no child was recorded). */
    t = get_tree(c, g2);
    cr_assert_eq(t->nchildren, 1);
    corral_node_free(&t);

    /* An unknown group is another error. */
    rc = corral_submit(c, "g987654321", "echo", "y", 1, id, NULL);
    cr_assert_eq(rc, CORRAL_ENOTFOUND, "submit into an unknown group: %s", corral_strerror(rc));

    expect_no_worker_problem(w);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s1_group_completion, only_child_failure_is_an_exception_group_of_one)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 2);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];

    /* Closed before the child fails (it fails after 300 ms), the usual shape of
     * `async with group: start one child`. */
    open_root(c, g);
    submit(c, g, "sleepfail", "300", j);
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_group(t->error, g, 1);
    error_expect_job(&t->error->exceptions[0], "ValueError", "late failure", j);
    const struct corral_node *jn = node_expect(t, j, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_job(jn->error, "ValueError", "late failure", j);
    /* Fail fast still cancels the (empty) rest of the scope; nothing ended cancelled, and
     * the owner had left its block, so the scope caught no cancellation. */
    node_expect_cancel(t, g, true, CORRAL_SOURCE_SIBLING_FAILED, j, false);
    node_expect_cancel(t, j, false, CORRAL_SOURCE_NONE, NULL, false);
    corral_node_free(&t);

    expect_no_worker_problem(w);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s1_group_completion, failing_group_ends_without_close)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 2);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], s[CORRAL_ID_MAX], f[CORRAL_ID_MAX];

    open_root(c, g);
    submit(c, g, "sleep", "60000", s);
    cr_assert(test_worker_wait_started(w, 1, 5000));
    submit(c, g, "fail", "RuntimeError:bad", f);
    /* Never closed: the failing group ends as soon as its children have ended. */
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    cr_assert(!t->closed, "nobody closed the group");
    error_expect_group(t->error, g, 1);
    error_expect_job(&t->error->exceptions[0], "RuntimeError", "bad", f);
    node_expect(t, s, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    corral_node_free(&t);

    expect_no_worker_problem(w);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s1_group_completion, wait_does_not_close)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 2);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX], j2[CORRAL_ID_MAX];

    open_root(c, g);
    submit(c, g, "echo", "a", j);
    cr_assert(node_eventually(c, g, j, CORRAL_STATE_ENDED, 5000));
    struct corral_node *t = NULL;
    int rc = corral_group_wait(c, g, 300, &t);
    cr_assert_eq(rc, CORRAL_ETIMEDOUT, "waiting for an open group: %s", corral_strerror(rc));
    cr_assert_null(t);

    t = get_tree(c, g);
    node_expect(t, g, CORRAL_STATE_OPEN, CORRAL_OUTCOME_NONE);
    cr_assert(!t->closed, "a wait closed the group");
    corral_node_free(&t);
    /* Still open for children. */
    submit(c, g, "echo", "b", j2);
    cr_assert(node_eventually(c, g, j2, CORRAL_STATE_ENDED, 5000));
    t = get_tree(c, g);
    node_expect(t, g, CORRAL_STATE_OPEN, CORRAL_OUTCOME_NONE);
    corral_node_free(&t);

    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect_result(t, j, "a");
    node_expect_result(t, j2, "b");
    corral_node_free(&t);

    expect_no_worker_problem(w);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* ------------------------------------------------------------------ S2 */

Test(s2_fail_fast, queued_siblings_cancelled_at_once_running_ones_by_cancel)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 3);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], a[CORRAL_ID_MAX], s[CORRAL_ID_MAX], q[CORRAL_ID_MAX], f[CORRAL_ID_MAX];

    open_root(c, g);
    submit(c, g, "sleep", "60000", a);   /* running; acknowledges a cancel at once */
    submit(c, g, "stubborn", "3000", s); /* running; ignores the cancel */
    cr_assert(test_worker_wait_started(w, 2, 5000));
    submit(c, g, "unserved", "", q); /* queued forever */
    submit(c, g, "fail", "ValueError:first", f);

    /* The queued sibling ends at once and the acknowledging one soon, while the stubborn
     * one still runs: the group is CANCELLING, not ended. */
    cr_assert(node_eventually(c, g, q, CORRAL_STATE_ENDED, 2000));
    cr_assert(node_eventually(c, g, a, CORRAL_STATE_ENDED, 2000));
    struct corral_node *t = get_tree(c, g);
    node_expect(t, g, CORRAL_STATE_CANCELLING, CORRAL_OUTCOME_NONE);
    node_expect(t, f, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    node_expect(t, q, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect(t, a, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect(t, s, CORRAL_STATE_CANCELLING, CORRAL_OUTCOME_NONE);
    node_expect_cancel(t, g, true, CORRAL_SOURCE_SIBLING_FAILED, f, true);
    node_expect_cancel(t, q, true, CORRAL_SOURCE_SIBLING_FAILED, f, false);
    node_expect_cancel(t, a, true, CORRAL_SOURCE_SIBLING_FAILED, f, false);
    node_expect_cancel(t, s, true, CORRAL_SOURCE_SIBLING_FAILED, f, false);
    corral_node_free(&t);

    /* The running ones were told, with the failed child's id as the reason. */
    cr_assert(test_worker_wait_cancels(w, 2, 1000));
    expect_worker_cancel(w, a, CORRAL_SOURCE_SIBLING_FAILED, f);
    expect_worker_cancel(w, s, CORRAL_SOURCE_SIBLING_FAILED, f);
    struct cancel_seen cs;
    cr_assert(!test_worker_cancel_of(w, f, &cs), "the failed job itself was cancelled");

    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_group(t->error, g, 1);
    error_expect_job(&t->error->exceptions[0], "ValueError", "first", f);
    node_expect_result(t, s, "finished anyway");
    node_expect_cancel(t, g, true, CORRAL_SOURCE_SIBLING_FAILED, f, true);
    cr_assert_eq(test_worker_started(w), 3, "the queued sibling was dispatched");
    corral_node_free(&t);

    expect_no_worker_problem(w);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* ------------------------------------------------------------------ S3 */

Test(s3_exception_group, failures_listed_in_the_order_they_happened)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 3);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], x1[CORRAL_ID_MAX], x2[CORRAL_ID_MAX], x3[CORRAL_ID_MAX];

    /* Submission order differs from failure order: x2 fails first (400 ms) and cancels
     * the others, which ignore the cancel and fail during it (800, 1200 ms). */
    open_root(c, g);
    submit(c, g, "stubbornfail", "1200", x1);
    submit(c, g, "stubbornfail", "400", x2);
    submit(c, g, "stubbornfail", "800", x3);
    cr_assert(test_worker_wait_started(w, 3, 5000));
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);

    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_group(t->error, g, 3);
    error_expect_job(&t->error->exceptions[0], "ValueError", "fail-400", x2);
    error_expect_job(&t->error->exceptions[1], "ValueError", "fail-800", x3);
    error_expect_job(&t->error->exceptions[2], "ValueError", "fail-1200", x1);
    node_expect(t, x1, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    node_expect(t, x3, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    /* Nothing ended cancelled and the owner had closed the group: no cancellation caught. */
    node_expect_cancel(t, g, true, CORRAL_SOURCE_SIBLING_FAILED, x2, false);
    node_expect_cancel(t, x1, true, CORRAL_SOURCE_SIBLING_FAILED, x2, false);
    node_expect_cancel(t, x3, true, CORRAL_SOURCE_SIBLING_FAILED, x2, false);
    node_expect_cancel(t, x2, false, CORRAL_SOURCE_NONE, NULL, false);
    corral_node_free(&t);
    expect_worker_cancel(w, x1, CORRAL_SOURCE_SIBLING_FAILED, x2);
    expect_worker_cancel(w, x3, CORRAL_SOURCE_SIBLING_FAILED, x2);

    expect_no_worker_problem(w);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s3_exception_group, nested_group_failure_is_nested_not_flattened)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 3);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], h[CORRAL_ID_MAX], x[CORRAL_ID_MAX], f[CORRAL_ID_MAX];

    open_root(c, g);
    open_child(c, g, h);
    submit(c, g, "stubbornfail", "800", x);
    cr_assert(test_worker_wait_started(w, 1, 5000));
    submit(c, h, "fail", "TypeError:inner", f);

    /* Neither group is closed: failing groups end once their children have. */
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_group(t->error, g, 2);
    const struct corral_error *inner = &t->error->exceptions[0];
    error_expect_group(inner, h, 1);
    error_expect_job(&inner->exceptions[0], "TypeError", "inner", f);
    error_expect_job(&t->error->exceptions[1], "ValueError", "fail-800", x);

    const struct corral_node *hn = node_expect(t, h, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_group(hn->error, h, 1);
    error_expect_job(&hn->error->exceptions[0], "TypeError", "inner", f);
    node_expect(t, f, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    node_expect(t, x, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    /* h failed first (its child f), then g (its child h). */
    /* Neither was closed: each owner's body counts as cancelled by its scope's own cancel
     * (S1), so each scope caught a cancellation (D8). */
    node_expect_cancel(t, h, true, CORRAL_SOURCE_SIBLING_FAILED, f, true);
    node_expect_cancel(t, g, true, CORRAL_SOURCE_SIBLING_FAILED, h, true);
    node_expect_cancel(t, x, true, CORRAL_SOURCE_SIBLING_FAILED, h, false);
    corral_node_free(&t);
    expect_worker_cancel(w, x, CORRAL_SOURCE_SIBLING_FAILED, h);

    expect_no_worker_problem(w);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s3_exception_group, cancelled_children_are_not_listed)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 2);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], a[CORRAL_ID_MAX], q[CORRAL_ID_MAX], f[CORRAL_ID_MAX];

    open_root(c, g);
    submit(c, g, "sleep", "60000", a);
    cr_assert(test_worker_wait_started(w, 1, 5000));
    submit(c, g, "unserved", "", q);
    submit(c, g, "fail", "OSError:disk", f);
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_group(t->error, g, 1);
    error_expect_job(&t->error->exceptions[0], "OSError", "disk", f);
    node_expect(t, a, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect(t, q, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    cr_assert_null(tree_find(t, a)->error, "a cancelled job carries an error");
    cr_assert_null(tree_find(t, q)->error, "a cancelled job carries an error");
    node_expect_cancel(t, g, true, CORRAL_SOURCE_SIBLING_FAILED, f, true);
    corral_node_free(&t);

    expect_no_worker_problem(w);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s3_exception_group, child_succeeding_after_cancel_keeps_its_result)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 2);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], s[CORRAL_ID_MAX], f[CORRAL_ID_MAX];

    open_root(c, g);
    submit(c, g, "stubborn", "600", s);
    cr_assert(test_worker_wait_started(w, 1, 5000));
    submit(c, g, "fail", "ValueError:x", f);
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_group(t->error, g, 1);
    error_expect_job(&t->error->exceptions[0], "ValueError", "x", f);
    node_expect_result(t, s, "finished anyway");
    node_expect_cancel(t, s, true, CORRAL_SOURCE_SIBLING_FAILED, f, false);
    /* No child ended cancelled, but the group was still open: its owner's body counts as
     * cancelled (S1), so the scope caught a cancellation (D8). */
    node_expect_cancel(t, g, true, CORRAL_SOURCE_SIBLING_FAILED, f, true);
    corral_node_free(&t);
    expect_worker_cancel(w, s, CORRAL_SOURCE_SIBLING_FAILED, f);

    expect_no_worker_problem(w);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* ------------------------------------------------------------------ S5 */

Test(s5_level_triggered, submit_after_cancel_is_recorded_cancelled_never_dispatched)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 2);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], s[CORRAL_ID_MAX], j[CORRAL_ID_MAX];

    open_root(c, g);
    submit(c, g, "stubborn", "1500", s); /* keeps the cancelled group from ending */
    cr_assert(test_worker_wait_started(w, 1, 5000));
    cr_assert_eq(corral_group_cancel(c, g, "stop now"), CORRAL_OK);

    bool cancelled = false;
    int rc = corral_submit(c, g, "echo", "late", 4, j, &cancelled);
    cr_assert_eq(rc, CORRAL_OK, "submit into a cancelling group: %s (%s)", corral_strerror(rc),
                 corral_client_last_error(c));
    cr_assert(cancelled, "the reply does not say the job was cancelled");

    struct corral_node *t = get_tree(c, g);
    node_expect(t, g, CORRAL_STATE_CANCELLING, CORRAL_OUTCOME_NONE);
    node_expect(t, j, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect_cancel(t, j, true, CORRAL_SOURCE_PARENT, "stop now", false);
    corral_node_free(&t);

    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect(t, j, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect_result(t, s, "finished anyway");
    node_expect_cancel(t, g, true, CORRAL_SOURCE_EXPLICIT, "stop now", true);
    corral_node_free(&t);

    pause_ms(200);
    cr_assert_eq(test_worker_started(w), 1, "the job submitted after the cancel was dispatched");

    expect_no_worker_problem(w);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s5_level_triggered, child_group_opened_under_cancelled_group_is_cancelled)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 2);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], s[CORRAL_ID_MAX], h[CORRAL_ID_MAX], id[CORRAL_ID_MAX];

    open_root(c, g);
    submit(c, g, "stubborn", "1500", s);
    cr_assert(test_worker_wait_started(w, 1, 5000));
    cr_assert_eq(corral_group_cancel(c, g, "bye"), CORRAL_OK);

    bool cancelled = false;
    int rc = corral_group_open(c, g, NULL, h, &cancelled);
    cr_assert_eq(rc, CORRAL_OK, "open under a cancelling group: %s (%s)", corral_strerror(rc),
                 corral_client_last_error(c));
    cr_assert(cancelled, "the reply does not say the new group is cancelled");

    /* Cancelled and without children: it ends at once, CANCELLED. */
    cr_assert(node_eventually(c, g, h, CORRAL_STATE_ENDED, 1000));
    struct corral_node *t = get_tree(c, g);
    node_expect(t, h, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect_cancel(t, h, true, CORRAL_SOURCE_PARENT, "bye", false);
    corral_node_free(&t);

    rc = corral_submit(c, h, "echo", "x", 1, id, NULL);
    cr_assert_eq(rc, CORRAL_ENOTACTIVE, "submit into the ended child group: %s",
                 corral_strerror(rc));

    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect_cancel(t, g, true, CORRAL_SOURCE_EXPLICIT, "bye", true);
    corral_node_free(&t);
    cr_assert_eq(test_worker_started(w), 1);

    expect_no_worker_problem(w);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* ------------------------------------------------------------------ S8 */

Test(s8_explicit_cancel, reason_is_stored_shown_and_sent_to_workers)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 3);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], a[CORRAL_ID_MAX], a2[CORRAL_ID_MAX], q[CORRAL_ID_MAX];

    open_root(c, g);
    submit(c, g, "sleep", "60000", a);
    submit(c, g, "sleep", "60000", a2);
    cr_assert(test_worker_wait_started(w, 2, 5000));
    submit(c, g, "unserved", "", q);
    cr_assert_eq(corral_group_cancel(c, g, "user abort"), CORRAL_OK);

    cr_assert(test_worker_wait_cancels(w, 2, 1000), "the workers were not told within 1 s");
    expect_worker_cancel(w, a, CORRAL_SOURCE_PARENT, "user abort");
    expect_worker_cancel(w, a2, CORRAL_SOURCE_PARENT, "user abort");

    /* Not closed: a cancelled group ends once its children have. */
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    cr_assert(!t->closed);
    cr_assert_null(t->error);
    node_expect_cancel(t, g, true, CORRAL_SOURCE_EXPLICIT, "user abort", true);
    const char *kids[] = {a, a2, q};
    for (size_t i = 0; i < 3; i++) {
        node_expect(t, kids[i], CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
        node_expect_cancel(t, kids[i], true, CORRAL_SOURCE_PARENT, "user abort", false);
    }
    corral_node_free(&t);

    /* corralctl shows the reason in the tree. */
    char out[8192];
    const char *args[] = {"group", "show", g, NULL};
    int st = run_ctl(&b, out, sizeof out, args);
    cr_assert_eq(st, 0, "corralctl group show exited %d", st);
    cr_assert(strstr(out, "user abort") != NULL, "corralctl group show lacks the reason:\n%s", out);

    expect_no_worker_problem(w);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s8_explicit_cancel, cancel_with_a_failed_child_ends_failed)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 2);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], x[CORRAL_ID_MAX];

    open_root(c, g);
    submit(c, g, "stubbornfail", "500", x); /* fails while being cancelled */
    cr_assert(test_worker_wait_started(w, 1, 5000));
    cr_assert_eq(corral_group_cancel(c, g, "abort"), CORRAL_OK);
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_group(t->error, g, 1);
    error_expect_job(&t->error->exceptions[0], "ValueError", "fail-500", x);
    /* The explicit cancel came first: its source and reason are kept. */
    node_expect_cancel(t, g, true, CORRAL_SOURCE_EXPLICIT, "abort", true); /* open: S1 */
    node_expect_cancel(t, x, true, CORRAL_SOURCE_PARENT, "abort", false);
    corral_node_free(&t);
    expect_worker_cancel(w, x, CORRAL_SOURCE_PARENT, "abort");

    expect_no_worker_problem(w);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s8_explicit_cancel, cancel_is_idempotent_and_keeps_the_first_reason)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 2);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], s[CORRAL_ID_MAX];

    open_root(c, g);
    submit(c, g, "stubborn", "800", s);
    cr_assert(test_worker_wait_started(w, 1, 5000));
    cr_assert_eq(corral_group_cancel(c, g, "first"), CORRAL_OK);
    cr_assert_eq(corral_group_cancel(c, g, "second"), CORRAL_OK);
    struct corral_node *t = get_tree(c, g);
    node_expect(t, g, CORRAL_STATE_CANCELLING, CORRAL_OUTCOME_NONE);
    node_expect_cancel(t, g, true, CORRAL_SOURCE_EXPLICIT, "first", false);
    corral_node_free(&t);

    /* The stubborn child finishes anyway and keeps its result; the group was cancelled
     * explicitly and no child failed: CANCELLED. The group itself ended CANCELLED because of
     * its own cancel (its owner's body counts as cancelled, S1), so it caught it. */
    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect_result(t, s, "finished anyway");
    node_expect_cancel(t, g, true, CORRAL_SOURCE_EXPLICIT, "first", true);
    node_expect_cancel(t, s, true, CORRAL_SOURCE_PARENT, "first", false);
    corral_node_free(&t);
    expect_worker_cancel(w, s, CORRAL_SOURCE_PARENT, "first");

    /* Cancels of ended nodes: OK, no change. */
    cr_assert_eq(corral_group_cancel(c, g, "third"), CORRAL_OK);
    cr_assert_eq(corral_job_cancel(c, s, "late"), CORRAL_OK);
    t = get_tree(c, g);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect_cancel(t, g, true, CORRAL_SOURCE_EXPLICIT, "first", true);
    node_expect_result(t, s, "finished anyway");
    node_expect_cancel(t, s, true, CORRAL_SOURCE_PARENT, "first", false);
    corral_node_free(&t);

    expect_no_worker_problem(w);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s8_explicit_cancel, single_job_cancel_cancels_only_that_job)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 2);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], a[CORRAL_ID_MAX], s[CORRAL_ID_MAX], e[CORRAL_ID_MAX];

    open_root(c, g);
    submit(c, g, "sleep", "60000", a);
    submit(c, g, "sleep", "700", s);
    cr_assert(test_worker_wait_started(w, 2, 5000));
    cr_assert_eq(corral_job_cancel(c, a, "just a"), CORRAL_OK);

    cr_assert(test_worker_wait_cancels(w, 1, 1000), "the worker was not told within 1 s");
    expect_worker_cancel(w, a, CORRAL_SOURCE_EXPLICIT, "just a");
    cr_assert(node_eventually(c, g, a, CORRAL_STATE_ENDED, 2000));
    struct corral_node *t = get_tree(c, g);
    node_expect(t, a, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect_cancel(t, a, true, CORRAL_SOURCE_EXPLICIT, "just a", true);
    /* The group is not cancelled by it and takes new children. */
    node_expect(t, g, CORRAL_STATE_OPEN, CORRAL_OUTCOME_NONE);
    node_expect_cancel(t, g, false, CORRAL_SOURCE_NONE, NULL, false);
    node_expect_cancel(t, s, false, CORRAL_SOURCE_NONE, NULL, false);
    corral_node_free(&t);
    bool cancelled = true;
    int rc = corral_submit(c, g, "echo", "more", 4, e, &cancelled);
    cr_assert_eq(rc, CORRAL_OK);
    cr_assert(!cancelled);

    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    cr_assert_null(t->error, "a cancelled job is not a group error");
    node_expect(t, a, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect_result(t, s, "slept");
    node_expect_result(t, e, "more");
    node_expect_cancel(t, g, false, CORRAL_SOURCE_NONE, NULL, false);
    corral_node_free(&t);
    struct cancel_seen cs;
    cr_assert(!test_worker_cancel_of(w, s, &cs), "a sibling of the cancelled job was cancelled");

    expect_no_worker_problem(w);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}
