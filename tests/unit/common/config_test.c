/* Unit tests of common/config.c: the key table, every value type, every error kind with
 * its line number, environment overrides, derived values, hostile input, and the two
 * documents that must list every key (latchkey.conf.example, docs/configuration.md). */
#include "common/config.c"

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

/* Loads text without the environment; asserts success. */
static void s_ok(const char *text, struct lk_config *cfg)
{
    char err[512];
    int rc = lk_config_load_string(cfg, text, "t.conf", 0, err, sizeof err);
    if (rc != 0)
        fail_msg("unexpected error: %s\n--- input:\n%s", err, text);
}

/* Loads len bytes of text; asserts LK_ECONFIG, that the message starts with
 * "t.conf:LINE: " and that it contains want. */
static void s_bad_n(const char *text, size_t len, int line, const char *want)
{
    struct lk_config cfg;
    char err[512], prefix[64];
    int rc = s_load(&cfg, text, len, "t.conf", 0, err, sizeof err);
    if (rc != LK_ECONFIG)
        fail_msg("expected an error for input:\n%.200s", text);
    snprintf(prefix, sizeof prefix, "t.conf:%d: ", line);
    if (strncmp(err, prefix, strlen(prefix)) != 0 || !strstr(err, want))
        fail_msg("error '%s' lacks '%s' or '%s'", err, prefix, want);
}

static void s_bad(const char *text, int line, const char *want)
{
    s_bad_n(text, strlen(text), line, want);
}

/* The repository root: found by climbing from the test binary (build/<v>/tests/) or
 * the working directory until SConstruct appears. */
static void s_root(char *out, size_t len)
{
    char path[4096];
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
    assert_true(n > 0);
    path[n] = '\0';
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1)
            assert_non_null(getcwd(path, sizeof path));
        for (;;) {
            char probe[4200];
            struct stat st;
            snprintf(probe, sizeof probe, "%s/SConstruct", path);
            if (stat(probe, &st) == 0) {
                snprintf(out, len, "%s", path);
                return;
            }
            char *slash = strrchr(path, '/');
            if (!slash || slash == path)
                break;
            *slash = '\0';
        }
    }
    fail_msg("repository root not found");
}

static char *s_read_file(const char *rel)
{
    char root[4096], path[4200];
    s_root(root, sizeof root);
    snprintf(path, sizeof path, "%s/%s", root, rel);
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    char *buf = malloc(1 << 20);
    assert_non_null(buf);
    size_t n = fread(buf, 1, (1 << 20) - 1, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

static void test_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < S_NKEYS; i++) {
        const struct s_key *k = &s_keys[i];
        size_t want = 0;
        switch (k->type) {
        case S_STR: want = k->size; break;
        case S_INT: want = sizeof(int); break;
        case S_BOOL: want = sizeof(int); break;
        case S_SIZE: want = sizeof(size_t); break;
        case S_DUR: want = sizeof(int64_t); break;
        case S_LEVEL: want = sizeof(enum lk_log_level); break;
        }
        if (k->size != want)
            fail_msg("%s.%s: field size %zu does not match its type", k->section, k->key, k->size);
        assert_true(s_is_name(k->section) && s_is_name(k->key));
        assert_true(k->doc && *k->doc);
        assert_true(k->off + k->size <= sizeof(struct lk_config));
        if (k->type != S_STR && k->type != S_BOOL && k->type != S_LEVEL)
            assert_true(k->min <= k->max);
        for (size_t j = 0; j < i; j++) {
            assert_false(strcmp(k->section, s_keys[j].section) == 0 &&
                         strcmp(k->key, s_keys[j].key) == 0);
            /* no two rows write the same bytes */
            assert_true(k->off >= s_keys[j].off + s_keys[j].size ||
                        s_keys[j].off >= k->off + k->size);
        }
    }
}

