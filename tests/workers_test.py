#!/usr/bin/env python3
"""llmgw tests of `workers = N`: several event loops, each in its own thread with its own
SO_REUSEPORT listeners, connections, upstream pool and timers, sharing router health,
key spend and budgets, metrics, the /v1/generation ring, the ledger, request ids and the
max_connections count. Against a real llmgw process.

    python3 tests/workers_test.py                  # all tests, against ./llmgw
    python3 tests/workers_test.py -k reload        # only tests whose name contains "reload"
    python3 tests/workers_test.py --gw build/llmgw-tsan
    TSAN_OPTIONS=halt_on_error=1:exitcode=66 python3 tests/workers_test.py --gw build/llmgw-tsan

Every request of these tests goes on a connection of its own (Connection: close), so the
kernel spreads them over the loops' listeners. Upstreams: the built-in `mock` provider and
tests/mockup.py through a `type = openai` provider. Every test starts its own gateway and
stops it with SIGTERM at the end: it must exit 0 and its stderr must hold no sanitizer report
(ThreadSanitizer, AddressSanitizer, UndefinedBehaviorSanitizer), so a race found by a TSan
build fails the test that provoked it.

Standard library only; everything talks to 127.0.0.1; every wait is bounded.
Prints "PASS name" / "FAIL name: reason" per test and ends with "N passed, N failed".
"""
import http.client
import json
import os
import re
import select
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
from harness import sse_events, sse_text  # noqa: E402,F401
from harness import Resp, request, expect_status, chat_body  # noqa: E402,F401
from harness import near_usd as near, crc_hex, reservation  # noqa: E402,F401
from harness import (HERE, PYTHON, TOL, GW, VERBOSE, CTX, Fail, check, eq,  # noqa: E402,F401
                     snip, marker, free_port, read_file)

