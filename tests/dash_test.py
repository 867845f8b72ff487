#!/usr/bin/env python3
"""llmgw dashboard tests (section 14): GET /admin/* and GET /ui against a real llmgw process.

    python3 tests/dash_test.py [--gw build/llmgw-asan] [-k NAME]

Traffic goes to the built-in mock provider (its token counts are known: acct_test.mock_usage),
so every number the admin endpoints give is checked against a hand-computed value, against
/v1/generation and against /v1/key. Security: client keys refused, no-store and a strict CSP on
every answer, no secret in any of them, names with HTML in them kept as text, the login cookie.
The page in a real browser: tests/ui_browser_test.py. Prints "N passed, N failed".
"""
import gzip
import json
import os
import sys
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
import acct_test as A  # noqa: E402
from harness import Fail, check, eq, expect_status, marker  # noqa: E402

CTX = H.CTX
MOCK = None
GW = H.GW
VERBOSE = False

ADMIN = "adm-dash-1"
EVIL_KEY = "<img/src=x/onerror=window.__xss=1>"
EVIL_MODEL = "<b>bold</b>"
BODY = """
[provider.sec]
type = openai
base_url = http://127.0.0.1:9/v1
api_key = prov-secret-XYZ
[model.m1]
target = mk m1 in=3 out=15
[model.%s]
target = mk m2 in=1 out=2
[key.alice]
secret = sk-alice-secret
budget = 2/day
rpm = 100
tpm = 100000
max_concurrency = 4
[key.%s]
secret = sk-evil-secret
""" % (EVIL_MODEL, EVIL_KEY)
SECRETS = ("prov-secret-XYZ", "sk-alice-secret", "sk-evil-secret", ADMIN)
ADMIN_GETS = ("/admin/overview", "/admin/series", "/admin/series?by=model&range=day", "/admin/keys",
              "/admin/requests", "/admin/health", "/admin/generation?id=gen-1-00000000", "/ui/app.js")


def gw(state=False):
    g = A.Gateway(gateway="admin_key = %s" % ADMIN, body=BODY, state=state)
    return g.start()


def adm(g, path, **kw):
    r = H.request(g.port, "GET", path, key=ADMIN, **kw)
    expect_status(r, 200, "GET " + path)
    return r


def traffic(g):
    """Requests with known costs; returns [(key, model, usage dict, stream, id)]."""
    out = []
    for key, secret, model, text, stream in (("alice", "sk-alice-secret", "m1", "hello there", False),
                                             ("alice", "sk-alice-secret", "m1", "a longer prompt " * 5, True),
                                             ("alice", "sk-alice-secret", EVIL_MODEL, "x", False),
                                             (EVIL_KEY, "sk-evil-secret", EVIL_MODEL, "hi there", False),
                                             (EVIL_KEY, "sk-evil-secret", "m1", "third", True)):
        extra = {"stream_options": {"include_usage": True}} if stream else {}
        r = g.chat(secret, model, text, stream=stream, **extra)
        expect_status(r, 200, "chat %s %s" % (key, model))
        pt, ct, _ = A.mock_usage([{"role": "user", "content": text}])
        price = (3, 15) if model == "m1" else (1, 2)
        out.append((key, model, {"prompt": pt, "completion": ct, "cost": (pt * price[0] + ct * price[1]) / 1e6},
                    stream, r.h("x-request-id")))
    r = g.chat("sk-alice-secret", "no-such-model", "x")
    eq(r.status, 404, "a failed request")
    out.append(("alice", "no-such-model", {"prompt": 0, "completion": 0, "cost": 0.0}, False, r.h("x-request-id")))
    g.access([x[4] for x in out])
    return out


def check_headers(r, what):
    eq(r.h("cache-control"), "no-store", what + ": Cache-Control")
    csp = r.h("content-security-policy") or ""
    for part in ("default-src 'none'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'",
                 "base-uri 'none'", "form-action 'self'"):
        check(part in csp, "%s: CSP lacks %s: %r" % (what, part, csp))
    check("unsafe-inline" not in csp and "unsafe-eval" not in csp and "*" not in csp, what + ": CSP too loose")
    eq(r.h("x-content-type-options"), "nosniff", what + ": nosniff")


