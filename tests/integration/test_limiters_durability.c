/* test_limiters_durability.c - DESIGN.md S10 with S12 and S13: tokens are leases tied to
 * their job's life, so no lost worker, no race between a cancel and a release, and no
 * kill -9 of the broker leaks one or admits too many. Raw workers throughout, so that the
 * test decides when each job ends and when a worker falls silent; the harness starts
 * corrald with a 100 ms heartbeat interval and a 1 s heartbeat timeout. */
#include <criterion/criterion.h>
#include <criterion/logging.h>

#include <stdio.h>
#include <string.h>

#include "clock.h"
#include "harness.h"
#include "limiter_helpers.h"

TestSuite(s10_limiter_leases, .fini = harness_teardown);

static const char *const LIM_KIND[] = {"lim"};

/* ------------------------------------------------------------------ lost worker */

Test(s10_limiter_leases, tokens_of_a_lost_worker_are_released)
{
    struct broker b;
    broker_start(&b, NULL);
    struct corral_client *c = client_connect(&b);
    limiter_set(c, "A", 1);
    limiter_set(c, "B", 1);
    static const char *const a[] = {"A", NULL};
    static const char *const bb[] = {"B", NULL};

    /* Worker 1 runs J (A, may be retried once) and K (B, one attempt only). */
    struct raw_peer w1, w2;
    raw_worker_register(&w1, &b, LIM_KIND, 1, 4);
    char g1[CORRAL_ID_MAX], g2[CORRAL_ID_MAX], j[CORRAL_ID_MAX], w[CORRAL_ID_MAX], k[CORRAL_ID_MAX];
    open_root(c, g1);
    open_root(c, g2);
    cr_assert_eq(try_submit_lim(c, g1, "lim", a, 2, 100, j), CORRAL_OK);
    cr_assert_eq(rw_expect_dispatch(&w1, j, WAIT_MS), 1);
    submit_lim(c, g1, "lim", a, w);
    cr_assert_eq(try_submit_lim(c, g2, "lim", bb, 1, 0, k), CORRAL_OK);
    cr_assert_eq(rw_expect_dispatch(&w1, k, WAIT_MS), 1);
    lim_expect(c, "A", 1, 1, 1, (const char *const[]){j, NULL});
    lim_expect(c, "B", 1, 1, 0, (const char *const[]){k, NULL});

    /* Worker 2 arrives; worker 1 falls silent from now on. Until it is declared lost, its
     * jobs keep their tokens; then W takes J's token on worker 2. */
    raw_worker_register(&w2, &b, LIM_KIND, 1, 4);
    uint64_t deadline = clock_mono_ms() + WAIT_MS;
    uint32_t att_w = 0;
    for (;;) {
        cr_assert(clock_mono_ms() < deadline, "W was not dispatched after worker 1 was lost");
        lim_sample(c, "A");
        lim_sample(c, "B");
        Corral__V1__Envelope *env = raw_worker_next(&w2, 50, true);
        if (env == NULL)
            continue;
        bool got_w = env->body_case == CORRAL__V1__ENVELOPE__BODY_DISPATCH &&
                     strcmp(env->dispatch->job, w) == 0;
        if (env->body_case == CORRAL__V1__ENVELOPE__BODY_DISPATCH)
            cr_assert(got_w, "worker 2 got %s, expected %s first", env->dispatch->job, w);
        if (got_w)
            att_w = env->dispatch->attempt;
        corral__v1__envelope__free_unpacked(env, NULL);
        if (got_w)
            break;
    }
    /* K had no attempt left: it failed as WorkerLost and gave B back. */
    struct corral_node *t = get_tree(c, g2);
    const struct corral_node *kn = node_expect(t, k, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    cr_assert(kn->error != NULL && kn->error->type != NULL &&
                  strcmp(kn->error->type, "WorkerLost") == 0,
              "K failed with %s, expected WorkerLost",
              kn->error && kn->error->type ? kn->error->type : "(none)");
    corral_node_free(&t);
    lim_expect(c, "B", 1, 0, 0, (const char *const[]){NULL});
    /* J waits for its second attempt, then for A, which W now holds. */
    for (;;) {
        cr_assert(clock_mono_ms() < deadline, "J did not come back to wait for A");
        struct corral_node *tj = get_tree(c, g1);
        enum corral_state st = tree_find(tj, j)->state;
        corral_node_free(&tj);
        if (st == CORRAL_STATE_WAITING)
            break;
        cr_assert(st == CORRAL_STATE_RETRY_WAIT || st == CORRAL_STATE_QUEUED,
                  "J is in state %s after its worker was lost", corral_state_name(st));
        /* Only W holds A meanwhile (J may turn WAITING at any moment, so the waiting
         * count is not checked here). */
        struct lim_view v = lim_sample(c, "A");
        cr_assert(v.borrowed == 1 && strcmp(v.borrowers[0], w) == 0, "A is lent to %s",
                  v.nborrowers > 0 ? v.borrowers[0] : "nobody");
        raw_worker_idle(&w2, 20);
    }
    lim_expect(c, "A", 1, 1, 1, (const char *const[]){w, NULL});

    rw_done(&w2, w, att_w);
    uint32_t att_j = rw_expect_dispatch(&w2, j, WAIT_MS);
    cr_assert_eq(att_j, 2, "J's retry is attempt %u", att_j);
    lim_expect(c, "A", 1, 1, 0, (const char *const[]){j, NULL});
    rw_done(&w2, j, att_j);
    lim_expect(c, "A", 1, 0, 0, (const char *const[]){NULL});
    /* A late report from the lost worker's attempt is stale and changes nothing. */
    Corral__V1__Envelope *r = raw_worker_ready(&w1, LIM_KIND, 1, 4, NULL, NULL, 0);
    corral__v1__envelope__free_unpacked(r, NULL);
    cr_assert_eq(raw_worker_done(&w1, k, 1, "late"), CORRAL_ESTALE);
    lim_expect(c, "B", 1, 0, 0, (const char *const[]){NULL});

    cr_assert_eq(corral_group_close(c, g1), CORRAL_OK);
    t = wait_group(c, g1, WAIT_MS);
    node_expect(t, g1, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    cr_assert_eq(tree_find(t, j)->attempt, 2);
    corral_node_free(&t);

    raw_close(&w1);
    raw_close(&w2);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* ------------------------------------------------------------------ cancel racing a release */

/* Sends a request without waiting (version and a fresh request id filled in); returns the
 * request id. */
static uint64_t
send_now(struct raw_peer *p, Corral__V1__Envelope *env)
{
    env->version = CORRAL_PROTOCOL_VERSION;
    env->request_id = p->next_request_id++;
    raw_send(p, env);
    return env->request_id;
}

/* Receives on a raw worker until the reply to request id arrives, stashing Dispatch and
 * Cancel (raw_worker_next hands them out later) and dropping other replies (heartbeats');
 * returns the reply's code. */
static int
worker_reply_code(struct raw_peer *p, uint64_t id)
{
    uint64_t deadline = clock_mono_ms() + 5000;
    for (;;) {
        uint64_t now = clock_mono_ms();
        cr_assert(now < deadline, "no reply to worker request %llu", (unsigned long long)id);
        Corral__V1__Envelope *env = raw_recv(p, (int)(deadline - now));
        if (env == NULL)
            continue;
        if (env->body_case == CORRAL__V1__ENVELOPE__BODY_REPLY) {
            bool mine = env->request_id == id;
            int code = env->reply != NULL ? (int)env->reply->code : -1;
            corral__v1__envelope__free_unpacked(env, NULL);
            if (mine)
                return code;
            continue;
        }
        cr_assert_lt(p->nstash, sizeof p->stash / sizeof p->stash[0]);
        p->stash[p->nstash++] = env;
    }
}

struct race_counts {
    unsigned cancelled_waiting; /* W was cancelled while it waited */
    unsigned cancelled_running; /* the release came first: W ran, then was cancelled */
};

/* One round: H holds A's only token, W and N wait; a CancelJob of W and the Done of H go
 * out back to back (cancel first when cancel_first), with a GetLimiters right behind
 * them. Whatever the order the broker sees them in, no token leaks: in the end N holds
 * the token, W ended CANCELLED, and releasing N leaves nothing borrowed. */
static void
race_round(struct corral_client *c, struct raw_peer *cl, struct raw_peer *wk, bool cancel_first,
           struct race_counts *counts)
{
    static const char *const a[] = {"A", NULL};
    char g[CORRAL_ID_MAX], h[CORRAL_ID_MAX], w[CORRAL_ID_MAX], n[CORRAL_ID_MAX];
    open_root(c, g);
    submit_lim(c, g, "lim", a, h);
    uint32_t att_h = rw_expect_dispatch(wk, h, WAIT_MS);
    submit_lim(c, g, "lim", a, w);
    submit_lim(c, g, "lim", a, n);
    lim_expect(c, "A", 1, 1, 2, (const char *const[]){h, NULL});

    Corral__V1__Envelope cenv, denv, lenv;
    Corral__V1__CancelJob cj;
    Corral__V1__Done done;
    Corral__V1__GetLimiters gl;
    corral__v1__envelope__init(&cenv);
    corral__v1__envelope__init(&denv);
    corral__v1__envelope__init(&lenv);
    corral__v1__cancel_job__init(&cj);
    corral__v1__done__init(&done);
    corral__v1__get_limiters__init(&gl);
    cj.job = w;
    cj.reason = "race";
    cenv.body_case = CORRAL__V1__ENVELOPE__BODY_CANCEL_JOB;
    cenv.cancel_job = &cj;
    done.job = h;
    done.attempt = att_h;
    denv.body_case = CORRAL__V1__ENVELOPE__BODY_DONE;
    denv.done = &done;
    gl.name = "A";
    lenv.body_case = CORRAL__V1__ENVELOPE__BODY_GET_LIMITERS;
    lenv.get_limiters = &gl;
    uint64_t cancel_id, done_id;
    if (cancel_first) {
        cancel_id = send_now(cl, &cenv);
        done_id = send_now(wk, &denv);
    } else {
        done_id = send_now(wk, &denv);
        cancel_id = send_now(cl, &cenv);
    }
    uint64_t get_id = send_now(cl, &lenv);

    Corral__V1__Envelope *r = raw_expect_reply(cl, cancel_id, 5000);
    cr_assert_eq(r->reply->code, CORRAL__V1__ERROR_CODE__ERR_OK, "CancelJob: %s",
                 r->reply->message);
    corral__v1__envelope__free_unpacked(r, NULL);
    r = raw_expect_reply(cl, get_id, 5000);
    cr_assert_eq(r->reply->code, CORRAL__V1__ERROR_CODE__ERR_OK);
    cr_assert_eq(r->reply->n_limiters, 1);
    const Corral__V1__Limiter *lv = r->reply->limiters[0];
    cr_assert_leq(lv->borrowed_tokens, lv->total_tokens, "mid-race sample: %u borrowed of %u",
                  lv->borrowed_tokens, lv->total_tokens);
    cr_assert_eq(lv->n_borrowers, (size_t)lv->borrowed_tokens);
    corral__v1__envelope__free_unpacked(r, NULL);
    int code = worker_reply_code(wk, done_id);
    cr_assert_eq(code, CORRAL_OK, "Done of the holder: %d", code);

    /* W either never ran, or ran (the release came first) and is now being cancelled:
     * acknowledge that, and N gets the token either way. */
    bool w_ran = false, w_acked = false;
    uint32_t att_w = 0, att_n = 0;
    for (;;) {
        char got[CORRAL_ID_MAX];
        uint32_t att = 0;
        Corral__V1__Envelope__BodyCase body = rw_next(wk, got, &att, WAIT_MS);
        if (body == CORRAL__V1__ENVELOPE__BODY_DISPATCH && strcmp(got, n) == 0) {
            cr_assert(!w_ran || w_acked, "N was dispatched while W still held the token");
            att_n = att;
            break;
        }
        if (body == CORRAL__V1__ENVELOPE__BODY_DISPATCH) {
            cr_assert_str_eq(got, w, "unexpected Dispatch of %s", got);
            cr_assert(!w_ran, "W was dispatched twice");
            w_ran = true;
            att_w = att;
            lim_expect(c, "A", 1, 1, 1, (const char *const[]){w, NULL});
            continue;
        }
        cr_assert_str_eq(got, w, "unexpected Cancel of %s", got);
        cr_assert(w_ran, "a Cancel of W, which never ran");
        if (!w_acked) {
            cr_assert_eq(raw_worker_cancel_ack(wk, w, att_w), CORRAL_OK);
            w_acked = true;
        }
    }
    if (w_ran)
        counts->cancelled_running++;
    else
        counts->cancelled_waiting++;
    lim_expect(c, "A", 1, 1, 0, (const char *const[]){n, NULL});
    struct corral_node *t = get_tree(c, g);
    node_expect(t, w, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect(t, h, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    corral_node_free(&t);
    rw_done(wk, n, att_n);
    lim_expect(c, "A", 1, 0, 0, (const char *const[]){NULL});
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
}

Test(s10_limiter_leases, cancelled_waiter_racing_a_release_leaks_no_token, .timeout = 240)
{
    struct broker b;
    broker_start(&b, NULL);
    struct corral_client *c = client_connect(&b);
    limiter_set(c, "A", 1);
    struct raw_peer wk, cl;
    raw_worker_register(&wk, &b, LIM_KIND, 1, 8);
    raw_connect(&cl, b.client_ep);

    struct race_counts counts = {0, 0};
    for (int i = 0; i < 200; i++)
        race_round(c, &cl, &wk, i % 2 == 0, &counts);
    fprintf(stderr, "race: W cancelled while waiting %u times, after it ran %u times\n",
            counts.cancelled_waiting, counts.cancelled_running);
    lim_expect(c, "A", 1, 0, 0, (const char *const[]){NULL});

    raw_close(&cl);
    raw_close(&wk);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* ------------------------------------------------------------------ restart */

/* Asserts two views of a limiter are the same (total, borrowed, waiting, borrowers). */
static void
expect_same_limiter(const char *name, const struct lim_view *before, const struct lim_view *after)
{
    bool same = before->total == after->total && before->borrowed == after->borrowed &&
                before->waiting == after->waiting && before->nborrowers == after->nborrowers;
    for (size_t i = 0; same && i < before->nborrowers; i++)
        same = strcmp(before->borrowers[i], after->borrowers[i]) == 0;
    if (!same) {
        fprintf(stderr, "before: ");
        lim_print(stderr, name, before);
        fprintf(stderr, "after:  ");
        lim_print(stderr, name, after);
    }
    cr_assert(same, "limiter %s changed across the restart", name);
}

Test(s10_limiter_leases, borrowers_and_waiters_survive_kill9_and_are_reclaimed)
{
    /* A reconnect window long enough for the test to re-announce within it. */
    const char *extra[] = {"--heartbeat-timeout", "3s", NULL};
    struct broker b;
    broker_start(&b, extra);
    struct corral_client *c = client_connect(&b);
    limiter_set(c, "A", 2);
    limiter_set(c, "B", 1);
    static const char *const a[] = {"A", NULL};
    static const char *const ab[] = {"A", "B", NULL};
    static const char *const bb[] = {"B", NULL};

    struct raw_peer wk;
    raw_worker_register(&wk, &b, LIM_KIND, 1, 8);
    char g[CORRAL_ID_MAX], h1[CORRAL_ID_MAX], h2[CORRAL_ID_MAX], w1[CORRAL_ID_MAX],
        w2[CORRAL_ID_MAX], w3[CORRAL_ID_MAX];
    open_root(c, g);
    submit_lim(c, g, "lim", a, h1);
    uint32_t att1 = rw_expect_dispatch(&wk, h1, WAIT_MS);
    submit_lim(c, g, "lim", ab, h2);
    uint32_t att2 = rw_expect_dispatch(&wk, h2, WAIT_MS);
    submit_lim(c, g, "lim", a, w1);  /* waits for A */
    submit_lim(c, g, "lim", bb, w2); /* waits for B */
    submit_lim(c, g, "lim", ab, w3); /* waits for both */
    struct lim_view a0 = lim_expect(c, "A", 2, 2, 2, (const char *const[]){h1, h2, NULL});
    struct lim_view b0 = lim_expect(c, "B", 1, 1, 2, (const char *const[]){h2, NULL});
    corral_client_free(&c);

    broker_kill9(&b);
    raw_close(&wk);
    broker_restart(&b);

    c = client_connect(&b);
    struct lim_view a1 = lim_read(c, "A"), b1 = lim_read(c, "B");
    expect_same_limiter("A", &a0, &a1);
    expect_same_limiter("B", &b0, &b1);
    struct corral_node *t = get_tree(c, g);
    node_expect(t, h1, CORRAL_STATE_RUNNING, CORRAL_OUTCOME_NONE);
    node_expect(t, h2, CORRAL_STATE_RUNNING, CORRAL_OUTCOME_NONE);
    node_expect(t, w1, CORRAL_STATE_WAITING, CORRAL_OUTCOME_NONE);
    node_expect(t, w2, CORRAL_STATE_WAITING, CORRAL_OUTCOME_NONE);
    node_expect(t, w3, CORRAL_STATE_WAITING, CORRAL_OUTCOME_NONE);
    corral_node_free(&t);

    /* The worker comes back with free slots and announces what it still runs: it gets
     * those back, and the waiters stay waiting (the tokens are still lent). */
    raw_connect(&wk, b.worker_ep);
    const char *running[] = {h1, h2};
    uint32_t attempts[] = {att1, att2};
    Corral__V1__Envelope *r = raw_worker_ready(&wk, LIM_KIND, 1, 8, running, attempts, 2);
    cr_assert_eq(r->reply->code, CORRAL__V1__ERROR_CODE__ERR_OK, "Ready: %s", r->reply->message);
    cr_assert_eq(r->reply->n_reclaimed, 2, "%zu jobs reclaimed, expected 2", r->reply->n_reclaimed);
    corral__v1__envelope__free_unpacked(r, NULL);
    a1 = lim_read(c, "A");
    b1 = lim_read(c, "B");
    expect_same_limiter("A", &a0, &a1);
    expect_same_limiter("B", &b0, &b1);
    rw_expect_quiet(&wk, 300, "after the reclaim, with every token lent");

    /* Finishing the reclaimed jobs hands their tokens on, FIFO, never beyond the totals. */
    rw_done(&wk, h1, att1);
    uint32_t aw1 = rw_expect_dispatch(&wk, w1, WAIT_MS);
    lim_expect(c, "A", 2, 2, 1, (const char *const[]){h2, w1, NULL});
    lim_expect(c, "B", 1, 1, 2, (const char *const[]){h2, NULL});
    rw_done(&wk, h2, att2);
    uint32_t aw2 = rw_expect_dispatch(&wk, w2, WAIT_MS);
    lim_expect(c, "A", 2, 1, 1, (const char *const[]){w1, NULL});
    lim_expect(c, "B", 1, 1, 1, (const char *const[]){w2, NULL});
    rw_done(&wk, w1, aw1);
    rw_expect_quiet(&wk, 200, "W3 still lacks B");
    rw_done(&wk, w2, aw2);
    uint32_t aw3 = rw_expect_dispatch(&wk, w3, WAIT_MS);
    lim_expect(c, "A", 2, 1, 0, (const char *const[]){w3, NULL});
    lim_expect(c, "B", 1, 1, 0, (const char *const[]){w3, NULL});
    rw_done(&wk, w3, aw3);
    lim_expect(c, "A", 2, 0, 0, (const char *const[]){NULL});
    lim_expect(c, "B", 1, 0, 0, (const char *const[]){NULL});

    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    cr_assert_eq(tree_find(t, h1)->attempt, att1, "the reclaimed job ran again");
    cr_assert_eq(tree_find(t, h2)->attempt, att2, "the reclaimed job ran again");
    corral_node_free(&t);

    /* The limits themselves were durable too: a plain restart keeps them. */
    corral_client_free(&c);
    broker_kill9(&b);
    raw_close(&wk);
    broker_restart(&b);
    c = client_connect(&b);
    lim_expect(c, "A", 2, 0, 0, (const char *const[]){NULL});
    lim_expect(c, "B", 1, 0, 0, (const char *const[]){NULL});

    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s10_limiter_leases, tokens_of_a_job_not_reclaimed_after_kill9_are_released)
{
    struct broker b;
    broker_start(&b, NULL); /* reconnect window: the 1 s heartbeat timeout */
    struct corral_client *c = client_connect(&b);
    limiter_set(c, "A", 1);
    static const char *const a[] = {"A", NULL};
    struct raw_peer wk;
    raw_worker_register(&wk, &b, LIM_KIND, 1, 8);
    char g[CORRAL_ID_MAX], h[CORRAL_ID_MAX], w[CORRAL_ID_MAX];
    open_root(c, g);
    cr_assert_eq(try_submit_lim(c, g, "lim", a, 3, 100, h), CORRAL_OK);
    cr_assert_eq(rw_expect_dispatch(&wk, h, WAIT_MS), 1);
    submit_lim(c, g, "lim", a, w);
    lim_expect(c, "A", 1, 1, 1, (const char *const[]){h, NULL});
    corral_client_free(&c);

    broker_kill9(&b);
    raw_close(&wk);
    broker_restart(&b);

    /* The worker comes back without H (it lost it too): H keeps its token for the
     * reconnect window, then is retried and gives it back, and W gets it. */
    c = client_connect(&b);
    lim_expect(c, "A", 1, 1, 1, (const char *const[]){h, NULL});
    raw_worker_register(&wk, &b, LIM_KIND, 1, 8);
    uint64_t deadline = clock_mono_ms() + WAIT_MS;
    uint32_t att_w = 0;
    for (;;) {
        cr_assert(clock_mono_ms() < deadline, "W was not dispatched after the window ended");
        struct lim_view v = lim_sample(c, "A");
        cr_assert(v.nborrowers == 0 || strcmp(v.borrowers[0], h) == 0 ||
                      strcmp(v.borrowers[0], w) == 0,
                  "A is lent to %s", v.borrowers[0]);
        Corral__V1__Envelope *env = raw_worker_next(&wk, 50, true);
        if (env == NULL)
            continue;
        bool dispatch = env->body_case == CORRAL__V1__ENVELOPE__BODY_DISPATCH;
        if (dispatch) {
            cr_assert_str_eq(env->dispatch->job, w, "%s was dispatched before W",
                             env->dispatch->job);
            att_w = env->dispatch->attempt;
        }
        corral__v1__envelope__free_unpacked(env, NULL);
        if (dispatch)
            break;
    }
    lim_expect(c, "A", 1, 1, 0, (const char *const[]){w, NULL});
    /* H, retried, now waits behind W for the token. */
    while (lim_read(c, "A").waiting == 0) {
        cr_assert(clock_mono_ms() < deadline, "H did not come back to wait for A");
        raw_worker_idle(&wk, 20);
    }
    job_expect(c, g, h, CORRAL_STATE_WAITING, CORRAL_OUTCOME_NONE);
    rw_done(&wk, w, att_w);
    uint32_t att_h = rw_expect_dispatch(&wk, h, WAIT_MS);
    cr_assert_eq(att_h, 2);
    lim_expect(c, "A", 1, 1, 0, (const char *const[]){h, NULL});
    rw_done(&wk, h, att_h);
    lim_expect(c, "A", 1, 0, 0, (const char *const[]){NULL});
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    corral_node_free(&t);

    raw_close(&wk);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s10_limiter_leases, limiter_deleted_after_its_jobs_ended_stays_deleted_across_restart)
{
    struct broker b;
    broker_start(&b, NULL);
    struct corral_client *c = client_connect(&b);
    limiter_set(c, "A", 1);
    limiter_set(c, "B", 2);
    static const char *const a[] = {"A", NULL};
    struct raw_peer wk;
    raw_worker_register(&wk, &b, LIM_KIND, 1, 8);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];
    open_root(c, g);
    submit_lim(c, g, "lim", a, j);
    rw_done(&wk, j, rw_expect_dispatch(&wk, j, WAIT_MS));
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, j, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    corral_node_free(&t);
    /* Nothing that has not ended names A: it may go, though an ended job named it. */
    cr_assert_eq(corral_limiter_delete(c, "A"), CORRAL_OK, "delete A: %s",
                 corral_client_last_error(c));
    corral_client_free(&c);
    raw_close(&wk);

    broker_stop(&b);
    broker_restart(&b);

    c = client_connect(&b);
    struct corral_limiter *ls = NULL;
    size_t n = 0;
    cr_assert_eq(corral_limiter_get(c, NULL, &ls, &n), CORRAL_OK);
    cr_assert_eq(n, 1, "%zu limiters after the restart, expected B alone", n);
    cr_assert_str_eq(ls[0].name, "B");
    cr_assert_eq(ls[0].total_tokens, 2);
    corral_limiters_free(&ls, n);
    t = get_tree(c, g);
    node_expect_result(t, j, "ok");
    corral_node_free(&t);

    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}
