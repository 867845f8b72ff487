#!/usr/bin/env python3
"""llmgw's dashboard in a real browser: headless Chromium (Debian's chromium, .ci/deps.sh)
driven over the DevTools protocol by tests/ui_cdp.mjs, against a gateway with mock traffic.

    python3 tests/ui_browser_test.py [--gw build/llmgw-asan]

Checks: the login form first, a wrong key refused (no cookie, the form again), the page after
the right key with no console errors, exceptions or CSP reports; the tables and chart show the
numbers /admin/series, /admin/keys and /admin/requests hold (values in the DOM); the per-model
view and a request-log filter; the drill-down; names with HTML in them shown as text (no element
made, no script run); the cookie invisible to script. Saves build/ui-screenshot.png.
Prints "N passed, N failed".
"""
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
import acct_test as A  # noqa: E402
import dash_test as D  # noqa: E402
from harness import Fail, check, eq, ROOT  # noqa: E402

CTX = H.CTX
MOCK = None
GW = H.GW
VERBOSE = False
SHOT = os.path.join(ROOT, "build", "ui-screenshot.png")


def chromium():
    for c in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(c)
        if p:
            return p
    raise Fail("no chromium (sh .ci/deps.sh installs Debian's chromium)")


def usd(v):
    return "%.6f" % v


def test_page_in_chromium():
    """The page in headless Chromium shows what the JSON endpoints hold."""
    g = D.gw()
    reqs = D.traffic(g)
    os.makedirs(os.path.dirname(SHOT), exist_ok=True)
    if os.path.exists(SHOT):
        os.remove(SHOT)
    p = subprocess.run(["node", "--experimental-websocket", os.path.join(H.HERE, "ui_cdp.mjs"), chromium(),
                        "http://127.0.0.1:%d" % g.port, D.ADMIN, SHOT], capture_output=True, timeout=90 * H.TOL)
    try:
        o = json.loads(p.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise Fail("ui_cdp.mjs said nothing usable (status %d): %s %s" % (p.returncode, p.stdout[-500:], p.stderr[-1500:]))
    check(p.returncode == 0, "ui_cdp.mjs failed: %s" % o.get("error"))
    eq((o["first"]["form"], o["first"]["app"]), (True, False), "GET /ui without a login: the form")
    eq((o["wrong"]["form"], o["wrong"]["app"], o["wrong"]["msg"], o["wrong"]["cookie"]),
       (True, False, "Wrong admin key.", ""), "a wrong key is refused")
    check(o["ready"], "the page did not finish its first refresh: %r" % o.get("facts"))
    eq(o["url"], "http://127.0.0.1:%d/ui" % g.port, "where the login lands")
    eq(o["cookie_visible"], "", "the login cookie is visible to script (not HttpOnly)")
    eq((o["console"], o["exceptions"], o["csp"]), ([], [], []), "console errors, exceptions, CSP reports")
    eq(o["before_login"], ["Failed to load resource: the server responded with a status of 401 (Unauthorized)"] * 2,
       "before the login: the form's own 401s only")
    eq((o["injected"], o["xss"]), (0, False), "HTML in names made elements or ran")
    # the numbers, against the JSON endpoints
    series = D.adm(g, "/admin/series?by=key").json()["series"]
    eq([r[0] for r in o["tables"]["top"]], [x["name"] for x in series], "top spenders: names in order")
    for row, x in zip(o["tables"]["top"], series):
        eq(row[1:], [usd(x["usd_total"]), str(x["tokens_total"]), str(x["requests_total"]), str(x["errors_total"])],
           "top row " + x["name"])
    alice = sum(r[2]["cost"] for r in reqs if r[0] == "alice")
    check(any(row[0] == "alice" and row[1] == usd(alice) for row in o["tables"]["top"]), "alice's spend in the table")
    eq([(c["name"], c["total"], c["points"]) for c in o["chart"]],
       [(x["name"], usd(x["usd_total"]), 60) for x in series], "chart lines: one per key, 60 points, their totals")
    eq(o["chart_max"], usd(max(max(x["usd"]) for x in series)), "chart scale")
    keys = D.adm(g, "/admin/keys").json()["keys"]
    eq([r[0] for r in o["tables"]["keys"]], [k["name"] for k in keys], "keys table names")
    ka = [r for r in o["tables"]["keys"] if r[0] == "alice"][0]
    ja = [k for k in keys if k["name"] == "alice"][0]
    eq((ka[1], ka[2]), (usd(2) + " / day", usd(ja["budget"]["spend"])), "alice's budget row")
    # the buckets refill as time goes: what the page showed is at most what the JSON says now
    for cell, lim, j in ((ka[5], 100, ja["rpm"]), (ka[6], 100000, ja["tpm"])):
        left, of = cell.split(" / ")
        check(int(of) == lim and int(left) <= j["remaining"] <= lim and int(left) >= lim - 10 - lim // 2,
              "rate limit cell %r vs %r" % (cell, j))
    log = D.adm(g, "/admin/requests?limit=100").json()["requests"]
    eq([r[1] for r in o["tables"]["reqs"]], [x["id"] for x in log], "request log ids, newest first")
    for row, x in zip(o["tables"]["reqs"], log):
        eq((row[2], row[3], row[5], row[9]), (x["key"], x["model"], str(x["status"]), usd(x["cost"])), "log row " + x["id"])
    health = D.adm(g, "/admin/health").json()["targets"]
    eq(sorted(r[0] for r in o["tables"]["health"]), sorted(x["id"] for x in health), "health rows")
    by_model = D.adm(g, "/admin/series?by=model").json()["series"]
    eq([(r[0], r[1]) for r in o["by_model"]], [(x["name"], usd(x["usd_total"])) for x in by_model], "per-model view")
    check(D.EVIL_MODEL in [r[0] for r in o["by_model"]], "the HTML model name shown as text")
    want = [x["id"] for x in log if x["key"] == "alice"]
    eq([r[1] for r in o["filtered"]], want, "the key filter")
    d = json.loads(o["detail"])
    eq(d["id"], want[0], "the drill-down shows the clicked request")
    eq(len(d["attempts"]), 0 if d["status"] == 404 else 1, "drill-down attempts")
    check(os.path.getsize(SHOT) > 10000, "screenshot %s is missing or empty" % SHOT)
    if H.VERBOSE:
        print("screenshot: %s" % SHOT)


def teardown():
    if A.MOCK is not None:
        A.MOCK.stop()


if __name__ == "__main__":
    sys.exit(H.main(globals(), __doc__, teardown=teardown, default_limit=120))
