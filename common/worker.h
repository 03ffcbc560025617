/* worker.h: the plumbing of the roles the supervisor starts.
 *
 * Two parts:
 * - lk_role_*: start-up and signals, shared by every role but the supervisor (gateway,
 *   workers, sweeper, metrics collector).
 * - lk_worker_run: the worker side of the Paranoid Pirate protocol (zguide ppworker.c,
 *   written against plain libzmq), shared by the signup and signin workers.
 *
 * Caveats:
 * - lk_role_start blocks SIGTERM, SIGINT and SIGHUP (logged, otherwise ignored for now) for
 *   the whole process and turns them into a signalfd, so a signal never interrupts a job
 *   half-way: it is noticed when the loop next waits (lk_role_sleep, lk_role_signal_fd in a
 *   poll set) or asks (lk_role_stopping).
 *   Call it before creating any thread (the ZeroMQ context's I/O threads included), so that
 *   every thread inherits the mask.
 * - One job at a time: a handler blocks the loop (argon2id is CPU-bound, libpq calls block),
 *   so no heartbeat leaves while it runs. A handler should stay well under three heartbeat
 *   intervals, or the gateway drops the worker until its next READY.
 */
#ifndef LK_WORKER_H
#define LK_WORKER_H

#include "codec.h"
#include "config.h"
#include "db.h"
#include "errors.h"
#include "util.h"

#include <stddef.h>
#include <stdint.h>

/* ---- every role ------------------------------------------------------------------------ */

/* Start-up of a role: lk_die_with_parent(); parses argv ("-c FILE", the file optional);
 * lk_config_load into *cfg; lk_log_init(role, cfg->log.level); lk_crypto_init(); blocks
 * SIGTERM/SIGINT/SIGHUP into a signalfd. role is borrowed (a string literal: the log keeps
 * it).
 * Never returns on failure: a usage error exits 2, any other failure is logged and exits 1. */
void lk_role_start(const char *role, int argc, char **argv, struct lk_config *cfg);

/* The signalfd of lk_role_start (non-blocking), for a caller's own poll set: readable once
 * a signal arrived. Read it only through lk_role_stopping. */
int lk_role_signal_fd(void);

/* Returns 1 once SIGTERM or SIGINT has arrived (sticky), else 0. Never blocks. */
int lk_role_stopping(void);

/* Waits ms milliseconds or until a stop signal. Returns 1 when stopping, else 0. */
int lk_role_sleep(int64_t ms);

/* ---- workers --------------------------------------------------------------------------- */

/* One row per message type a worker accepts from the gateway. A type with no row is a
 * protocol error (fatal). MSG_GW_HEARTBEAT needs no row: the loop handles it.
 *
 * handle() gets the decoded request (it may wipe secrets in it early) and fills *reply
 * (zeroed beforehand), including the job id. The loop has already dropped a job whose
 * deadline passed. After handle() returns, the loop sends *reply when its type is set, then
 * wipes both the request and the reply (passwords, tokens).
 * Returns 0 when Postgres answered (or was not asked), LK_EDB when it failed (the reply
 * then says 503): the heartbeat's db_ok follows it. */
struct msg_handler {
    enum lk_msg_type type;
    int (*handle)(lk_db_t *db, struct lk_msg *req, struct lk_msg *reply);
};

/* Runs a worker until a stop signal: connects to Postgres (cfg->database.url; retried with
 * backoff 1 s .. 30 s), then a DEALER to cfg->gateway.backend, says MSG_WK_READY {role},
 * heartbeats every cfg->gateway.heartbeat_ms, reconnects (backoff 1 s .. 32 s) after three
 * silent intervals, and dispatches every job to handlers[] one at a time. role and cfg are
 * borrowed for the call. Returns 0 after a stop signal (the current job finished first);
 * a malformed or unexpected message from the gateway and any ZeroMQ failure are fatal. */
int lk_worker_run(const char *role, const struct lk_config *cfg, const struct msg_handler *handlers,
                  size_t nhandlers) LK_WUR;

/* Sets the status and the JSON error body (stable code, short human text) of any worker
 * reply r (every reply type has status, error and message fields). */
#define LK_REPLY_ERROR(r, st, code, text)                                                          \
    do {                                                                                           \
        (r)->status = (st);                                                                        \
        (void)lk_strlcpy((r)->error, (code), sizeof(r)->error);                                    \
        (void)lk_strlcpy((r)->message, (text), sizeof(r)->message);                                \
    } while (0)

/* The answer when Postgres, the cache or the hashing failed: the client may retry. */
#define LK_REPLY_UNAVAILABLE(r)                                                                    \
    LK_REPLY_ERROR(r, 503, "unavailable", "the service is temporarily unavailable")

#endif
