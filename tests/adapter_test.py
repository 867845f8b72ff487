#!/usr/bin/env python3
"""llmgw provider-adapter tests: the translation between the two inbound dialects
(POST /v1/chat/completions, POST /v1/messages) and every provider type (openai, azure,
anthropic, gemini, bedrock), against the scripted wire-format mock tests/provmock.py.

    python3 tests/adapter_test.py                  # all tests, against ./llmgw
    python3 tests/adapter_test.py -k gemini        # only tests whose name contains "gemini"
    python3 tests/adapter_test.py --gw build/llmgw-asan -v
    python3 tests/adapter_test.py --list
    LLMGW_WRAP="valgrind --error-exitcode=99 -q" python3 tests/adapter_test.py -k text

What is covered (the reference is /work/shared/PROVIDERS.md):
- request translation, checked on the mock side (the body, path and headers the provider
  received): system messages, roles, multi-part content and images, tools and tool_choice,
  parallel_tool_calls, tool results, stop sequences, max_tokens, temperature, response_format,
  user, Gemini schema cleaning, thought signatures, made-up tool-call ids, URLs and auth per
  type, SigV4 (verified with an implementation of section 4, itself checked against the
  public AWS test vector);
- response translation: text, tool calls, parallel tool calls, reasoning, finish reasons,
  usage normalized per section 6 and usage.cost from the target prices (also in the access
  log), every error shape of section 5 (retryable ones fall back, others do not) in the
  client's dialect, errors in the middle of a stream, CRLF/CR framing, multi-line data:,
  comments, unknown events, events split at every byte (1-byte sends, a sweep of split
  offsets), one 400 KB event, Bedrock frames with a bad CRC and with every header type,
  concurrent translated streams, pooled provider connections after failed streams;
- equivalence: the joined translated stream equals the non-streamed translation of the same
  scripted reply, per provider type and per inbound dialect;
- Anthropic -> Anthropic goes through natively: the body as sent (thinking adaptive,
  output_config, context_management, unknown fields), ?beta=true on the upstream path, a long
  anthropic-beta verbatim, 4xx bodies byte for byte, an error right after message_start (or a
  stream that ends there) falling back;
- the Anthropic dialect translated: thinking enabled / adaptive + output_config.effort as
  reasoning_effort (OpenAI, Azure) or a thinking budget (Gemini), context_management and an
  effort without adaptive thinking named in llmgw-dropped-fields;
- POST /v1/messages/count_tokens: forwarded to Anthropic targets (query, anthropic-beta, the
  answer with provider first, 4xx passed on), llmgw's estimate (llmgw-estimated: true) without
  one or when they fail (5xx, 529, 429, connection refused).

Providers (one shared gateway, all `direct = yes`, all pointing at one provmock): oa (openai),
az / azq / azv (azure: classic path, classic with api_version, /openai/v1), an / an1
(anthropic, base without and with /v1), ge (gemini), br (bedrock, Bearer key), brs / brt
(bedrock, SigV4 without and with a session token), fb (openai: the fallback target), andead
(anthropic on port 1: connection refused).
Models `P-SCENARIO` carry prices (in=2 out=8 cache_read=0.5 cache_write=2.5 USD/Mtok); error
models `P-err-NNN` fall back to `fb`. Each test finds its requests in the mock's log by a
random marker in the prompt. Prints "PASS name" / "FAIL name: reason" per test and ends with
"N passed, N failed"; exit status 1 if any failed. Standard library only; 127.0.0.1 only;
every wait is bounded.
"""
import hashlib
import hmac
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402  (the shared runner, assertions and process helpers)
from harness import (HERE, ROOT, PYTHON, WRAP, TOL, GW, VERBOSE, CTX, Fail, check, eq,  # noqa: E402,F401
                     near, snip, marker, free_port, read_file)

MOCK_SCRIPT = os.path.join(HERE, "provmock.py")
MOCK = None

import provmock as PM  # noqa: E402  (the scripts and the event-stream codec)

# what the mock's scripts say (see provmock.SCRIPTS)
TEXT = PM.TEXT                                        # 'Hello from "prov"mock\n ✓ déjà'
FB_TEXT = TEXT                                        # the fallback target (fb) answers `text`
PRICES = "in=2 out=8 cache_read=0.5 cache_write=2.5"  # USD per million tokens
PROVS = ["oa", "az", "an", "ge", "br"]
WIRE = {"oa": "openai", "az": "azure", "azq": "azure", "azv": "azure", "an": "anthropic",
        "an1": "anthropic", "ge": "gemini", "br": "bedrock", "brs": "bedrock", "brt": "bedrock",
        "fb": "openai"}
NATIVE = {("oa", "oa"), ("az", "oa"), ("an", "an")}   # (provider, dialect) pairs that are native
SIGV4 = {"brs": ("AKIDPROVMOCK", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYPROVMOCK", "eu-west-3", None),
         "brt": ("ASIAPROVMOCK", "secret/with+chars=PROVMOCK", "us-west-2",
                 "IQoJb3JpZ2luX2VjEPROVMOCK//session+token=")}
RETRYABLE = {408, 429, 500, 502, 503, 504, 529}
OA_FIN_TO_AN = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "content_filter": "refusal"}


# =======================================================================================
# assertions


# =======================================================================================
# per-test context


# =======================================================================================
# raw HTTP (harness.Conn)

def http(port, method, path, body=None, headers=None, key="sk-test", timeout=15):
    """harness.http_request with this suite's default timeout (15 s)."""
    return H.http_request(port, method, path, body, headers, key, timeout)


# =======================================================================================
# processes: provmock and the gateway


class Mock(H.MockProc):
    def __init__(self):
        super().__init__([PYTHON, MOCK_SCRIPT, "--port", "0"], "llmgw-provmock-", "provmock")

    def requests(self):
        if not self.alive():
            raise Fail("provmock died; its stderr: %s" % read_file(self.stderr_path)[-2000:])
        r = http(self.port, "GET", "/_requests", key=None)
        check(r.status == 200, "provmock GET /_requests: %r" % r)
        return r.json()

    def find(self, mk):
        return [r for r in self.requests() if mk in r["body"]]

    def raw(self, path, body):
        """The mock's own answer to a request (what the gateway gets upstream)."""
        return http(self.port, "POST", path, body, key=None)


def mock():
    global MOCK
    if MOCK is None:
        MOCK = Mock()
        H.CTX.mock_mark = 0
    if not MOCK.alive():
        raise Fail("provmock died; its stderr: %s" % read_file(MOCK.stderr_path)[-2000:])
    return MOCK


PRICED_SCENARIOS = ["text", "tool", "tools2", "think", "usage", "length", "filter", "json", "notool",
                    "mixed", "toolsig", "toolesc"]
ERR_STATUSES = {"oa": [400, 401, 403, 404, 429, 500, 503], "az": [400, 404, 429, 500, 503],
                "an": [400, 401, 403, 404, 413, 429, 500, 529],
                "ge": [400, 403, 404, 429, 500, 503, 504],
                "br": [400, 403, 404, 408, 429, 500, 503]}
FB_SCENARIOS = ["midfail", "earlyfail", "earlyfail-400", "trunc", "trunc-early", "err-quota", "err-424s", "badcrc",
                "badprelude", "badcrc-mid"]


def config_text(port, mp, access_log, extra=""):
    out = ["""[gateway]
listen = 127.0.0.1:{port}
access_log = {log}
auth = keys
header_timeout = 2s
idle_timeout = 5s
connect_timeout = 1s
first_byte_timeout = 4s
stream_idle_timeout = 3s
max_attempts = 3
log_level = warn

[provider.oa]
type = openai
base_url = http://127.0.0.1:{mp}/v1
api_key = sk-oa-secret
direct = yes

[provider.az]
type = azure
base_url = http://127.0.0.1:{mp}
api_key = az-secret
direct = yes

[provider.azq]
type = azure
base_url = http://127.0.0.1:{mp}/azq/
api_key = azq-secret
api_version = 2025-04-01-preview
direct = yes

[provider.azv]
type = azure
base_url = http://127.0.0.1:{mp}/openai/v1
api_key = azv-secret
direct = yes

[provider.an]
type = anthropic
base_url = http://127.0.0.1:{mp}
api_key = an-secret
direct = yes

[provider.an1]
type = anthropic
base_url = http://127.0.0.1:{mp}/proxy/v1
api_key = an1-secret
direct = yes

[provider.ge]
type = gemini
base_url = http://127.0.0.1:{mp}/v1beta
api_key = ge-secret
direct = yes

[provider.br]
type = bedrock
base_url = http://127.0.0.1:{mp}
api_key = br-bearer-token
direct = yes

[provider.fb]
type = openai
base_url = http://127.0.0.1:{mp}/fallback/v1
api_key = fb-secret
direct = yes
""".format(port=port, mp=mp, log=access_log)]
    for name, (akid, secret, region, token) in SIGV4.items():
        out.append("[provider.%s]\ntype = bedrock\nbase_url = http://127.0.0.1:%d/%s\naws_access_key_id = %s\n"
                   "aws_secret_access_key = %s\naws_region = %s\n%sdirect = yes\n"
                   % (name, mp, name, akid, secret, region,
                      "aws_session_token = %s\n" % token if token else ""))
    for p in PROVS:
        for s in PRICED_SCENARIOS:
            out.append("[model.%s-%s]\ntarget = %s %s %s\n" % (p, s, p, s, PRICES))
        for st in sorted(set(ERR_STATUSES[p] + [424, 408, 502, 529])):
            out.append("[model.%s-err-%d]\ntarget = %s err-%d#1 %s\ntarget = fb text#fb %s\n"
                       % (p, st, p, st, PRICES, PRICES))
        for s in FB_SCENARIOS:
            out.append("[model.%s-%s]\ntarget = %s %s#1 %s\ntarget = fb text#fb %s\n" % (p, s, p, s, PRICES, PRICES))
    out.append("""[model.exhaust]
target = an err-529#x1 in=1 out=1
target = ge err-503#x2 in=1 out=1

[model.ge-flaky]
target = ge flaky~rd1 in=1 out=1

[model.mt-split]
target = an text#mt1 in=1 out=1 max_output=1000
target = ge text#mt2 in=1 out=1 max_output=8000

[model.img-br-an]
target = br text#img1
target = an text#img2

[provider.andead]
type = anthropic
base_url = http://127.0.0.1:1
api_key = andead-secret
direct = yes

[model.ct-an1]
target = an1 text#ct

[model.ct-mixed]
target = oa text#ct1
target = an text#ct2

[model.ct-dead]
target = andead text

[model.ct-dead-an1]
target = andead text
target = an1 text#ct3

[model.ct-errd-400]
target = an errd-400
target = an1 text#ct4

[model.ct-500]
target = an err-500#ct

[model.ct-529]
target = an err-529#ct

[model.ct-429]
target = an err-429#ct

[model.ct-errd-404]
target = an errd-404

[model.ct-errd-413]
target = an errd-413

[model.an-ef-an]
target = an earlyfail#1 in=2 out=8 cache_read=0.5 cache_write=2.5
target = an1 text#fb2 in=2 out=8 cache_read=0.5 cache_write=2.5

[model.an-te-an]
target = an trunc-early#1 in=2 out=8 cache_read=0.5 cache_write=2.5
target = an1 text#fb2 in=2 out=8 cache_read=0.5 cache_write=2.5

[key.test]
secret = sk-test
""")
    out.append(extra)
    return "\n".join(out) + "\n"


class Gateway(H.GatewayBase):
    prefix = "llmgw-adapter-"

    def __init__(self, shared=False, extra=""):
        super().__init__(shared, register=False)
        self.write(config_text(self.port, mock().port, self.access_log, extra))
        if not shared:
            H.CTX.gateways.append(self)

    def health(self):
        return http(self.port, "GET", "/health", key=None, timeout=1).status

    def access_lines(self, rid, wait=3):
        deadline = time.monotonic() + wait * TOL
        while True:
            for ln in read_file(self.access_log).splitlines():
                try:
                    j = json.loads(ln)
                except ValueError:
                    continue
                if j.get("id") == rid:
                    return j
            if time.monotonic() > deadline:
                raise Fail("no access-log line for request %s" % rid)
            time.sleep(0.05)


SHARED = None
SHARED_FAILED = None


def shared():
    global SHARED, SHARED_FAILED
    if SHARED_FAILED:
        raise Fail("shared gateway could not be started earlier: %s" % SHARED_FAILED)
    if SHARED is not None and not SHARED.alive():
        err, rc = SHARED.stderr()[-3000:], SHARED.proc.poll()
        SHARED = None
        raise Fail("the shared gateway had died (exit status %r) before this test; stderr tail:\n%s" % (rc, err))
    if SHARED is None:
        try:
            SHARED = Gateway(shared=True).start()
        except Fail as e:
            SHARED_FAILED = str(e).split("\n")[0]
            SHARED = None
            raise
    if not any(g is SHARED for g, _ in H.CTX.marks):
        H.CTX.marks.append((SHARED, SHARED.stderr_size()))
    return SHARED


# =======================================================================================
# requests in the two dialects

def user_msgs(mk, text="Say hello."):
    return [{"role": "user", "content": "%s %s" % (text, mk)}]


def oa_req(model, messages=None, stream=False, include_usage=None, mk=None, timeout=15, **extra):
    """POST /v1/chat/completions; include_usage=None: stream_options.include_usage with streams."""
    mk = mk or marker()
    b = {"model": model, "messages": messages if messages is not None else user_msgs(mk)}
    if stream:
        b["stream"] = True
        if include_usage is None or include_usage:
            b["stream_options"] = {"include_usage": True}
    b.update(extra)
    return http(shared().port, "POST", "/v1/chat/completions", b, timeout=timeout)


def an_req(model, messages=None, stream=False, mk=None, timeout=15, max_tokens=256, **extra):
    """POST /v1/messages, authenticated like the Anthropic SDKs (x-api-key)."""
    mk = mk or marker()
    b = {"model": model, "messages": messages if messages is not None else user_msgs(mk)}
    if max_tokens is not None:
        b["max_tokens"] = max_tokens
    if stream:
        b["stream"] = True
    b.update(extra)
    return http(shared().port, "POST", "/v1/messages", b, key=None, timeout=timeout,
                headers={"x-api-key": "sk-test", "anthropic-version": "2023-06-01"})


def send(dialect, model, stream=False, **kw):
    return (oa_req if dialect == "oa" else an_req)(model, stream=stream, **kw)


def one_request(mk, what, n=1):
    rs = mock().find(mk)
    check(len(rs) == n, "%s: the mock should have seen exactly %d request(s) with marker %s, saw %d: %r"
          % (what, n, mk, len(rs), [(r["path"], snip(r["body"], 200)) for r in rs]))
    return rs[0] if n == 1 else rs


def upstream_body(mk, what):
    r = one_request(mk, what)
    try:
        return r, json.loads(r["body"])
    except ValueError:
        raise Fail("%s: the body the provider received is not JSON: %s" % (what, snip(r["body"])))


def expect_status(r, want, what):
    want = want if isinstance(want, (tuple, list, set)) else (want,)
    if r.status not in want:
        raise Fail("%s: expected status %s, got %d; body %s" % (what, "/".join(map(str, want)), r.status,
                                                                snip(r.body)))


# --- results normalized per dialect ---------------------------------------------------

def oa_result(r, what):
    """An OpenAI-dialect response (stream or not) -> {content, reasoning, tools, finish, usage,
    clean, errors}; a stream is joined: delta.content, reasoning_content, tool_calls arguments
    per index, the last finish_reason, the usage chunk."""
    expect_status(r, 200, what)
    ct = r.h("content-type", "")
    if ct.startswith("text/event-stream"):
        ev = r.events
        out = {"content": "", "reasoning": "", "tools": [], "finish": None, "usage": None, "errors": [],
               "clean": bool(ev) and ev[-1].data == "[DONE]" and not ev[-1].partial, "ids": set(),
               "models": set(), "nusage": 0, "stream": True}
        idx = {}
        for e in ev:
            j = e.json
            if e.data == "[DONE]":
                continue
            if not isinstance(j, dict):
                out["errors"].append(e)
                continue
            if "error" in j:
                out["errors"].append(e)
                continue
            if j.get("choices"):        # (Azure opens with a choices:[] chunk of its own)
                out["ids"].add(j.get("id"))
                out["models"].add(j.get("model"))
            if isinstance(j.get("usage"), dict):
                out["usage"] = j["usage"]
                out["nusage"] += 1
            for ch in j.get("choices") or []:
                d = ch.get("delta") or {}
                if isinstance(d.get("content"), str):
                    out["content"] += d["content"]
                if isinstance(d.get("reasoning_content"), str):
                    out["reasoning"] += d["reasoning_content"]
                for tc in d.get("tool_calls") or []:
                    i = tc.get("index")
                    if i not in idx:
                        idx[i] = {"id": tc.get("id"), "name": (tc.get("function") or {}).get("name"),
                                  "arguments": ""}
                        out["tools"].append(idx[i])
                    fn = tc.get("function") or {}
                    if tc.get("id"):
                        idx[i]["id"] = tc["id"]
                    if fn.get("name"):
                        idx[i]["name"] = fn["name"]
                    if isinstance(fn.get("arguments"), str):
                        idx[i]["arguments"] += fn["arguments"]
                if ch.get("finish_reason"):
                    out["finish"] = ch["finish_reason"]
        return out
    j = r.json()
    try:
        ch = j["choices"][0]
        m = ch["message"]
    except (KeyError, IndexError, TypeError):
        raise Fail("%s: no choices[0].message in %s" % (what, snip(r.body)))
    tools = [{"id": t.get("id"), "name": t["function"]["name"], "arguments": t["function"]["arguments"]}
             for t in m.get("tool_calls") or []]
    return {"content": m.get("content") or "", "reasoning": m.get("reasoning_content") or "", "tools": tools,
            "finish": ch.get("finish_reason"), "usage": j.get("usage"), "errors": [], "clean": True,
            "model": j.get("model"), "provider": j.get("provider"), "stream": False}


