#!/usr/bin/env python3
"""bench.py - the llmgw benchmark driver (run it through run.sh).

Compares, in one run and on 127.0.0.1 only:
  direct  wrk -> mockfast
  nginx   wrk -> nginx (1 worker, upstream keepalive, no buffering, no log) -> mockfast
  llmgw   wrk -> llmgw (openai provider, no access log) -> mockfast
  llmgw+log  the same with the access log written to a file (non-streamed only)
and, beside the chat stream, two Responses API streams (POST /v1/responses,
"stream":true) through llmgw: native (a provider with responses = yes: the
mock's /v1/responses stream passed on) and translated (a plain openai
provider: llmgw asks the mock for a chat completions stream and writes
Responses events); direct = wrk -> mockfast's /v1/responses.
with the proxy pinned to one CPU and wrk + mockfast + benchcli to the other.
The configurations alternate within each round (A/B, order rotated every
round) and each figure is the median over the rounds. Every response is
checked: status 200 and the body length the first (validated) probe of
the same target gave.

Prints one markdown table, PASS/MISS per target, and exits 0 when every
response was correct (a missed performance target does not fail the run).
`--profile` instead runs llmgw under callgrind for a fixed number of
requests and prints the top functions and instructions per request.
"""

import argparse
import glob
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
PATH = "/v1/chat/completions"
RS_PATH = "/v1/responses"
# the Responses streams: native (model bench-rs on a provider with responses = yes),
# translated (model bench on the plain openai provider, to chat completions)
RS_KINDS = (("rs", "Responses stream, native (responses = yes)"),
            ("rst", "Responses stream, translated (to chat completions)"))
KEY = "sk-bench-0123456789"
AUTH = "Bearer " + KEY
MB = 1024.0
DISTURBED = 0.15  # a run during which other processes used more than this share of a core

# ---------------------------------------------------------------- helpers


def log(*a):
    print("bench:", *a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, proc=None, timeout=10.0):
    t = time.time() + timeout
    while time.time() < t:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("process exited with %s before listening on %d" % (proc.returncode, port))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nothing listens on 127.0.0.1:%d after %.0f s" % (port, timeout))


def rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_ns(pid):
    """CPU time of every thread of pid, in ns (schedstat, else utime+stime)."""
    total = 0
    try:
        tasks = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return 0
    for t in tasks:
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, t)) as f:
                total += int(f.read().split()[0])
                continue
        except (OSError, ValueError, IndexError):
            pass
        try:
            with open("/proc/%d/task/%s/stat" % (pid, t)) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) * 1000000000 // os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            pass
    return total


def cpu_times():
    """{cpu number: (total jiffies, idle jiffies)} from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                p = line.split()
                v = [int(x) for x in p[1:]]
                out[int(p[0][3:])] = (sum(v[:8]), v[3] + v[4])
    return out


def busy_ns_all():
    """CPU time spent by every CPU, not idle (user..softirq), in ns."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) * 1000000000 // os.sysconf("SC_CLK_TCK")


def self_children_ns():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return int((s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime) * 1e9)


def busy(c0, c1, cpu):
    if cpu is None or cpu not in c0:
        return None
    t = c1[cpu][0] - c0[cpu][0]
    return (t - (c1[cpu][1] - c0[cpu][1])) / t if t else None


def set_affinity(pid, cpu):
    """Moves every thread of pid to one CPU."""
    for tid in os.listdir("/proc/%d/task" % pid):
        os.sched_setaffinity(int(tid), {cpu})


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out.append(int(d))
    return out


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


class Proc:
    """A process this run started (and is the only one to stop)."""

    def __init__(self, name, cmd, cpu=None, logfile=None, **kw):
        self.name = name
        if cpu is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(cpu)] + cmd
        self.logf = open(logfile, "ab") if logfile else subprocess.DEVNULL
        self.p = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT, **kw)
        self.pid = self.p.pid  # taskset execs the command: same pid

    def alive(self):
        return self.p.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=5.0):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        if self.logf is not subprocess.DEVNULL:
            self.logf.close()


# ---------------------------------------------------------------- the run


