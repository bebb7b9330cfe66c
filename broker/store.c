/* store.c - durable state in SQLite: the only file of corral that includes sqlite3.h.
 *
 * One connection, used by the loop thread only. Every statement is prepared once at
 * open (stmt[] indexed by enum stmt_id) and reset after each use, so a write costs no
 * parsing and no allocation. SQLite result codes never leave this file: functions
 * return 0 or -1 and keep the message in s->errmsg. */
#include "store.h"

#include <inttypes.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* How long a statement waits for a lock another connection holds (a stray sqlite3
 * shell, say) before failing with "database is locked". corrald is the only writer. */
#define STORE_BUSY_TIMEOUT_MS 100
/* Size the WAL file is truncated back to after a checkpoint. */
#define STORE_JOURNAL_SIZE_LIMIT (64 * 1024 * 1024)
/* Page cache, in KiB (a negative cache_size counts KiB, not pages). */
#define STORE_CACHE_KIB 16384

/* The schema, as ordered migrations: MIGRATIONS[v] takes a database from version v to
 * version v + 1 (PRAGMA user_version), each in its own transaction. Never edit a
 * migration that has shipped: to change the schema, append migration 2, 3... to this
 * array (and the statements below); STORE_SCHEMA_LATEST follows by itself. */
static const char *const MIGRATIONS[] = {
    /* 1: groups and jobs, one column per field of struct group_row / job_row. */
    "CREATE TABLE groups ("
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
    " ended_ms INTEGER NOT NULL);",
    /* No index on jobs(group_id): the engine holds the whole tree in memory and never
     * asks SQLite for a group's jobs, and every index costs each insert a second B-tree
     * write. */
    /* 2: cancel scopes (S6, S7): a deadline (absolute, wall-clock ms; 0: none), what it
     * does when it passes (0 fail, 1 move on) and a shield, on groups and jobs. */
    "ALTER TABLE groups ADD COLUMN deadline_ms INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE groups ADD COLUMN on_deadline INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE groups ADD COLUMN shield INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE jobs ADD COLUMN deadline_ms INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE jobs ADD COLUMN on_deadline INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE jobs ADD COLUMN shield INTEGER NOT NULL DEFAULT 0;",
    /* 3: start readiness (S9) and retries (S13). */
    "ALTER TABLE jobs ADD COLUMN wait_started INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE jobs ADD COLUMN max_attempts INTEGER NOT NULL DEFAULT 3;"
    "ALTER TABLE jobs ADD COLUMN backoff_ms INTEGER NOT NULL DEFAULT 1000;"
    "ALTER TABLE jobs ADD COLUMN started INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE jobs ADD COLUMN next_attempt_ms INTEGER NOT NULL DEFAULT 0;",
    /* 4: capacity limiters (S10) and idempotency keys (S11). A job's limiters are its
     * names joined by newlines (immutable; a name holds no control character), and
     * holds_tokens says whether it holds their tokens: the lease is the job's own row, so
     * no crash can leak or double a token. */
    "CREATE TABLE limiters ("
    " name TEXT PRIMARY KEY,"
    " total_tokens INTEGER NOT NULL) WITHOUT ROWID;"
    "ALTER TABLE jobs ADD COLUMN limiters TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE jobs ADD COLUMN holds_tokens INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE jobs ADD COLUMN idem_key TEXT;",
    /* 5: retention. A root group whose purge has begun (PurgeGroup, or --retention after
     * it ended) has a row here until its own row is deleted, last of its tree: a purge
     * spans several turns, and after a restart it resumes instead of the tree coming
     * back. */
    "CREATE TABLE purging (root INTEGER PRIMARY KEY);",
};

#define STORE_SCHEMA_LATEST ((int)(sizeof MIGRATIONS / sizeof MIGRATIONS[0]))

/* Columns of groups in the order the statements use them: the mutable ones first, then
 * the immutable ones. Parameter ?N of the INSERT and UPDATE is column N - 1, and so is
 * result column N - 1 of the SELECT, so one enum serves all three. */
enum group_col {
    GC_STATE,
    GC_OUTCOME,
    GC_CLOSED,
    GC_CANCEL_CALLED,
    GC_CANCELLED_CAUGHT,
    GC_CANCEL_SOURCE,
    GC_CANCEL_REASON,
    GC_FAILED_SEQ,
    GC_ENDED_MS,
    GC_ID, /* first immutable column; the UPDATE's WHERE */
    GC_PARENT_TYPE,
    GC_PARENT_ID,
    GC_CREATED_MS,
    GC_DEADLINE_MS,
    GC_ON_DEADLINE,
    GC_SHIELD,
};

#define GROUP_MUTABLE                                                                              \
    "state, outcome, closed, cancel_called, cancelled_caught, cancel_source, "                     \
    "cancel_reason, failed_seq, ended_ms"
