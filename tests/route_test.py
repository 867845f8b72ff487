#!/usr/bin/env python3
"""llmgw routing-engine tests: strategies (order, price, latency, throughput, weighted,
:floor, :nitro, provider.sort), request preferences (order, only, ignore, allow_fallbacks,
models[], max_price, zdr, data_collection) and key constraints (zdr, data_collection,
regions, models) alone and combined, context skip, retries (jittered backoff, Retry-After,
never after the first byte), circuit breakers (open, skip, half-open probe, recovery,
doubled cool-down), provider max_concurrency, prompt-cache affinity, and health that
survives a reload.

    python3 tests/route_test.py                  # all tests, against ./llmgw
    python3 tests/route_test.py -k breaker       # only tests whose name contains "breaker"
    python3 tests/route_test.py --gw build/llmgw-asan -v
    python3 tests/route_test.py --list
    LLMGW_WRAP="valgrind --error-exitcode=99 -q" python3 tests/route_test.py -k policy

Standard library only; everything talks to 127.0.0.1; every wait is bounded.
Several providers (pa, pb, pc, pd) point at one mock upstream (tests/mockup.py); a target is
told apart by the upstream model the mock receives (`ok#tag`) and by the provider that
served (body.provider, x-llmgw-provider). Each test finds its requests in the mock's log by a
random marker in the prompt. Tests that depend on router state (health, breakers, affinity,
in-flight counts) start their own gateway; the stateless policy tests share one.
test_breaker_recovery waits for one real breaker cool-down (LLMGW_BREAKER_COOL_MS, 30 s by
default, read from the gateway's 503 message): the whole suite takes under a minute.
Prints "PASS name" / "FAIL name: reason" per test and ends with "N passed, N failed".
"""
import json
import os
import re
import shutil
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402  (the shared runner, assertions and process helpers)
from harness import sse_events, sse_text  # noqa: E402,F401
from harness import (HERE, ROOT, PYTHON, WRAP, TOL, GW, VERBOSE, CTX, Fail, check, eq,  # noqa: E402,F401
                     snip, marker, on_cleanup, free_port, read_file, in_thread, join, limit)

MOCK_SCRIPT = os.path.join(HERE, "mockup.py")

TEXT = "Hello from mock upstream"     # what the mock's `ok` scenarios say
# consecutive counted failures that open a target's circuit breaker (the gateway's
# LLMGW_BREAKER_FAILS; the cool-down is read from the gateway's own 503 message)
FAILS = int(os.environ.get("LLMGW_BREAKER_FAILS", "5"))
MOCK = None                           # the mock upstream process, shared by all tests


# =======================================================================================
# assertions


# =======================================================================================
# per-test context (one test runs at a time)


# =======================================================================================
# raw HTTP (harness.Conn), one request per connection

def http(port, method, path, body=None, headers=None, key="sk-test", timeout=10):
    """harness.http_request, every request with Connection: close."""
    return H.http_request(port, method, path, body, headers, key, timeout, close=True)


def expect_status(r, want, what):
    want = want if isinstance(want, (tuple, list, set)) else (want,)
    if r.status not in want:
        raise Fail("%s: expected status %s, got %d; headers %r; body %s" % (
            what, "/".join(map(str, want)), r.status, r.headers, snip(r.body, 1200)))


def err_msg(r, want, what, contains=()):
    """The error message of an OpenAI-dialect error with status `want`; checks `contains`."""
    expect_status(r, want, what)
    j = r.json()
    err = j.get("error") if isinstance(j, dict) else None
    check(isinstance(err, dict) and isinstance(err.get("message"), str),
          "%s: no error.message in %s" % (what, snip(r.body)))
    msg = err["message"]
    for c in contains:
        check(c in msg, "%s: error message should contain %r: %r" % (what, c, msg))
    return msg


def served(r, what, provider=None, text=TEXT):
    """A successful chat reply; returns the provider that served it."""
    expect_status(r, 200, what)
    p = r.h("x-llmgw-provider")
    if r.h("content-type", "").startswith("text/event-stream"):
        check("[DONE]" in sse_events(r.body), "%s: stream without [DONE]: %s" % (what, snip(r.body)))
        if text is not None:
            eq(sse_text(r.body), text, "%s: streamed content" % what)
    else:
        j = r.json()
        eq(j.get("provider"), p, "%s: body.provider vs x-llmgw-provider" % what)
        if text is not None:
            eq(j["choices"][0]["message"]["content"], text, "%s: content" % what)
    if provider is not None:
        eq(p, provider, "%s: provider that served" % what)
    return p


# =======================================================================================
# processes: mock upstream and gateway


class Mock(H.MockProc):
    def __init__(self):
        super().__init__([PYTHON, MOCK_SCRIPT, "--port", "0"], "llmgw-route-mock-", "mock upstream")

    def _call(self, method, path, body=None):
        if not self.alive():
            raise Fail("the mock upstream died; its stderr: %s" % read_file(self.stderr_path)[-2000:])
        r = http(self.port, method, path, key=None, timeout=10,
                 body=body if body is not None else (b"" if method == "POST" else None))
        expect_status(r, 200, "mock %s %s" % (method, path))
        return r.json()

    def find(self, mk):
        """The chat requests whose body carries marker mk, oldest first."""
        rs = [r for r in self._call("GET", "/_requests") if mk in r["body"]]
        rs.sort(key=lambda r: r["t"])
        return rs

    def models(self, mk):
        """The upstream model of each request with marker mk, oldest first."""
        out = []
        for r in self.find(mk):
            try:
                out.append(json.loads(r["body"]).get("model"))
            except ValueError:
                out.append(None)
        return out

    def switch(self, **modes):
        """Set the scenario of `switch#TAG` targets: switch(tag="status-503")."""
        return self._call("POST", "/_switch", modes)


def mock():
    global MOCK
    if MOCK is None:
        MOCK = Mock()
        H.CTX.mock_mark = 0
    if not MOCK.alive():
        raise Fail("the mock upstream died; its stderr: %s" % read_file(MOCK.stderr_path)[-2000:])
    return MOCK


# Four providers on the mock with different data policies, and one that refuses connections:
#   pa  zdr no,  collects data,     region us
#   pb  zdr yes, collects no data,  region eu
#   pc  zdr no,  collects no data,  region eu
#   pd  zdr yes, collects data,     region us
PROVIDERS = [("pa", "region = us"),
             ("pb", "zdr = yes\ncollects_data = no\nregion = eu"),
             ("pc", "collects_data = no\nregion = eu"),
             ("pd", "zdr = yes\nregion = us")]

KEYS = """[key.test]
secret = sk-test

[key.other]
secret = sk-other

[key.zdr]
secret = sk-zdr
zdr = yes

[key.nodata]
secret = sk-nodata
data_collection = deny

[key.eu]
secret = sk-eu
regions = eu

[key.euzdr]
secret = sk-euzdr
regions = eu
zdr = yes

[key.pmodels]
secret = sk-pmodels
models = m-p*, m-fail
"""

GW_DEFAULTS = [
    ("auth", "keys"), ("metrics", "public"), ("header_timeout", "2s"), ("idle_timeout", "5s"),
    ("connect_timeout", "1s"), ("first_byte_timeout", "3s"), ("stream_idle_timeout", "3s"),
    ("max_attempts", "3"), ("log_level", "warn"), ("shutdown_timeout", "5s"),
]


def model_section(name, targets, *extra):
    return "[model.%s]\n%s\n%s" % (name, "\n".join("target = " + t for t in targets),
                                   "".join(e + "\n" for e in extra))


