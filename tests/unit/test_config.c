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

/* A valid value other than the default, and an invalid one, for each kind of value. */
static void
examples(const struct config_option_info *o, const char **good, const char **bad)
{
    static const struct {
        const char *metavar, *good, *bad;
    } table[] = {
        {"ENDPOINT", "ipc:///tmp/corral-test-endpoint", "nowhere"},
        {"PATH", "/tmp/corral-test-data", ""},
        {"DURATION", "1234ms", "soon"},
        {"SIZE", "3M", "big"},
        {"COUNT", "7", "-1"},
        {"full|normal", "normal", "sometimes"},
        {"LEVEL", "debug", "loud"},
        {"logfmt|json", "json", "xml"},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        if (strcmp(o->metavar, table[i].metavar) == 0) {
            *good = table[i].good;
            *bad = table[i].bad;
            return;
        }
    }
    cr_assert_fail("--%s: no example for values like %s: add one to this test", o->flag,
                   o->metavar);
}

/* Every option of the table: its variable is CORRAL_ and the flag's name, a valid value
 * in it changes the configuration, and an invalid one is refused with a message naming
 * the variable (and the flag, when given as a flag). */
Test(config, every_variable_takes_effect_and_bad_values_are_refused)
{
    struct config_option_info o;
    size_t n = 0;
    for (size_t i = 0; config_option(i, &o); i++, n++) {
        char want[64] = "CORRAL_";
        for (size_t k = 0; o.flag[k] && k + 8 < sizeof want; k++)
            want[7 + k] = o.flag[k] == '-' ? '_' : (char)(o.flag[k] - 'a' + 'A');
        cr_assert_str_eq(o.env, want, "--%s", o.flag);
        const char *good, *bad;
        examples(&o, &good, &bad);

        struct config def, cfg;
        char err[256] = "";
        char *argv[] = {"corrald"};
        cr_assert_eq(parse(&def, err, 1, argv), CONFIG_OK, "%s", err);
        setenv(o.env, good, 1);
        cr_assert_eq(parse(&cfg, err, 1, argv), CONFIG_OK, "%s=%s: %s", o.env, good, err);
        cr_assert(memcmp(&def, &cfg, sizeof cfg) != 0, "%s=%s changed nothing", o.env, good);
        char line[4096], flagged[64];
        config_format(&cfg, line, sizeof line);
        snprintf(flagged, sizeof flagged, "%s=", o.flag);
        cr_assert(strstr(line, flagged), "the config line lacks %s: %s", o.flag, line);

        setenv(o.env, bad, 1);
        cr_assert_eq(parse(&cfg, err, 1, argv), CONFIG_ERROR, "%s='%s' accepted", o.env, bad);
        cr_assert(strstr(err, o.env), "%s", err);
        unsetenv(o.env);
        char flag[64];
        snprintf(flag, sizeof flag, "--%s", o.flag);
        char *argv2[] = {"corrald", flag, (char *)bad};
        cr_assert_eq(parse(&cfg, err, 3, argv2), CONFIG_ERROR, "%s '%s' accepted", flag, bad);
        cr_assert(strstr(err, flag), "%s", err);
    }
    cr_assert_geq(n, 16, "the table has every option of corrald");
}
