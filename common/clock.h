/* clock.h - the two clocks of corral, in milliseconds. */
#ifndef CORRAL_CLOCK_H
#define CORRAL_CLOCK_H

#include <stdint.h>

/* Wall-clock time since the Unix epoch: what is stored and shown. */
uint64_t clock_wall_ms(void);
/* Monotonic time, for measuring intervals within one process. */
uint64_t clock_mono_ms(void);
uint64_t clock_mono_us(void);

#endif
