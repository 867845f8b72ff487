#!/usr/bin/env python3
"""llmgw shared-store tests ([store], issue 16): budgets shared by several gateway instances
through a real redis-server, and what happens when the store fails.

    python3 tests/store_test.py                  # all tests, against ./llmgw
    python3 tests/store_test.py -k outage        # only tests whose name contains "outage"
    python3 tests/store_test.py --gw build/llmgw-asan

Every test starts its own redis-server (Debian's redis-server; .ci/deps.sh installs it) on a
free 127.0.0.1 port with its own --dir, no persistence, and stops it by its PID; gateways are
started per test and must exit 0 on SIGTERM (so ASan findings fail the test). Upstreams: the
built-in `mock` provider and tests/mockup.py (its slow-stream scenario keeps requests in
flight). A small RESP client here reads the store, independent of llmgw's.

Standard library only; everything talks to 127.0.0.1; every wait is bounded.
Prints "PASS name" / "FAIL name: reason" per test and ends with "N passed, N failed".
"""
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
import harness as H  # noqa: E402
from harness import request, expect_status, chat_body, reservation  # noqa: E402
from harness import (HERE, PYTHON, TOL, CTX, Fail, check, eq, snip, free_port, read_file)  # noqa: E402,F401

MOCK_SCRIPT = os.path.join(HERE, "mockup.py")
MOCK = None
ADMIN = "adm-store-1"
REDIS = shutil.which("redis-server")


# =======================================================================================
# redis-server and a RESP client of our own

def resp_cmd(sock_file, *args):
    """Sends one command on an open socket (its makefile 'rwb'), returns the reply."""
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    sock_file.write(out)
    sock_file.flush()
    return resp_read(sock_file)


def resp_read(f):
    line = f.readline()
    if not line:
        raise Fail("redis closed the connection")
    t, rest = line[:1], line[1:-2]
    if t == b"+":
        return rest.decode()
    if t == b"-":
        return RuntimeError(rest.decode())
    if t == b":":
        return int(rest)
    if t == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data.decode()
    if t == b"*":
        n = int(rest)
        return None if n < 0 else [resp_read(f) for _ in range(n)]
    raise Fail("not RESP: %r" % line)


