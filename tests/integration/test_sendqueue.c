/* test_sendqueue.c - DESIGN.md S11 at the outgoing queues: each peer's queue at the
 * broker is bounded (--send-hwm); at the bound, replies wait in the broker's backlog
 * until the peer reads (never dropped), and a subscription that cannot keep up ends with
 * one EVENT_SUBSCRIPTION_OVERFLOW instead of losing events silently. The peers here
 * read nothing for a while, with tiny queues of their own, and large messages so that
 * the kernel's socket buffers fill too. */
#include <criterion/criterion.h>

#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "clock.h"
#include "harness.h"

#define BIG (256 * 1024) /* bytes of each job's result */

TestSuite(s11_send_queues, .fini = harness_teardown);

static const char *const RAW_KINDS[] = {"raw"};
static const char *const HWM_ARGS[] = {"--send-hwm", "2", NULL};

/* A DEALER on endpoint whose own receive queue holds at most 2 messages. */
static void
tiny_connect(struct raw_peer *p, const char *endpoint)
{
    memset(p, 0, sizeof *p);
    p->next_request_id = 1;
    p->ctx = zmq_ctx_new();
    cr_assert_not_null(p->ctx);
    p->sock = zmq_socket(p->ctx, ZMQ_DEALER);
    cr_assert_not_null(p->sock);
    int v = 0;
    zmq_setsockopt(p->sock, ZMQ_LINGER, &v, sizeof v);
    v = 2;
    zmq_setsockopt(p->sock, ZMQ_RCVHWM, &v, sizeof v);
    v = 4096;
    zmq_setsockopt(p->sock, ZMQ_RCVBUF, &v, sizeof v);
    cr_assert_eq(zmq_connect(p->sock, endpoint), 0);
}

/* Runs n jobs of kind "raw" in group g on the raw worker wk, each with a BIG result. */
static void
run_big_jobs(struct corral_client *c, struct raw_peer *wk, const char *g, int n)
{
    char *result = malloc(BIG + 1);
    cr_assert_not_null(result);
    memset(result, 'r', BIG);
    result[BIG] = '\0';
    for (int i = 0; i < n; i++) {
        char j[CORRAL_ID_MAX];
        submit(c, g, "raw", "p", j);
        Corral__V1__Envelope *d =
            raw_worker_expect(wk, CORRAL__V1__ENVELOPE__BODY_DISPATCH, 5000, true);
        cr_assert_not_null(d, "no Dispatch for job %d", i);
        cr_assert_eq(raw_worker_done(wk, d->dispatch->job, d->dispatch->attempt, result),
                     CORRAL_OK);
        corral__v1__envelope__free_unpacked(d, NULL);
    }
    free(result);
}

Test(s11_send_queues, slow_subscriber_gets_overflow_as_its_last_event)
{
    struct broker b;
    broker_start(&b, HWM_ARGS);
    struct corral_client *c = client_connect(&b);
    struct raw_peer wk, sub;
    raw_worker_register(&wk, &b, RAW_KINDS, 1, 1);
    char g[CORRAL_ID_MAX];
    open_root(c, g);

    tiny_connect(&sub, b.client_ep);
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    Corral__V1__Subscribe s = CORRAL__V1__SUBSCRIBE__INIT;
    s.group = g;
    env.version = 1;
    env.request_id = 77;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_SUBSCRIBE;
    env.subscribe = &s;
    raw_send(&sub, &env);
    Corral__V1__Envelope *ok = raw_expect_reply(&sub, 77, 5000);
    cr_assert_eq(ok->reply->code, CORRAL__V1__ERROR_CODE__ERR_OK);
    corral__v1__envelope__free_unpacked(ok, NULL);

    /* 60 jobs: 120 events, 60 of them carrying 256 KiB, while the subscriber reads
     * nothing. The broker keeps serving everyone else meanwhile. */
    run_big_jobs(c, &wk, g, 60);
    struct corral_node *t = get_tree(c, g);
    cr_assert_eq(t->nchildren, 60);
    corral_node_free(&t);

    /* Now it reads: the events it got, then exactly one overflow, then nothing. */
    size_t events = 0, overflows = 0, after = 0;
    Corral__V1__Envelope *m;
    while ((m = raw_recv(&sub, 1500)) != NULL) {
        cr_assert_eq(m->body_case, CORRAL__V1__ENVELOPE__BODY_EVENT);
        cr_assert_eq(m->request_id, 77);
        if (m->event->type == CORRAL__V1__EVENT_TYPE__EVENT_SUBSCRIPTION_OVERFLOW) {
            overflows++;
            cr_assert_str_eq(m->event->subscription, g);
        } else if (overflows > 0) {
            after++;
        } else {
            events++;
        }
        corral__v1__envelope__free_unpacked(m, NULL);
    }
    cr_assert_eq(overflows, 1, "%zu overflow events", overflows);
    cr_assert_eq(after, 0, "%zu events after the overflow", after);
    cr_assert_lt(events, 120, "every event arrived: the queue never filled");

    raw_close(&sub);
    raw_close(&wk);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s11_send_queues, replies_to_a_client_that_does_not_read_wait_and_all_arrive)
{
    struct broker b;
    broker_start(&b, HWM_ARGS);
    struct corral_client *c = client_connect(&b);
    struct raw_peer wk, slow;
    raw_worker_register(&wk, &b, RAW_KINDS, 1, 1);
    char g[CORRAL_ID_MAX];
    open_root(c, g);
    run_big_jobs(c, &wk, g, 20); /* each tree is about 5 MiB */

    tiny_connect(&slow, b.client_ep);
    enum { N = 12 };
    for (uint64_t i = 1; i <= N; i++) {
        Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
        Corral__V1__GetTree gt = CORRAL__V1__GET_TREE__INIT;
        gt.group = g;
        env.version = 1;
        env.request_id = i;
        env.body_case = CORRAL__V1__ENVELOPE__BODY_GET_TREE;
        env.get_tree = &gt;
        raw_send(&slow, &env);
    }
    /* Others are served while those replies wait. */
    struct corral_node *t = get_tree(c, g);
    cr_assert_eq(t->nchildren, 20);
    corral_node_free(&t);

    /* Every reply arrives, in order, complete. */
    for (uint64_t i = 1; i <= N; i++) {
        Corral__V1__Envelope *r = raw_recv(&slow, 10000);
        cr_assert_not_null(r, "reply %llu never arrived", (unsigned long long)i);
        cr_assert_eq(r->body_case, CORRAL__V1__ENVELOPE__BODY_REPLY);
        cr_assert_eq(r->request_id, i);
        cr_assert_eq(r->reply->code, CORRAL__V1__ERROR_CODE__ERR_OK);
        cr_assert_eq(r->reply->tree->n_children, 20);
        corral__v1__envelope__free_unpacked(r, NULL);
    }

    raw_close(&slow);
    raw_close(&wk);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}
