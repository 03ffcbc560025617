/* Unit tests of common/cache.c, each in its own mkdtemp() directory.
 *
 * LMDB forbids opening one environment twice in a process (closing either handle drops the
 * other's fcntl locks), so every test that needs a second handle on the same environment
 * runs it in a forked child, which is also what production looks like. */
#include "common/cache.c"

#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#define MAP (1u << 20)

struct fixture {
    char dir[64];  /* the mkdtemp() directory */
    char env[128]; /* dir/env: the environment's directory, created by lk_cache_open */
};

static int s_rm(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static int s_setup(void **state)
{
    /* A tiny scan chunk, so the sweeps cross many chunk boundaries (resumption at the key
     * where the last write transaction stopped, deletes next to a boundary); tests that
     * need production's chunk set it back. */
    s_scan_chunk = 7;
    struct fixture *f = calloc(1, sizeof *f);
    if (f == NULL)
        return -1;
    strcpy(f->dir, "/tmp/lk_cache_test.XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    snprintf(f->env, sizeof f->env, "%s/env", f->dir);
    *state = f;
    return 0;
}

static int s_teardown(void **state)
{
    struct fixture *f = *state;
    int rc = nftw(f->dir, s_rm, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return rc;
}

static void s_hash(uint8_t h[32], uint32_t i)
{
    for (int j = 0; j < 32; j++)
        h[j] = (uint8_t)(i * 2654435761u >> (j % 4 * 8)) ^ (uint8_t)j;
    memcpy(h, &i, sizeof i); /* distinct keys whatever the mixing does */
}

static void s_session(struct lk_session *s, uint32_t i, int64_t created, int64_t expires)
{
    memset(s, 0, sizeof *s);
    for (int j = 0; j < 16; j++)
        s->user_id[j] = (uint8_t)(i + j);
    s->created_ms = created;
    s->expires_ms = expires;
    snprintf(s->email, sizeof s->email, "user%u@example.com", i);
}

/* Tests write thousands of entries: one fsync per commit would make them slow, and
 * durability is not what they check. */
static void s_nosync(lk_cache_t *c)
{
    assert_int_equal(mdb_env_set_flags(c->env, MDB_NOSYNC, 1), 0);
}

static lk_cache_t *s_open_rw(const char *path, size_t map)
{
    lk_cache_t *c = NULL;
    assert_int_equal(lk_cache_open(path, map, 0, &c), 0);
    assert_non_null(c);
    s_nosync(c);
    return c;
}

static void s_wait_ok(pid_t pid)
{
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_put_get_del(void **state)
{
    struct fixture *f = *state;
    lk_cache_t *c = s_open_rw(f->env, MAP);
    uint8_t h[32], h2[32];
    struct lk_session s, got;
    s_hash(h, 1);
    s_hash(h2, 2);
    s_session(&s, 1, 1000, 90000);

    assert_int_equal(lk_cache_session_get(c, h, 2000, &got), LK_ENOTFOUND);
    assert_int_equal(lk_cache_session_put(c, h, &s), 0);
    memset(&got, 0xEE, sizeof got);
    assert_int_equal(lk_cache_session_get(c, h, 2000, &got), 0);
    assert_memory_equal(got.user_id, s.user_id, 16);
    assert_int_equal(got.created_ms, 1000);
    assert_int_equal(got.expires_ms, 90000);
    assert_string_equal(got.email, "user1@example.com");
    assert_int_equal(lk_cache_session_get(c, h2, 2000, &got), LK_ENOTFOUND);

    /* Replace. */
    s_session(&s, 7, 3000, 100000);
    assert_int_equal(lk_cache_session_put(c, h, &s), 0);
    assert_int_equal(lk_cache_session_get(c, h, 2000, &got), 0);
    assert_string_equal(got.email, "user7@example.com");
    assert_int_equal(got.created_ms, 3000);

    /* Negative and extreme times survive the encoding. */
    s_session(&s, 8, -5, INT64_MAX);
    assert_int_equal(lk_cache_session_put(c, h2, &s), 0);
    assert_int_equal(lk_cache_session_get(c, h2, INT64_MAX - 1, &got), 0);
    assert_int_equal(got.created_ms, -5);
    assert_int_equal(got.expires_ms, INT64_MAX);

    size_t n = 99;
    assert_int_equal(lk_cache_count(c, &n), 0);
    assert_int_equal(n, 2);

    assert_int_equal(lk_cache_session_del(c, h), 0);
    assert_int_equal(lk_cache_session_get(c, h, 2000, &got), LK_ENOTFOUND);
    assert_int_equal(lk_cache_session_del(c, h), LK_ENOTFOUND);
    assert_int_equal(lk_cache_count(c, &n), 0);
    assert_int_equal(n, 1);

    /* A 254-byte email round-trips; an empty or unterminated one is refused. */
    s_session(&s, 9, 0, 10);
    memset(s.email, 'e', 254);
    s.email[254] = '\0';
    assert_int_equal(lk_cache_session_put(c, h, &s), 0);
    assert_int_equal(lk_cache_session_get(c, h, 0, &got), 0);
    assert_int_equal(strlen(got.email), 254);
    memset(s.email, 'e', sizeof s.email);
    assert_int_equal(lk_cache_session_put(c, h, &s), -EINVAL);
    s.email[0] = '\0';
    assert_int_equal(lk_cache_session_put(c, h, &s), -EINVAL);

    lk_cache_destroy(&c);
    assert_null(c);
    lk_cache_destroy(&c); /* NULL-safe */
    lk_cache_destroy(NULL);

    /* Durable across a reopen. */
    c = s_open_rw(f->env, MAP);
    assert_int_equal(lk_cache_session_get(c, h2, 0, &got), 0);
    assert_string_equal(got.email, "user8@example.com");
    lk_cache_destroy(&c);
}

static void test_expiry(void **state)
{
    struct fixture *f = *state;
    lk_cache_t *c = s_open_rw(f->env, MAP);
    uint8_t h[32];
    struct lk_session s, got;
    s_hash(h, 1);
    s_session(&s, 1, 500, 1000);
    assert_int_equal(lk_cache_session_put(c, h, &s), 0);
    assert_int_equal(lk_cache_session_get(c, h, 999, &got), 0);
    /* Invalid from the very ms it expires. */
    assert_int_equal(lk_cache_session_get(c, h, 1000, &got), LK_ENOTFOUND);
    assert_int_equal(lk_cache_session_get(c, h, 5000, &got), LK_ENOTFOUND);
    /* Expired is not deleted: an earlier clock still sees it. */
    assert_int_equal(lk_cache_session_get(c, h, 0, &got), 0);
    lk_cache_destroy(&c);
}

/* The gateway's situation: a long-lived read-only handle, writes made by other processes. */
static void test_readonly_sees_other_process(void **state)
{
    struct fixture *f = *state;
    lk_cache_t *rw = s_open_rw(f->env, MAP);
    lk_cache_destroy(&rw);

    lk_cache_t *ro = NULL;
    assert_int_equal(lk_cache_open(f->env, 0, 1, &ro), 0);
    uint8_t h[32];
    struct lk_session s, got;
    s_hash(h, 42);
    assert_int_equal(lk_cache_session_get(ro, h, 1, &got), LK_ENOTFOUND);

    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        lk_cache_t *w = NULL;
        struct lk_session cs;
        s_session(&cs, 42, 1, 1000000);
        int ok = lk_cache_open(f->env, MAP, 0, &w) == 0 && lk_cache_session_put(w, h, &cs) == 0;
        lk_cache_destroy(&w);
        _exit(ok ? 0 : 1);
    }
    s_wait_ok(pid);
    /* Same handle, renewed: the new snapshot has the session. */
    assert_int_equal(lk_cache_session_get(ro, h, 1, &got), 0);
    assert_string_equal(got.email, "user42@example.com");
    size_t n;
    assert_int_equal(lk_cache_count(ro, &n), 0);
    assert_int_equal(n, 1);

    /* And a revocation elsewhere is seen at the next lookup. */
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        lk_cache_t *w = NULL;
        int ok = lk_cache_open(f->env, MAP, 0, &w) == 0 && lk_cache_session_del(w, h) == 0;
        lk_cache_destroy(&w);
        _exit(ok ? 0 : 1);
    }
    s_wait_ok(pid);
    assert_int_equal(lk_cache_session_get(ro, h, 1, &got), LK_ENOTFOUND);

    /* Read-only handles never write. */
    s_session(&s, 1, 1, 2);
    size_t removed = 7;
    int dead = -1;
    assert_int_equal(lk_cache_session_put(ro, h, &s), -EPERM);
    assert_int_equal(lk_cache_session_del(ro, h), -EPERM);
    assert_int_equal(lk_cache_sweep(ro, 10, 100, &removed), -EPERM);
    assert_int_equal(removed, 0);
    assert_int_equal(lk_cache_reader_check(ro, &dead), 0);
    assert_true(dead >= 0);
    lk_cache_destroy(&ro);
}

/* A writer with a bigger map grows the file past a reader's map: the reader must adopt the
 * new size (MDB_MAP_RESIZED) instead of failing every lookup from then on. */
static void test_map_resized_by_other_process(void **state)
{
    struct fixture *f = *state;
    lk_cache_t *rw = s_open_rw(f->env, 64 * 1024);
    lk_cache_destroy(&rw);
    lk_cache_t *ro = NULL;
    assert_int_equal(lk_cache_open(f->env, 0, 1, &ro), 0);
    uint8_t h[32];
    struct lk_session got;
    s_hash(h, 4999);
    assert_int_equal(lk_cache_session_get(ro, h, 1, &got), LK_ENOTFOUND);

    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        lk_cache_t *w = NULL;
        if (lk_cache_open(f->env, 8u << 20, 0, &w) != 0)
            _exit(1);
        /* One transaction for speed: ~5000 entries is far beyond 64 KiB. */
        MDB_txn *txn;
        int rc = mdb_txn_begin(w->env, NULL, 0, &txn);
        for (uint32_t i = 0; rc == 0 && i < 5000; i++) {
            struct lk_session cs;
            uint8_t ch[32], buf[S_VALUE_MAX];
            s_session(&cs, i, 1, 1000000);
            s_hash(ch, i);
            MDB_val k = {32, ch}, v = {s_encode(&cs, buf), buf};
            rc = mdb_put(txn, w->dbi, &k, &v, 0);
        }
        if (rc == 0)
            rc = mdb_txn_commit(txn);
        else
            mdb_txn_abort(txn);
        lk_cache_destroy(&w);
        _exit(rc == 0 ? 0 : 1);
    }
    s_wait_ok(pid);
    assert_int_equal(lk_cache_session_get(ro, h, 1, &got), 0);
    assert_string_equal(got.email, "user4999@example.com");
    size_t n;
    assert_int_equal(lk_cache_count(ro, &n), 0);
    assert_int_equal(n, 5000);
    lk_cache_destroy(&ro);
}

static void test_sweep(void **state)
{
    struct fixture *f = *state;
    lk_cache_t *c = s_open_rw(f->env, MAP);
    struct lk_session s, got;
    uint8_t h[32];
    /* 0..99: even ones expire at 1000, odd ones at 5000; 100 expires exactly at 2000. */
    for (uint32_t i = 0; i < 100; i++) {
        s_hash(h, i);
        s_session(&s, i, 1, i % 2 ? 5000 : 1000);
        assert_int_equal(lk_cache_session_put(c, h, &s), 0);
    }
    s_hash(h, 100);
    s_session(&s, 100, 1, 2000);
    assert_int_equal(lk_cache_session_put(c, h, &s), 0);

    size_t removed = 99, n;
    assert_int_equal(lk_cache_sweep(c, 2000, 0, &removed), 0);
    assert_int_equal(removed, 0);
    /* In batches: 50 expired, max 20 per call. */
    size_t total = 0;
    int calls = 0;
    do {
        assert_int_equal(lk_cache_sweep(c, 2000, 20, &removed), 0);
        assert_true(removed <= 20);
        total += removed;
        calls++;
    } while (removed == 20);
    assert_int_equal(total, 50);
    assert_int_equal(calls, 3);
    assert_int_equal(lk_cache_count(c, &n), 0);
    assert_int_equal(n, 51);
    for (uint32_t i = 0; i <= 100; i++) {
        s_hash(h, i);
        int rc = lk_cache_session_get(c, h, 1500, &got);
        assert_int_equal(rc, i % 2 || i == 100 ? 0 : LK_ENOTFOUND);
    }
    /* expires_ms < before_ms is strict: 100 (expiring at 2000) stayed. */
    assert_int_equal(lk_cache_sweep(c, 2001, 1000, &removed), 0);
    assert_int_equal(removed, 1);
    assert_int_equal(lk_cache_sweep(c, 2001, 1000, &removed), 0);
    assert_int_equal(removed, 0);
    assert_int_equal(lk_cache_sweep(c, 9999, 1000, &removed), 0);
    assert_int_equal(removed, 50);
    assert_int_equal(lk_cache_count(c, &n), 0);
    assert_int_equal(n, 0);
    lk_cache_destroy(&c);
}

static void test_readonly_missing(void **state)
{
    struct fixture *f = *state;
    lk_cache_t *c = (lk_cache_t *)&c; /* not NULL: must be reset */
    /* No directory at all. */
    assert_int_equal(lk_cache_open(f->env, MAP, 1, &c), -ENOENT);
    assert_null(c);
    /* A directory without an environment. */
    assert_int_equal(mkdir(f->env, 0700), 0);
    assert_int_equal(lk_cache_open(f->env, MAP, 1, &c), -ENOENT);
    assert_null(c);
    /* An environment without the sessions database (made with raw LMDB). */
    char other[160];
    snprintf(other, sizeof other, "%s/bare", f->dir);
    assert_int_equal(mkdir(other, 0700), 0);
    MDB_env *env;
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_open(env, other, 0, 0600), 0);
    mdb_env_close(env);
    assert_int_equal(lk_cache_open(other, MAP, 1, &c), -ENOENT);
    assert_null(c);
    /* Bad arguments. */
    assert_int_equal(lk_cache_open(NULL, MAP, 0, &c), -EINVAL);
    assert_int_equal(lk_cache_open("", MAP, 0, &c), -EINVAL);
    /* A read-write open of a path under a file fails with the errno. */
    char file[160];
    snprintf(file, sizeof file, "%s/file", f->dir);
    FILE *fp = fopen(file, "w");
    assert_non_null(fp);
    fclose(fp);
    snprintf(other, sizeof other, "%s/file/env", f->dir);
    assert_int_equal(lk_cache_open(other, MAP, 0, &c), -ENOTDIR);
    assert_null(c);
}

