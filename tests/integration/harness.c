/* harness.c - integration-test support: see harness.h.
 *
 * Brokers run as child processes (fork + exec of $CORRALD) in a temp dir, their stderr
 * and stdout appended to <dir>/corrald.log. Every broker started is also remembered in a
 * small registry (pid and dir, copied: the test's struct broker lives on a stack that a
 * failed assertion unwinds), so harness_teardown can kill what an aborted test left
 * running and print its log. The children also get PR_SET_PDEATHSIG, so a crashed test
 * process never leaves a corrald behind.
 *
 * The test worker is a dispatcher thread that takes jobs from libcorral's worker API and
 * runs each on a thread of its own (libcorral never hands out more jobs than the stated
 * concurrency), so up to N jobs really run at once; a job thread sleeps in poll() on its
 * cancel fd and on the worker's stop eventfd, so it sees a cancel at once. Only the test
 * thread calls cr_assert: the worker threads record problems instead.
 */
#include "harness.h"

#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "clock.h"

extern char **environ;

/* Request ids of heartbeats sent by the raw_worker helpers carry this bit, so that their
 * replies can be told apart and swallowed. */
#define HB_FLAG          ((uint64_t)1 << 62)
#define HB_PERIOD_MS     100
#define START_TIMEOUT_MS 10000
#define STOP_TIMEOUT_MS  10000
#define LOG_TAIL_BYTES   48000

static void
sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ================================================================== broker registry */

struct reg_entry {
    bool used;
    pid_t pid;
    char dir[256];
    char log_path[300];
};

static struct reg_entry registry[16];
static bool atexit_done;

static struct reg_entry *
reg_find(const char *dir)
{
    for (size_t i = 0; i < sizeof registry / sizeof registry[0]; i++)
        if (registry[i].used && strcmp(registry[i].dir, dir) == 0)
            return &registry[i];
    return NULL;
}

static void
reg_set(const struct broker *b)
{
    struct reg_entry *e = reg_find(b->dir);
    for (size_t i = 0; e == NULL && i < sizeof registry / sizeof registry[0]; i++)
        if (!registry[i].used)
            e = &registry[i];
    if (e == NULL)
        return; /* more brokers than slots: only the safety net suffers */
    e->used = true;
    e->pid = b->pid;
    snprintf(e->dir, sizeof e->dir, "%s", b->dir);
    snprintf(e->log_path, sizeof e->log_path, "%s", b->log_path);
}

static void
reg_drop(const char *dir)
{
    struct reg_entry *e = reg_find(dir);
    if (e != NULL)
        memset(e, 0, sizeof *e);
}

static void
print_log_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "(no corrald log at %s)\n", path);
        return;
    }
    long start = 0;
    if (fseek(f, 0, SEEK_END) == 0) {
        long size = ftell(f);
        if (size > LOG_TAIL_BYTES)
            start = size - LOG_TAIL_BYTES;
    }
    fseek(f, start, SEEK_SET);
    fprintf(stderr, "----- corrald log %s%s -----\n", path, start > 0 ? " (tail)" : "");
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        fwrite(buf, 1, n, stderr);
    fprintf(stderr, "----- end of corrald log -----\n");
    fclose(f);
}

void
broker_print_log(const struct broker *b)
{
    print_log_file(b->log_path);
}

