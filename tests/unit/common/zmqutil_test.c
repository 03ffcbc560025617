/* Unit tests of common/zmqutil.c over real libzmq sockets: inproc:// for framing rules,
 * ipc:// (under a mkdtemp directory) where the transport matters (ZMQ_MAXMSGSIZE is only
 * enforced by the stream engines, not by inproc). */
#include "common/zmqutil.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

struct s_pair {
    void *ctx;
    void *router;
    void *dealer;
};

static void *s_socket(void *ctx, int type)
{
    void *sock = zmq_socket(ctx, type);
    assert_non_null(sock);
    assert_int_equal(lk_zmq_set_defaults(sock), 0);
    return sock;
}

/* A ROUTER bound to endpoint and a DEALER connected to it, the DEALER named id (NULL:
 * the ROUTER makes one up). */
static void s_pair_open(struct s_pair *p, const char *endpoint, const char *id)
{
    p->ctx = zmq_ctx_new();
    assert_non_null(p->ctx);
    p->router = s_socket(p->ctx, ZMQ_ROUTER);
    assert_int_equal(zmq_bind(p->router, endpoint), 0);
    p->dealer = s_socket(p->ctx, ZMQ_DEALER);
    if (id)
        assert_int_equal(zmq_setsockopt(p->dealer, ZMQ_ROUTING_ID, id, strlen(id)), 0);
    assert_int_equal(zmq_connect(p->dealer, endpoint), 0);
}

static void s_pair_close(struct s_pair *p)
{
    assert_int_equal(zmq_close(p->dealer), 0);
    assert_int_equal(zmq_close(p->router), 0);
    assert_int_equal(zmq_ctx_term(p->ctx), 0);
}

/* Waits up to ms for sock to have input. */
static int s_readable(void *sock, long ms)
{
    zmq_pollitem_t item = {sock, 0, ZMQ_POLLIN, 0};
    int rc = zmq_poll(&item, 1, ms);
    assert_true(rc >= 0);
    return rc;
}

static void s_msg(struct lk_msg *m, uint32_t pid)
{
    memset(m, 0, sizeof *m);
    m->type = MSG_WK_READY;
    strcpy(m->u.wk_ready.role, "signin");
    m->u.wk_ready.version = LK_PROTO_VERSION;
    m->u.wk_ready.pid = pid;
}

/* Sends frames given as (data, len) pairs, the last without ZMQ_SNDMORE. */
static void s_send_frames(void *sock, int n, ...)
{
    va_list ap;
    va_start(ap, n);
    for (int i = 0; i < n; i++) {
        const void *data = va_arg(ap, const void *);
        size_t len = va_arg(ap, size_t);
        assert_true(zmq_send(sock, data, len, i + 1 < n ? ZMQ_SNDMORE : 0) >= 0);
    }
    va_end(ap);
}

static void test_set_defaults(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    int types[] = {ZMQ_ROUTER, ZMQ_DEALER, ZMQ_PUSH, ZMQ_PULL, ZMQ_REQ, ZMQ_REP};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        void *sock = s_socket(ctx, types[i]);
        int v;
        int64_t max;
        size_t len = sizeof v;
        assert_int_equal(zmq_getsockopt(sock, ZMQ_LINGER, &v, &len), 0);
        assert_int_equal(v, 0);
        len = sizeof v;
        assert_int_equal(zmq_getsockopt(sock, ZMQ_SNDHWM, &v, &len), 0);
        assert_int_equal(v, 10000);
        len = sizeof v;
        assert_int_equal(zmq_getsockopt(sock, ZMQ_RCVHWM, &v, &len), 0);
        assert_int_equal(v, 10000);
        len = sizeof max;
        assert_int_equal(zmq_getsockopt(sock, ZMQ_MAXMSGSIZE, &max, &len), 0);
        assert_int_equal(max, LK_MSG_MAX);
        assert_int_equal(zmq_close(sock), 0);
    }
    assert_int_equal(zmq_ctx_term(ctx), 0);
}