static void test_corrupt_values(void **state)
{
    struct fixture *f = *state;
    lk_cache_t *c = s_open_rw(f->env, MAP);
    struct lk_session s, got;
    uint8_t good[S_VALUE_MAX];
    s_session(&s, 5, 1, 1000000);
    size_t glen = s_encode(&s, good);
    assert_int_equal(glen, S_HDR_LEN + strlen("user5@example.com"));

    /* Each one a well-formed value with one thing wrong. */
    uint8_t bad[8][S_VALUE_MAX + 8];
    size_t blen[8];
    for (int i = 0; i < 8; i++) {
        memcpy(bad[i], good, glen);
        blen[i] = glen;
    }
    blen[0] = 0;              /* empty */
    blen[1] = 10;             /* short header */
    bad[2][0] = S_FORMAT + 1; /* unknown format version */
    blen[3] = glen - 1;       /* email cut short */
    bad[4][33] = 0;           /* email length 0 */
    blen[4] = S_HDR_LEN;
    bad[5][S_HDR_LEN + 2] = '\0';  /* NUL inside the email */
    memset(bad[6] + glen, 'x', 3); /* trailing bytes */
    blen[6] = glen + 3;
    memset(bad[7] + S_HDR_LEN, 'e', 255); /* email length 255 */
    bad[7][33] = 255;
    blen[7] = S_HDR_LEN + 255;

    MDB_txn *txn;
    assert_int_equal(mdb_txn_begin(c->env, NULL, 0, &txn), 0);
    for (uint32_t i = 0; i < 8; i++) {
        uint8_t h[32];
        s_hash(h, 100 + i);
        MDB_val k = {32, h}, v = {blen[i], bad[i]};
        assert_int_equal(mdb_put(txn, c->dbi, &k, &v, 0), 0);
    }
    /* A wrong-size key is just never found (keys are always 32 bytes). */
    MDB_val k = {5, "short"}, v = {glen, good};
    assert_int_equal(mdb_put(txn, c->dbi, &k, &v, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);

    for (uint32_t i = 0; i < 8; i++) {
        uint8_t h[32];
        s_hash(h, 100 + i);
        if (lk_cache_session_get(c, h, 2, &got) != LK_ENOTFOUND)
            fail_msg("corrupt value %u served", i);
    }
    /* The sweeper collects them, and only them (the short-key entry is well formed). */
    size_t removed, n;
    assert_int_equal(lk_cache_sweep(c, 0, 100, &removed), 0);
    assert_int_equal(removed, 8);
    assert_int_equal(lk_cache_count(c, &n), 0);
    assert_int_equal(n, 1);
    lk_cache_destroy(&c);
}

static void test_map_full(void **state)
{
    struct fixture *f = *state;
    lk_cache_t *c = s_open_rw(f->env, 64 * 1024);
    struct lk_session s, got;
    uint8_t h[32];
    uint32_t i;
    int rc = 0;
    /* A sweep of a full map frees room in one chunk when whole leaf pages empty out (their
     * pages are reused within the transaction). */
    s_scan_chunk = 8192;
    for (i = 0; i < 100000; i++) {
        s_hash(h, i);
        s_session(&s, i, 1, 1000000);
        rc = lk_cache_session_put(c, h, &s);
        if (rc != 0)
            break;
    }
    assert_int_equal(rc, LK_ECACHE);
    assert_true(i > 10);
    /* The environment is still usable: reads work, and deleting makes room again. */
    s_hash(h, 0);
    assert_int_equal(lk_cache_session_get(c, h, 2, &got), 0);
    size_t removed;
    assert_int_equal(lk_cache_sweep(c, INT64_MAX, 100, &removed), 0);
    assert_int_equal(removed, i < 100 ? i : 100);
    s_hash(h, i);
    assert_int_equal(lk_cache_session_put(c, h, &s), 0);
    assert_int_equal(lk_cache_session_get(c, h, 2, &got), 0);
    lk_cache_destroy(&c);
}

/* With a ceiling the map doubles instead of failing, up to the ceiling exactly. */
static void test_map_grows(void **state)
{
    struct fixture *f = *state;
    lk_cache_t *c = s_open_rw(f->env, 64 * 1024);
    lk_cache_set_max_map(c, 1024 * 1024);
    struct lk_session s, got;
    struct lk_cache_stats st;
    uint8_t h[32];
    uint32_t i;
    int rc = 0;
    for (i = 0; i < 2000; i++) { /* ~600 KiB of entries: far past 64 KiB */
        s_hash(h, i);
        s_session(&s, i, 1, 1000000);
        assert_int_equal(lk_cache_session_put(c, h, &s), 0);
    }
    assert_int_equal(lk_cache_stats(c, &st), 0);
    assert_true(st.map_size > 64 * 1024);
    for (; i < 100000; i++) {
        s_hash(h, i);
        s_session(&s, i, 1, 1000000);
        if ((rc = lk_cache_session_put(c, h, &s)) != 0)
            break;
    }
    assert_int_equal(rc, LK_ECACHE); /* at the ceiling: the write fails as before */
    assert_int_equal(lk_cache_stats(c, &st), 0);
    assert_int_equal(st.map_size, 1024 * 1024);
    s_hash(h, 1999);
    assert_int_equal(lk_cache_session_get(c, h, 2, &got), 0);
    /* The throttle counters grow it too (a fresh environment: 64 KiB, ceiling 1 MiB). */
    lk_cache_destroy(&c);
    char env2[160];
    snprintf(env2, sizeof env2, "%s/env2", f->dir);
    c = s_open_rw(env2, 64 * 1024);
    lk_cache_set_max_map(c, 1024 * 1024);
    int64_t retry;
    for (uint32_t j = 0; j < 3000; j++) { /* ~3000 x (32 + 21 bytes + overhead): past 64 KiB */
        s_hash(h, j);
        assert_int_equal(lk_cache_throttle_acquire(c, h, 1, 0, 0, 0, &retry), 0);
    }
    assert_int_equal(lk_cache_stats(c, &st), 0);
    assert_true(st.map_size > 64 * 1024);
    /* The bulk put grows too. */
    lk_cache_destroy(&c);
    c = s_open_rw(f->env, 0);
    lk_cache_set_max_map(c, 4 * 1024 * 1024);
    static uint8_t hs[2000][32];
    static struct lk_session ss[2000];
    for (uint32_t j = 0; j < 2000; j++) {
        s_hash(hs[j], 200000 + j);
        s_session(&ss[j], j, 1, 1000000);
    }
    size_t added;
    assert_int_equal(lk_cache_sessions_put_many(c, (const uint8_t(*)[32])hs, ss, 2000, &added), 0);
    assert_int_equal(added, 2000);
    lk_cache_destroy(&c);
}

/* The meta values: absent, put, seen by a read-only handle in another process, deleted. */
static void test_meta(void **state)
{
    struct fixture *f = *state;
    lk_cache_t *c = s_open_rw(f->env, MAP);
    char v[32];
    assert_int_equal(lk_cache_meta_get(c, LK_CACHE_META_WARM, v, sizeof v), LK_ENOTFOUND);
    assert_int_equal(lk_cache_meta_put(c, LK_CACHE_META_WARM, "12345"), 0);
    assert_int_equal(lk_cache_meta_get(c, LK_CACHE_META_WARM, v, sizeof v), 0);
    assert_string_equal(v, "12345");
    /* Not inherited by the child (it could not close it: see test_reader_check). */
    lk_cache_destroy(&c);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        lk_cache_t *r = NULL;
        char w[4];
        int ok = lk_cache_open(f->env, 0, 1, &r) == 0 &&
                 lk_cache_meta_get(r, LK_CACHE_META_WARM, w, sizeof w) == 0 &&
                 strcmp(w, "123") == 0 && /* truncated to the buffer */
                 lk_cache_meta_put(r, LK_CACHE_META_WARM, NULL) == -EPERM;
        lk_cache_destroy(&r);
        _exit(ok ? 0 : 1);
    }
    s_wait_ok(pid);
    c = s_open_rw(f->env, MAP);
    assert_int_equal(lk_cache_meta_put(c, LK_CACHE_META_WARM, NULL), 0);
    assert_int_equal(lk_cache_meta_put(c, LK_CACHE_META_WARM, NULL), 0);
    assert_int_equal(lk_cache_meta_get(c, LK_CACHE_META_WARM, v, sizeof v), LK_ENOTFOUND);
    lk_cache_destroy(&c);
}

