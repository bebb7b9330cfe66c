/* arena.c - a bump allocator made of chunks. Small allocations are carved from the
 * head chunk (ARENA_CHUNK_SIZE bytes); an allocation larger than ARENA_BIG gets a chunk
 * of its own, linked behind the head so the head keeps filling. Every block is aligned
 * for max_align_t and zeroed. arena_reset() keeps one standard chunk (the first one
 * allocated) so a steady per-turn workload does not call malloc at all, and frees the
 * others, including big one-off chunks. */
#include "arena.h"

#include <stdalign.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Usable bytes of a standard chunk. */
#define ARENA_CHUNK_SIZE ((size_t)64 * 1024)
/* Allocations above this size get their own chunk instead of wasting the head's tail. */
#define ARENA_BIG (ARENA_CHUNK_SIZE / 4)
/* Every block starts at a multiple of this. */
#define ARENA_ALIGN alignof(max_align_t)

struct arena_chunk {
    struct arena_chunk *next; /* the next older chunk */
    size_t cap;               /* usable bytes in data */
    max_align_t data[];       /* the memory handed out; aligned for any type */
};

/* Rounds n up to a multiple of ARENA_ALIGN; false when that overflows. */
static bool
round_up(size_t n, size_t *out)
{
    if (n > SIZE_MAX - (ARENA_ALIGN - 1))
        return false;
    *out = (n + ARENA_ALIGN - 1) & ~(ARENA_ALIGN - 1);
    return true;
}

/* Returns a new chunk (owned by the caller) with cap usable bytes, or NULL when out of
 * memory or when the size overflows. */
static struct arena_chunk *
chunk_new(size_t cap)
{
    if (cap > SIZE_MAX - sizeof(struct arena_chunk))
        return NULL;
    struct arena_chunk *c = malloc(sizeof(struct arena_chunk) + cap);
    if (c == NULL)
        return NULL;
    c->next = NULL;
    c->cap = cap;
    return c;
}

/* Returns the address of byte off in chunk c. */
static unsigned char *
chunk_at(struct arena_chunk *c, size_t off)
{
    return (unsigned char *)c->data + off;
}

/* Initializes an empty arena; it allocates nothing until the first arena_alloc(). */
void
arena_init(struct arena *a)
{
    a->head = NULL;
    a->used = 0;
}

/* Returns size zeroed bytes aligned for any type, owned by the arena, or NULL when out
 * of memory. A size of 0 still returns a distinct, valid pointer. */
void *
arena_alloc(struct arena *a, size_t size)
{
    size_t need;
    if (!round_up(size == 0 ? 1 : size, &need))
        return NULL;

    if (need > ARENA_BIG) {
        /* A big block: its own chunk, kept behind the head so the head keeps filling. */
        struct arena_chunk *c = chunk_new(need);
        if (c == NULL)
            return NULL;
        if (a->head == NULL) {
            a->head = c;
            a->used = need; /* full: the next small allocation starts a new chunk */
        } else {
            c->next = a->head->next;
            a->head->next = c;
        }
        memset(c->data, 0, need);
        return c->data;
    }

    if (a->head == NULL || a->head->cap - a->used < need) {
        struct arena_chunk *c = chunk_new(ARENA_CHUNK_SIZE);
        if (c == NULL)
            return NULL;
        c->next = a->head;
        a->head = c;
        a->used = 0;
    }
    unsigned char *p = chunk_at(a->head, a->used);
    a->used += need;
    memset(p, 0, need);
    return p;
}

/* Copies s (borrowed; NULL is taken as "") into the arena; NULL when out of memory. */
char *
arena_strdup(struct arena *a, const char *s)
{
    if (s == NULL)
        s = "";
    size_t n = strlen(s);
    if (n == SIZE_MAX)
        return NULL;
    char *p = arena_alloc(a, n + 1);
    if (p != NULL)
        memcpy(p, s, n + 1);
    return p;
}

/* Frees every chunk but one standard chunk (the oldest), which becomes the empty head.
 * Big chunks are always freed so that one large turn does not pin memory. */
void
arena_reset(struct arena *a)
{
    struct arena_chunk *keep = NULL;
    struct arena_chunk *c = a->head;
    while (c != NULL) {
        struct arena_chunk *next = c->next;
        if (c->cap == ARENA_CHUNK_SIZE) {
            /* The list runs newest to oldest: the last standard chunk seen is the first
             * one allocated. */
            if (keep != NULL)
                free(keep);
            keep = c;
        } else {
            free(c);
        }
        c = next;
    }
    if (keep != NULL)
        keep->next = NULL;
    a->head = keep;
    a->used = 0;
}

/* Frees every chunk; the arena is empty and may be reused as after arena_init(). */
void
arena_fini(struct arena *a)
{
    struct arena_chunk *c = a->head;
    while (c != NULL) {
        struct arena_chunk *next = c->next;
        free(c);
        c = next;
    }
    a->head = NULL;
    a->used = 0;
}
