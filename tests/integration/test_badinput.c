/* test_badinput.c - acceptance 4 of issue 2: bad input never crashes corrald.
 *
 * Raw DEALER peers on both endpoints send random bytes, truncated protobuf, wrong frame
 * counts, unknown and malformed ids, unsupported versions, empty envelopes, requests on
 * the wrong endpoint, submissions to ended groups, payloads over the soft limit and a
 * message over the hard cap. Each gets a clear error reply (or, for the hard cap, the
 * documented disconnect: libzmq drops the connection of a peer that sends a message over
 * ZMQ_MAXMSGSIZE, with no reply), and afterwards the broker still serves a normal request
 * correctly: a group is opened, a job submitted, a real worker's result read back. Every
 * test ends with broker_stop, which asserts corrald exits 0: it never crashed.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#define REPLY_TIMEOUT_MS 5000

typedef Corral__V1__Envelope Env;

static uint64_t g_rid = 1000;

/* An envelope of version 1 with a fresh request id and no body. */
static void
env_init(Env *e)
{
    Env init = CORRAL__V1__ENVELOPE__INIT;
    *e = init;
    e->version = CORRAL_PROTOCOL_VERSION;
    e->request_id = g_rid++;
}

/* Receives the next Reply within timeout_ms, skipping anything else (Dispatch, Cancel);
 * NULL if none arrived. */
static Env *
recv_reply(struct raw_peer *p, int timeout_ms)
{
    for (;;) {
        Env *r = raw_recv(p, timeout_ms);
        if (!r || r->body_case == CORRAL__V1__ENVELOPE__BODY_REPLY) {
            return r;
        }
        corral__v1__envelope__free_unpacked(r, NULL);
    }
}

/* Receives the next message with the given body within timeout_ms, asserting it comes. */
static Env *
recv_body(struct raw_peer *p, Corral__V1__Envelope__BodyCase body, int timeout_ms)
{
    for (;;) {
        Env *r = raw_recv(p, timeout_ms);
        cr_assert_not_null(r, "no message with body %d within %d ms", body, timeout_ms);
        if (r->body_case == body) {
            return r;
        }
        corral__v1__envelope__free_unpacked(r, NULL);
    }
}

/* Sends env and returns its Reply, asserting one comes back with env's request id. */
static Env *
call(struct raw_peer *p, const Env *env, const char *what)
{
    raw_send(p, env);
    Env *r = recv_reply(p, REPLY_TIMEOUT_MS);
    cr_assert_not_null(r, "%s: no reply within %d ms", what, REPLY_TIMEOUT_MS);
    cr_assert_eq(r->request_id, env->request_id, "%s: reply carries request id %lu, sent %lu", what,
                 (unsigned long)r->request_id, (unsigned long)env->request_id);
    return r;
}

/* Sends env and asserts the reply has the given code and a non-empty message. */
static void
call_expect(struct raw_peer *p, const Env *env, Corral__V1__ErrorCode code, const char *what)
{
    Env *r = call(p, env, what);
    cr_assert_eq(r->reply->code, code, "%s: got code %d (%s), want %d", what, r->reply->code,
                 r->reply->message, code);
    if (code != CORRAL__V1__ERROR_CODE__ERR_OK) {
        cr_assert(r->reply->message && r->reply->message[0], "%s: error without a message", what);
    }
    corral__v1__envelope__free_unpacked(r, NULL);
}

/* Sends env and asserts the reply has one of two codes and a non-empty message. */
static void
call_expect2(struct raw_peer *p, const Env *env, Corral__V1__ErrorCode a, Corral__V1__ErrorCode b,
             const char *what)
{
    Env *r = call(p, env, what);
    cr_assert(r->reply->code == a || r->reply->code == b, "%s: got code %d (%s), want %d or %d",
              what, r->reply->code, r->reply->message, a, b);
    cr_assert(r->reply->message && r->reply->message[0], "%s: error without a message", what);
    cr_log_info("%s -> %d: %s", what, r->reply->code, r->reply->message);
    corral__v1__envelope__free_unpacked(r, NULL);
}

/* Asserts nothing at all arrives on p within timeout_ms (exactly one reply per message). */
static void
expect_silence(struct raw_peer *p, int timeout_ms, const char *what)
{
    Env *r = raw_recv(p, timeout_ms);
    cr_assert_null(r, "%s: unexpected extra message (body %d)", what, r ? r->body_case : 0);
}

/* Sends bytes as one frame. When they do not parse as an Envelope the reply must be
 * ERR_BAD_REQUEST with request id 0 (the broker cannot know the id); when they happen to
 * parse, there must still be exactly one reply, carrying the parsed request id. */
static void
send_garbage(struct raw_peer *p, const uint8_t *bytes, size_t len, const char *what)
{
    const void *frames[1] = {bytes};
    size_t lens[1] = {len};
    Env *parsed = corral__v1__envelope__unpack(NULL, len, bytes);
    raw_send_frames(p, frames, lens, 1);
    Env *r = recv_reply(p, REPLY_TIMEOUT_MS);
    cr_assert_not_null(r, "%s (%zu bytes, %s): no reply", what, len,
                       parsed ? "parses" : "does not parse");
    if (!parsed) {
        cr_assert_eq(r->reply->code, CORRAL__V1__ERROR_CODE__ERR_BAD_REQUEST,
                     "%s (%zu bytes): code %d (%s), want ERR_BAD_REQUEST", what, len,
                     r->reply->code, r->reply->message);
        cr_assert_eq(r->request_id, 0, "%s: unparseable input answered with request id %lu", what,
                     (unsigned long)r->request_id);
        cr_assert(r->reply->message && r->reply->message[0], "%s: no message", what);
    } else {
        cr_assert_eq(r->request_id, parsed->request_id,
                     "%s: parseable input answered with request id %lu, not %lu", what,
                     (unsigned long)r->request_id, (unsigned long)parsed->request_id);
        corral__v1__envelope__free_unpacked(parsed, NULL);
    }
    corral__v1__envelope__free_unpacked(r, NULL);
}

