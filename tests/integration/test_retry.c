/* test_retry.c - DESIGN.md S13 (lost workers and retries: attempts, backoff, RETRY_WAIT,
 * WorkerLost) and D6 (the cancel grace: a worker that never acknowledges a CANCEL is
 * lost, its job ends CANCELLED and is not retried) against the real corrald (heartbeat
 * interval 100 ms, timeout 1 s, as the harness starts it).
 *
 * Submissions that carry a retry policy are raw Submit messages (libcorral cannot send
 * one yet); workers are raw workers, a libcorral worker in a child process killed with
 * SIGKILL, and the harness's in-process test worker. The RETRY_WAIT fields of the tree
 * (max_attempts, next_attempt_unix_ms) are read with a raw GetTree. */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "clock.h"
#include "harness.h"

#define WAIT_MS 10000
/* Slack for comparing the broker's clock readings with ours (both on this machine):
 * a commit, a reply and scheduling between them. */
#define CLOCK_SLACK_MS 50

TestSuite(s13_lost_workers, .fini = harness_teardown);
TestSuite(s13_retries, .fini = harness_teardown);
TestSuite(d6_cancel_grace, .fini = harness_teardown);

static const char *const RAW_KINDS[] = {"raw"};

/* ------------------------------------------------------------------ helpers */

/* Waits for a Dispatch on p (heartbeating), checks it is job's and returns its attempt. */
static uint32_t
expect_dispatch(struct raw_peer *p, const char *job, int timeout_ms)
{
    Corral__V1__Envelope *d =
        raw_worker_expect(p, CORRAL__V1__ENVELOPE__BODY_DISPATCH, timeout_ms, true);
    cr_assert_not_null(d, "no Dispatch of %s within %d ms", job, timeout_ms);
    cr_assert_str_eq(d->dispatch->job, job, "Dispatch of %s, expected %s", d->dispatch->job, job);
    uint32_t attempt = d->dispatch->attempt;
    corral__v1__envelope__free_unpacked(d, NULL);
    return attempt;
}

/* Keeps p alive (heartbeating) for ms and asserts no Dispatch reached it meanwhile. */
static void
expect_no_dispatch(struct raw_peer *p, int ms, const char *why)
{
    Corral__V1__Envelope *d = raw_worker_expect(p, CORRAL__V1__ENVELOPE__BODY_DISPATCH, ms, true);
    if (d != NULL) {
        char job[CORRAL_ID_MAX];
        uint32_t attempt = d->dispatch->attempt;
        snprintf(job, sizeof job, "%s", d->dispatch->job);
        corral__v1__envelope__free_unpacked(d, NULL);
        cr_assert_fail("%s: %s was dispatched (attempt %u)", why, job, attempt);
    }
}

/* Submits with a retry policy (raw Submit; 0: the broker's defaults) and asserts ERR_OK. */
static void
raw_submit(struct raw_peer *cl, const char *group, const char *kind, const char *payload,
           uint32_t max_attempts, uint64_t backoff_ms, char id[CORRAL_ID_MAX])
{
    Corral__V1__Envelope env;
    Corral__V1__Submit sub;
    corral__v1__envelope__init(&env);
    corral__v1__submit__init(&sub);
    sub.group = (char *)group;
    sub.kind = (char *)kind;
    sub.payload.data = (uint8_t *)payload;
    sub.payload.len = payload != NULL ? strlen(payload) : 0;
    sub.max_attempts = max_attempts;
    sub.backoff_ms = backoff_ms;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_SUBMIT;
    env.submit = &sub;
    Corral__V1__Envelope *r = raw_request(cl, &env, 5000);
    cr_assert_eq(r->reply->code, CORRAL__V1__ERROR_CODE__ERR_OK, "Submit %s into %s: %s", kind,
                 group, r->reply->message);
    cr_assert(!r->reply->cancelled);
    cr_assert(r->reply->id[0] != '\0' && strlen(r->reply->id) < CORRAL_ID_MAX);
    snprintf(id, CORRAL_ID_MAX, "%s", r->reply->id);
    corral__v1__envelope__free_unpacked(r, NULL);
}

/* The retry fields of one job, read with a raw GetTree. */
struct retry_view {
    Corral__V1__State state;
    Corral__V1__Outcome outcome;
    uint32_t attempt;
    uint32_t max_attempts;
    uint64_t next_attempt_unix_ms;
};

