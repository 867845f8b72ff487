#!/usr/bin/env python3
"""Scripted mock of the provider wire formats llmgw translates to: OpenAI (and Azure
OpenAI), Anthropic Messages, Google Gemini and AWS Bedrock Converse / ConverseStream, and the
OpenAI Responses API (which llmgw forwards natively to providers with responses = yes).

    python3 tests/provmock.py --port 0      # prints "PORT <n>", serves until killed
    python3 tests/provmock.py --selftest    # renders every scenario once and checks it

Raw sockets, one thread per connection, HTTP/1.1 keep-alive, Content-Length and chunked
request bodies, `Expect: 100-continue`; responses are Content-Length JSON or chunked
streams (one HTTP chunk per event unless a delivery option says otherwise).
The reference for every byte is /work/shared/PROVIDERS.md.

Which wire format answers is chosen by the request path:
    .../v1/messages, .../messages                        anthropic   (model from the body)
    .../models/{model}:generateContent                   gemini      (model from the URL)
    .../models/{model}:streamGenerateContent?alt=sse     gemini stream
    .../model/{modelId}/converse, .../converse-stream    bedrock     (model from the URL)
    .../openai/deployments/{dep}/chat/completions        azure       (model = deployment)
    .../chat/completions                                 openai      (model from the body)
    .../responses, .../openai/responses?api-version=...  responses   (model from the body; OpenAI
                                                         and Azure alike: the path tells them apart)

The model name is  SCENARIO[~OPTION...][#TAG]  (the tag is ignored: tests use it to tell
targets apart; URL-encoded names are decoded first).  Scenarios (see SCRIPTS and
special_scenario()):
    text, tool, tools2, think, usage, length, filter, json, notool, toolsig, mixed, toolesc, big, tools6
                       scripted replies, rendered in the provider's format
    fin-REASON         text "ok" finishing with the provider's native REASON verbatim
    blocked            gemini: a prompt blocked (no candidates, promptFeedback.blockReason)
    err-NNN            status NNN in the provider's error shape (PROVIDERS.md section 5)
    err-quota          openai: 429 insufficient_quota
    err-424s           bedrock: 424 ModelStreamErrorException
    midfail            stream: some deltas, then an error in the stream's own format
                       (anthropic `event: error`, gemini a data: object holding error,
                       bedrock an exception frame, openai a data: {"error":..}, responses
                       `event: error` then `event: response.failed`, sequence numbers going on)
    earlyfail          stream: an error before any content (responses: `error` and
                       `response.failed` as the first events, before response.created)
    earlyfail-400      gemini stream: a 400 INVALID_ARGUMENT error object as the first event
    trunc, trunc-early stream: ends (cleanly at the HTTP level) without finishing (trunc after
                       two deltas; trunc-early after the structure events only: responses
                       response.created and response.in_progress)
    trunc-empty        stream: a 200 event stream that ends without any event
    badcrc, badprelude bedrock stream: the first frame has a wrong message / prelude CRC
    badcrc-mid         bedrock stream: good text frames, then one with a wrong CRC
    notjson            stream: some deltas, an event whose data is not JSON (`data: this is
                       not json`; bedrock: a frame with that payload), then the rest of `text`
    badutf8            text holding ill-formed UTF-8 (BAD_UTF8: bytes FF FE, a truncated
                       3-byte sequence, an overlong C0 AF, a lone continuation byte) between
                       valid text; stream (not bedrock) or not
    flaky              first request for (model, marker) fails with 429 (gemini: RetryInfo
                       retryDelay, option rdN = N seconds, default 1), later ones are `text`
    patch              a call of the request's first declared tool (as the provider sees it:
                       a Responses namespace group's tools flattened) with arguments
                       {"input": PATCH_INPUT}; responses wire: a custom tool is answered with a
                       custom_tool_call item (input PATCH_INPUT, custom_tool_call_input.delta
                       events), a namespaced function with "namespace"; 400 without tools
    patch2             text "Patching.", then that call of the first tool and one of the second
                       (the first again when only one is declared) with PATCH2_INPUT (quotes,
                       a backslash, non-ASCII)
    patchx             as patch, the arguments holding more members than "input" (a note and a
                       list of 20 numbers: more than a few JSON tokens)
    errd-NNN           anthropic (messages, count_tokens): status NNN with an error body that
                       carries more than type and message (error.details, a top-level member);
                       other wires as err-NNN
Delivery options (after ~, combinable):
    1b                 every byte of the response in its own send()
    splitN             the stream body split in two HTTP chunks at byte offset N, 5 ms apart
    crlf, lf, cr       SSE line endings (gemini default crlf, others lf)
    nolast             the last SSE event lacks its blank line (the stream ends at EOF)
    cl                 stream delimited by close instead of chunked
    typed              bedrock: frames carry extra headers of every type (bool, int, uuid...)
    multiline          SSE: each event's JSON spread over several data: lines
    fields             SSE: id:, retry: and a comment line inside every event
    comments           SSE: keep-alive comment events (": OPENROUTER PROCESSING") between events
    unknown            SSE: an unknown event type (event: future_event) between events
    repeat             anthropic: message_delta repeats the input/cache usage fields
    usagefinish        openai: usage in the finish chunk (no separate usage chunk)
    choicesnull        openai: the usage chunk has "choices": null (vLLM)
    combined           openai: reasoning, text, every tool call and the finish_reason in one chunk

Responses wire (PROVIDERS.md section 9): a response object (id resp_pm_N, status completed,
or incomplete with incomplete_details.reason max_output_tokens / content_filter / the fin-
REASON; output items reasoning rs_pm.., message msg_pm.. with output_text, function_call
fc_pm.. with call_id call_<id>; usage input/output tokens with cached and reasoning details).
Reasoning items carry encrypted_content (RS_ENC) only when the request's include asks for
reasoning.encrypted_content. The stream: `event: <type>` + data {"type", "sequence_number"
0, 1, ...}: response.created, response.in_progress, per item output_item.added, its part /
summary part, deltas, done events, output_item.done, then response.completed (or
response.incomplete); no [DONE]. Errors (err-NNN, flaky) are OpenAI's {"error": {...}}.

Anthropic's POST .../v1/messages/count_tokens (kind count_tokens): {"input_tokens": 4200 + the
number of messages} (COUNT_BASE); err-NNN / errd-NNN as for messages.
The Responses API's POST .../responses/compact (kind compact; OpenAI and Azure paths alike):
never streamed; a response.compaction object (id resp_pm_N, output one compaction item whose
encrypted_content is RS_CMP, usage as `text`'s); err-NNN as for responses.

Control paths: GET /_requests (JSON list: serial, seq, method, path, headers (lowercase),
header_list, body, body_sha256, kind, model, t), POST /_reset.
"""
import argparse
import hashlib
import json
import re
import socket
import struct
import sys
import threading
import time
import urllib.parse
import zlib

HOLD = 30.0
IDLE = 60.0
MAX_HEAD = 256 * 1024
VERBOSE = False

REASONS = {100: "Continue", 200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 408: "Request Timeout", 413: "Payload Too Large",
           422: "Unprocessable Entity", 424: "Failed Dependency", 429: "Too Many Requests",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
           504: "Gateway Timeout", 529: "Overloaded"}

# a Gemini thought signature with '+', '/' and '=' in it: must survive the round trip
THOUGHT_SIG = "+//+Pj8tc2lnLUEx++8="
ANTH_SIG = "EqQBCkYIARgCIkB0aGlua2luZy1zaWduYXR1cmU="


def log(*a):
    if VERBOSE:
        print("provmock:", *a, file=sys.stderr, flush=True)


# =======================================================================================
# scripted replies: blocks + finish + usage, rendered per provider

def T(*pieces):
    return {"kind": "text", "pieces": list(pieces)}


def R(pieces, sig):
    return {"kind": "thinking", "pieces": list(pieces), "sig": sig}


def C(cid, name, pieces):
    return {"kind": "tool", "id": cid, "name": name, "pieces": list(pieces)}


def U(i, out, cr=0, cw=0, reason=0):
    return {"in": i, "cr": cr, "cw": cw, "out": out, "reason": reason}


BASIC = U(11, 7)
TEXT_PIECES = ["Hello", " from", " \"prov\"", "mock\n", " \u2713 d\u00e9j\u00e0"]
TEXT = "".join(TEXT_PIECES)

SCRIPTS = {
    "text": {"blocks": [T(*TEXT_PIECES)], "finish": "stop", "usage": BASIC},
    "tool": {"blocks": [C("w1", "get_weather", ['{"ci', 'ty": "Pa', 'ris"}'])], "finish": "tool",
             "usage": U(20, 9)},
    "tools2": {"blocks": [T("Checking", " both."),
                          C("w1", "get_weather", ['{"city":', ' "Paris"}']),
                          C("t2", "get_time", ['{"tz": "Europe/Paris"}'])],
               "finish": "tool", "usage": U(30, 15)},
    "think": {"blocks": [R(["Let me ", "think", " it over."], ANTH_SIG), T("The answer", " is 4.")],
              "finish": "stop", "usage": U(11, 7, reason=5)},
    # cache read/write and reasoning tokens, per provider (PROVIDERS.md section 6)
    "usage": {"blocks": [T("cached ", "reply")], "finish": "stop",
              "usage": {"openai": U(300, 50, cr=1000, reason=30),
                        "anthropic": U(100, 50, cr=1000, cw=200),
                        "gemini": U(300, 50, cr=1000, reason=30),
                        "bedrock": U(100, 50, cr=1000, cw=200)}},
    "length": {"blocks": [T("Truncated", " tex")], "finish": "length", "usage": U(11, 2)},
    "filter": {"blocks": [T("I can", "not")], "finish": "filter", "usage": U(11, 2)},
    "json": {"blocks": [T('{"answer"', ': 42}')], "finish": "stop", "usage": U(15, 6)},
    # anthropic: a tool_use block without any input_json_delta (arguments must become "{}")
    "notool": {"blocks": [C("n1", "ping_server", [])], "finish": "tool", "usage": U(11, 3)},
    # gemini: a functionCall with a thoughtSignature
    "toolsig": {"blocks": [C("s1", "get_weather", ['{"city": "Paris"}'])], "finish": "tool",
                "usage": U(20, 9), "sig": THOUGHT_SIG},
    "mixed": {"blocks": [R(["Plan: call", " the tool \u00e9."], ANTH_SIG), T("Calling", " now \u2713."),
                         C("m1", "get_weather", ['{"city": ', '"Oslo"}'])],
              "finish": "tool", "usage": U(40, 20, reason=6)},
}

