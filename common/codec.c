/* codec.c: msgpack encoding and strict decoding of the messages in schemas/messages.def.
 *
 * The schema is expanded once, into one field table per message (s_schema()); encode and
 * decode are two loops over that table. Adding a message or a field touches only
 * schemas/messages.def.
 *
 * Encoding uses msgpack-c's packer, writing into the caller's buffer through s_write().
 *
 * Decoding does NOT use msgpack-c. Its unpacker allocates for a container as soon as it
 * reads the header (a 5-byte "array of 2^32-1 elements" asks its zone for tens of GiB), and
 * it accepts nesting, nil, bool and floats that our schema never has. Bounding it would
 * take a pre-scan of the input anyway, and the pre-scan is already a reader of the whole
 * flat subset we use: an array header, then unsigned/signed integers, str and bin. So the
 * decoder below is that small cursor-based reader. It never allocates, reads only inside
 * [buf, buf + len), and refuses any element kind not listed above by the first byte.
 */
#include "codec.h"

#include <msgpack.h>
#include <string.h>

enum s_kind { S_U32, S_U64, S_I64, S_STR, S_BIN };

struct s_field {
    enum s_kind kind;
    const char *name;
    size_t off; /* offset in the message's struct (which sits at the start of lk_msg.u) */
    size_t n;   /* S_STR: max bytes (the array holds n + 1); S_BIN: exact length */
};

struct s_schema {
    enum lk_msg_type type;
    const char *name;
    const struct s_field *fields;
    size_t nfields;
};

/* Each case declares its struct as the local type s_cur_t so the field macros, which
 * only see a field's name, can take offsetof. */
#define S_F_U32_(f) {S_U32, #f, offsetof(s_cur_t, f), 0},
#define S_F_U64_(f) {S_U64, #f, offsetof(s_cur_t, f), 0},
#define S_F_I64_(f) {S_I64, #f, offsetof(s_cur_t, f), 0},
#define S_F_STR_(f, max) {S_STR, #f, offsetof(s_cur_t, f), (max)},
#define S_F_BIN_(f, len) {S_BIN, #f, offsetof(s_cur_t, f), (len)},

/* Worst-case encoded size of a field: a 9-byte integer, or a 5-byte header plus data. */
#define S_W_INT_(f) +9
#define S_W_BYTES_(f, n) +5 + (n)

/* Returns the schema of type, or NULL for an unknown type. */
static const struct s_schema *s_schema(int type)
{
    switch (type) {
#define LK_X_(NAME, ID, lname)                                                              \
    case NAME: {                                                                            \
        typedef struct lk_msg_##lname s_cur_t;                                              \
        static const struct s_field fields[] = {LK_FIELDS_##lname(                          \
            S_F_U32_, S_F_U64_, S_F_I64_, S_F_STR_, S_F_BIN_)};                             \
        static const struct s_schema schema = {NAME, #NAME, fields,                         \
                                               sizeof fields / sizeof fields[0]};           \
        /* array header + version + type id, then the fields */                             \
        _Static_assert(5 + 9 + 9 LK_FIELDS_##lname(S_W_INT_, S_W_INT_, S_W_INT_,            \
                                                   S_W_BYTES_, S_W_BYTES_) <= LK_MSG_MAX,    \
                       #NAME " can exceed LK_MSG_MAX");                                     \
        return &schema;                                                                     \
    }
        LK_MESSAGES(LK_X_)
#undef LK_X_
    default:
        return NULL;
    }
}

const char *lk_msg_type_str(int type)
{
    const struct s_schema *s = s_schema(type);
    return s ? s->name : "MSG_UNKNOWN";
}

/* ---- encoding ---- */

struct s_out {
    uint8_t *buf;
    size_t cap, len;
};

/* msgpack-c's write callback: a non-zero return aborts the pack call, and the only way it
 * can fail here is running out of the caller's buffer. */
static int s_write(void *data, const char *bytes, size_t len)
{
    struct s_out *o = data;
    if (len > o->cap - o->len)
        return -1;
    if (len) {
        memcpy(o->buf + o->len, bytes, len);
        o->len += len;
    }
    return 0;
}