#define GROUP_COLUMNS                                                                              \
    GROUP_MUTABLE ", id, parent_type, parent_id, created_ms, deadline_ms, on_deadline, shield"

/* Columns of jobs, same convention as enum group_col. */
enum job_col {
    JC_STATE,
    JC_OUTCOME,
    JC_ATTEMPT,
    JC_RESULT,
    JC_ERR_TYPE,
    JC_ERR_MESSAGE,
    JC_ERR_DETAILS,
    JC_CANCEL_CALLED,
    JC_CANCELLED_CAUGHT,
    JC_CANCEL_SOURCE,
    JC_CANCEL_REASON,
    JC_FAILED_SEQ,
    JC_ENDED_MS,
    JC_STARTED,
    JC_NEXT_ATTEMPT_MS,
    JC_HOLDS_TOKENS,
    JC_ID, /* first immutable column; the UPDATE's WHERE */
    JC_GROUP_ID,
    JC_KIND,
    JC_PAYLOAD,
    JC_CREATED_MS,
    JC_DEADLINE_MS,
    JC_ON_DEADLINE,
    JC_SHIELD,
    JC_WAIT_STARTED,
    JC_MAX_ATTEMPTS,
    JC_BACKOFF_MS,
    JC_LIMITERS,
    JC_IDEM_KEY,
};

#define JOB_MUTABLE                                                                                \
    "state, outcome, attempt, result, err_type, err_message, err_details, "                        \
    "cancel_called, cancelled_caught, cancel_source, cancel_reason, "                              \
    "failed_seq, ended_ms, started, next_attempt_ms, holds_tokens"
#define JOB_COLUMNS                                                                                \
    JOB_MUTABLE ", id, group_id, kind, payload, created_ms, deadline_ms, on_deadline, shield, "    \
                "wait_started, max_attempts, backoff_ms, limiters, idem_key"

/* The prepared statements, by purpose. */
enum stmt_id {
    STMT_BEGIN,
    STMT_COMMIT,
    STMT_ROLLBACK,
    STMT_GROUP_INSERT,
    STMT_GROUP_UPDATE,
    STMT_GROUP_LOAD,
    STMT_JOB_INSERT,
    STMT_JOB_UPDATE,
    STMT_JOB_LOAD,
    STMT_LIMITER_PUT,
    STMT_LIMITER_DELETE,
    STMT_LIMITER_LOAD,
    STMT_PURGE_MARK,
    STMT_PURGE_UNMARK,
    STMT_PURGE_LOAD,
    STMT_GROUP_DELETE,
    STMT_JOB_DELETE,
    STMT_COUNT
};

static const char *const STMT_SQL[STMT_COUNT] = {
    [STMT_BEGIN] = "BEGIN IMMEDIATE",
    [STMT_COMMIT] = "COMMIT",
    [STMT_ROLLBACK] = "ROLLBACK",
    [STMT_GROUP_INSERT] = "INSERT INTO groups (" GROUP_COLUMNS ") VALUES "
                          "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, "
                          "?16)",
    [STMT_GROUP_UPDATE] = "UPDATE groups SET state = ?1, outcome = ?2, closed = ?3, "
                          "cancel_called = ?4, cancelled_caught = ?5, cancel_source = ?6, "
                          "cancel_reason = ?7, failed_seq = ?8, ended_ms = ?9 WHERE id = ?10",
    [STMT_GROUP_LOAD] = "SELECT " GROUP_COLUMNS " FROM groups ORDER BY id",
    [STMT_JOB_INSERT] = "INSERT INTO jobs (" JOB_COLUMNS ") VALUES "
                        "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, "
                        "?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29)",
    [STMT_JOB_UPDATE] = "UPDATE jobs SET state = ?1, outcome = ?2, attempt = ?3, result = ?4, "
                        "err_type = ?5, err_message = ?6, err_details = ?7, "
                        "cancel_called = ?8, cancelled_caught = ?9, cancel_source = ?10, "
                        "cancel_reason = ?11, failed_seq = ?12, ended_ms = ?13, started = ?14, "
                        "next_attempt_ms = ?15, holds_tokens = ?16 WHERE id = ?17",
    [STMT_JOB_LOAD] = "SELECT " JOB_COLUMNS " FROM jobs ORDER BY id",
    [STMT_LIMITER_PUT] = "INSERT INTO limiters (name, total_tokens) VALUES (?1, ?2) "
                         "ON CONFLICT (name) DO UPDATE SET total_tokens = excluded.total_tokens",
    [STMT_LIMITER_DELETE] = "DELETE FROM limiters WHERE name = ?1",
    [STMT_LIMITER_LOAD] = "SELECT name, total_tokens FROM limiters ORDER BY name",
    [STMT_PURGE_MARK] = "INSERT OR IGNORE INTO purging (root) VALUES (?1)",
    [STMT_PURGE_UNMARK] = "DELETE FROM purging WHERE root = ?1",
    [STMT_PURGE_LOAD] = "SELECT root FROM purging ORDER BY root",
    [STMT_GROUP_DELETE] = "DELETE FROM groups WHERE id = ?1",
    [STMT_JOB_DELETE] = "DELETE FROM jobs WHERE id = ?1",
};

