/* worker_records.c - the records the worker's API threads and background thread share:
 * jobs (refcounted under w->mu, with their cancel eventfd), requests (reports and Started)
 * and the Ready snapshot; and the running table's lookups. No socket, no protocol. */
#include "codec.h"
#include "worker_int.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* Takes the value (or one, for a semaphore) from eventfd fd, without blocking. */
void
worker_efd_take(int fd)
{
    uint64_t v;
    ssize_t n = read(fd, &v, sizeof v);

    (void)n;
}

/* ------------------------------------------------------------------ requests */

/* Frees r (takes ownership); accepts NULL. */
void
worker_req_free(struct req *r)
{
    if (r == NULL)
        return;
    free(r->job);
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
    bool ok = false;
    struct req *r = calloc(1, sizeof *r);

    if (r == NULL)
        return NULL;
    r->kind = kind;
    r->attempt = attempt;
    r->needs_send = true;
    r->refs = 1;
    r->job = worker_dup_str(job);
    if (r->job == NULL)
        goto out;
    if (len > 0) {
        r->data = codec_dup_bytes(data, len);
        if (r->data == NULL)
            goto out;
        r->len = len;
    }
    ok = true;
out:
    if (!ok) {
        worker_req_free(r);
        r = NULL;
    }
    return r;
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
    if (j->cancel_fd >= 0)
        close(j->cancel_fd);
    free(j->id);
    free(j->kind);
    free(j->group);
    free(j->payload);
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
 * and makes its cancel fd readable for good. Caller holds w->mu. */
void
worker_job_mark_cancelled(struct corral_job *j, enum corral_cancel_source source,
                          const char *reason)
{
    if (atomic_load_explicit(&j->cancelled, memory_order_relaxed))
        return;
    j->source = source;
    j->reason = worker_dup_str(reason); /* NULL when out of memory: reads as "" */
    atomic_store_explicit(&j->cancelled, true, memory_order_release);
    worker_efd_post(j->cancel_fd);
}

/* The running table's job (id, attempt) (borrowed), or NULL. Thread only. */
struct corral_job *
worker_table_find(struct corral_worker *w, const char *id, uint32_t attempt)
{
    struct corral_job *j;

    for (j = w->table; j != NULL; j = j->tnext)
        if (j->attempt == attempt && strcmp(j->id, id) == 0)
            return j;
    return NULL;
}

/* Removes job (id, attempt) from the running table, dropping the table's reference. */
void
worker_table_remove(struct corral_worker *w, const char *id, uint32_t attempt)
{
    struct corral_job **pp;

    for (pp = &w->table; *pp != NULL; pp = &(*pp)->tnext) {
        struct corral_job *j = *pp;

        if (j->attempt == attempt && strcmp(j->id, id) == 0) {
            *pp = j->tnext;
            worker_job_unref(w, j);
            return;
        }
    }
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
