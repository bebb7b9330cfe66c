/* test_daemon.c - corrald as a well-behaved daemon: every flag has a CORRAL_* variable
 * that takes effect, bad values are refused at start with exit status 2 and a message
 * naming the flag or variable, and SIGTERM/SIGINT stop it gracefully (exit 0 within 5 s
 * under load, nothing acknowledged lost, workers told with Shutdown) while a second
 * signal exits at once. The option list is read from `corrald --help`, never copied. */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "clock.h"
#include "harness.h"

#define WAIT_MS 10000

TestSuite(daemon, .fini = harness_teardown);

/* ------------------------------------------------------------------ corrald --help */

struct opt {
    char flag[48];
    char metavar[24];
    char env[64];
    char def[128];
};

/* Reads the options from `corrald --help`: lines "  --flag METAVAR  CORRAL_X  default D". */
static size_t
help_options(struct opt *out, size_t max)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "%s --help", getenv("CORRALD"));
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    char line[512];
    size_t n = 0;
    while (fgets(line, sizeof line, p) && n < max) {
        struct opt o;
        if (sscanf(line, "  --%47s %23s %63s default %127s", o.flag, o.metavar, o.env, o.def) ==
                4 &&
            strncmp(o.env, "CORRAL_", 7) == 0)
            out[n++] = o;
    }
    cr_assert_eq(pclose(p), 0, "corrald --help must exit 0");
    return n;
}

/* ------------------------------------------------------------------ a bare corrald */

struct daemon {
    pid_t pid;
    char dir[128];
    char log[200];
};

/* Starts corrald in a fresh temp dir with only environment variables: ipc endpoints and
 * a data dir inside that dir, then name=value (NULL: none), then the extra arguments. */
static void
daemon_spawn(struct daemon *d, const char *name, const char *value, const char *const *args)
{
    snprintf(d->dir, sizeof d->dir, "/tmp/corral-daemon-XXXXXX");
    cr_assert_not_null(mkdtemp(d->dir));
    snprintf(d->log, sizeof d->log, "%s/log", d->dir);
    char c[200], w[200], data[200];
    snprintf(c, sizeof c, "ipc://%s/c.sock", d->dir);
    snprintf(w, sizeof w, "ipc://%s/w.sock", d->dir);
    snprintf(data, sizeof data, "%s/data", d->dir);
    d->pid = fork();
    cr_assert(d->pid >= 0);
    if (d->pid == 0) {
        int fd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(fd, 2);
        setenv("CORRAL_CLIENT_ENDPOINT", c, 1);
        setenv("CORRAL_WORKER_ENDPOINT", w, 1);
        setenv("CORRAL_DATA_DIR", data, 1);
        setenv("CORRAL_SYNC", "normal", 1);
        if (name)
            setenv(name, value, 1);
        const char *argv[16] = {getenv("CORRALD")};
        for (size_t i = 0; args && args[i] && i < 14; i++)
            argv[i + 1] = args[i];
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
}

static void
read_log(const struct daemon *d, char *buf, size_t len)
{
    FILE *f = fopen(d->log, "r");
    size_t n = f ? fread(buf, 1, len - 1, f) : 0;
    buf[n] = '\0';
    if (f)
        fclose(f);
}

/* Waits until the log holds `needle` or the process exits; true when found. */
static bool
daemon_wait_log(struct daemon *d, const char *needle, int timeout_ms)
{
    static char buf[65536];
    uint64_t end = clock_mono_ms() + (uint64_t)timeout_ms;
    while (clock_mono_ms() < end) {
        read_log(d, buf, sizeof buf);
        if (strstr(buf, needle))
            return true;
        int st;
        if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
            d->pid = 0;
            read_log(d, buf, sizeof buf);
            return strstr(buf, needle) != NULL;
        }
        usleep(5000);
    }
    return false;
}

/* Waits for the process to exit; its wait status, or -1 on timeout (then killed). */
static int
daemon_wait_exit(struct daemon *d, int timeout_ms)
{
    int st = 0;
    uint64_t end = clock_mono_ms() + (uint64_t)timeout_ms;
    while (clock_mono_ms() < end) {
        pid_t r = waitpid(d->pid, &st, WNOHANG);
        if (r == d->pid) {
            d->pid = 0;
            return st;
        }
        usleep(2000);
    }
    kill(d->pid, SIGKILL);
    waitpid(d->pid, NULL, 0);
    d->pid = 0;
    return -1;
}

