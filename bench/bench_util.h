/* bench_util.h - what corral-bench and corral-soak share: a private corrald in a fresh
 * temporary directory, worker threads that answer every job at once, and readers of
 * /proc. Messages go to stderr, prefixed with the program's name. */
#ifndef CORRAL_BENCH_UTIL_H
#define CORRAL_BENCH_UTIL_H

#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/time.h>
#include <sys/types.h>

#define ENDPOINT_MAX (PATH_MAX + 32)

/* Set by the handler bench_catch_signals installs (SIGINT, SIGTERM): stop soon. */
extern volatile sig_atomic_t bench_interrupted;
/* Set by a worker thread that failed: the run is lost, stop waiting for it. */
extern atomic_bool bench_worker_failed;

/* Installs the SIGINT/SIGTERM handler and ignores SIGPIPE. */
void bench_catch_signals(void);

/* Parses a decimal count in [min, max] into *out; false when s is not one. */
bool parse_count(const char *s, long min, long max, long *out);

/* Writes the corrald built next to this program (<dir of /proc/self/exe>/../broker/corrald)
 * into out; -1 when it cannot be named. */
int default_corrald(char *out, size_t outlen);

/* Sleeps ms milliseconds, or less if bench_interrupted gets set. */
void sleep_ms(long ms);

/* Seconds in a struct timeval (borrowed). */
double timeval_s(const struct timeval *tv);

/* A value in KiB from /proc/<pid>/status, e.g. field "VmRSS" or "VmHWM"; -1 when unknown. */
long proc_status_kib(pid_t pid, const char *field);

/* VmRSS of pid in KiB; -1 when unknown. */
long proc_rss_kib(pid_t pid);

/* The size of the file at path in bytes; 0 when it does not exist, -1 on another error. */
long long file_size(const char *path);

/* ------------------------------------------------------------------ corrald */

/* How to start corrald. Everything is borrowed for the call. */
struct broker_conf {
    const char *corrald;      /* the binary */
    const char *sync;         /* --sync: "full" or "normal" */
    const char *log_level;    /* --log-level; NULL: info */
    const char *const *extra; /* more arguments, NULL-terminated (at most 16); NULL: none */
    bool tcp;                 /* tcp://127.0.0.1 on free ports, else ipc:// in the directory */
    bool keep;                /* broker_cleanup keeps the directory */
};

/* A corrald started by broker_start. */
struct broker {
    pid_t pid; /* 0: not running */
    char dir[PATH_MAX];
    char data_dir[PATH_MAX + 16]; /* <dir>/data: corral.db and its WAL */
    char log_path[PATH_MAX + 16]; /* <dir>/corrald.log: its stdout and stderr */
    char client_ep[ENDPOINT_MAX];
    char worker_ep[ENDPOINT_MAX];
    bool keep;
};

/* What corrald logs on its shutdown line, and its CPU time. */
struct broker_stats {
    unsigned long long turns;
    unsigned long long commits;
    unsigned long long rows;
    unsigned long long malformed;
    double cpu_s; /* corrald's user + system time over its whole life */
};

/* Starts corrald in a fresh temporary directory (in $TMPDIR, else /tmp; CORRAL_* variables
 * left out of its environment, so only these flags configure it) and waits until it logs
 * event=ready. On failure says why and leaves nothing behind. Returns 0 or -1. */
int broker_start(struct broker *b, const struct broker_conf *conf);

/* Stops corrald with SIGTERM, requires exit status 0 within 20 s and reads its shutdown
 * line into *st. Returns 0, or -1 after saying why. */
int broker_stop(struct broker *b, struct broker_stats *st);

/* Kills corrald if it still runs and removes its directory (unless keep). Idempotent. */
void broker_cleanup(struct broker *b);

/* Prints the last lines of corrald's log to stderr, after a failure. */
void broker_dump_log(const struct broker *b);

/* ------------------------------------------------------------------ workers */

/* Threads with one corral_worker each, answering every job with the same result at once. */
struct worker_thread;

struct pool {
    struct worker_thread *t; /* NULL: not started (a zeroed pool is valid to stop) */
    int n;
    atomic_bool stop;
    const void *result; /* borrowed until pool_stop */
    size_t result_len;
};

/* Starts workers threads at endpoint, each with a corral_worker of the given concurrency
 * for kind, answering every job with result (len bytes; borrowed until pool_stop; may be
 * NULL when len is 0). A failing thread sets bench_worker_failed. Returns 0 or -1. */
int pool_start(struct pool *p, const char *endpoint, int workers, unsigned concurrency,
               const char *kind, const void *result, size_t len);

/* Stops and frees the workers; returns -1 when one of them failed. Adds the number of jobs
 * they reported done to *done (may be NULL). Idempotent. */
int pool_stop(struct pool *p, unsigned long *done);

#endif
