/* Unit tests of common/codec.c.
 *
 * Every loop runs over LK_MESSAGES and each message's schema, so a message added to
 * schemas/messages.def is round-tripped, mutated and fuzzed without touching this file;
 * only its golden bytes must be added by hand (test_golden fails until they are).
 *
 * Inputs to lk_msg_decode are copied into buffers of exactly their length, so ASan and
 * valgrind catch any read past the end.
 */
#include "common/codec.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <msgpack.h>

static const int s_types[] = {
#define LK_X_(NAME, ID, lname) NAME,
    LK_MESSAGES(LK_X_)
#undef LK_X_
};
#define S_NTYPES (sizeof s_types / sizeof s_types[0])

static const struct lk_msg s_zero;

/* ---- helpers ---- */

/* Decodes a private copy of exactly len bytes; asserts the result is want and, on error,
 * that *out was zeroed (it is pre-filled with junk). */
static void s_decode_expect(const uint8_t *buf, size_t len, int want, struct lk_msg *out)
{
    uint8_t *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    if (len)
        memcpy(copy, buf, len);
    memset(out, 0xa5, sizeof *out);
    int rc = lk_msg_decode(copy, len, out);
    free(copy);
    if (rc != want)
        fail_msg("decode returned %d (%s), expected %d", rc, lk_strerror(rc), want);
    if (rc != 0)
        assert_memory_equal(out, &s_zero, sizeof *out);
}

static uint64_t s_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Fills every field of a message from a variant number: boundary values of each msgpack
 * integer width, strings of length 0, 1, 31, 32 (fixstr/str8 edge), 255, 256 (str8/str16)
 * and the declared max, clamped to the max. */
static void s_fill(struct lk_msg *m, int type, unsigned variant)
{
    static const uint32_t u32[] = {0, 1, 127, 128, 255, 256, 65535, 65536, UINT32_MAX};
    static const uint64_t u64[] = {0, 1, 127, 128, 65536, UINT32_MAX, 1ULL << 32, INT64_MAX,
                                   (uint64_t)INT64_MAX + 1, UINT64_MAX};
    static const int64_t i64[] = {0,     -1,     -32,         -33,        -128,
                                  -129,  -32768, -32769,      INT32_MIN,  (int64_t)INT32_MIN - 1,
                                  INT64_MIN, INT64_MAX, 127, 128, (int64_t)UINT32_MAX + 1};
    static const size_t lens[] = {0, 1, 31, 32, 255, 256, SIZE_MAX};
    const struct s_schema *s = s_schema(type);
    assert_non_null(s);
    memset(m, 0, sizeof *m);
    m->type = (enum lk_msg_type)type;
    char *base = (char *)&m->u;
    for (size_t i = 0; i < s->nfields; i++) {
        const struct s_field *f = &s->fields[i];
        char *p = base + f->off;
        size_t k = variant + i;
        switch (f->kind) {
        case S_U32: *(uint32_t *)p = u32[k % (sizeof u32 / sizeof u32[0])]; break;
        case S_U64: *(uint64_t *)p = u64[k % (sizeof u64 / sizeof u64[0])]; break;
        case S_I64: *(int64_t *)p = i64[k % (sizeof i64 / sizeof i64[0])]; break;
        case S_STR: {
            size_t n = lens[k % (sizeof lens / sizeof lens[0])];
            if (n > f->n)
                n = f->n;
            for (size_t j = 0; j < n; j++)
                p[j] = (char)(1 + (j * 7 + k) % 255); /* any byte but NUL */
            p[n] = '\0';
            break;
        }
        case S_BIN:
            for (size_t j = 0; j < f->n; j++)
                p[j] = (char)(j * 13 + k);
            break;
        }
    }
}

static size_t s_encode_ok(const struct lk_msg *m, uint8_t *buf)
{
    size_t len = 0;
    int rc = lk_msg_encode(m, buf, LK_MSG_MAX, &len);
    if (rc != 0)
        fail_msg("encode of %s failed: %s", lk_msg_type_str(m->type), lk_strerror(rc));
    assert_true(len > 0 && len <= LK_MSG_MAX);
    return len;
}

/* A hand-built encoding: msgpack-c writes the parts we keep valid, raw bytes the rest. */
struct s_bld {
    msgpack_sbuffer sb;
    msgpack_packer pk;
};

static void s_begin(struct s_bld *b, uint32_t count, uint64_t version, uint64_t type)
{
    msgpack_sbuffer_init(&b->sb);
    msgpack_packer_init(&b->pk, &b->sb, msgpack_sbuffer_write);
    assert_int_equal(msgpack_pack_array(&b->pk, count), 0);
    assert_int_equal(msgpack_pack_uint64(&b->pk, version), 0);
    assert_int_equal(msgpack_pack_uint64(&b->pk, type), 0);
}

static void s_raw(struct s_bld *b, const void *p, size_t n)
{
    assert_int_equal(msgpack_sbuffer_write(&b->sb, p, n), 0);
}

/* Appends field f of the message at base in its canonical form. */
static void s_put(struct s_bld *b, const struct s_field *f, const char *base)
{
    const char *p = base + f->off;
    switch (f->kind) {
    case S_U32: msgpack_pack_uint32(&b->pk, *(const uint32_t *)p); break;
    case S_U64: msgpack_pack_uint64(&b->pk, *(const uint64_t *)p); break;
    case S_I64: msgpack_pack_int64(&b->pk, *(const int64_t *)p); break;
    case S_STR:
        msgpack_pack_str(&b->pk, strlen(p));
        msgpack_pack_str_body(&b->pk, p, strlen(p));
        break;
    case S_BIN:
        msgpack_pack_bin(&b->pk, f->n);
        msgpack_pack_bin_body(&b->pk, p, f->n);
        break;
    }
}

