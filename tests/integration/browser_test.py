#!/usr/bin/env python3
"""The web page (GET /): its HTTP contract, then the page itself in headless Chromium.

    tests/integration/browser_test.py BUILD_DIR     (e.g. build/release)

1. A stack serving BUILD_DIR/web: headers of the page and of its assets (api.md `GET /`:
   Cache-Control, CSP, nosniff, Referrer-Policy, ETag and 304, gzip and q=0, Vary, HEAD,
   405, 404 for an unknown asset, bounded metric labels).
2. tests/browser/web_test.js against that stack: Debian's /usr/bin/chromium driven by
   playwright-core (the registry's tarball vendored in tests/browser/vendor/, its integrity
   pinned in tests/browser/package-lock.json, installed here with `npm ci` when missing:
   no network needed; never a downloaded browser). Sign up, sign in, session, sign out, wrong
   password, a too-short password blocked before any request, keyboard-only use, sign out
   everywhere, 429 with Retry-After; any console error fails. Screenshots are kept in a
   directory printed at the end (LATCHKEY_WEB_SCREENSHOT=path also copies the first view
   there: how docs/img/web-page.png is made).
3. A stack whose gateway.web_dir does not exist: it still starts, GET / is 404 not_found
   and the gateway logs a warning.
"""
import gzip
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lkstack import ROOT, Checks, Stack, build_dir  # noqa: E402

BROWSER_DIR = os.path.join(ROOT, "tests", "browser")
CHROMIUM = "/usr/bin/chromium"


def raw(stack, method, path, headers=None):
    """(status, headers dict with lower-case names, body bytes) on a new connection."""
    h, p = stack.base.rsplit(":", 1)
    c = http.client.HTTPConnection(h, int(p), timeout=20)
    try:
        c.request(method, path, headers=headers or {})
        r = c.getresponse()
        body = r.read()
        hdrs = {}
        for k, v in r.getheaders():
            k = k.lower()
            hdrs[k] = hdrs[k] + ", " + v if k in hdrs else v
        return r.status, hdrs, body
    finally:
        c.close()


def npm_ready(t):
    """node_modules of tests/browser as the lock file pins it (npm ci when it is not)."""
    with open(os.path.join(BROWSER_DIR, "package-lock.json")) as f:
        want = json.load(f)["packages"]["node_modules/playwright-core"]["version"]
    have = None
    try:
        with open(os.path.join(BROWSER_DIR, "node_modules", "playwright-core", "package.json")) as f:
            have = json.load(f)["version"]
    except (OSError, ValueError, KeyError):
        pass
    if have == want:
        return True
    env = dict(os.environ, PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1", npm_config_audit="false",
               npm_config_fund="false", npm_config_update_notifier="false")
    r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=BROWSER_DIR, env=env,
                       capture_output=True, text=True, timeout=600)
    return t.check("npm ci in tests/browser (playwright-core %s)" % want, r.returncode == 0,
                   (r.stdout + r.stderr)[-2000:])