# a text block and five tool calls: more output items than a first allocation holds
SCRIPTS["tools6"] = {"blocks": [T("Six", " calls.")] +
                     [C("k%d" % i, "get_weather", ['{"city": ', '"C%d"}' % i]) for i in range(5)],
                     "finish": "tool", "usage": U(30, 25)}

# tool arguments with escapes, non-ASCII and a surrogate pair, split inside an escape sequence
ESC_ARGS = {"q": "Z\u00fcrich \"Old\" Town\n\\ \U0001F600", "n": [1, 2.5, None, True], "o": {}}
_esc = json.dumps(ESC_ARGS)
_cut = _esc.index('\\"') + 1
SCRIPTS["toolesc"] = {"blocks": [T("Looking up \u00ab", "Z\u00fcrich\u00bb."),
                                 C("e1", "lookup", [_esc[:5], _esc[5:_cut], _esc[_cut:]])],
                      "finish": "tool", "usage": U(25, 12)}

# badutf8: each @BADn@ is replaced by BAD_UTF8[n] in the bytes sent (json.dumps cannot write them)
BAD_UTF8 = [b"\xff\xfe", b"\xe2\x82", b"\xc0\xaf", b"\x80"]
BAD_UTF8_PIECES = ["A1 \u00e9 ", "@BAD0@", " B2 ", "@BAD1@", " C3 \u2713 ", "@BAD2@", " D4 ", "@BAD3@", " end"]
BAD_UTF8_SCRIPT = {"blocks": [T(*BAD_UTF8_PIECES)], "finish": "stop", "usage": BASIC}


def with_bad_utf8(data):
    for i, b in enumerate(BAD_UTF8):
        data = data.replace(b"@BAD%d@" % i, b)
    return data


# one very large delta (about 400 KB of JSON-escaped text) in a single event
BIG_TEXT = "0123456789 abcdef \u00e9\u2713 \"q\"\n" * 12000
SCRIPTS["big"] = {"blocks": [T(BIG_TEXT[:100], BIG_TEXT[100:])], "finish": "stop", "usage": U(11, 90000)}

# patch / patch2: the input a call of the request's own (custom) tool carries
PATCH_INPUT = "*** Begin Patch\n*** End Patch\n"
PATCH2_INPUT = "*** Begin Patch\n*** Add File: a \"q\".txt\n+caf\u00e9 \\ \u2713\n*** End Patch\n"
COUNT_BASE = 4200                          # count_tokens: COUNT_BASE + the number of messages
RS_CMP = "gAAAAABpm-compacted+/summary=="  # /responses/compact: the compaction item's encrypted_content

FINISH = {  # canonical -> native
    "openai": {"stop": "stop", "length": "length", "tool": "tool_calls", "filter": "content_filter"},
    "anthropic": {"stop": "end_turn", "length": "max_tokens", "tool": "tool_use", "filter": "refusal"},
    "gemini": {"stop": "STOP", "length": "MAX_TOKENS", "tool": "STOP", "filter": "SAFETY"},
    "bedrock": {"stop": "end_turn", "length": "max_tokens", "tool": "tool_use", "filter": "content_filtered"},
    # responses: "completed", else the incomplete_details.reason of an incomplete response
    "responses": {"stop": "completed", "length": "max_output_tokens", "tool": "completed",
                  "filter": "content_filter"},
}
ID_PREFIX = {"openai": "call_", "anthropic": "toolu_", "bedrock": "tooluse_", "responses": "call_"}


def script_usage(sc, kind):
    u = sc["usage"]
    if "in" not in u:
        u = u["openai" if kind == "responses" else kind]
    return u


def tool_id(kind, b):
    return ID_PREFIX.get(kind, "") + b["id"]


def args_of(b):
    s = "".join(b["pieces"])
    return json.loads(s) if s else {}


# =======================================================================================
# SSE and event-stream encoding

def sse_bytes(obj, event=None, le="\n"):
    data = obj if isinstance(obj, str) else json.dumps(obj)
    out = ""
    if event:
        out += "event: %s%s" % (event, le)
    out += "data: %s%s%s" % (data, le, le)
    return out.encode()


def _hdr_name(name):
    n = name.encode()
    return bytes([len(n)]) + n


def ev_header(name, value, typ=7):
    """One event-stream header; value as str (7), bytes (6), bool, int (2..5 by typ), ..."""
    if typ == 7:
        v = value.encode()
        return _hdr_name(name) + bytes([7]) + struct.pack(">H", len(v)) + v
    if typ == 6:
        return _hdr_name(name) + bytes([6]) + struct.pack(">H", len(value)) + value
    if typ in (0, 1):
        return _hdr_name(name) + bytes([typ])
    if typ == 2:
        return _hdr_name(name) + bytes([2]) + struct.pack(">b", value)
    if typ == 3:
        return _hdr_name(name) + bytes([3]) + struct.pack(">h", value)
    if typ == 4:
        return _hdr_name(name) + bytes([4]) + struct.pack(">i", value)
    if typ in (5, 8):
        return _hdr_name(name) + bytes([typ]) + struct.pack(">q", value)
    if typ == 9:
        return _hdr_name(name) + bytes([9]) + value
    raise ValueError("header type %r" % typ)


def ev_frame(headers, payload, bad_prelude=False, bad_crc=False):
    """total_len | headers_len | prelude CRC | headers | payload | message CRC (big-endian)."""
    h = b"".join(headers)
    total = 12 + len(h) + len(payload) + 4
    prelude = struct.pack(">II", total, len(h))
    pcrc = zlib.crc32(prelude) & 0xFFFFFFFF
    if bad_prelude:
        pcrc ^= 0x00010000
    msg = prelude + struct.pack(">I", pcrc) + h + payload
    mcrc = zlib.crc32(msg) & 0xFFFFFFFF
    if bad_crc:
        mcrc ^= 0xDEADBEEF
    return msg + struct.pack(">I", mcrc)


def ev_decode(data):
    """Frames of an event stream -> list of (headers dict, payload bytes); raises ValueError on a
    bad length or CRC. Used by the self-test and by the test suite."""
    out, i = [], 0
    while i < len(data):
        if len(data) - i < 16:
            raise ValueError("short frame at %d" % i)
        total, hl = struct.unpack(">II", data[i:i + 8])
        if zlib.crc32(data[i:i + 8]) & 0xFFFFFFFF != struct.unpack(">I", data[i + 8:i + 12])[0]:
            raise ValueError("prelude CRC at %d" % i)
        fr = data[i:i + total]
        if len(fr) < total or zlib.crc32(fr[:-4]) & 0xFFFFFFFF != struct.unpack(">I", fr[-4:])[0]:
            raise ValueError("message CRC at %d" % i)
        hd, j = {}, 12
        while j < 12 + hl:
            nl = fr[j]
            name = fr[j + 1:j + 1 + nl].decode()
            j += 1 + nl
            ty = fr[j]
            j += 1
            if ty in (0, 1):
                val = ty == 0
            elif ty in (6, 7):
                vl = struct.unpack(">H", fr[j:j + 2])[0]
                val = fr[j + 2:j + 2 + vl]
                val = val.decode() if ty == 7 else val
                j += 2 + vl
            else:
                size = {2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}[ty]
                val = fr[j:j + size]
                j += size
            hd[name] = val
        out.append((hd, fr[12 + hl:-4]))
        i += total
    return out


def br_event(etype, obj, typed=False, bad_crc=False, bad_prelude=False):
    hs = [ev_header(":event-type", etype), ev_header(":content-type", "application/json"),
          ev_header(":message-type", "event")]
    if typed:
        hs += [ev_header("x-t-true", None, 0), ev_header("x-t-false", None, 1),
               ev_header("x-t-i8", -5, 2), ev_header("x-t-i16", 300, 3), ev_header("x-t-i32", 70000, 4),
               ev_header("x-t-i64", 1 << 40, 5), ev_header("x-t-bytes", b"\x00\x01\xff", 6),
               ev_header("x-t-ts", 1735689600000, 8), ev_header("x-t-uuid", bytes(range(16)), 9)]
    obj = dict(obj)
    obj.setdefault("p", "abcdefghij")       # ConverseStream pads payloads with "p"
    return ev_frame(hs, json.dumps(obj).encode(), bad_prelude=bad_prelude, bad_crc=bad_crc)


def br_exception(etype, message):
    hs = [ev_header(":exception-type", etype), ev_header(":content-type", "application/json"),
          ev_header(":message-type", "exception")]
    return ev_frame(hs, json.dumps({"message": message}).encode())


# =======================================================================================
# renderers: a script -> a whole JSON body, or a list of (kind, bytes) stream events
# kinds: "pre" (no content yet), "open" (structure), "delta" (content), "post" (finish/usage)