def an_result(r, what):
    """An Anthropic-dialect response -> {blocks, stop_reason, usage, clean, errors, types}; a
    stream is joined: content blocks from their deltas, stop_reason and usage from message_delta
    (over message_start's usage)."""
    expect_status(r, 200, what)
    ct = r.h("content-type", "")
    if ct.startswith("text/event-stream"):
        ev = r.events
        out = {"blocks": [], "stop_reason": None, "usage": {}, "errors": [], "types": [], "stream": True,
               "clean": False, "bad": []}
        cur = {}
        for e in ev:
            j = e.json if isinstance(e.json, dict) else {}
            t = j.get("type")
            out["types"].append(e.name)
            if e.name != t:
                out["bad"].append("event name %r but data.type %r" % (e.name, t))
            if t == "error" or "error" in j:
                out["errors"].append(e)
            elif t == "message_start":
                out["usage"].update(j.get("message", {}).get("usage") or {})
                out["model"] = j.get("message", {}).get("model")
            elif t == "content_block_start":
                i = j.get("index")
                if i != len(out["blocks"]):
                    out["bad"].append("content_block_start index %r, expected %d" % (i, len(out["blocks"])))
                b = dict(j.get("content_block") or {})
                if b.get("type") == "tool_use":
                    b["_pj"] = ""
                out["blocks"].append(b)
                cur[i] = b
            elif t == "content_block_delta":
                b = cur.get(j.get("index"))
                d = j.get("delta") or {}
                if b is None:
                    out["bad"].append("delta for block %r that is not open" % j.get("index"))
                    continue
                dt = d.get("type")
                if dt == "text_delta":
                    b["text"] = b.get("text", "") + d.get("text", "")
                elif dt == "thinking_delta":
                    b["thinking"] = b.get("thinking", "") + d.get("thinking", "")
                elif dt == "signature_delta":
                    b["signature"] = b.get("signature", "") + d.get("signature", "")
                elif dt == "input_json_delta":
                    b["_pj"] = b.get("_pj", "") + d.get("partial_json", "")
            elif t == "content_block_stop":
                b = cur.pop(j.get("index"), None)
                if b is None:
                    out["bad"].append("content_block_stop for block %r that is not open" % j.get("index"))
                elif b.get("type") == "tool_use":
                    pj = b.pop("_pj", "")
                    try:
                        b["input"] = json.loads(pj) if pj else b.get("input", {})
                    except ValueError:
                        out["bad"].append("tool_use partial_json does not join to JSON: %r" % pj)
                        b["input"] = pj
            elif t == "message_delta":
                out["stop_reason"] = (j.get("delta") or {}).get("stop_reason")
                out["usage"].update(j.get("usage") or {})
            elif t == "message_stop":
                out["clean"] = e is ev[-1] and not e.partial
        if cur and out["clean"]:
            out["bad"].append("blocks never stopped: %r" % list(cur))
        for b in out["blocks"]:
            b.pop("_pj", None)
        return out
    j = r.json()
    check(j.get("type") == "message", "%s: not an Anthropic message: %s" % (what, snip(r.body)))
    return {"blocks": j.get("content"), "stop_reason": j.get("stop_reason"), "usage": j.get("usage") or {},
            "errors": [], "types": [], "clean": True, "bad": [], "model": j.get("model"), "stream": False,
            "provider": j.get("provider")}


def result(dialect, r, what):
    return oa_result(r, what) if dialect == "oa" else an_result(r, what)


def an_blocks_simple(blocks, with_ids=True):
    """Comparable view of Anthropic content blocks."""
    out = []
    for b in blocks or []:
        t = b.get("type")
        if t == "text":
            out.append(("text", b.get("text")))
        elif t == "thinking":
            out.append(("thinking", b.get("thinking"), b.get("signature") or ""))
        elif t == "tool_use":
            out.append(("tool_use", b.get("id") if with_ids else "-", b.get("name"), b.get("input")))
        else:
            out.append((t,))
    # adjacent text blocks are one text for comparison
    merged = []
    for x in out:
        if merged and x[0] == "text" and merged[-1][0] == "text":
            merged[-1] = ("text", merged[-1][1] + x[1])
        else:
            merged.append(x)
    return merged


def oa_tools_simple(tools, with_ids=True):
    out = []
    for t in tools:
        try:
            a = json.loads(t["arguments"]) if t["arguments"] else None
        except ValueError:
            a = ("not JSON", t["arguments"])
        out.append((t["id"] if with_ids else "-", t["name"], a))
    return out


