/* main.c - corralctl: drive a corral broker from a shell.
 *
 * Parses the command line (global options may come anywhere), runs one client command
 * through libcorral, or the worker mode (cmd_worker.c), and maps the outcome to an exit
 * status: 0 success, 64 usage error, 65 the broker refused, 69 the broker did not answer
 * (or another transport failure); `group wait` exits 0/1/2 by outcome and 3 on its own
 * timeout, `start` 1/2/4 by how the job ended before readiness and 3 on its own timeout.
 * This is the only file of corralctl that decides the process's exit status. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "cmd_worker.h"
#include "corral.h"
#include "duration.h"
#include "json.h"
#include "print.h"
#include "rfc3339.h"

/* Exit statuses (sysexits.h values). */
#define EXIT_USAGE       64 /* EX_USAGE */
#define EXIT_DATAERR     65 /* EX_DATAERR: the broker refused the request */
#define EXIT_NOINPUT     66 /* EX_NOINPUT: --payload-file unreadable */
#define EXIT_UNAVAILABLE 69 /* EX_UNAVAILABLE: no answer, transport failure */
#define EXIT_OSERR       71 /* EX_OSERR: out of memory */
#define EXIT_IOERR       74 /* EX_IOERR: cannot write the output */

/* `group wait` exit statuses. */
#define EXIT_WAIT_FAILED    1
#define EXIT_WAIT_CANCELLED 2
#define EXIT_WAIT_TIMEOUT   3

/* `start` exit statuses. */
#define EXIT_START_FAILED      1 /* the job failed before signalling readiness */
#define EXIT_START_CANCELLED   2 /* it was cancelled first */
#define EXIT_START_TIMEOUT     3 /* no readiness within --timeout */
#define EXIT_START_NOT_STARTED 4 /* it ended without signalling readiness */

#define DEFAULT_TIMEOUT_MS 5000
#define DEFAULT_GRACE_MS   10000
#define MAX_CONCURRENCY    65536
#define MAX_PAYLOAD_FILE   ((size_t)1 << 30) /* never read more than 1 GiB */

enum command {
    CMD_NONE = 0,
    CMD_HELP,
    CMD_GROUP_OPEN,
    CMD_GROUP_CLOSE,
    CMD_GROUP_CANCEL,
    CMD_GROUP_WAIT,
    CMD_GROUP_SHOW,
    CMD_SUBMIT,
    CMD_START,
    CMD_JOB_CANCEL,
    CMD_WORKER,
};

#define BIT(c)  (1u << (c))
#define ALLCMDS (~0u)
#define JOBCMDS (BIT(CMD_SUBMIT) | BIT(CMD_START)) /* commands that submit a job */

enum opt {
    OPT_JSON,
    OPT_HELP,
    OPT_ENDPOINT,
    OPT_WORKER_ENDPOINT,
    OPT_TIMEOUT,
    OPT_PARENT,
    OPT_PARENT_JOB,
    OPT_PAYLOAD,
    OPT_PAYLOAD_FILE,
    OPT_REASON,
    OPT_KIND,
    OPT_CONCURRENCY,
    OPT_GRACE,
    OPT_VERBOSE,
    OPT_DEADLINE,
    OPT_DEADLINE_AT,
    OPT_ON_DEADLINE,
    OPT_SHIELD,
    OPT_MAX_ATTEMPTS,
    OPT_BACKOFF,
    OPT_COUNT,
};

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
};

/* The parsed command line; strings borrow argv. */
struct args {
    const char *val[OPT_COUNT]; /* last value of each option given with a value */
    bool given[OPT_COUNT];
    const char **kinds; /* every --kind, in order (owned array) */
    size_t nkinds;
    const char **pos; /* positional words (owned array) */
    size_t npos;
    char **cmd_argv; /* worker: the command, NULL-terminated (borrows argv) */
};

