/* config.h - corrald's settings: every one a flag and a CORRAL_* environment variable
 * with a documented default, from one table (so --help cannot drift from the code). */
#ifndef CORRAL_CONFIG_H
#define CORRAL_CONFIG_H

#include "log.h"
#include "store.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct config {
    char client_endpoint[512];
    char worker_endpoint[512];
    char data_dir[1024];
    enum store_sync sync;
    uint64_t heartbeat_interval_ms;
    uint64_t heartbeat_timeout_ms;
    uint64_t cancel_resend_ms;
    uint64_t cancel_grace_ms;     /* a cancelled job's worker must acknowledge within (D6) */
    uint64_t max_payload;         /* bytes: soft limit, answered with ERR_TOO_LARGE */
    uint64_t max_message;         /* bytes: hard cap (ZMQ_MAXMSGSIZE), the peer is dropped */
    uint64_t max_queued;          /* S11: queued jobs in all before BUSY; 0: no bound */
    uint64_t max_queued_per_kind; /* the same per kind */
    uint64_t send_hwm;            /* ZMQ_SNDHWM of each ROUTER, per peer */
    uint64_t retention_ms;        /* ended root groups are purged this long after */
    enum log_level log_level;
    enum log_format log_format;
};

enum config_result { CONFIG_OK = 0, CONFIG_HELP = 1, CONFIG_VERSION = 2, CONFIG_ERROR = -1 };

/* Fills cfg from defaults, then the environment (getenv), then the arguments (which
 * win). On CONFIG_ERROR writes a message naming the flag or variable and the reason
 * into err. argv is borrowed. */
enum config_result config_parse(struct config *cfg, int argc, char **argv, char *err,
                                size_t errlen);
/* One option of the table: its flag (without "--"), variable, default and what its
 * values look like (ENDPOINT, PATH, DURATION, SIZE, COUNT, ...). All static. */
struct config_option_info {
    const char *flag;
    const char *env;
    const char *def;
    const char *metavar;
};
/* Fills *out with option i; false when there is no option i. */
bool config_option(size_t i, struct config_option_info *out);
/* Writes every effective setting as logfmt pairs "flag=value ..." into buf (len bytes,
 * truncated if too small): the start-up log's record of what corrald runs with. */
void config_format(const struct config *cfg, char *buf, size_t len);

/* Prints the usage text listing every flag, its variable and its default. */
void config_usage(FILE *f);
/* Parses a size: bytes with an optional K, M or G suffix (powers of 1024). 0 or -1. */
int config_parse_size(const char *text, uint64_t *out);

#endif
