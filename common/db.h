/* db.h: one Postgres connection and every query latchkey makes.
 *
 * Caveats:
 * - One lk_db_t per process, opened after fork/exec; libpq connections are not shared.
 * - Calls block (workers and the sweeper run one job at a time; the gateway never calls
 *   this module).
 * - After a connection loss the next call reconnects once before failing with LK_EDB.
 *   Connects time out after 2 s (connect_timeout, unless the conninfo sets it) and TCP
 *   keepalives are on, so no call blocks a worker for long: the retries with backoff are
 *   the worker loop's, between jobs (worker.c), where they cost no missed heartbeat; the
 *   request meanwhile gets 503.
 * - libpq errors are logged here (without parameters: no email, no hash) and become LK_EDB.
 */
#ifndef LK_DB_H
#define LK_DB_H

#include "errors.h"

#include <stddef.h>
#include <stdint.h>

typedef struct lk_db lk_db_t;

struct lk_db_user {
    uint8_t id[16];
    char email[255];
    char password_hash[128];
    int is_active;
    int64_t created_ms;
};

/* Connects with a libpq conninfo string or URL. *out is caller-owned: lk_db_destroy.
 * Returns 0 or LK_EDB. */
int lk_db_connect(const char *conninfo, lk_db_t **out) LK_WUR;

/* Closes the connection and sets *self_p to NULL. NULL-safe. */
void lk_db_destroy(lk_db_t **self_p);

/* SELECT 1. Returns 0 or LK_EDB. */
int lk_db_ping(lk_db_t *self) LK_WUR;

/* Applies every sql/NNN_*.sql file of dir not yet in schema_migrations, in name order,
 * each in its own transaction together with its schema_migrations row. Returns 0 or LK_EDB
 * (the failing file is logged). */
int lk_db_migrate(lk_db_t *self, const char *dir) LK_WUR;

/* Inserts a user. On success fills id and *created_ms. Returns 0, LK_EEXISTS when the
 * email is taken, or LK_EDB. */
int lk_db_user_insert(lk_db_t *self, const char *email, const char *password_hash,
                      uint8_t id[16], int64_t *created_ms) LK_WUR;

/* Looks a user up by normalized email. Returns 0, LK_ENOTFOUND or LK_EDB. */
int lk_db_user_by_email(lk_db_t *self, const char *email, struct lk_db_user *out) LK_WUR;

/* Inserts a session row. Returns 0 or LK_EDB. */
int lk_db_session_insert(lk_db_t *self, const uint8_t hash[32], const uint8_t user_id[16],
                         int64_t created_ms, int64_t expires_ms) LK_WUR;

/* Deletes a session row. Returns 0, LK_ENOTFOUND when no row had that hash, or LK_EDB. */
int lk_db_session_delete(lk_db_t *self, const uint8_t hash[32]) LK_WUR;

/* Deletes up to limit session rows whose expires_at is before before_ms; *deleted gets
 * the count. Returns 0 or LK_EDB. */
int lk_db_sessions_expire(lk_db_t *self, int64_t before_ms, int limit, int *deleted) LK_WUR;

/* The sweeper's expiry: like lk_db_sessions_expire, and the deleted rows' token hashes
 * are copied into hashes (capacity limit) so the same entries can leave the cache.
 * *n gets the count. Returns 0 or LK_EDB. */
int lk_db_sessions_expire_hashes(lk_db_t *self, int64_t before_ms, int limit,
                                 uint8_t (*hashes)[32], int *n) LK_WUR;

/* Deletes every session of a user (signout-all, disable) and copies their token hashes
 * into hashes (capacity cap); *n gets the count. user_id is a canonical uuid string.
 * Returns 0, LK_ETOOBIG when more than cap were deleted (the rows are gone; the caller
 * must fall back to a cache sweep by user), or LK_EDB. */
int lk_db_user_sessions_delete(lk_db_t *self, const char *user_id, uint8_t (*hashes)[32], int cap,
                               int *n) LK_WUR;

struct lk_db_session {
    uint8_t user_id[16];
    char email[255];
    int64_t created_ms;
    int64_t expires_ms;
};

/* Called once per row by lk_db_sessions_live_page; a non-zero return stops the walk and
 * is returned. hash and s are borrowed for the call. */
typedef int (*lk_db_session_cb)(void *arg, const uint8_t hash[32], const struct lk_db_session *s);

/* One page of the sessions live at now_ms whose token hash sorts after `after` (all zero
 * bytes to start), in token-hash order, at most limit rows: cb is called per row and *n
 * gets the count. The caller continues from the last hash seen while *n == limit.
 * Returns 0, LK_EDB, or cb's non-zero value. */
int lk_db_sessions_live_page(lk_db_t *self, const uint8_t after[32], int64_t now_ms, int limit,
                             lk_db_session_cb cb, void *arg, int *n) LK_WUR;

/* Rehash after a successful signin: replaces the user's password hash while it is still
 * old_hash. Returns 0, LK_ENOTFOUND (the row changed meanwhile: nothing done), or LK_EDB. */
int lk_db_user_set_password_hash(lk_db_t *self, const uint8_t id[16], const char *old_hash,
                                 const char *new_hash) LK_WUR;

/* The user of a session (signout-all): user_id gets the canonical uuid string. Returns 0,
 * LK_ENOTFOUND, or LK_EDB. */
int lk_db_session_user(lk_db_t *self, const uint8_t hash[32], char user_id[37]) LK_WUR;

/* Enables (active=1) or disables a user by normalized email (is_active and status);
 * user_id gets its uuid string. Returns 0, LK_ENOTFOUND, or LK_EDB. */
int lk_db_user_set_active(lk_db_t *self, const char *email, int active, char user_id[37]) LK_WUR;

/* The sweeper's scheduled maintenance: ANALYZE users, user_sessions (fresh planner
 * statistics keep the index plans of the hot queries). Not a prepared statement (a
 * utility command); no statement_timeout applies (a large table may take longer).
 * Reconnects once after a connection loss. Returns 0 or LK_EDB. */
int lk_db_analyze(lk_db_t *self) LK_WUR;

#endif