/* Settings every command uses, resolved from the options and the environment. */
struct ctx {
    bool json;
    const char *endpoint;
    const char *worker_endpoint;
    const char *timeout_text; /* as given, for messages */
    int timeout_ms;
};

static const char USAGE[] =
    "usage: corralctl [OPTIONS] COMMAND [ARGS]\n"
    "\n"
    "Commands:\n"
    "  group open [--parent GROUP | --parent-job JOB] [SCOPE]\n"
    "                                     open a group; prints its id\n"
    "  submit GROUP KIND [--payload TEXT | --payload-file FILE] [SCOPE] [RETRY]\n"
    "                                     submit a job (FILE '-' = stdin); prints its id\n"
    "  start GROUP KIND [--payload TEXT | --payload-file FILE] [SCOPE] [RETRY]\n"
    "        [--timeout DURATION]\n"
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
    "  worker --kind KIND [--kind KIND...] [--concurrency N] [--grace DURATION]\n"
    "         [--verbose] -- CMD [ARG...]\n"
    "                                     run CMD once per job: payload on stdin, stdout\n"
    "                                     is the result, exit 0 is success, exit 75 a\n"
    "                                     failure to retry; the first line CMD writes\n"
    "                                     to fd 3 is its started() value\n"
    "  help                               show this help\n"
    "\n"
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
    "Options (anywhere on the line):\n"
    "  --json                  machine-readable output\n"
    "  --endpoint EP           client endpoint (default $CORRAL_CLIENT_ENDPOINT, else\n"
    "                          " CORRAL_DEFAULT_CLIENT_ENDPOINT ")\n"
    "  --worker-endpoint EP    worker endpoint (default $CORRAL_WORKER_ENDPOINT, else\n"
    "                          " CORRAL_DEFAULT_WORKER_ENDPOINT ")\n"
    "  --timeout DURATION      how long to wait for the broker's answer (default 5s)\n"
    "  -h, --help              show this help\n"
    "\n"
    "Durations: a number with an optional unit ms, s, m or h; a bare number is seconds.\n"
    "Exit status: 0 ok, 64 usage error, 65 the broker refused the request, 69 the broker\n"
    "did not answer within --timeout.\n";

/* Prints a usage error and a hint on stderr; returns EXIT_USAGE. */
__attribute__((format(printf, 1, 2))) static int
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
static void
args_free(struct args *a)
{
    free(a->kinds);
    free(a->pos);
    a->kinds = NULL;
    a->pos = NULL;
}

/* Parses argv into a (options anywhere; "--" ends them; in worker mode the first word
 * after "worker" that is not an option starts the command). Returns 0, or EXIT_USAGE
 * after printing why, or EXIT_OSERR. */
static int
parse_args(int argc, char **argv, struct args *a)
{
    memset(a, 0, sizeof(*a));
    a->kinds = calloc((size_t)argc + 1, sizeof(*a->kinds));
    a->pos = calloc((size_t)argc + 1, sizeof(*a->pos));
    if (a->kinds == NULL || a->pos == NULL) {
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
    }
    return 0;
}

/* Works out the command from the leading positional words; *nwords says how many words
 * name it. CMD_NONE when they name no command. */
static enum command
find_command(const struct args *a, size_t *nwords)
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
        {"job", "cancel", CMD_JOB_CANCEL},
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
static const char *
env_nonempty(const char *name)
{
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' ? v : NULL;
}

/* Parses a duration option into milliseconds. Returns 0 or EXIT_USAGE. */
static int
parse_duration(const char *opt, const char *text, uint64_t *out)
{
    if (duration_parse_ms(text, out) != 0)
        return usage_error("bad duration for --%s: '%s' (use e.g. 250ms, 5s, 2m, 1h)", opt, text);
    return 0;
}

/* Reads the scope options (--deadline, --deadline-at, --on-deadline, --shield) into *out.
 * Returns 0 or EXIT_USAGE. */
static int
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
static int
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

