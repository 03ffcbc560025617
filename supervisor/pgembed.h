/* pgembed.h: the embedded Postgres of the default setup.
 *
 * With no database.url configured, latchkeyd keeps a private cluster under <var>/pg:
 * data in <var>/pg/data, the only listening socket in <var>/pg/run (no TCP). The
 * postmaster is a direct child of latchkeyd, started with PR_SET_PDEATHSIG so it shuts
 * down (SIGINT, a fast shutdown) even when latchkeyd itself is killed.
 *
 * Caveats:
 * - Postgres refuses to run as root. When latchkeyd runs as root, initdb and postgres run
 *   as cfg.postgres.user (created as a system user if missing), which must be able to
 *   traverse every directory above <var>: pgembed_start() checks and says so.
 * - pgembed_start() blocks until the server accepts connections (at most 60 s);
 *   pgembed_restart() does not.
 * - Durability: the server runs with fsync and synchronous_commit forced on, whatever
 *   postgresql.conf says (and db.c sets synchronous_commit per session too).
 */
#ifndef LK_PGEMBED_H
#define LK_PGEMBED_H

#include "config.h"

#include <sys/types.h>

typedef struct pgembed pgembed_t;

/* Creates the cluster if needed, starts the postmaster, waits until it answers and makes
 * sure the "latchkey" database exists. On success *out is caller-owned (pgembed_destroy)
 * and conninfo (size len) holds the libpq conninfo of that database.
 * Returns 0 or a negative code; the reason is logged. */
int pgembed_start(const struct lk_config *cfg, char *conninfo, size_t len, pgembed_t **out) LK_WUR;

/* The postmaster's pid, or 0 when it is not running. */
pid_t pgembed_pid(const pgembed_t *self);

/* Tells pgembed that the postmaster was reaped (status from waitpid). */
void pgembed_reaped(pgembed_t *self, int status);

/* Starts the postmaster again after it died (cluster already initialized). Does not wait
 * for it to answer (crash recovery may take a while; latchkeyd's loop must go on): the
 * workers' reconnect backoff finds it. Returns 0 or a negative code. */
int pgembed_restart(pgembed_t *self) LK_WUR;

/* Fast shutdown (SIGINT), then SIGQUIT, then SIGKILL after timeout_ms each; reaps it. */
void pgembed_stop(pgembed_t *self, int64_t timeout_ms);

/* Stops the server if running, frees, sets *self_p to NULL. NULL-safe. */
void pgembed_destroy(pgembed_t **self_p);

#endif