static int s_cmp32(const void *a, const void *b)
{
    return memcmp(a, b, 32);
}

/* The warm-up's merge: put_many leaves existing entries alone; prune_range deletes, within
 * its key range only, the old entries Postgres does not list and spares young ones. */
static void test_warm_merge(void **state)
{
    struct fixture *f = *state;
    lk_cache_t *c = s_open_rw(f->env, MAP);
    enum { N = 100 };
    static uint8_t all[N][32], keep[N][32];
    struct lk_session s, got;
    size_t nkeep = 0, added, removed;
    for (uint32_t i = 0; i < N; i++)
        s_hash(all[i], i);
    qsort(all, N, 32, s_cmp32);
    /* The cache holds every entry; "Postgres" holds the even ones; entry 1 is young. */
    for (uint32_t i = 0; i < N; i++) {
        s_session(&s, i, i == 1 ? 500 : 1, 1000000);
        assert_int_equal(lk_cache_session_put(c, all[i], &s), 0);
        if (i % 2 == 0)
            memcpy(keep[nkeep++], all[i], 32);
    }
    /* put_many: existing entries are not overwritten (expiry 7 would make them dead). */
    struct lk_session rows[N / 2];
    for (size_t i = 0; i < nkeep; i++)
        s_session(&rows[i], 9999, 1, 7);
    assert_int_equal(lk_cache_sessions_put_many(c, (const uint8_t(*)[32])keep, rows, nkeep, &added),
                     0);
    assert_int_equal(added, 0);
    assert_int_equal(lk_cache_session_get(c, keep[0], 100, &got), 0);
    /* First range: (zero, all[49]] with the even ones of it kept. */
    uint8_t zero[32] = {0};
    assert_int_equal(lk_cache_sessions_prune_range(c, zero, all[49], (const uint8_t(*)[32])keep, 25,
                                                   100, &removed),
                     0);
    assert_int_equal(removed, 24); /* odd ones 3..49: entry 1 is young */
    assert_int_equal(lk_cache_session_get(c, all[1], 2, &got), 0);
    assert_int_equal(lk_cache_session_get(c, all[51], 2, &got), 0); /* out of range */
    /* Last range: (all[49], end) */
    assert_int_equal(lk_cache_sessions_prune_range(
                         c, all[49], NULL, (const uint8_t(*)[32])keep + 25, 25, 100, &removed),
                     0);
    assert_int_equal(removed, 25);
    size_t count;
    assert_int_equal(lk_cache_count(c, &count), 0);
    assert_int_equal(count, 51);
    for (uint32_t i = 0; i < N; i++)
        assert_int_equal(lk_cache_session_get(c, all[i], 2, &got),
                         i % 2 == 0 || i == 1 ? 0 : LK_ENOTFOUND);
    /* Absent entries are added (deleted by the sweeper's del_many, not revoked: a revoked
     * one is not, see test_revoked). */
    assert_int_equal(lk_cache_sessions_del_many(c, (const uint8_t(*)[32])keep + 3, 1, &removed), 0);
    assert_int_equal(removed, 1);
    assert_int_equal(lk_cache_sessions_put_many(c, (const uint8_t(*)[32])keep, rows, nkeep, &added),
                     0);
    assert_int_equal(added, 1);
    /* del_many: present ones counted, absent ones skipped, one transaction. */
    assert_int_equal(lk_cache_sessions_del_many(c, (const uint8_t(*)[32])all, 4, &removed), 0);
    assert_int_equal(removed, 3); /* all[0], all[1], all[2]; all[3] was pruned */
    assert_int_equal(lk_cache_session_get(c, all[0], 2, &got), LK_ENOTFOUND);
    assert_int_equal(lk_cache_session_get(c, all[4], 2, &got), 0);
    lk_cache_destroy(&c);
}

