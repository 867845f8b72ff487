#!/usr/bin/env python3
"""llmgw Responses API tests: POST /v1/responses (the OpenAI Responses dialect, stateless,
translated to every target through the canonical request) against the built-in mock provider
and the scripted wire-format mock tests/provmock.py (OpenAI Chat Completions and Anthropic
Messages targets throughout; Gemini and Bedrock targets for text and a tool round trip).

    python3 tests/responses_test.py                  # all tests, against ./llmgw
    python3 tests/responses_test.py -k stream        # only tests whose name contains "stream"
    python3 tests/responses_test.py --gw build/llmgw-asan -v
    python3 tests/responses_test.py --list

What is covered (the reference is /work/shared/PROVIDERS.md section 9):
- the response object (id resp_<request id>, status, model, provider, output items: reasoning,
  message with output_text, function_call; usage with input/output token details and cost);
- the stream: every event named by its type, sequence numbers 0, 1, 2..., the exact order of
  response.created, response.in_progress, output_item.added, content_part.added, deltas, the
  done events, output_item.done, response.completed (or response.incomplete), no [DONE]; the
  joined deltas equal the done events' text and the non-streamed answer;
- request translation, checked on the mock side: input as a string or items (system/developer,
  user, assistant, function_call, function_call_output, reasoning), instructions, function
  tools, tool_choice, parallel_tool_calls, text.format json_schema, reasoning.effort,
  max_output_tokens, temperature, top_p, user, images; a tool round trip;
- previous_response_id refused (400), hosted tools dropped and named in llmgw-dropped-tools,
  max_output_tokens cut (status incomplete), a failure in the middle of the stream (error then
  response.failed, never response.completed), errors in the OpenAI shape, the access log and
  /v1/generation like chat's;
- custom tools (Codex's apply_patch with its lark grammar: a function of one string "input",
  the grammar in the description; answered as custom_tool_call items, streamed with
  custom_tool_call_input.done and no argument deltas), namespace groups (NS__NAME upstream,
  name and namespace restored), custom_tool_call / _output and namespaced function_call items
  back upstream, hosted tools named in llmgw-dropped-tools, on every translated wire (provmock's
  patch / patch2 / patchx scenarios call the request's own tools);
- compaction translated: a compaction_trigger item or POST /v1/responses/compact (a summary
  asked for as the last user turn, tool_choice none; one compaction item, encrypted_content
  llmgw-summary:...; streamed as added + done), the compaction item back as a user turn,
  another service's dropped and named in llmgw-dropped-fields; natively the trigger forwarded
  and /v1/responses/compact sent to the provider's .../responses/compact (Azure too), a
  native compaction failing over to a translated one;
- native forwarding (test_native_*) to providers with `responses = yes` (rs, rs2: openai; az,
  azd, az1: azure): the body forwarded as the client sent it but for model (the upstream name)
  and models/provider/usage; the upstream's events passed through (sequence numbers, ids, item
  shapes) with the public model name and usage.cost in the response objects and no provider
  member per event; the full answer with provider first; usage accounted (access log,
  /v1/generation, /v1/key, the ledger); incomplete, 4xx passed on and not retried, 5xx, an early
  error event and an empty stream falling back (to a translated chat target or another
  Responses target), failures after the first byte ending with error + response.failed; Azure's
  paths and api-version; the configuration check; native and translated targets giving the
  same output and the same event sequence.

Providers (one shared gateway): oa (openai), an (anthropic), ge (gemini), br (bedrock, Bearer
key), rs and rs2 (openai with responses = yes; rs2 under /fallback/v1), az / azd / az1 (azure
with responses = yes: deployment-style base with api_version, the same without api_version,
/openai/v1 base), all -> provmock; mk (the built-in mock). Models `rs-SCENARIO` are native,
`rsfb-SCENARIO` a native first target with a fallback behind it. Models `P-SCENARIO` carry prices (in=2 out=8 USD/Mtok). Each test finds its
requests in the mock's log by a random marker in the prompt. Standard library only; 127.0.0.1
only; every wait is bounded.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
from harness import (HERE, PYTHON, TOL, CTX, Fail, check, eq, near, snip, marker, read_file)  # noqa: E402,F401

import provmock as PM  # noqa: E402

MOCK_SCRIPT = os.path.join(HERE, "provmock.py")
MOCK = None
TEXT = PM.TEXT
PRICES = "in=2 out=8"
SCENARIOS = ["text", "tool", "tools2", "think", "length", "json", "midfail", "mixed", "filter", "tools6", "patch",
             "patch2", "patchx"]
PROVS = ["oa", "an"]
MORE_PROVS = ["ge", "br"]   # gemini and bedrock targets: the same dialect, other wires
CALL_ID = {"oa": "call_", "an": "toolu_", "br": "tooluse_"}
# native Responses targets (provider rs, responses = yes)
RS_SCENARIOS = ["text", "tool", "tools2", "think", "length", "json", "mixed", "filter", "tools6", "midfail",
                "trunc", "trunc-early", "patch", "patch2"]
RS_PRICES = {"usage": "in=2 out=8 cache_read=0.5"}
# rsfb-NAME: first target rs SCENARIO, then the fallback (a translated chat target or rs2, the
# other Responses provider)
RS_FALLBACKS = {"err503": ("err-503", "oa text"), "err500": ("err-500", "rs2 text"),
                "err429": ("err-429", "rs2 text"), "err400": ("err-400", "oa text"),
                "earlyfail": ("earlyfail", "rs2 text"), "earlyfail-oa": ("earlyfail", "oa text"),
                "trunc-empty": ("trunc-empty", "oa text"), "trunc-empty-rs": ("trunc-empty", "rs2 text"),
                "trunc-early": ("trunc-early", "oa text"), "trunc": ("trunc", "oa text"),
                "midfail": ("midfail", "oa text")}


def http(port, method, path, body=None, headers=None, key="sk-test", timeout=15):
    return H.http_request(port, method, path, body, headers, key, timeout)


class Mock(H.MockProc):
    def __init__(self):
        super().__init__([PYTHON, MOCK_SCRIPT, "--port", "0"], "llmgw-rs-provmock-", "provmock")

    def requests(self):
        if not self.alive():
            raise Fail("provmock died; its stderr: %s" % read_file(self.stderr_path)[-2000:])
        r = http(self.port, "GET", "/_requests", key=None)
        check(r.status == 200, "provmock GET /_requests: %r" % r)
        return r.json()

    def find(self, mk):
        return [r for r in self.requests() if mk in r["body"]]


def mock():
    global MOCK
    if MOCK is None:
        MOCK = Mock()
        H.CTX.mock_mark = 0
    if not MOCK.alive():
        raise Fail("provmock died; its stderr: %s" % read_file(MOCK.stderr_path)[-2000:])
    return MOCK


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
max_attempts = 2
log_level = warn

[provider.oa]
type = openai
base_url = http://127.0.0.1:{mp}/v1
api_key = sk-oa-secret
direct = yes

[provider.an]
type = anthropic
base_url = http://127.0.0.1:{mp}
api_key = an-secret
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

[provider.rs]
type = openai
base_url = http://127.0.0.1:{mp}/v1
api_key = sk-rs-secret
responses = yes
direct = yes

[provider.rs2]
type = openai
base_url = http://127.0.0.1:{mp}/fallback/v1
api_key = sk-rs2-secret
responses = yes
direct = yes

[provider.az]
type = azure
base_url = http://127.0.0.1:{mp}/az
api_key = az-secret
api_version = 2025-03-01-preview
responses = yes
direct = yes

[provider.azd]
type = azure
base_url = http://127.0.0.1:{mp}/azd
api_key = azd-secret
responses = yes
direct = yes

[provider.az1]
type = azure
base_url = http://127.0.0.1:{mp}/openai/v1
api_key = az1-secret
responses = yes
direct = yes

[provider.mk]
type = mock

[model.m-mock]
target = mk mock-model {prices}

[key.test]
secret = sk-test
""".format(port=port, mp=mp, log=access_log, prices=PRICES)]
    for p in PROVS + MORE_PROVS:
        for s in SCENARIOS:
            out.append("[model.%s-%s]\ntarget = %s %s %s\n" % (p, s, p, s, PRICES))
    for s in RS_SCENARIOS + list(RS_PRICES):
        out.append("[model.rs-%s]\ntarget = rs %s %s\n" % (s, s, RS_PRICES.get(s, PRICES)))
    for name, (first, then) in RS_FALLBACKS.items():
        out.append("[model.rsfb-%s]\ntarget = rs %s#fb-%s %s\ntarget = %s#fb-%s %s\n"
                   % (name, first, name, PRICES, then, name, PRICES))
    out.append(extra)
    return "\n".join(out) + "\n"


class Gateway(H.GatewayBase):
    prefix = "llmgw-responses-"

    def __init__(self, shared=False, extra=""):
        super().__init__(shared, register=False)
        self.write(config_text(self.port, mock().port, self.access_log, extra))
        if not shared:
            H.CTX.gateways.append(self)

    def health(self):
        return http(self.port, "GET", "/health", key=None, timeout=1).status

    def access_line(self, rid, wait=3):
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
# requests and results

def rs_req(model, input=None, stream=False, mk=None, key="sk-test", headers=None, **extra):
    """POST /v1/responses; input defaults to one user message carrying the marker."""
    mk = mk or marker()
    b = {"model": model, "input": input if input is not None else "Say hello. %s" % mk}
    if stream:
        b["stream"] = True
    b.update(extra)
    return http(shared().port, "POST", "/v1/responses", b, key=key, headers=headers)


def expect_status(r, want, what):
    if r.status != want:
        raise Fail("%s: expected status %d, got %d; body %s" % (what, want, r.status, snip(r.body)))


def one_request(mk, what):
    rs = mock().find(mk)
    check(len(rs) == 1, "%s: the mock should have seen exactly 1 request with marker %s, saw %d: %r"
          % (what, mk, len(rs), [(x["path"], snip(x["body"], 200)) for x in rs]))
    try:
        return rs[0], json.loads(rs[0]["body"])
    except ValueError:
        raise Fail("%s: the body the provider received is not JSON: %s" % (what, snip(rs[0]["body"])))


def expect_error(r, status, what, contains=()):
    expect_status(r, status, what)
    j = r.json()
    e = j.get("error") if isinstance(j, dict) else None
    check(isinstance(e, dict) and isinstance(e.get("message"), str) and e["message"] and "type" in e and
          "param" in e and "code" in e, "%s: not an OpenAI error body: %s" % (what, snip(r.body)))
    for c in contains:
        check(c.lower() in e["message"].lower(), "%s: error message %r should mention %r" % (what, e["message"], c))
    return e


def check_object(r, j, what, model=None, provider=None, status="completed"):
    """The common shape of a response object."""
    rid = r.h("x-request-id")
    eq(j.get("id"), "resp_%s" % rid, what + ": id")
    eq(j.get("object"), "response", what + ": object")
    check(isinstance(j.get("created_at"), int) and abs(j["created_at"] - time.time()) < 120,
          "%s: created_at %r" % (what, j.get("created_at")))
    eq(j.get("status"), status, what + ": status")
    if model:
        eq(j.get("model"), model, what + ": model (the public name)")
    if provider:
        eq(j.get("provider"), provider, what + ": provider")
        eq(r.h("x-llmgw-provider"), provider, what + ": x-llmgw-provider")
    check(isinstance(j.get("output"), list), "%s: output is not a list: %s" % (what, snip(j)))
    if status == "incomplete":
        check(isinstance(j.get("incomplete_details"), dict), what + ": incomplete_details")
    else:
        eq(j.get("incomplete_details"), None, what + ": incomplete_details")
    eq(j.get("error"), None, what + ": error")
    for n, it in enumerate(j["output"]):
        t = it.get("type")
        pre = {"message": "msg_", "reasoning": "rs_", "function_call": "fc_", "custom_tool_call": ("ctc_", "fc_"),
               "compaction": "cmp_"}.get(t)
        check(pre, "%s: output[%d] has an unknown type: %s" % (what, n, snip(it)))
        check(isinstance(it.get("id"), str) and it["id"].startswith(pre), "%s: output[%d].id %r" % (what, n, it.get("id")))
        if t == "message":
            eq((it.get("role"), it.get("status")), ("assistant", "completed"), "%s: output[%d] role/status" % (what, n))
            for c in it.get("content") or []:
                eq(c.get("type"), "output_text", "%s: output[%d] part type" % (what, n))
                eq(c.get("annotations"), [], "%s: output[%d] annotations" % (what, n))
        if t == "function_call":
            eq(it.get("status"), "completed", "%s: output[%d] status" % (what, n))
            check(isinstance(it.get("arguments"), str), "%s: arguments not a string" % what)
        if t == "custom_tool_call":
            check(it.get("status") in (None, "completed"), "%s: output[%d] status %r" % (what, n, it.get("status")))
            check(isinstance(it.get("input"), str) and "arguments" not in it,
                  "%s: output[%d]: a custom_tool_call carries its input as a string: %s" % (what, n, snip(it)))
        if t == "compaction":
            check(isinstance(it.get("encrypted_content"), str), "%s: output[%d] encrypted_content" % (what, n))
    return j


def simple(output):
    """Comparable view of output items (ids left out, arguments parsed)."""
    out = []
    for it in output:
        t = it.get("type")
        if t == "message":
            out.append(("message", "".join(c.get("text", "") for c in it.get("content") or [])))
        elif t == "reasoning":
            out.append(("reasoning", "".join(s.get("text", "") for s in it.get("summary") or []),
                        it.get("encrypted_content")))
        elif t == "function_call":
            try:
                a = json.loads(it.get("arguments") or "")
            except ValueError:
                a = ("not JSON", it.get("arguments"))
            out.append(("function_call", it.get("call_id"), it.get("name"), a) +
                       ((it["namespace"],) if "namespace" in it else ()))
        elif t == "custom_tool_call":
            out.append(("custom_tool_call", it.get("call_id"), it.get("name"), it.get("input")) +
                       ((it["namespace"],) if "namespace" in it else ()))
        elif t == "compaction":
            out.append(("compaction", it.get("encrypted_content")))
        else:
            out.append((t,))
    return out


def compress(names):
    """Event names with each run of one delta type (one or more) shown once, as name*."""
    out = []
    for n in names:
        if n.endswith(".delta"):
            if not out or out[-1] != n + "*":
                out.append(n + "*")
        else:
            out.append(n)
    return out


MSG_EVENTS = ["response.output_item.added", "response.content_part.added", "response.output_text.delta*",
              "response.output_text.done", "response.content_part.done", "response.output_item.done"]