static int
rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static void
remove_tree(const char *dir)
{
    const char *keep = getenv("CORRAL_TEST_KEEP");
    if (keep != NULL && *keep != '\0' && strcmp(keep, "0") != 0) {
        fprintf(stderr, "harness: keeping %s (CORRAL_TEST_KEEP)\n", dir);
        return;
    }
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

void
harness_teardown(void)
{
    for (size_t i = 0; i < sizeof registry / sizeof registry[0]; i++) {
        struct reg_entry *e = &registry[i];
        if (!e->used)
            continue;
        fprintf(stderr, "harness: broker in %s was not cleaned up (test aborted?)\n", e->dir);
        if (e->pid > 0) {
            kill(e->pid, SIGKILL);
            waitpid(e->pid, NULL, 0);
        }
        print_log_file(e->log_path);
        remove_tree(e->dir);
        memset(e, 0, sizeof *e);
    }
}

/* ================================================================== broker process */

static void
spawn_broker(struct broker *b)
{
    const char *bin = getenv("CORRALD");
    cr_assert(bin != NULL && *bin != '\0', "CORRALD is not set");

    const char *argv[40];
    int n = 0;
    argv[n++] = bin;
    argv[n++] = "--data-dir";
    argv[n++] = b->data_dir;
    argv[n++] = "--client-endpoint";
    argv[n++] = b->client_ep;
    argv[n++] = "--worker-endpoint";
    argv[n++] = b->worker_ep;
    argv[n++] = "--sync";
    argv[n++] = "normal";
    argv[n++] = "--heartbeat-interval";
    argv[n++] = "100ms";
    argv[n++] = "--heartbeat-timeout";
    argv[n++] = "1s";
    for (int i = 0; i < b->nextra; i++)
        argv[n++] = b->extra[i];
    argv[n] = NULL;

    int logfd = open(b->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    cr_assert(logfd >= 0, "open %s: %s", b->log_path, strerror(errno));
    int nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    cr_assert(nullfd >= 0, "open /dev/null: %s", strerror(errno));
    dprintf(logfd, "===== harness: exec %s", bin);
    for (int i = 1; i < n; i++)
        dprintf(logfd, " %s", argv[i]);
    dprintf(logfd, "\n");

    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        /* Only async-signal-safe calls from here to exec. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        signal(SIGPIPE, SIG_DFL);
        dup2(nullfd, 0);
        dup2(logfd, 1);
        dup2(logfd, 2);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    close(logfd);
    close(nullfd);
    b->pid = pid;
    reg_set(b);
}

/* Waits until corrald answers on its client endpoint: first a raw GetTree probe (a raw
 * socket with linger 0, so unanswered probes cost nothing), then libcorral's
 * corral_group_tree on an unknown group, which must say CORRAL_ENOTFOUND. */
static void
wait_alive(struct broker *b)
{
    uint64_t deadline = clock_mono_ms() + START_TIMEOUT_MS;
    struct raw_peer p;
    raw_connect(&p, b->client_ep);
    bool up = false;
    while (!up && clock_mono_ms() < deadline) {
        int status;
        if (waitpid(b->pid, &status, WNOHANG) == b->pid) {
            b->pid = 0;
            reg_set(b);
            raw_close(&p);
            broker_print_log(b);
            cr_assert_fail("corrald exited during start-up (status 0x%x)", (unsigned)status);
        }
        Corral__V1__Envelope env;
        Corral__V1__GetTree gt;
        corral__v1__envelope__init(&env);
        corral__v1__get_tree__init(&gt);
        gt.group = "g999999999";
        env.version = CORRAL_PROTOCOL_VERSION;
        env.request_id = p.next_request_id++;
        env.body_case = CORRAL__V1__ENVELOPE__BODY_GET_TREE;
        env.get_tree = &gt;
        raw_send(&p, &env);
        uint64_t until = clock_mono_ms() + 200;
        uint64_t now;
        while (!up && (now = clock_mono_ms()) < until) {
            Corral__V1__Envelope *r = raw_recv(&p, (int)(until - now));
            if (r == NULL)
                break;
            if (r->body_case == CORRAL__V1__ENVELOPE__BODY_REPLY)
                up = true;
            corral__v1__envelope__free_unpacked(r, NULL);
        }
    }
    raw_close(&p);
    if (!up) {
        broker_print_log(b);
        kill(b->pid, SIGKILL);
        waitpid(b->pid, NULL, 0);
        b->pid = 0;
        reg_set(b);
        cr_assert_fail("corrald did not answer within %d ms", START_TIMEOUT_MS);
    }

    struct corral_client *c = client_connect(b);
    struct corral_node *t = NULL;
    int rc = corral_group_tree(c, "g999999999", &t);
    corral_node_free(&t);
    char msg[256];
    snprintf(msg, sizeof msg, "%s", corral_client_last_error(c));
    corral_client_free(&c);
    if (rc != CORRAL_ENOTFOUND)
        broker_print_log(b);
    cr_assert(rc == CORRAL_ENOTFOUND,
              "start-up probe: corral_group_tree(g999999999) gave %d %s (%s), expected "
              "CORRAL_ENOTFOUND",
              rc, corral_strerror(rc), msg);
}

static void
broker_init(struct broker *b, const char *const *extra)
{
    memset(b, 0, sizeof *b);
    snprintf(b->dir, sizeof b->dir, "/tmp/corral-test-XXXXXX");
    cr_assert(mkdtemp(b->dir) != NULL, "mkdtemp: %s", strerror(errno));
    snprintf(b->data_dir, sizeof b->data_dir, "%s/data", b->dir);
    snprintf(b->log_path, sizeof b->log_path, "%s/corrald.log", b->dir);
    for (int i = 0; extra != NULL && extra[i] != NULL; i++) {
        cr_assert(i < 8, "broker_start: at most 8 extra arguments");
        cr_assert(strlen(extra[i]) < sizeof b->extra[0], "broker_start: argument too long: %s",
                  extra[i]);
        snprintf(b->extra[i], sizeof b->extra[i], "%s", extra[i]);
        b->nextra = i + 1;
    }
    if (!atexit_done) {
        atexit(harness_teardown);
        atexit_done = true;
    }
}

void
broker_start(struct broker *b, const char *const *extra)
{
    broker_init(b, extra);
    snprintf(b->client_ep, sizeof b->client_ep, "ipc://%s/c.sock", b->dir);
    snprintf(b->worker_ep, sizeof b->worker_ep, "ipc://%s/w.sock", b->dir);
    spawn_broker(b);
    wait_alive(b);
}

void
broker_start_tcp(struct broker *b, const char *const *extra)
{
    broker_init(b, extra);
    int fds[2];
    int ports[2];
    for (int i = 0; i < 2; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        cr_assert(fds[i] >= 0, "socket: %s", strerror(errno));
        struct sockaddr_in a;
        memset(&a, 0, sizeof a);
        a.sin_family = AF_INET;
        a.sin_port = 0;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        cr_assert(bind(fds[i], (struct sockaddr *)&a, sizeof a) == 0, "bind: %s", strerror(errno));
        socklen_t len = sizeof a;
        cr_assert(getsockname(fds[i], (struct sockaddr *)&a, &len) == 0, "getsockname: %s",
                  strerror(errno));
        ports[i] = ntohs(a.sin_port);
    }
    close(fds[0]);
    close(fds[1]);
    snprintf(b->client_ep, sizeof b->client_ep, "tcp://127.0.0.1:%d", ports[0]);
    snprintf(b->worker_ep, sizeof b->worker_ep, "tcp://127.0.0.1:%d", ports[1]);
    spawn_broker(b);
    wait_alive(b);
}

void
broker_restart(struct broker *b)
{
    cr_assert(b->pid == 0, "broker_restart: corrald (pid %d) is still running", (int)b->pid);
    spawn_broker(b);
    wait_alive(b);
}

void
broker_stop(struct broker *b)
{
    cr_assert(b->pid > 0, "broker_stop: corrald is not running");
    pid_t pid = b->pid;
    cr_assert(kill(pid, SIGTERM) == 0, "kill(SIGTERM): %s", strerror(errno));
    uint64_t deadline = clock_mono_ms() + STOP_TIMEOUT_MS;
    int status = 0;
    pid_t r;
    while ((r = waitpid(pid, &status, WNOHANG)) == 0 && clock_mono_ms() < deadline)
        sleep_ms(10);
    if (r == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        b->pid = 0;
        reg_set(b);
        broker_print_log(b);
        cr_assert_fail("corrald did not exit within %d ms of SIGTERM", STOP_TIMEOUT_MS);
    }
    b->pid = 0;
    reg_set(b);
    cr_assert(r == pid, "waitpid: %s", strerror(errno));
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
        broker_print_log(b);
        if (WIFSIGNALED(status))
            cr_assert_fail("corrald was killed by signal %d after SIGTERM", WTERMSIG(status));
        cr_assert_fail("corrald exited with status %d after SIGTERM, expected 0",
                       WEXITSTATUS(status));
    }
}

int
broker_signal_wait(struct broker *b, int sig, int timeout_ms, uint64_t *took_ms)
{
    cr_assert(b->pid > 0, "broker_signal_wait: corrald is not running");
    pid_t pid = b->pid;
    uint64_t t0 = clock_mono_ms();
    cr_assert(kill(pid, sig) == 0, "kill(%d): %s", sig, strerror(errno));
    int status = 0;
    pid_t r;
    while ((r = waitpid(pid, &status, WNOHANG)) == 0 && clock_mono_ms() < t0 + (uint64_t)timeout_ms)
        sleep_ms(5);
    if (took_ms)
        *took_ms = clock_mono_ms() - t0;
    if (r == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        status = -1;
    }
    b->pid = 0;
    reg_set(b);
    return status;
}

void
broker_kill9(struct broker *b)
{
    cr_assert(b->pid > 0, "broker_kill9: corrald is not running");
    kill(b->pid, SIGKILL);
    waitpid(b->pid, NULL, 0);
    b->pid = 0;
    reg_set(b);
}

void
broker_cleanup(struct broker *b)
{
    if (b->pid > 0) {
        kill(b->pid, SIGKILL);
        waitpid(b->pid, NULL, 0);
        b->pid = 0;
    }
    reg_drop(b->dir);
    if (b->dir[0] != '\0')
        remove_tree(b->dir);
    b->dir[0] = '\0';
}

/* ================================================================== client helpers */

struct corral_client *
client_connect(const struct broker *b)
{
    struct corral_client *c = NULL;
    int rc = corral_client_new(&c, b->client_ep, 5000);
    cr_assert(rc == CORRAL_OK, "corral_client_new(%s): %s", b->client_ep, corral_strerror(rc));
    return c;
}

void
open_root(struct corral_client *c, char id[CORRAL_ID_MAX])
{
    bool cancelled = false;
    int rc = corral_group_open(c, NULL, NULL, id, &cancelled);
    cr_assert(rc == CORRAL_OK, "open root group: %s (%s)", corral_strerror(rc),
              corral_client_last_error(c));
    cr_assert(!cancelled, "a new root group is reported cancelled");
}

void
open_child(struct corral_client *c, const char *parent_group, char id[CORRAL_ID_MAX])
{
    int rc = corral_group_open(c, parent_group, NULL, id, NULL);
    cr_assert(rc == CORRAL_OK, "open group under %s: %s (%s)", parent_group, corral_strerror(rc),
              corral_client_last_error(c));
}

void
submit(struct corral_client *c, const char *group, const char *kind, const char *payload,
       char id[CORRAL_ID_MAX])
{
    size_t len = payload != NULL ? strlen(payload) : 0;
    int rc = corral_submit(c, group, kind, payload, len, id, NULL);
    cr_assert(rc == CORRAL_OK, "submit %s into %s: %s (%s)", kind, group, corral_strerror(rc),
              corral_client_last_error(c));
}

struct corral_node *
get_tree(struct corral_client *c, const char *group)
{
    struct corral_node *t = NULL;
    int rc = corral_group_tree(c, group, &t);
    cr_assert(rc == CORRAL_OK, "tree of %s: %s (%s)", group, corral_strerror(rc),
              corral_client_last_error(c));
    return t;
}

struct corral_node *
wait_group(struct corral_client *c, const char *group, int timeout_ms)
{
    struct corral_node *t = NULL;
    int rc = corral_group_wait(c, group, timeout_ms, &t);
    if (rc != CORRAL_OK) {
        struct corral_node *now = NULL;
        if (corral_group_tree(c, group, &now) == CORRAL_OK) {
            fprintf(stderr, "tree of %s when waiting failed:\n", group);
            tree_print(stderr, now);
        }
        corral_node_free(&now);
    }
    cr_assert(rc == CORRAL_OK, "wait for %s (%d ms): %s (%s)", group, timeout_ms,
              corral_strerror(rc), corral_client_last_error(c));
    cr_assert(t != NULL && t->state == CORRAL_STATE_ENDED,
              "wait for %s returned a group that has not ended", group);
    return t;
}

const struct corral_node *
tree_find(const struct corral_node *root, const char *id)
{
    if (root == NULL)
        return NULL;
    if (root->id != NULL && strcmp(root->id, id) == 0)
        return root;
    for (size_t i = 0; i < root->nchildren; i++) {
        const struct corral_node *n = tree_find(&root->children[i], id);
        if (n != NULL)
            return n;
    }
    for (size_t i = 0; i < root->ngroups; i++) {
        const struct corral_node *n = tree_find(&root->groups[i], id);
        if (n != NULL)
            return n;
    }
    return NULL;
}

static const char *
or_dash(const char *s)
{
    return s != NULL ? s : "-";
}

static void
error_print(FILE *f, const struct corral_error *e, int depth)
{
    fprintf(f, "%*s! %s: %s", depth * 2, "", or_dash(e->type), or_dash(e->message));
    if (e->job != NULL)
        fprintf(f, " job=%s", e->job);
    if (e->group != NULL)
        fprintf(f, " group=%s", e->group);
    fprintf(f, "\n");
    for (size_t i = 0; i < e->nexceptions; i++)
        error_print(f, &e->exceptions[i], depth + 1);
}

static void
node_print(FILE *f, const struct corral_node *n, int depth)
{
    fprintf(f, "%*s%s %s%s%s state=%s outcome=%s", depth * 2, "",
            n->type == CORRAL_NODE_GROUP ? "group" : "job", or_dash(n->id),
            n->kind != NULL ? " kind=" : "", n->kind != NULL ? n->kind : "",
            or_dash(corral_state_name(n->state)), or_dash(corral_outcome_name(n->outcome)));
    if (n->type == CORRAL_NODE_JOB)
        fprintf(f, " attempt=%u", n->attempt);
    else
        fprintf(f, " closed=%d", n->closed);
    fprintf(f, " cancel_called=%d cancelled_caught=%d source=%s reason=%s", n->cancel_called,
            n->cancelled_caught, or_dash(corral_source_name(n->cancel_source)),
            or_dash(n->cancel_reason));
    if (n->result != NULL)
        fprintf(f, " result=\"%.*s\"", (int)n->result_len, (const char *)n->result);
    fprintf(f, "\n");
    if (n->error != NULL)
        error_print(f, n->error, depth + 1);
    for (size_t i = 0; i < n->nchildren; i++)
        node_print(f, &n->children[i], depth + 1);
    for (size_t i = 0; i < n->ngroups; i++)
        node_print(f, &n->groups[i], depth + 1);
}

void
tree_print(FILE *f, const struct corral_node *root)
{
    if (root == NULL) {
        fprintf(f, "(no tree)\n");
        return;
    }
    node_print(f, root, 0);
}

const struct corral_node *
node_expect(const struct corral_node *root, const char *id, enum corral_state state,
            enum corral_outcome outcome)
{
    const struct corral_node *n = tree_find(root, id);
    if (n == NULL || n->state != state || n->outcome != outcome)
        tree_print(stderr, root);
    cr_assert(n != NULL, "node %s is not in the tree", id);
    cr_assert(n->state == state && n->outcome == outcome,
              "node %s: state %s outcome %s, expected state %s outcome %s", id,
              or_dash(corral_state_name(n->state)), or_dash(corral_outcome_name(n->outcome)),
              or_dash(corral_state_name(state)), or_dash(corral_outcome_name(outcome)));
    return n;
}

static bool
str_eq_or_empty(const char *a, const char *b)
{
    if (a == NULL || *a == '\0')
        return b == NULL || *b == '\0';
    return b != NULL && strcmp(a, b) == 0;
}

void
node_expect_cancel(const struct corral_node *root, const char *id, bool called,
                   enum corral_cancel_source source, const char *reason, bool caught)
{
    const struct corral_node *n = tree_find(root, id);
    bool ok = n != NULL && n->cancel_called == called && n->cancel_source == source &&
              str_eq_or_empty(n->cancel_reason, reason) && n->cancelled_caught == caught;
    if (!ok)
        tree_print(stderr, root);
    cr_assert(n != NULL, "node %s is not in the tree", id);
    cr_assert(ok,
              "node %s: cancel_called=%d source=%s reason=%s cancelled_caught=%d, expected "
              "cancel_called=%d source=%s reason=%s cancelled_caught=%d",
              id, n->cancel_called, or_dash(corral_source_name(n->cancel_source)),
              or_dash(n->cancel_reason), n->cancelled_caught, called,
              or_dash(corral_source_name(source)), or_dash(reason), caught);
}

void
error_expect_group(const struct corral_error *err, const char *group, size_t n)
{
    cr_assert(err != NULL, "expected the exception group of %s, got no error", group);
    /* The message names the group; it may count the sub-exceptions as str() of a Python
     * ExceptionGroup does ("... (1 sub-exception)", "... (2 sub-exceptions)"). */
    char msg[128];
    char counted[160];
    snprintf(msg, sizeof msg, "unhandled errors in group %s", group);
    snprintf(counted, sizeof counted, "%s (%zu sub-exception%s)", msg, n, n == 1 ? "" : "s");
    bool ok = err->type != NULL && strcmp(err->type, "ExceptionGroup") == 0 && err->group != NULL &&
              strcmp(err->group, group) == 0 && err->message != NULL &&
              (strcmp(err->message, msg) == 0 || strcmp(err->message, counted) == 0) &&
              err->nexceptions == n;
    if (!ok)
        error_print(stderr, err, 0);
    cr_assert(ok,
              "expected ExceptionGroup of %s with %zu sub-exception(s) (\"%s\"), got %s of %s "
              "with %zu (\"%s\")",
              group, n, msg, or_dash(err->type), or_dash(err->group), err->nexceptions,
              or_dash(err->message));
}

void
error_expect_job(const struct corral_error *err, const char *type, const char *message,
                 const char *job)
{
    cr_assert(err != NULL, "expected %s error of %s, got no error", type, job);
    bool ok = err->type != NULL && strcmp(err->type, type) == 0 && err->message != NULL &&
              strcmp(err->message, message) == 0 && err->job != NULL &&
              strcmp(err->job, job) == 0 && err->nexceptions == 0;
    if (!ok)
        error_print(stderr, err, 0);
    cr_assert(ok, "expected %s(\"%s\") of job %s, got %s(\"%s\") of %s", type, message, job,
              or_dash(err->type), or_dash(err->message), or_dash(err->job));
}

void
node_expect_result(const struct corral_node *root, const char *id, const char *result)
{
    const struct corral_node *n =
        node_expect(root, id, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    size_t len = strlen(result);
    bool ok = n->result_len == len && (len == 0 || memcmp(n->result, result, len) == 0);
    if (!ok)
        tree_print(stderr, root);
    cr_assert(ok, "node %s: result \"%.*s\", expected \"%s\"", id, (int)n->result_len,
              n->result != NULL ? (const char *)n->result : "", result);
}

bool
node_eventually(struct corral_client *c, const char *group, const char *id, enum corral_state state,
                int timeout_ms)
{
    uint64_t deadline = clock_mono_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        struct corral_node *t = get_tree(c, group);
        const struct corral_node *n = tree_find(t, id);
        bool ok = n != NULL && n->state == state;
        if (!ok && clock_mono_ms() >= deadline) {
            fprintf(stderr, "node %s of %s did not reach state %s within %d ms:\n", id, group,
                    or_dash(corral_state_name(state)), timeout_ms);
            tree_print(stderr, t);
        }
        corral_node_free(&t);
        if (ok)
            return true;
        if (clock_mono_ms() >= deadline)
            return false;
        sleep_ms(10);
    }
}

/* ================================================================== test worker */

struct tw_job {
    struct test_worker *tw;
    struct corral_job *job;
    pthread_t thread;
    atomic_bool finished;
    bool cancel_seen;
    struct tw_job *next;
};

struct test_worker {
    struct corral_worker *w;
    pthread_t dispatcher;
    atomic_bool stop;
    int stop_fd; /* eventfd, written once at stop: readable from then on */
    pthread_mutex_t mu;
    struct cancel_seen *cancels;
    size_t ncancels;
    size_t capcancels;
    size_t started;
    char problem[256];   /* the first unexpected error seen by a worker thread */
    struct tw_job *jobs; /* owned by the dispatcher thread, then by test_worker_stop */
};

static void tw_problem(struct test_worker *tw, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
tw_problem(struct test_worker *tw, const char *fmt, ...)
{
    pthread_mutex_lock(&tw->mu);
    if (tw->problem[0] == '\0') {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(tw->problem, sizeof tw->problem, fmt, ap);
        va_end(ap);
        fprintf(stderr, "test worker: %s\n", tw->problem);
    }
    pthread_mutex_unlock(&tw->mu);
}

static void
tw_record_cancel(struct tw_job *tj)
{
    struct test_worker *tw = tj->tw;
    struct cancel_seen cs;
    memset(&cs, 0, sizeof cs);
    cs.at_ms = clock_mono_ms();
    snprintf(cs.job, sizeof cs.job, "%s", corral_job_id(tj->job));
    cs.source = corral_job_cancel_source(tj->job);
    const char *reason = corral_job_cancel_reason(tj->job);
    snprintf(cs.reason, sizeof cs.reason, "%s", reason != NULL ? reason : "");
    pthread_mutex_lock(&tw->mu);
    if (tw->ncancels == tw->capcancels) {
        size_t cap = tw->capcancels ? tw->capcancels * 2 : 16;
        struct cancel_seen *p = realloc(tw->cancels, cap * sizeof *p);
        if (p != NULL) {
            tw->cancels = p;
            tw->capcancels = cap;
        }
    }
    if (tw->ncancels < tw->capcancels)
        tw->cancels[tw->ncancels++] = cs;
    pthread_mutex_unlock(&tw->mu);
}

enum tw_wait { TW_ELAPSED, TW_CANCELLED, TW_STOPPED };

/* Sleeps ms, watching the cancel fd (every cancel is recorded once) and the stop fd. */
static enum tw_wait
tw_sleep(struct tw_job *tj, uint64_t ms, bool ignore_cancel)
{
    uint64_t end = clock_mono_ms() + ms;
    for (;;) {
        uint64_t now = clock_mono_ms();
        if (now >= end)
            return TW_ELAPSED;
        struct pollfd fds[2];
        nfds_t nfds = 1;
        fds[0].fd = tj->tw->stop_fd;
        fds[0].events = POLLIN;
        fds[0].revents = 0;
        if (!tj->cancel_seen) {
            fds[1].fd = corral_job_cancel_fd(tj->job);
            fds[1].events = POLLIN;
            fds[1].revents = 0;
            nfds = 2;
        }
        uint64_t left = end - now;
        int r = poll(fds, nfds, left > INT_MAX ? INT_MAX : (int)left);
        if (r < 0 && errno != EINTR) {
            tw_problem(tj->tw, "poll: %s", strerror(errno));
            return TW_STOPPED;
        }
        if (r <= 0)
            continue;
        if (fds[0].revents != 0)
            return TW_STOPPED;
        if (nfds == 2 && fds[1].revents != 0) {
            tw_record_cancel(tj);
            tj->cancel_seen = true;
            if (!ignore_cancel)
                return TW_CANCELLED;
        }
    }
}

static void
tw_report(struct tw_job *tj, const char *what, int rc)
{
    if (rc != CORRAL_OK)
        tw_problem(tj->tw, "%s of %s: %s", what, corral_job_id(tj->job), corral_strerror(rc));
}

static void *
tw_job_main(void *arg)
{
    struct tw_job *tj = arg;
    struct corral_job *j = tj->job;
    const char *kind = corral_job_kind(j);
    size_t len = 0;
    const void *payload = corral_job_payload(j, &len);
    char text[256];
    if (len >= sizeof text)
        len = sizeof text - 1;
    if (len > 0)
        memcpy(text, payload, len);
    text[len] = '\0';
    uint64_t ms = len > 0 ? strtoull(text, NULL, 10) : 60000;

    if (strcmp(kind, "echo") == 0) {
        tw_report(tj, "done", corral_job_done(j, text, len));
    } else if (strcmp(kind, "fail") == 0) {
        const char *type = "ValueError";
        const char *message = len > 0 ? text : "failed";
        char *colon = strchr(text, ':');
        if (colon != NULL) {
            *colon = '\0';
            type = text;
            message = colon + 1;
        }
        tw_report(tj, "fail", corral_job_fail(j, type, message, NULL, 0));
    } else if (strcmp(kind, "sleep") == 0 || strcmp(kind, "sleepfail") == 0) {
        enum tw_wait w = tw_sleep(tj, ms, false);
        if (w == TW_CANCELLED)
            tw_report(tj, "ack_cancel", corral_job_ack_cancel(j));
        else if (w == TW_ELAPSED && strcmp(kind, "sleep") == 0)
            tw_report(tj, "done", corral_job_done(j, "slept", 5));
        else if (w == TW_ELAPSED)
            tw_report(tj, "fail", corral_job_fail(j, "ValueError", "late failure", NULL, 0));
    } else if (strcmp(kind, "stubborn") == 0 || strcmp(kind, "stubbornfail") == 0) {
        enum tw_wait w = tw_sleep(tj, ms, true);
        if (w == TW_ELAPSED && strcmp(kind, "stubborn") == 0) {
            tw_report(tj, "done", corral_job_done(j, "finished anyway", 15));
        } else if (w == TW_ELAPSED) {
            char msg[300];
            snprintf(msg, sizeof msg, "fail-%s", text);
            tw_report(tj, "fail", corral_job_fail(j, "ValueError", msg, NULL, 0));
        }
    } else {
        tw_problem(tj->tw, "job %s of unexpected kind %s", corral_job_id(j), kind);
        tw_report(tj, "fail", corral_job_fail(j, "UnknownKind", kind, NULL, 0));
    }
    /* TW_STOPPED: abandoned without a report. */
    corral_job_free(&tj->job);
    atomic_store(&tj->finished, true);
    return NULL;
}

static void
tw_reap(struct test_worker *tw, bool all)
{
    struct tw_job **pp = &tw->jobs;
    while (*pp != NULL) {
        struct tw_job *tj = *pp;
        if (all || atomic_load(&tj->finished)) {
            pthread_join(tj->thread, NULL);
            *pp = tj->next;
            free(tj);
        } else {
            pp = &tj->next;
        }
    }
}

static void *
tw_dispatcher_main(void *arg)
{
    struct test_worker *tw = arg;
    while (!atomic_load(&tw->stop)) {
        struct corral_job *j = NULL;
        int rc = corral_worker_next(tw->w, 50, &j);
        tw_reap(tw, false);
        if (rc == CORRAL_ETIMEDOUT)
            continue;
        if (rc != CORRAL_OK) {
            tw_problem(tw, "corral_worker_next: %s", corral_strerror(rc));
            sleep_ms(10);
            continue;
        }
        struct tw_job *tj = calloc(1, sizeof *tj);
        if (tj == NULL) {
            tw_problem(tw, "out of memory");
            corral_job_free(&j);
            continue;
        }
        tj->tw = tw;
        tj->job = j;
        atomic_init(&tj->finished, false);
        pthread_mutex_lock(&tw->mu);
        tw->started++;
        pthread_mutex_unlock(&tw->mu);
        if (pthread_create(&tj->thread, NULL, tw_job_main, tj) != 0) {
            tw_problem(tw, "pthread_create failed");
            corral_job_free(&tj->job);
            free(tj);
            continue;
        }
        tj->next = tw->jobs;
        tw->jobs = tj;
    }
    return NULL;
}

struct test_worker *
test_worker_start(const struct broker *b, unsigned concurrency)
{
    static const char *const kinds[] = {"echo",      "fail",     "sleep",
                                        "sleepfail", "stubborn", "stubbornfail"};
    struct test_worker *tw = calloc(1, sizeof *tw);
    cr_assert(tw != NULL);
    pthread_mutex_init(&tw->mu, NULL);
    atomic_init(&tw->stop, false);
    tw->stop_fd = eventfd(0, EFD_CLOEXEC);
    cr_assert(tw->stop_fd >= 0, "eventfd: %s", strerror(errno));
    int rc =
        corral_worker_new(&tw->w, b->worker_ep, kinds, sizeof kinds / sizeof kinds[0], concurrency);
    cr_assert(rc == CORRAL_OK, "corral_worker_new(%s): %s", b->worker_ep, corral_strerror(rc));
    cr_assert(pthread_create(&tw->dispatcher, NULL, tw_dispatcher_main, tw) == 0);
    return tw;
}

void
test_worker_stop(struct test_worker **pw)
{
    struct test_worker *tw = *pw;
    if (tw == NULL)
        return;
    atomic_store(&tw->stop, true);
    uint64_t one = 1;
    if (write(tw->stop_fd, &one, sizeof one) != (ssize_t)sizeof one)
        fprintf(stderr, "test worker: eventfd write: %s\n", strerror(errno));
    pthread_join(tw->dispatcher, NULL);
    tw_reap(tw, true);
    corral_worker_free(&tw->w);
    close(tw->stop_fd);
    pthread_mutex_destroy(&tw->mu);
    free(tw->cancels);
    free(tw);
    *pw = NULL;
}

size_t
test_worker_cancels(struct test_worker *w, struct cancel_seen *out, size_t max)
{
    pthread_mutex_lock(&w->mu);
    size_t n = w->ncancels;
    for (size_t i = 0; i < n && i < max; i++)
        out[i] = w->cancels[i];
    pthread_mutex_unlock(&w->mu);
    return n;
}

size_t
test_worker_started(struct test_worker *w)
{
    pthread_mutex_lock(&w->mu);
    size_t n = w->started;
    pthread_mutex_unlock(&w->mu);
    return n;
}

struct tw_wait_arg {
    struct test_worker *w;
    size_t n;
};

static bool
tw_started_reached(void *arg)
{
    struct tw_wait_arg *a = arg;
    return test_worker_started(a->w) >= a->n;
}

static bool
tw_cancels_reached(void *arg)
{
    struct tw_wait_arg *a = arg;
    return test_worker_cancels(a->w, NULL, 0) >= a->n;
}

bool
test_worker_wait_started(struct test_worker *w, size_t n, int timeout_ms)
{
    struct tw_wait_arg a = {w, n};
    return eventually(tw_started_reached, &a, timeout_ms);
}

bool
test_worker_wait_cancels(struct test_worker *w, size_t n, int timeout_ms)
{
    struct tw_wait_arg a = {w, n};
    return eventually(tw_cancels_reached, &a, timeout_ms);
}

bool
test_worker_cancel_of(struct test_worker *w, const char *job, struct cancel_seen *out)
{
    bool found = false;
    pthread_mutex_lock(&w->mu);
    for (size_t i = 0; i < w->ncancels && !found; i++) {
        if (strcmp(w->cancels[i].job, job) == 0) {
            *out = w->cancels[i];
            found = true;
        }
    }
    pthread_mutex_unlock(&w->mu);
    return found;
}

void
test_worker_problem(struct test_worker *w, char *out, size_t outlen)
{
    pthread_mutex_lock(&w->mu);
    snprintf(out, outlen, "%s", w->problem);
    pthread_mutex_unlock(&w->mu);
}

/* ================================================================== raw peers */

void
raw_connect(struct raw_peer *p, const char *endpoint)
{
    memset(p, 0, sizeof *p);
    p->next_request_id = 1;
    p->ctx = zmq_ctx_new();
    cr_assert(p->ctx != NULL, "zmq_ctx_new: %s", zmq_strerror(zmq_errno()));
    p->sock = zmq_socket(p->ctx, ZMQ_DEALER);
    cr_assert(p->sock != NULL, "zmq_socket: %s", zmq_strerror(zmq_errno()));
    int linger = 0;
    zmq_setsockopt(p->sock, ZMQ_LINGER, &linger, sizeof linger);
    int rc = zmq_connect(p->sock, endpoint);
    cr_assert(rc == 0, "zmq_connect(%s): %s", endpoint, zmq_strerror(zmq_errno()));
}

void
raw_close(struct raw_peer *p)
{
    for (size_t i = 0; i < p->nstash; i++)
        corral__v1__envelope__free_unpacked(p->stash[i], NULL);
    p->nstash = 0;
    if (p->sock != NULL)
        zmq_close(p->sock);
    if (p->ctx != NULL)
        zmq_ctx_term(p->ctx);
    p->sock = NULL;
    p->ctx = NULL;
}

void
raw_send_frames(struct raw_peer *p, const void *const *frames, const size_t *lens, size_t nframes)
{
    for (size_t i = 0; i < nframes; i++) {
        int flags = i + 1 < nframes ? ZMQ_SNDMORE : 0;
        int rc = zmq_send(p->sock, frames[i], lens[i], flags);
        cr_assert(rc >= 0, "zmq_send: %s", zmq_strerror(zmq_errno()));
    }
}

void
raw_send(struct raw_peer *p, const Corral__V1__Envelope *env)
{
    size_t size = corral__v1__envelope__get_packed_size(env);
    uint8_t *buf = malloc(size > 0 ? size : 1);
    cr_assert(buf != NULL);
    corral__v1__envelope__pack(env, buf);
    int rc = zmq_send(p->sock, buf, size, 0);
    free(buf);
    cr_assert(rc == (int)size, "zmq_send: %s", zmq_strerror(zmq_errno()));
}

Corral__V1__Envelope *
raw_recv(struct raw_peer *p, int timeout_ms)
{
    zmq_pollitem_t item = {.socket = p->sock, .events = ZMQ_POLLIN};
    int rc = zmq_poll(&item, 1, timeout_ms);
    if (rc < 0 && zmq_errno() == EINTR)
        return NULL;
    cr_assert(rc >= 0, "zmq_poll: %s", zmq_strerror(zmq_errno()));
    if (rc == 0 || !(item.revents & ZMQ_POLLIN))
        return NULL;
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    rc = zmq_msg_recv(&msg, p->sock, 0);
    cr_assert(rc >= 0, "zmq_msg_recv: %s", zmq_strerror(zmq_errno()));
    bool more = zmq_msg_more(&msg);
    Corral__V1__Envelope *env =
        corral__v1__envelope__unpack(NULL, zmq_msg_size(&msg), zmq_msg_data(&msg));
    size_t size = zmq_msg_size(&msg);
    zmq_msg_close(&msg);
    while (more) { /* drain the rest of a (protocol-violating) multi-frame message */
        zmq_msg_init(&msg);
        zmq_msg_recv(&msg, p->sock, 0);
        more = zmq_msg_more(&msg);
        zmq_msg_close(&msg);
        cr_assert_fail("the broker sent a message of more than one frame");
    }
    cr_assert(env != NULL, "the broker sent %zu bytes that are not an Envelope", size);
    return env;
}

static bool
is_reply_to(const Corral__V1__Envelope *env, uint64_t request_id)
{
    return env->body_case == CORRAL__V1__ENVELOPE__BODY_REPLY && env->request_id == request_id;
}

Corral__V1__Envelope *
raw_expect_reply(struct raw_peer *p, uint64_t request_id, int timeout_ms)
{
    uint64_t deadline = clock_mono_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        uint64_t now = clock_mono_ms();
        Corral__V1__Envelope *env = raw_recv(p, (int)(deadline > now ? deadline - now : 0));
        cr_assert(env != NULL, "no reply to request %llu within %d ms",
                  (unsigned long long)request_id, timeout_ms);
        if (is_reply_to(env, request_id))
            return env;
        corral__v1__envelope__free_unpacked(env, NULL);
    }
}

/* ---- raw workers ---- */

static void
stash_push(struct raw_peer *p, Corral__V1__Envelope *env)
{
    cr_assert(p->nstash < sizeof p->stash / sizeof p->stash[0],
              "raw peer: too many unsolicited messages stashed");
    p->stash[p->nstash++] = env;
}

static Corral__V1__Envelope *
stash_pop(struct raw_peer *p)
{
    if (p->nstash == 0)
        return NULL;
    Corral__V1__Envelope *env = p->stash[0];
    memmove(&p->stash[0], &p->stash[1], (p->nstash - 1) * sizeof p->stash[0]);
    p->nstash--;
    return env;
}

/* Swallows a reply to a heartbeat (keeping its code); true if env was one (and is freed). */
static bool
swallow_heartbeat_reply(struct raw_peer *p, Corral__V1__Envelope *env)
{
    if (env->body_case != CORRAL__V1__ENVELOPE__BODY_REPLY || !(env->request_id & HB_FLAG))
        return false;
    p->last_heartbeat_code = env->reply != NULL ? (int)env->reply->code : -1;
    corral__v1__envelope__free_unpacked(env, NULL);
    return true;
}

void
raw_worker_heartbeat(struct raw_peer *p)
{
    Corral__V1__Envelope env;
    Corral__V1__Heartbeat hb;
    corral__v1__envelope__init(&env);
    corral__v1__heartbeat__init(&hb);
    env.version = CORRAL_PROTOCOL_VERSION;
    env.request_id = HB_FLAG | p->next_request_id++;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    raw_send(p, &env);
    p->last_heartbeat_ms = clock_mono_ms();
}

Corral__V1__Envelope *
raw_request(struct raw_peer *p, Corral__V1__Envelope *env, int timeout_ms)
{
    env->version = CORRAL_PROTOCOL_VERSION;
    env->request_id = p->next_request_id++;
    uint64_t id = env->request_id;
    raw_send(p, env);
    uint64_t deadline = clock_mono_ms() + (uint64_t)timeout_ms;
    for (;;) {
        uint64_t now = clock_mono_ms();
        cr_assert(now < deadline, "no reply to request %llu (body %d) within %d ms",
                  (unsigned long long)id, (int)env->body_case, timeout_ms);
        Corral__V1__Envelope *r = raw_recv(p, (int)(deadline - now));
        if (r == NULL)
            continue;
        if (is_reply_to(r, id))
            return r;
        if (swallow_heartbeat_reply(p, r))
            continue;
        if (r->body_case == CORRAL__V1__ENVELOPE__BODY_REPLY) {
            corral__v1__envelope__free_unpacked(r, NULL); /* a stale reply */
            continue;
        }
        stash_push(p, r);
    }
}

Corral__V1__Envelope *
raw_worker_ready(struct raw_peer *p, const char *const *kinds, size_t nkinds, unsigned concurrency,
                 const char *const *jobs, const uint32_t *attempts, size_t nrunning)
{
    Corral__V1__Envelope env;
    Corral__V1__Ready ready;
    corral__v1__envelope__init(&env);
    corral__v1__ready__init(&ready);
    Corral__V1__RunningJob rj[16];
    Corral__V1__RunningJob *prj[16];
    cr_assert(nrunning <= 16, "raw_worker_ready: at most 16 running jobs");
    for (size_t i = 0; i < nrunning; i++) {
        corral__v1__running_job__init(&rj[i]);
        rj[i].job = (char *)jobs[i];
        rj[i].attempt = attempts[i];
        prj[i] = &rj[i];
    }
    ready.n_kinds = nkinds;
    ready.kinds = (char **)kinds;
    ready.concurrency = concurrency;
    ready.n_running = nrunning;
    ready.running = nrunning > 0 ? prj : NULL;
    ready.name = "raw-test-worker";
    env.body_case = CORRAL__V1__ENVELOPE__BODY_READY;
    env.ready = &ready;
    Corral__V1__Envelope *r = raw_request(p, &env, 5000);
    p->last_heartbeat_ms = clock_mono_ms();
    return r;
}

static int
reply_code(Corral__V1__Envelope *r)
{
    int code = r->reply != NULL ? (int)r->reply->code : -1;
    corral__v1__envelope__free_unpacked(r, NULL);
    return code;
}

int
raw_worker_done(struct raw_peer *p, const char *job, uint32_t attempt, const char *result)
{
    Corral__V1__Envelope env;
    Corral__V1__Done done;
    corral__v1__envelope__init(&env);
    corral__v1__done__init(&done);
    done.job = (char *)job;
    done.attempt = attempt;
    done.result.data = (uint8_t *)result;
    done.result.len = result != NULL ? strlen(result) : 0;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_DONE;
    env.done = &done;
    return reply_code(raw_request(p, &env, 5000));
}

int
raw_worker_failed(struct raw_peer *p, const char *job, uint32_t attempt, const char *type,
                  const char *message)
{
    Corral__V1__Envelope env;
    Corral__V1__Failed failed;
    corral__v1__envelope__init(&env);
    corral__v1__failed__init(&failed);
    failed.job = (char *)job;
    failed.attempt = attempt;
    failed.type = (char *)type;
    failed.message = (char *)message;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_FAILED;
    env.failed = &failed;
    return reply_code(raw_request(p, &env, 5000));
}

int
raw_worker_cancel_ack(struct raw_peer *p, const char *job, uint32_t attempt)
{
    Corral__V1__Envelope env;
    Corral__V1__CancelAck ack;
    corral__v1__envelope__init(&env);
    corral__v1__cancel_ack__init(&ack);
    ack.job = (char *)job;
    ack.attempt = attempt;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_CANCEL_ACK;
    env.cancel_ack = &ack;
    return reply_code(raw_request(p, &env, 5000));
}

/* Receives from the socket (not the stash) until a message that is not a heartbeat reply
 * arrives or the deadline passes, heartbeating meanwhile if asked. */
static Corral__V1__Envelope *
raw_pump_one(struct raw_peer *p, uint64_t deadline, bool heartbeat)
{
    for (;;) {
        uint64_t now = clock_mono_ms();
        if (heartbeat && now >= p->last_heartbeat_ms + HB_PERIOD_MS) {
            raw_worker_heartbeat(p);
            now = clock_mono_ms();
        }
        if (now >= deadline)
            return NULL;
        uint64_t until = deadline;
        if (heartbeat && p->last_heartbeat_ms + HB_PERIOD_MS < until)
            until = p->last_heartbeat_ms + HB_PERIOD_MS;
        Corral__V1__Envelope *env = raw_recv(p, until > now ? (int)(until - now) : 0);
        if (env == NULL)
            continue;
        if (swallow_heartbeat_reply(p, env))
            continue;
        if (env->body_case == CORRAL__V1__ENVELOPE__BODY_REPLY) {
            corral__v1__envelope__free_unpacked(env, NULL); /* a stale reply */
            continue;
        }
        return env;
    }
}

Corral__V1__Envelope *
raw_worker_next(struct raw_peer *p, int timeout_ms, bool heartbeat)
{
    Corral__V1__Envelope *env = stash_pop(p);
    if (env != NULL)
        return env;
    return raw_pump_one(p, clock_mono_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0),
                        heartbeat);
}

Corral__V1__Envelope *
raw_worker_expect(struct raw_peer *p, Corral__V1__Envelope__BodyCase body, int timeout_ms,
                  bool heartbeat)
{
    uint64_t deadline = clock_mono_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        Corral__V1__Envelope *env = stash_pop(p);
        if (env == NULL)
            env = raw_pump_one(p, deadline, heartbeat);
        if (env == NULL)
            return NULL;
        if (env->body_case == body)
            return env;
        corral__v1__envelope__free_unpacked(env, NULL);
    }
}

