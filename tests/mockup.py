#!/usr/bin/env python3
"""Scripted mock OpenAI-compatible upstream for llmgw's tests.

    python3 tests/mockup.py --port 0      # prints "PORT <n>", serves until killed
    python3 tests/mockup.py --port 0 --tls CERT KEY   # the same over HTTPS
    python3 tests/mockup.py --port 0 --close          # Connection: close on every response

Raw sockets (not http.server) so every byte on the wire is ours to choose; one thread
per connection; HTTP/1.1 keep-alive with Content-Length and chunked request bodies.

The behaviour of POST .../chat/completions and .../embeddings is chosen by the `model`
field of the request body (llmgw rewrites the public model name to the target's upstream
model, so a test config maps public models to scenario names).  Anything after a `#` is
ignored: `ok#2` behaves as `ok`, and a test can tell targets apart by the model they got.
See SCENARIOS below and tests/README.md.

Control paths (never forwarded by the gateway; tests call them directly):
    GET  /_requests    every recorded request as a JSON list:
                       {serial, seq, method, path, version, headers{lowercase: value},
                        header_list[[name, value]], body, t}
                       `serial` numbers the TCP connection (same serial = reused connection),
                       `seq` counts requests on that connection from 1.
                       With --tls each entry also has `tls`: {version, cipher, sni,
                       session_reused} of its connection (session_reused: the handshake
                       resumed an earlier TLS session).
    POST /_reset       forget the recorded requests
    POST /_close_idle  close every connection that is waiting for its next request
                       (simulates an upstream idle timeout, to make pooled connections stale)
"""
import argparse
import base64
import json
import re
import socket
import ssl
import struct
import sys
import threading
import time

TEXT_PIECES = ["Hello", " from", " mock", " up", "stream"]
TEXT = "".join(TEXT_PIECES)                      # "Hello from mock upstream"
SLOW_PIECES = ["tick%d " % i for i in range(10)]
SLOW_TEXT = "".join(SLOW_PIECES)
SLOW_GAP = 0.2                                   # seconds between slow-stream events
HOLD = 30.0                                      # how long stall scenarios hold a connection
IDLE = 60.0                                      # keep-alive idle limit of the mock
MAX_HEAD = 256 * 1024
USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18,
         "prompt_tokens_details": {"cached_tokens": 0},
         "completion_tokens_details": {"reasoning_tokens": 0}}

REASONS = {100: "Continue", 200: "OK", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 413: "Payload Too Large", 422: "Unprocessable Entity",
           429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
           503: "Service Unavailable", 504: "Gateway Timeout", 529: "Site Overloaded"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 408: "timeout_error",
               429: "rate_limit_error", 529: "overloaded_error"}

VERBOSE = False
TLS_CTX = None                                   # --tls: the server's ssl.SSLContext
CLOSE_ALL = False                                # --close: one response per connection


def log(*a):
    if VERBOSE:
        print("mockup:", *a, file=sys.stderr, flush=True)


class ClientGone(Exception):
    pass


class BadRequest(Exception):
    pass


# ---------------------------------------------------------------------------------------
# shared state

class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = []
        self.serial = 0
        self.conns = {}            # serial -> Conn

    def next_serial(self):
        with self.lock:
            self.serial += 1
            return self.serial

    def record(self, entry):
        with self.lock:
            self.requests.append(entry)

    def snapshot(self):
        with self.lock:
            return list(self.requests)

    def reset(self):
        with self.lock:
            self.requests = []

    def close_idle(self, except_serial):
        with self.lock:
            victims = [c for s, c in self.conns.items() if c.idle and s != except_serial]
        for c in victims:
            c.kill()
        return len(victims)


STATE = State()


# ---------------------------------------------------------------------------------------
# one connection

class Request:
    def __init__(self, method, target, version, header_list, body):
        self.method = method
        self.target = target
        self.path = target.split("?", 1)[0]
        self.version = version
        self.header_list = header_list
        self.headers = {}
        for k, v in header_list:
            k = k.lower()
            self.headers[k] = self.headers[k] + ", " + v if k in self.headers else v
        self.body = body

    def wants_close(self):
        conn = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" not in conn
        return "close" in conn