int lk_msg_encode(const struct lk_msg *m, uint8_t *buf, size_t cap, size_t *len)
{
    const struct s_schema *s = s_schema(m->type);
    if (!s)
        return LK_EMALFORMED;
    const char *base = (const char *)&m->u;

    /* Check every string before writing anything, so LK_EMALFORMED wins over LK_ETOOBIG
     * and a bad message never half-fills the buffer. */
    for (size_t i = 0; i < s->nfields; i++)
        if (s->fields[i].kind == S_STR && !memchr(base + s->fields[i].off, '\0', s->fields[i].n + 1))
            return LK_EMALFORMED;

    struct s_out o = {buf, cap, 0};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &o, s_write);
    int rc = msgpack_pack_array(&pk, 2 + s->nfields);
    rc = rc ? rc : msgpack_pack_uint32(&pk, LK_PROTO_VERSION);
    rc = rc ? rc : msgpack_pack_uint32(&pk, (uint32_t)s->type);
    for (size_t i = 0; i < s->nfields && rc == 0; i++) {
        const struct s_field *f = &s->fields[i];
        const void *p = base + f->off;
        switch (f->kind) {
        case S_U32:
            rc = msgpack_pack_uint32(&pk, *(const uint32_t *)p);
            break;
        case S_U64:
            rc = msgpack_pack_uint64(&pk, *(const uint64_t *)p);
            break;
        case S_I64:
            rc = msgpack_pack_int64(&pk, *(const int64_t *)p);
            break;
        case S_STR: {
            size_t n = strlen(p);
            rc = msgpack_pack_str(&pk, n);
            rc = rc ? rc : msgpack_pack_str_body(&pk, p, n);
            break;
        }
        case S_BIN:
            rc = msgpack_pack_bin(&pk, f->n);
            rc = rc ? rc : msgpack_pack_bin_body(&pk, p, f->n);
            break;
        }
    }
    if (rc != 0)
        return LK_ETOOBIG;
    *len = o.len;
    return 0;
}

/* ---- decoding: the flat msgpack subset ---- */

struct s_cur {
    const uint8_t *p, *end;
};

static int s_take(struct s_cur *c, size_t n, const uint8_t **out)
{
    if ((size_t)(c->end - c->p) < n)
        return -1;
    *out = c->p;
    c->p += n;
    return 0;
}

