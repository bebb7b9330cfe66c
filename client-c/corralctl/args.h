/* args.h - corralctl's command line: the commands, the options and where each applies,
 * the help text, and the parsing of option values (durations, scopes, retry policy,
 * limiters and backpressure, token counts).
 * Global options may come anywhere on the line. */
#ifndef CORRALCTL_ARGS_H
#define CORRALCTL_ARGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "corral.h"

enum command {
    CMD_NONE = 0,
    CMD_HELP,
    CMD_GROUP_OPEN,
    CMD_GROUP_CLOSE,
    CMD_GROUP_CANCEL,
    CMD_GROUP_WAIT,
    CMD_GROUP_SHOW,
    CMD_GROUP_PURGE,
    CMD_SUBMIT,
    CMD_START,
    CMD_JOB_CANCEL,
    CMD_WORKER,
    CMD_LIMITER_SET,
    CMD_LIMITER_SHOW,
    CMD_LIMITER_DELETE,
};

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
    OPT_LIMITER,
    OPT_IDEMPOTENCY_KEY,
    OPT_WAIT_FOR_CAPACITY,
    OPT_COUNT,
};

/* The parsed command line; strings borrow argv. */
struct args {
    const char *val[OPT_COUNT]; /* last value of each option given with a value */
    bool given[OPT_COUNT];
    const char **kinds; /* every --kind, in order (owned array) */
    size_t nkinds;
    const char **limiters; /* every --limiter, in order (owned array) */
    size_t nlimiters;
    const char **pos; /* positional words (owned array) */
    size_t npos;
    char **cmd_argv; /* worker: the command, NULL-terminated (borrows argv) */
};

/* Parses argv into a (options anywhere; "--" ends them; in worker mode the first word
 * after "worker" that is not an option starts the command). Returns 0, or EXIT_USAGE
 * after printing why, or EXIT_OSERR. a is to be freed with args_free either way. */
int args_parse(int argc, char **argv, struct args *a);

/* Frees what args_parse() allocated. */
void args_free(struct args *a);

/* Works out the command from the leading positional words; *nwords says how many words
 * name it. CMD_NONE when they name no command. */
enum command args_command(const struct args *a, size_t *nwords);

/* Checks that every option given applies to cmd (named by nwords words). Returns 0 or
 * EXIT_USAGE after saying why. */
int args_check_options(const struct args *a, enum command cmd, size_t nwords);

/* Prints the help text on stdout. */
void args_print_usage(void);

/* Prints a usage error and a hint on stderr; returns EXIT_USAGE. */
__attribute__((format(printf, 1, 2))) int usage_error(const char *fmt, ...);

/* An environment variable, or NULL when unset or empty. */
const char *env_nonempty(const char *name);

/* Parses the value of option --opt, a duration, into milliseconds. Returns 0 or
 * EXIT_USAGE. */
int parse_duration(const char *opt, const char *text, uint64_t *out);

/* Reads the scope options (--deadline, --deadline-at, --on-deadline, --shield) into *out.
 * Returns 0 or EXIT_USAGE. */
int parse_scope(const struct args *a, struct corral_scope *out);

/* Reads the retry options (--max-attempts, --backoff) into *out. Returns 0 or EXIT_USAGE. */
int parse_retry(const struct args *a, struct corral_submit_opts *out);

/* Reads the limiter and backpressure options (--limiter, --idempotency-key,
 * --wait-for-capacity) into *out, whose strings then borrow a (and argv). Limiter names
 * must be non-empty and distinct. Returns 0 or EXIT_USAGE. */
int parse_limits(const struct args *a, struct corral_submit_opts *out);

/* Parses text (borrowed), a limiter's token count, an integer from 0 to 4294967295, into
 * *out. Returns 0 or EXIT_USAGE after saying why. */
int parse_tokens(const char *text, uint32_t *out);

#endif