/* A reader that dies holding its slot (every lk_cache_t holds one) is cleared. */
static void test_reader_check(void **state)
{
    struct fixture *f = *state;
    lk_cache_t *c = s_open_rw(f->env, MAP);
    lk_cache_destroy(&c);
    /* The checking handle must stay open across the child's death: the first process to
     * open an environment nobody else has open resets its reader table. It is read-only
     * because a forked child inherits it and cannot close it (its rtxn's slot is ours): a
     * read-write env would also leave LMDB's interior-pointer free list "possibly lost" in
     * the child under valgrind. */
    assert_int_equal(lk_cache_open(f->env, 0, 1, &c), 0);
    int dead = -1;
    assert_int_equal(lk_cache_reader_check(c, &dead), 0);
    assert_int_equal(dead, 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        lk_cache_t *r = NULL;
        _exit(lk_cache_open(f->env, 0, 1, &r) == 0 ? 0 : 1); /* no destroy: "crash" */
    }
    s_wait_ok(pid);
    assert_int_equal(lk_cache_reader_check(c, &dead), 0);
    assert_int_equal(dead, 1);
    assert_int_equal(lk_cache_reader_check(c, &dead), 0);
    assert_int_equal(dead, 0);
    lk_cache_destroy(&c);
}

/* lk_cache_stats: the map size, pages in use, sessions, reader slots in use (ours). */
static void test_stats(void **state)
{
    struct fixture *f = *state;
    lk_cache_t *c = s_open_rw(f->env, MAP);
    struct lk_cache_stats st;
    struct lk_session s;
    uint8_t h[32];

    assert_int_equal(lk_cache_stats(c, &st), 0);
    assert_int_equal(st.map_size, MAP);
    assert_int_equal(st.sessions, 0);
    assert_true(st.used > 0 && st.used <= MAP);
    assert_true(st.readers >= 1 && st.readers <= st.max_readers);
    size_t used = st.used;
    for (uint32_t i = 0; i < 50; i++) {
        s_hash(h, i);
        s_session(&s, i, 1, 1000000);
        assert_int_equal(lk_cache_session_put(c, h, &s), 0);
    }
    assert_int_equal(lk_cache_stats(c, &st), 0);
    assert_int_equal(st.sessions, 50);
    assert_true(st.used > used);
    lk_cache_destroy(&c);
}

