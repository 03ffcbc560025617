/* crypto.h: every use of libsodium in latchkey goes through here.
 *
 * Tokens are 32 bytes from the system CSPRNG, base64url without padding (43 chars). Only
 * the BLAKE2b-256 hash of the token's 43 characters is ever stored (Postgres, cache) or
 * sent between processes after signin. Passwords are hashed with argon2id
 * (crypto_pwhash_str) and compared only through crypto_pwhash_str_verify.
 */
#ifndef LK_CRYPTO_H
#define LK_CRYPTO_H

#include "errors.h"

#include <stddef.h>
#include <stdint.h>

#define LK_TOKEN_LEN 43      /* base64url characters, no padding */
#define LK_TOKEN_HASH_LEN 32 /* BLAKE2b-256 */
#define LK_PWHASH_MAX 128    /* >= crypto_pwhash_STRBYTES */

/* sodium_init(); call once at start of every process. Returns 0 or LK_ECRYPTO. */
int lk_crypto_init(void) LK_WUR;

/* Makes a new token: out gets LK_TOKEN_LEN chars plus NUL. Returns 0. */
int lk_token_new(char out[LK_TOKEN_LEN + 1]) LK_WUR;

/* Checks that token (len bytes, not necessarily NUL-terminated) is exactly LK_TOKEN_LEN
 * base64url characters and hashes it. Returns 0 or LK_EMALFORMED. */
int lk_token_hash(const char *token, size_t len, uint8_t out[LK_TOKEN_HASH_LEN]) LK_WUR;

/* Hashes a password with argon2id at the given cost (ops = t, mem = bytes) into out (a
 * NUL-terminated "$argon2id$..." string). Returns 0, LK_EINVAL for a cost outside
 * libsodium's bounds, or LK_ECRYPTO (out of memory). */
int lk_password_hash(const char *pw, size_t len, uint64_t ops, size_t mem,
                     char out[LK_PWHASH_MAX]) LK_WUR;

/* Verifies a password against a stored hash. Returns 0 on a match, LK_EINVAL on a
 * mismatch or an unparseable stored hash. */
int lk_password_verify(const char *stored, const char *pw, size_t len) LK_WUR;

/* Reads the cost of a stored "$argon2id$v=19$m=<KiB>,t=<ops>,p=<lanes>$..." hash: *ops,
 * *mem (bytes) and *lanes. Returns 0 or LK_EINVAL when stored is not of that form. */
int lk_password_params(const char *stored, uint64_t *ops, size_t *mem, uint32_t *lanes) LK_WUR;

/* Like lk_password_verify, but first refuses (LK_ETOOBIG, without hashing) a stored hash
 * whose cost exceeds max_ops or max_mem bytes or uses more than one lane: a tampered row
 * must not make a worker allocate gigabytes. */
int lk_password_verify_capped(const char *stored, const char *pw, size_t len, uint64_t max_ops,
                              size_t max_mem) LK_WUR;

/* Returns 1 when stored was made with a cost other than (ops, mem) and should be rehashed
 * after a successful verification (crypto_pwhash_str_needs_rehash), 0 when it matches,
 * LK_EINVAL when stored is not an argon2id hash. */
int lk_password_needs_rehash(const char *stored, uint64_t ops, size_t mem) LK_WUR;

/* Wipes len bytes at p (sodium_memzero). */
void lk_wipe(void *p, size_t len);

/* Constant-time equality of two buffers of len bytes: 1 if equal, 0 if not. */
int lk_equal(const void *a, const void *b, size_t len);

/* BLAKE2b-256 of tag followed by s (both NUL-terminated, the NULs excluded): a fixed-size
 * digest for comparing secrets of any length with lk_equal (the admin API key), or for
 * keying records by a value the cache must not hold (lk_throttle_key). */
void lk_tagged_hash(const char *tag, const char *s, uint8_t out[32]);

/* The throttling key of an email: lk_tagged_hash of tag (e.g. "signin:") and the
 * normalized email, so the cache never holds the address itself. */
void lk_throttle_key(const char *tag, const char *email, uint8_t out[32]);

/* For processes that hold passwords in memory (the workers): no core dumps
 * (RLIMIT_CORE 0) and not dumpable (PR_SET_DUMPABLE 0: no ptrace by same-uid processes,
 * no /proc/PID/mem). Returns 0 or -errno. */
int lk_no_core_dumps(void) LK_WUR;

#endif
