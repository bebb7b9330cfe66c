/* test_durability.c - DESIGN.md S12 (durability across kill -9 and restarts, reclaiming
 * running jobs) and S13's attempt rule (stale reports, lost workers) against the real
 * corrald, with libcorral test workers and raw workers. */
#include <criterion/criterion.h>

#include <string.h>

#include "clock.h"
#include "harness.h"

#define WAIT_MS 10000

TestSuite(s12_durability, .fini = harness_teardown);
TestSuite(s13_stale_attempt, .fini = harness_teardown);

static const char *const RAW_KINDS[] = {"raw"};

/* ------------------------------------------------------------------ helpers */

static bool
str_same(const char *a, const char *b)
{
    if (a == NULL || *a == '\0')
        return b == NULL || *b == '\0';
    return b != NULL && strcmp(a, b) == 0;
}

static bool
bytes_same(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    return alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
}

static bool
errors_same(const struct corral_error *a, const struct corral_error *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    if (!str_same(a->type, b->type) || !str_same(a->message, b->message) ||
        !str_same(a->job, b->job) || !str_same(a->group, b->group) ||
        !bytes_same(a->details, a->details_len, b->details, b->details_len) ||
        a->nexceptions != b->nexceptions)
        return false;
    for (size_t i = 0; i < a->nexceptions; i++)
        if (!errors_same(&a->exceptions[i], &b->exceptions[i]))
            return false;
    return true;
}

/* Compares every field of two trees; reports the first difference by node id. */
static bool
trees_same(const struct corral_node *a, const struct corral_node *b, const char **where)
{
    *where = a->id;
    if (a->type != b->type || !str_same(a->id, b->id) || !str_same(a->kind, b->kind) ||
        !str_same(a->parent, b->parent) || a->state != b->state || a->outcome != b->outcome ||
        !bytes_same(a->result, a->result_len, b->result, b->result_len) ||
        !errors_same(a->error, b->error) || a->attempt != b->attempt ||
        a->cancel_called != b->cancel_called || a->cancelled_caught != b->cancelled_caught ||
        a->cancel_source != b->cancel_source || !str_same(a->cancel_reason, b->cancel_reason) ||
        a->closed != b->closed || a->nchildren != b->nchildren || a->ngroups != b->ngroups)
        return false;
    for (size_t i = 0; i < a->nchildren; i++)
        if (!trees_same(&a->children[i], &b->children[i], where))
            return false;
    for (size_t i = 0; i < a->ngroups; i++)
        if (!trees_same(&a->groups[i], &b->groups[i], where))
            return false;
    return true;
}

static void
expect_same_tree(const struct corral_node *before, const struct corral_node *after)
{
    const char *where = NULL;
    bool same = trees_same(before, after, &where);
    if (!same) {
        fprintf(stderr, "before:\n");
        tree_print(stderr, before);
        fprintf(stderr, "after:\n");
        tree_print(stderr, after);
    }
    cr_assert(same, "the tree of %s changed across the restart (first at %s)", before->id,
              where != NULL ? where : "?");
}

/* Connects a raw worker for kind "raw", concurrency 1, announcing the given running job
 * (job NULL: none); returns how many jobs the Ready reply reclaimed, and checks that they
 * are exactly that job when reclaimed is expected. */
static size_t
raw_register(struct raw_peer *p, const struct broker *b, const char *job, uint32_t attempt)
{
    raw_connect(p, b->worker_ep);
    const char *jobs[1] = {job};
    uint32_t attempts[1] = {attempt};
    Corral__V1__Envelope *r =
        raw_worker_ready(p, RAW_KINDS, 1, 1, jobs, attempts, job != NULL ? 1 : 0);
    cr_assert_eq(r->reply->code, CORRAL__V1__ERROR_CODE__ERR_OK, "Ready refused: %s",
                 r->reply->message);
    size_t n = r->reply->n_reclaimed;
    for (size_t i = 0; i < n; i++) {
        cr_assert(job != NULL && strcmp(r->reply->reclaimed[i]->job, job) == 0 &&
                      r->reply->reclaimed[i]->attempt == attempt,
                  "reclaimed lists %s attempt %u, which was not announced",
                  r->reply->reclaimed[i]->job, r->reply->reclaimed[i]->attempt);
    }
    corral__v1__envelope__free_unpacked(r, NULL);
    return n;
}

