#!/usr/bin/env python3
"""llmgw hardening regression tests (issue 17): long credentials and headers upstream, the
budget reservation as an upper bound (n, max_tokens, bytes, media parts, context), the ledger
record before the answer (kill -9), clients that stop reading a stream (send_timeout, the
breaker), provider secrets in upstream error text, Gemini embedding model names, stream
events that are not JSON, config checks (control bytes, keys set twice, BOM, many sections,
listen / state_dir / access_log), HTTP/1.1 strictness, body_timeout and ill-formed UTF-8 from
an upstream. Against a real llmgw process.

    python3 tests/harden_test.py                   # all tests, against ./llmgw
    python3 tests/harden_test.py -k 05             # only the tests of item 5
    python3 tests/harden_test.py --gw build/llmgw-asan -v
    LLMGW_WRAP="valgrind --error-exitcode=99 -q" python3 tests/harden_test.py -k 11

Tests are named test_<item>_<what>. Upstreams: the built-in `mock` provider (`mk`, always
defined), tests/mockup.py (OpenAI format) and tests/provmock.py (Anthropic, Gemini, Bedrock),
each started once, when a test first needs it. Every test starts its own gateway (own temp
dir and access log) and stops it with SIGTERM at the end: it must exit 0, so ASan and
valgrind findings fail the test. Budget reservations are read back from the 402 message
("this request may cost up to X USD"), with an input price of 1000 USD/Mtok and no output
price where the prompt part is asserted, so X * 1000 is the prompt bound in tokens.

Standard library only; everything talks to 127.0.0.1; every wait is bounded.
Prints "PASS name" / "FAIL name: reason" per test and ends with "N passed, N failed".
"""
import base64
import json
import os
import re
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402  (the shared runner, assertions and process helpers)
from harness import request, expect_status, chat_body, sse_events, reservation  # noqa: E402
from harness import near_usd as near  # noqa: E402
from harness import HERE, PYTHON, TOL, Fail, check, eq, snip, marker, free_port, read_file  # noqa: E402
import mockup as MU  # noqa: E402  (its scenario texts and the masked-key form)
import provmock as PM  # noqa: E402  (its scripted texts and the ill-formed UTF-8 pieces)

MOCK = None                       # tests/mockup.py (its stderr is shown when a test fails)
PMOCK = None                      # tests/provmock.py
SECRET = "sk-TESTSECRET-1234567890abcdef"     # item 6: the provider key upstreams quote
KEY = "sk-k"                      # the client key every gateway has ([key.k], no budget)
MAY_COST = re.compile(r"this request may cost up to ([0-9.]+) USD")


# =======================================================================================
# mocks

class Mock(H.MockProc):
    def __init__(self, script, label):
        super().__init__([PYTHON, os.path.join(HERE, script), "--port", "0"], "llmgw-harden-%s-" % label,
                         script)

    def requests(self):
        check(self.alive(), "the mock died: %s" % read_file(self.stderr_path)[-2000:])
        r = request(self.port, "GET", "/_requests")
        expect_status(r, 200, "mock GET /_requests")
        return r.json()

    def find(self, needle):
        """Recorded requests whose body or path contains needle."""
        return [q for q in self.requests() if needle in q["body"] or needle in q["path"]]

    def one(self, needle, what):
        qs = self.find(needle)
        check(len(qs) == 1, "%s: the upstream should have seen exactly 1 request with %s, saw %d: %r"
              % (what, needle, len(qs), [(q["path"], snip(q["body"], 200)) for q in qs]))
        return qs[0]


def mock():
    global MOCK
    if MOCK is None:
        MOCK = Mock("mockup.py", "mockup")
        H.CTX.mock_mark = 0
    check(MOCK.alive(), "mockup.py died: %s" % read_file(MOCK.stderr_path)[-2000:])
    return MOCK


def pmock():
    global PMOCK
    if PMOCK is None:
        PMOCK = Mock("provmock.py", "provmock")
    check(PMOCK.alive(), "provmock.py died: %s" % read_file(PMOCK.stderr_path)[-2000:])
    return PMOCK


def stop_mocks():
    for m in (MOCK, PMOCK):
        if m is not None:
            m.stop()
            shutil.rmtree(m.dir, ignore_errors=True)


# =======================================================================================
# config pieces

def section(head, **kv):
    return "[%s]\n%s\n" % (head, "".join("%s = %s\n" % (k, v) for k, v in kv.items()))


def provider(name, ptype, base_url=None, **kv):
    if base_url:
        kv = dict(base_url=base_url, **kv)
    return section("provider." + name, type=ptype, **kv)


def up_provider(name="up", **kv):
    """tests/mockup.py behind a `type = openai` provider."""
    return provider(name, "openai", "http://127.0.0.1:%d/v1" % mock().port, **kv)


def pm_provider(name, ptype, **kv):
    """tests/provmock.py behind a provider of type ptype (anthropic, gemini, bedrock)."""
    return provider(name, ptype, "http://127.0.0.1:%d%s" % (pmock().port, "/v1beta" if ptype == "gemini" else ""),
                    **kv)


def model(name, *targets, **kv):
    return "[model.%s]\n%s%s\n" % (name, "".join("target = %s\n" % t for t in targets),
                                   "".join("%s = %s\n" % (k, v) for k, v in kv.items()))


def key(name, secret, **kv):
    return section("key." + name, secret=secret, **kv)