static void test_throttle_sequence(void **state)
{
    struct fixture *f = *state;
    lk_cache_t *c = s_open_rw(f->env, MAP);
    uint8_t k[32], other[32];
    s_hash(k, 7);
    s_hash(other, 8);
    int64_t retry = -1, now = 1000000;
    /* limit 5: five attempts proceed, the fifth sets a 1 s lock. */
    for (int i = 0; i < 5; i++) {
        assert_int_equal(lk_cache_throttle_acquire(c, k, now, 5, 1000, 900000, &retry), 0);
        assert_int_equal(retry, 0);
    }
    assert_int_equal(lk_cache_throttle_acquire(c, k, now + 10, 5, 1000, 900000, &retry), LK_ELIMITED);
    assert_int_equal(retry, 990);
    /* Other keys are untouched. */
    assert_int_equal(lk_cache_throttle_acquire(c, other, now, 5, 1000, 900000, &retry), 0);
    /* After the lock: one more attempt, and the lock doubles. */
    now += 1000;
    assert_int_equal(lk_cache_throttle_acquire(c, k, now, 5, 1000, 900000, &retry), 0);
    assert_int_equal(lk_cache_throttle_acquire(c, k, now + 1999, 5, 1000, 900000, &retry), LK_ELIMITED);
    assert_int_equal(retry, 1);
    /* Growth is capped. */
    for (int i = 0; i < 40; i++) {
        now += 1000000;
        assert_int_equal(lk_cache_throttle_acquire(c, k, now, 5, 1000, 900000, &retry), 0);
    }
    assert_int_equal(lk_cache_throttle_acquire(c, k, now, 5, 1000, 900000, &retry), LK_ELIMITED);
    assert_int_equal(retry, 900000);
    /* A success resets. */
    assert_int_equal(lk_cache_throttle_reset(c, k), 0);
    assert_int_equal(lk_cache_throttle_reset(c, k), 0);
    assert_int_equal(lk_cache_throttle_acquire(c, k, now, 5, 1000, 900000, &retry), 0);
    /* The sweep drops records neither updated nor locked since before_ms. */
    size_t removed = 0;
    assert_int_equal(lk_cache_throttle_sweep(c, now - 1, 100, &removed), 0);
    assert_int_equal(removed, 1); /* "other", last touched at the start */
    assert_int_equal(lk_cache_throttle_sweep(c, now + 1, 100, &removed), 0);
    assert_int_equal(removed, 1);
    lk_cache_destroy(&c);

    /* Read-only handles cannot count. */
    lk_cache_t *ro = NULL;
    assert_int_equal(lk_cache_open(f->env, 0, 1, &ro), 0);
    assert_int_equal(lk_cache_throttle_acquire(ro, k, now, 5, 1000, 900000, &retry), -EPERM);
    lk_cache_destroy(&ro);
}

