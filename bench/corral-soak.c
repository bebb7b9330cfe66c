/* corral-soak - the soak benchmark of retention (S12: "ended trees are purged after a
 * retention period, so the database does not grow without bound"): starts its own corrald
 * with a short --retention, pushes --jobs no-op jobs through it as a stream of root groups
 * of --group-size jobs, and samples corrald's memory and database as it goes.
 *
 * The client keeps --in-flight groups going at once; for each it opens a root group,
 * subscribes to it (GROUP_ENDED only), submits its jobs with corral_submit_async (replies
 * collected as they come, at most --window uncollected), closes it and, when the group's
 * GROUP_ENDED arrives, requires SUCCEEDED. --workers threads each run a corral_worker
 * (kind "noop", --concurrency) that answers every job at once with a two-byte result.
 *
 * Every --sample jobs (of ended groups) it prints corrald's VmRSS and VmHWM, the sizes of
 * corral.db and corral.db-wal and the root groups corrald still holds: the ones in flight
 * plus the ended ones it has not purged, found by closing each again (closing an ended
 * group changes nothing; a purged one is not found). After the last group it waits
 * retention + 2 s with no load, samples once more, stops corrald with SIGTERM (exit status
 * 0 required) and judges: "flat" when that last sample's RSS and db+wal size are at most
 * FLAT_RATIO times those of the first sample after warm-up, and no ended root is held;
 * otherwise "GREW".
 *
 * Exit status: 0 flat; 1 GREW, a group that did not succeed, a failed call, a stall, or
 * corrald not exiting 0; 64 on a usage error. */
#include "bench_util.h"
#include "clock.h"
#include "corral.h"
#include "duration.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define EXIT_USAGE        64
#define KIND              "noop"
#define RESULT            "ok"  /* what every job answers */
#define CLIENT_TIMEOUT_MS 10000 /* bounds each blocking libcorral call */
#define STALL_MS          30000 /* no group ended for this long: the run failed */
#define WAIT_MS           100   /* one wait for events when nothing can be submitted */
#define SETTLE_MS         200   /* lets the workers register before the clock starts */
#define IDLE_EXTRA_MS     2000  /* the idle wait at the end: retention + this */
#define COLLECT_EVERY     64    /* submits between two looks at their replies */
#define FLAT_RATIO        1.25  /* the verdict's bound, against the warm-up sample */
/* corrald's bounds on queued jobs: far above what the client keeps in flight, so that
 * BUSY never happens (it would fail the run). */
#define MAX_QUEUED "10000000"

/* ------------------------------------------------------------------ options */

struct opts {
    long jobs;
    long group_size;
    long in_flight; /* root groups going at once */
    long window;    /* submits whose reply is not collected, at most */
    long sample;    /* jobs between two samples */
    long warmup;    /* jobs before the baseline sample, at least */
    int workers;
    unsigned concurrency;
    uint64_t retention_ms;
    const char *retention; /* as given, for corrald */
    const char *sync;
    const char *log_level;
    bool json;
    bool tcp;
    bool keep;
    char corrald[PATH_MAX];
};

static void
usage(FILE *f)
{
    fputs("usage: corral-soak [OPTION]...\n"
          "Starts a private corrald with a short --retention, runs no-op jobs through it as a\n"
          "stream of root groups and shows that its memory and database stay flat.\n\n"
          "  --jobs N          jobs in all (default 1000000)\n"
          "  --group-size N    jobs per root group (default 1000)\n"
          "  --in-flight G     root groups going at once (default 4)\n"
          "  --window N        most submits whose reply is not collected (default 5000)\n"
          "  --sample N        jobs between two samples (default 100000)\n"
          "  --warmup N        jobs before the baseline sample, which is also taken no earlier\n"
          "                    than 2 x retention into the run (default 2 x --sample)\n"
          "  --workers W       worker threads, one corral_worker each (default 4)\n"
          "  --concurrency C   concurrency of each worker (default 64)\n"
          "  --retention D     corrald's --retention (default 2s; units ms s m h d)\n"
          "  --sync MODE       corrald's --sync: normal (default) or full\n"
          "  --log-level L     corrald's --log-level (default info; see --keep)\n"
          "  --tcp             tcp://127.0.0.1 on free ports instead of ipc:// endpoints\n"
          "  --corrald PATH    the broker (default: ../broker/corrald next to this program)\n"
          "  --keep            keep the temporary directory (database and corrald's log)\n"
          "  --json            print one JSON object instead of text\n"
          "  --help            print this text\n",
          f);
}

