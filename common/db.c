/* db.c: latchkey's one Postgres connection per process (see db.h for the Caveats).
 *
 * Every query is a statement prepared once per connection and run with PQexecPrepared, so
 * user input only ever travels as parameters. libpq's results and codes stop here: callers
 * see 0, LK_ENOTFOUND, LK_EEXISTS or LK_EDB. Logged errors carry the primary message and
 * SQLSTATE only: DETAIL lines echo row values (an email, a token hash). */
#include "db.h"

#include "log.h"
#include "metrics.h"
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Session settings, applied at connect and after every reset (a reset is a new backend).
 * Notices below WARNING are noise in the logs; a runaway query or a lock queue must fail
 * the request (the gateway's route timeout is 30 s too) instead of pinning a worker. A 2xx
 * promises a durable commit: synchronous_commit is forced on, whatever a role, database or
 * server setting says. */
#define S_SETTINGS                                                                                 \
    "SET client_min_messages = warning; SET statement_timeout = '30s'; "                          \
    "SET lock_timeout = '10s'; SET synchronous_commit = on"

/* pg_advisory_lock key that serializes migrators: the bytes of "lkmigrat". */
#define S_MIGRATE_LOCK "7812458278078800244"

/* A migration file larger than this is a mistake, not a schema. */
#define S_MIGRATION_MAX (16 * 1024 * 1024)

struct lk_db {
    PGconn *conn;
    uint32_t prepared; /* bit i: s_stmts[i] is prepared on the current backend */
    int counted;       /* in latchkey_pg_connections */
};

/* latchkey_pg_*{role}: registered at first use (the role is known by then). */
static struct {
    lk_metric_t duration, errors, conns;
} s_m;

static void s_metrics_init(void)
{
    if (!s_m.duration) {
        s_m.duration = LK_METRIC(LKM_PG_QUERY_DURATION, lk_metrics_role());
        s_m.errors = LK_METRIC(LKM_PG_QUERY_ERRORS, lk_metrics_role());
        s_m.conns = LK_METRIC(LKM_PG_CONNECTIONS, lk_metrics_role());
    }
}

enum s_stmt {
    S_USER_INSERT,
    S_USER_BY_EMAIL,
    S_SESSION_INSERT,
    S_SESSION_DELETE,
    S_SESSIONS_EXPIRE,
    S_SESSIONS_EXPIRE_RETURNING,
    S_USER_SESSIONS_DELETE,
    S_SESSIONS_LIVE_PAGE,
    S_USER_SET_HASH,
    S_SESSION_USER,
    S_USER_SET_ACTIVE,
    S_PING,
    S_NSTMT
};

/* Timestamps cross the boundary as integer ms since the epoch: to_timestamp() of ms/1000
 * as a double is exact to the microsecond for any date we will see, and extract(epoch)
 * is numeric in Postgres 14+, so *1000 then ::bigint gives the ms back exactly. */
static const struct s_stmt_def {
    const char *name;
    const char *sql;
    int nparams;
} s_stmts[S_NSTMT] = {
    [S_USER_INSERT] = {"lk_user_insert",
                       "INSERT INTO users (email, password_hash) VALUES ($1, $2) "
                       "RETURNING id::text, (extract(epoch FROM created_at) * 1000)::bigint",
                       2},
    [S_USER_BY_EMAIL] = {"lk_user_by_email",
                         "SELECT id::text, email, password_hash, "
                         "(status = 'active' AND is_active), "
                         "(extract(epoch FROM created_at) * 1000)::bigint "
                         "FROM users WHERE email = $1",
                         1},
    [S_SESSION_INSERT] = {"lk_session_insert",
                          "INSERT INTO user_sessions (token_hash, user_id, created_at, expires_at) "
                          "VALUES ($1, $2, to_timestamp($3::double precision / 1000), "
                          "to_timestamp($4::double precision / 1000))",
                          4},
    [S_SESSION_DELETE] = {"lk_session_delete", "DELETE FROM user_sessions WHERE token_hash = $1",
                          1},
    /* The LIMIT keeps each sweep's transaction (and its row locks) short; the subquery is
     * how DELETE gets a LIMIT, and it rides user_sessions_expires_at_idx. The shape matters
     * for the generic plan a prepared statement ends up with (tests/integration/
     * db_scale_test.py): "token_hash IN (SELECT ... LIMIT $2)" became a hash semi join over
     * a Seq Scan of the whole table at 100,000 rows; "= ANY (ARRAY(SELECT ... ORDER BY
     * expires_at LIMIT $2))" is an ordered index scan that stops at $2 rows, then primary
     * key probes. */
    [S_SESSIONS_EXPIRE] = {"lk_sessions_expire",
                           "DELETE FROM user_sessions WHERE token_hash = ANY (ARRAY("
                           "SELECT token_hash FROM user_sessions "
                           "WHERE expires_at < to_timestamp($1::double precision / 1000) "
                           "ORDER BY expires_at LIMIT $2))",
                           2},
    /* The sweeper's form: the hashes come back so the very same entries leave the cache. */
    [S_SESSIONS_EXPIRE_RETURNING] = {"lk_sessions_expire_returning",
                                     "DELETE FROM user_sessions WHERE token_hash = ANY (ARRAY("
                                     "SELECT token_hash FROM user_sessions "
                                     "WHERE expires_at < to_timestamp($1::double precision / 1000) "
                                     "ORDER BY expires_at LIMIT $2)) "
                                     "RETURNING encode(token_hash, 'hex')",
                                     2},
    /* signout-all and disabling a user; rides user_sessions_user_id_expires_at_idx. */
    [S_USER_SESSIONS_DELETE] = {"lk_user_sessions_delete",
                                "DELETE FROM user_sessions WHERE user_id = $1::uuid "
                                "RETURNING encode(token_hash, 'hex')",
                                1},
    /* Cache warm-up, one page at a time in token-hash order (keyset pagination on the
     * primary key, so each page is an index range scan however deep the walk is). */
    [S_SESSIONS_LIVE_PAGE] = {"lk_sessions_live_page",
                              "SELECT encode(s.token_hash, 'hex'), s.user_id::text, u.email, "
                              "(extract(epoch FROM s.created_at) * 1000)::bigint, "
                              "(extract(epoch FROM s.expires_at) * 1000)::bigint "
                              "FROM user_sessions s JOIN users u ON u.id = s.user_id "
                              "WHERE s.token_hash > $1 "
                              "AND s.expires_at > to_timestamp($2::double precision / 1000) "
                              "ORDER BY s.token_hash LIMIT $3",
                              3},
    /* Rehash at signin: only while the row still holds the hash that was verified. */
    [S_USER_SET_HASH] = {"lk_user_set_hash",
                         "UPDATE users SET password_hash = $2, updated_at = now() "
                         "WHERE id = $1::uuid AND password_hash = $3",
                         3},
    /* signout-all: whose session is this (primary key lookup). */
    [S_SESSION_USER] = {"lk_session_user",
                        "SELECT user_id::text FROM user_sessions WHERE token_hash = $1", 1},
    /* latchkeyctl user disable/enable. */
    [S_USER_SET_ACTIVE] = {"lk_user_set_active",
                           "UPDATE users SET is_active = $2::boolean, "
                           "status = CASE WHEN $2::boolean THEN 'active' ELSE 'disabled' END, "
                           "updated_at = now() WHERE email = $1 RETURNING id::text",
                           2},
    [S_PING] = {"lk_ping", "SELECT 1", 0},
};

static int s_setup(lk_db_t *self);
static int s_prepare(lk_db_t *self, enum s_stmt st, int defer_missing);
static int s_reconnect(lk_db_t *self);
static int s_exec(lk_db_t *self, enum s_stmt st, const char *const *values, const int *lengths,
                  const int *formats, ExecStatusType expect, PGresult **res, int *retried);
static int s_simple(lk_db_t *self, const char *sql, const char *what);
static int s_is_sqlstate(const PGresult *r, const char *state);
static void s_log_conn_error(PGconn *conn, const char *what);
static void s_clean(PGconn *conn, const char *msg, char *buf, size_t len);
static void s_log_result_error(PGconn *conn, const PGresult *res, const char *what);

/* libpq prints notices straight to stderr by default, which would break the one-logfmt-line
 * per event stream the supervisor merges. */
static void s_notice(void *arg, const char *message)
{
    (void)arg;
    size_t n = strlen(message);
    while (n > 0 && (message[n - 1] == '\n' || message[n - 1] == '\r'))
        n--;
    lk_warn("db: %.*s", (int)n, message);
}

int lk_db_connect(const char *conninfo, lk_db_t **out)
{
    *out = NULL;
    if (conninfo == NULL)
        return LK_EDB;
    /* Parse first: libpq's parse errors quote pieces of the string, password included, so
     * they are never logged verbatim. */
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &perr);
    if (opts == NULL) {
        lk_error("db: invalid connection string (not shown: it may hold a password)");
        PQfreemem(perr);
        return LK_EDB;
    }
    PQconninfoFree(opts);

    lk_db_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return LK_EDB;
    /* Bounds on a blocking call, as defaults the conninfo may override (expand_dbname: its
     * settings come after ours): a connect (and PQreset's reconnect) gives up after 2 s per
     * host instead of the kernel's TCP timeout (~2 min on a blackholed host), and TCP
     * keepalives notice a dead server under an idle or waiting connection within ~11 s.
     * A worker is one job at a time and misses heartbeats (dead after 3) while blocked,
     * which is why a failed call is retried once here and further retries happen between
     * jobs (common/worker.c), not 3 x 5 s inside a request as the seed's EF setting does. */
    static const char *const keys[] = {"connect_timeout", "keepalives_idle", "keepalives_interval",
                                       "keepalives_count", "dbname", NULL};
    const char *const vals[] = {"2", "5", "2", "3", conninfo, NULL};
    self->conn = PQconnectdbParams(keys, vals, 1);
    if (self->conn == NULL) {
        lk_error("db: connect: out of memory");
        free(self);
        return LK_EDB;
    }
    if (PQstatus(self->conn) != CONNECTION_OK) {
        s_log_conn_error(self->conn, "connect");
        lk_db_destroy(&self);
        return LK_EDB;
    }
    if (s_setup(self) != 0) {
        lk_db_destroy(&self);
        return LK_EDB;
    }
    s_metrics_init();
    lk_gauge_add(s_m.conns, 1);
    self->counted = 1;
    *out = self;
    return 0;
}

