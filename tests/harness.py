"""The harness the llmgw integration suites share (integration.py, tls_test.py, acct_test.py,
route_test.py, adapter_test.py): assertions, the per-test context, free ports, helper
threads, the base of the gateway and mock-process helpers, the raw HTTP/1.1 client (Conn,
build_request, http_request; measure.py uses it too), and the test runner (test_*
discovery, PASS/FAIL lines, -k/--gw/--list/-v, LLMGW_WRAP, "N passed, N failed", exit status).

Suites import it with their own directory on sys.path. The runner keeps the suite's globals
GW, VERBOSE and CTX in step with the ones here (harness.GW, harness.VERBOSE, harness.CTX), so
suite code may use either."""

import argparse
import binascii
import http.client
import json
import math
import os
import re
import select
import shlex
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
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PYTHON = sys.executable or "/usr/bin/python3"
WRAP = shlex.split(os.environ.get("LLMGW_WRAP", ""))
TOL = 4.0 if WRAP else 1.0            # tolerance factor for upper time bounds (valgrind is slow)
GW = os.path.join(ROOT, "llmgw")      # replaced by --gw
VERBOSE = False


# =======================================================================================
# assertions

class Fail(AssertionError):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def eq(got, want, what):
    if got != want:
        raise Fail("%s: expected %r, got %r" % (what, want, got))


def near(got, want, what, rel=1e-6):
    ok = isinstance(got, (int, float)) and not isinstance(got, bool) and \
        abs(got - want) <= rel * max(abs(want), 1e-12)
    if not ok:
        raise Fail("%s: expected %r, got %r" % (what, want, got))


def near_usd(got, want, what, rel=1e-9, abs_=1e-12):
    """Costs: equal up to float rounding (a relative 1e-9, or 1e-12 USD)."""
    ok = isinstance(got, (int, float)) and not isinstance(got, bool) and \
        abs(got - want) <= max(rel * max(abs(want), abs(got)), abs_)
    if not ok:
        raise Fail("%s: expected %r, got %r" % (what, want, got))


def crc_hex(s):
    """The CRC-32 of a ledger record, as the ledger writes it."""
    return "%08x" % (binascii.crc32(s.encode()) & 0xffffffff)


def reservation(body_bytes, max_in, max_out_price, max_out_tokens):
    """What a budget reserves for a request without image, audio or file parts: the prompt
    bound (a token per body byte) at the highest input price, plus its max tokens at the
    highest output price."""
    return (len(body_bytes) * max_in + max_out_tokens * max_out_price) / 1e6


def gw_lines(defaults, extra):
    """[gateway] lines: the defaults, with the keys extra sets replaced (a key set twice in a
    section is a config error)."""
    mine = {ln.split("=", 1)[0].strip() for ln in extra.strip().splitlines() if "=" in ln}
    keep = [ln for ln in defaults.splitlines() if ln.split("=", 1)[0].strip() not in mine]
    return "\n".join(keep + extra.strip().splitlines()) + "\n"


def snip(b, n=400):
    if isinstance(b, bytes):
        b = b.decode("utf-8", "replace")
    if not isinstance(b, str):
        b = json.dumps(b)
    return b if len(b) <= n else b[:n] + "...(%d bytes)" % len(b)


def marker():
    return "mk%08x" % int.from_bytes(os.urandom(4), "big")


# =======================================================================================
# per-test context (one test runs at a time)

class TestCtx:
    def __init__(self, name, mock_mark=0):
        self.name = name
        self.gateways = []        # dedicated gateways started by this test
        self.marks = []           # (shared gateway, stderr offset at test start)
        self.cleanups = []
        self.notes = []           # lines (MEASURE ...) printed before the verdict
        self.mock_mark = mock_mark


CTX = TestCtx("-")


def on_cleanup(fn):
    CTX.cleanups.append(fn)


# =======================================================================================
# small helpers

def free_port(_used=set()):
    for _ in range(50):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        s.close()
        if p not in _used:
            _used.add(p)
            return p
    raise Fail("no free port")


