#!/usr/bin/env python3
"""llmgw TLS integration tests: HTTPS upstreams (chain and host name verification, SNI,
pooled keep-alive connections, session resumption), clear TLS failures, HTTPS listeners
(RSA, EC, certificate chain, bad clients), the CONNECT proxy, TLS config errors, and what
one TLS connection costs in memory.

    python3 tests/tls_test.py                     # all tests, against ./llmgw
    python3 tests/tls_test.py -k proxy            # only tests whose name contains "proxy"
    python3 tests/tls_test.py --gw build/llmgw-asan -v
    python3 tests/tls_test.py --list
    LLMGW_WRAP="valgrind --error-exitcode=99 -q" python3 tests/tls_test.py -k listener

Python 3 standard library only, plus the `openssl` command line tool (certificates) and
`curl` (a real HTTPS client). Everything talks to 127.0.0.1 / localhost; every wait is
bounded. All certificates are generated into a temp dir at start: a root CA, an
intermediate CA, RSA and EC server certificates for localhost, a chain (leaf + intermediate),
and the bad ones (signed by another CA, for other.example only, expired, not yet valid).
Prints "PASS name" / "FAIL name: reason" per test, "MEASURE ..." lines with the memory
figures, and ends with "N passed, N failed" (exit status 1 if any test failed).
"""
import json
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402  (the shared runner, assertions and process helpers)
from harness import (HERE, ROOT, PYTHON, WRAP, TOL, GW, VERBOSE, CTX, Fail, check, eq,  # noqa: E402,F401
                     snip, marker, on_cleanup, free_port, read_file, in_thread, join, limit)

MOCK_SCRIPT = os.path.join(HERE, "mockup.py")
CURL = shutil.which("curl") or "/usr/bin/curl"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
              "NO_PROXY", "no_proxy")

TEXT = "Hello from mock upstream"                      # what the mock's `ok` scenarios say
SLOW_TEXT = "".join("tick%d " % i for i in range(10))  # what `slow-stream` says
CERTS = None                          # the generated certificates (Certs)


# =======================================================================================
# assertions


def has_all(text, words):
    low = (text or "").lower()
    return all(w.lower() in low for w in words)


# =======================================================================================
# per-test context (one test runs at a time)


def clean_env(extra=None):
    """The environment for every child: no proxy variables unless a test sets them."""
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    env.update(extra or {})
    return env


# =======================================================================================
# certificates

EXT_CNF = """
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[root]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[inter]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[leaf_ec]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[leaf_other]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:other.example
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""

# `openssl ca` is the portable way to choose notBefore/notAfter (x509 -not_before needs 3.4)
CA_CNF = """
[ca]
default_ca = dflt
[dflt]
database = index.txt
new_certs_dir = newcerts
serial = serial.txt
default_md = sha256
policy = pol
copy_extensions = none
unique_subject = no
email_in_dn = no
[pol]
commonName = supplied
"""


class Certs:
    """Every certificate and key the tests use, made with the openssl tool."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="llmgw-tls-certs-")
        t = time.monotonic()
        self._make()
        self.seconds = time.monotonic() - t

    def p(self, name):
        return os.path.join(self.dir, name)

    def ossl(self, *args):
        try:
            r = subprocess.run([OPENSSL] + list(args), capture_output=True, timeout=60,
                               cwd=self.dir, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise Fail("openssl %s: %s" % (" ".join(args), e))
        if r.returncode != 0:
            raise Fail("openssl %s failed (%d): %s" % (" ".join(args), r.returncode, snip(r.stderr, 2000)))
        return r.stdout

    def write(self, name, text):
        with open(self.p(name), "w") as f:
            f.write(text)
        return self.p(name)

    def cat(self, out, *names):
        with open(self.p(out), "w") as f:
            for n in names:
                with open(self.p(n)) as g:
                    f.write(g.read())
        return self.p(out)

    def rsa_key(self, name):
        self.ossl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", name)

    def csr(self, key, cn, out):
        self.ossl("req", "-new", "-key", key, "-subj", "/CN=" + cn, "-config", "ext.cnf", "-out", out)

    def sign(self, csr, ca, ca_key, ext, out, serial):
        self.ossl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-set_serial", str(serial),
                  "-days", "30", "-sha256", "-extfile", "ext.cnf", "-extensions", ext, "-out", out)

    def _make(self):
        self.write("ext.cnf", EXT_CNF)
        self.write("ca.cnf", CA_CNF)
        self.write("index.txt", "")
        self.write("serial.txt", "1000\n")
        os.mkdir(self.p("newcerts"))
        for k in ("root.key", "other-root.key", "inter.key", "leaf.key"):
            self.rsa_key(k)
        # the EC key in SEC1 form ("EC PRIVATE KEY"); the RSA keys are PKCS#8 ("PRIVATE KEY")
        self.ossl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ec.key")
        # the same RSA leaf key in the traditional PKCS#1 form ("RSA PRIVATE KEY")
        self.ossl("rsa", "-in", "leaf.key", "-traditional", "-out", "leaf-pkcs1.key")
        for key, cn, out in (("root.key", "llmgw test root CA", "root.pem"),
                             ("other-root.key", "llmgw other CA", "other-root.pem")):
            self.ossl("req", "-x509", "-new", "-key", key, "-subj", "/CN=" + cn, "-days", "30",
                      "-sha256", "-config", "ext.cnf", "-extensions", "root", "-out", out)
        self.csr("inter.key", "llmgw test intermediate CA", "inter.csr")
        self.sign("inter.csr", "root.pem", "root.key", "inter", "inter.pem", 2)
        self.csr("leaf.key", "localhost", "leaf.csr")
        self.csr("ec.key", "localhost", "ec.csr")
        self.csr("leaf.key", "other.example", "other.csr")
        self.sign("leaf.csr", "root.pem", "root.key", "leaf", "rsa.pem", 3)
        self.sign("ec.csr", "root.pem", "root.key", "leaf_ec", "ec.pem", 4)
        self.sign("leaf.csr", "inter.pem", "inter.key", "leaf", "chainleaf.pem", 5)
        self.sign("leaf.csr", "other-root.pem", "other-root.key", "leaf", "wrongca.pem", 6)
        self.sign("other.csr", "root.pem", "root.key", "leaf_other", "wrongname.pem", 7)
        for out, start, end in (("expired.pem", "20200101000000Z", "20210101000000Z"),
                                ("notyet.pem", "20990101000000Z", "21000101000000Z")):
            self.ossl("ca", "-batch", "-config", "ca.cnf", "-cert", "root.pem", "-keyfile", "root.key",
                      "-in", "leaf.csr", "-out", out, "-startdate", start, "-enddate", end,
                      "-extfile", "ext.cnf", "-extensions", "leaf", "-notext")
        self.cat("chain.pem", "chainleaf.pem", "inter.pem")
        self.root = self.p("root.pem")
        self.other_root = self.p("other-root.pem")
        self.leaf_key = self.p("leaf.key")
        self.leaf_key_pkcs1 = self.p("leaf-pkcs1.key")
        self.rsa = self.p("rsa.pem")
        self.ec = self.p("ec.pem")
        self.ec_key = self.p("ec.key")
        self.chain = self.p("chain.pem")
        self.wrongca = self.p("wrongca.pem")
        self.wrongname = self.p("wrongname.pem")
        self.expired = self.p("expired.pem")
        self.notyet = self.p("notyet.pem")
        self.not_pem = self.write("not-a-cert.pem", "this file holds no certificate\n")


# =======================================================================================
# HTTP(S) client