static void s_end_expect(struct s_bld *b, int want, const char *what)
{
    struct lk_msg out;
    uint8_t *copy = malloc(b->sb.size ? b->sb.size : 1);
    assert_non_null(copy);
    memcpy(copy, b->sb.data, b->sb.size);
    memset(&out, 0xa5, sizeof out);
    int rc = lk_msg_decode(copy, b->sb.size, &out);
    free(copy);
    msgpack_sbuffer_destroy(&b->sb);
    if (rc != want)
        fail_msg("%s: decode returned %d, expected %d", what, rc, want);
    if (rc != 0)
        assert_memory_equal(&out, &s_zero, sizeof out);
}

/* ---- tests ---- */

static void test_type_str(void **state)
{
    (void)state;
#define LK_X_(NAME, ID, lname) assert_string_equal(lk_msg_type_str(ID), #NAME);
    LK_MESSAGES(LK_X_)
#undef LK_X_
    assert_string_equal(lk_msg_type_str(0), "MSG_UNKNOWN");
    assert_string_equal(lk_msg_type_str(-1), "MSG_UNKNOWN");
    assert_string_equal(lk_msg_type_str(9999), "MSG_UNKNOWN");
    /* Ids are unique, and every schema agrees with the struct it describes. */
    for (size_t i = 0; i < S_NTYPES; i++) {
        for (size_t j = 0; j < i; j++)
            assert_int_not_equal(s_types[i], s_types[j]);
        const struct s_schema *s = s_schema(s_types[i]);
        assert_non_null(s);
        assert_int_equal(s->type, s_types[i]);
        assert_true(s->nfields > 0 && s->nfields <= 13); /* 2 + n fits a fixarray */
    }
}

/* Every type, many value sets: encode, check the bytes with msgpack-c's own unpacker,
 * decode, compare. */