def read_file(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def file_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def in_thread(fn, *a, **kw):
    """Run fn in a thread; returns a dict that gets 'result' or 'error' and a .join()."""
    box = {}

    def run():
        try:
            box["result"] = fn(*a, **kw)
        except BaseException as e:
            box["error"] = "%s\n%s" % (e, traceback.format_exc())
    t = threading.Thread(target=run, daemon=True)
    box["thread"] = t
    t.start()
    return box


def join(box, timeout, what):
    box["thread"].join(timeout * TOL)
    check(not box["thread"].is_alive(), "%s did not finish within %gs" % (what, timeout * TOL))
    check("error" not in box, "%s failed: %s" % (what, box.get("error")))
    return box["result"]


def limit(seconds):
    def deco(fn):
        fn.limit = seconds
        return fn
    return deco


# =======================================================================================
# processes: a mock that prints "PORT <n>", and the gateway

class MockProc:
    """A mock server script in its own process; it prints `PORT <n>` when listening."""

    def __init__(self, args, prefix, what, env=None):
        self.dir = tempfile.mkdtemp(prefix=prefix)
        self.stderr_path = os.path.join(self.dir, "mock.stderr")
        self.errf = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self.errf, env=env)
        deadline = time.monotonic() + 10
        line = b""
        while time.monotonic() < deadline and not line.endswith(b"\n"):
            r, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if r:
                c = os.read(self.proc.stdout.fileno(), 1)
                if not c:
                    break
                line += c
        m = re.match(rb"PORT (\d+)", line)
        if not m:
            self.stop()
            raise Fail("%s did not print its port (got %r); stderr: %s" % (
                what, line, read_file(self.stderr_path)))
        self.port = int(m.group(1))

    def alive(self):
        return self.proc.poll() is None

    def stderr_size(self):
        return file_size(self.stderr_path)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.errf.close()


START_TIMEOUTS = 0


class GatewayBase:
    """One llmgw process on a temp INI in its own temp dir. Subclasses write the config and
    define health() (the status of GET /health on self.port, or raise)."""
    prefix = "llmgw-test-"
    start_stderr_always = True    # False: only the shared gateway's start-up failure shows stderr
    quick_after_timeouts = False  # after 2 start-up timeouts, wait at most 3 s
    poll_step = 0.05

    def __init__(self, shared=False, register=True):
        self.shared = shared
        self.dir = tempfile.mkdtemp(prefix=self.prefix)
        self.port = free_port()
        self.cfg = os.path.join(self.dir, "llmgw.ini")
        self.access_log = os.path.join(self.dir, "access.jsonl")
        self.stderr_path = os.path.join(self.dir, "stderr.txt")
        self.proc = None
        self.rc = None
        if register and not shared:
            CTX.gateways.append(self)

    def access_all(self):
        """Every access-log line so far, parsed (a line that is not JSON fails the test)."""
        out = []
        for ln in read_file(self.access_log).splitlines():
            if ln.strip():
                try:
                    out.append(json.loads(ln))
                except ValueError as e:
                    raise Fail("access log line is not JSON (%s): %s" % (e, snip(ln)))
        return out

    def write(self, text):
        with open(self.cfg, "w") as f:
            f.write(text)

    def popen_env(self):
        return None

    def health(self):
        raise NotImplementedError

    def start(self, wait=10):
        global START_TIMEOUTS
        if not os.path.isfile(GW):
            raise Fail("gateway binary %s not found (build it first)" % GW)
        errf = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(WRAP + [GW, "-c", self.cfg], stdin=subprocess.DEVNULL,
                                     stdout=errf, stderr=errf, cwd=self.dir, env=self.popen_env())
        errf.close()
        if self.quick_after_timeouts and START_TIMEOUTS >= 2:
            wait = min(wait, 3)     # it never came up before: don't spend 10s on every test
        deadline = time.monotonic() + wait * (6 if WRAP else 1)
        last = "no answer"
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                self.rc = rc
                raise Fail("gateway exited with status %d during startup%s" % (
                    rc, self._stderr_note()))
            try:
                status = self.health()
                if status == 200:
                    return self
                last = "GET /health answered %d" % status
            except (Fail, OSError, http.client.HTTPException) as e:
                last = str(e)
            time.sleep(self.poll_step)
        START_TIMEOUTS += 1
        self.kill()
        raise Fail("gateway did not answer GET /health with 200 within %gs (last: %s)%s"
                   % (wait * (6 if WRAP else 1), last, self._stderr_note()))

    def _stderr_note(self):
        # dedicated gateways get their stderr printed by the runner
        if self.start_stderr_always or self.shared:
            return "; stderr:\n" + self.stderr()[-3000:]
        return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        check(self.alive(), "gateway is not running (exit status %r)" % (
            self.proc.poll() if self.proc else None))
        self.proc.send_signal(sig)

    def stop(self, timeout=10):
        """SIGTERM, and insist on exit status 0 within `timeout` s."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.rc = self.proc.wait(timeout * TOL)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise Fail("gateway did not exit within %gs of SIGTERM (killed)" % (timeout * TOL))
        if self.rc != 0:
            raise Fail("gateway exited with status %d after SIGTERM, expected 0; stderr tail:\n%s"
                       % (self.rc, self.stderr()[-3000:]))
        return self.rc

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def stderr(self):
        return read_file(self.stderr_path)

    def stderr_size(self):
        return file_size(self.stderr_path)


# =======================================================================================
# Responses and SSE bodies, as every suite's HTTP client sees them

def sse_events(body):
    """The data: payloads of an SSE body (bytes), one string per event."""
    out = []
    for block in body.decode("utf-8", "replace").replace("\r\n", "\n").split("\n\n"):
        data = [ln[5:].lstrip(" ") for ln in block.split("\n") if ln.startswith("data:")]
        if data:
            out.append("\n".join(data))
    return out


def sse_text(body):
    """The assistant text of an OpenAI-style SSE body: the deltas' content joined."""
    text = ""
    for d in sse_events(body):
        try:
            j = json.loads(d)
        except ValueError:
            continue
        for ch in (j.get("choices") or []) if isinstance(j, dict) else []:
            text += (ch.get("delta") or {}).get("content") or ""
    return text