def client_context(ca=None, verify=True, max_version=None, min_version=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if min_version:
        ctx.minimum_version = min_version
    if verify:
        ctx.load_verify_locations(ca or CERTS.root)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if max_version:
        ctx.maximum_version = max_version
    return ctx


def sse_data(body):
    """The data of each complete SSE event of a body."""
    out = []
    text = body.decode("utf-8", "replace").replace("\r\n", "\n")
    for block in text.split("\n\n")[:-1]:
        data = []
        for line in block.split("\n"):
            if line.startswith("data:"):
                v = line[5:]
                data.append(v[1:] if v.startswith(" ") else v)
        if data:
            out.append("\n".join(data))
    return out


def sse_content(body):
    out = []
    for d in sse_data(body):
        try:
            j = json.loads(d)
        except ValueError:
            continue
        if isinstance(j, dict) and isinstance(j.get("choices"), list):
            for ch in j["choices"]:
                if isinstance(ch, dict) and isinstance(ch.get("delta"), dict):
                    c = ch["delta"].get("content")
                    if isinstance(c, str):
                        out.append(c)
    return "".join(out)


def Client(port, tls=False, ca=None, verify=True, host="localhost", timeout=10.0,
           max_version=None, sock=None, min_version=None):
    """One connection to a server, plain or TLS asking for `host` (a harness.Conn)."""
    ctx = client_context(ca, verify, max_version, min_version) if tls else None
    return H.Conn(port, timeout, sock=sock, tls=ctx, sni=host)


def build_request(method, path, body=None, headers=None, key="sk-test", host="localhost"):
    return H.build_request(None, method, path, body, headers, key, host=host)


def http(port, method, path, body=None, headers=None, key="sk-test", timeout=10, tls=False,
         ca=None, verify=True, host="localhost"):
    """One request on its own connection (Host: localhost; over TLS asking for `host`)."""
    return H.http_request(port, method, path, body, headers, key, timeout, host="localhost",
                          tls=client_context(ca, verify) if tls else None, sni=host)


def chat_body(model, stream=False, mk=None, content=None):
    b = {"model": model, "messages": [{"role": "user", "content": content or "Say hello. %s" % (mk or "")}]}
    if stream:
        b["stream"] = True
    return b


def expect_status(r, want, what):
    want = want if isinstance(want, (tuple, list, set)) else (want,)
    if r.status not in want:
        raise Fail("%s: expected status %s, got %d; headers %r; body %s" % (
            what, "/".join(map(str, want)), r.status, r.headers, snip(r.body)))


def error_message(r, want, what):
    expect_status(r, want, what)
    j = r.json()
    err = j.get("error") if isinstance(j, dict) else None
    check(isinstance(err, dict) and isinstance(err.get("message"), str) and err["message"].strip(),
          "%s: no error.message in %s" % (what, snip(r.body)))
    return err["message"]


def expect_chat(r, what, provider, text=TEXT, attempts=1):
    expect_status(r, 200, what)
    eq(r.h("x-llmgw-provider"), provider, "%s: x-llmgw-provider header" % what)
    if attempts is not None:
        eq(r.h("x-llmgw-attempts"), str(attempts), "%s: x-llmgw-attempts header" % what)
    j = r.json()
    try:
        content = j["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise Fail("%s: no choices[0].message.content in %s" % (what, snip(r.body)))
    if text is not None:
        eq(content, text, "%s: reply content" % what)
    return j


def expect_stream(r, what, text=TEXT, provider=None):
    expect_status(r, 200, what)
    ct = r.h("content-type", "")
    check(ct.startswith("text/event-stream"), "%s: Content-Type %r, expected text/event-stream" % (what, ct))
    data = sse_data(r.body)
    check(data and data[-1] == "[DONE]", "%s: stream does not end with data: [DONE]: %s"
          % (what, snip(r.body[-300:])))
    check(not any('"error"' in d for d in data), "%s: stream carries an error event: %s"
          % (what, snip(r.body)))
    if provider:
        eq(r.h("x-llmgw-provider"), provider, "%s: x-llmgw-provider header" % what)
    if text is not None:
        eq(sse_content(r.body), text, "%s: joined delta.content" % what)


# =======================================================================================
# processes: mock upstreams, in-process servers, gateways


class Mock(H.MockProc):
    """tests/mockup.py in its own process: plain, or HTTPS with a given certificate."""

    def __init__(self, name, cert=None, key=None, close=False):
        self.name = name
        self.tls = cert is not None
        args = [PYTHON, MOCK_SCRIPT, "--port", "0"]
        if cert:
            args += ["--tls", cert, key]
        if close:
            args.append("--close")
        super().__init__(args, "llmgw-tls-mock-", "mock %s" % name, env=clean_env())

    def _call(self, method, path):
        check(self.alive(), "mock %s died; its stderr: %s" % (self.name, read_file(self.stderr_path)[-2000:]))
        r = http(self.port, method, path, key=None, tls=self.tls, verify=False,
                 body=b"" if method == "POST" else None)
        expect_status(r, 200, "mock %s: %s %s" % (self.name, method, path))
        return r.json()

    def requests(self):
        return self._call("GET", "/_requests")

    def find(self, mk):
        return [r for r in self.requests() if mk in r["body"]]

    def close_idle(self):
        return self._call("POST", "/_close_idle").get("closed", 0)


MOCKS = {}


def mock(kind):
    """The mock upstreams, started on first use and shared by the whole run:
    plain (HTTP), good (RSA cert for localhost), close (the same, Connection: close after
    every response), ec (EC cert), chain (leaf + intermediate), and the bad ones."""
    m = MOCKS.get(kind)
    if m is not None:
        check(m.alive(), "mock %s died; its stderr: %s" % (kind, read_file(m.stderr_path)[-2000:]))
        return m
    C = CERTS
    spec = {"plain": (None, None, False),
            "good": (C.rsa, C.leaf_key, False),
            "close": (C.rsa, C.leaf_key, True),
            "ec": (C.ec, C.ec_key, False),
            "chain": (C.chain, C.leaf_key, False),
            "badca": (C.wrongca, C.leaf_key, False),
            "badname": (C.wrongname, C.leaf_key, False),
            "expired": (C.expired, C.leaf_key, False),
            "notyet": (C.notyet, C.leaf_key, False)}[kind]
    m = MOCKS[kind] = Mock(kind, *spec)
    return m


class FakeServer:
    """An in-process upstream whose TLS handshake always fails:
    tls13 - speaks TLS 1.3 only (llmgw's client speaks TLS 1.2), reset - reads the
    ClientHello and answers with a TCP RST, silent - reads the ClientHello and never
    answers."""

    def __init__(self, mode):
        self.mode = mode
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(64)
        self.port = self.ls.getsockname()[1]
        self.closed = False
        self.handshakes = 0
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(CERTS.rsa, CERTS.leaf_key)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                s, _ = self.ls.accept()
            except OSError:
                if self.closed:
                    return
                time.sleep(0.05)
                continue
            threading.Thread(target=self._one, args=(s,), daemon=True).start()

    def _one(self, s):
        try:
            if self.mode == "silent":    # take the ClientHello, never answer
                s.settimeout(1.0)
                while not self.closed:
                    try:
                        if not s.recv(65536):
                            return
                    except socket.timeout:
                        continue
                    except OSError:
                        return
                return
            if self.mode == "reset":     # take the ClientHello, then RST
                s.settimeout(5)
                try:
                    s.recv(65536)
                except OSError:
                    pass
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
                return
            s.settimeout(10)
            self.handshakes += 1
            try:
                ts = self.ctx.wrap_socket(s, server_side=True)
                ts.close()             # never reached with a TLS 1.2 client
            except (OSError, ssl.SSLError):
                pass
        finally:
            try:
                s.close()
            except OSError:
                pass

    def close(self):
        self.closed = True
        try:
            self.ls.close()
        except OSError:
            pass


FAKES = {}


def fake(mode):
    if mode not in FAKES:
        FAKES[mode] = FakeServer(mode)
    return FAKES[mode]


class Proxy:
    """A tiny threaded HTTP CONNECT proxy. Records every request head; mode "ok" relays
    to 127.0.0.1 (only localhost / 127.0.0.1 targets), "407" / "403" refuse, "silent"
    reads the request and never answers."""

    def __init__(self, mode="ok"):
        self.mode = mode
        self.lock = threading.Lock()
        self.seen = []            # {"line": request line, "headers": {lowercase: value}}
        self.socks = []
        self.closed = False
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(64)
        self.port = self.ls.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        on_cleanup(self.close)

    def lines(self):
        with self.lock:
            return [s["line"] for s in self.seen]

    def heads(self):
        with self.lock:
            return list(self.seen)

    def _track(self, s):
        with self.lock:
            self.socks.append(s)

    def _accept(self):
        while not self.closed:
            try:
                s, _ = self.ls.accept()
            except OSError:
                if self.closed:
                    return
                time.sleep(0.05)
                continue
            self._track(s)
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, c):
        try:
            c.settimeout(10)
            buf = b""
            while b"\r\n\r\n" not in buf:
                d = c.recv(4096)
                if not d or len(buf) > 65536:
                    c.close()
                    return
                buf += d
            head, rest = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            hdrs = {}
            for ln in lines[1:]:
                k, _, v = ln.partition(":")
                hdrs[k.strip().lower()] = v.strip()
            with self.lock:
                self.seen.append({"line": lines[0], "headers": hdrs})
            parts = lines[0].split(" ")
            if self.mode == "407":
                c.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                          b"Proxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n"
                          b"Connection: close\r\n\r\n")
                c.close()
                return
            if self.mode == "silent":
                while not self.closed:
                    try:
                        if not c.recv(65536):
                            break
                    except socket.timeout:
                        continue
                c.close()
                return
            if self.mode == "403" or len(parts) != 3 or parts[0] != "CONNECT":
                c.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                c.close()
                return
            host, _, port = parts[1].rpartition(":")
            if host not in ("localhost", "127.0.0.1") or not port.isdigit():
                c.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                c.close()
                return
            try:
                u = socket.create_connection(("127.0.0.1", int(port)), timeout=5)
            except OSError:
                c.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                c.close()
                return
            self._track(u)
            c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                u.sendall(rest)
            c.settimeout(None)
            u.settimeout(None)
            done = []

            def pump(src, dst):
                try:
                    while True:
                        d = src.recv(65536)
                        if not d:
                            break
                        dst.sendall(d)
                except OSError:
                    pass
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                done.append(1)
                if len(done) == 2:
                    c.close()
                    u.close()
            threading.Thread(target=pump, args=(c, u), daemon=True).start()
            pump(u, c)
        except OSError:
            try:
                c.close()
            except OSError:
                pass

    def close(self):
        self.closed = True
        try:
            self.ls.close()
        except OSError:
            pass
        with self.lock:
            socks = list(self.socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass


# ---------------------------------------------------------------------------------------
# gateways

def run_gw(args, timeout=10, env=None):
    return H.run_gw(args, timeout, clean_env(env))


GW_DEFAULTS = [
    ("auth", "keys"), ("header_timeout", "2s"), ("idle_timeout", "10s"),
    ("connect_timeout", "2s"), ("first_byte_timeout", "5s"), ("stream_idle_timeout", "5s"),
    ("max_attempts", "3"), ("log_level", "warn"),
]


def https_url(port):
    return "https://localhost:%d/v1" % port


class Gateway(H.GatewayBase):
    """One llmgw process. `providers`: [(name, base_url)] (type openai); `models`:
    [(name, [target lines])]; `gw`: [gateway] settings over GW_DEFAULTS (None drops one);
    `listen`: listen lines (default: one plain listener; with tls_listener a "plain" one
    and a `tls_mode` one on self.tls_port, tls_mode "" for a bare address). The provider `echo` (type mock)
    and the model `m-mock` always exist. self.port is the plain listener used for the
    start-up health check."""

    def __init__(self, providers=(), models=(), gw=None, listen=None, env=None, shared=False,
                 tls_listener=False, tls_mode="tls"):
        super().__init__(shared, register=False)
        self.env = env
        self.tls_port = free_port() if tls_listener else None
        if listen is None:
            listen = ["127.0.0.1:%d" % self.port]
            if tls_listener:
                listen = ["127.0.0.1:%d plain" % self.port,
                          ("127.0.0.1:%d %s" % (self.tls_port, tls_mode)).rstrip()]
        self.write(self.config(providers, models, gw, listen))
        if not shared:
            H.CTX.gateways.append(self)

    def config(self, providers, models, gw, listen):
        opts = dict(GW_DEFAULTS)
        opts["ca_file"] = CERTS.root
        opts.update(gw or {})
        out = ["[gateway]"] + ["listen = %s" % l for l in listen]
        out.append("access_log = %s" % self.access_log)
        out += ["%s = %s" % (k, v) for k, v in opts.items() if v is not None]
        out.append("")
        for name, url in providers:
            out += ["[provider.%s]" % name, "type = openai", "base_url = %s" % url,
                    "api_key = upstream-secret-%s" % name, ""]
        out += ["[provider.echo]", "type = mock", ""]
        for name, targets in list(models) + [("m-mock", ["echo mock-1 in=1 out=2"])]:
            out.append("[model.%s]" % name)
            out += ["target = %s" % t for t in targets]
            out.append("")
        out += ["[key.test]", "secret = sk-test", ""]
        return "\n".join(out)

    prefix = "llmgw-tls-test-"

    def popen_env(self):
        return clean_env(self.env)

    def health(self):
        return http(self.port, "GET", "/health", key=None, timeout=1).status

    def rss_kb(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for ln in f:
                if ln.startswith("VmRSS:"):
                    return int(ln.split()[1])
        raise Fail("no VmRSS in /proc/%d/status" % self.proc.pid)

    def access_lines(self, want_ids=(), wait=3):
        """Parsed access-log lines; waits (bounded) until every id in want_ids is present."""
        deadline = time.monotonic() + wait * TOL
        while True:
            lines = []
            for i, ln in enumerate(read_file(self.access_log).splitlines()):
                if ln.strip():
                    try:
                        lines.append(json.loads(ln))
                    except ValueError as e:
                        raise Fail("access log line %d is not JSON (%s): %s" % (i + 1, e, snip(ln)))
            ids = {l.get("id") for l in lines if isinstance(l, dict)}
            if all(i in ids for i in want_ids) or time.monotonic() > deadline:
                return lines

            time.sleep(0.05)

    def access_line(self, r, what):
        rid = r.h("x-request-id")
        check(rid, "%s: response has no x-request-id" % what)
        lines = [l for l in self.access_lines([rid]) if l.get("id") == rid]
        check(len(lines) == 1, "%s: expected one access-log line with id %s, found %d"
              % (what, rid, len(lines)))
        return lines[0]

    # -- convenience
    def get(self, path, key="sk-test", tls=False, **kw):
        return http(self.tls_port if tls else self.port, "GET", path, key=key, tls=tls, **kw)

    def chat(self, model, stream=False, mk=None, key="sk-test", tls=False, timeout=10, content=None):
        return http(self.tls_port if tls else self.port, "POST", "/v1/chat/completions",
                    chat_body(model, stream, mk, content), key=key, timeout=timeout, tls=tls)


SHARED = None
SHARED_FAILED = None

BAD_KINDS = ("badca", "badname", "expired", "notyet")
FAKE_KINDS = ("tls13", "reset")


def bad_url(kind):
    """The https base_url of a failing upstream: a mock with a bad certificate, the plain
    HTTP mock (plainhttp), or an in-process server (tls13, reset)."""
    if kind in FAKE_KINDS:
        return https_url(fake(kind).port)
    if kind == "plainhttp":
        return https_url(mock("plain").port)
    return https_url(mock(kind).port)


def shared():
    """The gateway of the tests of working https upstreams, started once: providers good
    (RSA), ec (EC certificate) and chain (leaf + intermediate), all on localhost."""
    global SHARED, SHARED_FAILED
    if SHARED_FAILED:
        raise Fail("shared gateway could not be started earlier: %s" % SHARED_FAILED)
    if SHARED is not None and not SHARED.alive():
        err, rc = SHARED.stderr()[-3000:], SHARED.proc.poll()
        SHARED = None
        raise Fail("the shared gateway had died (exit status %r) before this test; stderr tail:\n%s"
                   % (rc, err))
    if SHARED is None:
        try:
            provs = [("good", https_url(mock("good").port)),
                     ("ec", https_url(mock("ec").port)),
                     ("chain", https_url(mock("chain").port))]
            models = [("m-good", ["good ok in=1 out=2"]),
                      ("m-echo", ["good echo"]),
                      ("m-ec", ["ec ok"]),
                      ("m-chain", ["chain ok"])]
            models += [("m-frame-" + s, ["good " + s]) for s in ("ok-cl", "ok-chunked", "ok-close",
                                                                   "onebyte", "slow-stream")]
            SHARED = Gateway(providers=provs, models=models, shared=True).start()
        except Fail as e:
            SHARED_FAILED = str(e).split("\n")[0]
            SHARED = None
            raise
    if not any(g is SHARED for g, _ in H.CTX.marks):
        H.CTX.marks.append((SHARED, SHARED.stderr_size()))
    return SHARED


def fresh(**kw):
    """A dedicated gateway for this test (SIGTERM and exit 0 checked at the end)."""
    return Gateway(**kw).start()


def curl(args, timeout=10):
    try:
        return subprocess.run([CURL, "-sS", "--noproxy", "*", "--max-time", str(timeout * TOL)] + args,
                              capture_output=True, timeout=timeout * TOL + 5, env=clean_env(),
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise Fail("curl did not finish")


def curl_https(port, paths, ca, extra=(), timeout=10):
    """curl against https://localhost:PORT (resolved to 127.0.0.1), trusting only `ca`."""
    if isinstance(paths, str):
        paths = [paths]
    return curl(["--cacert", ca, "--resolve", "localhost:%d:127.0.0.1" % port] + list(extra)
                + ["https://localhost:%d%s" % (port, p) for p in paths], timeout)


def measure(text):
    H.CTX.notes.append("MEASURE %s" % text)


# =======================================================================================
# tests: HTTPS upstreams

def test_upstream_https_chat_and_stream():
    g = shared()
    m = mock("good")
    mk = marker()
    r = g.chat("m-good", mk=mk)
    expect_chat(r, "non-stream chat through an https upstream", "good")
    seen = [x for x in m.requests() if mk in x["body"]]
    check(len(seen) == 1, "the https mock should have seen one request with %s, saw %d" % (mk, len(seen)))
    x = seen[0]
    eq(x["headers"].get("authorization"), "Bearer upstream-secret-good",
       "Authorization the https upstream received")
    tls = x.get("tls") or {}
    eq(tls.get("sni"), "localhost", "SNI the upstream saw (server_name)")
    eq(tls.get("version"), "TLSv1.2", "TLS version negotiated with the upstream")
    mk2 = marker()
    r = g.chat("m-good", stream=True, mk=mk2)
    expect_stream(r, "stream through an https upstream", provider="good")
    check(any(mk2 in x["body"] for x in m.requests()), "the stream request did not reach the https mock")
    # the upstream presents an EC certificate (ECDHE_ECDSA) / a chain ending at an intermediate
    expect_chat(g.chat("m-ec"), "https upstream with an EC certificate", "ec")
    expect_chat(g.chat("m-chain"), "https upstream sending leaf + intermediate (ca_file: root only)",
                "chain")


def test_upstream_https_framing_variants():
    g = shared()
    for s in ("ok-cl", "ok-chunked", "ok-close", "onebyte"):
        for stream in (False, True):
            what = "%s %s over TLS" % (s, "stream" if stream else "non-stream")
            r = g.chat("m-frame-" + s, stream=stream)
            if stream:
                expect_stream(r, what, provider="good")
            else:
                expect_chat(r, what, "good")


def test_upstream_https_large_bodies():
    """300 KB each way through the TLS upstream: many records, partial writes."""
    g = shared()
    pad = "".join("%06d " % i for i in range(300 * 1024 // 7))
    for stream in (False, True):
        body = chat_body("m-echo", stream=stream, content=pad)
        r = http(g.port, "POST", "/v1/chat/completions", body, timeout=20)
        expect_status(r, 200, "echo of a 300 KB request (stream=%s)" % stream)
        got = sse_content(r.body) if stream else r.json()["choices"][0]["message"]["content"]
        try:
            echoed = json.loads(got)
        except ValueError:
            raise Fail("the echoed request is not JSON (stream=%s): %s" % (stream, snip(got)))
        eq(echoed["messages"][0]["content"] == pad, True,
           "the upstream received the 300 KB prompt intact (stream=%s)" % stream)


def test_upstream_https_concurrent():
    g = shared()
    t = time.monotonic()
    boxes = [in_thread(g.chat, "m-frame-slow-stream", stream=True, timeout=15) for _ in range(6)]
    boxes += [in_thread(g.chat, "m-good", timeout=15) for _ in range(6)]
    for i, b in enumerate(boxes):
        r = join(b, 15, "concurrent request %d" % i)
        if i < 6:
            expect_stream(r, "concurrent slow stream %d" % i, text=SLOW_TEXT)
        else:
            expect_chat(r, "concurrent chat %d" % i, "good")
    el = time.monotonic() - t
    check(el < 6 * TOL, "6 slow streams (~1.8 s each) and 6 chats took %.1fs: not concurrent" % el)


def test_upstream_https_pooled_keepalive():
    m = mock("good")
    g = fresh(providers=[("good", https_url(m.port))],
              models=[("m-good", ["good ok"]), ("m-good2", ["good ok#2"])])
    mks = []
    for i, (model, stream) in enumerate((("m-good", False), ("m-good", True), ("m-good2", False),
                                         ("m-good", False))):
        mk = marker()
        mks.append(mk)
        r = g.chat(model, stream=stream, mk=mk)
        if stream:
            expect_stream(r, "request %d" % (i + 1))
        else:
            expect_chat(r, "request %d" % (i + 1), "good")
    reqs = m.requests()
    found = []
    for mk in mks:
        hit = [x for x in reqs if mk in x["body"]]
        check(len(hit) == 1, "marker %s seen %d times by the mock" % (mk, len(hit)))
        found.append(hit[0])
    serials = [x["serial"] for x in found]
    check(len(set(serials)) == 1, "4 sequential requests should share one pooled TLS connection; "
          "connection serials %r" % serials)
    seqs = [x["seq"] for x in found]
    eq(seqs, list(range(seqs[0], seqs[0] + 4)), "request numbers on the pooled TLS connection")


def test_upstream_https_session_resumption():
    m = mock("close")
    g = fresh(providers=[("good", https_url(m.port))], models=[("m-good", ["good ok"])])
    found = []
    for i in range(4):
        mk = marker()
        what = "request %d to an upstream closing after every response" % (i + 1)
        if i == 2:
            expect_stream(g.chat("m-good", stream=True, mk=mk), what, provider="good")
        else:
            expect_chat(g.chat("m-good", mk=mk), what, "good")
        hit = [x for x in m.requests() if mk in x["body"]]
        check(len(hit) == 1, "marker %s seen %d times by the mock" % (mk, len(hit)))
        found.append(hit[0])
    serials = [x["serial"] for x in found]
    eq(len(set(serials)), 4, "connections used (the upstream closes after each response; serials %r)"
       % serials)
    reused = [bool(x["tls"]["session_reused"]) for x in found]
    eq(reused[0], False, "first connection of a fresh gateway resumed a session?")
    check(all(reused[1:]), "connections 2-4 should resume the TLS session of the first; "
          "session_reused per connection: %r" % reused)


def test_upstream_https_stale_pooled_connection():
    m = mock("good")
    g = fresh(providers=[("good", https_url(m.port))], models=[("m-good", ["good ok"])])
    mk1, mk2 = marker(), marker()
    expect_chat(g.chat("m-good", mk=mk1), "first request", "good")
    time.sleep(0.1)
    check(m.close_idle() >= 1, "the mock had no idle connection to close (was the TLS connection pooled?)")
    time.sleep(0.2)
    expect_chat(g.chat("m-good", mk=mk2), "request after the pooled TLS connection was closed", "good")
    a, b = m.find(mk1), m.find(mk2)
    check(len(a) == 1 and len(b) == 1, "markers seen %d and %d times" % (len(a), len(b)))
    check(a[0]["serial"] != b[0]["serial"], "the second request used the closed connection?")
    # (no session_reused check here: the mock drops idle connections without close_notify,
    # and OpenSSL then forgets their session)


# ---------------------------------------------------------------------------------------
# tests: TLS failures name the provider and the reason

def _tls_failure(kind, words):
    """A dedicated gateway (fresh retry and circuit-breaker state): KIND alone gives a 502
    naming KIND and the reason, at once; KIND first and a good target second gives a 200
    after 2 attempts. The access log's attempts say the same."""
    g = fresh(providers=[(kind, bad_url(kind)), ("good", https_url(mock("good").port))],
              models=[("m-bad", ["%s ok" % kind]), ("m-bad-fb", ["%s ok#fb" % kind, "good ok#fb"])])
    t = time.monotonic()
    r = g.chat("m-bad")
    el = time.monotonic() - t
    msg = error_message(r, 502, "only target %s" % kind)
    check(kind in msg, "the 502 message should name the provider %r: %r" % (kind, msg))
    check(has_all(msg, words), "the 502 message should say %r: %r" % (words, msg))
    line = g.access_line(r, "only target %s" % kind)
    eq(line.get("status"), 502, "access log status")
    att = line.get("attempts") or []
    check(att, "access log: no attempts: %r" % line)
    for a in att:
        eq(a.get("provider"), kind, "access log attempt provider")
        check(has_all(a.get("error"), words), "access log attempt error should say %r: %r"
              % (words, a.get("error")))
        check(isinstance(a.get("ms"), int) and a["ms"] < 1000 * TOL,
              "a TLS failure should end its attempt at once (first_byte_timeout is 5s): %r" % a)
    check(el < 4 * TOL, "the request took %.2fs" % el)
    # the bad target first, a good one second: the client never sees the failure
    for stream in (False, True):
        what = "%s first, good second%s" % (kind, " (stream)" if stream else "")
        r = g.chat("m-bad-fb", stream=stream)
        if stream:
            expect_stream(r, what, provider="good")
        else:
            expect_chat(r, what, "good", attempts=2)
        eq(r.h("x-llmgw-attempts"), "2", "%s: x-llmgw-attempts" % what)
        line = g.access_line(r, what)
        att = line.get("attempts") or []
        check(len(att) == 2, "%s: access log should list two attempts: %r" % (what, att))
        eq(att[0].get("provider"), kind, "%s: access log, first attempt's provider" % what)
        check(has_all(att[0].get("error"), words), "%s: access log, first attempt's error should say "
              "%r: %r" % (what, words, att[0].get("error")))
        eq((att[1].get("provider"), att[1].get("error")), ("good", None),
           "%s: access log, second attempt (provider, error)" % what)
    return msg


def test_tls_fail_unknown_ca():
    _tls_failure("badca", ["not trusted", "localhost", "ca_file"])


def test_tls_fail_name_mismatch():
    _tls_failure("badname", ["host name", "localhost"])


def test_tls_fail_expired():
    _tls_failure("expired", ["expired", "clock", "localhost"])


def test_tls_fail_not_yet_valid():
    _tls_failure("notyet", ["not yet valid", "clock", "localhost"])


def test_tls_fail_handshake_plain_http_upstream():
    _tls_failure("plainhttp", ["handshake", "localhost"])


def test_tls_fail_handshake_tls13_only():
    _tls_failure("tls13", ["handshake", "localhost"])


def test_tls_fail_handshake_reset():
    _tls_failure("reset", ["handshake", "localhost"])


def _timeout_named_right(att, what):
    """A timed-out attempt's error must name the timeout that fired: one of the
    "N ms" figures in it is the attempt's duration."""
    err, ms = att.get("error") or "", att.get("ms")
    figures = [int(x) for x in re.findall(r"(\d+) ?ms\b", err)]
    check(isinstance(ms, int) and any(abs(f - ms) <= 400 * TOL for f in figures),
          "%s: the attempt ended after %r ms but its error names %s: %r (connect_timeout is "
          "1000 ms, first_byte_timeout 3000 ms)" % (what, ms, figures or "no duration", err))


def test_tls_fail_handshake_stall():
    """An upstream that takes the ClientHello and never answers: the attempt times out
    (bounded), the message names the timeout that fired, and a second target serves."""
    g = fresh(providers=[("silent", https_url(fake("silent").port)), ("good", https_url(mock("good").port))],
              models=[("m-bad", ["silent ok"]), ("m-bad-fb", ["silent ok#fb", "good ok#fb"])],
              gw={"connect_timeout": "1s", "first_byte_timeout": "3s", "max_attempts": "2"})
    r = g.chat("m-bad-fb", timeout=15)
    expect_chat(r, "stalled TLS handshake first, good second", "good", attempts=2)
    att = g.access_line(r, "stalled handshake, fallback").get("attempts") or []
    check(len(att) == 2 and att[0].get("provider") == "silent", "access log attempts: %r" % att)
    check(att[0]["ms"] < 3000 + 1000 * TOL, "stalled handshake took %r ms" % att[0]["ms"])
    _timeout_named_right(att[0], "stalled TLS handshake")


def test_tls_failures_do_not_poison_the_pool():
    """Failures of other origins between two requests: the good provider still reuses its
    pooled connection and every bad one still fails for its own reason (nothing of one
    origin, connection or session, leaks to another)."""
    kinds = BAD_KINDS + FAKE_KINDS + ("plainhttp",)
    m = mock("good")
    g = fresh(providers=[("good", https_url(m.port))] + [(k, bad_url(k)) for k in kinds],
              models=[("m-good", ["good ok"])] + [("m-" + k, ["%s ok" % k]) for k in kinds],
              gw={"max_attempts": "1"})
    mk1, mk2 = marker(), marker()
    expect_chat(g.chat("m-good", mk=mk1), "good before the failures", "good")
    for k in kinds:
        msg = error_message(g.chat("m-" + k), 502, k)
        check(k in msg and "TLS" in msg, "%s: %r" % (k, msg))
    expect_chat(g.chat("m-good", mk=mk2), "good after the failures", "good")
    a, b = m.find(mk1), m.find(mk2)
    check(len(a) == 1 and len(b) == 1, "markers seen %d and %d times" % (len(a), len(b)))
    eq(a[0]["serial"], b[0]["serial"], "the good provider's pooled connection (serials)")


# =======================================================================================
# tests: HTTPS listener

def _listener_checks(g, ca, what):
    # health over HTTPS through curl
    r = curl_https(g.tls_port, "/health", ca)
    eq(r.returncode, 0, "%s: curl https /health exit status (stderr %s)" % (what, snip(r.stderr)))
    # a chat completion through the mock provider
    r = curl_https(g.tls_port, "/v1/chat/completions", ca,
                   ["-H", "Authorization: Bearer sk-test", "-H", "Content-Type: application/json",
                    "-d", json.dumps(chat_body("m-mock"))])
    eq(r.returncode, 0, "%s: curl https chat exit status (stderr %s)" % (what, snip(r.stderr)))
    try:
        j = json.loads(r.stdout)
    except ValueError:
        raise Fail("%s: curl https chat got non-JSON: %s" % (what, snip(r.stdout)))
    eq(j.get("provider"), "echo", "%s: provider of the chat over HTTPS" % what)
    check(j["choices"][0]["message"]["content"], "%s: empty content: %s" % (what, snip(r.stdout)))
    # a stream
    r = curl_https(g.tls_port, "/v1/chat/completions", ca,
                   ["-N", "-H", "Authorization: Bearer sk-test", "-H", "Content-Type: application/json",
                    "-d", json.dumps(chat_body("m-mock", stream=True))])
    eq(r.returncode, 0, "%s: curl https stream exit status (stderr %s)" % (what, snip(r.stderr)))
    data = sse_data(r.stdout)
    check(data and data[-1] == "[DONE]" and sse_content(r.stdout),
          "%s: stream over HTTPS incomplete: %s" % (what, snip(r.stdout)))
    # keep-alive over TLS: curl reuses its connection
    r = curl_https(g.tls_port, ["/health", "/v1/models"], ca, ["-v", "-H", "Authorization: Bearer sk-test"])
    eq(r.returncode, 0, "%s: curl two URLs (stderr %s)" % (what, snip(r.stderr)))
    check(b"Re-using existing connection" in r.stderr,
          "%s: curl did not reuse the TLS connection: %s" % (what, snip(r.stderr, 1500)))
    # the plain listener still speaks plain HTTP, side by side
    r = g.get("/health", key=None)
    expect_status(r, 200, "%s: plain listener" % what)
    r = g.chat("m-mock")
    expect_status(r, 200, "%s: chat on the plain listener" % what)


def test_listener_https_rsa():
    g = fresh(tls_listener=True, gw={"tls_cert": CERTS.rsa, "tls_key": CERTS.leaf_key})
    _listener_checks(g, CERTS.root, "RSA")
    c = Client(g.tls_port, tls=True)
    try:
        ver = c.sock.version()
        check(ver in ("TLSv1.2",), "TLS version with the gateway's listener: %r" % ver)
        c.send(build_request("GET", "/health", key=None))
        expect_status(c.read_response(), 200, "python ssl client: /health")
    finally:
        c.close()
    # the wrong CA and the wrong name are refused by the client (the gateway serves its cert)
    try:
        Client(g.tls_port, tls=True, ca=CERTS.other_root).close()
        raise Fail("a client trusting another CA accepted the gateway's certificate")
    except Fail as e:
        check("handshake" in str(e), str(e))
    try:
        Client(g.tls_port, tls=True, host="other.example").close()
        raise Fail("a client expecting other.example accepted the gateway's certificate")
    except Fail as e:
        check("handshake" in str(e), str(e))


def test_listener_https_ec():
    g = fresh(tls_listener=True, gw={"tls_cert": CERTS.ec, "tls_key": CERTS.ec_key})
    _listener_checks(g, CERTS.root, "EC")
    c = Client(g.tls_port, tls=True)
    try:
        cipher = c.sock.cipher()[0]
        check("ECDSA" in cipher, "an EC key should give an ECDSA suite, got %r" % cipher)
    finally:
        c.close()


def test_listener_https_chain():
    """tls_cert holds leaf + intermediate (and the key is PKCS#1); clients trust the root only."""
    g = fresh(tls_listener=True, gw={"tls_cert": CERTS.chain, "tls_key": CERTS.leaf_key_pkcs1})
    r = curl_https(g.tls_port, "/health", CERTS.root)
    eq(r.returncode, 0, "curl trusting only the root: exit status (stderr %s)" % snip(r.stderr))
    r = curl_https(g.tls_port, "/v1/chat/completions", CERTS.root,
                   ["-H", "Authorization: Bearer sk-test", "-H", "Content-Type: application/json",
                    "-d", json.dumps(chat_body("m-mock"))])
    eq(r.returncode, 0, "curl chat through a chained certificate (stderr %s)" % snip(r.stderr))
    check(b'"provider"' in r.stdout, "unexpected reply %s" % snip(r.stdout))
    c = Client(g.tls_port, tls=True)          # python's ssl verifies the chain as well
    try:
        c.send(build_request("GET", "/health", key=None))
        expect_status(c.read_response(), 200, "python ssl client trusting the root only")
    finally:
        c.close()


def test_listener_https_over_max_connections_closes():
    """Over max_connections a plain listener answers 503 and closes; a TLS listener only
    closes (plain text would reach a TLS client as a broken record)."""
    g = fresh(tls_listener=True, gw={"tls_cert": CERTS.rsa, "tls_key": CERTS.leaf_key,
                                     "max_connections": "2"})
    held = []
    try:
        for i in range(2):
            c = Client(g.port)
            c.send(build_request("GET", "/health", key=None))
            expect_status(c.read_response(), 200, "held connection %d" % i)
            held.append(c)
        for port, tls in ((g.port, False), (g.tls_port, True)):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.settimeout(5)
            got = b""
            try:
                while True:
                    d = s.recv(4096)
                    if not d:
                        break
                    got += d
            except ConnectionResetError:
                pass
            finally:
                s.close()
            if tls:
                eq(got, b"", "bytes sent on the TLS listener over max_connections")
            else:
                check(got.startswith(b"HTTP/1.1 503"), "plain listener over max_connections: %s" % snip(got))
    finally:
        for c in held:
            c.close()
    check("connection refused: max_connections (2) reached" in g.stderr(),
          "no refusal line in the log: %s" % snip(g.stderr()[-600:]))


def test_listener_bare_address_is_https():
    g = fresh(tls_listener=True, tls_mode="", gw={"tls_cert": CERTS.rsa, "tls_key": CERTS.leaf_key})
    check("listen = 127.0.0.1:%d\n" % g.tls_port in read_file(g.cfg), "test bug: no bare listen line")
    r = http(g.tls_port, "GET", "/health", key=None, tls=True)
    expect_status(r, 200, "bare listen address with tls_cert set, over HTTPS")
    expect_status(http(g.port, "GET", "/health", key=None), 200, "the 'plain' listener next to it")


def test_listener_cert_reload_and_handshake_across_reload():
    """SIGHUP replaces the listener's certificate (RSA -> EC) for new connections, and a
    connection accepted before the reload still completes its handshake and is served.
    That handshake must not use the old configuration's freed certificate and key: BearSSL
    is not built with ASan, so only valgrind (LLMGW_WRAP) sees such reads for sure."""
    g = fresh(tls_listener=True, gw={"tls_cert": CERTS.rsa, "tls_key": CERTS.leaf_key,
                                     "header_timeout": "10s", "log_level": "info"})
    s = socket.create_connection(("127.0.0.1", g.tls_port), timeout=5)
    on_cleanup(s.close)
    time.sleep(0.3)          # accepted; the gateway waits for the ClientHello
    text = read_file(g.cfg)
    g.write(text.replace("tls_cert = %s" % CERTS.rsa, "tls_cert = %s" % CERTS.ec)
            .replace("tls_key = %s" % CERTS.leaf_key, "tls_key = %s" % CERTS.ec_key))
    for i in range(2):       # twice: the second load may reuse what the first one freed
        mark = g.stderr_size()
        g.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5 * TOL
        while "reloaded" not in g.stderr()[mark:] and time.monotonic() < deadline:
            time.sleep(0.05)
        check("reloaded" in g.stderr()[mark:], "no 'configuration reloaded' in the log after "
              "SIGHUP %d: %s" % (i + 1, snip(g.stderr()[mark:])))
    c = Client(g.tls_port, tls=True, sock=s)
    try:
        c.send(build_request("GET", "/health", key=None))
        expect_status(c.read_response(), 200, "connection accepted before the reload")
    finally:
        c.close()
    c = Client(g.tls_port, tls=True)
    try:
        cipher = c.sock.cipher()[0]
        check("ECDSA" in cipher, "after the reload new connections should get the EC certificate; "
              "suite %r" % cipher)
        c.send(build_request("GET", "/health", key=None))
        expect_status(c.read_response(), 200, "new connection after the reload")
    finally:
        c.close()


def test_listener_https_keepalive_pipelining_big_body():
    m = mock("good")
    g = fresh(tls_listener=True, gw={"tls_cert": CERTS.rsa, "tls_key": CERTS.leaf_key},
              providers=[("good", https_url(m.port))], models=[("m-echo", ["good echo"])])
    c = Client(g.tls_port, tls=True)
    try:
        # keep-alive: two requests, then two pipelined in one write
        for i in range(2):
            c.send(build_request("GET", "/health", key=None))
            expect_status(c.read_response(), 200, "keep-alive request %d over TLS" % (i + 1))
        c.send(build_request("POST", "/v1/chat/completions", chat_body("m-mock"))
               + build_request("GET", "/health", key=None))
        expect_status(c.read_response(), 200, "pipelined chat over TLS")
        expect_status(c.read_response(), 200, "pipelined /health over TLS")
        # 300 KB in over TLS, out to the TLS upstream, echoed back
        pad = "".join("%06d " % i for i in range(300 * 1024 // 7))
        c.send(build_request("POST", "/v1/chat/completions", chat_body("m-echo", content=pad)))
        r = c.read_response(timeout=20)
        expect_status(r, 200, "300 KB request through HTTPS in and HTTPS out")
        echoed = json.loads(r.json()["choices"][0]["message"]["content"])
        check(echoed["messages"][0]["content"] == pad, "the prompt did not arrive intact")
        c.send(build_request("POST", "/v1/chat/completions", chat_body("m-echo", stream=True, content=pad)))
        r = c.read_response(timeout=20)
        expect_status(r, 200, "300 KB streamed through HTTPS in and HTTPS out")
        echoed = json.loads(sse_content(r.body))
        check(echoed["messages"][0]["content"] == pad, "the streamed prompt did not arrive intact")
    finally:
        c.close()


def test_listener_tls_client_disconnect_mid_stream():
    m = mock("plain")
    g = fresh(tls_listener=True, gw={"tls_cert": CERTS.rsa, "tls_key": CERTS.leaf_key},
              providers=[("up", "http://127.0.0.1:%d/v1" % m.port)], models=[("m-slow", ["up slow-stream"])])
    for i in range(3):
        c = Client(g.tls_port, tls=True)
        c.send(build_request("POST", "/v1/chat/completions", chat_body("m-slow", stream=True)))
        c.sock.settimeout(5 * TOL)
        try:
            c.sock.recv(100)
        except OSError:
            pass
        if i == 1:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    time.sleep(0.3)
    r = http(g.tls_port, "GET", "/health", key=None, tls=True)
    expect_status(r, 200, "health over TLS after clients vanished mid-stream")


def test_listener_bad_tls_client_cannot_stall_others():
    g = fresh(tls_listener=True, gw={"tls_cert": CERTS.rsa, "tls_key": CERTS.leaf_key,
                                     "header_timeout": "1s"})
    t0 = time.monotonic()
    stalled = []
    # half a ClientHello: a handshake record announcing 512 bytes, 40 sent
    s1 = socket.create_connection(("127.0.0.1", g.tls_port), timeout=5)
    s1.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(29))
    stalled.append(("half a ClientHello", s1))
    # connected, says nothing
    s2 = socket.create_connection(("127.0.0.1", g.tls_port), timeout=5)
    stalled.append(("silent TCP connection", s2))
    # a finished handshake, then half a request head
    c3 = Client(g.tls_port, tls=True)
    c3.send(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ha")
    for _, s in stalled:
        on_cleanup(s.close)
    on_cleanup(c3.close)
    time.sleep(0.2)
    # garbage (plain HTTP) on the TLS port: dropped at once
    s4 = socket.create_connection(("127.0.0.1", g.tls_port), timeout=5)
    on_cleanup(s4.close)
    t4 = time.monotonic()
    s4.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
    # meanwhile, other clients are served promptly
    for i in range(3):
        t = time.monotonic()
        expect_status(http(g.port, "GET", "/health", key=None, timeout=3), 200, "plain client %d" % i)
        r = http(g.tls_port, "GET", "/health", key=None, tls=True, timeout=3)
        expect_status(r, 200, "TLS client %d" % i)
        r = http(g.tls_port, "POST", "/v1/chat/completions", chat_body("m-mock"), tls=True, timeout=3)
        expect_status(r, 200, "TLS chat client %d" % i)
        el = time.monotonic() - t
        check(el < 0.5 * TOL, "plain + 2 TLS requests took %.2fs while bad clients stall" % el)
    s4.settimeout(max(0.1, t4 + 1.0 * TOL - time.monotonic()))
    try:
        d = s4.recv(4096)
        closed4 = True
        check(b"HTTP/1.1 200" not in d, "plain HTTP on the TLS port got a plain answer: %r" % d[:200])
        while d:
            d = s4.recv(4096)
    except socket.timeout:
        closed4 = False
    except OSError:
        closed4 = True
    check(closed4, "plain HTTP on the TLS port: connection not dropped within 1s")
    # the stalled ones are dropped after header_timeout (1 s)
    for what, s in stalled:
        left = t0 + 3.0 * TOL - time.monotonic()
        s.settimeout(max(0.1, left))
        try:
            while s.recv(4096):
                pass
            ok = True
        except socket.timeout:
            ok = False
        except OSError:
            ok = True
        el = time.monotonic() - t0
        check(ok, "%s: still connected %.1fs after connecting (header_timeout = 1s)" % (what, el))
        check(el >= 0.8, "%s: dropped after only %.2fs (header_timeout = 1s)" % (what, el))
    r = c3.read_response(timeout=max(0.1, t0 + 3.0 * TOL - time.monotonic()))
    expect_status(r, 408, "TLS client stalling in its request head")
    closed, _ = c3.wait_closed(2 * TOL)
    check(closed, "TLS connection not closed after its 408")
    # a client that speaks TLS 1.3 only (the listener speaks up to 1.2) is refused at once
    t = time.monotonic()
    try:
        Client(g.tls_port, tls=True, min_version=ssl.TLSVersion.TLSv1_3, timeout=3).close()
        raise Fail("a TLS-1.3-only client completed a handshake with the listener")
    except Fail as e:
        check("handshake" in str(e), str(e))
    check(time.monotonic() - t < 1.0 * TOL, "the TLS-1.3-only client waited %.2fs for its refusal"
          % (time.monotonic() - t))
    expect_status(http(g.tls_port, "GET", "/health", key=None, tls=True), 200, "TLS listener afterwards")


# =======================================================================================
# tests: CONNECT proxy

def _proxy_gateway(px, gw_extra=None, env=None, with_plain=True):
    m = mock("good")
    provs = [("good", https_url(m.port))]
    models = [("m-good", ["good ok"])]
    for st in ("407", "403"):    # own targets: failures of one do not trip the other's breaker
        models += [("m-good-" + st, ["good ok#" + st]), ("m-fb-" + st, ["good ok#fb" + st, "plain ok#fb"])]
    if with_plain:
        provs.append(("plain", "http://127.0.0.1:%d/v1" % mock("plain").port))
        models.append(("m-plain", ["plain ok"]))
    gw = dict(gw_extra or {})
    if px is not None:
        gw.setdefault("proxy", "http://127.0.0.1:%d" % px.port)
    return fresh(providers=provs, models=models, gw=gw, env=env), m


def test_proxy_connect():
    px = Proxy()
    g, m = _proxy_gateway(px)
    mk = marker()
    expect_chat(g.chat("m-good", mk=mk), "https upstream through the proxy", "good")
    eq(px.lines(), ["CONNECT localhost:%d HTTP/1.1" % m.port], "what the proxy saw")
    heads = px.heads()
    check("proxy-authorization" not in heads[0]["headers"],
          "Proxy-Authorization sent without credentials: %r" % heads[0]["headers"])
    x = m.find(mk)
    check(len(x) == 1 and x[0]["tls"]["sni"] == "localhost", "the request through the tunnel: %r" % x)
    expect_stream(g.chat("m-good", stream=True), "stream through the proxy", provider="good")
    expect_chat(g.chat("m-good"), "third request through the proxy", "good")
    eq(len(px.lines()), 1, "CONNECTs for 3 sequential requests (the tunnel should be pooled): %r"
       % px.lines())
    # a plain http:// upstream never goes through the proxy
    mk = marker()
    expect_chat(g.chat("m-plain", mk=mk), "plain http upstream with a proxy configured", "plain")
    eq(len(px.lines()), 1, "the proxy saw the plain http:// upstream: %r" % px.lines())
    check(len(mock("plain").find(mk)) == 1, "the plain upstream did not get the request directly")


def test_proxy_authorization():
    px = Proxy()
    g, m = _proxy_gateway(px, {"proxy": "http://user:pass@127.0.0.1:%d" % px.port})
    expect_chat(g.chat("m-good"), "https upstream through an authenticating proxy", "good")
    heads = px.heads()
    check(len(heads) == 1, "proxy requests: %r" % heads)
    eq(heads[0]["line"], "CONNECT localhost:%d HTTP/1.1" % m.port, "CONNECT line")
    eq(heads[0]["headers"].get("proxy-authorization"), "Basic dXNlcjpwYXNz", "Proxy-Authorization")


def test_proxy_refusal_407_403():
    px = Proxy("407")
    g, m = _proxy_gateway(px)
    for status in ("407", "403"):
        px.mode = status
        n = len(px.lines())
        r = g.chat("m-good-" + status)
        msg = error_message(r, 502, "proxy answering %s" % status)
        check(has_all(msg, ["proxy", "127.0.0.1:%d" % px.port, status, "good"]),
              "the 502 message should name the provider, the proxy and its status %s: %r" % (status, msg))
        line = g.access_line(r, "proxy %s" % status)
        att = line.get("attempts") or []
        check(att and all(has_all(a.get("error"), ["proxy", status]) and a.get("provider") == "good"
                          for a in att),
              "access log attempts should name provider good, the proxy and %s: %r" % (status, att))
        check(len(px.lines()) > n, "the proxy was not asked")
        # the next target (plain http, no proxy) serves the request
        r = g.chat("m-fb-" + status)
        expect_chat(r, "proxy %s then a plain target" % status, "plain", attempts=2)


def test_proxy_silent_times_out():
    """A proxy that never answers CONNECT: the attempt times out (bounded), its message
    names the timeout that fired, and the next (plain) target serves."""
    px = Proxy("silent")
    g, m = _proxy_gateway(px, {"connect_timeout": "1s", "first_byte_timeout": "3s"})
    r = g.chat("m-fb-407", timeout=15)
    expect_chat(r, "silent proxy, then a plain target", "plain", attempts=2)
    att = g.access_line(r, "silent proxy").get("attempts") or []
    check(len(att) == 2 and att[0].get("provider") == "good", "access log attempts: %r" % att)
    check(att[0]["ms"] < 3000 + 1000 * TOL, "the silent proxy held the attempt %r ms" % att[0]["ms"])
    _timeout_named_right(att[0], "proxy never answering CONNECT")


def test_proxy_https_proxy_env_and_no_proxy():
    px = Proxy()
    g, m = _proxy_gateway(None, env={"HTTPS_PROXY": "http://127.0.0.1:%d" % px.port})
    expect_chat(g.chat("m-good"), "https upstream with HTTPS_PROXY set", "good")
    eq(px.lines(), ["CONNECT localhost:%d HTTP/1.1" % m.port], "HTTPS_PROXY: what the proxy saw")
    expect_chat(g.chat("m-plain"), "plain upstream with HTTPS_PROXY set", "plain")
    eq(len(px.lines()), 1, "HTTPS_PROXY: a plain http:// upstream used the proxy")
    g.stop()
    # NO_PROXY=localhost: straight to the upstream (also with a list and the config's proxy =)
    for env, gwx in (({"HTTPS_PROXY": "http://127.0.0.1:%d" % px.port, "NO_PROXY": "localhost"}, None),
                     ({"NO_PROXY": "other.example, localhost"}, {"proxy": "http://127.0.0.1:%d" % px.port})):
        n = len(px.lines())
        g2, _ = _proxy_gateway(None, gw_extra=gwx, env=env)
        mk = marker()
        expect_chat(g2.chat("m-good", mk=mk), "NO_PROXY %r" % env["NO_PROXY"], "good")
        eq(len(px.lines()), n, "NO_PROXY %r: the proxy was used: %r" % (env["NO_PROXY"], px.lines()))
        check(len(m.find(mk)) == 1, "NO_PROXY: the request did not reach the upstream")
        g2.stop()


# =======================================================================================
# tests: configuration errors

def test_config_errors_tls():
    g = Gateway(providers=[("good", https_url(443))], models=[("m-good", ["good ok"])])
    base = read_file(g.cfg)
    r = run_gw(["-t", "-c", g.cfg])
    eq(r.returncode, 0, "llmgw -t on a good TLS config (stderr %s)" % snip(r.stderr, 1000))
    good = base.replace("[gateway]\n", "[gateway]\ntls_cert = %s\ntls_key = %s\n" % (CERTS.rsa, CERTS.leaf_key))
    path = os.path.join(g.dir, "good-listener.ini")
    with open(path, "w") as f:
        f.write(good)
    r = run_gw(["-t", "-c", path])
    eq(r.returncode, 0, "llmgw -t with tls_cert/tls_key (stderr %s)" % snip(r.stderr, 1000))
    missing = os.path.join(g.dir, "no-such-ca.pem")
    a_dir = os.path.join(g.dir, "a-directory.key")
    os.mkdir(a_dir)
    ca_line = "ca_file = %s\n" % CERTS.root
    cases = [
        ("missing ca_file", base.replace(ca_line, "ca_file = %s\n" % missing), "no-such-ca.pem"),
        ("ca_file without a certificate", base.replace(ca_line, "ca_file = %s\n" % CERTS.not_pem),
         "not-a-cert.pem"),
        ("ca_file holding only a key", base.replace(ca_line, "ca_file = %s\n" % CERTS.ec_key), "ec.key"),
        ("tls_cert without tls_key", base.replace("[gateway]\n", "[gateway]\ntls_cert = %s\n" % CERTS.rsa),
         "bad-tls_cert without tls_key.ini"),
        ("tls_key without tls_cert", base.replace("[gateway]\n", "[gateway]\ntls_key = %s\n" % CERTS.leaf_key),
         "bad-tls_key without tls_cert.ini"),
        ("missing tls_key", good.replace("tls_key = %s" % CERTS.leaf_key,
                                         "tls_key = %s" % os.path.join(g.dir, "no-such.key")), "no-such.key"),
        ("tls_key is a directory", good.replace("tls_key = %s" % CERTS.leaf_key, "tls_key = %s" % a_dir),
         "a-directory.key"),
        ("tls_key holding a certificate", good.replace("tls_key = %s" % CERTS.leaf_key,
                                                       "tls_key = %s" % CERTS.root), "root.pem"),
        ("tls_cert holding no certificate", good.replace("tls_cert = %s" % CERTS.rsa,
                                                         "tls_cert = %s" % CERTS.not_pem), "not-a-cert.pem"),
    ]
    if os.geteuid() != 0:          # root reads a mode-000 file anyway
        locked = os.path.join(g.dir, "locked.key")
        shutil.copy(CERTS.leaf_key, locked)
        os.chmod(locked, 0)
        cases.append(("unreadable tls_key (mode 000)",
                      good.replace("tls_key = %s" % CERTS.leaf_key, "tls_key = %s" % locked), "locked.key"))
    problems = []
    for name, text, must_name in cases:
        check(text != base and text != good, "test bug: case %r changed nothing" % name)
        path = os.path.join(g.dir, "bad-%s.ini" % name)
        with open(path, "w") as f:
            f.write(text)
        r = run_gw(["-t", "-c", path])
        err = (r.stderr + r.stdout).decode("utf-8", "replace")
        if r.returncode != 1:
            problems.append("%s: expected exit status 1, got %d (stderr %s)" % (name, r.returncode, snip(err)))
        elif must_name not in err:
            problems.append("%s: the message should name %s: %s" % (name, must_name, snip(err)))
    check(not problems, "TLS config errors not reported right:\n  " + "\n  ".join(problems))


# =======================================================================================
# tests: memory

@limit(60)
def test_memory_per_tls_connection():
    """RSS growth for 100 idle keep-alive HTTPS connections vs 100 plain ones."""
    n = 100
    g = fresh(tls_listener=True, gw={"tls_cert": CERTS.rsa, "tls_key": CERTS.leaf_key,
                                     "idle_timeout": "60s", "header_timeout": "30s"})

    def open_conns(tls, count):
        cs = []
        for _ in range(count):
            c = Client(g.tls_port if tls else g.port, tls=tls)
            c.send(build_request("GET", "/health", key=None))
            expect_status(c.read_response(), 200, "idle-to-be %s connection" % ("TLS" if tls else "plain"))
            cs.append(c)
            on_cleanup(c.close)
        return cs

    def settle():
        time.sleep(0.3)
        return g.rss_kb()

    for c in open_conns(True, 5) + open_conns(False, 5):      # warm up code and allocator
        c.close()
    r0 = settle()
    plain = open_conns(False, n)
    r1 = settle()
    tls = open_conns(True, n)
    r2 = settle()
    per_plain = (r1 - r0) / float(n)
    per_tls = (r2 - r1) / float(n)
    extra = per_tls - per_plain
    measure("memory: gateway RSS %d KB idle; +%d KB for %d idle plain keep-alive connections "
            "(%.1f KB each); +%d KB for %d idle HTTPS connections (%.1f KB each); "
            "TLS costs %.1f KB per connection more than plain (%s)"
            % (r0, r1 - r0, n, per_plain, r2 - r1, n, per_tls, extra, os.path.basename(GW)))
    expect_status(http(g.tls_port, "GET", "/health", key=None, tls=True), 200, "TLS /health with 200 open")
    for c in plain[:3] + tls[:3]:            # the idle connections still work
        c.send(build_request("GET", "/health", key=None))
        expect_status(c.read_response(), 200, "idle connection reused")
    if not WRAP:
        check(extra < 60, "one idle TLS connection costs %.1f KB more than a plain one (bound: 60 KB)" % extra)


# =======================================================================================
# last: the shared gateway must exit cleanly

def test_shared_gateway_clean_exit():
    global SHARED
    if SHARED is None:
        return
    g = SHARED
    try:
        g.stop(10)
        shutil.rmtree(g.dir, ignore_errors=True)
    finally:
        SHARED = None


# =======================================================================================
# runner


def setup():
    global CERTS
    fam = socket.getaddrinfo("localhost", 1, 0, socket.SOCK_STREAM)[0][0]
    if fam != socket.AF_INET:
        print("NOTE: localhost resolves to IPv6 first here; the mocks listen on 127.0.0.1 only",
              flush=True)
    try:
        CERTS = Certs()
        if H.VERBOSE:
            print("(certificates made in %.1fs in %s)" % (CERTS.seconds, CERTS.dir), flush=True)
    except Fail as e:
        print("FAIL certificates: %s" % e, flush=True)
        print("0 passed, 1 failed", flush=True)
        return 1
    return None


def teardown():
    for m in MOCKS.values():
        m.stop()
        shutil.rmtree(m.dir, ignore_errors=True)
    for f in FAKES.values():
        f.close()
    if CERTS is not None:
        shutil.rmtree(CERTS.dir, ignore_errors=True)


def main():
    return H.main(globals(), "llmgw TLS integration tests", hidden=("test_shared_gateway_clean_exit",),
                  list_tail=("test_shared_gateway_clean_exit",), setup=setup, teardown=teardown)


if __name__ == "__main__":
    sys.exit(main())
