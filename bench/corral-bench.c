/* corral-bench - the benchmark of corral: starts its own corrald, pushes no-op jobs through
 * libcorral's public API, and reports end-to-end throughput, the broker's commits and the
 * single-job round trip.
 *
 * For each --sync mode asked, two fresh corrald processes (each in its own temporary data
 * directory) run one workload each, so the commit count corrald logs at shutdown belongs to
 * that workload:
 *   1. throughput: one client submits --jobs no-op jobs with corral_submit_async, keeping
 *      at most --window jobs whose result has not been seen, and counts the JOB_ENDED
 *      events of its subscription (which asks for those only). Only a SUCCEEDED end of a
 *      job whose submission was acknowledged, seen once, counts. Timed from the first
 *      submit to the last result.
 *   2. round trip: one job at a time, corral_submit then wait for its JOB_ENDED event.
 * --workers threads each run a corral_worker (kind "noop") that answers every job at once.
 *
 * --suite deadlines (issue 3) adds, for each --sync mode:
 *   3. the same two runs again, each on a corrald that first has --pending root groups
 *      opened with deadlines an hour away, against the runs above (none pending), and
 *      corrald's resident memory with them;
 *   4. deadline accuracy: --deadlines groups with move-on deadlines 200 ms to 2 s away,
 *      under one subscribed root; how late each GROUP_CANCELLING event reaches the client
 *      after the group's deadline (wall clock), and that none arrives early.
 * Exit status: 0 when every job succeeded and corrald exited 0 after SIGTERM, 1 otherwise,
 * 64 on a usage error. */
#include "bench_util.h"
#include "clock.h"
#include "corral.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define EXIT_USAGE        64
#define KIND              "noop"
#define CLIENT_TIMEOUT_MS 10000 /* bounds each blocking libcorral call */
#define STALL_MS          30000 /* no result for this long: the run failed */
#define WAIT_MS           100   /* one wait for results when the window is full */
#define SETTLE_MS         200   /* lets the workers register before the clock starts */

/* --suite deadlines */
#define PENDING_CLIENTS   8       /* clients opening the pending groups side by side */
#define PENDING_AWAY_MS   3600000 /* a pending deadline is 1 h away ... */
#define PENDING_SPREAD_MS 600000  /* ... plus up to 10 min, so the heap has distinct keys */
#define ACCURACY_MIN_MS   200     /* an accuracy deadline is this far from its open ... */
#define ACCURACY_MAX_MS   2000    /* ... up to this, uniformly */

/* Set by a thread opening groups with deadlines that failed: the run is lost. */
static atomic_bool opener_failed;

/* Whether the run must end now (^C, or a worker failed); says why. */
static bool
must_stop(void)
{
    if (bench_interrupted) {
        fprintf(stderr, "corral-bench: interrupted\n");
        return true;
    }
    if (atomic_load(&bench_worker_failed)) {
        fprintf(stderr, "corral-bench: a worker failed\n");
        return true;
    }
    if (atomic_load(&opener_failed)) {
        fprintf(stderr, "corral-bench: opening a group with a deadline failed\n");
        return true;
    }
    return false;
}

/* ------------------------------------------------------------------ options */

enum { SYNC_FULL = 1, SYNC_NORMAL = 2 };

struct opts {
    long jobs;
    int workers;
    unsigned concurrency;
    int sync_mask;
    long rtt;
    long warmup;
    long window;
    long burst;
    bool deadlines_suite; /* --suite deadlines */
    long pending;         /* groups with a far deadline opened first (0: no such runs) */
    long deadlines;       /* groups of the accuracy run (0: no accuracy run) */
    bool json;
    bool tcp;
    bool keep;
    char corrald[PATH_MAX];
};

static void
usage(FILE *f)
{
    fputs("usage: corral-bench [OPTION]...\n"
          "Starts a private corrald, runs no-op jobs through libcorral and reports throughput,\n"
          "commits and round-trip latency.\n\n"
          "  --jobs N          jobs in the throughput run (default 100000)\n"
          "  --workers W       worker threads, one corral_worker each (default 4)\n"
          "  --concurrency C   concurrency of each worker (default 64)\n"
          "  --window N        most jobs submitted but not yet ended (default 5000)\n"
          "  --burst N         submits between two looks at replies and events (default 1)\n"
          "  --sync MODE       full, normal or both (default both)\n"
          "  --suite SUITE     jobs (throughput and round trip; the default) or deadlines\n"
          "                    (those, then again with pending deadlines, and deadline accuracy)\n"
          "  --pending M       deadlines suite: groups with a deadline 1 h away opened before\n"
          "                    the runs (default 100000; 0 skips those runs; implies the suite)\n"
          "  --deadlines N     deadlines suite: groups of the accuracy run (default 2000;\n"
          "                    0 skips it; implies the suite)\n"
          "  --rtt N           measured round trips (default 2000)\n"
          "  --warmup N        round trips before measuring (default 100)\n"
          "  --tcp             tcp://127.0.0.1 on free ports instead of ipc:// endpoints\n"
          "  --corrald PATH    the broker (default: ../broker/corrald next to this program)\n"
          "  --keep            keep the temporary directories (data and corrald's log)\n"
          "  --json            print one JSON object instead of text\n"
          "  --help            print this text\n",
          f);
}

