/* args.c - corralctl's command line: the option table, the help text, and parsing.
 * See args.h. */
#include "args.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "duration.h"
#include "exits.h"
#include "rfc3339.h"

#define BIT(c)     (1u << (c))
#define ALLCMDS    (~0u)
#define JOBCMDS    (BIT(CMD_SUBMIT) | BIT(CMD_START)) /* commands that submit a job */
#define MAX_TOKENS UINT32_MAX                         /* the protocol's total_tokens is a uint32 */

struct optdef {
    const char *name; /* without the leading "--" */
    enum opt id;
    bool has_arg;
    unsigned cmds; /* commands that accept it */
};

static const struct optdef OPTDEFS[] = {
    {"json", OPT_JSON, false, ALLCMDS},
    {"help", OPT_HELP, false, ALLCMDS},
    {"endpoint", OPT_ENDPOINT, true, ALLCMDS},
    {"worker-endpoint", OPT_WORKER_ENDPOINT, true, ALLCMDS},
    {"timeout", OPT_TIMEOUT, true, ALLCMDS},
    {"parent", OPT_PARENT, true, BIT(CMD_GROUP_OPEN)},
    {"parent-job", OPT_PARENT_JOB, true, BIT(CMD_GROUP_OPEN)},
    {"payload", OPT_PAYLOAD, true, JOBCMDS},
    {"payload-file", OPT_PAYLOAD_FILE, true, JOBCMDS},
    {"reason", OPT_REASON, true, BIT(CMD_GROUP_CANCEL) | BIT(CMD_JOB_CANCEL)},
    {"kind", OPT_KIND, true, BIT(CMD_WORKER)},
    {"concurrency", OPT_CONCURRENCY, true, BIT(CMD_WORKER)},
    {"grace", OPT_GRACE, true, BIT(CMD_WORKER)},
    {"verbose", OPT_VERBOSE, false, BIT(CMD_WORKER)},
    {"deadline", OPT_DEADLINE, true, BIT(CMD_GROUP_OPEN) | JOBCMDS},
    {"deadline-at", OPT_DEADLINE_AT, true, BIT(CMD_GROUP_OPEN) | JOBCMDS},
    {"on-deadline", OPT_ON_DEADLINE, true, BIT(CMD_GROUP_OPEN) | JOBCMDS},
    {"shield", OPT_SHIELD, false, BIT(CMD_GROUP_OPEN) | JOBCMDS},
    {"max-attempts", OPT_MAX_ATTEMPTS, true, JOBCMDS},
    {"backoff", OPT_BACKOFF, true, JOBCMDS},
    {"limiter", OPT_LIMITER, true, JOBCMDS},
    {"idempotency-key", OPT_IDEMPOTENCY_KEY, true, JOBCMDS},
    {"wait-for-capacity", OPT_WAIT_FOR_CAPACITY, false, JOBCMDS},
};

static const char USAGE[] =
    "usage: corralctl [OPTIONS] COMMAND [ARGS]\n"
    "\n"
    "Commands:\n"
    "  group open [--parent GROUP | --parent-job JOB] [SCOPE]\n"
    "                                     open a group; prints its id\n"
    "  submit GROUP KIND [--payload TEXT | --payload-file FILE] [SCOPE] [RETRY]\n"
    "         [LIMITS]\n"
    "                                     submit a job (FILE '-' = stdin); prints its id\n"
    "  start GROUP KIND [--payload TEXT | --payload-file FILE] [SCOPE] [RETRY]\n"
    "        [LIMITS] [--timeout DURATION]\n"
    "                                     submit a job and wait until it signals\n"
    "                                     readiness (default: forever); print its\n"
    "                                     started() value; exit 1 it failed first,\n"
    "                                     2 cancelled first, 3 timeout (it runs on),\n"
    "                                     4 it ended without signalling readiness\n"
    "  group close GROUP                  close a group (its owner left the block)\n"
    "  group cancel GROUP [--reason TEXT] cancel a group and its subtree\n"
    "  job cancel JOB [--reason TEXT]     cancel one job\n"
    "  group wait GROUP [--timeout DURATION]\n"
    "                                     wait until the group ends (default: forever),\n"
    "                                     print its tree; exit 0 SUCCEEDED, 1 FAILED,\n"
    "                                     2 CANCELLED, 3 timeout\n"
    "  group show GROUP                   print the group's tree now\n"
    "  group purge GROUP                  delete an ended root group and its whole tree\n"
    "                                     now (--retention does it after a while)\n"
    "  limiter set NAME TOKENS            create limiter NAME with TOKENS tokens, or\n"
    "                                     change its total (0 pauses it)\n"
    "  limiter show [NAME]                print a limiter (default: all of them): its\n"
    "                                     tokens, the jobs holding them, and how many\n"
    "                                     jobs wait for one\n"
    "  limiter delete NAME                delete a limiter that no job uses\n"
    "  worker --kind KIND [--kind KIND...] [--concurrency N] [--grace DURATION]\n"
    "         [--verbose] -- CMD [ARG...]\n"
    "                                     run CMD once per job: payload on stdin, stdout\n"
    "                                     is the result, exit 0 is success, exit 75 a\n"
    "                                     failure to retry; the first line CMD writes\n"
    "                                     to fd 3 is its started() value\n"
    "  help                               show this help\n"
    "\n";

