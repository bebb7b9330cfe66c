/* limiter_helpers.h - helpers shared by test_limiters.c and test_limiters_durability.c
 * (DESIGN.md S10, D7): raw workers that record what reaches them, submissions that name
 * limiters, and GetLimiters views checked for their own consistency.
 *
 * Every helper is static inline so that each test file uses what it needs without
 * -Wunused-function. All of them abort the test (cr_assert) on failure. */
#ifndef CORRAL_LIMITER_HELPERS_H
#define CORRAL_LIMITER_HELPERS_H

#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "harness.h"

#define WAIT_MS 10000
/* The most borrowers a test reads back from one limiter. */
#define LIM_VIEW_MAX 32

/* ------------------------------------------------------------------ raw workers */

/* Waits (heartbeating) for the next Dispatch or Cancel on p; asserts it arrives. The
 * job id is copied into job; returns the message's body case, and the attempt in
 * *attempt. */
static inline Corral__V1__Envelope__BodyCase
rw_next(struct raw_peer *p, char job[CORRAL_ID_MAX], uint32_t *attempt, int timeout_ms)
{
    uint64_t deadline = clock_mono_ms() + (uint64_t)timeout_ms;
    for (;;) {
        uint64_t now = clock_mono_ms();
        cr_assert(now < deadline, "no Dispatch or Cancel reached the worker within %d ms",
                  timeout_ms);
        Corral__V1__Envelope *env = raw_worker_next(p, (int)(deadline - now), true);
        if (env == NULL)
            continue;
        Corral__V1__Envelope__BodyCase body = env->body_case;
        bool wanted = false;
        if (body == CORRAL__V1__ENVELOPE__BODY_DISPATCH) {
            snprintf(job, CORRAL_ID_MAX, "%s", env->dispatch->job);
            *attempt = env->dispatch->attempt;
            wanted = true;
        } else if (body == CORRAL__V1__ENVELOPE__BODY_CANCEL) {
            snprintf(job, CORRAL_ID_MAX, "%s", env->cancel->job);
            *attempt = env->cancel->attempt;
            wanted = true;
        }
        corral__v1__envelope__free_unpacked(env, NULL);
        if (wanted)
            return body;
    }
}

/* Waits for the next Dispatch on p and asserts it is job's (no other Dispatch comes
 * first); returns its attempt. Cancels met meanwhile are skipped: the broker repeats a
 * Cancel until it is acknowledged, so one may still be in flight after the ack. */
static inline uint32_t
rw_expect_dispatch(struct raw_peer *p, const char *job, int timeout_ms)
{
    uint64_t deadline = clock_mono_ms() + (uint64_t)timeout_ms;
    for (;;) {
        char got[CORRAL_ID_MAX];
        uint32_t attempt = 0;
        uint64_t now = clock_mono_ms();
        cr_assert(now < deadline, "no Dispatch of %s within %d ms", job, timeout_ms);
        if (rw_next(p, got, &attempt, (int)(deadline - now)) != CORRAL__V1__ENVELOPE__BODY_DISPATCH)
            continue;
        cr_assert_str_eq(got, job, "the worker got a Dispatch of %s, expected one of %s", got, job);
        return attempt;
    }
}

/* Keeps p alive (heartbeating) for ms and asserts that no Dispatch and no Cancel reaches
 * it meanwhile. A functional bound: whatever the broker decided in the turn that answered
 * the last request has long been sent by then. */