class Conn:
    def __init__(self, sock, serial):
        self.sock = sock
        self.serial = serial
        self.buf = b""
        self.idle = False
        self.dead = False
        self.seq = 0
        self.tls = None            # --tls: {version, cipher, sni, session_reused}

    # -- reading
    def _more(self):
        try:
            d = self.sock.recv(65536)
        except (socket.timeout, OSError) as e:
            raise ClientGone(str(e))
        if not d:
            raise ClientGone("eof")
        self.buf += d

    def read_line(self, limit=MAX_HEAD):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[:i + 1], self.buf[i + 1:]
                return line.rstrip(b"\r\n")
            if len(self.buf) > limit:
                raise BadRequest("line too long")
            self._more()

    def read_exact(self, n):
        while len(self.buf) < n:
            self._more()
        d, self.buf = self.buf[:n], self.buf[n:]
        return d

    def read_request(self):
        """Next request, or None on a clean EOF between requests."""
        self.idle = True
        self.sock.settimeout(IDLE)
        try:
            if not self.buf:
                try:
                    self._more()
                except ClientGone:
                    return None
        finally:
            self.idle = False
        self.sock.settimeout(HOLD)
        line = self.read_line()
        while line == b"":                     # tolerate stray CRLF between requests
            line = self.read_line()
        parts = line.decode("latin-1").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise BadRequest("bad request line %r" % line[:80])
        method, target, version = parts
        headers = []
        total = 0
        while True:
            h = self.read_line()
            total += len(h)
            if total > MAX_HEAD:
                raise BadRequest("headers too large")
            if h == b"":
                break
            if b":" not in h:
                raise BadRequest("bad header line %r" % h[:80])
            k, v = h.split(b":", 1)
            headers.append((k.decode("latin-1").strip(), v.decode("latin-1").strip()))
        req = Request(method, target, version, headers, b"")
        if "100-continue" in req.headers.get("expect", "").lower():
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        te = req.headers.get("transfer-encoding", "").lower()
        if "chunked" in te:
            body = []
            while True:
                size_line = self.read_line().split(b";", 1)[0].strip()
                try:
                    size = int(size_line, 16)
                except ValueError:
                    raise BadRequest("bad chunk size %r" % size_line[:40])
                if size == 0:
                    while self.read_line() != b"":     # trailers
                        pass
                    break
                body.append(self.read_exact(size))
                if self.read_exact(2) != b"\r\n":
                    raise BadRequest("chunk not followed by CRLF")
            req.body = b"".join(body)
        elif "content-length" in req.headers:
            try:
                n = int(req.headers["content-length"].split(",")[0])
            except ValueError:
                raise BadRequest("bad content-length")
            req.body = self.read_exact(n)
        self.seq += 1
        return req

    # -- writing
    def send(self, data):
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise ClientGone(str(e))

    def send_bytewise(self, data, delay=0.001):
        for i in range(len(data)):
            self.send(data[i:i + 1])
            time.sleep(delay)

    def hold(self, seconds=HOLD):
        """Wait until the peer closes or `seconds` pass, discarding what it sends."""
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            self.sock.settimeout(min(left, 1.0))
            try:
                if not self.sock.recv(65536):
                    return
            except socket.timeout:
                continue
            except OSError:
                return

    def reset(self):
        """Abort with a TCP RST."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close(graceful=False)

    def kill(self):
        """From another thread: make the serving thread see EOF and close."""
        self.dead = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self, graceful=True):
        self.dead = True
        if graceful and self.tls is not None:
            # TLS: send close_notify first. OpenSSL forgets the session of a connection
            # closed without it, and the client could not resume it.
            try:
                self.sock.settimeout(2.0)
                self.sock.unwrap()
            except (OSError, ValueError):
                pass
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------
# response building

def head(status, headers):
    lines = ["HTTP/1.1 %d %s" % (status, REASONS.get(status, "Status"))]
    lines += ["%s: %s" % kv for kv in headers]
    if CLOSE_ALL and not any(k.lower() == "connection" for k, _ in headers):
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def json_response(status, obj, extra=(), close=False):
    body = json.dumps(obj).encode()
    h = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    h += list(extra)
    if close:
        h.append(("Connection", "close"))
    return head(status, h) + body


def error_obj(status, message=None, etype=None, code=None):
    if etype is None:
        etype = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message or "mock %d" % status, "type": etype,
                      "param": None, "code": code}}


def chunk(data):
    return b"%x\r\n" % len(data) + data + b"\r\n"


def sse(obj):
    if isinstance(obj, str):
        return ("data: %s\n\n" % obj).encode()
    return ("data: %s\n\n" % json.dumps(obj)).encode()


class Ctx:
    """One chat/embeddings request being answered."""
    _ids = 0
    _lock = threading.Lock()

    def __init__(self, conn, req, body):
        self.conn = conn
        self.req = req
        self.body = body if isinstance(body, dict) else {}
        self.model = str(self.body.get("model", ""))
        self.scenario = self.model.split("#", 1)[0]
        self.stream = self.body.get("stream") is True
        so = self.body.get("stream_options")
        self.include_usage = isinstance(so, dict) and so.get("include_usage") is True
        with Ctx._lock:
            Ctx._ids += 1
            self.id = "chatcmpl-mock-%d" % Ctx._ids
        self.created = int(time.time())

    def completion(self, text, usage=None):
        return {"id": self.id, "object": "chat.completion", "created": self.created,
                "model": self.model, "system_fingerprint": None,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text,
                                                     "refusal": None},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": usage or USAGE}

    def _chunk(self, delta, finish=None):
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None,
                             "finish_reason": finish}]}

    def events(self, pieces, usage=None):
        """The SSE events of a complete stream, as a list of bytes."""
        ev = [sse(self._chunk({"role": "assistant", "content": ""}))]
        ev += [sse(self._chunk({"content": p})) for p in pieces]
        ev.append(sse(self._chunk({}, "stop")))
        if self.include_usage:
            u = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                 "model": self.model, "system_fingerprint": None, "choices": [],
                 "usage": usage or USAGE}
            ev.append(sse(u))
        ev.append(sse("[DONE]"))
        return ev


SSE_HEAD = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]


def send_chunked_stream(c, events):
    c.conn.send(head(200, SSE_HEAD + [("Transfer-Encoding", "chunked")]))
    for e in events:
        c.conn.send(chunk(e))
    c.conn.send(b"0\r\n\r\n")
    return True


# ---------------------------------------------------------------------------------------
# scenarios: each takes a Ctx, writes the answer, returns True to keep the connection

def sc_ok(c):
    if c.stream:
        return send_chunked_stream(c, c.events(TEXT_PIECES))
    c.conn.send(json_response(200, c.completion(TEXT)))
    return True


def sc_ok_cl(c):
    if not c.stream:
        return sc_ok(c)
    c.conn.send(head(200, SSE_HEAD + [("Connection", "close")]))
    for e in c.events(TEXT_PIECES):
        c.conn.send(e)
    return False


def sc_ok_chunked(c):
    if c.stream:
        data = b"".join(c.events(TEXT_PIECES))
        h = head(200, SSE_HEAD + [("Transfer-Encoding", "chunked")])
    else:
        data = json.dumps(c.completion(TEXT)).encode()
        h = head(200, [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")])
    c.conn.send(h)
    sizes = [1, 7, 2, 13, 3, 31, 5, 64]
    i = k = 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        piece = data[i:i + n]
        if k % 3 == 1:       # uppercase hex and a chunk extension, both legal
            c.conn.send(b"%X;mock=ext\r\n" % len(piece) + piece + b"\r\n")
        else:
            c.conn.send(chunk(piece))
        i += n
        k += 1
        if k % 4 == 0:
            time.sleep(0.002)    # let some chunks travel in separate segments
    c.conn.send(b"0\r\n\r\n")
    return True


def sc_ok_close(c):
    if c.stream:
        return sc_ok_cl(c)
    body = json.dumps(c.completion(TEXT)).encode()
    c.conn.send(head(200, [("Content-Type", "application/json"), ("Connection", "close")]))
    c.conn.send(body)
    return False


def sc_onebyte(c):
    if c.stream:
        data = head(200, SSE_HEAD + [("Transfer-Encoding", "chunked")])
        data += b"".join(chunk(e) for e in c.events(TEXT_PIECES)) + b"0\r\n\r\n"
    else:
        data = json_response(200, c.completion(TEXT))
    c.conn.send_bytewise(data)
    return True


def sc_slow_stream(c):
    if not c.stream:
        time.sleep(1.0)
        c.conn.send(json_response(200, c.completion(SLOW_TEXT)))
        return True
    ev = c.events(SLOW_PIECES)
    c.conn.send(head(200, SSE_HEAD + [("Transfer-Encoding", "chunked")]))
    c.conn.send(chunk(ev[0]))
    for i, e in enumerate(ev[1:1 + len(SLOW_PIECES)]):
        if i:
            time.sleep(SLOW_GAP)
        c.conn.send(chunk(e))
    for e in ev[1 + len(SLOW_PIECES):]:
        c.conn.send(chunk(e))
    c.conn.send(b"0\r\n\r\n")
    return True


def sc_stall(c):
    c.conn.hold()
    return False


def _partial(c):
    """Head and the first two events (stream) or half the body (non-stream)."""
    if c.stream:
        ev = c.events(TEXT_PIECES)
        c.conn.send(head(200, SSE_HEAD + [("Transfer-Encoding", "chunked")]))
        c.conn.send(chunk(ev[0]))
        c.conn.send(chunk(ev[1]))
    else:
        body = json.dumps(c.completion(TEXT)).encode()
        c.conn.send(head(200, [("Content-Type", "application/json"),
                               ("Content-Length", str(len(body)))]))
        c.conn.send(body[:len(body) // 2])


def sc_stall_mid(c):
    _partial(c)
    c.conn.hold()
    return False


def sc_reset_mid(c):
    _partial(c)
    time.sleep(0.2)
    c.conn.reset()
    return False


def sc_close_before_head(c):
    c.conn.close()
    return False


def sc_quota(c):
    c.conn.send(json_response(429, error_obj(
        429, "You exceeded your current quota (mock)", "insufficient_quota",
        "insufficient_quota")))
    return True


def sc_echo(c):
    text = c.req.body.decode("utf-8", "replace")
    if c.stream:
        n = max(1, len(text) // 3)
        return send_chunked_stream(c, c.events([text[i:i + n] for i in range(0, len(text), n)]))
    c.conn.send(json_response(200, c.completion(text)))
    return True


# Usage shapes for the accounting tests: the `ok` reply with these usage objects.
USAGE_SHAPES = {
    # no prompt_tokens_details / completion_tokens_details at all
    "usage-plain": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    # OpenAI prompt caching: 60 of the 100 prompt tokens were read from the cache
    "usage-cached": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
                     "prompt_tokens_details": {"cached_tokens": 60}},
    # 30 of the 100 prompt tokens were written to the cache
    "usage-cache-write": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
                          "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 30}},
    # both: 50 read from the cache, 30 written, 20 plain
    "usage-cache-both": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
                         "prompt_tokens_details": {"cached_tokens": 50, "cache_write_tokens": 30},
                         "completion_tokens_details": {"reasoning_tokens": 5}},
}


def sc_usage_shape(c, usage):
    if c.stream:
        return send_chunked_stream(c, c.events(TEXT_PIECES, usage))
    c.conn.send(json_response(200, c.completion(TEXT, usage)))
    return True


def sc_usage_in_finish(c):
    """Stream whose usage rides on the finish chunk (choices not empty), sent whether or not
    the request asked for it, and no separate usage chunk (some providers do this)."""
    if not c.stream:
        return sc_ok(c)
    ev = [sse(c._chunk({"role": "assistant", "content": ""}))]
    ev += [sse(c._chunk({"content": p})) for p in TEXT_PIECES]
    fin = c._chunk({}, "stop")
    fin["usage"] = USAGE
    ev.append(sse(fin))
    ev.append(sse("[DONE]"))
    return send_chunked_stream(c, ev)


def sc_status(c, status):
    extra = [("Retry-After", "0")] if status == 429 else []
    c.conn.send(json_response(status, error_obj(status), extra))
    return True


SCENARIOS = {
    "ok": sc_ok,
    "ok-cl": sc_ok_cl,
    "ok-chunked": sc_ok_chunked,
    "ok-close": sc_ok_close,
    "onebyte": sc_onebyte,
    "slow-stream": sc_slow_stream,
    "stall": sc_stall,
    "stall-mid": sc_stall_mid,
    "reset-mid": sc_reset_mid,
    "close-before-head": sc_close_before_head,
    "quota": sc_quota,
    "echo": sc_echo,
    "usage-in-finish": sc_usage_in_finish,
}
for _s, _u in USAGE_SHAPES.items():
    SCENARIOS[_s] = (lambda u: lambda c: sc_usage_shape(c, u))(_u)
for _s in (400, 401, 403, 404, 408, 413, 422, 429, 500, 502, 503, 504, 529):
    SCENARIOS["status-%d" % _s] = (lambda s: lambda c: sc_status(c, s))(_s)


def status_scenario(name):
    m = re.fullmatch(r"status-(\d{3})", name)
    return int(m.group(1)) if m else None


# =======================================================================================
# ---- routing scenarios (tests/route_test.py) ---------------------------------- BEGIN
# Parameterized and switchable behaviours for the routing-engine tests:
#   slow-first-byte-MS  waits MS ms before the response head, then answers as `ok`
#                       (stream or not): a target with a long time to first token
#   drip-MS             a stream whose 5 content events come MS ms apart (non-stream: the
#                       `ok` reply after 5*MS ms); usage as `ok`: a slow-streaming target
#   ra429-S             429 rate_limit_error with `Retry-After: S` (seconds)
#   switch              behaves as the scenario set for its tag (the part after `#`) with
#                       POST /_switch; `ok` until set. `switch#a` and `switch#b` are
#                       independent, so a test can make one target fail, then recover.
# Control paths:
#   POST /_switch   JSON object {"TAG": "scenario name", ...}, merged into the table
#                   (a value null removes the tag); answers the whole table
#   GET  /_switch   the table

SWITCH = {}
SWITCH_LOCK = threading.Lock()


def sc_slow_first_byte(c, ms):
    time.sleep(ms / 1000.0)
    return sc_ok(c)


def sc_drip(c, ms):
    if not c.stream:
        time.sleep(5 * ms / 1000.0)
        return sc_ok(c)
    ev = c.events(TEXT_PIECES)
    c.conn.send(head(200, SSE_HEAD + [("Transfer-Encoding", "chunked")]))
    c.conn.send(chunk(ev[0]))
    for e in ev[1:1 + len(TEXT_PIECES)]:
        time.sleep(ms / 1000.0)
        c.conn.send(chunk(e))
    for e in ev[1 + len(TEXT_PIECES):]:
        c.conn.send(chunk(e))
    c.conn.send(b"0\r\n\r\n")
    return True


def sc_ra429(c, secs):
    c.conn.send(json_response(429, error_obj(429, "mock 429 (retry after %d s)" % secs),
                              [("Retry-After", str(secs))]))
    return True


PARAM_SCENARIOS = [
    (re.compile(r"slow-first-byte-(\d{1,6})"), lambda m: lambda c: sc_slow_first_byte(c, int(m.group(1)))),
    (re.compile(r"drip-(\d{1,5})"), lambda m: lambda c: sc_drip(c, int(m.group(1)))),
    (re.compile(r"ra429-(\d{1,6})"), lambda m: lambda c: sc_ra429(c, int(m.group(1)))),
]


def param_scenario(name):
    """The function of a parameterized scenario name, or None."""
    for rx, make in PARAM_SCENARIOS:
        m = rx.fullmatch(name)
        if m:
            return make(m)
    return None


def find_scenario(name):
    fn = SCENARIOS.get(name) or param_scenario(name)
    if fn is None and status_scenario(name) is not None:
        st = status_scenario(name)
        fn = lambda c: sc_status(c, st)
    return fn


def sc_switch(c):
    tag = c.model.split("#", 1)[1] if "#" in c.model else ""
    with SWITCH_LOCK:
        mode = SWITCH.get(tag, "ok")
    fn = find_scenario(mode.split("#", 1)[0]) if not mode.startswith("switch") else None
    if fn is None:
        c.conn.send(json_response(404, error_obj(
            404, "mock: switch tag %r is set to unknown scenario %r" % (tag, mode),
            "invalid_request_error", "model_not_found")))
        return True
    return fn(c)


SCENARIOS["switch"] = sc_switch


def ctl_switch(conn, req):
    if req.method == "POST":
        try:
            upd = json.loads(req.body.decode("utf-8", "replace") or "{}")
            if not isinstance(upd, dict):
                raise ValueError("not an object")
        except ValueError as e:
            conn.send(json_response(400, error_obj(400, "mock: /_switch wants a JSON object: %s" % e)))
            return True
        with SWITCH_LOCK:
            for k, v in upd.items():
                if v is None:
                    SWITCH.pop(str(k), None)
                else:
                    SWITCH[str(k)] = str(v)
    with SWITCH_LOCK:
        table = dict(SWITCH)
    conn.send(json_response(200, table))
    return True


CONTROL = {("POST", "/_switch"): ctl_switch, ("GET", "/_switch"): ctl_switch}


def route_selftest(port, req, expect):
    """--selftest checks of the routing scenarios (called by selftest())."""
    t = time.monotonic()
    r, data = req("slow-first-byte-300#s")
    el = time.monotonic() - t
    expect("slow-first-byte-300 (%.2fs)" % el, r.status == 200 and el >= 0.29 and
           json.loads(data)["choices"][0]["message"]["content"] == TEXT)
    t = time.monotonic()
    r, data = req("drip-60#s", stream=True, usage=True)
    el = time.monotonic() - t
    text = "".join((ch["delta"].get("content") or "") for l in data.decode().split("\n")
                   if l.startswith("data: {") for ch in json.loads(l[6:])["choices"])
    expect("drip-60 stream (%.2fs)" % el, r.status == 200 and text == TEXT and el >= 0.29 and
           data.count(b'"usage"') == 1 and data.rstrip().endswith(b"data: [DONE]"))
    r, data = req("ra429-7#s")
    expect("ra429-7", r.status == 429 and r.getheader("Retry-After") == "7")

    def switch(upd):
        c = connection(port, 5)
        c.request("POST", "/_switch", json.dumps(upd), {"Content-Type": "application/json"})
        rr = c.getresponse()
        return json.loads(rr.read())
    r, data = req("switch#st1")
    expect("switch default ok", r.status == 200)
    tab = switch({"st1": "status-503", "st2": "slow-first-byte-10"})
    r, data = req("switch#st1")
    r2, _ = req("switch#st2")
    expect("switch set", tab.get("st1") == "status-503" and r.status == 503 and r2.status == 200)
    switch({"st1": "ok"})
    r, data = req("switch#st1")
    expect("switch back to ok", r.status == 200)
    tab = switch({"st1": None, "st2": None})
    expect("switch table cleared", "st1" not in tab and "st2" not in tab and
           json.loads(urlopen_get(port, "/_switch")) == tab)
# ---- routing scenarios (tests/route_test.py) ------------------------------------ END


# =======================================================================================
# ---- hardening scenarios (tests/harden_test.py) ------------------------------- BEGIN
#   flood-N          a stream of N MB (1..64) of content events sent as fast as the
#                    gateway reads them (64 KB HTTP chunks): fills socket buffers and
#                    the gateway's high-water mark; non-stream: as `ok`
#   echo-key-401     401 in OpenAI's shape quoting the key of the request's Authorization
#                    ("Incorrect API key provided: <key>. You can find ...")
#   echo-masked-401  the same quoting a masked form of the key (MASK below)
#   echo-key-mid     stream: role chunk, 2 content chunks, then a data: {"error": ...}
#                    quoting the key, and the body ends (no [DONE]); non-stream: echo-key-401
#   notjson-mid      stream: role chunk, 2 content chunks, a `data: this is not json`
#                    event, the rest of the `ok` stream and [DONE]; non-stream: as `ok`

FLOOD_PIECE = "flood " * 170                     # ~1 KB of content per event
NOT_JSON = b"data: this is not json\n\n"


def mask_key(key):
    """How OpenAI quotes a key it refuses: the first 5 and last 4 characters around stars."""
    return key[:5] + "*" * max(4, len(key) - 9) + key[-4:]


def bad_key_message(key):
    return ("Incorrect API key provided: %s. You can find your API key at "
            "https://platform.openai.com/account/api-keys." % key)


def request_key(c):
    auth = c.req.headers.get("authorization", "")
    return auth[7:] if auth.lower().startswith("bearer ") else auth


def sc_flood(c, mb):
    if not c.stream:
        return sc_ok(c)
    ev = sse(c._chunk({"content": FLOOD_PIECE}))
    batch = ev * max(1, 65536 // len(ev))
    c.conn.send(head(200, SSE_HEAD + [("Transfer-Encoding", "chunked")]))
    c.conn.send(chunk(c.events([])[0]))
    for _ in range(-(-mb * (1 << 20) // len(batch))):     # at least N MB
        c.conn.send(chunk(batch))
    for e in c.events([])[1:]:
        c.conn.send(chunk(e))
    c.conn.send(b"0\r\n\r\n")
    return True


def sc_echo_key_401(c, masked=False):
    key = request_key(c)
    c.conn.send(json_response(401, error_obj(401, bad_key_message(mask_key(key) if masked else key),
                                             "invalid_request_error", "invalid_api_key")))
    return True


def sc_echo_key_mid(c):
    if not c.stream:
        return sc_echo_key_401(c)
    ev = c.events(TEXT_PIECES)
    c.conn.send(head(200, SSE_HEAD + [("Transfer-Encoding", "chunked")]))
    for e in ev[:3]:
        c.conn.send(chunk(e))
    c.conn.send(chunk(sse(error_obj(401, bad_key_message(request_key(c)), "invalid_request_error",
                                    "invalid_api_key"))))
    c.conn.send(b"0\r\n\r\n")
    return True


def sc_notjson_mid(c):
    if not c.stream:
        return sc_ok(c)
    ev = c.events(TEXT_PIECES)
    return send_chunked_stream(c, ev[:3] + [NOT_JSON] + ev[3:])


SCENARIOS.update({
    "echo-key-401": sc_echo_key_401,
    "echo-masked-401": lambda c: sc_echo_key_401(c, masked=True),
    "echo-key-mid": sc_echo_key_mid,
    "notjson-mid": sc_notjson_mid,
})
PARAM_SCENARIOS.append((re.compile(r"flood-([1-9]|[1-5][0-9]|6[0-4])"),
                        lambda m: lambda c: sc_flood(c, int(m.group(1)))))


def harden_selftest(port, expect):
    """--selftest checks of the hardening scenarios (called by selftest())."""
    key = "sk-selftest-0123456789"

    def post(model, stream=False):
        c = connection(port, 10)
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        c.request("POST", "/v1/chat/completions", json.dumps(body),
                  {"Content-Type": "application/json", "Authorization": "Bearer " + key})
        r = c.getresponse()
        return r, r.read()
    r, data = post("flood-1", stream=True)
    expect("flood-1 (%d bytes)" % len(data), r.status == 200 and len(data) >= 1 << 20 and
           data.rstrip().endswith(b"data: [DONE]"))
    r, data = post("echo-key-401")
    expect("echo-key-401", r.status == 401 and key in json.loads(data)["error"]["message"])
    r, data = post("echo-masked-401")
    msg = json.loads(data)["error"]["message"]
    expect("echo-masked-401", r.status == 401 and mask_key(key) in msg and key not in msg)
    r, data = post("echo-key-mid", stream=True)
    expect("echo-key-mid", r.status == 200 and key.encode() in data and b"[DONE]" not in data)
    r, data = post("notjson-mid", stream=True)
    expect("notjson-mid", r.status == 200 and NOT_JSON in data and data.rstrip().endswith(b"data: [DONE]"))
# ---- hardening scenarios (tests/harden_test.py) --------------------------------- END


def do_chat(conn, req, body):
    c = Ctx(conn, req, body)
    fn = SCENARIOS.get(c.scenario) or param_scenario(c.scenario)
    if fn is None:
        st = status_scenario(c.scenario)
        if st is not None:
            return sc_status(c, st)
        conn.send(json_response(404, error_obj(
            404, "mock: unknown scenario model %r (known: %s)" % (c.model, ", ".join(SCENARIOS)),
            "invalid_request_error", "model_not_found")))
        return True
    return fn(c)


def do_embeddings(conn, req, body):
    c = Ctx(conn, req, body)
    st = status_scenario(c.scenario)
    if st is not None:
        return sc_status(c, st)
    if c.scenario in ("stall", "close-before-head", "quota"):
        return SCENARIOS[c.scenario](c)
    inp = c.body.get("input")
    if isinstance(inp, str):
        inputs = [inp]
    elif isinstance(inp, list) and inp and all(isinstance(x, int) for x in inp):
        inputs = [inp]
    elif isinstance(inp, list) and inp:
        inputs = inp
    else:
        conn.send(json_response(400, error_obj(400, "mock: 'input' must be a string or a list")))
        return True
    b64 = c.body.get("encoding_format") == "base64"
    data, tokens = [], 0
    for i, x in enumerate(inputs):
        vec = [round(0.1 + 0.01 * i, 4), -0.2, 0.3, 0.4]
        emb = base64.b64encode(struct.pack("<4f", *vec)).decode() if b64 else vec
        data.append({"object": "embedding", "index": i, "embedding": emb})
        tokens += max(1, len(x.split())) if isinstance(x, str) else max(1, len(x))
    conn.send(json_response(200, {"object": "list", "data": data, "model": c.model,
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
    return True


def handle(conn, req):
    """Answer one request; True to keep the connection open."""
    path = req.path
    if path == "/_requests" and req.method == "GET":
        conn.send(json_response(200, STATE.snapshot()))
        return True
    if path == "/_reset" and req.method == "POST":
        STATE.reset()
        conn.send(json_response(200, {"ok": True}))
        return True
    if path == "/_close_idle" and req.method == "POST":
        n = STATE.close_idle(conn.serial)
        conn.send(json_response(200, {"ok": True, "closed": n}))
        return True
    ctl = CONTROL.get((req.method, path))          # routing scenarios' control paths
    if ctl is not None:
        return ctl(conn, req)
    text = req.body.decode("utf-8", "replace")
    entry = {"serial": conn.serial, "seq": conn.seq, "method": req.method,
             "path": req.target, "version": req.version, "headers": req.headers,
             "header_list": req.header_list, "body": text, "t": time.time()}
    if conn.tls is not None:
        entry["tls"] = conn.tls
    STATE.record(entry)
    log(conn.serial, req.method, req.target, text[:120])
    if req.method == "POST" and (path.endswith("/chat/completions") or path.endswith("/embeddings")):
        try:
            body = json.loads(text)
        except ValueError as e:
            conn.send(json_response(400, error_obj(400, "mock: body is not JSON: %s" % e)))
            return True
        if path.endswith("/embeddings"):
            return do_embeddings(conn, req, body)
        return do_chat(conn, req, body)
    if req.method == "GET" and path.endswith("/models"):
        conn.send(json_response(200, {"object": "list", "data": [
            {"id": s, "object": "model", "created": 0, "owned_by": "mock"} for s in SCENARIOS]}))
        return True
    conn.send(json_response(404, error_obj(404, "mock: no route for %s %s" % (req.method, path))))
    return True


SNI = threading.local()          # the server name of the handshake running in this thread


def _sni_callback(sslobj, server_name, ctx):
    SNI.name = server_name
    return None


def make_tls_context(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.sni_callback = _sni_callback
    return ctx


def tls_handshake(sock, serial):
    """Wrap an accepted socket in TLS (in the connection's own thread, so a slow or
    broken client delays nobody). None when the handshake fails."""
    SNI.name = None
    try:
        sock.settimeout(HOLD)
        ts = TLS_CTX.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        ts.do_handshake()
    except (OSError, ValueError) as e:
        log(serial, "TLS handshake failed:", repr(e))
        try:
            sock.close()
        except OSError:
            pass
        return None, None
    cipher = ts.cipher()
    info = {"version": ts.version(), "cipher": cipher[0] if cipher else None,
            "sni": SNI.name, "session_reused": bool(ts.session_reused)}
    log(serial, "TLS", info)
    return ts, info


def serve_conn(sock, serial):
    tls = None
    if TLS_CTX is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        sock, tls = tls_handshake(sock, serial)
        if sock is None:
            return
    conn = Conn(sock, serial)
    conn.tls = tls
    with STATE.lock:
        STATE.conns[serial] = conn
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while not conn.dead:
            try:
                req = conn.read_request()
            except BadRequest as e:
                conn.send(json_response(400, error_obj(400, "mock: %s" % e), close=True))
                break
            if req is None or conn.dead:
                break
            keep = handle(conn, req)
            if not keep or req.wants_close() or CLOSE_ALL:
                break
    except ClientGone:
        pass
    except Exception as e:          # a broken client must never kill the mock
        print("mockup: connection %d: %r" % (serial, e), file=sys.stderr, flush=True)
    finally:
        with STATE.lock:
            STATE.conns.pop(serial, None)
        conn.close()


def selftest(port):
    """Exercise every scenario against this mock; exit status 0 when all behave."""
    import http.client
    fails = []

    def req(model, stream=False, usage=False, path="/v1/chat/completions", timeout=5):
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        if stream:
            body["stream"] = True
        if usage:
            body["stream_options"] = {"include_usage": True}
        if path.endswith("embeddings"):
            body = {"model": model, "input": ["a", "b"]}
        c = connection(port, timeout)
        c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = c.getresponse()
        return r, r.read()

    def expect(name, cond):
        print("%s %s" % ("ok  " if cond else "FAIL", name))
        if not cond:
            fails.append(name)

    def content(data):
        text = ""
        for line in data.decode().split("\n"):
            if line.startswith("data: {"):
                for ch in json.loads(line[6:])["choices"]:
                    text += ch["delta"].get("content") or ""
        return text

    for sc in ("ok", "ok-cl", "ok-chunked", "ok-close", "onebyte", "slow-stream"):
        want = SLOW_TEXT if sc == "slow-stream" else TEXT
        r, data = req(sc + "#t")
        j = json.loads(data)
        expect("%s non-stream" % sc, r.status == 200 and j["choices"][0]["message"]["content"] == want
               and j["model"] == sc + "#t")
        r, data = req(sc, stream=True)
        expect("%s stream" % sc, r.status == 200 and content(data) == want and
               data.rstrip().endswith(b"data: [DONE]") and b'"usage"' not in data)
        r, data = req(sc, stream=True, usage=True)
        expect("%s stream with usage" % sc, content(data) == want and data.count(b'"usage"') == 1)
    for st in (400, 401, 404, 408, 429, 500, 502, 503, 504, 529):
        r, data = req("status-%d#x" % st)
        expect("status-%d" % st, r.status == st and json.loads(data)["error"]["message"] == "mock %d" % st
               and (st != 429 or r.getheader("Retry-After") == "0"))
    for sc, u in USAGE_SHAPES.items():
        r, data = req(sc)
        expect("%s non-stream" % sc, r.status == 200 and json.loads(data)["usage"] == u)
        r, data = req(sc, stream=True, usage=True)
        us = [json.loads(l[6:])["usage"] for l in data.decode().split("\n")
              if l.startswith("data: {") and '"usage"' in l]
        expect("%s stream" % sc, content(data) == TEXT and us == [u])
    for usage in (False, True):
        r, data = req("usage-in-finish", stream=True, usage=usage)
        fin = [json.loads(l[6:]) for l in data.decode().split("\n")
               if l.startswith("data: {") and '"usage"' in l]
        expect("usage-in-finish stream (include_usage %s)" % usage, content(data) == TEXT and
               len(fin) == 1 and fin[0]["choices"][0]["finish_reason"] == "stop")
    r, data = req("quota")
    expect("quota", r.status == 429 and json.loads(data)["error"]["code"] == "insufficient_quota")
    r, data = req("echo")
    expect("echo", json.loads(json.loads(data)["choices"][0]["message"]["content"])["model"] == "echo")
    r, data = req("anything", path="/v1/embeddings")
    expect("embeddings", r.status == 200 and len(json.loads(data)["data"]) == 2)
    for sc, stream in (("stall", False), ("stall-mid", True), ("reset-mid", True), ("close-before-head", False)):
        t = time.monotonic()
        try:
            r, data = req(sc, stream=stream, timeout=1)
            ok = b"[DONE]" not in data
        except (OSError, http.client.HTTPException):
            ok = True
        expect("%s fails (%.1fs)" % (sc, time.monotonic() - t), ok)
    reqs = json.loads(urlopen_get(port, "/_requests"))
    expect("requests recorded", len(reqs) > 30 and all("serial" in x and "headers" in x for x in reqs))
    if TLS_CTX is not None:
        expect("TLS details recorded", all(isinstance(x.get("tls"), dict) and x["tls"]["version"]
                                           for x in reqs))
    if CLOSE_ALL:
        expect("one request per connection (--close)",
               len({x["serial"] for x in reqs}) == len(reqs))
    else:
        c = connection(port, 5)
        serials = []
        for i in range(3):
            c.request("POST", "/v1/chat/completions",
                      json.dumps({"model": "ok#ka%d" % i, "messages": []}),
                      {"Content-Type": "application/json"})
            c.getresponse().read()
        for x in json.loads(urlopen_get(port, "/_requests")):
            if x["body"].find('"ok#ka') >= 0:
                serials.append(x["serial"])
        expect("keep-alive (3 requests, one connection)", len(serials) == 3 and len(set(serials)) == 1)
    route_selftest(port, req, expect)
    harden_selftest(port, expect)
    return 1 if fails else 0


def connection(port, timeout):
    """An http.client connection to this mock (TLS without verification under --tls)."""
    import http.client
    if TLS_CTX is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=ctx)
    return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)


def urlopen_get(port, path):
    c = connection(port, 5)
    c.request("GET", path)
    return c.getresponse().read()


def main():
    global VERBOSE, TLS_CTX, CLOSE_ALL
    ap = argparse.ArgumentParser(description="scripted mock OpenAI upstream")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--selftest", action="store_true", help="check every scenario and exit")
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"),
                    help="serve HTTPS with this PEM certificate (chain) and key")
    ap.add_argument("--close", action="store_true",
                    help="answer with Connection: close and close after every response")
    a = ap.parse_args()
    VERBOSE = a.verbose
    CLOSE_ALL = a.close
    if a.tls:
        TLS_CTX = make_tls_context(*a.tls)
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((a.host, a.port))
    ls.listen(256)
    if a.selftest:
        threading.Thread(target=accept_loop, args=(ls,), daemon=True).start()
        sys.exit(selftest(ls.getsockname()[1]))
    print("PORT %d" % ls.getsockname()[1], flush=True)
    accept_loop(ls)


def accept_loop(ls):
    while True:
        try:
            s, _ = ls.accept()
        except InterruptedError:
            continue
        except OSError as e:
            print("mockup: accept: %r" % e, file=sys.stderr, flush=True)
            time.sleep(0.05)
            continue
        t = threading.Thread(target=serve_conn, args=(s, STATE.next_serial()), daemon=True)
        t.start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
