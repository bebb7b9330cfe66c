#include "timer.h"

#include <stdlib.h>

void
timer_heap_init(struct timer_heap *h)
{
    h->v = NULL;
    h->n = 0;
    h->cap = 0;
}

void
timer_heap_fini(struct timer_heap *h)
{
    free(h->v);
    timer_heap_init(h);
}

/* Orders by time, then by insertion-independent fields so equal times are stable enough. */
static bool
before(const struct timer *a, const struct timer *b)
{
    return a->at_ms < b->at_ms;
}

bool
timer_push(struct timer_heap *h, const struct timer *t)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        struct timer *v = realloc(h->v, cap * sizeof(*v));
        if (v == NULL)
            return false;
        h->v = v;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!before(t, &h->v[parent]))
            break;
        h->v[i] = h->v[parent];
        i = parent;
    }
    h->v[i] = *t;
    return true;
}

const struct timer *
timer_peek(const struct timer_heap *h)
{
    return h->n ? &h->v[0] : NULL;
}

bool
timer_pop(struct timer_heap *h, struct timer *out)
{
    if (h->n == 0)
        return false;
    *out = h->v[0];
    struct timer last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= h->n)
            break;
        size_t c = (l + 1 < h->n && before(&h->v[l + 1], &h->v[l])) ? l + 1 : l;
        if (!before(&h->v[c], &last))
            break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n > 0)
        h->v[i] = last;
    return true;
}