static inline void
rw_expect_quiet(struct raw_peer *p, int ms, const char *why)
{
    uint64_t deadline = clock_mono_ms() + (uint64_t)ms;
    for (;;) {
        uint64_t now = clock_mono_ms();
        if (now >= deadline)
            return;
        Corral__V1__Envelope *env = raw_worker_next(p, (int)(deadline - now), true);
        if (env == NULL)
            continue;
        char job[CORRAL_ID_MAX] = "";
        Corral__V1__Envelope__BodyCase body = env->body_case;
        if (body == CORRAL__V1__ENVELOPE__BODY_DISPATCH)
            snprintf(job, sizeof job, "%s", env->dispatch->job);
        else if (body == CORRAL__V1__ENVELOPE__BODY_CANCEL)
            snprintf(job, sizeof job, "%s", env->cancel->job);
        corral__v1__envelope__free_unpacked(env, NULL);
        cr_assert(body != CORRAL__V1__ENVELOPE__BODY_DISPATCH, "%s: %s was dispatched", why, job);
        cr_assert(body != CORRAL__V1__ENVELOPE__BODY_CANCEL, "%s: %s got a Cancel", why, job);
    }
}

/* Done for job/attempt, asserting the broker accepts it. */
static inline void
rw_done(struct raw_peer *p, const char *job, uint32_t attempt)
{
    int code = raw_worker_done(p, job, attempt, "ok");
    cr_assert_eq(code, CORRAL_OK, "Done of %s attempt %u: code %d (%s)", job, attempt, code,
                 corral_strerror(code));
}

/* ------------------------------------------------------------------ submissions */

/* Submits a job of kind naming the limiters (NULL-terminated; NULL: none) with at most
 * max_attempts attempts (0: the default) and backoff_ms; returns corral_submit_opts's
 * code and fills id on success. */
static inline int
try_submit_lim(struct corral_client *c, const char *group, const char *kind,
               const char *const *limiters, uint32_t max_attempts, uint64_t backoff_ms,
               char id[CORRAL_ID_MAX])
{
    size_t n = 0;
    while (limiters != NULL && limiters[n] != NULL)
        n++;
    struct corral_submit_opts o;
    memset(&o, 0, sizeof o);
    o.limiters = n > 0 ? limiters : NULL;
    o.nlimiters = n;
    o.max_attempts = max_attempts;
    o.backoff_ms = backoff_ms;
    bool cancelled = false;
    int rc = corral_submit_opts(c, group, kind, "x", 1, &o, id, &cancelled);
    if (rc == CORRAL_OK)
        cr_assert(!cancelled, "job %s was submitted into a cancelled scope", id);
    return rc;
}

/* The same, asserting success. */
static inline void
submit_lim(struct corral_client *c, const char *group, const char *kind,
           const char *const *limiters, char id[CORRAL_ID_MAX])
{
    int rc = try_submit_lim(c, group, kind, limiters, 0, 0, id);
    cr_assert_eq(rc, CORRAL_OK, "submit %s into %s: %s (%s)", kind, group, corral_strerror(rc),
                 corral_client_last_error(c));
}

static inline void
limiter_set(struct corral_client *c, const char *name, uint32_t total)
{
    int rc = corral_limiter_set(c, name, total);
    cr_assert_eq(rc, CORRAL_OK, "limiter_set %s %u: %s (%s)", name, total, corral_strerror(rc),
                 corral_client_last_error(c));
}

/* ------------------------------------------------------------------ GetLimiters */

struct lim_view {
    uint32_t total;
    uint32_t borrowed;
    uint32_t waiting;
    size_t nborrowers;
    char borrowers[LIM_VIEW_MAX][CORRAL_ID_MAX];
};

/* Reads one limiter and checks what must hold in every sample: the borrowers are as many
 * as the borrowed tokens, distinct, and oldest (lowest id number) first. */
