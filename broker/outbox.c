/* outbox.c - the effects of one loop turn: messages to send and rows to write, in
 * growable arrays (capacity doubles) plus an arena for the strings and trees the engine
 * builds for them. outbox_reset() empties everything but keeps the buffers. */
#include "cmd.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* First capacity of each array. */
#define OUTBOX_MIN_CAP 16

/* Makes room for one more element of size elem in *arr (capacity *cap, count n),
 * doubling the capacity when full. Returns false when out of memory (the array is then
 * unchanged). */
static bool
grow(void **arr, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap)
        return true;
    size_t ncap = *cap == 0 ? OUTBOX_MIN_CAP : *cap;
    if (*cap != 0) {
        if (ncap > SIZE_MAX / 2)
            return false;
        ncap *= 2;
    }
    if (ncap > SIZE_MAX / elem)
        return false;
    void *p = realloc(*arr, ncap * elem);
    if (p == NULL)
        return false;
    *arr = p;
    *cap = ncap;
    return true;
}

/* Initializes an empty outbox; it allocates nothing until used. */
void
outbox_init(struct outbox *ob)
{
    memset(ob, 0, sizeof(*ob));
    arena_init(&ob->arena);
}

/* Empties the outbox for the next turn, keeping the arrays and the arena's first chunk. */
void
outbox_reset(struct outbox *ob)
{
    ob->nmsgs = 0;
    ob->ngroups = 0;
    ob->njobs = 0;
    ob->nlimiters = 0;
    ob->npurge_roots = 0;
    ob->ndeleted = 0;
    ob->nnotes = 0;
    arena_reset(&ob->arena);
}

/* Frees everything the outbox holds; it is left empty, as after outbox_init(). */
void
outbox_fini(struct outbox *ob)
{
    free(ob->msgs);
    free(ob->groups);
    free(ob->jobs);
    free(ob->limiters);
    free(ob->purge_roots);
    free(ob->deleted);
    free(ob->notes);
    arena_fini(&ob->arena);
    outbox_init(ob);
}

/* Appends a zeroed message of the given type addressed to *to (borrowed, copied; NULL
 * leaves the peer zeroed) and returns it, owned by the outbox and valid until the next
 * append, reset or fini. NULL when out of memory. */
struct out_msg *
outbox_msg(struct outbox *ob, enum out_type type, const struct peer *to)
{
    void *arr = ob->msgs;
    if (!grow(&arr, &ob->capmsgs, ob->nmsgs, sizeof(struct out_msg)))
        return NULL;
    ob->msgs = arr;
    struct out_msg *m = &ob->msgs[ob->nmsgs++];
    memset(m, 0, sizeof(*m));
    m->type = type;
    if (to != NULL)
        m->to = *to;
    return m;
}

/* Appends a copy of *row (its pointers stay borrowed); false when out of memory. */
bool
outbox_group_row(struct outbox *ob, const struct group_row *row)
{
    void *arr = ob->groups;
    if (!grow(&arr, &ob->capgroups, ob->ngroups, sizeof(struct group_row)))
        return false;
    ob->groups = arr;
    ob->groups[ob->ngroups++] = *row;
    return true;
}

/* Appends a copy of *row (its pointers stay borrowed); false when out of memory. */
bool
outbox_job_row(struct outbox *ob, const struct job_row *row)
{
    void *arr = ob->jobs;
    if (!grow(&arr, &ob->capjobs, ob->njobs, sizeof(struct job_row)))
        return false;
    ob->jobs = arr;
    ob->jobs[ob->njobs++] = *row;
    return true;
}

/* Appends a copy of *row (its name stays borrowed); false when out of memory. */
bool
outbox_limiter_row(struct outbox *ob, const struct limiter_row *row)
{
    void *arr = ob->limiters;
    if (!grow(&arr, &ob->caplimiters, ob->nlimiters, sizeof(struct limiter_row)))
        return false;
    ob->limiters = arr;
    ob->limiters[ob->nlimiters++] = *row;
    return true;
}

/* Appends the id of a root whose purge begins; false when out of memory. */
bool
outbox_purge_root(struct outbox *ob, uint64_t root)
{
    void *arr = ob->purge_roots;
    if (!grow(&arr, &ob->cappurge_roots, ob->npurge_roots, sizeof(uint64_t)))
        return false;
    ob->purge_roots = arr;
    ob->purge_roots[ob->npurge_roots++] = root;
    return true;
}

/* Appends a copy of *row; false when out of memory. */
bool
outbox_deleted_row(struct outbox *ob, const struct deleted_row *row)
{
    void *arr = ob->deleted;
    if (!grow(&arr, &ob->capdeleted, ob->ndeleted, sizeof(struct deleted_row)))
        return false;
    ob->deleted = arr;
    ob->deleted[ob->ndeleted++] = *row;
    return true;
}

/* Appends a log line; kv is copied into the arena. False when out of memory. */
bool
outbox_note(struct outbox *ob, int level, const char *event, const char *kv)
{
    size_t len = strlen(kv) + 1;
    char *copy = arena_alloc(&ob->arena, len);
    if (copy == NULL)
        return false;
    memcpy(copy, kv, len);
    void *arr = ob->notes;
    if (!grow(&arr, &ob->capnotes, ob->nnotes, sizeof(struct out_note)))
        return false;
    ob->notes = arr;
    ob->notes[ob->nnotes++] = (struct out_note){level, event, copy};
    return true;
}
