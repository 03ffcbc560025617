/* util.h: time, formatting and small helpers shared by every role. */
#ifndef LK_UTIL_H
#define LK_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Wall-clock time in milliseconds since the Unix epoch (CLOCK_REALTIME): used for
 * session expiry and deadlines that cross processes. */
int64_t lk_now_ms(void);

/* Monotonic time in milliseconds (CLOCK_MONOTONIC): used for local timers only. */
int64_t lk_mono_ms(void);

/* Formats ms since the epoch as RFC 3339 UTC with milliseconds ("2026-12-04T20:00:00.123Z").
 * out must hold at least 25 bytes. Returns out. */
char *lk_time_format_ms(int64_t ms, char *out, size_t outlen);

/* Formats ms since the epoch as RFC 3339 UTC in whole seconds ("2026-12-04T20:00:00Z"),
 * the form used in API responses. out must hold at least 21 bytes. Returns out. */
char *lk_time_format_s(int64_t ms, char *out, size_t outlen);

/* Formats 16 bytes as a lowercase canonical UUID; out must hold 37 bytes. */
void lk_uuid_format(const uint8_t id[16], char out[37]);

/* Parses a canonical UUID (36 chars, hex any case). Returns 0 or LK_EMALFORMED. */
int lk_uuid_parse(const char *s, uint8_t id[16]);

/* Copies src into dst (size dstlen) always NUL-terminating. Returns 0, or LK_ETOOBIG when
 * src did not fit (dst then holds a truncated copy). */
int lk_strlcpy(char *dst, const char *src, size_t dstlen);

/* Makes the calling process receive SIGTERM when its parent dies (PR_SET_PDEATHSIG) and
 * exits at once if the parent already died before the call (the pid it was started by,
 * read from LATCHKEY_SUPERVISOR_PID when set). Every role calls this first. */
void lk_die_with_parent(void);

#endif
