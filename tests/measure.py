#!/usr/bin/env python3
"""Size and memory of llmgw, measured, per platform.

    python3 tests/measure.py                    # every platform whose binary is built
    python3 tests/measure.py native x86_64-musl mips
    python3 tests/measure.py --conns 100 --streams 100
    python3 tests/measure.py --memlimit 16384 --streams 50    # suite `memlimit` of tests/run.sh

Platforms: `native` is ./llmgw (the `make` build: glibc, dynamic, -O2 -g, not
stripped); the others are build/<target>/llmgw from `make cross` (static,
stripped, -Os, TLS). Cross binaries run under qemu-user (qemu-<arch>-static
or qemu-<arch>), so their memory is the *emulator's* RSS (qemu's own code,
its translation cache and the guest's pages together), not what the binary
would use on real hardware; x86_64-musl and native run natively and their RSS
is the real one.

For each platform it prints the binary size and VmRSS from /proc/PID/status:
  idle       started, one request served, then quiet
  keepalive  with N idle keep-alive client connections (each served one
             request from the built-in mock provider, then left open)
  streams    during N concurrent streams (tests/mockup.py's `slow-stream`, 10
             events 200 ms apart, through an openai provider: the built-in
             mock answers instantly, so it cannot hold streams open); the
             largest of several samples taken while all N are open
  peak       VmHWM at the end
Every response is checked (status 200, whole text), so a number is only
printed for a run that worked.

--memlimit KB runs one platform (default x86_64-musl) with its address space
limited to KB kilobytes (setrlimit RLIMIT_AS before exec, as `ulimit -v KB`
does), serves --conns keep-alive connections and --streams concurrent streams,
checks every answer and a clean exit on SIGTERM, and prints "N passed, N failed".
Standard library only.
"""
import argparse
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402  (its raw HTTP client, harness.Conn)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLATFORMS = ["native", "x86_64-musl", "aarch64", "armhf", "mipsel", "mips"]
QEMU = {"aarch64": "aarch64", "armhf": "arm", "mipsel": "mipsel", "mips": "mips"}
SLOW_TEXT = "".join("tick%d " % i for i in range(10))
MOCK_TEXT = "You said: "


def binary(p):
    return os.path.join(ROOT, "llmgw") if p == "native" else os.path.join(ROOT, "build", p, "llmgw")


def qemu_for(p):
    """The qemu-user command that runs platform p, [] when native, None when missing."""
    if p not in QEMU:
        return []
    for name in ("qemu-%s-static" % QEMU[p], "qemu-%s" % QEMU[p]):
        q = shutil.which(name)
        if q:
            return [q]
    return None


def status_kb(pid, field):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_mock():
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "mockup.py"), "--port", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    if not line.startswith("PORT "):
        p.kill()
        raise RuntimeError("mockup.py did not start: %r" % line)
    return p, int(line.split()[1])


def config(port, mock_port):
    return """[gateway]
listen = 127.0.0.1:%d
auth = none
log_level = warn
idle_timeout = 300s
header_timeout = 60s
first_byte_timeout = 60s
stream_idle_timeout = 60s
connect_timeout = 10s
max_connections = 4096
shutdown_timeout = 20s

[provider.mock]
type = mock

[provider.up]
type = openai
base_url = http://127.0.0.1:%d/v1
api_key = sk-measure

[model.m-mock]
target = mock mock-1

[model.m-slow]
target = up slow-stream
""" % (port, mock_port)