/* The rest of the help text: a separate string, as C11 compilers need only take 4095
 * characters in one literal. */
static const char USAGE_OPTIONS[] =
    "SCOPE (group open, submit, start):\n"
    "  --deadline DURATION     cancel the scope DURATION after the broker accepts it\n"
    "  --deadline-at TIME      cancel it at TIME, RFC 3339 (2026-11-23T10:00:00Z,\n"
    "                          2026-11-23T11:00:00.5+01:00)\n"
    "  --on-deadline fail|move-on\n"
    "                          at the deadline: fail (FAILED, TimeoutError; default) or\n"
    "                          move-on (SUCCEEDED, cancelled_caught)\n"
    "  --shield                cancellation from above does not reach it\n"
    "\n"
    "RETRY (submit, start): a lost worker or a retryable failure runs the job again\n"
    "  --max-attempts N        attempts in all (default 3)\n"
    "  --backoff DURATION      wait before the first retry, doubling (default 1s, at\n"
    "                          most 60s)\n"
    "\n"
    "LIMITS (submit, start):\n"
    "  --limiter NAME          run only while holding a token of limiter NAME\n"
    "                          (repeatable, distinct names; all taken at once)\n"
    "  --idempotency-key KEY   submit at most once per KEY in the group: a repeat\n"
    "                          prints the first job's id and creates nothing\n"
    "  --wait-for-capacity     when the broker is busy, wait and retry (backing off)\n"
    "                          until --timeout passes (start: at most 5s)\n"
    "\n"
    "Options (anywhere on the line):\n"
    "  --json                  machine-readable output\n"
    "  --endpoint EP           client endpoint (default $CORRAL_CLIENT_ENDPOINT, else\n"
    "                          " CORRAL_DEFAULT_CLIENT_ENDPOINT ")\n"
    "  --worker-endpoint EP    worker endpoint (default $CORRAL_WORKER_ENDPOINT, else\n"
    "                          " CORRAL_DEFAULT_WORKER_ENDPOINT ")\n"
    "  --timeout DURATION      how long to wait for the broker's answer (default 5s)\n"
    "  -h, --help              show this help\n"
    "\n"
    "Durations: a number with an optional unit ms, s, m, h or d; a bare number is seconds.\n"
    "Exit status: 0 ok, 64 usage error, 65 the broker refused the request, 69 the broker\n"
    "did not answer within --timeout, 75 the broker is busy (too many queued jobs; try\n"
    "again later).\n";

/* Prints a usage error and a hint on stderr; returns EXIT_USAGE. */
int
usage_error(const char *fmt, ...)
{
    va_list ap;
    fputs("corralctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nTry 'corralctl --help' for more information.\n", stderr);
    return EXIT_USAGE;
}

/* Finds an option by its long name (len bytes of name). NULL when unknown. */
static const struct optdef *
find_opt(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof(OPTDEFS) / sizeof(OPTDEFS[0]); i++)
        if (strlen(OPTDEFS[i].name) == len && strncmp(OPTDEFS[i].name, name, len) == 0)
            return &OPTDEFS[i];
    return NULL;
}

/* Frees what parse_args() allocated. */
void
args_free(struct args *a)
{
    free(a->kinds);
    free(a->limiters);
    free(a->pos);
    a->kinds = NULL;
    a->limiters = NULL;
    a->pos = NULL;
}

/* Parses argv into a (options anywhere; "--" ends them; in worker mode the first word
 * after "worker" that is not an option starts the command). Returns 0, or EXIT_USAGE
 * after printing why, or EXIT_OSERR. */