class Reply:
    def __init__(self, kind, model, opts, include_usage=False):
        self.kind = kind
        self.model = model
        self.opts = opts
        self.include_usage = include_usage
        self.include = []       # responses: the request's include list
        self.le = "\r\n" if (kind == "gemini" and "lf" not in opts and "cr" not in opts) or "crlf" in opts \
            else "\r" if "cr" in opts else "\n"
        with _ID_LOCK:
            global _ID
            _ID += 1
            self.n = _ID


_ID = 0
_ID_LOCK = threading.Lock()


def oa_usage(u):
    d = {"prompt_tokens": u["in"] + u["cr"] + u["cw"], "completion_tokens": u["out"] + u["reason"],
         "total_tokens": u["in"] + u["cr"] + u["cw"] + u["out"] + u["reason"],
         "prompt_tokens_details": {"cached_tokens": u["cr"]},
         "completion_tokens_details": {"reasoning_tokens": u["reason"]}}
    if u["cw"]:
        d["prompt_tokens_details"]["cache_write_tokens"] = u["cw"]
    return d


def an_usage(u, out=None):
    return {"input_tokens": u["in"], "cache_creation_input_tokens": u["cw"],
            "cache_read_input_tokens": u["cr"],
            "output_tokens": u["out"] + u["reason"] if out is None else out}


def ge_usage(u, frac=1.0):
    cand = int(round(u["out"] * frac))
    th = int(round(u["reason"] * frac))
    d = {"promptTokenCount": u["in"] + u["cr"], "candidatesTokenCount": cand,
         "totalTokenCount": u["in"] + u["cr"] + cand + th}
    if u["reason"]:
        d["thoughtsTokenCount"] = th
    if u["cr"]:
        d["cachedContentTokenCount"] = u["cr"]
    return d


def br_usage(u):
    d = {"inputTokens": u["in"], "outputTokens": u["out"] + u["reason"],
         "totalTokens": u["in"] + u["cr"] + u["cw"] + u["out"] + u["reason"]}
    if u["cr"] or u["cw"]:
        d["cacheReadInputTokens"] = u["cr"]
        d["cacheWriteInputTokens"] = u["cw"]
    return d


# ---- OpenAI / Azure

def oa_full(rp, sc, finish):
    u = script_usage(sc, "openai")
    text = "".join("".join(b["pieces"]) for b in sc["blocks"] if b["kind"] == "text")
    reasoning = "".join("".join(b["pieces"]) for b in sc["blocks"] if b["kind"] == "thinking")
    calls = [{"id": tool_id("openai", b), "type": "function",
              "function": {"name": b["name"], "arguments": "".join(b["pieces"]) or "{}"}}
             for b in sc["blocks"] if b["kind"] == "tool"]
    msg = {"role": "assistant", "content": text if text or not calls else None, "refusal": None}
    if reasoning:
        msg["reasoning_content"] = reasoning
    if calls:
        msg["tool_calls"] = calls
    return {"id": "chatcmpl-pm-%d" % rp.n, "object": "chat.completion", "created": 1735689600,
            "model": rp.model, "system_fingerprint": "fp_pm",
            "choices": [{"index": 0, "message": msg, "logprobs": None, "finish_reason": finish}],
            "usage": oa_usage(u)}


def oa_stream(rp, sc, finish):
    u = script_usage(sc, "openai")
    base = {"id": "chatcmpl-pm-%d" % rp.n, "object": "chat.completion.chunk", "created": 1735689600,
            "model": rp.model, "system_fingerprint": "fp_pm"}

    def ch(delta, fin=None):
        d = dict(base)
        d["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": fin}]
        return sse_bytes(d, le=rp.le)
    ev = []
    if rp.kind == "azure":   # Azure opens with a choices:[] chunk carrying prompt_filter_results
        d = dict(base)
        d.update({"id": "", "model": "", "choices": [],
                  "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]})
        ev.append(("pre", sse_bytes(d, le=rp.le)))
    ev.append(("pre", ch({"role": "assistant", "content": ""})))
    if "combined" in rp.opts:   # thinking, text and every call in ONE chunk, with the finish_reason
        d = {}
        th = "".join("".join(b["pieces"]) for b in sc["blocks"] if b["kind"] == "thinking")
        tx = "".join("".join(b["pieces"]) for b in sc["blocks"] if b["kind"] == "text")
        if th:
            d["reasoning_content"] = th
        if tx:
            d["content"] = tx
        calls = [b for b in sc["blocks"] if b["kind"] == "tool"]
        if calls:
            d["tool_calls"] = [{"index": i, "id": tool_id("openai", b), "type": "function",
                                "function": {"name": b["name"], "arguments": "".join(b["pieces"]) or "{}"}}
                               for i, b in enumerate(calls)]
        ev.append(("delta", ch(d, finish)))
        if rp.include_usage:
            d = dict(base)
            d.update({"choices": [], "usage": oa_usage(u)})
            ev.append(("post", sse_bytes(d, le=rp.le)))
        ev.append(("post", sse_bytes("[DONE]", le=rp.le)))
        return ev
    ti = 0
    for b in sc["blocks"]:
        if b["kind"] == "thinking":
            ev += [("delta", ch({"reasoning_content": p})) for p in b["pieces"]]
        elif b["kind"] == "text":
            ev += [("delta", ch({"content": p})) for p in b["pieces"]]
        else:
            ev.append(("open", ch({"tool_calls": [{"index": ti, "id": tool_id("openai", b), "type": "function",
                                                   "function": {"name": b["name"], "arguments": ""}}]})))
            ev += [("delta", ch({"tool_calls": [{"index": ti, "function": {"arguments": p}}]}))
                   for p in b["pieces"] or ["{}"]]
            ti += 1
    if "usagefinish" in rp.opts and rp.include_usage:     # usage and finish_reason in one chunk
        d = dict(base)
        d["choices"] = [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}]
        d["usage"] = oa_usage(u)
        ev.append(("post", sse_bytes(d, le=rp.le)))
    else:
        ev.append(("post", ch({}, finish)))
    if rp.include_usage and "usagefinish" not in rp.opts:
        d = dict(base)
        d.update({"choices": None if "choicesnull" in rp.opts else [], "usage": oa_usage(u)})  # vLLM: null
        ev.append(("post", sse_bytes(d, le=rp.le)))
    ev.append(("post", sse_bytes("[DONE]", le=rp.le)))
    return ev


def oa_error_obj(status, message=None, etype=None, code=None):
    if etype is None:
        etype = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_denied",
                 404: "invalid_request_error", 429: "rate_limit_exceeded"}.get(status, "server_error")
    if code is None:
        code = {400: "context_length_exceeded", 401: "invalid_api_key", 404: "model_not_found",
                429: "rate_limit_exceeded"}.get(status)
    return {"error": {"message": message or "provmock openai %d" % status, "type": etype,
                      "param": None, "code": code}}


# ---- OpenAI Responses API

RS_ENC = "gAAAAABpm-rs-encrypted+/content=="    # a reasoning item's opaque encrypted_content


def rs_usage(u):
    i, o = u["in"] + u["cr"] + u["cw"], u["out"] + u["reason"]
    return {"input_tokens": i, "input_tokens_details": {"cached_tokens": u["cr"]},
            "output_tokens": o, "output_tokens_details": {"reasoning_tokens": u["reason"]},
            "total_tokens": i + o}


def rs_status(finish):
    return "completed" if finish == "completed" else "incomplete"


def rs_object(rp, status, output, usage, finish=None, error=None):
    return {"id": "resp_pm_%d" % rp.n, "object": "response", "created_at": 1735689600, "status": status,
            "background": False, "error": error,
            "incomplete_details": {"reason": finish} if status == "incomplete" else None,
            "instructions": None, "max_output_tokens": None, "model": rp.model, "output": output,
            "parallel_tool_calls": True, "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None}, "service_tier": "default", "store": True,
            "temperature": 1.0, "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [],
            "top_p": 1.0, "truncation": "disabled", "usage": usage, "user": None, "metadata": {}}


def rs_items(rp, sc):
    """The output items of a script, complete (as in the final response object)."""
    items = []
    for i, b in enumerate(sc["blocks"]):
        joined = "".join(b["pieces"])
        if b["kind"] == "thinking":
            it = {"id": "rs_pm%d_%d" % (rp.n, i), "type": "reasoning",
                  "summary": [{"type": "summary_text", "text": joined}]}
            if "reasoning.encrypted_content" in rp.include:
                it["encrypted_content"] = RS_ENC
        elif b["kind"] == "text":
            it = {"id": "msg_pm%d_%d" % (rp.n, i), "type": "message", "status": "completed", "role": "assistant",
                  "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": joined}]}
        elif b.get("custom"):   # patch: the Responses API's answer to a custom tool (free-text input)
            it = {"id": "ctc_pm%d_%d" % (rp.n, i), "type": "custom_tool_call", "status": "completed",
                  "call_id": tool_id("responses", b), "name": b["name"], "input": joined}
        else:
            it = {"id": "fc_pm%d_%d" % (rp.n, i), "type": "function_call", "status": "completed",
                  "arguments": joined or "{}", "call_id": tool_id("responses", b), "name": b["name"]}
            if b.get("ns"):
                it["namespace"] = b["ns"]
        items.append(it)
    return items


def rs_full(rp, sc, finish):
    return rs_object(rp, rs_status(finish), rs_items(rp, sc), rs_usage(script_usage(sc, "responses")), finish)


def rs_event(rp, name, seq, obj):
    d = {"type": name, "sequence_number": seq}
    d.update(obj)
    return sse_bytes(d, event=name, le=rp.le)