MOCK_SCRIPT = os.path.join(HERE, "mockup.py")
MOCK = None                           # tests/mockup.py, shared by all tests
ADMIN = "adm-workers-1"
SLOW_TEXT = "".join("tick%d " % i for i in range(10))     # mockup's slow-stream reply
# consecutive counted failures that open a target's circuit breaker (LLMGW_BREAKER_FAILS)
FAILS = int(os.environ.get("LLMGW_BREAKER_FAILS", "5"))
NCPU = os.cpu_count() or 1            # what sysconf(_SC_NPROCESSORS_ONLN) says
SANITIZER_MARKS = ("WARNING: ThreadSanitizer", "ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                   "runtime error:", "ThreadSanitizer:", "SUMMARY: UndefinedBehaviorSanitizer")


# =======================================================================================
# costs

def cost_of(prompt, completion, inp, out):
    return (prompt * inp + completion * out) / 1e6


def parallel(n, fn, threads=8, timeout=60, what="requests"):
    """fn(i) for i in range(n) from `threads` client threads; the results in order. Any
    exception fails the test (after every thread stopped)."""
    results = [None] * n
    errors = []
    lock = threading.Lock()
    nxt = [0]

    def worker():
        while True:
            with lock:
                if errors or nxt[0] >= n:
                    return
                i = nxt[0]
                nxt[0] += 1
            try:
                results[i] = fn(i)
            except BaseException as e:      # noqa: B902 (reported below)
                with lock:
                    errors.append("%s %d: %s: %s" % (what, i, type(e).__name__, e))
                return
    ts = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    deadline = time.monotonic() + timeout * TOL
    for t in ts:
        t.join(max(0.1, deadline - time.monotonic()))
    check(not any(t.is_alive() for t in ts), "%s did not finish within %gs (%d of %d started)"
          % (what, timeout * TOL, nxt[0], n))
    check(not errors, "%s failed: %s" % (what, "; ".join(errors[:3])))
    return results


# =======================================================================================
# processes

class Mock(H.MockProc):
    def __init__(self):
        super().__init__([PYTHON, MOCK_SCRIPT, "--port", "0"], "llmgw-workers-mock-", "mock upstream")

    def requests(self):
        check(self.alive(), "the mock upstream died: %s" % read_file(self.stderr_path)[-2000:])
        r = request(self.port, "GET", "/_requests")
        expect_status(r, 200, "mock GET /_requests")
        return r.json()

    def models(self, needle):
        """The upstream models of the recorded requests whose body contains needle."""
        out = []
        for r in self.requests():
            if needle in r.get("body", ""):
                try:
                    out.append(json.loads(r["body"]).get("model"))
                except ValueError:
                    out.append(None)
        return out


def mock():
    global MOCK
    if MOCK is None:
        MOCK = Mock()
        H.CTX.mock_mark = 0
    check(MOCK.alive(), "the mock upstream died: %s" % read_file(MOCK.stderr_path)[-2000:])
    return MOCK


GW_DEFAULTS = """header_timeout = 2s
idle_timeout = 5s
connect_timeout = 1s
first_byte_timeout = 5s
stream_idle_timeout = 5s
max_attempts = 3
log_level = info
shutdown_timeout = 10s
"""


def sanitizer_report(text):
    for m in SANITIZER_MARKS:
        i = text.find(m)
        if i >= 0:
            return text[max(0, i - 200):i + 3000]
    return None


class Gateway(H.KeyClient, H.GatewayBase):
    """A gateway for one test with `workers = N` (None: no workers line). `gateway` adds lines
    to [gateway]; `body` is the rest of the config (providers `mk` (built-in mock), `up`
    (mockup.py) and `dead` (nothing listens) are always defined)."""
    prefix = "llmgw-workers-"
    start_stderr_always = False   # the runner prints every gateway's stderr on failure
    poll_step = 0.03

    def __init__(self, gateway="", body="", workers=2, state=False):
        super().__init__(register=False)
        self.state_dir = os.path.join(self.dir, "state") if state else None
        self.ledger = os.path.join(self.state_dir, "ledger") if state else None
        self.gateway, self.body, self.workers = gateway, body, workers
        self.write()
        H.CTX.gateways.append(self)

    def config_text(self):
        mp = mock().port
        out = "[gateway]\nlisten = 127.0.0.1:%d\naccess_log = %s\nadmin_key = %s\n" % (
            self.port, self.access_log, ADMIN)
        if self.workers is not None:
            out += "workers = %s\n" % self.workers
        if self.state_dir:
            out += "state_dir = %s\n" % self.state_dir
        out += H.gw_lines(GW_DEFAULTS, self.gateway) + "\n"  # the test's own lines replace the defaults
        out += "[provider.mk]\ntype = mock\n\n"
        out += ("[provider.up]\ntype = openai\nbase_url = http://127.0.0.1:%d/v1\napi_key = up-secret\n\n"
                "[provider.dead]\ntype = openai\nbase_url = http://127.0.0.1:1/v1\n\n" % mp)
        return out + self.body.strip() + "\n"

    def write(self, text=None):
        with open(self.cfg, "w") as f:
            f.write(self.config_text() if text is None else text)

    def health(self):
        return request(self.port, "GET", "/health", timeout=1).status

    def stop(self, timeout=10):
        rc = super().stop(timeout)
        self.check_clean()
        return rc

    def check_clean(self):
        rep = sanitizer_report(self.stderr())
        check(rep is None, "the gateway's stderr holds a sanitizer report:\n%s" % rep)

    def restart(self):
        """Start again on the same config and state_dir, on a new port."""
        if self.alive():
            self.stop()
        self.port = free_port()
        self.write()
        return self.start()

    def pid(self):
        check(self.alive(), "the gateway is not running (exit status %r)" % self.proc.poll())
        return self.proc.pid

    def loops_logged(self):
        """The N of the ready line's ", N event loop(s)" (another loop may answer /health
        before the first one wrote that line: waits for it, bounded)."""
        deadline = time.monotonic() + 3 * TOL
        while True:
            m = re.search(r"ready: [^\n]*, (\d+) event loops?\s*$", self.stderr(), re.M)
            if m or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        check(m, "no ready line ending in ', N event loops' in the log: %s" % snip(self.stderr(), 1500))
        return int(m.group(1)), m.group(0)

    # -- convenience
    def metrics(self):
        r = self.get("/metrics", key=ADMIN)
        expect_status(r, 200, "GET /metrics")
        return parse_metrics(r.text)

    def access(self):
        return self.access_all()


def gateway(gateway="", body="", workers=2, state=False):
    return Gateway(gateway, body, workers, state).start()


SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """[(name, {label: value}, float)] of every sample line."""
    out = []
    for ln in text.splitlines():
        if not ln or ln.startswith("#"):
            continue
        m = SAMPLE_RE.match(ln)
        check(m, "/metrics: not a sample line: %r" % ln)
        out.append((m.group(1), dict(LABEL_RE.findall(m.group(2) or "")),
                    float(m.group(3).replace("Inf", "inf"))))
    return out


def msum(samples, name, **labels):
    """Sum of the samples of `name` whose labels include `labels`; None when there is none."""
    vals = [v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items())]
    return sum(vals) if vals else None


# =======================================================================================
# threads of the gateway process

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def thread_cpu(pid):
    """{tid: (name, CPU ns)} of every thread of pid: schedstat's run time, else utime+stime."""
    out = {}
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError as e:
        raise Fail("cannot list the gateway's threads: %s" % e)
    for tid in tids:
        base = "/proc/%d/task/%s/" % (pid, tid)
        name = read_file(base + "comm").strip()
        ns = None
        st = read_file(base + "schedstat").split()
        if st:
            try:
                ns = int(st[0])
            except ValueError:
                ns = None
        if ns is None:
            stat = read_file(base + "stat")
            if not stat:
                continue            # the thread ended
            f = stat[stat.rfind(")") + 2:].split()
            ns = (int(f[11]) + int(f[12])) * 1000000000 // CLK_TCK
        out[int(tid)] = (name, ns)
    return out


# =======================================================================================
# 1, 2: the loops and the threads that run them

SIMPLE = """
[model.m]
target = mk mock-1 in=3 out=15

[key.k]
secret = sk-k
"""