void
raw_worker_idle(struct raw_peer *p, int ms)
{
    uint64_t deadline = clock_mono_ms() + (uint64_t)(ms > 0 ? ms : 0);
    Corral__V1__Envelope *env;
    while ((env = raw_pump_one(p, deadline, true)) != NULL)
        stash_push(p, env);
}

/* ================================================================== corralctl */

int
run_ctl(const struct broker *b, char *out, size_t outlen, const char *const *args)
{
    const char *bin = getenv("CORRALCTL");
    cr_assert(bin != NULL && *bin != '\0', "CORRALCTL is not set");

    size_t nargs = 0;
    while (args != NULL && args[nargs] != NULL)
        nargs++;
    const char **argv = calloc(nargs + 2, sizeof *argv);
    cr_assert(argv != NULL);
    argv[0] = bin;
    for (size_t i = 0; i < nargs; i++)
        argv[i + 1] = args[i];

    /* The environment, with the endpoints replaced: built before fork (no malloc after). */
    size_t nenv = 0;
    while (environ[nenv] != NULL)
        nenv++;
    const char **envp = calloc(nenv + 3, sizeof *envp);
    cr_assert(envp != NULL);
    char cep[400];
    char wep[400];
    snprintf(cep, sizeof cep, "CORRAL_CLIENT_ENDPOINT=%s", b->client_ep);
    snprintf(wep, sizeof wep, "CORRAL_WORKER_ENDPOINT=%s", b->worker_ep);
    size_t k = 0;
    for (size_t i = 0; i < nenv; i++) {
        if (strncmp(environ[i], "CORRAL_CLIENT_ENDPOINT=", 23) == 0 ||
            strncmp(environ[i], "CORRAL_WORKER_ENDPOINT=", 23) == 0)
            continue;
        envp[k++] = environ[i];
    }
    envp[k++] = cep;
    envp[k++] = wep;
    envp[k] = NULL;

    int pfd[2];
    cr_assert(pipe2(pfd, O_CLOEXEC) == 0, "pipe: %s", strerror(errno));
    int nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    cr_assert(nullfd >= 0);
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        dup2(nullfd, 0);
        dup2(pfd[1], 1);
        execve(bin, (char *const *)argv, (char *const *)envp);
        _exit(127);
    }
    close(pfd[1]);
    close(nullfd);
    free(argv);
    free(envp);

    size_t used = 0;
    char sink[4096];
    uint64_t deadline = clock_mono_ms() + 60000;
    bool timed_out = false;
    for (;;) {
        uint64_t now = clock_mono_ms();
        if (now >= deadline) {
            timed_out = true;
            break;
        }
        struct pollfd pf = {.fd = pfd[0], .events = POLLIN};
        int r = poll(&pf, 1, (int)(deadline - now));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            continue;
        char *dst = sink;
        size_t room = sizeof sink;
        if (out != NULL && outlen > 0 && used + 1 < outlen) {
            dst = out + used;
            room = outlen - 1 - used;
        }
        ssize_t n = read(pfd[0], dst, room);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (dst != sink)
            used += (size_t)n;
    }
    close(pfd[0]);
    if (out != NULL && outlen > 0)
        out[used] = '\0';
    if (timed_out)
        kill(pid, SIGKILL);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    cr_assert(!timed_out, "corralctl %s did not finish within 60 s", nargs > 0 ? args[0] : "");
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}