static struct retry_view
raw_job_view(struct raw_peer *cl, const char *group, const char *job)
{
    Corral__V1__Envelope env;
    Corral__V1__GetTree gt;
    corral__v1__envelope__init(&env);
    corral__v1__get_tree__init(&gt);
    gt.group = (char *)group;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_GET_TREE;
    env.get_tree = &gt;
    Corral__V1__Envelope *r = raw_request(cl, &env, 5000);
    cr_assert_eq(r->reply->code, CORRAL__V1__ERROR_CODE__ERR_OK, "GetTree %s: %s", group,
                 r->reply->message);
    const Corral__V1__Node *n = pnode_find(r->reply->tree, job);
    cr_assert_not_null(n, "job %s is not in the tree of %s", job, group);
    struct retry_view v = {n->state, n->outcome, n->attempt, n->max_attempts,
                           n->next_attempt_unix_ms};
    corral__v1__envelope__free_unpacked(r, NULL);
    return v;
}

/* Polls the raw tree every 10 ms until job is in state; returns its view (asserting). */
static struct retry_view
raw_job_eventually(struct raw_peer *cl, const char *group, const char *job, Corral__V1__State state,
                   int timeout_ms)
{
    uint64_t deadline = clock_mono_ms() + (uint64_t)timeout_ms;
    for (;;) {
        struct retry_view v = raw_job_view(cl, group, job);
        if (v.state == state)
            return v;
        cr_assert(clock_mono_ms() < deadline,
                  "job %s: state %d attempt %u after %d ms, expected state %d", job, (int)v.state,
                  v.attempt, timeout_ms, (int)state);
        poll(NULL, 0, 10);
    }
}

/* Counts the Cancels of job reaching p (heartbeating) during ms; asserts no Dispatch. */
static unsigned
count_cancels(struct raw_peer *p, const char *job, int ms)
{
    uint64_t deadline = clock_mono_ms() + (uint64_t)ms;
    unsigned n = 0;
    for (;;) {
        uint64_t now = clock_mono_ms();
        if (now >= deadline)
            return n;
        Corral__V1__Envelope *m = raw_worker_next(p, (int)(deadline - now), true);
        if (m == NULL)
            return n;
        if (m->body_case == CORRAL__V1__ENVELOPE__BODY_CANCEL && strcmp(m->cancel->job, job) == 0)
            n++;
        bool dispatch = m->body_case == CORRAL__V1__ENVELOPE__BODY_DISPATCH;
        corral__v1__envelope__free_unpacked(m, NULL);
        cr_assert(!dispatch, "an unexpected Dispatch reached the worker");
    }
}

/* ---- a libcorral worker in a child process, to be killed with SIGKILL mid-job ---- */

struct child_worker {
    pid_t pid;
    int fd; /* the child writes "JOB ATTEMPT\n" here once it holds a job */
};

/* The child's body: takes one job and holds it forever; the library's thread keeps
 * heartbeating. Never returns; on trouble it exits (with _exit: the parent's atexit
 * handlers belong to the parent). */
static void
child_worker_main(const char *endpoint, const char *kind, int fd)
{
    const char *kinds[1] = {kind};
    struct corral_worker *w = NULL;
    if (corral_worker_new(&w, endpoint, kinds, 1, 1) != CORRAL_OK)
        _exit(2);
    struct corral_job *job = NULL;
    if (corral_worker_next(w, 30000, &job) != CORRAL_OK)
        _exit(3);
    char line[64];
    int n = snprintf(line, sizeof line, "%s %u\n", corral_job_id(job), corral_job_attempt(job));
    if (n <= 0 || write(fd, line, (size_t)n) != n)
        _exit(4);
    for (;;)
        pause();
}

/* Forks the child worker; call before this process opens any ZeroMQ socket of its own. */
static void
child_worker_start(struct child_worker *cw, const struct broker *b, const char *kind)
{
    int pfd[2];
    cr_assert(pipe2(pfd, O_CLOEXEC) == 0, "pipe2: %s", strerror(errno));
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        close(pfd[0]);
        child_worker_main(b->worker_ep, kind, pfd[1]);
        _exit(5);
    }
    close(pfd[1]);
    cw->pid = pid;
    cw->fd = pfd[0];
}