struct store {
    sqlite3 *db;
    sqlite3_stmt *stmt[STMT_COUNT];
    int version;      /* PRAGMA user_version once open */
    char errmsg[512]; /* the last error, never unset */
};

/* Formats the last error into s->errmsg (printf-style). */
static void set_err(struct store *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
set_err(struct store *s, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(s->errmsg, sizeof s->errmsg, fmt, ap);
    va_end(ap);
}

/* Runs SQL that returns no rows we need (pragmas, migrations), outside the statement
 * cache. what names the step in the message on failure. Returns 0 or -1. */
static int
exec_sql(struct store *s, const char *sql, const char *what)
{
    if (sqlite3_exec(s->db, sql, NULL, NULL, NULL) != SQLITE_OK) {
        set_err(s, "store: %s: %s", what, sqlite3_errmsg(s->db));
        return -1;
    }
    return 0;
}

/* Runs a one-row query (a pragma) and stores the first column of its row in *int_out
 * and/or, as text, in buf (bufsize bytes), whichever is not NULL. Returns 0 or -1. */
static int
query_one(struct store *s, const char *sql, int *int_out, char *buf, size_t bufsize)
{
    sqlite3_stmt *st = NULL;
    int rc;

    rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
    }
    if (rc != SQLITE_ROW) {
        set_err(s, "store: %s: %s", sql, sqlite3_errmsg(s->db));
        sqlite3_finalize(st);
        return -1;
    }
    if (int_out) {
        *int_out = sqlite3_column_int(st, 0);
    }
    if (buf) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        snprintf(buf, bufsize, "%s", t ? (const char *)t : "");
    }
    sqlite3_finalize(st);
    return 0;
}

/* Sets PRAGMA name = value. Returns 0 or -1. */
static int
set_pragma(struct store *s, const char *name, long value)
{
    char sql[96];

    snprintf(sql, sizeof sql, "PRAGMA %s = %ld", name, value);
    return exec_sql(s, sql, name);
}

/* Switches the database to WAL mode and checks that SQLite agreed (it answers with the
 * mode in force, which stays the old one where WAL is impossible). Returns 0 or -1. */
static int
set_wal(struct store *s)
{
    char mode[16];

    if (query_one(s, "PRAGMA journal_mode = WAL", NULL, mode, sizeof mode) != 0) {
        return -1;
    }
    if (strcasecmp(mode, "wal") != 0) {
        set_err(s, "store: cannot switch to WAL mode (journal_mode is %s)", mode);
        return -1;
    }
    return 0;
}

/* Brings the schema to STORE_SCHEMA_LATEST, one migration per transaction. The version is
 * read again inside each transaction, so another process migrating the same file at the
 * same time cannot make a migration run twice. Returns 0 or -1. */
static int
migrate(struct store *s)
{
    char sql[64];
    int v;

    for (;;) {
        if (exec_sql(s, "BEGIN IMMEDIATE", "begin migration") != 0) {
            return -1;
        }
        if (query_one(s, "PRAGMA user_version", &v, NULL, 0) != 0) {
            goto fail;
        }
        if (v < 0 || v > STORE_SCHEMA_LATEST) {
            set_err(s,
                    "store: schema version %d, which this corrald does not know (it knows up "
                    "to %d); use a newer corrald",
                    v, STORE_SCHEMA_LATEST);
            goto fail;
        }
        if (v == STORE_SCHEMA_LATEST) {
            break;
        }
        snprintf(sql, sizeof sql, "PRAGMA user_version = %d", v + 1);
        if (exec_sql(s, MIGRATIONS[v], "migration") != 0 || exec_sql(s, sql, "migration") != 0) {
            goto fail;
        }
        if (exec_sql(s, "COMMIT", "commit migration") != 0) {
            goto fail;
        }
    }
    if (exec_sql(s, "COMMIT", "commit migration") != 0) {
        goto fail;
    }
    s->version = v;
    return 0;

fail:
    if (!sqlite3_get_autocommit(s->db)) {
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    }
    return -1;
}

/* Opens <dir>/corral.db: see store.h. One goto cleanup; a half-built store is torn down
 * by store_close, which copes with NULL statements. */
