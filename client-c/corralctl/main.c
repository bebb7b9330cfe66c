/* main.c - corralctl: drive a corral broker from a shell.
 *
 * Parses the command line (args.c), checks the command's words and options, resolves the
 * settings every command shares (endpoints, --timeout), and runs one client command
 * (cmd_client.c) or the worker mode (cmd_worker.c). The exit statuses are those of
 * exits.h: 0 success, 64 usage error, 65 the broker refused, 69 the broker did not answer
 * (or another transport failure), 75 the broker is busy; `group wait` exits 0/1/2 by
 * outcome and 3 on its own timeout, `start` 1/2/4 by how the job ended before readiness
 * and 3 on its own timeout. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "cmd_client.h"
#include "cmd_worker.h"
#include "corral.h"
#include "exits.h"

#define DEFAULT_TIMEOUT_MS 5000
#define DEFAULT_GRACE_MS   10000
#define MAX_CONCURRENCY    65536

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
    enum command cmd = args_command(a, &nwords);
    if (a->given[OPT_HELP] || cmd == CMD_HELP) {
        args_print_usage();
        return finish_output();
    }
    if (cmd == CMD_NONE) {
        if (a->npos == 0)
            return usage_error("no command given");
        if (a->npos == 1 && strcmp(a->pos[0], "group") == 0)
            return usage_error("'group' needs a subcommand: open, close, cancel, wait or show");
        if (a->npos == 1 && strcmp(a->pos[0], "job") == 0)
            return usage_error("'job' needs a subcommand: cancel");
        if (a->npos == 1 && strcmp(a->pos[0], "limiter") == 0)
            return usage_error("'limiter' needs a subcommand: set, show or delete");
        if (a->npos >= 2 && (strcmp(a->pos[0], "group") == 0 || strcmp(a->pos[0], "job") == 0 ||
                             strcmp(a->pos[0], "limiter") == 0))
            return usage_error("unknown command '%s %s'", a->pos[0], a->pos[1]);
        return usage_error("unknown command '%s'", a->pos[0]);
    }
    if (args_check_options(a, cmd, nwords) != 0)
        return EXIT_USAGE;

    size_t want = 0, optional = 0; /* positional arguments: required, then optional */
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
    case CMD_LIMITER_SET:
        want = 2;
        shape = "limiter set NAME TOKENS";
        break;
    case CMD_LIMITER_SHOW:
        optional = 1;
        break;
    case CMD_LIMITER_DELETE:
        want = 1;
        shape = "limiter delete NAME";
        break;
    default:
        want = 1;
        shape = "group <open|close|cancel|wait|show|purge> GROUP";
        break;
    }
    size_t nargs = a->npos - nwords;
    if (nargs < want)
        return usage_error("missing argument: %s", shape);
    if (nargs > want + optional)
        return usage_error("unexpected argument '%s'", a->pos[nwords + want + optional]);
    if (a->given[OPT_PARENT] && a->given[OPT_PARENT_JOB])
        return usage_error("give at most one of --parent and --parent-job");
    if (a->given[OPT_PAYLOAD] && a->given[OPT_PAYLOAD_FILE])
        return usage_error("give at most one of --payload and --payload-file");
    struct corral_submit_opts opts;
    memset(&opts, 0, sizeof(opts));
    if (parse_scope(a, &opts.scope) != 0 || parse_retry(a, &opts) != 0 ||
        parse_limits(a, &opts) != 0)
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
    int rc = args_parse(argc, argv, &a);
    if (rc == 0)
        rc = run(&a);
    args_free(&a);
    return rc;
}