static void
daemon_cleanup(struct daemon *d)
{
    if (d->pid > 0) {
        kill(d->pid, SIGKILL);
        waitpid(d->pid, NULL, 0);
    }
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d->dir);
    cr_assert_eq(system(cmd), 0);
}

/* A valid value other than the default for values shaped like metavar, for option o in
 * a daemon whose dir is dir; and what the `config` log line must then show. */
static void
good_value(const struct opt *o, const char *dir, char *value, size_t vlen, char *shown, size_t slen)
{
    if (strcmp(o->metavar, "ENDPOINT") == 0)
        snprintf(value, vlen, "ipc://%s/other-%s.sock", dir, o->flag);
    else if (strcmp(o->metavar, "PATH") == 0)
        snprintf(value, vlen, "%s/other-data", dir);
    else if (strcmp(o->metavar, "DURATION") == 0)
        snprintf(value, vlen, "1234ms");
    else if (strcmp(o->metavar, "SIZE") == 0)
        snprintf(value, vlen, "3145728");
    else if (strcmp(o->metavar, "COUNT") == 0)
        snprintf(value, vlen, "7");
    else if (strcmp(o->metavar, "full|normal") == 0)
        snprintf(value, vlen, strcmp(o->def, "full") == 0 ? "normal" : "full");
    else if (strcmp(o->metavar, "LEVEL") == 0)
        snprintf(value, vlen, "debug");
    else if (strcmp(o->metavar, "logfmt|json") == 0)
        snprintf(value, vlen, "json");
    else
        cr_assert_fail("--%s: no example value for %s: add one to this test", o->flag, o->metavar);
    snprintf(shown, slen, "%s=%s", o->flag, value);
}

static const char *
bad_value(const struct opt *o)
{
    static const struct {
        const char *metavar, *bad;
    } table[] = {
        {"ENDPOINT", "nowhere"}, {"PATH", ""},           {"DURATION", "soon"},
        {"SIZE", "big"},         {"COUNT", "-1"},        {"full|normal", "sometimes"},
        {"LEVEL", "loud"},       {"logfmt|json", "xml"},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(o->metavar, table[i].metavar) == 0)
            return table[i].bad;
    cr_assert_fail("--%s: no bad value for %s: add one to this test", o->flag, o->metavar);
    return NULL;
}

/* ------------------------------------------------------------------ configuration */

Test(daemon, help_lists_every_option_with_its_variable_and_default)
{
    struct opt opts[64];
    size_t n = help_options(opts, 64);
    cr_assert_geq(n, 16, "corrald --help lists %zu options", n);
    for (size_t i = 0; i < n; i++) {
        char want[64] = "CORRAL_";
        for (size_t k = 0; opts[i].flag[k] && k + 8 < sizeof want; k++)
            want[7 + k] = opts[i].flag[k] == '-' ? '_' : (char)(opts[i].flag[k] - 'a' + 'A');
        cr_assert_str_eq(opts[i].env, want, "--%s", opts[i].flag);
        cr_assert(opts[i].def[0] != '\0', "--%s has a documented default", opts[i].flag);
    }
}

/* Each variable alone, on a real corrald: it starts, and the settings it logs at start
 * show the variable's value. */
Test(daemon, every_corral_variable_takes_effect, .timeout = 120)
{
    struct opt opts[64];
    size_t n = help_options(opts, 64);
    for (size_t i = 0; i < n; i++) {
        struct daemon d;
        char value[256], shown[300];
        /* Endpoints and paths given to the variable live in a dir of their own. */
        char tmpl[] = "/tmp/corral-daemon-val-XXXXXX";
        cr_assert_not_null(mkdtemp(tmpl));
        good_value(&opts[i], tmpl, value, sizeof value, shown, sizeof shown);
        daemon_spawn(&d, opts[i].env, value, NULL);
        bool json = strcmp(opts[i].metavar, "logfmt|json") == 0;
        const char *ready = json ? "\"event\":\"ready\"" : "event=ready";
        bool up = daemon_wait_log(&d, ready, WAIT_MS);
        static char log[65536];
        read_log(&d, log, sizeof log);
        cr_assert(up, "%s=%s: corrald did not become ready:\n%s", opts[i].env, value, log);
        if (json) {
            char want[300];
            snprintf(want, sizeof want, "\"%s\":\"%s\"", opts[i].flag, value);
            cr_assert(strstr(log, want), "%s=%s: not in the config line:\n%s", opts[i].env, value,
                      log);
        } else {
            cr_assert(strstr(log, shown), "%s=%s: '%s' not in the config line:\n%s", opts[i].env,
                      value, shown, log);
        }
        kill(d.pid, SIGTERM);
        int st = daemon_wait_exit(&d, WAIT_MS);
        cr_assert(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: exit status %d",
                  opts[i].env, st);
        daemon_cleanup(&d);
        char cmd[200];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpl);
        cr_assert_eq(system(cmd), 0);
    }
}