/* Returns 0, or EXIT_USAGE after printing why. */
static int
parse_args(int argc, char **argv, struct opts *o)
{
    memset(o, 0, sizeof *o);
    o->jobs = 100000;
    o->workers = 4;
    o->concurrency = 64;
    o->sync_mask = SYNC_FULL | SYNC_NORMAL;
    o->rtt = 2000;
    o->warmup = 100;
    o->window = 5000;
    o->burst = 1;
    o->pending = 100000;
    o->deadlines = 2000;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n;
        bool ok = true, takes = true;

        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        } else if (strcmp(a, "--json") == 0) {
            o->json = true;
            takes = false;
        } else if (strcmp(a, "--tcp") == 0) {
            o->tcp = true;
            takes = false;
        } else if (strcmp(a, "--keep") == 0) {
            o->keep = true;
            takes = false;
        } else if (v == NULL) {
            ok = false;
        } else if (strcmp(a, "--jobs") == 0) {
            ok = parse_count(v, 1, 100000000, &o->jobs);
        } else if (strcmp(a, "--workers") == 0) {
            ok = parse_count(v, 1, 1024, &n);
            o->workers = (int)n;
        } else if (strcmp(a, "--concurrency") == 0) {
            ok = parse_count(v, 1, 1000000, &n);
            o->concurrency = (unsigned)n;
        } else if (strcmp(a, "--window") == 0) {
            ok = parse_count(v, 1, 100000000, &o->window);
        } else if (strcmp(a, "--burst") == 0) {
            ok = parse_count(v, 1, 100000000, &o->burst);
        } else if (strcmp(a, "--rtt") == 0) {
            ok = parse_count(v, 1, 100000000, &o->rtt);
        } else if (strcmp(a, "--warmup") == 0) {
            ok = parse_count(v, 0, 100000000, &o->warmup);
        } else if (strcmp(a, "--suite") == 0) {
            if (strcmp(v, "jobs") == 0)
                o->deadlines_suite = false;
            else if (strcmp(v, "deadlines") == 0)
                o->deadlines_suite = true;
            else
                ok = false;
        } else if (strcmp(a, "--pending") == 0) {
            ok = parse_count(v, 0, 10000000, &o->pending);
            o->deadlines_suite = true;
        } else if (strcmp(a, "--deadlines") == 0) {
            ok = parse_count(v, 0, 10000000, &o->deadlines);
            o->deadlines_suite = true;
        } else if (strcmp(a, "--sync") == 0) {
            if (strcmp(v, "full") == 0)
                o->sync_mask = SYNC_FULL;
            else if (strcmp(v, "normal") == 0)
                o->sync_mask = SYNC_NORMAL;
            else if (strcmp(v, "both") == 0)
                o->sync_mask = SYNC_FULL | SYNC_NORMAL;
            else
                ok = false;
        } else if (strcmp(a, "--corrald") == 0) {
            ok = strlen(v) < sizeof o->corrald;
            if (ok)
                strcpy(o->corrald, v);
        } else {
            fprintf(stderr, "corral-bench: unknown option '%s' (see --help)\n", a);
            return EXIT_USAGE;
        }
        if (!ok) {
            if (v == NULL)
                fprintf(stderr, "corral-bench: option %s needs a value\n", a);
            else
                fprintf(stderr, "corral-bench: invalid value '%s' for %s\n", v, a);
            return EXIT_USAGE;
        }
        if (takes)
            i++;
    }
    if (o->corrald[0] == '\0' && default_corrald(o->corrald, sizeof o->corrald) != 0) {
        fprintf(stderr, "corral-bench: cannot locate corrald; use --corrald PATH\n");
        return EXIT_USAGE;
    }
    if (access(o->corrald, X_OK) != 0) {
        fprintf(stderr, "corral-bench: %s: %s (use --corrald PATH)\n", o->corrald, strerror(errno));
        return EXIT_USAGE;
    }
    return 0;
}

/* Starts corrald for a run in the given --sync mode. */
static int
start_corrald(struct broker *b, const struct opts *o, const char *sync)
{
    struct broker_conf conf = {.corrald = o->corrald, .sync = sync, .tcp = o->tcp, .keep = o->keep};

    return broker_start(b, &conf);
}

/* ------------------------------------------------------------------ CPU time */

/* CPU time of this process (every thread) so far, in seconds. */
static double
self_cpu_s(void)
{
    struct rusage ru;

    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return timeval_s(&ru.ru_utime) + timeval_s(&ru.ru_stime);
}

/* Wall-clock time in microseconds since the Unix epoch: the clock deadlines are set in. */
static int64_t
wall_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* CPU time of process pid so far (user + system, every thread), from /proc/<pid>/stat, in
 * seconds; -1 when it cannot be read. */
static double
proc_cpu_s(pid_t pid)
{
    char path[64], buf[1024];
    unsigned long utime, stime;
    double hz = (double)sysconf(_SC_CLK_TCK);
    FILE *f;
    size_t n;
    const char *p;

    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    f = fopen(path, "r");
    if (f == NULL)
        return -1;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name, in parentheses, may hold spaces: the fields follow the last ')'. */
    p = strrchr(buf, ')');
    if (p == NULL || hz <= 0 ||
        sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) != 2)
        return -1;
    return (double)(utime + stime) / hz;
}

/* The machine's CPU time so far, from /proc/stat, in seconds (all CPUs). */
struct machine_cpu {
    double busy;  /* user, nice, system, irq, softirq */
    double steal; /* taken by the hypervisor */
    double total; /* everything, idle included */
};

static void
machine_cpu(struct machine_cpu *m)
{
    unsigned long long v[8] = {0};
    FILE *f = fopen("/proc/stat", "r");
    double hz = (double)sysconf(_SC_CLK_TCK);

    memset(m, 0, sizeof *m);
    if (f == NULL)
        return;
    if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4],
               &v[5], &v[6], &v[7]) == 8 &&
        hz > 0) {
        m->busy = (double)(v[0] + v[1] + v[2] + v[5] + v[6]) / hz;
        m->steal = (double)v[7] / hz;
        m->total = (double)(v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7]) / hz;
    }
    fclose(f);
}

/* Who used the CPUs during a measured span: this process, corrald, anything else. */
struct usage {
    struct machine_cpu m0; /* at the start */
    double self0;          /* this process's CPU time at the start */
    pid_t broker;          /* corrald */
    double broker0;        /* corrald's CPU time at the start (/proc; -1: unknown) */
    double bench_cpu_s;    /* this process during the span */
    double broker_cpu_s;   /* corrald during the span (-1: unknown) */
    double total_s;        /* CPU seconds the machine had during the span */
    double busy_s;         /* CPU seconds anything used (steal apart) */
    double steal_s;        /* CPU seconds the hypervisor took */
    /* shares of total_s, set by usage_shares */
    double busy, other, steal;
};

static void
usage_begin(struct usage *u, pid_t broker)
{
    memset(u, 0, sizeof *u);
    machine_cpu(&u->m0);
    u->self0 = self_cpu_s();
    u->broker = broker;
    u->broker0 = proc_cpu_s(broker);
}

static void
usage_end(struct usage *u)
{
    struct machine_cpu m1;
    double broker1 = proc_cpu_s(u->broker);

    u->bench_cpu_s = self_cpu_s() - u->self0;
    u->broker_cpu_s = u->broker0 >= 0 && broker1 >= 0 ? broker1 - u->broker0 : -1;
    machine_cpu(&m1);
    u->total_s = m1.total - u->m0.total;
    u->busy_s = m1.busy - u->m0.busy;
    u->steal_s = m1.steal - u->m0.steal;
}

/* Computes the shares, once corrald's CPU time (over its life, about the span; or during the
 * span, where its life did more than the span) is known. */
static void
usage_shares(struct usage *u, double corrald_cpu_s)
{
    double other = u->busy_s - u->bench_cpu_s - corrald_cpu_s;

    if (u->total_s <= 0)
        return;
    u->busy = (u->busy_s + u->steal_s) / u->total_s;
    u->other = other > 0 ? other / u->total_s : 0;
    u->steal = u->steal_s / u->total_s;
}

/* ------------------------------------------------------------------ groups with deadlines */

/* Clients, one thread each, opening groups with deadlines side by side: each takes the next
 * index until total are open. The deadlines depend on the index only, so every run gets the
 * same ones. */
