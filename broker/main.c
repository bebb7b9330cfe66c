/* main.c - corrald: arguments and environment, signals, recovery and wiring. The only
 * file that may exit(). Exit status: 0 after SIGTERM/SIGINT, 1 on a runtime failure
 * (store, sockets), 2 on invalid configuration. */
#include "clock.h"
#include "config.h"
#include "engine.h"
#include "log.h"
#include "loop.h"
#include "store.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef CORRAL_VERSION
#define CORRAL_VERSION "0.1.0"
#endif

/* Blocks SIGTERM and SIGINT in this thread before any library starts a thread (threads
 * inherit the mask) and returns a signalfd that the loop polls. */
static int
signals_to_fd(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    if (sigprocmask(SIG_BLOCK, &set, NULL) != 0)
        return -1;
    signal(SIGPIPE, SIG_IGN);
    return signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
}

/* Once the loop has stopped after a SIGTERM or SIGINT, the rest of the shutdown (closing
 * the store, telling workers, freeing) must take at most this long. */
#define TEARDOWN_BOUND_S 3

/* A second SIGTERM or SIGINT during the shutdown: exit at once. The store is consistent
 * at every commit (WAL), so nothing acknowledged is lost. Async-signal-safe. */
static void
exit_now(int sig)
{
    static const char msg[] = "corrald: second signal: exiting at once\n";
    ssize_t ignored = write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)ignored;
    _exit(128 + sig);
}

/* The teardown took longer than TEARDOWN_BOUND_S (a library stuck in its cleanup): the
 * loop's last commit is done, so stop now. Async-signal-safe. */
static void
teardown_overdue(int sig)
{
    (void)sig;
    static const char msg[] = "corrald: shutdown took too long: exiting without cleanup\n";
    ssize_t ignored = write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)ignored;
    _exit(0);
}

