/* crypto.c: latchkey's only door to libsodium (see crypto.h). libsodium's -1 never leaves
 * this file: it becomes LK_ECRYPTO or LK_EINVAL. */
#include "crypto.h"

#include "metrics.h"

#include <errno.h>
#include <sodium.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>

/* The header's sizes are part of the public contract; if libsodium's ever move, fail the
 * build here rather than overflow a caller's buffer. */
_Static_assert(LK_PWHASH_MAX >= crypto_pwhash_STRBYTES, "LK_PWHASH_MAX too small");
_Static_assert(LK_TOKEN_HASH_LEN == crypto_generichash_BYTES, "token hash is BLAKE2b-256");
_Static_assert(LK_TOKEN_HASH_LEN >= crypto_generichash_BYTES_MIN &&
                   LK_TOKEN_HASH_LEN <= crypto_generichash_BYTES_MAX,
               "token hash size outside BLAKE2b's range");

#define S_TOKEN_RAW 32
_Static_assert(sodium_base64_ENCODED_LEN(S_TOKEN_RAW, sodium_base64_VARIANT_URLSAFE_NO_PADDING) ==
                   LK_TOKEN_LEN + 1,
               "32 bytes must encode to LK_TOKEN_LEN base64url characters");

/* We pin argon2id in the stored string, so its bounds are the ones that apply; today they
 * are also crypto_pwhash_*'s (argon2id is libsodium's default). */
#define S_OPS_MIN crypto_pwhash_argon2id_OPSLIMIT_MIN
#define S_OPS_MAX crypto_pwhash_argon2id_OPSLIMIT_MAX
#define S_MEM_MIN crypto_pwhash_argon2id_MEMLIMIT_MIN
#define S_MEM_MAX crypto_pwhash_argon2id_MEMLIMIT_MAX
_Static_assert(S_OPS_MIN == crypto_pwhash_OPSLIMIT_MIN && S_MEM_MIN == crypto_pwhash_MEMLIMIT_MIN,
               "argon2id is no longer libsodium's default");

static const char s_argon2id_prefix[] = "$argon2id$";