/* The normal request the broker must still serve: open a group, submit an echo job, close
 * the group and read the worker's result back. A test worker must be running. */
static void
check_serves(const struct broker *b, const char *tag)
{
    struct corral_client *c = client_connect(b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];
    char payload[96];
    snprintf(payload, sizeof payload, "still-serving-after-%s", tag);
    open_root(c, g);
    submit(c, g, "echo", payload, j);
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    struct corral_node *t = wait_group(c, g, 10000);
    cr_assert_eq(t->outcome, CORRAL_OUTCOME_SUCCEEDED, "after %s: group outcome %d", tag,
                 t->outcome);
    const struct corral_node *n = tree_find(t, j);
    cr_assert_not_null(n, "after %s: job %s missing", tag, j);
    cr_assert_eq(n->outcome, CORRAL_OUTCOME_SUCCEEDED, "after %s: job outcome %d", tag, n->outcome);
    cr_assert(n->result_len == strlen(payload) && memcmp(n->result, payload, n->result_len) == 0,
              "after %s: wrong result", tag);
    corral_node_free(&t);
    corral_client_free(&c);
}

/* Opens a root group through a raw peer; returns its id in id. */
static void
raw_open_root(struct raw_peer *p, char id[CORRAL_ID_MAX])
{
    Env e;
    Corral__V1__OpenGroup og = CORRAL__V1__OPEN_GROUP__INIT;
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_OPEN_GROUP;
    e.open_group = &og;
    Env *r = call(p, &e, "raw open");
    cr_assert_eq(r->reply->code, CORRAL__V1__ERROR_CODE__ERR_OK, "raw open: %s", r->reply->message);
    cr_assert(r->reply->id && r->reply->id[0] && strlen(r->reply->id) < CORRAL_ID_MAX);
    snprintf(id, CORRAL_ID_MAX, "%s", r->reply->id);
    corral__v1__envelope__free_unpacked(r, NULL);
}

static void
start(struct broker *b, struct test_worker **w, const char *const *extra)
{
    const char *const none[] = {NULL};
    broker_start(b, extra ? extra : none);
    *w = test_worker_start(b, 4);
}

static void
finish(struct broker *b, struct test_worker **w)
{
    test_worker_stop(w);
    broker_stop(b); /* asserts exit status 0: the broker never crashed */
    broker_cleanup(b);
}

/* ------------------------------------------------------------------ random bytes */

static void
fill_random(uint8_t *buf, size_t len, unsigned *seed)
{
    for (size_t i = 0; i < len; i++) {
        buf[i] = (uint8_t)rand_r(seed);
    }
}

static size_t
random_len(unsigned *seed)
{
    static const size_t tops[] = {4, 16, 64, 256, 1024, 4096, 20000};
    size_t top = tops[(unsigned)rand_r(seed) % (sizeof tops / sizeof tops[0])];
    return 1 + (size_t)rand_r(seed) % top;
}

/* 200 random messages on one endpoint: half pure noise, half starting like a real
 * envelope (version 1, a request id, then a field tag of a body) and continuing as noise,
 * so that the decoder gets past the first byte. */
static void
random_flood(const struct broker *b, const char *endpoint, unsigned seed, const char *side)
{
    struct raw_peer p;
    raw_connect(&p, endpoint);
    uint8_t *buf = malloc(20000 + 16);
    cr_assert_not_null(buf);
    size_t parsed = 0;
    for (int i = 0; i < 200; i++) {
        size_t len = random_len(&seed);
        fill_random(buf, len, &seed);
        if (i % 2 == 1 && len > 6) {
            static const uint8_t tags[] = {0x52, 0x5a, 0x62, 0x6a, 0xf2, 0xfa, 0x8a};
            buf[0] = 0x08; /* version = 1 */
            buf[1] = 0x01;
            buf[2] = 0x10; /* request_id = 7 */
            buf[3] = 0x07;
            buf[4] = tags[(unsigned)rand_r(&seed) % sizeof tags];
            if (buf[4] == 0xf2 || buf[4] == 0xfa || buf[4] == 0x8a) {
                buf[5] = buf[4] == 0x8a ? 0x02 : 0x01; /* two-byte tags: fields 30, 31, 33 */
            }
        }
        Env *probe = corral__v1__envelope__unpack(NULL, len, buf);
        if (probe) {
            parsed++;
            corral__v1__envelope__free_unpacked(probe, NULL);
        }
        char what[64];
        snprintf(what, sizeof what, "%s random message %d", side, i);
        send_garbage(&p, buf, len, what);
        if (i % 40 == 39) {
            check_serves(b, what);
        }
    }
    cr_log_info("%s: 200 random messages, %zu of them parse as an Envelope", side, parsed);
    free(buf);
    raw_close(&p);
}

Test(badinput, random_bytes_both_endpoints, .timeout = 120)
{
    struct broker b;
    struct test_worker *w;
    start(&b, &w, NULL);
    random_flood(&b, b.client_ep, 12345u, "client");
    random_flood(&b, b.worker_ep, 67890u, "worker");
    check_serves(&b, "random bytes");
    finish(&b, &w);
}