void lk_db_destroy(lk_db_t **self_p)
{
    if (self_p == NULL || *self_p == NULL)
        return;
    lk_db_t *self = *self_p;
    if (self->counted)
        lk_gauge_add(s_m.conns, -1);
    PQfinish(self->conn);
    free(self);
    *self_p = NULL;
}

/* Everything a fresh backend needs before its first query. */
static int s_setup(lk_db_t *self)
{
    /* TERSE: PQerrorMessage then holds no DETAIL/CONTEXT lines, which can quote row values. */
    PQsetErrorVerbosity(self->conn, PQERRORS_TERSE);
    PQsetNoticeProcessor(self->conn, s_notice, NULL);
    if (s_simple(self, S_SETTINGS, "session settings") != 0)
        return LK_EDB;
    /* Preparing everything now makes a schema that disagrees with this build a start-up
     * failure instead of a failed request later. */
    self->prepared = 0;
    int deferred = 0;
    for (int i = 0; i < S_NSTMT; i++) {
        if (s_prepare(self, (enum s_stmt)i, 1) != 0)
            return LK_EDB;
        deferred += !(self->prepared & (1u << i));
    }
    if (deferred > 0)
        lk_info("db: schema not migrated yet: %d statement(s) will be prepared on first use",
                deferred);
    return 0;
}