static void test_defaults(void **state)
{
    (void)state;
    struct lk_config c;
    char cwd[4096], want[4200];
    s_ok("", &c);
    assert_non_null(getcwd(cwd, sizeof cwd));
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    ncpu = ncpu < 1 ? 1 : ncpu > 256 ? 256 : ncpu;

    snprintf(want, sizeof want, "%s/var", cwd);
    assert_string_equal(c.paths.var, want);
    assert_string_equal(c.gateway.listen, "127.0.0.1:8080");
    snprintf(want, sizeof want, "ipc://%s/var/run/backend.ipc", cwd);
    assert_string_equal(c.gateway.backend, want);
    assert_int_equal(c.gateway.count, 1);
    assert_int_equal(c.gateway.max_connections, 4096);
    assert_int_equal(c.gateway.max_uri, 4096);
    assert_int_equal(c.gateway.max_header, 8192);
    assert_int_equal(c.gateway.max_body, 65536);
    assert_int_equal(c.gateway.max_batch_body, 10 * 1024 * 1024);
    assert_int_equal(c.gateway.header_timeout_ms, 10000);
    assert_int_equal(c.gateway.idle_timeout_ms, 60000);
    assert_int_equal(c.gateway.route_timeout_ms, 30000);
    assert_int_equal(c.gateway.drain_timeout_ms, 10000);
    assert_int_equal(c.gateway.heartbeat_ms, 1000);
    assert_int_equal(c.signup.count, ncpu);
    assert_int_equal(c.signin.count, ncpu);
    assert_int_equal(c.session.ttl_ms, 24LL * 3600 * 1000);
    assert_int_equal(c.password.min_length, 8);
    assert_int_equal(c.password.max_bytes, 1024);
    assert_int_equal(c.hash.ops, 2);
    assert_int_equal(c.hash.mem, 19 * 1024 * 1024);
    assert_string_equal(c.database.url, "");
    assert_string_equal(c.postgres.user, "latchkey");
    assert_string_equal(c.postgres.bindir, "");
    snprintf(want, sizeof want, "%s/var/cache", cwd);
    assert_string_equal(c.cache.path, want);
    assert_int_equal(c.cache.map_size, 1024LL * 1024 * 1024);
    assert_int_equal(c.sweeper.interval_ms, 60000);
    assert_int_equal(c.sweeper.grace_ms, 3600000);
    snprintf(want, sizeof want, "ipc://%s/var/run/metrics.ipc", cwd);
    assert_string_equal(c.metrics.endpoint, want);
    snprintf(want, sizeof want, "ipc://%s/var/run/control.ipc", cwd);
    assert_string_equal(c.supervisor.control, want);
    assert_int_equal(c.supervisor.restart_delay_ms, 5000);
    assert_int_equal(c.supervisor.restart_max, 5);
    assert_int_equal(c.supervisor.restart_window_ms, 300000);
    assert_int_equal(c.supervisor.stop_timeout_ms, 10000);
    assert_int_equal(c.log.level, LK_LOG_INFO);

    /* NULL path: the same defaults through lk_config_load. */
    struct lk_config d;
    char err[256];
    assert_int_equal(lk_config_load(&d, NULL, err, sizeof err), 0);
    assert_string_equal(d.paths.var, c.paths.var);
    assert_int_equal(d.session.ttl_ms, c.session.ttl_ms);
}

static void test_duration(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int64_t ms;
    } good[] = {{"250ms", 250}, {"3s", 3000},        {"5m", 300000},
                {"24h", 86400000}, {"0s", 0},        {"0ms", 0},
                {"9223372036854775807ms", INT64_MAX}, {"2562047788015h", 2562047788015LL * 3600000}};
    static const char *const bad[] = {
        "3", "3x", "-1s", "99999999999999999999h", "", "s", " 3s", "3s ", "3 s", "3S",
        "1.5s", "+3s", "3sec", "3ms5", "1h30m", "2562047788016h", "9223372036854775808ms",
        "0x10s", "3d"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        int64_t ms = -1;
        assert_int_equal(lk_parse_duration(good[i].s, &ms), 0);
        assert_int_equal(ms, good[i].ms);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int64_t ms = 12345;
        if (lk_parse_duration(bad[i], &ms) != LK_EINVAL)
            fail_msg("duration '%s' accepted", bad[i]);
        assert_int_equal(ms, 12345);
    }
    assert_int_equal(lk_parse_duration(NULL, &(int64_t){0}), LK_EINVAL);
}

static void test_size(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        size_t b;
    } good[] = {{"0", 0},           {"65536", 65536},       {"64K", 65536},
                {"64KiB", 65536},   {"10M", 10485760},      {"10MiB", 10485760},
                {"1G", 1073741824}, {"1GiB", 1073741824},   {"18446744073709551615", SIZE_MAX},
                {"17179869183G", (size_t)17179869183ULL << 30}};
    static const char *const bad[] = {
        "", "-1", "1KB", "1k", "1kib", "1.5M", " 1", "1 K", "K", "1T",
        "18446744073709551616", "17179869184G", "1Ki", "0x10", "+1", "1B", "1KiBs"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        size_t b = 1;
        if (lk_parse_size(good[i].s, &b) != 0)
            fail_msg("size '%s' refused", good[i].s);
        assert_true(b == good[i].b);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t b = 7;
        if (lk_parse_size(bad[i], &b) != LK_EINVAL)
            fail_msg("size '%s' accepted", bad[i]);
        assert_int_equal(b, 7);
    }
}

static void test_bool_and_int(void **state)
{
    (void)state;
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    static const char *const bad[] = {"", "TRUE", "Yes", "2", "y", "n", "enable", " true"};
    int b;
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(s_parse_bool(yes[i], &b), 0);
        assert_int_equal(b, 1);
        assert_int_equal(s_parse_bool(no[i], &b), 0);
        assert_int_equal(b, 0);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(s_parse_bool(bad[i], &b), LK_EINVAL);

    /* The table has no bool key yet; drive s_set with a synthetic row so the type's
     * error message is covered too. */
    struct {
        int flag;
    } target = {0};
    struct s_key k = {"x", "flag", S_BOOL, "no", 0, 0, 0, 0, sizeof(int), "doc"};
    char msg[256];
    assert_int_equal(s_set(&k, "on", (struct lk_config *)(void *)&target, msg, sizeof msg), 0);
    assert_int_equal(target.flag, 1);
    assert_int_equal(s_set(&k, "maybe", (struct lk_config *)(void *)&target, msg, sizeof msg),
                     LK_ECONFIG);
    assert_non_null(strstr(msg, "x.flag: invalid boolean"));

    int64_t v;
    assert_int_equal(s_parse_int("0", &v), 0);
    assert_int_equal(s_parse_int("-42", &v), 0);
    assert_int_equal(v, -42);
    assert_int_equal(s_parse_int("9223372036854775807", &v), 0);
    assert_int_equal(v, INT64_MAX);
    static const char *const ibad[] = {"", "-", "+1", "1x", "x1", "1.0", " 1",
                                       "9223372036854775808", "99999999999999999999", "--1"};
    for (size_t i = 0; i < sizeof ibad / sizeof ibad[0]; i++)
        assert_int_equal(s_parse_int(ibad[i], &v), LK_EINVAL);
}