/* An empty frame parses as an Envelope with version 0 and no body. */
Test(badinput, empty_frame, .timeout = 60)
{
    struct broker b;
    struct test_worker *w;
    start(&b, &w, NULL);
    struct raw_peer p;
    raw_connect(&p, b.client_ep);
    const void *frames[1] = {""};
    size_t lens[1] = {0};
    raw_send_frames(&p, frames, lens, 1);
    Env *r = recv_reply(&p, REPLY_TIMEOUT_MS);
    cr_assert_not_null(r, "no reply to an empty frame");
    cr_assert(r->reply->code == CORRAL__V1__ERROR_CODE__ERR_BAD_REQUEST ||
                  r->reply->code == CORRAL__V1__ERROR_CODE__ERR_UNSUPPORTED_VERSION,
              "empty frame: code %d (%s)", r->reply->code, r->reply->message);
    corral__v1__envelope__free_unpacked(r, NULL);
    raw_close(&p);
    check_serves(&b, "empty frame");
    finish(&b, &w);
}

/* ------------------------------------------------------------------ truncation */

Test(badinput, truncated_submit, .timeout = 60)
{
    struct broker b;
    struct test_worker *w;
    start(&b, &w, NULL);
    struct raw_peer p;
    raw_connect(&p, b.client_ep);
    char g[CORRAL_ID_MAX];
    raw_open_root(&p, g);

    Env e;
    Corral__V1__Submit sub = CORRAL__V1__SUBMIT__INIT;
    static const char payload[] = "a payload long enough to be cut in many places, 0123456789";
    env_init(&e);
    sub.group = g;
    sub.kind = "echo";
    sub.payload.data = (uint8_t *)payload;
    sub.payload.len = sizeof payload - 1;
    e.body_case = CORRAL__V1__ENVELOPE__BODY_SUBMIT;
    e.submit = &sub;
    size_t len = corral__v1__envelope__get_packed_size(&e);
    uint8_t *buf = malloc(len);
    cr_assert_not_null(buf);
    corral__v1__envelope__pack(&e, buf);

    /* Every proper prefix: either it does not parse (BAD_REQUEST, request id 0) or it is
     * an envelope cut before its body (BAD_REQUEST too: no body). */
    size_t unparsed = 0;
    for (size_t cut = 1; cut < len; cut++) {
        const void *frames[1] = {buf};
        size_t lens[1] = {cut};
        Env *probe = corral__v1__envelope__unpack(NULL, cut, buf);
        raw_send_frames(&p, frames, lens, 1);
        Env *r = recv_reply(&p, REPLY_TIMEOUT_MS);
        cr_assert_not_null(r, "prefix %zu/%zu: no reply", cut, len);
        cr_assert_eq(r->reply->code, CORRAL__V1__ERROR_CODE__ERR_BAD_REQUEST,
                     "prefix %zu/%zu: code %d (%s)", cut, len, r->reply->code, r->reply->message);
        if (!probe) {
            unparsed++;
            cr_assert_eq(r->request_id, 0, "prefix %zu: request id %lu", cut,
                         (unsigned long)r->request_id);
        } else {
            cr_assert_eq(probe->body_case, CORRAL__V1__ENVELOPE__BODY__NOT_SET);
            corral__v1__envelope__free_unpacked(probe, NULL);
        }
        corral__v1__envelope__free_unpacked(r, NULL);
    }
    cr_assert_gt(unparsed, len / 2, "the prefixes should mostly not parse");
    free(buf);

    /* None of them created a job. */
    struct corral_client *c = client_connect(&b);
    struct corral_node *t = NULL;
    cr_assert_eq(corral_group_tree(c, g, &t), CORRAL_OK);
    cr_assert_eq(t->nchildren, 0, "a truncated submit created %zu job(s)", t->nchildren);
    corral_node_free(&t);
    corral_client_free(&c);

    /* And the full message is still fine on the same connection. */
    e.request_id = g_rid++;
    call_expect(&p, &e, CORRAL__V1__ERROR_CODE__ERR_OK, "full submit after truncations");
    raw_close(&p);
    check_serves(&b, "truncated submit");
    finish(&b, &w);
}

/* ------------------------------------------------------------------ frame counts */

static void
frames_expect_bad(struct raw_peer *p, const void *const *frames, const size_t *lens, size_t n,
                  const char *what)
{
    raw_send_frames(p, frames, lens, n);
    Env *r = recv_reply(p, REPLY_TIMEOUT_MS);
    cr_assert_not_null(r, "%s: no reply", what);
    cr_assert_eq(r->reply->code, CORRAL__V1__ERROR_CODE__ERR_BAD_REQUEST, "%s: code %d (%s)", what,
                 r->reply->code, r->reply->message);
    cr_assert(r->reply->message && r->reply->message[0], "%s: no message", what);
    corral__v1__envelope__free_unpacked(r, NULL);
    expect_silence(p, 300, what);
}

static void
wrong_frames_on(const struct broker *b, bool worker_side)
{
    const char *endpoint = worker_side ? b->worker_ep : b->client_ep;
    const char *side = worker_side ? "worker" : "client";
    struct raw_peer p;
    raw_connect(&p, endpoint);
    Env e;
    Corral__V1__OpenGroup og = CORRAL__V1__OPEN_GROUP__INIT;
    Corral__V1__Ready rd = CORRAL__V1__READY__INIT;
    char *kinds[] = {"never-served"};
    env_init(&e);
    if (worker_side) {
        rd.n_kinds = 1;
        rd.kinds = kinds;
        rd.concurrency = 1;
        e.body_case = CORRAL__V1__ENVELOPE__BODY_READY;
        e.ready = &rd;
    } else {
        e.body_case = CORRAL__V1__ENVELOPE__BODY_OPEN_GROUP;
        e.open_group = &og;
    }
    size_t len = corral__v1__envelope__get_packed_size(&e);
    uint8_t *buf = malloc(len);
    cr_assert_not_null(buf);
    corral__v1__envelope__pack(&e, buf);
    char what[96];

    const void *two[2] = {buf, "trailing"};
    size_t two_lens[2] = {len, 8};
    snprintf(what, sizeof what, "%s: 2 frames (envelope + junk)", side);
    frames_expect_bad(&p, two, two_lens, 2, what);

    const void *delim[2] = {"", buf}; /* a REQ-style empty delimiter first */
    size_t delim_lens[2] = {0, len};
    snprintf(what, sizeof what, "%s: 2 frames (empty delimiter + envelope)", side);
    frames_expect_bad(&p, delim, delim_lens, 2, what);

    const void *three[3] = {buf, buf, buf};
    size_t three_lens[3] = {len, len, len};
    snprintf(what, sizeof what, "%s: 3 frames", side);
    frames_expect_bad(&p, three, three_lens, 3, what);

    free(buf);
    raw_close(&p);
    check_serves(b, what);
}

