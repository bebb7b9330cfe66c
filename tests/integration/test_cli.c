/* test_cli.c - the corralctl contract of issue 2, and the README walk-through
 * (acceptance 6).
 *
 * corralctl runs as a real process against a real corrald. Output is parsed the way a
 * shell user would: ids from stdout, exit statuses, and --json checked with Debian's
 * /usr/bin/python3 (json module) against the tree schema of the issue.
 *
 * Exit statuses: 0 success; 64 usage; 65 refused (error on stderr); 69 no answer within
 * --timeout; `group wait`: 0 SUCCEEDED, 1 FAILED, 2 CANCELLED, 3 timeout.
 *
 * The walk-through's worker is `corralctl worker --kind sh --concurrency 3 -- sh`: the
 * payload arrives on stdin, and `sh` reading a script from stdin runs it, so the payload
 * is simply the shell command of the job.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "harness.h"

extern char **environ;

#define PYTHON "/usr/bin/python3"

/* ------------------------------------------------------------------ running programs */

struct run {
    int status; /* exit status, 128+signal, or -1 when killed at the time limit */
    char out[32768];
    char err[8192];
    uint64_t ms; /* wall time */
};

/* Builds an environment: ours without CORRAL_*_ENDPOINT, plus the given endpoints.
 * Returns owned; free with free_env. Built before fork: the test process has threads. */
static char **
make_env(const char *client_ep, const char *worker_ep)
{
    size_t n = 0;
    while (environ[n]) {
        n++;
    }
    char **env = calloc(n + 3, sizeof *env);
    cr_assert_not_null(env);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (strncmp(environ[i], "CORRAL_CLIENT_ENDPOINT=", 23) != 0 &&
            strncmp(environ[i], "CORRAL_WORKER_ENDPOINT=", 23) != 0) {
            env[k++] = strdup(environ[i]);
        }
    }
    if (client_ep) {
        cr_assert(asprintf(&env[k++], "CORRAL_CLIENT_ENDPOINT=%s", client_ep) > 0);
    }
    if (worker_ep) {
        cr_assert(asprintf(&env[k++], "CORRAL_WORKER_ENDPOINT=%s", worker_ep) > 0);
    }
    env[k] = NULL;
    return env;
}

static void
free_env(char **env)
{
    for (size_t i = 0; env[i]; i++) {
        free(env[i]);
    }
    free(env);
}

/* Drains fd into buf (keeps at most cap-1 bytes, NUL-terminated); false at EOF. */
static bool
drain(int fd, char *buf, size_t cap, size_t *len)
{
    char tmp[4096];
    ssize_t got = read(fd, tmp, sizeof tmp);
    if (got < 0 && errno == EINTR) {
        return true;
    }
    if (got <= 0) {
        return false;
    }
    size_t take = (size_t)got;
    if (*len + take > cap - 1) {
        take = cap - 1 - *len;
    }
    memcpy(buf + *len, tmp, take);
    *len += take;
    buf[*len] = '\0';
    return true;
}

/* Runs argv (argv[0] a path) with env, stdin from stdin_path (NULL: /dev/null), capturing
 * stdout and stderr; kills it after limit_ms. */