enum parsed { PARSED, UNKNOWN, NO_VALUE, INVALID };

/* The options that take a value. */
static bool
takes_value(const char *a)
{
    static const char *const names[] = {
        "--jobs",    "--group-size",  "--in-flight", "--window", "--sample",    "--warmup",
        "--workers", "--concurrency", "--retention", "--sync",   "--log-level", "--corrald"};

    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(a, names[i]) == 0)
            return true;
    return false;
}

/* Applies option a with value v (NULL when there is none). Sets *takes when the option
 * consumed v. */
static enum parsed
parse_one(struct opts *o, const char *a, const char *v, bool *takes)
{
    long n;
    bool ok = true;

    *takes = false;
    if (strcmp(a, "--json") == 0)
        o->json = true;
    else if (strcmp(a, "--tcp") == 0)
        o->tcp = true;
    else if (strcmp(a, "--keep") == 0)
        o->keep = true;
    else if (v == NULL)
        return takes_value(a) ? NO_VALUE : UNKNOWN;
    else if (strcmp(a, "--jobs") == 0)
        ok = parse_count(v, 1, 1000000000, &o->jobs);
    else if (strcmp(a, "--group-size") == 0)
        ok = parse_count(v, 1, 1000000, &o->group_size);
    else if (strcmp(a, "--in-flight") == 0)
        ok = parse_count(v, 1, 10000, &o->in_flight);
    else if (strcmp(a, "--window") == 0)
        ok = parse_count(v, 1, 100000000, &o->window);
    else if (strcmp(a, "--sample") == 0)
        ok = parse_count(v, 1, 1000000000, &o->sample);
    else if (strcmp(a, "--warmup") == 0)
        ok = parse_count(v, 0, 1000000000, &o->warmup);
    else if (strcmp(a, "--workers") == 0) {
        ok = parse_count(v, 1, 1024, &n);
        o->workers = (int)n;
    } else if (strcmp(a, "--concurrency") == 0) {
        ok = parse_count(v, 1, 1000000, &n);
        o->concurrency = (unsigned)n;
    } else if (strcmp(a, "--retention") == 0) {
        ok = duration_parse_ms(v, &o->retention_ms) == 0 && o->retention_ms > 0;
        o->retention = v;
    } else if (strcmp(a, "--sync") == 0) {
        ok = strcmp(v, "normal") == 0 || strcmp(v, "full") == 0;
        o->sync = v;
    } else if (strcmp(a, "--log-level") == 0) {
        o->log_level = v; /* corrald checks it */
    } else if (strcmp(a, "--corrald") == 0) {
        ok = strlen(v) < sizeof o->corrald;
        if (ok)
            strcpy(o->corrald, v);
    } else
        return UNKNOWN;
    *takes = takes_value(a);
    return ok ? PARSED : INVALID;
}

/* Returns 0, or EXIT_USAGE after printing why. */
static int
parse_args(int argc, char **argv, struct opts *o)
{
    memset(o, 0, sizeof *o);
    o->jobs = 1000000;
    o->group_size = 1000;
    o->in_flight = 4;
    o->window = 5000;
    o->sample = 100000;
    o->warmup = -1;
    o->workers = 4;
    o->concurrency = 64;
    o->retention = "2s";
    o->retention_ms = 2000;
    o->sync = "normal";
    o->log_level = "info";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool takes;

        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        }
        switch (parse_one(o, a, v, &takes)) {
        case PARSED:
            break;
        case UNKNOWN:
            fprintf(stderr, "corral-soak: unknown option '%s' (see --help)\n", a);
            return EXIT_USAGE;
        case NO_VALUE:
            fprintf(stderr, "corral-soak: option %s needs a value\n", a);
            return EXIT_USAGE;
        case INVALID:
            fprintf(stderr, "corral-soak: invalid value '%s' for %s\n", v, a);
            return EXIT_USAGE;
        }
        if (takes)
            i++;
    }
    if (o->warmup < 0)
        o->warmup = 2 * o->sample;
    if (o->corrald[0] == '\0' && default_corrald(o->corrald, sizeof o->corrald) != 0) {
        fprintf(stderr, "corral-soak: cannot locate corrald; use --corrald PATH\n");
        return EXIT_USAGE;
    }
    if (access(o->corrald, X_OK) != 0) {
        fprintf(stderr, "corral-soak: %s: %s (use --corrald PATH)\n", o->corrald, strerror(errno));
        return EXIT_USAGE;
    }
    return 0;
}