Test(badinput, wrong_frame_count, .timeout = 60)
{
    struct broker b;
    struct test_worker *w;
    start(&b, &w, NULL);
    wrong_frames_on(&b, false);
    wrong_frames_on(&b, true);
    finish(&b, &w);
}

/* ------------------------------------------------------------------ ids */

/* Sends each client request naming `id` and expects one of the codes (b == a: just a). */
static void
requests_naming(struct raw_peer *p, const char *id, Corral__V1__ErrorCode a,
                Corral__V1__ErrorCode b)
{
    char what[128];
    Env e;

    Corral__V1__Submit sub = CORRAL__V1__SUBMIT__INIT;
    sub.group = (char *)id;
    sub.kind = "echo";
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_SUBMIT;
    e.submit = &sub;
    snprintf(what, sizeof what, "submit into \"%.24s\"", id);
    call_expect2(p, &e, a, b, what);

    Corral__V1__CloseGroup cl = CORRAL__V1__CLOSE_GROUP__INIT;
    cl.group = (char *)id;
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_CLOSE_GROUP;
    e.close_group = &cl;
    snprintf(what, sizeof what, "close \"%.24s\"", id);
    call_expect2(p, &e, a, b, what);

    Corral__V1__CancelGroup cg = CORRAL__V1__CANCEL_GROUP__INIT;
    cg.group = (char *)id;
    cg.reason = "bad input test";
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_CANCEL_GROUP;
    e.cancel_group = &cg;
    snprintf(what, sizeof what, "cancel group \"%.24s\"", id);
    call_expect2(p, &e, a, b, what);

    Corral__V1__CancelJob cj = CORRAL__V1__CANCEL_JOB__INIT;
    cj.job = (char *)id;
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_CANCEL_JOB;
    e.cancel_job = &cj;
    snprintf(what, sizeof what, "cancel job \"%.24s\"", id);
    call_expect2(p, &e, a, b, what);

    Corral__V1__GetTree gt = CORRAL__V1__GET_TREE__INIT;
    gt.group = (char *)id;
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_GET_TREE;
    e.get_tree = &gt;
    snprintf(what, sizeof what, "tree of \"%.24s\"", id);
    call_expect2(p, &e, a, b, what);

    Corral__V1__WaitGroup wg = CORRAL__V1__WAIT_GROUP__INIT;
    wg.group = (char *)id;
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_WAIT_GROUP;
    e.wait_group = &wg;
    snprintf(what, sizeof what, "wait for \"%.24s\"", id);
    call_expect2(p, &e, a, b, what);

    Corral__V1__Subscribe sb = CORRAL__V1__SUBSCRIBE__INIT;
    sb.group = (char *)id;
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_SUBSCRIBE;
    e.subscribe = &sb;
    snprintf(what, sizeof what, "subscribe to \"%.24s\"", id);
    call_expect2(p, &e, a, b, what);
}

Test(badinput, unknown_ids, .timeout = 60)
{
    struct broker b;
    struct test_worker *w;
    start(&b, &w, NULL);
    struct raw_peer p;
    raw_connect(&p, b.client_ep);
    requests_naming(&p, "g999999", CORRAL__V1__ERROR_CODE__ERR_NOT_FOUND,
                    CORRAL__V1__ERROR_CODE__ERR_NOT_FOUND);
    requests_naming(&p, "j999999", CORRAL__V1__ERROR_CODE__ERR_NOT_FOUND,
                    CORRAL__V1__ERROR_CODE__ERR_NOT_FOUND);

    /* Unknown parents. */
    Env e;
    Corral__V1__OpenGroup og = CORRAL__V1__OPEN_GROUP__INIT;
    og.parent_group = "g999999";
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_OPEN_GROUP;
    e.open_group = &og;
    call_expect(&p, &e, CORRAL__V1__ERROR_CODE__ERR_NOT_FOUND, "open under unknown group");
    Corral__V1__OpenGroup oj = CORRAL__V1__OPEN_GROUP__INIT;
    oj.parent_job = "j999999";
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_OPEN_GROUP;
    e.open_group = &oj;
    call_expect(&p, &e, CORRAL__V1__ERROR_CODE__ERR_NOT_FOUND, "open under unknown job");

    /* The same through libcorral: the codes and a message reach the caller. */
    struct corral_client *c = client_connect(&b);
    char id[CORRAL_ID_MAX];
    cr_assert_eq(corral_submit(c, "g999999", "echo", "x", 1, id, NULL), CORRAL_ENOTFOUND);
    cr_assert(corral_client_last_error(c)[0], "no message for ENOTFOUND");
    cr_assert_eq(corral_group_close(c, "g999999"), CORRAL_ENOTFOUND);
    cr_assert_eq(corral_group_cancel(c, "g999999", NULL), CORRAL_ENOTFOUND);
    cr_assert_eq(corral_job_cancel(c, "j999999", NULL), CORRAL_ENOTFOUND);
    struct corral_node *t = NULL;
    cr_assert_eq(corral_group_tree(c, "g999999", &t), CORRAL_ENOTFOUND);
    cr_assert_eq(corral_group_wait(c, "g999999", 2000, &t), CORRAL_ENOTFOUND);
    cr_assert_null(t);
    corral_client_free(&c);

    raw_close(&p);
    check_serves(&b, "unknown ids");
    finish(&b, &w);
}