FC_EVENTS = ["response.output_item.added", "response.function_call_arguments.delta*",
             "response.function_call_arguments.done", "response.output_item.done"]
RS_EVENTS = ["response.output_item.added", "response.reasoning_summary_part.added",
             "response.reasoning_summary_text.delta*", "response.reasoning_summary_text.done",
             "response.reasoning_summary_part.done", "response.output_item.done"]
HEAD_EVENTS = ["response.created", "response.in_progress"]


def stream_result(r, what, end="response.completed"):
    """A Responses stream checked event by event; returns (events, final response object,
    output rebuilt from the events)."""
    expect_status(r, 200, what)
    check(r.h("content-type", "").startswith("text/event-stream"), "%s: content-type %r" % (what, r.h("content-type")))
    eq(r.h("cache-control"), "no-cache", what + ": Cache-Control")
    ev = r.events
    check(ev, "%s: no events" % what)
    for i, e in enumerate(ev):
        check(e.data != "[DONE]", "%s: a [DONE] in a Responses stream" % what)
        check(isinstance(e.json, dict), "%s: event %d is not a JSON object: %r" % (what, i, e))
        eq(e.json.get("type"), e.name, "%s: event %d: data.type vs event name" % (what, i))
        eq(e.json.get("sequence_number"), i, "%s: event %d (%s): sequence_number" % (what, i, e.name))
        check(not e.partial, "%s: event %d is cut" % (what, i))
    eq(ev[0].name, "response.created", what + ": first event")
    eq(ev[-1].name, end, what + ": last event")
    for e in ev[:2]:
        resp = e.json.get("response") or {}
        eq((resp.get("status"), resp.get("output")), ("in_progress", []), "%s: %s response" % (what, e.name))
        eq(resp.get("id"), "resp_%s" % r.h("x-request-id"), "%s: %s response id" % (what, e.name))
    # rebuild the items from the events
    items, texts = {}, {}
    for e in ev:
        j = e.json
        t = e.name
        if t == "response.output_item.added":
            n = j["output_index"]
            check(n == len(items), "%s: output_item.added index %r, expected %d" % (what, n, len(items)))
            it = dict(j["item"])
            items[n] = it
            texts[n] = ""
            if it["type"] == "function_call":
                eq(it.get("arguments"), "", what + ": a function_call opens with empty arguments")
                eq(it.get("status"), "in_progress", what + ": function_call added status")
            if it["type"] == "custom_tool_call":
                eq(it.get("input"), "", what + ": a custom_tool_call opens with an empty input")
                eq(it.get("status"), "in_progress", what + ": custom_tool_call added status")
            if it["type"] == "message":
                eq((it.get("status"), it.get("content")), ("in_progress", []), what + ": message added")
        elif t in ("response.output_text.delta", "response.function_call_arguments.delta",
                   "response.reasoning_summary_text.delta", "response.custom_tool_call_input.delta"):
            n = j["output_index"]
            check(n in items, "%s: %s for an item never added: %r" % (what, t, j))
            eq(j.get("item_id"), items[n]["id"], "%s: %s item_id" % (what, t))
            texts[n] += j["delta"]
        elif t == "response.output_text.done":
            eq(j.get("text"), texts[j["output_index"]], what + ": output_text.done text = the joined deltas")
        elif t == "response.content_part.done":
            eq(j["part"].get("text"), texts[j["output_index"]], what + ": content_part.done text")
        elif t == "response.custom_tool_call_input.done":
            n = j["output_index"]
            eq(j.get("item_id"), items[n]["id"], "%s: %s item_id" % (what, t))
            eq(items[n]["type"], "custom_tool_call", "%s: %s for a %s item" % (what, t, items[n]["type"]))
            check(isinstance(j.get("input"), str) and (j["input"] == texts[n] or texts[n] == ""),
                  "%s: custom_tool_call_input.done %r vs joined deltas %r" % (what, j.get("input"), texts[n]))
            texts[n] = j["input"]
        elif t == "response.function_call_arguments.done":
            n = j["output_index"]
            check(j.get("arguments") == texts[n] or (texts[n] == "" and j.get("arguments") == "{}"),
                  "%s: function_call_arguments.done %r vs joined deltas %r" % (what, j.get("arguments"), texts[n]))
        elif t == "response.reasoning_summary_text.done":
            eq(j.get("text"), texts[j["output_index"]], what + ": reasoning_summary_text.done text")
        elif t == "response.output_item.done":
            n = j["output_index"]
            eq(j["item"].get("id"), items[n]["id"], what + ": output_item.done id")
            if j["item"].get("type") == "custom_tool_call":
                eq(j["item"].get("input"), texts[n], what + ": custom_tool_call item input = its input.done")
            items[n] = j["item"]
    final = ev[-1].json.get("response") if end != "response.failed" else ev[-1].json.get("response")
    check(isinstance(final, dict), "%s: %s carries no response" % (what, end))
    return ev, final, [items[n] for n in sorted(items)]


def names_of(ev):
    return compress([e.name for e in ev])


def usage_check(u, what, prompt, completion, cost, cached=0, reasoning=0):
    check(isinstance(u, dict), "%s: no usage" % what)
    eq((u.get("input_tokens"), u.get("output_tokens"), u.get("total_tokens")), (prompt, completion, prompt + completion),
       what + ": input/output/total tokens")
    eq((u.get("input_tokens_details") or {}).get("cached_tokens"), cached, what + ": cached_tokens")
    eq((u.get("output_tokens_details") or {}).get("reasoning_tokens"), reasoning, what + ": reasoning_tokens")
    near(u.get("cost"), cost, what + ": usage.cost")


# =======================================================================================
# the built-in mock provider

MOCK_PREFIX = "This is a mock reply from llmgw. You said: "


def test_mock_nonstream():
    mk = marker()
    r = rs_req("m-mock", mk=mk)
    expect_status(r, 200, "mock")
    j = check_object(r, r.json(), "mock", model="m-mock", provider="mk")
    eq(simple(j["output"]), [("message", MOCK_PREFIX + "Say hello. %s" % mk)], "mock output")
    u = j["usage"]
    check(u["input_tokens"] > 0 and u["output_tokens"] > 0, "mock usage: %r" % u)
    near(u["cost"], (u["input_tokens"] * 2 + u["output_tokens"] * 8) / 1e6, "mock usage.cost")


def test_mock_stream_exact_events():
    mk = marker()
    r = rs_req("m-mock", mk=mk, stream=True)
    ev, final, items = stream_result(r, "mock stream")
    eq(names_of(ev), HEAD_EVENTS + MSG_EVENTS + ["response.completed"], "mock stream: event order")
    check(sum(e.name == "response.output_text.delta" for e in ev) > 3, "mock stream: one delta per word")
    check_object(r, final, "mock stream completed", model="m-mock", provider="mk")
    want = [("message", MOCK_PREFIX + "Say hello. %s" % mk)]
    eq(simple(final["output"]), want, "mock stream: completed output")
    eq(simple(items), want, "mock stream: output rebuilt from the events")
    for e in ev:
        if e.name in ("response.output_text.delta", "response.content_part.added", "response.output_text.done"):
            eq((e.json.get("output_index"), e.json.get("content_index")), (0, 0), "mock stream: %s indexes" % e.name)
    u = final["usage"]
    near(u["cost"], (u["input_tokens"] * 2 + u["output_tokens"] * 8) / 1e6, "mock stream usage.cost")


def test_mock_input_items_and_instructions():
    """Items: system/developer go to the system prompt, the last user text is what the mock echoes."""
    mk = marker()
    inp = [{"role": "developer", "content": "Be brief."},
           {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "first"}]},
           {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
           {"role": "user", "content": [{"type": "input_text", "text": "second %s" % mk}]}]
    r = rs_req("m-mock", input=inp, instructions="You are a test.")
    expect_status(r, 200, "mock items")
    eq(simple(r.json()["output"]), [("message", MOCK_PREFIX + "second %s" % mk)], "mock items: output")


def test_mock_max_output_tokens_incomplete():
    for stream in (False, True):
        what = "mock max_output_tokens stream=%s" % stream
        r = rs_req("m-mock", stream=stream, max_output_tokens=3)
        if stream:
            ev, j, _ = stream_result(r, what, end="response.incomplete")
            eq(names_of(ev)[-1], "response.incomplete", what)
            check("response.completed" not in [e.name for e in ev], what + ": response.completed sent")
        else:
            expect_status(r, 200, what)
            j = r.json()
        check_object(r, j, what, status="incomplete")
        eq(j["incomplete_details"], {"reason": "max_output_tokens"}, what + ": incomplete_details")
        eq(len(simple(j["output"])[0][1]), 12, what + ": text cut at 3 tokens (12 bytes)")


def test_access_log_and_generation():
    g = shared()
    for stream in (False, True):
        what = "access log stream=%s" % stream
        r = rs_req("oa-text", stream=stream, user="alice")
        if stream:
            _, j, _ = stream_result(r, what)
        else:
            expect_status(r, 200, what)
            j = r.json()
        usage_check(j["usage"], what, 11, 7, 78e-6)
        rid = r.h("x-request-id")
        ln = g.access_line(rid)
        eq((ln.get("prompt_tokens"), ln.get("completion_tokens"), ln.get("cached_tokens")), (11, 7, 0),
           what + ": tokens")
        near(ln.get("cost"), 78e-6, what + ": cost")
        eq((ln.get("model"), ln.get("provider"), ln.get("upstream_model"), ln.get("status"), ln.get("stream"),
            ln.get("key"), ln.get("user")), ("oa-text", "oa", "text", 200, stream, "test", "alice"),
           what + ": model/provider/upstream_model/status/stream/key/user")
        check(isinstance(ln.get("attempts"), list) and len(ln["attempts"]) == 1, what + ": attempts")
        gr = http(g.port, "GET", "/v1/generation?id=" + rid)
        expect_status(gr, 200, what + ": /v1/generation")
        d = gr.json()["data"]
        near(d.get("cost"), 78e-6, what + ": /v1/generation cost")


def test_budget_and_key_spend():
    """The key's budget holds max_output_tokens against it (402 in the OpenAI shape), and what a
    Responses request costs is the key's spend (/v1/key), streamed or not."""
    g = Gateway(extra="[key.small]\nsecret = sk-small\nbudget = 0.01/day\n").start()
    r = http(g.port, "POST", "/v1/responses", {"model": "oa-text", "input": "hi", "max_output_tokens": 2000000},
             key="sk-small")
    e = expect_error(r, 402, "budget", contains=("budget",))
    costs = []
    for stream in (False, True):
        body = {"model": "oa-text", "input": "hi", "max_output_tokens": 50, "stream": stream}
        r = http(g.port, "POST", "/v1/responses", body, key="sk-small")
        if stream:
            _, j, _ = stream_result(r, "budget stream")
        else:
            expect_status(r, 200, "budget non-stream")
            j = r.json()
        costs.append(j["usage"]["cost"])
    near(sum(costs), 2 * 78e-6, "the two answers' costs")
    eq(e["type"], "insufficient_quota", "402: error type")
    deadline = time.monotonic() + 3 * TOL
    while True:     # the spend is settled when each request ends
        d = http(g.port, "GET", "/v1/key", key="sk-small").json()["data"]
        if abs((d.get("usage") or 0) - sum(costs)) <= 1e-12 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    near(d.get("usage"), sum(costs), "/v1/key usage = the Responses costs")


def test_affinity():
    """Prompt-cache affinity: the same instructions and first input item (the first two without
    instructions, or the same prompt_cache_key) stay on one target; other conversations spread
    (weighted)."""
    g = Gateway(extra="[model.m-aff]\ntarget = oa text#aff-a\ntarget = an text#aff-b\n"
                      "strategy = weighted\naffinity = 10m\n").start()

    def served(body, what):
        r = http(g.port, "POST", "/v1/responses", dict(body, model="m-aff"))
        expect_status(r, 200, what)
        return r.h("x-llmgw-provider")
    sys_a, hello = "You are A. " + marker(), "Hello there. " + marker()
    for body in ({"instructions": sys_a}, {}):
        first = None
        for i in range(6):
            inp = [{"role": "user", "content": hello}] + \
                  [{"role": "assistant" if k % 2 == 0 else "user", "content": "turn %d" % k} for k in range(i)] + \
                  [{"role": "user", "content": "now %s" % marker()}]
            if not body:        # without instructions: the first two items, a fixed pair
                inp = [{"role": "developer", "content": sys_a}] + inp
            p = served(dict(body, input=inp), "conversation request %d %r" % (i, body.keys()))
            first = first or p
            eq(p, first, "conversation request %d stays on its first target (%r)" % (i, list(body)))
    ck = "cache-" + marker()
    first = None
    for i in range(6):
        p = served({"instructions": marker(), "input": "x %d" % i, "prompt_cache_key": ck}, "prompt_cache_key %d" % i)
        first = first or p
        eq(p, first, "prompt_cache_key request %d stays on its first target" % i)
    seen = set(served({"instructions": marker(), "input": "hi"}, "fresh %d" % i) for i in range(16))
    check(len(seen) == 2, "new prefixes should spread over both targets, all went to %r" % seen)


# =======================================================================================
# translated targets: OpenAI chat and Anthropic

def test_text_translated():
    for prov in PROVS:
        for stream in (False, True):
            what = "%s text stream=%s" % (prov, stream)
            mk = marker()
            r = rs_req("%s-text" % prov, mk=mk, stream=stream, instructions="Be nice.", temperature=0.5, top_p=0.9,
                       max_output_tokens=100, user="u-1", store=False, metadata={"a": "b"})
            if stream:
                ev, j, items = stream_result(r, what)
                eq(names_of(ev), HEAD_EVENTS + MSG_EVENTS + ["response.completed"], what + ": event order")
                eq(simple(items), [("message", TEXT)], what + ": rebuilt output")
            else:
                expect_status(r, 200, what)
                j = r.json()
            check_object(r, j, what, model="%s-text" % prov, provider=prov)
            eq(simple(j["output"]), [("message", TEXT)], what + ": output")
            usage_check(j["usage"], what, 11, 7, 78e-6)
            rec, b = one_request(mk, what)
            eq(b.get("model"), "text", what + ": upstream model")
            eq(b.get("temperature"), 0.5, what + ": temperature")
            eq(b.get("top_p"), 0.9, what + ": top_p")
            eq(b.get("max_tokens"), 100, what + ": max_tokens from max_output_tokens")
            for k in ("input", "instructions", "store", "max_output_tokens", "text") + (("metadata",) if prov == "oa" else ()):
                check(k not in b, "%s: upstream body has the Responses field %r: %s" % (what, k, snip(b)))
            if prov == "oa":
                check(rec["path"].endswith("/chat/completions"), what + ": path %r" % rec["path"])
                eq(b["messages"], [{"role": "system", "content": "Be nice."},
                                   {"role": "user", "content": [{"type": "text", "text": "Say hello. %s" % mk}]}],
                   what + ": messages")
                eq(b.get("user"), "u-1", what + ": user")
                if stream:
                    eq((b.get("stream"), b.get("stream_options")), (True, {"include_usage": True}), what + ": stream")
            else:
                check(rec["path"].endswith("/v1/messages"), what + ": path %r" % rec["path"])
                sysp = b.get("system")
                st = sysp if isinstance(sysp, str) else "".join(x.get("text", "") for x in sysp or [])
                eq(st, "Be nice.", what + ": system")
                eq(len(b["messages"]), 1, what + ": one message")
                eq(b["messages"][0]["role"], "user", what + ": role")
                eq((b.get("metadata") or {}).get("user_id"), "u-1", what + ": metadata.user_id")


