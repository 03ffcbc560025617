/* Unit tests of common/check.c. */
#include "common/check.c"

#include <regex.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <cmocka.h>

#define S(lit) lit, sizeof(lit) - 1 /* a literal with its exact length, NULs included */

/* ---- emails ---- */

static void test_email_good(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        size_t len;
        const char *want;
    } cases[] = {
        {S("a@b.co"), "a@b.co"},
        {S("  A@B.CO  "), "a@b.co"},
        {S("\t\r\n\v\fUser.Name+Tag@Example.COM \n"), "user.name+tag@example.com"},
        {S("a@b.c"), "a@b.c"},
        {S("a.b@c.d.e"), "a.b@c.d.e"},
        {S("a@b..c"), "a@b..c"}, /* "b" "." ".c": the pattern allows it */
        {S("a@.b.c"), "a@.b.c"}, /* ".b" "." "c" */
        {S("a@b.c."), "a@b.c."}, /* "b" "." "c." */
        {S("\"q\"!#$%&'*/=?^`{|}~@x.y"), "\"q\"!#$%&'*/=?^`{|}~@x.y"},
        /* Unicode: bytes >= 0x80 kept as sent, uppercase non-ASCII included. */
        {S("\xc3\xa9l\xc3\xa8ve@\xc3\x89"
           "cole.fr"),
         "\xc3\xa9l\xc3\xa8ve@\xc3\x89"
         "cole.fr"},
        {S("\xc3\x80"
           "B@X.io"),
         "\xc3\x80"
         "b@x.io"},
        {S("\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90.\xe4\xb8\xad\xe5\x9b\xbd"),
         "\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90.\xe4\xb8\xad\xe5\x9b\xbd"},
        /* \s is ASCII white space only: U+00A0 is an ordinary byte pair here. */
        {S("a\xc2\xa0"
           "b@c.d"),
         "a\xc2\xa0"
         "b@c.d"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[LK_EMAIL_MAX + 1];
        int rc = lk_email_normalize(cases[i].in, cases[i].len, out);
        if (rc != 0)
            fail_msg("case %zu rejected", i);
        assert_string_equal(out, cases[i].want);
    }
}

static void test_email_bad(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        size_t len;
    } cases[] = {
        {S("")},          {S("   ")},     {S("a@b")},       {S("@b.c")},    {S("a@@b.c")},
        {S("a b@c.d")},   {S("a@b.c d")}, {S("a@b\t.c")},   {S("a@b.")},    {S("a@.b")},
        {S("a@.")},       {S("ab.c")},    {S("a@b.c@d.e")}, {S("a@")},      {S("@")},
        {S("ab")},        {S("a@b\0.c")}, {S("a@b.c\0")},   {S("\0a@b.c")}, {S("a\0@b.c")},
        {S("a@b.c\n\0")}, {S(".@.")},     {S("a@b\r\n.c")}, {S("a\v@b.c")}, {S("a@b.\fc")},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[LK_EMAIL_MAX + 1];
        memset(out, 'z', sizeof out);
        int rc = lk_email_normalize(cases[i].in, cases[i].len, out);
        if (rc != LK_EINVAL)
            fail_msg("case %zu accepted", i);
        assert_int_equal(out[0], '\0');
    }
    char out[LK_EMAIL_MAX + 1];
    assert_int_equal(lk_email_normalize(NULL, 5, out), LK_EINVAL);
}

static void test_email_length(void **state)
{
    (void)state;
    char in[300], out[LK_EMAIL_MAX + 1];
    /* local@domain.com with the local part sized to make the total n bytes. */
    for (size_t n = 250; n <= 256; n++) {
        size_t local = n - strlen("@example.com");
        memset(in, 'A', local);
        memcpy(in + local, "@example.com", strlen("@example.com"));
        int rc = lk_email_normalize(in, n, out);
        assert_int_equal(rc, n <= LK_EMAIL_MAX ? 0 : LK_EINVAL);
        if (rc == 0) {
            assert_int_equal(strlen(out), n);
            assert_int_equal(out[0], 'a');
        }
    }
    /* 254 bytes inside surrounding white space: the limit applies after trimming. */
    memcpy(in, " \t ", 3);
    memset(in + 3, 'b', 249);
    memcpy(in + 3 + 249, "@c.de", 5);
    memcpy(in + 3 + 254, "\n\r\n", 3);
    assert_int_equal(lk_email_normalize(in, 3 + 254 + 3, out), 0);
    assert_int_equal(strlen(out), 254);
    /* 255 bytes: rejected. */
    memset(in, 'c', 255 - 5);
    memcpy(in + 250, "@d.ef", 5);
    assert_int_equal(lk_email_normalize(in, 255, out), LK_EINVAL);
}

