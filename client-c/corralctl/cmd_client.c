/* cmd_client.c - corralctl's client commands: group open/close/cancel/wait/show, submit,
 * start, job cancel and limiter set/show/delete, each on a new libcorral client, with
 * their output and the exit status of the outcome (exits.h). See cmd_client.h. */
#include "cmd_client.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "exits.h"
#include "json.h"
#include "print.h"
#include "rfc3339.h"

#define MAX_PAYLOAD_FILE ((size_t)1 << 30) /* never read more than 1 GiB */

/* Milliseconds as the int libcorral takes, saturating. */
int
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
    if (err == CORRAL_EBUSY) {
        /* "the broker is busy: WHY (retry after N ms)", saying neither part twice: the
         * broker's message may start the same way, and the library's own text (when the
         * broker sent none) already gives the hint. */
        static const char busy[] = "the broker is busy";
        uint32_t hint = corral_client_retry_after_ms(c);
        if (msg[0] == '\0')
            fprintf(stderr, "corralctl: %s", busy);
        else if (strncmp(msg, busy, sizeof(busy) - 1) == 0)
            fprintf(stderr, "corralctl: %s", msg);
        else
            fprintf(stderr, "corralctl: %s: %s", busy, msg);
        if (hint > 0 && strstr(msg, "retry after") == NULL)
            fprintf(stderr, " (retry after %" PRIu32 " ms)", hint);
        fputc('\n', stderr);
        return EXIT_TEMPFAIL;
    }
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
int
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

/* Prints the id of a submitted job: the bare id, or {"id": ID, "cancelled": BOOL,
 * "duplicate": BOOL} (duplicate: the id is that of an earlier job with the same
 * --idempotency-key). Returns an exit status. */
static int
print_submitted(const struct ctx *x, const char *id, bool cancelled, bool duplicate)
{
    if (x->json) {
        struct json_writer w;
        json_init(&w, stdout);
        json_begin_object(&w);
        json_key(&w, "id");
        json_string(&w, id);
        json_key(&w, "cancelled");
        json_bool(&w, cancelled);
        json_key(&w, "duplicate");
        json_bool(&w, duplicate);
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

/* Prints what group purge deleted. Returns an exit status. */
static int
print_purged(const struct ctx *x, const char *group, uint64_t nodes)
{
    if (x->json) {
        struct json_writer w;
        json_init(&w, stdout);
        json_begin_object(&w);
        json_key(&w, "group");
        json_string(&w, group);
        json_key(&w, "purged_nodes");
        json_int(&w, (int64_t)nodes);
        json_end_object(&w);
        json_finish(&w);
    } else {
        printf("purged %s (%" PRIu64 " %s)\n", group, nodes, nodes == 1 ? "node" : "nodes");
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

/* `limiter show [NAME]`: one limiter (name non-NULL) or all of them, as a table or as
 * --json (an object for one, an array for all). */
static int
cmd_limiter_show(const struct ctx *x, struct corral_client *c, const char *name)
{
    struct corral_limiter *lims = NULL;
    size_t n = 0;
    int err = corral_limiter_get(c, name, &lims, &n);
    if (err != CORRAL_OK)
        return fail(x, c, err);
    if (x->json)
        print_limiters_json(stdout, lims, n, name == NULL);
    else
        print_limiters_text(stdout, lims, n);
    corral_limiters_free(&lims, n);
    return finish_output();
}

/* Checks the arguments of a limiter command (borrowed; argsv NULL-terminated) and reads
 * TOKENS of `limiter set` into *tokens. Returns 0 or EXIT_USAGE after saying why. */
static int
check_limiter_args(enum command cmd, const char **argsv, uint32_t *tokens)
{
    if (argsv[0] != NULL && argsv[0][0] == '\0')
        return usage_error("a limiter's NAME must not be empty");
    if (cmd == CMD_LIMITER_SET)
        return parse_tokens(argsv[1], tokens);
    return 0;
}

/* Runs a client command (everything but worker and help) on a new client; opts (borrowed)
 * applies to submit and start, its scope to group open too. */
int
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
    uint32_t tokens = 0;
    if ((cmd == CMD_LIMITER_SET || cmd == CMD_LIMITER_SHOW || cmd == CMD_LIMITER_DELETE) &&
        check_limiter_args(cmd, argsv, &tokens) != 0)
        return EXIT_USAGE;
    /* submit --json tells whether the id is that of an earlier job with the same key. */
    bool duplicate = false;
    struct corral_submit_opts sopts = *opts;
    sopts.duplicate = &duplicate;
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
        err = corral_submit_opts(c, argsv[0], argsv[1], payload, plen, &sopts, id, &cancelled);
        rc = err != CORRAL_OK ? fail(x, c, err) : print_submitted(x, id, cancelled, duplicate);
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
    case CMD_GROUP_PURGE: {
        uint64_t purged = 0;
        err = corral_group_purge(c, argsv[0], &purged);
        rc = err != CORRAL_OK ? fail(x, c, err) : print_purged(x, argsv[0], purged);
        break;
    }
    case CMD_GROUP_WAIT:
        rc = cmd_group_wait(x, c, argsv[0], wait_ms,
                            a->given[OPT_TIMEOUT] ? a->val[OPT_TIMEOUT] : "forever");
        break;
    case CMD_LIMITER_SET:
        err = corral_limiter_set(c, argsv[0], tokens);
        rc = err != CORRAL_OK ? fail(x, c, err) : print_ok(x);
        break;
    case CMD_LIMITER_SHOW:
        rc = cmd_limiter_show(x, c, argsv[0]);
        break;
    case CMD_LIMITER_DELETE:
        err = corral_limiter_delete(c, argsv[0]);
        rc = err != CORRAL_OK ? fail(x, c, err) : print_ok(x);
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