/* Re-sends Ready on an existing raw worker socket; returns the number reclaimed. */
static size_t
raw_reregister(struct raw_peer *p, const char *job, uint32_t attempt)
{
    const char *jobs[1] = {job};
    uint32_t attempts[1] = {attempt};
    Corral__V1__Envelope *r = raw_worker_ready(p, RAW_KINDS, 1, 1, jobs, attempts, 1);
    cr_assert_eq(r->reply->code, CORRAL__V1__ERROR_CODE__ERR_OK, "Ready refused: %s",
                 r->reply->message);
    size_t n = r->reply->n_reclaimed;
    corral__v1__envelope__free_unpacked(r, NULL);
    return n;
}

/* Waits for a Dispatch of job on p (heartbeating) and returns its attempt. */
static uint32_t
expect_dispatch(struct raw_peer *p, const char *job, int timeout_ms)
{
    Corral__V1__Envelope *d =
        raw_worker_expect(p, CORRAL__V1__ENVELOPE__BODY_DISPATCH, timeout_ms, true);
    cr_assert_not_null(d, "no Dispatch of %s within %d ms", job, timeout_ms);
    cr_assert_str_eq(d->dispatch->job, job);
    uint32_t attempt = d->dispatch->attempt;
    corral__v1__envelope__free_unpacked(d, NULL);
    return attempt;
}

/* ------------------------------------------------------------------ S12 */