def test_connections_spread_over_both_loops():
    """workers = 2: 'N event loops' in the ready line; 400 requests, each on a fresh
    connection from 8 client threads, are all answered, and at least two threads of the
    gateway did a real share of the work (the kernel spreads connections over both loops'
    SO_REUSEPORT listeners)."""
    g = gateway(body=SIMPLE, workers=2)
    n, line = g.loops_logged()
    eq(n, 2, "event loops in the ready line %r" % line)
    check(line.rstrip().endswith("2 event loops"), "ready line %r should end with '2 event loops'" % line)
    pid = g.pid()
    # every loop has been running for a moment: let start-up work settle before measuring
    expect_status(g.chat("sk-k", "m"), 200, "warm-up")
    before = thread_cpu(pid)
    check(len(before) >= 2, "workers = 2 but the gateway has %d thread(s): %r" % (len(before), before))
    N = 400

    def one(i):
        r = g.chat("sk-k", "m", "spread %d" % i)
        expect_status(r, 200, "request %d" % i)
        return r.h("x-request-id")
    ids = parallel(N, one, threads=8, timeout=60)
    after = thread_cpu(pid)
    eq(len(set(ids)), N, "distinct x-request-id values")
    gains = {tid: after[tid][1] - before.get(tid, ("", 0))[1] for tid in after}
    total = sum(max(0, v) for v in gains.values())
    check(total > 0, "the gateway used no CPU for %d requests: %r -> %r" % (N, before, after))
    busy = sorted(((v, tid) for tid, v in gains.items()), reverse=True)
    desc = ", ".join("%d %s +%.1fms (%.0f%%)" % (tid, after[tid][0], v / 1e6, 100.0 * v / total)
                     for v, tid in busy)
    # a thread that served a fair part of ~400 connections: more than 10% of what the
    # process used (the kernel's 4-tuple hash puts ~50% on each listener)
    loops = [tid for v, tid in busy if v >= 0.10 * total]
    check(len(loops) >= 2, "only %d thread(s) of the gateway did a real share of %d requests on fresh "
          "connections with workers = 2 (threads: %s)" % (len(loops), N, desc))
    CTX.notes.append("MEASURE workers=2 CPU per thread over %d requests: %s" % (N, desc))


test_connections_spread_over_both_loops.limit = 90


def test_workers_zero_is_one_per_core_and_default_one():
    """workers = 0: one loop per online core, in the ready line and in the threads; no
    workers line: 1 event loop; workers = 3: 3 loops, each answering."""
    want = min(NCPU, 64)
    g = gateway(body=SIMPLE, workers=0)
    n, line = g.loops_logged()
    eq(n, want, "workers = 0 on %d online cores: loops in the ready line %r" % (NCPU, line))
    check(line.rstrip().endswith("%d event loop%s" % (want, "s" if want > 1 else "")),
          "ready line %r" % line)
    check(len(thread_cpu(g.pid())) >= want, "workers = 0: fewer threads than loops (%d)" % want)
    for i in range(20):
        expect_status(g.chat("sk-k", "m", "zero %d" % i), 200, "workers = 0: request %d" % i)
    g.stop()
    g = gateway(body=SIMPLE, workers=None)
    n, line = g.loops_logged()
    eq(n, 1, "no workers line: loops in the ready line %r" % line)
    check(line.rstrip().endswith("1 event loop"), "ready line %r should end with '1 event loop'" % line)
    expect_status(g.chat("sk-k", "m"), 200, "one loop: request")
    g.stop()
    g = gateway(body=SIMPLE, workers=3)
    n, line = g.loops_logged()
    eq(n, 3, "workers = 3: loops in the ready line %r" % line)
    check(len(thread_cpu(g.pid())) >= 3, "workers = 3: fewer than 3 threads")
    rs = parallel(60, lambda i: g.chat("sk-k", "m", "three %d" % i), threads=6)
    eq(sorted(set(r.status for r in rs)), [200], "workers = 3: statuses")


# =======================================================================================
# 3: accounting is global