struct openers {
    pthread_t *threads;
    int n; /* threads started */
    const char *endpoint;
    const char *parent; /* the parent group, or NULL for root groups */
    bool accuracy;      /* the accuracy run's deadlines, else the pending ones */
    long total;
    atomic_long next;   /* the next index to open */
    atomic_long opened; /* how many are open */
    atomic_int err;     /* the first failure, CORRAL_OK if none */
    char errmsg[256];   /* its message, written by the thread that failed first */
    uint64_t t0_us;     /* monotonic: when they started */
    uint64_t t1_us;     /* when the last group was open, set by the thread that opened it */
};

/* splitmix64: a well-mixed 64-bit value from an index. */
static uint64_t
mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* The scope of group i. Both kinds move on at their deadline, so the deadline is all that
 * happens to them. */
static void
opener_scope(const struct openers *op, long i, struct corral_scope *scope)
{
    uint64_t r = mix64((uint64_t)i);

    memset(scope, 0, sizeof *scope);
    scope->on_deadline = CORRAL_ON_DEADLINE_MOVE_ON;
    if (op->accuracy)
        /* Absolute, uniformly ACCURACY_MIN_MS to ACCURACY_MAX_MS from now: lateness is
         * then measured against exactly the deadline corrald was given. */
        scope->deadline_unix_ms = (uint64_t)(wall_us() / 1000) + ACCURACY_MIN_MS +
                                  r % (ACCURACY_MAX_MS - ACCURACY_MIN_MS + 1);
    else
        /* Relative, an hour away and spread over PENDING_SPREAD_MS. */
        scope->timeout_ms = PENDING_AWAY_MS + r % PENDING_SPREAD_MS;
}

static void *
opener_main(void *arg)
{
    struct openers *op = arg;
    struct corral_client *c = NULL;
    int rc = corral_client_new(&c, op->endpoint, CLIENT_TIMEOUT_MS);
    long i = -1;

    while (rc == CORRAL_OK && !bench_interrupted && !atomic_load(&opener_failed) &&
           (i = atomic_fetch_add(&op->next, 1)) < op->total) {
        struct corral_scope scope;
        char id[CORRAL_ID_MAX];

        opener_scope(op, i, &scope);
        rc = corral_group_open_scoped(c, op->parent, NULL, &scope, id, NULL);
        if (rc == CORRAL_OK && atomic_fetch_add(&op->opened, 1) + 1 == op->total)
            op->t1_us = clock_mono_us();
    }
    if (rc != CORRAL_OK) {
        int none = CORRAL_OK;

        if (atomic_compare_exchange_strong(&op->err, &none, rc))
            snprintf(op->errmsg, sizeof op->errmsg, "group %ld of %ld: %s: %s", i + 1, op->total,
                     corral_strerror(rc), c != NULL ? corral_client_last_error(c) : "no client");
        atomic_store(&opener_failed, true);
    }
    corral_client_free(&c);
    return NULL;
}

/* Waits for the threads; returns -1 (after saying why) if one of them failed or not every
 * group was opened. Idempotent. */
static int
openers_join(struct openers *op)
{
    int rc = 0;

    if (op->threads == NULL)
        return 0;
    for (int i = 0; i < op->n; i++)
        pthread_join(op->threads[i], NULL);
    free(op->threads);
    op->threads = NULL;
    if (atomic_load(&op->err) != CORRAL_OK) {
        fprintf(stderr, "corral-bench: opening %s\n", op->errmsg);
        rc = -1;
    } else if (atomic_load(&op->opened) != op->total) {
        if (!must_stop()) /* which says why, if it knows */
            fprintf(stderr, "corral-bench: %ld of %ld groups opened\n", atomic_load(&op->opened),
                    op->total);
        rc = -1;
    }
    return rc;
}

/* Starts nthreads clients opening total groups under parent (NULL: root groups) at
 * endpoint; endpoint and parent are borrowed until openers_join. */
