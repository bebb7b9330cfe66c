/* test_engine.c - the pure state machine, without sockets or SQL: commands in, outbox
 * out. Each test is named after the rule of DESIGN.md it proves. */
#include "engine.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct engine *E;
static struct outbox OB;
static uint64_t NOW;
static uint64_t RID;

static const struct peer CLIENT = {SIDE_CLIENT, 1, {'c'}};
static const struct peer W1 = {SIDE_WORKER, 2, {'w', '1'}};
static const struct peer W2 = {SIDE_WORKER, 2, {'w', '2'}};

static void
setup(void)
{
    struct engine_config cfg = {.heartbeat_interval_ms = 100,
                                .heartbeat_timeout_ms = 1000,
                                .cancel_resend_ms = 500,
                                .cancel_grace_ms = 3000,
                                .max_payload = 1024};
    cr_assert_eq(engine_new(&E, &cfg), 0);
    outbox_init(&OB);
    NOW = 1000000;
    RID = 0;
}

static void
teardown(void)
{
    engine_flush(E, &OB);
    outbox_fini(&OB);
    engine_free(&E);
}

TestSuite(engine, .init = setup, .fini = teardown);

/* Starts a new turn: the previous turn's messages are dropped (its rows flushed). */
static void
new_turn(void)
{
    engine_flush(E, &OB);
    outbox_reset(&OB);
    engine_end_turn(E);
}

/* Applies a command in a new turn, runs the tick, and returns the reply to it. */
static struct out_msg *
req(const struct peer *from, struct cmd c)
{
    new_turn();
    c.request_id = ++RID;
#define EMPTY(f)                                                                                   \
    if (c.f == NULL)                                                                               \
    c.f = ""
    EMPTY(id);
    EMPTY(parent_group);
    EMPTY(parent_job);
    EMPTY(kind);
    EMPTY(reason);
    EMPTY(err_type);
    EMPTY(err_message);
    EMPTY(name);
#undef EMPTY
    engine_handle(E, from, &c, NOW, &OB);
    engine_tick(E, NOW, &OB);
    for (size_t i = 0; i < OB.nmsgs; i++)
        if (OB.msgs[i].type == OUTMSG_REPLY && OB.msgs[i].request_id == c.request_id)
            return &OB.msgs[i];
    return NULL;
}

static size_t
count(enum out_type type, const struct peer *to)
{
    size_t n = 0;
    for (size_t i = 0; i < OB.nmsgs; i++)
        if (OB.msgs[i].type == type &&
            (to == NULL || memcmp(OB.msgs[i].to.id, to->id, to->len) == 0))
            n++;
    return n;
}

static const struct out_msg *
find_msg(enum out_type type, const char *job)
{
    for (size_t i = 0; i < OB.nmsgs; i++)
        if (OB.msgs[i].type == type && (job == NULL || strcmp(OB.msgs[i].job, job) == 0))
            return &OB.msgs[i];
    return NULL;
}

static char ids[64][MODEL_ID_MAX];
static int nids;

static const char *
keep(const char *id)
{
    char *slot = ids[nids++ % 64];
    snprintf(slot, MODEL_ID_MAX, "%s", id);
    return slot;
}

static const char *
open_group(const char *parent)
{
    struct out_msg *r = req(&CLIENT, (struct cmd){.type = CMD_OPEN_GROUP, .parent_group = parent});
    cr_assert(r && r->code == 0, "open_group failed");
    return keep(r->id);
}

static const char *
submit_full(const char *group, const char *kind, bool *cancelled)
{
    struct out_msg *r = req(&CLIENT, (struct cmd){.type = CMD_SUBMIT, .id = group, .kind = kind});
    cr_assert(r && r->code == 0, "submit failed: %s", r ? r->message : "no reply");
    if (cancelled)
        *cancelled = r->cancelled;
    return keep(r->id);
}

static const char *
submit(const char *group, const char *kind)
{
    return submit_full(group, kind, NULL);
}

static int
simple(enum cmd_type type, const char *id, const char *reason)
{
    struct out_msg *r = req(&CLIENT, (struct cmd){.type = type, .id = id, .reason = reason});
    cr_assert(r);
    return r->code;
}

static void
ready(const struct peer *w, const char *kind, uint32_t concurrency)
{
    const char *kinds[] = {kind};
    struct out_msg *r = req(w, (struct cmd){.type = CMD_READY,
                                            .kinds = kinds,
                                            .nkinds = 1,
                                            .concurrency = concurrency,
                                            .name = "test"});
    cr_assert(r && r->code == 0);
}

static int
report(const struct peer *w, enum cmd_type type, const char *job, uint32_t attempt,
       const char *text)
{
    struct cmd c = {.type = type, .id = job, .attempt = attempt};
    if (type == CMD_FAILED) {
        c.err_type = "ValueError";
        c.err_message = text;
    } else if (text) {
        c.data = (struct bytes){(const uint8_t *)text, strlen(text)};
    }
    struct out_msg *r = req(w, c);
    cr_assert(r);
    return r->code;
}

static struct tnode *
tree(const char *group)
{
    struct out_msg *r = req(&CLIENT, (struct cmd){.type = CMD_GET_TREE, .id = group});
    cr_assert(r && r->code == 0 && r->tree);
    return r->tree;
}

static const struct tnode *
child(const struct tnode *t, const char *id)
{
    for (size_t i = 0; i < t->nchildren; i++)
        if (strcmp(t->children[i].id, id) == 0)
            return &t->children[i];
    cr_assert_fail("no child %s", id);
    return NULL;
}

/* ------------------------------------------------------------------ S1 */

Test(engine, s1_group_ends_only_when_closed_and_children_ended)
{
    ready(&W1, "k", 4);
    const char *g = open_group(NULL);
    const char *j = submit(g, "k");
    cr_assert_eq(tree(g)->state, ST_OPEN);
    cr_assert_eq(report(&W1, CMD_DONE, j, 1, "r"), 0);
    cr_assert_eq(tree(g)->state, ST_OPEN, "an open group must not end on its own");
    cr_assert_eq(simple(CMD_CLOSE_GROUP, g, NULL), 0);
    struct tnode *t = tree(g);
    cr_assert_eq(t->state, ST_ENDED);
    cr_assert_eq(t->outcome, OUT_SUCCEEDED);
}

Test(engine, s1_child_added_after_close_is_waited_for)
{
    ready(&W1, "k", 4);
    const char *g = open_group(NULL);
    const char *j1 = submit(g, "k");
    cr_assert_eq(simple(CMD_CLOSE_GROUP, g, NULL), 0);
    const char *j2 = submit(g, "k"); /* a job inside starts a sibling */
    cr_assert_eq(report(&W1, CMD_DONE, j1, 1, "a"), 0);
    cr_assert_eq(tree(g)->state, ST_CLOSED);
    cr_assert_eq(report(&W1, CMD_DONE, j2, 1, "b"), 0);
    cr_assert_eq(tree(g)->outcome, OUT_SUCCEEDED);
}

