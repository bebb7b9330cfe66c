/* config.c - the option table of corrald and its parser. */
#include "config.h"

#include "duration.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

enum opt_type {
    OPT_ENDPOINT,
    OPT_PATH,
    OPT_DURATION,
    OPT_PERIOD,
    OPT_SIZE,
    OPT_COUNT,
    OPT_SYNC,
    OPT_LOG_LEVEL,
    OPT_LOG_FORMAT
};

struct option_def {
    const char *flag; /* without the leading "--" */
    const char *env;
    const char *def;
    enum opt_type type;
    size_t offset; /* into struct config */
    size_t size;   /* OPT_ENDPOINT, OPT_PATH: the buffer's size */
    const char *help;
};

#define FIELD(f) offsetof(struct config, f), sizeof(((struct config *)0)->f)

static const struct option_def options[] = {
    {"client-endpoint", "CORRAL_CLIENT_ENDPOINT", "tcp://127.0.0.1:7700", OPT_ENDPOINT,
     FIELD(client_endpoint), "ZeroMQ endpoint clients connect to (ROUTER)"},
    {"worker-endpoint", "CORRAL_WORKER_ENDPOINT", "tcp://127.0.0.1:7701", OPT_ENDPOINT,
     FIELD(worker_endpoint), "ZeroMQ endpoint workers connect to (ROUTER)"},
    {"data-dir", "CORRAL_DATA_DIR", "./corral-data", OPT_PATH, FIELD(data_dir),
     "directory of the SQLite database (created if missing)"},
    {"sync", "CORRAL_SYNC", "full", OPT_SYNC, FIELD(sync),
     "SQLite durability: full (fsync every commit) or normal (WAL, survives a crash of "
     "corrald but maybe not of the machine)"},
    {"heartbeat-interval", "CORRAL_HEARTBEAT_INTERVAL", "1s", OPT_DURATION,
     FIELD(heartbeat_interval_ms), "how often workers are told to send a heartbeat"},
    {"heartbeat-timeout", "CORRAL_HEARTBEAT_TIMEOUT", "5s", OPT_DURATION,
     FIELD(heartbeat_timeout_ms),
     "a worker silent this long is lost; also the reconnect window after a restart"},
    {"cancel-resend", "CORRAL_CANCEL_RESEND", "1s", OPT_DURATION, FIELD(cancel_resend_ms),
     "how often CANCEL is repeated to a worker until it acknowledges"},
    {"cancel-grace", "CORRAL_CANCEL_GRACE", "30s", OPT_DURATION, FIELD(cancel_grace_ms),
     "a cancelled job whose worker does not acknowledge within this ends CANCELLED and its "
     "worker is declared lost"},
    {"max-payload", "CORRAL_MAX_PAYLOAD", "1M", OPT_SIZE, FIELD(max_payload),
     "largest payload, result, started value or error accepted (answered TOO_LARGE)"},
    {"max-message", "CORRAL_MAX_MESSAGE", "16M", OPT_SIZE, FIELD(max_message),
     "hard cap on one message; a peer sending more is disconnected"},
    {"max-queued", "CORRAL_MAX_QUEUED", "100000", OPT_COUNT, FIELD(max_queued),
     "jobs queued or waiting for tokens, in all, beyond which a submission is answered BUSY "
     "(0: no bound)"},
    {"max-queued-per-kind", "CORRAL_MAX_QUEUED_PER_KIND", "10000", OPT_COUNT,
     FIELD(max_queued_per_kind), "the same bound for the jobs of one kind (0: no bound)"},
    {"send-hwm", "CORRAL_SEND_HWM", "100000", OPT_COUNT, FIELD(send_hwm),
     "messages queued to one peer before its queue is full; then replies, dispatches and "
     "cancels wait in a backlog and a subscription that cannot keep up ends with "
     "SUBSCRIPTION_OVERFLOW (0: no limit)"},
    {"retention", "CORRAL_RETENTION", "7d", OPT_PERIOD, FIELD(retention_ms),
     "ended root groups are purged with their whole tree this long after they ended"},
    {"log-level", "CORRAL_LOG_LEVEL", "info", OPT_LOG_LEVEL, FIELD(log_level),
     "debug, info, warn or error"},
    {"log-format", "CORRAL_LOG_FORMAT", "logfmt", OPT_LOG_FORMAT, FIELD(log_format),
     "logfmt or json"},
};