/* Prepares one statement on the current backend. With defer_missing, a table that does not
 * exist yet (SQLSTATE 42P01) is not an error: the process that connects first is the one
 * that migrates, and s_exec prepares the statement when it is first run. */
static int s_prepare(lk_db_t *self, enum s_stmt st, int defer_missing)
{
    PGresult *r =
        PQprepare(self->conn, s_stmts[st].name, s_stmts[st].sql, s_stmts[st].nparams, NULL);
    int ok = r != NULL && PQresultStatus(r) == PGRES_COMMAND_OK;
    if (ok)
        self->prepared |= 1u << st;
    else if (defer_missing && s_is_sqlstate(r, "42P01"))
        ok = 1;
    else
        s_log_result_error(self->conn, r, s_stmts[st].name);
    PQclear(r);
    return ok ? 0 : LK_EDB;
}

static int s_reconnect(lk_db_t *self)
{
    char why[256];
    s_clean(self->conn, PQerrorMessage(self->conn), why, sizeof why);
    lk_warn("db: connection lost (%s): reconnecting", why);
    PQreset(self->conn);
    if (PQstatus(self->conn) != CONNECTION_OK) {
        s_log_conn_error(self->conn, "reconnect");
        return LK_EDB;
    }
    /* Prepared statements and SETs belonged to the old backend. */
    if (s_setup(self) != 0)
        return LK_EDB;
    lk_info("db: reconnected");
    return 0;
}

/* Runs prepared statement st. Returns 0 with *res holding a result of status expect, or
 * LK_EDB with *res holding the error result (or NULL): the caller PQclear()s *res either
 * way and may look at its SQLSTATE. A connection found or left broken is reset once per
 * call and the statement retried once; *retried says so, because the first attempt may
 * have committed before the connection died and a caller with a non-idempotent statement
 * has to tell "my own first attempt" from "someone else's row". */
static int s_exec(lk_db_t *self, enum s_stmt st, const char *const *values, const int *lengths,
                  const int *formats, ExecStatusType expect, PGresult **res, int *retried)
{
    *res = NULL;
    *retried = 0;
    int reconnected = 0;
    if (PQstatus(self->conn) == CONNECTION_BAD) {
        /* A previous call's reset failed: this call gets its own one try. */
        if (s_reconnect(self) != 0)
            return LK_EDB;
        reconnected = 1;
    }
    for (;;) {
        int sent = 0;
        PGresult *r = NULL;
        if ((self->prepared & (1u << st)) || s_prepare(self, st, 0) == 0) {
            uint64_t t0 = lk_metrics_now_us();
            r = PQexecPrepared(self->conn, s_stmts[st].name, s_stmts[st].nparams, values, lengths,
                               formats, 0);
            s_metrics_init();
            lk_histogram_observe_us(s_m.duration, lk_metrics_now_us() - t0);
            sent = 1;
        }
        if (r != NULL && PQresultStatus(r) == expect) {
            *res = r;
            return 0;
        }
        if (!reconnected && PQstatus(self->conn) == CONNECTION_BAD) {
            PQclear(r);
            if (s_reconnect(self) != 0)
                return LK_EDB;
            reconnected = 1;
            *retried = sent;
            continue;
        }
        lk_counter_inc(s_m.errors);
        if (!sent)
            return LK_EDB; /* s_prepare logged why */
        /* A taken unique key is an answer (409, or a retry's own row), not a fault. */
        const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
        if (state == NULL || strcmp(state, "23505") != 0)
            s_log_result_error(self->conn, r, s_stmts[st].name);
        *res = r;
        return LK_EDB;
    }
}