Test(engine, s1_submit_to_ended_group_is_not_active)
{
    const char *g = open_group(NULL);
    cr_assert_eq(simple(CMD_CLOSE_GROUP, g, NULL), 0);
    struct out_msg *r = req(&CLIENT, (struct cmd){.type = CMD_SUBMIT, .id = g, .kind = "k"});
    cr_assert_eq(r->code, CORRAL_ENOTACTIVE);
    cr_assert(strstr(r->message, "not active"));
}

Test(engine, s1_single_failure_is_still_an_exception_group)
{
    ready(&W1, "k", 4);
    const char *g = open_group(NULL);
    const char *j = submit(g, "k");
    cr_assert_eq(report(&W1, CMD_FAILED, j, 1, "boom"), 0);
    struct tnode *t = tree(g);
    cr_assert_eq(t->state, ST_ENDED, "a failing group ends without being closed");
    cr_assert_eq(t->outcome, OUT_FAILED);
    cr_assert_str_eq(t->error->type, "ExceptionGroup");
    cr_assert_str_eq(t->error->group, g);
    cr_assert_eq(t->error->nexceptions, 1);
    cr_assert_str_eq(t->error->exceptions[0].type, "ValueError");
    cr_assert_str_eq(t->error->exceptions[0].job, j);
}

Test(engine, s1_wait_does_not_close)
{
    const char *g = open_group(NULL);
    struct out_msg *r = req(&CLIENT, (struct cmd){.type = CMD_WAIT_GROUP, .id = g});
    cr_assert_null(r, "the reply to a wait is deferred until the group ends");
    cr_assert_eq(tree(g)->state, ST_OPEN);
    new_turn();
    struct cmd c = {.type = CMD_CLOSE_GROUP,
                    .id = g,
                    .request_id = 99,
                    .parent_group = "",
                    .parent_job = "",
                    .kind = "",
                    .reason = "",
                    .err_type = "",
                    .err_message = "",
                    .name = ""};
    engine_handle(E, &CLIENT, &c, NOW, &OB);
    size_t replies = count(OUTMSG_REPLY, &CLIENT);
    cr_assert_eq(replies, 2, "close's reply and the deferred wait reply");
    cr_assert_not_null(OB.msgs[0].tree, "the wait reply carries the ended tree");
}

/* ------------------------------------------------------------------ S2, S3 */

Test(engine, s2_failure_cancels_queued_and_running_siblings)
{
    ready(&W1, "k", 2);
    const char *g = open_group(NULL);
    const char *a = submit(g, "k"); /* running */
    const char *b = submit(g, "k"); /* running */
    const char *q = submit(g, "k"); /* queued: no free slot */
    cr_assert_eq(report(&W1, CMD_FAILED, a, 1, "boom"), 0);
    const struct out_msg *cancel = find_msg(OUTMSG_CANCEL, b);
    cr_assert_not_null(cancel, "the running sibling's worker gets CANCEL");
    cr_assert_eq(cancel->source, SRC_SIBLING_FAILED);
    cr_assert_str_eq(cancel->reason, a);
    cr_assert_null(find_msg(OUTMSG_DISPATCH, q), "the queued sibling is never dispatched");
    struct tnode *t = tree(g);
    cr_assert_eq(child(t, q)->outcome, OUT_CANCELLED);
    cr_assert_eq(child(t, b)->state, ST_CANCELLING);
    cr_assert_eq(t->state, ST_CANCELLING, "the group waits for the running sibling");
    cr_assert(t->cancel_called);
    cr_assert_eq(t->cancel_source, SRC_SIBLING_FAILED);
    cr_assert_eq(report(&W1, CMD_CANCEL_ACK, b, 1, NULL), 0);
    t = tree(g);
    cr_assert_eq(t->outcome, OUT_FAILED);
    cr_assert_eq(t->error->nexceptions, 1, "cancellations are not errors");
    cr_assert(t->cancelled_caught);
}

Test(engine, s3_staggered_failures_in_order_and_success_after_cancel_kept)
{
    ready(&W1, "k", 4);
    const char *g = open_group(NULL);
    const char *a = submit(g, "k");
    const char *b = submit(g, "k");
    const char *c = submit(g, "k");
    const char *d = submit(g, "k");
    cr_assert_eq(report(&W1, CMD_FAILED, b, 1, "first"), 0);
    cr_assert_eq(report(&W1, CMD_DONE, d, 1, "kept"), 0); /* finished after cancel */
    cr_assert_eq(report(&W1, CMD_FAILED, c, 1, "second"), 0);
    cr_assert_eq(report(&W1, CMD_FAILED, a, 1, "third"), 0);
    struct tnode *t = tree(g);
    cr_assert_eq(t->outcome, OUT_FAILED);
    cr_assert_eq(t->error->nexceptions, 3);
    cr_assert_str_eq(t->error->exceptions[0].message, "first");
    cr_assert_str_eq(t->error->exceptions[1].message, "second");
    cr_assert_str_eq(t->error->exceptions[2].message, "third");
    const struct tnode *kept = child(t, d);
    cr_assert_eq(kept->outcome, OUT_SUCCEEDED);
    cr_assert_eq(kept->result.len, 4);
    cr_assert(kept->cancel_called);
}

Test(engine, s3_nested_group_failure_nests_never_flattens)
{
    ready(&W1, "k", 4);
    const char *outer = open_group(NULL);
    const char *inner = open_group(outer);
    const char *x = submit(inner, "k");
    const char *y = submit(outer, "k");
    cr_assert_eq(report(&W1, CMD_FAILED, x, 1, "inner boom"), 0);
    /* inner failed, so outer fails fast and cancels y */
    cr_assert_not_null(find_msg(OUTMSG_CANCEL, y));
    cr_assert_eq(report(&W1, CMD_FAILED, y, 1, "outer boom"), 0);
    struct tnode *t = tree(outer);
    cr_assert_eq(t->outcome, OUT_FAILED);
    cr_assert_eq(t->error->nexceptions, 2);
    const struct terr *nested = &t->error->exceptions[0];
    cr_assert_str_eq(nested->type, "ExceptionGroup");
    cr_assert_str_eq(nested->group, inner);
    cr_assert_eq(nested->nexceptions, 1);
    cr_assert_str_eq(nested->exceptions[0].message, "inner boom");
    cr_assert_str_eq(t->error->exceptions[1].message, "outer boom");
}