#define NOPTIONS (sizeof(options) / sizeof(options[0]))

int
config_parse_size(const char *text, uint64_t *out)
{
    if (text == NULL || *text < '0' || *text > '9')
        return -1;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno != 0)
        return -1;
    unsigned shift = 0;
    if (*end == 'K' || *end == 'k')
        shift = 10;
    else if (*end == 'M' || *end == 'm')
        shift = 20;
    else if (*end == 'G' || *end == 'g')
        shift = 30;
    if (shift)
        end++;
    if (*end == 'B' || *end == 'b')
        end++;
    if (*end != '\0' || (shift && v > (UINT64_MAX >> shift)))
        return -1;
    *out = (uint64_t)v << shift;
    return 0;
}

/* Why a ZeroMQ endpoint corrald would bind cannot be one, or NULL: tcp://HOST:PORT (a
 * port number, or * for any), ipc://PATH or inproc://NAME. */
static const char *
endpoint_problem(const char *ep)
{
    const char *rest;
    if (strncmp(ep, "ipc://", 6) == 0 || strncmp(ep, "inproc://", 9) == 0) {
        rest = strstr(ep, "://") + 3;
        return *rest ? NULL : "names no path";
    }
    if (strncmp(ep, "tcp://", 6) != 0)
        return "is not an endpoint (tcp://HOST:PORT, ipc://PATH or inproc://NAME)";
    rest = ep + 6;
    const char *colon = strrchr(rest, ':');
    if (colon == NULL || colon == rest)
        return "needs a host and a port (tcp://HOST:PORT)";
    const char *port = colon + 1;
    if (strcmp(port, "*") == 0)
        return NULL;
    char *end = NULL;
    errno = 0;
    unsigned long p = strtoul(port, &end, 10);
    if (*port < '0' || *port > '9' || *end != '\0' || errno != 0 || p == 0 || p > 65535)
        return "has no valid port (1 to 65535, or *)";
    return NULL;
}

/* Applies one value; returns 0, or -1 with the reason in err. */
static int
apply(struct config *cfg, const struct option_def *o, const char *value, const char *origin,
      char *err, size_t errlen)
{
    char *field = (char *)cfg + o->offset;
    const char *why = NULL;
    switch (o->type) {
    case OPT_ENDPOINT:
    case OPT_PATH:
        if (*value == '\0')
            why = "must not be empty";
        else if (strlen(value) >= o->size)
            why = "is too long";
        else if (o->type == OPT_ENDPOINT && (why = endpoint_problem(value)) != NULL)
            break;
        else
            strcpy(field, value);
        break;
    case OPT_DURATION: {
        uint64_t ms;
        if (duration_parse_ms(value, &ms) != 0)
            why = "is not a duration (a number with an optional unit ms, s, m, h or d)";
        else if (ms == 0)
            why = "must be greater than zero";
        else if (ms > UINT32_MAX)
            why = "is too long";
        else
            *(uint64_t *)(void *)field = ms;
        break;
    }
    case OPT_PERIOD: {
        uint64_t ms;
        if (duration_parse_ms(value, &ms) != 0)
            why = "is not a duration (a number with an optional unit ms, s, m, h or d)";
        else if (ms == 0)
            why = "must be greater than zero";
        else if (ms > 100ull * 365 * 86400000)
            why = "is longer than 100 years";
        else
            *(uint64_t *)(void *)field = ms;
        break;
    }
    case OPT_SIZE: {
        uint64_t n;
        if (config_parse_size(value, &n) != 0)
            why = "is not a size (bytes with an optional K, M or G suffix)";
        else if (n == 0 || n > ((uint64_t)1 << 31))
            why = "must be between 1 byte and 2G";
        else
            *(uint64_t *)(void *)field = n;
        break;
    }
    case OPT_COUNT: {
        char *end = NULL;
        errno = 0;
        unsigned long long n = strtoull(value, &end, 10);
        if (*value < '0' || *value > '9' || *end != '\0' || errno != 0 || n > UINT32_MAX)
            why = "is not a count (an integer from 0 to 4294967295)";
        else
            *(uint64_t *)(void *)field = n;
        break;
    }
    case OPT_SYNC:
        if (strcmp(value, "full") == 0)
            *(enum store_sync *)(void *)field = STORE_SYNC_FULL;
        else if (strcmp(value, "normal") == 0)
            *(enum store_sync *)(void *)field = STORE_SYNC_NORMAL;
        else
            why = "must be full or normal";
        break;
    case OPT_LOG_LEVEL:
        if (log_parse_level(value, (enum log_level *)(void *)field) != 0)
            why = "must be debug, info, warn or error";
        break;
    case OPT_LOG_FORMAT:
        if (log_parse_format(value, (enum log_format *)(void *)field) != 0)
            why = "must be logfmt or json";
        break;
    }
    if (why == NULL)
        return 0;
    snprintf(err, errlen, "invalid %s '%s': %s", origin, value, why);
    return -1;
}