def test_stream_equals_nonstream():
    for prov in PROVS:
        for scen in ("text", "tools2", "think", "mixed"):
            what = "%s %s" % (prov, scen)
            tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}},
                     {"type": "function", "name": "get_time", "parameters": {"type": "object"}}]
            a = rs_req("%s-%s" % (prov, scen), tools=tools)
            expect_status(a, 200, what)
            ja = check_object(a, a.json(), what, provider=prov)
            b = rs_req("%s-%s" % (prov, scen), tools=tools, stream=True)
            _, jb, items = stream_result(b, what + " stream")
            check_object(b, jb, what + " stream", provider=prov)
            eq(simple(jb["output"]), simple(ja["output"]), what + ": streamed output = non-streamed output")
            eq(simple(items), simple(ja["output"]), what + ": output rebuilt from the events")
            eq(jb["usage"], ja["usage"], what + ": usage")


def test_tools2_order_and_indexes():
    for prov in PROVS:
        what = "%s tools2 stream" % prov
        r = rs_req("%s-tools2" % prov, stream=True,
                   tools=[{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}])
        ev, j, _ = stream_result(r, what)
        eq(names_of(ev), HEAD_EVENTS + MSG_EVENTS + FC_EVENTS + FC_EVENTS + ["response.completed"],
           what + ": event order")
        out = simple(j["output"])
        eq(out, [("message", "Checking both."),
                 ("function_call", CALL_ID[prov] + "w1", "get_weather", {"city": "Paris"}),
                 ("function_call", CALL_ID[prov] + "t2", "get_time", {"tz": "Europe/Paris"})], what + ": output")
        eq([it["id"] for it in j["output"]],
           ["%s_%s_%d" % (p, r.h("x-request-id"), n) for n, p in enumerate(("msg", "fc", "fc"))], what + ": ids")


def test_many_output_items():
    """Six output items (a message and five calls): indexes and ids in order, stream = non-stream."""
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    for prov in PROVS:
        what = "%s tools6" % prov
        a = rs_req("%s-tools6" % prov, tools=tools)
        expect_status(a, 200, what)
        want = [("message", "Six calls.")] + [("function_call", CALL_ID[prov] + "k%d" % i, "get_weather",
                                               {"city": "C%d" % i}) for i in range(5)]
        eq(simple(a.json()["output"]), want, what + ": output")
        r = rs_req("%s-tools6" % prov, tools=tools, stream=True)
        ev, j, items = stream_result(r, what + " stream")
        eq(names_of(ev), HEAD_EVENTS + MSG_EVENTS + FC_EVENTS * 5 + ["response.completed"], what + ": event order")
        eq(simple(j["output"]), want, what + " stream: output")
        eq(simple(items), want, what + " stream: rebuilt output")
        eq([it["id"] for it in j["output"]],
           ["%s_%s_%d" % ("msg" if n == 0 else "fc", r.h("x-request-id"), n) for n in range(6)], what + ": ids")


def test_gemini_bedrock_targets():
    """The dialect on the other wires: text, a tool call and its round trip."""
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object",
                                                                        "properties": {"city": {"type": "string"}}}}]
    for prov in MORE_PROVS:
        for stream in (False, True):
            what = "%s stream=%s" % (prov, stream)
            r = rs_req("%s-text" % prov, stream=stream)
            if stream:
                ev, j, _ = stream_result(r, what)
                eq(names_of(ev), HEAD_EVENTS + MSG_EVENTS + ["response.completed"], what + ": event order")
            else:
                expect_status(r, 200, what)
                j = r.json()
            check_object(r, j, what, model="%s-text" % prov, provider=prov)
            eq(simple(j["output"]), [("message", TEXT)], what + ": output")
            usage_check(j["usage"], what, 11, 7, 78e-6)
            r = rs_req("%s-tool" % prov, stream=stream, tools=tools)
            if stream:
                _, j, _ = stream_result(r, what + " tool")
            else:
                expect_status(r, 200, what + " tool")
                j = r.json()
            out = simple(j["output"])
            eq([(o[0], o[2], o[3]) for o in out], [("function_call", "get_weather", {"city": "Paris"})],
               what + ": tool output")
            check(isinstance(out[0][1], str) and out[0][1], what + ": a call_id")
            fc = j["output"][0]
            mk = marker()
            inp = [{"role": "user", "content": "Weather? %s" % mk},
                   {"type": "function_call", "call_id": fc["call_id"], "name": "get_weather",
                    "arguments": fc["arguments"]},
                   {"type": "function_call_output", "call_id": fc["call_id"], "output": "sunny"}]
            r2 = rs_req("%s-text" % prov, input=inp, tools=tools)
            expect_status(r2, 200, what + " round trip")
            _, b = one_request(mk, what + " round trip")
            if prov == "ge":
                parts = [p for c in b["contents"] for p in c.get("parts", [])]
                eq([p["functionCall"]["name"] for p in parts if "functionCall" in p], ["get_weather"],
                   what + ": functionCall")
                fr = [p["functionResponse"] for p in parts if "functionResponse" in p]
                eq([f["name"] for f in fr], ["get_weather"], what + ": functionResponse name from the call")
            else:
                blocks = [c for m in b["messages"] for c in m.get("content", [])]
                eq([c["toolUse"]["toolUseId"] for c in blocks if "toolUse" in c], [fc["call_id"]], what + ": toolUse")
                eq([c["toolResult"]["toolUseId"] for c in blocks if "toolResult" in c], [fc["call_id"]],
                   what + ": toolResult")


def test_reasoning_items():
    for prov in PROVS:
        for stream in (False, True):
            what = "%s think stream=%s" % (prov, stream)
            r = rs_req("%s-think" % prov, stream=stream, include=["reasoning.encrypted_content"],
                       reasoning={"effort": "low", "summary": "auto"})
            if stream:
                ev, j, _ = stream_result(r, what)
                eq(names_of(ev), HEAD_EVENTS + RS_EVENTS + MSG_EVENTS + ["response.completed"], what + ": order")
            else:
                expect_status(r, 200, what)
                j = r.json()
            sig = PM.ANTH_SIG if prov == "an" else None
            eq(simple(j["output"]), [("reasoning", "Let me think it over.", sig), ("message", "The answer is 4.")],
               what + ": output")
            eq(j["usage"]["output_tokens_details"]["reasoning_tokens"], 5 if prov == "oa" else 0,
               what + ": reasoning_tokens")
    # without include: no encrypted_content
    r = rs_req("an-think")
    expect_status(r, 200, "an think without include")
    check("encrypted_content" not in r.json()["output"][0], "encrypted_content without include")