def usage_view(dialect, u):
    u = u or {}
    if dialect == "oa":
        return {"prompt_tokens": u.get("prompt_tokens"), "completion_tokens": u.get("completion_tokens"),
                "total_tokens": u.get("total_tokens"),
                "cached_tokens": (u.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
                "reasoning_tokens": (u.get("completion_tokens_details") or {}).get("reasoning_tokens", 0),
                "cost": round(u.get("cost"), 12) if isinstance(u.get("cost"), (int, float)) else u.get("cost")}
    return {"input_tokens": u.get("input_tokens"), "output_tokens": u.get("output_tokens"),
            "cache_read_input_tokens": u.get("cache_read_input_tokens", 0) or 0,
            "cache_creation_input_tokens": u.get("cache_creation_input_tokens", 0) or 0,
            "cost": round(u.get("cost"), 12) if isinstance(u.get("cost"), (int, float)) else u.get("cost")}


def expect_stream_errored(dialect, res, what):
    """A stream that failed after its first byte: an error event, never a clean end."""
    check(res["stream"], "%s: expected a stream, got a plain response" % what)
    check(res["errors"], "%s: no error event in the stream" % what)
    if dialect == "oa":
        check(not res["clean"], "%s: the stream ended with data: [DONE] after an error" % what)
    else:
        check(not res["clean"] and "message_stop" not in res["types"],
              "%s: the stream ended with message_stop after an error (types %r)" % (what, res["types"]))
        e = res["errors"][-1]
        check(e.name == "error" and isinstance(e.json, dict) and e.json.get("type") == "error" and
              isinstance(e.json.get("error"), dict) and e.json["error"].get("type"),
              "%s: the error event is not an Anthropic error event: %r" % (what, e))


def expect_error_body(dialect, r, status, what, contains=()):
    expect_status(r, status, what)
    j = r.json()
    if dialect == "oa":
        e = j.get("error") if isinstance(j, dict) else None
        check(isinstance(e, dict) and isinstance(e.get("message"), str) and e["message"] and "type" in e,
              "%s: not an OpenAI error body: %s" % (what, snip(r.body)))
        check("param" in e and e["param"] is None and "code" in e,
              "%s: OpenAI error body lacks param:null / code: %s" % (what, snip(r.body)))
        msg = e["message"]
    else:
        check(isinstance(j, dict) and j.get("type") == "error" and isinstance(j.get("error"), dict) and
              isinstance(j["error"].get("type"), str) and isinstance(j["error"].get("message"), str),
              "%s: not an Anthropic error body: %s" % (what, snip(r.body)))
        msg = j["error"]["message"]
    for c in contains:
        check(c.lower() in msg.lower(), "%s: error message %r should mention %r" % (what, msg, c))
    return j


# =======================================================================================
# SigV4 (PROVIDERS.md section 4), for checking the gateway's signatures

def _hmac(k, m):
    return hmac.new(k, m.encode(), hashlib.sha256).digest()


def sigv4_key(secret, day, region, service):
    return _hmac(_hmac(_hmac(_hmac(("AWS4" + secret).encode(), day), region), service), "aws4_request")


def sigv4_canonical(method, path, query, headers, signed, payload_hash):
    segs = path.split("/")
    uri = "/".join(urllib.parse.quote(s, safe="-_.~") for s in segs) or "/"
    q = "&".join(sorted(query.split("&"))) if query else ""
    hdrs = "".join("%s:%s\n" % (h, " ".join(headers[h].strip().split())) for h in signed)
    return "\n".join([method, uri, q, hdrs, ";".join(signed), payload_hash])


def sigv4_signature(secret, amzdate, region, service, canonical):
    scope = "%s/%s/%s/aws4_request" % (amzdate[:8], region, service)
    sts = "\n".join(["AWS4-HMAC-SHA256", amzdate, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    return hmac.new(sigv4_key(secret, amzdate[:8], region, service), sts.encode(), hashlib.sha256).hexdigest()


def verify_sigv4(rec, prov, what):
    akid, secret, region, token = SIGV4[prov]
    h = rec["headers"]
    auth = h.get("authorization", "")
    m = re.match(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/bedrock/aws4_request, "
                 r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$", auth)
    check(m, "%s: Authorization is not AWS4-HMAC-SHA256 Credential=AKID/<day>/<region>/bedrock/aws4_request, "
             "SignedHeaders=..., Signature=...: %r" % (what, auth))
    eq(m.group(1), akid, "%s: Credential access key id" % what)
    eq(m.group(3), region, "%s: Credential region" % what)
    amz = h.get("x-amz-date", "")
    check(re.match(r"^\d{8}T\d{6}Z$", amz), "%s: x-amz-date %r" % (what, amz))
    eq(m.group(2), amz[:8], "%s: Credential day vs x-amz-date" % what)
    t = time.mktime(time.strptime(amz, "%Y%m%dT%H%M%SZ")) - time.timezone
    check(abs(t - time.time()) < 300, "%s: x-amz-date %s is not now" % (what, amz))
    signed = m.group(4).split(";")
    check("host" in signed and "x-amz-date" in signed, "%s: SignedHeaders %r lacks host/x-amz-date" % (what, signed))
    check(signed == sorted(signed), "%s: SignedHeaders not sorted: %r" % (what, signed))
    if token:
        eq(h.get("x-amz-security-token"), token, "%s: x-amz-security-token" % what)
        check("x-amz-security-token" in signed, "%s: the session token is not signed: %r" % (what, signed))
    for s in signed:
        check(s in h, "%s: signed header %s not in the request" % (what, s))
    path, _, query = rec["path"].partition("?")
    canon = sigv4_canonical("POST", path, query, h, signed, rec["body_sha256"])
    want = sigv4_signature(secret, amz, region, "bedrock", canon)
    eq(m.group(5), want, "%s: SigV4 signature (canonical request %r)" % (what, canon))


# =======================================================================================
# tests: the mock and the SigV4 checker themselves

def test_provmock_selftest():
    r = subprocess.run([PYTHON, MOCK_SCRIPT, "--selftest"], capture_output=True, timeout=60)
    check(r.returncode == 0, "provmock --selftest failed:\n%s" % snip(r.stdout + r.stderr, 3000))


def test_sigv4_public_test_vector():
    key = sigv4_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20150830", "us-east-1", "iam")
    eq(key.hex(), "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9", "signing key")
    canon = sigv4_canonical("GET", "/", "Action=ListUsers&Version=2010-05-08",
                            {"content-type": "application/x-www-form-urlencoded; charset=utf-8",
                             "host": "iam.amazonaws.com", "x-amz-date": "20150830T123600Z"},
                            ["content-type", "host", "x-amz-date"], hashlib.sha256(b"").hexdigest())
    eq(hashlib.sha256(canon.encode()).hexdigest(),
       "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59", "canonical request hash")
    eq(sigv4_signature("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20150830T123600Z", "us-east-1", "iam", canon),
       "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7", "signature")
    eq(sigv4_canonical("POST", "/model/a%3Ab/converse", "", {"host": "h"}, ["host"], "x").split("\n")[1],
       "/model/a%253Ab/converse", "canonical URI encodes each segment again")


def test_evstream_codec():
    f = PM.br_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "hi"}}, typed=True)
    (hd, payload), = PM.ev_decode(f)
    eq(hd[":event-type"], "contentBlockDelta", "event type header")
    eq(struct.unpack(">I", f[:4])[0], len(f), "total length (big-endian)")
    eq(json.loads(payload)["delta"]["text"], "hi", "payload")
    for bad in (PM.ev_frame([PM.ev_header(":event-type", "x")], b"{}", bad_crc=True),
                PM.ev_frame([PM.ev_header(":event-type", "x")], b"{}", bad_prelude=True)):
        try:
            PM.ev_decode(bad)
            raise Fail("a frame with a bad CRC decoded")
        except ValueError:
            pass


# =======================================================================================
# tests: URLs and auth per provider type

def _hdr_absent(rec, names, what):
    for n in names:
        check(n not in rec["headers"], "%s: header %s should not be sent: %r" % (what, n, rec["headers"].get(n)))


def _route_check(prov, model, path_nonstream, path_stream, headers, absent=()):
    for dialect in ("oa", "an"):
        for stream in (False, True):
            mk = marker()
            what = "%s %s dialect=%s stream=%s" % (prov, model, dialect, stream)
            r = send(dialect, "%s/%s" % (prov, model), stream=stream, mk=mk)
            res = result(dialect, r, what)
            if dialect == "oa":
                eq(res["content"], TEXT, what + ": content")
            rec = one_request(mk, what)
            eq(rec["path"], path_stream if stream else path_nonstream, what + ": upstream path")
            for k, v in headers.items():
                eq(rec["headers"].get(k), v, "%s: upstream header %s" % (what, k))
            _hdr_absent(rec, absent, what)
            eq(rec["headers"].get("content-type", "").split(";")[0], "application/json", what + ": content-type")


def test_route_openai():
    _route_check("oa", "text", "/v1/chat/completions", "/v1/chat/completions",
                 {"authorization": "Bearer sk-oa-secret"}, ("api-key", "x-api-key", "x-goog-api-key"))


def test_route_azure_classic():
    _route_check("az", "text", "/openai/deployments/text/chat/completions?api-version=2024-10-21",
                 "/openai/deployments/text/chat/completions?api-version=2024-10-21",
                 {"api-key": "az-secret"}, ("authorization", "x-api-key"))


def test_route_azure_api_version_and_prefix():
    _route_check("azq", "text", "/azq/openai/deployments/text/chat/completions?api-version=2025-04-01-preview",
                 "/azq/openai/deployments/text/chat/completions?api-version=2025-04-01-preview",
                 {"api-key": "azq-secret"}, ("authorization",))


def test_route_azure_v1():
    _route_check("azv", "text", "/openai/v1/chat/completions", "/openai/v1/chat/completions",
                 {"api-key": "azv-secret"}, ("authorization",))
    # the deployment is in the path only on the classic route: the v1 route carries it in the body
    mk = marker()
    oa_req("azv/text#dep", mk=mk)
    _, b = upstream_body(mk, "azure v1")
    eq(b.get("model"), "text#dep", "azure v1: body model")


def test_route_azure_deployment_encoded():
    mk = marker()
    r = oa_req("az/text#dep 1", mk=mk)
    eq(oa_result(r, "azure")["content"], TEXT, "azure: content")
    rec = one_request(mk, "azure deployment with '#' and ' '")
    eq(rec["path"], "/openai/deployments/text%23dep%201/chat/completions?api-version=2024-10-21",
       "azure: deployment URI-encoded in the path")


def test_route_anthropic():
    _route_check("an", "text", "/v1/messages", "/v1/messages",
                 {"x-api-key": "an-secret", "anthropic-version": "2023-06-01"}, ("authorization", "api-key"))


def test_route_anthropic_base_with_v1():
    _route_check("an1", "text", "/proxy/v1/messages", "/proxy/v1/messages",
                 {"x-api-key": "an1-secret", "anthropic-version": "2023-06-01"}, ("authorization",))


def test_route_gemini():
    _route_check("ge", "text", "/v1beta/models/text:generateContent",
                 "/v1beta/models/text:streamGenerateContent?alt=sse",
                 {"x-goog-api-key": "ge-secret"}, ("authorization", "x-api-key"))
    mk = marker()
    oa_req("ge/text#a/b c", mk=mk)
    rec = one_request(mk, "gemini model with '#', '/' and ' '")
    eq(rec["path"], "/v1beta/models/text%23a%2Fb%20c:generateContent", "gemini: model URI-encoded in the path")
    check("key=" not in rec["path"], "gemini: the API key must not be in the URL: %s" % rec["path"])


def test_route_bedrock_bearer():
    _route_check("br", "text", "/model/text/converse", "/model/text/converse-stream",
                 {"authorization": "Bearer br-bearer-token"}, ("x-amz-date", "api-key"))


def test_route_bedrock_sigv4():
    for prov in ("brs", "brt"):
        for dialect in ("oa", "an"):
            for stream in (False, True):
                mk = marker()
                what = "%s dialect=%s stream=%s" % (prov, dialect, stream)
                # a model id like Bedrock's (with ':'), plus '#': both URI-encoded in the path
                r = send(dialect, "%s/text#anthropic.claude-3-haiku-20240307-v1:0" % prov, stream=stream, mk=mk,
                         messages=[{"role": "user", "content": "d\u00e9j\u00e0 vu \U0001F600 %s" % mk}])
                res = result(dialect, r, what)
                check(not res["errors"], "%s: errors %r" % (what, res["errors"]))
                rec = one_request(mk, what)
                eq(rec["path"], "/%s/model/text%%23anthropic.claude-3-haiku-20240307-v1%%3A0/%s"
                   % (prov, "converse-stream" if stream else "converse"), what + ": path")
                verify_sigv4(rec, prov, what)


# =======================================================================================
# tests: request translation (what the provider received)

SYS_CONV = [
    {"role": "system", "content": "S1 {mk}"},
    {"role": "developer", "content": "S2"},
    {"role": "user", "content": "U1"},
    {"role": "assistant", "content": "A1"},
    {"role": "system", "content": [{"type": "text", "text": "S3a"}, {"type": "text", "text": "S3b"}]},
    {"role": "user", "content": [{"type": "text", "text": "U2a"}, {"type": "text", "text": "U2b"}]},
    {"role": "user", "content": "U3"},
]


def sys_conv(mk):
    return json.loads(json.dumps(SYS_CONV).replace("{mk}", mk))


def _merge_roles(msgs):
    out = []
    for role, texts in msgs:
        if out and out[-1][0] == role:
            out[-1] = (role, out[-1][1] + texts)
        else:
            out.append((role, list(texts)))
    return out


def test_req_system_roles_anthropic():
    mk = marker()
    oa_req("an/text", messages=sys_conv(mk), mk=mk)
    _, b = upstream_body(mk, "anthropic")
    sysb = b.get("system")
    if isinstance(sysb, str):
        sysb = [{"type": "text", "text": sysb}]
    eq([x.get("text") for x in sysb or []], ["S1 " + mk, "S2", "S3a", "S3b"], "anthropic: system blocks, in order")
    eq(b.get("model"), "text", "anthropic: model")
    msgs = []
    for m in b["messages"]:
        c = m["content"]
        texts = [c] if isinstance(c, str) else [x.get("text") for x in c]
        check(all(x.get("type") == "text" for x in c) if isinstance(c, list) else True,
              "anthropic: unexpected blocks %r" % c)
        msgs.append((m["role"], texts))
    eq(_merge_roles(msgs), [("user", ["U1"]), ("assistant", ["A1"]), ("user", ["U2a", "U2b", "U3"])],
       "anthropic: roles and text (system messages removed)")
    check(isinstance(b.get("max_tokens"), int) and b["max_tokens"] > 0,
          "anthropic: max_tokens is required and must be defaulted: %r" % b.get("max_tokens"))


def test_req_system_roles_gemini():
    mk = marker()
    oa_req("ge/text", messages=sys_conv(mk), mk=mk)
    _, b = upstream_body(mk, "gemini")
    eq([p.get("text") for p in (b.get("systemInstruction") or {}).get("parts", [])],
       ["S1 " + mk, "S2", "S3a", "S3b"], "gemini: systemInstruction.parts, in order")
    got = [(c.get("role"), [p.get("text") for p in c.get("parts", [])]) for c in b.get("contents", [])]
    eq(got, [("user", ["U1"]), ("model", ["A1"]), ("user", ["U2a", "U2b", "U3"])],
       "gemini: contents (roles user/model, alternating: consecutive turns merged)")
    check("model" not in b, "gemini: the body must not carry model (it is in the URL)")


def test_req_system_roles_bedrock():
    mk = marker()
    oa_req("br/text", messages=sys_conv(mk), mk=mk)
    _, b = upstream_body(mk, "bedrock")
    eq([x.get("text") for x in b.get("system") or []], ["S1 " + mk, "S2", "S3a", "S3b"], "bedrock: system[]")
    got = [(m.get("role"), [p.get("text") for p in m.get("content", [])]) for m in b.get("messages", [])]
    eq(got, [("user", ["U1"]), ("assistant", ["A1"]), ("user", ["U2a", "U2b", "U3"])],
       "bedrock: messages (alternating roles)")


def test_req_anthropic_client_system_entries():
    """issue 15 part 2: Claude Code sends role "system" entries inside messages. Translated,
    they stay system messages where they were (OpenAI, Azure) or are folded into the
    system instructions after the system prompt, in order (Gemini, Bedrock)."""
    def conv(mk):
        return [{"role": "user", "content": "U1 " + mk},
                {"role": "system", "content": "S-mid"},
                {"role": "assistant", "content": [{"type": "text", "text": "A1"}]},
                {"role": "system", "content": [{"type": "text", "text": "S-late"}]},
                {"role": "user", "content": [{"type": "text", "text": "U2"}]}]
    for prov in ("oa", "az"):
        mk = marker()
        r = an_req("%s/text" % prov, mk=mk, system="S-top", messages=conv(mk))
        expect_status(r, 200, "%s: system entries inside messages" % prov)
        _, b = upstream_body(mk, prov)

        def txt(c):
            return c if isinstance(c, str) else "".join(x.get("text", "") for x in c)
        eq([(m["role"], txt(m["content"])) for m in b["messages"]],
           [("system", "S-top"), ("user", "U1 " + mk), ("system", "S-mid"), ("assistant", "A1"),
            ("system", "S-late"), ("user", "U2")], "%s: system messages where they were" % prov)
    mk = marker()
    expect_status(an_req("ge/text", mk=mk, system="S-top", messages=conv(mk)), 200, "gemini: system entries")
    _, b = upstream_body(mk, "gemini")
    eq([p.get("text") for p in (b.get("systemInstruction") or {}).get("parts", [])],
       ["S-top", "S-mid", "S-late"], "gemini: folded into systemInstruction, in order")
    eq([(c.get("role"), [p.get("text") for p in c.get("parts", [])]) for c in b.get("contents", [])],
       [("user", ["U1 " + mk]), ("model", ["A1"]), ("user", ["U2"])], "gemini: contents without them")
    mk = marker()
    expect_status(an_req("br/text", mk=mk, system="S-top", messages=conv(mk)), 200, "bedrock: system entries")
    _, b = upstream_body(mk, "bedrock")
    eq([x.get("text") for x in b.get("system") or []], ["S-top", "S-mid", "S-late"], "bedrock: system[], in order")
    eq([(m.get("role"), [p.get("text") for p in m.get("content", [])]) for m in b.get("messages", [])],
       [("user", ["U1 " + mk]), ("assistant", ["A1"]), ("user", ["U2"])], "bedrock: messages without them")
    r = an_req("oa/text", messages=[{"role": "tool", "content": "x"}])
    expect_status(r, 400, "an unknown role")
    check("user, assistant or system" in r.body.decode("utf-8", "replace"), "the 400 names the roles: %s" % snip(r.body))


def test_req_anthropic_client_to_openai_and_azure():
    for prov in ("oa", "az"):
        mk = marker()
        an_req("%s/text" % prov, mk=mk, max_tokens=300,
               system=[{"type": "text", "text": "S1 " + mk, "cache_control": {"type": "ephemeral"}},
                       {"type": "text", "text": "S2"}],
               messages=[{"role": "user", "content": "U1"},
                         {"role": "assistant", "content": [{"type": "text", "text": "A1"}]},
                         {"role": "user", "content": [{"type": "text", "text": "U2"}]}],
               metadata={"user_id": "user-42"}, stop_sequences=["END"], temperature=0.4, top_p=0.8)
        _, b = upstream_body(mk, prov)
        sys_texts = []
        for m in b["messages"]:
            if m["role"] in ("system", "developer"):
                c = m["content"]
                sys_texts += [c] if isinstance(c, str) else [x["text"] for x in c]
        eq(sys_texts, ["S1 " + mk, "S2"], "%s: system messages in order" % prov)

        def txt(c):
            return c if isinstance(c, str) else "".join(x.get("text", "") for x in c)
        eq([(m["role"], txt(m["content"])) for m in b["messages"] if m["role"] not in ("system", "developer")],
           [("user", "U1"), ("assistant", "A1"), ("user", "U2")], "%s: roles" % prov)
        eq(b.get("max_tokens") or b.get("max_completion_tokens"), 300, "%s: max_tokens" % prov)
        eq(b.get("user"), "user-42", "%s: metadata.user_id -> user" % prov)
        eq(b.get("stop") if isinstance(b.get("stop"), list) else [b.get("stop")], ["END"], "%s: stop" % prov)
        eq((b.get("temperature"), b.get("top_p")), (0.4, 0.8), "%s: temperature, top_p" % prov)
        eq(b.get("stream", False), False, "%s: stream" % prov)


IMG_DATA = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
IMG_URL = "https://example.com/pics/cat.jpg"


def img_msgs(mk, http_url=True):
    parts = [{"type": "text", "text": "What is this? " + mk},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64," + IMG_DATA}}]
    if http_url:
        parts.append({"type": "image_url", "image_url": {"url": IMG_URL, "detail": "low"}})
    return [{"role": "user", "content": parts}]


def test_req_images_anthropic():
    mk = marker()
    oa_req("an/text", messages=img_msgs(mk), mk=mk)
    _, b = upstream_body(mk, "anthropic images")
    eq(b["messages"][0]["content"],
       [{"type": "text", "text": "What is this? " + mk},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": IMG_DATA}},
        {"type": "image", "source": {"type": "url", "url": IMG_URL}}], "anthropic: image blocks")


def test_req_images_gemini():
    mk = marker()
    oa_req("ge/text", messages=img_msgs(mk), mk=mk)
    _, b = upstream_body(mk, "gemini images")
    parts = b["contents"][0]["parts"]
    eq(parts[0], {"text": "What is this? " + mk}, "gemini: text part")
    eq(parts[1], {"inlineData": {"mimeType": "image/png", "data": IMG_DATA}}, "gemini: data: URL -> inlineData")
    fd = parts[2].get("fileData")
    check(isinstance(fd, dict) and fd.get("fileUri") == IMG_URL and fd.get("mimeType", "").startswith("image/"),
          "gemini: http URL -> fileData{mimeType,fileUri}: %r" % parts[2])


def test_req_gemini_image_only_turn_gets_text():
    mk = marker()
    oa_req("ge/text", messages=[{"role": "system", "content": "sys " + mk},
                                {"role": "user", "content": [{"type": "image_url", "image_url": {
                                    "url": "data:image/jpeg;base64," + IMG_DATA}}]}], mk=mk)
    _, b = upstream_body(mk, "gemini image-only turn")
    parts = b["contents"][0]["parts"]
    check(any("inlineData" in p for p in parts), "gemini: image part missing: %r" % parts)
    check(any(isinstance(p.get("text"), str) for p in parts), "gemini: a user turn with only images needs a "
                                                               "text part: %r" % parts)


def test_req_images_bedrock():
    mk = marker()
    oa_req("br/text", messages=img_msgs(mk, http_url=False), mk=mk)
    _, b = upstream_body(mk, "bedrock images")
    eq(b["messages"][0]["content"],
       [{"text": "What is this? " + mk}, {"image": {"format": "png", "source": {"bytes": IMG_DATA}}}],
       "bedrock: image{format,source{bytes}}")


def test_req_bedrock_image_formats():
    for mime, fmt in (("image/jpeg", "jpeg"), ("image/jpg", "jpeg"), ("image/webp", "webp"), ("image/gif", "gif")):
        mk = marker()
        oa_req("br/text", mk=mk, messages=[{"role": "user", "content": [
            {"type": "text", "text": "x " + mk},
            {"type": "image_url", "image_url": {"url": "data:%s;base64,%s" % (mime, IMG_DATA)}}]}])
        _, b = upstream_body(mk, "bedrock %s" % mime)
        eq(b["messages"][0]["content"][1], {"image": {"format": fmt, "source": {"bytes": IMG_DATA}}},
           "bedrock: %s -> format %s" % (mime, fmt))


def test_req_bedrock_refuses_image_url():
    for dialect in ("oa", "an"):
        mk = marker()
        if dialect == "oa":
            r = oa_req("br/text", messages=img_msgs(mk), mk=mk)
        else:
            r = an_req("br/text", mk=mk, messages=[{"role": "user", "content": [
                {"type": "text", "text": "What is this? " + mk},
                {"type": "image", "source": {"type": "url", "url": IMG_URL}}]}])
        expect_error_body(dialect, r, 400, "bedrock http image (%s)" % dialect, contains=("image",))
        if dialect == "an":
            eq(r.json()["error"]["type"], "invalid_request_error", "bedrock http image: Anthropic error type")
        eq(len(mock().find(mk)), 0, "bedrock http image: requests that reached the provider")


def test_req_anthropic_client_images():
    blocks = [{"type": "text", "text": "see {mk}"},
              {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": IMG_DATA}},
              {"type": "image", "source": {"type": "url", "url": IMG_URL}}]
    for prov in ("oa", "ge"):
        mk = marker()
        an_req("%s/text" % prov, mk=mk,
               messages=[{"role": "user", "content": json.loads(json.dumps(blocks).replace("{mk}", mk))}])
        _, b = upstream_body(mk, prov)
        if prov == "oa":
            parts = b["messages"][-1]["content"]
            urls = [p["image_url"]["url"] if isinstance(p.get("image_url"), dict) else p.get("image_url")
                    for p in parts if p.get("type") == "image_url"]
            eq(urls, ["data:image/png;base64," + IMG_DATA, IMG_URL], "openai: image_url parts")
        else:
            parts = b["contents"][0]["parts"]
            eq(parts[1], {"inlineData": {"mimeType": "image/png", "data": IMG_DATA}}, "gemini: inlineData")
            eq((parts[2].get("fileData") or {}).get("fileUri"), IMG_URL, "gemini: fileData")


PARAMS_WEATHER = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                  "properties": {"city": {"type": "string", "description": "City name"},
                                 "units": {"type": "string", "enum": ["c", "f"]},
                                 "where": {"type": "object", "additionalProperties": False,
                                           "properties": {"lat": {"type": "number"}}},
                                 "tags": {"type": "array", "items": {"type": "object", "additionalProperties": False,
                                                                     "properties": {"k": {"type": "string"}}}}},
                  "required": ["city"], "additionalProperties": False}
PARAMS_TIME = {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}
OA_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
                                              "parameters": PARAMS_WEATHER, "strict": True}},
            {"type": "function", "function": {"name": "get_time", "description": "Time in a zone",
                                              "parameters": PARAMS_TIME}}]
AN_TOOLS = [{"name": "get_weather", "description": "Weather by city", "input_schema": PARAMS_WEATHER},
            {"name": "get_time", "description": "Time in a zone", "input_schema": PARAMS_TIME}]
TOOL_CHOICES = [("auto", "auto"), ("none", "none"), ("required", "required"),
                ({"type": "function", "function": {"name": "get_time"}}, "func")]


def _no_keys(obj, keys, path="$"):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in keys:
                return "%s.%s" % (path, k)
            r = _no_keys(v, keys, "%s.%s" % (path, k))
            if r:
                return r
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            r = _no_keys(v, keys, "%s[%d]" % (path, i))
            if r:
                return r
    return None


def test_req_tools_anthropic():
    want = {"auto": {"type": "auto"}, "none": {"type": "none"}, "required": {"type": "any"},
            "func": {"type": "tool", "name": "get_time"}}
    for tc, key in TOOL_CHOICES:
        mk = marker()
        oa_req("an/text", mk=mk, tools=OA_TOOLS, tool_choice=tc)
        _, b = upstream_body(mk, "anthropic tool_choice %s" % key)
        eq(b.get("tools"), [{"name": "get_weather", "description": "Weather by city", "input_schema": PARAMS_WEATHER},
                            {"name": "get_time", "description": "Time in a zone", "input_schema": PARAMS_TIME}],
           "anthropic: tools {name,description,input_schema}")
        eq(b.get("tool_choice"), want[key], "anthropic: tool_choice %s" % key)
    mk = marker()
    oa_req("an/text", mk=mk, tools=OA_TOOLS, parallel_tool_calls=False)
    _, b = upstream_body(mk, "anthropic parallel_tool_calls false")
    tc = b.get("tool_choice") or {}
    eq(tc.get("disable_parallel_tool_use"), True, "anthropic: parallel_tool_calls false -> "
                                                  "tool_choice.disable_parallel_tool_use (%r)" % tc)
    eq(tc.get("type"), "auto", "anthropic: tool_choice type with only parallel_tool_calls false")
    mk = marker()
    oa_req("an/text", mk=mk, tools=OA_TOOLS, parallel_tool_calls=False, tool_choice="required")
    _, b = upstream_body(mk, "anthropic required + parallel false")
    eq(b.get("tool_choice"), {"type": "any", "disable_parallel_tool_use": True}, "anthropic: any + no parallel")


def test_req_tools_gemini():
    want = {"auto": "AUTO", "required": "ANY", "func": "ANY"}
    for tc, key in TOOL_CHOICES:
        mk = marker()
        oa_req("ge/text", mk=mk, tools=OA_TOOLS, tool_choice=tc)
        _, b = upstream_body(mk, "gemini tool_choice %s" % key)
        fcc = ((b.get("toolConfig") or {}).get("functionCallingConfig") or {})
        if key == "none":   # NONE mode, or the tools left out: both keep the model from calling
            check(fcc.get("mode") == "NONE" or not b.get("tools"),
                  "gemini: tool_choice none -> mode NONE (or no tools): %r" % b)
            continue
        decls = [d for t in b.get("tools") or [] for d in t.get("functionDeclarations") or []]
        eq([d.get("name") for d in decls], ["get_weather", "get_time"], "gemini: functionDeclarations")
        eq(decls[0].get("description"), "Weather by city", "gemini: description")
        bad = _no_keys([d.get("parameters") for d in decls], ("additionalProperties", "$schema", "strict"))
        check(bad is None, "gemini: parameters must be cleaned of additionalProperties/$schema (found %s)" % bad)
        p = decls[0]["parameters"]
        eq((p.get("type"), sorted(p.get("properties", {})), p.get("required")),
           ("object", ["city", "tags", "units", "where"], ["city"]), "gemini: the rest of the schema kept")
        eq(p["properties"]["units"].get("enum"), ["c", "f"], "gemini: enum kept")
        eq(p["properties"]["tags"]["items"].get("properties"), {"k": {"type": "string"}}, "gemini: nested kept")
        eq(fcc.get("mode"), want[key], "gemini: functionCallingConfig.mode for %s" % key)
        if key == "func":
            eq(fcc.get("allowedFunctionNames"), ["get_time"], "gemini: allowedFunctionNames")