static const struct option_def *
find_flag(const char *name, size_t len)
{
    for (size_t i = 0; i < NOPTIONS; i++)
        if (strlen(options[i].flag) == len && strncmp(options[i].flag, name, len) == 0)
            return &options[i];
    return NULL;
}

enum config_result
config_parse(struct config *cfg, int argc, char **argv, char *err, size_t errlen)
{
    char origin[64];
    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < NOPTIONS; i++) {
        snprintf(origin, sizeof(origin), "default of --%s", options[i].flag);
        if (apply(cfg, &options[i], options[i].def, origin, err, errlen) != 0)
            return CONFIG_ERROR;
    }
    for (size_t i = 0; i < NOPTIONS; i++) {
        const char *v = getenv(options[i].env);
        if (v == NULL)
            continue;
        snprintf(origin, sizeof(origin), "%s", options[i].env);
        if (apply(cfg, &options[i], v, origin, err, errlen) != 0)
            return CONFIG_ERROR;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
            return CONFIG_HELP;
        if (strcmp(a, "--version") == 0)
            return CONFIG_VERSION;
        if (strncmp(a, "--", 2) != 0) {
            snprintf(err, errlen, "unexpected argument '%s' (see --help)", a);
            return CONFIG_ERROR;
        }
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const struct option_def *o = find_flag(name, len);
        if (o == NULL) {
            snprintf(err, errlen, "unknown option '%s' (see --help)", a);
            return CONFIG_ERROR;
        }
        const char *value = eq ? eq + 1 : NULL;
        if (value == NULL) {
            if (i + 1 >= argc) {
                snprintf(err, errlen, "option --%s needs a value", o->flag);
                return CONFIG_ERROR;
            }
            value = argv[++i];
        }
        snprintf(origin, sizeof(origin), "--%s", o->flag);
        if (apply(cfg, o, value, origin, err, errlen) != 0)
            return CONFIG_ERROR;
    }
    if (cfg->max_payload >= cfg->max_message) {
        snprintf(err, errlen,
                 "invalid --max-payload: must be smaller than --max-message (%llu bytes)",
                 (unsigned long long)cfg->max_message);
        return CONFIG_ERROR;
    }
    if (cfg->heartbeat_interval_ms >= cfg->heartbeat_timeout_ms) {
        snprintf(err, errlen,
                 "invalid --heartbeat-interval: must be shorter than --heartbeat-timeout");
        return CONFIG_ERROR;
    }
    return CONFIG_OK;
}