class RespBase:
    """What every suite's response object offers; each suite's client sets status, headers
    (lower-case names) and body."""
    _json = None

    def h(self, name, default=None):
        return self.headers.get(name.lower(), default)

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        if self._json is None:
            try:
                self._json = json.loads(self.body)
            except ValueError as e:
                raise Fail("status %d: body is not JSON (%s): %s" % (self.status, e, snip(self.body)))
        return self._json

    def __repr__(self):
        return "<HTTP %d; headers %r; body %s>" % (self.status, self.headers, snip(self.body))


# =======================================================================================
# Raw HTTP/1.1 on a socket: one connection, exact bytes out, careful parsing in (every
# suite's raw requests: keep-alive, pipelining, heads only, bytes dripped slowly, streams
# read event by event, malformed input)

class Event:
    """One SSE event: its event: name, its data: lines joined (None without any), that data
    as JSON where it is JSON, t = when its end arrived (seconds after the request was sent),
    partial = the body ended before the blank line that ends it."""

    def __init__(self, t, name, data, partial=False):
        self.t = t
        self.name = name
        self.data = data
        self.partial = partial
        self.json = None
        if data is not None and data != "[DONE]":
            try:
                self.json = json.loads(data)
            except ValueError:
                pass

    def __repr__(self):
        return "<event t=%.3f%s %s%s>" % (self.t, " " + self.name if self.name else "",
                                          snip(self.data or "", 160), " PARTIAL" if self.partial else "")


def parse_sse(pieces):
    """SSE events from timed body pieces [(t, bytes)]; each event carries the time its end
    arrived. CRLF and LF framing, comments, multi-line data:."""
    events, buf = [], ""
    for t, data in pieces:
        buf += data.decode("utf-8", "replace")
        buf = buf.replace("\r\n", "\n")
        while True:
            i = buf.find("\n\n")
            if i < 0:
                break
            block, buf = buf[:i], buf[i + 2:]
            ev = _sse_block(block, t)
            if ev:
                events.append(ev)
    if buf.strip():
        ev = _sse_block(buf.strip("\n"), pieces[-1][0] if pieces else 0.0)
        if ev:
            ev.partial = True
            events.append(ev)
    return events


def _sse_block(block, t):
    name, data = None, []
    for line in block.split("\n"):
        if not line or line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
    if not data and name is None:
        return None
    return Event(t, name, "\n".join(data) if data else None)


class HttpResp(RespBase):
    """A response as Conn read it."""

    def __init__(self):
        self.status = 0
        self.reason = ""
        self.version = ""
        self.header_list = []     # (name, value) as sent
        self.headers = {}         # lower-case name -> values joined with ", "
        self.body = b""
        self.pieces = []          # (seconds since the request was sent, bytes) as body data arrived
        self.complete = False     # body fully read according to its framing
        self.closed = False       # body ended by the connection's close
        self.t_head = None        # seconds from the request's send to its head
        self.t_end = None         # seconds from the request's send to the end of the response
        self._events = None

    @property
    def events(self):
        """The SSE events of the body (read so far), as Event objects."""
        if self._events is None:
            self._events = parse_sse(self.pieces)
        return self._events

    def __repr__(self):
        return "<HTTP %d %s; headers %r; body %s>" % (self.status, self.reason, self.headers,
                                                     snip(self.body))


