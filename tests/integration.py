#!/usr/bin/env python3
"""llmgw integration tests: a real llmgw process against the scripted mock upstream.

    python3 tests/integration.py                 # all tests, against ./llmgw
    python3 tests/integration.py -k stream       # only tests whose name contains "stream"
    python3 tests/integration.py --gw /path/to/llmgw --list
    LLMGW_WRAP="valgrind --error-exitcode=99 -q" python3 tests/integration.py

Standard library only; everything talks to 127.0.0.1; every wait is bounded.
Prints "PASS name" / "FAIL name: reason" per test and ends with "N passed, N failed".
"""
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402  (the shared runner, assertions and process helpers)
from harness import (HERE, ROOT, PYTHON, WRAP, TOL, GW, VERBOSE, CTX, Fail, check, eq,  # noqa: E402,F401
                     near, snip, marker, on_cleanup, free_port, read_file, in_thread, join, limit,
                     run_gw)
from harness import Conn, build_request, parse_sse, http_request as http  # noqa: E402

MOCK_SCRIPT = os.path.join(HERE, "mockup.py")
CURL = "/usr/bin/curl"

TEXT = "Hello from mock upstream"                      # what the mock's `ok` scenarios say
SLOW_TEXT = "".join("tick%d " % i for i in range(10))  # what `slow-stream` says
COST_OK = 11 * 1 / 1e6 + 7 * 2 / 1e6                   # mock usage at in=1 out=2 USD/Mtok
SECRETS = ["upstream-secret", "sk-test", "sk-hashed", "sk-limited"]
RETRY_STATUSES = [429, 500, 502, 503, 504, 529, 408]
MOCK = None                           # the mock upstream process, shared by all tests


# =======================================================================================
# assertions


# =======================================================================================
# per-test context (one test runs at a time)


# =======================================================================================
# SSE views (the raw HTTP client is harness.Conn)

def sse_content(events):
    out = []
    for e in events:
        j = e.json
        if isinstance(j, dict) and isinstance(j.get("choices"), list):
            for ch in j["choices"]:
                if isinstance(ch, dict) and isinstance(ch.get("delta"), dict):
                    c = ch["delta"].get("content")
                    if isinstance(c, str):
                        out.append(c)
    return "".join(out)


def sse_done(events):
    return any(e.data == "[DONE]" and not e.partial for e in events)


def sse_errors(events):
    return [e for e in events if e.data and '"error"' in e.data]


def sse_usages(events):
    return [e.json["usage"] for e in events
            if isinstance(e.json, dict) and isinstance(e.json.get("usage"), dict)]


def chat_body(model, stream=False, mk=None, **extra):
    b = {"model": model, "messages": [{"role": "user", "content": "Say hello. %s" % (mk or "")}]}
    if stream:
        b["stream"] = True
    b.update(extra)
    return b


def expect_status(r, want, what):
    want = want if isinstance(want, (tuple, list, set)) else (want,)
    if r.status not in want:
        raise Fail("%s: expected status %s, got %d; headers %r; body %s" % (
            what, "/".join(map(str, want)), r.status, r.headers, snip(r.body)))


def expect_error(r, want, what, contains=(), code=True):
    """An OpenAI-dialect error: {"error":{"message","type","code"}}; returns the message."""
    expect_status(r, want, what)
    j = r.json()
    err = j.get("error") if isinstance(j, dict) else None
    check(isinstance(err, dict), "%s: error body has no \"error\" object: %s" % (what, snip(r.body)))
    msg = err.get("message")
    check(isinstance(msg, str) and msg.strip(),
          "%s: error.message missing or empty: %s" % (what, snip(r.body)))
    check("type" in err, "%s: error.type missing: %s" % (what, snip(r.body)))
    if code:
        check(str(err.get("code")) == str(r.status),
              "%s: error.code should be the status %d, got %r" % (what, r.status, err.get("code")))
    for c in contains:
        check(c.lower() in msg.lower(), "%s: error message %r should mention %r" % (what, msg, c))
    return msg


def expect_ok_chat(r, what, provider="up", model="m-ok", text=TEXT, attempts=1, cost=COST_OK):
    expect_status(r, 200, what)
    check(r.h("x-request-id"), "%s: missing x-request-id header; headers %r" % (what, r.headers))
    eq(r.h("x-llmgw-provider"), provider, "%s: x-llmgw-provider header" % what)
    if attempts is not None:
        eq(r.h("x-llmgw-attempts"), str(attempts), "%s: x-llmgw-attempts header" % what)
    j = r.json()
    eq(j.get("provider"), provider, "%s: body.provider" % what)
    eq(j.get("model"), model, "%s: body.model (the public model name)" % what)
    try:
        content = j["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise Fail("%s: no choices[0].message.content in %s" % (what, snip(r.body)))
    if text is not None:
        eq(content, text, "%s: reply content" % what)
    u = j.get("usage")
    check(isinstance(u, dict), "%s: no usage object in %s" % (what, snip(r.body)))
    if cost is not None:
        near(u.get("cost"), cost, "%s: usage.cost" % what)
    return j


def expect_ok_stream(r, what, text=TEXT, usage=False, cost=COST_OK):
    expect_status(r, 200, what)
    ct = r.h("content-type", "")
    check(ct.startswith("text/event-stream"), "%s: Content-Type %r, expected text/event-stream" % (what, ct))
    ev = r.events
    errs = sse_errors(ev)
    check(not errs, "%s: stream carries error events: %r" % (what, errs))
    check(sse_done(ev), "%s: stream did not end with data: [DONE]; events %r" % (what, ev[-4:]))
    check(ev[-1].data == "[DONE]", "%s: [DONE] is not the last event: %r" % (what, ev[-3:]))
    if text is not None:
        eq(sse_content(ev), text, "%s: joined delta.content" % what)
    us = sse_usages(ev)
    if usage:
        check(len(us) == 1, "%s: expected exactly one usage chunk, got %d: %r" % (what, len(us), us))
        if cost is not None:
            near(us[0].get("cost"), cost, "%s: usage.cost in the stream's usage chunk" % what)
    else:
        check(not us, "%s: client did not ask for usage but the stream has usage: %r" % (what, us))
    return ev


# =======================================================================================
# processes: mock upstream and gateway


class Mock(H.MockProc):
    def __init__(self):
        super().__init__([PYTHON, MOCK_SCRIPT, "--port", "0"], "llmgw-mock-", "mock upstream")

    def _call(self, method, path):
        if not self.alive():
            raise Fail("the mock upstream died; its stderr: %s" % read_file(self.stderr_path)[-2000:])
        r = http(self.port, method, path, key=None, timeout=10,
                 body=b"" if method == "POST" else None)
        expect_status(r, 200, "mock %s %s" % (method, path))
        return r.json()

    def requests(self):
        return self._call("GET", "/_requests")

    def find(self, mk):
        return [r for r in self.requests() if mk in r["body"]]

    def close_idle(self):
        return self._call("POST", "/_close_idle").get("closed", 0)


def mock():
    global MOCK
    if MOCK is None:
        MOCK = Mock()
        H.CTX.mock_mark = 0
    if not MOCK.alive():
        raise Fail("the mock upstream died; its stderr: %s" % read_file(MOCK.stderr_path)[-2000:])
    return MOCK


def model_section(name, targets, *extra):
    return "[model.%s]\n%s\n%s" % (name, "\n".join("target = " + t for t in targets),
                                   "".join(e + "\n" for e in extra))


BASE_MODELS = [
    ("m-ok", ["up ok in=1 out=2"]),
    ("m-fallback", ["up status-503", "up2 ok#2"]),
    ("m-mock", ["echo mock-1 in=1 out=2"], "aliases = mock-alias"),
    ("m-slow", ["up slow-stream in=1 out=2"]),
    ("m-echo", ["up echo"]),
    ("m-emb", ["up emb-1"]),
    ("m-stall", ["up stall"]),
    ("m-stall-fb", ["up stall#fb", "up2 ok#afterstall in=1 out=2"]),
    ("m-dead-fb", ["dead ok", "up2 ok#afterdead in=1 out=2"]),
    ("m-reset-mid", ["up reset-mid", "up2 ok#notused"]),
    ("m-stall-mid", ["up stall-mid", "up2 ok#notused"]),
    ("m-allfail", ["up status-503#x", "up2 status-500#y"]),
    ("m-many", ["up status-503#a", "up status-500#b", "up2 status-502#c", "up2 ok#d"]),
    ("m-cbh", ["up close-before-head"]),
] + [("m-frame-" + s, ["up %s in=1 out=2" % s]) for s in ("ok-cl", "ok-chunked", "ok-close", "onebyte")]

GW_DEFAULTS = [
    ("auth", "keys"), ("header_timeout", "1s"), ("idle_timeout", "5s"),
    ("connect_timeout", "1s"), ("first_byte_timeout", "2s"), ("stream_idle_timeout", "2s"),
    ("max_attempts", "3"), ("log_level", "warn"),
]


def config_text(port, mock_port, access_log, gw=None, keys=True, models=True, extra="",
                listen=None):
    """The base test config; `gw` overrides/adds [gateway] settings (value None drops one)."""
    opts = dict(GW_DEFAULTS)
    opts.update(gw or {})
    out = ["[gateway]", "listen = %s" % (listen or "127.0.0.1:%d" % port),
           "access_log = %s" % access_log]
    out += ["%s = %s" % (k, v) for k, v in opts.items() if v is not None]
    out.append("""
[provider.up]
type = openai
base_url = http://127.0.0.1:{mp}/v1
api_key = upstream-secret
header = X-Extra: yes
direct = yes

[provider.up2]
type = openai
base_url = http://127.0.0.1:{mp}/v1
api_key = upstream-secret-2

[provider.dead]
type = openai
base_url = http://127.0.0.1:1/v1

[provider.echo]
type = mock
""".format(mp=mock_port))
    if models:
        for m in BASE_MODELS:
            out.append(model_section(*m))
    if keys:
        out.append("""[key.test]
secret = sk-test

[key.hashed]
secret = sha256:%s

[key.limited]
secret = sk-limited
models = m-mock
""" % hashlib.sha256(b"sk-hashed").hexdigest())
    out.append(extra)
    return "\n".join(out) + "\n"


class Gateway(H.GatewayBase):
    start_stderr_always = False   # dedicated gateways get their stderr printed by the runner
    quick_after_timeouts = True

    def __init__(self, shared=False, **cfg):
        super().__init__(shared, register=False)
        self.cfg_args = cfg
        self.mock_port = mock().port
        self.write(self.config(**cfg))
        if not shared:
            H.CTX.gateways.append(self)

    def config(self, **cfg):
        return config_text(self.port, self.mock_port, self.access_log, **cfg)

    def health(self):
        return http(self.port, "GET", "/health", key=None, timeout=1).status

    def access_lines(self, want_ids=(), wait=3, until=None):
        """Parsed access-log lines; waits (bounded) until every id in want_ids is present
        and until(lines) is true."""
        deadline = time.monotonic() + wait * TOL
        while True:
            lines = []
            for i, ln in enumerate(read_file(self.access_log).splitlines()):
                if not ln.strip():
                    continue
                try:
                    lines.append(json.loads(ln))
                except ValueError as e:
                    raise Fail("access log line %d is not JSON (%s): %s" % (i + 1, e, snip(ln)))
            ids = {l.get("id") for l in lines if isinstance(l, dict)}
            if (all(i in ids for i in want_ids) and (until is None or until(lines))) \
                    or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)

    # -- convenience
    def get(self, path, key="sk-test", **kw):
        return http(self.port, "GET", path, key=key, **kw)

    def post(self, path, body, key="sk-test", **kw):
        return http(self.port, "POST", path, body, key=key, **kw)

    def chat(self, model, stream=False, mk=None, key="sk-test", headers=None, timeout=10,
             until=None, **extra):
        return http(self.port, "POST", "/v1/chat/completions", chat_body(model, stream, mk, **extra),
                    headers=headers, key=key, timeout=timeout, until=until)