/* Reads the child's "JOB ATTEMPT" line; returns the attempt. */
static uint32_t
child_worker_job(struct child_worker *cw, char job[CORRAL_ID_MAX], int timeout_ms)
{
    char line[64];
    size_t used = 0;
    uint64_t deadline = clock_mono_ms() + (uint64_t)timeout_ms;
    while (used == 0 || line[used - 1] != '\n') {
        uint64_t now = clock_mono_ms();
        cr_assert(now < deadline, "the child worker got no job within %d ms", timeout_ms);
        struct pollfd pf = {.fd = cw->fd, .events = POLLIN};
        int r = poll(&pf, 1, (int)(deadline - now));
        if (r <= 0)
            continue;
        ssize_t n = read(cw->fd, line + used, sizeof line - 1 - used);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int status = 0;
            waitpid(cw->pid, &status, 0);
            cw->pid = 0;
            cr_assert_fail("the child worker exited (status 0x%x) before taking a job",
                           (unsigned)status);
        }
        used += (size_t)n;
        cr_assert(used < sizeof line - 1, "the child worker wrote too much");
    }
    line[used] = '\0';
    unsigned attempt = 0;
    char id[CORRAL_ID_MAX];
    cr_assert(sscanf(line, "%23s %u", id, &attempt) == 2, "child worker wrote \"%s\"", line);
    snprintf(job, CORRAL_ID_MAX, "%s", id);
    return attempt;
}

static void
child_worker_kill9(struct child_worker *cw)
{
    if (cw->pid > 0) {
        kill(cw->pid, SIGKILL);
        waitpid(cw->pid, NULL, 0);
        cw->pid = 0;
    }
    if (cw->fd >= 0)
        close(cw->fd);
    cw->fd = -1;
}

/* ------------------------------------------------------------------ S13: lost workers */