def rs_stream(rp, sc, finish):
    seq = [0]

    def e(name, obj):
        seq[0] += 1
        return rs_event(rp, name, seq[0] - 1, obj)
    start = rs_object(rp, "in_progress", [], None)
    ev = [("pre", e("response.created", {"response": start})),
          ("pre", e("response.in_progress", {"response": start}))]
    items = rs_items(rp, sc)
    for i, (b, it) in enumerate(zip(sc["blocks"], items)):
        ref = {"item_id": it["id"], "output_index": i}
        if b["kind"] == "thinking":
            text = it["summary"][0]["text"]
            ev.append(("open", e("response.output_item.added", {"output_index": i, "item": {
                "id": it["id"], "type": "reasoning", "summary": []}})))
            ev.append(("open", e("response.reasoning_summary_part.added", dict(ref, summary_index=0, part={
                "type": "summary_text", "text": ""}))))
            ev += [("delta", e("response.reasoning_summary_text.delta", dict(ref, summary_index=0, delta=p)))
                   for p in b["pieces"]]
            ev.append(("open", e("response.reasoning_summary_text.done", dict(ref, summary_index=0, text=text))))
            ev.append(("open", e("response.reasoning_summary_part.done", dict(ref, summary_index=0, part={
                "type": "summary_text", "text": text}))))
        elif b["kind"] == "text":
            part = it["content"][0]
            ev.append(("open", e("response.output_item.added", {"output_index": i, "item": {
                "id": it["id"], "type": "message", "status": "in_progress", "content": [], "role": "assistant"}})))
            ev.append(("open", e("response.content_part.added", dict(ref, content_index=0, part={
                "type": "output_text", "annotations": [], "logprobs": [], "text": ""}))))
            ev += [("delta", e("response.output_text.delta", dict(ref, content_index=0, delta=p, logprobs=[])))
                   for p in b["pieces"]]
            ev.append(("open", e("response.output_text.done", dict(ref, content_index=0, text=part["text"],
                                                                   logprobs=[]))))
            ev.append(("open", e("response.content_part.done", dict(ref, content_index=0, part=part))))
        elif b.get("custom"):
            ev.append(("open", e("response.output_item.added", {"output_index": i, "item": dict(
                it, status="in_progress", input="")})))
            ev += [("delta", e("response.custom_tool_call_input.delta", dict(ref, delta=p))) for p in b["pieces"]]
            ev.append(("open", e("response.custom_tool_call_input.done", dict(ref, input=it["input"]))))
        else:
            ev.append(("open", e("response.output_item.added", {"output_index": i, "item": dict(
                it, status="in_progress", arguments="")})))
            ev += [("delta", e("response.function_call_arguments.delta", dict(ref, delta=p)))
                   for p in b["pieces"] or ["{}"]]
            ev.append(("open", e("response.function_call_arguments.done", dict(ref, arguments=it["arguments"]))))
        ev.append(("open", e("response.output_item.done", {"output_index": i, "item": it})))
    st = rs_status(finish)
    ev.append(("post", e("response." + st, {"response": rs_object(
        rp, st, items, rs_usage(script_usage(sc, "responses")), finish)})))
    return ev


def rs_fail_events(rp, seq, early):
    """An in-stream failure: `error`, then `response.failed`, numbered from seq on."""
    msg = "provmock responses %s stream error" % ("early" if early else "mid")
    return [rs_event(rp, "error", seq, {"code": "server_error", "message": msg, "param": None}),
            rs_event(rp, "response.failed", seq + 1, {"response": rs_object(
                rp, "failed", [], None, error={"code": "server_error", "message": msg})})]


# ---- Anthropic

def an_full(rp, sc, finish, json_tool=False):
    u = script_usage(sc, "anthropic")
    content = []
    for b in sc["blocks"]:
        if b["kind"] == "thinking":
            content.append({"type": "thinking", "thinking": "".join(b["pieces"]), "signature": b["sig"]})
        elif b["kind"] == "text":
            if json_tool:
                content.append({"type": "tool_use", "id": "toolu_json%d" % rp.n, "name": "json_response",
                                "input": json.loads("".join(b["pieces"]))})
            else:
                content.append({"type": "text", "text": "".join(b["pieces"])})
        else:
            content.append({"type": "tool_use", "id": tool_id("anthropic", b), "name": b["name"],
                            "input": args_of(b)})
    return {"id": "msg_pm_%d" % rp.n, "type": "message", "role": "assistant", "model": rp.model,
            "content": content, "stop_reason": finish,
            "stop_sequence": "END" if finish == "stop_sequence" else None, "usage": an_usage(u)}


def an_stream(rp, sc, finish, json_tool=False):
    u = script_usage(sc, "anthropic")
    le = rp.le

    def e(name, obj):
        d = {"type": name}
        d.update(obj)
        return sse_bytes(d, event=name, le=le)
    ev = [("pre", e("message_start", {"message": {
        "id": "msg_pm_%d" % rp.n, "type": "message", "role": "assistant", "model": rp.model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": an_usage(u, out=1)}})),
        ("pre", e("ping", {}))]
    for i, b in enumerate(sc["blocks"]):
        if b["kind"] == "thinking":
            ev.append(("open", e("content_block_start", {"index": i, "content_block":
                                                         {"type": "thinking", "thinking": "", "signature": ""}})))
            ev += [("delta", e("content_block_delta", {"index": i, "delta": {"type": "thinking_delta",
                                                                             "thinking": p}}))
                   for p in b["pieces"]]
            ev.append(("delta", e("content_block_delta", {"index": i, "delta": {"type": "signature_delta",
                                                                                "signature": b["sig"]}})))
        elif b["kind"] == "text" and not json_tool:
            ev.append(("open", e("content_block_start", {"index": i, "content_block": {"type": "text",
                                                                                       "text": ""}})))
            ev += [("delta", e("content_block_delta", {"index": i, "delta": {"type": "text_delta", "text": p}}))
                   for p in b["pieces"]]
        else:
            cid = "toolu_json%d" % rp.n if b["kind"] == "text" else tool_id("anthropic", b)
            name = "json_response" if b["kind"] == "text" else b["name"]
            ev.append(("open", e("content_block_start", {"index": i, "content_block": {
                "type": "tool_use", "id": cid, "name": name, "input": {}}})))
            if b["pieces"]:
                ev.append(("open", e("content_block_delta", {"index": i, "delta": {"type": "input_json_delta",
                                                                                   "partial_json": ""}})))
            ev += [("delta", e("content_block_delta", {"index": i, "delta": {"type": "input_json_delta",
                                                                             "partial_json": p}}))
                   for p in b["pieces"]]
        ev.append(("open", e("content_block_stop", {"index": i})))
        if i == 0:
            ev.append(("open", e("ping", {})))
    du = {"output_tokens": u["out"] + u["reason"]}
    if "repeat" in rp.opts:
        du = an_usage(u)
    ev.append(("post", e("message_delta", {"delta": {"stop_reason": finish,
                                                     "stop_sequence": "END" if finish == "stop_sequence" else None},
                                           "usage": du})))
    ev.append(("post", e("message_stop", {})))
    return ev


AN_ERR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                500: "api_error", 529: "overloaded_error"}


def an_error_obj(status, message=None):
    return {"type": "error", "error": {"type": AN_ERR_TYPES.get(status, "api_error"),
                                       "message": message or "provmock anthropic %d" % status},
            "request_id": "req_provmock"}


# ---- Gemini

def ge_parts(rp, sc, b):
    if b["kind"] == "thinking":
        return [{"text": p, "thought": True} for p in b["pieces"]]
    if b["kind"] == "text":
        return [{"text": p} for p in b["pieces"]]
    part = {"functionCall": {"name": b["name"], "args": args_of(b)}}
    if sc.get("sig"):
        part["thoughtSignature"] = sc["sig"]
    return [part]


def ge_full(rp, sc, finish):
    u = script_usage(sc, "gemini")
    parts = []
    for b in sc["blocks"]:
        if b["kind"] == "text":
            parts.append({"text": "".join(b["pieces"])})
        elif b["kind"] == "thinking":
            parts.append({"text": "".join(b["pieces"]), "thought": True})
        else:
            parts += ge_parts(rp, sc, b)
    return {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0,
                            "safetyRatings": []}],
            "usageMetadata": ge_usage(u), "modelVersion": rp.model, "responseId": "pm-resp-%d" % rp.n}


def ge_stream(rp, sc, finish):
    u = script_usage(sc, "gemini")
    chunks = []
    for b in sc["blocks"]:
        for p in ge_parts(rp, sc, b):
            chunks.append(p)
    ev, n = [], len(chunks)
    for i, p in enumerate(chunks):   # usageMetadata is a running total: the last one counts
        ev.append(("delta", sse_bytes({"candidates": [{"content": {"role": "model", "parts": [p]}, "index": 0}],
                                       "usageMetadata": ge_usage(u, (i + 1) / (n + 1)),
                                       "modelVersion": rp.model, "responseId": "pm-resp-%d" % rp.n},
                                      le=rp.le)))
    # the finishReason comes in a later chunk than the last function call
    ev.append(("post", sse_bytes({"candidates": [{"content": {"role": "model", "parts": [{"text": ""}]},
                                                  "finishReason": finish, "index": 0}],
                                  "usageMetadata": ge_usage(u), "modelVersion": rp.model,
                                  "responseId": "pm-resp-%d" % rp.n}, le=rp.le)))
    return ev


GE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
             429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def ge_error_obj(status, message=None, retry_delay="17s"):
    e = {"code": status, "message": message or "provmock gemini %d" % status,
         "status": GE_STATUS.get(status, "UNKNOWN")}
    if status == 429:
        e["details"] = [{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                         "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content"
                                                        "_free_tier_requests", "quotaId": "PerMinute"}]},
                        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}]
    elif status == 400:
        e["details"] = [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                         "fieldViolations": [{"field": "contents", "description": "bad"}]}]
    return {"error": e}