static int s_is_sqlstate(const PGresult *r, const char *state)
{
    const char *s = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    return s != NULL && strcmp(s, state) == 0;
}

static int s_parse_i64(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0')
        return -1;
    *out = (int64_t)v;
    return 0;
}

/* A row that does not fit our structs means the schema and this build disagree. */
static int s_bad_row(PGresult *r, const char *what)
{
    lk_error("db: %s: unexpected result shape", what);
    PQclear(r);
    return LK_EDB;
}

int lk_db_ping(lk_db_t *self)
{
    PGresult *r;
    int retried;
    int rc = s_exec(self, S_PING, NULL, NULL, NULL, PGRES_TUPLES_OK, &r, &retried);
    PQclear(r);
    return rc == 0 ? 0 : LK_EDB;
}

int lk_db_user_insert(lk_db_t *self, const char *email, const char *password_hash, uint8_t id[16],
                      int64_t *created_ms)
{
    const char *values[2] = {email, password_hash};
    PGresult *r;
    int retried;
    int rc = s_exec(self, S_USER_INSERT, values, NULL, NULL, PGRES_TUPLES_OK, &r, &retried);
    if (rc != 0) {
        int taken = s_is_sqlstate(r, "23505");
        PQclear(r);
        if (!taken)
            return LK_EDB;
        if (retried) {
            /* The first attempt may have committed before the connection died. Its row
             * carries our password hash, whose random salt no other signup can repeat:
             * then the user is ours, and the signup succeeded. */
            struct lk_db_user u;
            if (lk_db_user_by_email(self, email, &u) == 0 &&
                strcmp(u.password_hash, password_hash) == 0) {
                memcpy(id, u.id, 16);
                *created_ms = u.created_ms;
                return 0;
            }
        }
        return LK_EEXISTS;
    }
    if (PQntuples(r) != 1 || PQnfields(r) != 2 || lk_uuid_parse(PQgetvalue(r, 0, 0), id) != 0 ||
        s_parse_i64(PQgetvalue(r, 0, 1), created_ms) != 0)
        return s_bad_row(r, "user_insert");
    PQclear(r);
    return 0;
}

int lk_db_user_by_email(lk_db_t *self, const char *email, struct lk_db_user *out)
{
    const char *values[1] = {email};
    PGresult *r;
    int retried;
    int rc = s_exec(self, S_USER_BY_EMAIL, values, NULL, NULL, PGRES_TUPLES_OK, &r, &retried);
    if (rc != 0) {
        PQclear(r);
        return LK_EDB;
    }
    if (PQntuples(r) == 0) {
        PQclear(r);
        return LK_ENOTFOUND;
    }
    memset(out, 0, sizeof *out);
    if (PQntuples(r) != 1 || PQnfields(r) != 5 ||
        lk_uuid_parse(PQgetvalue(r, 0, 0), out->id) != 0 ||
        lk_strlcpy(out->email, PQgetvalue(r, 0, 1), sizeof out->email) != 0 ||
        lk_strlcpy(out->password_hash, PQgetvalue(r, 0, 2), sizeof out->password_hash) != 0 ||
        s_parse_i64(PQgetvalue(r, 0, 4), &out->created_ms) != 0) {
        memset(out, 0, sizeof *out);
        return s_bad_row(r, "user_by_email");
    }
    out->is_active = strcmp(PQgetvalue(r, 0, 3), "t") == 0;
    PQclear(r);
    return 0;
}

int lk_db_session_insert(lk_db_t *self, const uint8_t hash[32], const uint8_t user_id[16],
                         int64_t created_ms, int64_t expires_ms)
{
    char created[24], expires[24];
    snprintf(created, sizeof created, "%" PRId64, created_ms);
    snprintf(expires, sizeof expires, "%" PRId64, expires_ms);
    /* bytea and uuid go in binary: 32 and 16 raw bytes (uuid's binary form is its 16
     * bytes in order), no hex encoding on either side. */
    const char *values[4] = {(const char *)hash, (const char *)user_id, created, expires};
    const int lengths[4] = {32, 16, 0, 0};
    const int formats[4] = {1, 1, 0, 0};
    PGresult *r;
    int retried;
    int rc =
        s_exec(self, S_SESSION_INSERT, values, lengths, formats, PGRES_COMMAND_OK, &r, &retried);
    if (rc != 0 && retried && s_is_sqlstate(r, "23505")) {
        /* Our first attempt committed before the connection died: nobody else can hold a
         * row with this 256-bit hash. */
        rc = 0;
    } else if (rc != 0 && s_is_sqlstate(r, "23505")) {
        lk_error("db: session_insert: token hash already present");
    }
    PQclear(r);
    return rc == 0 ? 0 : LK_EDB;
}

