/* http.c: HTTP/1.1 request parsing and response formatting for the gateway (see http.h).
 *
 * A request goes through these phases:
 *   P_HEAD     bytes of a head are collected and checked by s_scan until the blank line;
 *              then llhttp parses the whole head in one call and pauses in
 *              on_headers_complete (HTTP_EV_HEAD is returned)
 *   P_HEADDONE the caller decides (route, body limit) and calls http_body_begin
 *   P_BODY     llhttp consumes body bytes as they come; on_message_complete pauses
 *              (HTTP_EV_REQUEST is returned)
 *   P_READY    the caller answers; its next http_next() resumes llhttp on the bytes that
 *              follow, which start the next request (pipelining)
 *   P_ERROR    terminal: the caller answers err_status and closes
 */
#include "http.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum { P_HEAD = 0, P_HEADDONE, P_BODY, P_READY, P_ERROR };

/* s_scan states */
enum {
    S_START = 0, /* before the request line (empty lines allowed) */
    S_LEAD_CR,   /* CR of an empty line before the request line */
    S_METHOD,
    S_TARGET,
    S_VERSION,
    S_RL_CR,
    S_LINE,      /* start of a header line or of the final blank line */
    S_NAME,
    S_VALUE,
    S_VAL_CR,
    S_END_CR,
};

/* Header fields the gateway looks at; others are skipped. */
enum { H_OTHER = 0, H_HOST, H_CTYPE, H_AUTH, H_EXPECT, H_RID, H_TE, H_ORIGIN, H_XFF, H_INM, H_AE };

#define IN_SLACK 4096        /* input room past max_header for body and pipelined bytes */
#define BODY_WIRE_SLACK 16384 /* chunk framing allowed beyond the body limit */

static const llhttp_settings_t *s_settings(void);
static int s_scan(struct http_conn *h);
static void s_req_reset(struct http_conn *h);
static enum http_ev s_fail(struct http_conn *h, int status, const char *code, const char *msg);
static enum http_ev s_llhttp_fail(struct http_conn *h, llhttp_errno_t e);
static int s_is_tchar(unsigned char c);
static int s_rid_ok(const char *v, size_t n);
static void s_trim(char *s, size_t *len);
static int s_hdr_append(struct http_conn *h, const char *at, size_t n);
static void s_path_finish(struct http_request *r, size_t url_len);
static int s_out_reserve(struct http_conn *h, size_t n);

static int s_on_url(llhttp_t *p, const char *at, size_t n);
static int s_on_header_field(llhttp_t *p, const char *at, size_t n);
static int s_on_header_field_complete(llhttp_t *p);
static int s_on_header_value(llhttp_t *p, const char *at, size_t n);
static int s_on_header_value_complete(llhttp_t *p);
static int s_on_headers_complete(llhttp_t *p);
static int s_on_body(llhttp_t *p, const char *at, size_t n);
static int s_on_message_complete(llhttp_t *p);

/* Per-head scratch kept out of struct http_conn's public part: one head is parsed at a
 * time in the whole process (single-threaded, and llhttp sees a head in one call), so
 * the state of the field being parsed can be file-global. */
static struct {
    int in_head;          /* header callbacks belong to the head (not trailers) */
    int kind;             /* H_* of the current field */
    char name[32];
    size_t name_len;
    int name_long;
    char val[HTTP_ORIGIN_MAX + 1]; /* value of small fields (Content-Type, Origin, ...) */
    size_t val_len;
    int val_long;
    size_t url_len;
    int host_count;
    int te_count;
    int te_bad;
    int origin_count;
    int msg_done;
} g_hd;

static const llhttp_settings_t *s_settings(void)
{
    static llhttp_settings_t st;
    static int init;
    if (!init) {
        llhttp_settings_init(&st);
        st.on_url = s_on_url;
        st.on_header_field = s_on_header_field;
        st.on_header_field_complete = s_on_header_field_complete;
        st.on_header_value = s_on_header_value;
        st.on_header_value_complete = s_on_header_value_complete;
        st.on_headers_complete = s_on_headers_complete;
        st.on_body = s_on_body;
        st.on_message_complete = s_on_message_complete;
        init = 1;
    }
    return &st;
}

