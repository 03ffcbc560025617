/* static.h: the web page (GET / and GET /assets/<name>), served from memory.
 *
 * static_init reads the built page once, at start, from gateway.web_dir (empty: the web/
 * directory beside the binary's bin/, i.e. <exe>/../../web, which is where SConscript puts
 * build/<variant>/web). The directory holds index.html and assets/<name>, each file with an
 * optional precompressed twin <file>.gz. Asset names carry a content hash (SConscript
 * rewrites the references in index.html), so an asset never changes under its name: it is
 * served `Cache-Control: public, max-age=31536000, immutable`; the page itself is served
 * `no-cache` with an ETag, and a matching If-None-Match gets 304.
 *
 * A missing or unreadable directory does not stop the gateway: a warning is logged and
 * GET / answers 404 like any unknown path. The files are never read again: a new build
 * is served after a restart of the gateway.
 *
 * Every answer of these routes carries the page's security headers: a
 * Content-Security-Policy without 'unsafe-inline' (default-src 'self', frame-ancestors
 * 'none'), X-Content-Type-Options: nosniff, Referrer-Policy: no-referrer, and
 * Vary: Accept-Encoding (the gzip twin is sent when Accept-Encoding allows gzip).
 *
 * Single-threaded like the rest of the gateway.
 */
#ifndef LK_GW_STATIC_H
#define LK_GW_STATIC_H

#include "http.h"

#include <stddef.h>

struct gw_conn;

#define STATIC_MAX_FILES 64        /* files of assets/ kept; more are skipped (warning) */
#define STATIC_NAME_MAX 100        /* bytes of an asset name: [A-Za-z0-9._-], no leading . */
#define STATIC_FILE_MAX (2u << 20) /* bytes of one file; larger ones are skipped (warning) */

/* Reads the page (see above) into memory. Never fails: what cannot be read is logged and
 * not served. Call once, before the first request. */
void static_init(void);

/* Releases the files read by static_init. */
void static_fini(void);

/* Route matching for routes.c: 1 when path is served by the route row named route ("/":
 * the page; "/assets": a file of assets/ that was read), else 0 (404 for an unknown
 * asset, and for "/" when no page was read). */
int static_match(const char *route, const char *path);

/* The handler of both rows (GET and HEAD; routes.c answers 405 for other methods). */
void static_serve(struct gw_conn *c);

/* ---- request header logic, without sockets (unit-testable) ---- */

/* 1 when an Accept-Encoding (ae: absent, or the joined list of its fields) allows gzip:
 * gzip or x-gzip with a non-zero q, or else * with a non-zero q. Absent, too long or no
 * such element: 0 (identity is always acceptable, so the answer is then uncompressed). */
int static_gzip_ok(const struct http_list *ae);

/* 1 when an If-None-Match (inm) matches one of the given entity tags (each with its quotes,
 * e.g. "\"abc\""; NULL entries ignored) by weak comparison (W/ ignored), or is "*".
 * Absent, too long or malformed: 0 (the full answer is never wrong). */
int static_etag_match(const struct http_list *inm, const char *const *etags, size_t n);

#endif