Test(badinput, malformed_ids, .timeout = 60)
{
    struct broker b;
    struct test_worker *w;
    start(&b, &w, NULL);
    struct raw_peer p;
    raw_connect(&p, b.client_ep);
    char long_id[300];
    memset(long_id, 'g', sizeof long_id - 1);
    long_id[sizeof long_id - 1] = '\0';
    static const char *const bad[] = {"", "zzz", "g", "g-1", "g1x", "j", "\x01\x02"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        requests_naming(&p, bad[i], CORRAL__V1__ERROR_CODE__ERR_NOT_FOUND,
                        CORRAL__V1__ERROR_CODE__ERR_BAD_REQUEST);
    }
    requests_naming(&p, long_id, CORRAL__V1__ERROR_CODE__ERR_NOT_FOUND,
                    CORRAL__V1__ERROR_CODE__ERR_BAD_REQUEST);

    /* A submit without a kind is a missing field. */
    char g[CORRAL_ID_MAX];
    raw_open_root(&p, g);
    Env e;
    Corral__V1__Submit sub = CORRAL__V1__SUBMIT__INIT;
    sub.group = g;
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_SUBMIT;
    e.submit = &sub;
    call_expect(&p, &e, CORRAL__V1__ERROR_CODE__ERR_BAD_REQUEST, "submit without a kind");

    raw_close(&p);
    check_serves(&b, "malformed ids");
    finish(&b, &w);
}

/* ------------------------------------------------------------------ versions, bodies */

Test(badinput, unsupported_version, .timeout = 60)
{
    struct broker b;
    struct test_worker *w;
    start(&b, &w, NULL);
    static const uint32_t versions[] = {2, 0, 99};
    for (int side = 0; side < 2; side++) {
        struct raw_peer p;
        raw_connect(&p, side == 0 ? b.client_ep : b.worker_ep);
        for (size_t i = 0; i < sizeof versions / sizeof versions[0]; i++) {
            Env e;
            Corral__V1__OpenGroup og = CORRAL__V1__OPEN_GROUP__INIT;
            Corral__V1__Heartbeat hb = CORRAL__V1__HEARTBEAT__INIT;
            env_init(&e);
            e.version = versions[i];
            if (side == 0) {
                e.body_case = CORRAL__V1__ENVELOPE__BODY_OPEN_GROUP;
                e.open_group = &og;
            } else {
                e.body_case = CORRAL__V1__ENVELOPE__BODY_HEARTBEAT;
                e.heartbeat = &hb;
            }
            Env *r = call(&p, &e, "wrong version");
            cr_assert_eq(r->reply->code, CORRAL__V1__ERROR_CODE__ERR_UNSUPPORTED_VERSION,
                         "%s side, version %u: code %d (%s)", side ? "worker" : "client",
                         versions[i], r->reply->code, r->reply->message);
            bool has1 = false;
            for (size_t k = 0; k < r->reply->n_supported_versions; k++) {
                has1 |= r->reply->supported_versions[k] == 1;
            }
            cr_assert(has1, "supported_versions does not list 1");
            cr_assert(r->reply->message && r->reply->message[0]);
            cr_assert(!r->reply->id || !r->reply->id[0], "a group was opened with version %u",
                      versions[i]);
            corral__v1__envelope__free_unpacked(r, NULL);
        }
        raw_close(&p);
    }
    check_serves(&b, "unsupported version");
    finish(&b, &w);
}

Test(badinput, empty_envelope, .timeout = 60)
{
    struct broker b;
    struct test_worker *w;
    start(&b, &w, NULL);
    for (int side = 0; side < 2; side++) {
        struct raw_peer p;
        raw_connect(&p, side == 0 ? b.client_ep : b.worker_ep);
        Env e;
        env_init(&e); /* version 1, a request id, no body */
        call_expect(&p, &e, CORRAL__V1__ERROR_CODE__ERR_BAD_REQUEST,
                    side == 0 ? "client: envelope without body" : "worker: envelope without body");
        raw_close(&p);
    }
    check_serves(&b, "empty envelope");
    finish(&b, &w);
}

