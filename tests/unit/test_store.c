/* test_store.c - store.c on a real SQLite file in a fresh temp dir per test.
 *
 * The tests do not include sqlite3.h (store.c is the only file that does): they look at
 * the database through the store API, and at the file's 100-byte header directly where
 * they must (journal mode, user_version, or forging a future schema version). */
#include "store.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The schema version this store.c migrates to; raise it with each new migration. */
#define LATEST_SCHEMA store_schema_latest()
/* Offsets in the SQLite file header: write/read format versions (2 = WAL) and
 * user_version (4 bytes, big-endian). */
#define HDR_WRITE_VERSION 18
#define HDR_READ_VERSION  19
#define HDR_USER_VERSION  60

static char dir[64];

/* Creates the test's temp dir. */
static void
setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/corral-test-store-XXXXXX");
    cr_assert_not_null(mkdtemp(dir), "mkdtemp");
}

/* Removes the temp dir and everything in it (the db, its -wal and -shm). */
static void
teardown(void)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[512];

    if (!d) {
        return;
    }
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
    }
    closedir(d);
    rmdir(dir);
}

TestSuite(store, .init = setup, .fini = teardown);

/* Opens the store in the test dir, failing the test with the message if it cannot. */
static struct store *
open_store(enum store_sync sync)
{
    struct store *s = NULL;
    char err[512] = "";

    cr_assert_eq(store_open(&s, dir, sync, err, sizeof err), 0, "store_open: %s", err);
    cr_assert_not_null(s);
    return s;
}

/* Path of a file in the test dir (static buffer). */
static const char *
in_dir(const char *name)
{
    static char path[512];

    snprintf(path, sizeof path, "%s/%s", dir, name);
    return path;
}

/* True when the file exists. */
static bool
exists(const char *name)
{
    struct stat st;

    return stat(in_dir(name), &st) == 0;
}

/* Reads n bytes at off from corral.db. */
static void
read_header(off_t off, uint8_t *buf, size_t n)
{
    int fd = open(in_dir("corral.db"), O_RDONLY);

    cr_assert_geq(fd, 0);
    cr_assert_eq(pread(fd, buf, n, off), (ssize_t)n);
    close(fd);
}

