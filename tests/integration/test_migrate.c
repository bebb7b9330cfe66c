/* test_migrate.c - the store's schema migrations against the real corrald: a database
 * written at schema version 1 (the schema before deadlines and shields, byte for byte as
 * corrald 5baf211 created it) is opened by this corrald, which upgrades it in place to the
 * version and columns of a freshly created database (2 or more: 2 added deadlines and
 * shields); the old rows are intact, work goes on, and the new columns persist.
 *
 * The version-1 database is written here with libsqlite3 directly, in the data dir of a
 * broker that was started once (to get its temp dir and endpoints) and stopped. */
#include <criterion/criterion.h>

#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "harness.h"

#define WAIT_MS 10000

TestSuite(migration, .fini = harness_teardown);

/* MIGRATIONS[0] of broker/store.c at 5baf211, the last schema version 1. */
static const char V1_SCHEMA[] = "CREATE TABLE groups ("
                                " id INTEGER PRIMARY KEY,"
                                " parent_type INTEGER NOT NULL,"
                                " parent_id INTEGER NOT NULL,"
                                " state INTEGER NOT NULL,"
                                " outcome INTEGER NOT NULL,"
                                " closed INTEGER NOT NULL,"
                                " cancel_called INTEGER NOT NULL,"
                                " cancelled_caught INTEGER NOT NULL,"
                                " cancel_source INTEGER NOT NULL,"
                                " cancel_reason TEXT,"
                                " failed_seq INTEGER NOT NULL,"
                                " created_ms INTEGER NOT NULL,"
                                " ended_ms INTEGER NOT NULL);"
                                "CREATE TABLE jobs ("
                                " id INTEGER PRIMARY KEY,"
                                " group_id INTEGER NOT NULL,"
                                " kind TEXT,"
                                " payload BLOB NOT NULL,"
                                " state INTEGER NOT NULL,"
                                " outcome INTEGER NOT NULL,"
                                " attempt INTEGER NOT NULL,"
                                " result BLOB NOT NULL,"
                                " err_type TEXT,"
                                " err_message TEXT,"
                                " err_details BLOB NOT NULL,"
                                " cancel_called INTEGER NOT NULL,"
                                " cancelled_caught INTEGER NOT NULL,"
                                " cancel_source INTEGER NOT NULL,"
                                " cancel_reason TEXT,"
                                " failed_seq INTEGER NOT NULL,"
                                " created_ms INTEGER NOT NULL,"
                                " ended_ms INTEGER NOT NULL);";

static void
db_exec(sqlite3 *db, const char *sql)
{
    char *err = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &err);
    cr_assert(rc == SQLITE_OK, "sqlite: %s: %s", sql, err != NULL ? err : sqlite3_errstr(rc));
    sqlite3_free(err);
}

/* Runs a one-row query and returns its first column as an integer. */
static long long
db_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    cr_assert(rc == SQLITE_OK, "sqlite: prepare %s: %s", sql, sqlite3_errmsg(db));
    rc = sqlite3_step(st);
    cr_assert(rc == SQLITE_ROW, "sqlite: %s: no row (%s)", sql, sqlite3_errmsg(db));
    long long v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

/* Appends "table.name type notnull default;" for every column of the table to buf. */
static void
db_columns(sqlite3 *db, const char *table, char *buf, size_t buflen)
{
    char sql[128];
    snprintf(sql, sizeof sql,
             "SELECT name, type, \"notnull\", dflt_value FROM pragma_table_info('%s')", table);
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    cr_assert(rc == SQLITE_OK, "sqlite: prepare %s: %s", sql, sqlite3_errmsg(db));
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        size_t used = strlen(buf);
        const unsigned char *dflt = sqlite3_column_text(st, 3);
        snprintf(buf + used, buflen - used, "%s.%s %s %d %s; ", table,
                 (const char *)sqlite3_column_text(st, 0), (const char *)sqlite3_column_text(st, 1),
                 sqlite3_column_int(st, 2), dflt != NULL ? (const char *)dflt : "-");
    }
    cr_assert(rc == SQLITE_DONE, "sqlite: %s: %s", sql, sqlite3_errmsg(db));
    sqlite3_finalize(st);
}