def test_accounting_global_across_loops():
    """300 quick requests over fresh connections: /v1/key spend equals the sum of the
    usage.cost of the answers. Then 40 clients against a budget with a slow upstream, over
    fresh connections (both loops): the settled spend never exceeds the budget (reservations
    are shared), /v1/key equals the sum of the 200s' costs, the others get 402."""
    g = gateway(body="""
[model.m]
target = mk mock-1 in=3 out=15

[model.slow]
target = up slow-stream#wcc in=1000 out=2000

[key.fast]
secret = sk-fast

[key.cc]
secret = sk-cc
budget = 0.5/day
""")
    # -- quick requests, every one charged once
    N = 300

    def one(i):
        extra = {"stream_options": {"include_usage": True}} if i % 5 == 0 else {}
        r = g.chat("sk-fast", "m", "acct %d %s" % (i, "x" * (i % 57)), stream=(i % 5 == 0), **extra)
        expect_status(r, 200, "request %d" % i)
        if i % 5 == 0:
            us = [json.loads(e)["usage"] for e in sse_events(r.body)
                  if e.startswith("{") and isinstance(json.loads(e).get("usage"), dict)]
            check(len(us) == 1, "stream %d: usage chunks %r" % (i, us))
            return us[0]["cost"]
        return r.json()["usage"]["cost"]
    costs = parallel(N, one, threads=8)
    want = sum(costs)
    d = g.wait_key("sk-fast", lambda d: d["remaining"]["in_flight"] == 0, "no request in flight")
    near(d.get("usage"), want, "/v1/key usage after %d requests over both loops = sum of usage.cost" % N)
    near(d.get("total_spend"), want, "/v1/key total_spend")
    s = g.metrics()
    near(msum(s, "llmgw_key_spend_usd", key="fast"), want, "llmgw_key_spend_usd{key=fast}")
    near(msum(s, "llmgw_cost_usd_total", key="fast"), want, "llmgw_cost_usd_total{key=fast}", rel=1e-6)

    # -- a budget raced by 40 clients
    budget = 0.5
    body = json.dumps(chat_body("slow", "concurrency test", max_tokens=10)).encode()
    res = reservation(body, 1000, 2000, 10)
    cost = cost_of(11, 7, 1000, 2000)
    check(cost <= res, "test setup: the upstream must be honest (cost %g <= reservation %g)" % (cost, res))
    oks, refusals = H.budget_race(g, body, "sk-cc", budget, res, cost, 15,
                                  hint=": reservations are not shared by the loops?")
    r = g.post("/v1/chat/completions", body, key="sk-cc")
    expect_status(r, 402, "after exhaustion")
    check("'cc'" in r.text and "0.5 USD/day" in r.text, "402 names key and budget: %s" % snip(r.body))


test_accounting_global_across_loops.limit = 90


# =======================================================================================
# 4: metrics, request ids and /v1/generation across loops

def test_metrics_ids_and_generation_across_loops():
    """300 requests over fresh connections: llmgw_requests_total sums to exactly 300, every
    id is unique, and GET /v1/generation?id= (each on a fresh connection, so usually on
    another loop than the one that served it) finds every one with its cost."""
    g = gateway(body=SIMPLE + """
[model.other]
target = mk mock-2 in=1 out=2
""")
    N, NO = 300, 40

    def one(i):
        model = "other" if i < NO else "m"
        r = g.chat("sk-k", model, "ids %d %s" % (i, "y" * (i % 31)))
        expect_status(r, 200, "request %d" % i)
        j = r.json()
        return (model, r.h("x-request-id"), j.get("id"), j["usage"])
    got = parallel(N, one, threads=8)
    rids = [x[1] for x in got]
    check(all(isinstance(x, str) and x for x in rids), "every answer has an x-request-id")
    eq(len(set(rids)), N, "distinct x-request-id values of %d requests" % N)
    bids = [x[2] for x in got]
    eq(len(set(bids)), N, "distinct body ids of %d requests" % N)
    s = g.metrics()
    eq(msum(s, "llmgw_requests_total", model="m"), float(N - NO), "llmgw_requests_total{model=m}")
    eq(msum(s, "llmgw_requests_total", model="other"), float(NO), "llmgw_requests_total{model=other}")
    eq(msum(s, "llmgw_requests_total", model="m", status="200"), float(N - NO),
       "llmgw_requests_total{model=m,status=200}")
    eq(msum(s, "llmgw_request_duration_seconds_count", model="m"), float(N - NO),
       "llmgw_request_duration_seconds_count{model=m}")
    eq(msum(s, "llmgw_tokens_total", key="k", model="m", type="prompt"),
       float(sum(u["prompt_tokens"] for m, _, _, u in got if m == "m")), "llmgw_tokens_total prompt, model m")
    eq(msum(s, "llmgw_tokens_total", key="k", model="m", type="completion"),
       float(sum(u["completion_tokens"] for m, _, _, u in got if m == "m")),
       "llmgw_tokens_total completion, model m")
    eq(msum(s, "llmgw_requests_in_flight"), 0.0, "llmgw_requests_in_flight at rest")

    def gen(i):
        model, rid, _, u = got[i]
        r = g.get("/v1/generation?id=" + rid, key="sk-k")
        expect_status(r, 200, "GET /v1/generation?id=%s" % rid)
        d = r.json().get("data") or {}
        eq(d.get("id"), rid, "generation %s: id" % rid)
        eq((d.get("model"), d.get("status")), (model, 200), "generation %s: model, status" % rid)
        eq((d.get("prompt_tokens"), d.get("completion_tokens")), (u["prompt_tokens"], u["completion_tokens"]),
           "generation %s: tokens" % rid)
        near(d.get("cost"), u["cost"], "generation %s: cost" % rid)
    parallel(N, gen, threads=8, what="generation look-ups")


test_metrics_ids_and_generation_across_loops.limit = 90


# =======================================================================================
# 5: reload reaches every loop

