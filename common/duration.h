/* duration.h - the one duration grammar of corral: a number with an optional unit ms, s,
 * m, h or d; a bare number is seconds ("250ms", "1.5s", "2m", "7d", "30"). */
#ifndef CORRAL_DURATION_H
#define CORRAL_DURATION_H

#include <stdint.h>

/* Parses text into milliseconds (rounded to the nearest). Returns 0 on success, -1 when
 * text is not a duration (empty, negative, unknown unit, trailing junk, overflow). */
int duration_parse_ms(const char *text, uint64_t *out_ms);

#endif