/* Milliseconds as the int libcorral takes, saturating. */
static int
ms_to_int(uint64_t ms)
{
    return ms > (uint64_t)INT_MAX ? INT_MAX : (int)ms;
}

/* Reports a failed libcorral call on stderr and returns the exit status for it. c may be
 * NULL (no client yet). */
static int
fail(const struct ctx *x, const struct corral_client *c, int err)
{
    const char *name = corral_strerror(err);
    const char *msg = c != NULL ? corral_client_last_error(c) : NULL;
    if (msg == NULL)
        msg = "";
    if (err >= 1 && err <= 99) {
        if (msg[0] != '\0')
            fprintf(stderr, "corralctl: %s: %s\n", name, msg);
        else
            fprintf(stderr, "corralctl: %s\n", name);
        return EXIT_DATAERR;
    }
    switch (err) {
    case CORRAL_ETIMEDOUT:
        fprintf(stderr, "corralctl: %s: no answer from %s within %s\n", name, x->endpoint,
                x->timeout_text);
        return EXIT_UNAVAILABLE;
    case CORRAL_ENOMEM:
        fprintf(stderr, "corralctl: %s\n", name);
        return EXIT_OSERR;
    case CORRAL_EINVAL:
        fprintf(stderr, "corralctl: %s%s%s\n", name, msg[0] != '\0' ? ": " : "", msg);
        return EXIT_USAGE;
    default: /* EIO, EPROTO, ECLOSED and anything unforeseen: the transport failed */
        fprintf(stderr, "corralctl: %s%s%s (endpoint %s)\n", name, msg[0] != '\0' ? ": " : "", msg,
                x->endpoint);
        return EXIT_UNAVAILABLE;
    }
}

/* Flushes stdout; returns 0, or EXIT_IOERR after saying why. */
static int
finish_output(void)
{
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "corralctl: cannot write the output: %s\n", strerror(errno));
        return EXIT_IOERR;
    }
    return 0;
}

/* Prints a new id: the bare id, or {"id": ID, "cancelled": BOOL}. Returns an exit status. */
static int
print_id(const struct ctx *x, const char *id, bool cancelled)
{
    if (x->json) {
        struct json_writer w;
        json_init(&w, stdout);
        json_begin_object(&w);
        json_key(&w, "id");
        json_string(&w, id);
        json_key(&w, "cancelled");
        json_bool(&w, cancelled);
        json_end_object(&w);
        json_finish(&w);
    } else {
        printf("%s\n", id);
    }
    return finish_output();
}

/* Prints the success of a command that has no result: nothing, or {"ok": true}. */
static int
print_ok(const struct ctx *x)
{
    if (x->json) {
        struct json_writer w;
        json_init(&w, stdout);
        json_begin_object(&w);
        json_key(&w, "ok");
        json_bool(&w, true);
        json_end_object(&w);
        json_finish(&w);
    }
    return finish_output();
}

/* Prints a tree in the selected form. Returns an exit status. */
static int
print_tree(const struct ctx *x, const struct corral_node *tree)
{
    if (x->json)
        print_tree_json(stdout, tree);
    else
        print_tree_text(stdout, tree);
    return finish_output();
}

/* Reads a whole file ("-": stdin) into *out (owned, NUL-terminated), its size in *len.
 * Returns 0, or an exit status after saying why. */
static int
read_file(const char *path, char **out, size_t *len)
{
    bool is_stdin = strcmp(path, "-") == 0;
    FILE *f = is_stdin ? stdin : fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "corralctl: cannot open '%s': %s\n", path, strerror(errno));
        return EXIT_NOINPUT;
    }
    int rc = 0;
    size_t cap = 0, n = 0;
    char *buf = NULL;
    for (;;) {
        if (n + 1 >= cap) {
            if (cap >= MAX_PAYLOAD_FILE) {
                fprintf(stderr, "corralctl: '%s' is larger than %zu bytes\n", path,
                        MAX_PAYLOAD_FILE);
                rc = EXIT_NOINPUT;
                goto out;
            }
            size_t ncap = cap == 0 ? 65536 : cap * 2;
            char *nb = realloc(buf, ncap);
            if (nb == NULL) {
                fputs("corralctl: out of memory\n", stderr);
                rc = EXIT_OSERR;
                goto out;
            }
            buf = nb;
            cap = ncap;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) {
                fprintf(stderr, "corralctl: cannot read '%s': %s\n", path, strerror(errno));
                rc = EXIT_NOINPUT;
                goto out;
            }
            break;
        }
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    buf = NULL;
out:
    free(buf);
    if (!is_stdin)
        fclose(f);
    return rc;
}