Test(s13_lost_workers,
     worker_killed_with_sigkill_mid_job_is_retried_on_another_worker_within_timeout_plus_1s)
{
    struct broker b;
    broker_start(&b, NULL);
    struct child_worker cw;
    child_worker_start(&cw, &b, "crash");
    struct corral_client *c = client_connect(&b);
    struct raw_peer cl;
    raw_connect(&cl, b.client_ep);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX], got[CORRAL_ID_MAX];

    /* The bound counts the retry's backoff too, so the job asks for a short one. */
    open_root(c, g);
    raw_submit(&cl, g, "crash", "work", 0, 100, j);
    cr_assert_eq(child_worker_job(&cw, got, 10000), 1);
    cr_assert_str_eq(got, j);
    struct corral_node *t = get_tree(c, g);
    node_expect(t, j, CORRAL_STATE_RUNNING, CORRAL_OUTCOME_NONE);
    corral_node_free(&t);

    static const char *const kinds[] = {"crash"};
    struct raw_peer wb;
    raw_worker_register(&wb, &b, kinds, 1, 1);
    child_worker_kill9(&cw);
    uint64_t killed = clock_mono_ms();
    uint32_t attempt = expect_dispatch(&wb, j, 6000);
    uint64_t took = clock_mono_ms() - killed;
    cr_assert_eq(attempt, 2, "the job came back as attempt %u", attempt);
    cr_assert_leq(took, 2000,
                  "the job reached the other worker %llu ms after the kill, expected within the "
                  "heartbeat timeout (1 s) + 1 s",
                  (unsigned long long)took);

    cr_assert_eq(raw_worker_done(&wb, j, 2, "survived"), CORRAL_OK);
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect_result(t, j, "survived");
    cr_assert_eq(tree_find(t, j)->attempt, 2);
    corral_node_free(&t);

    corral_client_free(&c);
    raw_close(&cl);
    raw_close(&wb);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s13_lost_workers, lost_workers_job_waits_its_backoff_in_retry_wait)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer wa, cl;
    raw_worker_register(&wa, &b, RAW_KINDS, 1, 1);
    raw_connect(&cl, b.client_ep);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];

    open_root(c, g);
    raw_submit(&cl, g, "raw", "", 0, 1500, j);
    cr_assert_eq(expect_dispatch(&wa, j, 5000), 1);

    /* A falls silent; once it is declared lost, j waits for its backoff. */
    struct retry_view v = raw_job_eventually(&cl, g, j, CORRAL__V1__STATE__STATE_RETRY_WAIT, 4000);
    uint64_t seen = clock_wall_ms();
    cr_assert_eq(v.outcome, CORRAL__V1__OUTCOME__OUTCOME_NONE);
    cr_assert_eq(v.max_attempts, 3, "max_attempts %u, expected the default 3", v.max_attempts);
    cr_assert_gt(v.next_attempt_unix_ms, seen, "next attempt at %llu, already past (now %llu)",
                 (unsigned long long)v.next_attempt_unix_ms, (unsigned long long)seen);
    cr_assert_leq(v.next_attempt_unix_ms, seen + 1650 + CLOCK_SLACK_MS,
                  "next attempt %llu ms from now, backoff 1500 ms (+10%%)",
                  (unsigned long long)(v.next_attempt_unix_ms - seen));

    struct raw_peer wb;
    raw_worker_register(&wb, &b, RAW_KINDS, 1, 1);
    cr_assert_eq(expect_dispatch(&wb, j, 5000), 2);
    uint64_t at = clock_wall_ms();
    cr_assert_geq(at + CLOCK_SLACK_MS, v.next_attempt_unix_ms,
                  "attempt 2 came %llu ms before its time",
                  (unsigned long long)(v.next_attempt_unix_ms - at));

    cr_assert_eq(raw_worker_done(&wb, j, 2, "later"), CORRAL_OK);
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect_result(t, j, "later");
    corral_node_free(&t);

    corral_client_free(&c);
    raw_close(&cl);
    raw_close(&wa);
    raw_close(&wb);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s13_lost_workers, lost_at_max_attempts_the_job_fails_with_worker_lost)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer wa, wb, wc, cl;
    raw_worker_register(&wa, &b, RAW_KINDS, 1, 1);
    raw_connect(&cl, b.client_ep);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];

    open_root(c, g);
    raw_submit(&cl, g, "raw", "", 2, 100, j);
    cr_assert_eq(expect_dispatch(&wa, j, 5000), 1);

    /* A falls silent: B (heartbeating) gets attempt 2. */
    raw_worker_register(&wb, &b, RAW_KINDS, 1, 1);
    cr_assert_eq(expect_dispatch(&wb, j, 5000), 2);

    /* B falls silent too: that was the last attempt. C stays alive and gets nothing. */
    raw_worker_register(&wc, &b, RAW_KINDS, 1, 1);
    uint64_t deadline = clock_mono_ms() + 5000;
    struct retry_view v;
    for (;;) {
        expect_no_dispatch(&wc, 50, "after the last attempt was lost");
        v = raw_job_view(&cl, g, j);
        if (v.state == CORRAL__V1__STATE__STATE_ENDED)
            break;
        cr_assert(clock_mono_ms() < deadline, "job %s: state %d 5 s after its worker fell silent",
                  j, (int)v.state);
    }
    cr_assert_eq(v.outcome, CORRAL__V1__OUTCOME__OUTCOME_FAILED);
    cr_assert_eq(v.attempt, 2);
    expect_no_dispatch(&wc, 500, "after the job failed");

    struct corral_node *t = get_tree(c, g);
    const struct corral_node *jn = node_expect(t, j, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    cr_assert_not_null(jn->error);
    cr_assert_str_eq(jn->error->type, "WorkerLost");
    cr_assert(jn->error->message != NULL && jn->error->message[0] != '\0',
              "WorkerLost without a message naming the worker");
    cr_assert(jn->error->job != NULL && strcmp(jn->error->job, j) == 0);
    corral_node_free(&t);

    /* A real failure: the group fails with it. */
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_group(t->error, g, 1);
    cr_assert_str_eq(t->error->exceptions[0].type, "WorkerLost");
    corral_node_free(&t);

    corral_client_free(&c);
    raw_close(&cl);
    raw_close(&wa);
    raw_close(&wb);
    raw_close(&wc);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s13_lost_workers, silent_worker_with_a_cancelling_job_ends_it_cancelled_not_retried)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer wa, wb, cl;
    raw_worker_register(&wa, &b, RAW_KINDS, 1, 1);
    raw_connect(&cl, b.client_ep);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];

    open_root(c, g);
    raw_submit(&cl, g, "raw", "", 3, 100, j);
    cr_assert_eq(expect_dispatch(&wa, j, 5000), 1);
    cr_assert_eq(corral_job_cancel(c, j, "stop it"), CORRAL_OK);
    Corral__V1__Envelope *cm =
        raw_worker_expect(&wa, CORRAL__V1__ENVELOPE__BODY_CANCEL, 1000, true);
    cr_assert_not_null(cm, "no Cancel within 1 s");
    corral__v1__envelope__free_unpacked(cm, NULL);

    /* A falls silent without acknowledging: lost by the heartbeat timeout. */
    raw_worker_register(&wb, &b, RAW_KINDS, 1, 1);
    uint64_t deadline = clock_mono_ms() + 5000;
    struct retry_view v;
    for (;;) {
        expect_no_dispatch(&wb, 50, "a cancelled job was retried");
        v = raw_job_view(&cl, g, j);
        if (v.state == CORRAL__V1__STATE__STATE_ENDED)
            break;
        cr_assert(clock_mono_ms() < deadline, "job %s: state %d 5 s after its worker fell silent",
                  j, (int)v.state);
    }
    cr_assert_eq(v.outcome, CORRAL__V1__OUTCOME__OUTCOME_CANCELLED, "job %s ended with outcome %d",
                 j, (int)v.outcome);
    cr_assert_eq(v.attempt, 1);
    expect_no_dispatch(&wb, 500, "a cancelled job was retried");

    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect(t, j, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    corral_node_free(&t);

    corral_client_free(&c);
    raw_close(&cl);
    raw_close(&wa);
    raw_close(&wb);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* ------------------------------------------------------------------ S13: retries */

Test(s13_retries, retryable_failures_back_off_doubling_and_stop_at_max_attempts_with_the_last_error)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer wk, cl;
    raw_worker_register(&wk, &b, RAW_KINDS, 1, 1);
    raw_connect(&cl, b.client_ep);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];
    const uint64_t backoff = 300;

    open_root(c, g);
    raw_submit(&cl, g, "raw", "", 3, backoff, j);
    cr_assert_eq(expect_dispatch(&wk, j, 5000), 1);
    for (uint32_t attempt = 1; attempt <= 3; attempt++) {
        char msg[32];
        snprintf(msg, sizeof msg, "try %u", attempt);
        cr_assert_eq(raw_worker_failed_retryable(&wk, j, attempt, "TransientError", msg),
                     CORRAL_OK);
        uint64_t failed_at = clock_mono_ms();
        if (attempt == 3)
            break;
        struct retry_view v = raw_job_view(&cl, g, j);
        cr_assert_eq(v.state, CORRAL__V1__STATE__STATE_RETRY_WAIT,
                     "after failing attempt %u: state %d, expected RETRY_WAIT", attempt,
                     (int)v.state);
        cr_assert_eq(expect_dispatch(&wk, j, 5000), attempt + 1);
        uint64_t gap = clock_mono_ms() - failed_at;
        uint64_t wait = backoff << (attempt - 1); /* backoff * 2^(attempt-1) */
        cr_assert_geq(gap + CLOCK_SLACK_MS, wait,
                      "attempt %u came %llu ms after the failure, before its backoff (%llu ms)",
                      attempt + 1, (unsigned long long)gap, (unsigned long long)wait);
        cr_assert_leq(gap, wait + wait / 10 + 1000,
                      "attempt %u came %llu ms after the failure, backoff %llu ms (+10%%)",
                      attempt + 1, (unsigned long long)gap, (unsigned long long)wait);
    }

    /* The third failure was the last: FAILED at once with that error, never tried again
     * (a fourth attempt would have come 1.2 s later). */
    struct corral_node *t = get_tree(c, g);
    const struct corral_node *jn = node_expect(t, j, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_job(jn->error, "TransientError", "try 3", j);
    cr_assert_eq(jn->attempt, 3);
    corral_node_free(&t);
    expect_no_dispatch(&wk, 1600, "after the last attempt failed");

    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_group(t->error, g, 1);
    error_expect_job(&t->error->exceptions[0], "TransientError", "try 3", j);
    corral_node_free(&t);

    corral_client_free(&c);
    raw_close(&cl);
    raw_close(&wk);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s13_retries, failure_not_marked_retryable_ends_failed_at_once)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer wk, cl;
    raw_worker_register(&wk, &b, RAW_KINDS, 1, 1);
    raw_connect(&cl, b.client_ep);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];

    open_root(c, g);
    raw_submit(&cl, g, "raw", "", 3, 100, j);
    cr_assert_eq(expect_dispatch(&wk, j, 5000), 1);
    cr_assert_eq(raw_worker_failed(&wk, j, 1, "ValueError", "for good"), CORRAL_OK);
    struct corral_node *t = get_tree(c, g);
    const struct corral_node *jn = node_expect(t, j, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_job(jn->error, "ValueError", "for good", j);
    cr_assert_eq(jn->attempt, 1);
    corral_node_free(&t);
    expect_no_dispatch(&wk, 500, "a failure not marked retryable was retried");

    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    error_expect_group(t->error, g, 1);
    corral_node_free(&t);

    corral_client_free(&c);
    raw_close(&cl);
    raw_close(&wk);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s13_retries, default_policy_is_three_attempts_with_a_one_second_doubling_backoff)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer wk, cl;
    raw_worker_register(&wk, &b, RAW_KINDS, 1, 1);
    raw_connect(&cl, b.client_ep);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];

    /* A plain libcorral submit: no policy on the wire at all. */
    open_root(c, g);
    submit(c, g, "raw", "", j);
    cr_assert_eq(expect_dispatch(&wk, j, 5000), 1);
    cr_assert_eq(raw_job_view(&cl, g, j).max_attempts, 3);
    for (uint32_t attempt = 1; attempt <= 3; attempt++) {
        cr_assert_eq(raw_worker_failed_retryable(&wk, j, attempt, "TransientError", "again"),
                     CORRAL_OK);
        uint64_t failed_at = clock_mono_ms();
        if (attempt == 3)
            break;
        cr_assert_eq(expect_dispatch(&wk, j, 6000), attempt + 1);
        uint64_t gap = clock_mono_ms() - failed_at;
        uint64_t wait = (uint64_t)1000 << (attempt - 1);
        cr_assert_geq(gap + CLOCK_SLACK_MS, wait,
                      "attempt %u came %llu ms after the failure, before its backoff (%llu ms)",
                      attempt + 1, (unsigned long long)gap, (unsigned long long)wait);
        cr_assert_leq(gap, wait + wait / 10 + 1000,
                      "attempt %u came %llu ms after the failure, backoff %llu ms (+10%%)",
                      attempt + 1, (unsigned long long)gap, (unsigned long long)wait);
    }
    struct retry_view v = raw_job_view(&cl, g, j);
    cr_assert_eq(v.state, CORRAL__V1__STATE__STATE_ENDED);
    cr_assert_eq(v.outcome, CORRAL__V1__OUTCOME__OUTCOME_FAILED);
    cr_assert_eq(v.attempt, 3);

    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    corral_node_free(&t);

    corral_client_free(&c);
    raw_close(&cl);
    raw_close(&wk);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s13_retries, retry_wait_is_shown_in_the_tree_with_max_attempts_and_next_attempt_time)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer wk, cl;
    raw_worker_register(&wk, &b, RAW_KINDS, 1, 1);
    raw_connect(&cl, b.client_ep);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];

    open_root(c, g);
    raw_submit(&cl, g, "raw", "", 4, 2000, j);
    cr_assert_eq(expect_dispatch(&wk, j, 5000), 1);
    struct retry_view v = raw_job_view(&cl, g, j);
    cr_assert_eq(v.max_attempts, 4);
    cr_assert_eq(v.attempt, 1);

    uint64_t before = clock_wall_ms();
    cr_assert_eq(raw_worker_failed_retryable(&wk, j, 1, "TransientError", "soon"), CORRAL_OK);
    uint64_t after = clock_wall_ms();
    v = raw_job_view(&cl, g, j);
    cr_assert_eq(v.state, CORRAL__V1__STATE__STATE_RETRY_WAIT, "state %d, expected RETRY_WAIT",
                 (int)v.state);
    cr_assert_eq(v.outcome, CORRAL__V1__OUTCOME__OUTCOME_NONE);
    cr_assert_eq(v.max_attempts, 4);
    cr_assert_geq(v.next_attempt_unix_ms + CLOCK_SLACK_MS, before + 2000,
                  "next attempt %lld ms after the failure, backoff 2000 ms",
                  (long long)(v.next_attempt_unix_ms - before));
    cr_assert_leq(v.next_attempt_unix_ms, after + 2200 + CLOCK_SLACK_MS,
                  "next attempt %lld ms after the failure, backoff 2000 ms (+10%%)",
                  (long long)(v.next_attempt_unix_ms - after));

    /* The closed group waits for it; the libcorral tree shows the state as well. */
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    struct corral_node *t = get_tree(c, g);
    node_expect(t, g, CORRAL_STATE_CLOSED, CORRAL_OUTCOME_NONE);
    node_expect(t, j, CORRAL_STATE_RETRY_WAIT, CORRAL_OUTCOME_NONE);
    corral_node_free(&t);

    cr_assert_eq(expect_dispatch(&wk, j, 5000), 2);
    uint64_t at = clock_wall_ms();
    cr_assert_geq(at + CLOCK_SLACK_MS, v.next_attempt_unix_ms,
                  "attempt 2 came %llu ms before its time",
                  (unsigned long long)(v.next_attempt_unix_ms - at));
    v = raw_job_view(&cl, g, j);
    cr_assert_eq(v.state, CORRAL__V1__STATE__STATE_RUNNING);
    cr_assert_eq(v.attempt, 2);
    cr_assert_eq(v.max_attempts, 4);

    cr_assert_eq(raw_worker_done(&wk, j, 2, "second time lucky"), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect_result(t, j, "second time lucky");
    corral_node_free(&t);

    corral_client_free(&c);
    raw_close(&cl);
    raw_close(&wk);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s13_retries, restart_keeps_the_retry_schedule)
{
    struct broker b;
    broker_start(&b, NULL);
    struct raw_peer wk, cl;
    raw_worker_register(&wk, &b, RAW_KINDS, 1, 1);
    raw_connect(&cl, b.client_ep);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];
    struct corral_client *c = client_connect(&b);

    open_root(c, g);
    corral_client_free(&c);
    raw_submit(&cl, g, "raw", "", 3, 3000, j);
    cr_assert_eq(expect_dispatch(&wk, j, 5000), 1);
    cr_assert_eq(raw_worker_failed_retryable(&wk, j, 1, "TransientError", "later"), CORRAL_OK);
    struct retry_view before = raw_job_view(&cl, g, j);
    cr_assert_eq(before.state, CORRAL__V1__STATE__STATE_RETRY_WAIT);
    raw_close(&wk);
    raw_close(&cl);

    broker_kill9(&b);
    broker_restart(&b);

    raw_connect(&cl, b.client_ep);
    struct retry_view after = raw_job_view(&cl, g, j);
    cr_assert_eq(after.state, CORRAL__V1__STATE__STATE_RETRY_WAIT,
                 "after the restart: state %d, expected RETRY_WAIT", (int)after.state);
    cr_assert_eq(after.next_attempt_unix_ms, before.next_attempt_unix_ms,
                 "the next attempt moved from %llu to %llu",
                 (unsigned long long)before.next_attempt_unix_ms,
                 (unsigned long long)after.next_attempt_unix_ms);
    cr_assert_eq(after.max_attempts, 3);

    raw_worker_register(&wk, &b, RAW_KINDS, 1, 1);
    uint64_t now = clock_wall_ms();
    int budget = (int)(before.next_attempt_unix_ms > now ? before.next_attempt_unix_ms - now : 0);
    cr_assert_eq(expect_dispatch(&wk, j, budget + 3000), 2);
    uint64_t at = clock_wall_ms();
    cr_assert_geq(at + CLOCK_SLACK_MS, before.next_attempt_unix_ms,
                  "attempt 2 came %llu ms before its time",
                  (unsigned long long)(before.next_attempt_unix_ms - at));

    c = client_connect(&b);
    cr_assert_eq(raw_worker_done(&wk, j, 2, "after restart"), CORRAL_OK);
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect_result(t, j, "after restart");
    cr_assert_eq(tree_find(t, j)->attempt, 2);
    corral_node_free(&t);

    corral_client_free(&c);
    raw_close(&cl);
    raw_close(&wk);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* ------------------------------------------------------------------ D6 */