/* ------------------------------------------------------------------ samples */

struct sample {
    long jobs;         /* jobs of ended groups */
    double elapsed_s;  /* since the first submit */
    double jobs_per_s; /* since the previous sample (0 for the idle one) */
    long rss_kib;      /* corrald's VmRSS */
    long hwm_kib;      /* and VmHWM */
    long long db;      /* bytes of corral.db */
    long long wal;     /* and of corral.db-wal */
    long roots_held;   /* root groups corrald holds: in flight, or ended but not purged */
    long roots_ended;  /* of which ended */
    bool idle;         /* taken after the idle wait */
};

static double
mib(double bytes)
{
    return bytes / (1024.0 * 1024.0);
}

static long long
db_wal(const struct sample *s)
{
    return s->db + s->wal;
}

static double
ratio(double base, double v)
{
    return base > 0 ? v / base : 0;
}

static void
print_header(void)
{
    printf("%10s %9s %9s %9s %9s %9s %9s %11s\n", "jobs", "elapsed", "jobs/s", "RSS MiB", "HWM MiB",
           "db MiB", "wal MiB", "roots held");
}

static void
print_sample(const struct sample *s)
{
    char rate[32];

    if (s->idle)
        snprintf(rate, sizeof rate, "idle");
    else
        snprintf(rate, sizeof rate, "%.0f", s->jobs_per_s);
    printf("%10ld %8.1fs %9s %9.1f %9.1f %9.1f %9.1f %6ld (%ld ended)\n", s->jobs, s->elapsed_s,
           rate, (double)s->rss_kib / 1024, (double)s->hwm_kib / 1024, mib((double)s->db),
           mib((double)s->wal), s->roots_held, s->roots_ended);
    fflush(stdout);
}

/* ------------------------------------------------------------------ the run */

/* A root group in flight: opened, its jobs submitted, closed; not yet ended. */
struct flight {
    char id[CORRAL_ID_MAX];
    long jobs;
    bool used;
};

/* An ended root group, until a probe finds it purged. */
struct held {
    char id[CORRAL_ID_MAX];
};

struct soak {
    const struct opts *o;
    struct broker b;
    struct pool pool;
    struct corral_client *c;
    char db_path[PATH_MAX + 32];
    char wal_path[PATH_MAX + 32];
    struct flight *flights; /* o->in_flight slots */
    long nflight;
    struct held *held; /* in the order they ended */
    size_t nheld, capheld;
    long submitted, acked, started_jobs, ended_jobs, groups_ended;
    uint64_t t0_us;
    struct sample *samples;
    size_t nsamples, capsamples;
    struct broker_stats st;
    unsigned long worker_done;
};

/* Takes every pipelined reply that has arrived, waiting up to timeout_ms for the first;
 * each must be an acknowledged, not-cancelled submission. */
static int
take_replies(struct soak *s, int timeout_ms)
{
    struct corral_submit_result res;
    int rc;

    while ((rc = corral_submit_collect(s->c, timeout_ms, &res)) == CORRAL_OK) {
        if (res.err != CORRAL_OK) {
            fprintf(stderr, "corral-soak: submit refused: %s\n", corral_strerror(res.err));
            return -1;
        }
        if (res.cancelled) {
            fprintf(stderr, "corral-soak: job %s recorded cancelled at submission\n", res.id);
            return -1;
        }
        s->acked++;
        timeout_ms = 0;
    }
    if (rc != CORRAL_ETIMEDOUT) {
        fprintf(stderr, "corral-soak: corral_submit_collect: %s\n", corral_strerror(rc));
        return -1;
    }
    return 0;
}

