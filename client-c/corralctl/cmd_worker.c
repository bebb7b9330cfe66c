/* cmd_worker.c - "corralctl worker": one single-threaded poll() loop that takes jobs from
 * libcorral, runs the command once per job in its own process group, feeds the payload to
 * its stdin, captures its stdout (the result) and the tail of its stderr, sends the first
 * line it writes to file descriptor 3 as started(value) (s6-style readiness, S9), relays
 * cancels as SIGTERM then SIGKILL, and reports each job's end (DESIGN D9; exit 75,
 * EX_TEMPFAIL, is a failure to retry, S13).
 *
 * The loop watches: the worker's fd (only while a slot is free), each child's stdin,
 * stdout, stderr and readiness pipes, each running job's cancel fd, and a signalfd for
 * SIGCHLD, SIGTERM and SIGINT. started() is the one call that waits for the broker (a
 * round trip, at most libcorral's 5 s when the broker does not answer): the loop waits
 * with it, so that the readiness of a job always reaches the broker before its end. A command is
 * finished once its process has exited: what is left of its process group is then killed, it is
 * reaped, and its pipes are drained of what it wrote and closed (a background process that kept
 * them open does not hold the job). */
#include "cmd_worker.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "clock.h"
#include "corral.h"
#include "exits.h"
#include "json.h"
#include "rfc3339.h"

extern char **environ;

/* EX_TEMPFAIL: a command's failure to try again (corralctl's own 75 is EXIT_TEMPFAIL). */
#define CMD_EXIT_RETRY 75

#define READY_FD 3 /* the command's end of its readiness pipe */

#define STDERR_TAIL  2048               /* bytes of stderr kept per job */
#define MESSAGE_TAIL 500                /* bytes of that tail put in an ExitStatus message */
#define RESULT_MAX   ((size_t)64 << 20) /* stdout captured per job */
#define IO_CHUNK     65536
#define DRAIN_READS  1024               /* reads of a reaped child's pipes, at most */
#define READY_MAX    ((size_t)64 << 10) /* a longer readiness line is cut to this */

/* Environment variables given to each command (any inherited value is replaced).
 * CORRAL_DEADLINE: the job's effective deadline in RFC 3339 (UTC), "" when none. */
static const char *const JOB_ENV[] = {
    "CORRAL_JOB_ID",          "CORRAL_ATTEMPT",         "CORRAL_JOB_KIND", "CORRAL_GROUP_ID",
    "CORRAL_CLIENT_ENDPOINT", "CORRAL_WORKER_ENDPOINT", "CORRAL_DEADLINE",
};
#define NJOB_ENV (sizeof(JOB_ENV) / sizeof(JOB_ENV[0]))

/* One job being run. A slot is free when job is NULL. */
struct slot {
    struct corral_job *job;
    pid_t pid;     /* the command, leader of its process group */
    bool reaped;   /* waitpid() has returned its status */
    int status;    /* its wait status once reaped */
    int in_fd;     /* our end of its stdin, -1 once closed */
    int out_fd;    /* our end of its stdout, -1 once closed */
    int err_fd;    /* our end of its stderr, -1 once closed */
    int rdy_fd;    /* our end of its fd 3, -1 once closed */
    size_t in_off; /* payload bytes written */
    char *out;     /* captured stdout (owned) */
    size_t out_len, out_cap;
    bool out_overflow;     /* stdout went past RESULT_MAX */
    char err[STDERR_TAIL]; /* the last bytes of stderr */
    size_t err_len;
    bool err_dropped;  /* older stderr bytes were dropped */
    char *rdy;         /* the readiness line so far (owned) */
    size_t rdy_len;    /* bytes in rdy (its capacity is READY_MAX) */
    bool rdy_sent;     /* the line was sent: later bytes are read and dropped */
    bool cancel_seen;  /* the broker's cancel reached us */
    bool stop_kill;    /* signalled because corralctl is stopping, not by a cancel */
    bool term_sent;    /* SIGTERM sent to the group */
    bool kill_sent;    /* SIGKILL sent to the group */
    uint64_t kill_at;  /* when to send SIGKILL, once term_sent */
    uint64_t start_ms; /* when it was spawned */
};

/* Which pipe or fd of a slot a poll entry watches. */
enum watch { W_WORKER, W_SIGNAL, W_IN, W_OUT, W_ERR, W_READY, W_CANCEL };