static int s_is_b64url(unsigned char c)
{
    /* Spelled out instead of isalnum(): the locale must not widen the alphabet. */
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

/* latchkey_argon2_duration_seconds{role, op}: op is "hash" or "verify"; the handles are
 * registered at the first use of each (the role is known by then). */
static void s_observe(const char *op, uint64_t t0)
{
    static lk_metric_t hash, verify;
    lk_metric_t *m = op[0] == 'h' ? &hash : &verify;
    if (!*m)
        *m = LK_METRIC(LKM_ARGON2_DURATION, lk_metrics_role(), op);
    lk_histogram_observe_us(*m, lk_metrics_now_us() - t0);
}

int lk_crypto_init(void)
{
    /* 1 means "already initialised", which is fine for a second caller. */
    return sodium_init() < 0 ? LK_ECRYPTO : 0;
}

int lk_token_new(char out[LK_TOKEN_LEN + 1])
{
    unsigned char raw[S_TOKEN_RAW];
    randombytes_buf(raw, sizeof raw);
    sodium_bin2base64(out, LK_TOKEN_LEN + 1, raw, sizeof raw,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    /* The raw bytes are the token: do not leave them on the stack. */
    sodium_memzero(raw, sizeof raw);
    return 0;
}

int lk_token_hash(const char *token, size_t len, uint8_t out[LK_TOKEN_HASH_LEN])
{
    if (token == NULL || len != LK_TOKEN_LEN)
        return LK_EMALFORMED;
    /* A strict alphabet check makes the hash a function of the token's one spelling:
     * padding, '+'/'/' or an embedded NUL can never alias a valid token. */
    for (size_t i = 0; i < len; i++)
        if (!s_is_b64url((unsigned char)token[i]))
            return LK_EMALFORMED;
    /* With 256 bits of CSPRNG input an unkeyed hash is enough: it only has to be one-way
     * so that a leaked cache or table does not yield usable tokens. */
    if (crypto_generichash(out, LK_TOKEN_HASH_LEN, (const unsigned char *)token, len, NULL, 0) != 0)
        return LK_ECRYPTO;
    return 0;
}

int lk_password_hash(const char *pw, size_t len, uint64_t ops, size_t mem, char out[LK_PWHASH_MAX])
{
    if (pw == NULL && len > 0)
        return LK_EINVAL;
    if (ops < S_OPS_MIN || ops > S_OPS_MAX || mem < S_MEM_MIN || mem > S_MEM_MAX)
        return LK_EINVAL;
    if ((unsigned long long)len > crypto_pwhash_PASSWD_MAX)
        return LK_EINVAL;
    /* libsodium fails here only when it cannot allocate mem bytes (or threads). */
    uint64_t t0 = lk_metrics_now_us();
    int rc = crypto_pwhash_str_alg(out, pw ? pw : "", len, ops, mem, crypto_pwhash_ALG_ARGON2ID13);
    s_observe("hash", t0);
    return rc != 0 ? LK_ECRYPTO : 0;
}

int lk_password_verify(const char *stored, const char *pw, size_t len)
{
    if (stored == NULL || (pw == NULL && len > 0))
        return LK_EINVAL;
    /* strnlen, not memchr: stored may be a short string and must not be read past its NUL. */
    size_t n = strnlen(stored, LK_PWHASH_MAX);
    if (n == LK_PWHASH_MAX || n < sizeof s_argon2id_prefix - 1 ||
        memcmp(stored, s_argon2id_prefix, sizeof s_argon2id_prefix - 1) != 0)
        return LK_EINVAL;
    /* crypto_pwhash_str_verify's parameter is declared as a STRBYTES array: hand it one, so
     * neither the compiler nor libsodium has reason to look beyond what we own. */
    char buf[crypto_pwhash_STRBYTES];
    if (n >= sizeof buf)
        return LK_EINVAL;
    memset(buf, 0, sizeof buf);
    memcpy(buf, stored, n);
    uint64_t t0 = lk_metrics_now_us();
    int rc = crypto_pwhash_str_verify(buf, pw ? pw : "", len);
    s_observe("verify", t0);
    return rc != 0 ? LK_EINVAL : 0;
}

void lk_wipe(void *p, size_t len)
{
    if (p != NULL)
        sodium_memzero(p, len);
}

int lk_equal(const void *a, const void *b, size_t len)
{
    return sodium_memcmp(a, b, len) == 0;
}

/* Reads a decimal field "<key>=<digits>" at *p, advancing past it. */
static int s_param(const char **p, const char *key, uint64_t max, uint64_t *out)
{
    size_t kl = strlen(key);
    if (strncmp(*p, key, kl) != 0)
        return LK_EINVAL;
    const char *q = *p + kl;
    uint64_t v = 0;
    if (*q < '0' || *q > '9')
        return LK_EINVAL;
    for (; *q >= '0' && *q <= '9'; q++) {
        v = v * 10 + (uint64_t)(*q - '0');
        if (v > max)
            return LK_EINVAL;
    }
    *out = v;
    *p = q;
    return 0;
}

int lk_password_params(const char *stored, uint64_t *ops, size_t *mem, uint32_t *lanes)
{
    static const char prefix[] = "$argon2id$v=19$";
    if (stored == NULL || strnlen(stored, LK_PWHASH_MAX) == LK_PWHASH_MAX ||
        strncmp(stored, prefix, sizeof prefix - 1) != 0)
        return LK_EINVAL;
    const char *p = stored + sizeof prefix - 1;
    uint64_t m, t, l;
    if (s_param(&p, "m=", UINT32_MAX, &m) != 0 || *p++ != ',' ||
        s_param(&p, "t=", UINT32_MAX, &t) != 0 || *p++ != ',' ||
        s_param(&p, "p=", 255, &l) != 0 || *p != '$')
        return LK_EINVAL;
    *ops = t;
    *mem = (size_t)m * 1024;
    *lanes = (uint32_t)l;
    return 0;
}

int lk_password_verify_capped(const char *stored, const char *pw, size_t len, uint64_t max_ops,
                              size_t max_mem)
{
    uint64_t ops;
    size_t mem;
    uint32_t lanes;
    if (lk_password_params(stored, &ops, &mem, &lanes) != 0)
        return LK_EINVAL;
    if (ops > max_ops || mem > max_mem || lanes != 1)
        return LK_ETOOBIG;
    return lk_password_verify(stored, pw, len);
}

int lk_password_needs_rehash(const char *stored, uint64_t ops, size_t mem)
{
    size_t n = strnlen(stored, LK_PWHASH_MAX);
    char buf[crypto_pwhash_STRBYTES];
    if (n >= sizeof buf)
        return LK_EINVAL;
    memset(buf, 0, sizeof buf);
    memcpy(buf, stored, n);
    int rc = crypto_pwhash_str_needs_rehash(buf, ops, mem);
    return rc < 0 ? LK_EINVAL : rc;
}

void lk_tagged_hash(const char *tag, const char *s, uint8_t out[32])
{
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, 32);
    crypto_generichash_update(&st, (const unsigned char *)tag, strlen(tag));
    crypto_generichash_update(&st, (const unsigned char *)s, strlen(s));
    crypto_generichash_final(&st, out, 32);
    sodium_memzero(&st, sizeof st);
}

void lk_throttle_key(const char *tag, const char *email, uint8_t out[32])
{
    lk_tagged_hash(tag, email, out);
}

int lk_no_core_dumps(void)
{
    struct rlimit rl = {0, 0};
    if (setrlimit(RLIMIT_CORE, &rl) != 0)
        return -errno;
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
        return -errno;
    return 0;
}
