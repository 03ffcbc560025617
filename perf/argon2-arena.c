/* argon2-arena.c: argon2id through libargon2 with a per-process pre-faulted arena (the
 * "Beyond" item of issue 6), measured against libsodium; the workers are not changed.
 *
 *   latchkey-argon2-arena [-t SECONDS] [-o OPS] [-m MEM]
 *
 * libsodium maps and unmaps its 19 MiB block at every hash, and the kernel's page faults
 * are more than half of the hash's CPU time (perf/argon2-rate.c measures it). libargon2
 * (libargon2-dev) takes allocation callbacks: here they hand out one block, mapped and
 * faulted in once at start. libargon2 still wipes the block after each hash (its
 * clear_internal_memory), which the arena keeps honest.
 *
 * Before measuring, the program checks that the two libraries agree: the raw argon2id
 * output for a fixed salt is the same, a PHC string encoded here has libsodium's exact
 * prefix and is accepted by crypto_pwhash_str_verify, and a string made by libsodium's
 * crypto_pwhash_str_alg is verified here (and a wrong password is refused). Then, for
 * SECONDS each (default 5): hash (salt, argon2id, PHC encoding) and verify (PHC parsing,
 * argon2id, constant-time compare), one line each like latchkey-argon2-rate's:
 *
 *   ARGON2ARENA op=verify ops=2 mem=19922944 count=N wall_s=.. rate=.. cpu_rate=..
 *     user_s=.. sys_s=.. sys_pct=.. minflt_per_op=..
 *
 * A measurement, not part of the service (it uses libargon2 and libsodium directly). */
#include <argon2.h>
#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define S_HASH_LEN 32
#define S_SALT_LEN crypto_pwhash_SALTBYTES

static const char s_password[] = "perf benchmark password";

static struct {
    uint8_t *block;
    size_t len;
    int lent;
} s_arena;

static int s_alloc(uint8_t **memory, size_t bytes)
{
    if (s_arena.lent || bytes > s_arena.len)
        return -1;
    s_arena.lent = 1;
    *memory = s_arena.block;
    return 0;
}