def config_text(port, mock_port, access_log, models=(), gw=None, prov=None, extra=""):
    """A gateway config: [gateway] defaults updated by `gw` (None drops a key), providers
    pa..pd and dead (plus lines from `prov` {name: text}), `models` [(name, [targets],
    extra lines...)], the keys of KEYS."""
    opts = dict(GW_DEFAULTS)
    opts.update(gw or {})
    out = ["[gateway]", "listen = 127.0.0.1:%d" % port, "access_log = %s" % access_log]
    out += ["%s = %s" % (k, v) for k, v in opts.items() if v is not None]
    out.append("")
    prov = prov or {}
    for name, lines in PROVIDERS + [("dead", None)]:
        url = "http://127.0.0.1:1/v1" if name == "dead" else "http://127.0.0.1:%d/v1" % mock_port
        out.append("[provider.%s]\ntype = openai\nbase_url = %s\napi_key = secret-%s" % (name, url, name))
        if lines:
            out.append(lines)
        if prov.get(name):
            out.append(prov[name])
        out.append("")
    for m in models:
        out.append(model_section(*m))
    out.append(KEYS)
    out.append(extra)
    return "\n".join(out) + "\n"


class Gateway(H.GatewayBase):
    prefix = "llmgw-route-"

    def __init__(self, shared=False, **cfg):
        super().__init__(shared, register=False)
        self.mock_port = mock().port
        self.write(self.config(**cfg))
        if not shared:
            H.CTX.gateways.append(self)

    def config(self, **cfg):
        return config_text(self.port, self.mock_port, self.access_log, **cfg)

    def health(self):
        return http(self.port, "GET", "/health", key=None, timeout=1).status

    # -- requests
    def get(self, path, key="sk-test", **kw):
        return http(self.port, "GET", path, key=key, **kw)

    def chat(self, model, mk, key="sk-test", stream=False, system=None, messages=None, timeout=10,
             **extra):
        """POST /v1/chat/completions; the marker mk goes into the (last) user message."""
        if messages is None:
            messages = [{"role": "user", "content": "Say hello. %s" % mk}]
            if system is not None:
                messages.insert(0, {"role": "system", "content": system})
        b = {"model": model, "messages": messages}
        if stream:
            b["stream"] = True
        b.update(extra)
        return http(self.port, "POST", "/v1/chat/completions", b, key=key, timeout=timeout)

    def metrics(self):
        """/metrics as {(metric, label value): float}; the label is "" for unlabelled series."""
        r = self.get("/metrics", key=None)
        expect_status(r, 200, "GET /metrics")
        out = {}
        for ln in r.text.splitlines():
            if not ln or ln.startswith("#"):
                continue
            m = re.match(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[a-z_]+="((?:[^"\\]|\\.)*)"[^}]*\})? (\S+)$', ln)
            if m:
                try:
                    out[(m.group(1), m.group(2) or "")] = float(m.group(3))
                except ValueError:
                    pass
        return out


SHARED = None
SHARED_FAILED = None


def shared():
    """The gateway the stateless policy tests share (models POLICY_MODELS, ok targets only)."""
    global SHARED, SHARED_FAILED
    if SHARED_FAILED:
        raise Fail("the shared gateway could not be started earlier: %s" % SHARED_FAILED)
    if SHARED is not None and not SHARED.alive():
        err, rc = SHARED.stderr()[-3000:], SHARED.proc.poll()
        SHARED = None
        raise Fail("the shared gateway had died (exit status %r) before this test; stderr tail:\n%s"
                   % (rc, err))
    if SHARED is None:
        try:
            SHARED = Gateway(shared=True, models=POLICY_MODELS).start()
        except Fail as e:
            SHARED_FAILED = str(e).split("\n")[0]
            SHARED = None
            raise
    if not any(g is SHARED for g, _ in H.CTX.marks):
        H.CTX.marks.append((SHARED, SHARED.stderr_size()))
    return SHARED


def fresh(models, **cfg):
    """A dedicated gateway for this test (stopped with SIGTERM, exit 0 checked, at the end)."""
    return Gateway(models=models, **cfg).start()


def wait_for(cond, timeout, what, step=0.02):
    deadline = time.monotonic() + timeout * TOL
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise Fail("timed out after %gs waiting for %s" % (timeout * TOL, what))
        time.sleep(step)


# =======================================================================================
# the shared policy gateway: only `ok` targets (no failures, so no breaker ever opens)

POLICY_MODELS = [
    ("m-p", ["pa ok#p-a in=1 out=1", "pb ok#p-b in=2 out=2", "pc ok#p-c in=3 out=3",
             "pd ok#p-d in=4 out=4"]),
    ("m-p2", ["pc ok#p2-c in=1 out=1", "pd ok#p2-d in=1 out=1"]),
    ("m-ctx", ["pa ok#ctx-a context=60", "pb ok#ctx-b"]),
    ("m-ctx1", ["pa ok#ctx1-a context=60"]),
    ("m-fl", ["pa ok#fl-a in=5 out=5", "pb ok#fl-b in=1 out=1", "pc ok#fl-c in=3 out=3"]),
    ("m-price", ["pa ok#pr-a in=5 out=5", "pb ok#pr-b in=1 out=1", "pc ok#pr-c in=3 out=3"],
     "strategy = price"),
    ("m-pmt", ["pa ok#pmt-a in=1 out=10", "pb ok#pmt-b in=5 out=1"], "strategy = price"),
    ("m-fail", ["pa status-400#fail-a"]),
]


# =======================================================================================
# tests: strategies

def test_strategy_order():
    """order: as listed, every time; on failure the next one in the list."""
    g = fresh([("m-o", ["pc ok#o-c", "pa ok#o-a", "pb ok#o-b"]),
               ("m-o2", ["pc status-503#o2-c", "pa status-500#o2-a", "pb ok#o2-b"])])
    for i in range(4):
        mk = marker()
        served(g.chat("m-o", mk), "order request %d" % i, provider="pc")
        eq(mock().models(mk), ["ok#o-c"], "order request %d: upstream attempts" % i)
    mk = marker()
    r = g.chat("m-o2", mk)
    served(r, "order with failures", provider="pb")
    eq(mock().models(mk), ["status-503#o2-c", "status-500#o2-a", "ok#o2-b"], "attempts in list order")
    eq(r.h("x-llmgw-attempts"), "3", "x-llmgw-attempts")


def test_strategy_price():
    """price: cheapest estimated cost first, then the next cheapest (full plan order seen
    through failing targets)."""
    g = shared()
    for i in range(3):
        mk = marker()
        served(g.chat("m-price", mk), "price %d" % i, provider="pb")
        eq(mock().models(mk), ["ok#pr-b"], "price %d: attempts" % i)
    g2 = fresh([("m-pf", ["pa status-500#prf-a in=5 out=5", "pb status-502#prf-b in=1 out=1",
                          "pc status-503#prf-c in=3 out=3"], "strategy = price")])
    mk = marker()
    r = g2.chat("m-pf", mk)
    err_msg(r, 502, "price, all failing", contains=("pb", "pc", "pa"))
    eq(mock().models(mk), ["status-502#prf-b", "status-503#prf-c", "status-500#prf-a"],
       "price: attempts cheapest first")