# ---- Bedrock

def br_full(rp, sc, finish):
    u = script_usage(sc, "bedrock")
    content = []
    for b in sc["blocks"]:
        if b["kind"] == "thinking":
            content.append({"reasoningContent": {"reasoningText": {"text": "".join(b["pieces"]),
                                                                   "signature": b["sig"]}}})
        elif b["kind"] == "text":
            content.append({"text": "".join(b["pieces"])})
        else:
            content.append({"toolUse": {"toolUseId": tool_id("bedrock", b), "name": b["name"],
                                        "input": args_of(b)}})
    return {"output": {"message": {"role": "assistant", "content": content}}, "stopReason": finish,
            "usage": br_usage(u), "metrics": {"latencyMs": 42}}


def br_stream(rp, sc, finish):
    u = script_usage(sc, "bedrock")
    ty = "typed" in rp.opts
    ev = [("pre", br_event("messageStart", {"role": "assistant"}, typed=ty))]
    for i, b in enumerate(sc["blocks"]):
        if b["kind"] == "thinking":
            ev += [("delta", br_event("contentBlockDelta", {"contentBlockIndex": i, "delta": {
                "reasoningContent": {"text": p}}}, typed=ty)) for p in b["pieces"]]
            ev.append(("delta", br_event("contentBlockDelta", {"contentBlockIndex": i, "delta": {
                "reasoningContent": {"signature": b["sig"]}}}, typed=ty)))
        elif b["kind"] == "text":
            ev += [("delta", br_event("contentBlockDelta", {"contentBlockIndex": i, "delta": {"text": p}},
                                      typed=ty)) for p in b["pieces"]]
        else:
            ev.append(("open", br_event("contentBlockStart", {"contentBlockIndex": i, "start": {
                "toolUse": {"toolUseId": tool_id("bedrock", b), "name": b["name"]}}}, typed=ty)))
            ev += [("delta", br_event("contentBlockDelta", {"contentBlockIndex": i, "delta": {
                "toolUse": {"input": p}}}, typed=ty)) for p in b["pieces"] or [""]]
        ev.append(("open", br_event("contentBlockStop", {"contentBlockIndex": i}, typed=ty)))
    ev.append(("post", br_event("messageStop", {"stopReason": finish}, typed=ty)))
    ev.append(("post", br_event("metadata", {"usage": br_usage(u), "metrics": {"latencyMs": 42}}, typed=ty)))
    return ev


BR_ERR_TYPES = {400: "ValidationException", 403: "AccessDeniedException", 404: "ResourceNotFoundException",
                408: "ModelTimeoutException", 424: "ModelErrorException", 429: "ThrottlingException",
                500: "InternalServerException", 503: "ServiceUnavailableException",
                502: "InternalServerException", 504: "ModelTimeoutException"}


# =======================================================================================
# HTTP plumbing (raw sockets, as tests/mockup.py)

class ClientGone(Exception):
    pass


class BadRequest(Exception):
    pass


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = []
        self.serial = 0
        self.flaky = {}

    def next_serial(self):
        with self.lock:
            self.serial += 1
            return self.serial


STATE = State()


