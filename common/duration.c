#include "duration.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int
duration_parse_ms(const char *text, uint64_t *out_ms)
{
    if (text == NULL || *text == '\0' || *text == '-' || *text == '+')
        return -1;
    char *end = NULL;
    errno = 0;
    double v = strtod(text, &end);
    if (errno != 0 || end == text || !isfinite(v) || v < 0)
        return -1;
    double scale;
    if (*end == '\0' || strcmp(end, "s") == 0)
        scale = 1000.0;
    else if (strcmp(end, "ms") == 0)
        scale = 1.0;
    else if (strcmp(end, "m") == 0)
        scale = 60000.0;
    else if (strcmp(end, "h") == 0)
        scale = 3600000.0;
    else if (strcmp(end, "d") == 0)
        scale = 86400000.0;
    else
        return -1;
    double ms = v * scale + 0.5;
    if (ms >= 18446744073709551615.0)
        return -1;
    *out_ms = (uint64_t)ms;
    return 0;
}