def long_secret(n, alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"):
    return "".join(alphabet[b % len(alphabet)] for b in os.urandom(n))


GW_DEFAULTS = """header_timeout = 2s
idle_timeout = 5s
connect_timeout = 1s
first_byte_timeout = 5s
stream_idle_timeout = 5s
max_attempts = 3
log_level = info
metrics = public
"""


# =======================================================================================
# the gateway

class Gateway(H.KeyClient, H.GatewayBase):
    """A gateway for one test. `gateway` adds (or replaces) lines of [gateway]; `body` is the
    rest of the config (provider `mk` (type = mock) and key `k` (sk-k) are always defined)."""
    prefix = "llmgw-harden-"
    start_stderr_always = False   # the runner prints every gateway's stderr on failure
    poll_step = 0.03

    def __init__(self, gateway="", body="", state=False):
        super().__init__()
        self.state_dir = os.path.join(self.dir, "state") if state else None
        self.gateway, self.body = gateway, body
        self.write()

    def config_text(self):
        gw = "listen = 127.0.0.1:%d\naccess_log = %s\n" % (self.port, self.access_log)
        if self.state_dir:
            gw += "state_dir = %s\n" % self.state_dir
        return ("[gateway]\n" + gw + H.gw_lines(GW_DEFAULTS, self.gateway) + "\n" +
                provider("mk", "mock") + key("k", KEY) + self.body.strip() + "\n")

    def write(self, text=None):
        super().write(self.config_text() if text is None else text)

    def health(self):
        return request(self.port, "GET", "/health", timeout=1).status

    def restart(self):
        """Start again on the same config and state_dir, on a new port (the old one may be in
        TIME_WAIT after a kill)."""
        self.port = free_port()
        self.write()
        return self.start()

    def access(self):
        return self.access_all()

    def wait_access(self, cond, what, wait=3):
        """The access-log lines, once cond(lines) holds (bounded)."""
        deadline = time.monotonic() + wait * TOL
        while True:
            lines = self.access()
            if cond(lines):
                return lines
            if time.monotonic() > deadline:
                raise Fail("timed out waiting for %s in the access log: %s" % (what, snip(lines, 1200)))
            time.sleep(0.03)

    def line_of(self, r, what):
        rid = r.h("x-request-id")
        check(rid, "%s: no x-request-id header" % what)
        lines = self.wait_access(lambda ls: any(x.get("id") == rid for x in ls), "the line of %s" % what)
        return [x for x in lines if x.get("id") == rid][0]

    def metrics(self):
        """GET /metrics as {'name{labels}': value}."""
        r = request(self.port, "GET", "/metrics")
        expect_status(r, 200, "GET /metrics")
        out = {}
        for ln in r.text.splitlines():
            if ln and not ln.startswith("#"):
                name, _, v = ln.rpartition(" ")
                out[name] = float(v)
        return out

    def messages(self, body, key=KEY, **kw):
        """POST /v1/messages as the Anthropic SDKs send it."""
        return request(self.port, "POST", "/v1/messages", body,
                       headers={"x-api-key": key, "anthropic-version": "2023-06-01"}, **kw)


def gateway(gateway="", body="", state=False):
    return Gateway(gateway, body, state).start()


def check_config(text, name="llmgw.ini"):
    """`llmgw -t -c FILE` on text (str or bytes): (exit status, stdout + stderr, path)."""
    d = tempfile.mkdtemp(prefix="llmgw-harden-t-")
    H.on_cleanup(lambda: shutil.rmtree(d, ignore_errors=True))
    path = os.path.join(d, name)
    with open(path, "wb") as f:
        f.write(text if isinstance(text, bytes) else text.encode())
    p = H.run_gw(["-t", "-c", path], timeout=30)
    return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace"), path


def expect_refused(text, line, what):
    """-t must fail naming FILE:LINE; returns what the message says after that."""
    rc, out, path = check_config(text)
    check(rc != 0, "%s: llmgw -t should refuse the file, it exited 0: %s" % (what, snip(out)))
    where = "%s:%d" % (path, line)
    check(where in out, "%s: the message should name %s: %s" % (what, where, snip(out)))
    return out.split(where, 1)[1]


def expect_valid(text, what):
    rc, out, _ = check_config(text)
    eq(rc, 0, "%s: exit status of llmgw -t (output: %s)" % (what, snip(out)))


def line_no(text, needle, last=False):
    """1-based number of the first (or last) line of text starting with needle."""
    hits = [i + 1 for i, ln in enumerate(text.split("\n")) if ln.startswith(needle)]
    check(hits, "test setup: no line starting with %r" % needle)
    return hits[-1] if last else hits[0]


BASE_CHECK = "[gateway]\nlisten = 127.0.0.1:%d\n\n[key.a]\nsecret = sk-check-aaaa\n"


# =======================================================================================
# raw HTTP (items 11 and 12)

def raw_http(port, data, drip=b"", gap=0.3, timeout=5):
    """Send data on a fresh connection, then the bytes of drip one at a time `gap` s apart
    (until the answer comes); read one response (harness.Conn)."""
    c = H.Conn(port, timeout)
    try:
        c.send(data)
        c.drip(drip, gap)
        return c.read_response()
    finally:
        c.close()


def message(r):
    """The error message of a response, else its body."""
    try:
        return json.loads(r.body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return r.body.decode("utf-8", "replace")


def raw_head(method, target, headers, body=b""):
    lines = ["%s %s HTTP/1.1" % (method, target)] + ["%s: %s" % kv for kv in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chat_bytes(model_name="m", content="Hello"):
    return json.dumps(chat_body(model_name, content)).encode()


def client_headers(port, body_len=None, host=True, extra=()):
    h = [("Host", "127.0.0.1:%d" % port)] if host else []
    h += [("Authorization", "Bearer " + KEY), ("Content-Type", "application/json"), ("Connection", "close")]
    if body_len is not None:
        h.append(("Content-Length", str(body_len)))
    return h + list(extra)


# =======================================================================================
# budgets: the reservation read back from a 402

def may_cost(g, body, what, key_secret="sk-tiny", path="/v1/chat/completions"):
    """POST body (bytes); it must be refused 402: the reservation from its message."""
    if path == "/v1/messages":
        r = g.messages(body, key=key_secret)
    else:
        r = g.post(path, body, key=key_secret)
    expect_status(r, 402, what)
    m = MAY_COST.search(r.text)
    check(m, "%s: the 402 message does not say what the request may cost: %s" % (what, snip(r.body)))
    return float(m.group(1))


PROMPT_IN = 1000                  # USD/Mtok: a reservation of X USD is a prompt bound of X * 1000 tokens


def prompt_bound(g, body, what, **kw):
    """The prompt part of a request's reservation in tokens (targets priced in=1000 out=0)."""
    return may_cost(g, body, what, **kw) * 1e6 / PROMPT_IN


def tiny_budget(models):
    """A config body: models (a dict name -> target lines) priced in=1000 out=0, and key tiny
    (sk-tiny) with a budget nothing fits in."""
    return "".join(model(n, *ts) for n, ts in models.items()) + key("tiny", "sk-tiny", budget="0.0001/day")


def eq_tokens(got, want, what):
    check(abs(got - want) < 0.01, "%s: expected a prompt bound of %d tokens, got %.3f" % (what, want, got))


def dumps(obj):
    """The request body as a client sends it: UTF-8, no \\u escapes."""
    return json.dumps(obj, ensure_ascii=False).encode()


def part_bytes(part):
    """The bytes a content part takes in a body made by dumps()."""
    return len(dumps(part))


# =======================================================================================
# item 1: long credentials reach the upstream whole

def test_01_long_api_key():
    """A 5000-character api_key: the Authorization the upstream gets is whole, the body intact
    (Content-Length right), and the next request on the pooled connection is its own."""
    secret = long_secret(5000)
    tag = marker()
    g = gateway(body=up_provider(api_key=secret) + model("m", "up ok#" + tag))
    for i in range(2):
        mk = marker()
        what = "request %d" % (i + 1)
        r = g.chat(KEY, "m", "long key %s" % mk)
        expect_status(r, 200, what)
        eq(r.json()["choices"][0]["message"]["content"], MU.TEXT, what + ": reply")
        q = mock().one(mk, what)
        eq(q["headers"].get("authorization"), "Bearer " + secret, what + ": Authorization upstream")
        body = q["body"].encode()
        eq(q["headers"].get("content-length"), str(len(body)), what + ": Content-Length upstream")
        try:
            b = json.loads(body)
        except ValueError as e:
            raise Fail("%s: the body upstream is not JSON (%s): %s" % (what, e, snip(body)))
        eq(b.get("messages"), [{"role": "user", "content": "long key %s" % mk}], what + ": messages upstream")
    eq(len(mock().find(tag)), 2, "requests the upstream saw for this test")


def test_01_long_session_token():
    """Bedrock with SigV4 and a 3000-character aws_session_token: the upstream gets the whole
    x-amz-security-token and the request succeeds."""
    token = base64.b64encode(os.urandom(2250)).decode()
    tag = marker()
    g = gateway(body=pm_provider("br", "bedrock", aws_access_key_id="AKIDHARDEN", aws_region="us-east-1",
                                 aws_secret_access_key="harden/secret+key=1", aws_session_token=token) +
                model("m", "br text#" + tag))
    mk = marker()
    r = g.chat(KEY, "m", "token %s" % mk)
    expect_status(r, 200, "bedrock with a long session token")
    eq(r.json()["choices"][0]["message"]["content"], PM.TEXT, "reply")
    q = pmock().one(mk, "bedrock")
    eq(q["headers"].get("x-amz-security-token"), token, "x-amz-security-token upstream")
    check(q["headers"].get("authorization", "").startswith("AWS4-HMAC-SHA256 Credential=AKIDHARDEN/"),
          "Authorization upstream: %r" % snip(q["headers"].get("authorization", ""), 200))
    eq(json.loads(q["body"])["messages"][0]["content"], [{"text": "token %s" % mk}], "body upstream")


# =======================================================================================
# item 2: the output part of the reservation

OUT_CFG = model("m", "mk mock-1 in=1000 out=2000") + key("b", "sk-b", budget="1/day")


def test_02_reservation_counts_n():
    """n: 100 reserves 100 x max_tokens of output: refused although n = 1 fits."""
    g = gateway(body=OUT_CFG)
    raw = json.dumps(chat_body("m", "n choices", n=100, max_tokens=10)).encode()
    got = may_cost(g, raw, "n = 100", key_secret="sk-b")
    near(got, round(reservation(raw, 1000, 2000, 100 * 10), 6), "reservation of n = 100", abs_=1.5e-6)
    r = g.chat("sk-b", "m", "n choices", n=1, max_tokens=10)
    expect_status(r, 200, "the same request with n = 1")


def test_02_reservation_larger_of_max_tokens():
    """max_completion_tokens 10 with max_tokens 5000: the output part counts 5000 (and the
    other way round)."""
    g = gateway(body=OUT_CFG)
    for mct, mt in ((10, 5000), (5000, 10)):
        what = "max_completion_tokens %d, max_tokens %d" % (mct, mt)
        raw = json.dumps(chat_body("m", "limits", max_completion_tokens=mct, max_tokens=mt)).encode()
        near(may_cost(g, raw, what, key_secret="sk-b"), round(reservation(raw, 1000, 2000, 5000), 6),
             what + ": reservation", abs_=1.5e-6)


# =======================================================================================
# item 3: the prompt part is an upper bound

def test_03_cjk_prompt_bytes():
    """2000 x U+6F22 (3 UTF-8 bytes each): the prompt bound is the body's bytes, at least
    the 6000 bytes of the text."""
    g = gateway(body=tiny_budget({"m": ["mk mock-1 in=1000 out=0"]}))
    text = "\u6f22" * 2000
    body = dumps(chat_body("m", text, max_tokens=1))
    got = prompt_bound(g, body, "CJK prompt")
    check(got >= len(text.encode()), "CJK prompt: bound %.0f tokens < its %d UTF-8 bytes" % (got, len(text.encode())))
    eq_tokens(got, len(body), "CJK prompt (a token per body byte)")


def test_03_tool_definitions_count():
    """Tool definitions are in the body, so in the bound."""
    g = gateway(body=tiny_budget({"m": ["mk mock-1 in=1000 out=0"]}))
    tools = [{"type": "function", "function": {"name": "tool_%d" % i, "description": "d" * 300,
                                               "parameters": {"type": "object", "properties": {}}}}
             for i in range(10)]
    body = dumps(chat_body("m", "hi", max_tokens=1, tools=tools))
    eq_tokens(prompt_bound(g, body, "tools"), len(body), "prompt bound with 10 tool definitions")


def image_msg(url):
    part = {"type": "image_url", "image_url": {"url": url}}
    return part, [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, part]}]


def test_03_image_part_per_target_max():
    """An image_url part with a 100-byte URL on a target with image_tokens=5000: the part
    counts 5000 tokens instead of its bytes."""
    g = gateway(body=tiny_budget({"m": ["mk mock-1 in=1000 out=0 image_tokens=5000"]}))
    part, msgs = image_msg("https://example.com/" + "i" * 80)
    body = dumps({"model": "m", "messages": msgs, "max_tokens": 1})
    got = prompt_bound(g, body, "100-byte image URL")
    check(got >= 5000, "100-byte image URL: bound %.0f < image_tokens 5000" % got)
    eq_tokens(got, len(body) - part_bytes(part) + 5000, "100-byte image URL")


def test_03_data_url_image_not_its_bytes():
    """A 50 KB data-URL image with image_tokens=1000 counts 1000, far below its bytes."""
    g = gateway(body=tiny_budget({"m": ["mk mock-1 in=1000 out=0 image_tokens=1000"]}))
    url = "data:image/png;base64," + base64.b64encode(os.urandom(37500)).decode()
    part, msgs = image_msg(url)
    body = dumps({"model": "m", "messages": msgs, "max_tokens": 1})
    got = prompt_bound(g, body, "50 KB data URL")
    check(got < 5000, "50 KB data URL: bound %.0f tokens, expected well below the %d bytes" % (got, len(url)))
    eq_tokens(got, len(body) - part_bytes(part) + 1000, "50 KB data URL")


def test_03_image_defaults_per_provider_type():
    """Per-part image maximum by provider type, without image_tokens: openai, azure and
    mock 2500, anthropic and bedrock 1600, gemini 2064; for each part type name (image_url,
    image, input_image); on /v1/messages too. No upstream is reached (402 first)."""
    dead = "http://127.0.0.1:1"
    provs = {"oa": ("openai", 2500), "az": ("azure", 2500), "an": ("anthropic", 1600),
             "br": ("bedrock", 1600), "ge": ("gemini", 2064), "mk": ("mock", 2500)}
    cfg = "".join(provider(n, t, dead, api_key="x-" + n) for n, (t, _) in provs.items() if n != "mk")
    g = gateway(body=cfg + tiny_budget({"m-" + n: ["%s up-%s in=1000 out=0" % (n, n)] for n in provs}))
    parts = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
             {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
             {"type": "input_image", "image_url": "https://example.com/cat.png"}]
    for n, (t, want) in provs.items():
        for part in parts:
            what = "%s target, %s part" % (t, part["type"])
            body = dumps({"model": "m-" + n, "max_tokens": 1,
                          "messages": [{"role": "user", "content": [{"type": "text", "text": "see"}, part]}]})
            eq_tokens(prompt_bound(g, body, what), len(body) - part_bytes(part) + want, what)
    part = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                        "data": base64.b64encode(os.urandom(3000)).decode()}}
    body = dumps({"model": "m-an", "max_tokens": 1,
                  "messages": [{"role": "user", "content": [part, {"type": "text", "text": "see"}]}]})
    eq_tokens(prompt_bound(g, body, "/v1/messages image", path="/v1/messages"),
              len(body) - part_bytes(part) + 1600, "/v1/messages, base64 image on an anthropic target")