/* 8 processes race 20 attempts each on one key: exactly the limit gets through. */
static void test_throttle_race(void **state)
{
    struct fixture *f = *state;
    lk_cache_t *c = s_open_rw(f->env, MAP);
    lk_cache_destroy(&c);
    uint8_t k[32];
    s_hash(k, 99);
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    pid_t pids[8];
    for (int p = 0; p < 8; p++) {
        pids[p] = fork();
        assert_true(pids[p] >= 0);
        if (pids[p] == 0) {
            close(pipefd[0]);
            lk_cache_t *w = NULL;
            if (lk_cache_open(f->env, MAP, 0, &w) != 0)
                _exit(1);
            uint8_t passed = 0;
            for (int i = 0; i < 20; i++) {
                int64_t retry;
                if (lk_cache_throttle_acquire(w, k, 5000000, 5, 60000, 900000, &retry) == 0)
                    passed++;
            }
            lk_cache_destroy(&w);
            _exit(write(pipefd[1], &passed, 1) == 1 ? 0 : 1);
        }
    }
    close(pipefd[1]);
    int total = 0;
    for (int p = 0; p < 8; p++)
        s_wait_ok(pids[p]);
    uint8_t b;
    while (read(pipefd[0], &b, 1) == 1)
        total += b;
    close(pipefd[0]);
    assert_int_equal(total, 5);
}

