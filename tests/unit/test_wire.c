/* test_wire.c - wire.c round trips and hostile input, plus the arena, outbox and log
 * helpers it builds on. Encoded messages are checked by unpacking them with protobuf-c
 * directly; decoded requests are built with protobuf-c and packed. */
#include "arena.h"
#include "cmd.h"
#include "log.h"
#include "wire.h"

#include "corral.pb-c.h"

#include <criterion/criterion.h>

#include <stdalign.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------------ helpers */

/* protobuf-c wants char * for the strings of messages we build: literals are only read. */
#define S(lit) ((char *)(lit))

/* Packs env into a malloc'd buffer (returned owned) and its length. */
static uint8_t *
pack(const Corral__V1__Envelope *env, size_t *len)
{
    *len = corral__v1__envelope__get_packed_size(env);
    uint8_t *buf = malloc(*len > 0 ? *len : 1);
    cr_assert_not_null(buf);
    cr_assert_eq(corral__v1__envelope__pack(env, buf), *len);
    return buf;
}

/* Packs env and decodes it on side; the packed bytes are freed before returning, so the
 * command must borrow only from the holder. */
static int
decode_env(const Corral__V1__Envelope *env, enum peer_side side, struct cmd *c,
           struct wire_decoded **h, uint64_t *rid, const char **msg)
{
    size_t len;
    uint8_t *buf = pack(env, &len);
    int rc = wire_decode(buf, len, side, c, h, rid, msg);
    memset(buf, 0xAA, len);
    free(buf);
    return rc;
}

/* Decodes env on side, expecting failure with code want; returns the error message. */
static const char *
expect_fail(const Corral__V1__Envelope *env, enum peer_side side, int want)
{
    struct cmd c;
    struct wire_decoded *h = (struct wire_decoded *)&c; /* must be reset to NULL */
    uint64_t rid = 12345;
    const char *msg = NULL;
    int rc = decode_env(env, side, &c, &h, &rid, &msg);
    cr_assert_eq(rc, want, "want code %d, got %d (%s)", want, rc, msg ? msg : "(null)");
    cr_assert_null(h);
    cr_assert_not_null(msg);
    cr_assert_eq(rid, env->request_id);
    return msg;
}

/* Encodes m and unpacks the result with protobuf-c; returns the envelope (owned). */
static Corral__V1__Envelope *
roundtrip(const struct out_msg *m)
{
    struct wire_encoder w;
    wire_encoder_init(&w);
    const uint8_t *buf = NULL;
    size_t len = 0;
    cr_assert_eq(wire_encode(&w, m, &buf, &len), 0);
    cr_assert_not_null(buf);
    Corral__V1__Envelope *env = corral__v1__envelope__unpack(NULL, len, buf);
    wire_encoder_fini(&w);
    cr_assert_not_null(env);
    cr_assert_eq(env->version, 1);
    cr_assert_eq(env->request_id, m->request_id);
    return env;
}