/* ------------------------------------------------------------------ S4, S5, S8 */

Test(engine, s4_cancel_reaches_nested_groups_and_job_opened_groups)
{
    ready(&W1, "k", 8);
    const char *root = open_group(NULL);
    const char *mid = open_group(root);
    const char *owner = submit(mid, "k");
    struct out_msg *r = req(&CLIENT, (struct cmd){.type = CMD_OPEN_GROUP, .parent_job = owner});
    cr_assert_eq(r->code, 0);
    const char *jg = keep(r->id);
    const char *deep = submit(jg, "k");
    cr_assert_eq(simple(CMD_CANCEL_GROUP, root, "stop"), 0);
    const struct out_msg *c1 = find_msg(OUTMSG_CANCEL, owner);
    const struct out_msg *c2 = find_msg(OUTMSG_CANCEL, deep);
    cr_assert(c1 && c2, "both running jobs get CANCEL");
    cr_assert_eq(c2->source, SRC_PARENT);
    cr_assert_str_eq(c2->reason, "stop");
    cr_assert_eq(report(&W1, CMD_CANCEL_ACK, owner, 1, NULL), 0);
    cr_assert_eq(tree(root)->state, ST_CANCELLING, "root waits for every acknowledgement");
    cr_assert_eq(report(&W1, CMD_CANCEL_ACK, deep, 1, NULL), 0);
    struct tnode *t = tree(root);
    cr_assert_eq(t->outcome, OUT_CANCELLED);
    cr_assert(t->cancelled_caught, "the outermost cancelled scope caught it");
    cr_assert_not(child(t, mid)->cancelled_caught);
    cr_assert_eq(child(t, mid)->cancel_source, SRC_PARENT);
}

Test(engine, s4_cancel_is_repeated_until_acknowledged)
{
    ready(&W1, "k", 1);
    const char *g = open_group(NULL);
    const char *j = submit(g, "k");
    cr_assert_eq(simple(CMD_CANCEL_GROUP, g, NULL), 0);
    cr_assert_not_null(find_msg(OUTMSG_CANCEL, j));
    new_turn();
    NOW += 600;
    engine_tick(E, NOW, &OB);
    cr_assert_not_null(find_msg(OUTMSG_CANCEL, j), "CANCEL is sent again");
}

Test(engine, s5_child_of_cancelled_scope_is_recorded_cancelled_never_dispatched)
{
    ready(&W1, "k", 4);
    const char *g = open_group(NULL);
    submit(g, "k"); /* keeps the group CANCELLING after the cancel */
    cr_assert_eq(simple(CMD_CANCEL_GROUP, g, "enough"), 0);
    bool cancelled = false;
    const char *late = submit_full(g, "k", &cancelled);
    cr_assert(cancelled, "the reply says the job was born cancelled");
    cr_assert_null(find_msg(OUTMSG_DISPATCH, late));
    const struct tnode *n = child(tree(g), late);
    cr_assert_eq(n->outcome, OUT_CANCELLED);
    cr_assert_str_eq(n->cancel_reason, "enough");
    struct out_msg *r = req(&CLIENT, (struct cmd){.type = CMD_OPEN_GROUP, .parent_group = g});
    cr_assert(r->cancelled, "a group opened in a cancelled scope starts cancelled");
}

Test(engine, s8_explicit_cancel_reason_idempotent_and_failure_wins)
{
    ready(&W1, "k", 4);
    const char *g = open_group(NULL);
    const char *a = submit(g, "k");
    const char *b = submit(g, "k");
    cr_assert_eq(simple(CMD_CANCEL_GROUP, g, "first"), 0);
    cr_assert_eq(simple(CMD_CANCEL_GROUP, g, "second"), 0);
    cr_assert_str_eq(tree(g)->cancel_reason, "first", "the first cancel's reason is kept");
    cr_assert_eq(report(&W1, CMD_CANCEL_ACK, a, 1, NULL), 0);
    cr_assert_eq(report(&W1, CMD_FAILED, b, 1, "cleanup raised"), 0);
    struct tnode *t = tree(g);
    cr_assert_eq(t->outcome, OUT_FAILED, "a child failed, so FAILED, not CANCELLED");
    cr_assert_eq(t->cancel_source, SRC_EXPLICIT);
    cr_assert_eq(simple(CMD_CANCEL_GROUP, g, "late"), 0, "cancel of an ended group is ok");
    cr_assert_eq(tree(g)->outcome, OUT_FAILED);
}

Test(engine, s8_single_job_cancel_is_not_a_group_error)
{
    ready(&W1, "k", 4);
    const char *g = open_group(NULL);
    const char *a = submit(g, "k");
    const char *b = submit(g, "k");
    cr_assert_eq(simple(CMD_CANCEL_JOB, a, "not needed"), 0);
    cr_assert_eq(report(&W1, CMD_CANCEL_ACK, a, 1, NULL), 0);
    cr_assert_eq(report(&W1, CMD_DONE, b, 1, "ok"), 0);
    cr_assert_eq(simple(CMD_CLOSE_GROUP, g, NULL), 0);
    struct tnode *t = tree(g);
    cr_assert_eq(t->outcome, OUT_SUCCEEDED);
    cr_assert_not(t->cancel_called);
    const struct tnode *n = child(t, a);
    cr_assert_eq(n->outcome, OUT_CANCELLED);
    cr_assert(n->cancelled_caught);
    cr_assert_eq(n->cancel_source, SRC_EXPLICIT);
}

/* ------------------------------------------------------------------ dispatch, S13 */

Test(engine, dispatch_oldest_first_within_concurrency)
{
    const char *g = open_group(NULL);
    const char *a = submit(g, "k");
    const char *b = submit(g, "k");
    submit(g, "other");
    const char *c = submit(g, "k");
    ready(&W1, "k", 2);
    cr_assert_eq(count(OUTMSG_DISPATCH, &W1), 2, "never beyond the stated concurrency");
    cr_assert_not_null(find_msg(OUTMSG_DISPATCH, a));
    cr_assert_not_null(find_msg(OUTMSG_DISPATCH, b));
    cr_assert_eq(report(&W1, CMD_DONE, a, 1, "x"), 0);
    cr_assert_not_null(find_msg(OUTMSG_DISPATCH, c), "only kinds the worker serves");
}

