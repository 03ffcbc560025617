/* worker.h: the plumbing of the roles the supervisor starts.
 *
 * Three parts:
 * - lk_role_*: start-up, signals and SIGHUP reload, shared by every role but the
 *   supervisor (gateway, workers, sweeper, metrics collector);
 * - lk_status_*, lk_gateway_backend: what every role needs to know about its neighbours
 *   (latchkeyd's status socket, the gateways' backend endpoints);
 * - lk_worker_run: the worker side of the Paranoid Pirate protocol (zguide ppworker.c,
 *   written against plain libzmq), shared by the signup and signin workers.
 *
 * Caveats:
 * - lk_role_start blocks SIGTERM, SIGINT and SIGHUP for the whole process and turns them
 *   into a signalfd, so a signal never interrupts a job half-way: it is noticed when the
 *   loop next waits (lk_role_sleep, lk_role_signal_fd in a poll set) or asks
 *   (lk_role_stopping). SIGHUP reloads the configuration there (reloadable keys only).
 *   Call it before creating any thread (the ZeroMQ context's I/O threads included), so that
 *   every thread inherits the mask.
 * - One job at a time: a handler blocks the loop (argon2id is CPU-bound, libpq calls block),
 *   so no heartbeat leaves while it runs. A handler should stay well under three heartbeat
 *   intervals, or the gateway drops the worker until its next READY.
 * - With gateway.count = N a worker holds one DEALER per gateway and serves all of them,
 *   still one job at a time: when a job of one gateway starts, the others are told
 *   (MSG_WK_HEARTBEAT busy=1) and stop counting the worker idle until it ends (busy=0). A
 *   job another gateway sent before it heard waits in the socket and runs next.
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
 * lk_config_load into *cfg; lk_log_init(role, cfg->log.level) and lk_log_file(log.file);
 * lk_crypto_init(); blocks SIGTERM/SIGINT/SIGHUP into a signalfd; lk_metrics_start(role,
 * metrics.endpoint) (metrics.h). role and cfg are borrowed for the life of the
 * process (a string literal; a static): a SIGHUP reload rewrites *cfg in place.
 * Never returns on failure: a usage error exits 2, any other failure is logged and exits 1. */
void lk_role_start(const char *role, int argc, char **argv, struct lk_config *cfg);

/* The signalfd of lk_role_start (non-blocking), for a caller's own poll set: readable once
 * a signal arrived. Read it only through lk_role_stopping. */
int lk_role_signal_fd(void);

/* Returns 1 once SIGTERM or SIGINT has arrived (sticky), else 0. Never blocks (but for a
 * SIGHUP found on the way: the configuration file is read again and, when only reloadable
 * keys changed, the role's *cfg is replaced and the log level applied; otherwise the
 * running configuration stays and the reason is logged). */
int lk_role_stopping(void);

/* Waits ms milliseconds or until a stop signal, shipping metrics when due meanwhile
 * (lk_metrics_tick). Returns 1 when stopping, else 0. */
int lk_role_sleep(int64_t ms);

/* ---- neighbours ------------------------------------------------------------------------ */

/* The backend endpoint of gateway number index (0 .. cfg->gateway.count - 1), written into
 * out (size len). Gateway 0 uses gateway.backend itself; gateway i > 0 uses
 * tcp://host:(port + i) for a tcp endpoint, and ipc://path-i.ipc for ipc://path.ipc (the
 * suffix -i is appended when the path does not end in .ipc). With connect set, a wildcard
 * tcp host (* or 0.0.0.0: what a gateway binds) becomes 127.0.0.1 (what a local worker
 * connects to). Returns 0, or LK_EINVAL (index out of range, port past 65535, a transport
 * other than tcp or ipc with index > 0, out too small). */
int lk_gateway_backend(const struct lk_config *cfg, int index, int connect, char *out,
                       size_t len) LK_WUR;

/* The index of this gateway among gateway.count: LATCHKEY_GATEWAY_INDEX, which latchkeyd
 * sets for each gateway it starts (0 when unset). Returns it, or -1 when malformed or out
 * of range. */
int lk_gateway_index(const struct lk_config *cfg);

/* The process's status line in latchkeyctl status. */
typedef struct lk_status lk_status_t;

/* Connects a PUSH socket (in zctx) to latchkeyd's status endpoint, named by
 * LATCHKEY_SUPERVISOR_STATUS in the environment of the processes latchkeyd starts.
 * Returns a caller-owned reporter (lk_status_destroy), or NULL when the variable is unset
 * (a process started by hand: nobody to report to) or the socket fails (logged). */
lk_status_t *lk_status_new(void *zctx);

/* Sends MSG_RO_STATUS {getpid(), jobs_done, busy}. Never blocks; a report that cannot
 * leave is dropped (the socket is conflated: only the newest report matters).
 * NULL-safe. */
void lk_status_report(lk_status_t *self, uint64_t jobs_done, uint32_t busy);

/* Closes the socket (before the context is terminated), frees, sets *self_p to NULL.
 * NULL-safe. */
void lk_status_destroy(lk_status_t **self_p);

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
 * capped, jittered backoff), then one DEALER to each gateway's backend endpoint
 * (lk_gateway_backend, cfg->gateway.count of them), says MSG_WK_READY {role} on each,
 * heartbeats every cfg->gateway.heartbeat_ms, reconnects to a gateway silent for three
 * intervals (backoff 1 s doubling to 32 s, the other gateways served meanwhile), and runs
 * every job through handlers[] one at a time, the gateways served in turn.
 * The loop answers a job itself, without its handler, when its deadline has passed (504
 * timeout: the gateway has answered already and takes the worker back at once) and while
 * Postgres is known down and the next reconnect attempt is not due (503: the attempts
 * back off from 250 ms doubling to 4 s, with jitter, instead of one per request).
 * role and cfg are borrowed for the call. Returns 0 after a stop signal (the current job
 * finished first); a malformed or unexpected message from a gateway and any ZeroMQ failure
 * are fatal. */
int lk_worker_run(const char *role, const struct lk_config *cfg, const struct msg_handler *handlers,
                  size_t nhandlers) LK_WUR;

/* Registers fn (borrowed; NULL to clear) to be called by lk_worker_run every
 * gateway.heartbeat between jobs while Postgres answers: deferred clean-up (the signin
 * worker withdraws sessions of unknown outcome). It returns like a handler: 0, or LK_EDB
 * when Postgres failed. */
void lk_worker_set_idle(int (*fn)(lk_db_t *db));

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