def http_checks(t, s):
    st, h, body = raw(s, "GET", "/")
    t.check("GET /: 200 text/html", st == 200 and h.get("content-type", "").startswith("text/html"),
            (st, h.get("content-type")))
    t.check("GET /: Cache-Control no-cache (one header)", h.get("cache-control") == "no-cache",
            h.get("cache-control"))
    csp = h.get("content-security-policy", "")
    t.check("GET /: CSP default-src 'self', frame-ancestors 'none', no unsafe-inline",
            "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp,
            csp)
    t.check("GET /: nosniff, no-referrer, Vary", h.get("x-content-type-options") == "nosniff" and
            h.get("referrer-policy") == "no-referrer" and h.get("vary") == "Accept-Encoding", h)
    t.check("GET /: no inline script or style in the page",
            b"<style" not in body and b" style=" not in body and
            all(b" src=" in tag for tag in body.split(b"<script")[1:]), body[:200])
    etag = h.get("etag", "")
    t.check("GET /: strong ETag", etag.startswith('"') and etag.endswith('"'), etag)
    t.check("GET /: identity body without Accept-Encoding", "content-encoding" not in h and
            body.startswith(b"<!doctype html>"), h.get("content-encoding"))
    html = body.decode()

    st, h2, b2 = raw(s, "GET", "/", {"If-None-Match": etag})
    t.check("If-None-Match: the ETag -> 304, no body, same ETag and Cache-Control",
            st == 304 and b2 == b"" and h2.get("etag") == etag and h2.get("cache-control") == "no-cache"
            and "content-length" not in h2, (st, h2, b2[:40]))
    for inm in ["W/" + etag, '"nope", ' + etag, '"a",W/' + etag + ' ,"b"', "*"]:
        st, _, _ = raw(s, "GET", "/", {"If-None-Match": inm})
        t.check("If-None-Match: %s -> 304" % inm, st == 304, st)
    for inm in ['"nope"', etag[:-2] + '"', "W/", ""]:
        st, _, _ = raw(s, "GET", "/", {"If-None-Match": inm})
        t.check("If-None-Match: %r -> 200" % inm, st == 200, st)
    st, _, _ = raw(s, "HEAD", "/", {"If-None-Match": etag})
    t.check("HEAD with the ETag -> 304", st == 304, st)

    st, hg, bg = raw(s, "GET", "/", {"Accept-Encoding": "gzip, deflate, br"})
    t.check("Accept-Encoding gzip: gzip body, Vary, its own ETag",
            st == 200 and hg.get("content-encoding") == "gzip" and hg.get("vary") == "Accept-Encoding"
            and hg.get("etag") != etag and gzip.decompress(bg).decode() == html, hg)
    st, h3, _ = raw(s, "GET", "/", {"Accept-Encoding": "gzip", "If-None-Match": hg.get("etag", "")})
    t.check("the gzip ETag -> 304", st == 304, st)
    for ae, want in [("gzip;q=0", None), ("gzip; q=0.000, identity", None), ("*;q=0", None),
                     ("br, *", "gzip"), ("GZIP;Q=0.5", "gzip"), ("x-gzip", "gzip"),
                     ("*, gzip;q=0", None), ("identity", None), ("deflate, br", None)]:
        st, hh, bb = raw(s, "GET", "/", {"Accept-Encoding": ae})
        t.check("Accept-Encoding %r -> %s" % (ae, want or "identity"),
                st == 200 and hh.get("content-encoding") == want and
                (bb.startswith(b"\x1f\x8b") if want else bb.decode() == html), hh.get("content-encoding"))

    st, hh, bb = raw(s, "HEAD", "/")
    t.check("HEAD /: the GET headers, no body", st == 200 and bb == b"" and
            hh.get("content-length") == str(len(html.encode())) and hh.get("etag") == etag, hh)
    for m in ["POST", "PUT", "DELETE"]:
        st, hh, bb = raw(s, m, "/")
        t.check("%s / -> 405 with Allow: GET, HEAD" % m, st == 405 and hh.get("allow") == "GET, HEAD"
                and json.loads(bb).get("error") == "method_not_allowed", (st, hh.get("allow")))

    # the assets named in the page
    import re
    names = re.findall(r'/assets/([A-Za-z0-9._-]+)', html)
    t.check("the page names fingerprinted assets", len(names) >= 3 and
            all(re.match(r"^[a-z]+\.[0-9a-f]{16}\.[a-z]+$", n) for n in names), names)
    types = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}
    for n in sorted(set(names)):
        st, ha, ba = raw(s, "GET", "/assets/" + n)
        t.check("GET /assets/%s: 200 %s, immutable, security headers" % (n, types[n.rsplit(".", 1)[1]]),
                st == 200 and ha.get("content-type", "").startswith(types[n.rsplit(".", 1)[1]]) and
                ha.get("cache-control") == "public, max-age=31536000, immutable" and
                ha.get("x-content-type-options") == "nosniff" and
                "default-src 'self'" in ha.get("content-security-policy", "") and len(ba) > 0, (st, ha))
        st, hz, bz = raw(s, "GET", "/assets/" + n, {"Accept-Encoding": "gzip"})
        t.check("GET /assets/%s gzip" % n, st == 200 and hz.get("content-encoding") == "gzip" and
                gzip.decompress(bz) == ba, hz.get("content-encoding"))
    for p in ["/assets/app.js", "/assets/nope.0123456789abcdef.js", "/assets/", "/assets",
              "/assets/../index.html", "/index.html", "/assets/" + names[0] + ".gz"]:
        st, hh, bb = raw(s, "GET", p)
        ok = st == 404 and bb and json.loads(bb).get("error") == "not_found"
        t.check("GET %s -> 404 not_found" % p, ok, (st, bb[:80]))
    st, _, _ = raw(s, "POST", "/assets/nope.js")
    t.check("POST to an unknown asset -> 404", st == 404, st)
    st, hh, _ = raw(s, "POST", "/assets/" + names[0])
    t.check("POST to an asset -> 405", st == 405 and hh.get("allow") == "GET, HEAD", st)

    # API answers keep their own headers
    st, hh, _ = raw(s, "GET", "/health")
    t.check("API answers unchanged: /health no-store, no CSP", hh.get("cache-control") == "no-store"
            and "content-security-policy" not in hh, hh)

    # metrics: the route label stays bounded ("/" and "/assets", never a file name)
    deadline = time.time() + 20
    text = ""
    while time.time() < deadline:
        st, _, mb = raw(s, "GET", "/metrics")
        text = mb.decode(errors="replace")
        if 'route="/assets"' in text and 'route="/"' in text:
            break
        time.sleep(1)
    t.check('metrics: route="/" and route="/assets"', 'route="/assets"' in text and 'route="/"' in text)
    t.check("metrics: no per-file route label", 'route="/assets/' not in text)
    return names