Test(engine, s13_stale_attempt_refused_after_lost_worker)
{
    ready(&W1, "k", 1);
    const char *g = open_group(NULL);
    struct out_msg *sr =
        req(&CLIENT, (struct cmd){.type = CMD_SUBMIT, .id = g, .kind = "k", .backoff_ms = 10});
    const char *j = keep(sr->id);
    cr_assert_not_null(find_msg(OUTMSG_DISPATCH, j));
    ready(&W2, "k", 1); /* W2 keeps heartbeating; W1 falls silent */
    NOW += 700;
    cr_assert_eq(req(&W2, (struct cmd){.type = CMD_HEARTBEAT})->code, 0);
    NOW += 700;
    cr_assert_eq(req(&W2, (struct cmd){.type = CMD_HEARTBEAT})->code, 0);
    cr_assert_eq(child(tree(g), j)->state, ST_RETRY_WAIT);
    NOW += 20;
    new_turn();
    engine_tick(E, NOW, &OB);
    const struct out_msg *d = find_msg(OUTMSG_DISPATCH, j);
    cr_assert_not_null(d, "the lost worker's job is dispatched again");
    cr_assert_eq(d->attempt, 2);
    cr_assert_eq(memcmp(d->to.id, W2.id, 2), 0);
    cr_assert_eq(report(&W1, CMD_DONE, j, 1, "late"), CORRAL_EUNKNOWNWORKER);
    ready(&W1, "k", 1);
    cr_assert_eq(report(&W1, CMD_DONE, j, 1, "late"), CORRAL_ESTALE);
    cr_assert_eq(report(&W2, CMD_DONE, j, 2, "fresh"), 0);
    cr_assert_eq(report(&W2, CMD_DONE, j, 2, "again"), CORRAL_ESTALE);
    const struct tnode *n = child(tree(g), j);
    cr_assert_eq(n->result.len, 5, "the result is recorded once");
}

/* ------------------------------------------------------------------ S12 recovery */

static struct group_row saved_groups[64];
static struct job_row saved_jobs[64];
static char saved_strings[64][4][64];
static size_t nsaved_groups, nsaved_jobs;

/* Copies the rows of the current outbox, latest version of each id winning. */
static void
save_rows(void)
{
    engine_flush(E, &OB);
    for (size_t i = 0; i < OB.ngroups; i++) {
        size_t k = 0;
        while (k < nsaved_groups && saved_groups[k].id != OB.groups[i].id)
            k++;
        if (k == nsaved_groups)
            nsaved_groups++;
        saved_groups[k] = OB.groups[i];
        saved_groups[k].cancel_reason = NULL;
    }
    for (size_t i = 0; i < OB.njobs; i++) {
        size_t k = 0;
        while (k < nsaved_jobs && saved_jobs[k].id != OB.jobs[i].id)
            k++;
        if (k == nsaved_jobs)
            nsaved_jobs++;
        saved_jobs[k] = OB.jobs[i];
        snprintf(saved_strings[k][0], 64, "%s", OB.jobs[i].kind);
        saved_jobs[k].kind = saved_strings[k][0];
        snprintf(saved_strings[k][1], 64, "%.*s", (int)OB.jobs[i].result.len,
                 (const char *)OB.jobs[i].result.data);
        saved_jobs[k].result =
            (struct bytes){(const uint8_t *)saved_strings[k][1], OB.jobs[i].result.len};
        saved_jobs[k].payload = (struct bytes){NULL, 0}; /* these tests send none */
        saved_jobs[k].err_type = NULL;
        saved_jobs[k].err_message = NULL;
        saved_jobs[k].err_details = (struct bytes){NULL, 0};
        saved_jobs[k].cancel_reason = NULL;
    }
}

Test(engine, s12_restore_requeues_and_reclaim_window)
{
    ready(&W1, "k", 2);
    const char *g = open_group(NULL);
    save_rows();
    const char *done = submit(g, "k");
    save_rows();
    const char *running = submit(g, "k");
    save_rows();
    const char *queued = submit(g, "k");
    save_rows();
    cr_assert_eq(report(&W1, CMD_DONE, done, 1, "r1"), 0);
    save_rows();
    /* "queued" got the freed slot; pretend the crash happened before it was dispatched
     * by forcing its row back to QUEUED. */
    for (size_t k = 0; k < nsaved_jobs; k++)
        if (saved_jobs[k].id == strtoull(queued + 1, NULL, 10)) {
            saved_jobs[k].state = ST_QUEUED;
            saved_jobs[k].attempt = 0;
        }
    new_turn();
    engine_free(&E);

    struct engine_config cfg = {.heartbeat_interval_ms = 100,
                                .heartbeat_timeout_ms = 1000,
                                .cancel_resend_ms = 500,
                                .cancel_grace_ms = 3000,
                                .max_payload = 1024};
    cr_assert_eq(engine_new(&E, &cfg), 0);
    for (size_t i = 0; i < nsaved_groups; i++)
        cr_assert_eq(engine_restore_group(E, &saved_groups[i]), 0);
    for (size_t i = 0; i < nsaved_jobs; i++) {
        saved_jobs[i].is_new = false;
        cr_assert_eq(engine_restore_job(E, &saved_jobs[i]), 0);
    }
    cr_assert_eq(engine_restore_finish(E, NOW, &OB), 0);
    struct tnode *t = tree(g);
    cr_assert_eq(child(t, done)->outcome, OUT_SUCCEEDED);
    cr_assert_eq(child(t, running)->state, ST_RUNNING);
    /* A worker that re-announces the running job keeps it. */
    const char *kinds[] = {"k"};
    struct running_ref still = {running, 1};
    struct out_msg *r = req(&W2, (struct cmd){.type = CMD_READY,
                                              .kinds = kinds,
                                              .nkinds = 1,
                                              .concurrency = 1,
                                              .running = &still,
                                              .nrunning = 1,
                                              .name = "w"});
    cr_assert_eq(r->nreclaimed, 1);
    cr_assert_null(find_msg(OUTMSG_DISPATCH, queued), "the reclaimed job fills the slot");
    cr_assert_eq(report(&W2, CMD_DONE, running, 1, "r2"), 0);
    cr_assert_not_null(find_msg(OUTMSG_DISPATCH, queued), "the queued job runs next");
}

Test(engine, s12_unreclaimed_running_job_retried_with_next_attempt)
{
    struct group_row gr = {.id = 1, .state = ST_CLOSED, .closed = true};
    struct job_row jr = {.id = 2,
                         .group_id = 1,
                         .kind = "k",
                         .state = ST_RUNNING,
                         .attempt = 3,
                         .max_attempts = 5,
                         .backoff_ms = 10};
    cr_assert_eq(engine_restore_group(E, &gr), 0);
    cr_assert_eq(engine_restore_job(E, &jr), 0);
    cr_assert_eq(engine_restore_finish(E, NOW, &OB), 0);
    ready(&W1, "k", 1);
    cr_assert_null(find_msg(OUTMSG_DISPATCH, "j2"), "kept for the reconnect window");
    new_turn();
    NOW += 1001;
    cr_assert_eq(req(&W1, (struct cmd){.type = CMD_HEARTBEAT})->code, 0);
    cr_assert_null(find_msg(OUTMSG_DISPATCH, "j2"), "RETRY_WAIT for its backoff first");
    NOW += 100; /* attempt 3 failed: 10 ms doubled twice, plus jitter */
    cr_assert_eq(req(&W1, (struct cmd){.type = CMD_HEARTBEAT})->code, 0);
    const struct out_msg *d = find_msg(OUTMSG_DISPATCH, "j2");
    cr_assert_not_null(d);
    cr_assert_eq(d->attempt, 4);
}