def test_req_tools_bedrock():
    want = {"auto": {"auto": {}}, "required": {"any": {}}, "func": {"tool": {"name": "get_time"}}}
    for tc, key in TOOL_CHOICES:
        mk = marker()
        oa_req("br/text", mk=mk, tools=OA_TOOLS, tool_choice=tc)
        _, b = upstream_body(mk, "bedrock tool_choice %s" % key)
        tcfg = b.get("toolConfig")
        if key == "none":
            check(not tcfg or not tcfg.get("tools"), "bedrock: tool_choice none -> tools dropped: %r" % tcfg)
            continue
        eq(tcfg.get("tools"), [{"toolSpec": {"name": "get_weather", "description": "Weather by city",
                                             "inputSchema": {"json": PARAMS_WEATHER}}},
                               {"toolSpec": {"name": "get_time", "description": "Time in a zone",
                                             "inputSchema": {"json": PARAMS_TIME}}}], "bedrock: toolSpec")
        eq(tcfg.get("toolChoice"), want[key], "bedrock: toolChoice for %s" % key)


def test_req_tools_anthropic_client():
    cases = [({"type": "auto"}, "auto", "AUTO", {"auto": {}}),
             ({"type": "any"}, "required", "ANY", {"any": {}}),
             ({"type": "tool", "name": "get_time"}, {"type": "function", "function": {"name": "get_time"}},
              "ANY", {"tool": {"name": "get_time"}}),
             ({"type": "none"}, "none", "NONE", None)]
    for tc, want_oa, want_ge, want_br in cases:
        what = "anthropic client tool_choice %s" % tc["type"]
        mk = marker()
        an_req("oa/text", mk=mk, tools=AN_TOOLS, tool_choice=tc)
        _, b = upstream_body(mk, what + " -> openai")
        eq([t["function"]["name"] for t in b.get("tools", [])], ["get_weather", "get_time"], what + ": openai tools")
        eq(b["tools"][0], {"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
                                                            "parameters": PARAMS_WEATHER}}, what + ": openai tool")
        eq(b.get("tool_choice"), want_oa, what + ": openai tool_choice")
        mk = marker()
        an_req("ge/text", mk=mk, tools=AN_TOOLS, tool_choice=tc)
        _, b = upstream_body(mk, what + " -> gemini")
        mode = ((b.get("toolConfig") or {}).get("functionCallingConfig") or {}).get("mode")
        if want_ge == "NONE":
            check(mode == "NONE" or not b.get("tools"), what + ": gemini none: %r" % b)
        else:
            eq(mode, want_ge, what + ": gemini mode")
        mk = marker()
        an_req("br/text", mk=mk, tools=AN_TOOLS, tool_choice=tc)
        _, b = upstream_body(mk, what + " -> bedrock")
        if want_br is None:
            check(not (b.get("toolConfig") or {}).get("tools"), what + ": bedrock none drops tools: %r" % b)
        else:
            eq(b["toolConfig"].get("toolChoice"), want_br, what + ": bedrock toolChoice")
    mk = marker()
    an_req("oa/text", mk=mk, tools=AN_TOOLS, tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    _, b = upstream_body(mk, "anthropic client disable_parallel_tool_use -> openai")
    eq(b.get("parallel_tool_calls"), False, "openai: disable_parallel_tool_use -> parallel_tool_calls false")


def tool_history(mk):
    return [{"role": "user", "content": "Weather and time? " + mk},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_a1", "type": "function", "function": {"name": "get_weather",
                                                                   "arguments": '{"city": "Paris"}'}},
                {"id": "call_b2", "type": "function", "function": {"name": "get_time", "arguments": '{"tz":"UTC"}'}}]},
            {"role": "tool", "tool_call_id": "call_a1", "content": "18C and sunny"},
            {"role": "tool", "tool_call_id": "call_b2", "content": [{"type": "text", "text": "12:00"}]},
            {"role": "user", "content": "Thanks, summarise."}]


def _tr_text(c):
    if isinstance(c, str):
        return c
    return "".join(x.get("text", "") for x in c or [])


def test_req_tool_results_anthropic():
    mk = marker()
    oa_req("an/text", messages=tool_history(mk), mk=mk, tools=OA_TOOLS)
    _, b = upstream_body(mk, "anthropic tool results")
    m = b["messages"]
    eq([x["role"] for x in m], ["user", "assistant", "user"], "anthropic: roles (tool results + text in ONE user "
                                                              "message)")
    eq(m[1]["content"], [{"type": "tool_use", "id": "call_a1", "name": "get_weather", "input": {"city": "Paris"}},
                         {"type": "tool_use", "id": "call_b2", "name": "get_time", "input": {"tz": "UTC"}}],
       "anthropic: assistant tool_use blocks (no empty text block)")
    last = m[2]["content"]
    eq([x.get("type") for x in last], ["tool_result", "tool_result", "text"],
       "anthropic: tool results before the text")
    eq([(x["tool_use_id"], _tr_text(x["content"])) for x in last[:2]],
       [("call_a1", "18C and sunny"), ("call_b2", "12:00")], "anthropic: tool_result ids and content")
    eq(last[2].get("text"), "Thanks, summarise.", "anthropic: text after the results")


def test_req_tool_results_gemini():
    for dialect in ("oa", "an"):
        mk = marker()
        if dialect == "oa":
            oa_req("ge/text", messages=tool_history(mk), mk=mk, tools=OA_TOOLS)
        else:
            an_req("ge/text", mk=mk, tools=AN_TOOLS, messages=[
                {"role": "user", "content": "Weather and time? " + mk},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_a1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_b2", "name": "get_time", "input": {"tz": "UTC"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_a1", "content": "18C and sunny"},
                    {"type": "tool_result", "tool_use_id": "toolu_b2", "content": [{"type": "text", "text": "12:00"}]},
                    {"type": "text", "text": "Thanks, summarise."}]}])
        _, b = upstream_body(mk, "gemini tool results (%s)" % dialect)
        c = b["contents"]
        eq([x["role"] for x in c], ["user", "model", "user"], "gemini: roles")
        eq([p.get("functionCall") for p in c[1]["parts"]],
           [{"name": "get_weather", "args": {"city": "Paris"}}, {"name": "get_time", "args": {"tz": "UTC"}}],
           "gemini: functionCall parts (args objects)")
        fr = [p["functionResponse"] for p in c[2]["parts"] if "functionResponse" in p]
        eq([x.get("name") for x in fr], ["get_weather", "get_time"],
           "gemini: functionResponse carries the function NAME recovered from the call (%s)" % dialect)
        eq([_tr_text(x.get("response", {}).get("content")) for x in fr], ["18C and sunny", "12:00"],
           "gemini: functionResponse.response.content")
        eq([p.get("text") for p in c[2]["parts"] if "text" in p], ["Thanks, summarise."], "gemini: text part")


def test_req_tool_results_bedrock():
    mk = marker()
    oa_req("br/text", messages=tool_history(mk), mk=mk, tools=OA_TOOLS)
    _, b = upstream_body(mk, "bedrock tool results")
    m = b["messages"]
    eq([x["role"] for x in m], ["user", "assistant", "user"], "bedrock: roles")
    eq(m[1]["content"], [{"toolUse": {"toolUseId": "call_a1", "name": "get_weather", "input": {"city": "Paris"}}},
                         {"toolUse": {"toolUseId": "call_b2", "name": "get_time", "input": {"tz": "UTC"}}}],
       "bedrock: toolUse blocks")
    tr = [x["toolResult"] for x in m[2]["content"] if "toolResult" in x]
    eq([(x["toolUseId"], _tr_text(x["content"]), x.get("status", "success")) for x in tr],
       [("call_a1", "18C and sunny", "success"), ("call_b2", "12:00", "success")], "bedrock: toolResult blocks")
    eq(list(m[2]["content"][-1]), ["text"], "bedrock: the text comes after the tool results")


def test_req_anthropic_client_tool_results_to_openai():
    mk = marker()
    an_req("oa/text", mk=mk, tools=AN_TOOLS, messages=[
        {"role": "user", "content": "Weather? " + mk},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
                                          {"type": "tool_use", "id": "toolu_a1", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_a1", "content": "18C"},
                                     {"type": "text", "text": "and?"}]}])
    _, b = upstream_body(mk, "anthropic client tool results -> openai")
    m = [x for x in b["messages"] if x["role"] != "system"]
    eq([x["role"] for x in m], ["user", "assistant", "tool", "user"], "openai: roles")
    a = m[1]
    eq(_tr_text(a.get("content")), "Let me look.", "openai: assistant text")
    eq([(t["id"], t["type"], t["function"]["name"], json.loads(t["function"]["arguments"])) for t in a["tool_calls"]],
       [("toolu_a1", "function", "get_weather", {"city": "Paris"})], "openai: tool_calls (arguments a JSON string)")
    eq((m[2].get("tool_call_id"), _tr_text(m[2].get("content"))), ("toolu_a1", "18C"), "openai: tool message")
    eq(_tr_text(m[3]["content"]), "and?", "openai: the user text after the tool message")


def test_req_history_tools_declared():
    """Anthropic (and Bedrock) refuse a history with tool calls when no tools are declared."""
    for prov in ("an", "br"):
        mk = marker()
        oa_req("%s/text" % prov, messages=tool_history(mk), mk=mk)
        _, b = upstream_body(mk, "%s history without tools" % prov)
        names = [t.get("name") for t in b.get("tools") or []] if prov == "an" else \
            [t["toolSpec"]["name"] for t in (b.get("toolConfig") or {}).get("tools") or []]
        check({"get_weather", "get_time"} <= set(names),
              "%s: the tools used in the history must be declared (got %r)" % (prov, names))


def test_req_empty_assistant_content():
    for content in (None, ""):
        mk = marker()
        h = tool_history(mk)
        h[1]["content"] = content
        oa_req("an/text", messages=h, mk=mk, tools=OA_TOOLS)
        _, b = upstream_body(mk, "anthropic assistant content %r" % content)
        for m in b["messages"]:
            for blk in m["content"] if isinstance(m["content"], list) else []:
                check(not (blk.get("type") == "text" and not blk.get("text")),
                      "anthropic: empty text block from assistant content %r: %r" % (content, m))


def test_req_stop_sequences():
    stops = ["END", " ", "\n\t", "STOP"]
    for prov in ("an", "ge", "br"):
        mk = marker()
        oa_req("%s/text" % prov, mk=mk, stop=stops)
        _, b = upstream_body(mk, "%s stop" % prov)
        if prov == "an":
            eq(b.get("stop_sequences"), ["END", "STOP"], "anthropic: stop_sequences without whitespace-only ones")
        elif prov == "ge":
            eq(b["generationConfig"].get("stopSequences"), stops, "gemini: stopSequences")
        else:
            eq(b["inferenceConfig"].get("stopSequences"), stops, "bedrock: stopSequences")
        mk = marker()
        oa_req("%s/text" % prov, mk=mk, stop="END")
        _, b = upstream_body(mk, "%s stop string" % prov)
        got = b.get("stop_sequences") if prov == "an" else \
            b["generationConfig"].get("stopSequences") if prov == "ge" else b["inferenceConfig"].get("stopSequences")
        eq(got, ["END"], "%s: stop as a string" % prov)
    mk = marker()
    oa_req("an/text", mk=mk, stop=[" ", "\n"])
    _, b = upstream_body(mk, "anthropic only blank stops")
    check(not b.get("stop_sequences"), "anthropic: only whitespace stops -> none: %r" % b.get("stop_sequences"))


def test_req_max_tokens():
    for field in ("max_tokens", "max_completion_tokens"):
        for prov in ("an", "ge", "br"):
            mk = marker()
            oa_req("%s/text" % prov, mk=mk, **{field: 77})
            _, b = upstream_body(mk, "%s %s" % (prov, field))
            got = b.get("max_tokens") if prov == "an" else \
                b["generationConfig"].get("maxOutputTokens") if prov == "ge" else b["inferenceConfig"].get("maxTokens")
            eq(got, 77, "%s: %s 77" % (prov, field))
    mk = marker()
    oa_req("an/text", mk=mk)
    _, b = upstream_body(mk, "anthropic without max_tokens")
    check(isinstance(b.get("max_tokens"), int) and 0 < b["max_tokens"] <= 64000,
          "anthropic: a default max_tokens when the client gave none: %r" % b.get("max_tokens"))
    mk = marker()
    an_req("ge/text", mk=mk, max_tokens=321)
    _, b = upstream_body(mk, "anthropic client max_tokens -> gemini")
    eq(b["generationConfig"].get("maxOutputTokens"), 321, "gemini: maxOutputTokens from an Anthropic client")


def test_req_max_tokens_default_within_target_max_output():
    """A default max_tokens must respect the target's own max_output (model mt-split:
    anthropic max_output=1000, then gemini max_output=8000)."""
    mk = marker()
    r = oa_req("mt-split", mk=mk)
    expect_status(r, 200, "mt-split")
    _, b = upstream_body(mk, "mt-split")
    check(isinstance(b.get("max_tokens"), int) and 0 < b["max_tokens"] <= 1000,
          "anthropic target with max_output=1000 got max_tokens %r (the other target's max_output leaked in)"
          % b.get("max_tokens"))


def test_req_temperature_top_p():
    mk = marker()
    oa_req("an/text", mk=mk, temperature=1.7, top_p=0.9)
    _, b = upstream_body(mk, "anthropic temperature")
    eq(b.get("temperature"), 1, "anthropic: temperature 1.7 clamped to 1")
    eq(b.get("top_p"), 0.9, "anthropic: top_p")
    mk = marker()
    oa_req("an/text", mk=mk, temperature=0.3)
    _, b = upstream_body(mk, "anthropic temperature 0.3")
    eq(b.get("temperature"), 0.3, "anthropic: temperature 0.3 unchanged")
    mk = marker()
    oa_req("ge/text", mk=mk, temperature=1.7, top_p=0.9, seed=7)
    _, b = upstream_body(mk, "gemini temperature")
    g = b["generationConfig"]
    eq((g.get("temperature"), g.get("topP")), (1.7, 0.9), "gemini: temperature/topP unchanged")
    mk = marker()
    oa_req("br/text", mk=mk, temperature=0.25, top_p=0.5)
    _, b = upstream_body(mk, "bedrock temperature")
    eq((b["inferenceConfig"].get("temperature"), b["inferenceConfig"].get("topP")), (0.25, 0.5),
       "bedrock: temperature/topP")


JSON_SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"],
               "additionalProperties": False, "$schema": "http://json-schema.org/draft-07/schema#"}


def test_req_response_format_anthropic():
    for rf, schema in (({"type": "json_object"}, None),
                       ({"type": "json_schema", "json_schema": {"name": "ans", "schema": JSON_SCHEMA, "strict": True}},
                        JSON_SCHEMA)):
        mk = marker()
        oa_req("an/text", mk=mk, response_format=rf)
        _, b = upstream_body(mk, "anthropic response_format %s" % rf["type"])
        tc = b.get("tool_choice") or {}
        check(tc.get("type") == "tool" and tc.get("name"), "anthropic: response_format -> a forced tool: %r" % tc)
        tools = {t["name"]: t for t in b.get("tools") or []}
        check(tc["name"] in tools, "anthropic: the forced tool %r is not declared: %r" % (tc["name"], b.get("tools")))
        if schema:
            eq(tools[tc["name"]].get("input_schema"), schema, "anthropic: the forced tool's input_schema")


def test_req_response_format_gemini():
    mk = marker()
    oa_req("ge/text", mk=mk, response_format={"type": "json_object"})
    _, b = upstream_body(mk, "gemini json_object")
    eq(b["generationConfig"].get("responseMimeType"), "application/json", "gemini: responseMimeType")
    mk = marker()
    oa_req("ge/text", mk=mk, response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": JSON_SCHEMA}})
    _, b = upstream_body(mk, "gemini json_schema")
    g = b["generationConfig"]
    eq(g.get("responseMimeType"), "application/json", "gemini: responseMimeType")
    eq(g.get("responseSchema"), {"type": "object", "properties": {"answer": {"type": "integer"}},
                                 "required": ["answer"]}, "gemini: responseSchema, cleaned")


def test_req_response_format_bedrock():
    """PROVIDERS.md section 6: response_format json -> Bedrock: a forced tool."""
    mk = marker()
    oa_req("br/text", mk=mk, response_format={"type": "json_schema", "json_schema": {"name": "a",
                                                                                     "schema": JSON_SCHEMA}})
    _, b = upstream_body(mk, "bedrock json_schema")
    tc = (b.get("toolConfig") or {}).get("toolChoice") or {}
    check("tool" in tc and (b.get("toolConfig") or {}).get("tools"),
          "bedrock: response_format should become a forced tool (toolChoice {tool:{name}}), got toolConfig %r"
          % b.get("toolConfig"))


def test_req_reasoning_effort_and_thinking():
    mk = marker()
    oa_req("an/text", mk=mk, reasoning_effort="low", temperature=0.2)
    _, b = upstream_body(mk, "anthropic reasoning_effort")
    th = b.get("thinking") or {}
    check(th.get("type") == "enabled" and isinstance(th.get("budget_tokens"), int) and th["budget_tokens"] >= 1024,
          "anthropic: reasoning_effort -> thinking{type:enabled,budget_tokens>=1024}: %r" % th)
    check(b.get("max_tokens", 0) > th["budget_tokens"], "anthropic: max_tokens %r must exceed budget_tokens %r"
          % (b.get("max_tokens"), th["budget_tokens"]))
    check(b.get("temperature", 1) == 1, "anthropic: thinking requires temperature 1 (or none): %r" % b.get("temperature"))
    mk = marker()
    an_req("ge/text", mk=mk, max_tokens=4000, thinking={"type": "enabled", "budget_tokens": 2048})
    _, b = upstream_body(mk, "gemini thinking")
    tc = b["generationConfig"].get("thinkingConfig") or {}
    eq(tc.get("thinkingBudget"), 2048, "gemini: thinkingConfig.thinkingBudget from Anthropic thinking")


def test_req_tool_result_is_error():
    mk = marker()
    an_req("br/text", mk=mk, tools=AN_TOOLS, messages=[
        {"role": "user", "content": "Weather? " + mk},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_e1", "name": "get_weather",
                                           "input": {"city": "Nowhere"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_e1", "content": "no such city",
                                      "is_error": True}]}])
    _, b = upstream_body(mk, "bedrock is_error")
    tr = [x["toolResult"] for x in b["messages"][2]["content"] if "toolResult" in x]
    eq([(x["toolUseId"], x.get("status")) for x in tr], [("toolu_e1", "error")], "bedrock: is_error -> status error")
    mk = marker()
    an_req("oa/text", mk=mk, tools=AN_TOOLS, messages=[
        {"role": "user", "content": "Weather? " + mk},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_e1", "name": "get_weather",
                                           "input": {"city": "Nowhere"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_e1",
                                      "content": [{"type": "text", "text": "no such"},
                                                  {"type": "text", "text": "city"}]}]}])
    _, b = upstream_body(mk, "openai tool_result with text blocks")
    tm = [m for m in b["messages"] if m["role"] == "tool"]
    eq([m["tool_call_id"] for m in tm], ["toolu_e1"], "openai: tool message id")
    check(re.match(r"^no such\s*city$", _tr_text(tm[0]["content"])),
          "openai: tool_result text blocks joined: %r" % tm[0]["content"])