static void test_round_trip(void **state)
{
    (void)state;
    for (int named = 0; named < 2; named++) {
        struct s_pair p;
        struct lk_msg m, out;
        uint8_t id[256];
        size_t idlen = sizeof id;
        s_pair_open(&p, "inproc://rt", named ? "worker-1" : NULL);

        s_msg(&m, 4242);
        assert_int_equal(lk_zmq_send_msg(p.dealer, NULL, 0, &m, 0), 0);
        assert_int_equal(lk_zmq_recv_msg(p.router, id, &idlen, &out, 0), 0);
        assert_memory_equal(&out, &m, sizeof m);
        if (named) {
            assert_int_equal(idlen, 8);
            assert_memory_equal(id, "worker-1", 8);
        } else {
            assert_true(idlen > 0 && idlen <= 255); /* libzmq's generated id */
        }

        struct lk_msg reply;
        memset(&reply, 0, sizeof reply);
        reply.type = MSG_GW_HEARTBEAT;
        reply.u.gw_heartbeat.now_ms = 1700000000000LL;
        assert_int_equal(lk_zmq_send_msg(p.router, id, idlen, &reply, ZMQ_DONTWAIT), 0);
        assert_int_equal(lk_zmq_recv_msg(p.dealer, NULL, NULL, &out, 0), 0);
        assert_memory_equal(&out, &reply, sizeof reply);

        /* Nothing more queued: -EAGAIN, *out zeroed. */
        size_t n = sizeof id;
        assert_int_equal(lk_zmq_recv_msg(p.router, id, &n, &out, ZMQ_DONTWAIT), -EAGAIN);
        assert_int_equal(lk_zmq_recv_msg(p.dealer, NULL, NULL, &out, ZMQ_DONTWAIT), -EAGAIN);
        assert_int_equal(out.type, 0);
        s_pair_close(&p);
    }
}

static void test_extra_frames(void **state)
{
    (void)state;
    struct s_pair p;
    struct lk_msg m, out;
    uint8_t buf[LK_MSG_MAX], id[256];
    size_t len, idlen;
    s_pair_open(&p, "inproc://extra", "w");
    s_msg(&m, 7);
    assert_int_equal(lk_msg_encode(&m, buf, sizeof buf, &len), 0);

    /* DEALER -> ROUTER: two and three payload frames. Each is consumed whole: the valid
     * message behind it is received intact. */
    for (int frames = 2; frames <= 3; frames++) {
        if (frames == 2)
            s_send_frames(p.dealer, 2, buf, len, "junk", (size_t)4);
        else
            s_send_frames(p.dealer, 3, buf, len, buf, len, "", (size_t)0);
        idlen = sizeof id;
        memset(&out, 0xa5, sizeof out);
        assert_int_equal(lk_zmq_recv_msg(p.router, id, &idlen, &out, 0), LK_EMALFORMED);
        assert_int_equal(out.type, 0);
        assert_int_equal(lk_zmq_send_msg(p.dealer, NULL, 0, &m, 0), 0);
        idlen = sizeof id;
        assert_int_equal(lk_zmq_recv_msg(p.router, id, &idlen, &out, 0), 0);
        assert_memory_equal(&out, &m, sizeof m);
    }

    /* ROUTER -> DEALER: an extra frame after the payload. */
    assert_int_equal(lk_zmq_send_msg(p.router, (const uint8_t *)"w", 1, &m, 0), 0);
    s_send_frames(p.router, 3, "w", (size_t)1, buf, len, "x", (size_t)1);
    assert_int_equal(lk_zmq_send_msg(p.router, (const uint8_t *)"w", 1, &m, 0), 0);
    assert_int_equal(lk_zmq_recv_msg(p.dealer, NULL, NULL, &out, 0), 0);
    assert_int_equal(lk_zmq_recv_msg(p.dealer, NULL, NULL, &out, 0), LK_EMALFORMED);
    assert_int_equal(lk_zmq_recv_msg(p.dealer, NULL, NULL, &out, 0), 0);
    assert_memory_equal(&out, &m, sizeof m);

    /* Payloads that are one frame but not a message: empty, junk, wrong version,
     * larger than LK_MSG_MAX (inproc bypasses ZMQ_MAXMSGSIZE). */
    static const uint8_t v2[] = {0x94, LK_PROTO_VERSION + 1, 0x02, 0x01, 0x01};
    uint8_t *big = calloc(1, LK_MSG_MAX + 1);
    assert_non_null(big);
    memcpy(big, buf, len); /* a valid message followed by zeros */
    s_send_frames(p.dealer, 1, "", (size_t)0);
    s_send_frames(p.dealer, 1, "\xc1\xc1", (size_t)2);
    s_send_frames(p.dealer, 1, v2, sizeof v2);
    s_send_frames(p.dealer, 1, big, (size_t)LK_MSG_MAX + 1);
    static const int want[] = {LK_EMALFORMED, LK_EMALFORMED, LK_EVERSION, LK_EMALFORMED};
    for (size_t i = 0; i < 4; i++) {
        idlen = sizeof id;
        assert_int_equal(lk_zmq_recv_msg(p.router, id, &idlen, &out, 0), want[i]);
    }
    free(big);
    s_pair_close(&p);

    /* A routing id longer than the caller's buffer: refused, the message drained. */
    s_pair_open(&p, "inproc://longid", "a-routing-id-of-32-bytes-exactly");
    assert_int_equal(lk_zmq_send_msg(p.dealer, NULL, 0, &m, 0), 0);
    assert_int_equal(lk_zmq_send_msg(p.dealer, NULL, 0, &m, 0), 0);
    idlen = 31;
    assert_int_equal(lk_zmq_recv_msg(p.router, id, &idlen, &out, 0), LK_EMALFORMED);
    assert_int_equal(idlen, 0);
    idlen = 32;
    assert_int_equal(lk_zmq_recv_msg(p.router, id, &idlen, &out, 0), 0);
    assert_int_equal(idlen, 32);
    assert_memory_equal(&out, &m, sizeof m);
    s_pair_close(&p);
}

