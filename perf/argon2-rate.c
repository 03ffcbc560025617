/* argon2-rate.c: single-core argon2id rate of libsodium at a given cost (issue 6, item 7).
 *
 *   latchkey-argon2-rate [-t SECONDS] [-o OPS] [-m MEM] [-x hash|verify|both] [-r]
 *
 * Runs crypto_pwhash_str_alg (argon2id13, what signup and a signin rehash do) and/or
 * crypto_pwhash_str_verify (what every signin does) back to back on one thread for SECONDS
 * each (default 5), at OPS iterations (default 2) and MEM bytes (default 19MiB; K/M/G
 * suffixes are binary): the defaults are hash.ops and hash.mem of common/config.c.
 * Prints one line per operation:
 *
 *   ARGON2RATE op=verify ops=2 mem=19922944 count=N wall_s=.. rate=<per wall s>
 *     cpu_rate=<per CPU s> user_s=.. sys_s=.. sys_pct=<sys share of CPU> minflt_per_op=..
 *
 * rate is what the core delivered (other load on the machine lowers it); cpu_rate is per
 * CPU second of this process, which other load barely moves. sys_pct is the kernel's share:
 * libsodium allocates the memory block with mmap and frees it with munmap on every call,
 * so every call page-faults MEM bytes in again (minflt_per_op shows it).
 *
 * -r (reuse): the memory block is mapped and faulted in once, then handed to every later
 * call (see s_arena below): what a per-worker pre-faulted arena would save. The output
 * line then says arena=1; the PHC strings are libsodium's own (the same code runs), and the
 * program checks that a string made with the arena verifies without it and back.
 *
 * A benchmark, not part of the service: it calls libsodium directly rather than through
 * common/crypto.c, which adds only a length check and a metric around the same calls. */
#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define S_DEFAULT_OPS 2
#define S_DEFAULT_MEM (19u * 1024 * 1024)

static const char s_password[] = "perf benchmark password";

/* The arena of -r. libsodium's argon2 (argon2-core.c allocate_memory / free_memory) maps
 * its block with mmap(NULL, size, PROT_READ|PROT_WRITE, MAP_ANON|MAP_PRIVATE, -1, 0) and
 * unmaps it after each hash, so the kernel zero-fills every page again at the next call.
 * This executable defines mmap and munmap, and the dynamic linker binds libsodium's calls
 * to these (an executable's symbols come first in the lookup scope): with the arena on, an
 * anonymous mapping of the arena's size gets the arena, already faulted in, and its munmap
 * keeps it. Argon2 writes every block before reading it, so the old contents do not matter.
 * Everything else goes to the kernel unchanged. Single-threaded, like the workers. */
static struct {
    int on;
    size_t want; /* the -m cost: libsodium maps that, rounded down to its block layout */
    void *block;
    size_t len;
    int lent;
} s_arena;

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    int anon = addr == NULL && fd == -1 && (flags & MAP_ANONYMOUS) && len <= s_arena.want &&
               len >= s_arena.want / 2;
    if (s_arena.on && anon && s_arena.block != NULL && !s_arena.lent && len == s_arena.len) {
        s_arena.lent = 1;
        return s_arena.block;
    }
    long r = syscall(SYS_mmap, addr, len, prot, flags, fd, off);
    if (r == -1)
        return MAP_FAILED;
    if (s_arena.on && anon && s_arena.block == NULL) {
        s_arena.block = (void *)r;
        s_arena.len = len;
        s_arena.lent = 1;
    }
    return (void *)r;
}

int munmap(void *addr, size_t len)
{
    if (s_arena.block != NULL && addr == s_arena.block) {
        if (s_arena.on) {
            s_arena.lent = 0;
            return 0;
        }
        s_arena.block = NULL;
    }
    return (int)syscall(SYS_munmap, addr, len);
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
    fprintf(stderr, "usage: latchkey-argon2-rate [-t SECONDS] [-o OPS] [-m MEM[K|M|G]] "
                    "[-x hash|verify|both] [-r]\n");
    exit(2);
}

/* A size in bytes with an optional binary suffix (K, M, G, with or without "iB"). */
static int s_parse_size(const char *s, unsigned long long *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || s[0] == '-')
        return -1;
    unsigned long long mul = 1;
    if (*end == 'K' || *end == 'k')
        mul = 1024ull;
    else if (*end == 'M' || *end == 'm')
        mul = 1024ull * 1024;
    else if (*end == 'G' || *end == 'g')
        mul = 1024ull * 1024 * 1024;
    if (mul != 1) {
        end++;
        if (strcmp(end, "iB") == 0 || strcmp(end, "B") == 0)
            end += strlen(end);
    }
    if (*end != '\0' || v > (unsigned long long)-1 / mul)
        return -1;
    *out = v * mul;
    return 0;
}

/* -r's check that the arena changes nothing: the raw argon2id output for a fixed salt is
 * the same with and without it, and a string made either way verifies the other way.
 * Returns 0, or -1 (with a message). */