ALLOWED_TOP = {
    "an": {"model", "max_tokens", "system", "messages", "tools", "tool_choice", "temperature", "top_p", "top_k",
           "stop_sequences", "metadata", "stream", "thinking", "service_tier", "container", "mcp_servers"},
    "ge": {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig", "safetySettings",
           "cachedContent", "labels"},
    "br": {"messages", "system", "inferenceConfig", "toolConfig", "guardrailConfig", "additionalModelRequestFields",
           "additionalModelResponseFieldPaths", "promptVariables", "requestMetadata", "performanceConfig"},
}
GE_GENCFG = {"temperature", "topP", "topK", "maxOutputTokens", "stopSequences", "candidateCount", "seed",
             "responseMimeType", "responseSchema", "thinkingConfig", "presencePenalty", "frequencyPenalty",
             "responseLogprobs", "logprobs"}


def test_req_only_fields_the_provider_knows():
    """OpenAI-only fields must not leak into Anthropic/Gemini/Bedrock bodies (Anthropic and
    Bedrock refuse unknown fields)."""
    extra = {"n": 1, "seed": 7, "presence_penalty": 0.1, "frequency_penalty": 0.2, "logprobs": False,
             "logit_bias": {"50256": -100}, "service_tier": "auto", "store": False, "user": "u-1",
             "parallel_tool_calls": True, "reasoning_effort": "low", "max_completion_tokens": 900,
             "response_format": {"type": "text"}, "stream_options": {"include_usage": True},
             "tools": OA_TOOLS, "tool_choice": "auto", "stop": ["END"], "temperature": 0.5, "top_p": 0.9}
    for prov in ("an", "ge", "br"):
        for stream in (False, True):
            mk = marker()
            oa_req("%s/text" % prov, stream=stream, mk=mk, **{k: v for k, v in extra.items() if k != "stream_options"})
            _, b = upstream_body(mk, "%s with OpenAI-only fields" % prov)
            unknown = set(b) - ALLOWED_TOP[prov]
            check(not unknown, "%s (stream=%s): fields the provider does not know: %s" % (prov, stream, sorted(unknown)))
            if prov == "ge":
                unknown = set(b.get("generationConfig") or {}) - GE_GENCFG
                check(not unknown, "gemini: unknown generationConfig fields %s" % sorted(unknown))
            if prov == "br":
                unknown = set(b.get("inferenceConfig") or {}) - {"maxTokens", "temperature", "topP", "stopSequences"}
                check(not unknown, "bedrock: unknown inferenceConfig fields %s" % sorted(unknown))


def test_req_user_to_metadata():
    mk = marker()
    oa_req("an/text", mk=mk, user="user-123")
    _, b = upstream_body(mk, "anthropic user")
    eq(b.get("metadata"), {"user_id": "user-123"}, "anthropic: user -> metadata.user_id")
    check("user" not in b, "anthropic: no top-level user field")
    for prov in ("ge", "br"):
        mk = marker()
        oa_req("%s/text" % prov, mk=mk, user="user-123")
        _, b = upstream_body(mk, prov)
        check("user" not in b, "%s: no user field: %r" % (prov, list(b)))


def test_req_no_llmgw_fields_upstream():
    for prov in ("an", "ge", "br", "az"):
        mk = marker()
        oa_req("%s/text" % prov, mk=mk, usage={"include": True},
               provider={"allow_fallbacks": True}, models=["%s/text" % prov])
        _, b = upstream_body(mk, prov)
        for k in ("models", "provider", "usage"):
            check(k not in b, "%s: llmgw's own field %r forwarded: %s" % (prov, k, snip(b)))


# --- Gemini thought signatures and made-up tool ids --------------------------------------

def test_gemini_tool_ids_made_up():
    for dialect in ("oa", "an"):
        for stream in (False, True):
            what = "gemini tools2 %s stream=%s" % (dialect, stream)
            r = send(dialect, "ge/tools2", stream=stream)
            res = result(dialect, r, what)
            ids = [t["id"] for t in res["tools"]] if dialect == "oa" else \
                [b.get("id") for b in res["blocks"] if b.get("type") == "tool_use"]
            eq(len(ids), 2, what + ": two calls")
            check(all(isinstance(i, str) and re.match(r"^[A-Za-z0-9_-]{1,256}$", i) for i in ids),
                  what + ": ids must be made up (non-empty, [A-Za-z0-9_-]): %r" % ids)
            check(len(set(ids)) == 2, what + ": ids must be distinct: %r" % ids)


def _sig_roundtrip(dialect, stream):
    what = "thought signature %s stream=%s" % (dialect, stream)
    r = send(dialect, "ge/toolsig", stream=stream, tools=OA_TOOLS if dialect == "oa" else AN_TOOLS)
    res = result(dialect, r, what)
    if dialect == "oa":
        check(len(res["tools"]) == 1, what + ": one tool call: %r" % res["tools"])
        tid, args = res["tools"][0]["id"], json.loads(res["tools"][0]["arguments"])
        eq(res["finish"], "tool_calls", what + ": finish")
    else:
        tu = [b for b in res["blocks"] if b.get("type") == "tool_use"]
        check(len(tu) == 1, what + ": one tool_use: %r" % res["blocks"])
        tid, args = tu[0]["id"], tu[0]["input"]
        eq(res["stop_reason"], "tool_use", what + ": stop_reason")
    eq(args, {"city": "Paris"}, what + ": arguments")
    mk = marker()
    if dialect == "oa":
        msgs = [{"role": "user", "content": "Weather? " + mk},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": tid, "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(args)}}]},
                {"role": "tool", "tool_call_id": tid, "content": "18C"}]
        oa_req("ge/text", messages=msgs, mk=mk, tools=OA_TOOLS)
    else:
        msgs = [{"role": "user", "content": "Weather? " + mk},
                {"role": "assistant", "content": [{"type": "tool_use", "id": tid, "name": "get_weather",
                                                   "input": args}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tid, "content": "18C"}]}]
        an_req("ge/text", messages=msgs, mk=mk, tools=AN_TOOLS)
    _, b = upstream_body(mk, what + " (next turn)")
    parts = b["contents"][1]["parts"]
    fc = [p for p in parts if "functionCall" in p]
    check(len(fc) == 1, what + ": the call is in the history: %r" % parts)
    eq(fc[0].get("thoughtSignature"), PM.THOUGHT_SIG, what + ": thoughtSignature sent back unchanged (tool id %r)"
       % tid)
    fr = [p["functionResponse"] for p in b["contents"][2]["parts"] if "functionResponse" in p]
    eq([x.get("name") for x in fr], ["get_weather"], what + ": functionResponse name")


def test_gemini_thought_signature_roundtrip():
    for dialect in ("oa", "an"):
        for stream in (False, True):
            _sig_roundtrip(dialect, stream)


def test_gemini_no_signature_for_foreign_ids():
    """Tool-call ids that did not come from Gemini must not produce a thoughtSignature."""
    mk = marker()
    oa_req("ge/text", messages=tool_history(mk), mk=mk, tools=OA_TOOLS)
    _, b = upstream_body(mk, "gemini foreign ids")
    for p in b["contents"][1]["parts"]:
        check("thoughtSignature" not in p, "gemini: a thoughtSignature made up for id call_a1/call_b2: %r" % p)


# =======================================================================================
# tests: response translation

# hand-computed expectations (prices in=2 out=8 cache_read=0.5 cache_write=2.5 USD/Mtok)
# OpenAI view: prompt, completion, cached, cache_write, reasoning, cost
EXPECT_USAGE = {
    "text": {p: (11, 7, 0, 0, 0, 78e-6) for p in PROVS},          # 11*2 + 7*8 = 78 µUSD
    "think": {"oa": (11, 12, 0, 0, 5, 118e-6), "az": (11, 12, 0, 0, 5, 118e-6),
              "ge": (11, 12, 0, 0, 5, 118e-6),                     # 11*2 + (7+5)*8 = 118 µUSD
              "an": (11, 12, 0, 0, 0, 118e-6), "br": (11, 12, 0, 0, 0, 118e-6)},
    # openai: prompt 1300 incl. 1000 cached; completion 80 incl. 30 reasoning
    #   300*2 + 1000*0.5 + 80*8 = 1740 µUSD
    # anthropic: input 100 + cache_read 1000 + cache_creation 200; output 50
    #   100*2 + 1000*0.5 + 200*2.5 + 50*8 = 1600 µUSD
    # gemini: promptTokenCount 1300 (cached 1000 inside), candidates 50 + thoughts 30
    # bedrock: inputTokens 100 + cacheRead 1000 + cacheWrite 200; output 50
    "usage": {"oa": (1300, 80, 1000, 0, 30, 1740e-6), "az": (1300, 80, 1000, 0, 30, 1740e-6),
              "ge": (1300, 80, 1000, 0, 30, 1740e-6),
              "an": (1300, 50, 1000, 200, 0, 1600e-6), "br": (1300, 50, 1000, 200, 0, 1600e-6)},
}


def expect_usage(dialect, prov, scen, u, what, cost=True):
    p, c, cached, cw, reasoning, usd = EXPECT_USAGE[scen][prov]
    check(isinstance(u, dict), "%s: no usage: %r" % (what, u))
    if dialect == "oa":
        eq((u.get("prompt_tokens"), u.get("completion_tokens"), u.get("total_tokens")), (p, c, p + c),
           what + ": usage prompt/completion/total tokens")
        eq((u.get("prompt_tokens_details") or {}).get("cached_tokens", 0), cached, what + ": cached_tokens")
        eq((u.get("completion_tokens_details") or {}).get("reasoning_tokens", 0), reasoning,
           what + ": reasoning_tokens")
        cwt = (u.get("prompt_tokens_details") or {}).get("cache_write_tokens", 0)
        eq(cwt, cw, what + ": prompt_tokens_details.cache_write_tokens")
    else:
        eq((u.get("input_tokens"), u.get("output_tokens"), u.get("cache_read_input_tokens", 0),
            u.get("cache_creation_input_tokens", 0)), (p - cached - cw, c, cached, cw),
           what + ": usage input/output/cache_read/cache_creation tokens")
    if cost:
        near(u.get("cost"), usd, what + ": usage.cost")


def _common(dialect, prov, res, r, what, model=None):
    check(not res["errors"], "%s: error events: %r" % (what, res["errors"]))
    check(res["clean"], "%s: the stream did not end cleanly (%s)" % (
        what, "no [DONE] last" if dialect == "oa" else "no message_stop last: %r" % res.get("types")))
    eq(r.h("x-llmgw-provider"), prov, what + ": x-llmgw-provider")
    if res["stream"]:
        eq(r.h("cache-control"), "no-cache", what + ": Cache-Control")
        eq(r.h("x-accel-buffering"), "no", what + ": X-Accel-Buffering")
        if dialect == "oa":
            check(len(res["ids"]) == 1, what + ": chunks carry different ids: %r" % res["ids"])
            if model:
                eq(res["models"], {model}, what + ": chunk model (the public name)")
        else:
            check(not res["bad"], "%s: malformed Anthropic stream: %r" % (what, res["bad"]))
            eq(res["types"][0], "message_start", what + ": first event")
            if model:
                eq(res.get("model"), model, what + ": message_start model")
    elif model:
        eq(res.get("model"), model, what + ": body.model (the public name)")
        eq(res.get("provider"), prov, what + ": body.provider")


def _each(prov, scen, fn, dialects=("oa", "an"), streams=(False, True), priced=True, **kw):
    for dialect in dialects:
        for stream in streams:
            what = "%s %s dialect=%s stream=%s" % (prov, scen, dialect, stream)
            model = "%s-%s" % (prov, scen) if priced else "%s/%s" % (prov, scen)
            r = send(dialect, model, stream=stream, **kw)
            res = result(dialect, r, what)
            _common(dialect, prov, res, r, what, model if priced else None)
            fn(dialect, stream, res, what)


TOOL_IDS = {"oa": "call_", "az": "call_", "an": "toolu_", "br": "tooluse_"}


def _tools_of(dialect, res):
    if dialect == "oa":
        return oa_tools_simple(res["tools"])
    return [(b[1], b[2], b[3]) for b in an_blocks_simple(res["blocks"]) if b[0] == "tool_use"]


def _text_of(dialect, res):
    if dialect == "oa":
        return res["content"]
    return "".join(b[1] for b in an_blocks_simple(res["blocks"]) if b[0] == "text")


def _finish_of(dialect, res):
    return res["finish"] if dialect == "oa" else res["stop_reason"]


def _expect_tools(prov, dialect, res, want, what):
    got = _tools_of(dialect, res)
    eq([(n, a) for _, n, a in got], want, what + ": tool calls (name, arguments)")
    for tid, _, _ in got:
        if prov in TOOL_IDS:    # the provider's own ids come through; Gemini's are made up
            check(isinstance(tid, str) and tid.startswith(TOOL_IDS[prov]),
                  "%s: tool id %r should be the provider's" % (what, tid))
        else:
            check(isinstance(tid, str) and tid, "%s: tool id missing: %r" % (what, tid))


def make_text_test(prov):
    def t():
        def fn(dialect, stream, res, what):
            eq(_text_of(dialect, res), TEXT, what + ": text")
            eq(_finish_of(dialect, res), "stop" if dialect == "oa" else "end_turn", what + ": finish")
            expect_usage(dialect, prov, "text", res["usage"], what)
            if dialect == "oa":
                eq(res["tools"], [], what + ": no tool calls")
                eq(res["reasoning"], "", what + ": no reasoning")
                if stream:
                    eq(res["nusage"], 1, what + ": exactly one usage chunk with include_usage")
        _each(prov, "text", fn)
        # without include_usage: no usage chunk
        r = oa_req("%s-text" % prov, stream=True, include_usage=False)
        res = oa_result(r, "%s text stream without include_usage" % prov)
        eq(res["nusage"], 0, "%s: usage chunks in a stream that did not ask for usage" % prov)
        eq(res["content"], TEXT, "%s: text without include_usage" % prov)
        # usage:{include:true} asks for it too (llmgw's own field)
        r = oa_req("%s-text" % prov, stream=True, include_usage=False, usage={"include": True})
        res = oa_result(r, "%s text stream with usage.include" % prov)
        eq(res["nusage"], 1, "%s: usage chunks with usage.include" % prov)
        near((res["usage"] or {}).get("cost"), 78e-6, "%s: usage.cost with usage.include" % prov)
    return t


def make_tool_test(prov):
    def t():
        def fn(dialect, stream, res, what):
            _expect_tools(prov, dialect, res, [("get_weather", {"city": "Paris"})], what)
            eq(_finish_of(dialect, res), "tool_calls" if dialect == "oa" else "tool_use", what + ": finish")
            if dialect == "oa" and not stream:
                check(res["content"] in ("", None), what + ": content with only a tool call: %r" % res["content"])
        _each(prov, "tool", fn)
    return t


def make_tools2_test(prov):
    def t():
        def fn(dialect, stream, res, what):
            eq(_text_of(dialect, res), "Checking both.", what + ": text before the calls")
            _expect_tools(prov, dialect, res, [("get_weather", {"city": "Paris"}),
                                               ("get_time", {"tz": "Europe/Paris"})], what)
            ids = [x[0] for x in _tools_of(dialect, res)]
            check(len(set(ids)) == 2, what + ": parallel calls need distinct ids: %r" % ids)
            eq(_finish_of(dialect, res), "tool_calls" if dialect == "oa" else "tool_use", what + ": finish")
            if dialect == "an":
                kinds = [b[0] for b in an_blocks_simple(res["blocks"])]
                eq(kinds, ["text", "tool_use", "tool_use"], what + ": block order")
        _each(prov, "tools2", fn)
    return t


def make_reasoning_test(prov):
    def t():
        def fn(dialect, stream, res, what):
            if dialect == "oa":
                eq(res["reasoning"], "Let me think it over.", what + ": reasoning_content")
                eq(res["content"], "The answer is 4.", what + ": content")
            else:
                bl = an_blocks_simple(res["blocks"])
                eq([b[0] for b in bl], ["thinking", "text"], what + ": blocks")
                eq(bl[0][1], "Let me think it over.", what + ": thinking")
                eq(bl[1][1], "The answer is 4.", what + ": text")
                if prov in ("an", "br"):    # these providers sent a signature: it must reach the client
                    eq(bl[0][2], PM.ANTH_SIG, what + ": thinking signature")
            expect_usage(dialect, prov, "think", res["usage"], what)
        _each(prov, "think", fn)
    return t