def test_reload_reaches_every_loop():
    """A price change: after SIGHUP, 30 requests on fresh connections all cost the new
    price; then POST /admin/reload (each on a fresh connection, so served by either loop),
    four times with new prices, 30 requests after each, all at the new price."""
    prices = [(1, 2), (7, 11), (13, 17), (19, 23), (29, 31), (37, 41)]

    def body(inp, out):
        return SIMPLE.replace("in=3 out=15", "in=%d out=%d" % (inp, out))
    g = Gateway(body=body(*prices[0]), workers=2)
    g.start()

    def round_(inp, out, what):
        def one(i):
            r = g.chat("sk-k", "m", "%s %d %s" % (what, i, "z" * (i % 13)))
            expect_status(r, 200, "%s: request %d" % (what, i))
            u = r.json()["usage"]
            near(u["cost"], cost_of(u["prompt_tokens"], u["completion_tokens"], inp, out),
                 "%s: request %d (x-request-id %s) cost at in=%d out=%d" % (what, i, r.h("x-request-id"), inp, out))
        parallel(30, one, threads=6, what=what)
    round_(*prices[0], what="before any reload")
    # SIGHUP
    g.body = body(*prices[1])
    g.write()
    n0 = g.stderr().count("configuration reloaded from")
    g.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5 * TOL
    while g.stderr().count("configuration reloaded from") == n0:
        check(time.monotonic() < deadline, "SIGHUP: no 'configuration reloaded' in the log: %s"
              % snip(g.stderr()[-1500:], 1500))
        check(g.alive(), "the gateway died after SIGHUP")
        time.sleep(0.02)
    round_(*prices[1], what="after SIGHUP")
    # POST /admin/reload over fresh connections
    for k, (inp, out) in enumerate(prices[2:]):
        g.body = body(inp, out)
        g.write()
        r = g.post("/admin/reload", b"", key=ADMIN)
        expect_status(r, 200, "POST /admin/reload %d" % (k + 1))
        round_(inp, out, "after POST /admin/reload %d" % (k + 1))
    # a reload that changes workers: kept until a restart, said so in the log
    g.workers = 3
    g.write()
    expect_status(g.post("/admin/reload", b"", key=ADMIN), 200, "reload with workers = 3")
    check("workers changed: it takes effect on restart" in g.stderr(),
          "a reload that changes workers should warn it takes effect on restart: %s" % snip(g.stderr()[-1500:], 1500))
    round_(*prices[-1], what="after the workers reload")
    eq(g.loops_logged()[0], 2, "event loops after the reload")


test_reload_reaches_every_loop.limit = 90


# =======================================================================================
# 6: max_connections counts connections of every loop

def read_response(s, timeout):
    """A whole HTTP response (Content-Length or close delimited) from a socket; b"" on EOF."""
    s.settimeout(timeout)
    data = b""
    while True:
        i = data.find(b"\r\n\r\n")
        if i >= 0:
            m = re.search(rb"\r\ncontent-length: *(\d+)", data[:i], re.I)
            if m and len(data) >= i + 4 + int(m.group(1)):
                return data
        try:
            d = s.recv(65536)
        except socket.timeout:
            raise Fail("no complete response within %gs (got %r)" % (timeout, data[:300]))
        if not d:
            return data
        data += d


def probe(port, wait=1.0):
    """A new connection: ("refused", answer) when the gateway answers it on its own (the
    max_connections 503) or resets it, else ("ok", socket) after GET /health got a 200 on it
    (the socket stays open: a held keep-alive connection)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5 * TOL)
    try:
        r, _, _ = select.select([s], [], [], wait * TOL)
        if not r:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        data = read_response(s, 5 * TOL)
    except (ConnectionResetError, BrokenPipeError) as e:
        s.close()
        return ("refused", repr(e).encode())
    if data.startswith(b"HTTP/1.1 200") and not r:
        return ("ok", s)
    s.close()
    return ("refused" if data.startswith(b"HTTP/1.1 503") else "other", data)


def test_max_connections_is_global():
    """workers = 2, max_connections = 8: 8 held keep-alive connections (each did a
    request) fill it for both loops: 10 more new connections all get the plain 503; after 3
    of the 8 close, exactly 3 new ones are let in again, then refusals again."""
    g = gateway(gateway="max_connections = 8\nidle_timeout = 60s\nheader_timeout = 5s", body=SIMPLE)
    held = []
    try:
        for i in range(8):
            st, s = probe(g.port, wait=0.3)
            check(st == "ok", "held connection %d of 8 was not let in: %s %r" % (i + 1, st, s))
            held.append(s)
        refusals = []
        for i in range(10):
            st, what = probe(g.port)
            if st == "ok":
                what.close()
            check(st == "refused", "new connection %d with 8 of max_connections = 8 open (over both loops) "
                  "was %s: %r" % (i + 1, "let in and answered 200" if st == "ok" else st, what))
            refusals.append(what)
        plain = [a for a in refusals if a.startswith(b"HTTP/1.1 503")]
        check(len(plain) >= 8, "most refusals should be the plain HTTP 503 (not resets): %r" % refusals[:3])
        for a in plain:
            check(b"max_connections" in a and b"Connection: close" in a,
                  "503 refusal names max_connections: %r" % a[:300])
        for s in held[:3]:
            s.close()
        held = held[3:]
        deadline = time.monotonic() + 5 * TOL
        admitted = 0
        while admitted < 3:
            st, what = probe(g.port, wait=0.3)
            if st == "ok":
                held.append(what)
                admitted += 1
                continue
            check(st == "refused", "while the gateway notices the closes: %s %r" % (st, what))
            check(time.monotonic() < deadline, "after closing 3 of 8 connections only %d new ones "
                  "were let in within 5s" % admitted)
            time.sleep(0.05)
        for i in range(6):
            st, what = probe(g.port)
            if st == "ok":
                what.close()
            check(st == "refused", "after 5 + 3 connections, new connection %d was %s: %r"
                  % (i + 1, "let in" if st == "ok" else st, what))
        # the held connections still work
        for k, s in enumerate(held):
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            data = read_response(s, 5 * TOL)
            check(data.startswith(b"HTTP/1.1 200"), "held connection %d: %r" % (k, data[:200]))
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 5 * TOL
    while True:
        try:
            s = g.metrics()
            n = msum(s, "llmgw_connections", role="client")
            if n == 1:
                break
        except Fail:
            n = "refused"
        check(time.monotonic() < deadline, "llmgw_connections{role=client} with only the scrape open: %r" % n)
        time.sleep(0.05)
    check("connection refused: max_connections (8) reached" in g.stderr(),
          "the refusals are not logged: %s" % snip(g.stderr()[-1500:], 1500))


test_max_connections_is_global.limit = 60


# =======================================================================================
# 7: SIGTERM drains every loop

def stream_client(port, content, started, timeout=15):
    """A slow stream on its own connection; sets `started` at its first content event;
    returns (status, whole body)."""
    body = json.dumps(chat_body("slow", content, stream=True)).encode()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout * TOL)
    try:
        c.request("POST", "/v1/chat/completions", body=body,
                  headers={"Authorization": "Bearer sk-k", "Content-Type": "application/json",
                           "Connection": "close"})
        r = c.getresponse()
        data = b""
        while b"tick0" not in data:
            d = r.read1(65536)
            if not d:
                break
            data += d
        started.set()
        data += r.read()
        return r.status, data
    finally:
        started.set()
        c.close()


def test_sigterm_drains_streams_on_every_loop():
    """6 slow streams (10 events 0.2 s apart) on 6 connections, spread over both loops;
    SIGTERM once all have started: new connections are no longer served by any loop, every
    stream completes with all its events and [DONE], and the process exits 0 soon after."""
    g = gateway(gateway="shutdown_timeout = 8s", body=SIMPLE + """