def test_03_audio_and_file_parts():
    """Audio and file parts: 32768 and 100000 tokens without a context, audio_tokens= and
    file_tokens= when set (file, document, input_file); several parts add up."""
    g = gateway(body=tiny_budget({"m": ["mk mock-1 in=1000 out=0"],
                                  "m-set": ["mk mock-1 in=1000 out=0 audio_tokens=700 file_tokens=900"]}))
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(os.urandom(6000)).decode(),
                                                    "format": "wav"}}
    files = [{"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,QUJD" * 50}},
             {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc " * 400}},
             {"type": "input_file", "file_id": "file-" + "f" * 300}]
    for mname, aud, fil in (("m", 32768, 100000), ("m-set", 700, 900)):
        for part, want in [(audio, aud)] + [(f, fil) for f in files]:
            what = "%s, %s part" % (mname, part["type"])
            body = dumps({"model": mname, "max_tokens": 1,
                          "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, part]}]})
            eq_tokens(prompt_bound(g, body, what), len(body) - part_bytes(part) + want, what)
        body = dumps({"model": mname, "max_tokens": 1,
                      "messages": [{"role": "user", "content": [audio, files[0], audio]}]})
        eq_tokens(prompt_bound(g, body, mname + ", 2 audio parts and a file"),
                  len(body) - 2 * part_bytes(audio) - part_bytes(files[0]) + 2 * aud + fil,
                  mname + ", 2 audio parts and a file")


def test_03_context_caps_prompt_bound():
    """A target with context=300: a 1000-byte request is bounded at 300 tokens."""
    g = gateway(body=tiny_budget({"m": ["mk mock-1 in=1000 out=0 context=300"]}))
    body = dumps(chat_body("m", "c" * (1000 - len(dumps(chat_body("m", "", max_tokens=1)))), max_tokens=1))
    eq(len(body), 1000, "test setup: body size")
    eq_tokens(prompt_bound(g, body, "context 300"), 300, "prompt bound capped at the target's context")


# =======================================================================================
# item 4: the charge is in the ledger before the client learns the cost

def usage_cost(r, what):
    if r.h("content-type", "").startswith("text/event-stream"):
        us = [e["usage"] for e in r.events() if isinstance(e, dict) and isinstance(e.get("usage"), dict)]
        check(us and isinstance(us[-1].get("cost"), (int, float)), "%s: no usage chunk with a cost" % what)
        return us[-1]["cost"]
    return r.json()["usage"]["cost"]


@H.limit(60)
def test_04_ledger_before_answer_kill9():
    """20 rounds: a request (plain and stream alternately), its whole answer read, kill -9 at
    once, restart on the same state_dir: /v1/key spend is every cost received so far.
    (Probabilistic against a gateway that writes the record after the answer: the kill has to
    land between the two.)"""
    g = Gateway(body=model("m", "mk mock-1 in=1000 out=2000") + key("a", "sk-a", budget="100/day"), state=True)
    total = 0.0
    for i in range(20):
        g.restart()
        if i:
            near(g.key_info("sk-a")["usage"], total, "round %d: spend after the restart" % i)
        stream = i % 2 == 1
        extra = {"stream_options": {"include_usage": True}} if stream else {}
        r = g.chat("sk-a", "m", "round %d %s" % (i, "x" * (i * 7)), stream=stream, **extra)
        g.proc.kill()                 # the answer is read: nothing may be lost from here
        g.proc.wait(5)
        expect_status(r, 200, "round %d" % i)
        total += usage_cost(r, "round %d" % i)
    g.restart()
    near(g.key_info("sk-a")["usage"], total, "spend after the last restart")


# =======================================================================================
# item 5: a client that stops reading is not the upstream's failure

def stuck_client(port, body):
    """A client that sends a stream request and never reads (a small receive buffer)."""
    c = H.Conn(port, 5, rcvbuf=4096)
    c.send(raw_head("POST", "/v1/chat/completions", client_headers(port, len(body)), body))
    H.on_cleanup(c.close)
    return c


@H.limit(40)
def test_05_stuck_readers_do_not_open_breaker():
    """6 clients open an 8 MB stream and never read. Past stream_idle_timeout (1s) another
    client still gets 200 from the same target and /metrics counts no failure for it; at
    send_timeout (3s) the gateway closes the stuck clients, logged as status 499 naming
    send_timeout, and the target is still healthy."""
    tag = marker()
    target = "up/flood-8#" + tag
    g = gateway(gateway="stream_idle_timeout = 1s\nsend_timeout = 3s\nfirst_byte_timeout = 3s",
                body=up_provider() + model("m", "up flood-8#" + tag))
    body = json.dumps(chat_body("m", "flood", stream=True)).encode()
    stuck = [stuck_client(g.port, body) for _ in range(6)]
    t0 = time.monotonic()
    time.sleep(2.0)                   # past stream_idle_timeout while nobody reads
    r = g.chat(KEY, "m", "a reader")
    expect_status(r, 200, "a request to the same target while 6 clients do not read")
    eq(r.json()["choices"][0]["message"]["content"], MU.TEXT, "its reply")
    m = g.metrics()
    series = 'target="%s"' % target
    eq(m.get("llmgw_target_consecutive_failures{%s}" % series), 0.0, "consecutive failures of the target")
    eq(m.get("llmgw_target_breaker_state{%s}" % series), 0.0, "breaker state of the target")
    lines = g.wait_access(lambda ls: sum(1 for x in ls if x.get("status") == 499) >= 6,
                          "6 lines with status 499", wait=8)
    el = time.monotonic() - t0
    stuck_lines = [x for x in lines if x.get("status") == 499]
    check(el >= 2.5, "the stuck clients were logged after %.1fs, before send_timeout (3s)" % el)
    for x in stuck_lines:
        check("send_timeout" in json.dumps(x), "a 499 line does not mention send_timeout: %s" % snip(x))
        check(x.get("provider") == "up" and x.get("stream") is True, "499 line: %s" % snip(x))
    for i, s in enumerate(stuck):
        check(s.wait_closed(5 * TOL)[0], "stuck client %d: the gateway did not close its connection" % i)
    m = g.metrics()
    eq(m.get("llmgw_target_consecutive_failures{%s}" % series), 0.0, "consecutive failures after the closes")
    eq(m.get("llmgw_target_breaker_state{%s}" % series), 0.0, "breaker state after the closes")
    expect_status(g.chat(KEY, "m", "after"), 200, "a request after the stuck clients were closed")


# =======================================================================================
# item 6: provider secrets quoted by an upstream reach nobody

SECRET_FORMS = (SECRET, MU.mask_key(SECRET), "TESTSECRET-1234567890")


def secret_cfg():
    return up_provider(api_key=SECRET) + model("m-key", "up echo-key-401#h") + \
        model("m-mask", "up echo-masked-401#h") + model("m-mid", "up echo-key-mid#h")


def expect_no_secret(g, r, what):
    for s in SECRET_FORMS:
        check(s.encode() not in r.body, "%s: the client's body holds %r: %s" % (what, s, snip(r.body)))
    lines = g.wait_access(lambda ls: any(x.get("id") == r.h("x-request-id") for x in ls), what)
    log, err = read_file(g.access_log), g.stderr()
    for s in SECRET_FORMS:
        for name, text in (("the access log", log), ("stderr", err)):
            i = text.find(s)
            check(i < 0, "%s: %s holds %r: %s" % (what, name, s, snip(text[max(0, i - 200):], 400)))
    return [x for x in lines if x.get("id") == r.h("x-request-id")][0]


def expect_quoted(mk, what):
    """The upstream did get the key (so its answer quoted it)."""
    eq(mock().one(mk, what)["headers"].get("authorization"), "Bearer " + SECRET, what + ": key upstream")


def test_06_secret_scrubbed_non_stream():
    """A 401 quoting the key, and one quoting its masked form: neither the key, its masked
    form nor its middle reaches the client (both dialects), the access log or stderr."""
    g = gateway(body=secret_cfg())
    for mname in ("m-key", "m-mask"):
        for dialect in ("openai", "anthropic"):
            mk = marker()
            what = "%s, %s client" % (mname, dialect)
            body = chat_body(mname, "scrub " + mk, max_tokens=20)
            r = g.messages(body) if dialect == "anthropic" else g.post("/v1/chat/completions", body, key=KEY)
            check(400 <= r.status < 600, "%s: expected an error status, got %r" % (what, r))
            check(b"Incorrect API key provided" in r.body, "%s: the upstream's message should reach the "
                  "client (scrubbed): %s" % (what, snip(r.body)))
            expect_quoted(mk, what)
            line = expect_no_secret(g, r, what)
            check(line.get("attempts") and "Incorrect API key" in json.dumps(line["attempts"]),
                  "%s: the attempt's error should be in the access log (scrubbed): %s" % (what, snip(line)))


def test_06_secret_scrubbed_stream():
    """Streamed: the 401 before the stream (OpenAI client), and a mid-stream error event
    quoting the key translated for an Anthropic client: no key, masked key or middle in the
    client's stream, the access log or stderr."""
    g = gateway(body=secret_cfg())
    mk = marker()
    r = g.chat(KEY, "m-key", "scrub " + mk, stream=True)
    check(400 <= r.status < 600, "stream to a 401: expected an error status, got %r" % r)
    expect_quoted(mk, "stream to a 401")
    expect_no_secret(g, r, "stream to a 401")
    mk = marker()
    r = g.messages(chat_body("m-mid", "scrub " + mk, stream=True, max_tokens=20))
    expect_status(r, 200, "Anthropic stream with a mid-stream error")
    types = [json.loads(d).get("type") for d in sse_events(r.body) if d.startswith("{")]
    check("error" in types and "message_stop" not in types, "mid-stream error: event types %r" % types)
    check(b"Incorrect API key provided" in r.body, "the upstream's message should reach the client "
          "(scrubbed): %s" % snip(r.body[-600:]))
    expect_quoted(mk, "mid-stream error")
    expect_no_secret(g, r, "Anthropic stream with a mid-stream error")
    # passed through natively (OpenAI client, OpenAI upstream): the error event is the
    # provider's own, scrubbed
    mk = marker()
    r = g.chat(KEY, "m-mid", "scrub " + mk, stream=True)
    expect_status(r, 200, "native stream with a mid-stream error")
    check(b"Incorrect API key provided" in r.body and b"[DONE]" not in r.body,
          "native mid-stream error: the upstream's error event (scrubbed), no [DONE]: %s"
          % snip(r.body[-600:]))
    expect_quoted(mk, "native mid-stream error")
    expect_no_secret(g, r, "native stream with a mid-stream error")


# =======================================================================================
# item 7: the model name of a Gemini embedding request is JSON-escaped

def test_07_gemini_embedding_model_escaped():
    g = gateway(body=pm_provider("ge", "gemini", api_key="ge-key", direct="yes"))
    mk = marker()
    name = 'x","injected":"yes'
    r = g.post("/v1/embeddings", {"model": "ge/" + name, "input": ["one " + mk, "two"]}, key=KEY)
    q = pmock().one(mk, "embeddings")
    check(":batchEmbedContents" in q["path"], "upstream path: %s" % q["path"])
    try:
        b = json.loads(q["body"])
    except ValueError as e:
        raise Fail("the body upstream is not JSON (%s): %s" % (e, snip(q["body"])))
    check(isinstance(b, dict) and "injected" not in b, "top-level members upstream: %s" % snip(b))
    reqs = b.get("requests")
    check(isinstance(reqs, list) and len(reqs) == 2, "requests upstream: %s" % snip(b))
    for i, x in enumerate(reqs):
        check("injected" not in x, "request %d upstream has a member 'injected': %s" % (i, snip(x)))
        eq(x.get("model"), "models/" + name, "request %d: model" % i)
    check(r.status >= 400, "client status for a model the provider does not know: %r" % r)


# =======================================================================================
# item 8: a translated stream event that is not JSON ends the stream with an error

def expect_openai_stream_error(g, r, what):
    expect_status(r, 200, what)
    ev = sse_events(r.body)
    check("[DONE]" not in ev, "%s: the stream ended with data: [DONE]: %s" % (what, snip(r.body[-400:])))
    check(ev, "%s: empty stream" % what)
    try:
        last = json.loads(ev[-1])
    except ValueError:
        raise Fail("%s: the last event is not JSON: %r" % (what, ev[-1][:200]))
    check(isinstance(last.get("error"), dict) and isinstance(last["error"].get("message"), str),
          "%s: the stream does not end with a data: {\"error\": {...}} event: %r" % (what, ev[-3:]))
    eq(H.sse_text(r.body), "Hello from", "%s: the content before the bad event" % what)
    eq(g.line_of(r, what).get("status"), 502, "%s: access log status" % what)


def test_08_notjson_anthropic_upstream():
    g = gateway(body=pm_provider("an", "anthropic", api_key="an-key", direct="yes"))
    r = g.chat(KEY, "an/notjson#" + marker(), "hi", stream=True)
    expect_openai_stream_error(g, r, "anthropic upstream, OpenAI client")


def test_08_notjson_gemini_upstream():
    g = gateway(body=pm_provider("ge", "gemini", api_key="ge-key", direct="yes"))
    r = g.chat(KEY, "ge/notjson#" + marker(), "hi", stream=True)
    expect_openai_stream_error(g, r, "gemini upstream, OpenAI client")


def test_08_notjson_openai_upstream_anthropic_client():
    g = gateway(body=up_provider(direct="yes"))
    what = "OpenAI upstream, Anthropic client"
    r = g.messages(chat_body("up/notjson-mid#" + marker(), "hi", stream=True, max_tokens=20))
    expect_status(r, 200, what)
    ev = [json.loads(d) for d in sse_events(r.body) if d.startswith("{")]
    types = [e.get("type") for e in ev]
    check("message_stop" not in types, "%s: the stream ended with message_stop: %r" % (what, types))
    check(types and types[-1] == "error" and b"event: error" in r.body and isinstance(ev[-1].get("error"), dict),
          "%s: the stream does not end with an Anthropic error event: %r" % (what, types))
    text = "".join((e.get("delta") or {}).get("text", "") for e in ev if e.get("type") == "content_block_delta")
    eq(text, "Hello from", "%s: the text before the bad event" % what)
    eq(g.line_of(r, what).get("status"), 502, "%s: access log status" % what)


# =======================================================================================
# item 9: config values, keys set twice, BOM, many sections

def test_09_nul_in_value_refused():
    port = free_port()
    text = BASE_CHECK % port + "\n[key.b]\nsecret = sk-ab\x00cd-long\n"
    expect_refused(text, line_no(text, "secret = sk-ab"), "a NUL in a value")


def test_09_control_byte_in_value_refused():
    """\\x01 and ESC in a value are refused; a tab is not."""
    port = free_port()
    for c in ("\x01", "\x1b", "\x7f"):
        text = BASE_CHECK % port + "\n[provider.p]\ntype = mock\nregion = e%su\n" % c
        expect_refused(text, line_no(text, "region"), "control byte %r in a value" % c)
    expect_valid(BASE_CHECK % port + "\n[provider.p]\ntype = mock\nregion = e\tu\n", "a tab in a value")


def test_09_key_twice_in_section_refused():
    """secret twice in one [key.x]: an error naming both lines; listen, header and target may
    repeat."""
    port = free_port()
    text = BASE_CHECK % port + "\n[key.x]\nsecret = sk-first-xxxx\nmodels = *\nsecret = sk-second-xxx\n"
    first, second = line_no(text, "secret = sk-first"), line_no(text, "secret = sk-second")
    msg = expect_refused(text, second, "secret twice in [key.x]")
    check(re.search(r"\b%d\b" % first, msg), "secret twice: the message should name the first line (%d) "
          "too: %s" % (first, snip(msg)))
    expect_valid("[gateway]\nlisten = 127.0.0.1:%d\nlisten = 127.0.0.1:%d\n\n"
                 "[provider.p]\ntype = mock\nheader = X-A: 1\nheader = X-B: 2\n\n"
                 "[model.m]\ntarget = p one\ntarget = p two\n\n[key.a]\nsecret = sk-check-aaaa\n"
                 % (port, free_port()), "listen, header and target repeated")


def test_09_utf8_bom_accepted():
    expect_valid(b"\xef\xbb\xbf" + (BASE_CHECK % free_port()).encode(), "a file starting with a UTF-8 BOM")


def test_09_many_sections_linear():
    """30,000 [key.kN] sections check in under 1 s (or at most 20x the time of 3,000 plus
    0.3 s on a slow machine: linear, not quadratic)."""
    port = free_port()

    def timed(n):
        text = BASE_CHECK % port + "".join("[key.k%d]\nsecret = s%d\n" % (i, i) for i in range(n))
        t = time.monotonic()
        rc, out, _ = check_config(text)
        el = time.monotonic() - t
        eq(rc, 0, "%d sections: exit status of llmgw -t (%s)" % (n, snip(out)))
        return el
    small, big = timed(3000), timed(30000)
    bound = max(1.0 * TOL, 20 * small + 0.3)
    H.CTX.notes.append("MEASURE config: 3,000 sections %.3fs, 30,000 sections %.3fs" % (small, big))
    check(big < bound, "30,000 sections took %.2fs (3,000: %.3fs): more than %.2fs" % (big, small, bound))


def test_09_duplicate_section_refused():
    """(Non-regression: already refused before.) Two [key.a] sections."""
    text = BASE_CHECK % free_port() + "\n[key.a]\nsecret = sk-other-aaaa\n"
    expect_refused(text, line_no(text, "[key.a]", last=True), "two [key.a] sections")


# =======================================================================================
# item 10: llmgw -t finds what would fail at start, and long values work

def test_10_check_listen_port_range():
    text = "[gateway]\nlisten = 127.0.0.1:99999\n\n[key.a]\nsecret = sk-check-aaaa\n"
    expect_refused(text, 2, "listen = 127.0.0.1:99999")


def test_10_check_listen_nonsense():
    text = "[gateway]\nlisten = nonsense\n\n[key.a]\nsecret = sk-check-aaaa\n"
    expect_refused(text, 2, "listen = nonsense")


def test_10_check_state_dir():
    d = tempfile.mkdtemp(prefix="llmgw-harden-sd-")
    H.on_cleanup(lambda: shutil.rmtree(d, ignore_errors=True))
    blocker = os.path.join(d, "a-file")
    with open(blocker, "w") as f:
        f.write("not a directory\n")
    for path in ("/nonexistent/dir", os.path.join(blocker, "state")):
        text = "[gateway]\nlisten = 127.0.0.1:%d\nstate_dir = %s\n\n[key.a]\nsecret = sk-check-aaaa\n" % (
            free_port(), path)
        expect_refused(text, 3, "state_dir = %s" % path)
        check(not os.path.exists("/nonexistent"), "llmgw -t created /nonexistent")


def test_10_check_access_log():
    d = tempfile.mkdtemp(prefix="llmgw-harden-al-")
    H.on_cleanup(lambda: shutil.rmtree(d, ignore_errors=True))
    for path in ("/nonexistent/dir/a.log", os.path.join(d, "missing", "a.log")):
        text = "[gateway]\nlisten = 127.0.0.1:%d\naccess_log = %s\n\n[key.a]\nsecret = sk-check-aaaa\n" % (
            free_port(), path)
        expect_refused(text, 3, "access_log = %s" % path)


def test_10_long_header_and_key_work():
    """A provider `header` with a 6 KB value and a 5000-character api_key: -t passes, requests
    succeed and the upstream gets both whole."""
    value, secret = long_secret(6144), long_secret(5000)
    g = Gateway(body=up_provider(api_key=secret, header="X-Big: " + value) + model("m", "up ok#" + marker()))
    rc, out, _ = check_config(read_file(g.cfg))
    eq(rc, 0, "llmgw -t of the config (output %s)" % snip(out))
    g.start()
    for i in range(2):
        mk = marker()
        expect_status(g.chat(KEY, "m", mk), 200, "request %d" % (i + 1))
        q = mock().one(mk, "request %d" % (i + 1))
        eq(q["headers"].get("x-big"), value, "request %d: X-Big upstream" % (i + 1))
        eq(q["headers"].get("authorization"), "Bearer " + secret, "request %d: Authorization upstream" % (i + 1))
        eq(json.loads(q["body"])["messages"][0]["content"], mk, "request %d: body upstream" % (i + 1))


# =======================================================================================
# item 11: HTTP/1.1 strictness (RFC 9112)

def echo_gateway(**gw):
    return gateway(gateway="\n".join("%s = %s" % kv for kv in gw.items()), body=model("m", "mk mock-1"))


def test_11_no_host_400():
    g = echo_gateway()
    body = chat_bytes()
    r = raw_http(g.port, raw_head("POST", "/v1/chat/completions", client_headers(g.port, len(body), host=False), body))
    eq(r.status, 400, "HTTP/1.1 request without Host (%r)" % r)


def test_11_two_hosts_400():
    g = echo_gateway()
    body = chat_bytes()
    hd = client_headers(g.port, len(body), extra=[("Host", "127.0.0.1:%d" % g.port)])
    r = raw_http(g.port, raw_head("POST", "/v1/chat/completions", hd, body))
    eq(r.status, 400, "two Host headers (%r)" % r)


def test_11_bare_cr_in_chunk_extension_400():
    g = echo_gateway()
    body = chat_bytes()
    chunked = b"%x;ext\rx\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    r = raw_http(g.port, raw_head("POST", "/v1/chat/completions",
                                  client_headers(g.port, extra=[("Transfer-Encoding", "chunked")]), chunked))
    eq(r.status, 400, "a bare CR in a chunk extension (%r)" % r)


