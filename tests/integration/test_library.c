/* test_library.c - libcorral's own promises, against the real corrald and, where the test
 * must play the broker, a ROUTER socket of its own: the event filter of
 * corral_subscribe_events (done by the broker, and by the library for a broker that does
 * not know it), a job's cancel fd made after the cancel arrived, and corral_worker_fd
 * being readable exactly while jobs are queued. */
#include <criterion/criterion.h>

#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "clock.h"
#include "harness.h"

#define WAIT_MS 10000

TestSuite(library, .fini = harness_teardown);

/* Whether fd becomes readable within timeout_ms. */
static bool
readable(int fd, int timeout_ms)
{
    struct pollfd p = {fd, POLLIN, 0};

    return poll(&p, 1, timeout_ms) == 1 && (p.revents & POLLIN) != 0;
}

/* The next event within WAIT_MS (asserted), owned. */
static struct corral_event *
next_event(struct corral_client *c)
{
    struct corral_event *ev = NULL;
    int rc = corral_next_event(c, WAIT_MS, &ev);

    cr_assert(rc == CORRAL_OK, "no event: %s", corral_strerror(rc));
    return ev;
}

Test(library, subscribe_events_delivers_only_the_types_asked_and_the_groups_end)
{
    struct broker b;
    broker_start(&b, NULL);
    struct test_worker *w = test_worker_start(&b, 4);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], g2[CORRAL_ID_MAX], j[CORRAL_ID_MAX];
    int ended = 0;

    open_root(c, g);
    /* A type where its bit was meant names bits that are no event type. */
    cr_assert_eq(corral_subscribe_events(c, g, CORRAL_EVENT_JOB_ENDED), CORRAL_EINVAL);
    cr_assert_eq(corral_subscribe_events(c, g, 1u << CORRAL_EVENT_JOB_ENDED), CORRAL_OK);
    for (int i = 0; i < 3; i++)
        submit(c, g, "echo", "x", j);
    open_child(c, g, g2);
    submit(c, g2, "echo", "y", j);
    cr_assert_eq(corral_group_close(c, g2), CORRAL_OK);
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    for (;;) {
        struct corral_event *ev = next_event(c);

        cr_assert_not_null(ev->node);
        cr_assert_str_eq(ev->subscription, g);
        if (ev->type == CORRAL_EVENT_GROUP_ENDED) {
            cr_assert_str_eq(ev->node->id, g, "GROUP_ENDED of %s, not of the subscribed group",
                             ev->node->id);
            corral_event_free(&ev);
            break;
        }
        cr_assert_eq(ev->type, CORRAL_EVENT_JOB_ENDED, "event of type %d", (int)ev->type);
        ended++;
        corral_event_free(&ev);
    }
    cr_assert_eq(ended, 4);
    struct corral_event *ev = NULL;
    cr_assert_eq(corral_next_event(c, 200, &ev), CORRAL_ETIMEDOUT);
    corral_client_free(&c);
    test_worker_stop(&w);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* ---- a broker that knows no filter: the test's ROUTER sends every type ---- */

struct fake_broker {
    void *ctx;
    void *sock;
    char endpoint[300];
    char dir[256];
    unsigned types_seen; /* the bits of the Subscribe's types */
    bool ok;
};

/* Receives one request (identity, frame); returns it unpacked (owned) and the identity. */
static Corral__V1__Envelope *
fake_recv(struct fake_broker *f, zmq_msg_t *id)
{
    zmq_msg_t body;
    Corral__V1__Envelope *env;

    zmq_msg_init(id);
    zmq_msg_init(&body);
    if (zmq_msg_recv(id, f->sock, 0) < 0 || zmq_msg_recv(&body, f->sock, 0) < 0)
        return NULL;
    env = corral__v1__envelope__unpack(NULL, zmq_msg_size(&body), zmq_msg_data(&body));
    zmq_msg_close(&body);
    return env;
}

/* Sends env (borrowed) to the peer id (borrowed). */
static void
fake_send(struct fake_broker *f, zmq_msg_t *id, Corral__V1__Envelope *env)
{
    size_t n = corral__v1__envelope__get_packed_size(env);
    uint8_t *buf = malloc(n + 1);
    zmq_msg_t copy;

    corral__v1__envelope__pack(env, buf);
    zmq_msg_init(&copy);
    zmq_msg_copy(&copy, id);
    zmq_msg_send(&copy, f->sock, ZMQ_SNDMORE);
    zmq_send(f->sock, buf, n, 0);
    free(buf);
}