SHARED = None
SHARED_FAILED = None


def shared():
    """The gateway most tests share, started once with the base config."""
    global SHARED, SHARED_FAILED
    if SHARED_FAILED:
        raise Fail("shared gateway could not be started earlier: %s" % SHARED_FAILED)
    if SHARED is not None and not SHARED.alive():
        err, rc = SHARED.stderr()[-3000:], SHARED.proc.poll()
        SHARED = None           # the next test starts a new one
        raise Fail("the shared gateway had died (exit status %r) before this test; stderr tail:\n%s"
                   % (rc, err))
    if SHARED is None:
        try:
            SHARED = Gateway(shared=True).start()
        except Fail as e:
            SHARED_FAILED = str(e).split("\n")[0]
            SHARED = None
            raise
    if not any(g is SHARED for g, _ in H.CTX.marks):
        H.CTX.marks.append((SHARED, SHARED.stderr_size()))
    return SHARED


def fresh(**cfg):
    """A dedicated gateway for this test (stopped with SIGTERM, exit 0 checked, at the end)."""
    return Gateway(**cfg).start()


def one_request(mk, what):
    rs = mock().find(mk)
    check(len(rs) == 1, "%s: the mock should have seen exactly one request with marker %s, saw %d: %r"
          % (what, mk, len(rs), [(r["path"], snip(r["body"], 120)) for r in rs]))
    return rs[0]


# =======================================================================================
# tests: command line and config checking

def test_cli_help_version():
    for arg in ("--help", "--version"):
        r = run_gw([arg])
        eq(r.returncode, 0, "llmgw %s exit status (stderr %s)" % (arg, snip(r.stderr)))
        check((r.stdout + r.stderr).strip(), "llmgw %s printed nothing" % arg)


def test_config_check_good():
    g = Gateway()
    text = "; llmgw test config\n# another comment style\n" + g.config().replace(
        "max_attempts = 3", "max_attempts = 3        ; a trailing comment").replace(
        "[provider.dead]", "[provider.dead]   # trailing comment on a section line")
    g.write(text)
    r = run_gw(["-t", "-c", g.cfg])
    eq(r.returncode, 0, "llmgw -t on a good config: exit status (stderr %s)" % snip(r.stderr, 1000))


def _line_of(lines, prefix):
    for i, ln in enumerate(lines):
        if ln.startswith(prefix):
            return i
    raise Fail("test bug: no line %r in base config" % prefix)


def test_config_check_errors():
    g = Gateway()
    base = g.config().split("\n")
    cases = []
    # unknown key in [gateway]: inserted right after the section line
    i = _line_of(base, "[gateway]")
    cases.append(("unknown-key", base[:i + 1] + ["listenn = 127.0.0.1:1"] + base[i + 1:], i + 2))
    # unknown section
    cases.append(("unknown-section", base + ["[bogus.thing]", "foo = 1"], len(base) + 1))
    # bad duration
    i = _line_of(base, "header_timeout")
    lines = list(base)
    lines[i] = "header_timeout = 5 parsecs"
    cases.append(("bad-duration", lines, i + 1))
    # target naming an unknown provider
    i = _line_of(base, "target = up ok in=1 out=2")
    lines = list(base)
    lines[i] = "target = nosuchprovider ok in=1 out=2"
    cases.append(("unknown-provider", lines, i + 1))
    problems = []
    for name, lines, lineno in cases:
        path = os.path.join(g.dir, "bad-%s.ini" % name)
        with open(path, "w") as f:
            f.write("\n".join(lines))
        r = run_gw(["-t", "-c", path])
        err = (r.stderr + r.stdout).decode("utf-8", "replace")
        base_name = os.path.basename(path)
        if r.returncode != 1:
            problems.append("%s: expected exit status 1, got %d (stderr %s)" % (name, r.returncode, snip(err)))
            continue
        if base_name not in err:
            problems.append("%s: stderr should name the file %s: %s" % (name, base_name, snip(err)))
            continue
        if not (re.search(r"%s:%d\b" % (re.escape(base_name), lineno), err)
                or re.search(r"\bline %d\b" % lineno, err)):
            problems.append("%s: stderr should name line %d (as FILE:%d or 'line %d'): %s"
                            % (name, lineno, lineno, lineno, snip(err)))
    check(not problems, "config errors not reported right:\n  " + "\n  ".join(problems))


def test_auth_none_refused_on_public_listener():
    g = Gateway(gw={"auth": "none"}, keys=False, listen="0.0.0.0:%d" % free_port())
    check(os.path.isfile(GW), "gateway binary %s not found (build it first)" % GW)
    with open(g.stderr_path, "ab") as errf:
        p = subprocess.Popen(WRAP + [GW, "-c", g.cfg], stdin=subprocess.DEVNULL, stdout=errf, stderr=errf)
    try:
        rc = p.wait(5 * TOL)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)
        raise Fail("auth = none on listen = 0.0.0.0 must be refused at startup, but llmgw kept running")
    check(rc != 0, "auth = none on 0.0.0.0: expected a non-zero exit, got 0")
    check(g.stderr().strip(), "auth = none on 0.0.0.0: refused without saying why on stderr")


# =======================================================================================
# tests: basic endpoints

def test_health_and_head():
    g = shared()
    r = g.get("/health", key=None)
    expect_status(r, 200, "GET /health without a key")
    eq(r.json().get("status"), "ok", "GET /health body.status")
    c = Conn(g.port)
    try:
        c.send(build_request(g.port, "HEAD", "/health", key=None))
        h = c.read_response("HEAD")
        expect_status(h, 200, "HEAD /health")
        # a body after the HEAD response would corrupt the next response on this connection
        c.send(build_request(g.port, "GET", "/health", key=None))
        r2 = c.read_response()
        expect_status(r2, 200, "GET /health after HEAD on the same connection")
        eq(r2.json().get("status"), "ok", "GET /health after HEAD: body.status")
    finally:
        c.close()