int
args_parse(int argc, char **argv, struct args *a)
{
    memset(a, 0, sizeof(*a));
    a->kinds = calloc((size_t)argc + 1, sizeof(*a->kinds));
    a->limiters = calloc((size_t)argc + 1, sizeof(*a->limiters));
    a->pos = calloc((size_t)argc + 1, sizeof(*a->pos));
    if (a->kinds == NULL || a->limiters == NULL || a->pos == NULL) {
        fputs("corralctl: out of memory\n", stderr);
        return EXIT_OSERR;
    }
    bool options_done = false;
    for (int i = 1; i < argc; i++) {
        char *arg = argv[i];
        bool worker = a->npos > 0 && strcmp(a->pos[0], "worker") == 0;
        if (worker && (options_done || strcmp(arg, "--") == 0 || arg[0] != '-')) {
            a->cmd_argv = &argv[strcmp(arg, "--") == 0 && !options_done ? i + 1 : i];
            break;
        }
        if (options_done || arg[0] != '-' || strcmp(arg, "-") == 0) {
            a->pos[a->npos++] = arg;
            continue;
        }
        if (strcmp(arg, "--") == 0) {
            options_done = true;
            continue;
        }
        if (strcmp(arg, "-h") == 0) {
            a->given[OPT_HELP] = true;
            continue;
        }
        if (strncmp(arg, "--", 2) != 0)
            return usage_error("unknown option '%s'", arg);
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq != NULL ? (size_t)(eq - name) : strlen(name);
        const struct optdef *d = find_opt(name, nlen);
        if (d == NULL)
            return usage_error("unknown option '--%.*s'", (int)nlen, name);
        const char *value = NULL;
        if (d->has_arg) {
            if (eq != NULL)
                value = eq + 1;
            else if (i + 1 < argc)
                value = argv[++i];
            else
                return usage_error("option '--%s' needs a value", d->name);
        } else if (eq != NULL) {
            return usage_error("option '--%s' takes no value", d->name);
        }
        a->given[d->id] = true;
        a->val[d->id] = value;
        if (d->id == OPT_KIND)
            a->kinds[a->nkinds++] = value;
        if (d->id == OPT_LIMITER)
            a->limiters[a->nlimiters++] = value;
    }
    return 0;
}

/* Works out the command from the leading positional words; *nwords says how many words
 * name it. CMD_NONE when they name no command. */
enum command
args_command(const struct args *a, size_t *nwords)
{
    static const struct {
        const char *w1, *w2;
        enum command cmd;
    } table[] = {
        {"help", NULL, CMD_HELP},
        {"submit", NULL, CMD_SUBMIT},
        {"start", NULL, CMD_START},
        {"worker", NULL, CMD_WORKER},
        {"group", "open", CMD_GROUP_OPEN},
        {"group", "close", CMD_GROUP_CLOSE},
        {"group", "cancel", CMD_GROUP_CANCEL},
        {"group", "wait", CMD_GROUP_WAIT},
        {"group", "show", CMD_GROUP_SHOW},
        {"group", "purge", CMD_GROUP_PURGE},
        {"job", "cancel", CMD_JOB_CANCEL},
        {"limiter", "set", CMD_LIMITER_SET},
        {"limiter", "show", CMD_LIMITER_SHOW},
        {"limiter", "delete", CMD_LIMITER_DELETE},
    };
    if (a->npos == 0)
        return CMD_NONE;
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
        if (strcmp(a->pos[0], table[i].w1) != 0)
            continue;
        if (table[i].w2 == NULL) {
            *nwords = 1;
            return table[i].cmd;
        }
        if (a->npos >= 2 && strcmp(a->pos[1], table[i].w2) == 0) {
            *nwords = 2;
            return table[i].cmd;
        }
    }
    return CMD_NONE;
}

/* An environment variable, or NULL when unset or empty. */
const char *
env_nonempty(const char *name)
{
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' ? v : NULL;
}

/* Parses a duration option into milliseconds. Returns 0 or EXIT_USAGE. */
int
parse_duration(const char *opt, const char *text, uint64_t *out)
{
    if (duration_parse_ms(text, out) != 0)
        return usage_error("bad duration for --%s: '%s' (use e.g. 250ms, 5s, 2m, 1h)", opt, text);
    return 0;
}

/* Reads the scope options (--deadline, --deadline-at, --on-deadline, --shield) into *out.
 * Returns 0 or EXIT_USAGE. */
