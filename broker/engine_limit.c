/* engine_limit.c - named capacity limiters (S10, D7): the distributed
 * anyio.CapacityLimiter. A job names zero or more limiters; it is dispatched only when
 * it can take one token of each at once, and gives them back exactly once when it stops
 * running (its body ended, its attempt ended, or it was lost). Who may take a token is
 * decided by the dispatch pass (engine_sched.c): jobs are visited oldest first, and a
 * job that could run but lacks a token holds one back of each of its limiters
 * (tokens_reserve), so no younger job takes a token it needs. */
#include "engine_int.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* The longest limiter name, in bytes. */
#define LIMITER_NAME_MAX 128

static struct limiter *
limiter_find(struct engine *e, const char *name)
{
    return strmap_get(&e->limiter_by_name, name);
}

/* Creates a limiter (its name copied) in name order. */
static struct limiter *
limiter_new(struct engine *e, const char *name, uint32_t total)
{
    struct limiter *l = ecalloc(1, sizeof(*l));
    l->name = estrdup(name);
    l->total = total;
    struct limiter **pp = &e->limiters;
    while (*pp && strcmp((*pp)->name, name) < 0)
        pp = &(*pp)->next;
    l->next = *pp;
    *pp = l;
    e->nlimiters++;
    if (!strmap_put(&e->limiter_by_name, l->name, l))
        engine_oom();
    return l;
}

static void
limiter_dirty(struct engine *e, struct limiter *l)
{
    l->dirty = true;
    e->limiters_dirty = true;
}

/* A name is 1..LIMITER_NAME_MAX bytes without control characters (it is stored
 * newline-separated in a job's row, and shown in tables). */
static bool
name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > LIMITER_NAME_MAX)
        return false;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return false;
    return true;
}

int
engine_restore_limiter(struct engine *e, const struct limiter_row *row)
{
    if (!name_valid(row->name) || limiter_find(e, row->name))
        return CORRAL_EINTERNAL;
    limiter_new(e, row->name, row->total_tokens);
    return CORRAL_OK;
}

/* ------------------------------------------------------------------ requests */

static void
on_set(struct engine *e, const struct peer *from, const struct cmd *c)
{
    if (!name_valid(c->id)) {
        reply_fmt(e, from, c->request_id, CORRAL_EBADREQUEST,
                  "a limiter name is 1 to %d bytes without control characters", LIMITER_NAME_MAX);
        return;
    }
    struct limiter *l = limiter_find(e, c->id);
    if (l == NULL)
        l = limiter_new(e, c->id, c->total_tokens);
    /* Raising the total admits waiters in this very turn (the tick's dispatch pass), while
     * borrowed < total; lowering it stops nobody: borrowed drains below it. */
    l->total = c->total_tokens;
    limiter_dirty(e, l);
    e->dispatch_needed = true;
    reply(e, from, c->request_id, CORRAL_OK, NULL);
}

static void
on_delete(struct engine *e, const struct peer *from, const struct cmd *c)
{
    struct limiter *l = limiter_find(e, c->id);
    if (l == NULL) {
        reply_fmt(e, from, c->request_id, CORRAL_ENOTFOUND, "no such limiter: '%s'", c->id);
        return;
    }
    if (l->borrowed > 0 || l->refs > 0) {
        reply_fmt(e, from, c->request_id, CORRAL_EWRONGSTATE,
                  "limiter %s is in use: %" PRIu32 " tokens borrowed, %" PRIu32
                  " jobs that have not ended name it",
                  l->name, l->borrowed, l->refs);
        return;
    }
    struct limiter **pp = &e->limiters;
    while (*pp != l)
        pp = &(*pp)->next;
    *pp = l->next;
    e->nlimiters--;
    strmap_del(&e->limiter_by_name, l->name);
    /* Kept until the flush has written its deletion; nothing refers to it any more. */
    l->deleted = true;
    l->next = NULL;
    limiter_dirty(e, l);
    eappend((void ***)&e->deleted_limiters, &e->ndeleted_limiters, &e->capdeleted_limiters, l);
    reply(e, from, c->request_id, CORRAL_OK, NULL);
}