Test(engine, restore_refuses_inconsistent_rows)
{
    struct job_row orphan = {.id = 5, .group_id = 4, .kind = "k", .state = ST_QUEUED};
    cr_assert_eq(engine_restore_job(E, &orphan), 0);
    cr_assert_eq(engine_restore_finish(E, NOW, &OB), CORRAL_EINTERNAL);
}

Test(engine, unknown_ids_and_payload_limit)
{
    struct out_msg *r = req(&CLIENT, (struct cmd){.type = CMD_SUBMIT, .id = "g42", .kind = "k"});
    cr_assert_eq(r->code, CORRAL_ENOTFOUND);
    r = req(&CLIENT, (struct cmd){.type = CMD_CANCEL_JOB, .id = "zzz"});
    cr_assert_eq(r->code, CORRAL_ENOTFOUND);
    const char *g = open_group(NULL);
    static uint8_t big[2048];
    r = req(&CLIENT,
            (struct cmd){.type = CMD_SUBMIT, .id = g, .kind = "k", .data = {big, sizeof(big)}});
    cr_assert_eq(r->code, CORRAL_ETOOLARGE);
    cr_assert_eq(req(&W1, (struct cmd){.type = CMD_HEARTBEAT})->code, CORRAL_EUNKNOWNWORKER);
}

Test(engine, d5_job_outcome_waits_for_its_groups_and_takes_their_failure)
{
    ready(&W1, "k", 4);
    const char *root = open_group(NULL);
    const char *owner = submit(root, "k");
    struct out_msg *r = req(&CLIENT, (struct cmd){.type = CMD_OPEN_GROUP, .parent_job = owner});
    const char *jg = keep(r->id);
    const char *inner = submit(jg, "k");
    cr_assert_eq(simple(CMD_CLOSE_GROUP, root, NULL), 0);
    cr_assert_eq(report(&W1, CMD_DONE, owner, 1, "body done"), 0);
    struct tnode *t = tree(root);
    cr_assert_neq(t->state, ST_ENDED, "the root waits for the job's group");
    cr_assert_neq(child(t, owner)->state, ST_ENDED, "the job's outcome waits (D5)");
    cr_assert(child(t, owner)->groups[0].closed, "its group was closed implicitly");
    cr_assert_eq(report(&W1, CMD_FAILED, inner, 1, "deep"), 0);
    t = tree(root);
    cr_assert_eq(t->outcome, OUT_FAILED);
    const struct tnode *o = child(t, owner);
    cr_assert_eq(o->outcome, OUT_FAILED, "the group's failure became the job's");
    cr_assert_str_eq(o->error->type, "ExceptionGroup");
    cr_assert_str_eq(o->error->group, jg);
    cr_assert_str_eq(o->error->exceptions[0].message, "deep");
    /* and the root's exception group nests it */
    cr_assert_str_eq(t->error->exceptions[0].type, "ExceptionGroup");
}

Test(engine, subscribe_filter_and_last_event)
{
    ready(&W1, "k", 4);
    const char *g = open_group(NULL);
    struct out_msg *r = req(
        &CLIENT, (struct cmd){.type = CMD_SUBSCRIBE, .id = g, .event_mask = 1u << EV_JOB_ENDED});
    cr_assert_eq(r->code, 0);
    const char *j = submit(g, "k");
    cr_assert_eq(count(OUTMSG_EVENT, &CLIENT), 0, "JOB_DISPATCHED was filtered out");
    cr_assert_eq(report(&W1, CMD_DONE, j, 1, "r"), 0);
    cr_assert_eq(count(OUTMSG_EVENT, &CLIENT), 1);
    const struct out_msg *ev = find_msg(OUTMSG_EVENT, NULL);
    cr_assert_eq(ev->event, EV_JOB_ENDED);
    cr_assert_str_eq(ev->node->id, j);
    cr_assert_eq(simple(CMD_CLOSE_GROUP, g, NULL), 0);
    ev = find_msg(OUTMSG_EVENT, NULL);
    cr_assert_not_null(ev, "the group's own end always arrives");
    cr_assert_eq(ev->event, EV_GROUP_ENDED);
}

Test(engine, s5_submit_into_cancelled_group_leaves_the_queue_alone)
{
    /* Regression: the born-cancelled job was unlinked from a queue it was never in,
     * which emptied its kind's queue. */
    const char *other = open_group(NULL);
    const char *waiting = submit(other, "k");
    ready(&W2, "busy", 1);
    const char *g = open_group(NULL);
    submit(g, "busy"); /* running: keeps g CANCELLING after the cancel */
    cr_assert_eq(simple(CMD_CANCEL_GROUP, g, NULL), 0);
    bool cancelled = false;
    submit_full(g, "k", &cancelled);
    cr_assert(cancelled);
    ready(&W1, "k", 4);
    cr_assert_not_null(find_msg(OUTMSG_DISPATCH, waiting), "the other group's job still runs");
}

/* ------------------------------------------------------------------ S6, S7 */

static const char *
open_scoped(const char *parent, struct scope_opts scope)
{
    struct out_msg *r =
        req(&CLIENT, (struct cmd){.type = CMD_OPEN_GROUP, .parent_group = parent, .scope = scope});
    cr_assert(r && r->code == 0);
    return keep(r->id);
}

static const char *
submit_scoped(const char *group, const char *kind, struct scope_opts scope)
{
    struct out_msg *r =
        req(&CLIENT, (struct cmd){.type = CMD_SUBMIT, .id = group, .kind = kind, .scope = scope});
    cr_assert(r && r->code == 0);
    return keep(r->id);
}

static void
advance(uint64_t ms)
{
    new_turn();
    NOW += ms;
    engine_tick(E, NOW, &OB);
}