class Redis:
    """One redis-server for a test: its own port and directory, stopped by PID."""

    def __init__(self, password=None, port=None, tls=None):
        check(REDIS, "redis-server is not installed (.ci/deps.sh installs it)")
        self.dir = tempfile.mkdtemp(prefix="llmgw-store-redis-")
        self.port = port or free_port()
        self.password = password
        self.tls = tls          # a Certs: the store answers only TLS, on self.port
        self.proc = None
        self.start()
        CTX.cleanups.append(self.stop)

    def start(self):
        args = [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir, "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--logfile", os.path.join(self.dir, "log")]
        if self.tls:
            args[1:3] = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", self.tls.cert,
                         "--tls-key-file", self.tls.key, "--tls-ca-cert-file", self.tls.ca,
                         "--tls-auth-clients", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.cmd("PING") == "PONG":
                    return self
            except (OSError, Fail):
                pass
            check(self.proc.poll() is None, "redis-server exited: %s" % read_file(os.path.join(self.dir, "log")))
            time.sleep(0.05)
        raise Fail("redis-server did not answer PING within 10 s")

    def cmd(self, *args):
        with socket.create_connection(("127.0.0.1", self.port), timeout=3) as s:
            if self.tls:
                s = self.tls.context().wrap_socket(s, server_hostname="127.0.0.1")
            f = s.makefile("rwb")
            if self.password:
                r = resp_cmd(f, "AUTH", self.password)
                check(r == "OK", "AUTH: %r" % r)
            return resp_cmd(f, *args)

    def kill(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                self.proc.wait(5)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def settled(self, key, wait=3):
        """spend and held once every settle arrived (held 0, some spend): settles follow the
        answer, so they may land a moment after the client has it."""
        deadline = time.monotonic() + wait * TOL
        while True:
            s, held, _ = self.budget(key)
            if (s > 0 and held == 0) or time.monotonic() > deadline:
                return s, held
            time.sleep(0.03)

    def budget(self, key, prefix="llmgw:"):
        """spend and held of a key's (only) budget hash, as floats."""
        names = self.cmd("KEYS", "%sb:%s:*" % (prefix, key))
        check(isinstance(names, list) and len(names) == 1, "budget hashes of %s: %r" % (key, names))
        h = self.cmd("HGETALL", names[0])
        d = dict(zip(h[0::2], h[1::2]))
        return float(d.get("spend", 0)), float(d.get("held", 0)), d


class Certs:
    """A test CA and a server certificate for 127.0.0.1 signed by it, and a second CA that
    signed nothing the store shows, made by the openssl tool in a temporary directory."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="llmgw-store-certs-")
        CTX.cleanups.append(lambda: shutil.rmtree(self.dir, ignore_errors=True))
        p = lambda n: os.path.join(self.dir, n)  # noqa: E731
        with open(p("ext.cnf"), "w") as f:
            f.write("[req]\ndistinguished_name = dn\n[dn]\n[ca]\nbasicConstraints = critical,CA:TRUE\n"
                    "keyUsage = critical,keyCertSign,cRLSign\n[leaf]\nbasicConstraints = CA:FALSE\n"
                    "keyUsage = critical,digitalSignature,keyEncipherment\nextendedKeyUsage = serverAuth\n"
                    "subjectAltName = DNS:127.0.0.1,IP:127.0.0.1\n")
        for ca in ("ca", "other"):
            self.ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", p(ca + ".key"), "-subj",
                      "/CN=llmgw store test " + ca, "-days", "30", "-sha256", "-config", p("ext.cnf"),
                      "-extensions", "ca", "-out", p(ca + ".pem"))
        self.ossl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", p("srv.key"), "-subj",
                  "/CN=127.0.0.1", "-config", p("ext.cnf"), "-out", p("srv.csr"))
        self.ossl("x509", "-req", "-in", p("srv.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
                  "-set_serial", "7", "-days", "30", "-sha256", "-extfile", p("ext.cnf"), "-extensions",
                  "leaf", "-out", p("srv.pem"))
        self.ca, self.other_ca, self.cert, self.key = p("ca.pem"), p("other.pem"), p("srv.pem"), p("srv.key")

    def ossl(self, *args):
        r = subprocess.run([shutil.which("openssl") or "openssl"] + list(args), capture_output=True,
                           timeout=60, stdin=subprocess.DEVNULL)
        check(r.returncode == 0, "openssl %s: %s" % (args[0], r.stderr.decode(errors="replace")[-800:]))

    def context(self):
        import ssl
        ctx = ssl.create_default_context(cafile=self.ca)
        return ctx


# =======================================================================================
# the mock upstream and gateways

class Mock(H.MockProc):
    def __init__(self):
        super().__init__([PYTHON, MOCK_SCRIPT, "--port", "0"], "llmgw-store-mock-", "mock upstream")


def mock():
    global MOCK
    if MOCK is None:
        MOCK = Mock()
        H.CTX.mock_mark = 0
    check(MOCK.alive(), "the mock upstream died: %s" % read_file(MOCK.stderr_path)[-2000:])
    return MOCK


class Gateway(H.KeyClient, H.GatewayBase):
    prefix = "llmgw-store-"
    start_stderr_always = False
    poll_step = 0.03

    def __init__(self, store, gateway="", body=""):
        super().__init__(register=False)
        self.store, self.gateway, self.body = store, gateway, body
        self.write(self.config_text())
        H.CTX.gateways.append(self)

    def config_text(self):
        mp = mock().port
        return ("[gateway]\nlisten = 127.0.0.1:%d\naccess_log = %s\nadmin_key = %s\nmetrics = public\n"
                "header_timeout = 2s\nidle_timeout = 5s\nconnect_timeout = 1s\nfirst_byte_timeout = 5s\n"
                "log_level = info\n%s\n\n[store]\n%s\n\n[provider.mk]\ntype = mock\n\n"
                "[provider.up]\ntype = openai\nbase_url = http://127.0.0.1:%d/v1\napi_key = up-secret\n\n%s\n"
                % (self.port, self.access_log, ADMIN, self.gateway.strip(), self.store.strip(), mp,
                   self.body.strip()))

    def health(self):
        return request(self.port, "GET", "/health", timeout=1).status

    def metric(self, name):
        r = request(self.port, "GET", "/metrics", timeout=3)
        expect_status(r, 200, "GET /metrics")
        m = re.search(r"^%s (\S+)$" % re.escape(name), r.text, re.M)
        check(m, "/metrics has no %s:\n%s" % (name, r.text[-1500:]))
        return float(m.group(1))

    def wait_metric(self, name, want, wait=6):
        deadline = time.monotonic() + wait * TOL
        while True:
            got = self.metric(name)
            if got == want:
                return
            if time.monotonic() > deadline:
                raise Fail("%s: expected %r, got %r" % (name, want, got))
            time.sleep(0.1)

    def outage_lines(self):
        return [ln for ln in self.stderr().splitlines() if "retrying, and saying so again" in ln]


def store_url(rd, extra=""):
    return "url = redis://127.0.0.1:%d\n%s" % (rd.port, extra)


SMALL = """
[model.m]
target = mk mock-1 in=10 out=20

[model.slow]
target = up slow-stream#st in=1000 out=2000

[key.b]
secret = sk-b
budget = %s

[key.free]
secret = sk-free
"""


def chat(g, key, model="m", content="Hello", timeout=15, **kw):
    return g.post("/v1/chat/completions", chat_body(model, content, **kw), key=key, timeout=timeout)


# =======================================================================================
# tests

def test_shared_budget_three_instances():
    """Three instances (one with workers = 2) and 36 concurrent clients against one small
    budget: the store admits only what fits fleet-wide; the sum charged, read from the store,
    from the instances' /v1/key and from the answers, agree and stay within the budget, every
    other answer is a 402 that names the key, the budget, the fleet-wide spend and the reset."""
    rd = Redis()
    budget = 0.6
    gws = [Gateway(store_url(rd, "instance = gw%d" % i), "workers = 2" if i == 1 else "",
                   SMALL % ("%g/day" % budget)).start() for i in range(3)]
    body = json.dumps(chat_body("slow", "shared budget", max_tokens=10)).encode()
    res = reservation(body, 1000, 2000, 10)
    lock = threading.Lock()
    oks, refusals, errors = [], [], []
    stop_at = time.monotonic() + 15 * TOL

    def client(n):
        g = gws[n % 3]
        while time.monotonic() < stop_at:
            try:
                r = g.post("/v1/chat/completions", body, key="sk-b", timeout=15)
            except OSError as e:
                with lock:
                    errors.append(repr(e))
                return
            with lock:
                if r.status == 200:
                    oks.append(r.json()["usage"]["cost"])
                elif r.status == 402:
                    refusals.append(r.json()["error"]["message"])
                else:
                    errors.append("status %d: %s" % (r.status, snip(r.body, 200)))
                    return
            if r.status == 402:
                m = re.search(r": ([0-9.]+) USD spent this period across all instances, ([0-9.]+) USD held",
                              r.text)
                if m and float(m.group(2)) == 0 and float(m.group(1)) + res > budget:
                    return      # nothing in flight anywhere and the rest does not fit: exhausted
                time.sleep(0.05)
    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(36)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.1, stop_at + 20 * TOL - time.monotonic()))
    check(not any(t.is_alive() for t in threads), "clients did not finish")
    check(not errors, "unexpected answers: %r" % errors[:5])
    check(oks and refusals, "expected some 200s and some 402s: %d and %d" % (len(oks), len(refusals)))
    spent = sum(oks)
    check(spent <= budget + 1e-9, "charged %.6f USD in all, over the budget %g" % (spent, budget))
    check(spent + res > budget, "the budget was not used up: %.6f spent, %.6f more would fit" % (spent, res))
    for m in refusals:
        for part in ("'b'", "0.6 USD/day", "across all instances", "resets at"):
            check(part in m, "the 402 lacks %r: %s" % (part, m))
    # the store: every settle arrived, nothing held
    deadline = time.monotonic() + 5 * TOL
    while True:
        s, held, _ = rd.budget("b")
        if held == 0 and abs(s - spent) < 1e-9 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    H.near_usd(s, spent, "the store's spend", rel=1e-9, abs_=1e-9)
    eq(held, 0.0, "held in the store after the load")
    # /v1/key on every instance says the fleet-wide spend; each instance's own books add up to it
    infos = [g.key_info("sk-b") for g in gws]
    for i, info in enumerate(infos):
        H.near_usd(info.get("usage") or 0, spent, "gw%d's /v1/key usage (fleet-wide)" % i, rel=1e-9, abs_=1e-9)
        eq(info["fleet"]["instances"], 3, "gw%d's /v1/key fleet instances" % i)
    total = sum(info["fleet"]["this_instance_usage"] for info in infos)
    H.near_usd(total, spent, "the sum of the instances' own usage", rel=1e-9, abs_=1e-9)
    # more from any instance: refused with the fleet-wide figure
    for g in gws:
        r = g.post("/v1/chat/completions", body, key="sk-b")
        expect_status(r, 402, "after the budget is used up")
    eq(rd.cmd("ZCARD", "llmgw:insts"), 3, "instances registered")
    for g in gws:
        g.wait_metric("llmgw_store_instances", 3)
        eq(g.metric("llmgw_store_up"), 1.0, "llmgw_store_up")


test_shared_budget_three_instances.limit = 90


def test_outage_closed_and_recovery():
    """on_error = closed: a store that stops answering gives 503s within the timeout (never a
    hang), a dead one at once; keys without budgets keep working; the outage is logged once
    with a count; requests work again when the store is back."""
    rd = Redis()
    g = Gateway(store_url(rd, "timeout = 400ms\non_error = closed"), "", SMALL % "5/day").start()
    expect_status(chat(g, "sk-b"), 200, "with the store up")
    rd.kill(signal.SIGSTOP)         # the store hangs: nothing answers
    try:
        t0 = time.monotonic()
        r = chat(g, "sk-b")
        el = time.monotonic() - t0
        expect_status(r, 503, "the store hangs")
        check(el < 0.4 + 0.6 * TOL, "a 503 after %.2f s: past the 400 ms timeout" % el)
        m = r.json()["error"]["message"]
        check("state store" in m and "timeout" in m and "'b'" in m and "closed" in m, "503 message: %s" % m)
        expect_status(chat(g, "sk-free"), 200, "a key without a budget while the store hangs")
    finally:
        rd.kill(signal.SIGCONT)
    rd.kill()                        # dead: refused at once
    got = []
    t0 = time.monotonic()
    for _ in range(20):
        got.append(chat(g, "sk-b").status)
    el = time.monotonic() - t0
    eq(set(got), {503}, "statuses with the store dead")
    check(el < 2 * TOL, "20 requests took %.2f s with the store dead" % el)
    expect_status(chat(g, "sk-free"), 200, "a key without a budget with the store dead")
    check(1 <= len(g.outage_lines()) <= 2, "the outage is logged once (or twice: hang, then death): %r"
          % g.outage_lines())
    eq(g.metric("llmgw_store_up"), 0.0, "llmgw_store_up while it is dead")
    rd.start()                       # the same port, empty
    deadline = time.monotonic() + 6 * TOL
    while chat(g, "sk-b").status != 200:
        check(time.monotonic() < deadline, "no recovery within 6 s of the store's return")
        time.sleep(0.1)
    check(re.search(r"is back after \d+ ms; \d+ calls failed meanwhile", g.stderr()),
          "the return is logged with a count: %s" % g.stderr()[-1500:])
    g.wait_metric("llmgw_store_up", 1)
    s, held = rd.settled("b")
    check(s > 0 and held == 0, "the request after the return is charged in the store: %r" % ((s, held),))


test_outage_closed_and_recovery.limit = 60


def test_outage_local_keeps_serving():
    """on_error = local: with the store gone, this instance's own books decide: keys with a
    budget keep getting answers (and the local budget still refuses what does not fit)."""
    rd = Redis()
    g = Gateway(store_url(rd, "timeout = 300ms\non_error = local"), "", SMALL % "0.002/day").start()
    expect_status(chat(g, "sk-b", max_tokens=20), 200, "with the store up")
    rd.kill()
    got = [chat(g, "sk-b", max_tokens=20).status for _ in range(6)]
    check(got[0] == 200, "on_error = local serves with the store dead: %r" % got)
    check(set(got) <= {200, 402} and 402 in got, "the local budget still holds: %r" % got)
    eq(len(g.outage_lines()), 1, "the outage is logged once")


def test_noscript_after_script_flush():
    """SCRIPT FLUSH empties the store's script cache: the next EVALSHA gets NOSCRIPT, llmgw loads
    the script and sends the call again, and the request is served and charged."""
    rd = Redis()
    g = Gateway(store_url(rd), "", SMALL % "5/day").start()
    expect_status(chat(g, "sk-b"), 200, "first")
    s1, _ = rd.settled("b")
    eq(rd.cmd("SCRIPT", "FLUSH"), "OK", "SCRIPT FLUSH")
    for i in range(3):
        expect_status(chat(g, "sk-b"), 200, "after SCRIPT FLUSH (%d)" % i)
    deadline = time.monotonic() + 3 * TOL
    while True:
        s2, held, _ = rd.budget("b")
        if (abs(s2 - 4 * s1) < 1e-12 and held == 0) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    H.near_usd(s2, 4 * s1, "spend after four requests")
    eq(held, 0.0, "held")


def test_auth_and_db():
    """requirepass: the password in the url (AUTH password) or with a user (AUTH user password,
    an ACL user); /db selects the database; a wrong password is a 503 that says so."""
    rd = Redis(password="s3cr3t-pw")
    eq(rd.cmd("ACL", "SETUSER", "gwuser", "on", ">u-pass", "~*", "+@all"), "OK", "ACL SETUSER")
    g = Gateway("url = redis://:s3cr3t-pw@127.0.0.1:%d/3" % rd.port, "", SMALL % "5/day").start()
    expect_status(chat(g, "sk-b"), 200, "AUTH password")
    with socket.create_connection(("127.0.0.1", rd.port), timeout=3) as s:
        f = s.makefile("rwb")
        resp_cmd(f, "AUTH", "s3cr3t-pw")
        resp_cmd(f, "SELECT", "3")
        check(resp_cmd(f, "KEYS", "llmgw:b:b:*"), "the budget hash is in database 3")
    g2 = Gateway("url = redis://gwuser:u-pass@127.0.0.1:%d\nprefix = other:" % rd.port, "",
                 SMALL % "5/day").start()
    expect_status(chat(g2, "sk-b"), 200, "AUTH user password")
    check(rd.cmd("KEYS", "other:b:b:*"), "the budget hash is under prefix other:")
    g3 = Gateway("url = redis://:wrong@127.0.0.1:%d" % rd.port, "", SMALL % "5/day").start()
    r = chat(g3, "sk-b")
    expect_status(r, 503, "a wrong password")
    m = r.json()["error"]["message"]
    check("WRONGPASS" in m or "invalid" in m, "the 503 says why: %s" % m)
    check("wrong" not in m.replace("WRONGPASS", ""), "the password is not in the message: %s" % m)
    expect_status(chat(g3, "sk-free"), 200, "a key without a budget")


def test_store_on_and_off_by_reload():
    """[store] added by a reload (SIGHUP): budgets go to the store; removed by another: the
    in-process store decides again and the connection is closed; neither is an outage."""
    rd = Redis()
    g = Gateway(store_url(rd), "", SMALL % "5/day")
    with_store = g.config_text()
    g.write(with_store.replace("[store]\n" + store_url(rd).strip() + "\n", ""))
    g.start()
    expect_status(chat(g, "sk-b"), 200, "without a store")
    eq(rd.cmd("KEYS", "llmgw:b:*"), [], "nothing in the store without [store]")
    g.write(with_store)
    g.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5 * TOL
    while not rd.cmd("KEYS", "llmgw:b:*"):
        check(time.monotonic() < deadline, "no budget hash in the store after the reload")
        expect_status(chat(g, "sk-b"), 200, "after the reload that adds [store]")
        time.sleep(0.1)
    s1, _ = rd.settled("b")
    g.write(with_store.replace("[store]\n" + store_url(rd).strip() + "\n", ""))
    g.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5 * TOL
    while True:    # the connection goes once the reload is taken up
        clients = rd.cmd("CLIENT", "LIST")
        if clients.count("\n") <= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    eq(clients.count("\n"), 1, "connections to the store after removing [store] (only ours): %s" % clients)
    for _ in range(3):
        expect_status(chat(g, "sk-b"), 200, "after the reload that removes [store]")
    s2, _ = rd.settled("b")
    eq(s2, s1, "the store's spend after [store] is gone")
    eq(g.outage_lines(), [], "a store configured away is not an outage")


def test_rediss():
    """url = rediss://: TLS to the store through BearSSL, verified with the gateway's ca_file and
    the host name; two instances share a budget over it. With a CA that did not sign the
    store's certificate, the store is down: on_error = closed answers 503 naming the TLS
    verification, keys without budgets keep working, nothing crashes."""
    certs = Certs()
    rd = Redis(tls=certs)
    url = "url = rediss://127.0.0.1:%d\ntimeout = 1s\n" % rd.port
    gws = [Gateway(url + "instance = t%d" % i, "ca_file = %s" % certs.ca, SMALL % "0.002/day").start()
           for i in range(2)]
    got = []
    for i in range(8):
        got.append(chat(gws[i % 2], "sk-b", max_tokens=20).status)
        if got[-1] == 200:
            rd.settled("b")
    check(got[0] == 200 and 402 in got and set(got) <= {200, 402}, "statuses over rediss://: %r" % got)
    s, held = rd.settled("b")
    total = sum(own_usage(g, "sk-b") for g in gws)
    H.near_usd(s, total, "the store's spend against both instances' usage", rel=1e-9, abs_=1e-9)
    check(s <= 0.002 + 1e-12, "spend %.6f over the budget" % s)
    bad = Gateway(url + "on_error = closed", "ca_file = %s" % certs.other_ca, SMALL % "5/day").start()
    r = chat(bad, "sk-b")
    expect_status(r, 503, "a store whose certificate the CA did not sign")
    m = r.json()["error"]["message"]
    check("TLS" in m and "not trusted" in m and "127.0.0.1" in m, "the 503 names the TLS check: %s" % m)
    expect_status(chat(bad, "sk-free"), 200, "a key without a budget with an untrusted store")
    check(bad.alive(), "the gateway with the wrong CA is running")


def own_usage(g, secret):
    """This instance's own spend: /v1/key's usage is fleet-wide with a store, its own part
    is fleet.this_instance_usage."""
    info = g.key_info(secret)
    fleet = info.get("fleet")
    return (fleet.get("this_instance_usage") if fleet else info.get("usage")) or 0


def _ledger_sum(state_dir, key):
    """The charges of key in a ledger: its c1 records and its s1 snapshot of the period."""
    tot = 0.0
    with open(os.path.join(state_dir, "ledger")) as f:
        for ln in f:
            p = ln.split()
            if p and p[0] == "c1" and p[2] == key:
                tot += float(p[3])
            elif p and p[0] == "s1" and p[1] == key:
                tot += float(p[4])
    return tot


def _wait_spend(rd, want, what, wait=8, held0=True):
    deadline = time.monotonic() + wait * TOL
    while True:
        try:
            s, held, _ = rd.budget("b")
        except Fail:
            s, held = -1.0, -1.0
        if abs(s - want) < 1e-9 and (held == 0 or not held0):
            return s
        if time.monotonic() > deadline:
            raise Fail("%s: the store's spend is %r (held %r), expected %.6f" % (what, s, held, want))
        time.sleep(0.05)


def test_store_restarted_empty():
    """The store loses its data (killed, started again with nothing; then FLUSHALL while the
    instances stay connected): each instance finds the epoch gone, joins the new one and adds back its own charges of the current period from its
    books (state_dir), once; the fleet-wide spend is the sum of both ledgers again, and the
    budget refuses exactly where it would have without the loss."""
    rd = Redis()
    budget = 0.004
    dirs = [tempfile.mkdtemp(prefix="llmgw-store-state-") for _ in range(2)]
    for d in dirs:
        CTX.cleanups.append(lambda d=d: shutil.rmtree(d, ignore_errors=True))
    gws = [Gateway(store_url(rd, "instance = e%d" % i), "state_dir = %s" % dirs[i],
                   SMALL % ("%g/day" % budget)).start() for i in range(2)]
    body = json.dumps(chat_body("m", "Hello", max_tokens=20)).encode()
    res = reservation(body, 10, 20, 20)
    costs = []
    for i in range(7):
        r = gws[i % 2].post("/v1/chat/completions", body, key="sk-b", timeout=15)
        expect_status(r, 200, "before the loss (%d)" % i)
        costs.append(r.json()["usage"]["cost"])
        _wait_spend(rd, sum(costs), "settled")
    spent = sum(costs)
    epoch = rd.cmd("HGET", "llmgw:epoch", "id")
    check(epoch, "the store has an epoch")
    rd.kill()
    rd.start()                       # empty: no persistence
    _wait_spend(rd, spent, "after the store came back empty")
    check(rd.cmd("HGET", "llmgw:epoch", "id") not in (None, epoch), "a new epoch")
    eq(sorted(k for k in rd.cmd("HKEYS", "llmgw:epoch") if k.startswith("i:")), ["i:e0", "i:e1"],
       "both instances joined the new epoch")
    ledgers = sum(_ledger_sum(d, "b") for d in dirs)
    H.near_usd(ledgers, spent, "the sum of both ledgers", rel=1e-9, abs_=1e-9)
    # refilled once: more joins (every second) and a reconnect add nothing
    time.sleep(2.2)
    eq(rd.cmd("CLIENT", "KILL", "TYPE", "normal") >= 1, True, "connections dropped")
    time.sleep(1.5)
    _wait_spend(rd, spent, "after more joins and a reconnect")
    # flushed while connected: found by the next join (each second), refilled once more
    eq(rd.cmd("FLUSHALL"), "OK", "FLUSHALL")
    _wait_spend(rd, spent, "after FLUSHALL")
    time.sleep(1.5)
    _wait_spend(rd, spent, "a while after FLUSHALL")
    # the budget refuses where it would have: spend + held + reservation over the budget
    want, s = 0, spent
    while s + res <= budget + 1e-12:
        s += costs[0]
        want += 1
    got = 0
    for i in range(want + 3):
        r = gws[i % 2].post("/v1/chat/completions", body, key="sk-b", timeout=15)
        if r.status == 402:
            break
        expect_status(r, 200, "after the refill (%d)" % i)
        got += 1
        _wait_spend(rd, spent + got * costs[0], "settled after the refill")
    eq(got, want, "requests admitted after the refill before the 402")
    total = sum(own_usage(g, "sk-b") for g in gws)
    check(total <= budget + 1e-12, "charged %.6f in all, over the budget" % total)
    out = "".join(g.stderr() for g in gws)
    check("the store lost its data" in out and "added back" in out, "the refill is logged: %s" % out[-1500:])


test_store_restarted_empty.limit = 60


def test_outage_local_share_and_reconcile():
    """on_error = local: while the store does not answer, each of two instances spends at most
    its share of what was left when it was last seen ((budget - spent) / 2); when it answers
    again the charges made meanwhile are added to it, once: its spend is the sum of
    everything charged."""
    rd = Redis()
    budget = 0.004
    gws = [Gateway(store_url(rd, "instance = l%d\ntimeout = 300ms\non_error = local" % i), "",
                   SMALL % ("%g/day" % budget)).start() for i in range(2)]
    body = json.dumps(chat_body("m", "Hello", max_tokens=20)).encode()
    before = 0.0
    for g in gws:
        r = g.post("/v1/chat/completions", body, key="sk-b", timeout=15)
        expect_status(r, 200, "with the store up")
        before += r.json()["usage"]["cost"]
    _wait_spend(rd, before, "settled")
    for g in gws:
        g.wait_metric("llmgw_store_instances", 2)
    time.sleep(1.3)                  # a join (each second) brings the fleet-wide spend
    share = (budget - before) / 2
    rd.kill(signal.SIGSTOP)          # the store stops answering
    during = []
    try:
        for g in gws:
            mine = 0.0
            statuses = []
            for _ in range(8):
                r = g.post("/v1/chat/completions", body, key="sk-b", timeout=15)
                statuses.append(r.status)
                if r.status == 200:
                    mine += r.json()["usage"]["cost"]
                elif r.status == 402:
                    check("share" in r.text, "the 402 names the share: %s" % r.text)
            check(statuses[0] == 200 and 402 in statuses and set(statuses) <= {200, 402},
                  "statuses during the outage: %r" % statuses)
            check(mine <= share + 1e-12, "one instance spent %.6f during the outage, over its share %.6f"
                  % (mine, share))
            during.append(mine)
    finally:
        rd.kill(signal.SIGCONT)
    total = before + sum(during)
    check(total <= budget + 1e-12, "charged %.6f in all, over the budget" % total)
    # admits sent before the timeout run when the store wakes up, on connections the gateway
    # gave up: their reservations are released once it answers (held back to 0)
    _wait_spend(rd, total, "after the store answers again", wait=10)
    time.sleep(2.2)                  # more joins add nothing more
    _wait_spend(rd, total, "a while after")
    mine_all = sum(own_usage(g, "sk-b") for g in gws)
    H.near_usd(mine_all, total, "the instances' own books", rel=1e-9, abs_=1e-9)


test_outage_local_share_and_reconcile.limit = 60


def test_config():
    """[store] in the configuration: errors name the line; without [store] nothing mentions a
    store; --keys lists the keys."""
    d = tempfile.mkdtemp(prefix="llmgw-store-cfg-")
    CTX.cleanups.append(lambda: shutil.rmtree(d, ignore_errors=True))
    base = "[gateway]\nlisten = 127.0.0.1:%d\n[provider.mk]\ntype = mock\n" % free_port()
    cases = [
        ("[store]\nurl = rediss://:6380\n", "no host name"),
        ("[store]\nprefix = x:\n", "needs url"),
        ("[store]\nurl = redis://h:99999\n", "bad port"),
        ("[store]\nurl = http://h\n", "must be redis[s]://"),
        ("[store]\nurl = redis://h/x\n", "database"),
        ("[store]\nurl = redis://h\nfoo = 1\n", "unknown key 'foo' in [store]"),
        ("[store]\nurl = redis://h\non_error = open\n", "on_error"),
        ("[store]\nurl = redis://:pw-secret@h:1:2\n", "bad port"),
        ("[store]\nurl = redis://h\n[store]\nurl = redis://h\n", "given twice"),
    ]
    for i, (text, want) in enumerate(cases):
        p = os.path.join(d, "c%d.ini" % i)
        with open(p, "w") as f:
            f.write(base + text)
        r = subprocess.run([H.GW, "-t", "-c", p], capture_output=True, text=True, timeout=10)
        out = r.stdout + r.stderr
        check(r.returncode != 0 and want in out, "%r: expected an error with %r, got %d: %s"
              % (text, want, r.returncode, out))
        check("pw-secret" not in out, "a password in an error message: %s" % out)
        check(re.search(r"c%d\.ini:\d+:" % i, out), "the error names file and line: %s" % out)
    p = os.path.join(d, "ok.ini")
    with open(p, "w") as f:
        f.write(base + "[store]\nurl = unix:/tmp/redis.sock\ntimeout = 250ms\non_error = local\n")
    r = subprocess.run([H.GW, "-t", "-c", p], capture_output=True, text=True, timeout=10)
    eq(r.returncode, 0, "a good [store]: %s" % (r.stdout + r.stderr))
    keys = subprocess.run([H.GW, "--keys"], capture_output=True, text=True, timeout=10).stdout
    for k in ("url", "prefix", "timeout", "on_error", "instance"):
        check("| [store] | `%s` |" % k in keys, "--keys lists [store] %s" % k)


def test_unix_socket():
    """url = unix:/path reaches a store on its unix socket."""
    check(REDIS, "redis-server is not installed")
    d = tempfile.mkdtemp(prefix="llmgw-store-unix-")
    sock = os.path.join(d, "redis.sock")
    proc = subprocess.Popen([REDIS, "--port", "0", "--unixsocket", sock, "--dir", d, "--save", "",
                             "--appendonly", "no", "--logfile", os.path.join(d, "log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop():
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
        shutil.rmtree(d, ignore_errors=True)
    CTX.cleanups.append(stop)
    deadline = time.monotonic() + 10
    while not os.path.exists(sock):
        check(time.monotonic() < deadline and proc.poll() is None, "redis-server made no unix socket")
        time.sleep(0.05)
    g = Gateway("url = unix:%s" % sock, "", SMALL % "5/day").start()
    expect_status(chat(g, "sk-b"), 200, "through the unix socket")
    deadline = time.monotonic() + 3 * TOL
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock)
        f = s.makefile("rwb")
        while True:    # the settle follows the answer
            names = resp_cmd(f, "KEYS", "llmgw:b:b:*")
            h = dict(zip(*[iter(resp_cmd(f, "HGETALL", names[0]))] * 2)) if names else {}
            if float(h.get("spend", 0)) > 0 or time.monotonic() > deadline:
                break
            time.sleep(0.03)
        check(float(h.get("spend", 0)) > 0, "the spend is in the store: %r %r" % (names, h))


LIMITS = """
[model.m]
target = mk mock-1 in=10 out=20

[model.drip]
target = up drip-2000#hold in=1 out=2

[key.r]
secret = sk-r
rpm = 10

[key.c]
secret = sk-c
max_concurrency = 2

[key.t]
secret = sk-t
tpm = 1
"""


def test_rpm_across_instances():
    """rpm = 10 across three instances: 10 requests are answered in the minute, not 30; the
    rest are 429s with a Retry-After and a message that says the count is fleet-wide."""
    rd = Redis()
    gws = [Gateway(store_url(rd, "instance = gw%d" % i), "", LIMITS).start() for i in range(3)]
    got = []
    for n in range(30):
        r = chat(gws[n % 3], "sk-r")
        got.append(r.status)
        if r.status == 429:
            ra = r.h("retry-after")
            check(ra and 1 <= int(ra) <= 61, "429 Retry-After: %r" % ra)
            m = r.json()["error"]["message"]
            check("10 requests per minute" in m and "across all instances" in m, "429 message: %s" % m)
    eq(got.count(200), 10, "answered with rpm = 10 over three instances: %r" % got)
    eq(got.count(429), 20, "refused: %r" % got)
    eq(got[:10], [200] * 10, "the first ten are answered")
    info = gws[1].key_info("sk-r")
    eq(info["remaining"]["requests"], 0, "fleet-wide requests remaining in /v1/key")
    eq(info["fleet"]["requests_last_minute"], 10, "fleet requests in the last minute")


def test_tpm_across_instances():
    """tpm: the tokens one instance's request used count on the others (5 s buckets in the
    store); the 429 says so and when there is room; /v1/key shows the minute's tokens."""
    rd = Redis()
    a, b = [Gateway(store_url(rd, "instance = gw%d" % i), "", LIMITS).start() for i in range(2)]
    r = chat(a, "sk-t")
    expect_status(r, 200, "the first request (no tokens used yet)")
    used = r.json()["usage"]["total_tokens"]
    deadline = time.monotonic() + 3 * TOL
    while not rd.cmd("HGETALL", "llmgw:tpm:t"):     # the settle follows the answer
        check(time.monotonic() < deadline, "no tokens in the store's tpm buckets")
        time.sleep(0.03)
    h = rd.cmd("HGETALL", "llmgw:tpm:t")
    eq(sum(int(x) for x in h[1::2]), used, "tokens in the buckets")
    r = chat(b, "sk-t")
    expect_status(r, 429, "the other instance, over tpm = 1")
    m = r.json()["error"]["message"]
    check("tokens per minute" in m and "across all instances" in m, "429 message: %s" % m)
    ra = int(r.h("retry-after") or 0)
    check(1 <= ra <= 61, "Retry-After: %r" % ra)
    info = b.key_info("sk-t")
    eq(info["fleet"]["tokens_last_minute"], used, "/v1/key tokens in the last minute")
    eq(info["remaining"]["tokens"], 0, "/v1/key tokens remaining")