def make_usage_test(prov):
    def t():
        def fn(dialect, stream, res, what):
            eq(_text_of(dialect, res), "cached reply", what + ": text")
            expect_usage(dialect, prov, "usage", res["usage"], what)
        _each(prov, "usage", fn)
        if prov == "an":    # message_delta repeating the input and cache fields: counted once
            for dialect in ("oa", "an"):
                r = send(dialect, "an/usage~repeat", stream=True)
                res = result(dialect, r, "anthropic usage~repeat %s" % dialect)
                expect_usage(dialect, "an", "usage", res["usage"], "anthropic repeated usage fields (%s)" % dialect,
                             cost=False)
    return t


def test_access_log_translated_usage():
    """The access log counts the normalized usage and cost of translated responses."""
    g = shared()
    for prov in PROVS:
        p, c, cached, cw, _, usd = EXPECT_USAGE["usage"][prov]
        for dialect in ("oa", "an"):
            for stream in (False, True):
                what = "%s-usage access log, dialect=%s stream=%s" % (prov, dialect, stream)
                r = send(dialect, "%s-usage" % prov, stream=stream)
                result(dialect, r, what)
                line = g.access_lines(r.h("x-request-id"))
                eq((line.get("prompt_tokens"), line.get("completion_tokens"), line.get("cached_tokens")),
                   (p, c, cached), what + ": prompt/completion/cached tokens")
                near(line.get("cost"), usd, what + ": cost")
                eq(line.get("provider"), prov, what + ": provider")
                eq(line.get("upstream_model"), "usage", what + ": upstream_model")


FINISH_CASES = {
    "oa": [("stop", "stop"), ("length", "length"), ("tool_calls", "tool_calls"),
           ("content_filter", "content_filter")],
    "az": [("stop", "stop"), ("length", "length"), ("content_filter", "content_filter")],
    "an": [("end_turn", "stop"), ("max_tokens", "length"), ("stop_sequence", "stop"), ("tool_use", "tool_calls"),
           ("pause_turn", "stop"), ("refusal", "content_filter"), ("model_context_window_exceeded", "length")],
    "ge": [("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"),
           ("RECITATION", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"),
           ("BLOCKLIST", "content_filter"), ("SPII", "content_filter"), ("IMAGE_SAFETY", "content_filter"),
           ("FINISH_REASON_UNSPECIFIED", "stop")],
    "br": [("end_turn", "stop"), ("tool_use", "tool_calls"), ("max_tokens", "length"), ("stop_sequence", "stop"),
           ("guardrail_intervened", "content_filter"), ("content_filtered", "content_filter")],
}


def make_finish_test(prov):
    def t():
        bad = []
        for native, want in FINISH_CASES[prov]:
            for dialect in ("oa", "an"):
                for stream in (False, True):
                    what = "%s finish %s dialect=%s stream=%s" % (prov, native, dialect, stream)
                    r = send(dialect, "%s/fin-%s" % (prov, native), stream=stream)
                    res = result(dialect, r, what)
                    got = _finish_of(dialect, res)
                    if (prov, dialect) in NATIVE:
                        exp = native
                    else:
                        exp = want if dialect == "oa" else OA_FIN_TO_AN[want]
                    if got != exp:
                        bad.append("%s: expected %r, got %r" % (what, exp, got))
                    if dialect == "an" and not (prov, dialect) in NATIVE and res["stream"] is False:
                        eq(r.json().get("stop_sequence"), None, what + ": stop_sequence")
        check(not bad, "; ".join(bad))
    return t


def make_equivalence_test(prov):
    scens = ["text", "tool", "tools2", "think", "usage", "length", "filter", "mixed", "notool", "toolesc"]

    def t():
        bad = []
        for scen in scens:
            for dialect in ("oa", "an"):
                try:
                    one(scen, dialect)
                except Fail as e:
                    bad.append(str(e))
        check(not bad, "%d of %d cases differ: %s" % (len(bad), 2 * len(scens), " | ".join(bad)))

    def one(scen, dialect):
        model = "%s-%s" % (prov, scen) if scen in PRICED_SCENARIOS else "%s/%s" % (prov, scen)
        what = "%s %s dialect=%s" % (prov, scen, dialect)
        a = result(dialect, send(dialect, model), what + " non-stream")
        b = result(dialect, send(dialect, model, stream=True), what + " stream")
        check(not b["errors"] and b["clean"], "%s: stream errors %r / unclean" % (what, b["errors"]))
        ids = prov != "ge"          # Gemini ids are made up per response
        if dialect == "oa":
            eq(b["content"], a["content"], what + ": joined delta.content vs message.content")
            eq(b["reasoning"], a["reasoning"], what + ": joined reasoning_content")
            eq(oa_tools_simple(b["tools"], ids), oa_tools_simple(a["tools"], ids), what + ": tool calls")
            eq(b["finish"], a["finish"], what + ": finish_reason")
        else:
            check(not b["bad"], "%s: malformed stream %r" % (what, b["bad"]))
            eq(an_blocks_simple(b["blocks"], ids), an_blocks_simple(a["blocks"], ids), what + ": content blocks")
            eq(b["stop_reason"], a["stop_reason"], what + ": stop_reason")
        eq(usage_view(dialect, b["usage"]), usage_view(dialect, a["usage"]), what + ": usage")
    t.limit = 60
    return t


for _p in PROVS:
    globals()["test_resp_text_%s" % _p] = make_text_test(_p)
    globals()["test_resp_tool_call_%s" % _p] = make_tool_test(_p)
    globals()["test_resp_parallel_tools_%s" % _p] = make_tools2_test(_p)
    globals()["test_resp_reasoning_%s" % _p] = make_reasoning_test(_p)
    globals()["test_resp_usage_cache_%s" % _p] = make_usage_test(_p)
    globals()["test_resp_finish_reasons_%s" % _p] = make_finish_test(_p)
    globals()["test_equivalence_%s" % _p] = make_equivalence_test(_p)


def test_resp_tool_without_arguments():
    for prov in PROVS:
        for dialect in ("oa", "an"):
            for stream in (False, True):
                what = "%s notool dialect=%s stream=%s" % (prov, dialect, stream)
                res = result(dialect, send(dialect, "%s-notool" % prov, stream=stream), what)
                got = _tools_of(dialect, res)
                eq([(n, a) for _, n, a in got], [("ping_server", {})], what + ": a call without arguments -> {}")


def test_resp_tool_args_escapes():
    """Arguments with escapes, non-ASCII and a surrogate pair, whose stream fragments split an
    escape sequence: the client gets the same object everywhere."""
    for prov in PROVS:
        for dialect in ("oa", "an"):
            for stream in (False, True):
                what = "%s toolesc dialect=%s stream=%s" % (prov, dialect, stream)
                res = result(dialect, send(dialect, "%s-toolesc" % prov, stream=stream), what)
                check(not res["errors"] and res["clean"], what + ": errors %r" % res["errors"])
                eq(_text_of(dialect, res), "Looking up \u00abZ\u00fcrich\u00bb.", what + ": text")
                eq([(n, a) for _, n, a in _tools_of(dialect, res)], [("lookup", PM.ESC_ARGS)], what + ": arguments")


def test_req_tool_args_escapes():
    args = json.dumps(PM.ESC_ARGS)
    result_text = 'found "it" \u00e9\n'
    for prov in ("an", "ge", "br"):
        mk = marker()
        h = [{"role": "user", "content": "look up " + mk},
             {"role": "assistant", "content": None, "tool_calls": [
                 {"id": "call_e1", "type": "function", "function": {"name": "lookup", "arguments": args}}]},
             {"role": "tool", "tool_call_id": "call_e1", "content": result_text}]
        oa_req("%s/text" % prov, messages=h, mk=mk, tools=[{"type": "function", "function": {
            "name": "lookup", "parameters": {"type": "object"}}}])
        _, b = upstream_body(mk, "%s escaped arguments" % prov)
        if prov == "an":
            got = b["messages"][1]["content"][0].get("input")
            res = _tr_text(b["messages"][2]["content"][0].get("content"))
        elif prov == "ge":
            got = b["contents"][1]["parts"][0]["functionCall"].get("args")
            res = _tr_text(b["contents"][2]["parts"][0]["functionResponse"]["response"].get("content"))
        else:
            got = b["messages"][1]["content"][0]["toolUse"].get("input")
            res = _tr_text(b["messages"][2]["content"][0]["toolResult"]["content"])
        eq(got, PM.ESC_ARGS, "%s: arguments string -> object" % prov)
        eq(res, result_text, "%s: tool result text" % prov)


def test_framing_sse_variants():
    """Several data: lines per event (joined with \\n, PROVIDERS.md section 0), id:/retry:/comment
    lines, keep-alive comments and unknown event types: the same result, a clean end, and
    every event the client gets is well-formed SSE with JSON data."""
    bad = []
    for prov in ("oa", "az", "an", "ge"):
        for opt in ("multiline", "fields", "comments", "unknown", "multiline~crlf~comments"):
            if opt == "unknown" and prov != "an":
                continue
            try:
                _same_text(prov, "text~" + opt, "SSE variant")
            except Fail as e:
                bad.append(str(e)[:300])
    for opt in ("multiline", "fields", "comments"):
        for prov in ("an", "ge", "oa"):
            for dialect in ("oa", "an"):
                what = "%s tools2~%s dialect=%s" % (prov, opt, dialect)
                try:
                    res = result(dialect, send(dialect, "%s/tools2~%s" % (prov, opt), stream=True), what)
                    check(not res["errors"] and res["clean"], what + ": errors %r" % res["errors"][:1])
                    eq([(n, a) for _, n, a in _tools_of(dialect, res)],
                       [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "Europe/Paris"})], what + ": calls")
                except Fail as e:
                    bad.append(str(e)[:300])
    check(not bad, "%d case(s) failed: %s" % (len(bad), " | ".join(bad)))


def test_framing_openai_usage_variants():
    """Usage in the finish chunk, and a usage chunk with choices:null (vLLM)."""
    for opt in ("usagefinish", "choicesnull"):
        for dialect in ("oa", "an"):
            what = "openai %s dialect=%s" % (opt, dialect)
            res = result(dialect, send(dialect, "oa/text~%s" % opt, stream=True), what)
            check(not res["errors"] and res["clean"], what + ": errors %r" % res["errors"][:1])
            eq(_text_of(dialect, res), TEXT, what + ": text")
            eq(_finish_of(dialect, res), "stop" if dialect == "oa" else "end_turn", what + ": finish")
            expect_usage(dialect, "oa", "text", res["usage"], what, cost=False)


def test_framing_openai_combined_chunk():
    """One OpenAI chunk carrying reasoning, text, tool calls and finish_reason: an Anthropic client
    gets the blocks in the order thinking, text, tool use (PROVIDERS.md section 7)."""
    res = an_result(an_req("oa/mixed~combined", stream=True), "openai combined chunk")
    check(not res["errors"] and res["clean"] and not res["bad"], "combined: %r %r" % (res["errors"], res["bad"]))
    eq(an_blocks_simple(res["blocks"]),
       [("thinking", "Plan: call the tool \u00e9.", ""), ("text", "Calling now \u2713."),
        ("tool_use", "call_m1", "get_weather", {"city": "Oslo"})], "combined: blocks")
    eq(res["stop_reason"], "tool_use", "combined: stop_reason")
    res = oa_result(oa_req("oa/mixed~combined", stream=True), "openai combined chunk (native)")
    eq((res["reasoning"], res["content"], res["finish"]),
       ("Plan: call the tool \u00e9.", "Calling now \u2713.", "tool_calls"), "combined native")


def test_concurrent_translated_streams():
    """Streams through different adapters at the same time keep their own state."""
    jobs = []
    for i, prov in enumerate(PROVS * 2):
        dialect = "oa" if i % 2 else "an"
        scen = ["mixed", "tools2", "toolesc", "text~split40", "mixed~1b"][i % 5]
        jobs.append((prov, dialect, scen))
    out = [None] * len(jobs)

    def run(k):
        prov, dialect, scen = jobs[k]
        try:
            ref = result(dialect, send(dialect, "%s/%s" % (prov, scen.split("~")[0]), stream=True, timeout=30), "ref")
            res = result(dialect, send(dialect, "%s/%s" % (prov, scen), stream=True, timeout=30), "concurrent")
            ok = not res["errors"] and res["clean"] and \
                _join_view(dialect, res, prov != "ge") == _join_view(dialect, ref, prov != "ge")
            out[k] = None if ok else "%s %s %s: differs: %r" % (prov, dialect, scen, _join_view(dialect, res, False))
        except Exception as e:   # collected below
            out[k] = "%s %s %s: %s" % (prov, dialect, scen, e)
    ths = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(len(jobs))]
    for t in ths:
        t.start()
    for t in ths:
        t.join(45 * TOL)
    check(not any(t.is_alive() for t in ths), "concurrent streams did not finish in time")
    bad = [x for x in out if x]
    check(not bad, "; ".join(bad))


def test_pooled_connections_after_failures():
    """A provider connection that carried a failed stream is not reused half-read: the
    requests after it succeed."""
    for bad, good in (("br-badcrc-mid", "br/text"), ("an-midfail", "an/text"), ("ge-midfail", "ge/text"),
                      ("oa-midfail", "oa/text"), ("br-midfail", "br/text"), ("an-trunc", "an/text")):
        for dialect in ("oa", "an"):
            result(dialect, send(dialect, bad, stream=True), "failure " + bad)
            for stream in (True, False, True):
                what = "%s after %s, dialect=%s stream=%s" % (good, bad, dialect, stream)
                res = result(dialect, send(dialect, good, stream=stream), what)
                check(not res["errors"] and res["clean"], what + ": %r" % res["errors"][:1])
                eq(_text_of(dialect, res), TEXT, what + ": text")


def test_resp_big_event():
    """One delta of about 400 KB in a single event (and a single Bedrock frame)."""
    for prov in PROVS:
        for dialect in ("oa", "an"):
            for stream in (False, True):
                what = "%s big dialect=%s stream=%s" % (prov, dialect, stream)
                res = result(dialect, send(dialect, "%s/big" % prov, stream=stream, timeout=30), what)
                check(not res["errors"] and res["clean"], what + ": errors %r" % res["errors"][:1])
                got = _text_of(dialect, res)
                check(got == PM.BIG_TEXT, "%s: text differs (%d chars, want %d)" % (what, len(got), len(PM.BIG_TEXT)))


def test_err_gemini_stream_error_400_not_retried():
    for dialect in ("oa", "an"):
        mk = marker()
        what = "gemini 400 error object as the first stream event, dialect=%s" % dialect
        r = send(dialect, "ge-earlyfail-400", stream=True, mk=mk)
        expect_error_body(dialect, r, 400, what, contains=("provmock gemini 400",))
        check(not any(x["path"].startswith("/fallback/") for x in mock().find(mk)), what + ": fell back")


def test_resp_gemini_blocked_prompt():
    for dialect in ("oa", "an"):
        for stream in (False, True):
            what = "gemini blocked dialect=%s stream=%s" % (dialect, stream)
            res = result(dialect, send(dialect, "ge/blocked", stream=stream), what)
            eq(_finish_of(dialect, res), "content_filter" if dialect == "oa" else "refusal", what + ": finish")
            eq(_text_of(dialect, res), "", what + ": no text")


def test_resp_json_via_anthropic_forced_tool():
    """response_format on an Anthropic target: the forced tool's input comes back as the text,
    with finish stop, streamed and not."""
    for rf in ({"type": "json_object"},
               {"type": "json_schema", "json_schema": {"name": "a", "schema": JSON_SCHEMA}}):
        for stream in (False, True):
            what = "an-json %s stream=%s" % (rf["type"], stream)
            res = oa_result(oa_req("an-json", stream=stream, response_format=rf), what)
            eq(res["tools"], [], what + ": no tool calls reach the client")
            try:
                got = json.loads(res["content"])
            except ValueError:
                raise Fail("%s: content is not the JSON answer: %r" % (what, res["content"]))
            eq(got, {"answer": 42}, what + ": content")
            eq(res["finish"], "stop", what + ": finish_reason")
            near(res["usage"]["cost"], (15 * 2 + 6 * 8) / 1e6, what + ": cost")


def test_resp_json_gemini():
    for stream in (False, True):
        res = oa_result(oa_req("ge-json", stream=stream, response_format={"type": "json_object"}), "ge-json")
        eq(json.loads(res["content"]), {"answer": 42}, "gemini json: content (stream=%s)" % stream)
        eq(res["finish"], "stop", "gemini json: finish")


# =======================================================================================
# tests: errors

def _expect_fallback(dialect, r, res, what, mk):
    eq(r.h("x-llmgw-provider"), "fb", what + ": served by the fallback target")
    eq(r.h("x-llmgw-attempts"), "2", what + ": x-llmgw-attempts")
    eq(_text_of(dialect, res), FB_TEXT, what + ": the fallback's text")
    check(res["clean"] and not res["errors"], "%s: fallback stream not clean: %r" % (what, res["errors"]))
    recs = mock().find(mk)
    check(any(x["path"].startswith("/fallback/") for x in recs), what + ": the mock never saw the fallback request")


def make_error_test(prov):
    def t():
        bad = []
        for st in ERR_STATUSES[prov]:
            for dialect in ("oa", "an"):
                for stream in ((False, True) if st in (400, 429) else (False,)):
                    mk = marker()
                    what = "%s upstream %d dialect=%s stream=%s" % (prov, st, dialect, stream)
                    r = send(dialect, "%s-err-%d" % (prov, st), stream=stream, mk=mk)
                    try:
                        if st in RETRYABLE:
                            res = result(dialect, r, what)
                            _expect_fallback(dialect, r, res, what, mk)
                            continue
                        want = 502 if st in (401, 403) else st
                        j = expect_error_body(dialect, r, want, what, contains=("provmock",))
                        eq(r.h("x-llmgw-attempts"), "1", what + ": attempts (not retried)")
                        check(not any(x["path"].startswith("/fallback/") for x in mock().find(mk)),
                              what + ": a non-retryable error fell back")
                        if dialect == "an":
                            at = {400: "invalid_request_error", 404: "not_found_error", 413: "request_too_large",
                                  502: "api_error"}[want]
                            eq(j["error"]["type"], at, what + ": Anthropic error type")
                    except Fail as e:
                        bad.append(str(e))
        check(not bad, "%d case(s): %s" % (len(bad), " | ".join(bad)))
    t.limit = 60
    return t