Test(badinput, wrong_endpoint, .timeout = 60)
{
    struct broker b;
    struct test_worker *w;
    start(&b, &w, NULL);
    struct raw_peer cp, wp;
    raw_connect(&cp, b.client_ep);
    raw_connect(&wp, b.worker_ep);
    char g[CORRAL_ID_MAX];
    raw_open_root(&cp, g);
    Env e;

    /* Worker requests on the client endpoint. */
    Corral__V1__Ready rd = CORRAL__V1__READY__INIT;
    char *kinds[] = {"echo"};
    rd.n_kinds = 1;
    rd.kinds = kinds;
    rd.concurrency = 1;
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_READY;
    e.ready = &rd;
    call_expect(&cp, &e, CORRAL__V1__ERROR_CODE__ERR_BAD_REQUEST, "Ready on the client endpoint");
    Corral__V1__Heartbeat hb = CORRAL__V1__HEARTBEAT__INIT;
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_HEARTBEAT;
    e.heartbeat = &hb;
    call_expect(&cp, &e, CORRAL__V1__ERROR_CODE__ERR_BAD_REQUEST,
                "Heartbeat on the client endpoint");
    Corral__V1__Done dn = CORRAL__V1__DONE__INIT;
    dn.job = "j1";
    dn.attempt = 1;
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_DONE;
    e.done = &dn;
    call_expect(&cp, &e, CORRAL__V1__ERROR_CODE__ERR_BAD_REQUEST, "Done on the client endpoint");

    /* Client requests on the worker endpoint. */
    Corral__V1__OpenGroup og = CORRAL__V1__OPEN_GROUP__INIT;
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_OPEN_GROUP;
    e.open_group = &og;
    call_expect(&wp, &e, CORRAL__V1__ERROR_CODE__ERR_BAD_REQUEST,
                "OpenGroup on the worker endpoint");
    Corral__V1__Submit sub = CORRAL__V1__SUBMIT__INIT;
    sub.group = g;
    sub.kind = "echo";
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_SUBMIT;
    e.submit = &sub;
    call_expect(&wp, &e, CORRAL__V1__ERROR_CODE__ERR_BAD_REQUEST, "Submit on the worker endpoint");

    /* Broker-to-peer messages sent to the broker. */
    Corral__V1__Reply rp = CORRAL__V1__REPLY__INIT;
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_REPLY;
    e.reply = &rp;
    call_expect(&cp, &e, CORRAL__V1__ERROR_CODE__ERR_BAD_REQUEST, "Reply sent to the broker");
    Corral__V1__Dispatch dp = CORRAL__V1__DISPATCH__INIT;
    dp.job = "j1";
    dp.kind = "echo";
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_DISPATCH;
    e.dispatch = &dp;
    call_expect(&wp, &e, CORRAL__V1__ERROR_CODE__ERR_BAD_REQUEST, "Dispatch sent to the broker");

    /* The refused Submit created nothing. */
    struct corral_client *c = client_connect(&b);
    struct corral_node *t = NULL;
    cr_assert_eq(corral_group_tree(c, g, &t), CORRAL_OK);
    cr_assert_eq(t->nchildren, 0, "a Submit on the worker endpoint created a job");
    corral_node_free(&t);
    corral_client_free(&c);

    raw_close(&cp);
    raw_close(&wp);
    check_serves(&b, "wrong endpoint");
    finish(&b, &w);
}

/* ------------------------------------------------------------------ ended groups */

Test(badinput, submit_to_ended_group, .timeout = 60)
{
    struct broker b;
    struct test_worker *w;
    start(&b, &w, NULL);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];
    open_root(c, g);
    submit(c, g, "echo", "before the end", j);
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    struct corral_node *t = wait_group(c, g, 10000);
    cr_assert_eq(t->outcome, CORRAL_OUTCOME_SUCCEEDED);
    corral_node_free(&t);

    int rc = corral_submit(c, g, "echo", "too late", 8, j, NULL);
    cr_assert_eq(rc, CORRAL_ENOTACTIVE, "submit to an ended group: %s", corral_strerror(rc));
    cr_assert_not_null(strstr(corral_client_last_error(c), "not active"), "message: \"%s\"",
                       corral_client_last_error(c));

    /* The same over a raw peer: the code and the message. */
    struct raw_peer p;
    raw_connect(&p, b.client_ep);
    Env e;
    Corral__V1__Submit sub = CORRAL__V1__SUBMIT__INIT;
    sub.group = g;
    sub.kind = "echo";
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_SUBMIT;
    e.submit = &sub;
    Env *r = call(&p, &e, "raw submit to ended group");
    cr_assert_eq(r->reply->code, CORRAL__V1__ERROR_CODE__ERR_NOT_ACTIVE);
    cr_assert_not_null(strstr(r->reply->message, "not active"), "message: \"%s\"",
                       r->reply->message);
    corral__v1__envelope__free_unpacked(r, NULL);

    /* Opening a child under the ended group is refused the same way. */
    Corral__V1__OpenGroup og = CORRAL__V1__OPEN_GROUP__INIT;
    og.parent_group = g;
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_OPEN_GROUP;
    e.open_group = &og;
    call_expect(&p, &e, CORRAL__V1__ERROR_CODE__ERR_NOT_ACTIVE, "open under an ended group");
    raw_close(&p);

    /* The ended group is unchanged: one child. */
    cr_assert_eq(corral_group_tree(c, g, &t), CORRAL_OK);
    cr_assert_eq(t->nchildren, 1);
    cr_assert_eq(t->outcome, CORRAL_OUTCOME_SUCCEEDED);
    corral_node_free(&t);
    corral_client_free(&c);
    check_serves(&b, "submit to ended group");
    finish(&b, &w);
}

/* ------------------------------------------------------------------ sizes */

/* A raw worker registered for kind "raw" (no test worker serves it). */
static void
raw_ready(struct raw_peer *p, const char *kind)
{
    Env e;
    Corral__V1__Ready rd = CORRAL__V1__READY__INIT;
    char *kinds[] = {(char *)kind};
    rd.n_kinds = 1;
    rd.kinds = kinds;
    rd.concurrency = 1;
    rd.name = "badinput raw worker";
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_READY;
    e.ready = &rd;
    Env *r = call(p, &e, "Ready");
    cr_assert_eq(r->reply->code, CORRAL__V1__ERROR_CODE__ERR_OK, "Ready: %s", r->reply->message);
    cr_assert_gt(r->reply->heartbeat_interval_ms, 0);
    corral__v1__envelope__free_unpacked(r, NULL);
}