int lk_db_session_delete(lk_db_t *self, const uint8_t hash[32])
{
    const char *values[1] = {(const char *)hash};
    const int lengths[1] = {32};
    const int formats[1] = {1};
    PGresult *r;
    int retried;
    int rc =
        s_exec(self, S_SESSION_DELETE, values, lengths, formats, PGRES_COMMAND_OK, &r, &retried);
    if (rc != 0) {
        PQclear(r);
        return LK_EDB;
    }
    int none = strcmp(PQcmdTuples(r), "0") == 0;
    PQclear(r);
    /* After a retry, "no row" may be our own first attempt's delete: the session is gone,
     * which is all the caller asked for. */
    if (none && !retried)
        return LK_ENOTFOUND;
    return 0;
}

int lk_db_sessions_expire(lk_db_t *self, int64_t before_ms, int limit, int *deleted)
{
    *deleted = 0;
    if (limit <= 0)
        return 0;
    char before[24], lim[16];
    snprintf(before, sizeof before, "%" PRId64, before_ms);
    snprintf(lim, sizeof lim, "%d", limit);
    const char *values[2] = {before, lim};
    PGresult *r;
    int retried;
    int rc = s_exec(self, S_SESSIONS_EXPIRE, values, NULL, NULL, PGRES_COMMAND_OK, &r, &retried);
    if (rc != 0) {
        PQclear(r);
        return LK_EDB;
    }
    *deleted = atoi(PQcmdTuples(r));
    PQclear(r);
    return 0;
}

/* ---- migrations ---- */

/* PQexec of one or more statements without parameters; any non-error status is success. */
static int s_simple(lk_db_t *self, const char *sql, const char *what)
{
    PGresult *r = PQexec(self->conn, sql);
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    int ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY;
    if (!ok)
        s_log_result_error(self->conn, r, what);
    PQclear(r);
    return ok ? 0 : LK_EDB;
}

int lk_db_analyze(lk_db_t *self)
{
    if (PQstatus(self->conn) == CONNECTION_BAD && s_reconnect(self) != 0)
        return LK_EDB;
    int rc = s_simple(self, "SET statement_timeout = 0", "analyze settings");
    if (rc == 0)
        rc = s_simple(self, "ANALYZE users, user_sessions", "analyze");
    /* Back to the request settings whatever happened (a no-op if the connection died:
     * the next call's reconnect applies them). */
    if (PQstatus(self->conn) == CONNECTION_OK &&
        s_simple(self, "SET statement_timeout = '30s'", "analyze settings") != 0)
        rc = LK_EDB;
    return rc;
}

/* [0-9][0-9][0-9]_*.sql */
static int s_is_migration(const char *name)
{
    size_t n = strlen(name);
    if (n < 8 || strcmp(name + n - 4, ".sql") != 0 || name[3] != '_')
        return 0;
    for (int i = 0; i < 3; i++)
        if (name[i] < '0' || name[i] > '9')
            return 0;
    return 1;
}

static int s_cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void s_free_names(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* Lists the migration file names of dir, sorted. Returns 0 (caller frees with
 * s_free_names) or LK_EDB. */
static int s_list(const char *dir, char ***names_out, size_t *n_out)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        lk_error("db: migrations: opendir %s: %s", dir, strerror(errno));
        return LK_EDB;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) != NULL) {
        if (!s_is_migration(e->d_name))
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            char **nn = realloc(names, ncap * sizeof *nn);
            if (nn == NULL) {
                rc = LK_EDB;
                break;
            }
            names = nn;
            cap = ncap;
        }
        if ((names[n] = strdup(e->d_name)) == NULL) {
            rc = LK_EDB;
            break;
        }
        n++;
    }
    closedir(d);
    if (rc != 0) {
        lk_error("db: migrations: out of memory listing %s", dir);
        s_free_names(names, n);
        return rc;
    }
    if (n > 0)
        qsort(names, n, sizeof *names, s_cmp_names);
    *names_out = names;
    *n_out = n;
    return 0;
}

/* Reads a whole migration file as a NUL-terminated string. Returns it (caller frees) or
 * NULL after logging why. */