def _hold(g, key, model="drip"):
    """A streaming request whose answer has begun (head read): its socket, still open."""
    body = json.dumps(chat_body(model, "hold " + str(time.monotonic()), stream=True)).encode()
    s = socket.create_connection(("127.0.0.1", g.port), timeout=10 * TOL)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer %s\r\n"
              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
              % (key.encode(), len(body), body))
    head = b""
    while b"\r\n\r\n" not in head:
        d = s.recv(4096)
        check(d, "the gateway closed before the head: %r" % head)
        head += d
    check(head.startswith(b"HTTP/1.1 200"), "held request: %r" % head[:200])
    CTX.cleanups.append(s.close)
    return s


def _wait_status(g, key, want, wait):
    deadline = time.monotonic() + wait * TOL
    while True:
        r = chat(g, key)
        if r.status == want:
            return r
        check(time.monotonic() < deadline, "no %d within %.1f s (last %d: %s)"
              % (want, wait, r.status, snip(r.body, 200)))
        time.sleep(0.1)


def _wait_leases(rd, n, wait=3):
    """The store holds n leases of key c (a release follows its answer: settle)."""
    deadline = time.monotonic() + wait * TOL
    while rd.cmd("ZCARD", "llmgw:conc:c") != n:
        check(time.monotonic() < deadline, "leases in the store: %r, expected %d" % (rd.cmd("ZCARD", "llmgw:conc:c"), n))
        time.sleep(0.03)


