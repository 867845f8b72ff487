#!/usr/bin/env python3
"""llmgw with the real clients (issue 15 item 5): the Codex CLI, Claude Code and the official
node SDKs (`openai`, `@anthropic-ai/sdk`), installed at pinned versions into build/clients
by tests/clients.sh (from .ci/deps.sh), against llmgw and the scripted mock upstream
tests/climock.py.

    python3 tests/clients_test.py                 # all tests, against ./llmgw (~15 s)
    python3 tests/clients_test.py -k codex        # only tests whose name contains "codex"
    python3 tests/clients_test.py --gw build/llmgw-asan -v
    python3 tests/clients_test.py --list

Off the network: the suite re-executes itself once under `unshare -n` (not root: `unshare -r
-n`), a network namespace holding only loopback, brought up at start, so the mock, the
gateways and every client run where nothing but 127.0.0.1 is reachable; test_00 checks it.
Each client also gets an environment built from nothing (no variable of the caller's reaches
it): temporary HOME, TMPDIR, CODEX_HOME and CLAUDE_CONFIG_DIR, its own telemetry switches off
(Claude Code: CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC, DISABLE_AUTOUPDATER, DISABLE_TELEMETRY,
DISABLE_ERROR_REPORTING; Codex: [analytics] and [feedback] off, no OTEL exporter, no update
check, the plugins features off, --ephemeral), and a 60 s limit per run. A client that is not
installed is a failure, never a skip (sh tests/clients.sh installs them; LLMGW_CLIENTS_DIR=DIR
uses another installation with the same layout, DIR/node_modules/...).

Tool round trips: each test writes a random token into a file of the client's working
directory and tells the mock (POST /_config); the mock's first reply calls the client's own
tool to read it (Codex: exec_command {"cmd": "cat FILE"}, which the CLI runs in a shell;
Claude Code: Read {"file_path": FILE}), its second reply is "TOOL SAID: <the tool output>".
A test checks the client's final output holds the token and the mock received the token
inside a tool result, in the wire format of the target (Responses function_call_output,
Anthropic tool_result, chat role tool).

Gateway: one per test, on its own llmgw.ini (the mock behind provider `an` (anthropic), `oa`
(openai, chat completions) and, for the *_native tests, `rs` (openai with `responses = yes`:
the Responses API forwarded natively); models m-an, m-oa, m-rs; key sk-clients-test).

Records: build/clients-log/ is emptied at start; build/clients-log/<test>/ holds for every test
the client's command line and environment (cmd.txt), stdout, stderr, the gateway's llmgw.ini,
access log and stderr, and what reached the mock: upstream.json (every request: method, path,
headers, body) and upstream.txt (a summary: paths, notable headers, body fields, tools and
their parameters, tool results). The test_*_direct tests point the CLI at the mock itself (no
gateway), so their upstream.* is exactly what the CLI sends; climock.jsonl has every request
of the run.
"""
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
from harness import (HERE, ROOT, PYTHON, Fail, check, eq, snip, read_file, limit)  # noqa: E402

import climock as CM  # noqa: E402

NETNS_FLAG = "LLMGW_CLIENTS_NETNS"
CLIENTS = os.path.abspath(os.environ.get("LLMGW_CLIENTS_DIR") or os.path.join(ROOT, "build", "clients"))
LOGDIR = os.path.join(ROOT, "build", "clients-log")
PINS_FILE = os.path.join(HERE, "clients", "pins.txt")
SDK_DIR = os.path.join(HERE, "clients")
CLI_TIMEOUT = 60
KEY = "sk-clients-test"
MOCK = None


def pins():
    out = {}
    for ln in read_file(PINS_FILE).splitlines():
        f = ln.split()
        if f and not f[0].startswith("#"):
            out[f[0]] = f[1]
    return out


def bin_path(name):
    return os.path.join(CLIENTS, "node_modules", ".bin", name)


def need_cli(name):
    p = bin_path(name)
    check(os.path.exists(p), "%s is not installed (%s missing): run sh tests/clients.sh" % (name, p))
    return p


def need_pkg(name):
    pj = os.path.join(CLIENTS, "node_modules", name, "package.json")
    check(os.path.isfile(pj), "%s is not installed (%s missing): run sh tests/clients.sh" % (name, pj))
    return pj


# =======================================================================================
# the network namespace