def test_admin_refuses_client_keys():
    """Every /admin/ endpoint and the page's script: 401 without a key, with a client key and
    with a wrong one, still no-store with the strict CSP; 200 with the admin key."""
    g = gw()
    for path in ADMIN_GETS:
        for key in (None, "sk-alice-secret", "sk-evil-secret", ADMIN + "x"):
            r = H.request(g.port, "GET", path, key=key)
            eq(r.status, 401, "GET %s with key %r" % (path, key))
            check_headers(r, "GET %s (401)" % path)
            check(b"alice" not in r.body, "401 body says more than needed")
        r = H.request(g.port, "GET", path, headers={"x-api-key": "sk-alice-secret"})
        eq(r.status, 401, "GET %s with a client key as x-api-key" % path)
        r = H.request(g.port, "GET", path, key=ADMIN)
        eq(r.status, 404 if "generation" in path else 200, "GET %s with the admin key" % path)
        check_headers(r, "GET %s" % path)
    r = H.request(g.port, "GET", "/ui", key="sk-alice-secret")
    eq(r.status, 401, "GET /ui with a client key: the login form")
    check(b'name="key"' in r.body and b"/ui/app.js" not in r.body, "GET /ui refused: not the login form")
    check_headers(r, "GET /ui (login)")


def test_admin_values():
    """The numbers: series per key, per model and in all, keys' spend and limits, the request log
    (filters, after=SEQ) and the drill-down, against hand-computed costs and /v1/generation."""
    g = gw()
    reqs = traffic(g)
    for by, idx in (("key", 0), ("model", 1)):
        for rg, n in (("hour", 60), ("day", 144), ("month", 30)):
            s = adm(g, "/admin/series?by=%s&range=%s" % (by, rg)).json()
            eq((s["by"], s["range"], s["buckets"]), (by, rg, n), "series head")
            got = {x["name"]: x for x in s["series"]}
            names = set(r[idx] for r in reqs)
            eq(set(got), names, "series names by %s" % by)
            for name in names:
                mine = [r for r in reqs if r[idx] == name]
                x = got[name]
                H.near_usd(x["usd_total"], sum(r[2]["cost"] for r in mine), "%s %s usd_total" % (by, name))
                H.near_usd(sum(x["usd"]), x["usd_total"], "%s %s: buckets sum to the total" % (by, name))
                eq(x["requests_total"], len(mine), "%s %s requests" % (by, name))
                eq(x["errors_total"], sum(1 for r in mine if r[1] == "no-such-model"), "%s %s errors" % (by, name))
                eq(x["tokens_total"], sum(r[2]["prompt"] + r[2]["completion"] for r in mine), "%s %s tokens" % (by, name))
                eq(len(x["usd"]), n, "bucket count")
            usd = [x["usd_total"] for x in s["series"]]
            eq(usd, sorted(usd, reverse=True), "series sorted by spend (top spenders first)")
    total = adm(g, "/admin/series?by=all").json()["series"]
    eq(len(total), 1, "one series for all")
    H.near_usd(total[0]["usd_total"], sum(r[2]["cost"] for r in reqs), "all: usd")
    keys = {k["name"]: k for k in adm(g, "/admin/keys").json()["keys"]}
    eq(set(keys), {"alice", EVIL_KEY}, "keys listed")
    a = keys["alice"]
    H.near_usd(a["budget"]["spend"], sum(r[2]["cost"] for r in reqs if r[0] == "alice"), "alice spend")
    eq((a["budget"]["period"], a["budget"]["limit"], a["rpm"]["limit"], a["tpm"]["limit"],
        a["concurrency"]["limit"]), ("day", 2, 100, 100000, 4), "alice limits")
    info = g.key_info("sk-alice-secret")
    H.near_usd(a["budget"]["spend"], info["usage"], "alice spend vs /v1/key")
    H.near_usd(a["total_usd"], info["total_spend"], "alice total vs /v1/key")
    check(a["budget"]["reset_ms"] % 86400000 == 0 and a["budget"]["reset_ms"] > 0, "reset at a UTC midnight")
    log = adm(g, "/admin/requests?limit=100").json()
    eq([x["id"] for x in log["requests"]], [r[4] for r in reversed(reqs)], "the log, newest first")
    for x, r in zip(log["requests"], reversed(reqs)):
        eq((x["key"], x["model"], x["stream"]), (r[0], r[1], r[3]), "log entry " + r[4])
        H.near_usd(x["cost"], r[2]["cost"], "log cost " + r[4])
    latest = log["latest"]
    eq(adm(g, "/admin/requests?after=%d" % latest).json()["requests"], [], "after=latest: nothing new")
    eq([x["seq"] for x in adm(g, "/admin/requests?after=%d" % (latest - 2)).json()["requests"]],
       [latest, latest - 1], "after=latest-2: the two newest only")
    for q, want in (("key=alice", [r for r in reqs if r[0] == "alice"]),
                    ("model=" + urllib.parse.quote(EVIL_MODEL, safe=""), [r for r in reqs if r[1] == EVIL_MODEL]),
                    ("status=error", [r for r in reqs if r[1] == "no-such-model"]),
                    ("status=200&stream=1", [r for r in reqs if r[3]]),
                    ("stream=0&key=alice", [r for r in reqs if not r[3] and r[0] == "alice"]),
                    ("provider=mk&limit=2", [r for r in reqs if r[1] != "no-such-model"][-2:])):
        got = [x["id"] for x in adm(g, "/admin/requests?" + q).json()["requests"]]
        eq(got, [r[4] for r in reversed(want)], "filter " + q)
    rid = reqs[1][4]
    d = adm(g, "/admin/generation?id=" + rid).json()["data"]
    v = H.request(g.port, "GET", "/v1/generation?id=" + rid, key="sk-alice-secret").json()["data"]
    eq((d["id"], d["model"], d["provider"], d["prompt_tokens"], d["completion_tokens"], d["num_attempts"]),
       (v["id"], v["model"], v["provider"], v["prompt_tokens"], v["completion_tokens"], v["num_attempts"]),
       "drill-down vs /v1/generation")
    eq(len(d["attempts"]), 1, "one attempt")
    H.near_usd(d["cost"], reqs[1][2]["cost"], "drill-down cost")
    h = {x["id"]: x for x in adm(g, "/admin/health").json()["targets"]}
    eq((h["mk/m1"]["ok"], h["mk/m1"]["errors"], h["mk/m1"]["breaker"]), (3, 0, "closed"), "health of mk/m1")
    eq(h["mk/m1"]["error_rate"], 0, "error rate")
    o = adm(g, "/admin/overview").json()
    eq((o["version"], o["models"], o["keys"], o["store"]), (o["version"], 2, 2, "local"), "overview")
    check(o["requests_served"] >= len(reqs) and o["memory"]["series"] == 1 + 2 + 3, "overview counts: %r" % o)
    eq(o["memory"]["series_bytes"] % o["memory"]["series"], 0, "series bytes")