static int
by_job_id(const void *a, const void *b)
{
    const struct job *x = *(struct job *const *)a, *y = *(struct job *const *)b;
    return x->n.id < y->n.id ? -1 : x->n.id > y->n.id;
}

/* Fills *info for l in the turn's arena, borrowers oldest first. */
static void
describe(struct engine *e, struct limiter *l, struct limiter_info *info)
{
    if (l->nborrowers > 1)
        qsort(l->borrowers, l->nborrowers, sizeof(*l->borrowers), by_job_id);
    const char **b = NULL;
    if (l->nborrowers > 0) {
        b = arena_alloc(&e->out->arena, l->nborrowers * sizeof(*b));
        if (b == NULL)
            engine_oom();
        for (size_t i = 0; i < l->nborrowers; i++)
            b[i] = l->borrowers[i]->n.idstr;
    }
    *info = (struct limiter_info){l->name, l->total, l->borrowed, l->waiting, b, l->nborrowers};
}

static void
on_get(struct engine *e, const struct peer *from, const struct cmd *c)
{
    size_t n = 0;
    struct limiter_info *infos;
    if (*c->id) {
        struct limiter *l = limiter_find(e, c->id);
        if (l == NULL) {
            reply_fmt(e, from, c->request_id, CORRAL_ENOTFOUND, "no such limiter: '%s'", c->id);
            return;
        }
        infos = arena_alloc(&e->out->arena, sizeof(*infos));
        if (infos == NULL)
            engine_oom();
        describe(e, l, &infos[n++]);
    } else {
        infos = arena_alloc(&e->out->arena, (e->nlimiters + 1) * sizeof(*infos));
        if (infos == NULL)
            engine_oom();
        for (struct limiter *l = e->limiters; l; l = l->next)
            describe(e, l, &infos[n++]);
    }
    struct out_msg *m = reply(e, from, c->request_id, CORRAL_OK, NULL);
    m->limiters = infos;
    m->nlimiters = n;
}

void
engine_handle_limiter(struct engine *e, const struct peer *from, const struct cmd *c)
{
    switch (c->type) {
    case CMD_SET_LIMITER:
        on_set(e, from, c);
        break;
    case CMD_DELETE_LIMITER:
        on_delete(e, from, c);
        break;
    default:
        on_get(e, from, c);
        break;
    }
}

/* ------------------------------------------------------------------ jobs and tokens */

const char *
job_limiters_resolve(struct engine *e, struct job *j)
{
    for (size_t i = 0; i < j->nlimiters; i++)
        if (limiter_find(e, j->limiter_names[i]) == NULL)
            return j->limiter_names[i];
    j->limiters = ecalloc(j->nlimiters, sizeof(*j->limiters));
    for (size_t i = 0; i < j->nlimiters; i++) {
        j->limiters[i] = limiter_find(e, j->limiter_names[i]);
        j->limiters[i]->refs++;
    }
    return NULL;
}

bool
job_limiters_init(struct engine *e, struct job *j, const char *const *names, size_t n,
                  const struct peer *from, uint64_t request_id)
{
    if (n == 0)
        return true;
    j->limiter_names = ecalloc(n, sizeof(*j->limiter_names));
    j->nlimiters = n;
    for (size_t i = 0; i < n; i++)
        j->limiter_names[i] = estrdup(names[i]);
    const char *missing = job_limiters_resolve(e, j);
    if (missing == NULL)
        return true;
    reply_fmt(e, from, request_id, CORRAL_ENOTFOUND,
              "no such limiter: '%s' (create it first: SetLimiter, or corralctl limiter set %s "
              "TOKENS)",
              missing, missing);
    for (size_t i = 0; i < n; i++)
        free(j->limiter_names[i]);
    free(j->limiter_names);
    j->limiter_names = NULL;
    j->nlimiters = 0;
    return false;
}

