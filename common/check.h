/* check.h: the input rules of api.md for emails and passwords, shared by the gateway (which
 * rejects bad input before any hop) and the workers (which check again). */
#ifndef LK_CHECK_H
#define LK_CHECK_H

#include "errors.h"

#include <stddef.h>

#define LK_EMAIL_MAX 254

/* Normalizes an email per api.md: surrounding white space trimmed, ASCII letters
 * lowercased; then 3..254 bytes, matching ^[^\s@]+@[^\s@]+\.[^\s@]+$ (\s: ASCII white
 * space). in has len bytes (may hold NUL: rejected). out gets the NUL-terminated result.
 * Returns 0 or LK_EINVAL. */
int lk_email_normalize(const char *in, size_t len, char out[LK_EMAIL_MAX + 1]) LK_WUR;

/* Checks a password: valid UTF-8 (no overlongs, no surrogates, no NUL), at least min_cp
 * code points, at most max_bytes bytes. Returns 0; LK_EMALFORMED for invalid UTF-8;
 * LK_EINVAL when too short or too long (then *reason, if non-NULL, gets a static human
 * sentence for the error message). */
int lk_password_check(const char *pw, size_t len, size_t min_cp, size_t max_bytes,
                      const char **reason) LK_WUR;

#endif