static void s_free(uint8_t *memory, size_t bytes)
{
    (void)bytes;
    if (memory == s_arena.block)
        s_arena.lent = 0;
}

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double s_tv(struct timeval tv)
{
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static void s_usage(void)
{
    fprintf(stderr, "usage: latchkey-argon2-arena [-t SECONDS] [-o OPS] [-m MEM_BYTES]\n");
    exit(2);
}

static void s_ctx(argon2_context *c, uint8_t *out, const uint8_t *salt, uint32_t ops, uint32_t mkib)
{
    memset(c, 0, sizeof *c);
    c->out = out;
    c->outlen = S_HASH_LEN;
    c->pwd = (uint8_t *)(uintptr_t)s_password;
    c->pwdlen = (uint32_t)strlen(s_password);
    c->salt = (uint8_t *)(uintptr_t)salt;
    c->saltlen = S_SALT_LEN;
    c->t_cost = ops;
    c->m_cost = mkib;
    c->lanes = 1;
    c->threads = 1;
    c->version = ARGON2_VERSION_13;
    c->allocate_cbk = s_alloc;
    c->free_cbk = s_free;
    c->flags = ARGON2_DEFAULT_FLAGS;
}

/* A PHC string like libsodium's crypto_pwhash_str_alg (argon2id, p=1, 16-byte salt, 32-byte
 * hash, unpadded standard base64). Returns 0, or -1. */
static int s_hash(char out[crypto_pwhash_STRBYTES], uint32_t ops, uint32_t mkib)
{
    uint8_t salt[S_SALT_LEN], h[S_HASH_LEN];
    char s64[64], h64[64];
    argon2_context c;
    randombytes_buf(salt, sizeof salt);
    s_ctx(&c, h, salt, ops, mkib);
    if (argon2_ctx(&c, Argon2_id) != ARGON2_OK)
        return -1;
    sodium_bin2base64(s64, sizeof s64, salt, sizeof salt, sodium_base64_VARIANT_ORIGINAL_NO_PADDING);
    sodium_bin2base64(h64, sizeof h64, h, sizeof h, sodium_base64_VARIANT_ORIGINAL_NO_PADDING);
    int n = snprintf(out, crypto_pwhash_STRBYTES, "$argon2id$v=19$m=%u,t=%u,p=1$%s$%s", mkib, ops, s64, h64);
    return n > 0 && (size_t)n < crypto_pwhash_STRBYTES ? 0 : -1;
}

/* Verifies s_password against a PHC string (argon2id, v=19, p=1 only). 0 = match. */
static int s_verify(const char *str)
{
    unsigned m, t, p;
    int off = 0;
    if (sscanf(str, "$argon2id$v=19$m=%u,t=%u,p=%u$%n", &m, &t, &p, &off) != 3 || off == 0 || p != 1)
        return -1;
    const char *salt64 = str + off, *dollar = strchr(salt64, '$');
    if (dollar == NULL)
        return -1;
    uint8_t salt[S_SALT_LEN], want[S_HASH_LEN], got[S_HASH_LEN];
    size_t sl, hl;
    if (sodium_base642bin(salt, sizeof salt, salt64, (size_t)(dollar - salt64), NULL, &sl, NULL,
                          sodium_base64_VARIANT_ORIGINAL_NO_PADDING) != 0 || sl != sizeof salt ||
        sodium_base642bin(want, sizeof want, dollar + 1, strlen(dollar + 1), NULL, &hl, NULL,
                          sodium_base64_VARIANT_ORIGINAL_NO_PADDING) != 0 || hl != sizeof want)
        return -1;
    argon2_context c;
    s_ctx(&c, got, salt, t, m);
    if (argon2_ctx(&c, Argon2_id) != ARGON2_OK)
        return -1;
    return sodium_memcmp(got, want, sizeof got) == 0 ? 0 : -1;
}

static int s_check(uint32_t ops, uint32_t mkib)
{
    uint8_t salt[S_SALT_LEN], a[S_HASH_LEN], b[S_HASH_LEN];
    char ours[crypto_pwhash_STRBYTES], theirs[crypto_pwhash_STRBYTES], prefix[64];
    argon2_context c;
    memset(salt, 0x5a, sizeof salt);
    s_ctx(&c, a, salt, ops, mkib);
    if (argon2_ctx(&c, Argon2_id) != ARGON2_OK ||
        crypto_pwhash(b, sizeof b, s_password, strlen(s_password), salt, ops, (size_t)mkib * 1024,
                      crypto_pwhash_ALG_ARGON2ID13) != 0 || memcmp(a, b, sizeof a) != 0) {
        fprintf(stderr, "argon2-arena: libargon2 and libsodium disagree on the raw output\n");
        return -1;
    }
    if (s_hash(ours, ops, mkib) != 0 ||
        crypto_pwhash_str_alg(theirs, s_password, strlen(s_password), ops, (size_t)mkib * 1024,
                              crypto_pwhash_ALG_ARGON2ID13) != 0) {
        fprintf(stderr, "argon2-arena: hashing failed\n");
        return -1;
    }
    snprintf(prefix, sizeof prefix, "$argon2id$v=19$m=%u,t=%u,p=1$", mkib, ops);
    if (strncmp(ours, prefix, strlen(prefix)) != 0 || strncmp(theirs, prefix, strlen(prefix)) != 0 ||
        strlen(ours) != strlen(theirs) ||
        crypto_pwhash_str_verify(ours, s_password, strlen(s_password)) != 0 || s_verify(theirs) != 0) {
        fprintf(stderr, "argon2-arena: PHC strings differ:\n  ours   %s\n  sodium %s\n", ours, theirs);
        return -1;
    }
    theirs[strlen(theirs) - 2] ^= 1; /* a different hash must fail */
    if (s_verify(theirs) == 0) {
        fprintf(stderr, "argon2-arena: a wrong hash verified\n");
        return -1;
    }
    printf("ARGON2ARENA check ok: raw output identical to libsodium's; e.g. %.*s... verified by "
           "crypto_pwhash_str_verify, libsodium's strings verified here\n", (int)strlen(prefix) + 6, ours);
    return 0;
}

static int s_run(const char *op, double seconds, uint32_t ops, uint32_t mkib, const char *stored)
{
    char out[crypto_pwhash_STRBYTES];
    struct rusage r0, r1;
    getrusage(RUSAGE_SELF, &r0);
    double t0 = s_now(), t = t0;
    unsigned long count = 0;
    while (t - t0 < seconds) {
        if ((op[0] == 'v' ? s_verify(stored) : s_hash(out, ops, mkib)) != 0) {
            fprintf(stderr, "argon2-arena: %s failed\n", op);
            return -1;
        }
        count++;
        t = s_now();
    }
    getrusage(RUSAGE_SELF, &r1);
    double wall = t - t0, user = s_tv(r1.ru_utime) - s_tv(r0.ru_utime);
    double sys = s_tv(r1.ru_stime) - s_tv(r0.ru_stime), cpu = user + sys;
    printf("ARGON2ARENA op=%s ops=%u mem=%zu count=%lu wall_s=%.3f rate=%.2f cpu_rate=%.2f user_s=%.3f "
           "sys_s=%.3f sys_pct=%.1f minflt_per_op=%.0f\n", op, ops, (size_t)mkib * 1024, count, wall,
           (double)count / wall, cpu > 0 ? (double)count / cpu : 0.0, user, sys,
           cpu > 0 ? 100.0 * sys / cpu : 0.0, (double)(r1.ru_minflt - r0.ru_minflt) / (double)count);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    double seconds = 5;
    unsigned long ops = 2, mem = 19ul * 1024 * 1024;
    int c;
    while ((c = getopt(argc, argv, "t:o:m:h")) != -1) {
        char *end;
        errno = 0;
        switch (c) {
        case 't':
            seconds = strtod(optarg, &end);
            if (errno != 0 || end == optarg || *end != '\0' || !(seconds > 0 && seconds <= 3600))
                s_usage();
            break;
        case 'o':
            ops = strtoul(optarg, &end, 10);
            if (errno != 0 || end == optarg || *end != '\0' || optarg[0] == '-' || ops < 1 || ops > 100)
                s_usage();
            break;
        case 'm':
            mem = strtoul(optarg, &end, 10);
            if (errno != 0 || end == optarg || *end != '\0' || optarg[0] == '-' || mem < 8192 ||
                mem > 4ul * 1024 * 1024 * 1024 || mem % 1024 != 0)
                s_usage();
            break;
        default:
            s_usage();
        }
    }
    if (optind != argc)
        s_usage();
    if (sodium_init() < 0) {
        fprintf(stderr, "argon2-arena: sodium_init failed\n");
        return 1;
    }
    uint32_t mkib = (uint32_t)(mem / 1024);
    /* The arena: argon2 works on whole 1 KiB blocks, m_cost of them per lane (p=1). */
    s_arena.len = (size_t)mkib * 1024;
    s_arena.block = mmap(NULL, s_arena.len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
                         -1, 0);
    if (s_arena.block == MAP_FAILED) {
        fprintf(stderr, "argon2-arena: mmap %zu bytes: %s\n", s_arena.len, strerror(errno));
        return 1;
    }
    char stored[crypto_pwhash_STRBYTES];
    if (s_check((uint32_t)ops, mkib) != 0 || s_hash(stored, (uint32_t)ops, mkib) != 0)
        return 1;
    if (s_run("verify", seconds, (uint32_t)ops, mkib, stored) != 0 ||
        s_run("hash", seconds, (uint32_t)ops, mkib, NULL) != 0)
        return 1;
    munmap(s_arena.block, s_arena.len);
    return 0;
}