/* Reads the payload of submit or start (--payload or --payload-file; none: empty) into
 * *out (owned, NUL-terminated, NULL when none) and *len. Returns 0 or an exit status
 * after saying why. */
static int
load_payload(const struct args *a, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    if (a->given[OPT_PAYLOAD_FILE])
        return read_file(a->val[OPT_PAYLOAD_FILE], out, len);
    if (a->given[OPT_PAYLOAD]) {
        *out = strdup(a->val[OPT_PAYLOAD]);
        if (*out == NULL) {
            fputs("corralctl: out of memory\n", stderr);
            return EXIT_OSERR;
        }
        *len = strlen(*out);
    }
    return 0;
}

/* Exit status of `group wait` for an ended group's outcome. */
static int
wait_status(const struct corral_node *tree)
{
    switch (tree->outcome) {
    case CORRAL_OUTCOME_SUCCEEDED:
        return 0;
    case CORRAL_OUTCOME_FAILED:
        return EXIT_WAIT_FAILED;
    case CORRAL_OUTCOME_CANCELLED:
        return EXIT_WAIT_CANCELLED;
    default:
        fprintf(stderr, "corralctl: the broker reported group %s ended without an outcome\n",
                tree->id != NULL ? tree->id : "?");
        return EXIT_UNAVAILABLE;
    }
}

/* Milliseconds left of a wait of wait_ms (negative: forever) begun at start. */
static int
wait_left(uint64_t start, int64_t wait_ms)
{
    if (wait_ms < 0)
        return -1;
    uint64_t spent = clock_mono_ms() - start;
    return (uint64_t)wait_ms > spent ? ms_to_int((uint64_t)wait_ms - spent) : 0;
}

/* `group wait`: checks the group exists (bounded by the client timeout), then waits up to
 * wait_ms (negative: forever) in all. */
static int
cmd_group_wait(const struct ctx *x, struct corral_client *c, const char *group, int64_t wait_ms,
               const char *wait_text)
{
    uint64_t start = clock_mono_ms();
    struct corral_node *tree = NULL;
    int err = corral_group_tree(c, group, &tree);
    if (err != CORRAL_OK)
        return fail(x, c, err);
    if (tree->state != CORRAL_STATE_ENDED) {
        corral_node_free(&tree);
        err = corral_group_wait(c, group, wait_left(start, wait_ms), &tree);
        if (err == CORRAL_ETIMEDOUT) {
            fprintf(stderr, "corralctl: group %s did not end within %s\n", group, wait_text);
            return EXIT_WAIT_TIMEOUT;
        }
        if (err != CORRAL_OK)
            return fail(x, c, err);
    }
    int rc = print_tree(x, tree);
    if (rc == 0)
        rc = wait_status(tree);
    corral_node_free(&tree);
    return rc;
}

/* Prints the started value of job id: the bytes as they are, or {"job": ID, "value":
 * STRING} ("value_b64": BASE64 when they are not UTF-8). Returns an exit status. */
static int
print_value(const struct ctx *x, const char *id, const void *value, size_t len)
{
    if (x->json) {
        struct json_writer w;
        json_init(&w, stdout);
        json_begin_object(&w);
        json_key(&w, "job");
        json_string(&w, id);
        if (utf8_valid(value, len)) {
            json_key(&w, "value");
            json_string_n(&w, value, len);
        } else {
            json_key(&w, "value_b64");
            json_base64(&w, value, len);
        }
        json_end_object(&w);
        json_finish(&w);
    } else if (len > 0) {
        fwrite(value, 1, len, stdout);
    }
    return finish_output();
}

