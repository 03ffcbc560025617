/* log.h: structured logging, one logfmt line per event on stderr (and an optional file).
 *
 *   time=2026-12-04T20:00:00.123Z level=info role=gateway pid=42 rid=abc msg="..." k=v
 *
 * Nothing secret is ever passed here: no password, token, hash or Authorization header.
 * The supervisor merges every child's stderr into one stream.
 */
#ifndef LK_LOG_H
#define LK_LOG_H

#include "errors.h"

#include <stdarg.h>

enum lk_log_level { LK_LOG_DEBUG = 0, LK_LOG_INFO, LK_LOG_WARN, LK_LOG_ERROR };

/* Sets the role name printed in every line (borrowed: must outlive the process) and the
 * minimum level. Call once at start; safe to call again (SIGHUP). */
void lk_log_init(const char *role, enum lk_log_level level);

/* Also appends every line to the file at path (created 0640 when missing), besides
 * stderr; path NULL or empty: stderr only. path is copied. Each line is one write() to an
 * O_APPEND descriptor, so the lines of every process sharing the file stay whole. Once a
 * second at most (at a line), the path is checked: when it names another file than the
 * one open (logrotate moved it) or none, it is reopened. Returns 0 or -errno (the file
 * could not be opened: stderr only). */
int lk_log_file(const char *path) LK_WUR;

/* Reopens the log file now (SIGUSR1 after logrotate). Nothing when there is none. */
void lk_log_reopen(void);

/* Buffered mode, for an event loop on a hot path (the gateway's access lines): with on,
 * info and debug lines are kept in memory until lk_log_flush() (call it once per loop
 * turn, before waiting), at most 64 KiB; warn and error lines flush what is kept and are
 * written at once. The buffer is also flushed at exit(). */
void lk_log_buffer(int on);

/* Writes the kept lines (whole lines, at most 4096 bytes per write). */
void lk_log_flush(void);

/* Parses "debug" / "info" / "warn" / "error". Returns 0 or LK_EINVAL. */
int lk_log_level_parse(const char *s, enum lk_log_level *out);

/* Logs msg (printf format) at level. rid is the request id or NULL. The formatted text is
 * written as msg="..." with quotes and backslashes escaped and control bytes replaced. */
void lk_log(enum lk_log_level level, const char *rid, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define lk_debug(...) lk_log(LK_LOG_DEBUG, NULL, __VA_ARGS__)
#define lk_info(...) lk_log(LK_LOG_INFO, NULL, __VA_ARGS__)
#define lk_warn(...) lk_log(LK_LOG_WARN, NULL, __VA_ARGS__)
#define lk_error(...) lk_log(LK_LOG_ERROR, NULL, __VA_ARGS__)

/* Logs at error level and exits with status 1 (fatal: the supervisor restarts the role). */
void lk_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