Test(engine, s6_group_fail_after_is_a_bare_timeout_error_and_never_early)
{
    ready(&W1, "k", 4);
    const char *g = open_scoped(NULL, (struct scope_opts){.timeout_ms = 100});
    const char *j = submit(g, "k");
    advance(99);
    cr_assert_null(find_msg(OUTMSG_CANCEL, j), "no deadline fires early");
    advance(1);
    const struct out_msg *c = find_msg(OUTMSG_CANCEL, j);
    cr_assert_not_null(c);
    cr_assert_eq(c->source, SRC_PARENT);
    cr_assert_eq(report(&W1, CMD_CANCEL_ACK, j, 1, NULL), 0);
    struct tnode *t = tree(g);
    cr_assert_eq(t->outcome, OUT_FAILED);
    cr_assert_eq(t->cancel_source, SRC_DEADLINE);
    cr_assert_str_eq(t->error->type, "TimeoutError", "bare, not an exception group");
    cr_assert_eq(t->error->nexceptions, 0);
    cr_assert(t->cancelled_caught);
}

Test(engine, s6_group_fail_after_with_real_failure_is_an_exception_group)
{
    ready(&W1, "k", 4);
    const char *g = open_scoped(NULL, (struct scope_opts){.timeout_ms = 100});
    const char *j = submit(g, "k");
    advance(100);
    cr_assert_eq(report(&W1, CMD_FAILED, j, 1, "cleanup broke"), 0);
    struct tnode *t = tree(g);
    cr_assert_eq(t->outcome, OUT_FAILED);
    cr_assert_str_eq(t->error->type, "ExceptionGroup");
    cr_assert_str_eq(t->error->exceptions[0].message, "cleanup broke");
}

Test(engine, s6_group_move_on_keeps_finished_results)
{
    ready(&W1, "k", 4);
    const char *g = open_scoped(
        NULL, (struct scope_opts){.timeout_ms = 100, .on_deadline = ON_DEADLINE_MOVE_ON});
    const char *done = submit(g, "k");
    const char *slow = submit(g, "k");
    cr_assert_eq(report(&W1, CMD_DONE, done, 1, "kept"), 0);
    advance(100);
    cr_assert_eq(report(&W1, CMD_CANCEL_ACK, slow, 1, NULL), 0);
    struct tnode *t = tree(g);
    cr_assert_eq(t->outcome, OUT_SUCCEEDED);
    cr_assert(t->cancelled_caught);
    cr_assert_eq(child(t, done)->outcome, OUT_SUCCEEDED);
    cr_assert_eq(child(t, slow)->outcome, OUT_CANCELLED);
}

Test(engine, s6_job_fail_after_fails_its_group_fast)
{
    ready(&W1, "k", 4);
    const char *g = open_group(NULL);
    const char *other = submit(g, "k");
    const char *timed = submit_scoped(g, "k", (struct scope_opts){.timeout_ms = 50});
    advance(50);
    const struct out_msg *c = find_msg(OUTMSG_CANCEL, timed);
    cr_assert_not_null(c);
    cr_assert_eq(c->source, SRC_DEADLINE);
    cr_assert_eq(report(&W1, CMD_CANCEL_ACK, timed, 1, NULL), 0);
    cr_assert_not_null(find_msg(OUTMSG_CANCEL, other), "a TimeoutError is a real failure");
    cr_assert_eq(report(&W1, CMD_CANCEL_ACK, other, 1, NULL), 0);
    struct tnode *t = tree(g);
    cr_assert_eq(t->outcome, OUT_FAILED);
    cr_assert_str_eq(t->error->exceptions[0].type, "TimeoutError");
    cr_assert_str_eq(t->error->exceptions[0].job, timed);
    cr_assert(child(t, timed)->cancelled_caught, "fail_after caught its cancellation");
}

Test(engine, s6_job_move_on_ends_succeeded_and_effective_deadline_is_dispatched)
{
    const char *g = open_scoped(NULL, (struct scope_opts){.timeout_ms = 500});
    const char *j = submit_scoped(
        g, "k", (struct scope_opts){.timeout_ms = 100, .on_deadline = ON_DEADLINE_MOVE_ON});
    const char *later = submit_scoped(g, "k", (struct scope_opts){.timeout_ms = 900});
    const char *shielded =
        submit_scoped(g, "k", (struct scope_opts){.timeout_ms = 900, .shield = true});
    uint64_t t0 = NOW;
    ready(&W1, "k", 4);
    cr_assert_eq(find_msg(OUTMSG_DISPATCH, j)->effective_deadline_ms, t0 + 100);
    cr_assert_eq(find_msg(OUTMSG_DISPATCH, later)->effective_deadline_ms, t0 + 500,
                 "the enclosing group's earlier deadline");
    cr_assert_eq(find_msg(OUTMSG_DISPATCH, shielded)->effective_deadline_ms, t0 + 900,
                 "a shield stops the walk up");
    advance(100);
    cr_assert_eq(report(&W1, CMD_CANCEL_ACK, j, 1, NULL), 0);
    const struct tnode *n = child(tree(g), j);
    cr_assert_eq(n->outcome, OUT_SUCCEEDED);
    cr_assert(n->cancelled_caught);
}

Test(engine, s7_shielded_job_in_cancelled_group_runs_to_completion)
{
    ready(&W1, "k", 4);
    const char *g = open_group(NULL);
    const char *plain = submit(g, "k");
    const char *shielded = submit_scoped(g, "k", (struct scope_opts){.shield = true});
    cr_assert_eq(simple(CMD_CANCEL_GROUP, g, "stop"), 0);
    cr_assert_not_null(find_msg(OUTMSG_CANCEL, plain));
    cr_assert_null(find_msg(OUTMSG_CANCEL, shielded), "cancellation from above stops");
    bool cancelled = true;
    const char *late = submit_full(g, "k", &cancelled);
    cr_assert(cancelled);
    cr_assert_eq(report(&W1, CMD_CANCEL_ACK, plain, 1, NULL), 0);
    cr_assert_neq(tree(g)->state, ST_ENDED, "the parent waits for the shielded job");
    cr_assert_eq(report(&W1, CMD_DONE, shielded, 1, "flushed"), 0);
    struct tnode *t = tree(g);
    cr_assert_eq(t->outcome, OUT_CANCELLED);
    cr_assert_eq(child(t, shielded)->outcome, OUT_SUCCEEDED);
    cr_assert_not(child(t, shielded)->cancel_called);
    cr_assert_eq(child(t, late)->outcome, OUT_CANCELLED);
    /* a cancel aimed at a shielded job still applies */
    const char *g2 = open_group(NULL);
    const char *s2 = submit_scoped(g2, "k", (struct scope_opts){.shield = true});
    cr_assert_eq(simple(CMD_CANCEL_JOB, s2, "direct"), 0);
    cr_assert_not_null(find_msg(OUTMSG_CANCEL, s2));
}