static uint64_t s_be(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* Reads a big-endian length of n bytes. */
static int s_len(struct s_cur *c, size_t n, uint64_t *out)
{
    const uint8_t *p;
    if (s_take(c, n, &p) != 0)
        return -1;
    *out = s_be(p, n);
    return 0;
}

/* Reads an integer of any msgpack width. A negative value sets *neg and lands in *sv; a
 * non-negative one lands in *uv whether it was encoded signed or unsigned (encoders
 * differ, the value is what counts). Anything that is not an integer is an error. */
static int s_get_int(struct s_cur *c, int *neg, uint64_t *uv, int64_t *sv)
{
    const uint8_t *p;
    if (s_take(c, 1, &p) != 0)
        return -1;
    uint8_t b = p[0];
    if (b <= 0x7f) { /* positive fixint */
        *neg = 0;
        *uv = b;
        return 0;
    }
    if (b >= 0xe0) { /* negative fixint */
        *neg = 1;
        *sv = (int64_t)b - 256;
        return 0;
    }
    size_t n;
    int is_signed = b >= 0xd0;
    switch (b) {
    case 0xcc: case 0xd0: n = 1; break;
    case 0xcd: case 0xd1: n = 2; break;
    case 0xce: case 0xd2: n = 4; break;
    case 0xcf: case 0xd3: n = 8; break;
    default: return -1;
    }
    uint64_t v;
    if (s_len(c, n, &v) != 0)
        return -1;
    if (!is_signed || !(v >> (8 * n - 1))) { /* unsigned, or signed with the sign bit clear */
        *neg = 0;
        *uv = v;
        return 0;
    }
    /* Sign-extend without converting an out-of-range unsigned value to a signed type. */
    *neg = 1;
    *sv = n == 8 ? -(int64_t)(~v) - 1 : (int64_t)v - ((int64_t)1 << (8 * n));
    return 0;
}

/* Reads a str (want_str) or a bin header and returns the payload; the other kind, or a
 * length past the end of the input, is an error. */
static int s_get_bytes(struct s_cur *c, int want_str, const uint8_t **data, size_t *len)
{
    const uint8_t *p;
    uint64_t n;
    if (s_take(c, 1, &p) != 0)
        return -1;
    uint8_t b = p[0];
    int rc;
    if (want_str && b >= 0xa0 && b <= 0xbf) {
        n = b & 0x1f;
        rc = 0;
    } else if (want_str && b >= 0xd9 && b <= 0xdb) {
        rc = s_len(c, (size_t)1 << (b - 0xd9), &n);
    } else if (!want_str && b >= 0xc4 && b <= 0xc6) {
        rc = s_len(c, (size_t)1 << (b - 0xc4), &n);
    } else {
        return -1;
    }
    if (rc != 0 || s_take(c, (size_t)n, data) != 0)
        return -1;
    *len = (size_t)n;
    return 0;
}

static int s_get_array(struct s_cur *c, uint64_t *count)
{
    const uint8_t *p;
    if (s_take(c, 1, &p) != 0)
        return -1;
    if (p[0] >= 0x90 && p[0] <= 0x9f) {
        *count = p[0] & 0x0f;
        return 0;
    }
    if (p[0] == 0xdc)
        return s_len(c, 2, count);
    if (p[0] == 0xdd)
        return s_len(c, 4, count);
    return -1;
}

static int s_get_field(struct s_cur *c, const struct s_field *f, char *dst)
{
    int neg;
    uint64_t uv;
    int64_t sv;
    const uint8_t *data;
    size_t len;
    switch (f->kind) {
    case S_U32:
        if (s_get_int(c, &neg, &uv, &sv) != 0 || neg || uv > UINT32_MAX)
            return -1;
        *(uint32_t *)dst = (uint32_t)uv;
        return 0;
    case S_U64:
        if (s_get_int(c, &neg, &uv, &sv) != 0 || neg)
            return -1;
        *(uint64_t *)dst = uv;
        return 0;
    case S_I64:
        if (s_get_int(c, &neg, &uv, &sv) != 0 || (!neg && uv > INT64_MAX))
            return -1;
        *(int64_t *)dst = neg ? sv : (int64_t)uv;
        return 0;
    case S_STR:
        /* A NUL inside would silently cut the string short in every C consumer. */
        if (s_get_bytes(c, 1, &data, &len) != 0 || len > f->n || memchr(data, '\0', len))
            return -1;
        memcpy(dst, data, len);
        dst[len] = '\0';
        return 0;
    case S_BIN:
        if (s_get_bytes(c, 0, &data, &len) != 0 || len != f->n)
            return -1;
        memcpy(dst, data, len);
        return 0;
    }
    return -1;
}

int lk_msg_decode(const uint8_t *buf, size_t len, struct lk_msg *out)
{
    memset(out, 0, sizeof *out);
    if (!buf || len == 0)
        return LK_EMALFORMED;

    struct s_cur c = {buf, buf + len};
    uint64_t count, version, type;
    int64_t sv;
    int neg;

    /* Header first: [version, type, ...] with the count the type's schema demands, all
     * checked before a single field is read. */
    if (s_get_array(&c, &count) != 0 || count < 2)
        goto malformed;
    if (s_get_int(&c, &neg, &version, &sv) != 0)
        goto malformed;
    if (neg || version != LK_PROTO_VERSION)
        return LK_EVERSION; /* *out is still all zero */
    if (s_get_int(&c, &neg, &type, &sv) != 0 || neg || type > INT32_MAX)
        goto malformed;
    const struct s_schema *s = s_schema((int)type);
    if (!s || count != 2 + s->nfields)
        goto malformed;

    char *base = (char *)&out->u;
    for (size_t i = 0; i < s->nfields; i++)
        if (s_get_field(&c, &s->fields[i], base + s->fields[i].off) != 0)
            goto malformed;
    if (c.p != c.end)
        goto malformed;
    out->type = s->type;
    return 0;

malformed:
    memset(out, 0, sizeof *out);
    return LK_EMALFORMED;
}