def test_models_list():
    g = shared()
    r = g.get("/v1/models")
    expect_status(r, 200, "GET /v1/models")
    check("upstream-secret" not in r.text, "/v1/models leaks an upstream api_key")
    data = r.json().get("data")
    check(isinstance(data, list), "/v1/models: no data list: %s" % snip(r.body))
    by = {m.get("id"): m for m in data if isinstance(m, dict)}
    for name in ("m-ok", "m-fallback", "m-mock"):
        check(name in by, "/v1/models should list %s; ids: %r" % (name, sorted(by)))
    m = by["m-ok"]
    check("context_length" in m, "m-ok: no context_length: %r" % m)
    p = m.get("pricing")
    check(isinstance(p, dict), "m-ok: no pricing object: %r" % m)
    for f in ("prompt", "completion", "input_cache_read", "input_cache_write"):
        check(isinstance(p.get(f), str), "m-ok: pricing.%s should be a string, got %r" % (f, p.get(f)))
    near(float(p["prompt"]), 1e-6, "m-ok pricing.prompt (USD per token, in=1/Mtok)")
    near(float(p["completion"]), 2e-6, "m-ok pricing.completion (out=2/Mtok)")
    check(isinstance(m.get("providers"), list) and "up" in m["providers"],
          "m-ok: providers should list 'up': %r" % m.get("providers"))
    fp = by["m-fallback"].get("providers")
    check(isinstance(fp, list) and "up" in fp and "up2" in fp,
          "m-fallback: providers should list up and up2: %r" % fp)


def test_models_list_anthropic_shape():
    """issue 14.2: the models list is the dialect row's; a client that sends
    anthropic-version (Anthropic's SDKs) gets Anthropic's shape, and its 401
    is Anthropic's error."""
    g = shared()
    r = g.get("/v1/models", headers={"anthropic-version": "2023-06-01"})
    expect_status(r, 200, "GET /v1/models (anthropic-version)")
    j = r.json()
    data = j.get("data")
    check(isinstance(data, list) and data, "no data list: %s" % snip(r.body))
    check("object" not in j and j.get("has_more") is False, "not Anthropic's list shape: %s" % snip(r.body))
    ids = [m.get("id") for m in data]
    check("m-ok" in ids, "m-ok not listed: %r" % ids)
    for m in data:
        check(m.get("type") == "model" and m.get("display_name") == m.get("id") and
              isinstance(m.get("created_at"), str), "entry not in Anthropic's shape: %r" % m)
    eq(j.get("first_id"), ids[0], "first_id")
    eq(j.get("last_id"), ids[-1], "last_id")
    r = g.get("/v1/models", key=None, headers={"anthropic-version": "2023-06-01"})
    expect_status(r, 401, "GET /v1/models without a key (anthropic-version)")
    j = r.json()
    check(j.get("type") == "error" and j.get("error", {}).get("type") == "authentication_error",
          "401 not in Anthropic's shape: %s" % snip(r.body))
    r = g.get("/v1/models")
    check(r.json().get("object") == "list", "without anthropic-version the list stays OpenAI's: %s" % snip(r.body))


def test_anthropic_paths():
    """issue 15 (parts 2 and 3): /v1/messages/count_tokens, GET /v1/models/{id} in both
    shapes, Anthropic's limit, Anthropic-shaped errors on every /v1/messages* path,
    x-should-retry: false on a 401, HEAD / answers 200."""
    g = shared()
    av = {"anthropic-version": "2023-06-01"}

    def count(body):
        r = g.post("/v1/messages/count_tokens", json.dumps(body), headers=av)
        expect_status(r, 200, "count_tokens")
        n = r.json().get("input_tokens")
        check(isinstance(n, int) and n > 0, "input_tokens should be a positive integer: %s" % snip(r.body))
        return n
    short = count({"model": "m-ok", "messages": [{"role": "user", "content": "Hi"}]})
    long_ = count({"model": "m-ok", "messages": [{"role": "user", "content": "Hi " * 400}]})
    sysd = count({"model": "m-ok", "system": "S" * 400, "messages": [{"role": "user", "content": "Hi"}]})
    tools = count({"model": "m-ok", "messages": [{"role": "user", "content": "Hi"}],
                   "tools": [{"name": "t", "description": "D" * 400, "input_schema": {"type": "object"}}]})
    check(long_ >= short + 250, "1200 more bytes should count ~300 more tokens: %d vs %d" % (long_, short))
    check(sysd >= short + 90 and tools >= short + 90, "system and tools count: %d %d vs %d" % (sysd, tools, short))
    r = g.post("/v1/messages/count_tokens", json.dumps({"model": "no-such", "messages": []}), headers=av)
    expect_status(r, 404, "count_tokens for an unknown model")
    check(r.json().get("type") == "error", "404 not Anthropic-shaped: %s" % snip(r.body))
    r = g.post("/v1/messages/nope", "{}", headers=av)
    expect_status(r, 404, "an unknown /v1/messages path")
    check(r.json().get("type") == "error" and r.json()["error"].get("type") == "not_found_error",
          "routing 404 on an Anthropic path should be Anthropic-shaped: %s" % snip(r.body))
    r = g.post("/v1/messages", "{}", key="sk-wrong", headers=av)
    expect_status(r, 401, "a bad key on /v1/messages")
    eq(r.headers.get("x-should-retry"), "false", "x-should-retry on a 401")
    check(r.json().get("error", {}).get("type") == "authentication_error", "401 shape: %s" % snip(r.body))
    r = g.post("/v1/chat/completions", "{}", key="sk-wrong")
    expect_status(r, 401, "a bad key on /v1/chat/completions")
    check("x-should-retry" not in r.headers, "the OpenAI dialect does not send x-should-retry")
    # GET /v1/models/{id}: both shapes, aliases, percent-encoding, unknown
    r = g.get("/v1/models/m-ok")
    expect_status(r, 200, "GET /v1/models/m-ok")
    eq(r.json().get("id"), "m-ok", "model id")
    eq(r.json().get("object"), "model", "OpenAI shape")
    r = g.get("/v1/models/mock-alias")
    expect_status(r, 200, "GET /v1/models/<alias>")
    eq(r.json().get("id"), "m-mock", "an alias retrieves its model")
    r = g.get("/v1/models/m%2Dok")
    expect_status(r, 200, "GET /v1/models/<percent-encoded>")
    r = g.get("/v1/models/m-ok", headers=av)
    expect_status(r, 200, "GET /v1/models/m-ok (anthropic-version)")
    eq(r.json().get("type"), "model", "Anthropic shape")
    eq(r.json().get("display_name"), "m-ok", "display_name")
    r = g.get("/v1/models/no-such-model")
    expect_status(r, 404, "GET /v1/models/<unknown>")
    check("error" in r.json() and "type" not in r.json(), "OpenAI-shaped 404: %s" % snip(r.body))
    r = g.get("/v1/models/no-such-model", headers=av)
    expect_status(r, 404, "GET /v1/models/<unknown> (anthropic-version)")
    check(r.json().get("type") == "error", "Anthropic-shaped 404: %s" % snip(r.body))
    all_ = g.get("/v1/models?limit=1000", headers=av).json()["data"]
    r = g.get("/v1/models?limit=2", headers=av)
    j = r.json()
    eq(len(j["data"]), 2, "limit=2")
    eq(j["has_more"], len(all_) > 2, "has_more")
    eq([m["id"] for m in j["data"]], [m["id"] for m in all_[:2]], "the first two")
    eq(j["last_id"], all_[1]["id"], "last_id")
    c = Conn(g.port)
    try:
        c.send(build_request(g.port, "HEAD", "/", key=None))
        h = c.read_response("HEAD")
        expect_status(h, 200, "HEAD /")
    finally:
        c.close()


# =======================================================================================
# tests: chat completions through the OpenAI fast path

def test_chat_nonstream():
    g = shared()
    mk = marker()
    r = g.chat("m-ok", mk=mk)
    j = expect_ok_chat(r, "m-ok non-stream")
    eq(j["usage"].get("prompt_tokens"), 11, "usage.prompt_tokens")
    eq(j["usage"].get("completion_tokens"), 7, "usage.completion_tokens")
    check(r.h("content-type", "").startswith("application/json"),
          "Content-Type should be application/json, got %r" % r.h("content-type"))


def test_forwarding_rewrites_request():
    g = shared()
    mk = marker()
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi " + mk}]
    body = {"model": "m-ok", "messages": msgs, "temperature": 0.5, "top_p": 0.9, "seed": 7,
            "models": ["m-ok"], "provider": {"order": ["up"]}, "usage": {"include": True}}
    r = g.post("/v1/chat/completions", body, headers={"x-api-key": "sk-test"})
    expect_ok_chat(r, "m-ok with llmgw fields")
    rec = one_request(mk, "forwarded request")
    eq(rec["method"], "POST", "upstream method")
    eq(rec["path"], "/v1/chat/completions", "upstream path (base_url + /chat/completions)")
    h = rec["headers"]
    eq(h.get("authorization"), "Bearer upstream-secret", "upstream Authorization header")
    eq(h.get("x-extra"), "yes", "upstream extra header from `header = X-Extra: yes`")
    leaked = [k for k, v in h.items() if "sk-test" in v]
    check(not leaked, "the client's key leaked upstream in headers %r" % leaked)
    check(h.get("content-type", "").startswith("application/json"),
          "upstream Content-Type %r" % h.get("content-type"))
    up = json.loads(rec["body"])
    eq(up.get("model"), "ok", "upstream body.model (rewritten to the target's upstream model)")
    for f in ("models", "provider", "usage"):
        check(f not in up, "llmgw's own field %r should be removed before forwarding: %s" % (f, snip(rec["body"])))
    eq(up.get("temperature"), 0.5, "forwarded temperature")
    eq(up.get("top_p"), 0.9, "forwarded top_p")
    eq(up.get("seed"), 7, "forwarded seed")
    eq(up.get("messages"), msgs, "forwarded messages")


