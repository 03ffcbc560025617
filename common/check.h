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

/* NFKC-normalizes a password that passed lk_password_check (valid UTF-8, no NUL), so that
 * composed and decomposed forms of the same text hash alike; signup and signin both call
 * it before argon2id. out (capacity cap) gets the NUL-terminated result and *outlen its
 * length. Returns 0; LK_ETOOBIG when the normalized form does not fit in cap - 1 bytes
 * (NFKC may lengthen a string); LK_EMALFORMED when utf8proc refuses the input; -ENOMEM.
 * Intermediate copies are wiped. */
int lk_password_nfkc(const char *pw, size_t len, char *out, size_t cap, size_t *outlen) LK_WUR;

/* Returns 1 when pw (len bytes), with ASCII letters lowercased, is in the shipped list of
 * common passwords (common/data/common-passwords.txt), else 0. */
int lk_password_is_common(const char *pw, size_t len);

/* The signup policy beyond length (NIST SP 800-63B 3.1.1.2: blocklist and context-specific
 * words): refuses a password in the common list and one equal, ASCII-case-insensitively,
 * to the email or to its local part. Returns 0, or LK_EINVAL with *reason (if non-NULL)
 * set to a static sentence for the error message. */
int lk_password_policy(const char *pw, size_t len, const char *email, const char **reason) LK_WUR;

#endif