/* ---- passwords ---- */

static void test_password_lengths(void **state)
{
    (void)state;
    const char *why = "unset";
    char buf[2100];

    assert_int_equal(lk_password_check(S("abcdefg"), 8, 1024, &why), LK_EINVAL);
    assert_string_equal(why, "password is too short");
    assert_int_equal(lk_password_check(S("abcdefgh"), 8, 1024, &why), 0);
    assert_null(why);

    /* 8 x U+00E9 is 8 code points in 16 bytes: long enough. 7 is not. */
    assert_int_equal(lk_password_check(S("\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
                                         "\xc3\xa9"),
                                       8, 1024, &why),
                     0);
    assert_int_equal(
        lk_password_check(S("\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"), 8, 1024,
                          &why),
        LK_EINVAL);
    assert_string_equal(why, "password is too short");
    /* Two 4-byte emoji: 8 bytes, 2 code points. */
    assert_int_equal(lk_password_check(S("\xf0\x9f\x98\x80\xf0\x9f\x98\x80"), 8, 1024, &why),
                     LK_EINVAL);
    /* Empty. */
    assert_int_equal(lk_password_check("", 0, 8, 1024, &why), LK_EINVAL);
    assert_int_equal(lk_password_check(NULL, 0, 8, 1024, &why), LK_EINVAL);

    /* 1024 bytes pass, 1025 do not: in ASCII and in 2-byte characters. */
    memset(buf, 'a', sizeof buf);
    assert_int_equal(lk_password_check(buf, 1024, 8, 1024, &why), 0);
    assert_int_equal(lk_password_check(buf, 1025, 8, 1024, &why), LK_EINVAL);
    assert_string_equal(why, "password is too long");
    for (size_t i = 0; i + 1 < sizeof buf; i += 2)
        memcpy(buf + i, "\xc3\xa9", 2);
    assert_int_equal(lk_password_check(buf, 1024, 8, 1024, &why), 0);
    assert_int_equal(lk_password_check(buf, 1026, 8, 1024, &why), LK_EINVAL);
    assert_string_equal(why, "password is too long");

    /* reason may be NULL. */
    assert_int_equal(lk_password_check(S("short"), 8, 1024, NULL), LK_EINVAL);
    assert_int_equal(lk_password_check(S("long enough"), 8, 1024, NULL), 0);
}

static void test_password_utf8_boundaries(void **state)
{
    (void)state;
    /* The first and last code point of every sequence length and around the surrogates,
     * each padded to 8 code points with ASCII. */
    static const struct {
        const char *s;
        size_t len;
    } ok[] = {
        {S("\x7f")},
        {S("\xc2\x80")},
        {S("\xdf\xbf")},
        {S("\xe0\xa0\x80")},
        {S("\xed\x9f\xbf")},
        {S("\xee\x80\x80")},
        {S("\xef\xbf\xbf")},
        {S("\xf0\x90\x80\x80")},
        {S("\xf4\x8f\xbf\xbf")},
        {S("\xf3\xbf\xbf\xbf")},
        {S("\xe1\x80\x80")},
        {S("\xec\xbf\xbf")},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char buf[32];
        memcpy(buf, ok[i].s, ok[i].len);
        memcpy(buf + ok[i].len, "1234567", 7);
        const char *why;
        if (lk_password_check(buf, ok[i].len + 7, 8, 1024, &why) != 0)
            fail_msg("boundary case %zu rejected", i);
        /* One code point fewer is too short: each sequence counts as one. */
        assert_int_equal(lk_password_check(buf, ok[i].len + 6, 8, 1024, &why), LK_EINVAL);
    }
}