Test(badinput, payload_over_soft_limit, .timeout = 60)
{
    struct broker b;
    struct test_worker *w;
    const char *const extra[] = {"--max-payload", "1K", "--heartbeat-timeout", "30s", NULL};
    start(&b, &w, extra);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];
    open_root(c, g);

    static uint8_t big[2048];
    memset(big, 'x', sizeof big);
    int rc = corral_submit(c, g, "echo", big, sizeof big, j, NULL);
    cr_assert_eq(rc, CORRAL_ETOOLARGE, "2 KiB payload with --max-payload 1K: %s",
                 corral_strerror(rc));
    const char *msg = corral_client_last_error(c);
    cr_log_info("over the soft limit: %s", msg);
    cr_assert(strstr(msg, "2048") && strstr(msg, "1024"),
              "message should name the size and the limit: \"%s\"", msg);

    /* Exactly at the limit is fine both ways: a raw worker (the harness's echo keeps only
     * 255 bytes) receives the whole payload and returns it as a result of the same size. */
    struct raw_peer wp;
    raw_connect(&wp, b.worker_ep);
    raw_ready(&wp, "raw");
    rc = corral_submit(c, g, "raw", big, 1024, j, NULL);
    cr_assert_eq(rc, CORRAL_OK, "1024-byte payload: %s (%s)", corral_strerror(rc),
                 corral_client_last_error(c));
    Env *d = recv_body(&wp, CORRAL__V1__ENVELOPE__BODY_DISPATCH, 5000);
    cr_assert_str_eq(d->dispatch->job, j);
    cr_assert_eq(d->dispatch->payload.len, 1024);
    cr_assert_eq(memcmp(d->dispatch->payload.data, big, 1024), 0);
    Env e;
    Corral__V1__Done dn = CORRAL__V1__DONE__INIT;
    dn.job = j;
    dn.attempt = d->dispatch->attempt;
    dn.result.data = big;
    dn.result.len = 1024;
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_DONE;
    e.done = &dn;
    call_expect(&wp, &e, CORRAL__V1__ERROR_CODE__ERR_OK, "Done with a 1024-byte result");
    corral__v1__envelope__free_unpacked(d, NULL);

    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    struct corral_node *t = wait_group(c, g, 10000);
    cr_assert_eq(t->outcome, CORRAL_OUTCOME_SUCCEEDED);
    cr_assert_eq(t->nchildren, 1, "the refused submit must not exist");
    const struct corral_node *n = tree_find(t, j);
    cr_assert_not_null(n);
    cr_assert_eq(n->result_len, 1024);
    cr_assert_eq(memcmp(n->result, big, 1024), 0);
    corral_node_free(&t);

    /* A worker's result over the limit is answered ERR_TOO_LARGE too. corrald then fails
     * the job (type ResultTooLarge) rather than leave it running with a result nobody can
     * deliver, so the report counts as the job's one report and a later one is stale. */
    char g2[CORRAL_ID_MAX], rj[CORRAL_ID_MAX];
    open_root(c, g2);
    submit(c, g2, "raw", "raw job", rj);
    d = recv_body(&wp, CORRAL__V1__ENVELOPE__BODY_DISPATCH, 5000);
    cr_assert_str_eq(d->dispatch->job, rj);
    uint32_t attempt = d->dispatch->attempt;
    corral__v1__envelope__free_unpacked(d, NULL);
    dn.job = rj;
    dn.attempt = attempt;
    dn.result.data = big;
    dn.result.len = sizeof big;
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_DONE;
    e.done = &dn;
    call_expect(&wp, &e, CORRAL__V1__ERROR_CODE__ERR_TOO_LARGE, "Done with a 2 KiB result");
    dn.result.data = (uint8_t *)"small";
    dn.result.len = 5;
    e.request_id = g_rid++; /* the same message again, as a new request */
    call_expect(&wp, &e, CORRAL__V1__ERROR_CODE__ERR_STALE_ATTEMPT,
                "Done after the oversized result");
    raw_close(&wp);
    t = wait_group(c, g2, 10000);
    n = tree_find(t, rj);
    cr_assert_not_null(n);
    cr_assert_eq(n->outcome, CORRAL_OUTCOME_FAILED);
    cr_assert_str_eq(n->error->type, "ResultTooLarge");
    cr_assert(strstr(n->error->message, "2048") && strstr(n->error->message, "1024"), "%s",
              n->error->message);
    cr_assert_eq(t->outcome, CORRAL_OUTCOME_FAILED);
    corral_node_free(&t);
    corral_client_free(&c);
    check_serves(&b, "payload over the soft limit");
    finish(&b, &w);
}

Test(badinput, message_over_hard_cap, .timeout = 60)
{
    struct broker b;
    struct test_worker *w;
    /* corrald requires the soft limit to be below the hard cap. */
    const char *const extra[] = {"--max-message", "64K", "--max-payload", "32K", NULL};
    start(&b, &w, extra);
    struct raw_peer p;
    raw_connect(&p, b.client_ep);
    char g[CORRAL_ID_MAX];
    raw_open_root(&p, g);

    /* A well-formed Submit of 100 KiB: if the hard cap did not apply it would be answered
     * (ERR_TOO_LARGE by the soft limit), so a reply of any kind is a failure. */
    size_t plen = 100 * 1024;
    uint8_t *payload = malloc(plen);
    cr_assert_not_null(payload);
    memset(payload, 'y', plen);
    Env e;
    Corral__V1__Submit sub = CORRAL__V1__SUBMIT__INIT;
    sub.group = g;
    sub.kind = "echo";
    sub.payload.data = payload;
    sub.payload.len = plen;
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_SUBMIT;
    e.submit = &sub;
    raw_send(&p, &e);
    /* Documented behaviour: libzmq (ZMQ_MAXMSGSIZE) drops the connection, no reply. */
    Env *r = raw_recv(&p, 1500);
    cr_assert_null(r, "a message over the hard cap got a reply (code %d: %s)",
                   r && r->reply ? (int)r->reply->code : -1,
                   r && r->reply ? r->reply->message : "");
    free(payload);
    raw_close(&p);

    /* A new connection is served normally. */
    struct raw_peer q;
    raw_connect(&q, b.client_ep);
    char g2[CORRAL_ID_MAX];
    raw_open_root(&q, g2);
    raw_close(&q);

    /* The dropped message created nothing. */
    struct corral_client *c = client_connect(&b);
    struct corral_node *t = NULL;
    cr_assert_eq(corral_group_tree(c, g, &t), CORRAL_OK);
    cr_assert_eq(t->nchildren, 0, "the oversized submit created a job");
    corral_node_free(&t);
    corral_client_free(&c);

    check_serves(&b, "message over the hard cap");
    finish(&b, &w);
}