static void test_good_values(void **state)
{
    (void)state;
    struct lk_config c;
    s_ok("# a full file\n"
         "; another comment style\n"
         "\n"
         "[paths]\n"
         "var = /srv/latchkey\n"
         "[ gateway ]  # trailing comment\n"
         "\tlisten\t=\t0.0.0.0:9090\t\n"
         "count = 64\n"
         "max_connections = 1\n"
         "max_uri = 256\n"
         "max_header = 1MiB\n"
         "max_body = 1K\n"
         "max_batch_body = 1G\n"
         "header_timeout = 100ms\n"
         "idle_timeout = 24h\n"
         "route_timeout = 1h\n"
         "drain_timeout = 0s\n"
         "heartbeat = 10ms\n"
         "backend = tcp://0.0.0.0:5555 # comment after a value\n"
         "[signup]\ncount = 3\n"
         "[signin]\ncount = 256\n"
         "[session]\nttl = 1s\n"
         "[password]\nmin_length = 1\nmax_bytes = 1024\n"
         "[hash]\nops = 10\nmem = 8KiB\n"
         "[database]\nurl = \"postgres://u:p w@h/db?x=1#frag\"\n"
         "[postgres]\nuser = pg\nbindir = /usr/lib/postgresql/15/bin\n"
         "[cache]\npath = /mnt/cache\nmap_size = 1MiB\n"
         "[sweeper]\ninterval = 1s\ngrace = 0ms\n"
         "[metrics]\nendpoint = tcp://127.0.0.1:7000\n"
         "[supervisor]\ncontrol = ipc:///run/lk.ipc\nrestart_delay = 100ms\nrestart_max = 0\n"
         "restart_window = 24h\nstop_timeout = 1h\n"
         "[log]\nlevel = debug\n",
         &c);
    assert_string_equal(c.paths.var, "/srv/latchkey");
    assert_string_equal(c.gateway.listen, "0.0.0.0:9090");
    assert_string_equal(c.gateway.backend, "tcp://0.0.0.0:5555");
    assert_int_equal(c.gateway.count, 64);
    assert_int_equal(c.gateway.max_connections, 1);
    assert_int_equal(c.gateway.max_uri, 256);
    assert_int_equal(c.gateway.max_header, 1048576);
    assert_int_equal(c.gateway.max_body, 1024);
    assert_int_equal(c.gateway.max_batch_body, 1073741824);
    assert_int_equal(c.gateway.header_timeout_ms, 100);
    assert_int_equal(c.gateway.idle_timeout_ms, 86400000);
    assert_int_equal(c.gateway.route_timeout_ms, 3600000);
    assert_int_equal(c.gateway.drain_timeout_ms, 0);
    assert_int_equal(c.gateway.heartbeat_ms, 10);
    assert_int_equal(c.signup.count, 3);
    assert_int_equal(c.signin.count, 256);
    assert_int_equal(c.session.ttl_ms, 1000);
    assert_int_equal(c.password.min_length, 1);
    assert_int_equal(c.hash.ops, 10);
    assert_int_equal(c.hash.mem, 8192);
    assert_string_equal(c.database.url, "postgres://u:p w@h/db?x=1#frag");
    assert_string_equal(c.postgres.user, "pg");
    assert_string_equal(c.postgres.bindir, "/usr/lib/postgresql/15/bin");
    assert_string_equal(c.cache.path, "/mnt/cache");
    assert_int_equal(c.cache.map_size, 1048576);
    assert_int_equal(c.sweeper.interval_ms, 1000);
    assert_int_equal(c.sweeper.grace_ms, 0);
    assert_string_equal(c.metrics.endpoint, "tcp://127.0.0.1:7000");
    assert_string_equal(c.supervisor.control, "ipc:///run/lk.ipc");
    assert_int_equal(c.supervisor.restart_delay_ms, 100);
    assert_int_equal(c.supervisor.restart_max, 0);
    assert_int_equal(c.supervisor.restart_window_ms, 86400000);
    assert_int_equal(c.supervisor.stop_timeout_ms, 3600000);
    assert_int_equal(c.log.level, LK_LOG_DEBUG);

    /* Quoting, escapes, '#' inside unquoted values, CRLF, a section given twice. */
    s_ok("[database]\r\nurl = \"  a \\\"q\\\" \\\\ # b  \"   # c\r\n", &c);
    assert_string_equal(c.database.url, "  a \"q\" \\ # b  ");
    s_ok("[database]\nurl = postgres://h/db#x ; not a comment\n", &c);
    assert_string_equal(c.database.url, "postgres://h/db#x ; not a comment");
    s_ok("[database]\nurl =\n", &c);
    assert_string_equal(c.database.url, "");
    s_ok("[database]\nurl = \"\"\n", &c);
    assert_string_equal(c.database.url, "");
    s_ok("[gateway]\ncount = 2\n[log]\nlevel = warn\n[gateway]\nmax_connections = 7\n", &c);
    assert_int_equal(c.gateway.count, 2);
    assert_int_equal(c.gateway.max_connections, 7);
    assert_int_equal(c.log.level, LK_LOG_WARN);
    s_ok("[log]\nlevel = error", &c); /* no final newline */
    assert_int_equal(c.log.level, LK_LOG_ERROR);

    /* Strings exactly at their buffer's capacity. */
    char text[2048], big[1024];
    memset(big, 'u', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    snprintf(text, sizeof text, "[database]\nurl = %s\n", big);
    s_ok(text, &c);
    assert_int_equal(strlen(c.database.url), 1023);
}

static void test_errors(void **state)
{
    (void)state;
    /* One case per error kind, each on line 3 unless the kind needs otherwise. */
    s_bad("# c\n\n[nosuch]\n", 3, "unknown section [nosuch]");
    s_bad("[gateway]\n\nnosuch = 1\n", 3, "unknown key 'nosuch' in section [gateway]");
    s_bad("[gateway]\n\nttl = 1s\n", 3, "unknown key 'ttl'");
    s_bad("\n# c\ncount = 1\n", 3, "outside any [section]");
    s_bad("[gateway]\ncount = 1\ncount = 2\n", 3, "duplicate key gateway.count (first set on line 2)");
    s_bad("[gateway]\ncount = 1\n[gateway]\ncount = 2\n", 4, "duplicate key");
    s_bad("[gateway]\n\njunk line\n", 3, "malformed line");
    s_bad("[gateway]\n\n[gateway\n", 3, "malformed section header");
    s_bad("[gateway]\n\n[]\n", 3, "malformed section header");
    s_bad("[gateway]\n\n[gateway] x\n", 3, "malformed section header");
    s_bad("[gateway]\n\n[Gateway]\n", 3, "malformed section header");
    s_bad("[gateway]\n\n= 5\n", 3, "malformed key");
    s_bad("[gateway]\n\nCount = 5\n", 3, "malformed key");
    s_bad("[gateway]\n\nmax body = 5\n", 3, "malformed key");
    s_bad("[gateway]\n\ncount = abc\n", 3, "gateway.count: invalid integer 'abc'");
    s_bad("[gateway]\n\ncount = 1.5\n", 3, "invalid integer");
    s_bad("[gateway]\n\ncount = 99999999999999999999\n", 3, "invalid integer");
    s_bad("[gateway]\n\ncount =\n", 3, "invalid integer");
    s_bad("[gateway]\n\ncount = 65\n", 3, "gateway.count: value '65' out of range 1..64");
    s_bad("[gateway]\n\ncount = 0\n", 3, "out of range 1..64");
    s_bad("[gateway]\n\ncount = -1\n", 3, "out of range");
    s_bad("[hash]\n\nops = 11\n", 3, "hash.ops: value '11' out of range 1..10");
    s_bad("[hash]\n\nmem = 8191\n", 3, "hash.mem: value '8191' out of range 8KiB..4GiB");
    s_bad("[hash]\n\nmem = 5G\n", 3, "out of range");
    s_bad("[hash]\n\nmem = -1\n", 3, "hash.mem: invalid size");
    s_bad("[hash]\n\nmem = 18446744073709551616\n", 3, "invalid size");
    s_bad("[hash]\n\nmem = 1 K\n", 3, "invalid size");
    s_bad("[session]\n\nttl = 3\n", 3, "session.ttl: invalid duration '3'");
    s_bad("[session]\n\nttl = 3x\n", 3, "invalid duration");
    s_bad("[session]\n\nttl = -1s\n", 3, "invalid duration");
    s_bad("[session]\n\nttl = 99999999999999999999h\n", 3, "invalid duration");
    s_bad("[session]\n\nttl = \"\"\n", 3, "invalid duration");
    s_bad("[session]\n\nttl = 999ms\n", 3, "session.ttl: value '999ms' out of range 1s..8760h");
    s_bad("[session]\n\nttl = 9000h\n", 3, "out of range");
    s_bad("[sweeper]\n\ngrace = 721h\n", 3, "out of range 0ms..720h");
    s_bad("[log]\n\nlevel = verbose\n", 3, "log.level: invalid level 'verbose'");
    s_bad("[log]\n\nlevel = INFO\n", 3, "invalid level");
    s_bad("[paths]\n\nvar =\n", 3, "paths.var: value must not be empty");
    s_bad("[postgres]\n\nuser = \"\"\n", 3, "must not be empty");
    s_bad("[database]\n\nurl = \"abc\n", 3, "unterminated quoted value");
    s_bad("[database]\n\nurl = \"a\\nb\"\n", 3, "invalid escape");
    s_bad("[database]\n\nurl = \"a\" b\n", 3, "unexpected text after quoted value");
    s_bad("[database]\n\nurl = a\"b\n", 3, "unexpected '\"'");
    s_bad("[database]\n\nurl = \"a\" ; c\n", 3, "unexpected text after quoted value");
    s_bad("[gateway] ; c\n", 1, "malformed section header");
    s_bad("[password]\nmin_length = 20\nmax_bytes = 1025\n", 3, "out of range 1..1KiB");

    /* Too long for the buffer: the value is not echoed (it may hold a secret). */
    char text[8192], big[2048];
    memset(big, 'p', 1024);
    big[1024] = '\0';
    snprintf(text, sizeof text, "[database]\n\nurl = %s\n", big);
    s_bad(text, 3, "database.url: value too long (1024 bytes, at most 1023)");
    struct lk_config c;
    char err[512];
    assert_int_equal(lk_config_load_string(&c, text, "t.conf", 0, err, sizeof err), LK_ECONFIG);
    assert_null(strstr(err, "pppp"));
    memset(big, 'h', 128);
    big[128] = '\0';
    snprintf(text, sizeof text, "[gateway]\n\nlisten = %s\n", big);
    s_bad(text, 3, "gateway.listen: value too long (128 bytes, at most 127)");

    /* NUL byte, overlong line, control characters. */
    static const char nul[] = "[gateway]\n\ncou\0nt = 1\n";
    s_bad_n(nul, sizeof nul - 1, 3, "NUL byte in line");
    static const char nul2[] = "[gateway]\n\n\0";
    s_bad_n(nul2, sizeof nul2 - 1, 3, "NUL byte");
    memset(text, 'a', 5000);
    memcpy(text, "[gateway]\n\n# ", 13);
    text[5000] = '\0';
    s_bad(text, 3, "line too long");
    s_bad("[gateway]\n\ncount = 1\x01\n", 3, "control character");
    s_bad("[gateway]\n\ncount = 1\r2\n", 3, "control character");
    s_bad("[gateway]\n\n\x7f\n", 3, "control character");

    /* Cross-key and derived-value errors name the file but no line. */
    assert_int_equal(lk_config_load_string(&c, "[password]\nmin_length = 20\nmax_bytes = 10\n",
                                           "t.conf", 0, err, sizeof err),
                     LK_ECONFIG);
    assert_string_equal(err, "t.conf: password.min_length (20) exceeds password.max_bytes (10)");

    /* A NULL or tiny error buffer is safe. */
    assert_int_equal(lk_config_load_string(&c, "[x]\n", "t.conf", 0, NULL, 0), LK_ECONFIG);
    assert_int_equal(lk_config_load_string(&c, "[x]\n", "t.conf", 0, err, 4), LK_ECONFIG);
    assert_string_equal(err, "t.c");
}

static void test_failed_load_keeps_config(void **state)
{
    (void)state;
    struct lk_config a, b;
    char err[256];
    s_ok("[gateway]\ncount = 3\n", &a);
    b = a;
    assert_int_equal(lk_config_load_string(&a, "[gateway]\ncount = 5\n[log]\nlevel = x\n",
                                           "t.conf", 0, err, sizeof err),
                     LK_ECONFIG);
    assert_memory_equal(&a, &b, sizeof a);
}

static void test_env(void **state)
{
    (void)state;
    struct lk_config c;
    char err[512];

    setenv("LATCHKEY_SESSION_TTL", "3s", 1);
    setenv("LATCHKEY_DATABASE_URL", "postgres://db/x", 1);
    setenv("LATCHKEY_GATEWAY_MAX_BATCH_BODY", "2MiB", 1);
    setenv("LATCHKEY_SUPERVISOR_PID", "1234", 1); /* not a key: ignored */
    /* The sweeper's overrides (issue 6): the file says one thing, the environment wins. */
    setenv("LATCHKEY_SWEEPER_INTERVAL", "2s", 1);
    setenv("LATCHKEY_SWEEPER_GRACE", "0ms", 1);
    setenv("LATCHKEY_SWEEPER_ANALYZE_AT", "", 1);
    assert_int_equal(lk_config_load_string(&c,
                                           "[session]\nttl = 5s\n[sweeper]\ninterval = 5m\n"
                                           "grace = 2h\nanalyze_at = 03:30\n",
                                           "t.conf", 1, err, sizeof err),
                     0);
    assert_int_equal(c.sweeper.interval_ms, 2000);
    assert_int_equal(c.sweeper.grace_ms, 0);
    assert_string_equal(c.sweeper.analyze_at, "");
    unsetenv("LATCHKEY_SWEEPER_INTERVAL");
    unsetenv("LATCHKEY_SWEEPER_GRACE");
    unsetenv("LATCHKEY_SWEEPER_ANALYZE_AT");
    assert_int_equal(c.session.ttl_ms, 3000);
    assert_string_equal(c.database.url, "postgres://db/x");
    assert_int_equal(c.gateway.max_batch_body, 2 * 1024 * 1024);
    static const char *const bad_at[] = {"2:00", "24:00", "12:60", "12-00", "12:000", "ab:cd"};
    for (size_t i = 0; i < sizeof bad_at / sizeof bad_at[0]; i++) {
        char text[64];
        snprintf(text, sizeof text, "[sweeper]\nanalyze_at = %s\n", bad_at[i]);
        assert_int_equal(lk_config_load_string(&c, text, "t.conf", 0, err, sizeof err), LK_ECONFIG);
        assert_non_null(strstr(err, "sweeper.analyze_at"));
    }
    assert_int_equal(lk_config_load_string(&c, "[sweeper]\nanalyze_at = 23:59\n", "t.conf", 0, err,
                                           sizeof err),
                     0);
    assert_string_equal(c.sweeper.analyze_at, "23:59");

    /* use_env = 0: the environment is not read. */
    assert_int_equal(lk_config_load_string(&c, "[session]\nttl = 5s\n", "t.conf", 0, err,
                                           sizeof err),
                     0);
    assert_int_equal(c.session.ttl_ms, 5000);
    assert_string_equal(c.database.url, "");

    /* A bad environment value is an error naming the variable. */
    setenv("LATCHKEY_SESSION_TTL", "3", 1);
    assert_int_equal(lk_config_load_string(&c, "", "t.conf", 1, err, sizeof err), LK_ECONFIG);
    assert_string_equal(err, "LATCHKEY_SESSION_TTL: session.ttl: invalid duration '3' (a whole "
                             "number with ms, s, m or h, e.g. 30s)");
    setenv("LATCHKEY_SESSION_TTL", "", 1);
    assert_int_equal(lk_config_load_string(&c, "", "t.conf", 1, err, sizeof err), LK_ECONFIG);
    assert_non_null(strstr(err, "LATCHKEY_SESSION_TTL: "));
    unsetenv("LATCHKEY_SESSION_TTL");
    setenv("LATCHKEY_GATEWAY_COUNT", "100", 1);
    assert_int_equal(lk_config_load(&c, NULL, err, sizeof err), LK_ECONFIG);
    assert_non_null(strstr(err, "LATCHKEY_GATEWAY_COUNT: gateway.count: value '100' out of range"));
    unsetenv("LATCHKEY_GATEWAY_COUNT");
    setenv("LATCHKEY_LOG_LEVEL", "debug\n", 1);
    assert_int_equal(lk_config_load(&c, NULL, err, sizeof err), LK_ECONFIG);
    assert_non_null(strstr(err, "LATCHKEY_LOG_LEVEL: log.level: control character"));
    unsetenv("LATCHKEY_LOG_LEVEL");

    unsetenv("LATCHKEY_DATABASE_URL");
    unsetenv("LATCHKEY_GATEWAY_MAX_BATCH_BODY");
    unsetenv("LATCHKEY_SUPERVISOR_PID");
    assert_int_equal(lk_config_load(&c, NULL, err, sizeof err), 0);
    assert_int_equal(c.session.ttl_ms, 86400000);
}

static void test_derived(void **state)
{
    (void)state;
    struct lk_config c;
    char cwd[4096], want[4300], err[512];
    assert_non_null(getcwd(cwd, sizeof cwd));

    s_ok("[paths]\nvar = /tmp/lk/\n", &c);
    assert_string_equal(c.paths.var, "/tmp/lk");
    assert_string_equal(c.gateway.backend, "ipc:///tmp/lk/run/backend.ipc");
    assert_string_equal(c.metrics.endpoint, "ipc:///tmp/lk/run/metrics.ipc");
    assert_string_equal(c.metrics.query_endpoint, "ipc:///tmp/lk/run/metrics-query.ipc");
    assert_string_equal(c.supervisor.control, "ipc:///tmp/lk/run/control.ipc");
    assert_string_equal(c.cache.path, "/tmp/lk/cache");

    s_ok("[paths]\nvar = ./data//\n", &c);
    snprintf(want, sizeof want, "%s/data", cwd);
    assert_string_equal(c.paths.var, want);
    s_ok("[paths]\nvar = .\n", &c);
    assert_string_equal(c.paths.var, cwd);
    s_ok("[paths]\nvar = /\n", &c);
    assert_string_equal(c.paths.var, "/");

    /* Explicit values are kept as given. */
    s_ok("[gateway]\nbackend = tcp://10.0.0.1:5555\n[cache]\npath = /c\n", &c);
    assert_string_equal(c.gateway.backend, "tcp://10.0.0.1:5555");
    assert_string_equal(c.cache.path, "/c");

    /* ipc paths past sun_path, and derived values past their buffers, are errors. */
    char text[1200], var[600];
    memset(var, 'v', 200);
    var[0] = '/';
    var[200] = '\0';
    snprintf(text, sizeof text, "[paths]\nvar = %s\n", var);
    assert_int_equal(lk_config_load_string(&c, text, "t.conf", 0, err, sizeof err), LK_ECONFIG);
    assert_non_null(strstr(err, "t.conf: gateway.backend: ipc path longer than 107 bytes"));
    snprintf(text, sizeof text,
             "[paths]\nvar = %s\n[gateway]\nbackend = tcp://h:1\n[metrics]\nendpoint = "
             "tcp://h:2\nquery_endpoint = tcp://h:4\n[supervisor]\ncontrol = tcp://h:3\n",
             var);
    s_ok(text, &c);
    assert_string_equal(c.paths.var, var);
    memset(var, 'v', 509);
    var[0] = '/';
    var[509] = '\0';
    snprintf(text, sizeof text,
             "[paths]\nvar = %s\n[gateway]\nbackend = tcp://h:1\n[metrics]\nendpoint = "
             "tcp://h:2\nquery_endpoint = tcp://h:4\n[supervisor]\ncontrol = tcp://h:3\n",
             var);
    assert_int_equal(lk_config_load_string(&c, text, "t.conf", 0, err, sizeof err), LK_ECONFIG);
    assert_string_equal(err, "t.conf: cache.path: derived value too long (shorten paths.var)");

    /* signup/signin count 0 resolves to the online cores; other values are kept. */
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    ncpu = ncpu < 1 ? 1 : ncpu > 256 ? 256 : ncpu;
    s_ok("[signup]\ncount = 0\n[signin]\ncount = 7\n", &c);
    assert_int_equal(c.signup.count, ncpu);
    assert_int_equal(c.signin.count, 7);
}

static void test_load_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/lkcfgXXXXXX", path[128], err[512];
    struct lk_config c;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/t.conf", dir);

    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs("[session]\nttl = 2h\n", f);
    fclose(f);
    assert_int_equal(lk_config_load(&c, path, err, sizeof err), 0);
    assert_int_equal(c.session.ttl_ms, 7200000);

    /* Binary content: the NUL byte on line 2 is reported with the file's name. */
    f = fopen(path, "wb");
    assert_non_null(f);
    fwrite("[session]\n\0\xff\xfe\n", 1, 14, f);
    fclose(f);
    assert_int_equal(lk_config_load(&c, path, err, sizeof err), LK_ECONFIG);
    char want[256];
    snprintf(want, sizeof want, "%s:2: NUL byte in line", path);
    assert_string_equal(err, want);

    /* Larger than the 1 MiB cap. */
    f = fopen(path, "wb");
    assert_non_null(f);
    for (int i = 0; i < (1 << 20) / 8 + 1; i++)
        fputs("# xxxxx\n", f);
    fclose(f);
    assert_int_equal(lk_config_load(&c, path, err, sizeof err), LK_ECONFIG);
    assert_non_null(strstr(err, "file too large"));

    unlink(path);
    assert_int_equal(lk_config_load(&c, path, err, sizeof err), LK_ECONFIG);
    assert_non_null(strstr(err, "cannot open"));
    assert_int_equal(lk_config_load(&c, dir, err, sizeof err), LK_ECONFIG); /* a directory */
    rmdir(dir);
}