static int s_arena_check(unsigned long long ops, size_t mem)
{
    unsigned char salt[crypto_pwhash_SALTBYTES], a[32], b[32];
    char sa[crypto_pwhash_STRBYTES], sb[crypto_pwhash_STRBYTES];
    size_t pl = strlen(s_password);
    memset(salt, 0x5a, sizeof salt);
    s_arena.on = 0;
    int rc = crypto_pwhash(a, sizeof a, s_password, pl, salt, ops, mem, crypto_pwhash_ALG_ARGON2ID13);
    rc |= crypto_pwhash_str_alg(sa, s_password, pl, ops, mem, crypto_pwhash_ALG_ARGON2ID13);
    s_arena.on = 1;
    for (int i = 0; i < 2; i++) /* the first call maps the arena, the second reuses it */
        rc |= crypto_pwhash(b, sizeof b, s_password, pl, salt, ops, mem, crypto_pwhash_ALG_ARGON2ID13);
    rc |= crypto_pwhash_str_alg(sb, s_password, pl, ops, mem, crypto_pwhash_ALG_ARGON2ID13);
    rc |= crypto_pwhash_str_verify(sa, s_password, pl);
    s_arena.on = 0;
    rc |= crypto_pwhash_str_verify(sb, s_password, pl);
    s_arena.on = 1;
    if (rc != 0 || memcmp(a, b, sizeof a) != 0 || s_arena.block == NULL) {
        fprintf(stderr, "argon2-rate: the arena changed the result (or was not used): %s\n",
                s_arena.block == NULL ? "libsodium did not map its block with mmap" : "mismatch");
        return -1;
    }
    return 0;
}

/* Runs op for `seconds`; prints its line. Returns 0, or -1 when libsodium fails. */
static int s_run(const char *op, double seconds, unsigned long long ops, size_t mem)
{
    char stored[crypto_pwhash_STRBYTES];
    char out[crypto_pwhash_STRBYTES];
    int verify = strcmp(op, "verify") == 0;
    if (verify && crypto_pwhash_str_alg(stored, s_password, strlen(s_password), ops, mem,
                                        crypto_pwhash_ALG_ARGON2ID13) != 0) {
        fprintf(stderr, "argon2-rate: crypto_pwhash_str_alg failed (out of memory?)\n");
        return -1;
    }
    struct rusage r0, r1;
    getrusage(RUSAGE_SELF, &r0);
    double t0 = s_now(), t = t0;
    unsigned long count = 0;
    while (t - t0 < seconds) {
        int rc = verify ? crypto_pwhash_str_verify(stored, s_password, strlen(s_password))
                        : crypto_pwhash_str_alg(out, s_password, strlen(s_password), ops, mem,
                                                crypto_pwhash_ALG_ARGON2ID13);
        if (rc != 0) {
            fprintf(stderr, "argon2-rate: %s failed\n", op);
            return -1;
        }
        count++;
        t = s_now();
    }
    getrusage(RUSAGE_SELF, &r1);
    double wall = t - t0;
    double user = s_tv(r1.ru_utime) - s_tv(r0.ru_utime);
    double sys = s_tv(r1.ru_stime) - s_tv(r0.ru_stime);
    double cpu = user + sys;
    printf("ARGON2RATE op=%s arena=%d ops=%llu mem=%zu count=%lu wall_s=%.3f rate=%.2f cpu_rate=%.2f "
           "user_s=%.3f sys_s=%.3f sys_pct=%.1f minflt_per_op=%.0f nivcsw=%ld\n",
           op, s_arena.on, ops, mem, count, wall, (double)count / wall, cpu > 0 ? (double)count / cpu : 0.0,
           user, sys, cpu > 0 ? 100.0 * sys / cpu : 0.0,
           (double)(r1.ru_minflt - r0.ru_minflt) / (double)count,
           r1.ru_nivcsw - r0.ru_nivcsw);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    double seconds = 5;
    unsigned long long ops = S_DEFAULT_OPS, mem = S_DEFAULT_MEM;
    const char *which = "both";
    int c;
    int reuse = 0;
    while ((c = getopt(argc, argv, "t:o:m:x:rh")) != -1) {
        char *end;
        switch (c) {
        case 't':
            errno = 0;
            seconds = strtod(optarg, &end);
            if (errno != 0 || end == optarg || *end != '\0' || !(seconds > 0 && seconds <= 3600))
                s_usage();
            break;
        case 'o':
            errno = 0;
            ops = strtoull(optarg, &end, 10);
            if (errno != 0 || end == optarg || *end != '\0' || optarg[0] == '-')
                s_usage();
            break;
        case 'm':
            if (s_parse_size(optarg, &mem) != 0)
                s_usage();
            break;
        case 'x':
            which = optarg;
            if (strcmp(which, "hash") != 0 && strcmp(which, "verify") != 0 &&
                strcmp(which, "both") != 0)
                s_usage();
            break;
        case 'r':
            reuse = 1;
            break;
        default:
            s_usage();
        }
    }
    if (optind != argc)
        s_usage();
    if (ops < crypto_pwhash_argon2id_OPSLIMIT_MIN || ops > crypto_pwhash_argon2id_OPSLIMIT_MAX ||
        mem < crypto_pwhash_argon2id_MEMLIMIT_MIN || mem > crypto_pwhash_argon2id_MEMLIMIT_MAX) {
        fprintf(stderr, "argon2-rate: ops must be %llu..%llu and mem %zu..%zu bytes\n",
                (unsigned long long)crypto_pwhash_argon2id_OPSLIMIT_MIN,
                (unsigned long long)crypto_pwhash_argon2id_OPSLIMIT_MAX,
                (size_t)crypto_pwhash_argon2id_MEMLIMIT_MIN,
                (size_t)crypto_pwhash_argon2id_MEMLIMIT_MAX);
        return 2;
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "argon2-rate: sodium_init failed\n");
        return 1;
    }
    s_arena.want = (size_t)mem;
    if (reuse && s_arena_check(ops, (size_t)mem) != 0)
        return 1;
    if (strcmp(which, "hash") != 0 && s_run("verify", seconds, ops, (size_t)mem) != 0)
        return 1;
    if (strcmp(which, "verify") != 0 && s_run("hash", seconds, ops, (size_t)mem) != 0)
        return 1;
    return 0;
}