def test_price_depends_on_max_tokens():
    """price = prompt_est x in + (max_tokens or 1000) x out: with in=1/out=10 against
    in=5/out=1, a small max_tokens makes the first cheaper, a large one the second. With
    both limits the larger counts, whichever field holds it (it is what is reserved)."""
    g = shared()
    cases = [({"max_tokens": 1}, "pa"), ({}, "pb"), ({"max_tokens": 4000}, "pb"),
             ({"max_tokens": 4000, "max_completion_tokens": 2}, "pb"),
             ({"max_tokens": 2, "max_completion_tokens": 4000}, "pb"),
             ({"max_tokens": 1, "max_completion_tokens": 2}, "pa"),
             ({"max_completion_tokens": 3000}, "pb")]
    for extra, want in cases:
        mk = marker()
        served(g.chat("m-pmt", mk, **extra), "price with %r" % extra, provider=want)
        eq(len(mock().find(mk)), 1, "price with %r: upstream attempts" % extra)


def test_strategy_latency():
    """latency: targets without data first (explore), then the lowest smoothed TTFT."""
    g = fresh([("m-lat", ["pa slow-first-byte-400#lat-a", "pb ok#lat-b"], "strategy = latency")])
    got = []
    for i in range(6):
        mk = marker()
        got.append(served(g.chat("m-lat", mk), "latency %d" % i))
        eq(len(mock().find(mk)), 1, "latency %d: one attempt" % i)
    eq(got, ["pa", "pb", "pb", "pb", "pb", "pb"],
       "providers (no data: listed order; then the slow target has data, the other none: "
       "explored; then the fast one)")
    m = g.metrics()
    ta = m.get(("llmgw_target_ttft_seconds", "pa/slow-first-byte-400#lat-a"))
    tb = m.get(("llmgw_target_ttft_seconds", "pb/ok#lat-b"))
    check(ta is not None and 0.38 <= ta <= 0.4 + 0.3 * TOL,
          "ttft gauge of the slow target should be ~0.4 s, got %r" % ta)
    check(tb is not None and tb < 0.2 * TOL, "ttft gauge of the fast target should be small, got %r" % tb)
    # streams are measured the same way
    mk = marker()
    served(g.chat("m-lat", mk, stream=True), "latency stream", provider="pb")


def test_strategy_throughput():
    """throughput: after a warm-up of both targets, the faster-streaming one first."""
    g = fresh([("m-tp", ["pa drip-100#tp-a", "pb ok#tp-b"], "strategy = throughput")])
    for p in ("pa", "pb"):      # warm-up: one stream on each target
        served(g.chat("m-tp", marker(), stream=True, provider={"only": [p]}), "warm-up " + p, provider=p)
    m = g.metrics()
    sa = m.get(("llmgw_target_tokens_per_second", "pa/drip-100#tp-a"))
    sb = m.get(("llmgw_target_tokens_per_second", "pb/ok#tp-b"))
    # 7 completion tokens over ~0.5 s: ~14 tokens/s; the fast one: thousands
    check(sa is not None and 3 <= sa <= 20, "tokens/s of the dripping target should be ~14, got %r" % sa)
    check(sb is not None and sb > 4 * sa, "tokens/s of the fast target should be much higher: %r vs %r"
          % (sb, sa))
    for i in range(4):
        mk = marker()
        served(g.chat("m-tp", mk, stream=True), "throughput %d" % i, provider="pb")
        eq(mock().models(mk), ["ok#tp-b"], "throughput %d: attempts" % i)
    mk = marker()
    served(g.chat("m-tp", mk), "throughput non-stream", provider="pb")


@limit(60)
def test_strategy_weighted():
    """weighted: weights 1 and 3 split ~200 requests about 25/75 (wide tolerance: a
    failure is a >4 sigma event), and each request's plan still holds both targets."""
    g = fresh([("m-w", ["pa ok#w-a weight=1", "pb ok#w-b weight=3"], "strategy = weighted"),
               ("m-w0", ["pa status-503#w0-a weight=1", "pb status-503#w0-b weight=3"],
                "strategy = weighted")], gw={"max_attempts": "2"})
    n, count = 200, {"pa": 0, "pb": 0}
    mk = marker()
    for i in range(n):
        r = g.chat("m-w", mk + "-%d" % i)
        count[served(r, "weighted %d" % i)] += 1
    eq(len(mock().find(mk)), n, "requests at the mock")
    share = count["pa"] / float(n)
    check(0.125 <= share <= 0.375, "weight 1 of 4 should get ~25%% of %d requests, got %r" % (n, count))
    mk = marker()
    r = g.chat("m-w0", mk)
    expect_status(r, 502, "weighted, both failing")
    eq(sorted(mock().models(mk)), ["status-503#w0-a", "status-503#w0-b"],
       "weighted: both targets in the plan")


def test_floor_suffix():
    """`:floor` sorts an order model by price; the plain name keeps the list order."""
    g = shared()
    mk = marker()
    served(g.chat("m-fl", mk), "m-fl", provider="pa")
    mk = marker()
    r = g.chat("m-fl:floor", mk)
    served(r, "m-fl:floor", provider="pb")
    eq(mock().models(mk), ["ok#fl-b"], "m-fl:floor: attempts")
    # with a max_tokens that does not change the ranking (all out prices scale alike)
    served(g.chat("m-fl:floor", marker(), max_tokens=5), "m-fl:floor max_tokens", provider="pb")


def test_nitro_suffix():
    """`:nitro` sorts by throughput (after a warm-up); the plain name keeps the list order."""
    g = fresh([("m-n", ["pa drip-100#n-a", "pb ok#n-b"])])
    for p in ("pa", "pb"):
        served(g.chat("m-n", marker(), stream=True, provider={"only": [p]}), "warm-up " + p, provider=p)
    for i in range(2):
        mk = marker()
        served(g.chat("m-n", mk, stream=True), "m-n %d" % i, provider="pa", text=None)
        mk = marker()
        served(g.chat("m-n:nitro", mk, stream=True), "m-n:nitro %d" % i, provider="pb")
        eq(mock().models(mk), ["ok#n-b"], "m-n:nitro: attempts")


def test_provider_sort_overrides_strategy():
    """provider.sort of the request replaces the model's strategy: price on an order model,
    latency and throughput on a price model."""
    g = fresh([("m-s", ["pa slow-first-byte-300#s-a in=1 out=1", "pb ok#s-b in=9 out=9"],
                "strategy = price"),
               ("m-so", ["pb ok#so-b in=9 out=9", "pa ok#so-a in=1 out=1"])])
    served(g.chat("m-so", marker()), "m-so (order)", provider="pb")
    served(g.chat("m-so", marker(), provider={"sort": "price"}), "m-so sort=price", provider="pa")
    for p in ("pa", "pb"):      # warm-up both targets of m-s
        served(g.chat("m-s", marker(), provider={"only": [p]}), "warm-up " + p, provider=p)
    served(g.chat("m-s", marker()), "m-s (price)", provider="pa")
    mk = marker()
    served(g.chat("m-s", mk, provider={"sort": "latency"}), "m-s sort=latency", provider="pb")
    eq(mock().models(mk), ["ok#s-b"], "sort=latency: attempts")
    served(g.chat("m-s", marker(), provider={"sort": "throughput"}), "m-s sort=throughput", provider="pb")
    served(g.chat("m-s", marker(), provider={"sort": "price"}), "m-s sort=price", provider="pa")


# =======================================================================================
# tests: request preferences (shared gateway, ok targets only)

def test_policy_fields_not_forwarded():
    g = shared()
    mk = marker()
    served(g.chat("m-p", mk, models=["m-p2"], provider={"order": ["pb"], "allow_fallbacks": True}),
           "with routing fields", provider="pb")
    rs = mock().find(mk)
    eq(len(rs), 1, "attempts")
    body = json.loads(rs[0]["body"])
    check("provider" not in body and "models" not in body,
          "routing fields reached the upstream: %s" % snip(rs[0]["body"]))
    eq(body.get("model"), "ok#p-b", "upstream model")