int
parse_scope(const struct args *a, struct corral_scope *out)
{
    memset(out, 0, sizeof(*out));
    if (a->given[OPT_DEADLINE] && a->given[OPT_DEADLINE_AT])
        return usage_error("give at most one of --deadline and --deadline-at");
    if (a->given[OPT_DEADLINE]) {
        if (parse_duration("deadline", a->val[OPT_DEADLINE], &out->timeout_ms) != 0)
            return EXIT_USAGE;
        if (out->timeout_ms == 0)
            return usage_error("--deadline must be at least 1ms");
    }
    if (a->given[OPT_DEADLINE_AT] &&
        rfc3339_parse(a->val[OPT_DEADLINE_AT], &out->deadline_unix_ms) != 0)
        return usage_error("bad time for --deadline-at: '%s' (use RFC 3339, e.g. "
                           "2026-11-23T10:00:00Z or 2026-11-23T11:00:00.250+01:00)",
                           a->val[OPT_DEADLINE_AT]);
    if (a->given[OPT_ON_DEADLINE]) {
        const char *m = a->val[OPT_ON_DEADLINE];
        if (strcmp(m, "fail") == 0)
            out->on_deadline = CORRAL_ON_DEADLINE_FAIL;
        else if (strcmp(m, "move-on") == 0)
            out->on_deadline = CORRAL_ON_DEADLINE_MOVE_ON;
        else
            return usage_error("bad --on-deadline '%s' (fail or move-on)", m);
    }
    out->shield = a->given[OPT_SHIELD];
    return 0;
}

/* Reads the retry options (--max-attempts, --backoff) into *out. Returns 0 or EXIT_USAGE. */
int
parse_retry(const struct args *a, struct corral_submit_opts *out)
{
    out->max_attempts = 0;
    out->backoff_ms = 0;
    if (a->given[OPT_MAX_ATTEMPTS]) {
        const char *t = a->val[OPT_MAX_ATTEMPTS];
        char *end = NULL;
        errno = 0;
        unsigned long long n = strtoull(t, &end, 10);
        if (t[0] < '0' || t[0] > '9' || *end != '\0' || errno != 0 || n == 0 || n > UINT32_MAX)
            return usage_error("bad --max-attempts '%s' (an integer from 1 to %" PRIu32 ")", t,
                               UINT32_MAX);
        out->max_attempts = (uint32_t)n;
    }
    if (a->given[OPT_BACKOFF]) {
        if (parse_duration("backoff", a->val[OPT_BACKOFF], &out->backoff_ms) != 0)
            return EXIT_USAGE;
        if (out->backoff_ms == 0)
            return usage_error("--backoff must be at least 1ms");
    }
    return 0;
}

/* Reads the limiter and backpressure options (--limiter, --idempotency-key,
 * --wait-for-capacity) into *out; its strings borrow a. Returns 0 or EXIT_USAGE. */
int
parse_limits(const struct args *a, struct corral_submit_opts *out)
{
    for (size_t i = 0; i < a->nlimiters; i++) {
        if (a->limiters[i][0] == '\0')
            return usage_error("--limiter must not be empty");
        for (size_t j = 0; j < i; j++)
            if (strcmp(a->limiters[i], a->limiters[j]) == 0)
                return usage_error("--limiter '%s' is given twice", a->limiters[i]);
    }
    out->limiters = a->nlimiters > 0 ? a->limiters : NULL;
    out->nlimiters = a->nlimiters;
    out->idempotency_key = a->val[OPT_IDEMPOTENCY_KEY];
    if (out->idempotency_key != NULL && out->idempotency_key[0] == '\0')
        return usage_error("--idempotency-key must not be empty");
    out->wait_for_capacity = a->given[OPT_WAIT_FOR_CAPACITY];
    return 0;
}

/* Parses a limiter's token count (0 to MAX_TOKENS) into *out. Returns 0 or EXIT_USAGE. */
int
parse_tokens(const char *text, uint32_t *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long n = strtoull(text, &end, 10);
    if (text[0] < '0' || text[0] > '9' || *end != '\0' || errno != 0 || n > MAX_TOKENS)
        return usage_error("bad TOKENS '%s' (an integer from 0 to %" PRIu32 ")", text,
                           (uint32_t)MAX_TOKENS);
    *out = (uint32_t)n;
    return 0;
}

/* Checks that every option given applies to cmd (named by nwords words). */
int
args_check_options(const struct args *a, enum command cmd, size_t nwords)
{
    for (size_t i = 0; i < sizeof(OPTDEFS) / sizeof(OPTDEFS[0]); i++)
        if (a->given[OPTDEFS[i].id] && !(OPTDEFS[i].cmds & BIT(cmd)))
            return usage_error("option '--%s' does not apply to '%s%s%s'", OPTDEFS[i].name,
                               a->pos[0], nwords > 1 ? " " : "", nwords > 1 ? a->pos[1] : "");
    return 0;
}

/* Prints the help text on stdout. */
void
args_print_usage(void)
{
    fputs(USAGE, stdout);
    fputs(USAGE_OPTIONS, stdout);
}
