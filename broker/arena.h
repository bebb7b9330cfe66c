/* arena.h - a bump allocator for per-turn data: everything allocated from an arena is
 * freed at once by arena_reset() or arena_fini(). */
#ifndef CORRAL_ARENA_H
#define CORRAL_ARENA_H

#include <stddef.h>

struct arena_chunk;

struct arena {
    struct arena_chunk *head; /* the chunk being filled; older chunks follow */
    size_t used;              /* bytes used in head */
};

void arena_init(struct arena *a);
/* Returns owned-by-the-arena memory of size bytes, aligned for any type, zeroed; NULL
 * when out of memory. */
void *arena_alloc(struct arena *a, size_t size);
/* Copies a NUL-terminated string into the arena; NULL when out of memory. */
char *arena_strdup(struct arena *a, const char *s);
/* Frees all but the first chunk and rewinds it. */
void arena_reset(struct arena *a);
void arena_fini(struct arena *a);

#endif