static inline struct lim_view
lim_read(struct corral_client *c, const char *name)
{
    struct corral_limiter *l = NULL;
    size_t n = 0;
    int rc = corral_limiter_get(c, name, &l, &n);
    cr_assert_eq(rc, CORRAL_OK, "GetLimiters %s: %s (%s)", name, corral_strerror(rc),
                 corral_client_last_error(c));
    cr_assert_eq(n, 1, "GetLimiters %s gave %zu limiters", name, n);
    cr_assert_str_eq(l[0].name, name);
    struct lim_view v;
    memset(&v, 0, sizeof v);
    v.total = l[0].total_tokens;
    v.borrowed = l[0].borrowed_tokens;
    v.waiting = l[0].waiting;
    v.nborrowers = l[0].nborrowers;
    cr_assert_leq(v.nborrowers, LIM_VIEW_MAX);
    for (size_t i = 0; i < v.nborrowers; i++)
        snprintf(v.borrowers[i], CORRAL_ID_MAX, "%s", l[0].borrowers[i]);
    corral_limiters_free(&l, n);
    cr_assert_eq(v.nborrowers, (size_t)v.borrowed,
                 "limiter %s: %u tokens borrowed but %zu borrowers listed", name, v.borrowed,
                 v.nborrowers);
    for (size_t i = 1; i < v.nborrowers; i++) {
        unsigned long long a = strtoull(v.borrowers[i - 1] + 1, NULL, 10);
        unsigned long long b = strtoull(v.borrowers[i] + 1, NULL, 10);
        cr_assert_lt(a, b, "limiter %s: borrowers %s and %s are not oldest first (or repeat)", name,
                     v.borrowers[i - 1], v.borrowers[i]);
    }
    return v;
}

/* The same, also asserting borrowed <= total (true unless the total was lowered). */
static inline struct lim_view
lim_sample(struct corral_client *c, const char *name)
{
    struct lim_view v = lim_read(c, name);
    cr_assert_leq(v.borrowed, v.total, "limiter %s: %u tokens borrowed of %u", name, v.borrowed,
                  v.total);
    return v;
}

static inline void
lim_print(FILE *f, const char *name, const struct lim_view *v)
{
    fprintf(f, "limiter %s: total %u borrowed %u waiting %u borrowers [", name, v->total,
            v->borrowed, v->waiting);
    for (size_t i = 0; i < v->nborrowers; i++)
        fprintf(f, "%s%s", i ? " " : "", v->borrowers[i]);
    fprintf(f, "]\n");
}

/* Asserts a limiter's total, borrowed and waiting counts and, unless borrowers is NULL,
 * its borrowers (NULL-terminated, oldest first). Returns the view. */
static inline struct lim_view
lim_expect(struct corral_client *c, const char *name, uint32_t total, uint32_t borrowed,
           uint32_t waiting, const char *const *borrowers)
{
    struct lim_view v = lim_read(c, name);
    bool ok = v.total == total && v.borrowed == borrowed && v.waiting == waiting;
    size_t nb = 0;
    while (borrowers != NULL && borrowers[nb] != NULL)
        nb++;
    if (borrowers != NULL) {
        ok = ok && nb == v.nborrowers;
        for (size_t i = 0; ok && i < nb; i++)
            ok = strcmp(v.borrowers[i], borrowers[i]) == 0;
    }
    if (!ok) {
        lim_print(stderr, name, &v);
        fprintf(stderr, "expected: total %u borrowed %u waiting %u borrowers [", total, borrowed,
                waiting);
        for (size_t i = 0; i < nb; i++)
            fprintf(stderr, "%s%s", i ? " " : "", borrowers[i]);
        fprintf(stderr, "]%s\n", borrowers == NULL ? " (not checked)" : "");
    }
    cr_assert(ok,
              "limiter %s: total %u borrowed %u waiting %u, expected %u %u %u (or other "
              "borrowers; see above)",
              name, v.total, v.borrowed, v.waiting, total, borrowed, waiting);
    return v;
}

/* Asserts the state (and outcome) of job in group's tree now. */
static inline void
job_expect(struct corral_client *c, const char *group, const char *job, enum corral_state state,
           enum corral_outcome outcome)
{
    struct corral_node *t = get_tree(c, group);
    node_expect(t, job, state, outcome);
    corral_node_free(&t);
}

#endif
