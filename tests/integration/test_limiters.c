/* test_limiters.c - DESIGN.md S10 (limiters) and D7 (tokens granted at dispatch) against
 * the real corrald: the acceptance run with four `corralctl worker` processes, and raw
 * workers where the test must decide when each job ends.
 *
 * A dispatch pass runs in the turn that handles a request, before that turn's replies are
 * sent (loop.c: engine_tick after the messages, then the commit, then the sends). So once
 * a Submit, SetLimiter, Done or CancelAck has its reply, the tokens it freed or asked for
 * have been granted, and a GetLimiters sent afterwards sees the result: tests read the
 * limiter right after the reply instead of sleeping. The lost worker, the race of a cancel
 * with a release, and the restart are in test_limiters_durability.c. */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "harness.h"
#include "limiter_helpers.h"

extern char **environ;

TestSuite(s10_limiters, .fini = harness_teardown);
TestSuite(d7_limiters, .fini = harness_teardown);

static const char *const LIM_KIND[] = {"lim"};

/* ------------------------------------------------------------------ corralctl workers */

struct ctl_proc {
    pid_t pid;
    char log[320];
};

/* Starts `corralctl worker --kind lim --concurrency 4 -- sh -c script` against b, with the
 * environment run_ctl gives corralctl (ours, the broker's endpoints exported); its output
 * goes to <dir>/ctl-worker-<idx>.log. */