int
store_open(struct store **out, const char *dir, enum store_sync sync, char *err, size_t errlen)
{
    struct store *s = NULL;
    char *path = NULL;
    int ret = -1;
    long sync_level = sync == STORE_SYNC_NORMAL ? 1 : 2; /* PRAGMA synchronous NORMAL, FULL */
    int rc;
    int v;

    *out = NULL;
    s = calloc(1, sizeof *s);
    if (!s) {
        if (err && errlen) {
            snprintf(err, errlen, "store: out of memory");
        }
        goto out;
    }
    set_err(s, "not an error");
    if (asprintf(&path, "%s/corral.db", dir) < 0) {
        path = NULL;
        set_err(s, "store: out of memory");
        goto out;
    }
    rc = sqlite3_open_v2(path, &s->db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        set_err(s, "store: cannot open %s: %s", path,
                s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        goto out;
    }
    /* The first read: fails here on a file that is not a database. Checked before the
     * pragmas below change anything in a file written by a newer corrald. */
    if (set_pragma(s, "busy_timeout", STORE_BUSY_TIMEOUT_MS) != 0) {
        goto out;
    }
    if (query_one(s, "PRAGMA user_version", &v, NULL, 0) != 0) {
        set_err(s, "store: cannot read %s: %s", path, sqlite3_errmsg(s->db));
        goto out;
    }
    if (v < 0 || v > STORE_SCHEMA_LATEST) {
        set_err(s,
                "store: %s has schema version %d, which this corrald does not know (it knows "
                "up to %d); use a newer corrald",
                path, v, STORE_SCHEMA_LATEST);
        goto out;
    }
    if (set_wal(s) != 0 || set_pragma(s, "synchronous", sync_level) != 0 ||
        set_pragma(s, "journal_size_limit", STORE_JOURNAL_SIZE_LIMIT) != 0 ||
        set_pragma(s, "cache_size", -STORE_CACHE_KIB) != 0 ||
        set_pragma(s, "foreign_keys", 0) != 0) {
        goto out;
    }
    if (migrate(s) != 0) {
        goto out;
    }
    for (int i = 0; i < STMT_COUNT; i++) {
        rc = sqlite3_prepare_v3(s->db, STMT_SQL[i], -1, SQLITE_PREPARE_PERSISTENT, &s->stmt[i],
                                NULL);
        if (rc != SQLITE_OK) {
            set_err(s, "store: prepare \"%s\": %s", STMT_SQL[i], sqlite3_errmsg(s->db));
            goto out;
        }
    }
    set_err(s, "not an error");
    *out = s;
    s = NULL;
    ret = 0;

out:
    if (s && err && errlen) {
        snprintf(err, errlen, "%s", s->errmsg);
    }
    store_close(&s);
    free(path);
    return ret;
}

/* Finalizes every statement and closes the connection (the last connection to close
 * checkpoints the WAL and deletes it). Accepts NULL; sets *p to NULL. */
void
store_close(struct store **p)
{
    struct store *s = p ? *p : NULL;

    if (!s) {
        return;
    }
    for (int i = 0; i < STMT_COUNT; i++) {
        sqlite3_finalize(s->stmt[i]); /* harmless on NULL */
    }
    if (sqlite3_close(s->db) != SQLITE_OK) {
        sqlite3_close_v2(s->db); /* cannot happen with every statement finalized */
    }
    free(s);
    *p = NULL;
}

/* The schema version, read at open. */
int
store_schema_latest(void)
{
    return STORE_SCHEMA_LATEST;
}

int
store_schema_version(const struct store *s)
{
    return s->version;
}

/* Steps a statement that returns no rows, then resets it and clears its bindings.
 * what/id name the operation in the message on failure; when must_change is true,
 * touching no row (an UPDATE of an id that is not stored) is an error too. */
static int
finish(struct store *s, sqlite3_stmt *st, const char *what, uint64_t id, bool must_change)
{
    int rc = sqlite3_step(st);
    int ret = 0;

    if (rc != SQLITE_DONE) {
        set_err(s, "store: %s %" PRIu64 ": %s", what, id, sqlite3_errmsg(s->db));
        ret = -1;
    } else if (must_change && sqlite3_changes(s->db) != 1) {
        set_err(s, "store: %s %" PRIu64 ": no such row", what, id);
        ret = -1;
    }
    /* Every parameter is bound again before the next step, so no clear_bindings. */
    sqlite3_reset(st);
    return ret;
}

/* Runs BEGIN, COMMIT or ROLLBACK. Returns 0 or -1 with s->errmsg set. */
static int
run_simple(struct store *s, enum stmt_id id, const char *what)
{
    sqlite3_stmt *st = s->stmt[id];
    int rc = sqlite3_step(st);
    int ret = 0;

    if (rc != SQLITE_DONE) {
        set_err(s, "store: %s: %s", what, sqlite3_errmsg(s->db));
        ret = -1;
    }
    sqlite3_reset(st);
    return ret;
}

/* Starts the turn's transaction (BEGIN IMMEDIATE: takes the write lock now). */
int
store_begin(struct store *s)
{
    return run_simple(s, STMT_BEGIN, "begin");
}

/* Commits the turn's transaction; with STORE_SYNC_FULL it is on disk when this returns. */
int
store_commit(struct store *s)
{
    return run_simple(s, STMT_COMMIT, "commit");
}

/* Discards the turn's transaction. A no-op returning 0 when none is open (SQLite rolls
 * some failed transactions back by itself). */
int
store_rollback(struct store *s)
{
    if (sqlite3_get_autocommit(s->db)) {
        return 0;
    }
    return run_simple(s, STMT_ROLLBACK, "rollback");
}

/* The binders below bind result column col (parameter col + 1), and do nothing once *rc
 * holds an error, so a put binds everything and checks once. All bind SQLITE_STATIC:
 * the row outlives the statement's use. */

/* Binds a signed integer (enums, bools, small counts). */
static void
bind_int(sqlite3_stmt *st, int col, int64_t v, int *rc)
{
    if (*rc == SQLITE_OK) {
        *rc = sqlite3_bind_int64(st, col + 1, v);
    }
}

/* Binds a uint64 as SQLite's int64, bit for bit (values above INT64_MAX come back
 * negative in SQL but round-trip exactly through col_u64). Ids are the exception: the
 * puts refuse ids above INT64_MAX, which would sort first in ORDER BY id. */
static void
bind_u64(sqlite3_stmt *st, int col, uint64_t v, int *rc)
{
    bind_int(st, col, (int64_t)v, rc);
}

/* Binds a string, or SQL NULL for a NULL pointer. */
static void
bind_text(sqlite3_stmt *st, int col, const char *v, int *rc)
{
    if (*rc != SQLITE_OK) {
        return;
    }
    if (v) {
        *rc = sqlite3_bind_text64(st, col + 1, v, strlen(v), SQLITE_STATIC, SQLITE_UTF8);
    } else {
        *rc = sqlite3_bind_null(st, col + 1);
    }
}

/* Binds bytes as a BLOB; an empty one (whatever its data pointer) as a zero-length blob,
 * never NULL, since sqlite3_bind_blob binds NULL for a NULL pointer. */
static void
bind_bytes(sqlite3_stmt *st, int col, struct bytes v, int *rc)
{
    if (*rc != SQLITE_OK) {
        return;
    }
    if (v.len == 0) {
        *rc = sqlite3_bind_zeroblob(st, col + 1, 0);
    } else {
        *rc = sqlite3_bind_blob64(st, col + 1, v.data, v.len, SQLITE_STATIC);
    }
}

/* True when b is usable: data may be NULL only when len is 0. */
static bool
bytes_ok(struct bytes b)
{
    return b.data || b.len == 0;
}

/* Writes a group (INSERT or UPDATE by row->is_new); see store.h. */
int
store_put_group(struct store *s, const struct group_row *row)
{
    sqlite3_stmt *st = s->stmt[row->is_new ? STMT_GROUP_INSERT : STMT_GROUP_UPDATE];
    const char *what = row->is_new ? "insert group" : "update group";
    int rc = SQLITE_OK;

    if (row->id > INT64_MAX) {
        set_err(s, "store: %s %" PRIu64 ": id above INT64_MAX", what, row->id);
        return -1;
    }
    bind_int(st, GC_STATE, row->state, &rc);
    bind_int(st, GC_OUTCOME, row->outcome, &rc);
    bind_int(st, GC_CLOSED, row->closed, &rc);
    bind_int(st, GC_CANCEL_CALLED, row->cancel_called, &rc);
    bind_int(st, GC_CANCELLED_CAUGHT, row->cancelled_caught, &rc);
    bind_int(st, GC_CANCEL_SOURCE, row->cancel_source, &rc);
    bind_text(st, GC_CANCEL_REASON, row->cancel_reason, &rc);
    bind_u64(st, GC_FAILED_SEQ, row->failed_seq, &rc);
    bind_u64(st, GC_ENDED_MS, row->ended_ms, &rc);
    bind_u64(st, GC_ID, row->id, &rc);
    if (row->is_new) {
        bind_int(st, GC_PARENT_TYPE, row->parent_type, &rc);
        bind_u64(st, GC_PARENT_ID, row->parent_id, &rc);
        bind_u64(st, GC_CREATED_MS, row->created_ms, &rc);
        bind_u64(st, GC_DEADLINE_MS, row->deadline_ms, &rc);
        bind_int(st, GC_ON_DEADLINE, row->on_deadline, &rc);
        bind_int(st, GC_SHIELD, row->shield, &rc);
    }
    if (rc != SQLITE_OK) {
        set_err(s, "store: %s %" PRIu64 ": bind: %s", what, row->id, sqlite3_errstr(rc));
        sqlite3_clear_bindings(st);
        return -1;
    }
    return finish(s, st, what, row->id, !row->is_new);
}

/* Writes a job (INSERT with payload, or UPDATE of the mutable columns); see store.h. */
int
store_put_job(struct store *s, const struct job_row *row)
{
    sqlite3_stmt *st = s->stmt[row->is_new ? STMT_JOB_INSERT : STMT_JOB_UPDATE];
    const char *what = row->is_new ? "insert job" : "update job";
    int rc = SQLITE_OK;

    if (row->id > INT64_MAX) {
        set_err(s, "store: %s %" PRIu64 ": id above INT64_MAX", what, row->id);
        return -1;
    }
    if (!bytes_ok(row->result) || !bytes_ok(row->err_details) ||
        (row->is_new && !bytes_ok(row->payload))) {
        set_err(s, "store: %s %" PRIu64 ": bytes with NULL data and non-zero length", what,
                row->id);
        return -1;
    }
    bind_int(st, JC_STATE, row->state, &rc);
    bind_int(st, JC_OUTCOME, row->outcome, &rc);
    bind_int(st, JC_ATTEMPT, row->attempt, &rc);
    bind_bytes(st, JC_RESULT, row->result, &rc);
    bind_text(st, JC_ERR_TYPE, row->err_type, &rc);
    bind_text(st, JC_ERR_MESSAGE, row->err_message, &rc);
    bind_bytes(st, JC_ERR_DETAILS, row->err_details, &rc);
    bind_int(st, JC_CANCEL_CALLED, row->cancel_called, &rc);
    bind_int(st, JC_CANCELLED_CAUGHT, row->cancelled_caught, &rc);
    bind_int(st, JC_CANCEL_SOURCE, row->cancel_source, &rc);
    bind_text(st, JC_CANCEL_REASON, row->cancel_reason, &rc);
    bind_u64(st, JC_FAILED_SEQ, row->failed_seq, &rc);
    bind_u64(st, JC_ENDED_MS, row->ended_ms, &rc);
    bind_int(st, JC_STARTED, row->started, &rc);
    bind_u64(st, JC_NEXT_ATTEMPT_MS, row->next_attempt_ms, &rc);
    bind_int(st, JC_HOLDS_TOKENS, row->holds_tokens, &rc);
    bind_u64(st, JC_ID, row->id, &rc);
    if (row->is_new) {
        bind_u64(st, JC_GROUP_ID, row->group_id, &rc);
        bind_text(st, JC_KIND, row->kind, &rc);
        bind_bytes(st, JC_PAYLOAD, row->payload, &rc);
        bind_u64(st, JC_CREATED_MS, row->created_ms, &rc);
        bind_u64(st, JC_DEADLINE_MS, row->deadline_ms, &rc);
        bind_int(st, JC_ON_DEADLINE, row->on_deadline, &rc);
        bind_int(st, JC_SHIELD, row->shield, &rc);
        bind_int(st, JC_WAIT_STARTED, row->wait_started, &rc);
        bind_u64(st, JC_MAX_ATTEMPTS, row->max_attempts, &rc);
        bind_u64(st, JC_BACKOFF_MS, row->backoff_ms, &rc);
        bind_text(st, JC_LIMITERS, row->limiters ? row->limiters : "", &rc);
        bind_text(st, JC_IDEM_KEY, row->idem_key, &rc);
    }
    if (rc != SQLITE_OK) {
        set_err(s, "store: %s %" PRIu64 ": bind: %s", what, row->id, sqlite3_errstr(rc));
        sqlite3_clear_bindings(st);
        return -1;
    }
    return finish(s, st, what, row->id, !row->is_new);
}

/* Reads column col of the current row as a uint64 (the inverse of bind_u64). */
static uint64_t
col_u64(sqlite3_stmt *st, int col)
{
    return (uint64_t)sqlite3_column_int64(st, col);
}

/* Reads column col as a string pointing into SQLite's memory (valid until the next step
 * or reset), NULL for SQL NULL; sets *bad when SQLite cannot produce it (out of memory). */
static const char *
col_text(sqlite3_stmt *st, int col, bool *bad)
{
    const unsigned char *t;

    if (sqlite3_column_type(st, col) == SQLITE_NULL) {
        return NULL;
    }
    t = sqlite3_column_text(st, col);
    if (!t) {
        *bad = true;
    }
    return (const char *)t;
}

/* Reads column col as bytes pointing into SQLite's memory; an empty blob (or NULL) gives
 * {NULL, 0}. Sets *bad when SQLite cannot produce it. */
static struct bytes
col_bytes(sqlite3_stmt *st, int col, bool *bad)
{
    const void *p = sqlite3_column_blob(st, col); /* before _bytes, as SQLite advises */
    int n = sqlite3_column_bytes(st, col);
    struct bytes b = {NULL, 0};

    if (n > 0) {
        if (!p) {
            *bad = true;
            return b;
        }
        b.data = p;
        b.len = (size_t)n;
    }
    return b;
}

/* Fills *row from the current result row of STMT_GROUP_LOAD. Returns false when a
 * value could not be read. */
static bool
read_group(sqlite3_stmt *st, struct group_row *row)
{
    bool bad = false;

    *row = (struct group_row){
        .id = col_u64(st, GC_ID),
        .parent_type = (enum parent_type)sqlite3_column_int(st, GC_PARENT_TYPE),
        .parent_id = col_u64(st, GC_PARENT_ID),
        .state = (enum node_state)sqlite3_column_int(st, GC_STATE),
        .outcome = (enum outcome)sqlite3_column_int(st, GC_OUTCOME),
        .closed = sqlite3_column_int(st, GC_CLOSED) != 0,
        .cancel_called = sqlite3_column_int(st, GC_CANCEL_CALLED) != 0,
        .cancelled_caught = sqlite3_column_int(st, GC_CANCELLED_CAUGHT) != 0,
        .cancel_source = (enum cancel_source)sqlite3_column_int(st, GC_CANCEL_SOURCE),
        .cancel_reason = col_text(st, GC_CANCEL_REASON, &bad),
        .failed_seq = col_u64(st, GC_FAILED_SEQ),
        .created_ms = col_u64(st, GC_CREATED_MS),
        .ended_ms = col_u64(st, GC_ENDED_MS),
        .deadline_ms = col_u64(st, GC_DEADLINE_MS),
        .on_deadline = (enum on_deadline)sqlite3_column_int(st, GC_ON_DEADLINE),
        .shield = sqlite3_column_int(st, GC_SHIELD) != 0,
        .is_new = false,
    };
    return !bad;
}

/* Fills *row from the current result row of STMT_JOB_LOAD. Returns false when a value
 * could not be read. */
static bool
read_job(sqlite3_stmt *st, struct job_row *row)
{
    bool bad = false;

    *row = (struct job_row){
        .id = col_u64(st, JC_ID),
        .group_id = col_u64(st, JC_GROUP_ID),
        .kind = col_text(st, JC_KIND, &bad),
        .payload = col_bytes(st, JC_PAYLOAD, &bad),
        .state = (enum node_state)sqlite3_column_int(st, JC_STATE),
        .outcome = (enum outcome)sqlite3_column_int(st, JC_OUTCOME),
        .attempt = (uint32_t)sqlite3_column_int64(st, JC_ATTEMPT),
        .result = col_bytes(st, JC_RESULT, &bad),
        .err_type = col_text(st, JC_ERR_TYPE, &bad),
        .err_message = col_text(st, JC_ERR_MESSAGE, &bad),
        .err_details = col_bytes(st, JC_ERR_DETAILS, &bad),
        .cancel_called = sqlite3_column_int(st, JC_CANCEL_CALLED) != 0,
        .cancelled_caught = sqlite3_column_int(st, JC_CANCELLED_CAUGHT) != 0,
        .cancel_source = (enum cancel_source)sqlite3_column_int(st, JC_CANCEL_SOURCE),
        .cancel_reason = col_text(st, JC_CANCEL_REASON, &bad),
        .failed_seq = col_u64(st, JC_FAILED_SEQ),
        .created_ms = col_u64(st, JC_CREATED_MS),
        .ended_ms = col_u64(st, JC_ENDED_MS),
        .deadline_ms = col_u64(st, JC_DEADLINE_MS),
        .on_deadline = (enum on_deadline)sqlite3_column_int(st, JC_ON_DEADLINE),
        .shield = sqlite3_column_int(st, JC_SHIELD) != 0,
        .wait_started = sqlite3_column_int(st, JC_WAIT_STARTED) != 0,
        .max_attempts = (uint32_t)sqlite3_column_int64(st, JC_MAX_ATTEMPTS),
        .backoff_ms = col_u64(st, JC_BACKOFF_MS),
        .started = sqlite3_column_int(st, JC_STARTED) != 0,
        .next_attempt_ms = col_u64(st, JC_NEXT_ATTEMPT_MS),
        .holds_tokens = sqlite3_column_int(st, JC_HOLDS_TOKENS) != 0,
        .limiters = col_text(st, JC_LIMITERS, &bad),
        .idem_key = col_text(st, JC_IDEM_KEY, &bad),
        .is_new = false,
    };
    return !bad;
}

/* Steps through one load statement, handing each row to the callback. Returns 0 at the
 * end, the callback's non-zero value if it stopped, or -1 with s->errmsg set. */
static int
load_table(struct store *s, enum stmt_id id, const char *what,
           int (*on_group)(void *, const struct group_row *),
           int (*on_job)(void *, const struct job_row *), void *arg)
{
    sqlite3_stmt *st = s->stmt[id];
    int ret = 0;
    int rc;

    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (on_group) {
            struct group_row g;
            if (!read_group(st, &g)) {
                rc = SQLITE_NOMEM;
                break;
            }
            ret = on_group(arg, &g);
        } else {
            struct job_row j;
            if (!read_job(st, &j)) {
                rc = SQLITE_NOMEM;
                break;
            }
            ret = on_job(arg, &j);
        }
        if (ret != 0) {
            break;
        }
    }
    if (ret == 0 && rc != SQLITE_DONE) {
        set_err(s, "store: load %s: %s", what,
                rc == SQLITE_NOMEM ? sqlite3_errstr(rc) : sqlite3_errmsg(s->db));
        ret = -1;
    }
    sqlite3_reset(st);
    return ret;
}