static void
run_prog(const char *const *argv, char **env, const char *stdin_path, int limit_ms, struct run *r)
{
    int out[2], err[2];
    cr_assert_eq(pipe(out), 0);
    cr_assert_eq(pipe(err), 0);
    r->out[0] = r->err[0] = '\0';
    uint64_t t0 = clock_mono_ms();
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        int in = open(stdin_path ? stdin_path : "/dev/null", O_RDONLY);
        if (in < 0 || dup2(in, 0) < 0 || dup2(out[1], 1) < 0 || dup2(err[1], 2) < 0) {
            _exit(126);
        }
        close(out[0]);
        close(err[0]);
        execve(argv[0], (char *const *)argv, env);
        _exit(127);
    }
    close(out[1]);
    close(err[1]);
    size_t olen = 0, elen = 0;
    bool oopen = true, eopen = true, killed = false;
    while (oopen || eopen) {
        struct pollfd fds[2] = {{.fd = oopen ? out[0] : -1, .events = POLLIN},
                                {.fd = eopen ? err[0] : -1, .events = POLLIN}};
        int left = limit_ms - (int)(clock_mono_ms() - t0);
        if (left <= 0) {
            kill(pid, SIGKILL);
            killed = true;
            break;
        }
        if (poll(fds, 2, left) < 0 && errno != EINTR) {
            break;
        }
        if (oopen && fds[0].revents) {
            oopen = drain(out[0], r->out, sizeof r->out, &olen);
        }
        if (eopen && fds[1].revents) {
            eopen = drain(err[0], r->err, sizeof r->err, &elen);
        }
    }
    close(out[0]);
    close(err[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    r->ms = clock_mono_ms() - t0;
    if (killed) {
        r->status = -1;
    } else if (WIFEXITED(st)) {
        r->status = WEXITSTATUS(st);
    } else {
        r->status = 128 + WTERMSIG(st);
    }
}

static const char *
ctl_path(void)
{
    const char *p = getenv("CORRALCTL");
    cr_assert(p && *p, "CORRALCTL is not set");
    return p;
}

/* Runs corralctl args (NULL-terminated) with client_ep/worker_ep exported, within
 * limit_ms. */
static void
ctl_at(const char *client_ep, const char *worker_ep, struct run *r, int limit_ms,
       const char *const *args)
{
    const char *argv[64];
    size_t n = 0;
    argv[n++] = ctl_path();
    for (size_t i = 0; args[i]; i++) {
        cr_assert_lt(n, 63);
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    char **env = make_env(client_ep, worker_ep);
    run_prog(argv, env, NULL, limit_ms, r);
    free_env(env);
    cr_log_info("corralctl%s%s%s%s%s%s -> %d (%lu ms)", n > 1 ? " " : "", n > 1 ? argv[1] : "",
                n > 2 ? " " : "", n > 2 ? argv[2] : "", n > 3 ? " " : "", n > 3 ? argv[3] : "",
                r->status, (unsigned long)r->ms);
}

/* corralctl against broker b (its endpoints exported), 30 s limit. */
#define CTL(b, r, ...)                                                                             \
    ctl_at((b)->client_ep, (b)->worker_ep, (r), 30000, (const char *const[]){__VA_ARGS__, NULL})

/* Asserts r exited with want, showing its output otherwise. */
#define EXPECT_STATUS(r, want, what)                                                               \
    cr_assert_eq((r)->status, (want), "%s: exit %d, want %d\nstdout: %s\nstderr: %s", (what),      \
                 (r)->status, (want), (r)->out, (r)->err)

/* Copies r's stdout, trimmed, into id and asserts it looks like one id. */
static void
take_id(const struct run *r, char id[CORRAL_ID_MAX], const char *what)
{
    const char *s = r->out;
    while (*s == ' ' || *s == '\n' || *s == '\t') {
        s++;
    }
    size_t n = strcspn(s, " \t\r\n");
    cr_assert(n > 0 && n < CORRAL_ID_MAX, "%s: stdout is not an id: \"%s\"", what, r->out);
    const char *rest = s + n;
    while (*rest == ' ' || *rest == '\n' || *rest == '\t' || *rest == '\r') {
        rest++;
    }
    cr_assert_eq(*rest, '\0', "%s: more than an id on stdout: \"%s\"", what, r->out);
    memcpy(id, s, n);
    id[n] = '\0';
}

/* Runs one corralctl command that must succeed and print an id. */
#define CTL_ID(b, id, ...)                                                                         \
    do {                                                                                           \
        struct run r_;                                                                             \
        CTL((b), &r_, __VA_ARGS__);                                                                \
        EXPECT_STATUS(&r_, 0, #__VA_ARGS__);                                                       \
        take_id(&r_, (id), #__VA_ARGS__);                                                          \
    } while (0)

/* Runs /usr/bin/python3 -c code args... with text on stdin; returns its exit status and
 * logs its stderr and the text when it fails. */
static int
py(const char *text, const char *code, const char *const *args)
{
    char path[] = "/tmp/corral-cli-json-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    size_t len = strlen(text);
    cr_assert_eq(write(fd, text, len), (ssize_t)len);
    close(fd);
    const char *argv[16];
    size_t n = 0;
    argv[n++] = PYTHON;
    argv[n++] = "-c";
    argv[n++] = code;
    for (size_t i = 0; args && args[i]; i++) {
        cr_assert_lt(n, 15);
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    struct run *r = calloc(1, sizeof *r);
    cr_assert_not_null(r);
    run_prog(argv, environ, path, 30000, r);
    unlink(path);
    int st = r->status;
    if (st != 0) {
        cr_log_error("python check failed (%d):\n%s\non input:\n%s", st, r->err, text);
    }
    free(r);
    return st;
}

#define PY(text, code, ...) py((text), (code), (const char *const[]){__VA_ARGS__, NULL})

/* The --json tree schema of issue 2, as a Python checker; `t` is the parsed document. */
#define PY_SCHEMA                                                                                  \
    "import json, sys\n"                                                                           \
    "t = json.load(sys.stdin)\n"                                                                   \
    "a = sys.argv[1:]\n"                                                                           \
    "STATES = {'QUEUED','RUNNING','CANCELLING','ENDED','OPEN','CLOSED','WAITING','RETRY_WAIT'}\n"  \
    "def err(e):\n"                                                                                \
    "    assert isinstance(e, dict), e\n"                                                          \
    "    assert isinstance(e['type'], str) and isinstance(e['message'], str), e\n"                 \
    "    assert ('job' in e) != ('group' in e), ('job or group', e)\n"                             \
    "    if e['type'] == 'ExceptionGroup':\n"                                                      \
    "        assert isinstance(e['group'], str) and isinstance(e['exceptions'], list), e\n"        \
    "        for x in e['exceptions']: err(x)\n"                                                   \
    "    else:\n"                                                                                  \
    "        assert isinstance(e['job'], str) and 'exceptions' not in e, e\n"                      \
    "def node(n):\n"                                                                               \
    "    for k in ('type','id','state','outcome','error','cancel_called','cancelled_caught',\n"    \
    "              'cancel_source','cancel_reason'):\n"                                            \
    "        assert k in n, 'missing %s in %r' % (k, n)\n"                                         \
    "    assert n['type'] in ('group', 'job'), n\n"                                                \
    "    assert isinstance(n['id'], str) and n['id'], n\n"                                         \
    "    assert n['state'] in STATES, n\n"                                                         \
    "    assert n['outcome'] in (None, 'SUCCEEDED', 'FAILED', 'CANCELLED'), n\n"                   \
    "    assert isinstance(n['cancel_called'], bool), n\n"                                         \
    "    assert isinstance(n['cancelled_caught'], bool), n\n"                                      \
    "    assert n['cancel_source'] in (None,'explicit','deadline','sibling_failed','parent'), n\n" \
    "    assert n['cancel_reason'] is None or isinstance(n['cancel_reason'], str), n\n"            \
    "    if n['outcome'] == 'FAILED': err(n['error'])\n"                                           \
    "    else: assert n['error'] is None, n\n"                                                     \
    "    if n['type'] == 'group':\n"                                                               \
    "        assert n['state'] in ('OPEN','CLOSED','CANCELLING','ENDED'), n\n"                     \
    "        assert isinstance(n['children'], list), n\n"                                          \
    "        for c in n['children']: node(c)\n"                                                    \
    "    else:\n"                                                                                  \
    "        assert isinstance(n['kind'], str) and isinstance(n['attempt'], int), n\n"             \
    "        if n['outcome'] == 'SUCCEEDED':\n"                                                    \
    "            assert isinstance(n.get('result', n.get('result_b64')), str), n\n"                \
    "        for g in n.get('groups', []): node(g)\n"                                              \
    "    return n\n"                                                                               \
    "node(t)\n"                                                                                    \
    "def kid(n, i):\n"                                                                             \
    "    return next(c for c in n['children'] if c['id'] == i)\n"

/* Counts occurrences of needle in hay. */
static size_t
count_of(const char *hay, const char *needle)
{
    size_t n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle)) {
        n++;
    }
    return n;
}

static void
sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ---- conditions for eventually() ---- */

struct job_probe {
    const struct broker *b;
    const char *group;
    const char *job;
    enum corral_state state;
};

static bool
job_in_state(void *arg)
{
    struct job_probe *p = arg;
    struct corral_client *c = client_connect(p->b);
    struct corral_node *t = NULL;
    bool ok = false;
    if (corral_group_tree(c, p->group, &t) == CORRAL_OK) {
        const struct corral_node *n = tree_find(t, p->job);
        ok = n && n->state == p->state;
    }
    corral_node_free(&t);
    corral_client_free(&c);
    return ok;
}

static void
wait_job_state(const struct broker *b, const char *group, const char *job, enum corral_state state)
{
    struct job_probe p = {b, group, job, state};
    cr_assert(eventually(job_in_state, &p, 10000), "job %s never reached state %d", job, state);
}

struct started_probe {
    struct test_worker *w;
    size_t n;
};

static bool
worker_started(void *arg)
{
    struct started_probe *p = arg;
    return test_worker_started(p->w) >= p->n;
}

static bool
file_exists(void *arg)
{
    return access((const char *)arg, F_OK) == 0;
}

/* Reads a group's tree through libcorral (owned). */
static struct corral_node *
tree_of(const struct broker *b, const char *group)
{
    struct corral_client *c = client_connect(b);
    struct corral_node *t = NULL;
    int rc = corral_group_tree(c, group, &t);
    cr_assert_eq(rc, CORRAL_OK, "tree of %s: %s", group, corral_strerror(rc));
    corral_client_free(&c);
    return t;
}

static void
start(struct broker *b, struct test_worker **w)
{
    const char *const none[] = {NULL};
    broker_start(b, none);
    if (w) {
        *w = test_worker_start(b, 4);
    }
}

static void
finish(struct broker *b, struct test_worker **w)
{
    if (w) {
        test_worker_stop(w);
    }
    broker_stop(b);
    broker_cleanup(b);
}

/* ------------------------------------------------------------------ ids and --json */

Test(cli, open_and_submit_print_ids, .timeout = 120)
{
    struct broker b;
    struct test_worker *w;
    start(&b, &w);
    char g[CORRAL_ID_MAX], child[CORRAL_ID_MAX], j1[CORRAL_ID_MAX], j2[CORRAL_ID_MAX];
    CTL_ID(&b, g, "group", "open");
    CTL_ID(&b, child, "group", "open", "--parent", g);
    CTL_ID(&b, j1, "submit", g, "echo", "--payload", "hello from the cli");

    char path[600];
    snprintf(path, sizeof path, "%s/payload.txt", b.dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs("payload\nfrom a file\n", f);
    fclose(f);
    CTL_ID(&b, j2, "submit", child, "echo", "--payload-file", path);

    /* --json output parses; open and submit name the new id. */
    struct run r;
    CTL(&b, &r, "group", "open", "--json");
    EXPECT_STATUS(&r, 0, "group open --json");
    static const char id_of[] = "import json, sys\n"
                                "d = json.load(sys.stdin)\n"
                                "i = d if isinstance(d, str) else d['id']\n"
                                "assert isinstance(i, str) and i, d\n";
    cr_assert_eq(py(r.out, id_of, NULL), 0, "group open --json: %s", r.out);
    CTL(&b, &r, "submit", g, "echo", "--payload", "json", "--json");
    EXPECT_STATUS(&r, 0, "submit --json");
    cr_assert_eq(py(r.out, id_of, NULL), 0, "submit --json: %s", r.out);

    /* The ids are real: the tree holds them where they were put. */
    struct corral_node *t = tree_of(&b, g);
    const struct corral_node *n = tree_find(t, j1);
    cr_assert_not_null(n, "job %s not in %s", j1, g);
    cr_assert_str_eq(n->kind, "echo");
    n = tree_find(t, child);
    cr_assert_not_null(n);
    cr_assert_eq(n->type, CORRAL_NODE_GROUP);
    cr_assert_str_eq(n->parent, g);
    cr_assert_not_null(tree_find(n, j2));
    corral_node_free(&t);

    CTL(&b, &r, "group", "close", child);
    EXPECT_STATUS(&r, 0, "group close child");
    CTL(&b, &r, "group", "close", g);
    EXPECT_STATUS(&r, 0, "group close");
    CTL(&b, &r, "group", "wait", g, "--json");
    EXPECT_STATUS(&r, 0, "group wait --json");
    cr_assert_eq(PY(r.out,
                    PY_SCHEMA "assert t['outcome'] == 'SUCCEEDED' and t['state'] == 'ENDED', t\n"
                              "assert kid(t, a[0])['result'] == 'hello from the cli'\n"
                              "c = kid(t, a[1])\n"
                              "assert c['type'] == 'group' and c['outcome'] == 'SUCCEEDED'\n"
                              "assert kid(c, a[2])['result'] == 'payload\\nfrom a file\\n'\n",
                    j1, child, j2),
                 0);
    finish(&b, &w);
}

/* ------------------------------------------------------------------ group wait */

Test(cli, group_wait_exit_codes, .timeout = 120)
{
    struct broker b;
    struct test_worker *w;
    start(&b, &w);
    struct run r;
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];

    /* 0: SUCCEEDED */
    CTL_ID(&b, g, "group", "open");
    CTL_ID(&b, j, "submit", g, "echo", "--payload", "ok");
    CTL(&b, &r, "group", "close", g);
    EXPECT_STATUS(&r, 0, "close");
    CTL(&b, &r, "group", "wait", g);
    EXPECT_STATUS(&r, 0, "wait on a succeeding group");
    cr_assert_not_null(strstr(r.out, "SUCCEEDED"), "wait output: %s", r.out);

    /* 1: FAILED (no close needed: a failing group ends once its children have) */
    CTL_ID(&b, g, "group", "open");
    CTL_ID(&b, j, "submit", g, "fail", "--payload", "ValueError:exit one");
    CTL(&b, &r, "group", "wait", g);
    EXPECT_STATUS(&r, 1, "wait on a failing group");
    cr_assert_not_null(strstr(r.out, "FAILED"), "wait output: %s", r.out);

    /* 2: CANCELLED */
    CTL_ID(&b, g, "group", "open");
    CTL(&b, &r, "group", "cancel", g);
    EXPECT_STATUS(&r, 0, "cancel");
    CTL(&b, &r, "group", "wait", g);
    EXPECT_STATUS(&r, 2, "wait on a cancelled group");
    cr_assert_not_null(strstr(r.out, "CANCELLED"), "wait output: %s", r.out);

    /* 3: timeout on an open group, which stays open (waiting never closes) */
    CTL_ID(&b, g, "group", "open");
    CTL(&b, &r, "group", "wait", g, "--timeout", "200ms");
    EXPECT_STATUS(&r, 3, "wait --timeout 200ms on an open group");
    cr_assert_geq(r.ms, 200, "wait returned before its timeout (%lu ms)", (unsigned long)r.ms);
    cr_assert_lt(r.ms, 3000, "wait --timeout 200ms took %lu ms", (unsigned long)r.ms);
    struct corral_node *t = tree_of(&b, g);
    cr_assert_eq(t->state, CORRAL_STATE_OPEN, "waiting changed the group's state to %d", t->state);
    cr_assert(!t->closed);
    corral_node_free(&t);
    CTL(&b, &r, "group", "close", g);
    EXPECT_STATUS(&r, 0, "close");
    CTL(&b, &r, "group", "wait", g, "--timeout", "5s");
    EXPECT_STATUS(&r, 0, "wait on a closed empty group");
    finish(&b, &w);
}

/* ------------------------------------------------------------------ group show */

Test(cli, show_json_schema_and_exception_group, .timeout = 120)
{
    struct broker b;
    struct test_worker *w;
    start(&b, &w);
    char g[CORRAL_ID_MAX], h[CORRAL_ID_MAX], j1[CORRAL_ID_MAX], s[CORRAL_ID_MAX], j2[CORRAL_ID_MAX];
    CTL_ID(&b, g, "group", "open");
    CTL_ID(&b, j1, "submit", g, "echo", "--payload", "hello");
    wait_job_state(&b, g, j1, CORRAL_STATE_ENDED);
    CTL_ID(&b, s, "submit", g, "sleep", "--payload", "60000");
    wait_job_state(&b, g, s, CORRAL_STATE_RUNNING);
    CTL_ID(&b, h, "group", "open", "--parent", g);

    /* A half-built tree has the schema too. */
    struct run r;
    CTL(&b, &r, "group", "show", g, "--json");
    EXPECT_STATUS(&r, 0, "group show --json (open)");
    cr_assert_eq(PY(r.out,
                    PY_SCHEMA "assert t['state'] == 'OPEN' and t['outcome'] is None\n"
                              "assert kid(t, a[0])['state'] == 'RUNNING'\n",
                    s),
                 0);

    /* The nested group fails: h fails, so g fails, the sleeper is cancelled. */
    CTL_ID(&b, j2, "submit", h, "fail", "--payload", "ValueError:boom");
    CTL(&b, &r, "group", "wait", g, "--timeout", "20s", "--json");
    EXPECT_STATUS(&r, 1, "wait on the failing tree");
    cr_assert_eq(py(r.out, PY_SCHEMA "assert t['outcome'] == 'FAILED'\n", NULL), 0);

    CTL(&b, &r, "group", "show", g, "--json");
    EXPECT_STATUS(&r, 0, "group show --json");
    static const char check[] = PY_SCHEMA
        "g, h, j1, s, j2 = a\n"
        "assert t['type'] == 'group' and t['id'] == g and t['state'] == 'ENDED', t\n"
        "assert t['outcome'] == 'FAILED', t\n"
        "assert t['cancel_called'] is True and t['cancel_source'] == 'sibling_failed', t\n"
        "assert t['cancel_reason'] == h, t['cancel_reason']\n"
        "assert t['cancelled_caught'] is True, t\n"
        "assert [c['id'] for c in t['children']] == [j1, s, h], t['children']\n"
        "e = t['error']\n"
        "assert e['type'] == 'ExceptionGroup' and e['group'] == g, e\n"
        "assert len(e['exceptions']) == 1, e\n"
        "n = e['exceptions'][0]\n"
        "assert n['type'] == 'ExceptionGroup' and n['group'] == h, n\n"
        "assert len(n['exceptions']) == 1, n\n"
        "x = n['exceptions'][0]\n"
        "assert x['type'] == 'ValueError' and x['message'] == 'boom' and x['job'] == j2, x\n"
        "c = kid(t, j1)\n"
        "assert c['kind'] == 'echo' and c['outcome'] == 'SUCCEEDED' and c['result'] == 'hello'\n"
        "assert c['attempt'] >= 1 and c['cancel_called'] is False and c['cancel_source'] is None\n"
        "c = kid(t, s)\n"
        "assert c['outcome'] == 'CANCELLED' and c['cancel_called'] is True, c\n"
        "assert c['cancel_source'] == 'sibling_failed' and c['cancel_reason'] == h, c\n"
        "c = kid(t, h)\n"
        "assert c['type'] == 'group' and c['outcome'] == 'FAILED', c\n"
        "assert c['cancel_source'] == 'sibling_failed' and c['cancel_reason'] == j2, c\n"
        "assert c['error']['type'] == 'ExceptionGroup' and c['error']['group'] == h\n"
        "c = kid(c, j2)\n"
        "assert c['kind'] == 'fail' and c['outcome'] == 'FAILED', c\n"
        "assert c['error'] == {**c['error'], 'type': 'ValueError', 'message': 'boom', 'job': j2}\n";
    cr_assert_eq(PY(r.out, check, g, h, j1, s, j2), 0);

    /* The human form: states, outcomes, the exception group the way Python prints it. */
    CTL(&b, &r, "group", "show", g);
    EXPECT_STATUS(&r, 0, "group show");
    cr_log_info("group show:\n%s", r.out);
    cr_assert(strstr(r.out, g) && strstr(r.out, h) && strstr(r.out, j1) && strstr(r.out, s) &&
                  strstr(r.out, j2),
              "every id is shown:\n%s", r.out);
    cr_assert_not_null(strstr(r.out, "ExceptionGroup"), "%s", r.out);
    cr_assert_not_null(strstr(r.out, "ValueError: boom"), "%s", r.out);
    cr_assert_not_null(strstr(r.out, "CANCELLED"), "%s", r.out);
    cr_assert_not_null(strstr(r.out, "SUCCEEDED"), "%s", r.out);
    cr_assert_not_null(strstr(r.out, "hello"), "the result is shown:\n%s", r.out);
    finish(&b, &w);
}

/* ------------------------------------------------------------------ exit statuses */

Test(cli, usage_errors_exit_64, .timeout = 120)
{
    struct broker b;
    struct test_worker *w;
    start(&b, &w);
    char g[CORRAL_ID_MAX];
    CTL_ID(&b, g, "group", "open");
    static const char *const cases[][8] = {
        {NULL},
        {"no-such-command", NULL},
        {"group", NULL},
        {"group", "frobnicate", NULL},
        {"group", "open", "--no-such-flag", NULL},
        {"group", "open", "--parent", NULL},
        {"submit", NULL},
        {"submit", "GROUP", NULL},
        {"group", "wait", "GROUP", "--timeout", "soon", NULL},
        {"group", "wait", "GROUP", "--timeout", "-1s", NULL},
        {"group", "close", NULL},
        {"job", "cancel", NULL},
        {"worker", "--kind", "sh", NULL}, /* no command */
        {"worker", "--", "sh", NULL},     /* no kind */
        {"worker", "--kind", "sh", "--concurrency", "0", "--", "sh", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *args[8];
        size_t n = 0;
        for (; cases[i][n]; n++) {
            args[n] = strcmp(cases[i][n], "GROUP") == 0 ? g : cases[i][n];
        }
        args[n] = NULL;
        struct run r;
        ctl_at(b.client_ep, b.worker_ep, &r, 10000, args);
        cr_assert_eq(r.status, 64, "usage case %zu (%s %s %s ...): exit %d, want 64\nstderr: %s", i,
                     n > 0 ? args[0] : "", n > 1 ? args[1] : "", n > 2 ? args[2] : "", r.status,
                     r.err);
        cr_assert(r.err[0], "usage case %zu: nothing on stderr", i);
    }
    /* The group was never touched by any of them. */
    struct corral_node *t = tree_of(&b, g);
    cr_assert_eq(t->state, CORRAL_STATE_OPEN);
    cr_assert_eq(t->nchildren, 0);
    corral_node_free(&t);
    finish(&b, &w);
}

static bool
mentions(const char *text, const char *a, const char *b)
{
    return strcasestr(text, a) || strcasestr(text, b);
}

Test(cli, refused_exit_65, .timeout = 120)
{
    struct broker b;
    struct test_worker *w;
    start(&b, &w);
    struct run r;
    CTL(&b, &r, "submit", "g999999", "echo", "--payload", "x");
    EXPECT_STATUS(&r, 65, "submit to an unknown group");
    cr_assert(mentions(r.err, "not found", "NOT_FOUND"), "stderr: %s", r.err);
    CTL(&b, &r, "group", "close", "g999999");
    EXPECT_STATUS(&r, 65, "close an unknown group");
    cr_assert(mentions(r.err, "not found", "NOT_FOUND"), "stderr: %s", r.err);
    CTL(&b, &r, "group", "cancel", "g999999");
    EXPECT_STATUS(&r, 65, "cancel an unknown group");
    CTL(&b, &r, "job", "cancel", "j999999");
    EXPECT_STATUS(&r, 65, "cancel an unknown job");
    CTL(&b, &r, "group", "show", "g999999");
    EXPECT_STATUS(&r, 65, "show an unknown group");
    CTL(&b, &r, "group", "wait", "g999999", "--timeout", "2s");
    EXPECT_STATUS(&r, 65, "wait for an unknown group");
    CTL(&b, &r, "group", "open", "--parent", "g999999");
    EXPECT_STATUS(&r, 65, "open under an unknown group");

    /* A submission to an ended group: refused, "not active". */
    char g[CORRAL_ID_MAX];
    CTL_ID(&b, g, "group", "open");
    CTL(&b, &r, "group", "close", g);
    EXPECT_STATUS(&r, 0, "close");
    CTL(&b, &r, "group", "wait", g, "--timeout", "5s");
    EXPECT_STATUS(&r, 0, "wait");
    CTL(&b, &r, "submit", g, "echo", "--payload", "late");
    EXPECT_STATUS(&r, 65, "submit to an ended group");
    cr_assert(mentions(r.err, "not active", "NOT_ACTIVE"), "stderr: %s", r.err);
    cr_assert_eq(r.out[0], '\0', "a refused submit printed an id: %s", r.out);
    finish(&b, &w);
}

Test(cli, broker_down_exit_69, .timeout = 120)
{
    struct broker b;
    start(&b, NULL);
    char nobody[400];
    snprintf(nobody, sizeof nobody, "ipc://%s/nobody-listens.sock", b.dir);
    struct run r;

    CTL(&b, &r, "group", "open", "--endpoint", nobody, "--timeout", "300ms");
    EXPECT_STATUS(&r, 69, "group open, nothing listening (ipc)");
    cr_assert_lt(r.ms, 5000, "took %lu ms with --timeout 300ms", (unsigned long)r.ms);
    cr_assert(r.err[0], "nothing on stderr");

    CTL(&b, &r, "submit", "g1", "echo", "--payload", "x", "--endpoint", "tcp://127.0.0.1:1",
        "--timeout", "300ms");
    EXPECT_STATUS(&r, 69, "submit, nothing listening (tcp)");
    cr_assert_lt(r.ms, 5000, "took %lu ms with --timeout 300ms", (unsigned long)r.ms);

    /* The endpoint from the environment, as in the walk-through. */
    ctl_at(nobody, b.worker_ep, &r, 30000,
           (const char *const[]){"group", "close", "g1", "--timeout", "300ms", NULL});
    EXPECT_STATUS(&r, 69, "group close, CORRAL_CLIENT_ENDPOINT with nothing listening");
    cr_assert_lt(r.ms, 5000, "took %lu ms with --timeout 300ms", (unsigned long)r.ms);

    /* The real broker still answers through the same flags. */
    char g[CORRAL_ID_MAX];
    CTL_ID(&b, g, "group", "open", "--endpoint", b.client_ep, "--timeout", "2s");
    finish(&b, NULL);
}

/* ------------------------------------------------------------------ cancelled scopes */

Test(cli, submit_into_cancelled_group_prints_id, .timeout = 120)
{
    struct broker b;
    struct test_worker *w;
    start(&b, &w);
    char g[CORRAL_ID_MAX], st[CORRAL_ID_MAX], late[CORRAL_ID_MAX];
    CTL_ID(&b, g, "group", "open");
    /* A stubborn child (ignores cancel for 6 s) keeps the cancelled group from ending
     * meanwhile, even under valgrind. */
    CTL_ID(&b, st, "submit", g, "stubborn", "--payload", "6000");
    struct started_probe sp = {w, 1};
    cr_assert(eventually(worker_started, &sp, 10000));
    struct run r;
    CTL(&b, &r, "group", "cancel", g, "--reason", "enough");
    EXPECT_STATUS(&r, 0, "cancel");

    CTL_ID(&b, late, "submit", g, "echo", "--payload", "never runs");
    struct corral_node *t = tree_of(&b, g);
    const struct corral_node *n = tree_find(t, late);
    cr_assert_not_null(n, "the submission into the cancelled group is not recorded");
    cr_assert_eq(n->state, CORRAL_STATE_ENDED);
    cr_assert_eq(n->outcome, CORRAL_OUTCOME_CANCELLED);
    cr_assert_eq(n->cancel_source, CORRAL_SOURCE_PARENT);
    corral_node_free(&t);

    CTL(&b, &r, "group", "wait", g, "--timeout", "20s");
    EXPECT_STATUS(&r, 2, "wait on the cancelled group");
    cr_assert_eq(test_worker_started(w), 1, "the late job was dispatched");
    t = tree_of(&b, g);
    n = tree_find(t, st);
    cr_assert_eq(n->outcome, CORRAL_OUTCOME_SUCCEEDED,
                 "a child finishing after cancel keeps "
                 "its result (S3)");
    cr_assert_str_eq(t->cancel_reason, "enough");
    corral_node_free(&t);
    finish(&b, &w);
}

/* A submission into a cancelled group is recorded CANCELLED and never queued; it must not
 * disturb the jobs of its kind that are queued elsewhere (found by the S12 flood: they
 * stayed QUEUED forever, even for a new worker). */
Test(cli, submit_into_cancelled_group_leaves_queue_alone, .timeout = 120)
{
    struct broker b;
    struct test_worker *w;
    start(&b, &w);
    char g0[CORRAL_ID_MAX], waiting[CORRAL_ID_MAX];
    char g[CORRAL_ID_MAX], st[CORRAL_ID_MAX], late[CORRAL_ID_MAX];
    struct run r;
    /* No worker serves "later" yet: this job waits in its queue. */
    CTL_ID(&b, g0, "group", "open");
    CTL_ID(&b, waiting, "submit", g0, "later", "--payload", "queued before");

    CTL_ID(&b, g, "group", "open");
    CTL_ID(&b, st, "submit", g, "stubborn", "--payload", "6000");
    struct started_probe sp = {w, 1};
    cr_assert(eventually(worker_started, &sp, 10000));
    CTL(&b, &r, "group", "cancel", g);
    EXPECT_STATUS(&r, 0, "cancel");
    CTL_ID(&b, late, "submit", g, "later", "--payload", "never runs");

    /* Now a worker for "later" arrives: the job queued before must be dispatched. */
    struct raw_peer p;
    raw_connect(&p, b.worker_ep);
    const char *const kinds[] = {"later"};
    Corral__V1__Envelope *rep = raw_worker_ready(&p, kinds, 1, 1, NULL, NULL, 0);
    corral__v1__envelope__free_unpacked(rep, NULL);
    Corral__V1__Envelope *d =
        raw_worker_expect(&p, CORRAL__V1__ENVELOPE__BODY_DISPATCH, 5000, true);
    cr_assert_not_null(d, "the job queued before the submission into the cancelled group "
                          "was never dispatched");
    cr_assert_str_eq(d->dispatch->job, waiting);
    cr_assert_eq(raw_worker_done(&p, waiting, d->dispatch->attempt, "served"), CORRAL_OK);
    corral__v1__envelope__free_unpacked(d, NULL);
    d = raw_worker_next(&p, 300, true);
    cr_assert(d == NULL || d->body_case != CORRAL__V1__ENVELOPE__BODY_DISPATCH ||
                  strcmp(d->dispatch->job, late) != 0,
              "the job submitted into the cancelled group was dispatched");
    if (d) {
        corral__v1__envelope__free_unpacked(d, NULL);
    }
    CTL(&b, &r, "group", "close", g0);
    EXPECT_STATUS(&r, 0, "close");
    CTL(&b, &r, "group", "wait", g0, "--timeout", "10s");
    EXPECT_STATUS(&r, 0, "wait for the group of the queued job");
    raw_close(&p);
    finish(&b, &w);
}

Test(cli, close_and_cancel_are_idempotent, .timeout = 120)
{
    struct broker b;
    struct test_worker *w;
    start(&b, &w);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];
    struct run r;
    CTL_ID(&b, g, "group", "open");
    CTL_ID(&b, j, "submit", g, "sleep", "--payload", "60000");
    wait_job_state(&b, g, j, CORRAL_STATE_RUNNING);

    CTL(&b, &r, "job", "cancel", j, "--reason", "first");
    EXPECT_STATUS(&r, 0, "job cancel");
    CTL(&b, &r, "job", "cancel", j, "--reason", "second");
    EXPECT_STATUS(&r, 0, "job cancel again");
    wait_job_state(&b, g, j, CORRAL_STATE_ENDED);

    CTL(&b, &r, "group", "close", g);
    EXPECT_STATUS(&r, 0, "group close");
    CTL(&b, &r, "group", "close", g);
    EXPECT_STATUS(&r, 0, "group close again");
    /* A job cancel is not a group error: the closed group ends SUCCEEDED. */
    CTL(&b, &r, "group", "wait", g, "--timeout", "10s");
    EXPECT_STATUS(&r, 0, "wait after a job cancel");

    /* Again on what has ended: succeeds and changes nothing. */
    CTL(&b, &r, "group", "close", g);
    EXPECT_STATUS(&r, 0, "close an ended group");
    CTL(&b, &r, "group", "cancel", g, "--reason", "too late");
    EXPECT_STATUS(&r, 0, "cancel an ended group");
    CTL(&b, &r, "job", "cancel", j, "--reason", "third");
    EXPECT_STATUS(&r, 0, "cancel an ended job");
    struct corral_node *t = tree_of(&b, g);
    cr_assert_eq(t->outcome, CORRAL_OUTCOME_SUCCEEDED);
    cr_assert(!t->cancel_called, "cancelling an ended group changed it");
    const struct corral_node *n = tree_find(t, j);
    cr_assert_eq(n->outcome, CORRAL_OUTCOME_CANCELLED);
    cr_assert_eq(n->cancel_source, CORRAL_SOURCE_EXPLICIT);
    cr_assert_str_eq(n->cancel_reason, "first", "the first cancel's reason is kept");
    corral_node_free(&t);

    /* Group cancel twice on a live group: the first reason is kept. */
    char g2[CORRAL_ID_MAX], j2[CORRAL_ID_MAX];
    CTL_ID(&b, g2, "group", "open");
    CTL_ID(&b, j2, "submit", g2, "sleep", "--payload", "60000");
    CTL(&b, &r, "group", "cancel", g2, "--reason", "one");
    EXPECT_STATUS(&r, 0, "group cancel");
    CTL(&b, &r, "group", "cancel", g2, "--reason", "two");
    EXPECT_STATUS(&r, 0, "group cancel again");
    CTL(&b, &r, "group", "wait", g2, "--timeout", "10s");
    EXPECT_STATUS(&r, 2, "wait on the cancelled group");
    CTL(&b, &r, "group", "cancel", g2);
    EXPECT_STATUS(&r, 0, "group cancel after the end");
    CTL(&b, &r, "group", "close", g2);
    EXPECT_STATUS(&r, 0, "group close after the end");
    t = tree_of(&b, g2);
    cr_assert_eq(t->outcome, CORRAL_OUTCOME_CANCELLED);
    cr_assert_eq(t->cancel_source, CORRAL_SOURCE_EXPLICIT);
    cr_assert_str_eq(t->cancel_reason, "one");
    corral_node_free(&t);
    finish(&b, &w);
}

/* ------------------------------------------------------------------ corralctl worker */

struct ctl_worker {
    pid_t pid;
    char log[600];
};

/* Starts `corralctl worker --kind sh --concurrency 3 -- sh` against b, output in a log. */
static void
ctl_worker_start(const struct broker *b, struct ctl_worker *cw)
{
    snprintf(cw->log, sizeof cw->log, "%s/ctl-worker.log", b->dir);
    const char *const argv[] = {ctl_path(), "worker", "--kind", "sh", "--concurrency",
                                "3",        "--",     "sh",     NULL};
    char **env = make_env(b->client_ep, b->worker_ep);
    cw->pid = fork();
    cr_assert_neq(cw->pid, -1);
    if (cw->pid == 0) {
        int fd = open(cw->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int in = open("/dev/null", O_RDONLY);
        if (fd < 0 || in < 0 || dup2(in, 0) < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0) {
            _exit(126);
        }
        execve(argv[0], (char *const *)argv, env);
        _exit(127);
    }
    free_env(env);
}

static void
log_tail(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        return;
    }
    static char buf[8192];
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, size > (long)sizeof buf - 1 ? size - (long)sizeof buf + 1 : 0, SEEK_SET);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    cr_log_error("tail of %s:\n%s", path, buf);
}

/* SIGTERM to the worker; asserts it exits 0 within 15 s. */
static void
ctl_worker_stop(struct ctl_worker *cw)
{
    cr_assert_eq(kill(cw->pid, SIGTERM), 0);
    int st = 0;
    uint64_t t0 = clock_mono_ms();
    pid_t got = 0;
    while ((got = waitpid(cw->pid, &st, WNOHANG)) == 0 && clock_mono_ms() - t0 < 15000) {
        sleep_ms(20);
    }
    if (got == 0) {
        kill(cw->pid, SIGKILL);
        waitpid(cw->pid, &st, 0);
        log_tail(cw->log);
        cr_assert_fail("corralctl worker did not exit within 15 s of SIGTERM");
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        log_tail(cw->log);
    }
    cr_assert(WIFEXITED(st), "corralctl worker died of signal %d", WTERMSIG(st));
    cr_assert_eq(WEXITSTATUS(st), 0, "corralctl worker exited %d after SIGTERM", WEXITSTATUS(st));
}

/* The README walk-through (acceptance 6), command for command:
 *
 *   corrald &
 *   corralctl worker --kind sh --concurrency 3 -- sh &
 *   G=$(corralctl group open)
 *   corralctl submit "$G" sh --payload 'sleep 30'
 *   corralctl submit "$G" sh --payload 'sleep 30'
 *   corralctl submit "$G" sh --payload 'sleep 0.2; echo oops >&2; exit 3'
 *   corralctl group wait "$G"; echo "exit status $?"      # 1, within a second
 */
Test(cli, readme_walkthrough, .timeout = 120)
{
    struct broker b;
    start(&b, NULL);
    struct ctl_worker cw;
    ctl_worker_start(&b, &cw);
    struct run r;

    /* Not in the README: make sure the worker is registered, so the timing below
     * measures the broker and not the worker's start-up. */
    char p[CORRAL_ID_MAX], pj[CORRAL_ID_MAX];
    CTL_ID(&b, p, "group", "open");
    CTL_ID(&b, pj, "submit", p, "sh", "--payload", "echo hi");
    CTL(&b, &r, "group", "close", p);
    EXPECT_STATUS(&r, 0, "close probe");
    CTL(&b, &r, "group", "wait", p, "--timeout", "20s");
    if (r.status != 0) {
        log_tail(cw.log);
    }
    EXPECT_STATUS(&r, 0, "probe job through corralctl worker");
    struct corral_node *t = tree_of(&b, p);
    const struct corral_node *n = tree_find(t, pj);
    cr_assert(n->result_len == 3 && memcmp(n->result, "hi\n", 3) == 0, "stdout becomes the result");
    corral_node_free(&t);

    char g[CORRAL_ID_MAX], s1[CORRAL_ID_MAX], s2[CORRAL_ID_MAX], f[CORRAL_ID_MAX];
    CTL_ID(&b, g, "group", "open");
    CTL_ID(&b, s1, "submit", g, "sh", "--payload", "sleep 30");
    CTL_ID(&b, s2, "submit", g, "sh", "--payload", "sleep 30");
    CTL_ID(&b, f, "submit", g, "sh", "--payload", "sleep 0.2; echo oops >&2; exit 3");
    uint64_t submitted = clock_mono_ms();
    CTL(&b, &r, "group", "wait", g);
    uint64_t ended = clock_mono_ms() - submitted;
    cr_log_info("walk-through: group wait returned %lu ms after the failing job was submitted "
                "(it fails ~200 ms after it starts)",
                (unsigned long)ended);
    cr_log_info("walk-through output:\n%s", r.out);
    if (r.status != 1) {
        log_tail(cw.log);
    }
    EXPECT_STATUS(&r, 1, "group wait on the walk-through group");
    cr_assert_lt(ended, 200 + 2000, "group wait returned %lu ms after the submit",
                 (unsigned long)ended);
    cr_assert_not_null(strstr(r.out, "FAILED"), "%s", r.out);
    cr_assert_geq(count_of(r.out, "CANCELLED"), 2, "both sleepers CANCELLED:\n%s", r.out);
    cr_assert_not_null(strstr(r.out, "ExitStatus"), "%s", r.out);
    cr_assert_not_null(strstr(r.out, "ExceptionGroup"), "%s", r.out);

    CTL(&b, &r, "group", "show", g, "--json");
    EXPECT_STATUS(&r, 0, "group show --json");
    static const char check[] = PY_SCHEMA
        "g, s1, s2, f = a\n"
        "assert t['outcome'] == 'FAILED' and t['cancel_source'] == 'sibling_failed', t\n"
        "assert t['cancel_reason'] == f and t['cancelled_caught'] is True, t\n"
        "for s in (s1, s2):\n"
        "    c = kid(t, s)\n"
        "    assert c['outcome'] == 'CANCELLED' and c['state'] == 'ENDED', c\n"
        "    assert c['cancel_source'] == 'sibling_failed' and c['cancel_reason'] == f, c\n"
        "c = kid(t, f)\n"
        "assert c['outcome'] == 'FAILED' and c['error']['type'] == 'ExitStatus', c\n"
        "assert '3' in c['error']['message'] and 'oops' in c['error']['message'], c\n"
        "e = t['error']\n"
        "assert e['type'] == 'ExceptionGroup' and e['group'] == g, e\n"
        "assert len(e['exceptions']) == 1 and e['exceptions'][0]['job'] == f, e\n"
        "assert e['exceptions'][0]['type'] == 'ExitStatus', e\n";
    cr_assert_eq(PY(r.out, check, g, s1, s2, f), 0);

    ctl_worker_stop(&cw);
    finish(&b, NULL);
}

/* DESIGN D9: how a command that ends after its job was cancelled is reported. */
Test(cli, worker_command_outcomes_d9, .timeout = 120)
{
    struct broker b;
    start(&b, NULL);
    struct ctl_worker cw;
    ctl_worker_start(&b, &cw);
    struct run r;
    char payload[1024], ready[600];

    struct {
        const char *before, *after; /* the script around the ready file's path */
        bool cancel;
        int wait_status;
        enum corral_outcome outcome;
    } cases[] = {
        /* traps SIGTERM and exits 0: finished anyway, keeps its result */
        {"trap 'echo cleaned; exit 0' TERM; touch ", "; sleep 30 & wait", true, 0,
         CORRAL_OUTCOME_SUCCEEDED},
        /* killed by the signal: the cancel is acknowledged */
        {"touch ", "; sleep 30", true, 0, CORRAL_OUTCOME_CANCELLED},
        /* another exit status after the cancel: a failure */
        {"trap 'exit 5' TERM; touch ", "; sleep 30 & wait", true, 1, CORRAL_OUTCOME_FAILED},
        /* death by a signal before any cancel: a failure */
        {"touch ", "; kill -KILL $$", false, 1, CORRAL_OUTCOME_FAILED},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];
        snprintf(ready, sizeof ready, "%s/ready-%zu", b.dir, i);
        snprintf(payload, sizeof payload, "%s%s%s", cases[i].before, ready, cases[i].after);
        CTL_ID(&b, g, "group", "open");
        CTL_ID(&b, j, "submit", g, "sh", "--payload", payload);
        if (!eventually(file_exists, ready, 20000)) {
            log_tail(cw.log);
            cr_assert_fail("case %zu: the command never started", i);
        }
        if (cases[i].cancel) {
            sleep_ms(100); /* the shell is now in `wait` or `sleep` */
            CTL(&b, &r, "job", "cancel", j, "--reason", "d9");
            EXPECT_STATUS(&r, 0, "job cancel");
        }
        CTL(&b, &r, "group", "close", g);
        EXPECT_STATUS(&r, 0, "close");
        CTL(&b, &r, "group", "wait", g, "--timeout", "20s");
        if (r.status != cases[i].wait_status) {
            log_tail(cw.log);
        }
        cr_assert_eq(r.status, cases[i].wait_status, "case %zu (%s): wait exit %d\n%s", i, payload,
                     r.status, r.out);
        struct corral_node *t = tree_of(&b, g);
        const struct corral_node *n = tree_find(t, j);
        cr_assert_not_null(n);
        cr_assert_eq(n->outcome, cases[i].outcome, "case %zu (%s): outcome %d", i, payload,
                     n->outcome);
        cr_assert_eq(n->cancel_called, cases[i].cancel, "case %zu", i);
        if (i == 0) {
            cr_assert(n->result_len == 8 && memcmp(n->result, "cleaned\n", 8) == 0,
                      "the result of a command that finished after cancel is kept");
        }
        if (i == 2) {
            cr_assert_str_eq(n->error->type, "ExitStatus");
            cr_assert_not_null(strstr(n->error->message, "5"), "%s", n->error->message);
        }
        if (i == 3) {
            cr_log_info("killed before any cancel: %s: %s", n->error->type, n->error->message);
        }
        corral_node_free(&t);
    }
    ctl_worker_stop(&cw);
    finish(&b, NULL);
}