def test_reasoning_roundtrip_anthropic():
    """A reasoning item with encrypted_content goes back to Anthropic as a signed thinking block
    on the assistant turn that follows it."""
    mk = marker()
    inp = [{"role": "user", "content": "Think. %s" % mk},
           {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Let me think"},
                                                           {"type": "summary_text", "text": "it over."}],
            "encrypted_content": PM.ANTH_SIG},
           {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "4"}]},
           {"role": "user", "content": "Sure?"}]
    r = rs_req("an-text", input=inp)
    expect_status(r, 200, "reasoning round trip")
    _, b = one_request(mk, "reasoning round trip")
    eq(b["messages"][1], {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "Let me think\n\nit over.", "signature": PM.ANTH_SIG},
        {"type": "text", "text": "4"}]}, "reasoning round trip: the assistant turn")
    # a reasoning item without a following assistant item is dropped
    mk = marker()
    inp = [{"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "x"}]},
           {"role": "user", "content": "Hi %s" % mk}]
    r = rs_req("oa-text", input=inp)
    expect_status(r, 200, "reasoning before a user item")
    _, b = one_request(mk, "reasoning before a user item")
    eq([m["role"] for m in b["messages"]], ["user"], "reasoning before a user item: dropped")


def test_tool_roundtrip():
    tools = [{"type": "function", "name": "get_weather", "description": "Weather by city", "strict": True,
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    for prov in PROVS:
        for stream in (False, True):
            what = "%s tool stream=%s" % (prov, stream)
            mk = marker()
            r = rs_req("%s-tool" % prov, mk=mk, stream=stream, tools=tools, tool_choice="auto")
            if stream:
                ev, j, items = stream_result(r, what)
                eq(names_of(ev), HEAD_EVENTS + FC_EVENTS + ["response.completed"], what + ": event order")
                added = [e.json for e in ev if e.name == "response.output_item.added"][0]
                eq(added["item"]["call_id"], CALL_ID[prov] + "w1", what + ": added call_id")
                eq(added["item"]["name"], "get_weather", what + ": added name")
            else:
                expect_status(r, 200, what)
                j = r.json()
            check_object(r, j, what, provider=prov)
            out = simple(j["output"])
            eq(out, [("function_call", CALL_ID[prov] + "w1", "get_weather", {"city": "Paris"})], what + ": output")
            _, b = one_request(mk, what)
            if prov == "oa":
                eq(b.get("tools"), [{"type": "function", "function": {
                    "name": "get_weather", "description": "Weather by city", "parameters": tools[0]["parameters"]}}],
                   what + ": upstream tools")
                eq(b.get("tool_choice"), "auto", what + ": tool_choice")
            else:
                eq([(t["name"], t.get("input_schema")) for t in b.get("tools")],
                   [("get_weather", tools[0]["parameters"])], what + ": upstream tools")
            # the round trip: the call and its output back in
            fc = j["output"][0]
            mk2 = marker()
            inp = [{"role": "user", "content": "Weather in Paris? %s" % mk2},
                   {"type": "function_call", "id": fc["id"], "call_id": fc["call_id"], "name": fc["name"],
                    "arguments": fc["arguments"]},
                   {"type": "function_call_output", "call_id": fc["call_id"], "output": "sunny, 21C"}]
            r2 = rs_req("%s-text" % prov, input=inp, tools=tools)
            expect_status(r2, 200, what + " round trip")
            eq(simple(r2.json()["output"]), [("message", TEXT)], what + " round trip: output")
            _, b = one_request(mk2, what + " round trip")
            cid = fc["call_id"]
            if prov == "oa":
                m = b["messages"]
                eq([x["role"] for x in m], ["user", "assistant", "tool"], what + " round trip: roles")
                eq(m[1].get("content"), None, what + " round trip: assistant content")
                tc = m[1]["tool_calls"]
                eq([(t["id"], t["type"], t["function"]["name"], json.loads(t["function"]["arguments"])) for t in tc],
                   [(cid, "function", "get_weather", {"city": "Paris"})], what + " round trip: tool_calls")
                eq((m[2]["tool_call_id"], m[2]["content"]), (cid, "sunny, 21C"), what + " round trip: tool message")
            else:
                m = b["messages"]
                eq([x["role"] for x in m], ["user", "assistant", "user"], what + " round trip: roles")
                eq(m[1]["content"], [{"type": "tool_use", "id": cid, "name": "get_weather",
                                      "input": {"city": "Paris"}}], what + " round trip: tool_use")
                tr = m[2]["content"][0]
                eq((tr["type"], tr["tool_use_id"]), ("tool_result", cid), what + " round trip: tool_result")
                c = tr["content"]
                ct = c if isinstance(c, str) else "".join(x.get("text", "") for x in c)
                eq(ct, "sunny, 21C", what + " round trip: tool_result content")


def test_parallel_tool_results_merge():
    """Two calls and their two outputs: one assistant turn, one user turn of results (Anthropic)."""
    mk = marker()
    inp = [{"role": "user", "content": "Both %s" % mk},
           {"type": "function_call", "call_id": "c1", "name": "a", "arguments": "{\"x\":1}"},
           {"type": "function_call", "call_id": "c2", "name": "b", "arguments": "not json"},
           {"type": "function_call_output", "call_id": "c1", "output": "one"},
           {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]}]
    tools = [{"type": "function", "name": "a"}, {"type": "function", "name": "b"}]
    r = rs_req("an-text", input=inp, tools=tools)
    expect_status(r, 200, "parallel results")
    _, b = one_request(mk, "parallel results")
    m = b["messages"]
    eq([x["role"] for x in m], ["user", "assistant", "user"], "parallel results: roles")
    eq([(c["id"], c["input"]) for c in m[1]["content"]], [("c1", {"x": 1}), ("c2", {})],
       "parallel results: tool_use blocks (bad arguments become {})")
    eq([c["tool_use_id"] for c in m[2]["content"]], ["c1", "c2"], "parallel results: tool_result blocks")


def test_tool_choice_and_parallel():
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    cases = [("required", {"oa": "required", "an": {"type": "any"}}),
             ({"type": "function", "name": "get_weather"},
              {"oa": {"type": "function", "function": {"name": "get_weather"}},
               "an": {"type": "tool", "name": "get_weather"}})]
    for tc, want in cases:
        for prov in PROVS:
            mk = marker()
            r = rs_req("%s-text" % prov, mk=mk, tools=tools, tool_choice=tc, parallel_tool_calls=False)
            expect_status(r, 200, "tool_choice %r %s" % (tc, prov))
            _, b = one_request(mk, "tool_choice")
            got = b.get("tool_choice")
            if prov == "an":
                check(isinstance(got, dict) and got.get("disable_parallel_tool_use") is True,
                      "anthropic: parallel_tool_calls false -> disable_parallel_tool_use: %r" % got)
                got = {k: v for k, v in got.items() if k != "disable_parallel_tool_use"}
            else:
                eq(b.get("parallel_tool_calls"), False, "openai: parallel_tool_calls")
            eq(got, want[prov], "tool_choice %r -> %s" % (tc, prov))


def test_json_schema_reaches_upstream():
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"],
              "additionalProperties": False}
    fmt = {"format": {"type": "json_schema", "name": "answer_schema", "schema": schema, "strict": True}}
    for prov in PROVS:
        for stream in (False, True):
            what = "%s json_schema stream=%s" % (prov, stream)
            mk = marker()
            r = rs_req("%s-json" % prov, mk=mk, stream=stream, text=fmt)
            if stream:
                _, j, _ = stream_result(r, what)
            else:
                expect_status(r, 200, what)
                j = r.json()
            eq(simple(j["output"]), [("message", '{"answer": 42}')], what + ": output")
            _, b = one_request(mk, what)
            if prov == "oa":
                eq(b.get("response_format"), {"type": "json_schema", "json_schema": {
                    "name": "answer_schema", "schema": schema, "strict": True}}, what + ": response_format")
            else:
                tools = b.get("tools") or []
                eq([(t["name"], t["input_schema"]) for t in tools], [("json_response", schema)],
                   what + ": the forced json_response tool")
                eq(b.get("tool_choice"), {"type": "tool", "name": "json_response"}, what + ": tool_choice")
    mk = marker()
    r = rs_req("oa-json", mk=mk, text={"format": {"type": "json_object"}})
    expect_status(r, 200, "json_object")
    _, b = one_request(mk, "json_object")
    eq(b.get("response_format"), {"type": "json_object"}, "json_object: response_format")
    mk = marker()
    r = rs_req("oa-text", mk=mk, text={"format": {"type": "text"}})
    expect_status(r, 200, "text format")
    _, b = one_request(mk, "text format")
    check("response_format" not in b, "text format: no response_format upstream")


def test_reasoning_effort():
    for effort, budget in (("low", 1024), ("medium", 4096), ("high", 16384)):
        mk = marker()
        r = rs_req("oa-text", mk=mk, reasoning={"effort": effort})
        expect_status(r, 200, "effort %s oa" % effort)
        _, b = one_request(mk, "effort")
        eq(b.get("reasoning_effort"), effort, "openai: reasoning_effort")
        mk = marker()
        r = rs_req("an-text", mk=mk, reasoning={"effort": effort}, max_output_tokens=30000)
        expect_status(r, 200, "effort %s an" % effort)
        _, b = one_request(mk, "effort")
        eq(b.get("thinking"), {"type": "enabled", "budget_tokens": budget}, "anthropic: thinking budget")
    mk = marker()
    r = rs_req("oa-text", mk=mk)
    expect_status(r, 200, "no effort")
    _, b = one_request(mk, "no effort")
    check("reasoning_effort" not in b, "no reasoning: no reasoning_effort upstream")


def test_images():
    data = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
    mk = marker()
    inp = [{"role": "user", "content": [{"type": "input_text", "text": "What? %s" % mk},
                                        {"type": "input_image", "image_url": "data:image/png;base64," + data},
                                        {"type": "input_image", "image_url": "https://example.com/cat.jpg",
                                         "detail": "auto"}]}]
    r = rs_req("an-text", input=inp)
    expect_status(r, 200, "images")
    _, b = one_request(mk, "images")
    c = b["messages"][0]["content"]
    eq([x["type"] for x in c], ["text", "image", "image"], "images: blocks")
    eq(c[1]["source"], {"type": "base64", "media_type": "image/png", "data": data}, "images: data URL")
    eq(c[2]["source"], {"type": "url", "url": "https://example.com/cat.jpg"}, "images: http URL")
    r = rs_req("an-text", input=[{"role": "user", "content": [{"type": "input_file", "file_id": "f1"}]}])
    expect_error(r, 400, "input_file", contains=("input_file",))


def test_hosted_tools_dropped():
    for prov in PROVS:
        for stream in (False, True):
            what = "%s hosted tools stream=%s" % (prov, stream)
            mk = marker()
            tools = [{"type": "web_search"}, {"type": "function", "name": "get_weather",
                                               "parameters": {"type": "object"}},
                     {"type": "file_search", "vector_store_ids": ["vs_1"]}, {"type": "web_search"},
                     {"type": "bad type\r\nx-evil: 1"}]
            r = rs_req("%s-text" % prov, mk=mk, stream=stream, tools=tools)
            expect_status(r, 200, what)
            eq(r.h("llmgw-dropped-tools"), "web_search,file_search,bad_type_r_nx-evil__1", what + ": header")
            check("x-evil" not in r.headers, what + ": header injection")
            _, b = one_request(mk, what)
            names = [t.get("name") or (t.get("function") or {}).get("name") for t in b.get("tools") or []]
            eq(names, ["get_weather"], what + ": only the function tool upstream")
    r = rs_req("oa-text", tools=[{"type": "function", "name": "f"}])
    expect_status(r, 200, "no hosted tools")
    eq(r.h("llmgw-dropped-tools"), None, "no hosted tools: no header")


def test_length_incomplete_translated():
    for prov in PROVS:
        for stream in (False, True):
            what = "%s length stream=%s" % (prov, stream)
            r = rs_req("%s-length" % prov, stream=stream, max_output_tokens=2)
            if stream:
                ev, j, _ = stream_result(r, what, end="response.incomplete")
                eq(names_of(ev), HEAD_EVENTS + MSG_EVENTS + ["response.incomplete"], what + ": order")
            else:
                expect_status(r, 200, what)
                j = r.json()
            check_object(r, j, what, status="incomplete")
            eq(j["incomplete_details"], {"reason": "max_output_tokens"}, what + ": incomplete_details")
            eq(simple(j["output"]), [("message", "Truncated tex")], what + ": output")
    r = rs_req("oa-filter")
    expect_status(r, 200, "filter")
    eq((r.json()["status"], r.json()["incomplete_details"]), ("incomplete", {"reason": "content_filter"}),
       "content_filter: incomplete")


def test_midstream_failure():
    g = shared()
    for prov in PROVS:
        what = "%s midfail" % prov
        r = rs_req("%s-midfail" % prov, stream=True)
        ev, j, _ = stream_result(r, what, end="response.failed")
        names = [e.name for e in ev]
        check("response.completed" not in names and "response.incomplete" not in names,
              "%s: a clean end after the failure: %r" % (what, names))
        eq(names[-2], "error", what + ": an error event before response.failed")
        err = ev[-2].json
        check(isinstance(err.get("message"), str) and err["message"] and isinstance(err.get("code"), str),
              "%s: error event: %r" % (what, err))
        eq(j.get("status"), "failed", what + ": response.status")
        check(isinstance(j.get("error"), dict) and j["error"].get("code") and j["error"].get("message"),
              "%s: response.error: %r" % (what, j.get("error")))
        text = "".join(e.json["delta"] for e in ev if e.name == "response.output_text.delta")
        check(TEXT.startswith(text) and text, "%s: the text before the failure reached the client: %r" % (what, text))
        ln = g.access_line(r.h("x-request-id"))
        eq(ln.get("status"), 502, what + ": access log status")


def test_previous_response_id_refused():
    mk = marker()
    r = rs_req("oa-text", mk=mk, previous_response_id="resp_123")
    e = expect_error(r, 400, "previous_response_id", contains=("previous_response_id",))
    eq(e["type"], "invalid_request_error", "previous_response_id: type")
    eq(mock().find(mk), [], "previous_response_id: nothing sent upstream")
    r = rs_req("oa-text", previous_response_id=None)
    expect_status(r, 200, "previous_response_id null")
    r = rs_req("m-mock", previous_response_id="resp_1", stream=True)
    expect_error(r, 400, "previous_response_id stream", contains=("previous_response_id",))


def test_gateway_errors_openai_shape():
    port = shared().port
    cases = [("no key", http(port, "POST", "/v1/responses", {"model": "m-mock", "input": "x"}, key=None), 401),
             ("bad key", rs_req("m-mock", key="sk-wrong"), 401),
             ("unknown model", rs_req("no-such-model"), 404),
             ("malformed JSON", http(port, "POST", "/v1/responses", b'{"model": "m-mock", "input": ['), 400),
             ("no input", http(port, "POST", "/v1/responses", {"model": "m-mock"}), 400),
             ("input a number", rs_req("m-mock", input=5), 400),
             ("bad role", rs_req("m-mock", input=[{"role": "tool", "content": "x"}]), 400),
             ("item_reference", rs_req("m-mock", input=[{"type": "item_reference", "id": "msg_1"}]), 400),
             ("GET", http(port, "GET", "/v1/responses"), 405)]
    for what, r, st in cases:
        expect_error(r, st, "/v1/responses " + what)
    r = http(port, "POST", "/v1/responses", {"model": "m-mock", "input": "hi"}, key=None,
             headers={"x-api-key": "sk-test"})
    expect_status(r, 200, "x-api-key")
    mk = marker()
    r = rs_req("oa/err-400", mk=mk)
    expect_error(r, 400, "upstream 400", contains=("provmock openai 400",))


# =======================================================================================
# native Responses targets: providers with responses = yes (PROVIDERS.md section 9)

RS_ID = re.compile(r"\b(resp_pm_|msg_pm|fc_pm|rs_pm|ctc_pm|cmp_pm)\d+")


def rs_norm(x):
    """x with the mock's response and item ids made comparable (resp_pm_N, msg_pmN_i...)."""
    if isinstance(x, dict):
        return {k: rs_norm(v) for k, v in x.items()}
    if isinstance(x, list):
        return [rs_norm(v) for v in x]
    if isinstance(x, str):
        return RS_ID.sub(lambda m: m.group(1) + "#", x)
    return x


def rs_direct(model, stream=False, **extra):
    """What the mock itself answers to a Responses request for `model` (upstream name)."""
    b = {"model": model, "input": "direct %s" % marker()}
    if stream:
        b["stream"] = True
    b.update(extra)
    r = http(mock().port, "POST", "/v1/responses", b, key=None)
    expect_status(r, 200, "provmock direct %s" % model)
    return r


def ungw(obj, what, public, upstream, cost=None):
    """A response object as llmgw passed it on, turned back into the upstream's: model the public
    name (-> upstream), usage.cost present (checked against cost when given, then removed);
    provider removed when present. Returns a copy."""
    o = json.loads(json.dumps(obj))
    eq(o.get("model"), public, what + ": model (the public name)")
    o["model"] = upstream
    u = o.get("usage")
    if isinstance(u, dict):
        check("cost" in u, "%s: usage without cost: %s" % (what, snip(u)))
        if cost is not None:
            near(u["cost"], cost, what + ": usage.cost")
        del u["cost"]
    return o


def native_events(r, what, public, end="response.completed"):
    """A native stream as the client got it: event names = data.type, no [DONE], no provider
    member per event, the public model name in every response object; the events (JSON)."""
    expect_status(r, 200, what)
    check(r.h("content-type", "").startswith("text/event-stream"), "%s: content-type %r" % (what, r.h("content-type")))
    ev = r.events
    check(ev, "%s: no events" % what)
    for i, e in enumerate(ev):
        check(e.data != "[DONE]", "%s: a [DONE] in a Responses stream" % what)
        check(isinstance(e.json, dict), "%s: event %d is not a JSON object: %r" % (what, i, e))
        eq(e.json.get("type"), e.name, "%s: event %d: data.type vs event name" % (what, i))
        check("provider" not in e.json, "%s: event %d (%s) has a provider member" % (what, i, e.name))
        check(not e.partial, "%s: event %d is cut" % (what, i))
        if isinstance(e.json.get("response"), dict):
            eq(e.json["response"].get("model"), public, "%s: event %d (%s): response.model" % (what, i, e.name))
    eq(ev[-1].name, end, what + ": last event")
    return ev


def same_events(got, want, what, public, upstream, cost=None):
    """The client's events = the upstream's (ids normalised), but for model and usage.cost."""
    eq([e.name for e in got], [e.name for e in want], what + ": event names = the upstream's")
    for i, (g, w) in enumerate(zip(got, want)):
        gj = dict(g.json)
        if isinstance(gj.get("response"), dict):
            gj["response"] = ungw(gj["response"], "%s: event %d (%s)" % (what, i, g.name), public, upstream,
                                  cost if g.name in ("response.completed", "response.incomplete") else None)
        eq(rs_norm(gj), rs_norm(w.json), "%s: event %d (%s) = the upstream's" % (what, i, g.name))


def test_native_text():
    """rs-text: the non-stream answer is the upstream's object with provider first, the public
    model name and usage.cost; the stream is the upstream's events, sequence numbers and all."""
    for stream in (False, True):
        what = "native text stream=%s" % stream
        mk = marker()
        r = rs_req("rs-text", mk=mk, stream=stream)
        want = rs_direct("text", stream=stream)
        eq(r.h("x-llmgw-provider"), "rs", what + ": x-llmgw-provider")
        if stream:
            ev = native_events(r, what, "rs-text")
            same_events(ev, want.events, what, "rs-text", "text", 78e-6)
            eq([e.json.get("sequence_number") for e in ev], list(range(len(ev))), what + ": sequence numbers")
            text = "".join(e.json["delta"] for e in ev if e.name == "response.output_text.delta")
            eq(text, TEXT, what + ": the joined deltas")
            final = ev[-1].json["response"]
            usage_check(final["usage"], what, 11, 7, 78e-6)
            eq(final["id"], ev[0].json["response"]["id"], what + ": the upstream's response id throughout")
        else:
            expect_status(r, 200, what)
            check(r.body.startswith(b'{"provider":"rs",'), "%s: the body should start with the provider member: %s"
                  % (what, snip(r.body, 80)))
            j = r.json()
            eq(j.get("provider"), "rs", what + ": provider")
            usage_check(j["usage"], what, 11, 7, 78e-6)
            del j["provider"]
            eq(rs_norm(ungw(j, what, "rs-text", "text", 78e-6)), rs_norm(want.json()), what + ": the upstream's object")
            eq(simple(r.json()["output"]), [("message", TEXT)], what + ": output")
        rec, b = one_request(mk, what)
        eq((rec["kind"], rec["path"]), ("responses", "/v1/responses"), what + ": upstream path")
        eq(rec["headers"].get("authorization"), "Bearer sk-rs-secret", what + ": the provider's key")
        eq(b.get("model"), "text", what + ": upstream model")
        eq(b.get("stream"), True if stream else None, what + ": stream flag as sent")
        check("stream_options" not in b, "%s: stream_options added: %s" % (what, snip(b)))


def test_native_forwarded_body():
    """The client's body reaches the upstream as it was sent: model the upstream name, models /
    provider / usage left out, nothing added (no stream_options, hosted and custom tools kept)."""
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"],
              "additionalProperties": False}
    for stream in (False, True):
        what = "native forwarded body stream=%s" % stream
        mk = marker()
        body = {"model": "rs-text",
                "input": [{"role": "developer", "content": "Be brief."},
                          {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi %s" % mk}]},
                          {"type": "message", "role": "assistant",
                           "content": [{"type": "output_text", "text": "Hello \u00e9", "annotations": []}]},
                          {"role": "user", "content": "again \u2713"}],
                "instructions": "You are a test.", "store": False,
                "include": ["reasoning.encrypted_content", "web_search_call.action.sources"],
                "tools": [{"type": "custom", "name": "apply_patch", "description": "Apply a patch",
                           "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}},
                          {"type": "web_search", "search_context_size": "low"},
                          {"type": "function", "name": "get_weather", "description": "Weather",
                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                           "strict": True}],
                "tool_choice": "auto", "parallel_tool_calls": False,
                "reasoning": {"effort": "high", "summary": "auto"}, "prompt_cache_key": "pck-" + mk,
                "text": {"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True},
                         "verbosity": "low"},
                "max_output_tokens": 500, "temperature": 0.3, "top_p": 0.8, "user": "u-9",
                "metadata": {"a": "b"}, "truncation": "auto", "service_tier": "flex",
                "models": ["rs-json"], "provider": {"sort": "price"}, "usage": {"include": True}}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_obfuscation": False}
        r = http(shared().port, "POST", "/v1/responses", body)
        if stream:
            native_events(r, what, "rs-text")
        else:
            expect_status(r, 200, what)
        eq(r.h("x-llmgw-provider"), "rs", what + ": provider")
        eq(r.h("llmgw-dropped-tools"), None, what + ": llmgw-dropped-tools (nothing was dropped)")
        rec, got = one_request(mk, what)
        want = {k: v for k, v in body.items() if k not in ("models", "provider", "usage")}
        want["model"] = "text"
        eq(got, want, what + ": the upstream body")
        eq(list(got), list(want), what + ": the upstream body's member order")
        for k in ("tools", "input", "text", "include"):
            check(json.dumps(body[k]) in rec["body"], "%s: %s not forwarded byte for byte" % (what, k))


def test_native_input_file_forwarded():
    """Content a native upstream serves though llmgw cannot translate it (an input_file part
    with inline data) goes to it as it is."""
    mk = marker()
    part = {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0xLjQK"}
    inp = [{"role": "user", "content": [{"type": "input_text", "text": "Read %s" % mk}, part]}]
    r = rs_req("rs-text", input=inp)
    expect_status(r, 200, "native input_file")
    _, b = one_request(mk, "native input_file")
    eq(b.get("input"), inp, "native input_file: input forwarded")


def test_native_tool_roundtrip():
    tools = [{"type": "function", "name": "get_weather", "description": "Weather by city", "strict": True,
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    for stream in (False, True):
        what = "native tool stream=%s" % stream
        r = rs_req("rs-tool", stream=stream, tools=tools, tool_choice="auto")
        if stream:
            ev = native_events(r, what, "rs-tool")
            same_events(ev, rs_direct("tool", stream=True).events, what, "rs-tool", "tool", 20 * 2e-6 + 9 * 8e-6)
            eq(compress([e.name for e in ev]), HEAD_EVENTS + FC_EVENTS + ["response.completed"], what + ": events")
            fc = [e.json["item"] for e in ev if e.name == "response.output_item.done"][0]
            j = ev[-1].json["response"]
        else:
            expect_status(r, 200, what)
            j = r.json()
            fc = j["output"][0]
        eq(simple(j["output"]), [("function_call", "call_w1", "get_weather", {"city": "Paris"})], what + ": output")
        eq((fc["type"], fc["call_id"], fc["name"], json.loads(fc["arguments"])),
           ("function_call", "call_w1", "get_weather", {"city": "Paris"}), what + ": the function_call item")
        mk = marker()
        inp = [{"role": "user", "content": "Weather in Paris? %s" % mk}, fc,
               {"type": "function_call_output", "call_id": fc["call_id"], "output": "sunny, 21C"}]
        r2 = rs_req("rs-text", input=inp, tools=tools, stream=stream)
        if stream:
            native_events(r2, what + " round trip", "rs-text")
        else:
            expect_status(r2, 200, what + " round trip")
            eq(simple(r2.json()["output"]), [("message", TEXT)], what + " round trip: output")
        _, b = one_request(mk, what + " round trip")
        eq(b.get("input"), inp, what + " round trip: the items forwarded as they were")
        eq(b.get("tools"), tools, what + " round trip: tools")


def test_native_usage_accounted():
    """Cache-read and reasoning tokens from response.usage: the answer's usage.cost, the access
    log, /v1/generation, the key's spend (/v1/key) and the ledger across a restart."""
    g = Gateway()
    state = os.path.join(g.dir, "state")

    def write():
        g.write(config_text(g.port, mock().port, g.access_log, "[key.rsu]\nsecret = sk-rsu\nbudget = 5/day\n")
                .replace("log_level = warn\n", "log_level = warn\nstate_dir = %s\n" % state, 1))
    write()
    g.start()
    want = (300 * 2 + 1000 * 0.5 + 80 * 8) / 1e6     # uncached input, cached at cache_read, output
    costs = []
    for stream in (False, True):
        what = "native usage stream=%s" % stream
        r = http(g.port, "POST", "/v1/responses", {"model": "rs-usage", "input": "hi", "stream": stream}, key="sk-rsu")
        if stream:
            ev = native_events(r, what, "rs-usage")
            j = ev[-1].json["response"]
        else:
            expect_status(r, 200, what)
            j = r.json()
        usage_check(j["usage"], what, 1300, 80, want, cached=1000, reasoning=30)
        costs.append(j["usage"]["cost"])
        rid = r.h("x-request-id")
        ln = g.access_line(rid)
        eq((ln.get("prompt_tokens"), ln.get("completion_tokens"), ln.get("cached_tokens")), (1300, 80, 1000),
           what + ": access log tokens")
        near(ln.get("cost"), want, what + ": access log cost")
        eq((ln.get("model"), ln.get("provider"), ln.get("upstream_model"), ln.get("status"), ln.get("stream"),
            ln.get("key")), ("rs-usage", "rs", "usage", 200, stream, "rsu"), what + ": access log")
        gr = http(g.port, "GET", "/v1/generation?id=" + rid, key="sk-rsu")
        expect_status(gr, 200, what + ": /v1/generation")
        d = gr.json()["data"]
        eq((d.get("prompt_tokens"), d.get("completion_tokens"), d.get("cached_tokens"), d.get("provider"),
            d.get("status")), (1300, 80, 1000, "rs", 200), what + ": /v1/generation tokens")
        near(d.get("cost"), want, what + ": /v1/generation cost")
    deadline = time.monotonic() + 3 * TOL
    while True:
        d = http(g.port, "GET", "/v1/key", key="sk-rsu").json()["data"]
        if abs((d.get("usage") or 0) - sum(costs)) <= 1e-12 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    near(d.get("usage"), 2 * want, "/v1/key usage = the two answers' costs")
    ledger = read_file(os.path.join(state, "ledger"))
    check(ledger.count("c1 ") >= 2 and " rsu " in ledger, "ledger: no charge records for key rsu: %r" % ledger[-400:])
    g.stop()
    g.port = H.free_port()    # not the old one: it may be in TIME_WAIT
    write()
    g.start()
    d = http(g.port, "GET", "/v1/key", key="sk-rsu").json()["data"]
    near(d.get("usage"), 2 * want, "/v1/key usage after a restart (the ledger)")


def test_native_length_incomplete():
    for stream in (False, True):
        what = "native length stream=%s" % stream
        r = rs_req("rs-length", stream=stream, max_output_tokens=2)
        if stream:
            ev = native_events(r, what, "rs-length", end="response.incomplete")
            same_events(ev, rs_direct("length", stream=True).events, what, "rs-length", "length", 11 * 2e-6 + 2 * 8e-6)
            j = ev[-1].json["response"]
        else:
            expect_status(r, 200, what)
            j = r.json()
        eq((j["status"], j["incomplete_details"]), ("incomplete", {"reason": "max_output_tokens"}), what + ": incomplete")
        eq(simple(j["output"]), [("message", "Truncated tex")], what + ": output")
        eq(shared().access_line(r.h("x-request-id")).get("status"), 200, what + ": access log status")
    r = rs_req("rs-filter")
    expect_status(r, 200, "native content_filter")
    eq((r.json()["status"], r.json()["incomplete_details"]), ("incomplete", {"reason": "content_filter"}),
       "native content_filter: incomplete")


def test_native_upstream_4xx_passed_on():
    """A 400 from the native upstream is the client's answer (the upstream's error body, no
    fallback, no retry)."""
    for stream in (False, True):
        what = "native 400 stream=%s" % stream
        mk = marker()
        r = rs_req("rsfb-err400", mk=mk, stream=stream)
        e = expect_error(r, 400, what, contains=("provmock openai 400",))
        eq((e.get("type"), e.get("code")), ("invalid_request_error", "context_length_exceeded"), what + ": error")
        seen = mock().find(mk)
        eq([x["path"] for x in seen], ["/v1/responses"], what + ": requests upstream (no retry, no fallback)")
    r = rs_req("rs/err-404")
    expect_error(r, 404, "native 404", contains=("provmock openai 404",))


def _expect_fell_back(r, mk, what, stream, prov, public):
    """The first (native) attempt failed before the client's first byte; prov served the
    request: oa translated (its path /chat/completions), rs2 natively (/fallback/v1/responses)."""
    seen = [x["path"] for x in mock().find(mk)]
    eq(len(seen), 2, "%s: two upstream requests: %r" % (what, seen))
    eq(seen[0], "/v1/responses", what + ": the first attempt")
    eq(r.h("x-llmgw-provider"), prov, what + ": served by")
    if prov == "oa":
        check(seen[1].endswith("/chat/completions"), "%s: the fallback's path %r" % (what, seen[1]))
    else:
        eq(seen[1], "/fallback/v1/responses", what + ": the fallback's path")
    if stream:
        if prov == "oa":
            ev, j, _ = stream_result(r, what)
            eq(names_of(ev), HEAD_EVENTS + MSG_EVENTS + ["response.completed"], what + ": translated events")
        else:
            ev = native_events(r, what, public)
            j = ev[-1].json["response"]
        eq([e.json.get("sequence_number") for e in ev], list(range(len(ev))), what + ": sequence numbers from 0")
        check(not [e for e in ev if e.name in ("error", "response.failed")], what + ": error events reached the client")
    else:
        expect_status(r, 200, what)
        j = r.json()
    eq(simple(j["output"]), [("message", TEXT)], what + ": output")


def test_native_5xx_falls_back():
    """503 -> the translated chat target; 500 and a retryable 429 -> the other Responses target."""
    for name, prov in (("err503", "oa"), ("err500", "rs2"), ("err429", "rs2")):
        for stream in (False, True):
            what = "native %s stream=%s" % (name, stream)
            mk = marker()
            r = rs_req("rsfb-" + name, mk=mk, stream=stream)
            _expect_fell_back(r, mk, what, stream, prov, "rsfb-" + name)
            ln = shared().access_line(r.h("x-request-id"))
            eq([a.get("status") for a in ln.get("attempts") or []], [int(name[3:]), 200], what + ": attempts")


def test_native_early_error_falls_back():
    """An error event before anything went to the client (error + response.failed as the first
    events): the attempt failed, the next target serves the request."""
    for name, prov in (("earlyfail", "rs2"), ("earlyfail-oa", "oa")):
        what = "native %s" % name
        mk = marker()
        r = rs_req("rsfb-" + name, mk=mk, stream=True)
        _expect_fell_back(r, mk, what, True, prov, "rsfb-" + name)


def test_native_empty_stream_falls_back():
    """A 200 stream that ends without any event: nothing went to the client, the next target
    serves it."""
    for name, prov in (("trunc-empty", "oa"), ("trunc-empty-rs", "rs2")):
        what = "native %s" % name
        mk = marker()
        r = rs_req("rsfb-" + name, mk=mk, stream=True)
        _expect_fell_back(r, mk, what, True, prov, "rsfb-" + name)


def _expect_failed_end(ev, what, upstream_names, added):
    """ev: the upstream's events (names) then error + response.failed (added by llmgw when
    `added`, else the upstream's), numbered on; never response.completed."""
    names = [e.name for e in ev]
    eq(names, upstream_names + ["error", "response.failed"], what + ": event names")
    eq([e.json.get("sequence_number") for e in ev], list(range(len(ev))), what + ": sequence numbers continue")
    err = ev[-2].json
    check(isinstance(err.get("message"), str) and err["message"] and isinstance(err.get("code"), str),
          "%s: error event: %r" % (what, err))
    resp = ev[-1].json.get("response") or {}
    eq(resp.get("status"), "failed", what + ": response.failed status")
    check(isinstance(resp.get("error"), dict) and resp["error"].get("message"), "%s: response.error: %r"
          % (what, resp.get("error")))
    if not added:
        check("mid stream error" in err["message"], "%s: the upstream's error message: %r" % (what, err))
    return resp.get("id"), ev[0].json["response"]["id"]


def test_native_midfail():
    """Deltas, then the upstream's error and response.failed: passed on, the stream ends, 502."""
    g = shared()
    what = "native midfail"
    mk = marker()
    r = rs_req("rsfb-midfail", mk=mk, stream=True)
    ev = native_events(r, what, "rsfb-midfail", end="response.failed")
    up = rs_direct("midfail", stream=True).events
    eq([x["path"] for x in mock().find(mk)], ["/v1/responses"], what + ": no fallback after the first byte")
    same_events(ev, up, what, "rsfb-midfail", "midfail")
    _expect_failed_end(ev, what, [e.name for e in up][:-2], False)
    text = "".join(e.json["delta"] for e in ev if e.name == "response.output_text.delta")
    check(text and TEXT.startswith(text), "%s: the text before the failure: %r" % (what, text))
    eq(g.access_line(r.h("x-request-id")).get("status"), 502, what + ": access log status")


def test_native_truncated_after_first_byte():
    """The upstream's stream ends without response.completed after its first events went to
    the client: llmgw ends it with error + response.failed, numbered on from the upstream's."""
    g = shared()
    ids = []
    # trunc-early: only response.created / in_progress came, which llmgw holds until content
    # comes, so nothing reached the client and the next target answers
    mk = marker()
    r = rs_req("rsfb-trunc-early", mk=mk, stream=True)
    ev = r.events
    eq(ev[-1].name, "response.completed", "native trunc-early: the fallback's answer")
    check(len(mock().find(mk)) == 2, "native trunc-early: two upstream requests (fallback): %r"
          % [x["path"] for x in mock().find(mk)])
    for name in ("trunc",):
        what = "native %s" % name
        mk = marker()
        r = rs_req("rsfb-" + name, mk=mk, stream=True)
        ev = native_events(r, what, "rsfb-" + name, end="response.failed")
        up = rs_direct(name, stream=True).events
        eq([x["path"] for x in mock().find(mk)], ["/v1/responses"], what + ": no fallback after the first byte")
        same_events(ev[:-2], up, what, "rsfb-" + name, name)
        ids.append((what,) + _expect_failed_end(ev, what, [e.name for e in up], True))
        check("ended before it was complete" in ev[-2].json["message"], "%s: error message %r" % (what, ev[-2].json))
        eq(g.access_line(r.h("x-request-id")).get("status"), 502, what + ": access log status")
    for what, failed, created in ids:   # one response throughout, as a client tracks it
        eq(failed, created, what + ": the id of llmgw's response.failed = response.created's (the upstream's)")


def test_native_delivery():
    """Framing the upstream chose (byte by byte, split, CRLF, multi-line data:, comments,
    unknown events, no last blank line, close-delimited) and a 400 KB delta: the same events."""
    base = [e.name for e in rs_direct("text", stream=True).events]
    for opt in ("1b", "split40", "split300", "crlf", "cr", "multiline", "fields", "comments", "nolast", "cl"):
        what = "native text~%s" % opt
        r = rs_req("rs/text~%s" % opt, stream=True)
        ev = native_events(r, what, "rs/text~%s" % opt)
        eq([e.name for e in ev], base, what + ": events")
        eq("".join(e.json["delta"] for e in ev if e.name == "response.output_text.delta"), TEXT, what + ": text")
    r = rs_req("rs/text~unknown", stream=True)
    ev = native_events(r, "native text~unknown", "rs/text~unknown")
    eq([e.name for e in ev if e.name != "future_event"], base, "native text~unknown: events")
    for stream in (False, True):
        what = "native big stream=%s" % stream
        r = http(shared().port, "POST", "/v1/responses", {"model": "rs/big", "input": "hi", "stream": stream},
                 timeout=30)
        if stream:
            ev = native_events(r, what, "rs/big")
            got = "".join(e.json["delta"] for e in ev if e.name == "response.output_text.delta")
        else:
            expect_status(r, 200, what)
            got = simple(r.json()["output"])[0][1]
        check(got == PM.BIG_TEXT, "%s: text differs (%d chars, want %d)" % (what, len(got), len(PM.BIG_TEXT)))


def test_native_bad_utf8_accounted():
    """Ill-formed UTF-8 in the upstream's text (in the deltas and in response.completed): the
    answer completes and its usage is read (llmgw passes a native body on as it is, as for the
    other native wires)."""
    g = shared()
    for stream in (False, True):
        what = "native badutf8 stream=%s" % stream
        r = rs_req("rs/badutf8", stream=stream)
        if stream:
            ev = native_events(r, what, "rs/badutf8")
            j = ev[-1].json["response"]
        else:
            expect_status(r, 200, what)
            j = json.loads(r.body.decode("utf-8", "replace"))
        eq(j.get("status"), "completed", what + ": status")
        ln = g.access_line(r.h("x-request-id"))
        eq((ln.get("status"), ln.get("prompt_tokens"), ln.get("completion_tokens")), (200, 11, 7),
           what + ": access log status and tokens")


def test_native_azure_paths():
    """Azure with responses = yes: /openai/responses?api-version= (the configured one, else
    2025-04-01-preview) with the deployment as the body's model; a /openai/v1 base: /responses."""
    for prov, path in (("az", "/az/openai/responses?api-version=2025-03-01-preview"),
                       ("azd", "/azd/openai/responses?api-version=2025-04-01-preview"),
                       ("az1", "/openai/v1/responses")):
        for stream in (False, True):
            what = "%s responses stream=%s" % (prov, stream)
            mk = marker()
            r = rs_req("%s/text" % prov, mk=mk, stream=stream)
            if stream:
                ev = native_events(r, what, "%s/text" % prov)
                j = ev[-1].json["response"]
            else:
                expect_status(r, 200, what)
                j = r.json()
                eq(j.get("provider"), prov, what + ": provider")
            eq(simple(j["output"]), [("message", TEXT)], what + ": output")
            rec, b = one_request(mk, what)
            eq(rec["path"], path, what + ": upstream path")
            eq(b.get("model"), "text", what + ": the deployment in the body")
            eq(rec["headers"].get("api-key"), "%s-secret" % prov, what + ": api-key header")
            check("authorization" not in rec["headers"], what + ": an Authorization header")
    # chat completions to the same provider still use the deployment path
    mk = marker()
    r = http(shared().port, "POST", "/v1/chat/completions",
             {"model": "az/text", "messages": [{"role": "user", "content": "hi %s" % mk}]})
    expect_status(r, 200, "az chat")
    rec, _ = one_request(mk, "az chat")
    eq(rec["path"], "/az/openai/deployments/text/chat/completions?api-version=2025-03-01-preview", "az chat: path")


def test_native_config_check():
    """responses = yes is for openai and azure providers: elsewhere `llmgw -t` fails naming the
    provider."""
    d = tempfile.mkdtemp(prefix="llmgw-rs-cfg-")
    H.on_cleanup(lambda: shutil.rmtree(d, ignore_errors=True))
    cases = [("anthropic", "base_url = http://127.0.0.1:9/\napi_key = x\n", False),
             ("gemini", "base_url = http://127.0.0.1:9/v1beta\napi_key = x\n", False),
             ("bedrock", "base_url = http://127.0.0.1:9\napi_key = x\n", False),
             ("mock", "", False),
             ("openai", "base_url = http://127.0.0.1:9/v1\napi_key = x\n", True),
             ("azure", "base_url = http://127.0.0.1:9\napi_key = x\n", True)]
    for typ, lines, ok in cases:
        path = os.path.join(d, "%s.ini" % typ)
        with open(path, "w") as f:
            f.write("[gateway]\nlisten = 127.0.0.1:%d\n\n[provider.pv-%s]\ntype = %s\n%sresponses = yes\n\n"
                    "[model.m]\ntarget = pv-%s x\n" % (H.free_port(), typ, typ, lines, typ))
        p = H.run_gw(["-t", "-c", path])
        out = (p.stdout + p.stderr).decode("utf-8", "replace")
        if ok:
            eq(p.returncode, 0, "llmgw -t with responses = yes on type %s: exit status (output %r)" % (typ, out))
        else:
            check(p.returncode != 0, "llmgw -t with responses = yes on type %s should fail: %r" % (typ, out))
            check("pv-%s" % typ in out and "responses" in out,
                  "llmgw -t, type %s: the message should name the provider and the key: %r" % (typ, out))


def test_native_equals_translated():
    """The same scenario through the native target (rs) and the translated chat target (oa):
    the same output, usage and status, and the same event sequence."""
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}},
             {"type": "function", "name": "get_time", "parameters": {"type": "object"}}]
    for scen in ("text", "tool", "tools2", "think", "mixed", "json", "length", "tools6"):
        for stream in (False, True):
            what = "%s stream=%s" % (scen, stream)
            a = rs_req("rs-%s" % scen, tools=tools, stream=stream)
            b = rs_req("oa-%s" % scen, tools=tools, stream=stream)
            end = "response.incomplete" if scen == "length" else "response.completed"
            if stream:
                ev_a = native_events(a, what + " native", "rs-%s" % scen, end=end)
                ev_b, jb, _ = stream_result(b, what + " translated", end=end)
                ja = ev_a[-1].json["response"]
                eq([e.name for e in ev_a], [e.name for e in ev_b], what + ": event names, native vs translated")
                for ea, eb in zip(ev_a, ev_b):
                    for k in ("output_index", "content_index", "summary_index", "delta", "text", "arguments"):
                        eq(ea.json.get(k), eb.json.get(k), "%s: %s.%s native vs translated" % (what, ea.name, k))
            else:
                expect_status(a, 200, what + " native")
                expect_status(b, 200, what + " translated")
                ja, jb = a.json(), b.json()
            eq(simple(ja["output"]), simple(jb["output"]), what + ": output, native vs translated")
            eq((ja["status"], ja.get("incomplete_details")), (jb["status"], jb.get("incomplete_details")),
               what + ": status")
            ua, ub = ja["usage"], jb["usage"]
            for k in ("input_tokens", "output_tokens", "total_tokens"):
                eq(ua.get(k), ub.get(k), "%s: usage.%s" % (what, k))
            eq((ua["input_tokens_details"]["cached_tokens"], ua["output_tokens_details"]["reasoning_tokens"]),
               (ub["input_tokens_details"]["cached_tokens"], ub["output_tokens_details"]["reasoning_tokens"]),
               what + ": cached and reasoning tokens")
            near(ua["cost"], ub["cost"], what + ": usage.cost")


# =======================================================================================
# custom tools, namespace groups, hosted tools (translated)

PATCH = PM.PATCH_INPUT
PATCH2 = PM.PATCH2_INPUT
GRAMMAR = 'start: begin_patch hunk+ end_patch\nbegin_patch: "*** Begin Patch" LF\nend_patch: "*** End Patch" LF?'
CUSTOM_TOOL = {"type": "custom", "name": "apply_patch", "description": "Use the `apply_patch` tool to edit files.",
               "format": {"type": "grammar", "syntax": "lark", "definition": GRAMMAR}}
NS_TOOL = {"type": "namespace", "name": "ns", "description": "Tools of a namespace",
           "tools": [{"type": "function", "name": "fn", "description": "The fn of ns",
                      "parameters": {"type": "object", "properties": {"input": {"type": "string"}}}},
                     {"type": "function", "name": "other", "parameters": {"type": "object"}}]}
WEATHER_TOOL = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
ALL_PROVS = PROVS + MORE_PROVS
CALL_PREFIX = {"oa": "call_", "an": "toolu_", "br": "tooluse_", "ge": "call_"}   # gemini: llmgw makes the ids up
CTC_EVENTS = ["response.output_item.added", "response.custom_tool_call_input.done", "response.output_item.done"]


def up_tools(prov, b):
    """(name, description, schema) of each tool the provider received."""
    if prov in ("oa", "rs"):
        return [(t["function"]["name"], t["function"].get("description"), t["function"].get("parameters"))
                for t in b.get("tools") or []]
    if prov == "an":
        return [(t["name"], t.get("description"), t.get("input_schema")) for t in b.get("tools") or []]
    if prov == "ge":
        return [(f["name"], f.get("description"), f.get("parameters"))
                for t in b.get("tools") or [] for f in t.get("functionDeclarations") or []]
    return [(t["toolSpec"]["name"], t["toolSpec"].get("description"), t["toolSpec"]["inputSchema"]["json"])
            for t in (b.get("toolConfig") or {}).get("tools") or []]


def _text_of(c):
    if isinstance(c, str):
        return c
    return "".join(x.get("text", "") for x in c or [] if isinstance(x, dict))


def up_turns(prov, b):
    """The conversation the provider received as (role, kind, value) in order: kind text
    (value the text), call (value (id, name, arguments as an object)), result (value (id or,
    for Gemini, the name, the result's text))."""
    out = []
    if prov == "oa":
        for m in b.get("messages") or []:
            if m["role"] == "tool":
                out.append(("tool", "result", (m.get("tool_call_id"), _text_of(m.get("content")))))
                continue
            c = m.get("content")
            if isinstance(c, str):
                out.append((m["role"], "text", c))
            for x in c if isinstance(c, list) else []:
                if x.get("type") == "text":
                    out.append((m["role"], "text", x["text"]))
            for tc in m.get("tool_calls") or []:
                out.append((m["role"], "call", (tc["id"], tc["function"]["name"], json.loads(tc["function"]["arguments"]))))
    elif prov == "an":
        for m in b.get("messages") or []:
            c = m["content"]
            for x in [{"type": "text", "text": c}] if isinstance(c, str) else c:
                if x["type"] == "text":
                    out.append((m["role"], "text", x["text"]))
                elif x["type"] == "tool_use":
                    out.append((m["role"], "call", (x["id"], x["name"], x["input"])))
                elif x["type"] == "tool_result":
                    out.append((m["role"], "result", (x["tool_use_id"], _text_of(x.get("content")))))
    elif prov == "ge":
        for m in b.get("contents") or []:
            for x in m.get("parts") or []:
                if "text" in x:
                    out.append((m["role"], "text", x["text"]))
                elif "functionCall" in x:
                    out.append((m["role"], "call", (None, x["functionCall"]["name"], x["functionCall"].get("args"))))
                elif "functionResponse" in x:
                    r = x["functionResponse"].get("response") or {}
                    out.append((m["role"], "result", (x["functionResponse"]["name"],
                                                      r.get("content", r.get("output", json.dumps(r))))))
    else:
        for m in b.get("messages") or []:
            for x in m.get("content") or []:
                if "text" in x:
                    out.append((m["role"], "text", x["text"]))
                elif "toolUse" in x:
                    out.append((m["role"], "call", (x["toolUse"]["toolUseId"], x["toolUse"]["name"], x["toolUse"]["input"])))
                elif "toolResult" in x:
                    out.append((m["role"], "result", (x["toolResult"]["toolUseId"], _text_of(x["toolResult"]["content"]))))
    return out


def _answer(r, what, stream, end="response.completed"):
    """(events or None, the final response object) of a translated answer."""
    if stream:
        ev, j, items = stream_result(r, what, end=end)
        eq(simple(items), simple(j["output"]), what + ": output rebuilt from the events")
        return ev, j
    expect_status(r, 200, what)
    return None, r.json()


def test_custom_tool_translated():
    """A custom tool (Codex's apply_patch, lark grammar) goes upstream as a function of one
    required string "input" with the grammar in its description; the call comes back as a
    custom_tool_call item carrying that input (stream: no argument deltas, one
    custom_tool_call_input.done)."""
    for prov in ALL_PROVS:
        for stream in (False, True):
            what = "%s custom tool stream=%s" % (prov, stream)
            mk = marker()
            r = rs_req("%s-patch" % prov, mk=mk, stream=stream, tools=[CUSTOM_TOOL, WEATHER_TOOL])
            ev, j = _answer(r, what, stream)
            check_object(r, j, what, model="%s-patch" % prov, provider=prov)
            out = simple(j["output"])
            eq([o[0] for o in out], ["custom_tool_call"], what + ": output item types")
            eq((out[0][2], out[0][3]), ("apply_patch", PATCH), what + ": the custom_tool_call's name and input")
            check(isinstance(out[0][1], str) and out[0][1].startswith(CALL_PREFIX[prov]), "%s: call_id %r"
                  % (what, out[0][1]))
            if prov != "ge":
                eq(out[0][1], CALL_PREFIX[prov] + "p1", what + ": the upstream's call id")
            check("arguments" not in j["output"][0], what + ": a custom_tool_call with arguments")
            usage_check(j["usage"], what, 20, 9, 20 * 2e-6 + 9 * 8e-6)
            if stream:
                eq(names_of(ev), HEAD_EVENTS + CTC_EVENTS + ["response.completed"], what + ": event order")
                check(not [e for e in ev if "arguments" in e.name or e.name.endswith("input.delta")],
                      what + ": argument / input deltas for a custom tool")
                done = [e.json for e in ev if e.name == "response.custom_tool_call_input.done"][0]
                eq(done.get("input"), PATCH, what + ": custom_tool_call_input.done input")
                eq((done.get("output_index"), done.get("item_id")), (0, j["output"][0]["id"]),
                   what + ": custom_tool_call_input.done output_index / item_id")
            _, b = one_request(mk, what)
            tl = up_tools(prov, b)
            eq([t[0] for t in tl], ["apply_patch", "get_weather"], what + ": upstream tool names")
            name, desc, schema = tl[0]
            eq(schema.get("type"), "object", what + ": the custom tool's schema type")
            eq(list(schema.get("properties") or {}), ["input"], what + ": one parameter, input")
            eq(schema["properties"]["input"].get("type"), "string", what + ": input is a string")
            eq(schema.get("required"), ["input"], what + ": input required")
            check(isinstance(desc, str) and desc.startswith(CUSTOM_TOOL["description"]) and GRAMMAR in desc and
                  "lark" in desc, "%s: the description should be the tool's then the lark grammar: %r" % (what, desc))


def test_custom_tool_mixed_with_namespace():
    """patch2: text, a custom tool's call and a namespaced function's call in one answer:
    message, custom_tool_call (input with quotes, a backslash, non-ASCII), function_call with
    name and namespace restored; the stream equals the non-streamed answer."""
    for prov in ALL_PROVS:
        outs = []
        for stream in (False, True):
            what = "%s patch2 stream=%s" % (prov, stream)
            r = rs_req("%s-patch2" % prov, stream=stream, tools=[CUSTOM_TOOL, NS_TOOL])
            ev, j = _answer(r, what, stream)
            check_object(r, j, what, provider=prov)
            out = simple(j["output"])
            eq(out[0], ("message", "Patching."), what + ": the message")
            eq([(o[0],) + tuple(o[2:]) for o in out[1:]],
               [("custom_tool_call", "apply_patch", PATCH), ("function_call", "fn", {"input": PATCH2}, "ns")],
               what + ": the calls (type, name, input / arguments, namespace)")
            if prov != "ge":
                eq([o[1] for o in out[1:]], [CALL_PREFIX[prov] + "p1", CALL_PREFIX[prov] + "p2"], what + ": call ids")
            if stream:
                eq(names_of(ev), HEAD_EVENTS + MSG_EVENTS + CTC_EVENTS + FC_EVENTS + ["response.completed"],
                   what + ": event order")
                added = [e.json["item"] for e in ev if e.name == "response.output_item.added"]
                eq([(a["type"], a.get("name"), a.get("namespace")) for a in added],
                   [("message", None, None), ("custom_tool_call", "apply_patch", None), ("function_call", "fn", "ns")],
                   what + ": output_item.added items")
            outs.append([o if o[0] == "message" or prov != "ge" else o[:1] + o[2:] for o in out])
        eq(outs[1], outs[0], "%s patch2: streamed output = non-streamed output" % prov)


def test_custom_tool_input_with_more_arguments():
    """The upstream's arguments for a custom tool hold more than "input" (a model adding
    members): the item's input is still the "input" string, not the arguments' JSON text."""
    for prov in ALL_PROVS:
        for stream in (False, True):
            what = "%s patchx stream=%s" % (prov, stream)
            r = rs_req("%s-patchx" % prov, stream=stream, tools=[CUSTOM_TOOL])
            _, j = _answer(r, what, stream)
            eq([(o[0], o[2], o[3]) for o in simple(j["output"])], [("custom_tool_call", "apply_patch", PATCH)],
               what + ": the custom_tool_call's input")


def test_custom_tool_choice_forced():
    """tool_choice {type: custom, name} forces that tool upstream."""
    want = {"oa": {"type": "function", "function": {"name": "apply_patch"}},
            "an": {"type": "tool", "name": "apply_patch"}}
    for prov in PROVS:
        mk = marker()
        r = rs_req("%s-text" % prov, mk=mk, tools=[CUSTOM_TOOL, WEATHER_TOOL],
                   tool_choice={"type": "custom", "name": "apply_patch"})
        expect_status(r, 200, "%s forced custom tool" % prov)
        _, b = one_request(mk, "%s forced custom tool" % prov)
        eq(b.get("tool_choice"), want[prov], "%s: tool_choice for a custom tool" % prov)


def test_custom_tool_in_namespace():
    """A custom tool inside a namespace group: upstream NS__NAME with the one input; back as a
    custom_tool_call with name and namespace."""
    tools = [{"type": "namespace", "name": "ed", "tools": [dict(CUSTOM_TOOL)]}]
    for prov in PROVS:
        for stream in (False, True):
            what = "%s custom tool in a namespace stream=%s" % (prov, stream)
            mk = marker()
            r = rs_req("%s-patch" % prov, mk=mk, tools=tools, stream=stream)
            _, j = _answer(r, what, stream)
            eq(simple(j["output"]), [("custom_tool_call", CALL_PREFIX[prov] + "p1", "apply_patch", PATCH, "ed")],
               what + ": output")
            _, b = one_request(mk, what)
            tl = up_tools(prov, b)
            eq([(t[0], list((t[2] or {}).get("properties") or {})) for t in tl], [("ed__apply_patch", ["input"])],
               what + ": upstream tools")


def test_custom_tool_call_items_roundtrip():
    """custom_tool_call / custom_tool_call_output input items (as Codex sends them back: id,
    status) go upstream as the assistant's tool call with arguments {"input": ...} and its
    result."""
    for prov in ALL_PROVS:
        what = "%s custom_tool_call round trip" % prov
        mk = marker()
        inp = [{"role": "user", "content": "Add the file. %s" % mk},
               {"type": "custom_tool_call", "id": "ctc_1", "status": "completed", "call_id": "call_ct1",
                "name": "apply_patch", "input": PATCH2},
               {"type": "custom_tool_call_output", "call_id": "call_ct1", "output": "Done! \"a.txt\" \u2713"},
               {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Added."}]},
               {"role": "user", "content": "And again."},
               {"type": "custom_tool_call", "call_id": "call_ct2", "name": "apply_patch", "input": PATCH},
               {"type": "custom_tool_call_output", "call_id": "call_ct2",
                "output": [{"type": "input_text", "text": "Done"}, {"type": "input_text", "text": "twice"}]}]
        r = rs_req("%s-text" % prov, input=inp, tools=[CUSTOM_TOOL])
        expect_status(r, 200, what)
        eq(simple(r.json()["output"]), [("message", TEXT)], what + ": output")
        _, b = one_request(mk, what)
        turns = up_turns(prov, b)
        calls = [t[2] for t in turns if t[1] == "call"]
        results = [t[2] for t in turns if t[1] == "result"]
        cid = (lambda c: "apply_patch") if prov == "ge" else (lambda c: c)
        eq([(c[1], c[2]) for c in calls], [("apply_patch", {"input": PATCH2}), ("apply_patch", {"input": PATCH})],
           what + ": the calls (name, arguments)")
        if prov != "ge":
            eq([c[0] for c in calls], ["call_ct1", "call_ct2"], what + ": call ids")
        eq(results[0], (cid("call_ct1"), "Done! \"a.txt\" \u2713"), what + ": the first result")
        eq(results[1][0], cid("call_ct2"), what + ": the second result's id")
        check(re.match(r"^Done\s*twice$", results[1][1]), "%s: the second result's parts joined: %r" % (what, results[1][1]))
        eq([t[2] for t in turns if t[1] == "text"], ["Add the file. %s" % mk, "Added.", "And again."],
           what + ": the texts")


def test_namespace_tools():
    """A namespace group's functions go upstream as NS__NAME; a call of one comes back as a
    function_call with name and namespace; a function_call item with namespace goes back as
    NS__NAME."""
    for prov in ALL_PROVS:
        for stream in (False, True):
            what = "%s namespace stream=%s" % (prov, stream)
            mk = marker()
            r = rs_req("%s-patch" % prov, mk=mk, stream=stream, tools=[NS_TOOL, WEATHER_TOOL])
            ev, j = _answer(r, what, stream)
            out = simple(j["output"])
            eq([(o[0], o[2], o[3], o[4:]) for o in out], [("function_call", "fn", {"input": PATCH}, ("ns",))],
               what + ": output")
            if stream:
                eq(names_of(ev), HEAD_EVENTS + FC_EVENTS + ["response.completed"], what + ": event order")
                added = [e.json["item"] for e in ev if e.name == "response.output_item.added"][0]
                eq((added.get("name"), added.get("namespace")), ("fn", "ns"), what + ": the added item")
            _, b = one_request(mk, what)
            tl = up_tools(prov, b)
            eq([t[0] for t in tl], ["ns__fn", "ns__other", "get_weather"], what + ": upstream tool names")
            eq(tl[0][2], NS_TOOL["tools"][0]["parameters"], what + ": ns__fn's parameters")
            check(tl[0][1] and "The fn of ns" in tl[0][1], "%s: ns__fn's description %r" % (what, tl[0][1]))
        # the call back in
        what = "%s namespace round trip" % prov
        fc = j["output"][0]
        mk = marker()
        inp = [{"role": "user", "content": "Go %s" % mk}, fc,
               {"type": "function_call_output", "call_id": fc["call_id"], "output": "fn said hi"}]
        r = rs_req("%s-text" % prov, input=inp, tools=[NS_TOOL])
        expect_status(r, 200, what)
        _, b = one_request(mk, what)
        turns = up_turns(prov, b)
        eq([(t[2][1], t[2][2]) for t in turns if t[1] == "call"], [("ns__fn", {"input": PATCH})], what + ": the call")
        res = [t[2] for t in turns if t[1] == "result"]
        eq([x[1] for x in res], ["fn said hi"], what + ": the result")
        if prov == "ge":
            eq(res[0][0], "ns__fn", what + ": the functionResponse's name")


def test_hosted_tools_named_custom_kept():
    """Hosted tools of every kind are left out and named (once each, in order) in
    llmgw-dropped-tools; custom tools and namespace groups are not; the built-in mock too."""
    hosted = [{"type": "local_shell"}, {"type": "web_search", "search_context_size": "low"},
              {"type": "web_search_preview"}, {"type": "image_generation"},
              {"type": "code_interpreter", "container": {"type": "auto"}},
              {"type": "mcp", "server_label": "x", "server_url": "https://example.com/mcp"},
              {"type": "computer_use_preview", "display_width": 1, "display_height": 1, "environment": "linux"},
              {"type": "file_search", "vector_store_ids": ["vs_1"]}, {"type": "local_shell"}]
    tools = hosted[:3] + [CUSTOM_TOOL] + hosted[3:6] + [NS_TOOL] + hosted[6:]
    want = "local_shell,web_search,web_search_preview,image_generation,code_interpreter,mcp,computer_use_preview," \
           "file_search"
    for prov in ALL_PROVS + ["mk"]:
        for stream in (False, True):
            what = "%s hosted tools stream=%s" % (prov, stream)
            mk = marker()
            r = rs_req("m-mock" if prov == "mk" else "%s-text" % prov, mk=mk, stream=stream, tools=tools)
            expect_status(r, 200, what)
            eq(r.h("llmgw-dropped-tools"), want, what + ": llmgw-dropped-tools")
            eq(r.h("llmgw-dropped-fields"), None, what + ": llmgw-dropped-fields")
            if prov != "mk":
                _, b = one_request(mk, what)
                eq([t[0] for t in up_tools(prov, b)], ["apply_patch", "ns__fn", "ns__other"], what + ": upstream tools")


def test_custom_tool_mock_target():
    """The built-in mock takes custom tools and namespace groups (it never calls them)."""
    for stream in (False, True):
        what = "mock custom tools stream=%s" % stream
        mk = marker()
        r = rs_req("m-mock", mk=mk, stream=stream, tools=[CUSTOM_TOOL, NS_TOOL, {"type": "web_search"}])
        _, j = _answer(r, what, stream)
        eq(simple(j["output"]), [("message", MOCK_PREFIX + "Say hello. %s" % mk)], what + ": output")
        eq(r.h("llmgw-dropped-tools"), "web_search", what + ": llmgw-dropped-tools")


# =======================================================================================
# compaction (translated)

COMPACT_PROMPT = "Compact the conversation above"
SUMMARY_PREFIX = "A summary of the conversation before this point (it was compacted):\n\n"


def _history(mk):
    return [{"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "Fix the bug. %s" % mk},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Looking."}]},
            {"type": "function_call", "call_id": "call_h1", "name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"},
            {"type": "function_call_output", "call_id": "call_h1", "output": "rain"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "It rains."}]}]