static void
ctl_worker_spawn(const struct broker *b, struct ctl_proc *w, int idx, const char *script)
{
    const char *bin = getenv("CORRALCTL");
    cr_assert(bin != NULL && *bin != '\0', "CORRALCTL is not set");
    snprintf(w->log, sizeof w->log, "%s/ctl-worker-%d.log", b->dir, idx);
    const char *const argv[] = {bin,  "worker", "--kind", "lim", "--concurrency", "4", "--",
                                "sh", "-c",     script,   NULL};
    /* Built before fork: the test process has threads. */
    size_t nenv = 0;
    while (environ[nenv] != NULL)
        nenv++;
    const char **envp = calloc(nenv + 3, sizeof *envp);
    cr_assert_not_null(envp);
    char cep[400], wep[400];
    snprintf(cep, sizeof cep, "CORRAL_CLIENT_ENDPOINT=%s", b->client_ep);
    snprintf(wep, sizeof wep, "CORRAL_WORKER_ENDPOINT=%s", b->worker_ep);
    size_t k = 0;
    for (size_t i = 0; i < nenv; i++)
        if (strncmp(environ[i], "CORRAL_CLIENT_ENDPOINT=", 23) != 0 &&
            strncmp(environ[i], "CORRAL_WORKER_ENDPOINT=", 23) != 0)
            envp[k++] = environ[i];
    envp[k++] = cep;
    envp[k++] = wep;
    envp[k] = NULL;
    int logfd = open(w->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    cr_assert(logfd >= 0 && nullfd >= 0, "open: %s", strerror(errno));
    pid_t parent = getpid();
    w->pid = fork();
    cr_assert_neq(w->pid, -1, "fork: %s", strerror(errno));
    if (w->pid == 0) {
        /* Dies with the test process, so that an aborted test leaves no worker behind. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        dup2(nullfd, 0);
        dup2(logfd, 1);
        dup2(logfd, 2);
        execve(bin, (char *const *)argv, (char *const *)envp);
        _exit(127);
    }
    close(logfd);
    close(nullfd);
    free(envp);
}

static void
print_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return;
    fprintf(stderr, "----- %s -----\n", path);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        fwrite(buf, 1, n, stderr);
    fclose(f);
}

/* SIGTERM to that one process (by its pid); asserts it exits 0 within 15 s. */
static void
ctl_worker_stop(struct ctl_proc *w)
{
    cr_assert_eq(kill(w->pid, SIGTERM), 0, "kill: %s", strerror(errno));
    uint64_t t0 = clock_mono_ms();
    int st = 0;
    pid_t got;
    while ((got = waitpid(w->pid, &st, WNOHANG)) == 0 && clock_mono_ms() - t0 < 15000)
        poll(NULL, 0, 10);
    if (got == 0) {
        kill(w->pid, SIGKILL);
        waitpid(w->pid, &st, 0);
        print_file(w->log);
        cr_assert_fail("corralctl worker %d did not exit within 15 s of SIGTERM", (int)w->pid);
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        print_file(w->log);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "corralctl worker %d ended with status 0x%x after SIGTERM", (int)w->pid,
              (unsigned)st);
}

/* ------------------------------------------------------------------ the run log */

/* One line of the shared log: "S <ns> <job>" when a command starts, "E <ns> <job>" when
 * it is about to exit. Its interval lies inside the time its job holds its token (from
 * the dispatch to the broker reading the Done), so intervals that overlap here held
 * tokens at the same time at the broker. */
struct run_ev {
    long long ns;
    int delta; /* +1 start, -1 end */
};

struct run_log {
    struct run_ev ev[1024];
    size_t nev;
    size_t nstart, nend;
};

static void
run_log_read(const char *path, struct run_log *rl)
{
    memset(rl, 0, sizeof *rl);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return;
    char line[256];
    while (fgets(line, sizeof line, f) != NULL && rl->nev < 1024) {
        char tag = 0;
        long long ns = 0;
        char job[CORRAL_ID_MAX];
        if (sscanf(line, "%c %lld %23s", &tag, &ns, job) != 3 || (tag != 'S' && tag != 'E'))
            continue; /* a line still being written */
        rl->ev[rl->nev].ns = ns;
        rl->ev[rl->nev].delta = tag == 'S' ? 1 : -1;
        rl->nev++;
        if (tag == 'S')
            rl->nstart++;
        else
            rl->nend++;
    }
    fclose(f);
}

static int
by_time_ends_first(const void *a, const void *b)
{
    const struct run_ev *x = a, *y = b;
    if (x->ns != y->ns)
        return x->ns < y->ns ? -1 : 1;
    return x->delta - y->delta;
}

/* The most commands running at once at instants in [from, to) (ns since the epoch). */
static int
max_running(struct run_log *rl, long long from, long long to)
{
    qsort(rl->ev, rl->nev, sizeof rl->ev[0], by_time_ends_first);
    int running = 0, best = 0;
    for (size_t i = 0; i < rl->nev; i++) {
        running += rl->ev[i].delta;
        /* running holds from ev[i].ns until the next event */
        long long until = i + 1 < rl->nev ? rl->ev[i + 1].ns : rl->ev[i].ns + 1;
        if (until > from && rl->ev[i].ns < to && running > best)
            best = running;
    }
    return best;
}

static long long
wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

struct progress {
    struct corral_client *c;
    const char *path;
    size_t ends;
    uint32_t max_borrowed;
};

/* Condition for eventually(): the log has at least a->ends ends; meanwhile every
 * GetLimiters sample must have borrowed <= total. */
static bool
ends_reached(void *arg)
{
    struct progress *a = arg;
    struct lim_view v = lim_sample(a->c, "lim");
    if (v.borrowed > a->max_borrowed)
        a->max_borrowed = v.borrowed;
    struct run_log *rl = malloc(sizeof *rl);
    cr_assert_not_null(rl);
    run_log_read(a->path, rl);
    bool ok = rl->nend >= a->ends;
    free(rl);
    return ok;
}

/* ------------------------------------------------------------------ S10 acceptance */

#define ACCEPT_JOBS 200

Test(s10_limiters, acceptance_worker_processes_never_run_more_than_total_tokens, .timeout = 180)
{
    struct broker b;
    broker_start(&b, NULL);
    struct corral_client *c = client_connect(&b);
    char path[300];
    snprintf(path, sizeof path, "%s/runs.log", b.dir);
    char script[1024];
    snprintf(script, sizeof script,
             "echo \"S $(date +%%s%%N) $CORRAL_JOB_ID\" >> '%s'; sleep 0.05; "
             "echo \"E $(date +%%s%%N) $CORRAL_JOB_ID\" >> '%s'",
             path, path);
    struct ctl_proc workers[4];
    for (int i = 0; i < 4; i++)
        ctl_worker_spawn(&b, &workers[i], i, script);

    limiter_set(c, "lim", 3);
    char g[CORRAL_ID_MAX], id[CORRAL_ID_MAX];
    open_root(c, g);
    uint64_t t0 = clock_mono_ms();
    static const char *const lims[] = {"lim", NULL};
    for (int i = 0; i < ACCEPT_JOBS; i++)
        submit_lim(c, g, "lim", lims, id);
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);

    /* Part way through, raise the total with corralctl. */
    struct progress pr = {c, path, 60, 0};
    cr_assert(eventually(ends_reached, &pr, 60000), "fewer than 60 jobs ended within 60 s");
    cr_assert_leq(pr.max_borrowed, 3);
    long long set_from = wall_ns();
    char out[256];
    const char *const set_args[] = {"limiter", "set", "lim", "6", NULL};
    cr_assert_eq(run_ctl(&b, out, sizeof out, set_args), 0, "corralctl limiter set failed");
    long long set_to = wall_ns();
    cr_assert_eq(lim_read(c, "lim").total, 6);

    pr.ends = ACCEPT_JOBS;
    pr.max_borrowed = 0;
    uint64_t spent = clock_mono_ms() - t0;
    int left = spent < 60000 ? (int)(60000 - spent) : 0;
    cr_assert(eventually(ends_reached, &pr, left), "the jobs did not all end within 60 s");
    struct corral_node *t = wait_group(c, g, 10000);
    cr_assert_lt(clock_mono_ms() - t0, 60000, "the group took more than 60 s");
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    cr_assert_eq(t->nchildren, ACCEPT_JOBS);
    for (size_t i = 0; i < t->nchildren; i++) {
        cr_assert_eq(t->children[i].outcome, CORRAL_OUTCOME_SUCCEEDED);
        cr_assert_eq(t->children[i].attempt, 1, "job %s ran %u times", t->children[i].id,
                     t->children[i].attempt);
    }
    corral_node_free(&t);
    lim_expect(c, "lim", 6, 0, 0, NULL);

    struct run_log *rl = malloc(sizeof *rl);
    cr_assert_not_null(rl);
    run_log_read(path, rl);
    cr_assert_eq(rl->nstart, ACCEPT_JOBS, "%zu commands started, expected %d", rl->nstart,
                 ACCEPT_JOBS);
    cr_assert_eq(rl->nend, ACCEPT_JOBS);
    int before = max_running(rl, 0, set_from);
    int after = max_running(rl, set_to, 1LL << 62);
    int overall = max_running(rl, 0, 1LL << 62);
    fprintf(stderr, "acceptance: at most %d running before the change, %d after, in %llu ms\n",
            before, after, (unsigned long long)(clock_mono_ms() - t0));
    cr_assert_leq(before, 3, "%d commands ran at once with 3 tokens", before);
    cr_assert_eq(before, 3, "never 3 commands at once with 3 tokens (at most %d)", before);
    cr_assert_leq(overall, 6, "%d commands ran at once with 6 tokens", overall);
    cr_assert_eq(after, 6, "never 6 commands at once after raising to 6 (at most %d)", after);
    free(rl);

    for (int i = 0; i < 4; i++)
        ctl_worker_stop(&workers[i]);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* ------------------------------------------------------------------ S10 acquire and FIFO */

Test(s10_limiters, tokens_of_several_limiters_are_taken_all_at_once_without_deadlock)
{
    struct broker b;
    broker_start(&b, NULL);
    struct corral_client *c = client_connect(&b);
    struct raw_peer wk;
    raw_worker_register(&wk, &b, LIM_KIND, 1, 8);
    limiter_set(c, "A", 1);
    limiter_set(c, "B", 1);

    /* Jobs naming A,B and B,A alternately: taking one token now and the other later would
     * let two of them hold one each and wait for each other for ever. */
    static const char *const ab[] = {"A", "B", NULL};
    static const char *const ba[] = {"B", "A", NULL};
    char g[CORRAL_ID_MAX], ids[10][CORRAL_ID_MAX];
    open_root(c, g);
    for (int i = 0; i < 10; i++)
        submit_lim(c, g, "lim", i % 2 == 0 ? ab : ba, ids[i]);
    uint32_t attempt = rw_expect_dispatch(&wk, ids[0], WAIT_MS);
    for (int i = 0; i < 10; i++) {
        /* Exactly one job runs, holding a token of both; the others hold none. */
        const char *const holder[] = {ids[i], NULL};
        lim_expect(c, "A", 1, 1, (uint32_t)(9 - i), holder);
        lim_expect(c, "B", 1, 1, (uint32_t)(9 - i), holder);
        struct corral_node *t = get_tree(c, g);
        node_expect(t, ids[i], CORRAL_STATE_RUNNING, CORRAL_OUTCOME_NONE);
        for (int k = i + 1; k < 10; k++)
            node_expect(t, ids[k], CORRAL_STATE_WAITING, CORRAL_OUTCOME_NONE);
        corral_node_free(&t);
        rw_done(&wk, ids[i], attempt);
        if (i + 1 < 10)
            attempt = rw_expect_dispatch(&wk, ids[i + 1], WAIT_MS);
    }
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    for (int i = 0; i < 10; i++)
        node_expect(t, ids[i], CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    corral_node_free(&t);
    lim_expect(c, "A", 1, 0, 0, NULL);
    lim_expect(c, "B", 1, 0, 0, NULL);

    raw_close(&wk);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s10_limiters, waiters_are_served_in_submission_order_across_kinds)
{
    struct broker b;
    broker_start(&b, NULL);
    struct corral_client *c = client_connect(&b);
    /* One worker with room for all, serving two kinds (two queues the broker merges). */
    static const char *const kinds[] = {"ka", "kb"};
    struct raw_peer wk;
    raw_worker_register(&wk, &b, kinds, 2, 32);
    limiter_set(c, "F", 1);
    static const char *const f[] = {"F", NULL};

    char g[CORRAL_ID_MAX], h[CORRAL_ID_MAX], ids[24][CORRAL_ID_MAX];
    open_root(c, g);
    submit_lim(c, g, "ka", f, h);
    uint32_t att = rw_expect_dispatch(&wk, h, WAIT_MS);
    int n = 0;
    for (; n < 20; n++)
        submit_lim(c, g, n % 3 == 0 ? "ka" : "kb", f, ids[n]);
    lim_expect(c, "F", 1, 1, 20, (const char *const[]){h, NULL});
    rw_done(&wk, h, att);

    /* The worker records the order the jobs reach it in; jobs submitted while it runs go
     * to the back. */
    char order[24][CORRAL_ID_MAX];
    for (int k = 0; k < n; k++) {
        char got[CORRAL_ID_MAX];
        Corral__V1__Envelope__BodyCase body = rw_next(&wk, got, &att, WAIT_MS);
        cr_assert_eq(body, CORRAL__V1__ENVELOPE__BODY_DISPATCH);
        snprintf(order[k], sizeof order[k], "%s", got);
        cr_assert_str_eq(order[k], ids[k], "dispatch %d was %s, expected %s (FIFO)", k, got,
                         ids[k]);
        lim_expect(c, "F", 1, 1, (uint32_t)(n - k - 1), (const char *const[]){ids[k], NULL});
        if (k == 5)
            for (; n < 24; n++)
                submit_lim(c, g, n % 2 == 0 ? "ka" : "kb", f, ids[n]);
        rw_done(&wk, got, att);
    }
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    corral_node_free(&t);
    lim_expect(c, "F", 1, 0, 0, NULL);

    raw_close(&wk);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s10_limiters, two_limiter_job_is_not_starved_by_younger_one_limiter_jobs)
{
    struct broker b;
    broker_start(&b, NULL);
    struct corral_client *c = client_connect(&b);
    struct raw_peer wk;
    raw_worker_register(&wk, &b, LIM_KIND, 1, 16);
    limiter_set(c, "A", 1);
    limiter_set(c, "B", 1);
    static const char *const a[] = {"A", NULL};
    static const char *const ab[] = {"A", "B", NULL};
    static const char *const bb[] = {"B", NULL};

    char g[CORRAL_ID_MAX], l[CORRAL_ID_MAX], x[CORRAL_ID_MAX], y[5][CORRAL_ID_MAX];
    open_root(c, g);
    submit_lim(c, g, "lim", a, l);
    uint32_t att = rw_expect_dispatch(&wk, l, WAIT_MS);
    submit_lim(c, g, "lim", ab, x);
    for (int i = 0; i < 5; i++)
        submit_lim(c, g, "lim", bb, y[i]);

    /* B is free, but X came first and needs it: no Y takes it. */
    lim_expect(c, "A", 1, 1, 1, (const char *const[]){l, NULL});
    lim_expect(c, "B", 1, 0, 6, (const char *const[]){NULL});
    struct corral_node *t = get_tree(c, g);
    node_expect(t, x, CORRAL_STATE_WAITING, CORRAL_OUTCOME_NONE);
    for (int i = 0; i < 5; i++)
        node_expect(t, y[i], CORRAL_STATE_WAITING, CORRAL_OUTCOME_NONE);
    corral_node_free(&t);
    rw_expect_quiet(&wk, 200, "while X waits for A, B is held back for it");

    /* Once A frees, X runs first, then the Y's in order. */
    rw_done(&wk, l, att);
    att = rw_expect_dispatch(&wk, x, WAIT_MS);
    lim_expect(c, "A", 1, 1, 0, (const char *const[]){x, NULL});
    lim_expect(c, "B", 1, 1, 5, (const char *const[]){x, NULL});
    rw_done(&wk, x, att);
    for (int i = 0; i < 5; i++) {
        att = rw_expect_dispatch(&wk, y[i], WAIT_MS);
        lim_expect(c, "B", 1, 1, (uint32_t)(4 - i), (const char *const[]){y[i], NULL});
        rw_done(&wk, y[i], att);
    }
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    corral_node_free(&t);

    raw_close(&wk);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* ------------------------------------------------------------------ D7 */

Test(d7_limiters, job_needing_a_free_limiter_runs_while_older_jobs_wait_on_others)
{
    struct broker b;
    broker_start(&b, NULL);
    struct corral_client *c = client_connect(&b);
    struct raw_peer wk;
    raw_worker_register(&wk, &b, LIM_KIND, 1, 8);
    limiter_set(c, "A", 1);
    limiter_set(c, "B", 1);
    limiter_set(c, "C", 0); /* paused */
    static const char *const a[] = {"A", NULL};
    static const char *const bb[] = {"B", NULL};
    static const char *const cc[] = {"C", NULL};

    char g[CORRAL_ID_MAX], l[CORRAL_ID_MAX], w[CORRAL_ID_MAX], p[CORRAL_ID_MAX], u[CORRAL_ID_MAX],
        z[CORRAL_ID_MAX];
    open_root(c, g);
    submit_lim(c, g, "lim", a, l);
    uint32_t att_l = rw_expect_dispatch(&wk, l, WAIT_MS);
    submit_lim(c, g, "lim", a, w);  /* A is full */
    submit_lim(c, g, "lim", cc, p); /* C is paused */
    /* No worker serves "nobody": U waits for a worker, so it holds no token of B and
     * holds none back. */
    submit_lim(c, g, "nobody", bb, u);
    submit_lim(c, g, "lim", bb, z);
    uint32_t att_z = rw_expect_dispatch(&wk, z, WAIT_MS);

    struct corral_node *t = get_tree(c, g);
    node_expect(t, w, CORRAL_STATE_WAITING, CORRAL_OUTCOME_NONE);
    node_expect(t, p, CORRAL_STATE_WAITING, CORRAL_OUTCOME_NONE);
    node_expect(t, u, CORRAL_STATE_QUEUED, CORRAL_OUTCOME_NONE);
    node_expect(t, z, CORRAL_STATE_RUNNING, CORRAL_OUTCOME_NONE);
    const struct corral_node *zn = tree_find(t, z);
    cr_assert_eq(zn->nlimiters, 1);
    cr_assert_str_eq(zn->limiters[0], "B");
    corral_node_free(&t);
    lim_expect(c, "A", 1, 1, 1, (const char *const[]){l, NULL});
    lim_expect(c, "B", 1, 1, 0, (const char *const[]){z, NULL});
    lim_expect(c, "C", 0, 0, 1, (const char *const[]){NULL});

    rw_done(&wk, l, att_l);
    uint32_t att_w = rw_expect_dispatch(&wk, w, WAIT_MS);
    rw_done(&wk, w, att_w);
    rw_done(&wk, z, att_z);
    cr_assert_eq(corral_job_cancel(c, p, NULL), CORRAL_OK);
    cr_assert_eq(corral_job_cancel(c, u, NULL), CORRAL_OK);
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect(t, p, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect(t, u, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    corral_node_free(&t);
    lim_expect(c, "C", 0, 0, 0, NULL);

    raw_close(&wk);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* ------------------------------------------------------------------ S10 release */

Test(s10_limiters, cancel_of_a_waiting_job_releases_nothing)
{
    struct broker b;
    broker_start(&b, NULL);
    struct corral_client *c = client_connect(&b);
    struct raw_peer wk;
    raw_worker_register(&wk, &b, LIM_KIND, 1, 8);
    limiter_set(c, "A", 1);
    static const char *const a[] = {"A", NULL};

    char g[CORRAL_ID_MAX], l[CORRAL_ID_MAX], w1[CORRAL_ID_MAX], w2[CORRAL_ID_MAX];
    open_root(c, g);
    submit_lim(c, g, "lim", a, l);
    uint32_t att = rw_expect_dispatch(&wk, l, WAIT_MS);
    submit_lim(c, g, "lim", a, w1);
    submit_lim(c, g, "lim", a, w2);
    lim_expect(c, "A", 1, 1, 2, (const char *const[]){l, NULL});

    cr_assert_eq(corral_job_cancel(c, w1, "not needed"), CORRAL_OK);
    /* W1 held nothing: borrowed and the borrowers are unchanged, one waiter fewer, and W2
     * still waits (had a token been given back, it would run now). */
    lim_expect(c, "A", 1, 1, 1, (const char *const[]){l, NULL});
    struct corral_node *t = get_tree(c, g);
    node_expect(t, w1, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect(t, w2, CORRAL_STATE_WAITING, CORRAL_OUTCOME_NONE);
    corral_node_free(&t);
    rw_expect_quiet(&wk, 200, "after cancelling a waiting job");

    /* L's token goes to W2, never to the cancelled W1. */
    rw_done(&wk, l, att);
    att = rw_expect_dispatch(&wk, w2, WAIT_MS);
    lim_expect(c, "A", 1, 1, 0, (const char *const[]){w2, NULL});
    rw_done(&wk, w2, att);
    lim_expect(c, "A", 1, 0, 0, (const char *const[]){NULL});
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect(t, w1, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    cr_assert_eq(tree_find(t, w1)->attempt, 0, "the cancelled waiter was dispatched");
    corral_node_free(&t);

    raw_close(&wk);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

Test(s10_limiters, cancel_of_a_running_job_releases_its_tokens_exactly_once)
{
    struct broker b;
    broker_start(&b, NULL);
    struct corral_client *c = client_connect(&b);
    struct raw_peer wk;
    raw_worker_register(&wk, &b, LIM_KIND, 1, 8);
    limiter_set(c, "A", 2);
    static const char *const a[] = {"A", NULL};

    char g[CORRAL_ID_MAX], j1[CORRAL_ID_MAX], j2[CORRAL_ID_MAX], w3[CORRAL_ID_MAX],
        w4[CORRAL_ID_MAX];
    open_root(c, g);
    submit_lim(c, g, "lim", a, j1);
    uint32_t att1 = rw_expect_dispatch(&wk, j1, WAIT_MS);
    submit_lim(c, g, "lim", a, j2);
    uint32_t att2 = rw_expect_dispatch(&wk, j2, WAIT_MS);
    lim_expect(c, "A", 2, 2, 0, (const char *const[]){j1, j2, NULL});

    cr_assert_eq(corral_job_cancel(c, j1, "stop"), CORRAL_OK);
    char got[CORRAL_ID_MAX];
    uint32_t gatt = 0;
    cr_assert_eq(rw_next(&wk, got, &gatt, WAIT_MS), CORRAL__V1__ENVELOPE__BODY_CANCEL);
    cr_assert_str_eq(got, j1);
    /* Until the worker says the job has stopped, it keeps its token. */
    lim_expect(c, "A", 2, 2, 0, (const char *const[]){j1, j2, NULL});
    job_expect(c, g, j1, CORRAL_STATE_CANCELLING, CORRAL_OUTCOME_NONE);

    cr_assert_eq(raw_worker_cancel_ack(&wk, j1, att1), CORRAL_OK);
    lim_expect(c, "A", 2, 1, 0, (const char *const[]){j2, NULL});
    job_expect(c, g, j1, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);

    /* Reports of the ended attempt are stale and give back nothing more. */
    cr_assert_eq(raw_worker_cancel_ack(&wk, j1, att1), CORRAL_ESTALE);
    cr_assert_eq(raw_worker_done(&wk, j1, att1, "late"), CORRAL_ESTALE);
    cr_assert_eq(raw_worker_failed(&wk, j1, att1, "ValueError", "late"), CORRAL_ESTALE);
    lim_expect(c, "A", 2, 1, 0, (const char *const[]){j2, NULL});

    /* One token is free, not two: W3 runs, W4 waits, and gets J2's token when it ends. */
    submit_lim(c, g, "lim", a, w3);
    uint32_t att3 = rw_expect_dispatch(&wk, w3, WAIT_MS);
    submit_lim(c, g, "lim", a, w4);
    lim_expect(c, "A", 2, 2, 1, (const char *const[]){j2, w3, NULL});
    job_expect(c, g, w4, CORRAL_STATE_WAITING, CORRAL_OUTCOME_NONE);
    rw_done(&wk, j2, att2);
    uint32_t att4 = rw_expect_dispatch(&wk, w4, WAIT_MS);
    lim_expect(c, "A", 2, 2, 0, (const char *const[]){w3, w4, NULL});
    rw_done(&wk, w3, att3);
    rw_done(&wk, w4, att4);
    lim_expect(c, "A", 2, 0, 0, (const char *const[]){NULL});

    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect(t, j1, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    corral_node_free(&t);

    raw_close(&wk);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* ------------------------------------------------------------------ S10 delete, unknown */

/* Asserts corral_limiter_delete(name) is refused as in use. */
static void
expect_delete_refused(struct corral_client *c, const char *name, const char *why)
{
    int rc = corral_limiter_delete(c, name);
    cr_assert_eq(rc, CORRAL_EWRONGSTATE, "delete of %s %s: %s, expected CORRAL_EWRONGSTATE", name,
                 why, corral_strerror(rc));
    const char *msg = corral_client_last_error(c);
    cr_assert(msg != NULL && strstr(msg, "in use") != NULL,
              "delete of %s %s: the message \"%s\" does not say it is in use", name, why,
              msg != NULL ? msg : "");
}

static size_t
children_of(struct corral_client *c, const char *g)
{
    struct corral_node *t = get_tree(c, g);
    size_t n = t->nchildren;
    corral_node_free(&t);
    return n;
}

Test(s10_limiters, delete_is_refused_while_in_use_and_unknown_limiters_are_refused_on_submit)
{
    struct broker b;
    broker_start(&b, NULL);
    struct corral_client *c = client_connect(&b);
    struct raw_peer wk;
    raw_worker_register(&wk, &b, LIM_KIND, 1, 8);
    limiter_set(c, "A", 1);
    limiter_set(c, "B", 1);
    static const char *const a[] = {"A", NULL};

    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX], w[CORRAL_ID_MAX], q[CORRAL_ID_MAX];
    open_root(c, g);
    submit_lim(c, g, "lim", a, j);
    uint32_t att = rw_expect_dispatch(&wk, j, WAIT_MS);
    submit_lim(c, g, "lim", a, w);
    expect_delete_refused(c, "A", "with a token borrowed and a waiter");
    lim_expect(c, "A", 1, 1, 1, (const char *const[]){j, NULL});

    rw_done(&wk, j, att);
    att = rw_expect_dispatch(&wk, w, WAIT_MS);
    expect_delete_refused(c, "A", "with a token borrowed");
    /* A job that has not ended names it, though it holds no token and waits for none. */
    submit_lim(c, g, "nobody", a, q);
    rw_done(&wk, w, att);
    lim_expect(c, "A", 1, 0, 0, (const char *const[]){NULL});
    expect_delete_refused(c, "A", "named by a queued job");
    cr_assert_eq(corral_job_cancel(c, q, NULL), CORRAL_OK);
    job_expect(c, g, q, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);

    /* Every job naming it has ended: it goes. */
    cr_assert_eq(corral_limiter_delete(c, "A"), CORRAL_OK, "delete A: %s",
                 corral_client_last_error(c));
    struct corral_limiter *ls = NULL;
    size_t n = 0;
    cr_assert_eq(corral_limiter_get(c, "A", &ls, &n), CORRAL_ENOTFOUND);
    cr_assert_eq(corral_limiter_delete(c, "A"), CORRAL_ENOTFOUND);

    /* A submission naming a limiter that does not exist creates nothing, also when it names
     * one that does: B keeps no reference, so it can be deleted. */
    size_t before = children_of(c, g);
    char id[CORRAL_ID_MAX];
    static const char *const gone[] = {"A", NULL};
    static const char *const unknown[] = {"nope", NULL};
    static const char *const mixed[] = {"B", "nope", NULL};
    int rc = try_submit_lim(c, g, "lim", gone, 0, 0, id);
    cr_assert_eq(rc, CORRAL_ENOTFOUND, "submit naming a deleted limiter: %s", corral_strerror(rc));
    rc = try_submit_lim(c, g, "lim", unknown, 0, 0, id);
    cr_assert_eq(rc, CORRAL_ENOTFOUND, "submit naming an unknown limiter: %s", corral_strerror(rc));
    cr_assert(strstr(corral_client_last_error(c), "nope") != NULL,
              "the message \"%s\" does not "
              "name the limiter",
              corral_client_last_error(c));
    rc = try_submit_lim(c, g, "lim", mixed, 0, 0, id);
    cr_assert_eq(rc, CORRAL_ENOTFOUND, "submit naming B and an unknown limiter: %s",
                 corral_strerror(rc));
    cr_assert_eq(children_of(c, g), before, "a refused submission added a job");
    rw_expect_quiet(&wk, 200, "after refused submissions");
    lim_expect(c, "B", 1, 0, 0, (const char *const[]){NULL});
    cr_assert_eq(corral_limiter_delete(c, "B"), CORRAL_OK, "delete B: %s",
                 corral_client_last_error(c));
    n = 0;
    cr_assert_eq(corral_limiter_get(c, NULL, &ls, &n), CORRAL_OK);
    cr_assert_eq(n, 0, "%zu limiters left", n);
    corral_limiters_free(&ls, n);

    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    corral_node_free(&t);

    raw_close(&wk);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* ------------------------------------------------------------------ S10 changing the total */

Test(s10_limiters, raising_total_admits_waiters_at_once_and_lowering_preempts_nobody)
{
    struct broker b;
    broker_start(&b, NULL);
    struct corral_client *c = client_connect(&b);
    struct raw_peer wk;
    raw_worker_register(&wk, &b, LIM_KIND, 1, 16);
    limiter_set(c, "A", 1);
    static const char *const a[] = {"A", NULL};

    char g[CORRAL_ID_MAX], h[CORRAL_ID_MAX], w[5][CORRAL_ID_MAX];
    uint32_t att_h, att[5];
    open_root(c, g);
    submit_lim(c, g, "lim", a, h);
    att_h = rw_expect_dispatch(&wk, h, WAIT_MS);
    for (int i = 0; i < 5; i++)
        submit_lim(c, g, "lim", a, w[i]);
    lim_expect(c, "A", 1, 1, 5, (const char *const[]){h, NULL});

    /* Raising to 3: the two oldest waiters are dispatched by the turn that answers. */
    limiter_set(c, "A", 3);
    lim_expect(c, "A", 3, 3, 3, (const char *const[]){h, w[0], w[1], NULL});
    att[0] = rw_expect_dispatch(&wk, w[0], WAIT_MS);
    att[1] = rw_expect_dispatch(&wk, w[1], WAIT_MS);

    /* Lowering to 1 stops nobody: three keep running with one token. */
    limiter_set(c, "A", 1);
    lim_expect(c, "A", 1, 3, 3, (const char *const[]){h, w[0], w[1], NULL});
    rw_expect_quiet(&wk, 300, "after lowering the total");
    struct corral_node *t = get_tree(c, g);
    node_expect(t, h, CORRAL_STATE_RUNNING, CORRAL_OUTCOME_NONE);
    node_expect(t, w[0], CORRAL_STATE_RUNNING, CORRAL_OUTCOME_NONE);
    node_expect(t, w[1], CORRAL_STATE_RUNNING, CORRAL_OUTCOME_NONE);
    node_expect_cancel(t, h, false, CORRAL_SOURCE_NONE, NULL, false);
    corral_node_free(&t);

    /* Raising to 2, still not above borrowed (3): nobody is admitted (Trio's rule). */
    limiter_set(c, "A", 2);
    lim_expect(c, "A", 2, 3, 3, (const char *const[]){h, w[0], w[1], NULL});
    /* Draining: at borrowed == total still nobody; below it, the oldest waiter. */
    rw_done(&wk, h, att_h);
    lim_expect(c, "A", 2, 2, 3, (const char *const[]){w[0], w[1], NULL});
    rw_expect_quiet(&wk, 200, "with borrowed == total after a release");
    rw_done(&wk, w[0], att[0]);
    att[2] = rw_expect_dispatch(&wk, w[2], WAIT_MS);
    lim_expect(c, "A", 2, 2, 2, (const char *const[]){w[1], w[2], NULL});

    /* 0 pauses it: releases admit nobody. */
    limiter_set(c, "A", 0);
    rw_done(&wk, w[1], att[1]);
    rw_done(&wk, w[2], att[2]);
    lim_expect(c, "A", 0, 0, 2, (const char *const[]){NULL});
    rw_expect_quiet(&wk, 200, "while the limiter is paused");
    t = get_tree(c, g);
    node_expect(t, w[3], CORRAL_STATE_WAITING, CORRAL_OUTCOME_NONE);
    node_expect(t, w[4], CORRAL_STATE_WAITING, CORRAL_OUTCOME_NONE);
    corral_node_free(&t);

    /* Raising past the waiters admits them all, and no more tokens are taken. */
    limiter_set(c, "A", 5);
    lim_expect(c, "A", 5, 2, 0, (const char *const[]){w[3], w[4], NULL});
    att[3] = rw_expect_dispatch(&wk, w[3], WAIT_MS);
    att[4] = rw_expect_dispatch(&wk, w[4], WAIT_MS);
    rw_done(&wk, w[3], att[3]);
    rw_done(&wk, w[4], att[4]);
    lim_expect(c, "A", 5, 0, 0, (const char *const[]){NULL});

    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    t = wait_group(c, g, WAIT_MS);
    node_expect(t, g, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    for (int i = 0; i < 5; i++)
        cr_assert_eq(tree_find(t, w[i])->outcome, CORRAL_OUTCOME_SUCCEEDED);
    corral_node_free(&t);

    raw_close(&wk);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}
