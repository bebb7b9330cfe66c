/* worker_records.c - the records the worker's API threads and background thread share:
 * jobs (refcounted under w->mu, with their lazily made cancel eventfd), requests (reports
 * and Started) and the Ready snapshot; and the thread's indexes: the request lists, the
 * request-id map and the running table. No socket, no protocol. */
#include "codec.h"
#include "worker_int.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define TRUNCATED_MESSAGE_MAX 256 /* a Failed message refused as too large is cut to this */

/* ------------------------------------------------------------------ small helpers */

/* Returns an owned copy of s (borrowed; NULL reads as ""), or NULL when out of memory. */
char *
worker_dup_str(const char *s)
{
    size_t n;
    char *r;

    if (s == NULL)
        s = "";
    n = strlen(s);
    r = malloc(n + 1);
    if (r != NULL)
        memcpy(r, s, n + 1);
    return r;
}

/* Adds one to eventfd fd (borrowed). */
void
worker_efd_post(int fd)
{
    uint64_t one = 1;
    ssize_t n = write(fd, &one, sizeof one);

    (void)n; /* cannot fail short of a counter overflow */
}

/* Takes the value from eventfd fd, without blocking. */
void
worker_efd_take(int fd)
{
    uint64_t v;
    ssize_t n = read(fd, &v, sizeof v);

    (void)n;
}

/* Makes jobs_fd's state follow the queue (see worker_int.h). Caller holds w->mu. */
void
worker_jobs_fd_sync(struct corral_worker *w)
{
    bool want = w->q_head != NULL || w->closed;

    if (!w->jobs_fd_used || want == w->jobs_fd_set)
        return;
    if (want)
        worker_efd_post(w->jobs_fd);
    else
        worker_efd_take(w->jobs_fd);
    w->jobs_fd_set = want;
}

/* ------------------------------------------------------------------ requests */

/* Frees r (takes ownership); accepts NULL. */
void
worker_req_free(struct req *r)
{
    if (r == NULL)
        return;
    free(r->data);
    free(r->type);
    free(r->message);
    free(r);
}

/* Returns an owned request of the given kind about (job, attempt) (borrowed) carrying a
 * copy of data (borrowed; may be NULL when len is 0), or NULL when out of memory. */
struct req *
worker_req_new(enum req_kind kind, const char *job, uint32_t attempt, const void *data, size_t len)
{
    size_t n = strlen(job) + 1;
    struct req *r = malloc(sizeof *r + n);

    if (r == NULL)
        return NULL;
    memset(r, 0, sizeof *r);
    memcpy(r + 1, job, n);
    r->job = (const char *)(r + 1);
    r->kind = kind;
    r->attempt = attempt;
    r->refs = 1;
    if (len > 0) {
        r->data = codec_dup_bytes(data, len);
        if (r->data == NULL) {
            free(r);
            return NULL;
        }
        r->len = len;
    }
    return r;
}

/* ------------------------------------------------------------------ request lists */

/* Appends r (on no list) to l. */
void
worker_list_push(struct reqlist *l, struct req *r)
{
    r->next = NULL;
    r->prev = l->tail;
    if (l->tail != NULL)
        l->tail->next = r;
    else
        l->head = r;
    l->tail = r;
    l->n++;
    r->list = l;
}

/* Unlinks r from its list, if any. */
void
worker_list_unlink(struct req *r)
{
    struct reqlist *l = r->list;

    if (l == NULL)
        return;
    if (r->prev != NULL)
        r->prev->next = r->next;
    else
        l->head = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
    else
        l->tail = r->prev;
    l->n--;
    r->next = r->prev = NULL;
    r->list = NULL;
}

/* ------------------------------------------------------------------ request-id map */

/* The slot where id's probe sequence starts in m (cap > 0). */
static size_t
map_home(const struct reqmap *m, uint64_t id)
{
    return (size_t)((id * UINT64_C(0x9E3779B97F4A7C15)) >> 17) & (m->cap - 1);
}

/* The request sent under id, or NULL. */
struct req *
worker_map_find(const struct reqmap *m, uint64_t id)
{
    size_t i;

    if (m->cap == 0 || id == 0)
        return NULL;
    for (i = map_home(m, id); m->slots[i] != NULL; i = (i + 1) & (m->cap - 1))
        if (m->slots[i]->request_id == id)
            return m->slots[i];
    return NULL;
}