def _expect_compact_upstream(prov, b, what, history=True):
    """The provider got the conversation, then a user turn asking for the summary, with no tool
    call allowed."""
    turns = up_turns(prov, b)
    last = turns[-1]
    eq(last[:2], ("user", "text"), what + ": the last thing upstream is a user text")
    check(last[2].startswith(COMPACT_PROMPT) and "summary" in last[2],
          "%s: the last user text should ask for the handoff summary: %r" % (what, last[2]))
    eq(sum(1 for t in turns if t[1] == "text" and t[2].startswith(COMPACT_PROMPT)), 1, what + ": asked once")
    if history:
        eq([t[2] for t in turns if t[1] == "call"][0][1:], ("get_weather", {"city": "Oslo"}), what + ": the history's call")
        eq([t[2][1] for t in turns if t[1] == "result"], ["rain"], what + ": the history's result")
    if prov == "oa":
        eq(b.get("tool_choice"), "none", what + ": tool_choice")
    elif prov == "an":
        eq(b.get("tool_choice"), {"type": "none"}, what + ": tool_choice")
    elif prov == "ge":
        mode = ((b.get("toolConfig") or {}).get("functionCallingConfig") or {}).get("mode")
        check(not up_tools(prov, b) or mode == "NONE", "%s: tools without mode NONE: %s" % (what, snip(b)))
    else:   # Bedrock has no "none": toolConfig only as far as the history's calls need it, never forced
        tc = (b.get("toolConfig") or {}).get("toolChoice") or {}
        check("any" not in tc and "tool" not in tc, "%s: a forced toolChoice %r" % (what, tc))
        if not history:
            check("toolConfig" not in b, "%s: toolConfig without a call in the history: %s" % (what, snip(b)))