for _p in PROVS:
    globals()["test_err_shapes_%s" % _p] = make_error_test(_p)


def test_err_openai_quota_not_retried():
    for prov in ("oa", "az"):
        for dialect in ("oa", "an"):
            mk = marker()
            what = "%s insufficient_quota dialect=%s" % (prov, dialect)
            r = send(dialect, "%s-err-quota" % prov, mk=mk)
            j = expect_error_body(dialect, r, 429, what, contains=("quota",))
            eq(r.h("x-llmgw-attempts"), "1", what + ": attempts")
            eq(len(mock().find(mk)), 1, what + ": requests upstream")
            if dialect == "an":
                eq(j["error"]["type"], "rate_limit_error", what + ": Anthropic error type")


def test_err_all_attempts_failed():
    for dialect in ("oa", "an"):
        what = "every attempt failed (%s)" % dialect
        r = send(dialect, "exhaust")
        j = expect_error_body(dialect, r, 502, what, contains=("provmock anthropic 529", "provmock gemini 503"))
        if dialect == "an":
            check(j["error"]["type"] in ("api_error", "overloaded_error"), what + ": Anthropic type %r" % j)
        else:
            eq(str(j["error"].get("code")), "502", what + ": code")


def test_err_gemini_retry_delay_honoured():
    """Gemini's RetryInfo.retryDelay (1s here) is honoured before the same target is retried."""
    mk = marker()
    r = oa_req("ge-flaky", mk=mk, timeout=20)
    res = oa_result(r, "ge-flaky")
    eq(res["content"], TEXT, "ge-flaky: content after the retry")
    recs = sorted(mock().find(mk), key=lambda x: x["t"])
    eq(len(recs), 2, "ge-flaky: upstream requests")
    gap = recs[1]["t"] - recs[0]["t"]
    # the same tolerance as Retry-After in route_test.py (1 s with jitter: 0.75..1.25)
    check(gap >= 0.7, "ge-flaky: retried %.3fs after a 429 whose RetryInfo said retryDelay 1s" % gap)


def test_err_bedrock_424_falls_back():
    """PROVIDERS.md section 5: fall back on ... (and Bedrock 424 stream errors)."""
    for dialect in ("oa", "an"):
        mk = marker()
        what = "bedrock 424 ModelStreamErrorException dialect=%s" % dialect
        r = send(dialect, "br-err-424s", mk=mk)
        expect_status(r, 200, what)
        _expect_fallback(dialect, r, result(dialect, r, what), what, mk)


def test_err_bedrock_error_type_header_in_message():
    for dialect in ("oa", "an"):
        r = send(dialect, "br-err-400")
        expect_error_body(dialect, r, 400, "bedrock 400 ValidationException", contains=("provmock bedrock 400",))


def make_midstream_test(prov):
    def t():
        for dialect in ("oa", "an"):
            mk = marker()
            what = "%s error in the middle of the stream, dialect=%s" % (prov, dialect)
            r = send(dialect, "%s-midfail" % prov, stream=True, mk=mk)
            res = result(dialect, r, what)
            expect_stream_errored(dialect, res, what)
            check(_text_of(dialect, res).startswith("Hello from"),
                  "%s: the text before the error should have reached the client: %r" % (what, _text_of(dialect, res)))
            check(not any(x["path"].startswith("/fallback/") for x in mock().find(mk)),
                  what + ": fell back after the first byte")
            if (prov, dialect) == ("an", "an"):
                eq(res["errors"][-1].json["error"]["type"], "overloaded_error", what + ": native error event")
            msg = (res["errors"][-1].json or {}).get("error", {}).get("message", "")
            check(MID_MSG[prov].lower() in msg.lower(),
                  "%s: the error event should carry the provider's reason %r, got %r" % (what, MID_MSG[prov], msg))
    return t


MID_MSG = {"oa": "mid stream error", "az": "mid stream error", "an": "Overloaded",
           "ge": "provmock gemini stream error", "br": "model stream error"}


def make_early_error_test(prov):
    def t():
        for scen in ("earlyfail", "trunc-early"):
            for dialect in ("oa", "an"):
                mk = marker()
                what = "%s %s dialect=%s" % (prov, scen, dialect)
                r = send(dialect, "%s-%s" % (prov, scen), stream=True, mk=mk)
                res = result(dialect, r, what)
                if (prov, dialect) in NATIVE and dialect == "oa" and r.h("x-llmgw-provider") == prov:
                    # native OpenAI: the head went out with the upstream's first chunk; then it can
                    # only end with an error event (native Anthropic holds message_start: below)
                    expect_stream_errored(dialect, res, what)
                    continue
                _expect_fallback(dialect, r, res, what, mk)
                if dialect == "an":
                    eq(res["types"].count("message_start"), 1, what + ": one message_start")
    return t


def make_trunc_test(prov):
    def t():
        for dialect in ("oa", "an"):
            what = "%s stream ending without finish, dialect=%s" % (prov, dialect)
            res = result(dialect, send(dialect, "%s-trunc" % prov, stream=True), what)
            expect_stream_errored(dialect, res, what)
    return t


for _p in PROVS:
    globals()["test_midstream_error_%s" % _p] = make_midstream_test(_p)
    globals()["test_early_stream_error_falls_back_%s" % _p] = make_early_error_test(_p)
    globals()["test_stream_truncated_%s" % _p] = make_trunc_test(_p)


# =======================================================================================
# tests: framing, splits, Bedrock frames

def _same_text(prov, model, what, dialects=("oa", "an"), text=TEXT):
    for dialect in dialects:
        w = "%s %s dialect=%s" % (what, model, dialect)
        res = result(dialect, send(dialect, "%s/%s" % (prov, model), stream=True), w)
        check(not res["errors"] and res["clean"], "%s: errors %r / not clean" % (w, res["errors"]))
        eq(_text_of(dialect, res), text, w + ": text")
        eq(_finish_of(dialect, res), "stop" if dialect == "oa" else "end_turn", w + ": finish")


def test_framing_line_endings():
    for prov, model in (("ge", "text"), ("ge", "text~lf"), ("ge", "text~cr"), ("an", "text~crlf"),
                        ("an", "text~cr"), ("oa", "text~crlf"), ("oa", "text~cr"), ("az", "text~crlf")):
        _same_text(prov, model, "line endings")


def test_framing_gemini_crlf_split_inside_crlf():
    """Gemini's \\r\\n\\r\\n with the CRLF split between two reads, at every position around it."""
    raw = mock().raw("/v1beta/models/text:streamGenerateContent?alt=sse", {"contents": []})
    body = raw.body
    offs = set()
    for m in re.finditer(rb"\r\n\r\n", body):
        offs.update(range(m.start() - 1, m.end() + 2))
    for k in sorted(o for o in offs if 0 < o < len(body))[:24]:
        _same_text("ge", "text~split%d" % k, "gemini CRLF split", dialects=("oa",))


def test_framing_last_event_without_blank_line():
    for prov in ("ge", "an", "oa"):
        _same_text(prov, "text~nolast", "last event without its blank line")


def test_framing_close_delimited_streams():
    for prov in ("ge", "an", "oa", "br"):
        _same_text(prov, "text~cl", "close-delimited stream")


def _join_view(dialect, res, ids=True):
    if dialect == "oa":
        return (res["content"], res["reasoning"], oa_tools_simple(res["tools"], ids), res["finish"],
                usage_view("oa", res["usage"]))
    return (an_blocks_simple(res["blocks"], ids), res["stop_reason"], usage_view("an", res["usage"]))


def make_onebyte_test(prov):
    def t():
        for dialect in ("oa", "an"):
            for stream in (True, False):
                what = "%s mixed 1-byte sends dialect=%s stream=%s" % (prov, dialect, stream)
                ref = result(dialect, send(dialect, "%s/mixed" % prov, stream=stream), what + " (reference)")
                res = result(dialect, send(dialect, "%s/mixed~1b" % prov, stream=stream, timeout=30), what)
                check(not res["errors"] and res["clean"], "%s: errors %r / not clean" % (what, res["errors"]))
                eq(_join_view(dialect, res, prov != "ge"), _join_view(dialect, ref, prov != "ge"),
                   what + ": same result as unsplit")
    t.limit = 60
    return t


def _raw_stream(prov, model):
    """What provmock sends for this stream (its body, unchunked) and where its events end."""
    w = WIRE[prov]
    if w in ("openai", "azure"):
        body = {"model": model, "stream": True, "stream_options": {"include_usage": True}, "messages": []}
        path = "/openai/deployments/%s/chat/completions" % model if w == "azure" else "/v1/chat/completions"
    elif w == "anthropic":
        body, path = {"model": model, "stream": True, "messages": []}, "/v1/messages"
    elif w == "gemini":
        body, path = {"contents": []}, "/v1beta/models/%s:streamGenerateContent?alt=sse" % model
    else:
        body, path = {"messages": []}, "/model/%s/converse-stream" % model
    data = mock().raw(path, body).body
    ends = []
    if w == "bedrock":
        i = 0
        while i < len(data):
            i += struct.unpack(">I", data[i:i + 4])[0]
            ends.append(i)
    else:
        ends = [m.end() for m in re.finditer(rb"\r\n\r\n|\n\n", data)]
    return data, ends


def make_split_test(prov):
    def t():
        data, ends = _raw_stream(prov, "mixed")
        offs = set(range(1, min(90, len(data))))
        for e in ends:
            offs.update(range(e - 4, e + 5))
        for i, c in enumerate(data):            # inside UTF-8 sequences and escapes
            if c >= 0x80 or c == 0x5C:
                offs.update((i, i + 1))
        offs = sorted(o for o in offs if 0 < o < len(data))
        dialect = "an" if WIRE[prov] in ("openai", "azure") else "oa"
        ref = result(dialect, send(dialect, "%s/mixed" % prov, stream=True), "%s reference" % prov)
        want = _join_view(dialect, ref, prov != "ge")
        bad = []
        for k in offs:
            what = "%s mixed split at byte %d (dialect=%s)" % (prov, k, dialect)
            res = result(dialect, send(dialect, "%s/mixed~split%d" % (prov, k), stream=True), what)
            got = _join_view(dialect, res, prov != "ge")
            if res["errors"] or not res["clean"] or got != want:
                bad.append("%s: errors=%r clean=%s got %r" % (what, res["errors"][:1], res["clean"], got))
                if len(bad) >= 3:
                    break
        check(not bad, "%d of %d split offsets differ from the unsplit stream: %s" % (len(bad), len(offs),
                                                                                     " | ".join(bad)))
    t.limit = 120
    return t


for _p in PROVS:
    globals()["test_onebyte_%s" % _p] = make_onebyte_test(_p)
    globals()["test_split_offsets_%s" % _p] = make_split_test(_p)


def test_bedrock_bad_crc_falls_back():
    for scen in ("badcrc", "badprelude"):
        for dialect in ("oa", "an"):
            mk = marker()
            what = "bedrock %s first frame, dialect=%s" % (scen, dialect)
            r = send(dialect, "br-%s" % scen, stream=True, mk=mk)
            _expect_fallback(dialect, r, result(dialect, r, what), what, mk)


def test_bedrock_bad_crc_mid_stream():
    for dialect in ("oa", "an"):
        mk = marker()
        what = "bedrock bad CRC after text, dialect=%s" % dialect
        res = result(dialect, send(dialect, "br-badcrc-mid", stream=True, mk=mk), what)
        expect_stream_errored(dialect, res, what)
        check("never" not in _text_of(dialect, res), what + ": text of the damaged frame reached the client")
        check(_text_of(dialect, res).startswith("Hello from"), what + ": text before it: %r" % _text_of(dialect, res))


def test_bedrock_typed_headers():
    _same_text("br", "text~typed", "bedrock frames with headers of every type")


# =======================================================================================
# tests: Anthropic -> Anthropic natively

NATIVE_BODY = {
    "max_tokens": 300,
    "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
    "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi {mk}"}]},
                 {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]},
                 {"role": "user", "content": "Weather?"}],
    "tools": AN_TOOLS, "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    "metadata": {"user_id": "u-7"}, "stop_sequences": ["END", " "], "temperature": 0.5, "top_k": 5,
    "thinking": {"type": "enabled", "budget_tokens": 1024}, "x_future_field": {"nested": [1, 2, {"a": None}]},
}


def test_anthropic_native_body():
    for stream in (False, True):
        mk = marker()
        body = json.loads(json.dumps(NATIVE_BODY).replace("{mk}", mk))
        body["model"] = "an-text"
        if stream:
            body["stream"] = True
        r = http(shared().port, "POST", "/v1/messages", body, key=None,
                 headers={"x-api-key": "sk-test", "anthropic-version": "2023-06-01"})
        expect_status(r, 200, "native stream=%s" % stream)
        rec, got = upstream_body(mk, "native stream=%s" % stream)
        want = dict(body, model="text")
        eq(got, want, "native stream=%s: the provider must receive the client's body with only model rewritten"
           % stream)
        eq(rec["path"], "/v1/messages", "native: path")


def test_anthropic_native_events_and_cost():
    g = shared()
    mk = marker()
    body = {"model": "an-text", "max_tokens": 100, "stream": True, "messages": user_msgs(mk)}
    r = http(g.port, "POST", "/v1/messages", body, key=None, headers={"x-api-key": "sk-test"})
    res = an_result(r, "native stream")
    _common("an", "an", res, r, "native stream", "an-text")
    up = mock().raw("/v1/messages", dict(body, model="text"))
    up_ev = H.parse_sse(up.pieces)
    got_types = [t for t in res["types"] if t != "ping"]
    want_types = [e.name for e in up_ev if e.name != "ping"]
    eq(got_types, want_types, "native: event types (pings aside) as the provider sent them")
    got_content = [e.json for e in r.events if e.name and e.name.startswith("content_block")]
    want_content = [e.json for e in up_ev if e.name and e.name.startswith("content_block")]
    eq(got_content, want_content, "native: content block events unchanged")
    expect_usage("an", "an", "text", res["usage"], "native stream")
    line = g.access_lines(r.h("x-request-id"))
    near(line.get("cost"), 78e-6, "native stream: access-log cost")
    eq((line.get("prompt_tokens"), line.get("completion_tokens")), (11, 7), "native stream: access-log tokens")
    # not streamed
    r = http(g.port, "POST", "/v1/messages", dict(body, stream=False), key=None, headers={"x-api-key": "sk-test"})
    res = an_result(r, "native")
    _common("an", "an", res, r, "native", "an-text")
    eq(an_blocks_simple(res["blocks"]), [("text", TEXT)], "native: content")
    expect_usage("an", "an", "text", res["usage"], "native")
    line = g.access_lines(r.h("x-request-id"))
    near(line.get("cost"), 78e-6, "native: access-log cost")


def test_anthropic_native_beta_header():
    """Anthropic clients (Claude Code, the SDKs) turn features on with anthropic-beta: a native
    passthrough has to forward it."""
    mk = marker()
    r = http(shared().port, "POST", "/v1/messages",
             {"model": "an/text", "max_tokens": 50, "messages": user_msgs(mk)}, key=None,
             headers={"x-api-key": "sk-test", "anthropic-version": "2023-06-01",
                      "anthropic-beta": "interleaved-thinking-2025-05-14"})
    expect_status(r, 200, "native with anthropic-beta")
    rec = one_request(mk, "native with anthropic-beta")
    eq(rec["headers"].get("anthropic-beta"), "interleaved-thinking-2025-05-14", "native: anthropic-beta forwarded")


def test_anthropic_dialect_gateway_errors():
    """The gateway's own errors on /v1/messages come in the Anthropic shape."""
    port = shared().port
    cases = [("no key", http(port, "POST", "/v1/messages", {"model": "an/text", "max_tokens": 5,
                                                             "messages": user_msgs("x")}, key=None),
              401, "authentication_error"),
             ("unknown model", an_req("no-such-model-here"), 404, "not_found_error"),
             ("malformed JSON", http(port, "POST", "/v1/messages", b'{"model": "an/text", "messages": [',
                                     key=None, headers={"x-api-key": "sk-test"}), 400, "invalid_request_error"),
             ("no messages", an_req("an/text", messages=[]), 400, "invalid_request_error")]
    for what, r, st, ty in cases:
        j = expect_error_body("an", r, st, "/v1/messages " + what)
        eq(j["error"]["type"], ty, "/v1/messages %s: error type" % what)


def test_anthropic_native_errors():
    r = an_req("an-err-400")
    j = expect_error_body("an", r, 400, "native 400", contains=("provmock anthropic 400",))
    eq(j["error"]["type"], "invalid_request_error", "native 400: type")
    mk = marker()
    r = an_req("an-err-529", mk=mk)
    _expect_fallback("an", r, an_result(r, "native 529"), "native 529", mk)
    mk = marker()
    r = an_req("an-err-529", mk=mk, stream=True)
    _expect_fallback("an", r, an_result(r, "native 529 stream"), "native 529 stream", mk)


# =======================================================================================
# tests: the Anthropic dialect's newer fields (thinking adaptive / enabled, output_config,
# context_management), natively and translated

AN_HEADERS = {"x-api-key": "sk-test", "anthropic-version": "2023-06-01"}


def an_post(path, body, headers=None, timeout=15):
    h = dict(AN_HEADERS)
    h.update(headers or {})
    return http(shared().port, "POST", path, body, key=None, headers=h, timeout=timeout)