def test_no_secrets_and_escaping():
    """No provider key, client secret or the admin key in any answer; names with HTML come back
    as JSON strings (the page writes them as text: app.js never uses innerHTML)."""
    g = gw()
    traffic(g)
    for path in ADMIN_GETS[:-2] + ("/ui", "/ui/app.js", "/ui/app.css"):
        r = adm(g, path)
        for s in SECRETS:
            check(s.encode() not in r.body, "%s shows a secret (%s)" % (path, s[:4]))
    keys = [k["name"] for k in adm(g, "/admin/keys").json()["keys"]]
    check(EVIL_KEY in keys, "the HTML key name is not given back as it is")
    js = adm(g, "/ui/app.js").text
    for bad in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        check(bad not in js, "app.js uses %s" % bad)
    page = adm(g, "/ui").text
    check("<script>" not in page and "style=" not in page and " on" not in page.replace(" one", ""),
          "the page has inline script, style or handlers")


def test_login_cookie():
    """POST /ui/login: a wrong key or none is refused without a cookie; the right one sets an
    HttpOnly SameSite=Strict cookie that opens /ui and /admin/; a forged or expired cookie, the
    key in the URL and a cookie after a new admin key are refused; logout clears it."""
    g = gw()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for body in ("key=wrong", "key=", "nokey=" + ADMIN, "key=sk-alice-secret"):
        r = H.request(g.port, "POST", "/ui/login", body, headers=form)
        eq(r.status, 401, "login with %r" % body)
        check(r.h("set-cookie") is None, "a cookie for a wrong login")
        check(b"Wrong admin key" in r.body, "no message")
        check_headers(r, "login refused")
    r = H.request(g.port, "GET", "/ui?key=" + ADMIN)
    eq(r.status, 401, "the key in the URL opens nothing")
    r = H.request(g.port, "POST", "/ui/login", "key=" + ADMIN.replace("-", "%2D"), headers=form)
    eq((r.status, r.h("location")), (303, "/ui"), "login")
    ck = r.h("set-cookie")
    check(ck and "HttpOnly" in ck and "SameSite=Strict" in ck and "Path=/" in ck, "cookie flags: %r" % ck)
    check(ADMIN not in ck, "the cookie holds the admin key")
    cookie = ck.split(";")[0]
    for path in ("/ui", "/admin/overview", "/ui/app.js"):
        r = H.request(g.port, "GET", path, headers={"Cookie": "other=1; " + cookie})
        eq(r.status, 200, "GET %s with the cookie" % path)
    exp, mac = cookie.split("=", 1)[1].split(".")
    for bad in ("llmgw_ui=%s.%s" % (int(exp) + 1, mac), "llmgw_ui=%s.%s" % (exp, "0" * 64),
                "llmgw_ui=1.%s" % mac, "llmgw_ui=" + ADMIN):
        r = H.request(g.port, "GET", "/admin/overview", headers={"Cookie": bad})
        eq(r.status, 401, "forged cookie %s" % bad[:30])
    r = H.request(g.port, "GET", "/admin/overview", key="sk-alice-secret", headers={"Cookie": "x=" + cookie})
    eq(r.status, 401, "a cookie under another name")
    r = H.request(g.port, "POST", "/ui/logout", "", headers={"Cookie": cookie})
    eq(r.status, 303, "logout")
    check("Max-Age=0" in (r.h("set-cookie") or ""), "logout clears the cookie")
    g.gateway = "admin_key = new-admin-2"
    g.write()
    r = H.request(g.port, "POST", "/admin/reload", b"", key=ADMIN)
    eq(r.status, 200, "reload with a new admin key")
    r = H.request(g.port, "GET", "/admin/overview", headers={"Cookie": cookie})
    eq(r.status, 401, "the old cookie after a new admin key")