/* `start`: checks the group exists (bounded by the client timeout, so that a broker that
 * is down exits 69 rather than waiting), then submits the job and waits up to wait_ms
 * (negative: forever) in all for its readiness. */
static int
cmd_start(const struct ctx *x, struct corral_client *c, const char *group, const char *kind,
          const char *payload, size_t plen, const struct corral_submit_opts *opts, int64_t wait_ms,
          const char *wait_text)
{
    uint64_t start = clock_mono_ms();
    struct corral_node *tree = NULL;
    int err = corral_group_tree(c, group, &tree);
    corral_node_free(&tree);
    if (err != CORRAL_OK)
        return fail(x, c, err);
    char id[CORRAL_ID_MAX] = "";
    void *value = NULL;
    size_t vlen = 0;
    struct corral_error *error = NULL;
    err = corral_start(c, group, kind, payload, plen, opts, wait_left(start, wait_ms), id, &value,
                       &vlen, &error);
    int rc;
    switch (err) {
    case CORRAL_OK:
        rc = print_value(x, id, value, vlen);
        break;
    case CORRAL_ESTARTFAILED:
        fprintf(stderr, "corralctl: job %s failed before signalling readiness:\n", id);
        if (error != NULL)
            print_exception(stderr, error);
        rc = EXIT_START_FAILED;
        break;
    case CORRAL_ESTARTCANCELLED:
        fprintf(stderr, "corralctl: job %s was cancelled before signalling readiness\n", id);
        rc = EXIT_START_CANCELLED;
        break;
    case CORRAL_ENOTSTARTED:
        fprintf(stderr, "corralctl: job %s ended without signalling readiness\n", id);
        rc = EXIT_START_NOT_STARTED;
        break;
    case CORRAL_ETIMEDOUT:
        fprintf(stderr,
                "corralctl: the job did not signal readiness within %s; it keeps running in "
                "group %s\n",
                wait_text, group);
        rc = EXIT_START_TIMEOUT;
        break;
    default:
        rc = fail(x, c, err);
        break;
    }
    free(value);
    corral_error_free(&error);
    return rc;
}

/* Runs a client command (everything but worker and help) on a new client; opts (borrowed)
 * applies to submit and start, its scope to group open too. */
static int
run_client(const struct ctx *x, enum command cmd, const struct args *a, const char **argsv,
           const struct corral_submit_opts *opts, int64_t wait_ms)
{
    struct corral_client *c = NULL;
    char id[CORRAL_ID_MAX];
    bool cancelled = false;
    char *payload = NULL;
    size_t plen = 0;
    struct corral_node *tree = NULL;
    int rc = 0;
    int err = corral_client_new(&c, x->endpoint, x->timeout_ms);
    if (err != CORRAL_OK)
        return fail(x, NULL, err);
    switch (cmd) {
    case CMD_GROUP_OPEN:
        err = corral_group_open_scoped(c, a->val[OPT_PARENT], a->val[OPT_PARENT_JOB], &opts->scope,
                                       id, &cancelled);
        rc = err != CORRAL_OK ? fail(x, c, err) : print_id(x, id, cancelled);
        break;
    case CMD_SUBMIT:
        rc = load_payload(a, &payload, &plen);
        if (rc != 0)
            break;
        err = corral_submit_opts(c, argsv[0], argsv[1], payload, plen, opts, id, &cancelled);
        rc = err != CORRAL_OK ? fail(x, c, err) : print_id(x, id, cancelled);
        break;
    case CMD_START:
        rc = load_payload(a, &payload, &plen);
        if (rc != 0)
            break;
        rc = cmd_start(x, c, argsv[0], argsv[1], payload, plen, opts, wait_ms,
                       a->given[OPT_TIMEOUT] ? a->val[OPT_TIMEOUT] : "forever");
        break;
    case CMD_GROUP_CLOSE:
        err = corral_group_close(c, argsv[0]);
        rc = err != CORRAL_OK ? fail(x, c, err) : print_ok(x);
        break;
    case CMD_GROUP_CANCEL:
        err = corral_group_cancel(c, argsv[0], a->val[OPT_REASON]);
        rc = err != CORRAL_OK ? fail(x, c, err) : print_ok(x);
        break;
    case CMD_JOB_CANCEL:
        err = corral_job_cancel(c, argsv[0], a->val[OPT_REASON]);
        rc = err != CORRAL_OK ? fail(x, c, err) : print_ok(x);
        break;
    case CMD_GROUP_SHOW:
        err = corral_group_tree(c, argsv[0], &tree);
        rc = err != CORRAL_OK ? fail(x, c, err) : print_tree(x, tree);
        break;
    case CMD_GROUP_WAIT:
        rc = cmd_group_wait(x, c, argsv[0], wait_ms,
                            a->given[OPT_TIMEOUT] ? a->val[OPT_TIMEOUT] : "forever");
        break;
    default:
        rc = usage_error("internal: not a client command");
        break;
    }
    corral_node_free(&tree);
    free(payload);
    corral_client_free(&c);
    return rc;
}

