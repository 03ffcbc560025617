/* check.c: the email and password rules of api.md (see check.h).
 *
 * Both functions see raw bytes from HTTP clients, so they are written as single passes over
 * the input with no allocation, no locale and no regex engine: their cost is linear in len
 * and their answer does not depend on the process's environment. */
#include "check.h"

#include "crypto.h"

#include <errno.h>
#include <stdlib.h>
#include <utf8proc.h>

#include <stdint.h>
#include <string.h>

/* check.h reads api.md's \s as ASCII white space only: Unicode spaces are ordinary bytes
 * here, so the gateway, the workers and any client agree on one fixed set. */
static int s_is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

int lk_email_normalize(const char *in, size_t len, char out[LK_EMAIL_MAX + 1])
{
    out[0] = '\0';
    if (in == NULL)
        return LK_EINVAL;
    size_t b = 0, e = len;
    while (b < e && s_is_space((unsigned char)in[b]))
        b++;
    while (e > b && s_is_space((unsigned char)in[e - 1]))
        e--;
    size_t n = e - b;
    if (n < 3 || n > LK_EMAIL_MAX)
        return LK_EINVAL;

    /* One pass checks ^[^\s@]+@[^\s@]+\.[^\s@]+$ while copying: exactly one '@' with at
     * least one byte before it, and a '.' in the domain with a byte on each side of it. */
    size_t at = SIZE_MAX; /* index of the '@' in out */
    int dot_ok = 0;       /* a '.' in the domain with a byte on each side */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[b + i];
        if (c == '\0' || s_is_space(c))
            goto invalid;
        if (c == '@') {
            if (at != SIZE_MAX || i == 0)
                goto invalid;
            at = i;
        } else if (c == '.' && at != SIZE_MAX && i > at + 1 && i + 1 < n) {
            dot_ok = 1;
        }
        /* ASCII only: bytes >= 0x80 belong to UTF-8 sequences and are kept as sent. */
        out[i] = (char)(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
    }
    out[n] = '\0';
    if (at == SIZE_MAX || !dot_ok)
        goto invalid;
    return 0;
invalid:
    /* Never leave a half-copied address where a caller might print it. */
    out[0] = '\0';
    return LK_EINVAL;
}

/* Decodes one UTF-8 sequence at p (avail bytes left) per the Unicode standard's table of
 * well-formed byte sequences (Table 3-7): the second byte's range depends on the lead byte,
 * which is what excludes overlongs (E0 80..9F, F0 80..8F), surrogates (ED A0..BF) and
 * values past U+10FFFF (F4 90..BF, F5..FF) without decoding them first. Returns the
 * sequence length, or 0 when the bytes are not well formed. */
static size_t s_utf8_seq(const unsigned char *p, size_t avail)
{
    unsigned char c = p[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c == 0x00)
        return 0; /* NUL would truncate the password in every C API downstream */
    if (c < 0x80)
        return 1;
    if (c < 0xC2)
        return 0; /* continuation byte as a lead, or overlong 2-byte form (C0, C1) */
    if (c < 0xE0) {
        n = 2;
    } else if (c < 0xF0) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c < 0xF5) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    if (avail < n)
        return 0;
    if (p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xBF)
            return 0;
    return n;
}

int lk_password_check(const char *pw, size_t len, size_t min_cp, size_t max_bytes,
                      const char **reason)
{
    /* Reasons are static so the caller can put them in a reply without owning anything;
     * they name the rule, not the configured number, for the same reason. */
    const char *why = NULL;
    int rc = 0;
    size_t cp = 0;
    const unsigned char *p = (const unsigned char *)pw;
    if (pw == NULL && len > 0) {
        why = "password is not valid UTF-8";
        rc = LK_EMALFORMED;
        goto out;
    }
    for (size_t i = 0; i < len;) {
        size_t n = s_utf8_seq(p + i, len - i);
        if (n == 0) {
            why = "password is not valid UTF-8";
            rc = LK_EMALFORMED;
            goto out;
        }
        i += n;
        cp++;
    }
    if (len > max_bytes) {
        why = "password is too long";
        rc = LK_EINVAL;
    } else if (cp < min_cp) {
        why = "password is too short";
        rc = LK_EINVAL;
    }
out:
    if (reason)
        *reason = why;
    return rc;
}

extern const char *const lk_common_passwords[];
extern const size_t lk_common_passwords_count;

int lk_password_nfkc(const char *pw, size_t len, char *out, size_t cap, size_t *outlen)
{
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t n = utf8proc_map((const utf8proc_uint8_t *)pw, (utf8proc_ssize_t)len, &dst,
                                      UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
    if (n < 0)
        return n == UTF8PROC_ERROR_NOMEM ? -ENOMEM : LK_EMALFORMED;
    int rc = 0;
    if ((size_t)n >= cap) {
        rc = LK_ETOOBIG;
    } else {
        memcpy(out, dst, (size_t)n);
        out[n] = '\0';
        *outlen = (size_t)n;
    }
    lk_wipe(dst, (size_t)n);
    free(dst);
    return rc;
}

/* Compares a (len bytes, ASCII-lowercased on the fly) with the NUL-terminated b. */
static int s_lower_cmp(const char *a, size_t len, const char *b)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char ca = (unsigned char)a[i], cb = (unsigned char)b[i];
        if (ca >= 'A' && ca <= 'Z')
            ca = (unsigned char)(ca + 32);
        if (cb == '\0' || ca != cb)
            return cb == '\0' ? 1 : (int)ca - (int)cb;
    }
    return b[len] == '\0' ? 0 : -1;
}

int lk_password_is_common(const char *pw, size_t len)
{
    size_t lo = 0, hi = lk_common_passwords_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = s_lower_cmp(pw, len, lk_common_passwords[mid]);
        if (c == 0)
            return 1;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return 0;
}

/* ASCII-case-insensitive equality of pw (len bytes) and the first n bytes of s. */
static int s_same_ci(const char *pw, size_t len, const char *s, size_t n)
{
    if (len != n)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char a = (unsigned char)pw[i], b = (unsigned char)s[i];
        if (a >= 'A' && a <= 'Z')
            a = (unsigned char)(a + 32);
        if (b >= 'A' && b <= 'Z')
            b = (unsigned char)(b + 32);
        if (a != b)
            return 0;
    }
    return 1;
}

int lk_password_policy(const char *pw, size_t len, const char *email, const char **reason)
{
    const char *at = email ? strchr(email, '@') : NULL;
    if (email && (s_same_ci(pw, len, email, strlen(email)) ||
                  (at && s_same_ci(pw, len, email, (size_t)(at - email))))) {
        if (reason)
            *reason = "password must not be the email address or its local part";
        return LK_EINVAL;
    }
    if (lk_password_is_common(pw, len)) {
        if (reason)
            *reason = "password is too common: choose one that is not on lists of breached "
                      "passwords";
        return LK_EINVAL;
    }
    return 0;
}
