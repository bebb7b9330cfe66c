/* test_retention.c - nothing grows without bound: ended root groups are purged with their
 * whole tree once --retention has passed since they ended, or at once by PurgeGroup
 * (`corralctl group purge`), from memory and from the database, and a purge cut short by
 * kill -9 finishes after the restart. Against the real corrald, reading its SQLite file
 * directly to see the rows go. */
#include <criterion/criterion.h>

#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

#include "clock.h"
#include "harness.h"

#define WAIT_MS 10000

TestSuite(retention, .fini = harness_teardown);

/* ------------------------------------------------------------------ helpers */

/* Runs a one-row query on the broker's database (read-only, beside the running broker:
 * WAL lets a reader in) and returns its first column. */
static long long
db_count(const struct broker *b, const char *sql)
{
    char path[400];
    snprintf(path, sizeof path, "%s/corral.db", b->data_dir);
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL);
    cr_assert(rc == SQLITE_OK, "open %s: %s", path, sqlite3_errstr(rc));
    sqlite3_busy_timeout(db, 2000);
    sqlite3_stmt *st = NULL;
    rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    cr_assert(rc == SQLITE_OK, "prepare %s: %s", sql, sqlite3_errmsg(db));
    rc = sqlite3_step(st);
    cr_assert(rc == SQLITE_ROW, "%s: %s", sql, sqlite3_errmsg(db));
    long long v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* Rows in groups, jobs and purging together. */
static long long
db_rows(const struct broker *b)
{
    return db_count(b, "SELECT (SELECT count(*) FROM groups) + (SELECT count(*) FROM jobs) + "
                       "(SELECT count(*) FROM purging)");
}

struct rows_arg {
    const struct broker *b;
    long long want;
};

static bool
rows_are(void *arg)
{
    struct rows_arg *r = arg;
    return db_rows(r->b) == r->want;
}

static int
tree_code(struct corral_client *c, const char *id)
{
    struct corral_node *t = NULL;
    int rc = corral_group_tree(c, id, &t);
    corral_node_free(&t);
    return rc;
}

struct gone_arg {
    struct corral_client *c;
    const char *id;
};

static bool
group_gone(void *arg)
{
    struct gone_arg *g = arg;
    return tree_code(g->c, g->id) == CORRAL_ENOTFOUND;
}

/* Opens a root with n echo jobs, closes it and waits until it succeeded. */
static void
ended_root(struct corral_client *c, size_t n, char id[CORRAL_ID_MAX])
{
    open_root(c, id);
    for (size_t i = 0; i < n; i++) {
        char j[CORRAL_ID_MAX];
        submit(c, id, "echo", "x", j);
    }
    cr_assert_eq(corral_group_close(c, id), CORRAL_OK);
    struct corral_node *t = wait_group(c, id, WAIT_MS);
    cr_assert_eq(t->outcome, CORRAL_OUTCOME_SUCCEEDED);
    corral_node_free(&t);
}

/* A root holding n queued jobs (no worker runs their kind), cancelled and ended. */
static void
cancelled_root(struct corral_client *c, size_t n, char id[CORRAL_ID_MAX])
{
    open_root(c, id);
    for (size_t i = 0; i < n; i++) {
        char j[CORRAL_ID_MAX];
        submit(c, id, "nobody", NULL, j);
    }
    cr_assert_eq(corral_group_cancel(c, id, "done with it"), CORRAL_OK);
    cr_assert_eq(corral_group_close(c, id), CORRAL_OK);
    struct corral_node *t = wait_group(c, id, 60000);
    cr_assert_eq(t->outcome, CORRAL_OUTCOME_CANCELLED);
    corral_node_free(&t);
}

/* ------------------------------------------------------------------ PurgeGroup */

/* A purge takes the whole tree: nested groups, the groups a job opened (D5) and their
 * jobs; every id of it is unknown afterwards, also after a restart, and its rows leave
 * the database. Other trees are untouched. */