def test_chat_echo_sees_forwarded_body():
    g = shared()
    mk = marker()
    r = g.chat("m-echo", mk=mk, max_tokens=5)
    j = expect_ok_chat(r, "m-echo", model="m-echo", text=None, cost=None)
    try:
        seen = json.loads(j["choices"][0]["message"]["content"])
    except ValueError:
        raise Fail("m-echo reply content is not the JSON the upstream saw: %s" % snip(r.body))
    eq(seen.get("model"), "echo", "upstream model for m-echo")
    eq(seen.get("max_tokens"), 5, "forwarded max_tokens")
    check(mk in json.dumps(seen.get("messages")), "messages not forwarded: %r" % seen)


def test_stream_basic():
    g = shared()
    mk = marker()
    r = g.chat("m-ok", stream=True, mk=mk)
    ev = expect_ok_stream(r, "m-ok stream")
    eq(r.h("cache-control"), "no-cache", "stream Cache-Control header")
    eq(r.h("x-accel-buffering"), "no", "stream X-Accel-Buffering header")
    check(r.h("x-request-id"), "stream: missing x-request-id header; headers %r" % r.headers)
    for e in ev[:-1]:
        check(isinstance(e.json, dict), "stream event is not JSON: %r" % e)
        eq(e.json.get("object"), "chat.completion.chunk", "stream chunk object")
    rec = one_request(mk, "stream request upstream")
    up = json.loads(rec["body"])
    eq(up.get("stream"), True, "upstream body.stream")
    so = up.get("stream_options")
    check(isinstance(so, dict) and so.get("include_usage") is True,
          "the gateway must always ask upstream for stream_options.include_usage:true; sent %r" % so)


def test_stream_usage_when_asked():
    g = shared()
    for how, extra in (("stream_options", {"stream_options": {"include_usage": True}}),
                       ("usage.include", {"usage": {"include": True}})):
        mk = marker()
        r = g.chat("m-ok", stream=True, mk=mk, **extra)
        expect_ok_stream(r, "stream with %s" % how, usage=True)
        u = sse_usages(r.events)[0]
        eq(u.get("prompt_tokens"), 11, "%s: usage.prompt_tokens" % how)
        eq(u.get("completion_tokens"), 7, "%s: usage.completion_tokens" % how)
        up = json.loads(one_request(mk, how)["body"])
        check("usage" not in up, "%s: llmgw's usage field was forwarded upstream" % how)
        eq((up.get("stream_options") or {}).get("include_usage"), True,
           "%s: upstream stream_options.include_usage" % how)


def test_stream_forwarded_event_by_event():
    g = shared()
    r = g.chat("m-slow", stream=True, timeout=15)
    ev = expect_ok_stream(r, "m-slow stream", text=SLOW_TEXT)
    ticks = [e for e in ev if e.json and "tick" in json.dumps(e.json)]
    check(len(ticks) == 10, "expected 10 tick events, got %d" % len(ticks))
    done_t = ev[-1].t
    check(ticks[0].t < 1.0 * TOL,
          "first content event arrived %.2fs after the request; the mock sent it at once "
          "(events must be forwarded as they arrive)" % ticks[0].t)
    check(done_t - ticks[0].t >= 1.2,
          "events were batched: first content at %.2fs, [DONE] at %.2fs (mock spaces them 0.2s)"
          % (ticks[0].t, done_t))
    gaps = [b.t - a.t for a, b in zip(ticks, ticks[1:])]
    spread = sum(1 for x in gaps if x >= 0.1)
    check(spread >= 7, "tick events should arrive ~0.2s apart; gaps were %s"
          % ", ".join("%.2f" % x for x in gaps))


def test_direct_provider_model():
    g = shared()
    mk = marker()
    r = g.chat("up/ok", mk=mk)
    expect_status(r, 200, "direct model up/ok")
    eq(r.h("x-llmgw-provider"), "up", "up/ok: x-llmgw-provider")
    eq(r.json().get("provider"), "up", "up/ok: body.provider")
    eq(json.loads(one_request(mk, "up/ok")["body"]).get("model"), "ok", "up/ok: upstream model")
    mk2 = marker()
    r = g.chat("up2/ok", mk=mk2)
    check(400 <= r.status < 500, "up2/ok (provider without direct = yes): expected a 4xx, got %d: %s"
          % (r.status, snip(r.body)))
    expect_error(r, r.status, "up2/ok")
    check(not mock().find(mk2), "up2/ok must not reach the upstream")


# =======================================================================================
# tests: fallback, retries, timeouts

def test_fallback_on_503():
    g = fresh()
    mk = marker()
    r = g.chat("m-fallback", mk=mk)
    expect_ok_chat(r, "m-fallback", provider="up2", model="m-fallback", attempts=2, cost=None)
    models = [json.loads(x["body"]).get("model") for x in mock().find(mk)]
    eq(models, ["status-503", "ok#2"], "upstream models tried, in order")


def test_fallback_on_connect_refused():
    g = fresh()
    mk = marker()
    r = g.chat("m-dead-fb", mk=mk)
    expect_ok_chat(r, "m-dead-fb", provider="up2", model="m-dead-fb", attempts=2)
    eq(json.loads(one_request(mk, "m-dead-fb")["body"]).get("model"), "ok#afterdead", "upstream model")


def test_fallback_on_first_byte_timeout():
    g = fresh()
    mk = marker()
    t = time.monotonic()
    r = g.chat("m-stall-fb", mk=mk, timeout=15)
    el = time.monotonic() - t
    expect_ok_chat(r, "m-stall-fb", provider="up2", model="m-stall-fb", attempts=2)
    check(el >= 1.5, "answered after %.2fs, before first_byte_timeout (2s) could fire?" % el)
    check(el < 6 * TOL, "took %.2fs; first_byte_timeout is 2s" % el)


def test_timeout_gives_504():
    g = fresh()
    t = time.monotonic()
    r = g.chat("m-stall", timeout=20)
    el = time.monotonic() - t
    expect_error(r, 504, "m-stall (upstream never answers)")
    check(el >= 1.5, "504 after %.2fs, before first_byte_timeout (2s)" % el)


def test_stream_failure_after_first_byte():
    g = fresh()
    for model in ("m-reset-mid", "m-stall-mid"):
        mk = marker()
        t = time.monotonic()
        r = g.chat(model, stream=True, mk=mk, timeout=15)
        el = time.monotonic() - t
        expect_status(r, 200, "%s stream (the head went out before the failure)" % model)
        ev = r.events
        check(sse_errors(ev), "%s: stream must end with an error event (a data: line with "
              "\"error\"); events: %r" % (model, ev[-3:]))
        check(not sse_done(ev), "%s: a failed stream must not end with data: [DONE]" % model)
        check(TEXT not in sse_content(ev), "%s: full text present though upstream failed" % model)
        models = [json.loads(x["body"]).get("model") for x in mock().find(mk)]
        check("ok#notused" not in models,
              "%s: after the first byte the gateway must not fall back; upstream saw %r" % (model, models))
        check(el < 8 * TOL, "%s: took %.2fs (stream_idle_timeout is 2s)" % (model, el))


def _status_gateway():
    """Each status gets its own failing provider fS and healthy provider gS, so provider
    health bookkeeping from one case cannot change another."""
    mp = mock().port
    extra, names = [], RETRY_STATUSES + [400, 401, 404, "quota"]
    for s in names:
        for p in ("f%s" % s, "g%s" % s):
            extra.append("[provider.%s]\ntype = openai\nbase_url = http://127.0.0.1:%d/v1\n"
                         "api_key = upstream-secret\n" % (p, mp))
        scen = "quota" if s == "quota" else "status-%s" % s
        extra.append(model_section("m-s%s" % s, ["f%s %s" % (s, scen), "g%s ok#after%s in=1 out=2" % (s, s)]))
    return fresh(extra="\n".join(extra))


@limit(60)
def test_retryable_statuses_fall_back():
    g = _status_gateway()
    problems = []
    for s in RETRY_STATUSES:
        mk = marker()
        try:
            r = g.chat("m-s%d" % s, mk=mk, timeout=15)
            expect_ok_chat(r, "upstream %d then ok" % s, provider="g%d" % s, model="m-s%d" % s, attempts=2)
            models = [json.loads(x["body"]).get("model") for x in mock().find(mk)]
            eq(models, ["status-%d" % s, "ok#after%d" % s], "upstream %d: models tried" % s)
        except Fail as e:
            problems.append("upstream %d: %s" % (s, e))
    check(not problems, "retryable statuses:\n  " + "\n  ".join(problems))