def test_policy_order():
    """provider.order: the named providers first, in that order; the rest after them."""
    g = shared()
    mk = marker()
    served(g.chat("m-p", mk, provider={"order": ["pc", "pa"]}), "order [pc, pa]", provider="pc")
    eq(mock().models(mk), ["ok#p-c"], "order: attempts")
    served(g.chat("m-p", marker(), provider={"order": ["nosuch", "pd"]}), "order [nosuch, pd]",
           provider="pd")
    # the whole plan: every target failing
    g2 = fresh([("m-of", ["pa status-500#of-a", "pb status-500#of-b", "pc status-500#of-c",
                          "pd status-500#of-d"])], gw={"max_attempts": "4"})
    mk = marker()
    err_msg(g2.chat("m-of", mk, provider={"order": ["pc", "pa"]}), 502, "order, all failing")
    eq(mock().models(mk), ["status-500#of-c", "status-500#of-a", "status-500#of-b", "status-500#of-d"],
       "order [pc, pa]: plan")


def test_policy_only_and_ignore():
    g = shared()
    mk = marker()
    served(g.chat("m-p", mk, provider={"only": ["pd", "pc"]}), "only [pd, pc]", provider="pc")
    eq(mock().models(mk), ["ok#p-c"], "only: attempts")
    mk = marker()
    served(g.chat("m-p", mk, provider={"ignore": ["pa", "pb"]}), "ignore [pa, pb]", provider="pc")
    served(g.chat("m-p", marker(), provider={"only": ["pb", "pd"], "order": ["pd"]}),
           "only + order", provider="pd")
    served(g.chat("m-p", marker(), provider={"only": ["pb", "pc"], "ignore": ["pb"]}),
           "only + ignore", provider="pc")
    msg = err_msg(g.chat("m-p", marker(), provider={"only": ["pa"], "ignore": ["pa"]}), 503,
                  "only [pa] ignore [pa]",
                  contains=("pa ok#p-a excluded: provider.ignore of the request",
                            "pb ok#p-b excluded: provider.only of the request",
                            "pd ok#p-d excluded: provider.only of the request"))
    check("m-p" in msg, "503 should name the model: %r" % msg)


def test_policy_allow_fallbacks_false():
    """allow_fallbacks = false: only the first candidate (retried), never the second."""
    g = fresh([("m-af", ["pa status-503#af-a", "pb ok#af-b"])], gw={"max_attempts": "2"})
    mk = marker()
    r = g.chat("m-af", mk, provider={"allow_fallbacks": False})
    err_msg(r, 502, "allow_fallbacks=false", contains=("pa",))
    models = mock().models(mk)
    check(models and all(m == "status-503#af-a" for m in models),
          "allow_fallbacks=false: only the first target may be tried, saw %r" % models)
    mk = marker()
    served(g.chat("m-af", mk, provider={"allow_fallbacks": True}), "allow_fallbacks=true", provider="pb")
    eq(mock().models(mk), ["status-503#af-a", "ok#af-b"], "allow_fallbacks=true: attempts")
    g2 = shared()
    served(g2.chat("m-p", marker(), provider={"allow_fallbacks": False, "order": ["pc"]}),
           "allow_fallbacks=false with order", provider="pc")


def test_policy_models_fallback_list():
    """models[]: tried after `model`, in order; unknown or excluded ones are noted."""
    g = fresh([("m-x", ["pa status-500#mx-a"]), ("m-y", ["pb status-502#my-b"]),
               ("m-z", ["pc ok#mz-c"]), ("m-zdr", ["pd ok#mzdr-d"])])
    mk = marker()
    r = g.chat("m-x", mk, models=["m-y", "m-z"])
    served(r, "models fallback", provider="pc")
    eq(r.json().get("model"), "m-z", "body.model is the public model that served")
    eq(mock().models(mk), ["status-500#mx-a", "status-502#my-b", "ok#mz-c"], "models[]: attempts")
    # the primary excluded by policy: the fallback model serves
    mk = marker()
    served(g.chat("m-z", mk, models=["m-zdr"], provider={"zdr": True}), "primary excluded", provider="pd")
    eq(mock().models(mk), ["ok#mzdr-d"], "primary excluded: attempts")
    msg = err_msg(g.chat("m-z", marker(), models=["m-nosuch", "m-x"], provider={"only": ["pb"]}), 503,
                  "nothing left", contains=("pc ok#mz-c excluded: provider.only",
                                            "model m-nosuch is not configured",
                                            "pa status-500#mx-a excluded: provider.only"))
    # a key's model allow-list applies to the fallback list too
    mk = marker()
    r = shared().chat("m-p", mk, key="sk-pmodels", models=["m-ctx"], provider={"only": ["pc"]})
    served(r, "key allow-list, fallback listed", provider="pc")
    msg = err_msg(shared().chat("m-p", marker(), key="sk-pmodels", models=["m-ctx"],
                                provider={"only": ["pb"], "ignore": ["pb"]}), 503,
                  "key allow-list on models[]", contains=("model m-ctx excluded: not allowed for the key",))
    err_msg(shared().chat("m-ctx", marker(), key="sk-pmodels", models=["m-p"]), 403,
            "key allow-list on the primary model", contains=("m-ctx",))


def test_policy_max_price():
    """max_price {prompt, completion} in USD per million tokens excludes dearer targets."""
    g = shared()
    mk = marker()
    served(g.chat("m-p", mk, provider={"max_price": {"completion": 2.5}, "order": ["pd", "pc", "pb"]}),
           "max_price completion 2.5", provider="pb")
    eq(mock().models(mk), ["ok#p-b"], "max_price: attempts")
    served(g.chat("m-p", marker(), provider={"max_price": {"prompt": 3, "completion": 3},
                                             "ignore": ["pa", "pb"]}), "max_price 3/3", provider="pc")
    served(g.chat("m-p", marker(), provider={"max_price": {"prompt": 1}, "order": ["pd"]}),
           "max_price prompt 1", provider="pa")
    err_msg(g.chat("m-p", marker(), provider={"max_price": {"prompt": 0.5}}), 503, "max_price too low",
            contains=("pa ok#p-a excluded: provider.max_price of the request",
                      "pd ok#p-d excluded: provider.max_price of the request (target costs 4/4"))


def test_policy_request_zdr_and_data_collection():
    g = shared()
    served(g.chat("m-p", marker(), provider={"zdr": True}), "request zdr", provider="pb")
    served(g.chat("m-p", marker(), provider={"zdr": True, "ignore": ["pb"]}), "zdr, ignore pb",
           provider="pd")
    served(g.chat("m-p", marker(), provider={"data_collection": "deny"}), "request data deny",
           provider="pb")
    served(g.chat("m-p", marker(), provider={"data_collection": "deny", "ignore": ["pb"]}),
           "data deny, ignore pb", provider="pc")
    served(g.chat("m-p", marker(), provider={"data_collection": "allow", "zdr": False}),
           "allow / zdr false", provider="pa")
    err_msg(g.chat("m-p", marker(), provider={"zdr": True, "data_collection": "deny", "ignore": ["pb"]}),
            503, "zdr + deny + ignore pb",
            contains=("pa ok#p-a excluded: provider.zdr of the request",
                      "pb ok#p-b excluded: provider.ignore of the request",
                      "pc ok#p-c excluded: provider.zdr of the request",
                      "pd ok#p-d excluded: provider.data_collection = deny of the request"))