/* Inserts r into m (which has room). */
static void
map_put(struct reqmap *m, struct req *r)
{
    size_t i = map_home(m, r->request_id);

    while (m->slots[i] != NULL)
        i = (i + 1) & (m->cap - 1);
    m->slots[i] = r;
    m->count++;
}

/* Indexes r under its request_id, growing m at half full. */
int
worker_map_add(struct reqmap *m, struct req *r)
{
    if ((m->count + 1) * 2 > m->cap) {
        size_t i, ncap = m->cap > 0 ? m->cap * 2 : 64;
        struct reqmap n = {calloc(ncap, sizeof(struct req *)), ncap, 0};

        if (n.slots == NULL)
            return CORRAL_ENOMEM;
        for (i = 0; i < m->cap; i++)
            if (m->slots[i] != NULL)
                map_put(&n, m->slots[i]);
        free(m->slots);
        *m = n;
    }
    map_put(m, r);
    return CORRAL_OK;
}

/* Removes the entry of id, if any. */
void
worker_map_remove(struct reqmap *m, uint64_t id)
{
    size_t i, j;

    if (m->cap == 0 || id == 0)
        return;
    for (i = map_home(m, id);; i = (i + 1) & (m->cap - 1)) {
        if (m->slots[i] == NULL)
            return;
        if (m->slots[i]->request_id == id)
            break;
    }
    /* Backward-shift deletion keeps every probe sequence unbroken without tombstones. */
    m->slots[i] = NULL;
    m->count--;
    for (j = (i + 1) & (m->cap - 1); m->slots[j] != NULL; j = (j + 1) & (m->cap - 1)) {
        size_t k = map_home(m, m->slots[j]->request_id);

        /* Slot j stays unless its home lies cyclically outside (i, j]. */
        if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
            continue;
        m->slots[i] = m->slots[j];
        m->slots[j] = NULL;
        i = j;
    }
}

/* Rewrites a report the broker refused as too large into a smaller one that can end the
 * job. Returns whether there is something new to send. */
bool
worker_req_shrink(struct req *r)
{
    char msg[160];

    if (r->kind == REQ_DONE) {
        char *type = worker_dup_str("ResultTooLarge");
        char *message;

        snprintf(msg, sizeof msg, "the job's result (%zu bytes) is over the broker's size limit",
                 r->len);
        message = worker_dup_str(msg);
        if (type == NULL || message == NULL) {
            free(type);
            free(message);
            return false;
        }
        free(r->data);
        r->data = NULL;
        r->len = 0;
        r->kind = REQ_FAILED;
        r->type = type;
        r->message = message;
        return true;
    }
    if (r->kind == REQ_FAILED && (r->len > 0 || strlen(r->message) > TRUNCATED_MESSAGE_MAX)) {
        size_t cut = TRUNCATED_MESSAGE_MAX;

        free(r->data);
        r->data = NULL;
        r->len = 0;
        if (strlen(r->message) > cut) {
            /* Cut on a UTF-8 character boundary. */
            while (cut > 0 && ((unsigned char)r->message[cut] & 0xC0) == 0x80)
                cut--;
            r->message[cut] = '\0';
        }
        return true;
    }
    return false;
}

/* ------------------------------------------------------------------ jobs */

/* Frees a job whose last reference is gone (takes ownership). */
void
worker_job_destroy(struct corral_job *j)
{
    int fd = atomic_load_explicit(&j->cancel_fd, memory_order_relaxed);

    if (fd >= 0)
        close(fd);
    free(j->reason);
    free(j);
}

/* Drops one reference to j; frees it with the last. */
void
worker_job_unref(struct corral_worker *w, struct corral_job *j)
{
    bool last;

    pthread_mutex_lock(&w->mu);
    last = --j->refs == 0;
    pthread_mutex_unlock(&w->mu);
    if (last)
        worker_job_destroy(j);
}

/* Marks j cancelled with source and reason (borrowed; NULL: none) unless it already is,
 * and makes its cancel fd, if made, readable for good (one made later is made readable:
 * see corral_job_cancel_fd). Caller holds w->mu. */
