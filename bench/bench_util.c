/* bench_util.c - a private corrald, no-op workers and /proc readers for the benchmarks;
 * see bench_util.h. */
#include "bench_util.h"

#include "clock.h"
#include "corral.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define READY_TIMEOUT_MS 10000 /* corrald must log event=ready within this */
#define STOP_TIMEOUT_MS  20000 /* corrald must exit within this after SIGTERM */
#define WORKER_POLL_MS   50    /* how often a worker thread looks at its stop flag */
#define EXTRA_MAX        16    /* struct broker_conf.extra */

extern char **environ;

volatile sig_atomic_t bench_interrupted;
atomic_bool bench_worker_failed;

/* The name messages start with. */
#define PROG program_invocation_short_name

static void
on_signal(int sig)
{
    (void)sig;
    bench_interrupted = 1;
}

void
bench_catch_signals(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

bool
parse_count(const char *s, long min, long max, long *out)
{
    char *end = NULL;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

int
default_corrald(char *out, size_t outlen)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    char *slash;

    if (n <= 0)
        return -1;
    exe[n] = '\0';
    slash = strrchr(exe, '/');
    if (slash == NULL)
        return -1;
    *slash = '\0';
    if ((size_t)snprintf(out, outlen, "%s/../broker/corrald", exe) >= outlen)
        return -1;
    return 0;
}

void
sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !bench_interrupted)
        ;
}

double
timeval_s(const struct timeval *tv)
{
    return (double)tv->tv_sec + (double)tv->tv_usec / 1e6;
}

long
proc_status_kib(pid_t pid, const char *field)
{
    char path[64], line[256];
    size_t flen = strlen(field);
    long kib = -1;
    FILE *f;

    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    f = fopen(path, "r");
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, field, flen) == 0 && line[flen] == ':') {
            if (sscanf(line + flen + 1, " %ld kB", &kib) != 1)
                kib = -1;
            break;
        }
    fclose(f);
    return kib;
}

long
proc_rss_kib(pid_t pid)
{
    return proc_status_kib(pid, "VmRSS");
}

long long
file_size(const char *path)
{
    struct stat st;

    if (stat(path, &st) == 0)
        return (long long)st.st_size;
    return errno == ENOENT ? 0 : -1;
}

/* ------------------------------------------------------------------ corrald */

static int
rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

/* Two distinct free TCP ports on 127.0.0.1 (both held open while choosing). */
static int
free_ports(int ports[2])
{
    int fds[2] = {-1, -1}, rc = -1;

    for (int i = 0; i < 2; i++) {
        struct sockaddr_in sa;
        socklen_t len = sizeof sa;

        memset(&sa, 0, sizeof sa);
        sa.sin_family = AF_INET;
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fds[i] < 0 || bind(fds[i], (struct sockaddr *)&sa, sizeof sa) != 0 ||
            getsockname(fds[i], (struct sockaddr *)&sa, &len) != 0)
            goto out;
        ports[i] = ntohs(sa.sin_port);
    }
    rc = 0;
out:
    for (int i = 0; i < 2; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    return rc;
}

/* Reads the whole file at path into a NUL-terminated buffer, returned owned (or NULL). */
static char *
read_whole_file(const char *path)
{
    FILE *f = fopen(path, "r");
    char *buf = NULL;
    size_t len = 0, cap = 0;

    if (f == NULL)
        return NULL;
    for (;;) {
        if (cap - len < 4096) {
            char *nb = realloc(buf, cap + 65536);
            if (nb == NULL) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
            cap += 65536;
        }
        size_t n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
        if (n == 0)
            break;
    }
    fclose(f);
    buf[len] = '\0';
    return buf;
}

void
broker_dump_log(const struct broker *b)
{
    char *log = read_whole_file(b->log_path);
    const char *p;
    int lines = 0;

    if (log == NULL)
        return;
    p = log + strlen(log);
    while (p > log && lines <= 10) {
        p--;
        if (*p == '\n')
            lines++;
    }
    fprintf(stderr, "%s: corrald's log ends with:\n%s", PROG, p == log ? p : p + 1);
    free(log);
}