def test_key_constraints():
    """Key zdr / data_collection / regions always apply; the request cannot loosen them."""
    g = shared()
    cases = [("sk-zdr", {}, "pb"), ("sk-zdr", {"zdr": False}, "pb"),
             ("sk-zdr", {"ignore": ["pb"]}, "pd"),
             ("sk-nodata", {}, "pb"), ("sk-nodata", {"data_collection": "allow"}, "pb"),
             ("sk-nodata", {"ignore": ["pb"]}, "pc"),
             ("sk-eu", {}, "pb"), ("sk-eu", {"order": ["pd", "pc"]}, "pc"),
             ("sk-euzdr", {"order": ["pc", "pd"], "zdr": False}, "pb"),
             # key and request combined
             ("sk-eu", {"zdr": True, "order": ["pc"]}, "pb"),
             ("sk-zdr", {"data_collection": "deny", "order": ["pd"]}, "pb")]
    for key, prefs, want in cases:
        mk = marker()
        served(g.chat("m-p", mk, key=key, provider=prefs), "%s %r" % (key, prefs), provider=want)
        eq(len(mock().find(mk)), 1, "%s %r: attempts" % (key, prefs))
    err_msg(g.chat("m-p", marker(), key="sk-zdr", provider={"only": ["pa", "pc"], "zdr": False}), 503,
            "zdr key, only non-zdr",
            contains=("pa ok#p-a excluded: the key requires zdr providers",
                      "pc ok#p-c excluded: the key requires zdr providers",
                      "pb ok#p-b excluded: provider.only of the request"))
    err_msg(g.chat("m-p", marker(), key="sk-nodata", provider={"only": ["pa", "pd"],
                                                               "data_collection": "allow"}),
            503, "nodata key", contains=("pa ok#p-a excluded: the key denies data collection",
                                         "pd ok#p-d excluded: the key denies data collection"))
    err_msg(g.chat("m-p", marker(), key="sk-eu", provider={"only": ["pa", "pd"]}), 503, "eu key",
            contains=("pa ok#p-a excluded: the provider's region is not among the key's regions",
                      "pd ok#p-d excluded: the provider's region"))
    err_msg(g.chat("m-p", marker(), key="sk-euzdr", provider={"ignore": ["pb"]}), 503, "eu+zdr key",
            contains=("pa ok#p-a excluded:", "pb ok#p-b excluded: provider.ignore of the request",
                      "pc ok#p-c excluded: the key requires zdr providers",
                      "pd ok#p-d excluded: the provider's region"))
    # the same requests with an unconstrained key are served by the excluded providers
    served(g.chat("m-p", marker(), provider={"only": ["pa", "pc"], "zdr": False}), "test key", provider="pa")


def test_gateway_zdr():
    """[gateway] zdr = yes: every request only goes to zdr providers, whatever it asks."""
    g = fresh(POLICY_MODELS, gw={"zdr": "yes"})
    mk = marker()
    served(g.chat("m-p", mk, provider={"zdr": False}), "gateway zdr", provider="pb")
    eq(mock().models(mk), ["ok#p-b"], "gateway zdr: attempts")
    served(g.chat("m-p", marker(), provider={"order": ["pc", "pd"]}), "gateway zdr, order", provider="pd")
    err_msg(g.chat("m-p2", marker(), provider={"only": ["pc"], "zdr": False}), 503, "gateway zdr, only pc",
            contains=("pc ok#p2-c excluded: gateway zdr = yes and the provider is not zdr",
                      "pd ok#p2-d excluded: provider.only of the request"))
    err_msg(g.chat("m-p", marker(), key="sk-nodata", provider={"only": ["pa", "pd"]}), 503,
            "gateway zdr + nodata key",
            contains=("pa ok#p-a excluded: gateway zdr", "pd ok#p-d excluded: the key denies data"))


def test_context_skip():
    """A target whose context is smaller than body_bytes/5 is skipped."""
    g = shared()
    mk = marker()
    served(g.chat("m-ctx", mk), "small prompt", provider="pa")
    big = "Say hello. %s %s" % (mk, "pad " * 100)
    mk2 = marker()
    r = g.chat("m-ctx", mk2, messages=[{"role": "user", "content": big.replace(mk, mk2)}])
    served(r, "big prompt", provider="pb")
    eq(mock().models(mk2), ["ok#ctx-b"], "big prompt: attempts")
    err_msg(g.chat("m-ctx1", marker(), messages=[{"role": "user", "content": big}]), 503,
            "big prompt, one target", contains=("pa ok#ctx1-a excluded: the prompt", "context of 60 tokens"))


# =======================================================================================
# tests: retries

def test_backoff_between_rounds():
    """After every candidate failed retryably, the plan is walked again after a jittered
    exponential backoff: 250 ms, then 500 ms (x 0.75-1.25); within a round no wait."""
    g = fresh([("m-bo", ["pa status-503#bo-a"]), ("m-bo2", ["pa status-503#bo2-a", "pb status-500#bo2-b"])],
              gw={"max_attempts": "4", "first_byte_timeout": "5s"})
    mk = marker()
    t = time.monotonic()
    msg = err_msg(g.chat("m-bo", mk), 502, "one failing target", contains=("status 503",))
    el = time.monotonic() - t
    ts = [r["t"] for r in mock().find(mk)]
    n = min(4, FAILS)       # a breaker that opens stops the rounds too
    eq(len(ts), n, "attempts (max_attempts 4)")
    gaps = [b - a for a, b in zip(ts, ts[1:])]
    for i, (lo, hi) in enumerate([(0.1875, 0.3125), (0.375, 0.625), (0.75, 1.25)][:n - 1]):
        check(lo - 0.01 <= gaps[i] <= hi + 0.1 * TOL,
              "backoff %d should be in [%g, %g] s, got %.3f (all gaps %r)" % (i, lo, hi, gaps[i], gaps))
    check(msg.count("status 503") == n, "502 should list %d attempts: %r" % (n, msg))
    check(el < 3.0 * TOL, "took %.2fs" % el)
    mk = marker()
    err_msg(g.chat("m-bo2", mk), 502, "two failing targets")
    ms, ts = mock().models(mk), [r["t"] for r in mock().find(mk)]
    eq(ms, ["status-503#bo2-a", "status-500#bo2-b"] * 2, "two targets, two rounds")
    check(ts[1] - ts[0] < 0.15 * TOL, "no backoff inside a round: %.3f" % (ts[1] - ts[0]))
    check(ts[2] - ts[1] >= 0.18, "backoff between rounds: %.3f" % (ts[2] - ts[1]))


def test_retry_after_honoured():
    """429 with Retry-After: 1 on a single target, max_attempts 2: the second attempt
    comes at least ~0.75 s (1 s x jitter) later."""
    g = fresh([("m-ra", ["pa ra429-1#ra-a"])], gw={"max_attempts": "2", "first_byte_timeout": "3s"})
    mk = marker()
    r = g.chat("m-ra", mk)
    msg = err_msg(r, 502, "429 twice", contains=("status 429",))
    check(msg.count("status 429") == 2, "502 should list both attempts: %r" % msg)
    ts = [x["t"] for x in mock().find(mk)]
    eq(len(ts), 2, "attempts")
    check(0.74 <= ts[1] - ts[0] <= 1.25 + 0.2 * TOL,
          "second attempt %.3f s after the first; Retry-After 1 with jitter: 0.75..1.25" % (ts[1] - ts[0]))