def build_request(port, method, path, body=None, headers=None, key="sk-test", close=False, host=None):
    """The bytes of one request: Host 127.0.0.1:port (or `host`), Authorization: Bearer key
    (none if key is None), the headers in order, Content-Type (application/json unless given)
    and Content-Length when there is a body (dict/list -> JSON), Connection: close if asked."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    elif isinstance(body, str):
        body = body.encode()
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: %s" % (host or "127.0.0.1:%d" % port)]
    if key:
        lines.append("Authorization: Bearer %s" % key)
    hdrs = dict(headers or {})
    for k, v in hdrs.items():
        lines.append("%s: %s" % (k, v))
    if body is not None:
        if not any(k.lower() == "content-type" for k in hdrs):
            lines.append("Content-Type: application/json")
        lines.append("Content-Length: %d" % len(body))
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


class Conn:
    """One client connection to 127.0.0.1:port, plain or TLS (tls: an ssl.SSLContext; sni:
    the name it asks for), or around a socket already connected (sock). Timeouts are
    nominal seconds, scaled by TOL (`timeout` is the default of every read), except
    wait_closed's. Every wait is bounded; a timeout or an unexpected close fails with what
    was being waited for and what had arrived.

      send(data, mark=True)   bytes as they are (mark: t = 0 for the response's times)
      drip(data, gap)         then these bytes one at a time, whenever `gap` s pass with
                              nothing to read, while the reads below wait
      read_response(method, timeout, until)   one final response (1xx skipped); the body by
                              Content-Length, chunked or close; until(events) returning
                              True after a body piece stops there (SSE event by event; the
                              rest of that body stays unread: close the connection after)
      read_head(timeout)      only a head (100 Continue included); read_body(r, ...) its body
      read_until(needle)      until bytes arrive (left unread); read_all(): until the close
      readable(wait), wait_closed(seconds), shutdown_write(), close(rst=False)
    The socket is .sock; bytes received and not yet parsed are .buf."""

    def __init__(self, port, timeout=10.0, sock=None, tls=None, sni="localhost", rcvbuf=None):
        self.port = port
        self.timeout = timeout * TOL
        self.buf = b""
        self.eof = False
        self.reset = False
        self.t0 = time.monotonic()
        self._drip, self._gap = b"", 0.3
        if sock is None:
            sock = socket.socket()
            try:
                if rcvbuf:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
                sock.settimeout(self.timeout)
                sock.connect(("127.0.0.1", port))
            except OSError as e:
                sock.close()
                raise Fail("cannot connect to 127.0.0.1:%d: %s" % (port, e))
        sock.settimeout(self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_hostname=sni)
            except (OSError, ssl.SSLError) as e:
                sock.close()
                raise Fail("TLS handshake with 127.0.0.1:%d (as %s) failed: %s" % (port, sni, e))
        self.sock = sock

    # -- out
    def send(self, data, mark=True):
        if mark:
            self.t0 = time.monotonic()
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise Fail("sending to 127.0.0.1:%d failed: %s" % (self.port, e))

    def drip(self, data, gap=0.3):
        self._drip, self._gap = data, gap

    def shutdown_write(self):
        """Half-close: no more bytes from us; reading goes on."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            raise Fail("half-closing the connection to 127.0.0.1:%d failed: %s" % (self.port, e))

    def close(self, rst=False):
        try:
            if rst:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
        except OSError:
            pass

    # -- in, low level
    def _deadline(self, timeout):
        return time.monotonic() + (timeout * TOL if timeout else self.timeout)

    def _timed_out(self, what):
        return Fail("timed out waiting for %s (got so far: %s)" % (what, snip(self.buf, 200)))

    def _gone(self):
        return "reset" if self.reset else "closed"

    def _recv(self, deadline, what):
        """More bytes into self.buf: True, or False at EOF or reset (self.eof, self.reset)."""
        while self._drip:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._timed_out(what)
            if self._ready(min(left, self._gap)):
                break
            try:
                self.sock.sendall(self._drip[:1])
            except OSError:
                pass
            self._drip = self._drip[1:]
        left = deadline - time.monotonic()
        if left <= 0:
            raise self._timed_out(what)
        self.sock.settimeout(left)
        try:
            d = self.sock.recv(65536)
        except socket.timeout:
            raise self._timed_out(what)
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError) as e:
            self.reset = isinstance(e, ConnectionResetError)
            self.eof = True
            return False
        except OSError as e:
            raise Fail("reading %s: %s" % (what, e))
        if not d:
            self.eof = True
            return False
        self.buf += d
        return True

    def _read_line(self, deadline, what):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[:i + 1], self.buf[i + 1:]
                return line.rstrip(b"\r\n")
            if not self._recv(deadline, what):
                raise Fail("connection %s while reading %s (got %s)" % (self._gone(), what, snip(self.buf, 200)))

    def _read_exact(self, n, deadline, what):
        while len(self.buf) < n:
            if not self._recv(deadline, what):
                raise Fail("connection %s while reading %s: wanted %d bytes, have %d" % (
                    self._gone(), what, n, len(self.buf)))
        d, self.buf = self.buf[:n], self.buf[n:]
        return d

    def readable(self, wait):
        """True if data or EOF is ready within `wait` seconds."""
        return bool(self.buf) or self._ready(wait)

    def _ready(self, wait):
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        try:
            r, _, _ = select.select([self.sock], [], [], wait)
        except (OSError, ValueError):
            return True
        return bool(r)

    def read_until(self, needle, timeout=None, what=None):
        """Read until `needle` is among the unread bytes; returns them (left unread)."""
        deadline = self._deadline(timeout)
        what = what or repr(needle)
        while needle not in self.buf:
            if not self._recv(deadline, what):
                raise Fail("connection %s while waiting for %s (got %s)" % (self._gone(), what, snip(self.buf, 200)))
        return self.buf

    def read_all(self, timeout=None, what="the connection to close"):
        """Everything until the peer closes (a reset counts as the close)."""
        deadline = self._deadline(timeout)
        while self._recv(deadline, what):
            pass
        d, self.buf = self.buf, b""
        return d

    def wait_closed(self, timeout):
        """Wait up to `timeout` s (not scaled) for EOF, a reset or a TLS failure, discarding
        what arrives; returns (closed, seconds waited)."""
        t = time.monotonic()
        deadline = t + timeout
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                return False, time.monotonic() - t
            self.sock.settimeout(left)
            try:
                d = self.sock.recv(65536)
            except socket.timeout:
                return False, time.monotonic() - t
            except OSError:          # reset, or a TLS alert / broken record: the peer dropped us
                break
            if not d:
                break
        self.eof = True
        self.buf = b""
        return True, time.monotonic() - t

    # -- responses
    def read_head(self, timeout=None):
        """One response head (a 1xx too); the body is left unread."""
        return self._read_head(self._deadline(timeout))

    def _read_head(self, deadline):
        r = HttpResp()
        while True:
            i = self.buf.find(b"\r\n\r\n")
            j = self.buf.find(b"\n\n")
            if i >= 0 and (j < 0 or i < j):
                raw, self.buf = self.buf[:i], self.buf[i + 4:]
                break
            if j >= 0:
                raw, self.buf = self.buf[:j], self.buf[j + 2:]
                break
            if not self._recv(deadline, "response head"):
                raise Fail("connection %s before a complete response head (got %d bytes: %s)" % (
                    self._gone(), len(self.buf), snip(self.buf, 200)))
        r.t_head = time.monotonic() - self.t0
        lines = raw.decode("latin-1").replace("\r\n", "\n").split("\n")
        m = re.match(r"(HTTP/1\.[01]) (\d{3})(?: (.*))?$", lines[0])
        if not m:
            raise Fail("bad status line %r" % lines[0][:200])
        r.version, r.status, r.reason = m.group(1), int(m.group(2)), m.group(3) or ""
        for ln in lines[1:]:
            if ":" not in ln:
                raise Fail("bad response header line %r" % ln[:200])
            k, v = ln.split(":", 1)
            k, v = k.strip(), v.strip()
            r.header_list.append((k, v))
            lk = k.lower()
            r.headers[lk] = r.headers[lk] + ", " + v if lk in r.headers else v
        return r

    def read_response(self, method="GET", timeout=None, until=None):
        """Read one final response (1xx responses are skipped). `until(events)` returning
        True stops reading the body early (the response then has complete=False)."""
        deadline = self._deadline(timeout)
        while True:
            r = self._read_head(deadline)
            if r.status >= 200:
                break
        return self._read_body(r, method, deadline, until)

    def read_body(self, r, method="GET", timeout=None, until=None):
        """The body of the response whose head read_head returned, as read_response does."""
        return self._read_body(r, method, self._deadline(timeout), until)

    def _read_body(self, r, method, deadline, until):
        body = []

        def piece(d):
            body.append(d)
            r.pieces.append((time.monotonic() - self.t0, d))
            if until is not None:
                r._events = None
                return bool(until(r.events))
            return False

        te = r.h("transfer-encoding", "").lower()
        cl = r.h("content-length")
        if method == "HEAD" or r.status in (204, 304):
            r.complete = True
        elif "chunked" in te:
            while True:
                line = self._read_line(deadline, "chunk size")
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise Fail("bad chunk size line %r" % line[:80])
                if size == 0:
                    while self._read_line(deadline, "chunked trailer") != b"":
                        pass
                    r.complete = True
                    break
                d = self._read_exact(size, deadline, "chunk data")
                if self._read_exact(2, deadline, "chunk CRLF") != b"\r\n":
                    raise Fail("chunk data not followed by CRLF")
                if piece(d):
                    break
        elif cl is not None:
            try:
                n = int(cl)
            except ValueError:
                raise Fail("bad Content-Length %r" % cl)
            got = 0
            while got < n:
                if not self.buf and not self._recv(deadline, "response body (%d of %d bytes)" % (got, n)):
                    raise Fail("connection %s after %d of %d body bytes" % (self._gone(), got, n))
                d, self.buf = self.buf[:n - got], self.buf[n - got:]
                got += len(d)
                if piece(d):
                    break
            r.complete = got >= n
        else:
            if "close" not in r.h("connection", "").lower():
                what = "close-delimited body (response has no Content-Length, no chunked " \
                       "encoding and no Connection: close)"
            else:
                what = "close-delimited body"
            stopped = False
            while True:
                if self.buf:
                    d, self.buf = self.buf, b""
                    if piece(d):
                        stopped = True
                        break
                if not self._recv(deadline, what):
                    break
            r.complete = r.closed = not stopped
        r.body = b"".join(body)
        r._events = None
        r.t_end = time.monotonic() - self.t0
        return r