/* Sends an event of type about node id (a job of kind "k", or a group) for the
 * subscription request rid. */
static void
fake_event(struct fake_broker *f, zmq_msg_t *peer, uint64_t rid, int type, const char *id)
{
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    Corral__V1__Event ev = CORRAL__V1__EVENT__INIT;
    Corral__V1__Node node = CORRAL__V1__NODE__INIT;

    node.id = (char *)id;
    node.type = id[0] == 'j' ? CORRAL__V1__NODE_TYPE__NODE_JOB : CORRAL__V1__NODE_TYPE__NODE_GROUP;
    node.kind = id[0] == 'j' ? "k" : "";
    ev.type = (Corral__V1__EventType)type;
    ev.subscription = "g1";
    ev.node = &node;
    env.version = 1;
    env.request_id = rid;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_EVENT;
    env.event = &ev;
    fake_send(f, peer, &env);
}

/* The fake broker's thread: answers one Subscribe, then sends every type of event. */
static void *
fake_main(void *arg)
{
    struct fake_broker *f = arg;
    zmq_msg_t peer;
    Corral__V1__Envelope *req = fake_recv(f, &peer);
    Corral__V1__Envelope rep = CORRAL__V1__ENVELOPE__INIT;
    Corral__V1__Reply r = CORRAL__V1__REPLY__INIT;

    if (req == NULL || req->body_case != CORRAL__V1__ENVELOPE__BODY_SUBSCRIBE)
        return NULL;
    for (size_t i = 0; i < req->subscribe->n_types; i++)
        f->types_seen |= 1u << req->subscribe->types[i];
    rep.version = 1;
    rep.request_id = req->request_id;
    rep.body_case = CORRAL__V1__ENVELOPE__BODY_REPLY;
    rep.reply = &r;
    fake_send(f, &peer, &rep);
    fake_event(f, &peer, req->request_id, CORRAL_EVENT_JOB_DISPATCHED, "j1");
    fake_event(f, &peer, req->request_id, CORRAL_EVENT_JOB_STARTED, "j1");
    fake_event(f, &peer, req->request_id, CORRAL_EVENT_GROUP_CANCELLING, "g1");
    fake_event(f, &peer, req->request_id, CORRAL_EVENT_JOB_ENDED, "j1");
    fake_event(f, &peer, req->request_id, CORRAL_EVENT_GROUP_ENDED, "g2"); /* a child's */
    fake_event(f, &peer, req->request_id, CORRAL_EVENT_GROUP_ENDED, "g1");
    corral__v1__envelope__free_unpacked(req, NULL);
    zmq_msg_close(&peer);
    f->ok = true;
    return NULL;
}

Test(library, subscribe_events_filters_what_an_old_broker_sends)
{
    struct fake_broker f;
    struct corral_client *c = NULL;
    pthread_t th;
    int linger = 0;

    memset(&f, 0, sizeof f);
    snprintf(f.dir, sizeof f.dir, "/tmp/corral-lib-XXXXXX");
    cr_assert_not_null(mkdtemp(f.dir));
    snprintf(f.endpoint, sizeof f.endpoint, "ipc://%s/c.sock", f.dir);
    f.ctx = zmq_ctx_new();
    f.sock = zmq_socket(f.ctx, ZMQ_ROUTER);
    zmq_setsockopt(f.sock, ZMQ_LINGER, &linger, sizeof linger);
    cr_assert_eq(zmq_bind(f.sock, f.endpoint), 0);
    cr_assert_eq(pthread_create(&th, NULL, fake_main, &f), 0);
    cr_assert_eq(corral_client_new(&c, f.endpoint, 5000), CORRAL_OK);
    cr_assert_eq(corral_subscribe_events(c, "g1", 1u << CORRAL_EVENT_JOB_ENDED), CORRAL_OK, "%s",
                 corral_client_last_error(c));
    pthread_join(th, NULL);
    cr_assert(f.ok);
    cr_assert_eq(f.types_seen, 1u << CORRAL_EVENT_JOB_ENDED);

    struct corral_event *ev = next_event(c);
    cr_assert_eq(ev->type, CORRAL_EVENT_JOB_ENDED);
    cr_assert_str_eq(ev->node->id, "j1");
    corral_event_free(&ev);
    ev = next_event(c);
    cr_assert_eq(ev->type, CORRAL_EVENT_GROUP_ENDED);
    cr_assert_str_eq(ev->node->id, "g1");
    corral_event_free(&ev);
    cr_assert_eq(corral_next_event(c, 200, &ev), CORRAL_ETIMEDOUT);

    corral_client_free(&c);
    zmq_close(f.sock);
    zmq_ctx_term(f.ctx);
    char path[300];
    snprintf(path, sizeof path, "%s/c.sock", f.dir);
    unlink(path);
    rmdir(f.dir);
}

