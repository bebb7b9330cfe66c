/* rfc3339.c - RFC 3339 timestamps <-> Unix epoch milliseconds, with the proleptic
 * Gregorian calendar's day arithmetic (Howard Hinnant's days_from_civil and
 * civil_from_days) instead of gmtime/timegm: total over every uint64_t, no locale. */
#include "rfc3339.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>

#define MS_PER_DAY 86400000ULL

/* Days from 1970-01-01 to the date y-m-d (m 1..12, d 1..31). */
static int64_t
days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

/* The date of day z (days since 1970-01-01, z >= 0). */
static void
civil_from_days(uint64_t z, uint64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    uint64_t era = z / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (uint64_t)yoe + era * 400 + (*m <= 2);
}

char *
rfc3339_format(uint64_t ms, char out[RFC3339_MAX])
{
    uint64_t y;
    unsigned m, d;
    uint64_t in_day = ms % MS_PER_DAY;
    civil_from_days(ms / MS_PER_DAY, &y, &m, &d);
    unsigned sec = (unsigned)(in_day / 1000);
    snprintf(out, RFC3339_MAX, "%04" PRIu64 "-%02u-%02uT%02u:%02u:%02u.%03uZ", y, m, d, sec / 3600,
             sec / 60 % 60, sec % 60, (unsigned)(in_day % 1000));
    return out;
}

/* Reads exactly n decimal digits at *p into *v, advancing *p. */
static bool
digits(const char **p, int n, unsigned *v)
{
    unsigned r = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9')
            return false;
        r = r * 10 + (unsigned)(c - '0');
    }
    *p += n;
    *v = r;
    return true;
}

/* Reads the character c at *p, advancing *p. */
static bool
expect(const char **p, char c)
{
    if (**p != c)
        return false;
    (*p)++;
    return true;
}

/* Whether y is a leap year of the Gregorian calendar. */
static bool
is_leap(unsigned y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

int
rfc3339_parse(const char *text, uint64_t *out_ms)
{
    static const unsigned MDAYS[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    const char *p = text;
    unsigned y, mo, d, h, mi, s, frac = 0, oh = 0, om = 0;
    int sign = 0;
    if (text == NULL || !digits(&p, 4, &y) || !expect(&p, '-') || !digits(&p, 2, &mo) ||
        !expect(&p, '-') || !digits(&p, 2, &d))
        return -1;
    if (*p != 'T' && *p != 't' && *p != ' ')
        return -1;
    p++;
    if (!digits(&p, 2, &h) || !expect(&p, ':') || !digits(&p, 2, &mi) || !expect(&p, ':') ||
        !digits(&p, 2, &s))
        return -1;
    if (*p == '.') {
        int n = 0;
        bool finer = false; /* a nonzero digit past the milliseconds */
        p++;
        for (; *p >= '0' && *p <= '9'; p++, n++) {
            if (n < 3)
                frac = frac * 10 + (unsigned)(*p - '0');
            else if (*p != '0')
                finer = true;
        }
        if (n == 0)
            return -1;
        for (; n < 3; n++)
            frac *= 10;
        frac += finer;
    }
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        sign = *p == '+' ? 1 : -1;
        p++;
        if (!digits(&p, 2, &oh) || !expect(&p, ':') || !digits(&p, 2, &om))
            return -1;
    } else {
        return -1;
    }
    if (*p != '\0')
        return -1;
    /* Seconds 60: a leap second, read as the first second of the next minute. */
    if (mo < 1 || mo > 12 || d < 1 || d > MDAYS[mo - 1] + (mo == 2 && is_leap(y)) || h > 23 ||
        mi > 59 || s > 60 || oh > 23 || om > 59)
        return -1;
    int64_t sec = days_from_civil(y, mo, d) * 86400 + (int64_t)h * 3600 + (int64_t)mi * 60 + s -
                  sign * ((int64_t)oh * 3600 + (int64_t)om * 60);
    int64_t ms = sec * 1000 + frac;
    if (ms <= 0)
        return -1;
    *out_ms = (uint64_t)ms;
    return 0;
}