[model.slow]
target = up slow-stream#wterm in=1 out=1
""")
    n = 6
    started = [threading.Event() for _ in range(n)]
    boxes = [H.in_thread(stream_client, g.port, "drain %d" % i, started[i]) for i in range(n)]
    deadline = time.monotonic() + 5 * TOL
    for i, ev in enumerate(started):
        check(ev.wait(max(0.01, deadline - time.monotonic())), "stream %d did not start within 5s" % i)
    check(all("error" not in b for b in boxes), "a stream failed before SIGTERM: %r"
          % [b.get("error") for b in boxes if "error" in b][:1])
    t_term = time.monotonic()
    g.signal(signal.SIGTERM)
    time.sleep(0.3)
    # no loop serves new connections any more (streams still have ~1.5 s to go)
    served = []
    for i in range(10):
        try:
            r = request(g.port, "GET", "/health", timeout=3)
            if r.status == 200:
                served.append(i)
        except (OSError, http.client.HTTPException):
            pass
    check(not served, "after SIGTERM new connections %r were still answered 200 (a loop kept its "
          "listener)" % served)
    results = [H.join(b, 15, "stream %d" % i) for i, b in enumerate(boxes)]
    for i, (st, data) in enumerate(results):
        eq(st, 200, "stream %d status" % i)
        eq(sse_text(data), SLOW_TEXT, "stream %d content after SIGTERM" % i)
        check("[DONE]" in sse_events(data), "stream %d: no [DONE]: %s" % (i, snip(data[-300:])))
    try:
        rc = g.proc.wait(8 * TOL)
    except subprocess.TimeoutExpired:
        raise Fail("the gateway did not exit within 8s of SIGTERM (shutdown_timeout 8s) with all "
                   "streams done %.1fs after it" % (time.monotonic() - t_term))
    g.rc = rc
    eq(rc, 0, "exit status after SIGTERM")
    g.check_clean()
    lines = [ln for ln in g.access() if ln.get("model") == "slow"]
    eq(len(lines), n, "access log lines of the drained streams")
    eq(sorted(ln.get("status") for ln in lines), [200] * n, "access log statuses of the drained streams")
    check("stopped after" in g.stderr(), "no 'stopped after' in the log: %s" % snip(g.stderr()[-1000:]))


test_sigterm_drains_streams_on_every_loop.limit = 60


# =======================================================================================
# 8: the ledger with several loops

LEDGER_C1 = re.compile(r"^c1 (\d+) (\S+) (\S+) (\S+) ([0-9a-f]{8})$")
LEDGER_S1 = re.compile(r"^s1 (\S+) (-?\d+) (-?\d+) (\S+) (\S+) ([0-9a-f]{8})$")


def parse_ledger(text, what):
    check(text == "" or text.endswith("\n"), "%s: the ledger does not end with a newline: %r"
          % (what, text[-80:]))
    c1, s1 = [], []
    for ln in text.split("\n")[:-1]:
        m1, m2 = LEDGER_C1.match(ln), LEDGER_S1.match(ln)
        check(m1 or m2, "%s: ledger line in an unknown format (interleaved writes?): %r" % (what, ln))
        eq((m1 or m2).groups()[-1], crc_hex(ln[:-9]), "%s: CRC of ledger line %r" % (what, ln))
        if m1:
            c1.append({"key": m1.group(2), "usd": float(m1.group(3)), "id": m1.group(4)})
        else:
            s1.append({"key": m2.group(1), "spend": float(m2.group(4)), "total": float(m2.group(5))})
    return c1, s1


def test_ledger_with_two_loops_survives_restart():
    """workers = 2 with state_dir: 120 requests of two keys over fresh connections: one c1
    record per request (whole lines, valid CRCs); SIGTERM, restart with workers = 2: /v1/key
    shows the same spend; after more requests and another restart, still."""
    body = """
