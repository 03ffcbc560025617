/* Unit tests of common/worker.c: the backend endpoint of each gateway, the gateway index,
 * the reconnect jitter, and the answers the worker loop gives without a handler. */
#include "common/worker.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static struct lk_config s_with(const char *backend, int count)
{
    struct lk_config c;
    memset(&c, 0, sizeof c);
    snprintf(c.gateway.backend, sizeof c.gateway.backend, "%s", backend);
    c.gateway.count = count;
    return c;
}

static void s_expect(const char *backend, int count, int index, int connect, const char *want)
{
    struct lk_config c = s_with(backend, count);
    char out[LK_ENDPOINT_MAX];
    int rc = lk_gateway_backend(&c, index, connect, out, sizeof out);
    if (!want) {
        assert_int_equal(rc, LK_EINVAL);
        return;
    }
    assert_int_equal(rc, 0);
    assert_string_equal(out, want);
}

static void test_backend_tcp(void **state)
{
    (void)state;
    s_expect("tcp://10.0.0.5:7000", 1, 0, 0, "tcp://10.0.0.5:7000");
    s_expect("tcp://10.0.0.5:7000", 3, 1, 0, "tcp://10.0.0.5:7001");
    s_expect("tcp://10.0.0.5:7000", 3, 2, 1, "tcp://10.0.0.5:7002");
    s_expect("tcp://[::1]:7000", 2, 1, 0, "tcp://[::1]:7001");
    /* a gateway binds the wildcard; a local worker connects to loopback */
    s_expect("tcp://*:7000", 2, 1, 0, "tcp://*:7001");
    s_expect("tcp://*:7000", 2, 1, 1, "tcp://127.0.0.1:7001");
    s_expect("tcp://0.0.0.0:7000", 2, 0, 1, "tcp://127.0.0.1:7000");
    s_expect("tcp://host.example:65534", 2, 1, 0, "tcp://host.example:65535");
    s_expect("tcp://host.example:65535", 2, 1, 0, NULL); /* past the last port */
    s_expect("tcp://host.example", 1, 0, 0, NULL);       /* no port */
    s_expect("tcp://host.example:70x", 1, 0, 0, NULL);
    s_expect("tcp://host.example:", 1, 0, 0, NULL);
}

static void test_backend_ipc(void **state)
{
    (void)state;
    s_expect("ipc:///var/lk/run/backend.ipc", 1, 0, 0, "ipc:///var/lk/run/backend.ipc");
    s_expect("ipc:///var/lk/run/backend.ipc", 4, 0, 1, "ipc:///var/lk/run/backend.ipc");
    s_expect("ipc:///var/lk/run/backend.ipc", 4, 3, 0, "ipc:///var/lk/run/backend-3.ipc");
    s_expect("ipc:///var/lk/run/backend", 4, 2, 0, "ipc:///var/lk/run/backend-2");
    s_expect("ipc://x.ipc", 2, 1, 0, "ipc://x-1.ipc");
    s_expect("ipc://.ipc", 2, 1, 0, "ipc://.ipc-1"); /* no name before ".ipc": appended */
    /* other transports: one gateway only */
    s_expect("inproc://lk", 1, 0, 0, "inproc://lk");
    s_expect("inproc://lk", 2, 1, 0, NULL);
}

static void test_backend_bounds(void **state)
{
    (void)state;
    struct lk_config c = s_with("tcp://h:7000", 2);
    char out[LK_ENDPOINT_MAX], tiny[8];
    assert_int_equal(lk_gateway_backend(&c, -1, 0, out, sizeof out), LK_EINVAL);
    assert_int_equal(lk_gateway_backend(&c, 2, 0, out, sizeof out), LK_EINVAL);
    assert_int_equal(lk_gateway_backend(&c, 1, 0, tiny, sizeof tiny), LK_EINVAL);
    c = s_with("ipc:///a/very/long/name.ipc", 2);
    assert_int_equal(lk_gateway_backend(&c, 1, 0, tiny, sizeof tiny), LK_EINVAL);
}