def test_non_retryable_statuses():
    g = _status_gateway()
    problems = []
    for s, want in ((400, 400), (404, 404), (401, 502), ("quota", None)):
        mk = marker()
        try:
            r = g.chat("m-s%s" % s, mk=mk)
            if want is None:
                check(r.status >= 400, "upstream insufficient_quota: expected an error, got %d" % r.status)
                expect_error(r, r.status, "upstream insufficient_quota", code=False)
            elif want == 502:
                expect_error(r, 502, "upstream 401 (gateway's own upstream credentials bad)",
                             contains=("f401", "401"))
            else:
                expect_error(r, want, "upstream %d" % s, code=False)
            models = [json.loads(x["body"]).get("model") for x in mock().find(mk)]
            scen = "quota" if s == "quota" else "status-%s" % s
            eq(models, [scen], "upstream %s must not be retried or fall back; models tried" % s)
        except Fail as e:
            problems.append("upstream %s: %s" % (s, e))
    check(not problems, "non-retryable statuses:\n  " + "\n  ".join(problems))


def test_max_attempts_and_502_message():
    g = fresh()
    mk = marker()
    r = g.chat("m-many", mk=mk, timeout=20)
    expect_error(r, 502, "m-many (3 failing targets, max_attempts = 3)")
    models = [json.loads(x["body"]).get("model") for x in mock().find(mk)]
    eq(models, ["status-503#a", "status-500#b", "status-502#c"],
       "max_attempts = 3: upstream models tried")
    mk = marker()
    r = g.chat("m-allfail", mk=mk, timeout=20)
    msg = expect_error(r, 502, "m-allfail", contains=("up2", "503", "500"))
    check(re.search(r"\bup\b", msg), "502 message should name provider 'up': %r" % msg)
    r = g.chat("m-cbh", timeout=20)
    msg = expect_error(r, 502, "m-cbh (upstream closes without answering)")
    check(re.search(r"\bup\b", msg), "502 message should name provider 'up': %r" % msg)


# =======================================================================================
# tests: upstream framing and connection pool

def test_upstream_framing_variants():
    g = shared()
    problems = []
    for s in ("ok-cl", "ok-chunked", "ok-close", "onebyte"):
        model = "m-frame-" + s
        try:
            expect_ok_chat(g.chat(model, timeout=15), "%s non-stream" % s, model=model)
            r = g.chat(model, stream=True, timeout=15, stream_options={"include_usage": True})
            expect_ok_stream(r, "%s stream" % s, usage=True)
        except Fail as e:
            problems.append("upstream scenario %s: %s" % (s, e))
    check(not problems, "upstream framing:\n  " + "\n  ".join(problems))


def test_upstream_connection_reuse():
    g = fresh()
    serials = []
    for i in range(3):
        mk = marker()
        expect_ok_chat(g.chat("m-ok", mk=mk), "request %d" % (i + 1))
        serials.append(one_request(mk, "request %d" % (i + 1))["serial"])
        time.sleep(0.05)
    check(len(set(serials)) == 1, "sequential requests to one upstream should reuse one pooled "
          "connection; mock connection serials were %r" % serials)


def test_upstream_stale_connection_replaced():
    g = fresh()
    mk = marker()
    expect_ok_chat(g.chat("m-ok", mk=mk), "first request")
    s1 = one_request(mk, "first request")["serial"]
    for pause in (0.0, 0.3):
        time.sleep(0.1)
        check(mock().close_idle() >= 1, "test bug: the mock had no idle connection to close")
        time.sleep(pause)
        mk = marker()
        expect_ok_chat(g.chat("m-ok", mk=mk), "request after upstream closed the pooled "
                       "connection (pause %.1fs)" % pause, attempts=None)
        s2 = one_request(mk, "second request")["serial"]
        check(s2 != s1, "test bug: same serial after close")
        s1 = s2


# =======================================================================================
# tests: the HTTP server side

def test_keepalive():
    g = shared()
    c = Conn(g.port)
    try:
        for i, (m, p, b) in enumerate((("GET", "/health", None), ("POST", "/v1/chat/completions",
                                       chat_body("m-ok")), ("GET", "/v1/models", None))):
            c.send(build_request(g.port, m, p, b))
            r = c.read_response(m)
            expect_status(r, 200, "request %d (%s %s) on one keep-alive connection" % (i + 1, m, p))
            check("close" not in r.h("connection", "").lower(),
                  "request %d: gateway closed a keep-alive connection" % (i + 1))
    finally:
        c.close()


def test_pipelining():
    g = shared()
    c = Conn(g.port)
    try:
        c.send(build_request(g.port, "GET", "/v1/models") + build_request(g.port, "GET", "/health"))
        r1, r2 = c.read_response(), c.read_response()
        expect_status(r1, 200, "pipelined GET /v1/models")
        check("data" in r1.json(), "first pipelined answer should be /v1/models: %s" % snip(r1.body))
        expect_status(r2, 200, "pipelined GET /health")
        eq(r2.json().get("status"), "ok", "second pipelined answer (/health)")
        c.send(build_request(g.port, "POST", "/v1/chat/completions", chat_body("m-ok")) +
               build_request(g.port, "POST", "/v1/chat/completions", chat_body("m-mock")))
        r1, r2 = c.read_response(), c.read_response()
        expect_ok_chat(r1, "pipelined chat 1 (m-ok)")
        expect_status(r2, 200, "pipelined chat 2 (m-mock)")
        eq(r2.json().get("provider"), "echo", "pipelined chat 2 provider (order kept)")
    finally:
        c.close()


def test_expect_100_continue():
    g = shared()
    mk = marker()
    body = json.dumps(chat_body("m-ok", mk=mk)).encode()
    c = Conn(g.port)
    try:
        c.send(("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-test\r\n"
                "Content-Type: application/json\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n"
                % len(body)).encode())
        h = c.read_head(timeout=2)
        eq(h.status, 100, "interim response to Expect: 100-continue")
        c.send(body, mark=False)
        expect_ok_chat(c.read_response("POST"), "chat after 100 Continue")
    finally:
        c.close()
    one_request(mk, "body sent after 100 Continue")


