/* Unit tests of common/crypto.c. */
#include "common/crypto.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <cmocka.h>

#define OPS crypto_pwhash_OPSLIMIT_MIN
#define MEM crypto_pwhash_MEMLIMIT_MIN

static int s_setup(void **state)
{
    (void)state;
    return lk_crypto_init() == 0 ? 0 : -1;
}

static void s_hex(const uint8_t *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", p[i]);
}

static void test_init_twice(void **state)
{
    (void)state;
    assert_int_equal(lk_crypto_init(), 0);
}

static void test_token_format(void **state)
{
    (void)state;
    for (int i = 0; i < 200; i++) {
        char t[LK_TOKEN_LEN + 1];
        memset(t, 'x', sizeof t);
        assert_int_equal(lk_token_new(t), 0);
        assert_int_equal(strlen(t), LK_TOKEN_LEN);
        for (size_t j = 0; j < LK_TOKEN_LEN; j++)
            assert_true(s_is_b64url((unsigned char)t[j]));
        /* Its own hash must accept it. */
        uint8_t h[LK_TOKEN_HASH_LEN];
        assert_int_equal(lk_token_hash(t, strlen(t), h), 0);
        /* It decodes back to exactly 32 bytes. */
        unsigned char raw[64];
        size_t rawlen = 0;
        assert_int_equal(sodium_base642bin(raw, sizeof raw, t, LK_TOKEN_LEN, NULL, &rawlen, NULL,
                                           sodium_base64_VARIANT_URLSAFE_NO_PADDING),
                         0);
        assert_int_equal(rawlen, 32);
    }
}