/* Each variable and each flag with a bad value: exit 2 at once, and stderr names it. */
Test(daemon, bad_values_exit_2_naming_the_flag_or_variable, .timeout = 120)
{
    struct opt opts[64];
    size_t n = help_options(opts, 64);
    static char log[65536];
    for (size_t i = 0; i < n; i++) {
        const char *bad = bad_value(&opts[i]);
        struct daemon d;
        daemon_spawn(&d, opts[i].env, bad, NULL);
        int st = daemon_wait_exit(&d, WAIT_MS);
        read_log(&d, log, sizeof log);
        cr_assert(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 2,
                  "%s='%s': exit status %d, expected 2:\n%s", opts[i].env, bad, st, log);
        cr_assert(strstr(log, opts[i].env) && strstr(log, "invalid"),
                  "%s='%s': the message must name it:\n%s", opts[i].env, bad, log);
        daemon_cleanup(&d);

        char flag[sizeof opts[i].flag + 2] = "--";
        memcpy(flag + 2, opts[i].flag, sizeof opts[i].flag);
        daemon_spawn(&d, NULL, NULL, (const char *const[]){flag, bad, NULL});
        st = daemon_wait_exit(&d, WAIT_MS);
        read_log(&d, log, sizeof log);
        cr_assert(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 2,
                  "%s '%s': exit status %d, expected 2:\n%s", flag, bad, st, log);
        cr_assert(strstr(log, flag), "%s '%s': the message must name it:\n%s", flag, bad, log);
        daemon_cleanup(&d);
    }
    /* Not an option at all, and an option without its value. */
    struct daemon d;
    daemon_spawn(&d, NULL, NULL, (const char *const[]){"--no-such-flag", "1", NULL});
    int st = daemon_wait_exit(&d, WAIT_MS);
    cr_assert(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 2);
    daemon_cleanup(&d);
    daemon_spawn(&d, NULL, NULL, (const char *const[]){"--heartbeat-timeout", NULL});
    st = daemon_wait_exit(&d, WAIT_MS);
    cr_assert(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 2);
    daemon_cleanup(&d);
}

/* ------------------------------------------------------------------ signals */

/* Load: client threads submitting jobs as fast as the broker answers, recording every
 * job whose submission was acknowledged. */
#define LOADERS   3
#define MAX_ACKED 200000

struct loader {
    const struct broker *b;
    char group[CORRAL_ID_MAX];
    char (*acked)[CORRAL_ID_MAX];
    size_t nacked;
    atomic_bool *stop;
    pthread_t thread;
};

static void *
load(void *arg)
{
    struct loader *l = arg;
    struct corral_client *c = NULL;
    if (corral_client_new(&c, l->b->client_ep, 2000) != CORRAL_OK)
        return NULL;
    while (!atomic_load(l->stop) && l->nacked < MAX_ACKED / LOADERS) {
        char id[CORRAL_ID_MAX];
        const char *kind = l->nacked % 2 ? "echo" : "nobody";
        if (corral_submit(c, l->group, kind, "x", 1, id, NULL) != CORRAL_OK)
            break; /* the broker stopped: an unanswered submission is not acknowledged */
        snprintf(l->acked[l->nacked++], CORRAL_ID_MAX, "%s", id);
    }
    corral_client_free(&c);
    return NULL;
}

/* Acceptance 2: SIGTERM under load exits 0 within 5 s; after a restart every
 * acknowledged job is there, and the worker, told with Shutdown, carries on with the new
 * broker without a failure of its own. */
