/* Unit tests of services/gateway/static.c: Accept-Encoding and If-None-Match parsing, the
 * loader (a throwaway web directory), route matching and the answers' headers. The
 * gateway's reply functions are replaced by recorders. */
#include "../../../../services/gateway/static.c"

#include <setjmp.h>
#include <stdarg.h>
#include <cmocka.h>

#include <ftw.h>

struct gateway gw;

static struct {
    int status;
    const char *ctype;
    const char *body;
    size_t len;
    char hdrs[2048];
    int calls;
} R;

void gw_reply_typed(struct gw_conn *c, int status, const char *ctype, const char *body, size_t len,
                    const struct gw_hdr *hdrs, size_t nhdrs)
{
    (void)c;
    R.calls++;
    R.status = status;
    R.ctype = ctype;
    R.body = body;
    R.len = len;
    R.hdrs[0] = '\0';
    for (size_t i = 0; i < nhdrs; i++) {
        size_t n = strlen(R.hdrs);
        snprintf(R.hdrs + n, sizeof R.hdrs - n, "%s: %s\n", hdrs[i].name, hdrs[i].value);
    }
}

void gw_reply_error(struct gw_conn *c, int status, const char *code, const char *msg,
                    const struct gw_hdr *hdrs, size_t nhdrs)
{
    (void)msg;
    gw_reply_typed(c, status, "application/json", code, strlen(code), hdrs, nhdrs);
}

static struct http_list s_list(const char *v)
{
    struct http_list l;
    memset(&l, 0, sizeof l);
    if (v) {
        l.present = 1;
        l.len = strlen(v);
        snprintf(l.v, sizeof l.v, "%s", v);
    }
    return l;
}

static int s_gz(const char *v)
{
    struct http_list l = s_list(v);
    return static_gzip_ok(&l);
}

static void test_accept_encoding(void **state)
{
    (void)state;
    assert_int_equal(s_gz(NULL), 0);
    assert_int_equal(s_gz(""), 0);
    assert_int_equal(s_gz("gzip"), 1);
    assert_int_equal(s_gz("GZip"), 1);
    assert_int_equal(s_gz("x-gzip"), 1);
    assert_int_equal(s_gz("gzip, deflate, br, zstd"), 1);
    assert_int_equal(s_gz("br , gzip ;q=0.5"), 1);
    assert_int_equal(s_gz("gzip;q=0"), 0);
    assert_int_equal(s_gz("gzip; q=0.000"), 0);
    assert_int_equal(s_gz("gzip;Q=0.001"), 1);
    assert_int_equal(s_gz("gzip;q=1.000"), 1);
    assert_int_equal(s_gz("gzip;q=abc"), 0);
    assert_int_equal(s_gz("gzip;q=2"), 0);
    assert_int_equal(s_gz("*"), 1);
    assert_int_equal(s_gz("*;q=0"), 0);
    assert_int_equal(s_gz("*, gzip;q=0"), 0);
    assert_int_equal(s_gz("gzip;q=0, *"), 0);
    assert_int_equal(s_gz("identity"), 0);
    assert_int_equal(s_gz("gzipx"), 0);
    assert_int_equal(s_gz("deflate;q=0.5, br"), 0);
    assert_int_equal(s_gz(",,, gzip ,,"), 1);
    assert_int_equal(s_gz("gzip junk"), 0);
    assert_int_equal(s_gz("gzip;level=9"), 1);
    struct http_list l = s_list("gzip");
    l.toolong = 1;
    assert_int_equal(static_gzip_ok(&l), 0);
}

static int s_inm(const char *v)
{
    static const char *const tags[] = {"\"0123456789abcdef\"", "\"0123456789abcdef-gz\""};
    struct http_list l = s_list(v);
    return static_etag_match(&l, tags, 2);
}