Test(engine, s7_shielded_group_own_deadline_still_applies)
{
    ready(&W1, "k", 4);
    const char *outer = open_group(NULL);
    const char *inner = open_scoped(outer, (struct scope_opts){.timeout_ms = 200, .shield = true});
    const char *j = submit(inner, "k");
    cr_assert_eq(simple(CMD_CANCEL_GROUP, outer, NULL), 0);
    cr_assert_null(find_msg(OUTMSG_CANCEL, j));
    advance(200);
    cr_assert_not_null(find_msg(OUTMSG_CANCEL, j), "its own deadline cancels it");
}

Test(engine, s6_deadline_survives_restart_and_fires_if_passed)
{
    struct group_row gr = {.id = 1, .state = ST_OPEN, .deadline_ms = NOW - 10};
    cr_assert_eq(engine_restore_group(E, &gr), 0);
    cr_assert_eq(engine_restore_finish(E, NOW, &OB), 0);
    advance(0);
    struct tnode *t = tree("g1");
    cr_assert_eq(t->outcome, OUT_FAILED, "a deadline that passed while down fires at start");
    cr_assert_str_eq(t->error->type, "TimeoutError");
}

/* ------------------------------------------------------------------ S9, S13, D6 */

static uint64_t
submit_waiting(const char *group, uint32_t max_attempts, uint64_t backoff_ms)
{
    new_turn();
    struct cmd c = {.type = CMD_SUBMIT,
                    .request_id = ++RID,
                    .id = group,
                    .kind = "k",
                    .wait_started = true,
                    .max_attempts = max_attempts,
                    .backoff_ms = backoff_ms,
                    .parent_group = "",
                    .parent_job = "",
                    .reason = "",
                    .err_type = "",
                    .err_message = "",
                    .name = ""};
    engine_handle(E, &CLIENT, &c, NOW, &OB);
    engine_tick(E, NOW, &OB);
    cr_assert_eq(count(OUTMSG_REPLY, &CLIENT), 0, "the reply waits for started()");
    return c.request_id;
}

static const struct out_msg *
reply_to(uint64_t request_id)
{
    for (size_t i = 0; i < OB.nmsgs; i++)
        if (OB.msgs[i].type == OUTMSG_REPLY && OB.msgs[i].request_id == request_id)
            return &OB.msgs[i];
    return NULL;
}

Test(engine, s9_start_returns_the_value_and_the_job_runs_on)
{
    ready(&W1, "k", 4);
    const char *g = open_group(NULL);
    uint64_t rid = submit_waiting(g, 0, 0);
    const char *j = find_msg(OUTMSG_DISPATCH, NULL)->job;
    j = keep(j);
    cr_assert_eq(report(&W1, CMD_STARTED, j, 1, "listening on 8080"), 0);
    const struct out_msg *r = reply_to(rid);
    cr_assert_not_null(r);
    cr_assert_eq(r->code, CORRAL_OK);
    cr_assert_str_eq(r->id, j);
    cr_assert_eq(r->value.len, 17);
    cr_assert_eq(child(tree(g), j)->state, ST_RUNNING, "the job keeps running");
    cr_assert_eq(report(&W1, CMD_STARTED, j, 1, "again"), CORRAL_EWRONGSTATE);
    /* after started, its failure is the group's */
    cr_assert_eq(report(&W1, CMD_FAILED, j, 1, "crashed later"), 0);
    cr_assert_eq(tree(g)->outcome, OUT_FAILED);
}

Test(engine, s9_failure_before_started_goes_to_the_caller_not_the_group)
{
    ready(&W1, "k", 4);
    const char *g = open_group(NULL);
    const char *sibling = submit(g, "k");
    uint64_t rid = submit_waiting(g, 0, 0);
    const char *j = keep(find_msg(OUTMSG_DISPATCH, NULL)->job);
    cr_assert_eq(report(&W1, CMD_FAILED, j, 1, "bad config"), 0);
    const struct out_msg *r = reply_to(rid);
    cr_assert_eq(r->code, CORRAL_ESTARTFAILED);
    cr_assert_str_eq(r->error->message, "bad config");
    cr_assert_null(find_msg(OUTMSG_CANCEL, sibling), "the group is not cancelled by it");
    cr_assert_eq(report(&W1, CMD_DONE, sibling, 1, "ok"), 0);
    cr_assert_eq(simple(CMD_CLOSE_GROUP, g, NULL), 0);
    struct tnode *t = tree(g);
    cr_assert_eq(t->outcome, OUT_SUCCEEDED, "left out of the exception group");
    cr_assert_eq(child(t, j)->outcome, OUT_FAILED, "but recorded FAILED");
}

Test(engine, s9_cancelled_or_ended_without_started)
{
    ready(&W1, "k", 4);
    const char *g = open_group(NULL);
    uint64_t r1 = submit_waiting(g, 0, 0);
    const char *a = keep(find_msg(OUTMSG_DISPATCH, NULL)->job);
    cr_assert_eq(report(&W1, CMD_DONE, a, 1, "done"), 0);
    cr_assert_eq(reply_to(r1)->code, CORRAL_ENOTSTARTED);
    uint64_t r2 = submit_waiting(g, 0, 0);
    const char *b = keep(find_msg(OUTMSG_DISPATCH, NULL)->job);
    cr_assert_eq(simple(CMD_CANCEL_GROUP, g, NULL), 0);
    cr_assert_eq(report(&W1, CMD_CANCEL_ACK, b, 1, NULL), 0);
    cr_assert_eq(reply_to(r2)->code, CORRAL_ESTARTCANCELLED);
}

Test(engine, s13_retryable_failure_retries_until_max_attempts_with_last_error)
{
    ready(&W1, "k", 4);
    const char *g = open_group(NULL);
    struct out_msg *sr =
        req(&CLIENT,
            (struct cmd){
                .type = CMD_SUBMIT, .id = g, .kind = "k", .max_attempts = 2, .backoff_ms = 10});
    const char *j = keep(sr->id);
    struct cmd f = {.type = CMD_FAILED,
                    .id = j,
                    .attempt = 1,
                    .err_type = "IOError",
                    .err_message = "try 1",
                    .retryable = true};
    cr_assert_eq(req(&W1, f)->code, 0);
    cr_assert_eq(child(tree(g), j)->state, ST_RETRY_WAIT);
    advance(5);
    cr_assert_null(find_msg(OUTMSG_DISPATCH, j), "not before the backoff");
    advance(10);
    cr_assert_eq(find_msg(OUTMSG_DISPATCH, j)->attempt, 2);
    f.attempt = 2;
    f.err_message = "try 2";
    cr_assert_eq(req(&W1, f)->code, 0);
    const struct tnode *n = child(tree(g), j);
    cr_assert_eq(n->outcome, OUT_FAILED, "attempts are used up");
    cr_assert_str_eq(n->error->message, "try 2");
}