static sqlite3 *
db_open(const struct broker *b)
{
    char path[400];
    snprintf(path, sizeof path, "%s/corral.db", b->data_dir);
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    cr_assert(rc == SQLITE_OK, "sqlite: open %s: %s", path,
              db != NULL ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    return db;
}

/* Replaces the broker's database (corrald is stopped) by a version-1 one holding:
 *   g1  root, ENDED SUCCEEDED, closed
 *     j2  echo, ENDED SUCCEEDED, attempt 1, result "r1"
 *     j6  sleep, ENDED CANCELLED by an explicit cancel "old reason"
 *   g3  root, OPEN
 *     j4  echo, QUEUED, payload "after upgrade"
 *     g5  child group, OPEN */
static void
write_v1_database(const struct broker *b)
{
    const char *suffixes[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < 3; i++) {
        char path[400];
        snprintf(path, sizeof path, "%s/corral.db%s", b->data_dir, suffixes[i]);
        unlink(path);
    }
    sqlite3 *db = db_open(b);
    sqlite3_stmt *st = NULL;
    cr_assert(sqlite3_prepare_v2(db, "PRAGMA journal_mode = WAL", -1, &st, NULL) == SQLITE_OK);
    cr_assert(sqlite3_step(st) == SQLITE_ROW);
    cr_assert_str_eq((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);

    unsigned long long now = (unsigned long long)clock_wall_ms();
    char sql[4096];
    db_exec(db, "BEGIN IMMEDIATE");
    db_exec(db, V1_SCHEMA);
    db_exec(db, "PRAGMA user_version = 1");
    snprintf(sql, sizeof sql,
             "INSERT INTO groups (id, parent_type, parent_id, state, outcome, closed, "
             "cancel_called, cancelled_caught, cancel_source, cancel_reason, failed_seq, "
             "created_ms, ended_ms) VALUES "
             "(1, 0, 0, 4, 1, 1, 0, 0, 0, NULL, 0, %llu, %llu),"
             "(3, 0, 0, 5, 0, 0, 0, 0, 0, NULL, 0, %llu, 0),"
             "(5, 1, 3, 5, 0, 0, 0, 0, 0, NULL, 0, %llu, 0);",
             now - 60000, now - 59000, now - 30000, now - 29000);
    db_exec(db, sql);
    snprintf(sql, sizeof sql,
             "INSERT INTO jobs (id, group_id, kind, payload, state, outcome, attempt, result, "
             "err_type, err_message, err_details, cancel_called, cancelled_caught, "
             "cancel_source, cancel_reason, failed_seq, created_ms, ended_ms) VALUES "
             "(2, 1, 'echo', CAST('r1' AS BLOB), 4, 1, 1, CAST('r1' AS BLOB), NULL, NULL, X'', "
             "0, 0, 0, NULL, 0, %llu, %llu),"
             "(4, 3, 'echo', CAST('after upgrade' AS BLOB), 1, 0, 0, X'', NULL, NULL, X'', "
             "0, 0, 0, NULL, 0, %llu, 0),"
             "(6, 1, 'sleep', CAST('60000' AS BLOB), 4, 3, 1, X'', NULL, NULL, X'', "
             "1, 1, 1, 'old reason', 0, %llu, %llu);",
             now - 60000, now - 59500, now - 30000, now - 60000, now - 59200);
    db_exec(db, sql);
    db_exec(db, "COMMIT");
    cr_assert_eq(db_int(db, "PRAGMA user_version"), 1);
    cr_assert_eq(sqlite3_close(db), SQLITE_OK);
}

/* Opens a root group over a raw client with a Scope; returns its id in id. */
static void
raw_open_scoped(struct raw_peer *p, uint64_t timeout_ms, uint64_t deadline_unix_ms, bool move_on,
                char id[CORRAL_ID_MAX])
{
    Corral__V1__Envelope env;
    Corral__V1__OpenGroup og;
    Corral__V1__Scope sc;
    corral__v1__envelope__init(&env);
    corral__v1__open_group__init(&og);
    corral__v1__scope__init(&sc);
    sc.timeout_ms = timeout_ms;
    sc.deadline_unix_ms = deadline_unix_ms;
    sc.on_deadline = move_on ? CORRAL__V1__ON_DEADLINE__ON_DEADLINE_MOVE_ON
                             : CORRAL__V1__ON_DEADLINE__ON_DEADLINE_FAIL;
    og.scope = &sc;
    env.body_case = CORRAL__V1__ENVELOPE__BODY_OPEN_GROUP;
    env.open_group = &og;
    Corral__V1__Envelope *r = raw_request(p, &env, 5000);
    cr_assert(r->body_case == CORRAL__V1__ENVELOPE__BODY_REPLY && r->reply != NULL);
    cr_assert_eq(r->reply->code, CORRAL__V1__ERROR_CODE__ERR_OK, "OpenGroup refused: %d %s",
                 (int)r->reply->code, r->reply->message);
    snprintf(id, CORRAL_ID_MAX, "%s", r->reply->id);
    corral__v1__envelope__free_unpacked(r, NULL);
}

/* The node id of the tree of group, over a raw client (owned envelope in *env). */
static const Corral__V1__Node *
raw_node(struct raw_peer *p, const char *group, const char *id, Corral__V1__Envelope **env)
{
    Corral__V1__Envelope req;
    Corral__V1__GetTree gt;
    corral__v1__envelope__init(&req);
    corral__v1__get_tree__init(&gt);
    gt.group = (char *)group;
    req.body_case = CORRAL__V1__ENVELOPE__BODY_GET_TREE;
    req.get_tree = &gt;
    Corral__V1__Envelope *r = raw_request(p, &req, 5000);
    cr_assert(r->body_case == CORRAL__V1__ENVELOPE__BODY_REPLY && r->reply != NULL);
    cr_assert_eq(r->reply->code, CORRAL__V1__ERROR_CODE__ERR_OK, "GetTree %s: %s", group,
                 r->reply->message);
    const Corral__V1__Node *n = r->reply->tree;
    /* Depth 2 is enough for these trees. */
    if (n != NULL && strcmp(n->id, id) != 0) {
        const Corral__V1__Node *found = NULL;
        for (size_t i = 0; i < n->n_children && found == NULL; i++)
            if (strcmp(n->children[i]->id, id) == 0)
                found = n->children[i];
        n = found;
    }
    cr_assert_not_null(n, "node %s is not in the tree of %s", id, group);
    *env = r;
    return n;
}

Test(migration, version_1_database_is_upgraded_in_place)
{
    /* A fresh database first: its version and columns are what an upgrade must give. */
    struct broker b;
    broker_start(&b, NULL);
    broker_stop(&b);
    sqlite3 *db = db_open(&b);
    long long latest = db_int(db, "PRAGMA user_version");
    static char fresh_columns[8192];
    db_columns(db, "groups", fresh_columns, sizeof fresh_columns);
    db_columns(db, "jobs", fresh_columns, sizeof fresh_columns);
    cr_assert_eq(sqlite3_close(db), SQLITE_OK);
    cr_assert_geq(latest, 2, "a fresh database has schema version %lld, expected 2 or more",
                  latest);
    cr_assert(strstr(fresh_columns, "groups.deadline_ms ") != NULL &&
                  strstr(fresh_columns, "jobs.deadline_ms ") != NULL,
              "no deadline column in a fresh database: %s", fresh_columns);

    write_v1_database(&b);
    broker_restart(&b);

    struct corral_client *c = client_connect(&b);
    struct raw_peer rc;
    raw_connect(&rc, b.client_ep);

    /* The ended tree is intact. */
    struct corral_node *t = get_tree(c, "g1");
    node_expect(t, "g1", CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    cr_assert(t->closed);
    cr_assert_null(t->error);
    cr_assert_null(t->parent);
    cr_assert_eq(t->nchildren, 2, "g1 has %zu children, expected 2", t->nchildren);
    cr_assert_str_eq(t->children[0].id, "j2");
    cr_assert_str_eq(t->children[1].id, "j6");
    node_expect_result(t, "j2", "r1");
    const struct corral_node *n = tree_find(t, "j2");
    cr_assert_str_eq(n->kind, "echo");
    cr_assert_str_eq(n->parent, "g1");
    cr_assert_eq(n->attempt, 1);
    node_expect(t, "j6", CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    node_expect_cancel(t, "j6", true, CORRAL_SOURCE_EXPLICIT, "old reason", true);
    corral_node_free(&t);

    /* So is the open one. */
    t = get_tree(c, "g3");
    node_expect(t, "g3", CORRAL_STATE_OPEN, CORRAL_OUTCOME_NONE);
    cr_assert(!t->closed);
    cr_assert_eq(t->nchildren, 2, "g3 has %zu children, expected 2", t->nchildren);
    cr_assert_str_eq(t->children[0].id, "j4");
    cr_assert_str_eq(t->children[1].id, "g5");
    node_expect(t, "j4", CORRAL_STATE_QUEUED, CORRAL_OUTCOME_NONE);
    node_expect(t, "g5", CORRAL_STATE_OPEN, CORRAL_OUTCOME_NONE);
    cr_assert_str_eq(tree_find(t, "g5")->parent, "g3");
    corral_node_free(&t);

    /* Rows of version 1 have no deadline and no shield. */
    const char *old[][2] = {{"g1", "g1"}, {"g1", "j2"}, {"g3", "g3"}, {"g3", "j4"}, {"g3", "g5"}};
    for (size_t i = 0; i < sizeof old / sizeof old[0]; i++) {
        Corral__V1__Envelope *env = NULL;
        const Corral__V1__Node *pn = raw_node(&rc, old[i][0], old[i][1], &env);
        cr_assert(pn->deadline_unix_ms == 0 && pn->effective_deadline_unix_ms == 0 && !pn->shield &&
                      pn->on_deadline == CORRAL__V1__ON_DEADLINE__ON_DEADLINE_FAIL,
                  "migrated node %s: deadline %llu effective %llu shield %d on_deadline %d",
                  old[i][1], (unsigned long long)pn->deadline_unix_ms,
                  (unsigned long long)pn->effective_deadline_unix_ms, pn->shield,
                  (int)pn->on_deadline);
        corral__v1__envelope__free_unpacked(env, NULL);
    }

    /* The queued job is dispatched; the open groups take new work and end. */
    struct test_worker *w = test_worker_start(&b, 2);
    char j[CORRAL_ID_MAX];
    submit(c, "g5", "echo", "new", j);
    cr_assert(node_eventually(c, "g3", "j4", CORRAL_STATE_ENDED, 5000));
    cr_assert_eq(corral_group_close(c, "g5"), CORRAL_OK);
    cr_assert_eq(corral_group_close(c, "g3"), CORRAL_OK);
    t = wait_group(c, "g3", WAIT_MS);
    node_expect(t, "g3", CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect_result(t, "j4", "after upgrade");
    cr_assert_eq(tree_find(t, "j4")->attempt, 1);
    node_expect(t, "g5", CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect_result(t, j, "new");
    corral_node_free(&t);
    const char *taken[] = {"g1", "j2", "g3", "j4", "g5", "j6"};
    for (size_t i = 0; i < 6; i++)
        cr_assert_str_neq(j, taken[i], "a new job reused the id of a migrated node");

    /* New groups with deadlines work. */
    char m[CORRAL_ID_MAX], a[CORRAL_ID_MAX];
    raw_open_scoped(&rc, 300, 0, true, m);
    for (size_t i = 0; i < 6; i++)
        cr_assert_str_neq(m, taken[i], "a new group reused the id of a migrated node");
    submit(c, m, "sleep", "60000", a);
    t = wait_group(c, m, WAIT_MS);
    node_expect(t, m, CORRAL_STATE_ENDED, CORRAL_OUTCOME_SUCCEEDED);
    node_expect_cancel(t, m, true, CORRAL_SOURCE_DEADLINE, "deadline exceeded", true);
    node_expect(t, a, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    corral_node_free(&t);
    expect_worker_cancel(w, a, CORRAL_SOURCE_PARENT, "deadline exceeded");
    expect_no_worker_problem(w);
    test_worker_stop(&w);

    /* A deadline stored in the upgraded database survives a restart. */
    char d[CORRAL_ID_MAX], q[CORRAL_ID_MAX];
    uint64_t dl = clock_wall_ms() + 1500;
    raw_open_scoped(&rc, 0, dl, false, d);
    submit(c, d, "unserved", "", q);
    raw_close(&rc);
    corral_client_free(&c);
    broker_stop(&b);

    /* The upgraded database is at the latest version, with the same columns as a fresh
     * one, and the old rows. */
    db = db_open(&b);
    long long version = db_int(db, "PRAGMA user_version");
    cr_assert_eq(version, latest, "the schema version after the upgrade is %lld, expected %lld",
                 version, latest);
    static char upgraded_columns[8192];
    db_columns(db, "groups", upgraded_columns, sizeof upgraded_columns);
    db_columns(db, "jobs", upgraded_columns, sizeof upgraded_columns);
    cr_assert_str_eq(upgraded_columns, fresh_columns,
                     "columns after the upgrade:\n%s\nexpected (fresh database):\n%s",
                     upgraded_columns, fresh_columns);
    cr_assert_eq(db_int(db, "SELECT count(*) FROM jobs WHERE id IN (2, 4, 6)"), 3);
    cr_assert_eq(db_int(db, "SELECT count(*) FROM groups WHERE id IN (1, 3, 5)"), 3);
    cr_assert_eq(sqlite3_close(db), SQLITE_OK);

    broker_restart(&b);
    c = client_connect(&b);
    raw_connect(&rc, b.client_ep);
    Corral__V1__Envelope *env = NULL;
    const Corral__V1__Node *pn = raw_node(&rc, d, d, &env);
    cr_assert_eq(pn->deadline_unix_ms, dl, "deadline %llu after the restart, expected %llu",
                 (unsigned long long)pn->deadline_unix_ms, (unsigned long long)dl);
    corral__v1__envelope__free_unpacked(env, NULL);
    t = wait_group(c, d, WAIT_MS);
    cr_assert_geq(clock_wall_ms(), dl);
    node_expect(t, d, CORRAL_STATE_ENDED, CORRAL_OUTCOME_FAILED);
    cr_assert(t->error != NULL && t->error->type != NULL &&
                  strcmp(t->error->type, "TimeoutError") == 0 && t->error->nexceptions == 0,
              "group %s: expected a bare TimeoutError", d);
    node_expect(t, q, CORRAL_STATE_ENDED, CORRAL_OUTCOME_CANCELLED);
    corral_node_free(&t);
    t = get_tree(c, "g1");
    node_expect_result(t, "j2", "r1");
    corral_node_free(&t);

    raw_close(&rc);
    corral_client_free(&c);
    broker_stop(&b);
    broker_cleanup(&b);
}