Test(retention, purge_deletes_the_whole_tree_from_memory_and_database)
{
    struct broker b;
    broker_start(&b, (const char *const[]){NULL});
    struct test_worker *w = test_worker_start(&b, 4);
    struct corral_client *c = client_connect(&b);

    char keep[CORRAL_ID_MAX];
    ended_root(c, 2, keep);
    long long rows_before = db_rows(&b);

    char g[CORRAL_ID_MAX], sub[CORRAL_ID_MAX], j1[CORRAL_ID_MAX], j2[CORRAL_ID_MAX];
    char owner[CORRAL_ID_MAX], jg[CORRAL_ID_MAX], j3[CORRAL_ID_MAX];
    open_root(c, g);
    open_child(c, g, sub);
    submit(c, g, "echo", "a", j1);
    submit(c, sub, "echo", "s", j2);
    /* A raw worker runs `owner`, which opens a group of its own with one job in it. */
    struct raw_peer rw;
    raw_worker_register(&rw, &b, (const char *const[]){"raw"}, 1, 1);
    submit(c, g, "raw", NULL, owner);
    Corral__V1__Envelope *d =
        raw_worker_expect(&rw, CORRAL__V1__ENVELOPE__BODY_DISPATCH, WAIT_MS, true);
    cr_assert_not_null(d);
    cr_assert_str_eq(d->dispatch->job, owner);
    uint32_t attempt = d->dispatch->attempt;
    corral__v1__envelope__free_unpacked(d, NULL);
    cr_assert_eq(corral_group_open(c, NULL, owner, jg, NULL), CORRAL_OK);
    submit(c, jg, "echo", "b", j3);
    cr_assert_eq(corral_group_close(c, jg), CORRAL_OK);
    cr_assert(node_eventually(c, g, j3, CORRAL_STATE_ENDED, WAIT_MS));
    cr_assert_eq(raw_worker_done(&rw, owner, attempt, "owned"), CORRAL_OK);
    cr_assert_eq(corral_group_close(c, sub), CORRAL_OK);

    /* Not yet ended: refused, and so is a nested group. */
    uint64_t nodes = 0;
    cr_assert_eq(corral_group_purge(c, g, &nodes), CORRAL_EWRONGSTATE);
    cr_assert_eq(corral_group_close(c, g), CORRAL_OK);
    struct corral_node *t = wait_group(c, g, WAIT_MS);
    cr_assert_eq(t->outcome, CORRAL_OUTCOME_SUCCEEDED);
    corral_node_free(&t);
    cr_assert_eq(corral_group_purge(c, sub, &nodes), CORRAL_EWRONGSTATE);
    cr_assert(strstr(corral_client_last_error(c), g) != NULL,
              "the error names the root to purge: %s", corral_client_last_error(c));

    cr_assert_eq(corral_group_purge(c, g, &nodes), CORRAL_OK);
    cr_assert_eq(nodes, 7, "g, sub, j1, j2, owner, jg, j3: got %llu", (unsigned long long)nodes);
    const char *groups[] = {g, sub, jg};
    for (size_t i = 0; i < 3; i++)
        cr_assert_eq(tree_code(c, groups[i]), CORRAL_ENOTFOUND, "%s", groups[i]);
    const char *jobs[] = {j1, j2, owner, j3};
    for (size_t i = 0; i < 4; i++)
        cr_assert_eq(corral_job_cancel(c, jobs[i], NULL), CORRAL_ENOTFOUND, "%s", jobs[i]);
    cr_assert_eq(corral_group_purge(c, g, &nodes), CORRAL_ENOTFOUND, "purged once");
    cr_assert_eq(corral_submit(c, sub, "echo", NULL, 0, j1, NULL), CORRAL_ENOTFOUND);
    struct rows_arg ra = {&b, rows_before};
    cr_assert(eventually(rows_are, &ra, WAIT_MS), "rows left: %lld, expected %lld", db_rows(&b),
              rows_before);

    test_worker_stop(&w);
    raw_close(&rw);
    corral_client_free(&c);
    broker_stop(&b);
    broker_restart(&b);
    c = client_connect(&b);
    cr_assert_eq(tree_code(c, g), CORRAL_ENOTFOUND, "a purge survives a restart");
    cr_assert_eq(tree_code(c, keep), CORRAL_OK, "other trees are untouched");
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* corralctl group purge: the count, --json, and the exit statuses of the refusals. */
Test(retention, corralctl_group_purge)
{
    struct broker b;
    broker_start(&b, (const char *const[]){NULL});
    struct test_worker *w = test_worker_start(&b, 2);
    struct corral_client *c = client_connect(&b);
    char g[CORRAL_ID_MAX], open[CORRAL_ID_MAX], g2[CORRAL_ID_MAX];
    ended_root(c, 3, g);
    ended_root(c, 0, g2);
    open_root(c, open);

    char out[4096];
    cr_assert_eq(run_ctl(&b, out, sizeof out, (const char *const[]){"group", "purge", g, NULL}), 0);
    char want[128];
    snprintf(want, sizeof want, "purged %s (4 nodes)\n", g);
    cr_assert_str_eq(out, want);
    cr_assert_eq(
        run_ctl(&b, out, sizeof out, (const char *const[]){"group", "purge", g2, "--json", NULL}),
        0);
    snprintf(want, sizeof want, "\"purged_nodes\": 1");
    cr_assert(strstr(out, want) != NULL && strstr(out, g2) != NULL, "%s", out);
    /* Unknown (purged) and wrong state keep their documented exit statuses. */
    int not_found = run_ctl(&b, out, sizeof out, (const char *const[]){"group", "purge", g, NULL});
    int wrong = run_ctl(&b, out, sizeof out, (const char *const[]){"group", "purge", open, NULL});
    int show = run_ctl(&b, out, sizeof out, (const char *const[]){"group", "show", g, NULL});
    cr_assert_eq(not_found, 65, "refused by the broker: EX_DATAERR");
    cr_assert_eq(show, 65);
    cr_assert_eq(wrong, 65, "wrong state: %d", wrong);
    cr_assert_eq(run_ctl(&b, out, sizeof out, (const char *const[]){"group", "purge", NULL}), 64);

    test_worker_stop(&w);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* ------------------------------------------------------------------ --retention */

/* An ended root goes once the retention has passed since it ended, also when the broker
 * restarted meanwhile; a root that has not ended stays however old. */
Test(retention, ended_roots_are_purged_after_the_retention_period)
{
    struct broker b;
    broker_start(&b, (const char *const[]){"--retention", "1500ms", NULL});
    struct test_worker *w = test_worker_start(&b, 2);
    struct corral_client *c = client_connect(&b);
    char a[CORRAL_ID_MAX], later[CORRAL_ID_MAX], open[CORRAL_ID_MAX];
    open_root(c, open);
    ended_root(c, 2, a);
    uint64_t t0 = clock_mono_ms();
    struct gone_arg ga = {c, a};
    cr_assert(eventually(group_gone, &ga, WAIT_MS), "%s not purged", a);
    uint64_t took = clock_mono_ms() - t0;
    cr_assert(took >= 1400, "purged after %llu ms, before the retention passed",
              (unsigned long long)took);

    /* It ends just before a restart; the restarted broker purges it on time. */
    ended_root(c, 1, later);
    test_worker_stop(&w);
    corral_client_free(&c);
    broker_stop(&b);
    broker_restart(&b);
    c = client_connect(&b);
    ga = (struct gone_arg){c, later};
    cr_assert(eventually(group_gone, &ga, WAIT_MS), "%s not purged after the restart", later);
    cr_assert_eq(tree_code(c, open), CORRAL_OK, "an open root stays");
    cr_assert_eq(db_count(&b, "SELECT count(*) FROM groups"), 1);
    cr_assert_eq(db_count(&b, "SELECT count(*) FROM jobs"), 0);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* A tree of 6000 jobs is purged in batches: the broker keeps answering meanwhile and the
 * rows all go. */
Test(retention, a_large_tree_is_purged_in_batches_while_the_broker_serves, .timeout = 120)
{
    struct broker b;
    broker_start(&b,
                 (const char *const[]){"--max-queued", "0", "--max-queued-per-kind", "0", NULL});
    struct corral_client *c = client_connect(&b);
    char big[CORRAL_ID_MAX];
    cancelled_root(c, 6000, big);
    uint64_t nodes = 0;
    cr_assert_eq(corral_group_purge(c, big, &nodes), CORRAL_OK);
    cr_assert_eq(nodes, 6001);
    /* Requests in between are answered (each within the client's 5 s timeout). */
    for (int i = 0; i < 20; i++) {
        char g[CORRAL_ID_MAX];
        open_root(c, g);
    }
    struct rows_arg ra = {&b, 20};
    cr_assert(eventually(rows_are, &ra, 30000), "rows left: %lld", db_rows(&b));
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}

/* kill -9 while a large purge is under way: after the restart the tree stays gone and the
 * purge finishes (the marker row makes it resume, and rows left form whole trees, so
 * recovery accepts the database). */
Test(retention, a_purge_cut_short_by_kill9_finishes_after_restart, .timeout = 120)
{
    struct broker b;
    broker_start(&b,
                 (const char *const[]){"--max-queued", "0", "--max-queued-per-kind", "0", NULL});
    struct corral_client *c = client_connect(&b);
    char big[CORRAL_ID_MAX], keep[CORRAL_ID_MAX];
    cancelled_root(c, 12000, big);
    open_root(c, keep);
    cr_assert_eq(corral_group_purge(c, big, NULL), CORRAL_OK);
    broker_kill9(&b);
    corral_client_free(&c);
    /* Whatever the kill cut short, the root's row and its marker go together. */
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM groups WHERE id = %s", big + 1);
    long long root_row = db_count(&b, sql);
    long long marker = db_count(&b, "SELECT count(*) FROM purging");
    cr_assert_eq(root_row, marker, "root row %lld, marker %lld", root_row, marker);
    cr_log_info("killed with %lld rows of the tree left", db_rows(&b) - 1);

    broker_restart(&b);
    c = client_connect(&b);
    cr_assert_eq(tree_code(c, big), CORRAL_ENOTFOUND, "acknowledged purge stays done");
    cr_assert_eq(tree_code(c, keep), CORRAL_OK);
    struct rows_arg ra = {&b, 1};
    cr_assert(eventually(rows_are, &ra, 30000), "rows left: %lld", db_rows(&b));
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}
