/* Unit tests of common/ratelimit.c: the gateway's per-client token bucket, its bounded
 * table, and the client address behind trusted proxies. */
#include "common/ratelimit.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <cmocka.h>

static lk_ratelimit_t *s_rl;

static int s_setup(void **state)
{
    (void)state;
    if (sodium_init() < 0)
        return -1;
    s_rl = malloc(sizeof *s_rl);
    if (!s_rl)
        return -1;
    lk_rl_init(s_rl);
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    free(s_rl);
    return 0;
}

static void s_ip(const char *s, uint8_t out[16])
{
    assert_int_equal(lk_ip_parse(s, strlen(s), out), 0);
}

/* A burst of exactly `burst` passes, the next waits 1000/rate ms; tokens come back at
 * `rate` per second, never beyond the burst. */
static void test_bucket(void **state)
{
    (void)state;
    uint8_t a[16], b[16];
    int64_t retry, now = 1000;
    lk_rl_init(s_rl);
    s_ip("192.0.2.1", a);
    s_ip("2001:db8::1", b);
    for (int i = 0; i < 60; i++)
        assert_int_equal(lk_rl_take(s_rl, a, now, 10, 60, &retry), 0);
    assert_int_equal(lk_rl_take(s_rl, a, now, 10, 60, &retry), LK_ELIMITED);
    assert_int_equal(retry, 100);
    /* another client is not affected */
    assert_int_equal(lk_rl_take(s_rl, b, now, 10, 60, &retry), 0);
    /* 99 ms: still nothing; 100 ms: one token */
    assert_int_equal(lk_rl_take(s_rl, a, now + 99, 10, 60, &retry), LK_ELIMITED);
    assert_int_equal(retry, 1);
    assert_int_equal(lk_rl_take(s_rl, a, now + 100, 10, 60, &retry), 0);
    assert_int_equal(lk_rl_take(s_rl, a, now + 100, 10, 60, &retry), LK_ELIMITED);
    /* a long pause refills to the burst, not beyond */
    now += 1000000;
    int ok = 0;
    while (lk_rl_take(s_rl, a, now, 10, 60, &retry) == 0)
        ok++;
    assert_int_equal(ok, 60);
    /* rate 0 disables */
    for (int i = 0; i < 1000; i++)
        assert_int_equal(lk_rl_take(s_rl, a, now, 0, 1, &retry), 0);
    /* a slow rate: retry rounds up */
    lk_rl_init(s_rl);
    assert_int_equal(lk_rl_take(s_rl, a, now, 1, 1, &retry), 0);
    assert_int_equal(lk_rl_take(s_rl, a, now, 1, 1, &retry), LK_ELIMITED);
    assert_int_equal(retry, 1000);
}

/* The table stays bounded: many more clients than slots never fail, the most recently
 * seen keep their state, and an evicted client comes back with a full bucket. */
static void test_table_bounded(void **state)
{
    (void)state;
    uint8_t a[16], hot[16];
    int64_t retry;
    lk_rl_init(s_rl);
    s_ip("198.51.100.7", hot);
    for (int i = 0; i < 3; i++)
        assert_int_equal(lk_rl_take(s_rl, hot, 1, 1, 3, &retry), 0);
    assert_int_equal(lk_rl_take(s_rl, hot, 1, 1, 3, &retry), LK_ELIMITED);
    for (uint32_t i = 0; i < 4 * LK_RL_SLOTS; i++) {
        memset(a, 0, sizeof a);
        a[0] = 0x20;
        memcpy(a + 12, &i, 4);
        assert_int_equal(lk_rl_take(s_rl, a, 2 + i / 1000, 1, 3, &retry), 0);
        if (i % 64 == 0) /* the hot client stays recent: it keeps its (empty) bucket */
            assert_int_equal(lk_rl_take(s_rl, hot, 2 + i / 1000, 1, 3, &retry), LK_ELIMITED);
    }
    size_t used = 0;
    for (size_t i = 0; i < LK_RL_SLOTS; i++)
        used += s_rl->slot[i].seen_ms != 0;
    assert_true(used <= LK_RL_SLOTS);
}

static void test_parse(void **state)
{
    (void)state;
    uint8_t a[16], want[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1};
    s_ip(" 10.0.0.1\t", a);
    assert_memory_equal(a, want, 16);
    s_ip("::ffff:10.0.0.1", a);
    assert_memory_equal(a, want, 16);
    assert_int_equal(lk_ip_parse("10.0.0.256", 10, a), LK_EINVAL);
    assert_int_equal(lk_ip_parse("", 0, a), LK_EINVAL);
    assert_int_equal(lk_ip_parse("unknown", 7, a), LK_EINVAL);
    assert_int_equal(lk_ip_parse("1.2.3.4:80", 10, a), LK_EINVAL);

    struct sockaddr_in sin = {.sin_family = AF_INET};
    sin.sin_addr.s_addr = htonl(0x0a000001);
    lk_ip_from_sockaddr(&sin, a);
    assert_memory_equal(a, want, 16);

    struct lk_ip_list l;
    assert_int_equal(lk_ip_list_parse("", &l), 0);
    assert_int_equal(l.n, 0);
    assert_int_equal(lk_ip_list_parse("10.0.0.1, ::1 ,", &l), 0);
    assert_int_equal(l.n, 2);
    assert_int_equal(lk_ip_list_parse("10.0.0.1,nope", &l), LK_EINVAL);
}

static void test_client_addr(void **state)
{
    (void)state;
    struct lk_ip_list t;
    uint8_t peer[16], out[16], want[16];
    assert_int_equal(lk_ip_list_parse("10.0.0.1,10.0.0.2", &t), 0);

    /* an untrusted peer: X-Forwarded-For is ignored */
    s_ip("203.0.113.9", peer);
    lk_client_addr(peer, "1.1.1.1", &t, out);
    assert_memory_equal(out, peer, 16);
    /* a trusted peer: the rightmost untrusted address; spoofed entries on the left lose */
    s_ip("10.0.0.1", peer);
    s_ip("198.51.100.4", want);
    lk_client_addr(peer, "6.6.6.6, 198.51.100.4", &t, out);
    assert_memory_equal(out, want, 16);
    lk_client_addr(peer, "6.6.6.6, 198.51.100.4, 10.0.0.2", &t, out);
    assert_memory_equal(out, want, 16);
    lk_client_addr(peer, "6.6.6.6, 198.51.100.4,, 10.0.0.2 ,", &t, out);
    assert_memory_equal(out, want, 16);
    /* absent or garbage: the proxy (or the last trusted hop) is the client */
    lk_client_addr(peer, NULL, &t, out);
    assert_memory_equal(out, peer, 16);
    lk_client_addr(peer, "", &t, out);
    assert_memory_equal(out, peer, 16);
    s_ip("10.0.0.2", want);
    lk_client_addr(peer, "junk, 10.0.0.2", &t, out);
    assert_memory_equal(out, want, 16);
    /* no trusted proxies at all */
    struct lk_ip_list none = {0};
    lk_client_addr(peer, "1.1.1.1", &none, out);
    assert_memory_equal(out, peer, 16);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bucket),
        cmocka_unit_test(test_table_bounded),
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_client_addr),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