/* Runs `worker` after checking its options. */
static int
run_worker(const struct ctx *x, const struct args *a)
{
    if (a->nkinds == 0)
        return usage_error("worker needs at least one --kind KIND");
    for (size_t i = 0; i < a->nkinds; i++)
        if (a->kinds[i][0] == '\0')
            return usage_error("--kind must not be empty");
    if (a->cmd_argv == NULL || a->cmd_argv[0] == NULL)
        return usage_error("worker needs a command: worker --kind KIND -- CMD [ARG...]");
    unsigned long conc = 1;
    if (a->given[OPT_CONCURRENCY]) {
        const char *t = a->val[OPT_CONCURRENCY];
        char *end = NULL;
        errno = 0;
        conc = strtoul(t, &end, 10);
        if (t[0] < '0' || t[0] > '9' || *end != '\0' || errno != 0 || conc == 0 ||
            conc > MAX_CONCURRENCY)
            return usage_error("bad --concurrency '%s' (an integer from 1 to %d)", t,
                               MAX_CONCURRENCY);
    }
    uint64_t grace = DEFAULT_GRACE_MS;
    if (a->given[OPT_GRACE] && parse_duration("grace", a->val[OPT_GRACE], &grace) != 0)
        return EXIT_USAGE;
    struct cmd_worker_opts o = {
        .worker_endpoint = x->worker_endpoint,
        .client_endpoint = x->endpoint,
        .kinds = a->kinds,
        .nkinds = a->nkinds,
        .concurrency = (unsigned)conc,
        .grace_ms = grace,
        .argv = a->cmd_argv,
        .verbose = a->given[OPT_VERBOSE],
    };
    return cmd_worker_run(&o);
}

