/* test_timer.c - the min-heap fires in time order whatever the insertion order. */
#include "timer.h"

#include <criterion/criterion.h>
#include <stdlib.h>

Test(timer, pops_in_time_order)
{
    struct timer_heap h;
    timer_heap_init(&h);
    srand(7);
    for (uint64_t i = 0; i < 100000; i++) {
        struct timer t = {(uint64_t)rand() % 1000000, i, 1, 0};
        cr_assert(timer_push(&h, &t));
    }
    cr_assert_eq(h.n, 100000);
    uint64_t last = 0;
    struct timer t;
    size_t n = 0;
    while (timer_pop(&h, &t)) {
        cr_assert_geq(t.at_ms, last);
        last = t.at_ms;
        n++;
    }
    cr_assert_eq(n, 100000);
    cr_assert_null(timer_peek(&h));
    timer_heap_fini(&h);
}

Test(timer, peek_is_earliest_and_empty_pop_fails)
{
    struct timer_heap h;
    timer_heap_init(&h);
    struct timer t;
    cr_assert_not(timer_pop(&h, &t));
    struct timer a = {50, 1, 1, 0}, b = {10, 2, 1, 0}, c = {30, 3, 1, 0};
    timer_push(&h, &a);
    timer_push(&h, &b);
    timer_push(&h, &c);
    cr_assert_eq(timer_peek(&h)->id, 2);
    timer_pop(&h, &t);
    cr_assert_eq(t.id, 2);
    cr_assert_eq(timer_peek(&h)->id, 3);
    timer_heap_fini(&h);
}