struct loop {
    const struct cmd_worker_opts *o;
    struct corral_worker *w;
    int sfd; /* signalfd */
    struct slot *slots;
    size_t running;     /* slots in use */
    struct pollfd *pfd; /* poll set, and what each entry watches */
    enum watch *what;
    size_t *which;
    bool stopping;       /* SIGTERM/SIGINT received: take no new job */
    bool stop_killed;    /* the drain time ended and the remaining jobs were signalled */
    uint64_t stop_at;    /* end of the drain time */
    uint64_t abandon_at; /* after stop_killed: give up on children that do not die */
    bool broken;         /* the worker stopped under us: exit with a failure */
    size_t nbase_env;    /* entries of environ kept for the commands */
};

/* Prints a line on stderr, prefixed with "corralctl: ". */
__attribute__((format(printf, 1, 2))) static void
say(const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    fprintf(stderr, "corralctl: %s\n", line);
}

/* Closes *fd if open and marks it closed. */
static void
close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

/* Makes sure fds 0, 1 and 2 are open (on /dev/null), so pipes never land on them.
 * Returns 0 or -1. */
static int
ensure_std_fds(void)
{
    for (int fd = 0; fd < 3; fd++) {
        if (fcntl(fd, F_GETFD) != -1 || errno != EBADF)
            continue;
        int n = open("/dev/null", O_RDWR);
        if (n < 0)
            return -1;
        if (n != fd) { /* lower fds are open, so open() returns fd itself */
            close(n);
            return -1;
        }
    }
    return 0;
}

/* True when name=value entry e sets one of the variables the worker provides. */
static bool
is_job_env(const char *e)
{
    for (size_t i = 0; i < NJOB_ENV; i++) {
        size_t n = strlen(JOB_ENV[i]);
        if (strncmp(e, JOB_ENV[i], n) == 0 && e[n] == '=')
            return true;
    }
    return false;
}

/* Builds the environment of a job's command: environ without our variables, then ours,
 * in one allocation (pointers first, then our strings). Returns owned (free()), or NULL
 * when out of memory. */
static char **
build_env(const struct loop *l, const struct corral_job *job)
{
    char attempt[16];
    char deadline[RFC3339_MAX] = "";
    snprintf(attempt, sizeof(attempt), "%" PRIu32, corral_job_attempt(job));
    if (corral_job_deadline(job) != 0)
        rfc3339_format(corral_job_deadline(job), deadline);
    const char *values[NJOB_ENV] = {
        corral_job_id(job),
        attempt,
        corral_job_kind(job),
        corral_job_group(job),
        l->o->client_endpoint,
        l->o->worker_endpoint,
        deadline,
    };
    size_t nptr = l->nbase_env + NJOB_ENV + 1;
    size_t size = nptr * sizeof(char *);
    for (size_t i = 0; i < NJOB_ENV; i++) {
        values[i] = values[i] != NULL ? values[i] : "";
        size += strlen(JOB_ENV[i]) + 1 + strlen(values[i]) + 1;
    }
    char **env = malloc(size);
    if (env == NULL)
        return NULL;
    size_t n = 0;
    for (char **e = environ; *e != NULL && n < l->nbase_env; e++)
        if (!is_job_env(*e))
            env[n++] = *e;
    char *p = (char *)(env + nptr);
    for (size_t i = 0; i < NJOB_ENV; i++) {
        env[n++] = p;
        p += sprintf(p, "%s=%s", JOB_ENV[i], values[i]) + 1;
    }
    env[n] = NULL;
    return env;
}

/* In the forked child: wires the pipes to fds 0-3, restores signals, runs the command.
 * Only async-signal-safe calls: the parent has other threads. Never returns. */
__attribute__((noreturn)) static void
child_exec(int in, int out, int err, int rdy, char *const argv[], char *const envp[])
{
    sigset_t none;
    struct sigaction dfl;
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    setpgid(0, 0);
    /* Fd 3 last: the others are above 2 (fds 0-2 are open), so they may sit on 3. A pipe
     * already on 3 keeps its close-on-exec flag through dup2, hence the fcntl. */
    if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0 || dup2(rdy, READY_FD) < 0 ||
        fcntl(READY_FD, F_SETFD, 0) < 0)
        _exit(127);
    sigaction(SIGTERM, &dfl, NULL);
    sigaction(SIGPIPE, &dfl, NULL);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    close_range(READY_FD + 1, ~0U, 0); /* every fd of ours is CLOEXEC too: belt and braces */
    execvpe(argv[0], argv, envp);
    int e = errno;
    const char *why = strerrordesc_np(e);
    static const char prefix[] = "corralctl: cannot run ";
    if (write(2, prefix, sizeof(prefix) - 1) > 0 && write(2, argv[0], strlen(argv[0])) > 0 &&
        write(2, ": ", 2) > 0 && why != NULL && write(2, why, strlen(why)) > 0)
        (void)!write(2, "\n", 1);
    _exit(e == ENOENT ? 127 : 126);
}