Test(daemon, sigterm_under_load_exits_0_within_5s_losing_nothing, .timeout = 120)
{
    struct broker b;
    broker_start(&b, (const char *const[]){"--sync", "full", "--max-queued", "0",
                                           "--max-queued-per-kind", "0", NULL});
    struct test_worker *w = test_worker_start(&b, 8);
    struct corral_client *c = client_connect(&b);
    struct raw_peer rw;
    raw_worker_register(&rw, &b, (const char *const[]){"rawkind"}, 1, 1);
    static char acked[MAX_ACKED][CORRAL_ID_MAX];
    atomic_bool stop = false;
    struct loader ls[LOADERS];
    for (int i = 0; i < LOADERS; i++) {
        ls[i] = (struct loader){.b = &b, .acked = acked + i * (MAX_ACKED / LOADERS), .stop = &stop};
        open_root(c, ls[i].group);
        cr_assert_eq(pthread_create(&ls[i].thread, NULL, load, &ls[i]), 0);
    }
    usleep(700 * 1000);
    uint64_t took = 0;
    int st = broker_signal_wait(&b, SIGTERM, 5000, &took);
    atomic_store(&stop, true);
    for (int i = 0; i < LOADERS; i++)
        pthread_join(ls[i].thread, NULL);
    cr_assert(st >= 0, "corrald did not exit within 5 s of SIGTERM");
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit status %d after SIGTERM", st);
    size_t total = 0;
    for (int i = 0; i < LOADERS; i++)
        total += ls[i].nacked;
    cr_assert_gt(total, 100, "the load ran (%zu acknowledged)", total);
    cr_log_info("SIGTERM under load: %zu jobs acknowledged, exited 0 in %llu ms", total,
                (unsigned long long)took);

    /* The raw worker was told the broker stops. */
    Corral__V1__Envelope *sh =
        raw_worker_expect(&rw, CORRAL__V1__ENVELOPE__BODY_SHUTDOWN, 2000, false);
    cr_assert_not_null(sh, "no Shutdown reached the worker");
    corral__v1__envelope__free_unpacked(sh, NULL);
    raw_close(&rw);

    corral_client_free(&c);
    broker_restart(&b);
    c = client_connect(&b);
    for (int i = 0; i < LOADERS; i++) {
        struct corral_node *t = get_tree(c, ls[i].group);
        for (size_t k = 0; k < ls[i].nacked; k++)
            cr_assert_not_null(tree_find(t, ls[i].acked[k]), "acknowledged job %s lost",
                               ls[i].acked[k]);
        /* At most the one submission in flight was applied without its reply. */
        cr_assert(t->nchildren >= ls[i].nacked && t->nchildren <= ls[i].nacked + 1,
                  "%zu jobs stored, %zu acknowledged", t->nchildren, ls[i].nacked);
        corral_node_free(&t);
    }
    /* The worker reconnected by itself and runs jobs for the new broker. */
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];
    open_root(c, g);
    submit(c, g, "echo", "after", j);
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    node_expect_result(t, j, "after");
    corral_node_free(&t);
    expect_no_worker_problem(w);
    test_worker_stop(&w);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* A second signal during the shutdown exits at once (status 128 + signal), and the
 * store, consistent at every commit, opens again with everything acknowledged. SIGINT
 * and SIGTERM are made pending together while corrald is stopped: the loop takes the
 * first, the second is left for the shutdown. */
Test(daemon, a_second_signal_exits_at_once, .timeout = 60)
{
    struct broker b;
    broker_start(&b, (const char *const[]){NULL});
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], j[CORRAL_ID_MAX];
    open_root(c, g);
    submit(c, g, "nobody", "kept", j);
    corral_client_free(&c);
    cr_assert_eq(kill(b.pid, SIGSTOP), 0);
    cr_assert_eq(kill(b.pid, SIGINT), 0);
    cr_assert_eq(kill(b.pid, SIGTERM), 0);
    uint64_t took = 0;
    int st = broker_signal_wait(&b, SIGCONT, 5000, &took);
    static char log[65536];
    FILE *f = fopen(b.log_path, "r");
    size_t n = f ? fread(log, 1, sizeof log - 1, f) : 0;
    log[n] = '\0';
    if (f)
        fclose(f);
    cr_assert(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 128 + SIGTERM,
              "exit status %d, expected %d:\n%s", st, 128 + SIGTERM, log);
    cr_assert(strstr(log, "second signal"), "%s", log);
    cr_log_info("second signal: exited in %llu ms", (unsigned long long)took);

    broker_restart(&b);
    c = client_connect(&b);
    struct corral_node *t = get_tree(c, g);
    cr_assert_not_null(tree_find(t, j), "the acknowledged job is kept");
    corral_node_free(&t);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}
