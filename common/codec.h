/* codec.h: the messages of schemas/messages.def as C structs, and their msgpack codec.
 *
 * Everything here is expanded from schemas/messages.def; do not declare a message by hand.
 *
 * Decoding is typed, total and strict: a wrong protocol version, an unknown type, a wrong
 * element count, a wrong field type, an oversize string, a string with a NUL byte, a bin of
 * the wrong length or trailing bytes all return LK_EMALFORMED (LK_EVERSION for a version
 * mismatch) and leave *out zeroed. A decoder never allocates more than the input's size:
 * the outer array count is checked against the schema before msgpack-c sees the buffer.
 */
#ifndef LK_CODEC_H
#define LK_CODEC_H

#include "errors.h"
#include "schemas/messages.def"

#include <stddef.h>
#include <stdint.h>

/* Upper bound of an encoded message; also the sockets' ZMQ_MAXMSGSIZE. */
#define LK_MSG_MAX 4096

enum lk_msg_type {
    LK_MSG_NONE = 0,
#define LK_X_(NAME, ID, lname) NAME = ID,
    LK_MESSAGES(LK_X_)
#undef LK_X_
};

#define LK_F_U32_(name) uint32_t name;
#define LK_F_U64_(name) uint64_t name;
#define LK_F_I64_(name) int64_t name;
#define LK_F_STR_(name, max) char name[(max) + 1];
#define LK_F_BIN_(name, len) uint8_t name[len];
#define LK_X_(NAME, ID, lname) \
    struct lk_msg_##lname {    \
        LK_FIELDS_##lname(LK_F_U32_, LK_F_U64_, LK_F_I64_, LK_F_STR_, LK_F_BIN_) };
LK_MESSAGES(LK_X_)
#undef LK_X_

struct lk_msg {
    enum lk_msg_type type;
    union {
#define LK_X_(NAME, ID, lname) struct lk_msg_##lname lname;
        LK_MESSAGES(LK_X_)
#undef LK_X_
    } u;
};

/* Returns the message type's name ("MSG_GW_SIGNUP_REQUEST"), or "MSG_UNKNOWN". */
const char *lk_msg_type_str(int type);

/* Encodes m into buf (capacity cap). On success returns 0 and sets *len. Returns
 * LK_EMALFORMED for an unknown type or a string field that is not NUL-terminated within
 * its declared size, LK_ETOOBIG when buf is too small. */
int lk_msg_encode(const struct lk_msg *m, uint8_t *buf, size_t cap, size_t *len) LK_WUR;

/* Decodes exactly len bytes of buf into *out (see the strictness rules above).
 * Returns 0, LK_EMALFORMED or LK_EVERSION. */
int lk_msg_decode(const uint8_t *buf, size_t len, struct lk_msg *out) LK_WUR;

#endif