void
broker_cleanup(struct broker *b)
{
    if (b->pid > 0) {
        kill(b->pid, SIGKILL);
        waitpid(b->pid, NULL, 0);
        b->pid = 0;
    }
    if (b->dir[0] != '\0') {
        if (b->keep)
            fprintf(stderr, "%s: kept %s\n", PROG, b->dir);
        else
            nftw(b->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        b->dir[0] = '\0';
    }
}

/* A copy of the environment without CORRAL_* variables, so only our flags configure
 * corrald. Returned owned (the strings are borrowed from environ). */
static char **
clean_environ(void)
{
    size_t n = 0, k = 0;
    char **env;

    while (environ[n] != NULL)
        n++;
    env = calloc(n + 1, sizeof *env);
    if (env == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "CORRAL_", 7) != 0)
            env[k++] = environ[i];
    env[k] = NULL;
    return env;
}

/* Whether corrald's log holds what. */
static bool
broker_logged(const struct broker *b, const char *what)
{
    char *log = read_whole_file(b->log_path);
    bool found = log != NULL && strstr(log, what) != NULL;

    free(log);
    return found;
}

/* Chooses the endpoints of b: ipc:// sockets in its directory, or free TCP ports. */
static int
broker_endpoints(struct broker *b, bool tcp)
{
    if (tcp) {
        int ports[2];
        if (free_ports(ports) != 0) {
            fprintf(stderr, "%s: cannot find free ports: %s\n", PROG, strerror(errno));
            return -1;
        }
        snprintf(b->client_ep, sizeof b->client_ep, "tcp://127.0.0.1:%d", ports[0]);
        snprintf(b->worker_ep, sizeof b->worker_ep, "tcp://127.0.0.1:%d", ports[1]);
        return 0;
    }
    /* sun_path holds 108 bytes. */
    if (strlen(b->dir) + sizeof "/client.sock" > 100) {
        fprintf(stderr, "%s: %s is too long for an ipc:// endpoint; set TMPDIR or use --tcp\n",
                PROG, b->dir);
        return -1;
    }
    snprintf(b->client_ep, sizeof b->client_ep, "ipc://%s/client.sock", b->dir);
    snprintf(b->worker_ep, sizeof b->worker_ep, "ipc://%s/worker.sock", b->dir);
    return 0;
}

/* Forks and execs corrald with argv and env, its output into logfd. */
static pid_t
broker_spawn(char *const argv[], char *const env[], int logfd)
{
    pid_t parent = getpid();
    pid_t pid = fork();

    if (pid != 0)
        return pid;
    /* Own process group: a ^C on the terminal reaches the bench, which stops corrald
     * itself; and corrald dies with the bench whatever happens to it. */
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(127);
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0)
        dup2(devnull, 0);
    dup2(logfd, 1);
    dup2(logfd, 2);
    execve(argv[0], argv, env);
    _exit(127);
}