/* Sets O_NONBLOCK on fd. Returns 0 or -1. */
static int
set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -1;
    return 0;
}

/* Starts the command for the job in slot s (its job set). Returns 0, or -1 with errno
 * set and nothing left open. */
static int
spawn(struct loop *l, struct slot *s)
{
    int p_in[2] = {-1, -1}, p_out[2] = {-1, -1}, p_err[2] = {-1, -1}, p_rdy[2] = {-1, -1};
    char **env = NULL;
    int rc = -1, saved = 0;
    if (pipe2(p_in, O_CLOEXEC) < 0 || pipe2(p_out, O_CLOEXEC) < 0 || pipe2(p_err, O_CLOEXEC) < 0 ||
        pipe2(p_rdy, O_CLOEXEC) < 0)
        goto out;
    if (set_nonblock(p_in[1]) < 0 || set_nonblock(p_out[0]) < 0 || set_nonblock(p_err[0]) < 0 ||
        set_nonblock(p_rdy[0]) < 0)
        goto out;
    env = build_env(l, s->job);
    if (env == NULL) {
        errno = ENOMEM;
        goto out;
    }
    pid_t pid = fork();
    if (pid < 0)
        goto out;
    if (pid == 0)
        child_exec(p_in[0], p_out[1], p_err[1], p_rdy[1], l->o->argv, env);
    /* Also set here, so a cancel right after fork already finds the group. EACCES: the
     * child has exec'd (and set it itself); ESRCH: it has already exited. */
    if (setpgid(pid, pid) < 0 && errno != EACCES && errno != ESRCH)
        say("setpgid: %s", strerror(errno));
    s->pid = pid;
    s->in_fd = p_in[1];
    s->out_fd = p_out[0];
    s->err_fd = p_err[0];
    s->rdy_fd = p_rdy[0];
    p_in[1] = p_out[0] = p_err[0] = p_rdy[0] = -1;
    s->start_ms = clock_mono_ms();
    size_t plen = 0;
    corral_job_payload(s->job, &plen);
    if (plen == 0)
        close_fd(&s->in_fd);
    rc = 0;
out:
    saved = errno;
    free(env);
    for (int i = 0; i < 2; i++) {
        close_fd(&p_in[i]);
        close_fd(&p_out[i]);
        close_fd(&p_err[i]);
        close_fd(&p_rdy[i]);
    }
    errno = saved;
    return rc;
}

/* Writes more of the payload to the command's stdin; closes it when all is written or
 * the command stopped reading. */