class Gateway:
    def __init__(self, plat, mock_port, limit_kb=None):
        self.plat = plat
        self.port = free_port()
        self.cfg = os.path.join(ROOT, "build", "measure-%s-%d.ini" % (plat, os.getpid()))
        with open(self.cfg, "w") as f:
            f.write(config(self.port, mock_port))
        self.log = open(os.path.join(ROOT, "build", "measure-%s.log" % plat), "w+")
        pre = None
        if limit_kb:
            def pre():
                resource.setrlimit(resource.RLIMIT_AS, (limit_kb * 1024, limit_kb * 1024))
        self.p = subprocess.Popen(qemu_for(plat) + [binary(plat), "-c", self.cfg], stdout=self.log,
                                  stderr=subprocess.STDOUT, preexec_fn=pre)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if self.p.poll() is not None:
                raise RuntimeError("gateway exited with %s: %s" % (self.p.returncode, self.logtext()))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("gateway did not start listening in 30 s")

    def logtext(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-2000:]

    def rss(self):
        return status_kb(self.p.pid, "VmRSS")

    def stop(self):
        """SIGTERM; the exit status (None if it had to be killed)."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
                return None
        os.unlink(self.cfg)
        return self.p.returncode


def request(port, model, content, stream):
    body = ('{"model":"%s","stream":%s,"messages":[{"role":"user","content":"%s"}]}'
            % (model, "true" if stream else "false", content)).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (port, len(body)) + body)


def stream_text(body):
    """The content of an OpenAI SSE body, concatenated (enough for these checks)."""
    import json
    text = ""
    for line in body.decode(errors="replace").split("\n"):
        if line.startswith("data: {"):
            for ch in json.loads(line[6:]).get("choices", []):
                text += (ch.get("delta") or {}).get("content") or ""
    return text


def keepalive(gw, n, timeout):
    """n connections, one mock request each, left open. (sockets, errors)."""
    socks, errors = [], []
    deadline = time.monotonic() + timeout
    for i in range(n):
        try:
            s = H.Conn(gw.port, timeout, sock=socket.create_connection(("127.0.0.1", gw.port), timeout=timeout))
            socks.append(s)
            s.send(request(gw.port, "m-mock", "ka-%d" % i, False))
        except (OSError, H.Fail) as e:
            errors.append("keepalive %d: %s" % (i, e))
    for i, s in enumerate(socks):
        try:
            r = s.read_response("POST", max(0.001, deadline - time.monotonic()))
            if r.status != 200 or (MOCK_TEXT + "ka-%d" % i).encode() not in r.body:
                errors.append("keepalive %d: status %d %r" % (i, r.status, r.body[:200]))
        except Exception as e:
            errors.append("keepalive %d: %r" % (i, e))
    return socks, errors


def streams(gw, n, timeout, sample):
    """n concurrent slow streams; sample() is called repeatedly while all n are
    open. Returns the list of errors."""
    errors, lock = [], threading.Lock()
    started = threading.Semaphore(0)
    done = threading.Event()

    def one(i):
        first = [False]

        def on_data(events):
            if not first[0] and any("tick0" in (e.data or "") for e in events):
                first[0] = True
                started.release()
        try:
            s = H.Conn(gw.port, timeout)
            s.send(request(gw.port, "m-slow", "st-%d" % i, True))
            r = s.read_response("POST", timeout, until=on_data)
            s.close()
            if r.status != 200 or stream_text(r.body) != SLOW_TEXT or b"data: [DONE]" not in r.body:
                raise RuntimeError("status %d, text %r" % (r.status, stream_text(r.body)))
        except Exception as e:
            with lock:
                errors.append("stream %d: %r" % (i, e))
        finally:
            if not first[0]:
                started.release()

    ts = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in ts:
        t.start()
    deadline = time.monotonic() + timeout
    for _ in range(n):
        if not started.acquire(timeout=max(0.1, deadline - time.monotonic())):
            errors.append("not every stream got its first event in time")
            break
    # all n are open now (each sends for ~1.8 s after its first event)
    for _ in range(5):
        sample()
        time.sleep(0.1)
    done.set()
    for t in ts:
        t.join(max(0.1, deadline - time.monotonic()))
    return errors


def measure(plat, mock_port, nconn, nstream, timeout):
    row = {"platform": plat, "size": os.path.getsize(binary(plat))}
    gw = Gateway(plat, mock_port)
    errors = []
    try:
        s = H.Conn(gw.port, timeout)
        s.send(request(gw.port, "m-mock", "warm-up", False))
        st = s.read_response("POST").status
        s.close()
        if st != 200:
            errors.append("warm-up: status %d" % st)
        time.sleep(0.5)
        row["idle"] = gw.rss()
        socks, e = keepalive(gw, nconn, timeout)
        errors += e
        time.sleep(0.3)
        row["keepalive"] = gw.rss()
        for s in socks:
            s.close()
        time.sleep(0.3)
        best = [0]
        errors += streams(gw, nstream, timeout, lambda: best.__setitem__(0, max(best[0], gw.rss() or 0)))
        row["streams"] = best[0]
        row["peak"] = max(best[0], status_kb(gw.p.pid, "VmHWM") or 0)
    finally:
        rc = gw.stop()
    if rc != 0:
        errors.append("exit status %s after SIGTERM: %s" % (rc, gw.logtext()))
    row["errors"] = errors
    return row


def kb(v, base=None):
    if v is None:
        return "-"
    if base is None:
        return "%d KB" % v
    return "%d KB (%+d)" % (v, v - base)


def print_table(rows, nconn, nstream):
    print()
    print("| platform | binary | run as | RSS idle | RSS %d keep-alive | RSS %d streams | peak (VmHWM) |"
          % (nconn, nstream))
    print("|---|---:|---|---:|---:|---:|---:|")
    for r in rows:
        how = ("qemu-%s (emulator RSS)" % QEMU[r["platform"]]) if r["platform"] in QEMU else "native"
        if r["platform"] == "native":
            kind = "glibc dynamic, not stripped"
        elif r["platform"] == "x86_64-musl":
            kind = "musl static, stripped"
        else:
            kind = "glibc static, stripped"
        if "skip" in r:
            print("| %s | %s | %s | %s |  |  |  |" % (r["platform"], r.get("size", "-"), how, r["skip"]))
            continue
        print("| %s | %d B (%s) | %s | %s | %s | %s | %s |" % (
            r["platform"], r["size"], kind, how, kb(r.get("idle")), kb(r.get("keepalive"), r.get("idle")),
            kb(r.get("streams"), r.get("idle")), kb(r.get("peak"))))
    print("(+N: growth over idle. Under qemu-user the RSS is the emulator's: qemu itself, its translation\n"
          " cache and the guest's pages; the growth column is the closer estimate of the guest's own use.)")
    for r in rows:
        for e in r.get("errors", [])[:10]:
            print("%s: ERROR %s" % (r["platform"], e))


def memlimit(args, mock_port):
    plat = args.platforms[0] if args.platforms else "x86_64-musl"
    passed = failed = 0

    def check(ok, what):
        nonlocal passed, failed
        print("%s %s" % ("PASS" if ok else "FAIL", what), flush=True)
        if ok:
            passed += 1
        else:
            failed += 1

    if not os.path.exists(binary(plat)):
        check(False, "%s not built (make cross-%s)" % (binary(plat), plat))
        return passed, failed
    try:
        gw = Gateway(plat, mock_port, limit_kb=args.memlimit)
    except Exception as e:
        check(False, "start under RLIMIT_AS = %d KB: %s" % (args.memlimit, e))
        return passed, failed
    try:
        check(True, "%s started with its address space limited to %d KB (VmSize %s KB, RSS %s KB)"
              % (plat, args.memlimit, status_kb(gw.p.pid, "VmSize"), gw.rss()))
        socks, e = keepalive(gw, args.conns, args.timeout)
        check(not e, "%d keep-alive connections served under the limit%s" % (args.conns, "; " + "; ".join(e[:5]) if e else ""))
        top = [0, 0]

        def sample():
            top[0] = max(top[0], gw.rss() or 0)
            top[1] = max(top[1], status_kb(gw.p.pid, "VmSize") or 0)
        e = streams(gw, args.streams, args.timeout, sample)
        for s in socks:
            s.close()
        check(not e, "%d concurrent streams complete under the limit (RSS up to %d KB, VmSize up to %d KB)%s"
              % (args.streams, top[0], top[1], "; " + "; ".join(e[:5]) if e else ""))
        e = streams(gw, args.streams, args.timeout, lambda: None)
        check(not e, "and again: %d more streams%s" % (args.streams, "; " + "; ".join(e[:5]) if e else ""))
        check(gw.p.poll() is None, "gateway still running")
    finally:
        rc = gw.stop()
    check(rc == 0, "clean exit on SIGTERM (status %s)" % rc)
    if failed:
        print(gw.logtext())
    return passed, failed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("platforms", nargs="*", help="default: every built one of %s" % " ".join(PLATFORMS))
    ap.add_argument("--conns", type=int, default=100, help="idle keep-alive connections (100)")
    ap.add_argument("--streams", type=int, default=100, help="concurrent streams (100)")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--memlimit", type=int, metavar="KB", help="memory-limit test (suite memlimit)")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * (args.conns + args.streams) + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard) if hard != resource.RLIM_INFINITY else want, hard))
    os.makedirs(os.path.join(ROOT, "build"), exist_ok=True)
    mock, mock_port = start_mock()
    try:
        if args.memlimit:
            p, f = memlimit(args, mock_port)
            print("%d passed, %d failed" % (p, f))
            return 1 if f else 0
        rows = []
        for plat in args.platforms or PLATFORMS:
            if not os.path.exists(binary(plat)):
                if args.platforms:
                    rows.append({"platform": plat, "skip": "not built"})
                continue
            if qemu_for(plat) is None:
                rows.append({"platform": plat, "size": os.path.getsize(binary(plat)),
                             "skip": "no qemu-%s" % QEMU[plat]})
                continue
            t = time.monotonic()
            print("measuring %s ..." % plat, file=sys.stderr, flush=True)
            try:
                rows.append(measure(plat, mock_port, args.conns, args.streams, args.timeout))
            except Exception as e:
                rows.append({"platform": plat, "size": os.path.getsize(binary(plat)), "skip": "failed: %s" % e})
            print("  %.1f s" % (time.monotonic() - t), file=sys.stderr, flush=True)
        print_table(rows, args.conns, args.streams)
        return 1 if any(r.get("errors") or "skip" in r for r in rows) else 0
    finally:
        mock.kill()
        mock.wait()


if __name__ == "__main__":
    sys.exit(main())
