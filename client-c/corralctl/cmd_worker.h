/* cmd_worker.h - "corralctl worker": serve job kinds by running a command once per job.
 *
 * Each job runs CMD in its own process group with the payload on its stdin; its stdout
 * becomes the result and exit 0 means success, exit 75 (EX_TEMPFAIL) a failure to retry
 * while attempts remain, another exit a failure of type ExitStatus (the status and the
 * tail of stderr). The first line CMD writes to file descriptor 3 is sent as the job's
 * started() value (readiness, as s6 services signal it). A cancel sends SIGTERM to the
 * process group, then SIGKILL after the grace period, and reports how the command ended
 * (DESIGN D9). */
#ifndef CORRALCTL_CMD_WORKER_H
#define CORRALCTL_CMD_WORKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cmd_worker_opts {
    const char *worker_endpoint; /* the broker's worker endpoint */
    const char *client_endpoint; /* given to commands as CORRAL_CLIENT_ENDPOINT */
    const char *const *kinds;    /* kinds served (at least one) */
    size_t nkinds;
    unsigned concurrency; /* jobs run at once, > 0 */
    uint64_t grace_ms;    /* SIGTERM to SIGKILL; also the drain time on shutdown */
    char *const *argv;    /* the command, NULL-terminated, argv[0] non-NULL */
    bool verbose;         /* one line per job on stderr */
};

/* Runs the worker until SIGTERM or SIGINT, then lets running jobs finish (cancelling
 * them after the grace period) and returns. Every option is borrowed. Blocks SIGCHLD,
 * SIGTERM, SIGINT and SIGPIPE in the calling thread, so call it before starting any
 * thread. Returns the process exit status: 0 after a clean stop, 64 when the command
 * is not found, 69 when the worker could not run or broke down (the reason is printed
 * on stderr), 71 on a local system failure. */
int cmd_worker_run(const struct cmd_worker_opts *o);

#endif