/* A deterministic PRNG (xorshift64*) for the fuzz tests. */
static uint64_t
rnd(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

/* Checks that a successful decode left no NULL string in c. */
static void
assert_strings_set(const struct cmd *c)
{
    cr_assert(c->id && c->parent_group && c->parent_job && c->kind && c->reason && c->err_type &&
              c->err_message && c->name);
}

/* ------------------------------------------------------------------ encode */

static const uint8_t BIN[] = {'a', 0, 'b', 0, 0xff, 0};

Test(wire, encode_reply_ok)
{
    struct out_msg m = {.type = OUTMSG_REPLY,
                        .request_id = 42,
                        .code = CORRAL_OK,
                        .message = "",
                        .id = "g17",
                        .cancelled = true};
    Corral__V1__Envelope *env = roundtrip(&m);
    cr_assert_eq(env->body_case, CORRAL__V1__ENVELOPE__BODY_REPLY);
    cr_assert_eq(env->reply->code, CORRAL__V1__ERROR_CODE__ERR_OK);
    cr_assert_str_eq(env->reply->id, "g17");
    cr_assert_str_eq(env->reply->message, "");
    cr_assert(env->reply->cancelled);
    cr_assert_null(env->reply->tree);
    cr_assert_eq(env->reply->n_supported_versions, 0);
    cr_assert_eq(env->reply->n_reclaimed, 0);
    corral__v1__envelope__free_unpacked(env, NULL);
}

Test(wire, encode_reply_null_strings_become_empty)
{
    struct out_msg m = {.type = OUTMSG_REPLY, .request_id = 1, .code = CORRAL_ENOTFOUND};
    Corral__V1__Envelope *env = roundtrip(&m);
    cr_assert_eq(env->reply->code, CORRAL__V1__ERROR_CODE__ERR_NOT_FOUND);
    cr_assert_str_eq(env->reply->message, "");
    cr_assert_str_eq(env->reply->id, "");
    corral__v1__envelope__free_unpacked(env, NULL);
}

Test(wire, encode_reply_version_lists_supported)
{
    struct out_msg m = {.type = OUTMSG_REPLY,
                        .request_id = 9,
                        .code = CORRAL_EVERSION,
                        .message = "unsupported protocol version"};
    Corral__V1__Envelope *env = roundtrip(&m);
    cr_assert_eq(env->reply->code, CORRAL__V1__ERROR_CODE__ERR_UNSUPPORTED_VERSION);
    cr_assert_eq(env->reply->n_supported_versions, 1);
    cr_assert_eq(env->reply->supported_versions[0], 1);
    cr_assert_str_eq(env->reply->message, "unsupported protocol version");
    corral__v1__envelope__free_unpacked(env, NULL);
}

Test(wire, encode_reply_local_code_is_internal)
{
    struct out_msg m = {.type = OUTMSG_REPLY, .code = CORRAL_ENOMEM, .message = "oom"};
    Corral__V1__Envelope *env = roundtrip(&m);
    cr_assert_eq(env->reply->code, CORRAL__V1__ERROR_CODE__ERR_INTERNAL);
    corral__v1__envelope__free_unpacked(env, NULL);
}

Test(wire, encode_reply_busy_ready_fields)
{
    struct running_ref rec[3] = {{"j1", 1}, {"j2", 4}, {"j30", 2}};
    struct out_msg m = {.type = OUTMSG_REPLY,
                        .request_id = UINT64_MAX,
                        .code = CORRAL_EBUSY,
                        .message = "busy",
                        .retry_after_ms = 250,
                        .hb_interval_ms = 1000,
                        .hb_timeout_ms = 5000,
                        .reclaimed = rec,
                        .nreclaimed = 3};
    Corral__V1__Envelope *env = roundtrip(&m);
    Corral__V1__Reply *r = env->reply;
    cr_assert_eq(r->code, CORRAL__V1__ERROR_CODE__ERR_BUSY);
    cr_assert_eq(r->retry_after_ms, 250);
    cr_assert_eq(r->heartbeat_interval_ms, 1000);
    cr_assert_eq(r->heartbeat_timeout_ms, 5000);
    cr_assert_eq(r->n_reclaimed, 3);
    for (size_t i = 0; i < 3; i++) {
        cr_assert_str_eq(r->reclaimed[i]->job, rec[i].job);
        cr_assert_eq(r->reclaimed[i]->attempt, rec[i].attempt);
    }
    corral__v1__envelope__free_unpacked(env, NULL);
}

/* A tree: g1 { j1 SUCCEEDED (binary result), j2 FAILED, g2 FAILED with an exception
 * group nesting another exception group, j3 RUNNING that opened g4 }. */
struct tree_fixture {
    struct terr j2err, inner_leaf, inner_eg_children[1], g2_children[2], g2err, g1_children[2],
        g1err;
    struct tnode g4, j3_groups[1], g2_children_nodes[1], g1_children_nodes[4], g1;
};

/* Fills f with the tree described above. */
static void
tree_fixture_init(struct tree_fixture *f)
{
    memset(f, 0, sizeof(*f));
    f->j2err = (struct terr){.type = "ValueError",
                             .message = "bad value",
                             .job = "j2",
                             .group = "",
                             .details = {BIN, sizeof(BIN)}};
    f->inner_leaf = (struct terr){.type = "KeyError", .message = "k", .job = "j5", .group = ""};
    f->inner_eg_children[0] = f->inner_leaf;
    f->g2_children[0] =
        (struct terr){.type = "OSError", .message = "disk", .job = "j6", .group = ""};
    f->g2_children[1] = (struct terr){.type = "ExceptionGroup",
                                      .message = "1 sub-exception",
                                      .job = "",
                                      .group = "g7",
                                      .exceptions = f->inner_eg_children,
                                      .nexceptions = 1};
    f->g2err = (struct terr){.type = "ExceptionGroup",
                             .message = "2 sub-exceptions",
                             .job = "",
                             .group = "g2",
                             .exceptions = f->g2_children,
                             .nexceptions = 2};
    f->g1_children[0] = f->j2err;
    f->g1_children[1] = f->g2err;
    f->g1err = (struct terr){.type = "ExceptionGroup",
                             .message = "2 sub-exceptions",
                             .job = "",
                             .group = "g1",
                             .exceptions = f->g1_children,
                             .nexceptions = 2};

    f->g4 = (struct tnode){.type = NODE_GROUP,
                           .id = "g4",
                           .kind = "",
                           .state = ST_OPEN,
                           .cancel_reason = "",
                           .parent = "j3"};
    f->j3_groups[0] = f->g4;
    f->g2_children_nodes[0] = (struct tnode){.type = NODE_JOB,
                                             .id = "j6",
                                             .kind = "disk",
                                             .state = ST_ENDED,
                                             .outcome = OUT_FAILED,
                                             .cancel_reason = "",
                                             .parent = "g2",
                                             .attempt = 1};
    f->g1_children_nodes[0] = (struct tnode){.type = NODE_JOB,
                                             .id = "j1",
                                             .kind = "add",
                                             .state = ST_ENDED,
                                             .outcome = OUT_SUCCEEDED,
                                             .result = {BIN, sizeof(BIN)},
                                             .attempt = 1,
                                             .cancel_reason = "",
                                             .parent = "g1"};
    f->g1_children_nodes[1] = (struct tnode){.type = NODE_JOB,
                                             .id = "j2",
                                             .kind = "add",
                                             .state = ST_ENDED,
                                             .outcome = OUT_FAILED,
                                             .error = &f->j2err,
                                             .attempt = 2,
                                             .cancel_reason = "",
                                             .parent = "g1"};
    f->g1_children_nodes[2] = (struct tnode){.type = NODE_GROUP,
                                             .id = "g2",
                                             .state = ST_ENDED,
                                             .outcome = OUT_FAILED,
                                             .error = &f->g2err,
                                             .cancel_called = true,
                                             .cancelled_caught = true,
                                             .cancel_source = SRC_SIBLING_FAILED,
                                             .cancel_reason = "j6 failed",
                                             .parent = "g1",
                                             .closed = true,
                                             .children = f->g2_children_nodes,
                                             .nchildren = 1};
    f->g1_children_nodes[3] = (struct tnode){.type = NODE_JOB,
                                             .id = "j3",
                                             .kind = "spawn",
                                             .state = ST_CANCELLING,
                                             .cancel_called = true,
                                             .cancel_source = SRC_PARENT,
                                             .cancel_reason = "",
                                             .parent = "g1",
                                             .attempt = 3,
                                             .groups = f->j3_groups,
                                             .ngroups = 1};
    f->g1 = (struct tnode){.type = NODE_GROUP,
                           .id = "g1",
                           .kind = NULL,
                           .state = ST_CANCELLING,
                           .outcome = OUT_NONE,
                           .error = &f->g1err,
                           .cancel_called = true,
                           .cancel_source = SRC_SIBLING_FAILED,
                           .cancel_reason = "j2",
                           .parent = "",
                           .children = f->g1_children_nodes,
                           .nchildren = 4};
}

Test(wire, encode_reply_nested_tree)
{
    struct tree_fixture f;
    tree_fixture_init(&f);
    struct out_msg m = {.type = OUTMSG_REPLY, .request_id = 5, .tree = &f.g1};
    Corral__V1__Envelope *env = roundtrip(&m);
    Corral__V1__Node *g1 = env->reply->tree;
    cr_assert_not_null(g1);
    cr_assert_eq(g1->type, CORRAL__V1__NODE_TYPE__NODE_GROUP);
    cr_assert_str_eq(g1->id, "g1");
    cr_assert_str_eq(g1->kind, "");
    cr_assert_str_eq(g1->parent, "");
    cr_assert_eq(g1->state, CORRAL__V1__STATE__STATE_CANCELLING);
    cr_assert_eq(g1->cancel_source, CORRAL__V1__CANCEL_SOURCE__CANCEL_SOURCE_SIBLING_FAILED);
    cr_assert_str_eq(g1->cancel_reason, "j2");
    cr_assert(g1->cancel_called);
    cr_assert_eq(g1->n_children, 4);

    Corral__V1__Node *j1 = g1->children[0];
    cr_assert_str_eq(j1->id, "j1");
    cr_assert_eq(j1->outcome, CORRAL__V1__OUTCOME__OUTCOME_SUCCEEDED);
    cr_assert_eq(j1->result.len, sizeof(BIN));
    cr_assert_arr_eq(j1->result.data, BIN, sizeof(BIN));
    cr_assert_null(j1->error);

    Corral__V1__Node *j2 = g1->children[1];
    cr_assert_eq(j2->attempt, 2);
    cr_assert_str_eq(j2->error->type, "ValueError");
    cr_assert_str_eq(j2->error->job, "j2");
    cr_assert_eq(j2->error->details.len, sizeof(BIN));
    cr_assert_arr_eq(j2->error->details.data, BIN, sizeof(BIN));

    Corral__V1__Node *g2 = g1->children[2];
    cr_assert(g2->closed && g2->cancelled_caught);
    cr_assert_eq(g2->n_children, 1);
    cr_assert_str_eq(g2->children[0]->id, "j6");
    Corral__V1__Error *eg = g2->error;
    cr_assert_str_eq(eg->type, "ExceptionGroup");
    cr_assert_str_eq(eg->group, "g2");
    cr_assert_eq(eg->n_exceptions, 2);
    cr_assert_str_eq(eg->exceptions[0]->type, "OSError");
    Corral__V1__Error *inner = eg->exceptions[1];
    cr_assert_str_eq(inner->type, "ExceptionGroup");
    cr_assert_str_eq(inner->group, "g7");
    cr_assert_eq(inner->n_exceptions, 1);
    cr_assert_str_eq(inner->exceptions[0]->type, "KeyError");
    cr_assert_str_eq(inner->exceptions[0]->job, "j5");
    cr_assert_eq(inner->exceptions[0]->n_exceptions, 0);

    Corral__V1__Node *j3 = g1->children[3];
    cr_assert_eq(j3->n_groups, 1);
    cr_assert_str_eq(j3->groups[0]->id, "g4");
    cr_assert_str_eq(j3->groups[0]->parent, "j3");
    cr_assert_eq(j3->groups[0]->state, CORRAL__V1__STATE__STATE_OPEN);

    Corral__V1__Error *top = g1->error;
    cr_assert_eq(top->n_exceptions, 2);
    cr_assert_str_eq(top->exceptions[1]->exceptions[1]->exceptions[0]->message, "k");
    corral__v1__envelope__free_unpacked(env, NULL);
}

Test(wire, encode_large_tree)
{
    enum { N = 20000 };
    struct tnode *kids = calloc(N, sizeof(*kids));
    char(*ids)[MODEL_ID_MAX] = calloc(N, MODEL_ID_MAX);
    cr_assert(kids && ids);
    for (size_t i = 0; i < N; i++) {
        snprintf(ids[i], MODEL_ID_MAX, "j%zu", i);
        kids[i] = (struct tnode){
            .type = NODE_JOB, .id = ids[i], .kind = "k", .state = ST_QUEUED, .parent = "g1"};
    }
    struct tnode root = {
        .type = NODE_GROUP, .id = "g1", .state = ST_OPEN, .children = kids, .nchildren = N};
    struct out_msg m = {.type = OUTMSG_REPLY, .tree = &root};
    Corral__V1__Envelope *env = roundtrip(&m);
    cr_assert_eq(env->reply->tree->n_children, N);
    cr_assert_str_eq(env->reply->tree->children[N - 1]->id, ids[N - 1]);
    corral__v1__envelope__free_unpacked(env, NULL);
    free(kids);
    free(ids);
}

Test(wire, encode_dispatch_binary_payload)
{
    struct out_msg m = {.type = OUTMSG_DISPATCH,
                        .job = "j9",
                        .attempt = 3,
                        .kind = "resize",
                        .payload = {BIN, sizeof(BIN)},
                        .group = "g2"};
    Corral__V1__Envelope *env = roundtrip(&m);
    cr_assert_eq(env->request_id, 0);
    cr_assert_eq(env->body_case, CORRAL__V1__ENVELOPE__BODY_DISPATCH);
    Corral__V1__Dispatch *d = env->dispatch;
    cr_assert_str_eq(d->job, "j9");
    cr_assert_eq(d->attempt, 3);
    cr_assert_str_eq(d->kind, "resize");
    cr_assert_str_eq(d->group, "g2");
    cr_assert_eq(d->payload.len, sizeof(BIN));
    cr_assert_arr_eq(d->payload.data, BIN, sizeof(BIN));
    corral__v1__envelope__free_unpacked(env, NULL);
}

Test(wire, encode_cancel)
{
    struct out_msg m = {.type = OUTMSG_CANCEL,
                        .job = "j4",
                        .attempt = 2,
                        .source = SRC_DEADLINE,
                        .reason = "too slow"};
    Corral__V1__Envelope *env = roundtrip(&m);
    cr_assert_eq(env->body_case, CORRAL__V1__ENVELOPE__BODY_CANCEL);
    cr_assert_str_eq(env->cancel->job, "j4");
    cr_assert_eq(env->cancel->attempt, 2);
    cr_assert_eq(env->cancel->source, CORRAL__V1__CANCEL_SOURCE__CANCEL_SOURCE_DEADLINE);
    cr_assert_str_eq(env->cancel->reason, "too slow");
    corral__v1__envelope__free_unpacked(env, NULL);
}

Test(wire, encode_event_node_is_shallow)
{
    struct tree_fixture f;
    tree_fixture_init(&f);
    struct out_msg m = {.type = OUTMSG_EVENT,
                        .request_id = 77,
                        .event = EV_GROUP_CANCELLING,
                        .subscription = "g1",
                        .node = &f.g1};
    Corral__V1__Envelope *env = roundtrip(&m);
    cr_assert_eq(env->body_case, CORRAL__V1__ENVELOPE__BODY_EVENT);
    cr_assert_eq(env->event->type, CORRAL__V1__EVENT_TYPE__EVENT_GROUP_CANCELLING);
    cr_assert_str_eq(env->event->subscription, "g1");
    cr_assert_str_eq(env->event->node->id, "g1");
    cr_assert_eq(env->event->node->n_children, 0);
    cr_assert_eq(env->event->node->n_groups, 0);
    cr_assert_not_null(env->event->node->error);
    corral__v1__envelope__free_unpacked(env, NULL);
}

Test(wire, encode_shutdown)
{
    struct out_msg m = {.type = OUTMSG_SHUTDOWN};
    Corral__V1__Envelope *env = roundtrip(&m);
    cr_assert_eq(env->body_case, CORRAL__V1__ENVELOPE__BODY_SHUTDOWN);
    cr_assert_not_null(env->shutdown);
    corral__v1__envelope__free_unpacked(env, NULL);
}

Test(wire, encode_unknown_type)
{
    struct out_msg m = {.type = (enum out_type)99};
    struct wire_encoder w;
    wire_encoder_init(&w);
    const uint8_t *buf = NULL;
    size_t len = 0;
    cr_assert_eq(wire_encode(&w, &m, &buf, &len), CORRAL_EINVAL);
    cr_assert_null(buf);
    wire_encoder_fini(&w);
}

Test(wire, encoder_reuses_its_buffer)
{
    struct wire_encoder w;
    wire_encoder_init(&w);
    struct out_msg m = {.type = OUTMSG_DISPATCH,
                        .job = "j1",
                        .kind = "k",
                        .group = "g1",
                        .message = "",
                        .id = "",
                        .reason = "",
                        .subscription = ""};
    const uint8_t *a = NULL, *b = NULL;
    size_t la = 0, lb = 0;
    cr_assert_eq(wire_encode(&w, &m, &a, &la), 0);
    m.job = "j22";
    cr_assert_eq(wire_encode(&w, &m, &b, &lb), 0);
    cr_assert_eq(a, b, "the second message reuses the first one's buffer");
    cr_assert_eq(lb, la + 1);
    wire_encoder_fini(&w);
}

/* ------------------------------------------------------------------ decode: requests */

/* Decodes env on side expecting success; the caller frees *h. */
static void
expect_ok(const Corral__V1__Envelope *env, enum peer_side side, struct cmd *c,
          struct wire_decoded **h)
{
    uint64_t rid = 0;
    const char *msg = NULL;
    int rc = decode_env(env, side, c, h, &rid, &msg);
    cr_assert_eq(rc, 0, "decode failed: %d %s", rc, msg ? msg : "");
    cr_assert_not_null(*h);
    cr_assert_eq(rid, env->request_id);
    cr_assert_eq(c->request_id, env->request_id);
    assert_strings_set(c);
}

Test(wire, decode_open_group)
{
    Corral__V1__OpenGroup b = CORRAL__V1__OPEN_GROUP__INIT;
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    env.version = 1;
    env.request_id = 1;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_OPEN_GROUP;
    env.open_group = &b;
    struct cmd c;
    struct wire_decoded *h;
    expect_ok(&env, SIDE_CLIENT, &c, &h);
    cr_assert_eq(c.type, CMD_OPEN_GROUP);
    cr_assert_str_eq(c.parent_group, "");
    cr_assert_str_eq(c.parent_job, "");
    cr_assert_str_eq(c.id, "");
    wire_decoded_free(&h);
    cr_assert_null(h);

    b.parent_job = S("j3");
    expect_ok(&env, SIDE_CLIENT, &c, &h);
    cr_assert_str_eq(c.parent_job, "j3");
    wire_decoded_free(&h);

    b.parent_group = S("g1");
    const char *msg = expect_fail(&env, SIDE_CLIENT, CORRAL_EBADREQUEST);
    cr_assert(strstr(msg, "parent_group") != NULL);
}

Test(wire, decode_submit)
{
    Corral__V1__Submit b = CORRAL__V1__SUBMIT__INIT;
    b.group = S("g1");
    b.kind = S("add");
    b.payload.data = (uint8_t *)BIN;
    b.payload.len = sizeof(BIN);
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    env.version = 1;
    env.request_id = UINT64_MAX;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_SUBMIT;
    env.submit = &b;
    struct cmd c;
    struct wire_decoded *h;
    expect_ok(&env, SIDE_CLIENT, &c, &h);
    cr_assert_eq(c.type, CMD_SUBMIT);
    cr_assert_eq(c.request_id, UINT64_MAX);
    cr_assert_str_eq(c.id, "g1");
    cr_assert_str_eq(c.kind, "add");
    cr_assert_eq(c.data.len, sizeof(BIN));
    cr_assert_arr_eq(c.data.data, BIN, sizeof(BIN));
    wire_decoded_free(&h);

    b.payload.len = 0;
    b.payload.data = NULL;
    expect_ok(&env, SIDE_CLIENT, &c, &h);
    cr_assert_eq(c.data.len, 0);
    wire_decoded_free(&h);
}

/* Builds an envelope around a one-string-field client body and checks the decoded id
 * (and reason when the body has one). */
Test(wire, decode_group_requests)
{
    Corral__V1__CloseGroup close = CORRAL__V1__CLOSE_GROUP__INIT;
    Corral__V1__CancelGroup cg = CORRAL__V1__CANCEL_GROUP__INIT;
    Corral__V1__CancelJob cj = CORRAL__V1__CANCEL_JOB__INIT;
    Corral__V1__GetTree gt = CORRAL__V1__GET_TREE__INIT;
    Corral__V1__WaitGroup wg = CORRAL__V1__WAIT_GROUP__INIT;
    Corral__V1__Subscribe sub = CORRAL__V1__SUBSCRIBE__INIT;
    close.group = S("g1");
    cg.group = S("g2");
    cg.reason = S("user pressed ^C");
    cj.job = S("j3");
    cj.reason = S("");
    gt.group = S("g4");
    wg.group = S("g5");
    sub.group = S("g6");
    struct {
        Corral__V1__Envelope__BodyCase bc;
        void *body;
        enum cmd_type type;
        const char *id, *reason;
    } cases[] = {
        {CORRAL__V1__ENVELOPE__BODY_CLOSE_GROUP, &close, CMD_CLOSE_GROUP, "g1", ""},
        {CORRAL__V1__ENVELOPE__BODY_CANCEL_GROUP, &cg, CMD_CANCEL_GROUP, "g2", "user pressed ^C"},
        {CORRAL__V1__ENVELOPE__BODY_CANCEL_JOB, &cj, CMD_CANCEL_JOB, "j3", ""},
        {CORRAL__V1__ENVELOPE__BODY_GET_TREE, &gt, CMD_GET_TREE, "g4", ""},
        {CORRAL__V1__ENVELOPE__BODY_WAIT_GROUP, &wg, CMD_WAIT_GROUP, "g5", ""},
        {CORRAL__V1__ENVELOPE__BODY_SUBSCRIBE, &sub, CMD_SUBSCRIBE, "g6", ""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
        env.version = 1;
        env.request_id = 100 + i;
        env.body_case = cases[i].bc;
        env.close_group = cases[i].body; /* all body members share the union */
        struct cmd c;
        struct wire_decoded *h;
        expect_ok(&env, SIDE_CLIENT, &c, &h);
        cr_assert_eq(c.type, cases[i].type);
        cr_assert_str_eq(c.id, cases[i].id);
        cr_assert_str_eq(c.reason, cases[i].reason);
        wire_decoded_free(&h);
    }
}

Test(wire, decode_ready)
{
    char *kinds[] = {S("add"), S("mul")};
    Corral__V1__RunningJob r1 = CORRAL__V1__RUNNING_JOB__INIT, r2 = CORRAL__V1__RUNNING_JOB__INIT;
    r1.job = S("j1");
    r1.attempt = 1;
    r2.job = S("j22");
    r2.attempt = 7;
    Corral__V1__RunningJob *running[] = {&r1, &r2};
    Corral__V1__Ready b = CORRAL__V1__READY__INIT;
    b.kinds = kinds;
    b.n_kinds = 2;
    b.concurrency = 8;
    b.running = running;
    b.n_running = 2;
    b.name = S("host:123");
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    env.version = 1;
    env.request_id = 3;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_READY;
    env.ready = &b;
    struct cmd c;
    struct wire_decoded *h;
    expect_ok(&env, SIDE_WORKER, &c, &h);
    cr_assert_eq(c.type, CMD_READY);
    cr_assert_eq(c.nkinds, 2);
    cr_assert_str_eq(c.kinds[0], "add");
    cr_assert_str_eq(c.kinds[1], "mul");
    cr_assert_eq(c.concurrency, 8);
    cr_assert_eq(c.nrunning, 2);
    cr_assert_str_eq(c.running[0].job, "j1");
    cr_assert_eq(c.running[0].attempt, 1);
    cr_assert_str_eq(c.running[1].job, "j22");
    cr_assert_eq(c.running[1].attempt, 7);
    cr_assert_str_eq(c.name, "host:123");
    wire_decoded_free(&h);

    b.n_running = 0;
    b.running = NULL;
    b.name = S("");
    expect_ok(&env, SIDE_WORKER, &c, &h);
    cr_assert_eq(c.nrunning, 0);
    cr_assert_str_eq(c.name, "");
    wire_decoded_free(&h);
}

Test(wire, decode_worker_reports)
{
    Corral__V1__Heartbeat hb = CORRAL__V1__HEARTBEAT__INIT;
    Corral__V1__Started st = CORRAL__V1__STARTED__INIT;
    Corral__V1__Done dn = CORRAL__V1__DONE__INIT;
    Corral__V1__Failed fl = CORRAL__V1__FAILED__INIT;
    Corral__V1__CancelAck ca = CORRAL__V1__CANCEL_ACK__INIT;
    st.job = S("j1");
    st.attempt = 1;
    st.value.data = (uint8_t *)BIN;
    st.value.len = 3;
    dn.job = S("j2");
    dn.attempt = 2;
    dn.result.data = (uint8_t *)BIN;
    dn.result.len = sizeof(BIN);
    fl.job = S("j3");
    fl.attempt = 3;
    fl.type = S("ValueError");
    fl.message = S("bad \"value\"");
    fl.details.data = (uint8_t *)BIN;
    fl.details.len = 2;
    fl.retryable = 1;
    ca.job = S("j4");
    ca.attempt = 4;
    struct {
        Corral__V1__Envelope__BodyCase bc;
        void *body;
        enum cmd_type type;
        const char *id;
        uint32_t attempt;
        size_t datalen;
    } cases[] = {
        {CORRAL__V1__ENVELOPE__BODY_HEARTBEAT, &hb, CMD_HEARTBEAT, "", 0, 0},
        {CORRAL__V1__ENVELOPE__BODY_STARTED, &st, CMD_STARTED, "j1", 1, 3},
        {CORRAL__V1__ENVELOPE__BODY_DONE, &dn, CMD_DONE, "j2", 2, sizeof(BIN)},
        {CORRAL__V1__ENVELOPE__BODY_FAILED, &fl, CMD_FAILED, "j3", 3, 2},
        {CORRAL__V1__ENVELOPE__BODY_CANCEL_ACK, &ca, CMD_CANCEL_ACK, "j4", 4, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
        env.version = 1;
        env.request_id = 200 + i;
        env.body_case = cases[i].bc;
        env.heartbeat = cases[i].body; /* all body members share the union */
        struct cmd c;
        struct wire_decoded *h;
        expect_ok(&env, SIDE_WORKER, &c, &h);
        cr_assert_eq(c.type, cases[i].type);
        cr_assert_str_eq(c.id, cases[i].id);
        cr_assert_eq(c.attempt, cases[i].attempt);
        cr_assert_eq(c.data.len, cases[i].datalen);
        if (cases[i].datalen > 0)
            cr_assert_arr_eq(c.data.data, BIN, cases[i].datalen);
        if (c.type == CMD_FAILED) {
            cr_assert_str_eq(c.err_type, "ValueError");
            cr_assert_str_eq(c.err_message, "bad \"value\"");
            cr_assert(c.retryable);
        } else {
            cr_assert_str_eq(c.err_type, "");
            cr_assert(!c.retryable);
        }
        wire_decoded_free(&h);
    }
}

Test(wire, decoded_free_accepts_null)
{
    struct wire_decoded *h = NULL;
    wire_decoded_free(&h);
    wire_decoded_free(NULL);
}

/* ------------------------------------------------------------------ decode: bad input */

Test(wire, empty_frame)
{
    struct cmd c;
    struct wire_decoded *h;
    uint64_t rid = 9;
    const char *msg = NULL;
    cr_assert_eq(wire_decode((const uint8_t *)"", 0, SIDE_CLIENT, &c, &h, &rid, &msg),
                 CORRAL_EBADREQUEST);
    cr_assert_null(h);
    cr_assert_eq(rid, 0);
    cr_assert_not_null(msg);
    cr_assert_eq(wire_decode(NULL, 0, SIDE_WORKER, &c, &h, NULL, NULL), CORRAL_EBADREQUEST);
}

Test(wire, garbage_is_bad_request)
{
    static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1};
    struct cmd c;
    struct wire_decoded *h;
    uint64_t rid = 9;
    const char *msg = NULL;
    cr_assert_eq(wire_decode(junk, sizeof(junk), SIDE_CLIENT, &c, &h, &rid, &msg),
                 CORRAL_EBADREQUEST);
    cr_assert_null(h);
    cr_assert_eq(rid, 0);
    cr_assert_str_eq(msg, "malformed message: not a corral Envelope");
}

Test(wire, wrong_version)
{
    Corral__V1__Heartbeat hb = CORRAL__V1__HEARTBEAT__INIT;
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    env.request_id = 31;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    uint32_t versions[] = {0, 2, 99, UINT32_MAX};
    for (size_t i = 0; i < 4; i++) {
        env.version = versions[i];
        const char *msg = expect_fail(&env, SIDE_WORKER, CORRAL_EVERSION);
        cr_assert_str_eq(msg, "unsupported protocol version; this broker supports version 1");
    }
    /* The version is checked before the body: even no body gives EVERSION. */
    env.version = 2;
    env.body_case = CORRAL__V1__ENVELOPE__BODY__NOT_SET;
    expect_fail(&env, SIDE_CLIENT, CORRAL_EVERSION);
}

Test(wire, no_body)
{
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    env.version = 1;
    env.request_id = 8;
    expect_fail(&env, SIDE_CLIENT, CORRAL_EBADREQUEST);
    expect_fail(&env, SIDE_WORKER, CORRAL_EBADREQUEST);
}

Test(wire, unknown_body_field)
{
    /* version 1, request_id 7, then field 60 (length-delimited, empty): a body from a
     * newer protocol this broker does not know. */
    static const uint8_t buf[] = {0x08, 0x01, 0x10, 0x07, 0xe2, 0x03, 0x00};
    struct cmd c;
    struct wire_decoded *h;
    uint64_t rid = 0;
    const char *msg = NULL;
    cr_assert_eq(wire_decode(buf, sizeof(buf), SIDE_CLIENT, &c, &h, &rid, &msg),
                 CORRAL_EBADREQUEST);
    cr_assert_null(h);
    cr_assert_eq(rid, 7);
}

Test(wire, broker_bodies_are_rejected)
{
    Corral__V1__Reply reply = CORRAL__V1__REPLY__INIT;
    Corral__V1__Dispatch dispatch = CORRAL__V1__DISPATCH__INIT;
    Corral__V1__Cancel cancel = CORRAL__V1__CANCEL__INIT;
    Corral__V1__Event event = CORRAL__V1__EVENT__INIT;
    Corral__V1__Shutdown shut = CORRAL__V1__SHUTDOWN__INIT;
    dispatch.job = S("j1");
    cancel.job = S("j1");
    struct {
        Corral__V1__Envelope__BodyCase bc;
        void *body;
    } cases[] = {
        {CORRAL__V1__ENVELOPE__BODY_REPLY, &reply},
        {CORRAL__V1__ENVELOPE__BODY_DISPATCH, &dispatch},
        {CORRAL__V1__ENVELOPE__BODY_CANCEL, &cancel},
        {CORRAL__V1__ENVELOPE__BODY_EVENT, &event},
        {CORRAL__V1__ENVELOPE__BODY_SHUTDOWN, &shut},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
        env.version = 1;
        env.request_id = 50 + i;
        env.body_case = cases[i].bc;
        env.reply = cases[i].body;
        expect_fail(&env, SIDE_CLIENT, CORRAL_EBADREQUEST);
        expect_fail(&env, SIDE_WORKER, CORRAL_EBADREQUEST);
    }
}

Test(wire, wrong_side)
{
    Corral__V1__Submit sb = CORRAL__V1__SUBMIT__INIT;
    sb.group = S("g1");
    sb.kind = S("k");
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    env.version = 1;
    env.request_id = 4;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_SUBMIT;
    env.submit = &sb;
    const char *msg = expect_fail(&env, SIDE_WORKER, CORRAL_EBADREQUEST);
    cr_assert(strstr(msg, "client endpoint") != NULL, "%s", msg);

    Corral__V1__Heartbeat hb = CORRAL__V1__HEARTBEAT__INIT;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    msg = expect_fail(&env, SIDE_CLIENT, CORRAL_EBADREQUEST);
    cr_assert(strstr(msg, "worker endpoint") != NULL, "%s", msg);

    /* Every client body on the worker side, every worker body on the client side. */
    Corral__V1__Envelope__BodyCase client[] = {10, 11, 12, 13, 14, 15, 16, 17};
    Corral__V1__Envelope__BodyCase worker[] = {30, 31, 32, 33, 34, 35};
    Corral__V1__Failed any = CORRAL__V1__FAILED__INIT; /* an empty body of any kind */
    env.failed = &any;
    for (size_t i = 0; i < 8; i++) {
        env.body_case = client[i];
        msg = expect_fail(&env, SIDE_WORKER, CORRAL_EBADREQUEST);
        cr_assert(strstr(msg, "client endpoint") != NULL, "%s", msg);
    }
    for (size_t i = 0; i < 6; i++) {
        env.body_case = worker[i];
        msg = expect_fail(&env, SIDE_CLIENT, CORRAL_EBADREQUEST);
        cr_assert(strstr(msg, "worker endpoint") != NULL, "%s", msg);
    }
}

Test(wire, missing_required_fields)
{
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    env.version = 1;
    env.request_id = 6;
    const char *msg;

    Corral__V1__Submit sb = CORRAL__V1__SUBMIT__INIT;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_SUBMIT;
    env.submit = &sb;
    sb.kind = S("k");
    msg = expect_fail(&env, SIDE_CLIENT, CORRAL_EBADREQUEST);
    cr_assert(strstr(msg, "group") != NULL, "%s", msg);
    sb.group = S("g1");
    sb.kind = S("");
    msg = expect_fail(&env, SIDE_CLIENT, CORRAL_EBADREQUEST);
    cr_assert(strstr(msg, "kind") != NULL, "%s", msg);

    /* Client bodies whose only required field is a group or job, sent empty. */
    struct {
        Corral__V1__Envelope__BodyCase bc;
        const char *field;
    } one[] = {
        {CORRAL__V1__ENVELOPE__BODY_CLOSE_GROUP, "group"},
        {CORRAL__V1__ENVELOPE__BODY_CANCEL_GROUP, "group"},
        {CORRAL__V1__ENVELOPE__BODY_CANCEL_JOB, "job"},
        {CORRAL__V1__ENVELOPE__BODY_GET_TREE, "group"},
        {CORRAL__V1__ENVELOPE__BODY_WAIT_GROUP, "group"},
        {CORRAL__V1__ENVELOPE__BODY_SUBSCRIBE, "group"},
    };
    Corral__V1__CancelGroup empty = CORRAL__V1__CANCEL_GROUP__INIT;
    empty.reason = S("why");
    env.cancel_group = &empty;
    for (size_t i = 0; i < sizeof(one) / sizeof(one[0]); i++) {
        env.body_case = one[i].bc;
        msg = expect_fail(&env, SIDE_CLIENT, CORRAL_EBADREQUEST);
        cr_assert(strstr(msg, one[i].field) != NULL, "%s", msg);
    }

    /* Worker reports without a job. */
    Corral__V1__Failed fl = CORRAL__V1__FAILED__INIT;
    fl.type = S("E");
    env.failed = &fl;
    Corral__V1__Envelope__BodyCase reports[] = {32, 33, 34, 35};
    for (size_t i = 0; i < 4; i++) {
        env.body_case = reports[i];
        msg = expect_fail(&env, SIDE_WORKER, CORRAL_EBADREQUEST);
        cr_assert(strstr(msg, "job") != NULL, "%s", msg);
    }
    fl.job = S("j1");
    fl.type = S("");
    env.body_case = CORRAL__V1__ENVELOPE__BODY_FAILED;
    msg = expect_fail(&env, SIDE_WORKER, CORRAL_EBADREQUEST);
    cr_assert(strstr(msg, "type") != NULL, "%s", msg);

    /* Ready: no kinds, an empty kind, concurrency 0, a running entry without job. */
    char *kinds[] = {S("add"), S("")};
    Corral__V1__RunningJob rj = CORRAL__V1__RUNNING_JOB__INIT;
    Corral__V1__RunningJob *running[] = {&rj};
    Corral__V1__Ready rd = CORRAL__V1__READY__INIT;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_READY;
    env.ready = &rd;
    rd.concurrency = 1;
    msg = expect_fail(&env, SIDE_WORKER, CORRAL_EBADREQUEST);
    cr_assert(strstr(msg, "kinds") != NULL, "%s", msg);
    rd.kinds = kinds;
    rd.n_kinds = 2;
    msg = expect_fail(&env, SIDE_WORKER, CORRAL_EBADREQUEST);
    cr_assert(strstr(msg, "kind") != NULL, "%s", msg);
    rd.n_kinds = 1;
    rd.concurrency = 0;
    msg = expect_fail(&env, SIDE_WORKER, CORRAL_EBADREQUEST);
    cr_assert(strstr(msg, "concurrency") != NULL, "%s", msg);
    rd.concurrency = 2;
    rd.running = running;
    rd.n_running = 1;
    msg = expect_fail(&env, SIDE_WORKER, CORRAL_EBADREQUEST);
    cr_assert(strstr(msg, "job") != NULL, "%s", msg);
    rj.job = S("j9");
    struct cmd c;
    struct wire_decoded *h;
    expect_ok(&env, SIDE_WORKER, &c, &h);
    wire_decoded_free(&h);
}

Test(wire, strings_must_be_utf8)
{
    Corral__V1__Submit sb = CORRAL__V1__SUBMIT__INIT;
    sb.group = S("g1");
    sb.kind = S("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    env.version = 1;
    env.request_id = 11;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_SUBMIT;
    env.submit = &sb;
    struct cmd c;
    struct wire_decoded *h;
    expect_ok(&env, SIDE_CLIENT, &c, &h);
    cr_assert_str_eq(c.kind, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
    wire_decoded_free(&h);

    const char *bad[] = {"\xff",     "a\x80",       "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80",
                         "\xe2\x82", "\xf0\x9f\x98"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        sb.kind = S(bad[i]);
        const char *msg = expect_fail(&env, SIDE_CLIENT, CORRAL_EBADREQUEST);
        cr_assert(strstr(msg, "UTF-8") != NULL, "%s", msg);
    }

    /* A worker's error message and a Ready kind are checked too. */
    Corral__V1__Failed fl = CORRAL__V1__FAILED__INIT;
    fl.job = S("j1");
    fl.type = S("E");
    fl.message = S("stderr: \xfe\xff");
    env.body_case = CORRAL__V1__ENVELOPE__BODY_FAILED;
    env.failed = &fl;
    expect_fail(&env, SIDE_WORKER, CORRAL_EBADREQUEST);
    char *kinds[] = {S("ok"), S("\x80")};
    Corral__V1__Ready rd = CORRAL__V1__READY__INIT;
    rd.kinds = kinds;
    rd.n_kinds = 2;
    rd.concurrency = 1;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_READY;
    env.ready = &rd;
    expect_fail(&env, SIDE_WORKER, CORRAL_EBADREQUEST);
}

Test(wire, every_prefix_of_submit)
{
    Corral__V1__Submit sb = CORRAL__V1__SUBMIT__INIT;
    sb.group = S("g123");
    sb.kind = S("thumbnail");
    sb.payload.data = (uint8_t *)BIN;
    sb.payload.len = sizeof(BIN);
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    env.version = 1;
    env.request_id = 300;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_SUBMIT;
    env.submit = &sb;
    size_t len;
    uint8_t *full = pack(&env, &len);
    for (size_t n = 0; n < len; n++) {
        /* An exact-size copy, so that valgrind and ASan see any read past the end. */
        uint8_t *p = malloc(n > 0 ? n : 1);
        memcpy(p, full, n);
        struct cmd c;
        struct wire_decoded *h;
        uint64_t rid;
        const char *msg = NULL;
        int rc = wire_decode(p, n, SIDE_CLIENT, &c, &h, &rid, &msg);
        cr_assert_eq(rc, CORRAL_EBADREQUEST, "prefix %zu: %d", n, rc);
        cr_assert_null(h);
        cr_assert(rid == 0 || rid == 300);
        free(p);
    }
    struct cmd c;
    struct wire_decoded *h;
    cr_assert_eq(wire_decode(full, len, SIDE_CLIENT, &c, &h, NULL, NULL), 0);
    wire_decoded_free(&h);
    free(full);
}

/* Decodes buf[0..n) on both sides and checks the result is consistent. */
static void
fuzz_one(const uint8_t *buf, size_t n)
{
    for (int side = SIDE_CLIENT; side <= SIDE_WORKER; side++) {
        struct cmd c;
        struct wire_decoded *h;
        uint64_t rid;
        const char *msg = NULL;
        int rc = wire_decode(buf, n, (enum peer_side)side, &c, &h, &rid, &msg);
        if (rc == 0) {
            cr_assert_not_null(h);
            assert_strings_set(&c);
            for (size_t i = 0; i < c.nkinds; i++)
                cr_assert_not_null(c.kinds[i]);
            for (size_t i = 0; i < c.nrunning; i++)
                cr_assert_not_null(c.running[i].job);
            wire_decoded_free(&h);
        } else {
            cr_assert(rc == CORRAL_EBADREQUEST || rc == CORRAL_EVERSION, "rc %d", rc);
            cr_assert_null(h);
            cr_assert_not_null(msg);
        }
    }
}

Test(wire, random_bytes, .timeout = 120)
{
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 10000; i++) {
        size_t n = (size_t)(rnd(&seed) % 96);
        uint8_t *buf = malloc(n > 0 ? n : 1);
        for (size_t j = 0; j < n; j++)
            buf[j] = (uint8_t)rnd(&seed);
        /* A third of them start like a real envelope, to get past the first bytes. */
        if (i % 3 == 0 && n >= 4) {
            buf[0] = 0x08;
            buf[1] = 0x01;
            buf[2] = (uint8_t)(0x52 + 8 * (rnd(&seed) % 4)); /* fields 10..13, bytes */
        }
        fuzz_one(buf, n);
        free(buf);
    }
}

Test(wire, mutated_requests, .timeout = 120)
{
    char *kinds[] = {S("add"), S("mul")};
    Corral__V1__RunningJob rj = CORRAL__V1__RUNNING_JOB__INIT;
    rj.job = S("j1");
    rj.attempt = 1;
    Corral__V1__RunningJob *running[] = {&rj, &rj};
    Corral__V1__Ready rd = CORRAL__V1__READY__INIT;
    rd.kinds = kinds;
    rd.n_kinds = 2;
    rd.concurrency = 4;
    rd.running = running;
    rd.n_running = 2;
    rd.name = S("w");
    Corral__V1__Failed fl = CORRAL__V1__FAILED__INIT;
    fl.job = S("j1");
    fl.type = S("E");
    fl.message = S("m");
    fl.details.data = (uint8_t *)BIN;
    fl.details.len = sizeof(BIN);
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    env.version = 1;
    env.request_id = 1000;
    Corral__V1__Envelope__BodyCase bcs[] = {CORRAL__V1__ENVELOPE__BODY_READY,
                                            CORRAL__V1__ENVELOPE__BODY_FAILED};
    void *bodies[] = {&rd, &fl};
    uint64_t seed = 42;
    for (int k = 0; k < 2; k++) {
        env.body_case = bcs[k];
        env.ready = bodies[k];
        size_t len;
        uint8_t *orig = pack(&env, &len);
        for (int i = 0; i < 5000; i++) {
            uint8_t *buf = malloc(len);
            memcpy(buf, orig, len);
            int flips = 1 + (int)(rnd(&seed) % 3);
            for (int f = 0; f < flips; f++)
                buf[rnd(&seed) % len] = (uint8_t)rnd(&seed);
            fuzz_one(buf, len);
            free(buf);
        }
        free(orig);
    }
}

/* ------------------------------------------------------------------ arena */

Test(arena, alignment_and_no_overlap)
{
    struct arena a;
    arena_init(&a);
    enum { N = 3000 };
    unsigned char *ptrs[N];
    for (size_t i = 0; i < N; i++) {
        size_t size = 1 + (i * 37) % 211;
        ptrs[i] = arena_alloc(&a, size);
        cr_assert_not_null(ptrs[i]);
        cr_assert_eq((uintptr_t)ptrs[i] % alignof(max_align_t), 0);
        cr_assert_geq(alignof(max_align_t), 16);
        for (size_t j = 0; j < size; j++)
            cr_assert_eq(ptrs[i][j], 0);
        memset(ptrs[i], (int)(i & 0xff), size);
    }
    for (size_t i = 0; i < N; i++) {
        size_t size = 1 + (i * 37) % 211;
        for (size_t j = 0; j < size; j++)
            cr_assert_eq(ptrs[i][j], (unsigned char)(i & 0xff));
    }
    arena_fini(&a);
    cr_assert_null(a.head);
}

Test(arena, zeroed_after_reset)
{
    struct arena a;
    arena_init(&a);
    unsigned char *p = arena_alloc(&a, 500);
    memset(p, 0xff, 500);
    arena_reset(&a);
    unsigned char *q = arena_alloc(&a, 500);
    cr_assert_eq(p, q, "reset rewinds the first chunk");
    for (size_t i = 0; i < 500; i++)
        cr_assert_eq(q[i], 0);
    arena_fini(&a);
}

Test(arena, large_allocations)
{
    struct arena a;
    arena_init(&a);
    /* A big block first, then small ones, then another big one between small ones. */
    size_t big = (size_t)3 << 20;
    unsigned char *b1 = arena_alloc(&a, big);
    cr_assert_not_null(b1);
    cr_assert_eq((uintptr_t)b1 % alignof(max_align_t), 0);
    for (size_t i = 0; i < big; i += 4096)
        cr_assert_eq(b1[i], 0);
    memset(b1, 1, big);
    unsigned char *s1 = arena_alloc(&a, 10);
    unsigned char *b2 = arena_alloc(&a, 100000);
    unsigned char *s2 = arena_alloc(&a, 10);
    cr_assert(s1 && b2 && s2);
    cr_assert_eq(s2, s1 + 16, "a big block does not interrupt the small ones");
    cr_assert_eq(b1[big - 1], 1);
    arena_reset(&a);
    cr_assert_not_null(a.head, "reset keeps a chunk");
    cr_assert_eq(a.used, 0);
    cr_assert_eq(arena_alloc(&a, 10), s1, "the kept chunk is the first standard one");
    arena_fini(&a);
}

Test(arena, reset_keeps_first_chunk)
{
    struct arena a;
    arena_init(&a);
    void *first = arena_alloc(&a, 64);
    for (int i = 0; i < 100; i++)
        cr_assert_not_null(arena_alloc(&a, 4000)); /* several chunks */
    arena_reset(&a);
    cr_assert_eq(arena_alloc(&a, 64), first);
    arena_reset(&a);
    arena_reset(&a);
    arena_fini(&a);
    arena_fini(&a);
    arena_reset(&a); /* on an empty arena */
    cr_assert_null(a.head);
}

Test(arena, edge_cases)
{
    struct arena a;
    arena_init(&a);
    void *z1 = arena_alloc(&a, 0);
    void *z2 = arena_alloc(&a, 0);
    cr_assert(z1 && z2 && z1 != z2);
    cr_assert_null(arena_alloc(&a, SIZE_MAX));
    cr_assert_null(arena_alloc(&a, SIZE_MAX - 8));
    char *s = arena_strdup(&a, "hello");
    cr_assert_str_eq(s, "hello");
    char *e = arena_strdup(&a, NULL);
    cr_assert_str_eq(e, "");
    arena_fini(&a);
}

/* ------------------------------------------------------------------ outbox */

Test(outbox, growth_and_reset)
{
    struct outbox ob;
    outbox_init(&ob);
    struct peer p = {.side = SIDE_WORKER, .len = 3, .id = {1, 2, 3}};
    enum { N = 5000 };
    for (size_t i = 0; i < N; i++) {
        struct out_msg *m = outbox_msg(&ob, (enum out_type)(i % 5), i % 2 ? &p : NULL);
        cr_assert_not_null(m);
        cr_assert_eq(m->type, (enum out_type)(i % 5));
        cr_assert_eq(m->request_id, 0);
        cr_assert_null(m->tree);
        cr_assert_eq(m->to.len, i % 2 ? 3 : 0);
        m->request_id = i;
        m->id = arena_strdup(&ob.arena, "g1");
    }
    cr_assert_eq(ob.nmsgs, N);
    cr_assert_geq(ob.capmsgs, N);
    cr_assert_eq(ob.capmsgs & (ob.capmsgs - 1), 0, "capacity doubles");
    for (size_t i = 0; i < N; i++) {
        cr_assert_eq(ob.msgs[i].request_id, i);
        cr_assert_str_eq(ob.msgs[i].id, "g1");
    }
    for (uint64_t i = 0; i < 1000; i++) {
        struct group_row g = {.id = i, .state = ST_OPEN, .is_new = true};
        struct job_row j = {.id = i, .group_id = 1, .kind = "k", .attempt = (uint32_t)i};
        cr_assert(outbox_group_row(&ob, &g));
        cr_assert(outbox_job_row(&ob, &j));
    }
    cr_assert_eq(ob.ngroups, 1000);
    cr_assert_eq(ob.njobs, 1000);
    cr_assert_eq(ob.groups[999].id, 999);
    cr_assert_eq(ob.jobs[500].attempt, 500);
    size_t cap = ob.capmsgs;
    struct out_msg *before = ob.msgs;
    outbox_reset(&ob);
    cr_assert_eq(ob.nmsgs + ob.ngroups + ob.njobs, 0);
    cr_assert_eq(ob.capmsgs, cap);
    struct out_msg *m = outbox_msg(&ob, OUTMSG_SHUTDOWN, &p);
    cr_assert_eq(m, before, "reset keeps the buffers");
    cr_assert_eq(m->request_id, 0, "a reused slot is zeroed");
    outbox_fini(&ob);
    cr_assert_null(ob.msgs);
    cr_assert_eq(ob.capmsgs, 0);
    outbox_fini(&ob);
}

/* ------------------------------------------------------------------ log */

/* Points stderr at a fresh temporary file and returns it (the test process is forked,
 * so nothing needs restoring). */
static FILE *
capture_stderr(void)
{
    FILE *f = tmpfile();
    cr_assert_not_null(f);
    fflush(stderr);
    cr_assert_geq(dup2(fileno(f), STDERR_FILENO), 0);
    return f;
}

/* Reads everything written to the captured stderr into buf. */
static void
read_captured(FILE *f, char *buf, size_t size)
{
    fflush(stderr);
    rewind(f);
    size_t n = fread(buf, 1, size - 1, f);
    buf[n] = '\0';
}

/* Returns line with its timestamp value replaced by "T", checking its shape. */
static void
strip_ts(const char *line, const char *prefix, char *out, size_t size)
{
    size_t pl = strlen(prefix);
    cr_assert(strncmp(line, prefix, pl) == 0, "%s", line);
    const char *ts = line + pl;
    /* 2026-11-23T08:00:00.123Z */
    cr_assert(strlen(ts) > 24 && ts[4] == '-' && ts[10] == 'T' && ts[19] == '.' && ts[23] == 'Z',
              "%s", line);
    snprintf(out, size, "%sT%s", prefix, ts + 24);
}

Test(log, logfmt_line)
{
    FILE *f = capture_stderr();
    log_setup(LOG_INFO, LOG_FORMAT_LOGFMT);
    log_event(LOG_INFO, "bind", "endpoint=%s side=%s", "tcp://127.0.0.1:7700", "client");
    log_event(LOG_DEBUG, "hidden", "x=%d", 1);
    log_event(LOG_ERROR, "oops", "msg=\"%s\" n=%d", "two\nlines", 3);
    log_event(LOG_WARN, "bare", NULL);
    char buf[4096], line[1024];
    read_captured(f, buf, sizeof(buf));
    char *save = NULL;
    char *l1 = strtok_r(buf, "\n", &save);
    char *l2 = strtok_r(NULL, "\n", &save);
    char *l3 = strtok_r(NULL, "\n", &save);
    cr_assert_null(strtok_r(NULL, "\n", &save), "one line per event, debug filtered out");
    strip_ts(l1, "ts=", line, sizeof(line));
    cr_assert_str_eq(line, "ts=T level=info event=bind endpoint=tcp://127.0.0.1:7700 side=client");
    strip_ts(l2, "ts=", line, sizeof(line));
    cr_assert_str_eq(line, "ts=T level=error event=oops msg=\"two\\nlines\" n=3");
    strip_ts(l3, "ts=", line, sizeof(line));
    cr_assert_str_eq(line, "ts=T level=warn event=bare");
}

Test(log, json_line)
{
    FILE *f = capture_stderr();
    log_setup(LOG_DEBUG, LOG_FORMAT_JSON);
    log_event(LOG_DEBUG, "turn", "a=%d b=\"%s\" c=\"q\\\"uote\\\\\" flag d= level=x u=%s", 1,
              "two words", "caf\xc3\xa9\xff\x01");
    char buf[4096], line[1024];
    read_captured(f, buf, sizeof(buf));
    char *nl = strchr(buf, '\n');
    cr_assert_not_null(nl);
    cr_assert_eq(nl[1], '\0');
    *nl = '\0';
    strip_ts(buf, "{\"ts\":\"", line, sizeof(line));
    cr_assert_str_eq(line, "{\"ts\":\"T\",\"level\":\"debug\",\"event\":\"turn\",\"a\":\"1\","
                           "\"b\":\"two words\",\"c\":\"q\\\"uote\\\\\",\"flag\":\"\","
                           "\"d\":\"\",\"_level\":\"x\",\"u\":\"caf\xc3\xa9\\ufffd\\u0001\"}");
}

Test(log, escapes)
{
    FILE *f = capture_stderr();
    log_setup(LOG_INFO, LOG_FORMAT_LOGFMT);
    log_event(LOG_INFO, "two words", "t=%s", "a\tb\r\x02");
    log_setup(LOG_INFO, LOG_FORMAT_JSON);
    /* Escapes in a quoted value; 3- and 4-byte UTF-8 kept; an overlong form, a
     * surrogate and a truncated sequence replaced. */
    log_event(LOG_INFO, "e", "m=\"x\\ny\\tz\\q\" u=%s o=%s s=%s t=%s",
              "\xe2\x82\xac\xf0\x9f\x98\x80", "\xc0\xaf", "\xed\xa0\x80", "\xf0\x9f");
    char buf[4096], line[1024];
    read_captured(f, buf, sizeof(buf));
    char *save = NULL;
    char *l1 = strtok_r(buf, "\n", &save);
    char *l2 = strtok_r(NULL, "\n", &save);
    strip_ts(l1, "ts=", line, sizeof(line));
    cr_assert_str_eq(line, "ts=T level=info event=\"two words\" t=a\\tb\\r\\x02");
    strip_ts(l2, "{\"ts\":\"", line, sizeof(line));
    cr_assert_str_eq(line, "{\"ts\":\"T\",\"level\":\"info\",\"event\":\"e\","
                           "\"m\":\"x\\ny\\tz\\\\q\",\"u\":\"\xe2\x82\xac\xf0\x9f\x98\x80\","
                           "\"o\":\"\\ufffd\\ufffd\",\"s\":\"\\ufffd\\ufffd\\ufffd\","
                           "\"t\":\"\\ufffd\\ufffd\"}");
}

Test(log, long_line)
{
    FILE *f = capture_stderr();
    log_setup(LOG_INFO, LOG_FORMAT_JSON);
    static char big[10000];
    memset(big, 'x', sizeof(big) - 1);
    log_event(LOG_INFO, "big", "v=%s", big);
    static char buf[20000];
    read_captured(f, buf, sizeof(buf));
    cr_assert(strstr(buf, big) != NULL);
    cr_assert_eq(buf[strlen(buf) - 2], '}');
}

Test(log, parse)
{
    enum log_level l = LOG_ERROR;
    enum log_format fm = LOG_FORMAT_LOGFMT;
    cr_assert_eq(log_parse_level("debug", &l), 0);
    cr_assert_eq(l, LOG_DEBUG);
    cr_assert_eq(log_parse_level("WARNING", &l), 0);
    cr_assert_eq(l, LOG_WARN);
    cr_assert_eq(log_parse_level("Info", &l), 0);
    cr_assert_eq(l, LOG_INFO);
    cr_assert_eq(log_parse_level("error", &l), 0);
    cr_assert_eq(l, LOG_ERROR);
    cr_assert_eq(log_parse_level("loud", &l), CORRAL_EINVAL);
    cr_assert_eq(log_parse_level(NULL, &l), CORRAL_EINVAL);
    cr_assert_eq(l, LOG_ERROR);
    cr_assert_eq(log_parse_format("json", &fm), 0);
    cr_assert_eq(fm, LOG_FORMAT_JSON);
    cr_assert_eq(log_parse_format("logfmt", &fm), 0);
    cr_assert_eq(fm, LOG_FORMAT_LOGFMT);
    cr_assert_eq(log_parse_format("xml", &fm), CORRAL_EINVAL);
}
