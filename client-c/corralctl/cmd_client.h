/* cmd_client.h - corralctl's client commands (everything but worker and help): each runs
 * on a new libcorral client, prints its answer (text or --json), and returns the exit
 * status of exits.h. */
#ifndef CORRALCTL_CMD_CLIENT_H
#define CORRALCTL_CMD_CLIENT_H

#include <stdbool.h>
#include <stdint.h>

#include "args.h"
#include "corral.h"

/* Settings every command uses, resolved from the options and the environment. */
struct ctx {
    bool json;
    const char *endpoint;
    const char *worker_endpoint;
    const char *timeout_text; /* as given, for messages */
    int timeout_ms;
};

/* Runs client command cmd with its arguments argsv (borrowed; as many as the command
 * takes, then NULL) on a new client; opts (borrowed) applies to submit and start, its
 * scope to group open too. wait_ms bounds `group wait` and `start` (negative: forever).
 * Returns an exit status. */
int run_client(const struct ctx *x, enum command cmd, const struct args *a, const char **argsv,
               const struct corral_submit_opts *opts, int64_t wait_ms);

/* Flushes stdout; returns 0, or EXIT_IOERR after saying why. */
int finish_output(void);

/* Milliseconds as the int libcorral takes, saturating. */
int ms_to_int(uint64_t ms);

#endif