static void test_index(void **state)
{
    (void)state;
    struct lk_config c = s_with("tcp://h:7000", 3);
    unsetenv("LATCHKEY_GATEWAY_INDEX");
    assert_int_equal(lk_gateway_index(&c), 0);
    setenv("LATCHKEY_GATEWAY_INDEX", "2", 1);
    assert_int_equal(lk_gateway_index(&c), 2);
    static const char *const bad[] = {"3", "-1", "", "1x", "x", "99999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        setenv("LATCHKEY_GATEWAY_INDEX", bad[i], 1);
        assert_int_equal(lk_gateway_index(&c), -1);
    }
    unsetenv("LATCHKEY_GATEWAY_INDEX");
}

static void test_jitter(void **state)
{
    (void)state;
    for (int i = 0; i < 10000; i++) {
        int64_t j = s_jitter(4000);
        assert_true(j > 2000 && j <= 4000);
    }
    assert_int_equal(s_jitter(1), 1);
    assert_int_equal(s_jitter(0), 0);
}

/* The loop's own answers: the reply type of the request, its job id, the error. */
static void test_job_answer(void **state)
{
    (void)state;
    struct lk_msg req, reply;
    static const struct {
        enum lk_msg_type in, out;
    } pairs[] = {{MSG_GW_SIGNUP_REQUEST, MSG_SU_SIGNUP_REPLY},
                 {MSG_GW_SIGNIN_REQUEST, MSG_SI_SIGNIN_REPLY},
                 {MSG_GW_SIGNOUT_REQUEST, MSG_SI_SIGNOUT_REPLY}};
    for (size_t i = 0; i < 3; i++) {
        memset(&req, 0, sizeof req);
        memset(&reply, 0, sizeof reply);
        req.type = pairs[i].in;
        req.u.gw_signup_request.job = 77 + i; /* job is the first field of every request */
        req.u.gw_signin_request.job = 77 + i;
        req.u.gw_signout_request.job = 77 + i;
        s_job_answer(&req, &reply, 503, "unavailable", "the service is temporarily unavailable");
        assert_int_equal(reply.type, pairs[i].out);
        uint8_t buf[LK_MSG_MAX];
        size_t len;
        assert_int_equal(lk_msg_encode(&reply, buf, sizeof buf, &len), 0);
        struct lk_msg back;
        assert_int_equal(lk_msg_decode(buf, len, &back), 0);
        if (i == 0) {
            assert_int_equal(back.u.su_signup_reply.job, 77);
            assert_int_equal(back.u.su_signup_reply.status, 503);
            assert_string_equal(back.u.su_signup_reply.error, "unavailable");
        } else if (i == 1) {
            assert_int_equal(back.u.si_signin_reply.job, 78);
            assert_int_equal(back.u.si_signin_reply.status, 503);
            assert_string_equal(back.u.si_signin_reply.token, "");
        } else {
            assert_int_equal(back.u.si_signout_reply.job, 79);
            assert_string_equal(back.u.si_signout_reply.message,
                                "the service is temporarily unavailable");
        }
    }
}

/* Without LATCHKEY_SUPERVISOR_STATUS there is nobody to report to, and reporting to
 * nobody is fine. */
static void test_status_absent(void **state)
{
    (void)state;
    unsetenv("LATCHKEY_SUPERVISOR_STATUS");
    void *ctx = zmq_ctx_new();
    lk_status_t *st = lk_status_new(ctx);
    assert_null(st);
    lk_status_report(st, 1, 1);
    lk_status_destroy(&st);
    setenv("LATCHKEY_SUPERVISOR_STATUS", "ipc:///nonexistent-dir-lk/status.ipc", 1);
    st = lk_status_new(ctx); /* connects lazily: a missing peer is no error */
    assert_non_null(st);
    for (int i = 0; i < 100; i++)
        lk_status_report(st, (uint64_t)i, 0); /* never blocks */
    lk_status_destroy(&st);
    assert_null(st);
    unsetenv("LATCHKEY_SUPERVISOR_STATUS");
    zmq_ctx_term(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backend_tcp),   cmocka_unit_test(test_backend_ipc),
        cmocka_unit_test(test_backend_bounds), cmocka_unit_test(test_index),
        cmocka_unit_test(test_jitter),         cmocka_unit_test(test_job_answer),
        cmocka_unit_test(test_status_absent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
