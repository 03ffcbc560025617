/* static.c: the web page, read once at start and served from memory (see static.h). */
#include "static.h"
#include "gateway.h"

#include "log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* No inline script or style anywhere in the page: everything comes from /assets. */
#define CSP                                                                                        \
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "                    \
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "                 \
    "frame-ancestors 'none'"
#define CC_IMMUTABLE "public, max-age=31536000, immutable"
#define CC_PAGE "no-cache"

struct s_file {
    char name[STATIC_NAME_MAX + 1]; /* the asset name; "" for the page */
    const char *ctype;
    int immutable;
    char *body, *gz; /* gz: the gzip twin, NULL when none (or not smaller) */
    size_t len, gz_len;
    char etag[24], etag_gz[28]; /* "<16 hex>" and "<16 hex>-gz", quotes included */
};

static void s_load(const char *dir);
static int s_load_file(const char *dir, const char *rel, const char *name, struct s_file *f);
static int s_read(const char *path, char **out, size_t *len);
static int s_name_ok(const char *n);
static const char *s_ctype(const char *name);
static const struct s_file *s_find(const char *path);
static const char *s_ows(const char *p);
static int s_q_nonzero(const char *p, const char *end);

static struct s_file s_page; /* body NULL: no page */
static struct s_file s_assets[STATIC_MAX_FILES];
static size_t s_nassets;

void static_init(void)
{
    char dir[LK_PATH_MAX + 16];

    if (gw.cfg.gateway.web_dir[0]) {
        snprintf(dir, sizeof dir, "%s", gw.cfg.gateway.web_dir);
    } else {
        /* <exe>/../../web: build/<variant>/bin/latchkey-gateway -> build/<variant>/web */
        char exe[LK_PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n <= 0 || (size_t)n >= sizeof exe - 1) {
            lk_warn("web page not served: cannot resolve /proc/self/exe: %s",
                    n < 0 ? strerror(errno) : "path too long");
            return;
        }
        exe[n] = '\0';
        for (int up = 0; up < 2; up++) {
            char *slash = strrchr(exe, '/');
            if (slash)
                *slash = '\0';
        }
        snprintf(dir, sizeof dir, "%s/web", exe);
    }
    s_load(dir);
}

void static_fini(void)
{
    free(s_page.body);
    free(s_page.gz);
    memset(&s_page, 0, sizeof s_page);
    for (size_t i = 0; i < s_nassets; i++) {
        free(s_assets[i].body);
        free(s_assets[i].gz);
    }
    memset(s_assets, 0, sizeof s_assets);
    s_nassets = 0;
}

static int s_by_name(const void *a, const void *b)
{
    return strcmp(((const struct s_file *)a)->name, ((const struct s_file *)b)->name);
}

static void s_load(const char *dir)
{
    char adir[LK_PATH_MAX + 32];
    int rc = s_load_file(dir, "index.html", "", &s_page);
    if (rc != 0) {
        lk_warn("web page not served (GET / answers 404): %s/index.html: %s", dir, strerror(-rc));
        return;
    }
    s_page.ctype = "text/html; charset=utf-8";
    s_page.immutable = 0;

    snprintf(adir, sizeof adir, "%s/assets", dir);
    DIR *d = opendir(adir);
    if (!d) {
        lk_warn("web page assets not served: %s: %s", adir, strerror(errno));
    } else {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            size_t n = strlen(e->d_name);
            if (e->d_name[0] == '.' || (n > 3 && strcmp(e->d_name + n - 3, ".gz") == 0))
                continue; /* dot files; twins are read with their file */
            if (!s_name_ok(e->d_name)) {
                lk_warn("web page: skipping %s/%.120s: not a plain asset name", adir, e->d_name);
                continue;
            }
            if (s_nassets == STATIC_MAX_FILES) {
                lk_warn("web page: more than %d assets in %s; skipping the rest", STATIC_MAX_FILES,
                        adir);
                break;
            }
            struct s_file *f = &s_assets[s_nassets];
            rc = s_load_file(adir, e->d_name, e->d_name, f);
            if (rc != 0) {
                lk_warn("web page: skipping %s/%s: %s", adir, e->d_name, strerror(-rc));
                continue;
            }
            f->ctype = s_ctype(e->d_name);
            f->immutable = 1;
            s_nassets++;
        }
        closedir(d);
        qsort(s_assets, s_nassets, sizeof s_assets[0], s_by_name);
    }
    lk_info("web page: %s: index.html and %zu asset%s", dir, s_nassets, s_nassets == 1 ? "" : "s");
}