Test(s12_durability, acknowledged_state_survives_kill9)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 2);
    struct corral_client *c = client_connect(&b);
    char ga[CORRAL_ID_MAX], gb[CORRAL_ID_MAX], gb1[CORRAL_ID_MAX], gc[CORRAL_ID_MAX],
        gd[CORRAL_ID_MAX], id[CORRAL_ID_MAX];

    /* A succeeded group with results. */
    open_root(c, ga);
    submit(c, ga, "echo", "hello", id);
    submit(c, ga, "echo", "world", id);
    cr_assert_eq(corral_group_close(c, ga), CORRAL_OK);
    struct corral_node *t = wait_group(c, ga, WAIT_MS);
    corral_node_free(&t);
    /* A failed group with a nested exception group and a cancelled sibling. */
    open_root(c, gb);
    open_child(c, gb, gb1);
    submit(c, gb, "unserved", "", id);
    submit(c, gb1, "fail", "KeyError:k", id);
    t = wait_group(c, gb, WAIT_MS);
    node_expect(t, gb, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    corral_node_free(&t);
    /* An open group with a queued job and a finished one. */
    open_root(c, gc);
    submit(c, gc, "echo", "done before", id);
    cr_assert(node_eventually(c, gc, id, CORRAL_STATE_ENDED, 5000));
    submit(c, gc, "unserved", "waiting", id);
    /* An explicitly cancelled group. */
    open_root(c, gd);
    submit(c, gd, "unserved", "", id);
    cr_assert_eq(corral_group_cancel(c, gd, "no longer needed"), CORRAL_OK);
    t = wait_group(c, gd, WAIT_MS);
    corral_node_free(&t);
    expect_no_worker_problem(w);
    test_worker_stop(&w);

    const char *groups[] = {ga, gb, gc, gd};
    struct corral_node *before[4];
    for (size_t i = 0; i < 4; i++)
        before[i] = get_tree(c, groups[i]);
    corral_client_free(&c);

    broker_kill9(&b);
    broker_restart(&b);

    c = client_connect(&b);
    for (size_t i = 0; i < 4; i++) {
        struct corral_node *after = get_tree(c, groups[i]);
        expect_same_tree(before[i], after);
        corral_node_free(&after);
    }
    /* New ids never reuse old ones. */
    char fresh[CORRAL_ID_MAX];
    open_root(c, fresh);
    for (size_t i = 0; i < 4; i++)
        cr_assert(tree_find(before[i], fresh) == NULL, "id %s was reused after the restart", fresh);
    /* The open group is still open and takes children. */
    submit(c, gc, "echo", "after", id);
    for (size_t i = 0; i < 4; i++)
        corral_node_free(&before[i]);

    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s12_durability, queued_job_is_dispatched_after_restart)
{
    struct broker b;
    broker_start(&b, NULL);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];

    open_root(c, g);
    submit(c, g, "echo", "after restart", j);
    struct corral_node *t = get_tree(c, g);
    node_expect(t, j, CORRAL_STATE_QUEUED, CORRAL_OUTCOME_NONE);
    corral_node_free(&t);
    corral_client_free(&c);

    broker_kill9(&b);
    broker_restart(&b);

    c = client_connect(&b);
    t = get_tree(c, g);
    node_expect(t, j, CORRAL_STATE_QUEUED, CORRAL_OUTCOME_NONE);
    corral_node_free(&t);
    struct test_worker *w = test_worker_start(&b, 1);
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect_result(t, j, "after restart");
    cr_assert_eq(tree_find(t, j)->attempt, 1);
    corral_node_free(&t);

    expect_no_worker_problem(w);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s12_durability, running_job_reclaimed_by_a_worker_that_reconnects)
{
    /* A longer reconnect window, so that the test reliably re-announces within it. */
    const char *extra[] = {"--heartbeat-timeout", "3s", NULL};
    struct broker b;
    broker_start(&b, extra);
    struct raw_peer wk;
    cr_assert_eq(raw_register(&wk, &b, NULL, 0), 0);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];

    open_root(c, g);
    submit(c, g, "raw", "x", j);
    uint32_t attempt = expect_dispatch(&wk, j, 5000);
    cr_assert_eq(attempt, 1);
    corral_client_free(&c);

    broker_kill9(&b);
    raw_close(&wk);
    broker_restart(&b);

    /* The worker comes back within the window and announces what it still runs. */
    cr_assert_eq(raw_register(&wk, &b, j, attempt), 1, "the running job was not reclaimed");
    c = client_connect(&b);
    struct corral_node *t = get_tree(c, g);
    node_expect(t, j, CORRAL_STATE_RUNNING, CORRAL_OUTCOME_NONE);
    cr_assert_eq(tree_find(t, j)->attempt, attempt);
    corral_node_free(&t);

    /* Past the window it is still that worker's: no new attempt anywhere. */
    raw_worker_idle(&wk, 3500);
    for (size_t i = 0; i < wk.nstash; i++)
        cr_assert_neq(wk.stash[i]->body_case, CORRAL__V1__ENVELOPE__BODY_DISPATCH,
                      "the reclaimed job was dispatched again");
    t = get_tree(c, g);
    node_expect(t, j, CORRAL_STATE_RUNNING, CORRAL_OUTCOME_NONE);
    cr_assert_eq(tree_find(t, j)->attempt, attempt);
    corral_node_free(&t);

    cr_assert_eq(raw_worker_done(&wk, j, attempt, "kept"), CORRAL_OK);
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect_result(t, j, "kept");
    cr_assert_eq(tree_find(t, j)->attempt, attempt);
    corral_node_free(&t);

    corral_client_free(&c);
    raw_close(&wk);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s12_durability, running_job_not_reclaimed_is_dispatched_again)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer wa;
    cr_assert_eq(raw_register(&wa, &b, NULL, 0), 0);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];

    open_root(c, g);
    submit(c, g, "raw", "x", j);
    cr_assert_eq(expect_dispatch(&wa, j, 5000), 1);
    corral_client_free(&c);

    broker_kill9(&b);
    raw_close(&wa);
    /* The reconnect window starts when the new corrald starts, so after this instant. */
    uint64_t restarted = clock_mono_ms();
    broker_restart(&b);

    /* Another worker, which does not run j; j's worker never comes back. */
    struct raw_peer wb;
    cr_assert_eq(raw_register(&wb, &b, NULL, 0), 0);
    uint32_t attempt = expect_dispatch(&wb, j, 5000);
    cr_assert_eq(attempt, 2, "the job came back with attempt %u", attempt);
    uint64_t waited = clock_mono_ms() - restarted;
    cr_assert_geq(waited, 950,
                  "the job was taken from its worker %llu ms after the restart, before the "
                  "reconnect window (1 s) had passed",
                  (unsigned long long)waited);

    c = client_connect(&b);
    struct corral_node *t = get_tree(c, g);
    node_expect(t, j, CORRAL_STATE_RUNNING, CORRAL_OUTCOME_NONE);
    cr_assert_eq(tree_find(t, j)->attempt, 2);
    corral_node_free(&t);
    cr_assert_eq(raw_worker_done(&wb, j, 2, "second"), CORRAL_OK);
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect_result(t, j, "second");
    cr_assert_eq(tree_find(t, j)->attempt, 2);
    corral_node_free(&t);

    corral_client_free(&c);
    raw_close(&wb);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s12_durability, libcorral_worker_keeps_its_running_job_across_kill9)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 1);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];

    open_root(c, g);
    submit(c, g, "sleep", "2000", j);
    cr_assert(test_worker_wait_started(w, 1, 5000));
    corral_client_free(&c);

    broker_kill9(&b);
    broker_restart(&b);

    /* The library re-registers with the job it runs; the job finishes on its first
     * attempt and is never dispatched again. */
    c = client_connect(&b);
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect_result(t, j, "slept");
    cr_assert_eq(tree_find(t, j)->attempt, 1);
    corral_node_free(&t);
    cr_assert_eq(test_worker_started(w), 1, "the job was dispatched again");

    expect_no_worker_problem(w);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s12_durability, sigterm_exits_zero_and_restarts_cleanly)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 1);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], g2[CORRAL_ID_MAX], j[CORRAL_ID_MAX], j2[CORRAL_ID_MAX];

    open_root(c, g);
    submit(c, g, "echo", "before", j);
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    struct corral_node *before = wait_group(c, g, WAIT_MS);
    corral_client_free(&c);

    /* SIGTERM with a worker connected: exit status 0 (asserted by broker_stop). */
    broker_stop(&b);
    broker_restart(&b);

    c = client_connect(&b);
    struct corral_node *after = get_tree(c, g);
    expect_same_tree(before, after);
    corral_node_free(&after);
    corral_node_free(&before);

    /* The worker, told of the shutdown, registers again and serves new jobs. */
    open_root(c, g2);
    submit(c, g2, "echo", "after", j2);
    cr_assert_eq(corral_group_close(c, g2), CORRAL_OK);
    struct corral_node *t = wait_group(c, g2, WAIT_MS);
    node_expect_result(t, j2, "after");
    corral_node_free(&t);

    expect_no_worker_problem(w);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    /* And once more, from a clean stop with nothing running. */
    broker_restart(&b);
    c = client_connect(&b);
    t = get_tree(c, g2);
    node_expect(t, g2, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    corral_node_free(&t);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* ------------------------------------------------------------------ S13 */

Test(s13_stale_attempt, reports_for_a_wrong_attempt_or_an_ended_job_are_refused)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer wk;
    cr_assert_eq(raw_register(&wk, &b, NULL, 0), 0);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];

    open_root(c, g);
    submit(c, g, "raw", "", j);
    uint32_t attempt = expect_dispatch(&wk, j, 5000);

    cr_assert_eq(raw_worker_done(&wk, j, attempt + 1, "wrong"), CORRAL_ESTALE);
    struct corral_node *t = get_tree(c, g);
    node_expect(t, j, CORRAL_STATE_RUNNING, CORRAL_OUTCOME_NONE);
    corral_node_free(&t);

    cr_assert_eq(raw_worker_done(&wk, j, attempt, "right"), CORRAL_OK);
    t = get_tree(c, g);
    node_expect_result(t, j, "right");
    corral_node_free(&t);

    /* Recorded exactly once: later reports for it change nothing. */
    cr_assert_eq(raw_worker_done(&wk, j, attempt, "again"), CORRAL_ESTALE);
    cr_assert_eq(raw_worker_failed(&wk, j, attempt, "ValueError", "late"), CORRAL_ESTALE);
    cr_assert_eq(raw_worker_cancel_ack(&wk, j, attempt), CORRAL_ESTALE);
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect_result(t, j, "right");
    corral_node_free(&t);

    corral_client_free(&c);
    raw_close(&wk);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s13_stale_attempt, lost_worker_job_redispatched_and_its_late_done_refused)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer wa, wb;
    cr_assert_eq(raw_register(&wa, &b, NULL, 0), 0);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];

    open_root(c, g);
    submit(c, g, "raw", "", j);
    cr_assert_eq(expect_dispatch(&wa, j, 5000), 1);

    /* Worker A falls silent; B (heartbeating) gets the job once A is declared lost. */
    cr_assert_eq(raw_register(&wb, &b, NULL, 0), 0);
    cr_assert_eq(expect_dispatch(&wb, j, 5000), 2);
    struct corral_node *t = get_tree(c, g);
    node_expect(t, j, CORRAL_STATE_RUNNING, CORRAL_OUTCOME_NONE);
    cr_assert_eq(tree_find(t, j)->attempt, 2);
    corral_node_free(&t);

    /* A's late Done: A is no longer registered. */
    cr_assert_eq(raw_worker_done(&wa, j, 1, "from A"), CORRAL_EUNKNOWNWORKER);
    /* A registers again announcing its old attempt: not given back; its Done is stale. */
    cr_assert_eq(raw_reregister(&wa, j, 1), 0, "a stale attempt was reclaimed");
    cr_assert_eq(raw_worker_done(&wa, j, 1, "from A"), CORRAL_ESTALE);
    t = get_tree(c, g);
    node_expect(t, j, CORRAL_STATE_RUNNING, CORRAL_OUTCOME_NONE);
    cr_assert_eq(tree_find(t, j)->attempt, 2);
    corral_node_free(&t);

    cr_assert_eq(raw_worker_done(&wb, j, 2, "from B"), CORRAL_OK);
    cr_assert_eq(raw_worker_done(&wa, j, 1, "from A"), CORRAL_ESTALE);
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect_result(t, j, "from B");
    cr_assert_eq(tree_find(t, j)->attempt, 2);
    corral_node_free(&t);

    corral_client_free(&c);
    raw_close(&wa);
    raw_close(&wb);
    broker_stop(&b);
    broker_cleanup(&b);
}