static void test_if_none_match(void **state)
{
    (void)state;
    assert_int_equal(s_inm(NULL), 0);
    assert_int_equal(s_inm(""), 0);
    assert_int_equal(s_inm("\"0123456789abcdef\""), 1);
    assert_int_equal(s_inm("W/\"0123456789abcdef\""), 1);
    assert_int_equal(s_inm("\"0123456789abcdef-gz\""), 1);
    assert_int_equal(s_inm("\"x\", \"0123456789abcdef\""), 1);
    assert_int_equal(s_inm("\"x\",W/\"0123456789abcdef\" , \"y\""), 1);
    assert_int_equal(s_inm("*"), 1);
    assert_int_equal(s_inm(" * "), 1);
    assert_int_equal(s_inm("\"0123456789abcde\""), 0);
    assert_int_equal(s_inm("0123456789abcdef"), 0);
    assert_int_equal(s_inm("\"0123456789abcdef"), 0);
    assert_int_equal(s_inm("W/"), 0);
    assert_int_equal(s_inm("w/\"0123456789abcdef\""), 0);
    assert_int_equal(s_inm("\"*\""), 0);
    assert_int_equal(s_inm("junk, \"0123456789abcdef\""), 1);
    struct http_list l = s_list("*");
    l.toolong = 1;
    static const char *const tags[] = {"\"a\""};
    assert_int_equal(static_etag_match(&l, tags, 1), 0);
}

static char s_dir[64];

static void s_write(const char *rel, const char *text, size_t n)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", s_dir, rel);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, n, f), n);
    fclose(f);
}

static int s_rm(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(p);
}

/* A web directory: index.html with a (smaller) gzip twin, two assets (one with a twin
 * larger than itself, which is dropped), a dot file, a bad name, a directory. */
static int s_setup(void **state)
{
    (void)state;
    char p[256];
    snprintf(s_dir, sizeof s_dir, "/tmp/latchkey-static-test.XXXXXX");
    assert_non_null(mkdtemp(s_dir));
    snprintf(p, sizeof p, "%s/assets", s_dir);
    assert_int_equal(mkdir(p, 0755), 0);
    snprintf(p, sizeof p, "%s/assets/sub.dir", s_dir);
    assert_int_equal(mkdir(p, 0755), 0);
    s_write("index.html", "<!doctype html><title>t</title>", 31);
    s_write("index.html.gz", "GZ", 2);
    s_write("assets/app.0123456789abcdef.js", "console.log(1);\n", 16);
    s_write("assets/style.0123456789abcdef.css", "a{}", 3);
    s_write("assets/style.0123456789abcdef.css.gz", "longer than a{}", 15);
    s_write("assets/.hidden", "x", 1);
    s_write("assets/bad name.js", "x", 1);
    memset(&gw, 0, sizeof gw);
    snprintf(gw.cfg.gateway.web_dir, sizeof gw.cfg.gateway.web_dir, "%s", s_dir);
    lk_log_init("static_test", LK_LOG_ERROR);
    static_init();
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    static_fini();
    nftw(s_dir, s_rm, 8, FTW_DEPTH | FTW_PHYS);
    return 0;
}

static void test_match(void **state)
{
    (void)state;
    assert_int_equal(s_nassets, 2);
    assert_int_equal(static_match("/", "/"), 1);
    assert_int_equal(static_match("/assets", "/"), 0);
    assert_int_equal(static_match("/assets", "/assets/app.0123456789abcdef.js"), 1);
    assert_int_equal(static_match("/", "/assets/app.0123456789abcdef.js"), 0);
    assert_int_equal(static_match("/assets", "/assets/style.0123456789abcdef.css"), 1);
    assert_int_equal(static_match("/assets", "/assets/style.0123456789abcdef.css.gz"), 0);
    assert_int_equal(static_match("/assets", "/assets/.hidden"), 0);
    assert_int_equal(static_match("/assets", "/assets/sub.dir"), 0);
    assert_int_equal(static_match("/assets", "/assets/"), 0);
    assert_int_equal(static_match("/assets", "/assets"), 0);
    assert_int_equal(static_match("/assets", "/index.html"), 0);
    assert_int_equal(static_match("/assets", "/assets/app.js"), 0);
}

static struct gw_conn s_conn;