Test(d6_cancel_grace, worker_that_drops_the_first_cancel_receives_it_again)
{
    static const char *const extra[] = {"--cancel-resend", "200ms", NULL};
    struct broker b;
    broker_start(&b, extra);
    struct raw_peer wk;
    raw_worker_register(&wk, &b, RAW_KINDS, 1, 1);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX], k[CORRAL_ID_MAX];

    open_root(c, g);
    submit(c, g, "raw", "", j);
    cr_assert_eq(expect_dispatch(&wk, j, 5000), 1);
    cr_assert_eq(corral_job_cancel(c, j, "please stop"), CORRAL_OK);
    Corral__V1__Envelope *cm =
        raw_worker_expect(&wk, CORRAL__V1__ENVELOPE__BODY_CANCEL, 1000, true);
    cr_assert_not_null(cm, "no Cancel within 1 s");
    uint64_t first = clock_mono_ms();
    corral__v1__envelope__free_unpacked(cm, NULL); /* dropped on the floor */

    cm = raw_worker_expect(&wk, CORRAL__V1__ENVELOPE__BODY_CANCEL, 2000, true);
    cr_assert_not_null(cm, "the Cancel was not repeated within 2 s (--cancel-resend 200ms)");
    uint64_t gap = clock_mono_ms() - first;
    cr_assert_str_eq(cm->cancel->job, j);
    cr_assert_eq(cm->cancel->attempt, 1);
    cr_assert_eq(cm->cancel->source, CORRAL__V1__CANCEL_SOURCE__CANCEL_SOURCE_EXPLICIT);
    cr_assert_str_eq(cm->cancel->reason, "please stop");
    corral__v1__envelope__free_unpacked(cm, NULL);
    cr_assert_leq(gap, 1000, "the Cancel came again after %llu ms, --cancel-resend 200ms",
                  (unsigned long long)gap);

    /* Acknowledged within the grace: CANCELLED, and the worker is still trusted. */
    cr_assert_eq(raw_worker_cancel_ack(&wk, j, 1), CORRAL_OK);
    cr_assert(node_eventually(c, g, j, CORRAL_STATE_ENDED, 2000));
    struct corral_node *t = get_tree(c, g);
    node_expect(t, j, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    cr_assert_eq(tree_find(t, j)->attempt, 1);
    corral_node_free(&t);
    submit(c, g, "raw", "", k);
    cr_assert_eq(expect_dispatch(&wk, k, 5000), 1);
    cr_assert_eq(raw_worker_done(&wk, k, 1, "next"), CORRAL_OK);
    cr_assert_eq(wk.last_heartbeat_code, CORRAL__V1__ERROR_CODE__ERR_OK);

    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect(t, j, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect_result(t, k, "next");
    corral_node_free(&t);

    corral_client_free(&c);
    raw_close(&wk);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(d6_cancel_grace,
     worker_that_never_acknowledges_is_lost_after_the_grace_and_its_job_ends_cancelled_not_retried)
{
    static const char *const extra[] = {"--cancel-grace", "1s", "--cancel-resend", "200ms", NULL};
    static const char *const kinds[] = {"raw", "sleep"};
    struct broker b;
    broker_start(&b, extra);
    struct raw_peer wa, cl;
    raw_worker_register(&wa, &b, kinds, 2, 2);
    raw_connect(&cl, b.client_ep);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j1[CORRAL_ID_MAX], j2[CORRAL_ID_MAX];

    /* A runs j1 (raw) and j2 (sleep), both with retries left. */
    open_root(c, g);
    raw_submit(&cl, g, "raw", "", 3, 100, j1);
    cr_assert_eq(expect_dispatch(&wa, j1, 5000), 1);
    raw_submit(&cl, g, "sleep", "200", 3, 100, j2);
    cr_assert_eq(expect_dispatch(&wa, j2, 5000), 1);
    /* Another worker for j2's kind, which does not serve j1's. */
    struct test_worker *wb = test_worker_start(&b, 1);

    /* j1 is cancelled; A keeps heartbeating but never acknowledges. */
    cr_assert_eq(corral_job_cancel(c, j1, "stop now"), CORRAL_OK);
    uint64_t t0 = clock_mono_ms();
    unsigned cancels = 0;
    struct retry_view v;
    for (;;) {
        cancels += count_cancels(&wa, j1, 20);
        v = raw_job_view(&cl, g, j1);
        if (v.state == CORRAL__V1__STATE__STATE_ENDED)
            break;
        cr_assert(clock_mono_ms() - t0 < 5000,
                  "job %s: state %d 5 s after its cancel (cancel grace 1 s)", j1, (int)v.state);
    }
    uint64_t ended = clock_mono_ms() - t0;
    cr_assert_eq(v.outcome, CORRAL__V1__OUTCOME__OUTCOME_CANCELLED,
                 "job %s ended with outcome %d, expected CANCELLED", j1, (int)v.outcome);
    cr_assert_eq(v.attempt, 1);
    cr_assert_geq(ended + CLOCK_SLACK_MS, 1000,
                  "job %s ended %llu ms after its cancel, before "
                  "the cancel grace (1 s)",
                  j1, (unsigned long long)ended);
    cr_assert_leq(ended, 2500, "job %s ended %llu ms after its cancel, cancel grace 1 s", j1,
                  (unsigned long long)ended);
    cr_assert_geq(cancels, 2, "the Cancel of %s reached the worker %u time(s) during the grace", j1,
                  cancels);

    /* A is lost: its other job j2 is retried on B as attempt 2... */
    cr_assert(test_worker_wait_started(wb, 1, 5000), "j2 was not retried on the other worker");
    struct corral_node *t = get_tree(c, g);
    cr_assert_eq(tree_find(t, j2)->attempt, 2, "j2 runs as attempt %u", tree_find(t, j2)->attempt);
    corral_node_free(&t);
    /* ...and A, no longer registered, has its late acknowledgement refused. */
    cr_assert_eq(raw_worker_cancel_ack(&wa, j1, 1), CORRAL_EUNKNOWNWORKER);

    /* j1 stays CANCELLED, never tried again. */
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect(t, j1, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    cr_assert_eq(tree_find(t, j1)->attempt, 1);
    node_expect_cancel(t, j1, true, CORRAL_SOURCE_EXPLICIT, "stop now", true);
    node_expect_result(t, j2, "slept");
    cr_assert_eq(tree_find(t, j2)->attempt, 2);
    corral_node_free(&t);
    cr_assert_eq(test_worker_started(wb), 1);

    expect_no_worker_problem(wb);
    corral_client_free(&c);
    test_worker_stop(&wb);
    raw_close(&cl);
    raw_close(&wa);
    broker_stop(&b);
    broker_cleanup(&b);
}