static void test_send_errors(void **state)
{
    (void)state;
    struct s_pair p;
    struct lk_msg m, out;
    s_pair_open(&p, "inproc://senderr", "w");

    /* An unencodable message sends nothing, not even the id frame. */
    memset(&m, 0, sizeof m);
    assert_int_equal(lk_zmq_send_msg(p.router, (const uint8_t *)"w", 1, &m, 0), LK_EMALFORMED);
    m.type = MSG_WK_READY;
    memset(m.u.wk_ready.role, 'r', sizeof m.u.wk_ready.role); /* no NUL */
    assert_int_equal(lk_zmq_send_msg(p.dealer, NULL, 0, &m, 0), LK_EMALFORMED);
    assert_int_equal(s_readable(p.router, 50), 0);

    /* With ZMQ_ROUTER_MANDATORY, an unknown peer is -EHOSTUNREACH. */
    int one = 1;
    assert_int_equal(zmq_setsockopt(p.router, ZMQ_ROUTER_MANDATORY, &one, sizeof one), 0);
    s_msg(&m, 1);
    assert_int_equal(lk_zmq_send_msg(p.router, (const uint8_t *)"nobody", 6, &m, ZMQ_DONTWAIT),
                     -EHOSTUNREACH);
    /* ...and the known one still gets a whole message. */
    assert_int_equal(lk_zmq_send_msg(p.router, (const uint8_t *)"w", 1, &m, ZMQ_DONTWAIT), 0);
    assert_int_equal(lk_zmq_recv_msg(p.dealer, NULL, NULL, &out, 0), 0);
    assert_memory_equal(&out, &m, sizeof m);
    s_pair_close(&p);
}

/* Removes the files and directories test_ipc and test_prepare_endpoint create. */
static void s_rm(const char *dir, const char *const *rel, size_t n)
{
    char path[512];
    for (size_t i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, rel[i]);
        if (unlink(path) != 0)
            rmdir(path);
    }
    rmdir(dir);
}

/* Over ipc://, a frame larger than LK_MSG_MAX never arrives: the ROUTER's engine drops
 * the connection. A frame of exactly LK_MSG_MAX does arrive, and the DEALER reconnects. */
