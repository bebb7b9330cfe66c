/* strmap.c - see strmap.h. FNV-1a hashing, linear probing, load factor at most 1/2. */
#include "strmap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static size_t
hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return (size_t)(h ^ (h >> 32));
}

/* The slot holding key, or the empty slot where it would go. m->cap must be non-zero. */
static size_t
find(const struct strmap *m, const char *key)
{
    size_t i = hash(key) & (m->cap - 1);
    while (m->keys[i] && strcmp(m->keys[i], key) != 0)
        i = (i + 1) & (m->cap - 1);
    return i;
}

void *
strmap_get(const struct strmap *m, const char *key)
{
    if (m->n == 0)
        return NULL;
    size_t i = find(m, key);
    return m->keys[i] ? m->vals[i] : NULL;
}

/* Doubles the table (or makes the first one), moving every key. */
static bool
grow(struct strmap *m)
{
    size_t cap = m->cap ? m->cap * 2 : 16;
    char **keys = calloc(cap, sizeof(*keys));
    void **vals = calloc(cap, sizeof(*vals));
    if (keys == NULL || vals == NULL) {
        free(keys);
        free(vals);
        return false;
    }
    struct strmap nm = {keys, vals, cap, 0};
    for (size_t i = 0; i < m->cap; i++) {
        if (m->keys[i]) {
            size_t k = find(&nm, m->keys[i]);
            nm.keys[k] = m->keys[i];
            nm.vals[k] = m->vals[i];
            nm.n++;
        }
    }
    free(m->keys);
    free(m->vals);
    *m = nm;
    return true;
}

bool
strmap_put(struct strmap *m, const char *key, void *val)
{
    if ((m->n + 1) * 2 > m->cap && !grow(m))
        return false;
    size_t i = find(m, key);
    if (m->keys[i] == NULL) {
        char *k = strdup(key);
        if (k == NULL)
            return false;
        m->keys[i] = k;
        m->n++;
    }
    m->vals[i] = val;
    return true;
}

void
strmap_del(struct strmap *m, const char *key)
{
    if (m->n == 0)
        return;
    size_t i = find(m, key);
    if (m->keys[i] == NULL)
        return;
    free(m->keys[i]);
    m->keys[i] = NULL;
    m->n--;
    /* Re-seat the rest of the cluster so that no probe sequence is broken. */
    for (size_t j = (i + 1) & (m->cap - 1); m->keys[j]; j = (j + 1) & (m->cap - 1)) {
        char *k = m->keys[j];
        void *v = m->vals[j];
        m->keys[j] = NULL;
        size_t t = find(m, k);
        m->keys[t] = k;
        m->vals[t] = v;
    }
}

void
strmap_fini(struct strmap *m)
{
    for (size_t i = 0; i < m->cap; i++)
        free(m->keys[i]);
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof(*m));
}