void http_conn_init(struct http_conn *h, const struct http_limits *lim)
{
    memset(h, 0, sizeof *h);
    h->lim = *lim;
    /* No lenient flag is ever set: request smuggling defenses stay on. */
    llhttp_init(&h->parser, HTTP_REQUEST, s_settings());
    h->parser.data = h;
    h->phase = P_HEAD;
}

void http_conn_free(struct http_conn *h)
{
    if (h->body) {
        explicit_bzero(h->body, h->body_cap);
        free(h->body);
    }
    if (h->rbuf) {
        /* the input may hold a password or a token not yet parsed */
        explicit_bzero(h->rbuf, h->rcap);
        free(h->rbuf);
    }
    if (h->out) {
        explicit_bzero(h->out, h->out_cap); /* a signin answer holds a token */
        free(h->out);
    }
    explicit_bzero(&h->req, sizeof h->req);
    h->rbuf = h->body = h->out = NULL;
    h->rcap = h->body_cap = h->out_cap = 0;
}

int http_rspace(struct http_conn *h, char **p, size_t *n)
{
    if (!h->rbuf) {
        h->rcap = h->lim.max_header + IN_SLACK;
        h->rbuf = malloc(h->rcap);
        if (!h->rbuf) {
            h->rcap = 0;
            return -ENOMEM;
        }
    }
    if (h->rpos > 0) {
        /* Nothing points into rbuf between calls (head fields are copied), so the
         * unparsed tail can move to the front. */
        memmove(h->rbuf, h->rbuf + h->rpos, h->rlen - h->rpos);
        h->rlen -= h->rpos;
        h->rpos = 0;
    }
    *p = h->rbuf + h->rlen;
    *n = h->rcap - h->rlen;
    return 0;
}

void http_rcommit(struct http_conn *h, size_t n)
{
    h->rlen += n;
}

int http_idle(const struct http_conn *h)
{
    return h->phase == P_HEAD && h->rlen == h->rpos;
}

void http_trim(struct http_conn *h)
{
    if (!http_idle(h) || h->out_len > h->out_off || h->scan_pos != 0)
        return;
    /* Parsed bytes may still hold a password or a token: wiped like http_conn_free. */
    if (h->rbuf) {
        explicit_bzero(h->rbuf, h->rcap);
        free(h->rbuf);
        h->rbuf = NULL;
        h->rcap = h->rlen = h->rpos = 0;
    }
    if (h->out) {
        explicit_bzero(h->out, h->out_cap);
        free(h->out);
        h->out = NULL;
        h->out_cap = h->out_len = h->out_off = 0;
    }
    if (h->body) {
        explicit_bzero(h->body, h->body_cap);
        free(h->body);
        h->body = NULL;
        h->body_cap = h->body_len = 0;
    }
}

int http_in_head(const struct http_conn *h)
{
    return h->phase == P_HEAD && h->rlen > h->rpos;
}

int http_started(const struct http_conn *h)
{
    return h->phase == P_HEADDONE || h->phase == P_BODY;
}

int http_in_body(const struct http_conn *h, uint64_t *got)
{
    *got = h->body_wire;
    return h->phase == P_BODY;
}

enum http_ev http_next(struct http_conn *h)
{
    llhttp_errno_t e;