/* Says what went wrong with the blocking call what. Returns -1. */
static int
call_failed(const struct soak *s, const char *what, int rc)
{
    fprintf(stderr, "corral-soak: %s: %s: %s\n", what, corral_strerror(rc),
            corral_client_last_error(s->c));
    return -1;
}

/* Opens a root group in slot f, subscribes to its end, submits its jobs and closes it. */
static int
start_group(struct soak *s, struct flight *f)
{
    const struct opts *o = s->o;
    long n = o->jobs - s->started_jobs < o->group_size ? o->jobs - s->started_jobs : o->group_size;
    int rc = corral_group_open(s->c, NULL, NULL, f->id, NULL);

    if (rc != CORRAL_OK)
        return call_failed(s, "corral_group_open", rc);
    /* The group's own GROUP_ENDED always comes; nothing else is wanted. */
    rc = corral_subscribe_events(s->c, f->id, 1u << CORRAL_EVENT_GROUP_ENDED);
    if (rc != CORRAL_OK)
        return call_failed(s, "corral_subscribe_events", rc);
    for (long i = 0; i < n; i++) {
        uint64_t token;

        /* Uncollected replies stay within the window. */
        while ((long)corral_submit_pending(s->c) >= o->window)
            if (take_replies(s, WAIT_MS) != 0)
                return -1;
        rc = corral_submit_async(s->c, f->id, KIND, NULL, 0, &token);
        if (rc != CORRAL_OK)
            return call_failed(s, "corral_submit_async", rc);
        s->submitted++;
        if (i % COLLECT_EVERY == COLLECT_EVERY - 1 && take_replies(s, 0) != 0)
            return -1;
    }
    rc = corral_group_close(s->c, f->id);
    if (rc != CORRAL_OK)
        return call_failed(s, "corral_group_close", rc);
    f->jobs = n;
    f->used = true;
    s->nflight++;
    s->started_jobs += n;
    return 0;
}

/* Takes one event: the end of a group in flight, which must have succeeded. Returns 0 or
 * -1 after saying what is wrong. */
static int
take_event(struct soak *s, const struct corral_event *ev)
{
    const struct corral_node *n = ev->node;
    struct flight *f = NULL;

    if (ev->type != CORRAL_EVENT_GROUP_ENDED || n == NULL || n->id == NULL) {
        fprintf(stderr, "corral-soak: unexpected event %d for %s\n", (int)ev->type,
                n != NULL && n->id != NULL ? n->id : "no node");
        return -1;
    }
    for (long i = 0; i < s->o->in_flight; i++)
        if (s->flights[i].used && strcmp(s->flights[i].id, n->id) == 0)
            f = &s->flights[i];
    if (f == NULL) {
        fprintf(stderr, "corral-soak: GROUP_ENDED for %s, which is not in flight\n", n->id);
        return -1;
    }
    if (n->outcome != CORRAL_OUTCOME_SUCCEEDED) {
        const char *out = corral_outcome_name(n->outcome);
        fprintf(stderr, "corral-soak: group %s ended %s%s%s%s%s\n", n->id,
                out != NULL ? out : "without outcome", n->error != NULL ? ": " : "",
                n->error != NULL && n->error->type != NULL ? n->error->type : "",
                n->error != NULL ? ": " : "",
                n->error != NULL && n->error->message != NULL ? n->error->message : "");
        return -1;
    }
    if (s->nheld == s->capheld) {
        size_t cap = s->capheld ? 2 * s->capheld : 256;
        struct held *h = realloc(s->held, cap * sizeof *h);
        if (h == NULL) {
            fprintf(stderr, "corral-soak: out of memory\n");
            return -1;
        }
        s->held = h;
        s->capheld = cap;
    }
    memcpy(s->held[s->nheld++].id, f->id, CORRAL_ID_MAX);
    s->ended_jobs += f->jobs;
    s->groups_ended++;
    f->used = false;
    s->nflight--;
    return 0;
}