Test(engine, s13_lost_worker_at_max_attempts_is_worker_lost)
{
    ready(&W1, "k", 1);
    const char *g = open_group(NULL);
    struct out_msg *sr =
        req(&CLIENT, (struct cmd){.type = CMD_SUBMIT, .id = g, .kind = "k", .max_attempts = 1});
    const char *j = keep(sr->id);
    advance(1001);
    const struct tnode *n = child(tree(g), j);
    cr_assert_eq(n->outcome, OUT_FAILED);
    cr_assert_str_eq(n->error->type, "WorkerLost");
}

Test(engine, d6_unacknowledged_cancel_ends_cancelled_and_loses_the_worker)
{
    ready(&W1, "k", 2);
    const char *g = open_group(NULL);
    const char *a = submit(g, "k");
    const char *other = keep(submit(open_group(NULL), "k"));
    cr_assert_eq(simple(CMD_CANCEL_JOB, a, NULL), 0);
    for (int i = 0; i < 5; i++) { /* the worker heartbeats but never acknowledges */
        NOW += 600;
        cr_assert_eq(req(&W1, (struct cmd){.type = CMD_HEARTBEAT})->code, 0);
    }
    const struct tnode *n = child(tree(g), a);
    cr_assert_eq(n->outcome, OUT_CANCELLED, "never retried");
    cr_assert_eq(report(&W1, CMD_DONE, other, 1, "late"), CORRAL_EUNKNOWNWORKER,
                 "its worker was declared lost");
}

/* ------------------------------------------------------------------ retention */

static int
purge(const char *group, uint64_t *nodes)
{
    struct out_msg *r = req(&CLIENT, (struct cmd){.type = CMD_PURGE_GROUP, .id = group});
    cr_assert(r);
    if (nodes)
        *nodes = r->purged_nodes;
    return r->code;
}

static int
tree_code(const char *id)
{
    struct out_msg *r = req(&CLIENT, (struct cmd){.type = CMD_GET_TREE, .id = id});
    cr_assert(r);
    return r->code;
}

/* Many purges punch holes all over the id map: every node not purged must still be
 * found (backward-shift deletion keeps probe chains whole), every purged one not. */
Test(engine, purge_keeps_every_other_node_reachable)
{
    enum { N = 3000 };
    static char gid[N][MODEL_ID_MAX];
    for (int i = 0; i < N; i++) {
        snprintf(gid[i], MODEL_ID_MAX, "%s", open_group(NULL));
        cr_assert_eq(simple(CMD_CLOSE_GROUP, gid[i], NULL), 0);
    }
    for (int i = 0; i < N; i += 2) {
        uint64_t nodes = 0;
        cr_assert_eq(purge(gid[i], &nodes), CORRAL_OK);
        cr_assert_eq(nodes, 1);
    }
    new_turn();
    for (int i = 0; i < N; i++)
        cr_assert_eq(tree_code(gid[i]), i % 2 ? CORRAL_OK : CORRAL_ENOTFOUND, "%s", gid[i]);
    /* New nodes after the holes are found too. */
    const char *g = open_group(NULL);
    cr_assert_eq(tree_code(g), CORRAL_OK);
}

Test(engine, purge_takes_the_whole_tree_children_before_parents)
{
    ready(&W1, "k", 4);
    const char *g = open_group(NULL);
    const char *sub = open_group(g);
    const char *j1 = submit(g, "k");
    const char *j2 = submit(sub, "k");
    cr_assert_eq(report(&W1, CMD_DONE, j1, 1, "a"), 0);
    cr_assert_eq(report(&W1, CMD_DONE, j2, 1, "b"), 0);
    cr_assert_eq(purge(g, NULL), CORRAL_EWRONGSTATE, "an open root cannot be purged");
    cr_assert_eq(simple(CMD_CLOSE_GROUP, sub, NULL), 0);
    cr_assert_eq(simple(CMD_CLOSE_GROUP, g, NULL), 0);
    cr_assert_eq(purge(sub, NULL), CORRAL_EWRONGSTATE, "a nested group cannot be purged");
    uint64_t nodes = 0;
    struct out_msg *r = req(&CLIENT, (struct cmd){.type = CMD_PURGE_GROUP, .id = g});
    cr_assert(r && r->code == CORRAL_OK);
    nodes = r->purged_nodes;
    cr_assert_eq(nodes, 4);
    /* The same turn deleted the rows, the root last. */
    cr_assert_eq(OB.ndeleted, 4);
    cr_assert(OB.deleted[3].root && OB.deleted[3].id == strtoull(g + 1, NULL, 10));
    for (size_t i = 0; i < 3; i++)
        cr_assert(!OB.deleted[i].root);
    cr_assert_eq(OB.npurge_roots, 1);
    cr_assert_eq(tree_code(sub), CORRAL_ENOTFOUND);
    cr_assert_eq(simple(CMD_CANCEL_JOB, j2, NULL), CORRAL_ENOTFOUND);
    cr_assert_eq(purge(g, NULL), CORRAL_ENOTFOUND, "a purged group is gone");
    cr_assert_eq(engine_stats(E)->nodes_purged, 4);
}

static void
tick_turn(void)
{
    new_turn();
    engine_tick(E, NOW, &OB);
}

Test(engine, retention_purges_ended_roots_once_the_period_has_passed)
{
    engine_free(&E);
    struct engine_config cfg = {.heartbeat_interval_ms = 100,
                                .heartbeat_timeout_ms = 1000,
                                .cancel_resend_ms = 500,
                                .cancel_grace_ms = 3000,
                                .max_payload = 1024,
                                .retention_ms = 60000};
    cr_assert_eq(engine_new(&E, &cfg), 0);
    const char *a = open_group(NULL);
    const char *b = open_group(NULL);
    cr_assert_eq(simple(CMD_CLOSE_GROUP, a, NULL), 0);
    NOW += 30000;
    cr_assert_eq(simple(CMD_CLOSE_GROUP, b, NULL), 0);
    const char *open = open_group(NULL);
    new_turn();
    cr_assert_eq(engine_tick(E, NOW, &OB), NOW + 30000, "the next expiry is a's");
    NOW += 30000;
    tick_turn(); /* the loop's turn at the time engine_tick asked for */
    cr_assert_eq(tree_code(a), CORRAL_ENOTFOUND, "a ended 60 s ago");
    cr_assert_eq(tree_code(b), CORRAL_OK, "b ended 30 s ago");
    NOW += 30000;
    tick_turn();
    cr_assert_eq(tree_code(b), CORRAL_ENOTFOUND);
    NOW += 3600000;
    tick_turn();
    cr_assert_eq(tree_code(open), CORRAL_OK, "a root that has not ended stays");
}