def _expect_compaction(r, j, what, text, obj="response"):
    eq(j.get("object"), obj, what + ": object")
    eq(j.get("status"), "completed", what + ": status")
    eq(j.get("output"), [{"type": "compaction", "id": "cmp_%s" % r.h("x-request-id"),
                          "encrypted_content": "llmgw-summary:" + text}], what + ": the one compaction item")


def test_compaction_trigger_translated():
    """An input ending with a compaction_trigger item: the target is asked for a handoff summary
    (a user turn after the conversation, tool_choice none); the answer is one compaction item,
    encrypted_content llmgw-summary:<the target's text>; streamed: created, in_progress, the
    item added and done, completed."""
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}, CUSTOM_TOOL]
    for prov in ALL_PROVS + ["mk"]:
        for stream in (False, True):
            what = "%s compaction_trigger stream=%s" % (prov, stream)
            mk = marker()
            inp = _history(mk) + [{"type": "compaction_trigger"}]
            r = rs_req("m-mock" if prov == "mk" else "%s-text" % prov, input=inp, mk=mk, stream=stream, tools=tools,
                       tool_choice="required")
            ev, j = _answer(r, what, stream)
            check_object(r, j, what, provider=prov)
            if prov == "mk":
                enc = j["output"][0].get("encrypted_content", "")
                check(enc.startswith("llmgw-summary:" + MOCK_PREFIX + COMPACT_PROMPT),
                      "%s: the mock echoes the compaction prompt: %r" % (what, enc[:120]))
                text = enc[len("llmgw-summary:"):]
            else:
                text = TEXT
                _, b = one_request(mk, what)
                _expect_compact_upstream(prov, b, what)
            _expect_compaction(r, j, what, text)
            if stream:
                eq([e.name for e in ev], HEAD_EVENTS + ["response.output_item.added", "response.output_item.done",
                                                        "response.completed"], what + ": events")
                for e in ev[2:4]:
                    eq((e.json.get("output_index"), e.json.get("item")), (0, j["output"][0]), what + ": " + e.name)
            else:
                usage_check(j["usage"], what, j["usage"]["input_tokens"], j["usage"]["output_tokens"],
                            j["usage"]["cost"])