int
broker_start(struct broker *b, const struct broker_conf *conf)
{
    const char *tmp = getenv("TMPDIR");
    char corrald[PATH_MAX];
    char *argv[16 + EXTRA_MAX];
    size_t argc = 0;
    char **env = NULL;
    int logfd = -1, rc = -1;

    memset(b, 0, sizeof *b);
    b->keep = conf->keep;
    if (tmp == NULL || tmp[0] == '\0')
        tmp = "/tmp";
    if ((size_t)snprintf(b->dir, sizeof b->dir, "%s/%s-XXXXXX", tmp, PROG) >= sizeof b->dir ||
        mkdtemp(b->dir) == NULL) {
        fprintf(stderr, "%s: cannot create a temporary directory in %s: %s\n", PROG, tmp,
                strerror(errno));
        b->dir[0] = '\0';
        return -1;
    }
    snprintf(b->data_dir, sizeof b->data_dir, "%s/data", b->dir);
    snprintf(b->log_path, sizeof b->log_path, "%s/corrald.log", b->dir);
    if (broker_endpoints(b, conf->tcp) != 0)
        goto out;
    logfd = open(b->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    env = clean_environ();
    if (logfd < 0 || env == NULL) {
        fprintf(stderr, "%s: cannot set up %s: %s\n", PROG, b->log_path, strerror(errno));
        goto out;
    }
    snprintf(corrald, sizeof corrald, "%s", conf->corrald);
    argv[argc++] = corrald;
    argv[argc++] = "--client-endpoint";
    argv[argc++] = b->client_ep;
    argv[argc++] = "--worker-endpoint";
    argv[argc++] = b->worker_ep;
    argv[argc++] = "--data-dir";
    argv[argc++] = b->data_dir;
    argv[argc++] = "--sync";
    argv[argc++] = (char *)conf->sync;
    argv[argc++] = "--log-level";
    argv[argc++] = (char *)(conf->log_level != NULL ? conf->log_level : "info");
    argv[argc++] = "--log-format";
    argv[argc++] = "logfmt";
    for (size_t i = 0; conf->extra != NULL && conf->extra[i] != NULL; i++) {
        if (i == EXTRA_MAX) {
            fprintf(stderr, "%s: too many arguments for corrald\n", PROG);
            goto out;
        }
        argv[argc++] = (char *)conf->extra[i];
    }
    argv[argc] = NULL;
    pid_t pid = broker_spawn(argv, env, logfd);
    if (pid < 0) {
        fprintf(stderr, "%s: fork: %s\n", PROG, strerror(errno));
        goto out;
    }
    b->pid = pid;
    uint64_t deadline = clock_mono_ms() + READY_TIMEOUT_MS;
    for (;;) {
        int status;

        if (broker_logged(b, "event=ready")) {
            rc = 0;
            break;
        }
        if (waitpid(pid, &status, WNOHANG) == pid) {
            b->pid = 0;
            fprintf(stderr, "%s: corrald exited during start-up (status %d)\n", PROG,
                    WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
            broker_dump_log(b);
            break;
        }
        if (clock_mono_ms() > deadline || bench_interrupted) {
            fprintf(stderr, "%s: corrald not ready within %d ms\n", PROG, READY_TIMEOUT_MS);
            broker_dump_log(b);
            break;
        }
        sleep_ms(2);
    }
out:
    if (logfd >= 0)
        close(logfd);
    free(env);
    if (rc != 0)
        broker_cleanup(b);
    return rc;
}

/* Reads the value of key (e.g. "commits=") in line; false when absent. */
static bool
logfmt_ull(const char *line, const char *key, unsigned long long *out)
{
    size_t klen = strlen(key);

    for (const char *p = line; (p = strstr(p, key)) != NULL; p += klen) {
        if (p != line && p[-1] != ' ')
            continue;
        char *end = NULL;
        errno = 0;
        unsigned long long v = strtoull(p + klen, &end, 10);
        if (errno != 0 || end == p + klen || (*end != ' ' && *end != '\n' && *end != '\0'))
            return false;
        *out = v;
        return true;
    }
    return false;
}

/* Reads corrald's last event=shutdown line into *st. */
static int
read_shutdown_line(const struct broker *b, struct broker_stats *st)
{
    char *log = read_whole_file(b->log_path);
    const char *line = NULL;
    char buf[1024];
    int rc = -1;

    for (const char *p = log; p != NULL && (p = strstr(p, "event=shutdown")) != NULL; p++)
        line = p;
    if (line == NULL) {
        fprintf(stderr, "%s: corrald logged no event=shutdown line\n", PROG);
        goto out;
    }
    while (line > log && line[-1] != '\n')
        line--;
    const char *eol = strchr(line, '\n');
    size_t len = eol != NULL ? (size_t)(eol - line) : strlen(line);
    if (len >= sizeof buf)
        len = sizeof buf - 1;
    memcpy(buf, line, len);
    buf[len] = '\0';
    if (!logfmt_ull(buf, "turns=", &st->turns) || !logfmt_ull(buf, "commits=", &st->commits) ||
        !logfmt_ull(buf, "rows=", &st->rows) || !logfmt_ull(buf, "malformed=", &st->malformed)) {
        fprintf(stderr, "%s: cannot read corrald's shutdown line: %s\n", PROG, buf);
        goto out;
    }
    rc = 0;
out:
    free(log);
    return rc;
}

int
broker_stop(struct broker *b, struct broker_stats *st)
{
    int status = 0;
    uint64_t deadline = clock_mono_ms() + STOP_TIMEOUT_MS;

    if (kill(b->pid, SIGTERM) != 0) {
        fprintf(stderr, "%s: kill(corrald): %s\n", PROG, strerror(errno));
        return -1;
    }
    for (;;) {
        struct rusage ru;
        pid_t r = wait4(b->pid, &status, WNOHANG, &ru);
        if (r == b->pid) {
            st->cpu_s = timeval_s(&ru.ru_utime) + timeval_s(&ru.ru_stime);
            break;
        }
        if (r < 0 && errno != EINTR) {
            fprintf(stderr, "%s: waitpid(corrald): %s\n", PROG, strerror(errno));
            return -1;
        }
        if (clock_mono_ms() > deadline) {
            fprintf(stderr, "%s: corrald did not exit within %d ms of SIGTERM\n", PROG,
                    STOP_TIMEOUT_MS);
            broker_dump_log(b);
            return -1;
        }
        sleep_ms(2);
    }
    b->pid = 0;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        if (WIFEXITED(status))
            fprintf(stderr, "%s: corrald exited with status %d\n", PROG, WEXITSTATUS(status));
        else
            fprintf(stderr, "%s: corrald killed by signal %d\n", PROG, WTERMSIG(status));
        broker_dump_log(b);
        return -1;
    }
    return read_shutdown_line(b, st);
}

/* ------------------------------------------------------------------ workers */

struct worker_thread {
    struct pool *pool;
    struct corral_worker *w;
    pthread_t thread;
    bool thread_started;
    unsigned long done;
    int err; /* first failure, CORRAL_OK if none */
};

/* Takes jobs and reports each done with the pool's result, as fast as it can. */
static void *
worker_main(void *arg)
{
    struct worker_thread *t = arg;
    struct pool *p = t->pool;

    while (!atomic_load_explicit(&p->stop, memory_order_relaxed)) {
        struct corral_job *job = NULL;
        int rc = corral_worker_next(t->w, WORKER_POLL_MS, &job);

        if (rc == CORRAL_ETIMEDOUT)
            continue;
        if (rc == CORRAL_OK) {
            rc = corral_job_done(job, p->result, p->result_len);
            corral_job_free(&job);
        }
        if (rc != CORRAL_OK) {
            t->err = rc;
            atomic_store(&bench_worker_failed, true);
            break;
        }
        t->done++;
    }
    return NULL;
}

int
pool_stop(struct pool *p, unsigned long *done)
{
    int rc = 0;

    if (p->t == NULL)
        return 0;
    atomic_store(&p->stop, true);
    for (int i = 0; i < p->n; i++) {
        struct worker_thread *t = &p->t[i];

        if (t->thread_started)
            pthread_join(t->thread, NULL);
        if (t->err != CORRAL_OK) {
            fprintf(stderr, "%s: worker %d: %s\n", PROG, i, corral_strerror(t->err));
            rc = -1;
        }
        if (done != NULL)
            *done += t->done;
        corral_worker_free(&t->w);
    }
    free(p->t);
    p->t = NULL;
    return rc;
}

int
pool_start(struct pool *p, const char *endpoint, int workers, unsigned concurrency,
           const char *kind, const void *result, size_t len)
{
    const char *const kinds[] = {kind};

    p->n = workers;
    p->result = result;
    p->result_len = len;
    atomic_init(&p->stop, false);
    p->t = calloc((size_t)p->n, sizeof *p->t);
    if (p->t == NULL)
        return -1;
    for (int i = 0; i < p->n; i++) {
        struct worker_thread *t = &p->t[i];
        int rc = corral_worker_new(&t->w, endpoint, kinds, 1, concurrency);

        t->pool = p;
        if (rc != CORRAL_OK) {
            fprintf(stderr, "%s: corral_worker_new: %s\n", PROG, corral_strerror(rc));
            pool_stop(p, NULL);
            return -1;
        }
        if (pthread_create(&t->thread, NULL, worker_main, t) != 0) {
            fprintf(stderr, "%s: pthread_create failed\n", PROG);
            pool_stop(p, NULL);
            return -1;
        }
        t->thread_started = true;
    }
    return 0;
}