/* What a value of each type looks like, for --help. */
static const char *
metavar(enum opt_type t)
{
    switch (t) {
    case OPT_ENDPOINT:
        return "ENDPOINT";
    case OPT_PATH:
        return "PATH";
    case OPT_DURATION:
    case OPT_PERIOD:
        return "DURATION";
    case OPT_SIZE:
        return "SIZE";
    case OPT_COUNT:
        return "COUNT";
    case OPT_SYNC:
        return "full|normal";
    case OPT_LOG_LEVEL:
        return "LEVEL";
    case OPT_LOG_FORMAT:
        return "logfmt|json";
    }
    return "VALUE";
}

bool
config_option(size_t i, struct config_option_info *out)
{
    if (i >= NOPTIONS)
        return false;
    out->flag = options[i].flag;
    out->env = options[i].env;
    out->def = options[i].def;
    out->metavar = metavar(options[i].type);
    return true;
}

/* Appends " flag=value" for option o of cfg to b (len bytes, used *n). */
static void
format_one(const struct config *cfg, const struct option_def *o, char *b, size_t len, size_t *n)
{
    const char *field = (const char *)cfg + o->offset;
    uint64_t v = 0;
    if (o->type == OPT_DURATION || o->type == OPT_PERIOD || o->type == OPT_SIZE ||
        o->type == OPT_COUNT)
        memcpy(&v, field, sizeof v);
    char text[64];
    const char *value = text;
    switch (o->type) {
    case OPT_ENDPOINT:
    case OPT_PATH:
        value = field;
        break;
    case OPT_DURATION:
    case OPT_PERIOD:
        snprintf(text, sizeof text, "%llums", (unsigned long long)v);
        break;
    case OPT_SIZE:
    case OPT_COUNT:
        snprintf(text, sizeof text, "%llu", (unsigned long long)v);
        break;
    case OPT_SYNC:
        value = cfg->sync == STORE_SYNC_FULL ? "full" : "normal";
        break;
    case OPT_LOG_LEVEL: {
        static const char *const names[] = {"debug", "info", "warn", "error"};
        value = names[cfg->log_level];
        break;
    }
    case OPT_LOG_FORMAT:
        value = cfg->log_format == LOG_FORMAT_JSON ? "json" : "logfmt";
        break;
    }
    /* Quoted, with '"' and '\\' escaped, when the value needs it (logfmt). */
    bool quote = strpbrk(value, " \"\\=") != NULL || *value == '\0';
    int w = snprintf(b + *n, len - *n, "%s%s=%s", *n ? " " : "", o->flag, quote ? "\"" : "");
    if (w > 0 && (size_t)w < len - *n)
        *n += (size_t)w;
    for (const char *p = value; *p && *n + 3 < len; p++) {
        if (quote && (*p == '"' || *p == '\\'))
            b[(*n)++] = '\\';
        b[(*n)++] = *p;
    }
    if (quote && *n + 1 < len)
        b[(*n)++] = '"';
    b[*n < len ? *n : len - 1] = '\0';
}

void
config_format(const struct config *cfg, char *buf, size_t len)
{
    size_t n = 0;
    if (len == 0)
        return;
    buf[0] = '\0';
    for (size_t i = 0; i < NOPTIONS; i++)
        format_one(cfg, &options[i], buf, len, &n);
}

void
config_usage(FILE *f)
{
    fputs("usage: corrald [OPTION VALUE]...\n"
          "The corral broker: persistent task groups of remote jobs.\n\n"
          "Every option can also be set with its environment variable; a flag wins.\n"
          "Durations: a number with an optional unit ms, s, m, h or d (bare: seconds).\n"
          "Sizes: bytes with an optional K, M or G suffix.\n\n",
          f);
    for (size_t i = 0; i < NOPTIONS; i++) {
        char left[64];
        snprintf(left, sizeof left, "--%s %s", options[i].flag, metavar(options[i].type));
        fprintf(f, "  %-33s %-27s default %s\n      %s\n", left, options[i].env, options[i].def,
                options[i].help);
    }
    fputs("  --help                 print this text\n"
          "  --version              print the version\n",
          f);
}