/* The user_version stored in corral.db's header (valid once the WAL is checkpointed). */
static uint32_t
header_user_version(void)
{
    uint8_t b[4];

    read_header(HDR_USER_VERSION, b, 4);
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* What a load saw: the order of the calls ("g2 g5 j3 ..."), and deep copies of the rows
 * (the store's rows are only valid during the callback). */
struct seen {
    char order[256];
    int ngroups;
    int njobs;
    struct group_row groups[8];
    struct job_row jobs[8];
    int stop_at; /* callback number (1-based) that returns stop_value; 0: never */
    int stop_value;
    int calls;
};

/* Copies a string, keeping NULL as NULL. */
static const char *
dup_str(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* Copies bytes, keeping a NULL data pointer as NULL (so the tests can check it). */
static struct bytes
dup_bytes(struct bytes b)
{
    struct bytes c = {NULL, b.len};

    if (b.data) {
        uint8_t *p = malloc(b.len ? b.len : 1);
        cr_assert_not_null(p);
        memcpy(p, b.data, b.len);
        c.data = p;
    }
    return c;
}

/* Appends one call to seen->order and says whether to stop. */
static int
note(struct seen *sn, char kind, uint64_t id)
{
    size_t used = strlen(sn->order);

    snprintf(sn->order + used, sizeof sn->order - used, "%s%c%llu", used ? " " : "", kind,
             (unsigned long long)id);
    sn->calls++;
    return sn->calls == sn->stop_at ? sn->stop_value : 0;
}

/* on_group callback: records a deep copy. */
static int
on_group(void *arg, const struct group_row *row)
{
    struct seen *sn = arg;
    struct group_row *c;

    cr_assert_lt(sn->ngroups, 8);
    cr_assert(!row->is_new);
    c = &sn->groups[sn->ngroups++];
    *c = *row;
    c->cancel_reason = dup_str(row->cancel_reason);
    return note(sn, 'g', row->id);
}

/* on_job callback: records a deep copy. */
static int
on_job(void *arg, const struct job_row *row)
{
    struct seen *sn = arg;
    struct job_row *c;

    cr_assert_lt(sn->njobs, 8);
    cr_assert(!row->is_new);
    c = &sn->jobs[sn->njobs++];
    *c = *row;
    c->kind = dup_str(row->kind);
    c->payload = dup_bytes(row->payload);
    c->result = dup_bytes(row->result);
    c->err_type = dup_str(row->err_type);
    c->err_message = dup_str(row->err_message);
    c->err_details = dup_bytes(row->err_details);
    c->cancel_reason = dup_str(row->cancel_reason);
    return note(sn, 'j', row->id);
}

/* Frees the copies in *sn. */
static void
seen_free(struct seen *sn)
{
    for (int i = 0; i < sn->ngroups; i++) {
        free((void *)sn->groups[i].cancel_reason);
    }
    for (int i = 0; i < sn->njobs; i++) {
        struct job_row *j = &sn->jobs[i];
        free((void *)j->kind);
        free((void *)j->payload.data);
        free((void *)j->result.data);
        free((void *)j->err_type);
        free((void *)j->err_message);
        free((void *)j->err_details.data);
        free((void *)j->cancel_reason);
    }
}

/* Loads everything into *sn, expecting success. */
static void
load_all(struct store *s, struct seen *sn)
{
    cr_assert_eq(store_load(s, on_group, on_job, sn), 0, "store_load: %s", store_errmsg(s));
}

/* Asserts two strings are equal, NULL equal only to NULL. */
static void
assert_str(const char *got, const char *want, const char *field)
{
    if (!want) {
        cr_assert_null(got, "%s: want NULL, got \"%s\"", field, got);
    } else {
        cr_assert_not_null(got, "%s: want \"%s\", got NULL", field, want);
        cr_assert_str_eq(got, want, "%s", field);
    }
}

/* Asserts loaded bytes equal the written ones; empty ones must load as {NULL, 0}. */
static void
assert_bytes(struct bytes got, struct bytes want, const char *field)
{
    cr_assert_eq(got.len, want.len, "%s: len %zu, want %zu", field, got.len, want.len);
    if (want.len == 0) {
        cr_assert_null(got.data, "%s: empty bytes must load with data NULL", field);
    } else {
        cr_assert_not_null(got.data, "%s", field);
        cr_assert_eq(memcmp(got.data, want.data, want.len), 0, "%s: content", field);
    }
}

/* Asserts every stored field of two groups is equal. */
static void
assert_group(const struct group_row *g, const struct group_row *w)
{
    cr_assert_eq(g->id, w->id);
    cr_assert_eq(g->parent_type, w->parent_type, "group %llu parent_type",
                 (unsigned long long)w->id);
    cr_assert_eq(g->parent_id, w->parent_id);
    cr_assert_eq(g->state, w->state);
    cr_assert_eq(g->outcome, w->outcome);
    cr_assert_eq(g->closed, w->closed);
    cr_assert_eq(g->cancel_called, w->cancel_called);
    cr_assert_eq(g->cancelled_caught, w->cancelled_caught);
    cr_assert_eq(g->cancel_source, w->cancel_source);
    assert_str(g->cancel_reason, w->cancel_reason, "group cancel_reason");
    cr_assert_eq(g->failed_seq, w->failed_seq);
    cr_assert_eq(g->created_ms, w->created_ms);
    cr_assert_eq(g->ended_ms, w->ended_ms);
}

/* Asserts every stored field of two jobs is equal. */
static void
assert_job(const struct job_row *j, const struct job_row *w)
{
    cr_assert_eq(j->id, w->id);
    cr_assert_eq(j->group_id, w->group_id);
    assert_str(j->kind, w->kind, "kind");
    assert_bytes(j->payload, w->payload, "payload");
    cr_assert_eq(j->state, w->state);
    cr_assert_eq(j->outcome, w->outcome);
    cr_assert_eq(j->attempt, w->attempt);
    assert_bytes(j->result, w->result, "result");
    assert_str(j->err_type, w->err_type, "err_type");
    assert_str(j->err_message, w->err_message, "err_message");
    assert_bytes(j->err_details, w->err_details, "err_details");
    cr_assert_eq(j->cancel_called, w->cancel_called);
    cr_assert_eq(j->cancelled_caught, w->cancelled_caught);
    cr_assert_eq(j->cancel_source, w->cancel_source);
    assert_str(j->cancel_reason, w->cancel_reason, "job cancel_reason");
    cr_assert_eq(j->failed_seq, w->failed_seq);
    cr_assert_eq(j->created_ms, w->created_ms);
    cr_assert_eq(j->ended_ms, w->ended_ms);
}

/* A new group with every field set to something distinctive. */
static struct group_row
sample_group(uint64_t id)
{
    return (struct group_row){
        .id = id,
        .parent_type = PARENT_JOB,
        .parent_id = 4000 + id,
        .state = ST_OPEN,
        .outcome = OUT_NONE,
        .closed = false,
        .cancel_called = true,
        .cancelled_caught = false,
        .cancel_source = SRC_DEADLINE,
        .cancel_reason = "deadline passed",
        .failed_seq = 3,
        .created_ms = 1700000000000ULL + id,
        .ended_ms = 0,
        .is_new = true,
    };
}

static const uint8_t PAYLOAD[] = {'a', 0, 'b', 0, 0, 0xff, 0x80, 'z'};

/* A new job with every field set to something distinctive. */
static struct job_row
sample_job(uint64_t id, uint64_t group_id)
{
    return (struct job_row){
        .id = id,
        .group_id = group_id,
        .kind = "render",
        .payload = {PAYLOAD, sizeof PAYLOAD},
        .state = ST_QUEUED,
        .outcome = OUT_NONE,
        .attempt = 1,
        .result = {NULL, 0},
        .err_type = NULL,
        .err_message = NULL,
        .err_details = {NULL, 0},
        .cancel_called = false,
        .cancelled_caught = false,
        .cancel_source = SRC_NONE,
        .cancel_reason = NULL,
        .failed_seq = 0,
        .created_ms = 1700000000500ULL + id,
        .ended_ms = 0,
        .is_new = true,
    };
}

/* Writes rows in one transaction, failing the test on any error. */
static void
put_groups(struct store *s, const struct group_row *rows, int n)
{
    for (int i = 0; i < n; i++) {
        cr_assert_eq(store_put_group(s, &rows[i]), 0, "put_group: %s", store_errmsg(s));
    }
}

/* Same for jobs. */
static void
put_jobs(struct store *s, const struct job_row *rows, int n)
{
    for (int i = 0; i < n; i++) {
        cr_assert_eq(store_put_job(s, &rows[i]), 0, "put_job: %s", store_errmsg(s));
    }
}

Test(store, fresh_open_is_wal_at_latest_schema)
{
    struct store *s = open_store(STORE_SYNC_FULL);
    uint8_t v[2];

    cr_assert_eq(store_schema_version(s), LATEST_SCHEMA);
    cr_assert_not_null(store_errmsg(s));
    cr_assert(exists("corral.db"));
    cr_assert(exists("corral.db-wal"), "a WAL file while open");
    store_close(&s);
    cr_assert_null(s);
    cr_assert(!exists("corral.db-wal"), "close checkpoints and removes the WAL");
    read_header(HDR_WRITE_VERSION, v, 2);
    cr_assert_eq(v[0], 2, "file format says WAL (write version)");
    cr_assert_eq(v[1], 2, "file format says WAL (read version)");
    cr_assert_eq(header_user_version(), LATEST_SCHEMA);
}

Test(store, empty_database_loads_nothing)
{
    struct store *s = open_store(STORE_SYNC_FULL);
    struct seen sn = {0};

    load_all(s, &sn);
    cr_assert_eq(sn.calls, 0);
    store_close(&s);
}

Test(store, insert_round_trips_every_field)
{
    struct store *s = open_store(STORE_SYNC_FULL);
    struct group_row g[3] = {sample_group(1), sample_group(2), sample_group(3)};
    struct job_row j[3] = {sample_job(10, 1), sample_job(11, 2), sample_job(12, 3)};
    static const uint8_t details[] = {0, 1, 2, 0};
    struct seen sn = {0};

    /* NULL vs empty strings, big values, every enum and bool set somewhere. */
    g[0].parent_type = PARENT_NONE;
    g[0].parent_id = 0;
    g[0].cancel_reason = NULL;
    g[1].parent_type = PARENT_GROUP;
    g[1].cancel_reason = "";
    g[1].state = ST_ENDED;
    g[1].outcome = OUT_FAILED;
    g[1].closed = true;
    g[1].cancelled_caught = true;
    g[1].ended_ms = UINT64_MAX;
    g[2].id = INT64_MAX; /* the largest id the store takes */
    g[2].failed_seq = UINT64_MAX;

    j[0].result = (struct bytes){(const uint8_t *)"", 0}; /* empty, non-NULL pointer */
    j[0].err_type = "";
    j[0].err_message = NULL;
    j[0].kind = "";
    j[1].state = ST_ENDED;
    j[1].outcome = OUT_FAILED;
    j[1].attempt = UINT32_MAX;
    j[1].result = (struct bytes){PAYLOAD, 3};
    j[1].err_type = "ValueError";
    j[1].err_message = "bad \"input\"\nline two";
    j[1].err_details = (struct bytes){details, sizeof details};
    j[1].failed_seq = 7;
    j[1].ended_ms = 1700000009999ULL;
    j[2].payload = (struct bytes){NULL, 0};
    j[2].kind = NULL;
    j[2].cancel_called = true;
    j[2].cancelled_caught = true;
    j[2].cancel_source = SRC_SIBLING_FAILED;
    j[2].cancel_reason = "sibling j11 failed";
    j[2].state = ST_CANCELLING;

    cr_assert_eq(store_begin(s), 0, "%s", store_errmsg(s));
    put_groups(s, g, 3);
    put_jobs(s, j, 3);
    cr_assert_eq(store_commit(s), 0, "%s", store_errmsg(s));

    load_all(s, &sn);
    cr_assert_eq(sn.ngroups, 3);
    cr_assert_eq(sn.njobs, 3);
    for (int i = 0; i < 3; i++) {
        assert_group(&sn.groups[i], &g[i]);
        assert_job(&sn.jobs[i], &j[i]);
    }
    /* The empty string loads as a (non-NULL) empty string, NULL as NULL. */
    cr_assert_not_null(sn.groups[1].cancel_reason);
    cr_assert_null(sn.groups[0].cancel_reason);
    seen_free(&sn);
    store_close(&s);
}

Test(store, update_changes_mutable_fields_only)
{
    struct store *s = open_store(STORE_SYNC_FULL);
    struct group_row g = sample_group(1);
    struct job_row j = sample_job(2, 1);
    struct group_row g2;
    struct job_row j2;
    struct seen sn = {0};
    static const uint8_t result[] = {9, 0, 9};

    cr_assert_eq(store_begin(s), 0);
    put_groups(s, &g, 1);
    put_jobs(s, &j, 1);
    cr_assert_eq(store_commit(s), 0);

    /* Every mutable field changes; the immutable ones in the row are ignored. */
    g2 = g;
    g2.is_new = false;
    g2.state = ST_ENDED;
    g2.outcome = OUT_CANCELLED;
    g2.closed = true;
    g2.cancel_called = false;
    g2.cancelled_caught = true;
    g2.cancel_source = SRC_PARENT;
    g2.cancel_reason = NULL;
    g2.failed_seq = 0;
    g2.ended_ms = 1700000001234ULL;
    g2.parent_type = PARENT_GROUP;
    g2.parent_id = 999;
    g2.created_ms = 5;

    j2 = j;
    j2.is_new = false;
    j2.state = ST_ENDED;
    j2.outcome = OUT_SUCCEEDED;
    j2.attempt = 3;
    j2.result = (struct bytes){result, sizeof result};
    j2.err_type = "E";
    j2.err_message = "";
    j2.err_details = (struct bytes){result, 1};
    j2.cancel_called = true;
    j2.cancelled_caught = true;
    j2.cancel_source = SRC_EXPLICIT;
    j2.cancel_reason = "user";
    j2.failed_seq = 4;
    j2.ended_ms = 1700000005678ULL;
    j2.group_id = 77;
    j2.kind = "other";
    j2.payload = (struct bytes){(const uint8_t *)"new", 3};
    j2.created_ms = 6;

    cr_assert_eq(store_begin(s), 0);
    cr_assert_eq(store_put_group(s, &g2), 0, "%s", store_errmsg(s));
    cr_assert_eq(store_put_job(s, &j2), 0, "%s", store_errmsg(s));
    cr_assert_eq(store_commit(s), 0);

    load_all(s, &sn);
    cr_assert_eq(sn.ngroups, 1);
    cr_assert_eq(sn.njobs, 1);
    /* What should be stored: the update's mutable fields on the insert's immutable ones. */
    g2.parent_type = g.parent_type;
    g2.parent_id = g.parent_id;
    g2.created_ms = g.created_ms;
    j2.group_id = j.group_id;
    j2.kind = j.kind;
    j2.payload = j.payload;
    j2.created_ms = j.created_ms;
    assert_group(&sn.groups[0], &g2);
    assert_job(&sn.jobs[0], &j2);
    seen_free(&sn);
    store_close(&s);
}

Test(store, update_of_missing_row_fails)
{
    struct store *s = open_store(STORE_SYNC_FULL);
    struct group_row g = sample_group(1);
    struct job_row j = sample_job(2, 1);

    g.is_new = false;
    j.is_new = false;
    cr_assert_eq(store_begin(s), 0);
    cr_assert_eq(store_put_group(s, &g), -1);
    cr_assert(strstr(store_errmsg(s), "no such row"), "%s", store_errmsg(s));
    cr_assert_eq(store_put_job(s, &j), -1);
    cr_assert(strstr(store_errmsg(s), "job 2"), "%s", store_errmsg(s));
    cr_assert_eq(store_rollback(s), 0, "%s", store_errmsg(s));
    store_close(&s);
}

Test(store, duplicate_insert_fails_then_rollback_recovers)
{
    struct store *s = open_store(STORE_SYNC_FULL);
    struct job_row j = sample_job(5, 1);
    struct seen sn = {0};

    cr_assert_eq(store_begin(s), 0);
    put_jobs(s, &j, 1);
    cr_assert_eq(store_commit(s), 0);
    cr_assert_eq(store_begin(s), 0);
    cr_assert_eq(store_put_job(s, &j), -1);
    cr_assert_gt(strlen(store_errmsg(s)), 0);
    cr_assert_eq(store_rollback(s), 0, "%s", store_errmsg(s));
    /* The store is usable again. */
    j.id = 6;
    cr_assert_eq(store_begin(s), 0, "%s", store_errmsg(s));
    put_jobs(s, &j, 1);
    cr_assert_eq(store_commit(s), 0);
    load_all(s, &sn);
    cr_assert_str_eq(sn.order, "j5 j6");
    seen_free(&sn);
    store_close(&s);
}

Test(store, id_above_int64_max_is_refused)
{
    struct store *s = open_store(STORE_SYNC_FULL);
    struct group_row g = sample_group((uint64_t)INT64_MAX + 1);
    struct job_row j = sample_job(UINT64_MAX, 1);

    cr_assert_eq(store_begin(s), 0);
    cr_assert_eq(store_put_group(s, &g), -1);
    cr_assert(strstr(store_errmsg(s), "INT64_MAX"), "%s", store_errmsg(s));
    cr_assert_eq(store_put_job(s, &j), -1);
    cr_assert_eq(store_rollback(s), 0);
    store_close(&s);
}

Test(store, bytes_with_null_data_and_length_are_refused)
{
    struct store *s = open_store(STORE_SYNC_FULL);
    struct job_row j = sample_job(5, 1);

    j.result = (struct bytes){NULL, 4};
    cr_assert_eq(store_begin(s), 0);
    cr_assert_eq(store_put_job(s, &j), -1);
    cr_assert(strstr(store_errmsg(s), "NULL data"), "%s", store_errmsg(s));
    cr_assert_eq(store_rollback(s), 0);
    store_close(&s);
}

/* Writes groups 5, 2, 9 and jobs 7, 3, 8 (out of order) and commits. */
static void
put_shuffled(struct store *s)
{
    struct group_row g[3] = {sample_group(5), sample_group(2), sample_group(9)};
    struct job_row j[3] = {sample_job(7, 5), sample_job(3, 2), sample_job(8, 9)};

    cr_assert_eq(store_begin(s), 0);
    put_jobs(s, &j[0], 1); /* a job before its group: no foreign keys */
    put_groups(s, g, 3);
    put_jobs(s, &j[1], 2);
    cr_assert_eq(store_commit(s), 0);
}

Test(store, load_order_is_groups_then_jobs_by_id)
{
    struct store *s = open_store(STORE_SYNC_FULL);
    struct seen sn = {0};

    put_shuffled(s);
    load_all(s, &sn);
    cr_assert_str_eq(sn.order, "g2 g5 g9 j3 j7 j8");
    seen_free(&sn);
    store_close(&s);
}

Test(store, callback_stop_is_returned)
{
    struct store *s = open_store(STORE_SYNC_FULL);
    struct seen a = {.stop_at = 2, .stop_value = 42};
    struct seen b = {.stop_at = 5, .stop_value = -7};
    struct seen c = {0};

    put_shuffled(s);
    /* A group callback stops: no further group, no job at all. */
    cr_assert_eq(store_load(s, on_group, on_job, &a), 42);
    cr_assert_str_eq(a.order, "g2 g5");
    /* A job callback stops. */
    cr_assert_eq(store_load(s, on_group, on_job, &b), -7);
    cr_assert_str_eq(b.order, "g2 g5 g9 j3 j7");
    /* The statements were reset: a full load still sees everything. */
    load_all(s, &c);
    cr_assert_str_eq(c.order, "g2 g5 g9 j3 j7 j8");
    seen_free(&a);
    seen_free(&b);
    seen_free(&c);
    store_close(&s);
}

Test(store, rollback_discards_the_transaction)
{
    struct store *s = open_store(STORE_SYNC_FULL);
    struct group_row g = sample_group(1);
    struct job_row j = sample_job(2, 1);
    struct job_row j3 = sample_job(3, 1);
    struct seen sn = {0};

    cr_assert_eq(store_rollback(s), 0, "rollback without a transaction is a no-op");
    cr_assert_eq(store_begin(s), 0);
    put_groups(s, &g, 1);
    put_jobs(s, &j, 1);
    cr_assert_eq(store_commit(s), 0);

    cr_assert_eq(store_begin(s), 0);
    j.is_new = false;
    j.state = ST_RUNNING;
    j.attempt = 2;
    put_jobs(s, &j, 1);
    put_jobs(s, &j3, 1);
    g.is_new = false;
    g.closed = true;
    put_groups(s, &g, 1);
    cr_assert_eq(store_rollback(s), 0, "%s", store_errmsg(s));

    load_all(s, &sn);
    cr_assert_str_eq(sn.order, "g1 j2");
    cr_assert_eq(sn.jobs[0].state, ST_QUEUED);
    cr_assert_eq(sn.jobs[0].attempt, 1);
    cr_assert(!sn.groups[0].closed);
    seen_free(&sn);
    store_close(&s);
}

Test(store, data_survives_close_and_reopen)
{
    struct store *s = open_store(STORE_SYNC_FULL);
    struct group_row g = sample_group(1);
    struct job_row j = sample_job(2, 1);
    struct seen sn = {0};

    cr_assert_eq(store_begin(s), 0);
    put_groups(s, &g, 1);
    put_jobs(s, &j, 1);
    cr_assert_eq(store_commit(s), 0);
    store_close(&s);

    s = open_store(STORE_SYNC_FULL);
    cr_assert_eq(store_schema_version(s), LATEST_SCHEMA);
    load_all(s, &sn);
    cr_assert_eq(sn.ngroups, 1);
    cr_assert_eq(sn.njobs, 1);
    assert_group(&sn.groups[0], &g);
    assert_job(&sn.jobs[0], &j);
    seen_free(&sn);
    store_close(&s);
}

Test(store, uncommitted_transaction_is_lost_at_close)
{
    struct store *s = open_store(STORE_SYNC_FULL);
    struct group_row g = sample_group(1);
    struct seen sn = {0};

    cr_assert_eq(store_begin(s), 0);
    put_groups(s, &g, 1);
    store_close(&s);

    s = open_store(STORE_SYNC_FULL);
    load_all(s, &sn);
    cr_assert_eq(sn.calls, 0);
    store_close(&s);
}

Test(store, future_schema_version_is_refused)
{
    struct store *s = open_store(STORE_SYNC_FULL);
    static const uint8_t v99[4] = {0, 0, 0, 99};
    char err[512] = "";
    int fd;

    store_close(&s);
    /* Forge user_version = 99 in the (checkpointed) file header. */
    fd = open(in_dir("corral.db"), O_WRONLY);
    cr_assert_geq(fd, 0);
    cr_assert_eq(pwrite(fd, v99, 4, HDR_USER_VERSION), 4);
    close(fd);

    s = (struct store *)&err; /* store_open must set *out to NULL on failure */
    cr_assert_eq(store_open(&s, dir, STORE_SYNC_FULL, err, sizeof err), -1);
    cr_assert_null(s);
    cr_assert(strstr(err, "schema version 99"), "message: %s", err);
    cr_assert(strstr(err, "newer corrald"), "message: %s", err);
    cr_assert_eq(header_user_version(), 99, "the file is left alone");
}

Test(store, sync_normal_opens_and_writes)
{
    struct store *s = open_store(STORE_SYNC_NORMAL);
    struct group_row g = sample_group(1);
    struct seen sn = {0};

    cr_assert_eq(store_schema_version(s), LATEST_SCHEMA);
    cr_assert_eq(store_begin(s), 0);
    put_groups(s, &g, 1);
    cr_assert_eq(store_commit(s), 0);
    load_all(s, &sn);
    cr_assert_str_eq(sn.order, "g1");
    seen_free(&sn);
    store_close(&s);
}

Test(store, missing_dir_fails_with_message)
{
    struct store *s = NULL;
    char err[512] = "";
    char missing[128];

    snprintf(missing, sizeof missing, "%s/no/such/dir", dir);
    cr_assert_eq(store_open(&s, missing, STORE_SYNC_FULL, err, sizeof err), -1);
    cr_assert_null(s);
    cr_assert(strstr(err, "corral.db"), "message: %s", err);
}

Test(store, not_a_database_is_refused)
{
    struct store *s = NULL;
    char err[512] = "";
    char junk[4096];
    FILE *f = fopen(in_dir("corral.db"), "wb");

    cr_assert_not_null(f);
    memset(junk, 'x', sizeof junk);
    cr_assert_eq(fwrite(junk, 1, sizeof junk, f), sizeof junk);
    fclose(f);
    cr_assert_eq(store_open(&s, dir, STORE_SYNC_FULL, err, sizeof err), -1);
    cr_assert_null(s);
    cr_assert(strstr(err, "corral.db"), "message: %s", err);
}

Test(store, close_accepts_null)
{
    struct store *s = NULL;

    store_close(NULL);
    store_close(&s);
    cr_assert_null(s);
    cr_assert_not_null(store_errmsg(NULL));
}