def test_gzip():
    """The page's files gzip-served to a client that takes it, the same bytes once inflated."""
    g = gw()
    for path in ("/ui", "/ui/app.js", "/ui/app.css"):
        plain = adm(g, path)
        z = adm(g, path, headers={"Accept-Encoding": "gzip, deflate"})
        eq(z.h("content-encoding"), "gzip", path + " gzip")
        check(plain.h("content-encoding") is None, path + ": gzip to a client that did not ask")
        eq(gzip.decompress(z.body), plain.body, path + ": inflated")
        check(len(z.body) < len(plain.body), path + ": smaller")


def test_series_survive_restart_and_reload_state():
    """With state_dir the series are there after a restart; /admin/overview tells the last reload."""
    g = gw(state=True)
    reqs = traffic(g)
    before = adm(g, "/admin/series?by=key").json()["series"]
    o = adm(g, "/admin/overview").json()
    eq(o["reload"]["count"], 0, "no reload yet")
    g.stop()
    check(os.path.isfile(os.path.join(g.state_dir, "series")), "state_dir/series written")
    g.restart()
    after = adm(g, "/admin/series?by=key").json()["series"]
    eq([(x["name"], x["requests_total"], x["tokens_total"]) for x in after],
       [(x["name"], x["requests_total"], x["tokens_total"]) for x in before], "series after a restart")
    for x, y in zip(after, before):
        H.near_usd(x["usd_total"], y["usd_total"], "usd after a restart")
    H.near_usd(sum(x["usd_total"] for x in after), sum(r[2]["cost"] for r in reqs), "usd vs hand-computed")
    good = open(g.cfg).read()
    with open(g.cfg, "w") as f:
        f.write(good + "\n[bogus]\n")
    eq(H.request(g.port, "POST", "/admin/reload", b"", key=ADMIN).status, 500, "a failed reload")
    r = adm(g, "/admin/overview").json()["reload"]
    check(r["count"] == 1 and r["ok"] is False and "bogus" in r["error"], "failed reload: %r" % r)
    with open(g.cfg, "w") as f:
        f.write(good)
    eq(H.request(g.port, "POST", "/admin/reload", b"", key=ADMIN).status, 200, "a good reload")
    r = adm(g, "/admin/overview").json()["reload"]
    check(r["count"] == 2 and r["ok"] is True and r["error"] is None, "good reload: %r" % r)


def teardown():
    if A.MOCK is not None:
        A.MOCK.stop()


if __name__ == "__main__":
    sys.exit(H.main(globals(), __doc__, teardown=teardown))