static int
openers_start(struct openers *op, const char *endpoint, const char *parent, long total,
              int nthreads, bool accuracy)
{
    memset(op, 0, sizeof *op);
    op->endpoint = endpoint;
    op->parent = parent;
    op->accuracy = accuracy;
    op->total = total;
    atomic_init(&op->next, 0);
    atomic_init(&op->opened, 0);
    atomic_init(&op->err, CORRAL_OK);
    atomic_store(&opener_failed, false);
    if (nthreads > total)
        nthreads = (int)total;
    op->threads = calloc((size_t)nthreads, sizeof *op->threads);
    if (op->threads == NULL) {
        fprintf(stderr, "corral-bench: out of memory\n");
        return -1;
    }
    op->t0_us = clock_mono_us();
    for (; op->n < nthreads; op->n++) {
        if (pthread_create(&op->threads[op->n], NULL, opener_main, op) != 0) {
            fprintf(stderr, "corral-bench: pthread_create failed\n");
            atomic_store(&opener_failed, true);
            openers_join(op);
            return -1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ job id table */

/* The ids of acknowledged submissions, and whether their end was seen: an
 * open-addressing table that never deletes (sized for every job of the run). */
enum { SLOT_EMPTY = 0, SLOT_SUBMITTED = 1, SLOT_ENDED = 2 };

struct slot {
    char id[CORRAL_ID_MAX];
    unsigned char state;
    unsigned char pad[32 - CORRAL_ID_MAX - 1]; /* one slot, one half cache line */
};

struct idtab {
    struct slot *slots;
    size_t cap; /* a power of two, at least twice the jobs */
};

static int
idtab_init(struct idtab *t, size_t n)
{
    t->cap = 64;
    while (t->cap < 2 * n)
        t->cap *= 2;
    t->slots = calloc(t->cap, sizeof *t->slots);
    return t->slots != NULL ? 0 : -1;
}

static void
idtab_fini(struct idtab *t)
{
    free(t->slots);
    memset(t, 0, sizeof *t);
}

/* The slot holding id, or the empty slot where it would go. */
static struct slot *
idtab_find(const struct idtab *t, const char *id)
{
    uint64_t h = 1469598103934665603ULL;

    for (const char *p = id; *p != '\0'; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    size_t i = (size_t)(h ^ (h >> 29)) & (t->cap - 1);
    while (t->slots[i].state != SLOT_EMPTY && strcmp(t->slots[i].id, id) != 0)
        i = (i + 1) & (t->cap - 1);
    return &t->slots[i];
}

/* Records an acknowledged submission; false if the id was already known. */
static bool
idtab_add(struct idtab *t, const char *id)
{
    struct slot *s = idtab_find(t, id);

    if (s->state != SLOT_EMPTY)
        return false;
    snprintf(s->id, sizeof s->id, "%s", id);
    s->state = SLOT_SUBMITTED;
    return true;
}

/* ------------------------------------------------------------------ results */

struct mode_result {
    const char *sync;
    bool ok;
    /* throughput */
    long jobs;
    double elapsed_s;
    double jobs_per_s;
    struct broker_stats tp;
    double commits_per_s;
    double jobs_per_commit;
    double rows_per_commit;
    struct usage tp_use;
    double corrald_us_per_job, bench_us_per_job;
    /* round trip */
    long rtt_runs;
    double rtt_p50_us, rtt_p90_us, rtt_p99_us, rtt_max_us, rtt_min_us, rtt_mean_us;
    struct broker_stats rt;
    double rtt_commits_per_job;
    struct usage rt_use;
    /* groups with a far deadline open during both runs (deadlines suite; 0: none) */
    long pending;
    double pending_open_s, rt_pending_open_s; /* time to open them, for each corrald */
    /* VmRSS of the throughput run's corrald: ready, with the pending groups, after the run */
    long rss_ready_kib, rss_loaded_kib, rss_end_kib;
};

/* How late deadlines reach a subscriber (deadlines suite). */
struct accuracy {
    bool ok;
    long groups;
    double open_s; /* opening them all (the first deadlines fire meanwhile) */
    /* lateness: arrival at the client minus the deadline, wall clock */
    double p50_ms, p90_ms, p99_ms, max_ms, min_ms, mean_ms;
    long early; /* arrived before their deadline: must be 0 */
};

/* Everything measured for one --sync mode. */
struct sync_result {
    const char *sync;
    struct mode_result base;    /* the jobs suite */
    struct mode_result pending; /* the same runs with o->pending deadlines pending */
    struct accuracy acc;
};

/* ------------------------------------------------------------------ a session */

/* What every run has: corrald, the workers, one client with a root group subscribed to
 * for its JOB_ENDED events. */
struct session {
    struct broker b;
    struct pool pool;
    struct corral_client *c;
    char group[CORRAL_ID_MAX];
    double pending_open_s; /* time to open the pending groups */
    long rss_ready_kib;    /* corrald's VmRSS once ready */
    long rss_loaded_kib;   /* and with the pending groups open */
};

/* Opens pending root groups with deadlines an hour away, from PENDING_CLIENTS clients at
 * once (corrald commits what arrives in one turn together), and times it. */
static int
open_pending(struct session *s, long pending)
{
    struct openers op;
    int rc = openers_start(&op, s->b.client_ep, NULL, pending, PENDING_CLIENTS, false);

    if (rc == 0)
        rc = openers_join(&op);
    if (rc == 0)
        s->pending_open_s = (double)(op.t1_us - op.t0_us) / 1e6;
    return rc;
}

/* Starts a session; with pending > 0, corrald has that many groups with a far deadline
 * open before anything else. */
static int
session_open(struct session *s, const struct opts *o, const char *sync, long pending)
{
    int rc;

    memset(s, 0, sizeof *s);
    if (start_corrald(&s->b, o, sync) != 0)
        return -1;
    s->rss_ready_kib = proc_rss_kib(s->b.pid);
    if (pending > 0 && open_pending(s, pending) != 0)
        return -1;
    s->rss_loaded_kib = proc_rss_kib(s->b.pid);
    if (pool_start(&s->pool, s->b.worker_ep, o->workers, o->concurrency, KIND, NULL, 0) != 0)
        return -1;
    rc = corral_client_new(&s->c, s->b.client_ep, CLIENT_TIMEOUT_MS);
    if (rc != CORRAL_OK) {
        fprintf(stderr, "corral-bench: corral_client_new: %s\n", corral_strerror(rc));
        return -1;
    }
    rc = corral_group_open(s->c, NULL, NULL, s->group, NULL);
    /* Only results are counted: the other events would cost both sides for nothing. */
    if (rc == CORRAL_OK)
        rc = corral_subscribe_events(s->c, s->group, 1u << CORRAL_EVENT_JOB_ENDED);
    if (rc != CORRAL_OK) {
        fprintf(stderr, "corral-bench: opening the group: %s: %s\n", corral_strerror(rc),
                corral_client_last_error(s->c));
        return -1;
    }
    /* The workers connect on their own; give them time to register so the clock does
     * not measure start-up. */
    sleep_ms(SETTLE_MS);
    return bench_interrupted ? -1 : 0;
}

/* Ends a session: on success (ok) checks that the workers ran exactly jobs jobs, stops
 * corrald cleanly and reads its counters into st; always cleans up. Returns -1 if ok was
 * false or anything failed here. */
static int
session_close(struct session *s, bool ok, long jobs, struct broker_stats *st)
{
    int rc = ok ? 0 : -1;
    unsigned long done = 0;

    if (pool_stop(&s->pool, &done) != 0)
        rc = -1;
    if (rc == 0 && done != (unsigned long)jobs) {
        fprintf(stderr, "corral-bench: the workers ran %lu jobs for %ld submitted\n", done, jobs);
        rc = -1;
    }
    corral_client_free(&s->c);
    if (s->b.pid > 0 && rc == 0 && broker_stop(&s->b, st) != 0)
        rc = -1;
    broker_cleanup(&s->b);
    return rc;
}

/* Takes every pipelined reply that has arrived; each must be an acknowledged,
 * not-cancelled submission with a new id. */
static int
take_replies(struct corral_client *c, struct idtab *t, long *replies)
{
    struct corral_submit_result res;
    int rc;

    while ((rc = corral_submit_collect(c, 0, &res)) == CORRAL_OK) {
        if (res.err != CORRAL_OK) {
            fprintf(stderr, "corral-bench: submit refused: %s\n", corral_strerror(res.err));
            return -1;
        }
        if (res.cancelled) {
            fprintf(stderr, "corral-bench: job %s recorded cancelled at submission\n", res.id);
            return -1;
        }
        if (!idtab_add(t, res.id)) {
            fprintf(stderr, "corral-bench: job id %s given twice\n", res.id);
            return -1;
        }
        (*replies)++;
    }
    if (rc != CORRAL_ETIMEDOUT) {
        fprintf(stderr, "corral-bench: corral_submit_collect: %s\n", corral_strerror(rc));
        return -1;
    }
    return 0;
}

/* Counts one event: 1 for the first SUCCEEDED end of a job submitted in this run, 0 for an
 * event that is not a job's end, -1 for anything wrong. */
static int
count_event(struct corral_client *c, struct idtab *t, long *replies, const struct corral_event *ev)
{
    const struct corral_node *n = ev->node;

    if (ev->type != CORRAL_EVENT_JOB_ENDED)
        return 0;
    if (n == NULL || n->type != CORRAL_NODE_JOB || n->id == NULL) {
        fprintf(stderr, "corral-bench: malformed JOB_ENDED event\n");
        return -1;
    }
    if (n->outcome != CORRAL_OUTCOME_SUCCEEDED) {
        const char *o = corral_outcome_name(n->outcome);
        fprintf(stderr, "corral-bench: job %s ended %s\n", n->id,
                o != NULL ? o : "without outcome");
        return -1;
    }
    struct slot *s = idtab_find(t, n->id);
    if (s->state == SLOT_EMPTY) {
        /* Its submit reply precedes it on the socket: it may still be in the ring. */
        if (take_replies(c, t, replies) != 0)
            return -1;
        s = idtab_find(t, n->id);
    }
    if (s->state == SLOT_EMPTY) {
        fprintf(stderr, "corral-bench: result for job %s, which was never acknowledged\n", n->id);
        return -1;
    }
    if (s->state == SLOT_ENDED) {
        fprintf(stderr, "corral-bench: job %s ended twice\n", n->id);
        return -1;
    }
    s->state = SLOT_ENDED;
    return 1;
}

/* corrald's CPU time for a measured span: over its whole life (wait4), as the jobs suite
 * counts it; but with pending groups, whose opening its life includes, during the span only
 * (/proc, in clock ticks). */
static double
corrald_cpu_s(const struct mode_result *r, const struct broker_stats *st, const struct usage *u)
{
    return r->pending > 0 && u->broker_cpu_s >= 0 ? u->broker_cpu_s : st->cpu_s;
}

/* The pipelined run, on a corrald with pending (0: no) groups with a far deadline open. */
static int
run_throughput(const struct opts *o, const char *sync, long pending, struct mode_result *r)
{
    struct session s;
    struct idtab t = {0};
    long submitted = 0, replies = 0, ended = 0;
    uint64_t t0 = 0, t1 = 0;
    long idle_waits = 0;
    bool ok = false;
    int rc;

    if (idtab_init(&t, (size_t)o->jobs) != 0) {
        fprintf(stderr, "corral-bench: out of memory\n");
        return -1;
    }
    if (session_open(&s, o, sync, pending) != 0)
        goto out;
    usage_begin(&r->tp_use, s.b.pid);
    t0 = clock_mono_us();
    while (ended < o->jobs) {
        long before = ended;
        bool room = true;
        int timeout;

        if (must_stop())
            goto out;
        for (long k = 0; k < o->burst; k++) {
            uint64_t token;

            room = submitted < o->jobs && submitted - ended < o->window;
            if (!room)
                break;
            rc = corral_submit_async(s.c, s.group, KIND, NULL, 0, &token);
            if (rc != CORRAL_OK) {
                fprintf(stderr, "corral-bench: corral_submit_async: %s: %s\n", corral_strerror(rc),
                        corral_client_last_error(s.c));
                goto out;
            }
            submitted++;
        }
        room = submitted < o->jobs && submitted - ended < o->window;
        /* Nothing more to submit now: wait for results instead of spinning. */
        timeout = room ? 0 : WAIT_MS;
        if (take_replies(s.c, &t, &replies) != 0)
            goto out;
        for (;;) {
            struct corral_event *ev = NULL;

            rc = corral_next_event(s.c, timeout, &ev);
            if (rc == CORRAL_ETIMEDOUT)
                break;
            if (rc != CORRAL_OK) {
                fprintf(stderr, "corral-bench: corral_next_event: %s\n", corral_strerror(rc));
                goto out;
            }
            timeout = 0;
            int n = count_event(s.c, &t, &replies, ev);
            corral_event_free(&ev);
            if (n < 0)
                goto out;
            ended += n;
            if (ended == o->jobs)
                break;
        }
        /* Each empty wait lasted WAIT_MS. */
        idle_waits = ended == before && timeout > 0 ? idle_waits + 1 : 0;
        if (idle_waits * WAIT_MS >= STALL_MS) {
            fprintf(stderr,
                    "corral-bench: no result for %d s (%ld submitted, %ld acknowledged, "
                    "%ld ended)\n",
                    STALL_MS / 1000, submitted, replies, ended);
            goto out;
        }
    }
    t1 = clock_mono_us();
    usage_end(&r->tp_use);
    r->rss_end_kib = proc_rss_kib(s.b.pid);
    if (take_replies(s.c, &t, &replies) != 0)
        goto out;
    if (replies != o->jobs || submitted != o->jobs) {
        fprintf(stderr, "corral-bench: %ld submitted, %ld acknowledged, %ld ended\n", submitted,
                replies, ended);
        goto out;
    }
    ok = true;
out:
    if (session_close(&s, ok, o->jobs, &r->tp) != 0)
        ok = false;
    idtab_fini(&t);
    if (!ok)
        return -1;
    r->pending = pending;
    r->pending_open_s = s.pending_open_s;
    r->rss_ready_kib = s.rss_ready_kib;
    r->rss_loaded_kib = s.rss_loaded_kib;
    r->jobs = ended;
    r->elapsed_s = (double)(t1 - t0) / 1e6;
    r->jobs_per_s = (double)ended / r->elapsed_s;
    r->commits_per_s = (double)r->tp.commits / r->elapsed_s;
    r->jobs_per_commit = r->tp.commits > 0 ? (double)ended / (double)r->tp.commits : 0;
    r->rows_per_commit = r->tp.commits > 0 ? (double)r->tp.rows / (double)r->tp.commits : 0;
    r->corrald_us_per_job = corrald_cpu_s(r, &r->tp, &r->tp_use) * 1e6 / (double)ended;
    r->bench_us_per_job = r->tp_use.bench_cpu_s * 1e6 / (double)ended;
    usage_shares(&r->tp_use, corrald_cpu_s(r, &r->tp, &r->tp_use));
    return 0;
}

static int
cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int
cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* The index of the nearest-rank percentile q (0..1] in a sorted array of n (> 0). */
static size_t
rank_index(size_t n, double q)
{
    size_t rank = (size_t)(q * (double)n + 0.999999);

    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return rank - 1;
}

/* The nearest-rank percentile q (0..1] of sorted v[0..n). */
static double
percentile(const uint64_t *v, size_t n, double q)
{
    return (double)v[rank_index(n, q)];
}

/* The one-job-at-a-time run, on a corrald with pending (0: no) groups with a far deadline
 * open. Runs after run_throughput with the same pending, into the same r. */
static int
run_rtt(const struct opts *o, const char *sync, long pending, struct mode_result *r)
{
    struct session s;
    long total = o->warmup + o->rtt;
    uint64_t *samples = calloc((size_t)o->rtt, sizeof *samples);
    bool ok = false;

    if (samples == NULL) {
        fprintf(stderr, "corral-bench: out of memory\n");
        return -1;
    }
    if (session_open(&s, o, sync, pending) != 0)
        goto out;
    r->rt_pending_open_s = s.pending_open_s;
    usage_begin(&r->rt_use, s.b.pid);
    for (long i = 0; i < total; i++) {
        char id[CORRAL_ID_MAX];
        bool cancelled = false, seen = false;
        uint64_t start = clock_mono_us();
        int rc = corral_submit(s.c, s.group, KIND, NULL, 0, id, &cancelled);

        if (rc != CORRAL_OK || cancelled) {
            fprintf(stderr, "corral-bench: corral_submit: %s\n",
                    rc != CORRAL_OK ? corral_client_last_error(s.c) : "recorded cancelled");
            goto out;
        }
        for (int waited = 0; !seen;) {
            struct corral_event *ev = NULL;

            if (must_stop())
                goto out;
            rc = corral_next_event(s.c, WAIT_MS, &ev);
            if (rc == CORRAL_ETIMEDOUT && (waited += WAIT_MS) < CLIENT_TIMEOUT_MS)
                continue;
            if (rc != CORRAL_OK) {
                fprintf(stderr, "corral-bench: waiting for job %s: %s\n", id, corral_strerror(rc));
                goto out;
            }
            if (ev->type == CORRAL_EVENT_JOB_ENDED && ev->node != NULL &&
                ev->node->type == CORRAL_NODE_JOB && ev->node->id != NULL &&
                strcmp(ev->node->id, id) == 0) {
                if (ev->node->outcome != CORRAL_OUTCOME_SUCCEEDED) {
                    fprintf(stderr, "corral-bench: job %s did not succeed\n", id);
                    corral_event_free(&ev);
                    goto out;
                }
                seen = true;
            }
            corral_event_free(&ev);
        }
        uint64_t end = clock_mono_us();
        if (i >= o->warmup)
            samples[i - o->warmup] = end - start;
    }
    usage_end(&r->rt_use);
    ok = true;
out:
    if (session_close(&s, ok, total, &r->rt) != 0)
        ok = false;
    if (ok) {
        size_t n = (size_t)o->rtt;
        double sum = 0;

        qsort(samples, n, sizeof *samples, cmp_u64);
        for (size_t i = 0; i < n; i++)
            sum += (double)samples[i];
        r->rtt_runs = o->rtt;
        r->rtt_min_us = (double)samples[0];
        r->rtt_p50_us = percentile(samples, n, 0.50);
        r->rtt_p90_us = percentile(samples, n, 0.90);
        r->rtt_p99_us = percentile(samples, n, 0.99);
        r->rtt_max_us = (double)samples[n - 1];
        r->rtt_mean_us = sum / (double)n;
        r->rtt_commits_per_job = (double)r->rt.commits / (double)total;
        usage_shares(&r->rt_use, corrald_cpu_s(r, &r->rt, &r->rt_use));
    }
    free(samples);
    return ok ? 0 : -1;
}

/* Checks one event of the accuracy run: the GROUP_CANCELLING of a child of root whose own
 * deadline fired, seen for the first time. Returns 0, or -1 after saying what is wrong. */
static int
check_deadline_event(const struct corral_event *ev, const char *root, struct idtab *seen)
{
    const struct corral_node *n = ev->node;

    if (ev->type != CORRAL_EVENT_GROUP_CANCELLING || n == NULL || n->type != CORRAL_NODE_GROUP ||
        n->id == NULL || n->parent == NULL || strcmp(n->parent, root) != 0) {
        fprintf(stderr, "corral-bench: unexpected event %d for %s\n", (int)ev->type,
                n != NULL && n->id != NULL ? n->id : "no node");
        return -1;
    }
    if (n->cancel_source != CORRAL_SOURCE_DEADLINE || n->deadline_unix_ms == 0 ||
        n->on_deadline != CORRAL_ON_DEADLINE_MOVE_ON) {
        const char *src = corral_source_name(n->cancel_source);
        fprintf(stderr, "corral-bench: group %s cancelled by %s (deadline %llu)\n", n->id,
                src != NULL ? src : "nothing", (unsigned long long)n->deadline_unix_ms);
        return -1;
    }
    if (!idtab_add(seen, n->id)) {
        fprintf(stderr, "corral-bench: group %s cancelled twice\n", n->id);
        return -1;
    }
    return 0;
}

/* The accuracy run: o->deadlines groups under one root subscribed to for GROUP_CANCELLING,
 * opened one after the other by another client (a thread) with move-on deadlines 200 ms to
 * 2 s after each open, while this one takes the events as they come. Lateness is the wall
 * time an event is taken minus the group's deadline (which the event carries): one hop
 * from corrald included, and, under --sync full, the commit before corrald sends it. */
static int
run_accuracy(const struct opts *o, const char *sync, struct accuracy *r)
{
    struct broker b;
    struct corral_client *c = NULL;
    struct openers op = {0};
    struct idtab seen = {0};
    char root[CORRAL_ID_MAX];
    long n = o->deadlines, got = 0, idle_waits = 0;
    int64_t *late = calloc((size_t)n, sizeof *late);
    bool ok = false;
    int rc;

    memset(&b, 0, sizeof b);
    if (late == NULL || idtab_init(&seen, (size_t)n) != 0) {
        fprintf(stderr, "corral-bench: out of memory\n");
        goto out;
    }
    if (start_corrald(&b, o, sync) != 0)
        goto out;
    rc = corral_client_new(&c, b.client_ep, CLIENT_TIMEOUT_MS);
    if (rc == CORRAL_OK)
        rc = corral_group_open(c, NULL, NULL, root, NULL);
    if (rc == CORRAL_OK)
        rc = corral_subscribe_events(c, root, 1u << CORRAL_EVENT_GROUP_CANCELLING);
    if (rc != CORRAL_OK) {
        fprintf(stderr, "corral-bench: opening the root group: %s: %s\n", corral_strerror(rc),
                c != NULL ? corral_client_last_error(c) : "");
        goto out;
    }
    if (openers_start(&op, b.client_ep, root, n, 1, true) != 0)
        goto out;
    while (got < n) {
        struct corral_event *ev = NULL;

        if (must_stop())
            goto out;
        rc = corral_next_event(c, WAIT_MS, &ev);
        int64_t now = wall_us();
        if (rc == CORRAL_ETIMEDOUT) {
            if (++idle_waits * WAIT_MS >= STALL_MS) {
                fprintf(stderr, "corral-bench: no deadline fired for %d s (%ld of %ld)\n",
                        STALL_MS / 1000, got, n);
                goto out;
            }
            continue;
        }
        if (rc != CORRAL_OK) {
            fprintf(stderr, "corral-bench: corral_next_event: %s\n", corral_strerror(rc));
            goto out;
        }
        idle_waits = 0;
        if (check_deadline_event(ev, root, &seen) != 0) {
            corral_event_free(&ev);
            goto out;
        }
        late[got++] = now - (int64_t)ev->node->deadline_unix_ms * 1000;
        corral_event_free(&ev);
    }
    if (openers_join(&op) != 0)
        goto out;
    r->open_s = (double)(op.t1_us - op.t0_us) / 1e6;
    ok = true;
out:
    if (openers_join(&op) != 0)
        ok = false;
    corral_client_free(&c);
    if (ok && b.pid > 0) {
        struct broker_stats st;
        if (broker_stop(&b, &st) != 0)
            ok = false;
    }
    broker_cleanup(&b);
    if (ok) {
        double sum = 0;

        qsort(late, (size_t)n, sizeof *late, cmp_i64);
        for (long i = 0; i < n; i++) {
            sum += (double)late[i];
            if (late[i] < 0)
                r->early++;
        }
        r->groups = n;
        r->min_ms = (double)late[0] / 1e3;
        r->p50_ms = (double)late[rank_index((size_t)n, 0.50)] / 1e3;
        r->p90_ms = (double)late[rank_index((size_t)n, 0.90)] / 1e3;
        r->p99_ms = (double)late[rank_index((size_t)n, 0.99)] / 1e3;
        r->max_ms = (double)late[n - 1] / 1e3;
        r->mean_ms = sum / (double)n / 1e3;
        if (r->early > 0) {
            fprintf(stderr, "corral-bench: %ld deadlines fired early (by up to %.3f ms)\n",
                    r->early, -r->min_ms);
            ok = false;
        }
    }
    idtab_fini(&seen);
    free(late);
    r->ok = ok;
    return ok ? 0 : -1;
}

/* ------------------------------------------------------------------ output */

static const char *
transport(const struct opts *o)
{
    return o->tcp ? "tcp" : "ipc";
}

static void
print_text(const struct opts *o, const struct mode_result *r)
{
    printf("sync=%s transport=%s workers=%d concurrency=%u window=%ld\n", r->sync, transport(o),
           o->workers, o->concurrency, o->window);
    printf("  throughput: %ld jobs in %.3f s = %.0f jobs/s end to end\n", r->jobs, r->elapsed_s,
           r->jobs_per_s);
    printf("  corrald:    %llu commits = %.0f commits/s, %.1f jobs per commit "
           "(%llu rows, %.1f per commit; %llu turns)\n",
           r->tp.commits, r->commits_per_s, r->jobs_per_commit, r->tp.rows, r->rows_per_commit,
           r->tp.turns);
    printf("  cpu:        corrald %.1f us/job, bench %.1f us/job (client and workers); "
           "machine %.0f%% busy (other processes %.0f%%, steal %.0f%%)\n",
           r->corrald_us_per_job, r->bench_us_per_job, 100 * r->tp_use.busy, 100 * r->tp_use.other,
           100 * r->tp_use.steal);
    printf("  round trip: %ld runs after %ld warm-up: p50 %.0f us, p90 %.0f us, p99 %.0f us, "
           "max %.0f us (min %.0f, mean %.0f; %.2f commits per job)\n",
           r->rtt_runs, o->warmup, r->rtt_p50_us, r->rtt_p90_us, r->rtt_p99_us, r->rtt_max_us,
           r->rtt_min_us, r->rtt_mean_us, r->rtt_commits_per_job);
    printf("              machine %.0f%% busy during them (other processes %.0f%%, steal %.0f%%)\n",
           100 * r->rt_use.busy, 100 * r->rt_use.other, 100 * r->rt_use.steal);
    fflush(stdout);
}

/* The change from base to v in percent. */
static double
change_pct(double base, double v)
{
    return base != 0 ? 100 * (v - base) / base : 0;
}

static double
mib(long kib)
{
    return (double)kib / 1024;
}

/* corrald's CPU time per job during the throughput run (from /proc; -1 when unknown):
 * the one measure both runs of the pending comparison have. */
static double
run_us_per_job(const struct mode_result *r)
{
    return r->tp_use.broker_cpu_s >= 0 ? r->tp_use.broker_cpu_s * 1e6 / (double)r->jobs : -1;
}

/* The runs with pending deadlines, against the same runs without (base). */
static void
print_pending(const struct mode_result *base, const struct mode_result *r)
{
    printf("  pending:    %ld groups with a deadline 1 h away, opened in %.1f s = %.0f groups/s "
           "by %d clients (%.1f s for the round-trip corrald)\n",
           r->pending, r->pending_open_s, (double)r->pending / r->pending_open_s, PENDING_CLIENTS,
           r->rt_pending_open_s);
    printf("              corrald VmRSS %.1f MiB ready, %.1f MiB with them open, %.1f MiB after "
           "the throughput run (none pending: %.1f MiB after it)\n",
           mib(r->rss_ready_kib), mib(r->rss_loaded_kib), mib(r->rss_end_kib),
           mib(base->rss_end_kib));
    printf("  throughput: %ld jobs in %.3f s = %.0f jobs/s end to end with them pending "
           "(none pending: %.0f jobs/s, %+.1f%%)\n",
           r->jobs, r->elapsed_s, r->jobs_per_s, base->jobs_per_s,
           change_pct(base->jobs_per_s, r->jobs_per_s));
    printf("  cpu:        corrald %.1f us/job during the run (none pending: %.1f), bench %.1f "
           "us/job; machine %.0f%% busy (other processes %.0f%%, steal %.0f%%)\n",
           run_us_per_job(r), run_us_per_job(base), r->bench_us_per_job, 100 * r->tp_use.busy,
           100 * r->tp_use.other, 100 * r->tp_use.steal);
    printf("  round trip: p50 %.0f us (none pending: %.0f, %+.1f%%), p99 %.0f us (%.0f, %+.1f%%), "
           "max %.0f us (%.0f); machine %.0f%% busy\n",
           r->rtt_p50_us, base->rtt_p50_us, change_pct(base->rtt_p50_us, r->rtt_p50_us),
           r->rtt_p99_us, base->rtt_p99_us, change_pct(base->rtt_p99_us, r->rtt_p99_us),
           r->rtt_max_us, base->rtt_max_us, 100 * r->rt_use.busy);
    fflush(stdout);
}

static void
print_accuracy(const struct accuracy *a)
{
    printf("  deadlines:  %ld move-on deadlines %d-%d ms after their open (all open in %.1f s); "
           "GROUP_CANCELLING reaches the subscriber late by p50 %.2f ms, p90 %.2f ms, "
           "p99 %.2f ms, max %.2f ms (min %.2f, mean %.2f); early: %ld\n",
           a->groups, ACCURACY_MIN_MS, ACCURACY_MAX_MS, a->open_s, a->p50_ms, a->p90_ms, a->p99_ms,
           a->max_ms, a->min_ms, a->mean_ms, a->early);
    fflush(stdout);
}

/* The members of the deadlines suite in a mode's JSON object (each null if it failed). */
static void
print_json_deadlines(const struct opts *o, const struct sync_result *sr)
{
    const struct mode_result *b = &sr->base, *r = &sr->pending;
    const struct accuracy *a = &sr->acc;

    printf(", \"rss_end_kib\": %ld, \"corrald_run_cpu_us_per_job\": %.1f", b->rss_end_kib,
           run_us_per_job(b));
    if (o->pending > 0 && r->ok)
        printf(", \"pending\": {\"groups\": %ld, \"open_s\": %.3f, \"rtt_open_s\": %.3f, "
               "\"rss_ready_kib\": %ld, \"rss_loaded_kib\": %ld, \"rss_end_kib\": %ld, "
               "\"jobs_per_s\": %.1f, \"elapsed_s\": %.6f, \"corrald_run_cpu_us_per_job\": %.1f, "
               "\"bench_cpu_us_per_job\": %.1f, \"machine_busy\": %.2f, "
               "\"other_cpu_share\": %.2f, \"steal_share\": %.2f, \"rtt_p50_us\": %.0f, "
               "\"rtt_p90_us\": %.0f, \"rtt_p99_us\": %.0f, \"rtt_max_us\": %.0f, "
               "\"rtt_min_us\": %.0f, \"rtt_mean_us\": %.1f, \"rtt_machine_busy\": %.2f}",
               r->pending, r->pending_open_s, r->rt_pending_open_s, r->rss_ready_kib,
               r->rss_loaded_kib, r->rss_end_kib, r->jobs_per_s, r->elapsed_s, run_us_per_job(r),
               r->bench_us_per_job, r->tp_use.busy, r->tp_use.other, r->tp_use.steal, r->rtt_p50_us,
               r->rtt_p90_us, r->rtt_p99_us, r->rtt_max_us, r->rtt_min_us, r->rtt_mean_us,
               r->rt_use.busy);
    else if (o->pending > 0)
        printf(", \"pending\": null");
    if (o->deadlines > 0 && a->ok)
        printf(", \"deadline_accuracy\": {\"groups\": %ld, \"min_away_ms\": %d, "
               "\"max_away_ms\": %d, \"open_s\": %.3f, \"lateness_p50_ms\": %.3f, "
               "\"lateness_p90_ms\": %.3f, \"lateness_p99_ms\": %.3f, \"lateness_max_ms\": %.3f, "
               "\"lateness_min_ms\": %.3f, \"lateness_mean_ms\": %.3f, \"early\": %ld}",
               a->groups, ACCURACY_MIN_MS, ACCURACY_MAX_MS, a->open_s, a->p50_ms, a->p90_ms,
               a->p99_ms, a->max_ms, a->min_ms, a->mean_ms, a->early);
    else if (o->deadlines > 0)
        printf(", \"deadline_accuracy\": null");
}

static void
print_json(const struct opts *o, const struct sync_result *rs, int nr, bool ok)
{
    printf("{\"ok\": %s, \"jobs\": %ld, \"workers\": %d, \"concurrency\": %u, \"window\": %ld, "
           "\"burst\": %ld, \"rtt_runs\": %ld, \"warmup\": %ld, \"transport\": \"%s\"",
           ok ? "true" : "false", o->jobs, o->workers, o->concurrency, o->window, o->burst, o->rtt,
           o->warmup, transport(o));
    if (o->deadlines_suite)
        printf(", \"suite\": \"deadlines\", \"pending\": %ld, \"deadlines\": %ld", o->pending,
               o->deadlines);
    for (int i = 0; i < nr; i++) {
        const struct mode_result *r = &rs[i].base;
        if (!r->ok) {
            printf(", \"%s\": null", r->sync);
            continue;
        }
        printf(", \"%s\": {\"jobs_per_s\": %.1f, \"elapsed_s\": %.6f, \"commits\": %llu, "
               "\"commits_per_s\": %.1f, \"jobs_per_commit\": %.2f, \"rows\": %llu, "
               "\"rows_per_commit\": %.2f, \"turns\": %llu, ",
               r->sync, r->jobs_per_s, r->elapsed_s, r->tp.commits, r->commits_per_s,
               r->jobs_per_commit, r->tp.rows, r->rows_per_commit, r->tp.turns);
        printf("\"corrald_cpu_us_per_job\": %.1f, \"bench_cpu_us_per_job\": %.1f, "
               "\"machine_busy\": %.2f, \"other_cpu_share\": %.2f, \"steal_share\": %.2f, ",
               r->corrald_us_per_job, r->bench_us_per_job, r->tp_use.busy, r->tp_use.other,
               r->tp_use.steal);
        printf("\"rtt_p50_us\": %.0f, \"rtt_p90_us\": %.0f, \"rtt_p99_us\": %.0f, "
               "\"rtt_max_us\": %.0f, \"rtt_min_us\": %.0f, \"rtt_mean_us\": %.1f, "
               "\"rtt_commits_per_job\": %.2f, \"rtt_machine_busy\": %.2f, "
               "\"rtt_other_cpu_share\": %.2f, \"rtt_steal_share\": %.2f",
               r->rtt_p50_us, r->rtt_p90_us, r->rtt_p99_us, r->rtt_max_us, r->rtt_min_us,
               r->rtt_mean_us, r->rtt_commits_per_job, r->rt_use.busy, r->rt_use.other,
               r->rt_use.steal);
        if (o->deadlines_suite)
            print_json_deadlines(o, &rs[i]);
        printf("}");
    }
    printf("}\n");
}

int
main(int argc, char **argv)
{
    struct opts o;
    struct sync_result rs[2];
    int nr = 0, rc;
    bool ok = true;

    rc = parse_args(argc, argv, &o);
    if (rc != 0)
        return rc;
    bench_catch_signals();

    memset(rs, 0, sizeof rs);
    for (int m = SYNC_FULL; m <= SYNC_NORMAL && ok && !bench_interrupted; m <<= 1) {
        if (!(o.sync_mask & m))
            continue;
        struct sync_result *sr = &rs[nr++];
        struct mode_result *r = &sr->base;
        sr->sync = m == SYNC_FULL ? "full" : "normal";
        r->sync = sr->pending.sync = sr->sync;
        r->ok = run_throughput(&o, r->sync, 0, r) == 0 && run_rtt(&o, r->sync, 0, r) == 0;
        if (!r->ok) {
            ok = false;
            break;
        }
        if (!o.json)
            print_text(&o, r);
        if (!o.deadlines_suite)
            continue;
        if (o.pending > 0) {
            struct mode_result *p = &sr->pending;
            p->ok = run_throughput(&o, sr->sync, o.pending, p) == 0 &&
                    run_rtt(&o, sr->sync, o.pending, p) == 0;
            if (!p->ok) {
                ok = false;
                break;
            }
            if (!o.json)
                print_pending(r, p);
        }
        if (o.deadlines > 0) {
            if (run_accuracy(&o, sr->sync, &sr->acc) != 0) {
                ok = false;
                break;
            }
            if (!o.json)
                print_accuracy(&sr->acc);
        }
    }
    if (bench_interrupted)
        ok = false;
    if (o.json)
        print_json(&o, rs, nr, ok);
    return ok ? 0 : 1;
}
