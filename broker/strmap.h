/* strmap.h - an open-addressing hash map from C strings (copied, owned by the map) to
 * borrowed pointers. Used by the engine for limiters by name and idempotency keys. No
 * deletion by tombstone: strmap_del re-inserts the rest of the cluster, so lookups stay
 * exact however many keys come and go. */
#ifndef CORRAL_STRMAP_H
#define CORRAL_STRMAP_H

#include <stdbool.h>
#include <stddef.h>

struct strmap {
    char **keys; /* NULL: empty slot */
    void **vals;
    size_t cap; /* 0 or a power of two */
    size_t n;
};

/* The value of key (borrowed), or NULL. */
void *strmap_get(const struct strmap *m, const char *key);
/* Sets key (copied) to val; false when out of memory (the map is unchanged). */
bool strmap_put(struct strmap *m, const char *key, void *val);
/* Removes key if present. */
void strmap_del(struct strmap *m, const char *key);
/* Frees the map's memory (not the values); it is left empty and usable. */
void strmap_fini(struct strmap *m);

#endif