static int s_cmp_tokens(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void test_token_unique(void **state)
{
    (void)state;
    enum { N = 1000 };
    static char toks[N][LK_TOKEN_LEN + 1];
    for (int i = 0; i < N; i++)
        assert_int_equal(lk_token_new(toks[i]), 0);
    qsort(toks, N, sizeof toks[0], s_cmp_tokens);
    for (int i = 1; i < N; i++)
        assert_string_not_equal(toks[i - 1], toks[i]);
}

static void test_token_hash_known(void **state)
{
    (void)state;
    /* Expectations from an independent BLAKE2b-256 (Python's hashlib.blake2b,
     * digest_size=32) over the 43 ASCII characters. */
    static const struct {
        const char *token, *hex;
    } cases[] = {
        {"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
         "6342b384e5d6294c5df1110132b93b97b395a2ff4cca498af637b3e06b3095dd"},
        {"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNO-_",
         "a35d0a4124600ee6a3dda9170ee2ff9942de165de9cf79aa54066dce362a397d"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t h[LK_TOKEN_HASH_LEN], ref[LK_TOKEN_HASH_LEN];
        char hex[2 * LK_TOKEN_HASH_LEN + 1];
        assert_int_equal(lk_token_hash(cases[i].token, LK_TOKEN_LEN, h), 0);
        s_hex(h, sizeof h, hex);
        assert_string_equal(hex, cases[i].hex);
        /* And what libsodium computes directly. */
        assert_int_equal(crypto_generichash(ref, sizeof ref, (const unsigned char *)cases[i].token,
                                            LK_TOKEN_LEN, NULL, 0),
                         0);
        assert_memory_equal(h, ref, sizeof h);
    }
    /* Not NUL-terminated input: only len bytes count. */
    char buf[LK_TOKEN_LEN + 5];
    memcpy(buf, cases[0].token, LK_TOKEN_LEN);
    memcpy(buf + LK_TOKEN_LEN, "????", 5);
    uint8_t h1[LK_TOKEN_HASH_LEN], h2[LK_TOKEN_HASH_LEN];
    assert_int_equal(lk_token_hash(buf, LK_TOKEN_LEN, h1), 0);
    assert_int_equal(lk_token_hash(cases[0].token, LK_TOKEN_LEN, h2), 0);
    assert_memory_equal(h1, h2, sizeof h1);
}

static void test_token_malformed(void **state)
{
    (void)state;
    char good[LK_TOKEN_LEN + 1];
    assert_int_equal(lk_token_new(good), 0);
    uint8_t h[LK_TOKEN_HASH_LEN];

    char buf[LK_TOKEN_LEN + 2];
    /* 42 and 44 characters (the 44th a valid character), and 0. */
    assert_int_equal(lk_token_hash(good, LK_TOKEN_LEN - 1, h), LK_EMALFORMED);
    memcpy(buf, good, LK_TOKEN_LEN);
    buf[LK_TOKEN_LEN] = 'A';
    assert_int_equal(lk_token_hash(buf, LK_TOKEN_LEN + 1, h), LK_EMALFORMED);
    assert_int_equal(lk_token_hash(good, 0, h), LK_EMALFORMED);
    assert_int_equal(lk_token_hash(NULL, LK_TOKEN_LEN, h), LK_EMALFORMED);

    /* One bad character at the start, the middle and the end. */
    static const char bad[] = {'+', '/', '=', '\0', ' ', '.', '\n', '~', (char)0xC3, (char)0x80};
    static const size_t pos[] = {0, LK_TOKEN_LEN / 2, LK_TOKEN_LEN - 1};
    for (size_t i = 0; i < sizeof bad; i++)
        for (size_t j = 0; j < sizeof pos / sizeof pos[0]; j++) {
            memcpy(buf, good, LK_TOKEN_LEN);
            buf[pos[j]] = bad[i];
            assert_int_equal(lk_token_hash(buf, LK_TOKEN_LEN, h), LK_EMALFORMED);
        }
    /* Standard-base64 padding form of a 42-char prefix. */
    memcpy(buf, good, LK_TOKEN_LEN - 1);
    buf[LK_TOKEN_LEN - 1] = '=';
    assert_int_equal(lk_token_hash(buf, LK_TOKEN_LEN, h), LK_EMALFORMED);
}

static void test_password_round_trip(void **state)
{
    (void)state;
    static const char pw[] = "correct horse battery staple \xc3\xa9";
    char stored[LK_PWHASH_MAX];
    assert_int_equal(lk_password_hash(pw, strlen(pw), OPS, MEM, stored), 0);
    assert_true(strncmp(stored, "$argon2id$", 10) == 0);
    assert_true(strnlen(stored, LK_PWHASH_MAX) < LK_PWHASH_MAX);
    assert_int_equal(lk_password_verify(stored, pw, strlen(pw)), 0);

    /* Wrong passwords: different, a prefix, one more byte, empty. */
    assert_int_equal(lk_password_verify(stored, "correct horse battery staple e", 30), LK_EINVAL);
    assert_int_equal(lk_password_verify(stored, pw, strlen(pw) - 1), LK_EINVAL);
    char longer[sizeof pw + 1];
    memcpy(longer, pw, sizeof pw);
    longer[sizeof pw - 1] = 'x';
    longer[sizeof pw] = '\0';
    assert_int_equal(lk_password_verify(stored, longer, strlen(longer)), LK_EINVAL);
    assert_int_equal(lk_password_verify(stored, "", 0), LK_EINVAL);

    /* Salted: the same password hashes differently, and both verify. */
    char stored2[LK_PWHASH_MAX];
    assert_int_equal(lk_password_hash(pw, strlen(pw), OPS, MEM, stored2), 0);
    assert_string_not_equal(stored, stored2);
    assert_int_equal(lk_password_verify(stored2, pw, strlen(pw)), 0);

    /* Passwords are bytes with a length: an embedded NUL counts. */
    static const char nul_pw[] = "abc\0def";
    assert_int_equal(lk_password_hash(nul_pw, 7, OPS, MEM, stored), 0);
    assert_int_equal(lk_password_verify(stored, nul_pw, 7), 0);
    assert_int_equal(lk_password_verify(stored, nul_pw, 3), LK_EINVAL);
}

static void test_password_cost_bounds(void **state)
{
    (void)state;
    char out[LK_PWHASH_MAX];
    assert_int_equal(lk_password_hash("password", 8, OPS - 1, MEM, out), LK_EINVAL);
    assert_int_equal(lk_password_hash("password", 8, OPS, MEM - 1, out), LK_EINVAL);
    assert_int_equal(
        lk_password_hash("password", 8, (uint64_t)crypto_pwhash_OPSLIMIT_MAX + 1, MEM, out),
        LK_EINVAL);
    assert_int_equal(
        lk_password_hash("password", 8, OPS, (size_t)crypto_pwhash_MEMLIMIT_MAX + 1, out),
        LK_EINVAL);
    assert_int_equal(lk_password_hash("password", 8, 0, 0, out), LK_EINVAL);
    /* (The LK_ECRYPTO path needs an allocation failure; asking for MEMLIMIT_MAX to get one
     * would abort under ASan or get the test OOM-killed on an overcommitting host.) */
}

static void test_password_garbage_stored(void **state)
{
    (void)state;
    char good[LK_PWHASH_MAX];
    assert_int_equal(lk_password_hash("password", 8, OPS, MEM, good), 0);
    static const char *const garbage[] = {
        "",
        "$",
        "$argon2id$",
        "$argon2id$v=19$",
        "$argon2id$v=19$m=8,t=1,p=1$",
        "$argon2id$v=19$m=8,t=1,p=1$c2FsdA$",
        "$argon2id$v=19$m=8,t=1,p=1$!!!!$@@@@",
        "$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
        "$2b$10$abcdefghijklmnopqrstuuJ1a2b3c4d5e6f7g8h9i0j1k2l3m4n5o",
        "plaintext password",
        "password",
    };
    for (size_t i = 0; i < sizeof garbage / sizeof garbage[0]; i++)
        assert_int_equal(lk_password_verify(garbage[i], "password", 8), LK_EINVAL);
    assert_int_equal(lk_password_verify(NULL, "password", 8), LK_EINVAL);

    /* The good hash with its tail cut off, and with its hash part altered. */
    char cut[LK_PWHASH_MAX];
    memcpy(cut, good, sizeof cut);
    cut[strlen(cut) - 5] = '\0';
    assert_int_equal(lk_password_verify(cut, "password", 8), LK_EINVAL);
    memcpy(cut, good, sizeof cut);
    size_t n = strlen(cut);
    cut[n - 2] = cut[n - 2] == 'A' ? 'B' : 'A';
    assert_int_equal(lk_password_verify(cut, "password", 8), LK_EINVAL);

    /* Not NUL-terminated within LK_PWHASH_MAX. */
    char unterminated[LK_PWHASH_MAX + 16];
    memset(unterminated, 'a', sizeof unterminated - 1);
    memcpy(unterminated, good, strlen(good));
    unterminated[sizeof unterminated - 1] = '\0';
    assert_int_equal(lk_password_verify(unterminated, "password", 8), LK_EINVAL);
}

static void test_wipe_equal(void **state)
{
    (void)state;
    uint8_t a[33], b[33];
    memset(a, 0xA5, sizeof a);
    memset(b, 0xA5, sizeof b);
    assert_int_equal(lk_equal(a, b, sizeof a), 1);
    b[32] ^= 1;
    assert_int_equal(lk_equal(a, b, sizeof a), 0);
    assert_int_equal(lk_equal(a, b, 32), 1);
    assert_int_equal(lk_equal(a, b, 0), 1);
    lk_wipe(a, sizeof a);
    for (size_t i = 0; i < sizeof a; i++)
        assert_int_equal(a[i], 0);
    lk_wipe(NULL, 10);
}


static void test_password_params_and_rehash(void **state)
{
    (void)state;
    char h[LK_PWHASH_MAX];
    size_t mem_min = crypto_pwhash_MEMLIMIT_MIN;
    assert_int_equal(lk_password_hash("a long password", 15, 1, mem_min, h), 0);
    uint64_t ops;
    size_t mem;
    uint32_t lanes;
    assert_int_equal(lk_password_params(h, &ops, &mem, &lanes), 0);
    assert_int_equal(ops, 1);
    assert_int_equal(mem, mem_min);
    assert_int_equal(lanes, 1);
    assert_int_equal(lk_password_needs_rehash(h, 1, mem_min), 0);
    assert_int_equal(lk_password_needs_rehash(h, 2, mem_min), 1);
    assert_int_equal(lk_password_needs_rehash(h, 1, mem_min * 2), 1);
    assert_int_equal(lk_password_needs_rehash("garbage", 1, mem_min), LK_EINVAL);
    /* The ceiling refuses before hashing; within it, verification proceeds. */
    assert_int_equal(lk_password_verify_capped(h, "a long password", 15, 1, mem_min), 0);
    assert_int_equal(lk_password_verify_capped(h, "wrong password!", 15, 1, mem_min), LK_EINVAL);
    assert_int_equal(lk_password_verify_capped(h, "a long password", 15, 1, mem_min - 1024), LK_ETOOBIG);
    assert_int_equal(lk_password_verify_capped(h, "a long password", 15, 0, mem_min), LK_ETOOBIG);
    /* A tampered row claiming 4 TiB and 2^32-1 passes is refused without any allocation. */
    const char *tampered = "$argon2id$v=19$m=4294967295,t=4294967295,p=1$c2FsdHNhbHRzYWx0$aGFzaA";
    assert_int_equal(lk_password_verify_capped(tampered, "x", 1, 10, (size_t)1 << 30), LK_ETOOBIG);
    const char *bad[] = {"$argon2id$v=19$m=,t=1,p=1$x$y", "$argon2id$v=19$m=99999999999,t=1,p=1$x$y",
                         "$argon2id$v=19$t=1,m=8,p=1$x$y", "$argon2i$v=19$m=8,t=1,p=1$x$y", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(lk_password_params(bad[i], &ops, &mem, &lanes), LK_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_twice),           cmocka_unit_test(test_token_format),
        cmocka_unit_test(test_token_unique),         cmocka_unit_test(test_token_hash_known),
        cmocka_unit_test(test_token_malformed),      cmocka_unit_test(test_password_round_trip),
        cmocka_unit_test(test_password_cost_bounds), cmocka_unit_test(test_password_garbage_stored),
        cmocka_unit_test(test_wipe_equal),
        cmocka_unit_test(test_password_params_and_rehash),
    };
    return cmocka_run_group_tests(tests, s_setup, NULL);
}