/* ------------------------------------------------------------------ worker side */

Test(badinput, worker_reports_for_unknown_jobs, .timeout = 60)
{
    struct broker b;
    struct test_worker *w;
    const char *const extra[] = {"--heartbeat-timeout", "30s", NULL};
    start(&b, &w, extra);
    struct raw_peer p;
    raw_connect(&p, b.worker_ep);
    raw_ready(&p, "raw");
    Env e;

    Corral__V1__Done dn = CORRAL__V1__DONE__INIT;
    dn.job = "j999999";
    dn.attempt = 1;
    dn.result.data = (uint8_t *)"r";
    dn.result.len = 1;
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_DONE;
    e.done = &dn;
    call_expect2(&p, &e, CORRAL__V1__ERROR_CODE__ERR_STALE_ATTEMPT,
                 CORRAL__V1__ERROR_CODE__ERR_NOT_FOUND, "Done for an unknown job");

    Corral__V1__Failed fl = CORRAL__V1__FAILED__INIT;
    fl.job = "j999999";
    fl.attempt = 1;
    fl.type = "ValueError";
    fl.message = "nope";
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_FAILED;
    e.failed = &fl;
    call_expect2(&p, &e, CORRAL__V1__ERROR_CODE__ERR_STALE_ATTEMPT,
                 CORRAL__V1__ERROR_CODE__ERR_NOT_FOUND, "Failed for an unknown job");

    Corral__V1__Started st = CORRAL__V1__STARTED__INIT;
    st.job = "j999999";
    st.attempt = 1;
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_STARTED;
    e.started = &st;
    call_expect2(&p, &e, CORRAL__V1__ERROR_CODE__ERR_STALE_ATTEMPT,
                 CORRAL__V1__ERROR_CODE__ERR_NOT_FOUND, "Started for an unknown job");

    Corral__V1__CancelAck ca = CORRAL__V1__CANCEL_ACK__INIT;
    ca.job = "j999999";
    ca.attempt = 1;
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_CANCEL_ACK;
    e.cancel_ack = &ca;
    call_expect2(&p, &e, CORRAL__V1__ERROR_CODE__ERR_STALE_ATTEMPT,
                 CORRAL__V1__ERROR_CODE__ERR_NOT_FOUND, "CancelAck for an unknown job");

    /* A real job, reported with a wrong attempt, then by a worker that does not run it. */
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];
    open_root(c, g);
    submit(c, g, "raw", "payload", j);
    Env *d = recv_body(&p, CORRAL__V1__ENVELOPE__BODY_DISPATCH, 5000);
    cr_assert_str_eq(d->dispatch->job, j);
    uint32_t attempt = d->dispatch->attempt;
    corral__v1__envelope__free_unpacked(d, NULL);
    dn.job = j;
    dn.attempt = attempt + 1;
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_DONE;
    e.done = &dn;
    call_expect(&p, &e, CORRAL__V1__ERROR_CODE__ERR_STALE_ATTEMPT, "Done with a wrong attempt");

    struct raw_peer other;
    raw_connect(&other, b.worker_ep);
    raw_ready(&other, "raw-other");
    dn.attempt = attempt;
    e.request_id = g_rid++; /* the same message again, as a new request */
    call_expect(&other, &e, CORRAL__V1__ERROR_CODE__ERR_STALE_ATTEMPT,
                "Done from a worker that does not run the job");
    raw_close(&other);

    /* The right report still counts, once. */
    dn.result.data = (uint8_t *)"right";
    dn.result.len = 5;
    e.request_id = g_rid++; /* the same message again, as a new request */
    call_expect(&p, &e, CORRAL__V1__ERROR_CODE__ERR_OK, "Done with the right attempt");
    e.request_id = g_rid++; /* the same message again, as a new request */
    call_expect(&p, &e, CORRAL__V1__ERROR_CODE__ERR_STALE_ATTEMPT, "Done a second time");
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    struct corral_node *t = wait_group(c, g, 10000);
    const struct corral_node *n = tree_find(t, j);
    cr_assert_not_null(n);
    cr_assert_eq(n->outcome, CORRAL_OUTCOME_SUCCEEDED);
    cr_assert(n->result_len == 5 && memcmp(n->result, "right", 5) == 0,
              "the stale reports changed the result");
    corral_node_free(&t);
    corral_client_free(&c);
    raw_close(&p);
    check_serves(&b, "worker reports for unknown jobs");
    finish(&b, &w);
}

Test(badinput, worker_messages_before_ready, .timeout = 60)
{
    struct broker b;
    struct test_worker *w;
    start(&b, &w, NULL);
    struct raw_peer p;
    raw_connect(&p, b.worker_ep);
    Env e;
    Corral__V1__Heartbeat hb = CORRAL__V1__HEARTBEAT__INIT;
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_HEARTBEAT;
    e.heartbeat = &hb;
    call_expect(&p, &e, CORRAL__V1__ERROR_CODE__ERR_UNKNOWN_WORKER, "Heartbeat before Ready");

    Corral__V1__Done dn = CORRAL__V1__DONE__INIT;
    dn.job = "j1";
    dn.attempt = 1;
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_DONE;
    e.done = &dn;
    call_expect(&p, &e, CORRAL__V1__ERROR_CODE__ERR_UNKNOWN_WORKER, "Done before Ready");

    /* After Ready, a heartbeat is fine. */
    raw_ready(&p, "raw");
    env_init(&e);
    e.body_case = CORRAL__V1__ENVELOPE__BODY_HEARTBEAT;
    e.heartbeat = &hb;
    call_expect(&p, &e, CORRAL__V1__ERROR_CODE__ERR_OK, "Heartbeat after Ready");
    raw_close(&p);
    check_serves(&b, "worker messages before Ready");
    finish(&b, &w);
}