static char *s_read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        lk_error("db: migration %s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat stbuf;
    char *text = NULL;
    if (fstat(fileno(f), &stbuf) != 0 || stbuf.st_size < 0 || stbuf.st_size > S_MIGRATION_MAX) {
        lk_error("db: migration %s: unreadable or larger than %d bytes", path, S_MIGRATION_MAX);
        goto out;
    }
    size_t size = (size_t)stbuf.st_size;
    text = malloc(size + 1);
    if (text == NULL) {
        lk_error("db: migration %s: out of memory", path);
        goto out;
    }
    if (fread(text, 1, size, f) != size || ferror(f)) {
        lk_error("db: migration %s: short read", path);
        goto fail;
    }
    text[size] = '\0';
    /* PQexec would silently stop at a NUL and run half the file. */
    if (memchr(text, '\0', size) != NULL) {
        lk_error("db: migration %s: contains a NUL byte", path);
        goto fail;
    }
    goto out;
fail:
    free(text);
    text = NULL;
out:
    fclose(f);
    return text;
}

/* Applies one file in its own transaction with its schema_migrations row. Returns 1 when
 * applied, 0 when it already was, LK_EDB on failure (logged, rolled back). */
static int s_apply(lk_db_t *self, const char *dir, const char *name)
{
    char version[NAME_MAX + 1];
    size_t vlen = strlen(name) - 4; /* without ".sql" */
    memcpy(version, name, vlen);
    version[vlen] = '\0';

    const char *values[1] = {version};
    PGresult *r = PQexecParams(self->conn, "SELECT 1 FROM schema_migrations WHERE version = $1", 1,
                               NULL, values, NULL, NULL, 0);
    if (r == NULL || PQresultStatus(r) != PGRES_TUPLES_OK) {
        s_log_result_error(self->conn, r, name);
        PQclear(r);
        return LK_EDB;
    }
    int done = PQntuples(r) > 0;
    PQclear(r);
    if (done)
        return 0;

    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path) {
        lk_error("db: migration %s: path too long", name);
        return LK_EDB;
    }
    char *text = s_read_file(path);
    if (text == NULL)
        return LK_EDB;

    int rc = LK_EDB;
    /* statement_timeout is for requests: an index build may legitimately take longer.
     * LOCAL, so it ends with the transaction whatever happens. */
    if (s_simple(self, "BEGIN; SET LOCAL statement_timeout = 0", name) != 0)
        goto out;
    r = PQexec(self->conn, text);
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY) {
        const char *pos = r ? PQresultErrorField(r, PG_DIAG_STATEMENT_POSITION) : NULL;
        const char *msg = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
        const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
        lk_error("db: migration %s failed: %s (SQLSTATE %s%s%s)", name,
                 msg ? msg : PQerrorMessage(self->conn), state ? state : "none",
                 pos ? ", at character " : "", pos ? pos : "");
        PQclear(r);
        goto rollback;
    }
    PQclear(r);
    /* A file that ends our transaction itself (COMMIT/ROLLBACK inside) has escaped the
     * all-or-nothing rule: refuse to record it as applied. */
    if (PQtransactionStatus(self->conn) != PQTRANS_INTRANS) {
        lk_error("db: migration %s: must not contain BEGIN/COMMIT/ROLLBACK", name);
        goto rollback;
    }
    r = PQexecParams(self->conn, "INSERT INTO schema_migrations (version) VALUES ($1)", 1, NULL,
                     values, NULL, NULL, 0);
    st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK) {
        s_log_result_error(self->conn, r, name);
        PQclear(r);
        goto rollback;
    }
    PQclear(r);
    r = PQexec(self->conn, "COMMIT");
    /* COMMIT of a failed transaction "succeeds" with the tag ROLLBACK. */
    if (r == NULL || PQresultStatus(r) != PGRES_COMMAND_OK ||
        strcmp(PQcmdStatus(r), "COMMIT") != 0) {
        s_log_result_error(self->conn, r, name);
        PQclear(r);
        goto rollback;
    }
    PQclear(r);
    lk_info("db: applied migration %s", name);
    rc = 1;
    goto out;
rollback:
    if (PQtransactionStatus(self->conn) != PQTRANS_IDLE) {
        r = PQexec(self->conn, "ROLLBACK");
        PQclear(r);
    }
out:
    free(text);
    return rc;
}