class Request:
    def __init__(self, method, target, version, header_list, body):
        self.method = method
        self.target = target
        self.path, _, self.query = target.partition("?")
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
        self.seq = 0

    def _more(self):
        try:
            d = self.sock.recv(65536)
        except (socket.timeout, OSError) as e:
            raise ClientGone(str(e))
        if not d:
            raise ClientGone("eof")
        self.buf += d

    def read_line(self):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[:i + 1], self.buf[i + 1:]
                return line.rstrip(b"\r\n")
            if len(self.buf) > MAX_HEAD:
                raise BadRequest("line too long")
            self._more()

    def read_exact(self, n):
        while len(self.buf) < n:
            self._more()
        d, self.buf = self.buf[:n], self.buf[n:]
        return d

    def read_request(self):
        self.sock.settimeout(IDLE)
        if not self.buf:
            try:
                self._more()
            except ClientGone:
                return None
        self.sock.settimeout(HOLD)
        line = self.read_line()
        while line == b"":
            line = self.read_line()
        parts = line.decode("latin-1").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise BadRequest("bad request line %r" % line[:80])
        headers = []
        while True:
            h = self.read_line()
            if h == b"":
                break
            if b":" not in h:
                raise BadRequest("bad header line %r" % h[:80])
            k, v = h.split(b":", 1)
            headers.append((k.decode("latin-1").strip(), v.decode("latin-1").strip()))
        req = Request(parts[0], parts[1], parts[2], headers, b"")
        if "100-continue" in req.headers.get("expect", "").lower():
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in req.headers.get("transfer-encoding", "").lower():
            body = []
            while True:
                size = int(self.read_line().split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.read_line() != b"":
                        pass
                    break
                body.append(self.read_exact(size))
                if self.read_exact(2) != b"\r\n":
                    raise BadRequest("chunk not followed by CRLF")
            req.body = b"".join(body)
        elif "content-length" in req.headers:
            req.body = self.read_exact(int(req.headers["content-length"]))
        self.seq += 1
        return req

    def send(self, data):
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise ClientGone(str(e))

    def send_bytewise(self, data, delay=0.0002):
        for i in range(len(data)):
            self.send(data[i:i + 1])
            if delay:
                time.sleep(delay)


def head(status, headers):
    lines = ["HTTP/1.1 %d %s" % (status, REASONS.get(status, "Status"))]
    lines += ["%s: %s" % kv for kv in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(data):
    return b"%x\r\n" % len(data) + data + b"\r\n"


def send_json(conn, status, obj, extra=(), opts=()):
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()    # bytes: sent as they are
    data = head(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
                + list(extra)) + body
    if "1b" in opts:
        conn.send_bytewise(data)
    else:
        conn.send(data)
    return True


def send_stream(conn, ctype, parts, opts, extra=()):
    """parts: the stream's pieces (bytes); delivery per opts. Returns keep-alive."""
    parts = [p for p in parts if p]
    if "nolast" in opts and parts:
        last = parts[-1]
        for end in (b"\r\n\r\n", b"\n\n", b"\r\r"):
            if last.endswith(end):
                parts[-1] = last[:-len(end) // 2]
                break
    hdrs = [("Content-Type", ctype), ("Cache-Control", "no-cache")] + list(extra)
    split = [o for o in opts if o.startswith("split")]
    if "cl" in opts:
        conn.send(head(200, hdrs + [("Connection", "close")]))
        body = b"".join(parts)
        if "1b" in opts:
            conn.send_bytewise(body)
        else:
            for p in parts:
                conn.send(p)
        return False
    h = head(200, hdrs + [("Transfer-Encoding", "chunked")])
    if split:
        body = b"".join(parts)
        k = max(0, min(len(body), int(split[0][5:] or "0")))
        conn.send(h + (chunk(body[:k]) if k else b""))
        time.sleep(0.005)
        conn.send((chunk(body[k:]) if k < len(body) else b"") + b"0\r\n\r\n")
        return True
    if "1b" in opts:
        conn.send_bytewise(h + b"".join(chunk(p) for p in parts) + b"0\r\n\r\n")
        return True
    conn.send(h)
    for p in parts:
        conn.send(chunk(p))
    conn.send(b"0\r\n\r\n")
    return True


# =======================================================================================
# request classification and scenarios

MARK_RE = re.compile(r"mk[0-9a-f]{8}")


def classify(req, body):
    """(kind, model, stream, include_usage) from the path and body; kind None: no route."""
    path = urllib.parse.unquote(req.path)
    raw = req.path
    so = body.get("stream_options") if isinstance(body, dict) else None
    inc = isinstance(so, dict) and so.get("include_usage") is True
    stream_flag = isinstance(body, dict) and body.get("stream") is True
    m = re.search(r"/models/([^/]+?):(generateContent|streamGenerateContent)$", raw)
    if m:
        return "gemini", urllib.parse.unquote(m.group(1)), m.group(2) == "streamGenerateContent", False
    m = re.search(r"/model/([^/]+)/(converse|converse-stream)$", raw)
    if m:
        return "bedrock", urllib.parse.unquote(m.group(1)), m.group(2) == "converse-stream", False
    m = re.search(r"/openai/deployments/([^/]+)/chat/completions$", raw)
    if m:
        return "azure", urllib.parse.unquote(m.group(1)), stream_flag, inc
    if path.endswith("/messages/count_tokens"):
        return "count_tokens", str(body.get("model", "")), False, False
    if path.endswith("/responses/compact"):    # OpenAI .../v1/responses/compact, Azure .../openai/responses/compact
        return "compact", str(body.get("model", "")), stream_flag, False
    if path.endswith("/messages"):
        return "anthropic", str(body.get("model", "")), stream_flag, False
    if path.endswith("/chat/completions"):
        return "openai", str(body.get("model", "")), stream_flag, inc
    if path.endswith("/responses"):     # OpenAI .../v1/responses, Azure .../openai/responses?api-version=
        return "responses", str(body.get("model", "")), stream_flag, False
    return None, "", False, False


def parse_model(model):
    base = model.split("#", 1)[0]
    parts = base.split("~")
    return parts[0], set(parts[1:])


def wire(kind):
    return "openai" if kind == "azure" else kind


def error_reply(conn, kind, status, opts, message=None, retry_delay="17s", etype=None):
    w = wire(kind)
    if w in ("openai", "responses"):
        extra = [("Retry-After", "0")] if status == 429 else []
        return send_json(conn, status, oa_error_obj(status, message), extra, opts)
    if w == "anthropic":
        extra = [("request-id", "req_provmock")]
        if status in (429, 529):
            extra.append(("retry-after", "0"))
        return send_json(conn, status, an_error_obj(status, message), extra, opts)
    if w == "gemini":
        return send_json(conn, status, ge_error_obj(status, message, retry_delay), (), opts)
    et = etype or BR_ERR_TYPES.get(status, "InternalServerException")
    return send_json(conn, status, {"message": message or "provmock bedrock %d" % status},
                     [("x-amzn-ErrorType", et + ":http://internal.amazon.com/coral/com.amazon.bedrock/"),
                      ("x-amzn-RequestId", "pm-req-1")], opts)


def stream_error_event(kind, le, early):
    """The provider's in-stream error (mid-stream failure)."""
    w = wire(kind)
    if w == "openai":
        return sse_bytes({"error": {"message": "provmock openai %s stream error" % ("early" if early else "mid"),
                                    "type": "server_error", "param": None, "code": None}}, le=le)
    if w == "anthropic":
        return sse_bytes({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
                         event="error", le=le)
    if w == "gemini":
        return sse_bytes({"error": {"code": 503, "message": "provmock gemini stream error: The model is "
                                    "overloaded", "status": "UNAVAILABLE"}}, le=le)
    if early:
        return br_exception("throttlingException", "provmock bedrock: Too many tokens, please wait")
    return br_exception("modelStreamErrorException", "provmock bedrock: model stream error")


def render(kind, rp, scen, stream, script=None):
    """(body object) or (list of (kind, bytes)) for a scripted scenario (or the script given);
    None if unknown."""
    w = wire(kind)
    if script is not None:
        sc = script
        finish = FINISH[w][sc["finish"]]
    elif scen.startswith("fin-"):
        sc = {"blocks": [T("ok")], "finish": None, "usage": BASIC}
        finish = scen[4:]
    elif scen in SCRIPTS or scen == "badutf8":
        sc = SCRIPTS.get(scen, BAD_UTF8_SCRIPT)
        finish = FINISH[w][sc["finish"]]
    else:
        return None
    json_tool = scen == "json" and w == "anthropic"
    if json_tool:
        finish = "tool_use"
    if w == "openai":
        return oa_stream(rp, sc, finish) if stream else oa_full(rp, sc, finish)
    if w == "responses":
        return rs_stream(rp, sc, finish) if stream else rs_full(rp, sc, finish)
    if w == "anthropic":
        return an_stream(rp, sc, finish, json_tool) if stream else an_full(rp, sc, finish, json_tool)
    if w == "gemini":
        return ge_stream(rp, sc, finish) if stream else ge_full(rp, sc, finish)
    return br_stream(rp, sc, finish) if stream else br_full(rp, sc, finish)


def sse_transform(parts, opts, le):
    """Delivery options that change the SSE text itself (not how it is sent)."""
    L = le.encode()
    out = []
    for i, p in enumerate(parts):
        if "multiline" in opts:     # the JSON spread over several data: lines (joined with \n)
            p = p.replace(b', "', b"," + L + b'data: "')
        if "fields" in opts:        # id: and retry: fields and a comment line inside the event
            p = b"id: " + str(i).encode() + L + b"retry: 1000" + L + b": inside" + L + p
        if "comments" in opts:      # keep-alive comment events between events
            out.append(b": OPENROUTER PROCESSING" + L + L)
        if "unknown" in opts:       # an event type nobody knows yet (Anthropic's versioning policy)
            out.append(b"event: future_event" + L + b'data: {"type": "future_event", "x": 1}' + L + L)
        out.append(p)
    return out


def stream_ctype(kind):
    return "application/vnd.amazon.eventstream" if kind == "bedrock" else "text/event-stream"


def request_tools(kind, body):
    """The tools a request declares, in order, as (name, custom, namespace): the names the
    provider sees (a Responses namespace group's functions one by one)."""
    w = wire(kind)
    out = []

    def add(name, custom=False, ns=None):
        if isinstance(name, str) and name:
            out.append((name, custom, ns))
    if w == "bedrock":
        for t in ((body.get("toolConfig") or {}).get("tools") or []):
            add(((t or {}).get("toolSpec") or {}).get("name"))
    elif w == "gemini":
        for t in body.get("tools") or []:
            for f in (t or {}).get("functionDeclarations") or []:
                add((f or {}).get("name"))
    else:
        for t in body.get("tools") or []:
            if not isinstance(t, dict):
                continue
            if w == "openai":
                add((t.get("function") or {}).get("name"))
            elif w == "anthropic":
                add(t.get("name"))
            elif t.get("type") == "namespace":
                for f in t.get("tools") or []:
                    add((f or {}).get("name"), (f or {}).get("type") == "custom", t.get("name"))
            elif t.get("type") in ("function", "custom"):
                add(t.get("name"), t.get("type") == "custom")
    return out


def patch_call(kind, cid, tool, text, more=None):
    """A block calling tool (name, custom, namespace) with `text` as its input: the arguments
    {"input": text} (and the members of `more`) in three pieces (one cut inside an escape), or on
    the Responses wire for a custom tool the text itself in three pieces."""
    name, custom, ns = tool
    if wire(kind) == "responses" and custom:
        s = text
    else:
        s = json.dumps(dict({"input": text}, **(more or {})))
    k = s.find("\\") + 1 if "\\" in s else len(s) // 2
    b = C(cid, name, [s[:5], s[5:k], s[k:]])
    if wire(kind) == "responses":
        b["custom"] = custom
        b["ns"] = ns
    return b


def patch_script(kind, scen, body):
    tools = request_tools(kind, body)
    if not tools:
        return None
    more = {"note": "more than the input", "n": list(range(20))} if scen == "patchx" else None
    blocks = [patch_call(kind, "p1", tools[0], PATCH_INPUT, more)]
    if scen == "patch2":
        blocks = [T("Patching", ".")] + blocks + [patch_call(kind, "p2", tools[min(1, len(tools) - 1)],
                                                             PATCH2_INPUT)]
    return {"blocks": blocks, "finish": "tool", "usage": U(20, 9)}


def errd_obj(status):
    """errd-NNN: an Anthropic error body with more in it than type and message."""
    return {"type": "error", "error": {"type": AN_ERR_TYPES.get(status, "api_error"),
                                       "message": "provmock anthropic %d with details" % status,
                                       "details": {"error_visibility": "user_facing", "field": "messages.0",
                                                   "codes": [status, "x\u00e9"]}},
            "request_id": "req_provmock_d", "x_extra": None}


def answer_count_tokens(conn, body, model):
    """Anthropic's count_tokens."""
    scen, opts = parse_model(model)
    m = re.match(r"err(d?)-(\d{3})$", scen)
    if m and m.group(1):
        return send_json(conn, int(m.group(2)), errd_obj(int(m.group(2))), [("request-id", "req_provmock_d")], opts)
    if m:
        return error_reply(conn, "anthropic", int(m.group(2)), opts)
    msgs = body.get("messages")
    return send_json(conn, 200, {"input_tokens": COUNT_BASE + (len(msgs) if isinstance(msgs, list) else 0)},
                     [("request-id", "req_provmock_c")], opts)


def answer_compact(conn, body, model):
    """The Responses API's compaction endpoint: one compaction item, never a stream."""
    scen, opts = parse_model(model)
    m = re.match(r"err-(\d{3})$", scen)
    if m:
        return error_reply(conn, "responses", int(m.group(1)), opts)
    rp = Reply("responses", model, opts)
    return send_json(conn, 200, {"id": "resp_pm_%d" % rp.n, "object": "response.compaction", "created_at": 1735689600,
                                 "output": [{"id": "cmp_pm%d" % rp.n, "type": "compaction",
                                             "encrypted_content": RS_CMP}],
                                 "usage": rs_usage(BASIC)}, (), opts)


def answer(conn, req, body, kind, model, stream, include_usage):
    scen, opts = parse_model(model)
    rp = Reply(kind, model, opts, include_usage)
    inc = body.get("include")
    rp.include = [x for x in inc if isinstance(x, str)] if isinstance(inc, list) else []
    w = wire(kind)
    m = re.match(r"err-(\d{3})$", scen)
    if m:
        return error_reply(conn, kind, int(m.group(1)), opts)
    if scen == "err-quota":
        return send_json(conn, 429, oa_error_obj(429, "You exceeded your current quota",
                                                 "insufficient_quota", "insufficient_quota"), (), opts)
    if scen == "err-424s":
        return error_reply(conn, kind, 424, opts, "provmock bedrock: model stream error",
                           etype="ModelStreamErrorException")
    m = re.match(r"errd-(\d{3})$", scen)
    if m and w == "anthropic":
        return send_json(conn, int(m.group(1)), errd_obj(int(m.group(1))), [("request-id", "req_provmock_d")], opts)
    if m:
        return error_reply(conn, kind, int(m.group(1)), opts)
    if scen in ("patch", "patch2", "patchx"):
        sc = patch_script(kind, scen, body)
        if sc is None:
            return error_reply(conn, kind, 400, opts, "provmock: %s needs a declared tool" % scen)
        out = render(kind, rp, scen, stream, sc)
        if not stream:
            return send_json(conn, 200, out, (), opts)
        parts = [b for _, b in out]
        if w != "bedrock":
            parts = sse_transform(parts, opts, rp.le)
        return send_stream(conn, stream_ctype(kind), parts, opts)
    if scen == "flaky":
        mk = MARK_RE.search(req.body.decode("utf-8", "replace"))
        key = (kind, model, mk.group(0) if mk else "")
        with STATE.lock:
            n = STATE.flaky.get(key, 0)
            STATE.flaky[key] = n + 1
        if n == 0:
            rd = [o for o in opts if o.startswith("rd")]
            return error_reply(conn, kind, 429, opts, "provmock %s: quota, retry later" % w,
                               retry_delay="%ss" % (rd[0][2:] if rd else "1"))
        scen = "text"
    if scen == "blocked" and w == "gemini":
        obj = {"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
               "usageMetadata": {"promptTokenCount": 11, "totalTokenCount": 11},
               "modelVersion": model, "responseId": "pm-resp-%d" % rp.n}
        if stream:
            return send_stream(conn, "text/event-stream", [sse_bytes(obj, le=rp.le)], opts)
        return send_json(conn, 200, obj, (), opts)
    if scen == "badutf8":
        if stream and w == "bedrock":
            return error_reply(conn, kind, 400, opts, "provmock: badutf8 has no bedrock stream")
        out = render(kind, rp, scen, stream)
        if not stream:
            return send_json(conn, 200, with_bad_utf8(json.dumps(out).encode()), (), opts)
        return send_stream(conn, "text/event-stream", [with_bad_utf8(b) for _, b in out], opts)
    if scen in ("midfail", "earlyfail", "earlyfail-400", "trunc", "trunc-early", "trunc-empty", "badcrc", "badprelude",
                "badcrc-mid", "notjson"):
        if not stream:
            scen = "text"
        else:
            evs = render(kind, rp, "text", True)
            pre = [b for k, b in evs if k == "pre"]
            body_ev, deltas = [], 0
            for k, b in evs:
                if k == "pre":
                    continue
                if deltas >= 2:
                    break
                body_ev.append(b)
                deltas += k == "delta"
            if scen == "midfail" and w == "responses":
                parts = pre + body_ev + rs_fail_events(rp, len(pre) + len(body_ev), False)
            elif scen == "midfail":
                parts = pre + body_ev + [stream_error_event(kind, rp.le, False)]
            elif scen == "earlyfail" and w == "responses":     # before response.created
                parts = rs_fail_events(rp, 0, True)
            elif scen == "earlyfail":
                parts = pre + [stream_error_event(kind, rp.le, True)]
            elif scen == "earlyfail-400":    # gemini: a non-retryable error as the first event
                parts = pre + [sse_bytes(ge_error_obj(400, "provmock gemini 400 in the stream"), le=rp.le)]
            elif scen == "trunc":
                parts = pre + body_ev
            elif scen == "notjson":
                bad = ev_frame([ev_header(":event-type", "contentBlockDelta"), ev_header(":message-type", "event")],
                               b"this is not json") if w == "bedrock" else b"data: this is not json" + (rp.le * 2).encode()
                parts = pre + body_ev + [bad] + [b for _, b in evs[len(pre) + len(body_ev):]]
            elif scen == "trunc-early":
                parts = pre
            elif scen == "trunc-empty":
                parts = []
            elif w != "bedrock":
                parts = [b for _, b in evs]
            elif scen == "badcrc-mid":
                bad = br_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "never"}},
                               bad_crc=True)
                parts = pre + body_ev + [bad] + [b for k, b in evs if k == "post"]
            else:
                first = br_event("messageStart", {"role": "assistant"}, bad_crc=scen == "badcrc",
                                 bad_prelude=scen == "badprelude")
                parts = [first] + [b for _, b in evs[1:]]
            return send_stream(conn, stream_ctype(kind), parts, opts)
    out = render(kind, rp, scen, stream)
    if out is None:
        return error_reply(conn, kind, 404, opts, "provmock: unknown scenario %r (model %r)" % (scen, model))
    if not stream:
        return send_json(conn, 200, out, (), opts)
    parts = [b for _, b in out]
    if w != "bedrock":
        parts = sse_transform(parts, opts, rp.le)
    return send_stream(conn, stream_ctype(kind), parts, opts)


def handle(conn, req):
    if req.path == "/_requests" and req.method == "GET":
        with STATE.lock:
            snap = list(STATE.requests)
        return send_json(conn, 200, snap)
    if req.path == "/_reset" and req.method == "POST":
        with STATE.lock:
            STATE.requests = []
            STATE.flaky = {}
        return send_json(conn, 200, {"ok": True})
    text = req.body.decode("utf-8", "replace")
    try:
        body = json.loads(text) if text else {}
    except ValueError:
        body = None
    kind, model, stream, inc = classify(req, body if isinstance(body, dict) else {})
    entry = {"serial": conn.serial, "seq": conn.seq, "method": req.method, "path": req.target,
             "version": req.version, "headers": req.headers, "header_list": req.header_list,
             "body": text, "body_sha256": hashlib.sha256(req.body).hexdigest(), "kind": kind,
             "model": model, "stream": stream, "t": time.time()}
    with STATE.lock:
        STATE.requests.append(entry)
    log(conn.serial, req.method, req.target, text[:120])
    if req.method != "POST" or kind is None:
        return send_json(conn, 404, {"error": {"message": "provmock: no route for %s %s" % (req.method, req.path)}})
    if not isinstance(body, dict):
        return error_reply(conn, {"count_tokens": "anthropic", "compact": "responses"}.get(kind, kind), 400, (),
                           "provmock: the request body is not a JSON object")
    if kind == "count_tokens":
        return answer_count_tokens(conn, body, model)
    if kind == "compact":
        return answer_compact(conn, body, model)
    return answer(conn, req, body, kind, model, stream, inc)


def serve_conn(sock, serial):
    conn = Conn(sock, serial)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            try:
                req = conn.read_request()
            except BadRequest as e:
                conn.send(head(400, [("Content-Length", "0"), ("Connection", "close")]))
                log(serial, "bad request", e)
                break
            if req is None:
                break
            if not handle(conn, req) or req.wants_close():
                break
    except ClientGone:
        pass
    except Exception as e:        # a broken client must never kill the mock
        print("provmock: connection %d: %r" % (serial, e), file=sys.stderr, flush=True)
    finally:
        try:
            sock.close()
        except OSError:
            pass


def accept_loop(ls):
    while True:
        try:
            s, _ = ls.accept()
        except InterruptedError:
            continue
        except OSError as e:
            print("provmock: accept: %r" % e, file=sys.stderr, flush=True)
            time.sleep(0.05)
            continue
        threading.Thread(target=serve_conn, args=(s, STATE.next_serial()), daemon=True).start()


# =======================================================================================
# self-test: every scenario once per wire format, parsed back

def selftest(port):
    import http.client
    fails = []

    def expect(name, cond):
        print("%s %s" % ("ok  " if cond else "FAIL", name))
        if not cond:
            fails.append(name)

    def post(path, body):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        c.close()
        return r, data

    def req(kind, model, stream):
        msgs = {"messages": [{"role": "user", "content": "hi"}]}
        if kind == "openai":
            return post("/v1/chat/completions", dict(msgs, model=model, stream=stream,
                                                     stream_options={"include_usage": True}))
        if kind == "anthropic":
            return post("/v1/messages", dict(msgs, model=model, stream=stream, max_tokens=10))
        if kind == "responses":
            return post("/v1/responses", {"model": model, "input": "hi", "stream": stream})
        q = urllib.parse.quote(model, safe="")
        if kind == "gemini":
            return post("/v1beta/models/%s:%s" % (q, "streamGenerateContent?alt=sse" if stream else "generateContent"),
                        {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
        return post("/model/%s/%s" % (q, "converse-stream" if stream else "converse"),
                    {"messages": [{"role": "user", "content": [{"text": "hi"}]}]})

    def sse_objs(data):
        out = []
        for block in re.split(r"\r\n\r\n|\n\n|\r\r", data.decode()):
            for line in re.split(r"\r\n|\n|\r", block):
                if line.startswith("data: ") and line[6:] != "[DONE]":
                    out.append(json.loads(line[6:]))
        return out

    for kind in ("openai", "anthropic", "gemini", "bedrock", "responses"):
        for scen in list(SCRIPTS) + ["fin-x"]:
            r, data = req(kind, scen + "#t", False)
            ok = r.status == 200
            try:
                json.loads(data)
            except ValueError:
                ok = False
            expect("%s %s" % (kind, scen), ok)
            r, data = req(kind, scen + "#t", True)
            try:
                if kind == "bedrock":
                    frames = ev_decode(data)
                    ok = r.status == 200 and frames[-1][0][":event-type"] == "metadata"
                else:
                    objs = sse_objs(data)
                    ok = r.status == 200 and len(objs) >= 2
            except (ValueError, KeyError, IndexError):
                ok = False
            expect("%s %s stream" % (kind, scen), ok)
        for st in (400, 429, 500, 503):
            r, data = req(kind, "err-%d" % st, False)
            expect("%s err-%d" % (kind, st), r.status == st and b"provmock" in data)
    r, data = req("bedrock", "badcrc", True)
    try:
        ev_decode(data)
        expect("bedrock badcrc detected", False)
    except ValueError:
        expect("bedrock badcrc detected", True)
    r, data = req("bedrock", "text~typed", True)
    fr = ev_decode(data)
    expect("bedrock typed headers", fr[0][0].get("x-t-i32") == struct.pack(">i", 70000))
    r, data = req("gemini", "text", True)
    expect("gemini frames events with CRLF", data.count(b"\r\n\r\n") >= 3 and b"\n\n" not in
           data.replace(b"\r\n\r\n", b""))
    for kind in ("openai", "anthropic", "gemini", "responses"):
        for stream in (False, True):
            r, data = req(kind, "badutf8", stream)
            expect("%s badutf8%s" % (kind, " stream" if stream else ""), r.status == 200 and
                   all(b in data for b in BAD_UTF8) and b"@BAD" not in data)
        r, data = req(kind, "notjson", True)
        expect("%s notjson stream" % kind, r.status == 200 and b"data: this is not json" in data and
               data.count(b"data: ") >= 5)
    r, data = req("gemini", "flaky#a mk0000abcd", False)
    expect("flaky first 429", r.status == 429 and b'"retryDelay": "1s"' in data)
    selftest_responses(req, post, expect)
    return 1 if fails else 0


def rs_sse(data):
    """(event name, data object) of each event of a Responses stream; raises ValueError."""
    out = []
    for block in re.split(r"\r\n\r\n|\n\n|\r\r", data.decode("utf-8", "replace")):
        name, lines = None, []
        for line in re.split(r"\r\n|\n|\r", block):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                lines.append(line[6:])
        if lines:
            out.append((name, json.loads("\n".join(lines))))
    return out


def selftest_responses(req, post, expect):
    """The Responses wire: event names, sequence numbers, items, ends, errors, Azure's path."""
    def names(evs):
        return [n for n, _ in evs]

    def numbered(evs):
        return all(n == d.get("type") and d.get("sequence_number") == i for i, (n, d) in enumerate(evs))
    r, data = req("responses", "text", False)
    j = json.loads(data)
    expect("responses text object", j["object"] == "response" and j["status"] == "completed" and
           j["output"][0]["content"][0]["text"] == TEXT and j["usage"]["input_tokens"] == 11 and
           j["usage"]["output_tokens"] == 7 and j["model"] == "text")
    r, data = req("responses", "text", True)
    evs = rs_sse(data)
    want = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"] + \
        ["response.output_text.delta"] * len(TEXT_PIECES) + \
        ["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"]
    expect("responses text stream events", names(evs) == want and numbered(evs) and b"[DONE]" not in data and
           "".join(d["delta"] for n, d in evs if n.endswith(".delta")) == TEXT)
    for scen, fmt in (("text~1b", "1b"), ("text~crlf", "crlf"), ("text~split40", "split"), ("text~cl", "cl"),
                      ("text~nolast", "nolast"), ("text~multiline", "multiline")):
        r, data = req("responses", scen, True)
        expect("responses stream %s" % fmt, names(rs_sse(data)) == want)
    r, data = req("responses", "text~crlf", True)
    expect("responses crlf framing", data.count(b"\r\n\r\n") == len(want) and b"\n\n" not in data)
    r, data = req("responses", "tools2", True)
    evs = rs_sse(data)
    fc = [d["item"] for n, d in evs if n == "response.output_item.done" and d["item"]["type"] == "function_call"]
    expect("responses tools2 stream", numbered(evs) and [(c["call_id"], c["name"], json.loads(c["arguments"]))
                                                          for c in fc] ==
           [("call_w1", "get_weather", {"city": "Paris"}), ("call_t2", "get_time", {"tz": "Europe/Paris"})] and
           [d["output_index"] for n, d in evs if n == "response.output_item.added"] == [0, 1, 2])
    r, data = req("responses", "think", False)
    expect("responses think: no encrypted_content unasked", "encrypted_content" not in json.loads(data)["output"][0])
    r, data = post("/v1/responses", {"model": "think", "input": "hi", "include": ["reasoning.encrypted_content"]})
    j = json.loads(data)
    expect("responses think", j["output"][0]["encrypted_content"] == RS_ENC and
           j["output"][0]["summary"][0]["text"] == "Let me think it over." and
           j["usage"]["output_tokens_details"]["reasoning_tokens"] == 5)
    for stream in (False, True):
        r, data = req("responses", "length", stream)
        j = json.loads(data) if not stream else rs_sse(data)[-1][1]["response"]
        expect("responses length stream=%s" % stream, j["status"] == "incomplete" and
               j["incomplete_details"] == {"reason": "max_output_tokens"} and
               (not stream or rs_sse(data)[-1][0] == "response.incomplete"))
    r, data = req("responses", "midfail", True)
    evs = rs_sse(data)
    expect("responses midfail", numbered(evs) and names(evs)[-2:] == ["error", "response.failed"] and
           "response.completed" not in names(evs) and "response.output_text.delta" in names(evs))
    r, data = req("responses", "earlyfail", True)
    evs = rs_sse(data)
    expect("responses earlyfail", numbered(evs) and names(evs) == ["error", "response.failed"])
    r, data = req("responses", "trunc", True)
    evs = rs_sse(data)
    expect("responses trunc", numbered(evs) and names(evs)[-1] == "response.output_text.delta")
    r, data = req("responses", "trunc-early", True)
    expect("responses trunc-early", names(rs_sse(data)) == ["response.created", "response.in_progress"])
    r, data = req("responses", "trunc-empty", True)
    expect("responses trunc-empty", r.status == 200 and data == b"")
    r, data = req("responses", "err-429", False)
    j = json.loads(data)
    expect("responses err-429", r.status == 429 and j["error"]["type"] == "rate_limit_exceeded" and
           r.getheader("Retry-After") == "0")
    r, data = post("/openai/responses?api-version=2025-04-01-preview", {"model": "text#az", "input": "hi"})
    expect("azure responses path", r.status == 200 and json.loads(data)["status"] == "completed")
    selftest_new_routes(post, expect)


def selftest_new_routes(post, expect):
    """patch / patch2 per wire, errd-NNN, count_tokens and /responses/compact."""
    want = {"input": PATCH_INPUT}
    tools = {"openai": ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "apply_patch"}}],
                                                  "messages": []}),
             "anthropic": ("/v1/messages", {"tools": [{"name": "apply_patch"}], "messages": [], "max_tokens": 5}),
             "gemini": ("/v1beta/models/patch:generateContent",
                        {"tools": [{"functionDeclarations": [{"name": "apply_patch"}]}], "contents": []}),
             "bedrock": ("/model/patch/converse", {"toolConfig": {"tools": [{"toolSpec": {"name": "apply_patch"}}]},
                                                   "messages": []})}
    for kind, (path, body) in tools.items():
        r, data = post(path, dict(body, model="patch"))
        j = json.loads(data)
        if kind == "openai":
            f = j["choices"][0]["message"]["tool_calls"][0]["function"]
            got = (f["name"], json.loads(f["arguments"]))
        elif kind == "anthropic":
            got = (j["content"][0]["name"], j["content"][0]["input"])
        elif kind == "gemini":
            f = j["candidates"][0]["content"]["parts"][0]["functionCall"]
            got = (f["name"], f["args"])
        else:
            f = j["output"]["message"]["content"][0]["toolUse"]
            got = (f["name"], f["input"])
        expect("%s patch" % kind, r.status == 200 and got == ("apply_patch", want))
    r, data = post("/v1/chat/completions", {"model": "patch", "messages": []})
    expect("patch without tools: 400", r.status == 400)
    rtools = [{"type": "custom", "name": "apply_patch"},
              {"type": "namespace", "name": "ns", "tools": [{"type": "function", "name": "fn"}]}]
    r, data = post("/v1/responses", {"model": "patch2", "input": "hi", "tools": rtools})
    out = json.loads(data)["output"]
    expect("responses patch2", [o["type"] for o in out] == ["message", "custom_tool_call", "function_call"] and
           out[1]["input"] == PATCH_INPUT and out[1]["name"] == "apply_patch" and
           (out[2]["name"], out[2].get("namespace"), json.loads(out[2]["arguments"])) ==
           ("fn", "ns", {"input": PATCH2_INPUT}))
    r, data = post("/v1/responses", {"model": "patch", "input": "hi", "tools": rtools, "stream": True})
    evs = rs_sse(data)
    expect("responses patch stream", [n for n, _ in evs if "custom" in n] ==
           ["response.custom_tool_call_input.delta"] * 3 + ["response.custom_tool_call_input.done"] and
           "".join(d["delta"] for n, d in evs if n == "response.custom_tool_call_input.delta") == PATCH_INPUT and
           all(d.get("sequence_number") == i for i, (n, d) in enumerate(evs)))
    r, data = post("/v1/messages", {"model": "errd-400", "messages": []})
    expect("anthropic errd-400", r.status == 400 and json.loads(data)["error"]["details"]["field"] == "messages.0")
    r, data = post("/v1/messages/count_tokens", {"model": "text", "messages": [{"role": "user", "content": "a"}] * 3})
    expect("count_tokens", r.status == 200 and json.loads(data) == {"input_tokens": COUNT_BASE + 3})
    r, data = post("/v1/messages/count_tokens", {"model": "errd-404", "messages": []})
    expect("count_tokens errd-404", r.status == 404 and "details" in json.loads(data)["error"])
    r, data = post("/v1/messages/count_tokens", {"model": "err-503", "messages": []})
    expect("count_tokens err-503", r.status == 503 and json.loads(data)["type"] == "error")
    for path in ("/v1/responses/compact", "/openai/responses/compact?api-version=2025-04-01-preview"):
        r, data = post(path, {"model": "text", "input": "hi", "stream": True})
        j = json.loads(data)
        expect("compact %s" % path, r.status == 200 and j["object"] == "response.compaction" and
               j["output"] == [{"id": j["output"][0]["id"], "type": "compaction", "encrypted_content": RS_CMP}])
    r, data = post("/v1/responses/compact", {"model": "err-500", "input": "hi"})
    expect("compact err-500", r.status == 500 and "error" in json.loads(data))


def main():
    global VERBOSE
    ap = argparse.ArgumentParser(description="scripted mock of the Anthropic, Gemini, Azure, Bedrock "
                                             "and OpenAI wire formats")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--selftest", action="store_true")
    a = ap.parse_args()
    VERBOSE = a.verbose
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((a.host, a.port))
    ls.listen(256)
    if a.selftest:
        threading.Thread(target=accept_loop, args=(ls,), daemon=True).start()
        sys.exit(selftest(ls.getsockname()[1]))
    print("PORT %d" % ls.getsockname()[1], flush=True)
    accept_loop(ls)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