def http_request(port, method, path, body=None, headers=None, key="sk-test", timeout=10, until=None,
                 close=False, host=None, tls=None, sni="localhost"):
    """One request (build_request) on its own Conn; its response (Conn.read_response)."""
    c = Conn(port, timeout, tls=tls, sni=sni)
    try:
        c.send(build_request(port, method, path, body, headers, key, close, host))
        return c.read_response(method, timeout, until)
    finally:
        c.close()


# =======================================================================================
# HTTP on one connection per request, shared by the acct and workers suites

class Resp(RespBase):
    def __init__(self, status, headers, body, t_done):
        self.status = status
        self.headers = headers
        self.body = body
        self.t_done = t_done          # time.monotonic() when the body was complete

    def events(self):
        """The data: payloads of an SSE body, JSON-decoded where possible."""
        out = []
        for d in sse_events(self.body):
            try:
                out.append(json.loads(d))
            except ValueError:
                out.append(d)
        return out


def request(port, method, path, body=None, key=None, headers=None, timeout=10):
    """One request on its own connection; raises OSError/HTTPException on transport errors."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    hd = {"Connection": "close"}
    if key:
        hd["Authorization"] = "Bearer " + key
    if body is not None:
        hd["Content-Type"] = "application/json"
    hd.update(headers or {})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout * TOL)
    try:
        c.request(method, path, body=body, headers=hd)
        r = c.getresponse()
        data = r.read()
        return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, data, time.monotonic())
    finally:
        c.close()


def expect_status(r, want, what):
    want = want if isinstance(want, (tuple, list, set)) else (want,)
    if r.status not in want:
        raise Fail("%s: expected status %s, got %d; body %s" % (
            what, "/".join(map(str, want)), r.status, snip(r.body)))


def chat_body(model, content="Hello", stream=False, **extra):
    b = {"model": model, "messages": [{"role": "user", "content": content}]}
    if stream:
        b["stream"] = True
    b.update(extra)
    return b


class KeyClient:
    """Requests to a gateway at self.port on fresh connections, with a client key."""

    def get(self, path, key=None, **kw):
        return request(self.port, "GET", path, key=key, **kw)

    def post(self, path, body, key=None, **kw):
        return request(self.port, "POST", path, body, key=key, **kw)

    def chat(self, key, model, content="Hello", stream=False, timeout=10, **extra):
        return self.post("/v1/chat/completions", chat_body(model, content, stream, **extra), key=key,
                         timeout=timeout)

    def key_info(self, key):
        r = self.get("/v1/key", key=key)
        expect_status(r, 200, "GET /v1/key")
        d = r.json().get("data")
        check(isinstance(d, dict), "GET /v1/key: no data object: %s" % snip(r.body))
        return d

    def wait_key(self, key, cond, what, wait=5):
        deadline = time.monotonic() + wait * TOL
        while True:
            d = self.key_info(key)
            if cond(d):
                return d
            if time.monotonic() > deadline:
                raise Fail("timed out waiting for %s; /v1/key says %r" % (what, d))
            time.sleep(0.02)

def budget_race(g, body, key, budget, res, cost, seconds, clients=40, hint=""):
    """clients threads POST body with key against a small budget until it is used up (the
    acct and workers suites): returns (oks, refusals), oks as (start, done, cost). Checks no
    unexpected answers, some 200s and some 402s, every cost as expected, the settled spend
    within the budget, nothing left in flight, /v1/key agreeing, and that requests overlapped."""
    lock = threading.Lock()
    oks, refusals, errors = [], [], []
    stop_at = time.monotonic() + seconds * TOL

    def client():
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            try:
                r = g.post("/v1/chat/completions", body, key=key, timeout=15)
            except (OSError, http.client.HTTPException) as e:
                with lock:
                    errors.append(repr(e))
                return
            with lock:
                if r.status == 200:
                    oks.append((t0, r.t_done, r.json()["usage"]["cost"]))
                elif r.status == 402:
                    refusals.append(r.json()["error"]["message"])
                else:
                    errors.append("status %d: %s" % (r.status, snip(r.body, 200)))
                    return
            if r.status == 402:
                m = re.search(r": ([0-9.]+) USD spent this period, ([0-9.]+) USD held", r.text)
                if m and float(m.group(2)) == 0 and float(m.group(1)) + res > budget:
                    return      # nothing in flight and the rest does not fit: exhausted
                time.sleep(0.05)
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.1, stop_at + 20 * TOL - time.monotonic()))
    check(not any(t.is_alive() for t in threads), "clients did not finish")
    check(not errors, "unexpected answers: %r" % errors[:5])
    spent = sum(c for _, _, c in oks)
    check(oks and refusals, "expected some 200s and some 402s: %d 200s, %d 402s" % (len(oks), len(refusals)))
    for c in (c for _, _, c in oks):
        near(c, cost, "cost of each 200")
    check(spent <= budget + 1e-12, "sum of the 200s' costs %.6f exceeds the budget %.6f (%d requests)%s"
          % (spent, budget, len(oks), hint))
    check(spent <= budget + res, "sum of the 200s' costs exceeds budget + one reservation")
    d = g.wait_key(key, lambda d: d["remaining"]["in_flight"] == 0, "no request in flight")
    near(d.get("usage"), spent, "/v1/key usage = sum of the costs of the 200s")
    check(d["usage"] <= budget + 1e-12, "/v1/key usage %r exceeds the budget" % d["usage"])
    eq(d["budget"].get("reserved"), 0, "reserved after everything settled")
    # overlap really happened: some 200s were in flight at the same time
    peak = max(sum(1 for a, b, _ in oks if a <= t < b) for t, _, _ in oks)
    check(peak >= 2, "the slow requests never overlapped (peak %d in flight)" % peak)
    # the budget was used up as far as reservations allow
    check(spent + res > budget, "clients stopped while the budget still had room: spent %g" % spent)
    return oks, refusals


def run_gw(args, timeout=10, env=None):
    """Run the gateway binary to completion (--help, -t ...)."""
    if not os.path.isfile(GW):
        raise Fail("gateway binary %s not found (build it first)" % GW)
    try:
        return subprocess.run(WRAP + [GW] + args, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout * TOL, cwd=tempfile.gettempdir(), env=env)
    except subprocess.TimeoutExpired:
        raise Fail("%s %s did not exit within %gs" % (GW, " ".join(args), timeout * TOL))


# =======================================================================================
# runner

class Suite:
    """What differs between the suites' runners. `g` is the suite's globals(): tests are its
    test_* functions; its MOCK (if any) has its stderr shown on failure, its SHARED (if any)
    gets test_shared_gateway_clean_exit run at the end."""

    def __init__(self, g, description, default_limit=30, mock_label="mock upstream",
                 time_fails=False, shared_exit=True, hidden=(), list_tail=(), add_args=None,
                 select=None, list_line=None, setup=None, teardown=None, epilogue=None):
        self.g = g
        self.file = g["__file__"]
        self.description = description
        self.default_limit = default_limit
        self.mock_label = mock_label
        self.time_fails = time_fails
        self.shared_exit = shared_exit
        self.hidden = hidden            # test_* names not discovered (run at the end instead)
        self.list_tail = list_tail      # names --list prints after the discovered ones
        self.add_args = add_args        # fn(argparse parser)
        self.select = select            # fn(args, tests) -> (tests, state for epilogue)
        self.list_line = list_line      # fn(name) -> --list line
        self.setup = setup              # fn() -> None, or an exit status to stop with
        self.teardown = teardown        # fn(); default: stop MOCK
        self.epilogue = epilogue        # fn(state) before the totals line

    def mock(self):
        return self.g.get("MOCK")

    def run_test(self, name, fn):
        global CTX
        m = self.mock()
        CTX = self.g["CTX"] = TestCtx(name, m.stderr_size() if m is not None else 0)
        files = (os.path.abspath(self.file), os.path.abspath(__file__))
        box = {}

        def target():
            try:
                fn()
                box["ok"] = True
            except Fail as e:
                # an assertion: where in the tests it fired is enough
                box["error"] = e
                box["tb"] = "".join("  at %s:%d in %s: %s\n" % (os.path.basename(f.filename), f.lineno,
                                                                 f.name, (f.line or "").strip())
                                    for f in traceback.extract_tb(e.__traceback__)
                                    if os.path.abspath(f.filename) in files
                                    and f.name not in ("target",))
            except BaseException as e:
                box["error"] = e
                box["tb"] = traceback.format_exc()
        lim = getattr(fn, "limit", self.default_limit) * (3 if WRAP else 1)
        t0 = time.monotonic()
        th = threading.Thread(target=target, daemon=True)
        th.start()
        th.join(lim)
        if th.is_alive():
            box["error"] = Fail("timed out after %gs" % lim)
            frame = sys._current_frames().get(th.ident)
            box["tb"] = "".join(traceback.format_stack(frame)) if frame else ""
        ctx = CTX
        for g in ctx.gateways:      # dedicated gateways must exit 0 on SIGTERM
            try:
                if g.alive():
                    g.stop(10)
            except Fail as e:
                if "error" not in box:
                    box["error"], box["tb"] = e, ""
            finally:
                g.kill()
        for c in reversed(ctx.cleanups):
            try:
                c()
            except Exception:
                pass
        el = time.monotonic() - t0
        for note in ctx.notes:
            print(note, flush=True)
        if "error" not in box:
            print("PASS %s" % name + ("  [%.2fs]" % el if VERBOSE else ""), flush=True)
            for g in ctx.gateways:
                shutil.rmtree(g.dir, ignore_errors=True)
            return True
        e = box["error"]
        reason = str(e).split("\n")[0] if str(e) else type(e).__name__
        print("FAIL %s: %s" % (name, reason) + ("  [%.2fs]" % el if VERBOSE and self.time_fails else ""),
              flush=True)
        out = []
        if box.get("tb"):
            out.append(box["tb"].rstrip())
        if "\n" in str(e):
            out.append(str(e))
        for g in ctx.gateways:
            out.append("--- gateway stderr (%s) ---\n%s" % (g.dir, g.stderr()[-4000:].rstrip() or "(empty)"))
        for g, mark in ctx.marks:
            out.append("--- shared gateway stderr during this test ---\n%s" % (
                g.stderr()[mark:][-4000:].rstrip() or "(empty)"))
        m = self.mock()
        if m is not None and m.stderr_size() > ctx.mock_mark:
            out.append("--- %s stderr ---\n%s" % (self.mock_label,
                                                  read_file(m.stderr_path)[ctx.mock_mark:][-2000:]))
        print("    " + "\n".join(out).replace("\n", "\n    "), flush=True)
        return False

    def main(self):
        global GW, VERBOSE
        ap = argparse.ArgumentParser(description=self.description)
        ap.add_argument("-k", action="append", default=[], metavar="SUBSTR",
                        help="run only tests whose name contains SUBSTR (repeatable)")
        ap.add_argument("--gw", default=None, help="gateway binary (default: ROOT/llmgw)")
        ap.add_argument("--list", action="store_true", help="list the tests and exit")
        if self.add_args:
            self.add_args(ap)
        ap.add_argument("-v", "--verbose", action="store_true", help="print timings")
        a = ap.parse_args()
        VERBOSE = self.g["VERBOSE"] = a.verbose
        if a.gw:
            GW = self.g["GW"] = os.path.abspath(a.gw)
        tests = [(n, f) for n, f in list(self.g.items())
                 if n.startswith("test_") and callable(f) and n not in self.hidden]
        if a.k:
            tests = [(n, f) for n, f in tests if any(k in n for k in a.k)]
        if a.list:
            for n, _ in tests:
                print(self.list_line(n) if self.list_line else n)
            for n in self.list_tail:
                print(n)
            return 0
        if not tests:
            print("no test matches %r" % a.k, file=sys.stderr)
        state = None
        if self.select:
            tests, state = self.select(a, tests)
        if not os.path.isfile(GW):
            print("NOTE: gateway binary %s not found; build it or pass --gw" % GW, flush=True)
        passed = failed = 0
        t0 = time.monotonic()
        try:
            if self.setup:
                rc = self.setup()
                if rc is not None:
                    return rc
            for n, f in tests:
                if self.run_test(n, f):
                    passed += 1
                else:
                    failed += 1
            if self.shared_exit and self.g.get("SHARED") is not None:
                # a -k selection used the shared gateway without its exit check: check it now, so
                # runs under valgrind/ASan still see the gateway's exit status
                if self.run_test("test_shared_gateway_clean_exit", self.g["test_shared_gateway_clean_exit"]):
                    passed += 1
                else:
                    failed += 1
        finally:
            if self.shared_exit and self.g.get("SHARED") is not None:
                self.g["SHARED"].kill()
            if self.teardown:
                self.teardown()
            else:
                m = self.mock()
                if m is not None:
                    m.stop()
                    shutil.rmtree(m.dir, ignore_errors=True)
        if self.epilogue:
            self.epilogue(state)
        if VERBOSE:
            print("(%.1fs)" % (time.monotonic() - t0))
        print("%d passed, %d failed" % (passed, failed), flush=True)
        return 1 if failed else 0


def main(g, description, **kw):
    """Run the suite whose globals are g; returns the exit status."""
    return Suite(g, description, **kw).main()