[model.m]
target = mk mock-1 in=100 out=300

[key.a]
secret = sk-a
budget = 100/day

[key.b]
secret = sk-b
"""
    g = gateway(body=body, workers=2, state=True)
    N = 120

    def one(i):
        key = "a" if i % 3 else "b"
        r = g.chat("sk-" + key, "m", "ledger %d %s" % (i, "q" * (i % 41)))
        expect_status(r, 200, "request %d" % i)
        return key, r.h("x-request-id"), r.json()["usage"]["cost"]
    got = parallel(N, one, threads=8)
    sums = {k: sum(c for kk, _, c in got if kk == k) for k in ("a", "b")}
    before = {}
    for k in ("a", "b"):
        before[k] = g.wait_key("sk-" + k, lambda d: d["remaining"]["in_flight"] == 0, "key %s at rest" % k)
        near(before[k]["usage"], sums[k], "key %s: /v1/key usage = sum of usage.cost" % k)
    g.stop()
    c1, _ = parse_ledger(read_file(g.ledger), "ledger after %d requests" % N)
    eq(sorted(x["id"] for x in c1), sorted(rid for _, rid, _ in got), "c1 records: one per request, by id")
    byid = {rid: (k, c) for k, rid, c in got}
    for x in c1:
        eq(x["key"], byid[x["id"]][0], "c1 %s: key" % x["id"])
        near(x["usd"], byid[x["id"]][1], "c1 %s: usd" % x["id"])
    g.restart()
    eq(g.loops_logged()[0], 2, "event loops after the restart")
    for k in ("a", "b"):
        d = g.key_info("sk-" + k)
        near(d["usage"], sums[k], "key %s: usage after the restart" % k)
        near(d["total_spend"], before[k]["total_spend"], "key %s: total_spend after the restart" % k)
    check("damaged" not in g.stderr(), "the ledger was reported damaged: %s" % snip(g.stderr()[-1500:], 1500))
    more = parallel(40, one, threads=8)
    for k in ("a", "b"):
        sums[k] += sum(c for kk, _, c in more if kk == k)
    g.stop()
    g.restart()
    for k in ("a", "b"):
        near(g.key_info("sk-" + k)["usage"], sums[k], "key %s: usage after the second restart" % k)


test_ledger_with_two_loops_survives_restart.limit = 60


# =======================================================================================
# 9: circuit breakers are shared

def test_breaker_shared_by_loops():
    """A target that always answers 500, and one nothing listens on, each before a healthy
    one: after FAILS failures spread over fresh connections (so over both loops) its breaker
    is open (llmgw_target_breaker_state 1, FAILS consecutive failures counted once across
    loops), and 20 more requests on fresh connections never attempt it."""
    g = gateway(body="""
[model.mb]
target = up status-500#wbrk
target = mk mock-1

[model.md]
target = dead ok#wdead
target = mk mock-1