/* ================================================================== misc */

bool
eventually(bool (*cond)(void *arg), void *arg, int timeout_ms)
{
    uint64_t deadline = clock_mono_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        if (cond(arg))
            return true;
        if (clock_mono_ms() >= deadline)
            return cond(arg);
        sleep_ms(10);
    }
}

void
expect_worker_cancel(struct test_worker *w, const char *job, enum corral_cancel_source source,
                     const char *reason)
{
    struct cancel_seen cs;
    cr_assert(test_worker_cancel_of(w, job, &cs), "the worker saw no cancel of %s", job);
    cr_assert(cs.source == source, "cancel of %s: source %s, expected %s", job,
              corral_source_name(cs.source), corral_source_name(source));
    cr_assert_str_eq(cs.reason, reason, "cancel of %s: reason '%s', expected '%s'", job, cs.reason,
                     reason);
}

void
expect_no_worker_problem(struct test_worker *w)
{
    char problem[256];
    test_worker_problem(w, problem, sizeof problem);
    cr_expect(problem[0] == '\0', "the test worker met an error: %s", problem);
}

/* ---- shared raw-worker and tree helpers (see harness.h) */

void
raw_worker_register(struct raw_peer *p, const struct broker *b, const char *const *kinds,
                    size_t nkinds, unsigned concurrency)
{
    raw_connect(p, b->worker_ep);
    Corral__V1__Envelope *r = raw_worker_ready(p, kinds, nkinds, concurrency, NULL, NULL, 0);
    cr_assert_eq(r->reply->code, CORRAL__V1__ERROR_CODE__ERR_OK, "Ready refused: %s",
                 r->reply->message);
    corral__v1__envelope__free_unpacked(r, NULL);
}