    switch (h->phase) {
    case P_ERROR:
        return HTTP_EV_ERROR;
    case P_HEADDONE:
        return HTTP_EV_HEAD; /* the caller has not called http_body_begin yet */
    case P_READY:
        llhttp_resume(&h->parser);
        s_req_reset(h);
        h->phase = P_HEAD;
        /* fall through */
    case P_HEAD: {
        int r = s_scan(h);
        if (r < 0)
            return HTTP_EV_ERROR;
        if (r == 0)
            return HTTP_EV_MORE;
        size_t head_len = h->scan_pos;
        memset(&g_hd, 0, sizeof g_hd);
        g_hd.in_head = 1;
        h->parser.data = h;
        e = llhttp_execute(&h->parser, h->rbuf + h->rpos, head_len);
        g_hd.in_head = 0;
        if (e != HPE_PAUSED)
            return s_llhttp_fail(h, e);
        /* s_scan and llhttp must agree on where the head ends. */
        if (llhttp_get_error_pos(&h->parser) != h->rbuf + h->rpos + head_len)
            return s_fail(h, 400, "invalid_request", "malformed request head");
        s_path_finish(&h->req, g_hd.url_len);
        h->rpos += head_len;
        h->scan_pos = 0;
        h->scan_state = S_START;
        h->phase = P_HEADDONE;
        return HTTP_EV_HEAD;
    }
    case P_BODY: {
        const char *start = h->rbuf ? h->rbuf + h->rpos : "";
        size_t avail = h->rlen - h->rpos;
        g_hd.msg_done = 0;
        h->parser.data = h;
        e = llhttp_execute(&h->parser, start, avail);
        if (e == HPE_OK) {
            h->rpos = h->rlen;
            h->body_wire += avail;
            if (h->body_wire > 2 * (uint64_t)h->body_max + BODY_WIRE_SLACK)
                return s_fail(h, 413, "payload_too_large", "request body too large");
            return HTTP_EV_MORE;
        }
        if ((e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) && g_hd.msg_done) {
            size_t used = (size_t)(llhttp_get_error_pos(&h->parser) - start);
            h->rpos += used;
            h->body_wire += used;
            /* The same bound as above, so that the answer does not depend on how the
             * bytes were split into reads. */
            if (h->body_wire > 2 * (uint64_t)h->body_max + BODY_WIRE_SLACK)
                return s_fail(h, 413, "payload_too_large", "request body too large");
            h->req.body = h->body_len ? h->body : "";
            h->req.body_len = h->body_len;
            h->req.keep_alive = llhttp_should_keep_alive(&h->parser) && !h->req.upgrade;
            h->phase = P_READY;
            return HTTP_EV_REQUEST;
        }
        if (h->phase == P_ERROR)
            return HTTP_EV_ERROR; /* set by a callback (413) */
        return s_llhttp_fail(h, e);
    }
    }
    return s_fail(h, 400, "invalid_request", "malformed request");
}