int lk_db_migrate(lk_db_t *self, const char *dir)
{
    /* The steps below are plain PQexec calls without s_exec's reconnect: a round trip
     * first finds a connection that died while idle and replaces it. */
    if (lk_db_ping(self) != 0)
        return LK_EDB;
    char **names = NULL;
    size_t n = 0;
    if (s_list(dir, &names, &n) != 0)
        return LK_EDB;

    int rc = LK_EDB;
    /* A session-level advisory lock serializes whole runs, the CREATE TABLE included (two
     * concurrent CREATE TABLE IF NOT EXISTS can still collide). Waiting for another
     * migrator is expected, so neither timeout applies to that wait; lock_timeout comes
     * back for the DDL itself so that it fails rather than queue live traffic behind it. */
    if (s_simple(self, "SET statement_timeout = 0; SET lock_timeout = 0", "migrate settings") != 0)
        goto out;
    if (s_simple(self, "SELECT pg_advisory_lock(" S_MIGRATE_LOCK ")", "migrate lock") != 0)
        goto restore;
    if (s_simple(self, "SET lock_timeout = '10s'", "migrate settings") != 0 ||
        s_simple(self,
                 "CREATE TABLE IF NOT EXISTS schema_migrations ("
                 "version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
                 "schema_migrations") != 0)
        goto unlock;
    int applied = 0;
    size_t i;
    for (i = 0; i < n; i++) {
        int a = s_apply(self, dir, names[i]);
        if (a < 0)
            break;
        applied += a;
    }
    if (i == n) {
        rc = 0;
        if (applied > 0)
            lk_info("db: %d migration(s) applied from %s", applied, dir);
    }
unlock:
    if (s_simple(self, "SELECT pg_advisory_unlock(" S_MIGRATE_LOCK ")", "migrate unlock") != 0)
        rc = LK_EDB;
restore:
    if (s_simple(self, S_SETTINGS, "session settings") != 0)
        rc = LK_EDB;
out:
    s_free_names(names, n);
    return rc;
}

/* ---- logging ---- */

/* Copies libpq's message into buf as one line, with the connection's password (if libpq
 * ever echoes it) blotted out. */
static void s_clean(PGconn *conn, const char *msg, char *buf, size_t len)
{
    (void)lk_strlcpy(buf, msg ? msg : "unknown error", len); /* a cut message is fine */
    const char *pw = conn ? PQpass(conn) : NULL;
    if (pw != NULL && *pw != '\0') {
        size_t pl = strlen(pw);
        for (char *p = strstr(buf, pw); p != NULL; p = strstr(p, pw)) {
            memset(p, '*', pl);
            p += pl;
        }
    }
    size_t n = strlen(buf);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
        buf[--n] = '\0';
    for (char *p = buf; *p; p++)
        if (*p == '\n' || *p == '\r' || *p == '\t')
            *p = ' ';
}

static void s_log_conn_error(PGconn *conn, const char *what)
{
    char buf[512];
    s_clean(conn, PQerrorMessage(conn), buf, sizeof buf);
    lk_error("db: %s failed: %s", what, buf);
}

static void s_log_result_error(PGconn *conn, const PGresult *res, const char *what)
{
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    char buf[512];
    s_clean(conn, primary ? primary : PQerrorMessage(conn), buf, sizeof buf);
    if (state)
        lk_error("db: %s failed: %s (SQLSTATE %s)", what, buf, state);
    else if (res && PQresultStatus(res) != PGRES_FATAL_ERROR &&
             PQresultStatus(res) != PGRES_NONFATAL_ERROR)
        lk_error("db: %s: unexpected result %s", what, PQresStatus(PQresultStatus(res)));
    else
        lk_error("db: %s failed: %s", what, buf);
}

/* ---- hash lists ---- */