/* The idle timeout's last-use records: creation is the default, only later uses are
 * written, a use of a missing session is not, and the sweep goes by age. */
static void test_touch(void **state)
{
    struct fixture *f = *state;
    lk_cache_t *c = s_open_rw(f->env, MAP);
    uint8_t h[3][32];
    struct lk_session s, got;
    int64_t used = -1, when[3];
    size_t w = 99, removed = 99;
    for (uint32_t i = 0; i < 3; i++)
        s_hash(h[i], 100 + i);
    s_session(&s, 1, 1000, 90000);
    assert_int_equal(lk_cache_session_put(c, h[0], &s), 0);
    s_session(&s, 2, 2000, 90000);
    assert_int_equal(lk_cache_session_put(c, h[1], &s), 0);

    assert_int_equal(lk_cache_session_get_used(c, h[0], 5000, &got, &used), 0);
    assert_int_equal(used, 1000);
    assert_int_equal(got.created_ms, 1000);
    assert_int_equal(lk_cache_session_get_used(c, h[2], 5000, &got, &used), LK_ENOTFOUND);

    /* h[2] has no session: skipped; h[1]'s use is before its creation: still written,
     * but the creation time wins on read. */
    when[0] = 7000, when[1] = 1500, when[2] = 7000;
    assert_int_equal(lk_cache_touch_many(c, (const uint8_t(*)[32])h, when, 3, &w), 0);
    assert_int_equal(w, 2);
    assert_int_equal(lk_cache_session_get_used(c, h[0], 8000, &got, &used), 0);
    assert_int_equal(used, 7000);
    assert_int_equal(lk_cache_session_get_used(c, h[1], 8000, &got, &used), 0);
    assert_int_equal(used, 2000);

    /* An earlier use never overwrites a later one (another gateway's). */
    when[0] = 6000;
    assert_int_equal(lk_cache_touch_many(c, (const uint8_t(*)[32])h, when, 1, &w), 0);
    assert_int_equal(w, 0);
    assert_int_equal(lk_cache_session_get_used(c, h[0], 8000, &got, &used), 0);
    assert_int_equal(used, 7000);
    /* Expiry still rules. */
    assert_int_equal(lk_cache_session_get_used(c, h[0], 90000, &got, &used), LK_ENOTFOUND);

    /* Sweep: records before 5000 go (h[1]'s 1500), 7000 stays. */
    assert_int_equal(lk_cache_touch_sweep(c, 5000, 100, &removed), 0);
    assert_int_equal(removed, 1);
    assert_int_equal(lk_cache_touch_sweep(c, 5000, 100, &removed), 0);
    assert_int_equal(removed, 0);
    assert_int_equal(lk_cache_touch_sweep(c, 8000, 100, &removed), 0);
    assert_int_equal(removed, 1);
    assert_int_equal(lk_cache_session_get_used(c, h[0], 8000, &got, &used), 0);
    assert_int_equal(used, 1000);
    lk_cache_destroy(&c);

    /* A read-only handle reads the records but cannot write them. */
    c = s_open_rw(f->env, MAP);
    when[0] = 9000;
    assert_int_equal(lk_cache_touch_many(c, (const uint8_t(*)[32])h, when, 1, &w), 0);
    lk_cache_destroy(&c);
    lk_cache_t *ro = NULL;
    assert_int_equal(lk_cache_open(f->env, 0, 1, &ro), 0);
    assert_int_equal(lk_cache_session_get_used(ro, h[0], 9500, &got, &used), 0);
    assert_int_equal(used, 9000);
    assert_int_equal(lk_cache_touch_many(ro, (const uint8_t(*)[32])h, when, 1, &w), -EPERM);
    assert_int_equal(lk_cache_touch_sweep(ro, 0, 1, &removed), -EPERM);
    lk_cache_destroy(&ro);
}