bool
tokens_available(const struct job *j)
{
    for (size_t i = 0; i < j->nlimiters; i++)
        if (j->limiters[i]->spare <= 0)
            return false;
    return true;
}

void
tokens_reserve(struct job *j)
{
    for (size_t i = 0; i < j->nlimiters; i++)
        j->limiters[i]->spare--;
}

void
limiters_pass_begin(struct engine *e)
{
    for (struct limiter *l = e->limiters; l; l = l->next)
        l->spare = (int64_t)l->total - (int64_t)l->borrowed;
}

void
tokens_acquire(struct engine *e, struct job *j)
{
    if (j->holding || j->nlimiters == 0)
        return;
    for (size_t i = 0; i < j->nlimiters; i++) {
        struct limiter *l = j->limiters[i];
        l->borrowed++;
        l->spare--;
        eappend((void ***)&l->borrowers, &l->nborrowers, &l->capborrowers, j);
    }
    j->holding = true; /* written with the dispatch's state change */
}

void
tokens_release(struct engine *e, struct job *j)
{
    if (!j->holding)
        return;
    for (size_t i = 0; i < j->nlimiters; i++) {
        struct limiter *l = j->limiters[i];
        l->borrowed--;
        for (size_t k = 0; k < l->nborrowers; k++) {
            if (l->borrowers[k] == j) {
                l->borrowers[k] = l->borrowers[--l->nborrowers];
                break;
            }
        }
    }
    j->holding = false;
    mark_dirty(e, &j->n);
    e->dispatch_needed = true;
}

void
job_set_waiting(struct engine *e, struct job *j, bool waiting)
{
    if ((j->n.state == ST_WAITING) == waiting)
        return;
    for (size_t i = 0; i < j->nlimiters; i++) {
        if (waiting)
            j->limiters[i]->waiting++;
        else
            j->limiters[i]->waiting--;
    }
    node_set_state(e, &j->n, waiting ? ST_WAITING : ST_QUEUED);
}

void
job_limiters_done(struct engine *e, struct job *j)
{
    tokens_release(e, j);
    for (size_t i = 0; i < j->nlimiters; i++)
        j->limiters[i]->refs--;
    free(j->limiters);
    j->limiters = NULL;
}

/* ------------------------------------------------------------------ rows */

void
limiters_flush(struct engine *e, struct outbox *out)
{
    if (!e->limiters_dirty)
        return;
    for (struct limiter *l = e->limiters; l; l = l->next) {
        if (!l->dirty)
            continue;
        l->dirty = false;
        struct limiter_row r = {l->name, l->total, false};
        if (!outbox_limiter_row(out, &r))
            engine_oom();
    }
    for (size_t i = 0; i < e->ndeleted_limiters; i++) {
        struct limiter_row r = {e->deleted_limiters[i]->name, 0, true};
        if (!outbox_limiter_row(out, &r))
            engine_oom();
    }
    e->limiters_dirty = false;
}

static void
limiter_free(struct limiter *l)
{
    free(l->name);
    free(l->borrowers);
    free(l);
}

/* Frees the limiters deleted in the turn that just ended (their rows are written). */
void
limiters_end_turn(struct engine *e)
{
    for (size_t i = 0; i < e->ndeleted_limiters; i++)
        limiter_free(e->deleted_limiters[i]);
    e->ndeleted_limiters = 0;
}

void
limiters_free(struct engine *e)
{
    limiters_end_turn(e);
    free(e->deleted_limiters);
    while (e->limiters) {
        struct limiter *l = e->limiters;
        e->limiters = l->next;
        limiter_free(l);
    }
    strmap_fini(&e->limiter_by_name);
}