/* ---- the worker's descriptors ---- */

Test(library, worker_fd_follows_the_queue_and_a_late_cancel_fd_is_readable_at_once)
{
    struct broker b;
    broker_start(&b, NULL);
    struct corral_client *c = client_connect(&b);
    static const char *const kinds[] = {"lazy"};
    struct corral_worker *w = NULL;
    struct corral_job *j1 = NULL, *j2 = NULL;
    char g[CORRAL_ID_MAX], a[CORRAL_ID_MAX], a2[CORRAL_ID_MAX];

    cr_assert_eq(corral_worker_new(&w, b.worker_ep, kinds, 1, 2), CORRAL_OK);
    int wfd = corral_worker_fd(w);
    cr_assert(wfd >= 0);
    cr_assert(!readable(wfd, 0), "readable with no job queued");
    open_root(c, g);
    submit(c, g, "lazy", NULL, a);
    submit(c, g, "lazy", NULL, a2);
    cr_assert(readable(wfd, WAIT_MS), "not readable once a job was dispatched");
    cr_assert_eq(corral_worker_next(w, WAIT_MS, &j1), CORRAL_OK);
    cr_assert_eq(corral_worker_next(w, WAIT_MS, &j2), CORRAL_OK);
    cr_assert(!readable(wfd, 0), "readable with the queue empty");
    if (strcmp(corral_job_id(j1), a) != 0) {
        struct corral_job *t = j1;
        j1 = j2;
        j2 = t;
    }
    cr_assert_str_eq(corral_job_id(j1), a);

    /* j1: the cancel arrives before anyone asks for the fd. */
    cr_assert_eq(corral_job_cancel(c, a, "late fd"), CORRAL_OK);
    uint64_t end = clock_mono_ms() + WAIT_MS;
    while (!corral_job_cancelled(j1) && clock_mono_ms() < end)
        usleep(1000);
    cr_assert(corral_job_cancelled(j1));
    int fd1 = corral_job_cancel_fd(j1);
    cr_assert(fd1 >= 0);
    cr_assert(readable(fd1, 0), "a cancel fd made after the cancel is not readable");
    cr_assert_eq(corral_job_cancel_fd(j1), fd1, "a second call made another fd");
    cr_assert_str_eq(corral_job_cancel_reason(j1), "late fd");

    /* j2: the fd is asked for first, then the cancel comes. */
    int fd2 = corral_job_cancel_fd(j2);
    cr_assert(fd2 >= 0);
    cr_assert(!readable(fd2, 0), "readable before any cancel");
    cr_assert(!corral_job_cancelled(j2));
    cr_assert_eq(corral_job_cancel(c, a2, NULL), CORRAL_OK);
    cr_assert(readable(fd2, WAIT_MS), "the cancel did not make the fd readable");
    cr_assert(corral_job_cancelled(j2));

    cr_assert_eq(corral_job_ack_cancel(j1), CORRAL_OK);
    cr_assert_eq(corral_job_ack_cancel(j2), CORRAL_OK);
    corral_job_free(&j1);
    corral_job_free(&j2);
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    cr_assert_eq(t->nchildren, 2);
    for (size_t i = 0; i < t->nchildren; i++)
        cr_assert_eq(t->children[i].outcome, CORRAL_OUTCOME_CANCELLED);
    corral_node_free(&t);
    corral_worker_free(&w);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}