/* Asks corrald about every ended root not yet seen purged: closing an ended group again
 * changes nothing and succeeds while corrald holds it, and is CORRAL_ENOTFOUND once its
 * purge has begun. Drops the purged ones from s->held. */
static int
probe_held(struct soak *s)
{
    size_t k = 0;

    for (size_t i = 0; i < s->nheld; i++) {
        int rc = corral_group_close(s->c, s->held[i].id);
        if (rc == CORRAL_OK)
            s->held[k++] = s->held[i];
        else if (rc != CORRAL_ENOTFOUND)
            return call_failed(s, "corral_group_close (probe)", rc);
    }
    s->nheld = k;
    return 0;
}

/* Takes a sample and prints it (unless --json). */
static int
take_sample(struct soak *s, bool idle)
{
    struct sample x;

    memset(&x, 0, sizeof x);
    if (probe_held(s) != 0)
        return -1;
    x.jobs = s->ended_jobs;
    x.elapsed_s = (double)(clock_mono_us() - s->t0_us) / 1e6;
    x.idle = idle;
    if (!idle) {
        const struct sample *p = s->nsamples > 0 ? &s->samples[s->nsamples - 1] : NULL;
        double dt = x.elapsed_s - (p != NULL ? p->elapsed_s : 0);
        x.jobs_per_s = dt > 0 ? (double)(x.jobs - (p != NULL ? p->jobs : 0)) / dt : 0;
    }
    x.rss_kib = proc_rss_kib(s->b.pid);
    x.hwm_kib = proc_status_kib(s->b.pid, "VmHWM");
    x.db = file_size(s->db_path);
    x.wal = file_size(s->wal_path);
    x.roots_ended = (long)s->nheld;
    x.roots_held = x.roots_ended + s->nflight;
    if (x.rss_kib < 0 || x.hwm_kib < 0 || x.db < 0 || x.wal < 0) {
        fprintf(stderr, "corral-soak: cannot read corrald's memory or database size\n");
        return -1;
    }
    if (s->nsamples == s->capsamples) {
        size_t cap = s->capsamples ? 2 * s->capsamples : 64;
        struct sample *a = realloc(s->samples, cap * sizeof *a);
        if (a == NULL) {
            fprintf(stderr, "corral-soak: out of memory\n");
            return -1;
        }
        s->samples = a;
        s->capsamples = cap;
    }
    s->samples[s->nsamples++] = x;
    if (!s->o->json)
        print_sample(&x);
    return 0;
}

/* Whether the run must end now (^C, or a worker failed); says why. */
static bool
must_stop(void)
{
    if (bench_interrupted) {
        fprintf(stderr, "corral-soak: interrupted\n");
        return true;
    }
    if (atomic_load(&bench_worker_failed)) {
        fprintf(stderr, "corral-soak: a worker failed\n");
        return true;
    }
    return false;
}

/* Starts corrald, the workers and the client. */
static int
soak_open(struct soak *s)
{
    const struct opts *o = s->o;
    const char *const extra[] = {
        "--retention", o->retention, "--max-queued", MAX_QUEUED, "--max-queued-per-kind",
        MAX_QUEUED,    NULL};
    struct broker_conf conf = {.corrald = o->corrald,
                               .sync = o->sync,
                               .log_level = o->log_level,
                               .extra = extra,
                               .tcp = o->tcp,
                               .keep = o->keep};
    int rc;

    s->flights = calloc((size_t)o->in_flight, sizeof *s->flights);
    if (s->flights == NULL) {
        fprintf(stderr, "corral-soak: out of memory\n");
        return -1;
    }
    if (broker_start(&s->b, &conf) != 0)
        return -1;
    snprintf(s->db_path, sizeof s->db_path, "%s/corral.db", s->b.data_dir);
    snprintf(s->wal_path, sizeof s->wal_path, "%s/corral.db-wal", s->b.data_dir);
    if (pool_start(&s->pool, s->b.worker_ep, o->workers, o->concurrency, KIND, RESULT,
                   sizeof RESULT - 1) != 0)
        return -1;
    rc = corral_client_new(&s->c, s->b.client_ep, CLIENT_TIMEOUT_MS);
    if (rc != CORRAL_OK) {
        fprintf(stderr, "corral-soak: corral_client_new: %s\n", corral_strerror(rc));
        return -1;
    }
    /* The workers connect on their own; give them time to register. */
    sleep_ms(SETTLE_MS);
    return bench_interrupted ? -1 : 0;
}