def test_compaction_summary_only_text():
    """The summary is the target's text: reasoning is not part of it; without a history of tool
    calls Bedrock gets no toolConfig."""
    for prov in ALL_PROVS:
        what = "%s compaction of a reasoning answer" % prov
        mk = marker()
        r = rs_req("%s-think" % prov, input=[{"role": "user", "content": "Hi %s" % mk}, {"type": "compaction_trigger"}],
                   tools=[WEATHER_TOOL], reasoning={"effort": "low"}, include=["reasoning.encrypted_content"],
                   max_output_tokens=20000)
        expect_status(r, 200, what)
        _expect_compaction(r, r.json(), what, "The answer is 4.")
        _, b = one_request(mk, what)
        _expect_compact_upstream(prov, b, what, history=False)


def test_compact_endpoint_translated():
    """POST /v1/responses/compact with the body of a /v1/responses request: the same summary,
    object response.compaction, never streamed (stream: true is ignored)."""
    for prov in ALL_PROVS + ["mk"]:
        for stream in (False, True):
            what = "%s /v1/responses/compact stream=%s" % (prov, stream)
            mk = marker()
            body = {"model": "m-mock" if prov == "mk" else "%s-text" % prov, "input": _history(mk),
                    "instructions": "You are Codex.", "tools": [WEATHER_TOOL, CUSTOM_TOOL], "stream": stream}
            r = http(shared().port, "POST", "/v1/responses/compact", body)
            expect_status(r, 200, what)
            check(r.h("content-type", "").startswith("application/json"), "%s: content-type %r" % (what, r.h("content-type")))
            j = r.json()
            eq(j.get("id"), "resp_%s" % r.h("x-request-id"), what + ": id")
            eq(j.get("provider"), prov, what + ": provider")
            if prov == "mk":
                text = j["output"][0]["encrypted_content"][len("llmgw-summary:"):]
                check(text.startswith(MOCK_PREFIX + COMPACT_PROMPT), "%s: mock summary %r" % (what, text[:100]))
            else:
                text = TEXT
                rec, b = one_request(mk, what)
                _expect_compact_upstream(prov, b, what)
                if prov == "oa":
                    check(rec["path"].endswith("/chat/completions") and "stream" not in b,
                          "%s: a non-streamed chat completion: %s %s" % (what, rec["path"], snip(b)))
            _expect_compaction(r, j, what, text, obj="response.compaction")
            ln = shared().access_line(r.h("x-request-id"))
            eq((ln.get("status"), ln.get("provider"), ln.get("stream")), (200, prov, False), what + ": access log")


