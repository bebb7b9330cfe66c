/* test_config.c - flags, CORRAL_* variables, defaults, durations and sizes. */
#include "config.h"
#include "duration.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

static enum config_result
parse(struct config *cfg, char *err, int argc, char **argv)
{
    return config_parse(cfg, argc, argv, err, 256);
}

Test(config, defaults)
{
    struct config cfg;
    char err[256];
    char *argv[] = {"corrald"};
    cr_assert_eq(parse(&cfg, err, 1, argv), CONFIG_OK);
    cr_assert_str_eq(cfg.client_endpoint, "tcp://127.0.0.1:7700");
    cr_assert_str_eq(cfg.worker_endpoint, "tcp://127.0.0.1:7701");
    cr_assert_str_eq(cfg.data_dir, "./corral-data");
    cr_assert_eq(cfg.sync, STORE_SYNC_FULL);
    cr_assert_eq(cfg.heartbeat_interval_ms, 1000);
    cr_assert_eq(cfg.heartbeat_timeout_ms, 5000);
    cr_assert_eq(cfg.max_payload, 1 << 20);
}

Test(config, environment_then_flags_win)
{
    struct config cfg;
    char err[256];
    setenv("CORRAL_SYNC", "normal", 1);
    setenv("CORRAL_DATA_DIR", "/tmp/from-env", 1);
    char *argv[] = {"corrald", "--data-dir", "/tmp/from-flag", "--heartbeat-timeout=2500ms"};
    cr_assert_eq(parse(&cfg, err, 4, argv), CONFIG_OK, "%s", err);
    cr_assert_eq(cfg.sync, STORE_SYNC_NORMAL);
    cr_assert_str_eq(cfg.data_dir, "/tmp/from-flag");
    cr_assert_eq(cfg.heartbeat_timeout_ms, 2500);
}

Test(config, bad_values_name_the_flag)
{
    struct config cfg;
    char err[256];
    char *a1[] = {"corrald", "--sync", "sometimes"};
    cr_assert_eq(parse(&cfg, err, 3, a1), CONFIG_ERROR);
    cr_assert(strstr(err, "--sync"), "%s", err);
    char *a2[] = {"corrald", "--heartbeat-interval", "fast"};
    cr_assert_eq(parse(&cfg, err, 3, a2), CONFIG_ERROR);
    cr_assert(strstr(err, "--heartbeat-interval"), "%s", err);
    char *a3[] = {"corrald", "--bogus", "1"};
    cr_assert_eq(parse(&cfg, err, 3, a3), CONFIG_ERROR);
    char *a4[] = {"corrald", "--max-payload"};
    cr_assert_eq(parse(&cfg, err, 2, a4), CONFIG_ERROR);
    setenv("CORRAL_MAX_PAYLOAD", "lots", 1);
    char *a5[] = {"corrald"};
    cr_assert_eq(parse(&cfg, err, 1, a5), CONFIG_ERROR);
    cr_assert(strstr(err, "CORRAL_MAX_PAYLOAD"), "%s", err);
    unsetenv("CORRAL_MAX_PAYLOAD");
}

Test(config, durations_one_grammar)
{
    uint64_t ms;
    cr_assert_eq(duration_parse_ms("250ms", &ms), 0);
    cr_assert_eq(ms, 250);
    cr_assert_eq(duration_parse_ms("1.5s", &ms), 0);
    cr_assert_eq(ms, 1500);
    cr_assert_eq(duration_parse_ms("2m", &ms), 0);
    cr_assert_eq(ms, 120000);
    cr_assert_eq(duration_parse_ms("1h", &ms), 0);
    cr_assert_eq(ms, 3600000);
    cr_assert_eq(duration_parse_ms("30", &ms), 0, "a bare number is seconds");
    cr_assert_eq(ms, 30000);
    cr_assert_neq(duration_parse_ms("", &ms), 0);
    cr_assert_neq(duration_parse_ms("-1s", &ms), 0);
    cr_assert_eq(duration_parse_ms("7d", &ms), 0);
    cr_assert_eq(ms, 7ull * 86400000);
    cr_assert_neq(duration_parse_ms("5w", &ms), 0);
    cr_assert_neq(duration_parse_ms("s", &ms), 0);
}

Test(config, sizes)
{
    uint64_t n;
    cr_assert_eq(config_parse_size("1K", &n), 0);
    cr_assert_eq(n, 1024);
    cr_assert_eq(config_parse_size("16M", &n), 0);
    cr_assert_eq(n, 16u << 20);
    cr_assert_eq(config_parse_size("100", &n), 0);
    cr_assert_eq(n, 100);
    cr_assert_neq(config_parse_size("1T", &n), 0);
    cr_assert_neq(config_parse_size("x", &n), 0);
}