static void test_password_invalid_utf8(void **state)
{
    (void)state;
    static const struct {
        const char *what, *s;
        size_t len;
    } bad[] = {
        {"lone continuation 80", S("\x80")},
        {"lone continuation bf", S("\xbf")},
        {"overlong C0", S("\xc0\xaf")},
        {"overlong C1", S("\xc1\xbf")},
        {"overlong E0 80", S("\xe0\x80\xaf")},
        {"overlong E0 9f", S("\xe0\x9f\xbf")},
        {"overlong F0 80", S("\xf0\x80\x80\xaf")},
        {"overlong F0 8f", S("\xf0\x8f\xbf\xbf")},
        {"overlong NUL", S("\xc0\x80")},
        {"surrogate D800", S("\xed\xa0\x80")},
        {"surrogate DFFF", S("\xed\xbf\xbf")},
        {"surrogate pair", S("\xed\xa0\xbd\xed\xb8\x80")},
        {"beyond 10FFFF F4 90", S("\xf4\x90\x80\x80")},
        {"F5 lead", S("\xf5\x80\x80\x80")},
        {"F8 lead", S("\xf8\x88\x80\x80\x80")},
        {"FC lead", S("\xfc\x84\x80\x80\x80\x80")},
        {"FE", S("\xfe")},
        {"FF", S("\xff")},
        {"truncated 2 at end", S("\xc3")},
        {"truncated 3 at end", S("\xe2\x82")},
        {"truncated 4 at end", S("\xf0\x9f\x98")},
        {"truncated 2 then ASCII", S("\xc3"
                                     "A")},
        {"truncated 3 then ASCII", S("\xe2\x82"
                                     "A")},
        {"truncated 4 then lead", S("\xf0\x9f\x98\xf0\x9f\x98\x80")},
        {"bad third byte", S("\xe2\x82\x41")},
        {"NUL", S("\0")},
        {"NUL inside", S("abcd\0efgh")},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        /* Alone, and in the middle of an otherwise fine long password. */
        char buf[64];
        memcpy(buf, "abcdefghij", 10);
        memcpy(buf + 10, bad[i].s, bad[i].len);
        memcpy(buf + 10 + bad[i].len, "klmnop", 6);
        const char *why = NULL;
        if (lk_password_check(bad[i].s, bad[i].len, 1, 1024, &why) != LK_EMALFORMED)
            fail_msg("accepted alone: %s", bad[i].what);
        assert_non_null(why);
        if (lk_password_check(buf, bad[i].len + 16, 8, 1024, &why) != LK_EMALFORMED)
            fail_msg("accepted inside: %s", bad[i].what);
    }
}

/* ---- hostile input ---- */

static uint64_t s_rng = 0x9E3779B97F4A7C15ull; /* fixed seed: failures reproduce */

static uint32_t s_rand(void)
{
    /* xorshift64* */
    s_rng ^= s_rng >> 12;
    s_rng ^= s_rng << 25;
    s_rng ^= s_rng >> 27;
    return (uint32_t)((s_rng * 0x2545F4914F6CDD1Dull) >> 32);
}