/* Reads every group, then every job, each in id order; see store.h. A NULL callback
 * skips its table. */
int
store_load(struct store *s, int (*on_group)(void *arg, const struct group_row *row),
           int (*on_job)(void *arg, const struct job_row *row), void *arg)
{
    int ret = 0;

    if (on_group) {
        ret = load_table(s, STMT_GROUP_LOAD, "groups", on_group, NULL, arg);
    }
    if (ret == 0 && on_job) {
        ret = load_table(s, STMT_JOB_LOAD, "jobs", NULL, on_job, arg);
    }
    return ret;
}

/* Writes a limiter (insert or update of its total) or deletes it; see store.h. */
int
store_put_limiter(struct store *s, const struct limiter_row *row)
{
    sqlite3_stmt *st = s->stmt[row->deleted ? STMT_LIMITER_DELETE : STMT_LIMITER_PUT];
    int rc = SQLITE_OK;

    /* bind_* take 0-based columns: parameter ?1 is column 0. */
    bind_text(st, 0, row->name, &rc);
    if (!row->deleted)
        bind_int(st, 1, row->total_tokens, &rc);
    if (rc != SQLITE_OK) {
        set_err(s, "store: limiter %s: bind: %s", row->name, sqlite3_errstr(rc));
        sqlite3_clear_bindings(st);
        return -1;
    }
    return finish(s, st, row->deleted ? "delete limiter" : "put limiter", 0, false);
}