[key.k]
secret = sk-k
""")
    tag = "up/status-500#wbrk"
    for i in range(FAILS):
        mk = marker()
        r = g.chat("sk-k", "mb", "breaker %s" % mk)
        expect_status(r, 200, "failing target, request %d" % i)
        eq(r.h("x-llmgw-provider"), "mk", "request %d: served by" % i)
        eq(mock().models(mk), ["status-500#wbrk"], "request %d: attempts on the failing target" % i)
        s = g.metrics()
        eq((msum(s, "llmgw_target_breaker_state", target=tag),
            msum(s, "llmgw_target_consecutive_failures", target=tag)),
           (1.0 if i == FAILS - 1 else 0.0, float(i + 1)),
           "breaker (state, consecutive failures) of %s after %d failures on fresh connections" % (tag, i + 1))
    marks = [marker() for _ in range(20)]

    def skip(i):
        r = g.chat("sk-k", "mb", "open %s" % marks[i])
        expect_status(r, 200, "open breaker: request %d" % i)
        eq(r.h("x-llmgw-attempts"), "1", "open breaker: request %d: x-llmgw-attempts" % i)
        eq(r.h("x-llmgw-provider"), "mk", "open breaker: request %d: served by" % i)
    parallel(20, skip, threads=5, what="requests with the breaker open")
    tried = [m for m in marks if mock().models(m)]
    eq(tried, [], "requests that attempted the target whose breaker is open")
    s = g.metrics()
    eq(msum(s, "llmgw_target_breaker_state", target=tag), 1.0, "breaker state after 20 more requests")
    # connect failures
    dtag = "dead/ok#wdead"
    parallel(FAILS, lambda i: expect_status(g.chat("sk-k", "md", "dead %d" % i), 200, "dead target %d" % i),
             threads=FAILS, what="requests to the dead target")
    s = g.metrics()
    eq((msum(s, "llmgw_target_breaker_state", target=dtag), msum(s, "llmgw_target_consecutive_failures", target=dtag)),
       (1.0, float(FAILS)), "breaker (state, failures) of %s after %d concurrent connect failures" % (dtag, FAILS))

    def dskip(i):
        r = g.chat("sk-k", "md", "dead open %d" % i)
        expect_status(r, 200, "dead open %d" % i)
        eq(r.h("x-llmgw-attempts"), "1", "dead target open: request %d: x-llmgw-attempts" % i)
    parallel(20, dskip, threads=5, what="requests with the dead target's breaker open")
    check(g.stderr().count("circuit breaker open") >= 2, "the openings are not logged: %s"
          % snip(g.stderr()[-1500:], 1500))


test_breaker_shared_by_loops.limit = 60


def test_limits_shared_by_loops():
    """Key rpm and max_concurrency and provider max_concurrency count requests of every
    loop: rpm = 10 lets exactly 10 of 15 requests on fresh connections through; 8 slow
    requests at once against key max_concurrency = 3: exactly 3 served; against a provider
    with max_concurrency = 2: exactly 2 go to it, the others to the next target."""
    g = gateway(body="""
[provider.upc]
type = openai
base_url = http://127.0.0.1:%d/v1
max_concurrency = 2

[model.m]
target = mk mock-1

[model.hold]
target = up slow-first-byte-1500#whold

[model.pc]
target = upc slow-first-byte-1500#wpc
target = mk mock-1

[key.r10]
secret = sk-r10
rpm = 10

[key.c3]
secret = sk-c3
max_concurrency = 3

[key.k]
secret = sk-k
""" % mock().port)
    rs = parallel(15, lambda i: g.chat("sk-r10", "m", "rpm %d" % i), threads=5, what="rpm requests")
    eq(sorted(r.status for r in rs), [200] * 10 + [429] * 5, "statuses of 15 requests with rpm = 10")
    go = threading.Barrier(8)

    def held(model, key):
        def one(i):
            go.wait(5 * TOL)
            return g.chat(key, model, "held %d" % i, timeout=15)
        return one
    rs = parallel(8, held("hold", "sk-c3"), threads=8, what="requests against key max_concurrency = 3")
    eq(sorted(r.status for r in rs), [200] * 3 + [429] * 5,
       "statuses of 8 slow requests at once with key max_concurrency = 3")
    go.reset()
    rs = parallel(8, held("pc", "sk-k"), threads=8, what="requests against provider max_concurrency = 2")
    eq(sorted(r.status for r in rs), [200] * 8, "statuses with provider max_concurrency = 2")
    eq(sorted(r.h("x-llmgw-provider") for r in rs), ["mk"] * 6 + ["upc"] * 2,
       "providers that served 8 slow requests at once with upc's max_concurrency = 2")


test_limits_shared_by_loops.limit = 60


# =======================================================================================
# 10: config errors

def test_workers_config_errors():
    """workers = -1, 65 and a non-number are config errors naming file:line (llmgw -t exits
    1); 0, 1 and 64 are accepted."""
    d = os.path.join(tempfile.gettempdir(), "llmgw-workers-cfg-%d" % os.getpid())
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "w.ini")
    CTX.cleanups.append(lambda: shutil.rmtree(d, ignore_errors=True))

    def cfg(v):
        with open(path, "w") as f:
            f.write("; workers test\n[gateway]\nlisten = 127.0.0.1:%d\n\nworkers = %s\n\n"
                    "[provider.mk]\ntype = mock\n\n[model.m]\ntarget = mk mock-1\n\n[key.k]\nsecret = sk-k\n"
                    % (free_port(), v))
        return path
    for v in ("-1", "65", "1000", "two"):
        p = cfg(v)
        r = H.run_gw(["-t", "-c", p])
        out = (r.stdout + r.stderr).decode("utf-8", "replace")
        eq(r.returncode, 1, "llmgw -t with workers = %s: exit status (output %r)" % (v, out[:300]))
        check("%s:5" % p in out, "workers = %s: the error should name %s:5: %r" % (v, p, out[:500]))
        check("workers" in out, "workers = %s: the error should name the key: %r" % (v, out[:500]))
    for v in ("0", "1", "64"):
        r = H.run_gw(["-t", "-c", cfg(v)])
        eq(r.returncode, 0, "llmgw -t with workers = %s: exit status (output %r)"
           % (v, (r.stdout + r.stderr).decode("utf-8", "replace")[:300]))


# =======================================================================================
# runner

def main():
    return H.main(globals(), "llmgw workers = N tests", default_limit=40, shared_exit=False)


if __name__ == "__main__":
    sys.exit(main())