static void
feed_stdin(struct slot *s)
{
    size_t len = 0;
    const char *p = corral_job_payload(s->job, &len);
    while (s->in_fd >= 0 && s->in_off < len) {
        size_t chunk = len - s->in_off < IO_CHUNK ? len - s->in_off : IO_CHUNK;
        ssize_t n = write(s->in_fd, p + s->in_off, chunk);
        if (n > 0) {
            s->in_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        close_fd(&s->in_fd); /* EPIPE: it does not want the rest */
    }
    close_fd(&s->in_fd);
}

/* Appends captured stdout; past RESULT_MAX the bytes are dropped and noted. Returns 0 or
 * -1 when out of memory (the bytes are then dropped and overflow noted as well). */
static int
keep_stdout(struct slot *s, const char *buf, size_t n)
{
    if (s->out_len + n > RESULT_MAX) {
        n = RESULT_MAX - s->out_len;
        s->out_overflow = true;
    }
    if (s->out_len + n > s->out_cap) {
        size_t cap = s->out_cap == 0 ? IO_CHUNK : s->out_cap;
        while (cap < s->out_len + n)
            cap *= 2;
        if (cap > RESULT_MAX)
            cap = RESULT_MAX;
        char *nb = realloc(s->out, cap);
        if (nb == NULL) {
            s->out_overflow = true;
            return -1;
        }
        s->out = nb;
        s->out_cap = cap;
    }
    memcpy(s->out + s->out_len, buf, n);
    s->out_len += n;
    return 0;
}

/* Appends to the stderr tail, keeping only the last STDERR_TAIL bytes. */
static void
keep_stderr(struct slot *s, const char *buf, size_t n)
{
    if (n >= STDERR_TAIL) {
        memcpy(s->err, buf + n - STDERR_TAIL, STDERR_TAIL);
        s->err_dropped = s->err_dropped || s->err_len > 0 || n > STDERR_TAIL;
        s->err_len = STDERR_TAIL;
        return;
    }
    if (s->err_len + n > STDERR_TAIL) {
        size_t drop = s->err_len + n - STDERR_TAIL;
        memmove(s->err, s->err + drop, s->err_len - drop);
        s->err_len -= drop;
        s->err_dropped = true;
    }
    memcpy(s->err + s->err_len, buf, n);
    s->err_len += n;
}

/* Reads what is available on one of the command's output pipes (at most max_reads
 * reads); closes it at end of file or on error. */
static void
read_pipe(struct slot *s, int *fd, bool is_stdout, unsigned max_reads)
{
    char buf[IO_CHUNK];
    for (unsigned i = 0; *fd >= 0 && i < max_reads; i++) {
        ssize_t n = read(*fd, buf, sizeof(buf));
        if (n > 0) {
            if (is_stdout)
                keep_stdout(s, buf, (size_t)n);
            else
                keep_stderr(s, buf, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        close_fd(fd); /* end of file, or an error */
    }
}

/* Sends the readiness line (its first READY_MAX bytes) as the job's started() value, once;
 * waits for the broker's answer (see the top of the file). */
static void
send_ready(const struct loop *l, struct slot *s)
{
    s->rdy_sent = true;
    int err = corral_job_started(s->job, s->rdy != NULL ? s->rdy : "", s->rdy_len);
    if (err != CORRAL_OK)
        say("job %s: started() not taken: %s", corral_job_id(s->job), corral_strerror(err));
    else if (l->o->verbose)
        say("job %s attempt %" PRIu32 " [%s]: started (%zu bytes)", corral_job_id(s->job),
            corral_job_attempt(s->job), corral_job_kind(s->job), s->rdy_len);
    free(s->rdy);
    s->rdy = NULL;
    s->rdy_len = 0;
}

/* Reads what is available on the command's readiness pipe (at most max_reads reads):
 * the first line, without its newline, is sent as started() the moment it is complete (or
 * reaches READY_MAX bytes); later bytes are dropped, and a partial line left at end of
 * file is dropped too. Closes the pipe at end of file or on error. */
static void
read_ready(const struct loop *l, struct slot *s, unsigned max_reads)
{
    char buf[IO_CHUNK];
    for (unsigned i = 0; s->rdy_fd >= 0 && i < max_reads; i++) {
        ssize_t n = read(s->rdy_fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            close_fd(&s->rdy_fd); /* end of file, or an error */
            break;
        }
        if (s->rdy_sent)
            continue;
        const char *nl = memchr(buf, '\n', (size_t)n);
        size_t take = nl != NULL ? (size_t)(nl - buf) : (size_t)n;
        if (take > READY_MAX - s->rdy_len)
            take = READY_MAX - s->rdy_len;
        if (s->rdy == NULL && (s->rdy = malloc(READY_MAX)) == NULL) {
            say("job %s: out of memory for its readiness line", corral_job_id(s->job));
            s->rdy_sent = true; /* given up: not sent */
            continue;
        }
        memcpy(s->rdy + s->rdy_len, buf, take);
        s->rdy_len += take;
        if (nl != NULL || s->rdy_len == READY_MAX)
            send_ready(l, s);
    }
    if (s->rdy_fd < 0 && !s->rdy_sent) { /* closed without a line: nothing to say */
        free(s->rdy);
        s->rdy = NULL;
        s->rdy_len = 0;
    }
}

/* Sends sig to the command's process group. */
static void
signal_group(struct slot *s, int sig)
{
    if (s->reaped || s->pid <= 0)
        return;
    if (kill(-s->pid, sig) < 0 && errno != ESRCH)
        say("job %s: cannot signal its process group: %s", corral_job_id(s->job), strerror(errno));
}

/* Starts stopping the command: SIGTERM now, SIGKILL after the grace period. */
static void
terminate(struct loop *l, struct slot *s, uint64_t now)
{
    if (s->term_sent || s->reaped)
        return;
    signal_group(s, SIGTERM);
    s->term_sent = true;
    s->kill_at = now + l->o->grace_ms;
}

/* "SIGTERM" for SIGTERM, "SIG?" when the signal has no name. */
static void
signal_name(int sig, char *buf, size_t size)
{
    const char *abbrev = sigabbrev_np(sig);
    snprintf(buf, size, "SIG%s", abbrev != NULL ? abbrev : "?");
}

/* Writes into msg (size bytes) "exit status N" and, when stderr had any, ": " and its last
 * lines (at most MESSAGE_TAIL bytes, trimmed, made valid UTF-8). */
static void
exit_message(const struct slot *s, int code, char *msg, size_t size)
{
    const char *e = s->err;
    size_t end = s->err_len;
    while (end > 0 &&
           (e[end - 1] == '\n' || e[end - 1] == '\r' || e[end - 1] == ' ' || e[end - 1] == '\t'))
        end--;
    /* Whole lines from the end while they fit; a too-long last line gives its tail. */
    size_t start = end;
    size_t p = end;
    while (p > 0) {
        size_t ls = p;
        while (ls > 0 && e[ls - 1] != '\n')
            ls--;
        if (end - ls > MESSAGE_TAIL) {
            if (start == end)
                start = end - MESSAGE_TAIL;
            break;
        }
        if (ls == 0 && s->err_dropped && start != end)
            break; /* the oldest line was cut by the tail buffer: leave it out */
        start = ls;
        if (ls == 0)
            break;
        p = ls - 1;
    }
    while (start < end &&
           (e[start] == '\n' || e[start] == '\r' || e[start] == ' ' || e[start] == '\t'))
        start++;
    int n = snprintf(msg, size, "exit status %d", code);
    if (n < 0 || (size_t)n >= size || start == end)
        return;
    size_t o = (size_t)n;
    if (o + 2 < size) {
        msg[o++] = ':';
        msg[o++] = ' ';
    }
    for (size_t i = start; i < end && o + 4 < size;) {
        const uint8_t *u = (const uint8_t *)e + i;
        size_t k = utf8_seq_len(u, end - i);
        if (k == 0 || u[0] == 0) {
            msg[o++] = '?';
            i++;
            continue;
        }
        memcpy(msg + o, u, k);
        o += k;
        i += k;
    }
    msg[o] = '\0';
}

/* Says so on stderr when reporting a job's end failed (err from corral_job_*). */
static void
check_report(const struct corral_job *job, int err)
{
    if (err != CORRAL_OK)
        say("job %s: cannot report its end: %s", corral_job_id(job), corral_strerror(err));
}

/* Reports the end of a reaped command per DESIGN D9, logs it if verbose, and frees the
 * slot. */
static void
finish(struct loop *l, struct slot *s)
{
    /* Collect what it wrote before it exited; close what a grandchild may keep open. */
    read_pipe(s, &s->out_fd, true, DRAIN_READS);
    read_pipe(s, &s->err_fd, false, DRAIN_READS);
    read_ready(l, s, DRAIN_READS); /* a line written just before the exit goes first */
    close_fd(&s->in_fd);
    close_fd(&s->out_fd);
    close_fd(&s->err_fd);
    close_fd(&s->rdy_fd);

    struct corral_job *job = s->job;
    int st = s->status;
    bool cancelled = s->cancel_seen || corral_job_cancelled(job);
    char msg[MESSAGE_TAIL + 64];
    char how[sizeof(msg) + 32];
    int err = CORRAL_OK;
    if (WIFSIGNALED(st)) {
        char name[32];
        signal_name(WTERMSIG(st), name, sizeof(name));
        if (cancelled) {
            err = corral_job_ack_cancel(job);
            snprintf(how, sizeof(how), "cancelled (%s)", name);
        } else if (s->stop_kill) {
            /* Stopped by our own shutdown: left for the broker to retry once this worker
             * is declared lost (S13); it was not cancelled and did not fail. */
            snprintf(how, sizeof(how), "stopped by %s, not reported (worker stopping)", name);
        } else {
            snprintf(msg, sizeof(msg), "killed by signal %d (%s)", WTERMSIG(st), name);
            err = corral_job_fail(job, "ExitStatus", msg, NULL, 0);
            snprintf(how, sizeof(how), "failed: %s", msg);
        }
    } else if (WIFEXITED(st) && WEXITSTATUS(st) == 0 && !s->out_overflow) {
        err = corral_job_done(job, s->out != NULL ? s->out : "", s->out_len);
        snprintf(how, sizeof(how), "done (%zu bytes)%s", s->out_len,
                 cancelled ? " after cancel" : "");
    } else if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
        snprintf(msg, sizeof(msg), "stdout exceeded %zu bytes", RESULT_MAX);
        err = corral_job_fail(job, "OutputTooLarge", msg, NULL, 0);
        snprintf(how, sizeof(how), "failed: %s", msg);
    } else if (s->stop_kill && !cancelled) {
        snprintf(how, sizeof(how), "exit status %d, not reported (worker stopping)",
                 WEXITSTATUS(st));
    } else if (WEXITSTATUS(st) == CMD_EXIT_RETRY) {
        /* EX_TEMPFAIL: the broker runs the job again while attempts remain (S13). */
        exit_message(s, WEXITSTATUS(st), msg, sizeof(msg));
        err = corral_job_fail_retryable(job, "ExitStatus", msg, NULL, 0);
        snprintf(how, sizeof(how), "failed, to retry: exit status %d", WEXITSTATUS(st));
    } else {
        exit_message(s, WEXITSTATUS(st), msg, sizeof(msg));
        err = corral_job_fail(job, "ExitStatus", msg, NULL, 0);
        snprintf(how, sizeof(how), "failed: exit status %d", WEXITSTATUS(st));
    }
    check_report(job, err);
    if (l->o->verbose) {
        uint64_t ms = clock_mono_ms() - s->start_ms;
        say("job %s attempt %" PRIu32 " [%s]: %s in %" PRIu64 ".%03" PRIu64 "s", corral_job_id(job),
            corral_job_attempt(job), corral_job_kind(job), how, ms / 1000, ms % 1000);
    }
    corral_job_free(&s->job);
    free(s->out);
    free(s->rdy);
    memset(s, 0, sizeof(*s));
    s->in_fd = s->out_fd = s->err_fd = s->rdy_fd = -1;
    l->running--;
}

/* Takes a job just handed out: acks it at once if already cancelled, else runs it. */
static void
start_job(struct loop *l, struct corral_job *job)
{
    if (corral_job_cancelled(job)) {
        check_report(job, corral_job_ack_cancel(job));
        if (l->o->verbose)
            say("job %s attempt %" PRIu32 " [%s]: cancelled before it started", corral_job_id(job),
                corral_job_attempt(job), corral_job_kind(job));
        corral_job_free(&job);
        return;
    }
    struct slot *s = NULL;
    for (unsigned i = 0; i < l->o->concurrency && s == NULL; i++)
        if (l->slots[i].job == NULL)
            s = &l->slots[i];
    if (s == NULL) { /* cannot happen: we take jobs only while a slot is free */
        say("job %s: no free slot; left for the broker to retry", corral_job_id(job));
        corral_job_free(&job);
        return;
    }
    s->job = job;
    if (spawn(l, s) < 0) {
        char msg[256];
        snprintf(msg, sizeof(msg), "cannot start %s: %s", l->o->argv[0], strerror(errno));
        say("job %s: %s", corral_job_id(job), msg);
        /* Out of processes, fds or memory here: another try (maybe elsewhere) may work. */
        check_report(job, corral_job_fail_retryable(job, "WorkerError", msg, NULL, 0));
        corral_job_free(&s->job);
        return;
    }
    l->running++;
}

/* Begins the shutdown on SIGTERM or SIGINT; a second one ends the drain time at once, a
 * third sends SIGKILL at once. */
static void
begin_stop(struct loop *l, uint64_t now)
{
    if (!l->stopping) {
        l->stopping = true;
        l->stop_at = now + l->o->grace_ms;
        if (l->o->verbose)
            say("stopping: no new jobs; %zu running", l->running);
    } else if (!l->stop_killed) {
        l->stop_at = now;
    } else {
        for (unsigned i = 0; i < l->o->concurrency; i++)
            if (l->slots[i].term_sent)
                l->slots[i].kill_at = now;
    }
}

/* Takes jobs while slots are free. Returns 0, or -1 when the worker has stopped. */
static int
take_jobs(struct loop *l)
{
    while (!l->stopping && l->running < l->o->concurrency) {
        struct corral_job *job = NULL;
        int err = corral_worker_next(l->w, 0, &job);
        if (err == CORRAL_ETIMEDOUT)
            return 0;
        if (err == CORRAL_ECLOSED) {
            /* The worker is gone: stop the running commands now and leave. */
            say("worker: %s", corral_strerror(err));
            l->broken = true;
            begin_stop(l, clock_mono_ms());
            l->stop_at = clock_mono_ms();
            return 0;
        }
        if (err != CORRAL_OK) {
            say("worker: %s", corral_strerror(err));
            return 0;
        }
        start_job(l, job);
    }
    return 0;
}

/* Reads the signalfd: reaps children on SIGCHLD, begins the shutdown on SIGTERM/SIGINT. */
static void
read_signals(struct loop *l)
{
    struct signalfd_siginfo si;
    bool child = false;
    for (;;) {
        ssize_t n = read(l->sfd, &si, sizeof(si));
        if (n < 0 && errno == EINTR)
            continue;
        if (n != (ssize_t)sizeof(si))
            break;
        if (si.ssi_signo == SIGCHLD)
            child = true;
        else if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
            begin_stop(l, clock_mono_ms());
    }
    if (!child)
        return;
    for (unsigned i = 0; i < l->o->concurrency; i++) {
        struct slot *s = &l->slots[i];
        if (s->job == NULL || s->reaped)
            continue;
        /* Peek first (WNOWAIT): while the leader is an unreaped zombie its process
         * group id cannot be reused, so what is left of the group (background processes
         * the command started) can be killed safely before reaping it. */
        siginfo_t wi;
        memset(&wi, 0, sizeof(wi));
        if (waitid(P_PID, (id_t)s->pid, &wi, WEXITED | WNOHANG | WNOWAIT) < 0 || wi.si_pid == 0)
            continue;
        if (kill(-s->pid, SIGKILL) < 0 && errno != ESRCH)
            say("job %s: cannot clean up its process group: %s", corral_job_id(s->job),
                strerror(errno));
        int st;
        pid_t r;
        do
            r = waitpid(s->pid, &st, 0);
        while (r < 0 && errno == EINTR);
        if (r != s->pid) { /* cannot happen for a zombie we own; rebuild its status */
            say("waitpid: %s", strerror(errno));
            st = wi.si_code == CLD_EXITED ? W_EXITCODE(wi.si_status, 0)
                                          : W_EXITCODE(0, wi.si_status);
        }
        s->reaped = true;
        s->status = st;
    }
}

/* Fires due deadlines: SIGKILL after the grace period, the end of the drain time.
 * Returns the next deadline (UINT64_MAX: none). */
static uint64_t
tick(struct loop *l, uint64_t now)
{
    uint64_t next = UINT64_MAX;
    if (l->stopping && !l->stop_killed && now >= l->stop_at) {
        l->stop_killed = true;
        l->abandon_at = now + 2 * l->o->grace_ms + 1000;
        for (unsigned i = 0; i < l->o->concurrency; i++) {
            struct slot *s = &l->slots[i];
            if (s->job != NULL && !s->reaped && !s->term_sent) {
                s->stop_kill = true;
                terminate(l, s, now);
            }
        }
    }
    if (l->stopping && !l->stop_killed && l->stop_at < next)
        next = l->stop_at;
    if (l->stop_killed && l->abandon_at < next)
        next = l->abandon_at;
    for (unsigned i = 0; i < l->o->concurrency; i++) {
        struct slot *s = &l->slots[i];
        if (s->job == NULL || s->reaped || !s->term_sent || s->kill_sent)
            continue;
        if (now >= s->kill_at) {
            signal_group(s, SIGKILL);
            s->kill_sent = true;
        } else if (s->kill_at < next) {
            next = s->kill_at;
        }
    }
    return next;
}

/* Adds an entry to the poll set. */
static void
watch(struct loop *l, size_t *n, int fd, short events, enum watch what, size_t which)
{
    l->pfd[*n] = (struct pollfd){.fd = fd, .events = events, .revents = 0};
    l->what[*n] = what;
    l->which[*n] = which;
    (*n)++;
}

/* Builds the poll set for this turn. Returns its size. */
static size_t
build_poll_set(struct loop *l)
{
    size_t n = 0;
    watch(l, &n, l->sfd, POLLIN, W_SIGNAL, 0);
    if (!l->stopping && l->running < l->o->concurrency)
        watch(l, &n, corral_worker_fd(l->w), POLLIN, W_WORKER, 0);
    for (unsigned i = 0; i < l->o->concurrency; i++) {
        struct slot *s = &l->slots[i];
        if (s->job == NULL || s->reaped)
            continue;
        if (s->in_fd >= 0)
            watch(l, &n, s->in_fd, POLLOUT, W_IN, i);
        if (s->out_fd >= 0)
            watch(l, &n, s->out_fd, POLLIN, W_OUT, i);
        if (s->err_fd >= 0)
            watch(l, &n, s->err_fd, POLLIN, W_ERR, i);
        if (s->rdy_fd >= 0)
            watch(l, &n, s->rdy_fd, POLLIN, W_READY, i);
        if (!s->cancel_seen)
            watch(l, &n, corral_job_cancel_fd(s->job), POLLIN, W_CANCEL, i);
    }
    return n;
}

/* The event loop. Returns 0 after a clean stop, -1 when the worker broke down. */
static int
run_loop(struct loop *l)
{
    for (;;) {
        uint64_t now = clock_mono_ms();
        for (unsigned i = 0; i < l->o->concurrency; i++)
            if (l->slots[i].job != NULL && l->slots[i].reaped)
                finish(l, &l->slots[i]);
        if (l->stopping && l->running == 0)
            return l->broken ? -1 : 0;
        uint64_t next = tick(l, now);
        if (l->stop_killed && now >= l->abandon_at) {
            say("giving up on %zu command(s) that did not stop", l->running);
            return l->broken ? -1 : 0;
        }
        int timeout = -1;
        if (next != UINT64_MAX)
            timeout = next - now > 60000 ? 60000 : (int)(next - now);
        size_t n = build_poll_set(l);
        int r = poll(l->pfd, n, timeout);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            say("poll: %s", strerror(errno));
            return -1;
        }
        bool worker_ready = false;
        now = clock_mono_ms();
        for (size_t k = 0; k < n && r > 0; k++) {
            if (l->pfd[k].revents == 0)
                continue;
            struct slot *s = &l->slots[l->which[k]];
            switch (l->what[k]) {
            case W_SIGNAL:
                read_signals(l);
                break;
            case W_WORKER:
                worker_ready = true;
                break;
            case W_IN:
                feed_stdin(s);
                break;
            case W_OUT:
                read_pipe(s, &s->out_fd, true, 16);
                break;
            case W_ERR:
                read_pipe(s, &s->err_fd, false, 16);
                break;
            case W_READY:
                read_ready(l, s, 16);
                break;
            case W_CANCEL:
                s->cancel_seen = true;
                terminate(l, s, now);
                break;
            }
        }
        if (worker_ready && take_jobs(l) < 0)
            return -1;
    }
}

/* Frees the loop's slots; jobs still there are freed without a report. */
static void
free_slots(struct loop *l)
{
    if (l->slots == NULL)
        return;
    for (unsigned i = 0; i < l->o->concurrency; i++) {
        struct slot *s = &l->slots[i];
        if (s->job == NULL)
            continue;
        close_fd(&s->in_fd);
        close_fd(&s->out_fd);
        close_fd(&s->err_fd);
        close_fd(&s->rdy_fd);
        corral_job_free(&s->job);
        free(s->out);
        free(s->rdy);
    }
    free(l->slots);
    l->slots = NULL;
}

/* True when cmd can be run: a path that is an executable file, or a name found as one in
 * $PATH (as execvp searches it). */
static bool
command_exists(const char *cmd)
{
    if (strchr(cmd, '/') != NULL)
        return access(cmd, X_OK) == 0;
    const char *path = getenv("PATH");
    if (path == NULL)
        path = "/bin:/usr/bin";
    size_t clen = strlen(cmd);
    for (const char *p = path;;) {
        const char *colon = strchr(p, ':');
        size_t dlen = colon != NULL ? (size_t)(colon - p) : strlen(p);
        char *full = malloc(dlen + clen + 3);
        if (full == NULL)
            return true; /* cannot tell; let exec decide */
        snprintf(full, dlen + clen + 3, "%.*s/%s", (int)dlen, dlen > 0 ? p : ".", cmd);
        bool ok = access(full, X_OK) == 0;
        free(full);
        if (ok)
            return true;
        if (colon == NULL)
            return false;
        p = colon + 1;
    }
}

int
cmd_worker_run(const struct cmd_worker_opts *o)
{
    struct loop l;
    memset(&l, 0, sizeof(l));
    l.o = o;
    l.sfd = -1;
    int rc = EXIT_OSERR;
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGPIPE); /* a closed stdin pipe must give EPIPE, not kill us */
    if (ensure_std_fds() < 0) {
        say("cannot open /dev/null: %s", strerror(errno));
        return EXIT_OSERR;
    }
    /* Before corral_worker_new: its thread inherits the mask. */
    if (!command_exists(o->argv[0])) {
        say("%s: command not found", o->argv[0]);
        return EXIT_USAGE;
    }
    if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0) {
        say("sigprocmask: %s", strerror(errno));
        return EXIT_OSERR;
    }
    sigdelset(&mask, SIGPIPE);
    l.sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (l.sfd < 0) {
        say("signalfd: %s", strerror(errno));
        goto out;
    }
    for (char **e = environ; *e != NULL; e++)
        l.nbase_env++;
    size_t nwatch = 2 + 5 * (size_t)o->concurrency;
    l.slots = calloc(o->concurrency, sizeof(*l.slots));
    l.pfd = calloc(nwatch, sizeof(*l.pfd));
    l.what = calloc(nwatch, sizeof(*l.what));
    l.which = calloc(nwatch, sizeof(*l.which));
    if (l.slots == NULL || l.pfd == NULL || l.what == NULL || l.which == NULL) {
        say("out of memory");
        goto out;
    }
    for (unsigned i = 0; i < o->concurrency; i++)
        l.slots[i].in_fd = l.slots[i].out_fd = l.slots[i].err_fd = l.slots[i].rdy_fd = -1;
    int err = corral_worker_new(&l.w, o->worker_endpoint, o->kinds, o->nkinds, o->concurrency);
    if (err != CORRAL_OK) {
        say("cannot start the worker at %s: %s", o->worker_endpoint, corral_strerror(err));
        rc = err == CORRAL_ENOMEM ? EXIT_OSERR : EXIT_UNAVAILABLE;
        goto out;
    }
    rc = run_loop(&l) == 0 ? 0 : EXIT_UNAVAILABLE;
out:
    free_slots(&l);
    corral_worker_free(&l.w);
    free(l.pfd);
    free(l.what);
    free(l.which);
    close_fd(&l.sfd);
    /* The signals stay blocked: unblocking would let a pending SIGTERM or SIGPIPE kill
     * the process on its way out. */
    return rc;
}
