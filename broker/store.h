/* store.h - durable state in SQLite (the only module that includes sqlite3.h).
 *
 * One database file, <data-dir>/corral.db, in WAL mode, with a versioned schema
 * (PRAGMA user_version, ordered migrations). The loop writes all rows of one turn
 * inside one transaction (store_begin .. store_commit) and sends replies only after
 * store_commit returned 0. Rows are struct group_row / struct job_row (model.h).
 */
#ifndef CORRAL_STORE_H
#define CORRAL_STORE_H

#include "model.h"

#include <stddef.h>
#include <stdint.h>

struct store;

enum store_sync { STORE_SYNC_FULL = 0, STORE_SYNC_NORMAL = 1 };

/* Opens (creating if missing) <dir>/corral.db, migrating its schema to the current
 * version; dir must exist. On failure returns -1 and writes a message into err
 * (errlen bytes). Returns owned *out. */
int store_open(struct store **out, const char *dir, enum store_sync sync, char *err, size_t errlen);
/* Closes the database (checkpointing the WAL). Accepts NULL; sets *p to NULL. */
void store_close(struct store **p);

/* The schema version the database is at (PRAGMA user_version). */
int store_schema_version(const struct store *s);
/* The schema version this code creates and migrates to. */
int store_schema_latest(void);

/* One transaction per loop turn. Each returns 0, or -1 with store_errmsg() set. After a
 * failed put or commit the caller must call store_rollback(). */
int store_begin(struct store *s);
/* Writes a group: INSERT when row->is_new, else UPDATE of every mutable column.
 * The row is borrowed. */
int store_put_group(struct store *s, const struct group_row *row);
/* Writes a job: INSERT (with payload) when row->is_new, else UPDATE of every mutable
 * column (the payload never changes). The row is borrowed. */
int store_put_job(struct store *s, const struct job_row *row);
int store_commit(struct store *s);
/* Rolls back the open transaction; 0 (and no effect) when none is open. */
int store_rollback(struct store *s);

/* Reads everything back at start: every group in id order, then every job in id order,
 * calling the callbacks with rows borrowed for the duration of the call (is_new false).
 * A NULL callback skips its table. A callback returning a positive value stops the load
 * and is returned; -1 means a storage error (store_errmsg). Ids are at most INT64_MAX
 * (SQLite's INTEGER PRIMARY KEY is signed). */
int store_load(struct store *s, int (*on_group)(void *arg, const struct group_row *row),
               int (*on_job)(void *arg, const struct job_row *row), void *arg);

/* Writes a limiter row: INSERT or UPDATE of its total, or DELETE when row->deleted.
 * The row is borrowed. Inside a transaction, like the puts above. */
int store_put_limiter(struct store *s, const struct limiter_row *row);
/* Reads every limiter in name order (call before store_load: jobs name limiters), with
 * the same callback conventions as store_load. */
int store_load_limiters(struct store *s,
                        int (*on_limiter)(void *arg, const struct limiter_row *row), void *arg);

/* Purges (retention). Inside a transaction, like the puts. store_mark_purge records that
 * the purge of a root group has begun; store_delete_node deletes one group or job row
 * and, for the root (deleted last), its mark. */
int store_mark_purge(struct store *s, uint64_t root);
int store_delete_node(struct store *s, bool is_group, uint64_t id, bool root);
/* Reads the roots whose purge had begun, in id order (call after store_load), with the
 * callback conventions of store_load. */
int store_load_purging(struct store *s, int (*on_root)(void *arg, uint64_t root), void *arg);

/* The last SQLite error message (borrowed, never NULL). */
const char *store_errmsg(const struct store *s);

#endif