/* xorshift64: a fixed seed keeps failures reproducible. */
static uint64_t s_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void test_hostile(void **state)
{
    (void)state;
    uint64_t seed = 0x9e3779b97f4a7c15ULL;
    static const char alphabet[] = "[]=#;\"\\ \t\nabcgatewaycountlisten019KMGhms-_.\r\x01\x80";
    char *buf = malloc(8192);
    assert_non_null(buf);
    for (int iter = 0; iter < 20000; iter++) {
        size_t len = s_rand(&seed) % 8192;
        int mode = iter % 3;
        for (size_t i = 0; i < len; i++) {
            uint64_t r = s_rand(&seed);
            buf[i] = mode == 0 ? (char)r : alphabet[r % (sizeof alphabet - 1)];
        }
        if (mode == 2 && len > 12)
            memcpy(buf, "[gateway]\nco", 12);
        struct lk_config c;
        char err[128];
        err[0] = 'x';
        int rc = s_load(&c, buf, len, "junk", 0, err, sizeof err);
        assert_true(rc == 0 || rc == LK_ECONFIG);
        assert_non_null(memchr(err, '\0', sizeof err));
        if (rc != 0)
            assert_int_equal(strncmp(err, "junk:", 5), 0);
    }
    free(buf);

    /* One very long line of junk, and a huge number of empty lines. */
    size_t big = 1 << 20;
    buf = malloc(big + 1);
    assert_non_null(buf);
    memset(buf, 'A', big);
    buf[big] = '\0';
    s_bad(buf, 1, "line too long");
    memset(buf, '\n', big);
    struct lk_config c;
    s_ok(buf, &c);
    free(buf);
}