def test_11_absolute_form_target():
    g = echo_gateway()
    body = chat_bytes("m", "absolute form")
    r = raw_http(g.port, raw_head("POST", "http://127.0.0.1:%d/v1/chat/completions" % g.port,
                                  client_headers(g.port, len(body)), body))
    eq(r.status, 200, "absolute-form target (%r)" % r)
    check("absolute form" in json.loads(r.body)["choices"][0]["message"]["content"],
          "absolute-form target: reply %s" % snip(r.body))


def test_11_chunk_over_max_body_413_at_once():
    """max_body = 1k and a first chunk declaring 100000 bytes: 413 at once, not after
    idle_timeout."""
    g = echo_gateway(max_body="1k", idle_timeout="5s")
    r = raw_http(g.port, raw_head("POST", "/v1/chat/completions",
                                  client_headers(g.port, extra=[("Transfer-Encoding", "chunked")]),
                                  b"186a0\r\n{\"model\": \"m\""), timeout=8)
    eq(r.status, 413, "a chunk larger than max_body (%r)" % r)
    check(r.t_end < 1.0 * TOL, "413 after %.2fs, expected at once (< %gs)" % (r.t_end, 1.0 * TOL))


# =======================================================================================
# item 12: body_timeout

def test_12_body_timeout_408():
    """Content-Length 100 and one byte every 0.3 s: 408 naming body_timeout (1s) after about
    a second although every byte comes well within idle_timeout; in the access log."""
    g = echo_gateway(body_timeout="1s", idle_timeout="10s")
    r = raw_http(g.port, raw_head("POST", "/v1/chat/completions", client_headers(g.port, 100)),
                 drip=b"x" * 100, gap=0.3, timeout=8)
    eq(r.status, 408, "a body trickling in (%r)" % r)
    check(0.9 <= r.t_end <= 3.0 * TOL, "408 after %.2fs, expected about 1-3 s" % r.t_end)
    check("body_timeout" in message(r), "the 408 message should name body_timeout: %r" % message(r))
    g.wait_access(lambda ls: any(x.get("status") == 408 for x in ls), "a line with status 408")


