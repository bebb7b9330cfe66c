/* rfc3339.h - wall-clock times as corralctl shows and reads them: RFC 3339 timestamps
 * (2026-11-23T10:00:00.250Z) <-> milliseconds since the Unix epoch. Pure: no clock, no
 * time zone database. */
#ifndef CORRALCTL_RFC3339_H
#define CORRALCTL_RFC3339_H

#include <stddef.h>
#include <stdint.h>

/* Room for any formatted time, NUL included (years past 9999 take more digits). */
#define RFC3339_MAX 40

/* Writes ms (since the Unix epoch) into out as UTC with milliseconds,
 * "YYYY-MM-DDTHH:MM:SS.mmmZ". Returns out. */
char *rfc3339_format(uint64_t ms, char out[RFC3339_MAX]);

/* Parses an RFC 3339 date-time (borrowed): YYYY-MM-DD, 'T' (or 't' or a space),
 * HH:MM:SS with optional fractional seconds, then 'Z' (or 'z') or an offset +HH:MM /
 * -HH:MM. A fraction finer than a millisecond is rounded up, so the time is never early.
 * Returns 0 with *out_ms, or -1 when text is not such a date-time, names a day or time
 * that does not exist, or is not after the Unix epoch. */
int rfc3339_parse(const char *text, uint64_t *out_ms);

#endif