def lo_up():
    """Bring up lo in this (new) network namespace: `ip link set lo up`, else SIOCSIFFLAGS."""
    ip = shutil.which("ip") or next((p for p in ("/usr/sbin/ip", "/sbin/ip") if os.path.exists(p)), None)
    if ip and subprocess.run([ip, "link", "set", "lo", "up"], capture_output=True).returncode == 0:
        return None
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        ifr = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, 0x8913, ifr)[:18])[1]      # SIOCGIFFLAGS
        fcntl.ioctl(s, 0x8914, struct.pack("16sh", b"lo", flags | 1))           # SIOCSIFFLAGS, IFF_UP
        s.close()
    except OSError as e:
        return "cannot bring up lo in the network namespace: %s" % e
    return None


def enter_netns():
    """Re-execute this script under `unshare -n` (once); inside, bring up lo. Returns None, or
    why the namespace could not be had."""
    if os.environ.get(NETNS_FLAG) == "1":
        return lo_up()
    un = shutil.which("unshare")
    if not un:
        return "unshare (util-linux) not found: the clients must run in a network namespace"
    why = []
    for flags in (["-n"], ["-r", "-n"]):      # as root; else in a user namespace of its own
        probe = subprocess.run([un] + flags + ["true"], capture_output=True)
        if probe.returncode == 0:
            env = dict(os.environ)
            env[NETNS_FLAG] = "1"
            sys.stdout.flush()
            os.execve(un, [un] + flags + ["--", PYTHON, os.path.abspath(__file__)] + sys.argv[1:], env)
        why.append("unshare %s: %s" % (" ".join(flags), probe.stderr.decode("utf-8", "replace").strip()))
    return "cannot make a network namespace (%s)" % "; ".join(why)


# =======================================================================================
# the mock and the gateway

class Mock(H.MockProc):
    def __init__(self):
        super().__init__([PYTHON, os.path.join(HERE, "climock.py"), "--port", "0",
                          "--log", os.path.join(LOGDIR, "climock.jsonl")], "llmgw-climock-", "climock")

    def call(self, method, path, body=None):
        if not self.alive():
            raise Fail("climock died; its stderr: %s" % read_file(self.stderr_path)[-2000:])
        r = H.http_request(self.port, method, path, body, key=None, timeout=10)
        check(r.status == 200, "climock %s %s: %r" % (method, path, r))
        return r.json()

    def requests(self):
        return self.call("GET", "/_requests")


def mock():
    global MOCK
    if MOCK is None:
        MOCK = Mock()
        H.CTX.mock_mark = 0
    if not MOCK.alive():
        raise Fail("climock died; its stderr: %s" % read_file(MOCK.stderr_path)[-2000:])
    return MOCK


def config_text(port, mp, access_log, native=False):
    out = """[gateway]
listen = 127.0.0.1:{port}
access_log = {log}
auth = keys
connect_timeout = 2s
first_byte_timeout = 20s
stream_idle_timeout = 20s
max_attempts = 1
log_level = warn

[provider.an]
type = anthropic
base_url = http://127.0.0.1:{mp}
api_key = an-upstream-secret

[provider.oa]
type = openai
base_url = http://127.0.0.1:{mp}/v1
api_key = sk-oa-upstream-secret

[model.m-an]
target = an climock-an in=1 out=2

[model.m-oa]
target = oa climock-oa in=1 out=2

[key.clients]
secret = {key}
""".format(port=port, mp=mp, log=access_log, key=KEY)
    if native:
        out += """
[provider.rs]
type = openai
base_url = http://127.0.0.1:{mp}/v1
api_key = sk-rs-upstream-secret
responses = yes

[model.m-rs]
target = rs climock-rs in=1 out=2
""".format(mp=mp)
    return out


class Gateway(H.GatewayBase):
    prefix = "llmgw-clients-"

    def __init__(self, native=False):
        super().__init__()
        self.write(config_text(self.port, mock().port, self.access_log, native))

    def health(self):
        return H.http_request(self.port, "GET", "/health", key=None, timeout=1).status

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port


# =======================================================================================
# one test's files, records and client runs