# =======================================================================================
# item 13: ill-formed UTF-8 from an upstream never reaches llmgw's own JSON

def expect_clean_utf8(r, text_of, what):
    expect_status(r, 200, what)
    try:
        r.body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Fail("%s: the client's body is not well-formed UTF-8 (%s): %r" % (what, e, r.body[max(0, e.start - 40):
                                                                                          e.start + 40]))
    want = re.sub(r"@BAD\d@", "\ufffd", "".join(PM.BAD_UTF8_PIECES))
    got = text_of(r)
    check("\ufffd" in got, "%s: no U+FFFD in the text %r" % (what, got))
    eq(re.sub("\ufffd+", "\ufffd", got), want, "%s: the text (runs of U+FFFD as one)" % what)


def test_13_invalid_utf8_non_stream():
    g = gateway(body=pm_provider("an", "anthropic", api_key="an-key", direct="yes"))
    expect_clean_utf8(g.chat(KEY, "an/badutf8#" + marker(), "hi"),
                      lambda r: json.loads(r.body)["choices"][0]["message"]["content"], "anthropic -> OpenAI client")


def test_13_invalid_utf8_stream():
    g = gateway(body=pm_provider("an", "anthropic", api_key="an-key", direct="yes"))
    expect_clean_utf8(g.chat(KEY, "an/badutf8#" + marker(), "hi", stream=True),
                      lambda r: H.sse_text(r.body), "anthropic -> OpenAI client, stream")


# =======================================================================================
# runner


def main():
    return H.main(globals(), "llmgw hardening regression tests (issue 17)", shared_exit=False,
                  teardown=stop_mocks)


if __name__ == "__main__":
    sys.exit(main())