static void test_round_trip(void **state)
{
    (void)state;
    uint8_t buf[LK_MSG_MAX];
    for (size_t t = 0; t < S_NTYPES; t++) {
        const struct s_schema *s = s_schema(s_types[t]);
        for (unsigned v = 0; v < 32; v++) {
            struct lk_msg in, out;
            s_fill(&in, s_types[t], v);
            size_t len = s_encode_ok(&in, buf);
            s_decode_expect(buf, len, 0, &out);
            assert_memory_equal(&in, &out, sizeof in);

            msgpack_unpacked u;
            size_t off = 0;
            msgpack_unpacked_init(&u);
            assert_int_equal(msgpack_unpack_next(&u, (const char *)buf, len, &off),
                             MSGPACK_UNPACK_SUCCESS);
            assert_int_equal(off, len);
            assert_int_equal(u.data.type, MSGPACK_OBJECT_ARRAY);
            assert_int_equal(u.data.via.array.size, 2 + s->nfields);
            const msgpack_object *e = u.data.via.array.ptr;
            assert_int_equal(e[0].via.u64, LK_PROTO_VERSION);
            assert_int_equal(e[1].via.u64, (uint64_t)s_types[t]);
            const char *base = (const char *)&in.u;
            for (size_t i = 0; i < s->nfields; i++) {
                const struct s_field *f = &s->fields[i];
                const msgpack_object *o = &e[2 + i];
                const char *p = base + f->off;
                switch (f->kind) {
                case S_U32:
                    assert_int_equal(o->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
                    assert_true(o->via.u64 == *(const uint32_t *)p);
                    break;
                case S_U64:
                    assert_int_equal(o->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
                    assert_true(o->via.u64 == *(const uint64_t *)p);
                    break;
                case S_I64:
                    if (*(const int64_t *)p < 0)
                        assert_true(o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER &&
                                    o->via.i64 == *(const int64_t *)p);
                    else
                        assert_true(o->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
                                    o->via.u64 == (uint64_t) * (const int64_t *)p);
                    break;
                case S_STR:
                    assert_int_equal(o->type, MSGPACK_OBJECT_STR);
                    assert_int_equal(o->via.str.size, strlen(p));
                    if (o->via.str.size)
                        assert_memory_equal(o->via.str.ptr, p, o->via.str.size);
                    break;
                case S_BIN:
                    assert_int_equal(o->type, MSGPACK_OBJECT_BIN);
                    assert_int_equal(o->via.bin.size, f->n);
                    assert_memory_equal(o->via.bin.ptr, p, f->n);
                    break;
                }
            }
            msgpack_unpacked_destroy(&u);
        }
    }
}

/* Hand-computed bytes, one message per type: the wire format pinned down independently
 * of msgpack-c's choices. Encoding must produce exactly these bytes, and decoding them
 * must give exactly the message. */
static void test_golden(void **state)
{
    (void)state;
    struct golden {
        struct lk_msg m;
        const char *hex;
        size_t nrep; /* then this many copies of byte rep */
        uint8_t rep;
    } g[S_NTYPES];
    int covered[S_NTYPES] = {0};
    size_t n = 0;
    memset(g, 0, sizeof g);

    /* [4, 1, "signin", 1, 4242]: 4242 = 0x1092 is a uint16 */
    g[n].m.type = MSG_WK_READY;
    strcpy(g[n].m.u.wk_ready.role, "signin");
    g[n].m.u.wk_ready.version = 1;
    g[n].m.u.wk_ready.pid = 4242;
    g[n++].hex = "95 04 01 a6 73 69 67 6e 69 6e 01 cd 10 92";

    /* [4, 2, 70000, 1, 1]: 70000 = 0x11170 is a uint32 */
    g[n].m.type = MSG_WK_HEARTBEAT;
    g[n].m.u.wk_heartbeat.pid = 70000;
    g[n].m.u.wk_heartbeat.db_ok = 1;
    g[n].m.u.wk_heartbeat.busy = 1;
    g[n++].hex = "95 04 02 ce 00 01 11 70 01 01";

    /* [4, 3, 1700000000000]: 0x18BCFE56800, a positive int64 goes out as uint64 */
    g[n].m.type = MSG_GW_HEARTBEAT;
    g[n].m.u.gw_heartbeat.now_ms = 1700000000000LL;
    g[n++].hex = "93 04 03 cf 00 00 01 8b cf e5 68 00";

    /* [4, 10, 1, "r", -1, "a@b.c", "pw", 1]: -1 is a negative fixint */
    g[n].m.type = MSG_GW_SIGNUP_REQUEST;
    g[n].m.u.gw_signup_request.job = 1;
    strcpy(g[n].m.u.gw_signup_request.rid, "r");
    g[n].m.u.gw_signup_request.deadline_ms = -1;
    strcpy(g[n].m.u.gw_signup_request.email, "a@b.c");
    strcpy(g[n].m.u.gw_signup_request.password, "pw");
    g[n].m.u.gw_signup_request.batch = 1;
    g[n++].hex = "98 04 0a 01 a1 72 ff a5 61 40 62 2e 63 a2 70 77 01";

    /* [4, 11, 300, 201, "", "", 0, "u", -200]: 300 uint16, 201 uint8, -200 int16 (0xff38) */
    g[n].m.type = MSG_SU_SIGNUP_REPLY;
    g[n].m.u.su_signup_reply.job = 300;
    g[n].m.u.su_signup_reply.status = 201;
    strcpy(g[n].m.u.su_signup_reply.user_id, "u");
    g[n].m.u.su_signup_reply.created_ms = -200;
    g[n++].hex = "99 04 0b cd 01 2c cc c9 a0 a0 00 a1 75 d1 ff 38";

    /* [4, 20, 2^32, "", 128, "x", ""]: 2^32 needs uint64; 128 is a uint8 */
    g[n].m.type = MSG_GW_SIGNIN_REQUEST;
    g[n].m.u.gw_signin_request.job = 1ULL << 32;
    g[n].m.u.gw_signin_request.deadline_ms = 128;
    strcpy(g[n].m.u.gw_signin_request.email, "x");
    g[n++].hex = "97 04 14 cf 00 00 00 01 00 00 00 00 a0 cc 80 a1 78 a0";

    /* [4, 21, 2, 200, "", "", 60, "t", "", 65536] */
    g[n].m.type = MSG_SI_SIGNIN_REPLY;
    g[n].m.u.si_signin_reply.job = 2;
    g[n].m.u.si_signin_reply.status = 200;
    g[n].m.u.si_signin_reply.retry_after = 60;
    strcpy(g[n].m.u.si_signin_reply.token, "t");
    g[n].m.u.si_signin_reply.expires_ms = 65536;
    g[n++].hex = "9a 04 15 02 cc c8 a0 a0 3c a1 74 a0 ce 00 01 00 00";

    /* [4, 22, 3, "q", 0, bin 00..1f]: a 32-byte bin is bin8 (c4 20) */
    g[n].m.type = MSG_GW_SIGNOUT_REQUEST;
    g[n].m.u.gw_signout_request.job = 3;
    strcpy(g[n].m.u.gw_signout_request.rid, "q");
    for (int i = 0; i < 32; i++)
        g[n].m.u.gw_signout_request.token_hash[i] = (uint8_t)i;
    g[n++].hex = "96 04 16 03 a1 71 00 c4 20 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f"
                 " 10 11 12 13 14 15 16 17 18 19 1a 1b 1c 1d 1e 1f";

    /* [4, 23, 4, 204, "e", 32 chars]: 32 bytes no longer fit a fixstr: str8 (d9 20) */
    g[n].m.type = MSG_SI_SIGNOUT_REPLY;
    g[n].m.u.si_signout_reply.job = 4;
    g[n].m.u.si_signout_reply.status = 204;
    strcpy(g[n].m.u.si_signout_reply.error, "e");
    strcpy(g[n].m.u.si_signout_reply.message, "0123456789abcdef0123456789abcdef");
    g[n++].hex = "96 04 17 04 cc cc a1 65 d9 20 30 31 32 33 34 35 36 37 38 39 61 62 63 64 65 66"
                 " 30 31 32 33 34 35 36 37 38 39 61 62 63 64 65 66";

    /* [4, 24, 5, "s", 7, bin 00..1f] */
    g[n].m.type = MSG_GW_SIGNOUT_ALL_REQUEST;
    g[n].m.u.gw_signout_all_request.job = 5;
    strcpy(g[n].m.u.gw_signout_all_request.rid, "s");
    g[n].m.u.gw_signout_all_request.deadline_ms = 7;
    for (int i = 0; i < 32; i++)
        g[n].m.u.gw_signout_all_request.token_hash[i] = (uint8_t)i;
    g[n++].hex = "96 04 18 05 a1 73 07 c4 20 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f"
                 " 10 11 12 13 14 15 16 17 18 19 1a 1b 1c 1d 1e 1f";

    /* [4, 25, 6, 401, "e", "m"]: 401 = 0x191 is a uint16 */
    g[n].m.type = MSG_SI_SIGNOUT_ALL_REPLY;
    g[n].m.u.si_signout_all_reply.job = 6;
    g[n].m.u.si_signout_all_reply.status = 401;
    strcpy(g[n].m.u.si_signout_all_reply.error, "e");
    strcpy(g[n].m.u.si_signout_all_reply.message, "m");
    g[n++].hex = "96 04 19 06 cd 01 91 a1 65 a1 6d";

    /* [4, 40, "status", "", 0] */
    g[n].m.type = MSG_CT_COMMAND_REQUEST;
    strcpy(g[n].m.u.ct_command_request.command, "status");
    g[n++].hex = "95 04 28 a6 73 74 61 74 75 73 a0 00";

    /* [4, 41, 500, 300 x "z"]: 300 bytes need a str16 (da 01 2c) */
    g[n].m.type = MSG_SV_COMMAND_REPLY;
    g[n].m.u.sv_command_reply.status = 500;
    memset(g[n].m.u.sv_command_reply.text, 'z', 300);
    g[n].nrep = 300;
    g[n].rep = 'z';
    g[n++].hex = "94 04 29 cd 01 f4 da 01 2c";

    /* [4, 42, 7, 2^40, 1]: 2^40 needs a uint64 */
    g[n].m.type = MSG_RO_STATUS;
    g[n].m.u.ro_status.pid = 7;
    g[n].m.u.ro_status.jobs_done = 1ULL << 40;
    g[n].m.u.ro_status.busy = 1;
    g[n++].hex = "95 04 2a 07 cf 00 00 01 00 00 00 00 00 01";

    /* [4, 50, "gateway", 4242, 2^40, 300, 1, 300 x "x"]: the samples need a str16 */
    g[n].m.type = MSG_RO_METRICS_REPORT;
    strcpy(g[n].m.u.ro_metrics_report.role, "gateway");
    g[n].m.u.ro_metrics_report.pid = 4242;
    g[n].m.u.ro_metrics_report.instance = 1ULL << 40;
    g[n].m.u.ro_metrics_report.seq = 300;
    g[n].m.u.ro_metrics_report.final = 1;
    memset(g[n].m.u.ro_metrics_report.samples, 'x', 300);
    g[n].nrep = 300;
    g[n].rep = 'x';
    g[n++].hex = "98 04 32 a7 67 61 74 65 77 61 79 cd 10 92 cf 00 00 01 00 00 00 00 00"
                 " cd 01 2c 01 da 01 2c";

    /* [4, 51, 2^33] */
    g[n].m.type = MSG_GW_METRICS_QUERY;
    g[n].m.u.gw_metrics_query.query = 1ULL << 33;
    g[n++].hex = "93 04 33 cf 00 00 00 02 00 00 00 00";

    /* [4, 52, 5, 0, 1, "# x\n"] */
    g[n].m.type = MSG_MC_METRICS_PAGE;
    g[n].m.u.mc_metrics_page.query = 5;
    g[n].m.u.mc_metrics_page.pages = 1;
    strcpy(g[n].m.u.mc_metrics_page.text, "# x\n");
    g[n++].hex = "96 04 34 05 00 01 a4 23 20 78 0a";

    for (size_t i = 0; i < n; i++) {
        uint8_t want[LK_MSG_MAX], got[LK_MSG_MAX];
        size_t wlen = 0;
        for (const char *h = g[i].hex; *h; h++) {
            unsigned b;
            if (*h == ' ')
                continue;
            assert_int_equal(sscanf(h, "%2x", &b), 1);
            want[wlen++] = (uint8_t)b;
            h++;
        }
        memset(want + wlen, g[i].rep, g[i].nrep);
        wlen += g[i].nrep;
        size_t glen = s_encode_ok(&g[i].m, got);
        if (glen != wlen || memcmp(got, want, wlen) != 0)
            fail_msg("%s: encoding differs from the golden bytes", lk_msg_type_str(g[i].m.type));
        struct lk_msg out;
        s_decode_expect(want, wlen, 0, &out);
        assert_memory_equal(&out, &g[i].m, sizeof out);
        for (size_t t = 0; t < S_NTYPES; t++)
            covered[t] |= s_types[t] == (int)g[i].m.type;
    }
    for (size_t t = 0; t < S_NTYPES; t++)
        if (!covered[t])
            fail_msg("%s has no golden bytes: add them to test_golden",
                     lk_msg_type_str(s_types[t]));
}

static void test_encode_errors(void **state)
{
    (void)state;
    uint8_t buf[LK_MSG_MAX];
    size_t len = 0;
    struct lk_msg m;

    memset(&m, 0, sizeof m);
    assert_int_equal(lk_msg_encode(&m, buf, sizeof buf, &len), LK_EMALFORMED);
    m.type = (enum lk_msg_type)9999;
    assert_int_equal(lk_msg_encode(&m, buf, sizeof buf, &len), LK_EMALFORMED);

    for (size_t t = 0; t < S_NTYPES; t++) {
        const struct s_schema *s = s_schema(s_types[t]);
        s_fill(&m, s_types[t], 6); /* long strings */
        size_t full = s_encode_ok(&m, buf);
        /* Every capacity short of the full length is LK_ETOOBIG, writing only inside it. */
        for (size_t cap = 0; cap < full; cap++) {
            uint8_t *small = malloc(cap ? cap : 1);
            assert_non_null(small);
            assert_int_equal(lk_msg_encode(&m, small, cap, &len), LK_ETOOBIG);
            free(small);
        }
        /* A string filling its whole array (no NUL within max + 1) is refused. */
        for (size_t i = 0; i < s->nfields; i++) {
            if (s->fields[i].kind != S_STR)
                continue;
            struct lk_msg bad = m;
            memset((char *)&bad.u + s->fields[i].off, 'z', s->fields[i].n + 1);
            assert_int_equal(lk_msg_encode(&bad, buf, sizeof buf, &len), LK_EMALFORMED);
            assert_int_equal(lk_msg_encode(&bad, buf, 0, &len), LK_EMALFORMED);
        }
    }
}

static void test_header_errors(void **state)
{
    (void)state;
    struct lk_msg out;
    struct s_bld b;

    s_decode_expect(NULL, 0, LK_EMALFORMED, &out);
    s_decode_expect((const uint8_t *)"", 0, LK_EMALFORMED, &out);

    /* The outer element must be an array: map, str, bin, int, nil, bool, float, ext. */
    static const uint8_t notarray[][3] = {{0x80}, {0x81, 0x01, 0x01}, {0xa0}, {0xc4, 0x00},
                                          {0x01}, {0xc0}, {0xc3}, {0xca, 0, 0}, {0xd4, 0, 0},
                                          {0xc1}};
    for (size_t i = 0; i < sizeof notarray / sizeof notarray[0]; i++)
        s_decode_expect(notarray[i], 3, LK_EMALFORMED, &out);
    /* A container header claiming 4 billion elements allocates nothing and fails. */
    static const uint8_t huge[] = {0xdd, 0xff, 0xff, 0xff, 0xff, LK_PROTO_VERSION, 0x01};
    s_decode_expect(huge, sizeof huge, LK_EMALFORMED, &out);
    static const uint8_t huge16[] = {0xdc, 0xff, 0xff, LK_PROTO_VERSION, 0x01};
    s_decode_expect(huge16, sizeof huge16, LK_EMALFORMED, &out);
    static const uint8_t hugemap[] = {0xdf, 0xff, 0xff, 0xff, 0xff};
    s_decode_expect(hugemap, sizeof hugemap, LK_EMALFORMED, &out);
    static const uint8_t tiny[][2] = {{0x90}, {0x91, LK_PROTO_VERSION}};
    s_decode_expect(tiny[0], 1, LK_EMALFORMED, &out);
    s_decode_expect(tiny[1], 2, LK_EMALFORMED, &out);

    for (size_t t = 0; t < S_NTYPES; t++) {
        int type = s_types[t];
        const struct s_schema *s = s_schema(type);
        struct lk_msg m;
        s_fill(&m, type, 3);
        const char *base = (const char *)&m.u;
        uint32_t n = (uint32_t)s->nfields;

        /* Wrong protocol version: LK_EVERSION whatever the rest. */
        static const uint64_t versions[] = {0, LK_PROTO_VERSION - 1, LK_PROTO_VERSION + 1, 255,
                                            1ULL << 32, UINT64_MAX};
        for (size_t i = 0; i < sizeof versions / sizeof versions[0]; i++) {
            s_begin(&b, 2 + n, versions[i], (uint64_t)type);
            for (size_t j = 0; j < n; j++)
                s_put(&b, &s->fields[j], base);
            s_end_expect(&b, LK_EVERSION, "version");
        }
        static const uint8_t negver[] = {0x92, 0xff, 0x01};
        s_decode_expect(negver, sizeof negver, LK_EVERSION, &out);
        static const uint8_t nilver[] = {0x92, 0xc0, 0x01};
        s_decode_expect(nilver, sizeof nilver, LK_EMALFORMED, &out);
        static const uint8_t strver[] = {0x92, 0xa1, 0x31, 0x01};
        s_decode_expect(strver, sizeof strver, LK_EMALFORMED, &out);

        /* Unknown type ids (the fields are this type's, which makes no difference). */
        static const uint64_t types[] = {0, 4, 9, 12, 255, 65535, UINT32_MAX, 1ULL << 31,
                                         UINT64_MAX};
        for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
            s_begin(&b, 2 + n, LK_PROTO_VERSION, types[i]);
            for (size_t j = 0; j < n; j++)
                s_put(&b, &s->fields[j], base);
            s_end_expect(&b, LK_EMALFORMED, "type id");
        }
        for (int bad = 0; bad < 3; bad++) {
            static const uint8_t badtype[][2] = {{0xff}, {0xc0}, {0xc2}};
            msgpack_sbuffer_init(&b.sb);
            msgpack_packer_init(&b.pk, &b.sb, msgpack_sbuffer_write);
            msgpack_pack_array(&b.pk, 2 + n);
            msgpack_pack_uint32(&b.pk, LK_PROTO_VERSION);
            s_raw(&b, badtype[bad], 1);
            for (size_t j = 0; j < n; j++)
                s_put(&b, &s->fields[j], base);
            s_end_expect(&b, LK_EMALFORMED, "type id kind");
        }

        /* Element counts: too few (with matching or full fields), too many. */
        s_begin(&b, 2 + n - 1, LK_PROTO_VERSION, (uint64_t)type);
        for (size_t j = 0; j + 1 < n; j++)
            s_put(&b, &s->fields[j], base);
        s_end_expect(&b, LK_EMALFORMED, "count - 1");
        s_begin(&b, 2 + n - 1, LK_PROTO_VERSION, (uint64_t)type);
        for (size_t j = 0; j < n; j++)
            s_put(&b, &s->fields[j], base);
        s_end_expect(&b, LK_EMALFORMED, "count - 1, all fields");
        s_begin(&b, 2 + n + 1, LK_PROTO_VERSION, (uint64_t)type);
        for (size_t j = 0; j < n; j++)
            s_put(&b, &s->fields[j], base);
        s_put(&b, &s->fields[0], base);
        s_end_expect(&b, LK_EMALFORMED, "count + 1");
        static const uint32_t over[] = {1, 2, 1000, 70000};
        for (size_t i = 0; i < sizeof over / sizeof over[0]; i++) {
            s_begin(&b, 2 + n + over[i], LK_PROTO_VERSION, (uint64_t)type); /* count > fields */
            for (size_t j = 0; j < n; j++)
                s_put(&b, &s->fields[j], base);
            s_end_expect(&b, LK_EMALFORMED, "count larger than the fields sent");
        }
        s_begin(&b, 2 + n, LK_PROTO_VERSION, (uint64_t)type);
        for (size_t j = 0; j + 1 < n; j++)
            s_put(&b, &s->fields[j], base);
        s_end_expect(&b, LK_EMALFORMED, "missing last field");
        s_begin(&b, 2, LK_PROTO_VERSION, (uint64_t)type);
        s_end_expect(&b, LK_EMALFORMED, "no fields");

        /* Trailing bytes after a complete message. */
        static const uint8_t tails[][1] = {{0x00}, {0xc0}, {0x90}, {0xff}};
        for (size_t i = 0; i < sizeof tails / sizeof tails[0]; i++) {
            s_begin(&b, 2 + n, LK_PROTO_VERSION, (uint64_t)type);
            for (size_t j = 0; j < n; j++)
                s_put(&b, &s->fields[j], base);
            s_raw(&b, tails[i], 1);
            s_end_expect(&b, LK_EMALFORMED, "trailing byte");
        }
        uint8_t two[2 * LK_MSG_MAX];
        size_t len = s_encode_ok(&m, two);
        memcpy(two + len, two, len);
        s_decode_expect(two, 2 * len, LK_EMALFORMED, &out);

        /* The array count in a wider form than needed is still the right count. */
        uint8_t wide[LK_MSG_MAX + 4];
        wide[0] = 0xdd;
        wide[1] = wide[2] = wide[3] = 0;
        wide[4] = (uint8_t)(2 + n);
        memcpy(wide + 5, two + 1, len - 1);
        s_decode_expect(wide, len + 4, 0, &out);
        assert_memory_equal(&out, &m, sizeof out);
    }
}

/* Raw element encodings, each invalid for some field kinds. */
struct s_elem {
    const char *name;
    uint8_t bytes[16];
    size_t len;
    unsigned bad_for; /* bit per enum s_kind */
};

#define S_INTS ((1u << S_U32) | (1u << S_U64) | (1u << S_I64))
#define S_ALL (S_INTS | (1u << S_STR) | (1u << S_BIN))

static const struct s_elem s_elems[] = {
    {"nil", {0xc0}, 1, S_ALL},
    {"false", {0xc2}, 1, S_ALL},
    {"true", {0xc3}, 1, S_ALL},
    {"never used", {0xc1}, 1, S_ALL},
    {"float32 0", {0xca, 0, 0, 0, 0}, 5, S_ALL},
    {"float64 1", {0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0}, 9, S_ALL},
    {"empty array", {0x90}, 1, S_ALL},
    {"array [1]", {0x91, 0x01}, 2, S_ALL},
    {"empty map", {0x80}, 1, S_ALL},
    {"map {1: 1}", {0x81, 0x01, 0x01}, 3, S_ALL},
    {"array32 huge", {0xdd, 0xff, 0xff, 0xff, 0xff}, 5, S_ALL},
    {"map32 huge", {0xdf, 0xff, 0xff, 0xff, 0xff}, 5, S_ALL},
    {"fixext1", {0xd4, 0x01, 0x00}, 3, S_ALL},
    {"ext8", {0xc7, 0x01, 0x01, 0x00}, 4, S_ALL},
    {"-1 fixint", {0xff}, 1, (1u << S_U32) | (1u << S_U64) | (1u << S_STR) | (1u << S_BIN)},
    {"-128 int8", {0xd0, 0x80}, 2, (1u << S_U32) | (1u << S_U64) | (1u << S_STR) | (1u << S_BIN)},
    {"-1 int64", {0xd3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 9,
     (1u << S_U32) | (1u << S_U64) | (1u << S_STR) | (1u << S_BIN)},
    {"INT64_MIN", {0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0}, 9,
     (1u << S_U32) | (1u << S_U64) | (1u << S_STR) | (1u << S_BIN)},
    {"2^32 uint64", {0xcf, 0, 0, 0, 1, 0, 0, 0, 0}, 9, (1u << S_U32) | (1u << S_STR) | (1u << S_BIN)},
    {"2^63 uint64", {0xcf, 0x80, 0, 0, 0, 0, 0, 0, 0}, 9,
     (1u << S_U32) | (1u << S_I64) | (1u << S_STR) | (1u << S_BIN)},
    {"UINT64_MAX", {0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 9,
     (1u << S_U32) | (1u << S_I64) | (1u << S_STR) | (1u << S_BIN)},
    {"str \"1\"", {0xa1, 0x31}, 2, S_INTS | (1u << S_BIN)},
    {"str with NUL", {0xa3, 0x61, 0x00, 0x62}, 4, S_ALL},
    {"str32 past the end", {0xdb, 0xff, 0xff, 0xff, 0xff, 0x61}, 6, S_ALL},
    {"str16 past the end", {0xda, 0xff, 0xff, 0x61}, 4, S_ALL},
    {"bin8 1 byte", {0xc4, 0x01, 0x01}, 3, S_INTS | (1u << S_STR) | (1u << S_BIN)},
    {"bin32 past the end", {0xc6, 0xff, 0xff, 0xff, 0xff, 0x00}, 6, S_ALL},
};

/* Every field of every type, replaced by every element that is invalid for its kind. */
static void test_field_errors(void **state)
{
    (void)state;
    struct s_bld b;
    for (size_t t = 0; t < S_NTYPES; t++) {
        int type = s_types[t];
        const struct s_schema *s = s_schema(type);
        struct lk_msg m;
        s_fill(&m, type, 5);
        const char *base = (const char *)&m.u;
        for (size_t i = 0; i < s->nfields; i++) {
            const struct s_field *f = &s->fields[i];
            for (size_t e = 0; e < sizeof s_elems / sizeof s_elems[0]; e++) {
                if (!(s_elems[e].bad_for & (1u << f->kind)))
                    continue;
                s_begin(&b, 2 + (uint32_t)s->nfields, LK_PROTO_VERSION, (uint64_t)type);
                for (size_t j = 0; j < s->nfields; j++) {
                    if (j == i)
                        s_raw(&b, s_elems[e].bytes, s_elems[e].len);
                    else
                        s_put(&b, &s->fields[j], base);
                }
                char what[160];
                snprintf(what, sizeof what, "%s.%s = %s", s->name, f->name, s_elems[e].name);
                s_end_expect(&b, LK_EMALFORMED, what);
            }

            /* Kind-specific: a str one past its max, bin where str is expected and str
             * where bin is, bins of the wrong length. */
            struct {
                int as_str;
                size_t len;
            } cases[4];
            size_t ncases = 0;
            if (f->kind == S_STR) {
                cases[ncases].as_str = 1, cases[ncases++].len = f->n + 1;
                cases[ncases].as_str = 0, cases[ncases++].len = f->n;
                cases[ncases].as_str = 0, cases[ncases++].len = 0;
            } else if (f->kind == S_BIN) {
                cases[ncases].as_str = 0, cases[ncases++].len = f->n - 1;
                cases[ncases].as_str = 0, cases[ncases++].len = f->n + 1;
                cases[ncases].as_str = 1, cases[ncases++].len = f->n;
                cases[ncases].as_str = 0, cases[ncases++].len = 0;
            }
            static uint8_t data[LK_MSG_MAX + 1]; /* more than any field can hold */
            memset(data, 'x', sizeof data);
            for (size_t c = 0; c < ncases; c++) {
                s_begin(&b, 2 + (uint32_t)s->nfields, LK_PROTO_VERSION, (uint64_t)type);
                for (size_t j = 0; j < s->nfields; j++) {
                    if (j != i) {
                        s_put(&b, &s->fields[j], base);
                    } else if (cases[c].as_str) {
                        msgpack_pack_str(&b.pk, cases[c].len);
                        msgpack_pack_str_body(&b.pk, data, cases[c].len);
                    } else {
                        msgpack_pack_bin(&b.pk, cases[c].len);
                        msgpack_pack_bin_body(&b.pk, data, cases[c].len);
                    }
                }
                char what[160];
                snprintf(what, sizeof what, "%s.%s: %s of %zu bytes", s->name, f->name,
                         cases[c].as_str ? "str" : "bin", cases[c].len);
                s_end_expect(&b, LK_EMALFORMED, what);
            }
        }
    }
}

/* Valid but unusual encodings are accepted for what they mean: integers wider than
 * needed or signed, strings and bins with wider length headers. */
static void test_wide_forms(void **state)
{
    (void)state;
    struct s_bld b;
    for (size_t t = 0; t < S_NTYPES; t++) {
        int type = s_types[t];
        const struct s_schema *s = s_schema(type);
        for (int form = 0; form < 3; form++) {
            struct lk_msg m, out;
            s_fill(&m, type, 1); /* small values: 1, "x"-length strings */
            const char *base = (const char *)&m.u;
            s_begin(&b, 2 + (uint32_t)s->nfields, LK_PROTO_VERSION, (uint64_t)type);
            for (size_t j = 0; j < s->nfields; j++) {
                const struct s_field *f = &s->fields[j];
                const char *p = base + f->off;
                uint8_t hdr[9];
                uint64_t v = 0;
                switch (f->kind) {
                case S_U32: v = *(const uint32_t *)p; break;
                case S_U64: v = *(const uint64_t *)p; break;
                case S_I64: v = (uint64_t) * (const int64_t *)p; break;
                default: break;
                }
                if (f->kind == S_STR || f->kind == S_BIN) {
                    size_t len = f->kind == S_STR ? strlen(p) : f->n;
                    static const uint8_t strh[] = {0xd9, 0xda, 0xdb}, binh[] = {0xc4, 0xc5, 0xc6};
                    int wf = form == 0 && len > 255 ? 1 : form; /* str8 cannot say 256+ */
                    size_t w = (size_t)1 << wf;
                    hdr[0] = f->kind == S_STR ? strh[wf] : binh[wf];
                    for (size_t k = 0; k < w; k++)
                        hdr[1 + k] = (uint8_t)(len >> (8 * (w - 1 - k)));
                    s_raw(&b, hdr, 1 + w);
                    s_raw(&b, p, len);
                    continue;
                }
                if (f->kind == S_I64 && (int64_t)v < 0) {
                    hdr[0] = 0xd3; /* always int64 */
                } else {
                    static const uint8_t wide[] = {0xcf, 0xd3, 0xce};
                    hdr[0] = wide[form];
                    if (hdr[0] == 0xce && v > UINT32_MAX)
                        hdr[0] = 0xcf;
                    if (hdr[0] == 0xd3 && v > INT64_MAX)
                        hdr[0] = 0xcf;
                }
                size_t w = hdr[0] == 0xce ? 4 : 8;
                for (size_t k = 0; k < w; k++)
                    hdr[1 + k] = (uint8_t)(v >> (8 * (w - 1 - k)));
                s_raw(&b, hdr, 1 + w);
            }
            uint8_t *copy = malloc(b.sb.size);
            assert_non_null(copy);
            memcpy(copy, b.sb.data, b.sb.size);
            int rc = lk_msg_decode(copy, b.sb.size, &out);
            free(copy);
            msgpack_sbuffer_destroy(&b.sb);
            if (rc != 0)
                fail_msg("%s form %d refused", s->name, form);
            assert_memory_equal(&out, &m, sizeof out);
        }
    }
}

/* Strings of exactly their declared max are accepted; max + 1 is refused (also in
 * test_field_errors) and cannot be encoded. */
static void test_string_limits(void **state)
{
    (void)state;
    uint8_t buf[LK_MSG_MAX];
    for (size_t t = 0; t < S_NTYPES; t++) {
        const struct s_schema *s = s_schema(s_types[t]);
        struct lk_msg m, out;
        memset(&m, 0, sizeof m);
        m.type = (enum lk_msg_type)s_types[t];
        char *base = (char *)&m.u;
        for (size_t i = 0; i < s->nfields; i++)
            if (s->fields[i].kind == S_STR)
                memset(base + s->fields[i].off, 'm', s->fields[i].n); /* NUL follows */
        size_t len = s_encode_ok(&m, buf);
        s_decode_expect(buf, len, 0, &out);
        assert_memory_equal(&out, &m, sizeof m);
        for (size_t i = 0; i < s->nfields; i++)
            if (s->fields[i].kind == S_STR)
                assert_int_equal(strlen((char *)&out.u + s->fields[i].off), s->fields[i].n);
    }
}

/* Every prefix of every valid encoding is refused; random corruption never crashes and
 * either decodes to a message that re-encodes cleanly or is refused with *out zeroed. */
static void test_fuzz(void **state)
{
    (void)state;
    uint64_t seed = 0x2545f4914f6cdd1dULL;
    uint8_t buf[LK_MSG_MAX], re[LK_MSG_MAX];
    size_t accepted = 0, refused = 0;
    for (size_t t = 0; t < S_NTYPES; t++) {
        for (unsigned v = 0; v < 8; v++) {
            struct lk_msg m, out;
            s_fill(&m, s_types[t], v);
            size_t len = s_encode_ok(&m, buf);
            for (size_t cut = 0; cut < len; cut++)
                s_decode_expect(buf, cut, LK_EMALFORMED, &out);

            for (int iter = 0; iter < 2000; iter++) {
                size_t n = len;
                uint8_t *copy = malloc(n);
                assert_non_null(copy);
                memcpy(copy, buf, n);
                int flips = 1 + (int)(s_rand(&seed) % 4);
                for (int k = 0; k < flips; k++) {
                    uint64_t r = s_rand(&seed);
                    /* Mostly near the header, where the structure lives. */
                    size_t pos = (r & 1) ? (r >> 8) % (n < 16 ? n : 16) : (r >> 8) % n;
                    copy[pos] = (r >> 1 & 1) ? (uint8_t)(r >> 40) : copy[pos] ^ (uint8_t)(1u << (r >> 2 & 7));
                }
                if (s_rand(&seed) % 4 == 0)
                    n = s_rand(&seed) % (n + 1); /* and sometimes truncate too */
                memset(&out, 0xa5, sizeof out);
                int rc = lk_msg_decode(copy, n, &out);
                free(copy);
                if (rc != 0) {
                    assert_true(rc == LK_EMALFORMED || rc == LK_EVERSION);
                    assert_memory_equal(&out, &s_zero, sizeof out);
                    refused++;
                    continue;
                }
                accepted++;
                const struct s_schema *s = s_schema(out.type);
                assert_non_null(s);
                for (size_t i = 0; i < s->nfields; i++)
                    if (s->fields[i].kind == S_STR)
                        assert_non_null(memchr((char *)&out.u + s->fields[i].off, '\0',
                                               s->fields[i].n + 1));
                struct lk_msg again;
                size_t rlen = s_encode_ok(&out, re);
                s_decode_expect(re, rlen, 0, &again);
                assert_memory_equal(&again, &out, sizeof out);
            }
        }
    }
    /* Plain junk of every short length. */
    for (int iter = 0; iter < 20000; iter++) {
        uint8_t junk[64];
        size_t n = s_rand(&seed) % sizeof junk;
        for (size_t i = 0; i < n; i++)
            junk[i] = (uint8_t)s_rand(&seed);
        if (iter % 2 && n >= 3) { /* a plausible header in front */
            junk[0] = 0x90 | (junk[0] & 0x0f);
            junk[1] = LK_PROTO_VERSION;
            junk[2] = (uint8_t)s_types[s_rand(&seed) % S_NTYPES];
        }
        struct lk_msg out;
        uint8_t *copy = malloc(n ? n : 1);
        assert_non_null(copy);
        memcpy(copy, junk, n);
        memset(&out, 0xa5, sizeof out);
        int rc = lk_msg_decode(copy, n, &out);
        free(copy);
        assert_true(rc == 0 || rc == LK_EMALFORMED || rc == LK_EVERSION);
        if (rc != 0)
            assert_memory_equal(&out, &s_zero, sizeof out);
    }
    assert_true(refused > 0);
    print_message("fuzz: %zu corrupted inputs refused, %zu still valid\n", refused, accepted);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_type_str),     cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_golden),       cmocka_unit_test(test_encode_errors),
        cmocka_unit_test(test_header_errors), cmocka_unit_test(test_field_errors),
        cmocka_unit_test(test_wide_forms),   cmocka_unit_test(test_string_limits),
        cmocka_unit_test(test_fuzz),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