int
raw_worker_failed_retryable(struct raw_peer *p, const char *job, uint32_t attempt, const char *type,
                            const char *message)
{
    Corral__V1__Envelope env;
    Corral__V1__Failed failed;
    corral__v1__envelope__init(&env);
    corral__v1__failed__init(&failed);
    failed.job = (char *)job;
    failed.attempt = attempt;
    failed.type = (char *)type;
    failed.message = (char *)message;
    failed.retryable = true;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_FAILED;
    env.failed = &failed;
    Corral__V1__Envelope *r = raw_request(p, &env, 5000);
    int code = r->reply != NULL ? (int)r->reply->code : -1;
    corral__v1__envelope__free_unpacked(r, NULL);
    return code;
}

const Corral__V1__Node *
pnode_find(const Corral__V1__Node *n, const char *id)
{
    if (n == NULL)
        return NULL;
    if (n->id != NULL && strcmp(n->id, id) == 0)
        return n;
    for (size_t i = 0; i < n->n_children; i++) {
        const Corral__V1__Node *f = pnode_find(n->children[i], id);
        if (f != NULL)
            return f;
    }
    for (size_t i = 0; i < n->n_groups; i++) {
        const Corral__V1__Node *f = pnode_find(n->groups[i], id);
        if (f != NULL)
            return f;
    }
    return NULL;
}