static void test_check_reload(void **state)
{
    (void)state;
    /* Exactly these keys are reloadable. */
    static const char *const reloadable[] = {
        "gateway.header_timeout", "gateway.idle_timeout", "gateway.route_timeout",
        "gateway.drain_timeout", "signup.count", "signin.count", "session.ttl",
        "sweeper.interval", "sweeper.grace", "sweeper.analyze_at", "log.level", "signup.repeat_window",
        "throttle.max_failures", "throttle.base_delay", "throttle.max_delay",
        "ratelimit.client_rate", "ratelimit.client_burst"};
    size_t nrel = 0;
    for (size_t i = 0; i < S_NKEYS; i++) {
        char name[96];
        int want = 0;
        snprintf(name, sizeof name, "%s.%s", s_keys[i].section, s_keys[i].key);
        for (size_t j = 0; j < sizeof reloadable / sizeof reloadable[0]; j++)
            want |= strcmp(name, reloadable[j]) == 0;
        if (s_keys[i].reloadable != want)
            fail_msg("%s: reloadable is %d", name, s_keys[i].reloadable);
        nrel += (size_t)want;
    }
    assert_int_equal(nrel, sizeof reloadable / sizeof reloadable[0]);

    struct lk_config a, b;
    char err[256];
    s_ok("", &a);
    s_ok("", &b);
    assert_int_equal(lk_config_check_reload(&a, &b, err, sizeof err), 0);
    s_ok("[session]\nttl = 1h\n[signin]\ncount = 9\n[signup]\ncount = 1\n[log]\nlevel = debug\n"
         "[sweeper]\ngrace = 0s\ninterval = 5s\n[gateway]\nroute_timeout = 5s\n"
         "header_timeout = 1s\nidle_timeout = 1s\ndrain_timeout = 1s\n",
         &b);
    assert_int_equal(lk_config_check_reload(&a, &b, err, sizeof err), 0);
    s_ok("[session]\nttl = 1h\n[hash]\nops = 3\n", &b);
    assert_int_equal(lk_config_check_reload(&a, &b, err, sizeof err), LK_ECONFIG);
    assert_string_equal(err, "hash.ops: changed; needs a restart");
    s_ok("[gateway]\nlisten = 0.0.0.0:1\n", &b);
    assert_int_equal(lk_config_check_reload(&a, &b, err, sizeof err), LK_ECONFIG);
    assert_string_equal(err, "gateway.listen: changed; needs a restart");
    s_ok("[database]\nurl = x\n", &b);
    assert_int_equal(lk_config_check_reload(&a, &b, NULL, 0), LK_ECONFIG);
}