static void test_maxmsgsize_ipc(void **state)
{
    (void)state;
    char dir[] = "/tmp/lkzmqXXXXXX", ep[256];
    assert_non_null(mkdtemp(dir));
    snprintf(ep, sizeof ep, "ipc://%s/run/gw.ipc", dir);
    assert_int_equal(lk_zmq_prepare_endpoint(ep), 0);

    /* The longest routing id a peer can choose (255 bytes) travels in the handshake and
     * fits under the limit. */
    char longid[256];
    memset(longid, 'i', 255);
    longid[255] = '\0';
    struct s_pair p;
    struct lk_msg m, out;
    uint8_t id[256];
    size_t idlen;
    s_pair_open(&p, ep, longid);
    s_msg(&m, 99);

    assert_int_equal(lk_zmq_send_msg(p.dealer, NULL, 0, &m, 0), 0);
    assert_int_equal(s_readable(p.router, 5000), 1);
    idlen = sizeof id;
    assert_int_equal(lk_zmq_recv_msg(p.router, id, &idlen, &out, 0), 0);
    assert_int_equal(idlen, 255);
    assert_memory_equal(&out, &m, sizeof m);

    uint8_t *big = calloc(1, LK_MSG_MAX + 1);
    assert_non_null(big);
    s_send_frames(p.dealer, 1, big, (size_t)LK_MSG_MAX);
    assert_int_equal(s_readable(p.router, 5000), 1);
    idlen = sizeof id;
    assert_int_equal(lk_zmq_recv_msg(p.router, id, &idlen, &out, 0), LK_EMALFORMED);

    s_send_frames(p.dealer, 1, big, (size_t)LK_MSG_MAX + 1);
    assert_int_equal(s_readable(p.router, 300), 0);
    free(big);

    /* The DEALER reconnects; the next message gets through. */
    assert_int_equal(lk_zmq_send_msg(p.dealer, NULL, 0, &m, 0), 0);
    assert_int_equal(s_readable(p.router, 10000), 1);
    idlen = sizeof id;
    assert_int_equal(lk_zmq_recv_msg(p.router, id, &idlen, &out, 0), 0);
    assert_memory_equal(&out, &m, sizeof m);
    s_pair_close(&p);

    static const char *const made[] = {"run/gw.ipc", "run"};
    s_rm(dir, made, 2);
}

static void test_prepare_endpoint(void **state)
{
    (void)state;
    char dir[] = "/tmp/lkzmqXXXXXX", ep[512], path[512];
    struct stat st;
    assert_non_null(mkdtemp(dir));

    snprintf(ep, sizeof ep, "ipc://%s/a/b/c.ipc", dir);
    assert_int_equal(lk_zmq_prepare_endpoint(ep), 0);
    static const char *const levels[] = {"a", "a/b"};
    for (size_t i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, levels[i]);
        assert_int_equal(stat(path, &st), 0);
        assert_true(S_ISDIR(st.st_mode));
        assert_int_equal(st.st_mode & 0777, 0700);
    }
    snprintf(path, sizeof path, "%s/a/b/c.ipc", dir);
    assert_int_not_equal(stat(path, &st), 0); /* the socket itself is zmq_bind's */
    assert_int_equal(lk_zmq_prepare_endpoint(ep), 0); /* idempotent */

    /* The prepared endpoint binds. */
    void *ctx = zmq_ctx_new();
    void *sock = s_socket(ctx, ZMQ_PULL);
    assert_int_equal(zmq_bind(sock, ep), 0);
    assert_int_equal(zmq_close(sock), 0);
    assert_int_equal(zmq_ctx_term(ctx), 0);

    /* Not ipc://, or nothing to create: no-ops. */
    assert_int_equal(lk_zmq_prepare_endpoint("tcp://127.0.0.1:5555"), 0);
    assert_int_equal(lk_zmq_prepare_endpoint("inproc://x/y/z"), 0);
    assert_int_equal(lk_zmq_prepare_endpoint("ipc://@abstract/name"), 0);
    assert_int_equal(lk_zmq_prepare_endpoint("ipc://*"), 0);
    assert_int_equal(lk_zmq_prepare_endpoint("ipc://relative.ipc"), 0);
    assert_int_equal(lk_zmq_prepare_endpoint("ipc:///root.ipc"), 0);

    /* Errors: a file in the way, a path past sun_path, no endpoint. */
    snprintf(path, sizeof path, "%s/file", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
    snprintf(ep, sizeof ep, "ipc://%s/file/x.ipc", dir);
    assert_int_equal(lk_zmq_prepare_endpoint(ep), -ENOTDIR);
    snprintf(ep, sizeof ep, "ipc://%s/file/sub/x.ipc", dir);
    assert_int_equal(lk_zmq_prepare_endpoint(ep), -ENOTDIR);
    char longep[300] = "ipc:///tmp/";
    memset(longep + 11, 'l', 200);
    longep[211] = '\0';
    assert_int_equal(lk_zmq_prepare_endpoint(longep), -ENAMETOOLONG);
    assert_int_equal(lk_zmq_prepare_endpoint(NULL), -EINVAL);

    static const char *const made[] = {"a/b/c.ipc", "a/b", "a", "file"};
    s_rm(dir, made, 4);
    assert_int_not_equal(stat(dir, &st), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_defaults),   cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_extra_frames),   cmocka_unit_test(test_send_errors),
        cmocka_unit_test(test_maxmsgsize_ipc), cmocka_unit_test(test_prepare_endpoint),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