/* A revocation is recorded even for an absent entry, and a warm-up's put_many does not put
 * a revoked hash back; the records are swept by age. */
static void test_revoked(void **state)
{
    struct fixture *f = *state;
    lk_cache_t *c = s_open_rw(f->env, MAP);
    uint8_t h[3][32];
    struct lk_session s[3], got;
    size_t added = 99, removed = 99;
    int64_t t0 = lk_now_ms();
    for (uint32_t i = 0; i < 3; i++) {
        s_hash(h[i], 200 + i);
        s_session(&s[i], 200 + i, t0, t0 + 3600000);
    }
    /* h[0] present then revoked; h[1] revoked while absent (the race: the page holding it
     * was read before the row was deleted); h[2] never revoked. */
    assert_int_equal(lk_cache_session_put(c, h[0], &s[0]), 0);
    assert_int_equal(lk_cache_session_del(c, h[0]), 0);
    assert_int_equal(lk_cache_session_del(c, h[1]), LK_ENOTFOUND);
    assert_int_equal(lk_cache_sessions_put_many(c, (const uint8_t(*)[32])h, s, 3, &added), 0);
    assert_int_equal(added, 1);
    assert_int_equal(lk_cache_session_get(c, h[0], t0, &got), LK_ENOTFOUND);
    assert_int_equal(lk_cache_session_get(c, h[1], t0, &got), LK_ENOTFOUND);
    assert_int_equal(lk_cache_session_get(c, h[2], t0, &got), 0);
    /* Records younger than the cut stay; older ones go (and then a put is possible). */
    assert_int_equal(lk_cache_revoked_sweep(c, t0 - 1000, 100, &removed), 0);
    assert_int_equal(removed, 0);
    assert_int_equal(lk_cache_revoked_sweep(c, lk_now_ms() + 1, 100, &removed), 0);
    assert_int_equal(removed, 2);
    assert_int_equal(lk_cache_sessions_put_many(c, (const uint8_t(*)[32])h, s, 2, &added), 0);
    assert_int_equal(added, 2);
    lk_cache_destroy(&c);
    lk_cache_t *ro = NULL;
    assert_int_equal(lk_cache_open(f->env, 0, 1, &ro), 0);
    assert_int_equal(lk_cache_session_del(ro, h[0]), -EPERM);
    assert_int_equal(lk_cache_revoked_sweep(ro, 0, 1, &removed), -EPERM);
    lk_cache_destroy(&ro);
}

int main(void)
{

#define T(fn) cmocka_unit_test_setup_teardown(fn, s_setup, s_teardown)
    const struct CMUnitTest tests[] = {
        T(test_put_get_del),
        T(test_expiry),
        T(test_readonly_sees_other_process),
        T(test_map_resized_by_other_process),
        T(test_sweep),
        T(test_readonly_missing),
        T(test_corrupt_values),
        T(test_map_full),
        T(test_map_grows),
        T(test_meta),
        T(test_warm_merge),
        T(test_reader_check),
        T(test_stats),
        T(test_throttle_sequence),
        T(test_throttle_race),
        T(test_touch),
        T(test_revoked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