/* 64-bit FNV-1a: an ETag needs to change with the content, not to resist an attacker
 * (who can read the page anyway). */
static uint64_t s_fnv(const char *p, size_t n)
{
    uint64_t h = UINT64_C(14695981039346656037);
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= UINT64_C(1099511628211);
    }
    return h;
}

/* Reads dir/rel (and dir/rel.gz when there is one and it is smaller) into f, named name.
 * Returns 0 or -errno (-EFBIG past STATIC_FILE_MAX). */
static int s_load_file(const char *dir, const char *rel, const char *name, struct s_file *f)
{
    char path[LK_PATH_MAX + 160];
    memset(f, 0, sizeof *f);
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, rel) >= sizeof path - 3)
        return -ENAMETOOLONG;
    int rc = s_read(path, &f->body, &f->len);
    if (rc != 0)
        return rc;
    snprintf(f->name, sizeof f->name, "%s", name);
    uint64_t h = s_fnv(f->body, f->len);
    snprintf(f->etag, sizeof f->etag, "\"%016llx\"", (unsigned long long)h);
    snprintf(f->etag_gz, sizeof f->etag_gz, "\"%016llx-gz\"", (unsigned long long)h);
    strcat(path, ".gz");
    rc = s_read(path, &f->gz, &f->gz_len);
    if (rc != 0 && rc != -ENOENT)
        lk_warn("web page: %s: %s (served uncompressed)", path, strerror(-rc));
    if (f->gz && f->gz_len >= f->len) {
        free(f->gz);
        f->gz = NULL;
        f->gz_len = 0;
    }
    return 0;
}

/* A regular file of at most STATIC_FILE_MAX bytes, whole, into a new heap buffer. */
static int s_read(const char *path, char **out, size_t *len)
{
    struct stat st;
    *out = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return -EINVAL;
    }
    if (st.st_size > (off_t)STATIC_FILE_MAX) {
        close(fd);
        return -EFBIG;
    }
    size_t n = (size_t)st.st_size, got = 0;
    char *p = malloc(n ? n : 1);
    if (!p) {
        close(fd);
        return -ENOMEM;
    }
    while (got < n) {
        ssize_t r = read(fd, p + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO; /* shorter than fstat said: changing under us */
            free(p);
            close(fd);
            return -e;
        }
        got += (size_t)r;
    }
    close(fd);
    *out = p;
    *len = n;
    return 0;
}