class Case:
    """The current test's temp dirs (work dir with the token file, HOME, CODEX_HOME,
    CLAUDE_CONFIG_DIR, TMPDIR), its log dir under build/clients-log, the mock reset and told
    which file the scripted tool call reads; its records are saved at cleanup."""

    def __init__(self, gateway=True, native=False):
        self.name = H.CTX.name[5:] if H.CTX.name.startswith("test_") else H.CTX.name
        self.log = os.path.join(LOGDIR, self.name)
        shutil.rmtree(self.log, ignore_errors=True)
        os.makedirs(self.log)
        self.dir = tempfile.mkdtemp(prefix="llmgw-clients-%s-" % self.name)
        for d in ("work", "home", "codex-home", "claude-config", "tmp"):
            os.makedirs(os.path.join(self.dir, d))
        self.work = os.path.join(self.dir, "work")
        self.home = os.path.join(self.dir, "home")
        self.codex_home = os.path.join(self.dir, "codex-home")
        self.claude_config = os.path.join(self.dir, "claude-config")
        self.tmp = os.path.join(self.dir, "tmp")
        self.token = "tok-%s" % os.urandom(8).hex()
        self.token_file = os.path.join(self.work, "token.txt")
        with open(self.token_file, "w") as f:
            f.write(self.token + "\n")
        self.mock = mock()
        self.mock.call("POST", "/_reset")
        self.mock.call("POST", "/_config", {"file": self.token_file})
        self.gw = None
        self.runs = {}
        H.on_cleanup(self.save)
        if gateway:
            self.gw = Gateway(native=native)
            shutil.copy(self.gw.cfg, os.path.join(self.log, "llmgw.ini"))
            self.gw.start()

    def save(self):
        try:
            reqs = self.mock.requests()
        except Exception as e:      # the records are help, not the verdict
            reqs = [{"error": "could not read climock's requests: %s" % e}]
        with open(os.path.join(self.log, "upstream.json"), "w") as f:
            json.dump(reqs, f, indent=1)
        with open(os.path.join(self.log, "upstream.txt"), "w") as f:
            f.write(describe(reqs))
        if self.gw is not None:
            for src, dst in ((self.gw.access_log, "access.jsonl"), (self.gw.stderr_path, "gateway.stderr")):
                if os.path.exists(src):
                    shutil.copy(src, os.path.join(self.log, dst))
        shutil.rmtree(self.dir, ignore_errors=True)

    def upstream(self, kind=None):
        return [r for r in self.mock.requests() if kind is None or r["kind"] == kind]

    def base_env(self):
        node = shutil.which("node") or "/usr/bin/node"
        path = [os.path.join(CLIENTS, "node_modules", ".bin"), os.path.dirname(node),
                "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        path = [p for i, p in enumerate(path) if p not in path[:i]]
        return {"PATH": ":".join(path), "HOME": self.home, "TMPDIR": self.tmp, "LANG": "C.UTF-8",
                "TERM": "dumb", "NO_COLOR": "1", "SHELL": "/bin/bash"}

    def run(self, argv, env, what, timeout=CLI_TIMEOUT, cwd=None):
        """Run a client in its own process group (killed, stray children too, at the end or
        on timeout); its command line, stdout and stderr go to the test's log dir."""
        n = self.runs[what] = self.runs.get(what, 0) + 1
        tag = what if n == 1 else "%s-%d" % (what, n)
        with open(os.path.join(self.log, tag + ".cmd.txt"), "w") as f:
            f.write("cd %s\n" % (cwd or self.work))
            f.write("".join("%s=%s\n" % kv for kv in sorted(env.items())))
            f.write(" ".join(json.dumps(a) if (" " in a or not a) else a for a in argv) + "\n")
        t0 = time.monotonic()
        p = subprocess.Popen(argv, cwd=cwd or self.work, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        timed_out = False
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            self._killpg(p)
            out, err = p.communicate(10)
        finally:
            self._killpg(p)
        wall = time.monotonic() - t0
        out = out.decode("utf-8", "replace")
        err = err.decode("utf-8", "replace")
        for suffix, data in ((".stdout", out), (".stderr", err)):
            with open(os.path.join(self.log, tag + suffix), "w") as f:
                f.write(data)
        with open(os.path.join(self.log, tag + ".cmd.txt"), "a") as f:
            f.write("# exit status %s, %.2f s%s\n" % (p.returncode, wall, ", TIMED OUT" if timed_out else ""))
        if H.VERBOSE:
            print("    %s: exit %s in %.2fs" % (tag, p.returncode, wall), flush=True)
        return Run(what, p.returncode, out, err, wall, timed_out, timeout)

    @staticmethod
    def _killpg(p):
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    # ---- Codex CLI -------------------------------------------------------------------
    def codex(self, base_url, model, prompt=None, key=KEY):
        exe = need_cli("codex")
        with open(os.path.join(self.codex_home, "config.toml"), "w") as f:
            f.write(codex_config(base_url, model))
        shutil.copy(os.path.join(self.codex_home, "config.toml"), os.path.join(self.log, "codex-config.toml"))
        env = self.base_env()
        env.update({"CODEX_HOME": self.codex_home, "LLMGW_API_KEY": key})
        last = os.path.join(self.dir, "codex-last-message.txt")
        argv = [exe, "exec", "--strict-config", "--skip-git-repo-check", "--ephemeral",
                "--dangerously-bypass-approvals-and-sandbox", "--color", "never", "-o", last,
                prompt or "Show me what the file token.txt in this directory says."]
        r = self.run(argv, env, "codex")
        r.last = read_file(last)
        return r

    # ---- Claude Code -----------------------------------------------------------------
    def claude(self, base_url, model, prompt=None, key=KEY, timeout=CLI_TIMEOUT):
        exe = need_cli("claude")
        env = self.base_env()
        env.update({"CLAUDE_CONFIG_DIR": self.claude_config, "ANTHROPIC_BASE_URL": base_url,
                    "ANTHROPIC_API_KEY": key, "ANTHROPIC_MODEL": model,
                    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
                    "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1"})
        argv = [exe, "-p", prompt or "Read the file %s and tell me what it says." % self.token_file,
                "--output-format", "text", "--no-session-persistence"]
        return self.run(argv, env, "claude", timeout=timeout)

    # ---- node SDKs ---------------------------------------------------------------------
    def node(self, script, args, what):
        need_pkg({"openai_sdk.cjs": "openai", "anthropic_sdk.cjs": "@anthropic-ai/sdk"}[script])
        env = self.base_env()
        env.update({"NODE_PATH": os.path.join(CLIENTS, "node_modules"), "GW_URL": self.gw.url,
                    "GW_KEY": KEY, "TOKEN_FILE": self.token_file})
        node = shutil.which("node")
        check(node, "node is not installed")
        r = self.run([node, os.path.join(SDK_DIR, script)] + args, env, what, timeout=30)
        check(not r.timed_out, "%s did not finish within %ds" % (what, r.timeout))
        lines = [ln for ln in r.out.splitlines() if ln.startswith("{")]
        check(lines, "%s printed no result (exit %s); stderr: %s" % (what, r.rc, snip(r.err, 1500)))
        try:
            res = json.loads(lines[-1])
        except ValueError:
            raise Fail("%s: result is not JSON: %s" % (what, snip(lines[-1])))
        if not res.get("ok"):
            raise Fail("%s: %s%s%s" % (what, res.get("error"),
                                       " (HTTP %s)" % res["status"] if res.get("status") else "",
                                       "; body %s" % snip(res["body"], 600) if res.get("body") else ""))
        eq(r.rc, 0, "%s exit status" % what)
        return res


class Run:
    def __init__(self, what, rc, out, err, wall, timed_out, timeout):
        self.what, self.rc, self.out, self.err = what, rc, out, err
        self.wall, self.timed_out, self.timeout = wall, timed_out, timeout
        self.last = ""

    def tail(self, n=1500):
        lines = [ln.strip() for ln in (self.err + "\n" + self.out).splitlines() if ln.strip()]
        return "exit %s after %.1f s (last line: %s); stdout: %s; stderr tail: %s" % (
            self.rc, self.wall, snip(lines[-1] if lines else "", 300), snip(self.out, n // 2), snip(self.err[-n:], n))

    def ok(self):
        check(not self.timed_out, "%s did not finish within %ds: %s" % (self.what, self.timeout, self.tail()))
        check(self.rc == 0, "%s failed: %s" % (self.what, self.tail()))


def codex_config(base_url, model):
    return """# written by tests/clients_test.py
model = "{model}"
model_provider = "llmgw"
check_for_update_on_startup = false

[analytics]
enabled = false

[feedback]
enabled = false

[otel]
exporter = "none"

# without these Codex looks up a public host at start (plugin catalogue sync)
[features]
plugins = false
remote_plugin = false

[model_providers.llmgw]
name = "llmgw"
base_url = "{base_url}"
env_key = "LLMGW_API_KEY"
wire_api = "responses"
""".format(model=model, base_url=base_url)


# =======================================================================================
# what reached the mock

def tool_results(reqs, kind):
    """The tool outputs of the turn after the last assistant turn, per request of `kind`."""
    return [CM.tool_result_after_last_assistant(kind, r["json"]) for r in reqs
            if r["kind"] == kind and isinstance(r.get("json"), dict)]


def expect_round_trip(case, run, kind, tool, what):
    """The client finished, its final output holds the token, and the mock got `tool` called
    and then the token back in a tool result of wire format `kind`."""
    run.ok()
    reqs = case.upstream()
    kinds = sorted({"%s %s -> %s" % (r["method"], r["path"], r["reply"]) for r in reqs})
    called = [r for r in reqs if r["kind"] == kind and (r["reply"] or "").startswith("tool:" + tool)]
    check(called, "%s: the mock never got a %s request it could answer with a %s call; it got: %s"
          % (what, kind, tool, kinds))
    res = [t for t in tool_results(reqs, kind) if t is not None]
    check(any(case.token in t for t in res), "%s: no %s request carried the token in a tool result "
          "(tool results seen: %s; requests: %s)" % (what, kind, snip(json.dumps(res), 600), kinds))
    final = run.out + run.last
    check(case.token in final, "%s: the final output lacks the token %s: %s" % (what, case.token, run.tail()))
    check("TOOL SAID:" in final, "%s: the final output is not the mock's second reply: %s" % (what, run.tail()))
    return reqs


def expect_thinking_back(reqs, what):
    """The mock's thinking block (with its signature) came back in the assistant turn of the
    last Anthropic request."""
    last = [q for q in reqs if q["kind"] == "anthropic"][-1]["json"]
    blocks = [b for m in last.get("messages") or [] if m.get("role") == "assistant" and isinstance(m.get("content"), list)
              for b in m["content"] if isinstance(b, dict)]
    th = [b for b in blocks if b.get("type") == "thinking"]
    check(th and th[-1].get("signature") == CM.AN_SIG,
          "%s: the thinking block (signature) did not come back: %s" % (what, snip(json.dumps(blocks), 600)))


def expect_reasoning_back(reqs, what):
    """The mock's reasoning item (encrypted_content) came back in the last Responses request."""
    last = [q for q in reqs if q["kind"] == "responses"][-1]["json"]
    rs = [i for i in last.get("input") or [] if isinstance(i, dict) and i.get("type") == "reasoning"]
    check(rs and rs[-1].get("encrypted_content") == CM.RS_SIG,
          "%s: the reasoning item (encrypted_content) did not come back: %s" % (what, snip(json.dumps(rs))))


def access_statuses(case):
    if case.gw is None:
        return []
    return [(j.get("path"), j.get("status")) for j in case.gw.access_all()]


def describe(reqs):
    """A readable summary of recorded requests (upstream.txt)."""
    out = []
    skip_h = {"host", "content-length", "connection"}
    for r in reqs:
        if "error" in r and "seq" not in r:
            out.append(r["error"])
            continue
        out.append("#%d %s %s  [%s; replied %s]" % (r["seq"], r["method"], r["path"], r["kind"], r["reply"]))
        for k, v in r["header_list"]:
            if k in skip_h:
                continue
            if k in ("authorization", "x-api-key"):
                v = v[:10] + "..." if len(v) > 10 else v
            out.append("    %s: %s" % (k, v if len(v) <= 300 else v[:300] + "...(%d)" % len(v)))
        b = r.get("json")
        if not isinstance(b, dict):
            if r["body"]:
                out.append("    body (not JSON): %s" % snip(r["body"], 300))
            continue
        out.append("    body: %d bytes, fields: %s" % (len(r["body"]), ", ".join(b.keys())))
        for k, v in b.items():
            if k in ("input", "messages", "tools", "system", "instructions"):
                continue
            out.append("      %s = %s" % (k, snip(json.dumps(v), 300)))
        if isinstance(b.get("instructions"), str):
            out.append("      instructions: %d chars" % len(b["instructions"]))
        if b.get("system") is not None:
            s = b["system"]
            out.append("      system: %s" % ("%d chars" % len(s) if isinstance(s, str) else
                                            "%d blocks: %s" % (len(s), snip(json.dumps([
                                                {k: (v if k != "text" else snip(v, 60)) for k, v in x.items()}
                                                for x in s if isinstance(x, dict)]), 500))))
        for t in b.get("tools") or []:
            if not isinstance(t, dict):
                continue
            name = t.get("name") or (t.get("function") or {}).get("name")
            params = t.get("parameters") or t.get("input_schema") or (t.get("function") or {}).get("parameters")
            props = sorted(((params or {}).get("properties") or {}).keys()) if isinstance(params, dict) else []
            sub = ""
            if t.get("type") == "namespace":
                sub = " tools: " + ", ".join(x.get("name", "?") for x in t.get("tools") or [] if isinstance(x, dict))
            out.append("      tool %s %s%s%s" % (t.get("type", "-"), name, " (%s)" % ", ".join(props) if props else "",
                                                 sub))
        items = b.get("input") if isinstance(b.get("input"), list) else b.get("messages") or []
        if isinstance(b.get("input"), str):
            out.append("      input: %s" % snip(b["input"], 200))
        for it in items if isinstance(items, list) else []:
            if not isinstance(it, dict):
                continue
            role = it.get("role") or it.get("type")
            c = it.get("content")
            if isinstance(c, list):
                parts = []
                for p in c:
                    if isinstance(p, dict):
                        t = p.get("type")
                        if t in ("text", "input_text", "output_text"):
                            parts.append("%s(%s)" % (t, snip(p.get("text") or "", 80)))
                        elif t == "tool_use":
                            parts.append("tool_use %s %s" % (p.get("name"), snip(json.dumps(p.get("input")), 120)))
                        elif t == "tool_result":
                            parts.append("tool_result(%s)" % snip(json.dumps(p.get("content")), 160))
                        else:
                            parts.append(str(t))
                desc = "; ".join(parts)
            elif isinstance(c, str):
                desc = snip(c, 120)
            else:
                desc = snip(json.dumps({k: v for k, v in it.items() if k not in ("role", "type", "id")}), 200)
            if it.get("tool_calls"):
                desc += " tool_calls " + snip(json.dumps(it["tool_calls"]), 200)
            out.append("      [%s] %s" % (role, desc.replace("\n", "\\n")))
    return "\n".join(out) + "\n"


# =======================================================================================
# tests: the sandbox and the installation

def test_00_network_namespace_loopback_only():
    eq(os.environ.get(NETNS_FLAG), "1", "running inside the suite's network namespace")
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("192.0.2.1", 443))      # TEST-NET-1: must be unreachable at once, no route
        raise Fail("a non-loopback address was reachable from the namespace")
    except OSError as e:
        eq(e.errno, errno.ENETUNREACH, "connect to 192.0.2.1 (%r): errno" % e)
    finally:
        s.close()
    m = mock()
    eq(H.http_request(m.port, "GET", "/_requests", key=None, timeout=5).status, 200, "loopback works")


def test_01_pinned_clients_installed():
    want = pins()
    check(want, "no pins in %s" % PINS_FILE)
    bad = []
    for name, ver in sorted(want.items()):
        pj = os.path.join(CLIENTS, "node_modules", name, "package.json")
        try:
            have = json.loads(read_file(pj)).get("version")
        except ValueError:
            have = None
        if have != ver:
            bad.append("%s: want %s, have %s" % (name, ver, have or "none"))
    check(not bad, "not installed at the pinned versions (sh tests/clients.sh): %s" % "; ".join(bad))
    case = Case(gateway=False)
    for cli, pkg, expect in (("codex", "@openai/codex", "codex-cli %s"),
                             ("claude", "@anthropic-ai/claude-code", "%s (Claude Code)")):
        r = case.run([need_cli(cli), "--version"], case.base_env(), cli + "-version", timeout=30)
        r.ok()
        check((expect % want[pkg]) in r.out, "%s --version: %s" % (cli, snip(r.out)))


# =======================================================================================
# Codex CLI

@limit(90)
def test_codex_direct():
    """Codex straight at the mock (no gateway): the mock and the harness work; what Codex
    itself sends is recorded."""
    case = Case(gateway=False)
    r = case.codex("http://127.0.0.1:%d/v1" % case.mock.port, "climock-direct")
    reqs = expect_round_trip(case, r, "responses", "exec_command", "codex direct")
    expect_reasoning_back(reqs, "codex direct")


@limit(90)
def test_codex_native_responses():
    """Codex -> llmgw -> an OpenAI provider with `responses = yes`: the Responses body
    forwarded natively (model rewritten), the tool round trip and the reasoning item intact."""
    case = Case(native=True)
    r = case.codex(case.gw.url + "/v1", "m-rs")
    reqs = expect_round_trip(case, r, "responses", "exec_command", "codex native")
    other = [r_["path"] for r_ in reqs if r_["kind"] != "responses"]
    eq(other, [], "codex native: requests upstream other than /v1/responses")
    for q in reqs:
        eq(q["path"], "/v1/responses", "codex native: upstream path")
        eq(q["json"].get("model"), "climock-rs", "codex native: model rewritten to the target's")
        eq(q["headers"].get("authorization"), "Bearer sk-rs-upstream-secret", "codex native: provider key upstream")
    expect_reasoning_back(reqs, "codex native")
    check(all(st == 200 for _, st in access_statuses(case)), "access log: %r" % access_statuses(case))


@limit(90)
def test_codex_translated_anthropic():
    """Codex -> llmgw (Responses dialect) -> an Anthropic provider: translated both ways, the
    shell tool's call and its output carried as tool_use / tool_result."""
    case = Case()
    r = case.codex(case.gw.url + "/v1", "m-an")
    reqs = expect_round_trip(case, r, "anthropic", "exec_command", "codex -> anthropic")
    last = reqs[-1]["json"]
    uses = [b for m in last.get("messages") or [] if m.get("role") == "assistant" and isinstance(m.get("content"), list)
            for b in m["content"] if b.get("type") == "tool_use"]
    check(uses and uses[-1]["name"] == "exec_command" and uses[-1]["input"] == {"cmd": "cat %s" % case.token_file},
          "codex -> anthropic: the assistant's tool_use sent back: %s" % snip(json.dumps(uses)))
    check(all(st == 200 for _, st in access_statuses(case)), "access log: %r" % access_statuses(case))


# =======================================================================================
# Claude Code

@limit(90)
def test_claude_direct():
    """Claude Code straight at the mock (no gateway): what Claude Code itself sends."""
    case = Case(gateway=False)
    r = case.claude("http://127.0.0.1:%d" % case.mock.port, "climock-direct")
    reqs = expect_round_trip(case, r, "anthropic", "Read", "claude direct")
    expect_thinking_back(reqs, "claude direct")


@limit(90)
def test_claude_translated_openai():
    """Claude Code -> llmgw (Anthropic dialect, system entries inside messages) -> an OpenAI
    chat provider: the Read tool's call and result as tool_calls / a tool message."""
    case = Case()
    r = case.claude(case.gw.url, "m-oa")
    reqs = expect_round_trip(case, r, "chat", "Read", "claude -> openai")
    for q in reqs:
        if q["kind"] == "chat":
            roles = [m.get("role") for m in q["json"].get("messages") or []]
            check(set(roles) <= {"system", "developer", "user", "assistant", "tool"}, "chat roles: %r" % roles)
    check(all(st == 200 for _, st in access_statuses(case)), "access log: %r" % access_statuses(case))


@limit(90)
def test_claude_native_anthropic():
    """Claude Code -> llmgw -> an Anthropic provider: forwarded natively (?beta=true, every
    anthropic-beta value, Claude Code's own body fields), the Read round trip."""
    case = Case()
    r = case.claude(case.gw.url, "m-an")
    reqs = expect_round_trip(case, r, "anthropic", "Read", "claude native")
    expect_thinking_back(reqs, "claude native")
    for q in (q for q in reqs if q["kind"] == "anthropic"):
        check("beta=true" in q["path"], "claude native: ?beta=true not forwarded: %s" % q["path"])
        beta = q["headers"].get("anthropic-beta") or ""
        check("claude-code-20250219" in beta, "claude native: anthropic-beta upstream: %r" % beta)
        eq(q["headers"].get("x-api-key"), "an-upstream-secret", "claude native: the provider's key upstream")
        eq(q["json"].get("model"), "climock-an", "claude native: model rewritten")
        for k in ("thinking", "context_management", "output_config", "metadata"):
            check(k in q["json"], "claude native: body field %s not forwarded (fields: %s)" % (k, list(q["json"])))
    check(all(st == 200 for _, st in access_statuses(case)), "access log: %r" % access_statuses(case))


@limit(60)
def test_claude_bad_key_ends_at_once():
    """A key the gateway does not know: Claude Code must stop at once (no retries: the 401
    says x-should-retry: false; without it Claude Code retries 7 times and is still waiting
    after 60 s) and print its own invalid-key message."""
    case = Case()
    r = case.claude(case.gw.url, "m-an", prompt="Say hello.", key="sk-not-a-key", timeout=30)
    out = r.out + r.err
    check(not r.timed_out, "claude with a bad key did not end within %ds: %s" % (r.timeout, r.tail()))
    check(r.rc != 0, "claude with a bad key exited 0: %s" % r.tail())
    check(r.wall < 15, "claude with a bad key took %.1f s (retries?): %s" % (r.wall, r.tail()))
    # Claude Code's own message; it shows it (rather than "Failed to authenticate. API Error:
    # 401 <the message>") when the 401's error.message names x-api-key, as Anthropic's
    # "invalid x-api-key" does
    check("Invalid API key \u00b7" in out, "claude with a bad key: not Claude Code's own invalid-key message "
          "('Invalid API key \u00b7 Fix external API key', shown when the 401's error.message names x-api-key, as "
          "Anthropic's 'invalid x-api-key' does): %s" % r.tail())
    eq([q["path"] for q in case.upstream()], [], "claude with a bad key: requests upstream")
    sts = access_statuses(case)
    check(sts and all(st == 401 for _, st in sts), "access log: expected only 401s: %r" % sts)
    check(len(sts) <= 2, "claude with a bad key: %d requests (retried a 401; without x-should-retry: false "
          "it retries 7-9 times)" % len(sts))


# =======================================================================================
# the official node SDKs

OPENAI_CASES = ["create", "stream", "tool", "json"]
TARGETS = {"translated": ("m-oa", False, "chat"), "native": ("m-rs", True, "responses")}


def _openai_test(kase, target):
    model, native, kind = TARGETS[target]

    def test():
        case = Case(native=native)
        res = case.node("openai_sdk.cjs", [kase, model], "openai-" + kase)
        reqs = case.upstream()
        check(reqs, "openai %s (%s): nothing reached the mock" % (kase, target))
        for q in reqs:
            eq(q["kind"], kind, "openai %s (%s): the upstream wire format (%s)" % (kase, target, q["path"]))
        if kase == "tool":
            check(any(res["tool_output"] in (t or "") for t in tool_results(reqs, kind)),
                  "openai tool (%s): the tool output did not reach the mock" % target)
            check(case.token in res["tool_output"], "openai tool (%s): the tool read %r" % (target, res["tool_output"]))
        if native:
            for q in reqs:
                eq(q["json"].get("model"), "climock-rs", "openai %s native: model rewritten" % kase)
    test.__name__ = "test_sdk_openai_%s_%s" % (kase, target)
    test.__doc__ = "openai SDK responses.create (%s) through a %s target" % (kase, target)
    return limit(40)(test)


for _k in OPENAI_CASES:
    for _t in TARGETS:
        globals()["test_sdk_openai_%s_%s" % (_k, _t)] = _openai_test(_k, _t)


@limit(40)
def test_sdk_openai_models_retrieve():
    case = Case()
    res = case.node("openai_sdk.cjs", ["models", "m-an"], "openai-models")
    check("m-oa" in res["list"], "models.list: %r" % res["list"])


@limit(40)
def test_sdk_anthropic_count_tokens_translated():
    """messages.countTokens for a model whose target is OpenAI: llmgw's estimate."""
    case = Case()
    case.node("anthropic_sdk.cjs", ["count_tokens", "m-oa"], "anthropic-count-tokens")
    eq([q["path"] for q in case.upstream()], [], "count_tokens estimate: requests upstream")


@limit(40)
def test_sdk_anthropic_count_tokens_native():
    """messages.countTokens for a model whose target is Anthropic: forwarded to it (issue 15
    item 3), the upstream's count returned."""
    case = Case()
    res = case.node("anthropic_sdk.cjs", ["count_tokens", "m-an"], "anthropic-count-tokens")
    ups = case.upstream("count_tokens")
    check(ups, "count_tokens for an Anthropic target was not forwarded (llmgw answered %r itself; "
          "upstream got %r)" % (res.get("input_tokens"), [q["path"] for q in case.upstream()]))
    eq(ups[0]["json"].get("model"), "climock-an", "count_tokens forwarded: model rewritten")
    eq(res["input_tokens"], CM.count_tokens(ups[0]["json"])["input_tokens"], "count_tokens: the upstream's count")


@limit(40)
def test_sdk_anthropic_models_list():
    case = Case()
    res = case.node("anthropic_sdk.cjs", ["models", "m-an", "m-oa"], "anthropic-models")
    check(res["first_page"]["has_more"], "models.list limit 1: has_more: %r" % res["first_page"])


# =======================================================================================

def setup():
    shutil.rmtree(LOGDIR, ignore_errors=True)
    os.makedirs(LOGDIR, exist_ok=True)
    return None


def teardown():
    if MOCK is not None:
        MOCK.stop()
        shutil.rmtree(MOCK.dir, ignore_errors=True)


def main():
    if "--list" not in sys.argv and "-h" not in sys.argv and "--help" not in sys.argv:
        why = enter_netns()
        if why:
            print("FAIL test_00_network_namespace_loopback_only: %s" % why, flush=True)
            print("0 passed, 1 failed", flush=True)
            return 1
    return H.main(globals(), "llmgw with the real clients (Codex CLI, Claude Code, the node SDKs)",
                  mock_label="climock", time_fails=True, setup=setup, teardown=teardown)


if __name__ == "__main__":
    sys.exit(main())