/* The load: every group started, and ended, sampling on the way. */
static int
soak_load(struct soak *s)
{
    const struct opts *o = s->o;
    long next_sample = o->sample, idle_waits = 0;

    s->t0_us = clock_mono_us();
    while (s->ended_jobs < o->jobs) {
        long before = s->groups_ended;
        struct corral_event *ev = NULL;
        int rc;

        if (must_stop())
            return -1;
        for (long i = 0; i < o->in_flight && s->started_jobs < o->jobs; i++)
            if (!s->flights[i].used && start_group(s, &s->flights[i]) != 0)
                return -1;
        if (take_replies(s, 0) != 0)
            return -1;
        for (int timeout = WAIT_MS; (rc = corral_next_event(s->c, timeout, &ev)) == CORRAL_OK;
             timeout = 0) {
            rc = take_event(s, ev);
            corral_event_free(&ev);
            if (rc != 0)
                return -1;
        }
        if (rc != CORRAL_ETIMEDOUT) {
            fprintf(stderr, "corral-soak: corral_next_event: %s\n", corral_strerror(rc));
            return -1;
        }
        if (s->ended_jobs >= next_sample || s->ended_jobs == o->jobs) {
            if (take_sample(s, false) != 0)
                return -1;
            while (next_sample <= s->ended_jobs)
                next_sample += o->sample;
        }
        idle_waits = s->groups_ended == before ? idle_waits + 1 : 0;
        if (idle_waits * WAIT_MS >= STALL_MS) {
            fprintf(stderr,
                    "corral-soak: no group ended for %d s (%ld jobs submitted, %ld acknowledged, "
                    "%ld in ended groups)\n",
                    STALL_MS / 1000, s->submitted, s->acked, s->ended_jobs);
            broker_dump_log(&s->b);
            return -1;
        }
    }
    if (take_replies(s, 0) != 0)
        return -1;
    if (s->acked != o->jobs || s->submitted != o->jobs) {
        fprintf(stderr, "corral-soak: %ld jobs submitted, %ld acknowledged, of %ld\n", s->submitted,
                s->acked, o->jobs);
        return -1;
    }
    return 0;
}

/* Stops everything; on success (ok) checks that the workers ran every job once and that
 * corrald exits 0 after SIGTERM. Returns -1 if ok was false or anything failed here. */
static int
soak_close(struct soak *s, bool ok)
{
    int rc = ok ? 0 : -1;

    if (pool_stop(&s->pool, &s->worker_done) != 0)
        rc = -1;
    if (rc == 0 && s->worker_done != (unsigned long)s->o->jobs) {
        fprintf(stderr, "corral-soak: the workers ran %lu jobs for %ld submitted\n", s->worker_done,
                s->o->jobs);
        rc = -1;
    }
    corral_client_free(&s->c);
    if (s->b.pid > 0 && rc == 0 && broker_stop(&s->b, &s->st) != 0)
        rc = -1;
    broker_cleanup(&s->b);
    free(s->flights);
    free(s->held);
    return rc;
}

/* ------------------------------------------------------------------ the verdict */

struct verdict {
    const struct sample *base; /* first sample after warm-up; NULL if none */
    const struct sample *last; /* the idle sample */
    struct sample max;         /* the largest value of each field over the run */
    double rss_ratio, size_ratio;
    bool flat;
    char why[256];
};