def test_retry_after_beyond_first_byte_timeout():
    """A Retry-After that does not fit in first_byte_timeout: no retry, 502 after 1 attempt."""
    g = fresh([("m-ra5", ["pa ra429-5#ra5-a"])], gw={"max_attempts": "3", "first_byte_timeout": "2s"})
    mk = marker()
    t = time.monotonic()
    msg = err_msg(g.chat("m-ra5", mk), 502, "Retry-After 5 > first_byte_timeout 2s",
                  contains=("status 429",))
    el = time.monotonic() - t
    eq(len(mock().find(mk)), 1, "attempts")
    check("1 attempt" in msg, "502 should say 1 attempt: %r" % msg)
    check(el < 1.0 * TOL, "the 502 should come at once, took %.2fs" % el)


def test_quota_429_not_retried():
    """429 insufficient_quota is final: not retried, not the next target, not a breaker
    failure."""
    g = fresh([("m-q", ["pa quota#q-a", "pb ok#q-b"])])
    for i in range(FAILS + 1):
        mk = marker()
        err_msg(g.chat("m-q", mk), 429, "quota %d" % i)
        eq(mock().models(mk), ["quota#q-a"], "quota %d: attempts" % i)
    m = g.metrics()
    eq(m.get(("llmgw_target_breaker_state", "pa/quota#q-a")), 0.0, "breaker after %d quota 429s" % (FAILS + 1))
    eq(m.get(("llmgw_target_consecutive_failures", "pa/quota#q-a")), 0.0, "consecutive failures")


def test_no_retry_after_first_byte():
    """A stream that fails after its first byte ends with an error event, no [DONE], and is
    never retried (not the same target, not the next)."""
    g = fresh([("m-nr", ["pa reset-mid#nr-a", "pb ok#nr-b"])], gw={"max_attempts": "3"})
    mk = marker()
    r = g.chat("m-nr", mk, stream=True)
    expect_status(r, 200, "stream head")
    ev = sse_events(r.body)
    check("[DONE]" not in ev, "a broken stream must not end with [DONE]: %s" % snip(r.body))
    check(any('"error"' in e for e in ev), "no error event at the end: %s" % snip(r.body))
    eq(mock().models(mk), ["reset-mid#nr-a"], "attempts")


# =======================================================================================
# tests: circuit breaker

def breaker(g, target):
    m = g.metrics()
    return (m.get(("llmgw_target_breaker_state", target)),
            m.get(("llmgw_target_consecutive_failures", target)))


def test_breaker_opens_and_skips():
    """FAILS (5) consecutive counted failures open the breaker: the target is then skipped without
    an attempt, and a model with nothing else answers 503 saying so."""
    g = fresh([("m-b", ["pa status-503#b-a", "pb ok#b-b"]), ("m-b1", ["pa status-503#b-a"])])
    for i in range(FAILS):
        mk = marker()
        r = g.chat("m-b", mk)
        served(r, "request %d" % i, provider="pb")
        eq(mock().models(mk), ["status-503#b-a", "ok#b-b"], "request %d: attempts" % i)
        st = breaker(g, "pa/status-503#b-a")
        eq(st, (1.0 if i == FAILS - 1 else 0.0, float(i + 1)), "breaker state, failures after %d" % (i + 1))
    eq(breaker(g, "pb/ok#b-b"), (0.0, 0.0), "healthy target's breaker")
    for i in range(3):
        mk = marker()
        r = g.chat("m-b", mk)
        served(r, "open %d" % i, provider="pb")
        eq(mock().models(mk), ["ok#b-b"], "open %d: the open target must not be tried" % i)
        eq(r.h("x-llmgw-attempts"), "1", "open %d: x-llmgw-attempts" % i)
    mk = marker()
    err_msg(g.chat("m-b1", mk), 503, "only an open target",
            contains=("pa status-503#b-a excluded: its circuit breaker is open after %d consecutive failures" % FAILS,
                      "cool-down left"))
    eq(mock().models(mk), [], "no attempt on an open breaker")
    check("circuit breaker open" in g.stderr(), "the opening is not logged: %s" % snip(g.stderr()))


def test_breaker_counts_connect_failures_and_timeouts():
    """Connect failures and first-byte timeouts count toward the breaker too."""
    g = fresh([("m-d", ["dead ok#d", "pb ok#d-b"]), ("m-t", ["pa stall#t-a", "pb ok#t-b"])],
              gw={"first_byte_timeout": "300ms", "max_attempts": "2"})
    for i in range(FAILS):
        served(g.chat("m-d", marker()), "dead %d" % i, provider="pb")
    eq(breaker(g, "dead/ok#d"), (1.0, float(FAILS)), "connect failures: breaker")
    mk = marker()
    r = g.chat("m-d", mk)
    served(r, "dead open", provider="pb")
    eq(r.h("x-llmgw-attempts"), "1", "the open dead target is skipped")
    for i in range(FAILS):
        served(g.chat("m-t", marker()), "stall %d" % i, provider="pb")
    eq(breaker(g, "pa/stall#t-a"), (1.0, float(FAILS)), "timeouts: breaker")
    mk = marker()
    served(g.chat("m-t", mk), "stall open", provider="pb")
    eq(mock().models(mk), ["ok#t-b"], "the open stalling target is skipped")


def test_breaker_only_consecutive_counted_failures():
    """A success resets the count; a 4xx answer neither counts nor resets."""
    tag = "cons" + marker()
    g = fresh([("m-c", ["pa switch#%s" % tag, "pb ok#c-b"])])
    mock().switch(**{tag: "status-500"})
    n = float(FAILS - 1)
    for i in range(FAILS - 1):
        served(g.chat("m-c", marker()), "failing %d" % i, provider="pb")
    eq(breaker(g, "pa/switch#" + tag), (0.0, n), "after %d failures" % n)
    mock().switch(**{tag: "status-400"})
    err_msg(g.chat("m-c", marker()), 400, "a 400 is the client's answer")
    eq(breaker(g, "pa/switch#" + tag), (0.0, n), "a 400 is neutral")
    mock().switch(**{tag: "ok"})
    served(g.chat("m-c", marker()), "success", provider="pa")
    eq(breaker(g, "pa/switch#" + tag), (0.0, 0.0), "a success resets")
    mock().switch(**{tag: "status-500"})
    for i in range(FAILS - 1):
        served(g.chat("m-c", marker()), "failing again %d" % i, provider="pb")
    eq(breaker(g, "pa/switch#" + tag), (0.0, n), "%d more: still closed" % n)
    mock().switch(**{tag: "status-429"})
    served(g.chat("m-c", marker()), "429", provider="pb")
    eq(breaker(g, "pa/switch#" + tag), (1.0, float(FAILS)), "a 429 is the last one")
    mock().switch(**{tag: None})


def cooldown_left(msg):
    m = re.search(r"\((\d+) s of cool-down left\)", msg)
    check(m, "no 'N s of cool-down left' in %r" % msg)
    return int(m.group(1))