void
worker_job_mark_cancelled(struct corral_job *j, enum corral_cancel_source source,
                          const char *reason)
{
    int fd;

    if (atomic_load_explicit(&j->cancelled, memory_order_relaxed))
        return;
    j->source = source;
    j->reason = worker_dup_str(reason); /* NULL when out of memory: reads as "" */
    atomic_store_explicit(&j->cancelled, true, memory_order_release);
    fd = atomic_load_explicit(&j->cancel_fd, memory_order_relaxed);
    if (fd >= 0)
        worker_efd_post(fd);
}

/* ------------------------------------------------------------------ the running table */

/* FNV-1a of id, mixed with attempt. */
uint64_t
worker_job_hash(const char *id, uint32_t attempt)
{
    uint64_t h = UINT64_C(1469598103934665603);

    for (const char *p = id; *p != '\0'; p++)
        h = (h ^ (unsigned char)*p) * UINT64_C(1099511628211);
    h ^= attempt;
    return h ^ (h >> 29);
}

/* The job (id, attempt) of the table, or NULL. */
struct corral_job *
worker_table_find(struct corral_worker *w, const char *id, uint32_t attempt)
{
    uint64_t h;
    struct corral_job *j;

    if (w->table.count == 0)
        return NULL;
    h = worker_job_hash(id, attempt);
    for (j = w->table.buckets[h & (w->table.nbuckets - 1)]; j != NULL; j = j->tnext)
        if (j->hash == h && j->attempt == attempt && strcmp(j->id, id) == 0)
            return j;
    return NULL;
}

/* Adds j to the table, doubling the buckets once there are as many jobs. */
int
worker_table_add(struct corral_worker *w, struct corral_job *j)
{
    struct jobtab *t = &w->table;
    size_t b;

    if (t->count + 1 > t->nbuckets) {
        size_t i, n = t->nbuckets > 0 ? t->nbuckets * 2 : 64;
        struct corral_job **nb = calloc(n, sizeof *nb);

        if (nb == NULL)
            return CORRAL_ENOMEM;
        for (i = 0; i < t->nbuckets; i++) {
            while (t->buckets[i] != NULL) {
                struct corral_job *k = t->buckets[i];

                t->buckets[i] = k->tnext;
                k->tnext = nb[k->hash & (n - 1)];
                nb[k->hash & (n - 1)] = k;
            }
        }
        free(t->buckets);
        t->buckets = nb;
        t->nbuckets = n;
    }
    b = j->hash & (t->nbuckets - 1);
    j->tnext = t->buckets[b];
    t->buckets[b] = j;
    t->count++;
    return CORRAL_OK;
}

/* Removes job (id, attempt) from the table, dropping the table's reference. */
void
worker_table_remove(struct corral_worker *w, const char *id, uint32_t attempt)
{
    struct corral_job **pp;
    uint64_t h;

    if (w->table.count == 0)
        return;
    h = worker_job_hash(id, attempt);
    for (pp = &w->table.buckets[h & (w->table.nbuckets - 1)]; *pp != NULL; pp = &(*pp)->tnext) {
        struct corral_job *j = *pp;

        if (j->hash == h && j->attempt == attempt && strcmp(j->id, id) == 0) {
            *pp = j->tnext;
            w->table.count--;
            worker_job_unref(w, j);
            return;
        }
    }
}

/* Empties the table, dropping its references, and frees its array. */
void
worker_table_clear(struct corral_worker *w)
{
    size_t i;

    for (i = 0; i < w->table.nbuckets; i++) {
        while (w->table.buckets[i] != NULL) {
            struct corral_job *j = w->table.buckets[i];

            w->table.buckets[i] = j->tnext;
            worker_job_unref(w, j);
        }
    }
    free(w->table.buckets);
    memset(&w->table, 0, sizeof w->table);
}

/* ------------------------------------------------------------------ the Ready snapshot */

/* Frees the snapshot array s of n entries (takes ownership). */
void
worker_snap_free(struct snap *s, size_t n)
{
    size_t i;

    for (i = 0; i < n && s != NULL; i++)
        free(s[i].job);
    free(s);
}
