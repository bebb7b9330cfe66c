/* timer.h - a binary min-heap of timers. Entries are never removed early: the owner
 * checks, when one fires, whether it still applies (lazy deletion), which keeps every
 * operation O(log n) with no back-pointers. */
#ifndef CORRAL_TIMER_H
#define CORRAL_TIMER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct timer {
    uint64_t at_ms; /* when it fires */
    uint64_t id;    /* what it is about (a job or group id, ...) */
    uint32_t kind;  /* the owner's tag for what to do */
    uint32_t gen;   /* the owner's generation, to recognise a stale timer */
};

struct timer_heap {
    struct timer *v;
    size_t n;
    size_t cap;
};

void timer_heap_init(struct timer_heap *h);
void timer_heap_fini(struct timer_heap *h);
/* Adds a timer (copied); false when out of memory. */
bool timer_push(struct timer_heap *h, const struct timer *t);
/* The earliest timer, or NULL when empty (borrowed until the next push or pop). */
const struct timer *timer_peek(const struct timer_heap *h);
/* Removes the earliest timer into *out; false when empty. */
bool timer_pop(struct timer_heap *h, struct timer *out);

#endif