def test_concurrency_leases():
    """max_concurrency = 2 across three instances: a third request anywhere is a 429; a client
    that goes away gives its slot back at once; a kill -9'd instance's slot comes back after
    the lease (2 s), while the leases of requests still running are renewed and hold (by
    each loop of an instance with workers = 2)."""
    rd = Redis()
    gws = [Gateway(store_url(rd, "instance = gw%d\nlease = 2s" % i), "workers = 2" if i == 0 else "",
                   LIMITS).start() for i in range(3)]
    a, b, c = gws
    s1 = _hold(a, "sk-c")
    _hold(b, "sk-c")
    r = chat(c, "sk-c")
    expect_status(r, 429, "a third request while two are in flight")
    check("max_concurrency" in r.json()["error"]["message"] and r.h("retry-after"), "429: %s" % r.text)
    eq(rd.cmd("ZCARD", "llmgw:conc:c"), 2, "leases in the store")
    s1.close()                      # the client goes away: its slot is released at settle
    _wait_status(c, "sk-c", 200, 3)
    _wait_leases(rd, 1)
    _hold(a, "sk-c")                # a's and b's requests in flight now
    expect_status(chat(c, "sk-c"), 429, "two in flight again")
    b.signal(signal.SIGKILL)
    b.proc.wait(5)
    t0 = time.monotonic()
    expect_status(chat(c, "sk-c"), 429, "right after b was killed: its lease still holds")
    _wait_status(c, "sk-c", 200, 5)
    el = time.monotonic() - t0
    check(el >= 0.5, "the dead instance's lease came back after %.2f s: sooner than it can expire" % el)
    time.sleep(2.5)                 # past a lease: a's is renewed, so it still counts
    _wait_leases(rd, 1)
    _hold(c, "sk-c")
    expect_status(chat(a, "sk-c"), 429, "a's renewed lease and c's hold both slots")
    eq(rd.cmd("ZCARD", "llmgw:conc:c"), 2, "leases in the store at the end")