/* From here on a second signal ends the process, and the teardown is bounded. */
static void
arm_shutdown_guards(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = exit_now;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = teardown_overdue;
    sigaction(SIGALRM, &sa, NULL);
    alarm(TEARDOWN_BOUND_S);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

/* Counts what was recovered for the start-up log line. */
struct recovery {
    struct engine *eng;
    size_t groups;
    size_t jobs;
    size_t limiters;
};

static int
count_group(void *arg, const struct group_row *row)
{
    struct recovery *r = arg;
    r->groups++;
    return engine_restore_group(r->eng, row);
}

static int
count_limiter(void *arg, const struct limiter_row *row)
{
    struct recovery *r = arg;
    r->limiters++;
    return engine_restore_limiter(r->eng, row);
}

static int
count_job(void *arg, const struct job_row *row)
{
    struct recovery *r = arg;
    r->jobs++;
    return engine_restore_job(r->eng, row);
}

static int
resume_purge(void *arg, uint64_t root)
{
    return engine_restore_purging(arg, root);
}

int
main(int argc, char **argv)
{
    struct config cfg;
    char err[1024] = "";
    switch (config_parse(&cfg, argc, argv, err, sizeof(err))) {
    case CONFIG_HELP:
        config_usage(stdout);
        return 0;
    case CONFIG_VERSION:
        printf("corrald %s (protocol 1)\n", CORRAL_VERSION);
        return 0;
    case CONFIG_ERROR:
        fprintf(stderr, "corrald: %s\n", err);
        return 2;
    case CONFIG_OK:
        break;
    }
    log_setup(cfg.log_level, cfg.log_format);

    int status = 1;
    uint64_t stop_ms = 0;
    struct store *store = NULL;
    struct engine *eng = NULL;
    struct loop *loop = NULL;
    int sigfd = signals_to_fd();
    if (sigfd < 0) {
        log_event(LOG_ERROR, "start_failed", "error=\"signalfd: %s\"", strerror(errno));
        goto out;
    }
    if (mkdir(cfg.data_dir, 0700) != 0 && errno != EEXIST) {
        log_event(LOG_ERROR, "start_failed", "error=\"cannot create data dir %s: %s\"",
                  cfg.data_dir, strerror(errno));
        goto out;
    }
    log_event(LOG_INFO, "start", "version=%s data_dir=%s sync=%s", CORRAL_VERSION, cfg.data_dir,
              cfg.sync == STORE_SYNC_FULL ? "full" : "normal");
    char settings[4096];
    config_format(&cfg, settings, sizeof settings);
    log_event(LOG_INFO, "config", "%s", settings);
    if (store_open(&store, cfg.data_dir, cfg.sync, err, sizeof(err)) != 0) {
        log_event(LOG_ERROR, "start_failed", "error=\"%s\"", err);
        goto out;
    }
    struct engine_config ecfg = {
        .heartbeat_interval_ms = (uint32_t)cfg.heartbeat_interval_ms,
        .heartbeat_timeout_ms = (uint32_t)cfg.heartbeat_timeout_ms,
        .cancel_resend_ms = (uint32_t)cfg.cancel_resend_ms,
        .cancel_grace_ms = (uint32_t)cfg.cancel_grace_ms,
        .max_payload = cfg.max_payload,
        .max_queued = cfg.max_queued,
        .max_queued_per_kind = cfg.max_queued_per_kind,
        .retention_ms = cfg.retention_ms,
    };
    if (engine_new(&eng, &ecfg) != 0)
        goto out;

    uint64_t t0 = clock_mono_ms();
    struct recovery rec = {.eng = eng};
    struct outbox ob;
    outbox_init(&ob);
    int rc = store_load_limiters(store, count_limiter, &rec);
    if (rc == 0)
        rc = store_load(store, count_group, count_job, &rec);
    if (rc == 0)
        rc = engine_restore_finish(eng, clock_wall_ms(), &ob);
    if (rc == 0)
        rc = store_load_purging(store, resume_purge, eng);
    outbox_fini(&ob);
    if (rc != 0) {
        log_event(LOG_ERROR, "recovery_failed", "error=\"%s\"",
                  rc < 0 ? store_errmsg(store) : "inconsistent database");
        goto out;
    }
    const struct engine_stats *st = engine_stats(eng);
    log_event(LOG_INFO, "recovered",
              "groups=%zu jobs=%zu limiters=%zu queued=%llu reclaimable=%llu ms=%llu", rec.groups,
              rec.jobs, rec.limiters, (unsigned long long)st->queued,
              (unsigned long long)st->reclaimable, (unsigned long long)(clock_mono_ms() - t0));

    if (loop_new(&loop, &cfg, eng, store, sigfd, err, sizeof(err)) != 0) {
        log_event(LOG_ERROR, "start_failed", "error=\"%s\"", err);
        goto out;
    }
    log_event(LOG_INFO, "ready", "client_endpoint=%s worker_endpoint=%s", cfg.client_endpoint,
              cfg.worker_endpoint);
    if (loop_run(loop) == 0) {
        stop_ms = clock_mono_ms();
        arm_shutdown_guards();
        const struct loop_stats *ls = loop_stats(loop);
        log_event(LOG_INFO, "shutdown", "turns=%llu commits=%llu rows=%llu malformed=%llu",
                  (unsigned long long)ls->turns, (unsigned long long)ls->commits,
                  (unsigned long long)ls->rows, (unsigned long long)ls->malformed);
        status = 0;
    }
out:
    /* The store first: once it is closed cleanly nothing can be lost, whatever the
     * sockets' teardown does. */
    store_close(&store);
    loop_free(&loop);
    engine_free(&eng);
    if (sigfd >= 0)
        close(sigfd);
    if (status == 0)
        log_event(LOG_INFO, "stopped", "teardown_ms=%llu",
                  (unsigned long long)(clock_mono_ms() - stop_ms));
    return status;
}