@limit(75)
def test_breaker_recovery():
    """After the cool-down one probe request decides: while it runs the breaker is
    half-open and other requests skip the target; success closes it; a failed probe
    reopens it with a doubled cool-down. (Waits one real cool-down: LLMGW_BREAKER_COOL_MS.)"""
    ta, tb = "reca" + marker(), "recb" + marker()
    g = fresh([("m-ra", ["pa switch#%s" % ta, "pc ok#ra-c"]), ("m-ra1", ["pa switch#%s" % ta]),
               ("m-rb", ["pb switch#%s" % tb, "pc ok#rb-c"]), ("m-rb1", ["pb switch#%s" % tb])])
    ida, idb = "pa/switch#" + ta, "pb/switch#" + tb
    mock().switch(**{ta: "status-503", tb: "status-503"})
    for i in range(FAILS):
        served(g.chat("m-ra", marker()), "A failing %d" % i, provider="pc")
        served(g.chat("m-rb", marker()), "B failing %d" % i, provider="pc")
    t_open = time.monotonic()
    eq(breaker(g, ida)[0], 1.0, "A open")
    eq(breaker(g, idb)[0], 1.0, "B open")
    cool = cooldown_left(err_msg(g.chat("m-ra1", marker()), 503, "A open",
                                 contains=("circuit breaker is open",)))
    check(cool <= 45, "the breaker cool-down is %d s: too long for this suite (build with "
                      "-DLLMGW_BREAKER_COOL_MS=30000 or less)" % cool)
    mock().switch(**{ta: "slow-first-byte-1000"})      # A recovers (slowly: a visible probe)
    if cool >= 3:      # still open shortly before the end of the cool-down
        time.sleep(max(0.0, t_open + cool - 1.5 - time.monotonic()))
        mk = marker()
        served(g.chat("m-ra", mk), "A before the end of the cool-down", provider="pc")
        eq(mock().models(mk), ["ok#ra-c"], "A still skipped")
    time.sleep(max(0.0, t_open + cool + 0.3 - time.monotonic()))
    # the probe
    mkp = marker()
    probe = in_thread(g.chat, "m-ra1", mkp)
    wait_for(lambda: mock().find(mkp), 5, "the probe request at the mock")
    eq(breaker(g, ida)[0], 2.0, "A half-open during the probe")
    mk = marker()
    served(g.chat("m-ra", mk), "A during the probe", provider="pc")
    eq(mock().models(mk), ["ok#ra-c"], "A must not get a second request during its probe")
    err_msg(g.chat("m-ra1", marker()), 503, "A's only target while probing",
            contains=("half-open and a probe request is testing it",))
    served(join(probe, 10, "probe request"), "probe", provider="pa")
    eq(breaker(g, ida), (0.0, 0.0), "A closed after a successful probe")
    mock().switch(**{ta: "ok"})
    served(g.chat("m-ra", marker()), "A after recovery", provider="pa")
    # B: its probe fails: open again, for twice as long
    mk = marker()
    served(g.chat("m-rb", mk), "B probe fails", provider="pc")
    eq(mock().models(mk), ["switch#" + tb, "ok#rb-c"], "B's probe was tried")
    eq(breaker(g, idb)[0], 1.0, "B open again after a failed probe")
    left = cooldown_left(err_msg(g.chat("m-rb1", marker()), 503, "B open again",
                                 contains=("circuit breaker is open",)))
    check(cool < left <= 2 * cool, "after a failed probe the cool-down doubles: %d s left, first was %d s"
          % (left, cool))
    mock().switch(**{ta: None, tb: None})


# =======================================================================================
# tests: provider max_concurrency

def test_provider_max_concurrency():
    """A provider at its max_concurrency is skipped: the request goes to another provider,
    or gets a 503 naming the limit when there is none."""
    g = fresh([("m-mc", ["pa slow-first-byte-1500#mc-a", "pb ok#mc-b"]),
               ("m-mc1", ["pa ok#mc1-a"])], prov={"pa": "max_concurrency = 1"})
    mk1 = marker()
    slow = in_thread(g.chat, "m-mc", mk1)
    wait_for(lambda: mock().find(mk1), 5, "the slow request at the mock")
    eq(g.metrics().get(("llmgw_provider_in_flight", "pa")), 1.0, "pa in flight")
    mk = marker()
    served(g.chat("m-mc", mk), "second request", provider="pb")
    eq(mock().models(mk), ["ok#mc-b"], "the busy provider must not be tried")
    mk = marker()
    err_msg(g.chat("m-mc1", mk), 503, "busy provider, nothing else",
            contains=("pa ok#mc1-a excluded: the provider is at its max_concurrency",))
    eq(mock().models(mk), [], "no attempt on the busy provider")
    served(join(slow, 10, "slow request"), "slow request", provider="pa")
    eq(g.metrics().get(("llmgw_provider_in_flight", "pa")), 0.0, "pa in flight after")
    served(g.chat("m-mc1", marker()), "after the slow one", provider="pa")
    # in-flight also drops after a failed attempt
    g2 = fresh([("m-mf", ["pa status-500#mf-a", "pb ok#mf-b"])], prov={"pa": "max_concurrency = 1"})
    for i in range(3):
        mk = marker()
        served(g2.chat("m-mf", mk), "after failure %d" % i, provider="pb")
        eq(mock().models(mk), ["status-500#mf-a", "ok#mf-b"], "failure %d: pa still tried" % i)
    eq(g2.metrics().get(("llmgw_provider_in_flight", "pa")), 0.0, "pa in flight after failures")


def test_in_flight_released_when_client_leaves():
    """A client that goes away (before the upstream's head, or in the middle of a stream)
    frees its provider's max_concurrency slot."""
    g = fresh([("m-s", ["pa slow-first-byte-800#il-a"]), ("m-st", ["pa slow-stream#il-b"]),
               ("m-ok", ["pa ok#il-c"])], prov={"pa": "max_concurrency = 1"})
    for model, stream in (("m-s", False), ("m-st", True)):
        mk = marker()
        c = H.Conn(g.port)
        c.send(H.build_request(g.port, "POST", "/v1/chat/completions",
                               {"model": model, "stream": stream,
                                "messages": [{"role": "user", "content": "hi " + mk}]}, close=True))
        wait_for(lambda: mock().find(mk), 5, "%s at the mock" % model)
        if stream:
            c.read_until(b"tick0", 3, "the first stream event")
        eq(g.metrics().get(("llmgw_provider_in_flight", "pa")), 1.0, "%s: pa in flight" % model)
        c.close()
        wait_for(lambda: g.metrics().get(("llmgw_provider_in_flight", "pa")) == 0.0, 3,
                 "%s: the slot to be released after the client left" % model)
        served(g.chat("m-ok", marker()), "%s: next request" % model, provider="pa")


def test_backoff_abandoned_when_client_leaves():
    """A request waiting in its retry backoff whose client went away makes no more attempts
    (and the gateway stays healthy: under ASan a use of the freed request would show)."""
    g = fresh([("m-b", ["pa status-503#ab-a"]), ("m-r", ["pa ra429-1#ab-b"]), ("m-ok", ["pa ok#ab-c"])],
              gw={"first_byte_timeout": "5s", "max_attempts": "5"})
    for model in ("m-b", "m-r"):
        mk = marker()
        c = H.Conn(g.port)
        c.send(H.build_request(g.port, "POST", "/v1/chat/completions",
                               {"model": model, "messages": [{"role": "user", "content": "hi " + mk}]},
                               close=True))
        wait_for(lambda: mock().find(mk), 5, "%s at the mock" % model)
        time.sleep(0.05)
        c.close()
        time.sleep(1.5)
        eq(len(mock().find(mk)), 1, "%s: attempts after the client left during the backoff" % model)
        served(g.chat("m-ok", marker()), "%s: next request" % model, provider="pa")


# =======================================================================================
# tests: prompt-cache affinity

def conv(system, turns):
    """A conversation: system prompt, first user turn, then `turns` more messages."""
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": "Hello there."}]
    for i in range(turns):
        msgs.append({"role": "assistant" if i % 2 == 0 else "user", "content": "turn %d" % i})
    return msgs