static void
judge(const struct soak *s, struct verdict *v)
{
    const struct opts *o = s->o;

    memset(v, 0, sizeof *v);
    for (size_t i = 0; i < s->nsamples; i++) {
        const struct sample *x = &s->samples[i];
        /* After the warm-up jobs, and 2 x retention into the run: the first roots had
         * been purged for a retention by then, so what corrald holds (what ended during
         * the last retention) has reached its steady size. */
        if (v->base == NULL && !x->idle && x->jobs >= o->warmup &&
            x->elapsed_s * 1000 >= 2.0 * (double)o->retention_ms)
            v->base = x;
        if (x->rss_kib > v->max.rss_kib)
            v->max.rss_kib = x->rss_kib;
        if (x->hwm_kib > v->max.hwm_kib)
            v->max.hwm_kib = x->hwm_kib;
        if (x->db > v->max.db)
            v->max.db = x->db;
        if (x->wal > v->max.wal)
            v->max.wal = x->wal;
        if (x->roots_held > v->max.roots_held)
            v->max.roots_held = x->roots_held;
    }
    v->last = &s->samples[s->nsamples - 1];
    if (v->base == NULL) {
        snprintf(v->why, sizeof v->why,
                 "no sample after warm-up (%ld jobs and %.1f s): run more jobs, or lower "
                 "--warmup or --retention",
                 o->warmup, 2.0 * (double)o->retention_ms / 1000);
        return;
    }
    v->rss_ratio = ratio((double)v->base->rss_kib, (double)v->last->rss_kib);
    v->size_ratio = ratio((double)db_wal(v->base), (double)db_wal(v->last));
    if (v->rss_ratio > FLAT_RATIO)
        snprintf(v->why, sizeof v->why, "RSS grew %.2fx (bound %.2fx)", v->rss_ratio, FLAT_RATIO);
    else if (v->size_ratio > FLAT_RATIO)
        snprintf(v->why, sizeof v->why, "db+wal grew %.2fx (bound %.2fx)", v->size_ratio,
                 FLAT_RATIO);
    else if (v->last->roots_ended > 0)
        snprintf(v->why, sizeof v->why, "%ld ended root groups not purged after the idle wait",
                 v->last->roots_ended);
    else
        v->flat = true;
}

/* "flat", "GREW", or "undetermined" when no sample was taken after the warm-up. */
static const char *
verdict_word(const struct verdict *v)
{
    return v->flat ? "flat" : v->base != NULL ? "GREW" : "undetermined";
}

static void
print_summary(const struct soak *s, const struct verdict *v, double load_s)
{
    const struct opts *o = s->o;
    const struct sample *b = v->base, *l = v->last;

    printf("load: %ld jobs in %ld root groups in %.1f s = %.0f jobs/s; corrald: %llu commits, "
           "%llu rows written or deleted, %.1f s CPU\n",
           o->jobs, s->groups_ended, load_s, (double)o->jobs / load_s, s->st.commits, s->st.rows,
           s->st.cpu_s);
    if (b != NULL)
        printf("warm-up:  at %ld jobs (%.1f s): RSS %.1f MiB, db %.1f MiB + wal %.1f MiB = "
               "%.1f MiB; %ld roots held\n",
               b->jobs, b->elapsed_s, (double)b->rss_kib / 1024, mib((double)b->db),
               mib((double)b->wal), mib((double)db_wal(b)), b->roots_held);
    printf("last:     idle, %.1f s after the load: RSS %.1f MiB, db %.1f MiB + wal %.1f MiB = "
           "%.1f MiB; %ld ended roots held\n",
           l->elapsed_s - load_s, (double)l->rss_kib / 1024, mib((double)l->db),
           mib((double)l->wal), mib((double)db_wal(l)), l->roots_ended);
    printf("max:      RSS %.1f MiB (VmHWM %.1f MiB), db %.1f MiB, wal %.1f MiB, roots held %ld\n",
           (double)v->max.rss_kib / 1024, (double)v->max.hwm_kib / 1024, mib((double)v->max.db),
           mib((double)v->max.wal), v->max.roots_held);
    if (b != NULL)
        printf("verdict:  %s (last / warm-up: RSS %.2fx, db+wal %.2fx; bound %.2fx)%s%s\n",
               verdict_word(v), v->rss_ratio, v->size_ratio, FLAT_RATIO, v->flat ? "" : ": ",
               v->why);
    else
        printf("verdict:  %s: %s\n", verdict_word(v), v->why);
}