/* Every printed line parses back (as "[section]\nkey = value") to the defaults. */
static void test_print_defaults(void **state)
{
    (void)state;
    char *text = NULL, *ini = NULL;
    size_t len = 0, ilen = 0;
    FILE *out = open_memstream(&text, &len);
    assert_non_null(out);
    lk_config_print_defaults(out);
    fclose(out);

    FILE *iout = open_memstream(&ini, &ilen);
    assert_non_null(iout);
    size_t lines = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char *dot = strchr(line, '.'), *eq = strstr(line, " = "), *hash = strstr(line, "  # ");
        assert_true(dot && eq && hash && dot < eq && eq < hash);
        fprintf(iout, "[%.*s]\n%.*s\n", (int)(dot - line), line, (int)(hash - dot - 1), dot + 1);
        lines++;
    }
    fclose(iout);
    assert_int_equal(lines, S_NKEYS);

    struct lk_config a, b;
    s_ok(ini, &a);
    s_ok("", &b);
    assert_memory_equal(&a, &b, sizeof a);
    free(text);
    free(ini);
}

/* latchkey.conf.example loads as it is (every key commented out), and uncommenting every
 * "#key = value" line gives exactly the defaults with every key present once. */
static void test_example_file(void **state)
{
    (void)state;
    char *text = s_read_file("latchkey.conf.example");
    struct lk_config a, b, d;
    s_ok(text, &a);
    s_ok("", &d);
    assert_memory_equal(&a, &d, sizeof a);

    size_t n = 0;
    for (char *p = text; *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : p + strlen(p)) {
        if (p[0] == '#' && p[1] >= 'a' && p[1] <= 'z') {
            p[0] = ' ';
            n++;
        }
    }
    assert_int_equal(n, S_NKEYS);
    s_ok(text, &b); /* a missing or repeated key, or a wrong section, fails here */
    assert_memory_equal(&b, &d, sizeof b);
    free(text);
}