def test_compaction_item_roundtrip():
    """The compaction item llmgw wrote comes back as a user turn holding the summary (quotes,
    new lines and non-ASCII intact); another service's compaction item (opaque) is dropped and
    named in llmgw-dropped-fields."""
    mk = marker()
    r = rs_req("oa-text", input=_history(mk) + [{"type": "compaction_trigger"}])
    expect_status(r, 200, "compaction for the round trip")
    item = r.json()["output"][0]
    for prov in ALL_PROVS:
        for stream in (False, True):
            what = "%s compaction item back stream=%s" % (prov, stream)
            mk = marker()
            inp = [item, {"role": "user", "content": "Go on. %s" % mk}]
            r = rs_req("%s-text" % prov, input=inp, stream=stream)
            _, j = _answer(r, what, stream)
            eq(simple(j["output"]), [("message", TEXT)], what + ": output")
            eq(r.h("llmgw-dropped-fields"), None, what + ": llmgw-dropped-fields")
            _, b = one_request(mk, what)
            turns = up_turns(prov, b)
            eq([t[:2] for t in turns], [("user", "text"), ("user", "text")], what + ": two user texts")
            eq(turns[0][2], SUMMARY_PREFIX + TEXT, what + ": the summary turn")
            eq(turns[1][2], "Go on. %s" % mk, what + ": the next user text")
        what = "%s foreign compaction item" % prov
        mk = marker()
        inp = [{"type": "compaction", "id": "cmp_x", "encrypted_content": "gAAAAABopenai-opaque=="},
               {"role": "user", "content": "Go on. %s" % mk}, dict(item), {"role": "user", "content": "More."}]
        r = rs_req("%s-text" % prov, input=inp)
        expect_status(r, 200, what)
        eq(r.h("llmgw-dropped-fields"), "compaction", what + ": llmgw-dropped-fields")
        _, b = one_request(mk, what)
        texts = [t[2] for t in up_turns(prov, b) if t[1] == "text"]
        eq(texts, ["Go on. %s" % mk, SUMMARY_PREFIX + TEXT, "More."], what + ": upstream texts")
        check("gAAAA" not in json.dumps(b), what + ": the opaque content went upstream")


def test_compaction_then_more():
    """A whole Codex cycle on a translated target: a compaction, then the next request with the
    compaction item and new input, the summary first."""
    mk = marker()
    r = rs_req("an-text", input=_history(mk) + [{"type": "compaction_trigger"}], stream=True)
    _, j = _answer(r, "compaction stream", True)
    mk2 = marker()
    inp = [{"role": "developer", "content": "Be brief."}, j["output"][0],
           {"role": "user", "content": "Now the tests. %s" % mk2}]
    r = rs_req("oa-tool", input=inp, tools=[WEATHER_TOOL], stream=True)
    _, j2 = _answer(r, "after compaction", True)
    eq(simple(j2["output"]), [("function_call", "call_w1", "get_weather", {"city": "Paris"})], "after compaction: output")
    _, b = one_request(mk2, "after compaction")
    eq([m["role"] for m in b["messages"]], ["system", "user"], "after compaction: roles upstream")
    eq([t[2] for t in up_turns("oa", b) if t[1] == "text"], ["Be brief.", SUMMARY_PREFIX + TEXT, "Now the tests. %s" % mk2],
       "after compaction: the texts upstream")


# =======================================================================================
# custom tools and compaction, native (responses = yes)

def test_native_custom_tool_passthrough():
    """A native target answers a custom tool with its own custom_tool_call (input deltas and
    all): passed through as it came; the same output as a translated target's."""
    tools = [CUSTOM_TOOL, NS_TOOL]
    for scen in ("patch", "patch2"):
        for stream in (False, True):
            what = "native %s stream=%s" % (scen, stream)
            mk = marker()
            r = rs_req("rs-%s" % scen, mk=mk, stream=stream, tools=tools)
            want = rs_direct(scen, stream=stream, tools=tools)
            if stream:
                ev = native_events(r, what, "rs-%s" % scen)
                same_events(ev, want.events, what, "rs-%s" % scen, scen)
                check("response.custom_tool_call_input.delta" in [e.name for e in ev], what + ": the upstream's input deltas")
                ja = ev[-1].json["response"]
            else:
                expect_status(r, 200, what)
                ja = r.json()
                eq(ja.pop("provider"), "rs", what + ": provider")
                eq(rs_norm(ungw(ja, what, "rs-%s" % scen, scen)), rs_norm(want.json()), what + ": the upstream's object")
            _, b = one_request(mk, what)
            eq(b.get("tools"), tools, what + ": tools forwarded as sent")
            eq(r.h("llmgw-dropped-tools"), None, what + ": llmgw-dropped-tools")
            tr = rs_req("oa-%s" % scen, tools=tools, stream=stream)
            _, jb = _answer(tr, what + " translated", stream)
            eq(simple(ja["output"]), simple(jb["output"]), what + ": native output = translated output")


def test_native_custom_tool_items_forwarded():
    """custom_tool_call / _output and namespaced function_call items reach a native target as
    they were sent."""
    mk = marker()
    inp = [{"role": "user", "content": "Patch %s" % mk},
           {"type": "custom_tool_call", "id": "ctc_1", "status": "completed", "call_id": "call_ct1",
            "name": "apply_patch", "input": PATCH2},
           {"type": "custom_tool_call_output", "call_id": "call_ct1", "output": "Done!"},
           {"type": "function_call", "call_id": "call_n1", "name": "fn", "namespace": "ns", "arguments": "{}"},
           {"type": "function_call_output", "call_id": "call_n1", "output": "ok"}]
    r = rs_req("rs-text", input=inp, tools=[CUSTOM_TOOL, NS_TOOL, {"type": "local_shell"}])
    expect_status(r, 200, "native custom items")
    eq(r.h("llmgw-dropped-tools"), None, "native custom items: llmgw-dropped-tools")
    _, b = one_request(mk, "native custom items")
    eq(b.get("input"), inp, "native custom items: input forwarded")
    eq(b.get("tools"), [CUSTOM_TOOL, NS_TOOL, {"type": "local_shell"}], "native custom items: tools forwarded")


def test_native_compaction_trigger_forwarded():
    """A native target gets the compaction_trigger item untouched (it compacts itself); no
    prompt added, tool_choice left alone."""
    for stream in (False, True):
        what = "native compaction_trigger stream=%s" % stream
        mk = marker()
        inp = _history(mk) + [{"type": "compaction_trigger"}]
        r = rs_req("rs-text", input=inp, stream=stream, tools=[WEATHER_TOOL], tool_choice="auto")
        if stream:
            native_events(r, what, "rs-text")
        else:
            expect_status(r, 200, what)
        rec, b = one_request(mk, what)
        eq(rec["path"], "/v1/responses", what + ": path")
        eq((b.get("input"), b.get("tool_choice")), (inp, "auto"), what + ": input and tool_choice forwarded")
        check(COMPACT_PROMPT not in rec["body"], what + ": llmgw's compaction prompt went to a native target")


def test_native_compact_endpoint():
    """POST /v1/responses/compact to a native target: its .../responses/compact (Azure with the
    api-version), the body as sent with the upstream model; the answer (response.compaction)
    passed through with provider first and usage.cost; accounted."""
    g = shared()
    for prov, path in (("rs", "/v1/responses/compact"),
                       ("az", "/az/openai/responses/compact?api-version=2025-03-01-preview"),
                       ("azd", "/azd/openai/responses/compact?api-version=2025-04-01-preview"),
                       ("az1", "/openai/v1/responses/compact")):
        what = "%s native /v1/responses/compact" % prov
        mk = marker()
        body = {"model": "%s/text" % prov, "input": _history(mk), "instructions": "You are Codex.",
                "tools": [WEATHER_TOOL, CUSTOM_TOOL, {"type": "web_search"}]}
        r = http(g.port, "POST", "/v1/responses/compact", body)
        expect_status(r, 200, what)
        check(r.body.startswith(b'{"provider":"%s",' % prov.encode()), "%s: provider first: %s" % (what, snip(r.body, 80)))
        j = r.json()
        eq(j.get("object"), "response.compaction", what + ": object")
        eq([(o["type"], o["encrypted_content"]) for o in j["output"]], [("compaction", PM.RS_CMP)],
           what + ": the upstream's compaction item")
        usage_check(j["usage"], what, 11, 7, 0)
        rec, b = one_request(mk, what)
        eq(rec["path"], path, what + ": upstream path")
        eq(rec["kind"], "compact", what + ": the mock's route")
        eq(b, dict(body, model="text"), what + ": the body forwarded")
        ln = g.access_line(r.h("x-request-id"))
        eq((ln.get("status"), ln.get("provider"), ln.get("prompt_tokens"), ln.get("completion_tokens")),
           (200, prov, 11, 7), what + ": access log")
    what = "native compact 400"
    r = http(g.port, "POST", "/v1/responses/compact", {"model": "rs/err-400", "input": "x"})
    e = expect_error(r, 400, what, contains=("provmock openai 400",))
    eq(e.get("code"), "context_length_exceeded", what + ": the upstream's error body")


def test_native_compact_falls_back_translated():
    """The native compaction fails (503): the translated fallback compacts with the summary
    prompt and answers the compaction object."""
    mk = marker()
    r = http(shared().port, "POST", "/v1/responses/compact",
             {"model": "rsfb-err503", "input": _history(mk), "tools": [WEATHER_TOOL]})
    expect_status(r, 200, "native compact fallback")
    eq(r.h("x-llmgw-provider"), "oa", "native compact fallback: served by")
    _expect_compaction(r, r.json(), "native compact fallback", TEXT, obj="response.compaction")
    seen = mock().find(mk)
    eq([x["path"] for x in seen], ["/v1/responses/compact", "/v1/chat/completions"], "native compact fallback: paths")
    _expect_compact_upstream("oa", json.loads(seen[1]["body"]), "native compact fallback")


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


def main():
    return H.main(globals(), "llmgw Responses API tests", mock_label="provmock", time_fails=True)


if __name__ == "__main__":
    sys.exit(main())