test_concurrency_leases.limit = 60

HEALTH = """
[model.h]
target = up switch#%s in=1 out=2
target = mk mock-1 in=1 out=2

[model.aff]
strategy = weighted
affinity = 10m
target = p1 mock-1
target = p2 mock-1
target = p3 mock-1
target = p4 mock-1

[provider.p1]
type = mock
[provider.p2]
type = mock
[provider.p3]
type = mock
[provider.p4]
type = mock

[key.free]
secret = sk-free
"""


def _switch(tag, scenario):
    r = request(mock().port, "POST", "/_switch", body=json.dumps({tag: scenario}).encode(), timeout=3)
    expect_status(r, 200, "POST /_switch")


def test_breaker_shared():
    """A target that fails for one instance opens its breaker for all: the others skip it
    (one attempt, on the fallback) without trying it themselves."""
    rd = Redis()
    tag = "brk-%d" % os.getpid()
    gws = [Gateway(store_url(rd, "instance = gw%d" % i), "max_attempts = 2", HEALTH % tag).start()
           for i in range(2)]
    a, b = gws
    _switch(tag, "ok")
    for g in gws:                   # each knows the target (its health entry is made)
        r = chat(g, "sk-free", model="h")
        expect_status(r, 200, "warm-up")
        eq(r.h("x-llmgw-provider"), "up", "warm-up served by the first target")
    _switch(tag, "status-503")
    for _ in range(6):
        expect_status(chat(a, "sk-free", model="h"), 200, "a's request falls back")
    deadline = time.monotonic() + 5 * TOL
    while True:
        h = rd.cmd("HGETALL", "llmgw:h:up/switch#%s" % tag)
        d = dict(zip(h[0::2], h[1::2])) if h else {}
        if d.get("state") == "1" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    eq(d.get("state"), "1", "the breaker is open in the store: %r" % d)
    time.sleep(1.5 * TOL)           # b's health read (once a second)
    _switch(tag, "ok")              # would answer now: b must not even try it
    for i in range(3):
        r = chat(b, "sk-free", model="h")
        expect_status(r, 200, "b's request %d" % i)
        eq(r.h("x-llmgw-provider"), "mk", "b skips the target whose breaker a opened (%d)" % i)
        g = b.get("/v1/generation?id=" + r.h("x-request-id"), key="sk-free")
        expect_status(g, 200, "b's generation record")
        eq(g.json()["data"]["num_attempts"], 1, "b made one attempt (no try of the open target)")