static void s_get(const char *path, const char *ae, const char *inm)
{
    memset(&s_conn, 0, sizeof s_conn);
    memset(&R, 0, sizeof R);
    snprintf(s_conn.http.req.path, sizeof s_conn.http.req.path, "%s", path);
    s_conn.http.req.ae = s_list(ae);
    s_conn.http.req.inm = s_list(inm);
    static_serve(&s_conn);
}

static void test_serve(void **state)
{
    (void)state;
    s_get("/", NULL, NULL);
    assert_int_equal(R.status, 200);
    assert_string_equal(R.ctype, "text/html; charset=utf-8");
    assert_int_equal(R.len, 31);
    assert_memory_equal(R.body, "<!doctype html>", 15);
    assert_non_null(strstr(R.hdrs, "Cache-Control: no-cache\n"));
    assert_ptr_equal(strstr(R.hdrs, "Cache-Control:"), R.hdrs); /* first: gw_reply's rule */
    assert_non_null(strstr(R.hdrs, "Vary: Accept-Encoding\n"));
    assert_non_null(strstr(R.hdrs, "X-Content-Type-Options: nosniff\n"));
    assert_non_null(strstr(R.hdrs, "Referrer-Policy: no-referrer\n"));
    assert_non_null(strstr(R.hdrs, "frame-ancestors 'none'"));
    assert_null(strstr(R.hdrs, "Content-Encoding"));
    assert_null(strstr(R.hdrs, "unsafe"));
    char etag[64];
    const char *e = strstr(R.hdrs, "ETag: ");
    assert_non_null(e);
    snprintf(etag, sizeof etag, "%.*s", (int)strcspn(e + 6, "\n"), e + 6);

    s_get("/", "gzip", NULL);
    assert_int_equal(R.status, 200);
    assert_int_equal(R.len, 2);
    assert_non_null(strstr(R.hdrs, "Content-Encoding: gzip\n"));
    assert_null(strstr(R.hdrs, etag)); /* the gzip twin has a tag of its own */

    s_get("/", NULL, etag);
    assert_int_equal(R.status, 304);
    assert_int_equal(R.len, 0);
    assert_non_null(strstr(R.hdrs, etag));
    s_get("/", "gzip", etag);
    assert_int_equal(R.status, 304);
    assert_null(strstr(R.hdrs, "Content-Encoding"));

    s_get("/assets/app.0123456789abcdef.js", "gzip", NULL);
    assert_int_equal(R.status, 200);
    assert_string_equal(R.ctype, "text/javascript; charset=utf-8");
    assert_int_equal(R.len, 16);
    assert_non_null(strstr(R.hdrs, "Cache-Control: public, max-age=31536000, immutable\n"));
    assert_null(strstr(R.hdrs, "Content-Encoding")); /* no twin */

    s_get("/assets/style.0123456789abcdef.css", "gzip", NULL);
    assert_int_equal(R.status, 200);
    assert_string_equal(R.ctype, "text/css; charset=utf-8");
    assert_int_equal(R.len, 3); /* the larger twin was dropped */
    assert_null(strstr(R.hdrs, "Content-Encoding"));

    s_get("/assets/nope.js", NULL, NULL);
    assert_int_equal(R.status, 404);
}

/* A missing directory: nothing served, no crash. */
static void test_missing_dir(void **state)
{
    (void)state;
    static_fini();
    snprintf(gw.cfg.gateway.web_dir, sizeof gw.cfg.gateway.web_dir, "%s/nope", s_dir);
    static_init();
    assert_int_equal(static_match("/", "/"), 0);
    assert_int_equal(static_match("/assets", "/assets/app.0123456789abcdef.js"), 0);
    static_fini();
    snprintf(gw.cfg.gateway.web_dir, sizeof gw.cfg.gateway.web_dir, "%s", s_dir);
    static_init();
    assert_int_equal(static_match("/", "/"), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accept_encoding), cmocka_unit_test(test_if_none_match),
        cmocka_unit_test(test_match),           cmocka_unit_test(test_serve),
        cmocka_unit_test(test_missing_dir),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