/* Reads every limiter in name order; see store.h. */
int
store_load_limiters(struct store *s, int (*on_limiter)(void *arg, const struct limiter_row *row),
                    void *arg)
{
    sqlite3_stmt *st = s->stmt[STMT_LIMITER_LOAD];
    int ret = 0;
    int rc;

    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        bool bad = false;
        struct limiter_row r = {
            .name = col_text(st, 0, &bad),
            .total_tokens = (uint32_t)sqlite3_column_int64(st, 1),
        };
        if (bad || r.name == NULL) {
            rc = SQLITE_NOMEM;
            break;
        }
        ret = on_limiter(arg, &r);
        if (ret != 0)
            break;
    }
    if (ret == 0 && rc != SQLITE_DONE) {
        set_err(s, "store: load limiters: %s",
                rc == SQLITE_NOMEM ? sqlite3_errstr(rc) : sqlite3_errmsg(s->db));
        ret = -1;
    }
    sqlite3_reset(st);
    return ret;
}

/* Binds one id to a statement and runs it; see store.h. */
static int
run_id(struct store *s, enum stmt_id id, uint64_t v, const char *what)
{
    sqlite3_stmt *st = s->stmt[id];
    int rc = SQLITE_OK;
    bind_u64(st, 0, v, &rc);
    if (rc != SQLITE_OK) {
        set_err(s, "store: %s %" PRIu64 ": bind: %s", what, v, sqlite3_errstr(rc));
        sqlite3_clear_bindings(st);
        return -1;
    }
    return finish(s, st, what, v, false);
}

int
store_mark_purge(struct store *s, uint64_t root)
{
    return run_id(s, STMT_PURGE_MARK, root, "mark purge");
}

int
store_delete_node(struct store *s, bool is_group, uint64_t id, bool root)
{
    if (run_id(s, is_group ? STMT_GROUP_DELETE : STMT_JOB_DELETE, id,
               is_group ? "delete group" : "delete job") != 0)
        return -1;
    return root ? run_id(s, STMT_PURGE_UNMARK, id, "unmark purge") : 0;
}

int
store_load_purging(struct store *s, int (*on_root)(void *arg, uint64_t root), void *arg)
{
    sqlite3_stmt *st = s->stmt[STMT_PURGE_LOAD];
    int ret = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        ret = on_root(arg, col_u64(st, 0));
        if (ret != 0)
            break;
    }
    if (ret == 0 && rc != SQLITE_DONE) {
        set_err(s, "store: load purging: %s", sqlite3_errmsg(s->db));
        ret = -1;
    }
    sqlite3_reset(st);
    return ret;
}

/* The last error message; borrowed, never NULL. */
const char *
store_errmsg(const struct store *s)
{
    return s ? s->errmsg : "store: no store";
}