def main():
    build = build_dir()
    t = Checks("browser_test")
    web = os.path.join(ROOT, build, "web")
    if not t.check("%s/web/index.html is built" % build, os.path.isfile(os.path.join(web, "index.html"))):
        return t.done()

    s = Stack(build, "[gateway]\nlisten = 127.0.0.1:@PORT@\nweb_dir = %s\n" % web, name="browser")
    # the page's 429 message is tested: locked after 3 failures, for long enough that the
    # lock cannot end before the page is looked at
    s.env["LATCHKEY_THROTTLE_MAX_FAILURES"] = "3"
    s.env["LATCHKEY_THROTTLE_BASE_DELAY"] = "30s"
    if not t.check("stack started", s.start()):
        print(s.tail())
        return t.done()
    http_checks(t, s)

    # ---- the browser ----
    tools = t.check("chromium, node and npm are installed (deps/debian-packages.txt)",
                    os.access(CHROMIUM, os.X_OK) and shutil.which("node") and shutil.which("npm"),
                    [CHROMIUM, shutil.which("node"), shutil.which("npm")])
    if tools and npm_ready(t):
        shots = tempfile.mkdtemp(prefix="latchkey-browser-shots.")
        cmd = ["node", os.path.join(BROWSER_DIR, "web_test.js"), "http://" + s.base, shots]
        if os.environ.get("LATCHKEY_WEB_SCREENSHOT"):
            cmd.append(os.path.abspath(os.environ["LATCHKEY_WEB_SCREENSHOT"]))
        env = dict(os.environ, PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1",
                   PLAYWRIGHT_BROWSERS_PATH="0", NODE_PATH=os.path.join(BROWSER_DIR, "node_modules"))
        try:
            r = subprocess.run(cmd, cwd=BROWSER_DIR, env=env, capture_output=True, text=True,
                               timeout=300)
            out, rc = r.stdout + r.stderr, r.returncode
        except subprocess.TimeoutExpired as e:
            out, rc = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) \
                else (e.stdout or ""), "timeout"
        for line in out.splitlines():
            print("    " + line)
        t.check("web_test.js in headless Chromium (screenshots: %s)" % shots, rc == 0, rc)

    rep = s.sanitizer_reports()
    t.check("no sanitizer report", rep == "", rep[:2000])
    st = s.stop()
    t.check("stack stopped cleanly", st == 0, st)
    s.cleanup()

    # ---- no web directory: the gateway still starts ----
    s2 = Stack(build, "[gateway]\nlisten = 127.0.0.1:@PORT@\nweb_dir = /nonexistent/latchkey-web\n",
               name="browser-noweb")
    if t.check("stack without a web directory started", s2.start()):
        st, hh, bb = raw(s2, "GET", "/")
        t.check("no web directory: GET / -> 404 not_found", st == 404 and
                json.loads(bb).get("error") == "not_found", (st, bb[:80]))
        st, _, _ = raw(s2, "GET", "/health")
        t.check("no web directory: the API answers", st == 200, st)
        t.check("no web directory: a warning is logged", "web page not served" in s2.log_text())
    else:
        print(s2.tail())
    rep = s2.sanitizer_reports()
    t.check("no sanitizer report (no web directory)", rep == "", rep[:2000])
    s2.cleanup()
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