def test_affinity():
    """affinity: requests with the same key, model and first two messages stay on the
    target that served the last of them; other conversations still spread (weighted);
    hits counted; another key does not share them."""
    g = fresh([("m-aff", ["pa ok#aff-a", "pb ok#aff-b", "pc ok#aff-c", "pd ok#aff-d"],
                "strategy = weighted", "affinity = 10m"),
               ("m-noaff", ["pa ok#naff-a", "pb ok#naff-b", "pc ok#naff-c", "pd ok#naff-d"],
                "strategy = weighted")])
    hits0 = g.metrics().get(("llmgw_affinity_hits_total", ""), 0.0)
    sys_a, sys_b = "You are A. " + marker(), "You are B. " + marker()
    first = {}
    for i in range(8):
        for name, sp in (("A", sys_a), ("B", sys_b)):
            mk = marker()
            msgs = conv(sp, i) + [{"role": "user", "content": "now %s" % mk}]
            p = served(g.chat("m-aff", mk, messages=msgs), "conversation %s request %d" % (name, i))
            first.setdefault(name, p)
            eq(p, first[name], "conversation %s request %d stays on its first target" % (name, i))
            eq(len(mock().find(mk)), 1, "conversation %s request %d: attempts" % (name, i))
    hits = g.metrics().get(("llmgw_affinity_hits_total", ""), 0.0) - hits0
    eq(hits, 14.0, "affinity hits (2 conversations x 7 repeats)")
    # without affinity, the same repeated conversation spreads over the targets
    seen = set()
    for i in range(16):
        seen.add(served(g.chat("m-noaff", marker(), messages=conv(sys_a, i)), "no affinity %d" % i))
    check(len(seen) >= 2, "weighted without affinity should spread 16 requests, all went to %r" % seen)
    # with affinity but a new system prompt each time: spreads too, and no hits
    seen = set()
    for i in range(16):
        seen.add(served(g.chat("m-aff", marker(), messages=conv("fresh " + marker(), 0)),
                        "new prefix %d" % i))
    check(len(seen) >= 2, "different prompt prefixes should spread, all went to %r" % seen)
    eq(g.metrics().get(("llmgw_affinity_hits_total", ""), 0.0) - hits0, 14.0,
       "no hits for new prompt prefixes")
    # another key does not reuse A's entry: its first request is no hit
    served(g.chat("m-aff", marker(), key="sk-other", messages=conv(sys_a, 0)), "other key")
    eq(g.metrics().get(("llmgw_affinity_hits_total", ""), 0.0) - hits0, 14.0,
       "another key's first request is no hit")


def test_affinity_skips_unhealthy_target():
    """An affinity target whose breaker opened is not used: the conversation moves to a
    healthy target and then sticks to that one."""
    tags = dict((p, "aff%s-%s" % (p, marker())) for p in ("pa", "pb", "pc"))
    g = fresh([("m-aff", ["%s switch#%s" % (p, t) for p, t in sorted(tags.items())],
                "strategy = weighted", "affinity = 10m")], gw={"max_attempts": "1"})
    sp = "You are C. " + marker()
    p0 = served(g.chat("m-aff", marker(), messages=conv(sp, 0)), "first")
    for i in range(2):
        served(g.chat("m-aff", marker(), messages=conv(sp, i + 1)), "sticky %d" % i, provider=p0)
    # break p0's target with other requests (only p0, so the conversation's entry stays)
    mock().switch(**{tags[p0]: "status-503"})
    for i in range(FAILS):
        err_msg(g.chat("m-aff", marker(), provider={"only": [p0]}), 502, "breaking %s %d" % (p0, i))
    eq(breaker(g, "%s/switch#%s" % (p0, tags[p0]))[0], 1.0, "the affinity target's breaker")
    mk = marker()
    p1 = served(g.chat("m-aff", mk, messages=conv(sp, 3) + [{"role": "user", "content": mk}]),
                "after the breaker opened")
    check(p1 != p0, "the conversation must leave its unhealthy target %s" % p0)
    eq(mock().models(mk), ["switch#" + tags[p1]], "no attempt on the unhealthy target")
    for i in range(3):
        served(g.chat("m-aff", marker(), messages=conv(sp, 4 + i)), "new sticky %d" % i, provider=p1)
    mock().switch(**dict((t, None) for t in tags.values()))


# =======================================================================================
# tests: health across a reload

def test_health_survives_reload():
    """SIGHUP: the health (ttft, tokens/s, breaker) of targets that remain is kept; targets
    a reload removed leave /metrics."""
    models = [("m-h", ["pa slow-first-byte-300#h-a", "pb ok#h-b"], "strategy = latency"),
              ("m-hb", ["pc status-503#hb-c", "pd ok#hb-d"])]
    g = fresh(models)
    for i in range(4):
        served(g.chat("m-h", marker()), "warm-up %d" % i)
    for i in range(FAILS):
        served(g.chat("m-hb", marker()), "breaking %d" % i, provider="pd")
    before = g.metrics()
    ta = before.get(("llmgw_target_ttft_seconds", "pa/slow-first-byte-300#h-a"))
    tb = before.get(("llmgw_target_ttft_seconds", "pb/ok#h-b"))
    check(ta and ta >= 0.28, "warm-up: slow target ttft %r" % ta)
    eq(before.get(("llmgw_target_breaker_state", "pc/status-503#hb-c")), 1.0, "breaker open")
    # reload with a new model added and the order of m-h's targets swapped
    g.write(g.config(models=[("m-h", ["pb ok#h-b", "pa slow-first-byte-300#h-a"], "strategy = latency"),
                             models[1], ("m-new", ["pa ok#h-new"])]))
    g.signal(signal.SIGHUP)
    wait_for(lambda: b'"m-new"' in g.get("/v1/models").body, 5, "the reload (m-new in /v1/models)")
    after = g.metrics()
    for tgt in ("pa/slow-first-byte-300#h-a", "pb/ok#h-b"):
        for metric in ("llmgw_target_ttft_seconds", "llmgw_target_tokens_per_second"):
            eq(after.get((metric, tgt)), before.get((metric, tgt)), "%s{%s} after reload" % (metric, tgt))
    eq(after.get(("llmgw_target_breaker_state", "pc/status-503#hb-c")), 1.0, "breaker still open")
    eq(after.get(("llmgw_target_consecutive_failures", "pc/status-503#hb-c")), float(FAILS), "failures kept")
    # and the router uses it: the fast target first, the open breaker skipped, without exploring
    mk = marker()
    served(g.chat("m-h", mk), "latency after reload", provider="pb")
    mk = marker()
    served(g.chat("m-hb", mk), "breaker after reload", provider="pd")
    eq(mock().models(mk), ["ok#hb-d"], "the open target is still skipped")
    check(tb is not None, "fast target ttft present")
    # a reload that drops m-hb: its targets leave /metrics, the others stay
    g.write(g.config(models=[("m-h", ["pb ok#h-b", "pa slow-first-byte-300#h-a"], "strategy = latency")]))
    g.signal(signal.SIGHUP)
    wait_for(lambda: b'"m-new"' not in g.get("/v1/models").body, 5, "the second reload (m-new gone)")
    gone = g.metrics()
    for metric in ("llmgw_target_breaker_state", "llmgw_target_consecutive_failures"):
        for tgt in ("pc/status-503#hb-c", "pd/ok#hb-d"):
            check((metric, tgt) not in gone, "%s{%s} still in /metrics after its model was removed" % (metric, tgt))
        check((metric, "pa/slow-first-byte-300#h-a") in gone, "%s of a target that remains is gone" % metric)


# =======================================================================================
# runner


def test_shared_gateway_clean_exit():
    global SHARED
    g = shared()
    check(g.alive(), "shared gateway not running")
    try:
        g.stop(10)
        shutil.rmtree(g.dir, ignore_errors=True)
    finally:
        SHARED = None


def main():
    return H.main(globals(), "llmgw routing-engine tests", hidden=("test_shared_gateway_clean_exit",))


if __name__ == "__main__":
    sys.exit(main())