static int s_hex_nibble(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Decodes 64 lowercase hex characters (encode(..., 'hex') of a 32-byte hash). */
static int s_unhex32(const char *s, uint8_t out[32])
{
    if (strlen(s) != 64)
        return -1;
    for (int i = 0; i < 32; i++) {
        int hi = s_hex_nibble(s[2 * i]), lo = s_hex_nibble(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

/* Copies column 0 (hex hashes) of r into hashes (capacity cap); *n gets the count. */
static int s_hashes(PGresult *r, uint8_t (*hashes)[32], int cap, int *n)
{
    int rows = PQntuples(r);
    *n = 0;
    for (int i = 0; i < rows && i < cap; i++) {
        if (s_unhex32(PQgetvalue(r, i, 0), hashes[i]) != 0) {
            lk_error("db: malformed token hash from Postgres");
            return LK_EDB;
        }
        (*n)++;
    }
    return 0;
}

int lk_db_sessions_expire_hashes(lk_db_t *self, int64_t before_ms, int limit,
                                 uint8_t (*hashes)[32], int *n)
{
    *n = 0;
    if (limit <= 0)
        return 0;
    char before[24], lim[16];
    snprintf(before, sizeof before, "%" PRId64, before_ms);
    snprintf(lim, sizeof lim, "%d", limit);
    const char *values[2] = {before, lim};
    PGresult *r;
    int retried;
    int rc = s_exec(self, S_SESSIONS_EXPIRE_RETURNING, values, NULL, NULL, PGRES_TUPLES_OK, &r,
                    &retried);
    if (rc == 0)
        rc = s_hashes(r, hashes, limit, n);
    PQclear(r);
    return rc == 0 ? 0 : LK_EDB;
}

int lk_db_user_sessions_delete(lk_db_t *self, const char *user_id, uint8_t (*hashes)[32], int cap,
                               int *n)
{
    *n = 0;
    const char *values[1] = {user_id};
    PGresult *r;
    int retried;
    int rc = s_exec(self, S_USER_SESSIONS_DELETE, values, NULL, NULL, PGRES_TUPLES_OK, &r, &retried);
    if (rc == 0 && PQntuples(r) > cap) {
        lk_error("db: %d sessions deleted for one user, more than the %d the caller can hold",
                 PQntuples(r), cap);
        rc = LK_ETOOBIG;
    }
    if (rc == 0)
        rc = s_hashes(r, hashes, cap, n);
    PQclear(r);
    return rc == 0 ? 0 : (rc == LK_ETOOBIG ? rc : LK_EDB);
}

int lk_db_sessions_live_page(lk_db_t *self, const uint8_t after[32], int64_t now_ms, int limit,
                             lk_db_session_cb cb, void *arg, int *n)
{
    *n = 0;
    char after_lit[2 + 64 + 1], now[24], lim[16];
    static const char hex[] = "0123456789abcdef";
    after_lit[0] = '\\';
    after_lit[1] = 'x';
    for (int i = 0; i < 32; i++) {
        after_lit[2 + 2 * i] = hex[after[i] >> 4];
        after_lit[3 + 2 * i] = hex[after[i] & 15];
    }
    after_lit[66] = '\0';
    snprintf(now, sizeof now, "%" PRId64, now_ms);
    snprintf(lim, sizeof lim, "%d", limit);
    const char *values[3] = {after_lit, now, lim};
    PGresult *r;
    int retried;
    int rc = s_exec(self, S_SESSIONS_LIVE_PAGE, values, NULL, NULL, PGRES_TUPLES_OK, &r, &retried);
    if (rc != 0) {
        PQclear(r);
        return LK_EDB;
    }
    int rows = PQntuples(r);
    for (int i = 0; i < rows; i++) {
        uint8_t hash[32];
        struct lk_db_session s;
        memset(&s, 0, sizeof s);
        if (s_unhex32(PQgetvalue(r, i, 0), hash) != 0 ||
            lk_uuid_parse(PQgetvalue(r, i, 1), s.user_id) != 0 ||
            lk_strlcpy(s.email, PQgetvalue(r, i, 2), sizeof s.email) != 0) {
            lk_error("db: malformed session row from Postgres");
            PQclear(r);
            return LK_EDB;
        }
        s.created_ms = strtoll(PQgetvalue(r, i, 3), NULL, 10);
        s.expires_ms = strtoll(PQgetvalue(r, i, 4), NULL, 10);
        rc = cb(arg, hash, &s);
        if (rc != 0) {
            PQclear(r);
            return rc;
        }
        (*n)++;
    }
    PQclear(r);
    return 0;
}

int lk_db_user_set_password_hash(lk_db_t *self, const uint8_t id[16], const char *old_hash,
                                 const char *new_hash)
{
    char uid[37];
    lk_uuid_format(id, uid);
    const char *values[3] = {uid, new_hash, old_hash};
    PGresult *r;
    int retried;
    int rc = s_exec(self, S_USER_SET_HASH, values, NULL, NULL, PGRES_COMMAND_OK, &r, &retried);
    int none = rc == 0 && strcmp(PQcmdTuples(r), "0") == 0;
    PQclear(r);
    if (rc != 0)
        return LK_EDB;
    return none && !retried ? LK_ENOTFOUND : 0;
}

/* The user id of a query answering zero or one row of one uuid column; clears r.
 * Returns 0, LK_ENOTFOUND, or s_bad_row's code for anything else. */
static int s_one_user_id(PGresult *r, char user_id[37], const char *what)
{
    if (PQntuples(r) == 0) {
        PQclear(r);
        return LK_ENOTFOUND;
    }
    if (PQntuples(r) != 1 || PQnfields(r) != 1 || lk_strlcpy(user_id, PQgetvalue(r, 0, 0), 37) != 0)
        return s_bad_row(r, what);
    PQclear(r);
    return 0;
}

int lk_db_session_user(lk_db_t *self, const uint8_t hash[32], char user_id[37])
{
    const char *values[1] = {(const char *)hash};
    const int lengths[1] = {32};
    const int formats[1] = {1};
    PGresult *r;
    int retried;
    int rc = s_exec(self, S_SESSION_USER, values, lengths, formats, PGRES_TUPLES_OK, &r, &retried);
    if (rc != 0) {
        PQclear(r);
        return LK_EDB;
    }
    return s_one_user_id(r, user_id, "session_user");
}

int lk_db_user_set_active(lk_db_t *self, const char *email, int active, char user_id[37])
{
    const char *values[2] = {email, active ? "true" : "false"};
    PGresult *r;
    int retried;
    int rc = s_exec(self, S_USER_SET_ACTIVE, values, NULL, NULL, PGRES_TUPLES_OK, &r, &retried);
    if (rc != 0) {
        PQclear(r);
        return LK_EDB;
    }
    return s_one_user_id(r, user_id, "user_set_active");
}
