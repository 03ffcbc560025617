#!/usr/bin/env python3
# The documents agree with the code (no stack needed; fast):
#
#   1. every route of the gateway's table (services/gateway/routes.c) is a path of
#      schemas/openapi.yaml with each of its methods (HEAD aside), and every path there is a
#      route (the /assets prefix is documented as /assets/{name});
#   2. every error code the gateway can answer (the string literals given to its reply
#      functions) is named in schemas/openapi.yaml;
#   3. every metric family (common/metrics.h) is in docs/monitoring.md, and every
#      latchkey_* series named there exists;
#   4. every ./latchkey command README.md shows is one the script knows, and every command
#      the script knows is in README.md.
#
#   tests/integration/docs_test.py [BUILD_DIR]      (the build directory is not used)
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lkstack  # noqa: E402

ROOT = lkstack.ROOT
T = lkstack.Checks("docs")


def read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


# ---- 1. routes and openapi paths ---------------------------------------------------------
routes_c = read("services/gateway/routes.c")
table = routes_c[routes_c.index("static const struct route routes[]"):]
table = table[:table.index("};")]
routes = {}
for path, methods in re.findall(r'\{"(/[^"]*)",\s*[^,]+,\s*"([^"]+)"', table):
    routes[path] = {m.strip().lower() for m in methods.split(",")} - {"head"}
T.check("the route table was read (%d routes)" % len(routes), len(routes) >= 10, routes)

api = read("schemas/openapi.yaml")
paths = {}
cur = None
in_paths = False
for line in api.splitlines():
    if line.startswith("paths:"):
        in_paths = True
        continue
    if in_paths and re.match(r"^\S", line):
        in_paths = False
    if not in_paths:
        continue
    m = re.match(r"^  (/\S*):\s*$", line)
    if m:
        cur = m.group(1)
        paths[cur] = set()
        continue
    m = re.match(r"^    (get|put|post|delete|patch|options|head):", line)
    if m and cur:
        paths[cur].add(m.group(1))


def doc_path(route):
    return "/assets/{name}" if route == "/assets" else route


for r, ms in sorted(routes.items()):
    p = doc_path(r)
    T.check("openapi documents %s %s" % (",".join(sorted(ms)).upper(), p),
            p in paths and ms <= paths[p], paths.get(p))
extra = sorted(set(paths) - {doc_path(r) for r in routes})
T.check("openapi documents no path the gateway does not route", not extra, extra)

# ---- 2. error codes ---------------------------------------------------------------------
codes = set()
for f in sorted(os.listdir(os.path.join(ROOT, "services/gateway"))):
    if f.endswith(".c"):
        src = read("services/gateway/" + f)
        # gw_reply_error(c, 400, "invalid_request", ...), pend_code = "...", {..., "code"}
        codes |= set(re.findall(r'gw_reply_error\([^,]+,\s*\d+,\s*"([a-z_]+)"', src))
        codes |= set(re.findall(r'pend_code\s*=\s*"([a-z_]+)"', src))
        codes |= set(re.findall(r's_reply_worker_error\([^,]+,\s*\d+,\s*"([a-z_]+)"', src))
T.check("error codes were found in the gateway (%d)" % len(codes), len(codes) >= 8, codes)
missing = sorted(c for c in codes if c not in api)
T.check("every error code the gateway answers is in openapi.yaml", not missing, missing)

# ---- 3. metrics ---------------------------------------------------------------------------
mh = read("common/metrics.h")
families = set(re.findall(r'X\(LKM_[A-Z0-9_]+,\s*"([a-z_0-9]+)"', mh))
mon = read("docs/monitoring.md")
T.check("metric families were read (%d)" % len(families), len(families) >= 20, families)
undoc = sorted(f for f in families if "`%s`" % f not in mon)
T.check("every metric family is in docs/monitoring.md", not undoc, undoc)
named = set(re.findall(r"`(latchkey_[a-z_0-9]+)`", mon))
ghost = sorted(n for n in named
               if n not in families and not any(n.startswith(f + "_") for f in families))
T.check("every latchkey_* series docs/monitoring.md names exists", not ghost, ghost)

# ---- 4. README and ./latchkey ----------------------------------------------------------
script = read("latchkey")
known = set(re.findall(r"^([a-z]+)(?:\|[a-z|-]+)?\)\s*$", script, re.M)) - {"help"}
readme = read("README.md")
shown = set(re.findall(r"\./latchkey ([a-z]+)", readme))
T.check("the script's commands were read (%s)" % " ".join(sorted(known)),
        {"up", "test"} <= known, known)
T.check("every ./latchkey command in README.md exists", shown <= known, sorted(shown - known))
T.check("every ./latchkey command is in README.md", known <= shown, sorted(known - shown))

sys.exit(T.done())