static void
json_sample(const struct sample *x)
{
    printf("{\"jobs\": %ld, \"elapsed_s\": %.3f, \"jobs_per_s\": %.1f, \"rss_kib\": %ld, "
           "\"hwm_kib\": %ld, \"db_bytes\": %lld, \"wal_bytes\": %lld, \"roots_held\": %ld, "
           "\"roots_ended_held\": %ld, \"idle\": %s}",
           x->jobs, x->elapsed_s, x->jobs_per_s, x->rss_kib, x->hwm_kib, x->db, x->wal,
           x->roots_held, x->roots_ended, x->idle ? "true" : "false");
}

static void
print_json(const struct soak *s, const struct verdict *v, bool ok, double load_s)
{
    const struct opts *o = s->o;

    /* The verdict is null when the run failed before one could be given. */
    printf("{\"ok\": %s, \"verdict\": %s%s%s", ok ? "true" : "false", v != NULL ? "\"" : "",
           v != NULL ? verdict_word(v) : "null", v != NULL ? "\"" : "");
    printf(", \"jobs\": %ld, \"group_size\": %ld, \"in_flight\": %ld, \"workers\": %d, "
           "\"concurrency\": %u, \"retention_ms\": %llu, \"sync\": \"%s\", \"transport\": \"%s\", "
           "\"flat_ratio\": %.2f",
           o->jobs, o->group_size, o->in_flight, o->workers, o->concurrency,
           (unsigned long long)o->retention_ms, o->sync, o->tcp ? "tcp" : "ipc", FLAT_RATIO);
    if (v != NULL && s->nsamples > 0) {
        printf(", \"load_s\": %.3f, \"jobs_per_s\": %.1f, \"commits\": %llu, \"rows\": %llu, "
               "\"corrald_cpu_s\": %.2f, \"samples\": [",
               load_s, (double)o->jobs / load_s, s->st.commits, s->st.rows, s->st.cpu_s);
        for (size_t i = 0; i < s->nsamples; i++) {
            printf(i > 0 ? ", " : "");
            json_sample(&s->samples[i]);
        }
        printf("], \"warmup_sample\": %ld, \"max\": {\"rss_kib\": %ld, \"hwm_kib\": %ld, "
               "\"db_bytes\": %lld, \"wal_bytes\": %lld, \"roots_held\": %ld}, "
               "\"rss_ratio\": %.3f, \"db_wal_ratio\": %.3f",
               v->base != NULL ? (long)(v->base - s->samples) : -1L, v->max.rss_kib, v->max.hwm_kib,
               v->max.db, v->max.wal, v->max.roots_held, v->rss_ratio, v->size_ratio);
        if (!v->flat)
            printf(", \"why\": \"%s\"", v->why);
    }
    printf("}\n");
}

int
main(int argc, char **argv)
{
    struct opts o;
    struct soak s;
    struct verdict v;
    bool ok = false;
    double load_s = 0;
    int rc = parse_args(argc, argv, &o);

    if (rc != 0)
        return rc;
    bench_catch_signals();
    memset(&s, 0, sizeof s);
    memset(&v, 0, sizeof v);
    s.o = &o;
    if (soak_open(&s) != 0)
        goto out;
    if (!o.json) {
        printf("corral-soak: %ld jobs in root groups of %ld (%ld in flight), %d workers x %u, "
               "retention %s, sync %s, %s; corrald pid %d in %s\n",
               o.jobs, o.group_size, o.in_flight, o.workers, o.concurrency, o.retention, o.sync,
               o.tcp ? "tcp" : "ipc", (int)s.b.pid, s.b.dir);
        print_header();
    }
    if (soak_load(&s) != 0)
        goto out;
    load_s = s.samples[s.nsamples - 1].elapsed_s;
    /* No load for a retention and then some: every ended root should be gone. */
    sleep_ms((long)(o.retention_ms + IDLE_EXTRA_MS));
    if (must_stop() || take_sample(&s, true) != 0)
        goto out;
    ok = true;
out:
    if (soak_close(&s, ok) != 0)
        ok = false;
    if (ok) {
        judge(&s, &v);
        if (!o.json)
            print_summary(&s, &v, load_s);
    }
    if (o.json)
        print_json(&s, ok ? &v : NULL, ok && v.flat, load_s);
    free(s.samples);
    return ok && v.flat ? 0 : 1;
}