/* docs/configuration.md names every key and its environment variable. */
static void test_docs(void **state)
{
    (void)state;
    char *text = s_read_file("docs/configuration.md");
    for (size_t i = 0; i < S_NKEYS; i++) {
        char name[128], env[128];
        snprintf(name, sizeof name, "`%s.%s`", s_keys[i].section, s_keys[i].key);
        int n = snprintf(env, sizeof env, "LATCHKEY_%s_%s", s_keys[i].section, s_keys[i].key);
        for (int j = 0; j < n; j++)
            env[j] = (char)toupper((unsigned char)env[j]);
        if (!strstr(text, name) || !strstr(text, env))
            fail_msg("docs/configuration.md lacks %s or %s", name, env);
    }
    free(text);
}

/* Tests that read the environment expect none of ours: clear what the runner may have
 * set (a CI job's LATCHKEY_DATABASE_URL, say). */
static int s_clear_env(void **state)
{
    (void)state;
    for (size_t i = 0; i < S_NKEYS; i++) {
        char env[128];
        int n = snprintf(env, sizeof env, "LATCHKEY_%s_%s", s_keys[i].section, s_keys[i].key);
        for (int j = 0; j < n; j++)
            env[j] = (char)toupper((unsigned char)env[j]);
        unsetenv(env);
    }
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_duration),
        cmocka_unit_test(test_size),
        cmocka_unit_test(test_bool_and_int),
        cmocka_unit_test(test_good_values),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_failed_load_keeps_config),
        cmocka_unit_test(test_env),
        cmocka_unit_test(test_derived),
        cmocka_unit_test(test_load_file),
        cmocka_unit_test(test_hostile),
        cmocka_unit_test(test_check_reload),
        cmocka_unit_test(test_print_defaults),
        cmocka_unit_test(test_example_file),
        cmocka_unit_test(test_docs),
    };
    return cmocka_run_group_tests(tests, s_clear_env, NULL);
}