enum http_ev http_body_begin(struct http_conn *h, size_t max)
{
    if (h->phase != P_HEADDONE)
        return h->phase == P_ERROR ? HTTP_EV_ERROR : HTTP_EV_MORE;
    h->body_max = max;
    h->body_len = 0;
    h->body_wire = 0;
    if (!h->req.chunked && h->req.content_length > max)
        return s_fail(h, 413, "payload_too_large", "request body too large");
    /* 100 Continue only makes sense while the client holds the body back. */
    if (h->req.expect_continue && h->req.has_body && h->req.minor == 1 && h->rlen == h->rpos)
        http_out_raw(h, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    llhttp_resume(&h->parser);
    h->phase = P_BODY;
    return HTTP_EV_MORE;
}

/* Checks the head byte by byte as it arrives; llhttp (loose mode) does not reject all of
 * these. Returns 1 when the blank line ending the head is seen (scan_pos = head length),
 * 0 when more bytes are needed, -1 on error (h->err_* set). */
static int s_scan(struct http_conn *h)
{
    if (!h->rbuf)
        return 0; /* nothing read yet (and NULL + 0 is undefined) */
    const unsigned char *b = (const unsigned char *)h->rbuf + h->rpos;
    size_t n = h->rlen - h->rpos;
    size_t i = h->scan_pos;
    int st = h->scan_state;

    for (; i < n; i++) {
        unsigned char c = b[i];
        switch (st) {
        case S_START:
            if (c == '\r')
                st = S_LEAD_CR;
            else if (s_is_tchar(c))
                st = S_METHOD;
            else
                goto bad;
            break;
        case S_LEAD_CR:
            if (c != '\n')
                goto bad;
            st = S_START;
            break;
        case S_METHOD:
            if (c == ' ') {
                st = S_TARGET;
                h->target_len = 0;
            } else if (!s_is_tchar(c)) {
                goto bad;
            }
            break;
        case S_TARGET:
            if (c == ' ') {
                if (h->target_len == 0)
                    goto bad;
                st = S_VERSION;
            } else if (c <= 0x20 || c >= 0x7f) {
                goto bad; /* CTL, bare CR/LF, tab, non-ASCII: not a valid target */
            } else if (++h->target_len > h->lim.max_uri) {
                s_fail(h, 414, "uri_too_long", "request target too long");
                return -1;
            }
            break;
        case S_VERSION:
            if (c == '\r')
                st = S_RL_CR;
            else if (c <= 0x20 || c >= 0x7f)
                goto bad;
            break;
        case S_RL_CR:
        case S_VAL_CR:
            if (c != '\n')
                goto bad; /* bare CR */
            st = S_LINE;
            break;
        case S_LINE:
            if (c == '\r')
                st = S_END_CR;
            else if (s_is_tchar(c))
                st = S_NAME;
            else
                goto bad; /* obs-fold (SP/HT), empty name, control bytes */
            break;
        case S_NAME:
            if (c == ':')
                st = S_VALUE;
            else if (!s_is_tchar(c))
                goto bad; /* white space before the colon, control bytes */
            break;
        case S_VALUE:
            if (c == '\r')
                st = S_VAL_CR;
            else if ((c < 0x20 && c != '\t') || c == 0x7f)
                goto bad; /* NUL, bare LF, other controls */
            break;
        case S_END_CR:
            if (c != '\n')
                goto bad;
            h->scan_pos = i + 1;
            h->scan_state = st;
            if (h->scan_pos > h->lim.max_header) {
                s_fail(h, 431, "headers_too_large", "request headers too large");
                return -1;
            }
            return 1;
        }
        if (i + 1 > h->lim.max_header) {
            s_fail(h, 431, "headers_too_large", "request headers too large");
            return -1;
        }
    }
    h->scan_pos = i;
    h->scan_state = st;
    return 0;
bad:
    s_fail(h, 400, "invalid_request", "malformed request head");
    return -1;
}

static void s_req_reset(struct http_conn *h)
{
    /* The Authorization copy and the body may hold a token or a password. */
    explicit_bzero(h->req.auth, sizeof h->req.auth);
    if (h->body && h->body_len)
        explicit_bzero(h->body, h->body_len);
    memset(&h->req, 0, sizeof h->req);
    h->body_len = 0;
    h->body_max = 0;
    h->body_wire = 0;
}

static enum http_ev s_fail(struct http_conn *h, int status, const char *code, const char *msg)
{
    if (h->phase != P_ERROR)
        h->err_head = h->phase == P_HEAD; /* rbuf[rpos..rlen) still holds the head */
    h->phase = P_ERROR;
    h->err_status = status;
    h->err_code = code;
    h->err_msg = msg;
    return HTTP_EV_ERROR;
}

static enum http_ev s_llhttp_fail(struct http_conn *h, llhttp_errno_t e)
{
    if (h->phase == P_ERROR)
        return HTTP_EV_ERROR; /* a callback already chose the answer */
    switch (e) {
    case HPE_UNEXPECTED_CONTENT_LENGTH:
        return s_fail(h, 400, "invalid_request", "conflicting Content-Length or Transfer-Encoding");
    case HPE_INVALID_CONTENT_LENGTH:
        return s_fail(h, 400, "invalid_request", "invalid Content-Length");
    case HPE_INVALID_TRANSFER_ENCODING:
        return s_fail(h, 400, "invalid_request", "unsupported Transfer-Encoding");
    case HPE_INVALID_CHUNK_SIZE:
    case HPE_STRICT:
        return s_fail(h, 400, "invalid_request", "invalid chunked encoding");
    case HPE_INVALID_METHOD:
        return s_fail(h, 400, "invalid_request", "invalid method");
    case HPE_INVALID_VERSION:
        return s_fail(h, 400, "invalid_request", "unsupported HTTP version");
    default:
        return s_fail(h, 400, "invalid_request", "malformed request");
    }
}

int http_head_rid(const struct http_conn *h, char out[HTTP_RID_MAX + 1])
{
    static const char name[] = "x-request-id:";
    if (!h->rbuf || !(h->phase == P_HEAD || (h->phase == P_ERROR && h->err_head)))
        return 0;
    const char *b = h->rbuf + h->rpos, *end = h->rbuf + h->rlen;
    /* header lines start after a LF; the first line is the request line */
    for (const char *p = memchr(b, '\n', (size_t)(end - b)); p;
         p = memchr(p, '\n', (size_t)(end - p))) {
        p++;
        if ((size_t)(end - p) < sizeof name - 1 || strncasecmp(p, name, sizeof name - 1) != 0)
            continue;
        const char *v = p + sizeof name - 1, *e = memchr(v, '\r', (size_t)(end - v));
        if (!e || e + 1 >= end || e[1] != '\n')
            return 0; /* not complete */
        while (v < e && (*v == ' ' || *v == '\t'))
            v++;
        size_t n = (size_t)(e - v);
        while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
            n--;
        if (!s_rid_ok(v, n))
            continue; /* as in the head: an invalid one is skipped, a later valid one used */
        memcpy(out, v, n);
        out[n] = '\0';
        return 1;
    }
    return 0;
}

/* 1-64 characters of [A-Za-z0-9._-] (api.md) */
static int s_rid_ok(const char *v, size_t n)
{
    if (n < 1 || n > HTTP_RID_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* RFC 9110 tchar */
static int s_is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static void s_trim(char *s, size_t *len)
{
    size_t a = 0, n = *len;
    while (a < n && (s[a] == ' ' || s[a] == '\t'))
        a++;
    while (n > a && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    if (a)
        memmove(s, s + a, n - a);
    *len = n - a;
    s[*len] = '\0';
}

/* Strips an absolute-form prefix and the query, and flags paths too long to route. */
static void s_path_finish(struct http_request *r, size_t url_len)
{
    char *p = r->path;
    size_t n = r->path_len;
    if (n > 7 && (strncasecmp(p, "http://", 7) == 0 || strncasecmp(p, "https://", 8) == 0)) {
        char *auth = strstr(p, "//") + 2;
        char *slash = memchr(auth, '/', n - (size_t)(auth - p));
        if (!slash) {
            r->path_len = 0;
            r->path[0] = '\0';
            r->path_long = url_len > HTTP_PATH_MAX;
            return;
        }
        n -= (size_t)(slash - p);
        memmove(p, slash, n);
    }
    char *q = memchr(p, '?', n);
    char *f = memchr(p, '#', n);
    if (f && (!q || f < q))
        q = f;
    if (q) {
        n = (size_t)(q - p);
    } else if (url_len > HTTP_PATH_MAX) {
        r->path_long = 1;
    }
    p[n] = '\0';
    r->path_len = n;
}

static int s_on_url(llhttp_t *p, const char *at, size_t n)
{
    struct http_conn *h = p->data;
    struct http_request *r = &h->req;
    size_t room = HTTP_PATH_MAX - r->path_len;
    size_t k = n < room ? n : room;
    memcpy(r->path + r->path_len, at, k);
    r->path_len += k;
    r->path[r->path_len] = '\0';
    g_hd.url_len += n;
    return 0;
}

static int s_on_header_field(llhttp_t *p, const char *at, size_t n)
{
    (void)p;
    if (!g_hd.in_head)
        return 0; /* trailer fields are ignored */
    if (g_hd.name_len + n >= sizeof g_hd.name) {
        g_hd.name_long = 1;
        return 0;
    }
    memcpy(g_hd.name + g_hd.name_len, at, n);
    g_hd.name_len += n;
    return 0;
}

static int s_on_header_field_complete(llhttp_t *p)
{
    (void)p;
    if (!g_hd.in_head)
        return 0;
    static const struct {
        const char *name;
        int kind;
    } known[] = {
        {"host", H_HOST},           {"content-type", H_CTYPE}, {"authorization", H_AUTH},
        {"expect", H_EXPECT},       {"x-request-id", H_RID},   {"transfer-encoding", H_TE},
        {"origin", H_ORIGIN},       {"x-forwarded-for", H_XFF},
        {"if-none-match", H_INM},   {"accept-encoding", H_AE},
    };
    g_hd.kind = H_OTHER;
    g_hd.val_len = 0;
    g_hd.val_long = 0;
    if (!g_hd.name_long) {
        g_hd.name[g_hd.name_len] = '\0';
        for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
            if (strcasecmp(g_hd.name, known[i].name) == 0)
                g_hd.kind = known[i].kind;
    }
    g_hd.name_len = 0;
    g_hd.name_long = 0;
    return 0;
}

/* Appends to the current value's buffer: Authorization into req.auth, small fields into
 * g_hd.val. Returns 0 (overflow only sets a flag). */
static int s_hdr_append(struct http_conn *h, const char *at, size_t n)
{
    char *buf;
    size_t cap, *len;
    int *lng;
    if (g_hd.kind == H_AUTH) {
        buf = h->req.auth;
        cap = sizeof h->req.auth;
        len = &h->req.auth_len;
        lng = &h->req.auth_long;
    } else {
        buf = g_hd.val;
        cap = sizeof g_hd.val;
        len = &g_hd.val_len;
        lng = &g_hd.val_long;
    }
    if (*len + n >= cap) {
        *lng = 1;
        return 0;
    }
    memcpy(buf + *len, at, n);
    *len += n;
    return 0;
}

/* Appends to req.xff keeping only the rightmost HTTP_XFF_MAX bytes: the proxies add on
 * the right, so a long value a client made up loses its left part, never the proxies'. */
static int s_xff_append(struct http_request *r, const char *at, size_t n)
{
    if (n >= HTTP_XFF_MAX) {
        at += n - HTTP_XFF_MAX;
        n = HTTP_XFF_MAX;
    }
    if (r->xff_len + n > HTTP_XFF_MAX) {
        size_t drop = r->xff_len + n - HTTP_XFF_MAX;
        memmove(r->xff, r->xff + drop, r->xff_len - drop);
        r->xff_len -= drop;
    }
    memcpy(r->xff + r->xff_len, at, n);
    r->xff_len += n;
    r->xff[r->xff_len] = '\0';
    return 0;
}

static int s_on_header_value(llhttp_t *p, const char *at, size_t n)
{
    struct http_conn *h = p->data;
    if (!g_hd.in_head || g_hd.kind == H_OTHER || g_hd.kind == H_HOST)
        return 0;
    if (g_hd.kind == H_AUTH && h->req.has_auth)
        return 0; /* a second Authorization: flagged at completion */
    if (g_hd.kind == H_XFF)
        return s_xff_append(&h->req, at, n);
    return s_hdr_append(h, at, n);
}

static int s_on_header_value_complete(llhttp_t *p)
{
    struct http_conn *h = p->data;
    struct http_request *r = &h->req;
    if (!g_hd.in_head)
        return 0;
    char *v = g_hd.val;
    size_t n = g_hd.val_len;
    v[n] = '\0';
    switch (g_hd.kind) {
    case H_HOST:
        g_hd.host_count++;
        r->has_host = 1;
        break;
    case H_CTYPE: {
        s_trim(v, &n);
        /* media type, then optional ";params": application/json (or application/x-ndjson)
         * in any case */
        size_t t = strcspn(v, "; \t");
        int json = !g_hd.val_long && t == 16 && strncasecmp(v, "application/json", 16) == 0;
        int nd = !g_hd.val_long && t == 20 && strncasecmp(v, "application/x-ndjson", 20) == 0;
        if (r->ctype != HTTP_CT_NONE)
            json = nd = 0; /* two Content-Type fields: not one JSON body */
        if (json || nd) {
            size_t k = t;
            while (v[k] == ' ' || v[k] == '\t')
                k++;
            if (v[k] != '\0' && v[k] != ';')
                json = nd = 0;
        }
        r->ctype = json ? HTTP_CT_JSON : nd ? HTTP_CT_NDJSON : HTTP_CT_OTHER;
        break;
    }
    case H_AUTH:
        if (r->has_auth) {
            r->auth_long = 1; /* two Authorization fields: malformed */
            break;
        }
        r->has_auth = 1;
        r->auth[r->auth_len < HTTP_AUTH_MAX ? r->auth_len : HTTP_AUTH_MAX] = '\0';
        s_trim(r->auth, &r->auth_len);
        break;
    case H_EXPECT:
        s_trim(v, &n);
        if (!g_hd.val_long && strcasecmp(v, "100-continue") == 0)
            r->expect_continue = 1;
        break;
    case H_RID: {
        s_trim(v, &n);
        if (!g_hd.val_long && !r->has_rid && s_rid_ok(v, n)) {
            memcpy(r->rid, v, n);
            r->rid[n] = '\0';
            r->has_rid = 1;
        }
        break;
    }
    case H_TE:
        /* Only "chunked" alone is supported: any other coding we could not decode, and
         * a list (or a repeated field, which is the same list) is where smuggling tricks
         * live. */
        s_trim(v, &n);
        if (g_hd.val_long || strcasecmp(v, "chunked") != 0 || ++g_hd.te_count > 1)
            g_hd.te_bad = 1;
        break;
    case H_XFF:
        /* the next field's value continues the list */
        if (r->xff_len > 0 && r->xff[r->xff_len - 1] != ',')
            (void)s_xff_append(r, ",", 1);
        break;
    case H_INM:
    case H_AE: {
        /* a list field: a repeated one continues the list */
        struct http_list *l = g_hd.kind == H_INM ? &r->inm : &r->ae;
        s_trim(v, &n);
        l->present = 1;
        if (g_hd.val_long || l->len + 2 + n > HTTP_LIST_MAX) {
            l->toolong = 1;
        } else if (n) {
            if (l->len) {
                memcpy(l->v + l->len, ", ", 2);
                l->len += 2;
            }
            memcpy(l->v + l->len, v, n + 1);
            l->len += n;
        }
        break;
    }
    case H_ORIGIN:
        /* Kept only when it is the one Origin field: two cannot both be the caller's. */
        s_trim(v, &n);
        if (++g_hd.origin_count == 1 && !g_hd.val_long && n > 0) {
            memcpy(r->origin, v, n + 1);
            r->has_origin = 1;
        } else {
            r->has_origin = 0;
            r->origin[0] = '\0';
        }
        break;
    }
    g_hd.kind = H_OTHER;
    g_hd.val_len = 0;
    g_hd.val_long = 0;
    return 0;
}

static int s_on_headers_complete(llhttp_t *p)
{
    struct http_conn *h = p->data;
    struct http_request *r = &h->req;
    r->method = p->method;
    r->minor = p->http_minor;
    /* Errors are recorded here (llhttp turns any callback error into one generic code). */
    if (p->http_major != 1 || p->http_minor > 1) {
        s_fail(h, 400, "invalid_request", "unsupported HTTP version");
        return -1;
    }
    if (g_hd.host_count > 1 || (p->http_minor == 1 && g_hd.host_count == 0)) {
        s_fail(h, 400, "invalid_request", "exactly one Host header is required");
        return -1;
    }
    if (g_hd.te_bad || ((p->flags & F_TRANSFER_ENCODING) && p->http_minor == 0)) {
        s_fail(h, 400, "invalid_request", "unsupported Transfer-Encoding");
        return -1;
    }
    r->chunked = (p->flags & F_CHUNKED) != 0;
    r->content_length = (p->flags & F_CONTENT_LENGTH) ? p->content_length : 0;
    r->has_body = r->chunked || r->content_length > 0;
    r->upgrade = p->method == HTTP_CONNECT || (p->flags & F_UPGRADE) != 0;
    /* llhttp hands whatever follows a CONNECT or Upgrade head to the upgraded protocol:
     * a body announced with it could never be read as this request's (fuzz_http found the
     * request reported with no body while Content-Length said otherwise). */
    if (r->upgrade && r->has_body) {
        s_fail(h, 400, "invalid_request", "a body with CONNECT or Upgrade is not supported");
        return -1;
    }
    return HPE_PAUSED;
}

static int s_on_body(llhttp_t *p, const char *at, size_t n)
{
    struct http_conn *h = p->data;
    if (h->body_len + n > h->body_max) {
        s_fail(h, 413, "payload_too_large", "request body too large");
        return HPE_USER;
    }
    if (h->body_len + n > h->body_cap) {
        size_t cap = h->body_cap ? h->body_cap : 1024;
        while (cap < h->body_len + n)
            cap *= 2;
        if (cap > h->body_max)
            cap = h->body_max;
        /* Not realloc: the old copy may hold a password and must be wiped. */
        char *nb = malloc(cap);
        if (!nb) {
            s_fail(h, 503, "unavailable", "out of memory");
            return HPE_USER;
        }
        if (h->body) {
            memcpy(nb, h->body, h->body_len);
            explicit_bzero(h->body, h->body_cap);
            free(h->body);
        }
        h->body = nb;
        h->body_cap = cap;
    }
    memcpy(h->body + h->body_len, at, n);
    h->body_len += n;
    return 0;
}

static int s_on_message_complete(llhttp_t *p)
{
    (void)p;
    g_hd.msg_done = 1;
    return HPE_PAUSED;
}

/* ---- output ---- */

static int s_out_reserve(struct http_conn *h, size_t n)
{
    if (h->out_fail)
        return -1;
    if (h->out_off == h->out_len)
        h->out_off = h->out_len = 0;
    if (h->out_len + n <= h->out_cap)
        return 0;
    if (h->out_off > 0) {
        memmove(h->out, h->out + h->out_off, h->out_len - h->out_off);
        h->out_len -= h->out_off;
        h->out_off = 0;
        if (h->out_len + n <= h->out_cap)
            return 0;
    }
    size_t need = h->out_len + n;
    if (need > HTTP_OUT_MAX) {
        h->out_fail = 1;
        return -1;
    }
    size_t cap = h->out_cap ? h->out_cap : 1024;
    while (cap < need)
        cap *= 2;
    char *nb = realloc(h->out, cap);
    if (!nb) {
        h->out_fail = 1;
        return -1;
    }
    h->out = nb;
    h->out_cap = cap;
    return 0;
}

void http_out_raw(struct http_conn *h, const char *p, size_t n)
{
    if (s_out_reserve(h, n) < 0)
        return;
    memcpy(h->out + h->out_len, p, n);
    h->out_len += n;
}

void http_out_status(struct http_conn *h, int status)
{
    char line[64];
    int n = snprintf(line, sizeof line, "HTTP/1.1 %d %s\r\n", status, http_reason(status));
    http_out_raw(h, line, (size_t)n);
}

void http_out_header(struct http_conn *h, const char *name, const char *value)
{
    size_t a = strlen(name), b = strlen(value);
    if (s_out_reserve(h, a + b + 4) < 0)
        return;
    char *o = h->out + h->out_len;
    memcpy(o, name, a);
    o[a] = ':';
    o[a + 1] = ' ';
    memcpy(o + a + 2, value, b);
    o[a + 2 + b] = '\r';
    o[a + 3 + b] = '\n';
    h->out_len += a + b + 4;
}

void http_out_body(struct http_conn *h, int status, const char *ctype, const char *body,
                   size_t len)
{
    char cl[32];
    if (status != 204 && status != 304 && status >= 200) {
        if (ctype)
            http_out_header(h, "Content-Type", ctype);
        snprintf(cl, sizeof cl, "%zu", len);
        http_out_header(h, "Content-Length", cl);
    }
    http_out_raw(h, "\r\n", 2);
    /* A HEAD response announces the length of what GET would send, without the bytes. */
    if (len && status != 204 && status != 304 && h->req.method != HTTP_HEAD)
        http_out_raw(h, body, len);
}

void http_out_consumed(struct http_conn *h, size_t n)
{
    h->out_off += n;
    if (h->out_off >= h->out_len)
        h->out_off = h->out_len = 0;
}

const char *http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
    }
}