static int s_name_ok(const char *n)
{
    size_t len = strlen(n);
    if (len == 0 || len > STATIC_NAME_MAX || n[0] == '.')
        return 0;
    for (size_t i = 0; i < len; i++) {
        char ch = n[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-'))
            return 0;
    }
    return 1;
}

static const char *s_ctype(const char *name)
{
    static const struct {
        const char *ext, *ctype;
    } types[] = {
        {".js", "text/javascript; charset=utf-8"},
        {".css", "text/css; charset=utf-8"},
        {".html", "text/html; charset=utf-8"},
        {".svg", "image/svg+xml"},
        {".png", "image/png"},
        {".ico", "image/x-icon"},
        {".json", "application/json"},
        {".txt", "text/plain; charset=utf-8"},
        {".woff2", "font/woff2"},
    };
    const char *dot = strrchr(name, '.');
    for (size_t i = 0; dot && i < sizeof types / sizeof types[0]; i++)
        if (strcasecmp(dot, types[i].ext) == 0)
            return types[i].ctype;
    return "application/octet-stream";
}

static const struct s_file *s_find(const char *path)
{
    if (!s_page.body)
        return NULL;
    if (strcmp(path, "/") == 0)
        return &s_page;
    if (strncmp(path, "/assets/", 8) != 0)
        return NULL;
    struct s_file key;
    if (snprintf(key.name, sizeof key.name, "%s", path + 8) >= (int)sizeof key.name)
        return NULL;
    return bsearch(&key, s_assets, s_nassets, sizeof s_assets[0], s_by_name);
}

int static_match(const char *route, const char *path)
{
    const struct s_file *f = s_find(path);
    if (!f)
        return 0;
    return strcmp(route, "/") == 0 ? f == &s_page : strcmp(route, "/assets") == 0 && f != &s_page;
}

void static_serve(struct gw_conn *c)
{
    const struct http_request *r = &c->http.req;
    const struct s_file *f = s_find(r->path);
    if (!f) { /* static_match said yes for this very path */
        gw_reply_error(c, 404, "not_found", "no such resource", NULL, 0);
        return;
    }
    int gz = f->gz && static_gzip_ok(&r->ae);
    const char *etags[2] = {f->etag, f->etag_gz};
    struct gw_hdr h[] = {
        {"Cache-Control", f->immutable ? CC_IMMUTABLE : CC_PAGE}, /* first: see gw_reply */
        {"ETag", gz ? f->etag_gz : f->etag},
        {"Vary", "Accept-Encoding"},
        {"Content-Security-Policy", CSP},
        {"X-Content-Type-Options", "nosniff"},
        {"Referrer-Policy", "no-referrer"},
        {"Content-Encoding", "gzip"},
    };
    size_t nh = sizeof h / sizeof h[0];
    /* Either representation's tag means the client holds this version of the file. */
    if (static_etag_match(&r->inm, etags, 2)) {
        gw_reply_typed(c, 304, NULL, NULL, 0, h, nh - 1);
        return;
    }
    if (gz)
        gw_reply_typed(c, 200, f->ctype, f->gz, f->gz_len, h, nh);
    else
        gw_reply_typed(c, 200, f->ctype, f->body, f->len, h, nh - 1);
}

/* ---- request headers ---- */

static const char *s_ows(const char *p)
{
    while (*p == ' ' || *p == '\t')
        p++;
    return p;
}

/* qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] ) in [p, end): 1 when it is
 * above zero. Anything malformed counts as zero: that coding is then not used. */
static int s_q_nonzero(const char *p, const char *end)
{
    while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    if (p == end || (*p != '0' && *p != '1'))
        return 0;
    int nonzero = *p == '1';
    p++;
    if (p < end && *p == '.')
        for (p++; p < end && *p >= '0' && *p <= '9'; p++)
            nonzero |= *p != '0';
    return p == end ? nonzero : 0;
}

int static_gzip_ok(const struct http_list *ae)
{
    int gzip_q = -1, star_q = -1; /* -1: not listed, else 0 or 1 (q above zero) */
    if (!ae->present || ae->toolong)
        return 0;
    const char *p = ae->v;
    while (*p) {
        p = s_ows(p);
        const char *tok = p;
        while (*p && *p != ',' && *p != ';' && *p != ' ' && *p != '\t')
            p++;
        size_t tlen = (size_t)(p - tok);
        int q = 1;
        /* parameters: only q matters */
        while (*p && *p != ',') {
            p = s_ows(p);
            if (*p == ',' || *p == '\0')
                break;
            if (*p != ';') {
                while (*p && *p != ',' && *p != ';')
                    p++;
                q = 0; /* junk after the coding: not an element we understand */
                continue;
            }
            p = s_ows(p + 1);
            const char *pn = p;
            while (*p && *p != ',' && *p != ';')
                p++;
            if ((pn[0] == 'q' || pn[0] == 'Q') && *s_ows(pn + 1) == '=')
                q = s_q_nonzero(s_ows(s_ows(pn + 1) + 1), p);
        }
        if ((tlen == 4 && strncasecmp(tok, "gzip", 4) == 0) ||
            (tlen == 6 && strncasecmp(tok, "x-gzip", 6) == 0))
            gzip_q = q;
        else if (tlen == 1 && tok[0] == '*')
            star_q = q;
        if (*p == ',')
            p++;
    }
    return gzip_q >= 0 ? gzip_q : star_q > 0;
}

int static_etag_match(const struct http_list *inm, const char *const *etags, size_t n)
{
    if (!inm->present || inm->toolong)
        return 0;
    const char *p = s_ows(inm->v);
    if (p[0] == '*' && *s_ows(p + 1) == '\0')
        return 1;
    while (*p) {
        p = s_ows(p);
        if (p[0] == 'W' && p[1] == '/')
            p += 2;
        if (*p == '"') {
            const char *close = strchr(p + 1, '"');
            if (!close)
                return 0;
            size_t len = (size_t)(close - p) + 1;
            for (size_t i = 0; i < n; i++)
                if (etags[i] && strlen(etags[i]) == len && memcmp(etags[i], p, len) == 0)
                    return 1;
            p = close + 1;
        }
        while (*p && *p != ',')
            p++; /* the rest of a malformed element */
        if (*p == ',')
            p++;
    }
    return 0;
}