def test_chunked_request_body():
    g = shared()
    mk = marker()
    body = json.dumps(chat_body("m-ok", mk=mk, temperature=0.25)).encode()
    parts, i = [], 0
    for n in (1, 5, 17, 3):
        parts.append(body[i:i + n])
        i += n
    parts.append(body[i:])
    enc = b"".join((b"%x;ext=1\r\n" if k == 2 else b"%x\r\n") % len(p) + p + b"\r\n"
                   for k, p in enumerate(parts)) + b"0\r\n\r\n"
    c = Conn(g.port)
    try:
        c.send(("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-test\r\n"
                "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode() + enc)
        expect_ok_chat(c.read_response("POST"), "chunked request body")
    finally:
        c.close()
    up = json.loads(one_request(mk, "chunked request")["body"])
    eq(up.get("temperature"), 0.25, "temperature forwarded from a chunked body")


def test_method_and_path_errors():
    g = shared()
    r = g.get("/v1/chat/completions")
    expect_error(r, 405, "GET /v1/chat/completions")
    check("POST" in r.h("allow", ""), "405 should carry an Allow header naming POST; headers %r" % r.headers)
    expect_error(g.get("/v1/no-such-endpoint"), 404, "unknown path")
    c = Conn(g.port)
    try:
        c.send(b"BREW /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-test\r\n"
               b"Content-Length: 0\r\n\r\n")
        r = c.read_response()
        expect_error(r, (405, 501), "unknown method BREW")
    finally:
        c.close()
    expect_status(g.get("/health"), 200, "health after method errors")


def test_malformed_json():
    g = shared()
    for body in (b'{"model": "m-ok", "messages": [', b'{"model":"m-ok","messages":[],}', b'{"model" "m-ok"}'):
        r = g.post("/v1/chat/completions", body)
        expect_error(r, 400, "malformed JSON %r" % body, contains=("offset",))


def test_invalid_fields():
    g = shared()
    cases = [({"messages": [{"role": "user", "content": "x"}]}, "model"),
             ({"model": 5, "messages": [{"role": "user", "content": "x"}]}, "model"),
             ({"model": "m-ok"}, "messages"),
             ({"model": "m-ok", "messages": "hello"}, "messages"),
             ([1, 2, 3], None)]
    for body, field in cases:
        r = g.post("/v1/chat/completions", body)
        expect_error(r, 400, "invalid request %s" % json.dumps(body), contains=(field,) if field else ())


def test_unknown_model():
    g = shared()
    r = g.chat("no-such-model-xyz")
    expect_error(r, 404, "unknown model", contains=("no-such-model-xyz",))


def test_auth():
    g = shared()
    expect_error(g.chat("m-ok", key=None), 401, "no key")
    expect_error(g.chat("m-ok", key="sk-wrong"), 401, "unknown key")
    expect_error(g.get("/v1/models", key="sk-wrong"), 401, "unknown key on /v1/models")
    r = http(g.port, "POST", "/v1/chat/completions", chat_body("m-ok"), headers={"x-api-key": "sk-test"}, key=None)
    expect_ok_chat(r, "x-api-key: sk-test")
    expect_ok_chat(g.chat("m-ok", key="sk-hashed"), "sha256-hashed key")
    expect_status(g.chat("m-mock", key="sk-limited"), 200, "key.limited asking for an allowed model")
    expect_error(g.chat("m-ok", key="sk-limited"), 403, "key.limited asking for m-ok")


def test_auth_no_keys_refuses_everything():
    g = fresh(keys=False)
    expect_error(g.chat("m-ok", key="sk-test"), 401, "no [key.*] sections: chat")
    expect_error(g.chat("m-ok", key=None), 401, "no [key.*] sections: chat without key")
    expect_error(g.get("/v1/models", key="sk-test"), 401, "no [key.*] sections: /v1/models")
    check(g.stderr().strip(), "no [key.*] sections with auth = keys: the startup log should say why "
          "every request is refused, stderr is empty")


def test_auth_none_on_loopback():
    g = fresh(keys=False, gw={"auth": "none"})
    expect_ok_chat(g.chat("m-ok", key=None), "auth = none without a key")


def test_header_timeout():
    g = shared()
    c = Conn(g.port)
    try:
        c.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: hal")
        t = time.monotonic()
        time.sleep(0.3)
        other = g.get("/health", key=None, timeout=2)
        check(time.monotonic() - t < 0.3 + 1.0 * TOL, "another client waited while a slow one stalled")
        expect_status(other, 200, "another client while a slow client stalls")
        r = c.read_response(timeout=3)
        expect_error(r, 408, "slow client (header_timeout = 1s)")
        closed, _ = c.wait_closed(max(0.1, t + 2.5 * TOL - time.monotonic()))
        el = time.monotonic() - t
        check(closed, "connection not closed %.2fs after a header timeout" % el)
        check(el >= 0.8, "408 after only %.2fs (header_timeout = 1s)" % el)
    finally:
        c.close()


def test_idle_timeout():
    g = fresh(gw={"idle_timeout": "1s", "header_timeout": "3s"})
    c = Conn(g.port)
    try:
        c.send(build_request(g.port, "GET", "/health"))
        expect_status(c.read_response(), 200, "GET /health")
        closed, el = c.wait_closed(4 * TOL)
        check(closed, "idle keep-alive connection still open after %.1fs (idle_timeout = 1s)" % el)
        check(el >= 0.7, "idle connection closed after %.2fs, before idle_timeout (1s)" % el)
    finally:
        c.close()


def _send_until_answer(c, data, piece=1024):
    """Send data in pieces, stopping as soon as the gateway answers (or drops us)."""
    for i in range(0, len(data), piece):
        if c.readable(0.01):
            return
        try:
            c.sock.sendall(data[i:i + piece])
        except OSError:
            return


def test_size_limits():
    g = fresh(gw={"max_body": "64k", "max_header": "4k"})
    # declared Content-Length over the limit: answered without reading the body
    c = Conn(g.port)
    try:
        c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-test\r\n"
               b"Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n")
        expect_error(c.read_response(timeout=3), 413, "Content-Length 10000000 with max_body = 64k")
    finally:
        c.close()
    # chunked body growing past the limit
    c = Conn(g.port)
    try:
        c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-test\r\n"
               b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        _send_until_answer(c, (b"2000\r\n" + b"x" * 0x2000 + b"\r\n") * 40, piece=0x2000 + 8)
        expect_error(c.read_response(timeout=3), 413, "chunked body past max_body = 64k")
    finally:
        c.close()
    # a body under the limit is fine
    big = chat_body("m-mock")
    big["messages"][0]["content"] += " pad" * 12000
    expect_status(g.post("/v1/chat/completions", big), 200, "a 48 KB body with max_body = 64k")
    # headers over max_header
    c = Conn(g.port)
    try:
        _send_until_answer(c, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 8000 + b"\r\n\r\n")
        expect_error(c.read_response(timeout=3), 431, "8 KB header with max_header = 4k")
    finally:
        c.close()
    expect_status(g.get("/health", headers={"X-Pad": "p" * 2000}), 200, "2 KB header with max_header = 4k")


def test_conflicting_framing_rejected():
    g = shared()
    for what, raw in (
            ("Content-Length and Transfer-Encoding", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
             b"Authorization: Bearer sk-test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            ("two different Content-Length", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
             b"Authorization: Bearer sk-test\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}x")):
        c = Conn(g.port)
        try:
            c.send(raw)
            expect_error(c.read_response(timeout=3), 400, what)
        finally:
            c.close()
    expect_status(g.get("/health"), 200, "health after framing errors")


def test_garbage_request():
    g = shared()
    c = Conn(g.port)
    try:
        c.send(b"THIS IS NOT HTTP AT ALL\r\n\r\n")
        r = c.read_response(timeout=3)
        expect_status(r, 400, "garbage request line")
    finally:
        c.close()
    c = Conn(g.port)
    try:   # a TLS ClientHello on the plain port: any answer or a close is fine, no crash
        c.send(bytes.fromhex("16030100a5010000a10303") + os.urandom(64))
        c.wait_closed(2)
    finally:
        c.close()
    expect_status(g.get("/health"), 200, "gateway still serving after garbage")


@limit(40)
def test_max_connections():
    g = fresh(gw={"max_connections": "4", "header_timeout": "5s", "idle_timeout": "20s"})
    time.sleep(0.3)     # let the gateway reap the startup health-check connection
    held = []
    try:
        for i in range(4):
            c = Conn(g.port)
            held.append(c)
            c.send(build_request(g.port, "GET", "/health"))
            expect_status(c.read_response(), 200, "connection %d of 4" % (i + 1))
        # the fifth: refused cleanly (503 and close, or a close), not served and not left hanging
        outcome = None
        try:
            c5 = socket.create_connection(("127.0.0.1", g.port), timeout=3 * TOL)
        except ConnectionRefusedError:
            outcome = "refused"
        if outcome is None:
            x = Conn(g.port, 3, sock=c5)
            try:
                try:
                    c5.sendall(build_request(g.port, "GET", "/health"))
                except OSError:
                    pass
                r = None
                try:
                    r = x.read_response(timeout=3)
                except Fail as e:
                    check("closed" in str(e) or "reset" in str(e),
                          "5th connection over max_connections = 4: neither answered nor closed: %s" % e)
                    outcome = "closed"
                if r is not None:
                    check(r.status == 503, "5th connection over max_connections = 4 was answered %d "
                          "(expected 503 and close, or a close)" % r.status)
                    outcome = "503"
            finally:
                c5.close()
        for i, c in enumerate(held):
            c.send(build_request(g.port, "GET", "/health"))
            expect_status(c.read_response(), 200, "held connection %d after the excess one (%s)" % (i + 1, outcome))
        held.pop(0).close()
        deadline = time.monotonic() + 3 * TOL
        while True:
            try:
                r = g.get("/health", timeout=1)
                if r.status == 200:
                    break
            except Fail:
                pass
            check(time.monotonic() < deadline, "a slot freed by closing a connection was not reused")
            time.sleep(0.1)
    finally:
        for c in held:
            c.close()


@limit(45)
def test_concurrent_requests():
    g = shared()
    n = 50
    barrier = threading.Barrier(n)

    def one(i):
        mk = marker()
        barrier.wait(10)
        if i % 2:
            r = g.chat("m-ok", stream=True, mk=mk, timeout=20)
            expect_ok_stream(r, "concurrent stream %d" % i)
        else:
            expect_ok_chat(g.chat("m-ok", mk=mk, timeout=20), "concurrent request %d" % i)
    boxes = [in_thread(one, i) for i in range(n)]
    errs = []
    for i, b in enumerate(boxes):
        b["thread"].join(30 * TOL)
        if b["thread"].is_alive():
            errs.append("request %d did not finish" % i)
        elif "error" in b:
            errs.append(b["error"].split("\n")[0])
    check(not errs, "%d of %d concurrent requests failed:\n  %s" % (len(errs), n, "\n  ".join(errs[:10])))


def test_client_disconnect_mid_stream():
    g = shared()
    other = in_thread(g.chat, "m-slow", stream=True, timeout=15)
    for rst in (False, True):
        c = Conn(g.port)
        c.send(build_request(g.port, "POST", "/v1/chat/completions", chat_body("m-slow", stream=True)))
        r = c.read_response("POST", timeout=10, until=lambda ev: "tick" in sse_content(ev))
        check("tick" in sse_content(r.events), "no content before disconnect")
        c.close(rst=rst)
    r = join(other, 15, "the concurrent slow stream")
    expect_ok_stream(r, "stream running while other clients disconnect", text=SLOW_TEXT)
    expect_status(g.get("/health"), 200, "health after client disconnects")


# =======================================================================================
# tests: the built-in mock provider and embeddings

def test_mock_provider():
    g = shared()
    r = g.chat("m-mock")
    expect_status(r, 200, "m-mock")
    j = r.json()
    eq(j.get("provider"), "echo", "m-mock body.provider")
    eq(r.h("x-llmgw-provider"), "echo", "m-mock x-llmgw-provider")
    eq(j.get("model"), "m-mock", "m-mock body.model")
    ch = j["choices"][0]
    eq(ch["message"].get("role"), "assistant", "m-mock message.role")
    content = ch["message"].get("content")
    check(isinstance(content, str) and content, "m-mock: empty content: %s" % snip(r.body))
    eq(ch.get("finish_reason"), "stop", "m-mock finish_reason")
    u = j.get("usage") or {}
    p, c, t = u.get("prompt_tokens"), u.get("completion_tokens"), u.get("total_tokens")
    check(all(isinstance(x, int) for x in (p, c, t)) and t == p + c and t > 0,
          "m-mock usage should have prompt+completion=total>0: %r" % u)
    near(u.get("cost"), p * 1e-6 + c * 2e-6, "m-mock usage.cost (in=1 out=2)")
    r = g.chat("m-mock", stream=True)
    expect_ok_stream(r, "m-mock stream", text=content)
    expect_status(g.chat("mock-alias"), 200, "alias mock-alias")
    r = g.post("/v1/embeddings", {"model": "m-mock", "input": ["a", "b"]})
    expect_status(r, 200, "embeddings from m-mock")
    data = r.json().get("data")
    check(isinstance(data, list) and len(data) == 2 and all(
        isinstance(d.get("embedding"), list) and d["embedding"] and
        all(isinstance(x, (int, float)) for x in d["embedding"]) for d in data),
        "m-mock embeddings: expected 2 vectors: %s" % snip(r.body))


def test_embeddings_openai():
    g = shared()
    mk = marker()
    r = g.post("/v1/embeddings", {"model": "m-emb", "input": ["hello " + mk, "world"]})
    expect_status(r, 200, "embeddings via m-emb")
    data = r.json().get("data")
    check(isinstance(data, list) and len(data) == 2, "expected 2 embeddings: %s" % snip(r.body))
    eq(data[0].get("embedding"), [0.1, -0.2, 0.3, 0.4], "first vector (as the mock sent it)")
    rec = one_request(mk, "embeddings upstream")
    eq(rec["path"], "/v1/embeddings", "upstream embeddings path")
    eq(rec["headers"].get("authorization"), "Bearer upstream-secret", "upstream Authorization")
    eq(json.loads(rec["body"]).get("model"), "emb-1", "upstream embeddings model")
    r = g.post("/v1/embeddings", {"model": "m-emb", "input": "one string"})
    expect_status(r, 200, "embeddings with a string input")
    eq(len(r.json().get("data") or []), 1, "one vector for a string input")


def _f32s(b64):
    import base64
    import struct
    raw = base64.b64decode(b64)
    check(len(raw) % 4 == 0, "base64 vector of %d bytes is not float32s" % len(raw))
    return list(struct.unpack("<%df" % (len(raw) // 4), raw))


def test_embeddings_base64():
    """issue 15 part 4: encoding_format base64 (little-endian float32) for the built-in mock
    and for Gemini, whose answers llmgw writes itself; the same numbers as the float form."""
    import http.server
    import threading
    g = shared()
    floats = g.post("/v1/embeddings", {"model": "m-mock", "input": ["alpha", "beta"]})
    expect_status(floats, 200, "mock embeddings (floats)")
    b64 = g.post("/v1/embeddings", {"model": "m-mock", "input": ["alpha", "beta"], "encoding_format": "base64"})
    expect_status(b64, 200, "mock embeddings (base64)")
    for a, b in zip(floats.json()["data"], b64.json()["data"]):
        check(isinstance(b["embedding"], str), "base64 asked, a list came: %s" % snip(b64.body))
        got = _f32s(b["embedding"])
        eq(len(got), len(a["embedding"]), "vector length")
        for x, y in zip(a["embedding"], got):
            near(y, x, "float32 of the mock's number (its float form has 6 decimals)", 1e-5)
    values = [[0.25, -1.5, 3.125e-3], [1e-8, 42.0, -0.0078125]]

    class Gem(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            n = int(self.headers.get("content-length", 0))
            self.rfile.read(n)
            body = json.dumps({"embeddings": [{"values": v} for v in values]}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass
    srv = http.server.HTTPServer(("127.0.0.1", 0), Gem)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    on_cleanup(srv.shutdown)
    gw = fresh(extra="[provider.gem]\ntype = gemini\nbase_url = http://127.0.0.1:%d/v1beta\n"
                     "api_key = k\n[model.m-gem-emb]\ntarget = gem text-embedding-004\n" % srv.server_port)
    r = gw.post("/v1/embeddings", {"model": "m-gem-emb", "input": ["a", "b"]})
    expect_status(r, 200, "gemini embeddings (floats)")
    eq([d["embedding"] for d in r.json()["data"]], values, "Gemini's numbers as it sent them")
    r = gw.post("/v1/embeddings", {"model": "m-gem-emb", "input": ["a", "b"], "encoding_format": "base64"})
    expect_status(r, 200, "gemini embeddings (base64)")
    for want, d in zip(values, r.json()["data"]):
        got = _f32s(d["embedding"])
        eq(len(got), len(want), "vector length")
        for x, y in zip(want, got):
            near(y, x, "float32 of Gemini's number", 1e-6)


@limit(40)
def test_anthropic_stream_start_usage_and_pings():
    """issue 15 part 4: a translated Anthropic stream's message_start carries the input
    tokens (the estimate, marked llmgw_estimated, when the upstream tells them only at the
    end), a ping follows message_start, and a stream silent for 10 s gets another ping."""
    import http.server
    import threading

    class Slow(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()

            def chunk(obj):
                d = ("data: %s\n\n" % (obj if isinstance(obj, str) else json.dumps(obj))).encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(d), d))
                self.wfile.flush()
            base = {"id": "c1", "object": "chat.completion.chunk", "model": "slow-1"}
            chunk(dict(base, choices=[{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]))
            time.sleep(10.8)
            chunk(dict(base, choices=[{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]))
            chunk(dict(base, choices=[], usage={"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}))
            chunk("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def log_message(self, *a):
            pass
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    on_cleanup(srv.shutdown)
    gw = fresh(extra="[provider.slow]\ntype = openai\nbase_url = http://127.0.0.1:%d/v1\napi_key = k\n"
                     "[model.m-pingslow]\ntarget = slow slow-1 in=1 out=2\n" % srv.server_port,
               gw={"stream_idle_timeout": "30s"})
    body = {"model": "m-pingslow", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    r = gw.post("/v1/messages", body, key=None, timeout=30,
                headers={"x-api-key": "sk-test", "anthropic-version": "2023-06-01"})
    expect_status(r, 200, "the slow translated stream")
    ev = r.events
    names = [e.name for e in ev]
    eq(names[:2], ["message_start", "ping"], "message_start, then a ping")
    u = json.loads(ev[0].data)["message"]["usage"]
    check(isinstance(u.get("input_tokens"), int) and u["input_tokens"] > 0, "message_start input_tokens: %r" % u)
    eq(u.get("llmgw_estimated"), True, "marked as llmgw's estimate")
    first_delta = next(e for e in ev if e.name == "content_block_delta")
    later = [e for e in ev if e.name == "ping" and e.t > first_delta.t + 5]
    check(len(later) == 1, "one ping during the 10.8 s of silence: %r" % [(e.name, round(e.t, 1)) for e in ev])
    check(9.5 <= later[0].t - first_delta.t <= 10.6, "the ping came after ~10 s: %.1f s; events %r" % (later[0].t - first_delta.t, [(e.name, round(e.t, 2)) for e in ev]))
    eq(names[-1], "message_stop", "the stream still ends with message_stop")
    md = [json.loads(e.data) for e in ev if e.name == "message_delta"]
    eq(md[-1]["usage"].get("output_tokens"), 2, "the upstream's usage at the end")


# =======================================================================================
# tests: logging and secrets

ACCESS_FIELDS = ["ts", "id", "key", "user", "model", "provider", "upstream_model", "status",
                 "attempts", "stream", "ms", "ttft_ms", "prompt_tokens", "completion_tokens",
                 "cached_tokens", "cost", "bytes_in", "bytes_out"]


def test_access_log():
    g = fresh()
    mks = [marker() for _ in range(4)]
    r1 = g.chat("m-ok", mk=mks[0], user="alice")
    expect_ok_chat(r1, "m-ok")
    r2 = g.chat("m-ok", stream=True, mk=mks[1], stream_options={"include_usage": True})
    expect_ok_stream(r2, "m-ok stream", usage=True)
    r3 = g.chat("m-fallback", mk=mks[2])
    expect_status(r3, 200, "m-fallback")
    r4 = g.chat("no-such-model", mk=mks[3])
    expect_status(r4, 404, "unknown model")
    ids = [r.h("x-request-id") for r in (r1, r2, r3)]
    check(all(ids), "responses without x-request-id: %r" % ids)
    lines = g.access_lines(ids, until=lambda ls: any(l.get("status") == 404 for l in ls))
    by = {}
    for ln in lines:
        by.setdefault(ln.get("id"), []).append(ln)
    for i in ids:
        check(len(by.get(i, [])) == 1, "request %s should have exactly one access-log line, has %d"
              % (i, len(by.get(i, []))))
    a, s, f = by[ids[0]][0], by[ids[1]][0], by[ids[2]][0]
    missing = [k for k in ACCESS_FIELDS if k not in a]
    check(not missing, "access-log line lacks %r: %s" % (missing, snip(json.dumps(a))))
    eq(a["key"], "test", "log key (the key's name)")
    eq(a["user"], "alice", "log user (the request's user field)")
    eq(a["model"], "m-ok", "log model")
    eq(a["provider"], "up", "log provider")
    eq(a["upstream_model"], "ok", "log upstream_model")
    eq(a["status"], 200, "log status")
    eq(a["stream"], False, "log stream")
    eq((a["prompt_tokens"], a["completion_tokens"], a["cached_tokens"]), (11, 7, 0), "log tokens")
    near(a["cost"], COST_OK, "log cost")
    check(isinstance(a["attempts"], list) and len(a["attempts"]) == 1, "log attempts: %r" % a["attempts"])
    at = a["attempts"][0]
    check(all(k in at for k in ("provider", "status", "ms", "error")), "attempt entry fields: %r" % at)
    eq((at["provider"], at["status"]), ("up", 200), "log attempt provider/status")
    for k in ("ms", "bytes_in", "bytes_out"):
        check(isinstance(a[k], (int, float)) and a[k] >= 0, "log %s should be a number: %r" % (k, a[k]))
    check(a["bytes_in"] > 0 and a["bytes_out"] > 0, "log bytes_in/bytes_out zero: %r" % a)
    eq(s["stream"], True, "stream request: log stream")
    check(isinstance(s["ttft_ms"], (int, float)), "stream request: ttft_ms should be a number: %r" % s["ttft_ms"])
    near(s["cost"], COST_OK, "stream request: log cost")
    eq([(x.get("provider"), x.get("status")) for x in f["attempts"]], [("up", 503), ("up2", 200)],
       "fallback request: log attempts")
    check(any(l.get("status") == 404 for l in lines), "the 404 request has no access-log line")
    text = read_file(g.access_log)
    for mk in mks:
        check(mk not in text, "prompt text (marker %s) appears in the access log" % mk)


def test_secrets_never_logged():
    g = fresh(gw={"log_level": "debug"})
    expect_ok_chat(g.chat("m-ok"), "m-ok")
    expect_ok_stream(g.chat("m-ok", stream=True), "m-ok stream")
    expect_status(g.chat("m-fallback"), 200, "m-fallback")
    expect_status(g.chat("m-allfail"), 502, "m-allfail")
    expect_status(g.chat("m-ok", key="sk-hashed"), 200, "hashed key")
    expect_status(g.chat("m-ok", key="sk-limited"), 403, "limited key")
    expect_status(http(g.port, "POST", "/v1/chat/completions", chat_body("m-ok"),
                       headers={"x-api-key": "sk-test"}, key=None), 200, "x-api-key")
    expect_status(g.chat("up/ok"), 200, "direct")
    expect_status(g.get("/v1/models"), 200, "models")
    g.stop()
    for where, text in (("stderr (log_level = debug)", g.stderr()), ("access log", read_file(g.access_log))):
        for s in SECRETS:
            check(s not in text, "secret %r appears in the %s" % (s, where))


# =======================================================================================
# tests: signals

def _slow_stream(port):
    return http(port, "POST", "/v1/chat/completions", chat_body("m-slow", stream=True), timeout=15)


def test_sighup_reload():
    g = fresh()
    stream = in_thread(_slow_stream, g.port)
    time.sleep(0.4)
    g.write(g.config(extra=model_section("m-new", ["up ok#new in=1 out=2"])))
    g.signal(signal.SIGHUP)
    deadline = time.monotonic() + 3 * TOL
    while True:
        ids = [m.get("id") for m in (g.get("/v1/models").json().get("data") or [])]
        if "m-new" in ids:
            break
        check(time.monotonic() < deadline, "m-new not in /v1/models 3s after SIGHUP: %r" % ids)
        time.sleep(0.1)
    mk = marker()
    expect_ok_chat(g.chat("m-new", mk=mk), "m-new after reload", model="m-new")
    eq(json.loads(one_request(mk, "m-new")["body"]).get("model"), "ok#new", "m-new upstream model")
    r = join(stream, 15, "stream started before the reload")
    expect_ok_stream(r, "stream across SIGHUP", text=SLOW_TEXT)
    # a broken config: the old one stays in force
    mark = g.stderr_size()
    lines = g.config(extra=model_section("m-new", ["up ok#new in=1 out=2"])).split("\n")
    lines.insert(1, "no_such_setting = 1")
    g.write("\n".join(lines))
    g.signal(signal.SIGHUP)
    time.sleep(0.5 * TOL)
    check(g.alive(), "gateway died on a reload with a broken config; stderr:\n%s" % g.stderr()[-2000:])
    ids = [m.get("id") for m in (g.get("/v1/models").json().get("data") or [])]
    check("m-new" in ids and "m-ok" in ids, "after a failed reload the old config should stay: %r" % ids)
    expect_ok_chat(g.chat("m-new"), "m-new after a failed reload", model="m-new")
    err = g.stderr()[mark:]
    check(os.path.basename(g.cfg) in err, "the failed reload should be reported on stderr naming "
          "the file; new stderr: %s" % snip(err))


def test_sigterm_graceful():
    g = fresh()
    stream = in_thread(_slow_stream, g.port)
    time.sleep(0.5)
    g.signal(signal.SIGTERM)
    t = time.monotonic()
    refused_at = None
    while time.monotonic() - t < 2 * TOL:
        try:
            r = http(g.port, "GET", "/health", key=None, timeout=1)
            if r.status == 503:
                refused_at = time.monotonic()
                break
        except Fail as e:
            if "cannot connect" in str(e) or "closed" in str(e) or "reset" in str(e):
                refused_at = time.monotonic()
                break
        time.sleep(0.05)
    check(refused_at is not None, "still accepting new connections 2s after SIGTERM")
    check(stream["thread"].is_alive() or refused_at - t < 0.5,
          "could not observe refusal while the in-flight stream was running")
    r = join(stream, 15, "stream in flight at SIGTERM")
    expect_ok_stream(r, "stream in flight at SIGTERM", text=SLOW_TEXT)
    g.stop(10)


# =======================================================================================
# tests: curl as a real client

def curl(args, timeout=10):
    try:
        return subprocess.run([CURL, "-sS", "--max-time", str(timeout * TOL)] + args,
                              capture_output=True, timeout=timeout * TOL + 5)
    except subprocess.TimeoutExpired:
        raise Fail("curl did not finish")


def test_curl_nonstream():
    g = shared()
    url = "http://127.0.0.1:%d/v1/chat/completions" % g.port
    r = curl(["-H", "Authorization: Bearer sk-test", "-H", "Content-Type: application/json",
              "-d", json.dumps(chat_body("m-ok")), url])
    eq(r.returncode, 0, "curl exit status (%s)" % snip(r.stderr))
    try:
        j = json.loads(r.stdout)
    except ValueError:
        raise Fail("curl got non-JSON: %s" % snip(r.stdout))
    eq(j["choices"][0]["message"]["content"], TEXT, "curl: content")
    eq(j.get("provider"), "up", "curl: provider")


def test_curl_stream():
    g = shared()
    url = "http://127.0.0.1:%d/v1/chat/completions" % g.port
    r = curl(["-N", "-H", "Authorization: Bearer sk-test", "-H", "Content-Type: application/json",
              "-d", json.dumps(chat_body("m-ok", stream=True)), url])
    eq(r.returncode, 0, "curl exit status (%s)" % snip(r.stderr))
    ev = parse_sse([(0.0, r.stdout)])
    eq(sse_content(ev), TEXT, "curl stream: joined content")
    check(sse_done(ev), "curl stream: no [DONE]: %s" % snip(r.stdout))


def test_curl_keepalive_and_expect():
    g = shared()
    base = "http://127.0.0.1:%d" % g.port
    r = curl(["-v", "-H", "Authorization: Bearer sk-test", base + "/health", base + "/v1/models"])
    eq(r.returncode, 0, "curl exit status (%s)" % snip(r.stderr))
    check(b"Re-using existing connection" in r.stderr,
          "curl did not reuse the connection for a second request: %s" % snip(r.stderr, 1500))
    with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as f:
        body = chat_body("m-mock")
        body["messages"][0]["content"] += " pad" * 50000
        f.write(json.dumps(body).encode())
    on_cleanup(lambda: os.unlink(f.name))
    t = time.monotonic()
    r = curl(["-v", "-H", "Authorization: Bearer sk-test", "-H", "Content-Type: application/json",
              "-H", "Expect: 100-continue", "--data-binary", "@" + f.name, base + "/v1/chat/completions"])
    eq(r.returncode, 0, "curl exit status (%s)" % snip(r.stderr))
    check(b"HTTP/1.1 100 Continue" in r.stderr, "no 100 Continue for curl's Expect: %s" % snip(r.stderr, 1500))
    check(b'"provider"' in r.stdout, "curl big body: unexpected reply %s" % snip(r.stdout))
    check(time.monotonic() - t < 0.95 * TOL, "curl waited for its Expect timeout (1s)")


# =======================================================================================
# last: the shared gateway must exit cleanly

def test_shared_gateway_clean_exit():
    global SHARED
    g = shared()
    check(g.alive(), "shared gateway not running")
    try:
        g.stop(10)
        shutil.rmtree(g.dir, ignore_errors=True)
    finally:
        SHARED = None


# =======================================================================================
# runner


def main():
    return H.main(globals(), "llmgw integration tests")


if __name__ == "__main__":
    sys.exit(main())