/* Checks the command's words and options, then runs it. */
static int
run(struct args *a)
{
    size_t nwords = 0;
    enum command cmd = find_command(a, &nwords);
    if (a->given[OPT_HELP] || cmd == CMD_HELP) {
        fputs(USAGE, stdout);
        return finish_output();
    }
    if (cmd == CMD_NONE) {
        if (a->npos == 0)
            return usage_error("no command given");
        if (a->npos == 1 && strcmp(a->pos[0], "group") == 0)
            return usage_error("'group' needs a subcommand: open, close, cancel, wait or show");
        if (a->npos == 1 && strcmp(a->pos[0], "job") == 0)
            return usage_error("'job' needs a subcommand: cancel");
        if (a->npos >= 2 && (strcmp(a->pos[0], "group") == 0 || strcmp(a->pos[0], "job") == 0))
            return usage_error("unknown command '%s %s'", a->pos[0], a->pos[1]);
        return usage_error("unknown command '%s'", a->pos[0]);
    }
    for (size_t i = 0; i < sizeof(OPTDEFS) / sizeof(OPTDEFS[0]); i++)
        if (a->given[OPTDEFS[i].id] && !(OPTDEFS[i].cmds & BIT(cmd)))
            return usage_error("option '--%s' does not apply to '%s%s%s'", OPTDEFS[i].name,
                               a->pos[0], nwords > 1 ? " " : "", nwords > 1 ? a->pos[1] : "");

    size_t want = 0;
    const char *shape = "";
    switch (cmd) {
    case CMD_GROUP_OPEN:
    case CMD_WORKER:
        want = 0;
        break;
    case CMD_SUBMIT:
        want = 2;
        shape = "submit GROUP KIND";
        break;
    case CMD_START:
        want = 2;
        shape = "start GROUP KIND";
        break;
    case CMD_JOB_CANCEL:
        want = 1;
        shape = "job cancel JOB";
        break;
    default:
        want = 1;
        shape = "group <open|close|cancel|wait|show> GROUP";
        break;
    }
    size_t nargs = a->npos - nwords;
    if (nargs < want)
        return usage_error("missing argument: %s", shape);
    if (nargs > want)
        return usage_error("unexpected argument '%s'", a->pos[nwords + want]);
    if (a->given[OPT_PARENT] && a->given[OPT_PARENT_JOB])
        return usage_error("give at most one of --parent and --parent-job");
    if (a->given[OPT_PAYLOAD] && a->given[OPT_PAYLOAD_FILE])
        return usage_error("give at most one of --payload and --payload-file");
    struct corral_submit_opts opts;
    memset(&opts, 0, sizeof(opts));
    if (parse_scope(a, &opts.scope) != 0 || parse_retry(a, &opts) != 0)
        return EXIT_USAGE;

    struct ctx x = {.json = a->given[OPT_JSON], .timeout_text = "5s"};
    x.endpoint =
        a->given[OPT_ENDPOINT] ? a->val[OPT_ENDPOINT] : env_nonempty("CORRAL_CLIENT_ENDPOINT");
    if (x.endpoint == NULL)
        x.endpoint = CORRAL_DEFAULT_CLIENT_ENDPOINT;
    x.worker_endpoint = a->given[OPT_WORKER_ENDPOINT] ? a->val[OPT_WORKER_ENDPOINT]
                                                      : env_nonempty("CORRAL_WORKER_ENDPOINT");
    if (x.worker_endpoint == NULL)
        x.worker_endpoint = CORRAL_DEFAULT_WORKER_ENDPOINT;
    if (x.endpoint[0] == '\0' || x.worker_endpoint[0] == '\0')
        return usage_error("an endpoint must not be empty");

    /* --timeout bounds each call to the broker, except for `group wait` and `start`, where
     * it is the wait's own limit (default: forever) and the calls keep the default bound. */
    uint64_t timeout = DEFAULT_TIMEOUT_MS;
    int64_t wait_ms = -1;
    if (a->given[OPT_TIMEOUT]) {
        uint64_t t;
        if (parse_duration("timeout", a->val[OPT_TIMEOUT], &t) != 0)
            return EXIT_USAGE;
        if (cmd == CMD_GROUP_WAIT || cmd == CMD_START) {
            wait_ms = t > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)t;
        } else {
            timeout = t;
            x.timeout_text = a->val[OPT_TIMEOUT];
        }
    }
    x.timeout_ms = ms_to_int(timeout);

    if (cmd == CMD_WORKER)
        return run_worker(&x, a);
    return run_client(&x, cmd, a, a->pos + nwords, &opts, wait_ms);
}

int
main(int argc, char **argv)
{
    struct args a;
    int rc = parse_args(argc, argv, &a);
    if (rc == 0)
        rc = run(&a);
    args_free(&a);
    return rc;
}