/* An independent oracle: decode to a scalar value, then check its range. */
static int s_ref_utf8(const unsigned char *p, size_t len, size_t *cp)
{
    static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
    size_t i = 0, n = 0;
    while (i < len) {
        unsigned c = p[i];
        uint32_t v;
        size_t k;
        if (c == 0)
            return -1;
        if (c < 0x80) {
            i++;
            n++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            k = 2, v = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            k = 3, v = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            k = 4, v = c & 0x07;
        } else {
            return -1;
        }
        if (len - i < k)
            return -1;
        for (size_t j = 1; j < k; j++) {
            if ((p[i + j] & 0xC0) != 0x80)
                return -1;
            v = v << 6 | (p[i + j] & 0x3F);
        }
        if (v < min[k] || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
            return -1;
        i += k;
        n++;
    }
    *cp = n;
    return 0;
}

static void test_hostile_random(void **state)
{
    (void)state;
    /* The oracle for emails is api.md's regex itself, run by POSIX regex in the C locale
     * where [[:space:]] is exactly the six ASCII white space bytes. */
    regex_t re;
    assert_int_equal(
        regcomp(&re, "^[^[:space:]@]+@[^[:space:]@]+\\.[^[:space:]@]+$", REG_EXTENDED | REG_NOSUB),
        0);
    static const unsigned char alphabet[] = {'a',  'Z',  '.',  '@',  ' ',  '\t', '\n', '\0', 0xC3,
                                             0xA9, 0x80, 0xF0, 0x9F, 0xED, 0xA0, 0xF4, 0xFF, '.'};
    unsigned char in[600];
    size_t accepted_email = 0, accepted_pw = 0;
    for (int iter = 0; iter < 200000; iter++) {
        size_t len = s_rand() % 8 == 0 ? 240 + s_rand() % 30 : s_rand() % 24;
        int mode = s_rand() % 4;
        if (mode == 3) {
            /* Well-formed UTF-8 from every sequence length, then maybe one byte flipped:
             * mostly valid passwords, and invalid ones that are one byte from valid. */
            static const char *const seqs[] = {"a",
                                               "Z",
                                               "~",
                                               "\xc3\xa9",
                                               "\xdf\xbf",
                                               "\xe2\x82\xac",
                                               "\xed\x9f\xbf",
                                               "\xef\xbf\xbd",
                                               "\xf0\x9f\x98\x80",
                                               "\xf4\x8f\xbf\xbf"};
            size_t o = 0;
            while (o + 4 < len) {
                const char *q = seqs[s_rand() % (sizeof seqs / sizeof seqs[0])];
                size_t ql = strlen(q);
                memcpy(in + o, q, ql);
                o += ql;
            }
            len = o;
            if (len > 0 && s_rand() % 4 == 0)
                in[s_rand() % len] = (unsigned char)s_rand();
        }
        for (size_t i = 0; mode != 3 && i < len; i++) {
            if (mode == 0)
                in[i] = (unsigned char)s_rand();
            else
                in[i] = alphabet[s_rand() % sizeof alphabet];
        }
        /* Make some of them plausible so the accept paths get exercised. */
        if (mode == 2 && len > 6) {
            in[len / 2] = '@';
            in[len - 3] = '.';
        }

        char out[LK_EMAIL_MAX + 1];
        int rc = lk_email_normalize((const char *)in, len, out);
        assert_true(rc == 0 || rc == LK_EINVAL);

        /* Oracle: trim, bound, no NUL, lowercase, regex. */
        size_t b = 0, e = len;
        while (b < e && s_is_space(in[b]))
            b++;
        while (e > b && s_is_space(in[e - 1]))
            e--;
        int want = 0;
        char norm[600];
        if (e - b >= 3 && e - b <= LK_EMAIL_MAX && memchr(in + b, '\0', e - b) == NULL) {
            for (size_t i = b; i < e; i++)
                norm[i - b] = (char)(in[i] >= 'A' && in[i] <= 'Z' ? in[i] + 32 : in[i]);
            norm[e - b] = '\0';
            want = regexec(&re, norm, 0, NULL, 0) == 0;
        }
        if (want != (rc == 0))
            fail_msg("iteration %d: normalize says %d, regex says %d", iter, rc, want);
        if (rc == 0) {
            accepted_email++;
            assert_string_equal(out, norm);
        }

        const char *why;
        size_t cp = 0;
        int prc = lk_password_check((const char *)in, len, 8, 200, &why);
        int valid = s_ref_utf8(in, len, &cp) == 0;
        if (!valid) {
            assert_int_equal(prc, LK_EMALFORMED);
        } else if (len > 200 || cp < 8) {
            assert_int_equal(prc, LK_EINVAL);
        } else {
            assert_int_equal(prc, 0);
            accepted_pw++;
        }
    }
    regfree(&re);
    /* The loop is only worth something if both paths were taken. */
    assert_true(accepted_email > 100);
    assert_true(accepted_pw > 100);
}

/* Every 1-, 2-, 3-byte input and a sample of 4-byte ones against the oracle: the decoder's
 * table is small enough to check exhaustively at the lengths where its edges live. */
static void test_utf8_exhaustive(void **state)
{
    (void)state;
    unsigned char b[4];
    for (uint32_t x = 0; x < (1u << 24); x++) {
        b[0] = (unsigned char)(x >> 16);
        b[1] = (unsigned char)(x >> 8);
        b[2] = (unsigned char)x;
        for (size_t len = 1; len <= 3; len++) {
            if (len < 3 && (x & ((1u << (8 * (3 - len))) - 1)) != 0)
                continue; /* shorter lengths: only once per prefix */
            size_t cp;
            int want = s_ref_utf8(b, len, &cp) == 0;
            int got = lk_password_check((const char *)b, len, 0, 16, NULL) == 0;
            if (want != got)
                fail_msg("bytes %02x %02x %02x len %zu: got %d want %d", b[0], b[1], b[2], len, got,
                         want);
        }
    }
    for (uint32_t lead = 0xF0; lead <= 0xFF; lead++)
        for (uint32_t x = 0; x < (1u << 16); x++) {
            b[0] = (unsigned char)lead;
            b[1] = (unsigned char)(x >> 8);
            b[2] = (unsigned char)x;
            b[3] = (unsigned char)(0x80 + (x * 7) % 0x50);
            size_t cp;
            int want = s_ref_utf8(b, 4, &cp) == 0;
            int got = lk_password_check((const char *)b, 4, 0, 16, NULL) == 0;
            if (want != got)
                fail_msg("bytes %02x %02x %02x %02x: got %d want %d", b[0], b[1], b[2], b[3], got,
                         want);
        }
}


/* NFKC: composed and decomposed forms, and compatibility forms, normalize alike. */
static void test_password_nfkc(void **state)
{
    (void)state;
    char a[64], b[64];
    size_t la = 0, lb = 0;
    assert_int_equal(lk_password_nfkc("caf\xc3\xa9 au lait", 13, a, sizeof a, &la), 0);
    assert_int_equal(lk_password_nfkc("cafe\xcc\x81 au lait", 14, b, sizeof b, &lb), 0);
    assert_int_equal(la, lb);
    assert_memory_equal(a, b, la);
    assert_string_equal(a, "caf\xc3\xa9 au lait");
    /* U+FB01 LATIN SMALL LIGATURE FI and fullwidth digits are compatibility forms. */
    assert_int_equal(lk_password_nfkc("\xef\xac\x81x\xef\xbc\x91", 7, a, sizeof a, &la), 0);
    assert_string_equal(a, "fix1");
    /* A result that does not fit is refused, never truncated. */
    assert_int_equal(lk_password_nfkc("abcdef", 6, a, 6, &la), LK_ETOOBIG);
    assert_int_equal(lk_password_nfkc("abcdef", 6, a, 7, &la), 0);
    assert_int_equal(la, 6);
    /* Long input: kept whole (no 72-byte bcrypt-style truncation anywhere). */
    char big[1025], out[1100];
    memset(big, 'x', 1024);
    big[1024] = '\0';
    assert_int_equal(lk_password_nfkc(big, 1024, out, sizeof out, &la), 0);
    assert_int_equal(la, 1024);
}

static void test_password_common(void **state)
{
    (void)state;
    assert_true(lk_common_passwords_count >= 10000);
    assert_int_equal(lk_password_is_common("password", 8), 1);
    assert_int_equal(lk_password_is_common("PassWord", 8), 1);
    assert_int_equal(lk_password_is_common("12345678", 8), 1);
    assert_int_equal(lk_password_is_common("password1x", 9), 1); /* "password1" prefix */
    assert_int_equal(lk_password_is_common("password1x", 10), 0);
    assert_int_equal(lk_password_is_common("correct horse battery staple", 28), 0);
    /* Every entry of the list is found (the binary search agrees with the array order). */
    for (size_t i = 0; i < lk_common_passwords_count; i++)
        assert_int_equal(lk_password_is_common(lk_common_passwords[i],
                                               strlen(lk_common_passwords[i])), 1);
    for (size_t i = 1; i < lk_common_passwords_count; i++)
        assert_true(strcmp(lk_common_passwords[i - 1], lk_common_passwords[i]) < 0);
}

static void test_password_policy(void **state)
{
    (void)state;
    const char *reason = NULL;
    const char *email = "alice.smith@example.com";
    assert_int_equal(lk_password_policy("alice.smith@example.com", 23, email, &reason), LK_EINVAL);
    assert_non_null(reason);
    reason = NULL;
    assert_int_equal(lk_password_policy("ALICE.SMITH", 11, email, &reason), LK_EINVAL);
    assert_non_null(strstr(reason, "email"));
    assert_int_equal(lk_password_policy("iloveyou", 8, email, &reason), LK_EINVAL);
    assert_non_null(strstr(reason, "common"));
    reason = NULL;
    assert_int_equal(lk_password_policy("alice.smith!", 12, email, &reason), 0);
    assert_int_equal(lk_password_policy("correct horse battery", 21, email, &reason), 0);
    assert_int_equal(lk_password_policy("correct horse battery", 21, NULL, &reason), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_email_good),
        cmocka_unit_test(test_email_bad),
        cmocka_unit_test(test_email_length),
        cmocka_unit_test(test_password_lengths),
        cmocka_unit_test(test_password_utf8_boundaries),
        cmocka_unit_test(test_password_invalid_utf8),
        cmocka_unit_test(test_hostile_random),
        cmocka_unit_test(test_utf8_exhaustive),
        cmocka_unit_test(test_password_nfkc),
        cmocka_unit_test(test_password_common),
        cmocka_unit_test(test_password_policy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