def _effort_of(prov, b):
    """What a translated body says of reasoning: OpenAI's reasoning_effort, Gemini's budget."""
    if prov in ("oa", "az"):
        return b.get("reasoning_effort")
    if prov == "ge":
        return ((b.get("generationConfig") or {}).get("thinkingConfig") or {}).get("thinkingBudget")
    return None


def test_req_anthropic_thinking_enabled_to_effort():
    """thinking enabled with budget_tokens N: OpenAI chat / Azure reasoning_effort low up to 2048,
    medium up to 8192, high above; Gemini keeps N as its thinkingBudget; nothing named dropped."""
    for budget, effort in ((1024, "low"), (2048, "low"), (2049, "medium"), (8192, "medium"), (8193, "high"),
                           (30000, "high")):
        for prov in ("oa", "az", "ge"):
            what = "%s thinking enabled budget %d" % (prov, budget)
            mk = marker()
            r = an_req("%s/text" % prov, mk=mk, max_tokens=40000, thinking={"type": "enabled", "budget_tokens": budget})
            expect_status(r, 200, what)
            eq(r.h("llmgw-dropped-fields"), None, what + ": llmgw-dropped-fields")
            _, b = upstream_body(mk, what)
            eq(_effort_of(prov, b), budget if prov == "ge" else effort, what + ": upstream effort / budget")
            check("thinking" not in b, what + ": Anthropic's thinking object went upstream")


def test_req_anthropic_thinking_adaptive_to_effort():
    """thinking adaptive takes output_config.effort: low and medium as they are, high and max
    high, medium without one; Gemini gets the effort's budget (1024, 4096, 16384); output_config
    is not named as dropped (the effort went on); streamed the same."""
    cases = (("low", "low", 1024), ("medium", "medium", 4096), ("high", "high", 16384), ("max", "high", 16384),
             (None, "medium", 4096))
    for given, effort, budget in cases:
        for prov in ("oa", "az", "ge"):
            for stream in (False, True):
                what = "%s thinking adaptive effort %s stream=%s" % (prov, given, stream)
                mk = marker()
                extra = {"output_config": {"effort": given}} if given else {}
                r = an_req("%s/text" % prov, mk=mk, stream=stream, max_tokens=40000, thinking={"type": "adaptive"},
                           **extra)
                res = an_result(r, what)
                check(res["clean"] and not res["errors"], what + ": not a clean answer")
                eq(r.h("llmgw-dropped-fields"), None, what + ": llmgw-dropped-fields")
                _, b = upstream_body(mk, what)
                eq(_effort_of(prov, b), budget if prov == "ge" else effort, what + ": upstream effort / budget")
                for k in ("thinking", "output_config"):
                    check(k not in b, "%s: %s went upstream" % (what, k))


def test_req_anthropic_dropped_fields_named():
    """Translated, context_management and an output_config effort without adaptive thinking
    are left out of the upstream body and named in llmgw-dropped-fields (stream or not, every
    translated provider type); natively nothing is named."""
    cases = [({"context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]}}, "context_management"),
             ({"output_config": {"effort": "low"}}, "output_config"),
             ({"thinking": {"type": "enabled", "budget_tokens": 4000}, "output_config": {"effort": "high"}},
              "output_config"),
             ({"output_config": {"effort": "medium"}, "context_management": {"edits": []}},
              "context_management,output_config"),
             ({"thinking": {"type": "adaptive"}, "output_config": {"effort": "low"}, "context_management": {"edits": []}},
              "context_management"),
             ({"thinking": {"type": "disabled"}}, None), ({}, None)]
    for extra, want in cases:
        for prov in ("oa", "ge", "br", "an"):
            for stream in (False, True):
                what = "%s %s stream=%s" % (prov, sorted(extra), stream)
                mk = marker()
                r = an_req("%s/text" % prov, mk=mk, stream=stream, max_tokens=20000, **extra)
                res = an_result(r, what)
                check(res["clean"] and not res["errors"], what + ": not a clean answer")
                w = want
                if prov == "br" and extra.get("thinking", {}).get("type") in ("enabled", "adaptive"):
                    w = ",".join(x for x in (want, "thinking") if x)  # Converse carries no thinking
                eq(r.h("llmgw-dropped-fields"), None if prov == "an" else w, what + ": llmgw-dropped-fields")
                _, b = upstream_body(mk, what)
                if prov == "an":
                    for k, v in extra.items():
                        eq(b.get(k), v, "%s: natively %s forwarded" % (what, k))
                else:
                    for k in ("context_management", "output_config"):
                        check(k not in json.dumps(b), "%s: %s went upstream: %s" % (what, k, snip(b)))


NATIVE_NEW = {
    "max_tokens": 32000,
    "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
    "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi {mk}",
                                               "cache_control": {"type": "ephemeral"}}]}],
    "thinking": {"type": "adaptive"}, "output_config": {"effort": "max", "x_future": [1]},
    "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": {"type": "thinking_turns", "value": 1}},
                                     {"type": "clear_tool_uses_20250919", "trigger": {"type": "input_tokens",
                                                                                      "value": 100000}}]},
    "metadata": {"user_id": "user_abc_account_def_session_0123"}, "x_unknown_top": {"a": [None, True, 1.5]},
    "tools": AN_TOOLS, "tool_choice": {"type": "auto"},
}
LONG_BETA = ",".join(["claude-code-20250219", "interleaved-thinking-2025-05-14", "context-management-2025-06-27",
                      "fine-grained-tool-streaming-2025-05-14"] + ["x-beta-%04d-2025-01-01" % i for i in range(150)])


def test_anthropic_native_new_fields_query_beta():
    """Natively (an, an1): the body as sent but for model (thinking adaptive, output_config,
    context_management, unknown fields), ?beta=true kept on the upstream path, a 3.6 KB
    anthropic-beta forwarded verbatim, no llmgw-dropped-fields; a translated target gets no
    query."""
    check(3000 < len(LONG_BETA) < 4096, "LONG_BETA is %d bytes" % len(LONG_BETA))
    for prov, path in (("an", "/v1/messages?beta=true"), ("an1", "/proxy/v1/messages?beta=true")):
        for stream in (False, True):
            what = "%s native new fields stream=%s" % (prov, stream)
            mk = marker()
            body = json.loads(json.dumps(NATIVE_NEW).replace("{mk}", mk))
            body["model"] = "%s/text" % prov
            if stream:
                body["stream"] = True
            r = an_post("/v1/messages?beta=true", body, headers={"anthropic-beta": LONG_BETA})
            res = an_result(r, what)
            check(res["clean"] and not res["errors"], what + ": not a clean answer")
            eq(r.h("llmgw-dropped-fields"), None, what + ": llmgw-dropped-fields")
            rec, got = upstream_body(mk, what)
            eq(rec["path"], path, what + ": upstream path")
            eq(got, dict(body, model="text"), what + ": the body forwarded with only model rewritten")
            eq(list(got), list(body), what + ": member order")
            eq(rec["headers"].get("anthropic-beta"), LONG_BETA, what + ": anthropic-beta verbatim")
    mk = marker()
    r = an_post("/v1/messages?beta=true", {"model": "oa/text", "max_tokens": 10, "messages": user_msgs(mk)},
                headers={"anthropic-beta": "context-management-2025-06-27"})
    expect_status(r, 200, "translated with ?beta=true")
    rec = one_request(mk, "translated with ?beta=true")
    eq(rec["path"], "/v1/chat/completions", "translated: no query on the OpenAI path")
    check("anthropic-beta" not in rec["headers"], "translated: anthropic-beta sent to OpenAI")


def test_anthropic_native_4xx_body_unchanged():
    """A native Anthropic refusal (4xx other than 401/403) reaches the client byte for byte
    (error.details and unknown members kept), streamed or not, not retried, no fallback."""
    for st in (400, 404, 413, 422):
        want = mock().raw("/v1/messages", {"model": "errd-%d" % st, "messages": []})
        for stream in (False, True):
            what = "native errd-%d stream=%s" % (st, stream)
            mk = marker()
            r = an_req("an/errd-%d" % st, mk=mk, stream=stream)
            expect_status(r, st, what)
            eq(r.body, want.body, what + ": the upstream's body")
            check(r.h("content-type", "").startswith("application/json"), what + ": content-type")
            eq(r.h("x-llmgw-attempts"), "1", what + ": attempts")
            eq(len(mock().find(mk)), 1, what + ": upstream requests")
    mk = marker()
    r = an_req("ct-errd-400", mk=mk)
    expect_status(r, 400, "errd-400 with a fallback target")
    eq(r.json()["error"]["details"]["field"], "messages.0", "errd-400 with a fallback: the upstream's body")
    eq([x["path"] for x in mock().find(mk)], ["/v1/messages"], "errd-400 with a fallback: not tried elsewhere")


def test_anthropic_native_early_error_falls_back():
    """Natively an error event right after message_start (before any content block), or a
    stream that ends there: message_start was held, the attempt failed, the next target's
    stream is all the client sees (one message_start, no error event)."""
    for model, fb, path in (("an-earlyfail", "fb", "/fallback/v1/chat/completions"),
                            ("an-trunc-early", "fb", "/fallback/v1/chat/completions"),
                            ("an-ef-an", "an1", "/proxy/v1/messages"), ("an-te-an", "an1", "/proxy/v1/messages")):
        what = "native %s" % model
        mk = marker()
        r = an_req(model, mk=mk, stream=True)
        res = an_result(r, what)
        eq(r.h("x-llmgw-provider"), fb, what + ": served by")
        eq(r.h("x-llmgw-attempts"), "2", what + ": attempts")
        check(res["clean"] and not res["errors"] and not res["bad"], "%s: not a clean stream: errors %r bad %r"
              % (what, res["errors"], res["bad"]))
        eq(res["types"].count("message_start"), 1, what + ": message_start events")
        eq(an_blocks_simple(res["blocks"]), [("text", TEXT)], what + ": the fallback's text")
        eq(res.get("model"), model, what + ": message_start model (the public name)")
        eq([x["path"] for x in mock().find(mk)], ["/v1/messages", path], what + ": upstream paths")
        if fb == "an1":
            up = [e.name for e in H.parse_sse(mock().raw("/v1/messages", {"model": "text", "stream": True,
                                                                         "messages": []}).pieces) if e.name != "ping"]
            eq([t for t in res["types"] if t != "ping"], up, what + ": the fallback's events as it sent them")
        ln = shared().access_lines(r.h("x-request-id"))
        eq((ln.get("status"), ln.get("provider")), (200, fb), what + ": access log")


# =======================================================================================
# tests: POST /v1/messages/count_tokens

CT_BODY = {"system": [{"type": "text", "text": "You are terse. \u00e9"}], "tools": AN_TOOLS}


def ct_body(model, mk, n=2):
    msgs = [{"role": "user", "content": "Count me %s" % mk}]
    for i in range(n - 1):
        msgs.append({"role": "assistant" if i % 2 == 0 else "user", "content": "turn %d" % i})
    return dict(CT_BODY, model=model, messages=msgs)


def ct_estimate(body):
    """llmgw's estimate: a token per 4 bytes (rounded up) of system, tools and messages as the
    client's JSON, plus 4 a message."""
    n = 0
    for k in ("system", "tools", "messages"):
        if k in body:
            n += (len(json.dumps(body[k])) + 3) // 4
    return n + 4 * len(body["messages"])


def count(model, mk, n=2, path="/v1/messages/count_tokens", headers=None, body=None):
    b = body or ct_body(model, mk, n)
    return b, an_post(path, b, headers=headers)


def _expect_counted(r, b, what, prov):
    expect_status(r, 200, what)
    check(r.body.startswith(b'{"provider":"%s",' % prov.encode()), "%s: the provider member first: %s"
          % (what, snip(r.body, 80)))
    eq(r.json(), {"provider": prov, "input_tokens": PM.COUNT_BASE + len(b["messages"])}, what + ": the upstream's count")
    eq(r.h("llmgw-estimated"), None, what + ": llmgw-estimated")
    eq(r.h("x-llmgw-provider"), prov, what + ": x-llmgw-provider")


def _expect_estimated(r, b, what):
    expect_status(r, 200, what)
    eq(r.json(), {"input_tokens": ct_estimate(b)}, what + ": llmgw's estimate")
    eq(r.h("llmgw-estimated"), "true", what + ": llmgw-estimated")


def test_count_tokens_forwarded():
    """A model with an Anthropic target: count_tokens goes to its .../v1/messages/count_tokens
    (query and anthropic-beta kept, the body with the upstream model); the answer as the
    upstream wrote it with provider first; Anthropic targets after a non-Anthropic one too."""
    for model, prov, path, n in (("an-text", "an", "/v1/messages/count_tokens", 1),
                                 ("ct-an1", "an1", "/proxy/v1/messages/count_tokens", 3),
                                 ("ct-mixed", "an", "/v1/messages/count_tokens", 2)):
        for query in ("", "?beta=true"):
            what = "count_tokens %s%s" % (model, query)
            mk = marker()
            b, r = count(model, mk, n, path="/v1/messages/count_tokens" + query,
                         headers={"anthropic-beta": LONG_BETA})
            _expect_counted(r, b, what, prov)
            rec, got = upstream_body(mk, what)
            eq(rec["path"], path + query, what + ": upstream path")
            eq(rec["kind"], "count_tokens", what + ": the mock's route")
            eq(got, dict(b, model=rec["model"]), what + ": the body forwarded")
            check(rec["model"].split("#")[0] == "text", what + ": upstream model %r" % rec["model"])
            eq(rec["headers"].get("anthropic-beta"), LONG_BETA, what + ": anthropic-beta")
            eq(rec["headers"].get("x-api-key"), "%s-secret" % prov, what + ": the provider's key")
            ln = shared().access_lines(r.h("x-request-id"))
            eq((ln.get("status"), ln.get("provider")), (200, prov), what + ": access log")
            check(not ln.get("cost"), "%s: a count costs nothing: %r" % (what, ln.get("cost")))


def test_count_tokens_upstream_4xx_passed_on():
    """An Anthropic refusal of a count (4xx) reaches the client byte for byte, not retried."""
    for model, st in (("ct-errd-400", 400), ("ct-errd-404", 404), ("ct-errd-413", 413)):
        what = "count_tokens %s" % model
        want = http(mock().port, "POST", "/v1/messages/count_tokens", {"model": "errd-%d" % st, "messages": []},
                    key=None)
        mk = marker()
        b, r = count(model, mk)
        expect_status(r, st, what)
        eq(r.body, want.body, what + ": the upstream's body")
        eq(r.h("llmgw-estimated"), None, what + ": llmgw-estimated")
        eq([x["path"] for x in mock().find(mk)], ["/v1/messages/count_tokens"], what + ": not retried")
    what = "count_tokens an-err-401"
    mk = marker()
    b, r = count("an-err-401", mk)
    expect_status(r, 502, what)
    eq(r.json()["error"]["type"], "api_error", what + ": llmgw's error")


def test_count_tokens_estimated():
    """No Anthropic target, or every Anthropic target failing (5xx, 529, 429, connection
    refused): llmgw's estimate with llmgw-estimated: true; a dead target's next Anthropic
    target counts."""
    for model, upstream in (("oa-text", False), ("ge-text", False), ("ct-500", True), ("ct-529", True),
                            ("ct-429", True), ("ct-dead", False)):
        for n in (1, 4) if not upstream else (3,):   # (one request each: 3 failures, the breaker stays shut)
            what = "count_tokens %s n=%d" % (model, n)
            mk = marker()
            b, r = count(model, mk, n)
            _expect_estimated(r, b, what)
            seen = mock().find(mk)
            if upstream:
                check(seen and all(x["path"] == "/v1/messages/count_tokens" for x in seen),
                      "%s: the Anthropic target should have been asked: %r" % (what, [x["path"] for x in seen]))
            else:
                eq(seen, [], what + ": nothing upstream")
    what = "count_tokens ct-dead-an1"
    mk = marker()
    b, r = count("ct-dead-an1", mk)
    _expect_counted(r, b, what, "an1")
    mk = marker()
    b = {"model": "oa-text", "messages": [{"role": "user", "content": "only %s" % mk}]}
    _, r = count("oa-text", mk, body=b)
    _expect_estimated(r, b, "count_tokens without system and tools")


def test_count_tokens_errors():
    port = shared().port
    cases = [("unknown model", an_post("/v1/messages/count_tokens", {"model": "no-such", "messages": []}), 404,
              "not_found_error"),
             ("no messages", an_post("/v1/messages/count_tokens", {"model": "an-text"}), 400, "invalid_request_error"),
             ("no model", an_post("/v1/messages/count_tokens", {"messages": []}), 400, "invalid_request_error"),
             ("bad key", http(port, "POST", "/v1/messages/count_tokens", {"model": "an-text", "messages": []},
                              key=None, headers={"x-api-key": "sk-wrong"}), 401, "authentication_error")]
    for what, r, st, ty in cases:
        j = expect_error_body("an", r, st, "count_tokens " + what)
        eq(j["error"]["type"], ty, "count_tokens %s: error type" % what)


def test_count_tokens_direct_name():
    """count_tokens with a direct PROVIDER/MODEL name (direct = yes), the name Claude Code sends
    to /v1/messages as well: counted by that Anthropic provider, or estimated for another."""
    mk = marker()
    b, r = count("an/text", mk)
    _expect_counted(r, b, "count_tokens an/text", "an")
    mk = marker()
    b, r = count("oa/text", mk)
    _expect_estimated(r, b, "count_tokens oa/text")


# =======================================================================================
# last: the shared gateway must exit cleanly

def test_shared_gateway_clean_exit():
    global SHARED
    g = shared()
    check(g.alive(), "shared gateway not running")
    try:
        g.stop(10)
        shutil.rmtree(g.dir, ignore_errors=True)
    finally:
        SHARED = None


# =======================================================================================
# runner


def main():
    return H.main(globals(), "llmgw provider-adapter tests", mock_label="provmock", time_fails=True)


if __name__ == "__main__":
    sys.exit(main())