test_breaker_shared.limit = 60


def test_affinity_across_instances():
    """A conversation served by one instance stays on its target on the others (the prompt ->
    target map is in the store)."""
    rd = Redis()
    gws = [Gateway(store_url(rd, "instance = gw%d" % i), "", HEALTH % "unused").start() for i in range(3)]
    for conv in range(4):
        msgs = [{"role": "system", "content": "You are %d-%d." % (conv, os.getpid())},
                {"role": "user", "content": "Hello there."}]
        first = None
        for i in range(9):
            body = chat_body("aff", "x")
            body["messages"] = msgs + [{"role": "user", "content": "turn %d" % i}]
            r = gws[i % 3].post("/v1/chat/completions", body, key="sk-free")
            expect_status(r, 200, "conversation %d request %d" % (conv, i))
            p = r.h("x-llmgw-provider")
            first = first or p
            eq(p, first, "conversation %d request %d (instance %d) stays on its target" % (conv, i, i % 3))
            time.sleep(0.05)        # remember() reaches the store after the answer


def test_generation_from_any_instance():
    """GET /v1/generation?id= of a request served by instance A answered by instance B (the
    record is in the store, for [store] records); another key gets a 404; so does an id
    nobody served."""
    rd = Redis()
    a, b = [Gateway(store_url(rd, "instance = gw%d\nrecords = 10m" % i), "", SMALL % "5/day").start()
            for i in range(2)]
    r = chat(a, "sk-b")
    expect_status(r, 200, "on a")
    rid = r.h("x-request-id")
    deadline = time.monotonic() + 3 * TOL
    while True:
        g = b.get("/v1/generation?id=" + rid, key="sk-b")
        if g.status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    expect_status(g, 200, "b answers for a's request")
    d = g.json()["data"]
    eq(d["id"], rid, "id")
    eq(d["provider"], "mk", "provider")
    ttl = rd.cmd("PTTL", "llmgw:g:" + rid)
    check(500000 < ttl <= 600000, "the record expires after records = 10m: PTTL %r" % ttl)
    expect_status(b.get("/v1/generation?id=" + rid, key="sk-free"), 404, "another key")
    expect_status(b.get("/v1/generation?id=gen-1234-abcdef01", key="sk-b"), 404, "an unknown id")


def main():
    def teardown():
        if MOCK is not None:
            MOCK.stop()
    return H.main(globals(), "llmgw shared-store tests", default_limit=40, shared_exit=False,
                  teardown=teardown)


if __name__ == "__main__":
    sys.exit(main())