class Bench:
    def __init__(self, a):
        self.a = a
        self.tmp = a.tmp
        self.procs = []
        self.bad = []  # descriptions of wrong responses
        self.disturbed = []  # share of a core other processes used, per disturbed run
        self.nruns = 0
        self.rs_secs = 0.0  # time spent on the Responses streams and the streams at 1 connection
        self.log_bytes = self.log_lines = 0
        self.retries = a.retries
        self.quiet_budget = a.quiet_budget
        cpus = sorted(os.sched_getaffinity(0))
        self.all_cpus = ",".join(str(c) for c in cpus)  # for the unpinned (workers) runs
        if len(cpus) >= 2:
            self.cpu_load, self.cpu_proxy = cpus[0], cpus[1]
            os.sched_setaffinity(0, {self.cpu_load})  # this driver stays off the proxy's CPU
        else:
            self.cpu_load = self.cpu_proxy = None
            log("fewer than 2 CPUs: no pinning")
        self.bin = {n: os.path.join(self.tmp, n) for n in ("mockfast", "benchcli", "llmgw")}
        self.lua = os.path.join(HERE, "chat.lua")
        self.write_bodies()

    # -- inputs

    def write_bodies(self):
        base = {
            "model": "bench",
            "messages": [
                {"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
                {"role": "user", "content": "Why should a gateway in front of language model providers "
                                            "add as little latency and memory as it possibly can?"},
            ],
            "max_tokens": 64,
            "temperature": 0.2,
        }
        st = dict(base, stream=True, stream_options={"include_usage": True})
        # a long conversation (~48 KB): the gateway's own work dominates, for the workers runs
        turn = "the quick brown fox jumps over the lazy dog, \"quoted\" and escaped \\ text. " * 10
        big = dict(base, messages=[base["messages"][0]] + [
            {"role": "user" if i % 2 == 0 else "assistant", "content": "Turn %d: %s" % (i, turn)} for i in range(60)])
        # the same conversation as a Responses API request, streamed
        rs = {"model": "bench-rs", "instructions": base["messages"][0]["content"],
              "input": base["messages"][1]["content"], "max_output_tokens": 64, "temperature": 0.2, "stream": True}
        self.body = {
            "big": big,
            "json": base,
            "stream": st,
            "rs": rs,
            "rst": dict(rs, model="bench"),
            "timed": dict(st, bench_spacing_us=self.a.spacing_ms * 1000),
            "slow": dict(st, bench_spacing_us=1000000),
        }
        self.bodyfile = {}
        for k, v in self.body.items():
            fn = os.path.join(self.tmp, "body-%s.json" % k)
            with open(fn, "w") as f:
                f.write(json.dumps(v, separators=(",", ":")))
            self.bodyfile[k] = fn
        self.req_bytes = os.path.getsize(self.bodyfile["json"])

    # -- processes

    def start(self, name, cmd, cpu, **kw):
        p = Proc(name, cmd, cpu, os.path.join(self.tmp, name + ".log"), **kw)
        self.procs.append(p)
        return p

    def start_mock(self):
        self.mock_port = free_port()
        self.mock = self.start("mockfast", [self.bin["mockfast"], "-p", str(self.mock_port)], self.cpu_load)
        wait_port(self.mock_port, self.mock.p)

    def start_nginx(self, tag="nginx"):
        prefix = os.path.join(self.tmp, tag)
        os.makedirs(os.path.join(prefix, "tmp"), exist_ok=True)
        port = free_port()
        conf = os.path.join(prefix, "nginx.conf")
        user = "user root;\n" if os.geteuid() == 0 else ""
        with open(conf, "w") as f:
            f.write("""# written by tests/bench/bench.py: nginx as a zero-logic reverse proxy
{user}worker_processes 1;
worker_rlimit_nofile 16384;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    keepalive_timeout 120s;
    keepalive_requests 1000000;
    upstream mock {{
        server 127.0.0.1:{mock};
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 120s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 120s;
        }}
    }}
}}
""".format(user=user, p=prefix, mock=self.mock_port, port=port))
        p = self.start(tag, ["nginx", "-e", os.path.join(prefix, "error.log"), "-p", prefix, "-c", conf,
                             "-g", "daemon off; master_process on;"], self.cpu_proxy)
        wait_port(port, p.p)
        t = time.time() + 5
        workers = []
        while time.time() < t and not workers:
            workers = children(p.pid)
            time.sleep(0.02)
        if len(workers) != 1:
            raise RuntimeError("nginx: expected 1 worker, found %r" % workers)
        return {"name": tag, "port": port, "proc": p, "pid": workers[0]}

    def start_llmgw_workers(self, workers, builtin):
        """llmgw with workers = N, not pinned (every CPU), in front of mockfast or of the
        built-in mock provider (no upstream: all the work is the gateway's)."""
        port = free_port()
        tag = "llmgw-w%d%s" % (workers, "-builtin" if builtin else "")
        ini = os.path.join(self.tmp, tag + ".ini")
        prov = "type = mock" if builtin else "type = openai\nbase_url = http://127.0.0.1:%d/v1\napi_key = sk-up" % (
            self.mock_port)
        with open(ini, "w") as f:
            f.write("; written by tests/bench/bench.py\n[gateway]\nlisten = 127.0.0.1:%d\nworkers = %d\n"
                    "max_connections = 4096\nlog_level = warn\nidle_timeout = 120s\n\n[provider.up]\n%s\n\n"
                    "[model.bench]\ntarget = up mock-model in=0.15 out=0.60\n\n[key.bench]\nsecret = %s\n" % (
                        port, workers, prov, KEY))
        p = self.start(tag, [self.bin["llmgw"], "-c", ini], self.all_cpus)
        wait_port(port, p.p)
        return {"name": tag, "port": port, "proc": p, "pid": p.pid}

    def probe_one(self, t, kind):
        c = http.client.HTTPConnection("127.0.0.1", t["port"], timeout=10)
        c.request("POST", PATH, body=json.dumps(self.body[kind], separators=(",", ":")),
                  headers={"Content-Type": "application/json", "Authorization": AUTH})
        r = c.getresponse()
        data = r.read()
        c.close()
        if r.status != 200 or not json.loads(data).get("usage"):
            raise RuntimeError("%s %s probe: status %d: %s" % (t["name"], kind, r.status, data[:300]))
        return len(data)

    def start_llmgw(self, tag="llmgw", access_log="", wrap=None):
        port = free_port()
        ini = os.path.join(self.tmp, tag + ".ini")
        with open(ini, "w") as f:
            f.write("""; written by tests/bench/bench.py
[gateway]
listen = 127.0.0.1:{port}
max_connections = {maxc}
access_log = {log}
log_level = warn
idle_timeout = 120s
first_byte_timeout = 120s
stream_idle_timeout = 120s

[provider.up]
type = openai
base_url = http://127.0.0.1:{mock}/v1
api_key = sk-upstream-bench

[provider.up-rs]
type = openai
base_url = http://127.0.0.1:{mock}/v1
api_key = sk-upstream-bench
responses = yes

[model.bench]
target = up mock-model in=0.15 out=0.60

[model.bench-rs]
target = up-rs mock-model in=0.15 out=0.60

[key.bench]
secret = {key}
""".format(port=port, maxc=max(4096, 2 * max(self.a.idle_conns, self.a.streams) + 100),
                  log=access_log, mock=self.mock_port, key=KEY))
        cmd = [self.bin["llmgw"], "-c", ini]
        if wrap:
            cmd = wrap + cmd
        p = self.start(tag, cmd, self.cpu_proxy)
        wait_port(port, p.p, timeout=30 if wrap else 10)
        return {"name": tag, "port": port, "proc": p, "pid": p.pid}

    def stop_all(self):
        for p in reversed(self.procs):
            p.stop()
        self.procs = []

    # -- checks

    def probe(self, t):
        """One request of each kind, validated; returns expected body lengths."""
        out = {}
        for kind in ("json", "stream"):
            c = http.client.HTTPConnection("127.0.0.1", t["port"], timeout=10)
            c.request("POST", PATH, body=json.dumps(self.body[kind]),
                      headers={"Content-Type": "application/json", "Authorization": AUTH})
            r = c.getresponse()
            data = r.read()
            c.close()
            where = "%s %s probe" % (t["name"], kind)
            if r.status != 200:
                raise RuntimeError("%s: status %d: %s" % (where, r.status, data[:300]))
            if kind == "json":
                j = json.loads(data)
                text = j["choices"][0]["message"]["content"]
                if not text or not j.get("usage", {}).get("total_tokens"):
                    raise RuntimeError("%s: no content or usage: %s" % (where, data[:300]))
            else:
                evs = [e for e in data.decode().split("\n\n") if e.strip()]
                if evs[-1] != "data: [DONE]" or not all(e.startswith("data: ") for e in evs):
                    raise RuntimeError("%s: not an SSE stream ending with [DONE]" % where)
                chunks = [json.loads(e[6:]) for e in evs[:-1]]
                text = "".join(ch["choices"][0]["delta"].get("content") or ""
                               for ch in chunks if ch.get("choices"))
                if not any(ch.get("usage") for ch in chunks):
                    raise RuntimeError("%s: no usage chunk" % where)
                out["events"] = len(evs)
            if getattr(self, "text", None) is None:
                self.text = text
            elif text != self.text:
                raise RuntimeError("%s: content %r differs from %r" % (where, text, self.text))
            out[kind] = len(data)
        return out

    def probe_rs(self, t, kind):
        """One Responses stream, validated: typed events numbered from 0, the text of the
        chat stream in as many deltas, response.completed with usage last. Sets
        t["expect"][kind] and, when llmgw's request id is in the body (it names the
        translated stream's response and items and widens as its hex sequence number
        does), how often and how wide, for chat.lua's length check."""
        c = http.client.HTTPConnection("127.0.0.1", t["port"], timeout=10)
        c.request("POST", RS_PATH, body=json.dumps(self.body[kind], separators=(",", ":")),
                  headers={"Content-Type": "application/json", "Authorization": AUTH})
        r = c.getresponse()
        data = r.read()
        rid = r.getheader("x-request-id") or ""
        c.close()
        where = "%s %s probe" % (t["name"], kind)
        if r.status != 200:
            raise RuntimeError("%s: status %d: %s" % (where, r.status, data[:300]))
        evs = [e for e in data.decode().split("\n\n") if e.strip()]
        types, deltas, last = [], [], None
        for i, e in enumerate(evs):
            lines = e.split("\n")
            if len(lines) != 2 or not lines[0].startswith("event: ") or not lines[1].startswith("data: "):
                raise RuntimeError("%s: event %d is not 'event: T' + 'data: {...}': %r" % (where, i, e[:200]))
            j = json.loads(lines[1][6:])
            if j.get("type") != lines[0][7:] or j.get("sequence_number") != i:
                raise RuntimeError("%s: event %d: type %r / sequence_number %r under event: %s" % (
                    where, i, j.get("type"), j.get("sequence_number"), lines[0][7:]))
            types.append(j["type"])
            if j["type"] == "response.output_text.delta":
                deltas.append(j["delta"])
            last = j
        if not types or types[-1] != "response.completed":
            raise RuntimeError("%s: the stream does not end with response.completed (%s)" % (where, types[-3:]))
        usage = last["response"].get("usage") or {}
        if "".join(deltas) != self.text or len(deltas) != self.nevents - 4:
            raise RuntimeError("%s: %d deltas %r, not the chat stream's %d pieces %r" % (
                where, len(deltas), "".join(deltas), self.nevents - 4, self.text))
        if usage.get("output_tokens") != len(deltas) or not usage.get("total_tokens"):
            raise RuntimeError("%s: usage %r" % (where, usage))
        t.setdefault("expect", {})[kind] = len(data)
        t.setdefault("rs_events", {})[kind] = len(evs)
        m = re.match(r"gen-([0-9a-f]+)-", rid)
        occ = data.decode().count(rid) if m else 0
        t.setdefault("idocc", {})[kind] = (occ, len(m.group(1))) if occ else (0, 0)
        return len(data)

    # -- load

    def wrk(self, t, kind, conns, secs, pin=True):
        occ, w0 = t.get("idocc", {}).get(kind, (0, 0))
        env = dict(os.environ, BENCH_BODY=self.bodyfile[kind], BENCH_AUTH=AUTH,
                   BENCH_EXPECT=str(t["expect"][kind]), BENCH_SLACK=str(t.get("slack", 0)),
                   BENCH_ID_OCC=str(occ), BENCH_ID_W0=str(w0))
        cmd = ["wrk", "-t1", "-c%d" % conns, "-d%ds" % secs, "-s", self.lua,
               "http://127.0.0.1:%d%s" % (t["port"], RS_PATH if kind in ("rs", "rst") else PATH)]
        if self.cpu_load is not None and pin:
            cmd = ["taskset", "-c", str(self.cpu_load)] + cmd
        elif self.cpu_load is not None:  # every CPU, whatever the driver's own affinity
            cmd = ["taskset", "-c", self.all_cpus] + cmd
        st0 = self.mock_stats()
        ours = {t["pid"], self.mock.pid}
        o0 = sum(cpu_ns(p) for p in ours) + self_children_ns()
        c0, w0, s0, b0 = cpu_ns(t["pid"]), time.time(), cpu_times(), busy_ns_all()
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        rss = 0
        while p.poll() is None:
            rss = max(rss, rss_kb(t["pid"]))
            time.sleep(0.2)
        out = p.stdout.read()
        c1, w1, s1, b1 = cpu_ns(t["pid"]), time.time(), cpu_times(), busy_ns_all()
        o1 = sum(cpu_ns(p) for p in ours) + self_children_ns()
        st1 = self.mock_stats()
        m = re.search(r"^BENCH (.*)$", out, re.M)
        if not m:
            raise RuntimeError("wrk gave no result line:\n" + out)
        r = {k: v for k, v in (kv.split("=", 1) for kv in m.group(1).split())}
        n = int(r["requests"])
        errs = sum(int(r[k]) for k in ("err_connect", "err_read", "err_write", "err_timeout", "err_status"))
        nbad = int(r["bad_status"]) + int(r["bad_len"])
        if nbad or errs or n == 0 or int(r["responses"]) != n:
            self.bad.append("%s %s c%d: %d requests, %d responses, %d bad status, %d bad length "
                            "(first: %s), %d socket/status errors" % (
                                t["name"], kind, conns, n, int(r["responses"]), int(r["bad_status"]),
                                int(r["bad_len"]), r["first_bad"], errs))
        secs_run = int(r["duration_us"]) / 1e6
        res = {
            "rps": n / secs_run if secs_run else 0,
            "p50": int(r["p50_us"]), "p99": int(r["p99_us"]),
            "cpu_us": (c1 - c0) / 1000.0 / n if n else None,
            "cpu_util": (c1 - c0) / 1e9 / (w1 - w0),
            "rss": rss,
            "busy_proxy": busy(s0, s1, self.cpu_proxy),
            "busy_load": busy(s0, s1, self.cpu_load),
            # CPU used by everything else on the machine, as a share of one core
            "foreign": ((b1 - b0) - (o1 - o0)) / 1e9 / (w1 - w0),
            "up_conns_per_k": (1000.0 * (st1["accepted"] - st0["accepted"] - 1) / n) if n and st0 and st1 else None,
        }
        return res

    def take_log(self, path):
        """Counts and empties the access log (llmgw appends with O_APPEND)."""
        try:
            with open(path, "rb") as f:
                data = f.read()
            open(path, "wb").close()
        except OSError:
            return
        self.log_bytes += len(data)
        self.log_lines += data.count(b"\n")

    def wait_quiet(self, limit=15.0):
        """Waits (at most limit s, and at most --quiet-budget s per run in all) until the
        machine's other processes use less than 10 % of a core: other sessions share it."""
        t0 = time.time()
        while True:
            b0, w0 = busy_ns_all(), time.time()
            time.sleep(0.25)
            share = (busy_ns_all() - b0) / 1e9 / (time.time() - w0)
            waited = time.time() - t0
            if share < 0.10 or waited > limit or waited > self.quiet_budget:
                break
        self.quiet_budget -= max(0.0, time.time() - t0 - 0.25)
        return share

    def measure(self, t, kind, conns, secs):
        """One wrk run; run again once if other processes took > 15 % of a core."""
        self.wait_quiet()
        r = self.wrk(t, kind, conns, secs)
        if r["foreign"] > DISTURBED and self.retries > 0:
            self.retries -= 1
            log("%s %s c%s: other processes used %.0f%% of a core: once more" % (
                t["name"], kind, conns, 100 * r["foreign"]))
            self.wait_quiet()
            r2 = self.wrk(t, kind, conns, secs)
            if r2["foreign"] < r["foreign"]:
                r = r2
        if r["foreign"] > DISTURBED:
            self.disturbed.append(r["foreign"])
        self.nruns += 1
        return r

    def mock_stats(self):
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.mock_port, timeout=5)
            c.request("GET", "/stats")
            j = json.loads(c.getresponse().read())
            c.close()
            j["accepted"] -= 1  # this connection
            return j
        except (OSError, ValueError):
            return None

    def benchcli(self, mode, t, body, n, extra=(), sample_pid=None, hold=0):
        cmd = [self.bin["benchcli"], mode, "-p", str(t["port"]), "-b", self.bodyfile[body], "-a", AUTH,
               "-n", str(n)] + list(extra)
        if self.cpu_load is not None:
            cmd = ["taskset", "-c", str(self.cpu_load)] + cmd
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        rss = 0
        if sample_pid:
            line = p.stdout.readline()
            if line.startswith("ready"):
                end = time.time() + max(0.5, hold - 0.5)
                while time.time() < end:
                    rss = max(rss, rss_kb(sample_pid))
                    time.sleep(0.1)
        try:
            out, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        kv = {}
        for line in out.splitlines():
            for tok in line.replace("result ", "").split():
                if "=" in tok:
                    k, v = tok.split("=", 1)
                    kv[k] = int(v)
        if p.returncode != 0:
            self.bad.append("%s %s on %s: exit %d: %s %s" % (mode, body, t["name"], p.returncode,
                                                             out.strip().replace("\n", "; "), err.strip()[:300]))
        kv["rss"] = rss
        return kv

    # -- phases

    def run(self):
        a = self.a
        t_start = time.time()
        self.start_mock()
        nginx = self.start_nginx()
        llmgw = self.start_llmgw()
        logpath = os.path.join(self.tmp, "access.log")
        llmgw_log = self.start_llmgw("llmgw+log", access_log=logpath)
        direct = {"name": "direct", "port": self.mock_port, "pid": self.mock.pid, "proc": self.mock}
        targets = [direct, nginx, llmgw, llmgw_log]
        for t in targets:
            t["expect"] = self.probe(t)
        self.nevents = llmgw["expect"]["events"]
        log("expected body bytes: " + ", ".join("%s json %d / stream %d (%d events)" % (
            t["name"], t["expect"]["json"], t["expect"]["stream"], t["expect"]["events"]) for t in targets))
        # the Responses streams: the mock's own (direct), native and translated through llmgw
        rs_runs = [(direct, "rs"), (llmgw, "rs"), (llmgw, "rst")]
        for t, kind in rs_runs:
            self.probe_rs(t, kind)
        self.rs_info = {kind: (llmgw["rs_events"][kind], llmgw["expect"][kind]) for kind in ("rs", "rst")}
        log("Responses streams, expected body bytes: direct %d, llmgw native %d, translated %d (%d events; "
            "the request id %d times in a translated one)" % (
                direct["expect"]["rs"], llmgw["expect"]["rs"], llmgw["expect"]["rst"], llmgw["rs_events"]["rst"],
                llmgw["idocc"]["rst"][0]))
        # at 1 connection: the chat stream and the Responses streams, for their added latency
        c1_streams = [(direct, "stream"), (llmgw, "stream")] + rs_runs

        log("warm-up")
        for t in targets:
            for kind in ("json", "stream"):
                self.wrk(t, kind, a.conns, 1)
        t_rs = time.time()
        for t, kind in rs_runs:
            self.wrk(t, kind, a.conns, 1)
        self.rs_secs += time.time() - t_rs

        res = {}  # (target, kind, conns) -> [per-round dict]
        for rnd in range(a.rounds):
            k = rnd % len(targets)
            order = targets[k:] + targets[:k]
            for kind in ("json", "stream"):
                for t in order:
                    if kind == "stream" and t is llmgw_log:
                        continue
                    r = self.measure(t, kind, a.conns, a.duration)
                    res.setdefault((t["name"], kind, a.conns), []).append(r)
                    if t is llmgw_log:
                        self.take_log(logpath)
                    log("round %d %-9s %-6s c%d: %8.0f req/s p50 %5d us p99 %6d us cpu %5.1f us/req "
                        "(process %3.0f%%, cores %3.0f%% / %3.0f%%, others %3.0f%%) rss %5d kB" % (
                            rnd + 1, t["name"], kind, a.conns, r["rps"], r["p50"], r["p99"], r["cpu_us"] or 0,
                            100 * r["cpu_util"], 100 * (r["busy_proxy"] or 0), 100 * (r["busy_load"] or 0),
                            100 * r["foreign"], r["rss"]))
            k = rnd % len(rs_runs)
            t_rs = time.time()
            for t, kind in rs_runs[k:] + rs_runs[:k]:
                r = self.measure(t, kind, a.conns, a.duration)
                res.setdefault((t["name"], kind, a.conns), []).append(r)
                log("round %d %-9s %-6s c%d: %8.0f req/s p50 %5d us p99 %6d us cpu %5.1f us/req "
                    "(process %3.0f%%, cores %3.0f%% / %3.0f%%, others %3.0f%%) rss %5d kB" % (
                        rnd + 1, t["name"], kind, a.conns, r["rps"], r["p50"], r["p99"], r["cpu_us"] or 0,
                        100 * r["cpu_util"], 100 * (r["busy_proxy"] or 0), 100 * (r["busy_load"] or 0),
                        100 * r["foreign"], r["rss"]))
            self.rs_secs += time.time() - t_rs
            for t in order:
                if t is llmgw_log:
                    continue
                r = self.measure(t, "json", 1, a.c1_duration)
                res.setdefault((t["name"], "json", 1), []).append(r)
                log("round %d %-9s json   c1 : %8.0f req/s p50 %5d us p99 %6d us (others %3.0f%%)" % (
                    rnd + 1, t["name"], r["rps"], r["p50"], r["p99"], 100 * r["foreign"]))
                if self.cpu_proxy is None or t is direct:
                    continue
                # the same with the proxy moved onto the load CPU: no cross-CPU wake-ups
                set_affinity(t["pid"], self.cpu_load)
                try:
                    r = self.measure(t, "json", 1, a.c1_duration)
                finally:
                    set_affinity(t["pid"], self.cpu_proxy)
                res.setdefault((t["name"], "json", "1core"), []).append(r)
                log("round %d %-9s json   c1 one CPU: %8.0f req/s p50 %5d us p99 %6d us (others %3.0f%%)" % (
                    rnd + 1, t["name"], r["rps"], r["p50"], r["p99"], 100 * r["foreign"]))
            k = rnd % len(c1_streams)
            t_rs = time.time()
            for t, kind in c1_streams[k:] + c1_streams[:k]:
                r = self.measure(t, kind, 1, a.c1_stream_duration)
                res.setdefault((t["name"], kind, 1), []).append(r)
                log("round %d %-9s %-6s c1 : %8.0f req/s p50 %5d us p99 %6d us (others %3.0f%%)" % (
                    rnd + 1, t["name"], kind, r["rps"], r["p50"], r["p99"], 100 * r["foreign"]))
            self.rs_secs += time.time() - t_rs
            for t in targets:
                if not t["proc"].alive():
                    raise RuntimeError("%s died (see %s.log in %s)" % (t["name"], t["name"], self.tmp))

        log("stream timing (%d streams of %d events %d ms apart per target)" % (
            a.timed_streams, llmgw["expect"]["events"], a.spacing_ms))
        timing = {}
        for t in (direct, nginx, llmgw):
            self.wait_quiet()
            timing[t["name"]] = self.benchcli("timing", t, "timed", a.timed_streams,
                                              ["-L", str(t["expect"]["stream"])])
            log("%-6s %s" % (t["name"], timing[t["name"]]))

        # memory on fresh processes
        log("memory: fresh nginx and llmgw, %d idle keep-alive connections, %d slow streams" % (
            a.idle_conns, a.streams))
        for t in (nginx, llmgw, llmgw_log):
            t["proc"].stop()
        mem = {}
        nginx2 = self.start_nginx("nginx-mem")
        llmgw2 = self.start_llmgw("llmgw-mem")
        time.sleep(0.5)
        for t in (nginx2, llmgw2):
            name = "nginx" if t is nginx2 else "llmgw"
            self.wait_quiet()
            m = mem[name] = {"idle": rss_kb(t["pid"])}
            t["expect"] = self.probe(t)
            h = self.benchcli("hold", t, "json", a.idle_conns, ["-t", str(a.hold), "-L", str(t["expect"]["json"])],
                              sample_pid=t["pid"], hold=a.hold)
            m["hold"], m["hold_ok"] = h["rss"], h.get("ok", 0)
            s = self.benchcli("streams", t, "slow", a.streams, ["-t", str(a.hold)], sample_pid=t["pid"], hold=a.hold)
            m["streams"], m["streams_open"] = s["rss"], s.get("open", 0)
            m["after"] = rss_kb(t["pid"])
            log("%-6s %s" % (name, m))
            if not t["proc"].alive():
                raise RuntimeError("%s died during the memory phase" % name)
        if a.musl_bin and os.path.exists(a.musl_bin):  # the static musl build, idle
            self.bin["llmgw"], keep = a.musl_bin, self.bin["llmgw"]
            try:
                g = self.start_llmgw("llmgw-musl")
                time.sleep(0.5)
                self.wait_quiet()
                mem["musl_idle"] = rss_kb(g["pid"])
                g["expect"] = self.probe(g)  # and it works
                g["proc"].stop()
            finally:
                self.bin["llmgw"] = keep
            log("musl static llmgw: idle RSS %d kB" % mem["musl_idle"])
        workers = self.run_workers() if a.workers_secs > 0 else {}
        self.stop_all()

        self.report(res, timing, mem, time.time() - t_start, workers)
        return 1 if self.bad else 0

    def run_workers(self):
        """workers = 1 against workers = 2, nothing pinned: the 48 KB request to the built-in
        mock provider (the gateway is the bottleneck) and the usual request to mockfast (the
        load generator and the mock share the two CPUs with the gateway). Rounds alternate."""
        a = self.a
        out = {}
        log("workers: 1 against 2, unpinned, %d rounds of %d s" % (a.rounds, a.workers_secs))
        for builtin, kind in ((True, "big"), (False, "json")):
            gws = {}
            for w in (1, 2):
                g = gws[w] = self.start_llmgw_workers(w, builtin)
                g["expect"] = {kind: self.probe_one(g, kind)}
                if builtin:  # the mock's reply holds "gen-<seq hex>-..": up to 8 more digits
                    g["slack"] = 8
            for rnd in range(a.rounds):
                for w in ((1, 2) if rnd % 2 == 0 else (2, 1)):
                    self.wait_quiet()
                    r = self.wrk(gws[w], kind, a.conns, a.workers_secs, pin=False)
                    out.setdefault((builtin, w), []).append(r)
                    log("round %d workers=%d %-8s c%d: %8.0f req/s, %.2f cores, cpu %5.1f us/req (others %3.0f%%)" % (
                        rnd + 1, w, "builtin" if builtin else "mockfast", a.conns, r["rps"], r["cpu_util"],
                        r["cpu_us"] or 0, 100 * r["foreign"]))
            for g in gws.values():
                if not g["proc"].alive():
                    raise RuntimeError("%s died" % g["name"])
                g["proc"].stop()
        return out

    # -- the table

    def report(self, res, timing, mem, elapsed, workers=None):
        a = self.a
        C = a.conns

        def calm(rs):
            """The runs other processes did not disturb, or all if none was calm."""
            ok = [r for r in rs if r["foreign"] <= DISTURBED]
            return ok or rs

        def m(name, kind, field, conns=C):
            rs = res.get((name, kind, conns))
            return med([r[field] for r in calm(rs)]) if rs else None

        def added_c1(name, kind="json", base="json"):
            """p50 at 1 connection through name minus the direct one (of kind base), per round."""
            pairs = list(zip(res.get((name, kind, 1), []), res.get(("direct", base, 1), [])))
            ok = [(p, q) for p, q in pairs if max(p["foreign"], q["foreign"]) <= DISTURBED]
            return med([p["p50"] - q["p50"] for p, q in (ok or pairs)]) if pairs else None

        def ratio(x, y):
            return (x / y) if x is not None and y else None

        def round_ratio(kind, field, num=None, den=None):
            """llmgw / nginx per round (the two ran minutes apart at most), the median of those:
            this VM has slow and fast phases that a ratio of separate medians mixes up.
            num, den: other (name, kind) pairs than (llmgw, kind) and (nginx, kind)."""
            num, den = num or ("llmgw", kind), den or ("nginx", kind)
            pairs = list(zip(res.get(num + (C,), []), res.get(den + (C,), [])))
            ok = [(p, q) for p, q in pairs if max(p["foreign"], q["foreign"]) <= DISTURBED] or pairs
            rs = [p[field] / q[field] for p, q in ok if p[field] and q[field]]
            return med(rs) if rs else None

        rows = []
        verdicts = []

        def fmt(v, f="%.0f"):
            return "—" if v is None else f % v

        def row(label, d, n, g, r=None, target="", ok=None, f="%.0f"):
            res_s = "" if ok is None else ("PASS" if ok else "**MISS**")
            rows.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                label, d if isinstance(d, str) else fmt(d, f), n if isinstance(n, str) else fmt(n, f),
                g if isinstance(g, str) else fmt(g, f), "" if r is None else "%.2f" % r, target, res_s))
            if ok is not None:
                verdicts.append((label, ok))

        for kind, title in (("json", "non-streamed"), ("stream", "streamed")):
            d, n, g = (m(x, kind, "rps") for x in ("direct", "nginx", "llmgw"))
            r = round_ratio(kind, "rps")
            row("%s: requests/s (c%d)" % (title, C), d, n, g, r, "≥ 1.00", r is not None and r >= 1.0)
            row("%s: latency p50 / p99 (µs)" % title,
                *("%s / %s" % (fmt(m(x, kind, "p50")), fmt(m(x, kind, "p99"))) for x in ("direct", "nginx", "llmgw")),
                r=ratio(m("llmgw", kind, "p50"), m("nginx", kind, "p50")))
            d, n, g = (m(x, kind, "cpu_us") for x in ("direct", "nginx", "llmgw"))
            r = round_ratio(kind, "cpu_us")
            row("%s: CPU µs/request (proxy; direct = mock)" % title, d, n, g, r, "≤ 1.00",
                r is not None and r <= 1.0, f="%.1f")
            row("%s: CPU busy, proxy core / load core (%%)" % title,
                *("%s / %s" % (fmt(None if m(y, kind, "busy_proxy") is None else 100 * m(y, kind, "busy_proxy")),
                               fmt(None if m(y, kind, "busy_load") is None else 100 * m(y, kind, "busy_load")))
                  for y in ("direct", "nginx", "llmgw")))
            d, n, g = (max(r["rss"] for r in res[(x, kind, C)]) for x in ("direct", "nginx", "llmgw"))
            row("%s: RSS under load, highest (MB; direct = mock)" % title, d / MB if d else None, n / MB if n else None,
                g / MB if g else None, ratio(g, n), "llmgw < 8 MB", g is not None and g < 8 * 1024, f="%.2f")
            row("%s: upstream connections opened per 1000 requests" % title,
                *(fmt(m(x, kind, "up_conns_per_k"), "%.1f") for x in ("direct", "nginx", "llmgw")))
        # the Responses streams beside the chat stream
        if ("llmgw", "stream", 1) in res:
            row("streamed: added latency at 1 connection, p50 vs direct (µs)",
                "%s (p50 itself)" % fmt(m("direct", "stream", "p50", 1)), "—", added_c1("llmgw", "stream", "stream"))
        for kind, title in RS_KINDS:
            if ("llmgw", kind, C) not in res:
                continue
            dk = "rs" if kind == "rs" else None  # translated: no direct Responses equivalent
            row("%s: requests/s (c%d)" % (title, C), m("direct", dk, "rps") if dk else "—", "—",
                m("llmgw", kind, "rps"))
            row("%s: latency p50 / p99 (µs)" % title,
                "%s / %s" % (fmt(m("direct", dk, "p50")), fmt(m("direct", dk, "p99"))) if dk else "—", "—",
                "%s / %s" % (fmt(m("llmgw", kind, "p50")), fmt(m("llmgw", kind, "p99"))))
            row("%s: CPU µs/stream (proxy; direct = mock)" % title, m("direct", dk, "cpu_us") if dk else "—", "—",
                m("llmgw", kind, "cpu_us"), f="%.1f")
            row("%s: against llmgw's chat stream, same rounds: requests/s, CPU µs/stream (ratios)" % title, "—", "—",
                "%s, %s" % (fmt(round_ratio(kind, "rps", ("llmgw", kind), ("llmgw", "stream")), "%.2f"),
                            fmt(round_ratio(kind, "cpu_us", ("llmgw", kind), ("llmgw", "stream")), "%.2f")))
            if dk:
                row("%s: added latency at 1 connection, p50 vs direct (µs)" % title,
                    "%s (p50 itself)" % fmt(m("direct", dk, "p50", 1)), "—", added_c1("llmgw", kind, dk))
            else:
                row("%s: added latency at 1 connection, p50 vs the direct chat stream (µs)" % title, "—", "—",
                    added_c1("llmgw", kind, "stream"))
        row("c%d runs: CPU used by other processes, median of the runs used (%% of a core)" % C,
            *(fmt(None if v is None else 100 * v) for v in (
                med([med([r["foreign"] for r in calm(res[(x, k, C)])]) for k in ("json", "stream")])
                for x in ("direct", "nginx", "llmgw"))))
        an, ag = added_c1("nginx"), added_c1("llmgw")
        row("added latency at 1 connection, p50 vs direct (µs)", "%s (p50 itself)" % fmt(m("direct", "json", "p50", 1)),
            an, ag, ratio(ag, an), "≤ nginx", an is not None and ag is not None and ag <= an)
        if ("nginx", "json", "1core") in res:
            d1 = m("direct", "json", "p50", 1)
            n1, g1 = m("nginx", "json", "p50", "1core"), m("llmgw", "json", "p50", "1core")
            row("added latency at 1 connection, everything on one CPU, p50 vs direct (µs)", "—",
                None if n1 is None else n1 - d1, None if g1 is None else g1 - d1,
                ratio(None if g1 is None else g1 - d1, None if n1 is None else n1 - d1))
        row("requests/s at 1 connection", m("direct", "json", "rps", 1), m("nginx", "json", "rps", 1),
            m("llmgw", "json", "rps", 1), ratio(m("llmgw", "json", "rps", 1), m("nginx", "json", "rps", 1)))
        # stream timing
        td, tn, tg = timing["direct"], timing["nginx"], timing["llmgw"]
        row("time to first streamed byte, p50 (µs)", td.get("ttfb_us_p50"), tn.get("ttfb_us_p50"),
            tg.get("ttfb_us_p50"), ratio(tg.get("ttfb_us_p50"), tn.get("ttfb_us_p50")))
        row("time to first event, p50 (µs)", td.get("first_event_us_p50"), tn.get("first_event_us_p50"),
            tg.get("first_event_us_p50"), ratio(tg.get("first_event_us_p50"), tn.get("first_event_us_p50")))
        row("per-event delay, mock write → client read, p50 / max (µs)",
            *("%s / %s" % (fmt(x.get("delay_us_p50")), fmt(x.get("delay_us_max"))) for x in (td, tn, tg)))
        ok_fwd = (tg.get("timed_events", 0) > 0 and tg.get("batched", 1) == 0 and tg.get("bad", 1) == 0
                  and tg.get("delay_us_max", 10 ** 9) < a.spacing_ms * 1000 / 2)
        row("events batched with an earlier one (of %s timed)" % fmt(tg.get("timed_events")),
            *(fmt(x.get("batched")) for x in (td, tn, tg)),
            target="0 batched, max delay < %d ms" % (a.spacing_ms // 2 or 1), ok=ok_fwd)
        # memory
        mn, mg = mem["nginx"], mem["llmgw"]
        row("RSS idle, fresh process (MB)", "—", mn["idle"] / MB, mg["idle"] / MB, ratio(mg["idle"], mn["idle"]),
            "llmgw < 2 MB", mg["idle"] < 2 * 1024, f="%.2f")
        if mem.get("musl_idle"):
            row("RSS idle, fresh process, static musl build (make cross-x86_64-musl) (MB)", "—", "—",
                mem["musl_idle"] / MB, None, "llmgw < 2 MB", mem["musl_idle"] < 2 * 1024, f="%.2f")
        row("RSS with %d idle keep-alive connections (MB)" % a.idle_conns, "—", mn["hold"] / MB, mg["hold"] / MB,
            ratio(mg["hold"], mn["hold"]), f="%.2f")
        row("RSS with %d concurrent slow streams (MB)" % a.streams, "—", mn["streams"] / MB, mg["streams"] / MB,
            ratio(mg["streams"], mn["streams"]), "llmgw < 32 MB",
            mg["streams"] < 32 * 1024 and mg["streams_open"] == a.streams, f="%.2f")
        row("RSS after those closed (MB)", "—", mn["after"] / MB, mg["after"] / MB, ratio(mg["after"], mn["after"]),
            f="%.2f")
        # access log
        gl, g = m("llmgw+log", "json", "rps"), m("llmgw", "json", "rps")
        row("llmgw with access log to a file: requests/s, CPU µs/req (non-streamed)", "—", "—",
            "%s, %s" % (fmt(gl), fmt(m("llmgw+log", "json", "cpu_us"), "%.1f")), ratio(gl, g))
        # binary
        size = os.path.getsize(self.a.llmgw_src)
        stripped = os.path.join(self.tmp, "llmgw.stripped")
        shutil.copy(self.a.llmgw_src, stripped)
        subprocess.run(["strip", stripped], check=False)
        ngx = shutil.which("nginx")
        if workers:
            def wm(b, w, field):
                rs = workers.get((b, w))
                return med([r[field] for r in calm(rs)]) if rs else None
            for b, label, target in ((True, "48 KB request, built-in mock provider (the gateway is the bottleneck)",
                                      "≥ 1.50"),
                                     (False, "the %d-byte request via mockfast (wrk and the mock share the CPUs)" %
                                      self.req_bytes, "")):
                w1, w2 = wm(b, 1, "rps"), wm(b, 2, "rps")
                r = ratio(w2, w1)
                row("workers = 1 → 2, unpinned, c%d, %s: requests/s (ratio = 2 / 1)" % (C, label), "—", "—",
                    "%s → %s" % (fmt(w1), fmt(w2)), r, target, (r is not None and r >= 1.5) if target else None)
                c1, c2 = wm(b, 1, "cpu_util"), wm(b, 2, "cpu_util")
                row("workers = 1 → 2, same runs: cores used by llmgw, CPU µs/request", "—", "—",
                    "%s → %s cores, %s → %s µs" % (fmt(c1, "%.2f"), fmt(c2, "%.2f"), fmt(wm(b, 1, "cpu_us"), "%.1f"),
                                                   fmt(wm(b, 2, "cpu_us"), "%.1f")))
        row("binary size, as built / stripped (bytes)", "—", "%d (nginx-light)" % os.path.getsize(ngx) if ngx else "—",
            "%d / %d" % (size, os.path.getsize(stripped)))

        title = ("llmgw benchmark: %d rounds of %d s, c%d, 1 wrk thread, %d-byte request; "
                 "proxy on CPU %s, wrk + mock on CPU %s; medians (of the undisturbed rounds); ratio = llmgw / nginx" % (
                     a.rounds, a.duration, C, self.req_bytes, self.cpu_proxy, self.cpu_load))
        print()
        print("**" + title + "**")
        print()
        print("| measure | direct | nginx | llmgw | llmgw/nginx | target | result |")
        print("|---|---:|---:|---:|---:|---|---|")
        for r in rows:
            print(r)
        print()
        print("Notes: throughput and CPU ratios are medians of per-round ratios (llmgw and nginx of the same round). nginx figures are its one worker process (the master is idle). Streams: %d SSE events "
              "each, written by the mock in one go; timing streams: events %d ms apart, the mock writes its "
              "CLOCK_MONOTONIC time into each event's id. Responses streams (POST %s): the same text in as "
              "many deltas, %d events and %d bytes native, %d events and %d bytes translated. "
              "Access log: %d lines, %d bytes. Run time %.0f s (%.0f s of it the Responses streams and the "
              "streams at 1 connection)." % (
                  self.nevents, a.spacing_ms, RS_PATH, self.rs_info["rs"][0], self.rs_info["rs"][1],
                  self.rs_info["rst"][0], self.rs_info["rst"][1], self.log_lines, self.log_bytes, elapsed,
                  self.rs_secs))
        print()
        npass = sum(1 for _, ok in verdicts if ok)
        for label, ok in verdicts:
            if not ok:
                print("MISS: " + label)
        if self.disturbed:
            print("WARNING: in %d of %d measured runs other processes on this machine used more than %.0f%% "
                  "of a core (up to %.0f%%); the medians leave those runs out where a calm one exists" % (
                      len(self.disturbed), self.nruns, 100 * DISTURBED, 100 * max(self.disturbed)))
        if self.bad:
            print("RESPONSE CHECK FAILED:")
            for b in self.bad:
                print("  " + b)
        else:
            print("checks: every response was a 200 with the expected body length")
        print("targets: %d passed, %d missed" % (npass, len(verdicts) - npass))


# ---------------------------------------------------------------- profile


def profile(a):
    b = Bench(a)
    if not shutil.which("valgrind"):
        print("valgrind is not installed")
        return 1
    out = os.path.join(b.tmp, "callgrind.out")
    try:
        b.start_mock()
        g = b.start_llmgw("llmgw-callgrind", wrap=["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out])
        g["expect"] = b.probe(g)
        b.nevents = g["expect"]["events"]
        for kind in ("rs", "rst"):
            b.probe_rs(g, kind)

        def opts(kind):
            if kind not in ("rs", "rst"):
                return ["-L", str(g["expect"][kind])]
            # Responses: the path, the end event; the translated one's length varies with the request id
            o = ["-P", RS_PATH, "-D", "event: response.completed"]
            return o + (["-L", str(g["expect"][kind])] if not g["idocc"][kind][0] else [])
        for kind, n in (("json", 20), ("stream", 5), ("rs", 5), ("rst", 5)):
            b.benchcli("count", g, kind, n, opts(kind))
        parts = []
        for kind, n in (("json", a.profile_json), ("stream", a.profile_stream), ("rs", a.profile_stream),
                        ("rst", a.profile_stream)):
            subprocess.run(["callgrind_control", "-z", str(g["pid"])], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)
            t0 = time.time()
            r = b.benchcli("count", g, kind, n, opts(kind))
            dt = time.time() - t0
            before = set(glob.glob(out + ".*"))
            subprocess.run(["callgrind_control", "-d", kind, str(g["pid"])], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)
            t = time.time() + 30
            new = []
            while time.time() < t and not new:
                time.sleep(0.2)
                new = sorted(set(glob.glob(out + ".*")) - before)
            if not new:
                raise RuntimeError("callgrind wrote no dump")
            parts.append((kind, n, r, dt, new[-1]))
        g["proc"].stop(timeout=30)
    finally:
        b.stop_all()
    for kind, n, r, dt, fn in parts:
        ann = subprocess.run(["callgrind_annotate", "--threshold=100", fn], stdout=subprocess.PIPE,
                             text=True).stdout
        m = re.search(r"^\s*([\d,]+)\s.*PROGRAM TOTALS", ann, re.M)
        total = int(m.group(1).replace(",", "")) if m else 0
        print()
        print("== %s: %d requests (%d ok, %d bad) in %.1f s under callgrind: %s instructions, %.0f per request" % (
            kind, n, r.get("ok", 0), r.get("bad", 0), dt, "{:,}".format(total), total / n if n else 0))
        print("== top %d functions by instructions (self cost; %s)" % (a.top, os.path.basename(fn)))
        shown = 0
        infuncs = False
        for line in ann.splitlines():
            if "file:function" in line:
                infuncs = True
                continue
            if not infuncs or not re.match(r"^\s*[\d,]+ \(", line):
                continue
            # functions still on the stack when the dump was taken (main...) show the whole total
            if "(100.0%)" in line:
                continue
            line = re.sub(r" \[[^]]*\]$", "", line)  # the object file
            line = re.sub(r"\./[^ ]*/", "", line)  # libc source paths
            print(line)
            shown += 1
            if shown >= a.top:
                break
    keep = os.path.join(a.profile_dir or os.path.dirname(b.tmp), "llmgw-callgrind-%s" % time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(keep, exist_ok=True)
    for kind, n, r, dt, fn in parts:
        shutil.copy(fn, os.path.join(keep, "callgrind.out.%s" % kind))
    print("callgrind files: %s/callgrind.out.{json,stream,rs,rst} (callgrind_annotate or kcachegrind; rs = "
          "Responses stream native, rst = translated)" % keep)
    return 1 if b.bad else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tmp", required=True, help="work directory holding mockfast, benchcli and llmgw")
    ap.add_argument("--llmgw-src", default=os.path.join(ROOT, "llmgw"), help="binary whose size is reported")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5, help="seconds per c50 run")
    ap.add_argument("--c1-duration", type=int, default=2, help="seconds per 1-connection run")
    ap.add_argument("--c1-stream-duration", type=int, default=1,
                    help="seconds per 1-connection run of the chat and Responses streams")
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--spacing-ms", type=int, default=20, help="event spacing of the timing streams")
    ap.add_argument("--timed-streams", type=int, default=10)
    ap.add_argument("--idle-conns", type=int, default=1000)
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--hold", type=int, default=3, help="seconds the memory phases hold their connections")
    ap.add_argument("--retries", type=int, default=4,
                    help="runs measured again when other processes disturbed them")
    ap.add_argument("--quiet-budget", type=float, default=45,
                    help="seconds in all spent waiting for other processes to quieten")
    ap.add_argument("--musl-bin", help="a static musl llmgw whose idle RSS is reported too")
    ap.add_argument("--workers-secs", type=int, default=4, help="seconds per workers run (0: no workers runs)")
    ap.add_argument("--quick", action="store_true", help="1 round of 2 s (a smoke test)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--profile-json", type=int, default=2000)
    ap.add_argument("--profile-stream", type=int, default=200)
    ap.add_argument("--profile-dir", help="where --profile keeps its callgrind files (default: the temp dir's parent)")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    if a.quick:
        a.rounds, a.duration, a.c1_duration, a.timed_streams, a.hold, a.workers_secs = 1, 2, 1, 3, 2, 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * max(a.idle_conns, a.streams) + 1000
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(want, soft), hard) if hard != resource.RLIM_INFINITY else want, hard))
        except (ValueError, OSError):
            pass
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < want:
        log("open-file limit %d is below %d: the 1000-connection phases may fail" % (
            resource.getrlimit(resource.RLIMIT_NOFILE)[0], want))
    if a.profile:
        return profile(a)
    b = Bench(a)
    try:
        return b.run()
    except Exception as e:  # noqa: BLE001 - report and clean up
        log("FAILED: %s" % e)
        return 2
    finally:
        b.stop_all()


if __name__ == "__main__":
    sys.exit(main())
